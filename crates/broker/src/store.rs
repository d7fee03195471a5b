//! The one narrow interface between the broker and durable storage: persistent sessions and
//! retained messages. [`MemoryStore`] keeps them in memory, which survives a broker restart
//! within the same process (handy for tests and embedding); a transactional on-disk store plugs
//! in behind the same trait.

use std::collections::HashMap;
use std::sync::Mutex;

use futures::future::BoxFuture;
use rallymq_codec::{Publish, SubscriptionId, SubscriptionOptions, TopicFilter};
use rallymq_session::SessionState;

use crate::lock;

/// A session as stored: everything needed to resume it after a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    /// The client identifier.
    pub client_id: String,
    /// Its subscriptions: filter, options as granted, subscription identifier.
    pub subscriptions: Vec<(TopicFilter, SubscriptionOptions, Option<SubscriptionId>)>,
    /// The engine state: in-flight messages and their stage, inbound QoS 2 ids, next id.
    pub state: SessionState,
    /// Messages routed to the session and not yet handed to a connection.
    pub pending: Vec<Publish>,
}

/// What a store holds, loaded at startup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreSnapshot {
    /// Persistent sessions.
    pub sessions: Vec<StoredSession>,
    /// Retained messages.
    pub retained: Vec<Publish>,
}

/// Durable storage for the broker. Writes may be buffered; [`Store::durable`] is the barrier
/// the broker awaits before acknowledging a QoS 1 or 2 message, so an implementation that
/// writes asynchronously makes every acknowledgement mean "safe on disk".
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Everything stored, for a broker starting up.
    fn load(&self) -> StoreSnapshot;
    /// Stores or replaces a persistent session (written when its connection closes and at
    /// shutdown).
    fn save_session(&self, session: StoredSession);
    /// Removes a session (ended, expired or replaced by a clean start).
    fn remove_session(&self, client_id: &str);
    /// Stores or replaces the retained message of its topic.
    fn save_retained(&self, message: &Publish);
    /// Removes the retained message of a topic.
    fn remove_retained(&self, topic: &str);
    /// Resolves once every write made so far is durable.
    fn durable(&self) -> BoxFuture<'static, ()>;
}

/// A [`Store`] in memory: sessions and retained messages survive a broker restart in the same
/// process, not the process's end.
#[derive(Debug, Default)]
pub struct MemoryStore {
    sessions: Mutex<HashMap<String, StoredSession>>,
    retained: Mutex<HashMap<String, Publish>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Store for MemoryStore {
    fn load(&self) -> StoreSnapshot {
        let mut sessions: Vec<StoredSession> = lock(&self.sessions).values().cloned().collect();
        sessions.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        let mut retained: Vec<Publish> = lock(&self.retained).values().cloned().collect();
        retained.sort_by(|a, b| a.topic.cmp(&b.topic));
        StoreSnapshot { sessions, retained }
    }

    fn save_session(&self, session: StoredSession) {
        lock(&self.sessions).insert(session.client_id.clone(), session);
    }

    fn remove_session(&self, client_id: &str) {
        lock(&self.sessions).remove(client_id);
    }

    fn save_retained(&self, message: &Publish) {
        if let Some(topic) = &message.topic {
            lock(&self.retained).insert(topic.as_str().to_owned(), message.clone());
        }
    }

    fn remove_retained(&self, topic: &str) {
        lock(&self.retained).remove(topic);
    }

    fn durable(&self) -> BoxFuture<'static, ()> {
        // Memory is as durable as it gets here.
        Box::pin(std::future::ready(()))
    }
}
