//! MQTT 5.0 conformance at the engine level: each test is named after the normative statement of
//! MQTT 5.0 it checks (`mqtt_3_1_2_4_...` for MQTT-3.1.2-4), and `CONFORMANCE.md` traces every
//! statement to its tests. Client and server engines run on simulated time through the `Pair`
//! harness, or alone when a test feeds one of them the bytes a peer would send.

mod support;

use std::collections::HashSet;
use std::num::{NonZeroU16, NonZeroU32};
use std::time::Duration;

use rallymq_codec::{
    Ack, Auth, ConnAck, ConnAckProperties, Connect, Disconnect, DisconnectProperties, MqttString,
    Packet, PacketType, ProtocolVersion, Publish, QoS, ReasonCode, SubAckProperties, Subscribe,
    Subscription, TopicFilter, TopicName, Unsubscribe, UserProperty, Will, WillProperties,
};
use rallymq_session::{
    Accept, ClientConfig, ClientConnection, ClientEvent, CloseReason, Error, OutgoingStage,
    ServerConfig, ServerConnection, ServerEvent, SessionState, Timestamp,
};
use support::{Pair, connect_packet, decode_all, pid, publish};

const V5: ProtocolVersion = ProtocolVersion::V5;
const T0: Timestamp = Timestamp::ZERO;

// ------------------------------------------------------------------ helpers

/// `packet` as an MQTT 5 peer sends it.
fn wire(packet: Packet) -> Vec<u8> {
    packet.to_bytes(V5).expect("encodable").to_vec()
}

/// A connected pair: `tune` adjusts the client's CONNECT, `config` is the server's.
fn pair_with(tune: impl FnOnce(&mut Connect), config: ServerConfig) -> Pair {
    let mut connect = connect_packet(V5, "client-1");
    tune(&mut connect);
    let mut pair = Pair::new(ClientConfig::new(connect), config);
    pair.connect();
    pair
}

/// A server that has received `connect` and waits for the caller to accept or refuse it.
fn deciding_server(connect: Connect) -> ServerConnection {
    deciding_server_with(connect, ServerConfig::default())
}

fn deciding_server_with(connect: Connect, config: ServerConfig) -> ServerConnection {
    let mut server = ServerConnection::new(config, T0);
    server.handle_bytes(T0, &wire(Packet::from(connect)));
    assert!(
        matches!(
            server.poll_event(),
            Some(ServerEvent::ConnectReceived { .. })
        ),
        "the CONNECT is handed to the caller"
    );
    server
}

/// Everything `server` has to send, decoded.
fn sent_by(server: &mut ServerConnection) -> Vec<Packet> {
    let chunks: Vec<_> = std::iter::from_fn(|| server.poll_transmit(T0)).collect();
    decode_all(&chunks, V5)
}

/// Everything `client` has to send, decoded.
fn sent_by_client(client: &mut ClientConnection) -> Vec<Packet> {
    let chunks: Vec<_> = std::iter::from_fn(|| client.poll_transmit(T0)).collect();
    decode_all(&chunks, V5)
}

fn events_of(server: &mut ServerConnection) -> Vec<ServerEvent> {
    std::iter::from_fn(|| server.poll_event()).collect()
}

fn client_events_of(client: &mut ClientConnection) -> Vec<ClientEvent> {
    std::iter::from_fn(|| client.poll_event()).collect()
}

/// A client that has sent `connect` and waits for CONNACK.
fn connecting_client(connect: Connect) -> ClientConnection {
    let mut client = ClientConnection::new(ClientConfig::new(connect), None, T0);
    client.connect(T0).expect("CONNECT can be sent");
    let sent = sent_by_client(&mut client);
    assert!(matches!(sent.as_slice(), [Packet::Connect(_)]), "{sent:?}");
    client
}

/// The reason code the client closed with, if it closed for a protocol violation.
fn client_violation(pair: &Pair) -> Option<ReasonCode> {
    match pair.client_close() {
        Some(CloseReason::ProtocolViolation { reason_code, .. }) => Some(*reason_code),
        _ => None,
    }
}

/// The reason codes of the DISCONNECT packets in `packets`.
fn disconnects(packets: &[Packet]) -> Vec<ReasonCode> {
    packets
        .iter()
        .filter_map(|p| match p {
            Packet::Disconnect(d) => Some(d.reason_code),
            _ => None,
        })
        .collect()
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

/// The packet identifiers of the `kind` acknowledgements in `packets`, in order.
fn acks(packets: &[Packet], kind: PacketType) -> Vec<u16> {
    packets
        .iter()
        .filter(|p| p.packet_type() == kind)
        .filter_map(|p| match p {
            Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
                Some(a.packet_id.get())
            }
            _ => None,
        })
        .collect()
}

fn ack_packets(packets: &[Packet]) -> Vec<(PacketType, u16, ReasonCode)> {
    packets
        .iter()
        .filter_map(|p| match p {
            Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
                Some((p.packet_type(), a.packet_id.get(), a.reason_code))
            }
            _ => None,
        })
        .collect()
}

/// The CONNACK the client of `pair` received last.
fn connack_of(pair: &Pair) -> ConnAck {
    pair.client_events
        .iter()
        .rev()
        .find_map(|e| match e {
            ClientEvent::Connected { connack, .. } => Some(connack.clone()),
            _ => None,
        })
        .expect("connected")
}

/// A QoS 1 or 2 PUBLISH as a peer sends it, with identifier `id`.
fn numbered(topic: &str, qos: QoS, id: u16, payload: &[u8]) -> Publish {
    let mut message = publish(topic, qos, payload);
    message.packet_id = Some(pid(id));
    message
}

fn text(value: &str) -> MqttString {
    MqttString::new(value).expect("valid string")
}

fn filter(value: &str) -> TopicFilter {
    TopicFilter::new(value).expect("valid filter")
}

fn subscribe_packet(id: u16, filters: &[(&str, QoS)]) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: pid(id),
        properties: Default::default(),
        subscriptions: filters
            .iter()
            .map(|(f, qos)| Subscription::new(filter(f), *qos))
            .collect(),
    })
}

fn unsubscribe_packet(id: u16, filters: &[&str]) -> Packet {
    Packet::Unsubscribe(Unsubscribe {
        packet_id: pid(id),
        properties: Default::default(),
        filters: filters.iter().map(|f| filter(f)).collect(),
    })
}

fn the_will(delay: Option<u32>) -> Will {
    Will {
        topic: TopicName::new("clients/1/status").unwrap(),
        payload: "offline".into(),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: WillProperties {
            will_delay_interval: delay,
            user_properties: vec![UserProperty::new("why", "lost").unwrap()],
            ..Default::default()
        }
        .into(),
    }
}

/// A connected pair whose client has a will with `delay` and a session of `expiry` seconds.
fn will_pair(delay: Option<u32>, expiry: u32) -> Pair {
    pair_with(
        |c| {
            c.will = Some(the_will(delay));
            c.properties.session_expiry_interval = Some(expiry);
        },
        ServerConfig::default(),
    )
}

fn wills_due(pair: &Pair) -> Vec<Will> {
    pair.server_events
        .iter()
        .filter_map(|e| match e {
            ServerEvent::WillDue(will) => Some(will.clone()),
            _ => None,
        })
        .collect()
}

/// A string of `len` characters, to push a packet over a size limit.
fn long_text(len: usize) -> MqttString {
    text(&"r".repeat(len))
}

// ------------------------------------------------------------------ 2.2 packet identifiers

#[test]
fn mqtt_2_2_1_4_server_assigns_non_zero_identifiers_unused_while_in_flight() {
    let mut pair = Pair::connected(V5);
    // Nothing reaches the client, so every delivery stays in flight.
    pair.server_to_client = false;
    for i in 0..64u8 {
        let qos = if i % 2 == 0 {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        };
        // The caller's identifier is not used: the engine assigns one.
        let mut message = publish("a", qos, &[i]);
        message.packet_id = Some(pid(1));
        pair.server.deliver(pair.now, message).unwrap();
    }
    pair.drive();
    let ids = |pair: &Pair| -> Vec<u16> {
        publishes(&pair.packets_to_client(V5))
            .iter()
            .map(|p| p.packet_id.expect("QoS > 0 carries an identifier").get())
            .collect()
    };
    let first = ids(&pair);
    assert_eq!(first.len(), 64);
    let distinct: HashSet<u16> = first.iter().copied().collect();
    assert_eq!(distinct.len(), 64, "no identifier twice while in flight");
    assert!(!distinct.contains(&0));
    // Completing one flow frees its identifier; the others stay in use.
    pair.inject_to_server(&wire(Packet::PubAck(Ack::new(pid(first[0])))));
    pair.server
        .deliver(pair.now, publish("a", QoS::AtLeastOnce, b"next"))
        .unwrap();
    pair.drive();
    let next = *ids(&pair).last().unwrap();
    assert!(!first[1..].contains(&next), "{next} is still in flight");
}

#[test]
fn mqtt_2_2_1_5_acknowledgements_carry_the_identifier_of_their_publish() {
    let mut pair = Pair::connected(V5);
    for (qos, payload) in [
        (QoS::AtLeastOnce, b"1"),
        (QoS::AtLeastOnce, b"2"),
        (QoS::ExactlyOnce, b"3"),
    ] {
        pair.client
            .publish(pair.now, publish("up", qos, payload))
            .unwrap();
    }
    for qos in [QoS::ExactlyOnce, QoS::AtLeastOnce] {
        pair.server
            .deliver(pair.now, publish("down", qos, b"x"))
            .unwrap();
    }
    pair.drive();
    let to_server = pair.packets_to_server(V5);
    let to_client = pair.packets_to_client(V5);
    for (from, to) in [(&to_server, &to_client), (&to_client, &to_server)] {
        let ids_at = |qos: QoS| -> Vec<u16> {
            let mut ids: Vec<u16> = publishes(from)
                .iter()
                .filter(|p| p.qos == qos)
                .map(|p| p.packet_id.unwrap().get())
                .collect();
            ids.sort_unstable();
            ids
        };
        let sorted = |mut ids: Vec<u16>| {
            ids.sort_unstable();
            ids
        };
        assert_eq!(
            sorted(acks(to, PacketType::PubAck)),
            ids_at(QoS::AtLeastOnce)
        );
        assert_eq!(
            sorted(acks(to, PacketType::PubRec)),
            ids_at(QoS::ExactlyOnce)
        );
        assert_eq!(
            sorted(acks(from, PacketType::PubRel)),
            ids_at(QoS::ExactlyOnce)
        );
        assert_eq!(
            sorted(acks(to, PacketType::PubComp)),
            ids_at(QoS::ExactlyOnce)
        );
    }
    assert_eq!(pair.client.pending_messages(), (0, 0));
    assert_eq!(pair.server.pending_messages(), (0, 0));
}

#[test]
fn mqtt_2_2_1_6_suback_and_unsuback_carry_the_identifier_of_their_request() {
    let mut pair = Pair::connected(V5);
    pair.inject_to_server(&wire(subscribe_packet(4321, &[("a/#", QoS::AtLeastOnce)])));
    pair.inject_to_server(&wire(unsubscribe_packet(777, &["a/#"])));
    let answers: Vec<(&str, u16)> = pair
        .packets_to_client(V5)
        .iter()
        .filter_map(|p| match p {
            Packet::SubAck(s) => Some(("SUBACK", s.packet_id.get())),
            Packet::UnsubAck(u) => Some(("UNSUBACK", u.packet_id.get())),
            _ => None,
        })
        .collect();
    assert_eq!(answers, [("SUBACK", 4321), ("UNSUBACK", 777)]);
    // An answer with an identifier no pending request carries is refused.
    assert!(matches!(
        pair.server.answer_subscribe(
            pid(4321),
            vec![ReasonCode::Success],
            SubAckProperties::default()
        ),
        Err(Error::InvalidState(_))
    ));
}

// ------------------------------------------------------------------ 3.1 CONNECT

/// A CONNECT's bytes with the protocol name at 4..8, the level at 8 and the flags at 9.
fn raw_connect() -> Vec<u8> {
    let bytes = wire(Packet::from(connect_packet(V5, "c")));
    assert_eq!(&bytes[4..9], b"MQTT\x05");
    bytes
}

#[test]
fn mqtt_3_1_2_1_protocol_name_other_than_mqtt_gets_connack_0x84_and_close() {
    let mut bytes = raw_connect();
    bytes[4..8].copy_from_slice(b"MQTX");
    let mut server = ServerConnection::new(ServerConfig::default(), T0);
    server.handle_bytes(T0, &bytes);
    assert!(server.is_closed());
    assert_eq!(
        events_of(&mut server),
        vec![ServerEvent::Closed(CloseReason::Refused(
            ReasonCode::UnsupportedProtocolVersion
        ))]
    );
    // The client speaks MQTT 5 (level 5): the refusal is a CONNACK it can read.
    let reply: Vec<u8> = std::iter::from_fn(|| server.poll_transmit(T0))
        .flatten()
        .collect();
    let mut client = connecting_client(connect_packet(V5, "c"));
    client.handle_bytes(T0, &reply);
    assert_eq!(
        client_events_of(&mut client),
        vec![ClientEvent::Closed(CloseReason::Refused(
            ReasonCode::UnsupportedProtocolVersion
        ))]
    );
}

#[test]
fn mqtt_3_1_2_2_unsupported_protocol_level_gets_connack_and_close() {
    let mut bytes = raw_connect();
    bytes[8] = 6;
    let mut server = ServerConnection::new(ServerConfig::default(), T0);
    server.handle_bytes(T0, &bytes);
    assert!(server.is_closed());
    assert_eq!(
        events_of(&mut server),
        vec![ServerEvent::Closed(CloseReason::Refused(
            ReasonCode::UnsupportedProtocolVersion
        ))]
    );
    let reply: Vec<u8> = std::iter::from_fn(|| server.poll_transmit(T0))
        .flatten()
        .collect();
    // The level is unknown, so the refusal takes the oldest CONNACK layout (return code 1).
    assert_eq!(reply, [0x20, 0x02, 0x00, 0x01]);
    // Nothing after the CONNECT is read.
    server.handle_bytes(T0, &[0xC0, 0x00]);
    assert_eq!(server.poll_transmit(T0), None);
}

#[test]
fn mqtt_3_1_2_3_reserved_connect_flag_closes_the_connection() {
    let mut bytes = raw_connect();
    bytes[9] |= 0x01;
    let mut server = ServerConnection::new(ServerConfig::default(), T0);
    server.handle_bytes(T0, &bytes);
    assert!(server.is_closed());
    assert!(matches!(
        events_of(&mut server).as_slice(),
        [ServerEvent::Closed(CloseReason::ProtocolViolation {
            reason_code: ReasonCode::MalformedPacket,
            ..
        })]
    ));
    // MQTT 5 lets the server say why before it closes (§4.13): CONNACK 0x81.
    assert_eq!(
        server.poll_transmit(T0).as_deref(),
        Some(&[0x20, 0x03, 0x00, 0x81, 0x00][..]),
        "CONNACK 0x81 to a malformed CONNECT"
    );
}

#[test]
fn mqtt_3_1_2_7_the_will_is_kept_with_the_connection_until_it_is_due() {
    let mut pair = will_pair(None, 60);
    pair.advance(Duration::from_secs(30));
    assert!(
        wills_due(&pair).is_empty(),
        "not while the connection lives"
    );
    pair.drop_link();
    assert_eq!(
        wills_due(&pair),
        vec![the_will(None)],
        "the will as the CONNECT gave it, properties included"
    );
}

#[test]
fn mqtt_3_1_2_8_will_published_after_its_delay_not_after_a_normal_disconnect() {
    let mut pair = will_pair(Some(5), 60);
    pair.drop_link();
    pair.advance(Duration::from_millis(4_900));
    assert!(wills_due(&pair).is_empty(), "within its Will Delay");
    pair.advance(Duration::from_millis(100));
    assert_eq!(wills_due(&pair), vec![the_will(Some(5))]);

    // The session ends before the delay: the will goes at the session's end.
    let mut pair = will_pair(Some(30), 2);
    pair.drop_link();
    pair.advance(Duration::from_secs(2));
    assert_eq!(wills_due(&pair).len(), 1, "at the end of a 2 s session");

    // DISCONNECT with 0x00 deletes it.
    let mut pair = will_pair(None, 60);
    pair.client.disconnect(Disconnect::new(ReasonCode::Success));
    pair.drive();
    pair.advance(Duration::from_secs(120));
    assert!(wills_due(&pair).is_empty());
}

#[test]
fn mqtt_3_1_2_10_will_removed_once_published_or_after_disconnect_0x00() {
    let mut pair = will_pair(Some(1), 60);
    pair.drop_link();
    pair.advance(Duration::from_secs(5));
    assert_eq!(wills_due(&pair).len(), 1);
    pair.server.end_session();
    pair.advance(Duration::from_secs(120));
    assert_eq!(wills_due(&pair).len(), 1, "published once, then gone");

    let mut pair = will_pair(Some(30), 60);
    pair.client.disconnect(Disconnect::new(ReasonCode::Success));
    pair.drive();
    pair.server.end_session();
    pair.advance(Duration::from_secs(120));
    assert!(
        wills_due(&pair).is_empty(),
        "removed on DISCONNECT 0x00, so not published at the session's end"
    );
}

#[test]
fn mqtt_3_1_2_21_client_keeps_alive_at_the_server_keep_alive() {
    let mut connect = connect_packet(V5, "c");
    connect.keep_alive = 60;
    let mut client = connecting_client(connect);
    let mut connack = ConnAck::default();
    connack.properties.server_keep_alive = Some(5);
    client.handle_bytes(T0, &wire(Packet::ConnAck(connack)));
    assert!(client.is_connected());
    let t5 = T0 + Duration::from_secs(5);
    assert_eq!(
        client.poll_timeout(),
        Some(t5),
        "5 s, not the 60 s it asked for"
    );
    client.handle_timeout(t5);
    assert_eq!(sent_by_client(&mut client), vec![Packet::PingReq]);
}

#[test]
fn mqtt_3_1_2_23_both_sides_keep_the_session_state_after_the_connection_closes() {
    let mut pair = pair_with(
        |c| {
            c.clean_start = false;
            c.properties.session_expiry_interval = Some(60);
        },
        ServerConfig::default(),
    );
    pair.client
        .publish(pair.now, publish("up", QoS::AtLeastOnce, b"1"))
        .unwrap();
    pair.server
        .deliver(pair.now, publish("down", QoS::ExactlyOnce, b"2"))
        .unwrap();
    // The connection drops before either message arrives.
    pair.drop_link();
    let client_state = pair.client.session_state();
    let server_state = pair.server.session_state();
    assert_eq!(client_state.session_expiry_interval, 60);
    assert_eq!(server_state.session_expiry_interval, 60);
    assert_eq!(client_state.in_flight.len(), 1);
    assert_eq!(server_state.in_flight.len(), 1);
    // Both resume from what they kept.
    pair.reconnect(false);
    assert_eq!(pair.server_messages().len(), 1);
    assert_eq!(pair.client_messages().len(), 1);
}

#[test]
fn mqtt_3_1_2_24_server_sends_nothing_over_the_client_maximum_packet_size() {
    let mut pair = pair_with(
        |c| c.properties.maximum_packet_size = NonZeroU32::new(40),
        ServerConfig::default(),
    );
    pair.auto_broker = false;
    assert!(matches!(
        pair.server
            .deliver(pair.now, publish("a", QoS::AtMostOnce, &[0; 64])),
        Err(Error::PacketTooLarge { max: 40, .. })
    ));
    pair.server
        .deliver(pair.now, publish("a", QoS::AtMostOnce, b"fits"))
        .unwrap();
    pair.inject_to_server(&wire(subscribe_packet(1, &[("a", QoS::AtMostOnce)])));
    pair.server
        .answer_subscribe(
            pid(1),
            vec![ReasonCode::Success],
            SubAckProperties {
                reason_string: Some(long_text(100)),
                ..Default::default()
            },
        )
        .unwrap();
    pair.server.disconnect(
        pair.now,
        ReasonCode::ServerShuttingDown,
        DisconnectProperties {
            reason_string: Some(long_text(100)),
            ..Default::default()
        },
    );
    pair.drive();
    let sent = pair.packets_to_client(V5);
    assert_eq!(
        sent.len(),
        4,
        "CONNACK, PUBLISH, SUBACK, DISCONNECT: {sent:?}"
    );
    for packet in &sent {
        assert!(packet.encoded_len(V5) <= 40, "{packet:?}");
    }
}

#[test]
fn mqtt_3_1_2_28_no_response_information_unless_the_client_asks_for_it() {
    for asked in [None, Some(false), Some(true)] {
        let mut connect = connect_packet(V5, "c");
        connect.properties.request_response_information = asked;
        let mut server = deciding_server(connect);
        let accept = Accept {
            properties: ConnAckProperties {
                response_information: Some(text("replies/c")),
                ..Default::default()
            },
            ..Accept::default()
        };
        server.accept(T0, accept).unwrap();
        let Some(Packet::ConnAck(connack)) = sent_by(&mut server).into_iter().next() else {
            panic!("no CONNACK")
        };
        assert_eq!(
            connack.properties.response_information.is_some(),
            asked == Some(true),
            "Request Response Information {asked:?}"
        );
    }
}

#[test]
fn mqtt_3_1_2_29_no_reason_string_or_user_property_outside_publish_connack_disconnect() {
    let problem = || SubAckProperties {
        reason_string: Some(text("because")),
        user_properties: vec![UserProperty::new("k", "v").unwrap()],
    };
    for asked in [Some(false), None] {
        let mut pair = pair_with(
            |c| c.properties.request_problem_information = asked,
            ServerConfig::default(),
        );
        pair.auto_broker = false;
        pair.inject_to_server(&wire(subscribe_packet(1, &[("a", QoS::AtMostOnce)])));
        pair.server
            .answer_subscribe(pid(1), vec![ReasonCode::NotAuthorized], problem())
            .unwrap();
        pair.inject_to_server(&wire(unsubscribe_packet(2, &["a"])));
        pair.server
            .answer_unsubscribe(pid(2), vec![ReasonCode::NotAuthorized], problem())
            .unwrap();
        pair.server.disconnect(
            pair.now,
            ReasonCode::ServerShuttingDown,
            DisconnectProperties {
                reason_string: Some(text("bye")),
                ..Default::default()
            },
        );
        pair.drive();
        let sent = pair.packets_to_client(V5);
        let suback = sent.iter().find_map(|p| match p {
            Packet::SubAck(s) => Some(s.properties.clone().into_inner()),
            _ => None,
        });
        let unsuback = sent.iter().find_map(|p| match p {
            Packet::UnsubAck(u) => Some(u.properties.clone().into_inner()),
            _ => None,
        });
        let disconnect = sent.iter().find_map(|p| match p {
            Packet::Disconnect(d) => Some(d.properties.reason_string.clone()),
            _ => None,
        });
        if asked == Some(false) {
            assert_eq!(suback, Some(SubAckProperties::default()));
            assert_eq!(unsuback, Some(SubAckProperties::default()));
        } else {
            assert_eq!(
                suback,
                Some(problem()),
                "sent when the client did not refuse it"
            );
            assert_eq!(unsuback, Some(problem()));
        }
        assert_eq!(
            disconnect,
            Some(Some(text("bye"))),
            "DISCONNECT may carry a Reason String either way"
        );
    }
}

#[test]
fn mqtt_3_1_2_30_client_sends_only_auth_until_connack_when_authenticating() {
    let method = text("SCRAM-SHA-1");
    let mut connect = connect_packet(V5, "c");
    connect.keep_alive = 5;
    connect.properties.authentication_method = Some(method.clone());
    let mut client = connecting_client(connect);
    // What the caller asks for before CONNACK waits, or is refused.
    let queued = client
        .publish(T0, publish("a", QoS::AtLeastOnce, b"later"))
        .unwrap();
    assert!(queued.is_some());
    assert_eq!(
        client.publish(T0, publish("a", QoS::AtMostOnce, b"now")),
        Err(Error::NotConnected)
    );
    assert_eq!(
        client.subscribe(
            vec![Subscription::new(filter("a"), QoS::AtMostOnce)],
            Default::default()
        ),
        Err(Error::NotConnected)
    );
    client.handle_timeout(T0 + Duration::from_secs(20)); // past the keep alive: no PINGREQ yet
    let mut auth = Auth {
        reason_code: ReasonCode::ContinueAuthentication,
        ..Auth::default()
    };
    auth.properties.authentication_method = Some(method.clone());
    client.send_auth(auth).unwrap();
    let sent = sent_by_client(&mut client);
    assert!(
        matches!(sent.as_slice(), [Packet::Auth(_)]),
        "only AUTH before CONNACK: {sent:?}"
    );
    let mut connack = ConnAck::default();
    connack.properties.authentication_method = Some(method);
    client.handle_bytes(
        T0 + Duration::from_secs(20),
        &wire(Packet::ConnAck(connack)),
    );
    assert!(client.is_connected());
    let sent = sent_by_client(&mut client);
    assert!(
        matches!(sent.as_slice(), [Packet::Publish(p)] if p.payload == "later"),
        "the queued message goes once connected: {sent:?}"
    );
}

#[test]
fn mqtt_3_1_3_8_refused_client_identifier_gets_connack_0x85_and_close() {
    let mut server = deciding_server(connect_packet(V5, "not-welcome"));
    server
        .refuse(
            ReasonCode::ClientIdentifierNotValid,
            ConnAckProperties::default(),
        )
        .unwrap();
    assert_eq!(
        sent_by(&mut server),
        vec![Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: ReasonCode::ClientIdentifierNotValid,
            properties: Default::default(),
        })]
    );
    assert!(server.is_closed());
    assert_eq!(
        events_of(&mut server),
        vec![ServerEvent::Closed(CloseReason::Refused(
            ReasonCode::ClientIdentifierNotValid
        ))]
    );
}

#[test]
fn mqtt_3_1_4_1_malformed_connect_gets_connack_0x81_and_the_connection_closes() {
    // The client identifier's length says 1 byte, and the packet ends before it.
    let mut bytes = raw_connect();
    bytes.pop();
    bytes[1] -= 1;
    let mut server = ServerConnection::new(ServerConfig::default(), T0);
    server.handle_bytes(T0, &bytes);
    assert!(server.is_closed());
    assert!(matches!(
        events_of(&mut server).as_slice(),
        [ServerEvent::Closed(CloseReason::ProtocolViolation {
            reason_code: ReasonCode::MalformedPacket,
            ..
        })]
    ));
    assert_eq!(
        server.poll_transmit(T0).as_deref(),
        Some(&[0x20, 0x03, 0x00, 0x81, 0x00][..]),
        "the reason goes in a CONNACK before the close"
    );
}

#[test]
fn mqtt_3_1_4_2_failed_authentication_closes_the_connection() {
    let mut connect = connect_packet(V5, "c");
    connect.username = Some(text("alice"));
    connect.password = Some("wrong".into());
    let mut server = deciding_server(connect);
    server
        .refuse(
            ReasonCode::BadUserNameOrPassword,
            ConnAckProperties::default(),
        )
        .unwrap();
    let sent = sent_by(&mut server);
    assert!(
        matches!(sent.as_slice(), [Packet::ConnAck(c)] if c.reason_code == ReasonCode::BadUserNameOrPassword)
    );
    assert!(server.is_closed());
    server.handle_bytes(T0, &[0xC0, 0x00]);
    assert_eq!(
        server.poll_transmit(T0),
        None,
        "nothing more on a closed connection"
    );
}

#[test]
fn mqtt_3_1_4_5_accepted_connect_gets_connack_0x00() {
    let mut server = deciding_server(connect_packet(V5, "c"));
    server.accept(T0, Accept::default()).unwrap();
    let sent = sent_by(&mut server);
    assert!(
        matches!(sent.as_slice(), [Packet::ConnAck(c)] if c.reason_code == ReasonCode::Success && !c.session_present),
        "{sent:?}"
    );
    assert!(server.is_connected());
}

// ------------------------------------------------------------------ 3.2 CONNACK

#[test]
fn mqtt_3_2_0_1_nothing_but_auth_goes_before_connack() {
    let mut connect = connect_packet(V5, "c");
    connect.properties.authentication_method = Some(text("SCRAM-SHA-1"));
    let mut server = deciding_server(connect);
    assert_eq!(
        server.deliver(T0, publish("a", QoS::AtMostOnce, b"x")),
        Err(Error::NotConnected)
    );
    // A PINGREQ sent right after CONNECT waits for the decision.
    server.handle_bytes(T0, &[0xC0, 0x00]);
    assert_eq!(server.poll_transmit(T0), None);
    let mut challenge = Auth {
        reason_code: ReasonCode::ContinueAuthentication,
        ..Auth::default()
    };
    challenge.properties.authentication_method = Some(text("SCRAM-SHA-1"));
    server.send_auth(challenge).unwrap();
    server.accept(T0, Accept::default()).unwrap();
    let kinds: Vec<PacketType> = sent_by(&mut server)
        .iter()
        .map(Packet::packet_type)
        .collect();
    assert_eq!(
        kinds,
        [PacketType::Auth, PacketType::ConnAck, PacketType::PingResp]
    );
}

#[test]
fn mqtt_3_2_0_2_one_connack_per_connection() {
    let mut pair = Pair::connected(V5);
    assert!(matches!(
        pair.server.accept(pair.now, Accept::default()),
        Err(Error::InvalidState(_))
    ));
    assert!(matches!(
        pair.server
            .refuse(ReasonCode::ServerBusy, ConnAckProperties::default()),
        Err(Error::InvalidState(_))
    ));
    // A second CONNECT is a protocol error, not a new CONNACK.
    pair.inject_to_server(&raw_connect());
    let sent = pair.packets_to_client(V5);
    let connacks = sent
        .iter()
        .filter(|p| matches!(p, Packet::ConnAck(_)))
        .count();
    assert_eq!(connacks, 1, "{sent:?}");
    assert_eq!(disconnects(&sent), [ReasonCode::ProtocolError]);
}

#[test]
fn mqtt_3_2_2_3_session_present_says_whether_a_session_was_resumed() {
    for resumed in [None, Some(SessionState::default())] {
        let mut connect = connect_packet(V5, "c");
        connect.clean_start = false;
        let mut server = deciding_server(connect);
        let expected = resumed.is_some();
        server
            .accept(
                T0,
                Accept {
                    resumed,
                    ..Accept::default()
                },
            )
            .unwrap();
        let sent = sent_by(&mut server);
        assert!(
            matches!(sent.as_slice(), [Packet::ConnAck(c)] if c.session_present == expected && c.reason_code == ReasonCode::Success),
            "{sent:?}"
        );
    }
}

#[test]
fn mqtt_3_2_2_6_refusal_never_has_session_present() {
    let mut connect = connect_packet(V5, "c");
    connect.clean_start = false;
    let mut server = deciding_server(connect);
    server
        .refuse(ReasonCode::NotAuthorized, ConnAckProperties::default())
        .unwrap();
    let sent = sent_by(&mut server);
    assert!(
        matches!(sent.as_slice(), [Packet::ConnAck(c)] if !c.session_present),
        "{sent:?}"
    );
}

#[test]
fn mqtt_3_2_2_7_refusal_closes_the_connection() {
    let mut server = deciding_server(connect_packet(V5, "c"));
    assert!(
        server
            .refuse(ReasonCode::Success, ConnAckProperties::default())
            .is_err(),
        "a refusal needs a failure code"
    );
    server
        .refuse(ReasonCode::ServerBusy, ConnAckProperties::default())
        .unwrap();
    assert!(server.is_closed());
    assert_eq!(
        events_of(&mut server),
        vec![ServerEvent::Closed(CloseReason::Refused(
            ReasonCode::ServerBusy
        ))]
    );
    let _ = sent_by(&mut server);
    server.handle_bytes(T0, &[0xC0, 0x00]);
    assert_eq!(server.poll_transmit(T0), None);
}

#[test]
fn mqtt_3_2_2_8_connack_carries_only_connect_reason_codes() {
    for code in [
        ReasonCode::SessionTakenOver,
        ReasonCode::NoMatchingSubscribers,
        ReasonCode::KeepAliveTimeout,
    ] {
        let mut server = deciding_server(connect_packet(V5, "c"));
        assert!(
            matches!(
                server.refuse(code, ConnAckProperties::default()),
                Err(Error::InvalidState(_))
            ),
            "{code:?} is not a CONNACK reason code"
        );
        assert_eq!(server.poll_transmit(T0), None);
        assert!(!server.is_closed(), "the decision is still the caller's");
        server
            .refuse(ReasonCode::ServerUnavailable, ConnAckProperties::default())
            .unwrap();
    }
}

#[test]
fn mqtt_3_2_2_9_maximum_qos_is_announced_in_connack() {
    let mut server = deciding_server(connect_packet(V5, "c"));
    server
        .accept(
            T0,
            Accept {
                properties: ConnAckProperties {
                    maximum_qos: Some(QoS::AtLeastOnce),
                    ..Default::default()
                },
                ..Accept::default()
            },
        )
        .unwrap();
    let sent = sent_by(&mut server);
    assert!(
        matches!(sent.as_slice(), [Packet::ConnAck(c)] if c.properties.maximum_qos == Some(QoS::AtLeastOnce)),
        "{sent:?}"
    );
}

/// A pair whose server announces `properties` in its CONNACK.
fn pair_announcing(properties: ConnAckProperties) -> Pair {
    let mut pair = Pair::new(
        ClientConfig::new(connect_packet(V5, "c")),
        ServerConfig::default(),
    );
    pair.auto_broker = false;
    pair.client.connect(pair.now).unwrap();
    pair.drive();
    pair.server
        .accept(
            pair.now,
            Accept {
                properties,
                ..Accept::default()
            },
        )
        .unwrap();
    pair.drive();
    assert!(pair.client.is_connected());
    pair
}

#[test]
fn mqtt_3_2_2_10_server_without_qos_1_and_2_still_takes_subscribe_at_any_qos() {
    let mut pair = pair_announcing(ConnAckProperties {
        maximum_qos: Some(QoS::AtMostOnce),
        ..Default::default()
    });
    pair.inject_to_server(&wire(subscribe_packet(
        1,
        &[
            ("a", QoS::AtMostOnce),
            ("b", QoS::AtLeastOnce),
            ("c", QoS::ExactlyOnce),
        ],
    )));
    assert!(pair.server.is_connected());
    let asked: Vec<QoS> = pair
        .server_events
        .iter()
        .find_map(|e| match e {
            ServerEvent::Subscribe(s) => {
                Some(s.subscriptions.iter().map(|s| s.options.qos).collect())
            }
            _ => None,
        })
        .expect("the SUBSCRIBE reaches the caller");
    assert_eq!(asked, [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]);
    pair.server
        .answer_subscribe(
            pid(1),
            vec![ReasonCode::Success; 3],
            SubAckProperties::default(),
        )
        .unwrap();
}

#[test]
fn mqtt_3_2_2_11_no_publish_above_the_maximum_qos() {
    let mut pair = pair_announcing(ConnAckProperties {
        maximum_qos: Some(QoS::AtLeastOnce),
        ..Default::default()
    });
    // The client refuses to send it...
    assert_eq!(
        pair.client
            .publish(pair.now, publish("a", QoS::ExactlyOnce, b"x")),
        Err(Error::NotAllowed(ReasonCode::QoSNotSupported))
    );
    pair.client
        .publish(pair.now, publish("a", QoS::AtLeastOnce, b"x"))
        .unwrap();
    pair.drive();
    assert_eq!(pair.server_messages().len(), 1);
    // ...and the server answers a client that sends it anyway with DISCONNECT 0x9B.
    pair.inject_to_server(&wire(Packet::Publish(numbered(
        "a",
        QoS::ExactlyOnce,
        9,
        b"x",
    ))));
    pair.assert_server_disconnected_with(ReasonCode::QoSNotSupported);
    assert_eq!(pair.server_messages().len(), 1, "the message is not taken");
}

#[test]
fn mqtt_3_2_2_12_will_qos_above_the_maximum_qos_is_refused_with_0x9b() {
    let mut connect = connect_packet(V5, "c");
    let mut will = the_will(None);
    will.qos = QoS::ExactlyOnce;
    connect.will = Some(will);
    let mut server = deciding_server(connect);
    let accept = Accept {
        properties: ConnAckProperties {
            maximum_qos: Some(QoS::AtLeastOnce),
            ..Default::default()
        },
        ..Accept::default()
    };
    assert_eq!(
        server.accept(T0, accept),
        Err(Error::NotAllowed(ReasonCode::QoSNotSupported))
    );
    let sent = sent_by(&mut server);
    assert!(
        matches!(sent.as_slice(), [Packet::ConnAck(c)] if c.reason_code == ReasonCode::QoSNotSupported),
        "{sent:?}"
    );
    assert!(server.is_closed());
    assert_eq!(
        events_of(&mut server),
        vec![ServerEvent::Closed(CloseReason::Refused(
            ReasonCode::QoSNotSupported
        ))],
        "refused, so no will either"
    );
}

#[test]
fn mqtt_3_2_2_13_retained_will_without_retain_support_is_refused_with_0x9a() {
    let mut connect = connect_packet(V5, "c");
    let mut will = the_will(None);
    will.retain = true;
    connect.will = Some(will);
    let mut server = deciding_server(connect);
    let accept = Accept {
        properties: ConnAckProperties {
            retain_available: Some(false),
            ..Default::default()
        },
        ..Accept::default()
    };
    assert_eq!(
        server.accept(T0, accept),
        Err(Error::NotAllowed(ReasonCode::RetainNotSupported))
    );
    let sent = sent_by(&mut server);
    assert!(
        matches!(sent.as_slice(), [Packet::ConnAck(c)] if c.reason_code == ReasonCode::RetainNotSupported),
        "{sent:?}"
    );
    assert!(server.is_closed());
}

#[test]
fn mqtt_3_2_2_14_no_retained_publish_without_retain_support() {
    let mut pair = pair_announcing(ConnAckProperties {
        retain_available: Some(false),
        ..Default::default()
    });
    let mut retained = publish("a", QoS::AtLeastOnce, b"x");
    retained.retain = true;
    assert_eq!(
        pair.client.publish(pair.now, retained),
        Err(Error::NotAllowed(ReasonCode::RetainNotSupported))
    );
    assert_eq!(pair.client.pending_messages(), (0, 0));
    // A client that sends one anyway gets DISCONNECT 0x9A.
    let mut retained = numbered("a", QoS::AtLeastOnce, 3, b"x");
    retained.retain = true;
    pair.inject_to_server(&wire(Packet::Publish(retained)));
    pair.assert_server_disconnected_with(ReasonCode::RetainNotSupported);
    assert!(pair.server_messages().is_empty());
}

#[test]
fn mqtt_3_2_2_15_client_sends_nothing_over_the_server_maximum_packet_size() {
    let config = ServerConfig {
        max_packet_size: 64,
        ..ServerConfig::default()
    };
    let mut pair = pair_with(|_| {}, config);
    assert_eq!(
        connack_of(&pair)
            .properties
            .maximum_packet_size
            .map(NonZeroU32::get),
        Some(64)
    );
    assert!(matches!(
        pair.client
            .publish(pair.now, publish("a", QoS::AtLeastOnce, &[0; 64])),
        Err(Error::PacketTooLarge { max: 64, .. })
    ));
    let long_filter = "f/".repeat(40);
    assert!(matches!(
        pair.client.subscribe(
            vec![Subscription::new(filter(&long_filter), QoS::AtMostOnce)],
            Default::default()
        ),
        Err(Error::PacketTooLarge { max: 64, .. })
    ));
    pair.client
        .publish(pair.now, publish("a", QoS::AtLeastOnce, b"fits"))
        .unwrap();
    pair.drive();
    assert!(pair.server.is_connected());
    for packet in pair.packets_to_server(V5) {
        assert!(packet.encoded_len(V5) <= 64, "{packet:?}");
    }
}

#[test]
fn mqtt_3_2_2_16_empty_client_id_gets_an_assigned_client_identifier() {
    let mut server = deciding_server(connect_packet(V5, ""));
    assert!(
        matches!(
            server.accept(T0, Accept::default()),
            Err(Error::InvalidState(_))
        ),
        "accepting needs an identifier to assign"
    );
    server
        .accept(
            T0,
            Accept {
                assigned_client_id: Some(text("assigned-7")),
                ..Accept::default()
            },
        )
        .unwrap();
    let sent = sent_by(&mut server);
    assert!(
        matches!(sent.as_slice(), [Packet::ConnAck(c)] if c.properties.assigned_client_identifier == Some(text("assigned-7"))),
        "{sent:?}"
    );
}

#[test]
fn mqtt_3_2_2_17_client_topic_aliases_stay_within_the_server_maximum() {
    let config = ServerConfig {
        topic_alias_maximum: 2,
        ..ServerConfig::default()
    };
    let mut pair = pair_with(|_| {}, config);
    let sent_topics = alias_traffic();
    for topic in &sent_topics {
        pair.client
            .publish(pair.now, publish(topic, QoS::AtMostOnce, b"x"))
            .unwrap();
    }
    pair.drive();
    let aliases: Vec<u16> = publishes(&pair.packets_to_server(V5))
        .iter()
        .filter_map(|p| p.properties.topic_alias.map(NonZeroU16::get))
        .collect();
    assert!(!aliases.is_empty(), "aliases are used");
    assert!(aliases.iter().all(|a| (1..=2).contains(a)), "{aliases:?}");
    let topics: Vec<String> = pair.server_messages().into_iter().map(|m| m.0).collect();
    assert_eq!(topics, sent_topics, "the server resolves every alias");
    assert!(pair.server.is_connected());
}

/// Topics long enough to be worth an alias, some sent far more often than others.
fn alias_traffic() -> Vec<String> {
    (0..60)
        .map(|i| {
            let room = match i % 6 {
                0..=2 => 1,
                3 | 4 => 2,
                _ => 3 + i % 4,
            };
            format!("site/rooms/{room}/temperature")
        })
        .collect()
}

#[test]
fn mqtt_3_2_2_18_no_client_topic_aliases_when_the_server_allows_none() {
    let config = ServerConfig {
        topic_alias_maximum: 0,
        ..ServerConfig::default()
    };
    let mut pair = pair_with(|_| {}, config);
    assert_eq!(connack_of(&pair).properties.topic_alias_maximum, None);
    for topic in alias_traffic() {
        pair.client
            .publish(pair.now, publish(&topic, QoS::AtMostOnce, b"x"))
            .unwrap();
    }
    pair.drive();
    let sent = publishes(&pair.packets_to_server(V5));
    assert_eq!(sent.len(), 60);
    assert!(
        sent.iter()
            .all(|p| p.properties.topic_alias.is_none() && p.topic.is_some())
    );
}

#[test]
fn mqtt_3_2_2_19_connack_reason_string_left_out_over_the_client_maximum_packet_size() {
    let mut connect = connect_packet(V5, "c");
    connect.properties.maximum_packet_size = NonZeroU32::new(32);
    let mut server = deciding_server(connect.clone());
    let properties = ConnAckProperties {
        reason_string: Some(long_text(64)),
        ..Default::default()
    };
    server
        .accept(
            T0,
            Accept {
                properties: properties.clone(),
                ..Accept::default()
            },
        )
        .unwrap();
    let sent = sent_by(&mut server);
    assert!(
        matches!(sent.as_slice(), [Packet::ConnAck(c)] if c.properties.reason_string.is_none() && c.reason_code == ReasonCode::Success),
        "{sent:?}"
    );
    // A refusal too: the client's limit holds from its CONNECT on.
    let mut server = deciding_server(connect);
    server
        .refuse(ReasonCode::NotAuthorized, properties)
        .unwrap();
    let sent = sent_by(&mut server);
    assert!(
        matches!(sent.as_slice(), [Packet::ConnAck(c)] if c.properties.reason_string.is_none() && c.reason_code == ReasonCode::NotAuthorized),
        "{sent:?}"
    );
    assert!(sent[0].encoded_len(V5) <= 32);
}

#[test]
fn mqtt_3_2_2_20_connack_user_properties_left_out_over_the_client_maximum_packet_size() {
    let mut connect = connect_packet(V5, "c");
    connect.properties.maximum_packet_size = NonZeroU32::new(32);
    let properties = ConnAckProperties {
        user_properties: vec![UserProperty::new("region", "x".repeat(40)).unwrap()],
        ..Default::default()
    };
    let mut server = deciding_server(connect.clone());
    server
        .accept(
            T0,
            Accept {
                properties: properties.clone(),
                ..Accept::default()
            },
        )
        .unwrap();
    let sent = sent_by(&mut server);
    assert!(
        matches!(sent.as_slice(), [Packet::ConnAck(c)] if c.properties.user_properties.is_empty()),
        "{sent:?}"
    );
    // Within the limit they go.
    connect.properties.maximum_packet_size = None;
    let mut server = deciding_server(connect);
    server
        .accept(
            T0,
            Accept {
                properties: properties.clone(),
                ..Accept::default()
            },
        )
        .unwrap();
    let sent = sent_by(&mut server);
    assert!(
        matches!(sent.as_slice(), [Packet::ConnAck(c)] if c.properties.user_properties == properties.user_properties),
        "{sent:?}"
    );
}

#[test]
fn mqtt_3_2_2_21_server_keep_alive_replaces_the_client_keep_alive() {
    // The client asked for 30 s; the server's 0 turns keep-alive off.
    let mut connect = connect_packet(V5, "c");
    connect.keep_alive = 30;
    let mut client = connecting_client(connect);
    let mut connack = ConnAck::default();
    connack.properties.server_keep_alive = Some(0);
    client.handle_bytes(T0, &wire(Packet::ConnAck(connack)));
    assert!(client.is_connected());
    assert_eq!(client.poll_timeout(), None, "no PINGREQ is ever due");
    client.handle_timeout(T0 + Duration::from_secs(3600));
    assert!(sent_by_client(&mut client).is_empty());

    // The client asked for none; the server's 10 s has it ping every 10 s.
    let mut client = connecting_client(connect_packet(V5, "c"));
    let mut connack = ConnAck::default();
    connack.properties.server_keep_alive = Some(10);
    client.handle_bytes(T0, &wire(Packet::ConnAck(connack)));
    let t10 = T0 + Duration::from_secs(10);
    assert_eq!(client.poll_timeout(), Some(t10));
    client.handle_timeout(t10);
    assert_eq!(sent_by_client(&mut client), vec![Packet::PingReq]);
}

#[test]
fn mqtt_3_2_2_22_without_server_keep_alive_the_server_uses_the_client_keep_alive() {
    let mut pair = pair_with(|c| c.keep_alive = 10, ServerConfig::default());
    assert_eq!(connack_of(&pair).properties.server_keep_alive, None);
    assert_eq!(pair.server.keep_alive(), Duration::from_secs(10));
    // The client falls silent after its CONNECT: closed at one and a half times its keep alive.
    let connect_arrived = pair.latency;
    let deadline = T0 + connect_arrived + Duration::from_secs(15);
    assert_eq!(pair.server.poll_timeout(), Some(deadline));
    pair.server
        .handle_timeout(T0 + connect_arrived + Duration::from_millis(14_999));
    assert!(pair.server.is_connected());
    pair.server.handle_timeout(deadline);
    assert!(pair.server.is_closed());
    assert_eq!(
        pair.server.poll_event(),
        Some(ServerEvent::Closed(CloseReason::KeepAliveTimeout))
    );
}

// ------------------------------------------------------------------ 3.3 PUBLISH

/// A pair whose session outlives its connection, with the server keeping it.
fn persistent_pair() -> Pair {
    pair_with(
        |c| {
            c.clean_start = false;
            c.properties.session_expiry_interval = Some(3600);
        },
        ServerConfig::default(),
    )
}

#[test]
fn mqtt_3_3_1_1_dup_is_set_on_redelivery_only() {
    let mut pair = persistent_pair();
    pair.client
        .publish(pair.now, publish("up", QoS::AtLeastOnce, b"1"))
        .unwrap();
    pair.server
        .deliver(pair.now, publish("down", QoS::ExactlyOnce, b"2"))
        .unwrap();
    pair.drop_link();
    pair.sent_to_server.clear();
    pair.sent_to_client.clear();
    pair.reconnect(false);
    let resent_up = publishes(&pair.packets_to_server(V5));
    let resent_down = publishes(&pair.packets_to_client(V5));
    assert!(
        matches!(resent_up.as_slice(), [p] if p.dup && p.payload == "1"),
        "{resent_up:?}"
    );
    assert!(
        matches!(resent_down.as_slice(), [p] if p.dup && p.payload == "2"),
        "{resent_down:?}"
    );
    // A new message after the resume goes without DUP.
    pair.client
        .publish(pair.now, publish("up", QoS::AtLeastOnce, b"3"))
        .unwrap();
    pair.drive();
    let last = publishes(&pair.packets_to_server(V5)).pop().unwrap();
    assert!(!last.dup && last.payload == "3");
}

#[test]
fn mqtt_3_3_2_9_client_sends_no_topic_alias_above_the_server_maximum() {
    let config = ServerConfig {
        topic_alias_maximum: 1,
        ..ServerConfig::default()
    };
    let mut pair = pair_with(|_| {}, config);
    for topic in alias_traffic() {
        pair.client
            .publish(pair.now, publish(&topic, QoS::AtMostOnce, b"x"))
            .unwrap();
    }
    pair.drive();
    let highest = publishes(&pair.packets_to_server(V5))
        .iter()
        .filter_map(|p| p.properties.topic_alias.map(NonZeroU16::get))
        .max();
    assert_eq!(highest, Some(1));
    // A client that goes above it anyway is disconnected with 0x94.
    let mut message = publish("d", QoS::AtMostOnce, b"x");
    message.properties.topic_alias = NonZeroU16::new(2);
    pair.inject_to_server(&wire(Packet::Publish(message)));
    pair.assert_server_disconnected_with(ReasonCode::TopicAliasInvalid);
}

#[test]
fn mqtt_3_3_2_10_client_accepts_every_topic_alias_up_to_its_maximum() {
    let mut pair = pair_with(
        |c| c.properties.topic_alias_maximum = Some(3),
        ServerConfig::default(),
    );
    for alias in 1..=3u16 {
        let mut message = publish(&format!("t/{alias}"), QoS::AtMostOnce, b"set");
        message.properties.topic_alias = NonZeroU16::new(alias);
        pair.inject_to_client(&wire(Packet::Publish(message)));
    }
    for alias in [3u16, 1, 2] {
        let mut message = publish("unused", QoS::AtLeastOnce, b"use");
        message.topic = None;
        message.packet_id = Some(pid(alias));
        message.properties.topic_alias = NonZeroU16::new(alias);
        pair.inject_to_client(&wire(Packet::Publish(message)));
    }
    let topics: Vec<String> = pair.client_messages().into_iter().map(|m| m.0).collect();
    assert_eq!(topics, ["t/1", "t/2", "t/3", "t/3", "t/1", "t/2"]);
    assert!(pair.client.is_connected());
    // Above its maximum is a protocol violation: DISCONNECT 0x94.
    let mut message = publish("t/4", QoS::AtMostOnce, b"x");
    message.properties.topic_alias = NonZeroU16::new(4);
    pair.inject_to_client(&wire(Packet::Publish(message)));
    assert_eq!(client_violation(&pair), Some(ReasonCode::TopicAliasInvalid));
    assert_eq!(
        disconnects(&pair.packets_to_server(V5)),
        [ReasonCode::TopicAliasInvalid]
    );
}

#[test]
fn mqtt_3_3_4_1_the_answer_to_a_publish_follows_its_qos() {
    for (qos, expected) in [
        (QoS::AtMostOnce, None),
        (QoS::AtLeastOnce, Some(PacketType::PubAck)),
        (QoS::ExactlyOnce, Some(PacketType::PubRec)),
    ] {
        let mut pair = Pair::connected(V5);
        pair.server_to_client = false;
        let mut message = publish("a", qos, b"x");
        if qos != QoS::AtMostOnce {
            message.packet_id = Some(pid(5));
        }
        pair.inject_to_server(&wire(Packet::Publish(message.clone())));
        let answers: Vec<(PacketType, u16, ReasonCode)> = ack_packets(&pair.packets_to_client(V5));
        assert_eq!(
            answers,
            expected
                .map(|kind| vec![(kind, 5, ReasonCode::Success)])
                .unwrap_or_default(),
            "server, {qos:?}"
        );
        // The client answers the same way.
        pair.inject_to_client(&wire(Packet::Publish(message)));
        assert_eq!(
            ack_packets(&pair.packets_to_server(V5)),
            expected
                .map(|kind| vec![(kind, 5, ReasonCode::Success)])
                .unwrap_or_default(),
            "client, {qos:?}"
        );
    }
}

#[test]
fn mqtt_3_3_4_6_client_sends_no_subscription_identifier() {
    let mut pair = Pair::connected(V5);
    // A message the client received, forwarded as it came: with its identifiers.
    let mut forwarded = publish("relay/out", QoS::AtLeastOnce, b"x");
    forwarded.properties.subscription_identifiers =
        vec![rallymq_codec::SubscriptionId::new(7).unwrap()];
    pair.client.publish(pair.now, forwarded).unwrap();
    pair.drive();
    let sent = publishes(&pair.packets_to_server(V5));
    assert!(
        matches!(sent.as_slice(), [p] if p.properties.subscription_identifiers.is_empty()),
        "{sent:?}"
    );
    assert_eq!(pair.server_messages().len(), 1);
    assert!(pair.server.is_connected());
}

/// A pair whose client holds its acknowledgements (so the server's window stays full) and
/// allows one unacknowledged message.
fn pair_with_full_server_window() -> Pair {
    let mut connect = connect_packet(V5, "c");
    connect.properties.receive_maximum = NonZeroU16::new(1);
    connect.keep_alive = 10;
    let mut config = ClientConfig::new(connect);
    config.manual_acks = true;
    let mut pair = Pair::new(config, ServerConfig::default());
    pair.connect();
    for i in 0..3u8 {
        pair.server
            .deliver(pair.now, publish("down", QoS::AtLeastOnce, &[i]))
            .unwrap();
    }
    pair.drive();
    assert_eq!(pair.server.pending_messages(), (1, 2), "the window is full");
    pair
}

#[test]
fn mqtt_3_3_4_8_client_does_not_hold_other_packets_for_receive_maximum() {
    let config = ServerConfig {
        receive_maximum: 1,
        ..ServerConfig::default()
    };
    let mut pair = pair_with(|c| c.keep_alive = 10, config);
    // No acknowledgement reaches the client: its window stays full.
    pair.server_to_client = false;
    for i in 0..3u8 {
        pair.client
            .publish(pair.now, publish("up", QoS::AtLeastOnce, &[i]))
            .unwrap();
    }
    assert_eq!(pair.client.pending_messages(), (1, 2));
    pair.client
        .subscribe(
            vec![Subscription::new(filter("a"), QoS::AtLeastOnce)],
            Default::default(),
        )
        .unwrap();
    pair.inject_to_client(&wire(Packet::Publish(numbered(
        "a",
        QoS::AtLeastOnce,
        9,
        b"in",
    ))));
    pair.client
        .publish(pair.now, publish("up", QoS::AtMostOnce, b"qos0"))
        .unwrap();
    pair.advance(Duration::from_secs(10));
    let sent = pair.packets_to_server(V5);
    let kinds: Vec<PacketType> = sent.iter().map(Packet::packet_type).collect();
    assert!(kinds.contains(&PacketType::Subscribe), "{kinds:?}");
    assert!(kinds.contains(&PacketType::PingReq), "{kinds:?}");
    assert_eq!(acks(&sent, PacketType::PubAck), [9]);
    let qos1_sent = publishes(&sent)
        .iter()
        .filter(|p| p.qos == QoS::AtLeastOnce)
        .count();
    assert_eq!(qos1_sent, 1, "only the QoS 1 PUBLISH waits");
    assert_eq!(publishes(&sent).len(), 2, "QoS 0 goes too");
}

#[test]
fn mqtt_3_3_4_10_server_does_not_hold_other_packets_for_receive_maximum() {
    let mut pair = pair_with_full_server_window();
    pair.inject_to_server(&wire(subscribe_packet(7, &[("a", QoS::AtMostOnce)])));
    pair.inject_to_server(&wire(Packet::Publish(numbered(
        "up",
        QoS::AtLeastOnce,
        4,
        b"x",
    ))));
    pair.server
        .deliver(pair.now, publish("down", QoS::AtMostOnce, b"qos0"))
        .unwrap();
    pair.advance(Duration::from_secs(10)); // the client pings
    let sent = pair.packets_to_client(V5);
    let kinds: Vec<PacketType> = sent.iter().map(Packet::packet_type).collect();
    assert!(kinds.contains(&PacketType::SubAck), "{kinds:?}");
    assert!(kinds.contains(&PacketType::PingResp), "{kinds:?}");
    assert_eq!(acks(&sent, PacketType::PubAck), [4]);
    let qos: Vec<QoS> = publishes(&sent).iter().map(|p| p.qos).collect();
    assert_eq!(qos, [QoS::AtLeastOnce, QoS::AtMostOnce]);
}

// ------------------------------------------------------------------ 3.4 - 3.7 acknowledgements

/// A pair where the server acknowledges by hand, with one QoS `qos` message from the client
/// waiting for it.
fn pair_with_pending_ack(qos: QoS) -> (Pair, rallymq_session::AckHandle) {
    let config = ServerConfig {
        manual_acks: true,
        ..ServerConfig::default()
    };
    let mut pair = pair_with(|_| {}, config);
    pair.client
        .publish(pair.now, publish("a", qos, b"x"))
        .unwrap();
    pair.drive();
    let handle = pair
        .server_events
        .iter()
        .find_map(|e| match e {
            ServerEvent::Message(m) => m.ack,
            _ => None,
        })
        .expect("a handle to acknowledge with");
    (pair, handle)
}

/// The reason code that goes out when the server acknowledges a QoS `qos` message with
/// `given`. Decoding it checks that its packet type defines it.
fn acknowledged_as(qos: QoS, given: ReasonCode) -> ReasonCode {
    let (mut pair, handle) = pair_with_pending_ack(qos);
    pair.server.acknowledge(handle, given);
    pair.drive();
    let kind = if qos == QoS::AtLeastOnce {
        PacketType::PubAck
    } else {
        PacketType::PubRec
    };
    let answers: Vec<_> = ack_packets(&pair.packets_to_client(V5))
        .into_iter()
        .filter(|(k, ..)| *k == kind)
        .collect();
    match answers.as_slice() {
        [(_, 1, code)] => *code,
        other => panic!("{given:?}: {other:?}"),
    }
}

#[test]
fn mqtt_3_4_2_1_puback_carries_only_puback_reason_codes() {
    for (given, sent) in [
        (
            ReasonCode::NoMatchingSubscribers,
            ReasonCode::NoMatchingSubscribers,
        ),
        (ReasonCode::QuotaExceeded, ReasonCode::QuotaExceeded),
        // Not PUBACK codes: a failure goes as 0x80, anything else as success.
        (ReasonCode::SessionTakenOver, ReasonCode::UnspecifiedError),
        (ReasonCode::GrantedQoS2, ReasonCode::Success),
    ] {
        assert_eq!(acknowledged_as(QoS::AtLeastOnce, given), sent, "{given:?}");
    }
}

#[test]
fn mqtt_3_5_2_1_pubrec_carries_only_pubrec_reason_codes() {
    for (given, sent) in [
        (
            ReasonCode::PacketIdentifierInUse,
            ReasonCode::PacketIdentifierInUse,
        ),
        (
            ReasonCode::PayloadFormatInvalid,
            ReasonCode::PayloadFormatInvalid,
        ),
        (ReasonCode::KeepAliveTimeout, ReasonCode::UnspecifiedError),
        (ReasonCode::GrantedQoS1, ReasonCode::Success),
    ] {
        assert_eq!(acknowledged_as(QoS::ExactlyOnce, given), sent, "{given:?}");
    }
}

#[test]
fn mqtt_3_6_1_1_pubrel_with_wrong_flags_is_malformed() {
    let mut pair = Pair::connected(V5);
    pair.inject_to_server(&[0x60, 0x02, 0x00, 0x01]);
    pair.assert_server_disconnected_with(ReasonCode::MalformedPacket);
    assert!(pair.server.is_closed());
}

#[test]
fn mqtt_3_6_2_1_pubrel_carries_only_pubrel_reason_codes() {
    let mut pair = Pair::connected(V5);
    pair.server_to_client = false;
    pair.server
        .deliver(pair.now, publish("a", QoS::ExactlyOnce, b"x"))
        .unwrap();
    pair.drive();
    // PUBREC for the message, then one for an identifier never sent.
    pair.inject_to_server(&wire(Packet::PubRec(Ack::new(pid(1)))));
    pair.inject_to_server(&wire(Packet::PubRec(Ack::new(pid(99)))));
    let releases: Vec<_> = ack_packets(&pair.packets_to_client(V5));
    assert_eq!(
        releases,
        [
            (PacketType::PubRel, 1, ReasonCode::Success),
            (PacketType::PubRel, 99, ReasonCode::PacketIdentifierNotFound)
        ]
    );
}

#[test]
fn mqtt_3_7_2_1_pubcomp_carries_only_pubcomp_reason_codes() {
    let mut pair = Pair::connected(V5);
    pair.server_to_client = false;
    pair.inject_to_server(&wire(Packet::Publish(numbered(
        "a",
        QoS::ExactlyOnce,
        3,
        b"x",
    ))));
    pair.inject_to_server(&wire(Packet::PubRel(Ack::new(pid(3)))));
    pair.inject_to_server(&wire(Packet::PubRel(Ack::new(pid(4)))));
    let completions: Vec<_> = ack_packets(&pair.packets_to_client(V5))
        .into_iter()
        .filter(|(kind, ..)| *kind == PacketType::PubComp)
        .collect();
    assert_eq!(
        completions,
        [
            (PacketType::PubComp, 3, ReasonCode::Success),
            (PacketType::PubComp, 4, ReasonCode::PacketIdentifierNotFound)
        ]
    );
}

// ------------------------------------------------------------------ 3.8 - 3.11 SUBSCRIBE, UNSUBSCRIBE

#[test]
fn mqtt_3_8_1_1_subscribe_with_wrong_flags_is_malformed() {
    let mut pair = Pair::connected(V5);
    let mut bytes = wire(subscribe_packet(1, &[("a", QoS::AtMostOnce)]));
    assert_eq!(bytes[0], 0x82);
    bytes[0] = 0x80;
    pair.inject_to_server(&bytes);
    pair.assert_server_disconnected_with(ReasonCode::MalformedPacket);
    assert!(
        !pair
            .server_events
            .iter()
            .any(|e| matches!(e, ServerEvent::Subscribe(_)))
    );
}

/// A connected pair whose server answers by hand, with a request pending: SUBSCRIBE (`kind`
/// SUBACK) or UNSUBSCRIBE (UNSUBACK) with identifier 1 and these `filters`.
fn pair_with_request(kind: PacketType, filters: &[&str]) -> Pair {
    let mut pair = Pair::connected(V5);
    pair.auto_broker = false;
    let request = if kind == PacketType::SubAck {
        let filters: Vec<(&str, QoS)> = filters.iter().map(|f| (*f, QoS::AtMostOnce)).collect();
        subscribe_packet(1, &filters)
    } else {
        unsubscribe_packet(1, filters)
    };
    pair.inject_to_server(&wire(request));
    pair
}

/// Answers the pending request 1 of `pair` with `codes`.
fn answer(pair: &mut Pair, kind: PacketType, codes: Vec<ReasonCode>) -> Result<(), Error> {
    let properties = SubAckProperties::default();
    if kind == PacketType::SubAck {
        pair.server.answer_subscribe(pid(1), codes, properties)
    } else {
        pair.server.answer_unsubscribe(pid(1), codes, properties)
    }
}

/// The reason codes of the `kind` answers the client received on the wire.
fn answered_codes(pair: &Pair, kind: PacketType) -> Vec<Vec<ReasonCode>> {
    pair.packets_to_client(V5)
        .into_iter()
        .filter_map(|p| match p {
            Packet::SubAck(s) if kind == PacketType::SubAck => Some(s.reason_codes),
            Packet::UnsubAck(u) if kind == PacketType::UnsubAck => Some(u.reason_codes),
            _ => None,
        })
        .collect()
}

/// Asserts that answering the pending request of `pair` with each of `refused` fails, leaving
/// it pending, and that `accepted` then goes out.
fn assert_answers(
    pair: &mut Pair,
    kind: PacketType,
    refused: &[Vec<ReasonCode>],
    accepted: Vec<ReasonCode>,
) {
    for codes in refused {
        assert!(
            matches!(
                answer(pair, kind, codes.clone()),
                Err(Error::InvalidState(_))
            ),
            "{kind:?} {codes:?}"
        );
    }
    answer(pair, kind, accepted.clone()).unwrap();
    pair.drive();
    assert_eq!(answered_codes(pair, kind), [accepted]);
    assert!(pair.client.is_connected());
}

#[test]
fn mqtt_3_8_4_6_suback_has_one_reason_code_per_subscription() {
    let kind = PacketType::SubAck;
    let mut pair = pair_with_request(kind, &["a", "b"]);
    assert_answers(
        &mut pair,
        kind,
        &[vec![ReasonCode::Success], vec![ReasonCode::Success; 3]],
        vec![ReasonCode::Success, ReasonCode::GrantedQoS1],
    );
}

/// A connected pair whose client accepts packets of at most `max` bytes, answering SUBSCRIBE
/// and UNSUBSCRIBE by hand.
fn small_client_pair(max: u32) -> Pair {
    let mut pair = pair_with(
        |c| c.properties.maximum_packet_size = NonZeroU32::new(max),
        ServerConfig::default(),
    );
    pair.auto_broker = false;
    pair
}

/// The properties of the answer the client receives when the server answers a `kind` request
/// with `properties`, the client accepting packets of at most 24 bytes.
fn answered_properties(kind: PacketType, properties: SubAckProperties) -> SubAckProperties {
    let mut pair = small_client_pair(24);
    let (request, code) = if kind == PacketType::SubAck {
        (
            subscribe_packet(1, &[("a", QoS::AtMostOnce)]),
            ReasonCode::Success,
        )
    } else {
        (
            unsubscribe_packet(1, &["a"]),
            ReasonCode::NoSubscriptionExisted,
        )
    };
    pair.inject_to_server(&wire(request));
    let sent = if kind == PacketType::SubAck {
        pair.server.answer_subscribe(pid(1), vec![code], properties)
    } else {
        pair.server
            .answer_unsubscribe(pid(1), vec![code], properties)
    };
    sent.unwrap();
    pair.drive();
    assert!(pair.client.is_connected());
    let answers: Vec<SubAckProperties> = pair
        .packets_to_client(V5)
        .into_iter()
        .filter_map(|p| match p {
            Packet::SubAck(s) => Some(s.properties.into_inner()),
            Packet::UnsubAck(u) => Some(u.properties.into_inner()),
            _ => None,
        })
        .collect();
    match answers.as_slice() {
        [properties] => properties.clone(),
        other => panic!("{other:?}"),
    }
}

fn reason_string(value: MqttString) -> SubAckProperties {
    SubAckProperties {
        reason_string: Some(value),
        ..Default::default()
    }
}

fn long_user_property() -> SubAckProperties {
    SubAckProperties {
        user_properties: vec![UserProperty::new("k", "v".repeat(30)).unwrap()],
        ..Default::default()
    }
}

#[test]
fn mqtt_3_9_2_1_suback_reason_string_left_out_over_the_client_maximum_packet_size() {
    let kind = PacketType::SubAck;
    let left_out = answered_properties(kind, reason_string(long_text(64)));
    assert_eq!(left_out, SubAckProperties::default());
    let kept = answered_properties(kind, reason_string(text("ok")));
    assert_eq!(kept, reason_string(text("ok")), "kept where it fits");
}

#[test]
fn mqtt_3_9_2_2_suback_user_properties_left_out_over_the_client_maximum_packet_size() {
    let answered = answered_properties(PacketType::SubAck, long_user_property());
    assert_eq!(answered, SubAckProperties::default());
}

#[test]
fn mqtt_3_9_3_2_suback_carries_only_subscribe_reason_codes() {
    let kind = PacketType::SubAck;
    let mut pair = pair_with_request(kind, &["a"]);
    assert_answers(
        &mut pair,
        kind,
        &[
            vec![ReasonCode::NoSubscriptionExisted],
            vec![ReasonCode::SessionTakenOver],
            vec![ReasonCode::DisconnectWithWillMessage],
        ],
        vec![ReasonCode::WildcardSubscriptionsNotSupported],
    );
}

#[test]
fn mqtt_3_10_1_1_unsubscribe_with_wrong_flags_is_malformed() {
    let mut pair = Pair::connected(V5);
    let mut bytes = wire(unsubscribe_packet(1, &["a"]));
    assert_eq!(bytes[0], 0xA2);
    bytes[0] = 0xA3;
    pair.inject_to_server(&bytes);
    pair.assert_server_disconnected_with(ReasonCode::MalformedPacket);
}

#[test]
fn mqtt_3_10_4_3_deliveries_under_way_complete_after_unsubscribe() {
    let mut connect = connect_packet(V5, "c");
    connect.keep_alive = 0;
    let mut config = ClientConfig::new(connect);
    config.manual_acks = true;
    let mut pair = Pair::new(config, ServerConfig::default());
    pair.connect();
    pair.server
        .deliver(pair.now, publish("a/b", QoS::ExactlyOnce, b"x"))
        .unwrap();
    pair.drive();
    let handle = pair
        .client_events
        .iter()
        .find_map(|e| match e {
            ClientEvent::Message(m) => m.ack,
            _ => None,
        })
        .expect("held for the caller");
    pair.client
        .unsubscribe(vec![filter("a/#")], Default::default())
        .unwrap();
    pair.drive();
    assert_eq!(pair.server.pending_messages(), (1, 0), "still in flight");
    pair.client.acknowledge(handle, ReasonCode::Success);
    pair.drive();
    assert!(pair.server_events.iter().any(
        |e| matches!(e, ServerEvent::DeliveryCompleted(o) if o.reason_code == ReasonCode::Success)
    ));
    assert_eq!(pair.server.pending_messages(), (0, 0));
}

#[test]
fn mqtt_3_11_2_1_unsuback_reason_string_left_out_over_the_client_maximum_packet_size() {
    let answered = answered_properties(PacketType::UnsubAck, reason_string(long_text(64)));
    assert_eq!(answered, SubAckProperties::default());
}

#[test]
fn mqtt_3_11_2_2_unsuback_user_properties_left_out_over_the_client_maximum_packet_size() {
    let answered = answered_properties(PacketType::UnsubAck, long_user_property());
    assert_eq!(answered, SubAckProperties::default());
}

#[test]
fn mqtt_3_11_3_1_unsuback_has_one_reason_code_per_filter_in_order() {
    let kind = PacketType::UnsubAck;
    let mut pair = pair_with_request(kind, &["a", "b"]);
    assert_answers(
        &mut pair,
        kind,
        &[vec![ReasonCode::Success]],
        vec![ReasonCode::NoSubscriptionExisted, ReasonCode::Success],
    );
}

#[test]
fn mqtt_3_11_3_2_unsuback_carries_only_unsubscribe_reason_codes() {
    let kind = PacketType::UnsubAck;
    let mut pair = pair_with_request(kind, &["a"]);
    assert_answers(
        &mut pair,
        kind,
        &[
            vec![ReasonCode::GrantedQoS1],
            vec![ReasonCode::QuotaExceeded],
        ],
        vec![ReasonCode::NoSubscriptionExisted],
    );
}

// ------------------------------------------------------------------ 3.12 - 3.15

#[test]
fn mqtt_3_12_4_1_pingreq_gets_pingresp() {
    let mut pair = Pair::connected(V5);
    for _ in 0..3 {
        pair.inject_to_server(&[0xC0, 0x00]);
    }
    let pongs = pair
        .packets_to_client(V5)
        .iter()
        .filter(|p| **p == Packet::PingResp)
        .count();
    assert_eq!(pongs, 3);
}

#[test]
fn mqtt_3_14_0_1_no_disconnect_before_a_successful_connack() {
    // The caller closes while deciding.
    let mut server = deciding_server(connect_packet(V5, "c"));
    server.disconnect(
        T0,
        ReasonCode::ServerShuttingDown,
        DisconnectProperties::default(),
    );
    assert!(server.is_closed());
    assert_eq!(server.poll_transmit(T0), None);

    // A malformed AUTH while deciding closes without DISCONNECT.
    let mut connect = connect_packet(V5, "c");
    connect.properties.authentication_method = Some(text("SCRAM-SHA-1"));
    let mut server = deciding_server(connect);
    server.handle_bytes(T0, &[0xF0, 0x01, 0x42]);
    assert!(server.is_closed());
    assert_eq!(server.poll_transmit(T0), None);

    // A refused connection gets its CONNACK and nothing after.
    let mut server = deciding_server(connect_packet(V5, "c"));
    server
        .refuse(ReasonCode::NotAuthorized, ConnAckProperties::default())
        .unwrap();
    server.disconnect(
        T0,
        ReasonCode::ServerShuttingDown,
        DisconnectProperties::default(),
    );
    let kinds: Vec<PacketType> = sent_by(&mut server)
        .iter()
        .map(Packet::packet_type)
        .collect();
    assert_eq!(kinds, [PacketType::ConnAck]);
}

#[test]
fn mqtt_3_14_1_1_disconnect_with_reserved_bits_set_is_malformed() {
    let mut pair = Pair::connected(V5);
    pair.inject_to_server(&[0xE1, 0x00]);
    pair.assert_server_disconnected_with(ReasonCode::MalformedPacket);
    let mut pair = Pair::connected(V5);
    pair.inject_to_client(&[0xE2, 0x00]);
    assert_eq!(client_violation(&pair), Some(ReasonCode::MalformedPacket));
    assert_eq!(
        disconnects(&pair.packets_to_server(V5)),
        [ReasonCode::MalformedPacket]
    );
}

#[test]
fn mqtt_3_14_2_1_disconnect_carries_only_disconnect_reason_codes() {
    for (given, sent) in [
        (ReasonCode::ServerBusy, ReasonCode::ServerBusy),
        (
            ReasonCode::BadAuthenticationMethod,
            ReasonCode::UnspecifiedError,
        ),
        (ReasonCode::GrantedQoS1, ReasonCode::Success),
    ] {
        let mut pair = Pair::connected(V5);
        pair.server
            .disconnect(pair.now, given, DisconnectProperties::default());
        pair.drive();
        assert_eq!(
            disconnects(&pair.packets_to_client(V5)),
            [sent],
            "{given:?}"
        );

        let mut pair = Pair::connected(V5);
        pair.client.disconnect(Disconnect::new(given));
        pair.drive();
        assert_eq!(
            disconnects(&pair.packets_to_server(V5)),
            [sent],
            "{given:?}"
        );
    }
    // What the engine sends on its own is a DISCONNECT code too.
    let mut pair = pair_with(|c| c.keep_alive = 1, ServerConfig::default());
    pair.server_to_client = false;
    pair.advance(Duration::from_secs(5));
    assert_eq!(
        disconnects(&pair.packets_to_client(V5)),
        [ReasonCode::KeepAliveTimeout]
    );
}

#[test]
fn mqtt_3_14_2_2_server_disconnect_carries_no_session_expiry_interval() {
    let mut pair = Pair::connected(V5);
    pair.server.disconnect(
        pair.now,
        ReasonCode::AdministrativeAction,
        DisconnectProperties {
            session_expiry_interval: Some(60),
            reason_string: Some(text("maintenance")),
            ..Default::default()
        },
    );
    pair.drive();
    let sent = pair.packets_to_client(V5);
    let Some(Packet::Disconnect(disconnect)) = sent.last() else {
        panic!("no DISCONNECT: {sent:?}")
    };
    assert_eq!(disconnect.properties.session_expiry_interval, None);
    assert_eq!(
        disconnect.properties.reason_string,
        Some(text("maintenance"))
    );
    assert!(matches!(
        pair.client_close(),
        Some(CloseReason::PeerDisconnected {
            reason_code: ReasonCode::AdministrativeAction,
            ..
        })
    ));
}

fn last_disconnect_properties(packets: &[Packet]) -> DisconnectProperties {
    packets
        .iter()
        .rev()
        .find_map(|p| match p {
            Packet::Disconnect(d) => Some(d.properties.clone().into_inner()),
            _ => None,
        })
        .expect("a DISCONNECT")
}

#[test]
fn mqtt_3_14_2_3_disconnect_reason_string_left_out_over_the_peer_maximum_packet_size() {
    let mut pair = small_client_pair(24);
    pair.server.disconnect(
        pair.now,
        ReasonCode::ServerShuttingDown,
        DisconnectProperties {
            reason_string: Some(long_text(64)),
            ..Default::default()
        },
    );
    pair.drive();
    assert_eq!(
        last_disconnect_properties(&pair.packets_to_client(V5)),
        DisconnectProperties::default()
    );
    // The client holds to the server's limit in the same way.
    let config = ServerConfig {
        max_packet_size: 24,
        ..ServerConfig::default()
    };
    let mut pair = pair_with(|_| {}, config);
    let mut disconnect = Disconnect::new(ReasonCode::Success);
    disconnect.properties.reason_string = Some(long_text(64));
    pair.client.disconnect(disconnect);
    pair.drive();
    assert_eq!(
        last_disconnect_properties(&pair.packets_to_server(V5)),
        DisconnectProperties::default()
    );
}

#[test]
fn mqtt_3_14_2_4_disconnect_user_properties_left_out_over_the_peer_maximum_packet_size() {
    let mut pair = small_client_pair(24);
    pair.server.disconnect(
        pair.now,
        ReasonCode::ServerShuttingDown,
        DisconnectProperties {
            user_properties: vec![UserProperty::new("k", "v".repeat(40)).unwrap()],
            ..Default::default()
        },
    );
    pair.drive();
    assert_eq!(
        last_disconnect_properties(&pair.packets_to_client(V5)),
        DisconnectProperties::default()
    );
    assert!(matches!(
        pair.client_close(),
        Some(CloseReason::PeerDisconnected {
            reason_code: ReasonCode::ServerShuttingDown,
            ..
        })
    ));
}

#[test]
fn mqtt_3_14_4_1_nothing_is_sent_after_disconnect() {
    let mut pair = Pair::connected(V5);
    pair.server.disconnect(
        pair.now,
        ReasonCode::ServerBusy,
        DisconnectProperties::default(),
    );
    assert_eq!(
        pair.server
            .deliver(pair.now, publish("a", QoS::AtMostOnce, b"x")),
        Err(Error::Closed)
    );
    pair.server.handle_bytes(pair.now, &[0xC0, 0x00]);
    pair.server
        .handle_timeout(pair.now + Duration::from_secs(3600));
    pair.drive();
    let sent = pair.packets_to_client(V5);
    assert!(
        matches!(sent.last(), Some(Packet::Disconnect(_))),
        "{sent:?}"
    );

    let mut pair = Pair::connected(V5);
    pair.client.disconnect(Disconnect::new(ReasonCode::Success));
    assert_eq!(
        pair.client
            .publish(pair.now, publish("a", QoS::AtMostOnce, b"x")),
        Err(Error::Closed)
    );
    assert_eq!(pair.client.send_auth(Auth::default()), Err(Error::Closed));
    pair.client
        .handle_timeout(pair.now + Duration::from_secs(3600));
    pair.drive();
    let sent = pair.packets_to_server(V5);
    assert!(
        matches!(sent.last(), Some(Packet::Disconnect(_))),
        "{sent:?}"
    );
}

#[test]
fn mqtt_3_14_4_2_the_sender_of_disconnect_closes() {
    let mut pair = Pair::connected(V5);
    pair.server.disconnect(
        pair.now,
        ReasonCode::ServerBusy,
        DisconnectProperties::default(),
    );
    assert!(pair.server.is_closed());
    let mut pair = Pair::connected(V5);
    pair.client.disconnect(Disconnect::new(ReasonCode::Success));
    assert!(pair.client.is_closed());
    assert_eq!(
        pair.client.poll_event(),
        Some(ClientEvent::Closed(CloseReason::LocalDisconnect(
            ReasonCode::Success
        )))
    );
}

/// A pair whose client authenticates with `method`.
fn auth_pair(method: &str) -> Pair {
    pair_with(
        |c| c.properties.authentication_method = Some(text(method)),
        ServerConfig::default(),
    )
}

#[test]
fn mqtt_3_15_1_1_auth_with_reserved_bits_set_is_malformed() {
    let mut pair = auth_pair("SCRAM-SHA-1");
    pair.inject_to_server(&[0xF1, 0x00]);
    pair.assert_server_disconnected_with(ReasonCode::MalformedPacket);
    let mut pair = auth_pair("SCRAM-SHA-1");
    pair.inject_to_client(&[0xF8, 0x00]);
    assert_eq!(client_violation(&pair), Some(ReasonCode::MalformedPacket));
}

fn auth(reason_code: ReasonCode, method: Option<&str>) -> Auth {
    let mut auth = Auth {
        reason_code,
        ..Auth::default()
    };
    auth.properties.authentication_method = method.map(text);
    auth
}

#[test]
fn mqtt_3_15_2_1_auth_carries_only_authenticate_reason_codes() {
    let mut pair = auth_pair("SCRAM-SHA-1");
    for code in [ReasonCode::NotAuthorized, ReasonCode::GrantedQoS1] {
        assert!(
            matches!(
                pair.server.send_auth(auth(code, Some("SCRAM-SHA-1"))),
                Err(Error::InvalidState(_))
            ),
            "{code:?}"
        );
        assert!(
            matches!(
                pair.client.send_auth(auth(code, Some("SCRAM-SHA-1"))),
                Err(Error::InvalidState(_))
            ),
            "{code:?}"
        );
    }
    // A peer that sends one is malformed.
    pair.inject_to_server(&[0xF0, 0x01, 0x87]);
    pair.assert_server_disconnected_with(ReasonCode::MalformedPacket);
}

#[test]
fn mqtt_3_15_2_2_auth_reason_string_left_out_over_the_peer_maximum_packet_size() {
    let mut connect = connect_packet(V5, "c");
    connect.properties.authentication_method = Some(text("M"));
    connect.properties.maximum_packet_size = NonZeroU32::new(24);
    let mut server = deciding_server(connect);
    let mut challenge = auth(ReasonCode::ContinueAuthentication, Some("M"));
    challenge.properties.reason_string = Some(long_text(64));
    server.send_auth(challenge).unwrap();
    let sent = sent_by(&mut server);
    assert!(
        matches!(sent.as_slice(), [Packet::Auth(a)] if a.properties.reason_string.is_none() && a.properties.authentication_method == Some(text("M"))),
        "{sent:?}"
    );
}

#[test]
fn mqtt_3_15_2_3_auth_user_properties_left_out_over_the_peer_maximum_packet_size() {
    let mut pair = pair_with(
        |c| c.properties.authentication_method = Some(text("M")),
        ServerConfig {
            max_packet_size: 32,
            ..ServerConfig::default()
        },
    );
    let mut reauth = auth(ReasonCode::ReAuthenticate, Some("M"));
    reauth.properties.user_properties = vec![UserProperty::new("k", "v".repeat(40)).unwrap()];
    assert!(pair.client.is_connected());
    pair.client.send_auth(reauth).unwrap();
    pair.drive();
    let received = pair.server_events.iter().find_map(|e| match e {
        ServerEvent::Auth(a) => Some(a.clone()),
        _ => None,
    });
    assert_eq!(received, Some(auth(ReasonCode::ReAuthenticate, Some("M"))));
}

// ------------------------------------------------------------------ 4.1 session state

#[test]
fn mqtt_4_1_0_1_session_state_is_kept_while_the_connection_is_open() {
    // A session that ends with its connection (expiry 0) keeps its state while it lives.
    let mut pair = Pair::connected(V5);
    pair.server_to_client = false;
    pair.client
        .publish(pair.now, publish("up", QoS::AtLeastOnce, b"1"))
        .unwrap();
    pair.server
        .deliver(pair.now, publish("down", QoS::AtLeastOnce, b"2"))
        .unwrap();
    pair.inject_to_server(&wire(Packet::Publish(numbered(
        "up",
        QoS::ExactlyOnce,
        40,
        b"3",
    ))));
    pair.advance(Duration::from_secs(24 * 3600));
    assert!(pair.client.is_connected() && pair.server.is_connected());
    assert_eq!(pair.client.session_state().in_flight.len(), 1);
    let server_state = pair.server.session_state();
    assert_eq!(server_state.in_flight.len(), 1);
    assert_eq!(server_state.inbound_awaiting_release, [pid(40)]);
}

// ------------------------------------------------------------------ 4.3 QoS flows

#[test]
fn mqtt_4_3_1_1_qos_0_goes_with_qos_0_and_dup_0() {
    let mut pair = Pair::connected(V5);
    let mut message = publish("a", QoS::AtMostOnce, b"x");
    message.dup = true; // the caller's flag is not sent
    pair.client.publish(pair.now, message.clone()).unwrap();
    pair.server.deliver(pair.now, message).unwrap();
    pair.drive();
    assert_eq!(
        first_publish_byte(&pair.sent_to_server),
        0x30,
        "QoS 0, DUP 0"
    );
    assert_eq!(
        first_publish_byte(&pair.sent_to_client),
        0x30,
        "QoS 0, DUP 0"
    );
    assert_eq!(pair.server_messages().len(), 1);
    assert_eq!(pair.client_messages().len(), 1);
}

/// The identifiers of the QoS `qos` PUBLISH packets `packets` holds.
fn publish_ids(packets: &[Packet], qos: QoS) -> Vec<u16> {
    publishes(packets)
        .iter()
        .filter(|p| p.qos == qos)
        .map(|p| p.packet_id.expect("an identifier").get())
        .collect()
}

fn assert_fresh_identifiers(qos: QoS) {
    let mut pair = Pair::connected(V5);
    pair.server_to_client = false;
    for i in 0..5u8 {
        let mut message = publish("a", qos, &[i]);
        message.packet_id = Some(pid(7)); // not used: the engine picks
        pair.client.publish(pair.now, message.clone()).unwrap();
        pair.server.deliver(pair.now, message).unwrap();
    }
    pair.drive();
    for ids in [
        publish_ids(&pair.packets_to_server(V5), qos),
        publish_ids(&pair.packets_to_client(V5), qos),
    ] {
        let distinct: HashSet<u16> = ids.iter().copied().collect();
        assert_eq!((ids.len(), distinct.len()), (5, 5), "{qos:?}: {ids:?}");
    }
}

#[test]
fn mqtt_4_3_2_1_each_qos_1_message_gets_an_unused_identifier() {
    assert_fresh_identifiers(QoS::AtLeastOnce);
}

/// Each packet of `chunks` (what one side sent) as its raw bytes, split at its Remaining Length.
fn raw_packets(chunks: &[bytes::Bytes]) -> Vec<Vec<u8>> {
    let bytes: Vec<u8> = chunks.iter().flatten().copied().collect();
    let mut packets = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let (mut length, mut shift, mut header) = (0usize, 0, 1);
        loop {
            let byte = bytes[at + header];
            length |= usize::from(byte & 0x7F) << shift;
            shift += 7;
            header += 1;
            if byte & 0x80 == 0 {
                break;
            }
        }
        packets.push(bytes[at..at + header + length].to_vec());
        at += header + length;
    }
    packets
}

/// The first byte (type and flags) of the first PUBLISH in `chunks`.
fn first_publish_byte(chunks: &[bytes::Bytes]) -> u8 {
    raw_packets(chunks)
        .iter()
        .map(|packet| packet[0])
        .find(|first| first >> 4 == 3)
        .expect("a PUBLISH")
}

#[test]
fn mqtt_4_3_2_2_qos_1_publish_has_its_identifier_qos_1_and_dup_0() {
    let mut pair = Pair::connected(V5);
    let mut message = publish("a", QoS::AtLeastOnce, b"x");
    message.dup = true;
    pair.client.publish(pair.now, message.clone()).unwrap();
    pair.server.deliver(pair.now, message).unwrap();
    pair.drive();
    assert_eq!(first_publish_byte(&pair.sent_to_server), 0x32);
    assert_eq!(first_publish_byte(&pair.sent_to_client), 0x32);
    assert_eq!(
        publish_ids(&pair.packets_to_server(V5), QoS::AtLeastOnce),
        [1]
    );
    assert_eq!(
        publish_ids(&pair.packets_to_client(V5), QoS::AtLeastOnce),
        [1]
    );
}

#[test]
fn mqtt_4_3_2_3_qos_1_message_unacknowledged_until_its_puback() {
    let mut pair = Pair::connected(V5);
    pair.auto_broker = false;
    pair.server_to_client = false;
    let token = pair
        .client
        .publish(pair.now, publish("a", QoS::AtLeastOnce, b"x"))
        .unwrap()
        .unwrap();
    pair.drive();
    // Neither another identifier's PUBACK nor another kind of acknowledgement completes it.
    for packet in [
        Packet::PubAck(Ack::new(pid(2))),
        Packet::PubRec(Ack::new(pid(1))),
        Packet::PubComp(Ack::new(pid(1))),
    ] {
        pair.inject_to_client(&wire(packet));
        assert_eq!(pair.client.pending_messages(), (1, 0));
    }
    pair.inject_to_client(&wire(Packet::PubAck(Ack::new(pid(1)))));
    assert_eq!(pair.client.pending_messages(), (0, 0));
    assert!(
        pair.client_events
            .iter()
            .any(|e| matches!(e, ClientEvent::PublishAcknowledged(o) if o.token == token))
    );
}

#[test]
fn mqtt_4_3_2_4_puback_with_the_identifier_once_the_receiver_owns_the_message() {
    let (mut pair, handle) = pair_with_pending_ack(QoS::AtLeastOnce);
    assert!(
        acks(&pair.packets_to_client(V5), PacketType::PubAck).is_empty(),
        "not before the caller has the message safe"
    );
    assert_eq!(handle.packet_id(), pid(1));
    pair.server.acknowledge(handle, ReasonCode::Success);
    pair.drive();
    assert_eq!(acks(&pair.packets_to_client(V5), PacketType::PubAck), [1]);
}

#[test]
fn mqtt_4_3_2_5_after_puback_the_same_identifier_is_a_new_message() {
    let mut pair = Pair::connected(V5);
    pair.server_to_client = false;
    let first = numbered("a", QoS::AtLeastOnce, 5, b"first");
    let mut second = numbered("a", QoS::AtLeastOnce, 5, b"second");
    second.dup = true;
    pair.inject_to_server(&wire(Packet::Publish(first)));
    pair.inject_to_server(&wire(Packet::Publish(second)));
    let payloads: Vec<_> = pair.server_messages().into_iter().map(|m| m.1).collect();
    assert_eq!(payloads, ["first", "second"]);
    assert_eq!(
        acks(&pair.packets_to_client(V5), PacketType::PubAck),
        [5, 5]
    );
}

#[test]
fn mqtt_4_3_3_1_each_qos_2_message_gets_an_unused_identifier() {
    assert_fresh_identifiers(QoS::ExactlyOnce);
}

#[test]
fn mqtt_4_3_3_2_qos_2_publish_has_its_identifier_qos_2_and_dup_0() {
    let mut pair = Pair::connected(V5);
    let mut message = publish("a", QoS::ExactlyOnce, b"x");
    message.dup = true;
    pair.client.publish(pair.now, message.clone()).unwrap();
    pair.server.deliver(pair.now, message).unwrap();
    pair.drive();
    assert_eq!(first_publish_byte(&pair.sent_to_server), 0x34);
    assert_eq!(first_publish_byte(&pair.sent_to_client), 0x34);
    assert_eq!(
        publish_ids(&pair.packets_to_server(V5), QoS::ExactlyOnce),
        [1]
    );
}

/// A pair where the client has one QoS 2 message in flight and hears nothing back.
fn pair_with_qos2_in_flight() -> Pair {
    let mut pair = persistent_pair();
    pair.auto_broker = false;
    pair.server_to_client = false;
    pair.client
        .publish(pair.now, publish("a", QoS::ExactlyOnce, b"x"))
        .unwrap();
    pair.drive();
    pair
}

fn stage_of_first(pair: &Pair) -> Option<OutgoingStage> {
    pair.client
        .session_state()
        .in_flight
        .first()
        .map(|m| m.stage)
}

#[test]
fn mqtt_4_3_3_3_qos_2_message_unacknowledged_until_its_pubrec() {
    let mut pair = pair_with_qos2_in_flight();
    pair.inject_to_client(&wire(Packet::PubAck(Ack::new(pid(1)))));
    pair.inject_to_client(&wire(Packet::PubRec(Ack::new(pid(2)))));
    assert_eq!(stage_of_first(&pair), Some(OutgoingStage::Published));
    pair.inject_to_client(&wire(Packet::PubRec(Ack::new(pid(1)))));
    assert_eq!(stage_of_first(&pair), Some(OutgoingStage::Released));
}

#[test]
fn mqtt_4_3_3_4_pubrel_with_the_identifier_after_a_successful_pubrec() {
    let mut pair = pair_with_qos2_in_flight();
    pair.inject_to_client(&wire(Packet::PubRec(Ack::new(pid(1)))));
    assert_eq!(
        ack_packets(&pair.packets_to_server(V5)),
        [(PacketType::PubRel, 1, ReasonCode::Success)]
    );
    // A failed PUBREC ends the flow: no PUBREL.
    let mut pair = pair_with_qos2_in_flight();
    let mut refused = Ack::new(pid(1));
    refused.reason_code = ReasonCode::QuotaExceeded;
    pair.inject_to_client(&wire(Packet::PubRec(refused)));
    assert!(ack_packets(&pair.packets_to_server(V5)).is_empty());
    assert_eq!(pair.client.pending_messages(), (0, 0));
}

#[test]
fn mqtt_4_3_3_5_pubrel_unacknowledged_until_its_pubcomp() {
    let mut pair = pair_with_qos2_in_flight();
    pair.inject_to_client(&wire(Packet::PubRec(Ack::new(pid(1)))));
    pair.inject_to_client(&wire(Packet::PubComp(Ack::new(pid(2)))));
    pair.inject_to_client(&wire(Packet::PubAck(Ack::new(pid(1)))));
    assert_eq!(stage_of_first(&pair), Some(OutgoingStage::Released));
    // Still unacknowledged across a reconnect: the PUBREL goes again.
    pair.sent_to_server.clear();
    pair.server_to_client = true;
    pair.server_session = Some(SessionState {
        inbound_awaiting_release: vec![pid(1)],
        ..SessionState::default()
    });
    pair.auto_broker = true;
    pair.reconnect(false);
    let sent = pair.packets_to_server(V5);
    assert_eq!(acks(&sent, PacketType::PubRel), [1]);
    assert_eq!(pair.client.pending_messages(), (0, 0), "PUBCOMP ended it");
}

#[test]
fn mqtt_4_3_3_6_no_publish_resent_once_pubrel_was_sent() {
    let mut pair = pair_with_qos2_in_flight();
    pair.inject_to_client(&wire(Packet::PubRec(Ack::new(pid(1)))));
    pair.sent_to_server.clear();
    pair.server_to_client = true;
    pair.server_session = Some(SessionState {
        inbound_awaiting_release: vec![pid(1)],
        ..SessionState::default()
    });
    pair.auto_broker = true;
    pair.reconnect(false);
    let sent = pair.packets_to_server(V5);
    assert!(publishes(&sent).is_empty(), "{sent:?}");
    assert_eq!(acks(&sent, PacketType::PubRel), [1]);
}

#[test]
fn mqtt_4_3_3_7_no_message_expiry_once_the_publish_was_sent() {
    let mut pair = persistent_pair();
    pair.server_to_client = false;
    let mut message = publish("a", QoS::ExactlyOnce, b"x");
    message.properties.message_expiry_interval = Some(1);
    pair.client.publish(pair.now, message).unwrap();
    pair.drive();
    pair.advance(Duration::from_secs(10));
    pair.server_to_client = true;
    pair.sent_to_server.clear();
    pair.reconnect(false);
    let resent = publishes(&pair.packets_to_server(V5));
    assert!(
        matches!(resent.as_slice(), [p] if p.dup && p.packet_id == Some(pid(1))),
        "sent again though its 1 s passed: {resent:?}"
    );
    assert!(pair.client_events.iter().any(|e| matches!(
        e,
        ClientEvent::PublishCompleted(o) if o.reason_code == ReasonCode::Success
    )));
}

#[test]
fn mqtt_4_3_3_8_pubrec_with_the_identifier_once_the_receiver_owns_the_message() {
    let (mut pair, handle) = pair_with_pending_ack(QoS::ExactlyOnce);
    assert!(acks(&pair.packets_to_client(V5), PacketType::PubRec).is_empty());
    pair.server.acknowledge(handle, ReasonCode::Success);
    pair.drive();
    assert_eq!(acks(&pair.packets_to_client(V5), PacketType::PubRec), [1]);
}

#[test]
fn mqtt_4_3_3_9_after_a_failed_pubrec_the_same_identifier_is_a_new_message() {
    let config = ServerConfig {
        manual_acks: true,
        ..ServerConfig::default()
    };
    let mut pair = pair_with(|_| {}, config);
    pair.server_to_client = false;
    pair.inject_to_server(&wire(Packet::Publish(numbered(
        "a",
        QoS::ExactlyOnce,
        6,
        b"one",
    ))));
    let handle = pair
        .server_events
        .iter()
        .find_map(|e| match e {
            ServerEvent::Message(m) => m.ack,
            _ => None,
        })
        .unwrap();
    pair.server.acknowledge(handle, ReasonCode::QuotaExceeded);
    pair.drive();
    pair.inject_to_server(&wire(Packet::Publish(numbered(
        "a",
        QoS::ExactlyOnce,
        6,
        b"two",
    ))));
    let payloads: Vec<_> = pair.server_messages().into_iter().map(|m| m.1).collect();
    assert_eq!(payloads, ["one", "two"]);
}

#[test]
fn mqtt_4_3_3_10_repeated_publish_before_pubrel_gets_pubrec_and_is_not_delivered_again() {
    let mut pair = Pair::connected(V5);
    pair.server_to_client = false;
    let message = numbered("a", QoS::ExactlyOnce, 8, b"once");
    let mut again = message.clone();
    again.dup = true;
    pair.inject_to_server(&wire(Packet::Publish(message)));
    pair.inject_to_server(&wire(Packet::Publish(again.clone())));
    pair.inject_to_server(&wire(Packet::Publish(again)));
    assert_eq!(pair.server_messages().len(), 1);
    assert_eq!(
        acks(&pair.packets_to_client(V5), PacketType::PubRec),
        [8, 8, 8]
    );
}

#[test]
fn mqtt_4_3_3_11_pubrel_gets_pubcomp_with_the_identifier() {
    let mut pair = Pair::connected(V5);
    pair.server_to_client = false;
    pair.inject_to_server(&wire(Packet::Publish(numbered(
        "a",
        QoS::ExactlyOnce,
        12,
        b"x",
    ))));
    pair.inject_to_server(&wire(Packet::PubRel(Ack::new(pid(12)))));
    assert_eq!(
        ack_packets(&pair.packets_to_client(V5)),
        [
            (PacketType::PubRec, 12, ReasonCode::Success),
            (PacketType::PubComp, 12, ReasonCode::Success)
        ]
    );
}

#[test]
fn mqtt_4_3_3_12_after_pubcomp_the_same_identifier_is_a_new_message() {
    let mut pair = Pair::connected(V5);
    pair.server_to_client = false;
    pair.inject_to_server(&wire(Packet::Publish(numbered(
        "a",
        QoS::ExactlyOnce,
        12,
        b"one",
    ))));
    pair.inject_to_server(&wire(Packet::PubRel(Ack::new(pid(12)))));
    pair.inject_to_server(&wire(Packet::Publish(numbered(
        "a",
        QoS::ExactlyOnce,
        12,
        b"two",
    ))));
    let payloads: Vec<_> = pair.server_messages().into_iter().map(|m| m.1).collect();
    assert_eq!(payloads, ["one", "two"]);
}

#[test]
fn mqtt_4_3_3_13_qos_2_flow_completes_after_the_message_expired() {
    let mut pair = Pair::connected(V5);
    pair.server_to_client = false;
    let mut message = numbered("a", QoS::ExactlyOnce, 2, b"x");
    message.properties.message_expiry_interval = Some(1);
    pair.inject_to_server(&wire(Packet::Publish(message)));
    pair.advance(Duration::from_secs(30));
    pair.inject_to_server(&wire(Packet::PubRel(Ack::new(pid(2)))));
    assert_eq!(
        ack_packets(&pair.packets_to_client(V5)),
        [
            (PacketType::PubRec, 2, ReasonCode::Success),
            (PacketType::PubComp, 2, ReasonCode::Success)
        ]
    );
}

// ------------------------------------------------------------------ 4.4 - 4.6 retry, receipt, order

#[test]
fn mqtt_4_4_0_1_no_resend_on_a_live_connection() {
    let mut pair = Pair::connected(V5);
    pair.server_to_client = false;
    pair.client
        .publish(pair.now, publish("a", QoS::AtLeastOnce, b"x"))
        .unwrap();
    pair.server
        .deliver(pair.now, publish("b", QoS::ExactlyOnce, b"y"))
        .unwrap();
    pair.advance(Duration::from_secs(3600));
    assert_eq!(publishes(&pair.packets_to_server(V5)).len(), 1);
    assert_eq!(publishes(&pair.packets_to_client(V5)).len(), 1);
}

#[test]
fn mqtt_4_5_0_2_client_acknowledges_every_publish_it_receives() {
    let mut pair = Pair::connected(V5);
    // The client subscribed to nothing; it acknowledges all the same.
    pair.inject_to_client(&wire(Packet::Publish(numbered(
        "x",
        QoS::AtLeastOnce,
        3,
        b"1",
    ))));
    pair.inject_to_client(&wire(Packet::Publish(numbered(
        "y",
        QoS::ExactlyOnce,
        4,
        b"2",
    ))));
    let sent = pair.packets_to_server(V5);
    assert_eq!(acks(&sent, PacketType::PubAck), [3]);
    assert_eq!(acks(&sent, PacketType::PubRec), [4]);
}

#[test]
fn mqtt_4_6_0_1_client_resends_in_the_original_order() {
    let mut pair = persistent_pair();
    pair.server_to_client = false;
    for i in 0..6u8 {
        let qos = if i % 2 == 0 {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        };
        pair.client
            .publish(pair.now, publish("a", qos, &[b'0' + i]))
            .unwrap();
    }
    pair.drive();
    pair.sent_to_server.clear();
    pair.server_to_client = true;
    pair.server_session = Some(SessionState::default());
    pair.reconnect(false);
    let order: Vec<_> = publishes(&pair.packets_to_server(V5))
        .iter()
        .map(|p| (p.payload.clone(), p.dup))
        .collect();
    let expected: Vec<_> = (0..6u8)
        .map(|i| (bytes::Bytes::from(vec![b'0' + i]), true))
        .collect();
    assert_eq!(order, expected);
}

fn client_answers_in_order(qos: QoS, kind: PacketType) {
    let mut pair = Pair::connected(V5);
    pair.server_to_client = false;
    let ids = [9u16, 3, 7, 1, 5];
    let mut bytes = Vec::new();
    for id in ids {
        bytes.extend(wire(Packet::Publish(numbered("a", qos, id, b"x"))));
    }
    pair.inject_to_client(&bytes);
    assert_eq!(acks(&pair.packets_to_server(V5), kind), ids);
}

#[test]
fn mqtt_4_6_0_2_client_sends_puback_in_the_order_publish_arrived() {
    client_answers_in_order(QoS::AtLeastOnce, PacketType::PubAck);
}

#[test]
fn mqtt_4_6_0_3_client_sends_pubrec_in_the_order_publish_arrived() {
    client_answers_in_order(QoS::ExactlyOnce, PacketType::PubRec);
}

#[test]
fn mqtt_4_6_0_4_client_sends_pubrel_in_the_order_pubrec_arrived() {
    let mut pair = Pair::connected(V5);
    pair.server_to_client = false;
    for i in 0..3u8 {
        pair.client
            .publish(pair.now, publish("a", QoS::ExactlyOnce, &[i]))
            .unwrap();
    }
    pair.drive();
    let mut bytes = Vec::new();
    for id in [3u16, 1, 2] {
        bytes.extend(wire(Packet::PubRec(Ack::new(pid(id)))));
    }
    pair.inject_to_client(&bytes);
    assert_eq!(
        acks(&pair.packets_to_server(V5), PacketType::PubRel),
        [3, 1, 2]
    );
}

// ------------------------------------------------------------------ 4.9 flow control

#[test]
fn mqtt_4_9_0_1_send_quota_starts_at_receive_maximum_and_is_never_zero() {
    // The server allows 1: the client's quota is 1.
    let config = ServerConfig {
        receive_maximum: 1,
        ..ServerConfig::default()
    };
    let mut pair = pair_with(|_| {}, config);
    pair.server_to_client = false;
    for _ in 0..3 {
        pair.client
            .publish(pair.now, publish("a", QoS::AtLeastOnce, b"x"))
            .unwrap();
    }
    pair.drive();
    assert_eq!(publishes(&pair.packets_to_server(V5)).len(), 1);

    // The client allows 3: the server's quota is 3.
    let mut pair = pair_with(
        |c| c.properties.receive_maximum = NonZeroU16::new(3),
        ServerConfig::default(),
    );
    pair.server_to_client = false;
    for _ in 0..5 {
        pair.server
            .deliver(pair.now, publish("a", QoS::ExactlyOnce, b"x"))
            .unwrap();
    }
    pair.drive();
    assert_eq!(publishes(&pair.packets_to_client(V5)).len(), 3);

    // With no Receive Maximum the client's quota is bounded by its own window, not zero.
    let mut connect = connect_packet(V5, "c");
    connect.properties.receive_maximum = None;
    let mut config = ClientConfig::new(connect);
    config.max_in_flight = 0;
    let mut pair = Pair::new(config, ServerConfig::default());
    pair.connect();
    pair.client
        .publish(pair.now, publish("a", QoS::AtLeastOnce, b"x"))
        .unwrap();
    pair.drive();
    assert_eq!(publishes(&pair.packets_to_server(V5)).len(), 1);
}

#[test]
fn mqtt_4_9_0_2_no_qos_1_or_2_publish_while_the_quota_is_zero() {
    let mut pair = pair_with_full_server_window();
    let sent = publishes(&pair.packets_to_client(V5));
    assert_eq!(sent.len(), 1);
    // QoS 0 is not counted.
    pair.server
        .deliver(pair.now, publish("down", QoS::AtMostOnce, b"q0"))
        .unwrap();
    pair.drive();
    assert_eq!(publishes(&pair.packets_to_client(V5)).len(), 2);
    // The acknowledgement gives one back: the next one goes.
    let handle = pair
        .client_events
        .iter()
        .find_map(|e| match e {
            ClientEvent::Message(m) => m.ack,
            _ => None,
        })
        .unwrap();
    pair.client.acknowledge(handle, ReasonCode::Success);
    pair.drive();
    let qos1: Vec<_> = publishes(&pair.packets_to_client(V5))
        .into_iter()
        .filter(|p| p.qos == QoS::AtLeastOnce)
        .collect();
    assert_eq!(qos1.len(), 2);
    assert_eq!(pair.server.pending_messages(), (1, 1));
}

#[test]
fn mqtt_4_9_0_3_other_packets_are_processed_while_the_quota_is_zero() {
    let config = ServerConfig {
        receive_maximum: 1,
        ..ServerConfig::default()
    };
    let mut pair = pair_with(|_| {}, config);
    pair.auto_broker = false;
    pair.client
        .publish(pair.now, publish("a", QoS::AtLeastOnce, b"x"))
        .unwrap();
    // The client's quota is zero; it still takes what the server sends...
    let mut incoming = Vec::new();
    incoming.extend(wire(Packet::Publish(numbered(
        "in",
        QoS::ExactlyOnce,
        5,
        b"y",
    ))));
    incoming.extend(wire(Packet::PingResp));
    pair.inject_to_client(&incoming);
    assert_eq!(pair.client_messages().len(), 1);
    assert_eq!(acks(&pair.packets_to_server(V5), PacketType::PubRec), [5]);
    // ...and the server, its quota to the client zero, still takes what the client sends.
    let mut pair = pair_with_full_server_window();
    pair.client
        .publish(pair.now, publish("up", QoS::AtLeastOnce, b"z"))
        .unwrap();
    pair.drive();
    assert_eq!(pair.server_messages().len(), 1);
    assert_eq!(acks(&pair.packets_to_client(V5), PacketType::PubAck), [1]);
}

// ------------------------------------------------------------------ 4.12 enhanced authentication

#[test]
fn mqtt_4_12_0_2_server_auth_before_connack_continues_authentication() {
    let mut connect = connect_packet(V5, "c");
    connect.properties.authentication_method = Some(text("M"));
    let mut server = deciding_server(connect);
    for code in [ReasonCode::Success, ReasonCode::ReAuthenticate] {
        assert!(
            matches!(
                server.send_auth(auth(code, Some("M"))),
                Err(Error::InvalidState(_))
            ),
            "{code:?} before CONNACK"
        );
    }
    server
        .send_auth(auth(ReasonCode::ContinueAuthentication, Some("M")))
        .unwrap();
    let sent = sent_by(&mut server);
    assert_eq!(
        sent,
        vec![Packet::Auth(auth(
            ReasonCode::ContinueAuthentication,
            Some("M")
        ))]
    );
}

#[test]
fn mqtt_4_12_0_3_client_answers_auth_with_continue_authentication() {
    let mut connect = connect_packet(V5, "c");
    connect.properties.authentication_method = Some(text("M"));
    let mut client = connecting_client(connect);
    client.handle_bytes(
        T0,
        &wire(Packet::Auth(auth(
            ReasonCode::ContinueAuthentication,
            Some("M"),
        ))),
    );
    assert_eq!(
        client.poll_event(),
        Some(ClientEvent::Auth(auth(
            ReasonCode::ContinueAuthentication,
            Some("M")
        )))
    );
    for code in [ReasonCode::Success, ReasonCode::ReAuthenticate] {
        assert!(
            matches!(
                client.send_auth(auth(code, Some("M"))),
                Err(Error::InvalidState(_))
            ),
            "{code:?} before CONNACK"
        );
    }
    client
        .send_auth(auth(ReasonCode::ContinueAuthentication, Some("M")))
        .unwrap();
    assert_eq!(
        sent_by_client(&mut client),
        vec![Packet::Auth(auth(
            ReasonCode::ContinueAuthentication,
            Some("M")
        ))]
    );
}

#[test]
fn mqtt_4_12_0_4_server_may_end_authentication_with_a_failure_connack() {
    let mut connect = connect_packet(V5, "c");
    connect.properties.authentication_method = Some(text("M"));
    let mut server = deciding_server(connect);
    server
        .send_auth(auth(ReasonCode::ContinueAuthentication, Some("M")))
        .unwrap();
    server.handle_bytes(
        T0,
        &wire(Packet::Auth(auth(
            ReasonCode::ContinueAuthentication,
            Some("M"),
        ))),
    );
    assert!(matches!(server.poll_event(), Some(ServerEvent::Auth(_))));
    server
        .refuse(ReasonCode::NotAuthorized, ConnAckProperties::default())
        .unwrap();
    let kinds: Vec<(PacketType, Option<ReasonCode>)> = sent_by(&mut server)
        .iter()
        .map(|p| {
            (
                p.packet_type(),
                match p {
                    Packet::ConnAck(c) => Some(c.reason_code),
                    _ => None,
                },
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            (PacketType::Auth, None),
            (PacketType::ConnAck, Some(ReasonCode::NotAuthorized))
        ]
    );
    assert!(server.is_closed());
}

#[test]
fn mqtt_4_12_0_5_auth_and_connack_carry_the_connect_authentication_method() {
    let mut connect = connect_packet(V5, "c");
    connect.properties.authentication_method = Some(text("M"));
    // The server fills the method in where the caller left it out, and refuses another one.
    let mut server = deciding_server(connect.clone());
    assert!(matches!(
        server.send_auth(auth(ReasonCode::ContinueAuthentication, Some("OTHER"))),
        Err(Error::InvalidState(_))
    ));
    server
        .send_auth(auth(ReasonCode::ContinueAuthentication, None))
        .unwrap();
    let other_method = Accept {
        properties: ConnAckProperties {
            authentication_method: Some(text("OTHER")),
            ..Default::default()
        },
        ..Accept::default()
    };
    assert!(matches!(
        server.accept(T0, other_method),
        Err(Error::InvalidState(_))
    ));
    server.accept(T0, Accept::default()).unwrap();
    let sent = sent_by(&mut server);
    let methods: Vec<Option<MqttString>> = sent
        .iter()
        .map(|p| match p {
            Packet::Auth(a) => a.properties.authentication_method.clone(),
            Packet::ConnAck(c) => c.properties.authentication_method.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(methods, [Some(text("M")), Some(text("M"))]);

    // The client does the same with its AUTH...
    let mut client = connecting_client(connect.clone());
    client
        .send_auth(auth(ReasonCode::ContinueAuthentication, None))
        .unwrap();
    assert_eq!(
        sent_by_client(&mut client),
        vec![Packet::Auth(auth(
            ReasonCode::ContinueAuthentication,
            Some("M")
        ))]
    );
    assert!(matches!(
        client.send_auth(auth(ReasonCode::ContinueAuthentication, Some("OTHER"))),
        Err(Error::InvalidState(_))
    ));
    // ...and closes on an AUTH or CONNACK with another method, or none.
    let mut client = connecting_client(connect.clone());
    client.handle_bytes(
        T0,
        &wire(Packet::Auth(auth(
            ReasonCode::ContinueAuthentication,
            Some("OTHER"),
        ))),
    );
    assert!(client.is_closed());
    assert!(matches!(
        client_events_of(&mut client).as_slice(),
        [ClientEvent::Closed(CloseReason::ProtocolViolation {
            reason_code: ReasonCode::ProtocolError,
            ..
        })]
    ));
    let mut client = connecting_client(connect);
    client.handle_bytes(T0, &wire(Packet::ConnAck(ConnAck::default())));
    assert!(
        client.is_closed(),
        "a successful CONNACK without the method"
    );
}

#[test]
fn mqtt_4_12_0_6_no_auth_and_no_authentication_method_for_a_client_that_sent_none() {
    let mut server = deciding_server(connect_packet(V5, "c"));
    assert!(matches!(
        server.send_auth(auth(ReasonCode::ContinueAuthentication, Some("M"))),
        Err(Error::InvalidState(_))
    ));
    let with_method = Accept {
        properties: ConnAckProperties {
            authentication_method: Some(text("M")),
            ..Default::default()
        },
        ..Accept::default()
    };
    assert!(matches!(
        server.accept(T0, with_method),
        Err(Error::InvalidState(_))
    ));
    server.accept(T0, Accept::default()).unwrap();
    assert!(matches!(
        server.send_auth(auth(ReasonCode::ReAuthenticate, None)),
        Err(Error::InvalidState(_))
    ));
    let sent = sent_by(&mut server);
    assert!(
        matches!(sent.as_slice(), [Packet::ConnAck(c)] if c.properties.authentication_method.is_none()),
        "{sent:?}"
    );
}

#[test]
fn mqtt_4_12_0_7_client_without_authentication_method_sends_no_auth() {
    let mut client = connecting_client(connect_packet(V5, "c"));
    assert!(matches!(
        client.send_auth(auth(ReasonCode::ContinueAuthentication, Some("M"))),
        Err(Error::InvalidState(_))
    ));
    client.handle_bytes(T0, &wire(Packet::ConnAck(ConnAck::default())));
    assert!(client.is_connected());
    assert!(matches!(
        client.send_auth(auth(ReasonCode::ReAuthenticate, Some("M"))),
        Err(Error::InvalidState(_))
    ));
    assert!(sent_by_client(&mut client).is_empty());
}

#[test]
fn mqtt_4_12_1_1_reauthentication_uses_the_original_method() {
    let mut pair = auth_pair("M");
    assert!(matches!(
        pair.client
            .send_auth(auth(ReasonCode::ReAuthenticate, Some("OTHER"))),
        Err(Error::InvalidState(_))
    ));
    pair.client
        .send_auth(auth(ReasonCode::ReAuthenticate, None))
        .unwrap();
    pair.drive();
    let received = pair.server_events.iter().find_map(|e| match e {
        ServerEvent::Auth(a) => Some(a.clone()),
        _ => None,
    });
    assert_eq!(received, Some(auth(ReasonCode::ReAuthenticate, Some("M"))));
    // The server's answer carries it too, and the connection goes on.
    pair.server
        .send_auth(auth(ReasonCode::Success, None))
        .unwrap();
    pair.drive();
    let answer = pair.client_events.iter().find_map(|e| match e {
        ClientEvent::Auth(a) => Some(a.clone()),
        _ => None,
    });
    assert_eq!(answer, Some(auth(ReasonCode::Success, Some("M"))));
    assert!(pair.client.is_connected() && pair.server.is_connected());
}

#[test]
fn mqtt_4_12_1_2_failed_reauthentication_ends_with_disconnect() {
    let mut pair = auth_pair("M");
    pair.client
        .send_auth(auth(ReasonCode::ReAuthenticate, None))
        .unwrap();
    pair.drive();
    pair.server.disconnect(
        pair.now,
        ReasonCode::NotAuthorized,
        DisconnectProperties::default(),
    );
    pair.drive();
    assert_eq!(
        disconnects(&pair.packets_to_client(V5)),
        [ReasonCode::NotAuthorized]
    );
    assert!(pair.server.is_closed() && pair.client.is_closed());
}

// ------------------------------------------------------------------ 4.13 errors

#[test]
fn mqtt_4_13_2_1_a_failure_code_in_connack_or_disconnect_closes_the_connection() {
    // Sent by the server.
    let mut pair = Pair::connected(V5);
    pair.server.disconnect(
        pair.now,
        ReasonCode::ServerBusy,
        DisconnectProperties::default(),
    );
    assert!(pair.server.is_closed());
    pair.drive();
    assert!(
        pair.client.is_closed(),
        "and by the client that received it"
    );
    // Sent by the client.
    let mut pair = Pair::connected(V5);
    pair.client
        .disconnect(Disconnect::new(ReasonCode::UnspecifiedError));
    assert!(pair.client.is_closed());
    pair.drive();
    assert!(pair.server.is_closed());
    // A failure CONNACK.
    let mut client = connecting_client(connect_packet(V5, "c"));
    let refusal = ConnAck {
        reason_code: ReasonCode::Banned,
        ..ConnAck::default()
    };
    client.handle_bytes(T0, &wire(Packet::ConnAck(refusal)));
    assert!(client.is_closed());
    // Even when the packet could not be sent (no transport left to send it on).
    let mut pair = Pair::connected(V5);
    pair.drop_link();
    pair.server.disconnect(
        pair.now,
        ReasonCode::ServerBusy,
        DisconnectProperties::default(),
    );
    assert!(pair.server.is_closed());
}
