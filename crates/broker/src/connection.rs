//! One client connection: a driver around `rallymq_session::ServerConnection`. It feeds the
//! engine what the transport reads, writes what the engine transmits, arms the engine's timer,
//! and turns the engine's events into broker actions (sessions, routing, retained messages).
//! No protocol rule is decided here.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::future::poll_fn;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant, SystemTime};

use futures::FutureExt;
use rallymq_codec::{
    ConnAckProperties, DisconnectProperties, MqttString, ProtocolVersion, Publish,
    PublishProperties, QoS, ReasonCode, SubAckProperties, Subscribe, TopicFilter, Unsubscribe,
    Will,
};
use rallymq_session::{
    Accept, AckHandle, CloseReason, OutgoingStage, PublishToken, ServerConnection, ServerEvent,
    SessionState, Timestamp,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::ListenerKind;
use crate::acl::{self, ClientAcl};
use crate::auth::Credentials;
use crate::broker::Shared;
use crate::cluster::StreamAck;
use crate::policy::Policy;
use crate::router::{SubscriptionData, copy_for};
use crate::session::{
    Attached, ConnectionInfo, Control, ControlBox, Deadline, Deliveries, Detached, EarlyAck,
    EngineCounts, Persisting, Queued, Session, SessionInner, StoredRef, UNKNOWN_SEQUENCE, Waiting,
    count_down_expiry, delivered_copy, signal,
};
use crate::stats::{Disconnect, Dropped, Hex, Via, version_label, via_label};
use crate::store::{Change, LoadedEntry, SessionRecord, StoreError, StoredWill, Ticket};

/// Most bytes read at a time, into a buffer on the stack of the poll that reads (see
/// `Driver::poll_read`).
const READ_CHUNK: usize = 16 * 1024;

/// Queue entries read from the store at a time. A draining session holds about two pages (one
/// being delivered, one whose acknowledgements wait for a commit): with 1,000 sessions draining
/// 10 M entries the broker peaked at 310 MiB with 256, 225 MiB with 128 and 180 MiB with 64
/// (the issue asks under 200 MB), the drain then a little slower (benches/README.md).
const PAGE: usize = 64;

/// How many pages a session draining its queue from the store reads ahead of the store's
/// writer (see `Durability::paced`): each page leaves its entries' deletions waiting for the
/// writer, a few bytes each, while the writer's commit (two `fdatasync`s and B-tree pages read
/// back through the OS page cache) takes its time.
const PACE_PAGES: usize = 2;

/// How long a QoS 1 delivery from the store may stay in flight before its going in flight is
/// written ([`Driver::record_in_flight`]); checked whenever the connection wakes.
const RECORD_AFTER: Duration = Duration::from_millis(250);

/// How many messages a connection acknowledges early (before what they wrote is durable, see
/// `EarlyAck`) before it waits for the first of them to be durable. A publisher acknowledged
/// early is no longer paced by the store's commits: without this, a store slower than the
/// publishers would pile up changes in memory without bound. A commit normally comes long
/// before (at 4,000 messages/s per publisher, one every 100-250 messages).
const EARLY_LIMIT: u32 = 1024;

/// How long a message that may be acknowledged early waits for its subscribers'
/// acknowledgements before it asks the store to make its write durable: they nearly always come
/// first, and a write nobody asks for waits for the store's writer to gather more with it (its
/// `GATHER`, as long), so more of the entries it adds are deleted in the same commit and never
/// written.
const EARLY_HEAD_START: Duration = Duration::from_millis(5);

/// How long a new connection waits for the connection it takes over to hand its state.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a connection the broker closes keeps reading, and discarding, what the client still
/// sends, once its last packet (a DISCONNECT, a refusing CONNACK) is written and its write side
/// shut down. Closing a socket with unread input makes the kernel answer with a reset: the
/// client's next write fails, and what it had not read yet (the reason code) can be lost.
const LINGER: Duration = Duration::from_secs(2);

/// The client's address, for the logs: kept as an address, not formatted, since every idle
/// connection carries it; and the listener it came in on, for the logs and the metrics.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer {
    pub(crate) addr: SocketAddr,
    pub(crate) via: Via,
    /// Its listener, for the admin API (see [`ConnectionInfo::listener`]).
    pub(crate) listener: u16,
    /// The security policy of the listener it came through: an index into
    /// `Shared::policies`.
    pub(crate) policy: u8,
}

impl Peer {
    /// Whether it came in over WebSockets (`ws` or `wss`).
    pub(crate) fn is_websocket(&self) -> bool {
        self.via.is_some_and(ListenerKind::is_websocket)
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.via {
            Some(ListenerKind::Tcp) => write!(f, "{}", self.addr),
            via => write!(f, "{}:{}", via_label(via), self.addr),
        }
    }
}

/// Serves one client over `io` until it ends.
///
/// Not an `async fn`: one keeps room for its arguments in its state for its whole life, even
/// once they are moved into the driver, and this future is most of an idle connection's memory.
pub(crate) fn serve<IO>(
    io: IO,
    shared: Arc<Shared>,
    peer: Peer,
    certificate_user: Option<Arc<str>>,
) -> impl Future<Output = ()>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    Driver::new(shared, peer, certificate_user).serve(io)
}

/// What handling one engine event leaves for the driver to await.
enum Next {
    Nothing,
    Connect(Box<rallymq_codec::Connect>, bool),
    /// A SUBSCRIBE that sends retained messages or joins shared groups, in a cluster:
    /// answered once the node's copy of the retained messages has caught up with the
    /// cluster's, and the groups' consumers exist.
    Subscribe(Box<Subscribe>),
    /// An event that comes after messages held for the session's record (`Extras::held`):
    /// handled once they are routed.
    AfterHeld(Box<ServerEvent>),
}

/// An inbound message waiting for the write of its session's record (in a cluster).
#[derive(Debug)]
struct HeldPublish {
    publish: Publish,
    ack: Option<AckHandle>,
    /// A QoS 2 message's id in the cluster's stream, from the session's record.
    stream_id: Option<String>,
    /// `stream_id` is new in the record: the reason for the wait.
    fresh: bool,
}

/// Whether a SUBSCRIBE may send retained messages: a filter that is not shared, with Retain
/// Handling other than 2.
fn sends_retained(subscribe: &Subscribe) -> bool {
    subscribe.subscriptions.iter().any(|subscription| {
        !subscription.filter.is_shared()
            && subscription.options.retain_handling != rallymq_codec::RetainHandling::DoNotSend
    })
}

/// What a connection of a broker with a store keeps: the store entries of its deliveries in
/// flight, and what must be durable before its next bytes are written. Boxed: only a broker
/// with a store has it.
#[derive(Debug, Default)]
struct Durability {
    /// Deliveries in flight that are entries in the store: token → (entry number, entry).
    deliveries: Deliveries,
    /// QoS 1 deliveries whose going in flight is not written yet, oldest first, with when
    /// they went: most are acknowledged within milliseconds, and their entry's deletion is
    /// then the only write (see [`Driver::record_in_flight`]).
    unrecorded: VecDeque<(PublishToken, Timestamp)>,
    /// Written before the next bytes go out (a QoS 2 delivery's packet identifier, a PUBREL's
    /// stage, a subscription).
    barrier: Ticket,
    /// The last write of its deliveries' progress (in flight, acknowledged), which paces the
    /// reading of its queue's next pages from the store (`paced`).
    delivered: Ticket,
    /// `delivered` when each of the last [`PACE_PAGES`] pages was read, oldest first: the next
    /// page is read once the store's writer has taken the oldest, so that a session draining
    /// a long queue runs at most that many pages ahead of the writer instead of piling up
    /// changes in memory, and does not stop at every commit.
    paced: [Ticket; PACE_PAGES],
    /// Of `deliveries`, those whose publisher may be acknowledged once they are (see
    /// [`EarlyAck`]): their acknowledgement counts them off.
    early: HashMap<PublishToken, Arc<EarlyAck>>,
    /// Messages this connection published and acknowledged early since `early_mark`, the
    /// ticket of the first of them: at [`EARLY_LIMIT`] it waits for that ticket.
    early_count: u32,
    early_mark: Ticket,
}

impl Durability {
    /// Adds to `changes` the in-flight writes of the QoS 1 deliveries sent by `sent_by` (all
    /// when `None`) that are not acknowledged yet, oldest first.
    fn record_unrecorded(
        &mut self,
        client_id: &Arc<str>,
        sent_by: Option<Timestamp>,
        changes: &mut Vec<Change>,
    ) {
        while let Some(&(token, sent)) = self.unrecorded.front() {
            if sent_by.is_some_and(|sent_by| sent > sent_by) {
                break;
            }
            self.unrecorded.pop_front();
            if let Some((seq, entry)) = self.deliveries.get(&token) {
                changes.push(Change::UpdateEntry {
                    client_id: client_id.clone(),
                    seq: *seq,
                    entry: entry.clone(),
                });
            }
        }
    }
}

struct Driver {
    shared: Arc<Shared>,
    peer: Peer,
    engine: ServerConnection,
    session: Option<Arc<Session>>,
    connection_id: u64,
    control: Arc<ControlBox>,
    /// The connection was taken over: its state went to the new connection.
    taken_over: Option<oneshot::Sender<SessionState>>,
    /// Set when the CONNECT is accepted (the client is counted connected) until the close is
    /// counted: when, in tenths of a second from the broker's start (see [`tenths`]). Four
    /// bytes, beside `peer`'s 36, where a `bool` took the same room.
    connected_at: Option<NonZeroU32>,
    /// Subscribers whose queues this connection's messages filled past their high-water mark:
    /// reading pauses until they drain (back-pressure instead of unbounded buffering).
    /// Boxed, and only while there are some: 8 bytes in every idle connection instead of 24.
    #[allow(clippy::box_collection)]
    congested: Option<Box<Vec<Arc<Session>>>>,
    /// What only some connections have (a store's bookkeeping, a client certificate), boxed:
    /// the connection future is most of an idle connection's memory.
    extras: Option<Box<Extras>>,
}

/// An inbound QoS 1 or 2 message's acknowledgement, waiting until the message is safe.
#[derive(Debug)]
struct PendingAck {
    handle: AckHandle,
    code: ReasonCode,
    /// What routing wrote to the store.
    ticket: Ticket,
    /// Its write to the cluster's stream.
    stream: Option<StreamAck>,
    /// A QoS 1 message every entry of which is in a queue in memory: once all are
    /// acknowledged, it is safe whether or not `ticket` is durable yet.
    early: Option<Arc<EarlyAck>>,
}

impl PendingAck {
    /// Whether it may go out now, durable or not: every subscriber it was stored for has it.
    fn acknowledged_early(&self) -> bool {
        self.early.as_deref().is_some_and(EarlyAck::done)
    }
}

/// In a cluster: a connection's deliveries from the stream in its engine, for its session's
/// record (`Connection::record_stream`).
#[derive(Debug, Default)]
struct StreamDeliveries {
    by_token: HashMap<PublishToken, StreamDelivery>,
    /// QoS 2 deliveries completed past the session's stream cursor, by sequence.
    done: BTreeSet<u64>,
}

/// The most completed deliveries a session's record lists past its cursor: past it (a cursor
/// held back that long), a node resuming the session may send some again.
const MAX_DONE: usize = 10_000;

/// A delivery from the stream in the engine.
#[derive(Debug, Clone, Copy)]
struct StreamDelivery {
    sequence: u64,
    qos: QoS,
    /// Its PUBREC came.
    released: bool,
}

/// What only some connections need.
#[derive(Debug, Default)]
struct Extras {
    /// Present when the broker has a store.
    durability: Option<Durability>,
    /// Inbound QoS 1 and 2 messages to acknowledge once what they wrote is durable (with a
    /// store) and stored by the cluster's stream (in a cluster), in arrival order.
    acks: Vec<PendingAck>,
    /// The name of the client certificate verified in the TLS handshake, if any.
    certificate_user: Option<Arc<str>>,
    /// The user the client authenticated as, when it gave one.
    user: Option<Arc<str>>,
    /// When the client's credential (a token) stops being valid: the connection is closed
    /// then.
    credential_expiry: Option<Timestamp>,
    /// What the client may publish and receive, when an ACL file or its token says.
    acl: Option<ClientAcl>,
    /// The policy's ACL reload `acl` was made from.
    acl_generation: u64,
    /// In a cluster: the sessions bucket's write of the record, which the next bytes
    /// (SUBACK, UNSUBACK, a QoS 2 PUBLISH or PUBREL) wait for.
    record_written: Option<crate::cluster::RecordWritten>,
    /// In a cluster: the NATS server taking the node's NATS subscriptions for a SUBSCRIBE's
    /// filters, which SUBACK waits for ([`crate::cluster::Link::subscriptions_synced`]).
    subscriptions_synced: Option<crate::cluster::SubscriptionsSynced>,
    /// In a cluster: the deliveries in flight that came from the stream.
    stream_deliveries: Option<Box<StreamDeliveries>>,
    /// In a cluster: inbound messages waiting, in order, for the session's record to hold the
    /// stream id of a new QoS 2 message among them.
    held: Vec<HeldPublish>,
    /// The client is another broker's bridge (the protocol level's 0x80 bit, Mosquitto's
    /// `try_private`): its subscriptions take No Local and Retain As Published whatever its
    /// version, as Mosquitto does for bridges, so that what it publishes here is never sent
    /// back to it (a two-way bridge would loop) and retained messages stay retained across.
    bridge: bool,
}

impl Extras {
    /// Holds nothing: the box can go. What a cluster's SUBSCRIBE or a QoS 1 publish left in
    /// it for `settle` is gone once settled, and an idle connection then keeps no box (a
    /// clustered node's idle connections with a subscription cost 1.26x a single node's before).
    fn is_vacant(&self) -> bool {
        // Every field named: one added later must be considered here.
        let Self {
            durability,
            acks,
            certificate_user,
            user,
            credential_expiry,
            acl,
            acl_generation,
            record_written,
            subscriptions_synced,
            stream_deliveries,
            held,
            bridge,
        } = self;
        durability.is_none()
            && acks.is_empty()
            && certificate_user.is_none()
            && user.is_none()
            && credential_expiry.is_none()
            && acl.is_none()
            && *acl_generation == 0
            && record_written.is_none()
            && subscriptions_synced.is_none()
            && stream_deliveries.is_none()
            && held.is_empty()
            && !bridge
    }
}

fn durability(extras: &Option<Box<Extras>>) -> Option<&Durability> {
    extras.as_deref()?.durability.as_ref()
}

fn durability_mut(extras: &mut Option<Box<Extras>>) -> Option<&mut Durability> {
    extras.as_deref_mut()?.durability.as_mut()
}

impl Driver {
    fn new(shared: Arc<Shared>, peer: Peer, certificate_user: Option<Arc<str>>) -> Self {
        let connection_id = shared.next_connection_id.fetch_add(1, Ordering::Relaxed);
        let control = Arc::new(ControlBox::default());
        shared.register_connection(connection_id, &control);
        // Every connection's clock counts from the broker's start: one `Instant` less in each.
        let now = Timestamp::from_since_epoch(shared.started.elapsed());
        let engine = ServerConnection::new(shared.server_config.clone(), now);
        let durability = shared.store.is_some().then(Durability::default);
        let extras = (durability.is_some() || certificate_user.is_some()).then(|| {
            Box::new(Extras {
                durability,
                certificate_user,
                ..Extras::default()
            })
        });
        Self {
            engine,
            shared,
            peer,
            session: None,
            connection_id,
            control,
            taken_over: None,
            connected_at: None,
            congested: None,
            extras,
        }
    }

    fn now(&self) -> Timestamp {
        Timestamp::from_since_epoch(self.shared.started.elapsed())
    }

    /// How long ago `at` (from [`tenths`]) was, to a tenth of a second.
    fn since(&self, at: NonZeroU32) -> Duration {
        let tenths = tenths(self.now()).get().saturating_sub(at.get());
        Duration::from_millis(u64::from(tenths) * 100)
    }

    fn instant(&self, at: Timestamp) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.shared.started + at.since_epoch())
    }

    /// The connection's whole life. An `async` block capturing the driver and the transport,
    /// rather than an `async fn` taking them: an `async fn` moves its arguments into locals,
    /// and its state keeps room for both the arguments and the locals (clippy's
    /// `manual_async_fn` does not know).
    #[allow(clippy::manual_async_fn)]
    fn serve<IO: AsyncRead + AsyncWrite + Unpin>(mut self, mut io: IO) -> impl Future<Output = ()> {
        async move {
            let mut transport_open = true;
            loop {
                let events = self.process_events().await;
                if durability(&self.extras).is_some_and(|d| !d.unrecorded.is_empty()) {
                    self.record_in_flight(false);
                }
                if !events && transport_open {
                    // The store failed what the next bytes depend on (a PUBREL's stage, a QoS 2
                    // delivery's identifier): they are dropped with the connection, unsent.
                    while self.engine.poll_transmit(self.now()).is_some() {}
                    transport_open = false;
                    self.engine.handle_transport_closed(self.now());
                    continue;
                }
                if transport_open {
                    let wrote = match self.flush(&mut io).await {
                        Ok(wrote) => wrote,
                        Err(error) => {
                            debug!(peer = %self.peer, %error, "write failed");
                            transport_open = false;
                            self.engine.handle_transport_closed(self.now());
                            continue;
                        }
                    };
                    if self.engine.is_closed() {
                        // A WebSocket's shutdown writes its Close frame: bounded as any write.
                        // Once per connection: boxed, so that it takes no room in its future.
                        let limit = self.shared.config.limits.send_timeout;
                        let _ = Box::pin(within(limit, io.shutdown())).await;
                        if wrote {
                            // The close wrote a last packet (DISCONNECT, a refusing CONNACK)
                            // for the client to read. Boxed: runs once, and its state would
                            // sit in every connection's task.
                            Box::pin(linger(&mut io)).await;
                        }
                        transport_open = false;
                    } else {
                        // Read first: whatever was routed up to it is by now queued here, in
                        // the engine, or acknowledged.
                        if self.engine.pending_messages() == (0, 0) {
                            // Nothing in flight and everything written: the connection is
                            // quiet, so it keeps no buffers while it waits.
                            self.engine.shrink_buffers();
                            self.record_stream(false);
                        }
                    }
                }
                if self.engine.is_closed()
                    && self.shared.stopping()
                    && self.engine.poll_timeout().is_some()
                {
                    // A will waits on its delay as the broker stops: with a store it is in the
                    // session's record, and the next broker publishes it when due (without one
                    // nothing outlives the broker anyway). This task must not outlive the
                    // broker: it holds the store, and its directory's lock.
                    self.engine.cancel_will();
                }
                // (A closed connection has no credential expiry: its deadline is the engine's.)
                let deadline = self.next_deadline();
                if self.engine.is_closed() && deadline.is_none() {
                    break;
                }
                let control = self.control.clone();
                // The timer's branch comes first so that its instant is computed before the
                // read borrows `self`: no `Instant` local is kept across the wait.
                tokio::select! {
                    _ = tokio::time::sleep_until(self.instant(deadline.unwrap_or_default())),
                        if deadline.is_some() => {
                        self.on_deadline();
                    }
                    read = poll_fn(|cx| self.poll_read(cx, &mut io)), if transport_open => {
                        if matches!(read, Ok(0) | Err(_)) {
                            transport_open = false;
                            self.engine.handle_transport_closed(self.now());
                        }
                    }
                    signals = control.signalled() => self.on_signals(signals),
                }
            }
            self.finish();
        }
    }

    /// The engine's next deadline, or the client's credential expiry if that comes first.
    fn next_deadline(&self) -> Option<Timestamp> {
        let engine = self.engine.poll_timeout();
        let expiry = self
            .extras
            .as_deref()
            .and_then(|extras| extras.credential_expiry)
            .filter(|_| !self.engine.is_closed());
        match (engine, expiry) {
            (Some(engine), Some(expiry)) => Some(engine.min(expiry)),
            (engine, expiry) => engine.or(expiry),
        }
    }

    fn on_deadline(&mut self) {
        let now = self.now();
        self.engine.handle_timeout(now);
        self.end_expired_credential(now);
    }

    /// Closes the connection once its credential has expired: a token is valid for a time,
    /// and a connection must not outlive it (MQTT 5: DISCONNECT 0xA0 Maximum connect time).
    fn end_expired_credential(&mut self, now: Timestamp) {
        let Some(extras) = self.extras.as_deref_mut() else {
            return;
        };
        if extras.credential_expiry.is_some_and(|expiry| expiry <= now) {
            extras.credential_expiry = None;
            info!(peer = %self.peer, user = extras.user.as_deref().unwrap_or(""), "credential expired: disconnecting");
            self.engine.disconnect(
                now,
                ReasonCode::MaximumConnectTime,
                DisconnectProperties::default(),
            );
        }
    }

    fn on_signals(&mut self, signals: u8) {
        if signals & signal::CONTROL != 0 {
            while let Some(control) = self.control.try_recv() {
                self.on_control(control);
            }
        }
        if signals & signal::SHUTDOWN != 0 && !self.engine.is_closed() {
            self.engine.disconnect(
                self.now(),
                ReasonCode::ServerShuttingDown,
                DisconnectProperties::default(),
            );
        }
        // `signal::MESSAGES` and `signal::ACKNOWLEDGED` need nothing here: the loop's next
        // `process_events` drains the session's queue and settles acknowledgements, whatever
        // woke it.
    }

    /// Pauses this publisher until the subscribers it congested drain below their high-water
    /// mark ([`Shared::wait_for_space`]).
    async fn wait_for_subscribers(&mut self) {
        let congested = self.congested.take().map(|sessions| *sessions);
        self.shared
            .wait_for_space(congested.unwrap_or_default())
            .await;
    }

    /// Reads what the transport has, up to `READ_CHUNK`, and hands it to the engine. The
    /// buffer lives on the stack of this one poll: a connection waiting to read owns none,
    /// and no read buffer is allocated. One chunk per wake-up, so that routing (and
    /// back-pressure) keeps up with reading. `Ok(0)` is the end of the transport.
    fn poll_read<IO: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut IO,
    ) -> Poll<std::io::Result<usize>> {
        let mut storage = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut buf = ReadBuf::uninit(&mut storage);
        ready!(Pin::new(io).poll_read(cx, &mut buf))?;
        let read = buf.filled();
        if !read.is_empty() {
            self.shared.stats.bytes_received(read.len());
            self.engine.handle_bytes(self.now(), read);
        }
        Poll::Ready(Ok(read.len()))
    }

    /// Writes what the engine has to send; returns whether there was anything. What the
    /// transport cannot take at once must go on making progress within `send_timeout` (see
    /// `within`); only then
    /// is a timer armed, so the writes of the hot path arm none, and its state is boxed, so it
    /// takes no room in the connection's future.
    async fn flush<IO: AsyncWrite + Unpin>(&mut self, io: &mut IO) -> std::io::Result<bool> {
        let limit = self.shared.config.limits.send_timeout;
        let mut wrote = false;
        while let Some(bytes) = self.engine.poll_transmit(self.now()) {
            self.shared.stats.bytes_sent(bytes.len());
            let mut rest = &bytes[..];
            let written = poll_fn(|cx| Poll::Ready(poll_write_all(cx, io, &mut rest))).await;
            match written {
                Poll::Ready(result) => result?,
                Poll::Pending => Box::pin(write_within(limit, io, rest)).await?,
            }
            wrote = true;
        }
        if wrote {
            let flushed = poll_fn(|cx| Poll::Ready(Pin::new(&mut *io).poll_flush(cx))).await;
            match flushed {
                Poll::Ready(result) => result?,
                Poll::Pending => Box::pin(within(limit, io.flush())).await?,
            }
        }
        Ok(wrote)
    }

    fn on_control(&mut self, control: Control) {
        match control {
            Control::TakeOver { reply, resume } => {
                if self.engine.is_closed() {
                    // Closed already (its close was handled): nothing to end, only to hand on.
                    let _ = reply.send(self.engine.session_state());
                    return;
                }
                self.taken_over = Some(reply);
                if resume {
                    self.engine.cancel_will();
                }
                self.engine.disconnect(
                    self.now(),
                    ReasonCode::SessionTakenOver,
                    DisconnectProperties::default(),
                );
                if !resume {
                    // The session ends here: a will waiting on its delay goes now.
                    self.engine.end_session();
                }
            }
            Control::EndWill { publish } => {
                if publish {
                    self.engine.end_session();
                } else {
                    self.engine.cancel_will();
                }
            }
            Control::Inspect(reply) => {
                let _ = reply.send(EngineCounts::of(&self.engine.session_state()));
            }
            Control::Disconnect => self.engine.disconnect(
                self.now(),
                ReasonCode::AdministrativeAction,
                DisconnectProperties::default(),
            ),
        }
    }

    /// Handles every event the engine has, then feeds it waiting messages; with a store,
    /// waits until what they wrote is durable and acknowledges. Returns `false` when the store
    /// failed a write that the next bytes depend on: they must not be written.
    async fn process_events(&mut self) -> bool {
        self.refresh_acl();
        // An event that waited for held messages (boxed: rare).
        let mut after_held: Option<Box<ServerEvent>> = None;
        loop {
            // Each event is handled without awaiting, so that no event (a `ServerEvent` is
            // hundreds of bytes) is held across an await in every connection's task.
            let next = match after_held.take() {
                Some(event) => self.on_event(*event),
                None => match self.engine.poll_event() {
                    Some(event) => self.on_event(event),
                    None => break,
                },
            };
            match next {
                Next::Nothing => {}
                Next::AfterHeld(event) => {
                    Box::pin(self.route_held()).await;
                    after_held = Some(event);
                }
                Next::Connect(connect, needs_client_id) => {
                    // Boxed: runs once, and its state (takeover, timeout) would otherwise sit
                    // in every idle connection's task.
                    Box::pin(self.on_connect(*connect, needs_client_id)).await;
                }
                Next::Subscribe(subscribe) => {
                    if let Some(cluster) = self.shared.cluster.get()
                        && sends_retained(&subscribe)
                    {
                        Box::pin(cluster.retained_caught_up()).await;
                    }
                    // Before the subscriptions are in place: the node's member task, started
                    // then, finds the groups' consumers made, rather than making them too (two
                    // creations at once can restart a consumer after what was written between).
                    let groups: Vec<TopicFilter> = subscribe
                        .subscriptions
                        .iter()
                        .map(|subscription| subscription.filter.clone())
                        .filter(|filter| filter.is_shared() && self.may_subscribe(filter))
                        .collect();
                    if let Some(cluster) = self.shared.cluster.get()
                        && !groups.is_empty()
                    {
                        Box::pin(cluster.groups_ready(&groups)).await;
                    }
                    self.on_subscribe(*subscribe);
                }
            }
            if self.congested.is_some() {
                // A subscriber's queue reached its high-water mark: the rest of what this read
                // brought waits until it drains. Pausing only the next read let one read's
                // worth of messages (hundreds) from each of several publishers through, past
                // the room between the mark and the queue limit, which then dropped QoS 0.
                // Our own queue is drained first, in case this client is the subscriber.
                self.drain_pending();
                Box::pin(self.wait_for_subscribers()).await;
            }
        }
        if self
            .extras
            .as_deref()
            .is_some_and(|extras| !extras.held.is_empty())
        {
            Box::pin(self.route_held()).await;
            if self.congested.is_some() {
                self.drain_pending();
                Box::pin(self.wait_for_subscribers()).await;
            }
        }
        if self.needs_stored_page() {
            // Boxed: rare, and its state would sit in every connection's task.
            Box::pin(self.read_stored_queue()).await;
        }
        self.drain_pending();
        let waiting = self.extras.as_deref().is_some_and(|extras| {
            !extras.acks.is_empty()
                || extras.record_written.is_some()
                || extras.subscriptions_synced.is_some()
                || extras
                    .durability
                    .as_ref()
                    .is_some_and(|durability| durability.barrier.0 > 0)
        });
        if waiting {
            Box::pin(self.settle()).await
        } else {
            true
        }
    }

    /// Waits until the store has made durable what this connection wrote and the cluster's
    /// stream has stored its messages, then acknowledges the messages waiting for it, in
    /// order: with success, or (MQTT 5) with the failure met (0x97 when the disk is full, 0x80
    /// otherwise); an MQTT 3 publisher cannot be told, and is disconnected. A QoS 1 message
    /// whose every stored entry its subscribers acknowledged needs nothing durable
    /// ([`EarlyAck`]): it goes as soon as they have, or its ticket is durable, whichever comes
    /// first. Acknowledges what is decided once the first is, and leaves the rest for the
    /// next pass (woken at once, so that what is acknowledged is written meanwhile). Returns
    /// `false` if the barrier for the next bytes failed.
    async fn settle(&mut self) -> bool {
        let Some(extras) = self.extras.as_deref_mut() else {
            return true;
        };
        let acks = std::mem::take(&mut extras.acks);
        let barrier = extras
            .durability
            .as_mut()
            .map_or(Ticket::default(), |durability| {
                std::mem::take(&mut durability.barrier)
            });
        let record_written = extras.record_written.take();
        let subscriptions_synced = extras.subscriptions_synced.take();
        // Up to the first that may go early, every ticket up to the last is decided once it
        // is; the rest answer at once.
        let head = acks
            .iter()
            .take_while(|ack| ack.early.is_none())
            .map(|ack| ack.ticket)
            .fold(barrier, Ticket::max);
        if let Some(synced) = subscriptions_synced {
            synced.await;
        }
        let _ = self.shared.durable(head).await;
        let mut barrier_held = self.shared.durable(barrier).await.is_ok();
        if let Some(written) = record_written
            && !matches!(written.await, Ok(Ok(_)))
        {
            // The cluster does not have what the next bytes tell the client it has.
            barrier_held = false;
        }
        let mut signals = 0;
        if let Some(first) = acks.first()
            && let Some(early) = &first.early
        {
            signals = self.early_or_durable(early, first.ticket).await;
        }
        let mut early_room = match durability_mut(&mut self.extras) {
            Some(durability) if durability.early_count >= EARLY_LIMIT => {
                let mark = std::mem::take(&mut durability.early_mark);
                durability.early_count = 0;
                let _ = self.shared.durable(mark).await;
                EARLY_LIMIT
            }
            Some(durability) => EARLY_LIMIT - durability.early_count,
            None => 0,
        };
        let v5 = self.engine.version().is_some_and(ProtocolVersion::is_v5);
        let mut settled = Vec::with_capacity(acks.len());
        let mut acks = acks.into_iter();
        let mut undecided = None;
        for ack in acks.by_ref() {
            let decided = if early_room > 0 && ack.acknowledged_early() {
                early_room -= 1;
                if let Some(durability) = durability_mut(&mut self.extras) {
                    if durability.early_count == 0 {
                        durability.early_mark = ack.ticket;
                    }
                    durability.early_count += 1;
                }
                // Every recipient has it: a failed write does not concern it.
                Ok(())
            } else {
                match self.shared.durable(ack.ticket).now_or_never() {
                    Some(decided) => decided,
                    None => {
                        undecided = Some(ack);
                        break;
                    }
                }
            };
            let stored = match decided {
                Ok(()) => match ack.stream {
                    Some(stream) => {
                        // A QoS 2 message the stream may have stored though the write failed
                        // (sent, then no answer in time) is not refused: the client would
                        // take it for not delivered and may publish it again as a new
                        // message. Its connection is closed instead, and the resend (DUP,
                        // same identifier, same stream id) settles it.
                        let unknown = ack.handle.qos() == QoS::ExactlyOnce && stream.sent();
                        stream.stored().await.map_err(|error| {
                            debug!(%error, "a publish not acknowledged");
                            if unknown {
                                None
                            } else {
                                Some(ReasonCode::UnspecifiedError)
                            }
                        })
                    }
                    None => Ok(()),
                },
                Err(StoreError::Full(_)) => Err(Some(ReasonCode::QuotaExceeded)),
                Err(_) => Err(Some(ReasonCode::UnspecifiedError)),
            };
            settled.push((ack.handle, ack.code, stored));
        }
        if let Some(undecided) = undecided {
            // Put back, in order.
            let extras = self.extras.get_or_insert_default();
            let later = std::mem::take(&mut extras.acks);
            extras.acks = std::iter::once(undecided)
                .chain(acks)
                .chain(later)
                .collect();
            signals |= signal::ACKNOWLEDGED;
        }
        if signals != 0 {
            // Handled by the connection's loop, after it has written what is settled.
            self.control.signal(signals);
        }
        for (handle, success, stored) in settled {
            match stored {
                Ok(()) => self.engine.acknowledge(handle, success),
                Err(Some(code)) if v5 => self.engine.acknowledge(handle, code),
                Err(_) => {
                    // MQTT 3 has no negative acknowledgement: closing is how it is told.
                    self.engine.handle_transport_closed(self.now());
                    return barrier_held;
                }
            }
        }
        if self.extras.as_deref().is_some_and(Extras::is_vacant) {
            self.extras = None;
        }
        barrier_held
    }

    /// Waits until every entry `early` counts is acknowledged or `ticket` is decided (asked of
    /// the store only after [`EARLY_HEAD_START`]), or the connection is signalled for something
    /// else; returns those other signals, for the connection's loop.
    async fn early_or_durable(&self, early: &EarlyAck, ticket: Ticket) -> u8 {
        let durable = async {
            tokio::time::sleep(EARLY_HEAD_START).await;
            self.shared.durable(ticket).await
        };
        tokio::pin!(durable);
        loop {
            if early.done() {
                return 0;
            }
            tokio::select! {
                _ = &mut durable => return 0,
                signals = self.control.signalled() => {
                    let others = signals & !signal::ACKNOWLEDGED;
                    if others != 0 {
                        return others;
                    }
                }
            }
        }
    }

    /// Routes an inbound message, and acknowledges it or queues its acknowledgement until
    /// what routing wrote is safe (`settle`).
    /// `stream_id`: in a cluster, the id a QoS 2 message goes to the stream under (from the
    /// session's record), so that a resend of it is dropped there.
    fn route_publish(
        &mut self,
        publish: Publish,
        ack_handle: Option<AckHandle>,
        stream_id: Option<&str>,
    ) {
        // A QoS 2 identifier is committed with the message, before PUBREC: a publisher
        // resending after a crash is not delivered twice.
        let inbound = match &ack_handle {
            Some(ack) if ack.qos() == QoS::ExactlyOnce => {
                self.durable_client_id()
                    .map(|client_id| Change::PutInbound {
                        client_id,
                        packet_id: ack.packet_id(),
                    })
            }
            _ => None,
        };
        let sender = self.session.as_deref().map(|s| &*s.client_id);
        let outcome = self
            .shared
            .publish_routed(sender, &publish, inbound, stream_id);
        let matched = outcome.queued;
        let ticket = outcome.ticket;
        let stream = outcome.stream;
        if !outcome.congested.is_empty() {
            let congested = self.congested.get_or_insert_default();
            congested.extend(outcome.congested);
        }
        // The message is safe once routed (queued for every subscriber) and, with a
        // store, once what routing wrote is durable (`settle`).
        if let Some(ack) = ack_handle {
            let v5 = self.engine.version().is_some_and(ProtocolVersion::is_v5);
            let code = match (matched, outcome.full) {
                // Every matching subscriber's queue was full: nobody got it (MQTT 5
                // lets PUBACK and PUBREC say so).
                (0, 1..) if v5 => ReasonCode::QuotaExceeded,
                // In a cluster a message in the stream is routed by every node,
                // this one too: who matches is not known here.
                (0, _) if v5 && stream.is_none() => ReasonCode::NoMatchingSubscribers,
                _ => ReasonCode::Success,
            };
            // Acknowledgements go out in the order of their messages (MQTT-4.6.0-2):
            // behind any still waiting.
            let waits = stream.is_some()
                || self
                    .extras
                    .as_deref()
                    .is_some_and(|extras| extras.durability.is_some() || !extras.acks.is_empty());
            if waits {
                // Not a retained message (its update must be committed), nor QoS 2 (its
                // identifier must), nor one in the cluster's stream.
                let early = outcome.early.filter(|_| {
                    ack.qos() == QoS::AtLeastOnce && !publish.retain && stream.is_none()
                });
                if let Some(early) = &early {
                    early.arm(&self.control);
                }
                self.extras.get_or_insert_default().acks.push(PendingAck {
                    handle: ack,
                    code,
                    ticket,
                    stream,
                    early,
                });
            } else {
                self.engine.acknowledge(ack, code);
            }
        }
    }

    /// Writes the session's record, which holds the stream ids of the held QoS 2 messages,
    /// then routes the held messages in their order. A message whose id the cluster does not
    /// have is not written to the stream: it is refused (MQTT 5: 0x80), or its client, which
    /// MQTT 3 cannot tell, disconnected.
    async fn route_held(&mut self) {
        let Some(held) = self
            .extras
            .as_deref_mut()
            .map(|extras| std::mem::take(&mut extras.held))
        else {
            return;
        };
        let recorded = match self
            .session
            .clone()
            .and_then(|session| self.shared.save_cluster_record(&session))
        {
            // Not written because another claim came meanwhile is not recorded: the new
            // owner resumes from its own record, without this message's stream id, and
            // writes a resend of it (DUP) to the stream under a new one.
            Some(written) => matches!(written.await, Ok(Ok(crate::cluster::Recorded::Stored))),
            None => true,
        };
        for HeldPublish {
            publish,
            ack,
            stream_id,
            fresh,
        } in held
        {
            match ack {
                Some(ack) if fresh && !recorded => {
                    debug!("an inbound QoS 2 message's stream id not in the session's record");
                    if let Some(session) = &self.session {
                        session.record_inbound(Vec::new(), Some(ack.packet_id()));
                    }
                    if self.engine.version().is_some_and(ProtocolVersion::is_v5) {
                        self.engine.acknowledge(ack, ReasonCode::UnspecifiedError);
                    } else {
                        self.engine.handle_transport_closed(self.now());
                        return;
                    }
                }
                _ => self.route_publish(publish, ack, stream_id.as_deref()),
            }
        }
    }

    fn on_event(&mut self, event: ServerEvent) -> Next {
        if !matches!(event, ServerEvent::Message(_))
            && self
                .extras
                .as_deref()
                .is_some_and(|extras| !extras.held.is_empty())
        {
            return Next::AfterHeld(Box::new(event));
        }
        match event {
            ServerEvent::ConnectReceived {
                connect,
                needs_client_id,
            } => return Next::Connect(connect, needs_client_id),
            ServerEvent::Message(message) => {
                let publish = message.publish;
                let stats = &self.shared.stats;
                stats.publish_received(publish.qos, publish.payload.len());
                if let Some(refusal) = self.refuse_publish(&publish) {
                    stats.dropped(Dropped::refused_with(refusal), 1);
                    // Not routed; MQTT 3 has no negative acknowledgement, so it is acknowledged
                    // and dropped there, as Mosquitto does.
                    if let Some(ack) = message.ack {
                        let v5 = self.engine.version().is_some_and(ProtocolVersion::is_v5);
                        let code = if v5 { refusal } else { ReasonCode::Success };
                        self.engine.acknowledge(ack, code);
                    }
                    return Next::Nothing;
                }
                let held = self
                    .extras
                    .as_deref()
                    .is_some_and(|extras| !extras.held.is_empty());
                // In a cluster, a persistent session's new QoS 2 message gets its stream id in
                // the session's record before the stream has it: a resend (DUP) to another
                // node, after this one died between the two writes, is written under the same
                // id, which the stream drops. It and what follows it wait for the record.
                // One the record has already (answered before, here or on a node that died)
                // goes under the same id.
                let mut fresh = false;
                let stream_id = match (&message.ack, &self.session, self.shared.cluster.get()) {
                    (Some(ack), Some(session), Some(cluster)) if ack.qos() == QoS::ExactlyOnce => {
                        let recorded = session.inbound_message_id(ack.packet_id());
                        if recorded.is_none() && session.keeps_record() {
                            let id = cluster.fresh_message_id();
                            session.record_inbound(vec![(ack.packet_id(), id.clone())], None);
                            fresh = true;
                            Some(id)
                        } else {
                            recorded
                        }
                    }
                    _ => None,
                };
                if let (Some(ack), Some(session)) = (&message.ack, &self.session)
                    && ack.qos() == QoS::ExactlyOnce
                    && self.shared.cluster.get().is_some()
                {
                    debug!(
                        client_id = %session.client_id,
                        packet_id = ack.packet_id().get(),
                        dup = publish.dup,
                        stream_id = stream_id.as_deref().unwrap_or(""),
                        fresh,
                        "cluster: an inbound QoS 2 message"
                    );
                }
                if held || fresh {
                    self.extras.get_or_insert_default().held.push(HeldPublish {
                        publish,
                        ack: message.ack,
                        stream_id,
                        fresh,
                    });
                } else {
                    self.route_publish(publish, message.ack, stream_id.as_deref());
                }
            }
            ServerEvent::Subscribe(subscribe) => {
                let joins_groups = subscribe
                    .subscriptions
                    .iter()
                    .any(|subscription| subscription.filter.is_shared());
                if (sends_retained(&subscribe) || joins_groups)
                    && self.shared.cluster.get().is_some()
                {
                    return Next::Subscribe(Box::new(subscribe));
                }
                self.on_subscribe(subscribe);
            }
            ServerEvent::Unsubscribe(unsubscribe) => self.on_unsubscribe(unsubscribe),
            ServerEvent::DeliveryAcknowledged(outcome)
            | ServerEvent::DeliveryCompleted(outcome) => {
                let delivered = durability_mut(&mut self.extras).and_then(|durability| {
                    if !durability.early.is_empty()
                        && let Some(early) = durability.early.remove(&outcome.token)
                    {
                        early.entry_acknowledged();
                    }
                    durability.deliveries.remove(&outcome.token)
                });
                if let (Some((seq, _)), Some(session)) = (delivered, &self.session) {
                    let ticket = self.shared.write(vec![Change::DeleteEntry {
                        client_id: session.client_id.clone(),
                        seq,
                    }]);
                    if let Some(durability) = durability_mut(&mut self.extras) {
                        durability.delivered = ticket;
                    }
                }
                if let Some(tracked) = self
                    .extras
                    .as_deref_mut()
                    .and_then(|extras| extras.stream_deliveries.as_deref_mut())
                    && let Some(delivery) = tracked.by_token.remove(&outcome.token)
                {
                    if delivery.qos == QoS::ExactlyOnce && tracked.done.len() < MAX_DONE {
                        tracked.done.insert(delivery.sequence);
                    }
                    self.record_stream(false);
                }
            }
            ServerEvent::DeliveryReleased(token) => {
                let released = durability_mut(&mut self.extras).and_then(|durability| {
                    let (seq, entry) = durability.deliveries.get_mut(&token)?;
                    let (packet_id, _) = entry.in_flight?;
                    entry.in_flight = Some((packet_id, OutgoingStage::Released));
                    Some((*seq, entry.clone()))
                });
                if let (Some((seq, entry)), Some(session)) = (released, &self.session) {
                    // Durable before the PUBREL goes out: after a crash the message is
                    // released, never delivered a second time.
                    let ticket = self.shared.write(vec![Change::UpdateEntry {
                        client_id: session.client_id.clone(),
                        seq,
                        entry,
                    }]);
                    self.raise_barrier(ticket);
                }
                if let Some(delivery) = self
                    .extras
                    .as_deref_mut()
                    .and_then(|extras| extras.stream_deliveries.as_deref_mut())
                    .and_then(|tracked| tracked.by_token.get_mut(&token))
                {
                    delivery.released = true;
                    self.record_stream(true);
                }
            }
            ServerEvent::MessageReleased(packet_id) => {
                if let Some(client_id) = self.durable_client_id() {
                    // Durable before PUBCOMP frees the identifier: after a crash, a new message
                    // the client publishes under it must not be taken for the old one's resend
                    // (and dropped).
                    let ticket = self.shared.write(vec![Change::DeleteInbound {
                        client_id,
                        packet_id,
                    }]);
                    self.raise_barrier(ticket);
                }
                // In a cluster, the record forgets the identifier before PUBCOMP frees it for
                // the client: a new message under it must not be taken for the old one's
                // resend.
                if let Some(session) = self.session.clone()
                    && self.shared.cluster.get().is_some()
                    && session.record_inbound(Vec::new(), Some(packet_id))
                {
                    self.save_cluster_record_before_next_bytes(&session);
                }
            }
            ServerEvent::Auth(_) => {
                // Only AUTH in an exchange gets here (the engine makes one without an
                // Authentication Method in CONNECT a protocol error, MQTT-4.12.0-7), and no
                // method is supported: its CONNECT is refused with 0x8C too (MQTT-4.12.0-1).
                self.engine.disconnect(
                    self.now(),
                    ReasonCode::BadAuthenticationMethod,
                    DisconnectProperties::default(),
                );
            }
            ServerEvent::WillDue(will) => {
                let publish = will_message(&will);
                let sender = self.session.as_deref().map(|s| &*s.client_id);
                self.shared.publish(sender, &publish);
                if let (Some(cluster), Some(sender)) = (self.shared.cluster.get(), sender) {
                    cluster.forget_will(sender, self.connection_id);
                }
                if let Some(session) = &self.session {
                    let published = {
                        let mut inner = session.lock();
                        inner.will_waiter = None;
                        let offline = inner.attachment.is_none();
                        match inner.durable.as_deref_mut() {
                            Some(durable) if offline => durable.will.take().is_some(),
                            _ => false,
                        }
                    };
                    if published {
                        self.shared.save_record(session);
                    }
                }
            }
            ServerEvent::Closed(reason) => self.on_closed(reason),
            _ => {}
        }
        Next::Nothing
    }

    /// Why a PUBLISH from this client is not routed, if it is not: its topic is over the
    /// limits of levels or length.
    fn refuse_publish(&self, publish: &Publish) -> Option<ReasonCode> {
        let topic = publish.topic.as_ref()?;
        if !self.shared.config.limits.allows_topic(topic.as_str()) {
            return Some(ReasonCode::TopicNameInvalid);
        }
        if !self.may_publish(topic) {
            debug!(peer = %self.peer, topic = topic.as_str(), "publish not authorized");
            return Some(ReasonCode::NotAuthorized);
        }
        None
    }

    /// The security policy of the listener this client came through.
    fn policy(&self) -> &Policy {
        let policies = &self.shared.policies;
        policies
            .get(usize::from(self.peer.policy))
            .unwrap_or(&policies[0])
    }

    /// Takes the reloaded ACL's rules if the policy's file was reloaded since this client's
    /// were made.
    fn refresh_acl(&mut self) {
        let Some(extras) = self.extras.as_deref() else {
            return;
        };
        let (Some(current), Some(session)) = (&extras.acl, &self.session) else {
            return;
        };
        let policy = self.policy();
        let generation = policy.acl_generation();
        if generation == extras.acl_generation {
            return;
        }
        let acl = policy.current_acl(current, extras.user.as_deref(), &session.client_id);
        let extras = self.extras.as_deref_mut().expect("checked above");
        extras.acl = Some(acl);
        extras.acl_generation = generation;
    }

    fn client_acl(&self) -> Option<&ClientAcl> {
        self.extras.as_deref()?.acl.as_ref()
    }

    /// Whether this client may subscribe to `filter`, as far as its limits and ACL go.
    fn may_subscribe(&self, filter: &TopicFilter) -> bool {
        self.shared.config.limits.allows_topic(filter.as_str())
            && self
                .client_acl()
                .is_none_or(|acl| acl.can_subscribe(filter))
    }

    /// Whether this client may publish to `topic` (its will included).
    fn may_publish(&self, topic: &rallymq_codec::TopicName) -> bool {
        match self.client_acl() {
            Some(acl) => acl.can_publish(topic),
            None => acl::everyone_may_publish(topic),
        }
    }

    /// Whether this client may be sent a message published to `topic`.
    fn may_receive(&self, topic: &rallymq_codec::TopicName) -> bool {
        match self.client_acl() {
            Some(acl) => acl.can_receive(topic),
            None => acl::everyone_may_receive(topic),
        }
    }

    /// The client id of this connection's session if it is kept in the store.
    fn durable_client_id(&self) -> Option<Arc<str>> {
        let session = self.session.as_ref()?;
        session
            .lock()
            .durable
            .is_some()
            .then(|| session.client_id.clone())
    }

    /// In a cluster: moves the session's stream cursor as far as its deliveries allow (to
    /// just before the oldest stream message not yet delivered and acknowledged, at most the
    /// node's routed place), and sets what its record says of its QoS 2 deliveries past it;
    /// with `wait`, the record is in the sessions bucket before the next bytes go out (a QoS
    /// 2 PUBLISH, so that a node resuming the session sends it again under its identifier; a
    /// PUBREL, so that it does not send it again at all).
    fn record_stream(&mut self, wait: bool) {
        let (Some(cluster), Some(session)) = (self.shared.cluster.get(), self.session.clone())
        else {
            return;
        };
        // Read first: whatever was routed up to it is by now waiting here, in the engine, or
        // acknowledged.
        let position = cluster.routed_position();
        let (in_flight, queued) = self.engine.pending_messages();
        // Most idle connections never get a delivery from the stream: allocating `Extras` and
        // an empty `StreamDeliveries` for each of them cost a clustered node ~0.4 KiB per
        // connection. An empty one on the stack allocates nothing.
        let mut none_tracked = StreamDeliveries::default();
        let tracked = match self
            .extras
            .as_deref_mut()
            .and_then(|extras| extras.stream_deliveries.as_deref_mut())
        {
            Some(tracked) => tracked,
            None => &mut none_tracked,
        };
        let oldest_in_engine = tracked
            .by_token
            .values()
            .filter(|delivery| !delivery.released)
            .map(|delivery| delivery.sequence)
            .min();
        let known = in_flight + queued <= tracked.by_token.len()
            && oldest_in_engine != Some(UNKNOWN_SEQUENCE);
        let oldest = match session.oldest_waiting() {
            Waiting::Unknown => None,
            Waiting::Nothing => Some(oldest_in_engine),
            Waiting::Oldest(sequence) => {
                Some(Some(oldest_in_engine.map_or(sequence, |e| e.min(sequence))))
            }
        };
        if let (true, Some(oldest)) = (known, oldest) {
            let cursor = oldest.map_or(position, |oldest| position.min(oldest - 1));
            session.stream_cursor.fetch_max(cursor, Ordering::AcqRel);
        }
        let cursor = session.stream_cursor.load(Ordering::Acquire);
        tracked.done.retain(|sequence| *sequence > cursor);
        let (mut published, mut released) = (Vec::new(), Vec::new());
        for (token, delivery) in &tracked.by_token {
            let packet_id = self.engine.delivery_packet_id(*token);
            match (delivery.qos, packet_id) {
                (QoS::ExactlyOnce, Some(packet_id)) if delivery.released => {
                    released.push((delivery.sequence, packet_id));
                }
                (QoS::ExactlyOnce, Some(packet_id)) => {
                    published.push((delivery.sequence, packet_id));
                }
                _ => {}
            }
        }
        session.set_outgoing_record(published, released, tracked.done.iter().copied().collect());
        if wait {
            self.save_cluster_record_before_next_bytes(&session);
        }
    }

    /// Writes the session's record (to the store; in a cluster, to the sessions bucket too)
    /// and makes both writes a condition for writing the next bytes.
    fn save_record_before_next_bytes(&mut self, session: &Session) {
        let (ticket, written) = self.shared.save_record_everywhere(session);
        self.raise_barrier(ticket);
        if let Some(written) = written {
            self.extras.get_or_insert_default().record_written = Some(written);
        }
    }

    /// Writes the session's record to the cluster's sessions bucket only (the store's record
    /// has not changed) and makes that write a condition for writing the next bytes.
    fn save_cluster_record_before_next_bytes(&mut self, session: &Session) {
        if let Some(written) = self.shared.save_cluster_record(session) {
            self.extras.get_or_insert_default().record_written = Some(written);
        }
    }

    /// Makes `ticket` a condition for writing the next bytes.
    fn raise_barrier(&mut self, ticket: Ticket) {
        if let Some(durability) = durability_mut(&mut self.extras) {
            durability.barrier = durability.barrier.max(ticket);
        }
    }

    /// Refuses a CONNECT with `code`, and logs it with what the client said it was (the
    /// refusal is counted when the connection closes, as one the engine makes itself is).
    fn refuse(&mut self, connect: &rallymq_codec::Connect, code: ReasonCode) {
        let user = connect.username.as_ref().map(|name| name.as_str());
        info!(
            client_id = %connect.client_id.as_str(),
            peer = %self.peer.addr,
            listener = via_label(self.peer.via),
            protocol = version_label(connect.protocol),
            user,
            reason_code = %Hex(code),
            reason = ?code,
            "connection refused"
        );
        let _ = self.engine.refuse(code, ConnAckProperties::default());
    }

    async fn on_connect(&mut self, connect: rallymq_codec::Connect, needs_client_id: bool) {
        let now = self.now();
        let version = connect.protocol;
        if connect.properties.authentication_method.is_some() {
            self.refuse(&connect, ReasonCode::BadAuthenticationMethod);
            return;
        }
        // Who the client is, before it can touch a session: a refused CONNECT takes nothing
        // over (Mosquitto and EMQX check credentials first too).
        let certificate_user = self
            .extras
            .as_deref()
            .and_then(|extras| extras.certificate_user.as_deref())
            .map(str::to_owned);
        let credentials = Credentials {
            username: connect
                .username
                .as_ref()
                .map(|name| name.as_str().to_owned()),
            password: connect.password.clone(),
            client_id: connect.client_id.as_str().to_owned(),
            certificate_user,
        };
        let identity = match self
            .policy()
            .authenticator
            .authenticate_off_thread(self.peer.addr, credentials)
            .await
        {
            Ok(identity) => identity,
            Err(refusal) => {
                self.refuse(&connect, refusal.reason_code());
                return;
            }
        };
        if identity.user.is_some() || identity.expires_at.is_some() {
            // The clock read again: checking the credential took time (a password hash, a
            // queue of them), and the connection must not end before the token does.
            let checked_at = self.now();
            let extras = self.extras.get_or_insert_default();
            extras.user = identity.user.as_deref().map(Arc::from);
            extras.credential_expiry = identity.expires_at.map(|at| {
                let left = at.duration_since(SystemTime::now()).unwrap_or_default();
                checked_at + left
            });
        }
        if connect.bridge {
            self.extras.get_or_insert_default().bridge = true;
        }
        let limits = &self.shared.config.limits;
        let requested_expiry = if version.is_v5() {
            connect.properties.session_expiry_interval.unwrap_or(0)
        } else if connect.clean_start {
            0
        } else {
            u32::MAX
        };
        let granted_expiry = requested_expiry.min(limits.max_session_expiry);

        // Take over a live connection of the same client id (MQTT-3.1.4-2), and settle a will
        // still waiting on its delay. Attaching is atomic per client id: from here on this
        // connection is the session's, and a later CONNECT takes it over in turn.
        // In a cluster, the client id is claimed in the sessions bucket first: one connection
        // of it in the whole cluster (see `cluster::sessions`).
        // An id assigned to an MQTT 5 client whose session outlives its connection is claimed
        // like any other, so that the client resumes with it on any node. It carries the
        // node's run (see `Link::fresh_client_id`): no node assigns it again, even after a
        // restart that kept the sessions. Other assigned ids are never used again by their
        // client, and are not claimed.
        let claimed_assigned = match self.shared.cluster.get() {
            Some(cluster) if needs_client_id && version.is_v5() && granted_expiry > 0 => {
                Some(cluster.fresh_client_id())
            }
            _ => None,
        };
        let cluster = self
            .shared
            .cluster
            .get()
            .filter(|_| !needs_client_id || claimed_assigned.is_some());
        let claimed_id = claimed_assigned
            .as_deref()
            .unwrap_or(connect.client_id.as_str());
        let claim = match cluster {
            Some(cluster) => {
                let fresh = SessionRecord {
                    client_id: claimed_id.to_owned(),
                    expiry_interval: granted_expiry,
                    disconnected_at: None,
                    subscriptions: Vec::new(),
                    will: None,
                };
                match Box::pin(cluster.sessions().claim(fresh, !connect.clean_start)).await {
                    Ok(claim) => Some(claim),
                    Err(error) => {
                        warn!(%error, "connection refused");
                        self.refuse(&connect, ReasonCode::ServerUnavailable);
                        return;
                    }
                }
            }
            None => None,
        };
        let registry = &self.shared.registry;
        let attach = || registry.attach(claimed_id, &self.control, !connect.clean_start);
        let Attached {
            session,
            existed,
            previous_state,
            will_waiter,
        } = if needs_client_id && claim.is_none() {
            // One no session has (MQTT-3.1.3-6): a client may have connected as rallymq-N.
            // In a cluster the node's id is in it, so that no two nodes assign the same one.
            let base = match self.shared.cluster.get() {
                Some(cluster) => format!("rallymq-{}-{}", cluster.node_id(), self.connection_id),
                None => format!("rallymq-{}", self.connection_id),
            };
            registry.attach_assigned(&base, &self.control)
        } else if let (Some(cluster), Some(claim)) = (cluster, &claim) {
            let session = |attached: &Attached| attached.session.clone();
            match cluster
                .sessions()
                .attach(registry, claimed_id, claim, attach, session)
            {
                Some(attached) => attached,
                None => {
                    // A later CONNECT of the same client id has the session already.
                    self.refuse(&connect, ReasonCode::ServerBusy);
                    return;
                }
            }
        } else {
            attach()
        };
        let client_id: &str = &session.client_id;
        // Read before the ACL: a reload in between is then seen at the next check.
        let generation = self.policy().acl_generation();
        let client_acl = self.policy().client_acl(&identity, client_id);
        if let Some(client_acl) = client_acl {
            let extras = self.extras.get_or_insert_default();
            extras.acl = Some(client_acl);
            extras.acl_generation = generation;
        }
        // A will the client may not publish is dropped, and the CONNECT accepted (as
        // Mosquitto does): it would be refused when sent.
        let will_allowed = connect
            .will
            .as_ref()
            .is_none_or(|will| self.may_publish(&will.topic));
        // Letters, digits and '-' only: a valid MQTT string.
        let assigned = needs_client_id
            .then(|| MqttString::new(client_id.to_owned()).expect("a generated id is valid"));
        // Attached: shutdown reaches the connection through its session from now on.
        self.shared
            .unregister_connection(self.connection_id, &self.control);
        if let Some(previous_state) = previous_state
            && let Ok(Ok(state)) = tokio::time::timeout(TAKEOVER_TIMEOUT, previous_state).await
        {
            let mut inner = session.lock();
            // The session outlives the old connection only if that one asked for it: Clean
            // Session 1 (MQTT-3.1.2-6 in 3.1.1) or Session Expiry 0 ends it with the
            // connection, and the new one starts afresh.
            inner.persistent = state.session_expiry_interval > 0;
            inner.saved = Some(Box::new(state));
        }
        if let Some(waiter) = will_waiter {
            let _ = waiter.send(Control::EndWill {
                publish: connect.clean_start,
            });
        }

        let existed = match (cluster, &claim) {
            (Some(cluster), Some(claim)) => {
                let resume = !connect.clean_start;
                let sessions = cluster.sessions();
                Box::pin(sessions.take_over(&self.shared, &session, claim, resume, existed)).await
                    || existed
            }
            _ => existed,
        };

        // A cluster's sessions bucket keeps the record (expiry, will) without a store too.
        let has_store = self.shared.store.is_some();
        let keeps_record = has_store || self.shared.cluster.get().is_some();
        let (mut resumed, handed_over) = {
            let mut inner = session.lock();
            let resumable = existed && inner.persistent && !connect.clean_start;
            if !resumable {
                // A new session (MQTT-3.1.2-4): nothing of the old one survives.
                let waiting = inner.queue_size().0;
                self.shared.stats.dropped(Dropped::SessionEnded, waiting);
                inner.clear_pending();
                inner.saved = None;
                inner.subscriptions.clear();
                inner.durable = None;
            }
            inner.persistent = granted_expiry > 0;
            inner.expires_at = None;
            inner.version = Some(version);
            if keeps_record && (granted_expiry > 0 || inner.durable.is_some()) {
                let durable = inner.durable.get_or_insert_default();
                durable.expiry_interval = granted_expiry;
                durable.disconnected_at = None;
                durable.will =
                    connect
                        .will
                        .as_ref()
                        .filter(|_| will_allowed)
                        .map(|will| StoredWill {
                            publish: will_message(will),
                            delay: will.properties.will_delay_interval.unwrap_or(0),
                            due_at: None,
                        });
            }
            let handed_over = inner
                .durable
                .as_deref_mut()
                .map(|durable| std::mem::take(&mut durable.deliveries))
                .unwrap_or_default();
            let resumed =
                resumable.then(|| inner.saved.take().map(|saved| *saved).unwrap_or_default());
            (resumed, handed_over)
        };
        if resumed.is_none() {
            self.shared.router.remove_session(&session);
            if existed {
                self.shared
                    .write(vec![Change::DeleteSession(session.client_id.clone())]);
            }
        }
        // The record as this connection made it (expiry, will; subscriptions if resumed),
        // durable before CONNACK: a client told its session is kept finds it after a crash
        // (Session Present 1). (In a cluster, the claim wrote the bucket's record already.)
        let ticket = self.shared.save_record(&session);
        self.raise_barrier(ticket);
        if let Some(durability) = durability_mut(&mut self.extras) {
            durability.deliveries = handed_over;
        }
        if let Some(state) = resumed.as_mut() {
            // After a restart the deliveries in flight are only in the store, at the head of
            // the queue: they go back in flight, with their identifiers and stage.
            Box::pin(self.resume_in_flight(&session, state)).await;
        }
        let mut properties = ConnAckProperties::default();
        if version.is_v5() && granted_expiry != requested_expiry {
            properties.session_expiry_interval = Some(granted_expiry);
        }
        let session_present = resumed.is_some();
        self.session = Some(session.clone());
        let accept = Accept {
            resumed,
            assigned_client_id: assigned,
            properties,
        };
        if !will_allowed {
            debug!(client_id = %client_id, peer = %self.peer, "will not authorized: dropped");
            self.engine.cancel_will();
        } else if let (Some(will), Some(cluster)) = (&connect.will, self.shared.cluster.get()) {
            let delay = will.properties.will_delay_interval.unwrap_or(0);
            let delay = delay.min(granted_expiry);
            let message = will_message(will);
            cluster.record_will(&session.client_id, self.connection_id, &message, delay);
        }
        if self.engine.accept(now, accept).is_ok() {
            if session_present {
                // In a cluster: QoS 2 messages another node answered with PUBREC, which the
                // session's record names; their PUBREL is answered with success here too.
                for packet_id in session.recorded_inbound() {
                    self.engine.expect_release(packet_id);
                }
            }
            self.shared.stats.client_connected(self.peer.via, version);
            self.connected_at = Some(tenths(self.now()));
            let certificate = self
                .extras
                .as_deref()
                .and_then(|extras| extras.certificate_user.as_deref());
            let user = self
                .extras
                .as_deref()
                .and_then(|extras| extras.user.clone());
            session.record_connection(
                &self.control,
                ConnectionInfo {
                    peer: self.peer.addr,
                    listener: self.peer.listener,
                    websocket: self.peer.is_websocket(),
                    version,
                    keep_alive: u16::try_from(self.engine.keep_alive().as_secs())
                        .unwrap_or(u16::MAX),
                    clean_start: connect.clean_start,
                    expiry_interval: granted_expiry,
                    user: user.clone(),
                    connected_at: SystemTime::now(),
                    disconnected_at: None,
                },
            );
            // The user authenticated as, or else the name the client gave.
            let user = user
                .as_deref()
                .or(connect.username.as_ref().map(|name| name.as_str()));
            info!(
                client_id = %client_id,
                peer = %self.peer.addr,
                listener = via_label(self.peer.via),
                protocol = version_label(version),
                clean_start = connect.clean_start,
                keep_alive = self.engine.keep_alive().as_secs(),
                user,
                certificate,
                session_present,
                reason_code = %Hex(ReasonCode::Success),
                "client connected"
            );
        }
    }

    fn on_subscribe(&mut self, subscribe: Subscribe) {
        let Some(session) = self.session.clone() else {
            return;
        };
        let v5 = self.engine.version().is_some_and(ProtocolVersion::is_v5);
        let identifier = subscribe.properties.subscription_identifier;
        let mut codes = Vec::with_capacity(subscribe.subscriptions.len());
        let mut retained = Vec::new();
        for subscription in &subscribe.subscriptions {
            let filter = &subscription.filter;
            if filter.is_shared() && subscription.options.no_local && v5 {
                // MQTT-3.8.3-4: No Local on a shared subscription is a Protocol Error.
                self.engine.disconnect(
                    self.now(),
                    ReasonCode::ProtocolError,
                    DisconnectProperties::default(),
                );
                return;
            }
            let limits = &self.shared.config.limits;
            let refusal = if !limits.allows_topic(filter.as_str()) {
                Some(ReasonCode::TopicFilterInvalid)
            } else if self
                .client_acl()
                .is_some_and(|acl| !acl.can_subscribe(filter))
            {
                Some(ReasonCode::NotAuthorized)
            } else if limits.max_subscriptions > 0 && {
                let inner = session.lock();
                !inner.subscriptions.contains(filter)
                    && inner.subscriptions.len() >= limits.max_subscriptions
            } {
                Some(ReasonCode::QuotaExceeded)
            } else {
                None
            };
            if let Some(refusal) = refusal {
                // MQTT 3.1.1 has one failure code, 0x80.
                codes.push(if v5 {
                    refusal
                } else {
                    ReasonCode::UnspecifiedError
                });
                continue;
            }
            let granted = subscription.options.qos;
            let mut options = subscription.options;
            if self.extras.as_deref().is_some_and(|extras| extras.bridge) {
                options.no_local = true;
                options.retain_as_published = true;
            }
            let data = SubscriptionData::new(&options, granted, identifier);
            let existed = self.shared.router.subscribe(&session, filter, data.clone());
            session
                .lock()
                .subscriptions
                .insert(filter.clone(), data.clone());
            codes.push(match granted {
                QoS::AtMostOnce => ReasonCode::Success,
                QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
                QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
            });
            // Retained messages on subscribe, per Retain Handling; never for shared
            // subscriptions (MQTT-3.3.1-10, MQTT-3.8.4-4).
            let send_retained = !filter.is_shared()
                && match data.retain_handling {
                    rallymq_codec::RetainHandling::SendAtSubscribe => true,
                    rallymq_codec::RetainHandling::SendAtSubscribeIfNew => !existed,
                    rallymq_codec::RetainHandling::DoNotSend => false,
                };
            if send_retained {
                for (message, stored_at) in self.shared.router.retained_matching(filter) {
                    // Retained messages sent on subscribe keep the retain flag (MQTT-3.3.1-8).
                    let copy = copy_for(&message, granted, true, identifier.into_iter().collect());
                    retained.push((copy, stored_at));
                }
            }
        }
        let _ =
            self.engine
                .answer_subscribe(subscribe.packet_id, codes, SubAckProperties::default());
        let received_at = SystemTime::now();
        for (message, stored_at) in retained {
            let mut persisting = self.shared.store.as_deref().map(|store| {
                Persisting::new(store, &self.shared.next_message_id, &message, received_at)
            });
            let outcome = session.enqueue(
                message.clone(),
                stored_at,
                &self.shared.config.limits,
                persisting.as_mut(),
                &crate::session::Origin::Local,
            );
            if outcome.dropped {
                self.shared.stats.dropped(Dropped::QueueFull, 1);
            }
        }
        // The subscriptions are in the record (in a cluster, in the sessions bucket too)
        // before SUBACK goes out.
        self.save_record_before_next_bytes(&session);
        if let Some(synced) = self
            .shared
            .cluster
            .get()
            .and_then(|cluster| cluster.subscriptions_synced())
        {
            self.extras.get_or_insert_default().subscriptions_synced = Some(synced);
        }
    }

    fn on_unsubscribe(&mut self, unsubscribe: Unsubscribe) {
        let Some(session) = self.session.clone() else {
            return;
        };
        let codes = unsubscribe
            .filters
            .iter()
            .map(|filter| {
                session.lock().subscriptions.remove(filter);
                if self.shared.router.unsubscribe(&session, filter) {
                    ReasonCode::Success
                } else {
                    ReasonCode::NoSubscriptionExisted
                }
            })
            .collect();
        let _ = self.engine.answer_unsubscribe(
            unsubscribe.packet_id,
            codes,
            SubAckProperties::default(),
        );
        self.save_record_before_next_bytes(&session);
    }

    /// Reads the head of a resumed session's queue from the store when no delivery in flight
    /// was handed over in memory (the broker restarted): entries in flight become the
    /// engine's in-flight messages again (resent with DUP and their identifier, or PUBREL,
    /// MQTT-4.4.0-1), the others wait in memory.
    async fn resume_in_flight(&mut self, session: &Arc<Session>, state: &mut SessionState) {
        let handed_over = self
            .extras
            .as_deref()
            .and_then(|extras| extras.durability.as_ref())
            .is_some_and(|durability| !durability.deliveries.is_empty());
        if handed_over || !state.in_flight.is_empty() {
            return;
        }
        let Some(entries) = self.read_page(session).await else {
            return;
        };
        let mut waiting = Vec::new();
        for loaded in entries {
            let (publish, since) = delivered_copy(&loaded);
            let reference = StoredRef::of(&loaded);
            match (loaded.entry.in_flight, durability_mut(&mut self.extras)) {
                (Some((packet_id, stage)), Some(durability)) if waiting.is_empty() => {
                    let token = state.push_in_flight(packet_id, stage, publish);
                    durability
                        .deliveries
                        .insert(token, (loaded.seq, loaded.entry));
                }
                _ => waiting.push(Queued {
                    publish,
                    since,
                    stored: Some(reference),
                    sequence: UNKNOWN_SEQUENCE,
                    early: None,
                }),
            }
        }
        let mut inner = session.lock();
        inner.prepend_pending(waiting);
    }

    /// Writes that the QoS 1 deliveries sent [`RECORD_AFTER`] ago or earlier (all of them,
    /// when `all`) went in flight, for those still unacknowledged: after a crash these are
    /// sent again with DUP and their packet identifier (MQTT-4.4.0-1). Written late because
    /// nearly every one is acknowledged first, and its entry's deletion is then the only
    /// write: a draining session went in flight and was acknowledged 64 entries at a time, in
    /// separate commits, and the in-flight writes were half of its changes. A QoS 1
    /// delivery's in-flight write was never waited for: a crash lost the latest before too.
    fn record_in_flight(&mut self, all: bool) {
        let now = self.now();
        let (Some(session), Some(durability)) = (&self.session, durability_mut(&mut self.extras))
        else {
            return;
        };
        let mut changes = Vec::new();
        let sent_by = (!all)
            .then(|| Timestamp::from_since_epoch(now.since_epoch().saturating_sub(RECORD_AFTER)));
        durability.record_unrecorded(&session.client_id, sent_by, &mut changes);
        if !changes.is_empty() {
            durability.delivered = self.shared.write(changes);
        }
    }

    /// Reads the next page of the session's queue that is only in the store, once what was
    /// written to it is decided, and the store's writer has taken this connection's
    /// deliveries' progress up to [`PACE_PAGES`] pages before.
    async fn read_page(&mut self, session: &Arc<Session>) -> Option<Vec<LoadedEntry>> {
        let paced = durability_mut(&mut self.extras).map_or(Ticket::default(), |d| {
            let oldest = d.paced[0];
            d.paced.rotate_left(1);
            d.paced[PACE_PAGES - 1] = d.delivered;
            oldest
        });
        self.shared.read_stored_tail(session, paced, PAGE).await
    }

    /// Whether the session's queue in memory has drained while more of it waits in the store
    /// and the client can take more.
    fn needs_stored_page(&self) -> bool {
        let Some(session) = &self.session else {
            return false;
        };
        if durability(&self.extras).is_none() || !self.engine.can_send(QoS::AtLeastOnce) {
            return false;
        }
        let inner = session.lock();
        inner.pending.is_empty()
            && inner
                .durable
                .as_deref()
                .is_some_and(|durable| durable.tail_len > 0)
    }

    /// Refills the session's queue in memory from the store when it has drained and the client
    /// can take more: an offline session's queue, and a long one, stay on disk.
    async fn read_stored_queue(&mut self) {
        let Some(session) = self.session.clone() else {
            return;
        };
        let Some(entries) = self.read_page(&session).await else {
            return;
        };
        let (wall, now) = (SystemTime::now(), Instant::now());
        let mut inner = session.lock();
        for loaded in entries {
            inner.push_pending(Queued::loaded_at(&loaded, wall, now));
        }
    }

    /// Hands waiting messages to the engine while its window and queue have room (none until
    /// the connection is accepted, nor after it ends).
    fn drain_pending(&mut self) {
        if !self.engine.is_connected() {
            return;
        }
        self.refresh_acl();
        let Some(session) = self.session.clone() else {
            return;
        };
        let now = self.now();
        let mut changes = Vec::new();
        let mut needs_barrier = false;
        let cluster = self.shared.cluster.get().is_some();
        let mut stream_qos2 = false;
        let mut inner = session.lock();
        let waiting = inner.pending.len();
        while let Some(queued) = inner.pending.front() {
            // A stored message is sent only when it goes in flight at once, with its packet
            // identifier, which is recorded; others may wait in the engine's small queue.
            let room = match queued.stored {
                Some(_) => self.engine.can_send(queued.publish.qos),
                None => self.engine.can_deliver(queued.publish.qos),
            };
            if !room {
                // Stays queued, in order, until acknowledgements make room.
                break;
            }
            let Some(queued) = inner.pop_pending() else {
                break;
            };
            let mut publish = queued.publish;
            let stored = queued.stored;
            let sequence = queued.sequence;
            let early = queued.early;
            let forget = |changes: &mut Vec<Change>| {
                if let Some(stored) = stored {
                    changes.push(Change::DeleteEntry {
                        client_id: session.client_id.clone(),
                        seq: stored.seq,
                    });
                }
            };
            if !count_down_expiry(&mut publish, queued.since) {
                self.shared.stats.dropped(Dropped::Expired, 1);
                forget(&mut changes);
                continue;
            }
            // Checked on delivery, so that retained messages, wills and `$SYS` are covered,
            // and a subscription wider than the client may read gets only what it may.
            if publish
                .topic
                .as_ref()
                .is_some_and(|topic| !self.may_receive(topic))
            {
                self.shared.stats.dropped(Dropped::NotAuthorized, 1);
                forget(&mut changes);
                continue;
            }
            let entry = stored.map(|stored| stored.entry(&publish, None));
            let (qos, payload) = (publish.qos, publish.payload.len());
            match self.engine.deliver(now, publish) {
                Ok(token) => {
                    self.shared.stats.publish_sent(qos, payload);
                    if let Some(token) = token
                        && cluster
                        && sequence != 0
                    {
                        let tracked = self
                            .extras
                            .get_or_insert_default()
                            .stream_deliveries
                            .get_or_insert_default();
                        tracked.by_token.insert(
                            token,
                            StreamDelivery {
                                sequence,
                                qos,
                                released: false,
                            },
                        );
                        stream_qos2 |= qos == QoS::ExactlyOnce;
                    }
                    if let (Some(token), Some(stored), Some(mut entry), Some(durability)) =
                        (token, stored, entry, durability_mut(&mut self.extras))
                    {
                        if let Some(packet_id) = self.engine.delivery_packet_id(token) {
                            entry.in_flight = Some((packet_id, OutgoingStage::Published));
                            if qos == QoS::ExactlyOnce {
                                // The entries in flight in the store stay a prefix of the
                                // queue, which is how a restart finds them.
                                durability.record_unrecorded(
                                    &session.client_id,
                                    None,
                                    &mut changes,
                                );
                                changes.push(Change::UpdateEntry {
                                    client_id: session.client_id.clone(),
                                    seq: stored.seq,
                                    entry: entry.clone(),
                                });
                                // Its identifier is durable before the PUBLISH goes out, or
                                // after a crash it would be delivered again under another.
                                needs_barrier = true;
                            } else {
                                durability.unrecorded.push_back((token, now));
                            }
                        }
                        durability.deliveries.insert(token, (stored.seq, entry));
                        if let Some(early) = early {
                            durability.early.insert(token, early);
                        }
                    }
                }
                // Over the client's Maximum Packet Size: dropped, as the spec says (MQTT-3.1.2-25).
                Err(error) => {
                    debug!(client_id = %session.client_id, %error, "delivery dropped");
                    self.shared.stats.dropped(Dropped::PacketTooLarge, 1);
                    forget(&mut changes);
                }
            }
        }
        let drained = inner.pending.len() < waiting;
        drop(inner);
        if stream_qos2 {
            self.record_stream(true);
        }
        if !changes.is_empty() {
            let ticket = self.shared.write(changes);
            if needs_barrier {
                self.raise_barrier(ticket);
            }
            if let Some(durability) = durability_mut(&mut self.extras) {
                durability.delivered = ticket;
            }
        }
        // Only a drain that made room can end a publisher's wait: waking them all for
        // nothing, on every pass of every connection, would cost most when they wait, under
        // load.
        if drained {
            self.shared.space_freed();
        }
    }

    fn on_closed(&mut self, reason: CloseReason) {
        if let CloseReason::Refused(code) = reason {
            self.shared.stats.connect_refused(code);
            // The broker's own refusals were logged with the client id (Driver::refuse); the
            // engine refuses by itself only a CONNECT it could not read (an unknown version).
            if self.engine.version().is_none() {
                let listener = via_label(self.peer.via);
                info!(peer = %self.peer.addr, listener, reason_code = %Hex(code), reason = ?code, "connection refused");
            }
        }
        let (cause, code) = Disconnect::of(&reason);
        let detail = match &reason {
            CloseReason::ProtocolViolation { detail, .. } => Some(detail.as_str()),
            _ => None,
        };
        // Before the count: what waits for it to see the connection gone sees this written.
        self.record_in_flight(true);
        self.count_disconnect(cause, code, detail);
        let stats = &self.shared.stats;
        let Some(session) = self.session.clone() else {
            debug!(peer = %self.peer, ?reason, "connection closed before CONNECT was accepted");
            return;
        };
        let mut state = Some(self.engine.session_state());
        let will_pending = self.engine.poll_timeout().is_some();
        let deliveries = self
            .extras
            .as_deref_mut()
            .and_then(|extras| extras.durability.as_mut())
            .map(|durability| std::mem::take(&mut durability.deliveries))
            .unwrap_or_default();
        let mut reply = self.taken_over.take();
        if reply.is_none() {
            let router = &self.shared.router;
            let control = &self.control;
            let mut deliveries = Some(deliveries);
            let detached = self.shared.registry.detach(
                &session,
                control,
                |inner| {
                    if will_pending {
                        inner.will_waiter = Some(control.clone());
                    }
                    let state = state.take().unwrap_or_default();
                    let expiry = state.session_expiry_interval;
                    if expiry == 0 {
                        inner.persistent = false;
                        stats.dropped(Dropped::SessionEnded, inner.queue_size().0);
                        inner.clear_pending();
                        inner.subscriptions.clear();
                        return true;
                    }
                    inner.persistent = true;
                    inner.saved = Some(Box::new(state));
                    inner.expires_at = (expiry != u32::MAX).then(|| {
                        Deadline::at(Instant::now() + Duration::from_secs(u64::from(expiry)))
                    });
                    let dropped = go_offline(inner, expiry, will_pending, deliveries.take());
                    stats.dropped(Dropped::OfflineQos0, dropped);
                    false
                },
                || router.remove_session(&session),
            );
            match detached {
                Detached::TakenOver(taken_over) => {
                    reply = Some(taken_over);
                    if let Some(deliveries) = deliveries.take()
                        && let Some(durable) = session.lock().durable.as_deref_mut()
                    {
                        durable.deliveries = deliveries;
                    }
                }
                Detached::Ended => {
                    self.shared.end_record(&session);
                }
                Detached::Kept => {
                    self.shared.save_record(&session);
                }
                Detached::Elsewhere => {}
            }
        } else if let Some(durable) = session.lock().durable.as_deref_mut() {
            durable.deliveries = deliveries;
        }
        if let Some(reply) = reply {
            // Taken over: the new connection carries on with the session.
            let _ = reply.send(state.take().unwrap_or_default());
            if will_pending {
                session.lock().will_waiter = Some(self.control.clone());
            }
        }
    }

    fn finish(&mut self) {
        self.control.close();
        if let (Some(cluster), Some(session)) = (self.shared.cluster.get(), &self.session) {
            cluster.forget_will(&session.client_id, self.connection_id);
        }
        self.shared
            .unregister_connection(self.connection_id, &self.control);
        // Ended without a close from the engine (its task ended).
        self.count_disconnect(Disconnect::ConnectionLost, None, None);
        self.shared.open_connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts and logs the end of a connection whose CONNECT was accepted, once.
    fn count_disconnect(
        &mut self,
        cause: Disconnect,
        code: Option<ReasonCode>,
        detail: Option<&str>,
    ) {
        let Some(at) = self.connected_at.take() else {
            return;
        };
        let stats = &self.shared.stats;
        stats.disconnect(cause, code);
        stats.client_disconnected(self.peer.via, self.engine.version());
        info!(
            client_id = self.session.as_ref().map(|session| tracing::field::display(&session.client_id)),
            peer = %self.peer.addr,
            listener = via_label(self.peer.via),
            protocol = self.engine.version().map(version_label),
            cause = cause.label(),
            reason_code = code.map(Hex).map(tracing::field::display),
            detail,
            duration_secs = self.since(at).as_secs_f64(),
            "client disconnected"
        );
    }
}

/// `now` in tenths of a second, plus one so that it is never zero; saturates after 13 years.
fn tenths(now: Timestamp) -> NonZeroU32 {
    let tenths = u32::try_from(now.since_epoch().as_millis() / 100).unwrap_or(u32::MAX);
    NonZeroU32::MIN.saturating_add(tenths)
}

/// A persistent session whose connection closed: with a store, the deliveries in flight wait
/// for the next connection, the messages in memory go back to being read from the store (an
/// offline session keeps none in memory; QoS 0 ones are dropped, as for any offline session),
/// and the record says when it closed and whether a will waits on its delay. Returns how many
/// QoS 0 messages were dropped.
fn go_offline(
    inner: &mut SessionInner,
    expiry: u32,
    will_pending: bool,
    deliveries: Option<Deliveries>,
) -> u64 {
    let first_stored = inner.pending.iter().find_map(|queued| queued.stored);
    let (count, bytes) = inner
        .pending
        .iter()
        .filter_map(|queued| queued.stored)
        .fold((0u64, 0u64), |(count, bytes), stored| {
            (count + 1, bytes + u64::from(stored.size))
        });
    let Some(durable) = inner.durable.as_deref_mut() else {
        return 0;
    };
    durable.deliveries = deliveries.unwrap_or_default();
    durable.expiry_interval = expiry;
    let now = SystemTime::now();
    durable.disconnected_at = Some(now);
    durable.will = match durable.will.take() {
        Some(mut will) if will_pending => {
            let delay = will.delay.min(expiry);
            will.due_at = Some(now + Duration::from_secs(u64::from(delay)));
            Some(will)
        }
        // Published as the connection closed, or discarded by a clean DISCONNECT.
        _ => None,
    };
    let Some(first) = first_stored else {
        return 0;
    };
    durable.tail_from = first.seq;
    durable.tail_len += count;
    durable.tail_bytes += bytes;
    let dropped = inner.pending.len() as u64 - count;
    inner.clear_pending();
    dropped
}

/// The message a will publishes.
fn will_message(will: &Will) -> Publish {
    let mut publish = Publish::new(will.topic.clone(), will.payload.clone());
    publish.qos = will.qos;
    publish.retain = will.retain;
    let properties = &will.properties;
    if !properties.is_empty() {
        publish.properties = PublishProperties {
            payload_format_indicator: properties.payload_format_indicator,
            message_expiry_interval: properties.message_expiry_interval,
            content_type: properties.content_type.clone(),
            response_topic: properties.response_topic.clone(),
            correlation_data: properties.correlation_data.clone(),
            user_properties: properties.user_properties.clone(),
            ..PublishProperties::default()
        }
        .into();
    }
    publish
}

/// Writes as much of `rest` as `io` takes, advancing it; ready once all is written.
fn poll_write_all<IO: AsyncWrite + Unpin>(
    cx: &mut Context<'_>,
    io: &mut IO,
    rest: &mut &[u8],
) -> Poll<std::io::Result<()>> {
    while !rest.is_empty() {
        let written = ready!(Pin::new(&mut *io).poll_write(cx, rest))?;
        if written == 0 {
            return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
        }
        *rest = &rest[written..];
    }
    Poll::Ready(Ok(()))
}

/// Writes all of `rest`, each part within `limit` of the last (see `within`).
async fn write_within<IO: AsyncWrite + Unpin>(
    limit: Duration,
    io: &mut IO,
    mut rest: &[u8],
) -> std::io::Result<()> {
    while !rest.is_empty() {
        let written = within(limit, poll_fn(|cx| Pin::new(&mut *io).poll_write(cx, rest))).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        rest = &rest[written..];
    }
    Ok(())
}

/// Runs `io` (a write, a flush or a shutdown that had to wait) to its end, failing with
/// `TimedOut` if it takes longer than `limit`: a client that stops reading fills the network
/// buffers, after which the connection would wait in its write for as long as the client's
/// TCP stack keeps the connection up, reading nothing, so that neither its keep alive nor a
/// takeover or shutdown could end it.
async fn within<T>(
    limit: Duration,
    io: impl Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    tokio::time::timeout(limit, io).await.unwrap_or_else(|_| {
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the client took none of a write for {limit:?}"),
        ))
    })
}

/// Reads and discards until the client closes its side, the transport fails, or `LINGER`
/// passes (see there).
async fn linger<IO: AsyncRead + Unpin>(io: &mut IO) {
    let discard = poll_fn(|cx| {
        loop {
            // On the stack of this poll, as in `Driver::poll_read`.
            let mut storage = [MaybeUninit::<u8>::uninit(); 4096];
            let mut buf = ReadBuf::uninit(&mut storage);
            match ready!(Pin::new(&mut *io).poll_read(cx, &mut buf)) {
                Ok(()) if !buf.filled().is_empty() => {}
                _ => return Poll::Ready(()),
            }
        }
    });
    let _ = tokio::time::timeout(LINGER, discard).await;
}

#[cfg(test)]
mod tests {
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::watch;

    use super::*;

    #[test]
    fn extras_are_vacant_only_when_they_hold_nothing() {
        assert!(Extras::default().is_vacant());
        let held: [fn(&mut Extras); 4] = [
            |extras| extras.durability = Some(Durability::default()),
            |extras| extras.user = Some("u".into()),
            |extras| extras.bridge = true,
            |extras| extras.acl_generation = 1,
        ];
        for hold in held {
            let mut extras = Extras::default();
            hold(&mut extras);
            assert!(!extras.is_vacant(), "{extras:?}");
        }
    }

    /// The connection's future is most of an idle connection's memory: tokio allocates it in
    /// a 128-byte-aligned task cell with about 100 bytes of its own, so up to 664 bytes (in
    /// release builds; a few more in debug) take a 768-byte cell. It was 1,968 bytes, in a
    /// 2,176-byte cell, before the idle-memory work. Look at what grew before raising this.
    #[tokio::test]
    async fn an_idle_connection_future_stays_small() {
        let (_shutdown, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared::new(
            crate::BrokerConfig::default(),
            shutdown_rx,
            None,
            vec![Policy::load(&Default::default()).unwrap()],
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let peer = Peer {
            addr: listener.local_addr().unwrap(),
            via: Some(ListenerKind::Tcp),
            listener: 0,
            policy: 0,
        };
        let future = serve(tcp, shared, peer, None);
        let size = size_of_val(&future);
        assert!(size <= 680, "the connection future takes {size} bytes");
    }
}
