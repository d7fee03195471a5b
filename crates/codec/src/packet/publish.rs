//! PUBLISH (MQTT 5 §3.3) and the four acknowledgements PUBACK, PUBREC, PUBREL, PUBCOMP.

use bytes::{Buf, BufMut, Bytes};
use rallymq_topic::TopicName;

use crate::Properties;
use crate::property::{AckProperties, PublishProperties};
use crate::wire::{Reader, field_len, put_field};
use crate::{Error, PacketId, PacketType, ProtocolVersion, QoS, ReasonCode};

/// PUBLISH: an application message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Set when this may be a re-delivery of an earlier attempt (QoS 1 and 2 only).
    pub dup: bool,
    /// Quality of service.
    pub qos: QoS,
    /// Whether the message is (to be) retained.
    pub retain: bool,
    /// The topic; `None` only in MQTT 5 when a Topic Alias stands for it (a zero-length topic
    /// on the wire).
    pub topic: Option<TopicName>,
    /// Present exactly when QoS is 1 or 2.
    pub packet_id: Option<PacketId>,
    /// MQTT 5 properties (empty before MQTT 5).
    pub properties: Properties<PublishProperties>,
    /// The payload: a slice of the received buffer when decoded.
    pub payload: Bytes,
}

impl Publish {
    /// A QoS 0, non-retained message with no properties.
    pub fn new(topic: TopicName, payload: impl Into<Bytes>) -> Self {
        Self {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: Some(topic),
            packet_id: None,
            properties: Properties::default(),
            payload: payload.into(),
        }
    }

    /// Reads a PUBLISH from its whole `body`, which becomes the payload once the fields before
    /// it are read: the payload costs no reference count of its own.
    #[inline]
    pub(crate) fn read(body: Bytes, flags: u8, version: ProtocolVersion) -> Result<Self, Error> {
        let reader = &mut Reader::new(&body);
        let dup = flags & 0b1000 != 0;
        let qos = QoS::from_bits((flags >> 1) & 0b11)?;
        if dup && qos == QoS::AtMostOnce {
            return Err(Error::DupOnQoS0);
        }
        let topic = reader.binary()?;
        let packet_id = if qos == QoS::AtMostOnce {
            None
        } else {
            Some(read_packet_id(reader)?)
        };
        let properties = if version.is_v5() {
            PublishProperties::read(reader)?
        } else {
            Properties::default()
        };
        let topic = if topic.is_empty() {
            if properties.topic_alias.is_none() {
                return Err(Error::MissingTopic);
            }
            None
        } else {
            Some(TopicName::from_bytes(topic).map_err(Error::TopicName)?)
        };
        let payload_start = body.len() - reader.remaining();
        let mut payload = body;
        payload.advance(payload_start);
        Ok(Self {
            dup,
            qos,
            retain: flags & 1 != 0,
            topic,
            packet_id,
            properties,
            payload,
        })
    }

    #[inline]
    pub(crate) fn check(&self, version: ProtocolVersion) -> Result<(), Error> {
        if self.packet_id.is_some() != (self.qos != QoS::AtMostOnce) {
            return Err(Error::PacketIdMismatch);
        }
        if self.dup && self.qos == QoS::AtMostOnce {
            return Err(Error::DupOnQoS0);
        }
        if self.topic.is_none() && (!version.is_v5() || self.properties.topic_alias.is_none()) {
            return Err(Error::MissingTopic);
        }
        Ok(())
    }

    pub(crate) fn flags(&self) -> u8 {
        (u8::from(self.dup) << 3) | (self.qos.bits() << 1) | u8::from(self.retain)
    }

    #[inline]
    pub(crate) fn body_len(&self, version: ProtocolVersion) -> usize {
        field_len(self.topic.as_ref().map_or(0, |topic| topic.len()))
            + if self.packet_id.is_some() { 2 } else { 0 }
            + if version.is_v5() {
                self.properties.encoded_len()
            } else {
                0
            }
            + self.payload.len()
    }

    #[inline]
    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut impl BufMut) {
        put_field(
            buf,
            self.topic
                .as_ref()
                .map_or(&[][..], |topic| topic.as_bytes()),
        );
        if let Some(id) = self.packet_id {
            buf.put_u16(id.get());
        }
        if version.is_v5() {
            self.properties.write(buf);
        }
        buf.put_slice(&self.payload);
    }
}

pub(crate) fn read_packet_id(reader: &mut Reader<'_>) -> Result<PacketId, Error> {
    PacketId::new(reader.u16()?).ok_or(Error::ZeroPacketId)
}

/// The body shared by PUBACK, PUBREC, PUBREL and PUBCOMP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The identifier of the PUBLISH (or PUBREL) acknowledged.
    pub packet_id: PacketId,
    /// The result (MQTT 5; always [`ReasonCode::Success`] before MQTT 5).
    pub reason_code: ReasonCode,
    /// MQTT 5 properties (empty before MQTT 5).
    pub properties: Properties<AckProperties>,
}

impl Ack {
    /// A successful acknowledgement of `packet_id`.
    pub fn new(packet_id: PacketId) -> Self {
        Self {
            packet_id,
            reason_code: ReasonCode::Success,
            properties: Properties::default(),
        }
    }

    pub(crate) fn read(
        reader: &mut Reader<'_>,
        packet: PacketType,
        version: ProtocolVersion,
    ) -> Result<Self, Error> {
        let packet_id = read_packet_id(reader)?;
        let (reason_code, properties) = if version.is_v5() {
            read_reason_and_properties(reader, packet, AckProperties::read)?
        } else {
            (ReasonCode::Success, Properties::default())
        };
        reader.finish()?;
        Ok(Self {
            packet_id,
            reason_code,
            properties,
        })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> usize {
        2 + if version.is_v5() {
            reason_and_properties_len(
                self.reason_code,
                self.properties.is_empty(),
                self.properties.encoded_len(),
            )
        } else {
            0
        }
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut impl BufMut) {
        buf.put_u16(self.packet_id.get());
        if version.is_v5() {
            write_reason_and_properties(
                buf,
                self.reason_code,
                &*self.properties,
                AckProperties::is_empty,
                AckProperties::write,
            );
        }
    }
}

/// Reads the optional reason code and optional properties that end PUBACK-family, DISCONNECT
/// and AUTH packets in MQTT 5: each may be left out when the rest of the packet is empty.
pub(crate) fn read_reason_and_properties<P: Default>(
    reader: &mut Reader<'_>,
    packet: PacketType,
    read_properties: impl FnOnce(&mut Reader<'_>) -> Result<P, Error>,
) -> Result<(ReasonCode, P), Error> {
    if reader.is_empty() {
        return Ok((ReasonCode::Success, P::default()));
    }
    let code = reader.u8()?;
    let reason_code = ReasonCode::from_u8(code)
        .filter(|rc| rc.is_valid_for(packet))
        .ok_or(Error::InvalidReasonCode { packet, code })?;
    let properties = if reader.is_empty() {
        P::default()
    } else {
        read_properties(reader)?
    };
    Ok((reason_code, properties))
}

/// Length of the shortest encoding of a reason code and properties (see
/// [`read_reason_and_properties`]).
pub(crate) fn reason_and_properties_len(
    code: ReasonCode,
    properties_empty: bool,
    properties_len: usize,
) -> usize {
    if !properties_empty {
        1 + properties_len
    } else if code != ReasonCode::Success {
        1
    } else {
        0
    }
}

pub(crate) fn write_reason_and_properties<P, B: BufMut>(
    buf: &mut B,
    code: ReasonCode,
    properties: &P,
    is_empty: impl FnOnce(&P) -> bool,
    write: impl FnOnce(&P, &mut B),
) {
    let properties_empty = is_empty(properties);
    if code != ReasonCode::Success || !properties_empty {
        buf.put_u8(code.as_u8());
    }
    if !properties_empty {
        write(properties, buf);
    }
}
