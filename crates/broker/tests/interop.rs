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
//! `tests/interop/mqttjs_ws.js`. To run one by hand, `serve_for_manual_runs` (ignored) serves
//! both brokers and prints their ports.
//!
//! The peers are installed by `bash scripts/setup.sh` (Mosquitto and its clients from Debian,
//! paho-mqtt from `scripts/requirements.txt`, MQTT.js from `tests/interop/package-lock.json`). A
//! missing peer fails the test with a message saying so; it is never skipped.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use rallymq_broker::{Broker, BrokerConfig, BrokerHandle, ListenerKind};
use rallymq_test_support::{Mosquitto, run_id, run_peer};

/// Longest a peer script may run.
const PEER_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a single step with a command-line peer may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

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

/// Fails the test, never skips it, when a peer is not installed.
fn require_peer(peer: &str, command: &mut Command, ok: impl Fn(&str) -> bool) {
    let output = command.stdin(Stdio::null()).output().unwrap_or_else(|e| {
        panic!("interop peer {peer} is missing ({e}); run bash scripts/setup.sh")
    });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        ok(&text),
        "interop peer {peer} is missing or broken; run bash scripts/setup.sh:\n{text}"
    );
}

fn require_paho() {
    require_peer(
        "paho-mqtt (Python)",
        Command::new("python3").args([
            "-c",
            "import paho.mqtt; print('paho', paho.mqtt.__version__)",
        ]),
        |out| out.starts_with("paho 2."),
    );
}

fn require_mosquitto_clients() {
    for client in ["mosquitto_pub", "mosquitto_sub"] {
        require_peer(client, Command::new(client).arg("--help"), |out| {
            out.contains("mosquitto")
        });
    }
}

fn require_mqttjs() {
    require_peer(
        "MQTT.js (npm mqtt, run npm ci in crates/broker/tests/interop)",
        Command::new("node")
            .args([
                "-e",
                "console.log('mqtt', require('mqtt/package.json').version)",
            ])
            .current_dir(interop_dir()),
        |out| out.starts_with("mqtt "),
    );
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

/// A peer run's outcome as a failure message shows it.
trait Outcome: PartialEq {
    fn readable(&self) -> String;
}

/// JSON or a line as it is, without `{:?}`'s escaped quotes.
impl Outcome for String {
    fn readable(&self) -> String {
        self.clone()
    }
}

/// Lines as a list.
impl Outcome for Vec<String> {
    fn readable(&self) -> String {
        format!("{self:?}")
    }
}

/// Records in `failures` how `observed` (a peer run) differs from `expected`, if it does.
fn check_observed<T: Outcome>(
    failures: &mut Vec<String>,
    case: &str,
    observed: Result<T, String>,
    expected: &T,
) {
    match observed {
        Ok(observed) if observed == *expected => {}
        Ok(observed) => failures.push(format!(
            "{case}:\n  expected {}\n  observed {}",
            expected.readable(),
            observed.readable()
        )),
        Err(error) => failures.push(format!("{case}: {error}")),
    }
}

/// Asserts that no case failed, listing every failure.
fn assert_no_failures(failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} interop case(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

// ---------------------------------------------------------------------------------------------
// paho-mqtt (Python): tests/interop/paho_scenarios.py

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Tcp,
    WebSockets,
}

/// Runs one paho scenario against `endpoint`; its JSON outcome.
fn paho(
    scenario: &str,
    endpoint: Endpoint,
    transport: Transport,
    version: &str,
) -> Result<String, String> {
    let (transport, port) = match transport {
        Transport::Tcp => ("tcp", endpoint.tcp),
        Transport::WebSockets => ("websockets", endpoint.ws),
    };
    run_peer(
        Command::new("python3")
            .arg(interop_dir().join("paho_scenarios.py"))
            .arg(scenario)
            .args(["--port", &port.to_string(), "--transport", transport])
            .args(["--version", version]),
        PEER_TIMEOUT,
    )
}

/// Runs a paho scenario for each MQTT version over TCP and WebSockets against our broker, and
/// over TCP against Mosquitto; every outcome must be the expected one.
fn paho_matrix(scenario: &str, versions: &[&str], expected: impl Fn(&str) -> String) {
    paho_matrix_per_broker(scenario, versions, |version, _| expected(version));
}

/// [`paho_matrix`] where the expected outcome may name the broker (`rallymq` or `Mosquitto`),
/// for what the spec leaves open and the two brokers do differently.
fn paho_matrix_per_broker(
    scenario: &str,
    versions: &[&str],
    expected: impl Fn(&str, &str) -> String,
) {
    paho_cases(
        scenario,
        versions,
        &[Transport::Tcp, Transport::WebSockets],
        expected,
    );
}

/// Runs a paho scenario for each MQTT version over `transports` against our broker, and over
/// TCP against Mosquitto.
fn paho_cases(
    scenario: &str,
    versions: &[&str],
    transports: &[Transport],
    expected: impl Fn(&str, &str) -> String,
) {
    require_paho();
    let ours = OurBroker::start();
    let reference = Mosquitto::start();
    paho_cases_on(&ours, &reference, scenario, versions, transports, expected);
}

/// [`paho_cases`] against brokers the caller started (with settings of its own).
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

/// A message as the paho script describes it (topic relative to the scenario's prefix).
fn msg(topic: &str, payload: &str, qos: u8, retain: bool) -> String {
    format!(r#"{{"payload":"{payload}","qos":{qos},"retain":{retain},"topic":"{topic}"}}"#)
}

fn list(messages: &[String]) -> String {
    format!("[{}]", messages.join(","))
}

/// A scenario's whole result when it reports only the messages received.
fn received(messages: &[String]) -> String {
    format!(r#"{{"received":{}}}"#, list(messages))
}

/// QoS 0, 1 and 2 end to end with MQTT 3.1, 3.1.1 and 5.0; a message goes out at the lower of its QoS and the granted one
/// (3.1.1 MQTT-3.8.4-6, 5.0 MQTT-3.8.4-8).
#[test]
fn mqtt_3_8_4_6_paho_qos_0_1_2_round_trips_downgraded_to_granted_qos() {
    paho_matrix("qos", &["31", "311", "5"], |_| {
        let high = [
            msg("0", "q0", 0, false),
            msg("1", "q1", 1, false),
            msg("2", "q2", 2, false),
        ];
        let low = [
            msg("0", "q0", 0, false),
            msg("1", "q1", 1, false),
            msg("2", "q2", 1, false),
        ];
        format!(
            r#"{{"granted":[2,1],"sub_qos1":{},"sub_qos2":{}}}"#,
            list(&low),
            list(&high)
        )
    });
}

/// Retained messages: stored (MQTT-3.3.1-5), sent on subscribe with RETAIN 1 (3.1.1
/// MQTT-3.3.1-6, -8), replaced, forwarded live with RETAIN 0 (3.1.1 MQTT-3.3.1-9), and removed
/// by an empty payload, which is still forwarded (3.1.1 MQTT-3.3.1-10, -11; 5.0 MQTT-3.3.1-6,
/// -7).
#[test]
fn mqtt_3_3_1_5_paho_retained_set_replace_clear_and_sent_on_subscribe() {
    paho_matrix("retained", &["31", "311", "5"], |_| {
        format!(
            r#"{{"after_clear":{},"live_clear":{},"live_replace":{},"on_subscribe_first":{},"on_subscribe_second":{}}}"#,
            list(&[msg("", "end", 1, false)]),
            list(&[msg("", "", 1, false)]),
            list(&[msg("", "two", 1, false)]),
            list(&[msg("", "one", 1, true)]),
            list(&[msg("", "two", 1, true)]),
        )
    });
}

/// The will is published when the network connection closes without DISCONNECT (MQTT-3.1.2-8)
/// and discarded on DISCONNECT (3.1.1 MQTT-3.14.4-3 and MQTT-3.1.2-10; 5.0 MQTT-3.14.4-3 for
/// reason 0x00), but sent after an MQTT 5 DISCONNECT 0x04.
#[test]
fn mqtt_3_1_2_8_paho_will_on_abnormal_disconnect_not_after_disconnect() {
    paho_matrix("will", &["31", "311", "5"], |version| {
        let mut after_disconnect = Vec::new();
        if version == "5" {
            after_disconnect.push(msg("asked", "sent on request", 1, false));
        }
        after_disconnect.push(msg("marker", "end", 1, false));
        format!(
            r#"{{"after_disconnect":{},"after_kill":{}}}"#,
            list(&after_disconnect),
            list(&[msg("abnormal", "gone", 1, false)]),
        )
    });
}

/// A shared subscription `$share/group/filter` gives each message to exactly one member of the
/// group (MQTT 5 section 4.8.2), beside a plain subscription that gets every message. Mosquitto
/// allows it for MQTT 3.1.1 clients too, and so do we.
#[test]
fn paho_shared_subscription_gives_each_message_to_one_member() {
    paho_matrix("shared", &["311", "5"], |_| {
        r#"{"every_member_served":true,"granted":[1,1,1],"group_count":10,"group_distinct":10,"group_missing":[],"plain_count":10}"#.to_owned()
    });
}

/// Topic aliases from client to broker (MQTT 5 section 3.3.2.3.4): set with a topic, used with
/// an empty topic, remapped to another topic.
#[test]
fn paho_topic_alias_from_client_to_broker() {
    paho_matrix("alias", &["5"], |_| {
        received(&[
            msg("a", "first", 1, false),
            msg("a", "second", 1, false),
            msg("b", "third", 1, false),
            msg("b", "fourth", 1, false),
        ])
    });
}

/// A persistent session resumes (3.1.1 MQTT-3.1.2-4, 5.0 MQTT-3.1.2-5): Session Present is
/// set, the QoS 1 message published while offline is delivered (3.1.1 MQTT-3.1.2-5), the QoS 0
/// one is not (as Mosquitto does by default), and the subscription still works.
#[test]
fn mqtt_3_1_2_4_paho_session_resume_delivers_messages_queued_offline() {
    paho_matrix("resume", &["311", "5"], |_| {
        format!(
            r#"{{"first_session_present":false,"online":{},"queued":{},"resumed_session_present":true}}"#,
            list(&[msg("", "online", 1, false)]),
            list(&[msg("", "offline-qos1", 1, false)]),
        )
    });
}

/// Hundreds of QoS 1 and QoS 2 messages published back to back arrive, each once and in the
/// order sent (MQTT-4.6.0-5), with flow control on both sides.
#[test]
fn mqtt_4_6_0_5_paho_burst_of_qos1_and_qos2_messages_arrives_in_order() {
    paho_matrix("burst", &["31", "311", "5"], |_| {
        r#"{"extra":0,"qos1":"all in order","qos2":"all in order"}"#.to_owned()
    });
}

/// A 300 KiB payload, spread over many TCP segments and WebSocket frames, arrives intact.
#[test]
fn paho_large_payload_arrives_intact() {
    paho_matrix("large", &["311", "5"], |_| {
        received(&[msg("", "307200 bytes, sha256 d3560a80a6bbac80", 1, false)])
    });
}

/// A second connection with the same client id disconnects the first (MQTT-3.1.4-2), and the
/// second one carries on.
///
/// What paho reports as the MQTT 5 reason differs, and neither is the 0x8E we send
/// (MQTT-3.1.4-3): we send DISCONNECT with the reason code alone (remaining length 1, allowed by
/// MQTT 5 section 3.14.2.1), and paho 2.1 reads a reason code only when the remaining length is
/// over 2, so it reports 0; Mosquitto 2.0 closes the connection without a DISCONNECT, which
/// paho reports as 0x80.
#[test]
fn mqtt_3_1_4_2_paho_session_takeover_disconnects_the_first_connection() {
    paho_matrix_per_broker("takeover", &["31", "311", "5"], |version, broker| {
        let reason = match (version, broker) {
            ("5", "Mosquitto") => r#""first_reason":128,"#,
            ("5", _) => r#""first_reason":0,"#,
            _ => "",
        };
        format!(
            r#"{{"first_disconnected":true,{reason}"second_connected":true,"second_receives":{}}}"#,
            list(&[msg("", "to the new connection", 1, false)])
        )
    });
}

/// A Clean Session 1 connection (MQTT 5: Session Expiry 0) taken over by one asking for a
/// persistent session: the old session ended with its connection (3.1.1 MQTT-3.1.2-6), so
/// Session Present is 0 and the old subscription delivers nothing.
#[test]
fn mqtt_3_1_2_6_paho_takeover_of_a_clean_session_starts_afresh() {
    paho_matrix("takeover_clean", &["311", "5"], |_| {
        r#"{"old_subscription_delivers":false,"session_present":false}"#.to_owned()
    });
}

/// Session takeover, case by case: a persistent session taken over by a clean connection
/// starts afresh; taken over by a persistent one it carries on, subscription and all. The old
/// connection's will goes out only when the takeover ends its session: a new connection came
/// before the will was due (MQTT 5 section 3.1.2.5, MQTT-3.1.4-3), as Mosquitto does.
#[test]
fn mqtt_3_1_4_3_paho_takeover_keeps_or_ends_the_session_and_its_will() {
    paho_matrix("takeover_cases", &["311", "5"], |_| {
        concat!(
            r#"{"persistent_then_clean":{"old_subscription_delivers":false,"session_present":false},"#,
            r#""persistent_then_persistent":{"old_subscription_delivers":true,"session_present":true},"#,
            r#""wills":["persistent_then_clean"]}"#
        )
        .to_owned()
    });
}

/// MQTT 5 Will Delay across a takeover (MQTT-3.1.3-9, the delay or the session's end, whichever
/// comes first): taken over by a clean start the session ends, so the will goes at once; taken
/// over by a connection resuming the session, it is not sent at all. Mosquitto 2.0 sends no will
/// in either case.
#[test]
fn mqtt_3_1_3_9_paho_v5_will_delay_across_takeover() {
    paho_matrix_per_broker("takeover_will_delay", &["5"], |_, broker| {
        let clean = if broker == "Mosquitto" {
            "no will within 5 s"
        } else {
            "will at once"
        };
        format!(r#"{{"clean_takeover":"{clean}","resuming_takeover":"no will within 5 s"}}"#)
    });
}

/// MQTT 5 subscription options: No Local (MQTT-3.8.3-3), Retain As Published (MQTT-3.3.1-12,
/// -13) and Retain Handling 0, 1 and 2 (MQTT-3.3.1-9, -10, -11).
#[test]
fn mqtt_3_8_3_3_paho_v5_no_local_retain_as_published_retain_handling() {
    paho_matrix("options", &["5"], |_| {
        format!(
            r#"{{"no_local":[],"retain_as_published":{},"retain_handling":{{"never":{{"again":[],"first":[],"granted":[1,1]}},"send":{{"again":["retained"],"first":["retained"],"granted":[1,1]}},"send_if_new":{{"again":[],"first":["retained"],"granted":[1,1]}}}}}}"#,
            list(&[
                msg("norap/x", "cleared flag", 1, false),
                msg("rap/x", "kept flag", 1, true)
            ])
        )
    });
}

/// MQTT 5 Message Expiry: a message that expired while its session was offline is not
/// delivered; one still alive is, with its interval counted down (MQTT-3.3.2-5, -6).
#[test]
fn mqtt_3_3_2_5_paho_v5_message_expiry_while_offline() {
    paho_matrix("expiry", &["5"], |_| {
        r#"{"received":[{"expiry":"counted down","payload":"long","qos":1,"retain":false,"topic":""}]}"#.to_owned()
    });
}

/// MQTT 5 Subscription Identifiers of every matching subscription come with a message
/// (MQTT-3.3.4-3), in one copy or one per subscription (MQTT-3.3.4-4, -5).
#[test]
fn mqtt_3_3_4_3_paho_v5_subscription_identifiers_of_overlapping_subscriptions() {
    paho_matrix("subid", &["5"], |_| {
        r#"{"identifiers":{"a/b all three":[7,300],"a/c two":[7,300],"z/b none":[]}}"#.to_owned()
    });
}

/// An empty client id is accepted with a clean session and gets a unique id (MQTT-3.1.3-6),
/// told to MQTT 5 clients as an Assigned Client Identifier. paho makes up an id for MQTT 3.1,
/// where an empty one is not allowed.
#[test]
fn mqtt_3_1_3_6_paho_empty_client_id_is_assigned_one() {
    paho_matrix("assigned", &["31", "311", "5"], |version| {
        let assigned = if version == "5" {
            r#""assigned":true,"#
        } else {
            ""
        };
        format!(
            r#"{{{assigned}"received":{}}}"#,
            list(&[msg("", "hello", 1, false)])
        )
    });
}

/// After UNSUBSCRIBE the broker adds no new messages for that filter (MQTT-3.10.4-2), and the
/// other subscriptions go on.
#[test]
fn mqtt_3_10_4_2_paho_unsubscribe_stops_delivery() {
    paho_matrix("unsubscribe", &["31", "311", "5"], |_| {
        format!(
            r#"{{"after":{},"before":{}}}"#,
            list(&[msg("b", "end", 1, false)]),
            list(&[msg("a", "before", 1, false)])
        )
    });
}

/// MQTT 5 Will Delay: a client back within the delay cancels its will; one that does not come
/// back has it published once the delay has passed.
#[test]
fn paho_v5_will_delay_cancelled_by_reconnect_else_published() {
    paho_matrix("will_delay", &["5"], |_| {
        format!(
            r#"{{"after_delays":{},"within_delay":[]}}"#,
            list(&[msg("leaving", "after the delay", 1, false)])
        )
    });
}

/// Unacknowledged QoS 1 messages are sent again with DUP set, in order, when the persistent
/// session comes back (MQTT-4.4.0-1; 3.1.1 MQTT-3.3.1-1).
#[test]
fn mqtt_4_4_0_1_paho_unacknowledged_messages_sent_again_on_resume() {
    paho_matrix("redeliver", &["311", "5"], |_| {
        let first: Vec<_> = (0..3)
            .map(|i| msg("", &format!("m{i}"), 1, false))
            .collect();
        let again: Vec<_> = first
            .iter()
            .map(|m| m.replacen('{', r#"{"dup":true,"#, 1))
            .collect();
        format!(
            r#"{{"again":{},"first":{},"resumed_session_present":true}}"#,
            list(&again),
            list(&first)
        )
    });
}

/// MQTT 5 Receive Maximum from the client: no more unacknowledged QoS 1 messages at once than
/// it allows (MQTT-3.3.4-9); each acknowledgement lets the next one go.
#[test]
fn mqtt_3_3_4_9_paho_v5_client_receive_maximum_respected() {
    paho_matrix("receive_max", &["5"], |_| {
        r#"{"after_acks":["m2","m3","m4"],"before_ack":["m0","m1"],"extra":0}"#.to_owned()
    });
}

/// MQTT 5 Maximum Packet Size from the client: a message too large for it is not sent
/// (MQTT-3.1.2-24, -25) and the connection goes on.
#[test]
fn mqtt_3_1_2_24_paho_v5_client_maximum_packet_size_respected() {
    paho_matrix("max_packet", &["5"], |_| {
        format!(
            r#"{{"received":{},"still_connected":true}}"#,
            list(&[msg("", "fits", 1, false)])
        )
    });
}

/// MQTT 5 PUBLISH properties reach the subscriber unaltered: Response Topic (MQTT-3.3.2-15),
/// Correlation Data (MQTT-3.3.2-16), User Properties in order (MQTT-3.3.2-17, -18), Content
/// Type (MQTT-3.3.2-20) and Payload Format Indicator (MQTT-3.3.2-4).
#[test]
fn mqtt_3_3_2_15_paho_v5_publish_properties_forwarded_unaltered() {
    paho_matrix("properties", &["5"], |_| {
        r#"{"received":[{"content_type":"text/plain","correlation":"0001636f7272","payload":"with properties","payload_format":1,"qos":1,"response_topic":"reply/here","retain":false,"topic":"","user":[["b","2"],["a","1"],["b","3"]]}]}"#.to_owned()
    });
}

/// Many retained messages on several levels: a new subscription gets exactly those its filter
/// matches (3.1.1 MQTT-3.3.1-6, 5.0 MQTT-3.3.1-9), wildcards as in MQTT-4.7.1-2 and -3.
#[test]
fn mqtt_3_3_1_6_paho_retained_messages_matching_each_filter() {
    let mut all: Vec<String> = ["x", "y", "z"]
        .into_iter()
        .flat_map(|a| (0..10).map(move |b| format!("/{a}/{b}")))
        .collect();
    all.extend(["/x".into(), "/y".into(), "/x/1/deep".into()]);
    all.sort();
    let quoted = |topics: Vec<String>| {
        let quoted: Vec<_> = topics.iter().map(|t| format!("\"{t}\"")).collect();
        format!("[{}]", quoted.join(","))
    };
    let under_x = all
        .iter()
        .filter(|t| t.starts_with("/x"))
        .cloned()
        .collect();
    let expected = format!(
        r##"{{"#":{},"+":["/x","/y"],"+/+/+":["/x/1/deep"],"+/3":["/x/3","/y/3","/z/3"],"x/#":{},"x/+/deep":["/x/1/deep"],"y/7":["/y/7"]}}"##,
        quoted(all.clone()),
        quoted(under_x)
    );
    paho_matrix("retained_many", &["311", "5"], |_| expected.clone());
}

/// A client with a 1 s keep alive idle for 3 s keeps its connection: its PINGREQs are
/// answered (MQTT-3.12.4-1), and messages still flow.
#[test]
fn mqtt_3_12_4_1_paho_keep_alive_pings_answered() {
    paho_matrix("keepalive", &["311", "5"], |_| {
        format!(
            r#"{{"received":{},"still_connected":true}}"#,
            list(&[msg("", "still here", 1, false)])
        )
    });
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

/// QoS 2 exactly once, driven by hand over TCP: a PUBLISH sent again with DUP before PUBREL is
/// answered with PUBREC and not delivered twice (3.1.1 MQTT-4.3.3-2); once PUBCOMP is sent the
/// packet id is free, and a new message on it is delivered.
#[test]
fn mqtt_4_3_3_2_qos2_publish_sent_again_before_pubrel_delivered_once() {
    paho_cases(
        "qos2_dup",
        &["31", "311", "5"],
        &[Transport::Tcp],
        |_, _| received(&[msg("", "once", 2, false), msg("", "next", 2, false)]),
    );
}

/// A subscriber that stops reading stalls nobody: the publisher's 3,000 messages of 4 KiB all
/// go out and a healthy subscriber gets them, while the stuck one's queue stays bounded.
#[test]
fn paho_stuck_subscriber_does_not_stall_the_publisher() {
    // One protocol version: what is tested is the transport, and Mosquitto sometimes takes
    // 15 s over this with two such runs at once.
    paho_cases("slow_consumer", &["311"], &[Transport::Tcp], |_, _| {
        r#"{"healthy_got_most":true,"publisher_done":true}"#.to_owned()
    });
}

/// MQTT 5 Session Expiry: the session outlives its connection for its interval
/// (MQTT-3.1.2-23), and is gone after it.
#[test]
fn mqtt_3_1_2_23_paho_v5_session_kept_for_its_expiry_interval_only() {
    paho_matrix("session_expiry", &["5"], |_| {
        r#"{"present_after_0.2s":true,"present_after_2.5s":false}"#.to_owned()
    });
}

/// A will with RETAIN set is stored as a retained message when published (3.1.1
/// MQTT-3.1.2-17; 5.0 MQTT-3.1.2-15).
#[test]
fn mqtt_3_1_2_17_paho_retained_will_is_retained() {
    paho_matrix("will_retained", &["311", "5"], |_| {
        received(&[msg("", "last words", 1, true)])
    });
}

/// Overlapping subscriptions of one client: we send the message once, at the highest QoS
/// granted to any of them (3.1.1 MQTT-3.3.5-1; 5.0 MQTT-3.3.4-2).
///
/// Mosquitto 2.0 differs, within what MQTT 5 allows but not what 3.1.1 asks: to an MQTT 5
/// client it sends one copy per subscription (which MQTT-3.3.4-2 permits), and to an MQTT 3.1.1
/// client a single copy at the QoS of one subscription (1 here), not the highest (2).
#[test]
fn mqtt_3_3_5_1_paho_overlapping_subscriptions_one_copy_at_highest_qos() {
    paho_matrix_per_broker("overlap", &["311", "5"], |version, broker| {
        let copies = match (version, broker) {
            ("311", "Mosquitto") => vec![msg("x", "once", 1, false)],
            ("5", "Mosquitto") => vec![
                msg("x", "once", 0, false),
                msg("x", "once", 1, false),
                msg("x", "once", 2, false),
            ],
            _ => vec![msg("x", "once", 2, false)],
        };
        received(&copies)
    });
}

/// One publisher, 40 subscribers: each gets every QoS 1 message, in order.
#[test]
fn paho_fan_out_to_40_subscribers_all_in_order() {
    paho_matrix("fanout", &["311", "5"], |_| {
        r#"{"extra":0,"subscribers_with_all_in_order":40}"#.to_owned()
    });
}

/// MQTT 5: a will whose delay is longer than the session expiry is published when the session
/// ends (MQTT-3.1.3-9).
#[test]
fn mqtt_3_1_3_9_paho_v5_will_sent_at_session_end_before_its_delay() {
    paho_matrix("will_session_end", &["5"], |_| {
        format!(
            r#"{{"before_the_delay":true,"received":{}}}"#,
            list(&[msg("", "session ended", 1, false)])
        )
    });
}

/// MQTT 5: a client that accepts topic aliases from the broker sees every message with its
/// topic.
#[test]
fn paho_v5_client_accepting_topic_aliases_sees_every_topic() {
    paho_matrix("alias_in", &["5"], |_| {
        r#"{"topics":["a","a","b","a","b"]}"#.to_owned()
    });
}

/// MQTT 5: a paho subscriber announcing Topic Alias Maximum 10 gets aliases from our broker
/// (on by default): each topic's first message sets one, the later ones come on the alias
/// alone, none above 10 (MQTT-3.3.2-11), and every message resolves to its topic. Mosquitto
/// sends no aliases.
#[test]
fn mqtt_3_3_2_11_paho_v5_subscriber_gets_topic_aliases_from_the_broker() {
    paho_matrix_per_broker("alias_out", &["5"], |_, broker| {
        let (set, alone, highest) = if broker == "Mosquitto" {
            (0, 0, 0)
        } else {
            (3, 5, 3)
        };
        format!(
            concat!(
                r#"{{"alone":{},"highest":{},"set":{},"topics":["court/1/score","court/2/score","#,
                r#""court/1/score","court/3/score","court/2/score","court/1/score","court/3/score","#,
                r#""court/1/score"]}}"#
            ),
            alone, highest, set
        )
    });
}

/// MQTT 5: an expired retained message is not sent to a new subscriber (MQTT-3.3.2-5); one
/// without expiry is.
#[test]
fn mqtt_3_3_2_5_paho_v5_expired_retained_message_not_sent() {
    paho_matrix("retained_expiry", &["5"], |_| {
        r#"{"received":["stays","end"]}"#.to_owned()
    });
}

/// A shared subscription gets no retained messages when it is made, a plain one does (MQTT 5
/// sections 3.3.1.3 and 4.8.2: retained messages go to new non-shared subscriptions).
/// Mosquitto 2.0 sends them to shared subscriptions too.
#[test]
fn paho_shared_subscription_gets_no_retained_messages() {
    paho_matrix_per_broker("shared_retained", &["311", "5"], |_, broker| {
        if broker == "Mosquitto" {
            r#"{"member":["retained","live"],"plain":["retained","live"]}"#.to_owned()
        } else {
            r#"{"member":["live"],"plain":["retained","live"]}"#.to_owned()
        }
    });
}

/// MQTT 3.1.1: an empty client id with Clean Session 0 is refused with CONNACK 0x02
/// (MQTT-3.1.3-8) and the connection is closed (MQTT-3.2.2-5). Driven by hand over TCP.
#[test]
fn mqtt_3_1_3_8_empty_client_id_with_persistent_session_refused() {
    paho_cases(
        "empty_id_persistent",
        &["311"],
        &[Transport::Tcp],
        |_, _| r#"{"closed":true,"connack":"20020002"}"#.to_owned(),
    );
}

/// QoS 2 to a subscriber across reconnections, driven by hand over TCP: a PUBLISH not yet
/// acknowledged is sent again with DUP and its packet id; after PUBREC only the PUBREL is sent
/// again, never the PUBLISH (MQTT-4.4.0-1); then delivery goes on as new.
#[test]
fn mqtt_4_4_0_1_qos2_to_subscriber_resumed_publish_then_pubrel() {
    paho_cases("qos2_resume", &["311", "5"], &[Transport::Tcp], |_, _| {
        concat!(
            r#"{"first":["PUBLISH",{"dup":false,"qos":2}],"#,
            r#""first_again":["PUBLISH",{"dup":true,"qos":2},true],"#,
            r#""first_release":["PUBREL",true],"first_session_present":true,"#,
            r#""second":["PUBLISH",{"dup":false,"qos":2}],"second_again":["PUBREL",true],"#,
            r#""second_release":["PUBREL",true],"then":["PUBLISH",{"dup":false,"qos":2}]}"#
        )
        .to_owned()
    });
}

/// Eight publishers, one wildcard subscriber: every QoS 1 message arrives, each publisher's in
/// its order (MQTT-4.6.0-5).
#[test]
fn mqtt_4_6_0_5_paho_fan_in_from_8_publishers_in_order() {
    paho_matrix("fanin", &["311", "5"], |_| {
        r#"{"extra":0,"publishers_all_in_order":8}"#.to_owned()
    });
}

/// UTF-8 topics and filters (wildcards beside multi-byte characters) and binary payloads go
/// through unchanged.
#[test]
fn paho_utf8_topics_and_binary_payloads_unchanged() {
    paho_matrix("unicode", &["31", "311", "5"], |_| {
        r#"{"received":[["court-\u00df/\ud83c\udfbe","bytes 0 to 255"],["\u65e5\u672c/\ud83c\udfbe","\u30c6\u30cb\u30b9"]]}"#.to_owned()
    });
}

/// One SUBSCRIBE with several filters gets one return code each, in order (3.1.1
/// MQTT-3.8.4-5), and each filter delivers at its own QoS.
#[test]
fn mqtt_3_8_4_5_paho_one_subscribe_several_filters() {
    paho_matrix("multi_sub", &["31", "311", "5"], |_| {
        r#"{"granted":[0,1,2],"received":[["a",0],["b",1],["c/d",2]]}"#.to_owned()
    });
}

/// MQTT 3.1, 3.1.1 and 5.0 clients over TCP and WebSockets at once, six in all, each publishing
/// to the others: every one gets all six messages (its own included), on our broker as on
/// Mosquitto.
#[test]
fn paho_all_versions_over_tcp_and_websockets_talk_to_each_other() {
    require_paho();
    let ours = OurBroker::start();
    let reference = Mosquitto::start();
    let expected =
        r#"{"31-tc":true,"31-we":true,"311-tc":true,"311-we":true,"5-tc":true,"5-we":true}"#;
    let mut failures = Vec::new();
    for endpoint in [ours.endpoint(), reference.endpoint()] {
        let result = run_peer(
            Command::new("python3")
                .arg(interop_dir().join("paho_scenarios.py"))
                .args(["cross", "--port", "0"])
                .args(["--tcp-port", &endpoint.tcp.to_string()])
                .args(["--ws-port", &endpoint.ws.to_string()]),
            PEER_TIMEOUT,
        );
        let case = format!("cross with {}", endpoint.name);
        check_observed(&mut failures, &case, result, &expected.to_owned());
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

/// 300 QoS 1 messages queued for an offline persistent session all arrive in order when it
/// comes back, more than any in-flight window holds at once (MQTT-4.6.0-5).
#[test]
fn paho_resume_delivers_300_queued_messages_in_order() {
    paho_matrix("resume_many", &["311", "5"], |_| {
        r#"{"extra":0,"in_order":true}"#.to_owned()
    });
}

/// A client silent past one and a half times its keep alive is disconnected (3.1.1
/// MQTT-3.1.2-24, 5.0 MQTT-3.1.2-22), not before, and its will is published; we tell an MQTT 5
/// client DISCONNECT 0x8D (Keep Alive timeout) first, Mosquitto just closes. Driven by hand.
#[test]
fn mqtt_3_1_2_24_silent_client_disconnected_after_keep_alive_and_will_sent() {
    paho_cases(
        "keepalive_expired",
        &["311", "5"],
        &[Transport::Tcp],
        |version, broker| {
            let told = if version == "5" && broker != "Mosquitto" {
                "e0018d"
            } else {
                ""
            };
            format!(
                r#"{{"closed":true,"connack":"0000","not_before_1.5s":true,"told":"{told}","will":{}}}"#,
                list(&[msg("", "timed out", 1, false)])
            )
        },
    );
}

/// MQTT 5 reason codes and properties a client sees, as on Mosquitto: PUBACK 0x10 (No matching
/// subscribers; paho reports the PUBCOMP's 0 for QoS 2), UNSUBACK 0x11 (No subscription
/// existed), the subscription identifier on a retained message sent on subscribe
/// (MQTT-3.3.4-3), and Session Expiry 0 on DISCONNECT ending the session.
#[test]
fn paho_v5_reason_codes_and_disconnect_session_expiry() {
    paho_matrix("v5_codes", &["5"], |_| {
        concat!(
            r#"{"present_after_expiry_0_on_disconnect":false,"qos1_no_subscribers":16,"#,
            r#""qos2_no_subscribers":0,"retained_on_subscribe":[{"payload":"retained","qos":1,"#,
            r#""retain":true,"subscription_ids":[42],"topic":"kept"}],"unsubscribe_unknown":[17]}"#
        )
        .to_owned()
    });
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
    let expected = concat!(
        r#"{"granted":[1],"#,
        r#""message":{"topic":"TOPIC","payload":"hello from MQTT.js","qos":1,"retain":false},"#,
        r#""retained":{"payload":"kept","qos":2,"retain":true}}"#
    );
    let mut failures = Vec::new();
    for endpoint in [ours.endpoint(), reference.endpoint()] {
        for version in ["3", "4", "5"] {
            let url = format!("ws://127.0.0.1:{}/mqtt", endpoint.ws);
            let result = run_peer(
                Command::new("node")
                    .arg(interop_dir().join("mqttjs_ws.js"))
                    .args([&url, version])
                    .current_dir(interop_dir()),
                PEER_TIMEOUT,
            );
            let case = format!("MQTT.js protocol {version} to {}", endpoint.name);
            check_observed(&mut failures, &case, result, &expected.to_owned());
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
        let result = run_peer(
            Command::new("node")
                .arg(interop_dir().join("mqttjs_aliases.js"))
                .arg(&url)
                .current_dir(interop_dir()),
            PEER_TIMEOUT,
        );
        let expected = format!(
            concat!(
                r#"{{"topics":["court/1/score","court/2/score","court/1/score","court/3/score","#,
                r#""court/2/score","court/1/score","court/3/score","court/1/score"],"#,
                r#""set":{},"alone":{},"highest":{}}}"#
            ),
            set, alone, highest
        );
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
    let secs = std::env::var("INTEROP_SERVE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let ours = OurBroker::start();
    let reference = Mosquitto::start();
    for endpoint in [ours.endpoint(), reference.endpoint()] {
        println!(
            "{}: tcp port {}, ws://127.0.0.1:{}/mqtt",
            endpoint.name, endpoint.tcp, endpoint.ws
        );
    }
    thread::sleep(Duration::from_secs(secs));
}
