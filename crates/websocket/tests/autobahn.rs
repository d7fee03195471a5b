//! The Autobahn|Testsuite server cases, groups 1-7, 9 and 10, replayed against the sans-IO
//! connection acting as an echo server. Each test is named after its case group; the frames and
//! chop sizes follow the suite's case descriptions, and the expectations are its strict ones
//! (fail fast, exact close codes, nothing sent after a Close).

mod support;

use rallymq_websocket::{CloseCode, Config, Event, OpCode, State};
use support::{EchoServer, Raw};

fn text_of_len(len: usize) -> String {
    "*".repeat(len)
}

fn binary_of_len(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

// ---- 1: framing -----------------------------------------------------------------------------

#[test]
fn autobahn_1_1_framing_text_lengths_echoed() {
    for len in [0, 125, 126, 127, 128, 65535, 65536] {
        let mut server = EchoServer::default_config();
        let text = text_of_len(len);
        let outcome = server.feed_frames(&[Raw::text(&text)]);
        assert_eq!(outcome.events, [Event::Text(text.as_str().into())]);
        assert_eq!(&outcome.echoed()[0].payload[..], text.as_bytes());
        assert!(outcome.error.is_none());
    }
}

#[test]
fn autobahn_1_1_8_framing_text_65536_in_chops_of_997() {
    let mut server = EchoServer::default_config();
    let text = text_of_len(65536);
    let outcome = server.feed_chopped(&[Raw::text(&text)], 997);
    assert_eq!(outcome.events, [Event::Text(text.as_str().into())]);
}

#[test]
fn autobahn_1_2_framing_binary_lengths_echoed() {
    for len in [0, 125, 126, 127, 128, 65535, 65536] {
        let mut server = EchoServer::default_config();
        let data = binary_of_len(len);
        let outcome = server.feed_frames(&[Raw::binary(&data)]);
        assert_eq!(outcome.events, [Event::Binary(data.clone().into())]);
        assert_eq!(&outcome.echoed()[0].payload[..], &data[..]);
    }
}

#[test]
fn autobahn_1_2_8_framing_binary_65536_in_chops_of_997() {
    let mut server = EchoServer::default_config();
    let data = binary_of_len(65536);
    let outcome = server.feed_chopped(&[Raw::binary(&data)], 997);
    assert_eq!(outcome.events, [Event::Binary(data.into())]);
}

// ---- 2: ping/pong ---------------------------------------------------------------------------

#[test]
fn autobahn_2_1_to_2_4_ping_answered_with_same_payload() {
    for payload in [
        &b""[..],
        b"Hello, world!",
        &[0x00, 0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0x00, 0xff],
        &[0xfe; 125],
    ] {
        let mut server = EchoServer::default_config();
        let outcome = server.feed_frames(&[Raw::ping(payload)]);
        assert_eq!(outcome.events, [Event::Ping(payload.to_vec().into())]);
        assert_eq!(&outcome.pongs()[0].payload[..], payload);
    }
}

#[test]
fn autobahn_2_5_ping_of_126_bytes_fails_1002() {
    let mut server = EchoServer::default_config();
    let outcome = server.feed_frames(&[Raw::ping([0xfe; 126])]);
    outcome.assert_failed(CloseCode::PROTOCOL_ERROR);
    assert!(outcome.pongs().is_empty());
}

#[test]
fn autobahn_2_6_ping_125_bytes_in_one_byte_chops() {
    let mut server = EchoServer::default_config();
    let outcome = server.feed_chopped(&[Raw::ping([0xfe; 125])], 1);
    assert_eq!(outcome.pongs().len(), 1);
    assert_eq!(&outcome.pongs()[0].payload[..], &[0xfe; 125][..]);
}

#[test]
fn autobahn_2_7_to_2_9_unsolicited_pongs_are_ignored() {
    let mut server = EchoServer::default_config();
    let outcome = server.feed_frames(&[
        Raw::pong(""),
        Raw::pong("unsolicited pong payload"),
        Raw::ping("ping payload"),
    ]);
    assert_eq!(outcome.sent.len(), 1);
    assert_eq!(&outcome.pongs()[0].payload[..], b"ping payload");
}

#[test]
fn autobahn_2_10_and_2_11_ten_pings_ten_pongs_in_order() {
    for chop in [usize::MAX, 1] {
        let pings: Vec<Raw> = (0..10).map(|i| Raw::ping(format!("payload-{i}"))).collect();
        let mut server = EchoServer::default_config();
        let outcome = if chop == usize::MAX {
            server.feed_frames(&pings)
        } else {
            server.feed_chopped(&pings, chop)
        };
        let pongs: Vec<_> = outcome.pongs().into_iter().map(|f| f.payload).collect();
        let expected: Vec<_> = (0..10)
            .map(|i| format!("payload-{i}").into_bytes())
            .collect();
        assert_eq!(pongs, expected);
    }
}

// ---- 3: reserved bits -----------------------------------------------------------------------

#[test]
fn autobahn_3_1_to_3_7_reserved_bits_fail_1002() {
    let cases = [
        vec![Raw::text("Hello, world!").rsv(1)],
        vec![
            Raw::text("Hello, world!"),
            Raw::text("Hello, world!").rsv(2),
            Raw::ping(""),
        ],
        vec![
            Raw::text("Hello, world!"),
            Raw::text("Hello, world!").rsv(3),
            Raw::ping(""),
        ],
        vec![
            Raw::text("Hello, world!"),
            Raw::text("Hello, world!").rsv(4),
            Raw::ping(""),
        ],
        vec![Raw::binary([0xff; 8]).rsv(5)],
        vec![Raw::ping("Hello, world!").rsv(6)],
        vec![Raw::close_code(1000, "").rsv(7)],
    ];
    for (i, frames) in cases.iter().enumerate() {
        for chop in [usize::MAX, 1] {
            let mut server = EchoServer::default_config();
            let outcome = if chop == 1 {
                server.feed_chopped(frames, 1)
            } else {
                server.feed_frames(frames)
            };
            outcome.assert_failed(CloseCode::PROTOCOL_ERROR);
            // A valid frame before the bad one is echoed; the ping after it is not answered.
            assert_eq!(
                outcome.echoed().len(),
                usize::from(frames.len() > 1),
                "case {i}"
            );
            assert!(outcome.pongs().is_empty(), "case {i}");
        }
    }
}

// ---- 4: opcodes -----------------------------------------------------------------------------

#[test]
fn autobahn_4_1_and_4_2_reserved_opcodes_fail_1002() {
    for opcode in [3, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf] {
        let mut server = EchoServer::default_config();
        let outcome = server.feed_frames(&[
            Raw::text("Hello, world!"),
            Raw::new(opcode, "reserved opcode payload"),
            Raw::ping(""),
        ]);
        outcome.assert_failed(CloseCode::PROTOCOL_ERROR);
        assert_eq!(outcome.echoed().len(), 1);
        assert!(outcome.pongs().is_empty());
    }
}

// ---- 5: fragmentation -----------------------------------------------------------------------

#[test]
fn autobahn_5_1_and_5_2_fragmented_control_frames_fail_1002() {
    for opcode in [0x9, 0xa] {
        let mut server = EchoServer::default_config();
        let outcome = server.feed_frames(&[
            Raw::new(opcode, "fragment1").fin(false),
            Raw::cont("fragment2"),
        ]);
        outcome.assert_failed(CloseCode::PROTOCOL_ERROR);
    }
}

#[test]
fn autobahn_5_3_to_5_5_fragmented_text_in_frames_and_chops() {
    let frames = [Raw::text("fragment1").fin(false), Raw::cont("fragment2")];
    for chop in [usize::MAX, 3, 1] {
        let mut server = EchoServer::default_config();
        let outcome = server.feed_chopped(&frames, chop);
        assert_eq!(outcome.events, [Event::Text("fragment1fragment2".into())]);
    }
}

#[test]
fn autobahn_5_6_to_5_8_ping_between_fragments() {
    let frames = [
        Raw::text("fragment1").fin(false),
        Raw::ping("pongme!"),
        Raw::cont("fragment2"),
    ];
    for chop in [usize::MAX, 3, 1] {
        let mut server = EchoServer::default_config();
        let outcome = server.feed_chopped(&frames, chop);
        assert_eq!(
            outcome.events,
            [
                Event::Ping("pongme!".into()),
                Event::Text("fragment1fragment2".into())
            ]
        );
        // The pong goes out before the echo: it was answered when the ping arrived.
        assert_eq!(outcome.sent[0].opcode, OpCode::Pong);
        assert_eq!(outcome.sent[1].opcode, OpCode::Text);
    }
}

#[test]
fn autobahn_5_9_to_5_14_continuation_without_a_message_fails_1002() {
    for fin in [true, false] {
        for chop in [usize::MAX, 1] {
            let frames = [
                Raw::cont("non-continuation payload").fin(fin),
                Raw::text("Hello, world!"),
            ];
            let mut server = EchoServer::default_config();
            let outcome = server.feed_chopped(&frames, chop);
            outcome.assert_failed(CloseCode::PROTOCOL_ERROR);
            assert!(outcome.echoed().is_empty());
        }
    }
}

#[test]
fn autobahn_5_15_continuation_after_a_finished_message_fails_1002() {
    let mut server = EchoServer::default_config();
    let outcome = server.feed_frames(&[
        Raw::text("fragment1").fin(false),
        Raw::cont("fragment2"),
        Raw::cont("fragment3").fin(false),
        Raw::text("fragment4"),
    ]);
    assert_eq!(outcome.events, [Event::Text("fragment1fragment2".into())]);
    outcome.assert_failed(CloseCode::PROTOCOL_ERROR);
}

#[test]
fn autobahn_5_16_and_5_17_repeated_bad_continuations_fail_1002() {
    for first_fin in [false, true] {
        let mut server = EchoServer::default_config();
        let outcome = server.feed_frames(&[
            Raw::cont("fragment1").fin(first_fin),
            Raw::text("fragment2").fin(false),
            Raw::cont("fragment3"),
        ]);
        outcome.assert_failed(CloseCode::PROTOCOL_ERROR);
        assert!(outcome.echoed().is_empty());
    }
}

#[test]
fn autobahn_5_18_two_text_frames_in_one_message_fail_1002() {
    let mut server = EchoServer::default_config();
    let outcome = server.feed_frames(&[Raw::text("fragment1").fin(false), Raw::text("fragment2")]);
    outcome.assert_failed(CloseCode::PROTOCOL_ERROR);
}

#[test]
fn autobahn_5_19_and_5_20_pings_interleaved_in_five_fragments() {
    let frames = [
        Raw::text("fragment1").fin(false),
        Raw::cont("fragment2").fin(false),
        Raw::ping("pongme 1!"),
        Raw::cont("fragment3").fin(false),
        Raw::ping("pongme 2!"),
        Raw::cont("fragment4").fin(false),
        Raw::cont("fragment5"),
    ];
    for chop in [usize::MAX, 1] {
        let mut server = EchoServer::default_config();
        let outcome = server.feed_chopped(&frames, chop);
        assert_eq!(outcome.pongs().len(), 2);
        assert_eq!(
            outcome.echoed()[0].payload,
            "fragment1fragment2fragment3fragment4fragment5"
        );
    }
}

#[test]
fn autobahn_5_fragmentation_binary_and_empty_fragments() {
    let mut server = EchoServer::default_config();
    let outcome = server.feed_frames(&[
        Raw::binary("").fin(false),
        Raw::cont([1, 2]).fin(false),
        Raw::cont(""),
    ]);
    assert_eq!(outcome.events, [Event::Binary(vec![1, 2].into())]);
}

// ---- 6: UTF-8 -------------------------------------------------------------------------------

#[test]
fn autobahn_6_1_empty_text_frames_and_fragments() {
    let cases: [&[Raw]; 3] = [
        &[Raw::text("")],
        &[
            Raw::text("").fin(false),
            Raw::cont("").fin(false),
            Raw::cont(""),
        ],
        &[
            Raw::text("").fin(false),
            Raw::cont("middle").fin(false),
            Raw::cont(""),
        ],
    ];
    for (frames, expected) in cases.iter().zip(["", "", "middle"]) {
        let mut server = EchoServer::default_config();
        assert_eq!(
            server.feed_frames(frames).events,
            [Event::Text(expected.into())]
        );
    }
}

const KOSME: &str = "\u{3ba}\u{1f79}\u{3c3}\u{3bc}\u{3b5}";

/// The valid sample strings of cases 6.2 and 6.5 to 6.7, and boundary code points of 6.6-6.7.
fn valid_samples() -> Vec<Vec<u8>> {
    let mut samples: Vec<Vec<u8>> = [
        "Hello-\u{b5}@\u{df}\u{f6}\u{e4}\u{fc}\u{e0}\u{e1}-UTF-8!!",
        KOSME,
        "\u{0}",
        "\u{80}",
        "\u{800}",
        "\u{10000}",
        "\u{7f}",
        "\u{7ff}",
        "\u{ffff}",
        "\u{10ffff}",
        "\u{d7ff}",
        "\u{e000}",
        "\u{fffd}",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    // Non-characters are valid UTF-8 (6.23.x).
    samples.push("\u{fffe}\u{ffff}\u{1fffe}".as_bytes().to_vec());
    samples
}

/// Invalid sequences from cases 6.3 and 6.8 to 6.21: cut-short, 5- and 6-byte, overlong,
/// surrogate and out-of-range sequences.
fn invalid_samples() -> Vec<Vec<u8>> {
    let mut samples: Vec<Vec<u8>> = vec![
        b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64"
            .to_vec(),
        b"\xf8\x88\x80\x80\x80".to_vec(),
        b"\xfc\x84\x80\x80\x80\x80".to_vec(),
        b"\xf4\x90\x80\x80".to_vec(),
        b"\x80".to_vec(),
        b"\xbf".to_vec(),
        b"\x80\xbf\x80".to_vec(),
        b"\xc0\x20".to_vec(),
        b"\xe0\x80".to_vec(),
        b"\xc0\xaf".to_vec(),
        b"\xe0\x80\xaf".to_vec(),
        b"\xf0\x80\x80\xaf".to_vec(),
        b"\xc1\xbf".to_vec(),
        b"\xe0\x9f\xbf".to_vec(),
        b"\xf0\x8f\xbf\xbf".to_vec(),
        b"\xed\xa0\x80".to_vec(),
        b"\xed\xbf\xbf".to_vec(),
        b"\xed\xa0\x80\xed\xb0\x80".to_vec(),
        b"\xfe".to_vec(),
        b"\xff".to_vec(),
        b"\xfe\xfe\xff\xff".to_vec(),
        b"\xc2".to_vec(),
        b"\xe2\x82".to_vec(),
        b"\xf0\x9f\x98".to_vec(),
    ];
    samples.extend((0xc0..=0xfd_u8).map(|lead| vec![lead, b' ']));
    samples
}

#[test]
fn autobahn_6_2_and_6_5_to_6_7_valid_utf8_split_anywhere() {
    for sample in valid_samples() {
        // One frame; one frame in 1-byte chops; a fragment boundary at every byte.
        let mut server = EchoServer::default_config();
        assert!(server.feed_frames(&[Raw::text(&sample)]).error.is_none());
        let mut server = EchoServer::default_config();
        let outcome = server.feed_chopped(&[Raw::text(&sample)], 1);
        assert_eq!(outcome.events.len(), 1, "{sample:x?}");
        for cut in 0..=sample.len() {
            let mut server = EchoServer::default_config();
            let outcome = server.feed_frames(&[
                Raw::text(&sample[..cut]).fin(false),
                Raw::cont(&sample[cut..]),
            ]);
            let expected = std::str::from_utf8(&sample).unwrap();
            assert_eq!(outcome.events, [Event::Text(expected.into())], "cut {cut}");
        }
    }
}

#[test]
fn autobahn_6_3_and_6_8_to_6_21_invalid_utf8_fails_1007_however_split() {
    for sample in invalid_samples() {
        let mut server = EchoServer::default_config();
        server
            .feed_frames(&[Raw::text(&sample)])
            .assert_failed(CloseCode::INVALID_PAYLOAD);
        let mut server = EchoServer::default_config();
        server
            .feed_chopped(&[Raw::text(&sample)], 1)
            .assert_failed(CloseCode::INVALID_PAYLOAD);
        for cut in 0..=sample.len() {
            let mut server = EchoServer::default_config();
            let outcome = server.feed_frames(&[
                Raw::text(&sample[..cut]).fin(false),
                Raw::cont(&sample[cut..]),
            ]);
            outcome.assert_failed(CloseCode::INVALID_PAYLOAD);
            assert!(outcome.events.is_empty(), "{sample:x?} cut {cut}");
        }
    }
}

#[test]
fn autobahn_6_4_1_and_6_4_2_fail_fast_in_the_middle_fragment() {
    // κόσμε, then 0xf4 0x90 0x80 0x80 (above U+10FFFF), then "edited".
    let part1 = KOSME.as_bytes();
    for (part2, part3) in [
        (&b"\xf4\x90\x80\x80"[..], &b"edited"[..]),
        (&b"\xf4"[..], &b"\x90\x80\x80edited"[..]),
    ] {
        let mut server = EchoServer::default_config();
        let first = Raw::text(part1).fin(false).bytes();
        let second = Raw::cont(part2).fin(false).bytes();
        let third = Raw::cont(part3).bytes();
        assert!(server.feed(&first).error.is_none());
        let outcome = server.feed(&second);
        if part2.len() == 4 {
            // Strict: the connection fails on the second frame, before the third arrives.
            outcome.assert_failed(CloseCode::INVALID_PAYLOAD);
        } else {
            assert!(outcome.error.is_none());
            server
                .feed(&third)
                .assert_failed(CloseCode::INVALID_PAYLOAD);
        }
        assert_eq!(server.ws.state(), State::Closed);
    }
}

#[test]
fn autobahn_6_4_3_and_6_4_4_fail_fast_in_the_middle_of_one_frame() {
    // One frame, sent in three chops: valid, then the chop that makes it invalid, then the rest.
    let payload = [KOSME.as_bytes(), b"\xf4\x90\x80\x80", b"edited"].concat();
    let frame = Raw::text(&payload).bytes();
    let header_len = frame.len() - payload.len();
    let split1 = header_len + KOSME.len();
    for split2 in [split1 + 4, split1 + 2] {
        let mut server = EchoServer::default_config();
        assert!(server.feed(&frame[..split1]).error.is_none());
        let outcome = server.feed(&frame[split1..split2]);
        outcome.assert_failed(CloseCode::INVALID_PAYLOAD);
        // The rest is never looked at.
        assert!(server.feed(&frame[split2..]).sent.is_empty());
    }
}

#[test]
fn autobahn_6_utf8_code_point_split_across_three_fragments() {
    let emoji = "\u{1f600}".as_bytes();
    let mut server = EchoServer::default_config();
    let outcome = server.feed_frames(&[
        Raw::text(&emoji[..1]).fin(false),
        Raw::cont(&emoji[1..3]).fin(false),
        Raw::ping("between"),
        Raw::cont(&emoji[3..]),
    ]);
    assert_eq!(
        outcome.events.last(),
        Some(&Event::Text("\u{1f600}".into()))
    );
}

// ---- 7: close handling ----------------------------------------------------------------------

#[test]
fn autobahn_7_1_1_echo_then_close_handshake() {
    let mut server = EchoServer::default_config();
    let outcome = server.feed_frames(&[Raw::text("Hello World!"), Raw::close_code(1000, "")]);
    assert_eq!(outcome.echoed().len(), 1);
    assert_eq!(outcome.close_sent(), Some(Some(CloseCode::NORMAL)));
    assert_eq!(server.ws.state(), State::Closed);
}

#[test]
fn autobahn_7_1_2_to_7_1_4_nothing_after_the_close() {
    let mut server = EchoServer::default_config();
    let outcome = server.feed_frames(&[
        Raw::close_code(1000, ""),
        Raw::close_code(1000, ""),
        Raw::ping("after close"),
        Raw::text("after close"),
    ]);
    assert_eq!(outcome.sent.len(), 1, "one close reply and nothing else");
    assert!(outcome.error.is_none());
}

#[test]
fn autobahn_7_1_5_unfinished_fragment_then_close() {
    let mut server = EchoServer::default_config();
    let outcome = server.feed_frames(&[
        Raw::text("fragment1").fin(false),
        Raw::close_code(1000, ""),
        Raw::cont("fragment2"),
    ]);
    assert!(outcome.echoed().is_empty());
    assert_eq!(outcome.close_sent(), Some(Some(CloseCode::NORMAL)));
    assert_eq!(outcome.sent.len(), 1);
}

#[test]
fn autobahn_7_1_6_large_message_ping_then_close() {
    let mut server = EchoServer::default_config();
    let text = "BAsd7&jh23".repeat(26214);
    let outcome = server.feed_frames(&[
        Raw::text(&text),
        Raw::ping("ping"),
        Raw::close_code(1000, ""),
    ]);
    let kinds: Vec<_> = outcome.sent.iter().map(|f| f.opcode).collect();
    assert_eq!(kinds, [OpCode::Text, OpCode::Pong, OpCode::Close]);
}

#[test]
fn autobahn_7_3_close_payload_shapes() {
    // Empty close: answered with an empty close.
    let mut server = EchoServer::default_config();
    let outcome = server.feed_frames(&[Raw::close("")]);
    assert_eq!(outcome.close_sent(), Some(None));
    assert_eq!(outcome.events, [Event::Close(None)]);
    // One byte: protocol error.
    let mut server = EchoServer::default_config();
    server
        .feed_frames(&[Raw::close([0x03])])
        .assert_failed(CloseCode::PROTOCOL_ERROR);
    // Code only, code and reason, code and a 123-byte reason: echoed code.
    for reason in ["", "Hello World!", &"*".repeat(123)] {
        let mut server = EchoServer::default_config();
        let outcome = server.feed_frames(&[Raw::close_code(1000, reason)]);
        assert_eq!(outcome.close_sent(), Some(Some(CloseCode::NORMAL)));
        match &outcome.events[..] {
            [Event::Close(Some(close))] => assert_eq!(&*close.reason, reason),
            other => panic!("{other:?}"),
        }
    }
    // A 124-byte reason makes a 126-byte control frame.
    let mut server = EchoServer::default_config();
    server
        .feed_frames(&[Raw::close_code(1000, &"*".repeat(124))])
        .assert_failed(CloseCode::PROTOCOL_ERROR);
}

#[test]
fn autobahn_7_5_1_close_reason_invalid_utf8_fails_1007() {
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(
        b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64",
    );
    let mut server = EchoServer::default_config();
    server
        .feed_frames(&[Raw::close(payload)])
        .assert_failed(CloseCode::INVALID_PAYLOAD);
}

#[test]
fn autobahn_7_7_valid_close_codes_are_echoed() {
    for code in [
        1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
    ] {
        let mut server = EchoServer::default_config();
        let outcome = server.feed_frames(&[Raw::close_code(code, "")]);
        assert_eq!(outcome.close_sent(), Some(Some(CloseCode(code))), "{code}");
        assert!(outcome.error.is_none());
    }
}

#[test]
fn autobahn_7_9_invalid_close_codes_fail_1002() {
    for code in [
        0, 999, 1004, 1005, 1006, 1012, 1013, 1014, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        let mut server = EchoServer::default_config();
        server
            .feed_frames(&[Raw::close_code(code, "")])
            .assert_failed(CloseCode::PROTOCOL_ERROR);
    }
}

#[test]
fn autobahn_7_close_started_by_us_then_answered() {
    let mut server = EchoServer::default_config();
    server
        .ws
        .close(Some(CloseCode::GOING_AWAY), "restart")
        .unwrap();
    assert_eq!(server.ws.state(), State::Closing);
    assert_eq!(
        server.ws.send_text("late"),
        Err(rallymq_websocket::Error::SendAfterClose)
    );
    // Messages still arrive until the peer's close; a ping is not answered any more.
    let outcome = server.feed_frames(&[Raw::ping("p"), Raw::close_code(1001, "")]);
    assert_eq!(outcome.close_sent(), Some(Some(CloseCode::GOING_AWAY)));
    assert!(outcome.pongs().is_empty());
    assert_eq!(outcome.sent.len(), 1, "no second close");
    assert_eq!(server.ws.state(), State::Closed);
}

// ---- 9: limits and performance-shaped sizes -------------------------------------------------

#[test]
fn autobahn_9_1_and_9_2_large_single_frame_messages() {
    for len in [64 << 10, 256 << 10, 1 << 20, 4 << 20] {
        let mut server = EchoServer::default_config();
        let text = text_of_len(len);
        let outcome = server.feed_chopped(&[Raw::text(&text)], 64 << 10);
        assert_eq!(outcome.echoed()[0].payload.len(), len);
        let mut server = EchoServer::default_config();
        let data = binary_of_len(len);
        let outcome = server.feed_chopped(&[Raw::binary(&data)], 64 << 10);
        assert_eq!(outcome.echoed()[0].payload, data);
    }
}

#[test]
fn autobahn_9_3_and_9_4_fragmented_4_mib_messages() {
    let len = 4 << 20;
    for fragment in [64, 4 << 10, 64 << 10, 1 << 20] {
        let text = text_of_len(len);
        let frames: Vec<Raw> = text
            .as_bytes()
            .chunks(fragment)
            .enumerate()
            .map(|(i, chunk)| {
                let raw = if i == 0 {
                    Raw::text(chunk)
                } else {
                    Raw::cont(chunk)
                };
                raw.fin((i + 1) * fragment >= len)
            })
            .collect();
        let mut server = EchoServer::default_config();
        let outcome = server.feed_chopped(&frames, 256 << 10);
        assert_eq!(
            outcome.echoed()[0].payload.len(),
            len,
            "fragment {fragment}"
        );
    }
}

#[test]
fn autobahn_9_5_and_9_6_chopped_1_mib_messages() {
    for chop in [64, 4096] {
        let text = text_of_len(1 << 20);
        let mut server = EchoServer::default_config();
        let outcome = server.feed_chopped(&[Raw::text(&text)], chop);
        assert_eq!(outcome.events.len(), 1);
    }
}

#[test]
fn autobahn_9_7_and_9_8_many_small_messages() {
    let frames: Vec<Raw> = (0..1000).map(|i| Raw::text(format!("{i:08}"))).collect();
    let mut server = EchoServer::default_config();
    let outcome = server.feed_chopped(&frames, 1460);
    assert!(outcome.error.is_none());
    assert_eq!(outcome.echoed().len(), 1000);
    let frames: Vec<Raw> = (0..1000).map(|_| Raw::binary([7u8; 16])).collect();
    let mut server = EchoServer::default_config();
    assert_eq!(server.feed_frames(&frames).echoed().len(), 1000);
}

#[test]
fn autobahn_9_limits_frame_and_message_size_fail_1009() {
    let config = Config::default()
        .with_max_frame_len(1000)
        .with_max_message_len(1500);
    // One frame over the frame limit: refused from its header alone.
    let mut server = EchoServer::new(config.clone());
    let header = &Raw::binary(vec![0; 1001]).bytes()[..8];
    server
        .feed(header)
        .assert_failed(CloseCode::MESSAGE_TOO_BIG);
    // Fragments under the frame limit that add up over the message limit.
    let mut server = EchoServer::new(config.clone());
    let outcome = server.feed_frames(&[
        Raw::text(text_of_len(800)).fin(false),
        Raw::cont(text_of_len(800)),
    ]);
    outcome.assert_failed(CloseCode::MESSAGE_TOO_BIG);
    // Streamed binary messages have no message limit, only the frame limit.
    let mut server = EchoServer::new(config.with_stream_binary(true));
    let outcome = server.feed_frames(&[
        Raw::binary(vec![1; 800]).fin(false),
        Raw::cont(vec![2; 800]),
    ]);
    assert!(outcome.error.is_none());
    let total: usize = outcome
        .events
        .iter()
        .map(|e| match e {
            Event::BinaryChunk { data, .. } => data.len(),
            other => panic!("{other:?}"),
        })
        .sum();
    assert_eq!(total, 1600);
}

// ---- 10: miscellaneous ----------------------------------------------------------------------

#[test]
fn autobahn_10_1_1_text_65536_in_fragments_of_1300_chopped() {
    let text = text_of_len(65536);
    let chunks: Vec<&[u8]> = text.as_bytes().chunks(1300).collect();
    let frames: Vec<Raw> = chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            let raw = if i == 0 {
                Raw::text(chunk)
            } else {
                Raw::cont(chunk)
            };
            raw.fin(i + 1 == chunks.len())
        })
        .collect();
    let mut server = EchoServer::default_config();
    let outcome = server.feed_chopped(&frames, 997);
    assert_eq!(outcome.events, [Event::Text(text.as_str().into())]);
}

#[test]
fn autobahn_10_masking_rules_per_role() {
    // A server refuses unmasked frames.
    let mut server = EchoServer::default_config();
    server
        .feed_frames(&[Raw::text("hi").unmasked()])
        .assert_failed(CloseCode::PROTOCOL_ERROR);
    // A client refuses masked frames and accepts unmasked ones.
    let mut client = support::test_client(Config::default());
    client.handle_bytes(&Raw::text("hi").unmasked().bytes());
    assert_eq!(client.poll_event(), Ok(Some(Event::Text("hi".into()))));
    client.handle_bytes(&Raw::text("hi").bytes());
    assert_eq!(
        client.poll_event(),
        Err(rallymq_websocket::Error::MaskedFrame)
    );
    assert_eq!(client.state(), State::Closed);
}

/// RFC 6455 §5.2: "the minimal number of bytes MUST be used to encode the length". "Hi"
/// announced with a 64-bit length, then with a 16-bit one, fails the connection with 1002.
#[test]
fn rfc6455_5_2_non_minimal_length_encodings_fail_1002() {
    for (marker, length) in [(127u8, 2u64.to_be_bytes().to_vec()), (126, vec![0, 2])] {
        let mut bytes = vec![0x81, 0x80 | marker];
        bytes.extend_from_slice(&length);
        bytes.extend_from_slice(&support::KEY);
        let mut payload = *b"Hi";
        rallymq_websocket::apply_mask(&mut payload, support::KEY);
        bytes.extend_from_slice(&payload);
        let mut server = EchoServer::default_config();
        let outcome = server.feed(&bytes);
        assert!(outcome.events.is_empty(), "{:?}", outcome.events);
        outcome.assert_failed(CloseCode::PROTOCOL_ERROR);
    }
}
