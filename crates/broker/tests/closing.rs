//! The broker's last word reaches a client that is still writing: after a DISCONNECT or a
//! refusing CONNACK the broker shuts its write side and reads (discarding) what the client
//! still sends, for a bounded time, before it closes. Closing a socket with unread input makes
//! the kernel answer with a reset, which can destroy what the client had not read yet.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rallymq_broker::ListenerKind;
use rallymq_codec::{
    Connect, Decoder, Limits, MqttString, Packet, PacketId, ProtocolVersion, Publish, QoS,
    ReasonCode, TopicName,
};
use rallymq_websocket::tokio::connect;
use rallymq_websocket::{ClientRequest, Config};
use support::start_broker;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const V5: ProtocolVersion = ProtocolVersion::V5;

/// How long the client keeps writing without reading, at most.
const WRITING: Duration = Duration::from_millis(500);
/// Most PUBLISH packets the client writes.
const MAX_PUBLISHES: u16 = 20_000;

fn encode(packet: Packet) -> Bytes {
    let mut buf = BytesMut::new();
    packet.encode(V5, &mut buf).unwrap();
    buf.freeze()
}

fn connect_bytes(client_id: &str, tune: impl FnOnce(&mut Connect)) -> Bytes {
    let mut connect = Connect::new(V5, MqttString::new(client_id).unwrap());
    connect.keep_alive = 30;
    tune(&mut connect);
    encode(Packet::from(connect))
}

/// A QoS 2 PUBLISH with packet identifier `id`.
fn publish_bytes(id: u16) -> Bytes {
    let mut publish = Publish::new(TopicName::new("closing/test").unwrap(), &b"0123456789"[..]);
    publish.qos = QoS::ExactlyOnce;
    publish.packet_id = PacketId::new(id);
    encode(Packet::Publish(publish))
}

/// Writes `first`, then QoS 2 PUBLISHes without reading anything, until a write fails or
/// `WRITING` passes; then reads until the end of the stream or an error. Returns the packets
/// decoded from what arrived, after asserting that no write failed: a client that stops at a
/// failed write (as paho-mqtt does) would never read them.
async fn write_without_reading<IO: AsyncRead + AsyncWrite + Unpin>(
    mut io: IO,
    first: Bytes,
) -> Vec<Packet> {
    io.write_all(&first).await.unwrap();
    let started = Instant::now();
    let mut write_error = None;
    for id in 1..=MAX_PUBLISHES {
        if started.elapsed() >= WRITING {
            break;
        }
        match tokio::time::timeout(WRITING, io.write_all(&publish_bytes(id))).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                write_error = Some(error);
                break;
            }
            Err(_) => break,
        }
    }
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, io.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        received.extend_from_slice(&buf[..n]);
    }
    assert!(
        write_error.is_none(),
        "a write failed within {WRITING:?} ({write_error:?}) after receiving {} bytes",
        received.len()
    );
    let mut decoder = Decoder::with_version(V5, Limits::default());
    let mut bytes = BytesMut::from(&received[..]);
    let mut packets = Vec::new();
    while let Ok(Some(packet)) = decoder.decode(&mut bytes) {
        packets.push(packet);
    }
    packets
}

fn disconnect_reason(packets: &[Packet]) -> Option<ReasonCode> {
    packets.iter().find_map(|packet| match packet {
        Packet::Disconnect(disconnect) => Some(disconnect.reason_code),
        _ => None,
    })
}

fn connack_reason(packets: &[Packet]) -> Option<ReasonCode> {
    packets.iter().find_map(|packet| match packet {
        Packet::ConnAck(connack) => Some(connack.reason_code),
        _ => None,
    })
}

async fn ws_stream(addr: SocketAddr) -> impl AsyncRead + AsyncWrite + Unpin {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let request = ClientRequest::new(&addr.to_string(), "/mqtt")
        .unwrap()
        .with_subprotocols(&["mqtt"])
        .unwrap();
    let (ws, _) = connect(tcp, &request, Config::default())
        .await
        .expect("upgrade");
    ws.into_byte_stream()
}

/// Five rounds: a reset does not destroy the DISCONNECT every time.
const ROUNDS: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_maximum_exceeded_0x93_reaches_a_client_that_keeps_writing_over_tcp() {
    let broker = start_broker(|config| config.limits.receive_maximum = 4).await;
    let addr = broker.local_addr(ListenerKind::Tcp).unwrap();
    for round in 0..ROUNDS {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let packets =
            write_without_reading(tcp, connect_bytes(&format!("writer-{round}"), |_| {})).await;
        assert_eq!(connack_reason(&packets), Some(ReasonCode::Success));
        assert_eq!(
            disconnect_reason(&packets),
            Some(ReasonCode::ReceiveMaximumExceeded),
            "round {round}: the DISCONNECT was lost; received {packets:?}"
        );
    }
    broker.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_maximum_exceeded_0x93_reaches_a_client_that_keeps_writing_over_websockets() {
    let broker = start_broker(|config| config.limits.receive_maximum = 4).await;
    let addr = broker.local_addr(ListenerKind::WebSocket).unwrap();
    for round in 0..ROUNDS {
        let ws = ws_stream(addr).await;
        let packets =
            write_without_reading(ws, connect_bytes(&format!("ws-writer-{round}"), |_| {})).await;
        assert_eq!(
            disconnect_reason(&packets),
            Some(ReasonCode::ReceiveMaximumExceeded),
            "round {round}: the DISCONNECT was lost; received {packets:?}"
        );
    }
    broker.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_connack_reaches_a_client_that_keeps_writing() {
    let broker = start_broker(|_| {}).await;
    let addr = broker.local_addr(ListenerKind::Tcp).unwrap();
    for round in 0..ROUNDS {
        let tcp = TcpStream::connect(addr).await.unwrap();
        // An authentication method the broker does not support: refused with 0x8C.
        let connect = connect_bytes(&format!("refused-{round}"), |connect| {
            connect.properties.authentication_method =
                Some(MqttString::new("SCRAM-SHA-1").unwrap());
        });
        let packets = write_without_reading(tcp, connect).await;
        assert_eq!(
            connack_reason(&packets),
            Some(ReasonCode::BadAuthenticationMethod),
            "round {round}: the CONNACK was lost; received {packets:?}"
        );
    }
    broker.shutdown(Duration::from_secs(1)).await;
}
