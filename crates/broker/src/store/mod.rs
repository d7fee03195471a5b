//! The one narrow interface between the broker and durable storage.
//!
//! The broker describes every change to what must survive a crash as a [`Change`]: a message
//! routed to persistent sessions (stored once, however many sessions it was routed to), each
//! session's queue entries and their stage, inbound QoS 2 identifiers awaiting PUBREL, session
//! records (subscriptions, expiry, will) and retained messages. It hands groups of changes to
//! [`Store::write`], which returns a [`Ticket`] at once, and awaits [`Store::durable`] for that
//! ticket before it acknowledges anything that depends on them. A store commits everything
//! that arrived meanwhile in one transaction (group commit), so that one fsync serves many
//! connections.
//!
//! At start the broker reads what is stored with [`Store::load`] (session records, queue sizes,
//! retained messages), and reads a session's queue entries in pages with
//! [`Store::read_queue`] when the session's client comes back: queues of offline sessions
//! stay on disk.
//!
//! Implementations: [`DiskStore`] (an embedded transactional database in a directory, the
//! `rallymq broker` default), [`MemoryStore`] (the same model in memory: survives a broker
//! restart within one process, for tests and embedders). A store on a distributed engine fits
//! behind the same trait.

mod disk;
mod memory;
pub(crate) mod record;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use rallymq_codec::{
    PacketId, Publish, QoS, SubscriptionId, SubscriptionOptions, TopicFilter, TopicName,
};
use rallymq_session::OutgoingStage;

pub use disk::DiskStore;
pub use memory::MemoryStore;

/// Identifies a stored message; the broker allocates them in increasing order from
/// [`Loaded::next_message_id`].
pub type MessageId = u64;

/// A message as stored: the PUBLISH (topic, payload, the publisher's QoS, retain flag, MQTT 5
/// properties; no packet identifier, DUP or topic alias) and when the broker received it, as
/// wall-clock time, so that Message Expiry counts across a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// The message.
    pub publish: Publish,
    /// When the broker received it.
    pub received_at: SystemTime,
}

/// One message in a session's queue: waiting, or in flight with its packet identifier and
/// stage. Entries are numbered per session (the queue's order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueEntry {
    /// The message.
    pub message: MessageId,
    /// The QoS it is delivered with (the subscription's, at most the publisher's).
    pub qos: QoS,
    /// The RETAIN flag it is delivered with.
    pub retain: bool,
    /// The subscription identifiers it is delivered with.
    pub subscription_ids: Vec<SubscriptionId>,
    /// Set once it is in flight: its packet identifier and stage (PUBLISH sent, or PUBREC
    /// received and PUBREL sent).
    pub in_flight: Option<(PacketId, OutgoingStage)>,
    /// Its topic and payload bytes, for the queue's size limit.
    pub size: u32,
}

/// A persistent session's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// The client identifier.
    pub client_id: String,
    /// Seconds the session lives after its connection closes (`u32::MAX`: never).
    pub expiry_interval: u32,
    /// When its last connection closed; `None` while one is open (after a crash: the session
    /// closed when the broker stopped).
    pub disconnected_at: Option<SystemTime>,
    /// Its subscriptions: filter, options as granted, subscription identifier.
    pub subscriptions: Vec<(TopicFilter, SubscriptionOptions, Option<SubscriptionId>)>,
    /// The will of its connection, kept while it may still be published.
    pub will: Option<StoredWill>,
}

/// A will as stored: the message it publishes, its delay, and when it is due once its
/// connection has closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredWill {
    /// The message (topic, payload, QoS, retain, properties).
    pub publish: Publish,
    /// The Will Delay Interval, in seconds.
    pub delay: u32,
    /// When it is due; `None` while its connection is open.
    pub due_at: Option<SystemTime>,
}

/// A change to what is stored. A group of them is applied in order and atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Stores or replaces a session's record.
    PutSession(Box<SessionRecord>),
    /// Removes a session: its record, queue and inbound identifiers.
    DeleteSession(Arc<str>),
    /// Stores a message routed to persistent sessions, before the entries that refer to it.
    /// The store removes it once no entry refers to it.
    PutMessage(MessageId, Arc<StoredMessage>),
    /// Adds an entry to a session's queue.
    AddEntry {
        /// The session.
        client_id: Arc<str>,
        /// Its place in the queue.
        seq: u64,
        /// The entry.
        entry: QueueEntry,
    },
    /// Replaces an entry that is in the queue (it went in flight, or moved on a stage).
    UpdateEntry {
        /// The session.
        client_id: Arc<str>,
        /// Its place in the queue.
        seq: u64,
        /// The entry.
        entry: QueueEntry,
    },
    /// Removes an entry (delivered and acknowledged, expired or dropped).
    DeleteEntry {
        /// The session.
        client_id: Arc<str>,
        /// Its place in the queue.
        seq: u64,
    },
    /// Records an inbound QoS 2 message's packet identifier until its PUBREL.
    PutInbound {
        /// The session.
        client_id: Arc<str>,
        /// The identifier.
        packet_id: PacketId,
    },
    /// Forgets an inbound QoS 2 identifier (PUBREL came).
    DeleteInbound {
        /// The session.
        client_id: Arc<str>,
        /// The identifier.
        packet_id: PacketId,
    },
    /// Stores or replaces the retained message of its topic.
    PutRetained(Arc<StoredMessage>),
    /// Removes the retained message of a topic.
    DeleteRetained(TopicName),
    /// Records how far the broker has read a feed it routes from (a cluster node's place in
    /// the stream of QoS 1 and 2 messages), in the same group as what routing it wrote: after
    /// a crash, what the feed gives again up to there was routed already.
    PutCursor {
        /// The feed.
        name: Arc<str>,
        /// The last position read and routed.
        position: u64,
    },
}

/// A session as loaded at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedSession {
    /// Its record.
    pub record: SessionRecord,
    /// Inbound QoS 2 identifiers awaiting PUBREL.
    pub inbound: Vec<PacketId>,
    /// Entries in its queue.
    pub queue_len: u64,
    /// Their size (see [`QueueEntry::size`]).
    pub queue_bytes: u64,
    /// The number its next entry takes (one past its last).
    pub next_seq: u64,
}

/// What a store holds, read at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Persistent sessions.
    pub sessions: Vec<LoadedSession>,
    /// Retained messages.
    pub retained: Vec<StoredMessage>,
    /// The first message identifier not in use.
    pub next_message_id: MessageId,
    /// Each feed's cursor ([`Change::PutCursor`]).
    pub cursors: HashMap<String, u64>,
}

/// A queue entry with its number and message, as [`Store::read_queue`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedEntry {
    /// Its place in the queue.
    pub seq: u64,
    /// The entry.
    pub entry: QueueEntry,
    /// The message it delivers.
    pub message: Arc<StoredMessage>,
}

/// Identifies a group of changes handed to [`Store::write`]; tickets increase, and the changes
/// of a ticket are decided (committed or failed) after those of every earlier one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(pub u64);

/// What can go wrong with a store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Reading or writing failed (I/O error, read-only file system...).
    #[error("storage failed: {0}")]
    Io(String),
    /// The disk (or the user's quota) is full.
    #[error("storage is full: {0}")]
    Full(String),
    /// What is stored cannot be read as this version stores it.
    #[error("the store is corrupt: {0}")]
    Corrupt(String),
    /// The store was written by a later version of rallymq.
    #[error(
        "the store in {dir} has format version {found}; this rallymq reads up to {supported}: \
         upgrade rallymq, or start with another --data-dir"
    )]
    NewerFormat {
        /// The directory.
        dir: PathBuf,
        /// The version found.
        found: u32,
        /// The newest this version reads.
        supported: u32,
    },
    /// Another process (another broker) has the store open.
    #[error("the store in {0} is in use by another process (its lock file is held)")]
    Locked(PathBuf),
    /// The store is closed.
    #[error("the store is closed")]
    Closed,
}

/// Upper bounds, in seconds, of the buckets of [`StoreStats::commit_seconds`]: from a commit
/// that only wrote to the page cache (tmpfs, a disk that lies about syncing) to a disk that
/// takes seconds to sync.
pub const COMMIT_SECONDS_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// What a store has done so far, for metrics ([`Store::stats`]) and benches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreStats {
    /// Transactions committed.
    pub commits: u64,
    /// Of `commits`, those durable on disk when they returned (the others became durable with
    /// the next durable one).
    pub durable_commits: u64,
    /// Changes committed.
    pub changes: u64,
    /// Commits that failed (their changes are retried in a later one).
    pub failed_commits: u64,
    /// Commits, successful or not, by how long they took: `commit_seconds[i]` counts those that
    /// took more than the bound before `COMMIT_SECONDS_BUCKETS[i]` and at most it; the last
    /// counts those that took longer than every bound. Not cumulative.
    pub commit_seconds: [u64; COMMIT_SECONDS_BUCKETS.len() + 1],
    /// The time all of them took.
    pub commit_time: Duration,
    /// Syncs of the store's files to the disk (`fdatasync`): with redb's quick repair, two per
    /// durable commit, and a few when the store opens or closes.
    pub syncs: u64,
}

impl StoreStats {
    /// The bucket of [`StoreStats::commit_seconds`] a commit that took `took` falls in.
    pub fn bucket_of(took: Duration) -> usize {
        let seconds = took.as_secs_f64();
        COMMIT_SECONDS_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(COMMIT_SECONDS_BUCKETS.len())
    }
}

/// Durable storage for the broker (see the module docs).
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Everything stored, for a broker starting up; sessions whose expiry passed while the
    /// broker was down, and retained messages whose Message Expiry passed, are left out (and
    /// removed).
    fn load(&self) -> Result<Loaded, StoreError>;

    /// Up to `limit` entries of `client_id`'s queue, from entry `from_seq` on, in order, with
    /// their messages. Sees every change whose ticket is committed ([`Store::committed`]).
    fn read_queue(
        &self,
        client_id: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<LoadedEntry>, StoreError>;

    /// Hands a group of changes to the store, to be applied in order and atomically with
    /// whatever else is committed with them; returns at once.
    fn write(&self, changes: Vec<Change>) -> Ticket;

    /// Resolves once the changes of `ticket`, and of every earlier ticket, are decided: `Ok`
    /// if those of `ticket` are durable, or the error that kept them from being written. Asks
    /// the store to make them durable: it need not until something waits for it.
    fn durable(&self, ticket: Ticket) -> BoxFuture<'static, Result<(), StoreError>>;

    /// Resolves once the changes of `ticket`, and of every earlier ticket, are committed (a
    /// [`Store::read_queue`] sees them) or failed, durable or not yet: a crash may still lose
    /// them. What a reader of the store needs, and a store may commit what nobody waits durable
    /// for without syncing it. The default, for a store whose commits are durable: once
    /// decided.
    fn committed(&self, ticket: Ticket) -> BoxFuture<'static, ()> {
        let durable = self.durable(ticket);
        Box::pin(async move {
            let _ = durable.await;
        })
    }

    /// Resolves once the changes of `ticket`, and of every earlier ticket, no longer wait in
    /// the store's queue: its writer has taken them into a commit (or decided them). A pace
    /// for a writer that needs no durability, only that its changes do not pile up in memory
    /// faster than the store takes them: a session draining its queue from the store. The
    /// default, for a store without a queue of its own: once decided.
    fn taken(&self, ticket: Ticket) -> BoxFuture<'static, ()> {
        let durable = self.durable(ticket);
        Box::pin(async move {
            let _ = durable.await;
        })
    }

    /// Opens a group: every change written from now until [`Store::end_group`] is committed
    /// with the others, all or none. The broker routes one message in several writes (the
    /// message, an entry per persistent session, the retained update, the publisher's QoS 2
    /// identifier); a crash between two commits would keep the identifier of a message that
    /// some sessions lost, or the reverse. Groups of several threads may overlap; a store may
    /// hold this call back while it closes a commit, briefly. The broker never opens a group
    /// inside another, nor awaits or holds a lock a group takes while calling this. The
    /// default, for a store that applies each write at once: nothing to do.
    fn begin_group(&self) {}

    /// Closes a group [`Store::begin_group`] opened.
    fn end_group(&self) {}

    /// What the store has done so far, for the broker's metrics (`/metrics`); `None` (the
    /// default) for a store that does not commit in transactions of its own.
    fn stats(&self) -> Option<StoreStats> {
        None
    }
}

/// A group of writes (see [`Store::begin_group`]), closed when dropped.
pub(crate) struct Group<'a>(&'a dyn Store);

impl<'a> Group<'a> {
    pub(crate) fn open(store: &'a dyn Store) -> Self {
        store.begin_group();
        Self(store)
    }
}

impl Drop for Group<'_> {
    fn drop(&mut self) {
        self.0.end_group();
    }
}

/// Whether an offline session's expiry has passed at `now` (a session still marked connected
/// ended when the broker stopped, so its expiry counts from the load).
pub(crate) fn session_expired(record: &SessionRecord, now: SystemTime) -> bool {
    record.expiry_interval != u32::MAX
        && record
            .disconnected_at
            .is_some_and(|at| at + Duration::from_secs(u64::from(record.expiry_interval)) <= now)
}

/// Whether a message's Message Expiry Interval has passed at `now` (MQTT-3.3.2-5).
pub(crate) fn message_expired(message: &StoredMessage, now: SystemTime) -> bool {
    message
        .publish
        .properties
        .message_expiry_interval
        .is_some_and(|interval| {
            message.received_at + Duration::from_secs(u64::from(interval)) <= now
        })
}
