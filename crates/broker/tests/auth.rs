//! Authentication at CONNECT through a running broker: password files, JSON Web Tokens,
//! anonymous clients, reload, and a token's expiry closing its connection; with our engine and
//! with Mosquitto's command-line clients.

mod support;

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use rallymq_broker::{AuthConfig, BrokerHandle};
use rallymq_codec::{MqttString, ProtocolVersion, QoS, ReasonCode};
use rallymq_session::{ClientEvent, CloseReason};
use support::credentials::{
    TempDir, hs256_token, jwt_auth, passwords_only, unix_now, write_passwords,
};
use support::{TestClient, connect_packet, start_broker, subscription, tcp_addr};

const V311: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;
const SHORT: Duration = Duration::from_millis(300);

async fn broker_with(auth: AuthConfig) -> BrokerHandle {
    start_broker(|config| config.security.auth = auth).await
}

/// The CONNACK (or close) a CONNECT with these credentials gets.
async fn login(
    broker: &BrokerHandle,
    version: ProtocolVersion,
    client_id: &str,
    user: Option<&str>,
    password: Option<&str>,
) -> (TestClient<tokio::net::TcpStream>, ClientEvent) {
    let mut connect = connect_packet(version, client_id);
    connect.username = user.map(|u| MqttString::new(u).unwrap());
    connect.password = password.map(|p| Bytes::copy_from_slice(p.as_bytes()));
    TestClient::tcp(tcp_addr(broker), connect).await
}

fn refused_with(event: &ClientEvent) -> Option<ReasonCode> {
    match event {
        ClientEvent::Closed(CloseReason::Refused(code)) => Some(*code),
        _ => None,
    }
}

#[tokio::test]
async fn mqtt_3_1_4_2_a_password_file_lets_in_the_right_password_only() {
    let dir = TempDir::new("passwords");
    let file = dir.path("passwords");
    write_passwords(&file, &[("alice", "wonderland")]);
    let broker = broker_with(passwords_only(&file)).await;

    let (_alice, event) = login(&broker, V5, "a", Some("alice"), Some("wonderland")).await;
    assert!(
        matches!(event, ClientEvent::Connected { .. }),
        "right password: {event:?}"
    );
    for (version, user, password, code) in [
        (
            V5,
            Some("alice"),
            Some("looking-glass"),
            ReasonCode::BadUserNameOrPassword,
        ),
        (
            V5,
            Some("mallory"),
            Some("wonderland"),
            ReasonCode::BadUserNameOrPassword,
        ),
        (V5, None, None, ReasonCode::NotAuthorized),
        // 3.1.1 return code 4 (bad user name or password) and 5 (not authorised).
        (
            V311,
            Some("alice"),
            Some("looking-glass"),
            ReasonCode::BadUserNameOrPassword,
        ),
        (V311, None, None, ReasonCode::NotAuthorized),
    ] {
        let (_client, event) = login(&broker, version, "b", user, password).await;
        assert_eq!(
            refused_with(&event),
            Some(code),
            "{version:?} user {user:?}: {event:?}"
        );
    }
    broker.shutdown(SHORT).await;
}

/// A CONNECT that fails authentication takes nothing over: the client already connected under
/// that client id keeps its connection (as Mosquitto and EMQX check credentials first).
#[tokio::test]
async fn mqtt_3_1_4_2_a_refused_connect_does_not_take_over_the_session_of_its_client_id() {
    let dir = TempDir::new("takeover");
    let file = dir.path("passwords");
    write_passwords(&file, &[("alice", "wonderland")]);
    let broker = broker_with(passwords_only(&file)).await;
    let (mut alice, event) =
        login(&broker, V5, "shared-id", Some("alice"), Some("wonderland")).await;
    assert!(matches!(event, ClientEvent::Connected { .. }));
    alice
        .subscribe(vec![subscription("scores/#", QoS::AtLeastOnce)])
        .await;

    let (_intruder, event) = login(&broker, V5, "shared-id", Some("alice"), Some("guess")).await;
    assert_eq!(
        refused_with(&event),
        Some(ReasonCode::BadUserNameOrPassword)
    );

    broker
        .publish("scores/1", "15-0", QoS::AtLeastOnce, false)
        .unwrap();
    let received = alice
        .recv()
        .await
        .expect("still connected, still subscribed");
    assert_eq!(&received.payload[..], b"15-0");
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn a_reload_takes_a_changed_password_file() {
    let dir = TempDir::new("reload");
    let file = dir.path("passwords");
    write_passwords(&file, &[("alice", "first")]);
    let broker = broker_with(passwords_only(&file)).await;
    let (_client, event) = login(&broker, V5, "r1", Some("alice"), Some("first")).await;
    assert!(matches!(event, ClientEvent::Connected { .. }));

    write_passwords(&file, &[("alice", "second")]);
    // Until the reload, the file as loaded at the start is in force.
    let (_client, event) = login(&broker, V5, "r2", Some("alice"), Some("second")).await;
    assert_eq!(
        refused_with(&event),
        Some(ReasonCode::BadUserNameOrPassword)
    );
    broker.reload().unwrap();
    let (_client, event) = login(&broker, V5, "r3", Some("alice"), Some("second")).await;
    assert!(matches!(event, ClientEvent::Connected { .. }), "{event:?}");
    let (_client, event) = login(&broker, V5, "r4", Some("alice"), Some("first")).await;
    assert_eq!(
        refused_with(&event),
        Some(ReasonCode::BadUserNameOrPassword)
    );

    // A broken file is refused whole: the one loaded before stays in force.
    std::fs::write(&file, "alice:not-a-hash\n").unwrap();
    assert!(broker.reload().is_err());
    let (_client, event) = login(&broker, V5, "r5", Some("alice"), Some("second")).await;
    assert!(matches!(event, ClientEvent::Connected { .. }), "{event:?}");
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn a_broken_password_file_fails_the_start() {
    let dir = TempDir::new("broken");
    let file = dir.path("passwords");
    std::fs::write(&file, "alice\n").unwrap();
    let mut config = rallymq_broker::BrokerConfig::default();
    config.security.auth = passwords_only(&file);
    let error = rallymq_broker::Broker::start(config)
        .await
        .expect_err("a broken password file");
    assert!(error.to_string().contains("passwords"), "{error}");
}

#[tokio::test]
async fn a_token_logs_in_and_its_connection_ends_when_it_expires() {
    let dir = TempDir::new("jwt");
    let broker = broker_with(jwt_auth(&dir)).await;
    let token = hs256_token(&serde_json::json!({ "sub": "bob", "exp": unix_now() + 2 }));

    let (mut v5, event) = login(&broker, V5, "jwt-5", None, Some(&token)).await;
    assert!(matches!(event, ClientEvent::Connected { .. }), "{event:?}");
    let (mut v311, event) = login(&broker, V311, "jwt-3", Some(""), Some(&token)).await;
    assert!(matches!(event, ClientEvent::Connected { .. }), "{event:?}");

    // MQTT 5 is told why (0xA0 Maximum connect time); MQTT 3.1.1 can only be closed.
    let closed = v5.closed().await.expect("closed when the token expires");
    assert!(
        matches!(
            closed,
            CloseReason::PeerDisconnected {
                reason_code: ReasonCode::MaximumConnectTime,
                ..
            }
        ),
        "{closed:?}"
    );
    assert_eq!(v311.closed().await, Some(CloseReason::TransportClosed));

    let (_client, event) = login(&broker, V5, "jwt-late", None, Some(&token)).await;
    assert_eq!(
        refused_with(&event),
        Some(ReasonCode::BadUserNameOrPassword),
        "an expired token"
    );
    let forged = hs256_token(&serde_json::json!({ "sub": "bob", "exp": unix_now() + 600 }))
        .replace('.', ".x");
    let (_client, event) = login(&broker, V5, "jwt-forged", None, Some(&forged)).await;
    assert_eq!(
        refused_with(&event),
        Some(ReasonCode::BadUserNameOrPassword)
    );
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn a_token_naming_another_user_than_the_connect_is_refused() {
    let dir = TempDir::new("jwt-user");
    let broker = broker_with(jwt_auth(&dir)).await;
    let token = hs256_token(&serde_json::json!({ "sub": "bob", "exp": unix_now() + 600 }));
    let (_client, event) = login(&broker, V5, "u1", Some("bob"), Some(&token)).await;
    assert!(matches!(event, ClientEvent::Connected { .. }), "{event:?}");
    let (_client, event) = login(&broker, V5, "u2", Some("alice"), Some(&token)).await;
    assert_eq!(
        refused_with(&event),
        Some(ReasonCode::BadUserNameOrPassword)
    );
    broker.shutdown(SHORT).await;
}

/// Runs a Mosquitto command-line client, bounded; returns its exit status and stderr.
fn mosquitto_client(program: &str, args: &[&str]) -> (bool, String) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("{program} must be installed (apt-get install mosquitto-clients): {e}")
        });
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn mosquitto_pub_logs_in_with_a_password_and_is_refused_without() {
    let dir = TempDir::new("mosquitto");
    let file = dir.path("passwords");
    write_passwords(&file, &[("alice", "wonderland")]);
    let broker = broker_with(passwords_only(&file)).await;
    let (mut watcher, _) = login(&broker, V5, "watch", Some("alice"), Some("wonderland")).await;
    watcher
        .subscribe(vec![subscription("auth/+", QoS::AtMostOnce)])
        .await;
    let port = tcp_addr(&broker).port().to_string();

    for version in ["mqttv311", "mqttv5"] {
        let base = ["-h", "127.0.0.1", "-p", &port, "-V", version, "-t"];
        let (ok, stderr) = tokio::task::spawn_blocking({
            let args: Vec<String> = base
                .iter()
                .map(|s| s.to_string())
                .chain(
                    ["auth/ok", "-m", version, "-u", "alice", "-P", "wonderland"].map(String::from),
                )
                .collect();
            move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                mosquitto_client("mosquitto_pub", &args)
            }
        })
        .await
        .unwrap();
        assert!(ok, "{version}: {stderr}");
        let received = watcher
            .recv()
            .await
            .expect("the message mosquitto_pub sent");
        assert_eq!(&received.payload[..], version.as_bytes());

        let (ok, stderr) = tokio::task::spawn_blocking({
            let args: Vec<String> = base
                .iter()
                .map(|s| s.to_string())
                .chain(["auth/bad", "-m", "x", "-u", "alice", "-P", "guess"].map(String::from))
                .collect();
            move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                mosquitto_client("mosquitto_pub", &args)
            }
        })
        .await
        .unwrap();
        assert!(!ok, "{version}: a wrong password is refused");
        assert!(
            stderr.to_lowercase().contains("bad user name or password"),
            "{version}: {stderr}"
        );
    }
    watcher.expect_silence(SHORT).await;
    broker.shutdown(SHORT).await;
}
