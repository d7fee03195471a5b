//! The task that owns the connection: it drives the session engine over the transport, runs
//! the handles' commands, reconnects, and answers each command when the protocol says it is
//! done. No protocol decision is made here; the engine makes them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use rallymq_codec::{
    AckProperties, ConnAck, Disconnect, Message, Publish, QoS, ReasonCode, SubscribeProperties,
    Subscription, TopicFilter, UnsubscribeProperties,
};
use rallymq_session::{
    ClientConfig, ClientConnection, ClientEvent, CloseReason, PublishToken, RequestToken,
    SessionState, Timestamp,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info};

use crate::event::Listeners;
use crate::url::BrokerUrl;
use crate::{Ack, ClientOptions, ConnectionEvent, Error, transport};

type Reply<T> = oneshot::Sender<Result<T, Error>>;

/// What a handle asks the driver to do.
pub(crate) enum Command {
    Publish {
        publish: Publish,
        reply: Reply<Ack>,
    },
    Subscribe {
        subscriptions: Vec<Subscription>,
        properties: SubscribeProperties,
        reply: Reply<Vec<ReasonCode>>,
    },
    Unsubscribe {
        filters: Vec<TopicFilter>,
        properties: UnsubscribeProperties,
        reply: Reply<Vec<ReasonCode>>,
    },
    Disconnect {
        reply: Reply<()>,
    },
}

/// What the handles can see of the driver without asking it.
#[derive(Debug, Default)]
pub(crate) struct Status {
    pub(crate) connected: AtomicBool,
    /// The engine's window and queue are full: `try_publish` refuses at once.
    pub(crate) saturated: AtomicBool,
    /// Why the driver ended, once it has: what every later command fails with.
    pub(crate) ended: OnceLock<Error>,
    /// Readers of connection events.
    pub(crate) listeners: Listeners,
}

impl Status {
    /// The error for a command the driver can no longer answer.
    pub(crate) fn end_error(&self) -> Error {
        self.ended.get().cloned().unwrap_or(Error::Closed)
    }
}

/// What woke the connection loop.
// Made and matched at once in the loop, never stored: boxing would cost an allocation per wake.
#[allow(clippy::large_enum_variant)]
enum Wake {
    /// Bytes read (0: the transport ended), or the transport's failure.
    Read(std::io::Result<usize>),
    Timer,
    Command(Option<Command>),
    /// Room in the message stream (`None`: the stream was dropped).
    Room(Option<mpsc::OwnedPermit<Message>>),
}

/// Why a connection ended.
enum End {
    /// `disconnect` was called, or every handle was dropped.
    Local,
    /// The broker refused the CONNECT.
    Refused(ReasonCode),
    /// The transport failed or the connection was lost.
    Lost(Error),
}

pub(crate) struct Driver {
    options: ClientOptions,
    /// The brokers to connect to, tried in turn (see [`ClientOptions::fallback_url`]).
    urls: Vec<BrokerUrl>,
    /// The one the next connection tries.
    next_url: usize,
    commands: mpsc::Receiver<Command>,
    messages: mpsc::Sender<Message>,
    /// The `Messages` stream was dropped: received messages are discarded.
    messages_gone: bool,
    status: Arc<Status>,
    state: Option<SessionState>,
    /// Subscriptions made, by filter (a new one replaces the old), restored on a connection
    /// where the broker kept no session.
    subscriptions: HashMap<TopicFilter, (Subscription, SubscribeProperties)>,
    publish_replies: HashMap<PublishToken, Reply<Ack>>,
    subscribe_replies: HashMap<RequestToken, Reply<Vec<ReasonCode>>>,
    unsubscribe_replies: HashMap<RequestToken, Reply<Vec<ReasonCode>>>,
    restoring: HashSet<RequestToken>,
    /// Commands that need an established connection, waiting for CONNACK.
    deferred: VecDeque<Command>,
    /// Publishes among `deferred`: bounded by `max_queued`.
    deferred_publishes: usize,
    /// Messages received while the stream's buffer is full; reading pauses until it drains.
    stash: VecDeque<Message>,
    first_connect: Option<oneshot::Sender<Result<ConnAck, Error>>>,
    disconnect_replies: Vec<Reply<()>>,
    epoch: Instant,
}

impl Driver {
    pub(crate) fn new(
        options: ClientOptions,
        urls: Vec<BrokerUrl>,
        commands: mpsc::Receiver<Command>,
        messages: mpsc::Sender<Message>,
        status: Arc<Status>,
        first_connect: oneshot::Sender<Result<ConnAck, Error>>,
    ) -> Self {
        // Resuming, the client has session state even when the store holds none: an empty one
        // (a new process that lost nothing in flight), so the broker's session is accepted.
        let state = if options.connect.clean_start {
            None
        } else {
            Some(
                options
                    .session_store
                    .load(options.connect.client_id.as_str())
                    .unwrap_or_default(),
            )
        };
        Self {
            options,
            urls,
            next_url: 0,
            commands,
            messages,
            messages_gone: false,
            status,
            state,
            subscriptions: HashMap::new(),
            publish_replies: HashMap::new(),
            subscribe_replies: HashMap::new(),
            unsubscribe_replies: HashMap::new(),
            restoring: HashSet::new(),
            deferred: VecDeque::new(),
            deferred_publishes: 0,
            stash: VecDeque::new(),
            first_connect: Some(first_connect),
            disconnect_replies: Vec::new(),
            epoch: Instant::now(),
        }
    }

    fn now(&self) -> Timestamp {
        Timestamp::from_since_epoch(self.epoch.elapsed())
    }

    pub(crate) async fn run(mut self) {
        let mut clean_start = self.options.connect.clean_start;
        let mut attempt = 0;
        loop {
            let end = self.connection(clean_start).await;
            // A connection that got as far as CONNACK starts the backoff over.
            if self.status.connected.swap(false, Ordering::Relaxed) {
                attempt = 0;
            }
            let client_id = self.options.connect.client_id.as_str().to_owned();
            if let Some(state) = &self.state {
                self.options.session_store.save(&client_id, state);
            }
            let error = match end {
                End::Local => return self.end(Error::Closed, None),
                End::Refused(code) => Error::Refused(code),
                End::Lost(error) => error,
            };
            // The next broker in the list, if there are several.
            self.next_url = (self.next_url + 1) % self.urls.len();
            if let Some(first) = self.first_connect.take() {
                // The first connection must succeed for `connect` to return a client.
                let _ = first.send(Err(error.clone()));
                return self.end(error, None);
            }
            self.status
                .listeners
                .send(&ConnectionEvent::Disconnected(error.clone()));
            let Some(backoff) = self.options.reconnect else {
                return self.end(Error::ConnectionLost, Some(error));
            };
            self.fail_requests(Error::ConnectionLost);
            let delay = backoff.delay(attempt);
            self.status
                .listeners
                .send(&ConnectionEvent::Reconnecting { attempt, delay });
            attempt = attempt.saturating_add(1);
            info!(%error, ?delay, "connection lost; reconnecting");
            let wake = tokio::time::Instant::now() + delay;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(wake) => break,
                    command = self.commands.recv() => match command {
                        // While waiting, commands wait for the next connection; a disconnect
                        // (or every handle gone) ends the client now.
                        Some(Command::Disconnect { reply }) => {
                            self.disconnect_replies.push(reply);
                            return self.end(Error::Closed, None);
                        }
                        Some(command) => self.defer(command),
                        None => return self.end(Error::Closed, None),
                    },
                }
            }
            // A persistent session is resumed; otherwise a new one starts and the client
            // restores its subscriptions and resends what was not acknowledged.
            clean_start = !self.options.persistent();
        }
    }

    /// Ends the client: every waiting command fails with `error`, as every later one will, and
    /// the event readers hear why (`gave_up`: the connection was lost and is not retried).
    fn end(&mut self, error: Error, gave_up: Option<Error>) {
        let _ = self.status.ended.set(error.clone());
        self.fail_all(error.clone());
        for reply in self.disconnect_replies.drain(..) {
            let _ = reply.send(Ok(()));
        }
        let event = match gave_up {
            Some(cause) => ConnectionEvent::GaveUp(cause),
            None => ConnectionEvent::Disconnected(error),
        };
        self.status.listeners.send(&event);
        self.status.listeners.close();
    }

    /// One connection, from opening the transport to its end.
    async fn connection(&mut self, clean_start: bool) -> End {
        let url = &self.urls[self.next_url % self.urls.len()];
        let opened = tokio::time::timeout(
            self.options.connect_timeout,
            transport::open(url, &self.options.tls),
        )
        .await;
        let mut io = match opened {
            Ok(Ok(io)) => io,
            Ok(Err(error)) => return End::Lost(error),
            Err(_) => return End::Lost(Error::Timeout),
        };
        let mut connect = self.options.connect.clone();
        connect.clean_start = clean_start;
        let mut config = ClientConfig::new(connect);
        config.max_in_flight = self.options.max_in_flight;
        config.max_queued = self.options.max_queued;
        config.response_timeout = self.options.connect_timeout;
        config.record_packets = self.options.observer().is_some();
        let mut engine = ClientConnection::new(config, self.state.take(), self.now());
        if let Err(error) = engine.connect(self.now()) {
            return End::Lost(error.into());
        }
        let mut local = false;
        // The transport's failure, if that is how the connection ends.
        let mut io_error: Option<std::io::Error> = None;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            self.observe(&mut engine);
            while let Some(event) = engine.poll_event() {
                if let Some(end) = self.on_event(&mut engine, event, local, &mut io_error) {
                    self.observe(&mut engine);
                    self.state = Some(engine.session_state());
                    // The engine's last bytes (the DISCONNECT of `disconnect()`, or one telling
                    // the broker of a protocol error) are still to be written: `Closed` comes
                    // with them, not after them.
                    while let Some(bytes) = engine.poll_transmit(self.now()) {
                        if io.write_all(&bytes).await.is_err() {
                            break;
                        }
                    }
                    let _ = io.shutdown().await;
                    return end;
                }
            }
            // Handling events may have sent packets (restored subscriptions, deferred commands).
            self.observe(&mut engine);
            let mut write_failed = false;
            while let Some(bytes) = engine.poll_transmit(self.now()) {
                if let Err(error) = io.write_all(&bytes).await {
                    io_error = Some(error);
                    write_failed = true;
                    break;
                }
            }
            if write_failed {
                engine.handle_transport_closed();
                continue;
            }
            let (in_flight, queued) = engine.pending_messages();
            let saturated = in_flight >= usize::from(self.options.max_in_flight)
                && queued >= self.options.max_queued;
            self.status.saturated.store(saturated, Ordering::Relaxed);
            let deadline = engine
                .poll_timeout()
                .map(|at| tokio::time::Instant::from_std(self.epoch + at.since_epoch()));
            let reading = self.stash.is_empty();
            let stashing = !self.stash.is_empty();
            let wake = tokio::select! {
                read = io.read(&mut buf), if reading => Wake::Read(read),
                _ = sleep_until(deadline), if deadline.is_some() => Wake::Timer,
                command = self.commands.recv(), if !local => Wake::Command(command),
                permit = self.messages.clone().reserve_owned(), if stashing => Wake::Room(permit.ok()),
            };
            match wake {
                Wake::Read(Ok(0)) => engine.handle_transport_closed(),
                Wake::Read(Ok(n)) => engine.handle_bytes(self.now(), &buf[..n]),
                Wake::Read(Err(error)) => {
                    io_error = Some(error);
                    engine.handle_transport_closed();
                }
                Wake::Timer => engine.handle_timeout(self.now()),
                Wake::Command(Some(Command::Disconnect { reply })) => {
                    self.disconnect_replies.push(reply);
                    engine.disconnect(Disconnect::new(ReasonCode::Success));
                    local = true;
                }
                Wake::Command(Some(command)) => self.on_command(&mut engine, command),
                Wake::Command(None) => {
                    // Every handle is gone: say goodbye properly.
                    engine.disconnect(Disconnect::new(ReasonCode::Success));
                    local = true;
                }
                Wake::Room(Some(permit)) => {
                    if let Some(message) = self.stash.pop_front() {
                        permit.send(message);
                    }
                }
                Wake::Room(None) => {
                    self.messages_gone = true;
                    self.stash.clear();
                }
            }
        }
    }

    /// Hands the packets the engine encoded and decoded since the last call to the packet
    /// observer, if there is one (the engine records none otherwise).
    fn observe(&self, engine: &mut ClientConnection) {
        if let Some(observer) = self.options.observer() {
            while let Some((direction, packet)) = engine.poll_recorded_packet() {
                observer(direction, &packet);
            }
        }
    }

    /// Handles one engine event; returns how the connection ended when it did.
    fn on_event(
        &mut self,
        engine: &mut ClientConnection,
        event: ClientEvent,
        local: bool,
        io_error: &mut Option<std::io::Error>,
    ) -> Option<End> {
        match event {
            ClientEvent::Connected {
                session_present,
                connack,
            } => {
                self.status.connected.store(true, Ordering::Relaxed);
                debug!(session_present, "connected");
                match self.first_connect.take() {
                    Some(first) => {
                        let _ = first.send(Ok(connack));
                    }
                    None => self.status.listeners.send(&ConnectionEvent::Connected {
                        session_present,
                        connack,
                    }),
                }
                if !session_present {
                    for (subscription, properties) in self.subscriptions.values().cloned() {
                        if let Ok(token) = engine.subscribe(vec![subscription], properties) {
                            self.restoring.insert(token);
                        }
                    }
                }
                self.deferred_publishes = 0;
                while let Some(command) = self.deferred.pop_front() {
                    self.on_command(engine, command);
                }
            }
            ClientEvent::Message(message) => {
                // The engine resolved any topic alias: every message has its topic.
                if let Some(message) = Message::from_publish(message.publish) {
                    self.deliver(message);
                }
            }
            ClientEvent::PublishAcknowledged(outcome) | ClientEvent::PublishCompleted(outcome) => {
                if let Some(reply) = self.publish_replies.remove(&outcome.token) {
                    let _ = reply.send(Ok(Ack {
                        reason_code: outcome.reason_code,
                        properties: outcome.properties,
                    }));
                }
            }
            ClientEvent::Subscribed {
                token,
                reason_codes,
                ..
            } => {
                // A token is in `restoring` (a re-subscription after reconnecting, which no
                // caller awaits) or in `subscribe_replies`, never both: each SUBSCRIBE has its
                // own. So no let chain (Rust 1.88; the MSRV is 1.85) is needed to skip the reply.
                self.restoring.remove(&token);
                if let Some(reply) = self.subscribe_replies.remove(&token) {
                    let _ = reply.send(Ok(reason_codes));
                }
            }
            ClientEvent::Unsubscribed {
                token,
                reason_codes,
                ..
            } => {
                if let Some(reply) = self.unsubscribe_replies.remove(&token) {
                    let _ = reply.send(Ok(reason_codes));
                }
            }
            ClientEvent::Closed(reason) => {
                debug!(?reason, "connection closed");
                return Some(match reason {
                    _ if local => End::Local,
                    CloseReason::LocalDisconnect(_) => End::Local,
                    CloseReason::Refused(code) => End::Refused(code),
                    CloseReason::KeepAliveTimeout => End::Lost(Error::Timeout),
                    CloseReason::TransportClosed => End::Lost(match io_error.take() {
                        Some(error) => error.into(),
                        None => Error::Disconnected(CloseReason::TransportClosed),
                    }),
                    other => End::Lost(Error::Disconnected(other)),
                });
            }
            _ => {}
        }
        None
    }

    fn deliver(&mut self, message: Message) {
        if self.messages_gone {
            return;
        }
        if !self.stash.is_empty() {
            self.stash.push_back(message);
            return;
        }
        match self.messages.try_send(message) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(message)) => self.stash.push_back(message),
            Err(mpsc::error::TrySendError::Closed(_)) => self.messages_gone = true,
        }
    }

    fn on_command(&mut self, engine: &mut ClientConnection, command: Command) {
        let connected = engine.is_connected();
        match command {
            Command::Publish { publish, reply } => {
                // Behind publishes kept while reconnecting, which go when CONNACK comes: the
                // engine would send this one first (MQTT-4.6.0-1's order).
                if !connected && (publish.qos == QoS::AtMostOnce || self.deferred_publishes > 0) {
                    self.defer(Command::Publish { publish, reply });
                    return;
                }
                match engine.publish(self.now(), publish) {
                    Ok(Some(token)) => {
                        self.publish_replies.insert(token, reply);
                    }
                    Ok(None) => {
                        let _ = reply.send(Ok(Ack {
                            reason_code: ReasonCode::Success,
                            properties: AckProperties::default(),
                        }));
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error.into()));
                    }
                }
            }
            Command::Subscribe {
                subscriptions,
                properties,
                reply,
            } => {
                if !connected {
                    self.defer(Command::Subscribe {
                        subscriptions,
                        properties,
                        reply,
                    });
                    return;
                }
                for subscription in &subscriptions {
                    self.subscriptions.insert(
                        subscription.filter.clone(),
                        (subscription.clone(), properties.clone()),
                    );
                }
                match engine.subscribe(subscriptions, properties) {
                    Ok(token) => {
                        self.subscribe_replies.insert(token, reply);
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error.into()));
                    }
                }
            }
            Command::Unsubscribe {
                filters,
                properties,
                reply,
            } => {
                if !connected {
                    self.defer(Command::Unsubscribe {
                        filters,
                        properties,
                        reply,
                    });
                    return;
                }
                for filter in &filters {
                    self.subscriptions.remove(filter);
                }
                match engine.unsubscribe(filters, properties) {
                    Ok(token) => {
                        self.unsubscribe_replies.insert(token, reply);
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error.into()));
                    }
                }
            }
            Command::Disconnect { reply } => self.disconnect_replies.push(reply),
        }
    }

    /// Keeps a command for the next connection. Publishes wait in a queue bounded by
    /// `max_queued`: past it they fail with [`Error::Full`] at once.
    fn defer(&mut self, command: Command) {
        if matches!(command, Command::Publish { .. }) {
            if self.deferred_publishes >= self.options.max_queued {
                if let Command::Publish { reply, .. } = command {
                    let _ = reply.send(Err(Error::Full));
                }
                return;
            }
            self.deferred_publishes += 1;
        }
        self.deferred.push_back(command);
    }

    /// Subscribe and unsubscribe requests of a lost connection fail; publishes stay pending
    /// (they are resent on the next connection).
    fn fail_requests(&mut self, error: Error) {
        for (_, reply) in self
            .subscribe_replies
            .drain()
            .chain(self.unsubscribe_replies.drain())
        {
            let _ = reply.send(Err(error.clone()));
        }
        self.restoring.clear();
    }

    fn fail_all(&mut self, error: Error) {
        self.fail_requests(error.clone());
        for (_, reply) in self.publish_replies.drain() {
            let _ = reply.send(Err(error.clone()));
        }
        self.deferred_publishes = 0;
        for command in self.deferred.drain(..) {
            match command {
                Command::Publish { reply, .. } => {
                    let _ = reply.send(Err(error.clone()));
                }
                Command::Subscribe { reply, .. } | Command::Unsubscribe { reply, .. } => {
                    let _ = reply.send(Err(error.clone()));
                }
                Command::Disconnect { reply } => {
                    let _ = reply.send(Ok(()));
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
