//! Decoding copies no payload: the payload, topic and binary/string properties of a decoded
//! PUBLISH are slices of the very allocation the bytes arrived in (the crate docs promise this,
//! and the bench comparison with `mqttbytes` relies on it).
//!
//! Each test records the address range of the receive buffer before decoding and checks that
//! every decoded field points inside it. A copy would live in a fresh allocation, outside.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use rallymq_codec::{
    Decoder, Limits, MqttString, Packet, PacketId, ProtocolVersion, Publish, PublishProperties,
    QoS, TopicName, UserProperty, decode,
};

fn address_range(bytes: &[u8]) -> Range<usize> {
    let start = bytes.as_ptr() as usize;
    start..start + bytes.len()
}

/// Whether all of `field` (non-empty) lies inside `buffer`.
fn inside(buffer: &Range<usize>, field: &[u8]) -> bool {
    assert!(
        !field.is_empty(),
        "an empty field has no meaningful address"
    );
    let field = address_range(field);
    buffer.start <= field.start && field.end <= buffer.end
}

fn publish(payload_len: usize, version: ProtocolVersion) -> Packet {
    let payload: Vec<u8> = (0..payload_len).map(|i| (i % 251) as u8).collect();
    let mut publish = Publish::new(
        TopicName::new("sensors/hall-3/temp1").expect("valid topic"),
        payload,
    );
    publish.qos = QoS::AtLeastOnce;
    publish.packet_id = PacketId::new(42);
    if version.is_v5() {
        publish.properties = PublishProperties {
            correlation_data: Some(Bytes::from_static(b"request-17")),
            content_type: Some(MqttString::new("application/cbor").expect("valid")),
            response_topic: Some(TopicName::new("replies/17").expect("valid topic")),
            user_properties: vec![UserProperty::new("trace", "abc123").expect("valid")],
            ..PublishProperties::default()
        }
        .into();
    }
    Packet::Publish(publish)
}

/// Every field of a decoded PUBLISH that carries bytes from the wire.
fn fields(publish: &Publish) -> Vec<(&'static str, &[u8])> {
    let mut fields = vec![("payload", &publish.payload[..])];
    if let Some(topic) = &publish.topic {
        fields.push(("topic", topic.as_bytes()));
    }
    let p = &publish.properties;
    if let Some(data) = &p.correlation_data {
        fields.push(("correlation data", &data[..]));
    }
    if let Some(content_type) = &p.content_type {
        fields.push(("content type", content_type.as_bytes()));
    }
    if let Some(topic) = &p.response_topic {
        fields.push(("response topic", topic.as_bytes()));
    }
    for user in &p.user_properties {
        fields.push(("user property name", user.name.as_bytes()));
        fields.push(("user property value", user.value.as_bytes()));
    }
    fields
}

#[test]
fn decoded_publish_fields_point_into_the_receive_buffer() {
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        for payload_len in [1, 16, 1024, 64 * 1024, 1024 * 1024] {
            let packet = publish(payload_len, version);
            let mut buf = BytesMut::from(&packet.to_bytes(version).expect("encodable")[..]);
            let received = address_range(&buf);

            let decoded = decode(&mut buf, version, &Limits::default())
                .expect("valid")
                .expect("whole packet");
            assert_eq!(decoded, packet);
            let Packet::Publish(publish) = &decoded else {
                unreachable!("decoded a {decoded:?}")
            };
            for (name, field) in fields(publish) {
                assert!(
                    inside(&received, field),
                    "{version:?}, {payload_len} B: {name} was copied out of the receive buffer"
                );
            }
            assert_eq!(fields(publish).len(), if version.is_v5() { 7 } else { 2 });
        }
    }
}

/// The same through the stateful decoder fed in two pieces: the bytes land in the buffer the
/// caller grows, and the packet is cut out of it, not assembled in a copy.
#[test]
fn payload_decoded_after_a_partial_read_points_into_the_grown_buffer() {
    let version = ProtocolVersion::V5;
    let packet = publish(4096, version);
    let wire = packet.to_bytes(version).expect("encodable");
    let mut decoder = Decoder::with_version(version, Limits::default());

    let mut buf = BytesMut::from(&wire[..100]);
    assert_eq!(decoder.decode(&mut buf), Ok(None));
    buf.extend_from_slice(&wire[100..]);
    let received = address_range(&buf);

    let Ok(Some(Packet::Publish(publish))) = decoder.decode(&mut buf) else {
        panic!("the whole packet is there");
    };
    assert!(inside(&received, &publish.payload), "payload was copied");
}

/// The check itself can fail: a payload copied into its own allocation is detected.
#[test]
fn a_copied_payload_is_detected() {
    let buffer = vec![7u8; 64];
    let copy = Bytes::copy_from_slice(&buffer[8..40]);
    assert!(!inside(&address_range(&buffer), &copy));
    assert!(inside(&address_range(&buffer), &buffer[8..40]));
}
