//! The disk store: an empty write is a barrier on every earlier write, and resolves even when
//! nothing else is written after it (the broker's shutdown waits on one); a stored message
//! lives exactly as long as queue entries refer to it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rallymq_broker::{
    Broker, BrokerConfig, Change, DiskStore, Publish, QoS, QueueEntry, SessionRecord, Storage,
    Store, StoredMessage, TopicName,
};
use rallymq_codec::PacketId;
use rallymq_session::OutgoingStage;
use rallymq_test_support::TempDir;

#[tokio::test]
async fn an_empty_write_is_a_barrier_that_resolves() {
    let dir = TempDir::new("empty-write");
    let store = DiskStore::open(dir.path()).expect("a fresh directory opens");
    let barrier = store.write(Vec::new());
    let decided = tokio::time::timeout(Duration::from_secs(10), store.durable(barrier)).await;
    assert_eq!(decided, Ok(Ok(())), "the barrier of nothing never resolved");
}

#[tokio::test]
async fn shutdown_with_a_disk_store_returns() {
    let dir = TempDir::new("shutdown");
    let config = BrokerConfig {
        storage: Storage::Directory(dir.path().to_path_buf()),
        ..BrokerConfig::default()
    };
    let broker = Broker::start(config).await.expect("the broker starts");
    let stopped = tokio::time::timeout(
        Duration::from_secs(10),
        broker.shutdown(Duration::from_millis(100)),
    )
    .await;
    assert!(stopped.is_ok(), "shutdown did not return within 10 s");
}

/// A message as the broker stores it, for `client`'s queue.
fn message_and_entry(id: u64, client: &Arc<str>) -> (Change, Change, Change) {
    let publish = Publish::new(TopicName::new("t/1").expect("valid topic"), "payload");
    let message = Arc::new(StoredMessage {
        publish,
        received_at: SystemTime::now(),
    });
    let entry = QueueEntry {
        message: id,
        qos: QoS::AtLeastOnce,
        retain: false,
        subscription_ids: Vec::new(),
        in_flight: None,
        size: 10,
    };
    (
        Change::PutMessage(id, message),
        Change::AddEntry {
            client_id: client.clone(),
            seq: 0,
            entry,
        },
        Change::DeleteEntry {
            client_id: client.clone(),
            seq: 0,
        },
    )
}

/// Writes `changes` and waits until they are durable.
async fn write_durably(store: &DiskStore, changes: Vec<Change>) {
    let ticket = store.write(changes);
    tokio::time::timeout(Duration::from_secs(10), store.durable(ticket))
        .await
        .expect("decided")
        .expect("durable");
}

#[tokio::test]
async fn a_message_acknowledged_within_its_own_commit_is_not_kept() {
    let dir = TempDir::new("acked-in-batch");
    let client: Arc<str> = "subscriber".into();
    {
        let store = DiskStore::open(dir.path()).expect("a fresh directory opens");
        // Stored, queued, delivered and acknowledged before the writer took any of it: one
        // group, as when an online subscriber acknowledges within a commit's time.
        let (put, add, delete) = message_and_entry(0, &client);
        let ticket = store.write(vec![put, add, delete]);
        let decided = tokio::time::timeout(Duration::from_secs(10), store.durable(ticket)).await;
        assert_eq!(decided, Ok(Ok(())));
    }
    let store = DiskStore::open(dir.path()).expect("reopens");
    let loaded = store.load().expect("loads");
    // The first free id is one past the last message still stored: none is.
    assert_eq!(
        loaded.next_message_id, 0,
        "the message no entry refers to is still stored"
    );
}

#[tokio::test]
async fn a_message_stored_before_its_entries_is_kept_for_them() {
    let dir = TempDir::new("put-before-entries");
    let client: Arc<str> = "subscriber".into();
    let store = DiskStore::open(dir.path()).expect("a fresh directory opens");
    let (put, add, _) = message_and_entry(0, &client);
    // The writer may take the message in one group and its entries in the next.
    let first = store.write(vec![put]);
    tokio::time::timeout(Duration::from_secs(10), store.durable(first))
        .await
        .expect("decided")
        .expect("durable");
    let second = store.write(vec![add]);
    tokio::time::timeout(Duration::from_secs(10), store.durable(second))
        .await
        .expect("decided")
        .expect("durable");
    let entries = store
        .read_queue(&client, 0, 10)
        .expect("the entry's message is there");
    assert_eq!(entries.len(), 1);
}

#[tokio::test]
async fn entries_added_and_deleted_in_one_commit_leave_the_rest_of_the_queue_as_it_was() {
    let dir = TempDir::new("cancelled-in-batch");
    let client: Arc<str> = "subscriber".into();
    {
        let store = DiskStore::open(dir.path()).expect("a fresh directory opens");
        let record = SessionRecord {
            client_id: client.to_string(),
            expiry_interval: u32::MAX,
            disconnected_at: None,
            subscriptions: Vec::new(),
            will: None,
        };
        let (put, add, delete) = message_and_entry(0, &client);
        let Change::AddEntry { entry, .. } = &add else {
            unreachable!("message_and_entry returns an AddEntry second")
        };
        let mut in_flight = entry.clone();
        in_flight.in_flight = PacketId::new(7).map(|id| (id, OutgoingStage::Published));
        let update = Change::UpdateEntry {
            client_id: client.clone(),
            seq: 0,
            entry: in_flight,
        };
        let second = Change::AddEntry {
            client_id: client.clone(),
            seq: 1,
            entry: entry.clone(),
        };
        let changes = vec![
            Change::PutSession(Box::new(record)),
            put,
            add,
            update,
            delete,
            second,
        ];
        let ticket = store.write(changes);
        let decided = tokio::time::timeout(Duration::from_secs(10), store.durable(ticket)).await;
        assert_eq!(decided, Ok(Ok(())));
    }
    let store = DiskStore::open(dir.path()).expect("reopens");
    let loaded = store.load().expect("loads");
    assert_eq!(loaded.sessions.len(), 1);
    assert_eq!(loaded.sessions[0].queue_len, 1, "one entry counted");
    assert_eq!(loaded.sessions[0].next_seq, 2);
    let entries = store.read_queue(&client, 0, 10).expect("reads");
    let seqs: Vec<u64> = entries.iter().map(|loaded| loaded.seq).collect();
    assert_eq!(seqs, [1], "only the entry never deleted is queued");
    assert_eq!(entries[0].entry.in_flight, None);
    assert_eq!(loaded.next_message_id, 1, "its message stays");
}

#[tokio::test]
async fn an_entry_updated_and_deleted_in_one_commit_is_gone_and_the_others_updated() {
    let dir = TempDir::new("updated-then-deleted");
    let client: Arc<str> = "subscriber".into();
    let store = DiskStore::open(dir.path()).expect("a fresh directory opens");
    let (put, add, delete) = message_and_entry(0, &client);
    let Change::AddEntry { entry, .. } = &add else {
        unreachable!("message_and_entry returns an AddEntry second")
    };
    let entry = entry.clone();
    let second = Change::AddEntry {
        client_id: client.clone(),
        seq: 1,
        entry: entry.clone(),
    };
    write_durably(&store, vec![put, add, second]).await;
    // Both go in flight; the first is acknowledged, all before the next commit.
    let mut in_flight = entry.clone();
    in_flight.in_flight = PacketId::new(7).map(|id| (id, OutgoingStage::Published));
    let update = |seq| Change::UpdateEntry {
        client_id: client.clone(),
        seq,
        entry: in_flight.clone(),
    };
    write_durably(&store, vec![update(0), delete, update(1)]).await;
    let entries = store.read_queue(&client, 0, 10).expect("reads");
    let seqs: Vec<u64> = entries.iter().map(|loaded| loaded.seq).collect();
    assert_eq!(seqs, [1], "the acknowledged entry is gone");
    assert_eq!(
        entries[0].entry.in_flight, in_flight.in_flight,
        "the other is in flight"
    );
}

/// Deletions in any order, runs and lone entries, an update after its entry's deletion, and a
/// whole queue emptied leave the queues, their counts and the messages right.
#[tokio::test]
async fn entries_deleted_in_any_order_leave_the_queues_counts_and_messages_right() {
    let dir = TempDir::new("deleted-in-runs");
    let (first, second): (Arc<str>, Arc<str>) = ("first".into(), "second".into());
    let session = |client_id: &Arc<str>| {
        Change::PutSession(Box::new(SessionRecord {
            client_id: client_id.to_string(),
            expiry_interval: u32::MAX,
            disconnected_at: None,
            subscriptions: Vec::new(),
            will: None,
        }))
    };
    let (put0, add, _) = message_and_entry(0, &first);
    let (put1, _, _) = message_and_entry(1, &second);
    let Change::AddEntry { entry, .. } = add else {
        unreachable!("message_and_entry returns an AddEntry second")
    };
    let add = |client_id: &Arc<str>, seq, message| Change::AddEntry {
        client_id: client_id.clone(),
        seq,
        entry: QueueEntry {
            message,
            ..entry.clone()
        },
    };
    let delete = |client_id: &Arc<str>, seq| Change::DeleteEntry {
        client_id: client_id.clone(),
        seq,
    };
    {
        let store = DiskStore::open(dir.path()).expect("a fresh directory opens");
        let mut changes = vec![session(&first), session(&second), put0, put1];
        changes.extend((0..10).map(|seq| add(&first, seq, 0)));
        changes.extend((0..3).map(|seq| add(&second, seq, 1)));
        write_durably(&store, changes).await;
        let mut in_flight = entry.clone();
        in_flight.in_flight = PacketId::new(9).map(|id| (id, OutgoingStage::Published));
        let mut changes: Vec<Change> = [8, 7, 0, 1, 2, 5]
            .into_iter()
            .map(|seq| delete(&first, seq))
            .collect();
        changes.push(Change::UpdateEntry {
            client_id: first.clone(),
            seq: 5,
            entry: in_flight,
        });
        changes.extend((0..3).rev().map(|seq| delete(&second, seq)));
        write_durably(&store, changes).await;
    }
    let store = DiskStore::open(dir.path()).expect("reopens");
    let loaded = store.load().expect("loads");
    let counts = |client_id: &str| {
        loaded
            .sessions
            .iter()
            .find(|session| session.record.client_id == client_id)
            .map(|session| (session.queue_len, session.queue_bytes))
    };
    assert_eq!(counts("first"), Some((4, 40)), "entries and bytes left");
    assert_eq!(counts("second"), Some((0, 0)), "its queue is empty");
    let seqs: Vec<u64> = store
        .read_queue("first", 0, 20)
        .expect("reads")
        .iter()
        .map(|loaded| loaded.seq)
        .collect();
    assert_eq!(seqs, [3, 4, 6, 9], "the entries not deleted, in order");
    assert!(
        store.read_queue("second", 0, 20).expect("reads").is_empty(),
        "every entry of the emptied queue is gone"
    );
    // Message 1 lost its last entry and is gone; message 0 is still referred to.
    assert_eq!(loaded.next_message_id, 1, "message 1 is still stored");
}

/// A queue longer than one chunk of the store (64 numbers to a B-tree value): it reads from any
/// number with any limit across chunks, a chunk emptied whole goes, the next number after a
/// restart follows the last entry left, and deleting the session releases every message.
#[tokio::test]
async fn a_queue_across_chunks_reads_numbers_and_deletes_right() {
    let dir = TempDir::new("chunks");
    let client: Arc<str> = "across".into();
    let (put, add, _) = message_and_entry(0, &client);
    let Change::AddEntry { entry, .. } = add else {
        unreachable!("message_and_entry returns an AddEntry second")
    };
    let session = Change::PutSession(Box::new(SessionRecord {
        client_id: client.to_string(),
        expiry_interval: u32::MAX,
        disconnected_at: None,
        subscriptions: Vec::new(),
        will: None,
    }));
    let add = |seq| Change::AddEntry {
        client_id: client.clone(),
        seq,
        entry: entry.clone(),
    };
    let delete = |seq| Change::DeleteEntry {
        client_id: client.clone(),
        seq,
    };
    let seqs = |store: &DiskStore, from, limit| -> Vec<u64> {
        store
            .read_queue(&client, from, limit)
            .expect("reads")
            .iter()
            .map(|loaded| loaded.seq)
            .collect()
    };
    {
        let store = DiskStore::open(dir.path()).expect("a fresh directory opens");
        let mut changes = vec![session, put];
        changes.extend((0..200).map(add));
        write_durably(&store, changes).await;
        // Chunk 0 whole, and 130 to 139 in chunk 2; then entries added past 200 in a later
        // commit, and the last ones deleted again.
        let mut changes: Vec<Change> = (0..64).chain(130..140).map(delete).collect();
        changes.extend((200..210).map(add));
        write_durably(&store, changes).await;
        write_durably(&store, (195..210).map(delete).collect()).await;
        assert_eq!(seqs(&store, 0, 3), [64, 65, 66]);
        assert_eq!(seqs(&store, 126, 6), [126, 127, 128, 129, 140, 141]);
        assert_eq!(seqs(&store, 190, 100), [190, 191, 192, 193, 194]);
        assert!(seqs(&store, 195, 100).is_empty());
        assert_eq!(seqs(&store, 0, 1000).len(), 200 - 64 - 10 - 5);
    }
    let store = DiskStore::open(dir.path()).expect("reopens");
    let loaded = store.load().expect("loads");
    let session = &loaded.sessions[0];
    assert_eq!(
        (session.queue_len, session.queue_bytes, session.next_seq),
        (121, 1210, 195)
    );
    // Chunks the same commit changed first (a new one, to another message, and a stored one)
    // go with the session too, and release their messages.
    let (put_other, add_other, _) = message_and_entry(1, &client);
    let Change::AddEntry { entry: other, .. } = add_other else {
        unreachable!("message_and_entry returns an AddEntry second")
    };
    let deleted = vec![
        put_other,
        Change::AddEntry {
            client_id: client.clone(),
            seq: 300,
            entry: other,
        },
        delete(64),
        Change::DeleteSession(client.clone()),
    ];
    write_durably(&store, deleted).await;
    assert!(seqs(&store, 0, 1000).is_empty());
    drop(store);
    let store = DiskStore::open(dir.path()).expect("reopens");
    let loaded = store.load().expect("loads");
    assert!(loaded.sessions.is_empty());
    assert_eq!(
        loaded.next_message_id, 0,
        "the message went with its last entry"
    );
}
