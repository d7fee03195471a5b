//! CONNECT (MQTT 5 §3.1, MQTT 3.1.1 §3.1) and CONNACK (§3.2).

use bytes::{BufMut, Bytes};
use rallymq_topic::TopicName;

use crate::Properties;
use crate::property::{ConnAckProperties, ConnectProperties, WillProperties};
use crate::wire::{Reader, check_binary, field_len, put_field};
use crate::{Error, MqttString, PacketType, ProtocolVersion, QoS, ReasonCode};

/// CONNECT: the first packet a client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// The protocol version the client speaks; it also decides how this packet is encoded.
    pub protocol: ProtocolVersion,
    /// Clean Session (3.1, 3.1.1) or Clean Start (5.0).
    pub clean_start: bool,
    /// Keep alive in seconds; 0 turns keep-alive off.
    pub keep_alive: u16,
    /// MQTT 5 properties (empty before MQTT 5).
    pub properties: Properties<ConnectProperties>,
    /// The client identifier; may be empty (the server assigns one or refuses).
    pub client_id: MqttString,
    /// The will message, if any.
    pub will: Option<Will>,
    /// User name, if any.
    pub username: Option<MqttString>,
    /// Password, if any (binary data, at most 65,535 bytes).
    pub password: Option<Bytes>,
    /// The client is a bridge from another broker: the protocol level byte carries 0x80
    /// (Mosquitto's `try_private`). A server that knows it sends the bridge none of its own
    /// messages back and keeps their retain flag as published, so that a two-way bridge makes
    /// no loop; a server that does not refuses the CONNECT (unsupported protocol level).
    pub bridge: bool,
}

impl Connect {
    /// A CONNECT with the given version and client id, clean start, 60 s keep-alive, nothing else.
    pub fn new(protocol: ProtocolVersion, client_id: MqttString) -> Self {
        Self {
            protocol,
            clean_start: true,
            keep_alive: 60,
            properties: Properties::default(),
            client_id,
            will: None,
            username: None,
            password: None,
            bridge: false,
        }
    }
}

/// The bit of the protocol level byte that marks a bridge (see [`Connect::bridge`]).
const LEVEL_BRIDGE: u8 = 0x80;

/// A will message, published by the server when the connection ends abnormally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// Topic the will is published to.
    pub topic: TopicName,
    /// The will payload (at most 65,535 bytes).
    pub payload: Bytes,
    /// QoS of the will message.
    pub qos: QoS,
    /// Whether the will is published retained.
    pub retain: bool,
    /// MQTT 5 will properties (empty before MQTT 5).
    pub properties: Properties<WillProperties>,
}

impl Will {
    /// A will of `payload` on `topic`: QoS 0, not retained, no properties.
    pub fn new(topic: TopicName, payload: impl Into<Bytes>) -> Self {
        Self {
            topic,
            payload: payload.into(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Properties::default(),
        }
    }
}

const FLAG_RESERVED: u8 = 0b0000_0001;
const FLAG_CLEAN_START: u8 = 0b0000_0010;
const FLAG_WILL: u8 = 0b0000_0100;
const FLAG_WILL_RETAIN: u8 = 0b0010_0000;
const FLAG_PASSWORD: u8 = 0b0100_0000;
const FLAG_USERNAME: u8 = 0b1000_0000;

impl Connect {
    pub(crate) fn read(reader: &mut Reader<'_>) -> Result<Self, Error> {
        let name = reader.binary()?;
        let raw_level = reader.u8()?;
        let bridge = raw_level & LEVEL_BRIDGE != 0 && raw_level != LEVEL_BRIDGE;
        let level = if bridge {
            raw_level & !LEVEL_BRIDGE
        } else {
            raw_level
        };
        let protocol = match (&name[..], level) {
            (b"MQIsdp", 3) => ProtocolVersion::V3_1,
            (b"MQTT", 4) => ProtocolVersion::V3_1_1,
            (b"MQTT", 5) => ProtocolVersion::V5,
            // Errors name the byte as sent, bridge bit included.
            (b"MQTT", 3) | (b"MQIsdp", 4 | 5) => {
                return Err(Error::InvalidProtocolName { level: raw_level });
            }
            (b"MQTT" | b"MQIsdp", _) => return Err(Error::UnsupportedProtocolLevel(raw_level)),
            _ => return Err(Error::InvalidProtocolName { level: raw_level }),
        };
        let flags = reader.u8()?;
        if flags & FLAG_RESERVED != 0 {
            return Err(Error::ReservedConnectFlag);
        }
        let has_will = flags & FLAG_WILL != 0;
        let will_qos = QoS::from_bits((flags >> 3) & 0b11).map_err(|_| Error::InvalidWillFlags)?;
        let will_retain = flags & FLAG_WILL_RETAIN != 0;
        if !has_will && (will_qos != QoS::AtMostOnce || will_retain) {
            return Err(Error::InvalidWillFlags);
        }
        let has_username = flags & FLAG_USERNAME != 0;
        let has_password = flags & FLAG_PASSWORD != 0;
        if has_password && !has_username && !protocol.is_v5() {
            return Err(Error::PasswordWithoutUsername);
        }
        let keep_alive = reader.u16()?;
        let properties = if protocol.is_v5() {
            ConnectProperties::read(reader)?
        } else {
            Properties::default()
        };
        check_authentication(&properties)?;
        let client_id = reader.string()?;
        let will = if has_will {
            let properties = if protocol.is_v5() {
                WillProperties::read(reader)?
            } else {
                Properties::default()
            };
            let topic = TopicName::from_bytes(reader.binary()?).map_err(Error::TopicName)?;
            let payload = reader.binary()?;
            Some(Will {
                topic,
                payload,
                qos: will_qos,
                retain: will_retain,
                properties,
            })
        } else {
            None
        };
        let username = if has_username {
            Some(reader.string()?)
        } else {
            None
        };
        let password = if has_password {
            Some(reader.binary()?)
        } else {
            None
        };
        reader.finish()?;
        Ok(Self {
            protocol,
            clean_start: flags & FLAG_CLEAN_START != 0,
            keep_alive,
            properties,
            client_id,
            will,
            username,
            password,
            bridge,
        })
    }

    pub(crate) fn check(&self) -> Result<(), Error> {
        if self.password.is_some() && self.username.is_none() && !self.protocol.is_v5() {
            return Err(Error::PasswordWithoutUsername);
        }
        if let Some(password) = &self.password {
            check_binary(password)?;
        }
        if let Some(will) = &self.will {
            check_binary(&will.payload)?;
        }
        if !self.protocol.is_v5() && !self.properties.is_empty() {
            return Err(Error::NotInVersion("CONNECT properties"));
        }
        check_authentication(&self.properties)
    }

    pub(crate) fn body_len(&self) -> usize {
        let v5 = self.protocol.is_v5();
        let mut len = field_len(self.protocol.protocol_name().len()) + 1 + 1 + 2;
        if v5 {
            len += self.properties.encoded_len();
        }
        len += field_len(self.client_id.len());
        if let Some(will) = &self.will {
            if v5 {
                len += will.properties.encoded_len();
            }
            len += field_len(will.topic.len()) + field_len(will.payload.len());
        }
        len += self
            .username
            .as_ref()
            .map_or(0, |name| field_len(name.len()));
        len += self
            .password
            .as_ref()
            .map_or(0, |password| field_len(password.len()));
        len
    }

    pub(crate) fn write_body(&self, buf: &mut impl BufMut) {
        let v5 = self.protocol.is_v5();
        put_field(buf, self.protocol.protocol_name().as_bytes());
        let bridge = if self.bridge { LEVEL_BRIDGE } else { 0 };
        buf.put_u8(self.protocol.level() | bridge);
        let mut flags = 0;
        if self.clean_start {
            flags |= FLAG_CLEAN_START;
        }
        if let Some(will) = &self.will {
            flags |= FLAG_WILL | (will.qos.bits() << 3);
            if will.retain {
                flags |= FLAG_WILL_RETAIN;
            }
        }
        if self.username.is_some() {
            flags |= FLAG_USERNAME;
        }
        if self.password.is_some() {
            flags |= FLAG_PASSWORD;
        }
        buf.put_u8(flags);
        buf.put_u16(self.keep_alive);
        if v5 {
            self.properties.write(buf);
        }
        put_field(buf, self.client_id.as_bytes());
        if let Some(will) = &self.will {
            if v5 {
                will.properties.write(buf);
            }
            put_field(buf, will.topic.as_bytes());
            put_field(buf, &will.payload);
        }
        if let Some(username) = &self.username {
            put_field(buf, username.as_bytes());
        }
        if let Some(password) = &self.password {
            put_field(buf, password);
        }
    }
}

/// Authentication Data only goes with an Authentication Method: "It is a Protocol Error to
/// include Authentication Data if there is no Authentication Method" (MQTT 5 §3.1.2.11.10).
fn check_authentication(properties: &ConnectProperties) -> Result<(), Error> {
    if properties.authentication_data.is_some() && properties.authentication_method.is_none() {
        return Err(Error::AuthenticationDataWithoutMethod);
    }
    Ok(())
}

/// CONNACK: the server's answer to CONNECT.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnAck {
    /// Whether the server resumed a stored session.
    pub session_present: bool,
    /// The result. Before MQTT 5 only the codes that have a CONNACK return code travel: see
    /// [`ConnAck`]'s encoding (others become "server unavailable" or "not authorized").
    pub reason_code: ReasonCode,
    /// MQTT 5 properties (empty before MQTT 5).
    pub properties: Properties<ConnAckProperties>,
}

/// CONNACK return codes of MQTT 3.1 and 3.1.1, as reason codes, indexed by return code.
const CONNACK_RETURN_CODES: [ReasonCode; 6] = [
    ReasonCode::Success,
    ReasonCode::UnsupportedProtocolVersion,
    ReasonCode::ClientIdentifierNotValid,
    ReasonCode::ServerUnavailable,
    ReasonCode::BadUserNameOrPassword,
    ReasonCode::NotAuthorized,
];

/// The MQTT 3.1.1 return code that best stands for an MQTT 5 CONNACK reason code.
fn connack_return_code(code: ReasonCode) -> u8 {
    match CONNACK_RETURN_CODES.iter().position(|known| *known == code) {
        // The table has six entries, so the index fits in a byte.
        Some(index) => index as u8,
        None if matches!(
            code,
            ReasonCode::Banned | ReasonCode::BadAuthenticationMethod
        ) =>
        {
            5
        }
        None => 3,
    }
}

impl ConnAck {
    /// The MQTT 3.1 and 3.1.1 return code (0 to 5) this CONNACK carries on the wire before
    /// MQTT 5: its reason code's, or the closest one for a code 3.1.1 does not have.
    pub fn return_code(&self) -> u8 {
        connack_return_code(self.reason_code)
    }

    pub(crate) fn read(reader: &mut Reader<'_>, version: ProtocolVersion) -> Result<Self, Error> {
        let flags = reader.u8()?;
        if flags & 0xFE != 0 {
            return Err(Error::ReservedConnAckFlags);
        }
        let code = reader.u8()?;
        let invalid = Error::InvalidReasonCode {
            packet: PacketType::ConnAck,
            code,
        };
        let reason_code = if version.is_v5() {
            ReasonCode::from_u8(code)
                .filter(|rc| rc.is_valid_for(PacketType::ConnAck))
                .ok_or(invalid)?
        } else {
            *CONNACK_RETURN_CODES.get(usize::from(code)).ok_or(invalid)?
        };
        let session_present = flags & 1 != 0;
        if session_present && reason_code != ReasonCode::Success {
            return Err(Error::SessionPresentOnFailure);
        }
        let properties = if version.is_v5() {
            ConnAckProperties::read(reader)?
        } else {
            Properties::default()
        };
        reader.finish()?;
        Ok(Self {
            session_present,
            reason_code,
            properties,
        })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> usize {
        2 + if version.is_v5() {
            self.properties.encoded_len()
        } else {
            0
        }
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut impl BufMut) {
        buf.put_u8(u8::from(self.session_present));
        if version.is_v5() {
            buf.put_u8(self.reason_code.as_u8());
            self.properties.write(buf);
        } else {
            buf.put_u8(connack_return_code(self.reason_code));
        }
    }
}
