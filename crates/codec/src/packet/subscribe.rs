//! SUBSCRIBE (MQTT 5 §3.8), SUBACK (§3.9), UNSUBSCRIBE (§3.10) and UNSUBACK (§3.11).

use bytes::BufMut;
use rallymq_topic::TopicFilter;

use crate::Properties;
use crate::packet::publish::read_packet_id;
use crate::property::{SubAckProperties, SubscribeProperties, UnsubscribeProperties};
use crate::wire::{Reader, field_len, put_field};
use crate::{Error, PacketId, PacketType, ProtocolVersion, QoS, ReasonCode};

/// When retained messages are sent for a new subscription (MQTT 5 §3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RetainHandling {
    /// 0: send retained messages at the time of the subscribe.
    #[default]
    SendAtSubscribe = 0,
    /// 1: send them only if the subscription did not exist yet.
    SendAtSubscribeIfNew = 1,
    /// 2: do not send them.
    DoNotSend = 2,
}

/// The options of one subscription. Before MQTT 5 only `qos` travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SubscriptionOptions {
    /// Maximum QoS the subscriber wants.
    pub qos: QoS,
    /// Do not send the subscriber its own messages (MQTT 5).
    pub no_local: bool,
    /// Keep the RETAIN flag as published when forwarding (MQTT 5).
    pub retain_as_published: bool,
    /// When to send retained messages (MQTT 5).
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    fn read(byte: u8, version: ProtocolVersion) -> Result<Self, Error> {
        let reserved = if version.is_v5() {
            0b1100_0000
        } else {
            0b1111_1100
        };
        if byte & reserved != 0 {
            return Err(Error::ReservedSubscriptionOptions);
        }
        let retain_handling = match (byte >> 4) & 0b11 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendAtSubscribeIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return Err(Error::InvalidRetainHandling),
        };
        Ok(Self {
            qos: QoS::from_bits(byte & 0b11)?,
            no_local: byte & 0b0100 != 0,
            retain_as_published: byte & 0b1000 != 0,
            retain_handling,
        })
    }

    fn to_byte(self, version: ProtocolVersion) -> u8 {
        if !version.is_v5() {
            return self.qos.bits();
        }
        self.qos.bits()
            | (u8::from(self.no_local) << 2)
            | (u8::from(self.retain_as_published) << 3)
            | ((self.retain_handling as u8) << 4)
    }
}

/// One topic filter of a SUBSCRIBE with its options.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Subscription {
    /// The filter.
    pub filter: TopicFilter,
    /// Its options.
    pub options: SubscriptionOptions,
}

impl Subscription {
    /// A subscription with the given QoS and default options.
    pub fn new(filter: TopicFilter, qos: QoS) -> Self {
        Self {
            filter,
            options: SubscriptionOptions {
                qos,
                ..SubscriptionOptions::default()
            },
        }
    }
}

/// SUBSCRIBE: one or more subscriptions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet identifier, echoed in SUBACK.
    pub packet_id: PacketId,
    /// MQTT 5 properties (empty before MQTT 5).
    pub properties: Properties<SubscribeProperties>,
    /// At least one subscription (MQTT-3.8.3-3).
    pub subscriptions: Vec<Subscription>,
}

/// Most filters a SUBSCRIBE or UNSUBSCRIBE list is sized for before they are read; a longer list
/// grows as usual.
const PRESIZE_LIMIT: usize = 128;

fn read_filter(reader: &mut Reader<'_>) -> Result<TopicFilter, Error> {
    TopicFilter::from_bytes(reader.binary()?).map_err(Error::TopicFilter)
}

impl Subscribe {
    pub(crate) fn read(reader: &mut Reader<'_>, version: ProtocolVersion) -> Result<Self, Error> {
        let packet_id = read_packet_id(reader)?;
        let properties = if version.is_v5() {
            SubscribeProperties::read(reader)?
        } else {
            Properties::default()
        };
        // Sized up front: a SUBSCRIBE often carries many filters, and growing the list as they
        // come reallocates and moves it several times.
        let mut subscriptions = Vec::with_capacity(reader.count_fields(1, PRESIZE_LIMIT));
        while !reader.is_empty() {
            let filter = read_filter(reader)?;
            let options = SubscriptionOptions::read(reader.u8()?, version)?;
            if options.no_local && filter.is_shared() {
                return Err(Error::NoLocalOnSharedSubscription);
            }
            subscriptions.push(Subscription { filter, options });
        }
        if subscriptions.is_empty() {
            return Err(Error::NoTopicFilters(PacketType::Subscribe));
        }
        Ok(Self {
            packet_id,
            properties,
            subscriptions,
        })
    }

    pub(crate) fn check(&self) -> Result<(), Error> {
        if self.subscriptions.is_empty() {
            Err(Error::NoTopicFilters(PacketType::Subscribe))
        } else {
            Ok(())
        }
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> usize {
        2 + if version.is_v5() {
            self.properties.encoded_len()
        } else {
            0
        } + self
            .subscriptions
            .iter()
            .map(|s| field_len(s.filter.as_str().len()) + 1)
            .sum::<usize>()
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut impl BufMut) {
        buf.put_u16(self.packet_id.get());
        if version.is_v5() {
            self.properties.write(buf);
        }
        for subscription in &self.subscriptions {
            put_field(buf, subscription.filter.as_str().as_bytes());
            buf.put_u8(subscription.options.to_byte(version));
        }
    }
}

/// SUBACK: one reason code per subscription, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// The SUBSCRIBE's packet identifier.
    pub packet_id: PacketId,
    /// MQTT 5 properties (empty before MQTT 5).
    pub properties: Properties<SubAckProperties>,
    /// Granted QoS ([`ReasonCode::Success`] is Granted QoS 0) or a failure, per subscription.
    /// Before MQTT 5 every failure travels as return code 0x80.
    pub reason_codes: Vec<ReasonCode>,
}

fn read_reason_codes(
    reader: &mut Reader<'_>,
    packet: PacketType,
) -> Result<Vec<ReasonCode>, Error> {
    let mut codes = Vec::with_capacity(reader.remaining());
    while !reader.is_empty() {
        let code = reader.u8()?;
        codes.push(
            ReasonCode::from_u8(code)
                .filter(|rc| rc.is_valid_for(packet))
                .ok_or(Error::InvalidReasonCode { packet, code })?,
        );
    }
    Ok(codes)
}

impl SubAck {
    pub(crate) fn read(reader: &mut Reader<'_>, version: ProtocolVersion) -> Result<Self, Error> {
        let packet_id = read_packet_id(reader)?;
        let properties = if version.is_v5() {
            SubAckProperties::read(reader)?
        } else {
            Properties::default()
        };
        let reason_codes = read_reason_codes(reader, PacketType::SubAck)?;
        // Nested rather than a let chain, which would need Rust 1.88 (the MSRV is 1.85).
        if !version.is_v5() {
            if let Some(code) = reason_codes
                .iter()
                .find(|rc| !matches!(rc.as_u8(), 0 | 1 | 2 | 0x80))
            {
                return Err(Error::InvalidReasonCode {
                    packet: PacketType::SubAck,
                    code: code.as_u8(),
                });
            }
        }
        Ok(Self {
            packet_id,
            properties,
            reason_codes,
        })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> usize {
        2 + if version.is_v5() {
            self.properties.encoded_len()
        } else {
            0
        } + self.reason_codes.len()
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut impl BufMut) {
        buf.put_u16(self.packet_id.get());
        if version.is_v5() {
            self.properties.write(buf);
        }
        for code in &self.reason_codes {
            let byte = code.as_u8();
            buf.put_u8(if version.is_v5() || byte <= 2 {
                byte
            } else {
                0x80
            });
        }
    }
}

/// UNSUBSCRIBE: one or more topic filters to remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet identifier, echoed in UNSUBACK.
    pub packet_id: PacketId,
    /// MQTT 5 properties (empty before MQTT 5).
    pub properties: Properties<UnsubscribeProperties>,
    /// At least one filter (MQTT-3.10.3-2).
    pub filters: Vec<TopicFilter>,
}

impl Unsubscribe {
    pub(crate) fn read(reader: &mut Reader<'_>, version: ProtocolVersion) -> Result<Self, Error> {
        let packet_id = read_packet_id(reader)?;
        let properties = if version.is_v5() {
            UnsubscribeProperties::read(reader)?
        } else {
            Properties::default()
        };
        let mut filters = Vec::with_capacity(reader.count_fields(0, PRESIZE_LIMIT));
        while !reader.is_empty() {
            filters.push(read_filter(reader)?);
        }
        if filters.is_empty() {
            return Err(Error::NoTopicFilters(PacketType::Unsubscribe));
        }
        Ok(Self {
            packet_id,
            properties,
            filters,
        })
    }

    pub(crate) fn check(&self) -> Result<(), Error> {
        if self.filters.is_empty() {
            Err(Error::NoTopicFilters(PacketType::Unsubscribe))
        } else {
            Ok(())
        }
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> usize {
        2 + if version.is_v5() {
            self.properties.encoded_len()
        } else {
            0
        } + self
            .filters
            .iter()
            .map(|f| field_len(f.as_str().len()))
            .sum::<usize>()
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut impl BufMut) {
        buf.put_u16(self.packet_id.get());
        if version.is_v5() {
            self.properties.write(buf);
        }
        for filter in &self.filters {
            put_field(buf, filter.as_str().as_bytes());
        }
    }
}

/// UNSUBACK. Before MQTT 5 it carries only the packet identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    /// The UNSUBSCRIBE's packet identifier.
    pub packet_id: PacketId,
    /// MQTT 5 properties (empty before MQTT 5).
    pub properties: Properties<SubAckProperties>,
    /// One result per filter (MQTT 5; empty before MQTT 5).
    pub reason_codes: Vec<ReasonCode>,
}

impl UnsubAck {
    pub(crate) fn read(reader: &mut Reader<'_>, version: ProtocolVersion) -> Result<Self, Error> {
        let packet_id = read_packet_id(reader)?;
        if !version.is_v5() {
            reader.finish()?;
            return Ok(Self {
                packet_id,
                properties: Properties::default(),
                reason_codes: Vec::new(),
            });
        }
        let properties = SubAckProperties::read(reader)?;
        let reason_codes = read_reason_codes(reader, PacketType::UnsubAck)?;
        Ok(Self {
            packet_id,
            properties,
            reason_codes,
        })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> usize {
        2 + if version.is_v5() {
            self.properties.encoded_len() + self.reason_codes.len()
        } else {
            0
        }
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut impl BufMut) {
        buf.put_u16(self.packet_id.get());
        if version.is_v5() {
            self.properties.write(buf);
            for code in &self.reason_codes {
                buf.put_u8(code.as_u8());
            }
        }
    }
}
