//! Cluster mode (issue 17): node heartbeats, the wills of a dead node's clients, and the
//! cluster in `$SYS` and the admin API, with a real `nats-server` (Debian's package; a missing
//! one fails the tests).
//!
//! A node that must die for real runs in a child process ([`support::child::ChildNode`]), killed
//! with SIGKILL.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::Store;
use bytes::Bytes;
use futures::TryStreamExt;
use rallymq_broker::{BrokerHandle, ClusterConfig, ListenerKind};
use rallymq_codec::{
    Ack, Connect, Packet, PacketId, ProtocolVersion, Publish, QoS, ReasonCode, Subscribe,
    TopicName, Will,
};
use rallymq_test_support::NatsServer;
use serde_json::Value;
use support::child::ChildNode;
use support::{
    NoPacket, Raw, TestClient, WAIT, connect_packet, connected_present, http, message, payload_str,
    persistent_connect, recv_until_quiet, start_broker, subscription, tcp_addr, topic_str,
};
use tokio::net::TcpStream;

const V5: ProtocolVersion = ProtocolVersion::V5;

/// How long a dead node takes to be seen dead (3 missed beats of 1 s) and its wills to be
/// claimed, with room for a loaded machine.
const DETECTION: Duration = Duration::from_secs(10);

/// How long a client stays silent before it is taken to have received all it will.
const QUIET: Duration = Duration::from_millis(1500);

/// Payloads of warm-up messages start with this; counts ignore them.
const PROBE: &str = "probe";

/// Not a test: the body of a child node (see [`support::child`]). Ignored, so that it runs only
/// when a test starts it with `--ignored --exact child_node`.
#[test]
#[ignore = "run by the tests of this file in a child process"]
fn child_node() {
    support::child::run_child_node();
}

async fn in_process_node(nats: &NatsServer, id: &str, sys: bool) -> BrokerHandle {
    start_broker(|config| {
        config.cluster = Some(ClusterConfig {
            node_id: Some(id.to_owned()),
            ..ClusterConfig::new([nats.url()])
        });
        if sys {
            config.sys_interval = Some(Duration::from_secs(1));
        }
    })
    .await
}

/// A CONNECT with a will on `wills/<id>`, payload `<id> gone`.
fn with_will(id: &str, qos: QoS, retain: bool, delay: u32) -> Connect {
    let mut connect = persistent_connect(V5, id, 60);
    let mut will = Will::new(
        TopicName::new(format!("wills/{id}")).unwrap(),
        Bytes::from(format!("{id} gone")),
    );
    will.qos = qos;
    will.retain = retain;
    if delay > 0 {
        will.properties.will_delay_interval = Some(delay);
    }
    connect.will = Some(will);
    connect
}

async fn connect(addr: SocketAddr, connect: Connect) -> TestClient<TcpStream> {
    let (client, _) = TestClient::tcp(addr, connect).await;
    client
}

async fn buckets(nats: &NatsServer) -> (Store, Store) {
    let client = async_nats::connect(nats.url()).await.expect("NATS");
    let jetstream = async_nats::jetstream::new(client);
    let nodes = jetstream
        .get_key_value("rallymq_nodes")
        .await
        .expect("the nodes bucket");
    let wills = jetstream
        .get_key_value("rallymq_wills")
        .await
        .expect("the wills bucket");
    (nodes, wills)
}

async fn keys(bucket: &Store) -> Vec<String> {
    let mut keys: Vec<String> = tokio::time::timeout(WAIT * 3, async {
        bucket
            .keys()
            .await
            .expect("keys")
            .try_collect()
            .await
            .expect("keys")
    })
    .await
    .expect("the keys within the wait");
    keys.sort();
    keys
}

/// Waits (at most `within`) until `check` holds, then returns its last value.
async fn eventually<T>(
    what: &str,
    within: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Publishes probes on `wills/probe` from `publisher` until `receiver` has one: a node
/// subscribes on NATS after SUBACK (see tests/cluster.rs).
async fn warm_up(publisher: &mut TestClient<TcpStream>, receiver: &mut TestClient<TcpStream>) {
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(
            Instant::now() < deadline,
            "no probe crossed within {WAIT:?}"
        );
        publisher
            .publish(message("wills/probe", PROBE, QoS::AtMostOnce))
            .await;
        if let Some(publish) = receiver.recv_within(Duration::from_millis(100)).await
            && payload_str(&publish).starts_with(PROBE)
        {
            // Drain the other probes.
            while receiver
                .recv_within(Duration::from_millis(200))
                .await
                .is_some()
            {}
            return;
        }
    }
}

/// Every will (topic -> copies and the first one's arrival) `client` receives until it has
/// `expected` and then stays quiet for [`QUIET`], or `within` ends.
async fn collect_wills(
    client: &mut TestClient<TcpStream>,
    expected: usize,
    within: Duration,
) -> BTreeMap<String, (usize, Instant)> {
    let mut received: BTreeMap<String, (usize, Instant)> = BTreeMap::new();
    recv_until_quiet(client, expected, within, QUIET, |publish| {
        if payload_str(&publish).starts_with(PROBE) {
            return false;
        }
        let entry = received
            .entry(topic_str(&publish))
            .or_insert((0, Instant::now()));
        entry.0 += 1;
        true
    })
    .await;
    received
}

/// A client of `addr` with a QoS 1 will on `wills/<id>` after `delay` seconds, once its will
/// is recorded in `wills` (the only record there).
async fn with_recorded_will(
    addr: SocketAddr,
    wills: &Store,
    id: &str,
    delay: u32,
) -> TestClient<TcpStream> {
    let client = connect(addr, with_will(id, QoS::AtLeastOnce, false, delay)).await;
    eventually("the will recorded", WAIT, async || {
        (keys(wills).await.len() == 1).then_some(())
    })
    .await;
    client
}

/// A client of `node` subscribed to `wills/#` at QoS 1.
async fn will_watcher(node: &BrokerHandle) -> TestClient<TcpStream> {
    let mut watcher = connect(tcp_addr(node), connect_packet(V5, "watcher")).await;
    watcher
        .subscribe(vec![subscription("wills/#", QoS::AtLeastOnce)])
        .await;
    watcher
}

/// How many copies of each topic [`collect_wills`] received.
fn copies(received: &BTreeMap<String, (usize, Instant)>) -> BTreeMap<String, usize> {
    received
        .iter()
        .map(|(topic, (n, _))| (topic.clone(), *n))
        .collect()
}

/// One copy of each of `topics`.
fn copies_of(topics: &[&str]) -> BTreeMap<String, usize> {
    topics.iter().map(|topic| (topic.to_string(), 1)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mqtt_3_1_2_8_wills_of_a_killed_node_are_published_once_after_their_delay() {
    let nats = NatsServer::start();
    let b = in_process_node(&nats, "node-b", true).await;
    let c = in_process_node(&nats, "node-c", false).await;
    let mut a = ChildNode::start(&nats, "node-a");
    let (nodes, wills) = buckets(&nats).await;

    let mut watcher = will_watcher(&b).await;
    let mut prober = connect(tcp_addr(&c), connect_packet(V5, "prober")).await;
    warm_up(&mut prober, &mut watcher).await;

    // On A: three clients whose wills are due when A dies, one that leaves normally.
    let _now = connect(a.addr, with_will("now", QoS::AtMostOnce, false, 0)).await;
    let _kept = connect(a.addr, with_will("kept", QoS::AtLeastOnce, true, 0)).await;
    let _later = connect(a.addr, with_will("later", QoS::AtLeastOnce, false, 6)).await;
    let mut polite = connect(a.addr, with_will("polite", QoS::AtLeastOnce, false, 0)).await;
    polite.disconnect(ReasonCode::Success).await;
    let recorded = eventually("the wills recorded in rallymq_wills", WAIT, async || {
        let keys = keys(&wills).await;
        (keys.len() == 3).then_some(keys)
    })
    .await;
    for (key, client) in recorded.iter().zip(["kept", "later", "now"]) {
        assert!(
            key.starts_with("node-a.") && key.ends_with(&format!(".{client}")),
            "{recorded:?}"
        );
    }
    assert_eq!(
        keys(&nodes).await,
        ["node-a", "node-b", "node-c"],
        "a heartbeat key per node"
    );
    watcher.expect_silence(Duration::from_millis(300)).await;

    a.kill();
    let killed = Instant::now();
    let received = collect_wills(&mut watcher, 3, DETECTION + Duration::from_secs(6)).await;
    let counts = copies(&received);
    assert_eq!(
        counts,
        copies_of(&["wills/kept", "wills/later", "wills/now"]),
        "each will of A's connected clients once, none of the client that disconnected"
    );
    let after = |topic: &str| received[topic].1.duration_since(killed);
    // The delay counts from the last heartbeat of A seen, at most a beat before the kill.
    assert!(
        after("wills/later") >= Duration::from_secs(5),
        "the will with a 6 s delay came {:?} after the kill",
        after("wills/later")
    );
    assert!(after("wills/now") < after("wills/later"), "{received:?}");

    // The retained will reached the retained bucket: a new subscriber on C has it.
    let mut late = connect(tcp_addr(&c), connect_packet(V5, "late")).await;
    late.subscribe(vec![subscription("wills/kept", QoS::AtLeastOnce)])
        .await;
    let retained = late.recv().await.expect("the retained will");
    assert_eq!(payload_str(&retained), "kept gone");
    assert!(retained.retain);

    // A's key and its will records are gone; one claim on its incarnation.
    let keys_now = eventually("A's heartbeat key deleted", WAIT, async || {
        let keys = keys(&nodes).await;
        (!keys.contains(&"node-a".to_owned())).then_some(keys)
    })
    .await;
    let claims: Vec<&String> = keys_now
        .iter()
        .filter(|k| k.starts_with("claim."))
        .collect();
    assert_eq!(claims.len(), 1, "{keys_now:?}");
    assert!(claims[0].starts_with("claim.node-a."), "{keys_now:?}");
    assert!(
        keys(&wills).await.is_empty(),
        "published wills' records deleted"
    );
    // The heartbeat keys show two live nodes.
    for id in ["node-b", "node-c"] {
        let beat: Value =
            serde_json::from_slice(&nodes.get(id).await.unwrap().expect("a beat")).unwrap();
        let beat_at = beat["beat_at"].as_u64().expect("beat_at");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(now.saturating_sub(beat_at) < 3000, "{id}: {beat}");
    }

    // $SYS on B counts two nodes, and shows C's clients.
    let mut sys = connect(tcp_addr(&b), connect_packet(V5, "sys")).await;
    sys.subscribe(vec![subscription("$SYS/broker/cluster/#", QoS::AtMostOnce)])
        .await;
    let mut topics = BTreeMap::new();
    let deadline = Instant::now() + WAIT;
    let said = |topics: &BTreeMap<String, String>, topic: &str, value: &str| {
        topics.get(topic).map(String::as_str) == Some(value)
    };
    while !said(&topics, "$SYS/broker/cluster/nodes", "2")
        || !said(&topics, "$SYS/broker/cluster/node/node-c/clients", "2")
    {
        let Some(publish) = sys
            .recv_within(deadline.saturating_duration_since(Instant::now()))
            .await
        else {
            panic!("no $SYS cluster topics saying 2 nodes, 2 clients on C: {topics:?}");
        };
        topics.insert(topic_str(&publish), payload_str(&publish));
    }
    assert!(
        topics.keys().all(
            |topic| !topic.starts_with("$SYS/broker/cluster/node/node-a/")
                || topics[topic].is_empty()
        ),
        "A's topics cleared: {topics:?}"
    );

    // The admin API of B lists the two live nodes.
    let ws = b
        .local_addr(ListenerKind::WebSocket)
        .expect("a ws listener");
    let reply = http(ws, "GET", "/api/v1/cluster", "").await;
    assert_eq!(reply.status, 200);
    let cluster: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(cluster["node_id"], "node-b", "{cluster}");
    assert_eq!(cluster["live_nodes"], 2, "{cluster}");
    let listed: BTreeMap<String, (bool, bool, u64)> = cluster["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|node| {
            (
                node["id"].as_str().unwrap().to_owned(),
                (
                    node["live"].as_bool().unwrap(),
                    node["this_node"].as_bool().unwrap(),
                    node["clients"].as_u64().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(
        listed,
        BTreeMap::from([
            ("node-b".to_owned(), (true, true, 2)),
            ("node-c".to_owned(), (true, false, 2)),
        ]),
        "{cluster}"
    );
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_clean_shutdown_publishes_no_will_twice() {
    let nats = NatsServer::start();
    let a = in_process_node(&nats, "node-a", false).await;
    let b = in_process_node(&nats, "node-b", false).await;
    let (nodes, wills) = buckets(&nats).await;
    let mut watcher = will_watcher(&b).await;
    let mut prober = connect(tcp_addr(&a), connect_packet(V5, "prober")).await;
    warm_up(&mut prober, &mut watcher).await;
    let _now = connect(tcp_addr(&a), with_will("now", QoS::AtLeastOnce, false, 0)).await;
    let _later = connect(
        tcp_addr(&a),
        with_will("later", QoS::AtLeastOnce, false, 30),
    )
    .await;
    eventually("two wills recorded", WAIT, async || {
        (keys(&wills).await.len() == 2).then_some(())
    })
    .await;

    a.shutdown(Duration::from_secs(2)).await;
    // As a single node: the will without delay goes as the broker closes the connection, the
    // delayed one waits for a next run that does not come (no store). Nobody else sends any.
    let received = collect_wills(&mut watcher, 1, WAIT).await;
    let counts = copies(&received);
    assert_eq!(counts, copies_of(&["wills/now"]));
    assert_eq!(keys(&nodes).await, ["node-b"], "A left: its key is deleted");
    // Long enough for B to have taken A for dead, had A not left.
    watcher.expect_silence(Duration::from_secs(5)).await;
    assert_eq!(keys(&nodes).await, ["node-b"], "no claim on A");
    assert!(keys(&wills).await.is_empty(), "A deleted its will records");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_node_restarted_under_its_id_has_its_previous_runs_wills_published_once() {
    let nats = NatsServer::start();
    let b = in_process_node(&nats, "node-b", false).await;
    let c = in_process_node(&nats, "node-c", false).await;
    let mut watcher = will_watcher(&b).await;
    let mut a = ChildNode::start(&nats, "node-a");
    let (_, wills) = buckets(&nats).await;
    let _gone = with_recorded_will(a.addr, &wills, "gone", 0).await;
    // Killed and back at once, before the others take it for dead: the new run's heartbeat
    // replaces the old one's.
    a.kill();
    let _a = ChildNode::start(&nats, "node-a");
    let received = collect_wills(&mut watcher, 1, DETECTION).await;
    let counts = copies(&received);
    assert_eq!(counts, copies_of(&["wills/gone"]));
    eventually("the will's record deleted", WAIT, async || {
        keys(&wills).await.is_empty().then_some(())
    })
    .await;
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mqtt_3_1_2_8_a_killed_node_with_a_store_does_not_publish_again_the_wills_the_cluster_published()
 {
    let nats = NatsServer::start();
    let b = in_process_node(&nats, "node-b", false).await;
    let mut watcher = will_watcher(&b).await;
    let data = support::credentials::TempDir::new("cluster-node-store");
    let data_dir = data.path("node-a");
    let mut a = ChildNode::start_with(&nats, "node-a", Some(&data_dir));
    let (_, wills) = buckets(&nats).await;
    // A persistent session: its record, will included, is in A's store.
    let _kept = with_recorded_will(a.addr, &wills, "kept", 1).await;
    a.kill();
    let received = collect_wills(&mut watcher, 1, DETECTION).await;
    assert_eq!(copies(&received), copies_of(&["wills/kept"]));
    // Back with its store: the session is restored, and its will (due a second after the
    // restart, as the single node counts it) is not published again.
    let a = ChildNode::start_with(&nats, "node-a", Some(&data_dir));
    watcher.expect_silence(Duration::from_secs(4)).await;
    let (_client, present) = connected_present(a.addr, persistent_connect(V5, "kept", 60)).await;
    assert!(present, "the session was restored from the store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mqtt_3_1_2_8_wills_whose_publisher_died_are_published_by_the_node_that_takes_its_claim_over()
 {
    let nats = NatsServer::start();
    // C takes 8 silent beats to call a node dead, B 3: B claims A's wills first.
    let c = start_broker(|config| {
        config.cluster = Some(ClusterConfig {
            node_id: Some("node-c".to_owned()),
            missed_beats: 8,
            ..ClusterConfig::new([nats.url()])
        });
    })
    .await;
    let mut watcher = will_watcher(&c).await;
    let mut a = ChildNode::start(&nats, "node-a");
    let mut b = ChildNode::start(&nats, "node-b");
    let (nodes, wills) = buckets(&nats).await;
    let _late = with_recorded_will(a.addr, &wills, "late", 12).await;
    a.kill();
    let claim = eventually("B's claim on A", DETECTION, async || {
        let key = keys(&nodes)
            .await
            .into_iter()
            .find(|key| key.starts_with("claim.node-a."))?;
        let holder = nodes.get(&key).await.ok()??;
        holder.starts_with(b"node-b.").then_some(key)
    })
    .await;
    // B dies with A's will still waiting on its delay.
    b.kill();
    let received = collect_wills(&mut watcher, 1, Duration::from_secs(30)).await;
    assert_eq!(copies(&received), copies_of(&["wills/late"]));
    let holder = nodes.get(&claim).await.unwrap().expect("the claim");
    assert!(holder.starts_with(b"node-c."), "{holder:?}");
    eventually("the will's record deleted", WAIT, async || {
        keys(&wills).await.is_empty().then_some(())
    })
    .await;
}

/// The incarnation a node's heartbeat key names (`Beat::incarnation`).
async fn incarnation(nodes: &Store, id: &str) -> String {
    let beat = nodes
        .get(id)
        .await
        .expect("the nodes bucket")
        .expect("a beat");
    let beat: Value = serde_json::from_slice(&beat).expect("a beat's JSON");
    beat["incarnation"]
        .as_str()
        .expect("an incarnation")
        .to_owned()
}

/// A node's claim on a dead node that NATS stored but did not answer (the bucket's leader
/// died after storing it, or the answer came after the timeout) is found taken when the
/// claim is tried again, and holds the claimer's own name: the claimer publishes the wills.
/// It took the key for another node's, and none of the dead node's wills was published (the
/// proof: a run where neither watcher got any of node-a's three wills, node-a killed 2 s
/// before the stream leader's server). The test writes the claim as that lost answer leaves
/// it, B's name under A's dead incarnation, before B sees A dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mqtt_3_1_2_8_wills_published_by_the_claimer_whose_claim_was_stored_unanswered() {
    let nats = NatsServer::start();
    let b = in_process_node(&nats, "node-b", false).await;
    let mut watcher = will_watcher(&b).await;
    let mut a = ChildNode::start(&nats, "node-a");
    let (nodes, wills) = buckets(&nats).await;
    let _gone = with_recorded_will(a.addr, &wills, "gone", 0).await;
    let dead = incarnation(&nodes, "node-a").await;
    let claimer = format!("node-b.{}", incarnation(&nodes, "node-b").await);
    a.kill();
    nodes
        .create(format!("claim.node-a.{dead}"), Bytes::from(claimer))
        .await
        .expect("the claim written as B's lost write left it");
    let received = collect_wills(&mut watcher, 1, DETECTION).await;
    assert_eq!(
        copies(&received),
        copies_of(&["wills/gone"]),
        "B publishes the will of A's client under the claim that is its own"
    );
    eventually("the will's record deleted", WAIT, async || {
        keys(&wills).await.is_empty().then_some(())
    })
    .await;
}

/// A client of a killed node that connects again to its session on another node before its
/// will's delay has passed: the will is not sent; one that does not come back has its will.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mqtt_3_1_3_9_will_not_sent_when_the_session_resumes_on_another_node_within_the_delay()
 {
    let nats = NatsServer::start();
    let b = in_process_node(&nats, "node-b", true).await;
    let mut a = ChildNode::start(&nats, "node-a");
    let mut watcher = will_watcher(&b).await;
    let mut prober = connect(tcp_addr(&b), connect_packet(V5, "prober")).await;
    warm_up(&mut prober, &mut watcher).await;

    let _back = connect(a.addr, with_will("back", QoS::AtLeastOnce, false, 8)).await;
    let _gone = connect(a.addr, with_will("gone", QoS::AtLeastOnce, false, 8)).await;
    let (_, wills) = buckets(&nats).await;
    eventually("both wills recorded", WAIT, async || {
        (keys(&wills).await.len() == 2).then_some(())
    })
    .await;

    a.kill();
    // "back" connects to its session again, on B, well inside its 8 s delay.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut resumed = persistent_connect(V5, "back", 60);
    resumed.clean_start = false;
    let (_back_on_b, present) = connected_present(tcp_addr(&b), resumed).await;
    assert!(present, "the session resumed on B from the sessions bucket");

    let received = collect_wills(&mut watcher, 1, DETECTION + Duration::from_secs(8)).await;
    assert_eq!(
        copies(&received),
        copies_of(&["wills/gone"]),
        "the will of the client that came back is not sent, the other's is"
    );
}

/// Whether a PUBACK's reason code acknowledges (a node with no subscriber of its own says
/// 0x10, the message crosses all the same).
fn acknowledged(code: ReasonCode) -> bool {
    matches!(
        code,
        ReasonCode::Success | ReasonCode::NoMatchingSubscribers
    )
}

/// Whether `payloads` (`<publisher>-<n>`) hold each of `expected` exactly once, each
/// publisher's in order; the first problem otherwise.
fn once_in_order(payloads: &[String], expected: &[String]) -> Result<(), String> {
    let mut seen = BTreeMap::new();
    let mut last: BTreeMap<&str, u32> = BTreeMap::new();
    for payload in payloads {
        *seen.entry(payload.as_str()).or_insert(0usize) += 1;
        let (publisher, n) = payload.rsplit_once('-').ok_or(format!("{payload:?}"))?;
        let n: u32 = n.parse().map_err(|_| format!("{payload:?}"))?;
        if let Some(before) = last.insert(publisher, n)
            && before >= n
        {
            return Err(format!("{payload} came after {publisher}-{before}"));
        }
    }
    let missing: Vec<&String> = expected
        .iter()
        .filter(|payload| !seen.contains_key(payload.as_str()))
        .collect();
    let twice: Vec<(&&str, &usize)> = seen.iter().filter(|(_, count)| **count > 1).collect();
    if missing.is_empty() && twice.is_empty() && seen.len() == expected.len() {
        Ok(())
    } else {
        Err(format!(
            "missing {missing:?}, more than once {twice:?}, {} distinct of {}",
            seen.len(),
            expected.len()
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mqtt_4_3_2_qos1_queued_on_a_killed_node_reaches_the_session_resumed_on_another_node()
 {
    let nats = NatsServer::start();
    let data = support::credentials::TempDir::new("cluster-replay-store");
    let data_dir = data.path("node-a");
    let mut a = ChildNode::start_with(&nats, "node-a", Some(&data_dir));
    let b = in_process_node(&nats, "node-b", false).await;

    // The subscriber's session lives on A, offline.
    let (mut subscriber, present) =
        connected_present(a.addr, persistent_connect(V5, "replayed", 600)).await;
    assert!(!present);
    subscriber
        .subscribe(vec![subscription("q/#", QoS::AtLeastOnce)])
        .await;
    subscriber.disconnect(ReasonCode::Success).await;

    // Queued for it on A: from B (through the stream) and from A itself.
    let mut on_b = connect(tcp_addr(&b), connect_packet(V5, "pub-b")).await;
    let mut on_a = connect(a.addr, connect_packet(V5, "pub-a")).await;
    let mut expected = Vec::new();
    for n in 0..20 {
        let payload = format!("b-{n}");
        let code = on_b
            .publish(message("q/b", &payload, QoS::AtLeastOnce))
            .await;
        assert!(acknowledged(code), "{payload} acknowledged: {code:?}");
        expected.push(payload);
    }
    for n in 0..10 {
        let payload = format!("a-{n}");
        let code = on_a
            .publish(message("q/a", &payload, QoS::AtLeastOnce))
            .await;
        assert!(acknowledged(code), "{payload} acknowledged: {code:?}");
        expected.push(payload);
    }
    // A has routed them into the session's queue (in its store) by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    a.kill();

    let mut resume = persistent_connect(V5, "replayed", 600);
    resume.clean_start = false;
    let (mut subscriber, present) = connected_present(tcp_addr(&b), resume).await;
    assert!(present, "the session resumed on B from the sessions bucket");
    // Published while B replays the stream: held back, then queued once.
    for n in 0..10 {
        let payload = format!("c-{n}");
        let code = on_b
            .publish(message("q/c", &payload, QoS::AtLeastOnce))
            .await;
        assert!(acknowledged(code), "{payload} acknowledged: {code:?}");
        expected.push(payload);
    }
    let received = support::payloads_until_quiet(&mut subscriber, expected.len(), QUIET).await;
    if let Err(problem) = once_in_order(&received, &expected) {
        panic!(
            "what A had queued, and what came since, once each in order: {problem}; got {received:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mqtt_3_1_2_4_a_subscription_acknowledged_by_a_killed_node_is_in_the_session_resumed_elsewhere()
 {
    let nats = NatsServer::start();
    let data = support::credentials::TempDir::new("cluster-suback-store");
    let data_dir = data.path("node-a");
    let b = in_process_node(&nats, "node-b", false).await;
    let mut a = ChildNode::start_with(&nats, "node-a", Some(&data_dir));
    let (mut subscriber, connack) =
        Raw::connect(a.addr, persistent_connect(V5, "subscribed", 600)).await;
    assert_eq!(connack.reason_code, ReasonCode::Success);

    // While the sessions bucket cannot take the record, the SUBSCRIBE is not acknowledged
    // (A's own store has it at once; the wait for the retained copy gives up after 1 s).
    nats.pause();
    subscriber
        .send(Packet::Subscribe(Subscribe {
            packet_id: PacketId::new(1).unwrap(),
            properties: Default::default(),
            subscriptions: vec![subscription("late/1", QoS::AtLeastOnce)],
        }))
        .await;
    let early = subscriber.next_within(Duration::from_millis(2500)).await;
    nats.resume();
    assert_eq!(
        early.map(|packet| format!("{packet:?}")),
        Err(NoPacket::Timeout),
        "no SUBACK before the sessions bucket has the subscription"
    );
    match subscriber.next_within(WAIT).await {
        Ok(Packet::SubAck(_)) => {}
        other => panic!("SUBACK once NATS answers again: {other:?}"),
    }
    // At once after SUBACK.
    a.kill();

    let mut resume = persistent_connect(V5, "subscribed", 600);
    resume.clean_start = false;
    let (mut subscriber, present) = connected_present(tcp_addr(&b), resume).await;
    assert!(present, "the session resumed on B");
    let mut publisher = connect(tcp_addr(&b), connect_packet(V5, "late-pub")).await;
    let code = publisher
        .publish(message("late/1", "late-1", QoS::AtLeastOnce))
        .await;
    assert!(acknowledged(code), "{code:?}");
    let received = support::payloads_until_quiet(&mut subscriber, 1, QUIET).await;
    assert_eq!(
        received,
        ["late-1"],
        "the subscription SUBACK acknowledged is in the record B resumed"
    );
}

/// A raw MQTT 5 client connected to `addr` with `connect`, subscribed to `filter` at QoS 2.
async fn raw_qos2_subscriber(addr: SocketAddr, connect: Connect, filter: &str) -> Raw {
    let (mut raw, connack) = Raw::connect(addr, connect).await;
    assert_eq!(connack.reason_code, ReasonCode::Success);
    raw.send(Packet::Subscribe(Subscribe {
        packet_id: PacketId::new(1).unwrap(),
        properties: Default::default(),
        subscriptions: vec![subscription(filter, QoS::ExactlyOnce)],
    }))
    .await;
    assert!(matches!(raw.expect().await, Packet::SubAck(_)));
    raw
}

/// A publisher on `addr` sending `p-0` .. `p-{count - 1}` on `topic` at QoS 2, each
/// acknowledged before the next, in a task of its own.
fn publish_numbered_qos2(
    addr: SocketAddr,
    client_id: &'static str,
    topic: &'static str,
    count: usize,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut publisher = connect(addr, connect_packet(V5, client_id)).await;
        for n in 0..count {
            let code = publisher
                .publish(message(topic, &format!("p-{n}"), QoS::ExactlyOnce))
                .await;
            assert!(acknowledged(code), "p-{n}: {code:?}");
        }
    })
}

/// Reads on for [`QUIET`] (a duplicate would come within it), then checks that `receiver`
/// got `p-0` .. `p-{count - 1}` once each, in order.
async fn expect_each_once(receiver: &mut Qos2Receiver, raw: &mut Raw, count: usize, what: &str) {
    receiver
        .receive_until(raw, usize::MAX, Stage::Completed, QUIET)
        .await;
    let expected: Vec<String> = (0..count).map(|n| format!("p-{n}")).collect();
    if let Err(problem) = once_in_order(&receiver.payloads, &expected) {
        panic!("every QoS 2 message once, in order, {what}: {problem}");
    }
}

/// A QoS 2 receiver over a raw connection that keeps its session state across connections,
/// as a client library does: a PUBLISH whose identifier awaits PUBREL is a resend (answered,
/// not taken again); PUBREL frees its identifier.
struct Qos2Receiver {
    awaiting_release: HashSet<PacketId>,
    payloads: Vec<String>,
    /// PUBRELs received for identifiers not awaiting release.
    unknown_releases: usize,
    /// How long it takes before it answers a PUBLISH (a slow subscriber).
    pace: Duration,
}

/// Where a QoS 2 flow stops for [`Qos2Receiver::receive_until`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// PUBLISH received, PUBREC not sent.
    Published,
    /// PUBREC sent and PUBREL received, PUBCOMP not sent.
    Released,
    /// PUBCOMP sent.
    Completed,
}

impl Qos2Receiver {
    fn new() -> Self {
        Self {
            awaiting_release: HashSet::new(),
            payloads: Vec::new(),
            unknown_releases: 0,
            pace: Duration::ZERO,
        }
    }

    /// Reads from `raw`, answering, until `count` messages have come and the last one's flow
    /// is at `stage` (its next answer not sent), the connection closes, or `within` ends.
    async fn receive_until(&mut self, raw: &mut Raw, count: usize, stage: Stage, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let packet = match raw.next_within(left).await {
                Ok(packet) => packet,
                Err(_) => return,
            };
            match packet {
                Packet::Publish(publish) => {
                    let Some(packet_id) = publish.packet_id else {
                        continue;
                    };
                    if self.awaiting_release.insert(packet_id) {
                        self.payloads.push(payload_str(&publish));
                    }
                    if self.payloads.len() >= count && stage == Stage::Published {
                        return;
                    }
                    tokio::time::sleep(self.pace).await;
                    raw.send(Packet::PubRec(Ack::new(packet_id))).await;
                }
                Packet::PubRel(ack) => {
                    if !self.awaiting_release.remove(&ack.packet_id) {
                        self.unknown_releases += 1;
                    }
                    if self.payloads.len() >= count
                        && stage == Stage::Released
                        && self.awaiting_release.is_empty()
                    {
                        return;
                    }
                    raw.send(Packet::PubComp(Ack::new(ack.packet_id))).await;
                    if self.payloads.len() >= count
                        && stage == Stage::Completed
                        && self.awaiting_release.is_empty()
                    {
                        return;
                    }
                }
                _ => {}
            }
        }
    }
}

/// A QoS 2 subscriber on A gets messages published on B one at a time (each flow complete
/// before the next publish: it keeps up); A is SIGKILLed while the 26th is at `stage`; the
/// subscriber resumes on B and every message arrives once, in order.
async fn qos2_once_through_the_death_of_its_node(stage: Stage) {
    const MESSAGES: usize = 40;
    const KILLED_AT: usize = 26;
    let nats = NatsServer::start();
    let data = support::credentials::TempDir::new("cluster-qos2-store");
    let data_dir = data.path("node-a");
    let b = in_process_node(&nats, "node-b", false).await;
    let mut a = ChildNode::start_with(&nats, "node-a", Some(&data_dir));
    let mut raw = raw_qos2_subscriber(a.addr, persistent_connect(V5, "exactly", 600), "x/#").await;

    let mut publisher = connect(tcp_addr(&b), connect_packet(V5, "exactly-pub")).await;
    let mut receiver = Qos2Receiver::new();
    for n in 0..MESSAGES {
        let code = publisher
            .publish(message("x/1", &format!("p-{n}"), QoS::ExactlyOnce))
            .await;
        assert!(acknowledged(code), "p-{n}: {code:?}");
        let killed_now = n + 1 == KILLED_AT;
        let until = if killed_now { stage } else { Stage::Completed };
        receiver
            .receive_until(&mut raw, n + 1, until, WAIT * 2)
            .await;
        assert!(
            receiver.payloads.len() > n,
            "p-{n} arrived; got {:?}",
            receiver.payloads
        );
        if killed_now {
            a.kill();
            let mut resume = persistent_connect(V5, "exactly", 600);
            resume.clean_start = false;
            let connack;
            (raw, connack) = Raw::connect(tcp_addr(&b), resume).await;
            assert!(connack.session_present, "the session resumed on B");
            // What B resends of the flow A left (a PUBLISH with DUP, or a PUBREL) is
            // answered here.
            receiver
                .receive_until(&mut raw, n + 1, Stage::Completed, QUIET)
                .await;
        }
    }
    expect_each_once(
        &mut receiver,
        &mut raw,
        MESSAGES,
        &format!("through A's death at {stage:?}"),
    )
    .await;
    assert!(
        receiver.awaiting_release.is_empty(),
        "every identifier released in the end: {:?} left",
        receiver.awaiting_release
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mqtt_4_3_3_qos2_sent_when_its_node_died_comes_again_under_its_identifier_once() {
    qos2_once_through_the_death_of_its_node(Stage::Published).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mqtt_4_3_3_qos2_released_when_its_node_died_is_released_not_sent_again() {
    qos2_once_through_the_death_of_its_node(Stage::Released).await;
}

/// A slow QoS 2 subscriber on A (a backlog waits for it) while its node is SIGKILLed: on B
/// it gets every message once, in order (its record lists the deliveries past its cursor).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mqtt_4_3_3_qos2_to_a_subscriber_with_a_backlog_once_through_the_death_of_its_node()
{
    const MESSAGES: usize = 120;
    let nats = NatsServer::start();
    let data = support::credentials::TempDir::new("cluster-qos2-backlog-store");
    let data_dir = data.path("node-a");
    let b = in_process_node(&nats, "node-b", false).await;
    let mut a = ChildNode::start_with(&nats, "node-a", Some(&data_dir));
    let mut v5 = persistent_connect(V5, "backlogged", 600);
    v5.properties.receive_maximum = std::num::NonZeroU16::new(8);
    let mut raw = raw_qos2_subscriber(a.addr, v5.clone(), "y/#").await;
    let publishing = publish_numbered_qos2(tcp_addr(&b), "backlog-pub", "y/1", MESSAGES);
    let mut receiver = Qos2Receiver::new();
    receiver.pace = Duration::from_millis(15);
    receiver
        .receive_until(&mut raw, 40, Stage::Completed, WAIT * 4)
        .await;
    assert!(receiver.payloads.len() >= 40, "40 through A first");
    a.kill();
    v5.clean_start = false;
    let (mut raw, connack) = Raw::connect(tcp_addr(&b), v5).await;
    assert!(connack.session_present, "the session resumed on B");
    receiver.pace = Duration::ZERO;
    receiver
        .receive_until(&mut raw, MESSAGES, Stage::Completed, WAIT * 6)
        .await;
    publishing.await.expect("the publisher");
    expect_each_once(
        &mut receiver,
        &mut raw,
        MESSAGES,
        "through A's death with a backlog",
    )
    .await;
}

/// A QoS 2 subscriber moves from A to B (both alive) while messages flow: what A routed
/// before it let the session go comes in its handover, what B routed meanwhile is not queued
/// again, and every message arrives once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mqtt_4_3_3_qos2_published_while_a_session_moves_between_live_nodes_arrives_once() {
    const MESSAGES: usize = 300;
    let nats = NatsServer::start();
    let a = in_process_node(&nats, "node-a", false).await;
    let b = in_process_node(&nats, "node-b", false).await;
    let mut v5 = persistent_connect(V5, "mover2", 600);
    let mut raw = raw_qos2_subscriber(tcp_addr(&a), v5.clone(), "mv2/#").await;
    let publishing = publish_numbered_qos2(tcp_addr(&a), "mover2-pub", "mv2/1", MESSAGES);
    let mut receiver = Qos2Receiver::new();
    receiver
        .receive_until(&mut raw, 60, Stage::Completed, WAIT * 4)
        .await;
    assert!(receiver.payloads.len() >= 60, "60 through A first");
    v5.clean_start = false;
    let (mut raw, connack) = Raw::connect(tcp_addr(&b), v5).await;
    assert!(connack.session_present, "the session moved to B");
    receiver
        .receive_until(&mut raw, MESSAGES, Stage::Completed, WAIT * 6)
        .await;
    publishing.await.expect("the publisher");
    expect_each_once(&mut receiver, &mut raw, MESSAGES, "while the session moved").await;
}

/// What [`qos2_answered_by_a_node_that_died`] leaves: node B, a QoS 2 subscriber of B that got
/// the message, and the publisher's PUBLISH and its CONNECT to resume with.
struct AnsweredThenDied {
    b: BrokerHandle,
    subscriber: TestClient<TcpStream>,
    resume: Connect,
    publish: Publish,
    _data: support::credentials::TempDir,
}

/// Node A (a child process, with a store) answers a persistent MQTT 5 publisher's QoS 2
/// PUBLISH (identifier 7, on `{name}/1`) with PUBREC and delivers it to a subscriber on B;
/// then A is SIGKILLed.
async fn qos2_answered_by_a_node_that_died(nats: &NatsServer, name: &str) -> AnsweredThenDied {
    let data = support::credentials::TempDir::new(&format!("cluster-{name}-store"));
    let data_dir = data.path("node-a");
    let b = in_process_node(nats, "node-b", false).await;
    let mut a = ChildNode::start_with(nats, "node-a", Some(&data_dir));
    let mut subscriber = connect(tcp_addr(&b), connect_packet(V5, &format!("{name}-sub"))).await;
    subscriber
        .subscribe(vec![subscription(&format!("{name}/#"), QoS::ExactlyOnce)])
        .await;
    let mut resume = persistent_connect(V5, &format!("{name}-pub"), 600);
    let (mut publisher, connack) = Raw::connect(a.addr, resume.clone()).await;
    assert_eq!(connack.reason_code, ReasonCode::Success);
    let mut publish = message(&format!("{name}/1"), "once", QoS::ExactlyOnce);
    publish.packet_id = PacketId::new(7);
    publisher.send(Packet::Publish(publish.clone())).await;
    assert!(
        matches!(publisher.expect().await, Packet::PubRec(ack) if ack.packet_id == PacketId::new(7).unwrap()),
        "A answers PUBREC"
    );
    let first = subscriber.recv().await.expect("the message");
    assert_eq!(payload_str(&first), "once");
    a.kill();
    resume.clean_start = false;
    AnsweredThenDied {
        b,
        subscriber,
        resume,
        publish,
        _data: data,
    }
}

/// A QoS 2 PUBLISH answered by A (PUBREC), whose PUBREC the client never got because A died,
/// is sent again with DUP to B: the subscriber gets it once (A's record named its stream id
/// before PUBREC, and B writes the resend under it, which the stream drops).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mqtt_4_3_3_qos2_publish_resent_to_another_node_after_its_node_died_is_delivered_once()
 {
    let nats = NatsServer::start();
    let AnsweredThenDied {
        b,
        mut subscriber,
        resume,
        mut publish,
        ..
    } = qos2_answered_by_a_node_that_died(&nats, "resend").await;
    let (mut publisher, connack) = Raw::connect(tcp_addr(&b), resume).await;
    assert!(
        connack.session_present,
        "the publisher's session resumed on B"
    );
    publish.dup = true;
    publisher.send(Packet::Publish(publish)).await;
    assert!(
        matches!(publisher.expect().await, Packet::PubRec(ack) if ack.packet_id == PacketId::new(7).unwrap()),
        "B answers the resend with PUBREC"
    );
    publisher
        .send(Packet::PubRel(Ack::new(PacketId::new(7).unwrap())))
        .await;
    assert!(matches!(publisher.expect().await, Packet::PubComp(_)));
    subscriber.expect_silence(QUIET).await;
}

/// A QoS 2 PUBLISH answered by A (PUBREC), whose node then died: the client resumes on B and
/// sends PUBREL, which B answers with PUBCOMP Success (the record named the identifier), not
/// 0x92 (Packet Identifier not found); the subscriber got the message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mqtt_4_3_3_10_pubrel_sent_to_another_node_after_its_node_died_gets_pubcomp_success()
 {
    let nats = NatsServer::start();
    let AnsweredThenDied {
        b,
        mut subscriber,
        resume,
        ..
    } = qos2_answered_by_a_node_that_died(&nats, "release").await;
    let (mut publisher, connack) = Raw::connect(tcp_addr(&b), resume).await;
    assert!(
        connack.session_present,
        "the publisher's session resumed on B"
    );
    publisher
        .send(Packet::PubRel(Ack::new(PacketId::new(7).unwrap())))
        .await;
    assert_eq!(
        publisher.expect().await,
        Packet::PubComp(Ack::new(PacketId::new(7).unwrap())),
        "PUBCOMP Success"
    );
    subscriber.expect_silence(QUIET).await;
}

/// The sessions bucket's value of `client_id` (a plain token) rewritten to name `owner`, as
/// a claim of `owner` that copied the record leaves it (the layout of `encode_value` in
/// `cluster/sessions.rs`: a format byte, the owner's length (u32) and bytes, the rest).
async fn name_owner(sessions: &Store, client_id: &str, owner: &str) {
    let value = sessions
        .get(client_id)
        .await
        .expect("the sessions bucket")
        .expect("the session's record");
    let old_len = u32::from_be_bytes(value[1..5].try_into().unwrap()) as usize;
    let mut rewritten = vec![value[0]];
    rewritten.extend_from_slice(&u32::try_from(owner.len()).unwrap().to_be_bytes());
    rewritten.extend_from_slice(owner.as_bytes());
    rewritten.extend_from_slice(&value[5 + old_len..]);
    sessions
        .put(client_id, Bytes::from(rewritten))
        .await
        .expect("the record rewritten");
}

/// Publishes `p-<n>` for each `n` of `numbers` on `topic` at QoS 2, each acknowledged before
/// the next.
async fn publish_qos2_each(
    publisher: &mut TestClient<TcpStream>,
    topic: &str,
    numbers: std::ops::Range<usize>,
) {
    for n in numbers {
        let code = publisher
            .publish(message(topic, &format!("p-{n}"), QoS::ExactlyOnce))
            .await;
        assert!(acknowledged(code), "p-{n}: {code:?}");
    }
}

/// Where the client of [`qos2_after_a_restarted_nodes_stale_copy`] goes last.
#[derive(Debug, Clone, Copy)]
enum Next {
    /// To C, after the bucket's record came to name A (a claim of A's stored unanswered).
    CAfterAStoredClaim,
    /// To A itself, which claims the session from B.
    A,
}

/// A node restarted with its store restores the sessions it had, though the cluster has
/// moved them elsewhere meanwhile, and routes the stream's messages to those copies: A is
/// killed, the client resumes on B, A comes back with its store, five QoS 2 messages are
/// completed on B, then the client goes to `next`; every message arrives once, in order.
async fn qos2_after_a_restarted_nodes_stale_copy(next: Next) {
    const FIRST: usize = 5;
    const MESSAGES: usize = 10;
    let nats = NatsServer::start();
    let data = support::credentials::TempDir::new("cluster-stale-copy-store");
    let data_dir = data.path("node-a");
    let b = in_process_node(&nats, "node-b", false).await;
    let c = in_process_node(&nats, "node-c", false).await;
    let mut a = ChildNode::start_with(&nats, "node-a", Some(&data_dir));
    let mut v5 = persistent_connect(V5, "moved", 600);
    let _first = raw_qos2_subscriber(a.addr, v5.clone(), "mv/#").await;
    a.kill();
    v5.clean_start = false;
    let (mut raw, connack) = Raw::connect(tcp_addr(&b), v5.clone()).await;
    assert!(connack.session_present, "the session resumed on B");
    // Back with its store: its copy of the session is in its router again.
    let a = ChildNode::start_with(&nats, "node-a", Some(&data_dir));
    let mut publisher = connect(tcp_addr(&c), connect_packet(V5, "moved-pub")).await;
    let mut receiver = Qos2Receiver::new();
    publish_qos2_each(&mut publisher, "mv/1", 0..FIRST).await;
    receiver
        .receive_until(&mut raw, FIRST, Stage::Completed, WAIT * 2)
        .await;
    assert_eq!(receiver.payloads.len(), FIRST, "{:?}", receiver.payloads);
    // B writes the record's cursor past them, A routes them to its copy.
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(raw);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let to = match next {
        Next::CAfterAStoredClaim => {
            let client = async_nats::connect(nats.url()).await.expect("NATS");
            let sessions = async_nats::jetstream::new(client)
                .get_key_value("rallymq_sessions")
                .await
                .expect("the sessions bucket");
            name_owner(&sessions, "moved", "node-a").await;
            tcp_addr(&c)
        }
        Next::A => a.addr,
    };
    let (mut raw, connack) = Raw::connect(to, v5).await;
    assert!(connack.session_present, "the session resumed ({next:?})");
    publish_qos2_each(&mut publisher, "mv/1", FIRST..MESSAGES).await;
    receiver
        .receive_until(&mut raw, MESSAGES, Stage::Completed, WAIT * 2)
        .await;
    expect_each_once(&mut receiver, &mut raw, MESSAGES, &format!("({next:?})")).await;
}

/// When the sessions bucket names the restarted node the owner again without its knowing (a
/// claim of its own that timed out but was stored: the proof, node-a's claim as the majority
/// came back), the node that takes the session next asks it, and must not get that stale
/// copy: a QoS 2 subscriber moved A -> B -> C -> B got seq 21-101 a second time (A had
/// routed them to its copy), and missed one. A copy this node has not claimed since it
/// started is no session to hand over: the asker resumes from the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mqtt_4_3_3_qos2_a_restarted_nodes_stale_copy_of_a_moved_session_is_not_handed_over()
 {
    qos2_after_a_restarted_nodes_stale_copy(Next::CAfterAStoredClaim).await;
}

/// The client comes back to the restarted node itself: its copy makes way for what B hands
/// over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mqtt_4_3_3_qos2_a_session_resumed_on_a_restarted_node_holding_a_stale_copy_arrives_once()
 {
    qos2_after_a_restarted_nodes_stale_copy(Next::A).await;
}
