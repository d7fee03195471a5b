//! The crate's one error type.

use crate::close::CloseCode;

/// Everything that can go wrong in this crate.
///
/// The variants fall in three groups, told apart by [`Error::fault`]:
///
/// - **the peer broke the protocol** in a frame: the connection sends a Close frame with
///   [`Error::close_code`] and stops; the driver closes the transport;
/// - **the peer sent an unacceptable opening handshake**: [`Error::http_status`] says which
///   HTTP status a server answers with (see [`crate::Rejection::for_error`]);
/// - **the caller misused the API** (sending after close, an oversize control payload, a close
///   code that may not be sent): nothing is sent and the connection is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- the peer, in frames (each maps to a close code) ----
    /// A frame had RSV1, RSV2 or RSV3 set, but no extension was negotiated.
    #[error("reserved bits set in a frame header without a negotiated extension")]
    ReservedBitsSet,
    /// A frame used one of the reserved opcodes 0x3-0x7 or 0xB-0xF.
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    /// A client sent an unmasked frame to a server.
    #[error("the client sent an unmasked frame")]
    UnmaskedFrame,
    /// A server sent a masked frame to a client.
    #[error("the server sent a masked frame")]
    MaskedFrame,
    /// A 64-bit payload length had its most significant bit set.
    #[error("64-bit payload length with the most significant bit set")]
    PayloadLengthTopBitSet,
    /// A payload length was not in its shortest encoding (RFC 6455 §5.2: "the minimal number of
    /// bytes MUST be used"): a 16-bit length below 126, or a 64-bit one below 65,536.
    #[error("payload length {0} not in its shortest encoding")]
    NonMinimalPayloadLength(u64),
    /// A control frame (close, ping, pong) carried more than 125 bytes.
    #[error("control frame payload of {0} bytes exceeds 125")]
    ControlFrameTooLong(u64),
    /// A control frame had FIN clear.
    #[error("fragmented control frame")]
    FragmentedControlFrame,
    /// A continuation frame arrived with no fragmented message in progress.
    #[error("continuation frame without a message to continue")]
    UnexpectedContinuation,
    /// A text or binary frame arrived while a fragmented message was still in progress.
    #[error("new data frame while a fragmented message is unfinished")]
    ExpectedContinuation,
    /// A frame's payload exceeded [`crate::Config::max_frame_len`].
    #[error("frame payload of {len} bytes exceeds the limit of {limit}")]
    FrameTooLarge {
        /// The announced payload length.
        len: u64,
        /// The configured limit.
        limit: usize,
    },
    /// A message exceeded [`crate::Config::max_message_len`].
    #[error("message of at least {len} bytes exceeds the limit of {limit}")]
    MessageTooLarge {
        /// The message length reached with this frame.
        len: u64,
        /// The configured limit.
        limit: usize,
    },
    /// A text message (or a close reason) was not valid UTF-8.
    #[error("invalid UTF-8 in a text message or close reason")]
    InvalidUtf8,
    /// A close frame carried exactly one byte of payload.
    #[error("close frame with a one-byte payload")]
    CloseFrameTooShort,
    /// A close frame carried a status code that may not appear on the wire.
    #[error("invalid close code {0}")]
    InvalidCloseCode(u16),

    // ---- the peer, in the opening handshake (each maps to an HTTP status) ----
    /// The handshake head exceeded the size limit, or had too many header lines.
    #[error("handshake head exceeds {limit} bytes or too many header lines")]
    HeadTooLarge {
        /// The configured limit in bytes.
        limit: usize,
    },
    /// The handshake head was not valid HTTP/1.1.
    #[error("malformed HTTP head: {0}")]
    MalformedHttp(&'static str),
    /// The request method was not GET.
    #[error("the request method is not GET")]
    MethodNotGet,
    /// The HTTP version was older than 1.1.
    #[error("HTTP version older than 1.1")]
    HttpVersionTooOld,
    /// The request has no Host header.
    #[error("the request has no Host header")]
    MissingHost,
    /// `Upgrade: websocket` is missing.
    #[error("missing `Upgrade: websocket`")]
    MissingUpgrade,
    /// The `Connection` header does not contain the `upgrade` token.
    #[error("the Connection header does not contain `upgrade`")]
    MissingConnectionUpgrade,
    /// `Sec-WebSocket-Key` is missing or does not decode to 16 bytes.
    #[error("missing or malformed Sec-WebSocket-Key")]
    InvalidKey,
    /// `Sec-WebSocket-Version` is missing or not 13 (answer 426).
    #[error("unsupported or missing Sec-WebSocket-Version (only 13 is supported)")]
    UnsupportedVersion,
    /// The server answered with a status other than 101.
    #[error("the server answered {0} instead of 101 Switching Protocols")]
    NotSwitchingProtocols(u16),
    /// The server's `Sec-WebSocket-Accept` does not match the key we sent.
    #[error("Sec-WebSocket-Accept does not match the key sent")]
    AcceptMismatch,
    /// The server picked a subprotocol we did not offer, or several.
    #[error("the server selected a subprotocol that was not offered")]
    UnofferedSubprotocol,
    /// The server enabled an extension we did not offer.
    #[error("the server enabled an extension that was not offered")]
    UnofferedExtension,

    // ---- the caller ----
    /// A message or frame was sent after the close handshake began.
    #[error("cannot send after the close handshake began")]
    SendAfterClose,
    /// A control payload to send exceeds 125 bytes.
    #[error("control payload of {0} bytes exceeds 125")]
    ControlPayloadTooLong(usize),
    /// The close code given to send may not be sent (e.g. 1005, 1006, 1015, below 1000).
    #[error("close code {0} may not be sent")]
    CloseCodeNotSendable(u16),
    /// Frames were sent out of order: a continuation without a started message, or a new
    /// message inside an unfinished one, or a fragmented control frame.
    #[error("frames sent out of order: {0}")]
    FrameOrder(&'static str),
    /// The server tried to accept with a subprotocol the client did not offer.
    #[error("subprotocol {0:?} was not offered by the client")]
    SubprotocolNotOffered(String),
    /// A caller-supplied header name, value, host or path is not valid in an HTTP head.
    #[error("invalid value for an HTTP head: {0}")]
    InvalidHeadValue(&'static str),
    /// The randomness source failed to produce bytes.
    #[error("the randomness source failed")]
    Randomness,
}

/// Who caused an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// The peer broke RFC 6455 in a frame; the connection is failed with a close code.
    PeerFrame,
    /// The peer's opening handshake is unacceptable; answer with an HTTP status.
    PeerHandshake,
    /// The caller misused the API; nothing was sent.
    Caller,
}

impl Error {
    /// Who caused this error.
    pub fn fault(&self) -> Fault {
        if self.close_code().is_some() {
            Fault::PeerFrame
        } else if self.http_status().is_some()
            || matches!(
                self,
                Self::NotSwitchingProtocols(_)
                    | Self::AcceptMismatch
                    | Self::UnofferedSubprotocol
                    | Self::UnofferedExtension
            )
        {
            Fault::PeerHandshake
        } else {
            Fault::Caller
        }
    }

    /// The close code a connection sends when the peer caused this error in a frame.
    pub fn close_code(&self) -> Option<CloseCode> {
        match self {
            Self::ReservedBitsSet
            | Self::ReservedOpcode(_)
            | Self::UnmaskedFrame
            | Self::MaskedFrame
            | Self::PayloadLengthTopBitSet
            | Self::NonMinimalPayloadLength(_)
            | Self::ControlFrameTooLong(_)
            | Self::FragmentedControlFrame
            | Self::UnexpectedContinuation
            | Self::ExpectedContinuation
            | Self::CloseFrameTooShort
            | Self::InvalidCloseCode(_) => Some(CloseCode::PROTOCOL_ERROR),
            Self::FrameTooLarge { .. } | Self::MessageTooLarge { .. } => {
                Some(CloseCode::MESSAGE_TOO_BIG)
            }
            Self::InvalidUtf8 => Some(CloseCode::INVALID_PAYLOAD),
            _ => None,
        }
    }

    /// The HTTP status a server answers a request with when the request caused this error.
    ///
    /// 400 for a malformed request, 405 for a method other than GET, 426 (with
    /// `Sec-WebSocket-Version: 13`) for an unsupported version, 431 for an oversize head.
    pub fn http_status(&self) -> Option<http::StatusCode> {
        use http::StatusCode;
        match self {
            Self::HeadTooLarge { .. } => Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
            Self::MethodNotGet => Some(StatusCode::METHOD_NOT_ALLOWED),
            Self::UnsupportedVersion => Some(StatusCode::UPGRADE_REQUIRED),
            Self::MalformedHttp(_)
            | Self::HttpVersionTooOld
            | Self::MissingHost
            | Self::MissingUpgrade
            | Self::MissingConnectionUpgrade
            | Self::InvalidKey => Some(StatusCode::BAD_REQUEST),
            _ => None,
        }
    }
}
