//! Bridges (issue 16) against real peers: a bridge from rallymq to Mosquitto out, in and both
//! ways, with prefixes, QoS and retained messages; the queue while Mosquitto is down; two-way
//! bridges between two rallymq brokers and between rallymq and Mosquitto (Mosquitto's own
//! bridge connecting to rallymq with `try_private`), where every copy of every message is
//! counted so that a loop shows.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rallymq_broker::{
    BridgeConfig, BridgeTransport, Broker, BrokerConfig, BrokerHandle, DiskStore, ListenerKind,
    Message, ProtocolVersion, QoS, Store, UserProperty,
};
use rallymq_client::{Client, ClientOptions, Messages, SubscribeProperties, Subscription};
use rallymq_codec::TopicFilter;
use rallymq_test_support::{Certificates, Mosquitto, free_port, run_id};
use support::store::{DataDir, TestStore};
use tokio::time::{Instant, timeout};

/// The longest any one expected thing may take.
const WAIT: Duration = Duration::from_secs(15);

/// How long a subscriber listens, after the last expected message, for copies that should not
/// come (a loop would bring them within milliseconds).
const QUIET: Duration = Duration::from_millis(1500);

async fn broker_with(bridges: Vec<BridgeConfig>) -> BrokerHandle {
    // The bridge's log lines with `RUST_LOG=info`, for a failure's story.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let config = BrokerConfig {
        ws: Vec::new(),
        sys_interval: None,
        bridges,
        ..BrokerConfig::default()
    };
    Broker::start(config).await.expect("the broker starts")
}

fn tcp_port(broker: &BrokerHandle) -> u16 {
    broker
        .local_addr(ListenerKind::Tcp)
        .expect("a TCP listener")
        .port()
}

/// A bridge to `port` on 127.0.0.1, reconnecting quickly, with `topics`.
fn bridge(name: &str, port: u16, version: ProtocolVersion, topics: &[&str]) -> BridgeConfig {
    let mut bridge = BridgeConfig::new(name, &format!("127.0.0.1:{port}"));
    bridge.protocol = version;
    bridge.client_id = format!("{name}-{}", run_id());
    bridge.restart_timeout = (Duration::from_millis(200), Duration::from_secs(1));
    for topic in topics {
        bridge = bridge.topic(topic).expect("a valid topic line");
    }
    bridge
}

/// Every message a client receives, kept, so that copies can be counted.
struct Inbox {
    client: Client,
    messages: Messages,
    seen: Vec<Message>,
}

impl Inbox {
    async fn connect(port: u16, filters: &[&str]) -> Self {
        let options = ClientOptions::new(&format!("mqtt://127.0.0.1:{port}"))
            .client_id(&format!("inbox-{}", run_id()))
            .reconnect(None);
        let (client, messages, _) = Client::connect(options).await.expect("connected");
        let subscriptions = filters
            .iter()
            .map(|filter| {
                let mut subscription =
                    Subscription::new(TopicFilter::new(*filter).unwrap(), QoS::ExactlyOnce);
                // The retain flag as published, so that it can be checked.
                subscription.options.retain_as_published = true;
                subscription
            })
            .collect();
        let codes = client
            .subscribe_many(subscriptions, SubscribeProperties::default())
            .await
            .expect("SUBACK");
        assert!(codes.iter().all(|code| !code.is_error()), "{codes:?}");
        Self {
            client,
            messages,
            seen: Vec::new(),
        }
    }

    /// The next message on `topic`, within `WAIT`.
    async fn expect(&mut self, topic: &str) -> Message {
        let deadline = Instant::now() + WAIT;
        if let Some(found) = self.seen.iter().find(|m| m.topic.as_str() == topic) {
            return found.clone();
        }
        loop {
            let message = tokio::time::timeout_at(deadline, self.messages.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no message on {topic} within {WAIT:?}; saw {:?}",
                        self.topics()
                    )
                })
                .expect("the client is connected");
            self.seen.push(message.clone());
            if message.topic.as_str() == topic {
                return message;
            }
        }
    }

    /// Keeps reading until nothing came for `QUIET`.
    async fn settle(&mut self) {
        while let Ok(Some(message)) = timeout(QUIET, self.messages.recv()).await {
            self.seen.push(message);
        }
    }

    fn count(&self, topic: &str) -> usize {
        self.seen
            .iter()
            .filter(|m| m.topic.as_str() == topic)
            .count()
    }

    fn topics(&self) -> Vec<String> {
        self.seen.iter().map(|m| m.topic.to_string()).collect()
    }
}

/// Waits until `$SYS/broker/connection/NAME/state` on the broker at `port` says `state`.
async fn wait_for_state(port: u16, name: &str, state: &str) {
    let topic = format!("$SYS/broker/connection/{name}/state");
    let deadline = Instant::now() + WAIT;
    loop {
        let mut inbox = Inbox::connect(port, &[&topic]).await;
        // The retained state comes at once; a change comes as it happens.
        while let Ok(Some(message)) =
            timeout(Duration::from_millis(300), inbox.messages.recv()).await
        {
            if message.payload == state.as_bytes() {
                let _ = inbox.client.disconnect().await;
                return;
            }
        }
        let _ = inbox.client.disconnect().await;
        assert!(
            Instant::now() < deadline,
            "{topic} did not become {state} within {WAIT:?}"
        );
    }
}

/// Publishes `probe` from `client` every 200 ms until `inbox` receives it as `arrives_as`: the
/// far side's subscription is in place (the bridge subscribes once connected, in the
/// background).
async fn until_subscribed(client: &Client, probe: &str, inbox: &mut Inbox, arrives_as: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        client
            .publish(probe, "probe", QoS::AtLeastOnce, false)
            .await
            .expect("probe published");
        if let Ok(Some(message)) = timeout(Duration::from_millis(200), inbox.messages.recv()).await
        {
            let arrived = message.topic.as_str() == arrives_as;
            inbox.seen.push(message);
            if arrived {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{probe} never arrived as {arrives_as}"
        );
    }
}

async fn publisher(port: u16) -> Client {
    let options = ClientOptions::new(&format!("mqtt://127.0.0.1:{port}"))
        .client_id(&format!("publisher-{}", run_id()))
        .reconnect(None);
    Client::connect(options).await.expect("connected").0
}

/// Out, in and both, with prefixes, QoS capped by the topic line, and retained messages, over a
/// bridge to Mosquitto.
async fn bridge_to_mosquitto_carries_each_direction(version: ProtocolVersion) {
    let mosquitto = Mosquitto::start();
    let broker = broker_with(vec![bridge(
        "cloud",
        mosquitto.tcp,
        version,
        &[
            "out/# out 2 local/ remote/",
            "capped/# out 1",
            "zero/# out 0",
            "in/# in 2 here/ there/",
            "both/# both 1",
        ],
    )])
    .await;
    let port = tcp_port(&broker);
    wait_for_state(port, "cloud", "1").await;
    let mut remote = Inbox::connect(
        mosquitto.tcp,
        &["remote/#", "capped/#", "zero/#", "both/#", "there/#"],
    )
    .await;
    let mut local = Inbox::connect(port, &["here/#", "both/#"]).await;
    let local_publisher = publisher(port).await;
    let remote_publisher = publisher(mosquitto.tcp).await;

    // Out, with the prefixes swapped, at the publisher's QoS up to the line's.
    local_publisher
        .publish("local/out/a", "a", QoS::ExactlyOnce, false)
        .await
        .unwrap();
    let a = remote.expect("remote/out/a").await;
    assert_eq!(
        (a.qos, a.retain, &a.payload[..]),
        (QoS::ExactlyOnce, false, &b"a"[..])
    );
    local_publisher
        .publish("capped/x", "x", QoS::ExactlyOnce, false)
        .await
        .unwrap();
    assert_eq!(remote.expect("capped/x").await.qos, QoS::AtLeastOnce);
    local_publisher
        .publish("zero/x", "x", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    assert_eq!(remote.expect("zero/x").await.qos, QoS::AtMostOnce);

    // Retained: kept retained over the bridge, and stored as such by Mosquitto.
    local_publisher
        .publish("local/out/r", "kept", QoS::AtLeastOnce, true)
        .await
        .unwrap();
    assert!(remote.expect("remote/out/r").await.retain);
    let mut late = Inbox::connect(mosquitto.tcp, &["remote/out/r"]).await;
    let stored = late.expect("remote/out/r").await;
    assert_eq!((&stored.payload[..], stored.retain), (&b"kept"[..], true));

    // MQTT 5 properties go across (an MQTT 3.1.1 bridge has none to carry).
    let mut with_properties =
        Message::new(rallymq_broker::TopicName::new("local/out/p").unwrap(), "p");
    with_properties.qos = QoS::AtLeastOnce;
    with_properties.properties.user_properties = vec![UserProperty::new("site", "edge-1").unwrap()];
    with_properties.properties.content_type = Some("text/plain".try_into().unwrap());
    local_publisher
        .publish_message(with_properties)
        .await
        .unwrap();
    let p = remote.expect("remote/out/p").await;
    if version.is_v5() {
        assert_eq!(p.properties.user_properties.len(), 1);
        assert_eq!(p.properties.user_properties[0].name.as_str(), "site");
        assert_eq!(p.properties.user_properties[0].value.as_str(), "edge-1");
        assert_eq!(
            p.properties.content_type.as_ref().map(|c| c.as_str()),
            Some("text/plain")
        );
    }

    // In: the remote prefix swapped for the local one, retained kept.
    until_subscribed(
        &remote_publisher,
        "there/in/probe",
        &mut local,
        "here/in/probe",
    )
    .await;
    remote_publisher
        .publish("there/in/b", "b", QoS::ExactlyOnce, true)
        .await
        .unwrap();
    let b = local.expect("here/in/b").await;
    assert_eq!(
        (b.qos, b.retain, &b.payload[..]),
        (QoS::ExactlyOnce, true, &b"b"[..])
    );
    let mut late = Inbox::connect(port, &["here/in/b"]).await;
    assert!(
        late.expect("here/in/b").await.retain,
        "stored retained here"
    );

    local_publisher
        .publish("here/in/c", "c", QoS::AtLeastOnce, false)
        .await
        .unwrap();

    // Both: each way once, and never back.
    local_publisher
        .publish("both/from-local", "l", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    remote_publisher
        .publish("both/from-remote", "r", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    remote.expect("both/from-local").await;
    local.expect("both/from-remote").await;
    remote.settle().await;
    local.settle().await;
    for (inbox, side) in [(&remote, "Mosquitto"), (&local, "rallymq")] {
        for topic in ["both/from-local", "both/from-remote"] {
            assert_eq!(
                inbox.count(topic),
                1,
                "copies of {topic} on {side}: {:?}",
                inbox.topics()
            );
        }
    }
    // An `in` topic does not go out.
    assert_eq!(remote.count("there/in/c"), 0, "{:?}", remote.topics());
    broker.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_mqttv311_to_mosquitto_carries_out_in_both_with_prefixes_qos_and_retain() {
    bridge_to_mosquitto_carries_each_direction(ProtocolVersion::V3_1_1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_mqttv50_to_mosquitto_carries_out_in_both_with_prefixes_qos_retain_and_properties() {
    bridge_to_mosquitto_carries_each_direction(ProtocolVersion::V5).await;
}

/// Mosquitto stopped and started again while QoS 1 messages flow out: every message our broker
/// acknowledged to the local publisher reaches Mosquitto's subscriber, in the order published
/// (a resent one may come twice: QoS 1 is at least once). The bridge's `$SYS` state goes to 0
/// and back to 1. Mosquitto keeps its subscriber's session across the restart in its
/// persistence file, saved as it stops (SIGTERM): a SIGKILL would lose what Mosquitto had
/// acknowledged and not saved yet, which no bridge can make up for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_queues_qos1_while_mosquitto_restarts_and_delivers_every_acknowledged_message_in_order()
 {
    let store = std::env::temp_dir().join(format!("rallymq-bridge-{}", run_id()));
    std::fs::create_dir_all(&store).unwrap();
    // Mosquitto started as root runs as the user `mosquitto`: in a directory only root may
    // write to, it saves nothing as it stops ("Error saving in-memory database ... Permission
    // denied"), comes back without the sink's session, and what the bridge delivers before
    // the sink has subscribed again is lost there (the test failed so when the bridge
    // reconnected first).
    std::fs::set_permissions(&store, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let mut mosquitto = Mosquitto::start_with(&format!(
        "allow_anonymous true\npersistence true\npersistence_location {}/\n",
        store.display()
    ));
    let mut bridge = bridge(
        "cloud",
        mosquitto.tcp,
        ProtocolVersion::V3_1_1,
        &["seq/# out 1"],
    );
    bridge.max_queued_messages = 10_000;
    let broker = broker_with(vec![bridge]).await;
    let port = tcp_port(&broker);
    wait_for_state(port, "cloud", "1").await;

    // A persistent subscriber on Mosquitto, which reconnects by itself after the restart.
    let subscriber_id = format!("sink-{}", run_id());
    let options = ClientOptions::new(&format!("mqtt://127.0.0.1:{}", mosquitto.tcp))
        .client_id(&subscriber_id)
        .version(ProtocolVersion::V3_1_1)
        .clean_start(false)
        .reconnect(Some(rallymq_client::Backoff {
            min: Duration::from_millis(50),
            max: Duration::from_millis(200),
        }));
    let (sink, mut received, _) = Client::connect(options).await.expect("connected");
    sink.subscribe("seq/#", QoS::AtLeastOnce).await.unwrap();
    // Whether Mosquitto resumed the sink's session after the restart: if it had not, what the
    // bridge delivered before the sink subscribed again would be lost there, not here.
    let mut sink_events = sink.connection_events();
    let resumed = tokio::spawn(async move {
        let mut resumed = Vec::new();
        while let Some(event) = sink_events.recv().await {
            if let rallymq_client::ConnectionEvent::Connected {
                session_present, ..
            } = event
            {
                resumed.push(session_present);
                if resumed.len() == 1 {
                    return resumed;
                }
            }
        }
        resumed
    });
    let local = publisher(port).await;

    const TOTAL: u32 = 600;
    let collector = tokio::spawn(async move {
        let mut payloads = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut distinct = std::collections::HashSet::new();
        while distinct.len() < TOTAL as usize {
            match tokio::time::timeout_at(deadline, received.recv()).await {
                Ok(Some(message)) => {
                    let n: u32 = std::str::from_utf8(&message.payload)
                        .unwrap()
                        .parse()
                        .unwrap();
                    distinct.insert(n);
                    payloads.push(n);
                }
                _ => break,
            }
        }
        payloads
    });
    for n in 0..TOTAL {
        if n == TOTAL / 3 {
            mosquitto.stop();
            wait_for_state(port, "cloud", "0").await;
        }
        if n == 2 * TOTAL / 3 {
            mosquitto.restart();
        }
        // Acknowledged by our broker, whether Mosquitto is there or not.
        local
            .publish("seq/n", n.to_string(), QoS::AtLeastOnce, false)
            .await
            .expect("acknowledged locally");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    wait_for_state(port, "cloud", "1").await;
    let payloads = timeout(Duration::from_secs(90), collector)
        .await
        .expect("the collector ends")
        .unwrap();
    let mut firsts = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for n in &payloads {
        if seen.insert(*n) {
            firsts.push(*n);
        }
    }
    let missing: Vec<u32> = (0..TOTAL).filter(|n| !seen.contains(n)).collect();
    let resumed = timeout(Duration::from_secs(1), resumed).await;
    assert!(
        matches!(&resumed, Ok(Ok(resumed)) if resumed == &[true]),
        "Mosquitto did not keep the sink's session across its restart: {resumed:?}"
    );
    assert!(
        missing.is_empty(),
        "never arrived: {missing:?}; the sink's reconnection resumed its session: {resumed:?}"
    );
    assert!(
        firsts.windows(2).all(|pair| pair[0] < pair[1]),
        "out of order: {firsts:?}"
    );
    eprintln!(
        "{TOTAL} messages, {} copies received ({} resent twice)",
        payloads.len(),
        payloads.len() - TOTAL as usize
    );
    broker.shutdown(Duration::from_secs(1)).await;
    drop(mosquitto);
    let _ = std::fs::remove_dir_all(&store);
}

/// A message published here on `out/...` reaches a subscriber of the remote broker (on
/// `remote_port`, plain TCP), and one published there on `in/...` reaches a subscriber here,
/// across the bridge `name` (topics `out/# out 1`, `in/# in 1`).
async fn carries_out_and_in(local_port: u16, remote_port: u16, name: &str) {
    wait_for_state(local_port, name, "1").await;
    let mut remote_inbox = Inbox::connect(remote_port, &["out/#"]).await;
    let mut local_inbox = Inbox::connect(local_port, &["in/#"]).await;
    let local = publisher(local_port).await;
    let remote = publisher(remote_port).await;
    until_subscribed(&local, "out/probe", &mut remote_inbox, "out/probe").await;
    until_subscribed(&remote, "in/probe", &mut local_inbox, "in/probe").await;
    local
        .publish("out/x", "from here", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    assert_eq!(remote_inbox.expect("out/x").await.payload, "from here");
    remote
        .publish("in/x", "from there", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    assert_eq!(local_inbox.expect("in/x").await.payload, "from there");
}

/// A bridge over TLS (`mqtts`) to a Mosquitto TLS listener that requires a client
/// certificate: the bridge trusts the test's CA (`bridge_cafile`) and presents its own
/// certificate (`bridge_certfile`, `bridge_keyfile`); messages cross both ways. Without the
/// client certificate Mosquitto refuses the bridge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_over_tls_to_mosquitto_with_a_client_certificate_carries_out_and_in() {
    let certificates = Certificates::new("bridge");
    let ca = certificates.ca_file("ca.pem");
    let (server_cert, server_key) = certificates.leaf("mosquitto");
    let (client_cert, client_key) = certificates.leaf("bridge");
    let tls_port = free_port();
    let mosquitto = Mosquitto::start_with(&format!(
        "allow_anonymous true\nlistener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\n\
         keyfile {}\nrequire_certificate true\n",
        ca.display(),
        server_cert.display(),
        server_key.display()
    ));
    let mut secure = bridge(
        "secure",
        tls_port,
        ProtocolVersion::V3_1_1,
        &["out/# out 1", "in/# in 1"],
    );
    secure.addresses = vec![format!("localhost:{tls_port}")];
    secure.transport = BridgeTransport::Tls;
    secure.ca_file = Some(ca.clone());
    let mut anonymous = secure.clone();
    secure.certificate = Some((client_cert, client_key));
    anonymous.name = "anonymous".to_owned();
    anonymous.client_id = format!("anonymous-{}", run_id());
    let broker = broker_with(vec![secure, anonymous]).await;
    let port = tcp_port(&broker);
    carries_out_and_in(port, mosquitto.tcp, "secure").await;
    // Mosquitto asks for a certificate the anonymous bridge does not have: after trying for a
    // while (every 200 ms to 1 s) it is still not connected.
    tokio::time::sleep(QUIET).await;
    wait_for_state(port, "anonymous", "0").await;
    broker.shutdown(Duration::from_secs(1)).await;
}

/// A bridge over WebSockets (`ws`) to another rallymq broker's WebSocket listener, MQTT 5:
/// messages cross both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_over_websockets_to_another_rallymq_broker_carries_out_and_in() {
    let config = BrokerConfig {
        sys_interval: None,
        ..BrokerConfig::default()
    };
    let cloud = Broker::start(config).await.expect("the broker starts");
    let ws = cloud
        .local_addr(ListenerKind::WebSocket)
        .expect("a WebSocket listener");
    let mut over_ws = bridge(
        "web",
        ws.port(),
        ProtocolVersion::V5,
        &["out/# out 1", "in/# in 1"],
    );
    over_ws.transport = BridgeTransport::WebSocket;
    let edge = broker_with(vec![over_ws]).await;
    carries_out_and_in(tcp_port(&edge), tcp_port(&cloud), "web").await;
    edge.shutdown(Duration::from_secs(1)).await;
    cloud.shutdown(Duration::from_secs(1)).await;
}

/// How this broker stops before it starts again on its directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// `BrokerHandle::shutdown`.
    Shutdown,
    /// The store closed under the running broker (nothing written afterwards reaches the
    /// disk), then the broker dropped: as when the process is killed.
    Crash,
}

/// A broker with `bridges` on the disk store in `dir`.
async fn durable_broker(dir: &Path, bridges: Vec<BridgeConfig>) -> (BrokerHandle, Arc<TestStore>) {
    let store = Arc::new(TestStore::open(dir).expect("the store opens"));
    let config = BrokerConfig {
        ws: Vec::new(),
        sys_interval: None,
        bridges,
        ..BrokerConfig::default()
    };
    let broker = Broker::start_with_store(config, store.clone())
        .await
        .expect("the broker starts");
    (broker, store)
}

/// Issue 16: with a store, the bridge's queue is durable. QoS 1 messages published here (and
/// acknowledged) while Mosquitto is down survive a restart of this broker, a clean one or a
/// crash, and reach Mosquitto's subscriber in order once both are back; each entry leaves the
/// store once Mosquitto acknowledged it, so nothing is left to send again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_queue_in_the_store_survives_a_restart_and_a_crash_of_this_broker() {
    for stop in [Stop::Shutdown, Stop::Crash] {
        bridge_queue_across(stop).await;
    }
}

async fn bridge_queue_across(stop: Stop) {
    const TOTAL: u32 = 300;
    let dir = DataDir::new();
    let mut mosquitto = Mosquitto::start();
    let mut config = bridge(
        "cloud",
        mosquitto.tcp,
        ProtocolVersion::V3_1_1,
        &["seq/# out 1"],
    );
    config.max_queued_messages = 10_000;
    let (broker, store) = durable_broker(&dir.0, vec![config.clone()]).await;
    let port = tcp_port(&broker);
    wait_for_state(port, "cloud", "1").await;
    mosquitto.stop();
    wait_for_state(port, "cloud", "0").await;
    let local = publisher(port).await;
    for n in 0..TOTAL {
        local
            .publish("seq/n", n.to_string(), QoS::AtLeastOnce, false)
            .await
            .expect("acknowledged locally");
    }
    match stop {
        Stop::Shutdown => {
            let _ = local.disconnect().await;
            broker.shutdown(Duration::from_secs(1)).await;
            store.close();
        }
        Stop::Crash => {
            store.close();
            drop(broker);
            drop(local);
        }
    }
    // Mosquitto back, with its subscriber, before this broker: every message the bridge
    // sends finds it.
    mosquitto.restart();
    let mut sink = Inbox::connect(mosquitto.tcp, &["seq/#"]).await;
    let (broker, store) = durable_broker(&dir.0, vec![config]).await;
    let deadline = Instant::now() + WAIT;
    let mut payloads = Vec::new();
    while payloads.len() < TOTAL as usize {
        let message = tokio::time::timeout_at(deadline, sink.messages.recv())
            .await
            .ok()
            .flatten();
        let Some(message) = message else {
            panic!(
                "{stop:?}: {} of {TOTAL} messages arrived within {WAIT:?}: {payloads:?}",
                payloads.len()
            );
        };
        let n: u32 = std::str::from_utf8(&message.payload)
            .unwrap()
            .parse()
            .unwrap();
        payloads.push(n);
    }
    assert_eq!(
        payloads,
        (0..TOTAL).collect::<Vec<_>>(),
        "{stop:?}: every message once, in order"
    );
    // Acknowledged by Mosquitto, so gone from the store (the deletions are written as the
    // acknowledgements come: wait for them).
    let deadline = Instant::now() + WAIT;
    loop {
        let left = bridge_queue_len(&store);
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{stop:?}: {left} entries left in the bridge's stored queue"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    broker.shutdown(Duration::from_secs(1)).await;
    store.close();
    let stored = DiskStore::open(&dir.0)
        .expect("the store opens")
        .load()
        .expect("the store loads");
    assert!(
        stored.sessions.iter().all(|session| session.queue_len == 0),
        "{stop:?}: entries left after the shutdown: {:?}",
        stored.sessions
    );
}

/// A bridge taken out of the configuration leaves nothing behind: what it had queued in the
/// store (for a remote broker that never came) is deleted at the next start, not kept forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stored_queue_of_a_bridge_no_longer_configured_is_deleted_at_start() {
    let dir = DataDir::new();
    // Nothing listens there: the bridge never connects, and its queue stays.
    let config = bridge(
        "gone",
        free_port(),
        ProtocolVersion::V3_1_1,
        &["seq/# out 1"],
    );
    let (broker, store) = durable_broker(&dir.0, vec![config]).await;
    let local = publisher(tcp_port(&broker)).await;
    for n in 0..10 {
        local
            .publish("seq/n", n.to_string(), QoS::AtLeastOnce, false)
            .await
            .expect("acknowledged locally");
    }
    let _ = local.disconnect().await;
    broker.shutdown(Duration::from_secs(1)).await;
    store.close();
    let queued = |dir: &Path| {
        DiskStore::open(dir)
            .expect("the store opens")
            .load()
            .expect("the store loads")
            .sessions
            .into_iter()
            .map(|session| (session.record.client_id, session.queue_len))
            .collect::<Vec<_>>()
    };
    assert_eq!(queued(&dir.0), vec![("\0bridge-gone".to_owned(), 10)]);
    let (broker, store) = durable_broker(&dir.0, Vec::new()).await;
    broker.shutdown(Duration::from_secs(1)).await;
    store.close();
    assert_eq!(queued(&dir.0), Vec::new());
}

/// The entries of the bridge's session committed to a running broker's store.
fn bridge_queue_len(store: &TestStore) -> usize {
    store
        .read_queue("\0bridge-cloud", 0, 100_000)
        .map_or(usize::MAX, |entries| entries.len())
}

/// Two rallymq brokers, one bridging to the other both ways on `#`: a message published on
/// either reaches the subscribers of both once, and never comes back.
async fn two_rallymq_brokers_bridged_both_ways_make_no_loop(version: ProtocolVersion) {
    let cloud = broker_with(Vec::new()).await;
    let cloud_port = tcp_port(&cloud);
    let edge = broker_with(vec![bridge("cloud", cloud_port, version, &["# both 1"])]).await;
    let edge_port = tcp_port(&edge);
    wait_for_state(edge_port, "cloud", "1").await;
    let mut on_edge = Inbox::connect(edge_port, &["#"]).await;
    let mut on_cloud = Inbox::connect(cloud_port, &["#"]).await;
    let edge_publisher = publisher(edge_port).await;
    let cloud_publisher = publisher(cloud_port).await;
    until_subscribed(&cloud_publisher, "probe", &mut on_edge, "probe").await;
    for (publisher, topic) in [
        (&edge_publisher, "from/edge"),
        (&cloud_publisher, "from/cloud"),
    ] {
        publisher
            .publish(topic, "x", QoS::AtLeastOnce, false)
            .await
            .unwrap();
    }
    edge_publisher
        .publish("retained/edge", "kept", QoS::AtLeastOnce, true)
        .await
        .unwrap();
    for inbox in [&mut on_edge, &mut on_cloud] {
        inbox.expect("from/edge").await;
        inbox.expect("from/cloud").await;
        assert!(inbox.expect("retained/edge").await.retain);
        inbox.settle().await;
    }
    for (inbox, side) in [(&on_edge, "edge"), (&on_cloud, "cloud")] {
        for topic in ["from/edge", "from/cloud", "retained/edge"] {
            assert_eq!(
                inbox.count(topic),
                1,
                "copies of {topic} on {side}: {:?}",
                inbox.topics()
            );
        }
    }
    edge.shutdown(Duration::from_secs(1)).await;
    cloud.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rallymq_brokers_bridged_both_ways_over_mqttv311_with_try_private_make_no_loop() {
    two_rallymq_brokers_bridged_both_ways_make_no_loop(ProtocolVersion::V3_1_1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rallymq_brokers_bridged_both_ways_over_mqttv50_with_no_local_make_no_loop() {
    two_rallymq_brokers_bridged_both_ways_make_no_loop(ProtocolVersion::V5).await;
}

/// Mosquitto's own bridge connecting to rallymq both ways with `try_private` (the bridge bit):
/// rallymq sends it none of its own messages back, so each message reaches each side's
/// subscribers once; and keeps the retain flag of what it bridges, so a retained message
/// published on Mosquitto is retained here too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_bridging_to_rallymq_with_try_private_gets_no_message_back_and_keeps_retain() {
    let broker = broker_with(Vec::new()).await;
    let port = tcp_port(&broker);
    let bridge_id = format!("mosquitto-edge-{}", run_id());
    let mosquitto = Mosquitto::start_with(&format!(
        "allow_anonymous true\n\
         connection to-rallymq\n\
         address 127.0.0.1:{port}\n\
         remote_clientid {bridge_id}\n\
         bridge_protocol_version mqttv311\n\
         try_private true\n\
         cleansession true\n\
         restart_timeout 1\n\
         topic # both 1\n"
    ));
    let deadline = Instant::now() + WAIT;
    while !broker.has_session(&bridge_id) {
        assert!(
            Instant::now() < deadline,
            "Mosquitto's bridge never connected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut on_rallymq = Inbox::connect(port, &["#"]).await;
    let mut on_mosquitto = Inbox::connect(mosquitto.tcp, &["#"]).await;
    let rallymq_publisher = publisher(port).await;
    let mosquitto_publisher = publisher(mosquitto.tcp).await;
    // Both of Mosquitto's bridge subscriptions (here, and its own local one) are in place.
    until_subscribed(
        &rallymq_publisher,
        "probe/in",
        &mut on_mosquitto,
        "probe/in",
    )
    .await;
    until_subscribed(
        &mosquitto_publisher,
        "probe/out",
        &mut on_rallymq,
        "probe/out",
    )
    .await;
    mosquitto_publisher
        .publish("from/mosquitto", "m", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    rallymq_publisher
        .publish("from/rallymq", "r", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    mosquitto_publisher
        .publish("retained/mosquitto", "kept", QoS::AtLeastOnce, true)
        .await
        .unwrap();
    for inbox in [&mut on_rallymq, &mut on_mosquitto] {
        inbox.expect("from/mosquitto").await;
        inbox.expect("from/rallymq").await;
        inbox.expect("retained/mosquitto").await;
        inbox.settle().await;
    }
    for (inbox, side) in [(&on_rallymq, "rallymq"), (&on_mosquitto, "Mosquitto")] {
        for topic in ["from/mosquitto", "from/rallymq", "retained/mosquitto"] {
            assert_eq!(
                inbox.count(topic),
                1,
                "copies of {topic} on {side}: {:?}",
                inbox.topics()
            );
        }
    }
    // Bridged with its retain flag: stored retained here.
    let mut late = Inbox::connect(port, &["retained/mosquitto"]).await;
    let stored = late.expect("retained/mosquitto").await;
    assert_eq!((&stored.payload[..], stored.retain), (&b"kept"[..], true));
    broker.shutdown(Duration::from_secs(1)).await;
}
