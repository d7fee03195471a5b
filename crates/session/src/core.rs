//! What both roles share: the decode loop, the transmit buffer, closing, the outgoing publish
//! path (window, queue, aliases, size limit) and the inbound publish path (aliases, Receive
//! Maximum, QoS 2 deduplication, acknowledgements).

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use rallymq_codec::{
    Ack, Auth, Decoder, Disconnect, MqttString, Packet, PacketId, PacketType, ProtocolVersion,
    Publish, QoS, ReasonCode,
};

use crate::alias::{ALIAS_GROWTH, AliasError, IncomingAliases, OutgoingAliases};
use crate::inbound::{Arrival, Inbound};
use crate::lazy::LazyMap;
use crate::outbound::{AckResult, Outbound};
use crate::{
    AckHandle, CloseReason, Error, InboundMessage, OutgoingMessage, PacketDirection,
    PublishOutcome, PublishToken, Timestamp,
};

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Before CONNECT/CONNACK completed.
    Connecting,
    /// CONNACK sent or received with success.
    Connected,
    /// Ended; only the session state and (server side) a pending will remain.
    Closed,
}

/// An acknowledgement-related outcome for the role to turn into its own event type.
pub(crate) enum Outcome {
    Acknowledged(PublishOutcome),
    Completed(PublishOutcome),
    /// A QoS 2 message's PUBREC came: PUBREL is queued for sending.
    Released(PublishToken),
}

pub(crate) struct Core<L: PacketLog = ()> {
    pub(crate) version: ProtocolVersion,
    pub(crate) phase: Phase,
    /// Boxed: every connection carries the field, few get to use it.
    pub(crate) close_reason: Option<Box<CloseReason>>,
    decoder: Decoder,
    received: BytesMut,
    transmit: BytesMut,
    pub(crate) outbound: Outbound,
    pub(crate) inbound: Inbound,
    outgoing_aliases: OutgoingAliases,
    incoming_aliases: IncomingAliases,
    /// The peer's Maximum Packet Size: nothing larger is sent (MQTT-3.1.2-24, MQTT-3.2.2-15).
    pub(crate) peer_max_packet_size: Option<u32>,
    pub(crate) last_received: Timestamp,
    pub(crate) last_sent: Timestamp,
    pub(crate) manual_acks: bool,
    /// Whether Reason Strings and User Properties may go on packets other than PUBLISH,
    /// CONNACK and DISCONNECT: a client that sets Request Problem Information to 0 gets none
    /// there from the server (MQTT-3.1.2-29).
    pub(crate) send_problem_information: bool,
    /// Client side: SUBSCRIBE (true) and UNSUBSCRIBE (false) awaiting acknowledgement; their
    /// identifiers are in use as much as those of in-flight messages (MQTT-2.2.1-3).
    pub(crate) pending_requests: LazyMap<PacketId, bool>,
    /// Outbound QoS 0 messages dropped for size, and similar drops, for the driver's counters.
    pub(crate) dropped: u64,
    /// Copies of the packets encoded and decoded: nothing at all on the server side.
    pub(crate) log: L,
}

/// Where a connection keeps copies of the packets it encodes and decodes. The server records
/// nothing: its `()` log takes no room in the connection and copies nothing.
pub(crate) trait PacketLog: Default {
    fn record(&mut self, direction: PacketDirection, packet: &Packet);
}

impl PacketLog for () {
    fn record(&mut self, _: PacketDirection, _: &Packet) {}
}

/// The client's log: `None` while recording is off, so that only a check is paid then.
#[derive(Default)]
pub(crate) struct PacketRecorder(Option<VecDeque<(PacketDirection, Packet)>>);

impl PacketRecorder {
    /// Starts keeping a copy of every packet from now on.
    pub(crate) fn start(&mut self) {
        self.0.get_or_insert_default();
    }

    /// The oldest packet recorded and not yet taken.
    pub(crate) fn pop(&mut self) -> Option<(PacketDirection, Packet)> {
        self.0.as_mut()?.pop_front()
    }
}

impl PacketLog for PacketRecorder {
    fn record(&mut self, direction: PacketDirection, packet: &Packet) {
        if let Some(recorded) = &mut self.0 {
            recorded.push_back((direction, packet.clone()));
        }
    }
}

impl<L: PacketLog> Core<L> {
    pub(crate) fn new(
        decoder: Decoder,
        version: ProtocolVersion,
        outbound: Outbound,
        inbound: Inbound,
        manual_acks: bool,
        now: Timestamp,
    ) -> Self {
        Self {
            version,
            phase: Phase::Connecting,
            close_reason: None,
            decoder,
            received: BytesMut::new(),
            transmit: BytesMut::new(),
            outbound,
            inbound,
            outgoing_aliases: OutgoingAliases::default(),
            incoming_aliases: IncomingAliases::default(),
            peer_max_packet_size: None,
            last_received: now,
            last_sent: now,
            manual_acks,
            send_problem_information: true,
            pending_requests: LazyMap::default(),
            dropped: 0,
            log: L::default(),
        }
    }

    pub(crate) fn set_version(&mut self, version: ProtocolVersion) {
        self.version = version;
        self.decoder.set_version(version);
    }

    /// Aliases live for one connection (MQTT-3.3.2-7): both maps start empty.
    pub(crate) fn reset_aliases(&mut self, outgoing_maximum: u16, incoming_maximum: u16) {
        self.outgoing_aliases = OutgoingAliases::new(if self.version.is_v5() {
            outgoing_maximum
        } else {
            0
        });
        self.incoming_aliases = IncomingAliases::new(if self.version.is_v5() {
            incoming_maximum
        } else {
            0
        });
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    pub(crate) fn receive(&mut self, now: Timestamp, bytes: &[u8]) {
        if self.is_closed() || bytes.is_empty() {
            return;
        }
        self.last_received = now;
        self.received.extend_from_slice(bytes);
    }

    /// The next whole packet received, or `None`. A decoding error closes the connection with
    /// the error's reason code.
    pub(crate) fn next_packet(&mut self) -> Option<Packet> {
        match self.try_next_packet() {
            Ok(packet) => packet,
            Err(error) => {
                self.violation(error.reason_code(), error.to_string());
                None
            }
        }
    }

    /// The next whole packet received, or the decoding error for the role to handle.
    pub(crate) fn try_next_packet(&mut self) -> Result<Option<Packet>, rallymq_codec::Error> {
        if self.is_closed() {
            return Ok(None);
        }
        let packet = self.decoder.decode(&mut self.received)?;
        if let Some(packet) = &packet {
            self.log.record(PacketDirection::Received, packet);
        }
        if self.received.is_empty() && self.received.capacity() > 64 * 1024 {
            // Give a large buffer back once drained: idle connections stay small.
            self.received = BytesMut::new();
        }
        Ok(packet)
    }

    /// Whether part of a packet has arrived and waits for the rest.
    pub(crate) fn has_partial_packet(&self) -> bool {
        !self.received.is_empty()
    }

    /// The packet type of the next buffered packet, from its first byte, if any byte is there.
    pub(crate) fn peek_packet_type(&self) -> Option<u8> {
        self.received.first().map(|byte| byte >> 4)
    }

    /// The bytes received and not yet decoded.
    pub(crate) fn undecoded(&self) -> &[u8] {
        &self.received
    }

    /// Queues raw bytes for sending (a CONNACK for a client whose version is unknown).
    pub(crate) fn send_raw(&mut self, bytes: &[u8]) {
        self.transmit.extend_from_slice(bytes);
    }

    /// Encodes `packet` for sending. Packets over the peer's Maximum Packet Size are not sent:
    /// an acknowledgement's reason string and user properties are dropped first, as MQTT 5
    /// allows (MQTT-3.4.2-2 and others); anything still too large fails.
    pub(crate) fn send(&mut self, packet: Packet) -> Result<(), Error> {
        let packet = if self.send_problem_information
            || matches!(
                packet,
                Packet::Publish(_) | Packet::ConnAck(_) | Packet::Disconnect(_)
            ) {
            packet
        } else {
            trim_properties(packet)
        };
        let packet = match self.peer_max_packet_size {
            Some(max) if packet.encoded_len(self.version) > max as usize => {
                let trimmed = trim_properties(packet);
                let size = trimmed.encoded_len(self.version);
                if size > max as usize {
                    return Err(Error::PacketTooLarge { size, max });
                }
                trimmed
            }
            _ => packet,
        };
        packet.encode(self.version, &mut self.transmit)?;
        self.log.record(PacketDirection::Sent, &packet);
        Ok(())
    }

    /// Sends a packet this side must send (acknowledgements, pings): a failure to fit the
    /// peer's limit even without properties is counted, not raised.
    pub(crate) fn send_control(&mut self, packet: Packet) {
        if self.send(packet).is_err() {
            self.dropped += 1;
        }
    }

    /// Sends an AUTH on a connection whose CONNECT gave Authentication Method `method`; without
    /// one there is no AUTH at all (MQTT-4.12.0-6, -7). Before CONNACK an AUTH continues the
    /// authentication, 0x18 (MQTT-4.12.0-2, -3); after it, `connected_code` is the other code
    /// this side may send: 0x19 for a client starting a re-authentication, 0x00 for a server
    /// ending one. The method is filled in where left out (MQTT-4.12.0-5, MQTT-4.12.1-1).
    pub(crate) fn send_auth(
        &mut self,
        mut auth: Auth,
        method: Option<&MqttString>,
        connected_code: ReasonCode,
    ) -> Result<(), Error> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let Some(method) = method else {
            return Err(Error::InvalidState(
                "no Authentication Method in CONNECT, so no AUTH",
            ));
        };
        let code = auth.reason_code;
        if code != ReasonCode::ContinueAuthentication
            && !(self.phase == Phase::Connected && code == connected_code)
        {
            return Err(Error::InvalidState(
                "AUTH continues authentication (0x18); after CONNACK a client may also start a \
                 re-authentication (0x19) and a server end one (0x00)",
            ));
        }
        repeat_authentication_method(&mut auth.properties.authentication_method, Some(method))?;
        self.send(Packet::Auth(auth))
    }

    /// Releases the receive and transmit buffers when they hold nothing.
    pub(crate) fn shrink_buffers(&mut self) {
        if self.received.is_empty() {
            self.received = BytesMut::new();
        }
        if self.transmit.is_empty() {
            self.transmit = BytesMut::new();
        }
        self.inbound.release_if_empty();
        self.outbound.release_if_empty();
        self.pending_requests.release_if_empty();
    }

    pub(crate) fn poll_transmit(&mut self, now: Timestamp) -> Option<Bytes> {
        if self.transmit.is_empty() {
            return None;
        }
        self.last_sent = now;
        Some(self.transmit.split().freeze())
    }

    pub(crate) fn close(&mut self, reason: CloseReason) {
        if self.is_closed() {
            return;
        }
        self.phase = Phase::Closed;
        self.inbound.reset_pending();
        self.received = BytesMut::new();
        self.close_reason = Some(Box::new(reason));
    }

    /// The peer broke the protocol: MQTT 5 peers get DISCONNECT with the reason (MQTT 5
    /// §4.13); earlier versions have no way to say why, the connection just closes.
    pub(crate) fn violation(&mut self, reason_code: ReasonCode, detail: String) {
        if self.is_closed() {
            return;
        }
        if self.version.is_v5() && self.phase == Phase::Connected {
            self.send_control(Packet::Disconnect(Disconnect::new(reason_code)));
        }
        self.close(CloseReason::ProtocolViolation {
            reason_code,
            detail,
        });
    }

    // ------------------------------------------------------------- outgoing messages

    /// Sends `publish` (QoS as given, no packet identifier) or queues it; returns its token
    /// for QoS 1 and 2.
    pub(crate) fn publish(
        &mut self,
        now: Timestamp,
        mut publish: Publish,
    ) -> Result<Option<PublishToken>, Error> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        if publish.topic.is_none() {
            return Err(Error::Codec(rallymq_codec::Error::MissingTopic));
        }
        publish.packet_id = None;
        publish.dup = false;
        if let Some(properties) = publish.properties.get_mut() {
            properties.topic_alias = None;
        }
        if let Some(max) = self.peer_max_packet_size {
            // Checked on the full-topic form, identifier included: an alias only shrinks it.
            let size = Packet::Publish(publish.clone()).encoded_len(self.version)
                + 2 * usize::from(publish.qos != QoS::AtMostOnce);
            if size > max as usize {
                return Err(Error::PacketTooLarge { size, max });
            }
        }
        if publish.qos == QoS::AtMostOnce {
            if self.phase != Phase::Connected {
                return Err(Error::NotConnected);
            }
            self.send_publish(publish)?;
            return Ok(None);
        }
        let can_send = self.phase == Phase::Connected && self.outbound.has_room();
        if !can_send && !self.outbound.queue_has_room() {
            return Err(Error::Full);
        }
        let token = self.outbound.next_token();
        if can_send {
            self.send_in_flight(token, publish)?;
        } else {
            self.outbound.push_queued(token, publish, now);
        }
        Ok(Some(token))
    }

    fn send_in_flight(&mut self, token: PublishToken, mut publish: Publish) -> Result<(), Error> {
        let requests = &self.pending_requests;
        let Some(id) = self
            .outbound
            .allocate_packet_id(|id| requests.contains_key(&id))
        else {
            return Err(Error::Full);
        };
        publish.packet_id = Some(id);
        self.outbound.push_in_flight(token, publish.clone());
        self.send_publish(publish)
    }

    /// Encodes one PUBLISH with the outgoing topic alias applied.
    fn send_publish(&mut self, publish: Publish) -> Result<(), Error> {
        let mut packet = Packet::Publish(publish);
        // `publish` checked the full-topic form against the peer's limit; a new alias makes
        // that form longer, so it is set only where the limit leaves room.
        let may_grow = self
            .peer_max_packet_size
            .is_none_or(|max| packet.encoded_len(self.version) + ALIAS_GROWTH <= max as usize);
        if let Packet::Publish(publish) = &mut packet {
            self.outgoing_aliases.apply(publish, may_grow);
        }
        self.send(packet)
    }

    /// Moves queued messages into the window while it has room.
    pub(crate) fn pump(&mut self, now: Timestamp) {
        while self.phase == Phase::Connected && self.outbound.has_room() {
            let Some(message) = self.outbound.pop_sendable(now) else {
                break;
            };
            if self.send_in_flight(message.token, message.publish).is_err() {
                self.dropped += 1;
            }
        }
    }

    /// Resends the in-flight messages of a resumed session in their original order: PUBLISH
    /// with DUP set, or PUBREL (MQTT-4.4.0-1, MQTT-3.3.1-1).
    pub(crate) fn resend_in_flight(&mut self) {
        let packets: Vec<Packet> = self
            .outbound
            .in_flight()
            .map(|message| match message.stage {
                crate::OutgoingStage::Published => {
                    let mut publish = message.publish.clone();
                    publish.dup = true;
                    Packet::Publish(publish)
                }
                crate::OutgoingStage::Released => {
                    // The stored message has its identifier: it was set when it went in flight.
                    Packet::PubRel(Ack::new(
                        message
                            .publish
                            .packet_id
                            .expect("in-flight messages have an identifier"),
                    ))
                }
            })
            .collect();
        for packet in packets {
            self.send_control(packet);
        }
    }

    /// Handles PUBACK, PUBREC and PUBCOMP; answers PUBREC with PUBREL.
    pub(crate) fn on_ack(&mut self, packet: Packet, now: Timestamp) -> Option<Outcome> {
        let outcome = match packet {
            Packet::PubAck(ack) => match self.outbound.on_puback(ack.packet_id) {
                AckResult::Finished(message) => Some(Outcome::Acknowledged(outcome(message, ack))),
                _ => None,
            },
            Packet::PubRec(ack) => match self
                .outbound
                .on_pubrec(ack.packet_id, ack.reason_code.is_error())
            {
                AckResult::Finished(message) => Some(Outcome::Completed(outcome(message, ack))),
                AckResult::Release { id, token, newly } => {
                    self.send_control(Packet::PubRel(Ack::new(id)));
                    newly.then_some(Outcome::Released(token))
                }
                AckResult::Unknown => {
                    // MQTT 5: answer an unknown PUBREC so the peer can end its flow.
                    let mut release = Ack::new(ack.packet_id);
                    release.reason_code = ReasonCode::PacketIdentifierNotFound;
                    self.send_control(Packet::PubRel(release));
                    None
                }
            },
            Packet::PubComp(ack) => match self.outbound.on_pubcomp(ack.packet_id) {
                AckResult::Finished(message) => Some(Outcome::Completed(outcome(message, ack))),
                _ => None,
            },
            _ => None,
        };
        self.pump(now);
        outcome
    }

    /// The session was not resumed: unacknowledged messages are queued again as new ones.
    pub(crate) fn requeue_unacknowledged(&mut self, now: Timestamp) -> Vec<Outcome> {
        self.inbound.clear();
        self.outbound
            .requeue_unacknowledged(now)
            .into_iter()
            .map(|message| {
                Outcome::Completed(PublishOutcome {
                    token: message.token,
                    qos: message.publish.qos,
                    reason_code: ReasonCode::Success,
                    properties: Default::default(),
                })
            })
            .collect()
    }

    // ------------------------------------------------------------- incoming messages

    /// Handles an inbound PUBLISH: resolves its alias, enforces Receive Maximum, deduplicates
    /// QoS 2, acknowledges (or hands the acknowledgement to the driver). Returns the message
    /// to surface, if any.
    pub(crate) fn on_publish(&mut self, mut publish: Publish) -> Option<InboundMessage> {
        match self.incoming_aliases.resolve(&mut publish) {
            Ok(()) => {}
            Err(AliasError::OutOfRange) => {
                self.violation(
                    ReasonCode::TopicAliasInvalid,
                    "topic alias above the maximum".into(),
                );
                return None;
            }
            Err(AliasError::Unknown) => {
                self.violation(ReasonCode::ProtocolError, "topic alias never set".into());
                return None;
            }
        }
        let Some(id) = publish.packet_id else {
            return Some(InboundMessage { publish, ack: None });
        };
        match self.inbound.arrive(id, publish.qos) {
            Arrival::New => {}
            Arrival::RepeatPubRec => {
                self.send_control(Packet::PubRec(Ack::new(id)));
                return None;
            }
            Arrival::Pending => return None,
            Arrival::OverReceiveMaximum => {
                self.violation(
                    ReasonCode::ReceiveMaximumExceeded,
                    "more unacknowledged messages than Receive Maximum".into(),
                );
                return None;
            }
        }
        let handle = AckHandle {
            packet_id: id,
            qos: publish.qos,
        };
        if self.manual_acks {
            Some(InboundMessage {
                publish,
                ack: Some(handle),
            })
        } else {
            self.acknowledge(handle, ReasonCode::Success);
            Some(InboundMessage { publish, ack: None })
        }
    }

    /// Sends PUBACK or PUBREC for an inbound message once the driver says it is safe, after
    /// those of the messages that arrived before it (MQTT-4.6.0-2, -3): an answer given out of
    /// order waits for the earlier ones.
    pub(crate) fn acknowledge(&mut self, handle: AckHandle, reason_code: ReasonCode) {
        let packet = if handle.qos == QoS::AtLeastOnce {
            PacketType::PubAck
        } else {
            PacketType::PubRec
        };
        let reason_code = fit_reason_code(reason_code, packet);
        self.inbound.acknowledge(handle.packet_id, reason_code);
        while let Some((id, qos, reason_code)) = self.inbound.next_due() {
            let mut ack = Ack::new(id);
            ack.reason_code = reason_code;
            self.send_control(if qos == QoS::AtLeastOnce {
                Packet::PubAck(ack)
            } else {
                Packet::PubRec(ack)
            });
        }
    }

    /// PUBREL: ends an inbound QoS 2 flow with PUBCOMP; returns whether the identifier was
    /// one awaiting release.
    pub(crate) fn on_pubrel(&mut self, id: PacketId) -> bool {
        let mut complete = Ack::new(id);
        let known = self.inbound.release(id);
        if !known {
            complete.reason_code = ReasonCode::PacketIdentifierNotFound;
        }
        self.send_control(Packet::PubComp(complete));
        known
    }
}

/// Sets the Authentication Method of an outgoing AUTH or successful CONNACK to `method`, the
/// CONNECT's, which it must repeat (MQTT-4.12.0-5), where the caller left it out. Fails if the
/// caller named another method, or one when the CONNECT had none (MQTT-4.12.0-6).
pub(crate) fn repeat_authentication_method(
    slot: &mut Option<MqttString>,
    method: Option<&MqttString>,
) -> Result<(), Error> {
    match (method, slot.as_ref()) {
        (Some(method), None) => {
            *slot = Some(method.clone());
            Ok(())
        }
        (Some(method), Some(given)) if given == method => Ok(()),
        (None, None) => Ok(()),
        _ => Err(Error::InvalidState(
            "AUTH and CONNACK carry the CONNECT's Authentication Method, and none without one",
        )),
    }
}

/// `code` if a packet of type `packet` can carry it, else the nearest code it can: 0x80
/// Unspecified error for a failure, 0x00 for anything else. The commands that cannot fail
/// (acknowledging, disconnecting) go through it, so that no packet carries a reason code its
/// type does not define (MQTT-3.4.2-1, MQTT-3.5.2-1, MQTT-3.14.2-1).
pub(crate) fn fit_reason_code(code: ReasonCode, packet: PacketType) -> ReasonCode {
    if code.is_valid_for(packet) {
        code
    } else if code.is_error() {
        ReasonCode::UnspecifiedError
    } else {
        ReasonCode::Success
    }
}

fn outcome(message: OutgoingMessage, ack: Ack) -> PublishOutcome {
    PublishOutcome {
        token: message.token,
        qos: message.publish.qos,
        reason_code: ack.reason_code,
        properties: ack.properties.into_inner(),
    }
}

/// The packet without the properties MQTT 5 lets a sender leave out when the packet would
/// be too large: reason strings and user properties.
fn trim_properties(packet: Packet) -> Packet {
    match packet {
        Packet::PubAck(ack) => Packet::PubAck(Ack {
            properties: Default::default(),
            ..ack
        }),
        Packet::PubRec(ack) => Packet::PubRec(Ack {
            properties: Default::default(),
            ..ack
        }),
        Packet::PubRel(ack) => Packet::PubRel(Ack {
            properties: Default::default(),
            ..ack
        }),
        Packet::PubComp(ack) => Packet::PubComp(Ack {
            properties: Default::default(),
            ..ack
        }),
        Packet::SubAck(mut suback) => {
            suback.properties = Default::default();
            Packet::SubAck(suback)
        }
        Packet::UnsubAck(mut unsuback) => {
            unsuback.properties = Default::default();
            Packet::UnsubAck(unsuback)
        }
        Packet::Disconnect(mut disconnect) => {
            if let Some(properties) = disconnect.properties.get_mut() {
                properties.reason_string = None;
                properties.user_properties.clear();
            }
            Packet::Disconnect(disconnect)
        }
        Packet::ConnAck(mut connack) => {
            if let Some(properties) = connack.properties.get_mut() {
                properties.reason_string = None;
                properties.user_properties.clear();
            }
            Packet::ConnAck(connack)
        }
        Packet::Auth(mut auth) => {
            if let Some(properties) = auth.properties.get_mut() {
                properties.reason_string = None;
                properties.user_properties.clear();
            }
            Packet::Auth(auth)
        }
        other => other,
    }
}
