//! UTF-8 strings and user properties as MQTT carries them.

use std::fmt;
use std::ops::Deref;

use bytes::Bytes;
use bytestring::ByteString;

use crate::Error;

/// The longest string or binary field MQTT can carry, in bytes.
pub const MAX_STRING_LEN: usize = 65_535;

/// A UTF-8 Encoded String as MQTT allows it: well-formed UTF-8, no U+0000, at most 65,535 bytes
/// (MQTT-1.5.3-1, MQTT-1.5.3-2). Backed by [`Bytes`], so decoded strings share the packet buffer.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MqttString(ByteString);

impl MqttString {
    /// Validates `text`.
    pub fn new(text: impl Into<String>) -> Result<Self, Error> {
        let text: String = text.into();
        validate(&text)?;
        Ok(Self(ByteString::from(text)))
    }

    /// A string from a `'static` str, checked once.
    pub fn from_static(text: &'static str) -> Result<Self, Error> {
        validate(text)?;
        Ok(Self(ByteString::from_static(text)))
    }

    /// Validates `bytes` without copying them.
    pub fn from_bytes(bytes: Bytes) -> Result<Self, Error> {
        let text = ByteString::try_from(bytes).map_err(|_| Error::InvalidUtf8)?;
        validate(&text)?;
        Ok(Self(text))
    }

    /// The string as a `&str`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn validate(text: &str) -> Result<(), Error> {
    if text.len() > MAX_STRING_LEN {
        return Err(Error::StringTooLong(text.len()));
    }
    if text.as_bytes().contains(&0) {
        return Err(Error::NullCharacter);
    }
    Ok(())
}

impl Deref for MqttString {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for MqttString {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MqttString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for MqttString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl TryFrom<&str> for MqttString {
    type Error = Error;
    fn try_from(text: &str) -> Result<Self, Error> {
        Self::new(text)
    }
}

impl TryFrom<String> for MqttString {
    type Error = Error;
    fn try_from(text: String) -> Result<Self, Error> {
        Self::new(text)
    }
}

impl PartialEq<str> for MqttString {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for MqttString {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// An MQTT 5 User Property: a name/value pair. Names may repeat; order is kept.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserProperty {
    /// The name.
    pub name: MqttString,
    /// The value.
    pub value: MqttString,
}

impl UserProperty {
    /// A user property from two strings.
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Result<Self, Error> {
        Ok(Self {
            name: MqttString::new(name)?,
            value: MqttString::new(value)?,
        })
    }
}
