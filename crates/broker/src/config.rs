//! What a broker is built with: its listeners and its limits.

use std::net::SocketAddr;

use crate::ListenerKind;
use crate::bridge::BridgeConfig;
use crate::cluster::ClusterConfig;
use crate::policy::Security;
use crate::tls::{ClientCertificates, TlsSettings};
use std::path::PathBuf;
use std::time::Duration;

/// How a broker listens and what it allows. `Default` is for a library: MQTT over TCP and HTTP
/// with MQTT over WebSockets, each on a free port of 127.0.0.1 (the handle's
/// [`local_addr`](crate::BrokerHandle::local_addr) tells which), so that embedders and tests
/// never collide. [`BrokerConfig::standard_ports`] gives the `rallymq broker` command's
/// listeners, 1883 and 8080.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Addresses for MQTT over TCP. Port 0 binds a free port.
    pub tcp: Vec<SocketAddr>,
    /// Addresses for HTTP and MQTT over WebSockets. Port 0 binds a free port.
    pub ws: Vec<SocketAddr>,
    /// Addresses for MQTT over TLS (`mqtts://`, conventionally port 8883); they need
    /// `tls_files`.
    pub tls: Vec<SocketAddr>,
    /// Addresses for HTTP and MQTT over WebSockets over TLS (`https://`, `wss://`); they need
    /// `tls_files`.
    pub wss: Vec<SocketAddr>,
    /// Listeners with settings of their own, beside those of `tcp`, `ws`, `tls` and `wss`
    /// (which take the broker-wide `client_certificates` and `allowed_origins`).
    pub listeners: Vec<Listener>,
    /// The certificate, key and client CA of the TLS listeners.
    pub tls_files: Option<TlsSettings>,
    /// Whether the TLS listeners of `tls` and `wss` ask clients for certificates.
    pub client_certificates: ClientCertificates,
    /// `Origin` header values allowed on the WebSocket listeners of `ws` and `wss` (a
    /// browser's page origin, such as `https://example.com`); empty allows any. A request from
    /// another origin gets 403.
    pub allowed_origins: Vec<String>,
    /// Paths on the WebSocket listeners where the upgrade to MQTT is accepted.
    pub ws_paths: Vec<String>,
    /// Limits that keep memory bounded.
    pub limits: Limits,
    /// How often the `$SYS` topics are published; `None` turns them off.
    pub sys_interval: Option<Duration>,
    /// Whether the HTTP listeners (`ws`, `wss`) serve the broker's metrics at `/metrics`, in
    /// the Prometheus text format, to anyone who asks, as Mosquitto's exporters and EMQX's
    /// `/api/v5/prometheus/stats` do: counts and sizes, never a client id or a topic.
    pub metrics: bool,
    /// Where persistent sessions, their queued messages and retained messages are kept.
    pub storage: Storage,
    /// Who may connect and what they may do, on every listener without a
    /// [`Listener::security`] of its own.
    pub security: Security,
    /// The cluster this broker is a node of (its clients share one MQTT space with the other
    /// nodes' clients); `None` for a broker on its own.
    pub cluster: Option<ClusterConfig>,
    /// The admin HTTP API on the WebSocket listeners, and who may use it.
    pub admin: AdminApi,
    /// Connections to remote brokers that carry messages out, in or both ways (Mosquitto's
    /// `connection` sections).
    pub bridges: Vec<BridgeConfig>,
}

/// The admin HTTP API: JSON under `/api/v1/` on the WebSocket listeners (`ws` and `wss`), as the
/// web console at `/dashboard/` uses it. `GET /api/v1/openapi.json` describes every route.
///
/// A request is let in when it comes from an address `open_to` trusts, or when it carries the
/// credentials of an admin: HTTP Basic with a user and password of the broker's password file,
/// or `Authorization: Bearer` with a JSON Web Token the broker's JWT key verifies, whose user is
/// one of `admin_users` or whose `role` claim is `"admin"` (or a list holding `"admin"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminApi {
    /// Whether `/api/v1/` is served at all (404 otherwise).
    pub enabled: bool,
    /// Where requests without credentials are let in from.
    pub open_to: AdminOpenTo,
    /// Users who may use the API from anywhere, with their credentials (`--admin-user`).
    pub admin_users: Vec<String>,
}

impl Default for AdminApi {
    fn default() -> Self {
        Self {
            enabled: true,
            open_to: AdminOpenTo::Loopback,
            admin_users: Vec::new(),
        }
    }
}

/// Where the admin API takes requests without credentials from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AdminOpenTo {
    /// Loopback addresses (127.0.0.0/8, ::1): someone on the broker's own machine.
    #[default]
    Loopback,
    /// Any address: for tests, or a broker behind a proxy that checks credentials itself.
    Anywhere,
    /// Nowhere: every request needs an admin's credentials.
    Nowhere,
}

/// Where a broker keeps what must survive it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Storage {
    /// In memory only: a restart loses sessions, queued and retained messages (the library's
    /// default; `rallymq broker --in-memory`).
    #[default]
    InMemory,
    /// On disk, in this directory (created if needed): every message acknowledged to a
    /// publisher survives a crash (`rallymq broker`'s default, `./rallymq-data`).
    Directory(PathBuf),
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            tcp: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            ws: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            tls: Vec::new(),
            wss: Vec::new(),
            listeners: Vec::new(),
            tls_files: None,
            client_certificates: ClientCertificates::default(),
            allowed_origins: Vec::new(),
            ws_paths: vec!["/mqtt".to_owned(), "/".to_owned()],
            limits: Limits::default(),
            sys_interval: Some(Duration::from_secs(10)),
            metrics: true,
            storage: Storage::default(),
            admin: AdminApi::default(),
            security: Security::default(),
            cluster: None,
            bridges: Vec::new(),
        }
    }
}

impl BrokerConfig {
    /// A configuration with no listeners (add some, or use the broker in-process only).
    pub fn without_listeners() -> Self {
        Self {
            tcp: Vec::new(),
            ws: Vec::new(),
            ..Self::default()
        }
    }

    /// Every listener: those of `tcp`, `ws`, `tls` and `wss` with the broker-wide settings,
    /// then `listeners`.
    pub fn all_listeners(&self) -> Vec<Listener> {
        let kinds = [
            (ListenerKind::Tcp, &self.tcp),
            (ListenerKind::WebSocket, &self.ws),
            (ListenerKind::Tls, &self.tls),
            (ListenerKind::WebSocketTls, &self.wss),
        ];
        let mut all = Vec::new();
        for (kind, addrs) in kinds {
            for addr in addrs {
                let mut listener = Listener::new(kind, *addr);
                listener.client_certificates = self.client_certificates;
                listener.allowed_origins = self.allowed_origins.clone();
                all.push(listener);
            }
        }
        all.extend(self.listeners.iter().cloned());
        all
    }

    /// The `rallymq broker` command's listeners: MQTT over TCP on 127.0.0.1:1883, HTTP and MQTT
    /// over WebSockets on 127.0.0.1:8080 (Mosquitto's and the usual WebSocket port).
    pub fn standard_ports() -> Self {
        Self {
            tcp: vec![SocketAddr::from(([127, 0, 0, 1], 1883))],
            ws: vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
            ..Self::default()
        }
    }
}

/// One listener with its own settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// What it serves.
    pub kind: ListenerKind,
    /// Where. Port 0 binds a free port.
    pub addr: SocketAddr,
    /// TLS kinds: whether clients are asked for a certificate (verified against
    /// [`TlsSettings::client_ca`]).
    pub client_certificates: ClientCertificates,
    /// WebSocket kinds: `Origin` header values allowed; empty allows any (403 otherwise).
    pub allowed_origins: Vec<String>,
    /// Who may connect here and what they may do, instead of the broker's
    /// [`BrokerConfig::security`] (Mosquitto's `per_listener_settings`): say, a loopback
    /// listener open to local services beside a public one that takes tokens only.
    pub security: Option<Security>,
}

impl Listener {
    /// A listener of `kind` on `addr`: no client certificates asked for, any origin.
    pub fn new(kind: ListenerKind, addr: SocketAddr) -> Self {
        Self {
            kind,
            addr,
            client_certificates: ClientCertificates::default(),
            allowed_origins: Vec::new(),
            security: None,
        }
    }
}

/// The broker's limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most connections at once; more are closed on accept.
    pub max_connections: usize,
    /// Most connections at once from one client IP address; 0: no limit.
    pub max_connections_per_ip: usize,
    /// Most new connections per second from one client IP address (a burst of as many is
    /// allowed); 0: no limit. Past it, connections are closed on accept.
    pub max_connection_rate_per_ip: u32,
    /// How long a new connection may take to send CONNECT (and an HTTP client its request,
    /// and a TLS client its handshake).
    pub connect_timeout: Duration,
    /// How long a packet may take to arrive once its first byte has: a peer that trickles
    /// one a byte at a time is closed (each byte it sends would keep its keep alive going).
    pub packet_timeout: Duration,
    /// How long a write to a client may wait for the client to take any of it: a client
    /// that stops reading while the broker has more for it than the network buffers hold is
    /// closed once a write has made no progress for this long (EMQX's `send_timeout`). While
    /// a write waits, the connection reads nothing, so its keep alive cannot end it.
    pub send_timeout: Duration,
    /// Largest HTTP request head (request line and headers) on the WebSocket listeners,
    /// the WebSocket handshake included; larger ones get 431.
    pub max_http_header_size: usize,
    /// Most subscriptions one client may hold; past it SUBSCRIBE is refused (0x97 Quota
    /// exceeded in MQTT 5, 0x80 before). 0: no limit.
    pub max_subscriptions: usize,
    /// Most levels in a topic name or filter; 0: no limit. A longer topic is refused: a
    /// PUBLISH with 0x90 (MQTT 5; dropped before), a SUBSCRIBE with 0x8F (0x80 before).
    pub max_topic_levels: usize,
    /// Longest topic name or filter, in bytes (MQTT's own limit is 65,535); refused as
    /// `max_topic_levels` says.
    pub max_topic_length: usize,
    /// Largest MQTT packet accepted (announced to MQTT 5 clients as Maximum Packet Size).
    pub max_packet_size: u32,
    /// Most unacknowledged QoS 1 and 2 messages a client may send at once (Receive Maximum).
    pub receive_maximum: u16,
    /// Highest topic alias a client may use.
    pub topic_alias_maximum: u16,
    /// Most topic aliases the broker gives the topics it sends to one MQTT 5 client (also
    /// bounded by the client's own Topic Alias Maximum; 0: none). Once all are taken, an alias
    /// moves to a topic sent more often of late. Each alias in use keeps its topic in memory
    /// for the connection. FlashMQ's `max_outgoing_topic_alias_value`.
    pub outgoing_topic_alias_maximum: u16,
    /// Most QoS 1 and 2 messages in flight to one client at once.
    pub max_in_flight: u16,
    /// Most messages waiting for one session (online or offline). Past it, `queue_full`
    /// decides which message is dropped; every drop is counted in
    /// `$SYS/broker/publish/messages/dropped`. Publishers are slowed (their reads pause, for up to
    /// a second at a time) while a subscriber's queue is three quarters full, so drops happen
    /// only to consumers that stay too slow.
    pub max_queued_messages: usize,
    /// Most bytes (topics and payloads) waiting for one session; 0 for no limit (Mosquitto's
    /// `max_queued_bytes`). Past it, as past `max_queued_messages`.
    pub max_queued_bytes: u64,
    /// What to drop when a session's queue is full.
    pub queue_full: QueueFullPolicy,
    /// Largest session expiry granted, in seconds (MQTT 5 clients asking for more get this).
    pub max_session_expiry: u32,
    /// Longest keep alive accepted, in seconds, as Mosquitto's `max_keepalive` (and its
    /// default, 65535): an MQTT 5 client asking for more, or for none, is given this as Server
    /// Keep Alive; an MQTT 3.1 or 3.1.1 client doing so is refused with return code 0x02.
    /// `None` accepts any keep alive, 0 (none) included.
    pub max_keep_alive: Option<u16>,
}

impl Limits {
    /// Whether a topic name or filter is within `max_topic_levels` and `max_topic_length`.
    pub fn allows_topic(&self, topic: &str) -> bool {
        (self.max_topic_length == 0 || topic.len() <= self.max_topic_length)
            && (self.max_topic_levels == 0 || topic.split('/').count() <= self.max_topic_levels)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 100_000,
            max_connections_per_ip: 0,
            max_connection_rate_per_ip: 0,
            connect_timeout: Duration::from_secs(10),
            packet_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(30),
            max_http_header_size: 16 * 1024,
            max_subscriptions: 0,
            max_topic_levels: 0,
            max_topic_length: 65_535,
            max_packet_size: 1024 * 1024,
            receive_maximum: 128,
            topic_alias_maximum: 64,
            outgoing_topic_alias_maximum: 64,
            max_in_flight: 64,
            max_queued_messages: 1000,
            max_queued_bytes: 0,
            queue_full: QueueFullPolicy::DropNewest,
            max_session_expiry: u32::MAX,
            max_keep_alive: Some(u16::MAX),
        }
    }
}

/// What a full session queue drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum QueueFullPolicy {
    /// The message that does not fit (Mosquitto's behaviour).
    #[default]
    DropNewest,
    /// The oldest waiting message, to make room: fresh data wins (a scoreboard, a sensor).
    DropOldest,
}
