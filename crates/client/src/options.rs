//! How a client connects and behaves.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rallymq_codec::{Connect, MqttString, ProtocolVersion, Will};

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

/// Everything a client needs to connect. Build with [`ClientOptions::new`] and the setters.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Where to connect.
    pub url: BrokerUrl,
    /// The CONNECT to send (version, client id, clean start, keep alive, credentials, will,
    /// MQTT 5 properties).
    pub connect: Connect,
    /// Reconnect after losing the connection; `None` ends the client instead.
    pub reconnect: Option<Backoff>,
    /// How long to wait for the transport and for CONNACK.
    pub connect_timeout: Duration,
    /// Most QoS 1/2 messages in flight (also bounded by the broker's Receive Maximum).
    pub max_in_flight: u16,
    /// Most QoS 1/2 messages queued behind the window before publishing reports
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
}

/// How TLS connections verify the broker.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// Trust only the certificates in this PEM file (as `--cafile`); without it, the operating
    /// system's roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// A complete rustls configuration (client certificates, custom verification); it takes
    /// precedence over `ca_file`.
    pub config: Option<Arc<rustls::ClientConfig>>,
}

impl ClientOptions {
    /// Options for `url` (`mqtt://host:1883`, `ws://host:8080/mqtt`, ...): MQTT 5, a random
    /// client id, clean start, keep alive 60 s, reconnect with the default backoff.
    pub fn new(url: &str) -> Result<Self, Error> {
        let url = BrokerUrl::parse(url)?;
        let mut random = [0u8; 6];
        let _ = getrandom::fill(&mut random);
        let id: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let mut connect = Connect::new(
            ProtocolVersion::V5,
            MqttString::new(format!("rallymq-{id}")).map_err(invalid)?,
        );
        if let Some(username) = &url.username {
            connect.username = Some(MqttString::new(username.clone()).map_err(invalid)?);
        }
        if let Some(password) = &url.password {
            connect.password = Some(Bytes::from(password.clone()));
        }
        Ok(Self {
            url,
            connect,
            reconnect: Some(Backoff::default()),
            connect_timeout: Duration::from_secs(10),
            max_in_flight: 64,
            max_queued: 1024,
            message_buffer: 1024,
            session_store: Arc::new(MemorySessionStore::new()),
            tls: TlsOptions::default(),
        })
    }

    /// Sets the protocol version (MQTT 3.1.1 or 5.0).
    pub fn version(mut self, version: ProtocolVersion) -> Self {
        self.connect.protocol = version;
        if !version.is_v5() {
            self.connect.properties = Default::default();
        }
        self
    }

    /// Sets the client identifier.
    pub fn client_id(mut self, client_id: &str) -> Result<Self, Error> {
        self.connect.client_id = MqttString::new(client_id).map_err(invalid)?;
        Ok(self)
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
    pub fn credentials(mut self, username: &str, password: Option<&[u8]>) -> Result<Self, Error> {
        self.connect.username = Some(MqttString::new(username).map_err(invalid)?);
        self.connect.password = password.map(Bytes::copy_from_slice);
        Ok(self)
    }

    /// Sets the will message.
    pub fn will(mut self, will: Will) -> Self {
        self.connect.will = Some(will);
        self
    }

    /// Turns reconnecting off (`None`) or sets its backoff.
    pub fn reconnect(mut self, backoff: Option<Backoff>) -> Self {
        self.reconnect = backoff;
        self
    }

    /// Trusts the certificates in the PEM file `path` for TLS instead of the system's roots.
    pub fn ca_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.tls.ca_file = Some(path.into());
        self
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

fn invalid(error: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(error.to_string())
}
