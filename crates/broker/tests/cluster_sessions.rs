//! Sessions shared by cluster nodes (issue 17): a persistent session resumes on another node
//! with what was queued for it, a connection is taken over across nodes (MQTT 5: DISCONNECT
//! 0x8E), simultaneous connects of one client id on two nodes leave one connection, and a clean
//! start on one node ends the session on the other. Real `nats-server` processes (Debian's
//! package), started on free ports; a missing nats-server fails the tests.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rallymq_broker::{BrokerHandle, ClusterConfig, Storage};
use rallymq_codec::{ProtocolVersion, QoS, ReasonCode};
use rallymq_session::{ClientConfig, ClientEvent, CloseReason};
use rallymq_test_support::NatsServer;
use support::credentials::TempDir;
use support::storm::{answers_ping, closed_by_broker, storm};
use support::{
    TestClient, WAIT, connect_packet, connected_present, message, payload_str,
    payloads_until_quiet, persistent_connect, start_broker, subscription, tcp_addr,
};
use tokio::net::TcpStream;

/// How long a client stays silent after its last expected message before its messages are
/// taken: a duplicate would arrive within it.
const QUIET: Duration = Duration::from_millis(500);

async fn node(nats: &NatsServer, id: &str) -> BrokerHandle {
    node_storing(nats, id, None).await
}

/// A node that keeps its sessions in `dir`, if given.
async fn node_storing(nats: &NatsServer, id: &str, dir: Option<&TempDir>) -> BrokerHandle {
    let url = nats.url();
    let id = id.to_owned();
    let storage = dir.map(|dir| Storage::Directory(dir.path("data")));
    start_broker(move |config| {
        if let Some(storage) = storage {
            config.storage = storage;
        }
        config.cluster = Some(ClusterConfig {
            node_id: Some(id),
            ..ClusterConfig::new([url])
        })
    })
    .await
}

/// The payloads the client receives until it has `expected` and stays quiet for [`QUIET`], in
/// the order they arrived.
async fn payloads(client: &mut TestClient<TcpStream>, expected: usize) -> Vec<String> {
    payloads_until_quiet(client, expected, QUIET).await
}

fn numbered(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}{i}")).collect()
}

/// Publishes `payloads` on `topic` with QoS 1, each acknowledged (a match or none).
async fn publish_all(publisher: &mut TestClient<TcpStream>, topic: &str, payloads: &[String]) {
    for payload in payloads {
        let code = publisher
            .publish(message(topic, payload, QoS::AtLeastOnce))
            .await;
        assert!(
            matches!(
                code,
                ReasonCode::Success | ReasonCode::NoMatchingSubscribers
            ),
            "{payload}: {code:?}"
        );
    }
}

/// Waits (bounded) until `node` has a session of `client_id` or not, as `expected` says.
async fn wait_for_session(node: &BrokerHandle, client_id: &str, expected: bool) {
    let deadline = Instant::now() + WAIT;
    while node.has_session(client_id) != expected {
        assert!(
            Instant::now() < deadline,
            "{:?} has a session of {client_id:?}: {} after {WAIT:?}",
            node.node_id(),
            !expected
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mqtt_3_1_2_5_a_persistent_session_resumes_on_another_node_with_its_queue() {
    let nats = NatsServer::start();
    let a = node(&nats, "node-a").await;
    let b = node(&nats, "node-b").await;
    let connect = || persistent_connect(ProtocolVersion::V5, "mover", 600);
    let (mut mover, present) = connected_present(tcp_addr(&a), connect()).await;
    assert!(!present);
    mover
        .subscribe(vec![
            subscription("mv/#", QoS::AtLeastOnce),
            subscription("other/+", QoS::AtMostOnce),
        ])
        .await;
    let (mut publisher, _) =
        TestClient::tcp(tcp_addr(&a), connect_packet(ProtocolVersion::V5, "pub")).await;
    publish_all(&mut publisher, "mv/t", &numbered("before-", 0..3)).await;
    assert_eq!(payloads(&mut mover, 3).await, numbered("before-", 0..3));
    mover.disconnect(ReasonCode::Success).await;
    wait_for_session(&a, "mover", true).await;

    // Queued on A for the offline session (routed there when published: PUBACK follows).
    const N: usize = 30;
    publish_all(&mut publisher, "mv/t", &numbered("queued-", 0..N)).await;

    let (mut mover, present) = connected_present(tcp_addr(&b), connect()).await;
    assert!(present, "Session Present 1 on the other node");
    assert_eq!(
        payloads(&mut mover, N).await,
        numbered("queued-", 0..N),
        "what was queued on A, once each, in order"
    );
    // The session left A: only B holds it.
    assert!(!a.has_session("mover"));
    assert!(b.has_session("mover"));
    // Its subscription came along: new messages, published on A, reach it on B.
    publish_all(&mut publisher, "mv/t", &numbered("after-", 0..5)).await;
    assert_eq!(payloads(&mut mover, 5).await, numbered("after-", 0..5));

    // And back to A: resumed again, with the subscriptions B was handed.
    mover.disconnect(ReasonCode::Success).await;
    wait_for_session(&b, "mover", true).await;
    publish_all(&mut publisher, "mv/t", &numbered("back-", 0..5)).await;
    // Published on A, queued on B through the stream: wait until B has routed them.
    tokio::time::sleep(QUIET).await;
    let (mut mover, present) = connected_present(tcp_addr(&a), connect()).await;
    assert!(present);
    assert_eq!(payloads(&mut mover, 5).await, numbered("back-", 0..5));
    assert!(!b.has_session("mover"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mqtt_3_1_2_5_a_session_queued_in_a_nodes_store_moves_with_its_queue() {
    let nats = NatsServer::start();
    let dir = TempDir::new("cluster-sessions-store");
    let a = node_storing(&nats, "node-a", Some(&dir)).await;
    let b = node(&nats, "node-b").await;
    let connect = || persistent_connect(ProtocolVersion::V3_1_1, "stored-mover", 0);
    let (mut mover, _) = connected_present(tcp_addr(&a), connect()).await;
    mover
        .subscribe(vec![subscription("st/#", QoS::ExactlyOnce)])
        .await;
    mover.disconnect(ReasonCode::Success).await;
    wait_for_session(&a, "stored-mover", true).await;
    // An offline session's queue is in A's store only.
    const N: usize = 40;
    let (mut publisher, _) =
        TestClient::tcp(tcp_addr(&a), connect_packet(ProtocolVersion::V5, "pub")).await;
    publish_all(&mut publisher, "st/t", &numbered("stored-", 0..N)).await;

    let (mut mover, present) = connected_present(tcp_addr(&b), connect()).await;
    assert!(present);
    assert_eq!(payloads(&mut mover, N).await, numbered("stored-", 0..N));
    assert!(!a.has_session("stored-mover"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mqtt_3_1_4_3_a_connection_on_a_gets_disconnect_0x8e_when_its_client_id_connects_on_b()
 {
    let nats = NatsServer::start();
    let a = node(&nats, "node-a").await;
    let b = node(&nats, "node-b").await;
    for (first_connect, second_connect) in [
        (
            connect_packet(ProtocolVersion::V5, "twice"),
            connect_packet(ProtocolVersion::V5, "twice"),
        ),
        (
            persistent_connect(ProtocolVersion::V5, "twice-kept", 300),
            persistent_connect(ProtocolVersion::V5, "twice-kept", 300),
        ),
    ] {
        let client_id = first_connect.client_id.as_str().to_owned();
        let (mut first, _) = connected_present(tcp_addr(&a), first_connect).await;
        let (mut second, _) = connected_present(tcp_addr(&b), second_connect).await;
        assert!(
            matches!(
                first.closed().await,
                Some(CloseReason::PeerDisconnected {
                    reason_code: ReasonCode::SessionTakenOver,
                    ..
                })
            ),
            "{client_id}: the first connection gets DISCONNECT 0x8E"
        );
        wait_for_session(&a, &client_id, false).await;
        // The second is served.
        second
            .subscribe(vec![subscription("x", QoS::AtMostOnce)])
            .await;
        second.disconnect(ReasonCode::Success).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mqtt_3_1_2_4_clean_start_on_b_ends_the_session_on_a() {
    let nats = NatsServer::start();
    let a = node(&nats, "node-a").await;
    let b = node(&nats, "node-b").await;
    let (mut kept, _) = connected_present(
        tcp_addr(&a),
        persistent_connect(ProtocolVersion::V5, "cleaned", 600),
    )
    .await;
    kept.subscribe(vec![subscription("cl/#", QoS::AtLeastOnce)])
        .await;
    kept.disconnect(ReasonCode::Success).await;
    let (mut publisher, _) =
        TestClient::tcp(tcp_addr(&a), connect_packet(ProtocolVersion::V5, "pub")).await;
    publish_all(&mut publisher, "cl/t", &numbered("old-", 0..5)).await;

    let (mut clean, present) =
        connected_present(tcp_addr(&b), connect_packet(ProtocolVersion::V5, "cleaned")).await;
    assert!(!present);
    assert!(!a.has_session("cleaned"), "A dropped the session");
    clean.expect_silence(QUIET).await;
    clean.disconnect(ReasonCode::Success).await;
    wait_for_session(&b, "cleaned", false).await;
    // Nothing of the old session anywhere: a resume on A finds none.
    let (mut again, present) = connected_present(
        tcp_addr(&a),
        persistent_connect(ProtocolVersion::V5, "cleaned", 600),
    )
    .await;
    assert!(!present, "the old session ended everywhere");
    publish_all(&mut publisher, "cl/t", &numbered("new-", 0..2)).await;
    again.expect_silence(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_session_whose_node_is_gone_resumes_from_its_record() {
    let nats = NatsServer::start();
    let a = node(&nats, "node-a").await;
    let b = node(&nats, "node-b").await;
    let connect = || persistent_connect(ProtocolVersion::V5, "orphan", 600);
    let (mut orphan, _) = connected_present(tcp_addr(&a), connect()).await;
    orphan
        .subscribe(vec![subscription("or/#", QoS::AtLeastOnce)])
        .await;
    // The record carries the subscription once A has written it.
    tokio::time::sleep(QUIET).await;
    orphan.kill();
    let name = "rallymq-node-a";
    drop(a);
    // Gone from NATS: its takeover requests find no responder.
    let deadline = Instant::now() + WAIT;
    while nats
        .monitor("/connz")
        .is_some_and(|connz| connz.contains(&format!("\"{name}\"")))
    {
        assert!(Instant::now() < deadline, "{name} still connected to NATS");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (mut orphan, present) = connected_present(tcp_addr(&b), connect()).await;
    assert!(present, "resumed from the record");
    let (mut publisher, _) =
        TestClient::tcp(tcp_addr(&b), connect_packet(ProtocolVersion::V5, "pub")).await;
    publish_all(&mut publisher, "or/t", &numbered("m-", 0..3)).await;
    assert_eq!(
        payloads(&mut orphan, 3).await,
        numbered("m-", 0..3),
        "its subscription is in force on B"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_takeover_from_another_node_publishes_the_will_only_of_a_session_that_ends() {
    let nats = NatsServer::start();
    let a = node(&nats, "node-a").await;
    let b = node(&nats, "node-b").await;
    let (mut watcher, _) =
        TestClient::tcp(tcp_addr(&a), connect_packet(ProtocolVersion::V5, "watcher")).await;
    watcher
        .subscribe(vec![subscription("wills/#", QoS::AtMostOnce)])
        .await;
    for (client_id, expiry, published) in [("ends", 0, true), ("goes-on", 600, false)] {
        let with_will = || {
            let mut connect = persistent_connect(ProtocolVersion::V5, client_id, expiry);
            connect.will = Some(rallymq_codec::Will::new(
                rallymq_codec::TopicName::new(format!("wills/{client_id}")).unwrap(),
                "gone",
            ));
            connect
        };
        let (mut first, _) = connected_present(tcp_addr(&a), with_will()).await;
        let (mut second, _) = connected_present(tcp_addr(&b), with_will()).await;
        assert!(first.closed().await.is_some());
        let will = watcher.recv_within(QUIET).await;
        assert_eq!(
            will.is_some(),
            published,
            "{client_id}: will published {will:?}"
        );
        // A normal DISCONNECT: its own will is not published.
        second.disconnect(ReasonCode::Success).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mqtt_4_4_0_1_a_delivery_in_flight_on_a_is_resent_on_b_with_dup() {
    let nats = NatsServer::start();
    let a = node(&nats, "node-a").await;
    let b = node(&nats, "node-b").await;
    let connect = || persistent_connect(ProtocolVersion::V5, "holder", 600);
    let mut config = ClientConfig::new(connect());
    // Nothing is acknowledged: what A sends stays in flight there.
    config.manual_acks = true;
    let (mut holder, _) = TestClient::tcp_with(tcp_addr(&a), config).await;
    holder
        .subscribe(vec![subscription("held/#", QoS::AtLeastOnce)])
        .await;
    let (mut publisher, _) =
        TestClient::tcp(tcp_addr(&a), connect_packet(ProtocolVersion::V5, "pub")).await;
    publish_all(&mut publisher, "held/t", &numbered("h-", 0..3)).await;
    let first = holder
        .wait_for(|event| matches!(event, ClientEvent::Message(_)))
        .await;
    assert!(first.is_some(), "A sent the first one");

    // Taken over while connected: its connection hands its state to A's reply.
    let (mut moved, present) = connected_present(tcp_addr(&b), connect()).await;
    assert!(present);
    let mut received = Vec::new();
    while let Some(publish) = moved.recv_within(QUIET).await {
        received.push((payload_str(&publish), publish.dup));
    }
    assert_eq!(
        received.first(),
        Some(&("h-0".to_owned(), true)),
        "the delivery in flight comes first, again, with DUP: {received:?}"
    );
    let payloads: Vec<&str> = received.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(payloads, ["h-0", "h-1", "h-2"], "then the rest, once each");
}

/// The client id `node` assigns to a client that sent an empty one.
async fn assigned_id(node: &BrokerHandle) -> String {
    let (_, connected) =
        TestClient::tcp(tcp_addr(node), connect_packet(ProtocolVersion::V5, "")).await;
    let ClientEvent::Connected { connack, .. } = connected else {
        panic!("{connected:?}")
    };
    connack
        .properties
        .assigned_client_identifier
        .as_ref()
        .expect("an assigned client id")
        .as_str()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mqtt_3_1_3_6_nodes_assign_client_ids_no_other_node_assigns() {
    let nats = NatsServer::start();
    let a = node(&nats, "node-a").await;
    let b = node(&nats, "node-b").await;
    // Both nodes count connections from 1: the first ones would meet as `rallymq-1`.
    let (on_a, on_b) = (assigned_id(&a).await, assigned_id(&b).await);
    assert_ne!(on_a, on_b);
    assert!(
        on_a.contains("node-a") && on_b.contains("node-b"),
        "{on_a}, {on_b}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mqtt_3_1_3_7_a_session_under_an_assigned_client_id_resumes_on_another_node() {
    let nats = NatsServer::start();
    let a = node(&nats, "node-a").await;
    let b = node(&nats, "node-b").await;
    let mut first = connect_packet(ProtocolVersion::V5, "");
    first.properties.session_expiry_interval = Some(600);
    let (mut client, connected) = TestClient::tcp(tcp_addr(&a), first).await;
    let ClientEvent::Connected { connack, .. } = connected else {
        panic!("{connected:?}")
    };
    let assigned = connack
        .properties
        .assigned_client_identifier
        .as_ref()
        .expect("an assigned client id")
        .as_str()
        .to_owned();
    client
        .subscribe(vec![subscription("asg/#", QoS::AtLeastOnce)])
        .await;
    client.disconnect(ReasonCode::Success).await;
    wait_for_session(&a, &assigned, true).await;
    let (mut publisher, _) =
        TestClient::tcp(tcp_addr(&a), connect_packet(ProtocolVersion::V5, "asg-pub")).await;
    publish_all(&mut publisher, "asg/t", &numbered("queued-", 0..3)).await;

    // The client goes on as if it had sent the assigned id itself (MQTT-3.1.3-7), on B.
    let (mut client, present) = connected_present(
        tcp_addr(&b),
        persistent_connect(ProtocolVersion::V5, &assigned, 600),
    )
    .await;
    assert!(
        present,
        "Session Present 1 under {assigned} on the other node"
    );
    assert_eq!(payloads(&mut client, 3).await, numbered("queued-", 0..3));
    assert!(!a.has_session(&assigned));
    publish_all(&mut publisher, "asg/t", &numbered("after-", 0..2)).await;
    assert_eq!(payloads(&mut client, 2).await, numbered("after-", 0..2));
}

/// Simultaneous connects per storm, split over the two nodes.
const STORM: usize = 100;

/// How long the connection left must stay open and served after a storm.
const SETTLE: Duration = Duration::from_secs(2);

#[test]
fn cluster_mqtt_3_1_4_2_simultaneous_connects_of_one_client_id_on_two_nodes_leave_one_connection() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let nats = NatsServer::start();
    let (a, b) =
        runtime.block_on(async { (node(&nats, "node-a").await, node(&nats, "node-b").await) });
    let addrs: [SocketAddr; 2] = [tcp_addr(&a), tcp_addr(&b)];
    for (round, version) in [
        ProtocolVersion::V5,
        ProtocolVersion::V3_1_1,
        ProtocolVersion::V5,
    ]
    .into_iter()
    .enumerate()
    {
        let client_id = format!("storm-{}-{round}", rallymq_test_support::run_id());
        let mut open = storm(&addrs, STORM, version, &client_id);
        assert_eq!(
            open.len(),
            1,
            "{version:?} round {round}: {} connections of one client id left open",
            open.len()
        );
        // It stays: no late takeover request closes it.
        std::thread::sleep(SETTLE);
        assert!(
            !closed_by_broker(&mut open[0], Duration::from_millis(100)),
            "{version:?} round {round}: the connection left was closed later"
        );
        assert!(
            answers_ping(&mut open[0]),
            "{version:?} round {round}: the connection left is not served"
        );
        assert!(
            a.has_session(&client_id) != b.has_session(&client_id),
            "{version:?} round {round}: one node holds the session (A: {}, B: {})",
            a.has_session(&client_id),
            b.has_session(&client_id)
        );
        drop(open);
    }
    runtime.block_on(async {
        a.shutdown(Duration::from_secs(1)).await;
        b.shutdown(Duration::from_secs(1)).await;
    });
}
