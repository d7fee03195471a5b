//! Strict decoding: every malformed or forbidden input is refused with the right error and the
//! MQTT 5 reason code to answer it with. Test names carry the normative statement they check
//! (`mqtt_X_Y_Z_N_...`, from MQTT 5.0 unless marked `v311`).

use bytes::BytesMut;
use rallymq_codec::{
    Decoder, Error, Limits, Packet, PacketType, ProtocolVersion, ReasonCode, decode,
};

const V311: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

fn decode_one(bytes: &[u8], version: ProtocolVersion) -> Result<Option<Packet>, Error> {
    decode(&mut BytesMut::from(bytes), version, &Limits::default())
}

fn refused(bytes: &[u8], version: ProtocolVersion) -> Error {
    match decode_one(bytes, version) {
        Err(error) => error,
        Ok(packet) => panic!("{bytes:02x?} decoded to {packet:?}, expected an error"),
    }
}

fn assert_refused(bytes: &[u8], version: ProtocolVersion, expected: Error, code: ReasonCode) {
    let error = refused(bytes, version);
    assert_eq!(error, expected, "for {bytes:02x?}");
    assert_eq!(error.reason_code(), code, "reason code for {error}");
}

/// A CONNECT with the given protocol name, level and flags, client id "c", for MQTT < 5.
fn connect_v3(name: &[u8], level: u8, flags: u8, payload_tail: &[u8]) -> Vec<u8> {
    let mut body = vec![0, name.len() as u8];
    body.extend_from_slice(name);
    body.extend_from_slice(&[level, flags, 0, 60]);
    if level & 0x7f == 5 {
        body.push(0); // empty properties
    }
    body.extend_from_slice(&[0, 1, b'c']);
    body.extend_from_slice(payload_tail);
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);
    packet
}

// ---------------------------------------------------------------- fixed header

#[test]
fn mqtt_1_5_5_1_remaining_length_longer_than_four_bytes_is_malformed() {
    assert_refused(
        &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
        V311,
        Error::MalformedRemainingLength,
        ReasonCode::MalformedPacket,
    );
}

#[test]
fn mqtt_1_5_5_1_remaining_length_not_minimally_encoded_is_malformed() {
    assert_refused(
        &[0xC0, 0x80, 0x00],
        V311,
        Error::MalformedRemainingLength,
        ReasonCode::MalformedPacket,
    );
}

#[test]
fn remaining_length_of_the_protocol_maximum_waits_for_the_body() {
    // 268,435,455 is the largest expressible length; with the default limits it is incomplete,
    // not an error, and nothing is consumed.
    let mut buf = BytesMut::from(&[0x30u8, 0xFF, 0xFF, 0xFF, 0x7F][..]);
    assert_eq!(decode(&mut buf, V311, &Limits::default()), Ok(None));
    assert_eq!(&buf[..], &[0x30, 0xFF, 0xFF, 0xFF, 0x7F]);
    // and announcing it did not make the decoder allocate it
    assert!(
        buf.capacity() < 1024 * 1024,
        "reserved {} bytes",
        buf.capacity()
    );
}

#[test]
fn packet_over_maximum_packet_size_is_refused_from_the_header_before_the_body() {
    let limits = Limits {
        max_packet_size: 1024,
    };
    // Only the fixed header of a 2,000-byte PUBLISH has arrived.
    let mut buf = BytesMut::from(&[0x30u8, 0xCD, 0x0F][..]);
    let error = decode(&mut buf, V5, &limits).unwrap_err();
    assert_eq!(
        error,
        Error::PacketTooLarge {
            size: 3 + 1997,
            max: 1024
        }
    );
    assert_eq!(error.reason_code(), ReasonCode::PacketTooLarge);
}

#[test]
fn packet_exactly_at_maximum_packet_size_is_accepted() {
    let limits = Limits { max_packet_size: 4 };
    let mut buf = BytesMut::from(&[0x40u8, 0x02, 0x00, 0x01][..]);
    assert!(matches!(
        decode(&mut buf, V311, &limits),
        Ok(Some(Packet::PubAck(_)))
    ));
}

#[test]
fn packet_type_zero_is_malformed() {
    assert_refused(
        &[0x00, 0x00],
        V5,
        Error::InvalidPacketType(0),
        ReasonCode::MalformedPacket,
    );
}

#[test]
fn auth_before_mqtt_5_is_malformed() {
    assert_refused(
        &[0xF0, 0x00],
        V311,
        Error::InvalidPacketType(15),
        ReasonCode::MalformedPacket,
    );
    assert!(matches!(
        decode_one(&[0xF0, 0x00], V5),
        Ok(Some(Packet::Auth(_)))
    ));
}

#[test]
fn mqtt_2_1_3_1_subscribe_with_reserved_flags_other_than_0010_is_malformed() {
    for first in [0x80, 0x81, 0x83, 0x8A] {
        let flags = first & 0x0F;
        assert_refused(
            &[first, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00],
            V311,
            Error::InvalidHeaderFlags {
                packet: PacketType::Subscribe,
                flags,
            },
            ReasonCode::MalformedPacket,
        );
    }
}

#[test]
fn v311_mqtt_2_2_2_1_reserved_flags_of_other_packets_are_checked() {
    let cases: [(&[u8], PacketType, u8); 5] = [
        (&[0x60, 0x02, 0x00, 0x01], PacketType::PubRel, 0),
        (
            &[0xA0, 0x05, 0x00, 0x01, 0x00, 0x01, b'a'],
            PacketType::Unsubscribe,
            0,
        ),
        (&[0xC1, 0x00], PacketType::PingReq, 1),
        (&[0x42, 0x02, 0x00, 0x01], PacketType::PubAck, 2),
        (&[0xE8, 0x00], PacketType::Disconnect, 8),
    ];
    for (bytes, packet, flags) in cases {
        assert_refused(
            bytes,
            V311,
            Error::InvalidHeaderFlags { packet, flags },
            ReasonCode::MalformedPacket,
        );
    }
}

#[test]
fn v311_mqtt_3_6_1_1_pubrel_requires_flags_0010() {
    assert!(matches!(
        decode_one(&[0x62, 0x02, 0x00, 0x01], V311),
        Ok(Some(Packet::PubRel(_)))
    ));
}

// ---------------------------------------------------------------- PUBLISH

#[test]
fn mqtt_3_3_1_4_publish_with_qos_3_is_malformed() {
    assert_refused(
        &[0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01],
        V311,
        Error::InvalidQoS,
        ReasonCode::MalformedPacket,
    );
}

#[test]
fn mqtt_3_3_1_2_dup_on_qos_0_is_malformed() {
    assert_refused(
        &[0x38, 0x03, 0x00, 0x01, b'a'],
        V311,
        Error::DupOnQoS0,
        ReasonCode::MalformedPacket,
    );
}

#[test]
fn v311_mqtt_2_3_1_1_publish_with_packet_identifier_0_is_malformed() {
    assert_refused(
        &[0x32, 0x05, 0x00, 0x01, b'a', 0x00, 0x00],
        V311,
        Error::ZeroPacketId,
        ReasonCode::MalformedPacket,
    );
}

#[test]
fn v311_mqtt_2_3_1_1_subscribe_and_acks_with_packet_identifier_0_are_malformed() {
    assert_refused(
        &[0x82, 0x06, 0x00, 0x00, 0x00, 0x01, b'a', 0x00],
        V311,
        Error::ZeroPacketId,
        ReasonCode::MalformedPacket,
    );
    assert_refused(
        &[0xA2, 0x05, 0x00, 0x00, 0x00, 0x01, b'a'],
        V311,
        Error::ZeroPacketId,
        ReasonCode::MalformedPacket,
    );
    assert_refused(
        &[0x40, 0x02, 0x00, 0x00],
        V311,
        Error::ZeroPacketId,
        ReasonCode::MalformedPacket,
    );
}

#[test]
fn mqtt_3_3_2_2_wildcards_in_publish_topic_are_refused() {
    for topic in [&b"a/+"[..], b"a/#", b"+", b"sport+"] {
        let mut bytes = vec![0x30, (2 + topic.len()) as u8, 0, topic.len() as u8];
        bytes.extend_from_slice(topic);
        assert_eq!(
            refused(&bytes, V311),
            Error::TopicName(rallymq_topic::Error::WildcardInName)
        );
        // MQTT 5: the same with an empty property section
        bytes[1] += 1;
        bytes.push(0);
        let error = refused(&bytes, V5);
        assert_eq!(
            error,
            Error::TopicName(rallymq_topic::Error::WildcardInName)
        );
        assert_eq!(error.reason_code(), ReasonCode::TopicNameInvalid);
    }
}

#[test]
fn mqtt_1_5_4_1_ill_formed_utf8_is_malformed() {
    // 0xFF never appears in UTF-8; C0 80 is an overlong NUL; ED A0 80 is a UTF-16 surrogate.
    for topic in [&[b'a', 0xFF][..], &[0xC0, 0x80], &[0xED, 0xA0, 0x80]] {
        let mut bytes = vec![0x30, (2 + topic.len()) as u8, 0, topic.len() as u8];
        bytes.extend_from_slice(topic);
        let error = refused(&bytes, V311);
        assert_eq!(
            error,
            Error::TopicName(rallymq_topic::Error::InvalidUtf8),
            "topic {topic:02x?}"
        );
        assert_eq!(error.reason_code(), ReasonCode::MalformedPacket);
        // the same in a SUBSCRIBE filter: packet id 1, the filter, options 0
        let mut subscribe = vec![0x82, (5 + topic.len()) as u8, 0, 1, 0, topic.len() as u8];
        subscribe.extend_from_slice(topic);
        subscribe.push(0);
        let error = refused(&subscribe, V311);
        assert_eq!(error, Error::TopicFilter(rallymq_topic::Error::InvalidUtf8));
        assert_eq!(error.reason_code(), ReasonCode::MalformedPacket);
    }
    // the same in a client identifier
    let error = refused(
        &connect_v3(b"MQTT", 4, 0x02, &[])
            .iter()
            .map(|b| if *b == b'c' { 0xFF } else { *b })
            .collect::<Vec<_>>(),
        V311,
    );
    assert_eq!(error, Error::InvalidUtf8);
    assert_eq!(error.reason_code(), ReasonCode::MalformedPacket);
}

#[test]
fn mqtt_1_5_4_2_null_character_in_a_string_is_malformed() {
    let error = refused(&[0x30, 0x05, 0x00, 0x03, b'a', 0x00, b'b'], V311);
    assert_eq!(error, Error::TopicName(rallymq_topic::Error::NullCharacter));
    assert_eq!(error.reason_code(), ReasonCode::MalformedPacket);
    let error = refused(&[0x82, 0x07, 0, 1, 0x00, 0x02, b'a', 0x00, 0], V311);
    assert_eq!(
        error,
        Error::TopicFilter(rallymq_topic::Error::NullCharacter)
    );
    assert_eq!(error.reason_code(), ReasonCode::MalformedPacket);
    let mut connect = connect_v3(b"MQTT", 4, 0x02, &[]);
    let last = connect.len() - 1;
    connect[last] = 0; // client id "\0"
    assert_eq!(refused(&connect, V311), Error::NullCharacter);
}

#[test]
fn mqtt_4_7_3_1_empty_publish_topic_without_alias_is_a_protocol_error() {
    // v5: topic length 0, properties length 0
    assert_refused(
        &[0x30, 0x03, 0x00, 0x00, 0x00],
        V5,
        Error::MissingTopic,
        ReasonCode::ProtocolError,
    );
    assert_refused(
        &[0x30, 0x02, 0x00, 0x00],
        V311,
        Error::MissingTopic,
        ReasonCode::ProtocolError,
    );
}

#[test]
fn empty_publish_topic_with_topic_alias_decodes_without_a_topic() {
    // properties: Topic Alias (0x23) = 7
    let packet = decode_one(&[0x30, 0x06, 0x00, 0x00, 0x03, 0x23, 0x00, 0x07], V5)
        .unwrap()
        .unwrap();
    let Packet::Publish(publish) = packet else {
        panic!("not a PUBLISH")
    };
    assert_eq!(publish.topic, None);
    assert_eq!(publish.properties.topic_alias.map(|a| a.get()), Some(7));
}

#[test]
fn mqtt_3_3_2_8_topic_alias_0_is_refused_with_topic_alias_invalid() {
    assert_refused(
        &[0x30, 0x07, 0x00, 0x01, b'a', 0x03, 0x23, 0x00, 0x00],
        V5,
        Error::InvalidPropertyValue(0x23),
        ReasonCode::TopicAliasInvalid,
    );
}

// ---------------------------------------------------------------- properties

#[test]
fn property_repeated_where_forbidden_is_a_protocol_error() {
    // Message Expiry Interval (0x02) twice
    let bytes = [
        0x30, 0x0F, 0x00, 0x01, b'a', 0x0A, 0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 2, b'x',
    ];
    assert_refused(
        &bytes,
        V5,
        Error::DuplicateProperty(0x02),
        ReasonCode::ProtocolError,
    );
}

#[test]
fn user_property_may_repeat() {
    // two User Properties (0x26) "k"="v"
    let bytes = [
        0x30, 0x13, 0x00, 0x01, b'a', 0x0E, 0x26, 0, 1, b'k', 0, 1, b'v', 0x26, 0, 1, b'k', 0, 1,
        b'v', b'x',
    ];
    let Packet::Publish(publish) = decode_one(&bytes, V5).unwrap().unwrap() else {
        panic!("not a PUBLISH")
    };
    assert_eq!(publish.properties.user_properties.len(), 2);
    assert_eq!(&publish.payload[..], b"x");
}

#[test]
fn property_not_allowed_in_the_packet_is_malformed() {
    // Session Expiry Interval (0x11) is a CONNECT/CONNACK/DISCONNECT property, not PUBLISH
    let bytes = [0x30, 0x09, 0x00, 0x01, b'a', 0x05, 0x11, 0, 0, 0, 1];
    assert_refused(
        &bytes,
        V5,
        Error::PropertyNotAllowed {
            id: 0x11,
            packet: "PUBLISH",
        },
        ReasonCode::MalformedPacket,
    );
}

#[test]
fn unknown_property_identifier_is_malformed() {
    let bytes = [0x30, 0x06, 0x00, 0x01, b'a', 0x02, 0x7F, 0x00];
    assert_refused(
        &bytes,
        V5,
        Error::UnknownProperty(0x7F),
        ReasonCode::MalformedPacket,
    );
}

#[test]
fn property_section_longer_than_the_packet_is_malformed() {
    let bytes = [0x30, 0x05, 0x00, 0x01, b'a', 0x09, 0x02];
    assert_refused(&bytes, V5, Error::Truncated, ReasonCode::MalformedPacket);
}

#[test]
fn mqtt_3_1_2_receive_maximum_0_is_a_protocol_error() {
    // CONNECT v5 with Receive Maximum (0x21) = 0
    let mut body = vec![
        0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 3, 0x21, 0, 0, 0, 1, b'c',
    ];
    let mut bytes = vec![0x10, body.len() as u8];
    bytes.append(&mut body);
    assert_refused(
        &bytes,
        V5,
        Error::InvalidPropertyValue(0x21),
        ReasonCode::ProtocolError,
    );
}

#[test]
fn mqtt_3_1_2_11_10_authentication_data_without_method_is_a_protocol_error() {
    // CONNECT v5 with Authentication Data (0x16) "x" and no Authentication Method (0x15)
    let connect = |properties: &[u8]| {
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60];
        body.push(properties.len() as u8);
        body.extend_from_slice(properties);
        body.extend_from_slice(&[0, 1, b'c']);
        let mut bytes = vec![0x10, body.len() as u8];
        bytes.append(&mut body);
        bytes
    };
    assert_refused(
        &connect(&[0x16, 0, 1, b'x']),
        V5,
        Error::AuthenticationDataWithoutMethod,
        ReasonCode::ProtocolError,
    );
    // With the method, the same data is fine.
    let Packet::Connect(with_method) =
        decode_one(&connect(&[0x15, 0, 1, b'm', 0x16, 0, 1, b'x']), V5)
            .unwrap()
            .unwrap()
    else {
        panic!("not a CONNECT")
    };
    assert_eq!(
        with_method.properties.authentication_data.as_deref(),
        Some(&b"x"[..])
    );
    // Nor does the encoder write what the decoder refuses.
    let mut without_method = with_method;
    without_method.properties.authentication_method = None;
    assert_eq!(
        Packet::Connect(without_method).to_bytes(V5),
        Err(Error::AuthenticationDataWithoutMethod)
    );
}

#[test]
fn flag_property_other_than_0_or_1_is_a_protocol_error() {
    // Payload Format Indicator (0x01) = 2
    let bytes = [0x30, 0x07, 0x00, 0x01, b'a', 0x02, 0x01, 0x02, b'x'];
    assert_refused(
        &bytes,
        V5,
        Error::InvalidPropertyValue(0x01),
        ReasonCode::ProtocolError,
    );
}

// ---------------------------------------------------------------- CONNECT

#[test]
fn mqtt_3_1_2_1_wrong_protocol_name_for_the_level_is_refused() {
    for (name, level) in [
        (&b"MQTT"[..], 3u8),
        (b"MQIsdp", 4),
        (b"MQIsdp", 5),
        (b"MQTX", 4),
        (b"mqtt", 4),
    ] {
        let error = refused(&connect_v3(name, level, 0x02, &[]), V311);
        assert_eq!(error, Error::InvalidProtocolName { level });
        assert_eq!(error.reason_code(), ReasonCode::UnsupportedProtocolVersion);
    }
}

#[test]
fn mqtt_3_1_2_2_unsupported_protocol_level_is_refused_with_its_level() {
    for level in [0u8, 2, 6, 255] {
        let error = refused(&connect_v3(b"MQTT", level, 0x02, &[]), V311);
        assert_eq!(error, Error::UnsupportedProtocolLevel(level));
        assert_eq!(error.reason_code(), ReasonCode::UnsupportedProtocolVersion);
    }
}

#[test]
fn all_three_protocol_levels_are_accepted() {
    for (name, level, version) in [
        (&b"MQIsdp"[..], 3, ProtocolVersion::V3_1),
        (b"MQTT", 4, V311),
        (b"MQTT", 5, V5),
    ] {
        let Packet::Connect(connect) = decode_one(&connect_v3(name, level, 0x02, &[]), V311)
            .unwrap()
            .unwrap()
        else {
            panic!("not a CONNECT")
        };
        assert_eq!(connect.protocol, version);
        assert_eq!(connect.client_id, "c");
    }
}

/// Mosquitto's bridges (`try_private`) send the protocol level with 0x80 set: decoded as the
/// level below it, marked as a bridge, and encoded back the same way.
#[test]
fn bridge_bit_in_the_protocol_level_marks_a_bridge_of_that_version() {
    for (name, level, version) in [
        (&b"MQIsdp"[..], 0x83, ProtocolVersion::V3_1),
        (b"MQTT", 0x84, V311),
        (b"MQTT", 0x85, V5),
    ] {
        let bytes = connect_v3(name, level, 0x02, &[]);
        let Packet::Connect(connect) = decode_one(&bytes, V311).unwrap().unwrap() else {
            panic!("not a CONNECT")
        };
        assert_eq!(connect.protocol, version);
        assert!(connect.bridge, "level {level:#x} is a bridge's");
        let mut encoded = BytesMut::new();
        Packet::Connect(connect)
            .encode(version, &mut encoded)
            .unwrap();
        assert_eq!(&encoded[..], &bytes[..], "encoded back with the bit");
    }
    let Packet::Connect(plain) = decode_one(&connect_v3(b"MQTT", 4, 0x02, &[]), V311)
        .unwrap()
        .unwrap()
    else {
        panic!("not a CONNECT")
    };
    assert!(!plain.bridge);
    // The bit alone, or on an unknown level, is still an unsupported level, named as sent.
    for level in [0x80u8, 0x86, 0xff] {
        let error = refused(&connect_v3(b"MQTT", level, 0x02, &[]), V311);
        assert_eq!(error, Error::UnsupportedProtocolLevel(level));
    }
}

#[test]
fn mqtt_3_1_2_3_reserved_connect_flag_is_malformed() {
    assert_refused(
        &connect_v3(b"MQTT", 4, 0x03, &[]),
        V311,
        Error::ReservedConnectFlag,
        ReasonCode::MalformedPacket,
    );
}

#[test]
fn mqtt_3_1_2_11_will_qos_without_will_flag_is_malformed() {
    assert_refused(
        &connect_v3(b"MQTT", 4, 0x02 | 0x08, &[]),
        V311,
        Error::InvalidWillFlags,
        ReasonCode::MalformedPacket,
    );
}

#[test]
fn mqtt_3_1_2_12_will_qos_3_is_malformed() {
    let will = [0, 1, b't', 0, 1, b'm'];
    assert_refused(
        &connect_v3(b"MQTT", 4, 0x02 | 0x04 | 0x18, &will),
        V311,
        Error::InvalidWillFlags,
        ReasonCode::MalformedPacket,
    );
}

#[test]
fn mqtt_3_1_2_13_will_retain_without_will_flag_is_malformed() {
    assert_refused(
        &connect_v3(b"MQTT", 4, 0x02 | 0x20, &[]),
        V311,
        Error::InvalidWillFlags,
        ReasonCode::MalformedPacket,
    );
}

#[test]
fn v311_mqtt_3_1_2_22_password_without_user_name_is_malformed() {
    let password = [0, 2, b'p', b'w'];
    assert_refused(
        &connect_v3(b"MQTT", 4, 0x02 | 0x40, &password),
        V311,
        Error::PasswordWithoutUsername,
        ReasonCode::MalformedPacket,
    );
    // MQTT 5 allows a password without a user name.
    let Packet::Connect(connect) = decode_one(&connect_v3(b"MQTT", 5, 0x02 | 0x40, &password), V5)
        .unwrap()
        .unwrap()
    else {
        panic!("not a CONNECT")
    };
    assert_eq!(connect.password.as_deref(), Some(&b"pw"[..]));
    assert_eq!(connect.username, None);
}

#[test]
fn will_topic_with_wildcard_is_refused() {
    let will = [0, 3, b't', b'/', b'#', 0, 1, b'm'];
    let error = refused(&connect_v3(b"MQTT", 4, 0x02 | 0x04, &will), V311);
    assert_eq!(
        error,
        Error::TopicName(rallymq_topic::Error::WildcardInName)
    );
}

#[test]
fn connect_with_bytes_after_the_payload_is_malformed() {
    assert_refused(
        &connect_v3(b"MQTT", 4, 0x02, &[0xAB]),
        V311,
        Error::TrailingBytes(1),
        ReasonCode::MalformedPacket,
    );
}

#[test]
fn mqtt_3_1_0_1_first_packet_must_be_connect() {
    let mut decoder = Decoder::new(Limits::default());
    let mut buf = BytesMut::from(&[0xC0u8, 0x00][..]);
    let error = decoder.decode(&mut buf).unwrap_err();
    assert_eq!(error, Error::ConnectExpected(PacketType::PingReq));
    assert_eq!(error.reason_code(), ReasonCode::ProtocolError);
}

#[test]
fn decoder_learns_the_protocol_level_from_connect() {
    let mut decoder = Decoder::new(Limits::default());
    let mut buf = BytesMut::from(&connect_v3(b"MQTT", 5, 0x02, &[])[..]);
    // then a v5 PUBACK with a reason code: only valid if the decoder now speaks v5
    buf.extend_from_slice(&[0x40, 0x03, 0x00, 0x01, 0x10]);
    assert!(matches!(
        decoder.decode(&mut buf),
        Ok(Some(Packet::Connect(_)))
    ));
    assert_eq!(decoder.version(), Some(V5));
    let Ok(Some(Packet::PubAck(ack))) = decoder.decode(&mut buf) else {
        panic!("no PUBACK")
    };
    assert_eq!(ack.reason_code, ReasonCode::NoMatchingSubscribers);
}

// ---------------------------------------------------------------- CONNACK

#[test]
fn mqtt_3_2_2_1_connack_reserved_flags_are_malformed() {
    assert_refused(
        &[0x20, 0x02, 0x02, 0x00],
        V311,
        Error::ReservedConnAckFlags,
        ReasonCode::MalformedPacket,
    );
}

#[test]
fn mqtt_3_2_2_6_session_present_with_failure_is_malformed() {
    assert_refused(
        &[0x20, 0x02, 0x01, 0x05],
        V311,
        Error::SessionPresentOnFailure,
        ReasonCode::MalformedPacket,
    );
    assert_refused(
        &[0x20, 0x03, 0x01, 0x87, 0x00],
        V5,
        Error::SessionPresentOnFailure,
        ReasonCode::MalformedPacket,
    );
}

#[test]
fn connack_return_code_out_of_range_is_malformed() {
    assert_refused(
        &[0x20, 0x02, 0x00, 0x06],
        V311,
        Error::InvalidReasonCode {
            packet: PacketType::ConnAck,
            code: 6,
        },
        ReasonCode::MalformedPacket,
    );
    // 0x8E Session taken over is a DISCONNECT code, not a CONNACK code
    assert_refused(
        &[0x20, 0x03, 0x00, 0x8E, 0x00],
        V5,
        Error::InvalidReasonCode {
            packet: PacketType::ConnAck,
            code: 0x8E,
        },
        ReasonCode::MalformedPacket,
    );
}

// ---------------------------------------------------------------- acknowledgements

#[test]
fn reason_code_not_defined_for_the_packet_is_malformed() {
    // 0x04 (Disconnect with Will Message) in a PUBACK
    assert_refused(
        &[0x40, 0x03, 0x00, 0x01, 0x04],
        V5,
        Error::InvalidReasonCode {
            packet: PacketType::PubAck,
            code: 0x04,
        },
        ReasonCode::MalformedPacket,
    );
    // 0x10 in a PUBREL: only 0x00 and 0x92 are allowed there
    assert_refused(
        &[0x62, 0x03, 0x00, 0x01, 0x10],
        V5,
        Error::InvalidReasonCode {
            packet: PacketType::PubRel,
            code: 0x10,
        },
        ReasonCode::MalformedPacket,
    );
}

#[test]
fn v311_acknowledgement_with_extra_bytes_is_malformed() {
    assert_refused(
        &[0x40, 0x03, 0x00, 0x01, 0x00],
        V311,
        Error::TrailingBytes(1),
        ReasonCode::MalformedPacket,
    );
    assert_refused(
        &[0xC0, 0x01, 0x00],
        V311,
        Error::TrailingBytes(1),
        ReasonCode::MalformedPacket,
    );
}

#[test]
fn acknowledgement_shorter_than_its_packet_identifier_is_malformed() {
    assert_refused(
        &[0x40, 0x01, 0x00],
        V311,
        Error::Truncated,
        ReasonCode::MalformedPacket,
    );
}

// ---------------------------------------------------------------- SUBSCRIBE / UNSUBSCRIBE

#[test]
fn mqtt_3_8_3_2_subscribe_without_a_filter_is_a_protocol_error() {
    assert_refused(
        &[0x82, 0x02, 0x00, 0x01],
        V311,
        Error::NoTopicFilters(PacketType::Subscribe),
        ReasonCode::ProtocolError,
    );
    assert_refused(
        &[0x82, 0x03, 0x00, 0x01, 0x00],
        V5,
        Error::NoTopicFilters(PacketType::Subscribe),
        ReasonCode::ProtocolError,
    );
}

#[test]
fn mqtt_3_10_3_2_unsubscribe_without_a_filter_is_a_protocol_error() {
    assert_refused(
        &[0xA2, 0x02, 0x00, 0x01],
        V311,
        Error::NoTopicFilters(PacketType::Unsubscribe),
        ReasonCode::ProtocolError,
    );
}

#[test]
fn mqtt_3_8_3_5_subscription_option_reserved_bits_are_malformed() {
    assert_refused(
        &[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x40],
        V5,
        Error::ReservedSubscriptionOptions,
        ReasonCode::MalformedPacket,
    );
    // before MQTT 5 everything above the QoS bits is reserved
    assert_refused(
        &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x04],
        V311,
        Error::ReservedSubscriptionOptions,
        ReasonCode::MalformedPacket,
    );
}

#[test]
fn subscription_with_qos_3_is_malformed() {
    assert_refused(
        &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x03],
        V311,
        Error::InvalidQoS,
        ReasonCode::MalformedPacket,
    );
}

#[test]
fn retain_handling_3_is_a_protocol_error() {
    assert_refused(
        &[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x30],
        V5,
        Error::InvalidRetainHandling,
        ReasonCode::ProtocolError,
    );
}

#[test]
fn mqtt_3_8_3_4_no_local_on_a_shared_subscription_is_a_protocol_error() {
    let filter = b"$share/g/a";
    let mut bytes = vec![
        0x82,
        (3 + 2 + filter.len() + 1) as u8,
        0x00,
        0x01,
        0x00,
        0x00,
        filter.len() as u8,
    ];
    bytes.extend_from_slice(filter);
    bytes.push(0x04);
    assert_refused(
        &bytes,
        V5,
        Error::NoLocalOnSharedSubscription,
        ReasonCode::ProtocolError,
    );
}

#[test]
fn mqtt_4_7_1_1_misplaced_multi_level_wildcard_is_refused() {
    for filter in [&b"a/#/b"[..], b"a#", b"#/"] {
        let mut bytes = vec![
            0x82,
            (2 + 2 + filter.len() + 1) as u8,
            0x00,
            0x01,
            0x00,
            filter.len() as u8,
        ];
        bytes.extend_from_slice(filter);
        bytes.push(0x00);
        let error = refused(&bytes, V311);
        assert_eq!(
            error,
            Error::TopicFilter(rallymq_topic::Error::InvalidMultiLevelWildcard),
            "{filter:?}"
        );
        assert_eq!(error.reason_code(), ReasonCode::TopicFilterInvalid);
    }
}

#[test]
fn mqtt_4_7_1_2_single_level_wildcard_not_filling_a_level_is_refused() {
    let filter = b"a/b+";
    let mut bytes = vec![
        0xA2,
        (2 + 2 + filter.len()) as u8,
        0x00,
        0x01,
        0x00,
        filter.len() as u8,
    ];
    bytes.extend_from_slice(filter);
    assert_eq!(
        refused(&bytes, V311),
        Error::TopicFilter(rallymq_topic::Error::InvalidSingleLevelWildcard)
    );
}

#[test]
fn suback_return_code_outside_v311_set_is_malformed() {
    assert_refused(
        &[0x90, 0x03, 0x00, 0x01, 0x87],
        V311,
        Error::InvalidReasonCode {
            packet: PacketType::SubAck,
            code: 0x87,
        },
        ReasonCode::MalformedPacket,
    );
    assert!(
        decode_one(&[0x90, 0x04, 0x00, 0x01, 0x00, 0x87], V5)
            .unwrap()
            .is_some()
    );
}

// ---------------------------------------------------------------- streaming contract

#[test]
fn incomplete_packet_consumes_nothing() {
    let whole = [0x32u8, 0x07, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A];
    for cut in 0..whole.len() {
        let mut buf = BytesMut::from(&whole[..cut]);
        assert_eq!(
            decode(&mut buf, V311, &Limits::default()),
            Ok(None),
            "prefix of {cut} bytes"
        );
        assert_eq!(&buf[..], &whole[..cut]);
    }
}
