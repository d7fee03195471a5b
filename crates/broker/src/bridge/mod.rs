//! Bridges: connections from this broker to remote brokers, carrying messages out, in or both
//! ways as Mosquitto's bridges do (mosquitto.conf(5), `connection`).
//!
//! A bridge is an internal client of this broker's router: its local side is a session of the
//! broker's own, which subscribes to the `out` topics (with No Local and Retain As Published,
//! so that what the bridge brings in never goes back out, and retained messages stay retained)
//! and publishes what comes `in`, with no ACL in the way. Its remote side is a
//! [`rallymq_client`] connection. Messages for the remote broker wait in a bounded queue while
//! it cannot be reached, and go out in order when it comes back.

mod run;
mod topic;

use std::path::PathBuf;
use std::time::Duration;

use rallymq_codec::ProtocolVersion;

pub(crate) use run::spawn;
pub use topic::{BridgeTopic, Direction, TopicLineError};

/// How a bridge reaches its remote broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum BridgeTransport {
    /// MQTT over TCP.
    #[default]
    Tcp,
    /// MQTT over TLS.
    Tls,
    /// MQTT over WebSockets.
    WebSocket,
    /// MQTT over WebSockets over TLS.
    WebSocketTls,
}

impl BridgeTransport {
    /// The URL scheme of the client crate for this transport.
    fn scheme(self) -> &'static str {
        match self {
            Self::Tcp => "mqtt",
            Self::Tls => "mqtts",
            Self::WebSocket => "ws",
            Self::WebSocketTls => "wss",
        }
    }
}

/// One bridge: where the remote broker is, how to log in, and which topics cross. The names
/// follow Mosquitto's bridge options (in brackets).
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// The connection's name (`connection NAME`): in the logs, and in the bridge's state topic
    /// `$SYS/broker/connection/NAME/state` (1 connected, 0 not).
    pub name: String,
    /// The remote broker's `host:port` addresses, tried in turn (`address`).
    pub addresses: Vec<String>,
    /// How to reach it.
    pub transport: BridgeTransport,
    /// The HTTP path of the WebSocket transports.
    pub ws_path: String,
    /// MQTT 3.1.1 or 5.0 (`bridge_protocol_version`).
    pub protocol: ProtocolVersion,
    /// The client id on the remote broker (`remote_clientid`; Mosquitto's default is
    /// `HOSTNAME.NAME`).
    pub client_id: String,
    /// `remote_username`.
    pub username: Option<String>,
    /// `remote_password`.
    pub password: Option<String>,
    /// CA certificates to trust for TLS, PEM (`bridge_cafile`); the system's roots without.
    pub ca_file: Option<PathBuf>,
    /// A client certificate and its key, PEM (`bridge_certfile`, `bridge_keyfile`).
    pub certificate: Option<(PathBuf, PathBuf)>,
    /// Accept a remote certificate not issued to its host name (`bridge_insecure`).
    pub insecure: bool,
    /// Start a new session on the remote broker at every connection (`cleansession`). With
    /// `false` (the default) the remote broker keeps the bridge's subscriptions and queues
    /// what they match while the bridge is away (MQTT 5: session expiry without end).
    pub clean_session: bool,
    /// Keep alive in seconds (`keepalive_interval`).
    pub keep_alive: u16,
    /// Connect to an MQTT 3.1.1 remote with the bridge bit (`try_private`): a remote broker
    /// that knows it sends the bridge none of its own messages back, so that a two-way bridge
    /// makes no loop. A remote that refuses it is connected to again without it. MQTT 5
    /// remotes get No Local and Retain As Published subscriptions instead.
    pub try_private: bool,
    /// The first and the longest delay between connection attempts (`restart_timeout BASE
    /// CAP`): an exponential backoff with jitter between them.
    pub restart_timeout: (Duration, Duration),
    /// Most messages waiting for the remote broker (`max_queued_messages`): QoS 1 and 2
    /// messages while it cannot be reached (QoS 0 ones are dropped then, as Mosquitto does),
    /// and any while it is slower than this broker's publishers. Past it, new messages are
    /// dropped and counted.
    pub max_queued_messages: usize,
    /// The topics that cross, in order: a message takes the first line that matches it.
    pub topics: Vec<BridgeTopic>,
}

impl BridgeConfig {
    /// A bridge named `name` to `address` (`host:port`): MQTT 3.1.1 over TCP, client id
    /// `HOSTNAME.NAME`, persistent session, keep alive 60 s, `try_private`, reconnecting after
    /// 5 s to 30 s, 1000 messages queued, and no topics yet.
    pub fn new(name: &str, address: &str) -> Self {
        Self {
            name: name.to_owned(),
            addresses: vec![address.to_owned()],
            transport: BridgeTransport::default(),
            ws_path: "/mqtt".to_owned(),
            protocol: ProtocolVersion::V3_1_1,
            client_id: format!("{}.{name}", host_name()),
            username: None,
            password: None,
            ca_file: None,
            certificate: None,
            insecure: false,
            clean_session: false,
            keep_alive: 60,
            try_private: true,
            restart_timeout: (Duration::from_secs(5), Duration::from_secs(30)),
            max_queued_messages: 1000,
            topics: Vec::new(),
        }
    }

    /// Adds a topic line in Mosquitto's syntax (`sensors/# out 1 edge/ site1/`).
    pub fn topic(mut self, line: &str) -> Result<Self, TopicLineError> {
        self.topics.push(BridgeTopic::parse(line)?);
        Ok(self)
    }

    /// The URL of `address` for the client crate.
    fn url(&self, address: &str) -> String {
        let path = if matches!(
            self.transport,
            BridgeTransport::WebSocket | BridgeTransport::WebSocketTls
        ) {
            self.ws_path.as_str()
        } else {
            ""
        };
        format!("{}://{address}{path}", self.transport.scheme())
    }
}

/// Checks what [`BridgeConfig`]s can be wrong in before any starts: a name that cannot be a
/// topic level (or is taken), no address, no topic, an invalid client id.
pub(crate) fn validate(bridges: &[BridgeConfig]) -> Result<(), crate::Error> {
    let mut names = std::collections::HashSet::new();
    for bridge in bridges {
        let fail = |reason: &str| crate::Error::Bridge {
            name: bridge.name.clone(),
            reason: reason.to_owned(),
        };
        let name = bridge.name.as_str();
        if name.is_empty() || name.contains(['/', '+', '#', '\0']) {
            return Err(fail(
                "a name is one topic level: not empty, no '/', '+' or '#'",
            ));
        }
        if !names.insert(name) {
            return Err(fail("two bridges have this name"));
        }
        if bridge.addresses.is_empty() {
            return Err(fail("no address"));
        }
        if bridge.topics.is_empty() {
            return Err(fail("no topic: nothing would cross"));
        }
        if !matches!(
            bridge.protocol,
            ProtocolVersion::V3_1_1 | ProtocolVersion::V5
        ) {
            return Err(fail("the protocol version is mqttv311 or mqttv50"));
        }
        let checked = bridge.addresses.iter().try_for_each(|address| {
            rallymq_client::ClientOptions::new(&bridge.url(address))
                .client_id(&bridge.client_id)
                .validate()
        });
        if let Err(error) = checked {
            return Err(fail(&error.to_string()));
        }
    }
    Ok(())
}

/// This machine's host name, for the default client id; `localhost` if it cannot be read.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}
