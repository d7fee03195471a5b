//! The `--config` file: TOML whose keys mirror the `rallymq broker` flags, merged with them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rallymq_broker::{
    AdminOpenTo, BridgeConfig, BridgeTransport, BrokerConfig, CertificateName, ClientCertificates,
    ClusterConfig, JwtConfig, Listener, ListenerKind, ProtocolVersion, Security, Storage,
    StreamSettings, StreamStorage, TlsSettings,
};
use serde::Deserialize;

use crate::BrokerArgs;

/// The settings of a config file. Every key is optional; an unknown key is an error, so a typo
/// does not silently leave a default in place.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    pub(crate) tcp: Option<Vec<SocketAddr>>,
    pub(crate) ws: Option<Vec<SocketAddr>>,
    pub(crate) tls: Option<Vec<SocketAddr>>,
    pub(crate) wss: Option<Vec<SocketAddr>>,
    pub(crate) cert: Option<PathBuf>,
    pub(crate) key: Option<PathBuf>,
    pub(crate) ca: Option<PathBuf>,
    pub(crate) require_certificate: Option<bool>,
    pub(crate) certificate_name: Option<String>,
    pub(crate) allowed_origins: Option<Vec<String>>,
    /// Listeners with settings of their own (`[[listener]]` tables).
    pub(crate) listener: Option<Vec<ListenerTable>>,
    pub(crate) ws_paths: Option<Vec<String>>,
    pub(crate) sys_interval_secs: Option<u64>,
    pub(crate) metrics: Option<bool>,
    pub(crate) log_format: Option<LogFormat>,
    pub(crate) max_connections: Option<usize>,
    pub(crate) connect_timeout_secs: Option<u64>,
    pub(crate) max_packet_size: Option<u32>,
    pub(crate) receive_maximum: Option<u16>,
    pub(crate) topic_alias_maximum: Option<u16>,
    pub(crate) outgoing_topic_alias_maximum: Option<u16>,
    pub(crate) max_in_flight: Option<u16>,
    pub(crate) max_queued_messages: Option<usize>,
    /// `max_keep_alive`, its spelling before it took Mosquitto's, is still read.
    #[serde(alias = "max_keep_alive")]
    pub(crate) max_keepalive: Option<u16>,
    pub(crate) max_session_expiry: Option<u32>,
    pub(crate) max_queued_bytes: Option<u64>,
    pub(crate) max_connections_per_ip: Option<usize>,
    pub(crate) max_connection_rate_per_ip: Option<u32>,
    pub(crate) packet_timeout_secs: Option<u64>,
    pub(crate) send_timeout_secs: Option<u64>,
    pub(crate) max_http_header_size: Option<usize>,
    pub(crate) max_subscriptions: Option<usize>,
    pub(crate) max_topic_levels: Option<usize>,
    pub(crate) max_topic_length: Option<usize>,
    pub(crate) data_dir: Option<PathBuf>,
    pub(crate) in_memory: Option<bool>,
    pub(crate) password_file: Option<PathBuf>,
    pub(crate) jwt_key: Option<PathBuf>,
    pub(crate) jwt_user_claim: Option<String>,
    pub(crate) jwt_issuer: Option<String>,
    pub(crate) jwt_audience: Option<String>,
    pub(crate) allow_anonymous: Option<bool>,
    pub(crate) acl_file: Option<PathBuf>,
    pub(crate) cluster: Option<Vec<String>>,
    pub(crate) node_id: Option<String>,
    pub(crate) cluster_heartbeat_ms: Option<u64>,
    pub(crate) cluster_missed_beats: Option<u32>,
    pub(crate) cluster_replicas: Option<u8>,
    pub(crate) cluster_storage: Option<ClusterStorage>,
    pub(crate) cluster_max_age_secs: Option<u64>,
    pub(crate) cluster_max_bytes: Option<u64>,
    pub(crate) admin_users: Option<Vec<String>>,
    pub(crate) admin_open_to: Option<String>,
    /// Bridges to remote brokers (`[[bridge]]` tables).
    pub(crate) bridge: Option<Vec<BridgeTable>>,
}

/// A `[[bridge]]` table: one connection to a remote broker, with Mosquitto's bridge options
/// under the names `rallymq migrate` writes (Mosquitto's in the comments).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BridgeTable {
    /// `connection NAME`.
    pub(crate) name: String,
    /// `address host:port`; or several, tried in turn, as `addresses`.
    pub(crate) address: Option<String>,
    pub(crate) addresses: Option<Vec<String>>,
    /// `tcp`, `tls`, `ws` or `wss`; `tcp` by default, `tls` if `ca_file` is set.
    pub(crate) transport: Option<String>,
    pub(crate) ws_path: Option<String>,
    /// `bridge_protocol_version`: `mqttv311` (default) or `mqttv50`.
    pub(crate) protocol_version: Option<String>,
    /// `remote_clientid`.
    pub(crate) client_id: Option<String>,
    /// `remote_username`, `remote_password`.
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    /// `bridge_cafile`, `bridge_certfile`, `bridge_keyfile`, `bridge_insecure`.
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) cert_file: Option<PathBuf>,
    pub(crate) key_file: Option<PathBuf>,
    pub(crate) insecure: Option<bool>,
    /// `cleansession`.
    pub(crate) clean_session: Option<bool>,
    /// `keepalive_interval`.
    pub(crate) keepalive: Option<u16>,
    pub(crate) try_private: Option<bool>,
    /// `restart_timeout BASE CAP`, in seconds (one value: both).
    pub(crate) restart_timeout: Option<Vec<u64>>,
    pub(crate) max_queued_messages: Option<usize>,
    /// Mosquitto `topic` lines, verbatim.
    pub(crate) topics: Vec<String>,
}

/// A `[[bridge]]` table as the broker takes it.
fn bridge(table: BridgeTable) -> Result<BridgeConfig, String> {
    let name = table.name;
    let fail = |why: String| format!("bridge {name:?}: {why}");
    let addresses = match (table.address, table.addresses) {
        (Some(address), None) => vec![address],
        (None, Some(addresses)) if !addresses.is_empty() => addresses,
        (None, _) => return Err(fail("no address (address or addresses)".to_owned())),
        (Some(_), Some(_)) => return Err(fail("address or addresses, not both".to_owned())),
    };
    let mut config = BridgeConfig::new(&name, &addresses[0]);
    config.addresses = addresses;
    config.transport = match (table.transport.as_deref(), &table.ca_file) {
        (None, None) | (Some("tcp"), _) => BridgeTransport::Tcp,
        (None, Some(_)) | (Some("tls"), _) => BridgeTransport::Tls,
        (Some("ws"), _) => BridgeTransport::WebSocket,
        (Some("wss"), _) => BridgeTransport::WebSocketTls,
        (Some(other), _) => return Err(fail(format!("transport {other:?}: tcp, tls, ws or wss"))),
    };
    if let Some(path) = table.ws_path {
        if !path.starts_with('/') {
            return Err(fail(format!("ws_path {path:?} must start with '/'")));
        }
        config.ws_path = path;
    }
    config.protocol = match table.protocol_version.as_deref() {
        None | Some("mqttv311") => ProtocolVersion::V3_1_1,
        Some("mqttv50") => ProtocolVersion::V5,
        Some(other) => {
            return Err(fail(format!(
                "protocol_version {other:?}: mqttv311 or mqttv50"
            )));
        }
    };
    if let Some(client_id) = table.client_id {
        config.client_id = client_id;
    }
    config.username = table.username;
    config.password = table.password;
    config.ca_file = table.ca_file;
    config.certificate = match (table.cert_file, table.key_file) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => return Err(fail("cert_file and key_file go together".to_owned())),
    };
    if let Some(insecure) = table.insecure {
        config.insecure = insecure;
    }
    if let Some(clean) = table.clean_session {
        config.clean_session = clean;
    }
    if let Some(keepalive) = table.keepalive {
        config.keep_alive = keepalive;
    }
    if let Some(try_private) = table.try_private {
        config.try_private = try_private;
    }
    if let Some(timeout) = table.restart_timeout {
        config.restart_timeout = match timeout[..] {
            [both] => (Duration::from_secs(both), Duration::from_secs(both)),
            [base, cap] if base <= cap => (Duration::from_secs(base), Duration::from_secs(cap)),
            _ => {
                return Err(fail(
                    "restart_timeout is [BASE, CAP] seconds, BASE at most CAP".to_owned(),
                ));
            }
        };
    }
    if let Some(max) = table.max_queued_messages {
        config.max_queued_messages = max;
    }
    for line in &table.topics {
        config = config.topic(line).map_err(|e| fail(e.to_string()))?;
    }
    if config.topics.is_empty() {
        return Err(fail("no topics: nothing would cross".to_owned()));
    }
    Ok(config)
}

/// How the broker's log lines are written (`--log-format`, `log_format`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// One line of text per event, for people.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Where the cluster's stream keeps its messages (`--cluster-storage`, `cluster_storage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ClusterStorage {
    /// On the NATS servers' disks.
    File,
    /// In the NATS servers' memory.
    Memory,
}

/// A `[[listener]]` table: one listener with its own settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenerTable {
    /// `tcp`, `ws`, `tls` or `wss`.
    pub(crate) kind: String,
    pub(crate) addr: SocketAddr,
    /// TLS kinds: `none` (default), `optional` or `required`.
    pub(crate) client_certificates: Option<String>,
    /// WebSocket kinds: browser page origins allowed; none listed: any.
    pub(crate) allowed_origins: Option<Vec<String>>,
    /// Any of the security keys gives the listener a policy of its own, in place of the
    /// broker's (as Mosquitto's `per_listener_settings`).
    pub(crate) password_file: Option<PathBuf>,
    pub(crate) jwt_key: Option<PathBuf>,
    pub(crate) jwt_user_claim: Option<String>,
    pub(crate) jwt_issuer: Option<String>,
    pub(crate) jwt_audience: Option<String>,
    pub(crate) allow_anonymous: Option<bool>,
    pub(crate) acl_file: Option<PathBuf>,
}

/// The security keys, as the top level and `[[listener]]` tables both have them.
#[derive(Debug, Default)]
struct SecurityKeys {
    password_file: Option<PathBuf>,
    jwt_key: Option<PathBuf>,
    jwt_user_claim: Option<String>,
    jwt_issuer: Option<String>,
    jwt_audience: Option<String>,
    allow_anonymous: Option<bool>,
    acl_file: Option<PathBuf>,
}

impl SecurityKeys {
    fn is_empty(&self) -> bool {
        self.password_file.is_none()
            && self.jwt_key.is_none()
            && self.jwt_user_claim.is_none()
            && self.jwt_issuer.is_none()
            && self.jwt_audience.is_none()
            && self.allow_anonymous.is_none()
            && self.acl_file.is_none()
    }

    /// The keys as the broker takes them.
    fn into_security(self) -> Result<Security, String> {
        let mut security = Security::default();
        security.auth.password_file = self.password_file;
        security.auth.allow_anonymous = self.allow_anonymous;
        security.acl_file = self.acl_file;
        security.auth.jwt = match self.jwt_key {
            Some(key) => {
                let mut jwt = JwtConfig::new(key);
                if let Some(claim) = self.jwt_user_claim {
                    jwt.user_claim = claim;
                }
                jwt.issuer = self.jwt_issuer;
                jwt.audience = self.jwt_audience;
                Some(jwt)
            }
            None if self.jwt_user_claim.is_some()
                || self.jwt_issuer.is_some()
                || self.jwt_audience.is_some() =>
            {
                return Err("jwt_user_claim, jwt_issuer and jwt_audience need jwt_key".to_owned());
            }
            None => None,
        };
        Ok(security)
    }
}

impl FileConfig {
    /// Reads and parses `path`; the error is one line naming the file (and the line and column
    /// for a syntax or type error).
    pub(crate) fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("config file {}: {e}", path.display()))
    }

    /// Parses TOML text; the error is one line.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e: toml::de::Error| {
            let message = e.message().trim().replace('\n', "; ");
            match e.span() {
                Some(span) => {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                    format!("line {line}, column {column}: {message}")
                }
                None => message,
            }
        })
    }
}

/// A `[[listener]]` table as the broker takes it.
fn listener(table: ListenerTable) -> Result<Listener, String> {
    let kind = match table.kind.as_str() {
        "tcp" => ListenerKind::Tcp,
        "ws" => ListenerKind::WebSocket,
        "tls" => ListenerKind::Tls,
        "wss" => ListenerKind::WebSocketTls,
        other => return Err(format!("listener kind {other:?}: tcp, ws, tls or wss")),
    };
    let mut listener = Listener::new(kind, table.addr);
    listener.client_certificates = match table.client_certificates.as_deref() {
        None | Some("none") => ClientCertificates::NotAsked,
        Some("optional") => ClientCertificates::Optional,
        Some("required") => ClientCertificates::Required,
        Some(other) => {
            return Err(format!(
                "listener {}: client_certificates {other:?}: none, optional or required",
                table.addr
            ));
        }
    };
    listener.allowed_origins = table.allowed_origins.unwrap_or_default();
    let keys = SecurityKeys {
        password_file: table.password_file,
        jwt_key: table.jwt_key,
        jwt_user_claim: table.jwt_user_claim,
        jwt_issuer: table.jwt_issuer,
        jwt_audience: table.jwt_audience,
        allow_anonymous: table.allow_anonymous,
        acl_file: table.acl_file,
    };
    if !keys.is_empty() {
        listener.security = Some(
            keys.into_security()
                .map_err(|e| format!("listener {}: {e}", table.addr))?,
        );
    }
    Ok(listener)
}

/// Where `rallymq broker` keeps its data unless told otherwise: beside where it runs.
pub(crate) const DEFAULT_DATA_DIR: &str = "rallymq-data";

/// A `*_timeout_secs` setting: whole seconds, at least 1.
fn timeout_secs(key: &str, secs: Option<u64>) -> Result<Option<Duration>, String> {
    match secs {
        Some(0) => Err(format!("{key} must be at least 1")),
        secs => Ok(secs.map(Duration::from_secs)),
    }
}

/// `file = flag` when the flag was given.
fn set<T>(flag: Option<T>, file: &mut Option<T>) {
    if flag.is_some() {
        *file = flag;
    }
}

/// File settings with the flags laid over them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings(FileConfig);

impl Settings {
    pub(crate) fn from_file(file: FileConfig) -> Self {
        Self(file)
    }

    /// Lays the flags over the file: a flag given wins. Listeners go as one group: if any
    /// `--tcp` or `--ws` is given, the file's `tcp` and `ws` are both ignored.
    pub(crate) fn with_flags(self, args: &BrokerArgs) -> Self {
        let mut s = self.0;
        let listener_flags = !args.tcp.is_empty()
            || !args.ws.is_empty()
            || !args.tls.is_empty()
            || !args.wss.is_empty();
        if listener_flags {
            s.tcp = Some(args.tcp.clone());
            s.ws = Some(args.ws.clone());
            s.tls = Some(args.tls.clone());
            s.wss = Some(args.wss.clone());
            s.listener = None;
        }
        set(args.cert.clone(), &mut s.cert);
        set(args.key.clone(), &mut s.key);
        set(args.ca.clone(), &mut s.ca);
        if args.require_certificate {
            s.require_certificate = Some(true);
        }
        set(args.certificate_name.clone(), &mut s.certificate_name);
        if !args.allowed_origins.is_empty() {
            s.allowed_origins = Some(args.allowed_origins.clone());
        }
        if !args.ws_paths.is_empty() {
            s.ws_paths = Some(args.ws_paths.clone());
        }
        set(args.sys_interval_secs, &mut s.sys_interval_secs);
        if args.no_metrics {
            s.metrics = Some(false);
        }
        set(args.log_format, &mut s.log_format);
        set(args.max_connections, &mut s.max_connections);
        set(args.connect_timeout_secs, &mut s.connect_timeout_secs);
        set(args.max_packet_size, &mut s.max_packet_size);
        set(args.receive_maximum, &mut s.receive_maximum);
        set(args.topic_alias_maximum, &mut s.topic_alias_maximum);
        set(
            args.outgoing_topic_alias_maximum,
            &mut s.outgoing_topic_alias_maximum,
        );
        set(args.max_in_flight, &mut s.max_in_flight);
        set(args.max_queued_messages, &mut s.max_queued_messages);
        set(args.max_keepalive, &mut s.max_keepalive);
        set(args.max_session_expiry, &mut s.max_session_expiry);
        set(args.max_queued_bytes, &mut s.max_queued_bytes);
        set(args.max_connections_per_ip, &mut s.max_connections_per_ip);
        set(
            args.max_connection_rate_per_ip,
            &mut s.max_connection_rate_per_ip,
        );
        set(args.packet_timeout_secs, &mut s.packet_timeout_secs);
        set(args.send_timeout_secs, &mut s.send_timeout_secs);
        set(args.max_http_header_size, &mut s.max_http_header_size);
        set(args.max_subscriptions, &mut s.max_subscriptions);
        set(args.max_topic_levels, &mut s.max_topic_levels);
        set(args.max_topic_length, &mut s.max_topic_length);
        if args.data_dir.is_some() {
            // A directory named on the command line wins over the file's `in_memory`.
            s.data_dir = args.data_dir.clone();
            s.in_memory = Some(false);
        }
        if args.in_memory {
            s.in_memory = Some(true);
        }
        set(args.password_file.clone(), &mut s.password_file);
        set(args.jwt_key.clone(), &mut s.jwt_key);
        set(args.jwt_user_claim.clone(), &mut s.jwt_user_claim);
        set(args.jwt_issuer.clone(), &mut s.jwt_issuer);
        set(args.jwt_audience.clone(), &mut s.jwt_audience);
        set(args.allow_anonymous, &mut s.allow_anonymous);
        set(args.acl_file.clone(), &mut s.acl_file);
        if !args.cluster.is_empty() {
            s.cluster = Some(args.cluster.clone());
        }
        set(args.node_id.clone(), &mut s.node_id);
        set(args.cluster_replicas, &mut s.cluster_replicas);
        set(args.cluster_storage, &mut s.cluster_storage);
        set(args.cluster_max_age_secs, &mut s.cluster_max_age_secs);
        set(args.cluster_max_bytes, &mut s.cluster_max_bytes);
        if !args.admin_users.is_empty() {
            s.admin_users = Some(args.admin_users.clone());
        }
        set(args.admin_open_to.clone(), &mut s.admin_open_to);
        Self(s)
    }

    /// The format of the log lines (text unless a flag or the file says otherwise).
    pub(crate) fn log_format(&self) -> LogFormat {
        self.0.log_format.unwrap_or_default()
    }

    /// Checks the settings and fills what is unset from [`BrokerConfig::standard_ports`].
    pub(crate) fn into_broker_config(self) -> Result<BrokerConfig, String> {
        let s = self.0;
        let mut config = BrokerConfig::standard_ports();
        // Listeners go as one group: naming any replaces all the default ones.
        if s.tcp.is_some()
            || s.ws.is_some()
            || s.tls.is_some()
            || s.wss.is_some()
            || s.listener.is_some()
        {
            config.tcp = s.tcp.unwrap_or_default();
            config.ws = s.ws.unwrap_or_default();
            config.tls = s.tls.unwrap_or_default();
            config.wss = s.wss.unwrap_or_default();
            for table in s.listener.unwrap_or_default() {
                config.listeners.push(listener(table)?);
            }
        }
        if config.all_listeners().is_empty() {
            return Err(
                "no listeners: give at least one of --tcp, --ws, --tls, --wss (or tcp, ws, tls, wss, [[listener]])"
                    .to_owned(),
            );
        }
        let certificate_name = match s.certificate_name.as_deref() {
            None | Some("cn") => CertificateName::CommonName,
            Some("san") => CertificateName::SubjectAltName,
            Some(other) => {
                return Err(format!("certificate_name: {other:?} is not cn or san"));
            }
        };
        config.tls_files = match (s.cert, s.key) {
            (Some(cert), Some(key)) => Some(TlsSettings {
                cert,
                key,
                client_ca: s.ca.clone(),
                certificate_name,
            }),
            (None, None) => None,
            _ => return Err("cert and key go together".to_owned()),
        };
        if config.all_listeners().iter().any(|l| l.kind.is_tls()) && config.tls_files.is_none() {
            return Err("a TLS listener (tls, wss) needs cert and key".to_owned());
        }
        config.client_certificates = match (s.ca.is_some(), s.require_certificate) {
            (false, Some(true)) => return Err("require_certificate needs ca".to_owned()),
            (false, _) => ClientCertificates::NotAsked,
            (true, Some(true)) => ClientCertificates::Required,
            (true, _) => ClientCertificates::Optional,
        };
        if let Some(origins) = s.allowed_origins {
            config.allowed_origins = origins;
        }
        if let Some(paths) = s.ws_paths {
            if let Some(bad) = paths.iter().find(|p| !p.starts_with('/')) {
                return Err(format!("ws_paths: {bad:?} must start with '/'"));
            }
            config.ws_paths = paths;
        }
        if let Some(secs) = s.sys_interval_secs {
            config.sys_interval = (secs > 0).then(|| Duration::from_secs(secs));
        }
        if let Some(metrics) = s.metrics {
            config.metrics = metrics;
        }
        let limits = &mut config.limits;
        if let Some(n) = s.max_connections {
            limits.max_connections = n;
        }
        if let Some(timeout) = timeout_secs("connect_timeout_secs", s.connect_timeout_secs)? {
            limits.connect_timeout = timeout;
        }
        if let Some(n) = s.max_packet_size {
            limits.max_packet_size = n;
        }
        if let Some(n) = s.receive_maximum {
            if n == 0 {
                return Err("receive_maximum must be at least 1".to_owned());
            }
            limits.receive_maximum = n;
        }
        if let Some(n) = s.topic_alias_maximum {
            limits.topic_alias_maximum = n;
        }
        if let Some(n) = s.outgoing_topic_alias_maximum {
            limits.outgoing_topic_alias_maximum = n;
        }
        if let Some(n) = s.max_in_flight {
            if n == 0 {
                return Err("max_in_flight must be at least 1".to_owned());
            }
            limits.max_in_flight = n;
        }
        if let Some(n) = s.max_queued_messages {
            limits.max_queued_messages = n;
        }
        if let Some(secs) = s.max_keepalive {
            limits.max_keep_alive = (secs > 0).then_some(secs);
        }
        if let Some(secs) = s.max_session_expiry {
            limits.max_session_expiry = secs;
        }
        if let Some(bytes) = s.max_queued_bytes {
            limits.max_queued_bytes = bytes;
        }
        if let Some(n) = s.max_connections_per_ip {
            limits.max_connections_per_ip = n;
        }
        if let Some(n) = s.max_connection_rate_per_ip {
            limits.max_connection_rate_per_ip = n;
        }
        if let Some(timeout) = timeout_secs("packet_timeout_secs", s.packet_timeout_secs)? {
            limits.packet_timeout = timeout;
        }
        if let Some(timeout) = timeout_secs("send_timeout_secs", s.send_timeout_secs)? {
            limits.send_timeout = timeout;
        }
        if let Some(bytes) = s.max_http_header_size {
            limits.max_http_header_size = bytes;
        }
        if let Some(n) = s.max_subscriptions {
            limits.max_subscriptions = n;
        }
        if let Some(n) = s.max_topic_levels {
            limits.max_topic_levels = n;
        }
        if let Some(n) = s.max_topic_length {
            limits.max_topic_length = n;
        }
        config.storage = if s.in_memory == Some(true) {
            Storage::InMemory
        } else {
            Storage::Directory(
                s.data_dir
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            )
        };
        config.security = SecurityKeys {
            password_file: s.password_file,
            jwt_key: s.jwt_key,
            jwt_user_claim: s.jwt_user_claim,
            jwt_issuer: s.jwt_issuer,
            jwt_audience: s.jwt_audience,
            allow_anonymous: s.allow_anonymous,
            acl_file: s.acl_file,
        }
        .into_security()?;
        let stream_set = s.cluster_replicas.is_some()
            || s.cluster_storage.is_some()
            || s.cluster_max_age_secs.is_some()
            || s.cluster_max_bytes.is_some();
        config.cluster = match s.cluster {
            Some(servers) if !servers.is_empty() => {
                let mut cluster = ClusterConfig {
                    node_id: s.node_id,
                    stream: stream_settings(
                        s.cluster_replicas,
                        s.cluster_storage,
                        s.cluster_max_age_secs,
                        s.cluster_max_bytes,
                    )?,
                    ..ClusterConfig::new(servers)
                };
                match s.cluster_heartbeat_ms {
                    Some(ms) if ms < 10 => {
                        return Err("cluster_heartbeat_ms: at least 10".to_owned());
                    }
                    Some(ms) => cluster.heartbeat = Duration::from_millis(ms),
                    None => {}
                }
                match s.cluster_missed_beats {
                    Some(0) => return Err("cluster_missed_beats: at least 1".to_owned()),
                    Some(beats) => cluster.missed_beats = beats,
                    None => {}
                }
                Some(cluster)
            }
            Some(_) => return Err("cluster: name at least one NATS server".to_owned()),
            None if s.node_id.is_some()
                || stream_set
                || s.cluster_heartbeat_ms.is_some()
                || s.cluster_missed_beats.is_some() =>
            {
                return Err(
                    "node_id and cluster_* are for a cluster node: set cluster too".to_owned(),
                );
            }
            None => None,
        };
        if let Some(users) = s.admin_users {
            config.admin.admin_users = users;
        }
        if let Some(open_to) = s.admin_open_to {
            config.admin.open_to = match open_to.as_str() {
                "loopback" => AdminOpenTo::Loopback,
                "anywhere" => AdminOpenTo::Anywhere,
                "nowhere" => AdminOpenTo::Nowhere,
                other => {
                    return Err(format!(
                        "admin_open_to: {other:?} is not loopback, anywhere or nowhere"
                    ));
                }
            };
        }
        for table in s.bridge.unwrap_or_default() {
            config.bridges.push(bridge(table)?);
        }
        Ok(config)
    }
}

/// The cluster stream's settings: the defaults but for what is set.
fn stream_settings(
    replicas: Option<u8>,
    storage: Option<ClusterStorage>,
    max_age_secs: Option<u64>,
    max_bytes: Option<u64>,
) -> Result<StreamSettings, String> {
    let mut stream = StreamSettings::default();
    if let Some(n) = replicas {
        if !(1..=5).contains(&n) {
            return Err(format!("cluster_replicas {n}: 1 to 5"));
        }
        stream.replicas = Some(usize::from(n));
    }
    if let Some(storage) = storage {
        stream.storage = match storage {
            ClusterStorage::File => StreamStorage::File,
            ClusterStorage::Memory => StreamStorage::Memory,
        };
    }
    if let Some(secs) = max_age_secs {
        stream.max_age = Duration::from_secs(secs);
    }
    if let Some(bytes) = max_bytes {
        if bytes == 0 || i64::try_from(bytes).is_err() {
            return Err(format!("cluster_max_bytes {bytes}: 1 to {}", i64::MAX));
        }
        stream.max_bytes = Some(bytes);
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_parses_and_names_every_key() {
        let text = include_str!("../../../rallymq.example.toml");
        // The example shows every key commented out; uncommented, it must parse in full.
        let uncommented: String = text
            .lines()
            .map(|line| {
                line.strip_prefix("# ")
                    .filter(|l| {
                        l.starts_with("[[")
                            || l.split_once(" = ").is_some_and(|(key, _)| {
                                key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                            })
                    })
                    .unwrap_or(line)
            })
            .map(|line| format!("{line}\n"))
            .collect();
        let file = FileConfig::parse(&uncommented).expect("the example parses");
        assert!(file.tcp.is_some() && file.ws.is_some() && file.ws_paths.is_some());
        assert!(file.sys_interval_secs.is_some());
        assert!(file.metrics.is_some() && file.log_format.is_some());
        assert!(file.max_connections.is_some() && file.connect_timeout_secs.is_some());
        assert!(file.max_packet_size.is_some() && file.receive_maximum.is_some());
        assert!(file.topic_alias_maximum.is_some() && file.max_in_flight.is_some());
        assert!(file.max_queued_messages.is_some() && file.max_keepalive.is_some());
        assert!(file.max_session_expiry.is_some());
        assert!(file.admin_users.is_some() && file.admin_open_to.is_some());
        assert!(file.outgoing_topic_alias_maximum.is_some());
        assert!(file.tls.is_some() && file.wss.is_some() && file.listener.is_some());
        assert!(file.cert.is_some() && file.key.is_some() && file.ca.is_some());
        assert!(file.require_certificate.is_some() && file.certificate_name.is_some());
        assert!(file.allowed_origins.is_some());
        assert!(file.data_dir.is_some() && file.in_memory.is_some());
        assert!(file.max_queued_bytes.is_some());
        assert!(file.max_connections_per_ip.is_some() && file.max_connection_rate_per_ip.is_some());
        assert!(file.packet_timeout_secs.is_some() && file.max_http_header_size.is_some());
        assert!(file.send_timeout_secs.is_some());
        assert!(file.max_subscriptions.is_some() && file.max_topic_levels.is_some());
        assert!(file.max_topic_length.is_some());
        assert!(file.cluster.is_some() && file.node_id.is_some());
        assert!(file.cluster_heartbeat_ms.is_some() && file.cluster_missed_beats.is_some());
        assert!(file.cluster_replicas.is_some() && file.cluster_storage.is_some());
        assert!(file.cluster_max_age_secs.is_some() && file.cluster_max_bytes.is_some());
        let bridges = file.bridge.clone().expect("a [[bridge]] table");
        let config = bridge(bridges[0].clone()).expect("the example bridge is valid");
        assert_eq!(config.name, "cloud");
        assert_eq!(config.topics.len(), 3);
        // As shipped (all commented out) it is the embedded defaults.
        assert_eq!(FileConfig::parse(text), Ok(FileConfig::default()));
    }

    #[test]
    fn file_keys_reach_the_broker_config() {
        let file = FileConfig::parse(
            "tcp = [\"127.0.0.1:0\"]\nmax_packet_size = 4096\nsys_interval_secs = 0\n",
        )
        .expect("valid");
        let config = Settings::from_file(file)
            .into_broker_config()
            .expect("valid");
        assert_eq!(config.tcp, vec!["127.0.0.1:0".parse().unwrap()]);
        assert!(
            config.ws.is_empty(),
            "a listener key replaces every default listener"
        );
        assert_eq!(config.limits.max_packet_size, 4096);
        assert_eq!(config.sys_interval, None);
    }

    #[test]
    fn cluster_servers_and_node_id_from_the_file() {
        let file = FileConfig::parse(
            "cluster = [\"nats://127.0.0.1:4222\", \"nats://127.0.0.1:4223\"]\nnode_id = \"a\"\n",
        )
        .expect("valid");
        let config = Settings::from_file(file)
            .into_broker_config()
            .expect("valid");
        let cluster = config.cluster.expect("a cluster");
        assert_eq!(
            cluster.servers,
            ["nats://127.0.0.1:4222", "nats://127.0.0.1:4223"]
        );
        assert_eq!(cluster.node_id.as_deref(), Some("a"));
        assert_eq!(cluster.stream, StreamSettings::default());
        let alone = FileConfig::parse("node_id = \"a\"\n").expect("valid");
        assert!(Settings::from_file(alone).into_broker_config().is_err());
        let stream_alone = FileConfig::parse("cluster_replicas = 3\n").expect("valid");
        assert!(
            Settings::from_file(stream_alone)
                .into_broker_config()
                .is_err()
        );
        let file = FileConfig::parse(
            "cluster = [\"nats://127.0.0.1:4222\"]\ncluster_replicas = 1\n\
             cluster_storage = \"memory\"\ncluster_max_age_secs = 0\ncluster_max_bytes = 4096\n",
        )
        .expect("valid");
        let stream = Settings::from_file(file)
            .into_broker_config()
            .expect("valid")
            .cluster
            .expect("a cluster")
            .stream;
        assert_eq!(stream.replicas, Some(1));
        assert_eq!(stream.storage, StreamStorage::Memory);
        assert_eq!(stream.max_age, Duration::ZERO);
        assert_eq!(stream.max_bytes, Some(4096));
        for bad in ["cluster_replicas = 6\n", "cluster_max_bytes = 0\n"] {
            let file = FileConfig::parse(&format!("cluster = [\"nats://127.0.0.1:4222\"]\n{bad}"))
                .expect("parses");
            assert!(
                Settings::from_file(file).into_broker_config().is_err(),
                "{bad}"
            );
        }
        let none = Settings::from_file(FileConfig::default()).into_broker_config();
        assert_eq!(none.expect("valid").cluster, None);
    }

    #[test]
    fn cluster_heartbeat_keys_from_the_file() {
        let parse = |text: &str| {
            Settings::from_file(FileConfig::parse(text).expect("valid")).into_broker_config()
        };
        let servers = "cluster = [\"nats://127.0.0.1:4222\"]\n";
        let cluster = parse(&format!(
            "{servers}cluster_heartbeat_ms = 250\ncluster_missed_beats = 5\n"
        ))
        .expect("valid")
        .cluster
        .expect("a cluster");
        assert_eq!(cluster.heartbeat, Duration::from_millis(250));
        assert_eq!(cluster.missed_beats, 5);
        let defaults = parse(servers).expect("valid").cluster.expect("a cluster");
        assert_eq!(defaults.heartbeat, Duration::from_secs(1));
        assert_eq!(defaults.missed_beats, 3);
        assert!(parse(&format!("{servers}cluster_heartbeat_ms = 5\n")).is_err());
        assert!(parse(&format!("{servers}cluster_missed_beats = 0\n")).is_err());
        assert!(parse("cluster_missed_beats = 2\n").is_err(), "no cluster");
    }

    #[test]
    fn metrics_and_log_format_keys() {
        let file = FileConfig::parse("metrics = false\nlog_format = \"json\"\n").expect("valid");
        let settings = Settings::from_file(file);
        assert_eq!(settings.log_format(), LogFormat::Json);
        assert!(!settings.into_broker_config().expect("valid").metrics);
        let error = FileConfig::parse("log_format = \"xml\"").expect_err("not a format");
        assert!(
            error.contains("xml") || error.contains("variant"),
            "{error}"
        );
    }

    #[test]
    fn bridge_tables_reach_the_broker_config_with_mosquitto_defaults() {
        let file = FileConfig::parse(
            r##"
tcp = ["127.0.0.1:0"]
[[bridge]]
name = "cloud"
addresses = ["h1:1883", "h2:1883"]
protocol_version = "mqttv50"
client_id = "edge1.cloud"
username = "edge"
password = "secret"
restart_timeout = [2, 40]
max_queued_messages = 50
topics = ["sensors/# out 1 edge/ site1/", "commands/# in 2", '"" both 0 local/a remote/b']

[[bridge]]
name = "secure"
address = "mqtt.example.com:8883"
ca_file = "/etc/ssl/ca.pem"
topics = ["# out"]
"##,
        )
        .expect("valid");
        let config = Settings::from_file(file)
            .into_broker_config()
            .expect("valid");
        let [cloud, secure] = &config.bridges[..] else {
            panic!("two bridges: {:?}", config.bridges);
        };
        assert_eq!(cloud.addresses, ["h1:1883", "h2:1883"]);
        assert_eq!(cloud.protocol, ProtocolVersion::V5);
        assert_eq!(cloud.client_id, "edge1.cloud");
        assert_eq!(
            (cloud.username.as_deref(), cloud.password.as_deref()),
            (Some("edge"), Some("secret"))
        );
        assert_eq!(
            cloud.restart_timeout,
            (Duration::from_secs(2), Duration::from_secs(40))
        );
        assert_eq!(cloud.max_queued_messages, 50);
        assert_eq!(cloud.topics[0].local_filter().as_str(), "edge/sensors/#");
        assert_eq!(cloud.topics[0].remote_filter().as_str(), "site1/sensors/#");
        assert_eq!(cloud.topics[2].remote_filter().as_str(), "remote/b");
        // Mosquitto's defaults: TCP, MQTT 3.1.1, persistent session, try_private.
        assert_eq!(secure.transport, BridgeTransport::Tls, "ca_file means TLS");
        assert_eq!(secure.protocol, ProtocolVersion::V3_1_1);
        assert!(!secure.clean_session && secure.try_private);
        assert!(secure.client_id.ends_with(".secure"));

        for (table, error) in [
            ("name = \"x\"\ntopics = [\"#\"]", "no address"),
            ("name = \"x\"\naddress = \"h:1\"\ntopics = []", "no topics"),
            (
                "name = \"x\"\naddress = \"h:1\"\ntopics = [\"# sideways\"]",
                "sideways",
            ),
            (
                "name = \"x\"\naddress = \"h:1\"\ntopics = [\"#\"]\ntransport = \"udp\"",
                "udp",
            ),
            (
                "name = \"x\"\naddress = \"h:1\"\ntopics = [\"#\"]\nprotocol_version = \"mqttv31\"",
                "mqttv31",
            ),
            (
                "name = \"x\"\naddress = \"h:1\"\ntopics = [\"#\"]\nrestart_timeout = [9, 2]",
                "restart_timeout",
            ),
        ] {
            let file = FileConfig::parse(&format!("[[bridge]]\n{table}\n")).expect("TOML");
            let refused = Settings::from_file(file).into_broker_config().unwrap_err();
            assert!(refused.contains(error), "{refused}");
        }
    }

    #[test]
    fn max_keepalive_key_and_its_old_spelling() {
        for text in ["max_keepalive = 30", "max_keep_alive = 30"] {
            let file = FileConfig::parse(text).expect("valid");
            let config = Settings::from_file(file)
                .into_broker_config()
                .expect("valid");
            assert_eq!(config.limits.max_keep_alive, Some(30), "{text}");
        }
        let file = FileConfig::parse("max_keepalive = 0").expect("valid");
        let config = Settings::from_file(file)
            .into_broker_config()
            .expect("valid");
        assert_eq!(config.limits.max_keep_alive, None, "0 is no limit");
    }

    #[test]
    fn errors_are_one_line_with_a_position() {
        let error = FileConfig::parse("tcp = [\"127.0.0.1:0\"]\nmax_conections = 3\n")
            .expect_err("unknown key");
        assert!(error.starts_with("line 2, column 1: "), "{error}");
        assert!(error.contains("max_conections"), "{error}");
        assert!(!error.contains('\n'), "{error}");

        let error = FileConfig::parse("tcp = [\"nowhere\"]").expect_err("bad address");
        assert!(error.starts_with("line 1, column "), "{error}");
        assert!(!error.contains('\n'), "{error}");

        let error = FileConfig::parse("receive_maximum = 70000").expect_err("too big");
        assert!(!error.contains('\n'), "{error}");
    }

    #[test]
    fn empty_listener_lists_are_refused() {
        let file = FileConfig::parse("tcp = []\nws = []").expect("valid TOML");
        let error = Settings::from_file(file)
            .into_broker_config()
            .expect_err("no listener");
        assert!(error.contains("no listeners"), "{error}");
    }

    #[test]
    fn outgoing_topic_aliases_are_on_by_default_and_the_key_or_flag_sets_them() {
        let defaults = Settings::from_file(FileConfig::default())
            .into_broker_config()
            .expect("valid");
        assert_eq!(defaults.limits.outgoing_topic_alias_maximum, 64);
        let file = FileConfig::parse("outgoing_topic_alias_maximum = 0\n").expect("valid");
        let from_file = Settings::from_file(file.clone())
            .into_broker_config()
            .expect("valid");
        assert_eq!(from_file.limits.outgoing_topic_alias_maximum, 0);
        let cli = <crate::Cli as clap::Parser>::try_parse_from([
            "rallymq",
            "broker",
            "--outgoing-topic-alias-maximum",
            "10",
        ])
        .expect("valid flags");
        let crate::Command::Broker(args) = cli.command else {
            panic!("the broker command")
        };
        let from_flag = Settings::from_file(file)
            .with_flags(&args)
            .into_broker_config()
            .expect("valid");
        assert_eq!(from_flag.limits.outgoing_topic_alias_maximum, 10);
    }
}
