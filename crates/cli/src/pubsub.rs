//! `rallymq pub` and `rallymq sub`: MQTT clients with `mosquitto_pub` and `mosquitto_sub`'s
//! flags, so scripts move over unchanged. Built on `rallymq-client`.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::{ArgAction, Args};
use rallymq_client::{Client, ClientOptions, Error as ClientError, RetainHandling};
use rallymq_codec::{
    Message, ProtocolVersion, QoS, ReasonCode, TopicFilter, TopicName, UserProperty,
};

use crate::output::{Context, Format, Printer, Style};
use crate::trace::{PacketIds, Trace};

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

    /// CA certificates (PEM) to trust for TLS, instead of the system's. Without -L, this turns
    /// TLS on (default port 8883), as in Mosquitto; so does -p 8883.
    #[arg(long = "cafile")]
    cafile: Option<PathBuf>,

    /// Client certificate chain (PEM) for brokers that ask for one; needs --key.
    #[arg(long = "cert")]
    cert: Option<PathBuf>,

    /// Private key (PEM) of --cert.
    #[arg(long = "key")]
    key: Option<PathBuf>,

    /// Print the packets sent and received, as Mosquitto's clients do with -d.
    #[arg(short = 'd', long = "debug")]
    debug: bool,

    /// MQTT 5 session expiry interval in seconds: 0 to 4294967294, or -1, 4294967295 or ∞ for
    /// never (default: never with -c, else 0). Ignored before MQTT 5.
    #[arg(short = 'x', value_name = "SECS", allow_hyphen_values = true, value_parser = parse_session_expiry)]
    session_expiry: Option<u32>,

    /// Topic of the will, which the broker publishes if the connection ends without DISCONNECT.
    #[arg(long = "will-topic")]
    will_topic: Option<String>,

    /// Payload of the will (default: empty); needs --will-topic.
    #[arg(long = "will-payload")]
    will_payload: Option<String>,

    /// QoS of the will: 0, 1 or 2.
    #[arg(long = "will-qos", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    will_qos: u8,

    /// Retain the will; needs --will-topic.
    #[arg(long = "will-retain")]
    will_retain: bool,

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

/// `-x` as mosquitto reads it: `∞`, or a C integer (decimal, 0x hex, 0 octal) from -1 (never
/// expires) to 4294967295.
fn parse_session_expiry(text: &str) -> Result<u32, String> {
    if text == "∞" {
        return Ok(u32::MAX);
    }
    let not_a_number = || "session-expiry-interval not a number.".to_owned();
    let (negative, digits) = match text.trim_start().as_bytes() {
        [b'-', ..] => (true, &text.trim_start()[1..]),
        [b'+', ..] => (false, &text.trim_start()[1..]),
        _ => (false, text.trim_start()),
    };
    let (radix, digits) = if let Some(hex) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        (16, hex)
    } else if digits.len() > 1 && digits.starts_with('0') {
        (8, &digits[1..])
    } else {
        (10, digits)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(not_a_number());
    }
    // Digits only: a parse failure can only be an overflow, which is out of range anyway.
    let value = i128::from_str_radix(digits, radix).unwrap_or(i128::MAX);
    match if negative { -value } else { value } {
        -1 => Ok(u32::MAX),
        value => u32::try_from(value).map_err(|_| "session-expiry-interval out of range.".into()),
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

    /// The client's options; `ids`, when given, learns the packet identifier of each message
    /// received (for `sub -F`).
    fn options(&self, role: &str, ids: Option<Arc<PacketIds>>) -> Result<ClientOptions, Failure> {
        let url = match &self.url {
            Some(url) => url.clone(),
            None => {
                // As mosquitto: a CA file turns TLS on and moves the default port to 8883, and
                // port 8883 means TLS (with the system's roots when no CA file is given).
                let port = self
                    .port
                    .unwrap_or(if self.cafile.is_some() { 8883 } else { 1883 });
                let tls = self.cafile.is_some() || port == 8883;
                let scheme = if tls { "mqtts" } else { "mqtt" };
                format!("{scheme}://{}:{port}", bracket(&self.host))
            }
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
        if self.protocol_version.is_v5() {
            let expiry = self
                .session_expiry
                .or(self.persistent.then_some(u32::MAX))
                .unwrap_or(0);
            if expiry > 0 {
                options = options.session_expiry(expiry);
            }
        }
        if let Some(cafile) = &self.cafile {
            options = options.ca_file(cafile);
        }
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => options = options.client_certificate(cert, key),
            (None, None) => {}
            _ => {
                return Err(Failure::new(
                    2,
                    "Both certfile and keyfile must be provided if one of them is set.",
                ));
            }
        }
        match &self.will_topic {
            Some(topic) => {
                let payload = self.will_payload.clone().unwrap_or_default();
                options = options.last_will(topic, payload, qos(self.will_qos), self.will_retain);
            }
            None if self.will_payload.is_some() => {
                return Err(Failure::new(
                    2,
                    "Will payload given, but no will topic given.",
                ));
            }
            None if self.will_retain => {
                return Err(Failure::new(
                    2,
                    "Will retain given, but no will topic given.",
                ));
            }
            None => {}
        }
        options.connect.properties.user_properties = self.user_properties("connect")?;
        let trace = self
            .debug
            .then(|| Trace::new(&id, self.protocol_version, role == "sub"));
        if trace.is_some() || ids.is_some() {
            options = options.packet_observer(move |direction, packet| {
                if let Some(ids) = &ids {
                    ids.observe(direction, packet);
                }
                if let Some(trace) = &trace {
                    trace.print(direction, packet);
                }
            });
        }
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

    /// Send the message COUNT times (not with -l), as mosquitto_pub's --repeat.
    #[arg(long = "repeat", value_name = "COUNT", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    repeat: u64,

    /// Seconds to wait between repeats, after each one completes (fractions allowed).
    #[arg(long = "repeat-delay", value_name = "SECS", default_value_t = 0.0, value_parser = parse_delay)]
    repeat_delay: f64,
}

fn parse_delay(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs >= 0.0 && secs.is_finite() => Ok(secs),
        _ => Err("--repeat-delay argument must be >=0.0.".into()),
    }
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
    #[arg(short = 't', long = "topic", required_unless_present = "unsubscribe")]
    topics: Vec<String>,

    /// Unsubscribe from this filter after connecting (repeatable): for persistent sessions (-c).
    #[arg(short = 'U', long = "unsubscribe", value_name = "FILTER")]
    unsubscribe: Vec<String>,

    /// Do not print messages whose topic matches this filter (repeatable).
    #[arg(short = 'T', long = "filter-out", value_name = "FILTER")]
    filter_out: Vec<String>,

    /// Exit once the broker has acknowledged the subscriptions.
    #[arg(short = 'E')]
    exit_after_subscribe: bool,

    /// Only handle retained messages; exit at the first message that is not.
    #[arg(long = "retained-only", conflicts_with = "no_stale")]
    retained_only: bool,

    /// Output format (see mosquitto_sub's OUTPUT FORMAT): %t topic, %p payload, %q QoS,
    /// %r retain, %l length, %m packet id, %x/%X hex, %j/%J JSON, %I/%U time, %C %D %E %F %P
    /// %R %S MQTT 5 properties, @X strftime, \n \t escapes.
    #[arg(short = 'F', value_name = "FORMAT", value_parser = Format::parse)]
    format: Option<Format>,

    /// Do not print a newline after each message.
    #[arg(short = 'N')]
    no_eol: bool,

    /// Indent the JSON of %j and %J.
    #[arg(long = "pretty")]
    pretty: bool,

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
    let options = args.connection.options("pub", None)?;
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
    let repeat_delay = Duration::from_secs_f64(args.repeat_delay);
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
            // As mosquitto_pub: each repeat starts once the previous one has completed (its
            // acknowledgement received), after the delay.
            for round in 0..args.repeat {
                if round > 0 && !repeat_delay.is_zero() {
                    tokio::time::sleep(repeat_delay).await;
                }
                for payload in &payloads {
                    client.publish_message(message(payload.clone())).await?;
                }
            }
        }
        client.disconnect().await?;
        Ok(())
    })
}

/// Runs `rallymq sub`.
pub(crate) fn run_sub(args: SubArgs) -> Result<(), Failure> {
    let version = args.connection.protocol_version;
    let mut subscriptions = Vec::new();
    for topic in &args.topics {
        let filter = TopicFilter::new(topic.as_str())
            .map_err(|e| Failure::new(2, format!("-t {topic}: {e}")))?;
        let mut subscription = rallymq_codec::Subscription::new(filter, qos(args.connection.qos));
        // As mosquitto_sub: with MQTT 5, -R asks the broker not to send retained messages at
        // all; before, they are dropped here (below) as they arrive.
        if args.no_stale && version.is_v5() {
            subscription.options.retain_handling = RetainHandling::DoNotSend;
        }
        subscriptions.push(subscription);
    }
    let filters = |list: &[String], flag: &str| {
        list.iter()
            .map(|filter| {
                TopicFilter::new(filter.as_str())
                    .map_err(|e| Failure::new(2, format!("{flag} {filter}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let filter_out = filters(&args.filter_out, "-T")?;
    let unsubscribe = filters(&args.unsubscribe, "-U")?;
    let properties = rallymq_codec::SubscribeProperties {
        user_properties: args.connection.user_properties("subscribe")?,
        ..Default::default()
    };
    let printer = Printer {
        style: match &args.format {
            Some(format) => Style::Format(format.clone()),
            None if args.verbose => Style::Verbose,
            None => Style::Payload,
        },
        eol: !args.no_eol,
        pretty: args.pretty,
    };
    let ids = args
        .format
        .as_ref()
        .is_some_and(Format::needs_packet_id)
        .then(|| Arc::new(PacketIds::default()));
    let options = args.connection.options("sub", ids.clone())?;
    runtime()?.block_on(async move {
        let (client, mut messages, _) = Client::connect(options).await?;
        // As mosquitto_sub: SUBSCRIBE, then each UNSUBSCRIBE, without waiting in between.
        let subscribed = async {
            if subscriptions.is_empty() {
                return Ok(Vec::new());
            }
            client.subscribe_many(subscriptions, properties).await
        };
        let unsubscribed = async {
            for filter in &unsubscribe {
                client.unsubscribe(filter.as_str()).await?;
            }
            Ok::<_, ClientError>(())
        };
        let (codes, unsubscribed) = tokio::join!(subscribed, unsubscribed);
        unsubscribed?;
        for code in codes? {
            if code.is_error() {
                return Err(Failure::new(
                    1,
                    format!("subscription refused: {}", refusal(code)),
                ));
            }
        }
        if args.exit_after_subscribe {
            client.disconnect().await?;
            return Ok(());
        }
        let deadline = args
            .timeout
            .map(|secs| tokio::time::Instant::now() + Duration::from_secs(secs));
        let mut received = 0u64;
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
            let packet_id = ids.as_ref().map_or(0, |ids| ids.next());
            if args.retained_only && !message.retain {
                break;
            }
            if args.no_stale && message.retain {
                continue;
            }
            if filter_out
                .iter()
                .any(|filter| filter.matches(&message.topic))
            {
                continue;
            }
            received += 1;
            let context = Context {
                packet_id,
                now: chrono::Local::now(),
            };
            let mut errors = Vec::new();
            let bytes = printer.render(&message, &context, &mut errors);
            for error in errors {
                eprintln!("{error}");
            }
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(&bytes)
                .and_then(|()| stdout.flush())
                .map_err(|e| Failure::new(1, e.to_string()))?;
        }
        client.disconnect().await?;
        Ok(())
    })
}
