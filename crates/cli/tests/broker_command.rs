//! Runs the built `rallymq` binary: listeners on free ports, MQTT over TCP, HTTP on the
//! WebSocket port, graceful shutdown on SIGTERM and SIGINT, `--config`, and the exit codes of
//! bad arguments. Every wait is bounded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_rallymq");
/// How long the broker gets to print its listening lines.
const STARTUP: Duration = Duration::from_secs(20);
/// How long the broker gets to exit after a signal.
const EXIT: Duration = Duration::from_secs(10);
/// How long one socket read may block.
const IO: Duration = Duration::from_secs(10);

/// A running `rallymq` process, killed if a test fails before it exits.
struct Running {
    child: Child,
    lines: Receiver<String>,
    /// Every stderr line so far, for assertions and failure messages.
    log: Arc<Mutex<Vec<String>>>,
}

impl Running {
    /// Runs `rallymq ARGS`; a broker keeps nothing on disk unless the test names a
    /// `--data-dir` (tests run side by side, and the default directory is shared).
    fn start(args: &[&str]) -> Self {
        Self::start_under(&[], args)
    }

    /// As `start`, run by `wrapper` (a command and its arguments, which runs the rest, such
    /// as `prlimit --nofile=N`).
    fn start_under(wrapper: &[&str], args: &[&str]) -> Self {
        let in_memory = (args.first() == Some(&"broker") && !args.contains(&"--data-dir"))
            .then_some("--in-memory");
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut command = Command::new(program);
                command.args(rest).arg(BIN);
                command
            }
            None => Command::new(BIN),
        };
        let mut child = command
            .args(args)
            .args(in_memory)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the rallymq binary runs");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (sender, lines) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let kept = log.clone();
        // Drains stderr until the process closes it, so the broker never blocks on a full pipe.
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                kept.lock().expect("no panic while held").push(line.clone());
                let _ = sender.send(line);
            }
        });
        Self { child, lines, log }
    }

    fn log(&self) -> String {
        self.log.lock().expect("no panic while held").join("\n")
    }

    /// Reads stderr until `tcp` TCP and `ws` WebSocket listening lines have appeared, and
    /// returns their ports.
    fn listening(&mut self, tcp: usize, ws: usize) -> (Vec<u16>, Vec<u16>) {
        let deadline = Instant::now() + STARTUP;
        let (mut tcp_ports, mut ws_ports) = (Vec::new(), Vec::new());
        while tcp_ports.len() < tcp || ws_ports.len() < ws {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.lines.recv_timeout(left) {
                Ok(line) => line,
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no listening lines within {STARTUP:?}:\n{}", self.log())
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("rallymq exited before listening:\n{}", self.log())
                }
            };
            // With --log-format json, the line's text is its `message`.
            let line = json_object(&line)
                .and_then(|object| object.get("message")?.as_str().map(str::to_owned))
                .unwrap_or(line);
            if let Some(port) = port_after(&line, "listening: tcp://127.0.0.1:", "") {
                tcp_ports.push(port);
            } else if let Some(port) = port_after(&line, "listening: ws://127.0.0.1:", "/mqtt") {
                ws_ports.push(port);
            }
        }
        (tcp_ports, ws_ports)
    }

    /// Reads stderr until `count` lines are JSON objects whose `message` is `message`, and
    /// returns them, within [`STARTUP`].
    fn json_events(&mut self, message: &str, count: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + STARTUP;
        let mut found = Vec::new();
        while found.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = self.lines.recv_timeout(left) else {
                panic!(
                    "not {count} {message:?} lines within {STARTUP:?}:\n{}",
                    self.log()
                )
            };
            found.extend(json_object(&line).filter(|object| object["message"] == message));
        }
        found
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit, at most [`EXIT`].
    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + EXIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait works") {
                // Let the reader thread take the last lines.
                let until = Instant::now() + Duration::from_secs(2);
                while self
                    .lines
                    .recv_timeout(until.saturating_duration_since(Instant::now()))
                    .is_ok()
                {}
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "rallymq still running {EXIT:?} after the signal:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The port in `line` just after `prefix`, if the rest of the address is exactly `suffix`.
fn port_after(line: &str, prefix: &str, suffix: &str) -> Option<u16> {
    let rest = &line[line.find(prefix)? + prefix.len()..];
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let after = &rest[digits..];
    if !(after.starts_with(suffix) && after[suffix.len()..].trim().is_empty()) {
        return None;
    }
    rest[..digits].parse().ok()
}

/// `line` as a JSON object, if it is one.
fn json_object(line: &str) -> Option<serde_json::Value> {
    serde_json::from_str(line)
        .ok()
        .filter(serde_json::Value::is_object)
}

/// A unique scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("rallymq-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("the target tmp dir is writable");
    dir
}

fn runs_to_exit(args: &[&str]) -> (ExitStatus, String) {
    let mut running = Running::start(args);
    let status = running.wait();
    (status, running.log())
}

// --- a few bytes of MQTT 5, written out by hand -------------------------------------------

fn connect(port: u16, client_id: &str) -> TcpStream {
    connect_with(port, 5, &[], client_id)
}

/// A clean CONNECT with protocol `level` (4: MQTT 3.1.1, 5: MQTT 5, with `properties`).
fn connect_with(port: u16, level: u8, properties: &[u8], client_id: &str) -> TcpStream {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, IO).expect("the TCP listener accepts");
    stream.set_read_timeout(Some(IO)).expect("timeouts work");
    stream.set_write_timeout(Some(IO)).expect("timeouts work");
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', level, 0x02, 0, 60];
    if level == 5 {
        body.push(properties.len() as u8);
        body.extend_from_slice(properties);
    }
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);
    stream.write_all(&packet).expect("CONNECT is sent");
    stream
}

/// One MQTT packet: its first byte and its body.
fn read_packet(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut byte = [0u8];
    stream.read_exact(&mut byte).expect("a packet arrives");
    let first = byte[0];
    let (mut length, mut shift) = (0usize, 0);
    loop {
        stream.read_exact(&mut byte).expect("a remaining length");
        length |= usize::from(byte[0] & 0x7f) << shift;
        if byte[0] & 0x80 == 0 {
            break;
        }
        shift += 7;
        assert!(shift <= 21, "remaining length too long");
    }
    let mut body = vec![0; length];
    stream
        .read_exact(&mut body)
        .expect("the packet body arrives");
    (first, body)
}

/// Reads a CONNACK, checks it accepts, and returns its Maximum Packet Size property.
fn expect_connack(stream: &mut TcpStream) -> Option<u32> {
    let (first, body) = read_packet(stream);
    assert_eq!(first, 0x20, "CONNACK expected, got {first:#04x} {body:?}");
    assert_eq!(body.get(1), Some(&0x00), "CONNACK reason Success: {body:?}");
    let (length, used) = varint(&body[2..]);
    let mut properties = &body[2 + used..2 + used + length];
    let mut max_packet_size = None;
    while let [id, rest @ ..] = properties {
        let size = match id {
            0x24 | 0x25 | 0x28 | 0x29 | 0x2A => 1,
            0x13 | 0x21 | 0x22 => 2,
            0x11 | 0x27 => 4,
            0x12 | 0x15 | 0x16 | 0x1A | 0x1C | 0x1F => {
                2 + usize::from(u16::from_be_bytes([rest[0], rest[1]]))
            }
            0x26 => {
                let key = 2 + usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                key + 2 + usize::from(u16::from_be_bytes([rest[key], rest[key + 1]]))
            }
            other => panic!("unexpected CONNACK property {other:#04x}"),
        };
        if *id == 0x27 {
            max_packet_size = Some(u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]));
        }
        properties = &rest[size..];
    }
    max_packet_size
}

fn varint(bytes: &[u8]) -> (usize, usize) {
    let mut value = 0;
    for (i, byte) in bytes.iter().enumerate().take(4) {
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return (value, i + 1);
        }
    }
    panic!("bad variable byte integer");
}

// --- the tests ------------------------------------------------------------------------------

#[test]
fn serves_tcp_and_http_then_shuts_down_gracefully_on_sigterm() {
    let mut broker = Running::start(&["broker", "--tcp", "127.0.0.1:0", "--ws", "127.0.0.1:0"]);
    let (tcp, ws) = broker.listening(1, 1);

    let mut client = connect(tcp[0], "cli-test");
    expect_connack(&mut client);

    let mut http = TcpStream::connect(("127.0.0.1", ws[0])).expect("the WebSocket port accepts");
    http.set_read_timeout(Some(IO)).expect("timeouts work");
    http.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .expect("the request is sent");
    let mut response = String::new();
    http.read_to_string(&mut response).expect("a response");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.to_ascii_lowercase().contains("text/html"),
        "{response}"
    );
    assert!(
        response.to_ascii_lowercase().contains("<html"),
        "{response}"
    );

    broker.signal("TERM");
    let (first, body) = read_packet(&mut client);
    assert_eq!(
        first, 0xE0,
        "DISCONNECT expected, got {first:#04x} {body:?}"
    );
    assert_eq!(
        body.first(),
        Some(&0x8B),
        "reason Server shutting down: {body:?}"
    );

    let status = broker.wait();
    assert_eq!(status.code(), Some(0), "{status}:\n{}", broker.log());
}

#[test]
fn sigint_also_shuts_down_with_exit_code_0() {
    let mut broker = Running::start(&["broker", "--tcp", "127.0.0.1:0"]);
    broker.listening(1, 0);
    broker.signal("INT");
    let status = broker.wait();
    assert_eq!(status.code(), Some(0), "{status}:\n{}", broker.log());
}

#[test]
fn config_file_sets_listeners_and_limits_and_flags_override_it() {
    let dir = scratch("config");
    let path = dir.join("rallymq.toml");
    std::fs::write(
        &path,
        "tcp = [\"127.0.0.1:0\"]\nws = [\"127.0.0.1:0\"]\nmax_packet_size = 4096\n\
         sys_interval_secs = 0\n",
    )
    .expect("the config file is written");
    let path = path.to_str().expect("a UTF-8 path");

    // The file alone: both its listeners, and its packet size limit announced in CONNACK.
    let mut broker = Running::start(&["broker", "--config", path]);
    let (tcp, _) = broker.listening(1, 1);
    let mut client = connect(tcp[0], "from-file");
    assert_eq!(expect_connack(&mut client), Some(4096));
    broker.signal("TERM");
    assert_eq!(broker.wait().code(), Some(0), "{}", broker.log());

    // Flags win: --tcp replaces the file's listeners as a group (so no WebSocket listener),
    // and --max-packet-size replaces its limit.
    let mut broker = Running::start(&[
        "broker",
        "--config",
        path,
        "--tcp",
        "127.0.0.1:0",
        "--max-packet-size",
        "5000",
    ]);
    let (tcp, _) = broker.listening(1, 0);
    let mut client = connect(tcp[0], "from-flags");
    assert_eq!(expect_connack(&mut client), Some(5000));
    broker.signal("TERM");
    assert_eq!(broker.wait().code(), Some(0), "{}", broker.log());
    assert!(
        !broker.log().contains("listening: ws://"),
        "the file's ws listener must be replaced:\n{}",
        broker.log()
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_arguments_exit_with_code_2() {
    for args in [
        &["broker", "--no-such-flag"][..],
        &["broker", "--tcp", "not-an-address"],
        &["no-such-command"],
        &[],
    ] {
        let (status, log) = runs_to_exit(args);
        assert_eq!(status.code(), Some(2), "{args:?}: {status}\n{log}");
        assert!(
            log.contains("error") || log.contains("Usage"),
            "{args:?}: {log}"
        );
    }
}

#[test]
fn help_and_version_exit_with_code_0() {
    for args in [&["--help"][..], &["--version"], &["broker", "--help"]] {
        let (status, _) = runs_to_exit(args);
        assert_eq!(status.code(), Some(0), "{args:?}: {status}");
    }
}

#[test]
fn runtime_errors_are_one_line_and_exit_with_code_1() {
    let dir = scratch("errors");
    let bad_key = dir.join("bad-key.toml");
    std::fs::write(&bad_key, "tcp = [\"127.0.0.1:0\"]\nmax_conections = 3\n").expect("written");
    let missing = dir.join("missing.toml");
    let taken = TcpListener::bind("127.0.0.1:0").expect("a free port");
    let taken = taken.local_addr().expect("bound").to_string();

    let cases: [(Vec<&str>, &str); 3] = [
        (
            vec!["broker", "--config", bad_key.to_str().expect("UTF-8")],
            "line 2, column 1",
        ),
        (
            vec!["broker", "--config", missing.to_str().expect("UTF-8")],
            "cannot read config file",
        ),
        (vec!["broker", "--tcp", &taken], "cannot listen on"),
    ];
    for (args, expected) in cases {
        let (status, log) = runs_to_exit(&args);
        assert_eq!(status.code(), Some(1), "{args:?}: {status}\n{log}");
        let errors: Vec<&str> = log.lines().filter(|l| l.starts_with("error: ")).collect();
        assert_eq!(errors.len(), 1, "{args:?}: one error line expected:\n{log}");
        assert!(errors[0].contains(expected), "{args:?}: {log}");
        assert!(
            !log.contains("listening:"),
            "{args:?}: nothing listens:\n{log}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// CPU time (user and system) a process has used so far, from /proc.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc is there");
    // The fields after the command name, which may hold spaces, in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("a stat line")
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // The kernel's USER_HZ, 100 on every Linux this runs on.
    Duration::from_millis(ticks * 10)
}

/// With its file descriptors used up, the broker backs off instead of spinning on failing
/// accepts, and serves again once descriptors are free.
#[test]
fn out_of_file_descriptors_the_broker_backs_off_and_recovers() {
    let mut broker = Running::start_under(
        &["prlimit", "--nofile=48:48"],
        &["broker", "--tcp", "127.0.0.1:0", "--sys-interval-secs", "0"],
    );
    let (tcp, _) = broker.listening(1, 0);
    // More idle sockets than the broker has descriptors: the rest wait in the backlog, and
    // every accept fails with EMFILE.
    let idle: Vec<TcpStream> = (0..80)
        .map(|_| TcpStream::connect(("127.0.0.1", tcp[0])).expect("the backlog takes it"))
        .collect();
    thread::sleep(Duration::from_millis(300));
    let pid = broker.child.id();
    let before = cpu_time(pid);
    thread::sleep(Duration::from_secs(2));
    let used = cpu_time(pid) - before;
    assert!(
        used < Duration::from_millis(500),
        "the broker used {used:?} of CPU in 2 s while out of descriptors:\n{}",
        broker.log()
    );
    assert!(
        broker.log().contains("out of file descriptors"),
        "logged:\n{}",
        broker.log()
    );
    drop(idle);
    let mut client = connect(tcp[0], "after-emfile");
    expect_connack(&mut client);
    broker.signal("TERM");
    assert_eq!(broker.wait().code(), Some(0), "{}", broker.log());
}

/// The broker's resident memory, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc is there");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line")
}

/// Memory is given back after load: 100,000 subscriptions from one client, gone when it
/// leaves, leave the broker within 20% of its resident memory before them (the subscription
/// index gives its room back, and the allocator its pages).
#[test]
fn memory_returns_to_its_baseline_after_100000_subscriptions_come_and_go() {
    use rallymq_client::{Client, ClientOptions, QoS, Subscription, TopicFilter};

    let mut broker =
        Running::start(&["broker", "--tcp", "127.0.0.1:0", "--sys-interval-secs", "0"]);
    let (tcp, _) = broker.listening(1, 0);
    let pid = broker.child.id();
    let url = format!("mqtt://127.0.0.1:{}", tcp[0]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let session = |subscriptions: usize| {
        let url = url.clone();
        runtime.block_on(async move {
            let (client, _messages, _) = Client::connect(ClientOptions::new(&url))
                .await
                .expect("connects");
            let filters: Vec<usize> = (0..subscriptions).collect();
            for chunk in filters.chunks(500) {
                let batch = chunk
                    .iter()
                    .map(|n| {
                        let filter = format!("fleet/{}/{}/temperature", n / 1000, n % 1000);
                        Subscription::new(TopicFilter::new(filter).unwrap(), QoS::AtMostOnce)
                    })
                    .collect();
                client
                    .subscribe_many(batch, Default::default())
                    .await
                    .expect("subscribed");
            }
            client.disconnect().await.expect("disconnected");
        })
    };
    // A first small client, so that the baseline includes what any connection leaves.
    session(10);
    thread::sleep(Duration::from_secs(1));
    let baseline = rss_kib(pid);
    session(100_000);
    let peak = rss_kib(pid);
    let deadline = Instant::now() + Duration::from_secs(45);
    let mut now = peak;
    while now * 5 > baseline * 6 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(500));
        now = rss_kib(pid);
    }
    assert!(
        now * 5 <= baseline * 6,
        "resident memory {baseline} KiB before, {peak} KiB with the subscriptions, {now} KiB \
         45 s after they went"
    );
    broker.signal("TERM");
    assert_eq!(broker.wait().code(), Some(0), "{}", broker.log());
}

#[test]
fn log_format_json_one_object_per_connect_refusal_and_disconnect() {
    let mut broker = Running::start(&["broker", "--tcp", "127.0.0.1:0", "--log-format", "json"]);
    let (tcp, _) = broker.listening(1, 0);

    // MQTT 5, leaving with DISCONNECT 0x04; MQTT 3.1.1, dropping its connection; MQTT 5 with an
    // authentication method the broker does not offer, refused with 0x8C.
    let mut v5 = connect(tcp[0], "json-v5");
    expect_connack(&mut v5);
    let mut v311 = connect_with(tcp[0], 4, &[], "json-v311");
    assert_eq!(
        read_packet(&mut v311),
        (0x20, vec![0, 0]),
        "CONNACK accepted"
    );
    let connected = broker.json_events("client connected", 2);
    v5.write_all(&[0xE0, 0x01, 0x04])
        .expect("DISCONNECT is sent");
    drop(v311);
    let disconnected = broker.json_events("client disconnected", 2);
    let mut refused = connect_with(tcp[0], 5, &[0x15, 0, 4, b'S', b'C', b'R', b'M'], "json-no");
    let (first, body) = read_packet(&mut refused);
    assert_eq!((first, body.get(1)), (0x20, Some(&0x8C)), "CONNACK refused");
    let refusals = broker.json_events("connection refused", 1);

    let by_client = |events: &[serde_json::Value], id: &str| {
        let found: Vec<_> = events.iter().filter(|e| e["client_id"] == id).collect();
        assert_eq!(found.len(), 1, "one line for {id}: {events:?}");
        found[0].clone()
    };
    for (id, protocol) in [("json-v5", "5.0"), ("json-v311", "3.1.1")] {
        let line = by_client(&connected, id);
        assert_eq!(line["level"], "INFO", "{line}");
        assert!(line["timestamp"].is_string(), "{line}");
        assert_eq!(line["protocol"], protocol, "{line}");
        assert_eq!(line["listener"], "tcp", "{line}");
        assert_eq!(line["reason_code"], "0x00", "{line}");
        assert_eq!(line["keep_alive"], 60, "{line}");
        let peer: SocketAddr = line["peer"]
            .as_str()
            .and_then(|peer| peer.parse().ok())
            .unwrap_or_else(|| panic!("peer is an address: {line}"));
        assert_eq!(peer.ip(), std::net::Ipv4Addr::LOCALHOST, "{line}");
    }
    let v5_left = by_client(&disconnected, "json-v5");
    assert_eq!(v5_left["cause"], "client", "{v5_left}");
    assert_eq!(v5_left["reason_code"], "0x04", "{v5_left}");
    assert_eq!(v5_left["protocol"], "5.0", "{v5_left}");
    assert!(v5_left["duration_secs"].is_f64(), "{v5_left}");
    assert_eq!(
        v5_left["peer"],
        by_client(&connected, "json-v5")["peer"],
        "the same address as at connect"
    );
    let v311_left = by_client(&disconnected, "json-v311");
    assert_eq!(v311_left["cause"], "connection_lost", "{v311_left}");
    assert_eq!(v311_left["protocol"], "3.1.1", "{v311_left}");
    assert!(
        v311_left.get("reason_code").is_none(),
        "no DISCONNECT: {v311_left}"
    );
    let refusal = &refusals[0];
    assert_eq!(refusal["client_id"], "json-no", "{refusal}");
    assert_eq!(refusal["reason_code"], "0x8C", "{refusal}");
    assert_eq!(refusal["protocol"], "5.0", "{refusal}");

    broker.signal("TERM");
    assert_eq!(broker.wait().code(), Some(0), "{}", broker.log());
    // Every line, from startup to shutdown, is one JSON object.
    let log = broker.log();
    for line in log.lines() {
        assert!(
            json_object(line).is_some(),
            "not a JSON object: {line}\n{log}"
        );
    }
}
