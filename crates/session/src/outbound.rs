//! Outgoing QoS 1 and 2 messages: packet identifiers, the in-flight window bounded by the
//! peer's Receive Maximum, the bounded queue behind it, and the acknowledgement flows.

use std::time::Duration;

use rallymq_codec::{PacketId, Publish, QoS};

use crate::lazy::LazyDeque;
use crate::{OutgoingMessage, OutgoingStage, PublishToken, QueuedMessage, SessionState, Timestamp};

/// A queued message and when it must be dropped if still unsent (Message Expiry).
struct Queued {
    message: QueuedMessage,
    queued_at: Timestamp,
}

/// What an acknowledgement did to the window.
// Returned and matched at once, never stored: boxing would cost an allocation per ack.
#[allow(clippy::large_enum_variant)]
pub(crate) enum AckResult {
    /// The flow finished: report it.
    Finished(OutgoingMessage),
    /// PUBREC accepted: send PUBREL for this identifier. `newly` when this PUBREC moved the
    /// message to the Released stage (not a repeated one after a resend).
    Release {
        id: PacketId,
        token: PublishToken,
        newly: bool,
    },
    /// No such message in the stage this acknowledgement belongs to.
    Unknown,
}

pub(crate) struct Outbound {
    in_flight: LazyDeque<OutgoingMessage>,
    queued: LazyDeque<Queued>,
    max_queued: usize,
    max_in_flight: u16,
    next_packet_id: PacketId,
    next_token: u64,
}

impl Outbound {
    pub(crate) fn new(
        state: SessionState,
        max_in_flight: u16,
        max_queued: usize,
        now: Timestamp,
    ) -> Self {
        Self {
            in_flight: state.in_flight.into_iter().collect(),
            queued: state
                .queued
                .into_iter()
                .map(|message| Queued {
                    message,
                    queued_at: now,
                })
                .collect(),
            max_queued,
            max_in_flight: max_in_flight.max(1),
            next_packet_id: state.next_packet_id,
            next_token: state.next_token,
        }
    }

    /// Frees the queues that are empty (the connection went quiet).
    pub(crate) fn release_if_empty(&mut self) {
        self.in_flight.release_if_empty();
        self.queued.release_if_empty();
    }

    pub(crate) fn set_window(&mut self, max_in_flight: u16) {
        self.max_in_flight = max_in_flight.max(1);
    }

    pub(crate) fn next_token(&mut self) -> PublishToken {
        let token = PublishToken(self.next_token);
        self.next_token += 1;
        token
    }

    pub(crate) fn in_flight_len(&self) -> usize {
        self.in_flight.len()
    }

    /// The identifiers of the in-flight messages whose PUBREC came (PUBREL sent).
    pub(crate) fn released_packet_ids(&self) -> Vec<PacketId> {
        self.in_flight
            .iter()
            .filter(|m| m.stage == OutgoingStage::Released)
            .filter_map(|m| m.publish.packet_id)
            .collect()
    }

    pub(crate) fn has_room(&self) -> bool {
        self.in_flight.len() < usize::from(self.max_in_flight)
    }

    pub(crate) fn queue_has_room(&self) -> bool {
        self.queued.len() < self.max_queued
    }

    /// A packet identifier not used by any in-flight message nor by `also_in_use`
    /// (MQTT-2.2.1-3: an identifier is free again only once its flow completes).
    pub(crate) fn allocate_packet_id(
        &mut self,
        also_in_use: impl Fn(PacketId) -> bool,
    ) -> Option<PacketId> {
        for _ in 0..u16::MAX {
            let candidate = self.next_packet_id;
            self.next_packet_id = candidate.next();
            if !also_in_use(candidate)
                && !self
                    .in_flight
                    .iter()
                    .any(|m| m.publish.packet_id == Some(candidate))
            {
                return Some(candidate);
            }
        }
        None
    }

    /// Puts a message in flight; the caller has checked `has_room` and set the identifier.
    pub(crate) fn push_in_flight(&mut self, token: PublishToken, publish: Publish) {
        self.in_flight.push_back(OutgoingMessage {
            token,
            stage: OutgoingStage::Published,
            publish,
        });
    }

    pub(crate) fn push_queued(&mut self, token: PublishToken, publish: Publish, now: Timestamp) {
        self.queued.push_back(Queued {
            message: QueuedMessage { token, publish },
            queued_at: now,
        });
    }

    /// The next queued message that may go out now, its Message Expiry Interval reduced by the
    /// time it waited (MQTT-3.3.2-6); expired messages are dropped on the way (MQTT-3.3.2-5).
    pub(crate) fn pop_sendable(&mut self, now: Timestamp) -> Option<QueuedMessage> {
        while let Some(Queued {
            mut message,
            queued_at,
        }) = self.queued.pop_front()
        {
            if let Some(interval) = message.publish.properties.message_expiry_interval {
                let waited = now.saturating_duration_since(queued_at);
                let Some(left) = Duration::from_secs(u64::from(interval))
                    .checked_sub(waited)
                    .filter(|d| !d.is_zero())
                else {
                    continue;
                };
                // Rounded up so a message is never announced as already expired.
                message.publish.properties.message_expiry_interval = Some(
                    u32::try_from(left.as_secs() + u64::from(left.subsec_nanos() > 0))
                        .unwrap_or(u32::MAX),
                );
            }
            return Some(message);
        }
        None
    }

    pub(crate) fn queued_len(&self) -> usize {
        self.queued.len()
    }

    /// PUBACK for a QoS 1 message.
    pub(crate) fn on_puback(&mut self, id: PacketId) -> AckResult {
        self.finish(id, QoS::AtLeastOnce, OutgoingStage::Published)
    }

    /// PUBREC for a QoS 2 message: a failure ends the flow, success moves it to Released.
    pub(crate) fn on_pubrec(&mut self, id: PacketId, failed: bool) -> AckResult {
        if failed {
            return self.finish(id, QoS::ExactlyOnce, OutgoingStage::Published);
        }
        match self
            .in_flight
            .iter_mut()
            .find(|m| m.publish.packet_id == Some(id) && m.publish.qos == QoS::ExactlyOnce)
        {
            Some(message) => {
                // A repeated PUBREC (after a resend) is answered with PUBREL again.
                let newly = message.stage == OutgoingStage::Published;
                message.stage = OutgoingStage::Released;
                AckResult::Release {
                    id,
                    token: message.token,
                    newly,
                }
            }
            None => AckResult::Unknown,
        }
    }

    /// PUBCOMP for a QoS 2 message.
    pub(crate) fn on_pubcomp(&mut self, id: PacketId) -> AckResult {
        self.finish(id, QoS::ExactlyOnce, OutgoingStage::Released)
    }

    fn finish(&mut self, id: PacketId, qos: QoS, stage: OutgoingStage) -> AckResult {
        let position = self.in_flight.iter().position(|m| {
            m.publish.packet_id == Some(id) && m.publish.qos == qos && m.stage == stage
        });
        match position {
            Some(index) => match self.in_flight.remove(index) {
                Some(message) => AckResult::Finished(message),
                None => AckResult::Unknown,
            },
            None => AckResult::Unknown,
        }
    }

    /// The packet identifier of the in-flight message of `token`.
    pub(crate) fn packet_id_of(&self, token: PublishToken) -> Option<PacketId> {
        self.in_flight
            .iter()
            .find(|message| message.token == token)
            .and_then(|message| message.publish.packet_id)
    }

    /// The in-flight messages, oldest first, for resending on a resumed session.
    pub(crate) fn in_flight(&self) -> impl Iterator<Item = &OutgoingMessage> {
        self.in_flight.iter()
    }

    /// The session was not resumed: messages never acknowledged go back to the front of the
    /// queue as new messages (they get new identifiers); messages whose PUBREC came back are
    /// with the server already and are returned as finished.
    pub(crate) fn requeue_unacknowledged(&mut self, now: Timestamp) -> Vec<OutgoingMessage> {
        let mut finished = Vec::new();
        for message in self.in_flight.take().into_iter().rev() {
            match message.stage {
                OutgoingStage::Published => {
                    let mut publish = message.publish;
                    publish.packet_id = None;
                    publish.dup = false;
                    self.queued.push_front(Queued {
                        message: QueuedMessage {
                            token: message.token,
                            publish,
                        },
                        queued_at: now,
                    });
                }
                OutgoingStage::Released => finished.push(message),
            }
        }
        finished.reverse();
        finished
    }

    pub(crate) fn to_state(
        &self,
        inbound_awaiting_release: Vec<PacketId>,
        session_expiry_interval: u32,
    ) -> SessionState {
        SessionState {
            in_flight: self.in_flight.iter().cloned().collect(),
            queued: self.queued.iter().map(|q| q.message.clone()).collect(),
            inbound_awaiting_release,
            next_packet_id: self.next_packet_id,
            next_token: self.next_token,
            session_expiry_interval,
        }
    }
}
