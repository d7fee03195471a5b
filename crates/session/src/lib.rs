//! The MQTT session protocol (3.1, 3.1.1 and 5.0) as deterministic state machines, for the
//! client side ([`ClientConnection`]) and the server side ([`ServerConnection`]). They do no IO
//! and read no clock: bytes and time go in, events and bytes come out. A tokio broker, an
//! embedded device, a wasm page or a simulation can drive the same engine.
//!
//! ```
//! use rallymq_codec::{Connect, MqttString, ProtocolVersion, Publish, QoS, TopicName};
//! use rallymq_session::{
//!     Accept, ClientConfig, ClientConnection, ClientEvent, ServerConfig, ServerConnection, ServerEvent, Timestamp,
//! };
//!
//! let now = Timestamp::ZERO;
//! let connect = Connect::new(ProtocolVersion::V5, MqttString::from_static("sensor-1").unwrap());
//! let mut client = ClientConnection::new(ClientConfig::new(connect), None, now);
//! let mut server = ServerConnection::new(ServerConfig::default(), now);
//!
//! client.connect(now).unwrap();
//! server.handle_bytes(now, &client.poll_transmit(now).unwrap());
//! let Some(ServerEvent::ConnectReceived { .. }) = server.poll_event() else { panic!("no CONNECT") };
//! server.accept(now, Accept::default()).unwrap();
//! client.handle_bytes(now, &server.poll_transmit(now).unwrap());
//! assert!(matches!(client.poll_event(), Some(ClientEvent::Connected { session_present: false, .. })));
//!
//! let mut publish = Publish::new(TopicName::from_static("site/1/temp").unwrap(), &b"21.5"[..]);
//! publish.qos = QoS::AtLeastOnce;
//! let token = client.publish(now, publish).unwrap().expect("QoS 1 has a token");
//! server.handle_bytes(now, &client.poll_transmit(now).unwrap());
//! assert!(matches!(server.poll_event(), Some(ServerEvent::Message(_))));
//! client.handle_bytes(now, &server.poll_transmit(now).unwrap()); // PUBACK
//! let Some(ClientEvent::PublishAcknowledged(outcome)) = client.poll_event() else { panic!("no PUBACK") };
//! assert_eq!(outcome.token, token);
//! ```
//!
//! # Driving a connection
//!
//! Both connections have the same three groups of methods, after quinn-proto's `Connection`:
//!
//! - **inputs**: `handle_bytes(now, bytes)` for what the transport received,
//!   `handle_timeout(now)` when the time from `poll_timeout` has come,
//!   `handle_transport_closed` when the transport ends, and the commands (client: `connect`,
//!   `publish`, `subscribe`, `unsubscribe`, `acknowledge`, `send_auth`, `disconnect`; server:
//!   `accept`, `refuse`, `deliver`, `answer_subscribe`, `answer_unsubscribe`, `acknowledge`,
//!   `send_auth`, `disconnect`);
//! - **outputs**: `poll_transmit(now)` gives bytes to write, `poll_event()` what happened,
//!   `poll_timeout()` when to call `handle_timeout` next; a client whose config sets
//!   `record_packets` also gives a copy of each packet it encoded or decoded through
//!   `poll_recorded_packet()`, for packet traces;
//! - **state**: `session_state()` takes out what must survive the connection.
//!
//! After **every** input, drain the outputs: call `poll_transmit` until it returns `None`
//! and write the bytes, call `poll_event` until it returns `None` and act on the events, then
//! re-arm the timer from `poll_timeout`. Nothing happens between inputs, so a driver that
//! follows this rule never misses a packet to send or a deadline.
//!
//! The `Closed` event ends the connection, but not its output: the packet that closed it (the
//! DISCONNECT that `disconnect` sends, or one with the reason for a protocol error, or a
//! refusing CONNACK) comes with the event, not before it. A driver that stops at `Closed` must
//! still drain `poll_transmit` and write what it gives before closing the transport.
//!
//! # Sessions
//!
//! A [`SessionState`] holds the in-flight outgoing messages and their stage, the queued ones,
//! the inbound QoS 2 identifiers awaiting PUBREL, the next packet identifier and the session
//! expiry. It is a plain value: keep it in memory or persist it, and hand it to the next
//! connection (`ClientConnection::new(.., Some(state), ..)` or [`Accept::resumed`]). On a
//! resumed session the in-flight messages are resent in their original order (PUBLISH with
//! DUP, or PUBREL); there is no timer-based resend on a live connection.
//!
//! # Errors
//!
//! What the peer does wrong closes the connection with the spec's reason code (sent in a
//! DISCONNECT to MQTT 5 peers) and a [`CloseReason`] event; it never panics and never returns
//! an `Err`. [`Error`] is for commands the caller gives that cannot be carried out, such as
//! [`Error::Full`] when the in-flight window and the bounded queue are both full.

mod alias;
mod client;
mod core;
mod error;
mod event;
mod inbound;
mod lazy;
mod outbound;
mod server;
mod state;
mod time;

pub use client::{ClientConfig, ClientConnection};
pub use error::Error;
pub use event::{
    AckHandle, ClientEvent, CloseReason, InboundMessage, PacketDirection, PublishOutcome,
    RequestToken, ServerEvent,
};
pub use server::{Accept, ServerConfig, ServerConnection};
pub use state::{OutgoingMessage, OutgoingStage, PublishToken, QueuedMessage, SessionState};
pub use time::Timestamp;

/// The README's code, compiled and run as doctests, so that the README cannot drift from the
/// API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
