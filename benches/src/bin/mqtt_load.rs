//! Whole-broker load over loopback: the shapes the broker issue is judged on, run with the same
//! client against our broker and Mosquitto, in the same session.
//!
//! ```text
//! cargo build --release -p rallymq-benches --bins
//! # both brokers, started and stopped by the tool (fresh processes for every measurement):
//! target/release/mqtt_load compare [--rounds 3] [--duration 5] [--idle 10000]
//! # one broker that is already running (RSS needs its pid):
//! target/release/mqtt_load run --tcp 127.0.0.1:1883 --ws 127.0.0.1:8080 [--pid PID]
//! ```
//!
//! Shapes, each over `mqtt://` (TCP) and `ws://ADDR/mqtt` (subprotocol `mqtt`), MQTT 3.1.1,
//! 64-byte payloads:
//! - `fan-in`: 8 publishers on `…/in/N`, QoS 0, one subscriber on `…/in/+`;
//! - `fan-out`: 1 publisher, QoS 0, 50 subscribers on the same topic;
//! - `qos1`: 50 pairs, each publisher sends QoS 1 to its own subscriber (QoS 1 subscription,
//!   every message acknowledged both ways), at most `--qos1-window` (16) unacknowledged per
//!   publisher;
//! - `idle`: `--idle` (10,000) connections that send CONNECT, get CONNACK and then sit; the
//!   broker's VmRSS (from `/proc/PID/status`) before and after, divided by the count.
//! - `qos1-persistent` (not in the default list): `qos1` with every client on a persistent
//!   session (Clean Session 0), the shape of the durability target. Run it with
//!   `--brokers rallymq-durable,rallymq,mosquitto`: `rallymq-durable` is our broker with its
//!   disk store in a fresh directory under `--data-root` (the temporary directory; keep it on
//!   a real disk, not tmpfs), removed after; its summary adds the store's commits and
//!   `fdatasync`s per second (asked of the broker over its stdin: the store counts the syncs
//!   it asks of its file; redb syncs twice per commit with quick repair) and the bytes it wrote
//!   per message (`/proc/PID/io`).
//!
//! Throughput is what subscribers *received*, per second, over `--duration` seconds after a
//! 0.5 s warm-up. QoS 0 publishers write 32 pre-encoded PUBLISH packets per write and are
//! flow-controlled from the subscriber side: they pause while more than `--window` (2000)
//! copies per subscriber are sent but not yet received, so neither broker is pushed into
//! dropping QoS 0 messages and the number is the rate it sustains (`--window 0` publishes
//! flat out instead). After the window, publishing stops, the tool waits up to 2 s for the
//! copies still on their way, and reports those never received as `undelivered`. Broker CPU
//! is the process's user + system time over the window (100% = one core); "per CPU-s" divides
//! the delivered rate by it, which keeps the comparison meaningful when the machine is shared
//! (a two-thread broker gets a larger share of a busy machine than a one-thread one).
//!
//! The summary gives medians over rounds, and the median of the per-round ratios
//! rallymq / Mosquitto (higher is better for rates; for bytes per idle connection, lower is).
//!
//! Every run is bounded: fixed connection counts, fixed time per shape (about 6-7 s including
//! setup), a deadline on connecting. The default `compare` (one round) takes about two minutes.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::net::{SocketAddr, TcpListener as StdTcpListener, TcpStream as StdTcpStream};
use std::path::PathBuf;
use std::process::{Child, ExitCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rallymq_benches::client::{Client, Transport, VERSION, connect_all, encode, invalid};
use rallymq_benches::{
    BenchBroker, ProcIo, StoreCounts, cpu_seconds, load_average, median, proc_io, spawn_mosquitto,
    status_bytes,
};
use rallymq_codec::{Ack, Limits, Packet, PacketId, Publish, QoS, TopicName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;

const PAYLOAD_LEN: usize = 64;
/// QoS 0 PUBLISH packets per write.
const BATCH: u64 = 32;
const WARMUP: Duration = Duration::from_millis(500);
/// Longest wait for the copies still in flight when publishing stops.
const DRAIN: Duration = Duration::from_secs(2);
/// Longest time to set up one shape's connections.
const SETUP_DEADLINE: Duration = Duration::from_secs(60);
/// Read room kept free in a receive buffer.
const READ_ROOM: usize = 16 * 1024;

// ---- options --------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Shape {
    Idle,
    FanIn,
    FanOut,
    Qos1,
    Qos1Persistent,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::FanIn => "fan-in",
            Self::FanOut => "fan-out",
            Self::Qos1 => "qos1",
            Self::Qos1Persistent => "qos1-persistent",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [
            Self::Idle,
            Self::FanIn,
            Self::FanOut,
            Self::Qos1,
            Self::Qos1Persistent,
        ]
        .into_iter()
        .find(|shape| shape.name() == text)
    }
}

#[derive(Debug, Clone)]
struct Options {
    rounds: usize,
    duration: Duration,
    idle: usize,
    window: u64,
    qos1_window: usize,
    fan_in_publishers: usize,
    fan_out_subscribers: usize,
    qos1_pairs: usize,
    shapes: Vec<Shape>,
    transports: Vec<Transport>,
    brokers: Vec<String>,
    broker_threads: Option<usize>,
    client_threads: usize,
    mosquitto: String,
    /// Extra lines for mosquitto.conf (global section), e.g. `set_tcp_nodelay true`.
    mosquitto_options: Vec<String>,
    bench_broker: Option<PathBuf>,
    /// Where `rallymq-durable` keeps its store (a fresh directory per measurement, removed).
    data_root: PathBuf,
    // `run` only
    tcp: Option<SocketAddr>,
    ws: Option<SocketAddr>,
    pid: Option<u32>,
    name: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            rounds: 1,
            duration: Duration::from_secs(5),
            idle: 10_000,
            window: 2000,
            qos1_window: 16,
            fan_in_publishers: 8,
            fan_out_subscribers: 50,
            qos1_pairs: 50,
            shapes: vec![Shape::Idle, Shape::FanIn, Shape::FanOut, Shape::Qos1],
            transports: vec![Transport::Tcp, Transport::Ws],
            brokers: vec!["rallymq".to_owned(), "mosquitto".to_owned()],
            broker_threads: None,
            client_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            mosquitto: "mosquitto".to_owned(),
            mosquitto_options: Vec::new(),
            bench_broker: None,
            data_root: std::env::temp_dir(),
            tcp: None,
            ws: None,
            pid: None,
            name: "broker".to_owned(),
        }
    }
}

/// The brokers `compare` knows: ours in memory, ours with its disk store, Mosquitto.
const BROKERS: [&str; 3] = ["rallymq", "rallymq-durable", "mosquitto"];

const USAGE: &str = "\
usage: mqtt_load compare [options]      start rallymq_bench_broker and mosquitto, compare them
       mqtt_load run --tcp ADDR --ws ADDR [--pid PID] [--name NAME] [options]
options:
  --rounds N              whole comparisons, alternating which broker goes first (1)
  --duration SECS         measured seconds per throughput shape (5)
  --idle N                idle connections (10000)
  --window N              QoS 0 copies in flight per subscriber; 0 = no flow control (2000)
  --qos1-window N         unacknowledged QoS 1 messages per publisher (16)
  --fan-in-publishers N   (8)     --fan-out-subscribers N (50)     --qos1-pairs N (50)
  --shapes LIST           idle,fan-in,fan-out,qos1 (also: qos1-persistent)
  --transports LIST       tcp,ws
  --brokers LIST          rallymq,mosquitto (compare; also: rallymq-durable)
  --data-root DIR         where rallymq-durable keeps its store, on a real disk ($TMPDIR or /tmp)
  --broker-threads N      worker threads of rallymq_bench_broker (default: all cores)
  --client-threads N      worker threads of this load client (default: all cores)
  --mosquitto PATH        the mosquitto binary (mosquitto)
  --mosquitto-option LINE a global mosquitto.conf line, e.g. \"set_tcp_nodelay true\" (repeatable)
  --bench-broker PATH     rallymq_bench_broker (default: next to this binary)";

fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut options = Options::default();
    let mut iter = args.iter();
    while let Some(flag) = iter.next() {
        let value = iter.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<usize>()
                .map_err(|_| format!("{flag}: not a number: {value}"))
        };
        let list = || value.split(',').map(str::trim).filter(|s| !s.is_empty());
        match flag.as_str() {
            "--rounds" => options.rounds = number()?.max(1),
            "--duration" => {
                let secs: f64 = value
                    .parse()
                    .map_err(|_| format!("--duration: not a number: {value}"))?;
                options.duration = Duration::from_secs_f64(secs.clamp(0.1, 600.0));
            }
            "--idle" => options.idle = number()?,
            "--window" => options.window = number()? as u64,
            "--qos1-window" => options.qos1_window = number()?.max(1),
            "--fan-in-publishers" => options.fan_in_publishers = number()?.max(1),
            "--fan-out-subscribers" => options.fan_out_subscribers = number()?.max(1),
            "--qos1-pairs" => options.qos1_pairs = number()?.max(1),
            "--shapes" => {
                options.shapes = list()
                    .map(|s| Shape::parse(s).ok_or_else(|| format!("unknown shape {s}")))
                    .collect::<Result<_, _>>()?;
            }
            "--transports" => {
                options.transports = list()
                    .map(|s| Transport::parse(s).ok_or_else(|| format!("unknown transport {s}")))
                    .collect::<Result<_, _>>()?;
            }
            "--brokers" => {
                options.brokers = list().map(str::to_owned).collect();
                if let Some(unknown) = options
                    .brokers
                    .iter()
                    .find(|b| !BROKERS.contains(&b.as_str()))
                {
                    return Err(format!("unknown broker {unknown}"));
                }
            }
            "--broker-threads" => options.broker_threads = Some(number()?.max(1)),
            "--client-threads" => options.client_threads = number()?.max(1),
            "--mosquitto" => options.mosquitto = value.clone(),
            "--mosquitto-option" => options.mosquitto_options.push(value.clone()),
            "--bench-broker" => options.bench_broker = Some(PathBuf::from(value)),
            "--data-root" => options.data_root = PathBuf::from(value),
            "--tcp" | "--ws" => {
                let addr = value
                    .parse()
                    .map_err(|_| format!("{flag}: not an address: {value}"))?;
                if flag == "--tcp" {
                    options.tcp = Some(addr);
                } else {
                    options.ws = Some(addr);
                }
            }
            "--pid" => options.pid = Some(number()? as u32),
            "--name" => options.name = value.clone(),
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(options)
}

fn publish_packet(topic: &str, qos: QoS) -> io::Result<Packet> {
    let mut publish = Publish::new(
        TopicName::new(topic).map_err(invalid)?,
        vec![0xA5u8; PAYLOAD_LEN],
    );
    publish.qos = qos;
    if qos != QoS::AtMostOnce {
        publish.packet_id = PacketId::new(1);
    }
    Ok(Packet::Publish(publish))
}

// ---- flow and counting --------------------------------------------------------------------------

/// What publishers and subscribers of one shape share.
#[derive(Debug)]
struct Flow {
    /// Messages written by publishers.
    sent: AtomicU64,
    /// Copies decoded by subscribers.
    received: AtomicU64,
    /// Copies of each message the subscribers get.
    copies: u64,
    /// Most copies sent and not yet received before QoS 0 publishers wait; 0 = no limit.
    limit: u64,
    waiting: AtomicBool,
    wake: Notify,
    stop: AtomicBool,
}

impl Flow {
    fn new(copies: u64, limit: u64) -> Self {
        Self {
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            copies,
            limit,
            waiting: AtomicBool::new(false),
            wake: Notify::new(),
            stop: AtomicBool::new(false),
        }
    }

    fn outstanding(&self) -> u64 {
        (self.sent.load(Ordering::Relaxed) * self.copies)
            .saturating_sub(self.received.load(Ordering::Relaxed))
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn on_received(&self, copies: u64) {
        self.received.fetch_add(copies, Ordering::Relaxed);
        if self.waiting.load(Ordering::Relaxed)
            && self.outstanding() <= self.limit / 2
            && self.waiting.swap(false, Ordering::SeqCst)
        {
            self.wake.notify_waiters();
        }
    }

    /// Waits until `more` copies fit under the limit.
    async fn room_for(&self, more: u64) {
        if self.limit == 0 {
            return;
        }
        loop {
            if self.outstanding() + more <= self.limit || self.stopped() {
                return;
            }
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.waiting.store(true, Ordering::SeqCst);
            if self.outstanding() + more <= self.limit || self.stopped() {
                return;
            }
            // The timeout only guards against a lost wake-up; it is not the normal path.
            let _ = tokio::time::timeout(Duration::from_millis(5), notified).await;
        }
    }
}

/// Keeps a receive buffer's free room at least `READ_ROOM`.
fn make_room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_ROOM {
        buf.reserve(4 * READ_ROOM);
    }
}

/// Counts the PUBLISH packets it receives; acknowledges QoS 1 ones (one write per read).
async fn subscriber(mut client: Client, flow: Arc<Flow>) -> io::Result<()> {
    let limits = Limits::default();
    let mut acks = BytesMut::new();
    loop {
        let mut count = 0;
        while let Some(packet) =
            rallymq_codec::decode(&mut client.buf, VERSION, &limits).map_err(invalid)?
        {
            if let Packet::Publish(publish) = packet {
                count += 1;
                if let Some(id) = publish.packet_id {
                    encode(&Packet::PubAck(Ack::new(id)), &mut acks);
                }
            }
        }
        if !acks.is_empty() {
            client.io.write_all(&acks).await?;
            client.io.flush().await?;
            acks.clear();
        }
        if count > 0 {
            flow.on_received(count);
        }
        make_room(&mut client.buf);
        if client.io.read_buf(&mut client.buf).await? == 0 {
            return Ok(());
        }
    }
}

/// QoS 0 publisher: the same pre-encoded batch of PUBLISH packets, written while the flow
/// has room.
async fn qos0_publisher(client: Client, topic: String, flow: Arc<Flow>) -> io::Result<()> {
    let packet = publish_packet(&topic, QoS::AtMostOnce)?;
    let mut batch = BytesMut::new();
    for _ in 0..BATCH {
        encode(&packet, &mut batch);
    }
    let batch = batch.freeze();
    let (mut read, mut write) = tokio::io::split(client.io);
    // Nothing is expected back, but reading keeps WebSocket control frames answered.
    let drain = tokio::spawn(async move {
        let mut sink = BytesMut::with_capacity(4096);
        while matches!(read.read_buf(&mut sink).await, Ok(n) if n > 0) {
            sink.clear();
        }
    });
    let result = async {
        while !flow.stopped() {
            flow.room_for(BATCH * flow.copies).await;
            if flow.stopped() {
                break;
            }
            write.write_all(&batch).await?;
            flow.sent.fetch_add(BATCH, Ordering::Relaxed);
        }
        write.flush().await
    }
    .await;
    drain.abort();
    result
}

/// QoS 1 publisher: at most `window` messages waiting for their PUBACK; all that the window
/// allows go out in one write.
async fn qos1_publisher(
    client: Client,
    topic: String,
    flow: Arc<Flow>,
    window: usize,
) -> io::Result<()> {
    let mut packet = publish_packet(&topic, QoS::AtLeastOnce)?;
    let credits = Arc::new(Semaphore::new(window));
    let Client { io, buf, .. } = client;
    let (mut read, mut write) = tokio::io::split(io);
    let reader_credits = credits.clone();
    let reader = tokio::spawn(async move {
        let limits = Limits::default();
        let mut buf = buf;
        loop {
            let mut acked = 0;
            while let Ok(Some(packet)) = rallymq_codec::decode(&mut buf, VERSION, &limits) {
                if matches!(packet, Packet::PubAck(_)) {
                    acked += 1;
                }
            }
            reader_credits.add_permits(acked);
            make_room(&mut buf);
            if !matches!(read.read_buf(&mut buf).await, Ok(n) if n > 0) {
                return;
            }
        }
    });
    let mut next_id: u16 = 0;
    let mut out = BytesMut::new();
    let result = async {
        while !flow.stopped() {
            let Ok(Ok(first)) =
                tokio::time::timeout(Duration::from_millis(100), credits.acquire()).await
            else {
                continue;
            };
            first.forget();
            let mut n = 1;
            while let Ok(more) = credits.try_acquire() {
                more.forget();
                n += 1;
            }
            for _ in 0..n {
                next_id = next_id % u16::MAX + 1;
                if let Packet::Publish(publish) = &mut packet {
                    publish.packet_id = PacketId::new(next_id);
                }
                encode(&packet, &mut out);
            }
            write.write_all(&out).await?;
            out.clear();
            flow.sent.fetch_add(n, Ordering::Relaxed);
        }
        write.flush().await
    }
    .await;
    reader.abort();
    result
}

// ---- shapes -------------------------------------------------------------------------------------

/// One measurement.
#[derive(Debug, Clone, Copy, Default)]
struct Outcome {
    /// Copies received by subscribers per second (throughput shapes).
    delivered: f64,
    /// Messages published per second.
    sent: f64,
    /// Copies sent and never received.
    lost: u64,
    /// Broker CPU over the measured window, 1.0 = one core.
    cpu: Option<f64>,
    /// Broker bytes per idle connection (idle shape).
    bytes_per_connection: Option<f64>,
    connections: usize,
    /// Copies received over the measured window.
    received: u64,
    /// What the broker process wrote over the window.
    written: Option<ProcIo>,
    /// What its store committed over the window.
    store: Option<StoreCounts>,
    /// The measured window, in seconds.
    elapsed: f64,
}

impl Outcome {
    /// Store transactions per second.
    fn commits_per_second(&self) -> Option<f64> {
        let store = self.store?;
        (self.elapsed > 0.0).then(|| store.commits as f64 / self.elapsed)
    }

    /// The store's `fdatasync`s per second.
    fn syncs_per_second(&self) -> Option<f64> {
        let store = self.store?;
        (self.elapsed > 0.0).then(|| store.syncs as f64 / self.elapsed)
    }

    /// `field` of what the broker wrote, per message received.
    fn written_per_message(&self, field: impl Fn(&ProcIo) -> u64) -> Option<f64> {
        let written = self.written?;
        (self.received > 0).then(|| field(&written) as f64 / self.received as f64)
    }
}

/// What is read from the broker at both ends of a measured window.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    cpu: Option<f64>,
    io: Option<ProcIo>,
    store: Option<StoreCounts>,
}

/// How the broker under test is observed: by its pid, and for ours also through its stdin.
trait Probe {
    fn pid(&self) -> Option<u32>;

    fn sample(&mut self) -> Sample {
        Sample {
            cpu: self.pid().and_then(cpu_seconds),
            io: self.pid().and_then(proc_io),
            store: None,
        }
    }
}

impl Probe for Option<u32> {
    fn pid(&self) -> Option<u32> {
        *self
    }
}

static RUN: AtomicU64 = AtomicU64::new(0);

async fn run_idle(
    addr: SocketAddr,
    transport: Transport,
    count: usize,
    pid: Option<u32>,
) -> io::Result<Outcome> {
    let rss_bytes = |pid| status_bytes(pid, "VmRSS");
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = pid.and_then(rss_bytes);
    let ids = (0..count).map(|i| format!("idle-{run}-{i}")).collect();
    let clients = tokio::time::timeout(SETUP_DEADLINE, connect_all(addr, transport, ids, true))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "idle connections: too slow"))??;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = pid.and_then(rss_bytes);
    let connections = clients.len();
    drop(clients);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let bytes_per_connection = match (before, after) {
        (Some(before), Some(after)) if connections > 0 => {
            Some((after as f64 - before as f64) / connections as f64)
        }
        _ => None,
    };
    Ok(Outcome {
        bytes_per_connection,
        connections,
        ..Outcome::default()
    })
}

async fn run_throughput(
    shape: Shape,
    addr: SocketAddr,
    transport: Transport,
    options: &Options,
    probe: &mut dyn Probe,
) -> io::Result<Outcome> {
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    let base = format!("bench/{run}");
    // (filter, QoS) per subscriber, topic per publisher, copies per message.
    let (subscriptions, topics, copies, qos) = match shape {
        Shape::FanIn => (
            vec![format!("{base}/in/+")],
            (0..options.fan_in_publishers)
                .map(|i| format!("{base}/in/{i}"))
                .collect::<Vec<_>>(),
            1,
            QoS::AtMostOnce,
        ),
        Shape::FanOut => (
            vec![format!("{base}/out"); options.fan_out_subscribers],
            vec![format!("{base}/out")],
            options.fan_out_subscribers as u64,
            QoS::AtMostOnce,
        ),
        Shape::Qos1 | Shape::Qos1Persistent => {
            let topics: Vec<String> = (0..options.qos1_pairs)
                .map(|i| format!("{base}/q1/{i}"))
                .collect();
            (topics.clone(), topics, 1, QoS::AtLeastOnce)
        }
        Shape::Idle => return Err(io::Error::other("not a throughput shape")),
    };
    let limit = if qos == QoS::AtMostOnce {
        options.window * subscriptions.len() as u64
    } else {
        0
    };
    let flow = Arc::new(Flow::new(copies, limit));
    // Publishers and subscribers alike: the durable broker stores both sessions.
    let clean = shape != Shape::Qos1Persistent;

    let setup = async {
        let sub_ids = (0..subscriptions.len())
            .map(|i| format!("sub-{run}-{i}"))
            .collect();
        let mut subscribers = connect_all(addr, transport, sub_ids, clean).await?;
        for (client, filter) in subscribers.iter_mut().zip(&subscriptions) {
            client.subscribe(filter, qos).await?;
        }
        let pub_ids = (0..topics.len())
            .map(|i| format!("pub-{run}-{i}"))
            .collect();
        let publishers = connect_all(addr, transport, pub_ids, clean).await?;
        Ok::<_, io::Error>((subscribers, publishers))
    };
    let (subscribers, publishers) = tokio::time::timeout(SETUP_DEADLINE, setup)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "setup: too slow"))??;

    let mut tasks: Vec<JoinHandle<io::Result<()>>> = Vec::new();
    for client in subscribers {
        tasks.push(tokio::spawn(subscriber(client, flow.clone())));
    }
    for (client, topic) in publishers.into_iter().zip(topics) {
        let flow = flow.clone();
        tasks.push(match qos {
            QoS::AtMostOnce => tokio::spawn(qos0_publisher(client, topic, flow)),
            _ => tokio::spawn(qos1_publisher(client, topic, flow, options.qos1_window)),
        });
    }

    tokio::time::sleep(WARMUP).await;
    let (r0, s0, b0, t0) = (
        flow.received.load(Ordering::Relaxed),
        flow.sent.load(Ordering::Relaxed),
        probe.sample(),
        Instant::now(),
    );
    tokio::time::sleep(options.duration).await;
    let (r1, s1, b1, elapsed) = (
        flow.received.load(Ordering::Relaxed),
        flow.sent.load(Ordering::Relaxed),
        probe.sample(),
        t0.elapsed().as_secs_f64(),
    );
    flow.stop.store(true, Ordering::SeqCst);
    flow.wake.notify_waiters();
    let drain_start = Instant::now();
    while flow.outstanding() > 0 && drain_start.elapsed() < DRAIN {
        if tasks.iter().all(JoinHandle::is_finished) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let lost = flow.outstanding();
    let mut failure = None;
    for task in tasks {
        if task.is_finished() {
            if let Ok(Err(error)) = task.await {
                failure.get_or_insert(error);
            }
        } else {
            task.abort();
        }
    }
    if let Some(error) = failure
        && r1 == r0
    {
        return Err(error);
    }
    Ok(Outcome {
        delivered: (r1 - r0) as f64 / elapsed,
        sent: (s1 - s0) as f64 / elapsed,
        lost,
        cpu: b0.cpu.zip(b1.cpu).map(|(c0, c1)| (c1 - c0) / elapsed),
        bytes_per_connection: None,
        connections: 0,
        received: r1 - r0,
        written: b0.io.zip(b1.io).map(|(w0, w1)| w1.since(&w0)),
        store: b0.store.zip(b1.store).map(|(s0, s1)| StoreCounts {
            commits: s1.commits - s0.commits,
            changes: s1.changes - s0.changes,
            syncs: s1.syncs - s0.syncs,
        }),
        elapsed,
    })
}

fn run_shape(
    runtime: &tokio::runtime::Runtime,
    shape: Shape,
    transport: Transport,
    addr: SocketAddr,
    probe: &mut dyn Probe,
    options: &Options,
) -> io::Result<Outcome> {
    runtime.block_on(async {
        match shape {
            Shape::Idle => run_idle(addr, transport, options.idle, probe.pid()).await,
            _ => run_throughput(shape, addr, transport, options, probe).await,
        }
    })
}

fn describe(outcome: &Outcome, shape: Shape) -> String {
    let cpu = outcome
        .cpu
        .map(|cpu| format!("  broker cpu {:>4.0}%", cpu * 100.0))
        .unwrap_or_default();
    match shape {
        Shape::Idle => match outcome.bytes_per_connection {
            Some(bytes) => format!(
                "{:>9.0} bytes/connection ({} connections)",
                bytes, outcome.connections
            ),
            None => format!(
                "{} connections (no pid: memory not measured)",
                outcome.connections
            ),
        },
        _ => {
            format!(
                "{:>9.0} msg/s delivered  {:>9.0} msg/s sent  undelivered {}{cpu}",
                outcome.delivered, outcome.sent, outcome.lost
            ) + &store_line(outcome)
        }
    }
}

/// What the broker wrote per message (system calls, sockets included, and file pages), and
/// for a broker with a store, its commits and syncs per second.
fn store_line(outcome: &Outcome) -> String {
    let mut line = String::new();
    if let (Some(wchar), Some(pages)) = (
        outcome.written_per_message(|w| w.wchar),
        outcome.written_per_message(|w| w.write_bytes),
    ) {
        let _ = write!(line, "  written/msg {wchar:.0} B (file pages {pages:.0} B)");
    }
    if let (Some(per_second), Some(store)) = (outcome.commits_per_second(), outcome.store) {
        let _ = write!(
            line,
            "  commits/s {per_second:.0}  changes/commit {:.0}",
            store.changes as f64 / store.commits.max(1) as f64
        );
    }
    if let Some(per_second) = outcome.syncs_per_second() {
        let _ = write!(line, "  fdatasync/s {per_second:.0}");
    }
    line
}

// ---- brokers --------------------------------------------------------------------------------------

/// A broker under test, ours or Mosquitto; killed (by its own pid) when dropped, and its
/// directory (Mosquitto's config, our store) removed.
struct BrokerProcess {
    process: Process,
    tcp: SocketAddr,
    ws: SocketAddr,
    dir: Option<PathBuf>,
}

enum Process {
    Ours(BenchBroker),
    Mosquitto(Child),
}

/// Numbers the data directories of one run.
static DATA_DIRS: AtomicU64 = AtomicU64::new(0);

impl BrokerProcess {
    fn addr(&self, transport: Transport) -> SocketAddr {
        match transport {
            Transport::Tcp => self.tcp,
            Transport::Ws => self.ws,
        }
    }

    fn start(name: &str, options: &Options) -> io::Result<Self> {
        match name {
            "rallymq" => Self::start_rallymq(options, false),
            "rallymq-durable" => Self::start_rallymq(options, true),
            _ => Self::start_mosquitto(options),
        }
    }

    fn start_rallymq(options: &Options, durable: bool) -> io::Result<Self> {
        let path = match &options.bench_broker {
            Some(path) => path.clone(),
            None => std::env::current_exe()?.with_file_name("rallymq_bench_broker"),
        };
        let mut extra = Vec::new();
        if let Some(threads) = options.broker_threads {
            extra.extend(["--threads".to_owned(), threads.to_string()]);
        }
        let dir = durable.then(|| {
            options.data_root.join(format!(
                "mqtt_load-data-{}-{}",
                std::process::id(),
                DATA_DIRS.fetch_add(1, Ordering::Relaxed)
            ))
        });
        if let Some(dir) = &dir {
            extra.push("--data-dir".to_owned());
            extra.push(dir.display().to_string());
        }
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let broker = BenchBroker::start(&path, any, Some(any), &extra, SETUP_DEADLINE)?;
        let Some(ws) = broker.ws else {
            unreachable!("BenchBroker::start returns once both listeners are known")
        };
        Ok(Self {
            tcp: broker.tcp,
            ws,
            process: Process::Ours(broker),
            dir,
        })
    }

    fn start_mosquitto(options: &Options) -> io::Result<Self> {
        let dir = std::env::temp_dir().join(format!("mqtt_load-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        // Free ports: bound, noted, released just before mosquitto binds them.
        let (tcp, ws) = {
            let a = StdTcpListener::bind("127.0.0.1:0")?;
            let b = StdTcpListener::bind("127.0.0.1:0")?;
            (a.local_addr()?, b.local_addr()?)
        };
        let config = dir.join("mosquitto.conf");
        std::fs::write(
            &config,
            format!(
                "# written by mqtt_load\n\
                 per_listener_settings false\n\
                 allow_anonymous true\n\
                 persistence false\n\
                 max_connections -1\n\
                 log_dest stderr\n\
                 log_type error\n\
                 log_type warning\n\
                 {}\n\
                 listener {} 127.0.0.1\n\
                 protocol mqtt\n\
                 listener {} 127.0.0.1\n\
                 protocol websockets\n",
                options.mosquitto_options.join("\n"),
                tcp.port(),
                ws.port()
            ),
        )?;
        let mut child = spawn_mosquitto(&options.mosquitto, &config)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while StdTcpStream::connect(tcp).is_err() || StdTcpStream::connect(ws).is_err() {
            if Instant::now() > deadline || matches!(child.try_wait(), Ok(Some(_))) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::other("mosquitto did not start"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            process: Process::Mosquitto(child),
            tcp,
            ws,
            dir: Some(dir),
        })
    }
}

impl Probe for BrokerProcess {
    fn pid(&self) -> Option<u32> {
        Some(match &self.process {
            Process::Ours(broker) => broker.pid(),
            Process::Mosquitto(child) => child.id(),
        })
    }

    fn sample(&mut self) -> Sample {
        let pid = self.pid();
        // The store first: its answer takes a round trip through the broker's stdin.
        let store = match &mut self.process {
            Process::Ours(broker) => broker.store_counts(),
            Process::Mosquitto(_) => None,
        };
        Sample {
            cpu: pid.and_then(cpu_seconds),
            io: pid.and_then(proc_io),
            store,
        }
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        // Killed before its directory is removed.
        match &mut self.process {
            Process::Ours(broker) => broker.kill(),
            Process::Mosquitto(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

// ---- reports --------------------------------------------------------------------------------------

fn value_of(shape: Shape, outcome: &Outcome) -> Option<f64> {
    match shape {
        Shape::Idle => outcome.bytes_per_connection,
        _ => Some(outcome.delivered),
    }
}

type Results = BTreeMap<(Shape, Transport), BTreeMap<String, Vec<Outcome>>>;

/// Medians over rounds of `metric` for rallymq and Mosquitto, and the median of the per-round
/// ratios (rounds ran back to back, so each ratio compares like with like).
fn medians(
    by_broker: &BTreeMap<String, Vec<Outcome>>,
    metric: impl Fn(&Outcome) -> Option<f64>,
) -> (Option<f64>, Option<f64>, Option<f64>) {
    medians_of(by_broker, "rallymq", "mosquitto", metric)
}

/// Medians over rounds of `metric` for brokers `a` and `b`, and the median of the per-round
/// ratios a / b.
fn medians_of(
    by_broker: &BTreeMap<String, Vec<Outcome>>,
    a: &str,
    b: &str,
    metric: impl Fn(&Outcome) -> Option<f64>,
) -> (Option<f64>, Option<f64>, Option<f64>) {
    let values = |broker: &str| -> Vec<Option<f64>> {
        by_broker
            .get(broker)
            .map(|v| v.iter().map(&metric).collect())
            .unwrap_or_default()
    };
    let ours = values(a);
    let theirs = values(b);
    let mut ratios: Vec<f64> = ours
        .iter()
        .zip(&theirs)
        .filter_map(|(a, b)| Some(a.as_ref()? / b.as_ref()?))
        .filter(|r| r.is_finite())
        .collect();
    let mut ours: Vec<f64> = ours.into_iter().flatten().collect();
    let mut theirs: Vec<f64> = theirs.into_iter().flatten().collect();
    (median(&mut ours), median(&mut theirs), median(&mut ratios))
}

fn summary(results: &Results, options: &Options) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n| shape | transport | rallymq | mosquitto | ratio | rallymq per CPU-s | mosquitto per CPU-s | ratio per CPU | rallymq cpu | mosquitto cpu |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let number = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
    let ratio = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}x"));
    let percent = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{:.0}%", v * 100.0));
    for ((shape, transport), by_broker) in results {
        let label = match shape {
            Shape::Idle => format!("idle, B/conn ({} conns)", options.idle),
            Shape::FanIn => format!("fan-in, msg/s ({} pub, 1 sub)", options.fan_in_publishers),
            Shape::FanOut => format!(
                "fan-out, msg/s (1 pub, {} subs)",
                options.fan_out_subscribers
            ),
            Shape::Qos1 => format!("qos1, msg/s ({} pairs)", options.qos1_pairs),
            Shape::Qos1Persistent => {
                format!("qos1-persistent, msg/s ({} pairs)", options.qos1_pairs)
            }
        };
        let (ours, theirs, ratio_value) = medians(by_broker, |o| value_of(*shape, o));
        let (ours_eff, theirs_eff, ratio_eff) = if *shape == Shape::Idle {
            (None, None, None)
        } else {
            medians(by_broker, |o| {
                o.cpu.filter(|c| *c > 0.0).map(|c| o.delivered / c)
            })
        };
        let (ours_cpu, theirs_cpu, _) = medians(by_broker, |o| o.cpu);
        let _ = writeln!(
            out,
            "| {label} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            transport.name(),
            number(ours),
            number(theirs),
            ratio(ratio_value),
            number(ours_eff),
            number(theirs_eff),
            ratio(ratio_eff),
            percent(ours_cpu),
            percent(theirs_cpu),
        );
    }
    if results
        .values()
        .any(|by_broker| by_broker.contains_key("rallymq-durable"))
    {
        out.push_str(&durability_summary(results));
    }
    out
}

/// rallymq with its store beside rallymq in memory and Mosquitto (medians over rounds, ratios
/// per round), with the store's commits and bytes per message received. *Written* is `wchar`:
/// our broker's socket writes are `send(2)` calls, which `wchar` does not count (the in-memory
/// broker shows 0), so it is the store's `pwrite`s; *file pages* is `write_bytes`, the pages
/// those writes dirtied.
fn durability_summary(results: &Results) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n| shape | transport | durable msg/s | in-memory msg/s | mosquitto msg/s | durable / in-memory | durable / mosquitto | in-memory / mosquitto | commits/s | fdatasync/s | changes/commit | written B/msg | file pages B/msg | durable cpu | in-memory cpu |"
    );
    let _ = writeln!(
        out,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let number = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
    let ratio = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}x"));
    let percent = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{:.0}%", v * 100.0));
    let delivered = |o: &Outcome| Some(o.delivered);
    for ((shape, transport), by_broker) in results {
        if *shape == Shape::Idle || !by_broker.contains_key("rallymq-durable") {
            continue;
        }
        let (durable, memory, vs_memory) =
            medians_of(by_broker, "rallymq-durable", "rallymq", delivered);
        let (_, mosquitto, vs_mosquitto) =
            medians_of(by_broker, "rallymq-durable", "mosquitto", delivered);
        let (_, _, memory_vs_mosquitto) = medians_of(by_broker, "rallymq", "mosquitto", delivered);
        let (commits, _, _) = medians_of(by_broker, "rallymq-durable", "-", |o| {
            o.commits_per_second()
        });
        let (syncs, _, _) = medians_of(by_broker, "rallymq-durable", "-", |o| o.syncs_per_second());
        let (changes, _, _) = medians_of(by_broker, "rallymq-durable", "-", |o| {
            o.store.map(|s| s.changes as f64 / s.commits.max(1) as f64)
        });
        let (written, _, _) = medians_of(by_broker, "rallymq-durable", "-", |o| {
            o.written_per_message(|w| w.wchar)
        });
        let (pages, _, _) = medians_of(by_broker, "rallymq-durable", "-", |o| {
            o.written_per_message(|w| w.write_bytes)
        });
        let (cpu, cpu_memory, _) = medians_of(by_broker, "rallymq-durable", "rallymq", |o| o.cpu);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            shape.name(),
            transport.name(),
            number(durable),
            number(memory),
            number(mosquitto),
            ratio(vs_memory),
            ratio(vs_mosquitto),
            ratio(memory_vs_mosquitto),
            number(commits),
            number(syncs),
            number(changes),
            number(written),
            number(pages),
            percent(cpu),
            percent(cpu_memory),
        );
    }
    out
}

// ---- main -----------------------------------------------------------------------------------------

fn plan(options: &Options) -> Vec<(Shape, Transport)> {
    let mut plan = Vec::new();
    for shape in &options.shapes {
        for transport in &options.transports {
            plan.push((*shape, *transport));
        }
    }
    plan
}

fn compare(runtime: &tokio::runtime::Runtime, options: &Options) -> io::Result<()> {
    let mut results = Results::new();
    println!(
        "mqtt_load compare: {} round(s), {:?} per shape, load average {}",
        options.rounds,
        options.duration,
        load_average()
    );
    for round in 0..options.rounds {
        println!("-- round {} (load average {})", round + 1, load_average());
        for (index, (shape, transport)) in plan(options).into_iter().enumerate() {
            // Each broker goes first in turn.
            let mut order = options.brokers.clone();
            let turn = (round + index) % order.len().max(1);
            order.rotate_left(turn);
            for name in order {
                // A fresh broker for every measurement: same starting state for all, and the
                // idle shape's RSS is not flattered by memory an earlier shape freed.
                let mut broker = BrokerProcess::start(&name, options)?;
                let addr = broker.addr(transport);
                let outcome = run_shape(runtime, shape, transport, addr, &mut broker, options);
                drop(broker);
                match outcome {
                    Ok(outcome) => {
                        println!(
                            "{:<15} {:<3} {:<15} {}",
                            shape.name(),
                            transport.name(),
                            name,
                            describe(&outcome, shape)
                        );
                        results
                            .entry((shape, transport))
                            .or_default()
                            .entry(name)
                            .or_default()
                            .push(outcome);
                    }
                    Err(error) => println!(
                        "{:<15} {:<3} {:<15} failed: {error}",
                        shape.name(),
                        transport.name(),
                        name
                    ),
                }
            }
        }
    }
    print!("{}", summary(&results, options));
    println!("load average at the end {}", load_average());
    Ok(())
}

fn run_one(runtime: &tokio::runtime::Runtime, options: &Options) -> io::Result<()> {
    for round in 0..options.rounds {
        println!("-- round {} (load average {})", round + 1, load_average());
        for (shape, transport) in plan(options) {
            let addr = match transport {
                Transport::Tcp => options.tcp,
                Transport::Ws => options.ws,
            };
            let Some(addr) = addr else {
                continue;
            };
            let mut probe = options.pid;
            match run_shape(runtime, shape, transport, addr, &mut probe, options) {
                Ok(outcome) => println!(
                    "{:<15} {:<3} {:<15} {}",
                    shape.name(),
                    transport.name(),
                    options.name,
                    describe(&outcome, shape)
                ),
                Err(error) => println!(
                    "{:<15} {:<3} {:<15} failed: {error}",
                    shape.name(),
                    transport.name(),
                    options.name
                ),
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    if command == "--help" || command == "-h" || command == "help" {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let options = match parse_args(rest) {
        Ok(options) => options,
        Err(error) => {
            eprintln!("{error}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match rallymq_benches::multi_thread_runtime(options.client_threads) {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let result = match command.as_str() {
        "compare" => compare(&runtime, &options),
        "run" if options.tcp.is_some() || options.ws.is_some() => run_one(&runtime, &options),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mqtt_load: {error}");
            ExitCode::FAILURE
        }
    }
}
