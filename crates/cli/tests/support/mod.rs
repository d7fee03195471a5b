//! What the `rallymq` command's tests share: our broker as a child process.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const RALLYMQ: &str = env!("CARGO_BIN_EXE_rallymq");

/// `rallymq broker` on free ports of 127.0.0.1 (MQTT over TCP and over WebSockets), $SYS off;
/// killed when dropped.
pub struct OurBroker {
    child: Child,
    /// The MQTT over TCP port.
    pub tcp: u16,
    /// The MQTT over WebSockets port.
    pub ws: u16,
}

impl OurBroker {
    /// Starts the broker and waits (at most 10 s) for the lines naming its ports.
    pub fn start() -> Self {
        let mut child = Command::new(RALLYMQ)
            .args(["broker", "--tcp", "127.0.0.1:0", "--ws", "127.0.0.1:0"])
            .args(["--sys-interval-secs", "0", "--in-memory"])
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("the broker starts");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let (mut tcp, mut ws) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(10);
        while tcp.is_none() || ws.is_none() {
            assert!(Instant::now() < deadline, "no listening lines");
            let line = lines.next().expect("the broker logs").expect("a line");
            let port = |prefix: &str| {
                line.split(prefix)
                    .nth(1)
                    .and_then(|rest| rest.split(['/', ' ']).next())
                    .and_then(|p| p.parse().ok())
            };
            tcp = tcp.or_else(|| port("listening: tcp://127.0.0.1:"));
            ws = ws.or_else(|| port("listening: ws://127.0.0.1:"));
        }
        // Keep draining stderr so the broker never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self {
            child,
            tcp: tcp.expect("found above"),
            ws: ws.expect("found above"),
        }
    }
}

impl Drop for OurBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
