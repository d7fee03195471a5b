//! Early acknowledgement on the durable broker (issue 13): a QoS 1 message that is not
//! retained and whose every stored entry is in an online persistent session's queue in memory
//! needs nothing durable once those sessions' clients have acknowledged it (the store deletes
//! what it added), so its publisher's PUBACK goes out then, without waiting for the store's
//! commit. Everything else still waits for the commit: a message queued for an offline session,
//! a retained one, a QoS 2 one; PUBACKs keep the order of their PUBLISHes (MQTT-4.6.0-2); and
//! a failed write is reported for every message that was not acknowledged early.
//!
//! The broker runs on the test store (`support/store.rs`), whose commits the test holds:
//! `durable` does not resolve while they are held, as when a commit takes long on a slow disk.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rallymq_broker::{Broker, BrokerConfig, BrokerHandle, StoreError};
use rallymq_codec::{
    Ack, Packet, PacketId, ProtocolVersion, Publish, QoS, ReasonCode, Subscribe, TopicName,
};
use support::store::{DataDir, TestStore};
use support::{NoPacket, Raw, WAIT, connect_packet, persistent_connect, subscription, tcp_addr};

const V311: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;
const VERSIONS: [ProtocolVersion; 2] = [V311, V5];

/// How long a test watches to be sure nothing arrives.
const QUIET: Duration = Duration::from_millis(300);

/// The session expiry of the persistent MQTT 5 sessions.
const HOUR: u32 = 3600;

// ------------------------------------------------------------------ a broker on a held store

/// A broker on a [`TestStore`], whose commits the test holds (`store.hold`) and fails
/// (`store.fail_writes`).
struct Node {
    broker: BrokerHandle,
    store: Arc<TestStore>,
    _dir: DataDir,
}

impl Node {
    async fn start() -> Self {
        let mut config = BrokerConfig::without_listeners();
        config.tcp = vec!["127.0.0.1:0".parse().expect("an address")];
        config.sys_interval = None;
        let dir = DataDir::new();
        let store = Arc::new(TestStore::open(&dir.0).expect("the store opens"));
        let broker = Broker::start_with_store(config, store.clone())
            .await
            .expect("the broker starts");
        Self {
            broker,
            store,
            _dir: dir,
        }
    }

    fn addr(&self) -> SocketAddr {
        tcp_addr(&self.broker)
    }

    async fn stop(self) {
        // Held commits would hold the shutdown's last write.
        self.store.hold(false);
        self.store.fail_writes(None);
        tokio::time::timeout(WAIT, self.broker.shutdown(Duration::from_millis(200)))
            .await
            .expect("the broker stops in time");
    }
}

// ------------------------------------------------------------------ clients

fn pid(id: u16) -> PacketId {
    PacketId::new(id).expect("not zero")
}

/// A raw client with a persistent session subscribed to `filter` at QoS 1.
async fn subscriber(node: &Node, version: ProtocolVersion, client_id: &str, filter: &str) -> Raw {
    let (mut raw, connack) =
        Raw::connect(node.addr(), persistent_connect(version, client_id, HOUR)).await;
    assert_eq!(connack.reason_code, ReasonCode::Success);
    raw.send(Packet::Subscribe(Subscribe {
        packet_id: pid(1),
        properties: Default::default(),
        subscriptions: vec![subscription(filter, QoS::AtLeastOnce)],
    }))
    .await;
    assert!(matches!(raw.expect().await, Packet::SubAck(_)));
    raw
}

/// A persistent session subscribed to `filter` whose client has gone: what is routed to it
/// waits in the store.
async fn offline_subscriber(node: &Node, version: ProtocolVersion, client_id: &str, filter: &str) {
    let mut raw = subscriber(node, version, client_id, filter).await;
    raw.send(Packet::Disconnect(Default::default())).await;
    assert_eq!(raw.next().await, Err(NoPacket::Closed));
}

/// A publisher on a clean session.
async fn publisher(node: &Node, version: ProtocolVersion) -> Raw {
    let (raw, connack) = Raw::connect(node.addr(), connect_packet(version, "publisher")).await;
    assert_eq!(connack.reason_code, ReasonCode::Success);
    raw
}

fn publish_packet(topic: &str, qos: QoS, retain: bool, id: u16) -> Packet {
    let mut publish = Publish::new(
        TopicName::new(topic).expect("a valid topic"),
        Bytes::from_static(b"payload"),
    );
    publish.qos = qos;
    publish.retain = retain;
    publish.packet_id = Some(pid(id));
    Packet::Publish(publish)
}

async fn publish(raw: &mut Raw, topic: &str, qos: QoS, retain: bool, id: u16) {
    raw.send(publish_packet(topic, qos, retain, id)).await;
}

/// QoS 1 PUBLISHes of `topics`, numbered from 1, in one write: the broker reads them at once
/// (a connection reads nothing more while it waits for the store).
async fn publish_together(raw: &mut Raw, version: ProtocolVersion, topics: &[&str]) {
    let mut bytes = Vec::new();
    for (id, topic) in (1..).zip(topics) {
        let packet = publish_packet(topic, QoS::AtLeastOnce, false, id);
        bytes.extend_from_slice(&packet.to_bytes(version).expect("encodable"));
    }
    raw.write(&bytes).await;
}

/// The subscriber receives a PUBLISH of `topic`: returns its packet identifier.
async fn receive(raw: &mut Raw, topic: &str) -> PacketId {
    match raw.expect().await {
        Packet::Publish(publish) => {
            assert_eq!(
                publish.topic.as_ref().map(TopicName::as_str),
                Some(topic),
                "the subscriber got another message"
            );
            publish.packet_id.expect("a QoS 1 delivery")
        }
        other => panic!("not a PUBLISH: {other:?}"),
    }
}

/// The next packet is the PUBACK of `id` with `code`.
async fn expect_puback(raw: &mut Raw, id: u16, code: ReasonCode, context: &str) {
    match raw.expect().await {
        Packet::PubAck(ack) => {
            assert_eq!(ack.packet_id, pid(id), "{context}");
            assert_eq!(ack.reason_code, code, "{context}");
        }
        other => panic!("{context}: not a PUBACK: {other:?}"),
    }
}

async fn expect_quiet(raw: &mut Raw, context: &str) {
    assert_eq!(
        raw.next_within(QUIET).await,
        Err(NoPacket::Timeout),
        "{context}: nothing was expected yet"
    );
}

// ------------------------------------------------------------------ tests

/// A QoS 1 message to an online persistent session: its PUBACK does not wait for the store's
/// commit once the subscriber has acknowledged it, and not before (the subscriber's
/// acknowledgement is what makes it safe).
#[tokio::test]
async fn a_qos_1_message_acknowledged_by_its_online_subscriber_is_acknowledged_before_the_commit() {
    for version in VERSIONS {
        let context = format!("{version:?}");
        let node = Node::start().await;
        let mut taker = subscriber(&node, version, "taker", "e/#").await;
        let mut publisher = publisher(&node, version).await;
        node.store.hold(true);
        publish(&mut publisher, "e/1", QoS::AtLeastOnce, false, 1).await;
        let delivered = receive(&mut taker, "e/1").await;
        expect_quiet(
            &mut publisher,
            &format!("{context}, before the subscriber's PUBACK"),
        )
        .await;
        taker.send(Packet::PubAck(Ack::new(delivered))).await;
        expect_puback(&mut publisher, 1, ReasonCode::Success, &context).await;
        // Again, with the commits still held: each message goes on its own acknowledgement.
        publish(&mut publisher, "e/2", QoS::AtLeastOnce, false, 2).await;
        let delivered = receive(&mut taker, "e/2").await;
        taker.send(Packet::PubAck(Ack::new(delivered))).await;
        expect_puback(&mut publisher, 2, ReasonCode::Success, &context).await;
        node.stop().await;
    }
}

/// MQTT-3.3.4-1 with a store (issue 13, "acknowledge after durable"): a message queued for an
/// offline persistent session is in the store only; its PUBACK waits for the commit even when
/// an online subscriber acknowledged it at once.
#[tokio::test]
async fn mqtt_3_3_4_1_a_message_queued_for_an_offline_session_is_acknowledged_after_the_commit() {
    for version in VERSIONS {
        let context = format!("{version:?}");
        let node = Node::start().await;
        offline_subscriber(&node, version, "away", "o/#").await;
        let mut taker = subscriber(&node, version, "taker", "o/#").await;
        let mut publisher = publisher(&node, version).await;
        node.store.hold(true);
        publish(&mut publisher, "o/1", QoS::AtLeastOnce, false, 1).await;
        let delivered = receive(&mut taker, "o/1").await;
        taker.send(Packet::PubAck(Ack::new(delivered))).await;
        expect_quiet(&mut publisher, &format!("{context}, commit held")).await;
        node.store.hold(false);
        expect_puback(&mut publisher, 1, ReasonCode::Success, &context).await;
        node.stop().await;
    }
}

/// MQTT-4.6.0-2: PUBACKs go out in the order of their PUBLISHes. A message its online
/// subscriber acknowledged (which could go early) waits behind one that waits for the commit
/// (queued for an offline session too), and both go once the commit is let go, in order.
#[tokio::test]
async fn mqtt_4_6_0_2_an_early_puback_waits_behind_one_that_waits_for_the_commit() {
    for version in VERSIONS {
        let context = format!("{version:?}");
        let node = Node::start().await;
        offline_subscriber(&node, version, "away", "p/slow").await;
        let mut taker = subscriber(&node, version, "taker", "p/#").await;
        let mut publisher = publisher(&node, version).await;
        node.store.hold(true);
        publish_together(&mut publisher, version, &["p/slow", "p/fast"]).await;
        for topic in ["p/slow", "p/fast"] {
            let delivered = receive(&mut taker, topic).await;
            taker.send(Packet::PubAck(Ack::new(delivered))).await;
        }
        expect_quiet(&mut publisher, &format!("{context}, commit held")).await;
        node.store.hold(false);
        expect_puback(&mut publisher, 1, ReasonCode::Success, &context).await;
        expect_puback(&mut publisher, 2, ReasonCode::Success, &context).await;
        // The other way round: the early one goes at once, the next one after the commit.
        node.store.hold(true);
        publish(&mut publisher, "p/fast", QoS::AtLeastOnce, false, 3).await;
        publish(&mut publisher, "p/slow", QoS::AtLeastOnce, false, 4).await;
        let delivered = receive(&mut taker, "p/fast").await;
        taker.send(Packet::PubAck(Ack::new(delivered))).await;
        expect_puback(&mut publisher, 3, ReasonCode::Success, &context).await;
        let delivered = receive(&mut taker, "p/slow").await;
        taker.send(Packet::PubAck(Ack::new(delivered))).await;
        expect_quiet(&mut publisher, &format!("{context}, second commit held")).await;
        node.store.hold(false);
        expect_puback(&mut publisher, 4, ReasonCode::Success, &context).await;
        node.stop().await;
    }
}

/// MQTT-3.3.1-5 with a store: a retained message's update must be committed before its
/// publisher is acknowledged, even when every subscriber acknowledged it; a QoS 2 message's
/// packet identifier too (MQTT-4.3.3-2: PUBREC after it is stored), before PUBREC.
#[tokio::test]
async fn mqtt_3_3_1_5_retained_and_qos_2_messages_wait_for_the_commit() {
    for version in VERSIONS {
        let context = format!("{version:?}");
        let node = Node::start().await;
        let mut taker = subscriber(&node, version, "taker", "r/#").await;
        let mut publisher = publisher(&node, version).await;
        node.store.hold(true);
        publish(&mut publisher, "r/kept", QoS::AtLeastOnce, true, 1).await;
        let delivered = receive(&mut taker, "r/kept").await;
        taker.send(Packet::PubAck(Ack::new(delivered))).await;
        expect_quiet(&mut publisher, &format!("{context}, retained, commit held")).await;
        node.store.hold(false);
        expect_puback(&mut publisher, 1, ReasonCode::Success, &context).await;
        node.store.hold(true);
        publish(&mut publisher, "r/twice", QoS::ExactlyOnce, false, 2).await;
        expect_quiet(&mut publisher, &format!("{context}, QoS 2, commit held")).await;
        node.store.hold(false);
        match publisher.expect().await {
            Packet::PubRec(ack) => assert_eq!(ack.packet_id, pid(2), "{context}"),
            other => panic!("{context}: not a PUBREC: {other:?}"),
        }
        node.store.hold(false);
        node.stop().await;
    }
}

/// A failed write is reported to every publisher whose message was not acknowledged early
/// (MQTT 5: 0x97 when the disk is full); one acknowledged early was delivered to every session
/// it was stored for, and is acknowledged with success.
#[tokio::test]
async fn a_failed_write_fails_the_messages_not_acknowledged_early_only() {
    let node = Node::start().await;
    offline_subscriber(&node, V5, "away", "f/slow").await;
    let mut taker = subscriber(&node, V5, "taker", "f/#").await;
    let mut publisher = publisher(&node, V5).await;
    node.store.hold(true);
    node.store
        .fail_writes(Some(StoreError::Full("no space left".to_owned())));
    publish_together(&mut publisher, V5, &["f/fast", "f/slow"]).await;
    for topic in ["f/fast", "f/slow"] {
        let delivered = receive(&mut taker, topic).await;
        taker.send(Packet::PubAck(Ack::new(delivered))).await;
    }
    expect_puback(&mut publisher, 1, ReasonCode::Success, "early").await;
    expect_quiet(&mut publisher, "commit held").await;
    node.store.hold(false);
    expect_puback(&mut publisher, 2, ReasonCode::QuotaExceeded, "failed").await;
    node.stop().await;
}

/// The broker's `EARLY_LIMIT`: how many messages a connection acknowledges early before it waits
/// for the store to make the first of them durable.
const EARLY_LIMIT: u16 = 1024;

/// A publisher acknowledged early is paced by the store all the same, every `EARLY_LIMIT`
/// messages: past them, its next PUBACK waits for the commit, so that a store slower than its
/// publishers does not pile up their changes in memory without bound.
#[tokio::test]
async fn early_acknowledgements_wait_for_the_store_after_the_limit() {
    let node = Node::start().await;
    let mut taker = subscriber(&node, V311, "taker", "l/#").await;
    let mut publisher = publisher(&node, V311).await;
    node.store.hold(true);
    for id in 1..=EARLY_LIMIT + 1 {
        publish(&mut publisher, "l/1", QoS::AtLeastOnce, false, id).await;
        let delivered = receive(&mut taker, "l/1").await;
        taker.send(Packet::PubAck(Ack::new(delivered))).await;
        if id <= EARLY_LIMIT {
            expect_puback(
                &mut publisher,
                id,
                ReasonCode::Success,
                &format!("message {id}"),
            )
            .await;
        }
    }
    expect_quiet(&mut publisher, "past the limit, commit held").await;
    node.store.hold(false);
    expect_puback(
        &mut publisher,
        EARLY_LIMIT + 1,
        ReasonCode::Success,
        "after the commit",
    )
    .await;
    node.stop().await;
}
