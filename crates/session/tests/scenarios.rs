//! proptest-driven scenarios: random operations and random connection losses between a client
//! engine and a server engine, checking the delivery guarantees and limits after every step.

mod support;

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU16;
use std::time::Duration;

use proptest::prelude::*;
use rallymq_codec::{PacketId, ProtocolVersion, QoS};
use rallymq_session::{
    ClientConfig, ClientConnection, ClientEvent, Error, ServerConfig, ServerConnection,
    SessionState, Timestamp,
};
use support::{Pair, connect_packet, publish};

#[derive(Debug, Clone)]
enum Op {
    ClientPublish {
        topic: u8,
        qos: u8,
    },
    ServerDeliver {
        topic: u8,
        qos: u8,
    },
    /// Deliver up to this many chunks in transit.
    Step(u8),
    Advance(u16),
    DropLink,
    Reconnect,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3u8, 0..3u8).prop_map(|(topic, qos)| Op::ClientPublish { topic, qos }),
        4 => (0..3u8, 0..3u8).prop_map(|(topic, qos)| Op::ServerDeliver { topic, qos }),
        4 => (1..6u8).prop_map(Op::Step),
        1 => (0..3000u16).prop_map(Op::Advance),
        1 => Just(Op::DropLink),
        1 => Just(Op::Reconnect),
    ]
}

fn qos(n: u8) -> QoS {
    [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][usize::from(n % 3)]
}

/// A message sent in the scenario: its direction's sequence number is its payload.
#[derive(Debug, Clone)]
struct Sent {
    qos: QoS,
}

fn ids_unique(state: &SessionState) -> bool {
    let ids: HashSet<PacketId> = state
        .in_flight
        .iter()
        .filter_map(|m| m.publish.packet_id)
        .collect();
    ids.len() == state.in_flight.len()
}

/// Counts deliveries per sequence number and checks per-topic order of first deliveries.
fn check_deliveries(
    direction: &str,
    sent: &[Sent],
    received: &[(String, bytes::Bytes, bool)],
) -> Result<(), TestCaseError> {
    let mut counts: HashMap<u32, usize> = HashMap::new();
    let mut first_order: HashMap<String, Vec<u32>> = HashMap::new();
    for (topic, payload, _) in received {
        let seq = u32::from_be_bytes(payload[..4].try_into().expect("4-byte payload"));
        let count = counts.entry(seq).or_default();
        *count += 1;
        if *count == 1 && sent[seq as usize].qos != QoS::AtMostOnce {
            first_order.entry(topic.clone()).or_default().push(seq);
        }
    }
    for (seq, message) in sent.iter().enumerate() {
        let count = counts.get(&(seq as u32)).copied().unwrap_or(0);
        match message.qos {
            QoS::AtMostOnce => prop_assert!(
                count <= 1,
                "{direction}: QoS 0 #{seq} delivered {count} times"
            ),
            QoS::AtLeastOnce => prop_assert!(count >= 1, "{direction}: QoS 1 #{seq} lost"),
            QoS::ExactlyOnce => prop_assert_eq!(
                count,
                1,
                "{}: QoS 2 #{} delivered {} times",
                direction,
                seq,
                count
            ),
        }
    }
    for (topic, order) in first_order {
        let mut sorted = order.clone();
        sorted.sort_unstable();
        prop_assert_eq!(&order, &sorted, "{}: order on {} broken", direction, topic);
    }
    Ok(())
}

fn run_scenario(
    version: ProtocolVersion,
    server_receive_maximum: u16,
    client_receive_maximum: u16,
    ops: Vec<Op>,
) -> Result<(), TestCaseError> {
    let mut connect = connect_packet(version, "scenario");
    connect.clean_start = false;
    if version.is_v5() {
        connect.properties.session_expiry_interval = Some(u32::MAX);
        connect.properties.receive_maximum = NonZeroU16::new(client_receive_maximum);
    }
    let mut client_config = ClientConfig::new(connect);
    client_config.max_queued = 10_000;
    if !version.is_v5() {
        // No Receive Maximum before MQTT 5: a small window still exercises the queue.
        client_config.max_in_flight = server_receive_maximum;
    }
    let server_config = ServerConfig {
        receive_maximum: server_receive_maximum,
        max_in_flight: client_receive_maximum,
        max_queued: 10_000,
        ..ServerConfig::default()
    };
    let mut pair = Pair::new(client_config, server_config);
    pair.connect();

    let mut up: Vec<Sent> = Vec::new();
    let mut down: Vec<Sent> = Vec::new();
    let server_window = server_receive_maximum;
    let client_window = client_receive_maximum;
    let topics = ["t/0", "t/1", "t/2"];

    for op in ops {
        match op {
            Op::ClientPublish { topic, qos: q } => {
                let seq = up.len() as u32;
                match pair.client.publish(
                    pair.now,
                    publish(topics[usize::from(topic)], qos(q), &seq.to_be_bytes()),
                ) {
                    Ok(_) => up.push(Sent { qos: qos(q) }),
                    Err(Error::NotConnected | Error::Closed) => {}
                    Err(other) => prop_assert!(false, "client publish failed: {other}"),
                }
            }
            Op::ServerDeliver { topic, qos: q } => {
                let seq = down.len() as u32;
                match pair.server.deliver(
                    pair.now,
                    publish(topics[usize::from(topic)], qos(q), &seq.to_be_bytes()),
                ) {
                    Ok(_) => down.push(Sent { qos: qos(q) }),
                    Err(Error::NotConnected | Error::Closed) => {}
                    Err(other) => prop_assert!(false, "server deliver failed: {other}"),
                }
            }
            Op::Step(n) => {
                for _ in 0..n {
                    pair.step();
                }
            }
            Op::Advance(ms) => pair.advance(Duration::from_millis(u64::from(ms))),
            Op::DropLink => pair.drop_link(),
            Op::Reconnect => pair.reconnect(false),
        }
        let (client_in_flight, _) = pair.client.pending_messages();
        let (server_in_flight, _) = pair.server.pending_messages();
        prop_assert!(
            client_in_flight <= usize::from(server_window),
            "client in flight {client_in_flight}"
        );
        prop_assert!(
            server_in_flight <= usize::from(client_window),
            "server in flight {server_in_flight}"
        );
        prop_assert!(
            ids_unique(&pair.client.session_state()),
            "client reuses an identifier in flight"
        );
        prop_assert!(
            ids_unique(&pair.server.session_state()),
            "server reuses an identifier in flight"
        );
        if let Some(violation) = pair.protocol_violation() {
            prop_assert!(false, "{violation}");
        }
    }

    // Heal: one more connection, run to quiescence; everything QoS 1/2 must now be through.
    pair.reconnect(false);
    pair.drive();
    prop_assert_eq!(pair.client.pending_messages(), (0, 0));
    prop_assert_eq!(pair.server.pending_messages(), (0, 0));
    check_deliveries("client to server", &up, &pair.server_messages())?;
    check_deliveries("server to client", &down, &pair.client_messages())?;
    let acknowledged = pair
        .client_events
        .iter()
        .filter(|e| {
            matches!(
                e,
                ClientEvent::PublishAcknowledged(_) | ClientEvent::PublishCompleted(_)
            )
        })
        .count();
    prop_assert_eq!(
        acknowledged,
        up.iter().filter(|m| m.qos != QoS::AtMostOnce).count()
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn guarantees_hold_under_random_operations_and_disconnects(
        v5 in any::<bool>(),
        server_receive_maximum in 1..6u16,
        client_receive_maximum in 1..6u16,
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let version = if v5 { ProtocolVersion::V5 } else { ProtocolVersion::V3_1_1 };
        run_scenario(version, server_receive_maximum, client_receive_maximum, ops)?;
    }

    #[test]
    fn mqtt_3_1_2_22_keep_alive_expiry_at_one_and_a_half_times(
        keep_alive in 1..1000u16,
        v5 in any::<bool>(),
        silent_ms in 0..2_000_000u64,
    ) {
        let version = if v5 { ProtocolVersion::V5 } else { ProtocolVersion::V3_1_1 };
        let t0 = Timestamp::ZERO;
        let mut connect = connect_packet(version, "ka");
        connect.keep_alive = keep_alive;
        let mut client = ClientConnection::new(ClientConfig::new(connect), None, t0);
        let mut server = ServerConnection::new(ServerConfig::default(), t0);
        client.connect(t0).unwrap();
        server.handle_bytes(t0, &client.poll_transmit(t0).unwrap());
        server.accept(t0, Default::default()).unwrap();
        let at = t0 + Duration::from_millis(silent_ms);
        server.handle_timeout(at);
        let limit_ms = u64::from(keep_alive) * 1500;
        prop_assert_eq!(server.is_closed(), silent_ms >= limit_ms, "keep alive {} s, silent {} ms", keep_alive, silent_ms);
        prop_assert_eq!(server.poll_timeout().is_none() || !server.is_closed(), true);
    }
}
