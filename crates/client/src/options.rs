//! How a client connects and behaves.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rallymq_codec::{Connect, MqttString, Packet, ProtocolVersion, QoS, TopicName, Will};
use rallymq_session::PacketDirection;

use crate::url::BrokerUrl;
use crate::{Error, MemorySessionStore, SessionStore};

/// Reconnect timing: exponential backoff with full jitter, between `min` and `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay.
    pub min: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            min: Duration::from_millis(100),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The delay before attempt `attempt` (0 for the first retry): a random time between half
    /// and all of `min * 2^attempt`, capped at `max`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self
            .min
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max);
        let mut random = [0u8; 4];
        // Without randomness the delay is simply not jittered.
        let _ = getrandom::fill(&mut random);
        let fraction = f64::from(u32::from_le_bytes(random)) / f64::from(u32::MAX);
        base.mul_f64(0.5 + fraction / 2.0)
    }
}

/// Everything a client needs to connect. Build with [`ClientOptions::new`] and the setters,
/// which all chain without a `?`: an invalid value (URL, client id, user name, will topic) is
/// kept and reported once, by [`Client::connect`](crate::Client::connect) or
/// [`ClientOptions::validate`], as reqwest's builders do.
///
/// ```
/// use rallymq_client::{ClientOptions, Error};
/// use rallymq_codec::QoS;
///
/// let options = ClientOptions::new("mqtt://127.0.0.1:1883")
///     .client_id("scoreboard")
///     .keep_alive(30)
///     .last_will("scoreboard/status", "offline", QoS::AtLeastOnce, true);
/// assert!(options.validate().is_ok());
///
/// let invalid = ClientOptions::new("mqtt://127.0.0.1:1883").last_will("a/#", "x", QoS::AtMostOnce, false);
/// assert!(matches!(invalid.validate(), Err(Error::InvalidArgument(_))));
/// ```
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Where to connect (`None` when the URL given was invalid: see `error`).
    url: Option<BrokerUrl>,
    /// Other brokers to try, in turn after `url`, when a connection attempt fails or a
    /// connection is lost (Mosquitto's bridge `address h1, h2`).
    fallbacks: Vec<BrokerUrl>,
    /// The CONNECT to send (version, client id, clean start, keep alive, credentials, will,
    /// MQTT 5 properties such as user properties or a Receive Maximum).
    pub connect: Connect,
    /// Reconnect after losing the connection; `None` ends the client instead. The first
    /// connection is not retried: [`Client::connect`](crate::Client::connect) fails at once
    /// when it fails, so that a wrong address or a refused login is reported, not hidden.
    pub reconnect: Option<Backoff>,
    /// How long to wait for the transport and for CONNACK.
    pub connect_timeout: Duration,
    /// Most QoS 1/2 messages in flight (also bounded by the broker's Receive Maximum).
    pub max_in_flight: u16,
    /// Most messages waiting: QoS 1/2 messages queued behind the window, and messages of any
    /// QoS published while the client reconnects. Past it, publishing reports
    /// [`Error::Full`].
    pub max_queued: usize,
    /// Received messages buffered for the [`Messages`](crate::Messages) stream. When it is full
    /// the client stops reading from the network (the broker holds the rest) until the stream
    /// is read again; publishing and other commands keep working meanwhile.
    pub message_buffer: usize,
    /// Where the session state is kept between connections and restarts.
    pub session_store: Arc<dyn SessionStore>,
    /// TLS for `mqtts://` and `wss://`.
    pub tls: TlsOptions,
    /// Called with each packet sent and received: see [`ClientOptions::packet_observer`].
    observer: Option<Observer>,
    /// The first invalid setting, reported by `validate` and `Client::connect`.
    error: Option<Error>,
}

/// How TLS connections verify the broker, and prove who the client is.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// Trust only the certificates in this PEM file (as `--cafile`); without it, the operating
    /// system's roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// A client certificate chain and its private key, as PEM files (as `--cert` and `--key`),
    /// for brokers that ask for one.
    pub client_certificate: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// A complete rustls configuration (custom verification, keys in memory); it takes
    /// precedence over the files above.
    pub config: Option<Arc<rustls::ClientConfig>>,
    /// Accept a certificate whose names do not include the broker's host name, as long as it
    /// is otherwise valid and issued by a trusted CA (`mosquitto_pub --insecure`, a bridge's
    /// `bridge_insecure`). Only for testing: anyone holding any certificate from the CA can
    /// then pose as the broker.
    pub skip_host_name_verification: bool,
}

impl ClientOptions {
    /// Options for `url` (`mqtt://host:1883`, `mqtts://host:8883`, `ws://host:8080/mqtt`,
    /// `wss://...`, with an optional `user:password@`): MQTT 5, a random client id, clean start,
    /// keep alive 60 s, reconnect with the default backoff.
    pub fn new(url: &str) -> Self {
        let mut random = [0u8; 6];
        let _ = getrandom::fill(&mut random);
        let id: String = random.iter().map(|b| format!("{b:02x}")).collect();
        // Letters, digits and '-': a valid MQTT string.
        let client_id = MqttString::new(format!("rallymq-{id}")).expect("a valid client id");
        let mut options = Self {
            url: None,
            fallbacks: Vec::new(),
            connect: Connect::new(ProtocolVersion::V5, client_id),
            reconnect: Some(Backoff::default()),
            connect_timeout: Duration::from_secs(10),
            max_in_flight: 64,
            max_queued: 1024,
            message_buffer: 1024,
            session_store: Arc::new(MemorySessionStore::new()),
            tls: TlsOptions::default(),
            observer: None,
            error: None,
        };
        match BrokerUrl::parse(url) {
            Ok(url) => {
                if let Some(username) = url.username.clone() {
                    let password = url.password.clone();
                    options =
                        options.credentials(&username, password.as_deref().map(str::as_bytes));
                }
                options.url = Some(url);
            }
            Err(error) => options.fail(error),
        }
        options
    }

    /// The broker URL, if the one given is valid.
    pub fn url(&self) -> Option<&BrokerUrl> {
        self.url.as_ref()
    }

    /// The first invalid setting, if any: what [`Client::connect`](crate::Client::connect)
    /// would fail with before opening a connection.
    pub fn validate(&self) -> Result<(), Error> {
        match &self.error {
            Some(error) => Err(error.clone()),
            None => Ok(()),
        }
    }

    /// The URLs to try in turn, once the options are valid: the main one, then the fallbacks.
    pub(crate) fn validated_urls(&self) -> Result<Vec<BrokerUrl>, Error> {
        self.validate()?;
        let url = self
            .url
            .clone()
            .ok_or_else(|| Error::InvalidUrl("no URL".into()))?;
        Ok(std::iter::once(url)
            .chain(self.fallbacks.iter().cloned())
            .collect())
    }

    /// Adds a broker to try when the one before it in the list cannot be reached or its
    /// connection is lost: the client goes round `url` and the fallbacks in turn, each after
    /// the backoff's delay (with reconnecting on; the first connection tries `url` only).
    /// Credentials in a fallback URL are ignored: the options' own apply to every broker.
    pub fn fallback_url(mut self, url: &str) -> Self {
        match BrokerUrl::parse(url) {
            Ok(url) => self.fallbacks.push(url),
            Err(error) => self.fail(error),
        }
        self
    }

    /// Connects as a bridge from another broker (Mosquitto's `try_private`): the protocol level
    /// byte of CONNECT carries 0x80, and a broker that knows it sends this client none of its
    /// own messages back and keeps retain flags as published. A broker that does not refuses
    /// the connection (unsupported protocol version): connect again without it then.
    pub fn bridge_mode(mut self, bridge: bool) -> Self {
        self.connect.bridge = bridge;
        self
    }

    /// Keeps the first error.
    fn fail(&mut self, error: Error) {
        self.error.get_or_insert(error);
    }

    /// Sets the protocol version (MQTT 3.1.1 or 5.0).
    pub fn version(mut self, version: ProtocolVersion) -> Self {
        self.connect.protocol = version;
        if !version.is_v5() {
            self.connect.properties = Default::default();
        }
        self
    }

    /// Sets the client identifier (an empty one asks the broker to assign one).
    pub fn client_id(mut self, client_id: &str) -> Self {
        match MqttString::new(client_id) {
            Ok(id) => self.connect.client_id = id,
            Err(e) => self.fail(invalid(format!("client id: {e}"))),
        }
        self
    }

    /// Sets Clean Start (Clean Session before MQTT 5).
    pub fn clean_start(mut self, clean_start: bool) -> Self {
        self.connect.clean_start = clean_start;
        self
    }

    /// Sets the keep alive in seconds (0 turns it off).
    pub fn keep_alive(mut self, seconds: u16) -> Self {
        self.connect.keep_alive = seconds;
        self
    }

    /// Sets the MQTT 5 Session Expiry Interval in seconds (`u32::MAX`: never).
    pub fn session_expiry(mut self, seconds: u32) -> Self {
        self.connect.properties.session_expiry_interval = Some(seconds);
        self
    }

    /// Sets user name and password.
    pub fn credentials(mut self, username: &str, password: Option<&[u8]>) -> Self {
        match MqttString::new(username) {
            Ok(username) => {
                self.connect.username = Some(username);
                self.connect.password = password.map(Bytes::copy_from_slice);
            }
            Err(e) => self.fail(invalid(format!("user name: {e}"))),
        }
        self
    }

    /// Sets the will message, published by the broker if the connection ends without a clean
    /// disconnect ([`Client::disconnect`](crate::Client::disconnect), or dropping every handle).
    pub fn will(mut self, will: Will) -> Self {
        self.connect.will = Some(will);
        self
    }

    /// Sets the will message from its parts (see [`ClientOptions::will`]).
    pub fn last_will(self, topic: &str, payload: impl Into<Bytes>, qos: QoS, retain: bool) -> Self {
        match TopicName::new(topic) {
            Ok(topic) => {
                let mut will = Will::new(topic, payload);
                will.qos = qos;
                will.retain = retain;
                self.will(will)
            }
            Err(e) => {
                let mut options = self;
                options.fail(invalid(format!("will topic {topic:?}: {e}")));
                options
            }
        }
    }

    /// Turns reconnecting off (`None`) or sets its backoff.
    pub fn reconnect(mut self, backoff: Option<Backoff>) -> Self {
        self.reconnect = backoff;
        self
    }

    /// Sets how long to wait for the transport and for CONNACK.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Trusts the certificates in the PEM file `path` for TLS instead of the system's roots.
    pub fn ca_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.tls.ca_file = Some(path.into());
        self
    }

    /// Presents the client certificate chain in the PEM file `certificate` with the private key
    /// in the PEM file `key`, for brokers that ask for one.
    pub fn client_certificate(
        mut self,
        certificate: impl Into<std::path::PathBuf>,
        key: impl Into<std::path::PathBuf>,
    ) -> Self {
        self.tls.client_certificate = Some((certificate.into(), key.into()));
        self
    }

    /// Calls `observer` with each packet the client sends ([`PacketDirection::Sent`], just
    /// before its bytes are written) and receives ([`PacketDirection::Received`]), in order,
    /// on every connection: for packet traces such as `mosquitto_sub -d` prints. The packets
    /// are those the session engine encoded and decoded, not decoded again. The observer runs
    /// on the connection's task, so it must return quickly. Without one, nothing is copied.
    ///
    /// ```
    /// use rallymq_client::{ClientOptions, Packet, PacketDirection};
    ///
    /// let options = ClientOptions::new("mqtt://127.0.0.1:1883").packet_observer(
    ///     |direction: PacketDirection, packet: &Packet| {
    ///         eprintln!("{direction:?} {:?}", packet.packet_type());
    ///     },
    /// );
    /// assert!(options.validate().is_ok());
    /// ```
    pub fn packet_observer(
        mut self,
        observer: impl Fn(PacketDirection, &Packet) + Send + Sync + 'static,
    ) -> Self {
        self.observer = Some(Observer(Arc::new(observer)));
        self
    }

    /// The packet observer, for the driver.
    pub(crate) fn observer(&self) -> Option<&PacketObserver> {
        self.observer.as_ref().map(|observer| &observer.0)
    }

    /// Uses `store` for the session state.
    pub fn session_store(mut self, store: Arc<dyn SessionStore>) -> Self {
        self.session_store = store;
        self
    }

    /// Whether the broker keeps the session after a disconnect, so a reconnect resumes it.
    pub(crate) fn persistent(&self) -> bool {
        if self.connect.protocol.is_v5() {
            self.connect.properties.session_expiry_interval.unwrap_or(0) > 0
        } else {
            !self.connect.clean_start
        }
    }
}

/// What [`ClientOptions::packet_observer`] calls.
pub(crate) type PacketObserver = Arc<dyn Fn(PacketDirection, &Packet) + Send + Sync>;

/// A packet observer in the options, which stay `Debug`.
#[derive(Clone)]
struct Observer(PacketObserver);

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PacketObserver")
    }
}

fn invalid(error: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(error.to_string())
}
