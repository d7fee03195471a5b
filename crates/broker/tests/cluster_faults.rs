//! Cluster mode (issue 17) under NATS faults: three routed `nats-server` processes (Debian's
//! package) with JetStream on file storage in temporary directories, the stream of QoS 1 and 2
//! messages replicated on all three, and two rallymq nodes. The tests SIGKILL servers and
//! restart them on the same ports with the same store (`rallymq_test_support::NatsServer`), and
//! check what a publisher was acknowledged against what subscribers on the other node got. A
//! missing nats-server fails the tests.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rallymq_broker::{BrokerHandle, ClusterConfig, StreamSettings};
use rallymq_codec::{Connect, ProtocolVersion, QoS, ReasonCode};
use rallymq_session::{ClientConfig, ClientEvent};
use rallymq_test_support::{NatsServer, wait_for_stream_leader};
use support::{
    TestClient, WAIT, connect_packet, connected_present, message, payload_str, persistent_connect,
    start_broker, subscription, tcp_addr,
};
use tokio::net::TcpStream;

/// The stream of QoS 1 and 2 messages between nodes.
const STREAM: &str = "rallymq_messages";

/// How long a publish may wait for its acknowledgement: the node waits 5 s for the stream, and
/// a busy machine adds to it.
const ACK_WITHIN: Duration = Duration::from_secs(15);

/// How long the cluster may take to elect a leader again, or to come back after a restart.
const RECOVERY: Duration = Duration::from_secs(60);

/// A node on `servers` (its NATS client may use any of them), the stream with 3 replicas.
async fn node(servers: &[NatsServer]) -> BrokerHandle {
    let stream = StreamSettings {
        replicas: Some(3),
        ..StreamSettings::default()
    };
    node_with(servers, stream).await
}

/// A node on `servers` that creates the stream with `stream` if it is the first.
async fn node_with(servers: &[NatsServer], stream: StreamSettings) -> BrokerHandle {
    let urls: Vec<String> = servers.iter().map(NatsServer::url).collect();
    start_broker(move |config| {
        config.cluster = Some(ClusterConfig {
            stream,
            ..ClusterConfig::new(urls)
        });
    })
    .await
}

/// The stream's replica count as server `server` reports it.
fn stream_replicas(server: &NatsServer) -> Option<u64> {
    server.stream_detail(STREAM)?["config"]["num_replicas"].as_u64()
}

/// What one publisher did: the payloads acknowledged with success, in order, and how many
/// publishes were refused (PUBACK 0x80) or not answered in time on the way.
#[derive(Debug, Default)]
struct Published {
    acknowledged: Vec<String>,
    refused: usize,
}

/// Publishes `prefix0`, `prefix1`... on `topic` with QoS 1 until `stop`, each one again until
/// it is acknowledged with success (as an application would), counting the acknowledged ones
/// in `acked`.
async fn publish_until(
    mut publisher: TestClient<TcpStream>,
    topic: String,
    prefix: String,
    acked: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> Published {
    let mut published = Published::default();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let payload = format!("{prefix}{i}");
        let outcome = publisher
            .publish_outcome_within(message(&topic, &payload, QoS::AtLeastOnce), ACK_WITHIN)
            .await;
        match outcome {
            Ok(ReasonCode::Success | ReasonCode::NoMatchingSubscribers) => {
                published.acknowledged.push(payload);
                acked.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            Ok(_) | Err(None) => {
                published.refused += 1;
                // A stream without a leader refuses at once: no need to spin.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(Some(closed)) => panic!("{prefix}: the publisher was closed: {closed:?}"),
        }
    }
    published
}

/// Waits (bounded by `within`) until `acked` has grown by `more`.
async fn wait_for_acks(acked: &AtomicUsize, more: usize, within: Duration, what: &str) {
    let target = acked.load(Ordering::Relaxed) + more;
    let deadline = Instant::now() + within;
    while acked.load(Ordering::Relaxed) < target {
        assert!(
            Instant::now() < deadline,
            "{what}: {} of {target} publishes acknowledged within {within:?}",
            acked.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every payload the client receives until every one of `expected` has come, or `within` has
/// passed, in the order they arrived (duplicates included).
async fn receive_all(
    client: &mut TestClient<TcpStream>,
    expected: &[String],
    within: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut missing: std::collections::HashSet<&String> = expected.iter().collect();
    let mut received = Vec::new();
    while !missing.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(publish) = client.recv_within(left).await else {
            break;
        };
        let payload = payload_str(&publish);
        missing.remove(&payload);
        received.push(payload);
    }
    received
}

/// The first copy of each of `received` that starts with `prefix`, in the order they came.
fn first_copies(received: &[String], prefix: &str) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    received
        .iter()
        .filter(|payload| payload.starts_with(prefix) && seen.insert(payload.as_str()))
        .cloned()
        .collect()
}

/// MQTT-4.6.0-6 (each topic ordered) and at least once for QoS 1 (MQTT-4.3.2), across nodes,
/// while the NATS server that leads the stream is SIGKILLed and later restarted: every
/// acknowledged message reaches the persistent subscriber on the other node at least once, and
/// the first copies come in the order each publisher was acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mqtt_4_6_0_6_qos1_in_order_while_the_stream_leaders_nats_server_is_killed() {
    let mut servers = NatsServer::cluster(3);
    let a = node(&servers).await;
    let b = node(&servers).await;
    assert_eq!(stream_replicas(&servers[0]), Some(3), "3 replicas");
    let (mut sub, _) = connected_present(
        tcp_addr(&b),
        persistent_connect(ProtocolVersion::V5, "b-sub", 600),
    )
    .await;
    sub.subscribe(vec![subscription("f/#", QoS::AtLeastOnce)])
        .await;

    const PUBLISHERS: usize = 2;
    let acked = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut runs = Vec::new();
    for p in 0..PUBLISHERS {
        let (publisher, _) = TestClient::tcp(
            tcp_addr(&a),
            connect_packet(ProtocolVersion::V5, &format!("a-pub-{p}")),
        )
        .await;
        runs.push(tokio::spawn(publish_until(
            publisher,
            format!("f/{p}"),
            format!("{p}-"),
            acked.clone(),
            stop.clone(),
        )));
    }
    // The subscriber must be read meanwhile, or its node's queue for it is what is measured.
    let reader = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut received = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if let Some(publish) = sub.recv_within(Duration::from_millis(100)).await {
                    received.push(payload_str(&publish));
                }
            }
            (sub, received)
        }
    });

    wait_for_acks(&acked, 40, RECOVERY, "before the kill").await;
    let leader = tokio::task::block_in_place(|| {
        wait_for_stream_leader(&servers, STREAM, Duration::from_secs(10))
    });
    servers[leader].kill();
    // Two of three keep the quorum: a new leader, and publishes acknowledged again.
    wait_for_acks(&acked, 40, RECOVERY, "with the leader killed").await;
    // A killed server's monitoring port does not answer: the leader is another one.
    let new_leader = tokio::task::block_in_place(|| {
        wait_for_stream_leader(&servers, STREAM, Duration::from_secs(10))
    });
    assert_ne!(new_leader, leader, "another server leads the stream");
    servers[leader].restart();
    wait_for_acks(&acked, 40, RECOVERY, "after the restart").await;
    stop.store(true, Ordering::Relaxed);

    let mut published = Vec::new();
    for run in runs {
        published.push(run.await.expect("a publisher ran to its end"));
    }
    let (mut sub, mut received) = reader.await.expect("the reader ran to its end");
    let expected: Vec<String> = published
        .iter()
        .flat_map(|p| p.acknowledged.iter().cloned())
        .collect();
    let missing: Vec<String> = expected
        .iter()
        .filter(|payload| !received.contains(payload))
        .cloned()
        .collect();
    received.extend(receive_all(&mut sub, &missing, RECOVERY).await);
    eprintln!(
        "leader {leader} killed and restarted; acknowledged {:?}, refused {:?}, received {} \
         (duplicates {})",
        published
            .iter()
            .map(|p| p.acknowledged.len())
            .collect::<Vec<_>>(),
        published.iter().map(|p| p.refused).collect::<Vec<_>>(),
        received.len(),
        received.len().saturating_sub(expected.len())
    );
    let missing: Vec<&String> = expected
        .iter()
        .filter(|payload| !received.contains(payload))
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "missing {missing:?}\nB's consumer: {}",
            consumer_state(&servers, b.node_id().unwrap_or_default()).await
        );
    }
    for (p, published) in published.iter().enumerate() {
        assert_eq!(
            first_copies(&received, &format!("{p}-")),
            published.acknowledged,
            "publisher {p}: every acknowledged message once at least, in order ({} refused on \
             the way; {} received in all)",
            published.refused,
            received.len()
        );
    }
    drop((a, b));
}

/// The stream's and a node's consumer's state, as JetStream tells it, for a failure's message.
async fn consumer_state(servers: &[NatsServer], node_id: &str) -> String {
    let addrs: Vec<async_nats::ServerAddr> = servers
        .iter()
        .filter_map(|server| server.url().parse().ok())
        .collect();
    let Ok(client) = async_nats::connect(addrs).await else {
        return "no NATS server answers".to_owned();
    };
    let context = async_nats::jetstream::new(client);
    let Ok(mut stream) = context.get_stream(STREAM).await else {
        return "no stream".to_owned();
    };
    let state = stream
        .info()
        .await
        .map(|info| format!("{:?} {:?}", info.state, info.cluster))
        .unwrap_or_else(|e| e.to_string());
    let consumer = stream
        .consumer_info(format!("node-{node_id}"))
        .await
        .map(|info| format!("{info:?}"))
        .unwrap_or_else(|e| e.to_string());
    format!("stream {state}\nconsumer {consumer}")
}

/// [`support::cluster::publish_until_acknowledged`] on `nq/t`, within [`RECOVERY`], which must
/// succeed.
async fn publish_until_acknowledged(publisher: &mut TestClient<TcpStream>, payload: &str) -> usize {
    support::cluster::publish_until_acknowledged(publisher, "nq/t", payload, RECOVERY, ACK_WITHIN)
        .await
        .unwrap_or_else(|failure| panic!("{failure} (since the servers' return)"))
}

/// PUBACK waits for the stream: with two of three NATS servers SIGKILLed the stream has no
/// quorum, and the node stops
/// acknowledging QoS 1 publishes (MQTT 5: PUBACK 0x80; MQTT 3.1.1: the connection is closed)
/// while QoS 0 still goes. Once the two are restarted on their ports and store, the node
/// acknowledges again by itself, on the same MQTT 5 connection, and what it acknowledges then
/// reaches a subscriber on the other node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_qos1_refused_without_stream_quorum_and_acknowledged_again_once_it_returns() {
    let mut servers = NatsServer::cluster(3);
    // On the server that stays up: the node's own NATS connection never breaks. It makes the
    // stream with the default settings: as many replicas as the servers NATS tells it of.
    let a = node_with(&servers[..1], StreamSettings::default()).await;
    assert_eq!(
        stream_replicas(&servers[0]),
        Some(3),
        "a replica on each of the three servers"
    );
    let b = node(&servers).await;
    let (mut sub, _) =
        TestClient::tcp(tcp_addr(&b), connect_packet(ProtocolVersion::V5, "b-sub")).await;
    sub.subscribe(vec![subscription("nq/#", QoS::AtLeastOnce)])
        .await;
    let (mut v5, _) =
        TestClient::tcp(tcp_addr(&a), connect_packet(ProtocolVersion::V5, "pub-5")).await;
    assert_eq!(publish_until_acknowledged(&mut v5, "before").await, 1);
    assert_eq!(
        receive_all(&mut sub, &["before".to_owned()], RECOVERY).await,
        ["before"]
    );

    // Connected before: without a quorum the sessions bucket cannot take a CONNECT's claim
    // either (refused with 0x88).
    let (mut v3, _) = TestClient::tcp(
        tcp_addr(&a),
        connect_packet(ProtocolVersion::V3_1_1, "pub-3"),
    )
    .await;
    servers[1].kill();
    servers[2].kill();
    assert_eq!(
        v5.publish_outcome_within(message("nq/t", "lost", QoS::AtLeastOnce), ACK_WITHIN)
            .await,
        Ok(ReasonCode::UnspecifiedError),
        "no quorum: PUBACK 0x80"
    );
    assert_eq!(
        v5.publish(message("nq/t", "qos0", QoS::AtMostOnce)).await,
        ReasonCode::Success,
        "QoS 0 does not wait for the stream"
    );
    let outcome = v3
        .publish_outcome_within(message("nq/t", "lost-3", QoS::AtLeastOnce), ACK_WITHIN)
        .await;
    assert!(
        matches!(outcome, Err(Some(_))),
        "an MQTT 3.1.1 publisher is closed, not acknowledged: {outcome:?}"
    );

    servers[1].restart();
    servers[2].restart();
    let tries = publish_until_acknowledged(&mut v5, "after").await;
    // A CONNECT claims its client id in the sessions bucket, whose own leader may still be
    // being elected: refused (or unanswered) meanwhile, it is tried again, as a client does.
    let mut v3 = connect_until_accepted(
        tcp_addr(&a),
        connect_packet(ProtocolVersion::V3_1_1, "pub-3"),
    )
    .await;
    assert_eq!(
        v3.publish_outcome_within(message("nq/t", "after-3", QoS::AtLeastOnce), ACK_WITHIN)
            .await,
        Ok(ReasonCode::Success),
        "an MQTT 3.1.1 publisher is acknowledged again"
    );
    let expected = ["after".to_owned(), "after-3".to_owned()];
    let received = receive_all(&mut sub, &expected, RECOVERY).await;
    let firsts: Vec<String> = first_copies(&received, "after");
    assert_eq!(
        firsts, expected,
        "what is acknowledged after the return crosses ({tries} tries; received {received:?})"
    );
}

/// Connects until the broker accepts (CONNACK 0x00), each try bounded, all within [`RECOVERY`].
async fn connect_until_accepted(addr: SocketAddr, connect: Connect) -> TestClient<TcpStream> {
    let deadline = Instant::now() + RECOVERY;
    loop {
        let stream = TcpStream::connect(addr).await.expect("TCP connect");
        let config = ClientConfig::new(connect.clone());
        let tried = TestClient::over_with_within(stream, config, WAIT * 2).await;
        if let Some((client, ClientEvent::Connected { connack, .. })) = tried
            && connack.reason_code == ReasonCode::Success
        {
            return client;
        }
        assert!(
            Instant::now() < deadline,
            "the broker did not accept a CONNECT within {RECOVERY:?} of the servers' return"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
