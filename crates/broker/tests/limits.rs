//! The broker's limits on hostile or greedy clients, each with the reaction a client sees:
//! connections per address and per second, a packet trickled a byte at a time, the HTTP
//! request head size, subscriptions per client, topic levels and length.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rallymq_codec::{Packet, ProtocolVersion, QoS, ReasonCode};
use rallymq_session::ClientEvent;
use support::{TestClient, connect_packet, message, start_broker, subscription, tcp_addr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const V311: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;
const SHORT: Duration = Duration::from_millis(300);

/// Whether a CONNECT on a new socket gets its CONNACK.
async fn connects(addr: SocketAddr, id: &str) -> Option<TcpStream> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let mut bytes = BytesMut::new();
    Packet::from(connect_packet(V311, id))
        .encode(V311, &mut bytes)
        .unwrap();
    stream.write_all(&bytes).await.ok()?;
    let mut connack = [0u8; 4];
    match tokio::time::timeout(Duration::from_secs(3), stream.read_exact(&mut connack)).await {
        Ok(Ok(_)) if connack[0] == 0x20 && connack[3] == 0 => Some(stream),
        _ => None,
    }
}

#[tokio::test]
async fn connections_per_address_are_capped() {
    let broker = start_broker(|config| config.limits.max_connections_per_ip = 2).await;
    let addr = tcp_addr(&broker);
    let first = connects(addr, "ip-1").await.expect("first");
    let _second = connects(addr, "ip-2").await.expect("second");
    assert!(
        connects(addr, "ip-3").await.is_none(),
        "a third from the same address"
    );
    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        connects(addr, "ip-4").await.is_some(),
        "a slot came back when one closed"
    );
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn new_connections_per_second_per_address_are_capped() {
    let broker = start_broker(|config| config.limits.max_connection_rate_per_ip = 3).await;
    let addr = tcp_addr(&broker);
    let mut open = Vec::new();
    for n in 0..3 {
        open.push(
            connects(addr, &format!("rate-{n}"))
                .await
                .expect("within the rate"),
        );
    }
    assert!(
        connects(addr, "rate-3").await.is_none(),
        "a fourth in the same second"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(connects(addr, "rate-4").await.is_some(), "the next second");
    broker.shutdown(SHORT).await;
}

/// A PUBLISH trickled a byte at a time keeps the keep alive satisfied, but not the packet
/// timeout: the connection is closed (MQTT 5: DISCONNECT 0x8D first).
#[tokio::test]
async fn a_packet_trickled_a_byte_at_a_time_is_dropped_after_the_packet_timeout() {
    let broker = start_broker(|config| config.limits.packet_timeout = Duration::from_secs(1)).await;
    let addr = tcp_addr(&broker);
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut bytes = BytesMut::new();
    Packet::from(connect_packet(V5, "trickler"))
        .encode(V5, &mut bytes)
        .unwrap();
    stream.write_all(&bytes).await.unwrap();
    let mut publish = BytesMut::new();
    Packet::Publish(message("trickle/topic", &"x".repeat(64), QoS::AtMostOnce))
        .encode(V5, &mut publish)
        .unwrap();
    let started = Instant::now();
    let mut received = Vec::new();
    let mut closed = false;
    for byte in publish.iter().take(publish.len() - 1) {
        if stream.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        assert!(started.elapsed() < Duration::from_secs(8), "never closed");
    }
    assert!(
        closed,
        "the whole packet but one byte was trickled and the connection stayed"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "not before the timeout"
    );
    // CONNACK, then DISCONNECT 0x8D.
    assert!(
        received.windows(3).any(|w| w == [0xE0, 0x01, 0x8D]),
        "{received:02x?}"
    );
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn an_http_request_head_over_the_limit_gets_431() {
    let broker = start_broker(|config| config.limits.max_http_header_size = 1024).await;
    let addr = broker
        .local_addr(rallymq_broker::ListenerKind::WebSocket)
        .unwrap();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Padding: {}\r\n\r\n",
        "y".repeat(4096)
    );
    let _ = stream.write_all(request.as_bytes()).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 431"), "{response}");
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn subscriptions_per_client_are_capped() {
    let broker = start_broker(|config| config.limits.max_subscriptions = 2).await;
    let addr = tcp_addr(&broker);
    for (version, refused) in [
        (V5, ReasonCode::QuotaExceeded),
        (V311, ReasonCode::UnspecifiedError),
    ] {
        let (mut client, _) = TestClient::tcp(addr, connect_packet(version, "greedy")).await;
        let codes = client
            .subscribe(vec![
                subscription("a", QoS::AtMostOnce),
                subscription("b", QoS::AtMostOnce),
                subscription("c", QoS::AtMostOnce),
            ])
            .await;
        assert_eq!(
            codes,
            [ReasonCode::Success, ReasonCode::Success, refused],
            "{version:?}"
        );
        // Replacing a subscription it holds is no new one.
        let codes = client
            .subscribe(vec![subscription("a", QoS::AtLeastOnce)])
            .await;
        assert_eq!(codes, [ReasonCode::GrantedQoS1], "{version:?}");
        client.disconnect(ReasonCode::Success).await;
    }
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn topics_over_the_level_or_length_limit_are_refused() {
    let broker = start_broker(|config| {
        config.limits.max_topic_levels = 3;
        config.limits.max_topic_length = 20;
    })
    .await;
    let addr = tcp_addr(&broker);
    let (mut client, connected) = TestClient::tcp(addr, connect_packet(V5, "deep")).await;
    assert!(matches!(connected, ClientEvent::Connected { .. }));
    let codes = client
        .subscribe(vec![
            subscription("a/b/#", QoS::AtLeastOnce),
            subscription("a/b/c/#", QoS::AtLeastOnce),
            subscription("a/bbbbbbbbbbbbbbbbbbbbbbbb", QoS::AtLeastOnce),
        ])
        .await;
    assert_eq!(
        codes,
        [
            ReasonCode::GrantedQoS1,
            ReasonCode::TopicFilterInvalid,
            ReasonCode::TopicFilterInvalid
        ]
    );
    assert_eq!(
        client
            .publish(message("a/b/c/d", "too deep", QoS::AtLeastOnce))
            .await,
        ReasonCode::TopicNameInvalid
    );
    assert_eq!(
        client
            .publish(message("a/b/c", "fine", QoS::AtLeastOnce))
            .await,
        ReasonCode::Success
    );
    let got = client.recv().await.expect("the message within the limits");
    assert_eq!(support::payload_str(&got), "fine");
    client.expect_silence(SHORT).await;
    broker.shutdown(SHORT).await;
}
