//! The one error type of this crate.

/// Why a string is not a valid topic name or topic filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Topic names and filters must hold at least one character (MQTT-4.7.3-1).
    #[error("a topic name or filter must not be empty")]
    Empty,
    /// The encoded string is longer than the 65,535 bytes MQTT allows (MQTT-4.7.3-3).
    #[error("topic is {0} bytes long; the maximum is 65535")]
    TooLong(usize),
    /// The bytes are not well-formed UTF-8 (MQTT-1.5.3-1).
    #[error("topic is not well-formed UTF-8")]
    InvalidUtf8,
    /// The string contains U+0000 (MQTT-1.5.3-2, MQTT-4.7.3-2).
    #[error("topic contains the null character U+0000")]
    NullCharacter,
    /// A topic name contains `+` or `#` (MQTT-3.3.2-2).
    #[error("a topic name must not contain the wildcards + or #")]
    WildcardInName,
    /// `+` does not fill a whole level (MQTT-4.7.1-2).
    #[error("the single-level wildcard + must fill a whole level")]
    InvalidSingleLevelWildcard,
    /// `#` is not alone in the last level (MQTT-4.7.1-1).
    #[error("the multi-level wildcard # must be alone in the last level")]
    InvalidMultiLevelWildcard,
    /// `$share/{ShareName}/{filter}` with an empty ShareName or one holding `+` or `#`
    /// (MQTT-4.8.2-1, MQTT-4.8.2-2).
    #[error("invalid shared subscription: the share name must be non-empty and hold no / + or #")]
    InvalidShareName,
    /// `$share/{ShareName}` with no filter after the share name.
    #[error("invalid shared subscription: no topic filter after the share name")]
    MissingSharedFilter,
}
