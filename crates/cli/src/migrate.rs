//! `rallymq migrate mosquitto.conf > rallymq.toml`: a Mosquitto 2 configuration as the
//! `rallymq broker --config` file.
//!
//! The conversion follows mosquitto.conf(5) and what Mosquitto 2.0 does when it reads its file:
//! a line is a key and its value; a setting of a listener applies to the last `listener` line
//! of the same file (before any, to the default listener of `port` and `bind_address`, which
//! such a setting creates); the security keys go to the current listener when
//! `per_listener_settings` is true and to the broker otherwise; `include_dir` reads the `.conf`
//! files of a directory, sorted by name, only from the main file; with no listener at all the
//! broker listens on localhost:1883 only and lets anonymous clients in, and once a listener is
//! named anonymous clients are refused unless `allow_anonymous true`. What cannot be carried
//! over becomes a `# not carried over` comment saying why. A comment block directly above a
//! setting goes with it; comments that stand alone (as Mosquitto's commented-out defaults) are
//! left out.
//!
//! [`migrate`] does no IO of its own: reading `include_dir` and resolving host names go through
//! [`Environment`], so that any text can be tested.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use clap::Args;

/// `rallymq migrate` arguments.
#[derive(Debug, Args)]
#[command(after_help = "\
Writes the TOML to stdout: `rallymq migrate /etc/mosquitto/mosquitto.conf > rallymq.toml`,
then `rallymq broker --config rallymq.toml`. Every Mosquitto setting that rallymq does not
take becomes a `# not carried over` comment saying why. The password and ACL files are used
as they are. Exit codes: 0 with the TOML written, 1 when the file cannot be read.")]
pub(crate) struct MigrateArgs {
    /// The Mosquitto configuration file (mosquitto.conf).
    #[arg(value_name = "MOSQUITTO_CONF")]
    pub(crate) file: PathBuf,
}

/// Reads `args.file` (and its `include_dir` directories) and prints the TOML.
pub(crate) fn run(args: &MigrateArgs) -> Result<(), String> {
    let bytes = std::fs::read(&args.file)
        .map_err(|e| format!("cannot read {}: {e}", args.file.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let label = args.file.display().to_string();
    let migration = migrate(&label, &text, &System);
    print!("{}", migration.toml);
    if migration.not_carried > 0 {
        eprintln!(
            "rallymq migrate: {} setting(s) of {label} not carried over: see the `# not carried over` comments",
            migration.not_carried
        );
    }
    Ok(())
}

/// What the conversion needs from outside: the files of an `include_dir` and host names.
pub(crate) trait Environment {
    /// The `*.conf` files of `dir` with their text, sorted by name as Mosquitto loads them.
    fn conf_files(&self, dir: &str) -> Result<Vec<(String, String)>, String>;
    /// An address of `host`, a name that is not an IP address.
    fn resolve(&self, host: &str) -> Option<IpAddr>;
}

/// The file system and the system resolver.
struct System;

impl Environment for System {
    fn conf_files(&self, dir: &str) -> Result<Vec<(String, String)>, String> {
        let entries = std::fs::read_dir(dir).map_err(|e| e.to_string())?;
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter(|name| name.len() > ".conf".len() && name.ends_with(".conf"))
            .collect();
        // Mosquitto sorts with strcmp: byte order, capitals first.
        names.sort();
        let mut files = Vec::new();
        for name in names {
            let path = Path::new(dir).join(&name);
            let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            files.push((
                path.display().to_string(),
                String::from_utf8_lossy(&bytes).into_owned(),
            ));
        }
        Ok(files)
    }

    fn resolve(&self, host: &str) -> Option<IpAddr> {
        let mut addrs = (host, 0).to_socket_addrs().ok()?;
        addrs.next().map(|addr| addr.ip())
    }
}

/// The converted configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Migration {
    /// The rallymq TOML.
    pub(crate) toml: String,
    /// How many settings became `# not carried over` comments.
    pub(crate) not_carried: usize,
}

/// Converts the Mosquitto configuration `text`, read from the file named `label`.
pub(crate) fn migrate(label: &str, text: &str, env: &dyn Environment) -> Migration {
    let mut reader = Reader::new(env);
    reader.read_file(label, text, true);
    reader.finish(label)
}

/// One line of comment or note in the output.
#[derive(Debug, Clone)]
enum Entry {
    /// A comment from mosquitto.conf, carried as it was.
    Comment(String),
    /// A key and its value, TOML already.
    Key(&'static str, String),
    /// A line of explanation written by the conversion.
    Note(String),
}

/// A part of the output: the top level, a `[[listener]]` or a `[[bridge]]`.
#[derive(Debug, Default, Clone)]
struct Section {
    entries: Vec<Entry>,
}

impl Section {
    /// Sets `key`, replacing an earlier value in place (the last one wins, as in Mosquitto).
    fn set(&mut self, key: &'static str, value: String) {
        for entry in &mut self.entries {
            if let Entry::Key(k, v) = entry
                && *k == key
            {
                *v = value;
                return;
            }
        }
        self.entries.push(Entry::Key(key, value));
    }

    fn note(&mut self, text: String) {
        self.entries.push(Entry::Note(text));
    }

    fn comments(&mut self, comments: Vec<String>) {
        self.entries
            .extend(comments.into_iter().map(Entry::Comment));
    }

    fn render(&self, out: &mut String) {
        for entry in &self.entries {
            match entry {
                Entry::Comment(text) => {
                    let _ = writeln!(out, "{}", comment_text(text));
                }
                Entry::Key(key, value) => {
                    let _ = writeln!(out, "{key} = {value}");
                }
                Entry::Note(text) => {
                    let _ = writeln!(out, "# {}", comment_text(text));
                }
            }
        }
    }
}

/// The security keys that `per_listener_settings` gives each listener.
#[derive(Debug, Default, Clone)]
struct SecurityKeys {
    password_file: Option<String>,
    acl_file: Option<String>,
    allow_anonymous: Option<bool>,
    /// `auth_plugin`/`plugin` or `psk_file` was given: someone else decided who logs in.
    other_auth: bool,
}

/// A Mosquitto listener, as read so far.
#[derive(Debug, Default, Clone)]
struct ListenerDraft {
    /// Where it was defined (`file:line`), or `None` for the default listener.
    origin: Option<String>,
    /// The comments above its `listener` line.
    header: Vec<String>,
    port: Option<u16>,
    host: Option<String>,
    unix_socket: Option<String>,
    websockets: bool,
    socket_domain: Option<String>,
    certfile: Option<String>,
    keyfile: Option<String>,
    cafile: Option<String>,
    capath: Option<String>,
    require_certificate: bool,
    use_identity_as_username: bool,
    max_connections: Option<i64>,
    origins: Vec<String>,
    security: SecurityKeys,
    /// Comments and notes for its table.
    body: Section,
    /// A setting of the default listener was given, which makes Mosquitto start it.
    touched: bool,
}

/// A Mosquitto bridge (`connection NAME` and the lines after it).
#[derive(Debug, Default, Clone)]
struct BridgeDraft {
    origin: String,
    name: String,
    header: Vec<String>,
    addresses: Vec<String>,
    topics: Vec<String>,
    protocol_version: Option<String>,
    client_id: Option<String>,
    username: Option<String>,
    password: Option<String>,
    cafile: Option<String>,
    capath: bool,
    certfile: Option<String>,
    keyfile: Option<String>,
    insecure: Option<bool>,
    clean_session: Option<bool>,
    keepalive: Option<u16>,
    try_private: Option<bool>,
    restart_timeout: Option<(u32, u32)>,
    body: Section,
}

/// Where in a file the current settings go: as Mosquitto, each file starts on the default
/// listener and no bridge.
#[derive(Debug, Clone, Copy)]
struct FileState {
    /// Index in `listeners`, or `None` for the default listener.
    listener: Option<usize>,
    bridge: Option<usize>,
}

/// The settings read so far.
struct Reader<'e> {
    env: &'e dyn Environment,
    top: Section,
    listeners: Vec<ListenerDraft>,
    default_listener: ListenerDraft,
    bridges: Vec<BridgeDraft>,
    security: SecurityKeys,
    per_listener_settings: bool,
    /// No `listener`, `port` or `bind_address`: Mosquitto 2's localhost-only mode.
    local_only: bool,
    persistence: Option<bool>,
    persistence_location: Option<String>,
    max_packet_size: Option<u32>,
    message_size_limit: Option<(u32, String)>,
    max_queued_messages: Option<usize>,
    /// Comments above settings whose keys are written at the end (security, storage, packet
    /// size), to go above those keys.
    held: Vec<(Held, Vec<String>)>,
    not_carried: usize,
}

/// The groups of top-level keys written once the whole file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    Security,
    Storage,
    PacketSize,
}

/// Why a logging setting does not carry over.
const LOGGING: &str = "rallymq logs to stderr, one line per event, filtered by RUST_LOG \
     (RUST_LOG=debug for more); under systemd the journal keeps it";

impl<'e> Reader<'e> {
    fn new(env: &'e dyn Environment) -> Self {
        Self {
            env,
            top: Section::default(),
            listeners: Vec::new(),
            default_listener: ListenerDraft::default(),
            bridges: Vec::new(),
            security: SecurityKeys::default(),
            per_listener_settings: false,
            local_only: true,
            persistence: None,
            persistence_location: None,
            max_packet_size: None,
            message_size_limit: None,
            max_queued_messages: None,
            held: Vec::new(),
            not_carried: 0,
        }
    }

    fn read_file(&mut self, label: &str, text: &str, main: bool) {
        let mut state = FileState {
            listener: None,
            bridge: None,
        };
        let mut comments: Vec<String> = Vec::new();
        for (index, raw) in text.split('\n').enumerate() {
            let line = raw.trim_end_matches(['\r', '\n']);
            let trimmed = line.trim();
            if trimmed.is_empty() {
                comments.clear();
                continue;
            }
            if trimmed.starts_with('#') {
                comments.push(trimmed.to_owned());
                continue;
            }
            let origin = format!("{label}:{}", index + 1);
            let taken = std::mem::take(&mut comments);
            self.setting(&origin, trimmed, taken, &mut state, main);
        }
    }

    /// The section a note about a listener setting goes to.
    fn listener_mut(&mut self, state: &FileState) -> &mut ListenerDraft {
        match state.listener.and_then(|i| self.listeners.get_mut(i)) {
            Some(listener) => listener,
            None => &mut self.default_listener,
        }
    }

    /// Writes a `# not carried over` note about `line` into the section it belongs to.
    fn not_carried(&mut self, section: Target, origin: &str, line: &str, why: &str) {
        self.not_carried += 1;
        let text = format!("not carried over: {origin}: `{line}`: {why}");
        self.section(section).note(text);
    }

    fn section(&mut self, target: Target) -> &mut Section {
        match target {
            Target::Top => &mut self.top,
            Target::Listener(Some(i)) if i < self.listeners.len() => &mut self.listeners[i].body,
            Target::Listener(_) => &mut self.default_listener.body,
            Target::Bridge(i) if i < self.bridges.len() => &mut self.bridges[i].body,
            Target::Bridge(_) => &mut self.top,
        }
    }

    fn hold(&mut self, group: Held, comments: Vec<String>) {
        self.held.push((group, comments));
    }

    /// Writes the comments held for `group`.
    fn release(&mut self, group: Held) {
        let (now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|(g, _)| *g == group);
        self.held = later;
        for (_, comments) in now {
            self.top.comments(comments);
        }
    }

    #[allow(clippy::too_many_lines)] // one arm per Mosquitto key reads best as one match
    fn setting(
        &mut self,
        origin: &str,
        line: &str,
        comments: Vec<String>,
        state: &mut FileState,
        main: bool,
    ) {
        let mut words = line.split_whitespace();
        let key = words.next().unwrap_or_default();
        let args: Vec<&str> = words.collect();
        // Strings are the rest of the line, as Mosquitto reads them (paths may hold spaces).
        let rest = line.get(key.len()..).unwrap_or_default().trim();
        let first = args.first().copied().unwrap_or_default();
        let listener_target = Target::Listener(state.listener);
        let bridge_target = state.bridge.map_or(Target::Top, Target::Bridge);
        if let Some(why) = explained(LISTENER_NOT_CARRIED, key) {
            self.section(listener_target).comments(comments);
            self.not_carried(listener_target, origin, line, why);
            return;
        }
        if let Some(why) = explained(TOP_NOT_CARRIED, key) {
            self.top.comments(comments);
            self.not_carried(Target::Top, origin, line, why);
            return;
        }
        match key {
            // ---- Listeners -----------------------------------------------------------------
            "listener" => {
                self.local_only = false;
                let mut draft = ListenerDraft {
                    origin: Some(origin.to_owned()),
                    header: comments,
                    ..ListenerDraft::default()
                };
                match first.parse::<u16>() {
                    Ok(0) => match args.get(1) {
                        Some(path) => draft.unix_socket = Some((*path).to_owned()),
                        None => draft.port = None,
                    },
                    Ok(port) => {
                        draft.port = Some(port);
                        draft.host = args
                            .get(1)
                            .filter(|host| !host.starts_with('#'))
                            .map(|host| (*host).to_owned());
                    }
                    Err(_) => draft.port = None,
                }
                self.listeners.push(draft);
                state.listener = Some(self.listeners.len() - 1);
            }
            "port" => {
                self.local_only = false;
                self.default_listener.header.extend(comments);
                match first.parse::<u16>() {
                    Ok(port) if port > 0 => {
                        self.default_listener.port = Some(port);
                        self.default_listener.touched = true;
                        self.default_listener
                            .origin
                            .get_or_insert(origin.to_owned());
                    }
                    _ => self.not_carried(Target::Top, origin, line, "not a port number"),
                }
            }
            "bind_address" => {
                self.local_only = false;
                self.default_listener.header.extend(comments);
                self.default_listener.host = Some(rest.to_owned());
                self.default_listener.touched = true;
                self.default_listener
                    .origin
                    .get_or_insert(origin.to_owned());
            }
            "protocol"
            | "socket_domain"
            | "certfile"
            | "keyfile"
            | "cafile"
            | "capath"
            | "require_certificate"
            | "use_identity_as_username"
            | "max_connections"
            | "websockets_origin" => {
                let listener = self.listener_mut(state);
                listener.body.comments(comments);
                let mut bad = None;
                match key {
                    "protocol" => match first {
                        "websockets" => listener.websockets = true,
                        "mqtt" => listener.websockets = false,
                        _ => bad = Some("protocol: mqtt or websockets"),
                    },
                    "socket_domain" => match first {
                        "ipv4" | "ipv6" => listener.socket_domain = Some(first.to_owned()),
                        _ => bad = Some("socket_domain: ipv4 or ipv6"),
                    },
                    "certfile" => listener.certfile = Some(rest.to_owned()),
                    "keyfile" => listener.keyfile = Some(rest.to_owned()),
                    "cafile" => listener.cafile = Some(rest.to_owned()),
                    "capath" => listener.capath = Some(rest.to_owned()),
                    "require_certificate" => match parse_bool(first) {
                        Some(value) => listener.require_certificate = value,
                        None => bad = Some("not true or false"),
                    },
                    "use_identity_as_username" => match parse_bool(first) {
                        Some(value) => listener.use_identity_as_username = value,
                        None => bad = Some("not true or false"),
                    },
                    "max_connections" => match first.parse::<i64>() {
                        Ok(n) => listener.max_connections = Some(n.max(-1)),
                        Err(_) => bad = Some("not a number"),
                    },
                    _ => listener
                        .origins
                        .extend(args.iter().map(|s| (*s).to_owned())),
                }
                if bad.is_none()
                    && !(key == "protocol" && first == "mqtt")
                    && !(key == "max_connections" && first == "-1")
                {
                    listener.touched = true;
                }
                if let Some(why) = bad {
                    self.not_carried(listener_target, origin, line, why);
                }
            }
            // ---- Security ------------------------------------------------------------------
            "per_listener_settings" => {
                self.top.comments(comments);
                match parse_bool(first) {
                    Some(value) => self.per_listener_settings = value,
                    None => self.not_carried(Target::Top, origin, line, "not true or false"),
                }
            }
            "password_file" | "acl_file" | "allow_anonymous" | "psk_file" | "auth_plugin"
            | "plugin" => {
                let per_listener = self.per_listener_settings;
                let target = if per_listener {
                    listener_target
                } else {
                    Target::Top
                };
                if per_listener {
                    self.section(target).comments(comments);
                } else {
                    self.hold(Held::Security, comments);
                }
                let keys = if per_listener {
                    let listener = self.listener_mut(state);
                    listener.touched = true;
                    &mut listener.security
                } else {
                    &mut self.security
                };
                let mut why = None;
                match key {
                    "password_file" => keys.password_file = Some(rest.to_owned()),
                    "acl_file" => keys.acl_file = Some(rest.to_owned()),
                    "allow_anonymous" => match parse_bool(first) {
                        Some(value) => keys.allow_anonymous = Some(value),
                        None => why = Some("not true or false"),
                    },
                    "psk_file" => {
                        keys.other_auth = true;
                        why = Some("rallymq has no TLS-PSK: use client certificates or passwords");
                    }
                    _ => {
                        keys.other_auth = true;
                        why = Some(
                            "rallymq loads no plugins; it authenticates with password_file, jwt_key (JSON Web Tokens) or client certificates. Until one is set up, the clients the plugin let in are refused",
                        );
                    }
                }
                if let Some(why) = why {
                    self.not_carried(target, origin, line, why);
                }
            }
            "global_plugin" => {
                self.top.comments(comments);
                self.security.other_auth = true;
                self.not_carried(Target::Top, origin, line,
                    "rallymq loads no plugins; it authenticates with password_file, jwt_key (JSON Web Tokens) or client certificates");
            }
            // ---- Limits --------------------------------------------------------------------
            "max_keepalive" => {
                self.top_number(comments, origin, line, "max_keepalive", first, 0, 65_535)
            }
            "max_queued_bytes" => self.top_number(
                comments,
                origin,
                line,
                "max_queued_bytes",
                first,
                0,
                i64::MAX,
            ),
            "sys_interval" => self.top_number(
                comments,
                origin,
                line,
                "sys_interval_secs",
                first,
                0,
                i64::MAX,
            ),
            "max_queued_messages" => {
                self.top.comments(comments);
                match first.parse::<i64>() {
                    Ok(n) if n <= 0 => self.not_carried(Target::Top, origin, line,
                        "0 is no limit in Mosquitto; rallymq always bounds a session's queue (default 1000): set max_queued_messages to the most you can hold"),
                    Ok(n) => {
                        let n = usize::try_from(n).unwrap_or(usize::MAX);
                        self.max_queued_messages = Some(n);
                        self.top.set("max_queued_messages", n.to_string());
                    }
                    Err(_) => self.not_carried(Target::Top, origin, line, "not a number"),
                }
            }
            "max_inflight_messages" => {
                self.top.comments(comments);
                match first.parse::<i64>() {
                    // 0 (and 65535, which Mosquitto reads as 0) is no limit: the most a u16 holds.
                    Ok(n) if n <= 0 || n >= 65_535 => {
                        self.top.set("max_in_flight", "65535".to_owned())
                    }
                    Ok(n) => self.top.set("max_in_flight", n.to_string()),
                    Err(_) => self.not_carried(Target::Top, origin, line, "not a number"),
                }
            }
            "max_packet_size" => {
                self.hold(Held::PacketSize, comments);
                match first.parse::<u32>() {
                    Ok(n) if n >= 20 => self.max_packet_size = Some(n),
                    _ => self.not_carried(
                        Target::Top,
                        origin,
                        line,
                        "Mosquitto takes 20 bytes or more",
                    ),
                }
            }
            "message_size_limit" => {
                self.hold(Held::PacketSize, comments);
                match first.parse::<u32>() {
                    Ok(0) => self.message_size_limit = None,
                    Ok(n) => self.message_size_limit = Some((n, origin.to_owned())),
                    Err(_) => self.not_carried(Target::Top, origin, line, "not a number"),
                }
            }
            "queue_qos0_messages"
            | "upgrade_outgoing_qos"
            | "retain_available"
            | "allow_duplicate_messages"
            | "set_tcp_nodelay" => {
                self.top.comments(comments);
                // What rallymq always does, and why another value cannot be had.
                let (same, why) = match key {
                    "queue_qos0_messages" => (
                        false,
                        "rallymq drops QoS 0 messages for an offline session (Mosquitto's default)",
                    ),
                    "upgrade_outgoing_qos" => (
                        false,
                        "rallymq delivers at the lower of the message's and the subscription's QoS, as MQTT requires",
                    ),
                    "retain_available" => (true, "rallymq always keeps retained messages"),
                    "set_tcp_nodelay" => (true, "rallymq always sets TCP_NODELAY"),
                    _ => (
                        false,
                        "rallymq sends a client one copy of a message however many of its subscriptions match",
                    ),
                };
                match parse_bool(first) {
                    Some(value) if value == same => self
                        .top
                        .note(format!("{origin}: `{line}`: what rallymq does")),
                    _ => self.not_carried(Target::Top, origin, line, why),
                }
            }
            // ---- Storage -------------------------------------------------------------------
            "persistence" | "retained_persistence" => {
                self.hold(Held::Storage, comments);
                match parse_bool(first) {
                    Some(value) => self.persistence = Some(value),
                    None => self.not_carried(Target::Top, origin, line, "not true or false"),
                }
            }
            "persistence_location" => {
                self.hold(Held::Storage, comments);
                self.persistence_location = Some(rest.to_owned());
            }
            // ---- Logging and process ------------------------------------------------------
            "include_dir" => {
                self.top.comments(comments);
                if !main {
                    self.not_carried(Target::Top, origin, line,
                        "Mosquitto reads include_dir only in the main file, so it was ignored here too");
                } else {
                    match self.env.conf_files(rest) {
                        Ok(files) => {
                            self.top.note(format!("{origin}: `{line}`: read {} file(s)", files.len()));
                            for (label, text) in files {
                                self.read_file(&label, &text, false);
                            }
                        }
                        Err(e) => self.not_carried(Target::Top, origin, line,
                            &format!("cannot read the directory ({e}): run rallymq migrate where it exists")),
                    }
                }
            }
            // ---- Bridges -------------------------------------------------------------------
            "connection" => {
                self.bridges.push(BridgeDraft {
                    origin: origin.to_owned(),
                    name: rest.to_owned(),
                    header: comments,
                    ..BridgeDraft::default()
                });
                state.bridge = Some(self.bridges.len() - 1);
            }
            _ if is_bridge_key(key) => {
                let Some(index) = state.bridge else {
                    self.top.comments(comments);
                    self.not_carried(
                        Target::Top,
                        origin,
                        line,
                        "a bridge setting before any `connection` line (Mosquitto refuses it)",
                    );
                    return;
                };
                self.section(bridge_target).comments(comments);
                if let Err(why) = self.bridge_setting(index, key, &args, rest) {
                    self.not_carried(bridge_target, origin, line, &why);
                }
            }
            _ => {
                self.top.comments(comments);
                self.not_carried(Target::Top, origin, line, "not a Mosquitto 2.0 setting");
            }
        }
    }

    /// A whole number in `min..=max` as a top-level key.
    #[allow(clippy::too_many_arguments)]
    fn top_number(
        &mut self,
        comments: Vec<String>,
        origin: &str,
        line: &str,
        key: &'static str,
        value: &str,
        min: i64,
        max: i64,
    ) {
        self.top.comments(comments);
        match value.parse::<i64>() {
            Ok(n) if (min..=max).contains(&n) => self.top.set(key, n.to_string()),
            // Mosquitto reads a negative size as 0, no limit.
            Ok(n) if n < 0 && key == "max_queued_bytes" => self.top.set(key, "0".to_owned()),
            _ => self.not_carried(
                Target::Top,
                origin,
                line,
                &format!("not a number from {min} to {max}"),
            ),
        }
    }

    fn bridge_setting(
        &mut self,
        index: usize,
        key: &str,
        args: &[&str],
        rest: &str,
    ) -> Result<(), String> {
        let Some(bridge) = self.bridges.get_mut(index) else {
            return Err("no bridge".to_owned());
        };
        let first = args.first().copied().unwrap_or_default();
        let boolean = || parse_bool(first).ok_or_else(|| "not true or false".to_owned());
        match key {
            "address" | "addresses" => {
                bridge.addresses = args
                    .iter()
                    .take_while(|a| !a.starts_with('#'))
                    .map(|a| bridge_address(a))
                    .collect::<Result<_, _>>()?;
                if bridge.addresses.is_empty() {
                    return Err("no address".to_owned());
                }
            }
            "topic" => bridge.topics.push(args.join(" ")),
            "bridge_protocol_version" => match first {
                "mqttv311" | "mqttv50" => bridge.protocol_version = Some(first.to_owned()),
                "mqttv31" => {
                    bridge.protocol_version = Some("mqttv311".to_owned());
                    return Err("rallymq bridges speak MQTT 3.1.1 or 5.0: this one will use 3.1.1 (mqttv311)".to_owned());
                }
                _ => return Err("mqttv311, mqttv50 or mqttv31".to_owned()),
            },
            "remote_clientid" | "clientid" => bridge.client_id = Some(rest.to_owned()),
            "remote_username" | "username" => bridge.username = Some(rest.to_owned()),
            "remote_password" | "password" => bridge.password = Some(rest.to_owned()),
            "bridge_cafile" => bridge.cafile = Some(rest.to_owned()),
            "bridge_capath" => {
                bridge.capath = true;
                return Err("rallymq takes the CA certificates in one file: concatenate them into ca_file (until then the system's roots are trusted)".to_owned());
            }
            "bridge_certfile" => bridge.certfile = Some(rest.to_owned()),
            "bridge_keyfile" => bridge.keyfile = Some(rest.to_owned()),
            "bridge_insecure" => bridge.insecure = Some(boolean()?),
            "cleansession" => bridge.clean_session = Some(boolean()?),
            "try_private" => bridge.try_private = Some(boolean()?),
            "keepalive_interval" => match first.parse::<i64>() {
                // Mosquitto raises a shorter interval to 5 seconds.
                Ok(n) if n <= 65_535 => {
                    bridge.keepalive = Some(u16::try_from(n.max(5)).unwrap_or(5))
                }
                _ => return Err("not a number up to 65535".to_owned()),
            },
            "restart_timeout" => {
                let numbers: Vec<u32> = args
                    .iter()
                    .take(2)
                    .map(|a| a.parse::<u32>())
                    .collect::<Result<_, _>>()
                    .map_err(|_| "not one or two numbers".to_owned())?;
                bridge.restart_timeout = match numbers.as_slice() {
                    [constant] => Some(((*constant).max(1), (*constant).max(1))),
                    [base, cap] => Some(((*base).max(1), (*cap).max(*base).max(1))),
                    _ => return Err("not one or two numbers".to_owned()),
                };
            }
            _ => return Err(bridge_not_carried(key).to_owned()),
        }
        Ok(())
    }

    fn finish(mut self, label: &str) -> Migration {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# rallymq configuration migrated from {} by `rallymq migrate`.",
            comment_text(label)
        );
        let _ = writeln!(out, "# Run it with: rallymq broker --config THIS_FILE");
        let _ = writeln!(
            out,
            "# `# not carried over` lines name the Mosquitto settings rallymq does not take, and why."
        );
        let _ = writeln!(
            out,
            "# The password and ACL files are Mosquitto's own: rallymq reads them as they are.\n"
        );

        let mut listeners = std::mem::take(&mut self.listeners);
        let default_listener = std::mem::take(&mut self.default_listener);
        // Mosquitto starts the default listener (`port`, `bind_address`, or a listener setting
        // before any `listener` line) after the others.
        if default_listener.touched {
            listeners.push(default_listener);
        } else if !default_listener.body.entries.is_empty() {
            // Notes about settings that went nowhere still belong in the file.
            let body = default_listener.body;
            self.top.entries.extend(body.entries);
        }
        // No listener at all: Mosquitto 2 listens on localhost only.
        let local_only = listeners.is_empty();
        let mut tables = Vec::new();
        let mut tls = TlsFiles::default();
        let mut max_connections: Option<Option<u64>> = None;
        if local_only {
            self.top.note(
                "No listener in mosquitto.conf: Mosquitto 2 then listens on localhost:1883 only and lets anonymous clients in; so does this file".to_owned(),
            );
            let mut section = Section::default();
            section.set("kind", toml_string("tcp"));
            section.set("addr", toml_string("127.0.0.1:1883"));
            section.note("Mosquitto also listens on [::1]:1883; add a [[listener]] with addr = \"[::1]:1883\" if IPv6 clients need it".to_owned());
            tables.push(("listener", Vec::new(), section));
        }
        for listener in listeners {
            let limit = match listener.max_connections {
                Some(n) if n >= 0 => Some(n.unsigned_abs()),
                _ => None,
            };
            max_connections = Some(match max_connections {
                // Any listener without a limit leaves the broker without one.
                None => limit,
                Some(total) => total.zip(limit).map(|(a, b)| a.saturating_add(b)),
            });
            if let Some((header, section)) = self.listener_table(listener, &mut tls) {
                tables.push(("listener", header, section));
            }
        }

        // ---- Top level keys derived from the whole file ----
        if let Some(cert) = &tls.cert {
            self.top.set("cert", toml_string(cert));
        }
        if let Some(key) = &tls.key {
            self.top.set("key", toml_string(key));
        }
        if let Some(ca) = &tls.ca {
            self.top.set("ca", toml_string(ca));
        }
        if let Some(Some(total)) = max_connections.filter(|_| !local_only) {
            if tables.len() > 1 {
                self.top.note(format!(
                    "max_connections is per listener in Mosquitto and for the whole broker in rallymq: {total} is their sum"
                ));
            }
            self.top.set("max_connections", total.to_string());
        } else {
            self.top.note("Mosquitto takes any number of connections by default; rallymq at most max_connections (default 100000)".to_owned());
        }
        self.release(Held::PacketSize);
        match (self.max_packet_size, self.message_size_limit.take()) {
            (Some(size), limit) => {
                self.top.set("max_packet_size", size.to_string());
                if let Some((_, at)) = limit {
                    self.top.note(format!("{at}: message_size_limit is left to max_packet_size, which is set"));
                }
            }
            (None, Some((limit, at))) => {
                self.top.note(format!(
                    "{at}: message_size_limit {limit} (payload bytes) becomes max_packet_size (whole packet bytes): a client sending more is disconnected rather than its message dropped"
                ));
                self.top.set("max_packet_size", limit.max(20).to_string());
            }
            (None, None) => self.top.note(
                "Mosquitto takes packets of any size by default; rallymq up to max_packet_size (default 1048576 bytes)".to_owned(),
            ),
        }
        self.release(Held::Storage);
        if self.persistence == Some(true) {
            match self.persistence_location.as_deref() {
                Some(dir) if !dir.is_empty() => {
                    self.top.note("rallymq keeps its own files in data_dir: Mosquitto's mosquitto.db (sessions, retained messages) is not read".to_owned());
                    self.top.set("data_dir", toml_string(dir));
                }
                _ => self.top.note("persistence: rallymq keeps its data in ./rallymq-data (data_dir) where Mosquitto kept mosquitto.db in the current directory".to_owned()),
            }
        } else {
            self.top.note(
                "Mosquitto keeps nothing on disk without `persistence true`; so this file says in_memory. Remove it to keep every acknowledged message across restarts in data_dir".to_owned(),
            );
            self.top.set("in_memory", "true".to_owned());
            if let Some(dir) = &self.persistence_location {
                self.top.note(format!(
                    "persistence_location {dir} is not used: persistence is off"
                ));
            }
        }
        self.release(Held::Security);
        if !self.per_listener_settings || local_only {
            security_keys(&self.security, self.local_only, &mut self.top);
        }

        let mut text = out;
        self.top.render(&mut text);
        for (name, header, section) in &tables {
            let _ = writeln!(text);
            for comment in header {
                let _ = writeln!(text, "{}", comment_text(comment));
            }
            let _ = writeln!(text, "[[{name}]]");
            section.render(&mut text);
        }
        for bridge in std::mem::take(&mut self.bridges) {
            let _ = writeln!(text);
            text.push_str(&self.bridge_table(bridge));
        }
        Migration {
            toml: text,
            not_carried: self.not_carried,
        }
    }

    /// A listener's header comments and table; `None` when it cannot be carried (its notes
    /// then go to the top level).
    fn listener_table(
        &mut self,
        listener: ListenerDraft,
        tls: &mut TlsFiles,
    ) -> Option<(Vec<String>, Section)> {
        let origin = listener
            .origin
            .clone()
            .unwrap_or_else(|| "the default listener".to_owned());
        let mut section = Section::default();
        let addr = self.listener_addr(&listener);
        let secure = listener.certfile.is_some() || listener.keyfile.is_some();
        let addr = match addr {
            Err(why) => Err(why),
            Ok(_) if secure && (listener.certfile.is_none() || listener.keyfile.is_none()) => {
                Err("certfile and keyfile go together (Mosquitto refuses one alone)".to_owned())
            }
            Ok(_) if listener.require_certificate && listener.cafile.is_none() => Err(
                "require_certificate with capath: rallymq takes the client CA certificates in one file; concatenate them, set `ca` and add this listener back"
                    .to_owned(),
            ),
            ok => ok,
        };
        let addr = match addr {
            Ok(addr) => addr,
            Err(why) => {
                self.not_carried += 1;
                let mut notes = Section::default();
                notes.note(format!("not carried over: listener at {origin}: {why}"));
                notes.entries.extend(listener.body.entries);
                let mut header = listener.header;
                header.push(String::new());
                self.top.entries.extend(
                    header
                        .into_iter()
                        .filter(|c| !c.is_empty())
                        .map(Entry::Comment),
                );
                self.top.entries.extend(notes.entries);
                return None;
            }
        };
        let kind = match (listener.websockets, secure) {
            (false, false) => "tcp",
            (true, false) => "ws",
            (false, true) => "tls",
            (true, true) => "wss",
        };
        section.set("kind", toml_string(kind));
        section.set("addr", toml_string(&addr.to_string()));
        if listener.host.is_none() && listener.socket_domain.is_none() {
            section.note(format!(
                "Mosquitto listened on every interface, IPv4 and IPv6; this is IPv4 only: add a [[listener]] on \"[::]:{}\" for IPv6",
                addr.port()
            ));
        }
        if listener.websockets {
            section.note("Mosquitto takes the WebSocket upgrade on any path; rallymq on ws_paths (default /mqtt and /)".to_owned());
        }
        if let (Some(cert), Some(key)) = (&listener.certfile, &listener.keyfile) {
            match (&tls.cert, &tls.key) {
                (None, None) => {
                    tls.cert = Some(cert.clone());
                    tls.key = Some(key.clone());
                }
                (Some(c), Some(k)) if c == cert && k == key => {}
                _ => {
                    self.not_carried += 1;
                    section.note(format!(
                        "not carried over: {origin}: certfile {cert}, keyfile {key}: rallymq has one certificate for all its TLS listeners (cert, key above); this listener uses it"
                    ));
                }
            }
            if listener.require_certificate {
                let ca = listener.cafile.clone().unwrap_or_default();
                match &tls.ca {
                    None => tls.ca = Some(ca),
                    Some(c) if *c == ca => {}
                    Some(c) => {
                        self.not_carried += 1;
                        section.note(format!(
                            "not carried over: {origin}: cafile {ca}: rallymq verifies all client certificates against one CA file ({c})"
                        ));
                    }
                }
                section.set("client_certificates", toml_string("required"));
                if !listener.use_identity_as_username {
                    section.note("rallymq takes a client certificate's Common Name as the user name, without a password; Mosquitto (use_identity_as_username false) checked the password too".to_owned());
                }
            } else if listener.use_identity_as_username {
                section.note("use_identity_as_username needs require_certificate true: no client certificate is asked for".to_owned());
            }
        } else if listener.cafile.is_some() || listener.require_certificate {
            section.note("cafile and require_certificate need certfile and keyfile: this listener has no TLS, as in Mosquitto".to_owned());
        }
        if !listener.origins.is_empty() {
            let list: Vec<String> = listener.origins.iter().map(|o| toml_string(o)).collect();
            section.set("allowed_origins", format!("[{}]", list.join(", ")));
        }
        if self.per_listener_settings {
            security_keys(&listener.security, self.local_only, &mut section);
        }
        section.entries.extend(listener.body.entries);
        Some((listener.header, section))
    }

    fn listener_addr(&self, listener: &ListenerDraft) -> Result<SocketAddr, String> {
        if let Some(path) = &listener.unix_socket {
            return Err(format!(
                "a Unix socket ({path}): rallymq listens on TCP; use a 127.0.0.1 listener"
            ));
        }
        let port = listener.port.unwrap_or(1883);
        if listener.origin.is_some() && listener.port.is_none() {
            return Err("not a port number".to_owned());
        }
        let ip = match listener.host.as_deref() {
            None => match listener.socket_domain.as_deref() {
                Some("ipv6") => IpAddr::from([0u16; 8]),
                _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            },
            Some(host) => match host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
            {
                Ok(ip) => ip,
                Err(_) if host == "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
                Err(_) => match self.env.resolve(host) {
                    Some(ip) => ip,
                    None => return Err(format!("cannot resolve the host name {host}")),
                },
            },
        };
        Ok(SocketAddr::new(ip, port))
    }

    fn bridge_table(&mut self, bridge: BridgeDraft) -> String {
        let mut section = Section::default();
        let mut text = String::new();
        for comment in &bridge.header {
            let _ = writeln!(text, "{}", comment_text(comment));
        }
        let missing = if bridge.name.is_empty() {
            Some("a `connection` line without a name")
        } else if bridge.addresses.is_empty() {
            Some("no address")
        } else if bridge.topics.is_empty() {
            Some("no topic")
        } else {
            None
        };
        if let Some(why) = missing {
            self.not_carried += 1;
            let _ = writeln!(
                text,
                "# not carried over: the bridge at {}: {why} (Mosquitto refuses it too)",
                comment_text(&bridge.origin)
            );
            bridge.body.render(&mut text);
            return text;
        }
        section.set("name", toml_string(&bridge.name));
        match bridge.addresses.as_slice() {
            [one] => section.set("address", toml_string(one)),
            many => {
                let list: Vec<String> = many.iter().map(|a| toml_string(a)).collect();
                section.set("addresses", format!("[{}]", list.join(", ")));
            }
        }
        let transport = if bridge.cafile.is_some() || bridge.capath {
            "tls"
        } else {
            "tcp"
        };
        section.set("transport", toml_string(transport));
        section.set(
            "protocol_version",
            toml_string(bridge.protocol_version.as_deref().unwrap_or("mqttv311")),
        );
        if let Some(id) = &bridge.client_id {
            section.set("client_id", toml_string(id));
        }
        if let Some(user) = &bridge.username {
            section.set("username", toml_string(user));
            if let Some(password) = &bridge.password {
                section.set("password", toml_string(password));
            }
        } else if bridge.password.is_some() {
            section.note(
                "remote_password without remote_username is not used, as in Mosquitto".to_owned(),
            );
        }
        for (key, value) in [
            ("ca_file", &bridge.cafile),
            ("cert_file", &bridge.certfile),
            ("key_file", &bridge.keyfile),
        ] {
            if let Some(value) = value {
                section.set(key, toml_string(value));
            }
        }
        section.set("insecure", bridge.insecure.unwrap_or(false).to_string());
        section.set(
            "clean_session",
            bridge.clean_session.unwrap_or(false).to_string(),
        );
        section.set("keepalive", bridge.keepalive.unwrap_or(60).to_string());
        section.set(
            "try_private",
            bridge.try_private.unwrap_or(true).to_string(),
        );
        let (base, cap) = bridge.restart_timeout.unwrap_or((5, 30));
        section.set("restart_timeout", format!("[{base}, {cap}]"));
        if let Some(n) = self.max_queued_messages {
            section.set("max_queued_messages", n.to_string());
        }
        let topics: Vec<String> = bridge.topics.iter().map(|t| toml_string(t)).collect();
        section.set("topics", format!("[{}]", topics.join(", ")));
        section.entries.extend(bridge.body.entries);
        let _ = writeln!(text, "[[bridge]]");
        section.render(&mut text);
        text
    }
}

/// Where a note goes.
#[derive(Debug, Clone, Copy)]
enum Target {
    Top,
    Listener(Option<usize>),
    Bridge(usize),
}

/// The one certificate, key and client CA of rallymq's TLS listeners.
#[derive(Debug, Default)]
struct TlsFiles {
    cert: Option<String>,
    key: Option<String>,
    ca: Option<String>,
}

/// The security keys of a policy (the broker's or a listener's), with Mosquitto 2's defaults
/// made explicit where rallymq's differ.
fn security_keys(
    keys: &SecurityKeys,
    // Mosquitto's localhost-only mode: no `listener`, `port` or `bind_address` line.
    local_only: bool,
    section: &mut Section,
) {
    if let Some(file) = &keys.password_file {
        section.set("password_file", toml_string(file));
    }
    if let Some(file) = &keys.acl_file {
        section.set("acl_file", toml_string(file));
    }
    // In its localhost-only mode Mosquitto 2 lets anonymous clients in whatever the file says.
    let anonymous = local_only || keys.allow_anonymous.unwrap_or(false);
    section.set("allow_anonymous", anonymous.to_string());
    if local_only && keys.allow_anonymous == Some(false) {
        section.note("allow_anonymous: Mosquitto 2 lets anonymous clients in when no listener is named, whatever allow_anonymous says".to_owned());
    } else if keys.allow_anonymous.is_none() && !local_only {
        section.note(
            "allow_anonymous: Mosquitto 2 refuses anonymous clients once a listener is named"
                .to_owned(),
        );
    }
    if !anonymous && keys.password_file.is_none() {
        // Mosquitto then refuses every client that does not log in with a certificate; rallymq
        // would take any user name, so an empty password file knows no one.
        section.set("password_file", toml_string("/dev/null"));
        section.note(if keys.other_auth {
            "password_file = /dev/null: the plugin is not carried, so no one logs in with a password until you set up password_file or jwt_key".to_owned()
        } else {
            "password_file = /dev/null: with allow_anonymous false and no password_file Mosquitto refuses every client that has no certificate; an empty password file does the same".to_owned()
        });
    }
}

/// Listener settings rallymq does not take, and why.
const LISTENER_NOT_CARRIED: &[(&[&str], &str)] = &[
    (
        &["http_dir"],
        "rallymq's WebSocket listeners serve their own page at / (and the browser client at /rallymq.js); serve other files with a web server",
    ),
    (
        &["mount_point"],
        "rallymq has no mount points: clients see the whole topic tree (an acl_file can confine them)",
    ),
    (
        &["bind_interface"],
        "rallymq binds addresses, not interfaces: put the interface's address in the listener's addr",
    ),
    (
        &["use_username_as_clientid"],
        "rallymq keeps the client id the client sends",
    ),
    (
        &["use_subject_as_username"],
        "rallymq takes the certificate's Common Name (certificate_name = \"cn\") or first Subject Alternative Name (\"san\") as the user name, not the whole subject",
    ),
    (
        &[
            "ciphers",
            "ciphers_tls1.3",
            "tls_version",
            "dhparamfile",
            "tls_engine",
            "tls_engine_kpass_sha1",
            "tls_keyform",
        ],
        "rallymq (rustls) offers TLS 1.2 and 1.3 with its own safe cipher suites; there is no choice to make",
    ),
    (
        &["crlfile"],
        "rallymq does not read certificate revocation lists: take the revoked certificates' CA out of `ca`, or the user out of the ACL",
    ),
    (&["psk_hint"], "rallymq has no TLS-PSK: use certificates"),
    (
        &["max_qos", "maximum_qos"],
        "rallymq grants QoS 0, 1 and 2 on every listener",
    ),
    (
        &["max_topic_alias", "max_topic_alias_broker"],
        "per listener in Mosquitto; rallymq's topic_alias_maximum and outgoing_topic_alias_maximum hold for the whole broker (default 64)",
    ),
    (
        &["accept_protocol_versions"],
        "rallymq accepts MQTT 3.1, 3.1.1 and 5.0 on every listener",
    ),
];

/// Broker settings rallymq does not take, and why (`*`: any key with that prefix).
const TOP_NOT_CARRIED: &[(&[&str], &str)] = &[
    (
        &[
            "auth_opt_*",
            "plugin_opt_*",
            "auth_plugin_deny_special_chars",
        ],
        "an option of a plugin, which rallymq does not load",
    ),
    (
        &["auto_id_prefix", "allow_zero_length_clientid"],
        "rallymq gives a client that sends an empty client id (MQTT 3.1.1 with a clean session, or 5.0) an id of its own, always",
    ),
    (
        &["clientid_prefixes"],
        "rallymq does not filter client ids: an acl_file `pattern` with %c confines what each client id may use",
    ),
    (
        &["check_retain_source"],
        "rallymq checks the subscriber's read access to each retained message it sends, not the publisher's access now",
    ),
    (
        &["websockets_headers_size"],
        "rallymq reads WebSocket handshakes of up to max_http_header_size bytes (default 16384), larger than Mosquitto's buffer",
    ),
    (
        &["max_inflight_bytes", "memory_limit"],
        "rallymq bounds memory with max_in_flight, max_queued_messages and max_queued_bytes per session, and max_connections",
    ),
    (
        &["persistent_client_expiration"],
        "rallymq keeps an MQTT 3.1.1 persistent session until the client cleans it; MQTT 5 clients set their own expiry, capped by max_session_expiry",
    ),
    (
        &[
            "persistence_file",
            "autosave_interval",
            "autosave_on_changes",
        ],
        "rallymq writes every acknowledged message to its data_dir as it goes, in files of its own: there is no snapshot to name or schedule (mosquitto.db is not read)",
    ),
    (
        &["log_*", "connection_messages", "websockets_log_level"],
        LOGGING,
    ),
    (
        &["pid_file", "user", "daemon"],
        "rallymq runs in the foreground as the user that starts it: let systemd (User=, PIDFile) or your supervisor do this",
    ),
];

/// Why `key` is in `table`, if it is.
fn explained(table: &[(&[&str], &'static str)], key: &str) -> Option<&'static str> {
    table
        .iter()
        .find(|(keys, _)| {
            keys.iter().any(|k| match k.strip_suffix('*') {
                Some(prefix) => key.starts_with(prefix),
                None => *k == key,
            })
        })
        .map(|(_, why)| *why)
}

/// Whether `key` is a setting of a bridge.
fn is_bridge_key(key: &str) -> bool {
    matches!(
        key,
        "address"
            | "addresses"
            | "topic"
            | "cleansession"
            | "clientid"
            | "remote_clientid"
            | "local_clientid"
            | "username"
            | "remote_username"
            | "password"
            | "remote_password"
            | "local_username"
            | "local_password"
            | "keepalive_interval"
            | "idle_timeout"
            | "notifications"
            | "notifications_local_only"
            | "notification_topic"
            | "restart_timeout"
            | "round_robin"
            | "start_type"
            | "threshold"
            | "try_private"
    ) || key.starts_with("bridge_")
}

/// Why a bridge setting rallymq does not take is left out.
fn bridge_not_carried(key: &str) -> &'static str {
    match key {
        "local_clientid" | "local_username" | "local_password" => {
            "a rallymq bridge runs inside the broker, not as a client of it: it has no local identity"
        }
        "notifications" | "notifications_local_only" | "notification_topic" => {
            "rallymq bridges publish no connection-state notifications; their state is in the broker's log"
        }
        "start_type" | "idle_timeout" | "threshold" => {
            "rallymq bridges start with the broker and reconnect after restart_timeout (Mosquitto's automatic start type)"
        }
        "round_robin" => {
            "rallymq bridges try their addresses in turn and stay on the one that answers"
        }
        "bridge_identity" | "bridge_psk" => {
            "rallymq has no TLS-PSK: use ca_file, cert_file and key_file"
        }
        "bridge_alpn"
        | "bridge_tls_version"
        | "bridge_ciphers"
        | "bridge_ciphers_tls1.3"
        | "bridge_require_ocsp" => {
            "rallymq (rustls) negotiates TLS 1.2 or 1.3 with its own cipher suites"
        }
        "bridge_bind_address" => "rallymq bridges connect from the address the system chooses",
        "bridge_attempt_unsubscribe"
        | "bridge_outgoing_retain"
        | "bridge_max_packet_size"
        | "bridge_max_topic_alias"
        | "bridge_receive_maximum"
        | "bridge_session_expiry_interval" => "rallymq bridges have no such setting",
        _ => "not a Mosquitto 2.0 bridge setting",
    }
}

/// `host[:port]` as `host:port` (Mosquitto's default port is 1883; an IPv6 address needs one).
fn bridge_address(text: &str) -> Result<String, String> {
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) => match port.parse::<u16>() {
            Ok(port) if port > 0 => (host, port),
            _ => return Err(format!("{text}: not a port from 1 to 65535")),
        },
        None => (text, 1883),
    };
    if host.is_empty() {
        return Err(format!("{text}: no host"));
    }
    Ok(if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

/// Mosquitto's booleans.
fn parse_bool(word: &str) -> Option<bool> {
    match word {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Text that is safe in a TOML comment: one line, no control characters but tab.
fn comment_text(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() && c != '\t' { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FileConfig, Settings};
    use proptest::prelude::*;
    use rallymq_broker::{BrokerConfig, ClientCertificates, ListenerKind, Storage};

    /// `include_dir` directories and host names, without the file system or DNS.
    #[derive(Default)]
    struct Fake {
        dirs: Vec<(&'static str, Vec<(String, String)>)>,
    }

    impl Environment for Fake {
        fn conf_files(&self, dir: &str) -> Result<Vec<(String, String)>, String> {
            self.dirs
                .iter()
                .find(|(name, _)| *name == dir)
                .map(|(_, files)| files.clone())
                .ok_or_else(|| "No such file or directory".to_owned())
        }

        fn resolve(&self, host: &str) -> Option<IpAddr> {
            (host == "broker.example").then(|| IpAddr::from([10, 0, 0, 5]))
        }
    }

    fn convert(text: &str) -> Migration {
        migrate("mosquitto.conf", text, &Fake::default())
    }

    /// The TOML as a table, the `[[bridge]]` tables taken out (they have a parser of their own).
    fn table(toml_text: &str) -> (toml::Table, Vec<toml::Value>) {
        let mut table: toml::Table =
            toml::from_str(toml_text).unwrap_or_else(|e| panic!("not TOML: {e}\n{toml_text}"));
        let bridges = match table.remove("bridge") {
            Some(toml::Value::Array(bridges)) => bridges,
            _ => Vec::new(),
        };
        (table, bridges)
    }

    /// The broker configuration the output gives `rallymq broker --config`.
    fn broker(toml_text: &str) -> BrokerConfig {
        let (table, _) = table(toml_text);
        let file: FileConfig = toml::Value::Table(table)
            .try_into()
            .unwrap_or_else(|e| panic!("not a config file: {e}\n{toml_text}"));
        Settings::from_file(file)
            .into_broker_config()
            .unwrap_or_else(|e| panic!("refused by the broker: {e}\n{toml_text}"))
    }

    /// The broker's listeners, what and where.
    fn listeners(config: &BrokerConfig) -> Vec<(ListenerKind, SocketAddr)> {
        config
            .all_listeners()
            .iter()
            .map(|l| (l.kind, l.addr))
            .collect()
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn no_listener_is_localhost_1883_with_anonymous_clients() {
        let out = convert("allow_anonymous false\n").toml;
        let config = broker(&out);
        let listeners = config.all_listeners();
        assert_eq!(listeners.len(), 1, "{out}");
        assert_eq!(listeners[0].addr, addr("127.0.0.1:1883"));
        assert_eq!(listeners[0].kind, ListenerKind::Tcp);
        assert_eq!(config.security.auth.allow_anonymous, Some(true), "{out}");
        assert_eq!(
            config.storage,
            Storage::InMemory,
            "persistence is off by default"
        );
    }

    #[test]
    fn a_listener_without_security_refuses_everyone_as_mosquitto_2_does() {
        let out = convert("listener 1883\n").toml;
        let config = broker(&out);
        assert_eq!(config.all_listeners()[0].addr, addr("0.0.0.0:1883"));
        assert_eq!(config.security.auth.allow_anonymous, Some(false), "{out}");
        assert_eq!(
            config.security.auth.password_file,
            Some(PathBuf::from("/dev/null")),
            "{out}"
        );
        // With a password file, it is that file.
        let out = convert("listener 1883\npassword_file /etc/mosquitto/passwd\n").toml;
        let config = broker(&out);
        assert_eq!(
            config.security.auth.password_file,
            Some(PathBuf::from("/etc/mosquitto/passwd"))
        );
        assert_eq!(config.security.auth.allow_anonymous, Some(false));
    }

    #[test]
    fn listeners_protocols_and_addresses() {
        let out = convert(
            "listener 1883 127.0.0.1\nlistener 9001\nprotocol websockets\n\
             listener 1884 broker.example\nlistener 1885 localhost\nlistener 1886\nsocket_domain ipv6\n\
             listener 0 /run/mosquitto.sock\nallow_anonymous true\n",
        );
        let config = broker(&out.toml);
        assert_eq!(
            listeners(&config),
            vec![
                (ListenerKind::Tcp, addr("127.0.0.1:1883")),
                (ListenerKind::WebSocket, addr("0.0.0.0:9001")),
                (ListenerKind::Tcp, addr("10.0.0.5:1884")),
                (ListenerKind::Tcp, addr("127.0.0.1:1885")),
                (ListenerKind::Tcp, addr("[::]:1886")),
            ],
            "{}",
            out.toml
        );
        assert!(
            out.toml
                .contains("not carried over: listener at mosquitto.conf:8: a Unix socket"),
            "{}",
            out.toml
        );
        assert_eq!(out.not_carried, 1);
    }

    #[test]
    fn old_style_port_and_bind_address_are_the_default_listener() {
        let out = convert("port 1884\nbind_address 127.0.0.1\nallow_anonymous true\n").toml;
        let config = broker(&out);
        assert_eq!(config.all_listeners().len(), 1, "{out}");
        assert_eq!(config.all_listeners()[0].addr, addr("127.0.0.1:1884"));
        assert_eq!(config.security.auth.allow_anonymous, Some(true));
        // A listener setting before any `listener` line starts the default listener (1883) too.
        let out = convert("max_connections 10\nlistener 1884\nmax_connections 5\n").toml;
        let config = broker(&out);
        let addrs: Vec<SocketAddr> = config.all_listeners().iter().map(|l| l.addr).collect();
        assert_eq!(
            addrs,
            vec![addr("0.0.0.0:1884"), addr("0.0.0.0:1883")],
            "{out}"
        );
        assert_eq!(config.limits.max_connections, 15, "the sum: {out}");
    }

    #[test]
    fn tls_listeners_share_one_certificate_and_ask_for_client_certificates() {
        let out = convert(
            "listener 8883\ncertfile /etc/c.pem\nkeyfile /etc/k.pem\ncafile /etc/ca.pem\n\
             require_certificate true\nuse_identity_as_username true\n\
             listener 8884\nprotocol websockets\ncertfile /etc/c.pem\nkeyfile /etc/k.pem\n\
             listener 8885\ncertfile /etc/other.pem\nkeyfile /etc/k.pem\nciphers HIGH\n",
        );
        let config = broker(&out.toml);
        let listeners = config.all_listeners();
        let got: Vec<(ListenerKind, ClientCertificates)> = listeners
            .iter()
            .map(|l| (l.kind, l.client_certificates))
            .collect();
        assert_eq!(
            got,
            vec![
                (ListenerKind::Tls, ClientCertificates::Required),
                (ListenerKind::WebSocketTls, ClientCertificates::NotAsked),
                (ListenerKind::Tls, ClientCertificates::NotAsked),
            ],
            "{}",
            out.toml
        );
        let tls = config.tls_files.expect("cert and key");
        assert_eq!(tls.cert, PathBuf::from("/etc/c.pem"));
        assert_eq!(tls.key, PathBuf::from("/etc/k.pem"));
        assert_eq!(tls.client_ca, Some(PathBuf::from("/etc/ca.pem")));
        // The third listener's own certificate and its ciphers.
        assert_eq!(out.not_carried, 2, "{}", out.toml);
        assert!(
            out.toml
                .contains("rallymq has one certificate for all its TLS listeners")
        );
    }

    #[test]
    fn a_required_client_certificate_without_a_ca_file_is_not_weakened() {
        let out = convert(
            "listener 8883\ncertfile /c\nkeyfile /k\ncapath /etc/ssl/certs\nrequire_certificate true\n\
             listener 1883\n",
        );
        let config = broker(&out.toml);
        assert_eq!(config.all_listeners().len(), 1, "{}", out.toml);
        assert_eq!(config.all_listeners()[0].addr, addr("0.0.0.0:1883"));
        assert!(
            out.toml.contains("require_certificate with capath"),
            "{}",
            out.toml
        );
    }

    #[test]
    fn per_listener_settings_give_each_listener_its_own_policy() {
        let out = convert(
            "per_listener_settings true\nlistener 1883\npassword_file /p\nacl_file /a\n\
             listener 1884\nallow_anonymous true\n",
        );
        let config = broker(&out.toml);
        let listeners = config.all_listeners();
        let first = listeners[0].security.as_ref().expect("a policy of its own");
        assert_eq!(first.auth.password_file, Some(PathBuf::from("/p")));
        assert_eq!(first.acl_file, Some(PathBuf::from("/a")));
        assert_eq!(first.auth.allow_anonymous, Some(false));
        let second = listeners[1].security.as_ref().expect("a policy of its own");
        assert_eq!(second.auth.allow_anonymous, Some(true));
        assert_eq!(second.auth.password_file, None);
        // Without per_listener_settings the same lines are the broker's, the last one winning.
        let out = convert(
            "listener 1883\npassword_file /p\nacl_file /a\nlistener 1884\nallow_anonymous true\n",
        );
        let config = broker(&out.toml);
        assert!(config.all_listeners().iter().all(|l| l.security.is_none()));
        assert_eq!(
            config.security.auth.password_file,
            Some(PathBuf::from("/p"))
        );
        assert_eq!(config.security.auth.allow_anonymous, Some(true));
        assert_eq!(config.security.acl_file, Some(PathBuf::from("/a")));
    }

    #[test]
    fn limits_storage_and_sys_interval_carry_over() {
        let out = convert(
            "listener 1883\nmax_keepalive 120\nmax_queued_messages 500\nmax_queued_bytes 100000\n\
             max_packet_size 4096\nmax_inflight_messages 10\nsys_interval 30\n\
             persistence true\npersistence_location /var/lib/mosquitto/\n",
        );
        let config = broker(&out.toml);
        assert_eq!(config.limits.max_keep_alive, Some(120));
        assert_eq!(config.limits.max_queued_messages, 500);
        assert_eq!(config.limits.max_queued_bytes, 100_000);
        assert_eq!(config.limits.max_packet_size, 4096);
        assert_eq!(config.limits.max_in_flight, 10);
        assert_eq!(
            config.sys_interval,
            Some(std::time::Duration::from_secs(30))
        );
        assert_eq!(
            config.storage,
            Storage::Directory(PathBuf::from("/var/lib/mosquitto/"))
        );
        // message_size_limit becomes the packet limit when max_packet_size is not given.
        let config = broker(&convert("message_size_limit 1000\nmax_inflight_messages 0\n").toml);
        assert_eq!(config.limits.max_packet_size, 1000);
        assert_eq!(config.limits.max_in_flight, 65535, "0 is no limit");
    }

    #[test]
    fn include_dir_reads_its_files_in_order_each_from_the_default_listener() {
        let env = Fake {
            dirs: vec![(
                "/etc/mosquitto/conf.d",
                vec![
                    (
                        "/etc/mosquitto/conf.d/a.conf".to_owned(),
                        "listener 1884\nmax_keepalive 10\n".to_owned(),
                    ),
                    // Starts again on the default listener: this creates 1883.
                    (
                        "/etc/mosquitto/conf.d/b.conf".to_owned(),
                        "protocol websockets\nmax_keepalive 20\n".to_owned(),
                    ),
                ],
            )],
        };
        let out = migrate(
            "mosquitto.conf",
            "include_dir /etc/mosquitto/conf.d\nallow_anonymous true\n",
            &env,
        );
        let config = broker(&out.toml);
        assert_eq!(
            listeners(&config),
            vec![
                (ListenerKind::Tcp, addr("0.0.0.0:1884")),
                (ListenerKind::WebSocket, addr("0.0.0.0:1883")),
            ],
            "{}",
            out.toml
        );
        assert_eq!(
            config.limits.max_keep_alive,
            Some(20),
            "the later file wins"
        );
        // An include_dir in an included file is ignored, as Mosquitto does; a missing one noted.
        let out = convert("include_dir /nowhere\n");
        assert!(
            out.toml.contains("cannot read the directory"),
            "{}",
            out.toml
        );
    }

    #[test]
    fn bridges_follow_the_bridge_schema() {
        let out = convert(
            "listener 1883\nmax_queued_messages 200\n\
             connection cloud\naddress mqtt.example.com:8883\ntopic sensors/# out 1 edge/ site1/\n\
             topic commands/# in 2\nbridge_protocol_version mqttv50\nremote_clientid edge1.cloud\n\
             remote_username edge\nremote_password secret\nbridge_cafile /etc/ssl/ca.pem\n\
             bridge_certfile /etc/ssl/edge.pem\nbridge_keyfile /etc/ssl/edge.key\nbridge_insecure false\n\
             cleansession true\nkeepalive_interval 2\ntry_private false\nrestart_timeout 10 60\n\
             notifications false\n\
             connection second\naddresses h1 h2:1884 ::1:1885\ntopic # both 0\nrestart_timeout 20\n",
        );
        let (_, bridges) = table(&out.toml);
        assert_eq!(bridges.len(), 2, "{}", out.toml);
        let expected: toml::Value = toml::from_str::<toml::Table>(
            r#"
            name = "cloud"
            address = "mqtt.example.com:8883"
            transport = "tls"
            protocol_version = "mqttv50"
            client_id = "edge1.cloud"
            username = "edge"
            password = "secret"
            ca_file = "/etc/ssl/ca.pem"
            cert_file = "/etc/ssl/edge.pem"
            key_file = "/etc/ssl/edge.key"
            insecure = false
            clean_session = true
            keepalive = 5
            try_private = false
            restart_timeout = [10, 60]
            max_queued_messages = 200
            topics = ["sensors/# out 1 edge/ site1/", "commands/# in 2"]
            "#,
        )
        .expect("TOML")
        .into();
        assert_eq!(bridges[0], expected, "{}", out.toml);
        let second = bridges[1].as_table().expect("a table");
        assert_eq!(
            second.get("addresses"),
            Some(&toml::Value::from(vec!["h1:1883", "h2:1884", "[::1]:1885"]))
        );
        assert_eq!(second.get("transport"), Some(&toml::Value::from("tcp")));
        assert_eq!(
            second.get("restart_timeout"),
            Some(&toml::Value::from(vec![20, 20]))
        );
        assert_eq!(second.get("clean_session"), Some(&toml::Value::from(false)));
        assert!(
            out.toml
                .contains("not carried over: mosquitto.conf:19: `notifications false`"),
            "{}",
            out.toml
        );
        // Without an address or a topic Mosquitto refuses the bridge: no table.
        let out = convert("connection x\ntopic a\n");
        assert!(table(&out.toml).1.is_empty(), "{}", out.toml);
    }

    #[test]
    fn every_line_not_carried_is_a_comment_naming_it_and_attached_comments_follow() {
        let out = convert(
            "# Our broker\n\nlistener 1883\n# Keep the logs\nlog_dest file /var/log/m.log\n\
             auth_plugin /usr/lib/x.so\nauth_opt_db x\nno_such_key 1\nmax_packet_size 5\n",
        );
        for line in [
            "mosquitto.conf:5: `log_dest file /var/log/m.log`: rallymq logs to stderr",
            "mosquitto.conf:6: `auth_plugin /usr/lib/x.so`: rallymq loads no plugins",
            "mosquitto.conf:7: `auth_opt_db x`",
            "mosquitto.conf:8: `no_such_key 1`: not a Mosquitto 2.0 setting",
            "mosquitto.conf:9: `max_packet_size 5`: Mosquitto takes 20 bytes or more",
        ] {
            assert!(
                out.toml.contains(&format!("# not carried over: {line}")),
                "{line}\n{}",
                out.toml
            );
        }
        assert_eq!(out.not_carried, 5);
        assert!(
            out.toml
                .contains("# Keep the logs\n# not carried over: mosquitto.conf:5"),
            "{}",
            out.toml
        );
        assert!(
            !out.toml.contains("Our broker"),
            "a comment standing alone is left out"
        );
        broker(&out.toml);
    }

    #[test]
    fn the_debian_examples_convert_to_a_config_the_broker_takes() {
        for (name, text) in [
            (
                "example",
                include_str!("../tests/fixtures/migrate/debian-example-mosquitto.conf"),
            ),
            (
                "etc",
                include_str!("../tests/fixtures/migrate/debian-etc-mosquitto.conf"),
            ),
        ] {
            let out = convert(text);
            let config = broker(&out.toml);
            assert_eq!(config.all_listeners().len(), 1, "{name}: {}", out.toml);
            assert_eq!(config.all_listeners()[0].addr, addr("127.0.0.1:1883"));
        }
        let etc = convert(include_str!(
            "../tests/fixtures/migrate/debian-etc-mosquitto.conf"
        ));
        assert_eq!(
            broker(&etc.toml).storage,
            Storage::Directory(PathBuf::from("/var/lib/mosquitto/"))
        );
    }

    /// Lines Mosquitto knows, with values good and bad.
    fn known_line() -> impl Strategy<Value = String> {
        let keys = prop::sample::select(vec![
            "listener",
            "port",
            "bind_address",
            "protocol",
            "socket_domain",
            "certfile",
            "keyfile",
            "cafile",
            "capath",
            "require_certificate",
            "use_identity_as_username",
            "max_connections",
            "websockets_origin",
            "http_dir",
            "per_listener_settings",
            "password_file",
            "acl_file",
            "allow_anonymous",
            "auth_plugin",
            "psk_file",
            "max_keepalive",
            "max_queued_messages",
            "max_queued_bytes",
            "max_packet_size",
            "message_size_limit",
            "max_inflight_messages",
            "sys_interval",
            "persistence",
            "persistence_location",
            "log_dest",
            "include_dir",
            "connection",
            "address",
            "addresses",
            "topic",
            "bridge_protocol_version",
            "remote_clientid",
            "remote_username",
            "remote_password",
            "bridge_cafile",
            "bridge_certfile",
            "bridge_keyfile",
            "bridge_insecure",
            "cleansession",
            "keepalive_interval",
            "try_private",
            "restart_timeout",
            "notifications",
            "ciphers",
            "# a comment",
            "",
        ]);
        let values = prop::sample::select(vec![
            "",
            "1883",
            "0",
            "-1",
            "65535",
            "70000",
            "true",
            "false",
            "websockets",
            "mqtt",
            "ipv6",
            "127.0.0.1",
            "localhost",
            "::1",
            "/etc/x y",
            "a\"b\\c",
            "h1:1883 h2",
            "5 30",
            "mqttv50",
            "mqttv31",
            "# x",
            "\u{1}\u{7f}é",
        ]);
        (keys, prop::collection::vec(values, 0..3))
            .prop_map(|(key, values)| format!("{key} {}", values.join(" ")))
    }

    proptest! {
        #[test]
        fn any_text_converts_to_toml_without_panicking(
            lines in prop::collection::vec(any::<String>(), 0..8),
        ) {
            let text = lines.join("\n");
            let out = convert(&text);
            prop_assert!(toml::from_str::<toml::Table>(&out.toml).is_ok(), "{}", out.toml);
        }

        #[test]
        fn any_known_settings_give_a_config_the_broker_takes(lines in prop::collection::vec(known_line(), 0..25)) {
            let text = lines.join("\n");
            let out = convert(&text);
            let (table, bridges) = table(&out.toml);
            let file: Result<FileConfig, _> = toml::Value::Table(table).try_into();
            let file = file.map_err(|e| TestCaseError::fail(format!("{e}\n{text}\n{}", out.toml)))?;
            let config = Settings::from_file(file).into_broker_config();
            prop_assert!(config.is_ok(), "{:?}\n{text}\n---\n{}", config.err(), out.toml);
            for bridge in bridges {
                let bridge = bridge.as_table().cloned().unwrap_or_default();
                prop_assert!(bridge.contains_key("name") && bridge.contains_key("topics"));
                prop_assert!(bridge.contains_key("address") || bridge.contains_key("addresses"));
            }
        }
    }
}
