//! The normative statements of MQTT 3.1.1 about the client's transport, checked from outside:
//! what the client offers in its WebSocket handshake, and that it speaks MQTT over a plain TCP
//! byte stream. Test names carry the MQTT 3.1.1 statement id; `crates/session/CONFORMANCE.md`
//! traces every statement to them (the protocol rules of the client are tested on its engine
//! in `crates/session/tests/conformance_v311.rs`).

use std::time::Duration;

use rallymq_broker::{Broker, BrokerConfig, ListenerKind};
use rallymq_client::{Client, ClientOptions};
use rallymq_codec::{ProtocolVersion, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);
const V311: ProtocolVersion = ProtocolVersion::V3_1_1;

/// The subprotocols listed in an HTTP request's `Sec-WebSocket-Protocol` headers.
fn offered_subprotocols(request: &str) -> Vec<String> {
    request
        .lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(name, _)| name.trim().eq_ignore_ascii_case("sec-websocket-protocol"))
        .flat_map(|(_, value)| value.split(',').map(|p| p.trim().to_owned()))
        .collect()
}

#[tokio::test]
async fn mqtt_6_0_0_3_client_offers_the_mqtt_subprotocol() {
    // A server that reads the upgrade request and refuses it.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        let _ = socket
            .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            .await;
        String::from_utf8_lossy(&request).into_owned()
    });
    let mut options = ClientOptions::new(&format!("ws://{addr}/mqtt")).version(V311);
    options.reconnect = None;
    let refused = timeout(WAIT, Client::connect(options))
        .await
        .expect("connect ends in time");
    assert!(refused.is_err(), "the upgrade was refused");
    let request = timeout(WAIT, server).await.unwrap().unwrap();
    assert!(
        offered_subprotocols(&request).contains(&"mqtt".to_owned()),
        "{request}"
    );
}

#[tokio::test]
async fn mqtt_7_1_2_1_client_speaks_mqtt_over_tcp_and_websockets() {
    let mut config = BrokerConfig::without_listeners();
    config.tcp = vec!["127.0.0.1:0".parse().unwrap()];
    config.ws = vec!["127.0.0.1:0".parse().unwrap()];
    config.sys_interval = None;
    let broker = Broker::start(config).await.expect("broker starts");
    let urls = [
        format!("mqtt://{}", broker.local_addr(ListenerKind::Tcp).unwrap()),
        format!(
            "ws://{}/mqtt",
            broker.local_addr(ListenerKind::WebSocket).unwrap()
        ),
    ];
    for url in urls {
        let options = ClientOptions::new(&url).version(V311);
        let (client, mut messages, _) = timeout(WAIT, Client::connect(options))
            .await
            .expect("in time")
            .expect("connects");
        client.subscribe("t", QoS::ExactlyOnce).await.unwrap();
        let payload = vec![7u8; 100_000];
        client
            .publish("t", payload.clone(), QoS::ExactlyOnce, false)
            .await
            .unwrap();
        let got = timeout(WAIT, messages.recv())
            .await
            .expect("in time")
            .expect("a message");
        assert_eq!(got.payload, payload, "{url}");
        client.disconnect().await.unwrap();
    }
    broker.shutdown(Duration::from_millis(300)).await;
}
