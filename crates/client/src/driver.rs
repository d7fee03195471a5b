//! The task that owns the connection: it drives the session engine over the transport, runs
//! the handles' commands, reconnects, and answers each command when the protocol says it is
//! done. No protocol decision is made here; the engine makes them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use rallymq_codec::{
    AckProperties, ConnAck, Disconnect, Publish, QoS, ReasonCode, SubscribeProperties,
    Subscription, TopicFilter, UnsubscribeProperties,
};
use rallymq_session::{
    ClientConfig, ClientConnection, ClientEvent, CloseReason, PublishToken, RequestToken,
    SessionState, Timestamp,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info};

use crate::{Ack, ClientOptions, Error, transport};

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
}

/// What woke the connection loop.
// Made and matched at once in the loop, never stored: boxing would cost an allocation per wake.
#[allow(clippy::large_enum_variant)]
enum Wake {
    /// Bytes read (0: the transport ended).
    Read(usize),
    Timer,
    Command(Option<Command>),
    /// Room in the message stream (`None`: the stream was dropped).
    Room(Option<mpsc::OwnedPermit<Publish>>),
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
    commands: mpsc::Receiver<Command>,
    messages: mpsc::Sender<Publish>,
    /// The `Messages` stream was dropped: received messages are discarded.
    messages_gone: bool,
    status: Arc<Status>,
    state: Option<SessionState>,
    /// Subscriptions made, restored on a connection where the broker kept no session.
    subscriptions: Vec<(Subscription, SubscribeProperties)>,
    publish_replies: HashMap<PublishToken, Reply<Ack>>,
    subscribe_replies: HashMap<RequestToken, Reply<Vec<ReasonCode>>>,
    unsubscribe_replies: HashMap<RequestToken, Reply<Vec<ReasonCode>>>,
    restoring: HashSet<RequestToken>,
    /// Commands that need an established connection, waiting for CONNACK.
    deferred: VecDeque<Command>,
    /// Messages received while the stream's buffer is full; reading pauses until it drains.
    stash: VecDeque<Publish>,
    first_connect: Option<oneshot::Sender<Result<ConnAck, Error>>>,
    disconnect_replies: Vec<Reply<()>>,
    epoch: Instant,
}

impl Driver {
    pub(crate) fn new(
        options: ClientOptions,
        commands: mpsc::Receiver<Command>,
        messages: mpsc::Sender<Publish>,
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
            commands,
            messages,
            messages_gone: false,
            status,
            state,
            subscriptions: Vec::new(),
            publish_replies: HashMap::new(),
            subscribe_replies: HashMap::new(),
            unsubscribe_replies: HashMap::new(),
            restoring: HashSet::new(),
            deferred: VecDeque::new(),
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
                End::Local => {
                    self.fail_all(Error::Closed);
                    for reply in self.disconnect_replies.drain(..) {
                        let _ = reply.send(Ok(()));
                    }
                    return;
                }
                End::Refused(code) => Error::Refused(code),
                End::Lost(error) => error,
            };
            if let Some(first) = self.first_connect.take() {
                // The first connection must succeed for `connect` to return a client.
                let _ = first.send(Err(error));
                return;
            }
            let Some(backoff) = self.options.reconnect else {
                self.fail_all(Error::ConnectionLost);
                return;
            };
            self.fail_requests(Error::ConnectionLost);
            let delay = backoff.delay(attempt);
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
                            self.fail_all(Error::Closed);
                            let _ = reply.send(Ok(()));
                            return;
                        }
                        Some(command) => self.deferred.push_back(command),
                        None => {
                            self.fail_all(Error::Closed);
                            return;
                        }
                    },
                }
            }
            // A persistent session is resumed; otherwise a new one starts and the client
            // restores its subscriptions and resends what was not acknowledged.
            clean_start = !self.options.persistent();
        }
    }

    /// One connection, from opening the transport to its end.
    async fn connection(&mut self, clean_start: bool) -> End {
        let url = self.options.url.clone();
        let opened = tokio::time::timeout(
            self.options.connect_timeout,
            transport::open(&url, &self.options.tls),
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
        let mut engine = ClientConnection::new(config, self.state.take(), self.now());
        if let Err(error) = engine.connect(self.now()) {
            return End::Lost(error.into());
        }
        let mut local = false;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            while let Some(event) = engine.poll_event() {
                if let Some(end) = self.on_event(&mut engine, event, local) {
                    self.state = Some(engine.session_state());
                    let _ = io.shutdown().await;
                    return end;
                }
            }
            let mut write_failed = false;
            while let Some(bytes) = engine.poll_transmit(self.now()) {
                if io.write_all(&bytes).await.is_err() {
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
                read = io.read(&mut buf), if reading => Wake::Read(read.unwrap_or(0)),
                _ = sleep_until(deadline), if deadline.is_some() => Wake::Timer,
                command = self.commands.recv(), if !local => Wake::Command(command),
                permit = self.messages.clone().reserve_owned(), if stashing => Wake::Room(permit.ok()),
            };
            match wake {
                Wake::Read(0) => engine.handle_transport_closed(),
                Wake::Read(n) => engine.handle_bytes(self.now(), &buf[..n]),
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

    /// Handles one engine event; returns how the connection ended when it did.
    fn on_event(
        &mut self,
        engine: &mut ClientConnection,
        event: ClientEvent,
        local: bool,
    ) -> Option<End> {
        match event {
            ClientEvent::Connected {
                session_present,
                connack,
            } => {
                self.status.connected.store(true, Ordering::Relaxed);
                debug!(session_present, "connected");
                if let Some(first) = self.first_connect.take() {
                    let _ = first.send(Ok(connack));
                }
                if !session_present {
                    for (subscription, properties) in self.subscriptions.clone() {
                        if let Ok(token) = engine.subscribe(vec![subscription], properties) {
                            self.restoring.insert(token);
                        }
                    }
                }
                while let Some(command) = self.deferred.pop_front() {
                    self.on_command(engine, command);
                }
            }
            ClientEvent::Message(message) => self.deliver(message.publish),
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
                if !self.restoring.remove(&token)
                    && let Some(reply) = self.subscribe_replies.remove(&token)
                {
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
                    other => End::Lost(Error::Transport(format!("{other:?}"))),
                });
            }
            _ => {}
        }
        None
    }

    fn deliver(&mut self, message: Publish) {
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
                if !connected && publish.qos == QoS::AtMostOnce {
                    self.deferred.push_back(Command::Publish { publish, reply });
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
                    self.deferred.push_back(Command::Subscribe {
                        subscriptions,
                        properties,
                        reply,
                    });
                    return;
                }
                for subscription in &subscriptions {
                    self.subscriptions
                        .retain(|(known, _)| known.filter != subscription.filter);
                    self.subscriptions
                        .push((subscription.clone(), properties.clone()));
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
                    self.deferred.push_back(Command::Unsubscribe {
                        filters,
                        properties,
                        reply,
                    });
                    return;
                }
                self.subscriptions
                    .retain(|(known, _)| !filters.contains(&known.filter));
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
