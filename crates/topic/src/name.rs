//! Topic names: what a PUBLISH is addressed to.

use std::fmt;
use std::ops::Deref;
use std::str::FromStr;

use bytes::Bytes;
use bytestring::ByteString;

use crate::Error;

/// The longest topic an MQTT string can carry, in bytes.
pub const MAX_TOPIC_LEN: usize = 65_535;

/// A valid MQTT topic name: non-empty, UTF-8, at most 65,535 bytes, without U+0000 and without
/// the wildcards `+` and `#`.
///
/// Backed by [`Bytes`], so a name decoded from a packet shares the packet's buffer and cloning
/// is a reference-count increment.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(ByteString);

impl TopicName {
    /// Validates `text` as a topic name.
    pub fn new(text: impl Into<String>) -> Result<Self, Error> {
        let text: String = text.into();
        validate_name(&text)?;
        Ok(Self(ByteString::from(text)))
    }

    /// A topic name from a `'static` string, checked once.
    pub fn from_static(text: &'static str) -> Result<Self, Error> {
        validate_name(text)?;
        Ok(Self(ByteString::from_static(text)))
    }

    /// Validates `bytes` as a topic name without copying them.
    pub fn from_bytes(bytes: Bytes) -> Result<Self, Error> {
        let text = ByteString::try_from(bytes).map_err(|_| Error::InvalidUtf8)?;
        validate_name(&text)?;
        Ok(Self(text))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The underlying bytes (a cheap clone of the shared buffer).
    pub fn to_bytes(&self) -> Bytes {
        self.0.as_bytes().clone()
    }

    /// The levels of the name, split on `/` (empty levels included).
    pub fn levels(&self) -> std::str::Split<'_, char> {
        self.0.split('/')
    }

    /// Whether the name starts with `$` (such as `$SYS/...`), which filters starting with a
    /// wildcard do not match (MQTT-4.7.2-1).
    pub fn is_system(&self) -> bool {
        self.0.starts_with('$')
    }
}

/// Checks the rules shared by names and filters: length, UTF-8 (already given by `&str`), U+0000.
pub(crate) fn validate_common(text: &str) -> Result<(), Error> {
    validate_length(text)?;
    if text.as_bytes().contains(&0) {
        return Err(Error::NullCharacter);
    }
    Ok(())
}

/// Checks the length rules shared by names and filters: not empty, at most [`MAX_TOPIC_LEN`]
/// bytes.
#[inline]
pub(crate) fn validate_length(text: &str) -> Result<(), Error> {
    if text.is_empty() {
        return Err(Error::Empty);
    }
    if text.len() > MAX_TOPIC_LEN {
        return Err(Error::TooLong(text.len()));
    }
    Ok(())
}

fn validate_name(text: &str) -> Result<(), Error> {
    // Every received PUBLISH is checked here: one pass looks for all three forbidden bytes,
    // and only a topic holding one of them pays for working out which error it is.
    if text.is_empty()
        || text.len() > MAX_TOPIC_LEN
        || text.bytes().any(|b| matches!(b, 0 | b'+' | b'#'))
    {
        validate_common(text)?;
        return Err(Error::WildcardInName);
    }
    Ok(())
}

impl Deref for TopicName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for TopicName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for TopicName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl FromStr for TopicName {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self, Error> {
        Self::new(text)
    }
}

impl TryFrom<&str> for TopicName {
    type Error = Error;
    fn try_from(text: &str) -> Result<Self, Error> {
        Self::new(text)
    }
}

impl TryFrom<String> for TopicName {
    type Error = Error;
    fn try_from(text: String) -> Result<Self, Error> {
        Self::new(text)
    }
}

impl TryFrom<Bytes> for TopicName {
    type Error = Error;
    fn try_from(bytes: Bytes) -> Result<Self, Error> {
        Self::from_bytes(bytes)
    }
}
