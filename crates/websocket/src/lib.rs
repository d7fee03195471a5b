//! RFC 6455 WebSockets without IO: the opening handshake for both roles, a strict frame codec
//! with fast unmasking, and a connection state machine that turns bytes into events.
//!
//! rallymq uses it to carry MQTT to browsers, but nothing here is MQTT-specific. The core never
//! reads a socket, a clock or a random number generator of its own: bytes go in, events and
//! bytes come out, and randomness (for a client's keys) is an input. It builds for
//! `wasm32-unknown-unknown` with `--no-default-features`. The optional `tokio` feature adds a
//! driver over any `AsyncRead + AsyncWrite`.
//!
//! # A server, by hand
//!
//! ```
//! use rallymq_websocket::{Config, Connection, Event, UpgradeRequest};
//!
//! // The opening handshake (RFC 6455 §1.3), validated, with a subprotocol picked.
//! let request = b"GET /mqtt HTTP/1.1\r\nHost: broker.example\r\nUpgrade: websocket\r\n\
//!     Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
//!     Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n";
//! let (upgrade, head_len) = UpgradeRequest::parse(request)?.expect("a complete head");
//! assert_eq!((upgrade.path(), head_len), ("/mqtt", request.len()));
//! let accept = upgrade.accept(upgrade.pick_subprotocol(&["mqtt"]))?;
//! let _response_head = accept.to_bytes(); // write this to the socket
//!
//! // Then frames: a masked text frame from RFC 6455 §5.7, and the reply.
//! let mut ws = Connection::server(Config::default());
//! ws.handle_bytes(&[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]);
//! assert_eq!(ws.poll_event()?, Some(Event::Text("Hello".into())));
//! assert_eq!(ws.poll_event()?, None); // needs more bytes
//! ws.send_text("Hello")?;
//! assert_eq!(&ws.poll_transmit().unwrap()[..], b"\x81\x05Hello");
//! # Ok::<(), rallymq_websocket::Error>(())
//! ```
//!
//! # The API in groups
//!
//! - **Handshake, server:** [`UpgradeRequest`] (parsed with `httparse` or taken from `http`
//!   types), answered by [`Accept`] or a [`Rejection`] (400, 403, 404, 426 ready-made).
//! - **Handshake, client:** [`ClientRequest`] builds the request and validates the
//!   [`UpgradeResponse`].
//! - **Connection** ([`Connection`]): inputs `handle_bytes` / [`Connection::receive_buffer`] and
//!   the `send_*` commands; outputs [`Connection::poll_event`] ([`Event`]) and
//!   [`Connection::poll_transmit`]. **After every input, drain the outputs**: events until
//!   `Ok(None)`, then the transmit buffer. Pings and Close frames are answered by the connection.
//! - **Frames** ([`FrameHeader`], [`Frame`], [`FrameDecoder`], [`encode_frame`]) and masking
//!   ([`apply_mask`]) for those who work below messages.
//! - **tokio** (feature `tokio`): `tokio::WebSocketStream`, `tokio::ByteStream`,
//!   `tokio::accept`, `tokio::connect`.
//!
//! # MQTT and other byte streams
//!
//! MQTT over WebSockets treats binary messages as one byte stream: a packet may span messages
//! and a message may hold several packets. With [`Config::with_stream_binary`], binary payloads
//! arrive as [`Event::BinaryChunk`]s as soon as any bytes of them are in, each unmasked in place
//! and shared with the receive buffer; append them to the MQTT decoder's `BytesMut`:
//!
//! ```
//! use bytes::BytesMut;
//! use rallymq_websocket::{Config, Connection, Event, RandomSource};
//!
//! let mut client = Connection::client_with_random(Config::default(), RandomSource::from_fn(|b| Ok(b.fill(1))));
//! let mut server = Connection::server(Config::default().with_stream_binary(true));
//! client.send_binary(&[0x10, 0x02])?;       // a packet split across two messages...
//! client.send_binary(&[0x00, 0x04, 0xc0, 0x00])?; // ...followed by a whole one
//! server.handle_bytes(&client.poll_transmit().unwrap());
//!
//! let mut mqtt_input = BytesMut::new();
//! while let Some(event) = server.poll_event()? {
//!     match event {
//!         Event::BinaryChunk { data, .. } => mqtt_input.extend_from_slice(&data),
//!         _ => { /* text is a protocol error for MQTT; pings are answered already */ }
//!     }
//! }
//! assert_eq!(&mqtt_input[..], &[0x10, 0x02, 0x00, 0x04, 0xc0, 0x00]);
//! # Ok::<(), rallymq_websocket::Error>(())
//! ```
//!
//! With tokio, `tokio::ByteStream` does this behind `AsyncRead + AsyncWrite`.
//!
//! # Errors
//!
//! One [`Error`] type; [`Error::fault`] says whether the peer broke the protocol in a frame
//! ([`Error::close_code`]), sent an unacceptable handshake ([`Error::http_status`]), or the caller
//! misused the API. Nothing here panics on input from the network.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod close;
mod connection;
mod error;
mod frame;
mod handshake;
mod mask;
mod random;
mod utf8;

#[cfg(feature = "tokio")]
pub mod tokio;

pub use close::{CloseCode, CloseFrame};
pub use connection::{Config, Connection, Event, Role, State};
pub use error::{Error, Fault};
pub use frame::{
    Frame, FrameDecoder, FrameHeader, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN, OpCode, encode_frame,
};
pub use handshake::{
    Accept, ClientRequest, DEFAULT_MAX_HEAD_LEN, MAX_HEADERS, Rejection, UpgradeRequest,
    UpgradeResponse, WEBSOCKET_GUID, accept_key,
};
pub use mask::{apply_mask, apply_mask_at};
pub use random::RandomSource;

// Re-exported because they appear in public signatures.
pub use bytes;
pub use bytestring;
pub use http;

/// The README's code, compiled and run as doctests, so that the README cannot drift from the
/// API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
