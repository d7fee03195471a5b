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
use rallymq_benches::client::{Client, Transport, VERSION, encode};
use rallymq_broker::{Broker, BrokerConfig, BrokerHandle, ClusterConfig, ListenerKind};
use rallymq_codec::{Limits, Packet, Publish, QoS, TopicName};
use rallymq_test_support::NatsServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
    };
    let mut connects = None;
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let (Some(flag), Some(value)) = (pair.first(), pair.get(1)) else {
            eprintln!(
                "usage: cluster_load [--rounds N] [--duration SECS] [--publishers N] [--window N] [--connects N]"
            );
            return ExitCode::from(2);
        };
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
            _ => {
                eprintln!("unknown option {flag}");
                return ExitCode::from(2);
            }
        }
    }
    let runtime = match rallymq_benches::multi_thread_runtime(
        std::thread::available_parallelism().map_or(2, |n| n.get()),
    ) {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let nats = NatsServer::start();
    if let Some(connects) = connects {
        return measure_connects(&runtime, &nats, connects, options.rounds);
    }
    let setups = [
        Setup::Single,
        Setup::ClusterLocal,
        Setup::CrossNode,
        Setup::CrossShared,
    ];
    let mut results: Vec<Vec<Measured>> = setups.iter().map(|_| Vec::new()).collect();
    for round in 0..options.rounds {
        for (i, setup) in setups.iter().enumerate() {
            match runtime.block_on(measure(*setup, &nats, &options)) {
                Ok(measured) => {
                    println!(
                        "round {} {:>13}: {:>9.0} msg/s  p50 {:>8.2?}  p99 {:>8.2?}",
                        round + 1,
                        setup.name(),
                        measured.rate,
                        measured.p50,
                        measured.p99
                    );
                    results[i].push(measured);
                }
                Err(error) => {
                    eprintln!("{}: {error}", setup.name());
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    println!(
        "\nmedians over {} rounds ({} publishers, window {}, {:?} each; load {}):",
        options.rounds,
        options.publishers,
        options.window,
        options.duration,
        rallymq_benches::load_average()
    );
    let single = median(results[0].iter().map(|m| m.rate).collect());
    for (setup, measured) in setups.iter().zip(&results) {
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
    ExitCode::SUCCESS
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
        tokio::spawn(async move {
            let mut latencies = Vec::new();
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
                while let Ok(Some(packet)) =
                    rallymq_codec::decode(&mut subscriber.buf, VERSION, &limits)
                {
                    if let Packet::Publish(publish) = packet {
                        received.fetch_add(1, Ordering::Relaxed);
                        if measuring.load(Ordering::Relaxed) && publish.payload.len() >= 8 {
                            let mut at = [0u8; 8];
                            at.copy_from_slice(&publish.payload[..8]);
                            latencies.push(now.saturating_sub(u64::from_be_bytes(at)));
                        }
                    }
                }
            }
            latencies
        })
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
    let at = |q: f64| {
        let i = ((latencies.len() as f64 - 1.0) * q).round() as usize;
        Duration::from_nanos(latencies.get(i).copied().unwrap_or(0))
    };
    let measured = Measured {
        rate: count as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
    };
    a.shutdown(Duration::from_millis(200)).await;
    if let Some(b) = b {
        b.shutdown(Duration::from_millis(200)).await;
    }
    Ok(measured)
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
    let at = |q: f64| {
        let i = ((latencies.len() as f64 - 1.0) * q).round() as usize;
        latencies.get(i).copied().unwrap_or_default()
    };
    let measured = (at(0.50), at(0.99));
    a.shutdown(Duration::from_millis(200)).await;
    if let Some(b) = b {
        b.shutdown(Duration::from_millis(200)).await;
    }
    Ok(measured)
}
