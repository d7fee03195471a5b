//! DISCONNECT (MQTT 5 §3.14) and AUTH (§3.15).

use bytes::BufMut;

use crate::Properties;
use crate::packet::publish::{
    read_reason_and_properties, reason_and_properties_len, write_reason_and_properties,
};
use crate::property::{AuthProperties, DisconnectProperties};
use crate::wire::Reader;
use crate::{Error, PacketType, ProtocolVersion, ReasonCode};

/// DISCONNECT. Before MQTT 5 it has no body: the reason is always normal disconnection.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disconnect {
    /// Why the connection ends (MQTT 5).
    pub reason_code: ReasonCode,
    /// MQTT 5 properties.
    pub properties: Properties<DisconnectProperties>,
}

impl Disconnect {
    /// A DISCONNECT with a reason code and no properties.
    pub fn new(reason_code: ReasonCode) -> Self {
        Self {
            reason_code,
            properties: Properties::default(),
        }
    }

    pub(crate) fn read(reader: &mut Reader<'_>, version: ProtocolVersion) -> Result<Self, Error> {
        let (reason_code, properties) = if version.is_v5() {
            read_reason_and_properties(reader, PacketType::Disconnect, DisconnectProperties::read)?
        } else {
            (ReasonCode::Success, Properties::default())
        };
        reader.finish()?;
        Ok(Self {
            reason_code,
            properties,
        })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> usize {
        if version.is_v5() {
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
        if version.is_v5() {
            write_reason_and_properties(
                buf,
                self.reason_code,
                &*self.properties,
                DisconnectProperties::is_empty,
                DisconnectProperties::write,
            );
        }
    }
}

/// AUTH: a step of MQTT 5 extended authentication.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Auth {
    /// Success, Continue authentication or Re-authenticate.
    pub reason_code: ReasonCode,
    /// Authentication method, data and diagnostics.
    pub properties: Properties<AuthProperties>,
}

impl Auth {
    pub(crate) fn read(reader: &mut Reader<'_>) -> Result<Self, Error> {
        let (reason_code, properties) =
            read_reason_and_properties(reader, PacketType::Auth, AuthProperties::read)?;
        reader.finish()?;
        Ok(Self {
            reason_code,
            properties,
        })
    }

    pub(crate) fn body_len(&self) -> usize {
        reason_and_properties_len(
            self.reason_code,
            self.properties.is_empty(),
            self.properties.encoded_len(),
        )
    }

    pub(crate) fn write_body(&self, buf: &mut impl BufMut) {
        write_reason_and_properties(
            buf,
            self.reason_code,
            &*self.properties,
            AuthProperties::is_empty,
            AuthProperties::write,
        );
    }
}
