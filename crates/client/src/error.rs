//! The one error type of this crate.

use rallymq_codec::ReasonCode;

/// What can go wrong for a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL is not one this client can use.
    #[error("invalid broker URL: {0}")]
    InvalidUrl(String),
    /// The transport could not be opened (DNS, TCP, TLS or the WebSocket handshake).
    #[error("cannot reach the broker: {0}")]
    Transport(String),
    /// The broker refused the connection (CONNACK with a failure reason code).
    #[error("the broker refused the connection: {0:?}")]
    Refused(ReasonCode),
    /// No CONNACK in time.
    #[error("the broker did not answer CONNECT in time")]
    Timeout,
    /// The in-flight window, the queue and the command buffer are full: try again later.
    #[error("the client is full: too many messages waiting")]
    Full,
    /// The connection was lost before the operation completed and the client does not
    /// reconnect (or is shutting down).
    #[error("the connection was lost")]
    ConnectionLost,
    /// The client has been disconnected or dropped.
    #[error("the client is closed")]
    Closed,
    /// The broker does not allow this (QoS above its maximum, a packet too large...).
    #[error("not allowed by the broker: {0}")]
    NotAllowed(String),
    /// A topic, filter or string is not valid MQTT.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl From<rallymq_session::Error> for Error {
    fn from(error: rallymq_session::Error) -> Self {
        match error {
            rallymq_session::Error::Full => Self::Full,
            rallymq_session::Error::Closed => Self::Closed,
            rallymq_session::Error::NotConnected => Self::ConnectionLost,
            other => Self::NotAllowed(other.to_string()),
        }
    }
}
