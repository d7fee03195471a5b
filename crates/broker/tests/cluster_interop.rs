//! Interop across the nodes of a rallymq cluster (issue 17), with real clients as child
//! processes, each with a bounded time:
//! - the whole paho-mqtt scenario set of `tests/interop.rs` (`tests/interop/paho_scenarios.py`
//!   with `--ports`: each new client of a scenario connects to the next node, so publishers and
//!   subscribers, and a client and its reconnections, are on different nodes), over TCP and
//!   WebSockets, with MQTT 3.1, 3.1.1 and 5.0 as `interop.rs` runs them, against three nodes on
//!   three routed NATS servers; the outcomes must be the single node's
//!   (`tests/support/interop.rs`), except where [`on_the_cluster`] says why not;
//! - the MQTT.js scripts with the publisher on one node and the subscriber on another;
//! - the `cross_node` exchanges (QoS 0, 1 and 2, in order) of paho-mqtt and MQTT.js.
//!
//! The NATS servers are real `nats-server` processes (Debian's package) with JetStream. A
//! missing peer (python3 with paho-mqtt, node with MQTT.js from `npm ci` in tests/interop,
//! nats-server) fails the test; it is never skipped.

mod support;

use std::process::Command;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use rallymq_broker::{BrokerHandle, ClusterConfig, ListenerKind};
use rallymq_test_support::{NatsServer, run_peer};
use support::interop::*;
use support::{start_broker, tcp_addr};

/// How many peers run at once: enough to keep the run short, few enough that the two cores
/// (shared with the nodes and NATS servers) do not starve a scenario's 5 s waits.
const PEERS_AT_ONCE: usize = 6;

/// Three nodes, each on its own NATS server of three routed with JetStream (so the stream and
/// the buckets have three replicas), on a runtime of their own: the test's threads run peers
/// synchronously.
struct Cluster {
    nodes: Vec<BrokerHandle>,
    runtime: tokio::runtime::Runtime,
    _servers: Vec<NatsServer>,
}

impl Cluster {
    fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let servers = NatsServer::cluster(3);
        let nodes = servers
            .iter()
            .map(|server| {
                let url = server.url();
                runtime.block_on(start_broker(|config| {
                    config.cluster = Some(ClusterConfig::new([url]))
                }))
            })
            .collect();
        Self {
            nodes,
            runtime,
            _servers: servers,
        }
    }

    /// The nodes' ports for `transport`, from the `first`th node on (modulo their count), so
    /// that the cases of a run give each node every role.
    fn ports(&self, transport: Transport, first: usize) -> Vec<u16> {
        let kind = match transport {
            Transport::Tcp => ListenerKind::Tcp,
            Transport::WebSockets => ListenerKind::WebSocket,
        };
        let count = self.nodes.len();
        (0..count)
            .map(|i| {
                self.nodes[(first + i) % count]
                    .local_addr(kind)
                    .expect("the listener is bound")
                    .port()
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in self.nodes.drain(..) {
            self.runtime
                .block_on(node.shutdown(Duration::from_millis(500)));
        }
    }
}

/// Where a scenario's outcome on the cluster may differ from the single node's: why (a property
/// of the cluster that CLUSTER.md states), what the cluster gives instead, and what of an
/// outcome is compared then.
struct OnTheCluster {
    why: &'static str,
    /// The single node's expected outcome made the cluster's.
    expected: fn(&mut serde_json::Value),
    /// The outcome (the expected one and the observed one alike) with what the cluster does not
    /// promise left out or reduced to what it does.
    compared: fn(&mut serde_json::Value),
}

/// Leaves an outcome as it is.
fn unchanged(_: &mut serde_json::Value) {}

/// How a scenario's outcome on the cluster may differ from the single node's; `None`: it may
/// not.
fn on_the_cluster(scenario: &str) -> Option<OnTheCluster> {
    match scenario {
        "qos" => Some(OnTheCluster {
            why: "SUBACK waits for the node's own NATS server to take its subscription, but \
                  NATS carries it to the other two servers on its own time, so a QoS 0 message \
                  published through another server right after SUBACK can be missed \
                  (CLUSTER.md, 'the subscription window'); the QoS 0 message is left out, QoS 0 \
                  across nodes is the cross_node tests' (with probes first)",
            expected: unchanged,
            compared: |outcome| {
                for key in ["sub_qos1", "sub_qos2"] {
                    if let Some(messages) = outcome[key].as_array_mut() {
                        messages.retain(|message| message["topic"] != "0");
                    }
                }
            },
        }),
        "shared" => Some(OnTheCluster {
            why: "QoS 1 reaches a group through its consumer, from which each member node pulls \
                  64 messages at a time (CLUSTER.md, 'Shared subscriptions across nodes'): a \
                  burst of 10 goes to one node's pull, so not every member is served; each \
                  message still goes to one member",
            expected: unchanged,
            compared: |outcome| {
                if let Some(fields) = outcome.as_object_mut() {
                    fields.remove("every_member_served");
                }
            },
        }),
        "resume_many" => Some(OnTheCluster {
            why: "the session moves from the node it was on to the node it resumes on, and a \
                  message the new node routes to it while the old one hands its queue over comes \
                  twice (CLUSTER.md, 'Sessions, what remains': the handover window; QoS 1 \
                  allows it); seen under load before the handover carried the old node's \
                  routed place: 20 to 48 of 300 twice. Compared: none missing (under load by \
                  hand some are: a bug, see CLUSTER.md), first copies in order",
            expected: unchanged,
            compared: |outcome| {
                if let Some(fields) = outcome.as_object_mut() {
                    fields.remove("duplicates");
                }
            },
        }),
        "v5_codes" => Some(OnTheCluster {
            why: "a QoS 1 message in the stream is routed by every node, and the publishing \
                  node does not know who matches: its PUBACK says Success, not 0x10 No matching \
                  subscribers (CLUSTER.md, 'What works now')",
            expected: |outcome| outcome["qos1_no_subscribers"] = 0.into(),
            compared: unchanged,
        }),
        _ => None,
    }
}

/// `outcome` (JSON) as `change` makes it; as it is if it is not JSON.
fn changed(outcome: &str, change: fn(&mut serde_json::Value)) -> String {
    match serde_json::from_str(outcome) {
        Ok(mut value) => {
            change(&mut value);
            value.to_string()
        }
        Err(_) => outcome.to_owned(),
    }
}

/// A peer run for [`run_cases`]: what it is, how to run it (its outcome), what it must show.
type Case<'a> = (
    String,
    Box<dyn Fn() -> Result<String, String> + Send + Sync + 'a>,
    String,
);

/// Runs `cases` [`PEERS_AT_ONCE`] at a time; the failures, in the cases' order.
fn run_cases(cases: Vec<Case<'_>>) -> Vec<String> {
    let queue = Mutex::new(cases.into_iter().enumerate());
    let failures = Mutex::new(Vec::new());
    thread::scope(|scope| {
        for _ in 0..PEERS_AT_ONCE {
            scope.spawn(|| {
                loop {
                    let next = queue.lock().expect("no worker panics holding it").next();
                    let Some((index, (what, run, expected))) = next else {
                        return;
                    };
                    let started = Instant::now();
                    let mut failed = Vec::new();
                    check_observed(&mut failed, &what, run(), &expected);
                    eprintln!("{what}: {:.1} s", started.elapsed().as_secs_f64());
                    failures
                        .lock()
                        .expect("no worker panics holding it")
                        .extend(failed.into_iter().map(|f| (index, f)));
                }
            });
        }
    });
    let mut failures = failures.into_inner().expect("the workers are done");
    failures.sort();
    failures.into_iter().map(|(_, failure)| failure).collect()
}

/// Every paho scenario of `tests/interop.rs` with each of its MQTT versions over each of its
/// transports, the clients of each spread over three nodes (each new client on the next node):
/// each outcome is the single node's, or the cluster's where [`on_the_cluster`] says why. With
/// them, the `cross` scenario (every MQTT version over TCP to one node and over WebSockets to
/// another, each client publishing to all).
#[test]
fn cluster_paho_scenarios_with_clients_spread_over_three_nodes_as_on_one_node() {
    require_paho();
    let cluster = Cluster::start();
    let started = Instant::now();
    let mut cases: Vec<Case<'_>> = Vec::new();
    for scenario in PAHO_SCENARIOS {
        for version in scenario.versions {
            for &transport in scenario.transports {
                let mut what = format!(
                    "paho {}, MQTT {version} over {transport:?}, on the cluster",
                    scenario.name
                );
                let mut expected = (scenario.expected)(version, "rallymq");
                let ports = cluster.ports(transport, cases.len());
                let run = move || paho(scenario.name, &ports, transport, version);
                match on_the_cluster(scenario.name) {
                    None => cases.push((what, Box::new(run), expected)),
                    Some(difference) => {
                        expected = changed(
                            &changed(&expected, difference.expected),
                            difference.compared,
                        );
                        what = format!("{what} (compared as the cluster: {})", difference.why);
                        let run =
                            move || run().map(|outcome| changed(&outcome, difference.compared));
                        cases.push((what, Box::new(run), expected));
                    }
                }
            }
        }
    }
    let (tcp, ws) = (
        cluster.ports(Transport::Tcp, 0)[0],
        cluster.ports(Transport::WebSockets, 1)[0],
    );
    cases.push((
        "paho cross, TCP on one node and WebSockets on another".to_owned(),
        Box::new(move || paho_cross(tcp, ws)),
        CROSS_EXPECTED.to_owned(),
    ));
    let count = cases.len();
    let failures = run_cases(cases);
    eprintln!(
        "{count} paho cases on the cluster in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_no_failures(failures);
}

/// MQTT.js over WebSockets, MQTT 3.1, 3.1.1 and 5.0, publisher and subscriber on different
/// nodes: the `mqttjs_ws.js` exchange (QoS 1, and a retained QoS 2 message on a new
/// subscription) and, MQTT 5, the broker's topic aliases to the subscriber (MQTT-3.3.2-11), as
/// on one node.
#[test]
fn cluster_mqttjs_over_websockets_with_publisher_and_subscriber_on_different_nodes() {
    require_mqttjs();
    let cluster = Cluster::start();
    let url = |port: u16| format!("ws://127.0.0.1:{port}/mqtt");
    let mut cases: Vec<Case<'_>> = Vec::new();
    for (i, version) in ["3", "4", "5"].into_iter().enumerate() {
        let ports = cluster.ports(Transport::WebSockets, i);
        let (sub, publisher) = (url(ports[0]), url(ports[1]));
        cases.push((
            format!("MQTT.js protocol {version}, subscriber on one node, publisher on another"),
            Box::new(move || mqttjs_ws(&sub, version, &publisher)),
            MQTTJS_WS_EXPECTED.to_owned(),
        ));
    }
    let ports = cluster.ports(Transport::WebSockets, 2);
    let (sub, publisher) = (url(ports[0]), url(ports[1]));
    cases.push((
        "MQTT.js topic aliases, subscriber on one node, publisher on another".to_owned(),
        Box::new(move || mqttjs_aliases(&sub, &publisher)),
        mqttjs_aliases_expected(3, 5, 3),
    ));
    assert_no_failures(run_cases(cases));
}

async fn node(nats: &NatsServer) -> BrokerHandle {
    let url = nats.url();
    start_broker(|config| config.cluster = Some(ClusterConfig::new([url]))).await
}

/// Runs a peer without holding up the runtime that serves the nodes; its output as JSON.
async fn run_json(mut command: Command) -> Result<serde_json::Value, String> {
    let output = tokio::task::spawn_blocking(move || run_peer(&mut command, PEER_TIMEOUT))
        .await
        .map_err(|e| format!("the peer's thread: {e}"))??;
    serde_json::from_str(&output).map_err(|e| format!("not JSON ({e}): {output}"))
}

/// What a cross-node run must show: the QoS 2 subscription granted, and on each topic `Q` (the
/// QoS published with) the five messages `Q-0`..`Q-4` once each, in order, at QoS `Q`.
fn expected() -> serde_json::Value {
    let per_qos: serde_json::Map<String, serde_json::Value> = (0..3)
        .map(|qos| {
            let messages = (0..5)
                .map(|i| serde_json::json!([format!("{qos}-{i}"), qos]))
                .collect();
            (qos.to_string(), serde_json::Value::Array(messages))
        })
        .collect();
    serde_json::json!({ "granted": [2], "received": per_qos })
}

/// Runs `command(version)` for each MQTT version; fails listing every run that differs from
/// [`expected`].
async fn check_versions(
    peer: &str,
    versions: &[&str],
    command: impl Fn(&str) -> Command,
) -> Vec<String> {
    let mut failures = Vec::new();
    for version in versions {
        match run_json(command(version)).await {
            Ok(observed) if observed == expected() => {}
            Ok(observed) => failures.push(format!(
                "{peer}, MQTT {version}:\n  expected {}\n  observed {observed}",
                expected()
            )),
            Err(error) => failures.push(format!("{peer}, MQTT {version}: {error}")),
        }
    }
    failures
}

/// paho-mqtt, MQTT 3.1.1 and 5.0: QoS 0, 1 and 2 from node A to a subscriber on node B, each
/// message once, at its QoS, in order (MQTT-4.6.0-6: each topic ordered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mqtt_4_6_0_6_paho_publisher_and_subscriber_on_different_nodes() {
    let nats = NatsServer::start();
    let a = node(&nats).await;
    let b = node(&nats).await;
    let (pub_port, sub_port) = (tcp_addr(&a).port(), tcp_addr(&b).port());
    let failures = check_versions("paho cross_node", &["311", "5"], |version| {
        let mut command = Command::new("python3");
        command
            .arg(interop_dir().join("paho_scenarios.py"))
            .arg("cross_node")
            .args(["--port", &pub_port.to_string()])
            .args(["--sub-port", &sub_port.to_string()])
            .args(["--version", version]);
        command
    })
    .await;
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// MQTT.js, MQTT 3.1.1 and 5.0: the same across nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mqtt_4_6_0_6_mqttjs_publisher_and_subscriber_on_different_nodes() {
    let nats = NatsServer::start();
    let a = node(&nats).await;
    let b = node(&nats).await;
    let (pub_url, sub_url) = (
        format!("mqtt://{}", tcp_addr(&a)),
        format!("mqtt://{}", tcp_addr(&b)),
    );
    let failures = check_versions("MQTT.js cross-node", &["4", "5"], |version| {
        let mut command = Command::new("node");
        command
            .arg(interop_dir().join("mqttjs_cross_node.js"))
            .args([&pub_url, &sub_url, version])
            .current_dir(interop_dir());
        command
    })
    .await;
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Serves a cluster of three nodes on three routed NATS servers for running peer scripts by
/// hand; prints their ports. Run with `cargo test -p rallymq-broker --test cluster_interop --
/// --ignored --nocapture serve_cluster_for_manual_runs` (`INTEROP_SERVE_SECS` sets how long,
/// 300 s by default).
#[test]
#[ignore = "a tool for running peer scripts by hand, not a test"]
fn serve_cluster_for_manual_runs() {
    let cluster = Cluster::start();
    let list = |ports: Vec<u16>| {
        let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
        ports.join(",")
    };
    println!(
        "cluster: tcp --ports {}, websockets --ports {}",
        list(cluster.ports(Transport::Tcp, 0)),
        list(cluster.ports(Transport::WebSockets, 0))
    );
    thread::sleep(manual_serve_time());
}
