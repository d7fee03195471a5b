//! A [`DiskStore`] for restart and disk-failure tests: the broker's real store, which a test
//! can make fail (the broker is told so, as when the disk is full), hold (no commit becomes
//! durable until it is let go, as on a slow disk) or stop dead (as when the process is killed:
//! nothing the broker writes afterwards reaches the disk).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use rallymq_broker::{Change, DiskStore, Loaded, LoadedEntry, Store, StoreError, Ticket};
use tokio::sync::watch;

/// A [`DiskStore`] that fails writes on command, and can be closed under the broker's feet.
#[derive(Debug)]
pub struct TestStore {
    dir: PathBuf,
    /// `None` once closed: later writes are lost and never become durable. (An `Arc`, so
    /// that a group can be opened without holding the lock: opening may wait for a commit.)
    disk: Mutex<Option<Arc<DiskStore>>>,
    /// The error every write fails with while set.
    failing: Mutex<Option<StoreError>>,
    /// Tickets written while failing, with their error.
    failed: Mutex<HashMap<Ticket, StoreError>>,
    /// While `true`, no ticket is durable.
    held: watch::Sender<bool>,
}

/// A fresh directory for a store under the system's temporary directory, removed when dropped.
pub struct DataDir(pub PathBuf);

impl DataDir {
    pub fn new() -> Self {
        let path = std::env::temp_dir().join(format!(
            "rallymq-test-store-{}",
            rallymq_test_support::run_id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        Self(path)
    }
}

impl std::ops::Deref for DataDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl TestStore {
    /// Opens the disk store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            dir: dir.to_path_buf(),
            disk: Mutex::new(Some(Arc::new(DiskStore::open(dir)?))),
            failing: Mutex::new(None),
            failed: Mutex::new(HashMap::new()),
            held: watch::channel(false).0,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// From now on every write fails with `error` (`None`: writes succeed again). A failed
    /// write still reaches the disk, later: the disk store keeps the changes of a failed commit
    /// and commits them with the next one that succeeds, so that what is stored stays what the
    /// broker has in memory; only the broker's answer to the publisher differs.
    pub fn fail_writes(&self, error: Option<StoreError>) {
        *lock(&self.failing) = error;
    }

    /// Holds every commit from now on (`true`): `durable` resolves for none until they are let
    /// go (`false`), though the disk store goes on committing.
    pub fn hold(&self, held: bool) {
        self.held.send_replace(held);
    }

    /// Closes the disk store at once, whatever the broker still does: what was handed to it
    /// is committed, anything written afterwards is lost and never durable, as when the
    /// process dies. Releases the directory for the next broker (groups are opened and closed
    /// without an await between, so none holds the store meanwhile).
    pub fn close(&self) {
        let disk = lock(&self.disk).take();
        drop(disk);
    }
}

impl Store for TestStore {
    fn load(&self) -> Result<Loaded, StoreError> {
        match &*lock(&self.disk) {
            Some(disk) => disk.load(),
            None => Err(StoreError::Closed),
        }
    }

    fn read_queue(
        &self,
        client_id: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<LoadedEntry>, StoreError> {
        match &*lock(&self.disk) {
            Some(disk) => disk.read_queue(client_id, from_seq, limit),
            None => Err(StoreError::Closed),
        }
    }

    fn write(&self, changes: Vec<Change>) -> Ticket {
        let disk = lock(&self.disk);
        let Some(disk) = &*disk else {
            // Never decided: a dead process answers nothing.
            return Ticket(u64::MAX);
        };
        let ticket = disk.write(changes);
        if let Some(error) = &*lock(&self.failing) {
            lock(&self.failed).insert(ticket, error.clone());
        }
        ticket
    }

    fn begin_group(&self) {
        let disk = lock(&self.disk).clone();
        if let Some(disk) = disk {
            disk.begin_group();
        }
    }

    fn end_group(&self) {
        let disk = lock(&self.disk).clone();
        if let Some(disk) = disk {
            disk.end_group();
        }
    }

    fn durable(&self, ticket: Ticket) -> BoxFuture<'static, Result<(), StoreError>> {
        let durable = match &*lock(&self.disk) {
            Some(disk) if ticket != Ticket(u64::MAX) => disk.durable(ticket),
            _ => return Box::pin(std::future::pending()),
        };
        let failed = lock(&self.failed).get(&ticket).cloned();
        let mut held = self.held.subscribe();
        Box::pin(async move {
            durable.await?;
            // The sender lives as long as the store.
            let _ = held.wait_for(|held| !held).await;
            match failed {
                Some(error) => Err(error),
                None => Ok(()),
            }
        })
    }
}
