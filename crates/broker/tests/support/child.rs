//! Cluster nodes in child processes, for the tests that must kill a node for real: dropping or
//! shutting down a `BrokerHandle` is a clean stop, which is not what they test.
//!
//! A child is the test binary itself, started again to run only its ignored `child_node` test,
//! whose body is [`run_child_node`]: it starts a broker from the environment it is given,
//! prints its address and serves until its standard input closes (or [`CHILD_LIFETIME`]).
//! Each test file that starts children has that test:
//!
//! ```ignore
//! #[test]
//! #[ignore = "run by the tests of this file in a child process"]
//! fn child_node() {
//!     support::child::run_child_node();
//! }
//! ```

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rallymq_broker::{ClusterConfig, Storage};
use rallymq_test_support::NatsServer;

use super::{WAIT, start_broker, tcp_addr};

/// The NATS servers' URLs, comma-separated: what makes [`run_child_node`] start a node.
const CHILD_NATS: &str = "RALLYMQ_TEST_CHILD_NATS";
/// The child node's id.
const CHILD_ID: &str = "RALLYMQ_TEST_CHILD_NODE_ID";
/// The child node's data directory, if it keeps one.
const CHILD_DATA: &str = "RALLYMQ_TEST_CHILD_DATA_DIR";
/// The port of the child's MQTT listener on 127.0.0.1, if not any free one: a node restarted on
/// the same port is found again by clients that know it.
const CHILD_PORT: &str = "RALLYMQ_TEST_CHILD_PORT";
/// What the child prints before its address.
const CHILD_ADDR: &str = "rallymq-child-node-tcp=";
/// The longest a child node serves if nobody closes its standard input.
pub const CHILD_LIFETIME: Duration = Duration::from_secs(300);

/// The body of the ignored `child_node` test (see the module's documentation). With `RUST_LOG`
/// set, the node logs to its standard error (see [`ChildOptions::log`]).
pub fn run_child_node() {
    let (Ok(nats), Ok(id)) = (std::env::var(CHILD_NATS), std::env::var(CHILD_ID)) else {
        panic!("{CHILD_NATS} and {CHILD_ID} are not set: this is run by the other tests");
    };
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let data_dir = std::env::var_os(CHILD_DATA);
    let port: u16 = std::env::var(CHILD_PORT)
        .ok()
        .map(|port| port.parse().expect("a port number"))
        .unwrap_or(0);
    let urls: Vec<String> = nats.split(',').map(str::to_owned).collect();
    let node = runtime.block_on(async {
        start_broker(|config| {
            config.tcp = vec![SocketAddr::from(([127, 0, 0, 1], port))];
            config.cluster = Some(ClusterConfig {
                node_id: Some(id),
                ..ClusterConfig::new(urls)
            });
            if let Some(dir) = data_dir {
                config.storage = Storage::Directory(dir.into());
            }
        })
        .await
    });
    println!("{CHILD_ADDR}{}", tcp_addr(&node));
    // Serves (on the runtime's threads) until the parent closes stdin or dies, or kills this
    // process.
    let (closed_tx, closed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = std::io::Read::read(&mut std::io::stdin(), &mut [0u8; 1]);
        let _ = closed_tx.send(());
    });
    let _ = closed.recv_timeout(CHILD_LIFETIME);
    drop(node);
}

/// How to start a child node.
#[derive(Debug, Clone)]
pub struct ChildOptions {
    /// The NATS servers the node knows, in this order.
    pub nats: Vec<String>,
    /// Its node id.
    pub id: String,
    /// Where it keeps its store (in memory without).
    pub data_dir: Option<PathBuf>,
    /// Its MQTT port on 127.0.0.1 (0: any free one).
    pub port: u16,
    /// Where its standard error goes (its log, with `RUST_LOG` set in the test's environment,
    /// which the child inherits); discarded without.
    pub log: Option<PathBuf>,
}

impl ChildOptions {
    /// A node `id` on `nats`, in memory, on any port, its log discarded.
    pub fn new(nats: &[&NatsServer], id: &str) -> Self {
        Self {
            nats: nats.iter().map(|server| server.url()).collect(),
            id: id.to_owned(),
            data_dir: None,
            port: 0,
            log: None,
        }
    }
}

/// A node in a child process, killed when dropped.
pub struct ChildNode {
    process: Child,
    /// Its MQTT over TCP address.
    pub addr: SocketAddr,
}

impl ChildNode {
    /// A node `id` on the NATS server `nats`, in memory.
    pub fn start(nats: &NatsServer, id: &str) -> Self {
        Self::spawn(&ChildOptions::new(&[nats], id))
    }

    /// A node `id` on the NATS server `nats`, keeping its sessions in `data_dir` if given.
    pub fn start_with(nats: &NatsServer, id: &str, data_dir: Option<&Path>) -> Self {
        Self::spawn(&ChildOptions {
            data_dir: data_dir.map(Path::to_path_buf),
            ..ChildOptions::new(&[nats], id)
        })
    }

    /// Starts a node as `options` say and waits (bounded) until it prints its address.
    pub fn spawn(options: &ChildOptions) -> Self {
        let mut command = Command::new(std::env::current_exe().expect("this test binary"));
        if let Some(dir) = &options.data_dir {
            command.env(CHILD_DATA, dir);
        }
        let stderr = match &options.log {
            Some(path) => Stdio::from(
                File::options()
                    .create(true)
                    .append(true)
                    .open(path)
                    .expect("the child's log file"),
            ),
            None => Stdio::null(),
        };
        let mut process = command
            .args(["child_node", "--exact", "--ignored", "--nocapture"])
            .env(CHILD_NATS, options.nats.join(","))
            .env(CHILD_ID, &options.id)
            .env(CHILD_PORT, options.port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("the child node starts");
        let stdout = process.stdout.take().expect("its stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Some(addr) = line.strip_prefix(CHILD_ADDR) {
                    let _ = tx.send(addr.parse::<SocketAddr>().expect("an address"));
                }
            }
        });
        let addr = rx.recv_timeout(WAIT * 2).unwrap_or_else(|_| {
            panic!(
                "the child node {} does not print its address within {:?}",
                options.id,
                WAIT * 2
            )
        });
        Self { process, addr }
    }

    /// SIGKILL: the node gets no chance to leave the cluster or publish anything.
    pub fn kill(&mut self) {
        self.process.kill().expect("SIGKILL");
        self.process.wait().expect("the child ends");
    }
}

impl Drop for ChildNode {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}
