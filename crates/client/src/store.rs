//! Where a client keeps its session state between connections and across restarts.

use std::collections::HashMap;
use std::sync::Mutex;

use rallymq_session::SessionState;

/// A place to keep session state (in-flight QoS 1/2 messages, inbound QoS 2 ids, the next
/// packet id) per client id. The client loads it before its first connection and saves it
/// whenever a connection ends and when it shuts down; a store on disk lets a restarted process
/// resume where the last one stopped.
pub trait SessionStore: Send + Sync + std::fmt::Debug + 'static {
    /// The state saved for `client_id`, if any.
    fn load(&self, client_id: &str) -> Option<SessionState>;
    /// Saves the state of `client_id`, replacing what was there.
    fn save(&self, client_id: &str, state: &SessionState);
}

/// A [`SessionStore`] in memory: it outlives connections and clients sharing it, not the process.
#[derive(Debug, Default)]
pub struct MemorySessionStore {
    states: Mutex<HashMap<String, SessionState>>,
}

impl MemorySessionStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl SessionStore for MemorySessionStore {
    fn load(&self, client_id: &str) -> Option<SessionState> {
        self.states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(client_id)
            .cloned()
    }

    fn save(&self, client_id: &str, state: &SessionState) {
        self.states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(client_id.to_owned(), state.clone());
    }
}
