//! `rallymq`: the command that runs the rallymq MQTT broker (`rallymq broker`) and its
//! clients (`rallymq pub`, `rallymq sub`, with mosquitto_pub and mosquitto_sub's flags).
//!
//! `rallymq passwd FILE USER` edits a password file, as mosquitto_passwd does.
//!
//! `rallymq migrate mosquitto.conf > rallymq.toml` converts a Mosquitto configuration.
//!
//! `rallymq broker` starts a broker on the embedded defaults (MQTT over TCP on
//! 127.0.0.1:1883, HTTP and MQTT over WebSockets on 127.0.0.1:8080); `--tcp`, `--ws` and
//! `--config FILE` change that. See `rallymq broker --help` and `rallymq.example.toml`.

#![forbid(unsafe_code)]

mod allocator;
mod config;
mod migrate;
mod output;
mod passwd;
mod pubsub;
mod trace;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use rallymq_broker::Broker;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

use crate::config::{FileConfig, LogFormat, Settings};

/// How long connections get to close after SIGINT or SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// rallymq: MQTT 3.1, 3.1.1 and 5.0 over TCP and WebSockets.
#[derive(Debug, Parser)]
#[command(name = "rallymq", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// What to run.
#[derive(Debug, Subcommand)]
enum Command {
    /// Run an MQTT broker (TCP, and HTTP + MQTT over WebSockets).
    Broker(Box<BrokerArgs>),
    /// Publish messages, with mosquitto_pub's flags (-h is the host; help is --help).
    Pub(pubsub::PubArgs),
    /// Subscribe and print messages, with mosquitto_sub's flags (-h is the host; help is --help).
    Sub(pubsub::SubArgs),
    /// Add, update or delete a user of a password file, with mosquitto_passwd's flags.
    Passwd(passwd::PasswdArgs),
    /// Convert a Mosquitto configuration (mosquitto.conf) to a `broker --config` TOML file.
    Migrate(migrate::MigrateArgs),
}

/// `rallymq broker` flags. Every flag has a key of the same name (with `_` for `-`) in the
/// `--config` file; a flag given on the command line wins over the file.
#[derive(Debug, Args)]
#[command(after_help = "\
Listeners: with no --tcp or --ws (and no tcp or ws key in the config file) the broker
listens on tcp://127.0.0.1:1883 and ws://127.0.0.1:8080/mqtt. Giving any listener replaces
ALL the default listeners, as Mosquitto's `listener` does: `--tcp 0.0.0.0:1883` alone serves
no WebSockets. Port 0 binds a free port; the log names it (`listening: tcp://ADDR`).

Logs go to stderr, one line per event (--log-format json: one JSON object per line); RUST_LOG
sets the filter (default: info): at info, one line per client connect, refusal and disconnect.
GET /metrics on the HTTP listeners serves Prometheus metrics. SIGINT or SIGTERM shuts down
gracefully: MQTT 5 clients get DISCONNECT 0x8B (Server shutting down), exit code 0.
Exit codes: 0 after a clean shutdown, 1 for a runtime error (unreadable config, a port
in use), 2 for a usage error.")]
pub(crate) struct BrokerArgs {
    /// Read settings from this TOML file (see rallymq.example.toml); flags override it.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,

    /// Listen for MQTT over TCP on ADDR (repeatable). Replaces the default listeners.
    #[arg(long, value_name = "ADDR")]
    pub(crate) tcp: Vec<SocketAddr>,

    /// Listen for HTTP and MQTT over WebSockets on ADDR (repeatable). Replaces the default
    /// listeners.
    #[arg(long, value_name = "ADDR")]
    pub(crate) ws: Vec<SocketAddr>,

    /// Listen for MQTT over TLS on ADDR (repeatable; conventionally port 8883). Needs --cert and
    /// --key. Replaces the default listeners.
    #[arg(long, value_name = "ADDR", help_heading = "TLS")]
    pub(crate) tls: Vec<SocketAddr>,

    /// Listen for HTTPS and MQTT over secure WebSockets on ADDR (repeatable). Needs --cert and
    /// --key. Replaces the default listeners.
    #[arg(long, value_name = "ADDR", help_heading = "TLS")]
    pub(crate) wss: Vec<SocketAddr>,

    /// The TLS listeners' certificate chain, PEM. Reloaded on SIGHUP and when it changes.
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    pub(crate) cert: Option<PathBuf>,

    /// The TLS listeners' private key, PEM.
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    pub(crate) key: Option<PathBuf>,

    /// CA certificates, PEM, that client certificates are verified against; clients are then
    /// asked for one (--require-certificate makes it mandatory).
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    pub(crate) ca: Option<PathBuf>,

    /// Clients of the TLS listeners must present a certificate signed by --ca.
    #[arg(long, requires = "ca", help_heading = "TLS")]
    pub(crate) require_certificate: bool,

    /// Which name of a client certificate is the client's user name: cn (the Common Name) or
    /// san (the first DNS or e-mail Subject Alternative Name).
    #[arg(long, value_name = "cn|san", help_heading = "TLS")]
    pub(crate) certificate_name: Option<String>,

    /// A browser page origin allowed to open WebSockets (repeatable, such as
    /// `https://example.com`); without any, all are. Others get 403.
    #[arg(long = "allowed-origin", value_name = "ORIGIN")]
    pub(crate) allowed_origins: Vec<String>,

    /// An HTTP path where the WebSocket upgrade to MQTT is accepted (repeatable; default
    /// /mqtt and /).
    #[arg(long = "ws-path", value_name = "PATH")]
    pub(crate) ws_paths: Vec<String>,

    /// Seconds between $SYS topic updates; 0 turns $SYS off (default 10).
    #[arg(long, value_name = "SECS")]
    pub(crate) sys_interval_secs: Option<u64>,

    /// Do not serve /metrics (Prometheus text format) on the HTTP listeners. It is served by
    /// default, read-only and to anyone, like $SYS: counts and sizes, no client ids or topics.
    #[arg(long)]
    pub(crate) no_metrics: bool,

    /// How log lines are written to stderr: text (for people) or json (one JSON object per
    /// line, for log collectors).
    #[arg(long, value_name = "FORMAT", value_enum)]
    pub(crate) log_format: Option<LogFormat>,

    /// Most connections at once.
    #[arg(long, value_name = "N", help_heading = "Limits")]
    pub(crate) max_connections: Option<usize>,

    /// Seconds a new connection gets to send CONNECT.
    #[arg(long, value_name = "SECS", help_heading = "Limits")]
    pub(crate) connect_timeout_secs: Option<u64>,

    /// Largest MQTT packet accepted, in bytes.
    #[arg(long, value_name = "BYTES", help_heading = "Limits")]
    pub(crate) max_packet_size: Option<u32>,

    /// Most unacknowledged QoS 1 and 2 messages a client may send at once.
    #[arg(long, value_name = "N", help_heading = "Limits")]
    pub(crate) receive_maximum: Option<u16>,

    /// Highest topic alias a client may use.
    #[arg(long, value_name = "N", help_heading = "Limits")]
    pub(crate) topic_alias_maximum: Option<u16>,

    /// Most topic aliases the broker uses towards one MQTT 5 client (also bounded by the
    /// client's Topic Alias Maximum; 0: none; default 64).
    #[arg(long, value_name = "N", help_heading = "Limits")]
    pub(crate) outgoing_topic_alias_maximum: Option<u16>,

    /// Most QoS 1 and 2 messages in flight to one client at once.
    #[arg(long, value_name = "N", help_heading = "Limits")]
    pub(crate) max_in_flight: Option<u16>,

    /// Most messages waiting for one session; past it, messages are dropped and counted.
    #[arg(long, value_name = "N", help_heading = "Limits")]
    pub(crate) max_queued_messages: Option<usize>,

    /// Longest keep alive accepted, in seconds, as Mosquitto's max_keepalive (default 65535;
    /// 0: no limit). MQTT 5 clients asking for more, or for none, are given it as Server Keep
    /// Alive; MQTT 3.1 and 3.1.1 clients are refused (return code 2).
    #[arg(
        long,
        alias = "max-keep-alive",
        value_name = "SECS",
        help_heading = "Limits"
    )]
    pub(crate) max_keepalive: Option<u16>,

    /// Largest session expiry granted, in seconds.
    #[arg(long, value_name = "SECS", help_heading = "Limits")]
    pub(crate) max_session_expiry: Option<u32>,

    /// Most connections at once from one client IP address (0: no limit).
    #[arg(long, value_name = "N", help_heading = "Limits")]
    pub(crate) max_connections_per_ip: Option<usize>,

    /// Most new connections per second from one client IP address (0: no limit).
    #[arg(long, value_name = "N", help_heading = "Limits")]
    pub(crate) max_connection_rate_per_ip: Option<u32>,

    /// Seconds a packet may take to arrive once begun: a peer trickling one a byte at a time
    /// is closed.
    #[arg(long, value_name = "SECS", help_heading = "Limits")]
    pub(crate) packet_timeout_secs: Option<u64>,

    /// Seconds a write to a client may wait without the client taking any of it: a client
    /// that stops reading is closed.
    #[arg(long, value_name = "SECS", help_heading = "Limits")]
    pub(crate) send_timeout_secs: Option<u64>,

    /// Largest HTTP request head (the WebSocket handshake included), in bytes.
    #[arg(long, value_name = "BYTES", help_heading = "Limits")]
    pub(crate) max_http_header_size: Option<usize>,

    /// Most subscriptions one client may hold (0: no limit).
    #[arg(long, value_name = "N", help_heading = "Limits")]
    pub(crate) max_subscriptions: Option<usize>,

    /// Most levels in a topic name or filter (0: no limit).
    #[arg(long, value_name = "N", help_heading = "Limits")]
    pub(crate) max_topic_levels: Option<usize>,

    /// Longest topic name or filter, in bytes.
    #[arg(long, value_name = "BYTES", help_heading = "Limits")]
    pub(crate) max_topic_length: Option<usize>,

    /// Most bytes (topics and payloads) queued for one session; 0: no limit (Mosquitto's
    /// max_queued_bytes).
    #[arg(long, value_name = "BYTES", help_heading = "Limits")]
    pub(crate) max_queued_bytes: Option<u64>,

    /// Where persistent sessions, queued and retained messages are kept, so that every
    /// acknowledged message survives a restart or a crash (default ./rallymq-data).
    #[arg(long, value_name = "DIR", help_heading = "Storage")]
    pub(crate) data_dir: Option<PathBuf>,

    /// Keep nothing on disk: a restart loses sessions, queued and retained messages.
    #[arg(long, conflicts_with = "data_dir", help_heading = "Storage")]
    pub(crate) in_memory: bool,

    /// Clients log in with a user name and password from this file, Mosquitto's format
    /// (written by `rallymq passwd` or mosquitto_passwd). Reloaded on SIGHUP.
    #[arg(long, value_name = "FILE", help_heading = "Security")]
    pub(crate) password_file: Option<PathBuf>,

    /// Clients may log in with a JSON Web Token as their password, verified with this key: an
    /// HMAC secret (at least 32 bytes) or a PEM public key (RSA, EC, Ed25519). Reloaded on
    /// SIGHUP.
    #[arg(long, value_name = "FILE", help_heading = "Security")]
    pub(crate) jwt_key: Option<PathBuf>,

    /// The token claim holding the user name (default sub).
    #[arg(
        long,
        value_name = "CLAIM",
        requires = "jwt_key",
        help_heading = "Security"
    )]
    pub(crate) jwt_user_claim: Option<String>,

    /// Tokens must have this issuer (iss).
    #[arg(
        long,
        value_name = "ISS",
        requires = "jwt_key",
        help_heading = "Security"
    )]
    pub(crate) jwt_issuer: Option<String>,

    /// Tokens must have this audience (aud).
    #[arg(
        long,
        value_name = "AUD",
        requires = "jwt_key",
        help_heading = "Security"
    )]
    pub(crate) jwt_audience: Option<String>,

    /// Whether clients without user name and password may connect (default: true only when
    /// neither --password-file nor --jwt-key is given).
    #[arg(long, value_name = "true|false", help_heading = "Security")]
    pub(crate) allow_anonymous: Option<bool>,

    /// What each user may publish and receive, Mosquitto's acl_file format (topic, user,
    /// pattern lines with %c and %u). Reloaded on SIGHUP.
    #[arg(long, value_name = "FILE", help_heading = "Security")]
    pub(crate) acl_file: Option<PathBuf>,

    /// Join the cluster of these NATS servers (comma-separated `nats://host:port`): clients of
    /// every node share one MQTT space. See crates/broker/CLUSTER.md for what crosses nodes.
    #[arg(
        long,
        value_name = "URL,...",
        value_delimiter = ',',
        help_heading = "Cluster"
    )]
    pub(crate) cluster: Vec<String>,

    /// This node's id in the cluster (ASCII letters, digits, - and _); default: generated once
    /// and kept in the data directory's node-id file.
    #[arg(
        long,
        value_name = "ID",
        requires = "cluster",
        help_heading = "Cluster"
    )]
    pub(crate) node_id: Option<String>,

    /// How many NATS servers keep a copy of each QoS 1/2 message in the cluster's stream (1 to
    /// 5), when this node creates it; default: the servers NATS tells of, at most 3.
    #[arg(
        long,
        value_name = "N",
        value_parser = clap::value_parser!(u8).range(1..=5),
        requires = "cluster",
        help_heading = "Cluster"
    )]
    pub(crate) cluster_replicas: Option<u8>,

    /// Where the stream keeps its messages: file (default; survives the servers' restarts) or
    /// memory.
    #[arg(
        long,
        value_name = "file|memory",
        requires = "cluster",
        help_heading = "Cluster"
    )]
    pub(crate) cluster_storage: Option<config::ClusterStorage>,

    /// How long the stream keeps a message, in seconds (default 86400; 0: no age limit): a node
    /// away longer misses what it held, and NATS removes its consumer.
    #[arg(
        long,
        value_name = "SECS",
        requires = "cluster",
        help_heading = "Cluster"
    )]
    pub(crate) cluster_max_age_secs: Option<u64>,

    /// The most bytes the stream keeps, its oldest messages dropped past it (default: no limit).
    #[arg(
        long,
        value_name = "BYTES",
        requires = "cluster",
        help_heading = "Cluster"
    )]
    pub(crate) cluster_max_bytes: Option<u64>,
    /// A user who may use the admin HTTP API (/api/v1/) from anywhere, logging in with HTTP
    /// Basic (password file) or a Bearer token; repeat for several. A token whose role claim
    /// holds "admin" is an admin too.
    #[arg(long = "admin-user", value_name = "USER", help_heading = "Admin API")]
    pub(crate) admin_users: Vec<String>,

    /// Where the admin API answers requests without credentials from: loopback (the default),
    /// anywhere, or nowhere.
    #[arg(
        long,
        value_name = "loopback|anywhere|nowhere",
        help_heading = "Admin API"
    )]
    pub(crate) admin_open_to: Option<String>,
}

fn main() -> ExitCode {
    // Usage errors print clap's message and exit with code 2; --help and --version exit 0.
    let cli = Cli::parse();
    allocator::configure();
    if !matches!(cli.command, Command::Broker(_)) {
        init_logging(LogFormat::Text);
    }
    let result = match cli.command {
        // Logging starts once the config file has said which format.
        Command::Broker(args) => run_broker(*args),
        Command::Pub(args) => return client_exit(pubsub::run_pub(args)),
        Command::Sub(args) => return client_exit(pubsub::run_sub(args)),
        Command::Migrate(args) => migrate::run(&args),
        Command::Passwd(args) => {
            return match passwd::run(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(message) => {
                    eprintln!("{message}");
                    ExitCode::FAILURE
                }
            };
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The exit code of `pub` or `sub`, with the error on stderr as Mosquitto's clients print it.
fn client_exit(result: Result<(), pubsub::Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("Error: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// Logs to stderr, filtered by RUST_LOG (default `info`): one compact line per event, or one
/// JSON object per line (the event's fields at the top level, beside `timestamp`, `level`,
/// `target` and `message`).
fn init_logging(format: LogFormat) {
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .from_env_lossy();
    let logger = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logger
            .compact()
            .with_ansi(std::io::stderr().is_terminal())
            .init(),
        LogFormat::Json => logger
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}

/// The settings of the config file (if any) with the flags laid over them.
fn broker_settings(args: &BrokerArgs) -> Result<Settings, String> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    Ok(Settings::from_file(file).with_flags(args))
}

/// The broker configuration from the config file (if any) and the flags.
#[cfg(test)]
fn broker_config(args: &BrokerArgs) -> Result<rallymq_broker::BrokerConfig, String> {
    broker_settings(args)?.into_broker_config()
}

fn run_broker(args: BrokerArgs) -> Result<(), String> {
    let settings = broker_settings(&args)?;
    init_logging(settings.log_format());
    let config = settings.into_broker_config()?;
    let runtime =
        allocator::runtime(None).map_err(|e| format!("cannot start the tokio runtime: {e}"))?;
    runtime.block_on(async move {
        // Handlers first: a signal that arrives once the listeners are up must not kill us.
        let mut signals = Signals::new()?;
        let broker = Broker::start(config).await.map_err(|e| e.to_string())?;
        let signal = loop {
            match signals.recv().await {
                "SIGHUP" => {
                    // A broken file is reported; what is in force stays.
                    if let Err(error) = broker.reload() {
                        warn!("SIGHUP: {error}; keeping the previous files");
                    }
                }
                signal => break signal,
            }
        };
        info!("{signal} received: shutting down (up to {SHUTDOWN_GRACE:?})");
        tokio::select! {
            () = broker.shutdown(SHUTDOWN_GRACE) => {
                info!("shut down");
                Ok(())
            }
            signal = signals.recv() => {
                warn!("{signal} received again: exiting without waiting");
                Err(format!("{signal} received during shutdown"))
            }
        }
    })
}

/// SIGINT (Ctrl-C) and, on Unix, SIGTERM and SIGHUP (reload).
struct Signals {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    #[cfg(unix)]
    fn new() -> Result<Self, String> {
        use tokio::signal::unix::{SignalKind, signal};
        let install = |kind, name| {
            signal(kind).map_err(|e| format!("cannot install the {name} handler: {e}"))
        };
        Ok(Self {
            terminate: install(SignalKind::terminate(), "SIGTERM")?,
            interrupt: install(SignalKind::interrupt(), "SIGINT")?,
            hangup: install(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    #[cfg(not(unix))]
    fn new() -> Result<Self, String> {
        Ok(Self {})
    }

    /// Waits for the next signal and names it.
    #[cfg(unix)]
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.hangup.recv() => "SIGHUP",
        }
    }

    #[cfg(not(unix))]
    async fn recv(&mut self) -> &'static str {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot wait for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
        "Ctrl-C"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use rallymq_broker::BrokerConfig;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    fn parse(args: &[&str]) -> BrokerArgs {
        let cli = Cli::try_parse_from(args).expect("valid arguments");
        match cli.command {
            Command::Broker(args) => *args,
            other => panic!("not the broker command: {other:?}"),
        }
    }

    #[test]
    fn cluster_flag_takes_comma_separated_servers_and_a_node_id() {
        let config = broker_config(&parse(&[
            "rallymq",
            "broker",
            "--cluster",
            "nats://10.0.0.1:4222,nats://10.0.0.2:4222",
            "--node-id",
            "b",
        ]))
        .expect("valid");
        let cluster = config.cluster.expect("a cluster");
        assert_eq!(
            cluster.servers,
            ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"]
        );
        assert_eq!(cluster.node_id.as_deref(), Some("b"));
        assert_eq!(cluster.stream, rallymq_broker::StreamSettings::default());
        assert!(Cli::try_parse_from(["rallymq", "broker", "--node-id", "b"]).is_err());
    }

    #[test]
    fn cluster_stream_flags_set_replicas_storage_age_and_size() {
        let config = broker_config(&parse(&[
            "rallymq",
            "broker",
            "--cluster",
            "nats://10.0.0.1:4222",
            "--cluster-replicas",
            "3",
            "--cluster-storage",
            "memory",
            "--cluster-max-age-secs",
            "3600",
            "--cluster-max-bytes",
            "1000000",
        ]))
        .expect("valid");
        let stream = config.cluster.expect("a cluster").stream;
        assert_eq!(stream.replicas, Some(3));
        assert_eq!(stream.storage, rallymq_broker::StreamStorage::Memory);
        assert_eq!(stream.max_age, Duration::from_secs(3600));
        assert_eq!(stream.max_bytes, Some(1_000_000));
        for refused in [
            &["--cluster-replicas", "0"][..],
            &["--cluster-replicas", "6"],
            &["--cluster-storage", "tape"],
        ] {
            let mut args = vec!["rallymq", "broker", "--cluster", "nats://10.0.0.1:4222"];
            args.extend_from_slice(refused);
            assert!(Cli::try_parse_from(&args).is_err(), "{refused:?}");
        }
        assert!(
            Cli::try_parse_from(["rallymq", "broker", "--cluster-replicas", "3"]).is_err(),
            "a stream setting needs --cluster"
        );
    }

    #[test]
    fn no_flags_gives_the_embedded_defaults() {
        let config = broker_config(&parse(&["rallymq", "broker"])).expect("no file to read");
        let defaults = BrokerConfig::standard_ports();
        assert_eq!(config.tcp, defaults.tcp);
        assert_eq!(config.ws, defaults.ws);
        assert_eq!(config.ws_paths, defaults.ws_paths);
        assert_eq!(config.sys_interval, defaults.sys_interval);
        assert!(config.metrics, "/metrics is served by default");
        assert_eq!(
            config.storage,
            rallymq_broker::Storage::Directory("rallymq-data".into())
        );
    }

    #[test]
    fn storage_flags_choose_the_directory_or_memory() {
        let config = broker_config(&parse(&["rallymq", "broker", "--data-dir", "/var/x"])).unwrap();
        assert_eq!(
            config.storage,
            rallymq_broker::Storage::Directory("/var/x".into())
        );
        let config = broker_config(&parse(&["rallymq", "broker", "--in-memory"])).unwrap();
        assert_eq!(config.storage, rallymq_broker::Storage::InMemory);
    }

    #[test]
    fn security_flags_reach_the_auth_config() {
        let args = parse(&[
            "rallymq",
            "broker",
            "--password-file",
            "/etc/p",
            "--jwt-key",
            "/etc/k",
            "--jwt-user-claim",
            "username",
            "--jwt-issuer",
            "https://auth.example.com",
            "--allow-anonymous",
            "false",
        ]);
        let auth = broker_config(&args).unwrap().security.auth;
        assert_eq!(auth.password_file, Some("/etc/p".into()));
        assert_eq!(auth.allow_anonymous, Some(false));
        let jwt = auth.jwt.expect("a JWT configuration");
        assert_eq!(jwt.key_file, PathBuf::from("/etc/k"));
        assert_eq!(jwt.user_claim, "username");
        assert_eq!(jwt.issuer.as_deref(), Some("https://auth.example.com"));
        assert_eq!(jwt.audience, None);
        let auth = broker_config(&parse(&["rallymq", "broker"]))
            .unwrap()
            .security
            .auth;
        assert_eq!(auth, rallymq_broker::AuthConfig::default());
    }

    #[test]
    fn any_listener_flag_replaces_all_default_listeners() {
        let config = broker_config(&parse(&["rallymq", "broker", "--tcp", "0.0.0.0:1884"]))
            .expect("no file to read");
        assert_eq!(config.tcp, vec!["0.0.0.0:1884".parse().unwrap()]);
        assert!(config.ws.is_empty());

        let config = broker_config(&parse(&[
            "rallymq",
            "broker",
            "--ws",
            "127.0.0.1:9001",
            "--ws",
            "[::1]:9001",
        ]))
        .expect("no file to read");
        assert!(config.tcp.is_empty());
        assert_eq!(config.ws.len(), 2);
    }

    #[test]
    fn limit_flags_reach_the_broker_config() {
        let config = broker_config(&parse(&[
            "rallymq",
            "broker",
            "--max-connections",
            "7",
            "--connect-timeout-secs",
            "3",
            "--max-keepalive",
            "0",
            "--sys-interval-secs",
            "0",
            "--ws-path",
            "/x",
        ]))
        .expect("no file to read");
        assert_eq!(config.limits.max_connections, 7);
        assert_eq!(config.limits.connect_timeout, Duration::from_secs(3));
        assert_eq!(config.limits.max_keep_alive, None);
        assert_eq!(config.sys_interval, None);
        assert_eq!(config.ws_paths, vec!["/x".to_owned()]);
    }

    #[test]
    fn no_metrics_and_log_format_flags() {
        let args = parse(&["rallymq", "broker", "--no-metrics", "--log-format", "json"]);
        let settings = broker_settings(&args).expect("no file to read");
        assert_eq!(settings.log_format(), LogFormat::Json);
        assert!(!settings.into_broker_config().expect("valid").metrics);
        let settings = broker_settings(&parse(&["rallymq", "broker"])).expect("no file to read");
        assert_eq!(settings.log_format(), LogFormat::Text, "text by default");
        let error = Cli::try_parse_from(["rallymq", "broker", "--log-format", "xml"])
            .expect_err("not a format");
        assert_eq!(error.exit_code(), 2);
    }

    #[test]
    fn max_keepalive_defaults_to_mosquittos_and_keeps_its_old_spelling() {
        let default = broker_config(&parse(&["rallymq", "broker"])).expect("no file to read");
        assert_eq!(default.limits.max_keep_alive, Some(65535));
        let old_spelling = parse(&["rallymq", "broker", "--max-keep-alive", "30"]);
        let config = broker_config(&old_spelling).expect("no file to read");
        assert_eq!(config.limits.max_keep_alive, Some(30));
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        for args in [
            &["rallymq", "broker", "--tcp", "not-an-address"][..],
            &["rallymq", "broker", "--no-such-flag"],
            &["rallymq"],
            &["rallymq", "broker", "--receive-maximum", "70000"],
        ] {
            let error = Cli::try_parse_from(args).expect_err("invalid");
            assert_eq!(error.exit_code(), 2, "{args:?}");
        }
    }
}
