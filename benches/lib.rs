//! Benchmark package: the benches live in the `[[bench]]` targets, the load tools in
//! `src/bin`; this library holds what the tools share.

pub mod client;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use rallymq_websocket::ClientRequest;
use rallymq_websocket::tokio::ByteStream;
use tokio::io::{AsyncRead, AsyncWrite};

/// A multi-thread tokio runtime with `threads` workers and every driver enabled, or, if it
/// cannot be built, the reason printed and the exit code for a tool's `main` to return.
pub fn multi_thread_runtime(threads: usize) -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .map_err(|error| {
            eprintln!("cannot build the runtime: {error}");
            ExitCode::FAILURE
        })
}

/// Opens MQTT over WebSockets on `stream` (connected to `host`): the upgrade on `/mqtt` with
/// subprotocol `mqtt`, then a byte stream whose binary messages carry the MQTT bytes.
pub async fn mqtt_over_websocket<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    host: &str,
) -> io::Result<ByteStream<S>> {
    let request = ClientRequest::new(host, "/mqtt")
        .and_then(|request| request.with_subprotocols(&["mqtt"]))
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error.to_string()))?;
    let (ws, _) =
        rallymq_websocket::tokio::connect(stream, &request, rallymq_websocket::Config::default())
            .await?;
    Ok(ws.into_byte_stream())
}

/// A global allocator that counts allocations and the bytes currently allocated, so that a
/// bench measures memory and allocations rather than guessing them. Requested sizes are counted:
/// the allocator's own per-block overhead is not included. A bench installs it with
/// `#[global_allocator] static GLOBAL: CountingAllocator = CountingAllocator;`.
pub struct CountingAllocator;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

/// Bytes currently allocated through [`CountingAllocator`].
pub fn allocated() -> usize {
    ALLOCATED.load(Ordering::Relaxed)
}

/// Allocations (and reallocations) made so far through [`CountingAllocator`].
pub fn allocations() -> usize {
    ALLOCATIONS.load(Ordering::Relaxed)
}

// The only unsafe code here: the `GlobalAlloc` contract, forwarded unchanged to `System`.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED.fetch_add(new_size, Ordering::Relaxed);
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Starts the Mosquitto `program` on the configuration file `config`, its output discarded
/// (errors shown).
pub fn spawn_mosquitto(program: &str, config: &Path) -> io::Result<Child> {
    Command::new(program)
        .arg("-c")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("{program}: {e}")))
}

/// A Mosquitto process listening on 127.0.0.1: killed (by its own pid) and its configuration's
/// directory removed when dropped.
#[derive(Debug)]
pub struct MosquittoProcess {
    child: Child,
    dir: PathBuf,
    /// Its MQTT over TCP port.
    pub port: u16,
}

impl MosquittoProcess {
    /// Starts `program` on a configuration of `settings` (global lines, each ending in a newline)
    /// and a listener on 127.0.0.1:`port`, written in a fresh temporary directory named after
    /// `name`; returns once the port accepts connections. Fails if Mosquitto exits first (the
    /// port taken, a bad setting) or does not listen within `deadline`.
    pub fn start(
        program: &str,
        name: &str,
        settings: &str,
        port: u16,
        deadline: Duration,
    ) -> io::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "rallymq-{name}-mosquitto-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("mosquitto.conf");
        std::fs::write(&config, format!("{settings}listener {port} 127.0.0.1\n"))?;
        let mut mosquitto = Self {
            child: spawn_mosquitto(program, &config)?,
            dir,
            port,
        };
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = mosquitto.child.try_wait() {
                return Err(io::Error::other(format!(
                    "{program} ({name}) exited at start ({status}): port {port} taken?"
                )));
            }
            if started.elapsed() > deadline {
                return Err(io::Error::other(format!(
                    "{program} ({name}) does not listen on {port} within {deadline:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(mosquitto)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for MosquittoProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The median of `values` (sorted in place); `None` when there are none.
pub fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    })
}

/// The 1, 5 and 15 minute load averages, as `/proc/loadavg` gives them.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// A process's resident memory (`VmRSS`) or its peak (`VmHWM`), from `/proc/PID/status`, in
/// bytes.
pub fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| {
        l.strip_prefix(field)
            .is_some_and(|rest| rest.starts_with(':'))
    })?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A process's user + system CPU time in seconds (USER_HZ is 100 on Linux).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// What a process has written, from `/proc/PID/io`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcIo {
    /// Bytes passed to `write`-like system calls (files and sockets alike).
    pub wchar: u64,
    /// `write`-like system calls.
    pub syscw: u64,
    /// Bytes of file pages the process dirtied, to be written to the device (counted a page at
    /// a time, when the page is dirtied; sockets not included).
    pub write_bytes: u64,
}

impl ProcIo {
    /// What `self` counted since `earlier`.
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            wchar: self.wchar.saturating_sub(earlier.wchar),
            syscw: self.syscw.saturating_sub(earlier.syscw),
            write_bytes: self.write_bytes.saturating_sub(earlier.write_bytes),
        }
    }
}

/// `/proc/PID/io` of a process of ours.
pub fn proc_io(pid: u32) -> Option<ProcIo> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))?
            .trim()
            .parse()
            .ok()
    };
    Some(ProcIo {
        wchar: field("wchar")?,
        syscw: field("syscw")?,
        write_bytes: field("write_bytes")?,
    })
}

/// The durable store's counters, as `rallymq_bench_broker` reports them (`StoreStats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreCounts {
    /// Transactions committed (each syncs the file: twice, with redb's quick repair).
    pub commits: u64,
    /// Changes committed.
    pub changes: u64,
    /// Syncs of the store's file (`fdatasync`).
    pub syncs: u64,
}

/// A `rallymq_bench_broker` process started by a load tool: its listeners, its pid, its store's
/// counters on request. Killed (by its pid) when dropped.
#[derive(Debug)]
pub struct BenchBroker {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// Its MQTT over TCP listener.
    pub tcp: SocketAddr,
    /// Its WebSocket listener, if it was given one.
    pub ws: Option<SocketAddr>,
    /// From the spawn to its `listening:` lines (the broker's start, store load included).
    pub started_in: Duration,
}

impl BenchBroker {
    /// Starts `path` with `--exit-on-stdin-eof`, a TCP listener on `tcp`, a WebSocket one on
    /// `ws` if given, and `extra` arguments; returns once it has printed its listeners (or
    /// fails after `deadline`).
    pub fn start(
        path: &Path,
        tcp: SocketAddr,
        ws: Option<SocketAddr>,
        extra: &[String],
        deadline: Duration,
    ) -> io::Result<Self> {
        let spawned = Instant::now();
        let mut command = Command::new(path);
        command
            .arg("--tcp")
            .arg(tcp.to_string())
            .arg("--exit-on-stdin-eof")
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(ws) = ws {
            command.arg("--ws").arg(ws.to_string());
        }
        let mut child = command
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let stdin = child.stdin.take();
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::other("no stdout"));
        };
        // A thread reads every line, so that the broker never blocks on a full pipe and the
        // tool can wait for a line with a deadline.
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        let mut broker = Self {
            child,
            stdin,
            lines,
            tcp,
            ws: None,
            started_in: Duration::ZERO,
        };
        let (mut tcp_seen, mut ws_seen) = (None, None);
        while tcp_seen.is_none() || (ws.is_some() && ws_seen.is_none()) {
            let left = deadline.saturating_sub(spawned.elapsed());
            let Ok(line) = broker.lines.recv_timeout(left) else {
                return Err(io::Error::other(format!(
                    "{} did not start within {deadline:?}",
                    path.display()
                )));
            };
            if let Some(rest) = line.strip_prefix("listening: tcp://") {
                tcp_seen = rest.parse().ok();
            } else if let Some(rest) = line.strip_prefix("listening: ws://") {
                ws_seen = rest.trim_end_matches("/mqtt").parse().ok();
            }
        }
        broker.started_in = spawned.elapsed();
        if let Some(tcp) = tcp_seen {
            broker.tcp = tcp;
        }
        broker.ws = ws_seen;
        Ok(broker)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its store's counters (`None` when it keeps everything in memory, or does not answer
    /// within two seconds).
    pub fn store_counts(&mut self) -> Option<StoreCounts> {
        let stdin = self.stdin.as_mut()?;
        stdin.write_all(b"stats\n").ok()?;
        stdin.flush().ok()?;
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let line = self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .ok()?;
            let Some(rest) = line.strip_prefix("store: ") else {
                continue;
            };
            let words: Vec<&str> = rest.split_whitespace().collect();
            return match words.as_slice() {
                ["commits", commits, "changes", changes, "syncs", syncs] => Some(StoreCounts {
                    commits: commits.parse().ok()?,
                    changes: changes.parse().ok()?,
                    syncs: syncs.parse().ok()?,
                }),
                _ => None,
            };
        }
    }

    /// Stops it as an operator would: its stdin closes, it shuts down and closes its store.
    /// Killed if it has not exited after `grace`; returns how long it took.
    pub fn stop(mut self, grace: Duration) -> Duration {
        let begun = Instant::now();
        self.stdin = None;
        while begun.elapsed() < grace {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return begun.elapsed();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        begun.elapsed()
    }

    /// Kills it with SIGKILL, as a crash: nothing is flushed or closed.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for BenchBroker {
    fn drop(&mut self) {
        self.kill();
    }
}
