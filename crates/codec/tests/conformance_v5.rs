//! MQTT 5.0 conformance of the packet format: each test is named after the normative statement
//! of MQTT 5.0 it checks (`mqtt_3_1_2_9_...` for MQTT-3.1.2-9), and
//! `crates/session/CONFORMANCE.md` traces every statement to its tests. Packets are written
//! byte by byte here, so that what the codec reads and writes is checked against the
//! specification's layout rather than against itself.

use bytes::{Bytes, BytesMut};
use rallymq_codec::{
    Connect, Decoder, Error, Limits, MqttString, Packet, PacketType, ProtocolVersion, Publish,
    PublishProperties, QoS, ReasonCode, SubscriptionId, TopicName, UserProperty, Will,
    WillProperties, decode,
};

const V5: ProtocolVersion = ProtocolVersion::V5;

/// A packet: `first` (type and flags), the Remaining Length, `body`.
fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut bytes = vec![first];
    let mut length = body.len();
    loop {
        let mut byte = (length % 128) as u8;
        length /= 128;
        if length > 0 {
            byte |= 0x80;
        }
        bytes.push(byte);
        if length == 0 {
            break;
        }
    }
    bytes.extend_from_slice(body);
    bytes
}

/// A length-prefixed field.
fn field(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

/// A CONNECT for MQTT 5 with connect `flags`, no properties, keep alive 60, then `payload`.
fn connect(flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, flags, 0, 60, 0];
    body.extend_from_slice(payload);
    packet(0x10, &body)
}

fn decoded(bytes: &[u8]) -> Result<Option<Packet>, Error> {
    let mut buf = BytesMut::from(bytes);
    let result = Decoder::new(Limits::default()).decode(&mut buf);
    if let Ok(Some(_)) = result {
        assert!(buf.is_empty(), "the whole packet is read");
    }
    result
}

/// Decodes a packet other than CONNECT, as an MQTT 5 connection does.
fn decoded_v5(bytes: &[u8]) -> Result<Option<Packet>, Error> {
    decode(&mut BytesMut::from(bytes), V5, &Limits::default())
}

fn refused(result: Result<Option<Packet>, Error>) -> Error {
    match result {
        Err(error) => error,
        Ok(packet) => panic!("decoded to {packet:?}, expected an error"),
    }
}

fn encoded(packet: impl Into<Packet>) -> Vec<u8> {
    packet.into().to_bytes(V5).expect("encodable").to_vec()
}

/// Ill-formed UTF-8: an encoded surrogate (U+D800), which RFC 3629 forbids.
const SURROGATE: [u8; 3] = [0xED, 0xA0, 0x80];

fn text(value: &str) -> MqttString {
    MqttString::new(value).unwrap()
}

// ------------------------------------------------------------------ 1.5 data representation

#[test]
fn mqtt_1_5_4_3_byte_order_mark_is_kept_where_it_appears() {
    // U+FEFF at the start of a topic and inside a user property: neither skipped nor stripped.
    let topic = "\u{FEFF}a/\u{FEFF}b";
    let mut properties = vec![0x26];
    properties.extend(field("\u{FEFF}name".as_bytes()));
    properties.extend(field("va\u{FEFF}lue".as_bytes()));
    let mut body = field(topic.as_bytes());
    body.push(properties.len() as u8);
    body.extend(&properties);
    body.extend_from_slice(b"payload");
    let bytes = packet(0x30, &body);
    let Ok(Some(Packet::Publish(publish))) = decoded_v5(&bytes) else {
        panic!("a PUBLISH")
    };
    assert_eq!(publish.topic.as_ref().map(TopicName::as_str), Some(topic));
    let property = &publish.properties.user_properties[0];
    assert_eq!(
        (property.name.as_str(), property.value.as_str()),
        ("\u{FEFF}name", "va\u{FEFF}lue")
    );
    assert_eq!(encoded(publish), bytes, "written back as read");
}

#[test]
fn mqtt_1_5_5_1_variable_byte_integers_in_the_body_are_minimal() {
    // A Property Length of 0 written in two bytes.
    let mut body = field(b"a");
    body.extend_from_slice(&[0x80, 0x00]);
    assert_eq!(
        refused(decoded_v5(&packet(0x30, &body))),
        Error::MalformedVariableByteInteger
    );
    // A Subscription Identifier of 1 written in two bytes.
    let mut body = vec![0, 1, 3, 0x0B, 0x81, 0x00];
    body.extend(field(b"a/b"));
    body.push(0);
    let error = refused(decoded_v5(&packet(0x82, &body)));
    assert_eq!(error, Error::MalformedVariableByteInteger);
    assert_eq!(error.reason_code(), ReasonCode::MalformedPacket);
    // Written with the fewest bytes: 127 in one, 128 in two, 16,384 in three.
    for (id, len) in [(127u32, 1usize), (128, 2), (16_384, 3)] {
        let mut publish = Publish::new(TopicName::new("t").unwrap(), "");
        publish.properties.subscription_identifiers = vec![SubscriptionId::new(id).unwrap()];
        let bytes = encoded(publish);
        // Fixed header 2, topic 3, property length 1, identifier byte 1.
        assert_eq!(bytes.len(), 2 + 3 + 1 + 1 + len, "identifier {id}");
    }
}

#[test]
fn mqtt_1_5_7_1_both_strings_of_a_user_property_are_utf8_strings() {
    for (name, value) in [
        (&SURROGATE[..], &b"v"[..]),
        (&b"n"[..], &SURROGATE[..]),
        (&b"n\0"[..], &b"v"[..]),
        (&b"n"[..], &b"\0v"[..]),
    ] {
        let mut properties = vec![0x26];
        properties.extend(field(name));
        properties.extend(field(value));
        let mut body = field(b"a");
        body.push(properties.len() as u8);
        body.extend(&properties);
        let error = refused(decoded_v5(&packet(0x30, &body)));
        assert!(
            matches!(error, Error::InvalidUtf8 | Error::NullCharacter),
            "{error:?}"
        );
        assert_eq!(error.reason_code(), ReasonCode::MalformedPacket);
    }
    assert!(
        UserProperty::new("n\0", "v").is_err(),
        "nor can one be built"
    );
}

// ------------------------------------------------------------------ 2 packet format

#[test]
fn mqtt_2_1_3_1_reserved_flags_hold_their_listed_value_in_every_packet() {
    // Every packet type whose flags are reserved, with its one valid value.
    let cases: [(u8, u8, &[u8]); 13] = [
        (1, 0, &[]),
        (2, 0, &[0, 0, 0]),
        (4, 0, &[0, 1]),
        (5, 0, &[0, 1]),
        (6, 2, &[0, 1]),
        (7, 0, &[0, 1]),
        (8, 2, &[0, 1, 0, 0, 1, b'a', 0]),
        (9, 0, &[0, 1, 0, 0]),
        (10, 2, &[0, 1, 0, 0, 1, b'a']),
        (11, 0, &[0, 1, 0, 0]),
        (12, 0, &[]),
        (13, 0, &[]),
        (14, 0, &[]),
    ];
    for (kind, valid, body) in cases {
        for flags in 0..16u8 {
            if flags == valid || kind == 1 {
                continue;
            }
            let error = refused(decoded_v5(&packet((kind << 4) | flags, body)));
            assert!(
                matches!(error, Error::InvalidHeaderFlags { flags: f, .. } if f == flags),
                "type {kind} flags {flags:#06b}: {error:?}"
            );
            assert_eq!(error.reason_code(), ReasonCode::MalformedPacket);
        }
        if kind != 1 {
            assert!(
                decoded_v5(&packet((kind << 4) | valid, body)).is_ok(),
                "type {kind} with its listed flags"
            );
        }
    }
    // AUTH (15): flags 0.
    assert!(matches!(
        refused(decoded_v5(&packet(0xF1, &[]))),
        Error::InvalidHeaderFlags { .. }
    ));
    // CONNECT (1), decoded before the version is known.
    let mut bytes = connect(0x02, &field(b"c"));
    bytes[0] = 0x12;
    assert!(matches!(
        refused(decoded(&bytes)),
        Error::InvalidHeaderFlags { .. }
    ));
}

#[test]
fn mqtt_2_2_1_2_qos_0_publish_has_no_packet_identifier() {
    let mut publish = Publish::new(TopicName::new("a").unwrap(), &b"xy"[..]);
    assert_eq!(
        encoded(publish.clone()),
        [0x30, 0x06, 0, 1, b'a', 0, b'x', b'y'],
        "topic, property length, payload: no identifier"
    );
    publish.packet_id = rallymq_codec::PacketId::new(7);
    assert_eq!(
        Packet::Publish(publish).to_bytes(V5),
        Err(Error::PacketIdMismatch),
        "the codec will not write one"
    );
    // The two bytes after the topic of a QoS 0 PUBLISH are no identifier.
    let Ok(Some(Packet::Publish(read))) = decoded_v5(&[0x30, 0x06, 0, 1, b'a', 0x00, 0x00, 0x07])
    else {
        panic!("a PUBLISH")
    };
    assert_eq!(read.packet_id, None);
    assert_eq!(read.payload, Bytes::from_static(&[0x00, 0x07]));
}

#[test]
fn mqtt_2_2_2_1_no_properties_is_a_property_length_of_zero() {
    let mut connect_packet = Connect::new(V5, text("c"));
    connect_packet.keep_alive = 60;
    connect_packet.will = Some(Will {
        topic: TopicName::new("w").unwrap(),
        payload: Bytes::from_static(b"p"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
    });
    let mut expected = field(b"MQTT");
    expected.extend_from_slice(&[5, 0x06, 0, 60, 0]); // CONNECT properties: none
    expected.extend(field(b"c"));
    expected.push(0); // will properties: none
    expected.extend(field(b"w"));
    expected.extend(field(b"p"));
    assert_eq!(encoded(connect_packet), packet(0x10, &expected));
    assert_eq!(
        encoded(rallymq_codec::ConnAck::default()),
        [0x20, 0x03, 0x00, 0x00, 0x00]
    );
    let subscribe = rallymq_codec::Subscribe {
        packet_id: rallymq_codec::PacketId::new(1).unwrap(),
        properties: Default::default(),
        subscriptions: vec![rallymq_codec::Subscription::new(
            rallymq_codec::TopicFilter::new("a").unwrap(),
            QoS::AtMostOnce,
        )],
    };
    assert_eq!(encoded(subscribe), [0x82, 0x07, 0, 1, 0, 0, 1, b'a', 0]);
    let suback = rallymq_codec::SubAck {
        packet_id: rallymq_codec::PacketId::new(1).unwrap(),
        properties: Default::default(),
        reason_codes: vec![ReasonCode::Success],
    };
    assert_eq!(encoded(suback), [0x90, 0x04, 0, 1, 0, 0]);
    let unsubscribe = rallymq_codec::Unsubscribe {
        packet_id: rallymq_codec::PacketId::new(1).unwrap(),
        properties: Default::default(),
        filters: vec![rallymq_codec::TopicFilter::new("a").unwrap()],
    };
    assert_eq!(encoded(unsubscribe), [0xA2, 0x06, 0, 1, 0, 0, 1, b'a']);
    let unsuback = rallymq_codec::UnsubAck {
        packet_id: rallymq_codec::PacketId::new(1).unwrap(),
        properties: Default::default(),
        reason_codes: vec![ReasonCode::Success],
    };
    assert_eq!(encoded(unsuback), [0xB0, 0x04, 0, 1, 0, 0]);
    // Where the Property Length is required, leaving it out is malformed.
    assert_eq!(
        refused(decoded_v5(&[0x20, 0x02, 0x00, 0x00])),
        Error::Truncated
    );
    assert_eq!(refused(decoded_v5(&[0x90, 0x02, 0, 1])), Error::Truncated);
}

// ------------------------------------------------------------------ 3.1 CONNECT

/// Bits of the CONNECT flags byte.
const WILL: u8 = 0x04;
const USER_NAME: u8 = 0x80;
const PASSWORD: u8 = 0x40;
const CLEAN: u8 = 0x02;

#[test]
fn mqtt_3_1_2_9_will_flag_brings_will_properties_topic_and_payload() {
    let mut payload = field(b"c");
    payload.push(0);
    payload.extend(field(b"w/t"));
    payload.extend(field(b"gone"));
    let Ok(Some(Packet::Connect(read))) = decoded(&connect(CLEAN | WILL, &payload)) else {
        panic!("a CONNECT")
    };
    let will = read.will.expect("a will");
    assert_eq!(
        (will.topic.as_str(), &will.payload[..]),
        ("w/t", &b"gone"[..])
    );
    // The flag without the fields, or with only some of them, is malformed.
    for cut in [2, 3 + 5, 3 + 5 + 3] {
        let short = connect(CLEAN | WILL, &payload[..cut + 1]);
        assert_eq!(refused(decoded(&short)), Error::Truncated, "cut at {cut}");
    }
    // Writing a will sets the flag and writes the three fields.
    let mut with_will = Connect::new(V5, text("c"));
    with_will.keep_alive = 60;
    with_will.will = Some(will);
    assert_eq!(encoded(with_will), connect(CLEAN | WILL, &payload));
}

#[test]
fn mqtt_3_1_2_16_no_user_name_without_the_user_name_flag() {
    let mut payload = field(b"c");
    payload.extend(field(b"alice"));
    assert!(matches!(
        refused(decoded(&connect(CLEAN, &payload))),
        Error::TrailingBytes(7)
    ));
    let mut anonymous = Connect::new(V5, text("c"));
    anonymous.keep_alive = 60;
    assert_eq!(encoded(anonymous), connect(CLEAN, &field(b"c")));
}

#[test]
fn mqtt_3_1_2_17_user_name_flag_brings_a_user_name() {
    assert_eq!(
        refused(decoded(&connect(CLEAN | USER_NAME, &field(b"c")))),
        Error::Truncated
    );
    let mut payload = field(b"c");
    payload.extend(field(b"alice"));
    let Ok(Some(Packet::Connect(read))) = decoded(&connect(CLEAN | USER_NAME, &payload)) else {
        panic!("a CONNECT")
    };
    assert_eq!(read.username, Some(text("alice")));
    assert_eq!(encoded(*read), connect(CLEAN | USER_NAME, &payload));
}

#[test]
fn mqtt_3_1_2_18_no_password_without_the_password_flag() {
    let mut payload = field(b"c");
    payload.extend(field(b"alice"));
    payload.extend(field(b"secret"));
    assert!(matches!(
        refused(decoded(&connect(CLEAN | USER_NAME, &payload))),
        Error::TrailingBytes(8)
    ));
}

#[test]
fn mqtt_3_1_2_19_password_flag_brings_a_password() {
    let mut payload = field(b"c");
    payload.extend(field(b"alice"));
    assert_eq!(
        refused(decoded(&connect(CLEAN | USER_NAME | PASSWORD, &payload))),
        Error::Truncated
    );
    // MQTT 5 allows a password without a user name.
    let mut payload = field(b"c");
    payload.extend(field(b"token"));
    let Ok(Some(Packet::Connect(read))) = decoded(&connect(CLEAN | PASSWORD, &payload)) else {
        panic!("a CONNECT")
    };
    assert_eq!(read.password, Some(Bytes::from_static(b"token")));
    assert_eq!(encoded(*read), connect(CLEAN | PASSWORD, &payload));
}

#[test]
fn mqtt_3_1_3_1_payload_fields_come_in_their_order() {
    let mut full = Connect::new(V5, text("client"));
    full.keep_alive = 60;
    full.clean_start = true;
    full.will = Some(Will {
        topic: TopicName::new("will/t").unwrap(),
        payload: Bytes::from_static(b"bye"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: WillProperties {
            will_delay_interval: Some(5),
            ..Default::default()
        }
        .into(),
    });
    full.username = Some(text("user"));
    full.password = Some(Bytes::from_static(b"pass"));
    let mut payload = field(b"client");
    payload.extend_from_slice(&[5, 0x18, 0, 0, 0, 5]); // Will Properties: Will Delay 5
    payload.extend(field(b"will/t"));
    payload.extend(field(b"bye"));
    payload.extend(field(b"user"));
    payload.extend(field(b"pass"));
    let flags = USER_NAME | PASSWORD | 0x20 | 0x08 | WILL | CLEAN;
    let bytes = connect(flags, &payload);
    assert_eq!(encoded(full.clone()), bytes);
    assert_eq!(decoded(&bytes), Ok(Some(Packet::from(full))));
}

#[test]
fn mqtt_3_1_3_3_client_identifier_is_present_and_first() {
    assert_eq!(refused(decoded(&connect(CLEAN, &[]))), Error::Truncated);
    let Ok(Some(Packet::Connect(read))) = decoded(&connect(CLEAN, &field(b"first"))) else {
        panic!("a CONNECT")
    };
    assert_eq!(read.client_id, text("first"));
}

/// Asserts `bytes` is refused as malformed for ill-formed UTF-8.
fn assert_ill_formed(result: Result<Option<Packet>, Error>) {
    let error = refused(result);
    assert!(
        matches!(
            error,
            Error::InvalidUtf8 | Error::TopicName(_) | Error::TopicFilter(_)
        ),
        "{error:?}"
    );
    assert_eq!(error.reason_code(), ReasonCode::MalformedPacket, "{error}");
}

#[test]
fn mqtt_3_1_3_4_client_identifier_is_a_utf8_string() {
    assert_ill_formed(decoded(&connect(CLEAN, &field(&SURROGATE))));
}

#[test]
fn mqtt_3_1_3_11_will_topic_is_a_utf8_string() {
    let mut payload = field(b"c");
    payload.push(0);
    payload.extend(field(&SURROGATE));
    payload.extend(field(b"p"));
    assert_ill_formed(decoded(&connect(CLEAN | WILL, &payload)));
}

#[test]
fn mqtt_3_1_3_12_user_name_is_a_utf8_string() {
    let mut payload = field(b"c");
    payload.extend(field(&SURROGATE));
    assert_ill_formed(decoded(&connect(CLEAN | USER_NAME, &payload)));
}

// ------------------------------------------------------------------ 3.3 PUBLISH

/// A QoS 0 PUBLISH to `topic` with the property section `properties`.
fn publish_bytes(topic: &[u8], properties: &[u8]) -> Vec<u8> {
    let mut body = field(topic);
    body.push(properties.len() as u8);
    body.extend_from_slice(properties);
    body.extend_from_slice(b"x");
    packet(0x30, &body)
}

#[test]
fn mqtt_3_3_2_1_topic_name_is_the_first_field_and_a_utf8_string() {
    assert_ill_formed(decoded_v5(&publish_bytes(&SURROGATE, &[])));
    let Ok(Some(Packet::Publish(read))) = decoded_v5(&publish_bytes(b"a/b", &[])) else {
        panic!("a PUBLISH")
    };
    assert_eq!(read.topic.as_ref().map(TopicName::as_str), Some("a/b"));
}

#[test]
fn mqtt_3_3_2_13_response_topic_is_a_utf8_string() {
    let mut properties = vec![0x08];
    properties.extend(field(&SURROGATE));
    assert_ill_formed(decoded_v5(&publish_bytes(b"a", &properties)));
}

#[test]
fn mqtt_3_3_2_14_response_topic_has_no_wildcards() {
    for wildcard in [&b"reply/#"[..], b"reply/+/x"] {
        let mut properties = vec![0x08];
        properties.extend(field(wildcard));
        let error = refused(decoded_v5(&publish_bytes(b"a", &properties)));
        assert!(matches!(error, Error::TopicName(_)), "{error:?}");
        assert_eq!(error.reason_code(), ReasonCode::TopicNameInvalid);
        // In a will's properties too.
        let mut payload = field(b"c");
        payload.push(properties.len() as u8);
        payload.extend(&properties);
        payload.extend(field(b"w"));
        payload.extend(field(b"p"));
        assert!(matches!(
            refused(decoded(&connect(CLEAN | WILL, &payload))),
            Error::TopicName(_)
        ));
    }
    assert!(TopicName::new("reply/#").is_err(), "nor can one be built");
    let mut properties = vec![0x08];
    properties.extend(field(b"reply/here"));
    let Ok(Some(Packet::Publish(read))) = decoded_v5(&publish_bytes(b"a", &properties)) else {
        panic!("a PUBLISH")
    };
    assert_eq!(
        read.properties.response_topic,
        Some(TopicName::new("reply/here").unwrap())
    );
}

#[test]
fn mqtt_3_3_2_19_content_type_is_a_utf8_string() {
    let mut properties = vec![0x03];
    properties.extend(field(&SURROGATE));
    assert_ill_formed(decoded_v5(&publish_bytes(b"a", &properties)));
    let mut properties = vec![0x03];
    properties.extend(field(b"text/plain"));
    let Ok(Some(Packet::Publish(read))) = decoded_v5(&publish_bytes(b"a", &properties)) else {
        panic!("a PUBLISH")
    };
    assert_eq!(
        read.properties.clone().into_inner(),
        PublishProperties {
            content_type: Some(text("text/plain")),
            ..Default::default()
        }
    );
}

// ------------------------------------------------------------------ 3.8, 3.10 SUBSCRIBE, UNSUBSCRIBE

#[test]
fn mqtt_3_8_3_1_subscribe_topic_filters_are_utf8_strings() {
    let mut body = vec![0, 1, 0];
    body.extend(field(&SURROGATE));
    body.push(0);
    assert_ill_formed(decoded_v5(&packet(0x82, &body)));
    let mut body = vec![0, 1, 0];
    body.extend(field(b"ok/+"));
    body.push(1);
    body.extend(field(b"a\0b"));
    body.push(1);
    let error = refused(decoded_v5(&packet(0x82, &body)));
    assert_eq!(
        error.reason_code(),
        ReasonCode::MalformedPacket,
        "{error:?}"
    );
}

#[test]
fn mqtt_3_10_3_1_unsubscribe_topic_filters_are_utf8_strings() {
    let mut body = vec![0, 1, 0];
    body.extend(field(b"ok/#"));
    body.extend(field(&SURROGATE));
    assert_ill_formed(decoded_v5(&packet(0xA2, &body)));
}

#[test]
fn mqtt_3_6_1_1_pubrel_flags_are_0010() {
    for flags in [0u8, 1, 3, 8] {
        let error = refused(decoded_v5(&packet(0x60 | flags, &[0, 1])));
        assert_eq!(
            error,
            Error::InvalidHeaderFlags {
                packet: PacketType::PubRel,
                flags
            }
        );
        assert_eq!(error.reason_code(), ReasonCode::MalformedPacket);
    }
    assert_eq!(
        encoded(Packet::PubRel(rallymq_codec::Ack::new(
            rallymq_codec::PacketId::new(1).unwrap()
        )))[0],
        0x62
    );
}

// ------------------------------------------------------------------ the same rules at level 5

/// A DISCONNECT whose Reason String is `reason`.
fn disconnect_with_reason(reason: &[u8]) -> Vec<u8> {
    let mut properties = vec![0x1F];
    properties.extend(field(reason));
    let mut body = vec![0x80, properties.len() as u8];
    body.extend(&properties);
    packet(0xE0, &body)
}

#[test]
fn mqtt_1_5_4_1_ill_formed_utf8_in_an_mqtt_5_string_is_malformed() {
    for ill in [&SURROGATE[..], &[0xC0, 0x80], &[b'a', 0xFF]] {
        assert_ill_formed(decoded_v5(&disconnect_with_reason(ill)));
        assert_ill_formed(decoded_v5(&publish_bytes(ill, &[])));
        assert_ill_formed(decoded(&connect(CLEAN, &field(ill))));
    }
}

#[test]
fn mqtt_1_5_4_2_null_character_in_an_mqtt_5_string_is_malformed() {
    for error in [
        refused(decoded_v5(&disconnect_with_reason(b"no\0pe"))),
        refused(decoded_v5(&publish_bytes(b"a\0b", &[]))),
        refused(decoded(&connect(CLEAN, &field(b"\0")))),
    ] {
        assert!(
            matches!(
                error,
                Error::NullCharacter | Error::TopicName(rallymq_topic::Error::NullCharacter)
            ),
            "{error:?}"
        );
        assert_eq!(error.reason_code(), ReasonCode::MalformedPacket);
    }
}

#[test]
fn mqtt_3_1_2_11_will_qos_without_the_will_flag_is_malformed() {
    for will_qos in [0x08, 0x10] {
        let error = refused(decoded(&connect(CLEAN | will_qos, &field(b"c"))));
        assert_eq!(error, Error::InvalidWillFlags);
        assert_eq!(error.reason_code(), ReasonCode::MalformedPacket);
    }
}

#[test]
fn mqtt_3_1_2_12_will_qos_is_0_1_or_2() {
    let mut payload = field(b"c");
    payload.push(0);
    payload.extend(field(b"w"));
    payload.extend(field(b"p"));
    for (bits, qos) in [
        (0x00, QoS::AtMostOnce),
        (0x08, QoS::AtLeastOnce),
        (0x10, QoS::ExactlyOnce),
    ] {
        let Ok(Some(Packet::Connect(read))) = decoded(&connect(CLEAN | WILL | bits, &payload))
        else {
            panic!("a CONNECT with will QoS {qos:?}")
        };
        assert_eq!(read.will.map(|w| w.qos), Some(qos));
    }
    let error = refused(decoded(&connect(CLEAN | WILL | 0x18, &payload)));
    assert_eq!(error, Error::InvalidWillFlags);
    assert_eq!(error.reason_code(), ReasonCode::MalformedPacket);
}

#[test]
fn mqtt_3_1_2_13_will_retain_without_the_will_flag_is_malformed() {
    let error = refused(decoded(&connect(CLEAN | 0x20, &field(b"c"))));
    assert_eq!(error, Error::InvalidWillFlags);
    assert_eq!(error.reason_code(), ReasonCode::MalformedPacket);
}

#[test]
fn mqtt_3_2_2_1_connack_reserved_flags_are_0() {
    for flags in [0x02u8, 0x80, 0xFE] {
        let error = refused(decoded_v5(&[0x20, 0x03, flags, 0x00, 0x00]));
        assert_eq!(error, Error::ReservedConnAckFlags);
        assert_eq!(error.reason_code(), ReasonCode::MalformedPacket);
    }
    let mut connack = rallymq_codec::ConnAck {
        session_present: true,
        ..Default::default()
    };
    assert_eq!(encoded(connack.clone())[2], 0x01);
    connack.session_present = false;
    assert_eq!(encoded(connack)[2], 0x00);
}

#[test]
fn mqtt_3_3_1_2_dup_on_an_mqtt_5_qos_0_publish_is_malformed() {
    let error = refused(decoded_v5(&[0x38, 0x04, 0x00, 0x01, b'a', 0x00]));
    assert_eq!(error, Error::DupOnQoS0);
    assert_eq!(error.reason_code(), ReasonCode::MalformedPacket);
    let mut publish = Publish::new(TopicName::new("a").unwrap(), "");
    publish.dup = true;
    assert_eq!(
        Packet::Publish(publish).to_bytes(V5),
        Err(Error::DupOnQoS0),
        "nor is one written"
    );
}

#[test]
fn mqtt_3_3_1_4_mqtt_5_publish_with_both_qos_bits_set_is_malformed() {
    let error = refused(decoded_v5(&[
        0x36, 0x06, 0x00, 0x01, b'a', 0x00, 0x01, 0x00,
    ]));
    assert_eq!(error, Error::InvalidQoS);
    assert_eq!(error.reason_code(), ReasonCode::MalformedPacket);
}
