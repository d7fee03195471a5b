//! The admin HTTP API against a running broker, with real MQTT clients (ours, and Mosquitto's
//! mosquitto_sub and mosquitto_pub): listing, details, disconnecting, retained messages,
//! publishing, access, errors, and the OpenAPI document checked against what is served.

mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use rallymq_broker::{AdminOpenTo, BrokerHandle, ListenerKind, QoS};
use rallymq_codec::{
    MqttString, ProtocolVersion, PublishProperties, ReasonCode, RetainHandling,
    SubscribeProperties, Subscription, SubscriptionId, SubscriptionOptions, TopicFilter,
    UserProperty,
};
use rallymq_session::{ClientEvent, CloseReason};
use serde_json::{Value, json};
use support::credentials::{TempDir, hs256_token, jwt_auth, unix_now, write_passwords};
use support::{
    TestClient, connect_packet, message, payload_str, persistent_connect, start_broker,
    subscription, tcp_addr, topic_str,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const V311: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;
const SHORT: Duration = Duration::from_millis(300);

// ------------------------------------------------------------------------------- HTTP client

/// An HTTP response.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "not JSON ({error}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Asserts an error reply of `status` with `code`.
    fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        let body = self.json();
        assert_eq!(body["code"], code, "{body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    }
}

fn http_addr(broker: &BrokerHandle) -> SocketAddr {
    broker
        .local_addr(ListenerKind::WebSocket)
        .expect("a WebSocket listener")
}

/// One HTTP/1.1 request on a new connection (`Connection: close`), read to its end.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Reply {
    let mut stream = TcpStream::connect(addr).await.expect("connects");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    // A server may answer (413) and close before reading a large body: what it said counts.
    let _ = stream.write_all(&bytes).await;
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw)).await;
    assert!(read.is_ok(), "a response to {method} {path} in time");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("a response head: {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8(raw[..split].to_vec()).expect("an ASCII head");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path, &[], None).await
}

async fn get_json(addr: SocketAddr, path: &str) -> Value {
    let reply = get(addr, path).await;
    assert_eq!(reply.status, 200, "GET {path}: {reply:?}");
    reply.json()
}

async fn delete(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "DELETE", path, &[], None).await
}

async fn post_json(addr: SocketAddr, path: &str, body: &Value) -> Reply {
    let body = serde_json::to_vec(body).unwrap();
    request(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        Some(&body),
    )
    .await
}

/// A path segment percent-encoded (every byte but unreserved ones).
fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The client ids of a page, in order.
fn ids(page: &Value) -> Vec<String> {
    page["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|item| item["clientid"].as_str().expect("clientid").to_owned())
        .collect()
}

/// Waits (bounded) until `check` holds.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn with_user(mut connect: rallymq_codec::Connect, user: &str) -> rallymq_codec::Connect {
    connect.username = Some(MqttString::new(user).unwrap());
    connect
}

// ------------------------------------------------------------------------------------ tests

#[tokio::test]
async fn clients_are_listed_sorted_filtered_and_paged_with_offline_sessions() {
    let broker = start_broker(|_| {}).await;
    let (mqtt, http) = (tcp_addr(&broker), http_addr(&broker));
    let (mut a2, _) =
        TestClient::tcp(mqtt, with_user(connect_packet(V5, "alpha-2"), "alice")).await;
    let (mut a1, _) =
        TestClient::tcp(mqtt, with_user(connect_packet(V311, "alpha-1"), "alice")).await;
    let (mut b1, _) = TestClient::tcp(mqtt, with_user(connect_packet(V5, "beta-1"), "bob")).await;
    let (mut offline, _) = TestClient::tcp(mqtt, persistent_connect(V5, "offline-1", 3600)).await;
    offline
        .subscribe(vec![subscription("o/#", QoS::AtLeastOnce)])
        .await;
    offline.disconnect(ReasonCode::Success).await;
    eventually("offline-1 offline", async || {
        get_json(http, "/api/v1/clients?conn_state=disconnected").await["meta"]["count"] == 1
    })
    .await;

    let all = get_json(http, "/api/v1/clients").await;
    assert_eq!(ids(&all), ["alpha-1", "alpha-2", "beta-1", "offline-1"]);
    assert_eq!(
        all["meta"],
        json!({"page": 1, "limit": 100, "count": 4, "hasnext": false})
    );
    let alpha1 = &all["data"][0];
    assert_eq!(alpha1["connected"], true);
    assert_eq!(alpha1["username"], "alice");
    assert_eq!(alpha1["proto_name"], "MQTT");
    assert_eq!(alpha1["proto_ver"], 4);
    assert_eq!(alpha1["ip_address"], "127.0.0.1");
    assert_eq!(alpha1["listener"], format!("tcp://{mqtt}"));
    assert_eq!(alpha1["keepalive"], 30);
    assert_eq!(alpha1["clean_start"], true);
    assert_eq!(alpha1["inflight_cnt"], 0);
    assert!(
        alpha1["connected_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    assert_eq!(all["data"][1]["proto_ver"], 5);
    let gone = &all["data"][3];
    assert_eq!(gone["connected"], false);
    assert_eq!(gone["subscriptions_cnt"], 1);
    assert_eq!(gone["expiry_interval"], 3600);
    assert_eq!(gone["inflight_cnt"], 0);
    assert!(gone["disconnected_at"].is_string(), "{gone}");
    assert!(gone["expires_at"].is_string(), "{gone}");

    let prefixed = get_json(http, "/api/v1/clients?prefix=alpha").await;
    assert_eq!(ids(&prefixed), ["alpha-1", "alpha-2"]);
    let like = get_json(http, "/api/v1/clients?like_clientid=a-").await;
    assert_eq!(ids(&like), ["alpha-1", "alpha-2", "beta-1"]);
    let bob = get_json(http, "/api/v1/clients?user=bob").await;
    assert_eq!(ids(&bob), ["beta-1"]);
    let alice = get_json(http, "/api/v1/clients?username=alice&prefix=alpha-2").await;
    assert_eq!(ids(&alice), ["alpha-2"]);
    let here = get_json(http, "/api/v1/clients?address=127.0.0.1").await;
    assert_eq!(here["meta"]["count"], 4);
    let elsewhere = get_json(http, "/api/v1/clients?ip_address=10.1.2.3").await;
    assert_eq!(elsewhere["meta"]["count"], 0);
    let connected = get_json(http, "/api/v1/clients?conn_state=connected").await;
    assert_eq!(ids(&connected), ["alpha-1", "alpha-2", "beta-1"]);

    let page2 = get_json(http, "/api/v1/clients?limit=3&page=1").await;
    assert_eq!(ids(&page2), ["alpha-1", "alpha-2", "beta-1"]);
    assert_eq!(page2["meta"]["hasnext"], true);
    let page2 = get_json(http, "/api/v1/clients?limit=3&page=2").await;
    assert_eq!(ids(&page2), ["offline-1"]);
    assert_eq!(
        page2["meta"],
        json!({"page": 2, "limit": 3, "count": 4, "hasnext": false})
    );
    let past = get_json(http, "/api/v1/clients?limit=3&page=9").await;
    assert_eq!(ids(&past), Vec::<String>::new());

    for bad in [
        "/api/v1/clients?limit=0",
        "/api/v1/clients?limit=1001",
        "/api/v1/clients?page=0",
        "/api/v1/clients?page=x",
        "/api/v1/clients?conn_state=maybe",
        "/api/v1/clients?address=not-an-ip",
        "/api/v1/clients?prefx=a",
        "/api/v1/clients?prefix=a&prefix=b",
        "/api/v1/clients?prefix=%zz",
    ] {
        get(http, bad).await.assert_error(400, "BAD_REQUEST");
    }
    for client in [&mut a1, &mut a2, &mut b1] {
        client.disconnect(ReasonCode::Success).await;
    }
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn a_client_s_details_show_its_subscriptions_queue_and_deliveries_in_flight() {
    let broker = start_broker(|config| config.limits.max_in_flight = 3).await;
    let (mqtt, http) = (tcp_addr(&broker), http_addr(&broker));
    // Any UTF-8 names a client, '/' and spaces included: percent-encoded in the path.
    let id = "capteur/é 1";
    let (mut client, _) = TestClient::tcp(mqtt, persistent_connect(V5, id, 600)).await;
    let options = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        no_local: true,
        retain_as_published: true,
        retain_handling: RetainHandling::DoNotSend,
    };
    let properties = SubscribeProperties {
        subscription_identifier: Some(SubscriptionId::new(42).unwrap()),
        ..Default::default()
    };
    let filter = TopicFilter::new("sensors/+/temp").unwrap();
    client
        .subscribe_with(
            vec![Subscription {
                filter: filter.clone(),
                options,
            }],
            properties,
        )
        .await;
    client
        .subscribe(vec![subscription("$share/g/jobs/#", QoS::ExactlyOnce)])
        .await;

    // Five QoS 1 messages while the client reads nothing: three go in flight (the broker's
    // window), two wait in the queue.
    for n in 0..5 {
        broker
            .publish("sensors/k/temp", format!("2{n}.5"), QoS::AtLeastOnce, false)
            .unwrap();
    }
    let path = format!("/api/v1/clients/{}", encode(id));
    eventually("three deliveries in flight", async || {
        get_json(http, &path).await["inflight_cnt"] == 3
    })
    .await;
    let details = get_json(http, &path).await;
    assert_eq!(details["clientid"], id);
    assert_eq!(details["connected"], true);
    assert_eq!(details["expiry_interval"], 600);
    assert_eq!(details["clean_start"], false);
    assert_eq!(details["subscriptions_cnt"], 2);
    assert_eq!(details["mqueue_len"], 2);
    assert_eq!(details["mqueue_bytes"], 2 * ("sensors/k/temp".len() + 4));
    assert_eq!(
        details["subscriptions"],
        json!([
            {"clientid": id, "topic": "$share/g/jobs/#", "qos": 2, "nl": 0, "rap": 0, "rh": 0, "identifier": null},
            {"clientid": id, "topic": "sensors/+/temp", "qos": 1, "nl": 1, "rap": 1, "rh": 2, "identifier": 42},
        ])
    );

    // Offline, the session keeps its queue: what was in flight waits again.
    client.kill();
    eventually("offline", async || {
        get_json(http, &path).await["connected"] == false
    })
    .await;
    let offline = get_json(http, &path).await;
    assert_eq!(offline["inflight_cnt"], 3, "to be sent again");
    assert_eq!(offline["mqueue_len"], 2);
    assert_eq!(offline["subscriptions_cnt"], 2);

    get(http, "/api/v1/clients/nobody")
        .await
        .assert_error(404, "CLIENTID_NOT_FOUND");
    get(http, "/api/v1/clients/%C3%28")
        .await
        .assert_error(400, "BAD_REQUEST");
    // A '/' in an id must be encoded: unencoded, it is another path.
    get(http, "/api/v1/clients/capteur/x")
        .await
        .assert_error(404, "NOT_FOUND");
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn an_admin_disconnect_sends_0x98_to_an_mqtt5_client_and_closes_an_mqtt311_one() {
    let broker = start_broker(|_| {}).await;
    let (mqtt, http) = (tcp_addr(&broker), http_addr(&broker));
    let (mut v5, _) = TestClient::tcp(mqtt, persistent_connect(V5, "kick-5", 3600)).await;
    let (mut v311, _) = TestClient::tcp(mqtt, connect_packet(V311, "kick-311")).await;

    let reply = delete(http, "/api/v1/clients/kick-5").await;
    assert_eq!(reply.status, 204, "{reply:?}");
    match v5.closed().await {
        Some(CloseReason::PeerDisconnected { reason_code, .. }) => {
            assert_eq!(reason_code, ReasonCode::AdministrativeAction);
        }
        other => panic!("the MQTT 5 client is told 0x98: {other:?}"),
    }
    // Its persistent session stays, offline.
    let kept = get_json(http, "/api/v1/clients/kick-5").await;
    assert_eq!(kept["connected"], false);

    assert_eq!(delete(http, "/api/v1/clients/kick-311").await.status, 204);
    assert_eq!(
        v311.closed().await,
        Some(CloseReason::TransportClosed),
        "an MQTT 3.1.1 client's connection is closed"
    );
    // A clean session ends with its connection.
    get(http, "/api/v1/clients/kick-311")
        .await
        .assert_error(404, "CLIENTID_NOT_FOUND");

    // An offline session: not connected (409) unless it is to be discarded.
    delete(http, "/api/v1/clients/kick-5")
        .await
        .assert_error(409, "CLIENT_NOT_CONNECTED");
    assert_eq!(
        delete(http, "/api/v1/clients/kick-5?discard_session=true")
            .await
            .status,
        204
    );
    assert!(!broker.has_session("kick-5"));
    delete(http, "/api/v1/clients/kick-5")
        .await
        .assert_error(404, "CLIENTID_NOT_FOUND");
    delete(http, "/api/v1/clients/x?discard_session=yes")
        .await
        .assert_error(400, "BAD_REQUEST");

    // Connected and discarded: the client comes back to no session (Session Present 0) and
    // its subscription is gone.
    let (mut back, _) = TestClient::tcp(mqtt, persistent_connect(V5, "kick-d", 3600)).await;
    back.subscribe(vec![subscription("d/#", QoS::AtLeastOnce)])
        .await;
    assert_eq!(
        delete(http, "/api/v1/clients/kick-d?discard_session=true")
            .await
            .status,
        204
    );
    assert!(back.closed().await.is_some());
    assert!(!broker.has_session("kick-d"));
    let (_again, connected) = TestClient::tcp(mqtt, persistent_connect(V5, "kick-d", 3600)).await;
    match connected {
        ClientEvent::Connected {
            session_present, ..
        } => assert!(!session_present),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        get_json(http, "/api/v1/subscriptions?clientid=kick-d").await["meta"]["count"],
        0
    );
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn mqtt_3_1_3_9_a_delayed_will_is_published_when_an_admin_discards_its_session() {
    let broker = start_broker(|_| {}).await;
    let (mqtt, http) = (tcp_addr(&broker), http_addr(&broker));
    let (mut watcher, _) = TestClient::tcp(mqtt, connect_packet(V5, "will-watcher")).await;
    watcher
        .subscribe(vec![subscription("wills/#", QoS::AtLeastOnce)])
        .await;
    let mut connect = persistent_connect(V5, "will-owner", 3600);
    let mut will = rallymq_codec::Will::new(
        rallymq_codec::TopicName::new("wills/owner").unwrap(),
        Bytes::from_static(b"gone"),
    );
    will.qos = QoS::AtLeastOnce;
    will.properties.will_delay_interval = Some(3000);
    connect.will = Some(will);
    let (mut owner, _) = TestClient::tcp(mqtt, connect).await;
    owner.kill();
    eventually("the owner offline", async || {
        get_json(http, "/api/v1/clients/will-owner").await["connected"] == false
    })
    .await;
    watcher.expect_silence(SHORT).await;
    assert_eq!(
        delete(http, "/api/v1/clients/will-owner?discard_session=true")
            .await
            .status,
        204
    );
    let will = watcher
        .recv()
        .await
        .expect("the will, at the session's end");
    assert_eq!(topic_str(&will), "wills/owner");
    assert_eq!(payload_str(&will), "gone");
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn subscriptions_are_listed_by_client_and_filter_and_matched_against_a_topic() {
    let broker = start_broker(|_| {}).await;
    let (mqtt, http) = (tcp_addr(&broker), http_addr(&broker));
    let (mut b, _) = TestClient::tcp(mqtt, connect_packet(V5, "sub-b")).await;
    let (mut a, _) = TestClient::tcp(mqtt, connect_packet(V311, "sub-a")).await;
    a.subscribe(vec![
        subscription("home/+/temp", QoS::AtLeastOnce),
        subscription("home/#", QoS::AtMostOnce),
    ])
    .await;
    b.subscribe(vec![subscription("home/kitchen/temp", QoS::ExactlyOnce)])
        .await;
    b.subscribe(vec![subscription("$share/g/home/#", QoS::AtLeastOnce)])
        .await;

    let all = get_json(http, "/api/v1/subscriptions").await;
    let rows: Vec<(String, String)> = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                row["clientid"].as_str().unwrap().to_owned(),
                row["topic"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("sub-a", "home/#"),
        ("sub-a", "home/+/temp"),
        ("sub-b", "$share/g/home/#"),
        ("sub-b", "home/kitchen/temp"),
    ];
    assert_eq!(
        rows,
        expected.map(|(c, t)| (c.to_owned(), t.to_owned())).to_vec()
    );
    assert_eq!(all["meta"]["count"], 4);

    let of_b = get_json(http, "/api/v1/subscriptions?client=sub-b").await;
    assert_eq!(of_b["meta"]["count"], 2);
    let exact = get_json(http, "/api/v1/subscriptions?filter=home%2F%23").await;
    assert_eq!(exact["meta"]["count"], 1);
    assert_eq!(exact["data"][0]["clientid"], "sub-a");
    let matching = get_json(http, "/api/v1/subscriptions?match_topic=home/kitchen/temp").await;
    assert_eq!(matching["meta"]["count"], 4, "{matching}");
    let matching = get_json(http, "/api/v1/subscriptions?match_topic=home/hall/light").await;
    assert_eq!(matching["meta"]["count"], 2, "{matching}");
    let paged = get_json(http, "/api/v1/subscriptions?limit=3&page=2").await;
    assert_eq!(paged["data"][0]["topic"], "home/kitchen/temp");
    get(http, "/api/v1/subscriptions?match_topic=home/%23")
        .await
        .assert_error(400, "BAD_REQUEST");
    get(http, "/api/v1/subscriptions?clientid=nobody").await;
    assert_eq!(
        get_json(http, "/api/v1/subscriptions?clientid=nobody").await["meta"]["count"],
        0
    );
    a.disconnect(ReasonCode::Success).await;
    b.disconnect(ReasonCode::Success).await;
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn retained_messages_are_browsed_by_filter_shown_as_text_or_base64_and_deleted() {
    let broker = start_broker(|_| {}).await;
    let (mqtt, http) = (tcp_addr(&broker), http_addr(&broker));
    let (mut publisher, _) = TestClient::tcp(mqtt, connect_packet(V5, "retainer")).await;
    let mut text = message("plant/a/state", "{\"on\":true}", QoS::AtLeastOnce);
    text.retain = true;
    text.properties = PublishProperties {
        content_type: Some(MqttString::new("application/json").unwrap()),
        correlation_data: Some(Bytes::from_static(&[0xff, 0x00])),
        user_properties: vec![UserProperty {
            name: MqttString::new("site").unwrap(),
            value: MqttString::new("north").unwrap(),
        }],
        ..Default::default()
    }
    .into();
    publisher.publish(text).await;
    let mut binary = message("plant/b/state", "", QoS::AtMostOnce);
    binary.payload = Bytes::from_static(&[0x00, 0xff, 0x10]);
    binary.retain = true;
    publisher.publish(binary).await;
    for topic in ["plant/c/state", "office/x", "$internal/y"] {
        let mut m = message(topic, "v", QoS::AtLeastOnce);
        m.retain = true;
        publisher.publish(m).await;
    }

    let plants = get_json(http, "/api/v1/retained?filter=plant/%2B/state").await;
    assert_eq!(plants["meta"]["count"], 3);
    let a = &plants["data"][0];
    assert_eq!(a["topic"], "plant/a/state");
    assert_eq!(a["payload"], "{\"on\":true}");
    assert_eq!(a["payload_encoding"], "plain");
    assert_eq!(a["size"], 11);
    assert_eq!(a["qos"], 1);
    assert_eq!(
        a["properties"],
        json!({
            "content_type": "application/json",
            "correlation_data_base64": "/wA=",
            "user_properties": [{"name": "site", "value": "north"}]
        })
    );
    let b = &plants["data"][1];
    assert_eq!(b["payload"], "AP8Q");
    assert_eq!(b["payload_encoding"], "base64");
    assert_eq!(b["size"], 3);
    assert_eq!(b["properties"], json!({}));

    // `#` (the default) leaves out topics starting with '$', as for a subscriber.
    let all = get_json(http, "/api/v1/retained").await;
    assert_eq!(all["meta"]["count"], 4);
    let dollar = get_json(http, "/api/v1/retained?filter=%24internal/%23").await;
    assert_eq!(dollar["meta"]["count"], 1);
    let page = get_json(http, "/api/v1/retained?limit=2&page=2").await;
    let topics: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["topic"].as_str().unwrap())
        .collect();
    assert_eq!(topics, ["plant/b/state", "plant/c/state"]);

    let one = get_json(http, "/api/v1/retained/plant/c/state").await;
    assert_eq!(one["payload"], "v");
    let encoded = get_json(http, "/api/v1/retained/plant%2Fc%2Fstate").await;
    assert_eq!(encoded["topic"], "plant/c/state");

    assert_eq!(
        delete(http, "/api/v1/retained/plant/c/state").await.status,
        204
    );
    get(http, "/api/v1/retained/plant/c/state")
        .await
        .assert_error(404, "TOPIC_NOT_FOUND");
    delete(http, "/api/v1/retained/plant/c/state")
        .await
        .assert_error(404, "TOPIC_NOT_FOUND");
    // A subscriber now gets the others only.
    let (mut late, _) = TestClient::tcp(mqtt, connect_packet(V5, "late")).await;
    late.subscribe(vec![subscription("plant/#", QoS::AtLeastOnce)])
        .await;
    let mut got = vec![
        topic_str(&late.recv().await.unwrap()),
        topic_str(&late.recv().await.unwrap()),
    ];
    got.sort();
    assert_eq!(got, ["plant/a/state", "plant/b/state"]);
    late.expect_silence(SHORT).await;

    for bad in [
        "/api/v1/retained?filter=a/%23/b",
        "/api/v1/retained?filter=%24share/g/a",
        "/api/v1/retained/a/%2B",
    ] {
        get(http, bad).await.assert_error(400, "BAD_REQUEST");
    }
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn a_message_published_through_the_api_reaches_subscribers_with_its_properties() {
    let broker = start_broker(|_| {}).await;
    let (mqtt, http) = (tcp_addr(&broker), http_addr(&broker));
    let (mut subscriber, _) = TestClient::tcp(mqtt, connect_packet(V5, "api-sub")).await;
    subscriber
        .subscribe(vec![subscription("api/#", QoS::ExactlyOnce)])
        .await;

    let reply = post_json(
        http,
        "/api/v1/publish",
        &json!({
            "topic": "api/one",
            "payload": "aGVsbG8=",
            "payload_encoding": "base64",
            "qos": 1,
            "properties": {
                "content_type": "text/plain",
                "payload_format_indicator": 1,
                "message_expiry_interval": 60,
                "response_topic": "api/replies",
                "correlation_data": "req-7",
                "user_properties": {"b": "2", "a": "1"}
            }
        }),
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json(), json!({"queued": 1, "dropped": 0}));
    let got = subscriber.recv().await.expect("the message");
    assert_eq!(topic_str(&got), "api/one");
    assert_eq!(payload_str(&got), "hello");
    assert_eq!(got.qos, QoS::AtLeastOnce);
    let properties = &got.properties;
    assert_eq!(properties.content_type.as_deref(), Some("text/plain"));
    assert_eq!(
        properties.response_topic.as_ref().map(|t| t.as_str()),
        Some("api/replies")
    );
    assert_eq!(properties.correlation_data.as_deref(), Some(&b"req-7"[..]));
    let users: Vec<(&str, &str)> = properties
        .user_properties
        .iter()
        .map(|p| (p.name.as_str(), p.value.as_str()))
        .collect();
    assert_eq!(users, [("a", "1"), ("b", "2")]);
    assert!(properties.message_expiry_interval.is_some_and(|s| s <= 60));

    // `encoding` (the brief's name) and the list form of user properties; retained.
    let reply = post_json(
        http,
        "/api/v1/publish",
        &json!({"topic": "api/kept", "payload": "v1", "encoding": "plain", "retain": true,
                "properties": {"user_properties": [{"name": "k", "value": "1"}, {"name": "k", "value": "2"}]}}),
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let kept = subscriber.recv().await.expect("the retained one, live");
    assert_eq!(kept.properties.user_properties.len(), 2);
    assert_eq!(
        get_json(http, "/api/v1/retained/api/kept").await["payload"],
        "v1"
    );
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn bad_publish_requests_get_400_413_and_415() {
    let broker = start_broker(|config| config.limits.max_packet_size = 40_000).await;
    let http = http_addr(&broker);
    for body in [
        json!({"payload": "no topic"}),
        json!({"topic": "a/+", "payload": "x"}),
        json!({"topic": "", "payload": "x"}),
        json!({"topic": "a", "qos": 3}),
        json!({"topic": "a", "payload": "!!", "payload_encoding": "base64"}),
        json!({"topic": "a", "payload_encoding": "hex"}),
        json!({"topic": "a", "colour": "red"}),
        json!({"topic": "a", "properties": {"payload_format_indicator": 2}}),
        json!({"topic": "a", "properties": {"response_topic": "r/#"}}),
        json!({"topic": "a", "payload": "/w==", "payload_encoding": "base64", "properties": {"payload_format_indicator": 1}}),
        json!({"topic": "a", "properties": {"correlation_data": "a", "correlation_data_base64": "YQ=="}}),
        json!([1, 2]),
    ] {
        post_json(http, "/api/v1/publish", &body)
            .await
            .assert_error(400, "BAD_REQUEST");
    }
    request(
        http,
        "POST",
        "/api/v1/publish",
        &[("Content-Type", "application/json")],
        Some(b"{not json"),
    )
    .await
    .assert_error(400, "BAD_REQUEST");
    request(
        http,
        "POST",
        "/api/v1/publish",
        &[("Content-Type", "text/plain")],
        Some(b"{\"topic\": \"a\"}"),
    )
    .await
    .assert_error(415, "UNSUPPORTED_MEDIA_TYPE");
    // The message within the body limit (80,000 bytes) but over the packet size.
    let big = "x".repeat(45_000);
    post_json(
        http,
        "/api/v1/publish",
        &json!({"topic": "a", "payload": big}),
    )
    .await
    .assert_error(413, "PAYLOAD_TOO_LARGE");
    // The body over its limit.
    let huge = "x".repeat(90_000);
    post_json(
        http,
        "/api/v1/publish",
        &json!({"topic": "a", "payload": huge}),
    )
    .await
    .assert_error(413, "PAYLOAD_TOO_LARGE");
    broker.shutdown(SHORT).await;
}

/// Waits (without blocking the runtime, where the broker runs) for a peer process to exit
/// successfully, within 10 s.
async fn finished(mut child: std::process::Child) -> std::process::Output {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().expect("waits") {
            let output = child.wait_with_output().expect("its output");
            assert!(status.success(), "{status}: {output:?}");
            return output;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "the peer did not finish in time: {:?}",
                child.wait_with_output()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn mosquitto_clients_are_listed_and_receive_what_the_api_publishes() {
    let broker = start_broker(|_| {}).await;
    let (mqtt, http) = (tcp_addr(&broker), http_addr(&broker));
    let sub = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &mqtt.port().to_string()])
        .args(["-V", "mqttv5", "-i", "mosq-sub", "-u", "carol"])
        .args(["-t", "peers/#", "-q", "1", "-C", "1", "-v"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub (apt-get install mosquitto-clients) runs");
    eventually("mosquitto_sub subscribed", async || {
        get_json(http, "/api/v1/subscriptions?clientid=mosq-sub").await["meta"]["count"] == 1
    })
    .await;
    let listed = get_json(http, "/api/v1/clients/mosq-sub").await;
    assert_eq!(listed["username"], "carol");
    assert_eq!(listed["proto_ver"], 5);
    assert_eq!(listed["subscriptions"][0]["topic"], "peers/#");

    let reply = post_json(
        http,
        "/api/v1/publish",
        &json!({"topic": "peers/hello", "payload": "from the API", "qos": 1}),
    )
    .await;
    assert_eq!(reply.json()["queued"], 1);
    let output = finished(sub).await;
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "peers/hello from the API"
    );

    // mosquitto_pub's retained message shows in the browser API.
    let publisher = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &mqtt.port().to_string()])
        .args(["-t", "peers/kept", "-m", "42", "-r", "-q", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub runs");
    finished(publisher).await;
    let kept = get_json(http, "/api/v1/retained?filter=peers/%23").await;
    assert_eq!(kept["data"][0]["payload"], "42");
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn the_broker_reports_version_listeners_limits_and_counts() {
    let broker = start_broker(|config| config.limits.max_queued_messages = 77).await;
    let (mqtt, http) = (tcp_addr(&broker), http_addr(&broker));
    let (mut offline, _) = TestClient::tcp(mqtt, persistent_connect(V5, "counted", 3600)).await;
    offline
        .subscribe(vec![subscription("c/#", QoS::AtLeastOnce)])
        .await;
    offline.disconnect(ReasonCode::Success).await;
    eventually("counted offline", async || {
        get_json(http, "/api/v1/clients/counted").await["connected"] == false
    })
    .await;
    broker
        .publish("c/1", "abc", QoS::AtLeastOnce, true)
        .unwrap();
    let info = get_json(http, "/api/v1/broker").await;
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(info["storage"], "memory");
    assert_eq!(
        info["listeners"],
        json!([
            {"type": "tcp", "bind": mqtt.to_string(), "url": format!("tcp://{mqtt}")},
            {"type": "ws", "bind": http.to_string(), "url": format!("ws://{http}/mqtt")},
        ])
    );
    assert_eq!(info["limits"]["max_queued_messages"], 77);
    assert_eq!(info["limits"]["queue_full"], "drop_newest");
    let counts = &info["counts"];
    assert_eq!(counts["sessions"], 1);
    assert_eq!(counts["clients_connected"], 0);
    assert_eq!(counts["subscriptions"], 1);
    assert_eq!(counts["retained"], 1);
    assert_eq!(counts["queued_messages"], 1);
    assert_eq!(counts["queued_bytes"], 6);
    assert!(info["uptime"].is_u64());
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn access_is_open_to_loopback_by_default_and_can_be_closed_or_opened() {
    let open = start_broker(|_| {}).await;
    assert_eq!(get(http_addr(&open), "/api/v1/broker").await.status, 200);
    open.shutdown(SHORT).await;

    // As a request from another machine would be treated.
    let closed = start_broker(|config| config.admin.open_to = AdminOpenTo::Nowhere).await;
    let http = http_addr(&closed);
    for (method, path) in [
        ("GET", "/api/v1/broker"),
        ("GET", "/api/v1/clients"),
        ("DELETE", "/api/v1/retained/a"),
        ("POST", "/api/v1/publish"),
    ] {
        request(http, method, path, &[], None)
            .await
            .assert_error(401, "UNAUTHORIZED");
    }
    // The description holds nothing of the broker's: open to all.
    assert_eq!(get(http, "/api/v1/openapi.json").await.status, 200);
    closed.shutdown(SHORT).await;

    let anywhere = start_broker(|config| config.admin.open_to = AdminOpenTo::Anywhere).await;
    assert_eq!(
        get(http_addr(&anywhere), "/api/v1/clients").await.status,
        200
    );
    anywhere.shutdown(SHORT).await;

    let off = start_broker(|config| config.admin.enabled = false).await;
    get(http_addr(&off), "/api/v1/broker")
        .await
        .assert_error(404, "NOT_FOUND");
    off.shutdown(SHORT).await;
}

/// `Authorization: Basic` for `user` and `password` (RFC 7617).
fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", BASE64.encode(format!("{user}:{password}")))
}

/// The status and error code of `GET /api/v1/clients` with these headers.
async fn clients_with(http: SocketAddr, headers: &[(&str, &str)]) -> Reply {
    request(http, "GET", "/api/v1/clients", headers, None).await
}

#[tokio::test]
async fn from_an_untrusted_address_an_admin_logs_in_with_basic_or_a_token_and_others_are_refused() {
    let dir = TempDir::new("admin-api");
    let passwords = dir.path("passwords");
    write_passwords(&passwords, &[("root", "r00t-pw"), ("alice", "alice-pw")]);
    let mut auth = jwt_auth(&dir);
    auth.password_file = Some(passwords);
    // Nowhere: as a request from another machine is treated by default.
    let broker = start_broker(|config| {
        config.security.auth = auth;
        config.admin.open_to = AdminOpenTo::Nowhere;
        config.admin.admin_users = vec!["root".into()];
    })
    .await;
    let http = http_addr(&broker);

    // No credentials: 401 with both challenges, Basic left out for the console's scripts (a
    // browser would open its own dialog for it).
    let reply = clients_with(http, &[]).await;
    reply.assert_error(401, "UNAUTHORIZED");
    let challenges: Vec<&str> = reply
        .headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("www-authenticate"))
        .map(|(_, value)| value.as_str())
        .collect();
    assert_eq!(
        challenges,
        [
            "Basic realm=\"rallymq admin API\", charset=\"UTF-8\"",
            "Bearer realm=\"rallymq admin API\""
        ]
    );
    let reply = clients_with(http, &[("X-Requested-With", "rallymq-console")]).await;
    reply.assert_error(401, "UNAUTHORIZED");
    assert_eq!(
        reply.header("www-authenticate"),
        Some("Bearer realm=\"rallymq admin API\"")
    );

    let hour = unix_now() + 3600;
    let token = |claims: Value| format!("Bearer {}", hs256_token(&claims));
    let other_key = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "carol", "role": "admin", "exp": hour}),
        &jsonwebtoken::EncodingKey::from_secret(b"another secret, 32 bytes or more").unwrap(),
    )
    .unwrap();
    let admin_token = hs256_token(&json!({"sub": "carol", "role": "admin", "exp": hour}));
    let cases: Vec<(&str, String, u16)> = vec![
        // Wrong credentials: 401, an unknown user and a wrong password alike.
        ("root, wrong password", basic("root", "guess"), 401),
        ("unknown user", basic("mallory", "r00t-pw"), 401),
        ("malformed Basic", "Basic !!!".into(), 401),
        ("another scheme", "Digest username=\"root\"".into(), 401),
        (
            "expired admin token",
            token(json!({"sub": "carol", "role": "admin", "exp": unix_now() - 10})),
            401,
        ),
        (
            "token signed with another key",
            format!("Bearer {other_key}"),
            401,
        ),
        (
            "role claim of the wrong type",
            token(json!({"sub": "carol", "role": 5, "exp": hour})),
            401,
        ),
        // Someone else's valid credentials: 403.
        (
            "alice, a user but no admin",
            basic("alice", "alice-pw"),
            403,
        ),
        (
            "token without the admin role",
            token(json!({"sub": "bob", "role": "viewer", "exp": hour})),
            403,
        ),
        // Admins.
        ("root, in admin_users", basic("root", "r00t-pw"), 200),
        (
            "token with the admin role",
            format!("Bearer {admin_token}"),
            200,
        ),
        (
            "token with admin among its roles",
            token(json!({"sub": "dave", "role": ["viewer", "admin"], "exp": hour})),
            200,
        ),
        (
            "token of a user in admin_users",
            token(json!({"sub": "root", "exp": hour})),
            200,
        ),
        (
            "admin token as the Basic password",
            basic("", &admin_token),
            200,
        ),
    ];
    for (what, authorization, status) in cases {
        let reply = clients_with(http, &[("Authorization", &authorization)]).await;
        match status {
            200 => assert_eq!(reply.status, 200, "{what}: {reply:?}"),
            401 => reply.assert_error(401, "UNAUTHORIZED"),
            _ => reply.assert_error(403, "FORBIDDEN"),
        }
        assert_eq!(reply.status, status, "{what}");
    }
    // An admin may change things, not only read them.
    let reply = request(
        http,
        "POST",
        "/api/v1/publish",
        &[
            ("Authorization", &basic("root", "r00t-pw")),
            ("Content-Type", "application/json"),
        ],
        Some(br#"{"topic": "ops/note", "payload": "hi", "retain": true}"#),
    )
    .await;
    assert!(reply.status < 300, "{reply:?}");
    let reply = request(
        http,
        "DELETE",
        "/api/v1/retained/ops/note",
        &[("Authorization", &basic("alice", "alice-pw"))],
        None,
    )
    .await;
    reply.assert_error(403, "FORBIDDEN");
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn without_a_password_file_or_jwt_key_a_user_name_proves_nothing_to_the_admin_api() {
    // With no authentication configured, MQTT takes a user name as given: the admin API must
    // not, or anyone could say "root".
    let broker = start_broker(|config| {
        config.admin.open_to = AdminOpenTo::Nowhere;
        config.admin.admin_users = vec!["root".into()];
    })
    .await;
    let http = http_addr(&broker);
    clients_with(http, &[("Authorization", &basic("root", "anything"))])
        .await
        .assert_error(403, "FORBIDDEN");
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn unknown_routes_get_404_and_wrong_methods_405_with_allow() {
    let broker = start_broker(|_| {}).await;
    let http = http_addr(&broker);
    for path in [
        "/api",
        "/api/v2/clients",
        "/api/v1/clientz",
        "/api/v1/clients/",
    ] {
        get(http, path).await.assert_error(404, "NOT_FOUND");
    }
    let reply = request(http, "POST", "/api/v1/clients", &[], None).await;
    reply.assert_error(405, "METHOD_NOT_ALLOWED");
    assert_eq!(reply.header("allow"), Some("GET"));
    let reply = request(http, "PUT", "/api/v1/clients/x", &[], None).await;
    reply.assert_error(405, "METHOD_NOT_ALLOWED");
    assert_eq!(reply.header("allow"), Some("GET, DELETE"));
    // The static files are still served beside the API.
    assert_eq!(get(http, "/dashboard/").await.status, 200);
    broker.shutdown(SHORT).await;
}

// --------------------------------------------------------------------------------- OpenAPI

/// Checks `value` against `schema` (the subset of JSON Schema the document uses), resolving
/// references in `document`. Stricter than JSON Schema in one way: an object schema with
/// `properties` lists every property the API may send, so any other is an error (a field the
/// document forgot).
fn check_schema(document: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference
            .strip_prefix("#/components/schemas/")
            .ok_or_else(|| format!("{at}: reference {reference}"))?;
        let target = &document["components"]["schemas"][name];
        if target.is_null() {
            return Err(format!("{at}: no schema {name}"));
        }
        return check_schema(document, target, value, at);
    }
    if let Some(options) = schema["oneOf"].as_array() {
        let fitting = options
            .iter()
            .filter(|option| check_schema(document, option, value, at).is_ok())
            .count();
        return if fitting == 1 {
            Ok(())
        } else {
            Err(format!("{at}: {fitting} of oneOf fit {value}"))
        };
    }
    if !schema["type"].is_null() {
        let types: Vec<&str> = match &schema["type"] {
            Value::String(one) => vec![one.as_str()],
            Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
            other => return Err(format!("{at}: type {other}")),
        };
        let fits = types.iter().any(|kind| match *kind {
            "null" => value.is_null(),
            "boolean" => value.is_boolean(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "string" => value.is_string(),
            "array" => value.is_array(),
            "object" => value.is_object(),
            _ => false,
        });
        if !fits {
            return Err(format!("{at}: {value} is not {types:?}"));
        }
    }
    if let Some(values) = schema["enum"].as_array()
        && !values.contains(value)
    {
        return Err(format!("{at}: {value} not in {values:?}"));
    }
    if let (Some(minimum), Some(n)) = (schema["minimum"].as_f64(), value.as_f64())
        && n < minimum
    {
        return Err(format!("{at}: {n} < {minimum}"));
    }
    if let (Some(maximum), Some(n)) = (schema["maximum"].as_f64(), value.as_f64())
        && n > maximum
    {
        return Err(format!("{at}: {n} > {maximum}"));
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (i, item) in array.iter().enumerate() {
            check_schema(document, items, item, &format!("{at}[{i}]"))?;
        }
    }
    if let Some(object) = value.as_object() {
        if let Some(properties) = schema["properties"].as_object() {
            for name in schema["required"].as_array().into_iter().flatten() {
                let name = name.as_str().unwrap_or_default();
                if !object.contains_key(name) {
                    return Err(format!("{at}: {name} missing"));
                }
            }
            for (name, field) in object {
                let property = properties
                    .get(name)
                    .ok_or_else(|| format!("{at}: {name} is not in the document"))?;
                check_schema(document, property, field, &format!("{at}.{name}"))?;
            }
        } else if let Some(values) = schema.get("additionalProperties") {
            for (name, field) in object {
                check_schema(document, values, field, &format!("{at}.{name}"))?;
            }
        }
    }
    Ok(())
}

/// A valid value for a documented parameter, by name and schema.
fn sample(name: &str, schema: &Value) -> String {
    if let Some(first) = schema["enum"].as_array().and_then(|values| values.first()) {
        return first.as_str().unwrap_or_default().to_owned();
    }
    match (name, schema["type"].as_str()) {
        ("ip_address" | "address", _) => "127.0.0.1".to_owned(),
        (_, Some("integer")) => schema["minimum"].as_u64().unwrap_or(0).to_string(),
        (_, Some("boolean")) => "false".to_owned(),
        _ => "probe".to_owned(),
    }
}

#[tokio::test]
async fn every_documented_operation_is_served_as_documented_and_nothing_else_is() {
    let broker = start_broker(|_| {}).await;
    let (mqtt, http) = (tcp_addr(&broker), http_addr(&broker));
    let reply = get(http, "/api/v1/openapi.json").await;
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let document = reply.json();
    assert_eq!(document["openapi"], "3.1.0");
    let paths = document["paths"].as_object().expect("paths");

    // Something for each operation to find: a client (with a subscription) and a retained
    // message, both with names that need encoding.
    let client_id = "probe/é";
    let (mut probe, _) = TestClient::tcp(mqtt, persistent_connect(V5, client_id, 60)).await;
    probe
        .subscribe(vec![subscription("probe/#", QoS::AtLeastOnce)])
        .await;
    broker
        .publish("probe/kept", "k", QoS::AtMostOnce, true)
        .unwrap();
    let path_values = [
        ("clientid", encode(client_id)),
        ("topic", "probe/kept".to_owned()),
    ];
    // What each operation is sent: its body, if any; in the order they run (the deletions
    // last). A documented operation missing here fails the test, so a new route needs a probe.
    let probes: &[(&str, Option<Value>)] = &[
        ("getOpenApi", None),
        ("getBroker", None),
        ("getCluster", None),
        ("listClients", None),
        ("getClient", None),
        ("listSubscriptions", None),
        ("listRetained", None),
        ("getRetained", None),
        ("publish", Some(json!({"topic": "probe/x", "payload": "p"}))),
        ("deleteRetained", None),
        ("disconnectClient", None),
    ];
    let mut operations = Vec::new();
    for (path, methods) in paths {
        for (method, operation) in methods.as_object().expect("methods") {
            operations.push((path.clone(), method.to_uppercase(), operation.clone()));
        }
    }
    assert_eq!(operations.len(), probes.len());
    for (id, body) in probes {
        let (path, method, operation) = operations
            .iter()
            .find(|(_, _, operation)| operation["operationId"] == *id)
            .unwrap_or_else(|| panic!("operation {id} is not documented"));
        let mut concrete = path.clone();
        for (name, value) in &path_values {
            concrete = concrete.replace(&format!("{{{name}}}"), value);
        }
        assert!(
            !concrete.contains('{'),
            "no value for a parameter of {path}"
        );
        // Each documented query parameter is taken (not refused as unknown), for reads.
        let parameters = operation["parameters"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if method == "GET" {
            for parameter in parameters.iter().filter(|p| p["in"] == "query") {
                let name = parameter["name"].as_str().unwrap();
                let value = sample(name, &parameter["schema"]);
                let url = format!("{concrete}?{name}={}", encode(&value));
                let reply = get(http, &url).await;
                assert_eq!(reply.status, 200, "{url}: {reply:?}");
            }
            get(http, &format!("{concrete}?undocumented=1"))
                .await
                .assert_error(400, "BAD_REQUEST");
        }
        let body = body.as_ref().map(|b| serde_json::to_vec(b).unwrap());
        let headers: &[(&str, &str)] = if body.is_some() {
            &[("Content-Type", "application/json")]
        } else {
            &[]
        };
        let reply = request(http, method, &concrete, headers, body.as_deref()).await;
        let status = reply.status.to_string();
        let documented = &operation["responses"][&status];
        assert!(
            !documented.is_null(),
            "{method} {concrete}: {status} is not documented: {reply:?}"
        );
        assert!(reply.status < 300, "{method} {concrete}: {reply:?}");
        let schema = &documented["content"]["application/json"]["schema"];
        if schema.is_null() {
            assert!(reply.body.is_empty(), "{method} {concrete}: a body");
        } else {
            let value = reply.json();
            check_schema(&document, schema, &value, id)
                .unwrap_or_else(|error| panic!("{method} {concrete}: {error}\n{value:#}"));
        }
    }
    // Each documented path allows exactly its documented methods (405 lists them).
    for (path, methods) in paths {
        let mut concrete = path.clone();
        for (name, value) in &path_values {
            concrete = concrete.replace(&format!("{{{name}}}"), value);
        }
        let mut documented: Vec<String> = methods
            .as_object()
            .unwrap()
            .keys()
            .map(|m| m.to_uppercase())
            .collect();
        documented.sort();
        let reply = request(http, "PATCH", &concrete, &[], None).await;
        reply.assert_error(405, "METHOD_NOT_ALLOWED");
        let mut allowed: Vec<String> = reply
            .header("allow")
            .unwrap_or_default()
            .split(", ")
            .map(str::to_owned)
            .collect();
        allowed.sort();
        assert_eq!(allowed, documented, "{path}");
    }
    // Error bodies match the documented Error schema too.
    let error = get(http, "/api/v1/clients/nobody").await.json();
    check_schema(
        &document,
        &json!({"$ref": "#/components/schemas/Error"}),
        &error,
        "error",
    )
    .unwrap();
    assert!(probe.closed().await.is_some(), "the probe was disconnected");
    broker.shutdown(SHORT).await;
}
