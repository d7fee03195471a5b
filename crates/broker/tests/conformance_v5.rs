//! MQTT 5.0 conformance of the broker: routing, retained messages, sessions, wills, shared
//! subscriptions, subscription identifiers and options, and MQTT over WebSockets, end to end
//! over loopback. Each test is named after the normative statement of MQTT 5.0 it checks
//! (`mqtt_3_3_1_10_...` for MQTT-3.3.1-10), and `crates/session/CONFORMANCE.md` traces every
//! statement to its tests.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rallymq_broker::ListenerKind;
use rallymq_codec::{
    ConnAck, Connect, Decoder, Limits, MqttString, Packet, PacketId, PayloadFormat,
    ProtocolVersion, Publish, QoS, ReasonCode, RetainHandling, Subscribe, SubscribeProperties,
    SubscriptionId, TopicFilter, TopicName, Unsubscribe, UserProperty, Will, WillProperties,
};
use rallymq_session::{ClientConfig, ClientEvent, CloseReason, Timestamp};
use support::{
    TestClient, WAIT, connect_packet, connected_present, message, payload_str, persistent_connect,
    start_broker, subscription, tcp_addr, topic_str,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const V5: ProtocolVersion = ProtocolVersion::V5;
/// How long a test waits to be sure nothing (more) arrives.
const QUIET: Duration = Duration::from_millis(250);
/// The grace a test gives the broker's connections at shutdown: none of them is waited for (the
/// test clients are still open, so a longer grace would only be waited out).
const SHUTDOWN: Duration = Duration::from_millis(10);

type Client = TestClient<TcpStream>;

async fn client(addr: SocketAddr, client_id: &str) -> Client {
    connected(addr, connect_packet(V5, client_id)).await
}

async fn connected(addr: SocketAddr, connect: Connect) -> Client {
    let (client, event) = TestClient::tcp(addr, connect).await;
    assert!(
        matches!(event, ClientEvent::Connected { .. }),
        "not connected: {event:?}"
    );
    client
}

/// A client that acknowledges by hand: what it receives stays unacknowledged until
/// `engine.acknowledge`.
async fn manual_client(addr: SocketAddr, connect: Connect) -> Client {
    let mut config = ClientConfig::new(connect);
    config.manual_acks = true;
    let (client, event) = TestClient::tcp_with(addr, config).await;
    assert!(matches!(event, ClientEvent::Connected { .. }), "{event:?}");
    client
}

fn with_options(
    filter: &str,
    qos: QoS,
    tune: impl FnOnce(&mut rallymq_codec::SubscriptionOptions),
) -> rallymq_codec::Subscription {
    let mut subscription = subscription(filter, qos);
    tune(&mut subscription.options);
    subscription
}

fn retained(topic: &str, payload: &str) -> Publish {
    let mut publish = message(topic, payload, QoS::AtLeastOnce);
    publish.retain = true;
    publish
}

fn text(value: &str) -> MqttString {
    MqttString::new(value).unwrap()
}

fn sub_id(id: u32) -> SubscribeProperties {
    SubscribeProperties {
        subscription_identifier: SubscriptionId::new(id),
        ..Default::default()
    }
}

fn identifiers(publish: &Publish) -> Vec<u32> {
    let mut ids: Vec<u32> = publish
        .properties
        .subscription_identifiers
        .iter()
        .map(|id| id.get())
        .collect();
    ids.sort_unstable();
    ids
}

/// Drives `client` for `within`, sending what it has queued (acknowledgements), and returns
/// the messages that arrived meanwhile.
async fn pump(client: &mut Client, within: Duration) -> Vec<Publish> {
    let mut received = Vec::new();
    while let Some(publish) = client.recv_within(within).await {
        received.push(publish);
    }
    received
}

/// A client over a bare TCP stream, for what the session engine would not send or would
/// hide: raw bytes out, decoded packets in.
struct Raw {
    stream: TcpStream,
    received: BytesMut,
    decoder: Decoder,
}

impl Raw {
    async fn connect(addr: SocketAddr, client_id: &str) -> Self {
        Self::connect_with(addr, connect_packet(V5, client_id)).await
    }

    async fn connect_with(addr: SocketAddr, connect: Connect) -> Self {
        let mut raw = Self {
            stream: TcpStream::connect(addr).await.unwrap(),
            received: BytesMut::new(),
            decoder: Decoder::with_version(V5, Limits::default()),
        };
        raw.send(Packet::from(connect)).await;
        match raw.recv().await {
            Some(Packet::ConnAck(ConnAck {
                reason_code: ReasonCode::Success,
                ..
            })) => raw,
            other => panic!("no CONNACK: {other:?}"),
        }
    }

    async fn send(&mut self, packet: Packet) {
        self.send_bytes(&packet.to_bytes(V5).unwrap()).await;
    }

    async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next packet, or `None` if the connection ends or nothing comes within `WAIT`.
    async fn recv(&mut self) -> Option<Packet> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(packet) = self.decoder.decode(&mut self.received).expect("valid") {
                return Some(packet);
            }
            let mut buf = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(n)) => self.received.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// Whether the server closes the connection within `WAIT`, reading past what it sends.
    async fn closed(&mut self) -> bool {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
                Err(_) => return false,
            }
        }
    }
}

fn pid(id: u16) -> PacketId {
    PacketId::new(id).unwrap()
}

// ------------------------------------------------------------------ 3.1 sessions and wills

#[tokio::test]
async fn mqtt_3_1_2_5_clean_start_0_resumes_the_existing_session() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let connect = persistent_connect(V5, "resumer", 300);
    let mut first = connected(addr, connect.clone()).await;
    first
        .subscribe(vec![subscription("resume/#", QoS::AtLeastOnce)])
        .await;
    first.disconnect(ReasonCode::Success).await;
    let mut publisher = client(addr, "resume-pub").await;
    publisher
        .publish(message("resume/1", "while away", QoS::AtLeastOnce))
        .await;
    let (mut again, present) = connected_present(addr, connect).await;
    assert!(present, "Session Present 1");
    let got = again.recv().await.expect("the message kept in the session");
    assert_eq!(payload_str(&got), "while away");
    // The subscription was resumed with the session.
    publisher
        .publish(message("resume/2", "after", QoS::AtLeastOnce))
        .await;
    assert_eq!(payload_str(&again.recv().await.unwrap()), "after");
    broker.shutdown(SHUTDOWN).await;
}

#[tokio::test]
async fn mqtt_3_1_2_6_clean_start_0_without_a_session_creates_one() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let connect = persistent_connect(V5, "newcomer", 300);
    let (mut first, present) = connected_present(addr, connect.clone()).await;
    assert!(!present, "no session yet");
    first
        .subscribe(vec![subscription("new/#", QoS::AtLeastOnce)])
        .await;
    first.disconnect(ReasonCode::Success).await;
    let (_again, present) = connected_present(addr, connect).await;
    assert!(present, "the session created by the first connection");
    broker.shutdown(SHUTDOWN).await;
}

fn will_connect(client_id: &str, retain: bool, user_properties: Vec<UserProperty>) -> Connect {
    let mut connect = connect_packet(V5, client_id);
    connect.will = Some(Will {
        topic: TopicName::new(format!("wills/{client_id}")).unwrap(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain,
        properties: WillProperties {
            user_properties,
            ..Default::default()
        }
        .into(),
    });
    connect
}

/// A client that sees wills as published: Retain As Published keeps their RETAIN flag.
async fn will_watcher(addr: SocketAddr, client_id: &str) -> Client {
    let mut watcher = client(addr, client_id).await;
    watcher
        .subscribe(vec![with_options("wills/#", QoS::AtLeastOnce, |o| {
            o.retain_as_published = true
        })])
        .await;
    watcher
}

#[tokio::test]
async fn mqtt_3_1_2_14_will_without_retain_is_published_not_retained() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let mut watcher = will_watcher(addr, "watcher").await;
    let mut dies = connected(addr, will_connect("plain", false, vec![])).await;
    dies.kill();
    let will = watcher.recv().await.expect("the will");
    assert_eq!(
        (topic_str(&will), will.retain),
        ("wills/plain".into(), false)
    );
    let mut late = client(addr, "late").await;
    late.subscribe(vec![subscription("wills/#", QoS::AtLeastOnce)])
        .await;
    late.expect_silence(QUIET).await;
    broker.shutdown(SHUTDOWN).await;
}

#[tokio::test]
async fn mqtt_3_1_2_15_will_with_retain_is_published_retained() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let mut watcher = will_watcher(addr, "watcher").await;
    let mut dies = connected(addr, will_connect("kept", true, vec![])).await;
    dies.kill();
    let will = watcher.recv().await.expect("the will");
    assert!(will.retain, "published with RETAIN");
    let mut late = client(addr, "late").await;
    late.subscribe(vec![subscription("wills/#", QoS::AtLeastOnce)])
        .await;
    let stored = late.recv().await.expect("stored as the retained message");
    assert_eq!(
        (topic_str(&stored), payload_str(&stored), stored.retain),
        ("wills/kept".into(), "gone".into(), true)
    );
    broker.shutdown(SHUTDOWN).await;
}

#[tokio::test]
async fn mqtt_3_1_3_2_client_identifier_names_the_session() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let mut a = connected(addr, persistent_connect(V5, "owner-a", 300)).await;
    a.subscribe(vec![subscription("owned/#", QoS::AtLeastOnce)])
        .await;
    a.disconnect(ReasonCode::Success).await;
    let (_b, present) = connected_present(addr, persistent_connect(V5, "owner-b", 300)).await;
    assert!(!present, "another identifier, another session");
    let (_a, present) = connected_present(addr, persistent_connect(V5, "owner-a", 300)).await;
    assert!(present, "the same identifier, the same session");
    broker.shutdown(SHUTDOWN).await;
}

#[tokio::test]
async fn mqtt_3_1_3_5_short_alphanumeric_client_identifiers_are_allowed() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    for id in [
        "a",
        "Z",
        "0",
        "abcdefghijklmnopqrstuvw",
        "0123456789ABCDEFGHIJKLM",
    ] {
        assert_eq!(id.len().clamp(1, 23), id.len());
        let (_client, event) = TestClient::tcp(addr, connect_packet(V5, id)).await;
        assert!(
            matches!(event, ClientEvent::Connected { .. }),
            "{id}: {event:?}"
        );
    }
    broker.shutdown(SHUTDOWN).await;
}

fn assigned_id(event: &ClientEvent) -> String {
    match event {
        ClientEvent::Connected { connack, .. } => connack
            .properties
            .assigned_client_identifier
            .as_ref()
            .expect("an Assigned Client Identifier")
            .to_string(),
        other => panic!("not connected: {other:?}"),
    }
}

#[tokio::test]
async fn mqtt_3_1_3_6_empty_client_identifiers_get_unique_ones() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let (mut first, event) = TestClient::tcp(addr, connect_packet(V5, "")).await;
    let first_id = assigned_id(&event);
    let (_second, event) = TestClient::tcp(addr, connect_packet(V5, "")).await;
    let second_id = assigned_id(&event);
    assert_ne!(first_id, second_id);
    assert!(!first_id.is_empty());
    // Two sessions: the second connection took nothing over.
    first.expect_silence(QUIET).await;
    assert!(first.engine.is_connected());
    assert!(broker.has_session(&first_id) && broker.has_session(&second_id));
    broker.shutdown(SHUTDOWN).await;
}

#[tokio::test]
async fn mqtt_3_1_3_9_reconnecting_within_the_will_delay_sends_no_will() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let mut watcher = will_watcher(addr, "watcher").await;
    let mut connect = will_connect("returns", false, vec![]);
    connect.clean_start = false;
    connect.properties.session_expiry_interval = Some(60);
    if let Some(will) = &mut connect.will {
        will.properties.will_delay_interval = Some(1);
    }
    let mut first = connected(addr, connect.clone()).await;
    first.kill();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_back, present) = connected_present(addr, connect).await;
    assert!(present);
    watcher.expect_silence(Duration::from_millis(1_500)).await;
    broker.shutdown(SHUTDOWN).await;
}

#[tokio::test]
async fn mqtt_3_1_3_10_will_user_properties_keep_their_order() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let mut watcher = will_watcher(addr, "watcher").await;
    let properties = vec![
        UserProperty::new("b", "2").unwrap(),
        UserProperty::new("a", "1").unwrap(),
        UserProperty::new("b", "3").unwrap(),
    ];
    let mut dies = connected(addr, will_connect("ordered", false, properties.clone())).await;
    dies.kill();
    let will = watcher.recv().await.expect("the will");
    assert_eq!(will.properties.user_properties, properties);
    broker.shutdown(SHUTDOWN).await;
}

#[tokio::test]
async fn mqtt_3_1_4_3_the_existing_connection_gets_disconnect_0x8e_and_is_closed() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let mut first = client(addr, "twice").await;
    let mut second = client(addr, "twice").await;
    assert_eq!(
        first.closed().await,
        Some(CloseReason::PeerDisconnected {
            reason_code: ReasonCode::SessionTakenOver,
            properties: Default::default(),
        })
    );
    // The new connection carries on.
    second
        .subscribe(vec![subscription("twice/#", QoS::AtMostOnce)])
        .await;
    assert!(second.engine.is_connected());
    broker.shutdown(SHUTDOWN).await;
}

#[tokio::test]
async fn mqtt_3_1_4_4_clean_start_1_discards_the_session() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let mut connect = persistent_connect(V5, "cleaner", 300);
    let mut first = connected(addr, connect.clone()).await;
    first
        .subscribe(vec![subscription("clean/#", QoS::AtLeastOnce)])
        .await;
    first.disconnect(ReasonCode::Success).await;
    broker
        .publish("clean/1", "queued", QoS::AtLeastOnce, false)
        .unwrap();
    connect.clean_start = true;
    let (mut again, present) = connected_present(addr, connect).await;
    assert!(!present);
    broker
        .publish("clean/2", "after", QoS::AtLeastOnce, false)
        .unwrap();
    again.expect_silence(QUIET).await;
    broker.shutdown(SHUTDOWN).await;
}

#[tokio::test]
async fn mqtt_3_1_2_26_no_topic_alias_above_the_client_topic_alias_maximum() {
    let broker = start_broker(|_| {}).await;
    let mut connect = connect_packet(V5, "two-aliases");
    connect.properties.topic_alias_maximum = Some(2);
    let mut raw = Raw::connect_with(tcp_addr(&broker), connect).await;
    raw.send(raw_subscribe(1, &[("courts/#", QoS::AtMostOnce)]))
        .await;
    assert!(matches!(raw.recv().await, Some(Packet::SubAck(_))));
    // Five topics, some far busier than others: more topics than aliases.
    let topics: Vec<String> = (0..40)
        .map(|i| format!("courts/{}/score", [1, 1, 1, 2, 2, 3, 4, 5][i % 8]))
        .collect();
    for topic in &topics {
        broker
            .publish(topic, "15-0", QoS::AtMostOnce, false)
            .unwrap();
    }
    let mut aliases = std::collections::HashMap::new();
    let mut resolved = Vec::new();
    let mut used = Vec::new();
    while resolved.len() < topics.len() {
        let Some(Packet::Publish(publish)) = raw.recv().await else {
            panic!("after {} messages", resolved.len())
        };
        let alias = publish.properties.topic_alias.map(|a| a.get());
        let topic = match (&publish.topic, alias) {
            (Some(topic), Some(alias)) => {
                aliases.insert(alias, topic.as_str().to_owned());
                topic.as_str().to_owned()
            }
            (Some(topic), None) => topic.as_str().to_owned(),
            (None, Some(alias)) => aliases[&alias].clone(),
            (None, None) => panic!("no topic and no alias"),
        };
        used.extend(alias);
        resolved.push(topic);
    }
    assert_eq!(resolved, topics);
    assert!(!used.is_empty(), "aliases are used");
    assert!(used.iter().all(|a| (1..=2).contains(a)), "{used:?}");
    broker.shutdown(SHUTDOWN).await;
}

// ------------------------------------------------------------------ 3.3 PUBLISH: retained messages

#[tokio::test]
async fn mqtt_3_3_1_3_dup_of_a_forwarded_message_is_set_apart_from_the_incoming_one() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let mut sub = client(addr, "dup-sub").await;
    sub.subscribe(vec![subscription("dup/#", QoS::AtLeastOnce)])
        .await;
    let mut raw = Raw::connect(addr, "dup-pub").await;
    let mut resent = message("dup/x", "again", QoS::AtLeastOnce);
    resent.packet_id = Some(pid(1));
    resent.dup = true;
    raw.send(Packet::Publish(resent)).await;
    assert!(matches!(raw.recv().await, Some(Packet::PubAck(_))));
    let got = sub.recv().await.expect("forwarded");
    assert!(!got.dup, "the copy sent on is a first attempt");
    broker.shutdown(SHUTDOWN).await;
}

#[tokio::test]
async fn mqtt_3_3_1_5_retained_message_is_stored_and_replaced() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let mut publisher = client(addr, "ret-pub").await;
    publisher.publish(retained("ret/t", "first")).await;
    publisher.publish(retained("ret/t", "second")).await;
    let mut sub = client(addr, "ret-sub").await;
    sub.subscribe(vec![subscription("ret/t", QoS::AtLeastOnce)])
        .await;
    let got = sub.recv().await.expect("the retained message");
    assert_eq!((payload_str(&got), got.retain), ("second".into(), true));
    sub.expect_silence(QUIET).await;
    broker.shutdown(SHUTDOWN).await;
}

#[tokio::test]
async fn mqtt_3_3_1_6_empty_retained_payload_removes_the_retained_message() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let mut publisher = client(addr, "clear-pub").await;
    let mut live = client(addr, "clear-live").await;
    live.subscribe(vec![subscription("clear/t", QoS::AtLeastOnce)])
        .await;
    publisher.publish(retained("clear/t", "kept")).await;
    assert_eq!(payload_str(&live.recv().await.unwrap()), "kept");
    publisher.publish(retained("clear/t", "")).await;
    // Processed normally: a subscriber gets the empty message...
    assert_eq!(live.recv().await.expect("delivered").payload.len(), 0);
    // ...and no later subscriber gets a retained one.
    let mut later = client(addr, "clear-later").await;
    later
        .subscribe(vec![subscription("clear/t", QoS::AtLeastOnce)])
        .await;
    later.expect_silence(QUIET).await;
    broker.shutdown(SHUTDOWN).await;
}

#[tokio::test]
async fn mqtt_3_3_1_7_empty_retained_payload_is_not_stored() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let mut publisher = client(addr, "empty-pub").await;
    publisher.publish(retained("empty/t", "")).await;
    let mut later = client(addr, "empty-later").await;
    later
        .subscribe(vec![subscription("empty/#", QoS::AtLeastOnce)])
        .await;
    later.expect_silence(QUIET).await;
    broker.shutdown(SHUTDOWN).await;
}

#[tokio::test]
async fn mqtt_3_3_1_8_retain_0_neither_stores_nor_replaces() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let mut publisher = client(addr, "r0-pub").await;
    publisher.publish(retained("r0/kept", "retained")).await;
    publisher
        .publish(message("r0/kept", "not retained", QoS::AtLeastOnce))
        .await;
    publisher
        .publish(message("r0/new", "not retained", QoS::AtLeastOnce))
        .await;
    let mut later = client(addr, "r0-later").await;
    later
        .subscribe(vec![subscription("r0/#", QoS::AtLeastOnce)])
        .await;
    let got = pump(&mut later, QUIET).await;
    let got: Vec<(String, String)> = got.iter().map(|p| (topic_str(p), payload_str(p))).collect();
    assert_eq!(got, [("r0/kept".to_owned(), "retained".to_owned())]);
    broker.shutdown(SHUTDOWN).await;
}

/// A broker with a retained message on `topic`, and a client to subscribe with.
async fn with_retained(topic: &str) -> (rallymq_broker::BrokerHandle, Client) {
    let broker = start_broker(|_| {}).await;
    broker
        .publish(topic, "kept", QoS::AtLeastOnce, true)
        .unwrap();
    let subscriber = client(tcp_addr(&broker), "rh").await;
    (broker, subscriber)
}

#[tokio::test]
async fn mqtt_3_3_1_10_retain_handling_1_sends_retained_messages_to_a_new_subscription_only() {
    let (broker, mut sub) = with_retained("rh1/t").await;
    let rh1 = |qos| {
        with_options("rh1/#", qos, |o| {
            o.retain_handling = RetainHandling::SendAtSubscribeIfNew
        })
    };
    sub.subscribe(vec![rh1(QoS::AtLeastOnce)]).await;
    assert_eq!(payload_str(&sub.recv().await.expect("new: sent")), "kept");
    sub.subscribe(vec![rh1(QoS::AtMostOnce)]).await;
    sub.expect_silence(QUIET).await; // it existed: not sent
    broker.shutdown(SHUTDOWN).await;
}

#[tokio::test]
async fn mqtt_3_3_1_11_retain_handling_2_sends_no_retained_messages() {
    let (broker, mut sub) = with_retained("rh2/t").await;
    sub.subscribe(vec![with_options("rh2/#", QoS::AtLeastOnce, |o| {
        o.retain_handling = RetainHandling::DoNotSend
    })])
    .await;
    sub.expect_silence(QUIET).await;
    // The subscription works: live messages come.
    broker
        .publish("rh2/t", "live", QoS::AtLeastOnce, false)
        .unwrap();
    assert_eq!(payload_str(&sub.recv().await.unwrap()), "live");
    broker.shutdown(SHUTDOWN).await;
}

/// What a subscriber with Retain As Published `rap` sees of a live retained message.
async fn live_retain_flag(rap: bool) -> bool {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let mut sub = client(addr, "rap").await;
    sub.subscribe(vec![with_options("rap/#", QoS::AtLeastOnce, |o| {
        o.retain_as_published = rap
    })])
    .await;
    let mut publisher = client(addr, "rap-pub").await;
    publisher.publish(retained("rap/t", "live")).await;
    let got = sub.recv().await.expect("delivered");
    broker.shutdown(SHUTDOWN).await;
    got.retain
}

#[tokio::test]
async fn mqtt_3_3_1_12_retain_as_published_0_forwards_with_retain_0() {
    assert!(!live_retain_flag(false).await);
}

#[tokio::test]
async fn mqtt_3_3_1_13_retain_as_published_1_forwards_the_retain_flag_as_received() {
    assert!(live_retain_flag(true).await);
    // And a message published without RETAIN stays without it.
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let mut sub = client(addr, "rap1").await;
    sub.subscribe(vec![with_options("rap/#", QoS::AtLeastOnce, |o| {
        o.retain_as_published = true
    })])
    .await;
    broker
        .publish("rap/t", "plain", QoS::AtLeastOnce, false)
        .unwrap();
    assert!(!sub.recv().await.unwrap().retain);
    broker.shutdown(SHUTDOWN).await;
}

// ------------------------------------------------------------------ 3.3 PUBLISH: routing

#[tokio::test]
async fn mqtt_3_3_2_3_topic_name_sent_matches_the_subscription_filter() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let mut sub = client(addr, "match").await;
    sub.subscribe(vec![subscription("m/+/x", QoS::AtLeastOnce)])
        .await;
    for topic in ["m/a/x", "m/b/y", "n/a/x", "m/a/x/z", "m//x"] {
        broker
            .publish(topic, topic, QoS::AtLeastOnce, false)
            .unwrap();
    }
    let topics: Vec<String> = pump(&mut sub, QUIET).await.iter().map(topic_str).collect();
    assert_eq!(topics, ["m/a/x", "m//x"]);
    let filter = TopicFilter::new("m/+/x").unwrap();
    for topic in &topics {
        assert!(filter.matches(&TopicName::new(topic).unwrap()), "{topic}");
    }
    broker.shutdown(SHUTDOWN).await;
}

/// What a subscriber receives of a message published with `properties`.
async fn forwarded(properties: rallymq_codec::PublishProperties) -> Publish {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let mut sub = client(addr, "props-sub").await;
    sub.subscribe(vec![subscription("props/#", QoS::AtLeastOnce)])
        .await;
    let mut publisher = client(addr, "props-pub").await;
    let mut publish = message("props/t", "payload", QoS::AtLeastOnce);
    publish.properties = properties.into();
    publisher.publish(publish).await;
    let got = sub.recv().await.expect("forwarded");
    broker.shutdown(SHUTDOWN).await;
    got
}

#[tokio::test]
async fn mqtt_3_3_2_4_payload_format_indicator_forwarded_unaltered() {
    for format in [PayloadFormat::Utf8, PayloadFormat::Bytes] {
        let got = forwarded(rallymq_codec::PublishProperties {
            payload_format_indicator: Some(format),
            ..Default::default()
        })
        .await;
        assert_eq!(got.properties.payload_format_indicator, Some(format));
    }
}

#[tokio::test]
async fn mqtt_3_3_2_15_response_topic_forwarded_unaltered() {
    let topic = TopicName::new("replies/for/me").unwrap();
    let got = forwarded(rallymq_codec::PublishProperties {
        response_topic: Some(topic.clone()),
        ..Default::default()
    })
    .await;
    assert_eq!(got.properties.response_topic, Some(topic));
}

#[tokio::test]
async fn mqtt_3_3_2_16_correlation_data_forwarded_unaltered() {
    let data = Bytes::from_static(&[0, 1, 0xFE, 0xFF, b'c']);
    let got = forwarded(rallymq_codec::PublishProperties {
        correlation_data: Some(data.clone()),
        ..Default::default()
    })
    .await;
    assert_eq!(got.properties.correlation_data, Some(data));
}

#[tokio::test]
async fn mqtt_3_3_2_17_user_properties_forwarded_unaltered() {
    let properties = vec![
        UserProperty::new("name", "value").unwrap(),
        UserProperty::new("name", "value").unwrap(),
        UserProperty::new("", "").unwrap(),
        UserProperty::new("ünïcode", "✓").unwrap(),
    ];
    let got = forwarded(rallymq_codec::PublishProperties {
        user_properties: properties.clone(),
        ..Default::default()
    })
    .await;
    assert_eq!(got.properties.user_properties, properties);
}

#[tokio::test]
async fn mqtt_3_3_2_18_user_property_order_is_kept() {
    let properties: Vec<UserProperty> = ["z", "a", "m", "a", "b"]
        .iter()
        .enumerate()
        .map(|(i, name)| UserProperty::new(*name, i.to_string()).unwrap())
        .collect();
    let got = forwarded(rallymq_codec::PublishProperties {
        user_properties: properties.clone(),
        ..Default::default()
    })
    .await;
    let order: Vec<(String, String)> = got
        .properties
        .user_properties
        .iter()
        .map(|p| (p.name.to_string(), p.value.to_string()))
        .collect();
    let expected: Vec<(String, String)> = properties
        .iter()
        .map(|p| (p.name.to_string(), p.value.to_string()))
        .collect();
    assert_eq!(order, expected);
}

#[tokio::test]
async fn mqtt_3_3_2_20_content_type_forwarded_unaltered() {
    let got = forwarded(rallymq_codec::PublishProperties {
        content_type: Some(text("application/json; charset=utf-8")),
        ..Default::default()
    })
    .await;
    assert_eq!(
        got.properties.content_type,
        Some(text("application/json; charset=utf-8"))
    );
}

#[tokio::test]
async fn mqtt_3_3_4_2_overlapping_subscriptions_deliver_at_their_highest_qos() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let mut sub = client(addr, "overlap").await;
    sub.subscribe(vec![
        subscription("o/#", QoS::AtMostOnce),
        subscription("o/+", QoS::ExactlyOnce),
        subscription("o/x", QoS::AtLeastOnce),
    ])
    .await;
    broker.publish("o/x", "m", QoS::ExactlyOnce, false).unwrap();
    let got = pump(&mut sub, QUIET).await;
    let qos: Vec<QoS> = got.iter().map(|p| p.qos).collect();
    assert_eq!(
        qos,
        [QoS::ExactlyOnce],
        "one copy, at the highest granted QoS"
    );
    broker.shutdown(SHUTDOWN).await;
}

#[tokio::test]
async fn mqtt_3_3_4_4_one_copy_carries_every_matching_subscription_identifier() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let mut sub = client(addr, "ids").await;
    sub.subscribe_with(vec![subscription("ids/#", QoS::AtLeastOnce)], sub_id(7))
        .await;
    sub.subscribe_with(vec![subscription("ids/+/x", QoS::AtLeastOnce)], sub_id(300))
        .await;
    sub.subscribe(vec![subscription("ids/a/+", QoS::AtLeastOnce)])
        .await;
    broker
        .publish("ids/a/x", "all", QoS::AtLeastOnce, false)
        .unwrap();
    broker
        .publish("ids/b/y", "one", QoS::AtLeastOnce, false)
        .unwrap();
    let got = pump(&mut sub, QUIET).await;
    let seen: Vec<(String, Vec<u32>)> = got
        .iter()
        .map(|p| (payload_str(p), identifiers(p)))
        .collect();
    assert_eq!(
        seen,
        [
            ("all".to_owned(), vec![7, 300]),
            ("one".to_owned(), vec![7])
        ]
    );
    broker.shutdown(SHUTDOWN).await;
}

#[tokio::test]
async fn mqtt_3_3_4_5_each_copy_carries_the_identifier_of_its_subscription() {
    // A shared and a non-shared subscription of one client: two copies.
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let mut sub = client(addr, "copies").await;
    sub.subscribe_with(vec![subscription("c/#", QoS::AtLeastOnce)], sub_id(1))
        .await;
    sub.subscribe_with(
        vec![subscription("$share/g/c/#", QoS::AtLeastOnce)],
        sub_id(2),
    )
    .await;
    broker.publish("c/x", "m", QoS::AtLeastOnce, false).unwrap();
    let mut ids: Vec<Vec<u32>> = pump(&mut sub, QUIET)
        .await
        .iter()
        .map(identifiers)
        .collect();
    ids.sort();
    assert_eq!(ids, [vec![1], vec![2]]);
    broker.shutdown(SHUTDOWN).await;
}

// ------------------------------------------------------------------ 3.8 - 3.11 SUBSCRIBE, UNSUBSCRIBE

fn raw_subscribe(id: u16, filters: &[(&str, QoS)]) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: pid(id),
        properties: Default::default(),
        subscriptions: filters
            .iter()
            .map(|(f, qos)| rallymq_codec::Subscription::new(TopicFilter::new(*f).unwrap(), *qos))
            .collect(),
    })
}

fn raw_unsubscribe(id: u16, filters: &[&str]) -> Packet {
    Packet::Unsubscribe(Unsubscribe {
        packet_id: pid(id),
        properties: Default::default(),
        filters: filters
            .iter()
            .map(|f| TopicFilter::new(*f).unwrap())
            .collect(),
    })
}

#[tokio::test]
async fn mqtt_3_8_4_1_subscribe_is_answered_with_suback() {
    let broker = start_broker(|_| {}).await;
    let mut raw = Raw::connect(tcp_addr(&broker), "suback").await;
    raw.send(raw_subscribe(1, &[("a/#", QoS::AtLeastOnce)]))
        .await;
    assert!(matches!(raw.recv().await, Some(Packet::SubAck(_))));
    broker.shutdown(SHUTDOWN).await;
}

#[tokio::test]
async fn mqtt_3_8_4_2_suback_has_the_subscribe_packet_identifier() {
    let broker = start_broker(|_| {}).await;
    let mut raw = Raw::connect(tcp_addr(&broker), "suback-id").await;
    for id in [0x1234u16, 1, 0xFFFF] {
        raw.send(raw_subscribe(id, &[("a/#", QoS::AtMostOnce)]))
            .await;
        match raw.recv().await {
            Some(Packet::SubAck(suback)) => assert_eq!(suback.packet_id, pid(id)),
            other => panic!("{other:?}"),
        }
    }
    broker.shutdown(SHUTDOWN).await;
}

#[tokio::test]
async fn mqtt_3_8_4_3_an_identical_filter_replaces_the_subscription() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let mut sub = client(addr, "replace").await;
    sub.subscribe(vec![subscription("r/#", QoS::AtMostOnce)])
        .await;
    sub.subscribe(vec![subscription("r/#", QoS::ExactlyOnce)])
        .await;
    broker.publish("r/x", "m", QoS::ExactlyOnce, false).unwrap();
    let qos: Vec<QoS> = pump(&mut sub, QUIET).await.iter().map(|p| p.qos).collect();
    assert_eq!(qos, [QoS::ExactlyOnce], "one subscription, the new one");
    broker.shutdown(SHUTDOWN).await;
}

#[tokio::test]
async fn mqtt_3_8_4_4_replacing_a_subscription_resends_retained_and_loses_nothing() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    broker
        .publish("rr/t", "kept", QoS::AtLeastOnce, true)
        .unwrap();
    let mut sub = client(addr, "rr").await;
    sub.subscribe(vec![subscription("rr/#", QoS::AtLeastOnce)])
        .await;
    assert_eq!(payload_str(&sub.recv().await.unwrap()), "kept");
    let mut publisher = client(addr, "rr-pub").await;
    // Messages flow while the subscription is replaced.
    let flow = tokio::spawn(async move {
        for i in 0..50 {
            publisher
                .publish(message("rr/live", &i.to_string(), QoS::AtLeastOnce))
                .await;
        }
        publisher
    });
    sub.subscribe(vec![subscription("rr/#", QoS::AtLeastOnce)])
        .await;
    let _publisher = flow.await.unwrap();
    let got = pump(&mut sub, QUIET).await;
    let live: Vec<String> = got
        .iter()
        .filter(|p| topic_str(p) == "rr/live")
        .map(payload_str)
        .collect();
    assert_eq!(live, (0..50).map(|i| i.to_string()).collect::<Vec<_>>());
    let resent = got.iter().filter(|p| topic_str(p) == "rr/t").count();
    assert_eq!(resent, 1, "the retained message again");
    broker.shutdown(SHUTDOWN).await;
}

#[tokio::test]
async fn mqtt_3_8_4_5_several_filters_are_handled_as_several_subscribes() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    broker
        .publish("multi/r", "kept", QoS::AtLeastOnce, true)
        .unwrap();
    let mut sub = client(addr, "multi").await;
    let codes = sub
        .subscribe(vec![
            subscription("multi/a", QoS::AtMostOnce),
            subscription("multi/r", QoS::AtLeastOnce),
            subscription("multi/a", QoS::ExactlyOnce),
        ])
        .await;
    assert_eq!(
        codes,
        [
            ReasonCode::Success,
            ReasonCode::GrantedQoS1,
            ReasonCode::GrantedQoS2
        ],
        "one SUBACK for all"
    );
    assert_eq!(payload_str(&sub.recv().await.unwrap()), "kept");
    broker
        .publish("multi/a", "m", QoS::ExactlyOnce, false)
        .unwrap();
    let qos: Vec<QoS> = pump(&mut sub, QUIET).await.iter().map(|p| p.qos).collect();
    assert_eq!(
        qos,
        [QoS::ExactlyOnce],
        "the later filter replaced the earlier"
    );
    broker.shutdown(SHUTDOWN).await;
}

/// The SUBACK codes of one SUBSCRIBE of `filters` at their QoS.
async fn suback_codes(filters: &[(&str, QoS)]) -> Vec<ReasonCode> {
    let broker = start_broker(|_| {}).await;
    let mut sub = client(tcp_addr(&broker), "granted").await;
    let codes = sub
        .subscribe(
            filters
                .iter()
                .map(|(f, qos)| subscription(f, *qos))
                .collect(),
        )
        .await;
    broker.shutdown(SHUTDOWN).await;
    codes
}

#[tokio::test]
async fn mqtt_3_8_4_7_suback_codes_give_the_granted_qos() {
    let codes = suback_codes(&[
        ("g/0", QoS::AtMostOnce),
        ("g/1", QoS::AtLeastOnce),
        ("g/2", QoS::ExactlyOnce),
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
}

#[tokio::test]
async fn mqtt_3_8_4_8_delivery_qos_is_the_lower_of_published_and_granted() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let mut sub = client(addr, "lower").await;
    sub.subscribe(vec![subscription("low/1", QoS::AtLeastOnce)])
        .await;
    let mut publisher = client(addr, "lower-pub").await;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        publisher.publish(message("low/1", "m", qos)).await;
        let got = sub.recv().await.expect("delivered");
        assert_eq!(got.qos, qos.min(QoS::AtLeastOnce), "published at {qos:?}");
    }
    broker.shutdown(SHUTDOWN).await;
}

#[tokio::test]
async fn mqtt_3_9_3_1_suback_codes_follow_the_filter_order() {
    let codes = suback_codes(&[
        ("o/2", QoS::ExactlyOnce),
        ("o/0", QoS::AtMostOnce),
        ("o/1", QoS::AtLeastOnce),
        ("o/2b", QoS::ExactlyOnce),
    ])
    .await;
    assert_eq!(
        codes,
        [
            ReasonCode::GrantedQoS2,
            ReasonCode::Success,
            ReasonCode::GrantedQoS1,
            ReasonCode::GrantedQoS2
        ]
    );
}

#[tokio::test]
async fn mqtt_3_10_4_1_unsubscribe_compares_filters_character_by_character() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let mut sub = client(addr, "exact").await;
    sub.subscribe(vec![subscription("e/+", QoS::AtLeastOnce)])
        .await;
    // A filter that matches the same topics, or a topic the filter matches, is not the filter.
    for other in ["e/x", "e/#", "e/+/"] {
        assert_eq!(
            sub.unsubscribe(other).await,
            [ReasonCode::NoSubscriptionExisted],
            "{other}"
        );
    }
    broker
        .publish("e/x", "still", QoS::AtLeastOnce, false)
        .unwrap();
    assert_eq!(payload_str(&sub.recv().await.unwrap()), "still");
    assert_eq!(sub.unsubscribe("e/+").await, [ReasonCode::Success]);
    broker
        .publish("e/x", "gone", QoS::AtLeastOnce, false)
        .unwrap();
    sub.expect_silence(QUIET).await;
    broker.shutdown(SHUTDOWN).await;
}

#[tokio::test]
async fn mqtt_3_10_4_2_unsubscribe_stops_new_messages() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let mut sub = client(addr, "stop").await;
    sub.subscribe(vec![subscription("stop/#", QoS::AtLeastOnce)])
        .await;
    let mut publisher = client(addr, "stop-pub").await;
    publisher
        .publish(message("stop/1", "before", QoS::AtLeastOnce))
        .await;
    assert_eq!(payload_str(&sub.recv().await.unwrap()), "before");
    sub.unsubscribe("stop/#").await;
    publisher
        .publish(message("stop/2", "after", QoS::AtLeastOnce))
        .await;
    sub.expect_silence(QUIET).await;
    broker.shutdown(SHUTDOWN).await;
}

#[tokio::test]
async fn mqtt_3_10_4_4_unsubscribe_is_answered_with_unsuback() {
    let broker = start_broker(|_| {}).await;
    let mut raw = Raw::connect(tcp_addr(&broker), "unsuback").await;
    raw.send(raw_unsubscribe(1, &["never/subscribed"])).await;
    assert!(matches!(raw.recv().await, Some(Packet::UnsubAck(_))));
    broker.shutdown(SHUTDOWN).await;
}

#[tokio::test]
async fn mqtt_3_10_4_5_unsuback_has_the_unsubscribe_identifier_even_when_nothing_was_removed() {
    let broker = start_broker(|_| {}).await;
    let mut raw = Raw::connect(tcp_addr(&broker), "unsuback-id").await;
    raw.send(raw_subscribe(1, &[("a", QoS::AtMostOnce)])).await;
    assert!(matches!(raw.recv().await, Some(Packet::SubAck(_))));
    for (id, filter, code) in [
        (0x4321u16, "a", ReasonCode::Success),
        (7, "a", ReasonCode::NoSubscriptionExisted),
    ] {
        raw.send(raw_unsubscribe(id, &[filter])).await;
        match raw.recv().await {
            Some(Packet::UnsubAck(unsuback)) => {
                assert_eq!(unsuback.packet_id, pid(id));
                assert_eq!(unsuback.reason_codes, [code]);
            }
            other => panic!("{other:?}"),
        }
    }
    broker.shutdown(SHUTDOWN).await;
}

#[tokio::test]
async fn mqtt_3_10_4_6_several_filters_get_one_unsuback() {
    let broker = start_broker(|_| {}).await;
    let mut raw = Raw::connect(tcp_addr(&broker), "unsub-many").await;
    raw.send(raw_subscribe(
        1,
        &[("a", QoS::AtMostOnce), ("b", QoS::AtMostOnce)],
    ))
    .await;
    assert!(matches!(raw.recv().await, Some(Packet::SubAck(_))));
    raw.send(raw_unsubscribe(2, &["a", "b", "a"])).await;
    match raw.recv().await {
        Some(Packet::UnsubAck(unsuback)) => assert_eq!(
            unsuback.reason_codes,
            [
                ReasonCode::Success,
                ReasonCode::Success,
                ReasonCode::NoSubscriptionExisted
            ],
            "handled in turn: the second \"a\" finds nothing left"
        ),
        other => panic!("{other:?}"),
    }
    raw.send(Packet::PingReq).await;
    assert_eq!(
        raw.recv().await,
        Some(Packet::PingResp),
        "one UNSUBACK only"
    );
    broker.shutdown(SHUTDOWN).await;
}

#[tokio::test]
async fn mqtt_3_11_3_1_unsuback_codes_follow_the_filter_order() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let mut sub = client(addr, "unsub-order").await;
    sub.subscribe(vec![
        subscription("u/1", QoS::AtMostOnce),
        subscription("u/3", QoS::AtMostOnce),
    ])
    .await;
    let filters: Vec<TopicFilter> = ["u/0", "u/1", "u/2", "u/3"]
        .iter()
        .map(|f| TopicFilter::new(*f).unwrap())
        .collect();
    let token = sub.engine.unsubscribe(filters, Default::default()).unwrap();
    let codes = match sub
        .wait_for(|e| matches!(e, ClientEvent::Unsubscribed { token: t, .. } if *t == token))
        .await
    {
        Some(ClientEvent::Unsubscribed { reason_codes, .. }) => reason_codes,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        codes,
        [
            ReasonCode::NoSubscriptionExisted,
            ReasonCode::Success,
            ReasonCode::NoSubscriptionExisted,
            ReasonCode::Success
        ]
    );
    broker.shutdown(SHUTDOWN).await;
}

#[tokio::test]
async fn mqtt_3_14_4_2_server_closes_the_connection_after_its_disconnect() {
    let broker = start_broker(|_| {}).await;
    let mut raw = Raw::connect(tcp_addr(&broker), "violator").await;
    // A CONNACK from a client: a protocol error.
    raw.send_bytes(&[0x20, 0x03, 0x00, 0x00, 0x00]).await;
    match raw.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, ReasonCode::ProtocolError),
        other => panic!("{other:?}"),
    }
    assert!(raw.closed().await, "the server closed the connection");
    broker.shutdown(SHUTDOWN).await;
}

// ------------------------------------------------------------------ 4.1 - 4.6 sessions, receipt, order

#[tokio::test]
async fn mqtt_4_1_0_2_session_discarded_once_its_expiry_has_passed() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let connect = persistent_connect(V5, "short-lived", 1);
    let mut first = connected(addr, connect.clone()).await;
    first
        .subscribe(vec![subscription("short/#", QoS::AtLeastOnce)])
        .await;
    first.disconnect(ReasonCode::Success).await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let (mut again, present) = connected_present(addr, connect).await;
    assert!(!present, "expired after 1 s");
    broker
        .publish("short/x", "m", QoS::AtLeastOnce, false)
        .unwrap();
    again.expect_silence(QUIET).await;
    broker.shutdown(SHUTDOWN).await;
}

#[tokio::test]
async fn mqtt_4_5_0_1_a_message_is_added_to_the_state_of_each_matching_session() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let online_connect = connect_packet(V5, "online");
    let offline_connect = persistent_connect(V5, "offline", 300);
    let mut online = connected(addr, online_connect).await;
    online
        .subscribe(vec![subscription("own/#", QoS::AtLeastOnce)])
        .await;
    let mut offline = connected(addr, offline_connect.clone()).await;
    offline
        .subscribe(vec![subscription("own/+", QoS::ExactlyOnce)])
        .await;
    offline.disconnect(ReasonCode::Success).await;
    let mut publisher = client(addr, "owner").await;
    assert_eq!(
        publisher
            .publish(message("own/x", "taken", QoS::ExactlyOnce))
            .await,
        ReasonCode::Success
    );
    assert_eq!(payload_str(&online.recv().await.unwrap()), "taken");
    let (mut back, present) = connected_present(addr, offline_connect).await;
    assert!(present);
    let got = back.recv().await.expect("kept for the offline session");
    assert_eq!(
        (payload_str(&got), got.qos),
        ("taken".into(), QoS::ExactlyOnce)
    );
    broker.shutdown(SHUTDOWN).await;
}

#[tokio::test]
async fn mqtt_4_6_0_5_messages_from_one_client_arrive_in_their_order() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let mut sub = client(addr, "ordered-sub").await;
    sub.subscribe(vec![subscription("ord/t", QoS::ExactlyOnce)])
        .await;
    let mut publisher = client(addr, "ordered-pub").await;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        for i in 0..30 {
            // Handed to the engine without waiting: many in flight at once.
            let payload = format!("{qos:?}-{i}");
            publisher
                .engine
                .publish(Timestamp::ZERO, message("ord/t", &payload, qos))
                .unwrap();
        }
    }
    // Drives the publisher: its messages go, their acknowledgements come back.
    publisher
        .wait_for_within(Duration::from_millis(500), |_| false)
        .await;
    let got: Vec<String> = pump(&mut sub, Duration::from_millis(500))
        .await
        .iter()
        .map(payload_str)
        .collect();
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let prefix = format!("{qos:?}-");
        let of_qos: Vec<&String> = got.iter().filter(|p| p.starts_with(&prefix)).collect();
        let expected: Vec<String> = (0..30).map(|i| format!("{prefix}{i}")).collect();
        assert_eq!(of_qos, expected.iter().collect::<Vec<_>>(), "{qos:?}");
    }
    broker.shutdown(SHUTDOWN).await;
}

#[tokio::test]
async fn mqtt_4_6_0_6_every_topic_is_ordered() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let mut sub = client(addr, "any-order-sub").await;
    sub.subscribe(vec![subscription("any/#", QoS::AtLeastOnce)])
        .await;
    let mut publisher = client(addr, "any-order-pub").await;
    let topics = ["any/a", "any/b/c", "any/d", "any/a"];
    for round in 0..10 {
        for topic in topics {
            publisher
                .publish(message(topic, &format!("{round}{topic}"), QoS::AtLeastOnce))
                .await;
        }
    }
    let got: Vec<String> = pump(&mut sub, QUIET)
        .await
        .iter()
        .map(payload_str)
        .collect();
    let expected: Vec<String> = (0..10)
        .flat_map(|round| topics.iter().map(move |t| format!("{round}{t}")))
        .collect();
    assert_eq!(got, expected);
    broker.shutdown(SHUTDOWN).await;
}

// ------------------------------------------------------------------ 4.8 shared subscriptions

#[tokio::test]
async fn mqtt_4_8_2_3_shared_subscription_delivers_at_its_granted_qos() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let mut member = client(addr, "shared-q").await;
    member
        .subscribe(vec![subscription("$share/q/sq/#", QoS::AtLeastOnce)])
        .await;
    for qos in [QoS::ExactlyOnce, QoS::AtMostOnce] {
        broker.publish("sq/x", "m", qos, false).unwrap();
        let got = member.recv().await.expect("delivered");
        assert_eq!(got.qos, qos.min(QoS::AtLeastOnce));
    }
    broker.shutdown(SHUTDOWN).await;
}

/// The held message of a client with manual acknowledgements.
async fn held(client: &mut Client) -> (Publish, rallymq_session::AckHandle) {
    match client
        .wait_for(|e| matches!(e, ClientEvent::Message(_)))
        .await
    {
        Some(ClientEvent::Message(message)) => {
            let handle = message.ack.expect("held for acknowledgement");
            (message.publish, handle)
        }
        other => panic!("no message: {other:?}"),
    }
}

#[tokio::test]
async fn mqtt_4_8_2_4_shared_qos_2_delivery_completes_when_the_member_reconnects() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let connect = persistent_connect(V5, "member-q2", 300);
    let mut member = manual_client(addr, connect.clone()).await;
    member
        .subscribe(vec![subscription("$share/q2/job", QoS::ExactlyOnce)])
        .await;
    broker
        .publish("job", "exactly once", QoS::ExactlyOnce, false)
        .unwrap();
    let (first, _) = held(&mut member).await;
    assert_eq!(first.qos, QoS::ExactlyOnce);
    member.kill(); // before PUBREC
    let mut back = connected(addr, connect).await;
    let again = back.recv().await.expect("resent on reconnect");
    assert_eq!(
        (payload_str(&again), again.dup),
        ("exactly once".into(), true)
    );
    back.expect_silence(QUIET).await;
    broker.shutdown(SHUTDOWN).await;
}

#[tokio::test]
async fn mqtt_4_8_2_5_shared_message_of_an_ended_session_goes_to_no_other_member() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    // Session Expiry 0: the session ends with the connection.
    let mut first = manual_client(addr, connect_packet(V5, "member-1")).await;
    let mut second = manual_client(addr, connect_packet(V5, "member-2")).await;
    for member in [&mut first, &mut second] {
        member
            .subscribe(vec![subscription("$share/q5/job", QoS::ExactlyOnce)])
            .await;
    }
    broker
        .publish("job", "one", QoS::ExactlyOnce, false)
        .unwrap();
    let (mut taker, mut other) = tokio::select! {
        _ = held(&mut first) => (first, second),
        _ = held(&mut second) => (second, first),
    };
    taker.kill();
    other.expect_silence(Duration::from_millis(500)).await;
    broker.shutdown(SHUTDOWN).await;
}

#[tokio::test]
async fn mqtt_4_8_2_6_refused_shared_message_goes_to_no_other_member() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let mut first = manual_client(addr, connect_packet(V5, "refuser-1")).await;
    let mut second = manual_client(addr, connect_packet(V5, "refuser-2")).await;
    for member in [&mut first, &mut second] {
        member
            .subscribe(vec![subscription("$share/q6/job", QoS::AtLeastOnce)])
            .await;
    }
    broker
        .publish("job", "refused", QoS::AtLeastOnce, false)
        .unwrap();
    let ((_, handle), mut taker, mut other) = tokio::select! {
        held = held(&mut first) => (held, first, second),
        held = held(&mut second) => (held, second, first),
    };
    taker
        .engine
        .acknowledge(handle, ReasonCode::ImplementationSpecificError);
    taker.expect_silence(QUIET).await; // sends the PUBACK
    other.expect_silence(Duration::from_millis(500)).await;
    taker.expect_silence(QUIET).await;
    assert!(taker.engine.is_connected());
    broker.shutdown(SHUTDOWN).await;
}

// ------------------------------------------------------------------ 4.12 authentication

#[tokio::test]
async fn mqtt_4_12_0_1_unsupported_authentication_method_is_refused_and_closed() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    let mut connect = connect_packet(V5, "scram");
    connect.properties.authentication_method = Some(text("SCRAM-SHA-256"));
    let mut raw = TcpStream::connect(addr).await.unwrap();
    raw.write_all(&Packet::from(connect).to_bytes(V5).unwrap())
        .await
        .unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(WAIT, raw.read_to_end(&mut reply))
        .await
        .expect("closed in time")
        .unwrap();
    let mut buf = BytesMut::from(&reply[..]);
    let packet = Decoder::with_version(V5, Limits::default())
        .decode(&mut buf)
        .unwrap();
    assert!(
        matches!(
            packet,
            Some(Packet::ConnAck(ConnAck { reason_code, .. }))
                if matches!(reason_code, ReasonCode::BadAuthenticationMethod | ReasonCode::NotAuthorized)
        ),
        "{packet:?}"
    );
    assert!(buf.is_empty(), "nothing after the CONNACK");
    broker.shutdown(SHUTDOWN).await;
}

// ------------------------------------------------------------------ 6 WebSocket

mod websocket {
    use rallymq_websocket::tokio::{ByteStream, connect};
    use rallymq_websocket::{ClientRequest, Config, Event};

    use super::*;

    async fn upgrade(
        addr: SocketAddr,
        offered: &[&str],
    ) -> (
        rallymq_websocket::tokio::WebSocketStream<TcpStream>,
        Option<String>,
    ) {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let request = ClientRequest::new(&addr.to_string(), "/mqtt")
            .unwrap()
            .with_subprotocols(offered)
            .unwrap();
        let (ws, response) = connect(tcp, &request, Config::default())
            .await
            .expect("upgrade");
        (ws, response.subprotocol().map(str::to_owned))
    }

    fn connect_bytes(client_id: &str) -> Vec<u8> {
        Packet::from(connect_packet(V5, client_id))
            .to_bytes(V5)
            .unwrap()
            .to_vec()
    }

    /// The bytes of the binary messages `ws` receives within `WAIT`, until `len` have come or
    /// the connection ends.
    async fn receive(
        ws: &mut rallymq_websocket::tokio::WebSocketStream<TcpStream>,
        len: usize,
    ) -> (Vec<u8>, bool) {
        let mut received = Vec::new();
        while received.len() < len {
            match tokio::time::timeout(WAIT, ws.recv()).await {
                Ok(Some(Ok(Event::Binary(data) | Event::BinaryChunk { data, .. }))) => {
                    received.extend_from_slice(&data)
                }
                Ok(Some(Ok(Event::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => {
                    return (received, true);
                }
                Ok(Some(Ok(_))) => {}
                Err(_) => return (received, false),
            }
        }
        (received, false)
    }

    #[tokio::test]
    async fn mqtt_6_0_0_1_a_text_frame_closes_the_connection() {
        let broker = start_broker(|_| {}).await;
        let addr = broker.local_addr(ListenerKind::WebSocket).unwrap();
        let (mut ws, _) = upgrade(addr, &["mqtt"]).await;
        ws.send_binary(&connect_bytes("texter")).await.unwrap();
        let (connack, _) = receive(&mut ws, 5).await;
        assert_eq!(connack[0], 0x20, "connected");
        ws.send_text("CONNECT").await.unwrap();
        let (_, closed) = receive(&mut ws, usize::MAX).await;
        assert!(closed, "the server closed the connection");
        broker.shutdown(SHUTDOWN).await;
    }

    #[tokio::test]
    async fn mqtt_6_0_0_2_packets_need_not_align_with_frames() {
        let broker = start_broker(|_| {}).await;
        let addr = broker.local_addr(ListenerKind::WebSocket).unwrap();
        let (mut ws, _) = upgrade(addr, &["mqtt"]).await;
        let connect = connect_bytes("frames-5");
        // CONNECT in three frames, then the end of a SUBSCRIBE with a PINGREQ and the start
        // of another PINGREQ in one frame.
        ws.send_binary(&connect[..2]).await.unwrap();
        ws.send_binary(&connect[2..9]).await.unwrap();
        ws.send_binary(&connect[9..]).await.unwrap();
        let subscribe = raw_subscribe(3, &[("f/#", QoS::AtMostOnce)])
            .to_bytes(V5)
            .unwrap();
        ws.send_binary(&subscribe[..4]).await.unwrap();
        let mut tail = subscribe[4..].to_vec();
        tail.extend_from_slice(&[0xC0, 0x00, 0xC0]);
        ws.send_binary(&tail).await.unwrap();
        ws.send_binary(&[0x00]).await.unwrap();
        let mut received = BytesMut::new();
        let mut decoder = Decoder::with_version(V5, Limits::default());
        let mut kinds = Vec::new();
        while kinds.len() < 4 {
            let (bytes, closed) = receive(&mut ws, 1).await;
            assert!(!closed && !bytes.is_empty(), "after {kinds:?}");
            received.extend_from_slice(&bytes);
            while let Some(packet) = decoder.decode(&mut received).unwrap() {
                kinds.push(packet.packet_type());
            }
        }
        use rallymq_codec::PacketType::*;
        // Every packet read whole: CONNACK, then the SUBACK and both PINGRESPs (a PINGRESP
        // may overtake the SUBACK, which the broker gives once it has subscribed).
        assert_eq!(kinds[0], ConnAck);
        let mut rest = kinds[1..].to_vec();
        rest.sort_by_key(|kind| *kind as u8);
        assert_eq!(rest, [SubAck, PingResp, PingResp]);
        broker.shutdown(SHUTDOWN).await;
    }

    #[tokio::test]
    async fn mqtt_6_0_0_4_server_selects_the_mqtt_subprotocol() {
        let broker = start_broker(|_| {}).await;
        let addr = broker.local_addr(ListenerKind::WebSocket).unwrap();
        let (_, picked) = upgrade(addr, &["wamp", "mqtt"]).await;
        assert_eq!(picked.as_deref(), Some("mqtt"));
        let (ws, picked) = upgrade(addr, &["mqtt"]).await;
        assert_eq!(picked.as_deref(), Some("mqtt"));
        let stream: ByteStream<TcpStream> = ws.into_byte_stream();
        let (_client, event) = TestClient::over(stream, connect_packet(V5, "ws-5")).await;
        assert!(matches!(event, ClientEvent::Connected { .. }));
        broker.shutdown(SHUTDOWN).await;
    }
}
