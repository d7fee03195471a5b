//! The client side of an MQTT connection.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use rallymq_codec::{
    Auth, ConnAck, Connect, Decoder, Disconnect, Limits, Packet, PacketId, PacketType,
    ProtocolVersion, Publish, QoS, ReasonCode, Subscribe, SubscribeProperties, Subscription,
    TopicFilter, Unsubscribe, UnsubscribeProperties,
};

use crate::core::{Core, Outcome, PacketRecorder, Phase, fit_reason_code};
use crate::inbound::Inbound;
use crate::outbound::Outbound;
use crate::{
    AckHandle, ClientEvent, CloseReason, Error, PacketDirection, PublishToken, RequestToken,
    SessionState, Timestamp,
};

/// How a client connection behaves.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The CONNECT to send: version, client id, clean start, keep alive, credentials, will,
    /// MQTT 5 properties (Receive Maximum, Topic Alias Maximum and Maximum Packet Size there
    /// are the limits this client enforces on the server).
    pub connect: Connect,
    /// Most outgoing QoS 1 and 2 messages in flight at once (also bounded by the server's
    /// Receive Maximum).
    pub max_in_flight: u16,
    /// Most QoS 1 and 2 messages waiting for room in the window; past it `publish` fails
    /// with [`Error::Full`].
    pub max_queued: usize,
    /// Hand inbound QoS 1/2 acknowledgements to the caller (`acknowledge`) instead of
    /// acknowledging on arrival. PUBACK and PUBREC still go out in the order the messages
    /// arrived (MQTT-4.6.0-2, -3): one acknowledged early waits for those before it.
    pub manual_acks: bool,
    /// How long to wait for CONNACK, and for PINGRESP after a PINGREQ.
    pub response_timeout: Duration,
    /// Keep a copy of every packet encoded for sending and every packet decoded, in the order
    /// the engine handled them, for [`ClientConnection::poll_recorded_packet`]: a packet trace
    /// such as `mosquitto_sub -d` prints, without decoding the bytes a second time. Off by
    /// default; off, nothing is copied.
    pub record_packets: bool,
}

impl ClientConfig {
    /// A configuration sending `connect`, with a window of 64, a queue of 1,024 and a 30 s
    /// response timeout.
    pub fn new(connect: Connect) -> Self {
        Self {
            connect,
            max_in_flight: 64,
            max_queued: 1024,
            manual_acks: false,
            response_timeout: Duration::from_secs(30),
            record_packets: false,
        }
    }
}

/// The client side of one MQTT connection, as a state machine. See the crate docs for the
/// order in which to call its methods.
pub struct ClientConnection {
    config: ClientConfig,
    core: Core<PacketRecorder>,
    events: VecDeque<ClientEvent>,
    /// Keep alive in force: the client's, or the server's Server Keep Alive (MQTT-3.2.2-21).
    keep_alive: Duration,
    connect_sent_at: Option<Timestamp>,
    ping_sent_at: Option<Timestamp>,
    had_state: bool,
    session_expiry_interval: u32,
    server_connack: Option<ConnAck>,
}

impl ClientConnection {
    /// A client connection that will send `config.connect`, resuming `state` (from an earlier
    /// connection of the same session) if given.
    pub fn new(config: ClientConfig, state: Option<SessionState>, now: Timestamp) -> Self {
        let version = config.connect.protocol;
        let had_state = state.is_some();
        let state = state.unwrap_or_default();
        let properties = &config.connect.properties;
        let receive_maximum = properties.receive_maximum.map_or(u16::MAX, |m| m.get());
        let session_expiry_interval = if version.is_v5() {
            properties.session_expiry_interval.unwrap_or(0)
        } else if config.connect.clean_start {
            0
        } else {
            u32::MAX
        };
        let inbound = Inbound::new(state.inbound_awaiting_release.clone(), receive_maximum);
        let outbound = Outbound::new(state, config.max_in_flight, config.max_queued, now);
        let mut decoder = Decoder::with_version(version, Limits::default());
        if let Some(max) = properties.maximum_packet_size {
            decoder.set_limits(Limits {
                max_packet_size: max.get(),
            });
        }
        let mut core: Core<PacketRecorder> =
            Core::new(decoder, version, outbound, inbound, config.manual_acks, now);
        if config.record_packets {
            core.log.start();
        }
        Self {
            keep_alive: Duration::from_secs(u64::from(config.connect.keep_alive)),
            config,
            core,
            events: VecDeque::new(),
            connect_sent_at: None,
            ping_sent_at: None,
            had_state,
            session_expiry_interval,
            server_connack: None,
        }
    }

    // ------------------------------------------------------------------ commands

    /// Sends CONNECT. Call once, when the transport is up. Before MQTT 5 an empty client id
    /// needs a clean session (MQTT-3.1.3-7): such a CONNECT is refused with
    /// [`Error::InvalidState`], as the server would refuse it with 0x02.
    pub fn connect(&mut self, now: Timestamp) -> Result<(), Error> {
        if self.connect_sent_at.is_some() {
            return Err(Error::InvalidState("CONNECT already sent"));
        }
        if self.core.is_closed() {
            return Err(Error::Closed);
        }
        let connect = &self.config.connect;
        if !connect.protocol.is_v5()
            && connect.client_id.as_str().is_empty()
            && !connect.clean_start
        {
            return Err(Error::InvalidState(
                "an empty client id needs a clean session before MQTT 5",
            ));
        }
        self.core.send(Packet::from(self.config.connect.clone()))?;
        self.connect_sent_at = Some(now);
        Ok(())
    }

    /// Publishes a message. QoS 0 is sent at once (only while connected); QoS 1 and 2 go in
    /// flight if the window has room, else into the bounded queue (also before CONNACK), and
    /// their token comes back in [`ClientEvent::PublishAcknowledged`] or
    /// [`ClientEvent::PublishCompleted`]. Never blocks; fails with [`Error::Full`] when both
    /// window and queue are full, and with [`Error::NotAllowed`] for a QoS above the server's
    /// Maximum QoS or a retained message the server does not support. Subscription Identifiers
    /// are left out: only a server sends them.
    pub fn publish(
        &mut self,
        now: Timestamp,
        mut publish: Publish,
    ) -> Result<Option<PublishToken>, Error> {
        if let Some(properties) = publish.properties.get_mut() {
            // The server's to add on delivery (MQTT-3.3.4-6): a message received and sent on
            // as it came would carry them.
            properties.subscription_identifiers.clear();
        }
        // `is_some_and` rather than a let chain, which would need Rust 1.88 (the MSRV is 1.85).
        if self
            .server_maximum_qos()
            .is_some_and(|max_qos| publish.qos > max_qos)
        {
            return Err(Error::NotAllowed(ReasonCode::QoSNotSupported));
        }
        if publish.retain
            && self
                .server_connack
                .as_ref()
                .is_some_and(|c| c.properties.retain_available == Some(false))
        {
            // MQTT-3.2.2-14.
            return Err(Error::NotAllowed(ReasonCode::RetainNotSupported));
        }
        self.core.publish(now, publish)
    }

    /// Subscribes; the result comes in [`ClientEvent::Subscribed`].
    pub fn subscribe(
        &mut self,
        subscriptions: Vec<Subscription>,
        properties: SubscribeProperties,
    ) -> Result<RequestToken, Error> {
        let packet_id = self.request_id()?;
        self.core.send(Packet::Subscribe(Subscribe {
            packet_id,
            properties: properties.into(),
            subscriptions,
        }))?;
        self.core.pending_requests.insert(packet_id, true);
        Ok(RequestToken(packet_id))
    }

    /// Unsubscribes; the result comes in [`ClientEvent::Unsubscribed`].
    pub fn unsubscribe(
        &mut self,
        filters: Vec<TopicFilter>,
        properties: UnsubscribeProperties,
    ) -> Result<RequestToken, Error> {
        let packet_id = self.request_id()?;
        self.core.send(Packet::Unsubscribe(Unsubscribe {
            packet_id,
            properties: properties.into(),
            filters,
        }))?;
        self.core.pending_requests.insert(packet_id, false);
        Ok(RequestToken(packet_id))
    }

    fn request_id(&mut self) -> Result<PacketId, Error> {
        if self.core.phase != Phase::Connected {
            return Err(if self.core.is_closed() {
                Error::Closed
            } else {
                Error::NotConnected
            });
        }
        let requests = &self.core.pending_requests;
        self.core
            .outbound
            .allocate_packet_id(|id| requests.contains_key(&id))
            .ok_or(Error::Full)
    }

    /// Acknowledges an inbound message (with manual acknowledgements). The PUBACK or PUBREC is
    /// sent once every message that arrived before this one is acknowledged too.
    pub fn acknowledge(&mut self, handle: AckHandle, reason_code: ReasonCode) {
        self.core.acknowledge(handle, reason_code);
    }

    /// Sends an AUTH packet (MQTT 5 extended authentication), which only a client whose CONNECT
    /// gave an Authentication Method may send (MQTT-4.12.0-7). Before CONNACK its reason code
    /// is 0x18 Continue authentication (MQTT-4.12.0-3); after, 0x19 starts a
    /// re-authentication and 0x18 continues one. It carries the CONNECT's Authentication
    /// Method, filled in if left out (MQTT-4.12.0-5, MQTT-4.12.1-1).
    pub fn send_auth(&mut self, auth: Auth) -> Result<(), Error> {
        let method = self
            .config
            .connect
            .properties
            .authentication_method
            .as_ref();
        self.core
            .send_auth(auth, method, ReasonCode::ReAuthenticate)
    }

    /// Sends DISCONNECT and closes. With MQTT 5, `disconnect` carries the reason (0x04 asks the
    /// server to publish the will) and may change the session expiry.
    pub fn disconnect(&mut self, mut disconnect: Disconnect) {
        if self.core.is_closed() {
            return;
        }
        disconnect.reason_code = fit_reason_code(disconnect.reason_code, PacketType::Disconnect);
        if let Some(expiry) = disconnect.properties.session_expiry_interval {
            self.session_expiry_interval = expiry;
        }
        let reason_code = disconnect.reason_code;
        self.core.send_control(Packet::Disconnect(disconnect));
        self.close(CloseReason::LocalDisconnect(reason_code));
    }

    // ------------------------------------------------------------------ inputs

    /// Feeds bytes received from the transport.
    pub fn handle_bytes(&mut self, now: Timestamp, bytes: &[u8]) {
        self.core.receive(now, bytes);
        while let Some(packet) = self.core.next_packet() {
            self.handle_packet(now, packet);
        }
        self.flush_close();
    }

    /// The transport closed (or failed).
    pub fn handle_transport_closed(&mut self) {
        self.close(CloseReason::TransportClosed);
    }

    /// Advances timers to `now`: sends PINGREQ when the keep-alive is due, closes when CONNACK
    /// or PINGRESP does not come in time.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        if self.core.is_closed() {
            return;
        }
        if self.core.phase == Phase::Connecting {
            if self
                .connect_sent_at
                .is_some_and(|sent| now >= sent + self.config.response_timeout)
            {
                self.close(CloseReason::KeepAliveTimeout);
            }
            return;
        }
        if let Some(sent) = self.ping_sent_at {
            if now >= sent + self.ping_timeout() {
                self.close(CloseReason::KeepAliveTimeout);
            }
            return;
        }
        if !self.keep_alive.is_zero() && now >= self.core.last_sent + self.keep_alive {
            self.core.send_control(Packet::PingReq);
            self.ping_sent_at = Some(now);
        }
    }

    // ------------------------------------------------------------------ outputs

    /// Bytes to write to the transport: everything pending, in one buffer.
    pub fn poll_transmit(&mut self, now: Timestamp) -> Option<Bytes> {
        self.core.poll_transmit(now)
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// The next packet recorded with [`ClientConfig::record_packets`]: each packet encoded
    /// (`Sent`) or decoded (`Received`), oldest first; always `None` when recording is off.
    /// Drain it with the other outputs, after every input.
    pub fn poll_recorded_packet(&mut self) -> Option<(PacketDirection, Packet)> {
        self.core.log.pop()
    }

    /// When `handle_timeout` must be called next, if ever.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        if self.core.is_closed() {
            return None;
        }
        if self.core.phase == Phase::Connecting {
            return self
                .connect_sent_at
                .map(|sent| sent + self.config.response_timeout);
        }
        if let Some(sent) = self.ping_sent_at {
            return Some(sent + self.ping_timeout());
        }
        (!self.keep_alive.is_zero()).then(|| self.core.last_sent + self.keep_alive)
    }

    // ------------------------------------------------------------------ state

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.core.is_closed()
    }

    /// Whether CONNACK accepted the connection and it has not ended.
    pub fn is_connected(&self) -> bool {
        self.core.phase == Phase::Connected
    }

    /// The protocol version of this connection.
    pub fn version(&self) -> ProtocolVersion {
        self.core.version
    }

    /// QoS 1 and 2 messages in flight and queued.
    pub fn pending_messages(&self) -> (usize, usize) {
        (
            self.core.outbound.in_flight_len(),
            self.core.outbound.queued_len(),
        )
    }

    /// The session state to persist or to hand to the next connection.
    pub fn session_state(&self) -> SessionState {
        self.core.outbound.to_state(
            self.core.inbound.awaiting_release(),
            self.session_expiry_interval,
        )
    }

    // ------------------------------------------------------------------ internals

    fn ping_timeout(&self) -> Duration {
        self.config
            .response_timeout
            .min(self.keep_alive.max(Duration::from_secs(1)))
    }

    fn server_maximum_qos(&self) -> Option<QoS> {
        self.server_connack
            .as_ref()
            .and_then(|c| c.properties.maximum_qos)
    }

    fn close(&mut self, reason: CloseReason) {
        if !self.core.is_closed() {
            self.core.close(reason);
            self.flush_close();
        }
    }

    /// Reports the close once.
    fn flush_close(&mut self) {
        if let Some(reason) = self.core.close_reason.take() {
            self.events.push_back(ClientEvent::Closed(*reason));
        }
    }

    fn handle_packet(&mut self, now: Timestamp, packet: Packet) {
        match packet {
            Packet::ConnAck(connack) => self.on_connack(now, connack),
            _ if self.core.phase != Phase::Connected && !matches!(packet, Packet::Auth(_)) => {
                self.core.violation(
                    ReasonCode::ProtocolError,
                    format!("{:?} before CONNACK", packet.packet_type()),
                );
            }
            Packet::Publish(publish) => {
                if let Some(message) = self.core.on_publish(publish) {
                    self.events.push_back(ClientEvent::Message(message));
                }
            }
            ack @ (Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_)) => {
                if let Some(outcome) = self.core.on_ack(ack, now) {
                    self.push_outcome(outcome);
                }
            }
            Packet::PubRel(ack) => {
                self.core.on_pubrel(ack.packet_id);
            }
            Packet::SubAck(suback) => {
                if self.core.pending_requests.remove(&suback.packet_id) == Some(true) {
                    self.events.push_back(ClientEvent::Subscribed {
                        token: RequestToken(suback.packet_id),
                        reason_codes: suback.reason_codes,
                        properties: suback.properties.into_inner(),
                    });
                }
            }
            Packet::UnsubAck(unsuback) => {
                if self.core.pending_requests.remove(&unsuback.packet_id) == Some(false) {
                    self.events.push_back(ClientEvent::Unsubscribed {
                        token: RequestToken(unsuback.packet_id),
                        reason_codes: unsuback.reason_codes,
                        properties: unsuback.properties.into_inner(),
                    });
                }
            }
            Packet::PingResp => self.ping_sent_at = None,
            Packet::Disconnect(disconnect) => self.core.close(CloseReason::PeerDisconnected {
                reason_code: disconnect.reason_code,
                properties: disconnect.properties.into_inner(),
            }),
            Packet::Auth(auth) => {
                let ours = self
                    .config
                    .connect
                    .properties
                    .authentication_method
                    .as_ref();
                if ours.is_none() || auth.properties.authentication_method.as_ref() != ours {
                    // MQTT-4.12.0-5, and MQTT-4.12.0-6 from the server's side.
                    self.core.violation(
                        ReasonCode::ProtocolError,
                        "AUTH without this client's Authentication Method".into(),
                    );
                } else {
                    self.events.push_back(ClientEvent::Auth(auth));
                }
            }
            other => self.core.violation(
                ReasonCode::ProtocolError,
                format!("a server does not send {:?}", other.packet_type()),
            ),
        }
    }

    fn push_outcome(&mut self, outcome: Outcome) {
        self.events.push_back(match outcome {
            Outcome::Acknowledged(outcome) => ClientEvent::PublishAcknowledged(outcome),
            Outcome::Completed(outcome) => ClientEvent::PublishCompleted(outcome),
            // The client keeps its session state in memory: nothing to record.
            Outcome::Released(_) => return,
        });
    }

    fn on_connack(&mut self, now: Timestamp, connack: ConnAck) {
        if self.core.phase != Phase::Connecting || self.connect_sent_at.is_none() {
            self.core
                .violation(ReasonCode::ProtocolError, "unexpected CONNACK".into());
            return;
        }
        if connack.reason_code.is_error() {
            self.core.close(CloseReason::Refused(connack.reason_code));
            return;
        }
        if connack.properties.authentication_method
            != self.config.connect.properties.authentication_method
        {
            // A successful CONNACK repeats the CONNECT's method, if any (MQTT-4.12.0-5, -6).
            self.core.violation(
                ReasonCode::ProtocolError,
                "CONNACK without this client's Authentication Method".into(),
            );
            return;
        }
        let properties = &connack.properties;
        if let Some(keep_alive) = properties.server_keep_alive {
            self.keep_alive = Duration::from_secs(u64::from(keep_alive));
        }
        if let Some(expiry) = properties.session_expiry_interval {
            self.session_expiry_interval = expiry;
        }
        self.core.peer_max_packet_size = properties.maximum_packet_size.map(|m| m.get());
        let server_receive_maximum = properties.receive_maximum.map_or(u16::MAX, |m| m.get());
        self.core
            .outbound
            .set_window(server_receive_maximum.min(self.config.max_in_flight));
        let incoming_alias_maximum = self
            .config
            .connect
            .properties
            .topic_alias_maximum
            .unwrap_or(0);
        self.core.reset_aliases(
            properties.topic_alias_maximum.unwrap_or(0),
            incoming_alias_maximum,
        );
        self.core.phase = Phase::Connected;
        let session_present = connack.session_present;
        let clean_start = self.config.connect.clean_start;
        if session_present && (clean_start || (self.core.version.is_v5() && !self.had_state)) {
            // A clean start cannot resume a session (MQTT-3.2.2-1 in 3.1.1, MQTT-3.2.2-2 in
            // 5.0), and a client without session state must not accept one (MQTT-3.2.2-4).
            let detail = if clean_start {
                "session present after a clean start"
            } else {
                "session present but this client has no session state"
            };
            self.core
                .violation(ReasonCode::ProtocolError, detail.into());
            return;
        }
        let requeued = if session_present {
            self.core.resend_in_flight();
            Vec::new()
        } else {
            self.core.requeue_unacknowledged(now)
        };
        self.server_connack = Some(connack.clone());
        self.events.push_back(ClientEvent::Connected {
            session_present,
            connack,
        });
        for outcome in requeued {
            self.push_outcome(outcome);
        }
        self.core.pump(now);
    }
}
