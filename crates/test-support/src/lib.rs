//! Test helpers shared by rallymq's test suites (h2's `tests/h2-support` pattern): a real
//! Mosquitto broker on free ports, started and stopped by the test. A missing peer fails the
//! test with a clear message; it is never skipped. Also certificates made for a test
//! ([`Certificates`]).

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

/// Debian installs `mosquitto` in /usr/sbin, which may not be on a user's PATH.
pub fn mosquitto_program() -> &'static str {
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| dir.join("mosquitto").is_file())
    });
    if !on_path && Path::new("/usr/sbin/mosquitto").is_file() {
        "/usr/sbin/mosquitto"
    } else {
        "mosquitto"
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
        let child = Command::new(program)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "Mosquitto does not start ({e}): install it with `apt-get install mosquitto`"
                )
            });
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
