//! The normative statements of MQTT 3.1.1 that the broker decides (sessions, routing, retained
//! messages, wills, subscriptions, WebSockets), each checked end to end over loopback with MQTT
//! 3.1.1 clients: `support::TestClient` (the session engine over TCP), or `Raw`, a client that
//! writes bytes by hand where a test needs what an engine never sends or must hold back an
//! acknowledgement. Test names carry the MQTT 3.1.1 statement id;
//! `crates/session/CONFORMANCE.md` traces every statement to them.

mod support;

use std::time::Duration;

use rallymq_broker::{BrokerHandle, ListenerKind};
use rallymq_codec::{
    Ack, ConnAck, Connect, Packet, PacketId, ProtocolVersion, Publish, QoS, ReasonCode, Subscribe,
    Subscription, TopicFilter, TopicName, Unsubscribe, Will,
};
use rallymq_session::{ClientEvent, CloseReason};
use rallymq_websocket::tokio::connect as ws_connect;
use rallymq_websocket::{ClientRequest, Config, Event};
use support::{
    NoPacket, Raw, TestClient, WAIT, connect_packet, message, payload_str, persistent_connect,
    start_broker, subscription, tcp_addr, topic_str,
};
use tokio::net::TcpStream;

const V311: ProtocolVersion = ProtocolVersion::V3_1_1;
/// How long "nothing arrives" is watched for.
const SHORT: Duration = Duration::from_millis(300);

// ------------------------------------------------------------------ packets by hand

fn id(n: u16) -> PacketId {
    PacketId::new(n).expect("non-zero")
}

fn subscribe_packet(packet_id: u16, filters: &[(&str, QoS)]) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: id(packet_id),
        properties: Default::default(),
        subscriptions: filters
            .iter()
            .map(|(filter, qos)| Subscription::new(TopicFilter::new(*filter).unwrap(), *qos))
            .collect(),
    })
}

fn unsubscribe_packet(packet_id: u16, filters: &[&str]) -> Packet {
    Packet::Unsubscribe(Unsubscribe {
        packet_id: id(packet_id),
        properties: Default::default(),
        filters: filters
            .iter()
            .map(|filter| TopicFilter::new(*filter).unwrap())
            .collect(),
    })
}

fn publish_packet(topic: &str, payload: &str, qos: QoS, packet_id: Option<u16>) -> Packet {
    let mut publish = message(topic, payload, qos);
    publish.packet_id = packet_id.map(id);
    Packet::Publish(publish)
}

fn retained(topic: &str, payload: &str, qos: QoS) -> Publish {
    let mut publish = message(topic, payload, qos);
    publish.retain = true;
    publish
}

async fn client(broker: &BrokerHandle, client_id: &str) -> TestClient<TcpStream> {
    let (client, connected) =
        TestClient::tcp(tcp_addr(broker), connect_packet(V311, client_id)).await;
    assert!(
        matches!(connected, ClientEvent::Connected { .. }),
        "{connected:?}"
    );
    client
}

/// A client of `client_id` subscribed to `filter` at `qos`.
async fn subscriber(
    broker: &BrokerHandle,
    client_id: &str,
    filter: &str,
    qos: QoS,
) -> TestClient<TcpStream> {
    let mut subscriber = client(broker, client_id).await;
    subscriber.subscribe(vec![subscription(filter, qos)]).await;
    subscriber
}

/// Publishes each message in turn, each flow completed before the next.
async fn publish_all(
    publisher: &mut TestClient<TcpStream>,
    messages: impl IntoIterator<Item = Publish>,
) {
    for publish in messages {
        publisher.publish(publish).await;
    }
}

/// Connects with `connect` and returns the client and its Session Present flag.
async fn connect_with(broker: &BrokerHandle, connect: Connect) -> (TestClient<TcpStream>, bool) {
    let (client, connected) = TestClient::tcp(tcp_addr(broker), connect).await;
    match connected {
        ClientEvent::Connected {
            session_present, ..
        } => (client, session_present),
        other => panic!("not connected: {other:?}"),
    }
}

fn persistent(client_id: &str) -> Connect {
    persistent_connect(V311, client_id, 0)
}

/// The next message's (topic, payload, QoS, RETAIN).
async fn next_message(client: &mut TestClient<TcpStream>) -> (String, String, QoS, bool) {
    let got = client.recv().await.expect("a message in time");
    (topic_str(&got), payload_str(&got), got.qos, got.retain)
}

/// The next `n` messages, as `next_message` gives them.
async fn next_messages(
    client: &mut TestClient<TcpStream>,
    n: usize,
) -> Vec<(String, String, QoS, bool)> {
    let mut got = Vec::with_capacity(n);
    for _ in 0..n {
        got.push(next_message(client).await);
    }
    got
}

fn m(topic: &str, payload: &str, qos: QoS, retain: bool) -> (String, String, QoS, bool) {
    (topic.to_owned(), payload.to_owned(), qos, retain)
}

async fn leave(client: &mut TestClient<TcpStream>) {
    client.disconnect(ReasonCode::Success).await;
    // The broker has stored the session once it has seen the connection end.
    tokio::time::sleep(Duration::from_millis(100)).await;
}

fn will(topic: &str, retain: bool) -> Will {
    Will {
        topic: TopicName::new(topic).unwrap(),
        payload: "gone".into(),
        qos: QoS::AtLeastOnce,
        retain,
        properties: Default::default(),
    }
}

// ------------------------------------------------------------------ packet identifiers

#[tokio::test]
async fn mqtt_2_3_1_7_suback_and_unsuback_carry_their_request_identifiers() {
    let broker = start_broker(|_| {}).await;
    let (mut raw, _) = Raw::connect(tcp_addr(&broker), connect_packet(V311, "ids")).await;
    raw.send(subscribe_packet(0x1234, &[("a/#", QoS::AtLeastOnce)]))
        .await;
    raw.send(subscribe_packet(7, &[("b", QoS::AtMostOnce)]))
        .await;
    raw.send(unsubscribe_packet(0xFFFF, &["a/#"])).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(match raw.expect().await {
            Packet::SubAck(suback) => ("SUBACK", suback.packet_id.get()),
            Packet::UnsubAck(unsuback) => ("UNSUBACK", unsuback.packet_id.get()),
            other => panic!("{other:?}"),
        });
    }
    assert_eq!(
        ids,
        [("SUBACK", 0x1234), ("SUBACK", 7), ("UNSUBACK", 0xFFFF)]
    );
    broker.shutdown(SHORT).await;
}

// ------------------------------------------------------------------ sessions

#[tokio::test]
async fn mqtt_3_1_2_4_clean_session_0_creates_resumes_and_keeps_the_session() {
    let broker = start_broker(|_| {}).await;
    let (mut first, present) = connect_with(&broker, persistent("keeper")).await;
    assert!(!present, "no session yet: a new one is created");
    first
        .subscribe(vec![subscription("k/#", QoS::AtLeastOnce)])
        .await;
    leave(&mut first).await;
    assert!(
        broker.has_session("keeper"),
        "stored after the disconnection"
    );
    let (mut again, present) = connect_with(&broker, persistent("keeper")).await;
    assert!(present, "resumed");
    broker
        .publish("k/1", "still subscribed", QoS::AtLeastOnce, false)
        .unwrap();
    assert_eq!(
        payload_str(&again.recv().await.unwrap()),
        "still subscribed"
    );
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn mqtt_3_1_2_5_qos_1_and_2_messages_are_stored_while_disconnected() {
    let broker = start_broker(|_| {}).await;
    let (mut sub, _) = connect_with(&broker, persistent("away")).await;
    sub.subscribe(vec![subscription("away/#", QoS::ExactlyOnce)])
        .await;
    leave(&mut sub).await;
    let mut publisher = client(&broker, "pub").await;
    for (i, qos) in [QoS::AtLeastOnce, QoS::ExactlyOnce, QoS::AtLeastOnce]
        .into_iter()
        .enumerate()
    {
        publisher
            .publish(message(&format!("away/{i}"), &format!("m{i}"), qos))
            .await;
    }
    let (mut back, present) = connect_with(&broker, persistent("away")).await;
    assert!(present);
    assert_eq!(
        next_messages(&mut back, 3).await,
        [
            m("away/0", "m0", QoS::AtLeastOnce, false),
            m("away/1", "m1", QoS::ExactlyOnce, false),
            m("away/2", "m2", QoS::AtLeastOnce, false)
        ]
    );
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn mqtt_3_1_2_6_clean_session_1_discards_the_session_and_keeps_none() {
    let broker = start_broker(|_| {}).await;
    let (mut first, _) = connect_with(&broker, persistent("fresh")).await;
    first
        .subscribe(vec![subscription("f/#", QoS::AtLeastOnce)])
        .await;
    leave(&mut first).await;
    let (mut clean, present) = connect_with(&broker, connect_packet(V311, "fresh")).await;
    assert!(!present, "the previous session is discarded");
    broker.publish("f/1", "x", QoS::AtLeastOnce, false).unwrap();
    clean.expect_silence(SHORT).await;
    clean
        .subscribe(vec![subscription("g/#", QoS::AtLeastOnce)])
        .await;
    leave(&mut clean).await;
    assert!(
        !broker.has_session("fresh"),
        "it lasted as long as its connection"
    );
    let (mut later, present) = connect_with(&broker, persistent("fresh")).await;
    assert!(!present, "nothing of the clean session is reused");
    broker.publish("g/1", "x", QoS::AtLeastOnce, false).unwrap();
    later.expect_silence(SHORT).await;
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn mqtt_3_1_2_8_will_published_when_the_connection_closes_without_disconnect() {
    let broker = start_broker(|_| {}).await;
    let mut watcher = subscriber(&broker, "watcher", "wills/#", QoS::AtLeastOnce).await;
    let mut connect = connect_packet(V311, "dies");
    connect.will = Some(will("wills/dies", false));
    let (mut dies, _) = connect_with(&broker, connect.clone()).await;
    watcher.expect_silence(SHORT).await;
    dies.kill();
    assert_eq!(next_message(&mut watcher).await.1, "gone");
    connect.client_id = rallymq_codec::MqttString::new("polite").unwrap();
    let (mut polite, _) = connect_with(&broker, connect).await;
    polite.disconnect(ReasonCode::Success).await;
    watcher.expect_silence(SHORT).await;
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn mqtt_3_1_2_10_will_is_forgotten_once_published_or_after_disconnect() {
    let broker = start_broker(|_| {}).await;
    let mut watcher = subscriber(&broker, "watcher", "wills/#", QoS::AtLeastOnce).await;
    for polite in [false, true] {
        let id = if polite { "polite" } else { "dies" };
        let mut connect = persistent(id);
        connect.will = Some(will(&format!("wills/{id}"), false));
        let (mut first, _) = connect_with(&broker, connect).await;
        if polite {
            first.disconnect(ReasonCode::Success).await;
            watcher.expect_silence(SHORT).await;
        } else {
            first.kill();
            assert_eq!(next_message(&mut watcher).await.0, "wills/dies");
        }
        // The session goes on without a will: ending it abnormally publishes nothing.
        let (mut second, present) = connect_with(&broker, persistent(id)).await;
        assert!(present);
        second.kill();
        watcher.expect_silence(SHORT).await;
    }
    broker.shutdown(SHORT).await;
}

async fn will_as_published(retain: bool) -> ((String, String, QoS, bool), Option<Publish>) {
    let broker = start_broker(|_| {}).await;
    let mut watcher = subscriber(&broker, "watcher", "wills/#", QoS::AtLeastOnce).await;
    let mut connect = connect_packet(V311, "dies");
    connect.will = Some(will("wills/dies", retain));
    let (mut dies, _) = connect_with(&broker, connect).await;
    dies.kill();
    let live = next_message(&mut watcher).await;
    let mut late = subscriber(&broker, "late", "wills/#", QoS::AtLeastOnce).await;
    let stored = late.recv_within(SHORT).await;
    broker.shutdown(SHORT).await;
    (live, stored)
}

#[tokio::test]
async fn mqtt_3_1_2_16_will_retain_0_is_published_not_retained() {
    let (live, stored) = will_as_published(false).await;
    assert_eq!(live, m("wills/dies", "gone", QoS::AtLeastOnce, false));
    assert_eq!(stored, None, "not stored as a retained message");
}

#[tokio::test]
async fn mqtt_3_1_2_17_will_retain_1_is_published_retained() {
    let (live, stored) = will_as_published(true).await;
    assert_eq!(live.1, "gone");
    let stored = stored.expect("the will is the topic's retained message");
    assert_eq!(
        (payload_str(&stored), stored.retain),
        ("gone".to_owned(), true)
    );
}

#[tokio::test]
async fn mqtt_3_1_3_2_client_identifier_names_the_session_state() {
    let broker = start_broker(|_| {}).await;
    for (id, filter) in [("alpha", "a/#"), ("beta", "b/#")] {
        let (mut c, _) = connect_with(&broker, persistent(id)).await;
        c.subscribe(vec![subscription(filter, QoS::AtLeastOnce)])
            .await;
        leave(&mut c).await;
    }
    broker
        .publish("a/1", "for alpha", QoS::AtLeastOnce, false)
        .unwrap();
    broker
        .publish("b/1", "for beta", QoS::AtLeastOnce, false)
        .unwrap();
    for (id, expected) in [("beta", "for beta"), ("alpha", "for alpha")] {
        let (mut c, present) = connect_with(&broker, persistent(id)).await;
        assert!(present, "{id}");
        assert_eq!(payload_str(&c.recv().await.unwrap()), expected);
        c.expect_silence(SHORT).await;
    }
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn mqtt_3_1_3_5_client_identifiers_of_1_to_23_alphanumerics_are_allowed() {
    let broker = start_broker(|_| {}).await;
    for id in [
        "0",
        "z",
        "0123456789abcdefghijklm",
        "nopqrstuvwxyzABCDEFGHIJ",
        "KLMNOPQRSTUVWXYZ",
    ] {
        let (c, connected) = TestClient::tcp(tcp_addr(&broker), connect_packet(V311, id)).await;
        assert!(
            matches!(
                connected,
                ClientEvent::Connected { ref connack, .. } if connack.reason_code == ReasonCode::Success
            ),
            "{id}: {connected:?}"
        );
        assert!(broker.has_session(id), "{id}");
        drop(c);
    }
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn mqtt_3_1_3_6_empty_client_ids_are_given_unique_ones() {
    let broker = start_broker(|_| {}).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(client(&broker, "").await);
    }
    for c in &mut clients {
        c.subscribe(vec![subscription("anon", QoS::AtLeastOnce)])
            .await;
    }
    assert_eq!(broker.clients_connected(), 3, "none took another over");
    broker
        .publish("anon", "to each", QoS::AtLeastOnce, false)
        .unwrap();
    for c in &mut clients {
        assert_eq!(payload_str(&c.recv().await.unwrap()), "to each");
    }
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn mqtt_3_1_4_2_a_second_connection_with_the_client_id_ends_the_first() {
    let broker = start_broker(|_| {}).await;
    let mut first = client(&broker, "twice").await;
    let mut second = client(&broker, "twice").await;
    assert_eq!(
        first.closed().await,
        Some(CloseReason::TransportClosed),
        "3.1.1 has no DISCONNECT from the server: the connection just closes"
    );
    second
        .subscribe(vec![subscription("t", QoS::AtLeastOnce)])
        .await;
    broker
        .publish("t", "to the second", QoS::AtLeastOnce, false)
        .unwrap();
    assert_eq!(payload_str(&second.recv().await.unwrap()), "to the second");
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn mqtt_3_1_4_3_taking_over_applies_clean_session() {
    let broker = start_broker(|_| {}).await;
    let (mut first, _) = connect_with(&broker, persistent("over")).await;
    first
        .subscribe(vec![subscription("o/#", QoS::AtLeastOnce)])
        .await;
    // Taken over by Clean Session 0: the session goes on.
    let (mut second, present) = connect_with(&broker, persistent("over")).await;
    assert!(present);
    assert!(first.closed().await.is_some());
    broker
        .publish("o/1", "kept", QoS::AtLeastOnce, false)
        .unwrap();
    assert_eq!(payload_str(&second.recv().await.unwrap()), "kept");
    // Taken over by Clean Session 1: it is discarded.
    let (mut third, present) = connect_with(&broker, connect_packet(V311, "over")).await;
    assert!(!present);
    assert!(second.closed().await.is_some());
    broker
        .publish("o/2", "dropped", QoS::AtLeastOnce, false)
        .unwrap();
    third.expect_silence(SHORT).await;
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn mqtt_3_2_2_2_stored_session_gets_session_present_1() {
    let broker = start_broker(|_| {}).await;
    let (mut first, _) = connect_with(&broker, persistent("stored")).await;
    leave(&mut first).await;
    let (_again, present) = connect_with(&broker, persistent("stored")).await;
    assert!(present);
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn mqtt_3_2_2_3_no_stored_session_gets_session_present_0() {
    let broker = start_broker(|_| {}).await;
    let (_, present) = connect_with(&broker, persistent("new-id")).await;
    assert!(!present, "never seen");
    let (mut clean, _) = connect_with(&broker, connect_packet(V311, "was-clean")).await;
    leave(&mut clean).await;
    let (_, present) = connect_with(&broker, persistent("was-clean")).await;
    assert!(!present, "a clean session is not stored");
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn mqtt_4_1_0_2_clean_session_lasts_as_long_as_its_connection() {
    let broker = start_broker(|_| {}).await;
    let mut c = subscriber(&broker, "short-lived", "s", QoS::AtLeastOnce).await;
    for i in 0..3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(broker.has_session("short-lived"), "round {i}");
        broker.publish("s", "x", QoS::AtLeastOnce, false).unwrap();
        assert!(c.recv().await.is_some());
    }
    leave(&mut c).await;
    assert!(!broker.has_session("short-lived"));
    broker.shutdown(SHORT).await;
}

// ------------------------------------------------------------------ PUBLISH and retained

#[tokio::test]
async fn mqtt_3_3_1_3_dup_of_an_incoming_publish_is_not_propagated() {
    let broker = start_broker(|_| {}).await;
    let mut sub = subscriber(&broker, "sub", "d/#", QoS::ExactlyOnce).await;
    let (mut raw, _) = Raw::connect(tcp_addr(&broker), connect_packet(V311, "pub")).await;
    for (qos, packet_id) in [(QoS::AtLeastOnce, 1), (QoS::ExactlyOnce, 2)] {
        let Packet::Publish(mut publish) =
            publish_packet("d/1", &format!("{qos:?}"), qos, Some(packet_id))
        else {
            unreachable!()
        };
        publish.dup = true; // as if sent before
        raw.send(Packet::Publish(publish)).await;
        let got = sub.recv().await.expect("delivered");
        assert!(!got.dup, "{qos:?}: a first delivery to the subscriber");
    }
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn mqtt_3_3_1_5_retained_message_is_stored_with_its_qos() {
    let broker = start_broker(|_| {}).await;
    let mut publisher = client(&broker, "pub").await;
    publish_all(
        &mut publisher,
        [
            retained("r/one", "at 1", QoS::AtLeastOnce),
            retained("r/zero", "at 0", QoS::AtMostOnce),
            retained("r/two", "at 2", QoS::ExactlyOnce),
        ],
    )
    .await;
    let mut future = subscriber(&broker, "future", "r/#", QoS::ExactlyOnce).await;
    let mut got = next_messages(&mut future, 3).await;
    got.sort();
    assert_eq!(
        got,
        [
            m("r/one", "at 1", QoS::AtLeastOnce, true),
            m("r/two", "at 2", QoS::ExactlyOnce, true),
            m("r/zero", "at 0", QoS::AtMostOnce, true),
        ]
    );
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn mqtt_3_3_1_6_new_subscription_gets_the_last_retained_message_of_each_matching_topic() {
    let broker = start_broker(|_| {}).await;
    let mut publisher = client(&broker, "pub").await;
    for (topic, payload) in [
        ("s/1", "old"),
        ("s/1", "last"),
        ("s/2", "only"),
        ("s/2/deep", "not matched"),
        ("other/1", "not matched"),
    ] {
        publisher
            .publish(retained(topic, payload, QoS::AtLeastOnce))
            .await;
    }
    let mut sub = subscriber(&broker, "sub", "s/+", QoS::AtLeastOnce).await;
    let mut got = next_messages(&mut sub, 2).await;
    got.sort();
    assert_eq!(
        got,
        [
            m("s/1", "last", QoS::AtLeastOnce, true),
            m("s/2", "only", QoS::AtLeastOnce, true)
        ]
    );
    sub.expect_silence(SHORT).await;
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn mqtt_3_3_1_7_retained_qos_0_message_replaces_the_previous_one() {
    let broker = start_broker(|_| {}).await;
    let mut publisher = client(&broker, "pub").await;
    publish_all(
        &mut publisher,
        [
            retained("q0", "earlier at 1", QoS::AtLeastOnce),
            retained("q0", "later at 0", QoS::AtMostOnce),
        ],
    )
    .await;
    let mut sub = subscriber(&broker, "sub", "q0", QoS::AtLeastOnce).await;
    // Storing the QoS 0 message is a SHOULD; keeping the earlier one is forbidden.
    assert_eq!(
        next_message(&mut sub).await,
        m("q0", "later at 0", QoS::AtMostOnce, true)
    );
    sub.expect_silence(SHORT).await;
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn mqtt_3_3_1_8_retained_message_sent_for_a_new_subscription_has_retain_1() {
    let broker = start_broker(|_| {}).await;
    let mut publisher = client(&broker, "pub").await;
    publisher
        .publish(retained("k/t", "kept", QoS::AtLeastOnce))
        .await;
    let mut sub = subscriber(&broker, "sub", "k/#", QoS::AtLeastOnce).await;
    assert_eq!(
        next_message(&mut sub).await,
        m("k/t", "kept", QoS::AtLeastOnce, true)
    );
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn mqtt_3_3_1_9_live_delivery_has_retain_0_however_it_was_published() {
    let broker = start_broker(|_| {}).await;
    let mut sub = subscriber(&broker, "sub", "l/#", QoS::ExactlyOnce).await;
    let mut publisher = client(&broker, "pub").await;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        publisher.publish(retained("l/t", "retained", qos)).await;
        publisher.publish(message("l/t", "plain", qos)).await;
        assert_eq!(
            next_message(&mut sub).await,
            m("l/t", "retained", qos, false)
        );
        assert_eq!(next_message(&mut sub).await, m("l/t", "plain", qos, false));
    }
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn mqtt_3_3_1_10_empty_retained_message_is_forwarded_and_clears_the_topic() {
    let broker = start_broker(|_| {}).await;
    let mut publisher = client(&broker, "pub").await;
    publisher
        .publish(retained("e/t", "kept", QoS::AtLeastOnce))
        .await;
    let mut sub = subscriber(&broker, "sub", "e/#", QoS::AtLeastOnce).await;
    assert_eq!(next_message(&mut sub).await.1, "kept");
    publisher
        .publish(retained("e/t", "", QoS::AtLeastOnce))
        .await;
    assert_eq!(
        next_message(&mut sub).await,
        m("e/t", "", QoS::AtLeastOnce, false),
        "processed as normal and sent to the subscription"
    );
    let mut late = subscriber(&broker, "late", "e/#", QoS::AtLeastOnce).await;
    late.expect_silence(SHORT).await;
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn mqtt_3_3_1_11_empty_retained_message_is_not_stored() {
    let broker = start_broker(|_| {}).await;
    let mut publisher = client(&broker, "pub").await;
    publisher
        .publish(retained("n/t", "", QoS::AtLeastOnce))
        .await;
    let mut sub = subscriber(&broker, "sub", "n/#", QoS::AtLeastOnce).await;
    publisher
        .publish(message("n/t", "marker", QoS::AtLeastOnce))
        .await;
    assert_eq!(
        next_message(&mut sub).await,
        m("n/t", "marker", QoS::AtLeastOnce, false),
        "no empty retained message came first"
    );
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn mqtt_3_3_1_12_retain_0_neither_stores_nor_replaces_nor_removes() {
    let broker = start_broker(|_| {}).await;
    let mut publisher = client(&broker, "pub").await;
    publish_all(
        &mut publisher,
        [
            message("p/fresh", "plain", QoS::AtLeastOnce),
            retained("p/kept", "kept", QoS::AtLeastOnce),
            message("p/kept", "plain", QoS::AtLeastOnce),
            message("p/kept", "", QoS::AtLeastOnce),
        ],
    )
    .await;
    let mut sub = subscriber(&broker, "sub", "p/#", QoS::AtLeastOnce).await;
    assert_eq!(
        next_message(&mut sub).await,
        m("p/kept", "kept", QoS::AtLeastOnce, true)
    );
    sub.expect_silence(SHORT).await;
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn mqtt_3_3_2_3_topic_names_sent_match_the_subscription() {
    let broker = start_broker(|_| {}).await;
    let mut sub = client(&broker, "sub").await;
    sub.subscribe(vec![
        subscription("a/+/c", QoS::AtLeastOnce),
        subscription("x/#", QoS::AtLeastOnce),
    ])
    .await;
    let mut publisher = client(&broker, "pub").await;
    let topics = [
        "a/b/c", "a/b/d", "a//c", "b/b/c", "a/b/c/d", "x", "x/y/z", "xx/y", "A/b/c",
    ];
    for topic in topics {
        publisher
            .publish(message(topic, "m", QoS::AtLeastOnce))
            .await;
    }
    let mut got = Vec::new();
    while let Some(publish) = sub.recv_within(SHORT).await {
        got.push(topic_str(&publish));
    }
    assert_eq!(got, ["a/b/c", "a//c", "x", "x/y/z"]);
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn mqtt_3_3_5_1_one_copy_at_the_maximum_qos_of_the_matching_subscriptions() {
    let broker = start_broker(|_| {}).await;
    let mut sub = client(&broker, "sub").await;
    sub.subscribe(vec![
        subscription("o/+", QoS::AtMostOnce),
        subscription("o/#", QoS::ExactlyOnce),
        subscription("+/x", QoS::AtLeastOnce),
    ])
    .await;
    let mut publisher = client(&broker, "pub").await;
    publish_all(
        &mut publisher,
        [
            message("o/x", "2", QoS::ExactlyOnce),
            message("o/y", "1", QoS::AtLeastOnce),
        ],
    )
    .await;
    assert_eq!(
        next_message(&mut sub).await,
        m("o/x", "2", QoS::ExactlyOnce, false)
    );
    assert_eq!(
        next_message(&mut sub).await,
        m("o/y", "1", QoS::AtLeastOnce, false)
    );
    sub.expect_silence(SHORT).await;
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn mqtt_3_3_5_2_every_publish_is_acknowledged_positively() {
    // rallymq authorizes every PUBLISH: each gets the acknowledgement of its QoS, wherever
    // it goes, and the connection stays.
    let broker = start_broker(|_| {}).await;
    let (mut raw, _) = Raw::connect(tcp_addr(&broker), connect_packet(V311, "pub")).await;
    raw.send(publish_packet(
        "nobody/listens",
        "x",
        QoS::AtLeastOnce,
        Some(1),
    ))
    .await;
    raw.send(publish_packet(
        "$SYS/by/a/client",
        "x",
        QoS::ExactlyOnce,
        Some(2),
    ))
    .await;
    assert_eq!(raw.expect().await, Packet::PubAck(Ack::new(id(1))));
    assert_eq!(raw.expect().await, Packet::PubRec(Ack::new(id(2))));
    raw.send(Packet::PubRel(Ack::new(id(2)))).await;
    assert_eq!(raw.expect().await, Packet::PubComp(Ack::new(id(2))));
    raw.write(&[0xC0, 0x00]).await;
    assert_eq!(raw.expect().await, Packet::PingResp, "still connected");
    broker.shutdown(SHORT).await;
}

// ------------------------------------------------------------------ SUBSCRIBE and UNSUBSCRIBE

#[tokio::test]
async fn mqtt_3_8_3_2_wildcard_filters_are_supported() {
    let broker = start_broker(|_| {}).await;
    let mut sub = client(&broker, "sub").await;
    let codes = sub
        .subscribe(vec![
            subscription("+/w", QoS::AtLeastOnce),
            subscription("v/#", QoS::AtLeastOnce),
        ])
        .await;
    assert_eq!(codes, [ReasonCode::GrantedQoS1, ReasonCode::GrantedQoS1]);
    broker.publish("u/w", "1", QoS::AtLeastOnce, false).unwrap();
    broker
        .publish("v/x/y", "2", QoS::AtLeastOnce, false)
        .unwrap();
    assert_eq!(payload_str(&sub.recv().await.unwrap()), "1");
    assert_eq!(payload_str(&sub.recv().await.unwrap()), "2");
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn mqtt_3_8_4_1_every_subscribe_is_answered_with_suback() {
    let broker = start_broker(|_| {}).await;
    let (mut raw, _) = Raw::connect(tcp_addr(&broker), connect_packet(V311, "s")).await;
    let requests = [
        ("a", QoS::AtMostOnce),
        ("a", QoS::AtMostOnce), // the same again
        ("#", QoS::ExactlyOnce),
        ("$SYS/#", QoS::AtLeastOnce),
        ("a/+/b", QoS::AtLeastOnce),
    ];
    for (i, request) in requests.iter().enumerate() {
        raw.send(subscribe_packet(i as u16 + 1, &[*request])).await;
    }
    for i in 0..requests.len() {
        assert!(
            matches!(raw.expect().await, Packet::SubAck(s) if s.packet_id.get() == i as u16 + 1),
            "SUBACK {}",
            i + 1
        );
    }
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn mqtt_3_8_4_2_suback_has_the_identifier_of_its_subscribe() {
    let broker = start_broker(|_| {}).await;
    let (mut raw, _) = Raw::connect(tcp_addr(&broker), connect_packet(V311, "s")).await;
    for packet_id in [1, 0x8000, 0xFFFF, 42] {
        raw.send(subscribe_packet(packet_id, &[("t", QoS::AtLeastOnce)]))
            .await;
        match raw.expect().await {
            Packet::SubAck(suback) => assert_eq!(suback.packet_id.get(), packet_id),
            other => panic!("{other:?}"),
        }
    }
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn mqtt_3_8_4_3_the_same_filter_again_replaces_resends_retained_and_keeps_the_flow() {
    let broker = start_broker(|_| {}).await;
    broker
        .publish("same/r", "retained", QoS::AtLeastOnce, true)
        .unwrap();
    let mut sub = subscriber(&broker, "sub", "same/#", QoS::AtMostOnce).await;
    assert_eq!(
        next_message(&mut sub).await,
        m("same/r", "retained", QoS::AtMostOnce, true)
    );
    let mut publisher = client(&broker, "pub").await;
    for i in 0..5 {
        publisher
            .publish(message("same/live", &format!("{i}"), QoS::ExactlyOnce))
            .await;
    }
    let codes = sub
        .subscribe(vec![subscription("same/#", QoS::ExactlyOnce)])
        .await;
    assert_eq!(codes, [ReasonCode::GrantedQoS2]);
    for i in 5..10 {
        publisher
            .publish(message("same/live", &format!("{i}"), QoS::ExactlyOnce))
            .await;
    }
    let mut live = Vec::new();
    let mut resent = Vec::new();
    while let Some(got) = sub.recv_within(SHORT).await {
        if got.retain {
            resent.push((payload_str(&got), got.qos));
        } else {
            live.push((payload_str(&got), got.qos));
        }
    }
    assert_eq!(
        resent,
        [("retained".to_owned(), QoS::AtLeastOnce)],
        "re-sent, at its own QoS under the new maximum"
    );
    let expected: Vec<(String, QoS)> = (0..10)
        .map(|i| {
            let qos = if i < 5 {
                QoS::AtMostOnce
            } else {
                QoS::ExactlyOnce
            };
            (i.to_string(), qos)
        })
        .collect();
    assert_eq!(
        live, expected,
        "every message once, none lost, one subscription"
    );
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn mqtt_3_8_4_4_several_filters_act_as_several_subscribes_with_one_suback() {
    let broker = start_broker(|_| {}).await;
    let (mut raw, _) = Raw::connect(tcp_addr(&broker), connect_packet(V311, "s")).await;
    raw.send(subscribe_packet(
        9,
        &[
            ("f/a", QoS::AtMostOnce),
            ("f/b", QoS::AtLeastOnce),
            ("f/a", QoS::ExactlyOnce),
        ],
    ))
    .await;
    match raw.expect().await {
        Packet::SubAck(suback) => assert_eq!(
            (suback.packet_id.get(), suback.reason_codes),
            (
                9,
                vec![
                    ReasonCode::Success,
                    ReasonCode::GrantedQoS1,
                    ReasonCode::GrantedQoS2
                ]
            )
        ),
        other => panic!("{other:?}"),
    }
    broker.publish("f/a", "a", QoS::ExactlyOnce, false).unwrap();
    broker.publish("f/b", "b", QoS::ExactlyOnce, false).unwrap();
    // f/a as subscribed last (QoS 2, replacing QoS 0), f/b at QoS 1.
    let mut got = Vec::new();
    for _ in 0..2 {
        match raw.expect().await {
            Packet::Publish(p) => {
                got.push((payload_str(&p), p.qos));
                let packet_id = p.packet_id.expect("QoS 1 or 2");
                if p.qos == QoS::ExactlyOnce {
                    raw.send(Packet::PubRec(Ack::new(packet_id))).await;
                } else {
                    raw.send(Packet::PubAck(Ack::new(packet_id))).await;
                }
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        got,
        [
            ("a".to_owned(), QoS::ExactlyOnce),
            ("b".to_owned(), QoS::AtLeastOnce)
        ]
    );
    assert!(matches!(raw.expect().await, Packet::PubRel(_)));
    raw.expect_silence(SHORT).await;
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn mqtt_3_8_4_5_a_return_code_per_filter_the_qos_granted() {
    let broker = start_broker(|_| {}).await;
    let mut sub = client(&broker, "sub").await;
    let codes = sub
        .subscribe(vec![
            subscription("g/0", QoS::AtMostOnce),
            subscription("g/1", QoS::AtLeastOnce),
            subscription("g/2", QoS::ExactlyOnce),
        ])
        .await;
    assert_eq!(
        codes,
        [
            ReasonCode::Success,
            ReasonCode::GrantedQoS1,
            ReasonCode::GrantedQoS2
        ]
    );
    // Each code is the maximum the subscription delivers at.
    for topic in ["g/0", "g/1", "g/2"] {
        broker.publish(topic, "x", QoS::ExactlyOnce, false).unwrap();
    }
    assert_eq!(
        next_messages(&mut sub, 3).await,
        [
            m("g/0", "x", QoS::AtMostOnce, false),
            m("g/1", "x", QoS::AtLeastOnce, false),
            m("g/2", "x", QoS::ExactlyOnce, false)
        ]
    );
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn mqtt_3_8_4_6_delivered_at_the_lower_of_published_and_granted_qos() {
    let broker = start_broker(|_| {}).await;
    let qos_levels = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];
    let mut subscribers = Vec::new();
    for granted in qos_levels {
        let mut sub = client(&broker, &format!("sub{}", granted.bits())).await;
        sub.subscribe(vec![subscription("min", granted)]).await;
        subscribers.push((granted, sub));
    }
    let mut publisher = client(&broker, "pub").await;
    for published in qos_levels {
        publisher.publish(message("min", "x", published)).await;
        for (granted, sub) in &mut subscribers {
            let got = sub.recv().await.expect("delivered");
            assert_eq!(
                got.qos,
                published.min(*granted),
                "{published:?} to {granted:?}"
            );
        }
    }
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn mqtt_3_9_3_1_return_codes_in_the_order_of_the_filters() {
    let broker = start_broker(|_| {}).await;
    let mut sub = client(&broker, "sub").await;
    let requested = [
        QoS::ExactlyOnce,
        QoS::AtMostOnce,
        QoS::AtLeastOnce,
        QoS::AtMostOnce,
        QoS::ExactlyOnce,
    ];
    let codes = sub
        .subscribe(
            requested
                .iter()
                .enumerate()
                .map(|(i, qos)| subscription(&format!("order/{i}"), *qos))
                .collect(),
        )
        .await;
    let granted: Vec<QoS> = codes
        .iter()
        .map(|code| match code {
            ReasonCode::Success => QoS::AtMostOnce,
            ReasonCode::GrantedQoS1 => QoS::AtLeastOnce,
            ReasonCode::GrantedQoS2 => QoS::ExactlyOnce,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(granted, requested);
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn mqtt_3_10_4_1_unsubscribe_compares_filters_character_by_character() {
    let broker = start_broker(|_| {}).await;
    let mut sub = client(&broker, "sub").await;
    sub.subscribe(vec![
        subscription("u/+", QoS::AtLeastOnce),
        subscription("u/b", QoS::AtLeastOnce),
    ])
    .await;
    // Neither "u/#" nor "U/+" nor "u/b/" is held: nothing is deleted.
    for filter in ["u/#", "U/+", "u/b/"] {
        sub.unsubscribe(filter).await;
    }
    broker.publish("u/a", "1", QoS::AtLeastOnce, false).unwrap();
    assert_eq!(payload_str(&sub.recv().await.unwrap()), "1");
    // "u/b" is: only the subscription with that very filter goes, "u/+" still matches u/b.
    sub.unsubscribe("u/b").await;
    broker.publish("u/b", "2", QoS::AtLeastOnce, false).unwrap();
    assert_eq!(payload_str(&sub.recv().await.unwrap()), "2");
    sub.unsubscribe("u/+").await;
    broker.publish("u/b", "3", QoS::AtLeastOnce, false).unwrap();
    sub.expect_silence(SHORT).await;
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn mqtt_3_10_4_2_no_new_messages_after_unsubscribe() {
    let broker = start_broker(|_| {}).await;
    let mut sub = client(&broker, "sub").await;
    sub.subscribe(vec![
        subscription("gone/#", QoS::AtLeastOnce),
        subscription("stays", QoS::AtLeastOnce),
    ])
    .await;
    sub.unsubscribe("gone/#").await;
    let mut publisher = client(&broker, "pub").await;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        publisher.publish(message("gone/x", "no", qos)).await;
    }
    publisher
        .publish(message("stays", "yes", QoS::AtLeastOnce))
        .await;
    assert_eq!(payload_str(&sub.recv().await.unwrap()), "yes");
    sub.expect_silence(SHORT).await;
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn mqtt_3_10_4_3_deliveries_already_started_are_completed() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let (mut raw, _) = Raw::connect(addr, persistent("half")).await;
    raw.send(subscribe_packet(1, &[("h/#", QoS::ExactlyOnce)]))
        .await;
    assert!(matches!(raw.expect().await, Packet::SubAck(_)));
    broker
        .publish("h/2", "two", QoS::ExactlyOnce, false)
        .unwrap();
    broker
        .publish("h/1", "one", QoS::AtLeastOnce, false)
        .unwrap();
    let mut ids = Vec::new();
    for _ in 0..2 {
        match raw.expect().await {
            Packet::Publish(p) => ids.push((p.qos, p.packet_id.expect("QoS 1 or 2"))),
            other => panic!("{other:?}"),
        }
    }
    // Unsubscribed with both deliveries unacknowledged.
    raw.send(unsubscribe_packet(2, &["h/#"])).await;
    assert!(matches!(raw.expect().await, Packet::UnsubAck(_)));
    let (_, qos2_id) = ids[0];
    raw.send(Packet::PubRec(Ack::new(qos2_id))).await;
    assert_eq!(
        raw.expect().await,
        Packet::PubRel(Ack::new(qos2_id)),
        "the QoS 2 flow goes on"
    );
    raw.send(Packet::PubComp(Ack::new(qos2_id))).await;
    // The QoS 1 delivery is still owed: the next connection of the session gets it again.
    drop(raw);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (mut again, connack) = Raw::connect(addr, persistent("half")).await;
    assert!(connack.session_present);
    match again.expect().await {
        Packet::Publish(p) => assert_eq!(
            (p.packet_id, p.dup, payload_str(&p)),
            (Some(ids[1].1), true, "one".to_owned())
        ),
        other => panic!("{other:?}"),
    }
    broker
        .publish("h/3", "after", QoS::AtLeastOnce, false)
        .unwrap();
    again.send(Packet::PubAck(Ack::new(ids[1].1))).await;
    again.expect_silence(SHORT).await;
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn mqtt_3_10_4_4_unsuback_has_the_identifier_of_its_unsubscribe() {
    let broker = start_broker(|_| {}).await;
    let (mut raw, _) = Raw::connect(tcp_addr(&broker), connect_packet(V311, "u")).await;
    raw.send(subscribe_packet(1, &[("a", QoS::AtMostOnce)]))
        .await;
    assert!(matches!(raw.expect().await, Packet::SubAck(_)));
    for packet_id in [0xABCD, 2, 0xFFFF] {
        raw.send(unsubscribe_packet(packet_id, &["a"])).await;
        match raw.expect().await {
            Packet::UnsubAck(unsuback) => assert_eq!(unsuback.packet_id.get(), packet_id),
            other => panic!("{other:?}"),
        }
    }
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn mqtt_3_10_4_5_unsuback_even_when_nothing_was_deleted() {
    let broker = start_broker(|_| {}).await;
    let (mut raw, _) = Raw::connect(tcp_addr(&broker), connect_packet(V311, "u")).await;
    raw.send(unsubscribe_packet(5, &["never/subscribed", "#"]))
        .await;
    assert!(matches!(raw.expect().await, Packet::UnsubAck(u) if u.packet_id == id(5)));
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn mqtt_3_10_4_6_several_filters_act_as_several_unsubscribes_with_one_unsuback() {
    let broker = start_broker(|_| {}).await;
    let (mut raw, _) = Raw::connect(tcp_addr(&broker), connect_packet(V311, "u")).await;
    raw.send(subscribe_packet(
        1,
        &[
            ("x/1", QoS::AtMostOnce),
            ("x/2", QoS::AtMostOnce),
            ("x/3", QoS::AtMostOnce),
        ],
    ))
    .await;
    assert!(matches!(raw.expect().await, Packet::SubAck(_)));
    raw.send(unsubscribe_packet(2, &["x/1", "not/held", "x/3"]))
        .await;
    assert!(matches!(raw.expect().await, Packet::UnsubAck(u) if u.packet_id == id(2)));
    for topic in ["x/1", "x/2", "x/3"] {
        broker
            .publish(topic, topic, QoS::AtMostOnce, false)
            .unwrap();
    }
    match raw.expect().await {
        Packet::Publish(p) => assert_eq!(topic_str(&p), "x/2"),
        other => panic!("{other:?}"),
    }
    raw.expect_silence(SHORT).await;
    broker.shutdown(SHORT).await;
}

// ------------------------------------------------------------------ routing order and topics

#[tokio::test]
async fn mqtt_4_5_0_1_message_goes_to_every_session_with_a_matching_subscription() {
    let broker = start_broker(|_| {}).await;
    let (mut offline, _) = connect_with(&broker, persistent("offline")).await;
    offline
        .subscribe(vec![subscription("own/#", QoS::AtLeastOnce)])
        .await;
    leave(&mut offline).await;
    let mut online = subscriber(&broker, "online", "own/+", QoS::AtLeastOnce).await;
    let mut elsewhere = subscriber(&broker, "elsewhere", "other/#", QoS::AtLeastOnce).await;
    let mut publisher = client(&broker, "pub").await;
    publisher
        .publish(message("own/x", "owned", QoS::AtLeastOnce))
        .await;
    assert_eq!(payload_str(&online.recv().await.unwrap()), "owned");
    let (mut back, _) = connect_with(&broker, persistent("offline")).await;
    assert_eq!(payload_str(&back.recv().await.unwrap()), "owned");
    elsewhere.expect_silence(SHORT).await;
    broker.shutdown(SHORT).await;
}

/// Publishes `count` messages on `topic` from a hand-written client, all in one write without
/// waiting for acknowledgements, QoS cycling 0, 1, 2; payloads are `{tag}{n}`. Then completes
/// the QoS 2 flows.
async fn burst(raw: &mut Raw, topic: &str, tag: &str, count: u16) {
    let mut bytes = Vec::new();
    for n in 0..count {
        let qos = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][usize::from(n % 3)];
        let packet_id = (qos != QoS::AtMostOnce).then_some(n + 1);
        let packet = publish_packet(topic, &format!("{tag}{n}"), qos, packet_id);
        bytes.extend_from_slice(&packet.to_bytes(V311).unwrap());
    }
    raw.write(&bytes).await;
    let mut acks = 0;
    let expected = (0..count).filter(|n| n % 3 != 0).count();
    while acks < expected {
        match raw.expect().await {
            Packet::PubAck(_) => acks += 1,
            Packet::PubRec(rec) => {
                acks += 1;
                raw.send(Packet::PubRel(Ack::new(rec.packet_id))).await;
            }
            other => panic!("{other:?}"),
        }
    }
}

/// The payloads received by `sub` until it goes quiet, grouped by their tag (first letter) and
/// the QoS they came at: the order is kept "for the same Topic and QoS".
async fn received_by_tag_and_qos(sub: &mut TestClient<TcpStream>) -> Vec<((char, u8), Vec<u16>)> {
    let mut groups: Vec<((char, u8), Vec<u16>)> = Vec::new();
    while let Some(got) = sub.recv_within(Duration::from_millis(500)).await {
        let payload = payload_str(&got);
        let key = (payload.chars().next().unwrap(), got.qos.bits());
        let n: u16 = payload[1..].parse().unwrap();
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, list)) => list.push(n),
            None => groups.push((key, vec![n])),
        }
    }
    groups.sort();
    groups
}

/// What `burst` sends as tag `tag`, `count` messages, grouped as `received_by_tag_and_qos`
/// reports them for a subscription granted `granted`.
fn sent_by_tag_and_qos(tag: char, count: u16, granted: QoS) -> Vec<((char, u8), Vec<u16>)> {
    let mut groups: Vec<((char, u8), Vec<u16>)> = Vec::new();
    for n in 0..count {
        let qos = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][usize::from(n % 3)];
        let key = (tag, qos.min(granted).bits());
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, list)) => list.push(n),
            None => groups.push((key, vec![n])),
        }
    }
    groups.sort();
    groups
}

#[tokio::test]
async fn mqtt_4_6_0_5_a_topic_is_ordered_by_default() {
    let broker = start_broker(|_| {}).await;
    let mut sub = subscriber(&broker, "sub", "ordered", QoS::ExactlyOnce).await;
    let (mut raw, _) = Raw::connect(tcp_addr(&broker), connect_packet(V311, "pub")).await;
    burst(&mut raw, "ordered", "a", 150).await;
    assert_eq!(
        received_by_tag_and_qos(&mut sub).await,
        sent_by_tag_and_qos('a', 150, QoS::ExactlyOnce)
    );
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn mqtt_4_6_0_6_messages_reach_subscribers_in_the_order_each_client_sent_them() {
    let broker = start_broker(|_| {}).await;
    let mut subs = Vec::new();
    for (i, granted) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        let mut sub = client(&broker, &format!("sub{i}")).await;
        sub.subscribe(vec![subscription("mixed", granted)]).await;
        subs.push(sub);
    }
    let addr = tcp_addr(&broker);
    let (mut first, _) = Raw::connect(addr, connect_packet(V311, "p1")).await;
    let (mut second, _) = Raw::connect(addr, connect_packet(V311, "p2")).await;
    tokio::join!(
        burst(&mut first, "mixed", "a", 90),
        burst(&mut second, "mixed", "b", 90)
    );
    for (sub, granted) in subs
        .iter_mut()
        .zip([QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])
    {
        let mut expected = sent_by_tag_and_qos('a', 90, granted);
        expected.extend(sent_by_tag_and_qos('b', 90, granted));
        assert_eq!(
            received_by_tag_and_qos(sub).await,
            expected,
            "granted {granted:?}: each publisher's messages of a QoS in the order sent"
        );
    }
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn mqtt_4_7_2_1_filters_starting_with_a_wildcard_do_not_match_dollar_topics() {
    let broker = start_broker(|_| {}).await;
    let mut wild = client(&broker, "wild").await;
    wild.subscribe(vec![
        subscription("#", QoS::AtLeastOnce),
        subscription("+/status", QoS::AtLeastOnce),
    ])
    .await;
    let mut dollar = subscriber(&broker, "dollar", "$app/#", QoS::AtLeastOnce).await;
    let mut publisher = client(&broker, "pub").await;
    publish_all(
        &mut publisher,
        [
            message("$app/status", "hidden", QoS::AtLeastOnce),
            message("app/status", "seen", QoS::AtLeastOnce),
        ],
    )
    .await;
    assert_eq!(payload_str(&dollar.recv().await.unwrap()), "hidden");
    assert_eq!(
        payload_str(&wild.recv().await.unwrap()),
        "seen",
        "the $ topic was not delivered to # or +/status"
    );
    wild.expect_silence(SHORT).await;
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn mqtt_4_7_3_4_no_normalisation_when_matching() {
    let broker = start_broker(|_| {}).await;
    let mut sub = client(&broker, "sub").await;
    sub.subscribe(vec![
        subscription("caf\u{e9}/+", QoS::AtLeastOnce),
        subscription("Accounts", QoS::AtLeastOnce),
    ])
    .await;
    let mut publisher = client(&broker, "pub").await;
    for topic in [
        "cafe\u{301}/x",
        "ACCOUNTS",
        "accounts",
        "Accounts ",
        "caf\u{e9}/x",
    ] {
        publisher
            .publish(message(topic, topic, QoS::AtLeastOnce))
            .await;
    }
    assert_eq!(topic_str(&sub.recv().await.unwrap()), "caf\u{e9}/x");
    sub.expect_silence(SHORT).await;
    broker.shutdown(SHORT).await;
}

// ------------------------------------------------------------------ WebSockets

async fn websocket(
    broker: &BrokerHandle,
    offered: &[&str],
) -> (
    rallymq_websocket::tokio::WebSocketStream<TcpStream>,
    Option<String>,
) {
    let addr = broker.local_addr(ListenerKind::WebSocket).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let request = ClientRequest::new(&addr.to_string(), "/mqtt")
        .unwrap()
        .with_subprotocols(offered)
        .unwrap();
    let (ws, response) = ws_connect(tcp, &request, Config::default())
        .await
        .expect("upgrade");
    (ws, response.subprotocol().map(str::to_owned))
}

/// Bytes of binary messages received until `len` have come, or what ended the wait.
async fn ws_read(
    ws: &mut rallymq_websocket::tokio::WebSocketStream<TcpStream>,
    len: usize,
) -> Result<Vec<u8>, String> {
    let mut received = Vec::new();
    while received.len() < len {
        match tokio::time::timeout(WAIT, ws.recv()).await {
            Err(_) => return Err("timeout".into()),
            Ok(Some(Ok(Event::Binary(data) | Event::BinaryChunk { data, .. }))) => {
                received.extend_from_slice(&data)
            }
            Ok(other) => return Err(format!("{other:?}")),
        }
    }
    Ok(received)
}

fn connect_bytes(client_id: &str) -> Vec<u8> {
    Packet::from(connect_packet(V311, client_id))
        .to_bytes(V311)
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn mqtt_6_0_0_1_a_text_frame_closes_the_connection() {
    let broker = start_broker(|_| {}).await;
    let (mut ws, _) = websocket(&broker, &["mqtt"]).await;
    ws.send_binary(&connect_bytes("ws")).await.unwrap();
    assert_eq!(ws_read(&mut ws, 4).await, Ok(vec![0x20, 0x02, 0x00, 0x00]));
    // A PINGREQ, as text.
    ws.send_text("\u{c0}\u{0}").await.unwrap();
    let ended = ws_read(&mut ws, 1).await.expect_err("no PINGRESP");
    // A Close frame, or the transport closing under it.
    assert!(
        ended.starts_with("Some(Ok(Close(")
            || ended == "None"
            || ended.contains("UnexpectedEof")
            || ended.contains("ConnectionReset"),
        "the connection ends: {ended}"
    );
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn mqtt_6_0_0_2_packets_need_not_align_with_frames() {
    let broker = start_broker(|_| {}).await;
    let (mut ws, _) = websocket(&broker, &["mqtt"]).await;
    let connect = connect_bytes("frames");
    // The CONNECT a byte a frame, then SUBSCRIBE, PUBLISH and PINGREQ in one frame.
    for byte in &connect {
        ws.send_binary(&[*byte]).await.unwrap();
    }
    let mut rest = subscribe_packet(1, &[("w", QoS::AtMostOnce)])
        .to_bytes(V311)
        .unwrap()
        .to_vec();
    rest.extend_from_slice(
        &publish_packet("w", "back", QoS::AtMostOnce, None)
            .to_bytes(V311)
            .unwrap(),
    );
    rest.extend_from_slice(&[0xC0, 0x00]);
    // The three packets over two frames, split inside the PUBLISH.
    let cut = rest.len() - 5;
    ws.send_binary(&rest[..cut]).await.unwrap();
    ws.send_binary(&rest[cut..]).await.unwrap();
    let expected_publish = publish_packet("w", "back", QoS::AtMostOnce, None)
        .to_bytes(V311)
        .unwrap();
    let mut expected = vec![0x20, 0x02, 0x00, 0x00, 0x90, 0x03, 0x00, 0x01, 0x00];
    expected.extend_from_slice(&expected_publish);
    expected.extend_from_slice(&[0xD0, 0x00]);
    let mut received = ws_read(&mut ws, expected.len()).await.unwrap();
    // The PINGRESP may overtake the PUBLISH: they are separate flows.
    if received.ends_with(&expected_publish) {
        let at = received.len() - expected_publish.len();
        let publish = received.split_off(at);
        received.splice(at - 2..at - 2, publish);
    }
    assert_eq!(received, expected);
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn mqtt_6_0_0_4_the_server_selects_mqtt() {
    let broker = start_broker(|_| {}).await;
    for offered in [
        &["mqtt"][..],
        &["mqttv3.1", "mqtt"],
        &["mqtt", "mqttv3.1.1"],
    ] {
        let (mut ws, picked) = websocket(&broker, offered).await;
        assert_eq!(picked.as_deref(), Some("mqtt"), "offered {offered:?}");
        ws.send_binary(&connect_bytes("sub")).await.unwrap();
        assert_eq!(ws_read(&mut ws, 4).await, Ok(vec![0x20, 0x02, 0x00, 0x00]));
    }
    broker.shutdown(SHORT).await;
}

// ------------------------------------------------------------------ conformance

#[tokio::test]
async fn mqtt_7_0_0_2_a_client_of_the_standard_alone_is_served() {
    // The examples' bytes as the standard spells them: no credentials, no extension.
    let broker = start_broker(|_| {}).await;
    let mut raw = Raw::open(tcp_addr(&broker), V311).await;
    raw.write(&[
        0x10, 0x0E, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x02, b'i',
        b'd',
    ])
    .await;
    assert_eq!(raw.expect().await, Packet::ConnAck(ConnAck::default()));
    raw.write(&[0x82, 0x08, 0x00, 0x0A, 0x00, 0x03, b'a', b'/', b'b', 0x01])
        .await;
    assert!(
        matches!(raw.expect().await, Packet::SubAck(s) if s.reason_codes == [ReasonCode::GrantedQoS1])
    );
    raw.write(&[
        0x32, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0B, b'h', b'i',
    ])
    .await;
    let got = raw.expect_n(2).await;
    assert!(got.contains(&Packet::PubAck(Ack::new(id(11)))), "{got:?}");
    assert!(
        got.iter()
            .any(|p| matches!(p, Packet::Publish(p) if p.payload == "hi")),
        "{got:?}"
    );
    raw.write(&[0xC0, 0x00]).await;
    assert_eq!(raw.expect().await, Packet::PingResp);
    raw.write(&[0xE0, 0x00]).await;
    assert_eq!(raw.next().await, Err(NoPacket::Closed));
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn mqtt_7_1_1_1_broker_reads_mqtt_from_a_tcp_byte_stream_however_it_is_cut() {
    let broker = start_broker(|_| {}).await;
    let mut raw = Raw::open(tcp_addr(&broker), V311).await;
    let mut bytes = connect_bytes("bytes");
    bytes.extend_from_slice(
        &subscribe_packet(1, &[("b", QoS::AtLeastOnce)])
            .to_bytes(V311)
            .unwrap(),
    );
    let payload = "y".repeat(200); // a two-byte Remaining Length
    bytes.extend_from_slice(
        &publish_packet("b", &payload, QoS::AtLeastOnce, Some(2))
            .to_bytes(V311)
            .unwrap(),
    );
    for byte in bytes {
        raw.write(&[byte]).await;
    }
    assert!(matches!(raw.expect().await, Packet::ConnAck(_)));
    assert!(matches!(raw.expect().await, Packet::SubAck(_)));
    let mut got = raw.expect_n(2).await;
    got.sort_by_key(|p| p.packet_type() as u8);
    assert!(matches!(&got[0], Packet::Publish(p) if payload_str(p) == payload));
    assert_eq!(got[1], Packet::PubAck(Ack::new(id(2))));
    broker.shutdown(SHORT).await;
}
