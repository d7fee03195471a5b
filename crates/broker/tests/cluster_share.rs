//! Cluster mode (issue 17): shared subscriptions balanced across nodes, and retained messages
//! consistent between nodes, with real `nats-server` processes (Debian's package) started by
//! the tests on free ports. A missing nats-server fails the tests.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rallymq_broker::BrokerHandle;
use rallymq_codec::{QoS, ReasonCode};
use rallymq_test_support::NatsServer;
use support::cluster::{PROBE, node, subscribed_client, warm_up};
use support::{TestClient, WAIT, message, payload_str, subscription, topic_str, wait_clients};
use tokio::net::TcpStream;

/// How long every client stays silent, once all expected messages are in, before the counts
/// are taken: a second copy would arrive within it.
const QUIET: Duration = Duration::from_millis(500);

/// The shared group of the tests, and the filter of its ordinary twin.
const GROUP: &str = "$share/workers/job/+";
const PLAIN: &str = "job/+";

/// A client on `node`, subscribed to `filters` with QoS 2 (so that it gets each message at the
/// QoS it was published with).
async fn client(node: &BrokerHandle, id: &str, filters: &[&str]) -> TestClient<TcpStream> {
    subscribed_client(node, id, filters, QoS::ExactlyOnce).await
}

/// What each client receives (probes left out) until all of them together have `expected`
/// messages and then stay quiet for [`QUIET`]: per client, (topic, payload) -> copies.
async fn collect_all(
    clients: &mut [&mut TestClient<TcpStream>],
    expected: usize,
) -> Vec<BTreeMap<(String, String), usize>> {
    let deadline = Instant::now() + 3 * WAIT;
    let mut received = vec![BTreeMap::new(); clients.len()];
    let mut count = 0;
    let mut quiet_since = None::<Instant>;
    loop {
        let mut any = false;
        for (client, received) in clients.iter_mut().zip(&mut received) {
            while let Some(publish) = client.recv_within(Duration::from_millis(20)).await {
                any = true;
                let payload = payload_str(&publish);
                if payload.starts_with(PROBE) {
                    continue;
                }
                count += 1;
                *received.entry((topic_str(&publish), payload)).or_insert(0) += 1;
            }
        }
        let now = Instant::now();
        if count >= expected {
            let since = *quiet_since.get_or_insert(now);
            if any {
                quiet_since = Some(now);
            } else if now.duration_since(since) >= QUIET {
                return received;
            }
        } else if now >= deadline {
            return received;
        }
    }
}

/// `n` numbered messages on `topic`.
fn numbered(topic: &str, n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (topic.to_owned(), format!("{topic}#{i}")))
        .collect()
}

async fn publish_all(
    publisher: &mut TestClient<TcpStream>,
    messages: &[(String, String)],
    qos: QoS,
) {
    for (topic, payload) in messages {
        let code = publisher.publish(message(topic, payload, qos)).await;
        assert!(
            matches!(
                code,
                ReasonCode::Success | ReasonCode::NoMatchingSubscribers
            ),
            "{payload}: {code:?}"
        );
    }
}

/// Copies of each message over all of `received`, and how many messages each one got.
fn tally(
    received: &[BTreeMap<(String, String), usize>],
) -> (BTreeMap<(String, String), usize>, Vec<usize>) {
    let mut copies = BTreeMap::new();
    for one in received {
        for (message, n) in one {
            *copies.entry(message.clone()).or_insert(0) += n;
        }
    }
    let per_client = received.iter().map(|one| one.values().sum()).collect();
    (copies, per_client)
}

fn once_each(messages: &[(String, String)]) -> BTreeMap<(String, String), usize> {
    messages
        .iter()
        .map(|message| (message.clone(), 1))
        .collect()
}

/// Three nodes on one NATS server; the group has two members on A (where the publisher is),
/// one on B and one on C; an ordinary subscriber to the same filter is on B. At each QoS, every
/// message reaches exactly one member of the group in the whole cluster, the members of every
/// node get some, and the ordinary subscriber gets every message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_shared_group_gets_each_message_once_across_three_nodes_at_every_qos() {
    let nats = NatsServer::start();
    let a = node(&[&nats]).await;
    let b = node(&[&nats]).await;
    let c = node(&[&nats]).await;
    let mut a1 = client(&a, "a-member-1", &[GROUP]).await;
    let mut a2 = client(&a, "a-member-2", &[GROUP]).await;
    let mut b1 = client(&b, "b-member", &[GROUP]).await;
    let mut c1 = client(&c, "c-member", &[GROUP]).await;
    let mut plain = client(&b, "b-plain", &[PLAIN]).await;
    let mut publisher = client(&a, "a-publisher", &[]).await;

    const N: usize = 60;
    for (qos, topic) in [
        (QoS::AtMostOnce, "job/0"),
        (QoS::AtLeastOnce, "job/1"),
        (QoS::ExactlyOnce, "job/2"),
    ] {
        warm_up(
            &mut publisher,
            topic,
            qos,
            &mut [&mut a1, &mut a2, &mut b1, &mut c1, &mut plain],
        )
        .await;
        let messages = numbered(topic, N);
        publish_all(&mut publisher, &messages, qos).await;
        let received =
            collect_all(&mut [&mut a1, &mut a2, &mut b1, &mut c1, &mut plain], 2 * N).await;
        let (members, per_member) = tally(&received[..4]);
        // Exactly once in the group (QoS 0 too, while no member comes or goes).
        assert_eq!(members, once_each(&messages), "{qos:?}: {per_member:?}");
        // Spread over the nodes: A's two members, B's and C's.
        assert!(
            per_member[0] + per_member[1] > 0 && per_member[2] > 0 && per_member[3] > 0,
            "{qos:?}: the members got {per_member:?}"
        );
        assert_eq!(
            received[4],
            once_each(&messages),
            "{qos:?}: the ordinary subscriber"
        );
    }
}

/// Two nodes, a member on each: once B's member has gone, A's gets every message, at QoS 1
/// (nothing is left with B) and at QoS 0 (once B has left the queue group).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_shared_member_that_leaves_leaves_the_rest_of_the_group_everything() {
    let nats = NatsServer::start();
    let a = node(&[&nats]).await;
    let b = node(&[&nats]).await;
    let mut on_a = client(&a, "a-member", &[GROUP]).await;
    let mut on_b = client(&b, "b-member", &[GROUP]).await;
    let mut publisher = client(&b, "b-publisher", &[]).await;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        warm_up(&mut publisher, "job/w", qos, &mut [&mut on_a, &mut on_b]).await;
    }
    // Both take a share while both are there.
    let before = numbered("job/before", 40);
    publish_all(&mut publisher, &before, QoS::AtLeastOnce).await;
    let received = collect_all(&mut [&mut on_a, &mut on_b], before.len()).await;
    let (copies, per_member) = tally(&received);
    assert_eq!(copies, once_each(&before));
    assert!(per_member.iter().all(|&n| n > 0), "{per_member:?}");

    on_b.disconnect(ReasonCode::Success).await;
    wait_clients(&b, 1).await;
    let after = numbered("job/after", 40);
    publish_all(&mut publisher, &after, QoS::AtLeastOnce).await;
    let received = collect_all(&mut [&mut on_a], after.len()).await;
    assert_eq!(
        received[0],
        once_each(&after),
        "QoS 1 after B's member left"
    );

    // QoS 0 has no taking back: B must have left the queue group first.
    let deadline = Instant::now() + WAIT;
    let queue_subscriptions = || {
        let body = nats.monitor("/connz?subs=1").unwrap_or_default();
        let name = format!("rallymq-{}-shares", b.node_id().expect("a node"));
        let connz: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        connz["connections"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|connection| connection["name"] == name.as_str())
            .map(|connection| connection["num_subscriptions"].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    while queue_subscriptions() > 0 {
        assert!(Instant::now() < deadline, "B left the group's queue");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = numbered("job/after0", 40);
    publish_all(&mut publisher, &after, QoS::AtMostOnce).await;
    let received = collect_all(&mut [&mut on_a], after.len()).await;
    assert_eq!(received[0], once_each(&after), "QoS 0 after B left");
}

/// A retained QoS 1 message acknowledged on A is in the answer to a SUBSCRIBE on B made right
/// after the PUBACK, every time: A's PUBACK waits for the retained bucket, and B's SUBSCRIBE
/// for its copy of the bucket to catch up. Topics are new and overwritten in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_retained_acknowledged_on_one_node_is_seen_by_a_subscribe_on_another() {
    // A and B on different servers: B's copy is fed through the servers' route.
    let servers = NatsServer::cluster(3);
    let a = node(&[&servers[0]]).await;
    let b = node(&[&servers[2]]).await;
    let mut publisher = client(&a, "a-publisher", &[]).await;
    let mut subscriber = client(&b, "b-subscriber", &[]).await;
    const ITERATIONS: usize = 200;
    let mut stale = Vec::new();
    for i in 0..ITERATIONS {
        let topic = format!("ret/{}", i % 10);
        let value = format!("v{i}");
        let mut publish = message(&topic, &value, QoS::AtLeastOnce);
        publish.retain = true;
        let code = publisher.publish(publish).await;
        assert!(
            matches!(
                code,
                ReasonCode::Success | ReasonCode::NoMatchingSubscribers
            ),
            "{code:?}"
        );
        subscriber
            .subscribe(vec![subscription(&topic, QoS::AtLeastOnce)])
            .await;
        let got = subscriber
            .recv_within(Duration::from_millis(500))
            .await
            .map(|publish| payload_str(&publish));
        if got.as_deref() != Some(value.as_str()) {
            stale.push((i, got));
        }
        subscriber.unsubscribe(&topic).await;
        // A late copy of the retained message, if any, is not taken for the next one.
        while subscriber.recv_within(Duration::ZERO).await.is_some() {}
    }
    assert_eq!(
        stale,
        [],
        "SUBSCRIBEs on B answered without A's acknowledged value"
    );
}

/// A new shared group gets a QoS 1 message published on another node right after its first
/// member's SUBACK, within the usual wait: the group's consumer on the stream exists before the
/// SUBACK, made once (two creations at once restarted it past the message), and the member
/// node pulls once it has a leader. 20 new groups, each a member on B and a publish on A once
/// B's SUBACK is in. Before, 19 of 20 groups never got theirs; with the consumer made before
/// SUBACK alongside the member node's, 1 or 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_new_shared_group_gets_a_qos1_message_published_right_after_its_suback() {
    let servers = NatsServer::cluster(3);
    let a = node(&[&servers[0]]).await;
    let b = node(&[&servers[2]]).await;
    let mut publisher = client(&a, "a-publisher", &[]).await;
    let mut member = client(&b, "b-member", &[]).await;
    let mut missed = Vec::new();
    for i in 0..20 {
        let topic = format!("new-group/{i}");
        member
            .subscribe(vec![subscription(
                &format!("$share/g{i}/{topic}"),
                QoS::AtLeastOnce,
            )])
            .await;
        publisher
            .publish(message(&topic, "right after SUBACK", QoS::AtLeastOnce))
            .await;
        if member.recv_within(WAIT).await.is_none() {
            missed.push(i);
        }
    }
    assert_eq!(missed, [] as [usize; 0], "groups that missed their message");
}
