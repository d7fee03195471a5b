//! An async MQTT 3.1.1 and 5.0 client for tokio, over TCP (`mqtt://`), TLS (`mqtts://`) and
//! WebSockets (`ws://`, `wss://`). It is a thin driver over the [`rallymq_session`] engine,
//! with no protocol logic of its own.
//!
//! - A cloneable [`Client`] handle, usable from any number of tasks: [`Client::publish`]
//!   resolves when the QoS flow completes; [`Client::try_publish`] never waits.
//! - Received messages arrive on [`Messages`], a bounded [`futures::Stream`] of [`Message`]s
//!   (topic, payload, QoS, retain, MQTT 5 properties).
//! - Automatic reconnect with exponential backoff and jitter; in-flight QoS 1/2 messages are
//!   resent, and subscriptions restored when the broker kept no session.
//!   [`Client::connection_events`] tells when the connection goes and comes back.
//! - A clean end: [`Client::disconnect`], or dropping the last handle, sends DISCONNECT, so
//!   the broker does not publish the will.
//! - A packet trace on request: [`ClientOptions::packet_observer`] sees each packet sent and
//!   received (what `mosquitto_sub -d` prints).
//! - A pluggable [`SessionStore`] (in memory by default) so that a restarted process resumes.
//! - The protocol types a user needs ([`QoS`], [`Message`], [`TopicName`], [`ReasonCode`]...)
//!   are re-exported: this crate is the only dependency an application needs.
//!
//! ```no_run
//! use rallymq_client::{Client, ClientOptions, ConnectionEvent, QoS};
//!
//! # async fn run() -> Result<(), rallymq_client::Error> {
//! let options = ClientOptions::new("mqtt://127.0.0.1:1883")
//!     .client_id("scoreboard")
//!     .last_will("scoreboard/status", "offline", QoS::AtLeastOnce, true);
//! let (client, mut messages, _connack) = Client::connect(options).await?;
//! let mut events = client.connection_events();
//! tokio::spawn(async move {
//!     while let Some(event) = events.recv().await {
//!         if let ConnectionEvent::Disconnected(why) = event {
//!             eprintln!("connection lost ({why}); reconnecting");
//!         }
//!     }
//! });
//! client.subscribe("tennis/+/score", QoS::AtLeastOnce).await?;
//! client.publish("tennis/court-1/score", "15-0", QoS::AtLeastOnce, true).await?; // PUBACK received
//! if let Some(message) = messages.recv().await {
//!     println!("{}: {:?}", message.topic, message.payload);
//! }
//! client.disconnect().await?; // DISCONNECT sent: no will
//! # Ok(())
//! # }
//! ```

mod client;
mod driver;
mod error;
mod event;
mod options;
mod store;
mod transport;
mod url;

pub use client::{Ack, AckFuture, Client, Messages};
pub use error::{Error, IoError};
pub use event::{ConnectionEvent, ConnectionEvents};
pub use options::{Backoff, ClientOptions, TlsOptions};
pub use store::{MemorySessionStore, SessionStore};
pub use url::{BrokerUrl, Scheme};

// The protocol types a client's user touches, so that depending on this crate is enough.
pub use rallymq_codec::{
    ConnAck, Message, Packet, ProtocolVersion, PublishProperties, QoS, ReasonCode, RetainHandling,
    SubscribeProperties, Subscription, SubscriptionOptions, TopicFilter, TopicName, UserProperty,
    Will,
};
pub use rallymq_session::{CloseReason, PacketDirection, SessionState};

/// Locks a mutex of this crate. A panic while holding one would be a bug, and the data stays
/// usable either way, so a poisoned lock is taken as it is.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The README's code, compiled and run as doctests, so that the README cannot drift from the
/// API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
