//! `GET /metrics`: real traffic from our client, `mosquitto_pub` and `mosquitto_sub`, then a
//! scrape read by the Python `prometheus_client` library's parsers (the Prometheus text format,
//! and OpenMetrics when asked for), whose values must be exactly what the clients did. A
//! missing `python3 -m pip install prometheus-client` or Mosquitto client fails the test.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use rallymq_broker::{BrokerHandle, ListenerKind, Storage};
use rallymq_codec::{MqttString, ProtocolVersion, QoS, ReasonCode};
use rallymq_session::{ClientEvent, CloseReason};
use rallymq_test_support::{run_id, run_peer, run_peer_fed};
use serde_json::Value;

use support::{
    TestClient, connect_packet, http, message, persistent_connect, start_broker, subscription,
    tcp_addr, wait_clients,
};

/// How long a peer (a Mosquitto client, the Python parser) may run.
const PEER: Duration = Duration::from_secs(20);

/// Reads a scrape with `prometheus_client`'s parser (`prometheus` for the text format 0.0.4,
/// `openmetrics` for OpenMetrics) and prints every sample as JSON.
const PARSE: &str = r#"
import json, sys
if sys.argv[1] == "openmetrics":
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
else:
    from prometheus_client.parser import text_string_to_metric_families
samples = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for sample in family.samples:
        samples.append({"family": family.name, "type": family.type, "name": sample.name,
                        "labels": sample.labels, "value": sample.value})
print(json.dumps(samples))
"#;

/// A sample as the parser read it.
#[derive(Debug, Clone)]
struct Sample {
    family: String,
    kind: String,
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The samples of one scrape.
struct Scrape(Vec<Sample>);

impl Scrape {
    /// Parses `text` with the Python library (`format`: `prometheus` or `openmetrics`).
    fn parse(text: &str, format: &str) -> Self {
        let out = run_peer_fed(
            Command::new("python3").args(["-c", PARSE, format]),
            text.as_bytes(),
            PEER,
        )
        .unwrap_or_else(|error| {
            panic!("prometheus_client cannot read the scrape: {error}\n{text}")
        });
        let samples: Vec<Value> = serde_json::from_str(&out).expect("the script prints JSON");
        Self(
            samples
                .iter()
                .map(|sample| Sample {
                    family: sample["family"].as_str().expect("a name").to_owned(),
                    kind: sample["type"].as_str().expect("a type").to_owned(),
                    name: sample["name"].as_str().expect("a name").to_owned(),
                    labels: sample["labels"]
                        .as_object()
                        .expect("labels")
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().expect("a string").to_owned()))
                        .collect(),
                    value: sample["value"].as_f64().expect("a number"),
                })
                .collect(),
        )
    }

    /// The one sample named `name` whose labels include `labels`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<&Sample> = self
            .0
            .iter()
            .filter(|sample| {
                sample.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| sample.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        match found.as_slice() {
            [sample] => sample.value,
            other => panic!("{name} {labels:?}: {} samples: {other:?}", other.len()),
        }
    }

    /// Every sample named `name`.
    fn all(&self, name: &str) -> Vec<&Sample> {
        self.0.iter().filter(|sample| sample.name == name).collect()
    }

    /// The type the parser gave the family of `name`.
    fn kind(&self, name: &str) -> &str {
        let sample = self.all(name).into_iter().next();
        &sample.unwrap_or_else(|| panic!("no {name}")).kind
    }
}

fn require_python_prometheus_client() {
    let found = run_peer(
        Command::new("python3").args([
            "-c",
            "import prometheus_client.parser, prometheus_client.openmetrics.parser",
        ]),
        PEER,
    );
    assert!(
        found.is_ok(),
        "the Python prometheus_client library is needed (python3 -m pip install -r \
         scripts/requirements.txt): {found:?}"
    );
}

fn http_addr(broker: &BrokerHandle) -> SocketAddr {
    broker
        .local_addr(ListenerKind::WebSocket)
        .expect("an HTTP listener")
}

/// Runs a Mosquitto client to its end.
async fn mosquitto(program: &'static str, args: Vec<String>) -> String {
    tokio::task::spawn_blocking(move || run_peer(Command::new(program).args(&args), PEER))
        .await
        .expect("the peer's thread ends")
        .unwrap_or_else(|error| panic!("{program} (is mosquitto-clients installed?): {error}"))
}

/// The metric names in the first column of the table in the README's "Metrics" section.
fn documented_metrics() -> std::collections::BTreeSet<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("the broker's README");
    let section = readme
        .split("\n## ")
        .find(|section| section.starts_with("Metrics"))
        .expect("a Metrics section");
    section
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split('`').next())
        .map(str::to_owned)
        .collect()
}

fn scratch_dir() -> PathBuf {
    std::env::temp_dir().join(format!("rallymq-metrics-{}", run_id()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_clients_did_as_prometheus_client_reads_them() {
    require_python_prometheus_client();
    let dir = scratch_dir();
    let store_dir = dir.clone();
    let broker = start_broker(move |config| config.storage = Storage::Directory(store_dir)).await;
    let addr = tcp_addr(&broker);
    let port = addr.port().to_string();

    // A subscriber that stays connected (MQTT 5), and a persistent session that goes offline.
    let (mut subscriber, _) =
        TestClient::tcp(addr, connect_packet(ProtocolVersion::V5, "subscriber")).await;
    subscriber
        .subscribe(vec![subscription("m/#", QoS::AtLeastOnce)])
        .await;
    let (mut offline, _) = TestClient::tcp(
        addr,
        persistent_connect(ProtocolVersion::V5, "offline", 3600),
    )
    .await;
    offline
        .subscribe(vec![subscription("q/#", QoS::AtLeastOnce)])
        .await;
    offline.disconnect(ReasonCode::Success).await;
    wait_clients(&broker, 1).await;

    // Our client over MQTT 3.1.1: 5 QoS 1 messages to the subscriber, 4 QoS 1 and one QoS 0
    // to the offline session (queued; dropped), one QoS 0 where no one subscribes.
    let (mut publisher, _) =
        TestClient::tcp(addr, connect_packet(ProtocolVersion::V3_1_1, "publisher")).await;
    for _ in 0..5 {
        let acked = publisher
            .publish(message("m/a", "hello", QoS::AtLeastOnce))
            .await;
        assert_eq!(acked, ReasonCode::Success);
    }
    for _ in 0..4 {
        publisher
            .publish(message("q/x", "abcd", QoS::AtLeastOnce))
            .await;
    }
    publisher
        .publish(message("q/x", "zero", QoS::AtMostOnce))
        .await;
    publisher
        .publish(message("nobody/x", "none", QoS::AtMostOnce))
        .await;
    publisher.disconnect(ReasonCode::Success).await;

    // Mosquitto's clients: a retained QoS 2 message over MQTT 5, then a QoS 0 subscriber over
    // MQTT 3.1.1 that takes it and leaves.
    let id = run_id();
    let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    mosquitto(
        "mosquitto_pub",
        args(&[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            "mqttv5",
            "-i",
            &format!("pub-{id}"),
            "-q",
            "2",
            "-r",
            "-t",
            "m/r",
            "-m",
            "kept",
        ]),
    )
    .await;
    let got = mosquitto(
        "mosquitto_sub",
        args(&[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            "mqttv311",
            "-i",
            &format!("sub-{id}"),
            "-q",
            "0",
            "-t",
            "m/r",
            "-C",
            "1",
            "-W",
            "10",
        ]),
    )
    .await;
    assert_eq!(got, "kept");
    for n in 0..6 {
        let received = subscriber.recv().await;
        assert!(received.is_some(), "message {n} of 6 not delivered");
    }

    // A refused CONNECT (an authentication method the broker does not offer: 0x8C), a client
    // that leaves with 0x04, and one that drops its connection without DISCONNECT.
    let mut refused = connect_packet(ProtocolVersion::V5, "refused");
    refused.properties.authentication_method = Some(MqttString::new("SCRAM-SHA-1").unwrap());
    let (_, event) = TestClient::tcp(addr, refused).await;
    assert!(
        matches!(
            event,
            ClientEvent::Closed(CloseReason::Refused(ReasonCode::BadAuthenticationMethod))
        ),
        "{event:?}"
    );
    let (mut leaver, _) =
        TestClient::tcp(addr, connect_packet(ProtocolVersion::V5, "leaver")).await;
    leaver
        .disconnect(ReasonCode::DisconnectWithWillMessage)
        .await;
    let (mut dropper, _) =
        TestClient::tcp(addr, connect_packet(ProtocolVersion::V3_1_1, "dropper")).await;
    dropper.kill();
    wait_clients(&broker, 1).await;

    let response = http(http_addr(&broker), "GET", "/metrics", "").await;
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = String::from_utf8(response.body).expect("UTF-8");
    let scrape = Scrape::parse(&text, "prometheus");

    // Connections: the subscriber alone, over TCP, MQTT 5; every listener and version listed.
    for listener in ["tcp", "ws"] {
        for protocol in ["3.1", "3.1.1", "5.0"] {
            let expected = if (listener, protocol) == ("tcp", "5.0") {
                1.0
            } else {
                0.0
            };
            let labels = [("listener", listener), ("protocol", protocol)];
            assert_eq!(
                scrape.get("rallymq_connections", &labels),
                expected,
                "{labels:?}"
            );
        }
    }
    assert_eq!(scrape.kind("rallymq_connections"), "gauge");
    // Seven accepted (ours: subscriber, offline, publisher, leaver, dropper; Mosquitto's two),
    // one refused with its code.
    let connects = |code, reason| {
        scrape.get(
            "rallymq_connects_total",
            &[("code", code), ("reason", reason)],
        )
    };
    assert_eq!(connects("0x00", "Success"), 7.0);
    assert_eq!(connects("0x8C", "BadAuthenticationMethod"), 1.0);
    assert_eq!(scrape.all("rallymq_connects_total").len(), 2);
    assert_eq!(scrape.kind("rallymq_connects_total"), "counter");
    // Disconnects: four normal DISCONNECTs (offline, publisher, mosquitto_pub, mosquitto_sub),
    // one with 0x04, one connection lost.
    let disconnects = |cause, code| {
        scrape.get(
            "rallymq_disconnects_total",
            &[("cause", cause), ("code", code)],
        )
    };
    assert_eq!(disconnects("client", "0x00"), 4.0);
    assert_eq!(disconnects("client", "0x04"), 1.0);
    assert_eq!(disconnects("connection_lost", "none"), 1.0);
    assert_eq!(scrape.all("rallymq_disconnects_total").len(), 3);

    // Messages in, by QoS, with their payload bytes.
    let received = |qos| scrape.get("rallymq_messages_received_total", &[("qos", qos)]);
    let received_bytes = |qos| scrape.get("rallymq_messages_received_bytes_total", &[("qos", qos)]);
    assert_eq!(
        [received("0"), received("1"), received("2")],
        [2.0, 9.0, 1.0]
    );
    assert_eq!(
        [
            received_bytes("0"),
            received_bytes("1"),
            received_bytes("2")
        ],
        [8.0, 5.0 * 5.0 + 4.0 * 4.0, 4.0]
    );
    // Out: six QoS 1 to the subscriber (the QoS 2 message downgraded to its QoS 1), the
    // retained message at QoS 0 to mosquitto_sub.
    let sent = |qos| scrape.get("rallymq_messages_sent_total", &[("qos", qos)]);
    let sent_bytes = |qos| scrape.get("rallymq_messages_sent_bytes_total", &[("qos", qos)]);
    assert_eq!([sent("0"), sent("1"), sent("2")], [1.0, 6.0, 0.0]);
    assert_eq!(
        [sent_bytes("0"), sent_bytes("1"), sent_bytes("2")],
        [4.0, 5.0 * 5.0 + 4.0, 0.0]
    );
    assert_eq!(scrape.get("rallymq_messages_routed_total", &[]), 12.0);
    assert_eq!(scrape.get("rallymq_messages_queued_total", &[]), 10.0);
    // Dropped: the QoS 0 message for the offline session, the one with no subscriber.
    let dropped = |cause| scrape.get("rallymq_messages_dropped_total", &[("cause", cause)]);
    assert_eq!(dropped("offline_qos0"), 1.0);
    assert_eq!(dropped("no_subscribers"), 1.0);
    for cause in ["queue_full", "expired", "packet_too_large", "session_ended"] {
        assert_eq!(dropped(cause), 0.0, "{cause}");
    }

    // What is held: the offline session's queue (4 messages of 3 + 4 bytes), the sessions, the
    // two subscriptions, the retained message.
    assert_eq!(scrape.get("rallymq_queued_messages", &[]), 4.0);
    assert_eq!(scrape.get("rallymq_queued_bytes", &[]), 28.0);
    assert_eq!(scrape.get("rallymq_sessions", &[("state", "online")]), 1.0);
    assert_eq!(scrape.get("rallymq_sessions", &[("state", "offline")]), 1.0);
    assert_eq!(scrape.get("rallymq_subscriptions", &[]), 2.0);
    assert_eq!(scrape.get("rallymq_retained_messages", &[]), 1.0);
    assert!(scrape.get("rallymq_network_received_bytes_total", &[]) > 0.0);
    assert!(scrape.get("rallymq_network_sent_bytes_total", &[]) > 0.0);

    // The store: commits, and a histogram of their durations that counts each.
    let commits = scrape.get("rallymq_store_commits_total", &[]);
    let failures = scrape.get("rallymq_store_commit_failures_total", &[]);
    assert!(
        commits > 0.0,
        "the session and the queued messages were committed"
    );
    assert_eq!(failures, 0.0);
    assert_eq!(
        scrape.kind("rallymq_store_commit_duration_seconds_count"),
        "histogram"
    );
    assert_eq!(
        scrape.get("rallymq_store_commit_duration_seconds_count", &[]),
        commits
    );
    assert_eq!(
        scrape.get(
            "rallymq_store_commit_duration_seconds_bucket",
            &[("le", "+Inf")]
        ),
        commits
    );
    assert!(scrape.get("rallymq_store_commit_duration_seconds_sum", &[]) > 0.0);
    let buckets: Vec<f64> = scrape
        .all("rallymq_store_commit_duration_seconds_bucket")
        .iter()
        .map(|sample| sample.value)
        .collect();
    assert!(
        buckets.windows(2).all(|pair| pair[0] <= pair[1]),
        "{buckets:?}"
    );

    // The process.
    assert!(scrape.get("process_resident_memory_bytes", &[]) > 1_000_000.0);
    let open = scrape.get("process_open_fds", &[]);
    assert!(
        open > 3.0 && open <= scrape.get("process_max_fds", &[]),
        "{open}"
    );
    assert!(scrape.get("process_cpu_seconds_total", &[]) > 0.0);
    assert_eq!(
        scrape.get(
            "rallymq_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );

    // The README's table names every metric served, and only those.
    let documented = documented_metrics();
    let served: std::collections::BTreeSet<String> = scrape
        .0
        .iter()
        .map(|sample| {
            let name = sample.name.as_str();
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|base| documented.contains(*base))
                .unwrap_or(name);
            base.to_owned()
        })
        .collect();
    assert_eq!(served, documented, "crates/broker/README.md, Metrics");

    // OpenMetrics for a scraper that asks (Prometheus's Accept header): the same values.
    let response = http(
        http_addr(&broker),
        "GET",
        "/metrics",
        "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n",
    )
    .await;
    assert_eq!(
        response.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    let text = String::from_utf8(response.body).expect("UTF-8");
    assert!(text.ends_with("# EOF\n"), "{text}");
    let openmetrics = Scrape::parse(&text, "openmetrics");
    assert_eq!(
        openmetrics.get("rallymq_messages_received_total", &[("qos", "1")]),
        9.0
    );
    assert_eq!(
        openmetrics.get("rallymq_connects_total", &[("code", "0x8C")]),
        1.0
    );
    assert_eq!(openmetrics.get("rallymq_queued_messages", &[]), 4.0);
    let info = openmetrics.all("rallymq_build_info");
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].family, "rallymq_build");
    assert_eq!(info[0].kind, "info");

    broker.shutdown(Duration::from_secs(1)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// HEAD gives the headers of GET without the body; other methods are refused; `metrics =
/// false` leaves `/metrics` unserved.
#[tokio::test]
async fn metrics_head_and_methods_and_the_switch() {
    let broker = start_broker(|_| {}).await;
    let get = http(http_addr(&broker), "GET", "/metrics", "").await;
    let head = http(http_addr(&broker), "HEAD", "/metrics", "").await;
    assert_eq!((get.status, head.status), (200, 200));
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-type"), get.header("content-type"));
    let length: usize = head
        .header("content-length")
        .expect("a length")
        .parse()
        .expect("a number");
    // The process's figures change between the two requests; their size barely does.
    assert!(
        length.abs_diff(get.body.len()) < 64,
        "{length} {}",
        get.body.len()
    );
    let post = http(
        http_addr(&broker),
        "POST",
        "/metrics",
        "Content-Length: 0\r\n",
    )
    .await;
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    broker.shutdown(Duration::from_secs(1)).await;

    let broker = start_broker(|config| config.metrics = false).await;
    let off = http(http_addr(&broker), "GET", "/metrics", "").await;
    assert_eq!(off.status, 404);
    broker.shutdown(Duration::from_secs(1)).await;
}
