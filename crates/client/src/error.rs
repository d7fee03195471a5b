//! The one error type of this crate.

use std::fmt;
use std::io;
use std::sync::Arc;

use rallymq_codec::ReasonCode;
use rallymq_session::CloseReason;

/// What can go wrong for a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL is not one this client can use.
    #[error("invalid broker URL: {0}")]
    InvalidUrl(String),
    /// The transport could not be opened or failed: DNS, TCP, TLS, the WebSocket handshake, or
    /// a read or write. The `io::Error` is the source: its [`kind`](io::Error::kind) tells a
    /// refused connection (`ConnectionRefused`) from a name that does not resolve, a timeout or
    /// a reset.
    #[error("transport: {0}")]
    Transport(#[source] IoError),
    /// The broker refused the connection (CONNACK with a failure reason code).
    #[error("the broker refused the connection: {0:?}")]
    Refused(ReasonCode),
    /// No CONNACK, or no PINGRESP, in time.
    #[error("the broker did not answer in time")]
    Timeout,
    /// The connection ended for a protocol reason: the broker sent DISCONNECT (MQTT 5: with
    /// its reason code, such as 0x8E Session taken over), or one side broke the protocol.
    #[error("the connection ended: {0:?}")]
    Disconnected(CloseReason),
    /// The in-flight window, the queue and the command buffer are full: try again later.
    #[error("the client is full: too many messages waiting")]
    Full,
    /// The connection was lost before the operation completed and the client does not
    /// reconnect: the operation, and every later one, fails with this.
    #[error("the connection was lost")]
    ConnectionLost,
    /// The client has been disconnected ([`Client::disconnect`](crate::Client::disconnect))
    /// or every handle dropped.
    #[error("the client is closed")]
    Closed,
    /// The broker does not allow this (QoS above its maximum, a packet too large...).
    #[error("not allowed by the broker: {0}")]
    NotAllowed(String),
    /// A topic, filter, client id or other option is not valid MQTT.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl Error {
    /// The `io::Error` underneath a transport failure.
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            Self::Transport(error) => Some(error.get_ref()),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(error: io::Error) -> Self {
        Self::Transport(IoError(Arc::new(error)))
    }
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

/// An `io::Error` that can be cloned (it is shared) and compared (by kind and message), so that
/// [`Error`] stays `Clone + PartialEq`.
#[derive(Debug, Clone)]
pub struct IoError(Arc<io::Error>);

impl IoError {
    /// The error.
    pub fn get_ref(&self) -> &io::Error {
        &self.0
    }

    /// Its kind.
    pub fn kind(&self) -> io::ErrorKind {
        self.0.kind()
    }
}

impl PartialEq for IoError {
    fn eq(&self, other: &Self) -> bool {
        self.kind() == other.kind() && self.0.to_string() == other.0.to_string()
    }
}

impl Eq for IoError {}

impl fmt::Display for IoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Transparent: its message is the `io::Error`'s, and so is its source.
impl std::error::Error for IoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}
