//! Names the documentation gives are names the broker uses: every `$SYS` topic named in the
//! READMEs, `rallymq.example.toml`, the broker's and the command's doc comments and the web
//! dashboard is one the broker publishes, and every topic it publishes is listed in the
//! broker's README.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rallymq_codec::{ProtocolVersion, QoS};
use rallymq_topic::{TopicFilter, TopicName};
use support::{TestClient, connect_packet, start_broker, subscription, tcp_addr, topic_str};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every `README.md` under `dir`, leaving out build output, installed packages and hidden
/// directories.
fn readmes(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if path.is_dir() {
            if !(name.starts_with('.') || name == "target" || name == "node_modules") {
                readmes(&path, out);
            }
        } else if name == "README.md" {
            out.push(path);
        }
    }
}

/// The doc comment lines (`///`, `//!`) of the `.rs` files in `dir`.
fn doc_comments(dir: &Path) -> String {
    let mut text = String::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "rs"))
        .collect();
    files.sort();
    for file in files {
        let source = std::fs::read_to_string(&file).expect("readable source");
        for line in source.lines().map(str::trim_start) {
            if line.starts_with("///") || line.starts_with("//!") {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    text
}

/// The `$SYS` names in `text`: one in quotes or backticks runs to the closing one (names may
/// hold spaces: `$SYS/broker/retained messages/count`), another to the next space or
/// punctuation. `$SYS` alone and placeholders (`$SYS/broker/...`) are not names.
fn sys_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    for (at, _) in text.match_indices("$SYS") {
        let rest = &text[at..];
        let quote = text[..at]
            .chars()
            .next_back()
            .filter(|c| matches!(c, '`' | '\'' | '"'));
        let end = match quote {
            Some(quote) => rest.find(quote),
            None => rest.find(|c: char| c.is_whitespace() || matches!(c, ')' | ',' | ';')),
        };
        let name = &rest[..end.unwrap_or(rest.len())];
        // `%c` and `%u` are an ACL pattern's substitutions: a rule, not a topic published.
        // A name ending in `/` is a prefix in code, not a topic.
        if name.starts_with("$SYS/")
            && !name.contains("...")
            && !name.contains('%')
            && !name.ends_with('/')
        {
            names.push(name.trim_end_matches(['.', ':']).to_owned());
        }
    }
    names
}

/// Whether `name` (a topic, or a filter with `+` or `#`) names `topic`.
fn names(name: &str, topic: &str) -> bool {
    let filter = TopicFilter::new(name).unwrap_or_else(|e| panic!("{name:?}: {e}"));
    filter.matches(&TopicName::new(topic).expect("a topic the broker published"))
}

/// Every `$SYS` topic a broker publishing each 100 ms sends to a `$SYS/#` subscriber over
/// two seconds (many rounds). The broker has the bridges the docs name, to a port where no one
/// listens: their state topics are published too.
async fn published_sys_topics() -> BTreeSet<String> {
    let broker = start_broker(|config| {
        config.sys_interval = Some(Duration::from_millis(100));
        for name in ["NAME", "cloud"] {
            let bridge = rallymq_broker::BridgeConfig::new(name, "127.0.0.1:1")
                .topic("# out 0")
                .expect("a valid topic line");
            config.bridges.push(bridge);
        }
    })
    .await;
    let connect = connect_packet(ProtocolVersion::V5, "sys-docs");
    let (mut client, _) = TestClient::tcp(tcp_addr(&broker), connect).await;
    client
        .subscribe(vec![subscription("$SYS/#", QoS::AtMostOnce)])
        .await;
    let mut topics = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    while let Some(remaining) = deadline.checked_duration_since(Instant::now()) {
        match client.recv_within(remaining).await {
            Some(message) => topics.insert(topic_str(&message)),
            None => break,
        };
    }
    broker.shutdown(Duration::from_millis(300)).await;
    topics
}

#[tokio::test]
async fn sys_topics_named_in_the_docs_are_the_ones_published() {
    let root = workspace();
    let mut sources = Vec::new();
    readmes(&root, &mut sources);
    sources.push(root.join("rallymq.example.toml"));
    sources.push(root.join("web/dashboard/dashboard.js"));
    let mut named: Vec<(String, String)> = Vec::new();
    for source in &sources {
        let text =
            std::fs::read_to_string(source).unwrap_or_else(|e| panic!("{}: {e}", source.display()));
        let shown = source.strip_prefix(&root).unwrap_or(source).display();
        named.extend(sys_names(&text).into_iter().map(|n| (shown.to_string(), n)));
    }
    for dir in ["crates/broker/src", "crates/cli/src"] {
        let text = doc_comments(&root.join(dir));
        named.extend(
            sys_names(&text)
                .into_iter()
                .map(|n| (format!("{dir} doc comments"), n)),
        );
    }
    let broker_readme: Vec<String> = named
        .iter()
        .filter(|(source, _)| source == "crates/broker/README.md")
        .map(|(_, name)| name.clone())
        .collect();
    assert!(
        broker_readme.len() >= 10 && named.len() > broker_readme.len(),
        "the $SYS names were not found where they are: {named:?}"
    );

    let published = published_sys_topics().await;
    assert!(
        published.contains("$SYS/broker/version") && published.len() >= 20,
        "not every $SYS topic arrived: {published:?}"
    );
    let unknown: Vec<_> = named
        .iter()
        .filter(|(_, name)| !published.iter().any(|topic| names(name, topic)))
        .collect();
    assert!(
        unknown.is_empty(),
        "the docs name $SYS topics the broker does not publish: {unknown:?}\npublished: {published:?}"
    );
    // The other way: the broker's README lists every topic (a `+` may stand for the
    // 1min/5min/15min of the loads; a `#` would list nothing).
    let unlisted: Vec<_> = published
        .iter()
        .filter(|topic| {
            !broker_readme
                .iter()
                .any(|name| !name.contains('#') && names(name, topic))
        })
        .collect();
    assert!(
        unlisted.is_empty(),
        "$SYS topics missing from crates/broker/README.md: {unlisted:?}"
    );
}

#[test]
fn sys_names_are_found_in_their_notations() {
    let text = "counted in `$SYS/broker/publish/messages/dropped`. \
                '$SYS/broker/retained messages/count': x, see $SYS/broker/uptime, \
                `$SYS/broker/...` and `$SYS` and \"$SYS/#\" and `pattern read $SYS/c/%c/state`";
    assert_eq!(
        sys_names(text),
        [
            "$SYS/broker/publish/messages/dropped",
            "$SYS/broker/retained messages/count",
            "$SYS/broker/uptime",
            "$SYS/#",
        ]
    );
}
