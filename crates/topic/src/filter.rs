//! Topic filters: what a SUBSCRIBE asks for, wildcards and shared subscriptions included.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use bytestring::ByteString;

use crate::name::validate_length;
use crate::{Error, TopicName};

pub(crate) const SHARE_PREFIX: &str = "$share/";

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
        Ok(Self {
            text: ByteString::from(text),
            filter_start,
        })
    }

    /// A topic filter from a `'static` string, checked once.
    pub fn from_static(text: &'static str) -> Result<Self, Error> {
        let filter_start = validate_filter(text)?;
        Ok(Self {
            text: ByteString::from_static(text),
            filter_start,
        })
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

    /// Whether this filter matches `name`; the same as [`matches()`](crate::matches).
    pub fn matches(&self, name: &TopicName) -> bool {
        crate::matches(self, name)
    }

    /// The levels of the matching filter, split on `/` (empty levels included).
    pub fn levels(&self) -> std::str::Split<'_, char> {
        self.filter().split('/')
    }
}

/// Validates a filter and returns where its matching part starts.
fn validate_filter(text: &str) -> Result<u32, Error> {
    validate_length(text)?;
    let filter_start = match text.strip_prefix(SHARE_PREFIX) {
        Some(rest) => {
            // The filter's NUL check is in `validate_wildcards`; this is the rest's.
            if rest.contains('\0') {
                return Err(Error::NullCharacter);
            }
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
            // Bounded by MAX_TOPIC_LEN (65,535), checked by `validate_length` above.
            (SHARE_PREFIX.len() + share_name.len() + 1) as u32
        }
        None => 0,
    };
    validate_wildcards(&text[filter_start as usize..])?;
    Ok(filter_start)
}

/// Checks that `+` fills whole levels, `#` only the whole last level, and that no U+0000 is
/// present, in one pass over the bytes (filters are validated for every SUBSCRIBE, so this is
/// on a broker's hot path). The first offending level decides the wildcard error, as
/// [`level_wildcard_error`] says; a NUL anywhere wins over it.
pub(crate) fn validate_wildcards(filter: &str) -> Result<(), Error> {
    let bytes = filter.as_bytes();
    let mut level_start = 0;
    for (i, &byte) in bytes.iter().enumerate() {
        let valid = match byte {
            0 => return Err(Error::NullCharacter),
            b'/' => {
                level_start = i + 1;
                true
            }
            b'#' => i == level_start && i + 1 == bytes.len(),
            b'+' => i == level_start && bytes.get(i + 1).is_none_or(|&next| next == b'/'),
            _ => true,
        };
        if !valid {
            if bytes[i..].contains(&0) {
                return Err(Error::NullCharacter);
            }
            let level = filter[level_start..].split('/').next().unwrap_or_default();
            return Err(level_wildcard_error(level));
        }
    }
    Ok(())
}

/// The error for a level that misuses a wildcard: a misplaced `#` first, then a `+` that does
/// not fill the level.
fn level_wildcard_error(level: &str) -> Error {
    if level.contains('#') {
        Error::InvalidMultiLevelWildcard
    } else {
        Error::InvalidSingleLevelWildcard
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MAX_TOPIC_LEN;

    /// The wildcard rules stated level by level (MQTT-4.7.1-2, MQTT-4.7.1-3): the reference the
    /// one-pass [`validate_wildcards`] must agree with, error included.
    fn wildcards_level_by_level(filter: &str) -> Result<(), Error> {
        let mut levels = filter.split('/').peekable();
        while let Some(level) = levels.next() {
            if level.contains('#') && (level != "#" || levels.peek().is_some()) {
                return Err(Error::InvalidMultiLevelWildcard);
            }
            if level.contains('+') && level != "+" {
                return Err(Error::InvalidSingleLevelWildcard);
            }
        }
        Ok(())
    }

    #[test]
    fn one_pass_wildcard_check_agrees_with_the_level_by_level_rules() {
        // Every string of up to eight characters over `a`, `/`, `+` and `#`.
        let alphabet = ['a', '/', '+', '#'];
        let mut filters = vec![String::new()];
        let mut checked = 0;
        for _ in 0..8 {
            let mut longer = Vec::with_capacity(filters.len() * alphabet.len());
            for filter in &filters {
                for c in alphabet {
                    let mut next = filter.clone();
                    next.push(c);
                    assert_eq!(
                        validate_wildcards(&next),
                        wildcards_level_by_level(&next),
                        "{next:?}"
                    );
                    checked += 1;
                    longer.push(next);
                }
            }
            filters = longer;
        }
        assert_eq!(checked, (1..=8).map(|n| 4usize.pow(n)).sum::<usize>());
        assert_eq!(
            validate_wildcards("a+#/b"),
            Err(Error::InvalidMultiLevelWildcard)
        );
        assert_eq!(
            validate_wildcards("a/+b/#/c"),
            Err(Error::InvalidSingleLevelWildcard)
        );
    }

    #[test]
    fn mqtt_4_7_1_1_multi_level_wildcard_alone_and_last() {
        for valid in ["#", "sport/#", "sport/tennis/#", "/#", "+/#"] {
            assert!(TopicFilter::new(valid).is_ok(), "{valid}");
        }
        for invalid in [
            "sport/tennis#",
            "sport/tennis/#/ranking",
            "#/",
            "##",
            "a/#b",
        ] {
            assert_eq!(
                TopicFilter::new(invalid),
                Err(Error::InvalidMultiLevelWildcard),
                "{invalid}"
            );
        }
    }

    #[test]
    fn mqtt_4_7_1_2_single_level_wildcard_fills_whole_level_when_parsing() {
        for valid in ["+", "+/tennis/#", "sport/+/player1", "/+", "+/+", "a//+"] {
            assert!(TopicFilter::new(valid).is_ok(), "{valid}");
        }
        for invalid in ["sport+", "sport/+tennis", "++", "a/b+/c"] {
            assert_eq!(
                TopicFilter::new(invalid),
                Err(Error::InvalidSingleLevelWildcard),
                "{invalid}"
            );
        }
    }

    #[test]
    fn mqtt_4_7_0_1_wildcards_are_refused_in_topic_names() {
        for invalid in ["sport/+", "#", "a/b#", "+x"] {
            assert_eq!(
                TopicName::new(invalid),
                Err(Error::WildcardInName),
                "{invalid}"
            );
        }
    }

    #[test]
    fn mqtt_4_7_3_1_names_and_filters_are_at_least_one_character() {
        assert_eq!(TopicName::new(""), Err(Error::Empty));
        assert_eq!(TopicFilter::new(""), Err(Error::Empty));
        // "/" is two empty levels, and valid.
        assert!(TopicName::new("/").is_ok());
        assert!(TopicFilter::new("/").is_ok());
    }

    #[test]
    fn mqtt_4_7_3_2_null_character_is_refused() {
        assert_eq!(TopicName::new("a\0b"), Err(Error::NullCharacter));
        assert_eq!(TopicFilter::new("a/\0"), Err(Error::NullCharacter));
        // Checked in the same pass as the wildcards, but it wins over them wherever it is,
        // and over a bad share name.
        assert_eq!(TopicName::new("a+/\0"), Err(Error::NullCharacter));
        assert_eq!(TopicFilter::new("a+/\0"), Err(Error::NullCharacter));
        assert_eq!(TopicFilter::new("\0/#/x"), Err(Error::NullCharacter));
        assert_eq!(TopicFilter::new("$share/g+\0/x"), Err(Error::NullCharacter));
        assert_eq!(TopicFilter::new("$share/g/x\0"), Err(Error::NullCharacter));
    }

    #[test]
    fn mqtt_4_7_3_3_at_most_65535_bytes() {
        let longest = "a".repeat(MAX_TOPIC_LEN);
        assert!(TopicName::new(longest.clone()).is_ok());
        assert!(TopicFilter::new(longest.clone()).is_ok());
        // Two-byte characters: the limit is on encoded bytes, not characters.
        let too_long = "\u{e9}".repeat(MAX_TOPIC_LEN / 2 + 1);
        assert_eq!(
            TopicName::new(too_long.clone()),
            Err(Error::TooLong(too_long.len()))
        );
        assert_eq!(
            TopicFilter::new(too_long.clone()),
            Err(Error::TooLong(too_long.len()))
        );
    }

    #[test]
    fn mqtt_1_5_3_1_invalid_utf8_is_refused() {
        assert_eq!(
            TopicName::from_bytes(Bytes::from_static(b"a/\xff")),
            Err(Error::InvalidUtf8)
        );
        assert_eq!(
            TopicFilter::from_bytes(Bytes::from_static(b"\xc3")),
            Err(Error::InvalidUtf8)
        );
    }

    #[test]
    fn mqtt_4_8_2_1_shared_filter_has_share_prefix_and_non_empty_share_name() {
        let shared = TopicFilter::new("$share/consumer1/sport/tennis/+").unwrap();
        assert_eq!(shared.share_name(), Some("consumer1"));
        assert_eq!(shared.filter(), "sport/tennis/+");
        assert!(shared.is_shared());
        let plain = TopicFilter::new("sport/tennis/+").unwrap();
        assert_eq!(
            (plain.share_name(), plain.filter(), plain.is_shared()),
            (None, "sport/tennis/+", false)
        );
        assert_eq!(TopicFilter::new("$share//a"), Err(Error::InvalidShareName));
        assert_eq!(TopicFilter::new("$share/"), Err(Error::InvalidShareName));
        // Without the slash, "$share" is an ordinary filter level.
        assert_eq!(TopicFilter::new("$share").unwrap().share_name(), None);
    }

    #[test]
    fn mqtt_4_8_2_2_share_name_without_wildcards_and_followed_by_a_filter() {
        assert_eq!(
            TopicFilter::new("$share/a+/x"),
            Err(Error::InvalidShareName)
        );
        assert_eq!(
            TopicFilter::new("$share/a#/x"),
            Err(Error::InvalidShareName)
        );
        assert_eq!(TopicFilter::new("$share/+/x"), Err(Error::InvalidShareName));
        assert_eq!(
            TopicFilter::new("$share/group"),
            Err(Error::MissingSharedFilter)
        );
        assert_eq!(
            TopicFilter::new("$share/group/"),
            Err(Error::MissingSharedFilter)
        );
        let shared = TopicFilter::new("$share/group/#").unwrap();
        assert_eq!((shared.share_name(), shared.filter()), (Some("group"), "#"));
        let nested = TopicFilter::new("$share/g/$share/h/x").unwrap();
        assert_eq!(
            (nested.share_name(), nested.filter()),
            (Some("g"), "$share/h/x")
        );
        assert!(TopicFilter::new("$share/g/a/+b").is_err());
    }

    #[test]
    fn wildcard_flags_and_levels() {
        let filter = TopicFilter::new("$share/g/a//+").unwrap();
        assert!(filter.has_wildcards());
        assert_eq!(filter.levels().collect::<Vec<_>>(), ["a", "", "+"]);
        assert!(!TopicFilter::new("$share/g/a").unwrap().has_wildcards());
        assert!(!TopicFilter::new("a/b").unwrap().has_wildcards());
    }
}
