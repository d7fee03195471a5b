//! The durable store: an embedded transactional database (redb) in a directory, written by one
//! thread that commits every change that arrived while the previous commit was running in one
//! transaction (group commit). Changes nobody waits for yet wait up to [`GATHER`] after the
//! end of the last commit for more to join them; a waiter for their commit ends that wait.
//!
//! A session's queue is kept in chunks of 64 entry numbers (`ENTRIES_PER_CHUNK`), one B-tree
//! value each (`record::ChunkValue`), which a commit edits in memory and writes back once.
//!
//! A commit of nothing but queue entries' deletions and updates (a draining session's
//! acknowledgements and in-flight marks) syncs the file (is durable) only when something waits
//! for it to be: a [`Store::durable`] on one of its tickets (a QoS 2 stage), the store closing,
//! or the bound on how long, and for how many commits, what is committed may stay in memory only
//! ([`DURABLE_EVERY`], [`NON_DURABLE_COMMITS`]). Until then it is visible to readers and costs no
//! `fdatasync`; a crash may lose it (its messages are then delivered again, at least once). Every
//! other commit is durable.
//! Commits stay in order, so a crash loses a suffix of them: the entries in flight in the store
//! stay a prefix of each session's queue.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use futures::future::BoxFuture;
use redb::backends::FileBackend;
use redb::{
    BackendError, CompactionMode, Database, Durability, ReadTransaction, ReadableDatabase,
    ReadableTable, ReadableTableMetadata, StorageBackend, Table, TableDefinition, WriteTransaction,
};
use rustc_hash::{FxHashMap, FxHashSet};
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::QueueEntry;
use super::record::{
    ChunkValue, Counts, ENTRIES_PER_CHUNK, FORMAT_VERSION, RemovedEntry, chunk_of, decode_chunk,
    decode_counts, decode_entry, decode_message, decode_session, encode_chunk, encode_counts,
    encode_message, encode_session, inbound_key, last_place, message_references, number_of,
    packet_id_of, queue_key, session_range,
};
use super::{
    COMMIT_SECONDS_BUCKETS, Change, Loaded, LoadedEntry, LoadedSession, MessageId, Store,
    StoreError, StoreStats, StoredMessage, Ticket, message_expired, session_expired,
};
use crate::lock;

/// The database's file in the store's directory.
const FILE: &str = "store.redb";

const META: TableDefinition<&str, u32> = TableDefinition::new("meta");
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
/// Each stored message's reference count (its queue entries), a row for each message in
/// [`MESSAGES`]. Formats 1 and 2 kept the count in front of the message, which a drain
/// rewrote whole for every commit that counted one of its entries out; this table's rows are
/// 12 bytes. The count in front of a message is no longer read.
const REFERENCES: TableDefinition<u64, u32> = TableDefinition::new("references");
/// Sessions' queues in chunks ([`ENTRIES_PER_CHUNK`] sequence numbers to a value).
const QUEUES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("queue_chunks");
/// Sessions' queues as format 1 kept them, an entry to a value: read once, to upgrade.
const QUEUES_FORMAT_1: TableDefinition<&[u8], &[u8]> = TableDefinition::new("queues");
const COUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new("counts");
const INBOUND: TableDefinition<&[u8], ()> = TableDefinition::new("inbound");
const RETAINED: TableDefinition<&str, &[u8]> = TableDefinition::new("retained");
const CURSORS: TableDefinition<&str, u64> = TableDefinition::new("cursors");

/// redb's cache of pages, read and written (its default is 1 GiB). Pages beyond it are read
/// again through the OS's page cache, which the process's RSS does not count: with the default,
/// 10 million queued entries (a 1 GB store) kept the broker at 1.2 GB RSS; with this, 70 to
/// 100 MiB, and filling the backlog was no slower (benches/README.md, "Durability"). 16 MiB, not
/// 32: 1,000 sessions draining 10 M entries peaked at VmHWM 186-190 MiB (195-199 MB, at the
/// issue's 200 MB) with 32, 182-185 MiB with 16, the drain about 9% slower.
const CACHE_BYTES: usize = 16 << 20;

/// Slots of [`Decoded`]: more than the messages a backlog's sessions are apart from each other
/// when they drain together (10,000 in `backlog`), at a few hundred bytes each.
const DECODED_SLOTS: usize = 1 << 14;

/// Failed ticket ranges remembered for `durable`'s answer; older failures are long decided.
const FAILURES_KEPT: usize = 1024;

/// Changes kept for a retry after failed commits; past it the oldest are given up.
const MAX_RETRY: usize = 1 << 20;

/// How often a failing store retries when nothing new arrives.
const RETRY_INTERVAL: Duration = Duration::from_millis(200);

/// How long after the last durable commit a commit is durable anyway, though nothing waits for
/// it: what a crash may lose of what nobody waited for (acknowledgements of deliveries, which
/// are then delivered again) is at most this old.
const DURABLE_EVERY: Duration = Duration::from_secs(1);

/// Non-durable commits in a row at most: redb reuses the pages that commits free only once a
/// durable commit follows them, so the file grows meanwhile.
const NON_DURABLE_COMMITS: u32 = 64;

/// How long after the end of its last commit the writer waits before committing changes that
/// nobody waits for yet, so that more of them share the commit: each commit has a cost of its
/// own (the chunks and counts it rewrites, a durable one two `fdatasync`s), and an entry added
/// and deleted within one commit is never written at all. 1,000 sessions draining 10 M entries
/// made 240 commits a second of 4,000 changes each without this. Anyone waiting for one of the
/// changes to be committed ([`Store::durable`], [`Store::committed`]) ends the wait, so that no
/// waiter waits longer for it; one waiting for the writer to take them ([`Store::taken`], a
/// draining session's pace) has them taken at once, and the wait goes on: a writer that
/// committed for every such waiter never idled, and its commits took a core's worth of time
/// away from the sessions whatever each cost.
const GATHER: Duration = Duration::from_millis(5);

/// A chunk emptied by its session's head passing it stays (its entries are below the head,
/// gone) until the head has passed this many more: they are removed together, neighbours in the
/// B-tree, where one at a time each removal copied its leaf again (a third of the writer's time
/// in a drain).
const SWEEP_CHUNKS: u64 = 8;

/// When a closing store compacts its file (see `Shared::compact_if_freed`): at least
/// this much of it free ...
const COMPACT_FREE_BYTES: u64 = 64 << 20;

/// ... and at most this much of it in use: compacting moves what is in use, so a stop takes
/// longer with more, and a broker killed during it repairs the file at its next start (redb's
/// compaction does not record its allocator's state), which walks what is in use.
const COMPACT_MAX_IN_USE: u64 = 128 << 20;

/// ... and at most this many rows in its tables, counted first: what is in use is measured by
/// walking every page of them (0.2 s for the 10 M entries' 318 MiB, at every clean stop).
const COMPACT_MAX_ROWS: u64 = 100_000;

/// When a closing store compacts its file.
#[derive(Debug, Clone, Copy)]
struct CompactAt {
    /// At least this much free.
    free: u64,
    /// At most this much in use.
    in_use: u64,
    /// At most this many rows.
    rows: u64,
}

impl Default for CompactAt {
    fn default() -> Self {
        Self {
            free: COMPACT_FREE_BYTES,
            in_use: COMPACT_MAX_IN_USE,
            rows: COMPACT_MAX_ROWS,
        }
    }
}

/// Changes that end [`GATHER`]'s wait by their number.
const GATHER_CHANGES: usize = 50_000;

/// A [`Store`] on disk, in a directory of its own: `store.redb` (redb: a copy-on-write B-tree
/// database, crash-safe, durable on commit) and `lock`, held while the store is open so that
/// no second broker opens the same directory.
#[derive(Debug)]
pub struct DiskStore {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    /// `None` from a failed commit until the writer opens the database again: after an I/O
    /// error redb fails every operation ("Previous I/O error occurred") until it is closed
    /// and opened anew, which recovers its file to the last commit.
    db: RwLock<Option<Database>>,
    dir: PathBuf,
    pending: Mutex<Pending>,
    arrived: Condvar,
    /// Signalled when the last open group closes, and when a commit has taken its changes
    /// (groups held back meanwhile may open).
    gate: Condvar,
    /// The highest ticket decided: durable, or failed.
    decided: watch::Sender<u64>,
    /// The highest ticket committed (visible to readers, durable or not) or failed: at least
    /// `decided`.
    committed: watch::Sender<u64>,
    /// The highest ticket whose changes the writer has taken from `pending` (at least
    /// `committed`).
    taken: watch::Sender<u64>,
    /// The highest ticket a [`Store::durable`] waits for: the writer makes its next commit
    /// durable while it is above `decided`.
    wanted: AtomicU64,
    /// The highest ticket a [`Store::taken`] waits for: the gathering writer takes the changes
    /// up to it (and commits them when the gathering ends).
    awaited: AtomicU64,
    /// The highest ticket a [`Store::committed`] waits for: it ends the writer's gathering.
    commit_awaited: AtomicU64,
    /// [`DURABLE_EVERY`] (shorter or longer in tests).
    durable_every: Duration,
    /// [`CompactAt::default`] (less in tests).
    compact_at: CompactAt,
    /// Ticket ranges whose commit failed, newest last.
    failures: Mutex<VecDeque<(u64, u64, StoreError)>>,
    commits: AtomicU64,
    durable_commits: AtomicU64,
    changes: AtomicU64,
    failed_commits: AtomicU64,
    /// Commits by duration (see [`StoreStats::commit_seconds`]), and their total time in
    /// nanoseconds. Written by the writer thread only, once per commit.
    commit_seconds: [AtomicU64; COMMIT_SECONDS_BUCKETS.len() + 1],
    commit_nanos: AtomicU64,
    /// Messages read for queues lately, shared by the sessions that read them.
    decoded: Decoded,
    /// The database file's syncs (`fdatasync`), counted by its backend.
    syncs: Arc<AtomicU64>,
    /// Held for the store's life: the lock on `lock`.
    _lock: File,
}

#[derive(Debug, Default)]
struct Pending {
    changes: Vec<Change>,
    last_ticket: u64,
    closing: bool,
    /// Groups open (`Store::begin_group`): the writer takes no changes while there are any.
    open_groups: usize,
    /// The writer waits for the open groups to close: new ones wait for it, so that groups
    /// that keep overlapping cannot hold commits back for ever.
    draining: bool,
    /// The writer waits on `arrived` for work: only then does a write wake it. (A condition
    /// variable's notification is a `futex` call whether anyone waits or not: one per write,
    /// four per QoS 1 message to a persistent session, while the writer was busy anyway.)
    writer_idle: bool,
    /// Every change in `changes` is a queue entry's deletion or update (see
    /// [`is_acknowledgement`]).
    acks_only: bool,
    /// The writer waits on `arrived` for more changes to commit with those it has (see
    /// [`GATHER`]): a waiter wakes it.
    gathering: bool,
}

impl Pending {
    /// Moves the changes waiting here into `gathered`, the writer's next commit.
    fn take_into(&mut self, gathered: &mut Gathered) {
        if self.changes.is_empty() {
            return;
        }
        let acks_only = std::mem::take(&mut self.acks_only);
        if gathered.changes.is_empty() {
            // Moved, not copied: tens of thousands of changes in a drain's commit.
            std::mem::swap(&mut gathered.changes, &mut self.changes);
            gathered.acks_only = acks_only;
        } else {
            gathered.acks_only &= acks_only;
            gathered.changes.append(&mut self.changes);
        }
    }
}

/// What the writer has taken from [`Pending`] for its next commit.
#[derive(Default)]
struct Gathered {
    changes: Vec<Change>,
    /// Every one of `changes` is a queue entry's deletion or update (as [`Pending::acks_only`]).
    acks_only: bool,
}

/// The messages [`Store::read_queue`] decoded lately, by identifier (a direct-mapped cache): a
/// message routed to many sessions is read back by each, and each would otherwise hold a
/// decoded copy of its own. 1,000 sessions draining a backlog together held up to 512 entries
/// each in memory, every one with its own copy. Identifiers are not used twice while a broker
/// runs (they grow from [`Loaded::next_message_id`]), so an identifier found is the message;
/// [`Store::load`] empties the cache, as a broker starting anew may count from a lower one.
#[derive(Debug)]
struct Decoded(Mutex<Vec<Option<DecodedSlot>>>);

/// A slot of [`Decoded`]: the message and its identifier.
type DecodedSlot = (MessageId, Arc<StoredMessage>);

impl Default for Decoded {
    fn default() -> Self {
        Self(Mutex::new(vec![None; DECODED_SLOTS]))
    }
}

impl Decoded {
    fn slot(id: MessageId) -> usize {
        // The remainder is below DECODED_SLOTS, which fits in usize.
        (id % DECODED_SLOTS as u64) as usize
    }

    /// The cached message of each of `ids`, where there is one.
    fn get(&self, ids: impl Iterator<Item = MessageId>) -> Vec<Option<Arc<StoredMessage>>> {
        let slots = lock(&self.0);
        ids.map(|id| match &slots[Self::slot(id)] {
            Some((cached, message)) if *cached == id => Some(message.clone()),
            _ => None,
        })
        .collect()
    }

    /// Keeps `messages`, in place of what their slots held.
    fn put(&self, messages: FxHashMap<MessageId, Arc<StoredMessage>>) {
        if messages.is_empty() {
            return;
        }
        let mut slots = lock(&self.0);
        for (id, message) in messages {
            slots[Self::slot(id)] = Some((id, message));
        }
    }

    fn clear(&self) {
        lock(&self.0).fill(None);
    }
}

/// A storage error; a full disk is told apart, as MQTT 5 has a reason code for it (0x97).
fn io(error: impl std::fmt::Display) -> StoreError {
    let text = error.to_string();
    // ENOSPC and EDQUOT, as the OS words them in every io::Error's text.
    if text.contains("os error 28") || text.contains("os error 122") {
        StoreError::Full(text)
    } else {
        StoreError::Io(text)
    }
}

impl DiskStore {
    /// Opens the store in `dir`, creating the directory and the store if needed. Fails if
    /// another process holds the directory's lock, or if the store has a newer format.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_bounded(dir, DURABLE_EVERY)
    }

    /// [`DiskStore::open`], with a commit durable at the latest `durable_every` after the last
    /// durable one.
    fn open_bounded(dir: impl AsRef<Path>, durable_every: Duration) -> Result<Self, StoreError> {
        Self::open_with(dir, durable_every, CompactAt::default())
    }

    /// [`DiskStore::open_bounded`], compacting its file at close as `compact_at` says.
    fn open_with(
        dir: impl AsRef<Path>,
        durable_every: Duration,
        compact_at: CompactAt,
    ) -> Result<Self, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| io(format!("{}: {e}", dir.display())))?;
        let lock_file = File::create(dir.join("lock")).map_err(io)?;
        match lock_file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(StoreError::Locked(dir)),
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        let syncs = Arc::new(AtomicU64::new(0));
        let db = open_database(&dir.join(FILE), &syncs)?;
        let txn = db.begin_write().map_err(io)?;
        {
            let mut meta = txn.open_table(META).map_err(io)?;
            let found = meta.get("format").map_err(io)?.map(|v| v.value());
            match found {
                Some(found) if found > FORMAT_VERSION => {
                    return Err(StoreError::NewerFormat {
                        dir,
                        found,
                        supported: FORMAT_VERSION,
                    });
                }
                Some(FORMAT_VERSION) => {}
                Some(found) => {
                    // Format 1 kept an entry to a B-tree value; format 2's queue counts read as
                    // format 3's with their heads at 0.
                    let (entries, chunks) = if found == 1 {
                        chunk_format_1_queues(&txn)?
                    } else {
                        (0, 0)
                    };
                    let messages = count_references_apart(&txn)?;
                    info!(
                        store = %dir.display(),
                        entries,
                        chunks,
                        messages,
                        "the store was upgraded from format {found} to {FORMAT_VERSION}"
                    );
                    meta.insert("format", FORMAT_VERSION).map_err(io)?;
                }
                None => {
                    meta.insert("format", FORMAT_VERSION).map_err(io)?;
                }
            }
            // Every table exists from here on, so readers can open them.
            txn.open_table(SESSIONS).map_err(io)?;
            txn.open_table(MESSAGES).map_err(io)?;
            txn.open_table(REFERENCES).map_err(io)?;
            txn.open_table(QUEUES).map_err(io)?;
            txn.open_table(COUNTS).map_err(io)?;
            txn.open_table(INBOUND).map_err(io)?;
            txn.open_table(RETAINED).map_err(io)?;
            txn.open_table(CURSORS).map_err(io)?;
        }
        txn.commit().map_err(io)?;
        let (decided, _) = watch::channel(0);
        let (committed, _) = watch::channel(0);
        let (taken, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            db: RwLock::new(Some(db)),
            dir,
            pending: Mutex::default(),
            arrived: Condvar::new(),
            gate: Condvar::new(),
            decided,
            committed,
            taken,
            wanted: AtomicU64::new(0),
            awaited: AtomicU64::new(0),
            commit_awaited: AtomicU64::new(0),
            durable_every,
            compact_at,
            failures: Mutex::default(),
            commits: AtomicU64::new(0),
            durable_commits: AtomicU64::new(0),
            changes: AtomicU64::new(0),
            failed_commits: AtomicU64::new(0),
            commit_seconds: Default::default(),
            commit_nanos: AtomicU64::new(0),
            decoded: Decoded::default(),
            syncs,
            _lock: lock_file,
        });
        let writer_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("rallymq-store".into())
            .spawn(move || writer_shared.write_loop())
            .map_err(io)?;
        Ok(Self {
            shared,
            writer: Some(writer),
        })
    }

    /// The directory of the store.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// What the store has done so far.
    pub fn stats(&self) -> StoreStats {
        let shared = &self.shared;
        StoreStats {
            commits: shared.commits.load(Ordering::Relaxed),
            durable_commits: shared.durable_commits.load(Ordering::Relaxed),
            changes: shared.changes.load(Ordering::Relaxed),
            failed_commits: shared.failed_commits.load(Ordering::Relaxed),
            commit_seconds: shared
                .commit_seconds
                .each_ref()
                .map(|count| count.load(Ordering::Relaxed)),
            commit_time: Duration::from_nanos(shared.commit_nanos.load(Ordering::Relaxed)),
            syncs: shared.syncs.load(Ordering::Relaxed),
        }
    }
}

impl Drop for DiskStore {
    /// Commits what is pending, gives back the space a delivered backlog left when at least 64
    /// MiB of the file is free and little is in use (at most 128 MiB and 100,000 rows), then
    /// closes.
    fn drop(&mut self) {
        lock(&self.shared.pending).closing = true;
        self.shared.arrived.notify_all();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
        self.shared.compact_if_freed();
    }
}

impl Shared {
    /// The writer thread: takes everything that arrived, commits it in one transaction (durable
    /// or not, see the module docs), tells the waiters, and again, until the store closes and
    /// nothing is left.
    ///
    /// Only a commit of nothing but queue entries' deletions and updates (acknowledgements and
    /// in-flight marks, which a drain writes by the million) may be non-durable: anything else
    /// (a routed message, a session record) nearly always has a waiter, which might come only
    /// after the writer has taken it, and would then cost a durable empty commit after it. So a
    /// failed commit, which leaves the database as the last durable commit left it (it is
    /// opened again), loses no more than such changes with the non-durable commits before it:
    /// their tickets fail with its own, and their messages are delivered again, as after a
    /// crash.
    fn write_loop(&self) {
        let mut retry: Vec<Change> = Vec::new();
        let mut failing = false;
        let mut last_durable = Instant::now();
        let mut non_durable: u32 = 0;
        let mut last_commit = Instant::now();
        // Changes taken from `pending` while gathering, for the next commit.
        let mut gathered = Gathered::default();
        loop {
            let (mut changes, upto, closing, wanted, acks_only) = {
                let mut pending = lock(&self.pending);
                loop {
                    // A ticket someone waits durable for that is not yet is work, committed or
                    // not: an empty durable commit makes the earlier ones durable.
                    let waited_for = self.wanted.load(Ordering::SeqCst) > *self.decided.borrow();
                    let has_changes = !pending.changes.is_empty() || !gathered.changes.is_empty();
                    if has_changes
                        || pending.last_ticket > *self.committed.borrow()
                        || pending.closing
                        || waited_for
                    {
                        let gather = if has_changes
                            && !pending.closing
                            && !waited_for
                            && retry.is_empty()
                            && pending.changes.len() + gathered.changes.len() < GATHER_CHANGES
                            && self.commit_awaited.load(Ordering::SeqCst)
                                <= *self.committed.borrow()
                        {
                            GATHER.checked_sub(last_commit.elapsed())
                        } else {
                            None
                        };
                        let Some(gather) = gather else {
                            break;
                        };
                        if self.awaited.load(Ordering::SeqCst) > *self.taken.borrow()
                            && pending.open_groups == 0
                            && !pending.changes.is_empty()
                        {
                            // A session paced by the writer waits for these: taken now, they
                            // no longer pile up in `pending`, and are committed with those
                            // that follow them once the gathering ends.
                            pending.take_into(&mut gathered);
                            self.take(pending.last_ticket);
                        }
                        pending.gathering = true;
                        pending = self
                            .arrived
                            .wait_timeout(pending, gather)
                            .unwrap_or_else(|poisoned| poisoned.into_inner())
                            .0;
                        pending.gathering = false;
                        continue;
                    }
                    pending.writer_idle = true;
                    let timeout = if !retry.is_empty() {
                        Some(RETRY_INTERVAL)
                    } else if non_durable > 0 {
                        Some(self.durable_every.saturating_sub(last_durable.elapsed()))
                    } else {
                        None
                    };
                    match timeout {
                        None => {
                            pending = self
                                .arrived
                                .wait(pending)
                                .unwrap_or_else(|poisoned| poisoned.into_inner());
                            pending.writer_idle = false;
                        }
                        Some(timeout) => {
                            let (guard, result) = self
                                .arrived
                                .wait_timeout(pending, timeout)
                                .unwrap_or_else(|poisoned| poisoned.into_inner());
                            pending = guard;
                            pending.writer_idle = false;
                            if result.timed_out() {
                                break;
                            }
                        }
                    }
                }
                // A group being written goes into this commit whole, or into a later one.
                if pending.open_groups > 0 {
                    pending.draining = true;
                    while pending.open_groups > 0 {
                        pending = self
                            .gate
                            .wait(pending)
                            .unwrap_or_else(|poisoned| poisoned.into_inner());
                    }
                    pending.draining = false;
                    self.gate.notify_all();
                }
                pending.take_into(&mut gathered);
                let Gathered { changes, acks_only } = std::mem::take(&mut gathered);
                (
                    changes,
                    pending.last_ticket,
                    pending.closing,
                    // Read with the changes taken: a waiter on one of them makes this commit
                    // durable, rather than a durable empty one after it.
                    self.wanted.load(Ordering::SeqCst),
                    acks_only,
                )
            };
            self.take(upto);
            let decided = *self.decided.borrow();
            let durable = closing
                || failing
                || !retry.is_empty()
                || wanted > decided
                || non_durable >= NON_DURABLE_COMMITS
                || last_durable.elapsed() >= self.durable_every
                || !acks_only;
            if changes.is_empty() && retry.is_empty() && !(durable && non_durable > 0) {
                // Nothing to commit; what is committed is durable unless a non-durable commit
                // waits for a later one.
                self.decide(upto, non_durable == 0);
                if closing {
                    return;
                }
                continue;
            }
            if !retry.is_empty() {
                retry.append(&mut changes);
                changes = std::mem::take(&mut retry);
            }
            let count = changes.len() as u64;
            let started = Instant::now();
            let committed = self.commit(&changes, durable);
            last_commit = Instant::now();
            self.commit_took(last_commit - started);
            match committed {
                Ok(()) => {
                    if failing {
                        info!(dir = %self.dir.display(), "store writes succeed again");
                        failing = false;
                    }
                    self.commits.fetch_add(1, Ordering::Relaxed);
                    self.changes.fetch_add(count, Ordering::Relaxed);
                    if durable {
                        self.durable_commits.fetch_add(1, Ordering::Relaxed);
                        last_durable = Instant::now();
                        non_durable = 0;
                    } else {
                        non_durable += 1;
                    }
                    self.decide(upto, durable);
                }
                Err(e) => {
                    self.failed_commits.fetch_add(1, Ordering::Relaxed);
                    if !failing {
                        // Once per episode: a full disk fails every commit until it is not.
                        error!(dir = %self.dir.display(), error = %e, "store write failed; nothing is acknowledged until writes succeed again");
                        failing = true;
                    }
                    // Every ticket since the last durable commit is lost.
                    let first = decided + 1;
                    if upto >= first {
                        let mut failures = lock(&self.failures);
                        failures.push_back((first, upto, e));
                        while failures.len() > FAILURES_KEPT {
                            failures.pop_front();
                        }
                    }
                    retry = changes;
                    non_durable = 0;
                    if retry.len() > MAX_RETRY {
                        let dropped = retry.len() - MAX_RETRY;
                        warn!(dropped, "store: changes given up after failed commits");
                        retry.drain(..dropped);
                    }
                    if !closing {
                        std::thread::sleep(RETRY_INTERVAL);
                    }
                    self.decide(upto, true);
                }
            }
            // Closing: a failing store gives up what it could not write (nothing of it was
            // acknowledged); otherwise what arrived meanwhile is committed first.
            if closing && (failing || lock(&self.pending).changes.is_empty()) {
                return;
            }
        }
    }

    /// Compacts the closed store's file when much of it is free and little is in use (see
    /// [`CompactAt`]): redb reuses the pages a delivered backlog freed but never gives them back
    /// to the file system, so a store that once held 10 M entries kept its 318 MiB after they
    /// were delivered. Done when the store closes, as Mosquitto writes its persistence file
    /// anew at a clean stop: the restart after a crash, which the broker must make fast, does
    /// not wait for it, and no reader is left (one that is makes redb refuse, and the file
    /// stays as it is). A failure is logged and leaves the file as it was: redb compacts in
    /// transactions of its own.
    fn compact_if_freed(&self) {
        let mut db = self
            .db
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(db) = db.as_mut() else {
            return;
        };
        let at = self.compact_at;
        let path = self.dir.join(FILE);
        let file_bytes = |path: &Path| std::fs::metadata(path).map_or(0, |meta| meta.len());
        let before = file_bytes(&path);
        // A file shorter than the free space asked for has less free: nothing is read (every
        // store a test or a short run closes).
        if before < at.free {
            return;
        }
        // Each table's length is in its header: no page is walked.
        let rows = db.begin_read().map_err(io).and_then(|txn| {
            let mut rows = 0;
            for table in txn.list_tables().map_err(io)? {
                rows += txn
                    .open_untyped_table(table)
                    .map_err(io)?
                    .len()
                    .map_err(io)?;
            }
            Ok(rows)
        });
        match rows {
            Ok(rows) if rows <= at.rows => {}
            Ok(_) => return,
            Err(e) => {
                warn!(dir = %self.dir.display(), error = %e, "store: counting its rows to compact it failed");
                return;
            }
        }
        let used = match db.begin_write().and_then(|txn| {
            let stats = txn.stats();
            txn.abort()?;
            Ok(stats?)
        }) {
            Ok(stats) => stats.allocated_pages() * stats.page_size() as u64,
            Err(e) => {
                warn!(dir = %self.dir.display(), error = %e, "store: reading its size to compact it failed");
                return;
            }
        };
        let free = before.saturating_sub(used);
        if free < at.free || used > at.in_use {
            return;
        }
        let started = Instant::now();
        match db.compact(CompactionMode::Balanced) {
            Ok(_) => info!(
                dir = %self.dir.display(),
                before_mib = before >> 20,
                after_mib = file_bytes(&path) >> 20,
                seconds = started.elapsed().as_secs_f64(),
                "store compacted at close"
            ),
            Err(e) => {
                warn!(dir = %self.dir.display(), error = %e, "store: compacting at close failed; the file stays as it is")
            }
        }
    }

    /// Counts a commit that took `took` in the histogram.
    fn commit_took(&self, took: Duration) {
        self.commit_seconds[StoreStats::bucket_of(took)].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.commit_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Tells the waiters that every ticket up to `upto` is taken from the queue.
    fn take(&self, upto: u64) {
        raise(&self.taken, upto);
    }

    /// Tells the waiters that every ticket up to `upto` is committed (or failed), and decided
    /// when `durable`.
    fn decide(&self, upto: u64, durable: bool) {
        self.take(upto);
        // Decided first: whoever sees a durable commit committed sees it decided too.
        if durable {
            raise(&self.decided, upto);
        }
        raise(&self.committed, upto);
    }

    /// Asks the writer to make `ticket` durable: its next commit is, or an empty one if
    /// nothing else comes.
    fn want_durable(&self, ticket: u64) {
        if self.wanted.fetch_max(ticket, Ordering::SeqCst) >= ticket {
            return;
        }
        // The writer reads `wanted` under this lock before it waits: either it sees the new
        // value, or it is idle by now and is woken.
        let pending = lock(&self.pending);
        if pending.writer_idle || pending.gathering {
            self.arrived.notify_one();
        }
    }

    /// Ends the writer's gathering (see [`GATHER`]) for someone waiting for it to take or
    /// commit `ticket`.
    fn await_writer(&self, awaited: &AtomicU64, ticket: u64) {
        if awaited.fetch_max(ticket, Ordering::SeqCst) < ticket && lock(&self.pending).gathering {
            self.arrived.notify_one();
        }
    }

    /// Applies `changes` in one transaction and commits it, durably when `durable`. A failed
    /// commit closes the database, for the next one to open it again.
    fn commit(&self, changes: &[Change], durable: bool) -> Result<(), StoreError> {
        let result = self.try_commit(changes, durable);
        if result.is_err() {
            *self
                .db
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
        }
        result
    }

    fn try_commit(&self, changes: &[Change], durable: bool) -> Result<(), StoreError> {
        let mut db = self.database();
        if db.is_none() {
            drop(db);
            let reopened = open_database(&self.dir.join(FILE), &self.syncs)?;
            *self
                .db
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(reopened);
            db = self.database();
        }
        let mut txn = db
            .as_ref()
            .ok_or(StoreError::Closed)?
            .begin_write()
            .map_err(io)?;
        // Each commit records redb's allocator state (and commits in two phases), so that
        // opening the store after a crash does not rebuild it by reading the whole file: with
        // 10 million queued entries (1 GB) and the file out of the OS cache, as after a reboot,
        // that took 13 s before the broker accepted connections, 0.13 s with this. It costs
        // throughput (benches/README.md, "Durability"). Only a durable commit records it.
        if durable {
            txn.set_quick_repair(true);
        } else {
            txn.set_durability(Durability::None).map_err(io)?;
        }
        apply(&txn, changes)?;
        txn.commit().map_err(io)
    }

    /// The database, while it is open.
    fn database(&self) -> RwLockReadGuard<'_, Option<Database>> {
        self.db
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A read transaction; fails while the database is closed after a failed commit.
    fn begin_read(&self) -> Result<ReadTransaction, StoreError> {
        match &*self.database() {
            Some(db) => db.begin_read().map_err(io),
            None => Err(StoreError::Io(format!(
                "{}: the store reopens after a failed write",
                self.dir.display()
            ))),
        }
    }

    fn failure_of(&self, ticket: u64) -> Option<StoreError> {
        lock(&self.failures)
            .iter()
            .rev()
            .find(|(first, last, _)| (*first..=*last).contains(&ticket))
            .map(|(_, _, error)| error.clone())
    }
}

/// Opens (or creates) the database file, with the cache the broker can afford; its syncs are
/// counted in `syncs`.
fn open_database(path: &Path, syncs: &Arc<AtomicU64>) -> Result<Database, StoreError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| io(format!("{}: {e}", path.display())))?;
    redb::Builder::new()
        .set_cache_size(CACHE_BYTES)
        .create_with_backend(CountedFile {
            file: FileBackend::new(file),
            syncs: syncs.clone(),
        })
        .map_err(io)
}

/// redb's own file backend, with its syncs counted: what a commit costs on a disk is mostly
/// its `fdatasync`s (two with quick repair), and the issue asks for them per second.
#[derive(Debug)]
struct CountedFile {
    file: FileBackend,
    syncs: Arc<AtomicU64>,
}

impl StorageBackend for CountedFile {
    fn len(&self) -> Result<u64, BackendError> {
        self.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), BackendError> {
        self.file.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), BackendError> {
        self.file.set_len(len)
    }

    fn sync_data(&self) -> Result<(), BackendError> {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        self.file.write(offset, data)
    }

    fn close(&self) -> Result<(), BackendError> {
        self.file.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.file.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.query_lock_range(start, end)
    }
}

/// Raises a ticket mark to `upto` (it never goes back), waking its waiters only when it moved.
fn raise(mark: &watch::Sender<u64>, upto: u64) {
    mark.send_if_modified(|value| {
        let changed = upto > *value;
        *value = (*value).max(upto);
        changed
    });
}

/// Moves a format 1 store's queue entries (one B-tree value each) into chunks, and drops their
/// table. Returns how many entries went into how many chunks.
fn chunk_format_1_queues(txn: &WriteTransaction) -> Result<(u64, u64), StoreError> {
    let (mut entries, mut chunks) = (0, 0);
    {
        let old = txn.open_table(QUEUES_FORMAT_1).map_err(io)?;
        let mut queues = txn.open_table(QUEUES).map_err(io)?;
        // The chunk being filled: its key and entries. Format 1's keys sort a session's
        // entries together and in order, so a chunk's entries come one after the other.
        let mut filling: Option<(Vec<u8>, BTreeMap<u8, QueueEntry>)> = None;
        let mut flush = |filling: Option<(Vec<u8>, BTreeMap<u8, QueueEntry>)>| {
            let Some((key, entries)) = filling else {
                return Ok::<_, StoreError>(());
            };
            let value = encode_chunk(entries.iter().map(|(place, entry)| (*place, entry)));
            queues
                .insert(key.as_slice(), value.as_slice())
                .map_err(io)?;
            Ok(())
        };
        for item in old.iter().map_err(io)? {
            let (key, value) = item.map_err(io)?;
            let key = key.value();
            let (number, place) = chunk_of(number_of(key)?);
            // The client id and its NUL stay; the sequence number becomes the chunk's.
            let mut chunk_key = key[..key.len() - 8].to_vec();
            chunk_key.extend_from_slice(&number.to_be_bytes());
            if filling
                .as_ref()
                .is_none_or(|(filled, _)| *filled != chunk_key)
            {
                flush(filling.take())?;
                filling = Some((chunk_key, BTreeMap::new()));
                chunks += 1;
            }
            if let Some((_, filled)) = &mut filling {
                filled.insert(place, decode_entry(value.value())?);
            }
            entries += 1;
        }
        flush(filling)?;
    }
    txn.delete_table(QUEUES_FORMAT_1).map_err(io)?;
    Ok((entries, chunks))
}

/// Formats 1 and 2 kept a message's reference count in front of it: gives each message its
/// row in [`REFERENCES`]. Returns how many messages there are.
fn count_references_apart(txn: &WriteTransaction) -> Result<u64, StoreError> {
    let messages = txn.open_table(MESSAGES).map_err(io)?;
    let mut references = txn.open_table(REFERENCES).map_err(io)?;
    let mut counted = 0;
    for item in messages.iter().map_err(io)? {
        let (id, value) = item.map_err(io)?;
        references
            .insert(id.value(), message_references(value.value())?)
            .map_err(io)?;
        counted += 1;
    }
    Ok(counted)
}

/// A queue entry's deletion or update: what a draining session writes for every entry it is
/// sent and acknowledges, and what a commit may leave non-durable.
fn is_acknowledgement(change: &Change) -> bool {
    matches!(
        change,
        Change::DeleteEntry { .. } | Change::UpdateEntry { .. }
    )
}

/// Applies `changes` in order inside `txn`. Reference counts of messages and the sizes of
/// queues are summed over the whole group and written once each, and so is every queue chunk
/// the group touches.
fn apply(txn: &WriteTransaction, changes: &[Change]) -> Result<(), StoreError> {
    let mut sessions = txn.open_table(SESSIONS).map_err(io)?;
    let mut messages = txn.open_table(MESSAGES).map_err(io)?;
    let mut counted = txn.open_table(REFERENCES).map_err(io)?;
    let mut queues = txn.open_table(QUEUES).map_err(io)?;
    let mut counts = txn.open_table(COUNTS).map_err(io)?;
    let mut inbound = txn.open_table(INBOUND).map_err(io)?;
    let mut retained = txn.open_table(RETAINED).map_err(io)?;
    let mut cursors = txn.open_table(CURSORS).map_err(io)?;
    let mut chunks = Chunks::default();
    let skip = cancelled(changes);
    for (change, skip) in changes.iter().zip(skip) {
        if skip {
            // Its entry came and went within the group; its message may be left with none.
            if let Change::AddEntry { entry, .. } = change {
                chunks.references.entry(entry.message).or_default();
                chunks.released.insert(entry.message);
            }
            continue;
        }
        match change {
            Change::PutSession(record) => {
                sessions
                    .insert(record.client_id.as_str(), encode_session(record).as_slice())
                    .map_err(io)?;
            }
            Change::DeleteSession(client_id) => {
                chunks.delete_session(&mut queues, &counts, client_id)?;
                sessions.remove(&**client_id).map_err(io)?;
                counts.remove(&**client_id).map_err(io)?;
                let (start, end) = session_range(client_id);
                let ids: Vec<Vec<u8>> = inbound
                    .range(start.as_slice()..end.as_slice())
                    .map_err(io)?
                    .map(|item| item.map(|(key, _)| key.value().to_vec()))
                    .collect::<Result<_, _>>()
                    .map_err(io)?;
                for key in ids {
                    inbound.remove(key.as_slice()).map_err(io)?;
                }
            }
            Change::PutMessage(id, message) => {
                messages
                    .insert(*id, encode_message(0, message).as_slice())
                    .map_err(io)?;
                counted.insert(*id, 0).map_err(io)?;
            }
            Change::AddEntry {
                client_id,
                seq,
                entry,
            } => chunks.add(&queues, &counts, client_id, *seq, entry)?,
            Change::UpdateEntry {
                client_id,
                seq,
                entry,
            } => chunks.update(&queues, &counts, client_id, *seq, entry)?,
            Change::DeleteEntry { client_id, seq } => {
                chunks.delete(&queues, &counts, client_id, *seq)?
            }
            Change::PutInbound {
                client_id,
                packet_id,
            } => {
                inbound
                    .insert(inbound_key(client_id, *packet_id).as_slice(), ())
                    .map_err(io)?;
            }
            Change::DeleteInbound {
                client_id,
                packet_id,
            } => {
                inbound
                    .remove(inbound_key(client_id, *packet_id).as_slice())
                    .map_err(io)?;
            }
            Change::PutRetained(message) => {
                if let Some(topic) = &message.publish.topic {
                    retained
                        .insert(topic.as_str(), encode_message(0, message).as_slice())
                        .map_err(io)?;
                }
            }
            Change::DeleteRetained(topic) => {
                retained.remove(topic.as_str()).map_err(io)?;
            }
            Change::PutCursor { name, position } => {
                cursors.insert(&**name, position).map_err(io)?;
            }
        }
    }
    chunks.write_all(&mut queues)?;
    let Chunks {
        references,
        released,
        sizes,
        heads,
        ..
    } = chunks;
    for (id, delta) in references {
        // A message stored in this group with no entry yet is kept: its entries may come in
        // the next group.
        if delta == 0 && !released.contains(&id) {
            continue;
        }
        // Read and replaced where it lies: one walk down the B-tree, not two.
        let count = {
            // No row: the message is not stored (gone already, or never written).
            let Some(mut row) = counted.get_mut(id).map_err(io)? else {
                continue;
            };
            let count = i64::from(row.value()) + delta;
            if count > 0 && delta != 0 {
                row.insert(u32::try_from(count).unwrap_or(u32::MAX))
                    .map_err(io)?;
            }
            count
        };
        if count <= 0 {
            // Also when the group added and removed as many entries as it (a message stored,
            // delivered and acknowledged in one group): nothing refers to it.
            messages.remove(id).map_err(io)?;
            counted.remove(id).map_err(io)?;
        }
    }
    // A head moves only with a deletion, which changes its session's size too.
    for (client_id, (len, bytes)) in sizes {
        let (stored, head) = match heads.get(client_id) {
            Some(head) => (head.stored, head.now),
            None => {
                let stored = stored_counts(&counts, client_id)?;
                (stored, stored.head)
            }
        };
        let len = stored.len.saturating_add_signed(len);
        let bytes = stored.bytes.saturating_add_signed(bytes);
        let head_chunk = chunk_of(head).0;
        if len == 0 || head_chunk / SWEEP_CHUNKS != chunk_of(stored.head).0 / SWEEP_CHUNKS {
            // The chunks wholly below the head hold no entry. With the last entry they all go,
            // and with them what the head was for: the numbers may start again from 0. (A
            // chunk the head is in and that holds none above it went when it emptied.)
            let (start, _) = session_range(client_id);
            let below = queue_key(client_id, head_chunk);
            queues
                .retain_in(start.as_slice()..below.as_slice(), |_, _| false)
                .map_err(io)?;
        }
        if len == 0 {
            counts.remove(client_id).map_err(io)?;
        } else {
            counts
                .insert(
                    client_id,
                    encode_counts(Counts { len, bytes, head }).as_slice(),
                )
                .map_err(io)?;
        }
    }
    Ok(())
}

/// The table of queue counts, open for writing.
type CountsTable<'t> = Table<'t, &'static str, &'static [u8]>;

/// A session's counts as stored (all zero when none are), from the counts table open for
/// reading or writing.
fn stored_counts(
    counts: &impl ReadableTable<&'static str, &'static [u8]>,
    client_id: &str,
) -> Result<Counts, StoreError> {
    match counts.get(client_id).map_err(io)? {
        Some(value) => decode_counts(value.value()),
        None => Ok(Counts::default()),
    }
}

/// A session's queue head in a group: as stored, and as the group has moved it.
struct Head {
    stored: Counts,
    now: u64,
    /// A chunk before the one of a deleted first entry holds entries: the head cannot move
    /// up to it in this group (see [`Chunks::catch_up`]).
    stuck: bool,
}

/// The queue chunks a group touches, read once from the database, changed in memory in the
/// group's order and written back once at its end; and what their changes did to messages'
/// reference counts and queues' sizes.
#[derive(Default)]
struct Chunks<'c> {
    /// By session and chunk number.
    open: FxHashMap<(&'c str, u64), Chunk>,
    /// The change of each message's reference count.
    references: FxHashMap<MessageId, i64>,
    /// Messages an entry stopped referring to in this group: one whose entries were all added
    /// and removed within the group has a net change of 0, and must still go.
    released: FxHashSet<MessageId>,
    /// The change of each session's queue length and bytes.
    sizes: FxHashMap<&'c str, (i64, i64)>,
    /// The heads of the sessions whose chunks the group read or whose entries it deleted.
    heads: FxHashMap<&'c str, Head>,
    /// Each session's lowest chunk the group has open.
    lowest_open: FxHashMap<&'c str, u64>,
}

/// The table of queue chunks, open for writing.
type QueueTable<'t> = Table<'t, &'static [u8], &'static [u8]>;

/// One chunk of a session's queue as the group has left it so far.
struct Chunk {
    value: ChunkValue,
    /// It is in the database.
    stored: bool,
    /// The group changed it.
    changed: bool,
}

impl<'c> Chunks<'c> {
    /// The head of `client_id`'s queue, read from its counts the first time the group needs it.
    fn head(&mut self, counts: &CountsTable<'_>, client_id: &'c str) -> Result<u64, StoreError> {
        if let Some(head) = self.heads.get(client_id) {
            return Ok(head.now);
        }
        let stored = stored_counts(counts, client_id)?;
        self.heads.insert(
            client_id,
            Head {
                stored,
                now: stored.head,
                stuck: false,
            },
        );
        Ok(stored.head)
    }

    /// The chunk that holds `seq`, read from the database the first time the group touches it,
    /// without the entries below the queue's head that it may still hold.
    fn chunk(
        &mut self,
        queues: &QueueTable<'_>,
        counts: &CountsTable<'_>,
        client_id: &'c str,
        seq: u64,
    ) -> Result<(&mut Chunk, u8), StoreError> {
        let (number, place) = chunk_of(seq);
        // Read before the chunk, which it trims.
        let head = self.head(counts, client_id)?;
        let chunk = match self.open.entry((client_id, number)) {
            Entry::Occupied(open) => open.into_mut(),
            Entry::Vacant(vacant) => {
                let stored = queues
                    .get(queue_key(client_id, number).as_slice())
                    .map_err(io)?;
                let chunk = match stored {
                    Some(value) => {
                        let mut value = ChunkValue::read(value.value())?;
                        let (head_number, head_place) = chunk_of(head);
                        if head_number > number {
                            value = ChunkValue::empty();
                        } else if head_number == number {
                            value.forget_below(head_place)?;
                        }
                        Chunk {
                            // One left with nothing above the head goes.
                            changed: value.is_empty(),
                            value,
                            stored: true,
                        }
                    }
                    None => Chunk {
                        value: ChunkValue::empty(),
                        stored: false,
                        changed: false,
                    },
                };
                let lowest = self.lowest_open.entry(client_id).or_insert(number);
                *lowest = (*lowest).min(number);
                vacant.insert(chunk)
            }
        };
        Ok((chunk, place))
    }

    /// Moves `client_id`'s head up to chunk `number` when no chunk before it holds an entry
    /// (a session whose first entries came and went within their groups never stored them);
    /// says whether the head is in chunk `number` now.
    fn catch_up(
        &mut self,
        queues: &QueueTable<'_>,
        client_id: &'c str,
        head: u64,
        number: u64,
    ) -> Result<bool, StoreError> {
        let head_number = chunk_of(head).0;
        if head_number == number {
            return Ok(true);
        }
        let Some(state) = self.heads.get(client_id) else {
            return Ok(false);
        };
        if head_number > number
            || state.stuck
            || self
                .lowest_open
                .get(client_id)
                .is_some_and(|lowest| *lowest < number)
        {
            return Ok(false);
        }
        let from = queue_key(client_id, head_number);
        let to = queue_key(client_id, number);
        let caught_up = queues
            .range(from.as_slice()..to.as_slice())
            .map_err(io)?
            .next()
            .is_none();
        if let Some(head) = self.heads.get_mut(client_id) {
            if caught_up {
                head.now = number * ENTRIES_PER_CHUNK;
            } else {
                // Not again in this group: the chunk found stays until a later one.
                head.stuck = true;
            }
        }
        Ok(caught_up)
    }

    /// Counts a removed entry out of its message and its session's size.
    fn removed(&mut self, client_id: &'c str, (message, bytes): RemovedEntry) {
        *self.references.entry(message).or_default() -= 1;
        self.released.insert(message);
        let size = self.sizes.entry(client_id).or_default();
        size.0 -= 1;
        size.1 -= i64::from(bytes);
    }

    /// Adds an entry, or replaces the one with its number.
    fn add(
        &mut self,
        queues: &QueueTable<'_>,
        counts: &CountsTable<'_>,
        client_id: &'c str,
        seq: u64,
        entry: &QueueEntry,
    ) -> Result<(), StoreError> {
        let (chunk, place) = self.chunk(queues, counts, client_id, seq)?;
        chunk.changed = true;
        if let Some(old) = chunk.value.insert(place, entry)? {
            self.removed(client_id, old);
        }
        *self.references.entry(entry.message).or_default() += 1;
        let size = self.sizes.entry(client_id).or_default();
        size.0 += 1;
        size.1 += i64::from(entry.size);
        Ok(())
    }

    /// Updates an entry still queued: an update racing its deletion must not revive it.
    fn update(
        &mut self,
        queues: &QueueTable<'_>,
        counts: &CountsTable<'_>,
        client_id: &'c str,
        seq: u64,
        entry: &QueueEntry,
    ) -> Result<(), StoreError> {
        let (chunk, place) = self.chunk(queues, counts, client_id, seq)?;
        if chunk.value.update(place, entry)? {
            chunk.changed = true;
        }
        Ok(())
    }

    /// Deletes an entry. The queue's first entry (a draining session's acknowledgement) moves
    /// the head past it and leaves its chunk unwritten: the head is in the session's counts,
    /// which the group writes anyway. A chunk it empties goes now if it is the queue's tail,
    /// else with the sweep of the chunks below the head.
    fn delete(
        &mut self,
        queues: &QueueTable<'_>,
        counts: &CountsTable<'_>,
        client_id: &'c str,
        seq: u64,
    ) -> Result<(), StoreError> {
        let head = self.head(counts, client_id)?;
        if seq < head {
            return Ok(());
        }
        let number = chunk_of(seq).0;
        let (chunk, place) = self.chunk(queues, counts, client_id, seq)?;
        let first = chunk.value.first_place() == Some(place);
        let Some(old) = chunk.value.remove(place)? else {
            return Ok(());
        };
        let next = chunk.value.first_place();
        // Emptied before its last place, it is the queue's tail: entries added later go into
        // it, above the head, which stays in it. It is removed now, not swept: the sweep takes
        // only chunks below the head's.
        if !first || (next.is_none() && u64::from(place) + 1 < ENTRIES_PER_CHUNK) {
            chunk.changed = true;
        }
        if first {
            // One emptied at its last place stays below the head until it is swept with its
            // neighbours (see `SWEEP_CHUNKS`).
            if self.catch_up(queues, client_id, head, number)? {
                if let Some(head) = self.heads.get_mut(client_id) {
                    // Past the deleted entry only, when nothing follows it yet: the numbers
                    // after it are those of entries still to come.
                    head.now = match next {
                        Some(next) => number * ENTRIES_PER_CHUNK + u64::from(next),
                        None => seq + 1,
                    };
                }
            } else if let Some(chunk) = self.open.get_mut(&(client_id, number)) {
                chunk.changed = true;
            }
        }
        self.removed(client_id, old);
        Ok(())
    }

    /// Removes every chunk of a session, counting their entries out of their messages. Its
    /// size goes with its record, so its changes in the group are forgotten.
    fn delete_session(
        &mut self,
        queues: &mut QueueTable<'_>,
        counts: &CountsTable<'_>,
        client_id: &'c str,
    ) -> Result<(), StoreError> {
        // What the group did to its chunks so far goes to the database first, so that every
        // entry is counted out once, from there; those below the head were counted out when
        // it passed them.
        let head = self.head(counts, client_id)?;
        let mut own = Chunks {
            open: self
                .open
                .extract_if(|(client, _), _| *client == client_id)
                .collect(),
            ..Chunks::default()
        };
        own.write_all(queues)?;
        self.sizes.remove(client_id);
        self.heads.remove(client_id);
        self.lowest_open.remove(client_id);
        let (start, end) = session_range(client_id);
        let removed = queues
            .extract_if(start.as_slice()..end.as_slice(), |_, _| true)
            .map_err(io)?;
        for item in removed {
            let (key, value) = item.map_err(io)?;
            let first = number_of(key.value())? * ENTRIES_PER_CHUNK;
            for entry in decode_chunk(value.value())? {
                let (place, entry) = entry?;
                if first + u64::from(place) >= head {
                    *self.references.entry(entry.message).or_default() -= 1;
                    self.released.insert(entry.message);
                }
            }
        }
        Ok(())
    }

    /// Writes the changed chunks, in key order, and removes those left empty.
    fn write_all(&mut self, queues: &mut QueueTable<'_>) -> Result<(), StoreError> {
        let mut changed: Vec<((&str, u64), Chunk)> = self
            .open
            .drain()
            .filter(|(_, chunk)| chunk.changed)
            .collect();
        changed.sort_unstable_by_key(|(key, _)| *key);
        for ((client_id, number), chunk) in changed {
            let key = queue_key(client_id, number);
            if !chunk.value.is_empty() {
                queues
                    .insert(key.as_slice(), chunk.value.as_bytes())
                    .map_err(io)?;
            } else if chunk.stored {
                queues.remove(key.as_slice()).map_err(io)?;
            }
        }
        Ok(())
    }
}

/// Which changes of a group need not touch the database: a queue entry added, then deleted
/// within the group (with the updates between), as when an online subscriber acknowledges a
/// message before the commit that stores it; and the updates of an entry deleted later in the
/// group, as when a reconnected session's stored messages go in flight and are acknowledged.
/// Each would be a B-tree write: a message to a persistent session makes three (added, in
/// flight, deleted), one drained from the store two.
fn cancelled(changes: &[Change]) -> Vec<bool> {
    /// An entry touched in this group and not deleted yet: where it was added, if it was, and
    /// its updates since.
    #[derive(Default)]
    struct Touched {
        added: Option<usize>,
        updates: Vec<usize>,
    }
    let mut skip = vec![false; changes.len()];
    let mut touched: FxHashMap<(&str, u64), Touched> = FxHashMap::default();
    // Entries added over an entry already touched (a replacement): left to `apply` as they are.
    let mut replaced: FxHashSet<(&str, u64)> = FxHashSet::default();
    for (at, change) in changes.iter().enumerate() {
        match change {
            Change::AddEntry { client_id, seq, .. } => {
                let key = (&**client_id, *seq);
                if replaced.contains(&key) || touched.remove(&key).is_some() {
                    replaced.insert(key);
                } else {
                    let added = Some(at);
                    touched.insert(
                        key,
                        Touched {
                            added,
                            ..Touched::default()
                        },
                    );
                }
            }
            Change::UpdateEntry { client_id, seq, .. } => {
                let key = (&**client_id, *seq);
                if !replaced.contains(&key) {
                    touched.entry(key).or_default().updates.push(at);
                }
            }
            Change::DeleteEntry { client_id, seq } => {
                if let Some(entry) = touched.remove(&(&**client_id, *seq)) {
                    for update in entry.updates {
                        skip[update] = true;
                    }
                    if let Some(added) = entry.added {
                        skip[added] = true;
                        skip[at] = true;
                    }
                }
            }
            Change::DeleteSession(client_id) => {
                // Its entries go with it, by range: none of them is paired past this point.
                touched.retain(|(client, _), _| *client != &**client_id);
            }
            _ => {}
        }
    }
    // A message put in this group whose every entry came and went within it (an online
    // subscriber acknowledged it before the commit) would be written and removed in the same
    // transaction: it is not written at all. Its entries are all in its group (routing writes
    // one message in one `Store::begin_group`), so none comes later.
    let mut kept: FxHashMap<MessageId, bool> = FxHashMap::default();
    for (at, change) in changes.iter().enumerate() {
        if let Change::AddEntry { entry, .. } = change {
            *kept.entry(entry.message).or_default() |= !skip[at];
        }
    }
    for (at, change) in changes.iter().enumerate() {
        if let Change::PutMessage(id, _) = change
            && kept.get(id) == Some(&false)
        {
            skip[at] = true;
        }
    }
    skip
}

impl Store for DiskStore {
    fn load(&self) -> Result<Loaded, StoreError> {
        self.shared.decoded.clear();
        let now = SystemTime::now();
        let txn = self.shared.begin_read()?;
        let sessions = txn.open_table(SESSIONS).map_err(io)?;
        let messages = txn.open_table(MESSAGES).map_err(io)?;
        let queues = txn.open_table(QUEUES).map_err(io)?;
        let counts = txn.open_table(COUNTS).map_err(io)?;
        let inbound = txn.open_table(INBOUND).map_err(io)?;
        let retained = txn.open_table(RETAINED).map_err(io)?;
        let cursors = txn.open_table(CURSORS).map_err(io)?;
        let mut expired = Vec::new();
        let mut loaded = Loaded::default();
        for item in sessions.iter().map_err(io)? {
            let (key, value) = item.map_err(io)?;
            let client_id = key.value();
            let record = decode_session(client_id, value.value())?;
            if session_expired(&record, now) {
                expired.push(Change::DeleteSession(client_id.into()));
                continue;
            }
            let stored = stored_counts(&counts, client_id)?;
            let (start, end) = session_range(client_id);
            let next_seq = match queues
                .range(start.as_slice()..end.as_slice())
                .map_err(io)?
                .next_back()
            {
                Some(item) => {
                    let (key, value) = item.map_err(io)?;
                    let place = last_place(value.value())?
                        .ok_or_else(|| StoreError::Corrupt("an empty queue chunk".into()))?;
                    number_of(key.value())? * ENTRIES_PER_CHUNK + u64::from(place) + 1
                }
                None => 0,
            }
            .max(stored.head);
            let mut ids = Vec::new();
            for item in inbound
                .range(start.as_slice()..end.as_slice())
                .map_err(io)?
            {
                ids.push(packet_id_of(item.map_err(io)?.0.value())?);
            }
            loaded.sessions.push(LoadedSession {
                record,
                inbound: ids,
                queue_len: stored.len,
                queue_bytes: stored.bytes,
                next_seq,
            });
        }
        for item in retained.iter().map_err(io)? {
            let (key, value) = item.map_err(io)?;
            let message = decode_message(value.value())?;
            if message_expired(&message, now) {
                if let Some(topic) = &message.publish.topic {
                    expired.push(Change::DeleteRetained(topic.clone()));
                }
                continue;
            }
            debug_assert_eq!(message.publish.topic.as_deref(), Some(key.value()));
            loaded.retained.push(message);
        }
        for item in cursors.iter().map_err(io)? {
            let (name, position) = item.map_err(io)?;
            loaded
                .cursors
                .insert(name.value().to_owned(), position.value());
        }
        loaded.next_message_id = match messages.last().map_err(io)? {
            Some((key, _)) => key.value() + 1,
            None => 0,
        };
        if !expired.is_empty() {
            // Decided before any change the broker makes once started.
            self.write(expired);
        }
        Ok(loaded)
    }

    fn read_queue(
        &self,
        client_id: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<LoadedEntry>, StoreError> {
        let txn = self.shared.begin_read()?;
        let queues = txn.open_table(QUEUES).map_err(io)?;
        let messages = txn.open_table(MESSAGES).map_err(io)?;
        let counts = txn.open_table(COUNTS).map_err(io)?;
        // The chunk that holds the head may still hold entries below it, which are gone.
        let from_seq = from_seq.max(stored_counts(&counts, client_id)?.head);
        let start = queue_key(client_id, chunk_of(from_seq).0);
        let (_, end) = session_range(client_id);
        let mut page = Vec::with_capacity(limit.min(1024));
        let mut chunks = queues.range(start.as_slice()..end.as_slice()).map_err(io)?;
        // Checked before the next chunk is read: a page that ends with a chunk (as a page of
        // 64 from a multiple of 64 does) reads no leaf of the B-tree past it.
        'chunks: while page.len() < limit {
            let Some(item) = chunks.next() else {
                break;
            };
            let (key, value) = item.map_err(io)?;
            let first = number_of(key.value())? * ENTRIES_PER_CHUNK;
            for entry in decode_chunk(value.value())? {
                let (place, entry) = entry?;
                let seq = first + u64::from(place);
                if seq < from_seq {
                    continue;
                }
                if page.len() >= limit {
                    break 'chunks;
                }
                page.push((seq, entry));
            }
        }
        let mut shared = self
            .shared
            .decoded
            .get(page.iter().map(|(_, entry)| entry.message));
        let mut decoded: FxHashMap<MessageId, Arc<StoredMessage>> = FxHashMap::default();
        let mut entries = Vec::with_capacity(page.len());
        for ((seq, entry), cached) in page.into_iter().zip(&mut shared) {
            let message = match cached.take() {
                Some(message) => message,
                None => match decoded.get(&entry.message) {
                    Some(message) => message.clone(),
                    None => {
                        let Some(value) = messages.get(entry.message).map_err(io)? else {
                            return Err(StoreError::Corrupt(format!(
                                "queue entry of {client_id} refers to message {} that is gone",
                                entry.message
                            )));
                        };
                        let message = Arc::new(decode_message(value.value())?);
                        decoded.insert(entry.message, message.clone());
                        message
                    }
                },
            };
            entries.push(LoadedEntry {
                seq,
                entry,
                message,
            });
        }
        self.shared.decoded.put(decoded);
        Ok(entries)
    }

    fn write(&self, changes: Vec<Change>) -> Ticket {
        let (ticket, writer_idle) = {
            let mut pending = lock(&self.shared.pending);
            if changes.is_empty() {
                // Nothing to commit: a barrier on every earlier write, which is that write's
                // ticket. A ticket of its own would wait for a commit that nothing triggers.
                return Ticket(pending.last_ticket);
            }
            let acks = changes.iter().all(is_acknowledgement);
            pending.acks_only = (pending.acks_only || pending.changes.is_empty()) && acks;
            pending.changes.extend(changes);
            pending.last_ticket += 1;
            (
                pending.last_ticket,
                pending.writer_idle
                    || (pending.gathering && pending.changes.len() >= GATHER_CHANGES),
            )
        };
        if writer_idle {
            self.shared.arrived.notify_one();
        }
        Ticket(ticket)
    }

    fn stats(&self) -> Option<StoreStats> {
        Some(Self::stats(self))
    }

    fn begin_group(&self) {
        let mut pending = lock(&self.shared.pending);
        while pending.draining {
            pending = self
                .shared
                .gate
                .wait(pending)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        pending.open_groups += 1;
    }

    fn end_group(&self) {
        let mut pending = lock(&self.shared.pending);
        pending.open_groups = pending.open_groups.saturating_sub(1);
        if pending.open_groups == 0 && pending.draining {
            drop(pending);
            self.shared.gate.notify_all();
        }
    }

    fn taken(&self, ticket: Ticket) -> BoxFuture<'static, ()> {
        let mut taken = self.shared.taken.subscribe();
        if ticket.0 > *taken.borrow() {
            self.shared.await_writer(&self.shared.awaited, ticket.0);
        }
        Box::pin(async move {
            // Closed: the store is gone, and nothing waits in its queue any more.
            let _ = taken.wait_for(|taken| *taken >= ticket.0).await;
        })
    }

    fn committed(&self, ticket: Ticket) -> BoxFuture<'static, ()> {
        let mut committed = self.shared.committed.subscribe();
        if ticket.0 > *committed.borrow() {
            self.shared
                .await_writer(&self.shared.commit_awaited, ticket.0);
        }
        Box::pin(async move {
            // Closed: the store is gone, and nothing waits in its queue any more.
            let _ = committed.wait_for(|committed| *committed >= ticket.0).await;
        })
    }

    fn durable(&self, ticket: Ticket) -> BoxFuture<'static, Result<(), StoreError>> {
        let shared = self.shared.clone();
        let mut decided = self.shared.decided.subscribe();
        if ticket.0 > *decided.borrow() {
            self.shared.want_durable(ticket.0);
        }
        Box::pin(async move {
            if decided
                .wait_for(|decided| *decided >= ticket.0)
                .await
                .is_err()
            {
                return Err(StoreError::Closed);
            }
            match shared.failure_of(ticket.0) {
                Some(error) => Err(error),
                None => Ok(()),
            }
        })
    }
}

#[cfg(test)]
mod model_tests;

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use futures::FutureExt;
    use rallymq_codec::{Publish, TopicName};

    use super::DiskStore;
    use crate::store::{Change, Store, StoredMessage};

    fn retained(topic: &str) -> Change {
        Change::PutRetained(Arc::new(StoredMessage {
            publish: Publish::new(TopicName::new(topic).expect("a valid topic"), "x"),
            received_at: SystemTime::now(),
        }))
    }

    fn entry(message: u64) -> crate::store::QueueEntry {
        crate::store::QueueEntry {
            message,
            qos: rallymq_codec::QoS::AtLeastOnce,
            retain: false,
            subscription_ids: Vec::new(),
            in_flight: None,
            size: 1,
        }
    }

    /// A message whose only entry came and went in the group is not written; one with an
    /// entry left is, and so is one whose entries come in a later group.
    #[test]
    fn a_message_whose_entries_all_cancel_in_the_group_is_not_written() {
        let client: Arc<str> = "c".into();
        let put = |id| {
            Change::PutMessage(
                id,
                Arc::new(StoredMessage {
                    publish: Publish::new(TopicName::new("t").expect("a valid topic"), "x"),
                    received_at: SystemTime::now(),
                }),
            )
        };
        let add = |seq, message| Change::AddEntry {
            client_id: client.clone(),
            seq,
            entry: entry(message),
        };
        let delete = |seq| Change::DeleteEntry {
            client_id: client.clone(),
            seq,
        };
        let changes = vec![
            put(1),
            add(0, 1),
            put(2),
            add(1, 2),
            add(2, 2),
            put(3),
            delete(0),
            delete(1),
        ];
        assert_eq!(
            super::cancelled(&changes),
            [true, true, false, true, false, false, true, true]
        );
    }

    /// A store of format 1 (a B-tree value per queue entry) opens in the current format: its
    /// queues are in chunks, read, counted and numbered as before, and deleting their entries
    /// releases their messages.
    #[tokio::test]
    async fn a_format_1_store_is_upgraded_with_its_queues_whole() {
        use redb::ReadableTableMetadata;

        use super::{COUNTS, MESSAGES, META, QUEUES, QUEUES_FORMAT_1, SESSIONS};
        use crate::store::SessionRecord;
        use crate::store::record::{encode_entry, encode_message, encode_session, queue_key};

        let temp = rallymq_test_support::TempDir::new("disk-format-1");
        let dir = temp.path();
        std::fs::create_dir_all(dir).expect("made");
        let message = |payload: &'static str| StoredMessage {
            publish: Publish::new(TopicName::new("t").expect("a valid topic"), payload),
            received_at: SystemTime::now(),
        };
        // Session "a": entries 3..=70 and 100 to message 1 (chunks 0 and 1), 200 to message 2
        // (chunk 3); session "b": entry 0 to message 2.
        let a_seqs: Vec<u64> = (3..=70).chain([100, 200]).collect();
        {
            let db = redb::Database::create(dir.join(super::FILE)).expect("created");
            let txn = db.begin_write().expect("begins");
            {
                txn.open_table(META)
                    .expect("opens")
                    .insert("format", 1)
                    .expect("inserts");
                let mut sessions = txn.open_table(SESSIONS).expect("opens");
                let mut messages = txn.open_table(MESSAGES).expect("opens");
                let mut queues = txn.open_table(QUEUES_FORMAT_1).expect("opens");
                let mut counts = txn.open_table(COUNTS).expect("opens");
                for client_id in ["a", "b"] {
                    let record = SessionRecord {
                        client_id: client_id.into(),
                        expiry_interval: u32::MAX,
                        disconnected_at: None,
                        subscriptions: Vec::new(),
                        will: None,
                    };
                    sessions
                        .insert(client_id, encode_session(&record).as_slice())
                        .expect("inserts");
                }
                messages
                    .insert(1, encode_message(69, &message("one")).as_slice())
                    .expect("inserts");
                messages
                    .insert(2, encode_message(2, &message("two")).as_slice())
                    .expect("inserts");
                for seq in &a_seqs {
                    let id = if *seq == 200 { 2 } else { 1 };
                    queues
                        .insert(
                            queue_key("a", *seq).as_slice(),
                            encode_entry(&entry(id)).as_slice(),
                        )
                        .expect("inserts");
                }
                queues
                    .insert(
                        queue_key("b", 0).as_slice(),
                        encode_entry(&entry(2)).as_slice(),
                    )
                    .expect("inserts");
                // Format 1 and 2 counts: length and bytes, no head.
                let counts_of = |len: u64| [len.to_be_bytes(), len.to_be_bytes()].concat();
                counts
                    .insert("a", counts_of(70).as_slice())
                    .expect("inserts");
                counts
                    .insert("b", counts_of(1).as_slice())
                    .expect("inserts");
            }
            txn.commit().expect("commits");
        }
        let store = DiskStore::open(dir).expect("the format 1 store opens");
        let loaded = store.load().expect("loads");
        let session = |client_id: &str| {
            loaded
                .sessions
                .iter()
                .find(|session| session.record.client_id == client_id)
                .map(|session| (session.queue_len, session.next_seq))
        };
        assert_eq!(session("a"), Some((70, 201)));
        assert_eq!(session("b"), Some((1, 1)));
        let read = store.read_queue("a", 0, 1000).expect("reads");
        let seqs: Vec<u64> = read.iter().map(|loaded| loaded.seq).collect();
        assert_eq!(seqs, a_seqs);
        assert_eq!(read[0].message.publish.payload, "one");
        assert_eq!(read[69].message.publish.payload, "two");
        let from: Vec<u64> = store
            .read_queue("a", 64, 5)
            .expect("reads")
            .iter()
            .map(|loaded| loaded.seq)
            .collect();
        assert_eq!(from, [64, 65, 66, 67, 68]);
        {
            let txn = store.shared.begin_read().expect("reads");
            assert!(
                txn.open_table(QUEUES_FORMAT_1).is_err(),
                "the format 1 table is gone"
            );
            let chunks = txn.open_table(QUEUES).expect("opens");
            assert_eq!(
                chunks.len().expect("counts"),
                4,
                "chunks 0, 1 and 3 of a, 0 of b"
            );
        }
        let client: Arc<str> = "a".into();
        let deletes: Vec<Change> = a_seqs
            .iter()
            .filter(|seq| **seq != 200)
            .map(|seq| Change::DeleteEntry {
                client_id: client.clone(),
                seq: *seq,
            })
            .collect();
        let ticket = store.write(deletes);
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(10), store.durable(ticket)).await,
            Ok(Ok(()))
        );
        drop(store);
        let store = DiskStore::open(dir).expect("reopens");
        let loaded = store.load().expect("loads");
        assert_eq!(loaded.next_message_id, 3, "message 2 is still queued");
        assert_eq!(
            super::model_tests::stored_references(&store),
            std::collections::BTreeMap::from([(2, 2)]),
            "message 1 is released; message 2's count is taken from in front of it"
        );
        drop(store);
    }

    /// A message identifier counted again from a lower one after `load` (a broker starting anew
    /// on the same store, its last messages gone) reads the message stored under it now, not
    /// the one read under it before.
    #[tokio::test]
    async fn a_message_id_used_again_after_load_reads_the_new_message() {
        let temp = rallymq_test_support::TempDir::new("disk-decoded");
        let dir = temp.path();
        let store = DiskStore::open(dir).expect("the store opens");
        let client: Arc<str> = "c".into();
        let commit = |changes| {
            let ticket = store.write(changes);
            tokio::time::timeout(Duration::from_secs(10), store.durable(ticket))
        };
        let queue = |seq, payload: &'static str| {
            let message = StoredMessage {
                publish: Publish::new(TopicName::new("t").expect("a valid topic"), payload),
                received_at: SystemTime::now(),
            };
            vec![
                Change::PutMessage(7, Arc::new(message)),
                Change::AddEntry {
                    client_id: client.clone(),
                    seq,
                    entry: entry(7),
                },
            ]
        };
        assert_eq!(commit(queue(0, "first")).await, Ok(Ok(())));
        let read = store.read_queue(&client, 0, 10).expect("reads");
        assert_eq!(read[0].message.publish.payload, "first");
        let deleted = vec![Change::DeleteEntry {
            client_id: client.clone(),
            seq: 0,
        }];
        assert_eq!(commit(deleted).await, Ok(Ok(())));
        let loaded = store.load().expect("loads");
        assert_eq!(loaded.next_message_id, 0, "message 7 is gone");
        assert_eq!(commit(queue(1, "second")).await, Ok(Ok(())));
        let read = store.read_queue(&client, 0, 10).expect("reads");
        assert_eq!(read.len(), 1);
        assert_eq!(
            (read[0].seq, &read[0].message.publish.payload[..]),
            (1, &b"second"[..])
        );
        drop(store);
    }

    /// A store that closes with much of its file free (a backlog that was delivered) gives the
    /// space back, and what it still holds is whole when it opens again; one with too much or
    /// too many rows still in use is left as it is.
    #[test]
    fn a_store_that_closes_with_much_free_and_little_in_use_gives_its_space_back() {
        // Megabytes, not the hundreds a real store takes.
        const FREE: u64 = 2 << 20;
        const IN_USE: u64 = 8 << 20;
        const ROWS: u64 = 20;
        let dir = rallymq_test_support::TempDir::new("compact");
        let file = dir.path().join(super::FILE);
        let file_bytes = || std::fs::metadata(&file).expect("the file is there").len();
        let open = || {
            let at = super::CompactAt {
                free: FREE,
                in_use: IN_USE,
                rows: ROWS,
            };
            DiskStore::open_with(dir.path(), super::DURABLE_EVERY, at).expect("the store opens")
        };
        let topic = |i: usize| TopicName::new(format!("big/{i}")).expect("a valid topic");
        let big = |i: usize| {
            Change::PutRetained(Arc::new(StoredMessage {
                publish: Publish::new(topic(i), vec![i as u8; 1 << 20]),
                received_at: SystemTime::now(),
            }))
        };
        let delete = |topics: &mut dyn Iterator<Item = TopicName>| {
            let store = open();
            store.write(topics.map(Change::DeleteRetained).collect());
        };
        let topics = || {
            let store = open();
            let mut topics: Vec<String> = store
                .load()
                .expect("loads")
                .retained
                .iter()
                .filter_map(|message| message.publish.topic.as_ref().map(|t| t.to_string()))
                .collect();
            topics.sort();
            (store, topics)
        };
        // One close each, so that the later ones lie past the earlier ones in the file: the
        // first ones freed leave the rest where it is, and the file as long.
        for range in [0..3, 3..14] {
            open().write(range.map(big).collect());
        }

        let full = file_bytes();
        assert!(full >= 14 << 20, "{full} bytes after writing 14 MiB");

        // 8 of 14 freed: more than `FREE`, but more than `IN_USE` still in use.
        delete(&mut (0..8).map(topic));
        assert_eq!(file_bytes(), full, "compacted with more than IN_USE in use");

        // 12 of 14 freed, but more than `ROWS` rows: small values, still in use.
        let small = |i: usize| format!("small/{i}");
        open().write((0..ROWS as usize).map(|i| retained(&small(i))).collect());
        delete(&mut (8..12).map(topic));
        assert_eq!(file_bytes(), full, "compacted with more than ROWS rows");

        // The small ones gone too: the space goes back; the last two big ones stay where they
        // are, past it.
        delete(&mut (0..ROWS as usize).map(|i| TopicName::new(small(i)).expect("valid")));
        let compacted = file_bytes();
        assert!(compacted < full / 3, "{compacted} bytes left of {full}");

        // What it holds is whole, and it takes writes as before.
        let (store, kept) = topics();
        assert_eq!(kept, ["big/12", "big/13"]);
        store.write(vec![retained("after")]);
        drop(store);
        assert_eq!(topics().1, ["after", "big/12", "big/13"]);
    }

    /// The writes of one group are committed together: none while the group is open (a crash
    /// then keeps none of them), all in one transaction once it closes.
    /// `taken` follows the writer, not the write: changes held back by an open group are not
    /// taken; once the group closes they are, and (with nothing slowing the commit) become
    /// durable too.
    #[tokio::test]
    async fn changes_are_taken_when_the_writer_takes_them() {
        let temp = rallymq_test_support::TempDir::new("disk-taken");
        let dir = temp.path();
        let store = DiskStore::open(dir).expect("the store opens");
        store.begin_group();
        let ticket = store.write(vec![retained("a")]);
        let early = tokio::time::timeout(Duration::from_millis(300), store.taken(ticket)).await;
        assert!(early.is_err(), "taken while its group was open");
        store.end_group();
        tokio::time::timeout(Duration::from_secs(10), store.taken(ticket))
            .await
            .expect("taken once the group closed");
        tokio::time::timeout(Duration::from_secs(10), store.durable(ticket))
            .await
            .expect("committed")
            .expect("the commit succeeds");
        drop(store);
    }

    #[tokio::test]
    async fn a_group_of_writes_is_committed_whole() {
        let temp = rallymq_test_support::TempDir::new("disk-group");
        let dir = temp.path();
        let store = DiskStore::open(dir).expect("the store opens");
        let syncs_at_open = store.stats().syncs;
        store.begin_group();
        let first = store.write(vec![retained("a")]);
        let early = tokio::time::timeout(Duration::from_millis(300), store.durable(first)).await;
        assert!(
            early.is_err(),
            "committed while its group was open: {early:?}"
        );
        let second = store.write(vec![retained("b")]);
        store.end_group();
        tokio::time::timeout(Duration::from_secs(10), store.durable(second))
            .await
            .expect("committed once the group closed")
            .expect("the commit succeeds");
        let stats = store.stats();
        assert_eq!((stats.commits, stats.changes), (1, 2));
        assert_eq!(stats.commit_seconds.iter().sum::<u64>(), 1, "{stats:?}");
        assert!(stats.commit_time > Duration::ZERO, "{stats:?}");
        assert!(stats.syncs > syncs_at_open, "the commit synced: {stats:?}");
        drop(store);
    }

    /// Groups that keep overlapping on other threads do not hold commits back for ever: a
    /// commit waits for the groups open when it starts, and new ones wait for it.
    #[tokio::test]
    async fn overlapping_groups_do_not_starve_commits() {
        let temp = rallymq_test_support::TempDir::new("disk-starve");
        let dir = temp.path();
        let store = Arc::new(DiskStore::open(dir).expect("the store opens"));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers: Vec<_> = (0..2)
            .map(|n| {
                let (store, stop) = (store.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        store.begin_group();
                        store.write(vec![retained(&format!("w{n}"))]);
                        // Each group stays open a while, and the two overlap.
                        std::thread::sleep(Duration::from_millis(2));
                        store.end_group();
                    }
                })
            })
            .collect();
        for _ in 0..5 {
            let ticket = store.write(vec![retained("outside")]);
            let result = tokio::time::timeout(Duration::from_secs(10), store.durable(ticket)).await;
            assert!(matches!(result, Ok(Ok(()))), "{result:?}");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for writer in writers {
            writer.join().expect("the writer thread ends");
        }
        drop(store);
    }

    /// Stores message 1 and its entry 0 in "c"'s queue, durably; returns the acknowledgement of
    /// that entry, a change that may be committed without a sync.
    async fn queued(store: &DiskStore) -> Vec<Change> {
        let client: Arc<str> = "c".into();
        let message = StoredMessage {
            publish: Publish::new(TopicName::new("t").expect("a valid topic"), "x"),
            received_at: SystemTime::now(),
        };
        let ticket = store.write(vec![
            Change::PutMessage(1, Arc::new(message)),
            Change::AddEntry {
                client_id: client.clone(),
                seq: 0,
                entry: entry(1),
            },
        ]);
        let durable = tokio::time::timeout(Duration::from_secs(10), store.durable(ticket)).await;
        assert_eq!(durable, Ok(Ok(())), "stored");
        vec![Change::DeleteEntry {
            client_id: client,
            seq: 0,
        }]
    }

    /// A commit of acknowledgements nobody waits durable for is visible at once and costs no
    /// sync; `durable` on its ticket then makes the writer run a durable commit (empty: nothing
    /// else came), which syncs.
    #[tokio::test]
    async fn a_non_durable_commit_becomes_durable_when_a_waiter_asks() {
        let temp = rallymq_test_support::TempDir::new("disk-asked");
        let dir = temp.path();
        // No bound on its age within the test: only the waiter makes it durable.
        let store = DiskStore::open_bounded(dir, Duration::from_secs(3600)).expect("opens");
        let acknowledged = queued(&store).await;
        let before = store.stats();
        let ticket = store.write(acknowledged);
        tokio::time::timeout(Duration::from_secs(10), store.committed(ticket))
            .await
            .expect("committed");
        let committed = store.stats();
        assert_eq!(
            (
                committed.commits,
                committed.durable_commits,
                committed.syncs
            ),
            (before.commits + 1, before.durable_commits, before.syncs),
            "committed without a sync: {committed:?}"
        );
        let read = store.read_queue("c", 0, 10).expect("reads");
        assert!(read.is_empty(), "a reader sees the non-durable commit");
        assert_eq!(
            store.durable(ticket).now_or_never(),
            None,
            "not durable before a waiter asked"
        );
        tokio::time::timeout(Duration::from_secs(10), store.durable(ticket))
            .await
            .expect("made durable once asked")
            .expect("the commit succeeds");
        let durable = store.stats();
        assert_eq!(
            durable.commits,
            before.commits + 2,
            "an empty durable commit"
        );
        assert_eq!(durable.durable_commits, before.durable_commits + 1);
        assert!(durable.syncs > committed.syncs, "it synced: {durable:?}");
        drop(store);
    }

    /// Changes someone waits durable for when the writer takes them are committed durably at
    /// once, not in a non-durable commit followed by a durable one.
    #[tokio::test]
    async fn a_commit_with_a_durable_waiter_is_durable() {
        let temp = rallymq_test_support::TempDir::new("disk-waited");
        let dir = temp.path();
        let store = DiskStore::open_bounded(dir, Duration::from_secs(3600)).expect("opens");
        let acknowledged = queued(&store).await;
        let before = store.stats();
        // Held back by an open group until the waiter has asked.
        store.begin_group();
        let ticket = store.write(acknowledged);
        let durable = store.durable(ticket);
        store.end_group();
        tokio::time::timeout(Duration::from_secs(10), durable)
            .await
            .expect("durable")
            .expect("the commit succeeds");
        let after = store.stats();
        assert_eq!(
            (after.commits, after.durable_commits),
            (before.commits + 1, before.durable_commits + 1),
            "one commit, durable: {after:?}"
        );
        assert!(after.syncs > before.syncs, "it synced: {after:?}");
        drop(store);
    }

    /// A commit of anything but acknowledgements and in-flight marks (here a retained message)
    /// is durable though nobody waits for it yet: its waiter nearly always comes.
    #[tokio::test]
    async fn a_commit_of_other_changes_is_durable_without_a_waiter() {
        let temp = rallymq_test_support::TempDir::new("disk-other");
        let dir = temp.path();
        let store = DiskStore::open_bounded(dir, Duration::from_secs(3600)).expect("opens");
        let before = store.stats();
        let ticket = store.write(vec![retained("a")]);
        tokio::time::timeout(Duration::from_secs(10), store.committed(ticket))
            .await
            .expect("committed");
        let after = store.stats();
        assert_eq!(
            (after.commits, after.durable_commits),
            (before.commits + 1, before.durable_commits + 1),
            "{after:?}"
        );
        assert_eq!(store.durable(ticket).now_or_never(), Some(Ok(())));
        drop(store);
    }

    /// With nobody waiting, a commit is durable at the latest the bound after the last durable
    /// one: the writer, idle, runs an empty durable commit once the bound has passed.
    #[tokio::test]
    async fn what_nobody_waits_for_is_durable_within_the_bound() {
        let temp = rallymq_test_support::TempDir::new("disk-bound");
        let dir = temp.path();
        let store = DiskStore::open_bounded(dir, Duration::from_millis(200)).expect("opens");
        let acknowledged = queued(&store).await;
        let before = store.stats();
        let ticket = store.write(acknowledged);
        // Polled, not awaited: `durable` would ask for it.
        let mut polls = 0;
        while *store.shared.decided.borrow() < ticket.0 {
            polls += 1;
            assert!(
                polls < 200,
                "not durable 10 s after its write: {:?}",
                store.stats()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let after = store.stats();
        assert!(
            after.durable_commits > before.durable_commits,
            "a durable commit: {after:?}"
        );
        assert!(after.syncs > before.syncs, "it synced: {after:?}");
        assert_eq!(store.durable(ticket).now_or_never(), Some(Ok(())));
        drop(store);
    }

    /// A non-durable commit survives the store's close: the close commits durably.
    #[tokio::test]
    async fn a_non_durable_commit_is_durable_after_close() {
        let temp = rallymq_test_support::TempDir::new("disk-close");
        let dir = temp.path();
        let store = DiskStore::open_bounded(dir, Duration::from_secs(3600)).expect("opens");
        let acknowledged = queued(&store).await;
        let durable_commits = store.stats().durable_commits;
        let ticket = store.write(acknowledged);
        tokio::time::timeout(Duration::from_secs(10), store.committed(ticket))
            .await
            .expect("committed");
        let stats = store.stats();
        assert_eq!(stats.durable_commits, durable_commits, "not durable yet");
        let shared = store.shared.clone();
        drop(store);
        assert!(
            shared.syncs.load(std::sync::atomic::Ordering::Relaxed) > stats.syncs,
            "the close synced"
        );
        assert_eq!(*shared.decided.borrow(), ticket.0, "decided at close");
        drop(shared);
        let store = DiskStore::open(dir).expect("opens again");
        let loaded = store.load().expect("loads");
        assert_eq!(loaded.sessions.len(), 0);
        assert!(store.read_queue("c", 0, 10).expect("reads").is_empty());
        drop(store);
    }

    /// `durable` on the ticket of an empty write resolves once everything written before it
    /// is decided: `BrokerHandle::shutdown` waits so for what its connections wrote as they
    /// closed (it waited forever: the writer only woke for changes).
    #[tokio::test]
    async fn an_empty_write_is_durable_once_the_writes_before_it_are() {
        let temp = rallymq_test_support::TempDir::new("disk-empty-write");
        let dir = temp.path();
        let store = DiskStore::open(dir).expect("the store opens");
        let first = store.write(vec![retained("t")]);
        let empty = store.write(Vec::new());
        assert!(empty >= first, "a barrier on the write before it");
        let bound = Duration::from_secs(5);
        let durable = tokio::time::timeout(bound, store.durable(empty)).await;
        assert_eq!(durable, Ok(Ok(())), "decided in time");
        let alone = store.write(Vec::new());
        let durable = tokio::time::timeout(bound, store.durable(alone)).await;
        assert_eq!(durable, Ok(Ok(())), "an empty write after nothing else");
        drop(store);
    }
}
