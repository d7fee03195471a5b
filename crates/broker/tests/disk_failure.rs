//! A broker whose disk store meets a real write error (issue 13: "disk trouble is never
//! hidden"): the store's file may not grow past its size (RLIMIT_FSIZE, set on this process
//! with `prlimit`), so redb's writes fail with EFBIG as the kernel refuses them, much as they
//! fail on a full disk. Publishers are never told success while it lasts, the broker logs the
//! failure once for the episode, and once the file may grow again it recovers by itself,
//! without a restart.
//!
//! A test binary of its own: the limit holds for the whole process, so no other test may write
//! files meanwhile.

#![cfg(target_os = "linux")]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rallymq_broker::{Broker, BrokerConfig, Storage};
use rallymq_codec::{ProtocolVersion, Publish, QoS, ReasonCode, TopicName};
use support::{
    TestClient, connect_packet, payload_str, persistent_connect, subscription, tcp_addr, topic_str,
};
use tokio::signal::unix::{SignalKind, signal};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

const V5: ProtocolVersion = ProtocolVersion::V5;

/// SIGXFSZ on Linux: raised by a write past RLIMIT_FSIZE, and fatal unless handled.
const SIGXFSZ: i32 = 25;

/// The messages of the WARN and ERROR events logged in this process, and of the INFO ones of
/// the store.
#[derive(Default)]
struct Logs(Mutex<Vec<(Level, String)>>);

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0.insert_str(0, &format!("{value:?}"));
        } else {
            self.0.push_str(&format!(" {}={value:?}", field.name()));
        }
    }
}

/// A tracing subscriber that keeps the messages of events, for the test to count.
struct Recorder(Arc<Logs>);

impl Subscriber for Recorder {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= Level::INFO
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut message = Message(String::new());
        event.record(&mut message);
        let level = *event.metadata().level();
        if level <= Level::WARN || event.metadata().target().contains("store") {
            let mut logs = (self.0).0.lock().unwrap();
            logs.push((level, message.0));
        }
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

impl Logs {
    fn count(&self, level: Level, text: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(l, message)| *l == level && message.contains(text))
            .count()
    }

    fn dump(&self) -> String {
        format!("{:#?}", self.0.lock().unwrap())
    }
}

/// Sets the soft limit on the size of the files this process writes (`None`: no limit).
fn limit_file_size(bytes: Option<u64>) {
    let limit = bytes.map_or("unlimited".to_owned(), |bytes| bytes.to_string());
    let status = Command::new("prlimit")
        .arg("--pid")
        .arg(std::process::id().to_string())
        .arg(format!("--fsize={limit}:"))
        .status()
        .expect("prlimit (util-linux) runs");
    assert!(status.success(), "prlimit --fsize={limit}: {status}");
}

struct DataDir(PathBuf);

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config(dir: &Path) -> BrokerConfig {
    let mut config = BrokerConfig::without_listeners();
    config.tcp = vec!["127.0.0.1:0".parse().unwrap()];
    config.sys_interval = None;
    config.storage = Storage::Directory(dir.to_path_buf());
    config
}

fn retained(topic: &str, payload: impl Into<Bytes>) -> Publish {
    let mut publish = Publish::new(TopicName::new(topic).unwrap(), payload);
    publish.qos = QoS::AtLeastOnce;
    publish.retain = true;
    publish
}

#[tokio::test]
async fn a_failing_disk_is_never_acknowledged_logged_once_and_recovered_from_without_a_restart() {
    let logs = Arc::new(Logs::default());
    tracing::subscriber::set_global_default(Recorder(logs.clone())).expect("the only subscriber");
    // Handled, SIGXFSZ no longer kills the process: the write fails with EFBIG instead.
    let _sigxfsz = signal(SignalKind::from_raw(SIGXFSZ)).expect("a SIGXFSZ handler");
    let dir = DataDir(std::env::temp_dir().join(format!(
        "rallymq-disk-failure-{}",
        rallymq_test_support::run_id()
    )));
    let broker = Broker::start(config(&dir.0))
        .await
        .expect("the broker starts");
    let (mut publisher, _) =
        TestClient::tcp(tcp_addr(&broker), connect_packet(V5, "publisher")).await;
    // Retained, to no subscriber: 0x10 is success.
    let accepted = ReasonCode::NoMatchingSubscribers;
    assert_eq!(
        publisher.publish(retained("big/first", "stored")).await,
        accepted
    );
    // And one queued for an offline session.
    let mut keeper = persistent_connect(V5, "keeper", 3600);
    keeper.clean_start = true;
    let (mut subscriber, _) = TestClient::tcp(tcp_addr(&broker), keeper.clone()).await;
    subscriber
        .subscribe(vec![subscription("queued/#", QoS::AtLeastOnce)])
        .await;
    subscriber.disconnect(ReasonCode::Success).await;
    let mut queued = retained("queued/1", "before");
    queued.retain = false;
    assert_eq!(publisher.publish(queued).await, ReasonCode::Success);

    // The store's file may not grow: messages that need more room than it has fail.
    let size = std::fs::metadata(dir.0.join("store.redb")).unwrap().len();
    limit_file_size(Some(size));
    let payload = Bytes::from(vec![b'x'; 256 * 1024]);
    let mut refused = None;
    for n in 0..64 {
        let code = publisher
            .publish(retained(&format!("big/{n}"), payload.clone()))
            .await;
        if code != accepted {
            refused = Some(code);
            break;
        }
    }
    assert_eq!(
        refused,
        Some(ReasonCode::UnspecifiedError),
        "0x80 once the file cannot grow (EFBIG is no full disk)"
    );
    // Still failing: never told success.
    let mut queued = retained("queued/2", "during");
    queued.retain = false;
    assert_eq!(
        publisher.publish(queued).await,
        ReasonCode::UnspecifiedError
    );
    for n in 0..3 {
        let code = publisher
            .publish(retained(&format!("big/more-{n}"), payload.clone()))
            .await;
        assert_eq!(code, ReasonCode::UnspecifiedError);
    }
    assert_eq!(
        logs.count(Level::ERROR, "store write failed"),
        1,
        "logged once for the episode: {}",
        logs.dump()
    );

    // The file may grow again: the broker recovers by itself, on the same connection.
    limit_file_size(None);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let code = publisher.publish(retained("big/after", "stored")).await;
        if code == accepted {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "writes never succeed again: {code:?}; logs: {}",
            logs.dump()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        logs.count(Level::INFO, "store writes succeed again"),
        1,
        "{}",
        logs.dump()
    );
    assert_eq!(
        logs.count(Level::ERROR, "store write failed"),
        1,
        "{}",
        logs.dump()
    );
    // The message queued before the failure reaches its session.
    keeper.clean_start = false;
    let (mut subscriber, _) = TestClient::tcp(tcp_addr(&broker), keeper).await;
    let first = subscriber
        .recv()
        .await
        .expect("the message queued before the failure");
    assert_eq!(payload_str(&first), "before");
    drop(subscriber);
    drop(publisher);
    tokio::time::timeout(
        Duration::from_secs(10),
        broker.shutdown(Duration::from_millis(500)),
    )
    .await
    .expect("shuts down in time");

    // What was acknowledged is there after a restart.
    let broker = Broker::start(config(&dir.0)).await.expect("starts again");
    let (mut subscriber, _) =
        TestClient::tcp(tcp_addr(&broker), connect_packet(V5, "subscriber")).await;
    subscriber
        .subscribe(vec![subscription("big/+", QoS::AtLeastOnce)])
        .await;
    let mut stored = Vec::new();
    while let Some(message) = subscriber.recv_within(Duration::from_millis(500)).await {
        if message.payload.len() < 16 {
            stored.push((topic_str(&message), payload_str(&message)));
        }
    }
    stored.sort();
    assert_eq!(
        stored,
        [
            ("big/after".to_owned(), "stored".to_owned()),
            ("big/first".to_owned(), "stored".to_owned())
        ]
    );
    tokio::time::timeout(
        Duration::from_secs(10),
        broker.shutdown(Duration::from_millis(500)),
    )
    .await
    .expect("shuts down in time");
}
