//! The broker: shared state, startup, the in-process handle and shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rallymq_codec::{Message, Publish, QoS, SubscriptionOptions, TopicFilter, TopicName};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tracing::info;

use crate::config::BrokerConfig;
use crate::router::{RouteOutcome, Router, SubscriptionData};
use crate::session::{Attachment, ControlBox, Queued, Registry, Session, signal};
use crate::stats::Stats;
use crate::store::{MemoryStore, Store};
use crate::{Error, listener, sys};

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
    pub(crate) store: Arc<dyn Store>,
    /// Connections not attached to a session yet, to be told of shutdown.
    pub(crate) connecting: Mutex<Connecting>,
    /// Wakes publishers paused for congested subscribers whenever a subscriber's queue drains:
    /// one for the broker rather than one in every session, since publishers rarely wait.
    pub(crate) space: Notify,
    /// Publishers waiting on `space`: drains skip the notification while there are none.
    pub(crate) space_waiters: AtomicUsize,
}

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
        store: Arc<dyn Store>,
    ) -> Self {
        Self {
            config,
            router: Router::default(),
            registry: Registry::default(),
            stats: Stats::default(),
            shutdown,
            next_connection_id: AtomicU64::new(1),
            open_connections: AtomicUsize::new(0),
            started: Instant::now(),
            store,
            connecting: Mutex::default(),
            space: Notify::new(),
            space_waiters: AtomicUsize::new(0),
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
            if let Some(attachment) = &session.lock().attachment {
                attachment.control.signal(signal::SHUTDOWN);
            }
        }
    }

    fn lock_connecting(&self) -> std::sync::MutexGuard<'_, Connecting> {
        crate::lock(&self.connecting)
    }

    /// A subscriber's queue drained: wakes the publishers waiting for room, if any. Called
    /// after the session's lock is released, which orders it with a waiter's check (see
    /// `Driver::wait_for_subscribers`).
    pub(crate) fn space_freed(&self) {
        if self.space_waiters.load(Ordering::SeqCst) > 0 {
            self.space.notify_waiters();
        }
    }

    /// Publishes a message into the broker: updates the retained store if it is retained, and
    /// routes it.
    pub(crate) fn publish(&self, sender: Option<&str>, publish: &Publish) -> RouteOutcome {
        Stats::add(&self.stats.messages_received, 1);
        if publish.retain {
            self.router.retain(publish);
            match &publish.topic {
                Some(topic) if publish.payload.is_empty() => {
                    self.store.remove_retained(topic.as_str())
                }
                Some(_) => self.store.save_retained(publish),
                None => {}
            }
        }
        let outcome = self.router.route(sender, publish, &self.config.limits);
        Stats::add(&self.stats.messages_sent, outcome.queued as u64);
        Stats::add(&self.stats.messages_dropped, outcome.dropped as u64);
        outcome
    }

    /// Loads the store: retained messages, and persistent sessions as offline sessions.
    fn restore(&self) {
        let snapshot = self.store.load();
        for message in &snapshot.retained {
            self.router.retain(message);
        }
        let now = Instant::now();
        for stored in snapshot.sessions {
            let (session, _) = self.registry.get_or_create(&stored.client_id);
            for (filter, options, identifier) in &stored.subscriptions {
                let data = SubscriptionData::new(options, options.qos, *identifier);
                self.router.subscribe(&session, filter, data.clone());
                session.lock().subscriptions.insert(filter.clone(), data);
            }
            let mut inner = session.lock();
            let expiry = stored.state.session_expiry_interval;
            inner.expires_at =
                (expiry != u32::MAX).then(|| now + Duration::from_secs(u64::from(expiry)));
            inner.persistent = true;
            inner.pending = stored
                .pending
                .into_iter()
                .map(|publish| Queued {
                    publish,
                    since: now,
                })
                .collect();
            inner.saved = Some(Box::new(stored.state));
        }
    }

    /// Writes every persistent session to the store.
    fn save_sessions(&self) {
        for session in self.registry.all() {
            if session.lock().persistent {
                self.store.save_session(session.to_stored());
            }
        }
    }

    /// Drops offline sessions whose expiry has passed.
    fn sweep_expired_sessions(&self) {
        let now = Instant::now();
        for session in self.registry.all() {
            // Checked and removed under the registry's lock: a connection attaching meanwhile
            // keeps its session.
            let expired = self.registry.remove_if(
                &session,
                |inner| inner.attachment.is_none() && inner.expires_at.is_some_and(|at| at <= now),
                || self.router.remove_session(&session),
            );
            if expired {
                self.store.remove_session(&session.client_id);
            }
        }
    }
}

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// MQTT over TCP.
    Tcp,
    /// HTTP and MQTT over WebSockets.
    WebSocket,
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
        }
    }
}

/// The broker. Start it with [`Broker::start`].
#[derive(Debug)]
pub struct Broker;

impl Broker {
    /// Binds every listener of `config`, logs one `listening: ...` line per listener, and
    /// serves in the background on the current tokio runtime, keeping sessions and retained
    /// messages in a fresh [`MemoryStore`].
    pub async fn start(config: BrokerConfig) -> Result<BrokerHandle, Error> {
        Self::start_with_store(config, Arc::new(MemoryStore::new())).await
    }

    /// As [`Broker::start`], resuming the persistent sessions and retained messages of `store`
    /// and writing them back to it.
    pub async fn start_with_store(
        config: BrokerConfig,
        store: Arc<dyn Store>,
    ) -> Result<BrokerHandle, Error> {
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        // Bind every address before serving any, so a port in use fails the start as a whole.
        let mut bound = Vec::new();
        for (kind, addrs) in [
            (ListenerKind::Tcp, &config.tcp),
            (ListenerKind::WebSocket, &config.ws),
        ] {
            for addr in addrs {
                let bind_error = |source| Error::Bind {
                    addr: *addr,
                    source,
                };
                let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
                let addr = listener.local_addr().map_err(bind_error)?;
                bound.push((BoundListener { kind, addr }, listener));
            }
        }
        let sys_interval = config.sys_interval;
        let shared = Arc::new(Shared::new(config, shutdown_rx, store));
        shared.restore();
        let mut listeners = Vec::new();
        let mut tasks = Vec::new();
        for (bound, listener) in bound {
            info!("listening: {bound}");
            listeners.push(bound);
            let serve = match bound.kind {
                ListenerKind::Tcp => tokio::spawn(listener::serve_tcp(listener, shared.clone())),
                ListenerKind::WebSocket => {
                    tokio::spawn(listener::serve_websocket(listener, shared.clone()))
                }
            };
            tasks.push(serve);
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
                    _ = tick.tick() => sweeper.sweep_expired_sessions(),
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
                let next = pump.lock().pending.pop_front();
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
        for task in self.tasks {
            task.abort();
        }
        self.shared.save_sessions();
    }
}
