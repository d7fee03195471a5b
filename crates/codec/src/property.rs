//! MQTT 5 properties: the values, their identifiers, and which packet may carry which.
//!
//! Each packet has its own property struct holding exactly the properties the spec allows in
//! it (MQTT 5 §2.2.2.2), so a property in the wrong packet cannot be built. Decoding reads any
//! property generically into [`Property`] and the packet's struct accepts or refuses it.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::{BufMut, Bytes};
use rallymq_topic::TopicName;

use crate::properties::{Properties, PropertySet, sealed};
use crate::wire::{Reader, field_len, put_field, put_var_int, var_int_len};
use crate::{Error, MqttString, QoS, SubscriptionId, UserProperty};

/// Payload Format Indicator values (MQTT 5 §3.3.2.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadFormat {
    /// 0: unspecified bytes.
    Bytes = 0,
    /// 1: UTF-8 encoded character data.
    Utf8 = 1,
}

/// How one property value type is read and written.
pub(crate) trait PropertyValue: Sized {
    fn read(reader: &mut Reader<'_>, id: u8) -> Result<Self, Error>;
    fn value_len(&self) -> usize;
    fn write_value(&self, buf: &mut impl BufMut);
}

fn flag_byte(reader: &mut Reader<'_>, id: u8) -> Result<bool, Error> {
    match reader.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(Error::InvalidPropertyValue(id)),
    }
}

impl PropertyValue for bool {
    fn read(reader: &mut Reader<'_>, id: u8) -> Result<Self, Error> {
        flag_byte(reader, id)
    }
    fn value_len(&self) -> usize {
        1
    }
    fn write_value(&self, buf: &mut impl BufMut) {
        buf.put_u8(u8::from(*self));
    }
}

impl PropertyValue for PayloadFormat {
    fn read(reader: &mut Reader<'_>, id: u8) -> Result<Self, Error> {
        Ok(if flag_byte(reader, id)? {
            Self::Utf8
        } else {
            Self::Bytes
        })
    }
    fn value_len(&self) -> usize {
        1
    }
    fn write_value(&self, buf: &mut impl BufMut) {
        buf.put_u8(*self as u8);
    }
}

/// Maximum QoS: only 0 or 1 may be sent (absence means 2).
impl PropertyValue for QoS {
    fn read(reader: &mut Reader<'_>, id: u8) -> Result<Self, Error> {
        Ok(if flag_byte(reader, id)? {
            Self::AtLeastOnce
        } else {
            Self::AtMostOnce
        })
    }
    fn value_len(&self) -> usize {
        1
    }
    fn write_value(&self, buf: &mut impl BufMut) {
        buf.put_u8(self.bits());
    }
}

impl PropertyValue for u16 {
    fn read(reader: &mut Reader<'_>, _id: u8) -> Result<Self, Error> {
        reader.u16()
    }
    fn value_len(&self) -> usize {
        2
    }
    fn write_value(&self, buf: &mut impl BufMut) {
        buf.put_u16(*self);
    }
}

impl PropertyValue for NonZeroU16 {
    fn read(reader: &mut Reader<'_>, id: u8) -> Result<Self, Error> {
        Self::new(reader.u16()?).ok_or(Error::InvalidPropertyValue(id))
    }
    fn value_len(&self) -> usize {
        2
    }
    fn write_value(&self, buf: &mut impl BufMut) {
        buf.put_u16(self.get());
    }
}

impl PropertyValue for u32 {
    fn read(reader: &mut Reader<'_>, _id: u8) -> Result<Self, Error> {
        reader.u32()
    }
    fn value_len(&self) -> usize {
        4
    }
    fn write_value(&self, buf: &mut impl BufMut) {
        buf.put_u32(*self);
    }
}

impl PropertyValue for NonZeroU32 {
    fn read(reader: &mut Reader<'_>, id: u8) -> Result<Self, Error> {
        Self::new(reader.u32()?).ok_or(Error::InvalidPropertyValue(id))
    }
    fn value_len(&self) -> usize {
        4
    }
    fn write_value(&self, buf: &mut impl BufMut) {
        buf.put_u32(self.get());
    }
}

impl PropertyValue for SubscriptionId {
    fn read(reader: &mut Reader<'_>, id: u8) -> Result<Self, Error> {
        Self::new(reader.var_int()?).ok_or(Error::InvalidPropertyValue(id))
    }
    fn value_len(&self) -> usize {
        var_int_len(self.get() as usize)
    }
    fn write_value(&self, buf: &mut impl BufMut) {
        put_var_int(buf, self.get() as usize);
    }
}

impl PropertyValue for MqttString {
    fn read(reader: &mut Reader<'_>, _id: u8) -> Result<Self, Error> {
        reader.string()
    }
    fn value_len(&self) -> usize {
        field_len(self.len())
    }
    fn write_value(&self, buf: &mut impl BufMut) {
        put_field(buf, self.as_bytes());
    }
}

/// Response Topic: a topic name, no wildcards (MQTT-3.3.2-14).
impl PropertyValue for TopicName {
    fn read(reader: &mut Reader<'_>, _id: u8) -> Result<Self, Error> {
        Self::from_bytes(reader.binary()?).map_err(Error::TopicName)
    }
    fn value_len(&self) -> usize {
        field_len(self.as_str().len())
    }
    fn write_value(&self, buf: &mut impl BufMut) {
        put_field(buf, self.as_bytes());
    }
}

/// Binary Data (Correlation Data, Authentication Data).
impl PropertyValue for Bytes {
    fn read(reader: &mut Reader<'_>, _id: u8) -> Result<Self, Error> {
        reader.binary()
    }
    fn value_len(&self) -> usize {
        field_len(self.len())
    }
    fn write_value(&self, buf: &mut impl BufMut) {
        put_field(buf, self);
    }
}

impl PropertyValue for UserProperty {
    fn read(reader: &mut Reader<'_>, _id: u8) -> Result<Self, Error> {
        Ok(Self {
            name: reader.string()?,
            value: reader.string()?,
        })
    }
    fn value_len(&self) -> usize {
        field_len(self.name.len()) + field_len(self.value.len())
    }
    fn write_value(&self, buf: &mut impl BufMut) {
        put_field(buf, self.name.as_bytes());
        put_field(buf, self.value.as_bytes());
    }
}

macro_rules! define_properties {
    ($( $variant:ident = $id:literal : $ty:ty ),* $(,)?) => {
        /// One decoded property of any kind.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub(crate) enum Property {
            $( $variant($ty), )*
        }

        impl Property {
            pub(crate) fn read(id: u8, reader: &mut Reader<'_>) -> Result<Self, Error> {
                match id {
                    $( $id => Ok(Self::$variant(<$ty as PropertyValue>::read(reader, id)?)), )*
                    other => Err(Error::UnknownProperty(u32::from(other))),
                }
            }

            pub(crate) fn id(&self) -> u8 {
                match self {
                    $( Self::$variant(_) => $id, )*
                }
            }
        }

        /// Property identifiers, named after their [`Property`] variants.
        #[allow(non_upper_case_globals)]
        pub(crate) mod id {
            $( pub(crate) const $variant: u8 = $id; )*
        }

        /// Encoded size of one property: identifier byte plus value.
        pub(crate) fn encoded_property_len<T: PropertyValue>(value: &T) -> usize {
            1 + value.value_len()
        }
    };
}

define_properties! {
    PayloadFormatIndicator = 0x01: PayloadFormat,
    MessageExpiryInterval = 0x02: u32,
    ContentType = 0x03: MqttString,
    ResponseTopic = 0x08: TopicName,
    CorrelationData = 0x09: Bytes,
    SubscriptionIdentifier = 0x0B: SubscriptionId,
    SessionExpiryInterval = 0x11: u32,
    AssignedClientIdentifier = 0x12: MqttString,
    ServerKeepAlive = 0x13: u16,
    AuthenticationMethod = 0x15: MqttString,
    AuthenticationData = 0x16: Bytes,
    RequestProblemInformation = 0x17: bool,
    WillDelayInterval = 0x18: u32,
    RequestResponseInformation = 0x19: bool,
    ResponseInformation = 0x1A: MqttString,
    ServerReference = 0x1C: MqttString,
    ReasonString = 0x1F: MqttString,
    ReceiveMaximum = 0x21: NonZeroU16,
    TopicAliasMaximum = 0x22: u16,
    TopicAlias = 0x23: NonZeroU16,
    MaximumQoS = 0x24: QoS,
    RetainAvailable = 0x25: bool,
    UserProperty = 0x26: UserProperty,
    MaximumPacketSize = 0x27: NonZeroU32,
    WildcardSubscriptionAvailable = 0x28: bool,
    SubscriptionIdentifierAvailable = 0x29: bool,
    SharedSubscriptionAvailable = 0x2A: bool,
}

/// Reads a property section: its Variable Byte Integer length, then properties until it ends,
/// each handed to `accept`.
pub(crate) fn read_properties(
    reader: &mut Reader<'_>,
    mut accept: impl FnMut(Property) -> Result<(), Error>,
) -> Result<(), Error> {
    let len = reader.var_int()? as usize;
    let mut section = reader.sub_reader(len)?;
    while !section.is_empty() {
        // Identifiers are Variable Byte Integers, though every defined one fits in one byte.
        let id = section.var_int()?;
        let id = u8::try_from(id).map_err(|_| Error::UnknownProperty(id))?;
        accept(Property::read(id, &mut section)?)?;
    }
    Ok(())
}

fn set_once<T>(slot: &mut Option<T>, value: T, id: u8) -> Result<(), Error> {
    if slot.is_some() {
        return Err(Error::DuplicateProperty(id));
    }
    *slot = Some(value);
    Ok(())
}

macro_rules! property_set {
    (
        $(#[$meta:meta])*
        $name:ident in $where:literal {
            once { $( $(#[$fmeta:meta])* $field:ident: $variant:ident($ty:ty), )* }
            many { $( $(#[$mmeta:meta])* $mfield:ident: $mvariant:ident($mty:ty), )* }
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Default)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: Option<$ty>, )*
            $( $(#[$mmeta])* pub $mfield: Vec<$mty>, )*
        }

        impl sealed::Sealed for $name {}

        impl PropertySet for $name {
            fn empty() -> &'static Self {
                static EMPTY: $name = $name {
                    $( $field: None, )*
                    $( $mfield: Vec::new(), )*
                };
                &EMPTY
            }

            fn is_empty(&self) -> bool {
                $name::is_empty(self)
            }
        }

        impl $name {
            /// Whether no property is set.
            pub fn is_empty(&self) -> bool {
                true $( && self.$field.is_none() )* $( && self.$mfield.is_empty() )*
            }

            pub(crate) fn read(reader: &mut Reader<'_>) -> Result<Properties<Self>, Error> {
                // Most sections are empty: skip building (and allocating) a set for them.
                if reader.skip_zero_byte() {
                    return Ok(Properties::default());
                }
                let mut set = Self::default();
                read_properties(reader, |property| match property {
                    $( Property::$variant(value) => set_once(&mut set.$field, value, id::$variant), )*
                    $( Property::$mvariant(value) => { set.$mfield.push(value); Ok(()) } )*
                    #[allow(unreachable_patterns)]
                    other => Err(Error::PropertyNotAllowed { id: other.id(), packet: $where }),
                })?;
                Ok(Properties::from(set))
            }

            /// Bytes the properties take, without the length prefix.
            pub(crate) fn body_len(&self) -> usize {
                0 $( + self.$field.as_ref().map_or(0, encoded_property_len) )*
                  $( + self.$mfield.iter().map(encoded_property_len).sum::<usize>() )*
            }

            /// Bytes the property section takes, length prefix included.
            pub(crate) fn encoded_len(&self) -> usize {
                let body = self.body_len();
                var_int_len(body) + body
            }

            pub(crate) fn write(&self, buf: &mut impl BufMut) {
                put_var_int(buf, self.body_len());
                $( if let Some(value) = &self.$field {
                    buf.put_u8(id::$variant);
                    value.write_value(buf);
                } )*
                $( for value in &self.$mfield {
                    buf.put_u8(id::$mvariant);
                    value.write_value(buf);
                } )*
            }
        }
    };
}

property_set! {
    /// Properties of CONNECT (MQTT 5 §3.1.2.11).
    ConnectProperties in "CONNECT" {
        once {
            /// Seconds the session lives after the connection closes; absent means 0.
            session_expiry_interval: SessionExpiryInterval(u32),
            /// How many QoS 1 and 2 PUBLISH the client will process at once; absent means 65,535.
            receive_maximum: ReceiveMaximum(NonZeroU16),
            /// Largest packet the client accepts.
            maximum_packet_size: MaximumPacketSize(NonZeroU32),
            /// Highest topic alias the client accepts from the server; absent means 0.
            topic_alias_maximum: TopicAliasMaximum(u16),
            /// Whether the client wants Response Information in CONNACK.
            request_response_information: RequestResponseInformation(bool),
            /// Whether the server may send Reason Strings and User Properties on failures.
            request_problem_information: RequestProblemInformation(bool),
            /// Extended authentication method.
            authentication_method: AuthenticationMethod(MqttString),
            /// Extended authentication data.
            authentication_data: AuthenticationData(Bytes),
        }
        many {
            /// User properties, in order.
            user_properties: UserProperty(UserProperty),
        }
    }
}

property_set! {
    /// Will Properties in the CONNECT payload (MQTT 5 §3.1.3.2).
    WillProperties in "Will properties" {
        once {
            /// Seconds to wait before publishing the will; absent means 0.
            will_delay_interval: WillDelayInterval(u32),
            /// Whether the will payload is UTF-8 text.
            payload_format_indicator: PayloadFormatIndicator(PayloadFormat),
            /// Lifetime of the will message in seconds.
            message_expiry_interval: MessageExpiryInterval(u32),
            /// MIME-like description of the payload.
            content_type: ContentType(MqttString),
            /// Topic for a response (request/response).
            response_topic: ResponseTopic(TopicName),
            /// Correlation data for a response.
            correlation_data: CorrelationData(Bytes),
        }
        many {
            /// User properties, in order.
            user_properties: UserProperty(UserProperty),
        }
    }
}

property_set! {
    /// Properties of CONNACK (MQTT 5 §3.2.2.3).
    ConnAckProperties in "CONNACK" {
        once {
            /// Session expiry the server uses, if it differs from the client's.
            session_expiry_interval: SessionExpiryInterval(u32),
            /// How many QoS 1 and 2 PUBLISH the server will process at once.
            receive_maximum: ReceiveMaximum(NonZeroU16),
            /// Highest QoS the server supports (0 or 1; absent means 2).
            maximum_qos: MaximumQoS(QoS),
            /// Whether the server supports retained messages.
            retain_available: RetainAvailable(bool),
            /// Largest packet the server accepts.
            maximum_packet_size: MaximumPacketSize(NonZeroU32),
            /// Client identifier the server assigned to an empty one.
            assigned_client_identifier: AssignedClientIdentifier(MqttString),
            /// Highest topic alias the server accepts from the client.
            topic_alias_maximum: TopicAliasMaximum(u16),
            /// Human-readable diagnostic.
            reason_string: ReasonString(MqttString),
            /// Whether wildcard subscriptions are supported.
            wildcard_subscription_available: WildcardSubscriptionAvailable(bool),
            /// Whether subscription identifiers are supported.
            subscription_identifiers_available: SubscriptionIdentifierAvailable(bool),
            /// Whether shared subscriptions are supported.
            shared_subscription_available: SharedSubscriptionAvailable(bool),
            /// Keep alive the client must use instead of its own.
            server_keep_alive: ServerKeepAlive(u16),
            /// Basis for building response topics.
            response_information: ResponseInformation(MqttString),
            /// Another server the client can use.
            server_reference: ServerReference(MqttString),
            /// Extended authentication method.
            authentication_method: AuthenticationMethod(MqttString),
            /// Extended authentication data.
            authentication_data: AuthenticationData(Bytes),
        }
        many {
            /// User properties, in order.
            user_properties: UserProperty(UserProperty),
        }
    }
}

property_set! {
    /// Properties of PUBLISH (MQTT 5 §3.3.2.3).
    PublishProperties in "PUBLISH" {
        once {
            /// Whether the payload is UTF-8 text.
            payload_format_indicator: PayloadFormatIndicator(PayloadFormat),
            /// Lifetime of the message in seconds.
            message_expiry_interval: MessageExpiryInterval(u32),
            /// Topic alias standing for the topic name.
            topic_alias: TopicAlias(NonZeroU16),
            /// Topic for a response (request/response).
            response_topic: ResponseTopic(TopicName),
            /// Correlation data for a response.
            correlation_data: CorrelationData(Bytes),
            /// MIME-like description of the payload.
            content_type: ContentType(MqttString),
        }
        many {
            /// User properties, in order.
            user_properties: UserProperty(UserProperty),
            /// Identifiers of the subscriptions this message matched (server to client only).
            subscription_identifiers: SubscriptionIdentifier(SubscriptionId),
        }
    }
}

property_set! {
    /// Properties of PUBACK, PUBREC, PUBREL and PUBCOMP (MQTT 5 §3.4.2.2).
    AckProperties in "PUBACK/PUBREC/PUBREL/PUBCOMP" {
        once {
            /// Human-readable diagnostic.
            reason_string: ReasonString(MqttString),
        }
        many {
            /// User properties, in order.
            user_properties: UserProperty(UserProperty),
        }
    }
}

property_set! {
    /// Properties of SUBSCRIBE (MQTT 5 §3.8.2.1).
    SubscribeProperties in "SUBSCRIBE" {
        once {
            /// Identifier the server attaches to messages matching these subscriptions.
            subscription_identifier: SubscriptionIdentifier(SubscriptionId),
        }
        many {
            /// User properties, in order.
            user_properties: UserProperty(UserProperty),
        }
    }
}

property_set! {
    /// Properties of SUBACK, UNSUBACK (MQTT 5 §3.9.2.1, §3.11.2.1).
    SubAckProperties in "SUBACK/UNSUBACK" {
        once {
            /// Human-readable diagnostic.
            reason_string: ReasonString(MqttString),
        }
        many {
            /// User properties, in order.
            user_properties: UserProperty(UserProperty),
        }
    }
}

property_set! {
    /// Properties of UNSUBSCRIBE (MQTT 5 §3.10.2.1).
    UnsubscribeProperties in "UNSUBSCRIBE" {
        once {}
        many {
            /// User properties, in order.
            user_properties: UserProperty(UserProperty),
        }
    }
}

property_set! {
    /// Properties of DISCONNECT (MQTT 5 §3.14.2.2).
    DisconnectProperties in "DISCONNECT" {
        once {
            /// New session expiry, sent by the client only.
            session_expiry_interval: SessionExpiryInterval(u32),
            /// Human-readable diagnostic.
            reason_string: ReasonString(MqttString),
            /// Another server the client can use.
            server_reference: ServerReference(MqttString),
        }
        many {
            /// User properties, in order.
            user_properties: UserProperty(UserProperty),
        }
    }
}

property_set! {
    /// Properties of AUTH (MQTT 5 §3.15.2.2).
    AuthProperties in "AUTH" {
        once {
            /// Extended authentication method.
            authentication_method: AuthenticationMethod(MqttString),
            /// Extended authentication data.
            authentication_data: AuthenticationData(Bytes),
            /// Human-readable diagnostic.
            reason_string: ReasonString(MqttString),
        }
        many {
            /// User properties, in order.
            user_properties: UserProperty(UserProperty),
        }
    }
}
