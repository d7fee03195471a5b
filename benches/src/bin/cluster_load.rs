//! Cross-node QoS 0 throughput and latency of a rallymq cluster (issue 17), beside a single
//! node, in the same run: the cluster's cost is the ratio.
//!
//! ```text
//! cargo build --release -p rallymq-benches --bin cluster_load
//! target/release/cluster_load [--rounds 3] [--duration 5] [--publishers 4] [--window 2000]
//! ```
//!
//! It starts one `nats-server` (Debian's package; JetStream on, store in a temporary directory)
//! and, in this process, the brokers of each setup in turn, fresh for every measurement:
//! - `single`: one broker, not clustered: the figure to compare with;
//! - `cluster-local`: two clustered nodes, publishers and subscriber on node A (what forwarding
//!   every message to NATS costs a node's own traffic);
//! - `cross-node`: publishers on node A, the subscriber on node B;
//! - `cross-shared`: as `cross-node`, the subscriber a member of the shared group
//!   `$share/load/load/in/+`, which messages reach through a NATS queue group.
//!
//! The shape is fan-in over TCP, MQTT 3.1.1, QoS 0: `--publishers` publishers on
//! `load/in/N`, one subscriber on `load/in/+`, 64-byte payloads carrying the send time.
//! Publishers write 32 PUBLISH packets per write and pause while more than `--window` messages
//! are sent and not yet received, so no setup is pushed into dropping messages and the figure
//! is the rate it sustains. Throughput is what the subscriber received per second over
//! `--duration` seconds after a 0.5 s warm-up; latency (p50, p99) is from send to receipt of
//! the messages received in that window. Brokers and load clients share this process's
//! runtime, so the absolute figures are lower than a broker's on its own; the ratios between
//! setups measured in the same round are the result.
//!
//! Bounded: fixed connections, fixed time per measurement, a deadline on setup.
//!
//! Other modes (`--mode`), each single node beside cross-node in the same run:
//! - `latency`: unloaded latency, one message at a time (QoS 0, then QoS 1: delivery and the
//!   publisher's PUBACK, which in a cluster waits for the stream), p50 and p99, and what the
//!   cluster adds, with the subscriber on the publisher's node (`cluster-local`: its QoS 1
//!   comes through the stream too) and on the other node;
//! - `qos1`: QoS 1 throughput and latency, `--publishers` publishers with 16 unacknowledged
//!   messages each and `--window` sent and not yet received in all, one QoS 1 subscriber
//!   acknowledging everything;
//! - `shared-qos1`: as `qos1`, the subscriber a shared group `$share/q1/load/q1/+` of two
//!   members: both on the single node, or one on each node (publishers on node A), so that the
//!   group's consumer on the stream spreads the messages over the nodes;
//! - `idle`: the RSS of a `rallymq broker` process (`--rallymq PATH`, the binary people run) per
//!   1,000 idle connections, single and clustered, connected only and each with a filter of
//!   its own (under one first level, or each with a first level of its own), for a first
//!   batch of 1,000 and for a second made after it (what one more connection costs, without
//!   what the first ones grow once, such as the NATS client's write buffer); the RSS
//!   100,000 filters take and what is left once they are unsubscribed; and how many messages NATS
//!   sends a node for a level it covers whole that none of its clients wants, with the CPU
//!   they cost it. `--idle-rows N` measures the first `N` rows of connections only (1:
//!   connected only), without the filters' churn and traffic.
//!
//! `--connects N` measures instead what a clustered CONNECT of a persistent session costs
//! (its claim in the sessions bucket, and a takeover from the node that had it): `N`
//! sequential connects of one MQTT 3.1.1 client (Clean Session 0, then DISCONNECT) per setup
//! and round, timed from the TCP connect to CONNACK, after 20 unmeasured ones:
//! - `single`: one broker, not clustered, the same client id each time (a local resume);
//! - `cluster-new`: a clustered node, a new client id each time (the claim creates the key);
//! - `cluster-same`: a clustered node, the same client id each time (the claim updates the
//!   key; the previous owner is this node);
//! - `cross-node`: the same client id on nodes A and B in turn (claim, takeover request to the
//!   other node, handover of the session).

use std::io;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use rallymq_benches::client::{Client, Transport, VERSION, encode, invalid};
use rallymq_broker::{Broker, BrokerConfig, BrokerHandle, ClusterConfig, ListenerKind};
use rallymq_codec::{Limits, Packet, Publish, QoS, TopicName};
use rallymq_test_support::NatsServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The `rallymq` binary's allocator, set up as the binary sets it up: the brokers measured in
/// this process allocate as the one people run does.
#[path = "../../../crates/cli/src/allocator.rs"]
mod allocator;

const PAYLOAD_LEN: usize = 64;
const BATCH: u64 = 32;
const WARMUP: Duration = Duration::from_millis(500);
const SETUP_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    Single,
    ClusterLocal,
    CrossNode,
    CrossShared,
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Self::Single => "single",
            Self::ClusterLocal => "cluster-local",
            Self::CrossNode => "cross-node",
            Self::CrossShared => "cross-shared",
        }
    }

    /// What the subscriber subscribes to.
    fn filter(self) -> &'static str {
        match self {
            Self::CrossShared => "$share/load/load/in/+",
            _ => "load/in/+",
        }
    }
}

struct Options {
    rounds: usize,
    duration: Duration,
    publishers: usize,
    window: u64,
    /// How long `--mode idle` waits before reading a process's RSS ([`SETTLE`]).
    settle: Duration,
    /// How many of [`IdleFilters::ALL`] `--mode idle` measures (`--idle-rows`), without the
    /// churn and the traffic; `None`: all of them, and then the churn and the traffic.
    idle_rows: Option<usize>,
}

struct Measured {
    rate: f64,
    p50: Duration,
    p99: Duration,
}

fn main() -> ExitCode {
    let mut options = Options {
        rounds: 3,
        duration: Duration::from_secs(5),
        publishers: 4,
        window: 2000,
        settle: SETTLE,
        idle_rows: None,
    };
    let mut connects = None;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut mode = String::from("qos0");
    let mut rallymq: Option<std::path::PathBuf> = None;
    for pair in args.chunks(2) {
        let (Some(flag), Some(value)) = (pair.first(), pair.get(1)) else {
            eprintln!(
                "usage: cluster_load [--rounds N] [--duration SECS] [--publishers N] [--window N] \
                 [--mode qos0|latency|qos1|shared-qos1|idle] [--rallymq PATH] [--settle SECS] \
                 [--connects N] [--idle-rows N]"
            );
            return ExitCode::from(2);
        };
        match flag.as_str() {
            "--mode" => {
                mode.clone_from(value);
                continue;
            }
            "--rallymq" => {
                rallymq = Some(value.into());
                continue;
            }
            _ => {}
        }
        let Ok(number) = value.parse::<u64>() else {
            eprintln!("{flag}: not a number: {value}");
            return ExitCode::from(2);
        };
        match flag.as_str() {
            "--rounds" => options.rounds = number.max(1) as usize,
            "--duration" => options.duration = Duration::from_secs(number.max(1)),
            "--publishers" => options.publishers = number.max(1) as usize,
            "--window" => options.window = number.max(BATCH),
            "--connects" => connects = Some(number.max(1) as usize),
            "--settle" => options.settle = Duration::from_secs(number),
            "--idle-rows" => {
                options.idle_rows = Some((number as usize).clamp(1, IdleFilters::ALL.len()));
            }
            _ => {
                eprintln!("unknown option {flag}");
                return ExitCode::from(2);
            }
        }
    }
    allocator::configure();
    // One worker per core, as the binary runs.
    let runtime = match allocator::runtime(None) {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot build the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let nats = NatsServer::start();
    if let Some(connects) = connects {
        return measure_connects(&runtime, &nats, connects, options.rounds);
    }
    match mode.as_str() {
        "qos0" => {}
        "latency" => return latency_mode(&runtime, &nats, options.rounds),
        "qos1" => return qos1_mode(&runtime, &nats, &options, false),
        "shared-qos1" => return qos1_mode(&runtime, &nats, &options, true),
        "idle" => return idle_mode(&runtime, &nats, rallymq.as_deref(), &options),
        other => {
            eprintln!("--mode {other}: qos0, latency, qos1, shared-qos1 or idle");
            return ExitCode::from(2);
        }
    }
    let setups = [
        Setup::Single,
        Setup::ClusterLocal,
        Setup::CrossNode,
        Setup::CrossShared,
    ];
    let Some(results) = measure_rounds(&runtime, &setups, options.rounds, "", |setup| {
        measure(setup, &nats, &options)
    }) else {
        return ExitCode::FAILURE;
    };
    println!(
        "\nmedians over {} rounds ({} publishers, window {}, {:?} each; load {}):",
        options.rounds,
        options.publishers,
        options.window,
        options.duration,
        rallymq_benches::load_average()
    );
    print_medians(&setups, &results);
    ExitCode::SUCCESS
}

/// Per setup, the medians of its rounds: rate (and its ratio to the first setup's), p50, p99.
fn print_medians(setups: &[Setup], results: &[Vec<Measured>]) {
    let single = median(results[0].iter().map(|m| m.rate).collect());
    for (setup, measured) in setups.iter().zip(results) {
        let rate = median(measured.iter().map(|m| m.rate).collect());
        let p50 = median(measured.iter().map(|m| m.p50.as_secs_f64()).collect());
        let p99 = median(measured.iter().map(|m| m.p99.as_secs_f64()).collect());
        println!(
            "{:>13}: {:>9.0} msg/s ({:.2} of single)  p50 {:>8.2?}  p99 {:>8.2?}",
            setup.name(),
            rate,
            rate / single,
            Duration::from_secs_f64(p50),
            Duration::from_secs_f64(p99)
        );
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

async fn node(nats: Option<&NatsServer>) -> io::Result<BrokerHandle> {
    let mut config = BrokerConfig::without_listeners();
    config.tcp = vec!["127.0.0.1:0".parse().map_err(io::Error::other)?];
    config.sys_interval = None;
    config.limits.max_queued_messages = 100_000;
    config.cluster = nats.map(|nats| ClusterConfig::new([nats.url()]));
    Broker::start(config).await.map_err(io::Error::other)
}

async fn measure(setup: Setup, nats: &NatsServer, options: &Options) -> io::Result<Measured> {
    let (a, b) = match setup {
        Setup::Single => (node(None).await?, None),
        _ => (node(Some(nats)).await?, Some(node(Some(nats)).await?)),
    };
    let publish_at = a
        .local_addr(ListenerKind::Tcp)
        .ok_or_else(|| io::Error::other("no TCP"))?;
    let subscribe_at = match (setup, &b) {
        (Setup::CrossNode | Setup::CrossShared, Some(b)) => b.local_addr(ListenerKind::Tcp),
        _ => a.local_addr(ListenerKind::Tcp),
    }
    .ok_or_else(|| io::Error::other("no TCP"))?;
    let epoch = Instant::now();
    let sent = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));

    let mut subscriber = tokio::time::timeout(SETUP_DEADLINE, async {
        let mut client = Client::connect(subscribe_at, Transport::Tcp, "load-sub", true).await?;
        client.subscribe(setup.filter(), QoS::AtMostOnce).await?;
        Ok::<_, io::Error>(client)
    })
    .await
    .map_err(io::Error::other)??;
    let mut publishers = Vec::new();
    for i in 0..options.publishers {
        publishers.push(
            Client::connect(publish_at, Transport::Tcp, &format!("load-pub-{i}"), true).await?,
        );
    }
    // The cross-node subscription is in NATS shortly after SUBACK: probe until a message gets
    // through, then let the stragglers arrive and forget them.
    let probe_topic = TopicName::new("load/in/probe").map_err(io::Error::other)?;
    let limits = Limits::default();
    let deadline = Instant::now() + SETUP_DEADLINE;
    let mut through = false;
    while !through {
        if Instant::now() > deadline {
            return Err(io::Error::other("no probe reached the subscriber"));
        }
        let mut out = BytesMut::new();
        encode(
            &Packet::Publish(Publish::new(probe_topic.clone(), "probe")),
            &mut out,
        );
        publishers[0].io.write_all(&out).await?;
        if let Ok(read) = tokio::time::timeout(
            Duration::from_millis(20),
            subscriber.io.read_buf(&mut subscriber.buf),
        )
        .await
        {
            read?;
            through = matches!(
                rallymq_codec::decode(&mut subscriber.buf, VERSION, &limits),
                Ok(Some(Packet::Publish(_)))
            );
        }
    }
    while let Ok(read) = tokio::time::timeout(
        Duration::from_millis(200),
        subscriber.io.read_buf(&mut subscriber.buf),
    )
    .await
    {
        read?;
    }
    subscriber.buf.clear();
    let reader = {
        let received = received.clone();
        let stop = stop.clone();
        let measuring = measuring.clone();
        tokio::spawn(read_stamped(
            subscriber, epoch, stop, received, measuring, false,
        ))
    };
    let mut writers = Vec::new();
    for (i, mut publisher) in publishers.into_iter().enumerate() {
        let sent = sent.clone();
        let received = received.clone();
        let stop = stop.clone();
        let window = options.window;
        let topic = TopicName::new(format!("load/in/{i}")).map_err(io::Error::other)?;
        writers.push(tokio::spawn(async move {
            let mut out = BytesMut::new();
            while !stop.load(Ordering::Relaxed) {
                if sent.load(Ordering::Relaxed) >= received.load(Ordering::Relaxed) + window {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                    continue;
                }
                out.clear();
                let at = epoch.elapsed().as_nanos() as u64;
                for _ in 0..BATCH {
                    let mut payload = BytesMut::with_capacity(PAYLOAD_LEN);
                    payload.put_u64(at);
                    payload.put_bytes(b'x', PAYLOAD_LEN - 8);
                    encode(
                        &Packet::Publish(Publish::new(topic.clone(), payload.freeze())),
                        &mut out,
                    );
                }
                if publisher.io.write_all(&out).await.is_err() {
                    return;
                }
                sent.fetch_add(BATCH, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(WARMUP).await;
    let start = received.load(Ordering::Relaxed);
    measuring.store(true, Ordering::Relaxed);
    let began = Instant::now();
    tokio::time::sleep(options.duration).await;
    let count = received.load(Ordering::Relaxed) - start;
    let elapsed = began.elapsed();
    measuring.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        let _ = writer.await;
    }
    let mut latencies = reader.await.map_err(io::Error::other)?;
    latencies.sort_unstable();
    let measured = Measured {
        rate: count as f64 / elapsed.as_secs_f64(),
        p50: quantile(&latencies, 0.50),
        p99: quantile(&latencies, 0.99),
    };
    a.shutdown(Duration::from_millis(200)).await;
    if let Some(b) = b {
        b.shutdown(Duration::from_millis(200)).await;
    }
    Ok(measured)
}

// ---------------------------------------------------------------------------------------------
// `--mode latency`, `--mode qos1`, `--mode idle`: the cluster's cost beyond QoS 0 throughput.

/// Round trips measured per QoS and setup in `--mode latency`, after [`LATENCY_WARMUP`].
const LATENCY_SAMPLES: usize = 2000;
/// Round trips before those measured (connections, NATS interest and the stream warm).
const LATENCY_WARMUP: usize = 200;
/// How long any one packet may take in the latency and QoS 1 runs.
const PACKET_DEADLINE: Duration = Duration::from_secs(10);
/// Unacknowledged QoS 1 messages per publisher in `--mode qos1`.
const QOS1_WINDOW: usize = 16;
/// Idle connections opened per broker in `--mode idle`.
const IDLE_CONNECTIONS: usize = 1000;
/// How long `--mode idle` waits by default (`--settle SECS`) before reading a process's RSS, so
/// that it is what the process keeps, not what connecting or unsubscribing freed: jemalloc's
/// background thread gives a freed page back between one and two decays after it was freed
/// (it counts what was freed while it slept as freed when it wakes), and the `rallymq` binary's
/// decay is 1 s. A binary run with jemalloc's default 10 s decay (`_RJEM_MALLOC_CONF=
/// dirty_decay_ms:10000`) needs `--settle 22`.
const SETTLE: Duration = Duration::from_secs(12);

/// Setups compared by the extra modes: a node on its own, and publisher and subscriber on two
/// clustered nodes.
const SINGLE_AND_CROSS: [Setup; 2] = [Setup::Single, Setup::CrossNode];

/// Setups of `--mode latency`: a single node, publisher and subscriber on one clustered node
/// (its own subscriber's QoS 1 comes through the stream), and on two.
const LATENCY_SETUPS: [Setup; 3] = [Setup::Single, Setup::ClusterLocal, Setup::CrossNode];

/// The `p`-quantile of sorted `values`.
/// Reads `subscriber`'s messages until `stop` or the end of its connection, counting them in
/// `received`; while `measuring`, takes each one's latency from the send time stamped in its
/// first 8 bytes (nanoseconds since `epoch`). Acknowledges QoS 1 messages when `acknowledge`.
async fn read_stamped(
    mut subscriber: Client,
    epoch: Instant,
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    measuring: Arc<AtomicBool>,
    acknowledge: bool,
) -> Vec<Duration> {
    let limits = Limits::default();
    let mut latencies = Vec::new();
    let mut acks = BytesMut::new();
    while !stop.load(Ordering::Relaxed) {
        let read = tokio::time::timeout(
            Duration::from_millis(100),
            subscriber.io.read_buf(&mut subscriber.buf),
        )
        .await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => {}
            Err(_) => continue,
        }
        let now = epoch.elapsed().as_nanos() as u64;
        while let Ok(Some(packet)) = rallymq_codec::decode(&mut subscriber.buf, VERSION, &limits) {
            let Packet::Publish(publish) = packet else {
                continue;
            };
            received.fetch_add(1, Ordering::Relaxed);
            if acknowledge && let Some(id) = publish.packet_id {
                encode(&Packet::PubAck(rallymq_codec::Ack::new(id)), &mut acks);
            }
            if measuring.load(Ordering::Relaxed) && publish.payload.len() >= 8 {
                let mut at = [0u8; 8];
                at.copy_from_slice(&publish.payload[..8]);
                let sent = u64::from_be_bytes(at);
                latencies.push(Duration::from_nanos(now.saturating_sub(sent)));
            }
        }
        if !acks.is_empty() {
            if subscriber.io.write_all(&acks).await.is_err() {
                break;
            }
            acks.clear();
        }
    }
    latencies
}

fn quantile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

/// The two nodes of `setup` (one for `Single`) and where to publish and subscribe.
async fn setup_nodes(
    setup: Setup,
    nats: &NatsServer,
) -> io::Result<(
    Vec<BrokerHandle>,
    std::net::SocketAddr,
    std::net::SocketAddr,
)> {
    let nodes = match setup {
        Setup::Single => vec![node(None).await?],
        _ => vec![node(Some(nats)).await?, node(Some(nats)).await?],
    };
    let addr = |node: &BrokerHandle| {
        node.local_addr(ListenerKind::Tcp)
            .ok_or_else(|| io::Error::other("no TCP"))
    };
    let publish_at = addr(&nodes[0])?;
    // `cluster-local`: a node's own subscriber, whose QoS 1 and 2 messages come through the
    // stream as another node's do.
    let subscribe_at = match setup {
        Setup::ClusterLocal => publish_at,
        _ => addr(nodes.last().unwrap_or(&nodes[0]))?,
    };
    Ok((nodes, publish_at, subscribe_at))
}

async fn shut_down(nodes: Vec<BrokerHandle>) {
    for node in nodes {
        node.shutdown(Duration::from_millis(200)).await;
    }
}

/// The next packet within [`PACKET_DEADLINE`].
async fn next_packet(client: &mut Client) -> io::Result<Packet> {
    tokio::time::timeout(
        PACKET_DEADLINE,
        rallymq_benches::client::read_packet(&mut client.io, &mut client.buf),
    )
    .await
    .map_err(|_| io::Error::other(format!("no packet within {PACKET_DEADLINE:?}")))?
}

/// A PUBLISH of `qos` on `topic` whose payload starts with `at` (ns since the run's epoch).
fn timed_publish(topic: &TopicName, qos: QoS, id: u16, at: u64) -> Packet {
    let mut payload = BytesMut::with_capacity(PAYLOAD_LEN);
    payload.put_u64(at);
    payload.put_bytes(b'x', PAYLOAD_LEN - 8);
    let mut publish = Publish::new(topic.clone(), payload.freeze());
    publish.qos = qos;
    if qos != QoS::AtMostOnce {
        publish.packet_id = rallymq_codec::PacketId::new(id);
    }
    Packet::Publish(publish)
}

/// Unloaded latency: one message at a time from a publisher to a subscriber (on another node
/// for `CrossNode`); the next goes once the previous has arrived (and, QoS 1, both PUBACKs
/// are done). Returns the delivery latencies (send to receipt) and, for QoS 1, the PUBACK
/// latencies (send to the publisher's PUBACK: in a cluster, the stream's round trip).
async fn round_trips(
    setup: Setup,
    nats: &NatsServer,
    qos: QoS,
) -> io::Result<(Vec<Duration>, Vec<Duration>)> {
    let (nodes, publish_at, subscribe_at) = setup_nodes(setup, nats).await?;
    let mut subscriber = Client::connect(subscribe_at, Transport::Tcp, "lat-sub", true).await?;
    subscriber.subscribe("lat/t", qos).await?;
    let mut publisher = Client::connect(publish_at, Transport::Tcp, "lat-pub", true).await?;
    let topic = TopicName::new("lat/t").map_err(io::Error::other)?;
    let epoch = Instant::now();
    let mut delivered = Vec::with_capacity(LATENCY_SAMPLES);
    let mut acknowledged = Vec::with_capacity(LATENCY_SAMPLES);
    let mut out = BytesMut::new();
    let mut i = 0usize;
    // QoS 0 crosses once the subscriber's node has its NATS subscription: a message lost in
    // that window is sent again (after 200 ms), not waited for.
    while delivered.len() < LATENCY_SAMPLES {
        let id = (i % usize::from(u16::MAX)) as u16 + 1;
        let sent = Instant::now();
        out.clear();
        encode(
            &timed_publish(&topic, qos, id, epoch.elapsed().as_nanos() as u64),
            &mut out,
        );
        publisher.io.write_all(&out).await?;
        let deliver = async {
            let wait = if i < LATENCY_WARMUP && qos == QoS::AtMostOnce {
                Duration::from_millis(200)
            } else {
                PACKET_DEADLINE
            };
            loop {
                match tokio::time::timeout(
                    wait,
                    rallymq_benches::client::read_packet(&mut subscriber.io, &mut subscriber.buf),
                )
                .await
                {
                    Err(_) if wait < PACKET_DEADLINE => return Ok(None),
                    Err(_) => return Err(io::Error::other("a message did not arrive")),
                    Ok(Err(error)) => return Err(error),
                    Ok(Ok(Packet::Publish(publish))) => {
                        let at = sent.elapsed();
                        if let Some(id) = publish.packet_id {
                            let mut ack = BytesMut::new();
                            encode(&Packet::PubAck(rallymq_codec::Ack::new(id)), &mut ack);
                            subscriber.io.write_all(&ack).await?;
                        }
                        return Ok(Some(at));
                    }
                    Ok(Ok(_)) => {}
                }
            }
        };
        let ack = async {
            if qos == QoS::AtMostOnce {
                return Ok(Duration::ZERO);
            }
            loop {
                if let Packet::PubAck(_) = next_packet(&mut publisher).await? {
                    return Ok::<_, io::Error>(sent.elapsed());
                }
            }
        };
        let (delivery, ack) = tokio::join!(deliver, ack);
        let (delivery, ack) = (delivery?, ack?);
        i += 1;
        if let Some(delivery) = delivery.filter(|_| i > LATENCY_WARMUP) {
            delivered.push(delivery);
            acknowledged.push(ack);
        }
    }
    shut_down(nodes).await;
    delivered.sort_unstable();
    acknowledged.sort_unstable();
    Ok((delivered, acknowledged))
}

/// `--mode latency`: [`round_trips`] for QoS 0 and 1, single node and cross-node, `rounds`
/// times; prints each round and the medians of p50 and p99, and what the cluster adds.
fn latency_mode(runtime: &tokio::runtime::Runtime, nats: &NatsServer, rounds: usize) -> ExitCode {
    println!(
        "unloaded latency: one 64-byte message at a time, {LATENCY_SAMPLES} measured after \
         {LATENCY_WARMUP}, MQTT 3.1.1 over TCP"
    );
    let setups = LATENCY_SETUPS.len();
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        let mut p50s: Vec<Vec<f64>> = vec![Vec::new(); 2 * setups];
        let mut p99s: Vec<Vec<f64>> = vec![Vec::new(); 2 * setups];
        for round in 0..rounds {
            for (s, setup) in LATENCY_SETUPS.iter().enumerate() {
                let (delivered, acked) = match runtime.block_on(round_trips(*setup, nats, qos)) {
                    Ok(measured) => measured,
                    Err(error) => {
                        eprintln!("{} {qos:?}: {error}", setup.name());
                        return ExitCode::FAILURE;
                    }
                };
                let puback = if qos == QoS::AtMostOnce {
                    String::new()
                } else {
                    format!(
                        "  PUBACK p50 {:>8.2?} p99 {:>8.2?}",
                        quantile(&acked, 0.5),
                        quantile(&acked, 0.99)
                    )
                };
                println!(
                    "round {} {qos:?} {:>10}: delivery p50 {:>8.2?} p99 {:>8.2?}{puback}",
                    round + 1,
                    setup.name(),
                    quantile(&delivered, 0.5),
                    quantile(&delivered, 0.99),
                );
                for (k, sorted) in [(s, &delivered), (setups + s, &acked)] {
                    p50s[k].push(quantile(sorted, 0.5).as_secs_f64());
                    p99s[k].push(quantile(sorted, 0.99).as_secs_f64());
                }
            }
        }
        let at = |values: &mut Vec<f64>| {
            Duration::from_secs_f64(rallymq_benches::median(values).unwrap_or(0.0))
        };
        let what = if qos == QoS::AtMostOnce {
            vec![(0, "delivery")]
        } else {
            vec![(0, "delivery"), (setups, "PUBACK")]
        };
        for (base, name) in what {
            let (single50, single99) = (at(&mut p50s[base]), at(&mut p99s[base]));
            for (s, setup) in LATENCY_SETUPS.iter().enumerate().skip(1) {
                let (p50, p99) = (at(&mut p50s[base + s]), at(&mut p99s[base + s]));
                println!(
                    "median {qos:?} {name}: single p50 {single50:.2?} p99 {single99:.2?}; {} \
                     p50 {p50:.2?} p99 {p99:.2?}; added p50 {:.2?} p99 {:.2?}",
                    setup.name(),
                    p50.saturating_sub(single50),
                    p99.saturating_sub(single99)
                );
            }
        }
    }
    ExitCode::SUCCESS
}

/// QoS 1 load: `publishers` on the first node, each with at most [`QOS1_WINDOW`] messages
/// unacknowledged, on `load/q1/N`; one QoS 1 subscriber on `load/q1/+` (on the other node for
/// `CrossNode`) acknowledging everything, or with `shared_group` two members of
/// `$share/q1/load/q1/+`, one on each node (both on the single node). Throughput is what the
/// subscribers received per second over `duration` after [`WARMUP`]; latency from send to
/// receipt.
async fn qos1_load(
    setup: Setup,
    nats: &NatsServer,
    publishers: usize,
    window: u64,
    duration: Duration,
    shared_group: bool,
) -> io::Result<Measured> {
    let (nodes, publish_at, subscribe_at) = setup_nodes(setup, nats).await?;
    // The group's members: one beside the publishers, one on the other node (if any).
    let subscribers = if shared_group {
        vec![
            (publish_at, "$share/q1/load/q1/+"),
            (subscribe_at, "$share/q1/load/q1/+"),
        ]
    } else {
        vec![(subscribe_at, "load/q1/+")]
    };
    let epoch = Instant::now();
    let sent = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for (i, (addr, filter)) in subscribers.into_iter().enumerate() {
        let mut subscriber =
            Client::connect(addr, Transport::Tcp, &format!("q1-sub-{i}"), true).await?;
        subscriber.subscribe(filter, QoS::AtLeastOnce).await?;
        let (received, stop, measuring) = (received.clone(), stop.clone(), measuring.clone());
        readers.push(tokio::spawn(read_stamped(
            subscriber, epoch, stop, received, measuring, true,
        )));
    }
    let mut writers = Vec::new();
    for p in 0..publishers {
        let client =
            Client::connect(publish_at, Transport::Tcp, &format!("q1-pub-{p}"), true).await?;
        let topic = TopicName::new(format!("load/q1/{p}")).map_err(io::Error::other)?;
        let flow = Flow {
            sent: sent.clone(),
            received: received.clone(),
            window,
            stop: stop.clone(),
        };
        writers.push(tokio::spawn(qos1_publisher(client, topic, epoch, flow)));
    }
    tokio::time::sleep(WARMUP).await;
    let start = received.load(Ordering::Relaxed);
    measuring.store(true, Ordering::Relaxed);
    let began = Instant::now();
    tokio::time::sleep(duration).await;
    let count = received.load(Ordering::Relaxed) - start;
    let elapsed = began.elapsed();
    measuring.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.map_err(io::Error::other)??;
    }
    let mut latencies = Vec::new();
    let mut split = Vec::new();
    for reader in readers {
        let member = reader.await.map_err(io::Error::other)?;
        split.push(member.len());
        latencies.extend(member);
    }
    if shared_group {
        // Messages each member received while measured (first: on the publishers' node).
        println!("  {}: the members received {split:?}", setup.name());
    }
    latencies.sort_unstable();
    shut_down(nodes).await;
    Ok(Measured {
        rate: count as f64 / elapsed.as_secs_f64(),
        p50: quantile(&latencies, 0.5),
        p99: quantile(&latencies, 0.99),
    })
}

/// The QoS 1 publishers' shared flow control: sent and received so far, and how many may be
/// sent and not received.
struct Flow {
    sent: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    window: u64,
    stop: Arc<AtomicBool>,
}

/// One QoS 1 publisher of [`qos1_load`]: sends while fewer than [`QOS1_WINDOW`] of its
/// messages wait for their PUBACK and the flow has room (a single node acknowledges at once, so
/// without the flow's window the subscriber's queue, not the broker, would be measured), until
/// `stop`.
async fn qos1_publisher(
    client: Client,
    topic: TopicName,
    epoch: Instant,
    flow: Flow,
) -> io::Result<()> {
    let Client { io, mut buf, .. } = client;
    let (mut read, mut write) = tokio::io::split(io);
    let limits = Limits::default();
    let mut unacked = 0usize;
    let mut id = 0u16;
    let mut out = BytesMut::new();
    while !flow.stop.load(Ordering::Relaxed) {
        let in_flight = flow
            .sent
            .load(Ordering::Relaxed)
            .saturating_sub(flow.received.load(Ordering::Relaxed));
        let mut room = flow.window.saturating_sub(in_flight);
        if room == 0 && unacked == 0 {
            tokio::time::sleep(Duration::from_micros(200)).await;
            continue;
        }
        out.clear();
        while unacked < QOS1_WINDOW && room > 0 {
            id = id % u16::MAX + 1;
            encode(
                &timed_publish(
                    &topic,
                    QoS::AtLeastOnce,
                    id,
                    epoch.elapsed().as_nanos() as u64,
                ),
                &mut out,
            );
            unacked += 1;
            room -= 1;
            flow.sent.fetch_add(1, Ordering::Relaxed);
        }
        if !out.is_empty() {
            write.write_all(&out).await?;
        }
        match tokio::time::timeout(Duration::from_millis(100), read.read_buf(&mut buf)).await {
            Ok(Ok(0)) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return Err(error),
            Err(_) => continue,
        }
        while let Some(packet) = rallymq_codec::decode(&mut buf, VERSION, &limits)
            .map_err(rallymq_benches::client::invalid)?
        {
            match packet {
                Packet::PubAck(ack) if ack.reason_code.is_error() => {
                    return Err(io::Error::other(format!("PUBACK {:?}", ack.reason_code)));
                }
                Packet::PubAck(_) => unacked = unacked.saturating_sub(1),
                _ => {}
            }
        }
    }
    Ok(())
}

/// Measures each of `setups` with `load`, `rounds` times over, and prints each result after
/// `label`: the results per setup, or `None` once one failed (said on stderr).
fn measure_rounds<F, Fut>(
    runtime: &tokio::runtime::Runtime,
    setups: &[Setup],
    rounds: usize,
    label: &str,
    mut load: F,
) -> Option<Vec<Vec<Measured>>>
where
    F: FnMut(Setup) -> Fut,
    Fut: Future<Output = io::Result<Measured>>,
{
    let mut results: Vec<Vec<Measured>> = setups.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for (i, setup) in setups.iter().enumerate() {
            match runtime.block_on(load(*setup)) {
                Ok(measured) => {
                    println!(
                        "round {} {label}{:>13}: {:>9.0} msg/s  p50 {:>8.2?}  p99 {:>8.2?}",
                        round + 1,
                        setup.name(),
                        measured.rate,
                        measured.p50,
                        measured.p99
                    );
                    results[i].push(measured);
                }
                Err(error) => {
                    eprintln!("{label}{}: {error}", setup.name());
                    return None;
                }
            }
        }
    }
    Some(results)
}

/// `--mode qos1` and `--mode shared-qos1` (`shared_group`): [`qos1_load`] single node and
/// cross-node, `rounds` times; prints each round and the medians.
fn qos1_mode(
    runtime: &tokio::runtime::Runtime,
    nats: &NatsServer,
    options: &Options,
    shared_group: bool,
) -> ExitCode {
    let label = if shared_group {
        "shared-qos1 "
    } else {
        "qos1 "
    };
    let measured = measure_rounds(runtime, &SINGLE_AND_CROSS, options.rounds, label, |setup| {
        qos1_load(
            setup,
            nats,
            options.publishers,
            options.window,
            options.duration,
            shared_group,
        )
    });
    let Some(results) = measured else {
        return ExitCode::FAILURE;
    };
    println!(
        "\nQoS 1 medians{} over {} rounds ({} publishers, {QOS1_WINDOW} unacknowledged each, \
         window {}, {:?} each; load {}):",
        if shared_group {
            ", shared group of two members (cross-node: one on each node)"
        } else {
            ""
        },
        options.rounds,
        options.publishers,
        options.window,
        options.duration,
        rallymq_benches::load_average()
    );
    print_medians(&SINGLE_AND_CROSS, &results);
    ExitCode::SUCCESS
}

/// A `rallymq broker` process (the binary people run) on a free port, in memory, `$SYS` off,
/// joined to `cluster` if given (as node `node_id`); killed when dropped.
struct RallymqProcess(std::process::Child);

impl RallymqProcess {
    fn start(
        program: &std::path::Path,
        port: u16,
        cluster: Option<(&str, &str)>,
    ) -> io::Result<Self> {
        let mut command = std::process::Command::new(program);
        command
            .args(["broker", "--tcp", &format!("127.0.0.1:{port}")])
            .args(["--in-memory", "--sys-interval-secs", "0"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if let Some((url, node_id)) = cluster {
            command.args(["--cluster", url, "--node-id", node_id]);
        }
        let process = Self(command.spawn()?);
        let deadline = Instant::now() + SETUP_DEADLINE;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "{} does not listen on {port}",
                    program.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(process)
    }

    fn rss(&self) -> io::Result<u64> {
        rallymq_benches::status_bytes(self.0.id(), "VmRSS")
            .ok_or_else(|| io::Error::other("no VmRSS"))
    }

    fn cpu_seconds(&self) -> io::Result<f64> {
        rallymq_benches::cpu_seconds(self.0.id()).ok_or_else(|| io::Error::other("no CPU time"))
    }
}

impl Drop for RallymqProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The filters of the idle connections in `--mode idle`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdleFilters {
    /// None: connected only.
    None,
    /// Each its own filter under one first level (`idle/N`): a node covers the level with one
    /// NATS subscription.
    OneLevel,
    /// Each its own filter with a first level of its own (`idle-N/x`): a node subscribes to
    /// each on NATS.
    OwnLevel,
}

impl IdleFilters {
    const ALL: [Self; 3] = [Self::None, Self::OneLevel, Self::OwnLevel];

    /// Connection `i`'s filter (`i` counts on over the batches).
    fn filter(self, i: usize) -> Option<String> {
        match self {
            Self::None => None,
            Self::OneLevel => Some(format!("idle/{i}")),
            Self::OwnLevel => Some(format!("idle-{i}/x")),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::None => "connected only",
            Self::OneLevel => "each a filter of its own under one level (idle/N)",
            Self::OwnLevel => "each a filter with a first level of its own (idle-N/x)",
        }
    }
}

/// A `rallymq` process with `batches` x [`IDLE_CONNECTIONS`] idle MQTT 3.1.1 connections, each
/// subscribed to its filter of `filters`, and its RSS before them and after each batch.
struct IdleBroker {
    broker: RallymqProcess,
    /// The RSS before the first batch, then after each.
    rss: Vec<u64>,
    _clients: Vec<Client>,
}

impl IdleBroker {
    async fn start(
        program: &std::path::Path,
        cluster: Option<(&str, &str)>,
        filters: IdleFilters,
        settle: Duration,
        batches: usize,
    ) -> io::Result<Self> {
        let port = rallymq_test_support::free_port();
        let broker = RallymqProcess::start(program, port, cluster)?;
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        // One connection first, so that what every connection shares (buffers, the runtime's
        // threads, the NATS link's first subscription) is in the baseline.
        let mut first = Client::connect(addr, Transport::Tcp, "idle-first", true).await?;
        first.subscribe("idle/first", QoS::AtMostOnce).await?;
        tokio::time::sleep(settle).await;
        let mut rss = vec![broker.rss()?];
        let mut clients = vec![first];
        for batch in 0..batches {
            let from = batch * IDLE_CONNECTIONS;
            let ids = (from..from + IDLE_CONNECTIONS)
                .map(|i| format!("idle-{i}"))
                .collect();
            let mut connected =
                rallymq_benches::client::connect_all(addr, Transport::Tcp, ids, true).await?;
            for (i, client) in connected.iter_mut().enumerate() {
                if let Some(filter) = filters.filter(from + i) {
                    client.subscribe(&filter, QoS::AtLeastOnce).await?;
                }
            }
            clients.append(&mut connected);
            tokio::time::sleep(settle).await;
            rss.push(broker.rss()?);
        }
        Ok(Self {
            broker,
            rss,
            _clients: clients,
        })
    }

    /// What the RSS gained per 1,000 connections with each batch: the first batch's figure
    /// holds what the first connections' burst grows once (buffers kept at their largest),
    /// the later ones' what one more connection costs.
    fn gained_per_1000(&self) -> Vec<f64> {
        self.rss
            .windows(2)
            .map(|pair| (pair[1] as f64 - pair[0] as f64) * 1000.0 / IDLE_CONNECTIONS as f64)
            .collect()
    }
}

/// Filters subscribed and then unsubscribed in `--mode idle`'s churn: `connections` x
/// `per_connection`, in SUBSCRIBE and UNSUBSCRIBE packets of [`CHURN_PACKET`] filters.
#[derive(Debug, Clone, Copy)]
struct Churn {
    connections: usize,
    per_connection: usize,
    /// Each filter under one first level (`churn/C/I`), or with a first level of its own
    /// (`churn-C-I/x`, a NATS subscription each in a cluster).
    own_level: bool,
}

/// Filters per SUBSCRIBE or UNSUBSCRIBE packet in the churn.
const CHURN_PACKET: usize = 100;

impl Churn {
    const ALL: [Self; 2] = [
        Self {
            connections: 100,
            per_connection: 1000,
            own_level: false,
        },
        Self {
            connections: 10,
            per_connection: 1000,
            own_level: true,
        },
    ];

    fn filters(self, connection: usize) -> Vec<String> {
        (0..self.per_connection)
            .map(|i| {
                if self.own_level {
                    format!("churn-{connection}-{i}/x")
                } else {
                    format!("churn/{connection}/{i}")
                }
            })
            .collect()
    }

    fn name(self) -> String {
        format!(
            "{} filters {}",
            self.connections * self.per_connection,
            if self.own_level {
                "each with a first level of its own (churn-C-I/x)"
            } else {
                "under one level (churn/C/I)"
            }
        )
    }

    /// The RSS (bytes) a `rallymq` process gained with the churn's filters subscribed (2 s
    /// after), and what it kept `settle` after they were all unsubscribed, beside its RSS
    /// before.
    async fn measure(
        self,
        program: &std::path::Path,
        cluster: Option<(&str, &str)>,
        settle: Duration,
    ) -> io::Result<(f64, f64)> {
        let port = rallymq_test_support::free_port();
        let broker = RallymqProcess::start(program, port, cluster)?;
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        let ids = (0..self.connections)
            .map(|i| format!("churn-{i}"))
            .collect();
        let mut clients =
            rallymq_benches::client::connect_all(addr, Transport::Tcp, ids, true).await?;
        // One subscription made and gone first: what the first one allocates is baseline.
        clients[0].subscribe("churn/warm", QoS::AtMostOnce).await?;
        clients[0].unsubscribe_all(&["churn/warm"]).await?;
        tokio::time::sleep(settle).await;
        let before = broker.rss()?;
        for (c, client) in clients.iter_mut().enumerate() {
            for packet in self.filters(c).chunks(CHURN_PACKET) {
                client.subscribe_all(packet, QoS::AtMostOnce).await?;
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let peak = broker.rss()?;
        for (c, client) in clients.iter_mut().enumerate() {
            for packet in self.filters(c).chunks(CHURN_PACKET) {
                client.unsubscribe_all(packet).await?;
            }
        }
        tokio::time::sleep(settle).await;
        let after = broker.rss()?;
        Ok((peak as f64 - before as f64, after as f64 - before as f64))
    }
}

/// Messages published in `--mode idle`'s traffic measurement.
const TRAFFIC_MESSAGES: usize = 100_000;

/// What a node whose connections hold `filters` receives from NATS, and the CPU it spends, when
/// another node's client publishes [`TRAFFIC_MESSAGES`] QoS 0 messages on `idle/none`, a topic
/// none of its clients wants: (messages NATS sent it, its CPU microseconds per message
/// published).
async fn unwanted_traffic(
    program: &std::path::Path,
    nats: &NatsServer,
    filters: IdleFilters,
    settle: Duration,
) -> io::Result<(u64, f64)> {
    let url = nats.url();
    let receiver = IdleBroker::start(program, Some((&url, "idle-b")), filters, settle, 1).await?;
    let port = rallymq_test_support::free_port();
    let _sender = RallymqProcess::start(program, port, Some((&url, "idle-a")))?;
    let mut publisher = Client::connect(
        ([127, 0, 0, 1], port).into(),
        Transport::Tcp,
        "idle-publisher",
        true,
    )
    .await?;
    let sent_to = |nats: &NatsServer| -> io::Result<u64> {
        let connz = nats
            .monitor("/connz?limit=1000")
            .ok_or_else(|| io::Error::other("no /connz"))?;
        let connz: serde_json::Value = serde_json::from_str(&connz).map_err(io::Error::other)?;
        connz["connections"]
            .as_array()
            .and_then(|connections| {
                connections
                    .iter()
                    .find(|connection| connection["name"] == "rallymq-idle-b")
            })
            .and_then(|connection| connection["out_msgs"].as_u64())
            .ok_or_else(|| io::Error::other("node idle-b is not connected to NATS"))
    };
    let (messages_before, cpu_before) = (sent_to(nats)?, receiver.broker.cpu_seconds()?);
    let mut out = BytesMut::new();
    for i in 0..TRAFFIC_MESSAGES {
        let mut publish =
            Publish::new(TopicName::new("idle/none").map_err(invalid)?, vec![0u8; 64]);
        publish.qos = QoS::AtMostOnce;
        encode(&Packet::Publish(publish), &mut out);
        if i % BATCH as usize == 0 {
            publisher.io.write_all(&out).await?;
            out.clear();
            // Paced, so that no queue on the way drops what is measured.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    publisher.io.write_all(&out).await?;
    publisher.io.flush().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let messages = sent_to(nats)? - messages_before;
    let cpu = receiver.broker.cpu_seconds()? - cpu_before;
    Ok((messages, cpu * 1e6 / TRAFFIC_MESSAGES as f64))
}

/// `--mode idle`: what idle connections cost a single `rallymq` and a clustered one (the NATS
/// server of the run), connections alone and with filters ([`IdleFilters`]), `rounds` times,
/// medians; then whether unsubscribing many filters gives the memory back ([`Churn`]), and
/// what covering a level costs in traffic ([`unwanted_traffic`]).
fn idle_mode(
    runtime: &tokio::runtime::Runtime,
    nats: &NatsServer,
    program: Option<&std::path::Path>,
    options: &Options,
) -> ExitCode {
    let (rounds, settle) = (options.rounds, options.settle);
    let Some(program) = program else {
        eprintln!(
            "--mode idle needs --rallymq PATH (cargo build --release -p rallymq --bin rallymq)"
        );
        return ExitCode::from(2);
    };
    let url = nats.url();
    let report = |error: io::Error| {
        eprintln!("idle: {error}");
        ExitCode::FAILURE
    };
    println!(
        "RSS of a rallymq process per 1,000 idle connections (two batches of \
         {IDLE_CONNECTIONS}, each read {settle:?} after it; the second: what one more costs):"
    );
    let rows = options.idle_rows.unwrap_or(IdleFilters::ALL.len());
    for filters in IdleFilters::ALL.into_iter().take(rows) {
        // [single, cluster] x [first batch, second batch]
        let mut deltas: [[Vec<f64>; 2]; 2] = Default::default();
        for round in 0..rounds {
            for (m, cluster) in [None, Some((url.as_str(), "idle-b"))]
                .into_iter()
                .enumerate()
            {
                let measured = runtime.block_on(async {
                    let broker = IdleBroker::start(program, cluster, filters, settle, 2).await?;
                    Ok::<_, io::Error>(broker.gained_per_1000())
                });
                let batches = match measured {
                    Ok(batches) => batches,
                    Err(error) => return report(error),
                };
                let &[first, second] = batches.as_slice() else {
                    return report(io::Error::other("not two batches"));
                };
                println!(
                    "round {} {:>7}, {}: {:.0} KiB per 1,000, the second 1,000 {:.0} KiB",
                    round + 1,
                    if cluster.is_some() {
                        "cluster"
                    } else {
                        "single"
                    },
                    filters.name(),
                    first / 1024.0,
                    second / 1024.0
                );
                deltas[m][0].push(first);
                deltas[m][1].push(second);
            }
        }
        let [[single, single_second], [clustered, clustered_second]] =
            deltas.map(|batches| batches.map(|d| median(d) / 1024.0));
        println!(
            "median, {}: single {single:.0} KiB, cluster {clustered:.0} KiB per 1,000 ({:.2}x); \
             the second 1,000: single {single_second:.0} KiB, cluster {clustered_second:.0} KiB \
             ({:.2}x)",
            filters.name(),
            clustered / single,
            clustered_second / single_second
        );
    }
    if options.idle_rows.is_some() {
        return ExitCode::SUCCESS;
    }
    println!(
        "RSS gained with filters subscribed, and kept {settle:?} after all were unsubscribed:"
    );
    for churn in Churn::ALL {
        for cluster in [None, Some((url.as_str(), "churn"))] {
            match runtime.block_on(churn.measure(program, cluster, settle)) {
                Ok((peak, after)) => println!(
                    "{:>7}, {}: +{:.0} KiB subscribed, {:+.0} KiB after",
                    if cluster.is_some() {
                        "cluster"
                    } else {
                        "single"
                    },
                    churn.name(),
                    peak / 1024.0,
                    after / 1024.0
                ),
                Err(error) => return report(error),
            }
        }
    }
    println!(
        "A node whose {IDLE_CONNECTIONS} clients hold filters, while a client of another node \
         publishes {TRAFFIC_MESSAGES} QoS 0 messages on idle/none (wanted by none of them):"
    );
    for filters in [IdleFilters::OneLevel, IdleFilters::OwnLevel] {
        match runtime.block_on(unwanted_traffic(program, nats, filters, settle)) {
            Ok((messages, cpu)) => println!(
                "{}: NATS sent it {messages} messages; its CPU {cpu:.2} us per message published",
                filters.name()
            ),
            Err(error) => return report(error),
        }
    }
    ExitCode::SUCCESS
}

/// What `--connects` measures: how a CONNECT finds its session (see the module's docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnectSetup {
    Single,
    ClusterNew,
    ClusterSame,
    CrossNode,
}

impl ConnectSetup {
    const ALL: [Self; 4] = [
        Self::Single,
        Self::ClusterNew,
        Self::ClusterSame,
        Self::CrossNode,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Single => "single",
            Self::ClusterNew => "cluster-new",
            Self::ClusterSame => "cluster-same",
            Self::CrossNode => "cross-node",
        }
    }
}

/// Unmeasured connects before each measurement.
const CONNECT_WARMUP: usize = 20;

/// `--connects`: the connect latency of each [`ConnectSetup`], `rounds` times, and the medians.
fn measure_connects(
    runtime: &tokio::runtime::Runtime,
    nats: &NatsServer,
    connects: usize,
    rounds: usize,
) -> ExitCode {
    let mut results: Vec<Vec<(f64, f64)>> = ConnectSetup::ALL.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for (i, setup) in ConnectSetup::ALL.iter().enumerate() {
            match runtime.block_on(connect_latencies(*setup, nats, connects, round)) {
                Ok((p50, p99)) => {
                    println!(
                        "round {} {:>12}: p50 {:>8.2?}  p99 {:>8.2?}",
                        round + 1,
                        setup.name(),
                        p50,
                        p99
                    );
                    results[i].push((p50.as_secs_f64(), p99.as_secs_f64()));
                }
                Err(error) => {
                    eprintln!("{}: {error}", setup.name());
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    println!(
        "\nmedians over {rounds} rounds ({connects} connects each; load {}):",
        rallymq_benches::load_average()
    );
    let single = median(results[0].iter().map(|r| r.0).collect());
    for (setup, measured) in ConnectSetup::ALL.iter().zip(&results) {
        let p50 = median(measured.iter().map(|r| r.0).collect());
        let p99 = median(measured.iter().map(|r| r.1).collect());
        println!(
            "{:>12}: p50 {:>8.2?} (+{:>8.2?} over single)  p99 {:>8.2?}",
            setup.name(),
            Duration::from_secs_f64(p50),
            Duration::from_secs_f64((p50 - single).max(0.0)),
            Duration::from_secs_f64(p99)
        );
    }
    ExitCode::SUCCESS
}

/// `connects` timed connects (after [`CONNECT_WARMUP`] others) in `setup`, on fresh brokers;
/// their p50 and p99.
async fn connect_latencies(
    setup: ConnectSetup,
    nats: &NatsServer,
    connects: usize,
    round: usize,
) -> io::Result<(Duration, Duration)> {
    let (a, b) = match setup {
        ConnectSetup::Single => (node(None).await?, None),
        ConnectSetup::CrossNode => (node(Some(nats)).await?, Some(node(Some(nats)).await?)),
        _ => (node(Some(nats)).await?, None),
    };
    let tcp = |node: &BrokerHandle| {
        node.local_addr(ListenerKind::Tcp)
            .ok_or_else(|| io::Error::other("no TCP"))
    };
    let addrs = match &b {
        Some(b) => vec![tcp(&a)?, tcp(b)?],
        None => vec![tcp(&a)?],
    };
    let mut latencies = Vec::with_capacity(connects);
    for i in 0..CONNECT_WARMUP + connects {
        let client_id = match setup {
            ConnectSetup::ClusterNew => format!("connects-{round}-{i}"),
            _ => format!("connects-{round}"),
        };
        let addr = addrs[i % addrs.len()];
        let began = Instant::now();
        let client = tokio::time::timeout(
            SETUP_DEADLINE,
            Client::connect(addr, Transport::Tcp, &client_id, false),
        )
        .await
        .map_err(io::Error::other)??;
        let took = began.elapsed();
        client.disconnect().await?;
        if i >= CONNECT_WARMUP {
            latencies.push(took);
        }
    }
    latencies.sort_unstable();
    let measured = (quantile(&latencies, 0.50), quantile(&latencies, 0.99));
    a.shutdown(Duration::from_millis(200)).await;
    if let Some(b) = b {
        b.shutdown(Duration::from_millis(200)).await;
    }
    Ok(measured)
}
