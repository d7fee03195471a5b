//! Test helpers shared by rallymq's test suites (h2's `tests/h2-support` pattern): a real
//! Mosquitto broker on free ports, started and stopped by the test, and NATS servers with
//! JetStream (alone or routed as a cluster, killed and restarted on the same ports and store).
//! A missing peer fails the test with a clear message; it is never skipped. Also certificates made for a test
//! ([`Certificates`]) and temporary directories removed when dropped ([`TempDir`]).

mod certificates;

pub use certificates::Certificates;

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// How many times [`Mosquitto::start_with`] tries, each on new ports.
const START_ATTEMPTS: usize = 3;

/// How long a peer may take to start listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A free TCP port on 127.0.0.1 (bound, then released for the peer to take).
///
/// Taken below the system's ephemeral range when it can be: a port the system hands out for
/// `bind(0)` is one it may hand out again at once, to another test's listener or to the local
/// end of any outgoing connection, before the peer has bound it (Mosquitto then fails to
/// start, or a test talks to the wrong listener). Ports below that range are only ever chosen
/// by this function, which walks them from a point that differs per process.
pub fn free_port() -> u16 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    const LOWEST: u16 = 10_000;
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    if ephemeral_start > LOWEST {
        let span = u64::from(ephemeral_start - LOWEST);
        let start = u64::from(std::process::id()) * 7_919;
        for _ in 0..span {
            let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
            let port = LOWEST + offset as u16;
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("a bound address").port()
}

/// A name part unique within this process (its id and a counter): for temporary files, and for
/// client ids and topics that must not meet those of another test.
pub fn run_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh directory under the system's temporary one, named for a test and unique within the
/// process ([`run_id`]), removed with what it holds when dropped (also when the test panics).
/// Not created: the code under test makes it, as a store does its directory.
pub struct TempDir(PathBuf);

impl TempDir {
    /// `rallymq-NAME-RUN` in the temporary directory, emptied if it was left there.
    pub fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("rallymq-{name}-{}", run_id()));
        let _ = std::fs::remove_dir_all(&path);
        Self(path)
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Debian installs `mosquitto` in /usr/sbin, which may not be on a user's PATH.
pub fn mosquitto_program() -> &'static str {
    sbin_program("mosquitto", "/usr/sbin/mosquitto")
}

/// Starts `program -c conf` with no standard streams; panics naming the Debian `package` that
/// provides it when it cannot start.
fn spawn_quiet(program: &str, conf: &Path, peer: &str, package: &str) -> Child {
    Command::new(program)
        .arg("-c")
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{peer} does not start ({e}): install it with `apt-get install {package}`")
        })
}

/// `name` if it is on the PATH, else `sbin_path` if that exists (Debian puts servers in
/// /usr/sbin), else `name` (whose failure to start then names it).
fn sbin_program(name: &'static str, sbin_path: &'static str) -> &'static str {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()));
    if !on_path && Path::new(sbin_path).is_file() {
        sbin_path
    } else {
        name
    }
}

/// A Mosquitto broker on free ports of 127.0.0.1: MQTT over TCP, and over WebSockets (any
/// path), anonymous, no persistence. Killed when dropped.
pub struct Mosquitto {
    child: Child,
    dir: PathBuf,
    /// The MQTT over TCP port.
    pub tcp: u16,
    /// The MQTT over WebSockets port.
    pub ws: u16,
}

impl Mosquitto {
    /// Starts Mosquitto and waits until both ports accept connections. Panics with an
    /// explanation when Mosquitto is not installed (`apt-get install mosquitto`).
    pub fn start() -> Self {
        Self::start_with("allow_anonymous true\n")
    }

    /// As [`Mosquitto::start`], with `settings` (Mosquitto configuration lines, such as
    /// `allow_anonymous false`) instead of allowing anonymous clients.
    pub fn start_with(settings: &str) -> Self {
        // A free port can be taken by another test between `free_port` and Mosquitto's bind;
        // Mosquitto then exits at once, and new ports are tried.
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            match Self::try_start(settings) {
                Ok(broker) => return broker,
                Err(failure) => failures.push(failure),
            }
        }
        panic!("Mosquitto did not start: {}", failures.join("; "));
    }

    /// One attempt of [`Mosquitto::start_with`]: `Err` when Mosquitto exited at start.
    fn try_start(settings: &str) -> Result<Self, String> {
        let program = mosquitto_program();
        let tcp = free_port();
        let ws = free_port();
        let dir = std::env::temp_dir().join(format!("rallymq-mosquitto-{}", run_id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "per_listener_settings false\npersistence false\n{settings}\
                 listener {tcp} 127.0.0.1\nlistener {ws} 127.0.0.1\nprotocol websockets\n"
            ),
        )
        .expect("the Mosquitto configuration is written");
        let child = spawn_quiet(program, &conf, "Mosquitto", "mosquitto");
        let mut broker = Self {
            child,
            dir,
            tcp,
            ws,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        for port in [tcp, ws] {
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                if let Ok(Some(status)) = broker.child.try_wait() {
                    return Err(format!("exited at start ({status}); port {port} taken?"));
                }
                assert!(
                    Instant::now() < deadline,
                    "Mosquitto does not listen on {port} within {START_TIMEOUT:?}"
                );
                thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(broker)
    }
}

impl Mosquitto {
    /// The process id of the running Mosquitto.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops Mosquitto with SIGTERM (it saves its persistence file, if it has one, and closes
    /// every connection) and waits until it has exited.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + START_TIMEOUT;
        while !matches!(self.child.try_wait(), Ok(Some(_))) {
            if Instant::now() > deadline {
                let _ = self.child.kill();
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.wait();
    }

    /// Starts Mosquitto again, after [`Mosquitto::stop`], with the same configuration and
    /// ports, and waits until both ports accept connections.
    pub fn restart(&mut self) {
        self.child = Command::new(mosquitto_program())
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("Mosquitto starts again");
        let deadline = Instant::now() + START_TIMEOUT;
        for port in [self.tcp, self.ws] {
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                if let Ok(Some(status)) = self.child.try_wait() {
                    panic!("Mosquitto exited on restart ({status}); port {port} taken?");
                }
                assert!(
                    Instant::now() < deadline,
                    "Mosquitto does not listen on {port} within {START_TIMEOUT:?}"
                );
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Debian installs `nats-server` in /usr/sbin, which may not be on a user's PATH.
pub fn nats_program() -> &'static str {
    sbin_program("nats-server", "/usr/sbin/nats-server")
}

/// One NATS server with JetStream on free ports of 127.0.0.1, its store in a temporary
/// directory; killed (and the directory removed) when dropped. A cluster of them is started
/// with [`NatsServer::cluster`].
pub struct NatsServer {
    child: Child,
    dir: PathBuf,
    /// Its `server_name`, which `/jsz` uses to name a stream's leader.
    name: String,
    /// The client port.
    pub port: u16,
    /// The route port (cluster members connect to each other there).
    pub route_port: u16,
    /// The monitoring port (HTTP: `/varz`, `/routez`, `/jsz`).
    pub http_port: u16,
}

impl NatsServer {
    /// A server on its own.
    pub fn start() -> Self {
        let mut servers = Self::cluster(1);
        servers.pop().expect("one server")
    }

    /// `n` servers routed to each other as one NATS cluster with JetStream, returned once every
    /// one sees its `n - 1` routes. Panics with an explanation when nats-server is not
    /// installed (`apt-get install nats-server`).
    pub fn cluster(n: usize) -> Vec<Self> {
        let ports: Vec<(u16, u16, u16)> = (0..n)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let run = run_id();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, route, _)| format!("nats://127.0.0.1:{route}"))
            .collect();
        let servers: Vec<Self> = ports
            .iter()
            .enumerate()
            .map(|(i, &(port, route_port, http_port))| {
                let dir = std::env::temp_dir().join(format!("rallymq-nats-{run}-{i}"));
                std::fs::create_dir_all(&dir).expect("a temporary directory");
                let cluster = if n > 1 {
                    format!(
                        "cluster {{ name: rallymq-test, listen: \"127.0.0.1:{route_port}\", \
                         routes: [{}] }}\n",
                        routes
                            .iter()
                            .enumerate()
                            .filter(|&(j, _)| j != i)
                            .map(|(_, r)| format!("\"{r}\""))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                } else {
                    String::new()
                };
                let conf = dir.join("nats.conf");
                std::fs::write(
                    &conf,
                    format!(
                        "server_name: n{i}-{run}\nlisten: \"127.0.0.1:{port}\"\n\
                         http: \"127.0.0.1:{http_port}\"\n\
                         jetstream {{ store_dir: \"{}\" }}\n{cluster}",
                        dir.join("js").display()
                    ),
                )
                .expect("the NATS configuration is written");
                let child = spawn_quiet(nats_program(), &conf, "nats-server", "nats-server");
                Self {
                    child,
                    dir,
                    name: format!("n{i}-{run}"),
                    port,
                    route_port,
                    http_port,
                }
            })
            .collect();
        let deadline = Instant::now() + START_TIMEOUT;
        for server in &servers {
            while TcpStream::connect(("127.0.0.1", server.port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "nats-server does not listen on {} within {START_TIMEOUT:?}",
                    server.port
                );
                thread::sleep(Duration::from_millis(20));
            }
        }
        for server in &servers {
            while n > 1 && server.routes() < n - 1 {
                assert!(
                    Instant::now() < deadline,
                    "nats-server on {} does not see its {} routes within {START_TIMEOUT:?}",
                    server.port,
                    n - 1
                );
                thread::sleep(Duration::from_millis(50));
            }
        }
        // JetStream answers in a cluster once its servers have elected a meta leader.
        for server in &servers {
            while n > 1 && !server.jetstream_leader_known() {
                assert!(
                    Instant::now() < deadline + START_TIMEOUT,
                    "nats-server on {} has no JetStream meta leader",
                    server.port
                );
                thread::sleep(Duration::from_millis(50));
            }
        }
        servers
    }

    /// Whether the server knows its cluster's JetStream meta leader.
    pub fn jetstream_leader_known(&self) -> bool {
        let body = self.monitor("/jsz").unwrap_or_default();
        body.split("\"meta_cluster\"")
            .nth(1)
            .and_then(|rest| rest.split("\"leader\":").nth(1))
            .is_some_and(|rest| {
                rest.trim_start().starts_with("\"") && !rest.trim_start().starts_with("\"\"")
            })
    }

    /// Its server name in the cluster.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Kills the server with SIGKILL, as a crash would, and waits until it has exited. Its
    /// configuration and JetStream store stay for [`NatsServer::restart`].
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the server's process (SIGSTOP) without closing anything: its clients' requests
    /// wait unanswered, as behind a stalled network, until [`NatsServer::resume`].
    /// Returns once every thread of it has stopped: the signal only asks, and under load a
    /// thread may still answer a request that came just after it.
    pub fn pause(&self) {
        self.signal("-STOP");
        let deadline = Instant::now() + START_TIMEOUT;
        while !self.stopped() {
            assert!(
                Instant::now() < deadline,
                "nats-server {} not stopped within {START_TIMEOUT:?} of SIGSTOP",
                self.child.id()
            );
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// Whether every thread of the server's process is stopped (state `T` in `/proc`).
    fn stopped(&self) -> bool {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.child.id())) else {
            return false;
        };
        tasks.flatten().all(|task| {
            std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
                // The state follows the command's closing parenthesis.
                stat.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
            })
        })
    }

    /// Lets a server stopped by [`NatsServer::pause`] go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(status.success(), "kill {signal} the NATS server");
    }

    /// Whether the server process is running (not killed, not exited).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Starts the server again after [`NatsServer::kill`], on the same ports with the same
    /// store (its routes to the others come back by themselves), and waits until it accepts
    /// clients. Panics when it exits at start (a port taken meanwhile) or does not listen in
    /// time.
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn_quiet(
            nats_program(),
            &self.dir.join("nats.conf"),
            "nats-server",
            "nats-server",
        );
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "nats-server {} exited on restart ({status}); port {} taken?",
                    self.name, self.port
                );
            }
            assert!(
                Instant::now() < deadline,
                "nats-server {} does not listen on {} within {START_TIMEOUT:?} of its restart",
                self.name,
                self.port
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (bounded by `within`) until the server says through `/healthz` that its JetStream
    /// is current: it has caught up with the meta group and with every stream and consumer it
    /// holds a replica of. A restarted server listens long before that, and a cluster that loses
    /// another server meanwhile has no quorum for what it has not caught up on. Panics
    /// otherwise.
    pub fn wait_current(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let health = self.monitor("/healthz").unwrap_or_default();
            if health.contains("\"ok\"") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server {} not current within {within:?}: {health}",
                self.name
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// What this server's `/jsz` says of JetStream stream `stream` (its `config`, `state` and
    /// `cluster`: leader and replicas), if the server hosts a replica of it.
    pub fn stream_detail(&self, stream: &str) -> Option<serde_json::Value> {
        let body = self.monitor("/jsz?accounts=true&streams=true&config=true")?;
        let jsz: serde_json::Value = serde_json::from_str(&body).ok()?;
        jsz["account_details"]
            .as_array()?
            .iter()
            .filter_map(|account| account["stream_detail"].as_array())
            .flatten()
            .find(|detail| detail["name"] == stream)
            .cloned()
    }

    /// The name of the server this one sees leading JetStream stream `stream`, if it hosts a
    /// replica of it and knows a leader.
    pub fn stream_leader_seen(&self, stream: &str) -> Option<String> {
        self.stream_detail(stream)?["cluster"]["leader"]
            .as_str()
            .filter(|leader| !leader.is_empty())
            .map(str::to_owned)
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The body of a monitoring endpoint (`/connz?subs=1`, `/routez`, `/jsz`...), `None` if
    /// the server does not answer.
    pub fn monitor(&self, path: &str) -> Option<String> {
        http_get(self.http_port, path)
    }

    /// How many routes the server has now (0 if its monitoring port does not answer).
    pub fn routes(&self) -> usize {
        self.monitor("/routez")
            .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
            .and_then(|routez| routez["num_routes"].as_u64())
            .map_or(0, |routes| routes as usize)
    }
}

/// Which of `servers` leads JetStream stream `stream` now: the one that names itself as its
/// leader (a follower's view may lag behind an election), `None` while it has no leader.
pub fn stream_leader(servers: &[NatsServer], stream: &str) -> Option<usize> {
    servers
        .iter()
        .position(|server| server.stream_leader_seen(stream).as_deref() == Some(server.name()))
}

/// Waits (bounded by `within`) until one of `servers` leads `stream`; its index. Panics
/// otherwise.
pub fn wait_for_stream_leader(servers: &[NatsServer], stream: &str, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        if let Some(leader) = stream_leader(servers, stream) {
            return leader;
        }
        assert!(
            Instant::now() < deadline,
            "no server leads stream {stream} within {within:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// The body of `GET path` on 127.0.0.1:`port`, read to the end (HTTP/1.0, so the server
/// closes).
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Collects a pipe in a thread.
pub fn drain_pipe(pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        let _ = BufReader::new(pipe).read_to_string(&mut text);
        text
    })
}

/// Runs a peer to its end within `timeout`; its stdout, or why it failed.
pub fn run_peer(command: &mut Command, timeout: Duration) -> Result<String, String> {
    run_peer_fed(command, &[], timeout)
}

/// As [`run_peer`], with `input` on the peer's standard input.
pub fn run_peer_fed(
    command: &mut Command,
    input: &[u8],
    timeout: Duration,
) -> Result<String, String> {
    let what = format!("{command:?}");
    let mut child = command
        .stdin(if input.is_empty() {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what}: does not start: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let input = input.to_vec();
        // In a thread: a peer that does not read would otherwise block the test on a full pipe.
        thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
    }
    let stdout = drain_pipe(child.stdout.take().expect("stdout is piped"));
    let stderr = drain_pipe(child.stderr.take().expect("stderr is piped"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    match status {
        Some(status) if status.success() => Ok(stdout.trim().to_owned()),
        Some(status) => Err(format!(
            "{what}: {status}\n{}{}",
            stderr.trim(),
            stdout.trim()
        )),
        None => Err(format!(
            "{what}: still running after {timeout:?}, killed\n{stderr}"
        )),
    }
}
