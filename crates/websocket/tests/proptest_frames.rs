//! Property tests: frames and messages round-trip in both roles however the bytes are chunked,
//! and arbitrary input never panics.

mod support;

use bytes::BytesMut;
use proptest::prelude::*;
use rallymq_websocket::{
    ClientRequest, Config, Connection, Event, Frame, FrameDecoder, OpCode, Role, UpgradeRequest,
};

/// A message to send: text or binary, split into fragments at the given sizes, with pings
/// interleaved between fragments.
#[derive(Debug, Clone)]
enum Message {
    Text(String, Vec<usize>),
    Binary(Vec<u8>, Vec<usize>),
    Ping(Vec<u8>),
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<String>(), prop::collection::vec(0usize..40, 0..4))
            .prop_map(|(s, cuts)| Message::Text(s, cuts)),
        (
            prop::collection::vec(any::<u8>(), 0..300),
            prop::collection::vec(0usize..200, 0..4)
        )
            .prop_map(|(b, cuts)| Message::Binary(b, cuts)),
        prop::collection::vec(any::<u8>(), 0..=125).prop_map(Message::Ping),
    ]
}

/// Sends `message` from `sender`, fragmenting at byte offsets given by `cuts` (text fragments
/// may split code points: only the whole message must be UTF-8).
fn send(sender: &mut Connection, message: &Message) {
    let (opcode, bytes, cuts) = match message {
        Message::Ping(payload) => return sender.send_ping(payload).unwrap(),
        Message::Text(text, cuts) => (OpCode::Text, text.as_bytes(), cuts),
        Message::Binary(data, cuts) => (OpCode::Binary, &data[..], cuts),
    };
    let mut pieces = Vec::new();
    let mut rest = bytes;
    for &cut in cuts {
        let cut = cut.min(rest.len());
        pieces.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    pieces.push(rest);
    let last = pieces.len() - 1;
    for (i, piece) in pieces.iter().enumerate() {
        let op = if i == 0 { opcode } else { OpCode::Continuation };
        sender.send_frame(i == last, op, piece).unwrap();
        if i != last {
            sender.send_ping(b"between").unwrap();
        }
    }
}

fn expected(messages: &[Message], stream_binary: bool) -> Vec<Event> {
    let mut events = Vec::new();
    for message in messages {
        match message {
            Message::Text(text, cuts) => {
                events.extend(cuts.iter().map(|_| Event::Ping("between".into())));
                events.push(Event::Text(text.as_str().into()));
            }
            Message::Binary(data, cuts) => {
                events.extend(cuts.iter().map(|_| Event::Ping("between".into())));
                events.push(if stream_binary {
                    Event::BinaryChunk {
                        data: data.clone().into(),
                        last: true,
                    }
                } else {
                    Event::Binary(data.clone().into())
                });
            }
            Message::Ping(payload) => events.push(Event::Ping(payload.clone().into())),
        }
    }
    events
}

/// Feeds `bytes` to `receiver` in chunks of the given sizes (cycled), collecting events; binary
/// chunks are merged per message so the result does not depend on the chunking.
fn receive(receiver: &mut Connection, bytes: &[u8], chunk_sizes: &[usize]) -> Vec<Event> {
    let mut events: Vec<Event> = Vec::new();
    let mut pending_binary = BytesMut::new();
    let mut rest = bytes;
    let mut sizes = chunk_sizes.iter().cycle();
    while !rest.is_empty() {
        let size = (*sizes.next().unwrap()).clamp(1, rest.len());
        receiver.handle_bytes(&rest[..size]);
        rest = &rest[size..];
        while let Some(event) = receiver.poll_event().unwrap() {
            match event {
                Event::BinaryChunk { data, last } => {
                    pending_binary.extend_from_slice(&data);
                    if last {
                        events.push(Event::BinaryChunk {
                            data: pending_binary.split().freeze(),
                            last,
                        });
                    }
                }
                other => events.push(other),
            }
        }
    }
    events
}

fn pair(sender_role: Role, stream_binary: bool) -> (Connection, Connection) {
    let receiver_config = Config::default().with_stream_binary(stream_binary);
    match sender_role {
        Role::Client => (
            support::test_client(Config::default()),
            Connection::server(receiver_config),
        ),
        Role::Server => (
            Connection::server(Config::default()),
            support::test_client(receiver_config),
        ),
    }
}

proptest! {
    #[test]
    fn messages_round_trip_in_both_roles_with_chunked_feeding(
        messages in prop::collection::vec(message(), 0..8),
        chunk_sizes in prop::collection::vec(1usize..64, 1..8),
        client_sends in any::<bool>(),
        stream_binary in any::<bool>(),
    ) {
        let role = if client_sends { Role::Client } else { Role::Server };
        let (mut sender, mut receiver) = pair(role, stream_binary);
        for message in &messages {
            send(&mut sender, message);
        }
        let bytes = sender.poll_transmit().unwrap_or_default();
        let events = receive(&mut receiver, &bytes, &chunk_sizes);
        prop_assert_eq!(events, expected(&messages, stream_binary));
    }

    #[test]
    fn frames_round_trip_through_the_frame_decoder(
        payload in prop::collection::vec(any::<u8>(), 0..70_000),
        fin in any::<bool>(),
        binary in any::<bool>(),
        mask in any::<Option<[u8; 4]>>(),
    ) {
        let opcode = if binary { OpCode::Binary } else { OpCode::Continuation };
        let frame = Frame { fin, opcode, payload: payload.into() };
        let mut bytes = BytesMut::new();
        frame.encode(mask, &mut bytes);
        let role = if mask.is_some() { Role::Server } else { Role::Client };
        let mut decoder = FrameDecoder::new(role, usize::MAX);
        // Strict prefixes need more bytes and consume nothing (sampled: the payload can be long).
        for cut in [0, 1, 2, bytes.len() / 2, bytes.len() - 1] {
            let mut prefix = BytesMut::from(&bytes[..cut]);
            prop_assert_eq!(decoder.decode(&mut prefix), Ok(None));
            prop_assert_eq!(prefix.len(), cut);
        }
        let decoded = decoder.decode(&mut bytes).unwrap();
        prop_assert_eq!(decoded, Some(frame));
        prop_assert!(bytes.is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic_either_role(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
        chunk_sizes in prop::collection::vec(1usize..300, 1..6),
        stream_binary in any::<bool>(),
    ) {
        let config = Config::default().with_max_frame_len(1024).with_stream_binary(stream_binary);
        for mut connection in [Connection::server(config.clone()), support::test_client(config.clone())] {
            let mut rest = &bytes[..];
            let mut sizes = chunk_sizes.iter().cycle();
            while !rest.is_empty() {
                let size = (*sizes.next().unwrap()).min(rest.len());
                connection.handle_bytes(&rest[..size]);
                rest = &rest[size..];
                while let Ok(Some(_)) = connection.poll_event() {}
            }
            let _ = connection.poll_transmit();
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_handshake_parsers(
        bytes in prop::collection::vec(any::<u8>(), 0..1024),
    ) {
        let _ = UpgradeRequest::parse(&bytes);
        let request = ClientRequest::with_key("h", "/", [1; 16]).unwrap();
        let _ = request.parse_response(&bytes);
    }

    #[test]
    fn handshake_heads_with_arbitrary_header_values(
        value in "[ -~]{0,40}",
        name in "[a-z][a-z-]{0,12}",
    ) {
        let head = format!(
            "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nx-{name}: {value}\r\n\r\n"
        );
        let (request, len) = UpgradeRequest::parse(head.as_bytes()).unwrap().unwrap();
        prop_assert_eq!(len, head.len());
        let header_name = format!("x-{name}");
        prop_assert_eq!(request.headers()[header_name.as_str()].as_bytes(), value.trim().as_bytes());
    }
}
