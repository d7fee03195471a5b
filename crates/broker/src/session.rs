//! The broker's sessions: one per client identifier, outliving connections. A session holds
//! the messages waiting for its client (the one bounded queue, online or offline), the engine
//! state saved when its connection closed, its subscriptions, and a way to reach its live
//! connection.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};
use std::time::Instant;

use rallymq_codec::{ProtocolVersion, Publish, QoS, TopicFilter};
use rallymq_session::SessionState;
use tokio::sync::oneshot;

use crate::config::{Limits, QueueFullPolicy};
use crate::router::SubscriptionData;

/// What the broker tells a live connection.
#[derive(Debug)]
pub(crate) enum Control {
    /// Another connection took the client id: disconnect with 0x8E and hand over the state.
    /// `resume`: the new connection carries the session on, so the will is not published (it
    /// came before the will was due, MQTT 5 section 3.1.2.5); otherwise the session ends here.
    TakeOver {
        reply: oneshot::Sender<SessionState>,
        resume: bool,
    },
    /// The session's will is pending (Will Delay) and the client came back: drop the will, or
    /// publish it now if the new connection ended the session (clean start).
    EndWill { publish: bool },
}

/// Why a connection's driver was woken (bits of [`ControlBox`]'s signal word).
pub(crate) mod signal {
    /// Messages are waiting in the session's queue.
    pub(crate) const MESSAGES: u8 = 1;
    /// A [`super::Control`] is waiting in the slot.
    pub(crate) const CONTROL: u8 = 2;
    /// The broker is shutting down.
    pub(crate) const SHUTDOWN: u8 = 4;
}

/// The one way to wake a connection's driver: queued messages, [`Control`]s and shutdown set a
/// bit and wake one registered waker. One word and a waker instead of a `Notify` per source,
/// because each `Notified` future the driver waits on sits in every idle connection's task
/// (64 to 120 bytes apiece); waiting on this keeps no state at all.
#[derive(Debug, Default)]
pub(crate) struct ControlBox {
    inbox: Mutex<Inbox>,
    signals: AtomicU8,
}

/// The driver's waker and the controls waiting for it, under one lock: a separate
/// `AtomicWaker` would cost another word in every connection.
#[derive(Debug, Default)]
struct Inbox {
    waker: Option<Waker>,
    /// Boxed: controls are rare, and every idle connection has a `ControlBox`.
    #[allow(clippy::box_collection)]
    controls: Option<Box<VecDeque<Control>>>,
    /// Set by [`ControlBox::close`]. Under the lock with `controls`, so that no control can
    /// land in the box between the driver's close and its last look (its reply would never
    /// come).
    closed: bool,
}

impl ControlBox {
    fn lock(&self) -> MutexGuard<'_, Inbox> {
        crate::lock(&self.inbox)
    }

    /// Hands `control` to the driver; gives it back if the driver has ended.
    pub(crate) fn send(&self, control: Control) -> Result<(), Control> {
        {
            let mut inbox = self.lock();
            if inbox.closed {
                return Err(control);
            }
            inbox.controls.get_or_insert_default().push_back(control);
        }
        self.signal(signal::CONTROL);
        Ok(())
    }

    /// The next control message waiting, if any (the driver's side).
    pub(crate) fn try_recv(&self) -> Option<Control> {
        let mut inbox = self.lock();
        let control = inbox.controls.as_mut()?.pop_front();
        if control.is_none() {
            inbox.controls = None;
        }
        control
    }

    /// Takes a takeover request waiting in the box, if any; other controls stay.
    pub(crate) fn take_over_request(&self) -> Option<oneshot::Sender<SessionState>> {
        let mut inbox = self.lock();
        let controls = inbox.controls.as_mut()?;
        let position = controls
            .iter()
            .position(|control| matches!(control, Control::TakeOver { .. }))?;
        match controls.remove(position) {
            Some(Control::TakeOver { reply, .. }) => Some(reply),
            _ => None,
        }
    }

    /// Sets `bits` and wakes the driver, unless they were set already (it has not looked yet,
    /// so it has a wake-up coming).
    pub(crate) fn signal(&self, bits: u8) {
        if self.signals.fetch_or(bits, Ordering::AcqRel) & bits != bits {
            let waker = self.lock().waker.take();
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }

    /// Waits until some bit is set, and takes every bit set.
    pub(crate) fn signalled(&self) -> impl Future<Output = u8> + '_ {
        std::future::poll_fn(|cx| {
            let bits = self.signals.swap(0, Ordering::AcqRel);
            if bits != 0 {
                return Poll::Ready(bits);
            }
            {
                let mut inbox = self.lock();
                match &mut inbox.waker {
                    Some(waker) if waker.will_wake(cx.waker()) => {}
                    waker => *waker = Some(cx.waker().clone()),
                }
            }
            // A signal set before the waker was stored found none to wake. (Both are
            // read-modify-writes of `signals`: the later one sees the lock released.)
            match self.signals.swap(0, Ordering::AcqRel) {
                0 => Poll::Pending,
                bits => Poll::Ready(bits),
            }
        })
    }

    /// The driver has ended: later sends fail, and waiting messages are dropped (their reply
    /// channels close, so whoever waits on them learns at once).
    pub(crate) fn close(&self) {
        let mut inbox = self.lock();
        inbox.closed = true;
        inbox.controls = None;
        inbox.waker = None;
    }
}

/// A live connection of a session, known by its [`ControlBox`] (`Arc::ptr_eq`).
#[derive(Debug)]
pub(crate) struct Attachment {
    pub(crate) control: Arc<ControlBox>,
}

/// A message waiting for a session, with when it started waiting (Message Expiry counts down).
#[derive(Debug)]
pub(crate) struct Queued {
    pub(crate) publish: Publish,
    pub(crate) since: Instant,
}

#[derive(Debug, Default)]
pub(crate) struct SessionInner {
    /// Messages routed to the session and not yet handed to its connection's engine.
    pub(crate) pending: Pending,
    pub(crate) attachment: Option<Attachment>,
    /// A closed connection still waiting to publish a delayed will.
    pub(crate) will_waiter: Option<Arc<ControlBox>>,
    /// The engine state saved when the last connection closed. Boxed: a connected session
    /// has none, and every idle connection has a session.
    pub(crate) saved: Option<Box<SessionState>>,
    /// Whether a session outlives its connection (expiry > 0) and so can be resumed.
    pub(crate) persistent: bool,
    /// When an offline session expires; `None` while connected or never.
    pub(crate) expires_at: Option<Instant>,
    pub(crate) subscriptions: Subscriptions,
    pub(crate) version: Option<ProtocolVersion>,
    /// A publisher waited its longest for this queue to drain, in vain: publishers are not
    /// slowed for it again until it is below its high-water mark (its limit drops instead).
    pub(crate) stalled: bool,
}

/// A session's queue of waiting messages, allocated with the first message: 8 bytes in a
/// session that never had one (an empty `VecDeque` takes 32). Once allocated it stays, so
/// that a busy subscriber does not allocate its queue again after every drain.
#[allow(clippy::box_collection)]
#[derive(Debug, Default)]
pub(crate) struct Pending(Option<Box<VecDeque<Queued>>>);

impl Pending {
    pub(crate) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |queue| queue.len())
    }

    pub(crate) fn front(&self) -> Option<&Queued> {
        self.0.as_ref()?.front()
    }

    pub(crate) fn pop_front(&mut self) -> Option<Queued> {
        self.0.as_mut()?.pop_front()
    }

    pub(crate) fn push_back(&mut self, queued: Queued) {
        self.0.get_or_insert_default().push_back(queued);
    }

    pub(crate) fn clear(&mut self) {
        self.0 = None;
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Queued> {
        self.0.iter().flat_map(|queue| queue.iter())
    }
}

impl FromIterator<Queued> for Pending {
    fn from_iter<I: IntoIterator<Item = Queued>>(items: I) -> Self {
        let queue: VecDeque<Queued> = items.into_iter().collect();
        Self((!queue.is_empty()).then(|| Box::new(queue)))
    }
}

/// A session's subscriptions, allocated with the first: 8 bytes in a session that has none
/// (an empty `HashMap` takes 48; clippy's `box_collection` assumes the inline size does not
/// matter).
#[allow(clippy::box_collection)]
#[derive(Debug, Default)]
pub(crate) struct Subscriptions(Option<Box<HashMap<TopicFilter, SubscriptionData>>>);

impl Subscriptions {
    pub(crate) fn insert(&mut self, filter: TopicFilter, data: SubscriptionData) {
        self.0.get_or_insert_default().insert(filter, data);
    }

    pub(crate) fn remove(&mut self, filter: &TopicFilter) {
        if let Some(map) = &mut self.0 {
            map.remove(filter);
            if map.is_empty() {
                self.0 = None;
            }
        }
    }

    pub(crate) fn clear(&mut self) {
        self.0 = None;
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&TopicFilter, &SubscriptionData)> {
        self.0.iter().flat_map(|map| map.iter())
    }
}

/// One session. Compared and hashed by client identifier, so the subscription index can use
/// it as the subscriber.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) client_id: Arc<str>,
    inner: Mutex<SessionInner>,
}

impl Session {
    pub(crate) fn new(client_id: Arc<str>) -> Self {
        Self {
            client_id,
            inner: Mutex::new(SessionInner::default()),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, SessionInner> {
        crate::lock(&self.inner)
    }

    /// Queues a message for the client, waiting since `since` (Message Expiry counts from then).
    pub(crate) fn enqueue(&self, publish: Publish, since: Instant, limits: &Limits) -> Enqueued {
        let mut inner = self.lock();
        let online = inner.attachment.is_some();
        if !online && publish.qos == QoS::AtMostOnce {
            // QoS 0 messages are not kept for offline sessions (MQTT 5 §3.1.2.4 allows either).
            return Enqueued {
                queued: false,
                dropped: true,
                congested: false,
            };
        }
        let mut enqueued = Enqueued {
            queued: true,
            dropped: false,
            congested: false,
        };
        if inner.pending.len() >= limits.max_queued_messages {
            enqueued.dropped = true;
            match limits.queue_full {
                QueueFullPolicy::DropOldest if limits.max_queued_messages > 0 => {
                    inner.pending.pop_front();
                }
                _ => enqueued.queued = false,
            }
        }
        if enqueued.queued {
            inner.pending.push_back(Queued { publish, since });
        }
        if inner.pending.len() < high_water(limits) {
            inner.stalled = false;
        }
        // Also when the message was dropped: several publishers reaching a full queue at once
        // must all be slowed, not only the ones that queued past the mark.
        enqueued.congested = inner.pending.len() >= high_water(limits) && !inner.stalled;
        if enqueued.queued
            && let Some(attachment) = &inner.attachment
        {
            // Under the lock: the attachment may change as soon as it is released.
            attachment.control.signal(signal::MESSAGES);
        }
        enqueued
    }

    /// Whether the queue is at or above its high-water mark.
    pub(crate) fn is_congested(&self, limits: &Limits) -> bool {
        let inner = self.lock();
        inner.pending.len() >= high_water(limits) && !inner.stalled
    }
}

/// Three quarters of the queue: above it, publishers to this session are slowed.
fn high_water(limits: &Limits) -> usize {
    (limits.max_queued_messages * 3 / 4).max(1)
}

/// What became of a message offered to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Enqueued {
    /// The message is in the queue.
    pub(crate) queued: bool,
    /// A message was dropped: this one, or the oldest waiting one to make room for it.
    pub(crate) dropped: bool,
    /// The queue is at its high-water mark (and its client is not stuck): slow the publisher.
    pub(crate) congested: bool,
}

impl Session {
    /// The session as stored, from its saved engine state and its queue.
    pub(crate) fn to_stored(&self) -> crate::store::StoredSession {
        let inner = self.lock();
        crate::store::StoredSession {
            client_id: self.client_id.to_string(),
            subscriptions: inner
                .subscriptions
                .iter()
                .map(|(filter, data)| (filter.clone(), data.options(), data.identifier))
                .collect(),
            state: inner.saved.as_deref().cloned().unwrap_or_default(),
            pending: inner
                .pending
                .iter()
                .map(|queued| queued.publish.clone())
                .collect(),
        }
    }
}

/// A session compared and hashed by its client identifier: the subscriber identity in the
/// subscription index, and the key of the registry, where a set of these (found by `&str`)
/// takes 8 bytes a slot where a map from a second copy of the id would take 24.
#[derive(Debug, Clone)]
pub(crate) struct SessionRef(pub(crate) Arc<Session>);

impl PartialEq for SessionRef {
    fn eq(&self, other: &Self) -> bool {
        self.0.client_id == other.0.client_id
    }
}

impl Eq for SessionRef {}

impl Hash for SessionRef {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As `str` hashes, so that a `&str` finds it (`Borrow`).
        self.0.client_id.as_ref().hash(state);
    }
}

impl std::borrow::Borrow<str> for SessionRef {
    fn borrow(&self) -> &str {
        &self.0.client_id
    }
}

/// What [`Registry::attach`] found.
pub(crate) struct Attached {
    pub(crate) session: Arc<Session>,
    /// The session existed before this connection.
    pub(crate) existed: bool,
    /// A connection was attached before: it was told to hand over, and its session state
    /// arrives here when it has closed (dropped unanswered if it ended first).
    pub(crate) previous_state: Option<oneshot::Receiver<SessionState>>,
    /// A closed connection waiting to publish the session's delayed will.
    pub(crate) will_waiter: Option<Arc<ControlBox>>,
}

/// What became of a session as [`Registry::detach`] detached its connection.
pub(crate) enum Detached {
    /// Another connection took the session over: answer it with the session state.
    TakenOver(oneshot::Sender<SessionState>),
    /// The session stays, offline: a persistent one, to be saved.
    Kept,
    /// Another connection owns the session and asked nothing of this one.
    Elsewhere,
    /// The session ended and was removed.
    Ended,
}

/// Every session by client identifier.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    sessions: Mutex<HashSet<SessionRef>>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashSet<SessionRef>> {
        crate::lock(&self.sessions)
    }

    /// The session for `client_id`, created if there is none; and whether it existed.
    pub(crate) fn get_or_create(&self, client_id: &str) -> (Arc<Session>, bool) {
        let mut sessions = self.lock();
        if let Some(SessionRef(session)) = sessions.get(client_id) {
            return (session.clone(), true);
        }
        let session = Arc::new(Session::new(client_id.into()));
        sessions.insert(SessionRef(session.clone()));
        (session, false)
    }

    /// Attaches the connection behind `control` to the session of `client_id` (created if
    /// there is none), taking over the connection attached before it. Registry and session
    /// are locked throughout, so the CONNECTs of one client id take over one after another:
    /// each new connection replaces the last one attached and tells it so, and no two can both
    /// find the session free (MQTT-3.1.4-2). `resume_requested`: the CONNECT asks to resume
    /// (no clean start), so a persistent session goes on and the previous connection's will
    /// is not published.
    pub(crate) fn attach(
        &self,
        client_id: &str,
        control: &Arc<ControlBox>,
        resume_requested: bool,
    ) -> Attached {
        let mut sessions = self.lock();
        let (session, existed) = match sessions.get(client_id) {
            Some(SessionRef(session)) => (session.clone(), true),
            None => {
                let session = Arc::new(Session::new(client_id.into()));
                sessions.insert(SessionRef(session.clone()));
                (session, false)
            }
        };
        Self::attach_to(session, existed, control, resume_requested)
    }

    /// Attaches the connection behind `control` to a new session whose client id the broker
    /// assigns (the client sent an empty one): `base`, or `base-2`, `base-3`... whichever is no
    /// session's yet, chosen under the registry's lock so that no other connection can take
    /// it meanwhile.
    pub(crate) fn attach_assigned(&self, base: &str, control: &Arc<ControlBox>) -> Attached {
        let mut sessions = self.lock();
        let mut client_id = base.to_owned();
        let mut n = 1u64;
        while sessions.contains(client_id.as_str()) {
            n += 1;
            client_id = format!("{base}-{n}");
        }
        let session = Arc::new(Session::new(client_id.into()));
        sessions.insert(SessionRef(session.clone()));
        Self::attach_to(session, false, control, false)
    }

    /// [`Registry::attach`] once the session is found or created, with the registry locked.
    fn attach_to(
        session: Arc<Session>,
        existed: bool,
        control: &Arc<ControlBox>,
        resume_requested: bool,
    ) -> Attached {
        let mut inner = session.lock();
        let previous = inner.attachment.replace(Attachment {
            control: control.clone(),
        });
        let previous_state = previous.and_then(|previous| {
            let (reply, state) = oneshot::channel();
            let resume = resume_requested && inner.persistent;
            // Sent under the session's lock: a connection that finds itself detached finds
            // this in its box (see `Registry::detach`).
            previous
                .control
                .send(Control::TakeOver { reply, resume })
                .ok()
                .map(|()| state)
        });
        let will_waiter = inner.will_waiter.take();
        drop(inner);
        Attached {
            session,
            existed,
            previous_state,
            will_waiter,
        }
    }

    /// Detaches the connection behind `control` from `session` as it closes. If another
    /// connection has attached meanwhile, it took the session over: the takeover request it
    /// sent is taken from `control`'s box and returned, for the closing connection to answer
    /// with its state. Otherwise `detached` settles the session (under its lock) and says
    /// whether it ends (else it is kept offline); an ended session is removed from the registry and `cleanup` runs, both
    /// under the registry's lock, so that no new connection of the same client id finds the
    /// session, or subscribes under the same id, before it is gone.
    pub(crate) fn detach(
        &self,
        session: &Arc<Session>,
        control: &Arc<ControlBox>,
        detached: impl FnOnce(&mut SessionInner) -> bool,
        cleanup: impl FnOnce(),
    ) -> Detached {
        let mut sessions = self.lock();
        let mut inner = session.lock();
        let ours = inner
            .attachment
            .as_ref()
            .is_some_and(|attachment| Arc::ptr_eq(&attachment.control, control));
        if !ours {
            return match control.take_over_request() {
                Some(reply) => Detached::TakenOver(reply),
                None => Detached::Elsewhere,
            };
        }
        inner.attachment = None;
        if !detached(&mut inner) {
            return Detached::Kept;
        }
        drop(inner);
        Self::remove_locked(&mut sessions, session);
        cleanup();
        Detached::Ended
    }

    /// Removes `session` if `ends(inner)` says so (under the session's lock) and it is still
    /// the one registered under its id; `cleanup` runs under the registry's lock after
    /// removing it (see [`Registry::detach`]).
    pub(crate) fn remove_if(
        &self,
        session: &Arc<Session>,
        ends: impl FnOnce(&mut SessionInner) -> bool,
        cleanup: impl FnOnce(),
    ) -> bool {
        let mut sessions = self.lock();
        if !ends(&mut session.lock()) || !Self::remove_locked(&mut sessions, session) {
            return false;
        }
        cleanup();
        true
    }

    /// Removes `session` if it is still the one registered under its id.
    // A `SessionRef` hashes and compares by its client id, which never changes.
    #[allow(clippy::mutable_key_type)]
    fn remove_locked(sessions: &mut HashSet<SessionRef>, session: &Arc<Session>) -> bool {
        match sessions.get(session.client_id.as_ref()) {
            Some(SessionRef(current)) if Arc::ptr_eq(current, session) => {
                sessions.remove(session.client_id.as_ref());
                true
            }
            _ => false,
        }
    }

    pub(crate) fn contains(&self, client_id: &str) -> bool {
        self.lock().contains(client_id)
    }

    /// Every session, for sweeps.
    pub(crate) fn all(&self) -> Vec<Arc<Session>> {
        self.lock()
            .iter()
            .map(|SessionRef(session)| session.clone())
            .collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}
