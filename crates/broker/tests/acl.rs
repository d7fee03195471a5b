//! Authorization through a running broker: Mosquitto's `acl_file` on PUBLISH, SUBSCRIBE, the
//! delivery of messages, retained messages and wills, and `$SYS`; rules carried by a token;
//! reload; and a listener with a policy of its own beside the broker's.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rallymq_broker::{
    BrokerHandle, HashScheme, JwtConfig, Listener, ListenerKind, PasswordFile, Security,
};
use rallymq_codec::{MqttString, ProtocolVersion, QoS, ReasonCode, TopicName, Will};
use rallymq_session::{ClientEvent, CloseReason};
use support::{
    TestClient, connect_packet, message, payload_str, start_broker, subscription, tcp_addr,
};
use tokio::net::TcpStream;

const V311: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;
const SHORT: Duration = Duration::from_millis(300);
const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

const ACL: &str = "\
# alice follows scores and news, writes scores only
user alice
topic readwrite scores/#
topic read news/#
topic read $SYS/broker/version

user bob
topic readwrite bob/#

# every client may use its own corner
pattern readwrite clients/%c/#
";

/// A directory removed when the test ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "rallymq-acl-{name}-{}",
            rallymq_test_support::run_id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn file(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn passwords(dir: &TempDir) -> PathBuf {
    let path = dir.0.join("passwords");
    let mut file = PasswordFile::default();
    for user in ["alice", "bob"] {
        file.set_password(user, b"pw", HashScheme::Sha512Pbkdf2)
            .unwrap();
    }
    file.save(&path).unwrap();
    path
}

fn security(dir: &TempDir, acl: &str) -> Security {
    let mut security = Security::default();
    security.auth.password_file = Some(passwords(dir));
    security.acl_file = Some(dir.file("acl", acl.as_bytes()));
    security
}

async fn login(
    addr: std::net::SocketAddr,
    version: ProtocolVersion,
    client_id: &str,
    user: &str,
    will: Option<Will>,
) -> TestClient<TcpStream> {
    let mut connect = connect_packet(version, client_id);
    connect.username = Some(MqttString::new(user).unwrap());
    connect.password = Some(Bytes::from_static(b"pw"));
    connect.will = will;
    let (client, event) = TestClient::tcp(addr, connect).await;
    assert!(
        matches!(event, ClientEvent::Connected { .. }),
        "{user}: {event:?}"
    );
    client
}

#[tokio::test]
async fn a_publish_not_authorized_gets_0x87_in_v5_and_is_dropped_in_v311() {
    let dir = TempDir::new("publish");
    let broker = start_broker(|config| config.security = security(&dir, ACL)).await;
    let addr = tcp_addr(&broker);
    let mut watcher = broker.subscribe("#", QoS::AtLeastOnce).unwrap();

    let mut v5 = login(addr, V5, "alice-5", "alice", None).await;
    assert_eq!(
        v5.publish(message("news/1", "x", QoS::AtLeastOnce)).await,
        ReasonCode::NotAuthorized
    );
    assert_ne!(
        v5.publish(message("scores/1", "15-0", QoS::AtLeastOnce))
            .await,
        ReasonCode::NotAuthorized
    );
    // A pattern: its own corner only.
    assert_ne!(
        v5.publish(message("clients/alice-5/x", "mine", QoS::AtLeastOnce))
            .await,
        ReasonCode::NotAuthorized
    );
    assert_eq!(
        v5.publish(message("clients/other/x", "theirs", QoS::AtLeastOnce))
            .await,
        ReasonCode::NotAuthorized
    );

    // MQTT 3.1.1 has no negative PUBACK: acknowledged, and dropped.
    let mut v311 = login(addr, V311, "alice-3", "alice", None).await;
    assert_eq!(
        v311.publish(message("news/2", "x", QoS::AtLeastOnce)).await,
        ReasonCode::Success
    );
    v311.publish(message("scores/2", "30-0", QoS::AtLeastOnce))
        .await;

    let mut seen = Vec::new();
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_millis(500), watcher.recv()).await
    {
        seen.push(message.topic.as_str().to_owned());
    }
    assert_eq!(seen, ["scores/1", "clients/alice-5/x", "scores/2"]);
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn a_subscribe_not_authorized_gets_0x87_in_v5_and_0x80_in_v311() {
    let dir = TempDir::new("subscribe");
    let broker = start_broker(|config| config.security = security(&dir, ACL)).await;
    let addr = tcp_addr(&broker);
    for (version, refused) in [
        (V5, ReasonCode::NotAuthorized),
        (V311, ReasonCode::UnspecifiedError),
    ] {
        let mut alice = login(addr, version, "alice", "alice", None).await;
        let codes = alice
            .subscribe(vec![
                subscription("secret/plans", QoS::AtLeastOnce),
                subscription("news/#", QoS::AtLeastOnce),
                subscription("#", QoS::AtMostOnce),
            ])
            .await;
        assert_eq!(
            codes,
            [refused, ReasonCode::GrantedQoS1, ReasonCode::Success],
            "{version:?}"
        );
        alice.disconnect(ReasonCode::Success).await;
    }
    broker.shutdown(SHORT).await;
}

/// A subscription wider than the client may read delivers only what it may: live messages,
/// retained ones on subscribe, wills and `$SYS` alike.
#[tokio::test]
async fn deliveries_retained_messages_wills_and_sys_are_checked_per_message() {
    let dir = TempDir::new("deliver");
    let broker = start_broker(|config| {
        config.security = security(&dir, ACL);
        config.sys_interval = Some(Duration::from_secs(1));
    })
    .await;
    let addr = tcp_addr(&broker);
    broker
        .publish("news/retained", "kept", QoS::AtLeastOnce, true)
        .unwrap();
    broker
        .publish("secret/retained", "hidden", QoS::AtLeastOnce, true)
        .unwrap();

    let mut alice = login(addr, V5, "alice", "alice", None).await;
    alice
        .subscribe(vec![
            subscription("#", QoS::AtLeastOnce),
            subscription("$SYS/#", QoS::AtMostOnce),
        ])
        .await;
    // bob may not write to news: his will is dropped (his CONNECT accepted); his own topic's is
    // not readable by alice.
    let will = |topic: &str| Some(Will::new(TopicName::new(topic).unwrap(), "gone"));
    let mut bob = login(addr, V5, "bob", "bob", will("news/bob-left")).await;
    bob.kill();
    let mut bob2 = login(addr, V5, "bob2", "bob", will("bob/left")).await;
    bob2.kill();
    // A will alice may write and read reaches her.
    let mut carol = login(addr, V5, "carol", "alice", will("scores/carol-left")).await;
    carol.kill();
    broker
        .publish("news/live", "fresh", QoS::AtLeastOnce, false)
        .unwrap();
    broker
        .publish("secret/live", "hidden", QoS::AtLeastOnce, false)
        .unwrap();

    let mut seen = Vec::new();
    while let Some(message) = alice.recv_within(Duration::from_millis(2500)).await {
        let topic = message.topic.as_ref().unwrap().as_str().to_owned();
        if !seen.contains(&topic) {
            seen.push(topic);
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            "$SYS/broker/version",
            "news/live",
            "news/retained",
            "scores/carol-left"
        ]
    );
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn without_an_acl_no_client_publishes_to_sys() {
    let broker = start_broker(|_| {}).await;
    let (mut client, _) = TestClient::tcp(tcp_addr(&broker), connect_packet(V5, "c")).await;
    assert_eq!(
        client
            .publish(message("$SYS/broker/version", "forged", QoS::AtLeastOnce))
            .await,
        ReasonCode::NotAuthorized
    );
    broker.shutdown(SHORT).await;
}

fn token(claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET).unwrap(),
    )
    .unwrap()
}

/// EMQX's `acl` claim: checked before the file, the first matching rule deciding; what the
/// token does not decide goes to the file.
#[tokio::test]
async fn rules_in_a_token_come_before_the_acl_file() {
    let dir = TempDir::new("token");
    let mut security = security(&dir, "pattern read public/#\n");
    security.auth.jwt = Some(JwtConfig::new(dir.file("jwt.key", SECRET)));
    let broker = start_broker(|config| config.security = security).await;
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let jwt = token(&serde_json::json!({
        "sub": "device-7",
        "exp": exp,
        "acl": [
            {"permission": "allow", "action": "publish", "topic": "devices/${clientid}/telemetry"},
            {"permission": "allow", "action": "subscribe", "topic": "devices/${clientid}/commands"},
            {"permission": "deny", "action": "all", "topic": "public/secret"},
        ],
    }));
    let mut connect = connect_packet(V5, "dev7");
    connect.password = Some(Bytes::from(jwt));
    let (mut device, event) = TestClient::tcp(tcp_addr(&broker), connect).await;
    assert!(matches!(event, ClientEvent::Connected { .. }), "{event:?}");
    assert_ne!(
        device
            .publish(message("devices/dev7/telemetry", "21.5", QoS::AtLeastOnce))
            .await,
        ReasonCode::NotAuthorized
    );
    assert_eq!(
        device
            .publish(message("devices/dev8/telemetry", "21.5", QoS::AtLeastOnce))
            .await,
        ReasonCode::NotAuthorized
    );
    let codes = device
        .subscribe(vec![
            subscription("devices/dev7/commands", QoS::AtLeastOnce),
            subscription("devices/dev8/commands", QoS::AtLeastOnce),
            // Not in the token: the file's pattern grants reading public/#...
            subscription("public/#", QoS::AtLeastOnce),
            // ...but the token's deny comes first.
            subscription("public/secret", QoS::AtLeastOnce),
        ])
        .await;
    assert_eq!(
        codes,
        [
            ReasonCode::GrantedQoS1,
            ReasonCode::NotAuthorized,
            ReasonCode::GrantedQoS1,
            ReasonCode::NotAuthorized
        ]
    );
    broker
        .publish("public/secret", "no", QoS::AtLeastOnce, false)
        .unwrap();
    broker
        .publish("public/news", "yes", QoS::AtLeastOnce, false)
        .unwrap();
    let received = device.recv().await.expect("public/news");
    assert_eq!(received.topic.unwrap().as_str(), "public/news");
    device.expect_silence(SHORT).await;
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn a_reload_takes_a_changed_acl_file_and_keeps_the_old_one_when_broken() {
    let dir = TempDir::new("reload");
    let security = security(&dir, ACL);
    let acl_path = security.acl_file.clone().unwrap();
    let broker = start_broker(|config| config.security = security).await;
    let addr = tcp_addr(&broker);
    let publish_news = |broker: &BrokerHandle| {
        let broker_addr = tcp_addr(broker);
        async move {
            let mut alice = login(broker_addr, V5, "alice", "alice", None).await;
            alice
                .publish(message("news/1", "x", QoS::AtLeastOnce))
                .await
        }
    };
    assert_eq!(publish_news(&broker).await, ReasonCode::NotAuthorized);

    write_acl(&acl_path, "user alice\ntopic readwrite news/#\n");
    broker.reload().unwrap();
    assert_ne!(publish_news(&broker).await, ReasonCode::NotAuthorized);

    write_acl(&acl_path, "user alice\ntopic sometimes news/#\n");
    let error = broker.reload().expect_err("a broken ACL file");
    assert!(error.to_string().contains(":2:"), "{error}");
    assert_ne!(publish_news(&broker).await, ReasonCode::NotAuthorized);
    let _ = addr;
    broker.shutdown(SHORT).await;
}

/// A reload holds for clients already connected, from their next message on: a permission
/// taken away stops deliveries and publishes at once, as Mosquitto's reload does.
#[tokio::test]
async fn a_reload_applies_to_clients_already_connected() {
    let dir = TempDir::new("reload-live");
    let security = security(&dir, ACL);
    let acl_path = security.acl_file.clone().unwrap();
    let broker = start_broker(|config| config.security = security).await;
    let addr = tcp_addr(&broker);
    let mut alice = login(addr, V5, "alice", "alice", None).await;
    alice
        .subscribe(vec![subscription("news/#", QoS::AtLeastOnce)])
        .await;
    broker
        .publish("news/1", "before", QoS::AtLeastOnce, false)
        .unwrap();
    let before = alice.recv_within(Duration::from_secs(5)).await;
    assert_eq!(before.as_ref().map(payload_str).as_deref(), Some("before"));
    assert_ne!(
        alice
            .publish(message("scores/1", "15-0", QoS::AtLeastOnce))
            .await,
        ReasonCode::NotAuthorized
    );

    // alice keeps her connection; news is no longer hers to read, scores no longer to write.
    write_acl(&acl_path, "user alice\ntopic read scores/#\n");
    broker.reload().unwrap();
    broker
        .publish("news/2", "after", QoS::AtLeastOnce, false)
        .unwrap();
    alice.expect_silence(Duration::from_millis(700)).await;
    assert_eq!(
        alice
            .publish(message("scores/2", "30-0", QoS::AtLeastOnce))
            .await,
        ReasonCode::NotAuthorized
    );
    broker.shutdown(SHORT).await;
}

fn write_acl(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// Mosquitto's `per_listener_settings`: a loopback listener open to local services beside the
/// broker's listeners, which require a password and apply the ACL.
#[tokio::test]
async fn a_listener_with_its_own_policy_beside_the_brokers() {
    let dir = TempDir::new("listener");
    let broker = start_broker(|config| {
        config.security = security(&dir, ACL);
        let mut open = Listener::new(ListenerKind::Tcp, "127.0.0.1:0".parse().unwrap());
        open.security = Some(Security::default());
        config.listeners.push(open);
    })
    .await;
    let tcp: Vec<_> = broker
        .listeners()
        .iter()
        .filter(|listener| listener.kind == ListenerKind::Tcp)
        .map(|listener| listener.addr)
        .collect();
    assert_eq!(tcp.len(), 2);
    let (secured, open) = (tcp[0], tcp[1]);

    let (_anonymous, event) = TestClient::tcp(secured, connect_packet(V5, "anon-1")).await;
    assert!(
        matches!(
            event,
            ClientEvent::Closed(CloseReason::Refused(ReasonCode::NotAuthorized))
        ),
        "{event:?}"
    );
    let (mut local, event) = TestClient::tcp(open, connect_packet(V5, "anon-2")).await;
    assert!(matches!(event, ClientEvent::Connected { .. }), "{event:?}");
    // No ACL on the open listener: anything but $SYS.
    assert_ne!(
        local
            .publish(message("news/1", "local", QoS::AtLeastOnce))
            .await,
        ReasonCode::NotAuthorized
    );
    broker.shutdown(SHORT).await;
}
