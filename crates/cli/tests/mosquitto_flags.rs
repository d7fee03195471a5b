//! The flags `rallymq pub`/`sub` share with mosquitto_pub/mosquitto_sub (issue 18): each one is
//! run beside the Mosquitto tool with the same arguments, against our broker and against a real
//! Mosquitto, and what the broker saw (wills, sessions, subscriptions, messages) and what the
//! tools printed are compared. A watcher built on `rallymq-client` observes the broker; every
//! wait is bounded.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rallymq_client::{Client, ClientOptions, Message, Messages, ProtocolVersion, QoS};
use rallymq_test_support::{Mosquitto, run_id};
use support::{OurBroker, RALLYMQ};

const WAIT: Duration = Duration::from_secs(10);

/// The two implementations of each command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tool {
    Rallymq,
    Mosquitto,
}

const TOOLS: [Tool; 2] = [Tool::Rallymq, Tool::Mosquitto];

impl Tool {
    /// `pub` or `sub` of this tool, with `args`.
    fn command(self, command: &str, args: &[&str]) -> Command {
        let mut built = match self {
            Self::Rallymq => {
                let mut c = Command::new(RALLYMQ);
                c.arg(command);
                c
            }
            Self::Mosquitto => Command::new(format!("mosquitto_{command}")),
        };
        built
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        built
    }

    fn run(self, command: &str, args: &[&str]) -> Output {
        let child = self.command(command, args).spawn().unwrap_or_else(|e| {
            panic!("{self:?} {command} starts ({e}); mosquitto_pub/sub: apt-get install mosquitto-clients")
        });
        finish(child, &format!("{self:?} {command} {args:?}"))
    }
}

/// Waits for `child` to exit, at most `WAIT`, draining what is left of its output meanwhile.
fn finish(mut child: Child, what: &str) -> Output {
    let (sender, receiver) = mpsc::channel();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut err = Vec::new();
        if let Some(mut stdout) = stdout {
            let _ = stdout.read_to_end(&mut out);
        }
        if let Some(mut stderr) = stderr {
            let _ = stderr.read_to_end(&mut err);
        }
        let _ = sender.send((out, err));
    });
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not finish in {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let (stdout, stderr) = receiver.recv_timeout(WAIT).expect("the output is read");
    Output {
        status,
        stdout,
        stderr,
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Both brokers, named for messages.
fn brokers() -> (OurBroker, Mosquitto, Vec<(&'static str, u16)>) {
    let ours = OurBroker::start();
    let mosquitto = Mosquitto::start();
    let ports = vec![("rallymq", ours.tcp), ("mosquitto", mosquitto.tcp)];
    (ours, mosquitto, ports)
}

/// Runs `case` with rallymq's tool, then Mosquitto's, on `broker`; asserts that both gave
/// the same result and returns it.
fn same_from_both<T: PartialEq + std::fmt::Debug>(broker: &str, case: impl FnMut(Tool) -> T) -> T {
    let [ours, theirs] = TOOLS.map(case);
    assert_eq!(ours, theirs, "{broker}: rallymq, then mosquitto");
    ours
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A client of the test, to watch what the broker does and to publish.
async fn connect_watcher(port: u16, version: ProtocolVersion) -> (Client, Messages) {
    let options = ClientOptions::new(&format!("mqtt://127.0.0.1:{port}"))
        .version(version)
        .reconnect(None);
    let (client, messages, _) = Client::connect(options)
        .await
        .expect("the watcher connects");
    (client, messages)
}

async fn next(messages: &mut Messages) -> Message {
    tokio::time::timeout(WAIT, messages.recv())
        .await
        .expect("a message in time")
        .expect("the watcher is connected")
}

/// Reads `child`'s stdout until a line containing `marker`, at most `WAIT` (else kills it and
/// fails); returns the lines.
fn read_until(child: &mut Child, marker: &str) -> Vec<String> {
    let stdout = child.stdout.take().expect("piped");
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = receiver.recv_timeout(left) else {
            // Not left running after the test.
            let _ = child.kill();
            let _ = child.wait();
            panic!("no {marker:?} in time; got {lines:?}");
        };
        let found = line.contains(marker);
        lines.push(line);
        if found {
            return lines;
        }
    }
}

/// Publishes retained messages for a test (the test clears them).
async fn retain(client: &Client, messages: &[(&str, &[u8], QoS)]) {
    for (topic, payload, qos) in messages {
        client
            .publish(topic, payload.to_vec(), *qos, true)
            .await
            .expect("published");
    }
}

// ------------------------------------------------------------------------------ wills

#[test]
fn will_flags_give_the_broker_the_same_will() {
    let (_ours, _mosquitto, brokers) = brokers();
    let rt = runtime();
    for (broker, port) in brokers {
        let seen = same_from_both(broker, |tool| {
            let topic = format!("will/{}", run_id());
            let (watcher, mut wills) = rt.block_on(connect_watcher(port, ProtocolVersion::V5));
            rt.block_on(watcher.subscribe(&topic, QoS::ExactlyOnce))
                .unwrap();
            let port_s = port.to_string();
            // The subscriber prints this retained message once subscribed: then it is
            // connected with its will (mosquitto_sub flushes its output after a message).
            let ready = format!("{topic}/ready");
            rt.block_on(retain(&watcher, &[(&ready, b"ready", QoS::AtMostOnce)]));
            let mut sub = tool
                .command(
                    "sub",
                    &[
                        "-p",
                        &port_s,
                        "-t",
                        &ready,
                        "-i",
                        "willing",
                        "--will-topic",
                        &topic,
                        "--will-payload",
                        "gone",
                        "--will-qos",
                        "1",
                        "--will-retain",
                    ],
                )
                .spawn()
                .unwrap();
            read_until(&mut sub, "ready");
            // Ended without DISCONNECT: the broker publishes the will.
            sub.kill().unwrap();
            let _ = sub.wait();
            let will = rt.block_on(next(&mut wills));
            // Retained: a new subscriber is given it, with the retain flag.
            let (later, mut retained) = rt.block_on(connect_watcher(port, ProtocolVersion::V5));
            rt.block_on(later.subscribe(&topic, QoS::ExactlyOnce))
                .unwrap();
            let stored = rt.block_on(next(&mut retained));
            for clear in [&topic, &ready] {
                rt.block_on(watcher.publish(clear, "", QoS::AtMostOnce, true))
                    .unwrap();
            }
            (
                will.payload,
                will.qos,
                stored.payload,
                stored.qos,
                stored.retain,
            )
        });
        assert_eq!(
            seen,
            (
                "gone".into(),
                QoS::AtLeastOnce,
                "gone".into(),
                QoS::AtLeastOnce,
                true
            ),
            "{broker}"
        );
    }
    // A will payload or retain without a topic: both refuse.
    for tool in TOOLS {
        for (flag, message) in [
            (
                &["--will-payload", "x"][..],
                "Will payload given, but no will topic given.",
            ),
            (
                &["--will-retain"],
                "Will retain given, but no will topic given.",
            ),
        ] {
            let mut args = vec!["-p", "1", "-t", "x", "-m", "y"];
            args.extend(flag);
            let out = tool.run("pub", &args);
            assert!(!out.status.success(), "{tool:?} {flag:?}");
            assert!(
                text(&out.stderr).contains(message),
                "{tool:?}: {}",
                text(&out.stderr)
            );
        }
    }
}

// ------------------------------------------------------------------------------ -x, -c, -U, -E

/// Whether the broker kept a session for `client_id` (asked by resuming it without expiry).
fn session_present(port: u16, client_id: &str) -> bool {
    runtime().block_on(async {
        let options = ClientOptions::new(&format!("mqtt://127.0.0.1:{port}"))
            .version(ProtocolVersion::V5)
            .client_id(client_id)
            .clean_start(false)
            .reconnect(None);
        let (client, _, connack) = Client::connect(options).await.expect("connects");
        client.disconnect().await.unwrap();
        connack.session_present
    })
}

#[test]
fn session_expiry_keeps_the_session_as_mosquitto_does() {
    let (_ours, _mosquitto, brokers) = brokers();
    for (broker, port_number) in brokers {
        let port = port_number.to_string();
        // (flags, whether the broker keeps the session once the subscriber has left)
        let cases: [(&[&str], bool); 6] = [
            (&["-V", "5", "-x", "60"], true),
            (&["-V", "5", "-x", "∞"], true),
            (&["-V", "5", "-c", "-x", "0"], false),
            (&["-V", "5", "-c"], true),
            (&["-V", "5"], false),
            // Before MQTT 5 there is no expiry to send: -x is ignored, the session is clean.
            (&["-V", "311", "-x", "60"], false),
        ];
        for (flags, kept) in cases {
            for tool in TOOLS {
                let id = format!("x-{}", run_id());
                let mut args = vec!["-p", &port, "-i", &id, "-t", "x/t", "-q", "1", "-E"];
                args.extend(flags);
                let out = tool.run("sub", &args);
                assert!(
                    out.status.success(),
                    "{tool:?} {args:?}: {}",
                    text(&out.stderr)
                );
                assert_eq!(
                    session_present(port_number, &id),
                    kept,
                    "{broker}, {tool:?} {flags:?}"
                );
            }
        }
    }
    for tool in TOOLS {
        for bad in ["abc", "-2", "4294967296"] {
            let out = tool.run("sub", &["-p", "1", "-t", "x", "-x", bad, "-V", "5"]);
            assert!(!out.status.success(), "{tool:?} -x {bad}");
            assert!(
                text(&out.stderr).contains("session-expiry-interval"),
                "{tool:?}"
            );
        }
    }
}

#[test]
fn unsubscribe_removes_a_subscription_of_a_persistent_session() {
    let (_ours, _mosquitto, brokers) = brokers();
    let rt = runtime();
    for (broker, port) in brokers {
        let port_s = port.to_string();
        let seen = same_from_both(broker, |tool| {
            let id = format!("u-{}", run_id());
            let (a, b) = (format!("{id}/a"), format!("{id}/b"));
            let session = ["-p", &port_s, "-c", "-i", &id, "-q", "1", "-E"];
            let mut args = session.to_vec();
            args.extend(["-t", &a, "-t", &b]);
            assert!(tool.run("sub", &args).status.success());
            let mut args = session.to_vec();
            args.extend(["-t", &b, "-U", &a]);
            let started = Instant::now();
            let out = tool.run("sub", &args);
            assert!(out.status.success(), "{tool:?}: {}", text(&out.stderr));
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "-E exits at once"
            );
            // While the session is offline, a then b are published; resuming it, the first
            // message queued tells whether a is still subscribed.
            let (publisher, _) = rt.block_on(connect_watcher(port, ProtocolVersion::V3_1_1));
            for topic in [&a, &b] {
                rt.block_on(publisher.publish(topic, "queued", QoS::AtLeastOnce, false))
                    .unwrap();
            }
            let first = rt.block_on(async {
                let options = ClientOptions::new(&format!("mqtt://127.0.0.1:{port}"))
                    .version(ProtocolVersion::V3_1_1)
                    .client_id(&id)
                    .clean_start(false)
                    .reconnect(None);
                let (client, mut messages, connack) = Client::connect(options).await.unwrap();
                assert!(connack.session_present, "{broker}, {tool:?}");
                let first = next(&mut messages).await;
                client.disconnect().await.unwrap();
                first.topic.to_string()
            });
            first.trim_start_matches(&id).to_owned()
        });
        assert_eq!(seen, "/b", "{broker}: only b is left, with both tools");
    }
}

// ------------------------------------------------------------------------------ output

/// Runs `sub` with `args` under both tools and returns (rallymq's, mosquitto's) outputs with
/// the time stamps of %j masked.
fn both_sub(port: u16, args: &[&str]) -> [(String, String, Option<i32>); 2] {
    let port = port.to_string();
    TOOLS.map(|tool| {
        let mut all = vec!["-p", port.as_str()];
        all.extend(args);
        let out = tool.run("sub", &all);
        (
            mask_times(&text(&out.stdout)),
            text(&out.stderr),
            out.status.code(),
        )
    })
}

/// `"tst":"..."` with the time replaced by `T`.
fn mask_times(output: &str) -> String {
    let mut masked = String::new();
    let mut rest = output;
    while let Some(at) = rest.find("\"tst\":") {
        let value = &rest[at + 6..];
        let value = value.trim_start_matches(['\t', ' ']);
        let skipped = rest.len() - value.len();
        masked.push_str(&rest[..skipped]);
        let end = value[1..].find('"').map_or(value.len(), |e| e + 2);
        masked.push_str("\"T\"");
        rest = &value[end..];
    }
    masked.push_str(rest);
    masked
}

#[test]
fn format_output_is_mosquitto_subs() {
    let (_ours, _mosquitto, brokers) = brokers();
    let rt = runtime();
    for (broker, port) in brokers {
        let base = format!("f/{}", run_id());
        let (publisher, _) = rt.block_on(connect_watcher(port, ProtocolVersion::V5));
        let json = format!("{base}/json");
        let text_topic = format!("{base}/text");
        let binary = format!("{base}/binary");
        let props = format!("{base}/props");
        rt.block_on(retain(
            &publisher,
            &[
                (
                    &json,
                    br#" {"a" : [1.50, -0, 1e20, 0.1, true, null, "\u00e9\/"], "b":{}} "#,
                    QoS::AtLeastOnce,
                ),
                (
                    &text_topic,
                    b"hello \"world\" \\ tab\there",
                    QoS::ExactlyOnce,
                ),
                (&binary, b"\x00\x01\xfe\xff", QoS::AtMostOnce),
            ],
        ));
        rt.block_on(async {
            let mut message = Message::new(rallymq_client::TopicName::new(&props).unwrap(), "p");
            message.retain = true;
            message.qos = QoS::AtLeastOnce;
            message.properties.content_type =
                Some(rallymq_codec::MqttString::new("text/plain").unwrap());
            message.properties.response_topic =
                Some(rallymq_client::TopicName::new("reply/to").unwrap());
            message.properties.correlation_data = Some("cd".into());
            message.properties.payload_format_indicator = Some(rallymq_codec::PayloadFormat::Utf8);
            message.properties.user_properties = vec![
                rallymq_client::UserProperty::new("k1", "v1").unwrap(),
                rallymq_client::UserProperty::new("k2", "v2").unwrap(),
            ];
            publisher.publish_message(message).await.unwrap();
        });
        let formats = [
            "%t|%p|%q|%r|%l|%m|%x|%X|%10t|%-10.3t|%05l|%-5l|%6p|%-p|%8x|\\t\\\\@@%%",
            "%j",
            "%J",
            "%A|%C|%D|%F|%P|%R|%S|%04F|%-4S|",
        ];
        // One subscriber for the four: each filter's retained message comes in the order of the
        // SUBSCRIBE, the same for both tools. At QoS 1: mosquitto_sub hands a QoS 2 message on
        // at PUBREL, rallymq sub at PUBLISH, which may change the order of what they print.
        let topics = ["-t", &json, "-t", &text_topic, "-t", &binary, "-t", &props];
        for version in ["311", "5"] {
            let qos2 = [
                "-t",
                &text_topic,
                "-C",
                "1",
                "-q",
                "2",
                "-V",
                version,
                "-F",
                formats[0],
            ];
            let [ours, theirs] = both_sub(port, &qos2);
            assert_eq!(ours, theirs, "{broker}: sub {qos2:?}");
            for format in formats {
                for extra in [&[][..], &["--pretty"], &["-N"]] {
                    let mut args = topics.to_vec();
                    args.extend(["-C", "4", "-q", "1", "-V", version, "-F", format]);
                    args.extend(extra);
                    let [ours, theirs] = both_sub(port, &args);
                    assert_eq!(ours.2, Some(0), "{broker}: sub {args:?}: {}", ours.1);
                    assert_eq!(ours, theirs, "{broker}: sub {args:?}");
                }
            }
        }
        // -v, plain and -N without -F, and -T: the same lines from the same retained messages.
        let all = format!("{base}/#");
        let bin_filter = format!("{base}/binary");
        for args in [
            &["-v"][..],
            &[],
            &["-v", "-N"],
            &["-N"],
            &["-v", "-T", &bin_filter],
            &["-v", "-T", &json, "-T", &props],
        ] {
            let count = if args.contains(&"-T") { "2" } else { "4" };
            let mut all_args = vec!["-t", all.as_str(), "-C", count, "-W", "5"];
            all_args.extend(args);
            let [ours, theirs] = both_sub(port, &all_args);
            // The brokers may give the retained messages in another order: compare as sets of
            // messages (each ends its line, or is a known topic with -N).
            assert_eq!(ours.2, Some(0), "{broker}: {all_args:?}: {}", ours.1);
            assert_eq!(theirs.2, Some(0), "{broker}: {all_args:?}: {}", theirs.1);
            assert_eq!(
                sorted(&ours.0, &base),
                sorted(&theirs.0, &base),
                "{broker}: {all_args:?}"
            );
        }
        for topic in [&json, &text_topic, &binary, &props] {
            rt.block_on(publisher.publish(topic, "", QoS::AtMostOnce, true))
                .unwrap();
        }
    }
    // Formats both refuse.
    for tool in TOOLS {
        for (format, error) in [
            ("%", "Incomplete format specifier"),
            ("%k", "Invalid format specifier 'k'"),
        ] {
            let out = tool.run("sub", &["-p", "1", "-t", "x", "-F", format]);
            assert!(!out.status.success());
            assert!(
                text(&out.stderr).contains(error),
                "{tool:?}: {}",
                text(&out.stderr)
            );
        }
    }
}

/// The output split before each topic of the test (`base`), sorted: order-free, with or
/// without newlines.
fn sorted(output: &str, base: &str) -> Vec<String> {
    let mut parts: Vec<String> = output.split(base).map(str::to_owned).collect();
    parts.sort();
    parts
}

#[test]
fn retained_only_prints_the_retained_and_exits_at_the_first_live_message() {
    let (_ours, _mosquitto, brokers) = brokers();
    let rt = runtime();
    for (broker, port) in brokers {
        let port_s = port.to_string();
        let topic = format!("ro/{}", run_id());
        let (publisher, _) = rt.block_on(connect_watcher(port, ProtocolVersion::V3_1_1));
        rt.block_on(retain(&publisher, &[(&topic, b"stored", QoS::AtLeastOnce)]));
        let output = same_from_both(broker, |tool| {
            let mut sub = tool
                .command(
                    "sub",
                    &["-p", &port_s, "-t", &topic, "-v", "--retained-only"],
                )
                .spawn()
                .unwrap();
            let lines = read_until(&mut sub, "stored");
            rt.block_on(publisher.publish(&topic, "live", QoS::AtLeastOnce, false))
                .unwrap();
            let out = finish(sub, &format!("{tool:?} sub --retained-only"));
            (lines, text(&out.stdout), out.status.code())
        });
        assert_eq!(output.0, [format!("{topic} stored")], "{broker}");
        rt.block_on(publisher.publish(&topic, "", QoS::AtMostOnce, true))
            .unwrap();
    }
    for tool in TOOLS {
        let out = tool.run("sub", &["-p", "1", "-t", "x", "-R", "--retained-only"]);
        assert!(!out.status.success(), "{tool:?}: -R with --retained-only");
    }
}

// ------------------------------------------------------------------------------ -d, --repeat

/// The trace lines of a `-d` run, with Mosquitto's and our default ids made equal by `-i`.
fn trace(tool: Tool, command: &str, args: &[&str]) -> Vec<String> {
    let out = tool.run(command, args);
    assert!(
        out.status.success(),
        "{tool:?} {args:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout).lines().map(str::to_owned).collect()
}

#[test]
fn debug_prints_the_packets_as_mosquitto_does() {
    let (_ours, _mosquitto, brokers) = brokers();
    for (broker, port) in brokers {
        let port = port.to_string();
        for version in ["311", "5"] {
            for qos in ["1", "2"] {
                let args = [
                    "-p", &port, "-V", version, "-i", "tracer", "-t", "d/1", "-m", "hello", "-q",
                    qos, "-d", "--repeat", "2",
                ];
                let [ours, theirs] = TOOLS.map(|tool| trace(tool, "pub", &args));
                assert_eq!(ours, theirs, "{broker}: pub {args:?}");
                assert_eq!(ours[0], "Client tracer sending CONNECT");
                assert!(ours.contains(&format!(
                    "Client tracer sending PUBLISH (d0, q{qos}, r0, m2, 'd/1', ... (5 bytes))"
                )));
            }
            let args = [
                "-p", &port, "-V", version, "-i", "tracer", "-t", "d/1", "-t", "d/2", "-q", "2",
                "-d", "-E", "-R",
            ];
            let [ours, theirs] = TOOLS.map(|tool| trace(tool, "sub", &args));
            assert_eq!(ours, theirs, "{broker}: sub {args:?}");
            assert!(
                ours.contains(&"Subscribed (mid: 1): 2, 2".to_owned()),
                "{ours:?}"
            );
        }
    }
}

#[test]
fn repeat_publishes_the_same_message_with_the_delay_between() {
    let (_ours, _mosquitto, brokers) = brokers();
    let rt = runtime();
    for (broker, port) in brokers {
        let port_s = port.to_string();
        let seen = same_from_both(broker, |tool| {
            let topic = format!("rep/{}", run_id());
            let (watcher, mut messages) = rt.block_on(connect_watcher(port, ProtocolVersion::V5));
            rt.block_on(watcher.subscribe(&topic, QoS::AtLeastOnce))
                .unwrap();
            let started = Instant::now();
            let out = tool.run(
                "pub",
                &[
                    "-p",
                    &port_s,
                    "-t",
                    &topic,
                    "-m",
                    "again",
                    "-q",
                    "1",
                    "--repeat",
                    "3",
                    "--repeat-delay",
                    "0.2",
                ],
            );
            assert!(out.status.success(), "{tool:?}: {}", text(&out.stderr));
            let elapsed = started.elapsed();
            assert!(
                elapsed >= Duration::from_millis(400),
                "{tool:?}: two delays"
            );
            (0..3)
                .map(|_| rt.block_on(next(&mut messages)).payload)
                .collect::<Vec<_>>()
        });
        assert_eq!(seen, ["again", "again", "again"].map(bytes::Bytes::from));
    }
    for tool in TOOLS {
        let out = tool.run("pub", &["-p", "1", "-t", "x", "-m", "y", "--repeat", "0"]);
        assert!(!out.status.success(), "{tool:?} --repeat 0");
    }
}

// ------------------------------------------------------------------------------ --cert/--key

#[test]
fn client_certificates_open_mosquittos_tls_listener_with_both_tools() {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType,
    };
    let dir = std::env::temp_dir().join(format!("rallymq-certs-{}", run_id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "rallymq test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params.distinguished_name.push(DnType::CommonName, name);
        let certificate = params.signed_by(&key, &ca).unwrap();
        (certificate.pem(), key.serialize_pem())
    };
    let write = |name: &str, pem: &str| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let ca_file = write("ca.pem", &ca.pem());
    let (server_cert, server_key) = leaf("server");
    let (client_cert, client_key) = leaf("client");
    let server_cert = write("server.pem", &server_cert);
    let server_key = write("server.key", &server_key);
    let client_cert = write("client.pem", &client_cert);
    let client_key = write("client.key", &client_key);
    let tls_port = rallymq_test_support::free_port();
    let mosquitto = Mosquitto::start_with(&format!(
        "allow_anonymous true\nlistener {tls_port} 127.0.0.1\ncafile {ca_file}\n\
         certfile {server_cert}\nkeyfile {server_key}\nrequire_certificate true\n"
    ));
    let rt = runtime();
    let (watcher, mut messages) = rt.block_on(connect_watcher(mosquitto.tcp, ProtocolVersion::V5));
    rt.block_on(watcher.subscribe("tls/#", QoS::AtLeastOnce))
        .unwrap();
    let port = tls_port.to_string();
    for tool in TOOLS {
        let topic = format!("tls/{tool:?}");
        let with_cert = [
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "--cafile",
            &ca_file,
            "--cert",
            &client_cert,
            "--key",
            &client_key,
            "-t",
            &topic,
            "-m",
            "over tls",
            "-q",
            "1",
        ];
        let out = tool.run("pub", &with_cert);
        assert!(out.status.success(), "{tool:?}: {}", text(&out.stderr));
        let message = rt.block_on(next(&mut messages));
        assert_eq!(
            (message.topic.to_string(), message.payload),
            (topic.clone(), "over tls".into())
        );
        // Without the certificate the broker refuses the handshake.
        let without = [
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "--cafile",
            &ca_file,
            "-t",
            &topic,
            "-m",
            "x",
        ];
        assert!(!tool.run("pub", &without).status.success(), "{tool:?}");
        // One of --cert and --key alone is refused before connecting.
        let half = [
            "-p",
            &port,
            "--cafile",
            &ca_file,
            "--cert",
            &client_cert,
            "-t",
            "x",
            "-m",
            "x",
        ];
        let out = tool.run("pub", &half);
        assert!(!out.status.success());
        assert!(
            text(&out.stderr)
                .contains("Both certfile and keyfile must be provided if one of them is set."),
            "{tool:?}: {}",
            text(&out.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}
