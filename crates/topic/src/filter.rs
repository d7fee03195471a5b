//! Topic filters: what a SUBSCRIBE asks for, wildcards and shared subscriptions included.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use bytestring::ByteString;

use crate::Error;
use crate::name::validate_common;

const SHARE_PREFIX: &str = "$share/";

/// A valid MQTT topic filter: non-empty, UTF-8, at most 65,535 bytes, without U+0000, with `+`
/// filling whole levels and `#` only as the whole last level. A filter of the form
/// `$share/{ShareName}/{filter}` is a shared subscription; [`TopicFilter::share_name`] and
/// [`TopicFilter::filter`] give its two parts.
///
/// Backed by [`Bytes`]: decoding shares the packet's buffer.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicFilter {
    text: ByteString,
    /// Byte offset where the matching filter starts: 0, or just past `$share/{ShareName}/`.
    filter_start: u32,
}

impl TopicFilter {
    /// Validates `text` as a topic filter.
    pub fn new(text: impl Into<String>) -> Result<Self, Error> {
        let text: String = text.into();
        let filter_start = validate_filter(&text)?;
        Ok(Self { text: ByteString::from(text), filter_start })
    }

    /// A topic filter from a `'static` string, checked once.
    pub fn from_static(text: &'static str) -> Result<Self, Error> {
        let filter_start = validate_filter(text)?;
        Ok(Self { text: ByteString::from_static(text), filter_start })
    }

    /// Validates `bytes` as a topic filter without copying them.
    pub fn from_bytes(bytes: Bytes) -> Result<Self, Error> {
        let text = ByteString::try_from(bytes).map_err(|_| Error::InvalidUtf8)?;
        let filter_start = validate_filter(&text)?;
        Ok(Self { text, filter_start })
    }

    /// The whole filter as sent, `$share/{ShareName}/` prefix included.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The underlying bytes (a cheap clone of the shared buffer).
    pub fn to_bytes(&self) -> Bytes {
        self.text.as_bytes().clone()
    }

    /// The part that is matched against topic names: the whole filter, or for a shared
    /// subscription the part after `$share/{ShareName}/`.
    pub fn filter(&self) -> &str {
        &self.text[self.filter_start as usize..]
    }

    /// The ShareName of a shared subscription, `None` for an ordinary one.
    pub fn share_name(&self) -> Option<&str> {
        if self.filter_start == 0 {
            None
        } else {
            Some(&self.text[SHARE_PREFIX.len()..self.filter_start as usize - 1])
        }
    }

    /// Whether this is a shared subscription (`$share/...`).
    pub fn is_shared(&self) -> bool {
        self.filter_start != 0
    }

    /// Whether the matching filter holds `+` or `#`.
    pub fn has_wildcards(&self) -> bool {
        self.filter().bytes().any(|b| b == b'+' || b == b'#')
    }

    /// The levels of the matching filter, split on `/` (empty levels included).
    pub fn levels(&self) -> std::str::Split<'_, char> {
        self.filter().split('/')
    }
}

/// Validates a filter and returns where its matching part starts.
fn validate_filter(text: &str) -> Result<u32, Error> {
    validate_common(text)?;
    let filter_start = match text.strip_prefix(SHARE_PREFIX) {
        Some(rest) => {
            let (share_name, filter) = rest.split_once('/').ok_or(if rest.is_empty() {
                Error::InvalidShareName
            } else {
                Error::MissingSharedFilter
            })?;
            if share_name.is_empty() || share_name.contains(['+', '#']) {
                return Err(Error::InvalidShareName);
            }
            if filter.is_empty() {
                return Err(Error::MissingSharedFilter);
            }
            // Bounded by MAX_TOPIC_LEN (65,535), checked above.
            (SHARE_PREFIX.len() + share_name.len() + 1) as u32
        }
        None => 0,
    };
    let filter = &text[filter_start as usize..];
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(Error::InvalidMultiLevelWildcard);
        }
        if level.contains('+') && level != "+" {
            return Err(Error::InvalidSingleLevelWildcard);
        }
    }
    Ok(filter_start)
}

impl AsRef<str> for TopicFilter {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.text, f)
    }
}

impl FromStr for TopicFilter {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self, Error> {
        Self::new(text)
    }
}

impl TryFrom<&str> for TopicFilter {
    type Error = Error;
    fn try_from(text: &str) -> Result<Self, Error> {
        Self::new(text)
    }
}

impl TryFrom<String> for TopicFilter {
    type Error = Error;
    fn try_from(text: String) -> Result<Self, Error> {
        Self::new(text)
    }
}

impl TryFrom<Bytes> for TopicFilter {
    type Error = Error;
    fn try_from(bytes: Bytes) -> Result<Self, Error> {
        Self::from_bytes(bytes)
    }
}
