//! The interop peers (paho-mqtt, MQTT.js) and what each scenario of
//! `tests/interop/paho_scenarios.py` must show, shared by `tests/interop.rs` (our broker and
//! Mosquitto) and `tests/cluster_interop.rs` (a cluster, the scenario's clients spread over its
//! nodes), so that both hold the broker to the same outcomes.
//!
//! An expected outcome may name the broker (`rallymq` or `Mosquitto`), for what the spec
//! leaves open and the two brokers do differently; a cluster is held to `rallymq`'s.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use rallymq_test_support::run_peer;

/// Longest a peer script may run.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(30);

/// `tests/interop`: the peer scripts, and MQTT.js's `node_modules`.
pub fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

// ---------------------------------------------------------------------------------------------
// The peers.

/// Fails the test, never skips it, when a peer is not installed.
pub fn require_peer(peer: &str, command: &mut Command, ok: impl Fn(&str) -> bool) {
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

pub fn require_paho() {
    require_peer(
        "paho-mqtt (Python)",
        Command::new("python3").args([
            "-c",
            "import paho.mqtt; print('paho', paho.mqtt.__version__)",
        ]),
        |out| out.starts_with("paho 2."),
    );
}

pub fn require_mqttjs() {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    WebSockets,
}

pub const TCP_AND_WEBSOCKETS: &[Transport] = &[Transport::Tcp, Transport::WebSockets];
pub const TCP_ONLY: &[Transport] = &[Transport::Tcp];

/// Runs one paho scenario; its JSON outcome. With one port every client connects there; with
/// several (a cluster's nodes) each new client takes the next in turn.
pub fn paho(
    scenario: &str,
    ports: &[u16],
    transport: Transport,
    version: &str,
) -> Result<String, String> {
    let transport = match transport {
        Transport::Tcp => "tcp",
        Transport::WebSockets => "websockets",
    };
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    let mut command = Command::new("python3");
    command
        .arg(interop_dir().join("paho_scenarios.py"))
        .arg(scenario);
    match ports.as_slice() {
        [port] => command.args(["--port", port]),
        _ => command.args(["--ports", &ports.join(",")]),
    };
    run_peer(
        command
            .args(["--transport", transport])
            .args(["--version", version]),
        PEER_TIMEOUT,
    )
}

/// Runs the paho `cross` scenario: clients of every MQTT version over TCP to `tcp_port` and
/// over WebSockets to `ws_port`; its JSON outcome, to compare with [`CROSS_EXPECTED`].
pub fn paho_cross(tcp_port: u16, ws_port: u16) -> Result<String, String> {
    run_peer(
        Command::new("python3")
            .arg(interop_dir().join("paho_scenarios.py"))
            .args(["cross", "--port", "0"])
            .args(["--tcp-port", &tcp_port.to_string()])
            .args(["--ws-port", &ws_port.to_string()]),
        PEER_TIMEOUT,
    )
}

/// How long a `serve_..._for_manual_runs` tool serves: `INTEROP_SERVE_SECS`, 300 s by default.
pub fn manual_serve_time() -> Duration {
    let secs = std::env::var("INTEROP_SERVE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    Duration::from_secs(secs)
}

// ---------------------------------------------------------------------------------------------
// Outcomes.

/// A peer run's outcome as a failure message shows it.
pub trait Outcome: PartialEq {
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
pub fn check_observed<T: Outcome>(
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
pub fn assert_no_failures(failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} interop case(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// A message as the paho script describes it (topic relative to the scenario's prefix).
pub fn msg(topic: &str, payload: &str, qos: u8, retain: bool) -> String {
    format!(r#"{{"payload":"{payload}","qos":{qos},"retain":{retain},"topic":"{topic}"}}"#)
}

pub fn list(messages: &[String]) -> String {
    format!("[{}]", messages.join(","))
}

/// A scenario's whole result when it reports only the messages received.
pub fn received(messages: &[String]) -> String {
    format!(r#"{{"received":{}}}"#, list(messages))
}

// ---------------------------------------------------------------------------------------------
// MQTT.js (Node) over WebSockets.

/// Runs `tests/interop/mqttjs_ws.js` with MQTT `version` (3, 4 or 5), the subscriber on `url`,
/// the publisher on `pub_url`; its JSON outcome, to compare with [`MQTTJS_WS_EXPECTED`].
pub fn mqttjs_ws(url: &str, version: &str, pub_url: &str) -> Result<String, String> {
    run_peer(
        Command::new("node")
            .arg(interop_dir().join("mqttjs_ws.js"))
            .args([url, version, pub_url])
            .current_dir(interop_dir()),
        PEER_TIMEOUT,
    )
}

/// What `mqttjs_ws.js` shows with every MQTT version: the QoS 1 subscription granted, its
/// message once, and a retained QoS 2 message sent to a new subscription with RETAIN set.
pub const MQTTJS_WS_EXPECTED: &str = concat!(
    r#"{"granted":[1],"#,
    r#""message":{"topic":"TOPIC","payload":"hello from MQTT.js","qos":1,"retain":false},"#,
    r#""retained":{"payload":"kept","qos":2,"retain":true}}"#
);

/// Runs `tests/interop/mqttjs_aliases.js`, the subscriber on `url`, the publisher on
/// `pub_url`; its JSON outcome, to compare with [`mqttjs_aliases_expected`].
pub fn mqttjs_aliases(url: &str, pub_url: &str) -> Result<String, String> {
    run_peer(
        Command::new("node")
            .arg(interop_dir().join("mqttjs_aliases.js"))
            .args([url, pub_url])
            .current_dir(interop_dir()),
        PEER_TIMEOUT,
    )
}

/// What `mqttjs_aliases.js` shows: every topic resolved, in order, and how the broker used
/// aliases (PUBLISHes that set one, that came on one alone, the highest).
pub fn mqttjs_aliases_expected(set: usize, alone: usize, highest: usize) -> String {
    format!(
        concat!(
            r#"{{"topics":["court/1/score","court/2/score","court/1/score","court/3/score","#,
            r#""court/2/score","court/1/score","court/3/score","court/1/score"],"#,
            r#""set":{},"alone":{},"highest":{}}}"#
        ),
        set, alone, highest
    )
}

// ---------------------------------------------------------------------------------------------
// The paho scenarios and their expected outcomes.

/// A scenario of `paho_scenarios.py`: the MQTT versions it runs with (`31`, `311`, `5`), the
/// transports it runs over against rallymq (Mosquitto is asked over TCP), and its expected
/// outcome for a version and a broker.
pub struct PahoScenario {
    pub name: &'static str,
    pub versions: &'static [&'static str],
    pub transports: &'static [Transport],
    pub expected: fn(version: &str, broker: &str) -> String,
}

const ALL_VERSIONS: &[&str] = &["31", "311", "5"];
const V311_AND_V5: &[&str] = &["311", "5"];
const V5: &[&str] = &["5"];

/// QoS 0, 1 and 2 end to end; a message goes out at the lower of its QoS and the granted one
/// (3.1.1 MQTT-3.8.4-6, 5.0 MQTT-3.8.4-8).
pub const QOS: PahoScenario = PahoScenario {
    name: "qos",
    versions: ALL_VERSIONS,
    transports: TCP_AND_WEBSOCKETS,
    expected: |_, _| {
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
    },
};

/// Retained messages: stored (MQTT-3.3.1-5), sent on subscribe with RETAIN 1 (3.1.1
/// MQTT-3.3.1-6, -8), replaced, forwarded live with RETAIN 0 (3.1.1 MQTT-3.3.1-9), and removed
/// by an empty payload, which is still forwarded (3.1.1 MQTT-3.3.1-10, -11; 5.0 MQTT-3.3.1-6,
/// -7).
pub const RETAINED: PahoScenario = PahoScenario {
    name: "retained",
    versions: ALL_VERSIONS,
    transports: TCP_AND_WEBSOCKETS,
    expected: |_, _| {
        format!(
            r#"{{"after_clear":{},"live_clear":{},"live_replace":{},"on_subscribe_first":{},"on_subscribe_second":{}}}"#,
            list(&[msg("", "end", 1, false)]),
            list(&[msg("", "", 1, false)]),
            list(&[msg("", "two", 1, false)]),
            list(&[msg("", "one", 1, true)]),
            list(&[msg("", "two", 1, true)]),
        )
    },
};

/// The will is published when the network connection closes without DISCONNECT (MQTT-3.1.2-8)
/// and discarded on DISCONNECT (3.1.1 MQTT-3.14.4-3 and MQTT-3.1.2-10; 5.0 MQTT-3.14.4-3 for
/// reason 0x00), but sent after an MQTT 5 DISCONNECT 0x04.
pub const WILL: PahoScenario = PahoScenario {
    name: "will",
    versions: ALL_VERSIONS,
    transports: TCP_AND_WEBSOCKETS,
    expected: |version, _| {
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
    },
};

/// A shared subscription `$share/group/filter` gives each message to exactly one member of the
/// group (MQTT 5 section 4.8.2), beside a plain subscription that gets every message. Mosquitto
/// allows it for MQTT 3.1.1 clients too, and so do we.
pub const SHARED: PahoScenario = PahoScenario {
    name: "shared",
    versions: V311_AND_V5,
    transports: TCP_AND_WEBSOCKETS,
    expected: |_, _| {
        r#"{"every_member_served":true,"granted":[1,1,1],"group_count":10,"group_distinct":10,"group_missing":[],"plain_count":10}"#.to_owned()
    },
};

/// Topic aliases from client to broker (MQTT 5 section 3.3.2.3.4): set with a topic, used with
/// an empty topic, remapped to another topic.
pub const ALIAS: PahoScenario = PahoScenario {
    name: "alias",
    versions: V5,
    transports: TCP_AND_WEBSOCKETS,
    expected: |_, _| {
        received(&[
            msg("a", "first", 1, false),
            msg("a", "second", 1, false),
            msg("b", "third", 1, false),
            msg("b", "fourth", 1, false),
        ])
    },
};

/// A persistent session resumes (3.1.1 MQTT-3.1.2-4, 5.0 MQTT-3.1.2-5): Session Present is
/// set, the QoS 1 message published while offline is delivered (3.1.1 MQTT-3.1.2-5), the QoS 0
/// one is not (as Mosquitto does by default), and the subscription still works.
pub const RESUME: PahoScenario = PahoScenario {
    name: "resume",
    versions: V311_AND_V5,
    transports: TCP_AND_WEBSOCKETS,
    expected: |_, _| {
        format!(
            r#"{{"first_session_present":false,"online":{},"queued":{},"resumed_session_present":true}}"#,
            list(&[msg("", "online", 1, false)]),
            list(&[msg("", "offline-qos1", 1, false)]),
        )
    },
};

/// Hundreds of QoS 1 and QoS 2 messages published back to back arrive, each once and in the
/// order sent (MQTT-4.6.0-5), with flow control on both sides.
pub const BURST: PahoScenario = PahoScenario {
    name: "burst",
    versions: ALL_VERSIONS,
    transports: TCP_AND_WEBSOCKETS,
    expected: |_, _| r#"{"extra":0,"qos1":"all in order","qos2":"all in order"}"#.to_owned(),
};

/// A 300 KiB payload, spread over many TCP segments and WebSocket frames, arrives intact.
pub const LARGE: PahoScenario = PahoScenario {
    name: "large",
    versions: V311_AND_V5,
    transports: TCP_AND_WEBSOCKETS,
    expected: |_, _| received(&[msg("", "307200 bytes, sha256 d3560a80a6bbac80", 1, false)]),
};

/// A second connection with the same client id disconnects the first (MQTT-3.1.4-2), and the
/// second one carries on.
///
/// What paho reports as the MQTT 5 reason differs, and neither is the 0x8E we send
/// (MQTT-3.1.4-3): we send DISCONNECT with the reason code alone (remaining length 1, allowed by
/// MQTT 5 section 3.14.2.1), and paho 2.1 reads a reason code only when the remaining length is
/// over 2, so it reports 0; Mosquitto 2.0 closes the connection without a DISCONNECT, which
/// paho reports as 0x80.
pub const TAKEOVER: PahoScenario = PahoScenario {
    name: "takeover",
    versions: ALL_VERSIONS,
    transports: TCP_AND_WEBSOCKETS,
    expected: |version, broker| {
        let reason = match (version, broker) {
            ("5", "Mosquitto") => r#""first_reason":128,"#,
            ("5", _) => r#""first_reason":0,"#,
            _ => "",
        };
        format!(
            r#"{{"first_disconnected":true,{reason}"second_connected":true,"second_receives":{}}}"#,
            list(&[msg("", "to the new connection", 1, false)])
        )
    },
};

/// A Clean Session 1 connection (MQTT 5: Session Expiry 0) taken over by one asking for a
/// persistent session: the old session ended with its connection (3.1.1 MQTT-3.1.2-6), so
/// Session Present is 0 and the old subscription delivers nothing.
pub const TAKEOVER_CLEAN: PahoScenario = PahoScenario {
    name: "takeover_clean",
    versions: V311_AND_V5,
    transports: TCP_AND_WEBSOCKETS,
    expected: |_, _| r#"{"old_subscription_delivers":false,"session_present":false}"#.to_owned(),
};

/// Session takeover, case by case: a persistent session taken over by a clean connection
/// starts afresh; taken over by a persistent one it carries on, subscription and all. The old
/// connection's will goes out only when the takeover ends its session: a new connection came
/// before the will was due (MQTT 5 section 3.1.2.5, MQTT-3.1.4-3), as Mosquitto does.
pub const TAKEOVER_CASES: PahoScenario = PahoScenario {
    name: "takeover_cases",
    versions: V311_AND_V5,
    transports: TCP_AND_WEBSOCKETS,
    expected: |_, _| {
        concat!(
            r#"{"persistent_then_clean":{"old_subscription_delivers":false,"session_present":false},"#,
            r#""persistent_then_persistent":{"old_subscription_delivers":true,"session_present":true},"#,
            r#""wills":["persistent_then_clean"]}"#
        )
        .to_owned()
    },
};

/// MQTT 5 Will Delay across a takeover (MQTT-3.1.3-9, the delay or the session's end, whichever
/// comes first): taken over by a clean start the session ends, so the will goes at once; taken
/// over by a connection resuming the session, it is not sent at all. Mosquitto 2.0 sends no will
/// in either case.
pub const TAKEOVER_WILL_DELAY: PahoScenario = PahoScenario {
    name: "takeover_will_delay",
    versions: V5,
    transports: TCP_AND_WEBSOCKETS,
    expected: |_, broker| {
        let clean = if broker == "Mosquitto" {
            "no will within 5 s"
        } else {
            "will at once"
        };
        format!(r#"{{"clean_takeover":"{clean}","resuming_takeover":"no will within 5 s"}}"#)
    },
};

/// MQTT 5 subscription options: No Local (MQTT-3.8.3-3), Retain As Published (MQTT-3.3.1-12,
/// -13) and Retain Handling 0, 1 and 2 (MQTT-3.3.1-9, -10, -11).
pub const OPTIONS: PahoScenario = PahoScenario {
    name: "options",
    versions: V5,
    transports: TCP_AND_WEBSOCKETS,
    expected: |_, _| {
        format!(
            r#"{{"no_local":[],"retain_as_published":{},"retain_handling":{{"never":{{"again":[],"first":[],"granted":[1,1]}},"send":{{"again":["retained"],"first":["retained"],"granted":[1,1]}},"send_if_new":{{"again":[],"first":["retained"],"granted":[1,1]}}}}}}"#,
            list(&[
                msg("norap/x", "cleared flag", 1, false),
                msg("rap/x", "kept flag", 1, true)
            ])
        )
    },
};

/// MQTT 5 Message Expiry: a message that expired while its session was offline is not
/// delivered; one still alive is, with its interval counted down (MQTT-3.3.2-5, -6).
pub const EXPIRY: PahoScenario = PahoScenario {
    name: "expiry",
    versions: V5,
    transports: TCP_AND_WEBSOCKETS,
    expected: |_, _| {
        r#"{"received":[{"expiry":"counted down","payload":"long","qos":1,"retain":false,"topic":""}]}"#.to_owned()
    },
};

/// MQTT 5 Subscription Identifiers of every matching subscription come with a message
/// (MQTT-3.3.4-3), in one copy or one per subscription (MQTT-3.3.4-4, -5).
pub const SUBID: PahoScenario = PahoScenario {
    name: "subid",
    versions: V5,
    transports: TCP_AND_WEBSOCKETS,
    expected: |_, _| {
        r#"{"identifiers":{"a/b all three":[7,300],"a/c two":[7,300],"z/b none":[]}}"#.to_owned()
    },
};

/// An empty client id is accepted with a clean session and gets a unique id (MQTT-3.1.3-6),
/// told to MQTT 5 clients as an Assigned Client Identifier. paho makes up an id for MQTT 3.1,
/// where an empty one is not allowed.
pub const ASSIGNED: PahoScenario = PahoScenario {
    name: "assigned",
    versions: ALL_VERSIONS,
    transports: TCP_AND_WEBSOCKETS,
    expected: |version, _| {
        let assigned = if version == "5" {
            r#""assigned":true,"#
        } else {
            ""
        };
        format!(
            r#"{{{assigned}"received":{}}}"#,
            list(&[msg("", "hello", 1, false)])
        )
    },
};

/// After UNSUBSCRIBE the broker adds no new messages for that filter (MQTT-3.10.4-2), and the
/// other subscriptions go on.
pub const UNSUBSCRIBE: PahoScenario = PahoScenario {
    name: "unsubscribe",
    versions: ALL_VERSIONS,
    transports: TCP_AND_WEBSOCKETS,
    expected: |_, _| {
        format!(
            r#"{{"after":{},"before":{}}}"#,
            list(&[msg("b", "end", 1, false)]),
            list(&[msg("a", "before", 1, false)])
        )
    },
};

/// MQTT 5 Will Delay: a client back within the delay cancels its will; one that does not come
/// back has it published once the delay has passed.
pub const WILL_DELAY: PahoScenario = PahoScenario {
    name: "will_delay",
    versions: V5,
    transports: TCP_AND_WEBSOCKETS,
    expected: |_, _| {
        format!(
            r#"{{"after_delays":{},"within_delay":[]}}"#,
            list(&[msg("leaving", "after the delay", 1, false)])
        )
    },
};

/// Unacknowledged QoS 1 messages are sent again with DUP set, in order, when the persistent
/// session comes back (MQTT-4.4.0-1; 3.1.1 MQTT-3.3.1-1).
pub const REDELIVER: PahoScenario = PahoScenario {
    name: "redeliver",
    versions: V311_AND_V5,
    transports: TCP_AND_WEBSOCKETS,
    expected: |_, _| {
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
    },
};

/// MQTT 5 Receive Maximum from the client: no more unacknowledged QoS 1 messages at once than
/// it allows (MQTT-3.3.4-9); each acknowledgement lets the next one go.
pub const RECEIVE_MAX: PahoScenario = PahoScenario {
    name: "receive_max",
    versions: V5,
    transports: TCP_AND_WEBSOCKETS,
    expected: |_, _| {
        r#"{"after_acks":["m2","m3","m4"],"before_ack":["m0","m1"],"extra":0}"#.to_owned()
    },
};

/// MQTT 5 Maximum Packet Size from the client: a message too large for it is not sent
/// (MQTT-3.1.2-24, -25) and the connection goes on.
pub const MAX_PACKET: PahoScenario = PahoScenario {
    name: "max_packet",
    versions: V5,
    transports: TCP_AND_WEBSOCKETS,
    expected: |_, _| {
        format!(
            r#"{{"received":{},"still_connected":true}}"#,
            list(&[msg("", "fits", 1, false)])
        )
    },
};

/// MQTT 5 PUBLISH properties reach the subscriber unaltered: Response Topic (MQTT-3.3.2-15),
/// Correlation Data (MQTT-3.3.2-16), User Properties in order (MQTT-3.3.2-17, -18), Content
/// Type (MQTT-3.3.2-20) and Payload Format Indicator (MQTT-3.3.2-4).
pub const PROPERTIES: PahoScenario = PahoScenario {
    name: "properties",
    versions: V5,
    transports: TCP_AND_WEBSOCKETS,
    expected: |_, _| {
        r#"{"received":[{"content_type":"text/plain","correlation":"0001636f7272","payload":"with properties","payload_format":1,"qos":1,"response_topic":"reply/here","retain":false,"topic":"","user":[["b","2"],["a","1"],["b","3"]]}]}"#.to_owned()
    },
};

/// Many retained messages on several levels: a new subscription gets exactly those its filter
/// matches (3.1.1 MQTT-3.3.1-6, 5.0 MQTT-3.3.1-9), wildcards as in MQTT-4.7.1-2 and -3.
pub const RETAINED_MANY: PahoScenario = PahoScenario {
    name: "retained_many",
    versions: V311_AND_V5,
    transports: TCP_AND_WEBSOCKETS,
    expected: |_, _| {
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
        format!(
            r##"{{"#":{},"+":["/x","/y"],"+/+/+":["/x/1/deep"],"+/3":["/x/3","/y/3","/z/3"],"x/#":{},"x/+/deep":["/x/1/deep"],"y/7":["/y/7"]}}"##,
            quoted(all.clone()),
            quoted(under_x)
        )
    },
};

/// A client with a 1 s keep alive idle for 3 s keeps its connection: its PINGREQs are
/// answered (MQTT-3.12.4-1), and messages still flow.
pub const KEEPALIVE: PahoScenario = PahoScenario {
    name: "keepalive",
    versions: V311_AND_V5,
    transports: TCP_AND_WEBSOCKETS,
    expected: |_, _| {
        format!(
            r#"{{"received":{},"still_connected":true}}"#,
            list(&[msg("", "still here", 1, false)])
        )
    },
};

/// QoS 2 exactly once, driven by hand over TCP: a PUBLISH sent again with DUP before PUBREL is
/// answered with PUBREC and not delivered twice (3.1.1 MQTT-4.3.3-2); once PUBCOMP is sent the
/// packet id is free, and a new message on it is delivered.
pub const QOS2_DUP: PahoScenario = PahoScenario {
    name: "qos2_dup",
    versions: ALL_VERSIONS,
    transports: TCP_ONLY,
    expected: |_, _| received(&[msg("", "once", 2, false), msg("", "next", 2, false)]),
};

/// A subscriber that stops reading stalls nobody: the publisher's 3,000 messages of 4 KiB all
/// go out and a healthy subscriber gets them, while the stuck one's queue stays bounded. One
/// protocol version: what is tested is the transport, and Mosquitto sometimes takes 15 s over
/// this with two such runs at once.
pub const SLOW_CONSUMER: PahoScenario = PahoScenario {
    name: "slow_consumer",
    versions: &["311"],
    transports: TCP_ONLY,
    expected: |_, _| r#"{"healthy_got_most":true,"publisher_done":true}"#.to_owned(),
};

/// MQTT 5 Session Expiry: the session outlives its connection for its interval
/// (MQTT-3.1.2-23), and is gone after it.
pub const SESSION_EXPIRY: PahoScenario = PahoScenario {
    name: "session_expiry",
    versions: V5,
    transports: TCP_AND_WEBSOCKETS,
    expected: |_, _| r#"{"present_after_0.2s":true,"present_after_2.5s":false}"#.to_owned(),
};

/// A will with RETAIN set is stored as a retained message when published (3.1.1
/// MQTT-3.1.2-17; 5.0 MQTT-3.1.2-15).
pub const WILL_RETAINED: PahoScenario = PahoScenario {
    name: "will_retained",
    versions: V311_AND_V5,
    transports: TCP_AND_WEBSOCKETS,
    expected: |_, _| received(&[msg("", "last words", 1, true)]),
};

/// Overlapping subscriptions of one client: we send the message once, at the highest QoS
/// granted to any of them (3.1.1 MQTT-3.3.5-1; 5.0 MQTT-3.3.4-2).
///
/// Mosquitto 2.0 differs, within what MQTT 5 allows but not what 3.1.1 asks: to an MQTT 5
/// client it sends one copy per subscription (which MQTT-3.3.4-2 permits), and to an MQTT 3.1.1
/// client a single copy at the QoS of one subscription (1 here), not the highest (2).
pub const OVERLAP: PahoScenario = PahoScenario {
    name: "overlap",
    versions: V311_AND_V5,
    transports: TCP_AND_WEBSOCKETS,
    expected: |version, broker| {
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
    },
};

/// One publisher, 40 subscribers: each gets every QoS 1 message, in order.
pub const FANOUT: PahoScenario = PahoScenario {
    name: "fanout",
    versions: V311_AND_V5,
    transports: TCP_AND_WEBSOCKETS,
    expected: |_, _| r#"{"extra":0,"subscribers_with_all_in_order":40}"#.to_owned(),
};

/// MQTT 5: a will whose delay is longer than the session expiry is published when the session
/// ends (MQTT-3.1.3-9).
pub const WILL_SESSION_END: PahoScenario = PahoScenario {
    name: "will_session_end",
    versions: V5,
    transports: TCP_AND_WEBSOCKETS,
    expected: |_, _| {
        format!(
            r#"{{"before_the_delay":true,"received":{}}}"#,
            list(&[msg("", "session ended", 1, false)])
        )
    },
};

/// MQTT 5: a client that accepts topic aliases from the broker sees every message with its
/// topic.
pub const ALIAS_IN: PahoScenario = PahoScenario {
    name: "alias_in",
    versions: V5,
    transports: TCP_AND_WEBSOCKETS,
    expected: |_, _| r#"{"topics":["a","a","b","a","b"]}"#.to_owned(),
};

/// MQTT 5: a paho subscriber announcing Topic Alias Maximum 10 gets aliases from our broker
/// (on by default): each topic's first message sets one, the later ones come on the alias
/// alone, none above 10 (MQTT-3.3.2-11), and every message resolves to its topic. Mosquitto
/// sends no aliases.
pub const ALIAS_OUT: PahoScenario = PahoScenario {
    name: "alias_out",
    versions: V5,
    transports: TCP_AND_WEBSOCKETS,
    expected: |_, broker| {
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
    },
};

/// MQTT 5: an expired retained message is not sent to a new subscriber (MQTT-3.3.2-5); one
/// without expiry is.
pub const RETAINED_EXPIRY: PahoScenario = PahoScenario {
    name: "retained_expiry",
    versions: V5,
    transports: TCP_AND_WEBSOCKETS,
    expected: |_, _| r#"{"received":["stays","end"]}"#.to_owned(),
};

/// A shared subscription gets no retained messages when it is made, a plain one does (MQTT 5
/// sections 3.3.1.3 and 4.8.2: retained messages go to new non-shared subscriptions).
/// Mosquitto 2.0 sends them to shared subscriptions too.
pub const SHARED_RETAINED: PahoScenario = PahoScenario {
    name: "shared_retained",
    versions: V311_AND_V5,
    transports: TCP_AND_WEBSOCKETS,
    expected: |_, broker| {
        if broker == "Mosquitto" {
            r#"{"member":["retained","live"],"plain":["retained","live"]}"#.to_owned()
        } else {
            r#"{"member":["live"],"plain":["retained","live"]}"#.to_owned()
        }
    },
};

/// MQTT 3.1.1: an empty client id with Clean Session 0 is refused with CONNACK 0x02
/// (MQTT-3.1.3-8) and the connection is closed (MQTT-3.2.2-5). Driven by hand over TCP.
pub const EMPTY_ID_PERSISTENT: PahoScenario = PahoScenario {
    name: "empty_id_persistent",
    versions: &["311"],
    transports: TCP_ONLY,
    expected: |_, _| r#"{"closed":true,"connack":"20020002"}"#.to_owned(),
};

/// QoS 2 to a subscriber across reconnections, driven by hand over TCP: a PUBLISH not yet
/// acknowledged is sent again with DUP and its packet id; after PUBREC only the PUBREL is sent
/// again, never the PUBLISH (MQTT-4.4.0-1); then delivery goes on as new.
pub const QOS2_RESUME: PahoScenario = PahoScenario {
    name: "qos2_resume",
    versions: V311_AND_V5,
    transports: TCP_ONLY,
    expected: |_, _| {
        concat!(
            r#"{"first":["PUBLISH",{"dup":false,"qos":2}],"#,
            r#""first_again":["PUBLISH",{"dup":true,"qos":2},true],"#,
            r#""first_release":["PUBREL",true],"first_session_present":true,"#,
            r#""second":["PUBLISH",{"dup":false,"qos":2}],"second_again":["PUBREL",true],"#,
            r#""second_release":["PUBREL",true],"then":["PUBLISH",{"dup":false,"qos":2}]}"#
        )
        .to_owned()
    },
};

/// Eight publishers, one wildcard subscriber: every QoS 1 message arrives, each publisher's in
/// its order (MQTT-4.6.0-5).
pub const FANIN: PahoScenario = PahoScenario {
    name: "fanin",
    versions: V311_AND_V5,
    transports: TCP_AND_WEBSOCKETS,
    expected: |_, _| r#"{"extra":0,"publishers_all_in_order":8}"#.to_owned(),
};

/// UTF-8 topics and filters (wildcards beside multi-byte characters) and binary payloads go
/// through unchanged.
pub const UNICODE: PahoScenario = PahoScenario {
    name: "unicode",
    versions: ALL_VERSIONS,
    transports: TCP_AND_WEBSOCKETS,
    expected: |_, _| {
        r#"{"received":[["court-\u00df/\ud83c\udfbe","bytes 0 to 255"],["\u65e5\u672c/\ud83c\udfbe","\u30c6\u30cb\u30b9"]]}"#.to_owned()
    },
};

/// One SUBSCRIBE with several filters gets one return code each, in order (3.1.1
/// MQTT-3.8.4-5), and each filter delivers at its own QoS.
pub const MULTI_SUB: PahoScenario = PahoScenario {
    name: "multi_sub",
    versions: ALL_VERSIONS,
    transports: TCP_AND_WEBSOCKETS,
    expected: |_, _| r#"{"granted":[0,1,2],"received":[["a",0],["b",1],["c/d",2]]}"#.to_owned(),
};

/// 300 QoS 1 messages queued for an offline persistent session all arrive in order when it
/// comes back, more than any in-flight window holds at once (MQTT-4.6.0-5), none twice.
pub const RESUME_MANY: PahoScenario = PahoScenario {
    name: "resume_many",
    versions: V311_AND_V5,
    transports: TCP_AND_WEBSOCKETS,
    expected: |_, _| r#"{"duplicates":0,"in_order":true,"missing":0}"#.to_owned(),
};

/// A client silent past one and a half times its keep alive is disconnected (3.1.1
/// MQTT-3.1.2-24, 5.0 MQTT-3.1.2-22), not before, and its will is published; we tell an MQTT 5
/// client DISCONNECT 0x8D (Keep Alive timeout) first, Mosquitto just closes. Driven by hand.
pub const KEEPALIVE_EXPIRED: PahoScenario = PahoScenario {
    name: "keepalive_expired",
    versions: V311_AND_V5,
    transports: TCP_ONLY,
    expected: |version, broker| {
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
};

/// MQTT 5 reason codes and properties a client sees, as on Mosquitto: PUBACK 0x10 (No matching
/// subscribers; paho reports the PUBCOMP's 0 for QoS 2), UNSUBACK 0x11 (No subscription
/// existed), the subscription identifier on a retained message sent on subscribe
/// (MQTT-3.3.4-3), and Session Expiry 0 on DISCONNECT ending the session.
pub const V5_CODES: PahoScenario = PahoScenario {
    name: "v5_codes",
    versions: V5,
    transports: TCP_AND_WEBSOCKETS,
    expected: |_, _| {
        concat!(
            r#"{"present_after_expiry_0_on_disconnect":false,"qos1_no_subscribers":16,"#,
            r#""qos2_no_subscribers":0,"retained_on_subscribe":[{"payload":"retained","qos":1,"#,
            r#""retain":true,"subscription_ids":[42],"topic":"kept"}],"unsubscribe_unknown":[17]}"#
        )
        .to_owned()
    },
};

/// MQTT 3.1, 3.1.1 and 5.0 clients over TCP and WebSockets at once, six in all, each publishing
/// to the others: every one gets all six messages, its own included (the `cross` scenario,
/// which takes a TCP and a WebSocket port).
pub const CROSS_EXPECTED: &str =
    r#"{"31-tc":true,"31-we":true,"311-tc":true,"311-we":true,"5-tc":true,"5-we":true}"#;

/// Every scenario above, for a run of them all (the cluster's). Not here: `violations` and
/// `max_keepalive` (`interop.rs`'s own: one connection at a time, nothing that crosses
/// nodes), `cross` (it takes a TCP and a WebSocket port) and `cross_node` (two ports).
pub const PAHO_SCENARIOS: &[PahoScenario] = &[
    QOS,
    RETAINED,
    WILL,
    SHARED,
    ALIAS,
    RESUME,
    BURST,
    LARGE,
    TAKEOVER,
    TAKEOVER_CLEAN,
    TAKEOVER_CASES,
    TAKEOVER_WILL_DELAY,
    OPTIONS,
    EXPIRY,
    SUBID,
    ASSIGNED,
    UNSUBSCRIBE,
    WILL_DELAY,
    REDELIVER,
    RECEIVE_MAX,
    MAX_PACKET,
    PROPERTIES,
    RETAINED_MANY,
    KEEPALIVE,
    QOS2_DUP,
    SLOW_CONSUMER,
    SESSION_EXPIRY,
    WILL_RETAINED,
    OVERLAP,
    FANOUT,
    WILL_SESSION_END,
    ALIAS_IN,
    ALIAS_OUT,
    RETAINED_EXPIRY,
    SHARED_RETAINED,
    EMPTY_ID_PERSISTENT,
    QOS2_RESUME,
    FANIN,
    UNICODE,
    MULTI_SUB,
    RESUME_MANY,
    KEEPALIVE_EXPIRED,
    V5_CODES,
];
