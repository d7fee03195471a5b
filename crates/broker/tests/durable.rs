//! The durable broker across restarts (issue 13): every stored item — retained messages,
//! persistent sessions with their subscriptions, queued and in-flight messages, inbound QoS 2
//! identifiers, wills — survives a restart on the same directory, over MQTT 3.1.1 and 5.0,
//! whether the broker shut down or died (its store closed under it: nothing written afterwards
//! reaches the disk). Also: expiry counted in wall-clock time across a restart, a message
//! stored once for many sessions, the directory's lock and format version, and what
//! publishers are told while the store's writes fail.
//!
//! Every test has a directory of its own under the system's temporary directory, removed when
//! it ends.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rallymq_broker::{
    Broker, BrokerConfig, BrokerHandle, DiskStore, Error, Loaded, Storage, Store, StoreError,
};
use rallymq_codec::{
    Ack, Connect, MqttString, Packet, PacketId, ProtocolVersion, Publish, QoS, ReasonCode,
    RetainHandling, Subscribe, SubscribeProperties, SubscriptionId, SubscriptionOptions,
    TopicFilter, TopicName, UserProperty, Will, WillProperties,
};
use rallymq_session::CloseReason;
use support::store::{DataDir, TestStore};
use support::{
    NoPacket, Raw, TestClient, WAIT, connect_packet, connected_present, message, payload_str,
    persistent_connect, subscription, tcp_addr, topic_str, wait_clients,
};
use tokio::net::TcpStream;

const V311: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;
const VERSIONS: [ProtocolVersion; 2] = [V311, V5];

/// How long a test watches to be sure nothing (more) arrives.
const QUIET: Duration = Duration::from_millis(300);

/// The grace a shutdown gives connections: they are told at once, and write what they leave
/// to the store as they close; a longer grace would only wait for the test clients to hang up.
const GRACE: Duration = Duration::from_millis(500);

/// The session expiry of the persistent MQTT 5 sessions (an hour: nothing expires unless a
/// test means it to).
const HOUR: u32 = 3600;

type Client = TestClient<TcpStream>;

// ------------------------------------------------------------------ a broker on a directory

/// How a broker stops before the next one starts on its directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// `BrokerHandle::shutdown`: connections are closed and what they leave is stored.
    Shutdown,
    /// The store is closed under the running broker, as when the process dies: what was handed
    /// to it is committed, nothing written afterwards; the broker is then dropped.
    Crash,
}

const STOPS: [Stop; 2] = [Stop::Shutdown, Stop::Crash];

fn config() -> BrokerConfig {
    let mut config = BrokerConfig::without_listeners();
    config.tcp = vec!["127.0.0.1:0".parse().unwrap()];
    config.sys_interval = None;
    config
}

/// A broker on a [`TestStore`] in a directory.
struct Node {
    broker: BrokerHandle,
    store: Arc<TestStore>,
    config: BrokerConfig,
}

impl Node {
    async fn start(dir: &Path) -> Self {
        Self::start_with(dir, config()).await
    }

    async fn start_with(dir: &Path, config: BrokerConfig) -> Self {
        let store = Arc::new(TestStore::open(dir).expect("the store opens"));
        let broker = Broker::start_with_store(config.clone(), store.clone())
            .await
            .expect("the broker starts");
        Self {
            broker,
            store,
            config,
        }
    }

    fn addr(&self) -> SocketAddr {
        tcp_addr(&self.broker)
    }

    async fn stop(self, stop: Stop) {
        match stop {
            Stop::Shutdown => {
                shut_down(self.broker).await;
                self.store.close();
            }
            Stop::Crash => {
                self.store.close();
                drop(self.broker);
            }
        }
    }

    async fn restart(self, stop: Stop) -> Self {
        let dir = self.store.dir().to_path_buf();
        let config = self.config.clone();
        self.stop(stop).await;
        Self::start_with(&dir, config).await
    }

    /// Waits until the broker counts `n` clients connected: it has handled the others' ends.
    async fn wait_connected(&self, n: usize) {
        wait_clients(&self.broker, n).await;
    }
}

/// A configuration with the broker's own disk store in `dir` (`Broker::start` opens it).
fn directory_config(dir: &Path) -> BrokerConfig {
    let mut config = config();
    config.storage = Storage::Directory(dir.to_path_buf());
    config
}

/// Shuts `broker` down, within a bound: its last step waits for the store.
async fn shut_down(broker: BrokerHandle) {
    tokio::time::timeout(GRACE + WAIT, broker.shutdown(GRACE))
        .await
        .expect("the broker shuts down in time");
}

/// What a store in `dir` holds, read while no broker runs.
fn stored(dir: &Path) -> Loaded {
    DiskStore::open(dir)
        .expect("the store opens")
        .load()
        .expect("the store loads")
}

/// The client ids of the sessions stored in `dir`, read while no broker runs.
fn stored_sessions(dir: &Path) -> Vec<String> {
    stored(dir)
        .sessions
        .into_iter()
        .map(|session| session.record.client_id)
        .collect()
}

// ------------------------------------------------------------------ clients

fn persistent(version: ProtocolVersion, client_id: &str) -> Connect {
    persistent_connect(version, client_id, HOUR)
}

async fn client(addr: SocketAddr, version: ProtocolVersion, client_id: &str) -> Client {
    connected_present(addr, connect_packet(version, client_id))
        .await
        .0
}

/// A persistent session subscribed to `filter`, left offline.
async fn offline_subscriber(node: &Node, version: ProtocolVersion, client_id: &str, filter: &str) {
    let (mut client, _) = connected_present(node.addr(), persistent(version, client_id)).await;
    client
        .subscribe(vec![subscription(filter, QoS::ExactlyOnce)])
        .await;
    client.disconnect(ReasonCode::Success).await;
}

fn publish(topic: &str, payload: &str, qos: QoS, retain: bool) -> Publish {
    let mut publish = message(topic, payload, qos);
    publish.retain = retain;
    publish
}

/// Publishes and asserts the broker accepted it.
async fn published(client: &mut Client, publish: Publish) {
    let code = client.publish(publish).await;
    assert!(
        matches!(
            code,
            ReasonCode::Success | ReasonCode::NoMatchingSubscribers
        ),
        "not accepted: {code:?}"
    );
}

/// Every message that arrives until `QUIET` passes without one.
async fn drain(client: &mut Client) -> Vec<Publish> {
    let mut received = Vec::new();
    while let Some(publish) = client.recv_within(QUIET).await {
        received.push(publish);
    }
    received
}

/// The payloads of [`drain`].
async fn payloads(client: &mut Client) -> Vec<String> {
    drain(client).await.iter().map(payload_str).collect()
}

async fn sleep_until(at: Instant) {
    tokio::time::sleep(at.saturating_duration_since(Instant::now())).await;
}

fn identifiers(publish: &Publish) -> Vec<u32> {
    publish
        .properties
        .subscription_identifiers
        .iter()
        .map(|id| id.get())
        .collect()
}

fn sub_id(id: u32) -> SubscribeProperties {
    SubscribeProperties {
        subscription_identifier: SubscriptionId::new(id),
        ..Default::default()
    }
}

fn pid(id: u16) -> PacketId {
    PacketId::new(id).unwrap()
}

/// A raw SUBSCRIBE of `filter` at `qos`.
fn subscribe_packet(filter: &str, qos: QoS) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: pid(1),
        properties: Default::default(),
        subscriptions: vec![subscription(filter, qos)],
    })
}

/// A raw client with a persistent session subscribed to `filter`.
async fn raw_subscriber(
    node: &Node,
    version: ProtocolVersion,
    client_id: &str,
    filter: &str,
    qos: QoS,
) -> Raw {
    let (mut raw, connack) = Raw::connect(node.addr(), persistent(version, client_id)).await;
    assert_eq!(connack.reason_code, ReasonCode::Success);
    raw.send(subscribe_packet(filter, qos)).await;
    assert!(matches!(raw.expect().await, Packet::SubAck(_)));
    raw
}

/// The next packet must be a PUBLISH: returns it.
async fn expect_publish(raw: &mut Raw) -> Publish {
    match raw.expect().await {
        Packet::Publish(publish) => publish,
        other => panic!("not a PUBLISH: {other:?}"),
    }
}

async fn expect_quiet(raw: &mut Raw) {
    let next = raw.next_within(QUIET).await;
    assert_eq!(next, Err(NoPacket::Timeout), "nothing more was expected");
}

/// Subscription options at `qos`, tuned.
fn options(qos: QoS, tune: impl FnOnce(&mut SubscriptionOptions)) -> SubscriptionOptions {
    let mut options = SubscriptionOptions {
        qos,
        ..Default::default()
    };
    tune(&mut options);
    options
}

fn filter(text: &str) -> TopicFilter {
    TopicFilter::new(text).unwrap()
}

/// A round trip: once PINGRESP is back, the broker has handled everything sent before.
async fn round_trip(raw: &mut Raw) {
    raw.send(Packet::PingReq).await;
    assert_eq!(raw.expect().await, Packet::PingResp);
}

// ------------------------------------------------------------------ retained messages

/// MQTT-3.3.1-5: the server stores a retained message and replaces it with the next one of
/// its topic; a zero-byte retained message removes it (MQTT-3.3.1-6 in MQTT 5, -10/-11 in
/// 3.1.1). What is stored survives the broker: after a restart a new subscription gets the
/// last retained message of each topic, with its QoS and (MQTT 5) properties, and a cleared
/// topic stays cleared.
#[tokio::test]
async fn mqtt_3_3_1_5_retained_messages_survive_a_restart_and_a_cleared_one_stays_cleared() {
    for stop in STOPS {
        for version in VERSIONS {
            retained_across(version, stop).await;
        }
    }
}

async fn retained_across(version: ProtocolVersion, stop: Stop) {
    let context = format!("{version:?}, {stop:?}");
    let dir = DataDir::new();
    let node = Node::start(&dir).await;
    let mut publisher = client(node.addr(), version, "publisher").await;
    published(
        &mut publisher,
        publish("r/1", "one", QoS::AtLeastOnce, true),
    )
    .await;
    published(
        &mut publisher,
        publish("r/2", "two", QoS::ExactlyOnce, true),
    )
    .await;
    published(
        &mut publisher,
        publish("r/3", "first", QoS::AtLeastOnce, true),
    )
    .await;
    let mut replacing = publish("r/3", "three", QoS::ExactlyOnce, true);
    if version.is_v5() {
        replacing.properties.content_type = Some(MqttString::new("text/plain").unwrap());
        replacing.properties.user_properties = vec![UserProperty::new("k", "v").unwrap()];
    }
    published(&mut publisher, replacing).await;
    published(&mut publisher, publish("r/2", "", QoS::AtLeastOnce, true)).await;
    drop(publisher);
    let node = node.restart(stop).await;

    let mut subscriber = client(node.addr(), version, "subscriber").await;
    subscriber
        .subscribe(vec![subscription("r/#", QoS::ExactlyOnce)])
        .await;
    let mut got = drain(&mut subscriber).await;
    got.sort_by_key(topic_str);
    let summary: Vec<_> = got
        .iter()
        .map(|p| (topic_str(p), payload_str(p), p.qos, p.retain))
        .collect();
    assert_eq!(
        summary,
        [
            ("r/1".to_owned(), "one".to_owned(), QoS::AtLeastOnce, true),
            ("r/3".to_owned(), "three".to_owned(), QoS::ExactlyOnce, true),
        ],
        "{context}"
    );
    if version.is_v5() {
        assert_eq!(
            got[1].properties.content_type.as_deref(),
            Some("text/plain"),
            "{context}"
        );
        assert_eq!(
            got[1].properties.user_properties,
            [UserProperty::new("k", "v").unwrap()],
            "{context}"
        );
    }
    node.stop(Stop::Shutdown).await;
}

// ------------------------------------------------------------------ persistent sessions

/// MQTT-3.1.2-23 (MQTT 5): a session with a Session Expiry Interval above 0 is kept after its
/// connection closes: across a restart too. Its subscriptions keep their options (QoS, No
/// Local, Retain As Published, Retain Handling) and identifiers, CONNACK says Session Present
/// (MQTT-3.2.2-2), and the QoS 1 and 2 messages published while it was offline arrive after
/// the restart, in order, with their subscription identifiers.
#[tokio::test]
async fn mqtt_3_1_2_23_a_v5_session_survives_a_restart_with_its_subscriptions_and_queue() {
    for stop in STOPS {
        v5_session_across(stop).await;
    }
}

/// (QoS, payload, topic, RETAIN, subscription identifiers) of what a subscriber receives.
type Delivered = (String, String, QoS, bool, Vec<u32>);

fn delivered(publish: &Publish) -> Delivered {
    (
        topic_str(publish),
        payload_str(publish),
        publish.qos,
        publish.retain,
        identifiers(publish),
    )
}

async fn v5_session_across(stop: Stop) {
    let context = format!("{stop:?}");
    let dir = DataDir::new();
    let node = Node::start(&dir).await;
    let (mut keeper, present) = connected_present(node.addr(), persistent(V5, "keeper")).await;
    assert!(!present);
    let subscriptions = [
        (
            "s/nl",
            options(QoS::AtLeastOnce, |o| o.no_local = true),
            Some(1),
        ),
        (
            "s/rap",
            options(QoS::ExactlyOnce, |o| o.retain_as_published = true),
            Some(2),
        ),
        (
            "s/rh",
            options(QoS::AtLeastOnce, |o| {
                o.retain_handling = RetainHandling::DoNotSend
            }),
            Some(3),
        ),
        (
            "s/many/#",
            options(QoS::ExactlyOnce, |o| {
                o.retain_handling = RetainHandling::SendAtSubscribeIfNew
            }),
            None,
        ),
    ];
    for (text, options, id) in &subscriptions {
        let properties = id.map(sub_id).unwrap_or_default();
        keeper
            .subscribe_with(
                vec![rallymq_codec::Subscription {
                    filter: filter(text),
                    options: *options,
                }],
                properties,
            )
            .await;
    }
    keeper.disconnect(ReasonCode::Success).await;
    node.wait_connected(0).await;

    let mut publisher = client(node.addr(), V5, "publisher").await;
    let mut sent = vec![
        publish("s/rap", "a", QoS::ExactlyOnce, true),
        publish("s/rh", "b", QoS::AtLeastOnce, false),
        publish("s/rap", "c", QoS::AtLeastOnce, false),
    ];
    for n in 0..10 {
        let qos = [QoS::AtLeastOnce, QoS::ExactlyOnce][n % 2];
        sent.push(publish(
            &format!("s/many/{n}"),
            &format!("m{n}"),
            qos,
            false,
        ));
    }
    for message in &sent {
        published(&mut publisher, message.clone()).await;
    }
    drop(publisher);
    node.stop(stop).await;

    // As stored: the record with every option and identifier, and the queue.
    let loaded = stored(&dir);
    let session = loaded
        .sessions
        .iter()
        .find(|s| s.record.client_id == "keeper")
        .expect("the session is stored");
    assert_eq!(session.record.expiry_interval, HOUR, "{context}");
    assert_eq!(session.queue_len, sent.len() as u64, "{context}");
    let mut recorded: Vec<_> = session
        .record
        .subscriptions
        .iter()
        .map(|(f, o, id)| (f.as_str().to_owned(), *o, id.map(|id| id.get())))
        .collect();
    recorded.sort_by(|a, b| a.0.cmp(&b.0));
    let mut expected: Vec<_> = subscriptions
        .iter()
        .map(|(f, o, id)| ((*f).to_owned(), *o, *id))
        .collect();
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(recorded, expected, "{context}");

    let node = Node::start(&dir).await;
    let (mut keeper, present) = connected_present(node.addr(), persistent(V5, "keeper")).await;
    assert!(present, "MQTT-3.2.2-2: Session Present ({context})");
    let got: Vec<Delivered> = drain(&mut keeper).await.iter().map(delivered).collect();
    let mut want: Vec<Delivered> = vec![
        // Retain As Published keeps the flag.
        ("s/rap".into(), "a".into(), QoS::ExactlyOnce, true, vec![2]),
        ("s/rh".into(), "b".into(), QoS::AtLeastOnce, false, vec![3]),
        ("s/rap".into(), "c".into(), QoS::AtLeastOnce, false, vec![2]),
    ];
    for n in 0..10 {
        let qos = [QoS::AtLeastOnce, QoS::ExactlyOnce][n % 2];
        want.push((format!("s/many/{n}"), format!("m{n}"), qos, false, vec![]));
    }
    assert_eq!(got, want, "{context}");

    // The options act as before the restart: No Local, the granted QoS, Retain As Published.
    published(&mut keeper, publish("s/nl", "own", QoS::AtLeastOnce, false)).await;
    let mut other = client(node.addr(), V5, "other").await;
    published(
        &mut other,
        publish("s/nl", "other", QoS::AtLeastOnce, false),
    )
    .await;
    published(&mut other, publish("s/rh", "down", QoS::ExactlyOnce, false)).await;
    published(&mut other, publish("s/rap", "live", QoS::AtLeastOnce, true)).await;
    let got: Vec<Delivered> = drain(&mut keeper).await.iter().map(delivered).collect();
    let want: Vec<Delivered> = vec![
        (
            "s/nl".into(),
            "other".into(),
            QoS::AtLeastOnce,
            false,
            vec![1],
        ),
        (
            "s/rh".into(),
            "down".into(),
            QoS::AtLeastOnce,
            false,
            vec![3],
        ),
        (
            "s/rap".into(),
            "live".into(),
            QoS::AtLeastOnce,
            true,
            vec![2],
        ),
    ];
    assert_eq!(got, want, "{context}");
    node.stop(Stop::Shutdown).await;
}

/// MQTT-3.1.2-4 (MQTT 3.1.1): with Clean Session 0 the server resumes the session of the
/// client id: across a restart too, with its subscriptions at their QoS, Session Present 1
/// (MQTT-3.2.2-2), and the QoS 1 and 2 messages published while it was offline, in order.
#[tokio::test]
async fn mqtt_3_1_2_4_a_v311_session_survives_a_restart_with_its_subscriptions_and_queue() {
    for stop in STOPS {
        let context = format!("{stop:?}");
        let dir = DataDir::new();
        let node = Node::start(&dir).await;
        let (mut keeper, present) =
            connected_present(node.addr(), persistent(V311, "keeper")).await;
        assert!(!present);
        keeper
            .subscribe(vec![
                subscription("s/one", QoS::AtLeastOnce),
                subscription("s/two/#", QoS::ExactlyOnce),
            ])
            .await;
        keeper.disconnect(ReasonCode::Success).await;
        node.wait_connected(0).await;

        let mut publisher = client(node.addr(), V311, "publisher").await;
        let mut sent = Vec::new();
        for n in 0..12 {
            let topic = ["s/one", "s/two/x"][n % 2];
            let qos = [QoS::AtLeastOnce, QoS::ExactlyOnce][(n / 2) % 2];
            sent.push(publish(topic, &format!("m{n}"), qos, false));
        }
        for message in &sent {
            published(&mut publisher, message.clone()).await;
        }
        drop(publisher);
        node.stop(stop).await;

        let loaded = stored(&dir);
        let session = &loaded.sessions[0];
        assert_eq!(session.record.client_id, "keeper");
        assert_eq!(session.record.expiry_interval, u32::MAX, "{context}");
        let mut recorded: Vec<_> = session
            .record
            .subscriptions
            .iter()
            .map(|(f, o, id)| (f.as_str().to_owned(), o.qos, *id))
            .collect();
        recorded.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            recorded,
            [
                ("s/one".to_owned(), QoS::AtLeastOnce, None),
                ("s/two/#".to_owned(), QoS::ExactlyOnce, None),
            ],
            "{context}"
        );

        let node = Node::start(&dir).await;
        let (mut keeper, present) =
            connected_present(node.addr(), persistent(V311, "keeper")).await;
        assert!(present, "MQTT-3.2.2-2 ({context})");
        let got: Vec<_> = drain(&mut keeper)
            .await
            .iter()
            .map(|p| (topic_str(p), payload_str(p), p.qos))
            .collect();
        let want: Vec<_> = sent
            .iter()
            .map(|p| {
                let granted = if topic_str(p) == "s/one" {
                    QoS::AtLeastOnce
                } else {
                    QoS::ExactlyOnce
                };
                (topic_str(p), payload_str(p), p.qos.min(granted))
            })
            .collect();
        assert_eq!(got, want, "{context}");
        node.stop(Stop::Shutdown).await;
    }
}

/// MQTT-3.10.4-2: once unsubscribed, a filter adds no new messages to the session: across a
/// restart too (UNSUBACK waits for the session's record).
#[tokio::test]
async fn mqtt_3_10_4_2_an_unsubscribed_filter_stays_unsubscribed_after_a_restart() {
    for stop in STOPS {
        for version in VERSIONS {
            let context = format!("{version:?}, {stop:?}");
            let dir = DataDir::new();
            let node = Node::start(&dir).await;
            let (mut keeper, _) =
                connected_present(node.addr(), persistent(version, "keeper")).await;
            keeper
                .subscribe(vec![
                    subscription("a/#", QoS::AtLeastOnce),
                    subscription("b/#", QoS::AtLeastOnce),
                ])
                .await;
            keeper.unsubscribe("b/#").await;
            keeper.disconnect(ReasonCode::Success).await;
            node.wait_connected(0).await;
            let node = node.restart(stop).await;
            let mut publisher = client(node.addr(), version, "publisher").await;
            published(&mut publisher, publish("b/1", "b", QoS::AtLeastOnce, false)).await;
            published(&mut publisher, publish("a/1", "a", QoS::AtLeastOnce, false)).await;
            let (mut keeper, present) =
                connected_present(node.addr(), persistent(version, "keeper")).await;
            assert!(present, "{context}");
            let got = payloads(&mut keeper).await;
            assert_eq!(got, ["a"], "{context}");
            node.stop(Stop::Shutdown).await;
        }
    }
}

/// MQTT-3.1.2-4: a connection with Clean Start (Clean Session) discards the session it finds:
/// also one restored from the store, with its queued messages, which leave the store.
#[tokio::test]
async fn mqtt_3_1_2_4_clean_start_after_a_restart_discards_the_stored_session_and_its_messages() {
    for stop in STOPS {
        for version in VERSIONS {
            let context = format!("{version:?}, {stop:?}");
            let dir = DataDir::new();
            let node = Node::start(&dir).await;
            offline_subscriber(&node, version, "keeper", "k/#").await;
            node.wait_connected(0).await;
            let mut publisher = client(node.addr(), version, "publisher").await;
            for n in 0..3 {
                published(
                    &mut publisher,
                    publish("k/1", &format!("m{n}"), QoS::AtLeastOnce, false),
                )
                .await;
            }
            drop(publisher);
            let node = node.restart(stop).await;
            let mut clean = persistent(version, "keeper");
            clean.clean_start = true;
            let (mut keeper, present) = connected_present(node.addr(), clean).await;
            assert!(!present, "{context}");
            assert!(drain(&mut keeper).await.is_empty(), "{context}");
            keeper.disconnect(ReasonCode::Success).await;
            node.wait_connected(0).await;
            node.stop(stop).await;
            assert_eq!(
                messages_stored(&dir),
                0,
                "{context}: the queue left the store"
            );
            let loaded = stored(&dir);
            for session in &loaded.sessions {
                assert_eq!(session.queue_len, 0, "{context}");
                assert!(session.record.subscriptions.is_empty(), "{context}");
            }
        }
    }
}

/// The size of an offline session's queue is stored with it: after a restart the queue is as
/// full as it was, and its limit (`Limits::max_queued_messages`) drops what does not fit, as
/// before.
#[tokio::test]
async fn a_full_queue_is_still_full_after_a_restart() {
    for stop in STOPS {
        let context = format!("{stop:?}");
        let dir = DataDir::new();
        let mut config = config();
        config.limits.max_queued_messages = 3;
        let node = Node::start_with(&dir, config).await;
        offline_subscriber(&node, V5, "keeper", "q/#").await;
        node.wait_connected(0).await;
        for n in 0..5 {
            node.broker
                .publish(&format!("q/{n}"), format!("m{n}"), QoS::AtLeastOnce, false)
                .unwrap();
        }
        let node = node.restart(stop).await;
        node.broker
            .publish("q/5", "m5", QoS::AtLeastOnce, false)
            .unwrap();
        let (mut keeper, present) = connected_present(node.addr(), persistent(V5, "keeper")).await;
        assert!(present, "{context}");
        let got = payloads(&mut keeper).await;
        assert_eq!(got, ["m0", "m1", "m2"], "{context}");
        node.stop(Stop::Shutdown).await;
    }
}

/// An offline session's queue stays in the store and is read back in pages as its client
/// drains it: a queue longer than a page, and than what a connected session keeps in memory,
/// is delivered whole and in order after a restart.
#[tokio::test]
async fn a_long_queue_is_delivered_whole_and_in_order_after_a_restart() {
    const MESSAGES: usize = 1_500;
    for (version, stop) in [(V5, Stop::Crash), (V311, Stop::Shutdown)] {
        let context = format!("{version:?}, {stop:?}");
        let dir = DataDir::new();
        let mut config = config();
        config.limits.max_queued_messages = 2 * MESSAGES;
        let node = Node::start_with(&dir, config).await;
        offline_subscriber(&node, version, "keeper", "l/#").await;
        node.wait_connected(0).await;
        for n in 0..MESSAGES {
            let qos = [QoS::AtLeastOnce, QoS::ExactlyOnce][n % 2];
            node.broker
                .publish("l/1", format!("{n}"), qos, false)
                .unwrap();
        }
        let node = node.restart(stop).await;
        let (mut keeper, present) =
            connected_present(node.addr(), persistent(version, "keeper")).await;
        assert!(present, "{context}");
        let got = payloads(&mut keeper).await;
        let want: Vec<_> = (0..MESSAGES).map(|n| n.to_string()).collect();
        assert_eq!(got.len(), want.len(), "{context}");
        assert!(got == want, "{context}: out of order");
        node.stop(Stop::Shutdown).await;
    }
}

// ------------------------------------------------------------------ expiry across a restart

/// MQTT-4.1.0-2: the session state is discarded once its Session Expiry Interval has passed
/// after its connection closed, counted in wall-clock time while the broker is down: a
/// session whose expiry passed then is gone after the restart (Session Present 0, nothing
/// delivered), one whose expiry did not pass is there.
#[tokio::test]
async fn mqtt_4_1_0_2_a_session_whose_expiry_passes_while_the_broker_is_down_is_gone() {
    for stop in STOPS {
        let context = format!("{stop:?}");
        let dir = DataDir::new();
        let node = Node::start(&dir).await;
        let (mut brief, _) =
            connected_present(node.addr(), persistent_connect(V5, "brief", 2)).await;
        brief
            .subscribe(vec![subscription("x/#", QoS::AtLeastOnce)])
            .await;
        brief.disconnect(ReasonCode::Success).await;
        offline_subscriber(&node, V5, "lasting", "x/#").await;
        node.wait_connected(0).await;
        let closed = Instant::now();
        let mut publisher = client(node.addr(), V5, "publisher").await;
        published(
            &mut publisher,
            publish("x/1", "queued", QoS::AtLeastOnce, false),
        )
        .await;
        drop(publisher);
        node.stop(stop).await;
        sleep_until(closed + Duration::from_millis(2_200)).await;

        assert_eq!(stored_sessions(&dir), ["lasting"], "{context}");
        let node = Node::start(&dir).await;
        assert!(!node.broker.has_session("brief"), "{context}");
        let (mut brief, present) =
            connected_present(node.addr(), persistent_connect(V5, "brief", 2)).await;
        assert!(!present, "{context}");
        assert!(drain(&mut brief).await.is_empty(), "{context}");
        let (mut lasting, present) =
            connected_present(node.addr(), persistent(V5, "lasting")).await;
        assert!(present, "{context}");
        let got = payloads(&mut lasting).await;
        assert_eq!(got, ["queued"], "{context}");
        node.stop(Stop::Shutdown).await;
    }
}

/// MQTT 5 lets a client change its Session Expiry Interval in DISCONNECT: 0 ends the session
/// with the connection, and a shorter one counts from there, across a restart too.
#[tokio::test]
async fn a_session_expiry_set_by_disconnect_holds_across_a_restart() {
    for stop in STOPS {
        let context = format!("{stop:?}");
        let dir = DataDir::new();
        let node = Node::start(&dir).await;
        for (client_id, expiry) in [("ends", 0), ("brief", 1), ("stays", 60)] {
            let (mut client, _) = connected_present(node.addr(), persistent(V5, client_id)).await;
            let mut disconnect = rallymq_codec::Disconnect::new(ReasonCode::Success);
            disconnect.properties.session_expiry_interval = Some(expiry);
            client.disconnect_with(disconnect).await;
        }
        node.wait_connected(0).await;
        let closed = Instant::now();
        node.stop(stop).await;
        sleep_until(closed + Duration::from_millis(1_200)).await;
        let loaded = stored(&dir);
        let names: Vec<_> = loaded
            .sessions
            .iter()
            .map(|s| (s.record.client_id.as_str(), s.record.expiry_interval))
            .collect();
        assert_eq!(names, [("stays", 60)], "{context}");
    }
}

/// MQTT-4.1.0-2, across two restarts: a session whose client was connected when the broker
/// died ended then, as far as the broker can tell, at its restart; its expiry counts from there
/// also if the broker stops again before the client comes back.
#[tokio::test]
async fn mqtt_4_1_0_2_a_restored_session_expiry_keeps_counting_across_the_next_restart() {
    let dir = DataDir::new();
    let node = Node::start(&dir).await;
    let (connected, _) = connected_present(node.addr(), persistent_connect(V5, "brief", 1)).await;
    node.wait_connected(1).await;
    let node = node.restart(Stop::Crash).await;
    let restarted = Instant::now();
    drop(connected);
    assert!(node.broker.has_session("brief"));
    node.stop(Stop::Shutdown).await;
    sleep_until(restarted + Duration::from_millis(1_500)).await;
    let names = stored_sessions(&dir);
    assert!(
        names.is_empty(),
        "expired a second after the first restart: {names:?}"
    );
}

/// MQTT-3.3.2-5: a message whose Message Expiry Interval has passed is not delivered, counted
/// in wall-clock time while the broker is down; one delivered after the restart carries the
/// time it has left (MQTT-3.3.2-6), less than it was published with. The same for a retained
/// message, and for a 3.1.1 subscriber (which is sent no expiry).
#[tokio::test]
async fn mqtt_3_3_2_5_a_message_whose_expiry_passes_while_the_broker_is_down_is_not_delivered() {
    for stop in STOPS {
        let context = format!("{stop:?}");
        let dir = DataDir::new();
        let node = Node::start(&dir).await;
        offline_subscriber(&node, V5, "late5", "e/#").await;
        offline_subscriber(&node, V311, "late3", "e/#").await;
        node.wait_connected(0).await;
        let mut publisher = client(node.addr(), V5, "publisher").await;
        for (topic, qos, expiry, retain) in [
            ("e/short", QoS::AtLeastOnce, 1, false),
            ("e/long", QoS::ExactlyOnce, 60, false),
            ("e/short2", QoS::ExactlyOnce, 1, false),
            ("e/long2", QoS::AtLeastOnce, 60, false),
            ("ret/gone", QoS::AtLeastOnce, 1, true),
            ("ret/kept", QoS::AtLeastOnce, 60, true),
        ] {
            let mut message = publish(topic, topic, qos, retain);
            message.properties.message_expiry_interval = Some(expiry);
            published(&mut publisher, message).await;
        }
        // From the last acknowledgement: on a loaded machine the publishes take a while, and
        // the 1 s expiries count from each one's arrival.
        let sent_at = Instant::now();
        drop(publisher);
        node.stop(stop).await;
        sleep_until(sent_at + Duration::from_millis(1_200)).await;
        let node = Node::start(&dir).await;

        let left = |publish: &Publish| {
            let left = publish
                .properties
                .message_expiry_interval
                .expect("MQTT-3.3.2-6: the expiry is sent on");
            assert!((50..60).contains(&left), "{context}: {left} s left of 60");
        };
        let (mut late, present) = connected_present(node.addr(), persistent(V5, "late5")).await;
        assert!(present);
        let got = drain(&mut late).await;
        assert_eq!(
            got.iter().map(topic_str).collect::<Vec<_>>(),
            ["e/long", "e/long2"],
            "{context}"
        );
        got.iter().for_each(left);
        let (mut late, present) = connected_present(node.addr(), persistent(V311, "late3")).await;
        assert!(present);
        let got = drain(&mut late).await;
        assert_eq!(
            got.iter().map(topic_str).collect::<Vec<_>>(),
            ["e/long", "e/long2"],
            "{context}"
        );
        let mut fresh = client(node.addr(), V5, "fresh").await;
        fresh
            .subscribe(vec![subscription("ret/#", QoS::AtLeastOnce)])
            .await;
        let got = drain(&mut fresh).await;
        assert_eq!(
            got.iter().map(topic_str).collect::<Vec<_>>(),
            ["ret/kept"],
            "{context}"
        );
        got.iter().for_each(left);
        node.stop(Stop::Shutdown).await;
    }
}

// ------------------------------------------------------------------ in flight to a subscriber

/// Where a delivery to a subscriber stopped when the broker went down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stopped {
    /// QoS 1: PUBLISH sent, no PUBACK.
    Qos1Published,
    /// QoS 2: PUBLISH sent, no PUBREC.
    Qos2Published,
    /// QoS 2: PUBREC received and PUBREL sent, no PUBCOMP.
    Qos2Released,
}

/// MQTT-4.4.0-1: a resumed session gets its unacknowledged PUBLISH packets again, with DUP
/// and their original packet identifiers: after a restart too (QoS 1, no PUBACK). Once
/// acknowledged, nothing is sent again after the next restart.
#[tokio::test]
async fn mqtt_4_4_0_1_a_qos_1_publish_in_flight_is_sent_again_with_dup_after_a_restart() {
    in_flight_each_way(Stopped::Qos1Published).await;
}

/// A persistent subscriber "taker" on `f/#` at `subscription_qos`, and what it got of
/// `messages` (topic, payload, QoS), published in order by "giver", which stays connected.
async fn delivered_to_taker(
    node: &Node,
    version: ProtocolVersion,
    subscription_qos: QoS,
    messages: &[(&str, &str, QoS)],
) -> (Raw, Client, Vec<Publish>) {
    let mut raw = raw_subscriber(node, version, "taker", "f/#", subscription_qos).await;
    let mut publisher = client(node.addr(), version, "giver").await;
    for &(topic, payload, qos) in messages {
        published(&mut publisher, publish(topic, payload, qos, false)).await;
    }
    let mut got = Vec::new();
    for _ in messages {
        got.push(expect_publish(&mut raw).await);
    }
    (raw, publisher, got)
}

/// "taker" resuming its session (Session Present) on `node`.
async fn taker_back(node: &Node, version: ProtocolVersion) -> Raw {
    let (raw, connack) = Raw::connect(node.addr(), persistent(version, "taker")).await;
    assert!(connack.session_present, "{version:?}");
    raw
}

/// The next packet is `first` sent again: same payload and packet identifier, with DUP.
async fn expect_resent(raw: &mut Raw, first: &Publish, context: &str) -> Publish {
    let again = expect_publish(raw).await;
    assert_eq!(
        payload_str(&again),
        payload_str(first),
        "{context}: in order"
    );
    assert!(
        again.dup,
        "{context}: DUP on the resent {}",
        payload_str(first)
    );
    assert_eq!(again.packet_id, first.packet_id, "{context}");
    again
}

/// MQTT-4.4.0-1 across a crash while the subscriber is still connected: a QoS 1 delivery
/// left unacknowledged a while (longer than the broker waits before writing that it went in
/// flight; most are acknowledged sooner, and cost no write) is sent again with DUP and its
/// identifier.
#[tokio::test]
async fn mqtt_4_4_0_1_a_qos_1_publish_long_in_flight_is_sent_again_with_dup_after_a_crash() {
    for version in VERSIONS {
        let dir = DataDir::new();
        let node = Node::start(&dir).await;
        let messages = [("f/1", "first", QoS::AtLeastOnce)];
        let (mut raw, publisher, sent) =
            delivered_to_taker(&node, version, QoS::AtLeastOnce, &messages).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        // The broker's connection wakes for it, and writes what is due.
        round_trip(&mut raw).await;
        let node = node.restart(Stop::Crash).await;
        drop((raw, publisher));
        let mut raw = taker_back(&node, version).await;
        expect_resent(&mut raw, &sent[0], &format!("{version:?}")).await;
        let id = sent[0].packet_id.expect("QoS 1 has a packet identifier");
        raw.send(Packet::PubAck(Ack::new(id))).await;
        expect_quiet(&mut raw).await;
        node.stop(Stop::Shutdown).await;
    }
}

/// MQTT-4.4.0-1 across a crash, QoS 1 and 2 mixed: a QoS 1 delivery sent just before a QoS
/// 2 one is written in flight with it (the QoS 2 one is written before it goes out), so both
/// come again in order, with DUP and their identifiers. Were only the QoS 2 one in flight in
/// the store, behind an entry that is not, the restart would send it as a new message under
/// a new identifier: twice to the client.
#[tokio::test]
async fn mqtt_4_4_0_1_qos_1_and_2_in_flight_are_sent_again_in_order_with_dup_after_a_crash() {
    for version in VERSIONS {
        let dir = DataDir::new();
        let node = Node::start(&dir).await;
        let messages = [
            ("f/1", "one", QoS::AtLeastOnce),
            ("f/2", "two", QoS::ExactlyOnce),
        ];
        let (raw, publisher, sent) =
            delivered_to_taker(&node, version, QoS::ExactlyOnce, &messages).await;
        let node = node.restart(Stop::Crash).await;
        drop((raw, publisher));
        let mut raw = taker_back(&node, version).await;
        for first in &sent {
            expect_resent(&mut raw, first, &format!("{version:?}")).await;
        }
        expect_quiet(&mut raw).await;
        node.stop(Stop::Shutdown).await;
    }
}

/// MQTT-4.4.0-1, QoS 2 with no PUBREC yet: the PUBLISH again, with DUP and its identifier.
#[tokio::test]
async fn mqtt_4_4_0_1_a_qos_2_publish_in_flight_is_sent_again_with_dup_after_a_restart() {
    in_flight_each_way(Stopped::Qos2Published).await;
}

/// MQTT-4.4.0-1, QoS 2 whose PUBREC came: its PUBREL again, never the PUBLISH a second time.
#[tokio::test]
async fn mqtt_4_4_0_1_a_released_qos_2_message_gets_pubrel_not_publish_after_a_restart() {
    in_flight_each_way(Stopped::Qos2Released).await;
}

async fn in_flight_each_way(at: Stopped) {
    for stop in STOPS {
        for version in VERSIONS {
            in_flight_across(version, stop, at).await;
        }
    }
}

async fn in_flight_across(version: ProtocolVersion, stop: Stop, at: Stopped) {
    let context = format!("{version:?}, {stop:?}, {at:?}");
    let dir = DataDir::new();
    let node = Node::start(&dir).await;
    let qos = match at {
        Stopped::Qos1Published => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    };
    let (mut raw, publisher, sent) =
        delivered_to_taker(&node, version, qos, &[("f/1", "first", qos)]).await;
    drop(publisher);
    let first = &sent[0];
    assert!(!first.dup, "{context}");
    let id = first.packet_id.expect("QoS > 0 has a packet identifier");
    if at == Stopped::Qos2Released {
        raw.send(Packet::PubRec(Ack::new(id))).await;
        assert!(
            matches!(raw.expect().await, Packet::PubRel(ack) if ack.packet_id == id),
            "{context}"
        );
    }
    drop(raw);
    // A QoS 1 delivery's going in flight is written when its connection closes (or once it
    // has been in flight a while), not as it is sent: the crash comes after the close.
    node.wait_connected(0).await;
    let node = node.restart(stop).await;

    let mut raw = taker_back(&node, version).await;
    if at == Stopped::Qos2Released {
        assert!(
            matches!(raw.expect().await, Packet::PubRel(ack) if ack.packet_id == id),
            "{context}: PUBREL again"
        );
        // Never the message a second time.
        expect_quiet(&mut raw).await;
        raw.send(Packet::PubComp(Ack::new(id))).await;
    } else {
        let again = expect_resent(&mut raw, first, &context).await;
        assert_eq!(again.qos, qos, "{context}");
        expect_quiet(&mut raw).await;
        if qos == QoS::AtLeastOnce {
            raw.send(Packet::PubAck(Ack::new(id))).await;
        } else {
            raw.send(Packet::PubRec(Ack::new(id))).await;
            assert!(
                matches!(raw.expect().await, Packet::PubRel(ack) if ack.packet_id == id),
                "{context}"
            );
            raw.send(Packet::PubComp(Ack::new(id))).await;
        }
    }
    round_trip(&mut raw).await;
    drop(raw);
    let node = node.restart(stop).await;
    let mut raw = taker_back(&node, version).await;
    // Acknowledged before the restart: not sent again.
    expect_quiet(&mut raw).await;
    node.stop(Stop::Shutdown).await;
}

// ------------------------------------------------------------------ inbound QoS 2

/// MQTT-4.3.3-10 (MQTT-4.3.3-2 in 3.1.1): until its PUBREL, a QoS 2 PUBLISH sent again with
/// the same packet identifier is acknowledged with PUBREC and not delivered a second time:
/// also when the broker restarted in between (the publisher resends it with DUP as it
/// resumes its session). Its PUBREL then gets PUBCOMP (MQTT-4.3.3-11), and the identifier
/// is free for a new message (MQTT-4.3.3-12).
#[tokio::test]
async fn mqtt_4_3_3_10_a_qos_2_publish_resent_after_a_restart_is_not_delivered_twice() {
    for stop in STOPS {
        for version in VERSIONS {
            inbound_across(version, stop).await;
        }
    }
}

async fn inbound_across(version: ProtocolVersion, stop: Stop) {
    let context = format!("{version:?}, {stop:?}");
    let dir = DataDir::new();
    let node = Node::start(&dir).await;
    let (mut watcher, _) = connected_present(node.addr(), persistent(version, "watcher")).await;
    watcher
        .subscribe(vec![subscription("in/#", QoS::ExactlyOnce)])
        .await;
    let (mut sender, _) = Raw::connect(node.addr(), persistent(version, "sender")).await;
    let mut once = publish("in/1", "once", QoS::ExactlyOnce, false);
    once.packet_id = Some(pid(7));
    sender.send(Packet::Publish(once.clone())).await;
    assert!(
        matches!(sender.expect().await, Packet::PubRec(ack) if ack.packet_id == pid(7) && ack.reason_code == ReasonCode::Success),
        "{context}"
    );
    let got = watcher.recv().await.expect("delivered once");
    assert_eq!(payload_str(&got), "once");
    // The watcher's own flow completes (PUBREL, PUBCOMP) before the broker stops.
    watcher.expect_silence(QUIET).await;
    drop(watcher);
    drop(sender);
    let node = node.restart(stop).await;

    let (mut watcher, present) =
        connected_present(node.addr(), persistent(version, "watcher")).await;
    assert!(present, "{context}");
    let (mut sender, connack) = Raw::connect(node.addr(), persistent(version, "sender")).await;
    assert!(connack.session_present, "{context}");
    once.dup = true;
    sender.send(Packet::Publish(once)).await;
    assert!(
        matches!(sender.expect().await, Packet::PubRec(ack) if ack.packet_id == pid(7)),
        "{context}"
    );
    sender.send(Packet::PubRel(Ack::new(pid(7)))).await;
    assert!(
        matches!(sender.expect().await, Packet::PubComp(ack) if ack.packet_id == pid(7) && ack.reason_code == ReasonCode::Success),
        "{context}: PUBCOMP"
    );
    if let Some(again) = watcher.recv_within(QUIET).await {
        panic!("{context}: delivered twice: {again:?}");
    }
    // A new message under the same identifier is delivered.
    let mut next = publish("in/2", "again", QoS::ExactlyOnce, false);
    next.packet_id = Some(pid(7));
    sender.send(Packet::Publish(next)).await;
    assert!(matches!(sender.expect().await, Packet::PubRec(ack) if ack.packet_id == pid(7)));
    sender.send(Packet::PubRel(Ack::new(pid(7)))).await;
    assert!(matches!(sender.expect().await, Packet::PubComp(ack) if ack.packet_id == pid(7)));
    let got = watcher.recv().await.expect("the new message");
    assert_eq!(payload_str(&got), "again", "{context}");
    node.stop(Stop::Shutdown).await;
}

/// MQTT-4.3.3-12 (MQTT-4.3.3-2 in 3.1.1): once the receiver has sent PUBCOMP, a PUBLISH under
/// that identifier is a new message. So PUBCOMP goes out only once the forgetting of the
/// identifier is durable: lost in a crash after PUBCOMP, the identifier would be found again
/// after the restart, and the client's next message under it taken for a resend and dropped.
/// While the store makes nothing durable (held), the PUBREL gets no PUBCOMP; once it does, it
/// comes. (Before, PUBCOMP went out at once: the window was one commit; with commits that need
/// not sync, up to a second.)
#[tokio::test]
async fn mqtt_4_3_3_12_pubcomp_waits_until_the_released_identifier_is_durably_forgotten() {
    for version in VERSIONS {
        let context = format!("{version:?}");
        let dir = DataDir::new();
        let node = Node::start(&dir).await;
        let (mut sender, _) = Raw::connect(node.addr(), persistent(version, "sender")).await;
        let mut once = publish("in/1", "once", QoS::ExactlyOnce, false);
        once.packet_id = Some(pid(7));
        sender.send(Packet::Publish(once)).await;
        assert!(
            matches!(sender.expect().await, Packet::PubRec(ack) if ack.packet_id == pid(7)),
            "{context}"
        );
        node.store.hold(true);
        sender.send(Packet::PubRel(Ack::new(pid(7)))).await;
        let early = sender.next_within(QUIET).await;
        assert_eq!(
            early,
            Err(NoPacket::Timeout),
            "{context}: PUBCOMP before the identifier's release was durable"
        );
        node.store.hold(false);
        assert!(
            matches!(sender.expect().await, Packet::PubComp(ack) if ack.packet_id == pid(7)),
            "{context}: PUBCOMP once durable"
        );
        drop(sender);
        node.stop(Stop::Shutdown).await;
    }
}

// ------------------------------------------------------------------ wills

fn will(client_id: &str) -> Will {
    Will {
        topic: TopicName::new(format!("will/{client_id}")).unwrap(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    }
}

/// A persistent MQTT 5 session's CONNECT with a will delayed by `delay` seconds.
fn with_delayed_will(client_id: &str, delay: u32) -> Connect {
    let mut connect = persistent(V5, client_id);
    let mut delayed = will(client_id);
    delayed.properties = WillProperties {
        will_delay_interval: Some(delay),
        ..Default::default()
    }
    .into();
    connect.will = Some(delayed);
    connect
}

/// MQTT-3.1.2-8: the will is published when the network connection closes without a
/// DISCONNECT: also the connection of a client that was connected when the broker went down.
/// Shut down, the broker publishes it as it closes the connection; dead, it publishes it
/// after the restart from the session's record. Either way the (persistent) watcher gets it
/// exactly once.
#[tokio::test]
async fn mqtt_3_1_2_8_the_will_of_a_client_connected_when_the_broker_stops_is_published() {
    for stop in STOPS {
        for version in VERSIONS {
            let context = format!("{version:?}, {stop:?}");
            let dir = DataDir::new();
            let node = Node::start(&dir).await;
            offline_subscriber(&node, version, "watcher", "will/#").await;
            let mut with_will = persistent(version, "mortal");
            with_will.will = Some(will("mortal"));
            let (mortal, _) = connected_present(node.addr(), with_will).await;
            node.wait_connected(1).await;
            let node = node.restart(stop).await;
            drop(mortal);
            let (mut watcher, present) =
                connected_present(node.addr(), persistent(version, "watcher")).await;
            assert!(present, "{context}");
            let got: Vec<_> = drain(&mut watcher)
                .await
                .iter()
                .map(|p| (topic_str(p), payload_str(p)))
                .collect();
            assert_eq!(
                got,
                [("will/mortal".to_owned(), "gone".to_owned())],
                "{context}"
            );
            // Published: gone from the record, never published again.
            drop(watcher);
            let node = node.restart(stop).await;
            let (mut watcher, _) =
                connected_present(node.addr(), persistent(version, "watcher")).await;
            assert!(
                drain(&mut watcher).await.is_empty(),
                "{context}: published twice"
            );
            node.stop(Stop::Shutdown).await;
        }
    }
}

/// What the client whose will is delayed does after the restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Back {
    /// Stays away: the will is published once its delay has passed.
    Never,
    /// Resumes its session within the delay: no will (MQTT-3.1.3-9).
    Resuming,
    /// Connects with Clean Start within the delay: the session ends, the will goes at once.
    CleanStart,
}

/// MQTT-3.1.3-9 (MQTT 5): a will is published once its Will Delay Interval has passed, and
/// the delay counts across a restart: from the connection's end when the broker shut down (it
/// is in the session's record), from the restart when the broker died with the client
/// connected. Nothing before the delay, once after it.
#[tokio::test]
async fn mqtt_3_1_3_9_a_will_delay_runs_across_a_restart() {
    for stop in STOPS {
        will_delay_across(stop, Back::Never).await;
    }
}

/// MQTT-3.1.3-9: the will is not published if the session is resumed before its delay has
/// passed: also after a restart, and the next broker has no will to publish either.
#[tokio::test]
async fn mqtt_3_1_3_9_a_client_resuming_within_the_will_delay_after_a_restart_cancels_the_will() {
    for stop in STOPS {
        will_delay_across(stop, Back::Resuming).await;
    }
}

/// MQTT 5 section 3.1.2.5: the will goes once its delay has passed or its session ends,
/// whichever comes first: a client that comes back with Clean Start after a restart ends the
/// session, and the will is published at once.
#[tokio::test]
async fn a_clean_start_within_the_will_delay_after_a_restart_publishes_the_will_at_once() {
    for stop in STOPS {
        will_delay_across(stop, Back::CleanStart).await;
    }
}

async fn will_delay_across(stop: Stop, back: Back) {
    const DELAY: u32 = 2;
    let context = format!("{stop:?}, {back:?}");
    let dir = DataDir::new();
    let node = Node::start(&dir).await;
    offline_subscriber(&node, V5, "watcher", "will/#").await;
    let with_will = with_delayed_will("mortal", DELAY);
    let (mut mortal, _) = connected_present(node.addr(), with_will.clone()).await;
    node.wait_connected(1).await;
    if stop == Stop::Shutdown {
        // The connection ends first: the delay counts from here, in the record.
        mortal.kill();
        node.wait_connected(0).await;
    }
    let delay_from = Instant::now();
    let node = node.restart(stop).await;
    drop(mortal);
    let due = delay_from + Duration::from_secs(u64::from(DELAY));
    let (mut watcher, present) = connected_present(node.addr(), persistent(V5, "watcher")).await;
    assert!(present, "{context}");
    match back {
        Back::Never => {
            watcher
                .expect_silence(
                    due.saturating_duration_since(Instant::now())
                        .saturating_sub(Duration::from_millis(300)),
                )
                .await;
            let will = watcher
                .recv_within(Duration::from_secs(3))
                .await
                .unwrap_or_else(|| panic!("{context}: the will after its delay"));
            assert_eq!(payload_str(&will), "gone", "{context}");
            watcher.expect_silence(QUIET).await;
        }
        Back::Resuming => {
            let (mut mortal, present) = connected_present(node.addr(), with_will.clone()).await;
            assert!(present, "{context}");
            watcher
                .expect_silence(
                    due.saturating_duration_since(Instant::now()) + Duration::from_secs(1),
                )
                .await;
            // Gone from the record too: the next broker has no will to publish.
            mortal.disconnect(ReasonCode::Success).await;
            node.wait_connected(1).await;
            drop(watcher);
            let node = node.restart(stop).await;
            let (mut watcher, _) = connected_present(node.addr(), persistent(V5, "watcher")).await;
            watcher
                .expect_silence(Duration::from_secs(u64::from(DELAY)) + QUIET)
                .await;
            node.stop(Stop::Shutdown).await;
            return;
        }
        Back::CleanStart => {
            let mut fresh = with_will.clone();
            fresh.clean_start = true;
            fresh.will = None;
            let (_mortal, present) = connected_present(node.addr(), fresh).await;
            assert!(!present, "{context}");
            let will = watcher
                .recv_within(Duration::from_millis(1_000))
                .await
                .unwrap_or_else(|| panic!("{context}: the will as the session ends"));
            assert_eq!(payload_str(&will), "gone", "{context}");
            watcher
                .expect_silence(due.saturating_duration_since(Instant::now()) + QUIET)
                .await;
        }
    }
    node.stop(Stop::Shutdown).await;
}

// ------------------------------------------------------------------ a message stored once

/// How many messages the store in `dir` holds, counted in its `messages` table.
fn messages_stored(dir: &Path) -> u64 {
    use redb::{ReadableDatabase, ReadableTableMetadata, TableDefinition};
    let db = redb::Database::open(dir.join("store.redb")).expect("the store's database opens");
    let txn = db.begin_read().unwrap();
    let messages = txn
        .open_table(TableDefinition::<u64, &[u8]>::new("messages"))
        .unwrap();
    messages.len().unwrap()
}

/// A message routed to many persistent sessions is stored once: each session's queue entry
/// refers to the same stored message, and the store holds one message. Once every session
/// has it acknowledged, it is gone from the store.
#[tokio::test]
async fn a_message_routed_to_many_persistent_sessions_is_stored_once() {
    const SESSIONS: usize = 5;
    let dir = DataDir::new();
    let node = Node::start(&dir).await;
    for n in 0..SESSIONS {
        offline_subscriber(&node, V5, &format!("fan-{n}"), "fan/#").await;
    }
    node.wait_connected(0).await;
    let mut publisher = client(node.addr(), V5, "publisher").await;
    published(
        &mut publisher,
        publish("fan/1", "shared", QoS::AtLeastOnce, false),
    )
    .await;
    drop(publisher);
    node.stop(Stop::Shutdown).await;

    {
        let store = DiskStore::open(&*dir).unwrap();
        let mut ids = Vec::new();
        for n in 0..SESSIONS {
            let entries = store.read_queue(&format!("fan-{n}"), 0, 10).unwrap();
            assert_eq!(entries.len(), 1, "fan-{n}");
            assert_eq!(payload_str(&entries[0].message.publish), "shared");
            ids.push(entries[0].entry.message);
        }
        assert!(
            ids.iter().all(|id| *id == ids[0]),
            "one stored message: {ids:?}"
        );
    }
    assert_eq!(messages_stored(&dir), 1);

    let node = Node::start(&dir).await;
    for n in 0..SESSIONS {
        let (mut client, present) =
            connected_present(node.addr(), persistent(V5, &format!("fan-{n}"))).await;
        assert!(present);
        let got = payloads(&mut client).await;
        assert_eq!(got, ["shared"]);
        client.disconnect(ReasonCode::Success).await;
    }
    node.wait_connected(0).await;
    node.stop(Stop::Shutdown).await;
    assert_eq!(
        messages_stored(&dir),
        0,
        "acknowledged by every session: removed"
    );
}

// ------------------------------------------------------------------ the directory

/// A broker holds its directory: a second one started on it is refused with the lock error
/// while the first runs, and starts once the first has shut down (in the same process, as an
/// embedder restarting its broker does).
#[tokio::test]
async fn a_second_broker_on_the_same_directory_is_refused_while_the_first_runs() {
    let dir = DataDir::new();
    let config = directory_config(&dir);
    let first = Broker::start(config.clone())
        .await
        .expect("the first starts");
    let mut publisher = client(tcp_addr(&first), V5, "publisher").await;
    published(
        &mut publisher,
        publish("lock/r", "kept", QoS::AtLeastOnce, true),
    )
    .await;
    drop(publisher);

    match Broker::start(config.clone()).await {
        Err(Error::Store(StoreError::Locked(locked))) => {
            assert_eq!(locked, dir.to_path_buf());
            let text = Error::Store(StoreError::Locked(locked)).to_string();
            assert!(text.contains("in use by another process"), "{text}");
        }
        other => panic!("a second broker on the directory: {other:?}"),
    }
    assert!(matches!(DiskStore::open(&*dir), Err(StoreError::Locked(_))));
    // The first goes on.
    let mut publisher = client(tcp_addr(&first), V5, "publisher").await;
    published(
        &mut publisher,
        publish("lock/s", "still", QoS::AtLeastOnce, true),
    )
    .await;
    drop(publisher);
    shut_down(first).await;

    let second = Broker::start(config)
        .await
        .expect("starts once the first has shut down");
    let mut subscriber = client(tcp_addr(&second), V5, "subscriber").await;
    subscriber
        .subscribe(vec![subscription("lock/#", QoS::AtLeastOnce)])
        .await;
    let mut got = payloads(&mut subscriber).await;
    got.sort();
    assert_eq!(got, ["kept", "still"]);
    shut_down(second).await;
}

/// Once `BrokerHandle::shutdown` has returned, nothing of the broker holds its store (for a
/// disk store: its directory's lock), also with a will waiting on its delay in a closed
/// connection, or restored from the store.
#[tokio::test]
async fn a_broker_holds_its_store_no_more_once_shut_down() {
    let store = Arc::new(rallymq_broker::MemoryStore::new());
    let broker = Broker::start_with_store(config(), store.clone())
        .await
        .unwrap();
    shut_down(broker).await;
    assert_eq!(Arc::strong_count(&store), 1, "an idle broker");

    let broker = Broker::start_with_store(config(), store.clone())
        .await
        .unwrap();
    let with_will = with_delayed_will("mortal", 30);
    let (mut mortal, _) = connected_present(tcp_addr(&broker), with_will).await;
    mortal.kill();
    wait_clients(&broker, 0).await;
    shut_down(broker).await;
    assert_eq!(
        Arc::strong_count(&store),
        1,
        "a will waiting in its closed connection"
    );

    let broker = Broker::start_with_store(config(), store.clone())
        .await
        .unwrap();
    assert!(broker.has_session("mortal"));
    shut_down(broker).await;
    assert_eq!(Arc::strong_count(&store), 1, "a restored will waiting");
}

/// A store written by a later version of rallymq (a higher format version in its `meta`
/// table) is refused at start with a message that says so and what to do, and left as it is.
#[tokio::test]
async fn a_store_of_a_newer_format_version_is_refused_with_a_clear_message() {
    use redb::{ReadableTable, TableDefinition};
    let dir = DataDir::new();
    drop(DiskStore::open(&*dir).expect("a new store"));
    let meta = TableDefinition::<&str, u32>::new("meta");
    let current = {
        let db = redb::Database::open(dir.join("store.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        let current = {
            let mut table = txn.open_table(meta).unwrap();
            let current = table
                .get("format")
                .unwrap()
                .expect("a format version")
                .value();
            table.insert("format", current + 1).unwrap();
            current
        };
        txn.commit().unwrap();
        current
    };
    let config = directory_config(&dir);
    match Broker::start(config).await {
        Err(Error::Store(StoreError::NewerFormat {
            dir: refused,
            found,
            supported,
        })) => {
            assert_eq!(
                (refused, found, supported),
                (dir.to_path_buf(), current + 1, current)
            );
        }
        other => panic!("a newer store: {other:?}"),
    }
    let text = DiskStore::open(&*dir)
        .expect_err("still refused")
        .to_string();
    assert!(
        text.contains(&format!("format version {}", current + 1))
            && text.contains(&format!("reads up to {current}"))
            && text.contains("upgrade rallymq"),
        "{text}"
    );
}

// ------------------------------------------------------------------ failing writes

fn full() -> StoreError {
    StoreError::Full("No space left on device (os error 28)".into())
}

fn io_error() -> StoreError {
    StoreError::Io("Input/output error (os error 5)".into())
}

/// While the store's writes fail, an MQTT 5 publisher of a QoS 1 or 2 message that must be
/// stored is answered 0x97 (Quota exceeded) when the disk is full and 0x80 (Unspecified
/// error) on another error, never success; a message that needs nothing stored is answered
/// as usual. Once writes succeed again, publishing succeeds again, without a restart, on the
/// same connection.
#[tokio::test]
async fn v5_publishers_are_told_0x97_when_the_disk_is_full_and_0x80_on_other_store_errors() {
    let dir = DataDir::new();
    let node = Node::start(&dir).await;
    offline_subscriber(&node, V5, "keeper", "df/#").await;
    let mut publisher = client(node.addr(), V5, "publisher").await;
    let qos_1_2 = [QoS::AtLeastOnce, QoS::ExactlyOnce];
    for qos in qos_1_2 {
        assert_eq!(
            publisher
                .publish(publish("df/before", "ok", qos, false))
                .await,
            ReasonCode::Success
        );
    }
    for (error, code) in [
        (full(), ReasonCode::QuotaExceeded),
        (io_error(), ReasonCode::UnspecifiedError),
    ] {
        node.store.fail_writes(Some(error.clone()));
        for qos in qos_1_2 {
            // Queued for the offline session.
            let queued = publisher
                .publish(publish("df/failing", "no", qos, false))
                .await;
            assert_eq!(queued, code, "{error}, {qos:?}");
            // Retained.
            let retained = publisher
                .publish(publish("elsewhere/r", "no", qos, true))
                .await;
            assert_eq!(retained, code, "{error}, {qos:?}");
            // Nothing to store: no subscriber, not retained. (QoS 2 reports PUBCOMP's code.)
            let nothing = publisher
                .publish(publish("elsewhere/x", "fine", qos, false))
                .await;
            let expected = match qos {
                QoS::AtLeastOnce => ReasonCode::NoMatchingSubscribers,
                _ => ReasonCode::Success,
            };
            assert_eq!(nothing, expected, "{error}, {qos:?}");
        }
    }
    node.store.fail_writes(None);
    for qos in qos_1_2 {
        assert_eq!(
            publisher
                .publish(publish("df/after", "ok", qos, false))
                .await,
            ReasonCode::Success
        );
    }
    assert!(publisher.engine.is_connected());
    node.stop(Stop::Shutdown).await;
}

/// A failed write does not make a session's stored queue unreadable: a message acknowledged
/// before a failure episode reaches its subscriber once writes succeed again, whatever was
/// refused during the episode.
#[tokio::test]
async fn a_message_acknowledged_before_a_failed_write_is_delivered_once_writes_succeed_again() {
    let dir = DataDir::new();
    let node = Node::start(&dir).await;
    offline_subscriber(&node, V5, "keeper", "df/#").await;
    node.wait_connected(0).await;
    let mut publisher = client(node.addr(), V5, "publisher").await;
    let before = publisher
        .publish(publish("df/1", "before", QoS::AtLeastOnce, false))
        .await;
    assert_eq!(before, ReasonCode::Success);
    node.store.fail_writes(Some(io_error()));
    let during = publisher
        .publish(publish("df/2", "during", QoS::AtLeastOnce, false))
        .await;
    assert_eq!(during, ReasonCode::UnspecifiedError);
    node.store.fail_writes(None);
    let (mut keeper, present) = connected_present(node.addr(), persistent(V5, "keeper")).await;
    assert!(present);
    let got = payloads(&mut keeper).await;
    assert_eq!(got.first().map(String::as_str), Some("before"), "{got:?}");
    node.stop(Stop::Shutdown).await;
}

/// MQTT 3.1.1 has no negative acknowledgement: while the store's writes fail, a QoS 1 or 2
/// publisher whose message must be stored is disconnected, never acknowledged; once writes
/// succeed again it connects and publishes as before.
#[tokio::test]
async fn v311_publishers_are_disconnected_while_store_writes_fail_and_publish_again_after() {
    let dir = DataDir::new();
    let node = Node::start(&dir).await;
    offline_subscriber(&node, V311, "keeper", "df/#").await;
    for error in [full(), io_error()] {
        node.store.fail_writes(Some(error.clone()));
        for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let mut publisher = client(node.addr(), V311, "publisher").await;
            let outcome = publisher
                .publish_outcome(publish("df/failing", "no", qos, false))
                .await;
            assert_eq!(
                outcome,
                Err(Some(CloseReason::TransportClosed)),
                "{error}, {qos:?}"
            );
        }
    }
    node.store.fail_writes(None);
    let mut publisher = client(node.addr(), V311, "publisher").await;
    for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
        assert_eq!(
            publisher
                .publish(publish("df/after", "ok", qos, false))
                .await,
            ReasonCode::Success
        );
    }
    node.stop(Stop::Shutdown).await;
}

/// A QoS 2 delivery's packet identifier is stored before its PUBLISH is sent (so that a
/// restart cannot deliver it again under another): if that write fails, the PUBLISH is not
/// sent and the subscriber's connection is closed; once writes succeed again the subscriber
/// resumes and gets the message once.
#[tokio::test]
async fn a_qos_2_delivery_whose_identifier_cannot_be_stored_is_not_sent() {
    for version in VERSIONS {
        let context = format!("{version:?}");
        let dir = DataDir::new();
        let node = Node::start(&dir).await;
        let mut raw = raw_subscriber(&node, version, "taker", "b/#", QoS::ExactlyOnce).await;
        node.store.fail_writes(Some(io_error()));
        node.broker
            .publish("b/1", "held", QoS::ExactlyOnce, false)
            .unwrap();
        assert_eq!(
            raw.next().await,
            Err(NoPacket::Closed),
            "{context}: closed, nothing sent"
        );
        node.store.fail_writes(None);
        let (mut raw, connack) = Raw::connect(node.addr(), persistent(version, "taker")).await;
        assert!(connack.session_present, "{context}");
        let got = expect_publish(&mut raw).await;
        assert_eq!(payload_str(&got), "held", "{context}");
        let id = got.packet_id.unwrap();
        raw.send(Packet::PubRec(Ack::new(id))).await;
        assert!(matches!(raw.expect().await, Packet::PubRel(ack) if ack.packet_id == id));
        raw.send(Packet::PubComp(Ack::new(id))).await;
        expect_quiet(&mut raw).await;
        node.stop(Stop::Shutdown).await;
    }
}

/// `BrokerHandle::shutdown` lets go of the directory: a broker started on it in the same
/// process right after starts, also while a will waits on its delay (in the connection that
/// ended, or restored from the store).
#[tokio::test]
async fn a_broker_restarted_in_the_same_process_takes_its_directory_while_a_will_is_delayed() {
    let dir = DataDir::new();
    let config = directory_config(&dir);
    let first = Broker::start(config.clone()).await.expect("starts");
    let with_will = with_delayed_will("mortal", 30);
    let (mut mortal, _) = connected_present(tcp_addr(&first), with_will).await;
    mortal.kill();
    wait_clients(&first, 0).await;
    shut_down(first).await;
    // The will's delay waits in the connection that ended.
    let second = match Broker::start(config.clone()).await {
        Ok(broker) => broker,
        Err(error) => panic!("after a shutdown, with a will waiting in its connection: {error}"),
    };
    shut_down(second).await;
    // Restored from the store, it waits in a task of the broker.
    match Broker::start(config).await {
        Ok(third) => shut_down(third).await,
        Err(error) => panic!("after a shutdown, with a restored will waiting: {error}"),
    }
}

/// A message stored for a session and acknowledged within one group commit (the store commits
/// together what arrives while its last commit syncs: a fast subscriber's whole flow, under
/// load) leaves nothing behind.
#[tokio::test]
async fn a_message_queued_and_acknowledged_in_one_commit_leaves_the_store() {
    use rallymq_broker::{Change, QueueEntry, StoredMessage};
    let dir = DataDir::new();
    let store = DiskStore::open(&*dir).unwrap();
    let client_id: Arc<str> = "fast".into();
    let message = StoredMessage {
        publish: publish("t/1", "m", QoS::AtLeastOnce, false),
        received_at: std::time::SystemTime::now(),
    };
    let entry = QueueEntry {
        message: 7,
        qos: QoS::AtLeastOnce,
        retain: false,
        subscription_ids: Vec::new(),
        in_flight: None,
        size: 4,
    };
    let ticket = store.write(vec![
        Change::PutMessage(7, Arc::new(message)),
        Change::AddEntry {
            client_id: client_id.clone(),
            seq: 0,
            entry,
        },
        Change::DeleteEntry { client_id, seq: 0 },
    ]);
    tokio::time::timeout(WAIT, store.durable(ticket))
        .await
        .expect("in time")
        .expect("durable");
    drop(store);
    assert_eq!(messages_stored(&dir), 0, "no entry refers to it");
}

/// What a connected persistent subscriber has received and acknowledged leaves the store,
/// however the store grouped its commits (a message stored, delivered and acknowledged while
/// the store syncs its previous commit is committed in one group with its acknowledgement).
#[tokio::test]
async fn messages_delivered_to_a_connected_persistent_session_leave_the_store() {
    const MESSAGES: usize = 300;
    let dir = DataDir::new();
    let node = Node::start(&dir).await;
    let (mut keeper, _) = connected_present(node.addr(), persistent(V5, "keeper")).await;
    keeper
        .subscribe(vec![subscription("c/#", QoS::AtLeastOnce)])
        .await;
    // The subscriber acknowledges as messages come, while they are published.
    let receiving = tokio::spawn(async move {
        let got = drain(&mut keeper).await;
        keeper.disconnect(ReasonCode::Success).await;
        got.len()
    });
    for n in 0..MESSAGES {
        node.broker
            .publish("c/1", format!("{n}"), QoS::AtLeastOnce, false)
            .unwrap();
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    assert_eq!(receiving.await.unwrap(), MESSAGES);
    node.wait_connected(0).await;
    node.stop(Stop::Shutdown).await;
    assert_eq!(stored(&dir).sessions[0].queue_len, 0);
    assert_eq!(messages_stored(&dir), 0, "acknowledged: nothing left");
}
