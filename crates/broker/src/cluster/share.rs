//! Shared subscriptions across nodes: a message on a topic that `$share/{group}/{filter}`
//! matches reaches one member of the group in the whole cluster, whichever nodes its members
//! are connected to (MQTT 5.0 §4.8.2).
//!
//! A node with members of a group (`$share/g/f` as subscribed: the share name and the filter
//! together name the group) takes part in it twice, for as long as it has members:
//! - QoS 0: a NATS queue subscription to the filter's subjects, queue group [`queue_name`], on
//!   the node's second NATS connection. NATS gives each message to one subscription of a queue
//!   group. That connection keeps echo on: with the first one's `no_echo`, the publishing
//!   node's own members would never get its messages, and a group whose members are all on
//!   the publishing node would get nothing. NATS gives a whole NATS message to one member, so
//!   nodes send a message a group may want alone, not in a batch ([`KnownGroups`]).
//! - QoS 1 and 2: the group's durable pull consumer [`consumer_name`] on the stream, which
//!   every member node pulls from: JetStream gives each message to one pull, and takes it back
//!   (after the ack wait) from a node that did not acknowledge it.
//!
//! What a node receives for a group goes to one local member of that group only (a connected
//! one first, [`Shared::publish_to_group`]); the node's ordinary subscriptions and its own
//! consumer leave the shared groups out ([`Shared::publish_received`]), and so does a node
//! routing what its own clients publish when the message went to the cluster. A stream message
//! that arrives when the node has no member left (one just left) is given back at once (a
//! negative acknowledgement) for another node to take; the messages of the pull in progress
//! when a node leaves a group are given back the same way.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{RwLock, Weak};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer};
use futures::StreamExt;
use rallymq_codec::{Publish, TopicFilter, TopicName};
use rallymq_topic::SubscriptionIndex;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::stream::{self as messages, acknowledge};
use super::{MAX_SUBJECT_LEN, received, received_each, subject};
use crate::broker::Shared;

/// Messages one pull asks for.
const PULL_BATCH: usize = 64;

/// How long one pull waits for messages: a node that leaves a group waits at most this long
/// for its last pull to end (giving back what it brings).
const PULL_EXPIRY: Duration = Duration::from_secs(1);

/// How long a group's consumer outlives its last pull (the server deletes it then): a group
/// whose members all left gets what was published meanwhile if one comes back within it.
const GROUP_IDLE: Duration = Duration::from_secs(5 * 60);

/// How long a node waits before trying again when opening or pulling a group's consumer failed.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// Longest a member waits for a new group's consumer to have a leader before it pulls.
const LEADER_WAIT: Duration = Duration::from_secs(2);

/// How often it asks meanwhile.
const LEADER_POLL: Duration = Duration::from_millis(50);

/// What the groups task is told, in the order the router's index changed.
#[derive(Debug)]
pub(super) enum GroupCommand {
    /// A local session is a member of this group (`$share/g/f`), and none was.
    Join(TopicFilter),
    /// No local session is a member of this group any more.
    Leave(TopicFilter),
}

/// The shared groups of the whole cluster, as the nodes' heartbeats list them
/// ([`super::nodes::Beat::groups`]): a QoS 0 message one of them may want is sent to NATS
/// alone, not in a batch, so that NATS's queue group hands it to one member on its own
/// ([`super::outbound`]).
///
/// A node learns of a new group from the heartbeat its node writes at once, as its watch of
/// the bucket brings it; meanwhile a batch can still reach the group, whose node then gives
/// all its messages to its own members: balanced less evenly for that moment, none lost.
#[derive(Debug, Default)]
pub(super) struct KnownGroups {
    /// Some node has a group: spares a message the lock while no node has one.
    any: AtomicBool,
    known: RwLock<Known>,
}

#[derive(Debug, Default)]
struct Known {
    /// A node has more groups than its heartbeat lists: any message may be wanted.
    everything: bool,
    /// Every group listed, by the node (its place in the list) that listed it.
    groups: SubscriptionIndex<usize, ()>,
}

impl KnownGroups {
    /// Whether a shared group of some node may want a message on `topic`.
    pub(super) fn may_want(&self, topic: &TopicName) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let known = self
            .known
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if known.everything {
            return true;
        }
        let mut wanted = false;
        known.groups.for_each_match(topic, |_| wanted = true);
        wanted
    }

    /// Takes the groups of every node known: per node, the groups its beat lists and whether
    /// it has more than it lists.
    pub(super) fn replace<'a>(&self, nodes: impl IntoIterator<Item = (&'a [String], bool)>) {
        let mut known = Known::default();
        for (node, (groups, elided)) in nodes.into_iter().enumerate() {
            known.everything |= elided;
            for group in groups {
                match TopicFilter::new(group.as_str()) {
                    Ok(filter) if filter.is_shared() => {
                        known.groups.insert(node, &filter, ());
                    }
                    // From a newer node, perhaps: taken as a group of every topic.
                    _ => known.everything = true,
                }
            }
        }
        let any = known.everything || !known.groups.is_empty();
        *self
            .known
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = known;
        self.any.store(any, Ordering::Release);
    }
}

/// A stable name for a group, the same on every node (and every version): NATS queue group
/// and consumer names have a restricted alphabet and length, and a group's name and filter
/// may hold anything MQTT allows.
fn group_hash(filter: &TopicFilter) -> String {
    let digest = Sha256::digest(filter.as_str().as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// The NATS queue group of a shared group's QoS 0 messages.
pub(super) fn queue_name(filter: &TopicFilter) -> String {
    format!("rmq-share-{}", group_hash(filter))
}

/// The stream consumer of a shared group's QoS 1 and 2 messages.
pub(crate) fn consumer_name(filter: &TopicFilter) -> String {
    format!("share-{}", group_hash(filter))
}

/// The one stream subject a group's consumer filters on (2.9 servers take one per consumer):
/// a filter ending in `/#` is two subjects, `p.>` and its parent `p`, and the `>` under `p`'s
/// parent covers both; the node re-checks the match of what it gets and acknowledges the rest.
fn stream_filter(filter: &str) -> String {
    let subjects = subject::filter_subjects(filter);
    let covering = match subjects.as_slice() {
        [_, parent] => match parent.rsplit_once('.') {
            Some((above, _)) => format!("{above}.>"),
            None => format!("{parent}.>"),
        },
        [one, ..] => one.clone(),
        [] => format!("{}.>", subject::PREFIX),
    };
    // `filter_subjects` puts them under the core prefix.
    format!(
        "{}{}",
        subject::STREAM_PREFIX,
        &covering[subject::PREFIX.len()..]
    )
}

/// Keeps this node in the groups its sessions are members of: two tasks per group (QoS 0, and
/// QoS 1 and 2), ended when its last local member goes, and aborted when this task ends (the
/// broker's shutdown): none outlives the broker's state.
pub(super) async fn follow_groups(
    client: async_nats::Client,
    context: jetstream::Context,
    mut commands: mpsc::UnboundedReceiver<GroupCommand>,
    shared: Weak<Shared>,
) {
    // Dropping a sender ends the member's task.
    let mut joined: HashMap<TopicFilter, [oneshot::Sender<()>; 2]> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    while let Some(command) = commands.recv().await {
        match command {
            GroupCommand::Join(filter) => {
                let (core_tx, core) = oneshot::channel();
                let (stream_tx, stream) = oneshot::channel();
                tasks.spawn(core_member(
                    client.clone(),
                    filter.clone(),
                    core,
                    shared.clone(),
                ));
                tasks.spawn(stream_member(
                    context.clone(),
                    filter.clone(),
                    stream,
                    shared.clone(),
                ));
                joined.insert(filter, [core_tx, stream_tx]);
            }
            GroupCommand::Leave(filter) => {
                joined.remove(&filter);
            }
        }
        // Reap the ended ones.
        while tasks.try_join_next().is_some() {}
    }
}

/// The message of a stream message for the group of `filter`, if it is one and matches.
fn for_group(
    filter: &TopicFilter,
    topic: Result<String, subject::NotATopic>,
    payload: bytes::Bytes,
) -> Option<Publish> {
    let (_, publish) = received(topic, payload)?;
    group_wants(filter, &publish).then_some(publish)
}

/// As [`for_group`] for a core NATS message, which may be a batch: hands `each` its messages
/// that match.
fn each_for_group(
    filter: &TopicFilter,
    topic: Result<String, subject::NotATopic>,
    payload: bytes::Bytes,
    mut each: impl FnMut(Publish),
) {
    received_each(topic, payload, |_, publish| {
        if group_wants(filter, &publish) {
            each(publish);
        }
    });
}

fn group_wants(filter: &TopicFilter, publish: &Publish) -> bool {
    // The `$` rule (MQTT-4.7.2-1) is ours: `#`'s subject `>` takes `$` topics too.
    publish
        .topic
        .as_ref()
        .is_some_and(|name| rallymq_topic::matches(filter, name))
}

/// A group's QoS 0 messages: a queue subscription to the filter's subjects until cancelled.
async fn core_member(
    client: async_nats::Client,
    filter: TopicFilter,
    mut cancel: oneshot::Receiver<()>,
    shared: Weak<Shared>,
) {
    let queue = queue_name(&filter);
    let mut subscribers = Vec::new();
    for subject in subject::filter_subjects(filter.filter()) {
        if subject.len() > MAX_SUBJECT_LEN {
            // No topic that long is sent either.
            continue;
        }
        match client.queue_subscribe(subject.clone(), queue.clone()).await {
            Ok(subscriber) => subscribers.push(subscriber),
            Err(error) => warn!(%error, %subject, "cluster: cannot join a shared group"),
        }
    }
    let mut merged = futures::stream::select_all(subscribers.iter_mut());
    loop {
        tokio::select! {
            message = merged.next() => {
                let Some(message) = message else { return };
                let Some(shared) = shared.upgrade() else { return };
                let topic = subject::subject_topic(message.subject.as_str());
                each_for_group(&filter, topic, message.payload, |publish| {
                    shared.publish_to_group(&filter, &publish);
                });
            }
            _ = &mut cancel => break,
        }
    }
    drop(merged);
    for subscriber in &mut subscribers {
        // QoS 0: what was already on its way here is lost with the last member.
        let _ = subscriber.unsubscribe().await;
    }
}

/// Opens (or creates) the group's consumer on the stream. A new group starts with what is
/// written from then on.
pub(super) async fn group_consumer(
    context: &jetstream::Context,
    filter: &TopicFilter,
) -> Result<consumer::PullConsumer, String> {
    let stream = context
        .get_stream(messages::STREAM)
        .await
        .map_err(|e| e.to_string())?;
    let name = consumer_name(filter);
    stream
        .get_or_create_consumer(
            &name,
            consumer::pull::Config {
                durable_name: Some(name.clone()),
                description: Some(format!("rallymq shared subscription {}", filter.as_str())),
                deliver_policy: consumer::DeliverPolicy::New,
                ack_policy: consumer::AckPolicy::Explicit,
                filter_subject: stream_filter(filter.filter()),
                inactive_threshold: GROUP_IDLE,
                ..consumer::pull::Config::default()
            },
        )
        .await
        .map_err(|e| e.to_string())
}

/// Waits (at most [`LEADER_WAIT`]) until the group's consumer has a leader. A new consumer
/// has none for a moment (its replicas elect one), and a pull sent then goes unanswered: the
/// NATS client waits out the pull's expiry and 5 s more before the next: without this wait a
/// new group's first message came 6 s late (2 of 3 groups in `cluster_share.rs`'s new-group
/// test).
async fn until_led(consumer: &mut consumer::PullConsumer) {
    let deadline = tokio::time::Instant::now() + LEADER_WAIT;
    loop {
        // No cluster information: one server, no election.
        let led = consumer
            .cached_info()
            .cluster
            .as_ref()
            .is_none_or(|cluster| cluster.leader.is_some());
        if led || tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(LEADER_POLL).await;
        if let Err(error) = consumer.info().await {
            debug!(%error, "cluster: a shared group's consumer has no leader yet");
        }
    }
}

/// Sleeps for [`RETRY_DELAY`]; `false` if cancelled meanwhile.
async fn pause(cancel: &mut oneshot::Receiver<()>) -> bool {
    tokio::select! {
        () = tokio::time::sleep(RETRY_DELAY) => true,
        _ = cancel => false,
    }
}

/// A group's QoS 1 and 2 messages: pulls from the group's consumer until cancelled, hands each
/// message to one local member and acknowledges it once that is durable here, or gives it
/// back when there is no member here (any more).
async fn stream_member(
    context: jetstream::Context,
    filter: TopicFilter,
    mut cancel: oneshot::Receiver<()>,
    shared: Weak<Shared>,
) {
    let mut consumer = loop {
        match group_consumer(&context, &filter).await {
            Ok(consumer) => break consumer,
            Err(error) => {
                warn!(%error, filter = filter.as_str(), "cluster: cannot open a shared group's consumer");
                if !pause(&mut cancel).await {
                    return;
                }
            }
        }
    };
    tokio::select! {
        () = until_led(&mut consumer) => {}
        _ = &mut cancel => return,
    }
    let (acks_tx, acks) = mpsc::channel(messages::ACK_CAPACITY);
    // Acknowledged within this task: aborted with it, it holds no broker state past the end.
    let acknowledging = acknowledge(acks, shared.clone(), None);
    let pulling = async move {
        let mut leaving = false;
        while !leaving {
            let pull = consumer
                .batch()
                .max_messages(PULL_BATCH)
                .expires(PULL_EXPIRY)
                .messages();
            let mut batch = tokio::select! {
                batch = pull => match batch {
                    Ok(batch) => batch,
                    Err(error) => {
                        debug!(%error, "cluster: pulling a shared group's messages");
                        if pause(&mut cancel).await { continue } else { return }
                    }
                },
                _ = &mut cancel => return,
            };
            loop {
                // Once leaving, the pull in progress is read to its end and given back.
                let next = if leaving {
                    batch.next().await
                } else {
                    tokio::select! {
                        next = batch.next() => next,
                        _ = &mut cancel => {
                            leaving = true;
                            continue;
                        }
                    }
                };
                let Some(message) = next else { break };
                let message = match message {
                    Ok(message) => message,
                    Err(error) => {
                        debug!(%error, "cluster: reading a shared group's messages");
                        continue;
                    }
                };
                let topic = subject::stream_subject_topic(message.subject.as_str());
                let ticket = match for_group(&filter, topic, message.payload.clone()) {
                    // Not for this group (the consumer's subject is wider than the filter).
                    None => Some(Default::default()),
                    Some(_) if leaving => None,
                    Some(publish) => {
                        let Some(shared) = shared.upgrade() else {
                            return;
                        };
                        let outcome = shared.publish_to_group(&filter, &publish);
                        (outcome.queued > 0 || outcome.dropped > 0).then_some(outcome.ticket)
                    }
                };
                match ticket {
                    Some(ticket) => {
                        if acks_tx.send((ticket, message)).await.is_err() {
                            return;
                        }
                    }
                    // No member here: another node's member takes it.
                    None => {
                        if let Err(error) = message.ack_with(AckKind::Nak(None)).await {
                            debug!(%error, "cluster: giving back a shared group's message");
                        }
                    }
                }
            }
        }
    };
    tokio::join!(pulling, acknowledging);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(text: &str) -> TopicName {
        TopicName::new(text).unwrap()
    }

    #[test]
    fn known_groups_say_which_topics_a_group_of_any_node_may_want() {
        let known = KnownGroups::default();
        assert!(!known.may_want(&topic("a/b")));
        let a = vec!["$share/g/a/+".to_owned()];
        let b = vec!["$share/h/c/#".to_owned(), "$share/g/a/+".to_owned()];
        known.replace([
            (a.as_slice(), false),
            (b.as_slice(), false),
            (&[][..], false),
        ]);
        assert!(known.may_want(&topic("a/b")));
        assert!(known.may_want(&topic("c")));
        assert!(known.may_want(&topic("c/d/e")));
        assert!(!known.may_want(&topic("a/b/c")));
        assert!(!known.may_want(&topic("b")));
        // MQTT-4.7.2-1: `#` does not take `$` topics.
        let all = vec!["$share/g/#".to_owned()];
        known.replace([(all.as_slice(), false)]);
        assert!(known.may_want(&topic("x/y")));
        assert!(!known.may_want(&topic("$x/y")));
        known.replace([(&[][..], true)]);
        assert!(
            known.may_want(&topic("$x/y")),
            "a node with more than it lists"
        );
        let unknown = vec!["not a group".to_owned()];
        known.replace([(unknown.as_slice(), false)]);
        assert!(known.may_want(&topic("b")), "what this node cannot read");
        known.replace([]);
        assert!(!known.may_want(&topic("a/b")));
    }

    fn filter(text: &str) -> TopicFilter {
        TopicFilter::new(text).unwrap()
    }

    #[test]
    fn a_group_consumer_filters_on_one_subject_that_covers_its_filter() {
        assert_eq!(stream_filter("a/b"), "rmq.q.a.b");
        assert_eq!(stream_filter("a/+/c"), "rmq.q.a.*.c");
        assert_eq!(stream_filter("a/b/#"), "rmq.q.a.>");
        assert_eq!(stream_filter("a/#"), "rmq.q.>");
        assert_eq!(stream_filter("#"), "rmq.q.>");
        assert_eq!(stream_filter("a b/#"), "rmq.q.>");
    }

    #[test]
    fn groups_are_named_by_share_name_and_filter_in_nats_safe_characters() {
        let names = [
            consumer_name(&filter("$share/g/a/+")),
            consumer_name(&filter("$share/h/a/+")),
            consumer_name(&filter("$share/g/a/#")),
            consumer_name(&filter("$share/g.x y/a/+")),
        ];
        for (i, name) in names.iter().enumerate() {
            assert!(
                name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'),
                "{name}"
            );
            assert!(!names[..i].contains(name), "{name} twice");
        }
        assert_eq!(names[0], consumer_name(&filter("$share/g/a/+")), "stable");
        assert_eq!(
            queue_name(&filter("$share/g/a/+")),
            format!("rmq-{}", names[0])
        );
    }
}
