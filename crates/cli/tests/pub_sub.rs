//! `rallymq pub` and `rallymq sub` against our broker and Mosquitto: output, flags shared with
//! mosquitto_pub/mosquitto_sub, and exit codes. Every wait is bounded.

mod support;

use std::io::Write;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rallymq_test_support::Mosquitto;
use support::{OurBroker, RALLYMQ};

const WAIT: Duration = Duration::from_secs(10);

fn run(args: &[&str]) -> Output {
    let mut child = Command::new(RALLYMQ)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("rallymq {args:?} did not finish in {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// A `sub` that prints COUNT messages, started and subscribed (retained `ready` probe seen).
fn start_sub(args: &[&str]) -> Child {
    Command::new(RALLYMQ)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(child: Child) -> Output {
    let deadline = Instant::now() + WAIT;
    let mut child = child;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "sub did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Publishes `probe` retained first so the subscriber is known to be subscribed: a `sub -C n`
/// sees the retained probe, then the real messages.
fn exchange(port: u16, version: &str, url: Option<String>) {
    let port_s = port.to_string();
    let connection: Vec<String> = match &url {
        Some(url) => vec!["-L".into(), url.clone()],
        None => vec!["-p".into(), port_s.clone()],
    };
    let topic = format!("cli/{version}/{port}");
    let mut pub_args: Vec<String> = vec!["pub".into()];
    pub_args.extend(connection.clone());
    pub_args.extend(["-V", version, "-t", &topic, "-r", "-m", "probe"].map(String::from));
    let out = run(&pub_args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut sub_args: Vec<String> = vec!["sub".into()];
    sub_args.extend(connection.clone());
    sub_args.extend(["-V", version, "-t", &topic, "-C", "3", "-v", "-q", "2"].map(String::from));
    let sub = start_sub(&sub_args.iter().map(String::as_str).collect::<Vec<_>>());
    std::thread::sleep(Duration::from_millis(500));
    for (qos, message) in [("1", "one"), ("2", "two")] {
        let mut args: Vec<String> = vec!["pub".into()];
        args.extend(connection.clone());
        args.extend(["-V", version, "-t", &topic, "-q", qos, "-m", message].map(String::from));
        let out = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(
            out.status.success(),
            "pub: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = finish(sub);
    assert!(
        out.status.success(),
        "sub: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{topic} probe\n{topic} one\n{topic} two\n")
    );
    // Clear the retained probe.
    let mut clear: Vec<String> = vec!["pub".into()];
    clear.extend(connection);
    clear.extend(["-t", &topic, "-r", "-n"].map(String::from));
    assert!(
        run(&clear.iter().map(String::as_str).collect::<Vec<_>>())
            .status
            .success()
    );
}

#[test]
fn pub_and_sub_with_every_version_against_our_broker_and_mosquitto() {
    let broker = OurBroker::start();
    let (tcp, ws) = (broker.tcp, broker.ws);
    let mosquitto = Mosquitto::start();
    for version in ["31", "mqttv311", "5"] {
        exchange(tcp, version, None);
        exchange(mosquitto.tcp, version, None);
    }
    exchange(ws, "5", Some(format!("ws://127.0.0.1:{ws}/mqtt")));
    exchange(
        mosquitto.ws,
        "311",
        Some(format!("ws://127.0.0.1:{}/mqtt", mosquitto.ws)),
    );
}

#[test]
fn line_mode_file_and_user_properties() {
    let broker = OurBroker::start();
    let tcp = broker.tcp;
    let port = tcp.to_string();
    let sub = start_sub(&["sub", "-p", &port, "-V", "5", "-t", "lines", "-C", "4"]);
    std::thread::sleep(Duration::from_millis(500));
    let mut publisher = Command::new(RALLYMQ)
        .args(["pub", "-p", &port, "-t", "lines", "-l", "-q", "1"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    publisher
        .stdin
        .take()
        .unwrap()
        .write_all(b"first line\nsecond line\n")
        .unwrap();
    assert!(finish(publisher).status.success());
    let file = std::env::temp_dir().join(format!("rallymq-pub-{}.txt", std::process::id()));
    std::fs::write(&file, b"from a file").unwrap();
    let out = run(&[
        "pub",
        "-p",
        &port,
        "-t",
        "lines",
        "-f",
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let out = run(&[
        "pub",
        "-p",
        &port,
        "-V",
        "5",
        "-t",
        "lines",
        "-m",
        "props",
        "-D",
        "publish",
        "user-property",
        "k",
        "v",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = finish(sub);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "first line\nsecond line\nfrom a file\nprops\n"
    );
    let _ = std::fs::remove_file(file);
}

#[test]
fn mosquitto_sub_receives_rallymq_pub_and_the_reverse() {
    let broker = OurBroker::start();
    let tcp = broker.tcp;
    let port = tcp.to_string();
    let sub = Command::new("mosquitto_sub")
        .args(["-p", &port, "-t", "x/#", "-C", "1", "-v", "-V", "mqttv5"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub is installed (apt-get install mosquitto-clients)");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        run(&[
            "pub",
            "-p",
            &port,
            "-t",
            "x/1",
            "-m",
            "to mosquitto_sub",
            "-q",
            "1"
        ])
        .status
        .success()
    );
    assert_eq!(
        String::from_utf8_lossy(&finish(sub).stdout),
        "x/1 to mosquitto_sub\n"
    );

    let sub = start_sub(&["sub", "-p", &port, "-t", "y/#", "-C", "1"]);
    std::thread::sleep(Duration::from_millis(500));
    let status = Command::new("mosquitto_pub")
        .args(["-p", &port, "-t", "y/1", "-m", "from mosquitto_pub"])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        String::from_utf8_lossy(&finish(sub).stdout),
        "from mosquitto_pub\n"
    );
}

#[test]
fn exit_codes_a_script_can_test() {
    // Refused: Mosquitto requiring credentials.
    let strict = Mosquitto::start_with("allow_anonymous false\n");
    let out = run(&["pub", "-p", &strict.tcp.to_string(), "-t", "x", "-m", "y"]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("not authorised"));
    // Nobody listening.
    let out = run(&["pub", "-p", "1", "-t", "x", "-m", "y"]);
    assert_eq!(out.status.code(), Some(1));
    // Bad arguments: no message source, a wildcard in a topic name, an unknown version.
    for args in [
        &["pub", "-t", "x"][..],
        &["pub", "-t", "x/#", "-m", "y"],
        &["pub", "-t", "x", "-m", "y", "-V", "4"],
        &["sub"],
    ] {
        assert_eq!(run(args).status.code(), Some(2), "{args:?}");
    }
    // -W: a subscriber with nothing to receive gives up with 27.
    let broker = OurBroker::start();
    let tcp = broker.tcp;
    let started = Instant::now();
    let out = run(&["sub", "-p", &tcp.to_string(), "-t", "silence", "-W", "1"]);
    assert_eq!(out.status.code(), Some(27));
    assert!(started.elapsed() < Duration::from_secs(5));
}
