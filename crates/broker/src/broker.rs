//! The broker: shared state, startup, the in-process handle and shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use rallymq_codec::{
    Message, Publish, QoS, SubscriptionId, SubscriptionOptions, TopicFilter, TopicName,
};
use rallymq_session::{ServerConfig, SessionState};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::admission::PerIp;
use crate::cluster::{self, Link, RecordWritten};
use crate::config::{BrokerConfig, Storage};
use crate::listener::ListenerContext;
use crate::policy::Policy;
use crate::router::{RouteOutcome, Router, SubscriptionData, Targets, stored_copy};
use crate::session::{
    Attachment, Control, ControlBox, Deadline, Durable, NO_LISTENER, Origin, Persisting, Registry,
    Session, SessionInner, signal,
};
use crate::stats::{Dropped, SocketRefusal, Stats};
use crate::store::{
    Change, DiskStore, Group, LoadedEntry, LoadedSession, SessionRecord, Store, StoreError,
    StoredMessage, StoredWill, Ticket,
};
use crate::tls::Tls;
use crate::{Error, listener, sys};

/// The longest a publisher is paused for slow subscribers at a time.
const BACK_PRESSURE_LIMIT: Duration = Duration::from_secs(1);

/// A publisher counted in `Shared::space_waiters` while it lives (also if its wait is dropped).
struct SpaceWaiter<'a>(&'a Shared);

impl<'a> SpaceWaiter<'a> {
    fn new(shared: &'a Shared) -> Self {
        shared.space_waiters.fetch_add(1, Ordering::SeqCst);
        Self(shared)
    }
}

impl Drop for SpaceWaiter<'_> {
    fn drop(&mut self) {
        self.0.space_waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

/// State every connection task shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: BrokerConfig,
    pub(crate) router: Router,
    pub(crate) registry: Registry,
    pub(crate) stats: Stats,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) next_connection_id: AtomicU64,
    pub(crate) open_connections: AtomicUsize,
    pub(crate) started: Instant,
    /// Where persistent sessions, their queues and retained messages are kept; `None` in
    /// memory only.
    pub(crate) store: Option<Arc<dyn Store>>,
    /// The next stored message's id.
    pub(crate) next_message_id: AtomicU64,
    /// Connections not attached to a session yet, to be told of shutdown.
    pub(crate) connecting: Mutex<Connecting>,
    /// Wakes publishers paused for congested subscribers whenever a subscriber's queue drains:
    /// one for the broker rather than one in every session, since publishers rarely wait.
    pub(crate) space: Notify,
    /// Publishers waiting on `space`: drains skip the notification while there are none.
    pub(crate) space_waiters: AtomicUsize,
    /// Connections by client address, for the limits per address.
    pub(crate) per_ip: Arc<PerIp>,
    /// The bound listeners, in the order of the configuration: a connection's
    /// [`Peer::listener`](crate::connection::Peer) indexes this.
    pub(crate) listeners: Vec<BoundListener>,
    /// Who may connect and what they may do: the broker's policy first, then those of the
    /// listeners with their own (`Peer::policy` indexes this).
    pub(crate) policies: Vec<Policy>,
    /// The protocol engine's settings, the same for every connection.
    pub(crate) server_config: Arc<ServerConfig>,
    /// The cluster this broker is a node of, once joined.
    pub(crate) cluster: OnceLock<Arc<Link>>,
    /// The cursors of the feeds the broker routes from, as the store had them at start.
    restored_cursors: OnceLock<HashMap<String, u64>>,
}

/// What [`Shared::restore`] returns: the tasks publishing restored wills, and the stored
/// sessions of the bridges by name.
type Restored = (Vec<JoinHandle<()>>, HashMap<String, LoadedSession>);

/// Shutdown reaches each connection through its [`ControlBox`], so that a connection waits on
/// one signal word rather than keeping a watch future of its own: an attached connection
/// through its session's attachment, one still before CONNECT through this list. (Listing
/// only those keeps an idle connection out of a broker-wide map.)
#[derive(Debug, Default)]
pub(crate) struct Connecting {
    stopping: bool,
    controls: HashMap<u64, Arc<ControlBox>>,
}

impl Shared {
    /// A broker's state before any connection or restored session, its clock starting now.
    pub(crate) fn new(
        config: BrokerConfig,
        shutdown: watch::Receiver<bool>,
        store: Option<Arc<dyn Store>>,
        policies: Vec<Policy>,
    ) -> Self {
        Self {
            policies,
            server_config: Arc::new(server_config(&config.limits)),
            config,
            router: Router::default(),
            registry: Registry::default(),
            stats: Stats::default(),
            shutdown,
            next_connection_id: AtomicU64::new(1),
            open_connections: AtomicUsize::new(0),
            started: Instant::now(),
            store,
            next_message_id: AtomicU64::new(0),
            connecting: Mutex::default(),
            space: Notify::new(),
            space_waiters: AtomicUsize::new(0),
            per_ip: Arc::default(),
            cluster: OnceLock::new(),
            restored_cursors: OnceLock::new(),
            listeners: Vec::new(),
        }
    }

    /// Adds a new connection to those told of shutdown (at once if it has begun).
    pub(crate) fn register_connection(&self, id: u64, control: &Arc<ControlBox>) {
        let mut connecting = self.lock_connecting();
        if connecting.stopping {
            control.signal(signal::SHUTDOWN);
        }
        connecting.controls.insert(id, control.clone());
    }

    /// The connection is now its session's attachment (set before this call), where shutdown
    /// finds it; or it has ended.
    pub(crate) fn unregister_connection(&self, id: u64, control: &ControlBox) {
        let mut connecting = self.lock_connecting();
        if connecting.controls.remove(&id).is_some() && connecting.stopping {
            // Shutdown may have passed its session before the attachment was set.
            control.signal(signal::SHUTDOWN);
        }
    }

    /// Tells every connection, now and later, that the broker is shutting down. The listed
    /// ones first: one that leaves the list after this sees `stopping` itself, one that left
    /// before is attached already, so the sessions' turn finds it.
    fn signal_shutdown(&self) {
        {
            let mut connecting = self.lock_connecting();
            connecting.stopping = true;
            for control in connecting.controls.values() {
                control.signal(signal::SHUTDOWN);
            }
        }
        for session in self.registry.all() {
            let inner = session.lock();
            if let Some(attachment) = &inner.attachment {
                attachment.control.signal(signal::SHUTDOWN);
            }
            // A closed connection waiting on its will's delay.
            if let Some(waiter) = &inner.will_waiter {
                waiter.signal(signal::SHUTDOWN);
            }
        }
    }

    /// Whether the broker is shutting down (or its handle was dropped).
    pub(crate) fn stopping(&self) -> bool {
        *self.shutdown.borrow() || self.shutdown.has_changed().is_err()
    }

    fn lock_connecting(&self) -> std::sync::MutexGuard<'_, Connecting> {
        crate::lock(&self.connecting)
    }

    /// Waits until each of `congested` (sessions a publisher's messages filled past their
    /// high-water mark) drains below it, for at most [`BACK_PRESSURE_LIMIT`] in all: a
    /// subscriber that stays stuck then loses messages to its queue limit instead of stalling
    /// everyone. Publishers' connections wait here before reading more, and so does what
    /// receives the cluster's QoS 0 messages.
    pub(crate) async fn wait_for_space(&self, congested: Vec<Arc<Session>>) {
        let deadline = tokio::time::Instant::now() + BACK_PRESSURE_LIMIT;
        let limits = &self.config.limits;
        // Counted before each check of a queue, which takes the session's lock: a drain that
        // finds no waiter counted released that lock before this check took it, so the check
        // sees the room it made.
        let _waiting = SpaceWaiter::new(self);
        for session in congested {
            loop {
                let space = self.space.notified();
                tokio::pin!(space);
                space.as_mut().enable();
                if !session.is_congested(limits) {
                    break;
                }
                if tokio::time::timeout_at(deadline, space).await.is_err() {
                    // Stuck: not waited for again until it drains (its queue limit drops).
                    session.lock().stalled = true;
                    break;
                }
            }
        }
    }

    /// A subscriber's queue drained: wakes the publishers waiting for room, if any. Called
    /// after the session's lock is released, which orders it with a waiter's check (see
    /// [`Shared::wait_for_space`]).
    pub(crate) fn space_freed(&self) {
        if self.space_waiters.load(Ordering::SeqCst) > 0 {
            self.space.notify_waiters();
        }
    }

    /// Publishes a message into the broker: updates the retained store if it is retained, and
    /// routes it. The outcome's ticket is what the publisher's acknowledgement waits for.
    pub(crate) fn publish(&self, sender: Option<&str>, publish: &Publish) -> RouteOutcome {
        self.publish_with(sender, publish, None)
    }

    /// [`Shared::publish`], writing `also` (a QoS 2 publisher's packet identifier) in the same
    /// group as what routing writes: after a crash the store has both or neither.
    pub(crate) fn publish_with(
        &self,
        sender: Option<&str>,
        publish: &Publish,
        also: Option<Change>,
    ) -> RouteOutcome {
        self.publish_routed(sender, publish, also, None)
    }

    /// [`Shared::publish`] under `message_id` in the cluster's stream, where a second write of
    /// the same id (within the stream's duplicate window) is dropped: for a message that may
    /// be sent again (a dead node's will).
    pub(crate) fn publish_identified(
        &self,
        sender: Option<&str>,
        publish: &Publish,
        message_id: &str,
    ) -> RouteOutcome {
        self.publish_routed(sender, publish, None, Some(message_id))
    }

    /// [`Shared::publish_with`], under `message_id` in the cluster's stream when given.
    pub(crate) fn publish_routed(
        &self,
        sender: Option<&str>,
        publish: &Publish,
        also: Option<Change>,
        message_id: Option<&str>,
    ) -> RouteOutcome {
        let forwarded = self
            .cluster
            .get()
            .map(|cluster| cluster.forward(sender, publish, message_id))
            .unwrap_or_default();
        // A QoS 1 or 2 message in the stream reaches this node's subscribers through the
        // stream too, as any node's: once stored there (never before its publisher could be
        // told it failed), and with its place in the stream, which a session's record keeps.
        let targets = if forwarded.stream.is_some() {
            Targets::Nobody
        } else {
            Targets::Subscribers {
                shared_groups: !forwarded.shared_groups,
            }
        };
        let mut outcome = self.publish_here(sender, publish, also, None, targets, Origin::Local);
        outcome.stream = forwarded.stream;
        outcome
    }

    /// Publishes a message another cluster node received, to this node's clients only (not
    /// to shared groups: they have their own way through the cluster); the outcome's ticket is
    /// the store's for what routing wrote. `sequence` is the message's place in the stream it
    /// was read from (0: none): the store keeps it with what routing wrote, when that is
    /// anything.
    pub(crate) fn publish_received(
        &self,
        sender: Option<&str>,
        publish: &Publish,
        sequence: u64,
        cursor: Option<Change>,
    ) -> RouteOutcome {
        let targets = Targets::Subscribers {
            shared_groups: false,
        };
        let origin = if sequence == 0 {
            Origin::Local
        } else {
            Origin::Stream(sequence)
        };
        self.publish_here(sender, publish, None, cursor, targets, origin)
    }

    /// Publishes a message read again from the cluster's stream (at `sequence`) to
    /// `session` only (a session resumed from its record after its node died).
    pub(crate) fn publish_replayed(
        &self,
        session: &Arc<Session>,
        sender: Option<&str>,
        publish: &Publish,
        sequence: u64,
    ) -> Ticket {
        self.publish_here(
            sender,
            publish,
            None,
            None,
            Targets::Session(session),
            Origin::Replay(sequence),
        )
        .ticket
    }

    /// Ends `session`'s holding back: the stream read up to `through` by its replay (or the
    /// messages up to `through` and those at the sequences in `handed` handed over by its old
    /// node); queues what routing held back meanwhile but those, written to the store as
    /// routing would have.
    pub(crate) fn end_replay(
        &self,
        session: &Session,
        through: u64,
        handed: &std::collections::HashSet<u64>,
    ) {
        let limits = &self.config.limits;
        session.end_hold(
            through,
            handed,
            |session, inner, publish, since, sequence| {
                let _group = self.store.as_deref().map(Group::open);
                let held = publish.clone();
                let mut persisting = self.store.as_deref().map(|store| {
                    Persisting::new(store, &self.next_message_id, &held, SystemTime::now())
                });
                session.enqueue_locked(
                    inner,
                    publish,
                    since,
                    limits,
                    persisting.as_mut(),
                    sequence,
                );
            },
        );
    }

    /// The cursor of feed `name` as the store had it at start (0: none).
    pub(crate) fn restored_cursor(&self, name: &str) -> u64 {
        self.restored_cursors
            .get()
            .and_then(|cursors| cursors.get(name).copied())
            .unwrap_or(0)
    }

    /// Publishes a message the cluster gave this node for the shared group of `filter`, to one
    /// of the group's members here; nothing is queued when the group has none.
    pub(crate) fn publish_to_group(&self, filter: &TopicFilter, publish: &Publish) -> RouteOutcome {
        self.publish_here(
            None,
            publish,
            None,
            None,
            Targets::Group(filter),
            Origin::Local,
        )
    }

    /// [`Shared::publish_with`] on this node only.
    fn publish_here(
        &self,
        sender: Option<&str>,
        publish: &Publish,
        also: Option<Change>,
        cursor: Option<Change>,
        targets: Targets<'_>,
        origin: Origin,
    ) -> RouteOutcome {
        // A message routed to several persistent sessions is written in several changes.
        let _group = match &self.store {
            Some(store) if publish.qos != QoS::AtMostOnce || also.is_some() => {
                Some(Group::open(store.as_ref()))
            }
            _ => None,
        };
        let received_at = SystemTime::now();
        let mut retained = Ticket::default();
        if publish.retain && matches!(targets, Targets::Subscribers { .. } | Targets::Nobody) {
            self.router.retain(publish);
            if let (Some(store), Some(topic)) = (&self.store, &publish.topic) {
                let change = if publish.payload.is_empty() {
                    Change::DeleteRetained(topic.clone())
                } else {
                    Change::PutRetained(Arc::new(StoredMessage {
                        publish: stored_copy(publish),
                        received_at,
                    }))
                };
                retained = store.write(vec![change]);
            }
        }
        let persisting = self
            .store
            .as_deref()
            .map(|store| Persisting::new(store, &self.next_message_id, publish, received_at));
        let limits = &self.config.limits;
        let mut outcome = self
            .router
            .route_to(sender, publish, limits, persisting, targets, &origin);
        outcome.ticket = outcome
            .ticket
            .max(retained)
            .max(self.write(also.into_iter().collect()));
        // Nothing written, nothing to do twice: a message routed to no stored session.
        if outcome.ticket > Ticket::default() {
            outcome.ticket = outcome.ticket.max(self.write(cursor.into_iter().collect()));
        }
        self.stats.routed(outcome.queued);
        self.stats.dropped(Dropped::QueueFull, outcome.full as u64);
        self.stats.dropped(
            Dropped::OfflineQos0,
            (outcome.dropped - outcome.full) as u64,
        );
        if outcome.queued == 0 && outcome.dropped == 0 {
            self.stats.dropped(Dropped::NoSubscribers, 1);
        }
        outcome
    }

    /// Writes `changes` to the store, if there is one; returns their ticket.
    pub(crate) fn write(&self, changes: Vec<Change>) -> Ticket {
        match &self.store {
            Some(store) if !changes.is_empty() => store.write(changes),
            _ => Ticket::default(),
        }
    }

    /// Resolves once `ticket` is durable (at once without a store).
    pub(crate) async fn durable(&self, ticket: Ticket) -> Result<(), StoreError> {
        match &self.store {
            Some(store) if ticket > Ticket::default() => store.durable(ticket).await,
            _ => Ok(()),
        }
    }

    /// Reads the next page (up to `limit` entries) of `session`'s queue that is only in the
    /// store, once what was written to it is committed and the store has taken `after` from
    /// its queue, and counts it off the tail. `None` when there is none (or no store).
    pub(crate) async fn read_stored_tail(
        &self,
        session: &Session,
        after: Ticket,
        limit: usize,
    ) -> Option<Vec<LoadedEntry>> {
        let store = self.store.clone()?;
        let (from, ticket) = {
            let inner = session.lock();
            let durable = inner.durable.as_deref()?;
            if durable.tail_len == 0 {
                return None;
            }
            (durable.tail_from, durable.last_ticket)
        };
        // Committed is enough: the read needs to see the entries, not that they survive a
        // crash (their publishers' acknowledgements wait for that), and waiting for durable
        // would make the store sync for a reader. A failed write counts as committed: the store
        // commits its changes with its next commit, and a ticket that failed stays failed, so
        // waiting for success would leave the queue unread (messages acknowledged before it
        // too) until the session's next write.
        if ticket > Ticket::default() {
            store.committed(ticket).await;
        }
        // `after` is a pace, not a condition of the read: the entries read are past what it
        // changed, and their own writes are in `ticket`.
        if after > Ticket::default() {
            store.taken(after).await;
        }
        let entries = match store.read_queue(&session.client_id, from, limit) {
            Ok(entries) => entries,
            Err(error) => {
                warn!(client_id = %session.client_id, %error, "reading the queue from the store failed");
                return None;
            }
        };
        let mut inner = session.lock();
        let durable = inner.durable.as_deref_mut()?;
        if entries.is_empty() {
            // Fewer in the store than counted (writes that failed): nothing more to read.
            durable.tail_len = 0;
            durable.tail_bytes = 0;
            return None;
        }
        for loaded in &entries {
            durable.tail_len = durable.tail_len.saturating_sub(1);
            durable.tail_bytes = durable
                .tail_bytes
                .saturating_sub(u64::from(loaded.entry.size));
            durable.tail_from = loaded.seq + 1;
        }
        Some(entries)
    }

    /// Writes the record of a persistent session (with a store; in a cluster, to the
    /// sessions bucket too).
    pub(crate) fn save_record(&self, session: &Session) -> Ticket {
        self.save_record_everywhere(session).0
    }

    /// [`Shared::save_record`], with the sessions bucket's write to wait for, in a cluster.
    pub(crate) fn save_record_everywhere(
        &self,
        session: &Session,
    ) -> (Ticket, Option<RecordWritten>) {
        let Some(record) = session.record() else {
            return (Ticket::default(), None);
        };
        let written = self.save_cluster_record_of(session, &record);
        (
            self.write(vec![Change::PutSession(Box::new(record))]),
            written,
        )
    }

    /// Writes a persistent session's record to the cluster's sessions bucket only, with its
    /// stream cursor and deliveries in flight (which the store's record does not keep): what a
    /// QoS 2 flow changes; `None` off a cluster or without a record.
    pub(crate) fn save_cluster_record(&self, session: &Session) -> Option<RecordWritten> {
        self.save_cluster_record_of(session, &session.record()?)
    }

    fn save_cluster_record_of(
        &self,
        session: &Session,
        record: &SessionRecord,
    ) -> Option<RecordWritten> {
        let cluster = self.cluster.get()?;
        let cursor = session.stream_cursor.load(Ordering::Acquire);
        Some(
            cluster
                .sessions()
                .save(session, record, cursor, session.in_flight_record()),
        )
    }

    /// Deletes an ended session's record (from the store; in a cluster, from the sessions
    /// bucket too).
    pub(crate) fn end_record(&self, session: &Session) -> Ticket {
        if let Some(cluster) = self.cluster.get() {
            cluster.sessions().end(&self.registry, session);
        }
        self.write(vec![Change::DeleteSession(session.client_id.clone())])
    }

    /// Subscribes `session` to a record's subscriptions (restored, or handed over by another
    /// cluster node).
    pub(crate) fn install_subscriptions(
        &self,
        session: &Arc<Session>,
        subscriptions: &[(TopicFilter, SubscriptionOptions, Option<SubscriptionId>)],
    ) {
        for (filter, options, identifier) in subscriptions {
            let data = SubscriptionData::new(options, options.qos, *identifier);
            self.router.subscribe(session, filter, data.clone());
            session.lock().subscriptions.insert(filter.clone(), data);
        }
    }

    /// Loads the store: retained messages, and persistent sessions as offline sessions whose
    /// queues stay in the store until their clients come back. Returns the tasks that publish
    /// restored wills when due, and the stored sessions of the configured bridges by name
    /// (kept out of the registry: a bridge's session is its own).
    fn restore(self: &Arc<Self>) -> Result<Restored, Error> {
        let mut wills = Vec::new();
        let mut bridges = HashMap::new();
        let Some(store) = &self.store else {
            return Ok((wills, bridges));
        };
        let mut loaded = store.load()?;
        let _ = self
            .restored_cursors
            .set(std::mem::take(&mut loaded.cursors));
        self.next_message_id
            .store(loaded.next_message_id, Ordering::Relaxed);
        let now = Instant::now();
        let wall = SystemTime::now();
        // A cluster node's previous run that died left its wills to the other nodes.
        let wills_are_ours = self
            .cluster
            .get()
            .is_none_or(|cluster| cluster.restored_wills_are_ours());
        // A time in the past, as an `Instant` (Message Expiry and session expiry count from it).
        let instant_of = |at: SystemTime| {
            let ago = wall.duration_since(at).unwrap_or_default();
            now.checked_sub(ago).unwrap_or(now)
        };
        for message in &loaded.retained {
            self.router
                .retain_since(&message.publish, instant_of(message.received_at));
        }
        for stored in loaded.sessions {
            if let Some(name) = crate::bridge::name_of_session(&stored.record.client_id) {
                if self.config.bridges.iter().any(|bridge| bridge.name == name) {
                    bridges.insert(name.to_owned(), stored);
                } else {
                    // Its bridge is configured no more: what it queued has nowhere to go.
                    info!(
                        bridge = name,
                        queued = stored.queue_len,
                        "dropping the stored queue of a bridge that is no longer configured"
                    );
                    self.write(vec![Change::DeleteSession(stored.record.client_id.into())]);
                }
                continue;
            }
            let record = stored.record;
            let (session, _) = self.registry.get_or_create(&record.client_id);
            self.install_subscriptions(&session, &record.subscriptions);
            // A session still marked connected ended when the broker stopped: now, as far as
            // its expiry and will are concerned.
            let disconnected_at = record.disconnected_at.unwrap_or(wall);
            let will = record.will.filter(|_| wills_are_ours).map(|mut will| {
                if will.due_at.is_none() || record.disconnected_at.is_none() {
                    let delay = will.delay.min(record.expiry_interval);
                    will.due_at = Some(wall + Duration::from_secs(u64::from(delay)));
                }
                will
            });
            let mut inner = session.lock();
            inner.persistent = true;
            inner.expires_at = (record.expiry_interval != u32::MAX).then(|| {
                Deadline::at(
                    instant_of(disconnected_at)
                        + Duration::from_secs(u64::from(record.expiry_interval)),
                )
            });
            inner.saved = Some(Box::new(SessionState {
                inbound_awaiting_release: stored.inbound,
                session_expiry_interval: record.expiry_interval,
                ..SessionState::default()
            }));
            inner.durable = Some(Box::new(Durable {
                next_seq: stored.next_seq,
                tail_len: stored.queue_len,
                tail_bytes: stored.queue_bytes,
                tail_from: 0,
                expiry_interval: record.expiry_interval,
                disconnected_at: Some(disconnected_at),
                will: will.clone(),
                ..Durable::default()
            }));
            let waiter = will.as_ref().map(|_| {
                let waiter = Arc::new(ControlBox::default());
                inner.will_waiter = Some(waiter.clone());
                waiter
            });
            drop(inner);
            if record.disconnected_at.is_none() {
                // Recorded as ended now (and its will as due from now), so that a restart before
                // its client comes back counts from here too, not from its own start.
                self.save_record(&session);
            }
            if let (Some(will), Some(waiter)) = (will, waiter) {
                wills.push(tokio::spawn(restored_will(
                    self.clone(),
                    session.clone(),
                    waiter,
                    will,
                )));
            }
        }
        Ok((wills, bridges))
    }

    /// Drops offline sessions whose expiry has passed.
    fn sweep_expired_sessions(&self) {
        let now = Instant::now();
        for session in self.registry.all() {
            self.remove_offline_session(&session, |inner| {
                inner.expires_at.is_some_and(|at| at.instant() <= now)
            });
        }
    }

    /// Removes `session` (its subscriptions, its record in the store) if it is offline and
    /// `ends` says so; returns whether it was removed. Checked and removed under the
    /// registry's lock: a connection attaching meanwhile keeps its session.
    pub(crate) fn remove_offline_session(
        &self,
        session: &Arc<Session>,
        ends: impl FnOnce(&mut SessionInner) -> bool,
    ) -> bool {
        let mut waiting = 0;
        let removed = self.registry.remove_if(
            session,
            |inner| {
                waiting = inner.queue_size().0;
                inner.attachment.is_none() && ends(inner)
            },
            || self.router.remove_session(session),
        );
        if removed {
            self.stats.dropped(Dropped::SessionEnded, waiting);
            self.end_record(session);
        }
        removed
    }

    /// Deletes the retained message of `topic` without publishing anything (the admin API);
    /// returns whether there was one.
    pub(crate) fn clear_retained(&self, topic: &TopicName) -> bool {
        let cleared = self.router.remove_retained(topic);
        if cleared {
            self.write(vec![Change::DeleteRetained(topic.clone())]);
        }
        cleared
    }
}

/// How often the TLS files are checked for a change.
const TLS_WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// Reloads the TLS files when they change on disk (a certificate renewal); a broken file is
/// reported, once per change, and the configuration in force stays.
async fn watch_tls_files(tls: Arc<Tls>, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    let mut tick = tokio::time::interval(TLS_WATCH_INTERVAL);
    let mut reported = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        if !tls.changed_on_disk() {
            reported = false;
            continue;
        }
        match tls.reload() {
            Ok(()) => {
                info!("TLS certificate changed on disk: reloaded");
                reported = false;
            }
            Err(error) if !reported => {
                warn!(%error, "TLS files changed but cannot be used; the previous ones stay");
                reported = true;
            }
            Err(_) => {}
        }
    }
}

/// Publishes the will of a session restored from the store when it is due, unless its client
/// comes back first (a resuming client cancels it, a clean start publishes it at once).
async fn restored_will(
    shared: Arc<Shared>,
    session: Arc<Session>,
    waiter: Arc<ControlBox>,
    will: StoredWill,
) {
    let due = will
        .due_at
        .and_then(|at| at.duration_since(SystemTime::now()).ok())
        .unwrap_or_default();
    let mut shutdown = shared.shutdown.clone();
    let publish_now = tokio::select! {
        _ = tokio::time::sleep(due) => true,
        _ = shutdown.changed() => false,
        _ = waiter.signalled() => matches!(
            waiter.try_recv(),
            Some(Control::EndWill { publish: true })
        ),
    };
    waiter.close();
    if shared.stopping() {
        // The will stays in the session's record: the next broker publishes it when due. (This
        // task must not outlive the broker: it holds the store, and its directory's lock.)
        return;
    }
    if publish_now {
        shared.publish(Some(&session.client_id), &will.publish);
    }
    let cleared = {
        let mut inner = session.lock();
        if inner
            .will_waiter
            .as_ref()
            .is_some_and(|current| Arc::ptr_eq(current, &waiter))
        {
            inner.will_waiter = None;
        }
        let offline = inner.attachment.is_none();
        match inner.durable.as_deref_mut() {
            Some(durable) if offline => durable.will.take().is_some(),
            _ => false,
        }
    };
    if cleared {
        shared.save_record(&session);
    }
}

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// MQTT over TCP.
    Tcp,
    /// HTTP and MQTT over WebSockets.
    WebSocket,
    /// MQTT over TLS.
    Tls,
    /// HTTPS and MQTT over WebSockets over TLS.
    WebSocketTls,
}

impl ListenerKind {
    /// Whether it is served over TLS.
    pub fn is_tls(self) -> bool {
        matches!(self, Self::Tls | Self::WebSocketTls)
    }

    /// Whether it serves HTTP and WebSockets.
    pub fn is_websocket(self) -> bool {
        matches!(self, Self::WebSocket | Self::WebSocketTls)
    }
}

/// A bound listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoundListener {
    /// What it serves.
    pub kind: ListenerKind,
    /// The address it is bound to (with the real port when 0 was asked for).
    pub addr: SocketAddr,
}

impl std::fmt::Display for BoundListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            ListenerKind::Tcp => write!(f, "tcp://{}", self.addr),
            ListenerKind::WebSocket => write!(f, "ws://{}/mqtt", self.addr),
            ListenerKind::Tls => write!(f, "mqtts://{}", self.addr),
            ListenerKind::WebSocketTls => write!(f, "wss://{}/mqtt", self.addr),
        }
    }
}

/// The broker. Start it with [`Broker::start`].
#[derive(Debug)]
pub struct Broker;

impl Broker {
    /// Binds every listener of `config`, logs one `listening: ...` line per listener, and
    /// serves in the background on the current tokio runtime. With
    /// [`Storage::Directory`](crate::Storage::Directory) it opens (or creates) the store there
    /// and resumes what it holds; with [`Storage::InMemory`](crate::Storage::InMemory) nothing
    /// outlives the broker.
    pub async fn start(config: BrokerConfig) -> Result<BrokerHandle, Error> {
        let store: Option<Arc<dyn Store>> = match &config.storage {
            Storage::InMemory => None,
            Storage::Directory(dir) => {
                let store = DiskStore::open(dir)?;
                info!(dir = %dir.display(), "storing sessions and messages");
                Some(Arc::new(store))
            }
        };
        Self::start_on(config, store).await
    }

    /// As [`Broker::start`], keeping what must survive in `store` (whatever
    /// `config.storage` says), and resuming what it holds: a [`MemoryStore`](crate::MemoryStore)
    /// carries sessions across broker restarts within one process.
    pub async fn start_with_store(
        config: BrokerConfig,
        store: Arc<dyn Store>,
    ) -> Result<BrokerHandle, Error> {
        Self::start_on(config, Some(store)).await
    }

    async fn start_on(
        config: BrokerConfig,
        store: Option<Arc<dyn Store>>,
    ) -> Result<BrokerHandle, Error> {
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let all = config.all_listeners();
        // The broker's policy, then one for each listener with its own.
        let mut policies = vec![Policy::load(&config.security)?];
        let mut listener_policies = Vec::new();
        for listener in &all {
            listener_policies.push(match &listener.security {
                Some(security) => {
                    policies.push(Policy::load(security)?);
                    u8::try_from(policies.len() - 1).map_err(|_| Error::TooManyPolicies)?
                }
                None => 0,
            });
        }
        let tls = match &config.tls_files {
            Some(settings) => Some(Arc::new(Tls::load(settings.clone())?)),
            None if all.iter().any(|listener| listener.kind.is_tls()) => {
                return Err(Error::TlsNotConfigured);
            }
            None => None,
        };
        // Bind every address before serving any, so a port in use fails the start as a whole.
        let mut bound = Vec::new();
        for listener in all {
            let addr = listener.addr;
            let bind_error = |source| Error::Bind { addr, source };
            let socket = TcpListener::bind(addr).await.map_err(bind_error)?;
            let addr = socket.local_addr().map_err(bind_error)?;
            bound.push((
                BoundListener {
                    kind: listener.kind,
                    addr,
                },
                listener,
                socket,
            ));
        }
        crate::bridge::validate(&config.bridges)?;
        let sys_interval = config.sys_interval;
        let link = match &config.cluster {
            Some(settings) => {
                let node_id = cluster::node_id(settings, &config.storage)?;
                Some(Link::connect(settings, node_id, &config.storage).await?)
            }
            None => None,
        };
        let mut shared = Shared::new(config, shutdown_rx, store, policies);
        shared.listeners = bound.iter().map(|(bound, _, _)| *bound).collect();
        let shared = Arc::new(shared);
        let mut tasks = Vec::new();
        if let Some(link) = &link {
            // Before the sessions are restored, so that their filters are subscribed to.
            shared.router.set_hook(link.clone());
            let _ = shared.cluster.set(link.clone());
        }
        let (wills, mut stored_bridges) = shared.restore()?;
        tasks.extend(wills);
        if let Some(link) = link {
            // After: the stream's messages are routed to the restored sessions.
            tasks.extend(link.spawn(&shared));
        }
        let listeners = shared.listeners.clone();
        for (index, ((bound, listener, socket), policy)) in
            bound.into_iter().zip(listener_policies).enumerate()
        {
            info!("listening: {bound}");
            let context = Arc::new(ListenerContext {
                listener,
                tls: tls.clone(),
                index: u16::try_from(index).unwrap_or(NO_LISTENER),
                policy,
            });
            let serve = if bound.kind.is_websocket() {
                tokio::spawn(listener::serve_websocket(socket, shared.clone(), context))
            } else {
                tokio::spawn(listener::serve_mqtt(socket, shared.clone(), context))
            };
            tasks.push(serve);
        }
        if let Some(tls) = &tls {
            tasks.push(tokio::spawn(watch_tls_files(tls.clone(), shared.clone())));
        }
        for bridge in &shared.config.bridges {
            let stored = stored_bridges.remove(&bridge.name);
            tasks.push(crate::bridge::spawn(shared.clone(), bridge.clone(), stored));
        }
        let stopping = shared.clone();
        tasks.push(tokio::spawn(async move {
            let mut shutdown = stopping.shutdown.clone();
            // Sent, or the handle dropped without a shutdown: the connections end either way.
            let _ = shutdown.changed().await;
            stopping.signal_shutdown();
        }));
        let sweeper = shared.clone();
        tasks.push(tokio::spawn(async move {
            let mut shutdown = sweeper.shutdown.clone();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        sweeper.sweep_expired_sessions();
                        if let Some(cluster) = sweeper.cluster.get() {
                            cluster.sessions().forget_idle(&sweeper);
                            cluster.sessions().refresh_cursors(&sweeper);
                        }
                    }
                    _ = shutdown.changed() => return,
                }
            }
        }));
        if let Some(interval) = sys_interval {
            tasks.push(tokio::spawn(sys::publish_periodically(
                shared.clone(),
                interval,
            )));
        }
        Ok(BrokerHandle {
            shared,
            tls,
            listeners,
            shutdown: shutdown_tx,
            tasks,
            next_local: AtomicU64::new(1),
        })
    }
}

/// A running broker: its addresses, in-process publish and subscribe, and shutdown.
///
/// **The broker runs as long as this handle lives.** Dropping it stops the broker as
/// [`BrokerHandle::shutdown`] does, without waiting: clients are told DISCONNECT 0x8B and the
/// listeners close. Keep it (`let broker = Broker::start(..).await?;`, not `let _ = ...`) for as
/// long as the broker should serve; a program that only serves can await
/// [`tokio::signal::ctrl_c`](https://docs.rs/tokio/latest/tokio/signal/fn.ctrl_c.html) and then
/// call `shutdown`.
#[derive(Debug)]
#[must_use = "dropping the handle shuts the broker down"]
pub struct BrokerHandle {
    shared: Arc<Shared>,
    tls: Option<Arc<Tls>>,
    listeners: Vec<BoundListener>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    next_local: AtomicU64,
}

/// Messages from an in-process subscription. Dropping it unsubscribes.
#[derive(Debug)]
pub struct LocalSubscription {
    receiver: mpsc::Receiver<Message>,
    session: Arc<Session>,
    shared: Arc<Shared>,
}

impl LocalSubscription {
    /// The next message, or `None` once the broker has shut down.
    pub async fn recv(&mut self) -> Option<Message> {
        self.receiver.recv().await
    }
}

impl Drop for LocalSubscription {
    fn drop(&mut self) {
        self.shared.router.remove_session(&self.session);
    }
}

impl BrokerHandle {
    /// The bound listeners, in the order of the configuration (TCP first).
    pub fn listeners(&self) -> &[BoundListener] {
        &self.listeners
    }

    /// Serves one MQTT connection over `io`, any byte stream (a Unix socket, an in-memory
    /// pipe, a transport of the embedder's own), as a listener serves a socket: the
    /// connection limit, the CONNECT timeout and every protocol rule apply. `peer` names the
    /// client in the logs. Returns once the connection has ended; spawn it to serve it in the
    /// background.
    pub fn serve_connection<IO>(
        &self,
        io: IO,
        peer: SocketAddr,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let shared = self.shared.clone();
        async move {
            let open = shared.open_connections.fetch_add(1, Ordering::Relaxed);
            if open >= shared.config.limits.max_connections {
                shared.open_connections.fetch_sub(1, Ordering::Relaxed);
                shared.stats.socket_refused(SocketRefusal::MaxConnections);
                warn!(%peer, "connection refused: max_connections reached");
                return;
            }
            let peer = crate::connection::Peer {
                addr: peer,
                via: None,
                listener: NO_LISTENER,
                policy: 0,
            };
            crate::connection::serve(io, shared, peer, None).await;
        }
    }

    /// The address of the first listener of `kind`.
    pub fn local_addr(&self, kind: ListenerKind) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|l| l.kind == kind)
            .map(|l| l.addr)
    }

    /// Publishes a message as if a client had (retained messages are stored). Returns how many
    /// subscribers it was queued for.
    pub fn publish(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
    ) -> Result<usize, Error> {
        let mut message = Message::new(TopicName::new(topic)?, payload);
        message.qos = qos;
        message.retain = retain;
        Ok(self.publish_message(message))
    }

    /// Publishes a prepared message (MQTT 5 properties: content type, user properties, message
    /// expiry...) as [`BrokerHandle::publish`] does; returns how many subscribers it was queued
    /// for.
    pub fn publish_message(&self, message: Message) -> usize {
        self.shared.publish(None, &Publish::from(message)).queued
    }

    /// Subscribes in-process to `filter` at `qos`; messages arrive on the returned
    /// subscription (at most `max_queued_messages` waiting; more are dropped and counted).
    pub fn subscribe(&self, filter: &str, qos: QoS) -> Result<LocalSubscription, Error> {
        let filter = TopicFilter::new(filter)?;
        // Not a client's session: kept out of the registry (and so out of `session_count`,
        // `has_session` and `$SYS`), and named with a NUL, which no MQTT client id can hold,
        // since the subscription index tells subscribers apart by name.
        let id = format!(
            "\0local-{}",
            self.next_local.fetch_add(1, Ordering::Relaxed)
        );
        let session = Arc::new(Session::new(id.into()));
        let control = Arc::new(ControlBox::default());
        session.lock().attachment = Some(Attachment {
            control: control.clone(),
        });
        let options = SubscriptionOptions {
            qos,
            ..SubscriptionOptions::default()
        };
        self.shared.router.subscribe(
            &session,
            &filter,
            SubscriptionData::new(&options, qos, None),
        );
        let (sender, receiver) = mpsc::channel(64);
        let pump = session.clone();
        let pump_shared = self.shared.clone();
        let mut shutdown = self.shared.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let next = pump.lock().pop_pending();
                pump_shared.space_freed();
                match next {
                    Some(queued) => {
                        let Some(message) = Message::from_publish(queued.publish) else {
                            continue;
                        };
                        if sender.send(message).await.is_err() {
                            return;
                        }
                    }
                    None => tokio::select! {
                        _ = control.signalled() => {}
                        _ = shutdown.changed() => return,
                    },
                }
            }
        });
        Ok(LocalSubscription {
            receiver,
            session,
            shared: self.shared.clone(),
        })
    }

    /// Reads the files that can change under a running broker again: the TLS certificate,
    /// key and client CA (connections already open keep their session). On failure the
    /// configuration in force stays, and the error says which file is at fault. The `rallymq`
    /// command calls this on SIGHUP; the broker also does it by itself when the files change.
    pub fn reload(&self) -> Result<(), Error> {
        if let Some(tls) = &self.tls {
            tls.reload()?;
            info!("TLS certificate reloaded");
        }
        // All or nothing: every file is read before any takes effect.
        let mut reloaded = Vec::new();
        for policy in &self.shared.policies {
            reloaded.push(policy.reload_prepared()?);
        }
        let mut any = false;
        for (policy, prepared) in self.shared.policies.iter().zip(reloaded) {
            any |= policy.commit_reload(prepared);
        }
        if any {
            info!("password, token key and ACL files reloaded");
        }
        Ok(())
    }

    /// This broker's node id in its cluster; `None` when it is not in one.
    pub fn node_id(&self) -> Option<&str> {
        self.shared.cluster.get().map(|link| link.node_id())
    }

    /// Clients connected now.
    pub fn clients_connected(&self) -> usize {
        self.shared.stats.clients_connected.load(Ordering::Relaxed)
    }

    /// Sessions known (connected and offline).
    pub fn session_count(&self) -> usize {
        self.shared.registry.len()
    }

    /// Whether a session exists for `client_id`.
    pub fn has_session(&self, client_id: &str) -> bool {
        self.shared.registry.contains(client_id)
    }

    /// Stops accepting, tells MQTT 5 clients DISCONNECT 0x8B (Server shutting down), and waits
    /// up to `grace` for the connections to end.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.shutdown.send(true);
        let deadline = Instant::now() + grace;
        while self.shared.open_connections.load(Ordering::Relaxed) > 0 && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Some(cluster) = self.shared.cluster.get() {
            cluster.leave().await;
        }
        for task in &self.tasks {
            task.abort();
        }
        // Gone once their handles resolve: none of them holds the broker's state (and its
        // store, whose directory's lock a broker started next would need) any more.
        for task in self.tasks {
            let _ = task.await;
        }
        // What the connections wrote as they closed is on disk before the broker is gone.
        if let Some(store) = &self.shared.store {
            let _ = store.durable(store.write(Vec::new())).await;
        }
    }
}

/// The protocol engine's settings from the broker's limits.
fn server_config(limits: &crate::Limits) -> ServerConfig {
    ServerConfig {
        connect_timeout: limits.connect_timeout,
        packet_timeout: limits.packet_timeout,
        max_packet_size: limits.max_packet_size,
        receive_maximum: limits.receive_maximum.max(1),
        topic_alias_maximum: limits.topic_alias_maximum,
        outgoing_topic_alias_maximum: limits.outgoing_topic_alias_maximum,
        max_in_flight: limits.max_in_flight.max(1),
        // The session's queue in the broker is the real one; the engine keeps a little.
        max_queued: 16,
        max_keep_alive: limits.max_keep_alive,
        // Acknowledged once routed: the single point where a durable store will wait.
        manual_acks: true,
    }
}
