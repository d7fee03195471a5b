//! Cluster mode: several brokers sharing one MQTT space through NATS (issue 17).
//!
//! QoS 1 and 2 messages cross through one JetStream stream, at least once ([`stream`]). QoS 0
//! messages cross on core NATS, at most once. Each node
//! - publishes what its clients publish with QoS 0 to the subject of its topic ([`subject`]), in an
//!   envelope that carries the whole MQTT 5 PUBLISH (properties included) and the publisher's
//!   client id (for No Local), consecutive ones to one subject in one batch ([`outbound`]);
//! - subscribes on NATS for the distinct filters its sessions hold, told of them by the
//!   router's [`SubscriptionHook`]: one subscription per filter while a first level (`a` of
//!   `a/b/+`; every filter that starts with a wildcard counts as one level) has at most
//!   [`PRECISE_PER_LEVEL`] filters, one subscription to the whole level once it has more, and
//!   one to every topic once the levels need more than [`MAX_SUBSCRIPTIONS`] (see
//!   [`follow_interest`] for why);
//! - connects with `no_echo`, so it never receives its own messages back;
//! - routes what it receives through its local router, which re-checks every match: the
//!   `$`-topic rule and No Local stay the broker's own;
//! - takes part in the shared groups its sessions are members of, so that each message reaches
//!   one member of a group in the whole cluster ([`share`]), and leaves the groups out of
//!   everything else it routes.
//!
//! NATS delivers a message once per matching subscription of a connection, and a node's
//! filters overlap (`a/#` and `a/+`), so each received copy is delivered only if it came
//! through the oldest of the node's subscriptions whose filter matches the topic: exactly one
//! copy while subscriptions stand still. Around a change, a copy can be lost (QoS 0 allows it)
//! but never doubled.
//!
//! Retained messages are also put in a JetStream KV bucket ([`RETAINED_BUCKET`], one key per
//! topic), which every node watches from its start: a node that joins later, or missed a
//! message, gets every topic's last retained message into its local copy. A retained QoS 1 or
//! 2 publisher is acknowledged once the bucket has the message, and a SUBSCRIBE waits (briefly)
//! until the node's copy has caught up with the bucket ([`Link::retained_caught_up`]).
//!
//! Nodes keep heartbeat keys, and the wills of a dead node's clients are published once, by
//! one surviving node ([`nodes`]).

mod bucket;
mod nodes;
mod outbound;
mod replay;
mod sessions;
mod share;
mod stream;
mod subject;

pub(crate) use nodes::NodeState;
pub(crate) use sessions::{Claimed, RecordWritten, Recorded, Sessions};
pub(crate) use stream::StreamAck;
pub use stream::{StreamSettings, StreamStorage};

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::StreamExt;
use rallymq_codec::{Limits, Packet, PacketId, ProtocolVersion, Publish, QoS, TopicFilter};
use rallymq_topic::{Match, SubscriptionIndex};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::Error;
use crate::broker::Shared;
use crate::config::Storage;
use crate::router::SubscriptionHook;

/// How a broker joins a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// NATS servers (`nats://host:port`); any one of them is enough to join, the others are
    /// tried when it goes away.
    pub servers: Vec<String>,
    /// This node's id (ASCII letters, digits, `-` and `_`). `None`: the one kept in the data
    /// directory's `node-id` file, generated there the first time; a new one at every start
    /// when the broker keeps nothing on disk.
    pub node_id: Option<String>,
    /// How often the node writes its heartbeat (default 1 s).
    pub heartbeat: Duration,
    /// How many heartbeats a node may miss before the others take it for dead and publish its
    /// clients' wills (default 3).
    pub missed_beats: u32,
    /// The settings of the stream of QoS 1 and 2 messages, for the node that creates it.
    pub stream: StreamSettings,
}

impl ClusterConfig {
    /// Joins the cluster of these NATS servers with the node id kept in the data directory.
    pub fn new(servers: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            servers: servers.into_iter().map(Into::into).collect(),
            node_id: None,
            heartbeat: nodes::DEFAULT_HEARTBEAT,
            missed_beats: nodes::DEFAULT_MISSED_BEATS,
            stream: StreamSettings::default(),
        }
    }
}

/// The file in the data directory that keeps a generated node id.
const NODE_ID_FILE: &str = "node-id";

/// The envelope's format version, first byte of every message a node publishes: one message's
/// record follows ([`seal`]).
const ENVELOPE_V1: u8 = 1;

/// The first byte of a batch envelope: the records of several messages to one subject follow,
/// each as in an [`ENVELOPE_V1`] envelope ([`outbound`] makes them; QoS 0 only).
const ENVELOPE_BATCH: u8 = 2;

/// Messages waiting to be handed to the NATS client; past this many, new ones are dropped (and
/// counted): a node does not buffer without bound for a slow or absent NATS server.
const OUTBOUND_CAPACITY: usize = 8192;

/// The JetStream KV bucket of retained messages: key [`subject::topic_key`], value the
/// envelope of the message (a delete for a cleared one), one revision kept.
pub(crate) const RETAINED_BUCKET: &str = "rallymq_retained";

/// Retained messages waiting to be put in the bucket.
const RETAINED_CAPACITY: usize = 8192;

/// How many times a starting node tries to open (or create) the bucket.
const BUCKET_ATTEMPTS: u32 = 5;

/// How long one try to open the bucket may take.
const BUCKET_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a node waits before watching the bucket again when its watch failed.
const REWATCH_DELAY: Duration = Duration::from_secs(1);

/// Longest subject a node sends: a NATS server closes a connection whose protocol line passes
/// its `max_control_line` (4096 bytes by default), and a line holds the subject, a reply
/// subject and lengths besides (the retained bucket's puts add `$KV.rallymq_retained.`).
const MAX_SUBJECT_LEN: usize = 3900;

/// How many distinct filters of one first level a node subscribes to one by one on NATS; past
/// this many, one subscription to the whole level replaces them (see [`follow_interest`]).
const PRECISE_PER_LEVEL: usize = 8;

/// How many subscriptions a node keeps for its filters' levels (about 2 MiB of them); past
/// this many (filters with first levels of their own: `{client id}/cmd`), one subscription to
/// every topic replaces them all (see [`follow_interest`]).
const MAX_SUBSCRIPTIONS: usize = 256;

/// How long a SUBSCRIBE waits for the node's copy of the retained bucket to catch up with the
/// bucket before it is answered from the copy as it is.
const RETAINED_CATCH_UP: Duration = Duration::from_secs(1);

/// How often a SUBSCRIBE waiting for this node's routing of the stream looks again.
const ROUTED_POLL: Duration = Duration::from_millis(2);

/// How long a SUBSCRIBE waits for each of its new shared groups' consumer on the stream
/// ([`Link::groups_ready`]) before it is answered without it.
const GROUP_READY: Duration = Duration::from_secs(2);

/// How long a SUBACK waits at most for the NATS server to take the node's new NATS
/// subscriptions ([`Link::subscriptions_synced`]).
const SUBSCRIBE_SYNC_WAIT: Duration = Duration::from_secs(2);

/// Whether a node shares this topic (or filter) with the others: `$SYS` topics describe the
/// node that publishes them.
fn crosses(topic: &str) -> bool {
    !(topic == "$SYS" || topic.starts_with("$SYS/"))
}

/// Whether `id` is usable as a node id: it may become a NATS subject token or KV key.
fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// This node's id: the configured one, else the one kept in the data directory (generated
/// and written there the first time), else a new one.
pub(crate) fn node_id(config: &ClusterConfig, storage: &Storage) -> Result<String, Error> {
    let invalid = |id: &str| {
        Error::Cluster(format!(
            "node id {id:?}: use ASCII letters, digits, - and _ (at most 64)"
        ))
    };
    if let Some(id) = &config.node_id {
        return if valid_node_id(id) {
            Ok(id.clone())
        } else {
            Err(invalid(id))
        };
    }
    let Storage::Directory(dir) = storage else {
        return generate_node_id();
    };
    let path = dir.join(NODE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            if valid_node_id(id) {
                Ok(id.to_owned())
            } else {
                Err(invalid(id))
            }
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let id = generate_node_id()?;
            write_node_id(dir, &path, &id)?;
            Ok(id)
        }
        Err(source) => Err(Error::ReadFile {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn write_node_id(dir: &Path, path: &Path, id: &str) -> Result<(), Error> {
    let error = |source| Error::WriteFile {
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(error)?;
    std::fs::write(path, format!("{id}\n")).map_err(error)
}

fn generate_node_id() -> Result<String, Error> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::Cluster(format!("no randomness for a node id: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// What the interest task is asked to do, in the order the router's index changed.
#[derive(Debug)]
enum Command {
    /// A local session holds this filter now, and none did: the node's `mark`th such
    /// request ([`Link::subscribes_asked`]).
    Subscribe(TopicFilter, u64),
    /// No local session holds this filter any more.
    Unsubscribe(TopicFilter),
}

/// What the interest task reads from its NATS subscriptions.
#[derive(Debug)]
enum Inbound {
    /// A message received through the subscription with this id.
    Message(u64, async_nats::Message),
    /// The subscription with this id is gone and has handed over all it held.
    Drained(u64),
}

/// The wait of [`Link::subscriptions_synced`]: awaited, it ends when the NATS server has taken
/// the node's subscriptions up to `asked` and a heartbeat has listed its shared groups as
/// they were then (`groups`: that change, and the heartbeats' progress), or after
/// [`SUBSCRIBE_SYNC_WAIT`].
#[derive(Debug)]
pub(crate) struct SubscriptionsSynced {
    synced: watch::Receiver<u64>,
    asked: u64,
    groups: Option<(watch::Receiver<u64>, u64)>,
}

impl IntoFuture for SubscriptionsSynced {
    type Output = ();
    type IntoFuture = futures::future::BoxFuture<'static, ()>;

    fn into_future(mut self) -> Self::IntoFuture {
        Box::pin(async move {
            let asked = self.asked;
            let _ = tokio::time::timeout(SUBSCRIBE_SYNC_WAIT, async {
                let _ = self.synced.wait_for(|mark| *mark >= asked).await;
                if let Some((mut announced, changed)) = self.groups {
                    let _ = announced.wait_for(|mark| *mark >= changed).await;
                }
            })
            .await;
        })
    }
}

/// What became of a message sent to the other nodes.
#[derive(Debug, Default)]
pub(crate) struct Forwarded {
    /// The cluster gives it to the shared groups (one member in the whole cluster each): the
    /// publishing node leaves them out of its own routing.
    pub(crate) shared_groups: bool,
    /// A QoS 1 or 2 message's write to the stream, which the publisher's acknowledgement
    /// waits for.
    pub(crate) stream: Option<StreamAck>,
}

/// A node's link to the cluster: what the broker's publish path and router hook talk to.
#[derive(Debug)]
pub(crate) struct Link {
    node_id: String,
    client: async_nats::Client,
    outbound: mpsc::Sender<outbound::Outgoing>,
    /// QoS 1 and 2 messages for the stream.
    stream: stream::Writer,
    /// Retained messages for the bucket: key, the envelope (`None` clears the topic), and
    /// for QoS 1 and 2 who waits for the bucket's acknowledgement.
    retained: mpsc::Sender<RetainedWrite>,
    /// The highest revision of the retained bucket the node's copy has taken in.
    retained_seen: watch::Sender<u64>,
    /// The retained bucket's stream, asked for its last revision.
    retained_stream: async_nats::jetstream::stream::Stream,
    commands: mpsc::UnboundedSender<Command>,
    /// How many [`Command::Subscribe`] this node has sent: counted under this lock as each is
    /// sent, so that the marks go into the channel in order.
    subscribes_asked: Mutex<u64>,
    /// The highest [`Command::Subscribe`] mark whose NATS subscriptions the NATS server has
    /// taken (see [`follow_interest`]).
    subscribes_synced: Arc<watch::Sender<u64>>,
    /// Shared groups this node joins and leaves.
    groups: mpsc::UnboundedSender<share::GroupCommand>,
    /// Messages not sent to the cluster (queue full, too large, not encodable).
    dropped: AtomicU64,
    /// Heartbeats, and the wills of this node's clients.
    nodes: Arc<nodes::Nodes>,
    /// Who owns each client id's session, and takeovers between nodes.
    sessions: Arc<Sessions>,
    /// The place in the stream up to which this node has routed every message.
    routed: Arc<AtomicU64>,
    /// The receiving halves, taken by [`Link::spawn`].
    parts: Mutex<Option<Parts>>,
}

/// A retained message on its way to the bucket: its key, its envelope (`None` clears the
/// topic), and the publisher's wait for it (QoS 1 and 2).
type RetainedWrite = (
    String,
    Option<Bytes>,
    Option<oneshot::Sender<Result<(), String>>>,
);

#[derive(Debug)]
struct Parts {
    outbound: mpsc::Receiver<outbound::Outgoing>,
    retained: mpsc::Receiver<RetainedWrite>,
    bucket: async_nats::jetstream::kv::Store,
    commands: mpsc::UnboundedReceiver<Command>,
    stream: stream::Parts,
    /// The connection of the shared groups' queue subscriptions (echo on).
    shares: async_nats::Client,
    groups: mpsc::UnboundedReceiver<share::GroupCommand>,
    sessions: sessions::Parts,
}

impl Link {
    /// Connects to the cluster's NATS servers. Fails if none answers: a node that cannot reach
    /// the cluster should not look like one that did. Once connected, the NATS client
    /// reconnects by itself.
    pub(crate) async fn connect(
        config: &ClusterConfig,
        node_id: String,
        storage: &Storage,
    ) -> Result<Arc<Self>, Error> {
        let mut addrs = Vec::new();
        for server in &config.servers {
            let addr: async_nats::ServerAddr = server
                .parse()
                .map_err(|e| Error::Cluster(format!("NATS server {server:?}: {e}")))?;
            addrs.push(addr);
        }
        if addrs.is_empty() {
            return Err(Error::Cluster("no NATS server given".to_owned()));
        }
        let unreachable = |e| {
            Error::Cluster(format!(
                "cannot reach the NATS servers {:?}: {e}",
                config.servers
            ))
        };
        let client = async_nats::ConnectOptions::new()
            .name(format!("rallymq-{node_id}"))
            .no_echo()
            .connection_timeout(Duration::from_secs(5))
            .connect(addrs.clone())
            .await
            .map_err(unreachable)?;
        let shares = async_nats::ConnectOptions::new()
            .name(format!("rallymq-{node_id}-shares"))
            .connection_timeout(Duration::from_secs(5))
            .connect(addrs)
            .await
            .map_err(unreachable)?;
        let bucket = retained_bucket(&client).await?;
        let (stream, stream_parts) = stream::open_stream(&client, &node_id, &config.stream).await?;
        let data_dir = match storage {
            Storage::Directory(dir) => Some(dir.as_path()),
            _ => None,
        };
        let nodes = nodes::Nodes::open(
            &client,
            &node_id,
            config.heartbeat,
            config.missed_beats,
            data_dir,
        )
        .await?;
        let routed = stream_parts.routed();
        let (sessions, sessions_parts) = Sessions::open(
            &client,
            &node_id,
            stream::replicas(&client),
            routed.clone(),
            stream_parts.routing(),
        )
        .await?;
        info!(node = %node_id, servers = ?config.servers, "joined the cluster");
        let (outbound_tx, outbound) = mpsc::channel(OUTBOUND_CAPACITY);
        let (retained_tx, retained) = mpsc::channel(RETAINED_CAPACITY);
        let (commands_tx, commands) = mpsc::unbounded_channel();
        let (groups_tx, groups) = mpsc::unbounded_channel();
        Ok(Arc::new(Self {
            node_id,
            client,
            outbound: outbound_tx,
            stream,
            retained: retained_tx,
            retained_seen: watch::Sender::new(0),
            retained_stream: bucket.stream.clone(),
            commands: commands_tx,
            subscribes_asked: Mutex::new(0),
            subscribes_synced: Arc::new(watch::Sender::new(0)),
            groups: groups_tx,
            dropped: AtomicU64::new(0),
            nodes: Arc::new(nodes),
            sessions,
            routed,
            parts: Mutex::new(Some(Parts {
                outbound,
                retained,
                bucket,
                commands,
                stream: stream_parts,
                shares,
                groups,
                sessions: sessions_parts,
            })),
        }))
    }

    /// Waits (at most [`SUBSCRIBE_SYNC_WAIT`]) until the NATS server has taken every NATS
    /// subscription this node asked for so far, and a heartbeat lists the shared groups it has
    /// now; `None` when both hold. A SUBACK waits for it, so that a message another node
    /// publishes after the SUBACK reaches the subscriber (through this node's NATS server;
    /// between NATS servers, interest travels on its own time), and a group's QoS 0 messages
    /// reach its members one at a time ([`share::KnownGroups`]).
    pub(crate) fn subscriptions_synced(&self) -> Option<SubscriptionsSynced> {
        let asked = *crate::lock(&self.subscribes_asked);
        let synced = self.subscribes_synced.subscribe();
        let groups = self.nodes.groups_unannounced();
        if *synced.borrow() >= asked && groups.is_none() {
            return None;
        }
        Some(SubscriptionsSynced {
            synced,
            asked,
            groups,
        })
    }

    /// This node's id.
    pub(crate) fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The sessions shared by the nodes.
    pub(crate) fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// The place in the stream of QoS 1 and 2 messages up to which this node has routed
    /// every message: read before finding a session with nothing waiting, it is where that
    /// session's stream cursor can move to.
    pub(crate) fn routed_position(&self) -> u64 {
        self.routed.load(Ordering::Acquire)
    }

    /// Starts the tasks that publish to the cluster and deliver what comes from it: after the
    /// broker has restored its sessions, which the stream's messages are routed to.
    pub(crate) fn spawn(&self, shared: &Arc<Shared>) -> Vec<JoinHandle<()>> {
        let Some(parts) = crate::lock(&self.parts).take() else {
            return Vec::new();
        };
        let (write_stream, read_stream) = parts.stream.run(&self.node_id, Arc::downgrade(shared));
        let (write_records, serve_takeovers) = sessions::run(
            self.sessions.clone(),
            parts.sessions,
            Arc::downgrade(shared),
        );
        let mut tasks = self.nodes.spawn(shared);
        tasks.extend([
            tokio::spawn(until_shutdown(shared, write_records)),
            tokio::spawn(until_shutdown(shared, serve_takeovers)),
            tokio::spawn(write_stream),
            tokio::spawn(until_shutdown(shared, read_stream)),
            tokio::spawn(outbound::publish_outbound(
                self.client.clone(),
                parts.outbound,
            )),
            tokio::spawn(store_retained(parts.bucket.clone(), parts.retained)),
            tokio::spawn(until_shutdown(
                shared,
                follow_retained(
                    parts.bucket,
                    self.retained_seen.clone(),
                    Arc::downgrade(shared),
                ),
            )),
            tokio::spawn(until_shutdown(
                shared,
                share::follow_groups(
                    parts.shares,
                    stream::context(&self.client),
                    parts.groups,
                    Arc::downgrade(shared),
                ),
            )),
            tokio::spawn(until_shutdown(
                shared,
                follow_interest(
                    self.client.clone(),
                    parts.commands,
                    self.subscribes_synced.clone(),
                    Arc::downgrade(shared),
                ),
            )),
        ]);
        tasks
    }

    /// Records the will of `client_id`'s connection `connection` in the cluster, for another
    /// node to publish if this one dies: `delay` is its Will Delay Interval (at most the
    /// session's expiry).
    pub(crate) fn record_will(
        &self,
        client_id: &Arc<str>,
        connection: u64,
        will: &Publish,
        delay: u32,
    ) {
        self.nodes.record_will(client_id, connection, will, delay);
    }

    /// The will `connection` recorded is published, discarded or cancelled.
    pub(crate) fn forget_will(&self, client_id: &str, connection: u64) {
        self.nodes.forget_will(client_id, connection);
    }

    /// Leaves the cluster cleanly: no other node publishes this node's clients' wills.
    pub(crate) async fn leave(&self) {
        self.nodes.leave().await;
    }

    /// Whether the sessions restored from the store keep their wills: not when the previous
    /// run stopped without leaving the cluster, whose nodes publish them.
    pub(crate) fn restored_wills_are_ours(&self) -> bool {
        !self.nodes.previous_run_crashed()
    }

    /// Whether node `id` beats (as this node's watch of the heartbeats saw last).
    pub(crate) fn node_is_live(&self, id: &str) -> bool {
        self.nodes
            .states()
            .iter()
            .any(|node| node.id == id && node.live)
    }

    /// The cluster's nodes as this node knows them, by id.
    pub(crate) fn nodes(&self) -> Vec<NodeState> {
        self.nodes.states()
    }

    /// Publishes the cluster's `$SYS` topics (how many nodes are live; per node its clients,
    /// minute rates and state, as CLUSTER.md lists them); clears the topics of the nodes in
    /// `published` that are gone, and leaves there the ones published now.
    pub(crate) fn publish_sys(&self, shared: &Shared, published: &mut Vec<String>) {
        nodes::publish_sys(&self.nodes.states(), shared, published);
    }

    /// A stream message id no write has had, for a message whose id must be recorded before
    /// it is written ([`Cluster::forward`] under it).
    pub(crate) fn fresh_message_id(&self) -> String {
        self.stream.fresh_id()
    }

    /// A client id for a client that sent none, which no node assigns again: this node's
    /// run (its id and start time) and a count.
    pub(crate) fn fresh_client_id(&self) -> String {
        format!("rallymq-{}", self.stream.fresh_id())
    }

    /// Sends a message published on this node to the other nodes (not `$SYS` topics). Never
    /// waits. QoS 0 goes on core NATS, and is dropped and counted when the NATS client falls
    /// behind. QoS 1 and 2 go to the stream: the publisher's acknowledgement waits for the
    /// returned [`StreamAck`], which for a retained message covers the retained bucket's
    /// write too.
    /// `message_id`: the message's id in the stream, when the caller gives one.
    pub(crate) fn forward(
        &self,
        sender: Option<&str>,
        publish: &Publish,
        message_id: Option<&str>,
    ) -> Forwarded {
        let mut forwarded = Forwarded::default();
        let Some(topic) = publish.topic.as_ref() else {
            return forwarded;
        };
        if !crosses(topic.as_str()) {
            return forwarded;
        }
        let subject = if publish.qos == QoS::AtMostOnce {
            subject::topic_subject(topic.as_str())
        } else {
            subject::stream_subject(topic.as_str())
        };
        if subject.len() > MAX_SUBJECT_LEN {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                warn!(%topic, dropped, "cluster: topic too long for a NATS subject; not sent to other nodes");
            }
            return forwarded;
        }
        let Some(envelope) = seal(sender, publish) else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return forwarded;
        };
        let qos0 = publish.qos == QoS::AtMostOnce;
        let mut retained = None;
        if publish.retain {
            let value = (!publish.payload.is_empty()).then(|| envelope.clone());
            // A QoS 1 or 2 publisher is acknowledged once the bucket has it: a SUBSCRIBE on
            // any node after that sees it.
            let (done, written) = if qos0 {
                (None, None)
            } else {
                let (done, written) = oneshot::channel();
                (Some(done), Some(written))
            };
            retained = written;
            if self
                .retained
                .try_send((subject::topic_key(topic.as_str()), value, done))
                .is_err()
            {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                warn!(%topic, "cluster: retained message not stored in the cluster (queue full)");
                retained = retained.map(|_| stream::failed("too many retained messages waiting"));
            }
        }
        if !qos0 {
            let ack = self.stream.write(subject, envelope, message_id);
            forwarded.stream = Some(match retained {
                Some(retained) => ack.with_retained(retained),
                None => ack,
            });
            forwarded.shared_groups = true;
            return forwarded;
        }
        let outgoing = outbound::Outgoing {
            subject,
            envelope,
            alone: self.nodes.groups_may_want(topic),
        };
        if self.outbound.try_send(outgoing).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                warn!(
                    dropped,
                    "cluster: the NATS client is behind; messages not sent to other nodes"
                );
            }
        } else {
            forwarded.shared_groups = true;
        }
        forwarded
    }

    /// Waits (at most [`RETAINED_CATCH_UP`]) until this node's copy of the retained bucket
    /// has taken in everything the bucket held when asked: a retained message acknowledged on
    /// any node before a SUBSCRIBE here is then in the copy the SUBSCRIBE is answered from.
    /// And until this node has routed what the stream held then: such a message, routed
    /// here after the subscription exists, would reach it twice (retained, and again as it
    /// came through the stream).
    pub(crate) async fn retained_caught_up(&self) {
        let catch_up = async {
            let last = match self.retained_stream.get_info().await {
                Ok(info) => info.state.last_sequence,
                Err(error) => {
                    debug!(%error, "cluster: the retained bucket's last revision is unknown");
                    return;
                }
            };
            let mut seen = self.retained_seen.subscribe();
            let _ = seen.wait_for(|seen| *seen >= last).await;
            let stream_last = match stream::context(&self.client)
                .get_stream(stream::STREAM)
                .await
            {
                Ok(stream) => stream.cached_info().state.last_sequence,
                Err(error) => {
                    debug!(%error, "cluster: the stream's last sequence is unknown");
                    return;
                }
            };
            while self.routed_position() < stream_last {
                tokio::time::sleep(ROUTED_POLL).await;
            }
        };
        if tokio::time::timeout(RETAINED_CATCH_UP, catch_up)
            .await
            .is_err()
        {
            debug!(
                "cluster: the copy of the retained bucket is behind; answering from it as it is"
            );
        }
    }

    /// Makes sure each of `filters` (shared ones a SUBSCRIBE asks for) has its group's consumer
    /// on the stream, waiting at most [`GROUP_READY`] for each: a new group's consumer starts
    /// with what is written once it exists, so that a QoS 1 or 2 message published after the
    /// SUBACK, which waits for this, reaches the group. Otherwise the node's member task made
    /// it after the SUBACK, and what came in between did not reach the group (the new-group
    /// test in `cluster_share.rs` lost 19 of 20).
    pub(crate) async fn groups_ready(&self, filters: &[TopicFilter]) {
        let context = stream::context(&self.client);
        for filter in filters {
            match tokio::time::timeout(GROUP_READY, share::group_consumer(&context, filter)).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    debug!(%error, filter = filter.as_str(), "cluster: a shared group's consumer is not ready");
                }
                Err(_) => {
                    debug!(
                        filter = filter.as_str(),
                        "cluster: a shared group's consumer is slow to come"
                    );
                }
            }
        }
    }
}

impl SubscriptionHook for Link {
    /// Asks for the filter's NATS subscription, or for a shared filter, to join the group
    /// across the cluster.
    fn held(&self, filter: &TopicFilter) {
        if !crosses(filter.filter()) {
            return;
        }
        if filter.is_shared() {
            self.nodes.join_group(filter.as_str());
            let _ = self.groups.send(share::GroupCommand::Join(filter.clone()));
        } else {
            let mut asked = crate::lock(&self.subscribes_asked);
            *asked += 1;
            let _ = self
                .commands
                .send(Command::Subscribe(filter.clone(), *asked));
        }
    }

    /// Ends the filter's NATS subscription (or leaves the group).
    fn released(&self, filter: &TopicFilter) {
        if !crosses(filter.filter()) {
            return;
        }
        if filter.is_shared() {
            self.nodes.leave_group(filter.as_str());
            let _ = self.groups.send(share::GroupCommand::Leave(filter.clone()));
        } else {
            let _ = self.commands.send(Command::Unsubscribe(filter.clone()));
        }
    }
}

/// The envelope of a message sent to other nodes: the format version, the publisher's client
/// id (length-prefixed; empty when published in-process), and the message as an MQTT 5
/// PUBLISH, so that every property crosses with it. `None` if it cannot be encoded.
fn seal(sender: Option<&str>, publish: &Publish) -> Option<Bytes> {
    let sender = sender.unwrap_or_default();
    let sender_len = u16::try_from(sender.len()).ok()?;
    let mut copy = crate::router::stored_copy(publish);
    // A QoS 1 or 2 PUBLISH carries a packet identifier; this one is never acknowledged.
    if copy.qos != QoS::AtMostOnce {
        copy.packet_id = PacketId::new(1);
    }
    let packet = Packet::Publish(copy);
    let mut envelope =
        BytesMut::with_capacity(3 + sender.len() + packet.encoded_len(ProtocolVersion::V5));
    envelope.put_u8(ENVELOPE_V1);
    envelope.put_u16(sender_len);
    envelope.put_slice(sender.as_bytes());
    packet.encode(ProtocolVersion::V5, &mut envelope).ok()?;
    Some(envelope.freeze())
}

/// The publisher's client id and the message of an envelope made by [`seal`]; `None` for
/// anything else (from an incompatible node, or not from a node at all).
fn open(mut envelope: Bytes) -> Option<(Option<String>, Publish)> {
    if envelope.first() != Some(&ENVELOPE_V1) {
        return None;
    }
    envelope.advance(1);
    let mut records = BytesMut::from(&envelope[..]);
    let record = read_record(&mut records)?;
    records.is_empty().then_some(record)
}

/// Hands `each` the publisher's client id and the message of every record of an envelope,
/// one made by [`seal`] or a batch of them ([`ENVELOPE_BATCH`]), in order. `None` when the
/// envelope is neither, or a record is not whole: the records before it were handed over.
fn open_each(mut envelope: Bytes, mut each: impl FnMut(Option<String>, Publish)) -> Option<()> {
    match envelope.first() {
        Some(&ENVELOPE_BATCH) => {}
        Some(&ENVELOPE_V1) => {
            let (sender, publish) = open(envelope)?;
            each(sender, publish);
            return Some(());
        }
        _ => return None,
    }
    envelope.advance(1);
    let mut records = BytesMut::from(&envelope[..]);
    while !records.is_empty() {
        let (sender, publish) = read_record(&mut records)?;
        each(sender, publish);
    }
    Some(())
}

/// Takes one record off `records`: the publisher's client id (length-prefixed; empty when
/// published in-process) and the MQTT 5 PUBLISH.
fn read_record(records: &mut BytesMut) -> Option<(Option<String>, Publish)> {
    if records.len() < 2 {
        return None;
    }
    let sender_len = usize::from(records.get_u16());
    if records.len() < sender_len {
        return None;
    }
    let sender = std::str::from_utf8(&records.split_to(sender_len))
        .ok()?
        .to_owned();
    let limits = Limits {
        max_packet_size: Limits::PROTOCOL_MAX_PACKET_SIZE,
    };
    match rallymq_codec::decode(records, ProtocolVersion::V5, &limits) {
        Ok(Some(Packet::Publish(publish))) if publish.topic.is_some() => {
            Some(((!sender.is_empty()).then_some(sender), publish))
        }
        _ => None,
    }
}

/// Runs `task` until the broker shuts down, or its handle is dropped without a shutdown (its
/// tasks are not aborted then): the watch and the subscriptions would otherwise keep the NATS
/// connection open.
fn until_shutdown(
    shared: &Shared,
    task: impl Future<Output = ()> + Send + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    let mut shutdown = shared.shutdown.clone();
    async move {
        tokio::select! {
            () = task => {}
            // Sent, or the handle dropped: either way the broker is going.
            _ = shutdown.changed() => {}
        }
    }
}

/// The bucket of retained messages, created by the first node that needs it.
async fn retained_bucket(
    client: &async_nats::Client,
) -> Result<async_nats::jetstream::kv::Store, Error> {
    kv_bucket(
        client,
        RETAINED_BUCKET,
        "rallymq: the last retained message of each MQTT topic",
        Duration::ZERO,
    )
    .await
}

/// A KV bucket (one revision per key, file storage, as many replicas as the stream of QoS 1
/// and 2 messages by default: one per NATS server, at most 3), created by the first node that
/// needs it; `max_age` zero keeps keys until deleted. With one replica, the death of the
/// server holding a bucket stopped what it serves: retained QoS 1 publishes were refused,
/// heartbeats failed (live nodes were taken for dead and their clients' wills published),
/// wills could not be claimed.
///
/// Its stream is made here as async-nats's `create_key_value` makes a bucket's, because that
/// function first reads the account's JetStream settings in a form servers before 2.10 do not
/// send (Debian's nats-server is 2.9).
async fn kv_bucket(
    client: &async_nats::Client,
    name: &str,
    description: &str,
    max_age: Duration,
) -> Result<async_nats::jetstream::kv::Store, Error> {
    kv_bucket_with(client, name, description, max_age, stream::replicas(client)).await
}

/// [`kv_bucket`] with `replicas` copies of each key (0: the server's default, one).
async fn kv_bucket_with(
    client: &async_nats::Client,
    name: &str,
    description: &str,
    max_age: Duration,
    replicas: usize,
) -> Result<async_nats::jetstream::kv::Store, Error> {
    use async_nats::jetstream::{self, stream};
    let context = jetstream::new(client.clone());
    let config = stream::Config {
        name: format!("KV_{name}"),
        description: Some(description.to_owned()),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        ..stream::Config::default()
    };
    with_retries(&format!("no bucket {name}"), || async {
        // Creating is idempotent for the same settings; a bucket made otherwise is used as it is.
        let created = context.create_stream(config.clone()).await.err();
        context.get_key_value(name).await.map_err(|e| {
            format!(
                "{e}{}",
                created
                    .map(|e| format!(" (creating it: {e})"))
                    .unwrap_or_default()
            )
        })
    })
    .await
}

/// Runs `attempt` until it succeeds, at most [`BUCKET_ATTEMPTS`] times a second apart, each
/// bounded by [`BUCKET_TIMEOUT`]: a NATS cluster that has just started answers JetStream
/// requests once it has elected a leader, and the client's own request timeout does not cover
/// a connection lost meanwhile (a start then hung for good). `what` leads the error.
async fn with_retries<T, F, Fut>(what: &str, mut attempt: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        let result = tokio::time::timeout(BUCKET_TIMEOUT, attempt())
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {BUCKET_TIMEOUT:?}")));
        match result {
            Ok(value) => return Ok(value),
            Err(error) if tries >= BUCKET_ATTEMPTS => {
                return Err(Error::Cluster(format!(
                    "{what} (is JetStream enabled on the NATS servers?): {error}"
                )));
            }
            Err(error) => {
                debug!(%error, tries, "cluster: {what} yet");
                tokio::time::sleep(REWATCH_DELAY).await;
            }
        }
    }
}

/// Puts retained messages in the bucket, in order, and tells each QoS 1 or 2 publisher's
/// wait how its write went.
async fn store_retained(
    bucket: async_nats::jetstream::kv::Store,
    mut retained: mpsc::Receiver<RetainedWrite>,
) {
    while let Some((key, value, done)) = retained.recv().await {
        let result = match value {
            Some(value) => bucket
                .put(&key, value)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            None => bucket.delete(&key).await.map_err(|e| e.to_string()),
        };
        if let Err(error) = &result {
            warn!(%error, %key, "cluster: a retained message could not be stored in the cluster");
        }
        if let Some(done) = done {
            let _ = done.send(result);
        }
    }
}

/// Keeps the local copy of retained messages in step with the bucket: every topic's last
/// value first, then every change, whichever node made it.
async fn follow_retained(
    bucket: async_nats::jetstream::kv::Store,
    seen: watch::Sender<u64>,
    shared: std::sync::Weak<Shared>,
) {
    use async_nats::jetstream::kv::Operation;
    loop {
        match bucket.watch_with_history(">").await {
            Ok(mut watch) => {
                while let Some(entry) = watch.next().await {
                    let entry = match entry {
                        Ok(entry) => entry,
                        Err(error) => {
                            warn!(%error, "cluster: watching retained messages failed");
                            break;
                        }
                    };
                    let Some(shared) = shared.upgrade() else {
                        return;
                    };
                    // Taken in once this pass ends (an entry skipped below is taken in too).
                    let revision = entry.revision;
                    let _taken_in = TakenIn(&seen, revision);
                    let Ok(topic) = subject::key_topic(&entry.key) else {
                        continue;
                    };
                    let mut retained = match entry.operation {
                        Operation::Put => match open(entry.value) {
                            Some((_, publish))
                                if publish.topic.as_ref().is_some_and(|t| t.as_str() == topic) =>
                            {
                                publish
                            }
                            _ => continue,
                        },
                        Operation::Delete | Operation::Purge => {
                            let Ok(name) = rallymq_codec::TopicName::new(topic) else {
                                continue;
                            };
                            // An empty retained message clears the topic.
                            Publish::new(name, Bytes::new())
                        }
                    };
                    let Some(interval) = retained.properties.message_expiry_interval else {
                        shared.router.retain(&retained);
                        continue;
                    };
                    // A Message Expiry counts from when the bucket stored the message, not
                    // from when this node took it in (MQTT-3.3.2-5): a node that starts later,
                    // or whose watch is behind, must not keep an expired message or give it
                    // longer.
                    let age = age_of(entry.created.unix_timestamp_nanos());
                    let interval = Duration::from_secs(u64::from(interval));
                    if age >= interval {
                        if let Some(topic) = &retained.topic {
                            shared.router.remove_retained(topic);
                        }
                        continue;
                    }
                    let now = std::time::Instant::now();
                    let stored_at = now.checked_sub(age).unwrap_or_else(|| {
                        // Older than this machine's clock reaches back: what is left of the
                        // interval, counted from now.
                        let left = (interval - age).as_secs_f64().ceil() as u32;
                        retained.properties.message_expiry_interval = Some(left.max(1));
                        now
                    });
                    shared.router.retain_since(&retained, stored_at);
                }
            }
            Err(error) => warn!(%error, "cluster: cannot watch retained messages"),
        }
        if shared.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(REWATCH_DELAY).await;
    }
}

/// How long ago, by this machine's clock, the NATS server stored an entry created at
/// `created` (Unix time in nanoseconds); zero for one from the future (clocks apart).
fn age_of(created: i128) -> Duration {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            i128::try_from(since.as_nanos()).unwrap_or(i128::MAX)
        });
    u64::try_from(now.saturating_sub(created)).map_or(Duration::ZERO, Duration::from_nanos)
}

/// Raises the retained copy's revision when dropped: after the entry of that revision is in
/// the copy, whichever way the pass over it ends.
struct TakenIn<'a>(&'a watch::Sender<u64>, u64);

impl Drop for TakenIn<'_> {
    fn drop(&mut self) {
        let revision = self.1;
        self.0.send_if_modified(|seen| {
            let newer = revision > *seen;
            if newer {
                *seen = revision;
            }
            newer
        });
    }
}

/// The publisher's client id and the message of what a node received from NATS (`topic`: its
/// subject's topic), if it is a node's envelope and subject and message agree on the topic.
fn received(
    topic: Result<String, subject::NotATopic>,
    payload: Bytes,
) -> Option<(Option<String>, Publish)> {
    let Ok(topic) = topic else {
        debug!("cluster: not a topic's subject; ignored");
        return None;
    };
    let Some((sender, publish)) = open(payload) else {
        debug!(%topic, "cluster: not a rallymq node's message; ignored");
        return None;
    };
    on_topic(&topic, publish).map(|publish| (sender, publish))
}

/// As [`received`], for a QoS 0 message from NATS, which may be a batch: hands `each` every
/// message of it whose topic is the subject's.
fn received_each(
    topic: Result<String, subject::NotATopic>,
    payload: Bytes,
    mut each: impl FnMut(Option<String>, Publish),
) {
    let Ok(topic) = topic else {
        debug!("cluster: not a topic's subject; ignored");
        return;
    };
    let opened = open_each(payload, |sender, publish| {
        if let Some(publish) = on_topic(&topic, publish) {
            each(sender, publish);
        }
    });
    if opened.is_none() {
        debug!(%topic, "cluster: not a rallymq node's message, or not whole; ignored");
    }
}

/// `publish`, if its topic is `topic`, the topic of the subject it came on.
fn on_topic(topic: &str, publish: Publish) -> Option<Publish> {
    if publish
        .topic
        .as_ref()
        .is_none_or(|name| name.as_str() != topic)
    {
        debug!(%topic, "cluster: subject and message disagree on the topic; ignored");
        return None;
    }
    Some(publish)
}

/// Keeps NATS subscriptions that cover every filter the node's sessions hold, reads them all,
/// and delivers what they receive through the local router: each message once, through the
/// oldest subscription whose filter matches its topic (see the module's documentation).
///
/// A NATS subscription costs the node about 7 KiB however little it receives: async-nats
/// gives each its own channel, whose first block of 32 messages is allocated at once
/// (`cluster_load --mode idle` and CLUSTER.md have the figures). So a node subscribes filter by
/// filter only while a first level has few of them ([`PRECISE_PER_LEVEL`]); a level with more
/// (`device/1/cmd`, `device/2/cmd`, ...: typically one per client) is covered by one
/// subscription to the whole level (`device/#`), and the node receives that level's messages
/// from other nodes whether or not one of its clients wants them (the local router re-checks
/// each). A level stays whole until its last filter goes. Filters with first levels of their
/// own would still cost a subscription each, so once the levels need more than
/// [`MAX_SUBSCRIPTIONS`], one subscription to every topic (`#`) replaces them, until the node
/// holds no filter: the node then receives every QoS 0 message of the cluster (CLUSTER.md
/// measures what an unwanted message costs it). All subscriptions are read here, in one task.
///
/// Once no command waits, the subscriptions made are confirmed with a request to a subject
/// nobody subscribes to: the NATS server answers it ("no responders") after it has taken
/// every SUB the connection sent before it, and `synced` then says up to which
/// [`Command::Subscribe`] that holds.
async fn follow_interest(
    client: async_nats::Client,
    mut commands: mpsc::UnboundedReceiver<Command>,
    synced: Arc<watch::Sender<u64>>,
    shared: std::sync::Weak<Shared>,
) {
    let mut interest = Interest::default();
    let mut reading = futures::stream::SelectAll::new();
    // Delivering, and reading, wait while a subscriber's queue is past its high-water mark,
    // as a local publisher's connection does; what the last NATS message brought and was not
    // delivered yet waits in `pending`.
    let mut paused: Option<futures::future::BoxFuture<'static, ()>> = None;
    let mut pending = VecDeque::new();
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                Some(Command::Subscribe(filter, mark)) => {
                    interest.hold(&client, &mut reading, filter).await;
                    if commands.is_empty() {
                        tokio::spawn(confirm_subscriptions(client.clone(), synced.clone(), mark));
                    }
                }
                Some(Command::Unsubscribe(filter)) => {
                    interest.release(&mut reading, &filter).await;
                }
                None => return,
            },
            () = async { if let Some(pause) = paused.as_mut() { pause.await } }, if paused.is_some() => {
                let Some(shared) = shared.upgrade() else { return };
                paused = deliver(shared, &mut pending);
            }
            Some(inbound) = reading.next(), if paused.is_none() && !reading.is_empty() => match inbound {
                Inbound::Message(id, message) => {
                    let Some(shared) = shared.upgrade() else { return };
                    take_owned(&interest.owners, id, message, &mut pending);
                    paused = deliver(shared, &mut pending);
                }
                Inbound::Drained(id) => interest.drained(id),
            },
        }
    }
}

/// Raises `synced` to `mark` once the NATS server has taken the subscriptions sent before
/// this (see [`follow_interest`]), or [`SUBSCRIBE_SYNC_WAIT`] has passed: a SUBACK is not held
/// for longer while NATS is away.
async fn confirm_subscriptions(
    client: async_nats::Client,
    synced: Arc<watch::Sender<u64>>,
    mark: u64,
) {
    // Answered by the server itself: no node subscribes under `rmq.sync`.
    let _ = tokio::time::timeout(
        SUBSCRIBE_SYNC_WAIT,
        client.request("rmq.sync", Bytes::new()),
    )
    .await;
    synced.send_if_modified(|synced| {
        let raised = *synced < mark;
        *synced = (*synced).max(mark);
        raised
    });
}

/// The NATS subscriptions of a node's filters, by first level, and who owns a received copy.
#[derive(Debug, Default)]
struct Interest {
    /// By first level ([`first_level`]), while [`Interest::everything`] is not.
    levels: HashMap<Box<str>, Level>,
    /// One subscription (this id) to every topic, for this many filters: once the levels
    /// needed more than [`MAX_SUBSCRIPTIONS`].
    everything: Option<(usize, u64)>,
    /// Live and draining subscriptions by the filter they cover: the owners of received copies.
    owners: SubscriptionIndex<u64, ()>,
    /// The filter each subscription in `owners` covers.
    covered: HashMap<u64, TopicFilter>,
    next_id: u64,
}

/// The subscriptions that cover the filters of one first level.
#[derive(Debug)]
enum Level {
    /// One per filter, at most [`PRECISE_PER_LEVEL`]: each filter with its subscription's id.
    Precise(Vec<(TopicFilter, u64)>),
    /// One subscription (this id) to the whole level, for this many filters.
    Whole(usize, u64),
}

impl Level {
    /// How many subscriptions the level has.
    fn subscriptions(&self) -> usize {
        match self {
            Self::Precise(precise) => precise.len(),
            Self::Whole(..) => 1,
        }
    }
}

/// The key of `filter`'s first level: the level itself, or `#` for a filter that starts with a
/// wildcard (a literal level is never `#`).
fn first_level(filter: &str) -> &str {
    match filter.split('/').next() {
        Some("+" | "#") | None => "#",
        Some(level) => level,
    }
}

/// The filter that covers a whole first level (`level/#`, or `#` for the wildcard key).
fn whole_level(level: &str) -> Option<TopicFilter> {
    if level == "#" {
        return TopicFilter::new("#").ok();
    }
    TopicFilter::new(format!("{level}/#")).ok()
}

impl Interest {
    /// Covers `filter`, which no local session held.
    async fn hold(
        &mut self,
        client: &async_nats::Client,
        reading: &mut Reading,
        filter: TopicFilter,
    ) {
        if let Some((filters, _)) = &mut self.everything {
            *filters += 1;
            return;
        }
        let key: Box<str> = first_level(filter.filter()).into();
        let precise = match self.levels.get_mut(&key) {
            Some(Level::Whole(filters, _)) => {
                *filters += 1;
                return;
            }
            Some(Level::Precise(precise)) => precise.len(),
            None => 0,
        };
        if precise < PRECISE_PER_LEVEL {
            let id = self.subscribe(client, reading, filter.clone()).await;
            match self.levels.get_mut(&key) {
                Some(Level::Precise(precise)) => precise.push((filter, id)),
                _ => {
                    self.levels.insert(key, Level::Precise(vec![(filter, id)]));
                }
            }
            let subscriptions: usize = self.levels.values().map(Level::subscriptions).sum();
            if subscriptions > MAX_SUBSCRIPTIONS {
                self.cover_everything(client, reading).await;
            }
            return;
        }
        let Some(whole) = whole_level(&key) else {
            return;
        };
        // The whole level first, so that no message of the level goes uncovered.
        let id = self.subscribe(client, reading, whole).await;
        if let Some(Level::Precise(precise)) = self
            .levels
            .insert(key, Level::Whole(PRECISE_PER_LEVEL + 1, id))
        {
            for (_, id) in precise {
                unsubscribe(reading, id).await;
            }
        }
    }

    /// Replaces every level's subscriptions with one to every topic.
    async fn cover_everything(&mut self, client: &async_nats::Client, reading: &mut Reading) {
        let Some(all) = whole_level("#") else {
            return;
        };
        // The new one first, so that no message goes uncovered.
        let id = self.subscribe(client, reading, all).await;
        let mut filters = 0;
        for (_, level) in self.levels.drain() {
            match level {
                Level::Precise(precise) => {
                    filters += precise.len();
                    for (_, id) in precise {
                        unsubscribe(reading, id).await;
                    }
                }
                Level::Whole(count, id) => {
                    filters += count;
                    unsubscribe(reading, id).await;
                }
            }
        }
        self.levels.shrink_to_fit();
        self.everything = Some((filters, id));
    }

    /// Stops covering `filter`, which no local session holds any more.
    async fn release(&mut self, reading: &mut Reading, filter: &TopicFilter) {
        if let Some((filters, id)) = &mut self.everything {
            *filters -= 1;
            if *filters == 0 {
                let id = *id;
                self.everything = None;
                unsubscribe(reading, id).await;
            }
            return;
        }
        let key = first_level(filter.filter());
        // The level's last subscription, which ends with its last filter.
        let last = match self.levels.get_mut(key) {
            None => return,
            Some(Level::Whole(filters, id)) => {
                *filters -= 1;
                if *filters > 0 {
                    return;
                }
                *id
            }
            Some(Level::Precise(precise)) => {
                let Some(position) = precise.iter().position(|(held, _)| held == filter) else {
                    return;
                };
                let (_, id) = precise.swap_remove(position);
                if !precise.is_empty() {
                    unsubscribe(reading, id).await;
                    return;
                }
                id
            }
        };
        self.levels.remove(key);
        unsubscribe(reading, last).await;
    }

    /// Subscribes to the subjects of `filter` (two for a filter ending in `/#`) and reads them
    /// from now on; returns the subscription's id.
    async fn subscribe(
        &mut self,
        client: &async_nats::Client,
        reading: &mut Reading,
        filter: TopicFilter,
    ) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        let mut subscribers = Vec::new();
        for subject in subject::filter_subjects(filter.filter()) {
            if subject.len() > MAX_SUBJECT_LEN {
                // No topic that long is sent either.
                debug!(%subject, "cluster: filter too long for a NATS subject; not subscribed");
                continue;
            }
            match client.subscribe(subject.clone()).await {
                Ok(subscriber) => subscribers.push(subscriber),
                Err(error) => warn!(%error, %subject, "cluster: cannot subscribe"),
            }
        }
        self.owners.insert(id, &filter, ());
        self.covered.insert(id, filter);
        reading.push(Subscription {
            id,
            subscribers,
            drained: false,
        });
        id
    }

    /// Subscription `id` has handed over all it received: its copies are no one's any more.
    fn drained(&mut self, id: u64) {
        if let Some(filter) = self.covered.remove(&id) {
            self.owners.remove(&id, &filter);
        }
        // What this task keeps is as large as the node's subscriptions once were.
        if self.covered.len() * 4 < self.covered.capacity() {
            self.covered.shrink_to_fit();
            self.levels.shrink_to_fit();
            self.owners.shrink_to_fit();
        }
    }
}

/// Every NATS subscription of the node's filters, read together.
type Reading = futures::stream::SelectAll<Subscription>;

/// Unsubscribes subscription `id` on NATS; it is read until it has handed over what it
/// received before.
async fn unsubscribe(reading: &mut Reading, id: u64) {
    if let Some(subscription) = reading
        .iter_mut()
        .find(|subscription| subscription.id == id)
    {
        for subscriber in &mut subscription.subscribers {
            let _ = subscriber.unsubscribe().await;
        }
    }
}

/// One filter's NATS subscriptions (two for a filter ending in `/#`), as a stream of what they
/// receive that ends with [`Inbound::Drained`] once they are unsubscribed and empty.
#[derive(Debug)]
struct Subscription {
    id: u64,
    subscribers: Vec<async_nats::Subscriber>,
    drained: bool,
}

impl futures::Stream for Subscription {
    type Item = Inbound;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Inbound>> {
        use std::task::Poll;
        if self.drained {
            return Poll::Ready(None);
        }
        let id = self.id;
        let mut open = false;
        for subscriber in &mut self.subscribers {
            match subscriber.poll_next_unpin(cx) {
                Poll::Ready(Some(message)) => {
                    return Poll::Ready(Some(Inbound::Message(id, message)));
                }
                Poll::Ready(None) => {}
                Poll::Pending => open = true,
            }
        }
        if open {
            return Poll::Pending;
        }
        self.drained = true;
        Poll::Ready(Some(Inbound::Drained(id)))
    }
}

/// Puts in `pending` the messages of a received copy (several, for a batch) if it came
/// through its owner, subscription `id`.
fn take_owned(
    owners: &SubscriptionIndex<u64, ()>,
    id: u64,
    message: async_nats::Message,
    pending: &mut VecDeque<(Option<String>, Publish)>,
) {
    let topic = subject::subject_topic(message.subject.as_str());
    // The messages of a batch share their subject's topic, and so their owner.
    let mut owned = None::<bool>;
    received_each(topic, message.payload, |sender, publish| {
        let Some(name) = publish.topic.as_ref() else {
            return;
        };
        let owned = *owned.get_or_insert_with(|| {
            let mut owner = None::<u64>;
            owners.for_each_match(name, |found| {
                if let Match::Subscription { subscriber, .. } = found {
                    owner = Some(owner.map_or(*subscriber, |owner| owner.min(*subscriber)));
                }
            });
            owner == Some(id)
        });
        if owned {
            pending.push_back((sender, publish));
        }
    });
}

/// Delivers the `pending` messages in order until one fills a subscriber's queue past its
/// high-water mark; then returns the wait for room, after which the rest goes.
fn deliver(
    shared: Arc<Shared>,
    pending: &mut VecDeque<(Option<String>, Publish)>,
) -> Option<futures::future::BoxFuture<'static, ()>> {
    while let Some((sender, publish)) = pending.pop_front() {
        let congested = shared
            .publish_received(sender.as_deref(), &publish, 0, None)
            .congested;
        if !congested.is_empty() {
            return Some(Box::pin(async move {
                shared.wait_for_space(congested).await;
            }));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use rallymq_codec::{TopicName, UserProperty};

    #[test]
    fn an_envelope_carries_the_message_its_properties_and_its_sender() {
        let mut publish = Publish::new(TopicName::new("a b/c.d/\u{e9}").unwrap(), "payload");
        publish.qos = QoS::ExactlyOnce;
        publish.retain = true;
        publish.packet_id = PacketId::new(77);
        publish.properties.content_type = Some("text/plain".try_into().unwrap());
        publish
            .properties
            .user_properties
            .push(UserProperty::new("k", "v").unwrap());
        let (sender, opened) = open(seal(Some("client-1"), &publish).unwrap()).unwrap();
        assert_eq!(sender.as_deref(), Some("client-1"));
        assert_eq!(opened.topic, publish.topic);
        assert_eq!(opened.payload, publish.payload);
        assert_eq!(opened.qos, QoS::ExactlyOnce);
        assert!(opened.retain);
        assert_eq!(opened.properties, publish.properties);
        let (sender, _) = open(seal(None, &publish).unwrap()).unwrap();
        assert_eq!(sender, None);
    }

    #[test]
    fn anything_but_an_envelope_is_refused() {
        assert!(open(Bytes::from_static(b"")).is_none());
        assert!(open(Bytes::from_static(b"hello world")).is_none());
        let mut good = seal(None, &Publish::new(TopicName::new("t").unwrap(), "x"))
            .unwrap()
            .to_vec();
        good.push(0);
        assert!(open(Bytes::from(good.clone())).is_none(), "trailing bytes");
        good.truncate(good.len() - 2);
        assert!(open(Bytes::from(good)).is_none(), "cut short");
    }

    /// A batch envelope of `payloads` on topic `t`, as [`outbound`] makes them.
    fn batch_of(payloads: &[&str]) -> Vec<u8> {
        let mut batch = vec![ENVELOPE_BATCH];
        for payload in payloads {
            let publish = Publish::new(TopicName::new("t").unwrap(), (*payload).to_owned());
            let envelope = seal(Some("c"), &publish);
            batch.extend_from_slice(&envelope.unwrap()[1..]);
        }
        batch
    }

    fn payloads_of(envelope: Vec<u8>) -> (Option<()>, Vec<String>) {
        let mut payloads = Vec::new();
        let opened = open_each(Bytes::from(envelope), |sender, publish| {
            assert_eq!(sender.as_deref(), Some("c"));
            payloads.push(String::from_utf8(publish.payload.to_vec()).unwrap());
        });
        (opened, payloads)
    }

    #[test]
    fn a_batch_envelope_hands_over_each_message_in_order_and_only_whole_ones() {
        assert_eq!(
            payloads_of(batch_of(&["1", "2", "3"])),
            (Some(()), vec!["1".into(), "2".into(), "3".into()])
        );
        let single = seal(Some("c"), &Publish::new(TopicName::new("t").unwrap(), "1")).unwrap();
        assert_eq!(payloads_of(single.to_vec()), (Some(()), vec!["1".into()]));
        let mut cut = batch_of(&["1", "2"]);
        cut.truncate(cut.len() - 1);
        assert_eq!(payloads_of(cut), (None, vec!["1".into()]), "cut short");
        assert_eq!(payloads_of(vec![ENVELOPE_BATCH, 0]), (None, vec![]));
        assert_eq!(payloads_of(b"hello world".to_vec()), (None, vec![]));
        // The stream, the retained bucket and the wills hold single messages only.
        assert!(open(Bytes::from(batch_of(&["1"]))).is_none());
    }

    #[test]
    fn a_batch_message_on_another_topic_than_its_subject_is_ignored() {
        let mut batch = batch_of(&["1"]);
        let other = seal(Some("c"), &Publish::new(TopicName::new("u").unwrap(), "2")).unwrap();
        batch.extend_from_slice(&other[1..]);
        batch.extend_from_slice(&batch_of(&["3"])[1..]);
        let mut payloads = Vec::new();
        received_each(Ok("t".to_owned()), Bytes::from(batch), |_, publish| {
            payloads.push(String::from_utf8(publish.payload.to_vec()).unwrap());
        });
        assert_eq!(payloads, ["1", "3"]);
    }

    #[test]
    fn node_ids_are_kept_in_the_data_directory() {
        let dir = std::env::temp_dir().join(format!("rallymq-node-id-{}", std::process::id()));
        let storage = Storage::Directory(dir.clone());
        let config = ClusterConfig::new(["nats://127.0.0.1:4222"]);
        let first = node_id(&config, &storage).unwrap();
        assert!(valid_node_id(&first));
        assert_eq!(node_id(&config, &storage).unwrap(), first);
        assert_ne!(node_id(&config, &Storage::InMemory).unwrap(), first);
        let named = ClusterConfig {
            node_id: Some("node-a".to_owned()),
            ..config.clone()
        };
        assert_eq!(node_id(&named, &storage).unwrap(), "node-a");
        let bad = ClusterConfig {
            node_id: Some("a.b".to_owned()),
            ..config
        };
        assert!(matches!(node_id(&bad, &storage), Err(Error::Cluster(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
