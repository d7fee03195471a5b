//! The compiled ACL beside a real Mosquitto given the same `acl_file`: for users (from a
//! password file written by `mosquitto_passwd -b`), anonymous clients and client ids holding
//! `/`, `+` or `#`, both must agree on
//!
//! - publishing: the PUBACK code (MQTT 5: 0x87 when refused), and whether a subscriber with
//!   full rights receives the message;
//! - subscribing: Mosquitto 2.0 grants every subscription under an ACL file; we refuse those
//!   that can deliver nothing, so none of the topics a refused filter matches may be received;
//! - receiving: which messages, published by that subscriber with full rights, reach the
//!   client subscribed to `#` and the `$` prefixes, and whether the retained
//!   `$SYS/broker/version` reaches it.
//!
//! One hand-written file exercises every element of the syntax; seeded random files add
//! breadth. Mosquitto is the one installed (2.0.11 in the image this was written against). A
//! missing `mosquitto` or `mosquitto_passwd` fails the test.
//!
//! Deliveries are collected without sleeping: after the sender's last QoS 1 publish is
//! acknowledged, Mosquitto has queued every delivery it will make, and a SUBSCRIBE the receiver
//! sends then is answered after them.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use rallymq_broker::acl::{Acl, ClientAcl};
use rallymq_codec::{MqttString, ProtocolVersion, QoS, ReasonCode, TopicFilter, TopicName};
use rallymq_session::ClientEvent;
use rallymq_test_support::{Mosquitto, run_id};
use support::{TestClient, connect_packet, message, subscription, topic_str};
use tokio::net::TcpStream;

const PASSWORD: &str = "secret";
/// Users in the password file; the file under test gives some of them sections.
const USERS: [&str; 7] = ["admin", "alice", "bob", "carol", "a/b", "ev+l", "we#rd"];
/// The user who may read and write every topic the tests use.
const ADMIN_SECTION: &str = "user admin\ntopic readwrite #\ntopic readwrite $s/#\ntopic readwrite $foo/#\ntopic read $SYS/#\n";

/// (user, client id) pairs checked.
const CLIENTS: [(Option<&str>, &str); 9] = [
    (None, "anon-1"),
    (None, "d/e"),
    (Some("alice"), "alice-1"),
    (Some("alice"), "c#1"),
    (Some("bob"), "b/1"),
    (Some("carol"), "carol-1"),
    (Some("a/b"), "ab-1"),
    (Some("ev+l"), "evil-1"),
    (Some("we#rd"), "weird-1"),
];

/// Filters each client subscribes to; the first ones also serve the receive check.
const FILTERS: [&str; 10] = [
    "#",
    "$s/#",
    "$foo/#",
    "$SYS/broker/version",
    "a/+",
    "nothing/here",
    "$share/g/a/#",
    "alice/#",
    "+/+/x",
    "$SYS/#",
];

const HAND_WRITTEN: &str = "\
# Anonymous clients (before the first `user` line).
topic read public/#
topic write inbox/+
topic public/both
topic deny public/secret
   topic   read   spaced topic
topic read $foo/#

pattern write dev/%c/up
pattern read dev/%c/down/#
pattern readwrite users/%u/#
pattern deny users/%u/locked
pattern read mixed/%u-%c
pattern readwrite $s/%u/#

user alice
topic readwrite alice/#
topic deny alice/private
topic read $SYS/#
topic write a/+

user bob
topic read a/#
topic write b/#
topic read
user alice
topic read shared/+/x

user a/b
topic readwrite ab/#
user ev+l
topic write evil/#
user we#rd
topic write weird/#
";

/// Topics published and received in the checks, besides those of the random files.
const TOPICS: [&str; 32] = [
    "public/news",
    "public/secret",
    "public/both",
    "inbox/1",
    "inbox/1/2",
    "spaced topic",
    "$foo/x",
    "dev/anon-1/up",
    "dev/d/e/up",
    "dev/alice-1/up",
    "dev/alice-1/down/x",
    "users/alice/x",
    "users/alice/locked",
    "users/a/b/x",
    "users/bob",
    "users//x",
    "mixed/alice-alice-1",
    "$s/alice/x",
    "alice/x",
    "alice/private",
    "a/x",
    "a",
    "b/x",
    "read",
    "shared/1/x",
    "ab/1",
    "evil/1",
    "weird/1",
    "$SYS/x",
    "$SYS/broker/connection/alice-1/state",
    "$share/g/a/x",
    "x/y/z",
];

/// A small deterministic generator (xorshift), so that a failing seed can be run again.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const RANDOM_LEVELS: [&str; 8] = ["a", "b", "", "$s", "alice", "x", "+", "1"];
const RANDOM_PATTERN_LEVELS: [&str; 10] = ["a", "b", "", "$s", "+", "%u", "%c", "x%c", "1", "x"];

fn random_filter(rng: &mut Rng, levels: &[&str]) -> String {
    let count = 1 + rng.below(3);
    let mut text: Vec<&str> = (0..count).map(|_| rng.pick(levels)).collect();
    if rng.below(3) == 0 {
        text.push("#");
    }
    let text = text.join("/");
    if text.is_empty() {
        "a".to_owned()
    } else {
        text
    }
}

/// A random file over a small vocabulary, and topics over the same one.
fn random_case(seed: u64) -> (String, Vec<String>) {
    let mut rng = Rng(seed);
    let mut file = String::new();
    for _ in 0..(6 + rng.below(14)) {
        let access = rng.pick(&["", "read ", "write ", "readwrite ", "deny "]);
        match rng.below(6) {
            0 => file.push_str(&format!("user {}\n", rng.pick(&["alice", "bob", "a/b"]))),
            1 | 2 => {
                let filter = random_filter(&mut rng, &RANDOM_PATTERN_LEVELS);
                file.push_str(&format!("pattern {access}{filter}\n"));
            }
            _ => {
                let filter = random_filter(&mut rng, &RANDOM_LEVELS);
                file.push_str(&format!("topic {access}{filter}\n"));
            }
        }
    }
    let topic_levels = [
        "a", "b", "", "$s", "alice", "x", "1", "xalice-1", "anon-1", "d", "e", "b/1",
    ];
    let mut topics = BTreeSet::new();
    while topics.len() < 24 {
        let count = 1 + rng.below(4);
        let topic = (0..count)
            .map(|_| rng.pick(&topic_levels))
            .collect::<Vec<_>>()
            .join("/");
        if TopicName::new(topic.as_str()).is_ok() {
            topics.insert(topic);
        }
    }
    (file, topics.into_iter().collect())
}

struct Setup {
    dir: PathBuf,
    mosquitto: Mosquitto,
    acl: Acl,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The password file, written by `mosquitto_passwd -b` for every user of [`USERS`].
fn password_file(dir: &Path) -> PathBuf {
    let path = dir.join("passwords");
    for (i, user) in USERS.iter().enumerate() {
        let mut command = Command::new("mosquitto_passwd");
        if i == 0 {
            command.arg("-c");
        }
        let status = command
            .arg("-b")
            .arg(&path)
            .arg(user)
            .arg(PASSWORD)
            .status()
            .unwrap_or_else(|e| panic!("mosquitto_passwd does not run ({e}): install mosquitto"));
        assert!(status.success(), "mosquitto_passwd failed for {user}");
    }
    path
}

/// Mosquitto with `file` (and the admin's section) as its `acl_file`, and our compiled copy.
fn setup(file: &str) -> Setup {
    let dir = std::env::temp_dir().join(format!("rallymq-acl-{}", run_id()));
    std::fs::create_dir_all(&dir).unwrap();
    let passwords = password_file(&dir);
    let acl_path = dir.join("acl");
    let text = format!("{file}\n{ADMIN_SECTION}");
    std::fs::write(&acl_path, &text).unwrap();
    // Mosquitto started as root reads its files as the `mosquitto` user.
    for path in [&dir, &passwords, &acl_path] {
        let mode = if path.is_dir() { "755" } else { "644" };
        Command::new("chmod").arg(mode).arg(path).status().unwrap();
    }
    let mosquitto = Mosquitto::start_with(&format!(
        "allow_anonymous true\npassword_file {}\nacl_file {}\n",
        passwords.display(),
        acl_path.display()
    ));
    let acl = Acl::parse(text.as_bytes(), &acl_path).expect("the file parses");
    Setup {
        dir,
        mosquitto,
        acl,
    }
}

async fn connect(port: u16, user: Option<&str>, client_id: &str) -> TestClient<TcpStream> {
    let mut connect = connect_packet(ProtocolVersion::V5, client_id);
    if let Some(user) = user {
        connect.username = Some(MqttString::new(user).unwrap());
        connect.password = Some(Bytes::from_static(PASSWORD.as_bytes()));
    }
    let (client, event) =
        TestClient::tcp(format!("127.0.0.1:{port}").parse().unwrap(), connect).await;
    assert!(
        matches!(event, ClientEvent::Connected { .. }),
        "{user:?}/{client_id} not connected: {event:?}"
    );
    client
}

/// Waits for a SUBACK to a throwaway subscription: every message Mosquitto queued for the
/// client before it has then arrived. Returns the topics of the messages received so far.
async fn drain(client: &mut TestClient<TcpStream>) -> BTreeSet<String> {
    client
        .subscribe(vec![subscription(
            &format!("zz/sync/{}", run_id()),
            QoS::AtMostOnce,
        )])
        .await;
    let mut topics = BTreeSet::new();
    client.events.retain(|event| match event {
        ClientEvent::Message(message) => {
            topics.insert(topic_str(&message.publish));
            false
        }
        _ => true,
    });
    topics
}

fn set<'a>(topics: impl IntoIterator<Item = &'a String>) -> BTreeSet<String> {
    topics.into_iter().cloned().collect()
}

/// Whether a client subscribed to all of [`FILTERS`] has one matching `topic`.
fn subscribed(topic: &str) -> bool {
    let name = TopicName::new(topic).unwrap();
    FILTERS
        .iter()
        .any(|f| rallymq_topic::matches(&TopicFilter::new(*f).unwrap(), &name))
}

async fn compare(file: &str, topics: &[String], what: &str) {
    let setup = setup(file);
    let port = setup.mosquitto.tcp;
    let ours_admin = setup.acl.for_client(Some("admin"), "admin", None);
    let mut admin = connect(port, Some("admin"), "admin").await;
    admin
        .subscribe(
            FILTERS[..3]
                .iter()
                .map(|f| subscription(f, QoS::AtMostOnce))
                .collect(),
        )
        .await;
    let mut failures = Vec::new();
    for (user, client_id) in CLIENTS {
        let ours: ClientAcl = setup.acl.for_client(user, client_id, None);
        let who = format!("{user:?}/{client_id}");
        let mut client = connect(port, user, client_id).await;

        // Subscribing.
        for filter in FILTERS {
            let codes = client
                .subscribe(vec![subscription(filter, QoS::AtMostOnce)])
                .await;
            // Mosquitto grants every subscription; we refuse one that can deliver nothing:
            // then none of the topics it matches may be received, which the comparison of
            // deliveries below checks against Mosquitto.
            let granted = codes.iter().all(|code| !code.is_error());
            let filter = TopicFilter::new(filter).unwrap();
            if !granted {
                failures.push(format!("{who} subscribe {filter}: Mosquitto {codes:?}"));
            }
            if !ours.can_subscribe(&filter) {
                for topic in topics {
                    let name = TopicName::new(topic.as_str()).unwrap();
                    if rallymq_topic::matches(&filter, &name) && ours.can_receive(&name) {
                        failures.push(format!(
                            "{who} subscribe {filter}: refused, but {topic} may be received"
                        ));
                    }
                }
            }
        }

        // Publishing: the PUBACK code, then what a subscriber with full rights received.
        let mut published = Vec::new();
        for topic in topics {
            let code = client.publish(message(topic, "p", QoS::AtLeastOnce)).await;
            let allowed = code != ReasonCode::NotAuthorized;
            if allowed != ours.can_publish(&TopicName::new(topic.as_str()).unwrap()) {
                failures.push(format!("{who} publish {topic}: Mosquitto {code:?}"));
            }
            published.push(topic);
        }
        let seen = drain(&mut admin).await;
        let expected: BTreeSet<String> = set(published.iter().copied().filter(|topic| {
            let name = TopicName::new(topic.as_str()).unwrap();
            ours.can_publish(&name)
                && ours_admin.can_receive(&name)
                && FILTERS[..3]
                    .iter()
                    .any(|f| rallymq_topic::matches(&TopicFilter::new(*f).unwrap(), &name))
        }));
        if seen != expected {
            failures.push(format!(
                "{who}'s messages the admin received: Mosquitto {seen:?}, ours {expected:?}"
            ));
        }

        // Receiving: retained $SYS/broker/version (sent on subscribing), then what the admin
        // publishes.
        let own = drain(&mut client).await;
        let version = own.contains("$SYS/broker/version");
        if version != ours.can_receive(&TopicName::new("$SYS/broker/version").unwrap()) {
            failures.push(format!(
                "{who} retained $SYS/broker/version: Mosquitto {version}"
            ));
        }
        let mut sent = Vec::new();
        for topic in topics {
            let name = TopicName::new(topic.as_str()).unwrap();
            if ours_admin.can_publish(&name) {
                let code = admin.publish(message(topic, "r", QoS::AtLeastOnce)).await;
                assert_ne!(
                    code,
                    ReasonCode::NotAuthorized,
                    "the admin publishes {topic}"
                );
                sent.push(topic);
            }
        }
        // Mosquitto's periodic `$SYS` messages are not among those checked.
        let mut received = drain(&mut client).await;
        received.retain(|topic| !topic.starts_with("$SYS"));
        let expected = set(sent.iter().copied().filter(|topic| {
            subscribed(topic) && ours.can_receive(&TopicName::new(topic.as_str()).unwrap())
        }));
        if received != expected {
            failures.push(format!(
                "{who} received: Mosquitto {received:?}, ours {expected:?}"
            ));
        }
        drain(&mut admin).await;
        client.disconnect(ReasonCode::Success).await;
    }
    assert!(
        failures.is_empty(),
        "{what}: Mosquitto and the compiled ACL disagree:\n{}\nunder\n{file}",
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_written_file_agrees_with_mosquitto() {
    let topics: Vec<String> = TOPICS.iter().map(|t| (*t).to_owned()).collect();
    compare(HAND_WRITTEN, &topics, "hand-written file").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_files_agree_with_mosquitto() {
    for seed in [
        0x9e37_79b9_7f4a_7c15,
        0x2545_f491_4f6c_dd1d,
        0xd1b5_4a32_d192_ed03,
    ] {
        let (file, topics) = random_case(seed);
        compare(&file, &topics, &format!("seed {seed:#x}")).await;
    }
}
