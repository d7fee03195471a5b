//! The disk store checked against a model of what it holds, through random groups of changes
//! and reopens: what its queues read, their counts, and each message's reference count.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rallymq_codec::{PacketId, Publish, QoS, TopicName};
use rallymq_session::OutgoingStage;
use rallymq_test_support::TempDir;
use redb::ReadableTable;

use super::{DiskStore, MESSAGES, QUEUES, REFERENCES, SWEEP_CHUNKS};
use crate::store::record::{ENTRIES_PER_CHUNK, number_of, session_range};
use crate::store::{Change, QueueEntry, SessionRecord, Store, StoredMessage};

/// Writes `changes` and waits until they are durable.
async fn write_durably(store: &DiskStore, changes: Vec<Change>) {
    let ticket = store.write(changes);
    tokio::time::timeout(Duration::from_secs(10), store.durable(ticket))
        .await
        .expect("decided")
        .expect("durable");
}

/// Every stored message with its reference count; each message has a count, and each count
/// a message.
pub(super) fn stored_references(store: &DiskStore) -> BTreeMap<u64, u32> {
    let txn = store.shared.begin_read().expect("reads");
    let messages = txn.open_table(MESSAGES).expect("opens");
    let references = txn.open_table(REFERENCES).expect("opens");
    let counted: BTreeMap<u64, u32> = references
        .iter()
        .expect("iterates")
        .map(|item| {
            let (id, count) = item.expect("reads");
            (id.value(), count.value())
        })
        .collect();
    let stored: Vec<u64> = messages
        .iter()
        .expect("iterates")
        .map(|item| item.expect("reads").0.value())
        .collect();
    assert_eq!(
        stored,
        counted.keys().copied().collect::<Vec<u64>>(),
        "the messages stored are those counted"
    );
    counted
}

/// The numbers of the chunks stored for `client_id`.
fn stored_chunks(store: &DiskStore, client_id: &str) -> Vec<u64> {
    let txn = store.shared.begin_read().expect("reads");
    let queues = txn.open_table(QUEUES).expect("opens");
    let (start, end) = session_range(client_id);
    queues
        .range(start.as_slice()..end.as_slice())
        .expect("reads")
        .map(|item| number_of(item.expect("reads").0.value()).expect("a chunk key"))
        .collect()
}

/// A small seeded generator, so that a failure repeats.
struct Random(u64);

impl Random {
    fn below(&mut self, n: u64) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

/// What a session's queue holds: entry number → (message, size, in flight).
type ModelQueue = BTreeMap<u64, (u64, u32, bool)>;

/// Random groups of changes to three sessions sharing messages (and a fourth that keeps them):
/// entries added with gaps in their numbers, drained from the front (the queue's head moves),
/// deleted out of order, twice, below the head, updated after their deletion, sessions deleted
/// and begun again, a group's deletions before or after its additions, the store reopened
/// between groups. After every group the queues read as the model says, from any number; each
/// stored message's reference count is the number of entries that refer to it (a message none
/// refers to is gone); no more than [`SWEEP_CHUNKS`] chunks stay below a queue's first entry.
/// After a reopen the counts and next numbers agree with the model; once every session is
/// deleted no message is left. Fails if an entry drained past the head comes back or is hidden
/// below it, or if one is counted out of its message twice or never.
#[tokio::test]
async fn queues_and_references_match_a_model_through_random_drains_and_reopens() {
    let dir = TempDir::new("model");
    // The last one keeps an entry of every message until the end: a message counted out
    // once too often by the others is still stored, with a count one short.
    let clients: Vec<Arc<str>> = ["m0", "m1", "m2", "keep"]
        .into_iter()
        .map(Arc::from)
        .collect();
    let keep = clients.len() - 1;
    let session = |client_id: &Arc<str>| {
        Change::PutSession(Box::new(SessionRecord {
            client_id: client_id.to_string(),
            expiry_interval: u32::MAX,
            disconnected_at: None,
            subscriptions: Vec::new(),
            will: None,
        }))
    };
    let entry = |message: u64, size: u32, in_flight: bool| QueueEntry {
        message,
        qos: QoS::AtLeastOnce,
        retain: false,
        subscription_ids: Vec::new(),
        in_flight: in_flight
            .then(|| PacketId::new(7).map(|id| (id, OutgoingStage::Published)))
            .flatten(),
        size,
    };
    for seed in 1..=4u64 {
        let mut random = Random(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut queues: Vec<ModelQueue> = vec![ModelQueue::new(); clients.len()];
        let mut next_seq = vec![0u64; clients.len()];
        let mut next_message = 0u64;
        let mut store = DiskStore::open(dir.path()).expect("opens");
        write_durably(&store, clients.iter().map(session).collect()).await;
        for round in 0..60 {
            let mut changes = Vec::new();
            // The deletions go before the additions in half of the groups: a queue emptied,
            // then given new entries in one commit.
            let deletions_first = random.below(2) == 0;
            for deleting in [deletions_first, !deletions_first] {
                if !deleting {
                    // Messages for one to three sessions, a few entries each.
                    for _ in 0..random.below(12) {
                        let id = next_message;
                        next_message += 1;
                        changes.push(Change::PutMessage(
                            id,
                            Arc::new(StoredMessage {
                                publish: Publish::new(
                                    TopicName::new("m").expect("valid"),
                                    "payload",
                                ),
                                received_at: SystemTime::now(),
                            }),
                        ));
                        for (at, client_id) in clients.iter().enumerate() {
                            if random.below(3) == 0 && at != 0 && at != keep {
                                continue;
                            }
                            // m1's queue grows long, across chunks.
                            let most = match at {
                                1 => 24,
                                _ if at == keep => 0,
                                _ => 4,
                            };
                            for _ in 0..=random.below(most) {
                                // Sometimes a gap: numbers whose entries came and went unstored.
                                if random.below(10) == 0 {
                                    next_seq[at] += random.below(150);
                                }
                                let seq = next_seq[at];
                                next_seq[at] += 1;
                                let size = 1 + random.below(50) as u32;
                                changes.push(Change::AddEntry {
                                    client_id: client_id.clone(),
                                    seq,
                                    entry: entry(id, size, false),
                                });
                                queues[at].insert(seq, (id, size, false));
                            }
                        }
                    }
                    continue;
                }
                for (at, client_id) in clients[..keep].iter().enumerate() {
                    let delete = |seq| Change::DeleteEntry {
                        client_id: client_id.clone(),
                        seq,
                    };
                    match random.below(8) {
                        // Drained from the front.
                        0..=3 => {
                            for _ in 0..random.below(70) {
                                let Some((seq, _)) = queues[at].pop_first() else {
                                    break;
                                };
                                changes.push(delete(seq));
                            }
                        }
                        // One out of order, and updated after it went.
                        4 => {
                            let live: Vec<u64> = queues[at].keys().copied().collect();
                            if !live.is_empty() {
                                let seq = live[random.below(live.len() as u64) as usize];
                                let (message, size, _) = queues[at][&seq];
                                queues[at].remove(&seq);
                                changes.push(delete(seq));
                                changes.push(Change::UpdateEntry {
                                    client_id: client_id.clone(),
                                    seq,
                                    entry: entry(message, size, true),
                                });
                            }
                        }
                        // Numbers deleted already, or never used: nothing happens.
                        5 => {
                            for _ in 0..3 {
                                let seq = random.below(next_seq[at] + 1);
                                if !queues[at].contains_key(&seq) {
                                    changes.push(delete(seq));
                                }
                            }
                        }
                        // One in flight.
                        6 => {
                            if let Some((seq, (message, size, in_flight))) =
                                queues[at].iter_mut().nth(random.below(5) as usize)
                            {
                                *in_flight = true;
                                changes.push(Change::UpdateEntry {
                                    client_id: client_id.clone(),
                                    seq: *seq,
                                    entry: entry(*message, *size, true),
                                });
                            }
                        }
                        // Deleted, and begun again from number 0.
                        _ if random.below(4) == 0 => {
                            changes.push(Change::DeleteSession(client_id.clone()));
                            changes.push(session(client_id));
                            queues[at].clear();
                            next_seq[at] = 0;
                        }
                        _ => {}
                    }
                }
            }
            write_durably(&store, changes).await;
            let mut references: BTreeMap<u64, u32> = BTreeMap::new();
            for (message, _, _) in queues.iter().flat_map(|queue| queue.values()) {
                *references.entry(*message).or_default() += 1;
            }
            assert_eq!(
                stored_references(&store),
                references,
                "seed {seed} round {round}: messages and their reference counts"
            );
            for (at, client_id) in clients.iter().enumerate() {
                // Chunks emptied by the head stay until they are swept, a few at a time; an
                // empty queue keeps none.
                let first_live = queues[at]
                    .first_key_value()
                    .map_or(u64::MAX, |(seq, _)| seq / ENTRIES_PER_CHUNK);
                let below = stored_chunks(&store, client_id)
                    .into_iter()
                    .filter(|number| *number < first_live)
                    .count() as u64;
                assert!(
                    below <= SWEEP_CHUNKS && (below == 0 || !queues[at].is_empty()),
                    "seed {seed} round {round}: {client_id} keeps {below} chunks below its first \
                     entry"
                );
            }
            let reopened = random.below(6) == 0;
            if reopened {
                drop(store);
                store = DiskStore::open(dir.path()).expect("reopens");
                let loaded = store.load().expect("loads");
                for (at, client_id) in clients.iter().enumerate() {
                    let session = loaded
                        .sessions
                        .iter()
                        .find(|session| *session.record.client_id == **client_id)
                        .expect("every session is stored");
                    let bytes: u64 = queues[at]
                        .values()
                        .map(|(_, size, _)| u64::from(*size))
                        .sum();
                    assert_eq!(
                        (session.queue_len, session.queue_bytes),
                        (queues[at].len() as u64, bytes),
                        "seed {seed} round {round}: counts of {client_id}"
                    );
                    let last = queues[at].last_key_value().map_or(0, |(seq, _)| seq + 1);
                    assert!(
                        session.next_seq >= last,
                        "seed {seed} round {round}: {client_id} numbers from {} below its last \
                         entry {last}",
                        session.next_seq
                    );
                    next_seq[at] = session.next_seq;
                }
            }
            for (at, client_id) in clients.iter().enumerate() {
                let (from, limit) = if reopened {
                    (0, usize::MAX)
                } else {
                    (
                        random.below(next_seq[at] + 1) * random.below(2),
                        1 + random.below(200) as usize,
                    )
                };
                let read: Vec<(u64, u64, u32, bool)> = store
                    .read_queue(client_id, from, limit)
                    .unwrap_or_else(|e| panic!("seed {seed} round {round}: {client_id}: {e}"))
                    .into_iter()
                    .map(|loaded| {
                        (
                            loaded.seq,
                            loaded.entry.message,
                            loaded.entry.size,
                            loaded.entry.in_flight.is_some(),
                        )
                    })
                    .collect();
                let expected: Vec<(u64, u64, u32, bool)> = queues[at]
                    .range(from..)
                    .take(limit)
                    .map(|(seq, (message, size, in_flight))| (*seq, *message, *size, *in_flight))
                    .collect();
                assert_eq!(
                    read, expected,
                    "seed {seed} round {round}: {client_id} from {from}, {limit} at most \
                     (reopened: {reopened})"
                );
            }
        }
        write_durably(
            &store,
            clients
                .iter()
                .map(|client_id| Change::DeleteSession(client_id.clone()))
                .collect(),
        )
        .await;
        drop(store);
        let store = DiskStore::open(dir.path()).expect("reopens");
        store.load().expect("loads");
        assert!(
            stored_references(&store).is_empty(),
            "seed {seed}: a message outlived every entry that referred to it"
        );
    }
}

/// Deleting the first entry of a chunk moves the queue's head past the chunks before it only
/// when none of them holds an entry: not while one is stored, nor while one the same group
/// added is open (the store takes entries in any order). Numbers with no entry before a
/// session's first are skipped (entries that came and went within their groups).
#[tokio::test]
async fn the_head_moves_past_earlier_chunks_only_when_they_hold_no_entry() {
    let dir = TempDir::new("gap");
    let client: Arc<str> = "gap".into();
    let store = DiskStore::open(dir.path()).expect("opens");
    let entry = QueueEntry {
        message: 0,
        qos: QoS::AtLeastOnce,
        retain: false,
        subscription_ids: Vec::new(),
        in_flight: None,
        size: 1,
    };
    let add = |seq| Change::AddEntry {
        client_id: client.clone(),
        seq,
        entry: entry.clone(),
    };
    let delete = |seq| Change::DeleteEntry {
        client_id: client.clone(),
        seq,
    };
    let seqs = |store: &DiskStore| -> Vec<u64> {
        store
            .read_queue(&client, 0, 100)
            .expect("reads")
            .iter()
            .map(|loaded| loaded.seq)
            .collect()
    };
    write_durably(
        &store,
        vec![
            Change::PutSession(Box::new(SessionRecord {
                client_id: client.to_string(),
                expiry_interval: u32::MAX,
                disconnected_at: None,
                subscriptions: Vec::new(),
                will: None,
            })),
            Change::PutMessage(
                0,
                Arc::new(StoredMessage {
                    publish: Publish::new(TopicName::new("g").expect("valid"), "payload"),
                    received_at: SystemTime::now(),
                }),
            ),
            add(100),
            add(300),
            add(301),
        ],
    )
    .await;
    write_durably(&store, vec![delete(300)]).await;
    assert_eq!(seqs(&store), [100, 301], "chunk 1 is stored before chunk 4");
    // Past the gap before 100: chunk 1 goes whole.
    write_durably(&store, vec![delete(100)]).await;
    assert_eq!(seqs(&store), [301]);
    write_durably(&store, vec![add(200), delete(301)]).await;
    assert_eq!(
        seqs(&store),
        [200],
        "chunk 3, added in the group, is before chunk 4"
    );
    drop(store);
    let store = DiskStore::open(dir.path()).expect("reopens");
    let loaded = store.load().expect("loads");
    assert_eq!(
        (loaded.sessions[0].queue_len, loaded.sessions[0].next_seq),
        (1, 201)
    );
    assert_eq!(seqs(&store), [200]);
    assert_eq!(stored_references(&store), BTreeMap::from([(0, 1)]));
}
