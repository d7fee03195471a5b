//! Cluster nodes and their clients, for the tests with real `nats-server` processes.

use std::time::{Duration, Instant};

use rallymq_broker::{BrokerHandle, ClusterConfig};
use rallymq_codec::{ProtocolVersion, QoS, ReasonCode};
use rallymq_test_support::NatsServer;
use tokio::net::TcpStream;

use super::{
    TestClient, WAIT, connect_packet, message, start_broker, subscription, tcp_addr, topic_str,
};

/// Payloads of warm-up messages start with this; counts leave them out.
pub const PROBE: &str = "probe";

/// A node (in memory, generated id) of the cluster of `servers`, known to it in this order.
pub async fn node(servers: &[&NatsServer]) -> BrokerHandle {
    let urls: Vec<String> = servers.iter().map(|server| server.url()).collect();
    start_broker(|config| config.cluster = Some(ClusterConfig::new(urls))).await
}

/// An MQTT 5 client of `node`, subscribed to each of `filters` with `qos`.
pub async fn subscribed_client(
    node: &BrokerHandle,
    id: &str,
    filters: &[&str],
    qos: QoS,
) -> TestClient<TcpStream> {
    let (mut client, _) =
        TestClient::tcp(tcp_addr(node), connect_packet(ProtocolVersion::V5, id)).await;
    if !filters.is_empty() {
        let subscriptions = filters
            .iter()
            .map(|filter| subscription(filter, qos))
            .collect();
        client.subscribe(subscriptions).await;
    }
    client
}

/// A node subscribes to other nodes' messages (joins a shared group) after its client's SUBACK,
/// and NATS spreads interest between servers after that: publishes `topic` with probe payloads
/// at `qos` until every one of `receivers` has one (bounded), so that what follows is not lost
/// to that window.
pub async fn warm_up(
    publisher: &mut TestClient<TcpStream>,
    topic: &str,
    qos: QoS,
    receivers: &mut [&mut TestClient<TcpStream>],
) {
    let deadline = Instant::now() + 2 * WAIT;
    let mut reached = vec![false; receivers.len()];
    while reached.contains(&false) {
        assert!(
            Instant::now() < deadline,
            "no {qos:?} probe on {topic:?} reached receivers {:?}",
            reached
                .iter()
                .enumerate()
                .filter(|(_, r)| !**r)
                .map(|(i, _)| i)
                .collect::<Vec<_>>()
        );
        publisher.publish(message(topic, PROBE, qos)).await;
        for (receiver, reached) in receivers.iter_mut().zip(&mut reached) {
            while let Some(publish) = receiver.recv_within(Duration::from_millis(20)).await {
                *reached |= topic_str(&publish) == topic;
            }
        }
    }
}

/// Publishes one QoS 1 message on `topic` again and again, each try waiting `ack_within`, until
/// it is acknowledged with success (as an application does after PUBACK 0x80); how many tries
/// that took. `Err` (saying why) when `within` passes first or the publisher is closed.
pub async fn publish_until_acknowledged(
    publisher: &mut TestClient<TcpStream>,
    topic: &str,
    payload: &str,
    within: Duration,
    ack_within: Duration,
) -> Result<usize, String> {
    let deadline = Instant::now() + within;
    let mut tries = 0;
    loop {
        tries += 1;
        let outcome = publisher
            .publish_outcome_within(message(topic, payload, QoS::AtLeastOnce), ack_within)
            .await;
        if matches!(
            outcome,
            Ok(ReasonCode::Success | ReasonCode::NoMatchingSubscribers)
        ) {
            return Ok(tries);
        }
        if let Err(Some(closed)) = outcome {
            return Err(format!("{payload}: the publisher was closed: {closed:?}"));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{payload}: not acknowledged within {within:?} ({tries} tries): {outcome:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
