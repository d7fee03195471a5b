//! MQTT 3.1, 3.1.1 and 5.0 packets: streaming zero-copy decoding, encoding, strict validation.
//!
//! This crate turns bytes into [`Packet`]s and back. It does no IO, reads no clock and spawns
//! nothing, so it serves a tokio broker, a blocking client, an embedded device or a browser
//! (it builds for `wasm32-unknown-unknown`) alike.
//!
//! * [`decode`] (or the stateful [`Decoder`]) takes a [`BytesMut`](bytes::BytesMut) that
//!   grows as bytes arrive: `Ok(None)` means "need more bytes" and consumes nothing; a packet
//!   larger than [`Limits::max_packet_size`] is refused from its fixed header, before its
//!   body is buffered. Payloads, topics and strings of a decoded packet are
//!   [`Bytes`](bytes::Bytes) slices of the input: decoding copies no payload.
//! * [`Packet::encode`] writes into any [`BufMut`](bytes::BufMut); [`Packet::encoded_len`]
//!   says how much it will write.
//! * Every error a peer can cause maps to the MQTT 5 reason code to answer it with:
//!   [`Error::reason_code`].
//! * Each packet's MQTT 5 properties are a typed set (such as [`PublishProperties`]) held in a
//!   [`Properties`], which allocates only when a property is set: a [`Packet`] is 80 bytes,
//!   and the many packets that carry no property cost no allocation for them.
//!
//! ```
//! use bytes::BytesMut;
//! use rallymq_codec::{Decoder, Limits, Packet, PacketId, ProtocolVersion, Publish, QoS, TopicName};
//!
//! let mut publish = Publish::new(TopicName::new("sport/tennis/score")?, "15-30");
//! publish.qos = QoS::AtLeastOnce;
//! publish.packet_id = PacketId::new(7);
//! let packet = Packet::Publish(publish);
//!
//! let mut wire = BytesMut::new();
//! packet.encode(ProtocolVersion::V5, &mut wire)?;
//! assert_eq!(wire.len(), packet.encoded_len(ProtocolVersion::V5));
//!
//! // Bytes arrive in two pieces: the first is not a whole packet yet.
//! let mut decoder = Decoder::with_version(ProtocolVersion::V5, Limits::default());
//! let mut received = BytesMut::from(&wire[..5]);
//! assert_eq!(decoder.decode(&mut received)?, None);
//! received.extend_from_slice(&wire[5..]);
//! assert_eq!(decoder.decode(&mut received)?, Some(packet));
//! assert!(received.is_empty());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod decode;
mod error;
mod message;
mod packet;
mod properties;
mod property;
mod reason;
mod string;
mod types;
mod wire;

pub use decode::{Decoder, Limits, decode};
pub use error::Error;
pub use message::Message;
pub use packet::{
    Ack, Auth, ConnAck, Connect, Disconnect, Packet, Publish, RetainHandling, SubAck, Subscribe,
    Subscription, SubscriptionOptions, UnsubAck, Unsubscribe, Will,
};
pub use properties::{Properties, PropertySet};
pub use property::{
    AckProperties, AuthProperties, ConnAckProperties, ConnectProperties, DisconnectProperties,
    PayloadFormat, PublishProperties, SubAckProperties, SubscribeProperties, UnsubscribeProperties,
    WillProperties,
};
pub use rallymq_topic::{TopicFilter, TopicName};
pub use reason::{ALL_REASON_CODES, ReasonCode};
pub use string::{MAX_STRING_LEN, MqttString, UserProperty};
pub use types::{PacketId, PacketType, ProtocolVersion, QoS, SubscriptionId};
pub use wire::MAX_VARIABLE_BYTE_INTEGER;

/// The README's code, compiled and run as doctests, so that the README cannot drift from the
/// API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
