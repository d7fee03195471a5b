//! Inbound QoS 1 and 2 messages: Receive Maximum enforcement, QoS 2 exactly-once delivery
//! (an identifier awaiting PUBREL is never surfaced twice), and manual acknowledgement, whose
//! PUBACKs and PUBRECs go out in the order the messages arrived.

use crate::lazy::{LazyDeque, LazyMap};

use rallymq_codec::{PacketId, QoS, ReasonCode};

/// What to do with an inbound QoS 1 or 2 PUBLISH.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// New: surface it.
    New,
    /// A QoS 2 message already surfaced and acknowledged: send PUBREC again, do not surface.
    RepeatPubRec,
    /// Already surfaced and its acknowledgement is still pending: ignore.
    Pending,
    /// Surfacing it would exceed our Receive Maximum (MQTT 5 §3.3.4, reason 0x93).
    OverReceiveMaximum,
}

/// A surfaced message whose acknowledgement has not been sent.
struct Pending {
    qos: QoS,
    /// The driver's answer, once given; it waits until the messages before it are answered.
    answer: Option<ReasonCode>,
}

pub(crate) struct Inbound {
    /// QoS 2 identifiers surfaced whose PUBREL has not come.
    qos2_unreleased: LazyMap<PacketId, ()>,
    /// Surfaced messages whose acknowledgement has not been sent.
    pending_ack: LazyMap<PacketId, Pending>,
    /// The identifiers of `pending_ack` in the order their messages arrived: PUBACK and PUBREC
    /// go out in this order whatever order the driver answers in (MQTT-4.6.0-2, -3).
    arrival_order: LazyDeque<PacketId>,
    /// QoS 2 identifiers whose message another holder of the session answered with PUBREC
    /// (see `ServerSession::expect_release`): released on PUBREL, and never taken for a
    /// resend of a PUBLISH.
    answered_elsewhere: LazyMap<PacketId, ()>,
    receive_maximum: u16,
}

impl Inbound {
    pub(crate) fn new(awaiting_release: Vec<PacketId>, receive_maximum: u16) -> Self {
        Self {
            qos2_unreleased: awaiting_release.into_iter().map(|id| (id, ())).collect(),
            pending_ack: LazyMap::default(),
            arrival_order: LazyDeque::default(),
            answered_elsewhere: LazyMap::default(),
            receive_maximum,
        }
    }

    /// Messages counted against Receive Maximum: QoS 1 until PUBACK is sent, QoS 2 until
    /// PUBCOMP is sent.
    fn unacknowledged(&self) -> usize {
        self.qos2_unreleased.len()
            + self
                .pending_ack
                .values()
                .filter(|pending| pending.qos == QoS::AtLeastOnce)
                .count()
    }

    pub(crate) fn arrive(&mut self, id: PacketId, qos: QoS) -> Arrival {
        if self.pending_ack.contains_key(&id) {
            return Arrival::Pending;
        }
        if qos == QoS::ExactlyOnce && self.qos2_unreleased.contains_key(&id) {
            return Arrival::RepeatPubRec;
        }
        if self.unacknowledged() >= usize::from(self.receive_maximum) {
            return Arrival::OverReceiveMaximum;
        }
        if qos == QoS::ExactlyOnce {
            // Its flow starts again here: the driver tells a resend apart.
            self.answered_elsewhere.remove(&id);
        }
        self.pending_ack.insert(id, Pending { qos, answer: None });
        self.arrival_order.push_back(id);
        if qos == QoS::ExactlyOnce {
            self.qos2_unreleased.insert(id, ());
        }
        Arrival::New
    }

    /// The driver answered the message `id` with `reason_code` (a second answer, or one for a
    /// message not pending, is ignored). Its acknowledgement is due once every message that
    /// arrived before it is answered: see [`next_due`](Self::next_due).
    pub(crate) fn acknowledge(&mut self, id: PacketId, reason_code: ReasonCode) {
        if let Some(pending) = self.pending_ack.get_mut(&id) {
            pending.answer.get_or_insert(reason_code);
        }
    }

    /// The next acknowledgement to send, in arrival order: the oldest pending message, if the
    /// driver has answered it. A QoS 2 message refused with a failure code ends its flow at
    /// PUBREC.
    pub(crate) fn next_due(&mut self) -> Option<(PacketId, QoS, ReasonCode)> {
        loop {
            let id = *self.arrival_order.front()?;
            let Some(pending) = self.pending_ack.get(&id) else {
                // Not pending any more (cannot happen: leaving `pending_ack` leaves the order
                // too); dropped so that it cannot hold the others back.
                self.arrival_order.pop_front();
                continue;
            };
            let reason_code = pending.answer?;
            let qos = pending.qos;
            self.arrival_order.pop_front();
            self.pending_ack.remove(&id);
            if qos == QoS::ExactlyOnce && reason_code.is_error() {
                self.qos2_unreleased.remove(&id);
            }
            return Some((id, qos, reason_code));
        }
    }

    /// PUBREL arrived; whether `id` was awaiting it.
    pub(crate) fn release(&mut self, id: PacketId) -> bool {
        if self.pending_ack.remove(&id).is_some() {
            let index = self.arrival_order.iter().position(|pending| *pending == id);
            if let Some(index) = index {
                self.arrival_order.remove(index);
            }
        }
        self.qos2_unreleased.remove(&id).is_some() || self.answered_elsewhere.remove(&id).is_some()
    }

    /// `id`'s QoS 2 message was answered with PUBREC by another holder of the session: its
    /// PUBREL is expected, unless this engine already tracks the identifier.
    pub(crate) fn expect_release(&mut self, id: PacketId) {
        if !self.qos2_unreleased.contains_key(&id) && !self.pending_ack.contains_key(&id) {
            self.answered_elsewhere.insert(id, ());
        }
    }

    /// Identifiers to keep with the session: QoS 2 messages acknowledged but not released.
    /// Messages surfaced but never acknowledged are left out, so the peer's resend surfaces
    /// them again instead of being lost.
    pub(crate) fn awaiting_release(&self) -> Vec<PacketId> {
        let mut ids: Vec<PacketId> = self
            .qos2_unreleased
            .iter()
            .map(|(id, ())| *id)
            .filter(|id| !self.pending_ack.contains_key(id))
            .collect();
        ids.sort_unstable();
        ids
    }

    /// A new connection: acknowledgements pending on the old one cannot be sent any more.
    pub(crate) fn reset_pending(&mut self) {
        for (id, pending) in self.pending_ack.take() {
            if pending.qos == QoS::ExactlyOnce {
                self.qos2_unreleased.remove(&id);
            }
        }
        self.arrival_order.take();
    }

    pub(crate) fn clear(&mut self) {
        self.qos2_unreleased.clear();
        self.answered_elsewhere.clear();
        self.pending_ack.clear();
        self.arrival_order.take();
    }

    /// Frees the maps that are empty (the connection went quiet).
    pub(crate) fn release_if_empty(&mut self) {
        self.qos2_unreleased.release_if_empty();
        self.answered_elsewhere.release_if_empty();
        self.pending_ack.release_if_empty();
        self.arrival_order.release_if_empty();
    }
}
