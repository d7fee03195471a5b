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
use crate::session::{Attachment, ControlBox, Session, count_down_expiry};
use crate::stats::Dropped;

/// Most messages handed to the client and not yet acknowledged by the remote broker. The
/// client's own window (and the remote's Receive Maximum) bounds what is on the wire; this
/// keeps its queue behind the window short, so that nothing waits where the bridge cannot
/// count it.
const WINDOW: usize = 64;

/// How long shutdown waits for the bridge's DISCONNECT to go out.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);

type Connecting = Pin<
    Box<dyn Future<Output = Result<(Client, Messages, ConnAck), rallymq_client::Error>> + Send>,
>;

/// Starts the bridge's task on the current runtime.
pub(crate) fn spawn(shared: Arc<Shared>, config: BridgeConfig) -> JoinHandle<()> {
    let bridge = Bridge::new(shared, config);
    tokio::spawn(bridge.run())
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
    outgoing: VecDeque<Publish>,
    /// Messages handed to the client, oldest first, with their acknowledgements.
    in_flight: VecDeque<(Publish, AckFuture)>,
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
    fn new(shared: Arc<Shared>, config: BridgeConfig) -> Self {
        // Named with a NUL, which no MQTT client id can hold, and kept out of the registry, as
        // the in-process subscriptions are: the index tells subscribers apart by name.
        let session = Arc::new(Session::new(format!("\0bridge-{}", config.name).into()));
        let control = Arc::new(ControlBox::default());
        session.lock().attachment = Some(Attachment {
            control: control.clone(),
        });
        Self {
            try_private: config.try_private,
            shared,
            config,
            session,
            control,
            outgoing: VecDeque::new(),
            in_flight: VecDeque::new(),
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
            self.take_local_messages();
            if let Link::Up { client, .. } = &link {
                self.hand_over(client);
            }
        }
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
        for message in retained {
            self.queue(message);
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
        let Some((publish, _)) = self.in_flight.pop_front() else {
            return;
        };
        match ack {
            Ok(ack) if ack.reason_code.is_error() => {
                // Refused (not authorized, quota): sending it again would not help.
                warn!(bridge = %self.config.name, topic = ?publish.topic.as_ref().map(TopicName::as_str), code = ?ack.reason_code, "the remote broker refused a bridged message");
                self.shared.stats.dropped(Dropped::BridgeRefused, 1);
            }
            Ok(_) => {}
            Err(_) => {
                // The client ended with it unacknowledged: it goes again, first.
                self.requeue_in_flight();
                if publish.qos != QoS::AtMostOnce {
                    self.outgoing.push_front(publish);
                }
            }
        }
    }

    /// Puts the messages handed to a client that ended back at the head of the queue, in
    /// order: the next client sends them first. QoS 0 ones are dropped, as they would be by a
    /// lost connection.
    fn requeue_in_flight(&mut self) {
        for (publish, _) in self.in_flight.drain(..).rev() {
            if publish.qos != QoS::AtMostOnce {
                self.outgoing.push_front(publish);
            }
        }
    }

    /// Moves what the router queued for the bridge's session into the bridge's queue, mapped
    /// to remote topics.
    fn take_local_messages(&mut self) {
        loop {
            // While connected, what the queue cannot take stays in the session's queue, whose
            // high-water mark slows this broker's publishers down to the remote's pace. While
            // not, it is dropped here instead: publishers need not wait for a broker that is
            // not there.
            if self.connected && self.outgoing.len() >= self.config.max_queued_messages {
                return;
            }
            let Some(queued) = self.session.lock().pop_pending() else {
                break;
            };
            let mut publish = queued.publish;
            if !count_down_expiry(&mut publish, queued.since) {
                self.shared.stats.dropped(Dropped::Expired, 1);
                continue;
            }
            let Some(topic) = &publish.topic else {
                continue;
            };
            let Some((remote, qos)) = self
                .config
                .topics
                .iter()
                .find_map(|line| line.outgoing(topic).map(|remote| (remote, line.qos)))
            else {
                continue;
            };
            publish.topic = Some(remote);
            publish.qos = publish.qos.min(qos);
            self.queue(publish);
        }
        self.shared.space_freed();
    }

    /// Adds a message for the remote broker to the queue, or drops it: QoS 0 while not
    /// connected, anything past `max_queued_messages`.
    fn queue(&mut self, publish: Publish) {
        if !self.connected && publish.qos == QoS::AtMostOnce {
            self.shared.stats.dropped(Dropped::OfflineQos0, 1);
            return;
        }
        if self.outgoing.len() >= self.config.max_queued_messages {
            self.shared.stats.dropped(Dropped::QueueFull, 1);
            if !self.dropping {
                self.dropping = true;
                warn!(bridge = %self.config.name, queued = self.outgoing.len(), "bridge queue full: messages for the remote broker are dropped until it drains");
            }
            return;
        }
        self.outgoing.push_back(publish);
    }

    /// Hands queued messages to the client while it is connected and its window has room.
    fn hand_over(&mut self, client: &Client) {
        while self.in_flight.len() < WINDOW && client.is_connected() {
            let Some(publish) = self.outgoing.pop_front() else {
                break;
            };
            let Some(message) = Message::from_publish(publish.clone()) else {
                continue;
            };
            match client.try_publish_message(message) {
                Ok(ack) => self.in_flight.push_back((publish, ack)),
                Err(_) => {
                    // No room after all (or the client just ended): it waits, first in line.
                    self.outgoing.push_front(publish);
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
