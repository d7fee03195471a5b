//! Byte-exact examples from the MQTT 3.1.1 and 5.0 specifications (their non-normative
//! figures), decoded and re-encoded.

use bytes::{Bytes, BytesMut};
use rallymq_codec::{
    Ack, ConnAck, Disconnect, Limits, Packet, PacketId, ProtocolVersion, Publish, QoS, ReasonCode,
    SubAck, Subscribe, Subscription, TopicFilter, TopicName, Unsubscribe, decode,
};

const V311: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

/// Decodes `bytes` as exactly one packet, checks it re-encodes to the same bytes, returns it.
fn decode_exact(bytes: &[u8], version: ProtocolVersion) -> Packet {
    let mut buf = BytesMut::from(bytes);
    let packet = decode(&mut buf, version, &Limits::default())
        .expect("valid")
        .expect("complete");
    assert!(buf.is_empty(), "bytes left over");
    assert_eq!(
        &packet.to_bytes(version).unwrap()[..],
        bytes,
        "re-encoding differs"
    );
    assert_eq!(packet.encoded_len(version), bytes.len());
    packet
}

fn id(value: u16) -> PacketId {
    PacketId::new(value).unwrap()
}

/// MQTT 3.1.1 §2.2.3 / 5.0 §1.5.5 table: the boundaries of each Remaining Length size.
#[test]
fn remaining_length_table_boundaries() {
    let cases: [(usize, &[u8]); 7] = [
        (0, &[0x00]),
        (127, &[0x7F]),
        (128, &[0x80, 0x01]),
        (16_383, &[0xFF, 0x7F]),
        (16_384, &[0x80, 0x80, 0x01]),
        (2_097_151, &[0xFF, 0xFF, 0x7F]),
        (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
    ];
    for (remaining, header) in cases {
        // A QoS 0 PUBLISH to topic "a" has 3 bytes of variable header; the payload fills the rest.
        let packet = if remaining == 0 {
            Packet::PingReq
        } else {
            Packet::Publish(Publish::new(
                TopicName::new("a").unwrap(),
                vec![7u8; remaining - 3],
            ))
        };
        let bytes = packet.to_bytes(V311).unwrap();
        assert_eq!(
            &bytes[1..1 + header.len()],
            header,
            "remaining length {remaining}"
        );
        assert_eq!(bytes.len(), 1 + header.len() + remaining);
        assert_eq!(decode_exact(&bytes, V311), packet);
    }
}

/// MQTT 3.1.1 §1.5.3, figure 1.3 / 5.0 §1.5.4, figure 1-2: "A𪛔" is 00 05 41 F0 AA 9B 94.
#[test]
fn utf8_string_example_a_and_u2a6d4() {
    let bytes = [0x30, 0x08, 0x00, 0x05, 0x41, 0xF0, 0xAA, 0x9B, 0x94, b'!'];
    let Packet::Publish(publish) = decode_exact(&bytes, V311) else {
        panic!("not a PUBLISH")
    };
    assert_eq!(publish.topic.unwrap().as_str(), "A\u{2A6D4}");
    assert_eq!(&publish.payload[..], b"!");
}

/// MQTT 3.1.1 §3.1.2.10, figure 3.6: CONNECT variable header, protocol MQTT level 4, flags
/// 0xCE (user name, password, will QoS 1, will flag, clean session), keep alive 10.
#[test]
fn v311_connect_variable_header_example() {
    let mut bytes = vec![0x10, 0x00];
    bytes.extend_from_slice(&[0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0xCE, 0x00, 0x0A]);
    for field in [&b"client"[..], b"will/topic", b"gone", b"user", b"secret"] {
        bytes.extend_from_slice(&(field.len() as u16).to_be_bytes());
        bytes.extend_from_slice(field);
    }
    bytes[1] = (bytes.len() - 2) as u8;
    let Packet::Connect(connect) = decode_exact(&bytes, V311) else {
        panic!("not a CONNECT")
    };
    assert_eq!(connect.protocol, V311);
    assert!(connect.clean_start);
    assert_eq!(connect.keep_alive, 10);
    assert_eq!(connect.client_id, "client");
    let will = connect.will.unwrap();
    assert_eq!(
        (
            will.topic.as_str(),
            &will.payload[..],
            will.qos,
            will.retain
        ),
        ("will/topic", &b"gone"[..], QoS::AtLeastOnce, false)
    );
    assert_eq!(connect.username.unwrap(), "user");
    assert_eq!(connect.password.as_deref(), Some(&b"secret"[..]));
}

/// MQTT 5.0 §3.1.2.11, figure 3-7: the same header at level 5 with properties: length 5,
/// Session Expiry Interval (0x11) = 10.
#[test]
fn v5_connect_variable_header_example() {
    let mut bytes = vec![0x10, 0x00];
    bytes.extend_from_slice(&[
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0xCE, 0x00, 0x0A, 0x05, 0x11, 0x00, 0x00, 0x00,
        0x0A,
    ]);
    bytes.extend_from_slice(&[0x00, 0x01, b'c']); // client id
    bytes.push(0x00); // will properties: none
    for field in [&b"w"[..], b"m", b"u", b"p"] {
        bytes.extend_from_slice(&(field.len() as u16).to_be_bytes());
        bytes.extend_from_slice(field);
    }
    bytes[1] = (bytes.len() - 2) as u8;
    let Packet::Connect(connect) = decode_exact(&bytes, V5) else {
        panic!("not a CONNECT")
    };
    assert_eq!(connect.protocol, V5);
    assert_eq!(connect.keep_alive, 10);
    assert_eq!(connect.properties.session_expiry_interval, Some(10));
}

/// MQTT 3.1.1 §3.3.2.3, figure 3.11: PUBLISH variable header, topic "a/b", packet id 10.
#[test]
fn v311_publish_variable_header_example() {
    let bytes = [
        0x32, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A, b'h', b'i',
    ];
    let Packet::Publish(publish) = decode_exact(&bytes, V311) else {
        panic!("not a PUBLISH")
    };
    assert_eq!(publish.topic.as_ref().map(|t| t.as_str()), Some("a/b"));
    assert_eq!(publish.packet_id, Some(id(10)));
    assert_eq!(publish.qos, QoS::AtLeastOnce);
    assert_eq!(&publish.payload[..], b"hi");
}

/// MQTT 3.1.1 §3.8.3, figure 3.22: SUBSCRIBE payload "a/b" QoS 1, "c/d" QoS 2.
#[test]
fn v311_subscribe_payload_example() {
    let bytes = [
        0x82, 0x0E, 0x00, 0x0A, 0x00, 0x03, b'a', b'/', b'b', 0x01, 0x00, 0x03, b'c', b'/', b'd',
        0x02,
    ];
    let expected = Packet::Subscribe(Subscribe {
        packet_id: id(10),
        properties: Default::default(),
        subscriptions: vec![
            Subscription::new(TopicFilter::new("a/b").unwrap(), QoS::AtLeastOnce),
            Subscription::new(TopicFilter::new("c/d").unwrap(), QoS::ExactlyOnce),
        ],
    });
    assert_eq!(decode_exact(&bytes, V311), expected);
}

/// MQTT 3.1.1 §3.9.3, figure 3.26: SUBACK payload: granted QoS 0, granted QoS 2, failure.
#[test]
fn v311_suback_payload_example() {
    let bytes = [0x90, 0x05, 0x00, 0x0A, 0x00, 0x02, 0x80];
    let expected = Packet::SubAck(SubAck {
        packet_id: id(10),
        properties: Default::default(),
        reason_codes: vec![
            ReasonCode::Success,
            ReasonCode::GrantedQoS2,
            ReasonCode::UnspecifiedError,
        ],
    });
    assert_eq!(decode_exact(&bytes, V311), expected);
}

/// MQTT 3.1.1 §3.10.3, figure 3.30: UNSUBSCRIBE payload "a/b", "c/d".
#[test]
fn v311_unsubscribe_payload_example() {
    let bytes = [
        0xA2, 0x0C, 0x00, 0x0A, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x03, b'c', b'/', b'd',
    ];
    let expected = Packet::Unsubscribe(Unsubscribe {
        packet_id: id(10),
        properties: Default::default(),
        filters: vec![
            TopicFilter::new("a/b").unwrap(),
            TopicFilter::new("c/d").unwrap(),
        ],
    });
    assert_eq!(decode_exact(&bytes, V311), expected);
}

/// The packets with no variable header: fixed header only.
#[test]
fn header_only_packets() {
    assert_eq!(decode_exact(&[0xC0, 0x00], V311), Packet::PingReq);
    assert_eq!(decode_exact(&[0xD0, 0x00], V311), Packet::PingResp);
    assert_eq!(
        decode_exact(&[0xE0, 0x00], V311),
        Packet::Disconnect(Disconnect::default())
    );
    assert_eq!(
        decode_exact(&[0x20, 0x02, 0x01, 0x00], V311),
        Packet::ConnAck(ConnAck {
            session_present: true,
            ..Default::default()
        })
    );
}

/// MQTT 5.0 §3.4.2.1 / §3.14.2.1: the reason code and properties may be left out; our encoder
/// writes the shortest form.
#[test]
fn v5_short_forms_of_acknowledgements_and_disconnect() {
    assert_eq!(
        decode_exact(&[0x40, 0x02, 0x00, 0x01], V5),
        Packet::PubAck(Ack::new(id(1)))
    );
    let with_code = Packet::PubRec(Ack {
        reason_code: ReasonCode::NoMatchingSubscribers,
        ..Ack::new(id(1))
    });
    assert_eq!(decode_exact(&[0x50, 0x03, 0x00, 0x01, 0x10], V5), with_code);
    assert_eq!(
        decode_exact(&[0xE0, 0x01, 0x8E], V5),
        Packet::Disconnect(Disconnect::new(ReasonCode::SessionTakenOver))
    );
    // A long form with an empty property section decodes to the same packet, which then
    // re-encodes in the short form.
    let mut long = BytesMut::from(&[0x40u8, 0x04, 0x00, 0x01, 0x00, 0x00][..]);
    let packet = decode(&mut long, V5, &Limits::default()).unwrap().unwrap();
    assert_eq!(packet, Packet::PubAck(Ack::new(id(1))));
    assert_eq!(&packet.to_bytes(V5).unwrap()[..], &[0x40, 0x02, 0x00, 0x01]);
}

/// MQTT 5 CONNACK return codes map onto the six MQTT 3.1.1 return codes both ways.
#[test]
fn v311_connack_return_codes_map_to_reason_codes() {
    let codes = [
        (0u8, ReasonCode::Success),
        (1, ReasonCode::UnsupportedProtocolVersion),
        (2, ReasonCode::ClientIdentifierNotValid),
        (3, ReasonCode::ServerUnavailable),
        (4, ReasonCode::BadUserNameOrPassword),
        (5, ReasonCode::NotAuthorized),
    ];
    for (byte, reason_code) in codes {
        let packet = Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code,
            properties: Default::default(),
        });
        assert_eq!(decode_exact(&[0x20, 0x02, 0x00, byte], V311), packet);
    }
    // A code with no 3.1.1 equivalent travels as the nearest one.
    let banned = Packet::ConnAck(ConnAck {
        reason_code: ReasonCode::Banned,
        ..Default::default()
    });
    assert_eq!(
        &banned.to_bytes(V311).unwrap()[..],
        &[0x20, 0x02, 0x00, 0x05]
    );
}

/// A decoded payload is a slice of the received buffer, not a copy.
#[test]
fn publish_payload_is_zero_copy() {
    let packet = Packet::Publish(Publish::new(
        TopicName::new("t").unwrap(),
        Bytes::from(vec![1u8; 4096]),
    ));
    let mut buf = BytesMut::new();
    packet.encode(V311, &mut buf).unwrap();
    let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
    let Some(Packet::Publish(publish)) = decode(&mut buf, V311, &Limits::default()).unwrap() else {
        panic!()
    };
    assert!(range.contains(&(publish.payload.as_ptr() as usize)));
    let topic = publish.topic.unwrap();
    assert!(
        range.contains(&(topic.as_ptr() as usize)),
        "topic is shared too"
    );
}
