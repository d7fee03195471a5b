//! The store's model in memory: what a broker writes survives its restart within the same
//! process (tests, embedders that keep sessions across a broker's restarts), not the process.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use futures::future::BoxFuture;
use rallymq_codec::PacketId;

use super::{
    Change, Loaded, LoadedEntry, LoadedSession, MessageId, QueueEntry, SessionRecord, Store,
    StoreError, StoredMessage, Ticket, message_expired, session_expired,
};
use crate::lock;

/// A [`Store`] in memory: every write is applied at once, and is as durable as the process.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    sessions: HashMap<Arc<str>, SessionRecord>,
    /// Messages with the number of entries referring to them.
    messages: HashMap<MessageId, (u32, Arc<StoredMessage>)>,
    queues: BTreeMap<(Arc<str>, u64), QueueEntry>,
    inbound: BTreeSet<(Arc<str>, PacketId)>,
    retained: BTreeMap<String, Arc<StoredMessage>>,
    cursors: HashMap<String, u64>,
    next_ticket: u64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl State {
    fn apply(&mut self, change: Change) {
        match change {
            Change::PutSession(record) => {
                self.sessions
                    .insert(record.client_id.as_str().into(), *record);
            }
            Change::DeleteSession(client_id) => {
                self.sessions.remove(&client_id);
                let seqs: Vec<u64> = self
                    .queues
                    .range((client_id.clone(), 0)..=(client_id.clone(), u64::MAX))
                    .map(|((_, seq), _)| *seq)
                    .collect();
                for seq in seqs {
                    self.delete_entry(&client_id, seq);
                }
                self.inbound.retain(|(id, _)| *id != client_id);
            }
            Change::PutMessage(id, message) => {
                self.messages.insert(id, (0, message));
            }
            Change::AddEntry {
                client_id,
                seq,
                entry,
            } => {
                if let Some((references, _)) = self.messages.get_mut(&entry.message) {
                    *references += 1;
                }
                self.queues.insert((client_id, seq), entry);
            }
            Change::UpdateEntry {
                client_id,
                seq,
                entry,
            } => {
                if let Some(stored) = self.queues.get_mut(&(client_id, seq)) {
                    *stored = entry;
                }
            }
            Change::DeleteEntry { client_id, seq } => self.delete_entry(&client_id, seq),
            Change::PutInbound {
                client_id,
                packet_id,
            } => {
                self.inbound.insert((client_id, packet_id));
            }
            Change::DeleteInbound {
                client_id,
                packet_id,
            } => {
                self.inbound.remove(&(client_id, packet_id));
            }
            Change::PutRetained(message) => {
                if let Some(topic) = &message.publish.topic {
                    self.retained.insert(topic.as_str().to_owned(), message);
                }
            }
            Change::DeleteRetained(topic) => {
                self.retained.remove(topic.as_str());
            }
            Change::PutCursor { name, position } => {
                self.cursors.insert(name.to_string(), position);
            }
        }
    }

    fn delete_entry(&mut self, client_id: &Arc<str>, seq: u64) {
        let Some(entry) = self.queues.remove(&(client_id.clone(), seq)) else {
            return;
        };
        if let Some((references, _)) = self.messages.get_mut(&entry.message) {
            *references = references.saturating_sub(1);
            if *references == 0 {
                self.messages.remove(&entry.message);
            }
        }
    }
}

impl Store for MemoryStore {
    fn load(&self) -> Result<Loaded, StoreError> {
        let mut state = lock(&self.state);
        let now = SystemTime::now();
        let expired: Vec<Arc<str>> = state
            .sessions
            .iter()
            .filter(|(_, record)| session_expired(record, now))
            .map(|(id, _)| id.clone())
            .collect();
        for client_id in expired {
            state.apply(Change::DeleteSession(client_id));
        }
        state
            .retained
            .retain(|_, message| !message_expired(message, now));
        let mut sessions: Vec<LoadedSession> = state
            .sessions
            .iter()
            .map(|(client_id, record)| {
                let entries = state
                    .queues
                    .range((client_id.clone(), 0)..=(client_id.clone(), u64::MAX));
                let (mut queue_len, mut queue_bytes, mut next_seq) = (0, 0, 0);
                for ((_, seq), entry) in entries {
                    queue_len += 1;
                    queue_bytes += u64::from(entry.size);
                    next_seq = seq + 1;
                }
                LoadedSession {
                    record: record.clone(),
                    inbound: state
                        .inbound
                        .iter()
                        .filter(|(id, _)| id == client_id)
                        .map(|(_, packet_id)| *packet_id)
                        .collect(),
                    queue_len,
                    queue_bytes,
                    next_seq,
                }
            })
            .collect();
        sessions.sort_by(|a, b| a.record.client_id.cmp(&b.record.client_id));
        Ok(Loaded {
            sessions,
            retained: state
                .retained
                .values()
                .map(|message| (**message).clone())
                .collect(),
            next_message_id: state.messages.keys().max().map_or(0, |id| id + 1),
            cursors: state.cursors.clone(),
        })
    }

    fn read_queue(
        &self,
        client_id: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<LoadedEntry>, StoreError> {
        let state = lock(&self.state);
        let client_id: Arc<str> = client_id.into();
        Ok(state
            .queues
            .range((client_id.clone(), from_seq)..=(client_id, u64::MAX))
            .take(limit)
            .filter_map(|((_, seq), entry)| {
                let (_, message) = state.messages.get(&entry.message)?;
                Some(LoadedEntry {
                    seq: *seq,
                    entry: entry.clone(),
                    message: message.clone(),
                })
            })
            .collect())
    }

    fn write(&self, changes: Vec<Change>) -> Ticket {
        let mut state = lock(&self.state);
        for change in changes {
            state.apply(change);
        }
        state.next_ticket += 1;
        Ticket(state.next_ticket)
    }

    fn durable(&self, _ticket: Ticket) -> BoxFuture<'static, Result<(), StoreError>> {
        // Applied when written: as durable as memory gets.
        Box::pin(std::future::ready(Ok(())))
    }
}
