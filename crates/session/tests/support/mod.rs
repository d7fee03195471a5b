//! A deterministic two-party harness: a client engine and a server engine joined by a
//! simulated link with latency, connection loss and reconnects, on simulated time. No sockets,
//! no sleeps. The server side plays a minimal broker: it accepts every CONNECT (resuming the
//! session it kept), grants every subscription at the requested QoS and records what arrives.

#![allow(dead_code, unreachable_pub)]

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use rallymq_codec::{
    Connect, MqttString, PacketId, ProtocolVersion, Publish, QoS, ReasonCode, SubAckProperties,
    TopicName,
};
use rallymq_session::{
    Accept, ClientConfig, ClientConnection, ClientEvent, CloseReason, ServerConfig,
    ServerConnection, ServerEvent, SessionState, Timestamp,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    ToServer,
    ToClient,
}

/// Both engines, the link between them and simulated time.
pub struct Pair {
    pub now: Timestamp,
    pub latency: Duration,
    pub client: ClientConnection,
    pub server: ServerConnection,
    pub client_config: ClientConfig,
    pub server_config: ServerConfig,
    /// Every event each side produced, in order, across connections.
    pub client_events: Vec<ClientEvent>,
    pub server_events: Vec<ServerEvent>,
    /// Every packet-carrying chunk each side sent, for byte-level assertions.
    pub sent_to_server: Vec<Bytes>,
    pub sent_to_client: Vec<Bytes>,
    /// Accept CONNECTs and answer SUBSCRIBEs automatically.
    pub auto_broker: bool,
    /// The session the server keeps between connections.
    pub server_session: Option<SessionState>,
    /// Whether what the server sends reaches the client (off: recorded, then lost).
    pub server_to_client: bool,
    link: VecDeque<(Timestamp, Direction, Bytes)>,
    link_up: bool,
}

/// A CONNECT for `version` with client id `client_id`.
pub fn connect_packet(version: ProtocolVersion, client_id: &str) -> Connect {
    let mut connect = Connect::new(
        version,
        MqttString::new(client_id).expect("valid client id"),
    );
    connect.keep_alive = 0;
    connect
}

/// A PUBLISH of `payload` to `topic` at `qos`.
pub fn publish(topic: &str, qos: QoS, payload: &[u8]) -> Publish {
    let mut publish = Publish::new(
        TopicName::new(topic).expect("valid topic"),
        Bytes::copy_from_slice(payload),
    );
    publish.qos = qos;
    publish
}

impl Pair {
    /// A pair that has not connected yet.
    pub fn new(client_config: ClientConfig, server_config: ServerConfig) -> Self {
        let now = Timestamp::ZERO;
        Self {
            now,
            latency: Duration::from_millis(5),
            client: ClientConnection::new(client_config.clone(), None, now),
            server: ServerConnection::new(server_config.clone(), now),
            client_config,
            server_config,
            client_events: Vec::new(),
            server_events: Vec::new(),
            sent_to_server: Vec::new(),
            sent_to_client: Vec::new(),
            auto_broker: true,
            server_session: None,
            server_to_client: true,
            link: VecDeque::new(),
            link_up: true,
        }
    }

    /// A pair of `version` with default configurations, connected.
    pub fn connected(version: ProtocolVersion) -> Self {
        let mut pair = Self::new(
            ClientConfig::new(connect_packet(version, "client-1")),
            ServerConfig::default(),
        );
        pair.connect();
        pair
    }

    /// Sends CONNECT and drives until the exchange settles.
    pub fn connect(&mut self) {
        self.client.connect(self.now).expect("CONNECT can be sent");
        self.drive();
    }

    /// Moves bytes and events until nothing is in transit, advancing time to each arrival.
    /// Bounded: a protocol loop fails the test instead of hanging it.
    pub fn drive(&mut self) {
        for _ in 0..100_000 {
            self.collect();
            let Some(&(arrival, _, _)) = self.link.front() else {
                return;
            };
            self.now = self.now.max(arrival);
            while let Some(&(arrival, direction, _)) = self.link.front() {
                if arrival > self.now {
                    break;
                }
                let (_, _, bytes) = self.link.pop_front().expect("front exists");
                match direction {
                    Direction::ToServer => self.server.handle_bytes(self.now, &bytes),
                    Direction::ToClient => self.client.handle_bytes(self.now, &bytes),
                }
            }
        }
        panic!("the pair did not settle");
    }

    /// Delivers the oldest chunk in transit, if any (advancing time to its arrival), and
    /// collects what it caused. Lets a test cut the link in the middle of a flow.
    pub fn step(&mut self) -> bool {
        self.collect();
        let Some((arrival, direction, bytes)) = self.link.pop_front() else {
            return false;
        };
        self.now = self.now.max(arrival);
        match direction {
            Direction::ToServer => self.server.handle_bytes(self.now, &bytes),
            Direction::ToClient => self.client.handle_bytes(self.now, &bytes),
        }
        self.collect();
        true
    }

    /// Advances time by `by`, firing every timer due on the way, and drives.
    pub fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        for _ in 0..100_000 {
            self.drive();
            let next = [self.client.poll_timeout(), self.server.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(at) if at <= end => {
                    self.now = self.now.max(at);
                    self.client.handle_timeout(self.now);
                    self.server.handle_timeout(self.now);
                }
                _ => {
                    self.now = end;
                    self.client.handle_timeout(self.now);
                    self.server.handle_timeout(self.now);
                    self.drive();
                    return;
                }
            }
        }
        panic!("timers did not settle");
    }

    /// Drains both sides' outputs: transmits onto the link, events into the logs (and the
    /// automatic broker's answers).
    fn collect(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(bytes) = self.client.poll_transmit(self.now) {
                progressed = true;
                self.sent_to_server.push(bytes.clone());
                if self.link_up {
                    self.link
                        .push_back((self.now + self.latency, Direction::ToServer, bytes));
                }
            }
            while let Some(bytes) = self.server.poll_transmit(self.now) {
                progressed = true;
                self.sent_to_client.push(bytes.clone());
                if self.link_up && self.server_to_client {
                    self.link
                        .push_back((self.now + self.latency, Direction::ToClient, bytes));
                }
            }
            while let Some(event) = self.client.poll_event() {
                progressed = true;
                if let ClientEvent::Closed(_) = event {
                    self.link_up = false;
                }
                self.client_events.push(event);
            }
            while let Some(event) = self.server.poll_event() {
                progressed = true;
                self.on_server_event(&event);
                self.server_events.push(event);
            }
            if !progressed {
                return;
            }
        }
    }

    fn on_server_event(&mut self, event: &ServerEvent) {
        match event {
            ServerEvent::Closed(_) => {
                self.link_up = false;
                let state = self.server.session_state();
                self.server_session = (state.session_expiry_interval > 0).then_some(state);
            }
            ServerEvent::ConnectReceived {
                needs_client_id, ..
            } if self.auto_broker => {
                let accept = Accept {
                    resumed: self.server_session.take(),
                    assigned_client_id: needs_client_id
                        .then(|| MqttString::from_static("assigned-1").unwrap()),
                    ..Accept::default()
                };
                self.server.accept(self.now, accept).expect("accept");
            }
            ServerEvent::Subscribe(subscribe) if self.auto_broker => {
                let codes = subscribe
                    .subscriptions
                    .iter()
                    .map(|s| granted(s.options.qos))
                    .collect();
                self.server
                    .answer_subscribe(subscribe.packet_id, codes, SubAckProperties::default())
                    .expect("answer");
            }
            ServerEvent::Unsubscribe(unsubscribe) if self.auto_broker => {
                let codes = vec![ReasonCode::Success; unsubscribe.filters.len()];
                self.server
                    .answer_unsubscribe(unsubscribe.packet_id, codes, SubAckProperties::default())
                    .expect("answer");
            }
            _ => {}
        }
    }

    /// The connection is lost: bytes in transit vanish and both sides see the transport end.
    pub fn drop_link(&mut self) {
        self.link.clear();
        self.link_up = false;
        self.client.handle_transport_closed();
        self.server.handle_transport_closed(self.now);
        self.collect();
    }

    /// A new connection for the same session: the client resumes its state, the server the
    /// session it kept. `clean_start` overrides the configured CONNECT flag.
    pub fn reconnect(&mut self, clean_start: bool) {
        if !self.client.is_closed() || !self.server.is_closed() {
            self.drop_link();
        }
        self.now = self.now + Duration::from_millis(100);
        let state = self.client.session_state();
        let mut config = self.client_config.clone();
        config.connect.clean_start = clean_start;
        self.client = ClientConnection::new(config, Some(state), self.now);
        self.server = ServerConnection::new(self.server_config.clone(), self.now);
        self.link.clear();
        self.link_up = true;
        self.connect();
    }

    /// Feeds raw bytes to the server as if the client had sent them.
    pub fn inject_to_server(&mut self, bytes: &[u8]) {
        self.server.handle_bytes(self.now, bytes);
        self.drive();
    }

    /// Feeds raw bytes to the client as if the server had sent them.
    pub fn inject_to_client(&mut self, bytes: &[u8]) {
        self.client.handle_bytes(self.now, bytes);
        self.drive();
    }

    /// Messages the server received, as (topic, payload, dup).
    pub fn server_messages(&self) -> Vec<(String, Bytes, bool)> {
        self.server_events
            .iter()
            .filter_map(|event| match event {
                ServerEvent::Message(message) => Some(message_parts(&message.publish)),
                _ => None,
            })
            .collect()
    }

    /// Messages the client received, as (topic, payload, dup).
    pub fn client_messages(&self) -> Vec<(String, Bytes, bool)> {
        self.client_events
            .iter()
            .filter_map(|event| match event {
                ClientEvent::Message(message) => Some(message_parts(&message.publish)),
                _ => None,
            })
            .collect()
    }

    /// The detail of the first protocol violation either side reported, if any: in a
    /// scenario where both sides follow the protocol, there must be none.
    pub fn protocol_violation(&self) -> Option<String> {
        let server = self.server_events.iter().filter_map(|event| match event {
            ServerEvent::Closed(CloseReason::ProtocolViolation { detail, .. }) => {
                Some(format!("server saw a protocol violation: {detail}"))
            }
            _ => None,
        });
        let client = self.client_events.iter().filter_map(|event| match event {
            ClientEvent::Closed(CloseReason::ProtocolViolation { detail, .. }) => {
                Some(format!("client saw a protocol violation: {detail}"))
            }
            _ => None,
        });
        server.chain(client).next()
    }

    /// The last close reason the server reported.
    pub fn server_close(&self) -> Option<&CloseReason> {
        self.server_events
            .iter()
            .rev()
            .find_map(|event| match event {
                ServerEvent::Closed(reason) => Some(reason),
                _ => None,
            })
    }

    /// Asserts the server closed an MQTT 5 connection for a protocol violation with
    /// `reason_code`, and told the client so in the last packet it sent: DISCONNECT with it.
    pub fn assert_server_disconnected_with(&self, reason_code: ReasonCode) {
        assert!(
            matches!(
                self.server_close(),
                Some(CloseReason::ProtocolViolation { reason_code: code, .. })
                    if *code == reason_code
            ),
            "closed with {:?}, not a violation with {reason_code:?}",
            self.server_close()
        );
        assert_eq!(
            self.packets_to_client(ProtocolVersion::V5).pop(),
            Some(rallymq_codec::Packet::Disconnect(
                rallymq_codec::Disconnect::new(reason_code)
            ))
        );
    }

    /// The last close reason the client reported.
    pub fn client_close(&self) -> Option<&CloseReason> {
        self.client_events
            .iter()
            .rev()
            .find_map(|event| match event {
                ClientEvent::Closed(reason) => Some(reason),
                _ => None,
            })
    }
}

fn message_parts(publish: &Publish) -> (String, Bytes, bool) {
    let topic = publish
        .topic
        .as_ref()
        .map(|t| t.as_str().to_owned())
        .unwrap_or_default();
    (topic, publish.payload.clone(), publish.dup)
}

/// The SUBACK reason code granting `qos`.
pub fn granted(qos: QoS) -> ReasonCode {
    match qos {
        QoS::AtMostOnce => ReasonCode::Success,
        QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
        QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
    }
}

/// Packet identifier `n`.
pub fn pid(n: u16) -> PacketId {
    PacketId::new(n).expect("non-zero identifier")
}

/// Decodes every packet in `chunks` (bytes one side sent) at `version`.
pub fn decode_all(chunks: &[Bytes], version: ProtocolVersion) -> Vec<rallymq_codec::Packet> {
    let mut buffer = bytes::BytesMut::new();
    for chunk in chunks {
        buffer.extend_from_slice(chunk);
    }
    let mut decoder =
        rallymq_codec::Decoder::with_version(version, rallymq_codec::Limits::default());
    let mut packets = Vec::new();
    while let Some(packet) = decoder
        .decode(&mut buffer)
        .expect("the engine sent a valid packet")
    {
        packets.push(packet);
    }
    assert!(buffer.is_empty(), "trailing bytes");
    packets
}

/// The packets the server sent, decoded.
impl Pair {
    pub fn packets_to_client(&self, version: ProtocolVersion) -> Vec<rallymq_codec::Packet> {
        decode_all(&self.sent_to_client, version)
    }

    pub fn packets_to_server(&self, version: ProtocolVersion) -> Vec<rallymq_codec::Packet> {
        decode_all(&self.sent_to_server, version)
    }
}

/// What `Raw` needs of an engine: the inputs and outputs both roles share.
pub trait Engine {
    type Event: std::fmt::Debug;
    fn handle_bytes(&mut self, now: Timestamp, bytes: &[u8]);
    fn poll_transmit(&mut self, now: Timestamp) -> Option<Bytes>;
    fn poll_event(&mut self) -> Option<Self::Event>;
    fn is_closed(&self) -> bool;
    /// The close reason, if `event` reports the end of the connection.
    fn close_reason(event: &Self::Event) -> Option<&CloseReason>;
    /// Whether `event` hands the caller something the peer sent (a message or a request).
    fn surfaces(event: &Self::Event) -> bool;
    /// The message `event` reports, if it reports one.
    fn message(event: &Self::Event) -> Option<&Publish>;
}

impl Engine for ServerConnection {
    type Event = ServerEvent;
    fn handle_bytes(&mut self, now: Timestamp, bytes: &[u8]) {
        Self::handle_bytes(self, now, bytes)
    }
    fn poll_transmit(&mut self, now: Timestamp) -> Option<Bytes> {
        Self::poll_transmit(self, now)
    }
    fn poll_event(&mut self) -> Option<ServerEvent> {
        Self::poll_event(self)
    }
    fn is_closed(&self) -> bool {
        Self::is_closed(self)
    }
    fn close_reason(event: &ServerEvent) -> Option<&CloseReason> {
        match event {
            ServerEvent::Closed(reason) => Some(reason),
            _ => None,
        }
    }
    fn surfaces(event: &ServerEvent) -> bool {
        matches!(
            event,
            ServerEvent::Message(_) | ServerEvent::Subscribe(_) | ServerEvent::Unsubscribe(_)
        )
    }
    fn message(event: &ServerEvent) -> Option<&Publish> {
        match event {
            ServerEvent::Message(message) => Some(&message.publish),
            _ => None,
        }
    }
}

impl Engine for ClientConnection {
    type Event = ClientEvent;
    fn handle_bytes(&mut self, now: Timestamp, bytes: &[u8]) {
        Self::handle_bytes(self, now, bytes)
    }
    fn poll_transmit(&mut self, now: Timestamp) -> Option<Bytes> {
        Self::poll_transmit(self, now)
    }
    fn poll_event(&mut self) -> Option<ClientEvent> {
        Self::poll_event(self)
    }
    fn is_closed(&self) -> bool {
        Self::is_closed(self)
    }
    fn close_reason(event: &ClientEvent) -> Option<&CloseReason> {
        match event {
            ClientEvent::Closed(reason) => Some(reason),
            _ => None,
        }
    }
    fn surfaces(event: &ClientEvent) -> bool {
        matches!(event, ClientEvent::Message(_))
    }
    fn message(event: &ClientEvent) -> Option<&Publish> {
        match event {
            ClientEvent::Message(message) => Some(&message.publish),
            _ => None,
        }
    }
}

/// One engine driven by hand with raw bytes, every output collected after each input: for
/// tests of what an engine does with packets a well-behaved peer engine never sends.
pub struct Raw<E: Engine> {
    pub now: Timestamp,
    pub engine: E,
    pub version: ProtocolVersion,
    /// Every byte the engine sent, in order.
    pub sent: Vec<u8>,
    pub events: Vec<E::Event>,
}

pub type RawServer = Raw<ServerConnection>;
pub type RawClient = Raw<ClientConnection>;

impl<E: Engine> Raw<E> {
    fn with(engine: E, version: ProtocolVersion) -> Self {
        Self {
            now: Timestamp::ZERO,
            engine,
            version,
            sent: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Feeds `bytes` as received from the peer, then collects.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.engine.handle_bytes(self.now, bytes);
        self.collect();
    }

    /// Feeds `packet` encoded for this connection's version.
    pub fn feed_packet(&mut self, packet: rallymq_codec::Packet) {
        let bytes = packet.to_bytes(self.version).expect("encodable");
        self.feed(&bytes);
    }

    /// Drains transmits and events.
    pub fn collect(&mut self) {
        while let Some(bytes) = self.engine.poll_transmit(self.now) {
            self.sent.extend_from_slice(&bytes);
        }
        while let Some(event) = self.engine.poll_event() {
            self.events.push(event);
        }
    }

    /// The packets sent so far, decoded.
    pub fn sent_packets(&self) -> Vec<rallymq_codec::Packet> {
        decode_all(&[Bytes::copy_from_slice(&self.sent)], self.version)
    }

    /// The close reason reported, if the connection ended.
    pub fn close_reason(&self) -> Option<&CloseReason> {
        self.events.iter().find_map(E::close_reason)
    }

    /// The messages received so far.
    pub fn messages(&self) -> Vec<Publish> {
        self.events.iter().filter_map(E::message).cloned().collect()
    }

    /// Whether the engine handed its caller anything the peer sent.
    pub fn surfaced(&self) -> bool {
        self.events.iter().any(E::surfaces)
    }

    /// Feeds `bytes` and asserts that the engine closed the connection as a protocol
    /// violation, sending nothing (3.1.1 has no DISCONNECT to tell why) and handing its
    /// caller nothing of what the peer sent.
    pub fn assert_closes_on(mut self, bytes: &[u8]) -> Self {
        self.feed(bytes);
        assert!(self.engine.is_closed(), "still open after {bytes:02x?}");
        assert!(
            matches!(
                self.close_reason(),
                Some(CloseReason::ProtocolViolation { .. })
            ),
            "{bytes:02x?}: {:?}",
            self.events
        );
        assert!(
            self.sent.is_empty(),
            "{bytes:02x?}: sent {:02x?}",
            self.sent
        );
        assert!(!self.surfaced(), "{bytes:02x?}: {:?}", self.events);
        self
    }
}

impl RawServer {
    /// A server connection that has received nothing yet.
    pub fn new(version: ProtocolVersion) -> Self {
        Self::with(
            ServerConnection::new(ServerConfig::default(), Timestamp::ZERO),
            version,
        )
    }

    /// A server connection that has accepted `connect` (a new session), its CONNACK and
    /// events cleared.
    pub fn accepted(connect: Connect) -> Self {
        let mut raw = Self::new(connect.protocol);
        raw.feed_packet(rallymq_codec::Packet::from(connect));
        raw.engine
            .accept(raw.now, Accept::default())
            .expect("CONNECT awaits a decision");
        raw.collect();
        raw.sent.clear();
        raw.events.clear();
        raw
    }
}

impl RawClient {
    /// A client that sent `config.connect` and got CONNACK 0 with `session_present`, resuming
    /// `state` if given; its CONNECT and events are cleared, what it sent after CONNACK kept.
    pub fn connected(
        config: ClientConfig,
        state: Option<SessionState>,
        session_present: bool,
    ) -> Self {
        let version = config.connect.protocol;
        let mut raw = Self::with(
            ClientConnection::new(config, state, Timestamp::ZERO),
            version,
        );
        raw.engine.connect(raw.now).expect("CONNECT can be sent");
        raw.collect();
        raw.sent.clear();
        raw.feed_packet(rallymq_codec::Packet::ConnAck(rallymq_codec::ConnAck {
            session_present,
            ..Default::default()
        }));
        assert!(raw.engine.is_connected(), "CONNACK accepted");
        raw.events.clear();
        raw
    }
}
