//! A bridge's task: its local session in the router, its client connection to the remote
//! broker, and the queue between them.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rallymq_client::{
    AckFuture, Backoff, Client, ClientOptions, ConnAck, ConnectionEvent, ConnectionEvents,
    Messages, SubscribeProperties, Subscription,
};
use rallymq_codec::{Message, Publish, QoS, ReasonCode, RetainHandling, TopicName};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::BridgeConfig;
use crate::broker::Shared;
use crate::router::SubscriptionData;
use crate::session::{
    Attachment, ControlBox, Durable, Queued, Session, StoredRef, count_down_expiry,
};
use crate::stats::Dropped;
use crate::store::{Change, LoadedSession, Ticket};

/// Most messages handed to the client and not yet acknowledged by the remote broker. The
/// client's own window (and the remote's Receive Maximum) bounds what is on the wire; this
/// keeps its queue behind the window short, so that nothing waits where the bridge cannot
/// count it.
const WINDOW: usize = 64;

/// Queue entries read from the store at a time.
const PAGE: usize = 256;

/// How long shutdown waits for the bridge's DISCONNECT to go out.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);

type Connecting = Pin<
    Box<dyn Future<Output = Result<(Client, Messages, ConnAck), rallymq_client::Error>> + Send>,
>;

/// Starts the bridge's task on the current runtime; `stored` is its session as the store
/// kept it, if the broker has a store and the bridge ran before.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    config: BridgeConfig,
    stored: Option<LoadedSession>,
) -> JoinHandle<()> {
    let bridge = Bridge::new(shared, config, stored);
    tokio::spawn(bridge.run())
}

/// A message for the remote broker, with its entry in the store if it has one: removed once
/// the remote broker has acknowledged it (or it is dropped), not before.
struct Outgoing {
    publish: Publish,
    stored: Option<StoredRef>,
}

/// The remote side as it is now.
enum Link {
    /// Not connected; the next attempt is at `retry_at`.
    Down { retry_at: tokio::time::Instant },
    /// A first connection under way (the client retries by itself once it has had one).
    Connecting(Connecting),
    /// A client that has connected once; it reconnects by itself when the connection is lost.
    Up {
        client: Client,
        messages: Messages,
        events: ConnectionEvents,
    },
}

/// What woke the bridge.
enum Wake {
    Signals,
    Shutdown,
    Retry,
    Connected(Result<(Client, Messages, ConnAck), rallymq_client::Error>),
    Incoming(Option<Message>),
    Event(Option<ConnectionEvent>),
    Acknowledged(Result<rallymq_client::Ack, rallymq_client::Error>),
}

struct Bridge {
    shared: Arc<Shared>,
    config: BridgeConfig,
    /// The bridge's session in the router: its subscriptions are the `out` topics, and what
    /// comes `in` is published in its name, so that No Local keeps it from going back out.
    session: Arc<Session>,
    control: Arc<ControlBox>,
    /// Messages for the remote broker not handed to the client yet, oldest first.
    outgoing: VecDeque<Outgoing>,
    /// Messages handed to the client, oldest first, with their acknowledgements.
    in_flight: VecDeque<(Outgoing, AckFuture)>,
    /// Store entries of messages done with (acknowledged or dropped), written once per turn.
    forgotten: Vec<Change>,
    /// Whether the bridge is connected to the remote broker now (its state topic says).
    connected: bool,
    /// Connection attempts in a row that failed.
    attempt: u32,
    /// The address the next first connection tries first.
    next_address: usize,
    /// Whether to connect with the bridge bit; cleared when the remote refuses it.
    try_private: bool,
    /// The queue dropped a message at its limit and has not drained since (logged once).
    dropping: bool,
}

impl Bridge {
    fn new(shared: Arc<Shared>, config: BridgeConfig, stored: Option<LoadedSession>) -> Self {
        // Kept out of the registry, as the in-process subscriptions are: the index tells
        // subscribers apart by name.
        let session = Arc::new(Session::new(super::session_id(&config.name).into()));
        let control = Arc::new(ControlBox::default());
        {
            let mut inner = session.lock();
            inner.attachment = Some(Attachment {
                control: control.clone(),
            });
            if shared.store.is_some() {
                // A persistent session that never expires: the router writes its QoS 1 and 2
                // messages to the store as it queues them; what an earlier run left waits in
                // the store, first.
                inner.persistent = true;
                inner.durable = Some(Box::new(Durable {
                    next_seq: stored.as_ref().map_or(0, |stored| stored.next_seq),
                    tail_len: stored.as_ref().map_or(0, |stored| stored.queue_len),
                    tail_bytes: stored.as_ref().map_or(0, |stored| stored.queue_bytes),
                    expiry_interval: u32::MAX,
                    ..Durable::default()
                }));
            }
        }
        if let Some(stored) = &stored {
            info!(bridge = %config.name, queued = stored.queue_len, "bridge queue restored from the store");
        }
        shared.save_record(&session);
        Self {
            try_private: config.try_private,
            shared,
            config,
            session,
            control,
            outgoing: VecDeque::new(),
            in_flight: VecDeque::new(),
            forgotten: Vec::new(),
            connected: false,
            attempt: 0,
            next_address: 0,
            dropping: false,
        }
    }

    async fn run(mut self) {
        for topic in self.config.topics.iter().filter(|t| t.direction.is_out()) {
            let data = SubscriptionData {
                qos: topic.qos,
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::DoNotSend,
                identifier: None,
            };
            self.shared
                .router
                .subscribe(&self.session, topic.local_filter(), data);
        }
        self.publish_state(false);
        let mut shutdown = self.shared.shutdown.clone();
        let mut link = Link::Connecting(self.connect());
        loop {
            if self.shared.stopping() {
                break;
            }
            let wake = {
                let front = self.in_flight.front_mut().map(|(_, ack)| ack);
                tokio::select! {
                    _ = self.control.signalled() => Wake::Signals,
                    _ = shutdown.changed() => Wake::Shutdown,
                    wake = poll_link(&mut link) => wake,
                    ack = async { front.expect("checked by the guard").await }, if front.is_some() => {
                        Wake::Acknowledged(ack)
                    }
                }
            };
            match wake {
                Wake::Signals => {}
                Wake::Shutdown => break,
                Wake::Retry => link = Link::Connecting(self.connect()),
                Wake::Connected(Ok((client, messages, _connack))) => {
                    self.attempt = 0;
                    let events = client.connection_events();
                    self.on_connected();
                    self.subscribe_remotely(&client);
                    link = Link::Up {
                        client,
                        messages,
                        events,
                    };
                }
                Wake::Connected(Err(error)) => link = self.on_connect_failed(&error),
                Wake::Incoming(Some(message)) => self.on_incoming(message),
                Wake::Event(Some(ConnectionEvent::Connected { .. })) => self.on_connected(),
                Wake::Event(Some(ConnectionEvent::Disconnected(error))) => {
                    self.on_disconnected(&error)
                }
                Wake::Event(Some(_)) => {}
                Wake::Incoming(None) | Wake::Event(None) => {
                    // The client ended (it reconnects by itself, so only if something broke):
                    // a new one, after the backoff.
                    self.on_disconnected(&rallymq_client::Error::Closed);
                    self.requeue_in_flight();
                    link = self.down();
                }
                Wake::Acknowledged(ack) => self.on_acknowledged(ack),
            }
            tokio::select! {
                () = self.take_local_messages() => {}
                // Reading the store waits for its writer, which a dying broker may not have.
                _ = shutdown.changed() => break,
            }
            if let Link::Up { client, .. } = &link {
                self.hand_over(client);
            }
            self.write_forgotten();
        }
        self.write_forgotten();
        if let Link::Up { client, .. } = link {
            let _ = tokio::time::timeout(DISCONNECT_TIMEOUT, client.disconnect()).await;
        }
        self.shared.router.remove_session(&self.session);
    }

    /// Options for the next first connection: the addresses from `next_address` on, in turn.
    fn client_options(&self) -> ClientOptions {
        let config = &self.config;
        let count = config.addresses.len().max(1);
        let mut addresses = (0..count)
            .filter_map(|i| config.addresses.get((self.next_address + i) % count))
            .map(|address| config.url(address));
        let first = addresses.next().unwrap_or_default();
        let (min, max) = config.restart_timeout;
        let mut options = ClientOptions::new(&first)
            .client_id(&config.client_id)
            .version(config.protocol)
            .clean_start(config.clean_session)
            .keep_alive(config.keep_alive)
            // MQTT 5 has No Local and Retain As Published for this, and Mosquitto refuses the
            // bit on an MQTT 5 CONNECT.
            .bridge_mode(self.try_private && !config.protocol.is_v5())
            .reconnect(Some(Backoff {
                min,
                max: max.max(min),
            }));
        for url in addresses {
            options = options.fallback_url(&url);
        }
        if config.protocol.is_v5() && !config.clean_session {
            // A session that outlives the connection, as MQTT 3's Clean Session 0.
            options = options.session_expiry(u32::MAX);
        }
        match (&config.username, &config.password) {
            (Some(username), password) => {
                options = options.credentials(username, password.as_deref().map(str::as_bytes));
            }
            (None, Some(password)) => {
                // MQTT 5 allows a password alone; MQTT 3 refuses to encode it, which is reported.
                options.connect.password = Some(password.clone().into());
            }
            (None, None) => {}
        }
        if let Some(ca_file) = &config.ca_file {
            options = options.ca_file(ca_file);
        }
        if let Some((certificate, key)) = &config.certificate {
            options = options.client_certificate(certificate, key);
        }
        options.tls.skip_host_name_verification = config.insecure;
        options.max_in_flight = WINDOW as u16;
        // Room for the whole window behind the engine's while a reconnect is under way, so
        // that handing a message over never fails for want of room.
        options.max_queued = 2 * WINDOW;
        options
    }

    fn connect(&self) -> Connecting {
        let options = self.client_options();
        Box::pin(Client::connect(options))
    }

    fn on_connect_failed(&mut self, error: &rallymq_client::Error) -> Link {
        let address = self
            .config
            .addresses
            .get(self.next_address % self.config.addresses.len().max(1))
            .cloned()
            .unwrap_or_default();
        if self.try_private
            && matches!(
                error,
                rallymq_client::Error::Refused(ReasonCode::UnsupportedProtocolVersion)
            )
        {
            // Not a broker that knows bridges: connect as a plain client (Mosquitto does the
            // same), at once.
            warn!(bridge = %self.config.name, %address, "the remote broker refuses the bridge bit (try_private): connecting without it");
            self.try_private = false;
            return Link::Connecting(self.connect());
        }
        warn!(bridge = %self.config.name, %address, %error, "bridge connection failed");
        self.next_address = self.next_address.wrapping_add(1);
        self.down()
    }

    /// Waits for the backoff's delay before the next first connection.
    fn down(&mut self) -> Link {
        let (min, max) = self.config.restart_timeout;
        let delay = Backoff {
            min,
            max: max.max(min),
        }
        .delay(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        debug!(bridge = %self.config.name, ?delay, "bridge reconnecting");
        Link::Down {
            retry_at: tokio::time::Instant::now() + delay,
        }
    }

    fn on_connected(&mut self) {
        info!(bridge = %self.config.name, client_id = %self.config.client_id, "bridge connected");
        self.connected = true;
        self.publish_state(true);
        // What is retained here on the `out` topics goes to the remote broker at every
        // connection, as Mosquitto's bridges do: it may have missed changes while apart.
        let mut retained = Vec::new();
        for topic in self.config.topics.iter().filter(|t| t.direction.is_out()) {
            for (message, _) in self.shared.router.retained_matching(topic.local_filter()) {
                let Some(remote) = message.topic.as_ref().and_then(|t| topic.outgoing(t)) else {
                    continue;
                };
                let mut message = message;
                message.topic = Some(remote);
                message.qos = message.qos.min(topic.qos);
                message.retain = true;
                retained.push(message);
            }
        }
        for publish in retained {
            self.queue(Outgoing {
                publish,
                stored: None,
            });
        }
    }

    fn on_disconnected(&mut self, error: &rallymq_client::Error) {
        if self.connected {
            warn!(bridge = %self.config.name, %error, "bridge disconnected");
        }
        self.connected = false;
        self.publish_state(false);
    }

    /// Subscribes to the `in` topics on the remote broker, in the background (the client
    /// subscribes again by itself after a reconnect that finds no session).
    fn subscribe_remotely(&self, client: &Client) {
        let v5 = self.config.protocol.is_v5();
        let subscriptions: Vec<Subscription> = self
            .config
            .topics
            .iter()
            .filter(|topic| topic.direction.is_in())
            .map(|topic| {
                let mut subscription = Subscription::new(topic.remote_filter().clone(), topic.qos);
                if v5 {
                    // Not back what the bridge itself sent (a `both` topic would loop), and
                    // retained messages still retained.
                    subscription.options.no_local = true;
                    subscription.options.retain_as_published = true;
                }
                subscription
            })
            .collect();
        if subscriptions.is_empty() {
            return;
        }
        let client = client.clone();
        let name = self.config.name.clone();
        tokio::spawn(async move {
            let filters: Vec<String> = subscriptions
                .iter()
                .map(|s| s.filter.as_str().to_owned())
                .collect();
            match client
                .subscribe_many(subscriptions, SubscribeProperties::default())
                .await
            {
                Ok(codes) => {
                    for (filter, code) in filters.iter().zip(codes) {
                        if code.is_error() {
                            warn!(bridge = %name, %filter, ?code, "the remote broker refused a bridge subscription");
                        }
                    }
                }
                Err(error) => debug!(bridge = %name, %error, "bridge subscription not answered"),
            }
        });
    }

    /// A message from the remote broker: published here under its local topic.
    fn on_incoming(&mut self, message: Message) {
        let Some((topic, qos)) = self
            .config
            .topics
            .iter()
            .find_map(|line| line.incoming(&message.topic).map(|topic| (topic, line.qos)))
        else {
            debug!(bridge = %self.config.name, topic = %message.topic, "no bridge topic takes this message in");
            return;
        };
        let mut publish = Publish::from(message);
        publish.topic = Some(topic);
        publish.qos = publish.qos.min(qos);
        if let Some(properties) = publish.properties.get_mut() {
            properties.subscription_identifiers.clear();
        }
        self.shared.publish(Some(&self.session.client_id), &publish);
    }

    fn on_acknowledged(&mut self, ack: Result<rallymq_client::Ack, rallymq_client::Error>) {
        let Some((outgoing, _)) = self.in_flight.pop_front() else {
            return;
        };
        match ack {
            Ok(ack) if ack.reason_code.is_error() => {
                // Refused (not authorized, quota): sending it again would not help.
                warn!(bridge = %self.config.name, topic = ?outgoing.publish.topic.as_ref().map(TopicName::as_str), code = ?ack.reason_code, "the remote broker refused a bridged message");
                self.shared.stats.dropped(Dropped::BridgeRefused, 1);
                self.forget(outgoing.stored);
            }
            // PUBACK, or PUBCOMP: the remote broker has it, and the store need not any more.
            Ok(_) => self.forget(outgoing.stored),
            Err(_) => {
                // The client ended with it unacknowledged: it goes again, first.
                self.requeue_in_flight();
                if outgoing.publish.qos != QoS::AtMostOnce {
                    self.outgoing.push_front(outgoing);
                }
            }
        }
    }

    /// Puts the messages handed to a client that ended back at the head of the queue, in
    /// order: the next client sends them first. QoS 0 ones are dropped, as they would be by a
    /// lost connection (they are never stored).
    fn requeue_in_flight(&mut self) {
        for (outgoing, _) in self.in_flight.drain(..).rev() {
            if outgoing.publish.qos != QoS::AtMostOnce {
                self.outgoing.push_front(outgoing);
            }
        }
    }

    /// Moves what the router queued for the bridge's session (in memory, then what waits in
    /// the store only) into the bridge's queue, mapped to remote topics.
    async fn take_local_messages(&mut self) {
        loop {
            // While connected, what the queue cannot take stays in the session's queue, whose
            // high-water mark slows this broker's publishers down to the remote's pace. While
            // not, it is dropped here instead: publishers need not wait for a broker that is
            // not there.
            let room = self
                .config
                .max_queued_messages
                .saturating_sub(self.outgoing.len());
            if self.connected && room == 0 {
                break;
            }
            let queued = self.session.lock().pop_pending();
            if let Some(queued) = queued {
                self.take(queued);
                continue;
            }
            // The rest of the session's queue is in the store only (written while the
            // queue in memory was long, or before a restart), after what was in memory.
            let limit = if self.connected { room.min(PAGE) } else { PAGE };
            let Some(entries) = self
                .shared
                .read_stored_tail(&self.session, Ticket::default(), limit)
                .await
            else {
                break;
            };
            for loaded in &entries {
                self.take(Queued::loaded(loaded));
            }
        }
        self.shared.space_freed();
    }

    /// Takes one message of the session's queue into the bridge's, mapped to its remote topic;
    /// drops it if it expired or no topic line takes it out.
    fn take(&mut self, queued: Queued) {
        let mut publish = queued.publish;
        let remote = publish.topic.as_ref().and_then(|topic| {
            self.config
                .topics
                .iter()
                .find_map(|line| line.outgoing(topic).map(|remote| (remote, line.qos)))
        });
        if !count_down_expiry(&mut publish, queued.since) {
            self.shared.stats.dropped(Dropped::Expired, 1);
            self.forget(queued.stored);
            return;
        }
        match remote {
            Some((remote, qos)) => {
                publish.topic = Some(remote);
                publish.qos = publish.qos.min(qos);
                self.queue(Outgoing {
                    publish,
                    stored: queued.stored,
                });
            }
            None => self.forget(queued.stored),
        }
    }

    /// Adds a message for the remote broker to the queue, or drops it: QoS 0 while not
    /// connected, anything past `max_queued_messages`.
    fn queue(&mut self, outgoing: Outgoing) {
        if !self.connected && outgoing.publish.qos == QoS::AtMostOnce {
            self.shared.stats.dropped(Dropped::OfflineQos0, 1);
            self.forget(outgoing.stored);
            return;
        }
        if self.outgoing.len() >= self.config.max_queued_messages {
            self.shared.stats.dropped(Dropped::QueueFull, 1);
            self.forget(outgoing.stored);
            if !self.dropping {
                self.dropping = true;
                warn!(bridge = %self.config.name, queued = self.outgoing.len(), "bridge queue full: messages for the remote broker are dropped until it drains");
            }
            return;
        }
        self.outgoing.push_back(outgoing);
    }

    /// The message's entry leaves the store (with the others of this turn).
    fn forget(&mut self, stored: Option<StoredRef>) {
        if let Some(stored) = stored {
            self.forgotten.push(Change::DeleteEntry {
                client_id: self.session.client_id.clone(),
                seq: stored.seq,
            });
        }
    }

    fn write_forgotten(&mut self) {
        if !self.forgotten.is_empty() {
            self.shared.write(std::mem::take(&mut self.forgotten));
        }
    }

    /// Hands queued messages to the client while it is connected and its window has room.
    fn hand_over(&mut self, client: &Client) {
        while self.in_flight.len() < WINDOW && client.is_connected() {
            let Some(outgoing) = self.outgoing.pop_front() else {
                break;
            };
            let Some(message) = Message::from_publish(outgoing.publish.clone()) else {
                self.forget(outgoing.stored);
                continue;
            };
            match client.try_publish_message(message) {
                Ok(ack) => self.in_flight.push_back((outgoing, ack)),
                Err(_) => {
                    // No room after all (or the client just ended): it waits, first in line.
                    self.outgoing.push_front(outgoing);
                    break;
                }
            }
        }
        if self.outgoing.len() < self.config.max_queued_messages / 2 {
            self.dropping = false;
        }
    }

    /// Publishes the bridge's state, retained, as Mosquitto does: 1 connected, 0 not.
    fn publish_state(&self, connected: bool) {
        let topic = format!("$SYS/broker/connection/{}/state", self.config.name);
        crate::sys::publish(&self.shared, &topic, u8::from(connected).to_string());
    }
}

/// Waits for what the link has next.
async fn poll_link(link: &mut Link) -> Wake {
    match link {
        Link::Down { retry_at } => {
            tokio::time::sleep_until(*retry_at).await;
            Wake::Retry
        }
        Link::Connecting(connecting) => Wake::Connected(connecting.await),
        Link::Up {
            messages, events, ..
        } => tokio::select! {
            message = messages.recv() => Wake::Incoming(message),
            event = events.recv() => Wake::Event(event),
        },
    }
}
