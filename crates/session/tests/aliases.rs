//! Topic aliases chosen by the sender (MQTT 5 §3.3.2.3.4) under random traffic: streams of
//! PUBLISHes both ways through a client and a server engine, with random Topic Alias Maximums
//! (0 and 1 included), a random Maximum Packet Size and lost connections. Whatever aliases
//! the senders pick, set and re-point, every message must arrive on its own topic.

mod support;

use std::collections::HashMap;
use std::num::{NonZeroU16, NonZeroU32};

use proptest::prelude::*;
use rallymq_codec::{Packet, ProtocolVersion, QoS};
use rallymq_session::{ClientConfig, Error, ServerConfig};
use support::{Pair, connect_packet, publish};

const V5: ProtocolVersion = ProtocolVersion::V5;

/// Topics of every length around an alias's cost (3 bytes): short ones never get one.
const TOPICS: [&str; 12] = [
    "a",
    "ab/",
    "abcd",
    "t/0",
    "score/1",
    "score/2",
    "score/3",
    "tennis/court-1/score",
    "tennis/court-2/score",
    "tennis/court-3/score",
    "tennis/court-4/score",
    "a/much/longer/topic/name/that/is/worth/an/alias",
];

#[derive(Debug, Clone)]
enum Op {
    ClientPublish {
        topic: usize,
        qos: u8,
        size: u8,
    },
    ServerDeliver {
        topic: usize,
        qos: u8,
        size: u8,
    },
    /// Deliver up to this many chunks in transit.
    Step(u8),
    Reconnect,
}

fn op() -> impl Strategy<Value = Op> {
    // Skewed towards a few topics, as real traffic is, so aliases get used and re-pointed.
    let topic = prop_oneof![3 => 4..8usize, 1 => 0..TOPICS.len()];
    prop_oneof![
        6 => (topic.clone(), 0..3u8, 0..64u8)
            .prop_map(|(topic, qos, size)| Op::ClientPublish { topic, qos, size }),
        6 => (topic, 0..3u8, 0..64u8)
            .prop_map(|(topic, qos, size)| Op::ServerDeliver { topic, qos, size }),
        3 => (1..6u8).prop_map(Op::Step),
        1 => Just(Op::Reconnect),
    ]
}

fn qos(n: u8) -> QoS {
    [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][usize::from(n % 3)]
}

/// A payload of `size` bytes (at least 4) that starts with `seq`.
fn payload(seq: u32, size: u8) -> Vec<u8> {
    let mut payload = seq.to_be_bytes().to_vec();
    payload.resize(usize::from(size).max(4), b'.');
    payload
}

/// Checks every message received against the topic its sequence number was sent on, and
/// that QoS 1 and 2 messages all arrived.
fn check(
    direction: &str,
    sent: &HashMap<u32, (&str, QoS)>,
    received: &[(String, bytes::Bytes, bool)],
) -> Result<(), TestCaseError> {
    let mut arrived = HashMap::new();
    for (topic, payload, _) in received {
        let seq = u32::from_be_bytes(payload[..4].try_into().expect("4-byte prefix"));
        let (expected, _) = sent.get(&seq).expect("a message that was sent");
        prop_assert_eq!(topic, expected, "{} #{}", direction, seq);
        arrived.insert(seq, ());
    }
    for (seq, (topic, qos)) in sent {
        if *qos != QoS::AtMostOnce {
            prop_assert!(
                arrived.contains_key(seq),
                "{direction}: {topic} #{seq} lost"
            );
        }
    }
    Ok(())
}

/// The highest alias each side sent.
fn highest_alias(packets: &[Packet]) -> u16 {
    packets
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(publish) => publish.properties.topic_alias.map(NonZeroU16::get),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

fn run(
    client_maximum: u16,
    server_maximum: u16,
    server_outgoing_maximum: u16,
    max_packet_size: u32,
    ops: Vec<Op>,
) -> Result<(), TestCaseError> {
    let mut connect = connect_packet(V5, "aliases");
    connect.clean_start = false;
    connect.properties.session_expiry_interval = Some(u32::MAX);
    connect.properties.topic_alias_maximum = Some(client_maximum);
    connect.properties.maximum_packet_size = NonZeroU32::new(max_packet_size);
    let mut client_config = ClientConfig::new(connect);
    client_config.max_queued = 10_000;
    let server_config = ServerConfig {
        topic_alias_maximum: server_maximum,
        outgoing_topic_alias_maximum: server_outgoing_maximum,
        max_queued: 10_000,
        ..ServerConfig::default()
    };
    let mut pair = Pair::new(client_config, server_config);
    pair.connect();

    let mut up = HashMap::new();
    let mut down = HashMap::new();
    for (seq, op) in (0u32..).zip(ops) {
        match op {
            Op::ClientPublish {
                topic,
                qos: q,
                size,
            } => {
                let message = publish(TOPICS[topic], qos(q), &payload(seq, size));
                match pair.client.publish(pair.now, message) {
                    Ok(_) => {
                        up.insert(seq, (TOPICS[topic], qos(q)));
                    }
                    Err(Error::NotConnected | Error::Closed) => {}
                    Err(other) => prop_assert!(false, "client publish failed: {other}"),
                }
            }
            Op::ServerDeliver {
                topic,
                qos: q,
                size,
            } => {
                let message = publish(TOPICS[topic], qos(q), &payload(seq, size));
                match pair.server.deliver(pair.now, message) {
                    Ok(_) => {
                        down.insert(seq, (TOPICS[topic], qos(q)));
                    }
                    // Over the client's Maximum Packet Size in its full-topic form.
                    Err(Error::PacketTooLarge { .. }) => {}
                    Err(Error::NotConnected | Error::Closed) => {}
                    Err(other) => prop_assert!(false, "server deliver failed: {other}"),
                }
            }
            Op::Step(n) => {
                for _ in 0..n {
                    pair.step();
                }
            }
            Op::Reconnect => pair.reconnect(false),
        }
        if let Some(violation) = pair.protocol_violation() {
            prop_assert!(false, "{violation}");
        }
    }
    pair.reconnect(false);
    pair.drive();

    check("client to server", &up, &pair.server_messages())?;
    check("server to client", &down, &pair.client_messages())?;
    let to_client = pair.packets_to_client(V5);
    prop_assert!(highest_alias(&to_client) <= client_maximum.min(server_outgoing_maximum));
    prop_assert!(highest_alias(&pair.packets_to_server(V5)) <= server_maximum);
    for packet in &to_client {
        prop_assert!(
            packet.encoded_len(V5) <= max_packet_size as usize,
            "{packet:?}"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn mqtt_3_3_2_11_aliases_stay_within_the_maximum_and_every_message_arrives_on_its_topic(
        client_maximum in prop_oneof![Just(0u16), Just(1), 2..6u16],
        server_maximum in prop_oneof![Just(0u16), Just(1), 2..6u16],
        server_outgoing_maximum in prop_oneof![Just(0u16), Just(1), 2..6u16, Just(u16::MAX)],
        max_packet_size in 40..200u32,
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        run(client_maximum, server_maximum, server_outgoing_maximum, max_packet_size, ops)?;
    }
}

/// A PUBLISH that fits the client's Maximum Packet Size with its topic but would not with
/// topic and a new alias goes without the alias, instead of failing to be sent.
#[test]
fn mqtt_3_1_2_24_a_new_alias_is_not_set_where_it_would_exceed_the_maximum_packet_size() {
    let mut connect = connect_packet(V5, "c");
    connect.properties.topic_alias_maximum = Some(4);
    connect.properties.maximum_packet_size = NonZeroU32::new(40);
    let config = ServerConfig {
        outgoing_topic_alias_maximum: 4,
        ..ServerConfig::default()
    };
    let mut pair = Pair::new(ClientConfig::new(connect), config);
    pair.connect();
    let topic = "tennis/court-1/score";
    // Fixed header 2, topic 2 + 20, no properties 1: 25 bytes with a 15-byte payload, 40.
    let full = publish(topic, QoS::AtMostOnce, &[b'x'; 15]);
    assert_eq!(Packet::Publish(full.clone()).encoded_len(V5), 40);
    pair.server.deliver(pair.now, full).expect("fits as it is");
    pair.server
        .deliver(pair.now, publish(topic, QoS::AtMostOnce, b"small"))
        .expect("fits");
    pair.server
        .deliver(pair.now, publish(topic, QoS::AtMostOnce, &[b'y'; 15]))
        .expect("fits, with the alias even better");
    pair.drive();
    let sent: Vec<(bool, Option<u16>)> = pair
        .packets_to_client(V5)
        .into_iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some((
                p.topic.is_some(),
                p.properties.topic_alias.map(NonZeroU16::get),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(sent, [(true, None), (true, Some(1)), (false, Some(1))]);
    let topics: Vec<String> = pair.client_messages().into_iter().map(|m| m.0).collect();
    assert_eq!(topics, [topic; 3]);
}
