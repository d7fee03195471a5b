//! Cluster mode (issue 17): QoS 0 messages cross rallymq nodes on core NATS, QoS 1 and 2
//! through a JetStream stream, retained messages through a KV bucket, with
//! real `nats-server` processes (Debian's package) started by the tests on free ports, with
//! JetStream on and their store in a temporary directory. A missing nats-server fails the tests.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rallymq_broker::{BrokerHandle, ClusterConfig, StreamSettings};
use rallymq_codec::{ProtocolVersion, QoS, ReasonCode};
use rallymq_test_support::NatsServer;
use support::cluster::{PROBE, node, subscribed_client};
use support::{
    TestClient, WAIT, connect_packet, connected_present, message, payload_str,
    payloads_until_quiet, persistent_connect, recv_until_quiet, start_broker, subscription,
    tcp_addr, topic_str,
};
use tokio::net::TcpStream;

/// How long a client stays silent after its last expected message before its count is taken:
/// a duplicate would arrive within it.
const QUIET: Duration = Duration::from_millis(400);

async fn client(node: &BrokerHandle, id: &str, filters: &[&str]) -> TestClient<TcpStream> {
    subscribed_client(node, id, filters, QoS::AtMostOnce).await
}

/// `support::cluster::warm_up` at QoS 0.
async fn warm_up(
    publisher: &mut TestClient<TcpStream>,
    topic: &str,
    receivers: &mut [&mut TestClient<TcpStream>],
) {
    support::cluster::warm_up(publisher, topic, QoS::AtMostOnce, receivers).await;
}

/// Every message (topic, payload) the client receives until it has `expected` of them and then
/// stays quiet for [`QUIET`], probes left out, with how many copies of each arrived.
async fn collect(
    client: &mut TestClient<TcpStream>,
    expected: usize,
) -> BTreeMap<(String, String), usize> {
    let mut received = BTreeMap::new();
    recv_until_quiet(client, expected, WAIT, QUIET, |publish| {
        let payload = payload_str(&publish);
        if payload.starts_with(PROBE) {
            return false;
        }
        *received.entry((topic_str(&publish), payload)).or_insert(0) += 1;
        true
    })
    .await;
    received
}

/// `n` numbered messages on each topic, as [`collect`] counts them (one copy each).
fn once_each(topics: &[&str], n: usize) -> BTreeMap<(String, String), usize> {
    topics
        .iter()
        .flat_map(|topic| (0..n).map(move |i| ((topic.to_string(), format!("{topic}#{i}")), 1)))
        .collect()
}

async fn publish_each(publisher: &mut TestClient<TcpStream>, topics: &[&str], n: usize) {
    for i in 0..n {
        for topic in topics {
            publisher
                .publish(message(topic, &format!("{topic}#{i}"), QoS::AtMostOnce))
                .await;
        }
    }
}

/// A topic with every kind of level NATS reserves or forbids: spaces, dots, `*` and `>`, the
/// escape byte, non-ASCII, and an empty last level.
const ODD: &str = "sp ace/dot.ted/caf\u{e9} \u{65e5}/*>=\t/";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_qos0_crosses_nodes_on_one_nats_server_once_per_subscriber() {
    let nats = NatsServer::start();
    let a = node(&[&nats]).await;
    let b = node(&[&nats]).await;
    assert_ne!(a.node_id(), b.node_id());
    assert!(a.node_id().is_some());

    // On B, overlapping filters: NATS hands B one copy per matching subscription of its
    // connection, and each client must still get one.
    let mut hash = client(&b, "b-hash", &["c/#"]).await;
    let mut plus = client(&b, "b-plus", &["c/+"]).await;
    let mut exact = client(&b, "b-exact", &["c/b"]).await;
    let mut both = client(&b, "b-both", &["c/#", "c/+"]).await;
    let mut all = client(&b, "b-all", &["#"]).await;
    let mut dollar = client(&b, "b-dollar", &["$app/#"]).await;
    let mut odd = client(&b, "b-odd", &[ODD]).await;
    let mut odd_wild = client(&b, "b-odd-wild", &["sp ace/+/caf\u{e9} \u{65e5}/#"]).await;
    // On A, beside the publisher: gets A's messages from A itself, never back from NATS.
    let mut local = client(&a, "a-local", &["c/#"]).await;
    let mut publisher = client(&a, "a-pub", &[]).await;

    warm_up(
        &mut publisher,
        "c/b",
        &mut [
            &mut hash, &mut plus, &mut exact, &mut both, &mut all, &mut local,
        ],
    )
    .await;
    warm_up(
        &mut publisher,
        "c",
        &mut [&mut hash, &mut both, &mut all, &mut local],
    )
    .await;
    warm_up(
        &mut publisher,
        "c/b/deep",
        &mut [&mut hash, &mut both, &mut all, &mut local],
    )
    .await;
    warm_up(&mut publisher, "$app/x", &mut [&mut dollar]).await;
    warm_up(
        &mut publisher,
        ODD,
        &mut [&mut odd, &mut odd_wild, &mut all],
    )
    .await;

    const N: usize = 20;
    publish_each(&mut publisher, &["c/b", "c", "c/b/deep", "$app/x", ODD], N).await;

    assert_eq!(collect(&mut exact, N).await, once_each(&["c/b"], N));
    assert_eq!(collect(&mut plus, N).await, once_each(&["c/b"], N));
    // `#` also matches the parent level `c` (MQTT-4.7.1-2): NATS's `>` does not, so a node
    // subscribes to the parent's subject too.
    let family = once_each(&["c/b", "c", "c/b/deep"], N);
    assert_eq!(collect(&mut hash, 3 * N).await, family);
    assert_eq!(collect(&mut both, 3 * N).await, family);
    assert_eq!(collect(&mut local, 3 * N).await, family);
    // `#` does not match `$` topics (MQTT-4.7.2-1), though its NATS subject does.
    assert_eq!(
        collect(&mut all, 4 * N).await,
        once_each(&["c/b", "c", "c/b/deep", ODD], N)
    );
    assert_eq!(collect(&mut dollar, N).await, once_each(&["$app/x"], N));
    assert_eq!(collect(&mut odd, N).await, once_each(&[ODD], N));
    assert_eq!(collect(&mut odd_wild, N).await, once_each(&[ODD], N));

    // And back: B's message reaches A's subscriber once, and B's own once (not echoed).
    let mut b_publisher = client(&b, "b-pub", &[]).await;
    warm_up(&mut b_publisher, "c/from-b", &mut [&mut local, &mut hash]).await;
    publish_each(&mut b_publisher, &["c/from-b"], N).await;
    assert_eq!(collect(&mut local, N).await, once_each(&["c/from-b"], N));
    assert_eq!(collect(&mut hash, N).await, once_each(&["c/from-b"], N));
}

/// How many messages the NATS server has received from the node's main connection.
fn nats_messages_from(nats: &NatsServer, node: &BrokerHandle) -> u64 {
    node_connection(nats, node).expect("the node's connection")["in_msgs"]
        .as_u64()
        .expect("in_msgs")
}

/// MQTT-4.6.0-6: a burst that crosses nodes keeps its order, topic by topic and across
/// topics; the node sends it in batches, fewer NATS messages than MQTT ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mqtt_4_6_0_6_a_qos0_burst_crosses_nodes_whole_in_order_and_in_batches() {
    let nats = NatsServer::start();
    let a = node(&[&nats]).await;
    let b = node(&[&nats]).await;
    let mut subscriber = client(&b, "b-sub", &["burst/+"]).await;
    let mut publisher = client(&a, "a-pub", &[]).await;
    warm_up(&mut publisher, "burst/x", &mut [&mut subscriber]).await;

    // Runs on one topic, and topics taking turns message by message.
    const N: usize = 3000;
    let sent: Vec<(String, String)> = (0..N)
        .map(|i| {
            let topic = match i {
                ..1000 => "burst/a",
                1000..2000 => "burst/b",
                _ if i % 2 == 0 => "burst/a",
                _ => "burst/b",
            };
            (topic.to_owned(), format!("{topic}#{i}"))
        })
        .collect();
    let before = nats_messages_from(&nats, &a);
    publisher
        .publish_together(
            sent.iter()
                .map(|(topic, payload)| message(topic, payload, QoS::AtMostOnce)),
        )
        .await;
    let mut received = Vec::new();
    recv_until_quiet(&mut subscriber, N, WAIT, QUIET, |publish| {
        if payload_str(&publish).starts_with(PROBE) {
            return false;
        }
        received.push((topic_str(&publish), payload_str(&publish)));
        true
    })
    .await;
    assert_eq!(received.len(), N, "every message, once");
    assert!(received == sent, "in the order published");
    let nats_messages = nats_messages_from(&nats, &a) - before;
    // Heartbeats and the like go on the same connection: a few more.
    assert!(
        nats_messages < N as u64 / 2,
        "{nats_messages} NATS messages for {N} MQTT ones"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_qos0_message_published_on_another_node_right_after_suback_reaches_the_subscriber()
 {
    let nats = NatsServer::start();
    let a = node(&[&nats]).await;
    let b = node(&[&nats]).await;
    let mut publisher = client(&a, "a-pub", &[]).await;
    // Each filter with a first level of its own: B makes a NATS subscription for each, and
    // its SUBACK is the first thing the test waits for; no warm-up.
    for i in 0..30 {
        let topic = format!("fresh-{i}/t");
        let mut subscriber = client(&b, &format!("b-sub-{i}"), &[topic.as_str()]).await;
        publisher
            .publish(message(&topic, &format!("m-{i}"), QoS::AtMostOnce))
            .await;
        let received = subscriber
            .recv_within(WAIT)
            .await
            .unwrap_or_else(|| panic!("{topic}: nothing within {WAIT:?} of the SUBACK"));
        assert_eq!(payload_str(&received), format!("m-{i}"));
    }
}

/// The subjects the node's NATS connection `rallymq-{node id}{suffix}` is subscribed to (`""`:
/// its main one; `-shares`: the shared groups' queue subscriptions), from the server's
/// monitoring port.
fn connection_subjects(nats: &NatsServer, node: &BrokerHandle, suffix: &str) -> Vec<String> {
    let name = format!(
        "rallymq-{}{suffix}",
        node.node_id().expect("a cluster node")
    );
    let body = nats
        .monitor("/connz?subs=1")
        .expect("the monitoring port answers");
    let connz: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let mut subjects: Vec<String> = connz["connections"]
        .as_array()
        .expect("connections")
        .iter()
        .filter(|connection| connection["name"] == name.as_str())
        .flat_map(|connection| {
            connection["subscriptions_list"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|subject| subject.as_str().map(str::to_owned))
        // Not the NATS client's own reply inboxes (JetStream requests, the KV watch).
        .filter(|subject| subject.starts_with("rmq.m."))
        .collect();
    subjects.sort();
    subjects
}

/// Waits (bounded) until the node's subscriptions are `expected`.
async fn wait_for_subjects(nats: &NatsServer, node: &BrokerHandle, expected: &[&str]) {
    wait_for_connection_subjects(nats, node, "", expected).await;
}

/// Waits (bounded) until the subscriptions of the node's connection `suffix` (see
/// [`connection_subjects`]) are `expected`.
async fn wait_for_connection_subjects(
    nats: &NatsServer,
    node: &BrokerHandle,
    suffix: &str,
    expected: &[&str],
) {
    let deadline = Instant::now() + WAIT;
    loop {
        let subjects = connection_subjects(nats, node, suffix);
        if subjects == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the node's NATS subscriptions are {subjects:?}, not {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_node_subscribes_once_per_distinct_filter_until_its_last_holder_goes() {
    let nats = NatsServer::start();
    let b = node(&[&nats]).await;
    let mut one = client(&b, "one", &["s/#", "$share/g/s/#"]).await;
    let mut two = client(&b, "two", &["s/#"]).await;
    let in_process = b.subscribe("s/#", QoS::AtMostOnce).expect("valid filter");
    // `$SYS` is each node's own.
    let _sys = client(&b, "sys", &["$SYS/#"]).await;
    wait_for_subjects(&nats, &b, &["rmq.m.s", "rmq.m.s.>"]).await;

    // The shared subscription is a queue subscription of its own (on the node's second
    // connection), not a holder of the plain filter.
    wait_for_connection_subjects(&nats, &b, "-shares", &["rmq.m.s", "rmq.m.s.>"]).await;
    one.unsubscribe("s/#").await;
    two.disconnect(ReasonCode::Success).await;
    drop(in_process);
    wait_for_subjects(&nats, &b, &[]).await;
    one.unsubscribe("$share/g/s/#").await;
    wait_for_connection_subjects(&nats, &b, "-shares", &[]).await;
    let mut again = client(&b, "again", &["s/+"]).await;
    wait_for_subjects(&nats, &b, &["rmq.m.s.*"]).await;
    again.disconnect(ReasonCode::Success).await;
    wait_for_subjects(&nats, &b, &[]).await;
}

/// A NATS server, nodes A and B on it, and a client of A to publish.
async fn two_nodes_and_a_publisher() -> (
    NatsServer,
    BrokerHandle,
    BrokerHandle,
    TestClient<TcpStream>,
) {
    let nats = NatsServer::start();
    let a = node(&[&nats]).await;
    let b = node(&[&nats]).await;
    let publisher = client(&a, "a-pub", &[]).await;
    (nats, a, b, publisher)
}

/// How many filters of one first level a node subscribes to one by one on NATS
/// (`PRECISE_PER_LEVEL` in `src/cluster/mod.rs`).
const PRECISE_PER_LEVEL: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_node_covers_a_crowded_level_with_one_subscription() {
    let (nats, _a, b, mut publisher) = two_nodes_and_a_publisher().await;
    // One client per filter, as devices with a topic of their own.
    let mut own = Vec::new();
    for i in 0..PRECISE_PER_LEVEL {
        own.push(client(&b, &format!("b-{i}"), &[&format!("f/{i}")]).await);
    }
    let precise: Vec<String> = (0..PRECISE_PER_LEVEL)
        .map(|i| format!("rmq.m.f.{i}"))
        .collect();
    let precise: Vec<&str> = precise.iter().map(String::as_str).collect();
    wait_for_subjects(&nats, &b, &precise).await;
    // One filter more: the whole level instead.
    own.push(client(&b, "b-last", &["f/last"]).await);
    let mut overlapping = client(&b, "b-overlapping", &["f/+", "+/0"]).await;
    wait_for_subjects(&nats, &b, &["rmq.m.*.0", "rmq.m.f", "rmq.m.f.>"]).await;

    let topics: Vec<String> = (0..PRECISE_PER_LEVEL)
        .map(|i| format!("f/{i}"))
        .chain(["f/last".to_owned()])
        .collect();
    for (topic, client) in topics.iter().zip(&mut own) {
        warm_up(&mut publisher, topic, &mut [client]).await;
    }
    const N: usize = 10;
    let mut all: Vec<&str> = topics.iter().map(String::as_str).collect();
    // Received by B through the level's subscription, wanted by no client there but
    // `b-overlapping` (`f/+`): `f` and `f/x/y` none.
    all.extend(["f", "f/unheld", "f/x/y"]);
    publish_each(&mut publisher, &all, N).await;
    for (topic, client) in topics.iter().zip(&mut own) {
        assert_eq!(collect(client, N).await, once_each(&[topic], N), "{topic}");
    }
    let mut overlapping_topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    overlapping_topics.push("f/unheld");
    assert_eq!(
        collect(&mut overlapping, (PRECISE_PER_LEVEL + 2) * N).await,
        once_each(&overlapping_topics, N)
    );

    // The level stays whole while it has filters, and goes with the last.
    overlapping.disconnect(ReasonCode::Success).await;
    let mut last = own.pop().expect("the last client");
    for client in &mut own {
        client.disconnect(ReasonCode::Success).await;
    }
    wait_for_subjects(&nats, &b, &["rmq.m.f", "rmq.m.f.>"]).await;
    publish_each(&mut publisher, &["f/0", "f/last"], N).await;
    assert_eq!(collect(&mut last, N).await, once_each(&["f/last"], N));
    last.disconnect(ReasonCode::Success).await;
    wait_for_subjects(&nats, &b, &[]).await;
}

/// How many NATS subscriptions a node keeps for its filters' levels (`MAX_SUBSCRIPTIONS` in
/// `src/cluster/mod.rs`).
const MAX_SUBSCRIPTIONS: usize = 256;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_node_with_too_many_levels_covers_every_topic_with_one_subscription() {
    let (nats, _a, b, mut publisher) = two_nodes_and_a_publisher().await;
    let mut other = client(&b, "b-other", &["other/+"]).await;
    // Filters with first levels of their own, as `{client id}/cmd`.
    let own: Vec<String> = (0..MAX_SUBSCRIPTIONS)
        .map(|i| format!("own-{i}/cmd"))
        .collect();
    let own: Vec<&str> = own.iter().map(String::as_str).collect();
    let mut many = client(&b, "b-many", &own).await;
    wait_for_subjects(&nats, &b, &["rmq.m.>"]).await;

    warm_up(&mut publisher, "own-7/cmd", &mut [&mut many]).await;
    warm_up(&mut publisher, "other/x", &mut [&mut other]).await;
    const N: usize = 10;
    publish_each(
        &mut publisher,
        &[
            "own-7/cmd",
            "own-7/unheld",
            "own-999/cmd",
            "other/x",
            "nobody",
        ],
        N,
    )
    .await;
    assert_eq!(collect(&mut many, N).await, once_each(&["own-7/cmd"], N));
    assert_eq!(collect(&mut other, N).await, once_each(&["other/x"], N));

    // Every topic stays covered while the node holds a filter.
    many.disconnect(ReasonCode::Success).await;
    tokio::time::sleep(QUIET).await;
    wait_for_subjects(&nats, &b, &["rmq.m.>"]).await;
    publish_each(&mut publisher, &["other/y"], N).await;
    assert_eq!(collect(&mut other, N).await, once_each(&["other/y"], N));
    other.disconnect(ReasonCode::Success).await;
    wait_for_subjects(&nats, &b, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_nodes_on_three_routed_nats_servers_share_messages() {
    let servers = NatsServer::cluster(3);
    // Each node knows one server first and the others as fallbacks.
    let a = node(&[&servers[0], &servers[1]]).await;
    let b = node(&[&servers[1], &servers[2]]).await;
    let c = node(&[&servers[2], &servers[0]]).await;
    let mut on_b = client(&b, "on-b", &["r/+"]).await;
    let mut on_c = client(&c, "on-c", &["r/#"]).await;
    let mut on_a = client(&a, "on-a", &["r/from-c"]).await;
    let mut from_a = client(&a, "from-a", &[]).await;
    let mut from_c = client(&c, "from-c", &[]).await;

    warm_up(&mut from_a, "r/x", &mut [&mut on_b, &mut on_c]).await;
    warm_up(
        &mut from_c,
        "r/from-c",
        &mut [&mut on_a, &mut on_b, &mut on_c],
    )
    .await;
    const N: usize = 50;
    publish_each(&mut from_a, &["r/x", "r"], N).await;
    publish_each(&mut from_c, &["r/from-c"], N).await;
    assert_eq!(
        collect(&mut on_b, 2 * N).await,
        once_each(&["r/x", "r/from-c"], N)
    );
    assert_eq!(
        collect(&mut on_c, 3 * N).await,
        once_each(&["r/x", "r", "r/from-c"], N)
    );
    assert_eq!(collect(&mut on_a, N).await, once_each(&["r/from-c"], N));
}

#[tokio::test]
async fn cluster_start_fails_when_no_nats_server_answers() {
    let port = rallymq_test_support::free_port();
    let error = rallymq_broker::Broker::start(rallymq_broker::BrokerConfig {
        cluster: Some(ClusterConfig::new([format!("nats://127.0.0.1:{port}")])),
        ..rallymq_broker::BrokerConfig::default()
    })
    .await
    .expect_err("no NATS server there");
    assert!(
        matches!(error, rallymq_broker::Error::Cluster(_)),
        "{error}"
    );
}

/// Subscribes a fresh client on `node` to `topic` again and again (bounded) until the retained
/// message it gets is `expected` (`None`: no retained message at all).
async fn wait_for_retained(node: &BrokerHandle, topic: &str, expected: Option<&str>) {
    let deadline = Instant::now() + WAIT;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut fresh = client(node, &format!("fresh-{attempt}"), &[topic]).await;
        // Only what comes with RETAIN set, as a retained message does at SUBSCRIBE.
        let got = fresh
            .recv_within(Duration::from_millis(200))
            .await
            .filter(|publish| publish.retain)
            .map(|publish| payload_str(&publish));
        fresh.disconnect(ReasonCode::Success).await;
        if got.as_deref() == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{topic:?}: retained {got:?}, not {expected:?}, within {WAIT:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_retained_messages_reach_running_and_later_nodes_through_the_kv_bucket() {
    let nats = NatsServer::start();
    let a = node(&[&nats]).await;
    let b = node(&[&nats]).await;
    let mut publisher = client(&a, "retainer", &[]).await;
    let mut retained = message("ret/dot.ted topic", "v1", QoS::AtLeastOnce);
    retained.retain = true;
    publisher.publish(retained.clone()).await;
    retained.payload = "v2".into();
    publisher.publish(retained.clone()).await;
    // In the bucket, under the topic's key.
    let key = "ret.dot=2Eted=20topic";
    let bucket =
        async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("NATS answers"))
            .get_key_value("rallymq_retained")
            .await
            .expect("the bucket exists");
    let deadline = Instant::now() + WAIT;
    loop {
        let value = bucket.get(key).await.expect("the bucket answers");
        if value.is_some_and(|value| value.ends_with(b"v2")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "v2 is not in the bucket within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // B had no subscriber when it was published, nor while the message crossed (long done
    // after QUIET): B has it from the bucket, not from the message itself.
    tokio::time::sleep(QUIET).await;
    wait_for_retained(&b, "ret/dot.ted topic", Some("v2")).await;
    // A node started afterwards reads every topic's last value at its start.
    let c = node(&[&nats]).await;
    wait_for_retained(&c, "ret/dot.ted topic", Some("v2")).await;
    // Cleared on A (empty payload): cleared everywhere.
    retained.payload = "".into();
    publisher.publish(retained).await;
    wait_for_retained(&b, "ret/dot.ted topic", None).await;
    wait_for_retained(&c, "ret/dot.ted topic", None).await;
    let d = node(&[&nats]).await;
    wait_for_retained(&d, "ret/dot.ted topic", None).await;
}

/// A node gone for longer than the stream keeps messages (its `max_age`) has its consumer
/// removed by NATS (the consumer's inactive threshold); a live node's stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_gone_nodes_consumer_is_removed_after_the_streams_max_age() {
    let nats = NatsServer::start();
    let short = |id: &str| {
        let (url, id) = (nats.url(), id.to_owned());
        start_broker(move |config| {
            config.cluster = Some(ClusterConfig {
                node_id: Some(id),
                stream: StreamSettings {
                    max_age: Duration::from_secs(2),
                    ..StreamSettings::default()
                },
                ..ClusterConfig::new([url])
            });
        })
    };
    let stays = short("stays").await;
    let gone = short("gone").await;
    let stream = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("NATS"))
        .get_stream("rallymq_messages")
        .await
        .expect("the stream");
    for name in ["node-stays", "node-gone"] {
        assert!(stream.consumer_info(name).await.is_ok(), "{name} made");
    }
    gone.shutdown(Duration::from_millis(100)).await;
    let deadline = Instant::now() + WAIT;
    while stream.consumer_info("node-gone").await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the gone node's consumer still there {WAIT:?} after it left"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Longer than the threshold and than a pull request lasts (5 s): pulling keeps it.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(
        stream.consumer_info("node-stays").await.is_ok(),
        "the live node's consumer stays"
    );
    // And still delivers: a QoS 1 message goes through the stream and its consumer.
    let mut subscriber = subscribed_client(&stays, "keeper", &["keep/t"], QoS::AtLeastOnce).await;
    let mut publisher = client(&stays, "keep-pub", &[]).await;
    publisher
        .publish(message("keep/t", "still", QoS::AtLeastOnce))
        .await;
    let got = subscriber.recv().await.map(|publish| payload_str(&publish));
    assert_eq!(got.as_deref(), Some("still"));
}

/// A retained message's Message Expiry counts from when the bucket stored it, on every node:
/// a node started after it expired does not serve it (it served it for the whole interval
/// again, counted from its start), and one still alive is sent with what is left of its
/// interval (MQTT-3.3.2-6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mqtt_3_3_2_5_a_retained_message_expires_from_when_the_cluster_stored_it() {
    let nats = NatsServer::start();
    let a = node(&[&nats]).await;
    let mut publisher = client(&a, "expirer", &[]).await;
    for (topic, payload, expiry) in [
        ("exp/short", "expires", Some(2)),
        ("exp/long", "lasts", Some(60)),
        ("exp/kept", "stays", None),
    ] {
        let mut retained = message(topic, payload, QoS::AtLeastOnce);
        retained.retain = true;
        retained.properties.message_expiry_interval = expiry;
        publisher.publish(retained).await;
    }
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let late = node(&[&nats]).await;
    // The bucket's history comes in order: once the last is there, the others were read.
    wait_for_retained(&late, "exp/kept", Some("stays")).await;
    let mut fresh = client(&late, "exp-short-reader", &["exp/short"]).await;
    fresh.expect_silence(QUIET).await;
    let mut fresh = client(&late, "exp-reader", &["exp/long"]).await;
    let long = fresh
        .recv()
        .await
        .expect("the retained message still alive");
    let left = long
        .properties
        .message_expiry_interval
        .expect("its Message Expiry Interval");
    assert!(left <= 57, "what is left of 60 s after 3 s: {left}");
}

/// The server's monitoring entry of a node's main NATS connection.
fn node_connection(nats: &NatsServer, node: &BrokerHandle) -> Option<serde_json::Value> {
    let name = format!("rallymq-{}", node.node_id()?);
    let connz: serde_json::Value = serde_json::from_str(&nats.monitor("/connz")?).ok()?;
    connz["connections"]
        .as_array()?
        .iter()
        .find(|connection| connection["name"] == name.as_str())
        .cloned()
}

/// The NATS connection id (`cid`) of a node, from the server's monitoring port.
fn node_connection_id(nats: &NatsServer, node: &BrokerHandle) -> Option<u64> {
    node_connection(nats, node)?["cid"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_topic_too_long_for_a_nats_subject_stays_local_and_the_link_stays_up() {
    let nats = NatsServer::start();
    let a = node(&[&nats]).await;
    let b = node(&[&nats]).await;
    let mut on_b = client(&b, "on-b", &["#"]).await;
    let mut on_a = client(&a, "on-a", &["#"]).await;
    let mut publisher = client(&a, "pub", &[]).await;
    warm_up(&mut publisher, "short", &mut [&mut on_b, &mut on_a]).await;
    let before = node_connection_id(&nats, &a).expect("A is connected to NATS");
    // 2,000 dots are 6,000 bytes of subject: past the server's 4 KiB protocol line, which
    // would make it close A's connection.
    let long = format!("long/{}", ".".repeat(2000));
    publisher
        .publish(message(&long, "long", QoS::AtMostOnce))
        .await;
    publish_each(&mut publisher, &["short"], 5).await;
    assert_eq!(collect(&mut on_b, 5).await, once_each(&["short"], 5));
    let mut expected = once_each(&["short"], 5);
    expected.insert((long, "long".to_owned()), 1);
    assert_eq!(
        collect(&mut on_a, 6).await,
        expected,
        "local delivery is unaffected"
    );
    assert_eq!(
        node_connection_id(&nats, &a),
        Some(before),
        "A's NATS connection stayed up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_node_leaves_nats_when_shut_down_or_dropped() {
    let nats = NatsServer::start();
    for shut_down in [true, false] {
        let node = node(&[&nats]).await;
        let mut subscriber = client(&node, "holder", &["x/#"]).await;
        wait_for_subjects(&nats, &node, &["rmq.m.x", "rmq.m.x.>"]).await;
        assert!(node_connection_id(&nats, &node).is_some());
        let name = format!("rallymq-{}", node.node_id().expect("a node id"));
        subscriber.kill();
        if shut_down {
            node.shutdown(Duration::from_millis(100)).await;
        } else {
            drop(node);
        }
        let deadline = Instant::now() + WAIT;
        while nats
            .monitor("/connz")
            .is_some_and(|connz| connz.contains(&format!("\"{name}\"")))
        {
            assert!(
                Instant::now() < deadline,
                "{name} still connected to NATS {WAIT:?} after its broker went (shut down: {shut_down})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A data directory in the temporary directory, removed when dropped.
struct DataDir(std::path::PathBuf);

impl DataDir {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "rallymq-cluster-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        Self(path)
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A node with a disk store in `dir` and the node id `id`, on `servers`.
async fn stored_node(servers: &[&NatsServer], id: &str, dir: &DataDir) -> BrokerHandle {
    let urls: Vec<String> = servers.iter().map(|server| server.url()).collect();
    let id = id.to_owned();
    let dir = dir.0.clone();
    start_broker(move |config| {
        config.storage = rallymq_broker::Storage::Directory(dir);
        config.cluster = Some(ClusterConfig {
            node_id: Some(id),
            ..ClusterConfig::new(urls)
        });
    })
    .await
}

/// A client subscribed with QoS `qos` to each of `filters`.
async fn subscriber(
    node: &BrokerHandle,
    connect: rallymq_codec::Connect,
    filters: &[&str],
    qos: QoS,
) -> (TestClient<TcpStream>, bool) {
    let (mut client, present) = connected_present(tcp_addr(node), connect).await;
    let subscriptions = filters
        .iter()
        .map(|filter| subscription(filter, qos))
        .collect();
    client.subscribe(subscriptions).await;
    (client, present)
}

/// Publishes `payloads` on `topic` with `qos`, each acknowledged with success.
async fn publish_acknowledged(
    publisher: &mut TestClient<TcpStream>,
    topic: &str,
    payloads: impl IntoIterator<Item = String>,
    qos: QoS,
) {
    for payload in payloads {
        let code = publisher.publish(message(topic, &payload, qos)).await;
        assert!(
            matches!(
                code,
                ReasonCode::Success | ReasonCode::NoMatchingSubscribers
            ),
            "{payload}: {code:?}"
        );
    }
}

/// The payloads the client receives until it has `expected` and stays quiet for [`QUIET`], in
/// the order they arrived.
async fn payloads(client: &mut TestClient<TcpStream>, expected: usize) -> Vec<String> {
    payloads_until_quiet(client, expected, QUIET).await
}

fn numbered(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mqtt_4_3_2_qos1_crosses_nodes_at_least_once_in_order_through_the_stream() {
    let nats = NatsServer::start();
    let a = node(&[&nats]).await;
    let b = node(&[&nats]).await;
    let (mut on_b, _) = subscriber(
        &b,
        connect_packet(ProtocolVersion::V5, "b-sub"),
        &["q1/#"],
        QoS::AtLeastOnce,
    )
    .await;
    let (mut on_a, _) = subscriber(
        &a,
        connect_packet(ProtocolVersion::V5, "a-sub"),
        &["q1/#"],
        QoS::AtLeastOnce,
    )
    .await;
    let (mut publisher, _) =
        TestClient::tcp(tcp_addr(&a), connect_packet(ProtocolVersion::V5, "a-pub")).await;
    // No warm-up: the stream keeps what B has not read yet, whatever NATS's interest.
    const N: usize = 50;
    publish_acknowledged(
        &mut publisher,
        "q1/t",
        numbered("m", 0..N),
        QoS::AtLeastOnce,
    )
    .await;
    let expected = numbered("m", 0..N);
    assert_eq!(payloads(&mut on_b, N).await, expected);
    // A's own subscriber gets A's messages from A, and not a second time from the stream.
    assert_eq!(payloads(&mut on_a, N).await, expected);
    let received = on_b.events.len();
    assert_eq!(received, 0, "nothing else queued");
    // They went through the stream (acknowledged before PUBACK), not core NATS.
    assert_eq!(stream_messages(&nats), Some(N as u64));
}

/// How many messages the stream of QoS 1 and 2 messages holds, from the server's `/jsz`.
fn stream_messages(nats: &NatsServer) -> Option<u64> {
    nats.stream_detail("rallymq_messages")?["state"]["messages"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mqtt_4_3_3_qos2_crosses_nodes_exactly_once() {
    let nats = NatsServer::start();
    let a = node(&[&nats]).await;
    let b = node(&[&nats]).await;
    let c = node(&[&nats]).await;
    // Overlapping filters on B: one copy per subscriber all the same.
    let (mut hash, _) = subscriber(
        &b,
        connect_packet(ProtocolVersion::V5, "b-hash"),
        &["q2/#"],
        QoS::ExactlyOnce,
    )
    .await;
    let (mut plus, _) = subscriber(
        &b,
        connect_packet(ProtocolVersion::V5, "b-plus"),
        &["q2/+"],
        QoS::ExactlyOnce,
    )
    .await;
    let (mut on_c, _) = subscriber(
        &c,
        connect_packet(ProtocolVersion::V3_1_1, "c-sub"),
        &["q2/x"],
        QoS::ExactlyOnce,
    )
    .await;
    let (mut publisher, _) =
        TestClient::tcp(tcp_addr(&a), connect_packet(ProtocolVersion::V5, "a-pub")).await;
    const N: usize = 30;
    for i in 0..N {
        publisher
            .publish(message("q2/x", &format!("q2/x#{i}"), QoS::ExactlyOnce))
            .await;
    }
    for client in [&mut hash, &mut plus, &mut on_c] {
        assert_eq!(collect(client, N).await, once_each(&["q2/x"], N));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_qos1_published_while_a_node_is_down_reaches_its_persistent_subscriber_in_order() {
    let nats = NatsServer::start();
    let dir = DataDir::new("restart");
    let a = node(&[&nats]).await;
    let b = stored_node(&[&nats], "node-b", &dir).await;
    let connect = || persistent_connect(ProtocolVersion::V5, "b-persistent", 600);
    let (mut sub, _) = subscriber(&b, connect(), &["r/#"], QoS::AtLeastOnce).await;
    let (mut first, _) =
        TestClient::tcp(tcp_addr(&a), connect_packet(ProtocolVersion::V5, "a-pub-1")).await;
    let (mut second, _) =
        TestClient::tcp(tcp_addr(&a), connect_packet(ProtocolVersion::V5, "a-pub-2")).await;
    publish_acknowledged(&mut first, "r/1", numbered("1-", 0..5), QoS::AtLeastOnce).await;
    assert_eq!(payloads(&mut sub, 5).await, numbered("1-", 0..5));

    // The subscriber goes, then its node; both publishers go on meanwhile.
    sub.disconnect(ReasonCode::Success).await;
    publish_acknowledged(&mut first, "r/1", numbered("1-", 5..15), QoS::AtLeastOnce).await;
    b.shutdown(Duration::from_secs(1)).await;
    for i in 15..60 {
        publish_acknowledged(&mut first, "r/1", [format!("1-{i}")], QoS::AtLeastOnce).await;
        publish_acknowledged(&mut second, "r/2", [format!("2-{i}")], QoS::AtLeastOnce).await;
    }

    // Back under the same id: its consumer resumes where it acknowledged.
    let b = stored_node(&[&nats], "node-b", &dir).await;
    publish_acknowledged(&mut second, "r/2", numbered("2-", 60..70), QoS::AtLeastOnce).await;
    let (mut sub, present) = connected_present(tcp_addr(&b), connect()).await;
    assert!(present, "the session was kept on B's disk");
    let received = payloads(&mut sub, 10 + 45 + 55).await;
    let from = |prefix: &str| -> Vec<String> {
        // At least once: what B routed but had not acknowledged to the stream when it stopped
        // comes again; first copies must all be there, in order.
        let mut first = Vec::new();
        for payload in received.iter().filter(|p| p.starts_with(prefix)) {
            if !first.contains(payload) {
                first.push(payload.clone());
            }
        }
        first
    };
    assert_eq!(from("1-"), numbered("1-", 5..60));
    assert_eq!(from("2-"), numbered("2-", 15..70));
}

/// Exactly once across restarts of the receiving node: what it routed into its store but had
/// not yet acknowledged to the stream when it stopped comes again at its restart, and is not
/// routed a second time (the store keeps the last routed stream sequence with the routing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mqtt_4_3_3_qos2_crosses_exactly_once_across_restarts_of_the_receiving_node() {
    const ROUNDS: usize = 4;
    const PER_ROUND: usize = 60;
    let nats = NatsServer::start();
    let dir = DataDir::new("exactly-once");
    let a = node(&[&nats]).await;
    let mut b = stored_node(&[&nats], "node-b2", &dir).await;
    let connect = || persistent_connect(ProtocolVersion::V5, "b-exactly-once", 600);
    let (mut sub, _) = subscriber(&b, connect(), &["x/#"], QoS::ExactlyOnce).await;
    let (mut publisher, _) =
        TestClient::tcp(tcp_addr(&a), connect_packet(ProtocolVersion::V5, "a-pub-x")).await;
    publish_acknowledged(
        &mut publisher,
        "x/1",
        numbered("p-", 0..5),
        QoS::ExactlyOnce,
    )
    .await;
    assert_eq!(payloads(&mut sub, 5).await, numbered("p-", 0..5));
    sub.disconnect(ReasonCode::Success).await;

    // Each round, node B stops while the messages of a burst are still reaching it.
    for round in 0..ROUNDS {
        let from = 5 + round * PER_ROUND;
        let burst = tokio::spawn(async move {
            let payloads = numbered("p-", from..from + PER_ROUND);
            publish_acknowledged(&mut publisher, "x/1", payloads, QoS::ExactlyOnce).await;
            publisher
        });
        tokio::time::sleep(Duration::from_millis(15)).await;
        b.shutdown(Duration::from_millis(100)).await;
        publisher = burst.await.expect("the burst's publisher");
        b = stored_node(&[&nats], "node-b2", &dir).await;
    }

    let total = 5 + ROUNDS * PER_ROUND;
    let (mut sub, present) = connected_present(tcp_addr(&b), connect()).await;
    assert!(present, "the session was kept on B's disk");
    let received = payloads(&mut sub, total - 5).await;
    assert_eq!(
        received,
        numbered("p-", 5..total),
        "each QoS 2 message once, in order"
    );
}

/// A node that comes back with its store to a stream made anew (a new NATS cluster) does not
/// skip the new stream's first messages as if it had routed them: its kept place was in the
/// old stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_node_back_with_its_store_to_a_new_stream_reads_it_from_the_start() {
    let dir = DataDir::new("new-stream");
    let connect = || persistent_connect(ProtocolVersion::V5, "b-new-stream", 600);
    let old_nats = NatsServer::start();
    let a = node(&[&old_nats]).await;
    let b = stored_node(&[&old_nats], "node-b3", &dir).await;
    let (mut sub, _) = subscriber(&b, connect(), &["n/#"], QoS::AtLeastOnce).await;
    let (mut publisher, _) =
        TestClient::tcp(tcp_addr(&a), connect_packet(ProtocolVersion::V5, "a-pub-n")).await;
    publish_acknowledged(
        &mut publisher,
        "n/1",
        numbered("old-", 0..20),
        QoS::AtLeastOnce,
    )
    .await;
    assert_eq!(payloads(&mut sub, 20).await, numbered("old-", 0..20));
    sub.disconnect(ReasonCode::Success).await;
    b.shutdown(Duration::from_secs(1)).await;
    drop(publisher);
    a.shutdown(Duration::from_secs(1)).await;
    drop(old_nats);

    let new_nats = NatsServer::start();
    let a = node(&[&new_nats]).await;
    let b = stored_node(&[&new_nats], "node-b3", &dir).await;
    let (mut publisher, _) =
        TestClient::tcp(tcp_addr(&a), connect_packet(ProtocolVersion::V5, "a-pub-n")).await;
    publish_acknowledged(
        &mut publisher,
        "n/1",
        numbered("new-", 0..10),
        QoS::AtLeastOnce,
    )
    .await;
    let (mut sub, present) = connected_present(tcp_addr(&b), connect()).await;
    assert!(present, "the session was kept on B's disk");
    assert_eq!(payloads(&mut sub, 10).await, numbered("new-", 0..10));
}
