//! The one error type of this crate: what the *caller* asked that cannot be done. What the
//! *peer* does wrong never comes back as an `Err`; it closes the connection with a
//! [`CloseReason`](crate::CloseReason).

use rallymq_codec::ReasonCode;

/// A command that cannot be carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The in-flight window and the bounded queue are both full: wait for acknowledgements
    /// (an event) and try again, or drop the message.
    #[error("the in-flight window and the queue are full")]
    Full,
    /// The connection is closed; no command but taking the session state applies.
    #[error("the connection is closed")]
    Closed,
    /// The command needs an established connection (CONNACK received or sent).
    #[error("not connected")]
    NotConnected,
    /// The command does not fit the connection's state (for example accepting twice).
    #[error("{0}")]
    InvalidState(&'static str),
    /// The packet would exceed the peer's Maximum Packet Size.
    #[error("packet of {size} bytes exceeds the peer's maximum packet size of {max}")]
    PacketTooLarge {
        /// Encoded size.
        size: usize,
        /// The peer's limit.
        max: u32,
    },
    /// The peer does not allow this (for example QoS above its Maximum QoS, or retain when
    /// it has no retain support).
    #[error("not allowed by the peer: {0:?}")]
    NotAllowed(ReasonCode),
    /// The packet cannot be encoded (see the codec's caller errors).
    #[error(transparent)]
    Codec(#[from] rallymq_codec::Error),
}
