//! The disk store's barrier: an empty write is a barrier on every earlier write, and resolves
//! even when nothing else is written after it (the broker's shutdown waits on one).

use std::path::PathBuf;
use std::time::Duration;

use rallymq_broker::{Broker, BrokerConfig, DiskStore, Storage, Store};

/// A fresh directory for one test, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("rallymq-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn an_empty_write_is_a_barrier_that_resolves() {
    let dir = TempDir::new("empty-write");
    let store = DiskStore::open(&dir.0).expect("a fresh directory opens");
    let barrier = store.write(Vec::new());
    let decided = tokio::time::timeout(Duration::from_secs(10), store.durable(barrier)).await;
    assert_eq!(decided, Ok(Ok(())), "the barrier of nothing never resolved");
}

#[tokio::test]
async fn shutdown_with_a_disk_store_returns() {
    let dir = TempDir::new("shutdown");
    let config = BrokerConfig {
        storage: Storage::Directory(dir.0.clone()),
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
