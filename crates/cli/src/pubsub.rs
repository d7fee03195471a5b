//! `rallymq pub` and `rallymq sub`: MQTT clients with `mosquitto_pub` and `mosquitto_sub`'s
//! flags, so scripts move over unchanged. Built on `rallymq-client`.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use clap::{ArgAction, Args};
use rallymq_client::{Client, ClientOptions, Error as ClientError};
use rallymq_codec::{Message, ProtocolVersion, QoS, ReasonCode, TopicName, UserProperty};

/// Exit code when the broker refuses the connection (Mosquitto's MOSQ_ERR_CONN_REFUSED).
pub(crate) const EXIT_REFUSED: u8 = 5;
/// Exit code when `sub -W` times out (as `mosquitto_sub`).
pub(crate) const EXIT_TIMEOUT: u8 = 27;

/// What ended a client command badly: an exit code and a one-line message.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Self {
        match error {
            ClientError::Refused(code) => Self::new(
                EXIT_REFUSED,
                format!("Connection Refused: {}", refusal(code)),
            ),
            ClientError::InvalidUrl(_) | ClientError::InvalidArgument(_) => {
                Self::new(2, error.to_string())
            }
            other => Self::new(1, other.to_string()),
        }
    }
}

fn refusal(code: ReasonCode) -> String {
    match code {
        ReasonCode::UnsupportedProtocolVersion => "unacceptable protocol version".into(),
        ReasonCode::ClientIdentifierNotValid => "identifier rejected".into(),
        ReasonCode::ServerUnavailable => "broker unavailable".into(),
        ReasonCode::BadUserNameOrPassword => "bad user name or password".into(),
        ReasonCode::NotAuthorized => "not authorised".into(),
        other => format!("{other:?} (0x{:02x})", other.as_u8()),
    }
}

/// Connection flags shared by `pub` and `sub`, named as Mosquitto names them.
#[derive(Debug, Args)]
pub(crate) struct ConnectionArgs {
    /// Print help.
    #[arg(long, action = ArgAction::Help)]
    help: Option<bool>,

    /// Broker host.
    #[arg(short = 'h', long = "host", default_value = "localhost")]
    host: String,

    /// Broker port (default 1883, or the URL's).
    #[arg(short = 'p', long = "port")]
    port: Option<u16>,

    /// Broker URL: mqtt://, mqtts://, ws:// or wss://, with user, password, port and path
    /// (`mqtt://user:pass@host:1883`, `ws://host:8080/mqtt`). Replaces -h and -p.
    #[arg(short = 'L', long = "url")]
    url: Option<String>,

    /// MQTT version: 31, 311 or 5 (also mqttv31, mqttv311, mqttv5).
    #[arg(short = 'V', long = "protocol-version", default_value = "311", value_parser = parse_version)]
    protocol_version: ProtocolVersion,

    /// User name.
    #[arg(short = 'u', long = "username")]
    username: Option<String>,

    /// Password.
    #[arg(short = 'P', long = "pw")]
    password: Option<String>,

    /// Client identifier (default: rallymq-pub-PID or rallymq-sub-PID).
    #[arg(short = 'i', long = "id")]
    id: Option<String>,

    /// Persistent session: clean session off (MQTT 5: clean start off, session never expires).
    #[arg(short = 'c', long = "disable-clean-session")]
    persistent: bool,

    /// Keep alive in seconds.
    #[arg(short = 'k', long = "keepalive", default_value_t = 60)]
    keepalive: u16,

    /// QoS: 0, 1 or 2.
    #[arg(short = 'q', long = "qos", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,

    /// CA certificates (PEM) to trust for mqtts:// and wss://, instead of the system's.
    #[arg(long = "cafile")]
    cafile: Option<PathBuf>,

    /// MQTT 5 property: `-D COMMAND user-property NAME VALUE` (COMMAND: connect, publish,
    /// subscribe). Repeatable.
    #[arg(short = 'D', long = "property", num_args = 4, value_names = ["COMMAND", "PROPERTY", "NAME", "VALUE"], action = ArgAction::Append)]
    properties: Vec<String>,
}

fn parse_version(text: &str) -> Result<ProtocolVersion, String> {
    match text {
        "31" | "mqttv31" => Ok(ProtocolVersion::V3_1),
        "311" | "mqttv311" => Ok(ProtocolVersion::V3_1_1),
        "5" | "mqttv5" => Ok(ProtocolVersion::V5),
        _ => Err(format!(
            "unknown protocol version '{text}': use 31, 311 or 5"
        )),
    }
}

fn qos(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

impl ConnectionArgs {
    /// User properties given with `-D COMMAND user-property NAME VALUE` for `command`.
    fn user_properties(&self, command: &str) -> Result<Vec<UserProperty>, Failure> {
        let mut found = Vec::new();
        for chunk in self.properties.chunks(4) {
            let [for_command, property, name, value] = chunk else {
                continue;
            };
            if property != "user-property" {
                return Err(Failure::new(
                    2,
                    format!("-D: only user-property is supported, not '{property}'"),
                ));
            }
            if !matches!(for_command.as_str(), "connect" | "publish" | "subscribe") {
                return Err(Failure::new(
                    2,
                    format!("-D: unknown command '{for_command}'"),
                ));
            }
            if for_command == command {
                found.push(
                    UserProperty::new(name.clone(), value.clone())
                        .map_err(|e| Failure::new(2, e.to_string()))?,
                );
            }
        }
        if !found.is_empty() && !self.protocol_version.is_v5() {
            return Err(Failure::new(2, "-D needs MQTT 5 (-V 5)"));
        }
        Ok(found)
    }

    fn options(&self, role: &str) -> Result<ClientOptions, Failure> {
        let url = match &self.url {
            Some(url) => url.clone(),
            None => format!(
                "mqtt://{}:{}",
                bracket(&self.host),
                self.port.unwrap_or(1883)
            ),
        };
        let id = self
            .id
            .clone()
            .unwrap_or_else(|| format!("rallymq-{role}-{}", std::process::id()));
        let mut options = ClientOptions::new(&url)
            .version(self.protocol_version)
            .client_id(&id)
            .clean_start(!self.persistent)
            .keep_alive(self.keepalive)
            .reconnect(None);
        if let Some(username) = &self.username {
            options = options.credentials(username, self.password.as_deref().map(str::as_bytes));
        } else if self.password.is_some() {
            return Err(Failure::new(2, "-P needs -u"));
        }
        if self.persistent && self.protocol_version.is_v5() {
            options = options.session_expiry(u32::MAX);
        }
        if let Some(cafile) = &self.cafile {
            options = options.ca_file(cafile);
        }
        options.connect.properties.user_properties = self.user_properties("connect")?;
        options.validate()?;
        Ok(options)
    }
}

fn bracket(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// `rallymq pub` flags.
#[derive(Debug, Args)]
#[command(
    disable_help_flag = true,
    disable_version_flag = true,
    after_help = "\
Exit codes: 0 sent (and acknowledged at QoS 1/2), 1 error, 2 bad arguments, 5 connection refused."
)]
pub(crate) struct PubArgs {
    #[command(flatten)]
    connection: ConnectionArgs,

    /// Topic to publish to.
    #[arg(short = 't', long = "topic")]
    topic: String,

    /// Message to send.
    #[arg(short = 'm', long = "message", group = "source")]
    message: Option<String>,

    /// Send the contents of FILE as the message.
    #[arg(short = 'f', long = "file", group = "source")]
    file: Option<PathBuf>,

    /// Send each line of stdin as a message.
    #[arg(short = 'l', long = "stdin-line", group = "source")]
    lines: bool,

    /// Send all of stdin as one message.
    #[arg(short = 's', long = "stdin-file", group = "source")]
    stdin: bool,

    /// Send an empty (null) message.
    #[arg(short = 'n', long = "null-message", group = "source")]
    null: bool,

    /// Retain the message.
    #[arg(short = 'r', long = "retain")]
    retain: bool,
}

/// `rallymq sub` flags.
#[derive(Debug, Args)]
#[command(
    disable_help_flag = true,
    disable_version_flag = true,
    after_help = "\
Exit codes: 0 done (after -C messages, or when the broker closes), 1 error, 2 bad arguments,
5 connection refused, 27 timed out (-W)."
)]
pub(crate) struct SubArgs {
    #[command(flatten)]
    connection: ConnectionArgs,

    /// Topic filter to subscribe to (repeatable).
    #[arg(short = 't', long = "topic", required = true)]
    topics: Vec<String>,

    /// Exit after COUNT messages.
    #[arg(short = 'C', long = "count")]
    count: Option<u64>,

    /// Print the topic before each message.
    #[arg(short = 'v', long = "verbose")]
    verbose: bool,

    /// Exit after SECS seconds (code 27 if the count was not reached).
    #[arg(short = 'W', long = "timeout")]
    timeout: Option<u64>,

    /// Do not print messages that were retained (sent because they were retained at subscribe).
    #[arg(short = 'R', long = "no-stale")]
    no_stale: bool,
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(1, format!("cannot start the tokio runtime: {e}")))
}

/// Runs `rallymq pub`.
pub(crate) fn run_pub(args: PubArgs) -> Result<(), Failure> {
    let topic = TopicName::new(args.topic.as_str())
        .map_err(|e| Failure::new(2, format!("-t {}: {e}", args.topic)))?;
    let user_properties = args.connection.user_properties("publish")?;
    let options = args.connection.options("pub")?;
    let level = qos(args.connection.qos);
    let message = |payload: Bytes| {
        let mut message = Message::new(topic.clone(), payload);
        message.qos = level;
        message.retain = args.retain;
        message.properties.user_properties = user_properties.clone();
        message
    };
    let payloads: Vec<Bytes> = if args.lines {
        Vec::new()
    } else if let Some(text) = &args.message {
        vec![Bytes::from(text.clone())]
    } else if let Some(path) = &args.file {
        vec![Bytes::from(std::fs::read(path).map_err(|e| {
            Failure::new(1, format!("{}: {e}", path.display()))
        })?)]
    } else if args.stdin {
        let mut all = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut all)
            .map_err(|e| Failure::new(1, e.to_string()))?;
        vec![Bytes::from(all)]
    } else if args.null {
        vec![Bytes::new()]
    } else {
        return Err(Failure::new(
            2,
            "nothing to publish: give -m, -f, -l, -s or -n",
        ));
    };
    runtime()?.block_on(async move {
        let (client, _messages, _) = Client::connect(options).await?;
        if args.lines {
            let (lines_tx, mut lines_rx) = tokio::sync::mpsc::channel::<String>(64);
            std::thread::spawn(move || {
                for line in std::io::stdin().lock().lines() {
                    let Ok(line) = line else { return };
                    if lines_tx.blocking_send(line).is_err() {
                        return;
                    }
                }
            });
            while let Some(line) = lines_rx.recv().await {
                client.publish_message(message(Bytes::from(line))).await?;
            }
        } else {
            for payload in payloads {
                client.publish_message(message(payload)).await?;
            }
        }
        client.disconnect().await?;
        Ok(())
    })
}

/// Runs `rallymq sub`.
pub(crate) fn run_sub(args: SubArgs) -> Result<(), Failure> {
    let mut subscriptions = Vec::new();
    for topic in &args.topics {
        let filter = rallymq_codec::TopicFilter::new(topic.as_str())
            .map_err(|e| Failure::new(2, format!("-t {topic}: {e}")))?;
        subscriptions.push(rallymq_codec::Subscription::new(
            filter,
            qos(args.connection.qos),
        ));
    }
    let properties = rallymq_codec::SubscribeProperties {
        user_properties: args.connection.user_properties("subscribe")?,
        ..Default::default()
    };
    let options = args.connection.options("sub")?;
    runtime()?.block_on(async move {
        let (client, mut messages, _) = Client::connect(options).await?;
        for code in client.subscribe_many(subscriptions, properties).await? {
            if code.is_error() {
                return Err(Failure::new(
                    1,
                    format!("subscription refused: {}", refusal(code)),
                ));
            }
        }
        let deadline = args
            .timeout
            .map(|secs| tokio::time::Instant::now() + Duration::from_secs(secs));
        let mut received = 0u64;
        let mut stdout = std::io::stdout().lock();
        while args.count.is_none_or(|count| received < count) {
            let next = match deadline {
                Some(deadline) => match tokio::time::timeout_at(deadline, messages.recv()).await {
                    Ok(next) => next,
                    Err(_) => {
                        let _ = client.disconnect().await;
                        return Err(Failure::new(EXIT_TIMEOUT, "timed out"));
                    }
                },
                None => messages.recv().await,
            };
            let Some(message) = next else {
                return Err(Failure::new(1, "the connection was lost"));
            };
            if args.no_stale && message.retain {
                continue;
            }
            received += 1;
            let mut line = Vec::with_capacity(message.payload.len() + 64);
            if args.verbose {
                line.extend_from_slice(message.topic.as_bytes());
                line.push(b' ');
            }
            line.extend_from_slice(&message.payload);
            line.push(b'\n');
            stdout
                .write_all(&line)
                .and_then(|()| stdout.flush())
                .map_err(|e| Failure::new(1, e.to_string()))?;
        }
        client.disconnect().await?;
        Ok(())
    })
}
