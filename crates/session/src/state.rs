//! The part of a session that must outlive a connection: taken out as a plain value so a
//! driver can keep it in memory or persist it, and handed back on the next connection.

use rallymq_codec::{PacketId, Publish};

/// Where an outgoing QoS 1 or 2 message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutgoingStage {
    /// PUBLISH sent (or to be sent), PUBACK (QoS 1) or PUBREC (QoS 2) awaited.
    Published,
    /// PUBREC received, PUBREL sent (or to be sent), PUBCOMP awaited.
    Released,
}

/// An outgoing QoS 1 or 2 message with its packet identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// The caller's token for this message, reported back in acknowledgement events.
    pub token: PublishToken,
    /// The stage reached.
    pub stage: OutgoingStage,
    /// The PUBLISH as first sent: full topic, no topic alias, `packet_id` set.
    pub publish: Publish,
}

/// An outgoing QoS 1 or 2 message not yet sent (the in-flight window was full).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessage {
    /// The caller's token.
    pub token: PublishToken,
    /// The PUBLISH, without packet identifier yet.
    pub publish: Publish,
}

/// Identifies one published message in acknowledgement events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublishToken(pub u64);

/// Session state that survives reconnects (MQTT 5 §4.1): in-flight outgoing messages in
/// their original order and stage, queued messages, inbound QoS 2 identifiers awaiting
/// PUBREL, the next packet identifier, and the session expiry interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionState {
    /// Outgoing QoS 1 and 2 messages in flight, oldest first.
    pub in_flight: Vec<OutgoingMessage>,
    /// Outgoing QoS 1 and 2 messages waiting for room in the window, oldest first.
    pub queued: Vec<QueuedMessage>,
    /// Identifiers of inbound QoS 2 messages whose PUBREL has not come yet.
    pub inbound_awaiting_release: Vec<PacketId>,
    /// The next packet identifier to try.
    pub next_packet_id: PacketId,
    /// The next publish token.
    pub next_token: u64,
    /// Seconds the session lives after its connection closes (MQTT 5 Session Expiry Interval;
    /// `u32::MAX` means never; before MQTT 5, 0 for a clean session and `u32::MAX` otherwise).
    pub session_expiry_interval: u32,
}

impl Default for SessionState {
    fn default() -> Self {
        Self {
            in_flight: Vec::new(),
            queued: Vec::new(),
            inbound_awaiting_release: Vec::new(),
            // 1 is the first identifier: 0 is not allowed (MQTT-2.3.1-1).
            next_packet_id: PacketId::new(1).expect("1 is non-zero"),
            next_token: 0,
            session_expiry_interval: 0,
        }
    }
}

impl SessionState {
    /// Whether there is nothing to resume.
    pub fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
            && self.queued.is_empty()
            && self.inbound_awaiting_release.is_empty()
    }

    /// Adds a message in flight under `packet_id` at `stage` (a driver restoring deliveries
    /// it kept: resumed with DUP, or with PUBREL); returns the token it gets.
    pub fn push_in_flight(
        &mut self,
        packet_id: PacketId,
        stage: OutgoingStage,
        mut publish: Publish,
    ) -> PublishToken {
        let token = PublishToken(self.next_token);
        self.next_token += 1;
        publish.packet_id = Some(packet_id);
        self.in_flight.push(OutgoingMessage {
            token,
            stage,
            publish,
        });
        token
    }
}
