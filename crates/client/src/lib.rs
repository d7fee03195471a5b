//! An async MQTT 3.1.1 and 5.0 client for tokio, over TCP (`mqtt://`), TLS (`mqtts://`) and
//! WebSockets (`ws://`, `wss://`). It is a thin driver over the [`rallymq_session`] engine, with no protocol logic of
//! its own.
//!
//! - A cloneable [`Client`] handle, usable from any number of tasks: [`Client::publish`]
//!   resolves when the QoS flow completes; [`Client::try_publish`] never waits.
//! - Received messages arrive on [`Messages`], a bounded [`futures::Stream`].
//! - Automatic reconnect with exponential backoff and jitter; in-flight QoS 1/2 messages are
//!   resent, and subscriptions restored when the broker kept no session.
//! - A pluggable [`SessionStore`] (in memory by default) so that a restarted process resumes.
//!
//! ```no_run
//! use rallymq_client::{Client, ClientOptions};
//! use rallymq_codec::QoS;
//!
//! # async fn run() -> Result<(), rallymq_client::Error> {
//! let options = ClientOptions::new("mqtt://127.0.0.1:1883")?.client_id("scoreboard")?;
//! let (client, mut messages, _connack) = Client::connect(options).await?;
//! client.subscribe("tennis/+/score", QoS::AtLeastOnce).await?;
//! client.publish("tennis/court-1/score", "15-0", QoS::AtLeastOnce, true).await?; // PUBACK received
//! if let Some(message) = messages.recv().await {
//!     println!("{:?}: {:?}", message.topic, message.payload);
//! }
//! client.disconnect().await?;
//! # Ok(())
//! # }
//! ```

mod client;
mod driver;
mod error;
mod options;
mod store;
mod transport;
mod url;

pub use client::{Ack, Client, Messages};
pub use error::Error;
pub use options::{Backoff, ClientOptions, TlsOptions};
pub use store::{MemorySessionStore, SessionStore};
pub use url::{BrokerUrl, Scheme};
