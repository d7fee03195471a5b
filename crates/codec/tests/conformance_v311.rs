//! The normative statements of MQTT 3.1.1 about the packet format that the codec decides, each
//! checked on 3.1.1 bytes: what the encoder writes, and what the decoder refuses. Test names
//! carry the MQTT 3.1.1 statement id; `crates/session/CONFORMANCE.md` traces every statement
//! to them.

use bytes::{Bytes, BytesMut};
use rallymq_codec::{
    ALL_REASON_CODES, Ack, ConnAck, Connect, Disconnect, Error, Limits, MqttString, Packet,
    PacketId, PacketType, ProtocolVersion, Publish, QoS, ReasonCode, SubAck, Subscribe,
    Subscription, TopicFilter, TopicName, UnsubAck, Unsubscribe, Will, decode,
};

const V311: ProtocolVersion = ProtocolVersion::V3_1_1;

fn decode_v311(bytes: &[u8]) -> Result<Option<Packet>, Error> {
    decode(&mut BytesMut::from(bytes), V311, &Limits::default())
}

fn refused(bytes: &[u8]) -> Error {
    match decode_v311(bytes) {
        Err(error) => error,
        Ok(packet) => panic!("{bytes:02x?} decoded to {packet:?}"),
    }
}

fn decoded(bytes: &[u8]) -> Packet {
    match decode_v311(bytes) {
        Ok(Some(packet)) => packet,
        other => panic!("{bytes:02x?}: {other:?}"),
    }
}

fn encode(packet: &Packet) -> Vec<u8> {
    packet.to_bytes(V311).expect("encodable").to_vec()
}

fn id(n: u16) -> PacketId {
    PacketId::new(n).expect("non-zero")
}

/// A packet with a one-byte Remaining Length.
fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut bytes = vec![first, body.len() as u8];
    bytes.extend_from_slice(body);
    bytes
}

fn field(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

/// Every place a 3.1.1 packet carries a UTF-8 string, with `text` there: PUBLISH topic,
/// SUBSCRIBE and UNSUBSCRIBE filters, CONNECT client id, will topic and user name.
fn strings_in_every_field(text: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let connect = |flags: u8, payload: Vec<u8>| {
        let mut body = field(b"MQTT");
        body.extend_from_slice(&[4, flags, 0, 0]);
        body.extend(payload);
        packet(0x10, &body)
    };
    vec![
        (
            "topic",
            packet(0x30, &[field(text), b"x".to_vec()].concat()),
        ),
        (
            "filter",
            packet(0x82, &[vec![0, 1], field(text), vec![0]].concat()),
        ),
        (
            "unsubscribe filter",
            packet(0xA2, &[vec![0, 1], field(text)].concat()),
        ),
        ("client id", connect(0x02, field(text))),
        (
            "will topic",
            connect(0x06, [field(b"c"), field(text), field(b"m")].concat()),
        ),
        (
            "user name",
            connect(0x82, [field(b"c"), field(text)].concat()),
        ),
    ]
}

/// Asserts that `bad` is refused in every string field, with an error `expected` accepts.
fn assert_refused_in_every_string(bad: &[u8], expected: impl Fn(&Error) -> bool) {
    for (place, bytes) in strings_in_every_field(bad) {
        let error = refused(&bytes);
        assert!(expected(&error), "{place} {bad:02x?}: {error:?}");
    }
}

#[test]
fn mqtt_1_5_3_1_ill_formed_utf8_and_surrogates_are_refused_in_every_string() {
    // A byte never in UTF-8, an overlong '/', a truncated sequence, U+D800 and U+DFFF.
    for bad in [
        &b"a\xff"[..],
        b"\xc0\xaf",
        b"a\xe2\x82",
        b"\xed\xa0\x80",
        b"\xed\xbf\xbf",
    ] {
        assert_refused_in_every_string(bad, |error| {
            matches!(
                error,
                Error::InvalidUtf8
                    | Error::TopicName(rallymq_topic::Error::InvalidUtf8)
                    | Error::TopicFilter(rallymq_topic::Error::InvalidUtf8)
            )
        });
        // Nor can the sending side make such a string.
        assert!(MqttString::from_bytes(Bytes::copy_from_slice(bad)).is_err());
        assert!(TopicName::from_bytes(Bytes::copy_from_slice(bad)).is_err());
    }
}

#[test]
fn mqtt_1_5_3_2_null_character_is_refused_in_every_string() {
    for bad in [&b"\0"[..], b"a\0", b"a/\0/b"] {
        assert_refused_in_every_string(bad, |error| {
            matches!(
                error,
                Error::NullCharacter
                    | Error::TopicName(rallymq_topic::Error::NullCharacter)
                    | Error::TopicFilter(rallymq_topic::Error::NullCharacter)
            )
        });
    }
    assert!(MqttString::new("a\0b").is_err());
    assert!(TopicName::new("a\0b").is_err());
}

#[test]
fn mqtt_1_5_3_3_byte_order_mark_is_kept_where_it_appears() {
    let bom = "\u{feff}";
    for (place, bytes) in strings_in_every_field("\u{feff}a/\u{feff}".as_bytes()) {
        let text = match decoded(&bytes) {
            Packet::Publish(p) => p.topic.unwrap().as_str().to_owned(),
            Packet::Subscribe(s) => s.subscriptions[0].filter.as_str().to_owned(),
            Packet::Unsubscribe(u) => u.filters[0].as_str().to_owned(),
            Packet::Connect(c) => match place {
                "client id" => c.client_id.as_str().to_owned(),
                "will topic" => c.will.unwrap().topic.as_str().to_owned(),
                _ => c.username.unwrap().as_str().to_owned(),
            },
            other => panic!("{other:?}"),
        };
        assert_eq!(text, format!("{bom}a/{bom}"), "{place}");
    }
    // And the encoder writes it as given.
    let publish = Packet::Publish(Publish::new(
        TopicName::new(format!("{bom}t")).unwrap(),
        &b"p"[..],
    ));
    assert_eq!(
        encode(&publish),
        [0x30, 0x07, 0x00, 0x04, 0xEF, 0xBB, 0xBF, b't', b'p']
    );
}

/// One packet of every 3.1.1 type.
fn every_packet() -> Vec<Packet> {
    let filter = TopicFilter::new("a/+").unwrap();
    let mut qos2 = Publish::new(TopicName::new("a").unwrap(), &b"x"[..]);
    qos2.qos = QoS::ExactlyOnce;
    qos2.packet_id = Some(id(1));
    vec![
        Packet::from(Connect::new(V311, MqttString::new("c").unwrap())),
        Packet::ConnAck(ConnAck::default()),
        Packet::Publish(Publish::new(TopicName::new("a").unwrap(), &b"x"[..])),
        Packet::PubAck(Ack::new(id(1))),
        Packet::PubRec(Ack::new(id(1))),
        Packet::PubRel(Ack::new(id(1))),
        Packet::PubComp(Ack::new(id(1))),
        Packet::Subscribe(Subscribe {
            packet_id: id(1),
            properties: Default::default(),
            subscriptions: vec![Subscription::new(filter.clone(), QoS::AtLeastOnce)],
        }),
        Packet::SubAck(SubAck {
            packet_id: id(1),
            properties: Default::default(),
            reason_codes: vec![ReasonCode::GrantedQoS1],
        }),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: id(1),
            properties: Default::default(),
            filters: vec![filter],
        }),
        Packet::UnsubAck(UnsubAck {
            packet_id: id(1),
            properties: Default::default(),
            reason_codes: vec![],
        }),
        Packet::PingReq,
        Packet::PingResp,
        Packet::Disconnect(Disconnect::default()),
        Packet::Publish(qos2),
    ]
}

#[test]
fn mqtt_2_2_2_1_encoder_sets_the_reserved_flags_of_table_2_2() {
    let expected: [(PacketType, u8); 15] = [
        (PacketType::Connect, 0x10),
        (PacketType::ConnAck, 0x20),
        (PacketType::Publish, 0x30),
        (PacketType::PubAck, 0x40),
        (PacketType::PubRec, 0x50),
        (PacketType::PubRel, 0x62),
        (PacketType::PubComp, 0x70),
        (PacketType::Subscribe, 0x82),
        (PacketType::SubAck, 0x90),
        (PacketType::Unsubscribe, 0xA2),
        (PacketType::UnsubAck, 0xB0),
        (PacketType::PingReq, 0xC0),
        (PacketType::PingResp, 0xD0),
        (PacketType::Disconnect, 0xE0),
        (PacketType::Publish, 0x34), // PUBLISH's flags are DUP, QoS and RETAIN
    ];
    for (packet, (packet_type, first)) in every_packet().iter().zip(expected) {
        assert_eq!(packet.packet_type(), packet_type);
        assert_eq!(encode(packet)[0], first, "{packet_type:?}");
    }
}

#[test]
fn mqtt_2_2_2_2_every_other_flag_value_is_refused() {
    for packet in every_packet() {
        let packet_type = packet.packet_type();
        if packet_type == PacketType::Publish {
            continue;
        }
        let mut bytes = encode(&packet);
        let good = bytes[0] & 0x0F;
        assert!(decode_v311(&bytes).is_ok(), "{packet_type:?} as encoded");
        for flags in (0..16).filter(|flags| *flags != good) {
            bytes[0] = (bytes[0] & 0xF0) | flags;
            assert_eq!(
                refused(&bytes),
                Error::InvalidHeaderFlags {
                    packet: packet_type,
                    flags
                },
                "{packet_type:?} with flags {flags:04b}"
            );
        }
    }
}

#[test]
fn mqtt_2_3_1_5_qos_0_publish_has_no_packet_identifier() {
    let mut publish = Publish::new(TopicName::new("a").unwrap(), &b"x"[..]);
    publish.packet_id = Some(id(3));
    assert_eq!(
        Packet::Publish(publish.clone()).to_bytes(V311),
        Err(Error::PacketIdMismatch),
        "the encoder refuses to write an identifier into QoS 0"
    );
    publish.packet_id = None;
    assert_eq!(
        encode(&Packet::Publish(publish)),
        [0x30, 0x04, 0x00, 0x01, b'a', b'x']
    );
    // Decoding reads no identifier: what follows the topic is payload.
    let Packet::Publish(read) = decoded(&[0x30, 0x05, 0x00, 0x01, b'a', 0x00, 0x03]) else {
        panic!("not a PUBLISH")
    };
    assert_eq!(
        (read.packet_id, &read.payload[..]),
        (None, &[0x00, 0x03][..])
    );
}

#[test]
fn mqtt_3_1_3_1_connect_payload_fields_in_order() {
    let mut connect = Connect::new(V311, MqttString::new("id").unwrap());
    connect.keep_alive = 10;
    connect.will = Some(Will {
        topic: TopicName::new("wt").unwrap(),
        payload: Bytes::from_static(b"wm"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: Default::default(),
    });
    connect.username = Some(MqttString::new("un").unwrap());
    connect.password = Some(Bytes::from_static(b"pw"));
    let bytes = encode(&Packet::from(connect.clone()));
    let mut expected = vec![0x10, 30];
    expected.extend(field(b"MQTT"));
    expected.extend([4, 0b1110_1110, 0, 10]);
    for part in [b"id", b"wt", b"wm", b"un", b"pw"] {
        expected.extend(field(part));
    }
    assert_eq!(bytes, expected);
    assert_eq!(decoded(&bytes), Packet::from(connect));
}

#[test]
fn mqtt_3_6_1_1_pubrel_is_read_only_with_flags_0010() {
    assert!(matches!(
        decoded(&[0x62, 0x02, 0x00, 0x05]),
        Packet::PubRel(ack) if ack.packet_id == id(5)
    ));
    for first in [0x60, 0x61, 0x63, 0x64, 0x66, 0x6A, 0x6F] {
        assert_eq!(
            refused(&[first, 0x02, 0x00, 0x05]),
            Error::InvalidHeaderFlags {
                packet: PacketType::PubRel,
                flags: first & 0x0F
            }
        );
    }
}

#[test]
fn mqtt_3_9_3_2_suback_return_codes_are_0_1_2_or_0x80() {
    for code in ALL_REASON_CODES {
        let suback = Packet::SubAck(SubAck {
            packet_id: id(1),
            properties: Default::default(),
            reason_codes: vec![code],
        });
        let byte = encode(&suback)[4];
        let expected = match code {
            ReasonCode::Success => 0,
            ReasonCode::GrantedQoS1 => 1,
            ReasonCode::GrantedQoS2 => 2,
            _ => 0x80,
        };
        assert_eq!(byte, expected, "{code:?}");
    }
    for reserved in [0x03, 0x10, 0x7F, 0x81, 0x87, 0x8F, 0xFF] {
        assert!(
            decode_v311(&[0x90, 0x03, 0x00, 0x01, reserved]).is_err(),
            "{reserved:#x}"
        );
    }
    for allowed in [0x00, 0x01, 0x02, 0x80] {
        assert!(decode_v311(&[0x90, 0x03, 0x00, 0x01, allowed]).is_ok());
    }
}
