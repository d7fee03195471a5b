//! Conformance rules checked end to end, over TCP against the broker: where the broker once
//! strayed from the spec (or from Mosquitto where the spec leaves the choice open). Test names
//! carry the statement they check where there is one.

mod support;

use std::time::Duration;

use bytes::BytesMut;
use rallymq_codec::{
    Auth, Decoder, Disconnect, Limits, Packet, ProtocolVersion, QoS, ReasonCode, SubscriptionId,
};
use rallymq_session::{ClientEvent, CloseReason};
use support::{TestClient, connect_packet, message, start_broker, tcp_addr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const V31: ProtocolVersion = ProtocolVersion::V3_1;
const V311: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;
const SHORT: Duration = Duration::from_millis(300);

// ------------------------------------------------------------------ max keep alive

/// What a client asking for `keep_alive` gets: `Ok(Server Keep Alive)` when accepted, or the
/// refusal's reason code.
async fn keep_alive_outcome(
    addr: std::net::SocketAddr,
    version: ProtocolVersion,
    keep_alive: u16,
) -> Result<Option<u16>, ReasonCode> {
    let mut connect = connect_packet(version, &format!("ka-{keep_alive}"));
    connect.keep_alive = keep_alive;
    let (mut client, event) = TestClient::tcp(addr, connect).await;
    match event {
        ClientEvent::Connected { connack, .. } => {
            client.disconnect(ReasonCode::Success).await;
            Ok(connack.properties.server_keep_alive)
        }
        ClientEvent::Closed(CloseReason::Refused(code)) => Err(code),
        other => panic!("neither CONNACK nor a refusal: {other:?}"),
    }
}

/// With `max_keep_alive` 60, an MQTT 5 client asking for more or for none is told 60 as
/// Server Keep Alive, and MQTT 3.1 and 3.1.1 clients asking so are refused with 0x02
/// (identifier rejected), as Mosquitto's `max_keepalive`.
#[tokio::test]
async fn max_keep_alive_corrects_v5_and_refuses_v311_over_it() {
    let broker = start_broker(|config| config.limits.max_keep_alive = Some(60)).await;
    let addr = tcp_addr(&broker);
    for keep_alive in [0, 30, 60, 61, 65535] {
        let within = (1..=60).contains(&keep_alive);
        let expected = if within { Ok(None) } else { Ok(Some(60)) };
        assert_eq!(
            keep_alive_outcome(addr, V5, keep_alive).await,
            expected,
            "MQTT 5, keep alive {keep_alive}"
        );
        for version in [V31, V311] {
            let expected = if within {
                Ok(None)
            } else {
                Err(ReasonCode::ClientIdentifierNotValid)
            };
            assert_eq!(
                keep_alive_outcome(addr, version, keep_alive).await,
                expected,
                "{version:?}, keep alive {keep_alive}"
            );
        }
    }
    broker.shutdown(SHORT).await;
}

/// The default maximum is Mosquitto's, 65535: only a keep alive of 0 (none) is over it.
#[tokio::test]
async fn max_keep_alive_default_is_65535_as_mosquittos() {
    let broker = start_broker(|_| {}).await;
    let addr = tcp_addr(&broker);
    assert_eq!(keep_alive_outcome(addr, V5, 0).await, Ok(Some(65535)));
    assert_eq!(keep_alive_outcome(addr, V5, 65535).await, Ok(None));
    assert_eq!(
        keep_alive_outcome(addr, V311, 0).await,
        Err(ReasonCode::ClientIdentifierNotValid)
    );
    assert_eq!(keep_alive_outcome(addr, V311, 65535).await, Ok(None));
    broker.shutdown(SHORT).await;
}

// ------------------------------------------------------------------ raw MQTT 5

/// Connects a raw MQTT 5 client, sends `packet` once CONNACK has come and returns what the
/// broker sends after CONNACK until it closes the connection (within `WAIT`).
async fn broker_answer_to(addr: std::net::SocketAddr, packet: Packet) -> Vec<Packet> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let connect = Packet::from(connect_packet(
        V5,
        &format!("raw-{}", rallymq_test_support::run_id()),
    ));
    stream
        .write_all(&connect.to_bytes(V5).unwrap())
        .await
        .expect("write");
    let mut decoder = Decoder::with_version(V5, Limits::default());
    let mut buffer = BytesMut::new();
    let mut packets = Vec::new();
    let mut sent = false;
    loop {
        while let Some(received) = decoder.decode(&mut buffer).expect("a valid packet") {
            packets.push(received);
        }
        if !sent && !packets.is_empty() {
            assert!(
                matches!(packets.remove(0), Packet::ConnAck(c) if c.reason_code == ReasonCode::Success),
                "CONNECT not accepted"
            );
            stream
                .write_all(&packet.to_bytes(V5).unwrap())
                .await
                .expect("write");
            sent = true;
        }
        let read = tokio::time::timeout(support::WAIT, stream.read_buf(&mut buffer))
            .await
            .expect("the broker closes in time");
        if matches!(read, Ok(0) | Err(_)) {
            return packets;
        }
    }
}

/// MQTT-3.3.4-6: a PUBLISH from a client must not carry a Subscription Identifier; the broker
/// answers DISCONNECT 0x82 (Protocol Error) and closes.
#[tokio::test]
async fn mqtt_3_3_4_6_client_publish_with_subscription_identifier_gets_disconnect_0x82() {
    let broker = start_broker(|_| {}).await;
    let mut publish = message("a/b", "x", QoS::AtMostOnce);
    publish.properties.subscription_identifiers = vec![SubscriptionId::new(1).unwrap()];
    assert_eq!(
        broker_answer_to(tcp_addr(&broker), Packet::Publish(publish)).await,
        [Packet::Disconnect(Disconnect::new(
            ReasonCode::ProtocolError
        ))]
    );
    broker.shutdown(SHORT).await;
}

/// MQTT-4.12.0-7: a client whose CONNECT named no Authentication Method must not send AUTH; the
/// broker answers DISCONNECT 0x82 (Protocol Error), not 0x8C (Bad authentication method).
#[tokio::test]
async fn mqtt_4_12_0_7_auth_without_authentication_method_gets_disconnect_0x82() {
    let broker = start_broker(|_| {}).await;
    assert_eq!(
        broker_answer_to(tcp_addr(&broker), Packet::Auth(Auth::default())).await,
        [Packet::Disconnect(Disconnect::new(
            ReasonCode::ProtocolError
        ))]
    );
    broker.shutdown(SHORT).await;
}

// ------------------------------------------------------------------ HTTP

/// The status line's code of the answer to `request`, sent raw to the WebSocket listener.
async fn http_status(broker: &rallymq_broker::BrokerHandle, request: &str) -> u16 {
    let addr = broker
        .local_addr(rallymq_broker::ListenerKind::WebSocket)
        .expect("a WebSocket listener");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(support::WAIT, stream.read_to_end(&mut answer))
        .await
        .expect("the answer in time")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {answer:?}"))
}

/// RFC 9112 §3.2: an HTTP/1.1 request without Host, or any with two, is answered 400; HTTP/1.0
/// may leave Host out.
#[tokio::test]
async fn rfc9112_3_2_http_1_1_request_without_host_is_400() {
    let broker = start_broker(|_| {}).await;
    for (request, status) in [
        ("GET / HTTP/1.1\r\nConnection: close\r\n\r\n", 400),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
            400,
        ),
        ("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            200,
        ),
        ("GET / HTTP/1.0\r\n\r\n", 200),
    ] {
        assert_eq!(http_status(&broker, request).await, status, "{request:?}");
    }
    broker.shutdown(SHORT).await;
}
