//! The one error type of this crate.

use crate::{PacketType, ReasonCode};

/// Everything that can go wrong decoding or encoding a packet.
///
/// Most variants describe something the **peer** did wrong; [`Error::reason_code`] gives the
/// MQTT 5 reason code to put in the CONNACK or DISCONNECT that answers it. A few variants
/// (marked "caller error") describe a packet this program tried to build or encode that MQTT
/// cannot carry; they never come out of decoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The Remaining Length field is longer than 4 bytes (MQTT-1.5.5-1 / MQTT-2.2.3).
    #[error("malformed remaining length: more than 4 bytes")]
    MalformedRemainingLength,
    /// A Variable Byte Integer is longer than 4 bytes or not minimally encoded.
    #[error("malformed variable byte integer")]
    MalformedVariableByteInteger,
    /// The packet is larger than the configured maximum packet size; detected from the fixed
    /// header, before the body is buffered.
    #[error("packet of {size} bytes exceeds the maximum packet size of {max} bytes")]
    PacketTooLarge {
        /// Total size the fixed header announces (or the encoded size, when encoding).
        size: u64,
        /// The limit in force.
        max: u64,
    },
    /// The packet type nibble is 0, or 15 (AUTH) before MQTT 5.
    #[error("invalid control packet type {0}")]
    InvalidPacketType(u8),
    /// Reserved fixed header flags are not the value the spec requires (MQTT-2.2.2-1, MQTT-2.2.2-2).
    #[error("invalid fixed header flags {flags:#06b} for {packet:?}")]
    InvalidHeaderFlags {
        /// The packet whose flags are wrong.
        packet: PacketType,
        /// The four flag bits received.
        flags: u8,
    },
    /// A QoS field holds 3 (MQTT-3.3.1-4).
    #[error("QoS 3 is not a valid QoS")]
    InvalidQoS,
    /// A QoS 0 PUBLISH has the DUP flag set (MQTT-3.3.1-2).
    #[error("DUP flag set on a QoS 0 PUBLISH")]
    DupOnQoS0,
    /// A packet identifier is 0 (MQTT-2.3.1-1).
    #[error("packet identifier 0 is not allowed")]
    ZeroPacketId,
    /// The packet ends before a field it must hold.
    #[error("packet body ends before a field it must hold")]
    Truncated,
    /// Bytes remain after the last field inside the packet's declared length.
    #[error("{0} unexpected bytes after the last field of the packet")]
    TrailingBytes(usize),
    /// A string is not well-formed UTF-8 (MQTT-1.5.3-1).
    #[error("string is not well-formed UTF-8")]
    InvalidUtf8,
    /// A string contains U+0000 (MQTT-1.5.3-2).
    #[error("string contains the null character U+0000")]
    NullCharacter,
    /// A string is longer than 65,535 bytes (caller error).
    #[error("string of {0} bytes is longer than 65535")]
    StringTooLong(usize),
    /// A binary field is longer than 65,535 bytes (caller error).
    #[error("binary data of {0} bytes is longer than 65535")]
    BinaryTooLong(usize),
    /// A PUBLISH topic or Will topic is not a valid topic name (MQTT-3.3.2-2).
    #[error("invalid topic name: {0}")]
    TopicName(rallymq_topic::Error),
    /// A SUBSCRIBE or UNSUBSCRIBE topic filter is not valid (MQTT-4.7.1-1, MQTT-4.7.1-2).
    #[error("invalid topic filter: {0}")]
    TopicFilter(rallymq_topic::Error),
    /// A PUBLISH has an empty topic and no Topic Alias (MQTT-3.3.2-1, MQTT-3.3.4-?).
    #[error("PUBLISH has an empty topic name and no topic alias")]
    MissingTopic,
    /// CONNECT names a protocol that does not fit its level (MQTT-3.1.2-1).
    #[error("unexpected protocol name for protocol level {level}")]
    InvalidProtocolName {
        /// The protocol level byte that came with the wrong name.
        level: u8,
    },
    /// CONNECT asks for a protocol level this codec does not speak (MQTT-3.1.2-2).
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolLevel(u8),
    /// The reserved CONNECT flag is set (MQTT-3.1.2-3).
    #[error("reserved CONNECT flag is set")]
    ReservedConnectFlag,
    /// Will QoS or Will Retain set without the Will Flag, or Will QoS 3 (MQTT-3.1.2-11, -13, -15).
    #[error("inconsistent will flags in CONNECT")]
    InvalidWillFlags,
    /// Password flag set without the User Name flag, before MQTT 5 (MQTT-3.1.2-22).
    #[error("password without a user name")]
    PasswordWithoutUsername,
    /// CONNECT has Authentication Data but no Authentication Method (MQTT 5 §3.1.2.11.10).
    #[error("CONNECT has Authentication Data without an Authentication Method")]
    AuthenticationDataWithoutMethod,
    /// The reserved bits of the CONNACK acknowledge flags are set (MQTT-3.2.2-1).
    #[error("reserved CONNACK flags are set")]
    ReservedConnAckFlags,
    /// CONNACK with session present set and a failure code (MQTT-3.2.2-4).
    #[error("CONNACK has session present with a failure code")]
    SessionPresentOnFailure,
    /// A reason or return code that is not defined for this packet.
    #[error("reason code {code:#04x} is not valid in {packet:?}")]
    InvalidReasonCode {
        /// The packet that carried it.
        packet: PacketType,
        /// The code received.
        code: u8,
    },
    /// A property identifier that MQTT 5 does not define.
    #[error("unknown property identifier {0:#04x}")]
    UnknownProperty(u32),
    /// A property that is not allowed in this packet (MQTT 5 §2.2.2.2).
    #[error("property {id:#04x} is not allowed in {packet}")]
    PropertyNotAllowed {
        /// The property identifier.
        id: u8,
        /// Where it was found ("CONNECT", "Will properties", ...).
        packet: &'static str,
    },
    /// A property that may appear once appears again.
    #[error("property {0:#04x} appears more than once")]
    DuplicateProperty(u8),
    /// A property value outside its allowed range (e.g. Receive Maximum 0, a flag byte of 2).
    #[error("invalid value for property {0:#04x}")]
    InvalidPropertyValue(u8),
    /// SUBSCRIBE with no topic filter (MQTT-3.8.3-3), or UNSUBSCRIBE with none (MQTT-3.10.3-2).
    #[error("{0:?} carries no topic filter")]
    NoTopicFilters(PacketType),
    /// Reserved bits of the subscription options are set (MQTT-3.8.3-5 / MQTT-3-8.3-4).
    #[error("reserved subscription option bits are set")]
    ReservedSubscriptionOptions,
    /// Retain Handling holds 3 (MQTT 5 §3.8.3.1).
    #[error("retain handling 3 is not defined")]
    InvalidRetainHandling,
    /// No Local set on a shared subscription (MQTT-3.8.3-4 in MQTT 5).
    #[error("No Local set on a shared subscription")]
    NoLocalOnSharedSubscription,
    /// A packet other than CONNECT before the protocol level is known (MQTT-3.1.0-1).
    #[error("first packet is {0:?}, not CONNECT")]
    ConnectExpected(PacketType),
    /// Caller error: the packet or field has no encoding in this protocol version.
    #[error("{0} cannot be sent with this protocol version")]
    NotInVersion(&'static str),
    /// Caller error: a PUBLISH has a packet identifier with QoS 0, or none with QoS 1 or 2.
    #[error("PUBLISH packet identifier does not match its QoS")]
    PacketIdMismatch,
}

impl Error {
    /// The MQTT 5 reason code a server (in CONNACK or DISCONNECT) or client (in DISCONNECT)
    /// sends when the peer's packet fails with this error. Caller errors map to
    /// [`ReasonCode::ImplementationSpecificError`].
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            Self::PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            // Ill-formed UTF-8 and U+0000 make any string field a Malformed Packet
            // (MQTT-1.5.4-1, MQTT-1.5.4-2), topics included; the topic reason codes are for
            // topics that are well-formed strings but not valid topics.
            Self::TopicName(
                rallymq_topic::Error::InvalidUtf8 | rallymq_topic::Error::NullCharacter,
            )
            | Self::TopicFilter(
                rallymq_topic::Error::InvalidUtf8 | rallymq_topic::Error::NullCharacter,
            ) => ReasonCode::MalformedPacket,
            Self::TopicName(_) => ReasonCode::TopicNameInvalid,
            Self::TopicFilter(_) => ReasonCode::TopicFilterInvalid,
            Self::InvalidProtocolName { .. } | Self::UnsupportedProtocolLevel(_) => {
                ReasonCode::UnsupportedProtocolVersion
            }
            Self::InvalidPropertyValue(crate::property::id::TopicAlias) => {
                ReasonCode::TopicAliasInvalid
            }
            Self::DuplicateProperty(_)
            | Self::InvalidPropertyValue(_)
            | Self::AuthenticationDataWithoutMethod
            | Self::NoTopicFilters(_)
            | Self::InvalidRetainHandling
            | Self::MissingTopic
            | Self::NoLocalOnSharedSubscription
            | Self::ConnectExpected(_) => ReasonCode::ProtocolError,
            Self::NotInVersion(_) | Self::PacketIdMismatch => {
                ReasonCode::ImplementationSpecificError
            }
            Self::StringTooLong(_) | Self::BinaryTooLong(_) => ReasonCode::MalformedPacket,
            _ => ReasonCode::MalformedPacket,
        }
    }
}
