//! The rallymq MQTT broker as a library: MQTT 3.1, 3.1.1 and 5.0 over TCP and WebSockets, for
//! any tokio program. Every protocol rule comes from the rallymq protocol crates (codec,
//! topic, websocket, session); this crate drives them over sockets and routes messages.
//!
//! ```no_run
//! use rallymq_broker::{Broker, BrokerConfig, ListenerKind, QoS};
//!
//! # async fn run() -> Result<(), rallymq_broker::Error> {
//! // TCP and WebSockets on free ports of 127.0.0.1; `BrokerConfig::standard_ports()` is 1883/8080.
//! let broker = Broker::start(BrokerConfig::default()).await?;
//! println!("MQTT on {:?}", broker.local_addr(ListenerKind::Tcp));
//!
//! let mut scores = broker.subscribe("tennis/+/score", QoS::AtLeastOnce)?;
//! broker.publish("tennis/court-1/score", "15-0", QoS::AtLeastOnce, true)?;
//! let message = scores.recv().await.expect("delivered in-process");
//! println!("{}: {:?}", message.topic, message.payload);
//! // The broker runs while `broker` lives; dropping the handle stops it too.
//! broker.shutdown(std::time::Duration::from_secs(1)).await;
//! # Ok(())
//! # }
//! ```
//!
//! Memory stays bounded: connections that send no CONNECT in time are dropped, the number of
//! connections is capped, and each session has one bounded queue (see [`Limits`]).

pub mod acl;
mod admin;
mod admission;
mod auth;
mod bridge;
mod broker;
mod cluster;
mod config;
mod connection;
mod error;
mod listener;
mod metrics;
mod policy;
mod router;
mod session;
mod stats;
mod store;
mod sys;
mod tls;

pub use auth::{AuthConfig, HashScheme, JwtConfig, PasswordFile, Refusal};
pub use bridge::{BridgeConfig, BridgeTopic, BridgeTransport, Direction, TopicLineError};
pub use broker::{BoundListener, Broker, BrokerHandle, ListenerKind, LocalSubscription};
pub use cluster::{ClusterConfig, StreamSettings, StreamStorage};
pub use config::{AdminApi, AdminOpenTo, BrokerConfig, Limits, Listener, QueueFullPolicy, Storage};
pub use error::Error;
pub use policy::Security;
pub use store::{
    COMMIT_SECONDS_BUCKETS, Change, DiskStore, Loaded, LoadedEntry, LoadedSession, MemoryStore,
    MessageId, QueueEntry, SessionRecord, Store, StoreError, StoreStats, StoredMessage, StoredWill,
    Ticket,
};
pub use tls::{CertificateName, ClientCertificates, TlsSettings};

// The protocol types an embedder touches, so that depending on this crate is enough.
pub use rallymq_codec::{
    Message, ProtocolVersion, Publish, PublishProperties, QoS, ReasonCode, TopicFilter, TopicName,
    UserProperty,
};

/// Locks one of the broker's mutexes. A panic while holding one would be a bug, and the data
/// stays usable either way, so a poisoned lock is taken as it is.
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
