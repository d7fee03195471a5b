//! MQTT over WebSockets and the HTTP side of the WebSocket port.

mod support;

use std::time::Duration;

use rallymq_broker::ListenerKind;
use rallymq_codec::{ProtocolVersion, QoS};
use rallymq_session::ClientEvent;
use rallymq_websocket::tokio::{ByteStream, connect};
use rallymq_websocket::{ClientRequest, Config};
use support::{
    TestClient, connect_packet, message, payload_str, start_broker, subscription, tcp_addr,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SHORT: Duration = Duration::from_millis(300);

async fn ws_stream(
    addr: std::net::SocketAddr,
    path: &str,
    subprotocol: &str,
) -> (ByteStream<TcpStream>, Option<String>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let request = ClientRequest::new(&addr.to_string(), path)
        .unwrap()
        .with_subprotocols(&[subprotocol])
        .unwrap();
    let (ws, response) = connect(tcp, &request, Config::default())
        .await
        .expect("upgrade");
    (
        ws.into_byte_stream(),
        response.subprotocol().map(str::to_owned),
    )
}

async fn http_get(addr: std::net::SocketAddr, path: &str, extra: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn mqtt_over_websocket_talks_to_mqtt_over_tcp() {
    let broker = start_broker(|_| {}).await;
    let ws_addr = broker.local_addr(ListenerKind::WebSocket).unwrap();
    let (stream, picked) = ws_stream(ws_addr, "/mqtt", "mqtt").await;
    assert_eq!(
        picked.as_deref(),
        Some("mqtt"),
        "the response echoes the subprotocol"
    );
    let (mut ws_client, connected) =
        TestClient::over(stream, connect_packet(ProtocolVersion::V5, "browser")).await;
    assert!(matches!(connected, ClientEvent::Connected { .. }));
    ws_client
        .subscribe(vec![subscription("score/#", QoS::AtLeastOnce)])
        .await;

    let (mut tcp_client, _) = TestClient::tcp(
        tcp_addr(&broker),
        connect_packet(ProtocolVersion::V3_1_1, "native"),
    )
    .await;
    tcp_client
        .subscribe(vec![subscription("reply", QoS::AtLeastOnce)])
        .await;
    tcp_client
        .publish(message("score/court-1", "15-0", QoS::AtLeastOnce))
        .await;
    assert_eq!(
        payload_str(&ws_client.recv().await.expect("over WebSocket")),
        "15-0"
    );
    // A large message spans many frames and reads.
    let big = "x".repeat(200_000);
    ws_client
        .publish(message("reply", &big, QoS::ExactlyOnce))
        .await;
    assert_eq!(
        tcp_client
            .recv()
            .await
            .expect("from WebSocket")
            .payload
            .len(),
        200_000
    );
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn variant_subprotocol_names_and_the_root_path_are_accepted() {
    let broker = start_broker(|_| {}).await;
    let ws_addr = broker.local_addr(ListenerKind::WebSocket).unwrap();
    for (path, offered) in [
        ("/", "mqttv3.1"),
        ("/mqtt", "mqttv5"),
        ("/mqtt", "mqtt-v3.1.1"),
    ] {
        let (stream, picked) = ws_stream(ws_addr, path, offered).await;
        assert_eq!(picked.as_deref(), Some(offered));
        let version = if offered == "mqttv3.1" {
            ProtocolVersion::V3_1
        } else {
            ProtocolVersion::V3_1_1
        };
        let (_client, connected) =
            TestClient::over(stream, connect_packet(version, "variant")).await;
        assert!(
            matches!(connected, ClientEvent::Connected { .. }),
            "{path} {offered}: {connected:?}"
        );
    }
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn several_packets_in_one_frame_and_one_packet_across_frames() {
    let broker = start_broker(|_| {}).await;
    let ws_addr = broker.local_addr(ListenerKind::WebSocket).unwrap();
    let tcp = TcpStream::connect(ws_addr).await.unwrap();
    let request = ClientRequest::new(&ws_addr.to_string(), "/mqtt")
        .unwrap()
        .with_subprotocols(&["mqtt"])
        .unwrap();
    let (mut ws, _) = connect(tcp, &request, Config::default()).await.unwrap();
    let version = ProtocolVersion::V3_1_1;
    let connect_bytes = rallymq_codec::Packet::from(connect_packet(version, "frames"))
        .to_bytes(version)
        .unwrap();
    // CONNECT split over three frames, then PINGREQ twice in one frame.
    ws.send_binary(&connect_bytes[..3]).await.unwrap();
    ws.send_binary(&connect_bytes[3..10]).await.unwrap();
    ws.send_binary(&connect_bytes[10..]).await.unwrap();
    ws.send_binary(&[0xC0, 0x00, 0xC0, 0x00]).await.unwrap();
    let mut received = Vec::new();
    while received.len() < 8 {
        let event = tokio::time::timeout(Duration::from_secs(5), ws.recv())
            .await
            .expect("in time");
        match event {
            Some(Ok(rallymq_websocket::Event::Binary(data))) => received.extend_from_slice(&data),
            Some(Ok(rallymq_websocket::Event::BinaryChunk { data, .. })) => {
                received.extend_from_slice(&data)
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        received,
        [0x20, 0x02, 0x00, 0x00, 0xD0, 0x00, 0xD0, 0x00],
        "CONNACK, PINGRESP, PINGRESP"
    );
    broker.shutdown(SHORT).await;
}

#[tokio::test]
async fn http_serves_the_index_and_the_client_and_refuses_bad_upgrades() {
    let broker = start_broker(|_| {}).await;
    let ws_addr = broker.local_addr(ListenerKind::WebSocket).unwrap();
    let index = http_get(ws_addr, "/", "").await;
    assert!(index.starts_with("HTTP/1.1 200"), "{index}");
    assert!(index.contains("text/html"));
    let client = http_get(ws_addr, "/rallymq.js", "").await;
    assert!(
        client.starts_with("HTTP/1.1 200") && client.contains("javascript"),
        "{client}"
    );
    assert!(
        http_get(ws_addr, "/nothing", "")
            .await
            .starts_with("HTTP/1.1 404")
    );
    // An upgrade without a supported subprotocol, and one with a wrong version.
    let key = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let no_protocol = http_get(
        ws_addr,
        "/mqtt",
        &format!("{key}Sec-WebSocket-Version: 13\r\n"),
    )
    .await;
    assert!(no_protocol.starts_with("HTTP/1.1 400"), "{no_protocol}");
    let old_version = http_get(
        ws_addr,
        "/mqtt",
        &format!("{key}Sec-WebSocket-Version: 8\r\nSec-WebSocket-Protocol: mqtt\r\n"),
    )
    .await;
    assert!(old_version.starts_with("HTTP/1.1 426"), "{old_version}");
    assert!(
        old_version
            .to_ascii_lowercase()
            .contains("sec-websocket-version: 13")
    );
    broker.shutdown(SHORT).await;
}

/// Sockets on the HTTP/WebSocket port that never complete a request (silent, half a request
/// line, a handshake trickled a byte at a time) are closed after the CONNECT timeout, as MQTT
/// connections that send no CONNECT are: they cannot hold connection slots for ever.
#[tokio::test]
async fn idle_and_trickling_http_sockets_are_closed_after_the_connect_timeout() {
    let broker = start_broker(|config| {
        config.limits.connect_timeout = Duration::from_secs(1);
    })
    .await;
    let addr = broker.local_addr(ListenerKind::WebSocket).unwrap();
    let silent = TcpStream::connect(addr).await.unwrap();
    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(b"GET /mqtt HTTP/1.1\r\n").await.unwrap();
    let mut trickle = TcpStream::connect(addr).await.unwrap();
    let request = b"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n";
    let trickling = tokio::spawn(async move {
        for byte in request {
            if trickle.write_all(&[*byte]).await.is_err() {
                return trickle;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        trickle
    });
    let closed_within = |mut socket: TcpStream| async move {
        let mut buf = [0u8; 256];
        let started = std::time::Instant::now();
        loop {
            match tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
                Ok(Ok(_)) => continue,
                Err(_) => return None,
            }
        }
    };
    for (what, socket) in [("silent", silent), ("half a request line", half)] {
        let closed = closed_within(socket).await;
        assert!(
            closed.is_some_and(|after| after < Duration::from_secs(3)),
            "{what}: {closed:?}"
        );
    }
    let trickle = trickling.await.unwrap();
    assert!(
        closed_within(trickle).await.is_some(),
        "trickling: still open"
    );
    broker.shutdown(SHORT).await;
}

/// The status line and headers of the answer to a GET (an upgraded connection stays open, so
/// the response is read up to its blank line).
async fn response_head(addr: std::net::SocketAddr, path: &str, extra: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut byte))
            .await
            .expect("an answer in time")
            .unwrap();
        if n == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A WebSocket listener with an Origin allow-list upgrades pages of those origins (and clients
/// that send no Origin, which are not browsers) and answers others 403.
#[tokio::test]
async fn websocket_origins_outside_the_allow_list_get_403() {
    let broker = start_broker(|config| {
        config.allowed_origins = vec!["https://scores.example.com".to_owned()];
    })
    .await;
    let addr = broker.local_addr(ListenerKind::WebSocket).unwrap();
    let upgrade = |origin: Option<&str>| {
        let origin = origin.map_or(String::new(), |origin| format!("Origin: {origin}\r\n"));
        format!(
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: mqtt\r\n{origin}"
        )
    };
    for (origin, status) in [
        (Some("https://scores.example.com"), "101"),
        (Some("HTTPS://SCORES.EXAMPLE.COM"), "101"),
        (None, "101"),
        (Some("https://evil.example.net"), "403"),
        (Some("null"), "403"),
    ] {
        let response = response_head(addr, "/mqtt", &upgrade(origin)).await;
        assert!(
            response.starts_with(&format!("HTTP/1.1 {status}")),
            "{origin:?}: {response}"
        );
    }
    broker.shutdown(SHORT).await;
}
