//! A large backlog for offline persistent sessions, through `rallymq_bench_broker` with its disk
//! store: the broker's memory while it holds the backlog, the disk it takes, the time the
//! broker takes to accept connections again after a crash and after a clean stop, and how fast
//! the sessions drain it when they come back.
//!
//! ```text
//! cargo build --release -p rallymq-benches --bins
//! target/release/backlog                        # 1,000 sessions x 10,000 messages = 10 M entries
//! target/release/backlog --messages 100         # a quick run: 100,000 entries
//! target/release/backlog --in-memory --messages 1000   # the same backlog held in memory
//! target/release/backlog --mosquitto --messages 1000   # the same backlog through Mosquitto
//! target/release/backlog --live         # the same messages to the sessions connected
//! ```
//!
//! The pattern: `--sessions` (1,000) clients connect with Clean Session 0 (MQTT 3.1.1), each
//! subscribes to `backlog/data` at QoS 1, and disconnects. `--publishers` (4) clients then
//! publish `--messages` (10,000) QoS 1 messages of `--payload` (100) bytes to `backlog/data`
//! between them, at most `--window` (32) unacknowledged each: every message is routed to every
//! offline session, so the broker queues sessions x messages entries (10 million by default),
//! each message stored once. Then:
//!
//! 1. the broker is killed with SIGKILL and started again on the same port and directory: the
//!    time from the spawn to its `listening:` line and to a CONNACK (with `--cold`, the store's
//!    files are first evicted from the OS page cache, as after a reboot);
//! 2. it is stopped cleanly (stdin closed: connections closed, store closed) and started again,
//!    timed the same way;
//! 3. every session reconnects (Clean Session 0) and receives its queue; each payload carries
//!    its publisher and sequence number, so the tool checks that every session got every
//!    message once, in order per publisher. The drain rate is entries delivered per second,
//!    from the first reconnect to the last entry.
//!
//! With `--live`, the sessions are made the same way, then all connect again before anything
//! is published: each message goes to them as it comes, with no backlog and no restart. The
//! rate (entries delivered per second from the first PUBLISH to the last entry) is how fast the
//! same broker delivers these messages at all, which the drain's rate is read against.
//!
//! The broker's VmRSS is sampled every 100 ms (the highest sample of each phase is reported),
//! with VmHWM (the process's peak) at the end of each phase; disk usage is the store
//! directory's allocated blocks. The store directory lives under `--data-root` (the temporary
//! directory); it must be a real disk, not tmpfs (`findmnt -T DIR`). It is removed at the end
//! unless `--keep`. Publishing stops if the disk's free space falls below `--min-free-gb` (15).
//! Every phase is bounded by `--phase-timeout` (1,800 s) and by a stall of 60 s without progress.
//!
//! With `--mosquitto`, the same fill and drain go through Mosquitto (the peer the project's
//! figures are read against), with no restarts, as with `--in-memory`: `persistence false`
//! (Mosquitto holds queued messages in memory even with persistence on: its file is only a
//! snapshot), queues unbounded (`max_queued_messages 0`, `max_queued_bytes 0`: its default of
//! 1,000 messages would drop most of the backlog) and `max_inflight_messages 64`, the window our
//! broker gives an MQTT 3.1.1 client (which sends no Receive Maximum), in place of Mosquitto's
//! 20. Neither broker limits the message size.
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use rallymq_benches::client::{
    CONNECT_CONCURRENCY, Client, Transport, VERSION, connect_all, encode, invalid,
};
use rallymq_benches::{
    BenchBroker, MosquittoProcess, StoreCounts, cpu_seconds, load_average, proc_io, status_bytes,
};
use rallymq_codec::{Ack, Limits, Packet, PacketId, Publish, QoS, TopicName};
use rallymq_test_support::{free_port, mosquitto_program};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

const TOPIC: &str = "backlog/data";
/// Longest wait for a broker to print its listeners.
const START_DEADLINE: Duration = Duration::from_secs(600);
/// A phase that makes no progress for this long is given up.
const STALL: Duration = Duration::from_secs(60);
/// How often the broker's memory is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Read room kept free in a receive buffer.
const READ_ROOM: usize = 16 * 1024;
/// Unacknowledged QoS 1 messages to one client: our broker's default (`Limits::max_in_flight`),
/// the window an MQTT 3.1.1 client gets, given to Mosquitto too.
const IN_FLIGHT: u16 = 64;
/// Longest wait for Mosquitto to listen.
const MOSQUITTO_START: Duration = Duration::from_secs(10);

const USAGE: &str = "\
usage: backlog [options]
  --sessions N          offline persistent sessions (1000)
  --messages N          messages published, each queued for every session (10000)
  --payload BYTES       payload size (100; at least 12)
  --publishers N        publishing clients (4)
  --window N            unacknowledged messages per publisher (32)
  --threads N           worker threads of the broker (all cores)
  --in-memory           the broker without its store (no restarts)
  --mosquitto           the same backlog through Mosquitto: persistence off, queues unbounded,
                        64 in flight per client (no restarts)
  --mosquitto-program PATH  the mosquitto binary (mosquitto, or /usr/sbin/mosquitto when it is
                        not on the PATH)
  --data-root DIR       where the store directory is made (the temporary directory)
  --keep                leave the store directory
  --cold                evict the store's files from the OS page cache before each restart,
                        as after a reboot (dd iflag=nocache)
  --min-free-gb N       stop publishing below this much free disk (15)
  --phase-timeout SECS  longest phase (1800)
  --bench-broker PATH   rallymq_bench_broker (default: next to this binary)
  --live                connect the sessions before publishing: the rate at which they get the
                        messages live, without a backlog (no restarts), to read the drain against
  --fill-only           fill the backlog, restart, stop and keep the store (for --from-store)
  --from-store DIR      drain a copy of the store a `--fill-only` run left in DIR (same --sessions
                        and --messages), without filling it or restarting: to profile the drain.
                        Not for figures: the copy drained 10 M entries writing 11 GB of file
                        pages where the store the broker filled itself takes 1.5 GB";

#[derive(Debug, Clone)]
struct Options {
    sessions: usize,
    messages: u64,
    payload: usize,
    publishers: usize,
    window: usize,
    threads: Option<usize>,
    in_memory: bool,
    mosquitto: bool,
    mosquitto_program: PathBuf,
    data_root: PathBuf,
    keep: bool,
    cold: bool,
    min_free: u64,
    phase_timeout: Duration,
    bench_broker: Option<PathBuf>,
    from_store: Option<PathBuf>,
    fill_only: bool,
    live: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            sessions: 1000,
            messages: 10_000,
            payload: 100,
            publishers: 4,
            window: 32,
            threads: None,
            in_memory: false,
            mosquitto: false,
            mosquitto_program: PathBuf::from(mosquitto_program()),
            data_root: std::env::temp_dir(),
            keep: false,
            cold: false,
            min_free: 15 << 30,
            phase_timeout: Duration::from_secs(1800),
            bench_broker: None,
            from_store: None,
            fill_only: false,
            live: false,
        }
    }
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut options = Options::default();
    let mut iter = args.iter();
    while let Some(flag) = iter.next() {
        match flag.as_str() {
            "--in-memory" => {
                options.in_memory = true;
                continue;
            }
            "--mosquitto" => {
                options.mosquitto = true;
                continue;
            }
            "--keep" => {
                options.keep = true;
                continue;
            }
            "--cold" => {
                options.cold = true;
                continue;
            }
            "--live" => {
                options.live = true;
                continue;
            }
            "--fill-only" => {
                options.fill_only = true;
                options.keep = true;
                continue;
            }
            _ => {}
        }
        let value = iter.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("{flag}: not a number: {value}"))
        };
        match flag.as_str() {
            "--sessions" => options.sessions = number()?.max(1) as usize,
            "--messages" => options.messages = number()?.max(1),
            "--payload" => options.payload = number()?.max(12) as usize,
            "--publishers" => options.publishers = number()?.max(1) as usize,
            "--window" => options.window = number()?.clamp(1, 65_000) as usize,
            "--threads" => options.threads = Some(number()?.max(1) as usize),
            "--data-root" => options.data_root = PathBuf::from(value),
            "--min-free-gb" => options.min_free = number()? << 30,
            "--phase-timeout" => options.phase_timeout = Duration::from_secs(number()?.max(1)),
            "--bench-broker" => options.bench_broker = Some(PathBuf::from(value)),
            "--from-store" => options.from_store = Some(PathBuf::from(value)),
            "--mosquitto-program" => options.mosquitto_program = PathBuf::from(value),
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if options.live && (options.fill_only || options.from_store.is_some()) {
        return Err("--live fills no backlog: no --fill-only or --from-store".to_owned());
    }
    if options.mosquitto && (options.fill_only || options.from_store.is_some() || options.cold) {
        return Err(
            "--mosquitto keeps no store: no --fill-only, --from-store or --cold".to_owned(),
        );
    }
    Ok(options)
}

// ---- observing the broker -------------------------------------------------------------------

/// The broker's VmRSS, sampled in the background; the highest sample since the last `take`.
struct RssSampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (peak, stop) = (peak.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match status_bytes(pid, "VmRSS") {
                        Some(rss) => {
                            peak.fetch_max(rss, Ordering::Relaxed);
                        }
                        None => return,
                    }
                    std::thread::sleep(SAMPLE_EVERY);
                }
            })
        };
        Self {
            peak,
            stop,
            thread: Some(thread),
        }
    }

    /// The highest sample since the last call.
    fn take(&self) -> u64 {
        self.peak.swap(0, Ordering::Relaxed)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// Bytes allocated on disk to the files under `dir`, and their apparent size.
fn disk_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut allocated = 0;
    let mut apparent = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    for entry in entries.flatten() {
        let Ok(metadata) = entry.metadata() else {
            continue;
        };
        if metadata.is_dir() {
            let (a, b) = disk_usage(&entry.path());
            allocated += a;
            apparent += b;
        } else {
            allocated += metadata.blocks() * 512;
            apparent += metadata.len();
        }
    }
    (allocated, apparent)
}

fn data_dir_text(dir: &Option<PathBuf>) -> String {
    dir.as_ref()
        .map_or_else(|| "memory".to_owned(), |dir| dir.display().to_string())
}

/// Copies the store file a `--keep` run left in `source` into `dir` (its lock file stays: the
/// broker makes its own).
fn copy_store(source: &Path, dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::copy(source.join("store.redb"), dir.join("store.redb"))?;
    Ok(())
}

/// Drops the files under `dir` from the OS page cache, so that the next start reads them from
/// the disk (`dd iflag=nocache count=0` asks the kernel to drop a whole file's cached pages).
fn evict(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            evict(&path)?;
            continue;
        }
        let status = Command::new("dd")
            .arg(format!("if={}", path.display()))
            .args(["iflag=nocache", "count=0", "status=none"])
            .status()?;
        if !status.success() {
            return Err(io::Error::other(format!(
                "dd could not evict {}",
                path.display()
            )));
        }
    }
    Ok(())
}

/// Free bytes on the file system holding `dir` (`df -Pk`).
fn free_bytes(dir: &Path) -> Option<u64> {
    let output = Command::new("df").arg("-Pk").arg(dir).output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    let line = text.lines().nth(1)?;
    let kb: u64 = line.split_whitespace().nth(3)?.parse().ok()?;
    Some(kb * 1024)
}

/// The store's commits over a phase of `elapsed` seconds.
fn report_commits(
    out: &mut String,
    before: Option<StoreCounts>,
    after: Option<StoreCounts>,
    elapsed: f64,
) {
    if let (Some(c0), Some(c1)) = (before, after) {
        let commits = c1.commits - c0.commits;
        let _ = writeln!(
            out,
            "  store: {commits} commits ({:.0}/s), {:.0} changes per commit, {} fdatasync ({:.0}/s)",
            commits as f64 / elapsed,
            (c1.changes - c0.changes) as f64 / commits.max(1) as f64,
            c1.syncs - c0.syncs,
            (c1.syncs - c0.syncs) as f64 / elapsed
        );
    }
}

/// The broker's CPU over a phase of `elapsed` seconds that began when it had used `cpu0`, per
/// queue entry of the phase's `entries`.
fn report_cpu(out: &mut String, cpu0: Option<f64>, pid: u32, elapsed: f64, entries: u64) {
    if let (Some(cpu0), Some(cpu1)) = (cpu0, cpu_seconds(pid)) {
        let _ = writeln!(
            out,
            "  broker CPU: {:.1} s ({:.0}% of a core), {:.2} µs per entry",
            cpu1 - cpu0,
            (cpu1 - cpu0) / elapsed * 100.0,
            (cpu1 - cpu0) * 1e6 / entries.max(1) as f64
        );
    }
}

/// What the broker's memory and store were at the end of a phase.
fn report_broker(out: &mut String, broker: &mut Broker, sampler: &RssSampler) {
    let pid = broker.pid();
    let rss = status_bytes(pid, "VmRSS").unwrap_or(0);
    let hwm = status_bytes(pid, "VmHWM").unwrap_or(0);
    let _ = write!(
        out,
        "  broker VmRSS now {}, highest sample {}, VmHWM {}",
        mib(rss),
        mib(sampler.take().max(rss)),
        mib(hwm)
    );
    if let Some(io) = proc_io(pid) {
        let _ = write!(out, "; wrote {} (file pages)", mib(io.write_bytes));
    }
    if let Some(counts) = broker.store_counts() {
        let _ = write!(
            out,
            "; store: {} commits, {} changes",
            counts.commits, counts.changes
        );
    }
    out.push('\n');
}

// ---- the clients --------------------------------------------------------------------------------

fn session_id(i: usize) -> String {
    format!("backlog-{i:05}")
}

/// Makes the sessions (see [`create_sessions`]), within `--phase-timeout`.
fn make_sessions(
    runtime: &tokio::runtime::Runtime,
    options: &Options,
    addr: SocketAddr,
) -> io::Result<()> {
    runtime.block_on(async {
        tokio::time::timeout(
            options.phase_timeout,
            create_sessions(addr, options.sessions),
        )
        .await
        .map_err(|_| io::Error::other("creating the sessions: too slow"))?
    })
}

/// Waits for the sessions' tasks; how many failed.
async fn failures(tasks: Vec<JoinHandle<io::Result<()>>>) -> usize {
    let mut failures = 0;
    for task in tasks {
        if !matches!(task.await, Ok(Ok(()))) {
            failures += 1;
        }
    }
    failures
}

/// A phase's line: how many entries the sessions got of how many, how fast, how they fared, and
/// `tail`.
fn write_phase(
    out: &mut String,
    phase: &str,
    (received, entries, elapsed): (u64, u64, f64),
    drained: &Drained,
    tail: &str,
) {
    let _ = writeln!(
        out,
        "{phase}: {received} of {entries} entries in {elapsed:.1} s: {:.0} entries/s; {}{tail}",
        received as f64 / elapsed,
        drained.summary(),
    );
}

/// How a phase ended, for the end of its line: nothing when every session got everything.
fn outcome(result: &io::Result<usize>) -> String {
    match result {
        Ok(0) => String::new(),
        Ok(failures) => format!(", {failures} sessions failed"),
        Err(error) => format!(", stopped: {error}"),
    }
}

/// Creates the sessions: subscribed at QoS 1, then offline.
async fn create_sessions(addr: SocketAddr, sessions: usize) -> io::Result<()> {
    let clients = connect_all(
        addr,
        Transport::Tcp,
        (0..sessions).map(session_id).collect(),
        false,
    )
    .await?;
    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let tasks: Vec<JoinHandle<io::Result<()>>> = clients
        .into_iter()
        .map(|mut client| {
            let gate = gate.clone();
            tokio::spawn(async move {
                let _permit = gate.acquire_owned().await.map_err(io::Error::other)?;
                client.subscribe(TOPIC, QoS::AtLeastOnce).await?;
                client.disconnect().await
            })
        })
        .collect();
    for task in tasks {
        task.await.map_err(io::Error::other)??;
    }
    Ok(())
}

/// The payload of message `seq` of publisher `publisher`: both numbers, then filler.
fn payload(publisher: u32, seq: u64, len: usize) -> Vec<u8> {
    let mut payload = Vec::with_capacity(len);
    payload.put_u32(publisher);
    payload.put_u64(seq);
    payload.resize(len, 0x5A);
    payload
}

/// Publishes `count` QoS 1 messages, at most `window` unacknowledged; returns when all are
/// acknowledged.
async fn publish(
    client: Client,
    publisher: u32,
    count: u64,
    options: &Options,
    acked: Arc<AtomicU64>,
) -> io::Result<()> {
    let Client { io, buf, .. } = client;
    let (mut read, mut write) = tokio::io::split(io);
    let credits = Arc::new(Semaphore::new(options.window));
    let reader_credits = credits.clone();
    let reader_acked = acked.clone();
    let reader = tokio::spawn(async move {
        let limits = Limits::default();
        let mut buf = buf;
        let mut total = 0;
        while total < count {
            let mut n = 0;
            while let Some(packet) =
                rallymq_codec::decode(&mut buf, VERSION, &limits).map_err(invalid)?
            {
                if matches!(packet, Packet::PubAck(_)) {
                    n += 1;
                }
            }
            total += n as u64;
            reader_acked.fetch_add(n as u64, Ordering::Relaxed);
            reader_credits.add_permits(n);
            if total >= count {
                break;
            }
            make_room(&mut buf);
            if read.read_buf(&mut buf).await? == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
        }
        Ok::<_, io::Error>(read)
    });
    let topic = TopicName::new(TOPIC).map_err(invalid)?;
    let mut out = BytesMut::new();
    let mut next_id: u16 = 0;
    let mut seq = 0;
    while seq < count {
        let Ok(first) = credits.acquire().await else {
            break;
        };
        first.forget();
        let mut n = 1;
        while n < count - seq
            && let Ok(more) = credits.try_acquire()
        {
            more.forget();
            n += 1;
        }
        for _ in 0..n {
            next_id = next_id % u16::MAX + 1;
            let mut message = Publish::new(topic.clone(), payload(publisher, seq, options.payload));
            message.qos = QoS::AtLeastOnce;
            message.packet_id = PacketId::new(next_id);
            encode(&Packet::Publish(message), &mut out);
            seq += 1;
        }
        write.write_all(&out).await?;
        out.clear();
    }
    let read = reader.await.map_err(io::Error::other)??;
    let mut client = Client {
        io: Box::new(read.unsplit(write)),
        buf: BytesMut::new(),
        session_present: false,
    };
    client.io.flush().await?;
    client.disconnect().await
}

/// Connects the publishers and starts them: `--messages` between them, counted in `acked`
/// as they are acknowledged.
async fn spawn_publishers(
    addr: SocketAddr,
    options: &Options,
    acked: &Arc<AtomicU64>,
) -> io::Result<Vec<JoinHandle<io::Result<()>>>> {
    let ids = (0..options.publishers)
        .map(|i| format!("backlog-publisher-{i}"))
        .collect();
    let publishers = connect_all(addr, Transport::Tcp, ids, true).await?;
    let per = options.messages / options.publishers as u64;
    let extra = options.messages % options.publishers as u64;
    Ok(publishers
        .into_iter()
        .enumerate()
        .map(|(i, client)| {
            let count = per + u64::from((i as u64) < extra);
            let options = options.clone();
            let acked = acked.clone();
            tokio::spawn(async move { publish(client, i as u32, count, &options, acked).await })
        })
        .collect())
}

fn make_room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_ROOM {
        buf.reserve(4 * READ_ROOM);
    }
}

/// What the sessions received while draining.
#[derive(Debug, Default)]
struct Drained {
    /// Sessions connected again.
    connected: AtomicU64,
    received: AtomicU64,
    /// Messages received again, or out of order within a publisher's sequence.
    disorder: AtomicU64,
    /// Sessions whose CONNACK said no session was present.
    not_present: AtomicU64,
    /// Sessions that received all they expected.
    complete: AtomicU64,
}

impl Drained {
    /// How the sessions fared, for a phase's line.
    fn summary(&self) -> String {
        format!(
            "{} sessions complete, {} without Session Present, {} out of order or repeated",
            self.complete.load(Ordering::Relaxed),
            self.not_present.load(Ordering::Relaxed),
            self.disorder.load(Ordering::Relaxed)
        )
    }
}

/// One session reconnects and receives `expected` messages (acknowledging each), checking
/// that each publisher's come once and in order; gives up when `stop` is set.
async fn drain_session(
    client: Client,
    expected: u64,
    publishers: usize,
    drained: Arc<Drained>,
    stop: Arc<AtomicBool>,
) -> io::Result<()> {
    if !client.session_present {
        drained.not_present.fetch_add(1, Ordering::Relaxed);
    }
    let limits = Limits::default();
    let mut next = vec![0u64; publishers];
    let mut acks = BytesMut::new();
    let mut got = 0;
    let mut client = client;
    while got < expected && !stop.load(Ordering::Relaxed) {
        let mut count = 0;
        while let Some(packet) =
            rallymq_codec::decode(&mut client.buf, VERSION, &limits).map_err(invalid)?
        {
            let Packet::Publish(publish) = packet else {
                continue;
            };
            count += 1;
            if let Some(id) = publish.packet_id {
                encode(&Packet::PubAck(Ack::new(id)), &mut acks);
            }
            let bytes = &publish.payload;
            let in_order = bytes.len() >= 12 && {
                let publisher = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
                let mut seq = [0u8; 8];
                seq.copy_from_slice(&bytes[4..12]);
                let seq = u64::from_be_bytes(seq);
                match next.get_mut(publisher as usize) {
                    Some(next) if *next == seq => {
                        *next += 1;
                        true
                    }
                    _ => false,
                }
            };
            if !in_order {
                drained.disorder.fetch_add(1, Ordering::Relaxed);
            }
        }
        if !acks.is_empty() {
            client.io.write_all(&acks).await?;
            acks.clear();
        }
        got += count;
        drained.received.fetch_add(count, Ordering::Relaxed);
        if got >= expected {
            break;
        }
        make_room(&mut client.buf);
        let read = tokio::time::timeout(
            Duration::from_millis(200),
            client.io.read_buf(&mut client.buf),
        );
        match read.await {
            Ok(Ok(0)) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            Ok(result) => {
                result?;
            }
            Err(_) => {} // Checks `stop` again.
        }
    }
    if got >= expected {
        drained.complete.fetch_add(1, Ordering::Relaxed);
    }
    client.io.flush().await?;
    client.disconnect().await
}

/// Reconnects every session (Clean Session 0), each then receiving `--messages` messages
/// (see [`drain_session`]).
fn spawn_receivers(
    addr: SocketAddr,
    options: &Options,
    drained: &Arc<Drained>,
    stop: &Arc<AtomicBool>,
) -> Vec<JoinHandle<io::Result<()>>> {
    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    (0..options.sessions)
        .map(|i| {
            let (gate, drained, stop) = (gate.clone(), drained.clone(), stop.clone());
            let expected = options.messages;
            let publishers = options.publishers;
            tokio::spawn(async move {
                let client = {
                    let _permit = gate.acquire_owned().await.map_err(io::Error::other)?;
                    Client::connect(addr, Transport::Tcp, &session_id(i), false).await?
                };
                drained.connected.fetch_add(1, Ordering::Relaxed);
                drain_session(client, expected, publishers, drained, stop).await
            })
        })
        .collect()
}

/// Waits for `done` while `progress` moves; gives up after `timeout` or a stall.
async fn watch(
    what: &str,
    progress: impl Fn() -> u64,
    done: impl Fn() -> bool,
    timeout: Duration,
) -> io::Result<()> {
    let begun = Instant::now();
    let mut last = (progress(), Instant::now());
    while !done() {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = progress();
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > STALL {
            return Err(io::Error::other(format!(
                "{what}: no progress for {STALL:?}"
            )));
        }
        if begun.elapsed() > timeout {
            return Err(io::Error::other(format!("{what}: over {timeout:?}")));
        }
    }
    Ok(())
}

// ---- the run ---------------------------------------------------------------------------------

/// The store directory, removed when the run ends, however it ends (after the broker, which is
/// declared later and so dropped first), unless kept.
struct DataDir {
    path: Option<PathBuf>,
    keep: bool,
}

impl Drop for DataDir {
    fn drop(&mut self) {
        if let Some(path) = &self.path
            && !self.keep
        {
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

/// The broker measured: ours, or Mosquitto given the same backlog.
enum Broker {
    Ours(BenchBroker),
    Mosquitto(MosquittoProcess),
}

impl Broker {
    fn pid(&self) -> u32 {
        match self {
            Self::Ours(broker) => broker.pid(),
            Self::Mosquitto(mosquitto) => mosquitto.pid(),
        }
    }

    /// Our store's counters; `None` without a store.
    fn store_counts(&mut self) -> Option<StoreCounts> {
        match self {
            Self::Ours(broker) => broker.store_counts(),
            Self::Mosquitto(_) => None,
        }
    }

    /// Ours stops as an operator stops it (stdin closed); Mosquitto, which holds nothing to
    /// keep here, is killed. Returns how long it took.
    fn stop(self, grace: Duration) -> Duration {
        match self {
            Self::Ours(broker) => broker.stop(grace),
            Self::Mosquitto(mosquitto) => {
                let begun = Instant::now();
                drop(mosquitto);
                begun.elapsed()
            }
        }
    }
}

/// Starts Mosquitto on 127.0.0.1:`port` with the settings the module's documentation gives.
fn start_mosquitto(options: &Options, port: u16) -> io::Result<MosquittoProcess> {
    let settings = format!(
        "# written by backlog\n\
         per_listener_settings false\n\
         allow_anonymous true\n\
         persistence false\n\
         max_connections -1\n\
         max_queued_messages 0\n\
         max_queued_bytes 0\n\
         max_inflight_messages {IN_FLIGHT}\n\
         log_dest stderr\n\
         log_type error\n\
         log_type warning\n"
    );
    let program = options.mosquitto_program.display().to_string();
    MosquittoProcess::start(&program, "backlog", &settings, port, MOSQUITTO_START)
}

/// Starts the broker (ours, or Mosquitto with `--mosquitto`) on `port`, timing it to its
/// `listening:` line (Mosquitto: to its port accepting connections) and to a CONNACK.
fn start_broker(
    runtime: &tokio::runtime::Runtime,
    options: &Options,
    port: u16,
    data_dir: Option<&Path>,
) -> io::Result<(Broker, Duration, Duration)> {
    let spawned = Instant::now();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let broker = if options.mosquitto {
        Broker::Mosquitto(start_mosquitto(options, port)?)
    } else {
        Broker::Ours(start_ours(options, addr, data_dir)?)
    };
    let listening = match &broker {
        Broker::Ours(ours) => ours.started_in,
        Broker::Mosquitto(_) => spawned.elapsed(),
    };
    runtime.block_on(async {
        tokio::time::timeout(START_DEADLINE, async {
            loop {
                match Client::connect(addr, Transport::Tcp, "backlog-probe", true).await {
                    Ok(client) => return client.disconnect().await,
                    Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
        })
        .await
        .map_err(|_| io::Error::other("no CONNACK from the restarted broker"))?
    })?;
    Ok((broker, listening, spawned.elapsed()))
}

/// Starts `rallymq_bench_broker` on `addr`, on its store in `data_dir` if given.
fn start_ours(
    options: &Options,
    addr: SocketAddr,
    data_dir: Option<&Path>,
) -> io::Result<BenchBroker> {
    let path = match &options.bench_broker {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("rallymq_bench_broker"),
    };
    let mut extra = vec![
        "--max-queued-messages".to_owned(),
        // Above the backlog, and with room past its high-water mark (three quarters), so that
        // publishers are never slowed for it and nothing is dropped.
        (options.messages * 2).max(1000).to_string(),
    ];
    if let Some(threads) = options.threads {
        extra.extend(["--threads".to_owned(), threads.to_string()]);
    }
    if let Some(dir) = data_dir {
        extra.extend(["--data-dir".to_owned(), dir.display().to_string()]);
    }
    BenchBroker::start(&path, addr, None, &extra, START_DEADLINE)
}

/// Starts the broker again on its store (evicted from the page cache first with `--cold`);
/// returns it and a line with its times.
fn restart(
    runtime: &tokio::runtime::Runtime,
    options: &Options,
    port: u16,
    data_dir: &Option<PathBuf>,
) -> io::Result<(Broker, String)> {
    if let (true, Some(dir)) = (options.cold, data_dir) {
        evict(dir)?;
    }
    let (broker, listening, connack) = start_broker(runtime, options, port, data_dir.as_deref())?;
    let line = format!(
        "listening after {:.3} s, CONNACK after {:.3} s",
        listening.as_secs_f64(),
        connack.as_secs_f64()
    );
    Ok((broker, line))
}

/// The backlog's making: the sessions, the publishing, and the two restarts.
fn fill_and_restart(
    runtime: &tokio::runtime::Runtime,
    options: &Options,
    port: u16,
    data_dir: &Option<PathBuf>,
    out: &mut String,
    broker: &mut Broker,
    sampler: &mut RssSampler,
) -> io::Result<()> {
    let entries = options.messages * options.sessions as u64;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // Sessions.
    let begun = Instant::now();
    make_sessions(runtime, options, addr)?;
    let _ = writeln!(
        out,
        "sessions: {} created and offline in {:.1} s",
        options.sessions,
        begun.elapsed().as_secs_f64()
    );
    report_broker(out, broker, sampler);

    // Backlog.
    let counts0 = broker.store_counts();
    let io0 = proc_io(broker.pid());
    let cpu0 = cpu_seconds(broker.pid());
    let begun = Instant::now();
    let acked = Arc::new(AtomicU64::new(0));
    let full = Arc::new(AtomicBool::new(false));
    let published = runtime.block_on(async {
        let tasks = spawn_publishers(addr, options, &acked).await?;
        let root = options.data_root.clone();
        let min_free = options.min_free;
        let disk_watch = {
            let full = full.clone();
            tokio::task::spawn_blocking(move || {
                while !full.load(Ordering::Relaxed) {
                    if data_dir_is_full(&root, min_free) {
                        full.store(true, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            })
        };
        let watched = watch(
            "publishing",
            || acked.load(Ordering::Relaxed),
            || full.load(Ordering::Relaxed) || tasks.iter().all(JoinHandle::is_finished),
            options.phase_timeout,
        )
        .await;
        let elapsed = begun.elapsed().as_secs_f64();
        let stopped_for_disk = full.swap(true, Ordering::Relaxed);
        let _ = disk_watch.await;
        for task in tasks {
            if task.is_finished() {
                task.await.map_err(io::Error::other)??;
            } else {
                task.abort();
            }
        }
        watched?;
        if stopped_for_disk {
            return Err(io::Error::other(format!(
                "stopped: under {} free on the disk",
                mib(options.min_free)
            )));
        }
        Ok::<_, io::Error>((acked.load(Ordering::Relaxed), elapsed))
    })?;
    let (published, elapsed) = published;
    let _ = writeln!(
        out,
        "publish: {published} messages acknowledged in {elapsed:.1} s: {:.0} msg/s, {:.0} entries/s",
        published as f64 / elapsed,
        (published * options.sessions as u64) as f64 / elapsed
    );
    report_commits(out, counts0, broker.store_counts(), elapsed);
    report_cpu(
        out,
        cpu0,
        broker.pid(),
        elapsed,
        published * options.sessions as u64,
    );
    if let (Some(i0), Some(i1)) = (io0, proc_io(broker.pid())) {
        let written = i1.since(&i0);
        let _ = writeln!(
            out,
            "  written: {} by write calls, {} of file pages: {:.0} B / {:.0} B per entry",
            mib(written.wchar),
            mib(written.write_bytes),
            written.wchar as f64 / entries as f64,
            written.write_bytes as f64 / entries as f64
        );
    }
    report_broker(out, broker, sampler);
    std::thread::sleep(Duration::from_secs(2));
    let _ = write!(out, "after 2 s idle:");
    report_broker(out, broker, sampler);
    if let Some(dir) = data_dir {
        let (allocated, apparent) = disk_usage(dir);
        let _ = writeln!(
            out,
            "  disk: {} allocated ({} apparent): {:.0} B per entry",
            mib(allocated),
            mib(apparent),
            allocated as f64 / entries as f64
        );
    }
    print!("{out}");
    out.clear();

    // Restarts.
    if let (Some(_), Broker::Ours(ours)) = (data_dir, &mut *broker) {
        ours.kill();
        let cold = if options.cold {
            " (store evicted from the page cache)"
        } else {
            ""
        };
        let (mut restarted, line) = restart(runtime, options, port, data_dir)?;
        let _ = writeln!(out, "restart after SIGKILL{cold}: {line}");
        *sampler = RssSampler::start(restarted.pid());
        report_broker(out, &mut restarted, sampler);
        let stopped_in = restarted.stop(Duration::from_secs(120));
        let (again, line) = restart(runtime, options, port, data_dir)?;
        let _ = writeln!(
            out,
            "restart after a clean stop (stopped in {:.3} s){cold}: {line}",
            stopped_in.as_secs_f64()
        );
        *sampler = RssSampler::start(again.pid());
        *broker = again;
        report_broker(out, broker, sampler);
        print!("{out}");
        out.clear();
    }

    Ok(())
}

/// `--live`: the sessions are made, connected again and subscribed before anything is
/// published, so that each message goes to them as it comes, without a backlog: the rate at
/// which the same broker delivers what it acknowledges, to read the drain's rate against.
fn live(
    runtime: &tokio::runtime::Runtime,
    options: &Options,
    addr: SocketAddr,
    out: &mut String,
    broker: &mut Broker,
    sampler: &RssSampler,
) -> io::Result<()> {
    let entries = options.messages * options.sessions as u64;
    make_sessions(runtime, options, addr)?;
    let drained = Arc::new(Drained::default());
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let (result, elapsed, published, counts0, cpu0) = runtime.block_on(async {
        let receivers = spawn_receivers(addr, options, &drained, &stop);
        let connected = watch(
            "connecting",
            || drained.connected.load(Ordering::Relaxed),
            || drained.connected.load(Ordering::Relaxed) >= options.sessions as u64,
            options.phase_timeout,
        )
        .await;
        let counts0 = broker.store_counts();
        let cpu0 = cpu_seconds(broker.pid());
        let begun = Instant::now();
        let mut published_in = None;
        let result = async {
            connected?;
            let publishers = spawn_publishers(addr, options, &acked).await?;
            let progress =
                || drained.received.load(Ordering::Relaxed) + acked.load(Ordering::Relaxed);
            watch(
                "publishing live",
                progress,
                || publishers.iter().all(JoinHandle::is_finished),
                options.phase_timeout,
            )
            .await?;
            published_in = Some(begun.elapsed());
            for task in publishers {
                task.await.map_err(io::Error::other)??;
            }
            watch(
                "delivering live",
                progress,
                || receivers.iter().all(JoinHandle::is_finished),
                options.phase_timeout,
            )
            .await
        }
        .await;
        let elapsed = begun.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        let failures = failures(receivers).await;
        let result = result.map(|()| failures);
        (result, elapsed, published_in, counts0, cpu0)
    });
    let received = drained.received.load(Ordering::Relaxed);
    let publishers = published.map_or(String::new(), |at| {
        format!(
            "; the publishers' last acknowledgement after {:.1} s",
            at.as_secs_f64()
        )
    });
    write_phase(
        out,
        "live",
        (received, entries, elapsed),
        &drained,
        &(publishers + &outcome(&result)),
    );
    report_commits(out, counts0, broker.store_counts(), elapsed);
    report_cpu(out, cpu0, broker.pid(), elapsed, received);
    report_broker(out, broker, sampler);
    Ok(())
}

fn run(runtime: &tokio::runtime::Runtime, options: &Options) -> io::Result<String> {
    let mut out = String::new();
    let entries = options.messages * options.sessions as u64;
    let guard = DataDir {
        path: (!options.in_memory && !options.mosquitto).then(|| {
            options
                .data_root
                .join(format!("backlog-data-{}", std::process::id()))
        }),
        keep: options.keep,
    };
    let data_dir = guard.path.clone();
    // Below the ephemeral range: the broker binds it again after each restart.
    let port = free_port();
    let _ = writeln!(
        out,
        "backlog: {} sessions x {} messages of {} B = {} entries; {} publishers, window {}; {}; load average {}",
        options.sessions,
        options.messages,
        options.payload,
        entries,
        options.publishers,
        options.window,
        match &data_dir {
            Some(dir) => format!("store in {}", dir.display()),
            None if options.mosquitto => format!(
                "{} (persistence off, queues unbounded, {IN_FLIGHT} in flight)",
                options.mosquitto_program.display()
            ),
            None => "in memory".to_owned(),
        },
        load_average()
    );
    print!("{out}");
    out.clear();
    if let (Some(source), Some(dir)) = (&options.from_store, &data_dir) {
        copy_store(source, dir)?;
        let _ = writeln!(out, "store copied from {}", source.display());
    }
    let (mut broker, _, _) = start_broker(runtime, options, port, data_dir.as_deref())?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut sampler = RssSampler::start(broker.pid());
    if options.live {
        let live = live(runtime, options, addr, &mut out, &mut broker, &sampler);
        drop(sampler);
        broker.stop(Duration::from_secs(120));
        drop(guard);
        live?;
        let _ = writeln!(out, "load average at the end {}", load_average());
        return Ok(out);
    }
    if options.from_store.is_none() {
        fill_and_restart(
            runtime,
            options,
            port,
            &data_dir,
            &mut out,
            &mut broker,
            &mut sampler,
        )?;
        if options.fill_only {
            drop(sampler);
            broker.stop(Duration::from_secs(120));
            let _ = writeln!(out, "store kept in {}", data_dir_text(&data_dir));
            return Ok(out);
        }
    }

    // Drain.
    let counts0 = broker.store_counts();
    let cpu0 = cpu_seconds(broker.pid());
    let drained = Arc::new(Drained::default());
    let stop = Arc::new(AtomicBool::new(false));
    let begun = Instant::now();
    let drain_result = runtime.block_on(async {
        let tasks = spawn_receivers(addr, options, &drained, &stop);
        let watched = watch(
            "draining",
            || drained.received.load(Ordering::Relaxed),
            || tasks.iter().all(JoinHandle::is_finished),
            options.phase_timeout,
        )
        .await;
        stop.store(true, Ordering::Relaxed);
        let failures = failures(tasks).await;
        watched.map(|()| failures)
    });
    let elapsed = begun.elapsed().as_secs_f64();
    let received = drained.received.load(Ordering::Relaxed);
    write_phase(
        &mut out,
        "drain",
        (received, entries, elapsed),
        &drained,
        &outcome(&drain_result),
    );
    report_commits(&mut out, counts0, broker.store_counts(), elapsed);
    report_cpu(&mut out, cpu0, broker.pid(), elapsed, received);
    report_broker(&mut out, &mut broker, &sampler);
    if let Some(dir) = &data_dir {
        let (allocated, apparent) = disk_usage(dir);
        let _ = writeln!(
            out,
            "  disk after the drain: {} allocated ({} apparent)",
            mib(allocated),
            mib(apparent)
        );
    }
    drop(sampler);
    let stopped_in = broker.stop(Duration::from_secs(120));
    if let Some(dir) = &data_dir {
        // The store gives back the space the drain freed as it closes (`DiskStore`).
        let (allocated, apparent) = disk_usage(dir);
        let _ = writeln!(
            out,
            "stopped in {:.3} s; the store then {} allocated ({} apparent)",
            stopped_in.as_secs_f64(),
            mib(allocated),
            mib(apparent)
        );
    }
    drop(guard);
    let _ = writeln!(out, "load average at the end {}", load_average());
    Ok(out)
}

fn data_dir_is_full(root: &Path, min_free: u64) -> bool {
    free_bytes(root).is_some_and(|free| free < min_free)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let options = match parse_args(&args) {
        Ok(options) => options,
        Err(error) => {
            eprintln!("{error}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match rallymq_benches::multi_thread_runtime(
        std::thread::available_parallelism().map_or(2, |n| n.get()),
    ) {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match run(&runtime, &options) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("backlog: {error}");
            ExitCode::FAILURE
        }
    }
}
