//! Which embedded store the broker's durable state should live in (issue 13): replays the
//! broker's write pattern against `redb` and `fjall`, both configured so that a commit the tool
//! counts is on disk, and reports what each costs.
//!
//! ```text
//! cargo build --release -p rallymq-benches --bin store_choice
//! target/release/store_choice [--stores redb,fjall] [--rounds 2] [--cases steady,backlog]
//!                             [--fanouts 1,10] [--batches 1,16,256] [--entries 1000000] ...
//! target/release/store_choice crash-check [--stores redb,fjall] [--rounds 6]
//! ```
//!
//! The data model is the one the broker's durable store uses: `messages` (message id, u64
//! big-endian, to a 4-byte reference count and the ~160-byte encoded message), `queue` (client
//! id, 0x00, sequence number u64 big-endian, to a 24-byte entry), `sessions` (client id to ~100
//! bytes) and `retained` (topic to message). A QoS 1 publish matching S persistent subscribers
//! writes the message and S queue entries; each subscriber's acknowledgement deletes its entry
//! and decrements the message's count, deleting the message at zero (a read in the
//! transaction). One message in 20 also replaces a retained message. The broker's single writer
//! commits what arrived during the previous commit as one transaction: B messages per commit.
//!
//! Cases, each run in a fresh child process of this binary (so that memory, bytes written and
//! open times are the step's own), stores alternating from round to round:
//! - **steady**: S subscribers (of a pool of 100) acknowledge each entry one or two commits
//!   after it was written, so entries live briefly; for S in `--fanouts`, B in `--batches`.
//! - **backlog**: 1,000 offline sessions accumulate `--entries` queue entries in commits of 256
//!   messages, then the writer is killed (`SIGKILL`, as a crash would); the database is opened
//!   again with its files dropped from the page cache (the open after a crash), closed, opened
//!   cold again (the open after a clean stop), and each time the first 1,000 entries of one
//!   session are read with their messages (what a restarted broker reads to resume it). Then
//!   every session is drained in order (range scan by client prefix, 256 entries acknowledged
//!   per commit), and the sizes before and after draining and after an explicit compaction
//!   show what space comes back.
//!
//! `crash-check` kills a writer with `SIGKILL` right after a commit returns (or at a random
//! point while it keeps committing), reopens the database and checks that every commit
//! reported done is there, and that the transaction in flight is there whole or not at all.
//! A kill keeps the page cache, so this shows commits leave the process before `commit`
//! returns and that recovery is consistent; that they also reach the disk is the `fsync`
//! each store issues before returning, which `strace` shows (see the benches README).
//!
//! The files go in `store_choice-data/` beside this binary (under `target/`, on disk, not a
//! tmpfs) and are removed after each case. Every loop is bounded by a count and a time.
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::num::NonZeroU64;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fjall::{
    KeyspaceCreateOptions, PersistMode, Readable, SingleWriterTxDatabase, SingleWriterTxKeyspace,
};
use redb::{Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

const USAGE: &str = "\
usage: store_choice [options]               the measurement (children are this binary)
       store_choice crash-check [options]   kill -9 a writer after commits, reopen, verify
options:
  --stores LIST       redb, redb-qr (redb with quick repair), fjall, fjall-8m (fjall
                      with 8 MiB memtables) (redb,fjall)
  --rounds N          runs of each case, stores alternating (2; crash-check: 6)
  --cases LIST        steady, backlog (steady,backlog)
  --fanouts LIST      persistent subscribers per message (1,10)
  --batches LIST      messages per commit in the steady case (1,16,256)
  --entries N         queue entries of the backlog (1000000)
  --sessions N        offline sessions of the backlog (1000)
  --steady-seconds S  longest steady run (10)
  --steady-messages N most messages of a steady run (1000000)
  --phase-seconds S   longest backlog fill or drain (1200)
  --cache-mib N       cache of each store (64)
  --seed N            the replay's seed (1)
  --dir PATH          where the databases go (store_choice-data beside this binary)";

/// Why a step failed: the store's, the system's or the tool's own message.
struct Failure(String);

impl<E: std::error::Error> From<E> for Failure {
    fn from(error: E) -> Self {
        Self(error.to_string())
    }
}

type Outcome<T> = Result<T, Failure>;

fn fail<T>(message: impl Into<String>) -> Outcome<T> {
    Err(Failure(message.into()))
}

// ---------------------------------------------------------------------------------------------
// The data model and the broker's operations on it

/// Client ids are 16 bytes, as a typical generated id is.
const CLIENT_ID_LEN: usize = 16;
/// A queue entry: message id (8), QoS, flags, packet id (2), stage, 3 spare, enqueued at (8).
const ENTRY_LEN: usize = 24;
/// The encoded message: a 20-byte header, a 2-byte length and a 38-byte topic, a 100-byte payload.
const BODY_LEN: usize = 160;
/// The reference count that precedes the message in `messages`.
const REFS_LEN: usize = 4;
/// Topics that retained messages go to.
const RETAINED_TOPICS: u64 = 1_000;
/// Sessions that the steady case's subscribers come from.
const STEADY_SESSIONS: usize = 100;
/// Messages per commit when filling and entries per commit when draining the backlog: a
/// loaded broker's group commit.
const BACKLOG_BATCH: usize = 256;
/// Entries a restarted broker reads to resume a session.
const RESUME_ENTRIES: usize = 1_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Table {
    Messages,
    Queue,
    Sessions,
    Retained,
}

impl Table {
    const ALL: [Self; 4] = [Self::Messages, Self::Queue, Self::Sessions, Self::Retained];

    fn name(self) -> &'static str {
        match self {
            Self::Messages => "messages",
            Self::Queue => "queue",
            Self::Sessions => "sessions",
            Self::Retained => "retained",
        }
    }
}

/// One change of a commit, as the broker's writer thread makes it.
enum Op {
    Put {
        table: Table,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// A subscriber acknowledged: its queue entry goes, and the message's reference count is
    /// read and decremented in the same transaction, the message deleted at zero.
    Ack { entry: Vec<u8>, message: u64 },
}

fn client_id(index: usize) -> Vec<u8> {
    let id = format!("client-{index:09}").into_bytes();
    debug_assert_eq!(id.len(), CLIENT_ID_LEN);
    id
}

fn queue_key(client: &[u8], seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(client.len() + 9);
    key.extend_from_slice(client);
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The range of a client's queue entries: from its id and 0x00 up to (not including) its id
/// and 0x01.
fn queue_range(client: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut start = client.to_vec();
    start.push(0);
    let mut end = client.to_vec();
    end.push(1);
    (start, end)
}

fn message_id_of_entry(entry: &[u8]) -> Outcome<u64> {
    match entry.get(..8).and_then(|id| <[u8; 8]>::try_from(id).ok()) {
        Some(id) => Ok(u64::from_be_bytes(id)),
        None => fail("a queue entry shorter than 8 bytes"),
    }
}

/// The stored message with its reference count lowered by one, or `None` when it reached zero
/// and the message goes.
fn decrement(stored: &[u8]) -> Outcome<Option<Vec<u8>>> {
    let Some(refs) = stored
        .get(..REFS_LEN)
        .and_then(|refs| <[u8; 4]>::try_from(refs).ok())
    else {
        return fail("a stored message without its reference count");
    };
    match u32::from_be_bytes(refs) {
        0 => fail("a stored message with no references left"),
        1 => Ok(None),
        refs => {
            let mut value = stored.to_vec();
            value[..REFS_LEN].copy_from_slice(&(refs - 1).to_be_bytes());
            Ok(Some(value))
        }
    }
}

/// The drain's work on the entries a scan took (key and value, in key order): each one's
/// message read (to be sent) and the entry acknowledged by `ack`. Returns how many, and the
/// key just after the last one, where the next scan starts.
fn acknowledge_all(
    start: &[u8],
    taken: Vec<(Vec<u8>, Vec<u8>)>,
    mut ack: impl FnMut(&[u8], u64) -> Outcome<()>,
) -> Outcome<(usize, Vec<u8>)> {
    let mut next = start.to_vec();
    let count = taken.len();
    for (key, entry) in taken {
        ack(&key, message_id_of_entry(&entry)?)?;
        next = key;
        next.push(0);
    }
    Ok((count, next))
}

/// Seeded random numbers (splitmix64), so that every store gets the same replay.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

fn topic(index: u64) -> Vec<u8> {
    // 38 bytes, in the shape of the fleet topics of the topic bench.
    format!(
        "site/{:04}/device/{:05}/temperature/c",
        index / 100,
        index % 100_000
    )
    .into_bytes()
}

/// An encoded message of `BODY_LEN` bytes: header, topic, and a JSON payload like the demos'
/// (text, so that fjall's block compression sees what it would see in use).
fn message_body(rng: &mut Rng, id: u64, topic: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(BODY_LEN);
    body.extend_from_slice(&[0x32, 1, 0, 0]); // PUBLISH, QoS 1, not retained, no properties
    body.extend_from_slice(&(rng.below(86_400) as u32).to_be_bytes()); // expiry
    body.extend_from_slice(&(1_764_000_000_000 + id).to_be_bytes()); // received at, ms
    body.extend_from_slice(&(rng.next() as u32).to_be_bytes()); // publisher's session hash
    body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    body.extend_from_slice(topic);
    let payload = format!(
        "{{\"seq\":{id},\"temp\":{}.{},\"hum\":{},\"battery\":{},\"status\":\"ok\",\"fw\":\"2.4.1\"}}",
        rng.below(40),
        rng.below(10),
        rng.below(100),
        rng.below(100),
    );
    body.extend_from_slice(payload.as_bytes());
    body.resize(BODY_LEN, b' ');
    body
}

fn queue_entry(message: u64, packet_id: u16) -> Vec<u8> {
    let mut entry = Vec::with_capacity(ENTRY_LEN);
    entry.extend_from_slice(&message.to_be_bytes());
    entry.extend_from_slice(&[1, 0]); // QoS 1, no flags
    entry.extend_from_slice(&packet_id.to_be_bytes());
    entry.extend_from_slice(&[0, 0, 0, 0]); // stage: queued, 3 spare
    entry.extend_from_slice(&(1_764_000_000_000 + message).to_be_bytes());
    entry
}

fn session_record(rng: &mut Rng, client: &[u8]) -> Vec<u8> {
    let mut record = Vec::with_capacity(100);
    record.extend_from_slice(&[5, 0x02]); // MQTT 5, clean start off
    record.extend_from_slice(&(rng.below(86_400 * 7) as u32).to_be_bytes()); // expiry interval
    record.extend_from_slice(client);
    for _ in 0..3 {
        // subscriptions: a filter and its options
        record.extend_from_slice(format!("site/{:04}/#", rng.below(10_000)).as_bytes());
        record.extend_from_slice(&[1, 0]);
    }
    record.resize(100, 0);
    record
}

/// The broker's side of the replay: which messages are published to which sessions.
struct Publisher {
    rng: Rng,
    clients: Vec<Vec<u8>>,
    next_seq: Vec<u64>,
    next_message: u64,
    fanout: usize,
}

impl Publisher {
    fn new(seed: u64, sessions: usize, fanout: usize) -> Self {
        Self {
            rng: Rng(seed),
            clients: (0..sessions).map(client_id).collect(),
            next_seq: vec![0; sessions],
            next_message: 1,
            fanout,
        }
    }

    /// The commit that creates every session.
    fn sessions(&mut self) -> Vec<Op> {
        let mut ops = Vec::with_capacity(self.clients.len());
        for index in 0..self.clients.len() {
            let value = session_record(&mut self.rng, &self.clients[index]);
            ops.push(Op::Put {
                table: Table::Sessions,
                key: self.clients[index].clone(),
                value,
            });
        }
        ops
    }

    /// One QoS 1 publish to `fanout` consecutive sessions from a random one: its message,
    /// its queue entries (handed to `entry` as key and message id), one time in 20 a retained
    /// message, one time in 1,000 a session rewritten.
    fn publish(&mut self, ops: &mut Vec<Op>, mut entry: impl FnMut(&mut Rng, Vec<u8>, u64)) {
        let id = self.next_message;
        self.next_message += 1;
        let topic_index = self.rng.below(RETAINED_TOPICS);
        let topic = topic(topic_index);
        let body = message_body(&mut self.rng, id, &topic);
        let mut value = Vec::with_capacity(REFS_LEN + BODY_LEN);
        value.extend_from_slice(&(self.fanout as u32).to_be_bytes());
        value.extend_from_slice(&body);
        ops.push(Op::Put {
            table: Table::Messages,
            key: id.to_be_bytes().to_vec(),
            value,
        });
        let sessions = self.clients.len();
        let first = self.rng.below(sessions as u64) as usize;
        for offset in 0..self.fanout {
            let client = (first + offset) % sessions;
            let seq = self.next_seq[client];
            self.next_seq[client] += 1;
            let key = queue_key(&self.clients[client], seq);
            ops.push(Op::Put {
                table: Table::Queue,
                key: key.clone(),
                value: queue_entry(id, (seq % 65_535 + 1) as u16),
            });
            entry(&mut self.rng, key, id);
        }
        if self.rng.below(20) == 0 {
            ops.push(Op::Put {
                table: Table::Retained,
                key: topic,
                value: body,
            });
        }
        if id.is_multiple_of(1_000) {
            let client = self.rng.below(sessions as u64) as usize;
            let value = session_record(&mut self.rng, &self.clients[client]);
            ops.push(Op::Put {
                table: Table::Sessions,
                key: self.clients[client].clone(),
                value,
            });
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The stores

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Redb,
    /// redb with quick repair: each commit also saves the allocator state (and commits in two
    /// phases), so that the open after a crash need not walk the whole file.
    RedbQuickRepair,
    Fjall,
    /// fjall with 8 MiB memtables instead of 64 MiB: less memory, more flushes.
    FjallSmallMemtables,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Redb => "redb",
            Self::RedbQuickRepair => "redb-qr",
            Self::Fjall => "fjall",
            Self::FjallSmallMemtables => "fjall-8m",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        [
            Self::Redb,
            Self::RedbQuickRepair,
            Self::Fjall,
            Self::FjallSmallMemtables,
        ]
        .into_iter()
        .find(|kind| kind.name() == name)
    }
}

/// What the replay needs of a store. Every write method returns once its transaction is
/// durable.
trait Store {
    /// Applies `ops` in one transaction.
    fn commit(&self, ops: &[Op]) -> Outcome<()>;
    /// In one transaction: up to `limit` queue entries from `start` (inclusive) to `end`, each
    /// one's message read (to be sent) and the entry acknowledged as [`Op::Ack`] does. Returns
    /// how many were drained and the key after the last one.
    fn drain(&self, start: &[u8], end: &[u8], limit: usize) -> Outcome<(usize, Vec<u8>)>;
    /// Up to `limit` entries of `table` from `start` to `end`, read in a snapshot.
    fn scan(
        &self,
        table: Table,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Outcome<Vec<(Vec<u8>, Vec<u8>)>>;
    fn get(&self, table: Table, key: &[u8]) -> Outcome<Option<Vec<u8>>>;
    /// Entries in `table` (a full scan where the store keeps no count).
    fn count(&self, table: Table) -> Outcome<u64>;
    /// Gives back the space of deleted data as far as the store can.
    fn compact(&mut self) -> Outcome<()>;
}

fn open_store(kind: Kind, dir: &Path, cache_bytes: usize) -> Outcome<Box<dyn Store>> {
    Ok(match kind {
        Kind::Redb => Box::new(RedbStore::open(dir, cache_bytes, false)?),
        Kind::RedbQuickRepair => Box::new(RedbStore::open(dir, cache_bytes, true)?),
        Kind::Fjall => Box::new(FjallStore::open(dir, cache_bytes, None)?),
        Kind::FjallSmallMemtables => Box::new(FjallStore::open(dir, cache_bytes, Some(8 << 20))?),
    })
}

/// Whether redb repaired the file when this process opened it.
static REDB_REPAIRED: AtomicBool = AtomicBool::new(false);

type RedbDefinition = TableDefinition<'static, &'static [u8], &'static [u8]>;
type RedbTable<'txn> = redb::Table<'txn, &'static [u8], &'static [u8]>;

fn redb_table(table: Table) -> RedbDefinition {
    TableDefinition::new(table.name())
}

struct RedbStore {
    db: redb::Database,
    quick_repair: bool,
}

impl RedbStore {
    fn open(dir: &Path, cache_bytes: usize, quick_repair: bool) -> Outcome<Self> {
        let db = redb::Builder::new()
            .set_cache_size(cache_bytes)
            // Called only when the file was not closed cleanly and the open walks it to rebuild
            // the allocator state (which quick repair saves at each commit instead).
            .set_repair_callback(|_| REDB_REPAIRED.store(true, Ordering::Relaxed))
            .create(dir.join("broker.redb"))?;
        let store = Self { db, quick_repair };
        // Creates the tables, so that a read before the first write finds them.
        store.commit(&[])?;
        Ok(store)
    }

    fn begin(&self) -> Outcome<redb::WriteTransaction> {
        let mut txn = self.db.begin_write()?;
        // redb's default, set so that a change of default cannot weaken the measurement:
        // `commit` returns after the fsync that makes the transaction durable.
        txn.set_durability(Durability::Immediate)?;
        txn.set_quick_repair(self.quick_repair);
        Ok(txn)
    }
}

fn redb_ack(
    queue: &mut RedbTable<'_>,
    messages: &mut RedbTable<'_>,
    entry: &[u8],
    message: u64,
) -> Outcome<()> {
    queue.remove(entry)?;
    let id = message.to_be_bytes();
    let stored = match messages.get(id.as_slice())? {
        Some(stored) => stored.value().to_vec(),
        None => return fail(format!("message {message} acknowledged but not stored")),
    };
    match decrement(&stored)? {
        Some(value) => messages.insert(id.as_slice(), value.as_slice())?,
        None => messages.remove(id.as_slice())?,
    };
    Ok(())
}

impl Store for RedbStore {
    fn commit(&self, ops: &[Op]) -> Outcome<()> {
        let txn = self.begin()?;
        {
            let mut messages = txn.open_table(redb_table(Table::Messages))?;
            let mut queue = txn.open_table(redb_table(Table::Queue))?;
            let mut sessions = txn.open_table(redb_table(Table::Sessions))?;
            let mut retained = txn.open_table(redb_table(Table::Retained))?;
            for op in ops {
                match op {
                    Op::Put { table, key, value } => {
                        let target = match table {
                            Table::Messages => &mut messages,
                            Table::Queue => &mut queue,
                            Table::Sessions => &mut sessions,
                            Table::Retained => &mut retained,
                        };
                        target.insert(key.as_slice(), value.as_slice())?;
                    }
                    Op::Ack { entry, message } => {
                        redb_ack(&mut queue, &mut messages, entry, *message)?;
                    }
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    fn drain(&self, start: &[u8], end: &[u8], limit: usize) -> Outcome<(usize, Vec<u8>)> {
        let txn = self.begin()?;
        let drained = {
            let mut messages = txn.open_table(redb_table(Table::Messages))?;
            let mut queue = txn.open_table(redb_table(Table::Queue))?;
            let mut taken = Vec::with_capacity(limit);
            for item in queue.range(start..end)?.take(limit) {
                let (key, value) = item?;
                taken.push((key.value().to_vec(), value.value().to_vec()));
            }
            acknowledge_all(start, taken, |key, message| {
                redb_ack(&mut queue, &mut messages, key, message)
            })?
        };
        txn.commit()?;
        Ok(drained)
    }

    fn scan(
        &self,
        table: Table,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Outcome<Vec<(Vec<u8>, Vec<u8>)>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(redb_table(table))?;
        let mut found = Vec::new();
        for item in table.range(start..end)?.take(limit) {
            let (key, value) = item?;
            found.push((key.value().to_vec(), value.value().to_vec()));
        }
        Ok(found)
    }

    fn get(&self, table: Table, key: &[u8]) -> Outcome<Option<Vec<u8>>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(redb_table(table))?;
        Ok(table.get(key)?.map(|value| value.value().to_vec()))
    }

    fn count(&self, table: Table) -> Outcome<u64> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(redb_table(table))?.len()?)
    }

    fn compact(&mut self) -> Outcome<()> {
        // Each call moves a bounded number of pages; bounded here too.
        for _ in 0..1_000 {
            if !self.db.compact(redb::CompactionMode::Balanced)? {
                break;
            }
        }
        Ok(())
    }
}

struct FjallStore {
    db: SingleWriterTxDatabase,
    /// In `Table::ALL` order.
    keyspaces: Vec<SingleWriterTxKeyspace>,
}

impl FjallStore {
    fn open(dir: &Path, cache_bytes: usize, memtable_bytes: Option<u64>) -> Outcome<Self> {
        // The single-writer transactional database: the broker has one writer thread, and the
        // reference count's read-modify-write needs to read the transaction's own writes, which
        // a plain write batch does not.
        let db = SingleWriterTxDatabase::builder(dir)
            .cache_size(cache_bytes as u64)
            .open()?;
        let mut keyspaces = Vec::new();
        for table in Table::ALL {
            let options = || match memtable_bytes {
                Some(bytes) => KeyspaceCreateOptions::default().max_memtable_size(bytes),
                None => KeyspaceCreateOptions::default(),
            };
            keyspaces.push(db.keyspace(table.name(), options)?);
        }
        Ok(Self { db, keyspaces })
    }

    fn keyspace(&self, table: Table) -> &SingleWriterTxKeyspace {
        &self.keyspaces[table as usize]
    }

    fn begin(&self) -> fjall::SingleWriterWriteTx<'_> {
        // Not fjall's default: a commit only reaches the OS's buffers unless asked for more.
        // SyncAll fsyncs the journal before `commit` returns (and before the batch is visible).
        self.db.write_tx().durability(Some(PersistMode::SyncAll))
    }

    fn ack(
        &self,
        tx: &mut fjall::SingleWriterWriteTx<'_>,
        entry: &[u8],
        message: u64,
    ) -> Outcome<()> {
        let messages = self.keyspace(Table::Messages);
        tx.remove(self.keyspace(Table::Queue), entry);
        let id = message.to_be_bytes();
        let Some(stored) = tx.get(messages, id)? else {
            return fail(format!("message {message} acknowledged but not stored"));
        };
        match decrement(&stored)? {
            Some(value) => tx.insert(messages, id, value),
            None => tx.remove(messages, id),
        }
        Ok(())
    }
}

impl Store for FjallStore {
    fn commit(&self, ops: &[Op]) -> Outcome<()> {
        let mut tx = self.begin();
        for op in ops {
            match op {
                Op::Put { table, key, value } => {
                    tx.insert(self.keyspace(*table), key.as_slice(), value.as_slice());
                }
                Op::Ack { entry, message } => self.ack(&mut tx, entry, *message)?,
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn drain(&self, start: &[u8], end: &[u8], limit: usize) -> Outcome<(usize, Vec<u8>)> {
        let mut tx = self.begin();
        let mut taken = Vec::with_capacity(limit);
        for guard in tx
            .range(self.keyspace(Table::Queue), start..end)
            .take(limit)
        {
            let (key, value) = guard.into_inner()?;
            taken.push((key.to_vec(), value.to_vec()));
        }
        let drained =
            acknowledge_all(start, taken, |key, message| self.ack(&mut tx, key, message))?;
        tx.commit()?;
        Ok(drained)
    }

    fn scan(
        &self,
        table: Table,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Outcome<Vec<(Vec<u8>, Vec<u8>)>> {
        let snapshot = self.db.read_tx();
        let mut found = Vec::new();
        for guard in snapshot.range(self.keyspace(table), start..end).take(limit) {
            let (key, value) = guard.into_inner()?;
            found.push((key.to_vec(), value.to_vec()));
        }
        Ok(found)
    }

    fn get(&self, table: Table, key: &[u8]) -> Outcome<Option<Vec<u8>>> {
        Ok(self.keyspace(table).get(key)?.map(|value| value.to_vec()))
    }

    fn count(&self, table: Table) -> Outcome<u64> {
        Ok(self.db.read_tx().len(self.keyspace(table))? as u64)
    }

    fn compact(&mut self) -> Outcome<()> {
        // fjall compacts in the background as levels fill; the explicit way to drop every
        // tombstone and what it deleted is to flush the memtable and compact all levels into
        // one (both hidden APIs, which fjall's own tests use).
        for keyspace in &self.keyspaces {
            keyspace.inner().rotate_memtable_and_wait()?;
            keyspace.inner().major_compact()?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// What the process and its files cost

/// Bytes this process caused to be written to the storage layer (`/proc/self/io`), counted
/// when pages are dirtied: a page rewritten before it reaches the disk counts once.
fn write_bytes() -> Outcome<u64> {
    proc_field("/proc/self/io", "write_bytes:")
}

/// Peak resident memory in bytes (`VmHWM`).
fn peak_rss() -> Outcome<u64> {
    Ok(proc_field("/proc/self/status", "VmHWM:")? * 1024)
}

fn proc_field(path: &str, name: &str) -> Outcome<u64> {
    let text = fs::read_to_string(path)?;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(name) {
            let number = rest.split_whitespace().next().unwrap_or("");
            return Ok(number.parse()?);
        }
    }
    fail(format!("no {name} in {path}"))
}

/// CPU time of every thread of this process, the stores' background threads included.
fn cpu_seconds() -> Outcome<f64> {
    let stat = fs::read_to_string("/proc/self/stat")?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return fail("unreadable /proc/self/stat");
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); `fields[0]` is field 3.
    let (Some(user), Some(system)) = (fields.get(11), fields.get(12)) else {
        return fail("short /proc/self/stat");
    };
    let ticks = user.parse::<u64>()? + system.parse::<u64>()?;
    Ok(ticks as f64 / rustix::param::clock_ticks_per_second() as f64)
}

/// Bytes the files under `dir` take on disk (allocated blocks: journals are preallocated and
/// sparse, so their length says little).
fn disk_usage(dir: &Path) -> Outcome<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            disk_usage(&entry.path())?
        } else {
            meta.blocks() * 512
        };
    }
    Ok(total)
}

/// Drops the files under `dir` from the page cache, so that the next open reads the disk as
/// after a reboot: written back first (`DONTNEED` leaves dirty pages), then advised out. Only
/// these files, unlike `drop_caches`, which would slow everyone else on the machine.
fn evict(dir: &Path) -> Outcome<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.metadata()?.is_dir() {
            evict(&entry.path())?;
        } else {
            let file = File::open(entry.path())?;
            file.sync_all()?;
            rustix::fs::fadvise(&file, 0, None::<NonZeroU64>, rustix::fs::Advice::DontNeed)?;
        }
    }
    Ok(())
}

/// One step's figures, printed by a child as `RESULT name=value ...` for the driver.
#[derive(Default)]
struct Figures(Vec<(&'static str, f64)>);

impl Figures {
    fn set(&mut self, name: &'static str, value: f64) {
        self.0.push((name, value));
    }

    fn print(&self) -> Outcome<()> {
        let mut line = String::from("RESULT");
        for (name, value) in &self.0 {
            line.push_str(&format!(" {name}={value}"));
        }
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{line}")?;
        stdout.flush()?;
        Ok(())
    }
}

/// Commit latencies, for their percentiles.
struct Latencies(Vec<Duration>);

impl Latencies {
    fn percentile_ms(&mut self, percent: usize) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.sort_unstable();
        let index = ((self.0.len() - 1) * percent) / 100;
        self.0[index].as_secs_f64() * 1e3
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

// ---------------------------------------------------------------------------------------------
// The steps, each in its own child process

struct StepOptions {
    kind: Kind,
    dir: PathBuf,
    cache_bytes: usize,
    seed: u64,
    fanout: usize,
    batch: usize,
    sessions: usize,
    entries: u64,
    seconds: Duration,
    messages: u64,
}

/// Publishes in group commits of `batch` messages; each entry is acknowledged one or two
/// commits later. Stops at `messages` or after `seconds`.
fn step_steady(options: &StepOptions) -> Outcome<Figures> {
    let store = open_store(options.kind, &options.dir, options.cache_bytes)?;
    let mut publisher = Publisher::new(options.seed, STEADY_SESSIONS, options.fanout);
    store.commit(&publisher.sessions())?;
    // pending[i]: the acknowledgements that arrive with the (i + 1)th commit from now.
    let mut pending: VecDeque<Vec<Op>> = VecDeque::new();
    let mut latencies = Latencies(Vec::new());
    let (bytes_before, cpu_before) = (write_bytes()?, cpu_seconds()?);
    let started = Instant::now();
    let mut published = 0u64;
    while published < options.messages && started.elapsed() < options.seconds {
        let mut ops = pending.pop_front().unwrap_or_default();
        for _ in 0..options.batch {
            publisher.publish(&mut ops, |rng, entry, message| {
                let lag = 1 + rng.below(2) as usize;
                while pending.len() < lag {
                    pending.push_back(Vec::new());
                }
                pending[lag - 1].push(Op::Ack { entry, message });
            });
        }
        published += options.batch as u64;
        let commit = Instant::now();
        store.commit(&ops)?;
        latencies.0.push(commit.elapsed());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (bytes, cpu) = (write_bytes()? - bytes_before, cpu_seconds()? - cpu_before);
    let commits = latencies.0.len() as f64;
    // What is still queued is what has not been acknowledged yet: both stores must agree with
    // the replay, or one of them lost or invented something.
    let live_entries: u64 = pending.iter().map(|acks| acks.len() as u64).sum();
    let live_messages = pending
        .iter()
        .flatten()
        .filter_map(|op| match op {
            Op::Ack { message, .. } => Some(*message),
            Op::Put { .. } => None,
        })
        .collect::<BTreeSet<_>>()
        .len() as u64;
    let (entries, messages) = (store.count(Table::Queue)?, store.count(Table::Messages)?);
    if (entries, messages) != (live_entries, live_messages) {
        return fail(format!(
            "the store holds {entries} entries and {messages} messages, the replay \
             {live_entries} and {live_messages}"
        ));
    }
    let mut figures = Figures::default();
    figures.set("messages", published as f64);
    figures.set("msg_per_s", published as f64 / elapsed);
    figures.set("commits_per_s", commits / elapsed);
    figures.set("p50_ms", latencies.percentile_ms(50));
    figures.set("p99_ms", latencies.percentile_ms(99));
    figures.set("bytes_per_msg", bytes as f64 / published as f64);
    figures.set("cpu_us_per_msg", cpu * 1e6 / published as f64);
    figures.set("size_mib", mib(disk_usage(&options.dir)?));
    figures.set("rss_mib", mib(peak_rss()?));
    Ok(figures)
}

/// Fills the backlog: `sessions` offline sessions get `entries` queue entries, nothing
/// acknowledged, in commits of `BACKLOG_BATCH` messages. Returns the store still open: the
/// caller kills the process after it printed the figures, as a crash would, so that the next
/// open is the one after a crash (dropping the store would close it cleanly).
fn step_fill(options: &StepOptions) -> Outcome<(Figures, Box<dyn Store>)> {
    let store = open_store(options.kind, &options.dir, options.cache_bytes)?;
    let mut publisher = Publisher::new(options.seed, options.sessions, options.fanout);
    store.commit(&publisher.sessions())?;
    let (bytes_before, cpu_before) = (write_bytes()?, cpu_seconds()?);
    let started = Instant::now();
    let (mut queued, mut published) = (0u64, 0u64);
    let mut latencies = Latencies(Vec::new());
    while queued < options.entries && started.elapsed() < options.seconds {
        let mut ops = Vec::new();
        for _ in 0..BACKLOG_BATCH {
            if queued >= options.entries {
                break;
            }
            publisher.publish(&mut ops, |_, _, _| queued += 1);
            published += 1;
        }
        let commit = Instant::now();
        store.commit(&ops)?;
        latencies.0.push(commit.elapsed());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (bytes, cpu) = (write_bytes()? - bytes_before, cpu_seconds()? - cpu_before);
    let mut figures = Figures::default();
    figures.set("entries", queued as f64);
    figures.set("messages", published as f64);
    figures.set("fill_msg_per_s", published as f64 / elapsed);
    figures.set("fill_entries_per_s", queued as f64 / elapsed);
    figures.set("fill_p99_ms", latencies.percentile_ms(99));
    figures.set("fill_bytes_per_entry", bytes as f64 / queued as f64);
    figures.set("fill_cpu_us_per_entry", cpu * 1e6 / queued as f64);
    figures.set("filled_mib", mib(disk_usage(&options.dir)?));
    figures.set("fill_rss_mib", mib(peak_rss()?));
    Ok((figures, store))
}

/// Reads the first `RESUME_ENTRIES` entries of the middle session and each one's message, as
/// a restarted broker does to resume it; checks they are the session's first, in order.
fn resume_session(store: &dyn Store, sessions: usize) -> Outcome<usize> {
    let client = client_id(sessions / 2);
    let (start, end) = queue_range(&client);
    let entries = store.scan(Table::Queue, &start, &end, RESUME_ENTRIES)?;
    for (seq, (key, value)) in entries.iter().enumerate() {
        if *key != queue_key(&client, seq as u64) {
            return fail(format!("entry {seq} of the resumed session is missing"));
        }
        let message = message_id_of_entry(value)?;
        if store
            .get(Table::Messages, &message.to_be_bytes())?
            .is_none()
        {
            return fail(format!("message {message} of a queued entry is missing"));
        }
    }
    Ok(entries.len())
}

/// Opens the database with its files out of the page cache, and resumes one session.
fn step_reopen(options: &StepOptions) -> Outcome<Figures> {
    evict(&options.dir)?;
    let bytes_before = write_bytes()?;
    let started = Instant::now();
    let store = open_store(options.kind, &options.dir, options.cache_bytes)?;
    let opened = started.elapsed();
    let resumed_entries = resume_session(store.as_ref(), options.sessions)?;
    let resumed = started.elapsed() - opened;
    let mut figures = Figures::default();
    figures.set("open_ms", opened.as_secs_f64() * 1e3);
    figures.set("resume_ms", resumed.as_secs_f64() * 1e3);
    figures.set("resumed_entries", resumed_entries as f64);
    figures.set("open_write_mib", mib(write_bytes()? - bytes_before));
    figures.set(
        "redb_repaired",
        f64::from(u8::from(REDB_REPAIRED.load(Ordering::Relaxed))),
    );
    figures.set("open_rss_mib", mib(peak_rss()?));
    Ok(figures)
}

/// Drains every session in order, `BACKLOG_BATCH` entries per commit, then checks that nothing
/// is left, and measures the space before and after an explicit compaction.
fn step_drain(options: &StepOptions) -> Outcome<Figures> {
    let mut store = open_store(options.kind, &options.dir, options.cache_bytes)?;
    let before = disk_usage(&options.dir)?;
    let (bytes_before, cpu_before) = (write_bytes()?, cpu_seconds()?);
    let started = Instant::now();
    let mut drained = 0u64;
    'sessions: for index in 0..options.sessions {
        let client = client_id(index);
        let (mut start, end) = queue_range(&client);
        // Bounded by the entries there can be, and by time.
        for _ in 0..=options.entries / BACKLOG_BATCH as u64 {
            if started.elapsed() > options.seconds {
                break 'sessions;
            }
            let (count, next) = store.drain(&start, &end, BACKLOG_BATCH)?;
            drained += count as u64;
            start = next;
            if count < BACKLOG_BATCH {
                break;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (bytes, cpu) = (write_bytes()? - bytes_before, cpu_seconds()? - cpu_before);
    // Said at once: the check below scans what is left, which in an LSM tree means every
    // tombstone the drain wrote until compaction removes them, and can take long.
    eprintln!("drained {drained} entries in {elapsed:.1} s");
    if drained != options.entries {
        return fail(format!(
            "drained {drained} of {} entries in {elapsed:.1} s",
            options.entries
        ));
    }
    let drained_size = disk_usage(&options.dir)?;
    let left = (store.count(Table::Queue)?, store.count(Table::Messages)?);
    if left != (0, 0) {
        return fail(format!(
            "{} entries and {} messages left after the drain",
            left.0, left.1
        ));
    }
    let compacting = Instant::now();
    store.compact()?;
    let compacted = compacting.elapsed();
    let compacted_size = disk_usage(&options.dir)?;
    drop(store);
    // What stays once the store is closed (fjall deletes journals whose data was flushed).
    let closed_size = disk_usage(&options.dir)?;
    let mut figures = Figures::default();
    figures.set("drain_entries_per_s", drained as f64 / elapsed);
    figures.set("drain_bytes_per_entry", bytes as f64 / drained as f64);
    figures.set("drain_cpu_us_per_entry", cpu * 1e6 / drained as f64);
    figures.set("before_drain_mib", mib(before));
    figures.set("drained_mib", mib(drained_size));
    figures.set("compact_s", compacted.as_secs_f64());
    figures.set("compacted_mib", mib(compacted_size));
    figures.set("closed_mib", mib(closed_size));
    figures.set("drain_rss_mib", mib(peak_rss()?));
    Ok(figures)
}

/// Kills this process as a crash would: no destructor, no flush, no close.
fn crash() -> Outcome<()> {
    rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL)?;
    fail("still alive after SIGKILL")
}

// ---------------------------------------------------------------------------------------------
// The crash check

/// Commit `k` (from 1): message `k` with two references and an entry for it in the queues of
/// clients A and B, and client A's acknowledgement of message `k - 1`. After commit `K` the
/// store holds messages 1..=K (K with 2 references, the others 1), A's entry K alone, and
/// B's entries 1..=K: any lost commit or torn transaction shows.
fn crash_commit(k: u64) -> Vec<Op> {
    let mut rng = Rng(k);
    let mut value = 2u32.to_be_bytes().to_vec();
    value.extend_from_slice(&message_body(&mut rng, k, &topic(k % RETAINED_TOPICS)));
    let mut ops = vec![Op::Put {
        table: Table::Messages,
        key: k.to_be_bytes().to_vec(),
        value,
    }];
    for client in [client_id(0), client_id(1)] {
        ops.push(Op::Put {
            table: Table::Queue,
            key: queue_key(&client, k),
            value: queue_entry(k, (k % 65_535 + 1) as u16),
        });
    }
    if k > 1 {
        ops.push(Op::Ack {
            entry: queue_key(&client_id(0), k - 1),
            message: k - 1,
        });
    }
    ops
}

/// The writer of the crash check: commits and prints each commit's number once `commit`
/// returned; with `stop_after`, kills itself right after that commit returned.
fn step_crash_writer(options: &StepOptions, stop_after: Option<u64>) -> Outcome<()> {
    let store = open_store(options.kind, &options.dir, options.cache_bytes)?;
    let mut stdout = std::io::stdout().lock();
    let started = Instant::now();
    for k in 1..=100_000 {
        store.commit(&crash_commit(k))?;
        if stop_after == Some(k) {
            return crash();
        }
        writeln!(stdout, "{k}")?;
        stdout.flush()?;
        // Far more than the 10,000 commits a check asks for take even on a loaded machine.
        if started.elapsed() > Duration::from_secs(300) {
            break;
        }
    }
    Ok(())
}

/// Checks the state a crashed writer left: the last commit is at least `reported`, and every
/// commit up to it is there whole. Returns the last commit found.
fn verify_crash(store: &dyn Store, reported: u64) -> Outcome<u64> {
    let all = [0u8; 8];
    let top = [0xffu8; 8];
    let messages = store.scan(Table::Messages, &all, &top, usize::MAX)?;
    let last = messages.len() as u64;
    if last < reported {
        return fail(format!("{reported} commits reported done, {last} found"));
    }
    for (index, (key, value)) in messages.iter().enumerate() {
        let k = index as u64 + 1;
        let refs = if k == last { 2u32 } else { 1 };
        if *key != k.to_be_bytes() || value.get(..REFS_LEN) != Some(&refs.to_be_bytes()[..]) {
            return fail(format!(
                "message {k} missing or with the wrong reference count"
            ));
        }
    }
    let (a_start, a_end) = queue_range(&client_id(0));
    let a = store.scan(Table::Queue, &a_start, &a_end, usize::MAX)?;
    if a.len() != usize::from(last > 0) || (last > 0 && a[0].0 != queue_key(&client_id(0), last)) {
        return fail(format!(
            "client A should hold only entry {last}, holds {}",
            a.len()
        ));
    }
    let (b_start, b_end) = queue_range(&client_id(1));
    let b = store.scan(Table::Queue, &b_start, &b_end, usize::MAX)?;
    let expected: Vec<Vec<u8>> = (1..=last).map(|k| queue_key(&client_id(1), k)).collect();
    if b.iter().map(|(key, _)| key.clone()).collect::<Vec<_>>() != expected {
        return fail(format!("client B should hold entries 1..={last}"));
    }
    Ok(last)
}

fn crash_check(driver: &Driver) -> Outcome<()> {
    let mut rng = Rng(driver.seed);
    for round in 0..driver.rounds {
        for kind in driver.stores_for_round(round) {
            let dir = driver.fresh_dir(kind)?;
            // Rounds 3 and 4 run longer, so that the kill lands in a larger database, with
            // more of the stores' background work behind it.
            let target = if round % 4 < 2 {
                20 + rng.below(300)
            } else {
                2_000 + rng.below(8_000)
            };
            // Even rounds: the writer kills itself right after commit `target` returned.
            // Odd rounds: killed from here while it goes on committing, at any point.
            let self_kill = round % 2 == 0;
            let stop_after = [("--stop-after", target)];
            let extra: &[(&str, u64)] = if self_kill { &stop_after } else { &[] };
            let args = driver.step_args(kind, &dir, "crash-writer", extra);
            let mut child = Command::new(&driver.exe)
                .args(&args)
                .stdout(Stdio::piped())
                .spawn()?;
            let Some(stdout) = child.stdout.take() else {
                return fail("the writer's stdout was not piped");
            };
            let mut reported = 0u64;
            for line in BufReader::new(stdout).lines() {
                reported = line?.trim().parse()?;
                if !self_kill && reported >= target {
                    child.kill()?;
                    break;
                }
            }
            let status = child.wait()?;
            if status.signal() != Some(9) {
                return fail(format!("the writer was not killed: {status}"));
            }
            let store = open_store(kind, &dir, driver.cache_bytes)?;
            let last = verify_crash(store.as_ref(), reported)?;
            if self_kill && last != target {
                return fail(format!("killed after commit {target}, found {last}"));
            }
            drop(store);
            fs::remove_dir_all(&dir)?;
            println!(
                "{:8} round {}: {} after commit {target}; {reported} reported, {last} found, \
                 all whole",
                kind.name(),
                round + 1,
                if self_kill { "killed itself" } else { "killed" },
            );
        }
    }
    println!("crash check passed");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The driver

struct Driver {
    exe: PathBuf,
    dir: PathBuf,
    stores: Vec<Kind>,
    rounds: usize,
    cases: Vec<String>,
    fanouts: Vec<usize>,
    batches: Vec<usize>,
    entries: u64,
    sessions: usize,
    steady_seconds: u64,
    steady_messages: u64,
    phase_seconds: u64,
    cache_bytes: usize,
    seed: u64,
}

/// One run of one step: its figures by name.
type Run = BTreeMap<String, f64>;

impl Driver {
    /// The stores in this round's order: rotated each round, so that none is always first
    /// (on a shared machine the load drifts).
    fn stores_for_round(&self, round: usize) -> Vec<Kind> {
        let mut stores = self.stores.clone();
        let shift = round % stores.len();
        stores.rotate_left(shift);
        stores
    }

    fn fresh_dir(&self, kind: Kind) -> Outcome<PathBuf> {
        let dir = self.dir.join(kind.name());
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// A child's command line: `step NAME`, the options every step takes, then `extra`.
    fn step_args(&self, kind: Kind, dir: &Path, step: &str, extra: &[(&str, u64)]) -> Vec<String> {
        let mut args = vec![
            "step".into(),
            step.into(),
            "--store".into(),
            kind.name().into(),
            "--dir".into(),
            dir.display().to_string(),
        ];
        let common = [
            ("--cache-mib", (self.cache_bytes >> 20) as u64),
            ("--seed", self.seed),
            ("--sessions", self.sessions as u64),
        ];
        for (name, value) in common.iter().chain(extra) {
            args.extend([name.to_string(), value.to_string()]);
        }
        args
    }

    /// Runs a step in a child and returns its figures; `crashes`: the child ends by `SIGKILL`.
    fn run_step(&self, args: &[String], crashes: bool, deadline: Duration) -> Outcome<Run> {
        let mut child = Command::new(&self.exe)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()?;
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if started.elapsed() > deadline {
                child.kill()?;
                child.wait()?;
                return fail(format!("{args:?} ran past {deadline:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut output = String::new();
        if let Some(mut stdout) = child.stdout.take() {
            std::io::Read::read_to_string(&mut stdout, &mut output)?;
        }
        let expected = if crashes {
            status.signal() == Some(9)
        } else {
            status.success()
        };
        let Some(line) = output.lines().find_map(|line| line.strip_prefix("RESULT")) else {
            return fail(format!("{args:?} ended with {status} and no result"));
        };
        if !expected {
            return fail(format!("{args:?} ended with {status}"));
        }
        let mut run = Run::new();
        for pair in line.split_whitespace() {
            let Some((name, value)) = pair.split_once('=') else {
                return fail(format!("unreadable result {pair}"));
            };
            run.insert(name.to_string(), value.parse()?);
        }
        Ok(run)
    }

    fn steady(&self, kind: Kind, fanout: usize, batch: usize) -> Outcome<Run> {
        let dir = self.fresh_dir(kind)?;
        let extra = [
            ("--fanout", fanout as u64),
            ("--batch", batch as u64),
            ("--seconds", self.steady_seconds),
            ("--messages", self.steady_messages),
        ];
        let args = self.step_args(kind, &dir, "steady", &extra);
        let deadline = Duration::from_secs(self.steady_seconds + 120);
        let run = self.run_step(&args, false, deadline)?;
        fs::remove_dir_all(&dir)?;
        Ok(run)
    }

    fn backlog(&self, kind: Kind, fanout: usize) -> Outcome<Run> {
        let dir = self.fresh_dir(kind)?;
        let extra = [
            ("--fanout", fanout as u64),
            ("--entries", self.entries),
            ("--seconds", self.phase_seconds),
        ];
        let args = self.step_args(kind, &dir, "fill", &extra);
        let deadline = Duration::from_secs(self.phase_seconds + 300);
        let mut run = self.run_step(&args, true, deadline)?;
        let entries = run.get("entries").copied().unwrap_or(0.0) as u64;
        for (step, prefix) in [("reopen", "crashed_"), ("reopen", "clean_")] {
            let args = self.step_args(kind, &dir, step, &[]);
            for (name, value) in self.run_step(&args, false, deadline)? {
                run.insert(format!("{prefix}{name}"), value);
            }
        }
        let extra = [("--entries", entries), ("--seconds", self.phase_seconds)];
        let args = self.step_args(kind, &dir, "drain", &extra);
        run.extend(self.run_step(&args, false, deadline)?);
        fs::remove_dir_all(&dir)?;
        Ok(run)
    }

    fn check_space(&self) -> Outcome<()> {
        fs::create_dir_all(&self.dir)?;
        let stat = rustix::fs::statvfs(&self.dir)?;
        let free = stat.f_bavail * stat.f_frsize;
        // The 1M-entry runs peaked at 430 bytes an entry (fjall after the fill, S = 1), with
        // one store's files at a time on disk; 600 leaves some margin on a shared disk.
        let needed = self.entries * 600;
        if self.cases.iter().any(|case| case == "backlog") && free < needed {
            return fail(format!(
                "{} MiB free under {}, the backlog may need {} MiB",
                free >> 20,
                self.dir.display(),
                needed >> 20
            ));
        }
        Ok(())
    }

    fn measure(&self) -> Outcome<()> {
        self.check_space()?;
        // case name -> store -> runs
        let mut results: Vec<(String, BTreeMap<&'static str, Vec<Run>>)> = Vec::new();
        let mut cases = Vec::new();
        for case in &self.cases {
            match case.as_str() {
                "steady" => {
                    for &fanout in &self.fanouts {
                        for &batch in &self.batches {
                            cases.push((format!("steady S={fanout} B={batch}"), fanout, batch));
                        }
                    }
                }
                "backlog" => {
                    for &fanout in &self.fanouts {
                        cases.push((format!("backlog S={fanout} N={}", self.entries), fanout, 0));
                    }
                }
                other => return fail(format!("unknown case {other}")),
            }
        }
        for (name, fanout, batch) in &cases {
            let mut by_store: BTreeMap<&'static str, Vec<Run>> = BTreeMap::new();
            for round in 0..self.rounds {
                for kind in self.stores_for_round(round) {
                    let run = if name.starts_with("steady") {
                        self.steady(kind, *fanout, *batch)?
                    } else {
                        self.backlog(kind, *fanout)?
                    };
                    eprintln!("{name} round {} {}: {run:?}", round + 1, kind.name());
                    by_store.entry(kind.name()).or_default().push(run);
                }
            }
            results.push((name.clone(), by_store));
        }
        fs::remove_dir_all(&self.dir)?;
        self.print_tables(&results);
        Ok(())
    }

    fn print_tables(&self, results: &[(String, BTreeMap<&'static str, Vec<Run>>)]) {
        let steady: &[(&str, &str)] = &[
            ("msg_per_s", "msg/s"),
            ("commits_per_s", "commits/s"),
            ("p50_ms", "commit p50 ms"),
            ("p99_ms", "commit p99 ms"),
            ("bytes_per_msg", "written B/msg"),
            ("cpu_us_per_msg", "CPU µs/msg"),
            ("size_mib", "size MiB"),
            ("rss_mib", "peak RSS MiB"),
        ];
        let backlog: &[(&str, &str)] = &[
            ("fill_msg_per_s", "fill msg/s"),
            ("fill_entries_per_s", "fill entries/s"),
            ("fill_p99_ms", "fill commit p99 ms"),
            ("fill_bytes_per_entry", "fill written B/entry"),
            ("fill_cpu_us_per_entry", "fill CPU µs/entry"),
            ("filled_mib", "size after fill MiB"),
            ("fill_rss_mib", "fill peak RSS MiB"),
            ("crashed_open_ms", "open after crash ms (cold)"),
            ("crashed_open_write_mib", "written by that open MiB"),
            ("crashed_redb_repaired", "redb repaired the file (1 = yes)"),
            ("crashed_resume_ms", "then 1,000 entries + messages ms"),
            ("crashed_resumed_entries", "entries read"),
            ("clean_open_ms", "open after clean close ms (cold)"),
            ("clean_resume_ms", "then 1,000 entries + messages ms"),
            ("clean_open_rss_mib", "open + resume peak RSS MiB"),
            ("drain_entries_per_s", "drain entries/s"),
            ("drain_bytes_per_entry", "drain written B/entry"),
            ("drain_cpu_us_per_entry", "drain CPU µs/entry"),
            ("before_drain_mib", "size before drain MiB"),
            ("drained_mib", "size after drain MiB"),
            ("compact_s", "compaction s"),
            ("compacted_mib", "size after compaction MiB"),
            ("closed_mib", "size after compaction and close MiB"),
            ("drain_rss_mib", "drain peak RSS MiB"),
        ];
        let stores: Vec<&str> = self.stores.iter().map(|kind| kind.name()).collect();
        for (name, by_store) in results {
            let metrics = if name.starts_with("steady") {
                steady
            } else {
                backlog
            };
            println!("\n#### {name}\n");
            let mut header = String::from("| |");
            let mut rule = String::from("|---|");
            for store in &stores {
                header.push_str(&format!(" {store} |"));
                rule.push_str("---:|");
            }
            for store in stores.iter().skip(1) {
                header.push_str(&format!(" {store} / {} per round |", stores[0]));
                rule.push_str("---:|");
            }
            println!("{header}\n{rule}");
            for (key, label) in metrics {
                let mut row = format!("| {label} |");
                for store in &stores {
                    let values: Vec<f64> = by_store
                        .get(store)
                        .map(|runs| {
                            runs.iter()
                                .filter_map(|run| run.get(*key).copied())
                                .collect()
                        })
                        .unwrap_or_default();
                    row.push_str(&format!(" {} |", spread(&values)));
                }
                for store in stores.iter().skip(1) {
                    // The ratio within each round: the two ran minutes apart on the same load.
                    let ratios: Vec<String> = by_store
                        .get(store)
                        .zip(by_store.get(stores[0]))
                        .map(|(these, base)| {
                            these
                                .iter()
                                .zip(base)
                                .filter_map(|(this, base)| Some((this.get(*key)?, base.get(*key)?)))
                                .map(|(this, base)| {
                                    if *base == 0.0 {
                                        "-".to_string()
                                    } else {
                                        format!("{:.2}x", this / base)
                                    }
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    row.push_str(&format!(" {} |", ratios.join(", ")));
                }
                println!("{row}");
            }
        }
    }
}

/// The median of the runs, and their range when there is more than one.
fn spread(values: &[f64]) -> String {
    if values.is_empty() {
        return "-".into();
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    if sorted.len() == 1 {
        number(median)
    } else {
        format!(
            "{} ({}–{})",
            number(median),
            number(sorted[0]),
            number(sorted[sorted.len() - 1])
        )
    }
}

/// Three significant digits or so, with thousands separated.
fn number(value: f64) -> String {
    if value >= 1_000.0 {
        let whole = value.round() as u64;
        let digits = whole.to_string();
        let mut out = String::new();
        for (index, digit) in digits.chars().enumerate() {
            if index > 0 && (digits.len() - index).is_multiple_of(3) {
                out.push(',');
            }
            out.push(digit);
        }
        out
    } else if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

// ---------------------------------------------------------------------------------------------
// Arguments

fn list<T: std::str::FromStr>(text: &str) -> Result<Vec<T>, String> {
    text.split(',')
        .map(|item| {
            item.trim()
                .parse()
                .map_err(|_| format!("bad list item {item}"))
        })
        .collect()
}

fn number_arg<T: std::str::FromStr>(name: &str, value: Option<&String>) -> Result<T, String> {
    value
        .and_then(|value| value.parse().ok())
        .ok_or_else(|| format!("{name} needs a number"))
}

fn parse_driver(args: &[String], crash: bool) -> Result<Driver, String> {
    let exe = std::env::current_exe().map_err(|error| error.to_string())?;
    let dir = exe
        .parent()
        .map(|parent| parent.join("store_choice-data"))
        .ok_or("the binary has no directory")?;
    let mut driver = Driver {
        exe,
        dir,
        stores: vec![Kind::Redb, Kind::Fjall],
        rounds: if crash { 6 } else { 2 },
        cases: vec!["steady".into(), "backlog".into()],
        fanouts: vec![1, 10],
        batches: vec![1, 16, 256],
        entries: 1_000_000,
        sessions: 1_000,
        steady_seconds: 10,
        steady_messages: 1_000_000,
        phase_seconds: 1_200,
        cache_bytes: 64 << 20,
        seed: 1,
    };
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let value = iter.next();
        match arg.as_str() {
            "--stores" => {
                driver.stores = value
                    .ok_or("--stores needs a list")?
                    .split(',')
                    .map(|name| Kind::parse(name).ok_or(format!("unknown store {name}")))
                    .collect::<Result<_, _>>()?;
            }
            "--rounds" => driver.rounds = number_arg(arg, value)?,
            "--cases" => driver.cases = list(value.ok_or("--cases needs a list")?)?,
            "--fanouts" => driver.fanouts = list(value.ok_or("--fanouts needs a list")?)?,
            "--batches" => driver.batches = list(value.ok_or("--batches needs a list")?)?,
            "--entries" => driver.entries = number_arg(arg, value)?,
            "--sessions" => driver.sessions = number_arg(arg, value)?,
            "--steady-seconds" => driver.steady_seconds = number_arg(arg, value)?,
            "--steady-messages" => driver.steady_messages = number_arg(arg, value)?,
            "--phase-seconds" => driver.phase_seconds = number_arg(arg, value)?,
            "--cache-mib" => driver.cache_bytes = number_arg::<usize>(arg, value)? << 20,
            "--seed" => driver.seed = number_arg(arg, value)?,
            "--dir" => driver.dir = PathBuf::from(value.ok_or("--dir needs a path")?),
            _ => return Err(format!("unknown option {arg}")),
        }
    }
    if driver.stores.is_empty() || driver.rounds == 0 || driver.sessions < 2 {
        return Err("at least one store, one round and two sessions".into());
    }
    if driver
        .fanouts
        .iter()
        .any(|&fanout| fanout == 0 || fanout > STEADY_SESSIONS)
    {
        return Err(format!("fan-outs go from 1 to {STEADY_SESSIONS}"));
    }
    if driver.batches.contains(&0) {
        return Err("batches hold at least one message".into());
    }
    Ok(driver)
}

/// A child's arguments: `step NAME --store X --dir D ...`.
fn run_child(args: &[String]) -> Outcome<()> {
    let Some(step) = args.first() else {
        return fail("no step named");
    };
    let mut options = StepOptions {
        kind: Kind::Redb,
        dir: PathBuf::new(),
        cache_bytes: 64 << 20,
        seed: 1,
        fanout: 1,
        batch: 1,
        sessions: 1_000,
        entries: 0,
        seconds: Duration::from_secs(10),
        messages: u64::MAX,
    };
    let mut stop_after = None;
    let mut iter = args[1..].iter();
    while let Some(arg) = iter.next() {
        let value = iter.next();
        let number = || number_arg::<u64>(arg, value).map_err(Failure);
        match arg.as_str() {
            "--store" => {
                let name = value.map(String::as_str).unwrap_or("");
                let Some(kind) = Kind::parse(name) else {
                    return fail(format!("unknown store {name}"));
                };
                options.kind = kind;
            }
            "--dir" => options.dir = PathBuf::from(value.map(String::as_str).unwrap_or("")),
            "--cache-mib" => options.cache_bytes = (number()? as usize) << 20,
            "--seed" => options.seed = number()?,
            "--fanout" => options.fanout = number()? as usize,
            "--batch" => options.batch = number()? as usize,
            "--sessions" => options.sessions = number()? as usize,
            "--entries" => options.entries = number()?,
            "--seconds" => options.seconds = Duration::from_secs(number()?),
            "--messages" => options.messages = number()?,
            "--stop-after" => stop_after = Some(number()?),
            _ => return fail(format!("unknown option {arg}")),
        }
    }
    let figures = match step.as_str() {
        "steady" => step_steady(&options)?,
        "fill" => {
            let (figures, _open_store) = step_fill(&options)?;
            figures.print()?;
            return crash();
        }
        "reopen" => step_reopen(&options)?,
        "drain" => step_drain(&options)?,
        "crash-writer" => return step_crash_writer(&options, stop_after),
        other => return fail(format!("unknown step {other}")),
    };
    figures.print()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|arg| arg == "--help" || arg == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let outcome = match args.first().map(String::as_str) {
        Some("step") => run_child(&args[1..]),
        Some("crash-check") => parse_driver(&args[1..], true)
            .map_err(Failure)
            .and_then(|driver| crash_check(&driver)),
        _ => parse_driver(&args, false)
            .map_err(Failure)
            .and_then(|driver| driver.measure()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(message)) => {
            eprintln!("store_choice: {message}\n{USAGE}");
            ExitCode::FAILURE
        }
    }
}
