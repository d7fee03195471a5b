//! Interop tests with real peers over loopback: paho-mqtt (Python) over TCP and WebSockets,
//! `mosquitto_pub` / `mosquitto_sub` over TCP with MQTT 3.1, 3.1.1 and 5.0, and MQTT.js (Node)
//! over `ws://`. Each test starts the broker in-process on free ports and runs the peers as
//! child processes, every one with a bounded time. Where it makes sense the same peer script
//! also runs against a real Mosquitto broker, and both must show the same outcome; where the
//! two differ within what the spec allows (or Mosquitto strays from it), the expectation names
//! the broker and the test says why.
//!
//! The scenarios live in `tests/interop/paho_scenarios.py` (one scenario a run; it prints what
//! it observed as one line of JSON, or exits 1 saying what did not happen in time), some of
//! them driving a hand-written client where no library lets a test break the rules, and in
//! `tests/interop/mqttjs_ws.js`. Their expected outcomes are in `tests/support/interop.rs`,
//! shared with `tests/cluster_interop.rs`, which runs them on a cluster. To run one by hand,
//! `serve_for_manual_runs` (ignored) serves both brokers and prints their ports.
//!
//! The peers are installed by `bash scripts/setup.sh` (Mosquitto and its clients from Debian,
//! paho-mqtt from `scripts/requirements.txt`, MQTT.js from `tests/interop/package-lock.json`). A
//! missing peer fails the test with a message saying so; it is never skipped.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use rallymq_broker::{Broker, BrokerConfig, BrokerHandle, ListenerKind};
use rallymq_test_support::{Mosquitto, run_id, run_peer};
use support::interop::*;

mod support;

/// Longest a single step with a command-line peer may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Brokers under test: ours in-process, and Mosquitto as the reference.

/// Our broker on free TCP and WebSocket ports, on its own runtime; the test thread stays free
/// to run peers synchronously.
struct OurBroker {
    runtime: tokio::runtime::Runtime,
    handle: Option<BrokerHandle>,
}

impl OurBroker {
    fn start() -> Self {
        Self::start_with(|_| {})
    }

    /// Starts with the test configuration changed by `configure`.
    fn start_with(configure: impl FnOnce(&mut BrokerConfig)) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let mut config = BrokerConfig::without_listeners();
        config.tcp.push("127.0.0.1:0".parse().expect("an address"));
        config.ws.push("127.0.0.1:0".parse().expect("an address"));
        config.sys_interval = None;
        configure(&mut config);
        let handle = runtime
            .block_on(Broker::start(config))
            .expect("the broker starts");
        Self {
            runtime,
            handle: Some(handle),
        }
    }

    fn addr(&self, kind: ListenerKind) -> SocketAddr {
        self.handle
            .as_ref()
            .and_then(|h| h.local_addr(kind))
            .expect("the listener is bound")
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint {
            name: "rallymq",
            tcp: self.addr(ListenerKind::Tcp).port(),
            ws: self.addr(ListenerKind::WebSocket).port(),
        }
    }
}

impl OurBroker {
    /// Shuts the broker down now, with `grace` for the connections to end.
    fn shutdown(&mut self, grace: Duration) {
        if let Some(handle) = self.handle.take() {
            self.runtime.block_on(handle.shutdown(grace));
        }
    }
}

impl Drop for OurBroker {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            self.runtime
                .block_on(handle.shutdown(Duration::from_millis(500)));
        }
    }
}

/// Where the reference broker listens (rallymq-test-support's Mosquitto: anonymous, on
/// 127.0.0.1 only, MQTT over TCP and over WebSockets on any path).
trait ReferenceEndpoint {
    fn endpoint(&self) -> Endpoint;
}

impl ReferenceEndpoint for Mosquitto {
    fn endpoint(&self) -> Endpoint {
        Endpoint {
            name: "Mosquitto",
            tcp: self.tcp,
            ws: self.ws,
        }
    }
}

/// Where a peer connects.
#[derive(Debug, Clone, Copy)]
struct Endpoint {
    name: &'static str,
    tcp: u16,
    ws: u16,
}

// ---------------------------------------------------------------------------------------------
// Running peers.

fn require_mosquitto_clients() {
    for client in ["mosquitto_pub", "mosquitto_sub"] {
        require_peer(client, Command::new(client).arg("--help"), |out| {
            out.contains("mosquitto")
        });
    }
}

/// A peer that runs alongside the test, read line by line (a `mosquitto_sub`).
struct Streaming {
    what: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Streaming {
    fn spawn(command: &mut Command) -> Result<Self, String> {
        let what = format!("{command:?}");
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{what}: does not start: {e}"))?;
        let (tx, lines) = mpsc::channel();
        for pipe in [
            Box::new(child.stdout.take().expect("stdout is piped")) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().expect("stderr is piped")),
        ] {
            let tx = tx.clone();
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if tx.send(line.trim_end().to_owned()).is_err() {
                        return;
                    }
                }
            });
        }
        Ok(Self {
            what,
            child,
            lines,
            seen: Vec::new(),
        })
    }

    /// Waits for the next line that `wanted` accepts.
    fn wait_for(&mut self, wanted: impl Fn(&str) -> bool, what: &str) -> Result<String, String> {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if wanted(&line) {
                        return Ok(line);
                    }
                }
                Err(_) => {
                    return Err(format!(
                        "{}: no {what} within {STEP_TIMEOUT:?}; output:\n{}",
                        self.what,
                        self.seen.join("\n")
                    ));
                }
            }
        }
    }

    /// The next `count` message lines (those starting with `MSG `), sorted.
    fn messages(&mut self, count: usize) -> Result<Vec<String>, String> {
        let mut messages = Vec::new();
        for _ in 0..count {
            messages.push(self.wait_for(|l| l.starts_with("MSG "), "message")?);
        }
        messages.sort();
        Ok(messages)
    }

    /// The message lines (those starting with `MSG `) that come within `window`.
    fn messages_for(&mut self, window: Duration) -> Vec<String> {
        let deadline = Instant::now() + window;
        let mut messages = Vec::new();
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if line.starts_with("MSG ") {
                messages.push(line);
            }
        }
        messages
    }

    /// Waits for the peer to exit with success.
    fn finish(mut self) -> Result<(), String> {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => return Err(format!("{}: {status}", self.what)),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                _ => return Err(format!("{}: did not exit", self.what)),
            }
        }
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// paho-mqtt (Python): tests/interop/paho_scenarios.py, with the expected outcomes in
// tests/support/interop.rs.

/// Runs one paho scenario against `endpoint`; its JSON outcome.
fn paho(
    scenario: &str,
    endpoint: Endpoint,
    transport: Transport,
    version: &str,
) -> Result<String, String> {
    let port = match transport {
        Transport::Tcp => endpoint.tcp,
        Transport::WebSockets => endpoint.ws,
    };
    support::interop::paho(scenario, &[port], transport, version)
}

/// Runs `scenario` for each of its MQTT versions over each of its transports against our
/// broker, and over TCP against Mosquitto; every outcome must be the expected one.
fn paho_scenario(scenario: &PahoScenario) {
    require_paho();
    let ours = OurBroker::start();
    let reference = Mosquitto::start();
    paho_cases_on(
        &ours,
        &reference,
        scenario.name,
        scenario.versions,
        scenario.transports,
        scenario.expected,
    );
}

/// Runs a paho scenario for each MQTT version over `transports` against `ours`, and over TCP
/// against `reference`, brokers the caller started (with settings of its own).
fn paho_cases_on(
    ours: &OurBroker,
    reference: &Mosquitto,
    scenario: &str,
    versions: &[&str],
    transports: &[Transport],
    expected: impl Fn(&str, &str) -> String,
) {
    let mut cases: Vec<_> = transports.iter().map(|t| (ours.endpoint(), *t)).collect();
    cases.push((reference.endpoint(), Transport::Tcp));
    // The cases run side by side: each scenario uses its own topics and client ids.
    let results: Vec<_> = thread::scope(|scope| {
        let runs: Vec<_> = versions
            .iter()
            .flat_map(|version| cases.iter().map(move |case| (*version, *case)))
            .map(|(version, (endpoint, transport))| {
                let run = scope.spawn(move || paho(scenario, endpoint, transport, version));
                (version, endpoint, transport, run)
            })
            .collect();
        runs.into_iter()
            .map(|(version, endpoint, transport, run)| {
                let result = run.join().unwrap_or_else(|_| Err("panicked".to_owned()));
                (version, endpoint, transport, result)
            })
            .collect()
    });
    let mut failures = Vec::new();
    for (version, endpoint, transport, result) in results {
        let case = format!(
            "paho {scenario}, MQTT {version} over {transport:?} to {}",
            endpoint.name
        );
        check_observed(
            &mut failures,
            &case,
            result,
            &expected(version, endpoint.name),
        );
    }
    assert_no_failures(failures);
}

/// [`QOS`] on our broker and on Mosquitto.
#[test]
fn mqtt_3_8_4_6_paho_qos_0_1_2_round_trips_downgraded_to_granted_qos() {
    paho_scenario(&QOS);
}

/// [`RETAINED`] on our broker and on Mosquitto.
#[test]
fn mqtt_3_3_1_5_paho_retained_set_replace_clear_and_sent_on_subscribe() {
    paho_scenario(&RETAINED);
}

/// [`WILL`] on our broker and on Mosquitto.
#[test]
fn mqtt_3_1_2_8_paho_will_on_abnormal_disconnect_not_after_disconnect() {
    paho_scenario(&WILL);
}

/// [`SHARED`] on our broker and on Mosquitto.
#[test]
fn paho_shared_subscription_gives_each_message_to_one_member() {
    paho_scenario(&SHARED);
}

/// [`ALIAS`] on our broker and on Mosquitto.
#[test]
fn paho_topic_alias_from_client_to_broker() {
    paho_scenario(&ALIAS);
}

/// [`RESUME`] on our broker and on Mosquitto.
#[test]
fn mqtt_3_1_2_4_paho_session_resume_delivers_messages_queued_offline() {
    paho_scenario(&RESUME);
}

/// [`BURST`] on our broker and on Mosquitto.
#[test]
fn mqtt_4_6_0_5_paho_burst_of_qos1_and_qos2_messages_arrives_in_order() {
    paho_scenario(&BURST);
}

/// [`LARGE`] on our broker and on Mosquitto.
#[test]
fn paho_large_payload_arrives_intact() {
    paho_scenario(&LARGE);
}

/// [`TAKEOVER`] on our broker and on Mosquitto.
#[test]
fn mqtt_3_1_4_2_paho_session_takeover_disconnects_the_first_connection() {
    paho_scenario(&TAKEOVER);
}

/// [`TAKEOVER_CLEAN`] on our broker and on Mosquitto.
#[test]
fn mqtt_3_1_2_6_paho_takeover_of_a_clean_session_starts_afresh() {
    paho_scenario(&TAKEOVER_CLEAN);
}

/// [`TAKEOVER_CASES`] on our broker and on Mosquitto.
#[test]
fn mqtt_3_1_4_3_paho_takeover_keeps_or_ends_the_session_and_its_will() {
    paho_scenario(&TAKEOVER_CASES);
}

/// [`TAKEOVER_WILL_DELAY`] on our broker and on Mosquitto.
#[test]
fn mqtt_3_1_3_9_paho_v5_will_delay_across_takeover() {
    paho_scenario(&TAKEOVER_WILL_DELAY);
}

/// [`OPTIONS`] on our broker and on Mosquitto.
#[test]
fn mqtt_3_8_3_3_paho_v5_no_local_retain_as_published_retain_handling() {
    paho_scenario(&OPTIONS);
}

/// [`EXPIRY`] on our broker and on Mosquitto.
#[test]
fn mqtt_3_3_2_5_paho_v5_message_expiry_while_offline() {
    paho_scenario(&EXPIRY);
}

/// [`SUBID`] on our broker and on Mosquitto.
#[test]
fn mqtt_3_3_4_3_paho_v5_subscription_identifiers_of_overlapping_subscriptions() {
    paho_scenario(&SUBID);
}

/// [`ASSIGNED`] on our broker and on Mosquitto.
#[test]
fn mqtt_3_1_3_6_paho_empty_client_id_is_assigned_one() {
    paho_scenario(&ASSIGNED);
}

/// [`UNSUBSCRIBE`] on our broker and on Mosquitto.
#[test]
fn mqtt_3_10_4_2_paho_unsubscribe_stops_delivery() {
    paho_scenario(&UNSUBSCRIBE);
}

/// [`WILL_DELAY`] on our broker and on Mosquitto.
#[test]
fn paho_v5_will_delay_cancelled_by_reconnect_else_published() {
    paho_scenario(&WILL_DELAY);
}

/// [`REDELIVER`] on our broker and on Mosquitto.
#[test]
fn mqtt_4_4_0_1_paho_unacknowledged_messages_sent_again_on_resume() {
    paho_scenario(&REDELIVER);
}

/// [`RECEIVE_MAX`] on our broker and on Mosquitto.
#[test]
fn mqtt_3_3_4_9_paho_v5_client_receive_maximum_respected() {
    paho_scenario(&RECEIVE_MAX);
}

/// [`MAX_PACKET`] on our broker and on Mosquitto.
#[test]
fn mqtt_3_1_2_24_paho_v5_client_maximum_packet_size_respected() {
    paho_scenario(&MAX_PACKET);
}

/// [`PROPERTIES`] on our broker and on Mosquitto.
#[test]
fn mqtt_3_3_2_15_paho_v5_publish_properties_forwarded_unaltered() {
    paho_scenario(&PROPERTIES);
}

/// [`RETAINED_MANY`] on our broker and on Mosquitto.
#[test]
fn mqtt_3_3_1_6_paho_retained_messages_matching_each_filter() {
    paho_scenario(&RETAINED_MANY);
}

/// [`KEEPALIVE`] on our broker and on Mosquitto.
#[test]
fn mqtt_3_12_4_1_paho_keep_alive_pings_answered() {
    paho_scenario(&KEEPALIVE);
}

/// The installed Mosquitto's version, from `mosquitto -h` ("mosquitto version 2.0.11").
fn mosquitto_version() -> (u32, u32, u32) {
    let output = Command::new(rallymq_test_support::mosquitto_program())
        .arg("-h")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("Mosquitto is missing ({e}); run bash scripts/setup.sh"));
    let text = String::from_utf8_lossy(&output.stdout);
    let parsed = text
        .split_whitespace()
        .skip_while(|word| *word != "version")
        .nth(1)
        .and_then(|version| {
            let mut parts = version.split('.').map(|part| part.parse::<u32>().ok());
            Some((parts.next()??, parts.next()??, parts.next()??))
        });
    parsed.unwrap_or_else(|| panic!("no version in `mosquitto -h`: {text}"))
}

/// Mosquitto's `max_keepalive` (here 60): paho asks for keep alives 0, 30, 60, 61 and 65535.
/// An MQTT 5 client over the maximum, or asking for none, is told the maximum as Server Keep
/// Alive; an MQTT 3.1 or 3.1.1 one is refused with return code 2 (which paho reports as 0x85).
/// Both brokers must answer alike. Mosquitto applies the limit to 3.1 and 3.1.1 clients since
/// 2.0.12 (its ChangeLog: "Fix `max_keepalive` not applying to MQTT v3.1.1 and v3.1
/// connections"); an older Mosquitto accepts them all, and is expected to.
#[test]
fn mosquitto_max_keepalive_corrects_v5_and_refuses_v311_over_it() {
    require_paho();
    let ours = OurBroker::start_with(|config| config.limits.max_keep_alive = Some(60));
    let reference = Mosquitto::start_with("allow_anonymous true\nmax_keepalive 60\n");
    let refuses_v311 = mosquitto_version() >= (2, 0, 12);
    let expected = |version: &str, broker: &str| {
        let cases: Vec<String> = [0u16, 30, 60, 61, 65535]
            .iter()
            .map(|&keep_alive| {
                let over = keep_alive == 0 || keep_alive > 60;
                let (code, told) = match version {
                    "5" if over => (0, "60"),
                    "5" => (0, "null"),
                    _ if over && (broker == "rallymq" || refuses_v311) => (0x85, "null"),
                    _ => (0, "null"),
                };
                format!(r#""{keep_alive}":{{"code":{code},"server_keep_alive":{told}}}"#)
            })
            .collect();
        format!("{{{}}}", cases.join(","))
    };
    paho_cases_on(
        &ours,
        &reference,
        "max_keepalive",
        &["31", "311", "5"],
        // Over TCP only: paho makes its socket non-blocking for a keep alive of 0
        // (`settimeout(keepalive)`), and its WebSocket handshake then fails with EAGAIN.
        &[Transport::Tcp],
        expected,
    );
}

/// [`QOS2_DUP`] on our broker and on Mosquitto.
#[test]
fn mqtt_4_3_3_2_qos2_publish_sent_again_before_pubrel_delivered_once() {
    paho_scenario(&QOS2_DUP);
}

/// [`SLOW_CONSUMER`] on our broker and on Mosquitto.
#[test]
fn paho_stuck_subscriber_does_not_stall_the_publisher() {
    paho_scenario(&SLOW_CONSUMER);
}

/// [`SESSION_EXPIRY`] on our broker and on Mosquitto.
#[test]
fn mqtt_3_1_2_23_paho_v5_session_kept_for_its_expiry_interval_only() {
    paho_scenario(&SESSION_EXPIRY);
}

/// [`WILL_RETAINED`] on our broker and on Mosquitto.
#[test]
fn mqtt_3_1_2_17_paho_retained_will_is_retained() {
    paho_scenario(&WILL_RETAINED);
}

/// [`OVERLAP`] on our broker and on Mosquitto.
#[test]
fn mqtt_3_3_5_1_paho_overlapping_subscriptions_one_copy_at_highest_qos() {
    paho_scenario(&OVERLAP);
}

/// [`FANOUT`] on our broker and on Mosquitto.
#[test]
fn paho_fan_out_to_40_subscribers_all_in_order() {
    paho_scenario(&FANOUT);
}

/// [`WILL_SESSION_END`] on our broker and on Mosquitto.
#[test]
fn mqtt_3_1_3_9_paho_v5_will_sent_at_session_end_before_its_delay() {
    paho_scenario(&WILL_SESSION_END);
}

/// [`ALIAS_IN`] on our broker and on Mosquitto.
#[test]
fn paho_v5_client_accepting_topic_aliases_sees_every_topic() {
    paho_scenario(&ALIAS_IN);
}

/// [`ALIAS_OUT`] on our broker and on Mosquitto.
#[test]
fn mqtt_3_3_2_11_paho_v5_subscriber_gets_topic_aliases_from_the_broker() {
    paho_scenario(&ALIAS_OUT);
}

/// [`RETAINED_EXPIRY`] on our broker and on Mosquitto.
#[test]
fn mqtt_3_3_2_5_paho_v5_expired_retained_message_not_sent() {
    paho_scenario(&RETAINED_EXPIRY);
}

/// [`SHARED_RETAINED`] on our broker and on Mosquitto.
#[test]
fn paho_shared_subscription_gets_no_retained_messages() {
    paho_scenario(&SHARED_RETAINED);
}

/// [`EMPTY_ID_PERSISTENT`] on our broker and on Mosquitto.
#[test]
fn mqtt_3_1_3_8_empty_client_id_with_persistent_session_refused() {
    paho_scenario(&EMPTY_ID_PERSISTENT);
}

/// [`QOS2_RESUME`] on our broker and on Mosquitto.
#[test]
fn mqtt_4_4_0_1_qos2_to_subscriber_resumed_publish_then_pubrel() {
    paho_scenario(&QOS2_RESUME);
}

/// [`FANIN`] on our broker and on Mosquitto.
#[test]
fn mqtt_4_6_0_5_paho_fan_in_from_8_publishers_in_order() {
    paho_scenario(&FANIN);
}

/// [`UNICODE`] on our broker and on Mosquitto.
#[test]
fn paho_utf8_topics_and_binary_payloads_unchanged() {
    paho_scenario(&UNICODE);
}

/// [`MULTI_SUB`] on our broker and on Mosquitto.
#[test]
fn mqtt_3_8_4_5_paho_one_subscribe_several_filters() {
    paho_scenario(&MULTI_SUB);
}

/// MQTT 3.1, 3.1.1 and 5.0 clients over TCP and WebSockets at once, six in all, each publishing
/// to the others: every one gets all six messages (its own included), on our broker as on
/// Mosquitto.
#[test]
fn paho_all_versions_over_tcp_and_websockets_talk_to_each_other() {
    require_paho();
    let ours = OurBroker::start();
    let reference = Mosquitto::start();
    let mut failures = Vec::new();
    for endpoint in [ours.endpoint(), reference.endpoint()] {
        let result = paho_cross(endpoint.tcp, endpoint.ws);
        let case = format!("cross with {}", endpoint.name);
        check_observed(&mut failures, &case, result, &CROSS_EXPECTED.to_owned());
    }
    assert_no_failures(failures);
}

/// Protocol violations, driven by hand over TCP: each closes the connection, as on Mosquitto
/// (first packet not CONNECT MQTT-3.1.0-1, second CONNECT MQTT-3.1.0-2, reserved flag
/// MQTT-3.1.2-3, unknown protocol level MQTT-3.1.2-2, wildcard in a topic name MQTT-3.3.2-2,
/// ill-formed UTF-8 MQTT-1.5.3-1, reserved header flags MQTT-3.8.1-1, invalid filter
/// MQTT-4.7.1-2, empty SUBSCRIBE MQTT-3.8.3-3, bad topic aliases MQTT-3.3.2-8 ff.). We tell MQTT
/// 5 clients why first, naming the reason more precisely than Mosquitto does (Topic Name
/// invalid, Topic Filter invalid, Topic Alias invalid, Protocol Error where it sends Malformed
/// Packet), also for a second CONNECT; ill-formed UTF-8 is a Malformed Packet wherever it is
/// (MQTT-1.5.4-1), a topic included. Mosquitto's DISCONNECT sometimes does not make it out
/// before it closes, so with Mosquitto only the closes are compared.
#[test]
fn mqtt_3_1_0_1_protocol_violations_close_the_connection() {
    require_paho();
    let ours = OurBroker::start();
    let reference = Mosquitto::start();
    let mut failures = Vec::new();
    for version in ["311", "5"] {
        let told = |code: &str| format!(r#"["CONNACK 0x00","DISCONNECT {code}","closed"]"#);
        let closed_after_connack = r#"["CONNACK 0x00","closed"]"#.to_owned();
        let outcome = |code: &str| {
            if version == "5" {
                told(code)
            } else {
                closed_after_connack.clone()
            }
        };
        let mut cases = vec![
            ("SUBSCRIBE with no filter", outcome("0x82")),
            ("bad SUBSCRIBE header flags", outcome("0x81")),
            ("first packet not CONNECT", r#"["closed"]"#.to_owned()),
            ("invalid UTF-8 in topic", outcome("0x81")),
            ("invalid filter a/#/b", outcome("0x8f")),
            // MQTT 5 lets the server say why before it closes (§4.13); we do, Mosquitto
            // 2.0.11 closes without a word.
            (
                "reserved CONNECT flag set",
                if version == "5" {
                    r#"["CONNACK 0x81","closed"]"#.to_owned()
                } else {
                    r#"["closed"]"#.to_owned()
                },
            ),
            ("second CONNECT", outcome("0x82")),
            (
                "unknown protocol level",
                r#"["CONNACK 0x01","closed"]"#.to_owned(),
            ),
            ("wildcard in PUBLISH topic", outcome("0x90")),
        ];
        if version == "5" {
            cases.push(("topic alias 0", told("0x94")));
            cases.push(("topic alias above the maximum", told("0x94")));
            cases.push(("unknown alias with an empty topic", told("0x82")));
        }
        cases.sort();
        let fields: Vec<_> = cases
            .iter()
            .map(|(name, outcome)| format!(r#""{name}":{outcome}"#))
            .collect();
        let expected = format!("{{{}}}", fields.join(","));
        for endpoint in [ours.endpoint(), reference.endpoint()] {
            let mosquitto = endpoint.name == "Mosquitto";
            let normalised = |outcome: &str| {
                if mosquitto {
                    without_disconnects(outcome).replace(r#""CONNACK 0x81","#, "")
                } else {
                    outcome.to_owned()
                }
            };
            let observed = paho("violations", endpoint, Transport::Tcp, version);
            let case = format!("violations, MQTT {version}, {}", endpoint.name);
            check_observed(
                &mut failures,
                &case,
                observed.map(|observed| normalised(&observed)),
                &normalised(&expected),
            );
        }
    }
    assert_no_failures(failures);
}

/// `outcome` without its `"DISCONNECT 0x..",` entries.
fn without_disconnects(outcome: &str) -> String {
    let mut rest = outcome;
    let mut kept = String::new();
    while let Some(at) = rest.find(r#""DISCONNECT 0x"#) {
        kept.push_str(&rest[..at]);
        let entry = r#""DISCONNECT 0x00","#.len();
        rest = &rest[(at + entry).min(rest.len())..];
    }
    kept.push_str(rest);
    kept
}

/// [`RESUME_MANY`] on our broker and on Mosquitto.
#[test]
fn paho_resume_delivers_300_queued_messages_in_order() {
    paho_scenario(&RESUME_MANY);
}

/// [`KEEPALIVE_EXPIRED`] on our broker and on Mosquitto.
#[test]
fn mqtt_3_1_2_24_silent_client_disconnected_after_keep_alive_and_will_sent() {
    paho_scenario(&KEEPALIVE_EXPIRED);
}

/// [`V5_CODES`] on our broker and on Mosquitto.
#[test]
fn paho_v5_reason_codes_and_disconnect_session_expiry() {
    paho_scenario(&V5_CODES);
}

// ---------------------------------------------------------------------------------------------
// mosquitto_pub / mosquitto_sub over TCP.

/// A `mosquitto_sub` on `topic`, printing each message as `MSG <format>`, once subscribed.
fn mosquitto_sub(
    port: u16,
    version: &str,
    topic: &str,
    format: &str,
    count: usize,
) -> Result<Streaming, String> {
    // Line-buffered: its stdout is a pipe here, and each line is awaited.
    let mut sub = Streaming::spawn(
        Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub"])
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", version])
            .args(["-i", &format!("s{}", run_id())])
            .args(["-t", topic, "-q", "2", "-d"])
            .args(["-C", &count.to_string(), "-W", "10"])
            .args(["-F", &format!("MSG {format}")]),
    )?;
    // `-d` prints the SUBACK: past it, the subscription is in place.
    sub.wait_for(|l| l.contains("received SUBACK"), "SUBACK")?;
    Ok(sub)
}

fn mosquitto_pub(
    port: u16,
    version: &str,
    topic: &str,
    qos: u8,
    payload: &str,
    extra: &[&str],
) -> Result<(), String> {
    run_peer(
        Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", version])
            .args(["-i", &format!("p{}", run_id())])
            .args(["-t", topic, "-q", &qos.to_string(), "-m", payload])
            .args(extra),
        STEP_TIMEOUT,
    )
    .map(drop)
}

/// Runs `case` against our broker and Mosquitto; both must give `expected`.
fn against_both(
    what: &str,
    expected: &[String],
    case: impl Fn(u16) -> Result<Vec<String>, String> + Sync,
) {
    require_mosquitto_clients();
    let ours = OurBroker::start();
    let reference = Mosquitto::start();
    let mut failures = Vec::new();
    for endpoint in [ours.endpoint(), reference.endpoint()] {
        let name = format!("{what} with {}", endpoint.name);
        check_observed(&mut failures, &name, case(endpoint.tcp), &expected.to_vec());
    }
    assert_no_failures(failures);
}

/// `mosquitto_sub` and `mosquitto_pub` of one protocol version, QoS 0, 1 and 2, for MQTT 3.1,
/// 3.1.1 and 5.0.
#[test]
fn mosquitto_clients_round_trip_qos_0_1_2_with_mqttv31_mqttv311_mqttv5() {
    let expected: Vec<String> = ["mqttv31", "mqttv311", "mqttv5"]
        .iter()
        .flat_map(|v| (0..3).map(move |q| format!("{v}: MSG {q} 0 p{q}")))
        .collect();
    against_both("QoS round trips", &expected, |port| {
        let mut observed = Vec::new();
        for version in ["mqttv31", "mqttv311", "mqttv5"] {
            let topic = format!("interop/{}/mosq", run_id());
            let mut sub = mosquitto_sub(port, version, &topic, "%q %r %p", 3)?;
            for qos in 0..3 {
                mosquitto_pub(port, version, &topic, qos, &format!("p{qos}"), &[])?;
            }
            observed.extend(
                sub.messages(3)?
                    .into_iter()
                    .map(|line| format!("{version}: {line}")),
            );
            sub.finish()?;
        }
        Ok(observed)
    });
}

/// An MQTT 3.1 client and an MQTT 5.0 client exchange messages both ways.
#[test]
fn mosquitto_clients_mqttv31_and_mqttv5_exchange_messages_both_ways() {
    let expected = vec![
        "to 3.1: MSG 1 from five".to_owned(),
        "to 5.0: MSG 1 from three-one".to_owned(),
    ];
    against_both("3.1 <-> 5.0", &expected, |port| {
        let run = run_id();
        let (to_v31, to_v5) = (format!("interop/{run}/to31"), format!("interop/{run}/to5"));
        let mut v31 = mosquitto_sub(port, "mqttv31", &to_v31, "%q %p", 1)?;
        let mut v5 = mosquitto_sub(port, "mqttv5", &to_v5, "%q %p", 1)?;
        mosquitto_pub(port, "mqttv5", &to_v31, 1, "from five", &[])?;
        mosquitto_pub(port, "mqttv31", &to_v5, 1, "from three-one", &[])?;
        let mut observed = Vec::new();
        observed.extend(v31.messages(1)?.into_iter().map(|l| format!("to 3.1: {l}")));
        observed.extend(v5.messages(1)?.into_iter().map(|l| format!("to 5.0: {l}")));
        v31.finish()?;
        v5.finish()?;
        Ok(observed)
    });
}

/// An MQTT 5.0 publish with user properties reaches an MQTT 3.1.1 subscriber, without them
/// (it could not parse them), and an MQTT 5.0 subscriber with them, in order.
#[test]
fn mosquitto_clients_v5_user_properties_reach_v311_subscriber_without_them() {
    let expected = vec![
        "3.1.1: MSG 1 hello".to_owned(),
        "5.0: MSG 1 hello team:rally court:1".to_owned(),
    ];
    against_both("user properties 5.0 -> 3.1.1", &expected, |port| {
        let topic = format!("interop/{}/props", run_id());
        let mut v311 = mosquitto_sub(port, "mqttv311", &topic, "%q %p %P", 1)?;
        let mut v5 = mosquitto_sub(port, "mqttv5", &topic, "%q %p %P", 1)?;
        let properties = [
            "-D",
            "publish",
            "user-property",
            "team",
            "rally",
            "-D",
            "publish",
            "user-property",
            "court",
            "1",
        ];
        mosquitto_pub(port, "mqttv5", &topic, 1, "hello", &properties)?;
        let mut observed = Vec::new();
        observed.extend(v311.messages(1)?.into_iter().map(|l| format!("3.1.1: {l}")));
        observed.extend(v5.messages(1)?.into_iter().map(|l| format!("5.0: {l}")));
        v311.finish()?;
        v5.finish()?;
        Ok(observed)
    });
}

/// The `$SYS` topics carry Mosquitto's names: each one we publish is one Mosquitto publishes
/// too (both every second here, with some traffic), and the ones the broker issue asks for are
/// all there.
#[test]
fn sys_topics_use_mosquittos_names() {
    require_mosquitto_clients();
    let ours = OurBroker::start_with(|config| config.sys_interval = Some(Duration::from_secs(1)));
    let reference = Mosquitto::start_with("allow_anonymous true\nsys_interval 1\n");
    let mut seen = Vec::new();
    for endpoint in [ours.endpoint(), reference.endpoint()] {
        let topics = (|| {
            let mut sys = mosquitto_sub(endpoint.tcp, "mqttv311", "$SYS/#", "%t", 100_000)?;
            let topic = format!("interop/{}/sys", run_id());
            mosquitto_pub(endpoint.tcp, "mqttv311", &topic, 1, "kept", &["-r"])?;
            let mut topics: Vec<String> = sys
                .messages_for(Duration::from_millis(2500))
                .into_iter()
                .map(|line| line.trim_start_matches("MSG ").to_owned())
                .collect();
            topics.sort();
            topics.dedup();
            Ok::<_, String>(topics)
        })()
        .unwrap_or_else(|error| panic!("{}: {error}", endpoint.name));
        seen.push(topics);
    }
    let (ours, mosquitto) = (&seen[0], &seen[1]);
    let not_mosquittos: Vec<_> = ours.iter().filter(|t| !mosquitto.contains(t)).collect();
    assert!(
        not_mosquittos.is_empty(),
        "$SYS topics Mosquitto does not have: {not_mosquittos:?}\nMosquitto's: {mosquitto:?}"
    );
    let wanted = [
        "$SYS/broker/version",
        "$SYS/broker/uptime",
        "$SYS/broker/clients/connected",
        "$SYS/broker/clients/total",
        "$SYS/broker/messages/received",
        "$SYS/broker/messages/sent",
        "$SYS/broker/bytes/received",
        "$SYS/broker/bytes/sent",
        "$SYS/broker/subscriptions/count",
        "$SYS/broker/retained messages/count",
        "$SYS/broker/publish/messages/dropped",
        "$SYS/broker/load/messages/received/1min",
        "$SYS/broker/load/messages/sent/1min",
        "$SYS/broker/load/bytes/received/1min",
        "$SYS/broker/load/bytes/sent/1min",
        "$SYS/broker/load/connections/1min",
    ];
    let missing: Vec<_> = wanted
        .iter()
        .filter(|t| !ours.iter().any(|o| o == *t))
        .collect();
    assert!(
        missing.is_empty(),
        "$SYS topics missing: {missing:?}\npublished: {ours:?}"
    );
    let mosquitto_missing: Vec<_> = wanted
        .iter()
        .filter(|t| !mosquitto.iter().any(|o| o == *t))
        .collect();
    assert!(
        mosquitto_missing.is_empty(),
        "the reference lacks {mosquitto_missing:?}: the list is wrong"
    );
}

/// On shutdown an MQTT 5 `mosquitto_sub` is told DISCONNECT 0x8B (Server shutting down) and
/// exits. (An MQTT 3.1.1 one only sees the connection close, and quietly tries to reconnect.)
#[test]
fn mosquitto_clients_told_server_shutting_down() {
    require_mosquitto_clients();
    let mut ours = OurBroker::start();
    let topic = format!("interop/{}/shutdown", run_id());
    let mut v5 = mosquitto_sub(ours.endpoint().tcp, "mqttv5", &topic, "%p", 1)
        .unwrap_or_else(|e| panic!("{e}"));
    ours.shutdown(Duration::from_secs(2));
    let told = v5
        .wait_for(|l| l.contains("DISCONNECT"), "DISCONNECT from the broker")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(told.contains("139"), "not DISCONNECT 0x8B (139): {told}");
    let deadline = Instant::now() + STEP_TIMEOUT;
    while !matches!(v5.child.try_wait(), Ok(Some(_))) {
        assert!(
            Instant::now() < deadline,
            "mosquitto_sub still runs after DISCONNECT"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// MQTT.js (Node) over WebSockets: tests/interop/mqttjs_ws.js

/// MQTT.js connects over `ws://ADDR/mqtt` (subprotocol `mqtt`, or `mqttv3.1` for MQTT 3.1),
/// subscribes, publishes at QoS 1 and receives its message, then gets a QoS 2 retained message
/// on a new subscription with RETAIN set, with MQTT 3.1, 3.1.1 and 5.0, against our broker and
/// Mosquitto.
#[test]
fn mqttjs_over_websockets_subscribe_publish_qos1_receive() {
    require_mqttjs();
    let ours = OurBroker::start();
    let reference = Mosquitto::start();
    let mut failures = Vec::new();
    for endpoint in [ours.endpoint(), reference.endpoint()] {
        for version in ["3", "4", "5"] {
            let url = format!("ws://127.0.0.1:{}/mqtt", endpoint.ws);
            let result = mqttjs_ws(&url, version, &url);
            let case = format!("MQTT.js protocol {version} to {}", endpoint.name);
            check_observed(&mut failures, &case, result, &MQTTJS_WS_EXPECTED.to_owned());
        }
    }
    assert_no_failures(failures);
}

/// MQTT.js (MQTT 5, Topic Alias Maximum 10) over WebSockets gets aliases from our broker: each
/// topic's first message sets one, later ones come on the alias alone, none above 10
/// (MQTT-3.3.2-11), and MQTT.js resolves every topic. Mosquitto sends no aliases.
/// `tests/interop/mqttjs_aliases.js`.
#[test]
fn mqtt_3_3_2_11_mqttjs_gets_topic_aliases_from_the_broker() {
    require_mqttjs();
    let ours = OurBroker::start();
    let reference = Mosquitto::start();
    let mut failures = Vec::new();
    for (endpoint, (set, alone, highest)) in [
        (ours.endpoint(), (3, 5, 3)),
        (reference.endpoint(), (0, 0, 0)),
    ] {
        let url = format!("ws://127.0.0.1:{}/mqtt", endpoint.ws);
        let result = mqttjs_aliases(&url, &url);
        let expected = mqttjs_aliases_expected(set, alone, highest);
        let case = format!("MQTT.js topic aliases from {}", endpoint.name);
        check_observed(&mut failures, &case, result, &expected);
    }
    assert_no_failures(failures);
}

// ---------------------------------------------------------------------------------------------
// By hand.

/// Serves our broker and a Mosquitto for trying peers by hand; prints their ports. Run with
/// `cargo test -p rallymq-broker --test interop -- --ignored --nocapture serve_for_manual_runs`
/// (`INTEROP_SERVE_SECS` sets how long, 300 s by default).
#[test]
#[ignore = "a tool for running peer scripts by hand, not a test"]
fn serve_for_manual_runs() {
    let ours = OurBroker::start();
    let reference = Mosquitto::start();
    for endpoint in [ours.endpoint(), reference.endpoint()] {
        println!(
            "{}: tcp port {}, ws://127.0.0.1:{}/mqtt",
            endpoint.name, endpoint.tcp, endpoint.ws
        );
    }
    thread::sleep(manual_serve_time());
}
