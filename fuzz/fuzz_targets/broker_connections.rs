//! The broker's connection handling, in-process and without sockets: several clients at once
//! over in-memory pipes (`BrokerHandle::serve_connection` over `tokio::io::duplex`), each
//! writing valid packets of a few kinds and arbitrary bytes, with client ids from a small set
//! so that sessions are taken over, resumed and shared between clients.
//!
//! One broker lives for the whole run, on a current-thread runtime made once: what an input
//! leaves behind (sessions, subscriptions, retained messages) meets the next. After each input
//! every client leaves and the runtime runs until the connections are idle; then a probe client
//! must be served (CONNECT answered with CONNACK 0x00) and every connection's task must have
//! ended. A
//! panic anywhere (libFuzzer aborts on one, in any task) or a broker that stops serving is a
//! finding.
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use rallymq_broker::{Broker, BrokerConfig, BrokerHandle};
use rallymq_codec::{
    Ack, Connect, Disconnect, MqttString, Packet, PacketId, ProtocolVersion, Publish, QoS,
    ReasonCode, Subscribe, Subscription, SubscriptionOptions, TopicFilter, TopicName, Unsubscribe,
    Will,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::runtime::Runtime;

/// Clients at once.
const CLIENTS: usize = 4;
/// Client ids: few, so that connections take each other's sessions over.
const CLIENT_IDS: [&str; 4] = ["a", "b", "c", ""];
const TOPICS: [&str; 4] = ["t/a", "t/b", "x", "$SYS/x"];
const FILTERS: [&str; 7] = ["t/#", "t/+", "t/a", "#", "$share/g/t/#", "+/+", "x"];
/// The pipe's capacity each way.
const PIPE: usize = 16 * 1024;
/// Runtime passes in a row with nothing read for the connections to count as idle.
const IDLE_PASSES: usize = 16;
/// Most runtime passes a wait for idleness takes.
const MAX_PASSES: usize = 2_000;

#[derive(Arbitrary, Debug)]
enum Op {
    /// Opens a connection in this client's slot (the one there is dropped).
    Open {
        client: u8,
    },
    /// A valid CONNECT.
    Connect {
        client: u8,
        id: u8,
        level: u8,
        clean_start: bool,
        keep_alive: u8,
        session_expiry: u8,
        will: Option<(u8, u8, bool)>,
    },
    Subscribe {
        client: u8,
        filter: u8,
        qos: u8,
        no_local: bool,
        packet_id: u8,
    },
    Unsubscribe {
        client: u8,
        filter: u8,
        packet_id: u8,
    },
    Publish {
        client: u8,
        topic: u8,
        qos: u8,
        retain: bool,
        packet_id: u8,
        payload: Vec<u8>,
    },
    /// PUBACK, PUBREC, PUBREL or PUBCOMP (by `kind`) for a packet identifier.
    Ack {
        client: u8,
        kind: u8,
        packet_id: u8,
    },
    Ping {
        client: u8,
    },
    Disconnect {
        client: u8,
        reason: u8,
    },
    /// Bytes as they are.
    Raw {
        client: u8,
        bytes: Vec<u8>,
    },
    /// The client's end dropped (the network connection closing).
    Close {
        client: u8,
    },
    /// The runtime runs until the connections are idle.
    Settle,
}

#[derive(Arbitrary, Debug)]
struct Input {
    ops: Vec<Op>,
}

/// A client's end of its pipe, and the MQTT version of its last CONNECT.
struct Client {
    io: DuplexStream,
    version: ProtocolVersion,
}

/// The runtime, the broker, and how many tasks the broker runs with no connection open.
fn runtime_and_broker() -> &'static (Runtime, BrokerHandle, usize) {
    static BROKER: OnceLock<(Runtime, BrokerHandle, usize)> = OnceLock::new();
    BROKER.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let mut config = BrokerConfig::without_listeners();
        config.sys_interval = None;
        config.limits.max_packet_size = 8 * 1024;
        config.limits.receive_maximum = 4;
        config.limits.max_in_flight = 4;
        // Small, so that queues fill and publishers meet back-pressure.
        config.limits.max_queued_messages = 32;
        // An empty client id with a Session Expiry gets a new persistent session each time
        // (MQTT-3.1.3-6): short-lived, so that a long run's memory stays bounded.
        config.limits.max_session_expiry = 30;
        let broker = runtime
            .block_on(Broker::start(config))
            .expect("the broker starts");
        let tasks = runtime.metrics().num_alive_tasks();
        (runtime, broker, tasks)
    })
}

fn peer() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1))
}

fn packet_id(n: u8) -> PacketId {
    // 0 is no packet identifier; 1..=256 are.
    PacketId::new(u16::from(n) + 1).expect("non-zero")
}

fn qos(n: u8) -> QoS {
    [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][usize::from(n % 3)]
}

fn level(n: u8) -> ProtocolVersion {
    [
        ProtocolVersion::V3_1,
        ProtocolVersion::V3_1_1,
        ProtocolVersion::V5,
    ][usize::from(n % 3)]
}

fn topic(n: u8) -> TopicName {
    TopicName::new(TOPICS[usize::from(n) % TOPICS.len()]).expect("a valid topic")
}

fn filter(n: u8) -> TopicFilter {
    TopicFilter::new(FILTERS[usize::from(n) % FILTERS.len()]).expect("a valid filter")
}

fn connect(id: u8, level_n: u8, clean_start: bool, keep_alive: u8, expiry: u8) -> Connect {
    let version = level(level_n);
    let client_id = CLIENT_IDS[usize::from(id) % CLIENT_IDS.len()];
    let mut connect = Connect::new(version, MqttString::new(client_id).expect("a valid id"));
    connect.clean_start = clean_start;
    connect.keep_alive = u16::from(keep_alive);
    if version.is_v5() {
        connect.properties.session_expiry_interval = match expiry % 3 {
            0 => None,
            1 => Some(60),
            _ => Some(u32::MAX),
        };
    }
    connect
}

/// The bytes of `op` for its client, if it writes any.
fn bytes_of(op: Op, version: ProtocolVersion) -> Option<Bytes> {
    let packet = match op {
        Op::Connect {
            id,
            level,
            clean_start,
            keep_alive,
            session_expiry,
            will,
            ..
        } => {
            let mut connect = connect(id, level, clean_start, keep_alive, session_expiry);
            if let Some((will_topic, will_qos, retain)) = will {
                let mut will = Will::new(topic(will_topic), &b"gone"[..]);
                will.qos = qos(will_qos);
                will.retain = retain;
                // No Will Delay: a will waiting on its delay keeps its connection's task
                // (rightly) after the client has left, which the end of each input checks
                // against.
                connect.will = Some(will);
            }
            let version = connect.protocol;
            return Packet::from(connect).to_bytes(version).ok();
        }
        Op::Subscribe {
            filter: f,
            qos: q,
            no_local,
            packet_id: id,
            ..
        } => Packet::Subscribe(Subscribe {
            packet_id: packet_id(id),
            properties: Default::default(),
            subscriptions: vec![Subscription {
                filter: filter(f),
                options: SubscriptionOptions {
                    qos: qos(q),
                    // No Local on a shared subscription is a Protocol Error (MQTT-3.8.3-4): sent
                    // anyway, the broker must cope.
                    no_local: no_local && version.is_v5(),
                    ..Default::default()
                },
            }],
        }),
        Op::Unsubscribe {
            filter: f,
            packet_id: id,
            ..
        } => Packet::Unsubscribe(Unsubscribe {
            packet_id: packet_id(id),
            properties: Default::default(),
            filters: vec![filter(f)],
        }),
        Op::Publish {
            topic: t,
            qos: q,
            retain,
            packet_id: id,
            payload,
            ..
        } => {
            let mut publish = Publish::new(topic(t), payload);
            publish.qos = qos(q);
            publish.retain = retain;
            if publish.qos != QoS::AtMostOnce {
                publish.packet_id = Some(packet_id(id));
            }
            Packet::Publish(publish)
        }
        Op::Ack {
            kind,
            packet_id: id,
            ..
        } => {
            let ack = Ack::new(packet_id(id));
            match kind % 4 {
                0 => Packet::PubAck(ack),
                1 => Packet::PubRec(ack),
                2 => Packet::PubRel(ack),
                _ => Packet::PubComp(ack),
            }
        }
        Op::Ping { .. } => Packet::PingReq,
        Op::Disconnect { reason, .. } => Packet::Disconnect(Disconnect::new(
            // Normal disconnection, or "with will message".
            if reason % 2 == 0 {
                ReasonCode::Success
            } else {
                ReasonCode::DisconnectWithWillMessage
            },
        )),
        Op::Raw { bytes, .. } => return Some(Bytes::from(bytes)),
        Op::Open { .. } | Op::Close { .. } | Op::Settle => return None,
    };
    packet.to_bytes(version).ok()
}

fn slot(op: &Op) -> Option<usize> {
    let client = match op {
        Op::Open { client }
        | Op::Connect { client, .. }
        | Op::Subscribe { client, .. }
        | Op::Unsubscribe { client, .. }
        | Op::Publish { client, .. }
        | Op::Ack { client, .. }
        | Op::Ping { client }
        | Op::Disconnect { client, .. }
        | Op::Raw { client, .. }
        | Op::Close { client } => *client,
        Op::Settle => return None,
    };
    Some(usize::from(client) % CLIENTS)
}

/// Reads and discards what the broker has written to each client, without waiting; returns
/// how many bytes that was. A client whose pipe the broker closed stays (reading it gives 0).
fn drain(clients: &mut [Option<Client>]) -> usize {
    let mut buf = [0u8; 4096];
    let mut total = 0;
    for client in clients.iter_mut().flatten() {
        loop {
            // A read that would wait is not waited for: `now_or_never` polls it once.
            match futures_now(client.io.read(&mut buf)) {
                Some(Ok(n)) if n > 0 => total += n,
                _ => break,
            }
        }
    }
    total
}

/// Polls `future` once.
fn futures_now<F: Future>(future: F) -> Option<F::Output> {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut future = std::pin::pin!(future);
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => None,
    }
}

/// Runs the runtime, draining what the broker writes, until `IDLE_PASSES` passes in a row
/// read nothing (or `MAX_PASSES` passed).
async fn settle(clients: &mut [Option<Client>]) {
    let mut idle = 0;
    for _ in 0..MAX_PASSES {
        tokio::task::yield_now().await;
        if drain(clients) == 0 {
            idle += 1;
            if idle >= IDLE_PASSES {
                return;
            }
        } else {
            idle = 0;
        }
    }
}

/// Writes `bytes` as far as the pipe takes them while the broker reads, within bounds: a
/// broker that stopped reading (back-pressure) leaves the rest unwritten.
async fn write(clients: &mut [Option<Client>], index: usize, bytes: &[u8]) {
    let mut written = 0;
    for _ in 0..64 {
        if written == bytes.len() {
            return;
        }
        let Some(client) = clients[index].as_mut() else {
            return;
        };
        match futures_now(client.io.write(&bytes[written..])) {
            Some(Ok(n)) if n > 0 => written += n,
            Some(_) => return,
            None => {
                tokio::task::yield_now().await;
                drain(clients);
            }
        }
    }
}

fn open(broker: &BrokerHandle) -> Client {
    let (client, server) = tokio::io::duplex(PIPE);
    tokio::spawn(broker.serve_connection(server, peer()));
    Client {
        io: client,
        version: ProtocolVersion::V5,
    }
}

/// A new client connects as "probe" and must get CONNACK 0x00.
async fn probe(broker: &BrokerHandle) {
    let mut client = open(broker);
    let connect = Connect::new(
        ProtocolVersion::V3_1_1,
        MqttString::new("probe").expect("a valid id"),
    );
    let bytes = Packet::from(connect)
        .to_bytes(ProtocolVersion::V3_1_1)
        .expect("a valid CONNECT");
    client.io.write_all(&bytes).await.expect("the probe writes");
    let mut connack = [0u8; 4];
    let mut read = 0;
    for _ in 0..MAX_PASSES {
        tokio::task::yield_now().await;
        if let Some(Ok(n)) = futures_now(client.io.read(&mut connack[read..])) {
            assert!(n > 0, "the broker closed the probe's connection");
            read += n;
            if read == connack.len() {
                break;
            }
        }
    }
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "the probe is not served");
}

fuzz_target!(|input: Input| {
    let (runtime, broker, tasks) = runtime_and_broker();
    runtime.block_on(async {
        let mut clients: Vec<Option<Client>> = (0..CLIENTS).map(|_| None).collect();
        for op in input.ops.into_iter().take(64) {
            let index = slot(&op);
            match (&op, index) {
                (Op::Settle, _) => settle(&mut clients).await,
                (Op::Open { .. }, Some(index)) => clients[index] = Some(open(broker)),
                (Op::Close { .. }, Some(index)) => clients[index] = None,
                (_, Some(index)) => {
                    if clients[index].is_none() {
                        clients[index] = Some(open(broker));
                    }
                    if let Op::Connect { level: n, .. } = &op
                        && let Some(client) = clients[index].as_mut()
                    {
                        client.version = level(*n);
                    }
                    let version = clients[index]
                        .as_ref()
                        .map_or(ProtocolVersion::V5, |client| client.version);
                    if let Some(bytes) = bytes_of(op, version) {
                        write(&mut clients, index, &bytes).await;
                    }
                }
                _ => {}
            }
            // What the broker wrote is read (and dropped) as it comes, so that no connection
            // waits on a full pipe.
            drain(&mut clients);
        }
        settle(&mut clients).await;
        // Everyone leaves.
        clients.clear();
        settle(&mut clients).await;
        probe(broker).await;
        // Every connection's task ends, in a few runtime passes, or after up to a second for a
        // publisher that was paused for a congested subscriber (the broker's back-pressure):
        // waited for in real time past `MAX_PASSES`, within 5 s.
        let started = std::time::Instant::now();
        let mut passes = 0;
        loop {
            let alive = tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks();
            if broker.clients_connected() == 0 && alive == *tasks {
                break;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(5),
                "5 s after every client left: {} counted connected, {} connection tasks alive",
                broker.clients_connected(),
                alive - *tasks
            );
            passes += 1;
            if passes < MAX_PASSES {
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
    });
});
