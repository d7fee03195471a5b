//! Routing: the subscription index and the retained messages, and what a publish turns into
//! for each subscriber. Topic rules all come from `rallymq-topic`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use rallymq_codec::{
    Publish, QoS, RetainHandling, SubscriptionId, SubscriptionOptions, TopicFilter, TopicName,
};
use rallymq_topic::{Match, RetainedIndex, SharedGroup, SubscriptionIndex};

use crate::config::Limits;
use crate::session::{Origin, Persisting, Session, SessionRef};
use crate::store::Ticket;

/// What the broker keeps with each subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SubscriptionData {
    /// The granted QoS: deliveries are downgraded to it.
    pub(crate) qos: QoS,
    pub(crate) no_local: bool,
    pub(crate) retain_as_published: bool,
    pub(crate) retain_handling: RetainHandling,
    pub(crate) identifier: Option<SubscriptionId>,
}

impl SubscriptionData {
    /// The options as granted, for storage.
    pub(crate) fn options(&self) -> SubscriptionOptions {
        SubscriptionOptions {
            qos: self.qos,
            no_local: self.no_local,
            retain_as_published: self.retain_as_published,
            retain_handling: self.retain_handling,
        }
    }

    pub(crate) fn new(
        options: &SubscriptionOptions,
        granted: QoS,
        identifier: Option<SubscriptionId>,
    ) -> Self {
        Self {
            qos: granted,
            no_local: options.no_local,
            retain_as_published: options.retain_as_published,
            retain_handling: options.retain_handling,
            identifier,
        }
    }
}

/// One subscriber's copy of a publish, merged over its overlapping subscriptions: the highest
/// granted QoS, and every subscription identifier (MQTT-3.3.4-2, MQTT-3.3.4-3, MQTT-3.3.5-1).
struct Delivery {
    session: Arc<Session>,
    qos: QoS,
    retain_as_published: bool,
    identifiers: Vec<SubscriptionId>,
}

/// Told of every distinct filter that the node's sessions start or stop holding, in the order
/// the index sees them: a cluster node keeps its interest in other nodes' messages in step with
/// its clients' filters. The index knows which filters are held, so the hook keeps no copy.
pub(crate) trait SubscriptionHook: Send + Sync + std::fmt::Debug {
    /// The first subscription to `filter` (for `$share/g/f`, the group's first member).
    fn held(&self, filter: &TopicFilter);
    /// No subscription to `filter` is left.
    fn released(&self, filter: &TopicFilter);
}

/// The routing table and the retained messages.
#[derive(Debug, Default)]
pub(crate) struct Router {
    /// Called under the index's write lock, so that it sees changes in the index's order.
    hook: OnceLock<Arc<dyn SubscriptionHook>>,
    index: RwLock<SubscriptionIndex<SessionRef, SubscriptionData>>,
    /// Retained messages with when they were stored: Message Expiry counts from then.
    retained: RwLock<RetainedIndex<(Publish, Instant)>>,
    /// The most subscriptions the index held since it last gave memory back (written under
    /// the index's write lock).
    peak: AtomicUsize,
}

/// Below this many subscriptions at its largest, the index is not worth shrinking.
const SHRINK_FROM: usize = 4096;

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `publish` as the broker keeps it (retained, or stored for persistent sessions): without
/// what belongs to one connection (packet identifier, DUP, topic alias) or to one
/// subscription (subscription identifiers).
pub(crate) fn stored_copy(publish: &Publish) -> Publish {
    let mut stored = publish.clone();
    stored.dup = false;
    stored.packet_id = None;
    if let Some(properties) = stored.properties.get_mut() {
        properties.topic_alias = None;
        properties.subscription_identifiers.clear();
    }
    stored
}

/// The copy of `publish` a subscriber receives.
pub(crate) fn copy_for(
    publish: &Publish,
    qos: QoS,
    retain: bool,
    identifiers: Vec<SubscriptionId>,
) -> Publish {
    let mut copy = publish.clone();
    copy.qos = qos.min(publish.qos);
    copy.retain = retain;
    copy.dup = false;
    copy.packet_id = None;
    if let Some(properties) = copy.properties.get_mut() {
        properties.topic_alias = None;
        properties.subscription_identifiers.clear();
    }
    if !identifiers.is_empty() {
        copy.properties.subscription_identifiers = identifiers;
    }
    copy
}

impl Router {
    /// Sets the hook told of subscriptions, before any is made; once only.
    pub(crate) fn set_hook(&self, hook: Arc<dyn SubscriptionHook>) {
        let _ = self.hook.set(hook);
    }

    /// Adds or replaces a subscription; returns whether it existed.
    pub(crate) fn subscribe(
        &self,
        session: &Arc<Session>,
        filter: &TopicFilter,
        data: SubscriptionData,
    ) -> bool {
        let mut index = write(&self.index);
        let hook = self.hook.get();
        let held = hook.is_some() && index.has_subscribers(filter);
        let existed = index
            .insert(SessionRef(session.clone()), filter, data)
            .is_some();
        self.peak.fetch_max(index.len(), Ordering::Relaxed);
        if let (false, Some(hook)) = (held, hook) {
            hook.held(filter);
        }
        existed
    }

    /// Removes a subscription; returns whether it existed.
    pub(crate) fn unsubscribe(&self, session: &Arc<Session>, filter: &TopicFilter) -> bool {
        let mut index = write(&self.index);
        let removed = index.remove(&SessionRef(session.clone()), filter).is_some();
        self.shrink_if_shrunk(&mut index);
        if let (true, Some(hook)) = (removed, self.hook.get())
            && !index.has_subscribers(filter)
        {
            hook.released(filter);
        }
        removed
    }

    /// Removes every subscription of a session.
    pub(crate) fn remove_session(&self, session: &Arc<Session>) {
        let mut index = write(&self.index);
        let session = SessionRef(session.clone());
        match self.hook.get() {
            Some(hook) => {
                index.remove_subscriber_with(&session, |filter| {
                    // The index's filters were valid when subscribed.
                    if let Ok(filter) = TopicFilter::new(filter) {
                        hook.released(&filter);
                    }
                });
            }
            None => {
                index.remove_subscriber(&session);
            }
        }
        self.shrink_if_shrunk(&mut index);
    }

    /// Gives the index's spare room back once it holds a quarter of what it held at its
    /// largest since the last time: it keeps its capacity otherwise (the next subscriptions
    /// cost no allocation), so 100,000 subscriptions come and gone would hold their memory for
    /// ever. Shrinking costs time in proportion to what is left, so it is paid at most once
    /// per halving twice over: amortized, nothing per subscription.
    fn shrink_if_shrunk(&self, index: &mut SubscriptionIndex<SessionRef, SubscriptionData>) {
        let len = index.len();
        let peak = self.peak.fetch_max(len, Ordering::Relaxed).max(len);
        if peak >= SHRINK_FROM && len * 4 <= peak {
            index.shrink_to_fit();
            self.peak.store(len, Ordering::Relaxed);
        }
    }

    pub(crate) fn subscription_count(&self) -> usize {
        read(&self.index).len()
    }

    pub(crate) fn retained_count(&self) -> usize {
        read(&self.retained).len()
    }

    /// Stores, replaces or (empty payload) clears the retained message of a topic
    /// (MQTT-3.3.1-5 to -7 in 3.1.1; MQTT-3.3.1-5 to -7 and -10 in 5.0).
    pub(crate) fn retain(&self, publish: &Publish) {
        self.retain_since(publish, Instant::now());
    }

    /// As [`Router::retain`], for a message received at `stored_at` (a restored one).
    pub(crate) fn retain_since(&self, publish: &Publish, stored_at: Instant) {
        let Some(topic) = &publish.topic else { return };
        let mut retained = write(&self.retained);
        if publish.payload.is_empty() {
            retained.remove(topic.as_str());
        } else {
            retained.insert(topic.clone(), (stored_copy(publish), stored_at));
        }
    }

    /// Removes the retained message of `topic`; returns whether there was one.
    pub(crate) fn remove_retained(&self, topic: &TopicName) -> bool {
        write(&self.retained).remove(topic.as_str()).is_some()
    }

    /// The retained messages matching `filter`, with when each was stored.
    pub(crate) fn retained_matching(&self, filter: &TopicFilter) -> Vec<(Publish, Instant)> {
        let retained = read(&self.retained);
        retained
            .matching(filter)
            .map(|(_, stored)| stored.clone())
            .collect()
    }

    /// Routes `publish` (its topic set) from `sender` (a client id, `None` in-process) to every
    /// matching session: one copy per subscriber, one per shared group.
    pub(crate) fn route(
        &self,
        sender: Option<&str>,
        publish: &Publish,
        limits: &Limits,
        persisting: Option<Persisting<'_>>,
    ) -> RouteOutcome {
        self.route_to(
            sender,
            publish,
            limits,
            persisting,
            Targets::EVERYONE,
            &Origin::Local,
        )
    }

    /// [`Router::route`], leaving out the shared groups unless `shared_groups`: in a cluster,
    /// a message that crossed reaches each group through the cluster
    /// ([`Router::route_to_group`]), once across all nodes.
    pub(crate) fn route_to(
        &self,
        sender: Option<&str>,
        publish: &Publish,
        limits: &Limits,
        mut persisting: Option<Persisting<'_>>,
        targets: Targets<'_>,
        origin: &Origin,
    ) -> RouteOutcome {
        let (shared_groups, only) = match targets {
            Targets::Nobody => return RouteOutcome::default(),
            Targets::Subscribers { shared_groups } => (shared_groups, None),
            Targets::Session(session) => (false, Some(Arc::as_ptr(session))),
            Targets::Group(filter) => {
                return self.route_to_group(filter, publish, limits, persisting, origin);
            }
        };
        let mut outcome = RouteOutcome::default();
        let Some(topic) = &publish.topic else {
            return outcome;
        };
        let mut deliveries: HashMap<*const Session, Delivery> = HashMap::new();
        let mut shared: Vec<Member> = Vec::new();
        {
            let index = read(&self.index);
            index.for_each_match(topic, |found| match found {
                Match::Subscription { subscriber, data } => {
                    if only.is_some_and(|only| !std::ptr::eq(only, Arc::as_ptr(&subscriber.0))) {
                        return;
                    }
                    // No Local: not back to the connection that published it (MQTT-3.8.3-3).
                    if data.no_local && sender == Some(&*subscriber.0.client_id) {
                        return;
                    }
                    let delivery =
                        deliveries
                            .entry(Arc::as_ptr(&subscriber.0))
                            .or_insert_with(|| Delivery {
                                session: subscriber.0.clone(),
                                qos: QoS::AtMostOnce,
                                retain_as_published: false,
                                identifiers: Vec::new(),
                            });
                    delivery.qos = delivery.qos.max(data.qos);
                    delivery.retain_as_published |= data.retain_as_published;
                    delivery.identifiers.extend(data.identifier);
                }
                Match::Shared(group) if shared_groups => {
                    shared.extend(pick_member(group));
                }
                Match::Shared(_) => {}
            });
        }
        let now = Instant::now();
        for delivery in deliveries.into_values() {
            // Retain As Published keeps the flag; otherwise forwarded messages carry 0
            // (MQTT-3.3.1-12, MQTT-3.3.1-9 in 3.1.1).
            let retain = delivery.retain_as_published && publish.retain;
            outcome.offer(
                delivery.session,
                copy_for(publish, delivery.qos, retain, delivery.identifiers),
                now,
                limits,
                persisting.as_mut(),
                origin,
            );
        }
        for member in shared {
            outcome.offer_shared(member, publish, now, limits, persisting.as_mut(), origin);
        }
        if let Some(persisting) = persisting {
            outcome.ticket = persisting.ticket;
            outcome.early = persisting.early_ack();
        }
        outcome
    }

    /// Routes `publish` to one member of the shared group of `filter` (`$share/{group}/...`)
    /// only, if the group has a member here and its filter matches the topic (`$` rule
    /// included): a cluster node's share of the group's messages. `queued` and `dropped` both 0
    /// when it has none.
    fn route_to_group(
        &self,
        filter: &TopicFilter,
        publish: &Publish,
        limits: &Limits,
        mut persisting: Option<Persisting<'_>>,
        origin: &Origin,
    ) -> RouteOutcome {
        let mut outcome = RouteOutcome::default();
        let Some(topic) = &publish.topic else {
            return outcome;
        };
        if !rallymq_topic::matches(filter, topic) {
            return outcome;
        }
        let picked = read(&self.index).shared_group(filter).and_then(pick_member);
        if let Some(member) = picked {
            outcome.offer_shared(
                member,
                publish,
                Instant::now(),
                limits,
                persisting.as_mut(),
                origin,
            );
        }
        if let Some(persisting) = persisting {
            outcome.ticket = persisting.ticket;
            outcome.early = persisting.early_ack();
        }
        outcome
    }
}

/// A shared group's member chosen for a message: its session, granted QoS and subscription
/// identifier.
type Member = (Arc<Session>, QoS, Option<SubscriptionId>);

/// One member of a group, in turn, a connected one if there is one.
fn pick_member(group: SharedGroup<'_, SessionRef, SubscriptionData>) -> Option<Member> {
    let (member, data) = group
        .pick_round_robin_where(|member, _| member.0.lock().attachment.is_some())
        .or_else(|| group.pick_round_robin())?;
    Some((member.0.clone(), data.qos, data.identifier))
}

/// Whom a publish is routed to on this node.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Targets<'a> {
    /// Every matching subscription; the shared groups too unless `shared_groups` is false
    /// (in a cluster, they get a message that crossed through the cluster).
    Subscribers { shared_groups: bool },
    /// One member of the shared group of this filter (`$share/{group}/...`) only.
    Group(&'a TopicFilter),
    /// This session's own subscriptions only (a cluster session replaying the stream).
    Session(&'a Arc<Session>),
    /// No subscriber here: a message in the cluster's stream, which brings it to this node's
    /// subscribers too (its retained copy is kept all the same).
    Nobody,
}

impl Targets<'_> {
    /// Every matching subscription and shared group.
    pub(crate) const EVERYONE: Self = Self::Subscribers {
        shared_groups: true,
    };
}

/// What routing one message did.
#[derive(Debug, Default)]
pub(crate) struct RouteOutcome {
    /// Copies queued.
    pub(crate) queued: usize,
    /// Copies dropped (queue full, or QoS 0 for an offline session).
    pub(crate) dropped: usize,
    /// Of those, copies dropped because a queue was at its limit.
    pub(crate) full: usize,
    /// Sessions whose queue is past its high-water mark: the publisher should wait for them.
    pub(crate) congested: Vec<Arc<Session>>,
    /// The store's ticket for what routing wrote (the message and its queue entries): the
    /// publisher is acknowledged once it is durable.
    pub(crate) ticket: Ticket,
    /// In a cluster, a QoS 1 or 2 message's write to the cluster's stream: the publisher is
    /// acknowledged once it is stored there too.
    pub(crate) stream: Option<crate::cluster::StreamAck>,
    /// Every entry routing wrote is in a queue in memory: the count of those not yet
    /// acknowledged, which the publisher may wait on instead of the ticket.
    pub(crate) early: Option<Arc<crate::session::EarlyAck>>,
}

impl RouteOutcome {
    /// Queues `copy` for `session` and counts what became of it.
    fn offer(
        &mut self,
        session: Arc<Session>,
        copy: Publish,
        now: Instant,
        limits: &Limits,
        persisting: Option<&mut Persisting<'_>>,
        origin: &Origin,
    ) {
        let enqueued = session.enqueue(copy, now, limits, persisting, origin);
        self.queued += usize::from(enqueued.queued);
        self.dropped += usize::from(enqueued.dropped);
        self.full += usize::from(enqueued.full);
        if enqueued.congested {
            self.congested.push(session);
        }
    }

    /// [`RouteOutcome::offer`] to a shared group's member: retain is 0 (MQTT-3.3.1-9 in 3.1.1).
    fn offer_shared(
        &mut self,
        (session, qos, identifier): Member,
        publish: &Publish,
        now: Instant,
        limits: &Limits,
        persisting: Option<&mut Persisting<'_>>,
        origin: &Origin,
    ) {
        let copy = copy_for(publish, qos, false, identifier.into_iter().collect());
        self.offer(session, copy, now, limits, persisting, origin);
    }
}
