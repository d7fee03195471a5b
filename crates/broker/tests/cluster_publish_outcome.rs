//! Cluster mode (issue 17): what a QoS 2 publisher is told when the cluster cannot answer, with
//! a real `nats-server` paused (SIGSTOP) under a node. A publisher told "refused" must never
//! see its message delivered, or it may publish it again as a new one: exactly once would be
//! lost.

mod support;

use std::time::Duration;

use rallymq_broker::{BrokerHandle, ClusterConfig};
use rallymq_codec::{Ack, Connect, Packet, PacketId, ProtocolVersion, Publish, QoS, ReasonCode};
use rallymq_test_support::NatsServer;
use support::{
    NoPacket, Raw, TestClient, connect_packet, message, payload_str, persistent_connect,
    start_broker, subscription, tcp_addr,
};
use tokio::net::TcpStream;

const V5: ProtocolVersion = ProtocolVersion::V5;

/// Longer than the node's 5 s wait for the stream and for the sessions bucket.
const NO_ANSWER: Duration = Duration::from_secs(12);

/// How long the cluster may take to deliver once NATS goes on.
const RECOVERY: Duration = Duration::from_secs(20);

async fn node(nats: &NatsServer) -> BrokerHandle {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    start_broker(|config| {
        config.cluster = Some(ClusterConfig {
            node_id: Some("node-a".to_owned()),
            ..ClusterConfig::new([nats.url()])
        });
    })
    .await
}

async fn subscriber(node: &BrokerHandle) -> TestClient<TcpStream> {
    let (mut subscriber, _) = TestClient::tcp(tcp_addr(node), connect_packet(V5, "sub")).await;
    subscriber
        .subscribe(vec![subscription("o/#", QoS::ExactlyOnce)])
        .await;
    subscriber
}

fn numbered(payload: &str, packet_id: u16) -> Publish {
    let mut publish = message("o/t", payload, QoS::ExactlyOnce);
    publish.packet_id = PacketId::new(packet_id);
    publish
}

/// Publishes `payload` under `packet_id` and completes the exchange; its PUBREC's code.
async fn publish_qos2(publisher: &mut Raw, payload: &str, packet_id: u16) -> ReasonCode {
    publisher
        .send(Packet::Publish(numbered(payload, packet_id)))
        .await;
    let code = match publisher.expect().await {
        Packet::PubRec(ack) => ack.reason_code,
        other => panic!("PUBREC for {payload}: {other:?}"),
    };
    if !code.is_error() {
        publisher
            .send(Packet::PubRel(Ack::new(PacketId::new(packet_id).unwrap())))
            .await;
        assert!(matches!(publisher.expect().await, Packet::PubComp(_)));
    }
    code
}

/// A publisher on `node`, whose first QoS 2 message has reached `subscriber`.
async fn warmed_up(
    node: &BrokerHandle,
    subscriber: &mut TestClient<TcpStream>,
    connect: Connect,
) -> Raw {
    let (mut publisher, connack) = Raw::connect(tcp_addr(node), connect).await;
    assert_eq!(connack.reason_code, ReasonCode::Success);
    assert_eq!(
        publish_qos2(&mut publisher, "warm", 1).await,
        ReasonCode::Success
    );
    assert_eq!(payloads_through(subscriber, "warm").await, ["warm"]);
    publisher
}

/// What `publisher` is told of a QoS 2 message it sends while the NATS server is stopped.
async fn told_while_paused(
    nats: &NatsServer,
    publisher: &mut Raw,
    payload: &str,
) -> Result<Packet, NoPacket> {
    nats.pause();
    publisher.send(Packet::Publish(numbered(payload, 2))).await;
    let told = publisher.next_within(NO_ANSWER).await;
    nats.resume();
    told
}

/// Publishes `payload` at QoS 2 under `packet_id` until it is acknowledged (within
/// [`RECOVERY`]).
async fn publish_until_acknowledged(publisher: &mut Raw, payload: &str, packet_id: u16) {
    let deadline = tokio::time::Instant::now() + RECOVERY;
    while publish_qos2(publisher, payload, packet_id).await != ReasonCode::Success {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no QoS 2 publish acknowledged within {RECOVERY:?} of NATS going on"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The payloads `subscriber` gets until `last` comes (within [`RECOVERY`]).
async fn payloads_through(subscriber: &mut TestClient<TcpStream>, last: &str) -> Vec<String> {
    payloads_until_all(subscriber, &[last]).await
}

/// The payloads `subscriber` gets until each of `wanted` has come (within [`RECOVERY`]).
async fn payloads_until_all(
    subscriber: &mut TestClient<TcpStream>,
    wanted: &[&str],
) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + RECOVERY;
    let mut payloads = Vec::new();
    while !wanted
        .iter()
        .all(|wanted| payloads.iter().any(|payload| payload == wanted))
    {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match subscriber.recv_within(left).await {
            Some(publish) => payloads.push(payload_str(&publish)),
            None => panic!("{wanted:?} not received within {RECOVERY:?}; got {payloads:?}"),
        }
    }
    payloads
}

/// The stream's answer to a QoS 2 write does not come (the server is stopped): the write may
/// be stored once the server goes on, so the publisher is not told "refused" (MQTT 5 PUBREC
/// 0x80) but disconnected, and the message does reach the subscriber. The server gives it to
/// the pull request the node made while it was stopped, which the node gave up (missed
/// heartbeats): it comes again after the ack wait, behind a message published after it, and
/// is routed then, not taken for one routed already.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mqtt_4_3_3_qos2_publish_the_stream_may_have_stored_is_not_refused() {
    let nats = NatsServer::start();
    let node = node(&nats).await;
    let mut subscriber = subscriber(&node).await;
    let mut publisher = warmed_up(&node, &mut subscriber, connect_packet(V5, "pub")).await;
    match told_while_paused(&nats, &mut publisher, "unanswered").await {
        Ok(Packet::Disconnect(_)) | Err(NoPacket::Closed) => {}
        other => panic!("a QoS 2 publish the stream did not answer: {other:?}, not a disconnect"),
    }
    let (mut later, _) = Raw::connect(tcp_addr(&node), connect_packet(V5, "later")).await;
    publish_until_acknowledged(&mut later, "later", 1).await;
    let mut received = payloads_until_all(&mut subscriber, &["unanswered", "later"]).await;
    received.sort();
    assert_eq!(
        received,
        ["later", "unanswered"],
        "the write was stored once the server went on: a refusal would have been false"
    );
}

/// A persistent session's new QoS 2 message has its stream id in the session's record before
/// the stream gets it. When the record cannot be written, the message is refused (0x80) and
/// never written to the stream: it reaches nobody, even once NATS goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mqtt_4_3_3_qos2_publish_refused_for_want_of_its_record_is_never_delivered() {
    let nats = NatsServer::start();
    let node = node(&nats).await;
    let mut subscriber = subscriber(&node).await;
    let connect = persistent_connect(V5, "kept-pub", 600);
    let mut publisher = warmed_up(&node, &mut subscriber, connect).await;
    match told_while_paused(&nats, &mut publisher, "refused").await {
        Ok(Packet::PubRec(ack)) if ack.reason_code.is_error() => {}
        other => panic!("a QoS 2 publish whose record could not be written: {other:?}"),
    }
    // The identifier is free again: a new message under it is a new message.
    publish_until_acknowledged(&mut publisher, "after", 2).await;
    // The stream keeps order: a write of the refused message would come before.
    assert_eq!(
        payloads_through(&mut subscriber, "after").await,
        ["after"],
        "the refused message was written to the stream"
    );
}
