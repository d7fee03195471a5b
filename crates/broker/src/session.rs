//! The broker's sessions: one per client identifier, outliving connections. A session holds
//! the messages waiting for its client (the one bounded queue, online or offline), the engine
//! state saved when its connection closed, its subscriptions, and a way to reach its live
//! connection.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

use rallymq_codec::{
    PacketId, ProtocolVersion, Publish, QoS, SubscriptionId, SubscriptionOptions, TopicFilter,
};
use rallymq_session::{OutgoingStage, PublishToken, SessionState};
use tokio::sync::oneshot;
use tracing::warn;

use crate::config::{Limits, QueueFullPolicy};
use crate::router::SubscriptionData;
use crate::store::{
    Change, LoadedEntry, MessageId, QueueEntry, SessionRecord, Store, StoredMessage, StoredWill,
    Ticket,
};

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
    /// The admin API asks what the connection's engine holds: its QoS 1 and 2 deliveries in
    /// flight and queued.
    Inspect(oneshot::Sender<EngineCounts>),
    /// The admin API disconnects the client: DISCONNECT 0x98 Administrative action in MQTT 5,
    /// the socket closed before.
    Disconnect,
}

/// Why a connection's driver was woken (bits of [`ControlBox`]'s signal word).
pub(crate) mod signal {
    /// Messages are waiting in the session's queue.
    pub(crate) const MESSAGES: u8 = 1;
    /// A [`super::Control`] is waiting in the slot.
    pub(crate) const CONTROL: u8 = 2;
    /// The broker is shutting down.
    pub(crate) const SHUTDOWN: u8 = 4;
    /// Every stored entry of a message this connection published was acknowledged by its
    /// subscriber ([`super::EarlyAck`]): its PUBACK need not wait for the store.
    pub(crate) const ACKNOWLEDGED: u8 = 8;
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

/// What the admin API shows of a session's latest connection: recorded when its CONNECT is
/// accepted, kept (with when it ended) while the session outlives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConnectionInfo {
    pub(crate) peer: SocketAddr,
    /// The index of its listener in [`Shared::listeners`](crate::broker::Shared), or
    /// [`NO_LISTENER`] for a stream an embedder handed in.
    pub(crate) listener: u16,
    pub(crate) websocket: bool,
    pub(crate) version: ProtocolVersion,
    /// The keep alive in force, in seconds (0: none).
    pub(crate) keep_alive: u16,
    pub(crate) clean_start: bool,
    /// The Session Expiry Interval granted at CONNECT, in seconds.
    pub(crate) expiry_interval: u32,
    pub(crate) user: Option<Arc<str>>,
    pub(crate) connected_at: SystemTime,
    pub(crate) disconnected_at: Option<SystemTime>,
}

/// What a session engine holds of a session's outgoing messages (a connection's engine, or the
/// state it saved when it closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct EngineCounts {
    /// QoS 1 and 2 messages sent and not yet acknowledged (resent when an offline session's
    /// client returns).
    pub(crate) in_flight: usize,
    /// QoS 1 and 2 messages waiting for room in the window.
    pub(crate) queued: usize,
    /// Their topic and payload bytes.
    pub(crate) queued_bytes: u64,
}

impl EngineCounts {
    pub(crate) fn of(state: &SessionState) -> Self {
        Self {
            in_flight: state.in_flight.len(),
            queued: state.queued.len(),
            queued_bytes: state
                .queued
                .iter()
                .map(|queued| u64::from(message_size(&queued.publish)))
                .sum(),
        }
    }
}

/// [`ConnectionInfo::listener`] of a connection that came through no listener.
pub(crate) const NO_LISTENER: u16 = u16::MAX;

/// A session as the admin API shows it, copied under its lock.
#[derive(Debug, Clone)]
pub(crate) struct SessionSnapshot {
    pub(crate) client_id: Arc<str>,
    /// The live connection's controls, while one is attached.
    pub(crate) control: Option<Arc<ControlBox>>,
    pub(crate) connection: Option<ConnectionInfo>,
    pub(crate) expires_at: Option<Instant>,
    /// The expiry interval the session would have if its connection closed now, in seconds.
    pub(crate) expiry_interval: Option<u32>,
    pub(crate) subscription_count: usize,
    /// Messages waiting in the broker's queue (in memory and in the store), and their bytes.
    pub(crate) queued: (u64, u64),
    /// What the engine state saved when the last connection closed holds (offline sessions).
    pub(crate) saved: Option<EngineCounts>,
    /// Filled by [`Session::snapshot_with_subscriptions`] only, sorted by filter.
    pub(crate) subscriptions: Vec<(TopicFilter, SubscriptionData)>,
}

impl SessionSnapshot {
    pub(crate) fn connected(&self) -> bool {
        self.control.is_some()
    }
}

/// A message waiting for a session, with when it started waiting (Message Expiry counts down)
/// and, for a persistent session with a store, its entry in the store.
#[derive(Debug)]
pub(crate) struct Queued {
    pub(crate) publish: Publish,
    pub(crate) since: Instant,
    pub(crate) stored: Option<StoredRef>,
    /// In a cluster, its sequence in the stream: 0 when it is not from the stream,
    /// [`UNKNOWN_SEQUENCE`] when that is not known here.
    pub(crate) sequence: u64,
    /// With `stored`: the count its delivery's acknowledgement counts down, so that its
    /// publisher may be acknowledged before the store commits (see [`EarlyAck`]).
    pub(crate) early: Option<Arc<EarlyAck>>,
}

impl Queued {
    /// A queue entry read from the store, waiting again.
    pub(crate) fn loaded(loaded: &LoadedEntry) -> Self {
        Self::loaded_at(loaded, SystemTime::now(), Instant::now())
    }

    /// [`Queued::loaded`] with the clocks read once for a whole page of entries.
    pub(crate) fn loaded_at(loaded: &LoadedEntry, wall: SystemTime, now: Instant) -> Self {
        let (publish, since) = delivered_copy_at(loaded, wall, now);
        Self {
            publish,
            since,
            stored: Some(StoredRef::of(loaded)),
            sequence: UNKNOWN_SEQUENCE,
            early: None,
        }
    }
}

/// The entries a QoS 1 message left in persistent sessions' queues that their subscribers have
/// not yet acknowledged. Once every one is acknowledged, what the message wrote to the store
/// (the message, its entries) is undone by what the acknowledgements wrote (their deletions),
/// and every session it was stored for has it: nothing about it needs to be durable, so its
/// publisher's PUBACK may go out without waiting for the store's commit. A crash after that
/// PUBACK loses nothing, since every recipient has the message.
///
/// The count starts at one, the hold of routing and then of the publisher's connection, which
/// lets it go ([`EarlyAck::arm`]) only once the message went nowhere else durable: not
/// retained, no entry in the store only (an offline session, or one behind on its queue), no
/// entry dropped to make room. Without that release the count never reaches zero and the
/// PUBACK waits for the store, as before.
#[derive(Debug)]
pub(crate) struct EarlyAck {
    outstanding: AtomicU32,
    /// The publisher's connection, woken when the count reaches zero.
    publisher: OnceLock<Arc<ControlBox>>,
}

impl EarlyAck {
    fn new() -> Self {
        Self {
            outstanding: AtomicU32::new(1),
            publisher: OnceLock::new(),
        }
    }

    /// The publisher's connection lets go of routing's hold and is woken (if not by its own
    /// release) once every entry is acknowledged.
    pub(crate) fn arm(&self, publisher: &Arc<ControlBox>) {
        let _ = self.publisher.set(publisher.clone());
        self.release();
    }

    /// An entry's delivery was acknowledged by its subscriber.
    pub(crate) fn entry_acknowledged(&self) {
        self.release();
    }

    /// Whether every entry, and the publisher's hold, is released.
    pub(crate) fn done(&self) -> bool {
        self.outstanding.load(Ordering::Acquire) == 0
    }

    fn release(&self) {
        // The publisher is set before its hold is released, and the count only reaches zero
        // after that release: whoever takes it to zero sees the publisher (AcqRel orders the
        // chain of updates).
        if self.outstanding.fetch_sub(1, Ordering::AcqRel) == 1
            && let Some(publisher) = self.publisher.get()
        {
            publisher.signal(signal::ACKNOWLEDGED);
        }
    }
}

/// The PUBLISH a stored queue entry delivers, and since when it has waited (its Message
/// Expiry counts from when the broker received it, across restarts).
pub(crate) fn delivered_copy(loaded: &LoadedEntry) -> (Publish, Instant) {
    delivered_copy_at(loaded, SystemTime::now(), Instant::now())
}

/// [`delivered_copy`] with the clocks read by the caller (`wall` and `now` the same moment):
/// once for a page of entries instead of twice per entry, which took 3% of a draining broker's
/// CPU.
pub(crate) fn delivered_copy_at(
    loaded: &LoadedEntry,
    wall: SystemTime,
    now: Instant,
) -> (Publish, Instant) {
    let mut publish = loaded.message.publish.clone();
    publish.qos = loaded.entry.qos;
    publish.retain = loaded.entry.retain;
    if !loaded.entry.subscription_ids.is_empty() {
        publish.properties.subscription_identifiers = loaded.entry.subscription_ids.clone();
    }
    let waited = wall
        .duration_since(loaded.message.received_at)
        .unwrap_or_default();
    (publish, now.checked_sub(waited).unwrap_or(now))
}

/// A queue entry in the store: a queued message, or a delivery in flight, carries it so that
/// its acknowledgement (or stage) can be recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StoredRef {
    pub(crate) seq: u64,
    pub(crate) message: MessageId,
    pub(crate) size: u32,
}

impl StoredRef {
    /// The reference of an entry read from the store.
    pub(crate) fn of(loaded: &LoadedEntry) -> Self {
        Self {
            seq: loaded.seq,
            message: loaded.entry.message,
            size: loaded.entry.size,
        }
    }

    /// The entry as stored, for a message delivered as `publish`.
    pub(crate) fn entry(
        &self,
        publish: &Publish,
        in_flight: Option<(PacketId, OutgoingStage)>,
    ) -> QueueEntry {
        QueueEntry {
            message: self.message,
            qos: publish.qos,
            retain: publish.retain,
            subscription_ids: publish.properties.subscription_identifiers.clone(),
            in_flight,
            size: self.size,
        }
    }
}

/// How many messages a connected persistent session keeps in memory; the rest of its queue is
/// read from the store as these drain. An offline session keeps none.
pub(crate) const MEMORY_WINDOW: usize = 1024;

/// Deliveries in flight that are entries in the store: token → (entry number, entry), kept in
/// token order. A draining session looks one up for every acknowledgement, and a client
/// acknowledges in the order it was sent (MQTT-4.6.0-2 asks it of QoS 1), so the one looked
/// for is nearly always the first: a queue in order finds it at once, in memory that its
/// neighbours share, where a hash map (FxHash) cost two cache misses per acknowledgement
/// (4% of a draining broker's CPU went to its removals). Tokens come from the engine's
/// counter, so they arrive in order; one out of order is placed by a binary search. Removing
/// from the middle moves at most the connection's in-flight window (`max_in_flight`).
#[derive(Debug, Default)]
pub(crate) struct Deliveries(VecDeque<(PublishToken, (u64, QueueEntry))>);

impl Deliveries {
    fn position(&self, token: PublishToken) -> Result<usize, usize> {
        self.0.binary_search_by_key(&token, |(held, _)| *held)
    }

    /// Adds (or replaces) the delivery of `token`.
    pub(crate) fn insert(&mut self, token: PublishToken, delivery: (u64, QueueEntry)) {
        match self.position(token) {
            Ok(at) => self.0[at].1 = delivery,
            Err(at) if at == self.0.len() => self.0.push_back((token, delivery)),
            Err(at) => self.0.insert(at, (token, delivery)),
        }
    }

    /// The delivery of `token`.
    pub(crate) fn get(&self, token: &PublishToken) -> Option<&(u64, QueueEntry)> {
        let at = self.position(*token).ok()?;
        self.0.get(at).map(|(_, delivery)| delivery)
    }

    /// The delivery of `token`, to change.
    pub(crate) fn get_mut(&mut self, token: &PublishToken) -> Option<&mut (u64, QueueEntry)> {
        let at = self.position(*token).ok()?;
        self.0.get_mut(at).map(|(_, delivery)| delivery)
    }

    /// Takes out the delivery of `token`.
    pub(crate) fn remove(&mut self, token: &PublishToken) -> Option<(u64, QueueEntry)> {
        // The first, nearly always: checked before the search.
        let at = match self.0.front() {
            Some((first, _)) if first == token => 0,
            _ => self.position(*token).ok()?,
        };
        self.0.remove(at).map(|(_, delivery)| delivery)
    }

    /// Whether there are none.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What a persistent session keeps when the broker has a store: the part of its queue that is
/// only in the store, and what its record holds.
#[derive(Debug, Default)]
pub(crate) struct Durable {
    /// The number the next entry takes.
    pub(crate) next_seq: u64,
    /// Entries in the store that are not in memory: every one after those in memory.
    pub(crate) tail_len: u64,
    pub(crate) tail_bytes: u64,
    /// Where reading the tail resumes.
    pub(crate) tail_from: u64,
    /// The last ticket that wrote one of the session's entries: reading waits for it.
    pub(crate) last_ticket: Ticket,
    /// Deliveries in flight (token → entry number and entry), handed from a closed
    /// connection to the next one.
    pub(crate) deliveries: Deliveries,
    /// The will of the session's connection while it may still be published.
    pub(crate) will: Option<StoredWill>,
    /// The session's expiry interval, as granted.
    pub(crate) expiry_interval: u32,
    /// When its last connection closed (`None` while connected).
    pub(crate) disconnected_at: Option<SystemTime>,
}

/// The message being routed, stored the first time a persistent session's queue takes it.
pub(crate) struct Persisting<'a> {
    pub(crate) store: &'a dyn Store,
    pub(crate) next_message_id: &'a AtomicU64,
    pub(crate) message: &'a Publish,
    pub(crate) received_at: SystemTime,
    pub(crate) id: Option<MessageId>,
    /// The highest ticket of what was written: the publisher waits for it.
    pub(crate) ticket: Ticket,
    /// The count of its entries kept in memory, while every entry is (see [`EarlyAck`]).
    early: Option<Arc<EarlyAck>>,
    /// An entry went to the store only, or one was dropped: the publisher waits for the store.
    early_lost: bool,
}

impl<'a> Persisting<'a> {
    /// `message`, received at `received_at`, not stored yet.
    pub(crate) fn new(
        store: &'a dyn Store,
        next_message_id: &'a AtomicU64,
        message: &'a Publish,
        received_at: SystemTime,
    ) -> Self {
        Self {
            store,
            next_message_id,
            message,
            received_at,
            id: None,
            ticket: Ticket::default(),
            early: None,
            early_lost: false,
        }
    }

    /// The count the publisher's PUBACK may wait on instead of the store, if every entry
    /// written is in a queue in memory (and there is one).
    pub(crate) fn early_ack(&self) -> Option<Arc<EarlyAck>> {
        self.early.clone().filter(|_| !self.early_lost)
    }

    /// Counts an entry kept in memory; its delivery's acknowledgement counts it off.
    fn entry_in_memory(&mut self) -> Option<Arc<EarlyAck>> {
        if self.early_lost {
            return None;
        }
        let early = self.early.get_or_insert_with(|| Arc::new(EarlyAck::new()));
        early.outstanding.fetch_add(1, Ordering::Relaxed);
        Some(early.clone())
    }
}

impl Persisting<'_> {
    /// The message's id, storing the message the first time.
    fn message_id(&mut self) -> MessageId {
        if let Some(id) = self.id {
            return id;
        }
        let id = self.next_message_id.fetch_add(1, Ordering::Relaxed);
        let message = StoredMessage {
            publish: crate::router::stored_copy(self.message),
            received_at: self.received_at,
        };
        self.ticket = self.ticket.max(
            self.store
                .write(vec![Change::PutMessage(id, Arc::new(message))]),
        );
        self.id = Some(id);
        id
    }
}

/// Counts `publish`'s Message Expiry down by the time it waited since `since` (MQTT-3.3.2-5,
/// -6); `false` when it has expired and must not be sent.
pub(crate) fn count_down_expiry(publish: &mut Publish, since: Instant) -> bool {
    let Some(interval) = publish.properties.message_expiry_interval else {
        return true;
    };
    let waited = since.elapsed().as_secs();
    match u64::from(interval).checked_sub(waited) {
        Some(left) if left > 0 => {
            // Below `interval`, a u32.
            publish.properties.message_expiry_interval = Some(left as u32);
            true
        }
        _ => false,
    }
}

/// The size a message counts for in a queue's byte limit: its topic and payload.
pub(crate) fn message_size(publish: &Publish) -> u32 {
    let topic = publish.topic.as_ref().map_or(0, |topic| topic.len());
    u32::try_from(topic + publish.payload.len()).unwrap_or(u32::MAX)
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
    pub(crate) expires_at: Option<Deadline>,
    pub(crate) subscriptions: Subscriptions,
    pub(crate) version: Option<ProtocolVersion>,
    /// A publisher waited its longest for this queue to drain, in vain: publishers are not
    /// slowed for it again until it is below its high-water mark (its limit drops instead).
    pub(crate) stalled: bool,
    /// Topic and payload bytes of the messages in `pending`.
    pub(crate) pending_bytes: u64,
    /// The queue dropped a message at its limit and has not drained below its high-water mark
    /// since (the drop was logged).
    pub(crate) dropping: bool,
    /// Present for a persistent session when the broker has a store. Boxed: most sessions are
    /// not.
    pub(crate) durable: Option<Box<Durable>>,
    /// The latest connection, for the admin API. Boxed: 8 bytes in a session that has none.
    pub(crate) connection: Option<Box<ConnectionInfo>>,
    /// In a cluster: what replaying the stream holds back and skips, and the QoS 2
    /// deliveries released (see [`Replay`]). Boxed: most sessions never have one.
    pub(crate) replay: Option<Box<Replay>>,
    /// In a cluster: a message from the stream was queued since the session's record was
    /// last written (its stream cursor is worth writing again).
    pub(crate) stream_touched: bool,
    /// In a cluster: this node's claim of the session's client id, while the session is
    /// here (`cluster::sessions`). Inline, not boxed: every clustered connection has one, and
    /// it fits in the session's size class (see [`Deadline`]).
    pub(crate) claim: Option<crate::cluster::Claimed>,
}

/// An instant in 8 bytes (an `Option` of it too, where an `Option<Instant>` takes 16): the
/// nanoseconds since the first one made in the process, at least 1. It keeps a session's block
/// in jemalloc's 160-byte class with a cluster's claim inline in it, so that an idle clustered
/// connection costs no more than a single node's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Deadline(NonZeroU64);

impl Deadline {
    /// What every deadline counts from.
    fn base() -> Instant {
        static BASE: OnceLock<Instant> = OnceLock::new();
        *BASE.get_or_init(Instant::now)
    }

    /// `instant`, or the first deadline of the process if it is earlier (an expiry already
    /// past, taken from a record).
    pub(crate) fn at(instant: Instant) -> Self {
        let nanos = instant.saturating_duration_since(Self::base()).as_nanos();
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX);
        Self(NonZeroU64::new(nanos).unwrap_or(NonZeroU64::MIN))
    }

    /// The instant it stands for.
    pub(crate) fn instant(self) -> Instant {
        let since = Duration::from_nanos(self.0.get());
        // `at` made it from an instant at least this far past the base: the sum fits.
        Self::base()
            .checked_add(since)
            .unwrap_or_else(|| Self::base() + Duration::from_secs(u64::from(u32::MAX)))
    }
}

/// Where a message routed to a session comes from: in a cluster, its place in the stream
/// of QoS 1 and 2 messages (every QoS 1 and 2 message there reaches its subscribers through
/// the stream, on its own node too), so that a session that replays the stream gets it once
/// and its record can say how far it got.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) enum Origin {
    /// Not in the stream (QoS 0, `$SYS`, retained messages sent on SUBSCRIBE, a single node).
    #[default]
    Local,
    /// Read from the stream at this sequence.
    Stream(u64),
    /// Read again from the stream at this sequence by the session's replay: never held back.
    Replay(u64),
}

impl Origin {
    /// The message's sequence in the stream; 0 when it is not from the stream.
    pub(crate) fn sequence(self) -> u64 {
        match self {
            Self::Local => 0,
            Self::Stream(sequence) | Self::Replay(sequence) => sequence,
        }
    }
}

/// What [`Session::oldest_waiting`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waiting {
    /// No message from the stream waits.
    Nothing,
    /// The oldest waiting has this sequence (those behind it have higher ones).
    Oldest(u64),
    /// One's sequence is not known here (in the store only, read back from it, handed over
    /// by another node), or a replay holds messages back.
    Unknown,
}

/// [`Queued::sequence`] of a stream message whose sequence is not known here (read back from
/// the store, or handed over by another node).
pub(crate) const UNKNOWN_SEQUENCE: u64 = u64::MAX;

/// A session replaying the cluster's stream from its record's cursor, because the node that
/// held its queue died. While `holding`, what routing brings that is also in the stream is
/// held back (the replay may bring it too); once the replay has read the stream up to
/// `through`, the held messages it did not bring are queued after it, and the stream's
/// messages up to `through` routed later are skipped.
///
/// It also keeps the packet identifiers of the session's QoS 2 deliveries in flight whose
/// PUBREC came, as its record last carried them: a node that resumes the session releases
/// them (PUBREL) instead of sending a new message under an identifier the client still holds.
#[derive(Debug, Default)]
pub(crate) struct Replay {
    pub(crate) holding: bool,
    pub(crate) held: Vec<(Origin, Publish, Instant)>,
    pub(crate) through: u64,
    pub(crate) in_flight: InFlightRecord,
}

/// What a cluster session's record says of its QoS 2 deliveries past its stream cursor, each
/// by its sequence in the stream: a node that resumes the session after its node died
/// replays the stream from the cursor, and by this sends each of them once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct InFlightRecord {
    /// Sent, not yet acknowledged (PUBREC), with their identifiers: sent again under them
    /// with DUP, so that a client that had one does not take it as new.
    pub(crate) published: Vec<(u64, PacketId)>,
    /// PUBREC came (PUBREL sent): delivered, released again under their identifiers.
    pub(crate) released: Vec<(u64, PacketId)>,
    /// Completed (PUBCOMP): not sent again.
    pub(crate) done: Vec<u64>,
    /// Inbound QoS 2 messages PUBREC answered and PUBREL not yet received: the packet
    /// identifier and the id the message was written to the stream under. A resend (DUP) to
    /// another node is written under the same id, which the stream drops as a duplicate.
    pub(crate) inbound: Vec<(PacketId, String)>,
}

impl SessionInner {
    /// Messages waiting, in memory and in the store only, and their bytes.
    pub(crate) fn queue_size(&self) -> (u64, u64) {
        let (tail_len, tail_bytes) = self
            .durable
            .as_ref()
            .map_or((0, 0), |durable| (durable.tail_len, durable.tail_bytes));
        (
            self.pending.len() as u64 + tail_len,
            self.pending_bytes + tail_bytes,
        )
    }

    /// Takes the oldest message in memory (bytes counted off).
    pub(crate) fn pop_pending(&mut self) -> Option<Queued> {
        let queued = self.pending.pop_front()?;
        self.pending_bytes = self
            .pending_bytes
            .saturating_sub(u64::from(message_size(&queued.publish)));
        Some(queued)
    }

    /// Takes the message in memory at `at` (bytes counted off).
    pub(crate) fn take_pending_at(&mut self, at: usize) -> Option<Queued> {
        let queued = self.pending.remove(at)?;
        self.pending_bytes = self
            .pending_bytes
            .saturating_sub(u64::from(message_size(&queued.publish)));
        Some(queued)
    }

    /// Adds a message at the end of those in memory.
    pub(crate) fn push_pending(&mut self, queued: Queued) {
        self.pending_bytes += u64::from(message_size(&queued.publish));
        self.pending.push_back(queued);
    }

    /// Puts `queued` in front of the messages in memory, in their order.
    pub(crate) fn prepend_pending(&mut self, queued: Vec<Queued>) {
        for queued in queued.into_iter().rev() {
            self.pending_bytes += u64::from(message_size(&queued.publish));
            self.pending.push_front(queued);
        }
    }

    /// Empties the queue in memory.
    pub(crate) fn clear_pending(&mut self) {
        self.pending.clear();
        self.pending_bytes = 0;
    }
}

/// A session's queue of waiting messages, allocated with the first message: 8 bytes in a
/// session that never had one (an empty `VecDeque` takes 32). Once allocated it stays, so
/// that a busy subscriber does not allocate its queue again after every drain.
#[allow(clippy::box_collection)]
#[derive(Debug, Default)]
pub(crate) struct Pending(Option<Box<VecDeque<Queued>>>);

impl Pending {
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |queue| queue.len())
    }

    pub(crate) fn front(&self) -> Option<&Queued> {
        self.0.as_ref()?.front()
    }

    pub(crate) fn pop_front(&mut self) -> Option<Queued> {
        self.0.as_mut()?.pop_front()
    }

    pub(crate) fn push_front(&mut self, queued: Queued) {
        self.0.get_or_insert_default().push_front(queued);
    }

    pub(crate) fn remove(&mut self, at: usize) -> Option<Queued> {
        self.0.as_mut()?.remove(at)
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

    pub(crate) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |map| map.len())
    }

    pub(crate) fn contains(&self, filter: &TopicFilter) -> bool {
        self.0.as_ref().is_some_and(|map| map.contains_key(filter))
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&TopicFilter, &SubscriptionData)> {
        self.0.iter().flat_map(|map| map.iter())
    }
    /// The subscriptions as a session's record keeps them.
    pub(crate) fn to_record(
        &self,
    ) -> Vec<(TopicFilter, SubscriptionOptions, Option<SubscriptionId>)> {
        self.iter()
            .map(|(filter, data)| (filter.clone(), data.options(), data.identifier))
            .collect()
    }
}

/// One session. Compared and hashed by client identifier, so the subscription index can use
/// it as the subscriber.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) client_id: Arc<str>,
    inner: Mutex<SessionInner>,
    /// In a cluster: the place in the stream of QoS 1 and 2 messages up to which everything
    /// routed to the session was delivered and acknowledged (its record carries it, so that
    /// another node can replay the rest if this one dies).
    pub(crate) stream_cursor: AtomicU64,
}

impl Session {
    pub(crate) fn new(client_id: Arc<str>) -> Self {
        Self {
            client_id,
            inner: Mutex::new(SessionInner::default()),
            stream_cursor: AtomicU64::new(0),
        }
    }

    /// Moves the session's stream cursor to `position` (the node's routed place in the stream,
    /// read before this call) if nothing routed to it is waiting: not queued, not in flight
    /// (`in_flight`: the connection's engine's count, or 0 to look at the saved state), not
    /// held by a replay.
    pub(crate) fn advance_cursor(&self, position: u64, in_flight: usize) {
        let inner = self.lock();
        let saved = inner
            .saved
            .as_ref()
            .map_or(0, |saved| saved.in_flight.len() + saved.queued.len());
        if in_flight == 0
            && saved == 0
            && inner.queue_size().0 == 0
            && inner.replay.as_ref().is_none_or(|replay| !replay.holding)
        {
            self.stream_cursor.fetch_max(position, Ordering::AcqRel);
        }
    }

    /// The stream sequence of the oldest stream message waiting for the session here (not
    /// yet handed to its connection), for its cursor.
    pub(crate) fn oldest_waiting(&self) -> Waiting {
        let inner = self.lock();
        let tail = inner
            .durable
            .as_ref()
            .is_some_and(|durable| durable.tail_len > 0);
        if tail || inner.replay.as_ref().is_some_and(|replay| replay.holding) {
            return Waiting::Unknown;
        }
        match inner
            .pending
            .iter()
            .map(|queued| queued.sequence)
            .find(|s| *s != 0)
        {
            None => Waiting::Nothing,
            Some(UNKNOWN_SEQUENCE) => Waiting::Unknown,
            Some(sequence) => Waiting::Oldest(sequence),
        }
    }

    /// Begins a replay: from now on what routing brings from the stream is held back.
    pub(crate) fn hold_stream(&self) {
        self.lock().replay.get_or_insert_default().holding = true;
    }

    /// What the record says of the session's QoS 2 deliveries in flight.
    pub(crate) fn in_flight_record(&self) -> InFlightRecord {
        self.lock()
            .replay
            .as_ref()
            .map(|replay| replay.in_flight.clone())
            .unwrap_or_default()
    }

    /// Sets what [`Session::in_flight_record`] says.
    pub(crate) fn set_in_flight_record(&self, in_flight: InFlightRecord) {
        let mut inner = self.lock();
        if in_flight == InFlightRecord::default() && inner.replay.is_none() {
            return;
        }
        inner.replay.get_or_insert_default().in_flight = in_flight;
    }

    /// Sets what the record says of the outgoing deliveries, keeping the inbound ones.
    pub(crate) fn set_outgoing_record(
        &self,
        published: Vec<(u64, PacketId)>,
        released: Vec<(u64, PacketId)>,
        done: Vec<u64>,
    ) {
        let mut inner = self.lock();
        if published.is_empty() && released.is_empty() && done.is_empty() && inner.replay.is_none()
        {
            return;
        }
        let record = &mut inner.replay.get_or_insert_default().in_flight;
        record.published = published;
        record.released = released;
        record.done = done;
    }

    /// Records inbound QoS 2 messages answered (identifier, stream message id), or with
    /// `release`, the one whose PUBREL came; whether anything changed.
    pub(crate) fn record_inbound(
        &self,
        answered: Vec<(PacketId, String)>,
        release: Option<PacketId>,
    ) -> bool {
        let mut inner = self.lock();
        if answered.is_empty() && inner.replay.is_none() {
            return false;
        }
        let inbound = &mut inner.replay.get_or_insert_default().in_flight.inbound;
        let before = inbound.len();
        if let Some(released) = release {
            inbound.retain(|(packet_id, _)| *packet_id != released);
        }
        let changed = inbound.len() != before || !answered.is_empty();
        for (packet_id, id) in answered {
            inbound.retain(|(known, _)| *known != packet_id);
            inbound.push((packet_id, id));
        }
        changed
    }

    /// The identifiers of the inbound QoS 2 messages the record says were answered with
    /// PUBREC and not released yet (in a cluster; empty otherwise).
    pub(crate) fn recorded_inbound(&self) -> Vec<PacketId> {
        let inner = self.lock();
        inner.replay.as_ref().map_or_else(Vec::new, |replay| {
            replay
                .in_flight
                .inbound
                .iter()
                .map(|(packet_id, _)| *packet_id)
                .collect()
        })
    }

    /// The stream message id of the inbound QoS 2 message `packet_id`, when the record has it.
    pub(crate) fn inbound_message_id(&self, packet_id: PacketId) -> Option<String> {
        let inner = self.lock();
        let replay = inner.replay.as_ref()?;
        replay
            .in_flight
            .inbound
            .iter()
            .find(|(known, _)| *known == packet_id)
            .map(|(_, id)| id.clone())
    }

    /// Ends holding back (a replay done, or not needed): the held messages are returned, but
    /// those the replay brought (stream sequence up to `through`) are left out, and from now
    /// on routing skips the stream's messages up to `through`. Under the lock the caller
    /// queues the returned messages in, through `queue`, so that nothing routed meanwhile
    /// comes before them.
    pub(crate) fn end_hold(
        &self,
        through: u64,
        handed: &HashSet<u64>,
        mut queue: impl FnMut(&Self, &mut SessionInner, Publish, Instant, u64),
    ) {
        let mut inner = self.lock();
        let Some(replay) = inner.replay.as_deref_mut() else {
            return;
        };
        replay.holding = false;
        replay.through = through;
        let held = std::mem::take(&mut replay.held);
        for (origin, publish, since) in held {
            let sequence = origin.sequence();
            if sequence > through && !handed.contains(&sequence) {
                queue(self, &mut inner, publish, since, sequence);
            }
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, SessionInner> {
        crate::lock(&self.inner)
    }

    /// Records the connection behind `control` as the session's latest, if it is still the
    /// one attached (a takeover may have come first).
    pub(crate) fn record_connection(&self, control: &Arc<ControlBox>, info: ConnectionInfo) {
        let mut inner = self.lock();
        let ours = inner
            .attachment
            .as_ref()
            .is_some_and(|attachment| Arc::ptr_eq(&attachment.control, control));
        if ours {
            inner.connection = Some(Box::new(info));
        }
    }

    /// What the admin API lists of the session, copied under its lock.
    pub(crate) fn snapshot(&self) -> SessionSnapshot {
        let inner = self.lock();
        let expiry_interval = match (&inner.saved, &inner.durable, &inner.connection) {
            (Some(saved), _, _) => Some(saved.session_expiry_interval),
            (None, Some(durable), _) => Some(durable.expiry_interval),
            (None, None, Some(connection)) => Some(connection.expiry_interval),
            _ => None,
        };
        SessionSnapshot {
            client_id: self.client_id.clone(),
            control: inner
                .attachment
                .as_ref()
                .map(|attachment| attachment.control.clone()),
            connection: inner.connection.as_deref().cloned(),
            expires_at: inner.expires_at.map(Deadline::instant),
            expiry_interval,
            subscription_count: inner.subscriptions.len(),
            queued: inner.queue_size(),
            saved: inner.saved.as_deref().map(EngineCounts::of),
            subscriptions: Vec::new(),
        }
    }

    /// [`Session::snapshot`] with the subscriptions, sorted by filter.
    pub(crate) fn snapshot_with_subscriptions(&self) -> SessionSnapshot {
        let mut snapshot = self.snapshot();
        let mut subscriptions: Vec<_> = self
            .lock()
            .subscriptions
            .iter()
            .map(|(filter, data)| (filter.clone(), data.clone()))
            .collect();
        subscriptions.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        snapshot.subscriptions = subscriptions;
        snapshot
    }

    /// Queues a message for the client, waiting since `since` (Message Expiry counts from then).
    /// For a persistent session with a store, a QoS 1 or 2 message is written to the store
    /// through `persisting` (under the session's lock, so that the session's entries are
    /// written in the order of their numbers), and kept in memory only while the client is
    /// connected and the queue short.
    pub(crate) fn enqueue(
        &self,
        publish: Publish,
        since: Instant,
        limits: &Limits,
        persisting: Option<&mut Persisting<'_>>,
        origin: &Origin,
    ) -> Enqueued {
        let mut inner = self.lock();
        if let Some(replay) = inner.replay.as_deref_mut() {
            match origin {
                Origin::Stream(seq) if !replay.holding && *seq <= replay.through => {
                    // The replay brought it already.
                    return Enqueued::default();
                }
                Origin::Stream(_) if replay.holding => {
                    replay.held.push((*origin, publish, since));
                    return Enqueued {
                        queued: true,
                        ..Enqueued::default()
                    };
                }
                _ => {}
            }
        }
        if !matches!(origin, Origin::Local) {
            inner.stream_touched = true;
        }
        self.enqueue_locked(
            &mut inner,
            publish,
            since,
            limits,
            persisting,
            origin.sequence(),
        )
    }

    /// [`Session::enqueue`] under the session's lock, taken by the caller; `sequence` is the
    /// message's in the cluster's stream (0: not from it).
    pub(crate) fn enqueue_locked(
        &self,
        inner: &mut SessionInner,
        publish: Publish,
        since: Instant,
        limits: &Limits,
        mut persisting: Option<&mut Persisting<'_>>,
        sequence: u64,
    ) -> Enqueued {
        let online = inner.attachment.is_some();
        if !online && publish.qos == QoS::AtMostOnce {
            // QoS 0 messages are not kept for offline sessions (MQTT 5 §3.1.2.4 allows either).
            return Enqueued {
                queued: false,
                dropped: true,
                full: false,
                congested: false,
            };
        }
        let mut enqueued = Enqueued {
            queued: true,
            dropped: false,
            full: false,
            congested: false,
        };
        let size = message_size(&publish);
        let (len, bytes) = inner.queue_size();
        let over_bytes =
            limits.max_queued_bytes > 0 && bytes + u64::from(size) > limits.max_queued_bytes;
        if len >= limits.max_queued_messages as u64 || over_bytes {
            enqueued.dropped = true;
            enqueued.full = true;
            if !inner.dropping {
                // Once per episode: a stuck subscriber would otherwise log every message.
                inner.dropping = true;
                warn!(client_id = %self.client_id, messages = len, bytes, "queue full: messages are dropped until it drains");
            }
            // Only a message in memory can make room: the oldest one in the store is read
            // when its turn comes.
            match limits.queue_full {
                QueueFullPolicy::DropOldest
                    if limits.max_queued_messages > 0 && !inner.pending.is_empty() =>
                {
                    if let Some(dropped) = inner.pop_pending()
                        && let (Some(stored), Some(persisting)) =
                            (dropped.stored, persisting.as_deref_mut())
                    {
                        persisting.early_lost = true;
                        persisting.store.write(vec![Change::DeleteEntry {
                            client_id: self.client_id.clone(),
                            seq: stored.seq,
                        }]);
                    }
                }
                _ => enqueued.queued = false,
            }
        }
        if enqueued.queued {
            let mut stored = None;
            let mut early = None;
            if publish.qos != QoS::AtMostOnce
                && let Some(persisting) = persisting
                && inner.durable.is_some()
            {
                let message = persisting.message_id();
                let pending_len = inner.pending.len();
                let durable = inner.durable.as_deref_mut().expect("checked above");
                let reference = StoredRef {
                    seq: durable.next_seq,
                    message,
                    size,
                };
                durable.next_seq += 1;
                let ticket = persisting.store.write(vec![Change::AddEntry {
                    client_id: self.client_id.clone(),
                    seq: reference.seq,
                    entry: reference.entry(&publish, None),
                }]);
                durable.last_ticket = ticket;
                persisting.ticket = persisting.ticket.max(ticket);
                if !online || durable.tail_len > 0 || pending_len >= MEMORY_WINDOW {
                    // In the store only; read back when the queue in memory drains.
                    if durable.tail_len == 0 {
                        durable.tail_from = reference.seq;
                    }
                    durable.tail_len += 1;
                    durable.tail_bytes += u64::from(size);
                    persisting.early_lost = true;
                } else {
                    stored = Some(reference);
                    early = persisting.entry_in_memory();
                }
                if stored.is_none() {
                    enqueued.congested = self.congestion(inner, limits);
                    return enqueued;
                }
            }
            inner.push_pending(Queued {
                publish,
                since,
                stored,
                sequence,
                early,
            });
        }
        enqueued.congested = self.congestion(inner, limits);
        if enqueued.queued
            && let Some(attachment) = &inner.attachment
        {
            // Under the lock: the attachment may change as soon as it is released.
            attachment.control.signal(signal::MESSAGES);
        }
        enqueued
    }

    /// Whether publishers should wait for this queue, after a change to it. Also when the
    /// message was dropped: several publishers reaching a full queue at once must all be
    /// slowed, not only the ones that queued past the mark.
    fn congestion(&self, inner: &mut SessionInner, limits: &Limits) -> bool {
        let len = inner.queue_size().0 as usize;
        if len < high_water(limits) {
            inner.stalled = false;
            inner.dropping = false;
        }
        len >= high_water(limits) && !inner.stalled
    }

    /// Whether the queue is at or above its high-water mark.
    pub(crate) fn is_congested(&self, limits: &Limits) -> bool {
        let inner = self.lock();
        inner.queue_size().0 as usize >= high_water(limits) && !inner.stalled
    }
}

/// Three quarters of the queue: above it, publishers to this session are slowed.
fn high_water(limits: &Limits) -> usize {
    (limits.max_queued_messages * 3 / 4).max(1)
}

/// What became of a message offered to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Enqueued {
    /// The message is in the queue.
    pub(crate) queued: bool,
    /// A message was dropped: this one, or the oldest waiting one to make room for it.
    pub(crate) dropped: bool,
    /// The drop was the queue's limit (not a QoS 0 message for an offline session).
    pub(crate) full: bool,
    /// The queue is at its high-water mark (and its client is not stuck): slow the publisher.
    pub(crate) congested: bool,
}

impl Session {
    /// Whether the session has a record ([`Session::record`] is `Some`): it outlives its
    /// connection.
    pub(crate) fn keeps_record(&self) -> bool {
        self.lock().durable.is_some()
    }

    /// The session's record for the store, if it is a persistent one with a store.
    pub(crate) fn record(&self) -> Option<SessionRecord> {
        let inner = self.lock();
        let durable = inner.durable.as_deref()?;
        Some(SessionRecord {
            client_id: self.client_id.to_string(),
            expiry_interval: durable.expiry_interval,
            disconnected_at: durable.disconnected_at,
            subscriptions: inner.subscriptions.to_record(),
            will: durable.will.clone(),
        })
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
        if let Some(connection) = inner.connection.as_deref_mut() {
            connection.disconnected_at = Some(SystemTime::now());
        }
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

    /// Removes the session of `client_id` and returns it, if there is one; `cleanup` runs
    /// under the registry's lock after removing it (see [`Registry::detach`]). For a session
    /// another cluster node takes over.
    pub(crate) fn take(
        &self,
        client_id: &str,
        cleanup: impl FnOnce(&Arc<Session>),
    ) -> Option<Arc<Session>> {
        let mut sessions = self.lock();
        let SessionRef(session) = sessions.take(client_id)?;
        cleanup(&session);
        Some(session)
    }

    pub(crate) fn contains(&self, client_id: &str) -> bool {
        self.lock().contains(client_id)
    }

    /// The session of `client_id`, if there is one.
    pub(crate) fn get(&self, client_id: &str) -> Option<Arc<Session>> {
        self.lock()
            .get(client_id)
            .map(|SessionRef(session)| session.clone())
    }

    /// The sessions whose client id `keep` accepts, looked at under the registry's lock by id
    /// only (no session is locked).
    pub(crate) fn matching(&self, mut keep: impl FnMut(&str) -> bool) -> Vec<Arc<Session>> {
        self.lock()
            .iter()
            .filter(|SessionRef(session)| keep(&session.client_id))
            .map(|SessionRef(session)| session.clone())
            .collect()
    }

    /// Every session, for sweeps.
    pub(crate) fn all(&self) -> Vec<Arc<Session>> {
        self.matching(|_| true)
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use rallymq_codec::QoS;
    use rallymq_session::PublishToken;

    use super::{Deadline, Deliveries};
    use crate::store::QueueEntry;
    use std::time::{Duration, Instant};

    /// An offline session's expiry keeps its instant in 8 bytes: the same instant back, to the
    /// nanosecond; one before the process's first deadline is the first (already past, so the
    /// session expires at the next sweep as it would have).
    #[test]
    fn a_deadline_is_its_instant_in_8_bytes() {
        assert_eq!(size_of::<Option<Deadline>>(), 8);
        // The first deadline sets what they all count from.
        let _ = Deadline::at(Instant::now());
        let now = Instant::now();
        for later in [0, 1, 999_999_999, 3_600_000_000_007] {
            let at = now + Duration::from_nanos(later);
            assert_eq!(Deadline::at(at).instant(), at);
        }
        let far = now + Duration::from_secs(u64::from(u32::MAX - 1));
        assert_eq!(Deadline::at(far).instant(), far);
        if let Some(before) = now.checked_sub(Duration::from_secs(3600)) {
            let first = Deadline::at(before).instant();
            assert!(first <= now && first >= before);
        }
    }

    fn entry(message: u64) -> QueueEntry {
        QueueEntry {
            message,
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: Vec::new(),
            in_flight: None,
            size: 1,
        }
    }

    /// Deliveries are found by token whatever the order they came and go in: acknowledged in
    /// order, out of order, put back out of order (a handover), replaced.
    #[test]
    fn deliveries_are_found_by_token_in_any_order() {
        let mut deliveries = Deliveries::default();
        for token in [1, 2, 3, 5, 4, 0] {
            deliveries.insert(PublishToken(token), (token * 10, entry(token)));
        }
        deliveries.insert(PublishToken(3), (33, entry(3)));
        assert_eq!(deliveries.get(&PublishToken(3)).map(|d| d.0), Some(33));
        assert_eq!(deliveries.remove(&PublishToken(0)).map(|d| d.0), Some(0));
        assert_eq!(deliveries.remove(&PublishToken(4)).map(|d| d.0), Some(40));
        assert_eq!(deliveries.remove(&PublishToken(4)), None);
        assert_eq!(deliveries.remove(&PublishToken(9)), None);
        if let Some(delivery) = deliveries.get_mut(&PublishToken(5)) {
            delivery.0 = 55;
        }
        let left: Vec<u64> = [1, 2, 3, 5]
            .into_iter()
            .filter_map(|token| deliveries.remove(&PublishToken(token)).map(|d| d.0))
            .collect();
        assert_eq!(left, [10, 20, 33, 55]);
        assert!(deliveries.is_empty());
    }
}
