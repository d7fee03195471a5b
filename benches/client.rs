//! The load tools' MQTT 3.1.1 client side, on our codec and our WebSocket crate: connect,
//! subscribe, and the packet reader the tools' loops build on.

use std::io;
use std::net::SocketAddr;

use bytes::BytesMut;
use rallymq_codec::{
    Connect, Disconnect, Limits, MqttString, Packet, PacketId, ProtocolVersion, QoS, ReasonCode,
    Subscribe, SubscribeProperties, Subscription, TopicFilter, Unsubscribe, UnsubscribeProperties,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// Connections a load tool opens at once.
pub const CONNECT_CONCURRENCY: usize = 64;

/// The protocol version every load client speaks.
pub const VERSION: ProtocolVersion = ProtocolVersion::V3_1_1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
/// How a load client reaches the broker.
pub enum Transport {
    /// MQTT over TCP.
    Tcp,
    /// MQTT over WebSockets (`ws://ADDR/mqtt`, subprotocol `mqtt`).
    Ws,
}

impl Transport {
    /// Its name in options and reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Ws => "ws",
        }
    }

    /// The transport named `text`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "tcp" | "mqtt" => Some(Self::Tcp),
            "ws" => Some(Self::Ws),
            _ => None,
        }
    }
}

/// A byte stream to the broker.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}
/// A connection's byte stream, TCP or WebSocket.
pub type Io = Box<dyn Stream>;

/// An error for bytes or values that are not what MQTT allows.
pub fn invalid(error: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error.to_string())
}

/// Encodes `packet` as MQTT 3.1.1 at the end of `out`.
pub fn encode(packet: &Packet, out: &mut BytesMut) {
    // Every packet here is built from validated parts, so encoding cannot fail; if it ever
    // did, the run would show it as missing traffic, not as a wrong number.
    let _ = packet.encode(VERSION, out);
}

/// Opens the transport: plain TCP, or a WebSocket on `/mqtt` with subprotocol `mqtt` whose
/// binary messages carry the MQTT byte stream.
pub async fn open(addr: SocketAddr, transport: Transport) -> io::Result<Io> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    match transport {
        Transport::Tcp => Ok(Box::new(tcp)),
        Transport::Ws => Ok(Box::new(
            crate::mqtt_over_websocket(tcp, &addr.to_string()).await?,
        )),
    }
}

/// Reads until one whole packet is decoded.
pub async fn read_packet(io: &mut Io, buf: &mut BytesMut) -> io::Result<Packet> {
    let limits = Limits::default();
    loop {
        if let Some(packet) = rallymq_codec::decode(buf, VERSION, &limits).map_err(invalid)? {
            return Ok(packet);
        }
        if io.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// An MQTT 3.1.1 connection after CONNACK, with what was read past it.
pub struct Client {
    /// The stream.
    pub io: Io,
    /// Bytes read and not decoded yet.
    pub buf: BytesMut,
    /// The CONNACK's Session Present flag: the broker resumed a stored session.
    pub session_present: bool,
}

impl Client {
    /// Connects with Clean Session `clean`; `false` asks for a persistent session.
    pub async fn connect(
        addr: SocketAddr,
        transport: Transport,
        client_id: &str,
        clean: bool,
    ) -> io::Result<Self> {
        let mut io = open(addr, transport).await?;
        let mut connect = Connect::new(VERSION, MqttString::new(client_id).map_err(invalid)?);
        connect.clean_start = clean;
        let mut out = BytesMut::new();
        encode(&Packet::from(connect), &mut out);
        io.write_all(&out).await?;
        io.flush().await?;
        let mut buf = BytesMut::new();
        match read_packet(&mut io, &mut buf).await? {
            Packet::ConnAck(ack) if ack.reason_code == ReasonCode::Success => Ok(Self {
                io,
                buf,
                session_present: ack.session_present,
            }),
            other => Err(invalid(format!("CONNECT answered with {other:?}"))),
        }
    }

    /// Sends DISCONNECT and closes: a persistent session goes offline, with no will.
    pub async fn disconnect(mut self) -> io::Result<()> {
        let mut out = BytesMut::new();
        encode(
            &Packet::Disconnect(Disconnect::new(ReasonCode::Success)),
            &mut out,
        );
        self.io.write_all(&out).await?;
        self.io.shutdown().await
    }

    /// Subscribes to `filter` at `qos` and waits for the SUBACK.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> io::Result<()> {
        self.subscribe_all(&[filter], qos).await
    }

    /// Subscribes to every one of `filters` at `qos` in one SUBSCRIBE and waits for the
    /// SUBACK; fails if any is refused.
    pub async fn subscribe_all(&mut self, filters: &[impl AsRef<str>], qos: QoS) -> io::Result<()> {
        let subscribe = Subscribe {
            packet_id: PacketId::new(1).ok_or_else(|| invalid("packet id 0"))?,
            properties: SubscribeProperties::default().into(),
            subscriptions: filters
                .iter()
                .map(|filter| {
                    TopicFilter::new(filter.as_ref()).map(|filter| Subscription::new(filter, qos))
                })
                .collect::<Result<_, _>>()
                .map_err(invalid)?,
        };
        let ack = self.request(&Packet::Subscribe(subscribe)).await?;
        match ack {
            Packet::SubAck(ack) if ack.reason_codes.iter().any(|code| code.is_error()) => {
                Err(invalid(format!("SUBSCRIBE refused: {ack:?}")))
            }
            _ => Ok(()),
        }
    }

    /// Unsubscribes from every one of `filters` in one UNSUBSCRIBE and waits for the UNSUBACK.
    pub async fn unsubscribe_all(&mut self, filters: &[impl AsRef<str>]) -> io::Result<()> {
        let unsubscribe = Unsubscribe {
            packet_id: PacketId::new(1).ok_or_else(|| invalid("packet id 0"))?,
            properties: UnsubscribeProperties::default().into(),
            filters: filters
                .iter()
                .map(|filter| TopicFilter::new(filter.as_ref()))
                .collect::<Result<_, _>>()
                .map_err(invalid)?,
        };
        self.request(&Packet::Unsubscribe(unsubscribe))
            .await
            .map(drop)
    }

    /// Sends a SUBSCRIBE or UNSUBSCRIBE and returns its acknowledgement (SUBACK or UNSUBACK),
    /// skipping any other packet before it.
    async fn request(&mut self, request: &Packet) -> io::Result<Packet> {
        let mut out = BytesMut::new();
        encode(request, &mut out);
        self.io.write_all(&out).await?;
        self.io.flush().await?;
        loop {
            let packet = read_packet(&mut self.io, &mut self.buf).await?;
            if matches!(packet, Packet::SubAck(_) | Packet::UnsubAck(_)) {
                return Ok(packet);
            }
        }
    }
}

/// Connects a client for each of `ids`, [`CONNECT_CONCURRENCY`] at a time, with Clean Session
/// `clean`; fails if any fails.
pub async fn connect_all(
    addr: SocketAddr,
    transport: Transport,
    ids: Vec<String>,
    clean: bool,
) -> io::Result<Vec<Client>> {
    let gate = std::sync::Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let tasks: Vec<JoinHandle<io::Result<Client>>> = ids
        .into_iter()
        .map(|id| {
            let gate = gate.clone();
            tokio::spawn(async move {
                let _permit = gate.acquire_owned().await.map_err(io::Error::other)?;
                Client::connect(addr, transport, &id, clean).await
            })
        })
        .collect();
    let mut clients = Vec::with_capacity(tasks.len());
    for task in tasks {
        clients.push(task.await.map_err(io::Error::other)??);
    }
    Ok(clients)
}
