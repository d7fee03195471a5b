//! A test MQTT client over any async byte stream, driven by the rallymq session engine, with
//! every wait bounded.

#![allow(dead_code, unreachable_pub)]

pub mod child;
pub mod cluster;
pub mod credentials;
pub mod interop;
pub mod store;
pub mod storm;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rallymq_broker::{Broker, BrokerConfig, BrokerHandle, ListenerKind};
use rallymq_codec::{
    ConnAck, Connect, Decoder, Disconnect, Limits, MqttString, Packet, ProtocolVersion, Publish,
    QoS, ReasonCode, Subscription, SubscriptionOptions, TopicFilter, TopicName,
};
use rallymq_session::{
    ClientConfig, ClientConnection, ClientEvent, CloseReason, PublishToken, SessionState, Timestamp,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long any single expectation may take.
pub const WAIT: Duration = Duration::from_secs(5);

/// A broker on free ports of 127.0.0.1 with `$SYS` off unless asked.
pub async fn start_broker(tune: impl FnOnce(&mut BrokerConfig)) -> BrokerHandle {
    let mut config = BrokerConfig::without_listeners();
    config.tcp = vec!["127.0.0.1:0".parse().unwrap()];
    config.ws = vec!["127.0.0.1:0".parse().unwrap()];
    config.sys_interval = None;
    tune(&mut config);
    Broker::start(config).await.expect("broker starts")
}

pub fn tcp_addr(broker: &BrokerHandle) -> SocketAddr {
    broker
        .local_addr(ListenerKind::Tcp)
        .expect("a TCP listener")
}

/// A CONNECT for `version` and `client_id`, clean, keep alive 30 s.
pub fn connect_packet(version: ProtocolVersion, client_id: &str) -> Connect {
    let mut connect = Connect::new(version, MqttString::new(client_id).unwrap());
    connect.keep_alive = 30;
    connect
}

/// A CONNECT resuming a persistent session: clean start off and, for MQTT 5, the given Session
/// Expiry Interval (before MQTT 5, clean session off is what keeps the session).
pub fn persistent_connect(version: ProtocolVersion, client_id: &str, expiry: u32) -> Connect {
    let mut connect = connect_packet(version, client_id);
    connect.clean_start = false;
    if version.is_v5() {
        connect.properties.session_expiry_interval = Some(expiry);
    }
    connect
}

/// Connects over TCP, which must be accepted; returns the client and its Session Present flag.
pub async fn connected_present(
    addr: SocketAddr,
    connect: Connect,
) -> (TestClient<TcpStream>, bool) {
    let (client, event) = TestClient::tcp(addr, connect).await;
    match event {
        ClientEvent::Connected {
            session_present, ..
        } => (client, session_present),
        other => panic!("not connected: {other:?}"),
    }
}

pub fn message(topic: &str, payload: &str, qos: QoS) -> Publish {
    let mut publish = Publish::new(
        TopicName::new(topic).unwrap(),
        Bytes::copy_from_slice(payload.as_bytes()),
    );
    publish.qos = qos;
    publish
}

pub fn subscription(filter: &str, qos: QoS) -> Subscription {
    Subscription {
        filter: TopicFilter::new(filter).unwrap(),
        options: SubscriptionOptions {
            qos,
            ..Default::default()
        },
    }
}

pub struct TestClient<IO> {
    io: Option<IO>,
    pub engine: ClientConnection,
    epoch: Instant,
    pub events: VecDeque<ClientEvent>,
}

impl TestClient<TcpStream> {
    /// Connects over TCP and waits for CONNACK; returns the client and the Connected event.
    pub async fn tcp(addr: SocketAddr, connect: Connect) -> (Self, ClientEvent) {
        let stream = TcpStream::connect(addr).await.expect("TCP connect");
        Self::over(stream, connect).await
    }

    /// As [`tcp`](Self::tcp), with a whole client configuration.
    pub async fn tcp_with(addr: SocketAddr, config: ClientConfig) -> (Self, ClientEvent) {
        let stream = TcpStream::connect(addr).await.expect("TCP connect");
        Self::over_with(stream, config).await
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> TestClient<IO> {
    pub async fn over(io: IO, connect: Connect) -> (Self, ClientEvent) {
        Self::over_with(io, ClientConfig::new(connect)).await
    }

    /// As [`over`](Self::over), with a whole client configuration (manual acknowledgements,
    /// say).
    pub async fn over_with(io: IO, config: ClientConfig) -> (Self, ClientEvent) {
        Self::over_with_within(io, config, WAIT)
            .await
            .expect("CONNACK or close in time")
    }

    /// As [`over_with`](Self::over_with), waiting `within` for CONNACK or the close; `None`
    /// when neither came.
    pub async fn over_with_within(
        io: IO,
        config: ClientConfig,
        within: Duration,
    ) -> Option<(Self, ClientEvent)> {
        let epoch = Instant::now();
        let resumes = !config.connect.clean_start;
        let mut client = Self {
            io: Some(io),
            // A client asking to resume has (empty) session state of its own (MQTT-3.2.2-4).
            engine: ClientConnection::new(
                config,
                resumes.then(SessionState::default),
                Timestamp::ZERO,
            ),
            epoch,
            events: VecDeque::new(),
        };
        client.engine.connect(client.now()).unwrap();
        let event = client
            .wait_for_within(within, |e| {
                matches!(e, ClientEvent::Connected { .. } | ClientEvent::Closed(_))
            })
            .await?;
        Some((client, event))
    }

    fn now(&self) -> Timestamp {
        Timestamp::from_since_epoch(self.epoch.elapsed())
    }

    /// Drives the connection until an event matching `pred` arrives (removed from the queue
    /// and returned) or `WAIT` passes.
    pub async fn wait_for(&mut self, pred: impl Fn(&ClientEvent) -> bool) -> Option<ClientEvent> {
        self.wait_for_within(WAIT, pred).await
    }

    pub async fn wait_for_within(
        &mut self,
        within: Duration,
        pred: impl Fn(&ClientEvent) -> bool,
    ) -> Option<ClientEvent> {
        let deadline = Instant::now() + within;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            while let Some(event) = self.engine.poll_event() {
                self.events.push_back(event);
            }
            if let Some(position) = self.events.iter().position(&pred) {
                return self.events.remove(position);
            }
            self.flush().await;
            if Instant::now() >= deadline {
                return None;
            }
            let timer = self
                .engine
                .poll_timeout()
                .map(|t| self.epoch + t.since_epoch());
            let wake = timer.map_or(deadline, |t| t.min(deadline));
            let Some(io) = self.io.as_mut() else {
                tokio::time::sleep_until(tokio::time::Instant::from_std(wake)).await;
                self.engine.handle_timeout(self.now());
                continue;
            };
            tokio::select! {
                read = io.read(&mut buf) => match read {
                    Ok(0) | Err(_) => {
                        self.io = None;
                        self.engine.handle_transport_closed();
                    }
                    Ok(n) => {
                        let now = self.now();
                        self.engine.handle_bytes(now, &buf[..n]);
                    }
                },
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                    let now = self.now();
                    self.engine.handle_timeout(now);
                }
            }
        }
    }

    async fn flush(&mut self) {
        while let Some(bytes) = self.engine.poll_transmit(self.now()) {
            if let Some(io) = self.io.as_mut()
                && io.write_all(&bytes).await.is_err()
            {
                self.io = None;
                self.engine.handle_transport_closed();
            }
        }
    }

    pub async fn subscribe(&mut self, subscriptions: Vec<Subscription>) -> Vec<ReasonCode> {
        self.subscribe_with(subscriptions, Default::default()).await
    }

    pub async fn subscribe_with(
        &mut self,
        subscriptions: Vec<Subscription>,
        properties: rallymq_codec::SubscribeProperties,
    ) -> Vec<ReasonCode> {
        let token = self
            .engine
            .subscribe(subscriptions, properties)
            .expect("subscribe");
        match self
            .wait_for(|e| matches!(e, ClientEvent::Subscribed { token: t, .. } if *t == token))
            .await
        {
            Some(ClientEvent::Subscribed { reason_codes, .. }) => reason_codes,
            other => panic!("no SUBACK: {other:?}"),
        }
    }

    pub async fn unsubscribe(&mut self, filter: &str) -> Vec<ReasonCode> {
        let token = self
            .engine
            .unsubscribe(vec![TopicFilter::new(filter).unwrap()], Default::default())
            .unwrap();
        match self
            .wait_for(|e| matches!(e, ClientEvent::Unsubscribed { token: t, .. } if *t == token))
            .await
        {
            Some(ClientEvent::Unsubscribed { reason_codes, .. }) => reason_codes,
            other => panic!("no UNSUBACK: {other:?}"),
        }
    }

    /// Publishes QoS 0 messages, all written at once (a burst reaching the broker together).
    pub async fn publish_together(&mut self, publishes: impl IntoIterator<Item = Publish>) {
        let now = self.now();
        for publish in publishes {
            assert_eq!(publish.qos, QoS::AtMostOnce, "a burst is QoS 0");
            self.engine.publish(now, publish).expect("publish");
        }
        self.flush().await;
    }

    /// Publishes and, for QoS 1 and 2, waits for the flow to complete; returns the reason code.
    pub async fn publish(&mut self, publish: Publish) -> ReasonCode {
        match self.publish_outcome(publish).await {
            Ok(reason_code) => reason_code,
            Err(closed) => panic!("publish not acknowledged: {closed:?}"),
        }
    }

    /// Publishes and, for QoS 1 and 2, waits for the flow to complete or the connection to
    /// end: the reason code, or how the connection ended (`None`: nothing within `WAIT`).
    pub async fn publish_outcome(
        &mut self,
        publish: Publish,
    ) -> Result<ReasonCode, Option<CloseReason>> {
        self.publish_outcome_within(publish, WAIT).await
    }

    /// [`publish_outcome`](Self::publish_outcome), waiting at most `within`.
    pub async fn publish_outcome_within(
        &mut self,
        publish: Publish,
        within: Duration,
    ) -> Result<ReasonCode, Option<CloseReason>> {
        let now = self.now();
        let token: Option<PublishToken> = self.engine.publish(now, publish).expect("publish");
        let Some(token) = token else {
            self.flush().await;
            return Ok(ReasonCode::Success);
        };
        match self
            .wait_for_within(within, |e| {
                matches!(e, ClientEvent::PublishAcknowledged(o) | ClientEvent::PublishCompleted(o) if o.token == token)
                    || matches!(e, ClientEvent::Closed(_))
            })
            .await
        {
            Some(ClientEvent::PublishAcknowledged(o) | ClientEvent::PublishCompleted(o)) => Ok(o.reason_code),
            Some(ClientEvent::Closed(reason)) => Err(Some(reason)),
            _ => Err(None),
        }
    }

    /// The next message received, within `WAIT`.
    pub async fn recv(&mut self) -> Option<Publish> {
        self.recv_within(WAIT).await
    }

    pub async fn recv_within(&mut self, within: Duration) -> Option<Publish> {
        match self
            .wait_for_within(within, |e| matches!(e, ClientEvent::Message(_)))
            .await
        {
            Some(ClientEvent::Message(message)) => Some(message.publish),
            _ => None,
        }
    }

    /// Asserts no message arrives within `within`.
    pub async fn expect_silence(&mut self, within: Duration) {
        if let Some(message) = self.recv_within(within).await {
            panic!("unexpected message: {message:?}");
        }
    }

    /// The close reason, once the connection ends (within `WAIT`).
    pub async fn closed(&mut self) -> Option<CloseReason> {
        match self.wait_for(|e| matches!(e, ClientEvent::Closed(_))).await {
            Some(ClientEvent::Closed(reason)) => Some(reason),
            _ => None,
        }
    }

    pub async fn disconnect(&mut self, reason_code: ReasonCode) {
        self.disconnect_with(Disconnect::new(reason_code)).await;
    }

    /// Sends `disconnect` (MQTT 5 properties: a new Session Expiry Interval...) and closes.
    pub async fn disconnect_with(&mut self, disconnect: Disconnect) {
        self.engine.disconnect(disconnect);
        self.flush().await;
        if let Some(mut io) = self.io.take() {
            let _ = io.shutdown().await;
        }
    }

    /// Drops the transport without DISCONNECT (an abnormal end).
    pub fn kill(&mut self) {
        self.io = None;
    }
}

/// The payloads `client` receives until it has `expected` of them (within twice [`WAIT`]) and
/// then stays quiet for `quiet` (a duplicate would arrive within it), in the order they came.
pub async fn payloads_until_quiet(
    client: &mut TestClient<TcpStream>,
    expected: usize,
    quiet: Duration,
) -> Vec<String> {
    let mut received = Vec::new();
    recv_until_quiet(client, expected, 2 * WAIT, quiet, |publish| {
        received.push(payload_str(&publish));
        true
    })
    .await;
    received
}

/// Hands each message `client` receives to `take` (which says whether it counts) until
/// `expected` have counted and then nothing came for `quiet` (a duplicate would have), or
/// `within` ended first.
pub async fn recv_until_quiet(
    client: &mut TestClient<TcpStream>,
    expected: usize,
    within: Duration,
    quiet: Duration,
    mut take: impl FnMut(Publish) -> bool,
) {
    let deadline = Instant::now() + within;
    let mut count = 0;
    loop {
        let wait = if count >= expected {
            quiet
        } else {
            deadline.saturating_duration_since(Instant::now())
        };
        let Some(publish) = client.recv_within(wait).await else {
            return;
        };
        if take(publish) {
            count += 1;
        }
    }
}

pub fn payload_str(publish: &Publish) -> String {
    String::from_utf8(publish.payload.to_vec()).unwrap()
}

pub fn topic_str(publish: &Publish) -> String {
    publish
        .topic
        .as_ref()
        .map(|t| t.as_str().to_owned())
        .unwrap_or_default()
}

/// A client over a bare TCP stream, for flows the session engine would not stop halfway: raw
/// packets out, decoded packets in, every wait bounded.
pub struct Raw {
    stream: TcpStream,
    version: ProtocolVersion,
    received: BytesMut,
    decoder: Decoder,
}

/// How a wait for a packet ended without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoPacket {
    Closed,
    Timeout,
}

impl Raw {
    /// A TCP connection that has sent nothing yet; what it reads is decoded as `version`.
    pub async fn open(addr: SocketAddr, version: ProtocolVersion) -> Self {
        Self {
            stream: TcpStream::connect(addr).await.expect("TCP connect"),
            version,
            received: BytesMut::new(),
            decoder: Decoder::with_version(version, Limits::default()),
        }
    }

    /// Connects with `connect` and returns the client and the CONNACK.
    pub async fn connect(addr: SocketAddr, connect: Connect) -> (Self, ConnAck) {
        let mut raw = Self::open(addr, connect.protocol).await;
        raw.send(Packet::from(connect)).await;
        match raw.next().await {
            Ok(Packet::ConnAck(connack)) => (raw, connack),
            other => panic!("no CONNACK: {other:?}"),
        }
    }

    /// Writes bytes as they are, at once (a byte at a time, if need be).
    pub async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
        self.stream.flush().await.expect("flush");
    }

    pub async fn send(&mut self, packet: Packet) {
        let bytes = packet.to_bytes(self.version).expect("encodable");
        self.write(&bytes).await;
    }

    /// The next packet within `within`.
    pub async fn next_within(&mut self, within: Duration) -> Result<Packet, NoPacket> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(packet) = self
                .decoder
                .decode(&mut self.received)
                .expect("a valid packet")
            {
                return Ok(packet);
            }
            let mut buf = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Err(_) => return Err(NoPacket::Timeout),
                Ok(Ok(0) | Err(_)) => return Err(NoPacket::Closed),
                Ok(Ok(n)) => self.received.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// The next packet within `WAIT`.
    pub async fn next(&mut self) -> Result<Packet, NoPacket> {
        self.next_within(WAIT).await
    }

    /// The next packet, which must come within `WAIT`.
    pub async fn expect(&mut self) -> Packet {
        self.next().await.expect("a packet in time")
    }

    /// The next `n` packets, which must come within `WAIT` each.
    pub async fn expect_n(&mut self, n: usize) -> Vec<Packet> {
        let mut packets = Vec::with_capacity(n);
        for _ in 0..n {
            packets.push(self.expect().await);
        }
        packets
    }

    /// Asserts that nothing comes within `within`, and that the connection stays open.
    pub async fn expect_silence(&mut self, within: Duration) {
        assert_eq!(self.next_within(within).await, Err(NoPacket::Timeout));
    }
}

/// An HTTP response as read off the socket.
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// One HTTP/1.1 request (`extra`: more header lines, each ending in CRLF) on a connection of
/// its own, read to the end within 5 s.
pub async fn http(addr: SocketAddr, method: &str, path: &str, extra: &str) -> HttpResponse {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut raw))
        .await
        .expect("a response in time")
        .unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap();
    HttpResponse {
        status: status.parse().unwrap(),
        headers: lines
            .filter_map(|line| line.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect(),
        body: raw[split + 4..].to_vec(),
    }
}

/// Waits until `broker` counts `n` clients connected: it has handled the others' ends.
pub async fn wait_clients(broker: &BrokerHandle, n: usize) {
    let deadline = Instant::now() + WAIT;
    while broker.clients_connected() != n {
        assert!(
            Instant::now() < deadline,
            "{} clients connected, not {n}",
            broker.clients_connected()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
