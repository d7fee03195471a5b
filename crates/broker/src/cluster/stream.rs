//! QoS 1 and 2 between nodes: one JetStream stream ([`STREAM`]) that every node writes its
//! clients' QoS 1 and 2 messages to, and reads through one durable consumer of its own.
//!
//! - A publisher's PUBACK or PUBREC waits for the stream's acknowledgement ([`StreamAck`]), so
//!   what a node acknowledges is stored by JetStream (on a majority of its replicas). When
//!   JetStream does not answer (no quorum, no server), the publish fails: MQTT 5 publishers get
//!   0x80, MQTT 3 publishers are disconnected, as when the local store fails.
//! - Each message carries a `Nats-Msg-Id` unique to it (node id, the node's start, a sequence),
//!   so that the stream's duplicate window drops a second write of the same message.
//! - Each node reads the whole stream through its durable consumer `node-<node id>` and
//!   routes every message through its local router (which does the matching), what it
//!   published itself too: a QoS 1 or 2 message reaches no subscriber before the stream has
//!   it, and every delivery has its place in the stream, which a session's record keeps. A
//!   node acknowledges a message once what routing wrote is durable in its store. A node that comes back under the same id resumes after the last
//!   message it acknowledged.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::{received, subject, with_retries};
use crate::Error;
use crate::broker::Shared;
use crate::store::{Change, Ticket};

/// The stream of QoS 1 and 2 messages.
pub(crate) const STREAM: &str = "rallymq_messages";

/// The store's name for how far this node routed its consumer of the stream.
const CURSOR: &str = "cluster-stream";

/// Header naming the node that wrote a message to the stream.
const NODE_HEADER: &str = "Rmq-Node";

/// How long a node waits for the stream to acknowledge a message before failing its publish.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Messages waiting to be written to the stream; past this many, publishes fail at once.
const OUTGOING_CAPACITY: usize = 8192;

/// Routed messages waiting to be acknowledged to the stream.
pub(super) const ACK_CAPACITY: usize = 1024;

/// How long one pull request of a node's consumer waits for messages. A request is held by
/// one server: when that server dies, or the route to it, the request is lost, and only its
/// expiry or the missed heartbeats tell. (async-nats's default, 30 s, held a node's messages
/// back for up to that long after a server's death.)
const PULL_EXPIRES: Duration = Duration::from_secs(5);

/// The idle heartbeat of a pull request: two missed, and the request is taken for lost.
const PULL_HEARTBEAT: Duration = Duration::from_secs(1);

/// How long the stream waits for a node's acknowledgement before delivering a message again.
/// A message delivered to a pull request the node had given up (its server stopped, then went
/// on) comes back only then: JetStream's default, 30 s, held such a message back that long.
const ACK_WAIT: Duration = Duration::from_secs(5);

/// How long a sequence the node has not routed, below ones it has, is waited for before it is
/// taken for one this node's consumer never gets (a message deleted from the stream): several
/// ack waits, for one delivered to a given-up request to come back.
const GAP_GIVE_UP: Duration = Duration::from_secs(60);

/// The stream sequences a node has routed: every one up to `floor`, and runs above it. A
/// message delivered to a pull request the node gave up comes back after the ack wait, behind
/// later ones: it must be routed then, not taken for a resend of one routed already.
#[derive(Debug)]
pub(super) struct Routed {
    floor: u64,
    /// Runs of routed sequences above `floor + 1`: first → last.
    runs: BTreeMap<u64, u64>,
    /// Since when the gap above `floor` has been open.
    gap_since: Option<Instant>,
}

impl Routed {
    pub(super) fn new(floor: u64) -> Self {
        Self {
            floor,
            runs: BTreeMap::new(),
            gap_since: None,
        }
    }

    /// Every sequence up to this one has been routed (or given up on).
    pub(super) fn floor(&self) -> u64 {
        self.floor
    }

    pub(super) fn contains(&self, sequence: u64) -> bool {
        sequence <= self.floor
            || self
                .runs
                .range(..=sequence)
                .next_back()
                .is_some_and(|(_, last)| *last >= sequence)
    }

    /// Records `sequence` as routed.
    pub(super) fn insert(&mut self, sequence: u64, now: Instant) {
        if self.contains(sequence) {
            return;
        }
        let mut first = sequence;
        let mut last = sequence;
        if let Some((&start, &end)) = self.runs.range(..sequence).next_back()
            && end + 1 == sequence
        {
            self.runs.remove(&start);
            first = start;
        }
        if let Some(end) = self.runs.remove(&(sequence + 1)) {
            last = end;
        }
        self.runs.insert(first, last);
        self.settle(now);
    }

    /// Forgets that `sequence` was routed (what routing wrote was not stored): it is routed
    /// again when delivered again.
    pub(super) fn remove(&mut self, sequence: u64, now: Instant) {
        if sequence == 0 || !self.contains(sequence) {
            return;
        }
        if sequence <= self.floor {
            if sequence < self.floor {
                self.runs.insert(sequence + 1, self.floor);
            }
            self.floor = sequence - 1;
            self.gap_since = Some(now);
            return;
        }
        if let Some((&start, &end)) = self.runs.range(..=sequence).next_back() {
            self.runs.remove(&start);
            if start < sequence {
                self.runs.insert(start, sequence - 1);
            }
            if sequence < end {
                self.runs.insert(sequence + 1, end);
            }
        }
    }

    /// Moves the floor over the runs that reach it, and over a gap open too long.
    fn settle(&mut self, now: Instant) {
        loop {
            let Some((&start, &end)) = self.runs.first_key_value() else {
                self.gap_since = None;
                return;
            };
            if start == self.floor + 1 {
                self.runs.remove(&start);
                self.floor = end;
                self.gap_since = None;
                continue;
            }
            let since = *self.gap_since.get_or_insert(now);
            if now.duration_since(since) < GAP_GIVE_UP {
                return;
            }
            warn!(
                from = self.floor + 1,
                to = start - 1,
                "cluster: stream messages never delivered to this node; taken for deleted"
            );
            self.runs.remove(&start);
            self.floor = end;
            self.gap_since = Some(now);
        }
    }
}

/// Reads `consumer` with [`PULL_EXPIRES`] and [`PULL_HEARTBEAT`].
pub(super) async fn pull_messages(
    consumer: &consumer::PullConsumer,
) -> Result<consumer::pull::Stream, consumer::StreamError> {
    consumer
        .stream()
        .expires(PULL_EXPIRES)
        .heartbeat(PULL_HEARTBEAT)
        .messages()
        .await
}

/// How long a node waits before reading its consumer again when reading failed.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// The most replicas the stream has by default (when the NATS cluster has that many servers).
const DEFAULT_MAX_REPLICAS: usize = 3;

/// The most replicas JetStream keeps of a stream.
const JETSTREAM_MAX_REPLICAS: usize = 5;

/// Where the servers keep the stream's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StreamStorage {
    /// On disk: what a majority of replicas acknowledged survives their restarts.
    #[default]
    File,
    /// In memory: faster, and lost when a majority of its servers stop together.
    Memory,
}

/// The settings of the stream of QoS 1 and 2 messages (`rallymq_messages`), used by the node that
/// creates it (the first one to start). A stream that exists is used as it is; a node whose
/// settings differ from it says so in its log (`nats stream edit` changes it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSettings {
    /// How many servers keep a copy of each message (1 to 5); a publish is acknowledged once a
    /// majority of them have it. `None`: as many as the servers the NATS client is told of, at
    /// most 3 (1 on a single server).
    pub replicas: Option<usize>,
    /// Disk or memory.
    pub storage: StreamStorage,
    /// How long the stream keeps a message: a node away longer than this misses what it held,
    /// and NATS removes its consumer (its `inactive_threshold`). Zero keeps messages until
    /// `max_bytes` (or for ever), and consumers for ever.
    pub max_age: Duration,
    /// The most bytes the stream keeps; past it, its oldest messages go. `None`: no limit.
    pub max_bytes: Option<u64>,
}

impl Default for StreamSettings {
    /// Replicas from the cluster's size (at most 3), on disk, one day, no size limit.
    fn default() -> Self {
        Self {
            replicas: None,
            storage: StreamStorage::File,
            max_age: Duration::from_secs(24 * 60 * 60),
            max_bytes: None,
        }
    }
}

impl StreamSettings {
    /// The stream's JetStream configuration on a cluster of which the client is told of
    /// `servers` servers.
    fn config(&self, servers: usize) -> Result<stream::Config, Error> {
        let replicas = match self.replicas {
            None => servers.clamp(1, DEFAULT_MAX_REPLICAS),
            Some(n) if (1..=JETSTREAM_MAX_REPLICAS).contains(&n) => n,
            Some(n) => {
                return Err(Error::Cluster(format!(
                    "stream replicas {n}: JetStream keeps 1 to {JETSTREAM_MAX_REPLICAS}"
                )));
            }
        };
        let max_bytes = match self.max_bytes {
            None => -1,
            Some(bytes) => i64::try_from(bytes)
                .ok()
                .filter(|bytes| *bytes > 0)
                .ok_or_else(|| {
                    Error::Cluster(format!("stream max bytes {bytes}: 1 to {}", i64::MAX))
                })?,
        };
        Ok(stream::Config {
            name: STREAM.to_owned(),
            description: Some("rallymq: QoS 1 and 2 messages between nodes".to_owned()),
            subjects: vec![format!("{}.>", subject::STREAM_PREFIX)],
            storage: match self.storage {
                StreamStorage::File => stream::StorageType::File,
                StreamStorage::Memory => stream::StorageType::Memory,
            },
            num_replicas: replicas,
            max_age: self.max_age,
            max_bytes,
            ..stream::Config::default()
        })
    }
}

/// What in an existing stream's configuration differs from the one this node would have made.
fn differences(existing: &stream::Config, wanted: &stream::Config) -> Vec<String> {
    let mut differences = Vec::new();
    if existing.num_replicas != wanted.num_replicas {
        differences.push(format!(
            "replicas {} (configured {})",
            existing.num_replicas, wanted.num_replicas
        ));
    }
    if existing.storage != wanted.storage {
        differences.push(format!(
            "storage {:?} (configured {:?})",
            existing.storage, wanted.storage
        ));
    }
    if existing.max_age != wanted.max_age {
        differences.push(format!(
            "max age {:?} (configured {:?})",
            existing.max_age, wanted.max_age
        ));
    }
    // The server stores "no limit" as -1 whichever way it was asked for.
    if existing.max_bytes.max(-1) != wanted.max_bytes.max(-1) {
        differences.push(format!(
            "max bytes {} (configured {})",
            existing.max_bytes, wanted.max_bytes
        ));
    }
    differences
}

/// How many replicas the sessions bucket has: as the stream by default, one per NATS server
/// the client is told of, at most [`DEFAULT_MAX_REPLICAS`].
pub(super) fn replicas(client: &async_nats::Client) -> usize {
    // The servers a client is told of include the one it is connected to.
    client
        .server_info()
        .connect_urls
        .len()
        .clamp(1, DEFAULT_MAX_REPLICAS)
}

/// The name of a node's durable consumer.
fn consumer_name(node_id: &str) -> String {
    format!("node-{node_id}")
}

/// A write the cluster acknowledges: resolves once JetStream has stored it, or failed.
pub(crate) type Written = oneshot::Receiver<Result<(), String>>;

/// A QoS 1 or 2 message's write to the stream (and, retained, to the retained bucket):
/// resolves once JetStream has stored it.
#[derive(Debug)]
pub(crate) struct StreamAck {
    stream: Written,
    retained: Option<Written>,
    /// The message's id in the stream (empty when it was not sent).
    message_id: String,
}

impl StreamAck {
    /// A write that failed before it was sent.
    fn failed(reason: &str) -> Self {
        Self {
            stream: failed(reason),
            retained: None,
            message_id: String::new(),
        }
    }

    /// Whether the write was sent to the stream: if so, a failure may have come after the
    /// stream stored it (an answer lost or too late).
    pub(crate) fn sent(&self) -> bool {
        !self.message_id.is_empty()
    }

    /// Waits for the retained bucket's write too.
    pub(super) fn with_retained(self, retained: Written) -> Self {
        Self {
            retained: Some(retained),
            ..self
        }
    }

    /// Waits until the stream (and the retained bucket) has the message, or a write failed.
    pub(crate) async fn stored(self) -> Result<(), Error> {
        let written = |result: Result<Result<(), String>, _>, place: &str| match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(Error::Cluster(format!(
                "the cluster's {place} did not store the message: {error}"
            ))),
            Err(_) => Err(Error::Cluster(format!(
                "the node left the cluster before the {place} stored the message"
            ))),
        };
        written(self.stream.await, "stream")?;
        match self.retained {
            Some(retained) => written(retained.await, "retained bucket"),
            None => Ok(()),
        }
    }
}

/// A write that failed before it was sent.
pub(super) fn failed(reason: &str) -> Written {
    let (tx, rx) = oneshot::channel();
    let _ = tx.send(Err(reason.to_owned()));
    rx
}

/// A message on its way to the stream.
#[derive(Debug)]
pub(super) struct Outgoing {
    subject: String,
    envelope: Bytes,
    id: String,
    done: oneshot::Sender<Result<(), String>>,
}

/// The publishing side of the stream, held by the node's [`super::Link`].
#[derive(Debug)]
pub(super) struct Writer {
    outgoing: mpsc::Sender<Outgoing>,
    /// The start of this run's message ids: the node's id and when it started, so that ids
    /// stay unique across the node's restarts (a reused id inside the stream's duplicate
    /// window would drop a new message as a duplicate).
    run: String,
    sequence: AtomicU64,
}

impl Writer {
    /// A message id no write has had: this run's next.
    pub(super) fn fresh_id(&self) -> String {
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed) + 1;
        format!("{}-{sequence}", self.run)
    }

    /// Queues a message for the stream, under `id` or one of this node's; never waits.
    pub(super) fn write(&self, subject: String, envelope: Bytes, id: Option<&str>) -> StreamAck {
        let (done, ack) = oneshot::channel();
        let id = id.map_or_else(|| self.fresh_id(), str::to_owned);
        match self.outgoing.try_send(Outgoing {
            subject,
            envelope,
            id: id.clone(),
            done,
        }) {
            Ok(()) => StreamAck {
                stream: ack,
                retained: None,
                message_id: id,
            },
            Err(_) => StreamAck::failed("too many messages waiting for the stream"),
        }
    }
}

/// What a node's stream tasks start from.
#[derive(Debug)]
pub(super) struct Parts {
    context: jetstream::Context,
    consumer: consumer::PullConsumer,
    /// The stream's last sequence when this node opened it.
    last_sequence: u64,
    outgoing: mpsc::Receiver<Outgoing>,
    /// The place in the stream up to which this node has routed every message.
    routed: Arc<AtomicU64>,
    /// Held while the consumer routes a message and moves `routed` past it.
    routing: Arc<Mutex<()>>,
}

/// A JetStream context whose requests (writes included) fail after [`ACK_TIMEOUT`].
pub(super) fn context(client: &async_nats::Client) -> jetstream::Context {
    let mut context = jetstream::new(client.clone());
    context.set_timeout(ACK_TIMEOUT);
    context
}

/// Opens (or creates) the stream and (re)creates this node's consumer, so that nothing written
/// after the node has started is missed, and a node that comes back under the same id resumes
/// after the last message it acknowledged.
pub(super) async fn open_stream(
    client: &async_nats::Client,
    node_id: &str,
    settings: &StreamSettings,
) -> Result<(Writer, Parts), Error> {
    let context = context(client);
    // The servers a client is told of include the one it is connected to.
    let config = settings.config(client.server_info().connect_urls.len())?;
    let name = consumer_name(node_id);
    // Said once, not at every try.
    let warned = std::sync::atomic::AtomicBool::new(false);
    let (consumer, last_sequence, routed) =
        with_retries("no stream for QoS 1 and 2 messages", || async {
            let stream = context
                .get_or_create_stream(config.clone())
                .await
                .map_err(|e| e.to_string())?;
            let last_sequence = stream.cached_info().state.last_sequence;
            let differences = differences(&stream.cached_info().config, &config);
            if !differences.is_empty() && !warned.swap(true, Ordering::Relaxed) {
                warn!(
                    stream = STREAM,
                    differences = %differences.join(", "),
                    "cluster: the stream exists with other settings than this node's; used as it is"
                );
            }
            // A consumer left by this node's previous run may hold messages delivered to it and
            // never acknowledged: they would come back only after the ack wait, behind newer ones.
            // Made again from the last acknowledged message, they come first, in order.
            let start = match stream.consumer_info(&name).await {
                Ok(info) => {
                    let floor = info.ack_floor.stream_sequence;
                    stream
                        .delete_consumer(&name)
                        .await
                        .map_err(|e| e.to_string())?;
                    Some(floor + 1)
                }
                Err(_) => None,
            };
            let (deliver_policy, routed) = match start {
                Some(start_sequence) => (
                    consumer::DeliverPolicy::ByStartSequence { start_sequence },
                    start_sequence - 1,
                ),
                None => (consumer::DeliverPolicy::New, last_sequence),
            };
            stream
                .create_consumer(consumer::pull::Config {
                    durable_name: Some(name.clone()),
                    description: Some(format!("rallymq node {node_id}")),
                    deliver_policy,
                    ack_policy: consumer::AckPolicy::Explicit,
                    filter_subject: format!("{}.>", subject::STREAM_PREFIX),
                    ack_wait: ACK_WAIT,
                    // A node away longer than the stream keeps messages misses what it held
                    // anyway: NATS then removes its consumer, which would otherwise stay for
                    // good after the node is gone for good. Zero: never.
                    inactive_threshold: settings.max_age,
                    ..consumer::pull::Config::default()
                })
                .await
                .map(|consumer| (consumer, last_sequence, routed))
                .map_err(|e| e.to_string())
        })
        .await?;
    let (tx, outgoing) = mpsc::channel(OUTGOING_CAPACITY);
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    Ok((
        Writer {
            outgoing: tx,
            run: format!("{node_id}-{run:x}"),
            sequence: AtomicU64::new(0),
        },
        Parts {
            context,
            consumer,
            last_sequence,
            outgoing,
            routed: Arc::new(AtomicU64::new(routed)),
            routing: Arc::default(),
        },
    ))
}

impl Parts {
    /// The place in the stream up to which this node has routed every message (the
    /// consumer's in order; this node's own messages were routed when published).
    pub(super) fn routed(&self) -> Arc<AtomicU64> {
        self.routed.clone()
    }

    /// Held while this node's consumer routes a message and moves [`Parts::routed`] past it:
    /// whoever holds it sees a routed place that covers every message routed so far.
    pub(super) fn routing(&self) -> Arc<Mutex<()>> {
        self.routing.clone()
    }

    /// The task that writes to the stream and the one that reads this node's consumer.
    pub(super) fn run(
        self,
        node_id: &str,
        shared: Weak<Shared>,
    ) -> (
        impl Future<Output = ()> + Send + 'static,
        impl Future<Output = ()> + Send + 'static,
    ) {
        (
            write_stream(self.context, node_id.to_owned(), self.outgoing),
            read_stream(
                self.consumer,
                self.last_sequence,
                shared,
                self.routed,
                self.routing,
            ),
        )
    }
}

/// Writes messages to the stream in order, and resolves each one's [`StreamAck`] when the
/// stream acknowledges it.
async fn write_stream(
    context: jetstream::Context,
    node_id: String,
    mut outgoing: mpsc::Receiver<Outgoing>,
) {
    while let Some(Outgoing {
        subject,
        envelope,
        id,
        done,
    }) = outgoing.recv().await
    {
        // Cloned only for the log: a write per QoS 1/2 message.
        let logged_id = tracing::enabled!(tracing::Level::DEBUG).then(|| id.clone());
        let publish = jetstream::message::PublishMessage::build()
            .payload(envelope)
            .message_id(id)
            .header(NODE_HEADER, node_id.as_str());
        match context.send_publish(subject, publish).await {
            Ok(ack) => {
                tokio::spawn(async move {
                    let ack = ack.await;
                    // Which write stored which sequence, and which the duplicate window
                    // dropped: what tells a message written twice from one routed twice.
                    match (&ack, &logged_id) {
                        (Ok(ack), Some(id)) => debug!(
                            %id,
                            sequence = ack.sequence,
                            duplicate = ack.duplicate,
                            "cluster: stream write acknowledged"
                        ),
                        (Err(error), Some(id)) => {
                            debug!(%id, %error, "cluster: stream write failed");
                        }
                        (_, None) => {}
                    }
                    let _ = done.send(ack.map(drop).map_err(|e| e.to_string()));
                });
            }
            Err(error) => {
                if let Some(id) = &logged_id {
                    debug!(%id, %error, "cluster: stream write not sent");
                }
                let _ = done.send(Err(error.to_string()));
            }
        }
    }
}

/// Reads this node's consumer: routes other nodes' messages here and acknowledges each once
/// what routing wrote is durable.
async fn read_stream(
    consumer: consumer::PullConsumer,
    last_sequence: u64,
    shared: Weak<Shared>,
    routed: Arc<AtomicU64>,
    routing: Arc<Mutex<()>>,
) {
    let (acks_tx, acks) = mpsc::channel(ACK_CAPACITY);
    let Some(mut restored) = shared
        .upgrade()
        .map(|shared| shared.restored_cursor(CURSOR))
    else {
        return;
    };
    // A stream's sequence never goes back: one that ends before this node's kept place in it
    // is not the stream the place was kept for (it was made anew), and would have its
    // messages skipped.
    if restored > last_sequence {
        warn!(
            cursor = restored,
            last_sequence,
            "cluster: the stream ends before this node's kept place in it (made anew?); reading it all"
        );
        restored = 0;
    }
    routed.fetch_max(restored, Ordering::AcqRel);
    let routed_up_to = Arc::new(Mutex::new(Routed::new(restored)));
    // Acknowledged within this task, which the broker's shutdown aborts: a task of its own
    // went on waiting for the store with the broker's state in hand, and a broker restarted
    // at once on the same directory found its lock still taken.
    tokio::join!(
        route_stream(
            consumer,
            shared.clone(),
            acks_tx,
            routed_up_to.clone(),
            routed,
            routing,
        ),
        acknowledge(acks, shared, Some(routed_up_to))
    );
}

/// Routes this node's consumer's messages, handing each to [`acknowledge`].
async fn route_stream(
    consumer: consumer::PullConsumer,
    shared: Weak<Shared>,
    acks_tx: mpsc::Sender<(Ticket, jetstream::Message)>,
    routed_up_to: Arc<Mutex<Routed>>,
    routed: Arc<AtomicU64>,
    routing: Arc<Mutex<()>>,
) {
    // Messages delivered again (an acknowledgement lost on a reconnection, or in a crash after
    // the store had what routing them wrote) were routed once: `routed_up_to` has them, and
    // the store keeps its floor with what routing writes ([`CURSOR`]).
    loop {
        let mut messages = match pull_messages(&consumer).await {
            Ok(messages) => messages,
            Err(error) => {
                warn!(%error, "cluster: cannot read the stream of QoS 1 and 2 messages");
                tokio::time::sleep(RETRY_DELAY).await;
                continue;
            }
        };
        while let Some(message) = messages.next().await {
            let message = match message {
                Ok(message) => message,
                Err(error) => {
                    // A pull request lost with its server (missed heartbeats), or the stream
                    // unreadable: read again with a new request at once.
                    warn!(%error, "cluster: reading the stream; reading it again");
                    break;
                }
            };
            let sequence = message.info().map_or(0, |info| info.stream_sequence);
            // Until `routed` has moved past it: a node handing a session over reads `routed`
            // as the place up to which the handover holds what the session matched, and a
            // message routed into it but not yet counted was read again by the next owner
            // (the proof: a QoS 2 message from a resumed session's store twice).
            let routing = crate::lock(&routing);
            let floor = {
                let mut routed_up_to = crate::lock(&routed_up_to);
                if sequence != 0 && routed_up_to.contains(sequence) {
                    None
                } else {
                    if sequence != 0 {
                        routed_up_to.insert(sequence, Instant::now());
                    }
                    Some(routed_up_to.floor())
                }
            };
            let ticket = match floor {
                None => Ticket::default(),
                Some(floor) => {
                    let Some(shared) = shared.upgrade() else {
                        return;
                    };
                    route(&shared, &message, sequence, floor)
                }
            };
            // After routing: a session found with nothing waiting once this is read has had
            // everything up to the floor.
            let floor = crate::lock(&routed_up_to).floor();
            routed.fetch_max(floor, Ordering::AcqRel);
            drop(routing);
            if acks_tx.send((ticket, message)).await.is_err() {
                return;
            }
        }
        if shared.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(RETRY_DELAY).await;
    }
}

/// Routes a message of the stream to this node's clients; returns the store's ticket for
/// what that wrote.
/// `floor`: every sequence up to it is routed, this one included.
fn route(shared: &Shared, message: &jetstream::Message, sequence: u64, floor: u64) -> Ticket {
    let topic = subject::stream_subject_topic(message.subject.as_str());
    let Some((sender, publish)) = received(topic, message.payload.clone()) else {
        return Ticket::default();
    };
    if publish.qos == rallymq_codec::QoS::ExactlyOnce {
        debug!(
            sequence,
            id = message_id(message),
            "cluster: routing a QoS 2 message of the stream"
        );
    }
    // The floor, not the sequence: after a crash, what a gap below this held is routed when
    // it comes, not skipped.
    let cursor = (sequence != 0).then(|| Change::PutCursor {
        name: CURSOR.into(),
        position: floor,
    });
    shared
        .publish_received(sender.as_deref(), &publish, sequence, cursor)
        .ticket
}

/// A stream message's `Nats-Msg-Id`, for the log.
pub(super) fn message_id(message: &async_nats::Message) -> &str {
    message
        .headers
        .as_ref()
        .and_then(|headers| headers.get(async_nats::header::NATS_MESSAGE_ID))
        .map_or("", |value| value.as_str())
}

/// Acknowledges routed messages to the stream, in order, each once it is durable here. One
/// whose write failed is left unacknowledged: the stream delivers it again after its ack wait,
/// and `routed_up_to` (when the reader skips what it routed) forgets it so that it is routed
/// then.
pub(super) async fn acknowledge(
    mut acks: mpsc::Receiver<(Ticket, jetstream::Message)>,
    shared: Weak<Shared>,
    routed_up_to: Option<Arc<Mutex<Routed>>>,
) {
    while let Some((ticket, message)) = acks.recv().await {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if let Err(error) = shared.durable(ticket).await {
            warn!(%error, "cluster: a message from the stream was not stored here; not acknowledged");
            let sequence = message.info().map_or(0, |info| info.stream_sequence);
            if let Some(routed_up_to) = &routed_up_to {
                crate::lock(routed_up_to).remove(sequence, Instant::now());
            }
            continue;
        }
        drop(shared);
        if let Err(error) = message.ack().await {
            debug!(%error, "cluster: acknowledging a message of the stream");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routed_keeps_a_gap_open_until_its_message_comes_or_it_is_given_up() {
        let start = Instant::now();
        let mut routed = Routed::new(10);
        assert!(routed.contains(10) && !routed.contains(11));
        routed.insert(12, start);
        routed.insert(13, start);
        assert_eq!(routed.floor(), 10);
        assert!(
            !routed.contains(11),
            "a message delivered to a given-up request"
        );
        assert!(routed.contains(12) && routed.contains(13) && !routed.contains(14));
        routed.insert(11, start);
        assert_eq!(routed.floor(), 13);
        // Runs merge from both sides.
        routed.insert(17, start);
        routed.insert(15, start);
        routed.insert(16, start);
        assert_eq!(routed.runs, BTreeMap::from([(15, 17)]));
        // A write that failed: routed again when delivered again.
        routed.remove(16, start);
        assert_eq!(routed.runs, BTreeMap::from([(15, 15), (17, 17)]));
        routed.remove(12, start);
        assert_eq!(routed.floor(), 11);
        assert!(!routed.contains(12) && routed.contains(13));
        // A gap nothing fills is given up after a while, one gap at a time.
        routed.insert(18, start + GAP_GIVE_UP / 2);
        assert_eq!(routed.floor(), 11);
        routed.insert(19, start + GAP_GIVE_UP);
        assert_eq!(routed.floor(), 13, "12 given up; 14's wait starts now");
        routed.insert(14, start + GAP_GIVE_UP);
        routed.insert(16, start + GAP_GIVE_UP);
        assert_eq!(routed.floor(), 19);
        assert!(routed.runs.is_empty());
    }
}
