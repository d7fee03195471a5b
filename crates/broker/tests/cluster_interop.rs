//! Interop across the nodes of a rallymq cluster (issue 17): real clients publish on node A and
//! subscribe on node B, at QoS 0, 1 and 2, with MQTT 3.1.1 and 5.0. The peers are paho-mqtt
//! (Python, the `cross_node` scenario of `tests/interop/paho_scenarios.py`) and MQTT.js (Node,
//! `tests/interop/mqttjs_cross_node.js`), run as child processes with a bounded time; the nodes
//! meet through a real `nats-server` (Debian's package) with JetStream. A missing peer (python3
//! with paho-mqtt, node with MQTT.js from `npm ci` in tests/interop, nats-server) fails the
//! test; it is never skipped.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rallymq_broker::{BrokerHandle, ClusterConfig};
use rallymq_test_support::{NatsServer, run_peer};
use support::{start_broker, tcp_addr};

/// Longest a peer script may run.
const PEER_TIMEOUT: Duration = Duration::from_secs(30);

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
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
