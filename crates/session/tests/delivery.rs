//! Message flows in both directions: QoS 0/1/2, packet identifiers, session resume, Receive
//! Maximum, topic aliases, Maximum Packet Size and Message Expiry. Test names carry the
//! normative statement they check (MQTT 5.0 unless marked `v311`).

mod support;

use std::collections::HashSet;
use std::num::{NonZeroU16, NonZeroU32};
use std::time::Duration;

use rallymq_codec::{
    Ack, Packet, PacketId, ProtocolVersion, Publish, QoS, ReasonCode, SubAckProperties,
    Subscription, SubscriptionId, TopicFilter,
};
use rallymq_session::{
    ClientConfig, ClientEvent, CloseReason, Error, OutgoingStage, PublishToken, ServerConfig,
    ServerEvent,
};
use support::{Pair, connect_packet, pid, publish};

const V311: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

fn persistent_pair(version: ProtocolVersion) -> Pair {
    let mut connect = connect_packet(version, "persistent");
    connect.clean_start = false;
    if version.is_v5() {
        connect.properties.session_expiry_interval = Some(3600);
    }
    let mut pair = Pair::new(ClientConfig::new(connect), ServerConfig::default());
    pair.connect();
    pair
}

fn publishes(packets: &[Packet]) -> Vec<Publish> {
    packets
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(publish) => Some(publish.clone()),
            _ => None,
        })
        .collect()
}

fn acknowledged(pair: &Pair) -> Vec<PublishToken> {
    pair.client_events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::PublishAcknowledged(o) | ClientEvent::PublishCompleted(o) => Some(o.token),
            _ => None,
        })
        .collect()
}

// ------------------------------------------------------------------ QoS flows

#[test]
fn mqtt_4_3_2_2_qos1_is_unacknowledged_until_puback() {
    for version in [V311, V5] {
        let mut pair = Pair::connected(version);
        let token = pair
            .client
            .publish(pair.now, publish("a/b", QoS::AtLeastOnce, b"1"))
            .unwrap()
            .unwrap();
        assert_eq!(pair.client.pending_messages(), (1, 0));
        pair.drive();
        assert_eq!(pair.client.pending_messages(), (0, 0));
        assert_eq!(acknowledged(&pair), vec![token]);
        let acks: Vec<Packet> = pair
            .packets_to_client(version)
            .into_iter()
            .filter(|p| matches!(p, Packet::PubAck(_)))
            .collect();
        assert_eq!(
            acks,
            vec![Packet::PubAck(Ack::new(pid(1)))],
            "MQTT-2.2.1-5: PUBACK carries the PUBLISH's id"
        );
    }
}

#[test]
fn mqtt_4_3_3_1_qos2_full_flow_in_both_directions() {
    for version in [V311, V5] {
        let mut pair = Pair::connected(version);
        let token = pair
            .client
            .publish(pair.now, publish("a/b", QoS::ExactlyOnce, b"up"))
            .unwrap()
            .unwrap();
        pair.server
            .deliver(pair.now, publish("c/d", QoS::ExactlyOnce, b"down"))
            .unwrap()
            .unwrap();
        pair.drive();
        assert_eq!(acknowledged(&pair), vec![token]);
        assert_eq!(pair.server_messages().len(), 1);
        assert_eq!(pair.client_messages().len(), 1);
        assert!(
            pair.server_events
                .iter()
                .any(|e| matches!(e, ServerEvent::DeliveryCompleted(_)))
        );
        let to_server: Vec<u8> = pair
            .packets_to_server(version)
            .iter()
            .map(|p| p.packet_type() as u8)
            .collect();
        // CONNECT, PUBLISH, PUBREC (for the delivery), PUBREL, PUBCOMP (for the delivery)
        assert_eq!(to_server.len(), 5, "{to_server:?}");
        assert!(pair.client.session_state().is_empty() && pair.server.session_state().is_empty());
    }
}

#[test]
fn mqtt_4_3_3_9_repeated_qos2_publish_is_answered_but_not_delivered_twice() {
    let mut pair = Pair::connected(V5);
    let mut message = publish("a/b", QoS::ExactlyOnce, b"once");
    message.packet_id = Some(pid(7));
    let bytes = Packet::Publish(message.clone()).to_bytes(V5).unwrap();
    message.dup = true;
    let dup = Packet::Publish(message).to_bytes(V5).unwrap();
    // The client must not answer the PUBRECs: it never sent these messages.
    pair.server_to_client = false;
    pair.inject_to_server(&bytes);
    pair.inject_to_server(&dup);
    pair.inject_to_server(&dup);
    assert_eq!(pair.server_messages().len(), 1);
    let recs = pair
        .packets_to_client(V5)
        .into_iter()
        .filter(|p| matches!(p, Packet::PubRec(_)))
        .count();
    assert_eq!(recs, 3, "every copy gets PUBREC");
    // MQTT-4.3.3-10 / -11: PUBREL gets PUBCOMP, after which the identifier carries a new message.
    pair.inject_to_server(&Packet::PubRel(Ack::new(pid(7))).to_bytes(V5).unwrap());
    assert!(
        pair.packets_to_client(V5)
            .contains(&Packet::PubComp(Ack::new(pid(7))))
    );
    pair.inject_to_server(&bytes);
    assert_eq!(pair.server_messages().len(), 2);
}

#[test]
fn mqtt_4_3_3_2_v311_qos2_receiver_dedupes_until_pubrel() {
    let mut pair = Pair::connected(V311);
    let mut message = publish("a/b", QoS::ExactlyOnce, b"once");
    message.packet_id = Some(pid(3));
    let bytes = Packet::Publish(message).to_bytes(V311).unwrap();
    pair.server_to_client = false;
    pair.inject_to_server(&bytes);
    pair.inject_to_server(&bytes);
    assert_eq!(pair.server_messages().len(), 1);
}

#[test]
fn pubrel_for_unknown_identifier_gets_pubcomp_0x92() {
    let mut pair = Pair::connected(V5);
    pair.inject_to_server(&Packet::PubRel(Ack::new(pid(9))).to_bytes(V5).unwrap());
    let mut expected = Ack::new(pid(9));
    expected.reason_code = ReasonCode::PacketIdentifierNotFound;
    assert_eq!(
        pair.packets_to_client(V5).pop(),
        Some(Packet::PubComp(expected))
    );
    assert!(pair.server.is_connected());
}

#[test]
fn mqtt_4_3_3_10_pubrel_for_an_identifier_answered_elsewhere_gets_pubcomp_success() {
    let mut pair = Pair::connected(V5);
    // Another node answered PUBREC for 9 before this engine held the session.
    pair.server.expect_release(pid(9));
    pair.inject_to_server(&Packet::PubRel(Ack::new(pid(9))).to_bytes(V5).unwrap());
    assert_eq!(
        pair.packets_to_client(V5).pop(),
        Some(Packet::PubComp(Ack::new(pid(9))))
    );
    // Released: a second PUBREL is for an identifier no flow holds.
    pair.inject_to_server(&Packet::PubRel(Ack::new(pid(9))).to_bytes(V5).unwrap());
    let mut unknown = Ack::new(pid(9));
    unknown.reason_code = ReasonCode::PacketIdentifierNotFound;
    assert_eq!(
        pair.packets_to_client(V5).pop(),
        Some(Packet::PubComp(unknown))
    );
}

#[test]
fn mqtt_4_3_3_2_a_publish_under_an_identifier_answered_elsewhere_is_surfaced() {
    let mut pair = Pair::connected(V5);
    pair.server.expect_release(pid(4));
    pair.server_to_client = false;
    let mut message = publish("a/b", QoS::ExactlyOnce, b"resent");
    message.packet_id = Some(pid(4));
    message.dup = true;
    // The driver decides whether it is a resend of what it stored: the engine hands it over.
    pair.inject_to_server(&Packet::Publish(message).to_bytes(V5).unwrap());
    assert_eq!(pair.server_messages().len(), 1);
}

#[test]
fn mqtt_4_4_0_2_failed_puback_ends_the_flow_without_resend() {
    let mut pair = Pair::connected(V5);
    pair.auto_broker = false;
    let token = pair
        .client
        .publish(pair.now, publish("a", QoS::AtLeastOnce, b"x"))
        .unwrap()
        .unwrap();
    let _ = pair.client.poll_transmit(pair.now);
    let mut ack = Ack::new(pid(1));
    ack.reason_code = ReasonCode::NotAuthorized;
    pair.inject_to_client(&Packet::PubAck(ack).to_bytes(V5).unwrap());
    let outcome = pair.client_events.iter().find_map(|e| match e {
        ClientEvent::PublishAcknowledged(o) => Some(o.clone()),
        _ => None,
    });
    assert_eq!(
        outcome.map(|o| (o.token, o.reason_code)),
        Some((token, ReasonCode::NotAuthorized))
    );
    assert!(pair.client.session_state().is_empty());
}

#[test]
fn manual_acks_hold_the_puback_until_the_caller_acknowledges() {
    let config = ServerConfig {
        manual_acks: true,
        ..ServerConfig::default()
    };
    let mut pair = Pair::new(ClientConfig::new(connect_packet(V5, "c")), config);
    pair.connect();
    pair.client
        .publish(pair.now, publish("a", QoS::AtLeastOnce, b"x"))
        .unwrap();
    pair.drive();
    assert!(
        !pair
            .packets_to_client(V5)
            .iter()
            .any(|p| matches!(p, Packet::PubAck(_)))
    );
    let handle = pair.server_events.iter().find_map(|e| match e {
        ServerEvent::Message(m) => m.ack,
        _ => None,
    });
    pair.server.acknowledge(
        handle.expect("manual acks hand out a handle"),
        ReasonCode::Success,
    );
    pair.drive();
    assert_eq!(acknowledged(&pair).len(), 1);
}

// ------------------------------------------------------------------ packet identifiers

#[test]
fn mqtt_2_2_1_3_identifiers_are_unused_while_in_flight_and_wrap_around() {
    let mut pair = Pair::connected(V5);
    pair.auto_broker = false;
    // 70,000 messages through a window of 64: identifiers wrap past 65,535 and skip 0.
    let mut in_flight: HashSet<PacketId> = HashSet::new();
    let mut seen_wrap = false;
    for i in 0..70_000u32 {
        pair.client
            .publish(pair.now, publish("a", QoS::AtLeastOnce, &i.to_be_bytes()))
            .unwrap();
        for message in pair.client.session_state().in_flight {
            in_flight.insert(message.publish.packet_id.unwrap());
        }
        let state = pair.client.session_state();
        let ids: HashSet<PacketId> = state
            .in_flight
            .iter()
            .map(|m| m.publish.packet_id.unwrap())
            .collect();
        assert_eq!(
            ids.len(),
            state.in_flight.len(),
            "an identifier in use twice"
        );
        if state.in_flight.len() == 64 {
            let oldest = state.in_flight[0].publish.packet_id.unwrap();
            seen_wrap |= oldest.get() == 65_535;
            pair.client.handle_bytes(
                pair.now,
                &Packet::PubAck(Ack::new(oldest)).to_bytes(V5).unwrap(),
            );
        }
        while pair.client.poll_event().is_some() {}
        let _ = pair.client.poll_transmit(pair.now);
    }
    assert!(seen_wrap, "identifiers reached 65,535");
    assert_eq!(
        in_flight.len(),
        65_535,
        "every non-zero identifier was used"
    );
}

#[test]
fn mqtt_2_2_1_3_subscribe_and_publish_never_share_an_identifier() {
    let mut pair = Pair::connected(V5);
    pair.auto_broker = false;
    let filter = TopicFilter::new("x/#").unwrap();
    let token = pair
        .client
        .subscribe(
            vec![Subscription::new(filter, QoS::AtLeastOnce)],
            Default::default(),
        )
        .unwrap();
    let _ = pair.client.poll_transmit(pair.now);
    for _ in 0..10 {
        pair.client
            .publish(pair.now, publish("a", QoS::AtLeastOnce, b"x"))
            .unwrap();
    }
    let ids: Vec<PacketId> = pair
        .client
        .session_state()
        .in_flight
        .iter()
        .map(|m| m.publish.packet_id.unwrap())
        .collect();
    assert!(
        !ids.contains(&token.0),
        "{ids:?} reuses the SUBSCRIBE's {:?}",
        token.0
    );
}

#[test]
fn mqtt_3_8_4_2_suback_carries_the_subscribe_identifier_and_reaches_the_caller() {
    let mut pair = Pair::connected(V311);
    let filter = TopicFilter::new("sport/+/score").unwrap();
    let token = pair
        .client
        .subscribe(
            vec![Subscription::new(filter, QoS::ExactlyOnce)],
            Default::default(),
        )
        .unwrap();
    pair.drive();
    let result = pair.client_events.iter().find_map(|e| match e {
        ClientEvent::Subscribed {
            token,
            reason_codes,
            ..
        } => Some((*token, reason_codes.clone())),
        _ => None,
    });
    assert_eq!(result, Some((token, vec![ReasonCode::GrantedQoS2])));
    let unsub = pair
        .client
        .unsubscribe(
            vec![TopicFilter::new("sport/+/score").unwrap()],
            Default::default(),
        )
        .unwrap();
    pair.drive();
    assert!(
        pair.client_events
            .iter()
            .any(|e| matches!(e, ClientEvent::Unsubscribed { token, .. } if *token == unsub))
    );
}

#[test]
fn answering_a_subscribe_twice_or_unasked_is_refused() {
    let mut pair = Pair::connected(V5);
    assert!(matches!(
        pair.server.answer_subscribe(
            pid(5),
            vec![ReasonCode::Success],
            SubAckProperties::default()
        ),
        Err(Error::InvalidState(_))
    ));
}

// ------------------------------------------------------------------ session resume

#[test]
fn mqtt_4_4_0_1_unacknowledged_messages_resent_in_order_with_dup_and_pubrel() {
    for version in [V311, V5] {
        let mut pair = persistent_pair(version);
        pair.auto_broker = false;
        // Three QoS 1 and two QoS 2 messages; the server acknowledges nothing but one PUBREC.
        for i in 0..5u8 {
            let qos = if i % 2 == 0 {
                QoS::AtLeastOnce
            } else {
                QoS::ExactlyOnce
            };
            pair.client
                .publish(pair.now, publish("a/b", qos, &[i]))
                .unwrap();
        }
        let _ = pair.client.poll_transmit(pair.now);
        pair.client.handle_bytes(
            pair.now,
            &Packet::PubRec(Ack::new(pid(2))).to_bytes(version).unwrap(),
        );
        let state = pair.client.session_state();
        assert_eq!(state.in_flight[1].stage, OutgoingStage::Released);
        pair.drop_link();
        // The broker kept the session (it never saw the messages: the link lost them).
        pair.server_session = Some(Default::default());
        pair.sent_to_server.clear();
        pair.auto_broker = true;
        pair.reconnect(false);
        let packets = pair.packets_to_server(version);
        let order: Vec<String> = packets
            .iter()
            .skip(1)
            .take(5)
            .map(|p| match p {
                Packet::Publish(p) => {
                    format!("publish {} dup={}", p.packet_id.unwrap().get(), p.dup)
                }
                Packet::PubRel(a) => format!("pubrel {}", a.packet_id.get()),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            order,
            [
                "publish 1 dup=true",
                "pubrel 2",
                "publish 3 dup=true",
                "publish 4 dup=true",
                "publish 5 dup=true"
            ],
            "{version:?}: MQTT-4.6.0-1 original order, MQTT-3.3.1-1 DUP, MQTT-2.3.1-3 same identifiers"
        );
        assert_eq!(
            acknowledged(&pair).len(),
            5,
            "{version:?}: every flow finishes after the resend"
        );
    }
}

#[test]
fn mqtt_3_2_2_5_session_not_present_discards_and_requeues() {
    let mut pair = persistent_pair(V5);
    pair.auto_broker = false;
    pair.client
        .publish(pair.now, publish("a", QoS::AtLeastOnce, b"x"))
        .unwrap();
    let _ = pair.client.poll_transmit(pair.now);
    pair.drop_link();
    pair.auto_broker = true;
    pair.server_session = None; // the broker lost the session
    pair.reconnect(false);
    let resent = publishes(&pair.packets_to_server(V5));
    let last = resent.last().expect("the message went again");
    assert!(!last.dup, "a new session gets the message as new");
    assert_eq!(acknowledged(&pair).len(), 1);
}

#[test]
fn server_resends_deliveries_of_a_resumed_session() {
    let mut pair = persistent_pair(V5);
    pair.server
        .deliver(pair.now, publish("n", QoS::AtLeastOnce, b"1"))
        .unwrap();
    pair.server
        .deliver(pair.now, publish("n", QoS::ExactlyOnce, b"2"))
        .unwrap();
    // Lost before the client saw them.
    let _ = pair.server.poll_transmit(pair.now);
    pair.drop_link();
    assert_eq!(
        pair.server_session.as_ref().map(|s| s.in_flight.len()),
        Some(2)
    );
    pair.reconnect(false);
    let payloads: Vec<_> = pair
        .client_messages()
        .into_iter()
        .map(|(_, p, dup)| (p, dup))
        .collect();
    assert_eq!(payloads, vec![("1".into(), true), ("2".into(), true)]);
    assert!(pair.server.session_state().is_empty());
}

#[test]
fn inbound_qos2_awaiting_pubrel_survives_a_reconnect() {
    let mut pair = persistent_pair(V311);
    pair.auto_broker = false;
    let mut message = publish("a", QoS::ExactlyOnce, b"x");
    message.packet_id = Some(pid(11));
    let bytes = Packet::Publish(message.clone()).to_bytes(V311).unwrap();
    pair.client.handle_bytes(pair.now, &bytes);
    while pair.client.poll_event().is_some() {}
    assert_eq!(
        pair.client.session_state().inbound_awaiting_release,
        vec![pid(11)]
    );
    pair.drop_link();
    pair.auto_broker = true;
    pair.server_session = Some(Default::default());
    pair.reconnect(false);
    // The server resends the PUBLISH with DUP: acknowledged, not delivered again.
    message.dup = true;
    pair.inject_to_client(&Packet::Publish(message).to_bytes(V311).unwrap());
    assert_eq!(pair.client_messages().len(), 0);
    assert!(
        pair.packets_to_server(V311)
            .contains(&Packet::PubRec(Ack::new(pid(11))))
    );
}

// ------------------------------------------------------------------ flow control

#[test]
fn mqtt_3_3_4_7_client_respects_server_receive_maximum() {
    let config = ServerConfig {
        receive_maximum: 3,
        ..ServerConfig::default()
    };
    let mut pair = Pair::new(ClientConfig::new(connect_packet(V5, "c")), config);
    pair.connect();
    pair.auto_broker = false;
    for i in 0..10u8 {
        pair.client
            .publish(pair.now, publish("a", QoS::AtLeastOnce, &[i]))
            .unwrap();
    }
    assert_eq!(pair.client.pending_messages(), (3, 7));
    pair.drive();
    assert_eq!(
        acknowledged(&pair).len(),
        10,
        "the queue drains as acknowledgements free the window"
    );
}

#[test]
fn mqtt_3_3_4_9_server_respects_client_receive_maximum() {
    let mut connect = connect_packet(V5, "c");
    connect.properties.receive_maximum = NonZeroU16::new(2);
    let mut pair = Pair::new(ClientConfig::new(connect), ServerConfig::default());
    pair.connect();
    for i in 0..5u8 {
        pair.server
            .deliver(pair.now, publish("a", QoS::ExactlyOnce, &[i]))
            .unwrap();
    }
    assert_eq!(pair.server.pending_messages(), (2, 3));
    pair.drive();
    assert_eq!(pair.client_messages().len(), 5);
}

#[test]
fn receive_maximum_exceeded_disconnects_with_0x93() {
    let config = ServerConfig {
        receive_maximum: 2,
        manual_acks: true,
        ..ServerConfig::default()
    };
    let mut pair = Pair::new(ClientConfig::new(connect_packet(V5, "c")), config);
    pair.connect();
    for id in 1..=3u16 {
        let mut message = publish("a", QoS::AtLeastOnce, b"x");
        message.packet_id = Some(pid(id));
        pair.server
            .handle_bytes(pair.now, &Packet::Publish(message).to_bytes(V5).unwrap());
    }
    pair.drive();
    assert!(matches!(
        pair.server_close(),
        Some(CloseReason::ProtocolViolation {
            reason_code: ReasonCode::ReceiveMaximumExceeded,
            ..
        })
    ));
}

#[test]
fn publish_fails_with_full_when_window_and_queue_are_full() {
    let mut config = ClientConfig::new(connect_packet(V5, "c"));
    config.max_in_flight = 2;
    config.max_queued = 3;
    let mut pair = Pair::new(config, ServerConfig::default());
    pair.connect();
    for _ in 0..5 {
        pair.client
            .publish(pair.now, publish("a", QoS::AtLeastOnce, b"x"))
            .unwrap();
    }
    assert_eq!(
        pair.client
            .publish(pair.now, publish("a", QoS::AtLeastOnce, b"x")),
        Err(Error::Full)
    );
    pair.drive();
    assert!(
        pair.client
            .publish(pair.now, publish("a", QoS::AtLeastOnce, b"x"))
            .is_ok()
    );
}

// ------------------------------------------------------------------ topic aliases

#[test]
fn mqtt_3_3_2_11_server_aliases_stay_within_the_client_maximum() {
    let mut connect = connect_packet(V5, "c");
    connect.properties.topic_alias_maximum = Some(2);
    let config = ServerConfig {
        outgoing_topic_alias_maximum: 10,
        ..ServerConfig::default()
    };
    let mut pair = Pair::new(ClientConfig::new(connect), config);
    pair.connect();
    for topic in ["top/1", "top/2", "top/3", "top/1", "top/2", "top/3"] {
        pair.server
            .deliver(pair.now, publish(topic, QoS::AtMostOnce, topic.as_bytes()))
            .unwrap();
    }
    pair.drive();
    let sent = publishes(&pair.packets_to_client(V5));
    let aliases: Vec<Option<u16>> = sent
        .iter()
        .map(|p| p.properties.topic_alias.map(|a| a.get()))
        .collect();
    assert_eq!(aliases, [Some(1), Some(2), None, Some(1), Some(2), None]);
    assert!(
        sent[3].topic.is_none(),
        "a known alias goes without its topic"
    );
    let received: Vec<String> = pair
        .client_messages()
        .into_iter()
        .map(|(t, _, _)| t)
        .collect();
    assert_eq!(
        received,
        ["top/1", "top/2", "top/3", "top/1", "top/2", "top/3"],
        "the client resolves every alias"
    );
}

#[test]
fn mqtt_3_3_2_12_server_accepts_aliases_up_to_its_maximum_and_refuses_above() {
    let config = ServerConfig {
        topic_alias_maximum: 5,
        ..ServerConfig::default()
    };
    let mut pair = Pair::new(ClientConfig::new(connect_packet(V5, "c")), config);
    pair.connect();
    let mut message = publish("x/y", QoS::AtMostOnce, b"1");
    message.properties.topic_alias = NonZeroU16::new(5);
    pair.inject_to_server(&Packet::Publish(message.clone()).to_bytes(V5).unwrap());
    message.topic = None;
    pair.inject_to_server(&Packet::Publish(message.clone()).to_bytes(V5).unwrap());
    let topics: Vec<String> = pair
        .server_messages()
        .into_iter()
        .map(|(t, _, _)| t)
        .collect();
    assert_eq!(topics, ["x/y", "x/y"]);
    message.properties.topic_alias = NonZeroU16::new(6);
    message.topic = Some(rallymq_codec::TopicName::new("x/y").unwrap());
    pair.inject_to_server(&Packet::Publish(message).to_bytes(V5).unwrap());
    assert!(matches!(
        pair.server_close(),
        Some(CloseReason::ProtocolViolation {
            reason_code: ReasonCode::TopicAliasInvalid,
            ..
        })
    ));
}

/// A PUBLISH from a client must not carry a Subscription Identifier: the server closes with
/// DISCONNECT 0x82 (Protocol Error) and delivers nothing. From a server to a client it is how
/// the client learns which subscriptions matched, and the client takes it.
#[test]
fn mqtt_3_3_4_6_client_publish_with_a_subscription_identifier_is_a_protocol_error() {
    let mut message = publish("a/b", QoS::AtLeastOnce, b"1");
    message.packet_id = Some(pid(1));
    message.properties.subscription_identifiers = vec![SubscriptionId::new(7).unwrap()];
    let bytes = Packet::Publish(message).to_bytes(V5).unwrap();

    let mut pair = Pair::connected(V5);
    pair.inject_to_server(&bytes);
    assert!(pair.server_messages().is_empty(), "delivered");
    pair.assert_server_disconnected_with(ReasonCode::ProtocolError);

    let mut pair = Pair::connected(V5);
    pair.inject_to_client(&bytes);
    let received: Vec<_> = pair
        .client_events
        .iter()
        .filter_map(|event| match event {
            ClientEvent::Message(message) => {
                Some(message.publish.properties.subscription_identifiers.clone())
            }
            _ => None,
        })
        .collect();
    assert_eq!(received, [vec![SubscriptionId::new(7).unwrap()]]);
    assert!(pair.client.is_connected());
}

#[test]
fn mqtt_3_3_2_7_aliases_do_not_carry_over_to_a_new_connection() {
    let mut pair = persistent_pair(V5);
    let mut message = publish("x/y", QoS::AtMostOnce, b"1");
    message.properties.topic_alias = NonZeroU16::new(1);
    pair.inject_to_server(&Packet::Publish(message.clone()).to_bytes(V5).unwrap());
    pair.reconnect(false);
    message.topic = None;
    pair.inject_to_server(&Packet::Publish(message).to_bytes(V5).unwrap());
    assert!(matches!(
        pair.server_close(),
        Some(CloseReason::ProtocolViolation {
            reason_code: ReasonCode::ProtocolError,
            ..
        })
    ));
}

// ------------------------------------------------------------------ maximum packet size

#[test]
fn mqtt_3_1_2_25_server_drops_what_exceeds_the_client_maximum_packet_size() {
    let mut connect = connect_packet(V5, "c");
    connect.properties.maximum_packet_size = NonZeroU32::new(64);
    let mut pair = Pair::new(ClientConfig::new(connect), ServerConfig::default());
    pair.connect();
    let big = vec![0u8; 100];
    assert!(matches!(
        pair.server
            .deliver(pair.now, publish("a", QoS::AtLeastOnce, &big)),
        Err(Error::PacketTooLarge { max: 64, .. })
    ));
    pair.server
        .deliver(pair.now, publish("a", QoS::AtLeastOnce, b"small"))
        .unwrap();
    pair.drive();
    assert_eq!(pair.client_messages().len(), 1);
    assert!(
        pair.sent_to_client
            .iter()
            .all(|chunk| chunk.len() <= 64 || chunk.len() < 200)
    );
    for packet in pair.packets_to_client(V5) {
        assert!(packet.encoded_len(V5) <= 64, "MQTT-3.1.2-24: {packet:?}");
    }
}

#[test]
fn acknowledgement_properties_are_trimmed_to_fit_the_peer_limit() {
    let mut connect = connect_packet(V5, "c");
    connect.properties.maximum_packet_size = NonZeroU32::new(20);
    let config = ServerConfig {
        manual_acks: true,
        ..ServerConfig::default()
    };
    let mut pair = Pair::new(ClientConfig::new(connect), config);
    pair.connect();
    pair.client
        .publish(pair.now, publish("a", QoS::AtLeastOnce, b"x"))
        .unwrap();
    pair.drive();
    let handle = pair.server_events.iter().find_map(|e| match e {
        ServerEvent::Message(m) => m.ack,
        _ => None,
    });
    pair.server
        .acknowledge(handle.unwrap(), ReasonCode::Success);
    pair.drive();
    assert_eq!(acknowledged(&pair).len(), 1);
}

// ------------------------------------------------------------------ message expiry

#[test]
fn mqtt_3_3_2_6_queued_message_expiry_counts_down_and_expired_ones_are_dropped() {
    let mut connect = connect_packet(V5, "c");
    connect.properties.receive_maximum = NonZeroU16::new(1);
    let mut pair = Pair::new(ClientConfig::new(connect), ServerConfig::default());
    pair.connect();
    pair.auto_broker = false;
    let mut first = publish("a", QoS::AtLeastOnce, b"first");
    first.properties.message_expiry_interval = Some(100);
    let mut short = publish("a", QoS::AtLeastOnce, b"short");
    short.properties.message_expiry_interval = Some(5);
    let mut long = publish("a", QoS::AtLeastOnce, b"long");
    long.properties.message_expiry_interval = Some(60);
    for message in [first, short, long] {
        pair.server.deliver(pair.now, message).unwrap();
    }
    // The client acknowledges the first message only after 10 s.
    let _ = pair.server.poll_transmit(pair.now);
    let later = pair.now + Duration::from_secs(10);
    pair.server.handle_bytes(
        later,
        &Packet::PubAck(Ack::new(pid(1))).to_bytes(V5).unwrap(),
    );
    let next = publishes(&support::decode_all(
        &[pair.server.poll_transmit(later).unwrap()],
        V5,
    ));
    assert_eq!(
        next.len(),
        1,
        "MQTT-3.3.2-5: the expired message is not sent"
    );
    assert_eq!(next[0].payload, "long");
    assert_eq!(
        next[0].properties.message_expiry_interval,
        Some(50),
        "60 s less the 10 s it waited"
    );
}

#[test]
fn can_deliver_says_when_the_window_and_queue_are_full() {
    let mut connect = connect_packet(V5, "c");
    connect.properties.receive_maximum = NonZeroU16::new(1);
    let config = ServerConfig {
        max_queued: 1,
        ..ServerConfig::default()
    };
    let mut pair = Pair::new(ClientConfig::new(connect), config);
    assert!(
        !pair.server.can_deliver(QoS::AtMostOnce),
        "not before CONNACK"
    );
    pair.connect();
    for _ in 0..2 {
        assert!(pair.server.can_deliver(QoS::AtLeastOnce));
        pair.server
            .deliver(pair.now, publish("a", QoS::AtLeastOnce, b"x"))
            .unwrap();
    }
    assert!(
        !pair.server.can_deliver(QoS::ExactlyOnce),
        "one in flight, one queued"
    );
    assert!(
        pair.server.can_deliver(QoS::AtMostOnce),
        "QoS 0 needs no room"
    );
    assert_eq!(
        pair.server
            .deliver(pair.now, publish("a", QoS::AtLeastOnce, b"x")),
        Err(Error::Full)
    );
    pair.drive();
    assert!(
        pair.server.can_deliver(QoS::AtLeastOnce),
        "acknowledgements made room"
    );
}

/// What a driver that keeps deliveries durable needs from the server engine: the packet
/// identifier of a delivery as soon as it is in flight, `DeliveryReleased` once per QoS 2
/// message when PUBREC moves it on (with its PUBREL still unsent), and `MessageReleased` when
/// the client's PUBREL frees an inbound identifier.
#[test]
fn the_server_reports_what_a_durable_driver_records() {
    for version in [V311, V5] {
        let mut pair = Pair::connected(version);
        let token = pair
            .server
            .deliver(pair.now, publish("c/d", QoS::ExactlyOnce, b"down"))
            .unwrap()
            .unwrap();
        let id = pair
            .server
            .delivery_packet_id(token)
            .expect("in flight at once: the window has room");
        // Up to the client's PUBREC: the server's PUBREL is queued, not yet sent.
        pair.step(); // PUBLISH to the client
        pair.step(); // PUBREC to the server
        assert_eq!(
            pair.server_events
                .iter()
                .filter(|e| matches!(e, ServerEvent::DeliveryReleased(t) if *t == token))
                .count(),
            1,
            "{version:?}"
        );
        assert_eq!(pair.server.delivery_packet_id(token), Some(id));
        pair.drive();
        assert_eq!(pair.server.delivery_packet_id(token), None, "completed");

        let up = pair
            .client
            .publish(pair.now, publish("a/b", QoS::ExactlyOnce, b"up"))
            .unwrap()
            .unwrap();
        pair.drive();
        assert!(acknowledged(&pair).contains(&up));
        let released: Vec<_> = pair
            .server_events
            .iter()
            .filter_map(|e| match e {
                ServerEvent::MessageReleased(id) => Some(*id),
                _ => None,
            })
            .collect();
        assert_eq!(released.len(), 1, "{version:?}: {released:?}");
    }
}
