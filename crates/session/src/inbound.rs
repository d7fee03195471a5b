//! Inbound QoS 1 and 2 messages: Receive Maximum enforcement, QoS 2 exactly-once delivery
//! (an identifier awaiting PUBREL is never surfaced twice), and manual acknowledgement.

use crate::lazy::LazyMap;

use rallymq_codec::{PacketId, QoS};

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

pub(crate) struct Inbound {
    /// QoS 2 identifiers surfaced whose PUBREL has not come.
    qos2_unreleased: LazyMap<PacketId, ()>,
    /// Surfaced messages the driver has not acknowledged yet.
    pending_ack: LazyMap<PacketId, QoS>,
    receive_maximum: u16,
}

impl Inbound {
    pub(crate) fn new(awaiting_release: Vec<PacketId>, receive_maximum: u16) -> Self {
        Self {
            qos2_unreleased: awaiting_release.into_iter().map(|id| (id, ())).collect(),
            pending_ack: LazyMap::default(),
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
                .filter(|qos| **qos == QoS::AtLeastOnce)
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
        self.pending_ack.insert(id, qos);
        if qos == QoS::ExactlyOnce {
            self.qos2_unreleased.insert(id, ());
        }
        Arrival::New
    }

    /// The driver acknowledged `id`; returns its QoS if it was pending. A QoS 2 message
    /// refused with a failure code ends its flow at PUBREC.
    pub(crate) fn acknowledge(&mut self, id: PacketId, failed: bool) -> Option<QoS> {
        let qos = self.pending_ack.remove(&id)?;
        if qos == QoS::ExactlyOnce && failed {
            self.qos2_unreleased.remove(&id);
        }
        Some(qos)
    }

    /// PUBREL arrived; whether `id` was awaiting it.
    pub(crate) fn release(&mut self, id: PacketId) -> bool {
        self.pending_ack.remove(&id);
        self.qos2_unreleased.remove(&id).is_some()
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
        for (id, qos) in self.pending_ack.take() {
            if qos == QoS::ExactlyOnce {
                self.qos2_unreleased.remove(&id);
            }
        }
    }

    pub(crate) fn clear(&mut self) {
        self.qos2_unreleased.clear();
        self.pending_ack.clear();
    }

    /// Frees the maps that are empty (the connection went quiet).
    pub(crate) fn release_if_empty(&mut self) {
        self.qos2_unreleased.release_if_empty();
        self.pending_ack.release_if_empty();
    }
}
