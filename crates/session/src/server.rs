//! The server side of an MQTT connection.

use std::num::{NonZeroU16, NonZeroU32};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rallymq_codec::{
    Auth, ConnAck, ConnAckProperties, Connect, Decoder, Disconnect, DisconnectProperties, Limits,
    MqttString, Packet, PacketId, PacketType, ProtocolVersion, Publish, QoS, ReasonCode, SubAck,
    SubAckProperties, UnsubAck, Will,
};

use crate::core::{Core, Outcome, Phase, fit_reason_code, repeat_authentication_method};
use crate::inbound::Inbound;
use crate::lazy::{LazyDeque, LazyMap};
use crate::outbound::Outbound;
use crate::{AckHandle, CloseReason, Error, PublishToken, ServerEvent, SessionState, Timestamp};

/// CONNACK with return code 0x01 "unacceptable protocol version", in the MQTT 3.1.1 layout:
/// the only answer a client of an unknown protocol level can be given (MQTT-3.1.2-2).
const CONNACK_UNSUPPORTED_VERSION: [u8; 4] = [0x20, 0x02, 0x00, 0x01];

/// CONNACK with reason code 0x84 "Unsupported Protocol Version" in the MQTT 5 layout, for a
/// client that gave level 5 with a protocol name other than "MQTT" (MQTT-3.1.2-1): it reads
/// MQTT 5 packets, and the 3.1.1 layout's return code 1 is no MQTT 5 reason code.
const CONNACK_UNSUPPORTED_VERSION_V5: [u8; 5] = [0x20, 0x03, 0x00, 0x84, 0x00];

/// Whether `bytes` begin a CONNECT that names MQTT 5: its fixed header, the protocol name
/// `MQTT` and level 5, however malformed the rest.
fn announces_v5(bytes: &[u8]) -> bool {
    let Some((&0x10, rest)) = bytes.split_first() else {
        return false;
    };
    // The Remaining Length: up to four bytes, the last without the continuation bit.
    let Some(length) = rest.iter().take(4).position(|byte| byte & 0x80 == 0) else {
        return false;
    };
    rest.get(length + 1..length + 8) == Some(&[0, 4, b'M', b'Q', b'T', b'T', 5][..])
}

/// How a server connection behaves: the limits it enforces on the client and announces in
/// CONNACK (MQTT 5).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// How long a new connection may take to send CONNECT before it is closed.
    pub connect_timeout: Duration,
    /// Largest packet accepted from the client (announced as Maximum Packet Size).
    pub max_packet_size: u32,
    /// Most unacknowledged QoS 1 and 2 messages the client may send at once (announced as
    /// Receive Maximum; a client exceeding it is disconnected with 0x93).
    pub receive_maximum: u16,
    /// Highest topic alias the client may use (announced as Topic Alias Maximum).
    pub topic_alias_maximum: u16,
    /// Highest topic alias this side uses towards the client, also bounded by the client's
    /// Topic Alias Maximum; 0 sends no aliases. Once all are taken, an alias moves to a topic
    /// sent more often of late than its holder; topics of 3 bytes or less get none (an alias
    /// costs as much).
    pub outgoing_topic_alias_maximum: u16,
    /// Most QoS 1 and 2 deliveries in flight at once (also bounded by the client's Receive
    /// Maximum).
    pub max_in_flight: u16,
    /// Most QoS 1 and 2 deliveries waiting for room in the window; past it `deliver` fails
    /// with [`Error::Full`].
    pub max_queued: usize,
    /// How long a packet may take to arrive once its first byte has (after the CONNECT, which
    /// has `connect_timeout`): a peer trickling a packet a byte at a time is closed, though
    /// each byte it sends keeps the keep alive satisfied.
    pub packet_timeout: Duration,
    /// The longest keep alive accepted, as Mosquitto's `max_keepalive`. An MQTT 5 client asking
    /// for more, or for none (0), is told this value as Server Keep Alive; an MQTT 3.1 or 3.1.1
    /// client doing so is refused with CONNACK return code 0x02 (identifier rejected), since
    /// those versions cannot be told another value. `None` accepts any keep alive.
    pub max_keep_alive: Option<u16>,
    /// Hand inbound QoS 1/2 acknowledgements to the caller (`acknowledge`) instead of
    /// acknowledging on arrival. A broker that must not lose a message acknowledges once it
    /// has stored or routed it. Acknowledgements go out in the order the messages arrived.
    pub manual_acks: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            packet_timeout: Duration::from_secs(30),
            max_packet_size: 1024 * 1024,
            receive_maximum: 128,
            topic_alias_maximum: 64,
            outgoing_topic_alias_maximum: 0,
            max_in_flight: 64,
            max_queued: 1000,
            max_keep_alive: None,
            manual_acks: false,
        }
    }
}

/// How the server accepts a CONNECT.
#[derive(Debug, Clone, Default)]
pub struct Accept {
    /// The session state resumed, if the server kept one for this client id and the client
    /// did not ask for a clean start. `None` starts a new session.
    pub resumed: Option<SessionState>,
    /// The client identifier assigned when the client sent an empty one (required then).
    pub assigned_client_id: Option<MqttString>,
    /// CONNACK properties the server sets itself (Maximum QoS, Retain Available, Wildcard,
    /// Shared and Subscription Identifier availability, Response Information, a changed
    /// Session Expiry Interval, user properties...). Receive Maximum, Maximum Packet Size,
    /// Topic Alias Maximum, Server Keep Alive and Assigned Client Identifier are filled in
    /// from the [`ServerConfig`] where left empty.
    pub properties: ConnAckProperties,
}

/// What the CONNECT and CONNACK settled that later packets are held to. Boxed, and only
/// allocated when there is something to hold to: most clients do not use extended
/// authentication, and most servers support QoS 2 and retained messages.
#[derive(Debug, Default)]
struct Negotiated {
    /// Maximum QoS below 2 (MQTT-3.2.2-9): a PUBLISH above it is answered with 0x9B.
    maximum_qos: Option<QoS>,
    /// Retain Available 0: a retained PUBLISH is answered with 0x9A.
    retain_unavailable: bool,
    /// The client's Authentication Method, which every AUTH repeats (MQTT-4.12.0-5).
    authentication_method: Option<MqttString>,
}

/// The client's will, kept while the connection lives, and when it is due once the connection
/// has closed and it waits on its Will Delay: the two go together, so they share one box.
#[derive(Debug)]
struct PendingWill {
    will: Will,
    due_at: Option<Timestamp>,
}

/// The server side of one MQTT connection, as a state machine. See the crate docs for the
/// order in which to call its methods.
pub struct ServerConnection {
    /// Shared: a server gives every connection the same settings, and a copy would be most
    /// of an idle connection's engine.
    config: Arc<ServerConfig>,
    core: Core,
    events: LazyDeque<ServerEvent>,
    /// When the connection was made or the last whole packet arrived: a packet begun since
    /// must be complete within `packet_timeout` (the CONNECT within `connect_timeout`).
    progress_at: Timestamp,
    /// The CONNECT, once received.
    connect: Option<Box<Connect>>,
    /// The protocol version, once CONNECT has come (the CONNECT itself is dropped once
    /// decided: an accepted connection does not carry it around).
    protocol: Option<ProtocolVersion>,
    /// CONNECT received and not yet accepted or refused: later packets wait in the buffer.
    deciding: bool,
    /// In seconds, as on the wire (a `Duration` would take 16 bytes).
    keep_alive: u16,
    session_expiry_interval: u32,
    /// SUBSCRIBE and UNSUBSCRIBE identifiers awaiting the caller's answer, with the answer's
    /// packet type and how many reason codes it carries (one per topic filter).
    pending_requests: LazyMap<PacketId, (PacketType, usize)>,
    /// Boxed: only connections with a will pay for one.
    will: Option<Box<PendingWill>>,
    /// CONNACK with success was sent.
    accepted: bool,
    /// What the CONNECT and CONNACK settled, when it holds later packets to something: the
    /// client may send AUTH only if it named an Authentication Method (MQTT-4.12.0-7).
    negotiated: Option<Box<Negotiated>>,
}

impl ServerConnection {
    /// A server connection for a transport that has just been accepted. A server with many
    /// connections passes each the same `Arc<ServerConfig>`; a `ServerConfig` works too.
    pub fn new(config: impl Into<Arc<ServerConfig>>, now: Timestamp) -> Self {
        let config = config.into();
        let limits = Limits {
            max_packet_size: config.max_packet_size,
        };
        let outbound = Outbound::new(
            SessionState::default(),
            config.max_in_flight,
            config.max_queued,
            now,
        );
        let inbound = Inbound::new(Vec::new(), config.receive_maximum.max(1));
        // The version is a placeholder until CONNECT says which one the client speaks.
        let core: Core = Core::new(
            Decoder::new(limits),
            ProtocolVersion::V5,
            outbound,
            inbound,
            config.manual_acks,
            now,
        );
        Self {
            config,
            core,
            events: LazyDeque::default(),
            progress_at: now,
            connect: None,
            protocol: None,
            deciding: false,
            keep_alive: 0,
            session_expiry_interval: 0,
            pending_requests: LazyMap::default(),
            will: None,
            accepted: false,
            negotiated: None,
        }
    }

    // ------------------------------------------------------------------ commands

    /// Accepts the CONNECT reported by [`ServerEvent::ConnectReceived`]: sends CONNACK, resends
    /// the in-flight messages of a resumed session (PUBLISH with DUP, then PUBREL, in their
    /// original order) and goes on with the packets the client sent after CONNECT.
    ///
    /// A Maximum QoS or Retain Available 0 in `accept.properties` holds the client to it: a
    /// PUBLISH beyond it closes the connection with 0x9B or 0x9A. A will beyond it cannot be
    /// published, so the connection is refused with that code instead, and this returns
    /// [`Error::NotAllowed`] with it.
    pub fn accept(&mut self, now: Timestamp, accept: Accept) -> Result<(), Error> {
        if self.core.is_closed() {
            return Err(Error::Closed);
        }
        if !self.deciding {
            return Err(Error::InvalidState("no CONNECT awaits a decision"));
        }
        // Present while deciding: set together with `deciding`.
        let connect = self.connect.as_ref().expect("CONNECT kept while deciding");
        let version = connect.protocol;
        let needs_id = connect.client_id.as_str().is_empty();
        if needs_id && accept.assigned_client_id.is_none() {
            return Err(Error::InvalidState(
                "the client sent an empty client id: assign one",
            ));
        }
        // A clean start discards any stored session (MQTT-3.1.2-4, MQTT-3.2.2-2).
        let resumed = if connect.clean_start {
            None
        } else {
            accept.resumed
        };
        let session_present = resumed.is_some();
        let client_properties = connect.properties.clone();

        let mut properties = accept.properties;
        if version.is_v5() {
            repeat_authentication_method(
                &mut properties.authentication_method,
                client_properties.authentication_method.as_ref(),
            )?;
            if client_properties.authentication_method.is_none()
                && properties.authentication_data.is_some()
            {
                return Err(Error::InvalidState(
                    "Authentication Data for a client that gave no Authentication Method",
                ));
            }
        }
        if let Some(expiry) = properties.session_expiry_interval {
            self.session_expiry_interval = expiry;
        }
        if version.is_v5() {
            properties.receive_maximum = properties
                .receive_maximum
                .or(NonZeroU16::new(self.config.receive_maximum));
            properties.maximum_packet_size = properties
                .maximum_packet_size
                .or(NonZeroU32::new(self.config.max_packet_size));
            if properties.topic_alias_maximum.is_none() && self.config.topic_alias_maximum > 0 {
                properties.topic_alias_maximum = Some(self.config.topic_alias_maximum);
            }
            if needs_id {
                properties.assigned_client_identifier = accept.assigned_client_id;
            }
            if client_properties.request_response_information != Some(true) {
                // Only a client that asked for it gets it (MQTT-3.1.2-28).
                properties.response_information = None;
            }
            if properties.server_keep_alive.is_none() && self.keep_alive_over_max(connect) {
                properties.server_keep_alive = self.config.max_keep_alive;
            }
            if let Some(keep_alive) = properties.server_keep_alive {
                // The client must use the server's value (MQTT-3.2.2-21).
                self.keep_alive = keep_alive;
            }
        } else {
            properties = ConnAckProperties::default();
        }
        let maximum_qos = properties.maximum_qos;
        let retain_unavailable = properties.retain_available == Some(false);
        // A will the server could not publish refuses the connection (MQTT-3.2.2-12, -13).
        let refusal = self.will.as_ref().and_then(|pending| {
            let will = &pending.will;
            if maximum_qos.is_some_and(|max| will.qos > max) {
                Some(ReasonCode::QoSNotSupported)
            } else if will.retain && retain_unavailable {
                Some(ReasonCode::RetainNotSupported)
            } else {
                None
            }
        });
        if let Some(reason_code) = refusal {
            self.deciding = false;
            self.refuse_connect(reason_code, ConnAckProperties::default());
            self.flush_close(now);
            return Err(Error::NotAllowed(reason_code));
        }
        if maximum_qos.is_some() || retain_unavailable {
            let negotiated = self.negotiated.get_or_insert_default();
            negotiated.maximum_qos = maximum_qos;
            negotiated.retain_unavailable = retain_unavailable;
        }
        let receive_maximum = properties.receive_maximum.map_or(u16::MAX, NonZeroU16::get);

        let state = resumed.unwrap_or_default();
        self.core.inbound = Inbound::new(state.inbound_awaiting_release.clone(), receive_maximum);
        self.core.outbound = Outbound::new(
            state,
            self.config.max_in_flight,
            self.config.max_queued,
            now,
        );
        let client_receive_maximum = client_properties
            .receive_maximum
            .map_or(u16::MAX, NonZeroU16::get);
        self.core
            .outbound
            .set_window(client_receive_maximum.min(self.config.max_in_flight));
        self.core.peer_max_packet_size = client_properties.maximum_packet_size.map(NonZeroU32::get);
        let outgoing_alias_maximum = client_properties
            .topic_alias_maximum
            .unwrap_or(0)
            .min(self.config.outgoing_topic_alias_maximum);
        self.core.reset_aliases(
            outgoing_alias_maximum,
            properties.topic_alias_maximum.unwrap_or(0),
        );

        self.core.send(Packet::ConnAck(ConnAck {
            session_present,
            reason_code: ReasonCode::Success,
            properties: properties.into(),
        }))?;
        self.core.phase = Phase::Connected;
        self.accepted = true;
        // Decided: the CONNECT is not needed any more (its will is kept apart).
        self.connect = None;
        self.deciding = false;
        if session_present {
            self.core.resend_in_flight();
        }
        self.core.pump(now);
        self.process(now);
        Ok(())
    }

    /// Refuses the CONNECT with a failure reason code (MQTT 3.1.1 clients get the nearest
    /// CONNACK return code) and closes. MQTT 5 properties (a reason string, a Server Reference
    /// with 0x9C/0x9D) go with it.
    pub fn refuse(
        &mut self,
        reason_code: ReasonCode,
        properties: ConnAckProperties,
    ) -> Result<(), Error> {
        if self.core.is_closed() {
            return Err(Error::Closed);
        }
        if !self.deciding {
            return Err(Error::InvalidState("no CONNECT awaits a decision"));
        }
        if !reason_code.is_error() || !reason_code.is_valid_for(PacketType::ConnAck) {
            // Only the Connect Reason Codes may go in CONNACK (MQTT-3.2.2-8).
            return Err(Error::InvalidState(
                "refusing needs a failure reason code that CONNACK can carry",
            ));
        }
        self.deciding = false;
        self.refuse_connect(reason_code, properties);
        // A refused connection has no will, so the time the will would be due from is moot.
        self.flush_close(self.core.last_received);
        Ok(())
    }

    /// Delivers a message to the client. QoS 0 is sent at once; QoS 1 and 2 go in flight if
    /// the window (bounded by the client's Receive Maximum) has room, else into the bounded
    /// queue, and their outcome comes back as [`ServerEvent::DeliveryAcknowledged`] or
    /// [`ServerEvent::DeliveryCompleted`]. A message larger than the client's Maximum Packet
    /// Size fails with [`Error::PacketTooLarge`]: the spec says to drop it (MQTT-3.1.2-25).
    /// Never blocks; fails with [`Error::Full`] when window and queue are full.
    pub fn deliver(
        &mut self,
        now: Timestamp,
        publish: Publish,
    ) -> Result<Option<PublishToken>, Error> {
        if self.core.phase != Phase::Connected {
            return Err(if self.core.is_closed() {
                Error::Closed
            } else {
                Error::NotConnected
            });
        }
        self.core.publish(now, publish)
    }

    /// Answers a [`ServerEvent::Subscribe`]: one reason code per subscription (the granted QoS
    /// or a failure), in order. Fails, leaving the SUBSCRIBE unanswered, when the number of
    /// codes is not the number of subscriptions (MQTT-3.8.4-6) or a code is not a SUBACK one
    /// (MQTT-3.9.3-2).
    pub fn answer_subscribe(
        &mut self,
        packet_id: PacketId,
        reason_codes: Vec<ReasonCode>,
        properties: SubAckProperties,
    ) -> Result<(), Error> {
        self.check_answer(packet_id, PacketType::SubAck, &reason_codes)?;
        self.take_request(packet_id)?;
        self.core.send(Packet::SubAck(SubAck {
            packet_id,
            properties: properties.into(),
            reason_codes,
        }))
    }

    /// Answers a [`ServerEvent::Unsubscribe`]: one reason code per filter, in order (MQTT 5;
    /// ignored before). Fails, leaving the UNSUBSCRIBE unanswered, when the number of codes is
    /// not the number of filters (MQTT-3.11.3-1) or a code is not an UNSUBACK one
    /// (MQTT-3.11.3-2).
    pub fn answer_unsubscribe(
        &mut self,
        packet_id: PacketId,
        reason_codes: Vec<ReasonCode>,
        properties: SubAckProperties,
    ) -> Result<(), Error> {
        if self.core.version.is_v5() {
            self.check_answer(packet_id, PacketType::UnsubAck, &reason_codes)?;
        }
        self.take_request(packet_id)?;
        let (reason_codes, properties) = if self.core.version.is_v5() {
            (reason_codes, properties)
        } else {
            (Vec::new(), SubAckProperties::default())
        };
        self.core.send(Packet::UnsubAck(UnsubAck {
            packet_id,
            properties: properties.into(),
            reason_codes,
        }))
    }

    /// Acknowledges an inbound message (with manual acknowledgements): a failure reason code
    /// refuses it (MQTT 5). It is sent once the messages that arrived before it are
    /// acknowledged too.
    pub fn acknowledge(&mut self, handle: AckHandle, reason_code: ReasonCode) {
        self.core.acknowledge(handle, reason_code);
    }

    /// Sends an AUTH packet (MQTT 5 extended authentication), before or after accepting, to a
    /// client that gave an Authentication Method (MQTT-4.12.0-6). Before CONNACK its reason
    /// code is 0x18 Continue authentication (MQTT-4.12.0-2); after, 0x18 or 0x00 Success to end
    /// a re-authentication. It carries the client's Authentication Method, filled in if left
    /// out (MQTT-4.12.0-5).
    pub fn send_auth(&mut self, auth: Auth) -> Result<(), Error> {
        if self.core.is_closed() {
            return Err(Error::Closed);
        }
        if !self.core.version.is_v5() {
            return Err(Error::InvalidState("AUTH needs MQTT 5"));
        }
        let method = self
            .negotiated
            .as_deref()
            .and_then(|n| n.authentication_method.as_ref());
        self.core.send_auth(auth, method, ReasonCode::Success)
    }

    /// Closes the connection, telling an MQTT 5 client why with DISCONNECT (0x8B Server
    /// shutting down, 0x8E Session taken over, ...); earlier versions just close. The will is
    /// published unless the reason says otherwise (see [`CloseReason::publishes_will`]). A
    /// reason code DISCONNECT cannot carry goes as 0x80 Unspecified error (0x00 if it is no
    /// failure), and a Session Expiry Interval in `properties` is left out: a server does not
    /// send one.
    pub fn disconnect(
        &mut self,
        now: Timestamp,
        reason_code: ReasonCode,
        mut properties: DisconnectProperties,
    ) {
        if self.core.is_closed() {
            return;
        }
        let reason_code = fit_reason_code(reason_code, PacketType::Disconnect);
        // Only the client may change the session's expiry at DISCONNECT (MQTT-3.14.2-2).
        properties.session_expiry_interval = None;
        if self.core.version.is_v5() && self.core.phase == Phase::Connected {
            self.core.send_control(Packet::Disconnect(Disconnect {
                reason_code,
                properties: properties.into(),
            }));
        }
        self.close(now, CloseReason::LocalDisconnect(reason_code));
    }

    // ------------------------------------------------------------------ inputs

    /// Feeds bytes received from the transport.
    pub fn handle_bytes(&mut self, now: Timestamp, bytes: &[u8]) {
        self.core.receive(now, bytes);
        self.process(now);
    }

    /// The transport closed (or failed).
    pub fn handle_transport_closed(&mut self, now: Timestamp) {
        self.close(now, CloseReason::TransportClosed);
    }

    /// Advances timers to `now`: the CONNECT deadline, the keep-alive (1.5 times the keep
    /// alive with nothing received closes, MQTT-3.1.2-24 / MQTT-3.1.2-22) and a pending
    /// will's delay.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        if self.core.is_closed() {
            if self.will_due_at().is_some_and(|due| now >= due) {
                self.will_due_now();
            }
            return;
        }
        if self.protocol.is_none() {
            if now >= self.progress_at + self.config.connect_timeout {
                self.close(now, CloseReason::ConnectTimeout);
            }
            return;
        }
        if self
            .packet_deadline()
            .is_some_and(|deadline| now >= deadline)
        {
            // A packet trickled in a byte at a time keeps the keep alive satisfied for ever.
            if self.core.version.is_v5() && self.core.phase == Phase::Connected {
                self.core.send_control(Packet::Disconnect(Disconnect::new(
                    ReasonCode::KeepAliveTimeout,
                )));
            }
            self.close(now, CloseReason::PacketTimeout);
            return;
        }
        if self.core.phase == Phase::Connected
            && self.keep_alive != 0
            && now >= self.keep_alive_deadline()
        {
            if self.core.version.is_v5() {
                self.core.send_control(Packet::Disconnect(Disconnect::new(
                    ReasonCode::KeepAliveTimeout,
                )));
            }
            self.close(now, CloseReason::KeepAliveTimeout);
        }
    }

    // ------------------------------------------------------------------ outputs

    /// Bytes to write to the transport: everything pending, in one buffer.
    pub fn poll_transmit(&mut self, now: Timestamp) -> Option<Bytes> {
        self.core.poll_transmit(now)
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// Gives back memory that only a burst needed: the event queue, the empty receive and
    /// transmit buffers, and the in-flight and acknowledgement state left empty. A driver calls
    /// it when the connection goes quiet, so that an idle connection holds no buffers.
    pub fn shrink_buffers(&mut self) {
        self.events.release_if_empty();
        self.core.shrink_buffers();
        self.pending_requests.release_if_empty();
    }

    /// When `handle_timeout` must be called next, if ever.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        if self.core.is_closed() {
            return self.will_due_at();
        }
        if self.protocol.is_none() {
            return Some(self.progress_at + self.config.connect_timeout);
        }
        let keep_alive = (self.core.phase == Phase::Connected && self.keep_alive != 0)
            .then(|| self.keep_alive_deadline());
        match (keep_alive, self.packet_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ------------------------------------------------------------------ state

    /// Whether the connection has ended (a will may still be pending: keep calling
    /// `handle_timeout` while `poll_timeout` says so).
    pub fn is_closed(&self) -> bool {
        self.core.is_closed()
    }

    /// Whether the CONNECT was accepted and the connection has not ended.
    pub fn is_connected(&self) -> bool {
        self.core.phase == Phase::Connected
    }

    /// The CONNECT received, while the decision on it is pending (dropped once accepted or
    /// refused).
    pub fn connect_packet(&self) -> Option<&Connect> {
        self.connect.as_deref()
    }

    /// The protocol version, once CONNECT has come.
    pub fn version(&self) -> Option<ProtocolVersion> {
        self.protocol
    }

    /// The keep alive in force (zero when off).
    pub fn keep_alive(&self) -> Duration {
        Duration::from_secs(u64::from(self.keep_alive))
    }

    /// Whether [`deliver`](Self::deliver) would take a message of `qos` now: connected, and for
    /// QoS 1 and 2 room in the window or the queue. Lets a driver keep a message it cannot hand
    /// over yet instead of copying it in case `deliver` refuses.
    pub fn can_deliver(&self, qos: QoS) -> bool {
        self.core.phase == Phase::Connected
            && (qos == QoS::AtMostOnce
                || self.core.outbound.has_room()
                || self.core.outbound.queue_has_room())
    }

    /// Whether [`deliver`](Self::deliver) would send a message of `qos` at once: connected, and
    /// for QoS 1 and 2 room in the window (not only in the queue behind it), so that it gets
    /// its packet identifier now.
    pub fn can_send(&self, qos: QoS) -> bool {
        self.core.phase == Phase::Connected
            && (qos == QoS::AtMostOnce || self.core.outbound.has_room())
    }

    /// The packet identifier of a delivery in flight (`None` while it waits in the queue, and
    /// once its flow has completed). A driver that keeps deliveries durable records it: a
    /// resumed session must resend a message with its original identifier (MQTT-4.4.0-1).
    pub fn delivery_packet_id(&self, token: PublishToken) -> Option<PacketId> {
        self.core.outbound.packet_id_of(token)
    }

    /// The packet identifiers of the outgoing QoS 2 messages in flight whose PUBREC came:
    /// delivered, with only PUBREL and PUBCOMP left (a broker that records them lets a
    /// successor release them rather than use an identifier the client still holds).
    pub fn released_packet_ids(&self) -> Vec<PacketId> {
        self.core.outbound.released_packet_ids()
    }

    /// Tells the engine that another holder of the session (in a cluster, another node)
    /// answered the client's QoS 2 message `packet_id` with PUBREC, and the driver keeps it:
    /// the client's PUBREL for it is answered with PUBCOMP Success rather than 0x92 (Packet
    /// Identifier not found). Unlike an identifier in [`SessionState::inbound_awaiting_release`],
    /// a PUBLISH under it is surfaced as a new message: the driver, which knows what it stored,
    /// tells a resend apart. Ignored for an identifier the engine tracks already.
    pub fn expect_release(&mut self, packet_id: PacketId) {
        self.core.inbound.expect_release(packet_id);
    }

    /// QoS 1 and 2 deliveries in flight and queued.
    pub fn pending_messages(&self) -> (usize, usize) {
        (
            self.core.outbound.in_flight_len(),
            self.core.outbound.queued_len(),
        )
    }

    /// Outgoing packets dropped because they exceeded the client's Maximum Packet Size even
    /// without optional properties.
    pub fn dropped_packets(&self) -> u64 {
        self.core.dropped
    }

    /// The session state to persist, or to resume on the client's next connection; its
    /// `session_expiry_interval` says how long to keep it after this connection closes
    /// (0: discard at once).
    pub fn session_state(&self) -> SessionState {
        self.core.outbound.to_state(
            self.core.inbound.awaiting_release(),
            self.session_expiry_interval,
        )
    }

    /// Stops a pending will from being published: the client reconnected within the Will
    /// Delay and resumed the session (MQTT 5 §3.1.3.2.2).
    pub fn cancel_will(&mut self) {
        self.will = None;
    }

    /// The session ended before its Will Delay passed (a clean start took it over, or the
    /// driver ended it): a will still waiting is due now, as MQTT-3.1.3-9 has it published at the
    /// delay or the session's end, whichever comes first.
    pub fn end_session(&mut self) {
        if self.core.is_closed() && self.will_due_at().is_some() {
            self.will_due_now();
        }
    }

    // ------------------------------------------------------------------ internals

    /// Whether `connect` asks for a keep alive longer than [`ServerConfig::max_keep_alive`], or
    /// for none (0) while there is a maximum.
    fn keep_alive_over_max(&self, connect: &Connect) -> bool {
        self.config
            .max_keep_alive
            .is_some_and(|max| connect.keep_alive == 0 || connect.keep_alive > max)
    }

    /// When the packet begun since the last whole one must be complete, if one is begun.
    fn packet_deadline(&self) -> Option<Timestamp> {
        self.core
            .has_partial_packet()
            .then(|| self.progress_at + self.config.packet_timeout)
    }

    fn keep_alive_deadline(&self) -> Timestamp {
        // One and a half times the keep alive, in milliseconds to keep odd values exact.
        let grace = Duration::from_millis(u64::from(self.keep_alive) * 1500);
        self.core.last_received + grace
    }

    /// Whether `reason_codes` answer the pending request `packet_id` with a `packet`: one code
    /// per topic filter, each one `packet` can carry.
    fn check_answer(
        &self,
        packet_id: PacketId,
        packet: PacketType,
        reason_codes: &[ReasonCode],
    ) -> Result<(), Error> {
        let Some(&(expected, filters)) = self.pending_requests.get(&packet_id) else {
            // `take_request` says why.
            return Ok(());
        };
        if expected != packet {
            return Err(Error::InvalidState(
                "this identifier belongs to the other kind of request",
            ));
        }
        if reason_codes.len() != filters {
            return Err(Error::InvalidState(
                "the answer needs one reason code per topic filter",
            ));
        }
        if reason_codes.iter().any(|code| !code.is_valid_for(packet)) {
            return Err(Error::InvalidState("a reason code the answer cannot carry"));
        }
        Ok(())
    }

    fn take_request(&mut self, packet_id: PacketId) -> Result<(), Error> {
        if self.core.is_closed() {
            return Err(Error::Closed);
        }
        if self.pending_requests.remove(&packet_id).is_none() {
            return Err(Error::InvalidState(
                "no SUBSCRIBE or UNSUBSCRIBE with this identifier awaits an answer",
            ));
        }
        Ok(())
    }

    /// Decodes and handles buffered packets. While a CONNECT awaits the caller's decision, only
    /// AUTH packets are read; the rest wait in the buffer.
    fn process(&mut self, now: Timestamp) {
        loop {
            if self.deciding && self.core.peek_packet_type() != Some(15) {
                break;
            }
            // Read before decoding, which takes a failed packet's bytes away: whether a CONNECT
            // that fails names MQTT 5, so that the client can be told why.
            let v5_connect = self.protocol.is_none() && announces_v5(self.core.undecoded());
            match self.core.try_next_packet() {
                Ok(Some(packet)) => {
                    self.progress_at = now;
                    self.handle_packet(now, packet);
                }
                Ok(None) => break,
                Err(error) => {
                    self.decode_failed(now, error, v5_connect);
                    break;
                }
            }
        }
        self.flush_close(now);
    }

    fn decode_failed(&mut self, now: Timestamp, error: rallymq_codec::Error, v5_connect: bool) {
        if self.protocol.is_none() {
            if error.reason_code() == ReasonCode::UnsupportedProtocolVersion {
                if matches!(
                    error,
                    rallymq_codec::Error::InvalidProtocolName { level: 5 }
                ) {
                    self.core.send_raw(&CONNACK_UNSUPPORTED_VERSION_V5);
                } else {
                    // The client's version is unknown, so answer as MQTT 3.1.1 does
                    // (MQTT-3.1.2-2).
                    self.core.send_raw(&CONNACK_UNSUPPORTED_VERSION);
                }
                self.close(
                    now,
                    CloseReason::Refused(ReasonCode::UnsupportedProtocolVersion),
                );
            } else {
                // Not a valid CONNECT: close (MQTT-3.1.0-1, MQTT-3.1.4-1). An MQTT 5 client is
                // told why first, as MQTT 5 allows (§4.13): CONNACK 0x81, 0x82 or the code that
                // fits; MQTT 3.1.1 has no code for it.
                if v5_connect {
                    let code = error.reason_code();
                    let code = if code.is_error() && code.is_valid_for(PacketType::ConnAck) {
                        code
                    } else {
                        ReasonCode::MalformedPacket
                    };
                    self.core.send_raw(&[0x20, 0x03, 0x00, code.as_u8(), 0x00]);
                }
                self.close(
                    now,
                    CloseReason::ProtocolViolation {
                        reason_code: error.reason_code(),
                        detail: error.to_string(),
                    },
                );
            }
            return;
        }
        self.core.violation(error.reason_code(), error.to_string());
    }

    fn handle_packet(&mut self, now: Timestamp, packet: Packet) {
        match packet {
            Packet::Connect(connect) => self.on_connect(*connect),
            Packet::Auth(auth)
                if self.core.version.is_v5() && self.authentication_method().is_some() =>
            {
                self.events.push_back(ServerEvent::Auth(auth))
            }
            Packet::Auth(_) if self.core.version.is_v5() => self.core.violation(
                ReasonCode::ProtocolError,
                "AUTH without an Authentication Method in CONNECT".into(),
            ),
            _ if self.core.phase != Phase::Connected => {
                self.core.violation(
                    ReasonCode::ProtocolError,
                    format!("{:?} before CONNACK", packet.packet_type()),
                );
            }
            // Subscription Identifiers are the server's to add on delivery (MQTT-3.3.4-6).
            Packet::Publish(publish) if !publish.properties.subscription_identifiers.is_empty() => {
                self.core.violation(
                    ReasonCode::ProtocolError,
                    "PUBLISH from the client carries a Subscription Identifier".into(),
                );
            }
            Packet::Publish(publish) => match self.beyond_announced(&publish) {
                Some((reason_code, detail)) => self.core.violation(reason_code, detail.into()),
                None => {
                    if let Some(message) = self.core.on_publish(publish) {
                        self.events.push_back(ServerEvent::Message(message));
                    }
                }
            },
            ack @ (Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_)) => {
                if let Some(outcome) = self.core.on_ack(ack, now) {
                    self.events.push_back(match outcome {
                        Outcome::Acknowledged(outcome) => {
                            ServerEvent::DeliveryAcknowledged(outcome)
                        }
                        Outcome::Completed(outcome) => ServerEvent::DeliveryCompleted(outcome),
                        Outcome::Released(token) => ServerEvent::DeliveryReleased(token),
                    });
                }
            }
            Packet::PubRel(ack) => {
                if self.core.on_pubrel(ack.packet_id) {
                    self.events
                        .push_back(ServerEvent::MessageReleased(ack.packet_id));
                }
            }
            Packet::Subscribe(subscribe) => {
                self.pending_requests.insert(
                    subscribe.packet_id,
                    (PacketType::SubAck, subscribe.subscriptions.len()),
                );
                self.events.push_back(ServerEvent::Subscribe(subscribe));
            }
            Packet::Unsubscribe(unsubscribe) => {
                self.pending_requests.insert(
                    unsubscribe.packet_id,
                    (PacketType::UnsubAck, unsubscribe.filters.len()),
                );
                self.events.push_back(ServerEvent::Unsubscribe(unsubscribe));
            }
            Packet::PingReq => self.core.send_control(Packet::PingResp),
            Packet::Disconnect(disconnect) => self.on_disconnect(now, disconnect),
            other => self.core.violation(
                ReasonCode::ProtocolError,
                format!("a client does not send {:?}", other.packet_type()),
            ),
        }
    }

    /// The Authentication Method the client's CONNECT named, if any.
    fn authentication_method(&self) -> Option<&MqttString> {
        self.negotiated
            .as_deref()
            .and_then(|n| n.authentication_method.as_ref())
    }

    /// Why `publish` goes beyond what the CONNACK announced, if it does: a QoS above Maximum
    /// QoS (MQTT-3.2.2-11), or RETAIN where retained messages are not available
    /// (MQTT-3.2.2-14).
    fn beyond_announced(&self, publish: &Publish) -> Option<(ReasonCode, &'static str)> {
        let negotiated = self.negotiated.as_deref()?;
        if negotiated.maximum_qos.is_some_and(|max| publish.qos > max) {
            Some((
                ReasonCode::QoSNotSupported,
                "PUBLISH above the announced Maximum QoS",
            ))
        } else if publish.retain && negotiated.retain_unavailable {
            Some((
                ReasonCode::RetainNotSupported,
                "retained PUBLISH though Retain Available is 0",
            ))
        } else {
            None
        }
    }

    fn on_connect(&mut self, connect: Connect) {
        if self.protocol.is_some() {
            // A second CONNECT is a protocol violation (MQTT-3.1.0-2).
            self.core
                .violation(ReasonCode::ProtocolError, "second CONNECT".into());
            return;
        }
        let version = connect.protocol;
        self.core.set_version(version);
        self.core.send_problem_information =
            !(version.is_v5() && connect.properties.request_problem_information == Some(false));
        if version.is_v5() {
            // The client's limit holds from its CONNECT on: for AUTH and a refusing CONNACK too.
            self.core.peer_max_packet_size =
                connect.properties.maximum_packet_size.map(NonZeroU32::get);
            if let Some(method) = &connect.properties.authentication_method {
                self.negotiated
                    .get_or_insert_default()
                    .authentication_method = Some(method.clone());
            }
        }
        self.keep_alive = connect.keep_alive;
        self.session_expiry_interval = if version.is_v5() {
            connect.properties.session_expiry_interval.unwrap_or(0)
        } else if connect.clean_start {
            0
        } else {
            u32::MAX
        };
        let empty_id = connect.client_id.as_str().is_empty();
        let refuse_empty_id = match version {
            // MQTT 3.1 requires 1 to 23 characters.
            ProtocolVersion::V3_1 => true,
            // An empty id needs a clean session (MQTT-3.1.3-7, MQTT-3.1.3-8).
            ProtocolVersion::V3_1_1 => !connect.clean_start,
            _ => false,
        };
        self.will = connect
            .will
            .clone()
            .map(|will| Box::new(PendingWill { will, due_at: None }));
        self.protocol = Some(version);
        self.connect = Some(Box::new(connect.clone()));
        // Before MQTT 5 a keep alive over the maximum cannot be corrected, only refused; the
        // code is the one Mosquitto 2.0.12 and later send for it.
        let refuse_keep_alive = !version.is_v5() && self.keep_alive_over_max(&connect);
        if (empty_id && refuse_empty_id) || refuse_keep_alive {
            self.refuse_connect(
                ReasonCode::ClientIdentifierNotValid,
                ConnAckProperties::default(),
            );
            return;
        }
        self.deciding = true;
        self.events.push_back(ServerEvent::ConnectReceived {
            connect: Box::new(connect),
            needs_client_id: empty_id,
        });
    }

    fn on_disconnect(&mut self, now: Timestamp, disconnect: Disconnect) {
        if let Some(expiry) = disconnect.properties.session_expiry_interval {
            if self.session_expiry_interval == 0 && expiry != 0 {
                // MQTT-3.14.2-2: a session that was to end with the connection cannot be
                // given a lifetime at DISCONNECT.
                self.core.violation(
                    ReasonCode::ProtocolError,
                    "session expiry set at DISCONNECT after 0 at CONNECT".into(),
                );
                self.flush_close(now);
                return;
            }
            self.session_expiry_interval = expiry;
        }
        self.close(
            now,
            CloseReason::PeerDisconnected {
                reason_code: disconnect.reason_code,
                properties: disconnect.properties.into_inner(),
            },
        );
    }

    fn refuse_connect(&mut self, reason_code: ReasonCode, mut properties: ConnAckProperties) {
        self.connect = None;
        if !self.core.version.is_v5() {
            properties = ConnAckProperties::default();
        }
        self.core.send_control(Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code,
            properties: properties.into(),
        }));
        // A refused connection has no session and no will (MQTT-3.2.2-6, MQTT-3.1.4-5).
        self.session_expiry_interval = 0;
        self.will = None;
        self.core.close(CloseReason::Refused(reason_code));
    }

    fn close(&mut self, now: Timestamp, reason: CloseReason) {
        if !self.core.is_closed() {
            self.core.close(reason);
        }
        self.flush_close(now);
    }

    /// Publishes the will now, if there is one: its delay, if any, no longer applies.
    fn will_due_now(&mut self) {
        if let Some(pending) = self.will.take() {
            self.events.push_back(ServerEvent::WillDue(pending.will));
        }
    }

    /// When the will waiting on its delay is due, if one is.
    fn will_due_at(&self) -> Option<Timestamp> {
        self.will.as_ref().and_then(|pending| pending.due_at)
    }

    /// Reports the close once and schedules the will: at once, or after its Will Delay but no
    /// later than the session's end (MQTT 5 §3.1.3.2.2).
    fn flush_close(&mut self, now: Timestamp) {
        let Some(reason) = self.core.close_reason.take() else {
            return;
        };
        self.deciding = false;
        // Only an accepted connection has a will (MQTT-3.1.4-5 for refused ones).
        if !(self.accepted && reason.publishes_will()) {
            self.will = None;
        }
        self.events.push_back(ServerEvent::Closed(*reason));
        let delay = self.will.as_ref().map(|pending| {
            pending
                .will
                .properties
                .will_delay_interval
                .unwrap_or(0)
                .min(self.session_expiry_interval)
        });
        match (delay, &mut self.will) {
            (Some(0), _) => self.will_due_now(),
            (Some(delay), Some(pending)) => {
                pending.due_at = Some(now + Duration::from_secs(u64::from(delay)));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ServerConnection;

    /// Every idle broker connection carries one inline: what few connections use is boxed or
    /// allocated on first use. It was 784 bytes before the idle-memory work; look at what
    /// grew before raising this.
    #[test]
    fn a_server_connection_stays_small() {
        let size = size_of::<ServerConnection>();
        // 360 since the trickled-packet timeout (its Duration in the config).
        assert!(size <= 360, "ServerConnection takes {size} bytes");
    }
}
