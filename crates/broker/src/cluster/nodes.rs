//! Which nodes are alive, and the wills of a dead node's clients.
//!
//! - **Heartbeats.** Each node puts its [`Beat`] under its id in the KV bucket [`NODES_BUCKET`]
//!   every heartbeat interval, and watches the bucket. A node whose key has not changed for
//!   `missed_beats` intervals, as this node's watch sees it, is dead. A node that stops cleanly
//!   deletes its key first, so it is never seen dead. Each start is a new *incarnation* (the
//!   start time in nanoseconds): a node that comes back under its id is a new incarnation, and
//!   its previous one, if it did not leave cleanly, is dead.
//! - **Wills.** A connection whose CONNECT has a will records it in [`WILLS_BUCKET`] under
//!   `<node>.<incarnation>.<client id token>`, and deletes it when the connection's task ends
//!   (the will published, discarded by a normal DISCONNECT, or cancelled). What is left under a
//!   dead incarnation are the wills of the clients connected when it died.
//! - **Exactly one publisher.** The nodes that see an incarnation dead race to create the
//!   claim key `claim.<node>.<incarnation>` in [`NODES_BUCKET`]; creating is a compare-and-set
//!   that only one wins. The winner publishes each will after its delay, counted from the last
//!   change of the dead node's key it saw, through the normal publish path (to every node, and
//!   to the retained bucket when retained), and deletes each will's key once published. It also
//!   takes over (compare-and-set on the revision) the claims the dead run held, and publishes
//!   what is left of those wills.
//! - A node only judges others while its own beats come back through its watch, and have for
//!   as long as it gives others to beat: a node whose watch has stalled sees everyone silent,
//!   and after an outage of the NATS servers everyone's last beat is old; neither must
//!   publish live nodes' wills.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::{
    self,
    kv::{Operation, Store},
};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::StreamExt;
use rallymq_codec::Publish;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::bucket::{self, NotWritten};
use super::share::KnownGroups;
use super::{kv_bucket, open, seal, subject, until_shutdown};
use crate::Error;
use crate::broker::Shared;
use crate::sys::Load;

/// The bucket of heartbeats (key: node id) and claims on dead incarnations.
pub(crate) const NODES_BUCKET: &str = "rallymq_nodes";

/// The bucket of the wills of connected clients.
pub(crate) const WILLS_BUCKET: &str = "rallymq_wills";

/// How long the nodes bucket keeps a key nobody rewrites: claims go after a day, heartbeats are
/// rewritten every interval.
const NODES_MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// The first token of a claim key.
const CLAIM: &str = "claim";

/// The file in the data directory that holds the running incarnation, deleted when the node
/// leaves: found at a start, it says the previous run did not leave, so the cluster publishes
/// the wills it had, not the sessions restored from the store.
const RUN_FILE: &str = "cluster-run";

/// How long a leaving node waits for NATS to take its last deletes.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Default interval between a node's heartbeats.
pub(crate) const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);

/// Default number of heartbeats a node may miss before it is dead.
pub(crate) const DEFAULT_MISSED_BEATS: u32 = 3;

/// What a node says of itself at every heartbeat (JSON in the bucket).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Beat {
    /// This run of the node: its start, nanoseconds since the Unix epoch, in hex.
    pub(crate) incarnation: String,
    /// When this run started, milliseconds since the Unix epoch.
    pub(crate) started_at: u64,
    /// When this beat was written, milliseconds since the Unix epoch (the writer's clock).
    pub(crate) beat_at: u64,
    /// The node's first listener, `tcp://127.0.0.1:1883`.
    pub(crate) address: Option<String>,
    /// Clients connected to the node.
    pub(crate) clients: u64,
    /// Messages received per minute, averaged over a minute (as the single node's `load` topics).
    pub(crate) messages_received_per_min: f64,
    /// Messages sent per minute, averaged over a minute.
    pub(crate) messages_sent_per_min: f64,
    /// The shared groups the node has members of (`$share/g/f`), at most
    /// [`MAX_BEAT_GROUPS_BYTES`] of them: the other nodes send a QoS 0 message they may want
    /// alone, not in a batch ([`super::share::KnownGroups`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) groups: Vec<String>,
    /// The node has more groups than `groups` lists: any message may be wanted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) groups_elided: bool,
}

/// Most bytes of group filters a beat lists ([`Beat::groups`]); a node with more says so
/// instead ([`Beat::groups_elided`]), and no node batches its QoS 0 messages then.
const MAX_BEAT_GROUPS_BYTES: usize = 16 * 1024;

impl Beat {
    /// The beat with `groups` listed, as many as [`MAX_BEAT_GROUPS_BYTES`] allows.
    fn with_groups(mut self, groups: &BTreeSet<String>) -> Self {
        let mut bytes = 0;
        for group in groups {
            bytes += group.len();
            if bytes > MAX_BEAT_GROUPS_BYTES {
                self.groups_elided = true;
                break;
            }
            self.groups.push(group.clone());
        }
        self
    }
}

/// A node as this node knows it.
#[derive(Debug, Clone)]
pub(crate) struct NodeState {
    pub(crate) id: String,
    pub(crate) beat: Beat,
    /// Its key changed within the last `missed_beats` intervals.
    pub(crate) live: bool,
    /// How long ago this node last saw its key change.
    pub(crate) silent_for: Duration,
    /// The node answering.
    pub(crate) this_node: bool,
}

/// The last change of a node's key, as this node's watch saw it.
#[derive(Debug, Clone)]
struct Seen {
    beat: Beat,
    revision: u64,
    changed: Instant,
}

impl Seen {
    /// The shared groups its beat lists, and whether it has more.
    fn groups(&self) -> (&[String], bool) {
        (&self.beat.groups, self.beat.groups_elided)
    }
}

/// A will's record, in the order the connections made them.
#[derive(Debug)]
enum WillChange {
    Put(String, Bytes),
    Delete(String),
}

/// A node's heartbeat and will records: held by the node's [`super::Link`].
#[derive(Debug)]
pub(super) struct Nodes {
    node_id: String,
    incarnation: String,
    started_at: SystemTime,
    heartbeat: Duration,
    missed_beats: u32,
    nodes: Store,
    wills_bucket: Store,
    /// The JetStream context of the claims' conditional writes ([`bucket::write_at`]).
    context: jetstream::Context,
    /// Clients whose will is recorded, with the connection that recorded it: a connection
    /// taken over ends after its successor recorded its own will, which it must not delete.
    wills: Mutex<HashMap<Arc<str>, u64>>,
    changes: mpsc::UnboundedSender<WillChange>,
    /// Every node's last change seen by the watch.
    seen: Mutex<BTreeMap<String, Seen>>,
    /// Since when this node's own beats have come back without a gap (one more than half an
    /// interval late): it judges others only once they have had as long as it allows them to
    /// beat. (After a majority of the NATS servers came back, every node's last beat was old,
    /// and the first node to beat again took the others for dead, publishing the wills of their
    /// live clients; after the nodes bucket's leader died, a node whose server went with it was
    /// taken for dead while it reconnected.)
    watching_since: Mutex<Option<Instant>>,
    /// Held while a beat is written, and set once the node has left: no beat after the key's
    /// delete brings it back.
    left: tokio::sync::Mutex<bool>,
    /// [`RUN_FILE`] in the data directory, if the node keeps one.
    run_file: Option<PathBuf>,
    /// The previous run with this data directory did not leave the cluster.
    previous_run_crashed: bool,
    /// The shared groups this node has members of, listed by its beats.
    local_groups: Mutex<BTreeSet<String>>,
    /// How many times `local_groups` changed; a beat is written at once after a change.
    groups_changed: watch::Sender<u64>,
    /// Up to which change of `local_groups` a written beat lists them.
    groups_announced: watch::Sender<u64>,
    /// The shared groups of every node, from the beats seen.
    known_groups: KnownGroups,
    /// The receiving half of `changes`, and the previous incarnation to settle, taken by
    /// [`Nodes::spawn`].
    parts: Mutex<Option<(mpsc::UnboundedReceiver<WillChange>, Option<Seen>)>>,
}

/// Milliseconds since the Unix epoch.
fn unix_millis(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// The key of a client's will.
fn will_key(node_id: &str, incarnation: &str, client_id: &str) -> String {
    format!("{node_id}.{incarnation}.{}", subject::token(client_id))
}

/// A will's value: its delay (seconds, big-endian u32), then the envelope of its message.
fn will_value(delay: u32, client_id: &str, will: &Publish) -> Option<Bytes> {
    let envelope = seal(Some(client_id), will)?;
    let mut value = BytesMut::with_capacity(4 + envelope.len());
    value.put_u32(delay);
    value.put_slice(&envelope);
    Some(value.freeze())
}

/// The delay, client id and message of a will's value; `None` for anything else.
fn open_will(mut value: Bytes) -> Option<(u32, String, Publish)> {
    if value.len() < 4 {
        return None;
    }
    let delay = value.get_u32();
    let (client_id, publish) = open(value)?;
    Some((delay, client_id?, publish))
}

impl Nodes {
    /// Opens (or creates) the buckets; notes this node's previous incarnation if it is still
    /// in the bucket (it did not leave cleanly), for [`Nodes::spawn`] to settle.
    pub(super) async fn open(
        client: &async_nats::Client,
        node_id: &str,
        heartbeat: Duration,
        missed_beats: u32,
        data_dir: Option<&Path>,
    ) -> Result<Self, Error> {
        let nodes = kv_bucket(
            client,
            NODES_BUCKET,
            "rallymq: heartbeats of the cluster's nodes, and claims on dead ones",
            NODES_MAX_AGE,
        )
        .await?;
        let wills_bucket = kv_bucket(
            client,
            WILLS_BUCKET,
            "rallymq: the wills of the clients connected to each node",
            Duration::ZERO,
        )
        .await?;
        let started_at = SystemTime::now();
        let incarnation = format!(
            "{:x}",
            started_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |since| since.as_nanos())
        );
        let previous = match nodes.entry(node_id).await {
            Ok(Some(entry)) if entry.operation == Operation::Put => {
                serde_json::from_slice::<Beat>(&entry.value)
                    .ok()
                    .map(|beat| Seen {
                        beat,
                        revision: entry.revision,
                        changed: Instant::now(),
                    })
            }
            Ok(_) => None,
            Err(error) => {
                // The other nodes see the old run die when this run's first beat replaces it.
                warn!(%error, "cluster: cannot read this node's previous heartbeat");
                None
            }
        };
        let run_file = data_dir.map(|dir| dir.join(RUN_FILE));
        let previous_run_crashed = run_file.as_deref().is_some_and(Path::exists);
        if let (Some(path), Some(dir)) = (&run_file, data_dir) {
            let _ = std::fs::create_dir_all(dir);
            std::fs::write(path, format!("{incarnation}\n")).map_err(|source| {
                Error::WriteFile {
                    path: path.clone(),
                    source,
                }
            })?;
        }
        let (changes, receiver) = mpsc::unbounded_channel();
        Ok(Self {
            node_id: node_id.to_owned(),
            incarnation,
            started_at,
            heartbeat: heartbeat.max(Duration::from_millis(10)),
            missed_beats: missed_beats.max(1),
            nodes,
            wills_bucket,
            context: jetstream::new(client.clone()),
            wills: Mutex::default(),
            changes,
            seen: Mutex::default(),
            watching_since: Mutex::default(),
            left: tokio::sync::Mutex::new(false),
            run_file,
            previous_run_crashed,
            local_groups: Mutex::default(),
            groups_changed: watch::Sender::new(0),
            groups_announced: watch::Sender::new(0),
            known_groups: KnownGroups::default(),
            parts: Mutex::new(Some((receiver, previous))),
        })
    }

    /// How long a node's key may stay unchanged before the node is dead.
    fn dead_after(&self) -> Duration {
        self.heartbeat * self.missed_beats
    }

    /// Starts the heartbeat, the watch of the other nodes, and the writer of will records.
    pub(super) fn spawn(self: &Arc<Self>, shared: &Arc<Shared>) -> Vec<JoinHandle<()>> {
        let Some((receiver, previous)) = crate::lock(&self.parts).take() else {
            return Vec::new();
        };
        let mut tasks = vec![
            tokio::spawn(write_wills(self.wills_bucket.clone(), receiver)),
            tokio::spawn(until_shutdown(shared, beat(self.clone(), shared.clone()))),
            tokio::spawn(until_shutdown(
                shared,
                watch(self.clone(), Arc::downgrade(shared)),
            )),
        ];
        // Not among the broker's tasks, which a shutdown aborts: dropping the handle stops the
        // broker too, and either way the node leaves before its connections end.
        let leaving = self.clone();
        let mut shutdown = shared.shutdown.clone();
        tokio::spawn(async move {
            let _ = shutdown.changed().await;
            leaving.leave().await;
        });
        if let Some(previous) = previous
            && previous.beat.incarnation != self.incarnation
        {
            // This node's previous run stopped without leaving: its clients' wills are due.
            // Tried until NATS answers: the other nodes judge the previous run once only, when
            // they see this run's first beat, and their claim may fail as this one's did (a
            // restart often comes with a server's return, and the buckets' elections).
            let nodes = self.clone();
            let weak = Arc::downgrade(shared);
            tasks.push(tokio::spawn(until_shutdown(shared, async move {
                let id = nodes.node_id.clone();
                while let Err(error) = nodes.reap(&weak, &id, &previous, false).await {
                    warn!(%error, "cluster: cannot claim this node's previous run's wills yet");
                    tokio::time::sleep(RETRY_DELAY).await;
                }
            })));
        }
        tasks
    }

    /// Records the will of `client_id`'s connection `connection`, to be published by another
    /// node if this one dies: `delay` is its Will Delay Interval, at most the session's expiry.
    pub(super) fn record_will(
        &self,
        client_id: &Arc<str>,
        connection: u64,
        will: &Publish,
        delay: u32,
    ) {
        let Some(value) = will_value(delay, client_id, will) else {
            warn!(%client_id, "cluster: a will too large to record; not published if this node dies");
            return;
        };
        let mut wills = crate::lock(&self.wills);
        wills.insert(client_id.clone(), connection);
        let key = will_key(&self.node_id, &self.incarnation, client_id);
        // Sent under the lock, so that the records keep the order of the map's changes.
        let _ = self.changes.send(WillChange::Put(key, value));
    }

    /// The will of `client_id`'s connection `connection` is published, discarded or cancelled:
    /// its record goes (unless a later connection of the client recorded its own).
    pub(super) fn forget_will(&self, client_id: &str, connection: u64) {
        let mut wills = crate::lock(&self.wills);
        if wills.get(client_id) != Some(&connection) {
            return;
        }
        wills.remove(client_id);
        let key = will_key(&self.node_id, &self.incarnation, client_id);
        let _ = self.changes.send(WillChange::Delete(key));
    }

    /// Leaves the cluster cleanly: deletes this node's heartbeat key, so that no node takes it
    /// for dead and publishes its clients' wills, then its will records (best effort).
    pub(super) async fn leave(&self) {
        let mut left = self.left.lock().await;
        if *left {
            return;
        }
        *left = true;
        let deleted = tokio::time::timeout(LEAVE_TIMEOUT, self.nodes.delete(&self.node_id)).await;
        if !matches!(deleted, Ok(Ok(()))) {
            warn!(node = %self.node_id, "cluster: the heartbeat key could not be deleted; other nodes will take this node for dead");
        }
        if let Some(path) = &self.run_file
            && let Err(error) = std::fs::remove_file(path)
        {
            warn!(%error, path = %path.display(), "cluster: cannot delete the run file; the next start will leave the restored sessions' wills to the cluster");
        }
        let keys: Vec<String> = crate::lock(&self.wills)
            .drain()
            .map(|(client_id, _)| will_key(&self.node_id, &self.incarnation, &client_id))
            .collect();
        let bucket = &self.wills_bucket;
        let _ = tokio::time::timeout(LEAVE_TIMEOUT, async {
            for key in keys {
                let _ = bucket.delete(&key).await;
            }
        })
        .await;
        info!(node = %self.node_id, "left the cluster");
    }

    /// Whether the previous run with this data directory stopped without leaving the cluster:
    /// the wills of its sessions are then the cluster's to publish (they were recorded in
    /// [`WILLS_BUCKET`]), not the restored sessions'.
    pub(super) fn previous_run_crashed(&self) -> bool {
        self.previous_run_crashed
    }

    /// Every node this node knows of, by id, with its liveness.
    pub(super) fn states(&self) -> Vec<NodeState> {
        let dead_after = self.dead_after();
        crate::lock(&self.seen)
            .iter()
            .map(|(id, seen)| {
                let silent_for = seen.changed.elapsed();
                NodeState {
                    id: id.clone(),
                    beat: seen.beat.clone(),
                    live: silent_for <= dead_after,
                    silent_for,
                    this_node: *id == self.node_id,
                }
            })
            .collect()
    }

    /// This node's beat now; `load` keeps the minute averages between beats.
    fn beat_now(&self, shared: &Shared, loads: &mut [Load; 2], interval: Duration) -> Beat {
        let totals = shared.stats.totals();
        loads[0].update(totals.routed, interval);
        loads[1].update(totals.queued, interval);
        Beat {
            incarnation: self.incarnation.clone(),
            started_at: unix_millis(self.started_at),
            beat_at: unix_millis(SystemTime::now()),
            address: shared.listeners.first().map(ToString::to_string),
            clients: shared.stats.clients_connected.load(Ordering::Relaxed) as u64,
            messages_received_per_min: loads[0].one,
            messages_sent_per_min: loads[1].one,
            groups: Vec::new(),
            groups_elided: false,
        }
        .with_groups(&crate::lock(&self.local_groups))
    }

    /// This node has members of the shared group `group` (`$share/g/f`) now: its next beat,
    /// written at once, lists it.
    pub(super) fn join_group(&self, group: &str) {
        if crate::lock(&self.local_groups).insert(group.to_owned()) {
            self.groups_changed.send_modify(|changes| *changes += 1);
        }
    }

    /// This node has no member of the shared group `group` any more.
    pub(super) fn leave_group(&self, group: &str) {
        if crate::lock(&self.local_groups).remove(group) {
            self.groups_changed.send_modify(|changes| *changes += 1);
        }
    }

    /// `None` if a beat written lists the groups this node has now; otherwise what to wait
    /// for: how far the beats have listed the changes, and the change to reach (see
    /// [`super::share::KnownGroups`] for what other nodes do until they see it).
    pub(super) fn groups_unannounced(&self) -> Option<(watch::Receiver<u64>, u64)> {
        let changed = *self.groups_changed.borrow();
        let announced = self.groups_announced.subscribe();
        let behind = *announced.borrow() < changed;
        behind.then_some((announced, changed))
    }

    /// Whether a shared group of some node may want a QoS 0 message on `topic`.
    pub(super) fn groups_may_want(&self, topic: &rallymq_codec::TopicName) -> bool {
        self.known_groups.may_want(topic)
    }

    /// This node's run, as a claim's value names its claimer.
    fn claimer(&self) -> Bytes {
        Bytes::from(format!("{}.{}", self.node_id, self.incarnation))
    }

    /// Claims the dead incarnation `dead` of node `id` and, when this node wins the claim,
    /// publishes the wills recorded under it, each after its delay, and takes over the claims
    /// the dead incarnation held on others whose wills it had not all published. `delete_key`:
    /// the dead node's heartbeat key is still that incarnation's, and goes. `Err` when NATS did
    /// not answer (try again later).
    async fn reap(
        &self,
        shared: &Weak<Shared>,
        id: &str,
        dead: &Seen,
        delete_key: bool,
    ) -> Result<(), String> {
        let incarnation = &dead.beat.incarnation;
        let claim = format!("{CLAIM}.{id}.{incarnation}");
        match bucket::create(&self.context, &self.nodes, &claim, self.claimer()).await {
            Ok(_) => {}
            Err(NotWritten::Moved) => {
                debug!(node = %id, %incarnation, "cluster: another node publishes the dead node's wills");
                return Ok(());
            }
            Err(error) => return Err(error.to_string()),
        }
        if delete_key {
            let deleted = tokio::time::timeout(
                ATTEMPT_TIMEOUT,
                self.nodes.delete_expect_revision(id, Some(dead.revision)),
            )
            .await;
            if !matches!(deleted, Ok(Ok(()))) {
                // It came back meanwhile, as a new incarnation: its key is its own (or NATS did
                // not answer: the next incarnation's beat replaces it all the same).
                debug!(node = %id, "cluster: the dead node's key was not deleted");
            }
        }
        self.publish_wills(shared, id, incarnation, dead.changed)
            .await?;
        self.take_over_claims(shared, id, incarnation, dead.changed)
            .await;
        Ok(())
    }

    /// Takes over (compare-and-set on their revision) the claims that the dead incarnation
    /// held, and publishes what is left of their wills, due from `died` at the latest.
    async fn take_over_claims(
        &self,
        shared: &Weak<Shared>,
        id: &str,
        incarnation: &str,
        died: Instant,
    ) {
        let holder = format!("{id}.{incarnation}");
        let prefix = format!("{CLAIM}.");
        let claims = list(&self.nodes, &prefix).await.unwrap_or_else(|error| {
            warn!(%error, %prefix, "cluster: cannot list the claims; a dead claimer's are not taken over");
            Vec::new()
        });
        for key in claims {
            let entry = match self.nodes.entry(key.clone()).await {
                Ok(Some(entry)) if entry.operation == Operation::Put => entry,
                _ => continue,
            };
            if entry.value != holder.as_bytes() {
                continue;
            }
            let Some((node, claimed)) = key[prefix.len()..].split_once('.') else {
                continue;
            };
            if bucket::write_at(
                &self.context,
                &self.nodes,
                &key,
                self.claimer(),
                entry.revision,
            )
            .await
            .is_err()
            {
                continue;
            }
            info!(node, incarnation = claimed, claimer = %id, "cluster: the node publishing a dead node's wills died; this node takes over");
            if let Err(error) = self.publish_wills(shared, node, claimed, died).await {
                warn!(%error, node, incarnation = claimed, "cluster: a claim taken over whose wills cannot be listed; not published");
            }
        }
    }

    /// Publishes each will recorded under the incarnation `incarnation` of node `id` when its
    /// delay has passed since `died`, then deletes its record. `Err` when the records cannot
    /// be listed (nothing is published then).
    async fn publish_wills(
        &self,
        shared: &Weak<Shared>,
        id: &str,
        incarnation: &str,
        died: Instant,
    ) -> Result<(), String> {
        let keys = list(&self.wills_bucket, &format!("{id}.{incarnation}.")).await?;
        info!(node = %id, %incarnation, wills = keys.len(), "cluster: a node is dead; this node publishes its clients' wills");
        for key in keys {
            let entry = match read(&self.wills_bucket, &key).await {
                Ok(Some(entry)) if entry.operation == Operation::Put => entry,
                Ok(_) => continue,
                Err(error) => {
                    warn!(%error, %key, "cluster: cannot read a dead node's will; not published");
                    continue;
                }
            };
            let Some((delay, client_id, will)) = open_will(entry.value) else {
                debug!(%key, "cluster: not a will record; ignored");
                continue;
            };
            let due = died + Duration::from_secs(u64::from(delay));
            let bucket = self.wills_bucket.clone();
            let dead = id.to_owned();
            let shared = shared.clone();
            tokio::spawn(async move {
                let Some(mut shutdown) = shared.upgrade().map(|s| s.shutdown.clone()) else {
                    return;
                };
                tokio::select! {
                    () = tokio::time::sleep_until(due.into()) => {}
                    // The record stays: this node's own death makes another publish it.
                    _ = shutdown.changed() => return,
                }
                // A delayed will is not sent when its client made a new connection to the
                // session before the delay ended [MQTT-3.1.3-9], here on another node.
                let link = shared
                    .upgrade()
                    .and_then(|shared| shared.cluster.get().cloned());
                if delay > 0
                    && let Some(link) = link
                    && link.sessions().resumed_elsewhere(&client_id, &dead).await
                {
                    debug!(%client_id, "cluster: a dead node's client came back elsewhere; its will is not sent");
                    if let Err(error) = bucket.delete(&key).await {
                        warn!(%error, %key, "cluster: a dropped will's record was not deleted");
                    }
                    return;
                }
                // The record goes once the will is where the other nodes read it (QoS 1 and 2:
                // the stream, tried again while it refuses, under one message id so that the
                // stream keeps one copy of a write that timed out but was stored).
                let message_id = format!("will.{key}");
                let mut attempt = 0;
                loop {
                    let Some(shared) = shared.upgrade() else {
                        return;
                    };
                    let outcome = shared.publish_identified(Some(&client_id), &will, &message_id);
                    // Not kept across the wait: the broker's state (and its store) must not
                    // outlive a shutdown in this task.
                    drop(shared);
                    let Some(stream) = outcome.stream else {
                        break;
                    };
                    match stream.stored().await {
                        Ok(()) => break,
                        Err(error) if attempt + 1 >= WILL_ATTEMPTS => {
                            warn!(%error, %key, "cluster: a dead node's will did not reach the stream; its record is kept");
                            return;
                        }
                        Err(error) => {
                            debug!(%error, %key, "cluster: a dead node's will did not reach the stream; trying again");
                            attempt += 1;
                            tokio::time::sleep(RETRY_DELAY).await;
                        }
                    }
                }
                if let Err(error) = bucket.delete(&key).await {
                    warn!(%error, %key, "cluster: a published will's record was not deleted");
                }
            });
        }
        Ok(())
    }
}

/// The keys of `bucket` that start with `prefix`. A listing that fails (the bucket's
/// servers in election, or down) is tried again, [`LIST_ATTEMPTS`] times at most: a claimer
/// that went on with none held the dead node's wills unpublished. `Err`: the last failure.
async fn list(bucket: &Store, prefix: &str) -> Result<Vec<String>, String> {
    retried(|| list_once(bucket, prefix)).await
}

/// The entry of `key` in `bucket`, a read that fails tried again as [`list`] is: a will
/// whose read failed once was left unpublished.
async fn read(bucket: &Store, key: &str) -> Result<Option<jetstream::kv::Entry>, String> {
    retried(|| async { bucket.entry(key).await.map_err(|e| e.to_string()) }).await
}

/// `attempt` until it succeeds, [`LIST_ATTEMPTS`] times at most, [`RETRY_DELAY`] apart, each
/// given [`ATTEMPT_TIMEOUT`]: a listing (an ordered consumer) can wait without an error while
/// its server is gone (the proof: the node that claimed node-a's wills, node-a killed 2 s
/// before the buckets' leader, logged nothing more of them, neither the listing's count nor
/// a failure, and its watch of the heartbeats, which awaits the claim, waited with it).
async fn retried<T, F: Future<Output = Result<T, String>>>(
    mut attempt: impl FnMut() -> F,
) -> Result<T, String> {
    let mut failure = String::new();
    for tried in 0..LIST_ATTEMPTS {
        if tried > 0 {
            tokio::time::sleep(RETRY_DELAY).await;
        }
        match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(error)) => failure = error,
            Err(_) => failure = format!("no answer within {ATTEMPT_TIMEOUT:?}"),
        }
    }
    Err(failure)
}

/// How long one listing, read or delete of a bucket may take before it is taken as failed.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

async fn list_once(bucket: &Store, prefix: &str) -> Result<Vec<String>, String> {
    let mut keys = Vec::new();
    let mut listed = bucket.keys().await.map_err(|e| e.to_string())?;
    while let Some(key) = listed.next().await {
        match key {
            Ok(key) if key.starts_with(prefix) => keys.push(key),
            Ok(_) => {}
            Err(error) => return Err(error.to_string()),
        }
    }
    Ok(keys)
}

/// How many times a failed listing of a bucket is tried.
const LIST_ATTEMPTS: u32 = 30;

/// How many times a dead node's will is sent to the stream before it is given up.
const WILL_ATTEMPTS: u32 = 30;

/// How long a node waits before trying again a listing or a will the cluster refused.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// Writes will records to the bucket, in order.
async fn write_wills(bucket: Store, mut changes: mpsc::UnboundedReceiver<WillChange>) {
    while let Some(change) = changes.recv().await {
        let (key, result) = match change {
            WillChange::Put(key, value) => {
                let result = bucket.put(&key, value).await.map(drop);
                (key, result.map_err(|e| e.to_string()))
            }
            WillChange::Delete(key) => {
                let result = bucket.delete(&key).await;
                (key, result.map_err(|e| e.to_string()))
            }
        };
        if let Err(error) = result {
            warn!(%error, %key, "cluster: a will record could not be written");
        }
    }
}

/// Puts this node's beat every interval, until it leaves.
async fn beat(nodes: Arc<Nodes>, shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(nodes.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut loads = [Load::default(); 2];
    let mut failures = 0u64;
    let mut groups_changed = nodes.groups_changed.subscribe();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            // The other nodes learn of a group from a beat: one goes at once.
            Ok(()) = groups_changed.changed() => {}
        }
        let listing = *groups_changed.borrow_and_update();
        let beat = nodes.beat_now(&shared, &mut loads, nodes.heartbeat);
        let Ok(value) = serde_json::to_vec(&beat) else {
            continue;
        };
        let left = nodes.left.lock().await;
        if *left {
            return;
        }
        // At most an interval: a put whose server died waits out the JetStream timeout (5 s)
        // for an answer that never comes, and the next beat, on the connection to another
        // server, came only after it; the others took this node for dead meanwhile.
        let put = tokio::time::timeout(
            nodes.heartbeat,
            nodes.nodes.put(&nodes.node_id, value.into()),
        )
        .await;
        let failed = match put {
            Ok(Ok(_)) => {
                nodes.groups_announced.send_if_modified(|announced| {
                    let newer = listing > *announced;
                    *announced = (*announced).max(listing);
                    newer
                });
                None
            }
            Ok(Err(error)) => Some(error.to_string()),
            Err(_) => Some(format!("no answer within {:?}", nodes.heartbeat)),
        };
        if let Some(error) = failed {
            failures += 1;
            if failures.is_power_of_two() {
                warn!(%error, failures, "cluster: a heartbeat could not be written");
            }
        }
        drop(left);
    }
}

/// Follows every node's key, and every interval declares dead those silent too long.
async fn watch(nodes: Arc<Nodes>, shared: Weak<Shared>) {
    // Incarnations claimed (by this node or another): judged once.
    let mut settled: HashSet<(String, String)> = HashSet::new();
    // Dead incarnations whose claim NATS did not answer, tried again at every tick: one that
    // came back as a new incarnation is not among the silent any more, and its change of
    // incarnation is seen once (a claim that failed then left its wills to nobody).
    let mut unsettled: BTreeMap<(String, String), (Seen, bool)> = BTreeMap::new();
    let mut tick = tokio::time::interval(nodes.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut entries = match nodes.nodes.watch_with_history(">").await {
            Ok(entries) => entries,
            Err(error) => {
                warn!(%error, "cluster: cannot watch the nodes' heartbeats");
                tokio::time::sleep(nodes.heartbeat).await;
                continue;
            }
        };
        loop {
            tokio::select! {
                entry = entries.next() => match entry {
                    Some(Ok(entry)) => {
                        if let Some(dead) = nodes.saw(&entry) {
                            let key = (entry.key.clone(), dead.beat.incarnation.clone());
                            unsettled.insert(key, (dead, false));
                            settle(&nodes, &shared, &mut settled, &mut unsettled).await;
                        }
                    }
                    Some(Err(error)) => {
                        warn!(%error, "cluster: watching the nodes' heartbeats failed");
                        break;
                    }
                    None => break,
                },
                _ = tick.tick() => {
                    for (id, dead) in nodes.silent() {
                        let key = (id, dead.beat.incarnation.clone());
                        unsettled.entry(key).or_insert((dead, true));
                    }
                    settle(&nodes, &shared, &mut settled, &mut unsettled).await;
                }
            }
        }
        if shared.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(nodes.heartbeat).await;
    }
}

/// Claims each of the `unsettled` dead incarnations (node id, incarnation: its last change
/// seen, and whether its heartbeat key goes) once; one that NATS did not answer stays, for the
/// next tick.
async fn settle(
    nodes: &Nodes,
    shared: &Weak<Shared>,
    settled: &mut HashSet<(String, String)>,
    unsettled: &mut BTreeMap<(String, String), (Seen, bool)>,
) {
    let due: Vec<((String, String), (Seen, bool))> = std::mem::take(unsettled)
        .into_iter()
        .filter(|(key, _)| !settled.contains(key))
        .collect();
    for (key, (dead, delete_key)) in due {
        match nodes.reap(shared, &key.0, &dead, delete_key).await {
            Ok(()) => {
                settled.insert(key);
            }
            Err(error) => {
                warn!(node = %key.0, %error, "cluster: cannot claim a dead node's wills yet");
                unsettled.insert(key, (dead, delete_key));
            }
        }
    }
}

impl Nodes {
    /// Takes a change of the nodes bucket into account; returns the incarnation it shows dead:
    /// another node's key now holds a new incarnation, and the previous one did not leave.
    fn saw(&self, entry: &jetstream::kv::Entry) -> Option<Seen> {
        if entry.key.contains('.') {
            // A claim.
            return None;
        }
        let mut seen = crate::lock(&self.seen);
        match entry.operation {
            Operation::Put => {
                let beat = serde_json::from_slice::<Beat>(&entry.value).ok()?;
                if entry.key == self.node_id {
                    // A beat late by half an interval is a hiccup of the bucket (its leader's
                    // election after a server died): the others' beats were held up too, and
                    // a node reconnecting to another server later still.
                    let gap = seen
                        .get(&entry.key)
                        .is_none_or(|own| own.changed.elapsed() > self.heartbeat * 3 / 2);
                    let mut watching_since = crate::lock(&self.watching_since);
                    if gap || watching_since.is_none() {
                        *watching_since = Some(Instant::now());
                    }
                }
                let now = Seen {
                    beat,
                    revision: entry.revision,
                    changed: Instant::now(),
                };
                let before = seen.insert(entry.key.clone(), now);
                if before.as_ref().map(Seen::groups) != seen.get(&entry.key).map(Seen::groups) {
                    self.know_groups(&seen);
                }
                let before = before?;
                (entry.key != self.node_id
                    && before.beat.incarnation != seen[&entry.key].beat.incarnation)
                    .then_some(before)
            }
            Operation::Delete | Operation::Purge => {
                if seen.remove(&entry.key).is_some() {
                    self.know_groups(&seen);
                }
                None
            }
        }
    }

    /// Takes the groups of the nodes `seen` lists (a dead node's until its key goes).
    fn know_groups(&self, seen: &BTreeMap<String, Seen>) {
        self.known_groups.replace(seen.values().map(Seen::groups));
    }

    /// Other nodes silent for too long, while this node's own beats come back (its watch is
    /// alive).
    fn silent(&self) -> Vec<(String, Seen)> {
        let dead_after = self.dead_after();
        let seen = crate::lock(&self.seen);
        // Its own last beat seen at most half an interval late, as [`Nodes::saw`] counts a gap:
        // a watch that stalls (its consumer's server died; it notices after missing its
        // heartbeats, about 10 s) stops bringing every node's beats at once, and the others'
        // last ones, seen up to an interval before its own, were past `dead_after` while its
        // own was not yet: live nodes were taken for dead.
        let watching = seen.get(&self.node_id).is_some_and(|own| {
            own.beat.incarnation == self.incarnation
                && own.changed.elapsed() <= self.heartbeat * 3 / 2
        }) && crate::lock(&self.watching_since)
            .is_some_and(|since| since.elapsed() > dead_after);
        if !watching {
            return Vec::new();
        }
        seen.iter()
            .filter(|(id, seen)| **id != self.node_id && seen.changed.elapsed() > dead_after)
            .map(|(id, seen)| (id.clone(), seen.clone()))
            .collect()
    }
}

/// The `$SYS` topics of one node, with their values (`None`: cleared).
fn node_topics(id: &str, state: Option<&NodeState>) -> [(String, Option<String>); 4] {
    let topic = |name: &str| format!("$SYS/broker/cluster/node/{id}/{name}");
    [
        (topic("clients"), state.map(|s| s.beat.clients.to_string())),
        (
            topic("load/messages/received/1min"),
            state.map(|s| format!("{:.2}", s.beat.messages_received_per_min)),
        ),
        (
            topic("load/messages/sent/1min"),
            state.map(|s| format!("{:.2}", s.beat.messages_sent_per_min)),
        ),
        (
            topic("state"),
            state.map(|s| if s.live { "live" } else { "silent" }.to_owned()),
        ),
    ]
}

/// See [`super::Link::publish_sys`].
pub(super) fn publish_sys(states: &[NodeState], shared: &Shared, published: &mut Vec<String>) {
    let live = states.iter().filter(|state| state.live).count();
    crate::sys::publish(shared, "$SYS/broker/cluster/nodes", live.to_string());
    for gone in published
        .iter()
        .filter(|id| !states.iter().any(|state| state.id == **id))
    {
        for (topic, _) in node_topics(gone, None) {
            // An empty retained message clears the topic.
            crate::sys::publish(shared, &topic, String::new());
        }
    }
    published.clear();
    for state in states {
        for (topic, value) in node_topics(&state.id, Some(state)) {
            crate::sys::publish(shared, &topic, value.unwrap_or_default());
        }
        published.push(state.id.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rallymq_codec::{QoS, TopicName};

    fn beat() -> Beat {
        Beat {
            incarnation: "1".to_owned(),
            started_at: 1,
            beat_at: 2,
            address: None,
            clients: 0,
            messages_received_per_min: 0.0,
            messages_sent_per_min: 0.0,
            groups: Vec::new(),
            groups_elided: false,
        }
    }

    #[test]
    fn a_beat_lists_the_nodes_groups_up_to_its_limit() {
        let groups: BTreeSet<String> = ["$share/g/a", "$share/h/b/#"].map(str::to_owned).into();
        let listed = beat().with_groups(&groups);
        assert_eq!(listed.groups, ["$share/g/a", "$share/h/b/#"]);
        assert!(!listed.groups_elided);
        let json = serde_json::to_string(&listed).unwrap();
        assert_eq!(serde_json::from_str::<Beat>(&json).unwrap(), listed);

        let many: BTreeSet<String> = (0..MAX_BEAT_GROUPS_BYTES / 10)
            .map(|i| format!("$share/g/{i:05}"))
            .collect();
        let listed = beat().with_groups(&many);
        assert!(listed.groups_elided);
        assert!(listed.groups.iter().map(String::len).sum::<usize>() <= MAX_BEAT_GROUPS_BYTES);
        assert!(!listed.groups.is_empty());
    }

    #[test]
    fn a_beat_without_groups_reads_as_one_with_none() {
        // What a node of an earlier version writes.
        let json = r#"{"incarnation":"1","started_at":1,"beat_at":2,"address":null,"clients":0,"messages_received_per_min":0.0,"messages_sent_per_min":0.0}"#;
        assert_eq!(serde_json::from_str::<Beat>(json).unwrap(), beat());
        assert_eq!(serde_json::to_string(&beat()).unwrap(), json);
    }

    #[test]
    fn a_will_record_carries_its_delay_client_and_message() {
        let mut will = Publish::new(TopicName::new("wills/a").unwrap(), "gone");
        will.qos = QoS::AtLeastOnce;
        will.retain = true;
        let (delay, client_id, opened) =
            open_will(will_value(7, "client/1", &will).unwrap()).unwrap();
        assert_eq!((delay, client_id.as_str()), (7, "client/1"));
        assert_eq!(opened.topic, will.topic);
        assert_eq!(opened.payload, will.payload);
        assert!(opened.retain);
        assert!(open_will(Bytes::from_static(b"abc")).is_none());
    }

    #[test]
    fn will_keys_are_valid_kv_keys_one_token_per_client() {
        let key = will_key("node-a", "17f", "a.b/c d");
        assert_eq!(key, "node-a.17f.a=2Eb=2Fc=20d");
        assert_eq!(will_key("n", "1", ""), "n.1.=");
    }
}
