//! What a node's clients publish with QoS 0, on its way to core NATS.
//!
//! Consecutive messages to one subject that queued while the NATS client was busy go as one
//! NATS message, a batch envelope ([`super::ENVELOPE_BATCH`]): NATS, and both nodes' NATS
//! clients, then handle one message where they handled many, which is most of what a message
//! crossing nodes costs (`cluster_load`: cross-node QoS 0 went from 0.44 to 0.67 of a single
//! node with it). Only consecutive ones: the order of everything a node sends stays as it was.
//!
//! A NATS queue group gives a whole NATS message to one member, so a message that a shared
//! group somewhere in the cluster may want goes alone ([`Outgoing::alone`]): the group's
//! members on every node then take turns message by message.

use std::sync::atomic::Ordering;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::mpsc;
use tracing::warn;

use super::ENVELOPE_BATCH;

/// Largest batch envelope a node makes, or the NATS server's `max_payload` if smaller (1 MiB
/// by default): a batch is never refused where its messages alone would pass.
const MAX_BATCH_BYTES: usize = 64 * 1024;

/// Most messages taken from the queue at once.
const TAKE: usize = 256;

/// A message for the other nodes.
#[derive(Debug)]
pub(super) struct Outgoing {
    /// Its subject.
    pub(super) subject: String,
    /// Its envelope ([`super::seal`]).
    pub(super) envelope: Bytes,
    /// It goes as a NATS message of its own: a shared group may want it.
    pub(super) alone: bool,
}

/// Hands messages to the NATS client in order, consecutive ones to one subject together.
pub(super) async fn publish_outbound(
    client: async_nats::Client,
    mut outbound: mpsc::Receiver<Outgoing>,
) {
    let mut failures = 0u64;
    let mut queued = Vec::with_capacity(TAKE);
    let mut sending = Vec::new();
    let statistics = client.statistics();
    // The server's `max_payload`, asked again after each (re)connection: the server may be
    // another one.
    let mut limit = (u64::MAX, MAX_BATCH_BYTES);
    while outbound.recv_many(&mut queued, TAKE).await > 0 {
        let connects = statistics.connects.load(Ordering::Relaxed);
        if connects != limit.0 {
            limit = (
                connects,
                MAX_BATCH_BYTES.min(client.server_info().max_payload),
            );
        }
        batch(&mut queued, limit.1, &mut sending);
        for (subject, payload) in sending.drain(..) {
            if let Err(error) = client.publish(subject, payload).await {
                failures += 1;
                if failures.is_power_of_two() {
                    warn!(%error, failures, "cluster: a message could not be sent to other nodes");
                }
            }
        }
    }
}

/// Turns `queued` (emptied) into the NATS messages to send, in order: each run of consecutive
/// messages to one subject, none of them [`Outgoing::alone`], as batch envelopes of at most
/// `limit` bytes; a message alone, or in a run of one, as its own envelope.
fn batch(queued: &mut Vec<Outgoing>, limit: usize, sending: &mut Vec<(String, Bytes)>) {
    let mut queued = queued.drain(..).peekable();
    while let Some(first) = queued.next() {
        let mut batch: Option<BytesMut> = None;
        while let Some(next) = queued.peek() {
            let size = batch.as_ref().map_or(first.envelope.len(), BytesMut::len);
            if first.alone
                || next.alone
                || next.subject != first.subject
                || size + next.envelope.len() > limit
            {
                break;
            }
            let batch = batch.get_or_insert_with(|| {
                let mut batch = BytesMut::with_capacity(limit.min(size * 8));
                batch.put_u8(ENVELOPE_BATCH);
                batch.put_slice(&first.envelope[1..]);
                batch
            });
            // The records of an envelope follow its version byte.
            batch.put_slice(&next.envelope[1..]);
            queued.next();
        }
        let payload = batch.map_or(first.envelope, BytesMut::freeze);
        sending.push((first.subject, payload));
    }
}

#[cfg(test)]
mod tests {
    use super::super::{open, open_each, seal};
    use super::*;
    use rallymq_codec::{Publish, TopicName};

    fn outgoing(topic: &str, payload: &str, alone: bool) -> Outgoing {
        let publish = Publish::new(TopicName::new(topic).unwrap(), payload.to_owned());
        Outgoing {
            subject: topic.to_owned(),
            envelope: seal(Some("sender"), &publish).unwrap(),
            alone,
        }
    }

    /// The NATS messages `batch` makes of `queued`, at most `limit` bytes each.
    fn batched(mut queued: Vec<Outgoing>, limit: usize) -> Vec<(String, Bytes)> {
        let mut sending = Vec::new();
        batch(&mut queued, limit, &mut sending);
        assert!(queued.is_empty());
        sending
    }

    /// The subject and the payloads of each NATS message `batch` makes of `queued`.
    fn sent(queued: Vec<Outgoing>) -> Vec<(String, Vec<String>)> {
        batched(queued, MAX_BATCH_BYTES)
            .into_iter()
            .map(|(subject, payload)| {
                let mut payloads = Vec::new();
                open_each(payload, |sender, publish| {
                    assert_eq!(sender.as_deref(), Some("sender"));
                    payloads.push(String::from_utf8(publish.payload.to_vec()).unwrap());
                })
                .unwrap();
                (subject, payloads)
            })
            .collect()
    }

    fn run(subject: &str, payloads: &[&str]) -> (String, Vec<String>) {
        (
            subject.to_owned(),
            payloads.iter().map(|p| (*p).to_owned()).collect(),
        )
    }

    #[test]
    fn consecutive_messages_to_one_subject_go_as_one_in_order() {
        let queued = vec![
            outgoing("a", "1", false),
            outgoing("a", "2", false),
            outgoing("a", "3", false),
            outgoing("b", "4", false),
            outgoing("a", "5", false),
        ];
        assert_eq!(
            sent(queued),
            [
                run("a", &["1", "2", "3"]),
                run("b", &["4"]),
                run("a", &["5"])
            ]
        );
    }

    #[test]
    fn a_message_a_shared_group_may_want_goes_alone() {
        let queued = vec![
            outgoing("a", "1", false),
            outgoing("a", "2", true),
            outgoing("a", "3", true),
            outgoing("a", "4", false),
            outgoing("a", "5", false),
        ];
        assert_eq!(
            sent(queued),
            [
                run("a", &["1"]),
                run("a", &["2"]),
                run("a", &["3"]),
                run("a", &["4", "5"])
            ]
        );
    }

    #[test]
    fn a_run_of_one_keeps_the_single_envelope_older_nodes_read() {
        let queued = vec![outgoing("a", "1", false)];
        let envelope = queued[0].envelope.clone();
        assert_eq!(
            batched(queued, MAX_BATCH_BYTES),
            [("a".to_owned(), envelope.clone())]
        );
        assert!(open(envelope).is_some());
    }

    #[test]
    fn a_batch_stays_under_its_size_limit() {
        let seven = |payload: &str| (0..7).map(|_| outgoing("a", payload, false)).collect();
        let big = "x".repeat(MAX_BATCH_BYTES / 3);
        let runs = sent(seven(&big));
        assert_eq!(
            runs.iter().map(|(_, p)| p.len()).collect::<Vec<_>>(),
            [2, 2, 2, 1]
        );
        let sending = batched(seven(&big), MAX_BATCH_BYTES);
        assert!(
            sending
                .iter()
                .all(|(_, payload)| payload.len() <= MAX_BATCH_BYTES)
        );
        // A server whose `max_payload` is smaller: what it takes.
        let one = outgoing("a", "x", false).envelope.len();
        let sending = batched(seven("x"), 3 * one);
        assert_eq!(sending.len(), 3, "two batches of three and one alone");
        assert!(sending.iter().all(|(_, payload)| payload.len() <= 3 * one));
    }
}
