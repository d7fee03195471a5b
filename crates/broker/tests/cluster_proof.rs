//! Issue 17's proof, in one run: three routed `nats-server` processes (Debian's package) with
//! JetStream on file storage, the stream of QoS 1 and 2 messages replicated on all three, and
//! three rallymq nodes in child processes, each with its own data directory and port, so that
//! a node SIGKILLed comes back with its store where its clients knew it.
//!
//! Long-lived clients are `rallymq_client` clients, as an application runs them: each knows the
//! three nodes, starting with its own, and on losing its connection goes to the next one,
//! resumes its session (Clean Start 0, Session Expiry > 0) and sends again, with DUP, what was
//! not acknowledged. Each records what it received and every reconnection; each publisher
//! records what was acknowledged, and what was refused.
//!
//! During the run: node A is SIGKILLed; later the NATS server leading the stream is SIGKILLed;
//! both are restarted; 100 simultaneous CONNECTs of one client id go to two nodes; two of the
//! three NATS servers are SIGKILLed and restarted. Every point of the issue is then checked
//! against what the clients recorded, and the test fails with every point that did not hold,
//! each saying what went wrong (for lost messages: publisher, sequence numbers, subscriber,
//! and the node the subscriber was on when A died).
//!
//! `RALLYMQ_PROOF_LOGS=DIR` keeps each node's standard error in `DIR/<node>.log` (with
//! `RUST_LOG` set, the nodes log there); otherwise the logs go to a temporary directory that is
//! removed. A missing nats-server fails the test.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rallymq_client::{Backoff, Client, ClientOptions, ConnectionEvent, ProtocolVersion, QoS};
use rallymq_codec::{Connect, ReasonCode, TopicName, Will};
use rallymq_session::{ClientConfig, ClientEvent};
use rallymq_test_support::{NatsServer, free_port, wait_for_stream_leader};
use support::child::{ChildNode, ChildOptions};
use support::cluster::publish_until_acknowledged;
use support::credentials::TempDir;
use support::storm::storm;
use support::{TestClient, connect_packet, message, persistent_connect, subscription, topic_str};
use tokio::net::TcpStream;

/// Not a test: the body of a child node (see [`support::child`]). Ignored, so that it runs only
/// when a test starts it with `--ignored --exact child_node`.
#[test]
#[ignore = "run by the tests of this file in a child process"]
fn child_node() {
    support::child::run_child_node();
}

/// The stream of QoS 1 and 2 messages between nodes.
const STREAM: &str = "rallymq_messages";

/// The nodes, by index; clients of node `i` go to `i + 1`, then `i + 2`, when theirs goes.
const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];

/// The node that is SIGKILLed and restarted.
const KILLED: usize = 0;

/// The time between a publisher's acknowledged message and its next one.
const PACE: Duration = Duration::from_millis(50);

/// How long a publish may wait for its acknowledgement (the node waits 5 s for the stream; a
/// client that moves to another node resends), before it is counted as not acknowledged and
/// tried again.
const ACK_WITHIN: Duration = Duration::from_secs(15);

/// How many more acknowledgements of the QoS 1 publishers (all together) end a phase, and how
/// long a phase lasts at least.
const PHASE_ACKS: usize = 45;
const PHASE_MIN: Duration = Duration::from_secs(2);

/// How long the cluster may take to get going again: a phase's acknowledgements, a new stream
/// leader, the servers' return.
const RECOVERY: Duration = Duration::from_secs(30);

/// How long the majority of NATS servers stays down.
const MAJORITY_DOWN: Duration = Duration::from_secs(3);

/// After the publishers stop: how long subscribers may take to get everything. Longer than the
/// 30 s a node's consumer waits for an acknowledgement before JetStream delivers again: what is
/// still missing after it is lost, not late.
const DRAIN: Duration = Duration::from_secs(35);
/// The quiet spell after the last message that ends the drain early, once all has come.
const QUIET: Duration = Duration::from_secs(2);

/// How long a client waits between tries to reconnect.
const BACKOFF: Backoff = Backoff {
    min: Duration::from_millis(100),
    max: Duration::from_secs(1),
};

/// Simultaneous CONNECTs of one client id, over two nodes.
const STORM: usize = 100;

/// Topics with retained messages.
const RETAINED_TOPICS: usize = 3;

/// Clients with wills on the killed node; the last of them has a persistent session (its will
/// is in the node's store too, and must not be published again when the node comes back).
const WILLS: usize = 3;

/// How long a dead node takes to be seen dead (3 missed beats of 1 s) and its wills to be
/// published, with room for a loaded machine.
const DETECTION: Duration = Duration::from_secs(12);

/// Seconds since the run began, for messages.
#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn at(self, at: Instant) -> String {
        format!(
            "{:.1} s",
            at.saturating_duration_since(self.0).as_secs_f64()
        )
    }

    /// Prints what happened now, for a reader of the test's output.
    fn say(self, what: &str) {
        eprintln!("{}: {what}", self.at(Instant::now()));
    }
}

/// What a client saw.
#[derive(Clone, Default)]
struct Log {
    /// Messages received: when, topic, payload.
    messages: Vec<(Instant, String, String)>,
    /// Each CONNACK after the first: when, and its Session Present.
    reconnects: Vec<(Instant, bool)>,
    /// Each connection lost or attempt failed: when, and why.
    ends: Vec<(Instant, String)>,
}

/// A `rallymq_client` client that knows the three nodes, and records what it sees.
struct Tracked {
    name: String,
    client: Client,
    /// The nodes in the order the client tries them.
    order: [usize; 3],
    log: Arc<Mutex<Log>>,
}

impl Tracked {
    /// Connects `name` to node `first` (the others as fallbacks, in turn), with a persistent
    /// session (MQTT 5: Session Expiry 600 s).
    async fn connect(
        name: &str,
        addrs: &[SocketAddr; 3],
        first: usize,
        version: ProtocolVersion,
    ) -> Self {
        let order = [first % 3, (first + 1) % 3, (first + 2) % 3];
        let mut options = ClientOptions::new(&format!("mqtt://{}", addrs[order[0]]))
            .fallback_url(&format!("mqtt://{}", addrs[order[1]]))
            .fallback_url(&format!("mqtt://{}", addrs[order[2]]))
            .client_id(name)
            .version(version)
            .clean_start(false)
            .keep_alive(30)
            .reconnect(Some(BACKOFF));
        if version.is_v5() {
            options = options.session_expiry(600);
        }
        let (client, mut messages, _) = tokio::time::timeout(RECOVERY, Client::connect(options))
            .await
            .unwrap_or_else(|_| panic!("{name}: no CONNACK within {RECOVERY:?}"))
            .unwrap_or_else(|error| panic!("{name}: not connected: {error}"));
        let log = Arc::new(Mutex::new(Log::default()));
        let mut events = client.connection_events();
        tokio::spawn({
            let log = log.clone();
            async move {
                while let Some(message) = messages.recv().await {
                    let payload = String::from_utf8_lossy(&message.payload).into_owned();
                    lock(&log).messages.push((
                        Instant::now(),
                        message.topic.as_str().to_owned(),
                        payload,
                    ));
                }
            }
        });
        tokio::spawn({
            let log = log.clone();
            async move {
                while let Some(event) = events.recv().await {
                    let now = Instant::now();
                    match event {
                        ConnectionEvent::Connected {
                            session_present, ..
                        } => lock(&log).reconnects.push((now, session_present)),
                        ConnectionEvent::Disconnected(error) => {
                            lock(&log).ends.push((now, error.to_string()))
                        }
                        ConnectionEvent::GaveUp(error) => {
                            lock(&log).ends.push((now, format!("gave up: {error}")))
                        }
                        _ => {}
                    }
                }
            }
        });
        Self {
            name: name.to_owned(),
            client,
            order,
            log,
        }
    }

    /// A copy of what it saw until now (the methods below read the log again: a copy, not a
    /// guard, is what a caller holds).
    fn log(&self) -> Log {
        lock(&self.log).clone()
    }

    /// The node the client was connected to (or trying) at `at`: it moves on to the next one
    /// after every connection lost or attempt failed.
    fn node_at(&self, at: Instant) -> usize {
        let ends = lock(&self.log)
            .ends
            .iter()
            .filter(|(t, _)| *t <= at)
            .count();
        self.order[ends % 3]
    }

    /// The nodes it was on, in turn, as a string (the first moves and a count past a few).
    fn path(&self) -> String {
        let ends = lock(&self.log).ends.len();
        let mut nodes: Vec<&str> = Vec::new();
        for i in 0..=ends {
            let node = NODES[self.order[i % 3]];
            if nodes.last() != Some(&node) {
                nodes.push(node);
            }
        }
        if nodes.len() <= 4 {
            return nodes.join(" -> ");
        }
        format!(
            "{} -> ... ({} moves, the last to {})",
            nodes[..3].join(" -> "),
            nodes.len() - 1,
            nodes[nodes.len() - 1]
        )
    }
}

/// Locks a client's log; one poisoned by a panicking reader task still holds what it recorded.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What one publisher did.
#[derive(Debug, Default)]
struct Published {
    /// Acknowledged with success: sequence number, when sent, when acknowledged.
    acked: Vec<(u64, Instant, Instant)>,
    /// Refused or not acknowledged within [`ACK_WITHIN`]: sequence number, when sent, how.
    refused: Vec<(u64, Instant, String)>,
    /// Still not acknowledged when the run's end gave up on it.
    unfinished: Option<u64>,
}

/// A publisher, how it published, and what it was told.
type Run = (Arc<Tracked>, Plan, Published);

/// How a publisher publishes.
#[derive(Clone)]
struct Plan {
    /// The topics it publishes on, one message each in turn.
    topics: Vec<String>,
    qos: QoS,
    retain: bool,
    /// A try refused gets a new sequence number (QoS 2: a try refused may or may not have
    /// been stored, so the next is a new message, not a resend); otherwise the same message is
    /// tried again.
    new_number_per_try: bool,
}

impl Plan {
    /// One topic, not retained; at QoS 2 a try refused is followed by a new message.
    fn on(topic: String, qos: QoS) -> Self {
        Self {
            topics: vec![topic],
            qos,
            retain: false,
            new_number_per_try: qos == QoS::ExactlyOnce,
        }
    }
}

/// MQTT 5, or 3.1.1.
fn version(v5: bool) -> ProtocolVersion {
    if v5 {
        ProtocolVersion::V5
    } else {
        ProtocolVersion::V3_1_1
    }
}

/// A [`Tracked`] client subscribed to `filter` at `qos`, which SUBACK must grant.
async fn subscribed(
    name: &str,
    addrs: &[SocketAddr; 3],
    node: usize,
    version: ProtocolVersion,
    filter: &str,
    qos: QoS,
) -> Tracked {
    let subscriber = Tracked::connect(name, addrs, node, version).await;
    let code = tokio::time::timeout(RECOVERY, subscriber.client.subscribe(filter, qos))
        .await
        .unwrap_or_else(|_| panic!("{name}: no SUBACK within {RECOVERY:?}"))
        .unwrap_or_else(|error| panic!("{name}: no SUBACK: {error}"));
    let granted = match qos {
        QoS::AtMostOnce => ReasonCode::Success,
        QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
        QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
    };
    assert_eq!(code, granted, "{name} subscribing to {filter}");
    subscriber
}

/// The payload of message `seq` of publisher `name`.
fn payload(name: &str, seq: u64) -> String {
    format!("{name}|{seq}")
}

/// The publisher and sequence number of a payload made by [`payload`].
fn parse_payload(payload: &str) -> Option<(&str, u64)> {
    let (name, seq) = payload.split_once('|')?;
    Some((name, seq.parse().ok()?))
}

/// Publishes as `plan` says, each message after the last was acknowledged and [`PACE`], until
/// `stop` (after an acknowledged message, or [`RECOVERY`] after `stop` at the latest), counting
/// successes in `acks`.
async fn publish_run(
    publisher: Arc<Tracked>,
    plan: Plan,
    acks: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> Published {
    let mut published = Published::default();
    let mut seq = 0;
    let mut stop_seen: Option<Instant> = None;
    loop {
        if stop.load(Ordering::Relaxed) {
            let seen = *stop_seen.get_or_insert_with(Instant::now);
            if seen.elapsed() > RECOVERY {
                published.unfinished = Some(seq);
                return published;
            }
        }
        let topic = &plan.topics[seq as usize % plan.topics.len()];
        let sent = Instant::now();
        let outcome = tokio::time::timeout(
            ACK_WITHIN,
            publisher
                .client
                .publish(topic, payload(&publisher.name, seq), plan.qos, plan.retain),
        )
        .await;
        match outcome {
            Ok(Ok(ack))
                if matches!(
                    ack.reason_code,
                    ReasonCode::Success | ReasonCode::NoMatchingSubscribers
                ) =>
            {
                published.acked.push((seq, sent, Instant::now()));
                acks.fetch_add(1, Ordering::Relaxed);
                seq += 1;
                if stop.load(Ordering::Relaxed) {
                    return published;
                }
            }
            other => {
                let how = match other {
                    Ok(Ok(ack)) => format!("{:?}", ack.reason_code),
                    Ok(Err(error)) => error.to_string(),
                    Err(_) => format!("no acknowledgement within {ACK_WITHIN:?}"),
                };
                published.refused.push((seq, sent, how));
                if plan.new_number_per_try {
                    seq += 1;
                }
            }
        }
        tokio::time::sleep(PACE).await;
    }
}

/// Waits until `acks` has grown by [`PHASE_ACKS`] since `from` and [`PHASE_MIN`] has passed
/// (bounded by [`RECOVERY`]); `Err` saying how far it got otherwise.
async fn phase(acks: &AtomicUsize, from: usize, what: &str) -> Result<(), String> {
    let started = Instant::now();
    let deadline = started + RECOVERY;
    while acks.load(Ordering::Relaxed) < from + PHASE_ACKS || started.elapsed() < PHASE_MIN {
        if Instant::now() >= deadline {
            return Err(format!(
                "{what}: {} of {PHASE_ACKS} QoS 1 publishes acknowledged within {RECOVERY:?}",
                acks.load(Ordering::Relaxed) - from
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Sequence numbers as ranges: `3-7, 12`.
fn ranges(numbers: &BTreeSet<u64>) -> String {
    let mut out = String::new();
    let mut numbers = numbers.iter().copied().peekable();
    while let Some(start) = numbers.next() {
        let mut end = start;
        while numbers.peek() == Some(&(end + 1)) {
            end = numbers.next().unwrap_or(end);
        }
        if !out.is_empty() {
            out.push_str(", ");
        }
        if start == end {
            let _ = write!(out, "{start}");
        } else {
            let _ = write!(out, "{start}-{end}");
        }
    }
    out
}

/// A CONNECT with a QoS 2 will on `will/<id>`, payload `<id> gone`; a persistent session (600
/// s) if `persistent`.
fn with_will(id: &str, persistent: bool) -> Connect {
    let mut connect = if persistent {
        persistent_connect(ProtocolVersion::V5, id, 600)
    } else {
        connect_packet(ProtocolVersion::V5, id)
    };
    let mut will = Will::new(
        TopicName::new(format!("will/{id}")).expect("a valid topic"),
        Bytes::from(format!("{id} gone")),
    );
    will.qos = QoS::ExactlyOnce;
    connect.will = Some(will);
    connect
}

/// One point of the issue and what went wrong with it.
struct Point {
    name: &'static str,
    failures: Vec<String>,
}

impl Point {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            failures: Vec::new(),
        }
    }

    fn fail(&mut self, failure: String) {
        self.failures.push(failure);
    }
}

/// The moments of the run that the checks refer to.
struct Moments {
    node_killed: Instant,
    majority_killed: Instant,
    majority_back: Instant,
}

/// In the default run since it held its last 48 runs in a row (CLUSTER.md has its results,
/// what failed before and why; a connect storm that left two connections once is not explained).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_proof_three_nodes_through_a_node_kill_a_stream_leader_kill_and_a_majority_loss() {
    let clock = Clock(Instant::now());
    // The nodes' logs are stamped in UTC: the run's 0 s, to read them against its messages.
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    eprintln!("0.0 s is {:.3} s after the Unix epoch", unix.as_secs_f64());
    let mut servers = NatsServer::cluster(3);
    let data = TempDir::new("cluster-proof");
    let log_dir = std::env::var_os("RALLYMQ_PROOF_LOGS")
        .map(PathBuf::from)
        .unwrap_or_else(|| data.path("logs"));
    std::fs::create_dir_all(&log_dir).expect("the log directory");
    let ports = [free_port(), free_port(), free_port()];
    let node_options: Vec<ChildOptions> = (0..3)
        .map(|i| {
            // Each node knows all three servers, its own first.
            let order = [&servers[i], &servers[(i + 1) % 3], &servers[(i + 2) % 3]];
            ChildOptions {
                data_dir: Some(data.path(NODES[i])),
                port: ports[i],
                log: Some(log_dir.join(format!("{}.log", NODES[i]))),
                ..ChildOptions::new(&order, NODES[i])
            }
        })
        .collect();
    // The first node makes the stream; the others start once it is there.
    let mut nodes = vec![ChildNode::spawn(&node_options[0])];
    nodes.extend(std::thread::scope(|scope| {
        let starting: Vec<_> = node_options[1..]
            .iter()
            .map(|options| scope.spawn(|| ChildNode::spawn(options)))
            .collect();
        starting
            .into_iter()
            .map(|node| node.join().expect("a node starts"))
            .collect::<Vec<_>>()
    }));
    let addrs: [SocketAddr; 3] = [nodes[0].addr, nodes[1].addr, nodes[2].addr];
    let replicas = servers[0]
        .stream_detail(STREAM)
        .and_then(|detail| detail["config"]["num_replicas"].as_u64());
    assert_eq!(replicas, Some(3), "the stream has a replica on each server");
    clock.say("3 NATS servers, 3 nodes up");

    // Persistent QoS 1 subscribers, two per node, MQTT 5 and 3.1.1.
    let mut q1_subscribers = Vec::new();
    for s in 0..6 {
        let name = format!("q1-sub-{s}");
        let version = version(s % 2 == 0);
        q1_subscribers
            .push(subscribed(&name, &addrs, s % 3, version, "q1/#", QoS::AtLeastOnce).await);
    }
    // Five QoS 2 pairs: the subscriber on the node after the publisher's.
    let mut q2_subscribers = Vec::new();
    for k in 0..5 {
        let (name, filter) = (format!("q2-sub-{k}"), format!("q2/{k}"));
        let version = version(k % 2 == 0);
        q2_subscribers
            .push(subscribed(&name, &addrs, k + 1, version, &filter, QoS::ExactlyOnce).await);
    }
    // Will watchers on the two nodes that stay, at QoS 2: a will published twice arrives twice.
    let mut will_watchers = Vec::new();
    for node in 1..3 {
        let name = format!("will-watcher-{node}");
        let version = ProtocolVersion::V5;
        will_watchers
            .push(subscribed(&name, &addrs, node, version, "will/#", QoS::ExactlyOnce).await);
    }
    // Clients with wills on the node to be killed; they do not come back.
    let mut will_clients = Vec::new();
    for w in 0..WILLS {
        let (client, _) =
            TestClient::tcp(addrs[KILLED], with_will(&format!("w{w}"), w == WILLS - 1)).await;
        will_clients.push(client);
    }
    // And one on each node that stays up, connected to the end (no keep alive to miss): their
    // wills must not be published, whatever the others think of their node meanwhile.
    for node in 1..3 {
        let mut connect = with_will(&format!("live-{node}"), false);
        connect.keep_alive = 0;
        let (client, _) = TestClient::tcp(addrs[(KILLED + node) % 3], connect).await;
        will_clients.push(client);
    }

    // Publishers: QoS 1 (one per node, MQTT 5 and 3.1.1), QoS 2 (one per pair), retained.
    let acks = Arc::new(AtomicUsize::new(0));
    let other_acks = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut publishers: Vec<(Arc<Tracked>, Plan, tokio::task::JoinHandle<Published>)> = Vec::new();
    let mut start_publisher =
        async |name: String, node: usize, version: ProtocolVersion, plan: Plan, counted: bool| {
            let publisher = Arc::new(Tracked::connect(&name, &addrs, node, version).await);
            let run = tokio::spawn(publish_run(
                publisher.clone(),
                plan.clone(),
                if counted {
                    acks.clone()
                } else {
                    other_acks.clone()
                },
                stop.clone(),
            ));
            publishers.push((publisher, plan, run));
        };
    for p in 0..3 {
        let plan = Plan::on(format!("q1/{p}"), QoS::AtLeastOnce);
        start_publisher(format!("q1-pub-{p}"), p, version(p != 1), plan, true).await;
    }
    for k in 0..5 {
        let plan = Plan::on(format!("q2/{k}"), QoS::ExactlyOnce);
        start_publisher(format!("q2-pub-{k}"), k, version(k % 2 == 1), plan, false).await;
    }
    let retained_plan = Plan {
        topics: (0..RETAINED_TOPICS).map(|t| format!("ret/{t}")).collect(),
        qos: QoS::AtLeastOnce,
        retain: true,
        new_number_per_try: false,
    };
    start_publisher(
        "retainer".to_owned(),
        KILLED,
        ProtocolVersion::V5,
        retained_plan,
        false,
    )
    .await;
    clock.say(&format!(
        "{} subscribers, {} publishers, {WILLS} will clients connected",
        q1_subscribers.len() + q2_subscribers.len() + will_watchers.len(),
        publishers.len()
    ));

    let mut progress = Point::new("the cluster keeps acknowledging in every phase");
    let mut acked_phase = async |what: &str| {
        let from = acks.load(Ordering::Relaxed);
        if let Err(failure) = phase(&acks, from, what).await {
            progress.fail(failure);
        }
        clock.say(&format!(
            "{what}: {} QoS 1 acknowledgements",
            acks.load(Ordering::Relaxed)
        ));
    };

    acked_phase("before anything is killed").await;
    // Taken before the kill: the clients' ends that follow it count as after.
    let node_killed = Instant::now();
    nodes[KILLED].kill();
    clock.say(&format!("{} SIGKILLed", NODES[KILLED]));
    acked_phase("with node-a killed").await;

    let leader = tokio::task::block_in_place(|| {
        wait_for_stream_leader(&servers, STREAM, Duration::from_secs(10))
    });
    servers[leader].kill();
    clock.say(&format!(
        "NATS server {leader} ({}), the stream's leader, SIGKILLed",
        servers[leader].name()
    ));
    acked_phase("with node-a and the stream leader's server killed").await;

    tokio::task::block_in_place(|| {
        servers[leader].restart();
        nodes[KILLED] = ChildNode::spawn(&node_options[KILLED]);
    });
    clock.say(&format!(
        "NATS server {leader} and {} restarted",
        NODES[KILLED]
    ));
    acked_phase("after the restarts").await;

    // 100 simultaneous CONNECTs of one client id to node A (back) and node B.
    let mut takeover =
        Point::new("100 simultaneous connects of one client id leave one connection");
    let storm_id = format!("storm-{}", rallymq_test_support::run_id());
    let left = tokio::task::block_in_place(|| {
        storm(
            &[addrs[KILLED], addrs[(KILLED + 1) % 3]],
            STORM,
            ProtocolVersion::V5,
            &storm_id,
        )
    });
    if left.len() != 1 {
        takeover.fail(format!(
            "{} connections of client id {storm_id} left open on node-a and node-b, not 1",
            left.len()
        ));
    }
    drop(left);
    clock.say("connect storm done");

    // Two of three NATS servers down: no QoS 1/2 acknowledgement, then recovery.
    let mut quorum = Point::new(
        "with a majority of NATS servers down, QoS 1/2 is not acknowledged, and is again after",
    );
    let probe_node = (KILLED + 2) % 3;
    let (mut probe, _) = TestClient::tcp(
        addrs[probe_node],
        connect_packet(ProtocolVersion::V5, "quorum-probe"),
    )
    .await;
    let keep = (leader + 1) % 3;
    let killed_servers = [(keep + 1) % 3, (keep + 2) % 3];
    for &server in &killed_servers {
        servers[server].kill();
    }
    let majority_killed = Instant::now();
    clock.say(&format!("NATS servers {killed_servers:?} SIGKILLed"));
    let mut probe_closed = false;
    for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
        if probe_closed {
            break;
        }
        let outcome = probe
            .publish_outcome_within(message("probe/t", "no quorum", qos), ACK_WITHIN)
            .await;
        match outcome {
            Ok(code) if code.is_error() => {}
            // A QoS 2 write the stream may have stored is not refused: the connection closes.
            Err(Some(_)) => probe_closed = true,
            other => quorum.fail(format!(
                "a {qos:?} publish on {} without a majority of NATS servers: {other:?}, not a \
                 refusal (0x80) or a disconnect",
                NODES[probe_node]
            )),
        }
    }
    let held = MAJORITY_DOWN.saturating_sub(majority_killed.elapsed());
    tokio::time::sleep(held).await;
    // Taken before the restarts: once a server listens again, acknowledgements may come.
    let majority_back = Instant::now();
    tokio::task::block_in_place(|| {
        for &server in &killed_servers {
            servers[server].restart();
        }
    });
    clock.say(&format!("NATS servers {killed_servers:?} restarted"));
    if probe_closed {
        probe = reconnect_probe(addrs[probe_node]).await;
    }
    if let Err(failure) =
        publish_until_acknowledged(&mut probe, "probe/t", "quorum back", RECOVERY, ACK_WITHIN).await
    {
        quorum.fail(format!(
            "once the servers were back, on {}: {failure}",
            NODES[probe_node]
        ));
    }
    acked_phase("after the majority's return").await;

    stop.store(true, Ordering::Relaxed);
    let mut results = Vec::new();
    for (publisher, plan, run) in publishers {
        let published = run.await.expect("a publisher ran to its end");
        results.push((publisher, plan, published));
    }
    let stopped = Instant::now();
    clock.say(&format!(
        "publishers stopped: {}",
        results
            .iter()
            .map(|(publisher, _, published)| format!(
                "{} {} acked, {} refused",
                publisher.name,
                published.acked.len(),
                published.refused.len()
            ))
            .collect::<Vec<_>>()
            .join("; ")
    ));

    let subscribers: Vec<&Tracked> = q1_subscribers.iter().chain(&q2_subscribers).collect();
    drain(&subscribers, &results, stopped).await;
    clock.say("drained");
    diagnose(&subscribers, &results, clock);
    // The wills are due within DETECTION of the kill (the run is longer than that, but a
    // shortened one would not be).
    tokio::time::sleep_until(tokio::time::Instant::from_std(node_killed + DETECTION)).await;
    let moments = Moments {
        node_killed,
        majority_killed,
        majority_back,
    };
    for (publisher, _, published) in &results {
        if let Some(seq) = published.unfinished {
            progress.fail(format!(
                "{}'s seq {seq} was still not acknowledged {RECOVERY:?} after the publishers \
                 were told to stop",
                publisher.name
            ));
        }
    }
    let mut points = vec![progress, takeover, quorum];
    points.push(check_qos1(&q1_subscribers, &results, &moments, clock));
    points.push(check_qos2(&q2_subscribers, &results, &moments, clock));
    points.push(check_sessions(
        q1_subscribers
            .iter()
            .chain(&q2_subscribers)
            .chain(&will_watchers)
            .chain(results.iter().map(|(publisher, _, _)| publisher.as_ref())),
        &results,
        clock,
    ));
    points.push(check_retained(&addrs, &results).await);
    points.push(check_wills(&will_watchers, &mut will_clients, clock).await);
    points.push(check_quorum_window(&results, &moments, clock));

    let mut report = String::new();
    for point in &points {
        let verdict = if point.failures.is_empty() {
            "holds"
        } else {
            "FAILS"
        };
        let _ = writeln!(report, "[{verdict}] {}", point.name);
        for failure in &point.failures {
            let _ = writeln!(report, "    - {failure}");
        }
    }
    eprintln!("{report}");
    drop(will_clients);
    drop(nodes);
    assert!(
        points.iter().all(|point| point.failures.is_empty()),
        "the issue's proof does not hold:\n{report}"
    );
}

/// Whether `run`'s publisher publishes on topics `client`'s filter matches: `q1-sub-N` holds
/// `q1/#` (every QoS 1 publisher's topic), `q2-sub-K` holds `q2/K` (`q2-pub-K`'s).
fn feeds((publisher, plan, _): &Run, client: &Tracked) -> bool {
    if client.name.starts_with("q1-sub-") {
        plan.qos == QoS::AtLeastOnce && !plan.retain
    } else if let Some(k) = client.name.strip_prefix("q2-sub-") {
        publisher.name == format!("q2-pub-{k}")
    } else {
        false
    }
}

/// Waits until every subscriber has every acknowledged message meant for it and then
/// [`QUIET`] has passed with nothing new (a duplicate would have come), or [`DRAIN`] has passed
/// since `stopped`.
async fn drain(subscribers: &[&Tracked], results: &[Run], stopped: Instant) {
    // Every acknowledged message by its payload, not a count of distinct payloads: a refused
    // try that reached the subscriber all the same counted for an acknowledged one still on
    // its way, and the drain ended before it came (the proof then missed it).
    let has_all = |subscriber: &Tracked| -> bool {
        let log = subscriber.log();
        let got: HashSet<(&str, u64)> = log
            .messages
            .iter()
            .filter_map(|(_, _, payload)| parse_payload(payload))
            .collect();
        results
            .iter()
            .filter(|run| feeds(run, subscriber))
            .all(|(publisher, _, published)| {
                published
                    .acked
                    .iter()
                    .all(|(seq, _, _)| got.contains(&(publisher.name.as_str(), *seq)))
            })
    };
    let deadline = stopped + DRAIN;
    loop {
        let complete = subscribers.iter().all(|subscriber| has_all(subscriber));
        let last = subscribers
            .iter()
            .filter_map(|subscriber| subscriber.log().messages.last().map(|m| m.0))
            .max()
            .unwrap_or(stopped);
        if (complete && last.elapsed() >= QUIET) || Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Prints what explains some failures without being a point of the issue: why clients' connections
/// ended, subscribers that got a message long after its acknowledgement, and tries a QoS 2 publisher was told were refused
/// (or never answered) that a subscriber got all the same.
fn diagnose(subscribers: &[&Tracked], results: &[Run], clock: Clock) {
    // Why connections ended (or attempts failed), and whose.
    let mut ends: BTreeMap<String, BTreeMap<&str, usize>> = BTreeMap::new();
    let publishers = results.iter().map(|(publisher, _, _)| publisher.as_ref());
    for client in subscribers.iter().copied().chain(publishers) {
        for (_, why) in client.log().ends {
            *ends
                .entry(why)
                .or_default()
                .entry(&client.name)
                .or_default() += 1;
        }
    }
    for (why, clients) in &ends {
        eprintln!(
            "connections ended ({}): {why}: {clients:?}",
            clients.values().sum::<usize>()
        );
    }
    for subscriber in subscribers {
        if let Some((delay, publisher, seq, at)) = slowest_delivery(subscriber, results)
            && delay > Duration::from_secs(5)
        {
            eprintln!(
                "{} got {publisher}'s seq {seq} {delay:.1?} after its acknowledgement, at {}",
                subscriber.name,
                clock.at(at)
            );
        }
    }
    for (publisher, plan, published) in results {
        // How its tries were refused: a QoS 2 try that timed out here is still in the
        // client's flight, sent again with DUP after a reconnection, not refused by the node.
        let mut hows: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, _, how) in &published.refused {
            *hows.entry(how.as_str()).or_default() += 1;
        }
        if !hows.is_empty() {
            eprintln!("{} refused: {hows:?}", publisher.name);
        }
        let refused: BTreeSet<u64> = published.refused.iter().map(|(seq, ..)| *seq).collect();
        let acked: BTreeSet<u64> = published.acked.iter().map(|(seq, ..)| *seq).collect();
        let delivered: BTreeSet<u64> = subscribers
            .iter()
            .flat_map(|subscriber| subscriber.log().messages)
            .filter_map(|(_, _, payload)| {
                let (name, seq) = parse_payload(&payload)?;
                (name == publisher.name && refused.contains(&seq) && !acked.contains(&seq))
                    .then_some(seq)
            })
            .collect();
        if plan.new_number_per_try && !delivered.is_empty() {
            eprintln!(
                "{}: {} of its {} refused tries reached a subscriber all the same: seq {}",
                publisher.name,
                delivered.len(),
                refused.len(),
                ranges(&delivered)
            );
        }
    }
}

/// Every acknowledged QoS 1 message reaches every subscriber at least once, the first copies in
/// each publisher's order.
fn check_qos1(subscribers: &[Tracked], results: &[Run], moments: &Moments, clock: Clock) -> Point {
    let mut point = Point::new(
        "every acknowledged QoS 1 message reaches every matching subscriber at least once, in \
         order per publisher",
    );
    for subscriber in subscribers {
        let log = subscriber.log();
        for run in results.iter().filter(|run| feeds(run, subscriber)) {
            let (publisher, _, published) = run;
            let firsts = first_copies(&log.messages, &publisher.name);
            let received: BTreeSet<u64> = firsts.iter().map(|(seq, _)| *seq).collect();
            let missing: BTreeSet<u64> = published
                .acked
                .iter()
                .map(|(seq, _, _)| *seq)
                .filter(|seq| !received.contains(seq))
                .collect();
            if !missing.is_empty() {
                point.fail(describe_missing(
                    subscriber, publisher, published, &missing, moments, clock,
                ));
            }
            if let Some(failure) = out_of_order(&subscriber.name, &publisher.name, &firsts, clock) {
                point.fail(failure);
            }
        }
    }
    point
}

/// The first place where `arrivals` (sequence numbers of `publisher`'s messages as
/// `subscriber` received them) does not go up, as a failure.
fn out_of_order(
    subscriber: &str,
    publisher: &str,
    arrivals: &[(u64, Instant)],
    clock: Clock,
) -> Option<String> {
    let pair = arrivals.windows(2).find(|pair| pair[0].0 >= pair[1].0)?;
    Some(format!(
        "{subscriber}: {publisher}'s seq {} (received at {}) came before seq {} (received at {})",
        pair[0].0,
        clock.at(pair[0].1),
        pair[1].0,
        clock.at(pair[1].1)
    ))
}

/// What a subscriber missed of a publisher's acknowledged messages: which, when they were
/// sent and acknowledged, where the publisher and the subscriber were then, and where the
/// subscriber was when the node was killed.
fn describe_missing(
    subscriber: &Tracked,
    publisher: &Tracked,
    published: &Published,
    missing: &BTreeSet<u64>,
    moments: &Moments,
    clock: Clock,
) -> String {
    const DETAILED: usize = 8;
    let lost: Vec<&(u64, Instant, Instant)> = published
        .acked
        .iter()
        .filter(|(seq, _, _)| missing.contains(seq))
        .collect();
    let details = if lost.len() <= DETAILED {
        lost.iter()
            .map(|(seq, sent, acked)| {
                format!(
                    "seq {seq} sent {} on {}, acknowledged {} (subscriber then on {})",
                    clock.at(*sent),
                    NODES[publisher.node_at(*sent)],
                    clock.at(*acked),
                    NODES[subscriber.node_at(*acked)]
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    } else {
        let first = lost.iter().map(|(_, _, acked)| *acked).min();
        let last = lost.iter().map(|(_, _, acked)| *acked).max();
        format!(
            "seq {}, acknowledged from {} to {}",
            ranges(missing),
            first.map(|at| clock.at(at)).unwrap_or_default(),
            last.map(|at| clock.at(at)).unwrap_or_default()
        )
    };
    format!(
        "{} (on {} when it was killed at {}; path {}) is missing {} of {}'s {} acknowledged \
         messages (publisher's path {}): {details}",
        subscriber.name,
        NODES[subscriber.node_at(moments.node_killed)],
        clock.at(moments.node_killed),
        subscriber.path(),
        missing.len(),
        publisher.name,
        published.acked.len(),
        publisher.path(),
    )
}

/// The longest a subscriber waited for an acknowledged message: from the acknowledgement to the
/// arrival of the first copy, which message, and when it came.
fn slowest_delivery(
    subscriber: &Tracked,
    results: &[Run],
) -> Option<(Duration, String, u64, Instant)> {
    let acked: BTreeMap<(&str, u64), Instant> = results
        .iter()
        .flat_map(|(publisher, _, published)| {
            published
                .acked
                .iter()
                .map(|(seq, _, at)| ((publisher.name.as_str(), *seq), *at))
        })
        .collect();
    let mut seen = BTreeSet::new();
    subscriber
        .log()
        .messages
        .iter()
        .filter_map(|(at, _, payload)| {
            let (name, seq) = parse_payload(payload)?;
            let acked_at = acked.get(&(name, seq))?;
            seen.insert((name.to_owned(), seq)).then(|| {
                (
                    at.saturating_duration_since(*acked_at),
                    name.to_owned(),
                    seq,
                    *at,
                )
            })
        })
        .max_by_key(|(delay, ..)| *delay)
}

/// The first copy of each of `publisher`'s messages in `messages`: sequence number and arrival,
/// in the order they came.
fn first_copies(messages: &[(Instant, String, String)], publisher: &str) -> Vec<(u64, Instant)> {
    let mut seen = BTreeSet::new();
    messages
        .iter()
        .filter_map(|(at, _, payload)| {
            let (name, seq) = parse_payload(payload)?;
            (name == publisher && seen.insert(seq)).then_some((seq, *at))
        })
        .collect()
}

/// The quorum probe again, once the node accepts a CONNECT (its claim needs the sessions
/// bucket, which the NATS servers' return brings back).
async fn reconnect_probe(addr: SocketAddr) -> TestClient<TcpStream> {
    let deadline = Instant::now() + RECOVERY;
    loop {
        if let Ok(stream) = TcpStream::connect(addr).await {
            let config = ClientConfig::new(connect_packet(ProtocolVersion::V5, "quorum-probe"));
            if let Some((probe, ClientEvent::Connected { .. })) =
                TestClient::over_with_within(stream, config, ACK_WITHIN).await
            {
                return probe;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the quorum probe could not connect again within {RECOVERY:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every acknowledged QoS 2 message reaches its subscriber exactly once, in order; a refused
/// one at most once.
fn check_qos2(subscribers: &[Tracked], results: &[Run], moments: &Moments, clock: Clock) -> Point {
    let mut point = Point::new(
        "every acknowledged QoS 2 message reaches its subscriber exactly once, in order",
    );
    for subscriber in subscribers {
        let k = &subscriber.name["q2-sub-".len()..];
        let publisher_name = format!("q2-pub-{k}");
        let Some((publisher, _, published)) = results
            .iter()
            .find(|(publisher, _, _)| publisher.name == publisher_name)
        else {
            point.fail(format!("no publisher {publisher_name}"));
            continue;
        };
        let log = subscriber.log();
        let mut copies: BTreeMap<u64, usize> = BTreeMap::new();
        let mut order: Vec<(u64, Instant)> = Vec::new();
        for (at, _, payload) in &log.messages {
            if let Some((name, seq)) = parse_payload(payload)
                && name == publisher_name
            {
                *copies.entry(seq).or_default() += 1;
                order.push((seq, *at));
            }
        }
        let acked: BTreeSet<u64> = published.acked.iter().map(|(seq, _, _)| *seq).collect();
        let missing: BTreeSet<u64> = acked
            .iter()
            .copied()
            .filter(|seq| !copies.contains_key(seq))
            .collect();
        if !missing.is_empty() {
            point.fail(describe_missing(
                subscriber, publisher, published, &missing, moments, clock,
            ));
        }
        let twice: BTreeSet<u64> = copies
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(seq, _)| *seq)
            .collect();
        if !twice.is_empty() {
            let arrivals: Vec<String> = twice
                .iter()
                .map(|seq| {
                    let at: Vec<String> = order
                        .iter()
                        .filter(|(s, _)| s == seq)
                        .map(|(_, at)| clock.at(*at))
                        .collect();
                    let acked = published
                        .acked
                        .iter()
                        .find(|(s, _, _)| s == seq)
                        .map(|(_, sent, acked)| {
                            format!(
                                "sent {} on {}, acknowledged {}",
                                clock.at(*sent),
                                NODES[publisher.node_at(*sent)],
                                clock.at(*acked)
                            )
                        })
                        .unwrap_or_else(|| "refused".to_owned());
                    format!("seq {seq} ({acked}) received at {}", at.join(" and "))
                })
                .collect();
            point.fail(format!(
                "{} got more than one copy of {publisher_name}'s {}; subscriber's path {}, \
                 publisher's path {}",
                subscriber.name,
                arrivals.join("; "),
                subscriber.path(),
                publisher.path(),
            ));
        }
        let unknown: BTreeSet<u64> = copies
            .keys()
            .copied()
            .filter(|seq| {
                !acked.contains(seq) && !published.refused.iter().any(|(s, _, _)| s == seq)
            })
            .collect();
        if !unknown.is_empty() {
            point.fail(format!(
                "{} got {publisher_name}'s seq {}, never published",
                subscriber.name,
                ranges(&unknown)
            ));
        }
        // Every copy, not only the first: a second copy is out of order too.
        if let Some(failure) = out_of_order(&subscriber.name, &publisher_name, &order, clock) {
            point.fail(failure);
        }
    }
    point
}

/// Every reconnection of a persistent client found its session (Session Present 1), and each
/// subscriber got messages from every publisher after its last reconnection (its
/// subscriptions came along: the client subscribes again only when the session is not
/// present).
fn check_sessions<'a>(
    clients: impl Iterator<Item = &'a Tracked>,
    results: &[Run],
    clock: Clock,
) -> Point {
    let mut point = Point::new("Session Present = 1 on every reconnect, with subscriptions intact");
    let mut reconnects = 0;
    for client in clients {
        let log = client.log();
        reconnects += log.reconnects.len();
        for (at, present) in &log.reconnects {
            if !present {
                point.fail(format!(
                    "{} reconnected at {} with Session Present 0 (path {}; ends: {:?})",
                    client.name,
                    clock.at(*at),
                    client.path(),
                    log.ends
                        .iter()
                        .map(|(at, why)| format!("{} {why}", clock.at(*at)))
                        .collect::<Vec<_>>()
                ));
            }
        }
        let Some((last, _)) = log.reconnects.last() else {
            continue;
        };
        // Publishers that had a message acknowledged after it was sent past the reconnection:
        // one the subscription must have brought (a reconnection at the run's end proves none).
        let wanted = results
            .iter()
            .filter(|run| feeds(run, client))
            .filter(|(_, _, published)| published.acked.iter().any(|(_, sent, _)| sent > last))
            .map(|(publisher, _, _)| publisher.name.as_str());
        for publisher in wanted {
            let after = log
                .messages
                .iter()
                .filter(|(at, _, payload)| {
                    at > last && parse_payload(payload).is_some_and(|(name, _)| name == publisher)
                })
                .count();
            if after == 0 {
                point.fail(format!(
                    "{} got nothing from {publisher} after its last reconnection at {}",
                    client.name,
                    clock.at(*last)
                ));
            }
        }
    }
    eprintln!("{reconnects} reconnections of persistent clients");
    if reconnects == 0 {
        point.fail("no client reconnected: the run proved nothing about sessions".to_owned());
    }
    point
}

/// A fresh subscriber on each node gets the last acknowledged value of every retained topic.
async fn check_retained(addrs: &[SocketAddr; 3], results: &[Run]) -> Point {
    let mut point = Point::new("a fresh subscriber on any node gets the last retained values");
    let Some((publisher, plan, published)) = results.iter().find(|(_, plan, _)| plan.retain) else {
        point.fail("no retained publisher".to_owned());
        return point;
    };
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    for (seq, _, _) in &published.acked {
        let topic = plan.topics[*seq as usize % plan.topics.len()].clone();
        last.insert(topic, payload(&publisher.name, *seq));
    }
    for (node, addr) in addrs.iter().enumerate() {
        let (mut fresh, _) = TestClient::tcp(
            *addr,
            connect_packet(ProtocolVersion::V5, &format!("fresh-{node}")),
        )
        .await;
        fresh
            .subscribe(vec![subscription("ret/#", QoS::AtLeastOnce)])
            .await;
        let mut got: BTreeMap<String, String> = BTreeMap::new();
        while got.len() < last.len() {
            let Some(publish) = fresh.recv().await else {
                break;
            };
            got.insert(topic_str(&publish), support::payload_str(&publish));
        }
        if got != last {
            point.fail(format!(
                "a fresh subscriber on {} got {got:?}, not the last acknowledged {last:?}",
                NODES[node]
            ));
        }
    }
    point
}

/// Each will of the killed node's clients reaches each watcher exactly once; the wills of the
/// clients of the nodes that stayed up, none.
async fn check_wills(
    watchers: &[Tracked],
    will_clients: &mut [TestClient<TcpStream>],
    clock: Clock,
) -> Point {
    let mut point = Point::new(
        "the wills of the killed node's clients are published once (and none of a live client)",
    );
    let expected: BTreeMap<String, usize> = (0..WILLS).map(|w| (format!("will/w{w}"), 1)).collect();
    for watcher in watchers {
        let log = watcher.log();
        let mut copies: BTreeMap<String, usize> = BTreeMap::new();
        for (_, topic, _) in &log.messages {
            *copies.entry(topic.clone()).or_default() += 1;
        }
        if copies != expected {
            let arrivals: Vec<String> = log
                .messages
                .iter()
                .map(|(at, topic, _)| format!("{topic} at {}", clock.at(*at)))
                .collect();
            point.fail(format!(
                "{} got {copies:?}, not each will of node-a's clients once: {expected:?} \
                 (will/live-N are of clients still connected to node-b and node-c); arrivals: \
                 {}",
                watcher.name,
                arrivals.join(", ")
            ));
        }
    }
    // A live client's will is due only if its node closed its connection.
    for (client, node) in will_clients.iter_mut().skip(WILLS).zip(1..) {
        let closed = client
            .wait_for_within(Duration::from_millis(200), |event| {
                matches!(event, ClientEvent::Closed(_))
            })
            .await;
        if let Some(closed) = closed {
            point.fail(format!(
                "the client live-{node} of {} was closed: {closed:?}",
                NODES[(KILLED + node) % 3]
            ));
        }
    }
    point
}

/// No publish sent after the majority of NATS servers went down was acknowledged with success
/// before they came back.
fn check_quorum_window(results: &[Run], moments: &Moments, clock: Clock) -> Point {
    let mut point =
        Point::new("no QoS 1/2 publish is acknowledged while a majority of NATS servers is down");
    let (down, back) = (moments.majority_killed, moments.majority_back);
    let mut refused = 0;
    for (publisher, _, published) in results {
        refused += published
            .refused
            .iter()
            .filter(|(_, sent, _)| *sent > down && *sent < back)
            .count();
        for (seq, sent, acked) in &published.acked {
            if *sent > down && *acked < back {
                point.fail(format!(
                    "{} seq {seq}: sent at {} and acknowledged at {}, while the majority was \
                     down ({} to {})",
                    publisher.name,
                    clock.at(*sent),
                    clock.at(*acked),
                    clock.at(down),
                    clock.at(back)
                ));
            }
        }
    }
    eprintln!("{refused} publishes refused while the majority was down");
    point
}
