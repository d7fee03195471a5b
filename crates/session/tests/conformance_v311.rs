//! The normative statements of MQTT 3.1.1 that the session engines decide, each checked from
//! outside on MQTT 3.1.1 connections: the server engine fed raw bytes a well-behaved client
//! never sends, the client engine fed what a server may send, and both joined by the simulated
//! link of `support::Pair`. Test names carry the MQTT 3.1.1 statement id; `CONFORMANCE.md`
//! traces every statement to them.

mod support;

use std::time::Duration;

use bytes::Bytes;
use rallymq_codec::{
    Connect, Disconnect, Packet, PacketId, ProtocolVersion, Publish, QoS, ReasonCode,
    SubAckProperties, Subscribe, Subscription, TopicFilter, TopicName, Will,
};
use rallymq_session::{
    Accept, ClientConfig, ClientConnection, ClientEvent, CloseReason, Error, OutgoingMessage,
    OutgoingStage, PublishToken, ServerConfig, ServerConnection, ServerEvent, SessionState,
    Timestamp,
};
use support::{Engine, Pair, Raw, RawClient, RawServer, connect_packet, pid, publish};

const V311: ProtocolVersion = ProtocolVersion::V3_1_1;

// ------------------------------------------------------------------ raw packets

/// A packet: `first` byte (type and flags), Remaining Length, `body`.
fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut bytes = vec![first];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        bytes.push(byte);
        if len == 0 {
            break;
        }
    }
    bytes.extend_from_slice(body);
    bytes
}

/// A length-prefixed field.
fn field(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

fn publish_raw(first: u8, topic: &[u8], id: Option<u16>, payload: &[u8]) -> Vec<u8> {
    let mut body = field(topic);
    if let Some(id) = id {
        body.extend_from_slice(&id.to_be_bytes());
    }
    body.extend_from_slice(payload);
    packet(first, &body)
}

fn subscribe_raw(first: u8, id: u16, filters: &[(&[u8], u8)]) -> Vec<u8> {
    let mut body = id.to_be_bytes().to_vec();
    for (filter, options) in filters {
        body.extend(field(filter));
        body.push(*options);
    }
    packet(first, &body)
}

fn unsubscribe_raw(first: u8, id: u16, filters: &[&[u8]]) -> Vec<u8> {
    let mut body = id.to_be_bytes().to_vec();
    for filter in filters {
        body.extend(field(filter));
    }
    packet(first, &body)
}

fn ack_raw(first: u8, id: u16) -> Vec<u8> {
    packet(first, &id.to_be_bytes())
}

/// A 3.1.1 CONNECT ("MQTT", level 4, keep alive 0) with `flags` and the payload `payload`.
fn connect_raw(flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = field(b"MQTT");
    body.extend_from_slice(&[4, flags, 0, 0]);
    body.extend_from_slice(payload);
    packet(0x10, &body)
}

/// The payload fields given, each length-prefixed, one after the other.
fn fields(parts: &[&[u8]]) -> Vec<u8> {
    parts.iter().flat_map(|part| field(part)).collect()
}

fn encode(packet: Packet) -> Vec<u8> {
    packet.to_bytes(V311).expect("encodable").to_vec()
}

/// Strings that are not well-formed UTF-8: a byte never in UTF-8, an overlong `/`, and the
/// encodings of the surrogates U+D800 and U+DFFF.
const ILL_FORMED: [&[u8]; 4] = [b"a/\xff", b"a\xc0\xaf", b"\xed\xa0\x80", b"x/\xed\xbf\xbf"];

// ------------------------------------------------------------------ assertions

fn v311_client() -> ClientConfig {
    ClientConfig::new(connect_packet(V311, "c"))
}

fn connected_server() -> RawServer {
    RawServer::accepted(connect_packet(V311, "c"))
}

fn connected_client() -> RawClient {
    RawClient::connected(v311_client(), None, false)
}

/// Feeds `bytes` to an accepted 3.1.1 server connection and asserts that it closed the
/// connection as a protocol violation, sending nothing and surfacing nothing.
fn assert_server_closes(bytes: &[u8]) -> RawServer {
    connected_server().assert_closes_on(bytes)
}

/// Feeds `bytes` to a connected 3.1.1 client and asserts the same.
fn assert_client_closes(bytes: &[u8]) {
    connected_client().assert_closes_on(bytes);
}

/// Feeds `bytes` as the first thing on a new connection and asserts that the server closed it
/// without a CONNACK and without asking the caller to decide (MQTT-3.1.4-1).
fn assert_connect_refused_silently(bytes: &[u8]) {
    let mut raw = RawServer::new(V311);
    raw.feed(bytes);
    assert!(raw.engine.is_closed(), "still open after {bytes:02x?}");
    assert!(raw.sent.is_empty(), "{bytes:02x?}: sent {:02x?}", raw.sent);
    assert!(
        matches!(
            raw.events.as_slice(),
            [ServerEvent::Closed(CloseReason::ProtocolViolation { .. })]
        ),
        "{bytes:02x?}: {:?}",
        raw.events
    );
}

/// Feeds a CONNECT and returns what the server made of it: the CONNECT handed to the caller.
fn connect_received(bytes: &[u8]) -> Connect {
    let mut raw = RawServer::new(V311);
    raw.feed(bytes);
    match raw.events.as_slice() {
        [ServerEvent::ConnectReceived { connect, .. }] => (**connect).clone(),
        other => panic!("{bytes:02x?}: {other:?}"),
    }
}

/// Feeds `inputs` to `raw` one after the other; returns what it answered (as `flow` shows
/// it) and the payloads of the messages it surfaced.
fn answers<E: Engine>(mut raw: Raw<E>, inputs: &[Vec<u8>]) -> (Vec<String>, Vec<Bytes>) {
    for input in inputs {
        raw.feed(input);
    }
    let payloads = raw.messages().into_iter().map(|m| m.payload).collect();
    (flow(&raw.sent_packets()), payloads)
}

fn topic(publish: &Publish) -> &str {
    publish.topic.as_ref().map_or("", TopicName::as_str)
}

/// Packet identifiers and types of the packets in `packets`, for order assertions.
fn flow(packets: &[Packet]) -> Vec<String> {
    packets
        .iter()
        .map(|packet| match packet {
            Packet::Publish(p) => format!(
                "PUBLISH {} qos={} dup={}",
                p.packet_id.map_or(0, PacketId::get),
                p.qos.bits(),
                u8::from(p.dup)
            ),
            Packet::PubAck(a) => format!("PUBACK {}", a.packet_id.get()),
            Packet::PubRec(a) => format!("PUBREC {}", a.packet_id.get()),
            Packet::PubRel(a) => format!("PUBREL {}", a.packet_id.get()),
            Packet::PubComp(a) => format!("PUBCOMP {}", a.packet_id.get()),
            Packet::SubAck(s) => format!("SUBACK {}", s.packet_id.get()),
            Packet::UnsubAck(u) => format!("UNSUBACK {}", u.packet_id.get()),
            Packet::Subscribe(s) => format!("SUBSCRIBE {}", s.packet_id.get()),
            Packet::Unsubscribe(u) => format!("UNSUBSCRIBE {}", u.packet_id.get()),
            other => format!("{:?}", other.packet_type()),
        })
        .collect()
}

/// An in-flight outgoing message of a session, as a resumed session holds it.
fn in_flight(id: u16, qos: QoS, stage: OutgoingStage) -> OutgoingMessage {
    let mut message = publish("resumed", qos, &id.to_be_bytes());
    message.packet_id = Some(pid(id));
    OutgoingMessage {
        token: PublishToken(u64::from(id)),
        stage,
        publish: message,
    }
}

/// A server connection that received a 3.1.1 CONNECT with Clean Session 0 and accepted it
/// resuming `state`; its sent bytes and events kept.
fn resumed_server(state: SessionState) -> RawServer {
    let mut connect = connect_packet(V311, "c");
    connect.clean_start = false;
    let mut raw = RawServer::new(V311);
    raw.feed(&encode(Packet::from(connect)));
    raw.engine
        .accept(
            raw.now,
            Accept {
                resumed: Some(state),
                ..Accept::default()
            },
        )
        .expect("CONNECT awaits a decision");
    raw.collect();
    raw
}

fn persistent_client() -> ClientConfig {
    let mut connect = connect_packet(V311, "c");
    connect.clean_start = false;
    ClientConfig::new(connect)
}

// ------------------------------------------------------------------ 1.5.3 UTF-8 strings

#[test]
fn mqtt_1_5_3_1_server_closes_on_ill_formed_utf8_in_topics_and_filters() {
    for bad in ILL_FORMED {
        assert_server_closes(&publish_raw(0x30, bad, None, b"x"));
        assert_server_closes(&publish_raw(0x32, bad, Some(1), b"x"));
        assert_server_closes(&subscribe_raw(0x82, 1, &[(b"ok/#", 0), (bad, 1)]));
        assert_server_closes(&unsubscribe_raw(0xA2, 1, &[bad]));
    }
}

#[test]
fn mqtt_1_5_3_1_client_closes_on_ill_formed_utf8_in_a_topic() {
    for bad in ILL_FORMED {
        assert_client_closes(&publish_raw(0x30, bad, None, b"x"));
        assert_client_closes(&publish_raw(0x34, bad, Some(1), b"x"));
    }
}

#[test]
fn mqtt_1_5_3_2_server_and_client_close_on_a_null_character() {
    for bad in [&b"\0"[..], b"a/\0", b"a\0b/c"] {
        assert_server_closes(&publish_raw(0x30, bad, None, b"x"));
        assert_server_closes(&subscribe_raw(0x82, 1, &[(bad, 0)]));
        assert_server_closes(&unsubscribe_raw(0xA2, 1, &[bad]));
        assert_client_closes(&publish_raw(0x32, bad, Some(4), b"x"));
    }
    assert_connect_refused_silently(&connect_raw(0x02, &field(b"id\0")));
}

#[test]
fn mqtt_1_5_3_3_byte_order_mark_is_neither_skipped_nor_stripped() {
    let bom = "\u{feff}";
    let mut raw = connected_server();
    raw.feed(&publish_raw(0x30, b"\xef\xbb\xbfa/b", None, b"x"));
    raw.feed(&subscribe_raw(0x82, 3, &[(b"\xef\xbb\xbfa/+", 0)]));
    let received = raw.messages();
    assert_eq!(received.len(), 1, "{:?}", raw.events);
    assert_eq!(topic(&received[0]), format!("{bom}a/b"));
    let filter = raw.events.iter().find_map(|event| match event {
        ServerEvent::Subscribe(subscribe) => Some(subscribe.subscriptions[0].filter.clone()),
        _ => None,
    });
    assert_eq!(
        filter.as_ref().map(TopicFilter::as_str),
        Some(format!("{bom}a/+").as_str())
    );

    let mut client = connected_client();
    client.feed(&publish_raw(0x30, b"x/\xef\xbb\xbf", None, b"y"));
    let received = client.messages();
    assert_eq!(
        received.iter().map(topic).collect::<Vec<_>>(),
        [format!("x/{bom}")]
    );

    let connect = connect_received(&connect_raw(0x02, &field(b"\xef\xbb\xbfid")));
    assert_eq!(connect.client_id.as_str(), format!("{bom}id"));
}

// ------------------------------------------------------------------ 2.2.2 flags

#[test]
fn mqtt_2_2_2_2_server_closes_on_invalid_fixed_header_flags() {
    let cases = [
        ack_raw(0x41, 1),
        ack_raw(0x48, 1),
        ack_raw(0x52, 1),
        ack_raw(0x60, 1),
        ack_raw(0x64, 1),
        ack_raw(0x7F, 1),
        subscribe_raw(0x80, 1, &[(b"a", 0)]),
        subscribe_raw(0x8A, 1, &[(b"a", 0)]),
        unsubscribe_raw(0xA0, 1, &[b"a"]),
        unsubscribe_raw(0xA3, 1, &[b"a"]),
        vec![0xC1, 0x00],
        vec![0xE4, 0x00],
    ];
    for bytes in cases {
        assert_server_closes(&bytes);
    }
    assert_connect_refused_silently(&{
        let mut bytes = connect_raw(0x02, &field(b"c"));
        bytes[0] = 0x11;
        bytes
    });
}

#[test]
fn mqtt_2_2_2_2_client_closes_on_invalid_fixed_header_flags() {
    for bytes in [
        ack_raw(0x41, 1),
        ack_raw(0x58, 1),
        ack_raw(0x61, 1),
        ack_raw(0x71, 1),
        packet(0x91, &[0, 1, 0]),
        ack_raw(0xB2, 1),
        vec![0xD8, 0x00],
    ] {
        assert_client_closes(&bytes);
    }
    let mut client = ClientConnection::new(v311_client(), None, Timestamp::ZERO);
    client.connect(Timestamp::ZERO).unwrap();
    let _ = client.poll_transmit(Timestamp::ZERO);
    client.handle_bytes(Timestamp::ZERO, &[0x21, 0x02, 0x00, 0x00]);
    assert!(client.is_closed() && !client.is_connected());
}

// ------------------------------------------------------------------ 2.3.1 packet identifiers

#[test]
fn mqtt_2_3_1_1_server_closes_on_packet_identifier_0() {
    assert_server_closes(&publish_raw(0x32, b"a", Some(0), b"x"));
    assert_server_closes(&publish_raw(0x34, b"a", Some(0), b"x"));
    assert_server_closes(&subscribe_raw(0x82, 0, &[(b"a", 0)]));
    assert_server_closes(&unsubscribe_raw(0xA2, 0, &[b"a"]));
    // The same packets with identifier 1 are fine.
    let mut raw = connected_server();
    raw.feed(&publish_raw(0x32, b"a", Some(1), b"x"));
    raw.feed(&subscribe_raw(0x82, 1, &[(b"a", 0)]));
    assert!(raw.engine.is_connected());
}

#[test]
fn mqtt_2_3_1_2_client_assigns_a_currently_unused_identifier() {
    // A resumed session whose identifiers 1 to 3 are in flight, the next to try being 1.
    let state = SessionState {
        in_flight: vec![
            in_flight(1, QoS::AtLeastOnce, OutgoingStage::Published),
            in_flight(2, QoS::ExactlyOnce, OutgoingStage::Published),
            in_flight(3, QoS::ExactlyOnce, OutgoingStage::Released),
        ],
        next_packet_id: pid(1),
        ..SessionState::default()
    };
    let mut raw = RawClient::connected(persistent_client(), Some(state), true);
    raw.sent.clear();
    let filter = || {
        vec![Subscription::new(
            TopicFilter::new("f/#").unwrap(),
            QoS::AtLeastOnce,
        )]
    };
    for round in 0..3u8 {
        raw.engine
            .publish(raw.now, publish("t", QoS::AtLeastOnce, &[round]))
            .unwrap();
        raw.engine.subscribe(filter(), Default::default()).unwrap();
        raw.engine
            .publish(raw.now, publish("t", QoS::ExactlyOnce, &[round]))
            .unwrap();
        raw.engine
            .unsubscribe(vec![TopicFilter::new("f/#").unwrap()], Default::default())
            .unwrap();
    }
    raw.collect();
    let ids: Vec<u16> = raw
        .sent_packets()
        .iter()
        .map(|packet| match packet {
            Packet::Publish(p) => p.packet_id.expect("QoS 1 and 2 have one").get(),
            Packet::Subscribe(s) => s.packet_id.get(),
            Packet::Unsubscribe(u) => u.packet_id.get(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ids, (4..16).collect::<Vec<_>>(), "1 to 3 are in use");
}

#[test]
fn mqtt_2_3_1_3_client_resends_with_the_same_identifier_which_stays_in_use_until_acknowledged() {
    let mut raw = RawClient::connected(persistent_client(), Some(SessionState::default()), false);
    raw.engine
        .publish(raw.now, publish("a", QoS::AtLeastOnce, b"1"))
        .unwrap();
    raw.engine
        .publish(raw.now, publish("a", QoS::ExactlyOnce, b"2"))
        .unwrap();
    raw.collect();
    raw.feed(&ack_raw(0x50, 2)); // PUBREC 2: PUBREL 2 goes, PUBCOMP is awaited
    assert_eq!(
        flow(&raw.sent_packets()),
        ["PUBLISH 1 qos=1 dup=0", "PUBLISH 2 qos=2 dup=0", "PUBREL 2"]
    );
    // Neither identifier is free before its flow ends: PUBACK for 1, PUBCOMP for 2.
    raw.engine
        .publish(raw.now, publish("a", QoS::AtLeastOnce, b"3"))
        .unwrap();
    raw.collect();
    assert_eq!(flow(&raw.sent_packets())[3], "PUBLISH 3 qos=1 dup=0");

    // The connection is lost: the next one resends with the same identifiers.
    raw.engine.handle_transport_closed();
    let state = raw.engine.session_state();
    let mut again = RawClient::connected(persistent_client(), Some(state), true);
    assert_eq!(
        flow(&again.sent_packets()),
        ["PUBLISH 1 qos=1 dup=1", "PUBREL 2", "PUBLISH 3 qos=1 dup=1"]
    );
    again.sent.clear();
    // Lost once more before any acknowledgement: the same identifiers again.
    again.engine.handle_transport_closed();
    let state = again.engine.session_state();
    let third = RawClient::connected(persistent_client(), Some(state), true);
    assert_eq!(
        flow(&third.sent_packets()),
        ["PUBLISH 1 qos=1 dup=1", "PUBREL 2", "PUBLISH 3 qos=1 dup=1"]
    );
}

#[test]
fn mqtt_2_3_1_4_server_assigns_unused_identifiers_and_resends_with_the_same() {
    let state = SessionState {
        in_flight: vec![in_flight(1, QoS::AtLeastOnce, OutgoingStage::Published)],
        next_packet_id: pid(1),
        ..SessionState::default()
    };
    let mut raw = resumed_server(state);
    for (i, qos) in [QoS::AtLeastOnce, QoS::ExactlyOnce, QoS::AtLeastOnce]
        .into_iter()
        .enumerate()
    {
        raw.engine
            .deliver(raw.now, publish("d", qos, &[i as u8]))
            .unwrap();
    }
    raw.collect();
    raw.feed(&ack_raw(0x50, 3)); // PUBREC for the QoS 2 delivery
    assert_eq!(
        flow(&raw.sent_packets()),
        [
            "ConnAck",
            "PUBLISH 1 qos=1 dup=1",
            "PUBLISH 2 qos=1 dup=0",
            "PUBLISH 3 qos=2 dup=0",
            "PUBLISH 4 qos=1 dup=0",
            "PUBREL 3",
        ],
        "1 was in use: new deliveries take 2, 3 and 4"
    );
    raw.engine.handle_transport_closed(raw.now);
    let again = resumed_server(raw.engine.session_state());
    assert_eq!(
        flow(&again.sent_packets()),
        [
            "ConnAck",
            "PUBLISH 1 qos=1 dup=1",
            "PUBLISH 2 qos=1 dup=1",
            "PUBREL 3",
            "PUBLISH 4 qos=1 dup=1",
        ]
    );
}

#[test]
fn mqtt_2_3_1_5_qos_0_publish_carries_no_identifier() {
    // Even when the caller leaves one on the message, neither engine sends it.
    let mut message = publish("a/b", QoS::AtMostOnce, b"pl");
    message.packet_id = Some(pid(9));
    let expected = [0x30, 0x07, 0x00, 0x03, b'a', b'/', b'b', b'p', b'l'];

    let mut client = connected_client();
    client.engine.publish(client.now, message.clone()).unwrap();
    client.collect();
    assert_eq!(client.sent, expected);

    let mut server = connected_server();
    server.engine.deliver(server.now, message).unwrap();
    server.collect();
    assert_eq!(server.sent, expected);

    // A receiver reads no identifier from a QoS 0 PUBLISH: the two bytes after the topic
    // are payload.
    let mut raw = connected_server();
    raw.feed(&publish_raw(0x30, b"a", None, &[0x00, 0x07]));
    let received = raw.messages();
    assert_eq!(received[0].packet_id, None);
    assert_eq!(&received[0].payload[..], [0x00, 0x07]);
}

#[test]
fn mqtt_2_3_1_6_acknowledgements_carry_the_identifier_of_their_publish() {
    let mut server = connected_server();
    server.feed(&publish_raw(0x32, b"a", Some(0x1234), b"1"));
    server.feed(&publish_raw(0x34, b"a", Some(0xBEEF), b"2"));
    server.feed(&ack_raw(0x62, 0xBEEF));
    assert_eq!(
        flow(&server.sent_packets()),
        ["PUBACK 4660", "PUBREC 48879", "PUBCOMP 48879"]
    );

    let mut client = connected_client();
    client.feed(&publish_raw(0x32, b"a", Some(0x0101), b"1"));
    client.feed(&publish_raw(0x34, b"a", Some(0x0202), b"2"));
    let token = client
        .engine
        .publish(client.now, publish("up", QoS::ExactlyOnce, b"3"))
        .unwrap();
    client.collect();
    let sent_id = match client.sent_packets().last() {
        Some(Packet::Publish(p)) => p.packet_id.unwrap().get(),
        other => panic!("{other:?}"),
    };
    client.feed(&ack_raw(0x50, sent_id));
    assert_eq!(
        flow(&client.sent_packets()),
        [
            "PUBACK 257".to_owned(),
            "PUBREC 514".to_owned(),
            format!("PUBLISH {sent_id} qos=2 dup=0"),
            format!("PUBREL {sent_id}"),
        ]
    );
    assert!(token.is_some());
}

#[test]
fn mqtt_2_3_1_7_suback_and_unsuback_carry_the_identifier_of_their_request() {
    let mut pair = Pair::connected(V311);
    pair.inject_to_server(&subscribe_raw(0x82, 0x0A0B, &[(b"a/#", 1), (b"b", 0)]));
    pair.inject_to_server(&unsubscribe_raw(0xA2, 0x0C0D, &[b"a/#"]));
    let answers: Vec<String> = flow(&pair.packets_to_client(V311))
        .into_iter()
        .skip(1) // CONNACK
        .collect();
    assert_eq!(answers, ["SUBACK 2571", "UNSUBACK 3085"]);
    // An answer with another identifier is not sent.
    let mut raw = connected_server();
    raw.feed(&subscribe_raw(0x82, 7, &[(b"a", 0)]));
    assert!(matches!(
        raw.engine.answer_subscribe(
            pid(8),
            vec![ReasonCode::Success],
            SubAckProperties::default()
        ),
        Err(Error::InvalidState(_))
    ));
    raw.collect();
    assert!(raw.sent.is_empty());
}

// ------------------------------------------------------------------ 3.1 CONNECT

#[test]
fn mqtt_3_1_2_3_server_closes_on_the_reserved_connect_flag() {
    assert_connect_refused_silently(&connect_raw(0x03, &field(b"c")));
    assert_connect_refused_silently(&connect_raw(0x01, &field(b"c")));
    assert_eq!(
        connect_received(&connect_raw(0x02, &field(b"c")))
            .client_id
            .as_str(),
        "c"
    );
}

#[test]
fn mqtt_3_1_2_9_will_flag_requires_will_topic_and_message() {
    assert_connect_refused_silently(&connect_raw(0x06, &field(b"c")));
    assert_connect_refused_silently(&connect_raw(0x06, &fields(&[b"c", b"will/t"])));
    let connect = connect_received(&connect_raw(0x06, &fields(&[b"c", b"will/t", b"bye"])));
    let will = connect.will.expect("a will");
    assert_eq!(
        (will.topic.as_str(), &will.payload[..]),
        ("will/t", &b"bye"[..])
    );
}

#[test]
fn mqtt_3_1_2_11_without_will_flag_no_will_qos_retain_topic_or_message() {
    assert_connect_refused_silently(&connect_raw(0x02 | 0x08, &field(b"c")));
    assert_connect_refused_silently(&connect_raw(0x02 | 0x20, &field(b"c")));
    assert_connect_refused_silently(&connect_raw(0x02, &fields(&[b"c", b"will/t", b"bye"])));
    assert_eq!(
        connect_received(&connect_raw(0x02, &field(b"c"))).will,
        None
    );
}

#[test]
fn mqtt_3_1_2_12_without_will_flag_no_will_is_published() {
    // The connection ends every way but DISCONNECT: nothing is due.
    let mut dropped = Pair::connected(V311);
    dropped.drop_link();
    let mut violated = Pair::connected(V311);
    violated.inject_to_server(&[0xD0, 0x00]); // PINGRESP from a client
    let mut connect = connect_packet(V311, "ka");
    connect.keep_alive = 5;
    let mut silent = Pair::new(ClientConfig::new(connect), ServerConfig::default());
    silent.connect();
    silent.server_to_client = false;
    silent
        .server
        .handle_timeout(silent.now + Duration::from_secs(8));
    silent.drive();
    for (how, pair) in [
        ("dropped", &dropped),
        ("violation", &violated),
        ("keep alive", &silent),
    ] {
        assert!(pair.server.is_closed(), "{how}");
        assert!(
            !pair
                .server_events
                .iter()
                .any(|e| matches!(e, ServerEvent::WillDue(_))),
            "{how}: {:?}",
            pair.server_events
        );
    }
}

#[test]
fn mqtt_3_1_2_13_without_will_flag_will_qos_is_0() {
    assert_connect_refused_silently(&connect_raw(0x02 | 0x08, &field(b"c")));
    assert_connect_refused_silently(&connect_raw(0x02 | 0x10, &field(b"c")));
    assert_connect_refused_silently(&connect_raw(0x02 | 0x18, &field(b"c")));
}

#[test]
fn mqtt_3_1_2_14_will_qos_is_never_3() {
    let will = fields(&[b"c", b"w", b"m"]);
    assert_connect_refused_silently(&connect_raw(0x06 | 0x18, &will));
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let connect = connect_received(&connect_raw(0x06 | (qos.bits() << 3), &will));
        assert_eq!(connect.will.map(|w| w.qos), Some(qos));
    }
}

#[test]
fn mqtt_3_1_2_15_without_will_flag_will_retain_is_0() {
    assert_connect_refused_silently(&connect_raw(0x02 | 0x20, &field(b"c")));
    let connect = connect_received(&connect_raw(0x06 | 0x20, &fields(&[b"c", b"w", b"m"])));
    assert_eq!(connect.will.map(|w| w.retain), Some(true));
}

#[test]
fn mqtt_3_1_2_18_without_user_name_flag_no_user_name() {
    assert_connect_refused_silently(&connect_raw(0x02, &fields(&[b"c", b"user"])));
    assert_eq!(
        connect_received(&connect_raw(0x02, &field(b"c"))).username,
        None
    );
}

#[test]
fn mqtt_3_1_2_19_with_user_name_flag_a_user_name() {
    assert_connect_refused_silently(&connect_raw(0x82, &field(b"c")));
    let connect = connect_received(&connect_raw(0x82, &fields(&[b"c", b"user"])));
    assert_eq!(connect.username.as_ref().map(|u| u.as_str()), Some("user"));
}

#[test]
fn mqtt_3_1_2_20_without_password_flag_no_password() {
    assert_connect_refused_silently(&connect_raw(0x82, &fields(&[b"c", b"user", b"pw"])));
    assert_eq!(
        connect_received(&connect_raw(0x82, &fields(&[b"c", b"user"]))).password,
        None
    );
}

#[test]
fn mqtt_3_1_2_21_with_password_flag_a_password() {
    assert_connect_refused_silently(&connect_raw(0xC2, &fields(&[b"c", b"user"])));
    let connect = connect_received(&connect_raw(0xC2, &fields(&[b"c", b"user", b"pw"])));
    assert_eq!(connect.password.as_deref(), Some(&b"pw"[..]));
}

#[test]
fn mqtt_3_1_2_22_password_flag_needs_user_name_flag() {
    assert_connect_refused_silently(&connect_raw(0x42, &fields(&[b"c", b"pw"])));
    assert_connect_refused_silently(&connect_raw(0x42, &field(b"c")));
}

#[test]
fn mqtt_3_1_2_23_client_sends_pingreq_when_it_has_nothing_else_to_send() {
    let mut connect = connect_packet(V311, "ka");
    connect.keep_alive = 10;
    let mut raw = RawClient::connected(ClientConfig::new(connect), None, false);
    let mut sent_at = vec![raw.now];
    let mut pings = 0;
    // 60 s idle, then 60 s publishing every 4 s: the gap between packets never exceeds the
    // keep alive, and PINGREQ fills only the idle time.
    for step in 0..=1200u64 {
        raw.now = Timestamp::ZERO + Duration::from_millis(step * 100);
        if step > 600 && step % 40 == 0 {
            raw.engine
                .publish(raw.now, publish("a", QoS::AtMostOnce, b"x"))
                .unwrap();
        }
        raw.engine.handle_timeout(raw.now);
        let before = raw.sent.len();
        raw.collect();
        if raw.sent.len() > before {
            if raw.sent[before..] == [0xC0, 0x00] {
                pings += 1;
                raw.feed(&[0xD0, 0x00]);
            }
            sent_at.push(raw.now);
        }
    }
    assert!(raw.engine.is_connected());
    let longest = sent_at
        .windows(2)
        .map(|w| w[1].saturating_duration_since(w[0]))
        .max()
        .unwrap();
    assert!(longest <= Duration::from_secs(10), "a gap of {longest:?}");
    assert_eq!(
        pings, 6,
        "one PINGREQ per idle keep alive period, none while publishing"
    );
}

#[test]
fn mqtt_3_1_2_24_server_disconnects_after_one_and_a_half_keep_alives_as_if_the_network_failed() {
    let mut connect = connect_packet(V311, "ka");
    connect.keep_alive = 10;
    connect.will = Some(Will {
        topic: TopicName::new("w").unwrap(),
        payload: "gone".into(),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
    });
    let mut raw = RawServer::accepted(connect);
    // A packet at 9 s moves the deadline to 9 + 15 s.
    raw.now = Timestamp::ZERO + Duration::from_secs(9);
    raw.feed(&[0xC0, 0x00]);
    raw.sent.clear();
    raw.now = Timestamp::ZERO + Duration::from_millis(23_999);
    raw.engine.handle_timeout(raw.now);
    assert!(
        raw.engine.is_connected(),
        "not before 1.5 times the keep alive"
    );
    raw.now = Timestamp::ZERO + Duration::from_secs(24);
    raw.engine.handle_timeout(raw.now);
    raw.collect();
    assert!(raw.engine.is_closed());
    assert!(raw.sent.is_empty(), "3.1.1 has nothing to tell the client");
    assert!(matches!(
        raw.events.as_slice(),
        [
            ServerEvent::Closed(CloseReason::KeepAliveTimeout),
            ServerEvent::WillDue(_)
        ]
    ));
}

#[test]
fn mqtt_3_1_3_3_client_identifier_must_be_present() {
    assert_connect_refused_silently(&connect_raw(0x02, &[]));
    assert_connect_refused_silently(&connect_raw(0x02, &[0x00]));
}

#[test]
fn mqtt_3_1_3_4_client_identifier_is_utf8() {
    for bad in ILL_FORMED {
        assert_connect_refused_silently(&connect_raw(0x02, &field(bad)));
    }
}

#[test]
fn mqtt_3_1_3_7_client_with_empty_identifier_sets_clean_session() {
    let mut connect = connect_packet(V311, "");
    connect.clean_start = false;
    let mut client = ClientConnection::new(ClientConfig::new(connect), None, Timestamp::ZERO);
    assert!(matches!(
        client.connect(Timestamp::ZERO),
        Err(Error::InvalidState(_))
    ));
    assert_eq!(
        client.poll_transmit(Timestamp::ZERO),
        None,
        "no CONNECT sent"
    );

    let mut clean = ClientConnection::new(
        ClientConfig::new(connect_packet(V311, "")),
        None,
        Timestamp::ZERO,
    );
    clean.connect(Timestamp::ZERO).unwrap();
    assert!(clean.poll_transmit(Timestamp::ZERO).is_some());
}

#[test]
fn mqtt_3_1_3_9_rejected_client_identifier_gets_connack_0x02_and_close() {
    let mut raw = RawServer::new(V311);
    raw.feed(&connect_raw(0x02, &field(b"not-welcome")));
    raw.engine
        .refuse(ReasonCode::ClientIdentifierNotValid, Default::default())
        .unwrap();
    raw.collect();
    assert_eq!(raw.sent, [0x20, 0x02, 0x00, 0x02]);
    assert!(raw.engine.is_closed());
}

#[test]
fn mqtt_3_1_3_10_will_topic_is_utf8() {
    for bad in ILL_FORMED {
        assert_connect_refused_silently(&connect_raw(0x06, &fields(&[b"c", bad, b"m"])));
    }
}

#[test]
fn mqtt_3_1_3_11_user_name_is_utf8() {
    for bad in ILL_FORMED {
        assert_connect_refused_silently(&connect_raw(0x82, &fields(&[b"c", bad])));
    }
}

#[test]
fn mqtt_3_1_4_1_nonconforming_connect_is_closed_without_connack() {
    let good = connect_raw(0x02, &field(b"c"));
    let mut truncated_field = good.clone();
    truncated_field[1] -= 1;
    truncated_field.pop();
    let mut trailing = connect_raw(0x02, &field(b"c"));
    trailing[1] += 1;
    trailing.push(0);
    let mut no_flags = good.clone();
    no_flags.truncate(10);
    no_flags[1] = 8; // ends after the protocol level
    for bytes in [
        truncated_field,
        trailing,
        no_flags,
        connect_raw(0x01, &field(b"c")),
    ] {
        assert_connect_refused_silently(&bytes);
    }
}

#[test]
fn mqtt_3_1_4_4_accepted_connect_gets_connack_with_return_code_0() {
    let mut raw = RawServer::new(V311);
    raw.feed(&connect_raw(0x02, &field(b"c")));
    assert!(raw.sent.is_empty(), "nothing before the caller decides");
    raw.engine.accept(raw.now, Accept::default()).unwrap();
    raw.collect();
    assert_eq!(raw.sent, [0x20, 0x02, 0x00, 0x00]);
    assert!(raw.engine.is_connected());
}

#[test]
fn mqtt_3_1_4_5_refused_connect_processes_nothing_sent_after_it() {
    let mut rest = publish_raw(0x32, b"a", Some(1), b"x");
    rest.extend(subscribe_raw(0x82, 2, &[(b"a", 0)]));
    rest.extend([0xC0, 0x00]);

    let mut raw = RawServer::new(V311);
    let mut bytes = connect_raw(0x02, &field(b"c"));
    bytes.extend_from_slice(&rest);
    raw.feed(&bytes);
    raw.engine
        .refuse(ReasonCode::NotAuthorized, Default::default())
        .unwrap();
    raw.collect();
    raw.feed(&rest);
    assert_eq!(raw.sent, [0x20, 0x02, 0x00, 0x05], "only the CONNACK");
    assert!(!raw.surfaced(), "{:?}", raw.events);

    // Refused by the engine itself: an empty client id without Clean Session.
    let mut raw = RawServer::new(V311);
    let mut bytes = connect_raw(0x00, &field(b""));
    bytes.extend_from_slice(&rest);
    raw.feed(&bytes);
    assert_eq!(raw.sent, [0x20, 0x02, 0x00, 0x02], "only the CONNACK");
    assert!(!raw.surfaced(), "{:?}", raw.events);
}

// ------------------------------------------------------------------ 3.2 CONNACK

#[test]
fn mqtt_3_2_0_1_first_packet_from_the_server_is_connack() {
    let mut raw = RawServer::new(V311);
    let mut connect = connect_packet(V311, "c");
    connect.clean_start = false;
    let mut bytes = encode(Packet::from(connect));
    bytes.extend([0xC0, 0x00]); // PINGREQ right behind the CONNECT
    raw.feed(&bytes);
    assert_eq!(
        raw.engine
            .deliver(raw.now, publish("a", QoS::AtMostOnce, b"x")),
        Err(Error::NotConnected)
    );
    raw.collect();
    assert!(raw.sent.is_empty(), "nothing before CONNACK");
    let state = SessionState {
        in_flight: vec![in_flight(1, QoS::AtLeastOnce, OutgoingStage::Published)],
        ..SessionState::default()
    };
    raw.engine
        .accept(
            raw.now,
            Accept {
                resumed: Some(state),
                ..Accept::default()
            },
        )
        .unwrap();
    raw.collect();
    assert_eq!(
        flow(&raw.sent_packets()),
        ["ConnAck", "PUBLISH 1 qos=1 dup=1", "PingResp"]
    );
}

#[test]
fn mqtt_3_2_2_1_clean_session_gets_session_present_0() {
    let mut raw = RawServer::new(V311);
    raw.feed(&connect_raw(0x02, &field(b"c")));
    let stale = SessionState {
        in_flight: vec![in_flight(1, QoS::AtLeastOnce, OutgoingStage::Published)],
        ..SessionState::default()
    };
    raw.engine
        .accept(
            raw.now,
            Accept {
                resumed: Some(stale),
                ..Accept::default()
            },
        )
        .unwrap();
    raw.collect();
    assert_eq!(
        raw.sent,
        [0x20, 0x02, 0x00, 0x00],
        "nothing resumed or resent"
    );
}

#[test]
fn mqtt_3_2_2_2_stored_session_gets_session_present_1() {
    let raw = resumed_server(SessionState::default());
    assert_eq!(raw.sent, [0x20, 0x02, 0x01, 0x00]);
}

#[test]
fn mqtt_3_2_2_3_no_stored_session_gets_session_present_0() {
    let mut raw = RawServer::new(V311);
    raw.feed(&connect_raw(0x00, &field(b"c")));
    raw.engine.accept(raw.now, Accept::default()).unwrap();
    raw.collect();
    assert_eq!(raw.sent, [0x20, 0x02, 0x00, 0x00]);
}

#[test]
fn mqtt_3_2_2_4_refusal_has_session_present_0() {
    for (code, byte) in [
        (ReasonCode::UnsupportedProtocolVersion, 1),
        (ReasonCode::ClientIdentifierNotValid, 2),
        (ReasonCode::ServerUnavailable, 3),
        (ReasonCode::BadUserNameOrPassword, 4),
        (ReasonCode::NotAuthorized, 5),
    ] {
        let mut raw = RawServer::new(V311);
        raw.feed(&connect_raw(0x00, &field(b"persistent"))); // Clean Session 0
        raw.engine.refuse(code, Default::default()).unwrap();
        raw.collect();
        assert_eq!(raw.sent, [0x20, 0x02, 0x00, byte], "{code:?}");
    }
}

#[test]
fn mqtt_3_2_2_5_refusal_closes_the_connection() {
    let mut raw = RawServer::new(V311);
    raw.feed(&connect_raw(0x02, &field(b"c")));
    raw.engine
        .refuse(ReasonCode::BadUserNameOrPassword, Default::default())
        .unwrap();
    raw.collect();
    assert!(raw.engine.is_closed());
    assert_eq!(
        raw.close_reason(),
        Some(&CloseReason::Refused(ReasonCode::BadUserNameOrPassword))
    );
    assert_eq!(raw.engine.poll_timeout(), None, "nothing left to wait for");
    raw.feed(&[0xC0, 0x00]);
    assert_eq!(
        raw.sent,
        [0x20, 0x02, 0x00, 0x04],
        "nothing after the CONNACK"
    );
}

#[test]
fn mqtt_3_2_2_6_connect_no_return_code_fits_is_closed_without_connack() {
    // Neither a CONNECT the server could answer nor one it could refuse with a return code:
    // cut short, or with a Remaining Length running past what the fields take.
    let good = connect_raw(0x02, &field(b"client"));
    let mut short = good.clone();
    short[1] = 4;
    short.truncate(6);
    let mut long = good;
    long[1] += 3;
    long.extend([0x00, 0x01, b'x']);
    assert_connect_refused_silently(&short);
    assert_connect_refused_silently(&long);
}

// ------------------------------------------------------------------ 3.3 PUBLISH

#[test]
fn mqtt_3_3_1_1_dup_is_set_on_redelivery_by_client_and_server() {
    let mut pair = Pair::new(persistent_client(), ServerConfig::default());
    pair.connect();
    pair.auto_broker = false;
    pair.server_to_client = false;
    pair.client
        .publish(pair.now, publish("up", QoS::AtLeastOnce, b"1"))
        .unwrap();
    pair.server
        .deliver(pair.now, publish("down", QoS::ExactlyOnce, b"2"))
        .unwrap();
    let _ = pair.client.poll_transmit(pair.now); // lost
    pair.drive();
    pair.drop_link();
    let first: Vec<bool> = pair
        .packets_to_client(V311)
        .iter()
        .chain(&pair.packets_to_server(V311))
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(p.dup),
            _ => None,
        })
        .collect();
    assert_eq!(first, [false], "first sent with DUP 0");

    pair.sent_to_client.clear();
    pair.sent_to_server.clear();
    pair.server_to_client = true;
    pair.auto_broker = true;
    pair.reconnect(false);
    let to_server = pair.packets_to_server(V311);
    let to_client = pair.packets_to_client(V311);
    assert!(
        matches!(&to_server[1], Packet::Publish(p) if p.dup && p.payload == "1"),
        "{to_server:?}"
    );
    assert!(
        matches!(&to_client[1], Packet::Publish(p) if p.dup && p.payload == "2"),
        "{to_client:?}"
    );
}

#[test]
fn mqtt_3_3_1_2_qos_0_goes_with_dup_0_and_dup_1_is_refused() {
    let mut message = publish("a", QoS::AtMostOnce, b"x");
    message.dup = true;
    let mut client = connected_client();
    client.engine.publish(client.now, message.clone()).unwrap();
    client.collect();
    let mut server = connected_server();
    server.engine.deliver(server.now, message).unwrap();
    server.collect();
    assert_eq!(client.sent[0], 0x30);
    assert_eq!(server.sent[0], 0x30);

    assert_server_closes(&publish_raw(0x38, b"a", None, b"x"));
    assert_client_closes(&publish_raw(0x38, b"a", None, b"x"));
}

#[test]
fn mqtt_3_3_1_4_qos_3_closes_the_connection() {
    assert_server_closes(&publish_raw(0x36, b"a", Some(1), b"x"));
    assert_server_closes(&publish_raw(0x3E, b"a", Some(1), b"x"));
    assert_client_closes(&publish_raw(0x36, b"a", Some(1), b"x"));
}

#[test]
fn mqtt_3_3_2_1_topic_name_comes_first_and_is_utf8() {
    assert_server_closes(&packet(0x30, &[]));
    assert_server_closes(&packet(0x30, &[0x00]));
    assert_server_closes(&packet(0x30, &[0x00, 0x05, b'a'])); // topic runs past the end
    assert_server_closes(&publish_raw(0x30, b"a\xff", None, b""));
    let mut raw = connected_server();
    raw.feed(&publish_raw(0x32, b"t/1", Some(5), b"body"));
    let received = raw.messages();
    assert_eq!(
        (topic(&received[0]), &received[0].payload[..]),
        ("t/1", &b"body"[..])
    );
}

#[test]
fn mqtt_3_3_2_2_wildcards_in_a_topic_name_close_the_connection() {
    for bad in [&b"a/+"[..], b"#", b"a/#", b"+", b"x+"] {
        assert_server_closes(&publish_raw(0x30, bad, None, b"x"));
        assert_client_closes(&publish_raw(0x30, bad, None, b"x"));
    }
}

#[test]
fn mqtt_3_3_4_1_publish_is_answered_as_its_qos_requires() {
    let inputs = [
        publish_raw(0x30, b"q", None, b"0"),
        publish_raw(0x32, b"q", Some(1), b"1"),
        publish_raw(0x34, b"q", Some(2), b"2"),
    ];
    let expected = (
        vec!["PUBACK 1".to_owned(), "PUBREC 2".to_owned()],
        vec![Bytes::from("0"), Bytes::from("1"), Bytes::from("2")],
    );
    assert_eq!(answers(connected_server(), &inputs), expected);
    assert_eq!(answers(connected_client(), &inputs), expected);
}

// ------------------------------------------------------------------ 3.6 - 3.14

#[test]
fn mqtt_3_6_1_1_pubrel_flags_other_than_0010_close_the_connection() {
    for first in [0x60, 0x63, 0x6A, 0x6F] {
        assert_server_closes(&ack_raw(first, 1));
        assert_client_closes(&ack_raw(first, 1));
    }
    let mut raw = connected_server();
    raw.feed(&publish_raw(0x34, b"a", Some(1), b"x"));
    raw.feed(&ack_raw(0x62, 1));
    assert_eq!(flow(&raw.sent_packets()), ["PUBREC 1", "PUBCOMP 1"]);
}

#[test]
fn mqtt_3_8_1_1_subscribe_flags_other_than_0010_close_the_connection() {
    for first in [0x80, 0x81, 0x83, 0x86, 0x8A] {
        assert_server_closes(&subscribe_raw(first, 1, &[(b"a/#", 1)]));
    }
    let mut raw = connected_server();
    raw.feed(&subscribe_raw(0x82, 1, &[(b"a/#", 1)]));
    assert!(raw.surfaced());
}

#[test]
fn mqtt_3_8_3_1_subscribe_filters_are_utf8() {
    for bad in ILL_FORMED {
        assert_server_closes(&subscribe_raw(0x82, 1, &[(bad, 0)]));
    }
    let mut raw = connected_server();
    raw.feed(&subscribe_raw(0x82, 1, &[("caf\u{e9}/+".as_bytes(), 0)]));
    let filter = raw.events.iter().find_map(|event| match event {
        ServerEvent::Subscribe(subscribe) => Some(subscribe.subscriptions[0].filter.clone()),
        _ => None,
    });
    assert_eq!(
        filter.as_ref().map(TopicFilter::as_str),
        Some("caf\u{e9}/+")
    );
}

#[test]
fn mqtt_3_8_3_3_subscribe_needs_a_filter() {
    assert_server_closes(&subscribe_raw(0x82, 1, &[]));
    let mut raw = connected_client();
    assert!(matches!(
        raw.engine.subscribe(vec![], Default::default()),
        Err(Error::Codec(_))
    ));
    raw.collect();
    assert!(raw.sent.is_empty(), "no empty SUBSCRIBE sent");
    assert!(raw.engine.is_connected());
}

#[test]
fn mqtt_3_9_3_2_suback_uses_only_0_1_2_and_0x80() {
    let mut raw = connected_server();
    let filters: Vec<(&[u8], u8)> = vec![(b"a", 1); 6];
    raw.feed(&subscribe_raw(0x82, 9, &filters));
    raw.engine
        .answer_subscribe(
            pid(9),
            vec![
                ReasonCode::GrantedQoS1,
                ReasonCode::NotAuthorized,
                ReasonCode::TopicFilterInvalid,
                ReasonCode::QuotaExceeded,
                ReasonCode::Success,
                ReasonCode::GrantedQoS2,
            ],
            SubAckProperties::default(),
        )
        .unwrap();
    raw.collect();
    assert_eq!(
        raw.sent,
        [0x90, 0x08, 0x00, 0x09, 0x01, 0x80, 0x80, 0x80, 0x00, 0x02]
    );
}

#[test]
fn mqtt_3_10_1_1_unsubscribe_flags_other_than_0010_close_the_connection() {
    for first in [0xA0, 0xA1, 0xA3, 0xA6, 0xAA] {
        assert_server_closes(&unsubscribe_raw(first, 1, &[b"a/#"]));
    }
    let mut raw = connected_server();
    raw.feed(&unsubscribe_raw(0xA2, 1, &[b"a/#"]));
    assert!(raw.surfaced());
}

#[test]
fn mqtt_3_10_3_1_unsubscribe_filters_are_utf8() {
    for bad in ILL_FORMED {
        assert_server_closes(&unsubscribe_raw(0xA2, 1, &[b"ok", bad]));
    }
}

#[test]
fn mqtt_3_10_3_2_unsubscribe_needs_a_filter() {
    assert_server_closes(&unsubscribe_raw(0xA2, 1, &[]));
    let mut raw = connected_client();
    assert!(matches!(
        raw.engine.unsubscribe(vec![], Default::default()),
        Err(Error::Codec(_))
    ));
    raw.collect();
    assert!(raw.sent.is_empty(), "no empty UNSUBSCRIBE sent");
}

#[test]
fn mqtt_3_12_4_1_pingreq_is_answered_with_pingresp() {
    let mut raw = connected_server();
    for i in 1..=3 {
        raw.feed(&[0xC0, 0x00]);
        assert_eq!(raw.sent, [0xD0, 0x00].repeat(i));
    }
    assert!(raw.engine.is_connected());
}

#[test]
fn mqtt_3_14_1_1_disconnect_with_reserved_bits_set_is_a_violation_not_a_disconnect() {
    for first in [0xE1, 0xE2, 0xE8, 0xEF] {
        let mut connect = connect_packet(V311, "c");
        connect.will = Some(Will {
            topic: TopicName::new("w").unwrap(),
            payload: "gone".into(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Default::default(),
        });
        let mut raw = RawServer::accepted(connect);
        raw.feed(&[first, 0x00]);
        assert!(raw.engine.is_closed());
        assert!(
            matches!(
                raw.events.as_slice(),
                [
                    ServerEvent::Closed(CloseReason::ProtocolViolation { .. }),
                    ServerEvent::WillDue(_)
                ]
            ),
            "{first:#x}: the will goes, as for any abnormal end: {:?}",
            raw.events
        );
    }
}

#[test]
fn mqtt_3_14_4_1_client_closes_the_connection_after_disconnect() {
    let mut raw = connected_client();
    raw.engine.disconnect(Disconnect::new(ReasonCode::Success));
    raw.collect();
    assert_eq!(raw.sent, [0xE0, 0x00]);
    assert!(raw.engine.is_closed());
    assert_eq!(
        raw.close_reason(),
        Some(&CloseReason::LocalDisconnect(ReasonCode::Success)),
        "the driver is told to close the transport"
    );
    assert_eq!(raw.engine.poll_timeout(), None);
}

#[test]
fn mqtt_3_14_4_2_client_sends_nothing_after_disconnect() {
    let mut connect = connect_packet(V311, "c");
    connect.keep_alive = 5;
    let mut raw = RawClient::connected(ClientConfig::new(connect), None, false);
    raw.engine.disconnect(Disconnect::new(ReasonCode::Success));
    raw.collect();
    raw.sent.clear();
    assert_eq!(
        raw.engine
            .publish(raw.now, publish("a", QoS::AtMostOnce, b"x")),
        Err(Error::Closed)
    );
    assert_eq!(
        raw.engine
            .publish(raw.now, publish("a", QoS::AtLeastOnce, b"x")),
        Err(Error::Closed)
    );
    let filter = TopicFilter::new("a").unwrap();
    assert_eq!(
        raw.engine.subscribe(
            vec![Subscription::new(filter.clone(), QoS::AtMostOnce)],
            Default::default()
        ),
        Err(Error::Closed)
    );
    assert_eq!(
        raw.engine.unsubscribe(vec![filter], Default::default()),
        Err(Error::Closed)
    );
    raw.feed(&publish_raw(0x32, b"a", Some(1), b"late"));
    raw.now = raw.now + Duration::from_secs(60);
    raw.engine.handle_timeout(raw.now);
    raw.engine.disconnect(Disconnect::new(ReasonCode::Success));
    raw.collect();
    assert!(raw.sent.is_empty(), "sent {:02x?}", raw.sent);
}

// ------------------------------------------------------------------ 4.1 - 4.6 flows

#[test]
fn mqtt_4_1_0_1_both_sides_keep_session_state_for_the_whole_session() {
    let mut pair = Pair::new(persistent_client(), ServerConfig::default());
    pair.connect();
    pair.client
        .publish(pair.now, publish("up", QoS::ExactlyOnce, b"once"))
        .unwrap();
    // PUBLISH and PUBREC go through; the PUBREL is lost with the link.
    assert!(pair.step());
    assert!(pair.step());
    pair.drop_link();
    assert_eq!(pair.server_messages().len(), 1);
    assert_eq!(
        pair.client.session_state().in_flight[0].stage,
        OutgoingStage::Released
    );
    assert_eq!(
        pair.server_session
            .as_ref()
            .map(|s| s.inbound_awaiting_release.clone()),
        Some(vec![pid(1)])
    );
    // The next connection of the session picks the flow up where it was.
    pair.reconnect(false);
    assert_eq!(pair.server_messages().len(), 1, "delivered once");
    assert!(pair.client.session_state().is_empty());
    assert!(
        pair.client_events
            .iter()
            .any(|e| matches!(e, ClientEvent::PublishCompleted(_)))
    );
}

#[test]
fn mqtt_4_3_1_1_qos_0_is_sent_once_with_qos_0_and_dup_0() {
    let mut pair = Pair::connected(V311);
    pair.client
        .publish(pair.now, publish("up", QoS::AtMostOnce, b"1"))
        .unwrap();
    pair.server
        .deliver(pair.now, publish("down", QoS::AtMostOnce, b"2"))
        .unwrap();
    pair.drive();
    pair.reconnect(false);
    for packets in [pair.packets_to_server(V311), pair.packets_to_client(V311)] {
        let publishes: Vec<&Publish> = packets
            .iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => Some(p),
                _ => None,
            })
            .collect();
        assert_eq!(publishes.len(), 1, "sent once, never again: {packets:?}");
        assert_eq!(
            (publishes[0].qos, publishes[0].dup, publishes[0].packet_id),
            (QoS::AtMostOnce, false, None)
        );
    }
}

#[test]
fn mqtt_4_3_2_1_qos_1_sender_keeps_the_message_until_puback() {
    let mut client = connected_client();
    let token = client
        .engine
        .publish(client.now, publish("a", QoS::AtLeastOnce, b"x"))
        .unwrap();
    client.collect();
    assert_eq!(flow(&client.sent_packets()), ["PUBLISH 1 qos=1 dup=0"]);
    client.feed(&ack_raw(0x40, 2)); // another identifier
    client.feed(&ack_raw(0x50, 1)); // the wrong acknowledgement
    assert_eq!(
        client.engine.pending_messages(),
        (1, 0),
        "still unacknowledged"
    );
    client.feed(&ack_raw(0x40, 1));
    assert_eq!(client.engine.pending_messages(), (0, 0));
    assert!(
        client
            .events
            .iter()
            .any(|e| matches!(e, ClientEvent::PublishAcknowledged(o) if Some(o.token) == token))
    );

    let mut server = connected_server();
    server
        .engine
        .deliver(server.now, publish("a", QoS::AtLeastOnce, b"x"))
        .unwrap();
    server.collect();
    assert_eq!(flow(&server.sent_packets()), ["PUBLISH 1 qos=1 dup=0"]);
    server.feed(&ack_raw(0x40, 2));
    assert_eq!(server.engine.pending_messages(), (1, 0));
    server.feed(&ack_raw(0x40, 1));
    assert_eq!(server.engine.pending_messages(), (0, 0));
}

#[test]
fn mqtt_4_3_2_2_qos_1_receiver_acknowledges_and_then_takes_the_identifier_as_new() {
    let inputs = [
        publish_raw(0x32, b"a", Some(3), b"first"),
        publish_raw(0x3A, b"a", Some(3), b"again"), // DUP 1
    ];
    let expected = (
        vec!["PUBACK 3".to_owned(), "PUBACK 3".to_owned()],
        vec![Bytes::from("first"), Bytes::from("again")],
    );
    assert_eq!(answers(connected_server(), &inputs), expected, "server");
    assert_eq!(answers(connected_client(), &inputs), expected, "client");
}

#[test]
fn mqtt_4_3_3_1_qos_2_sender_publishes_releases_and_never_publishes_again_after_pubrel() {
    let mut client =
        RawClient::connected(persistent_client(), Some(SessionState::default()), false);
    client
        .engine
        .publish(client.now, publish("a", QoS::ExactlyOnce, b"x"))
        .unwrap();
    client.collect();
    client.feed(&ack_raw(0x50, 1));
    assert_eq!(
        flow(&client.sent_packets()),
        ["PUBLISH 1 qos=2 dup=0", "PUBREL 1"]
    );
    assert_eq!(client.engine.pending_messages(), (1, 0), "until PUBCOMP");
    // Resumed after PUBREL: PUBREL again, not the PUBLISH.
    client.engine.handle_transport_closed();
    let state = client.engine.session_state();
    let mut resumed = RawClient::connected(persistent_client(), Some(state), true);
    assert_eq!(flow(&resumed.sent_packets()), ["PUBREL 1"]);
    resumed.feed(&ack_raw(0x70, 1));
    assert_eq!(resumed.engine.pending_messages(), (0, 0));

    let mut server = connected_server();
    server
        .engine
        .deliver(server.now, publish("a", QoS::ExactlyOnce, b"x"))
        .unwrap();
    server.collect();
    server.feed(&ack_raw(0x50, 1));
    assert_eq!(
        flow(&server.sent_packets()),
        ["PUBLISH 1 qos=2 dup=0", "PUBREL 1"]
    );
    assert_eq!(server.engine.pending_messages(), (1, 0));
    server.engine.handle_transport_closed(server.now);
    let resumed = resumed_server(server.engine.session_state());
    assert_eq!(flow(&resumed.sent_packets()), ["ConnAck", "PUBREL 1"]);
}

#[test]
fn mqtt_4_3_3_2_qos_2_receiver_delivers_once_until_pubrel_then_takes_the_identifier_as_new() {
    let inputs = [
        publish_raw(0x34, b"a", Some(7), b"one"),
        publish_raw(0x3C, b"a", Some(7), b"one"), // DUP 1, before PUBREL
        ack_raw(0x62, 7),
        publish_raw(0x34, b"a", Some(7), b"two"),
    ];
    let expected = (
        ["PUBREC 7", "PUBREC 7", "PUBCOMP 7", "PUBREC 7"]
            .map(str::to_owned)
            .to_vec(),
        vec![Bytes::from("one"), Bytes::from("two")],
    );
    assert_eq!(answers(connected_server(), &inputs), expected, "server");
    assert_eq!(answers(connected_client(), &inputs), expected, "client");
}

#[test]
fn mqtt_4_4_0_1_both_sides_resend_publish_and_pubrel_with_their_identifiers() {
    let mut pair = Pair::new(persistent_client(), ServerConfig::default());
    pair.connect();
    pair.auto_broker = false;
    for (i, qos) in [QoS::AtLeastOnce, QoS::ExactlyOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        pair.client
            .publish(pair.now, publish("up", qos, &[i as u8]))
            .unwrap();
        pair.server
            .deliver(pair.now, publish("down", qos, &[i as u8]))
            .unwrap();
    }
    // Each side receives only a PUBREC for its identifier 2.
    let _ = pair.client.poll_transmit(pair.now);
    let _ = pair.server.poll_transmit(pair.now);
    pair.client.handle_bytes(pair.now, &ack_raw(0x50, 2));
    pair.server.handle_bytes(pair.now, &ack_raw(0x50, 2));
    let _ = pair.client.poll_transmit(pair.now);
    let _ = pair.server.poll_transmit(pair.now);
    pair.drop_link();
    pair.sent_to_client.clear();
    pair.sent_to_server.clear();
    pair.auto_broker = true;
    pair.reconnect(false);
    let expected = ["PUBLISH 1 qos=1 dup=1", "PUBREL 2", "PUBLISH 3 qos=2 dup=1"];
    assert_eq!(flow(&pair.packets_to_server(V311))[1..4], expected);
    assert_eq!(flow(&pair.packets_to_client(V311))[1..4], expected);
}

#[test]
fn mqtt_4_5_0_2_client_acknowledges_messages_it_did_not_subscribe_to() {
    let mut client = connected_client();
    client.feed(&publish_raw(0x32, b"never/subscribed", Some(4), b"x"));
    client.feed(&publish_raw(0x34, b"never/subscribed", Some(5), b"y"));
    client.feed(&ack_raw(0x62, 5));
    assert_eq!(
        flow(&client.sent_packets()),
        ["PUBACK 4", "PUBREC 5", "PUBCOMP 5"]
    );
}

#[test]
fn mqtt_4_6_0_1_resends_go_in_the_original_order() {
    let state = SessionState {
        in_flight: vec![
            in_flight(40, QoS::ExactlyOnce, OutgoingStage::Published),
            in_flight(7, QoS::AtLeastOnce, OutgoingStage::Published),
            in_flight(300, QoS::ExactlyOnce, OutgoingStage::Released),
            in_flight(2, QoS::AtLeastOnce, OutgoingStage::Published),
        ],
        ..SessionState::default()
    };
    let expected = [
        "PUBLISH 40 qos=2 dup=1",
        "PUBLISH 7 qos=1 dup=1",
        "PUBREL 300",
        "PUBLISH 2 qos=1 dup=1",
    ];
    let client = RawClient::connected(persistent_client(), Some(state.clone()), true);
    assert_eq!(flow(&client.sent_packets()), expected);
    let server = resumed_server(state);
    assert_eq!(flow(&server.sent_packets())[1..], expected);
}

/// A client acknowledging by hand, fed QoS `qos` messages with identifiers `ids`, which it
/// acknowledges in the order `acks` (indices into `ids`).
fn manual_acks(qos: QoS, ids: &[u16], acks: &[usize]) -> Vec<String> {
    let config = ClientConfig {
        manual_acks: true,
        ..v311_client()
    };
    let mut raw = RawClient::connected(config, None, false);
    for id in ids {
        raw.feed(&publish_raw(
            0x30 | (qos.bits() << 1),
            b"a",
            Some(*id),
            b"x",
        ));
    }
    let handles: Vec<_> = raw
        .events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Message(m) => m.ack,
            _ => None,
        })
        .collect();
    assert_eq!(handles.len(), ids.len());
    for &index in acks {
        raw.engine.acknowledge(handles[index], ReasonCode::Success);
        raw.collect();
    }
    flow(&raw.sent_packets())
}

#[test]
fn mqtt_4_6_0_2_client_sends_puback_in_the_order_publishes_arrived() {
    assert_eq!(
        manual_acks(QoS::AtLeastOnce, &[5, 3, 9], &[2, 0, 1]),
        ["PUBACK 5", "PUBACK 3", "PUBACK 9"]
    );
    assert_eq!(
        manual_acks(QoS::AtLeastOnce, &[5, 3, 9], &[0, 1, 2]),
        ["PUBACK 5", "PUBACK 3", "PUBACK 9"]
    );
}

#[test]
fn mqtt_4_6_0_3_client_sends_pubrec_in_the_order_publishes_arrived() {
    assert_eq!(
        manual_acks(QoS::ExactlyOnce, &[8, 1, 4], &[1, 2, 0]),
        ["PUBREC 8", "PUBREC 1", "PUBREC 4"]
    );
}

#[test]
fn mqtt_4_6_0_4_client_sends_pubrel_in_the_order_pubrecs_arrived() {
    let mut raw = connected_client();
    for i in 0..4u8 {
        raw.engine
            .publish(raw.now, publish("a", QoS::ExactlyOnce, &[i]))
            .unwrap();
    }
    raw.collect();
    raw.sent.clear();
    for id in [3, 1, 4, 2] {
        raw.feed(&ack_raw(0x50, id));
    }
    assert_eq!(
        flow(&raw.sent_packets()),
        ["PUBREL 3", "PUBREL 1", "PUBREL 4", "PUBREL 2"]
    );
}

// ------------------------------------------------------------------ 4.7 topics

#[test]
fn mqtt_4_7_1_1_wildcards_in_filters_but_not_in_topic_names() {
    let mut raw = connected_server();
    raw.feed(&subscribe_raw(
        0x82,
        1,
        &[(b"a/+/c", 0), (b"a/#", 1), (b"+", 2)],
    ));
    raw.feed(&unsubscribe_raw(0xA2, 2, &[b"a/+/c", b"#"]));
    assert!(raw.engine.is_connected());
    assert_eq!(
        raw.events
            .iter()
            .filter(|e| matches!(e, ServerEvent::Subscribe(_) | ServerEvent::Unsubscribe(_)))
            .count(),
        2
    );
    for name in [&b"a/+/c"[..], b"a/#", b"+"] {
        assert_server_closes(&publish_raw(0x32, name, Some(1), b"x"));
    }
    let mut will = connect_raw(0x06, &fields(&[b"c", b"will/#", b"m"]));
    assert_connect_refused_silently(&will);
    will = connect_raw(0x06, &fields(&[b"c", b"will/+", b"m"]));
    assert_connect_refused_silently(&will);
}

fn server_takes_filter(filter: &[u8]) -> bool {
    let mut raw = connected_server();
    raw.feed(&subscribe_raw(0x82, 1, &[(filter, 0)]));
    let subscribed = raw.engine.is_connected() && raw.surfaced();
    let mut raw = connected_server();
    raw.feed(&unsubscribe_raw(0xA2, 1, &[filter]));
    let unsubscribed = raw.engine.is_connected() && raw.surfaced();
    assert_eq!(subscribed, unsubscribed, "{filter:?}");
    subscribed
}

#[test]
fn mqtt_4_7_1_2_multi_level_wildcard_stands_alone_and_last() {
    for good in ["#", "a/#", "a/b/#", "/#", "+/#"] {
        assert!(server_takes_filter(good.as_bytes()), "{good}");
    }
    for bad in ["a#", "a/#/b", "#/a", "a/b#", "##", "a/#/"] {
        assert!(!server_takes_filter(bad.as_bytes()), "{bad}");
        assert_server_closes(&subscribe_raw(0x82, 1, &[(bad.as_bytes(), 0)]));
    }
}

#[test]
fn mqtt_4_7_1_3_single_level_wildcard_fills_a_whole_level() {
    for good in ["+", "+/tennis/#", "sport/+/player1", "+/+", "/+", "a/+/"] {
        assert!(server_takes_filter(good.as_bytes()), "{good}");
    }
    for bad in ["sport+", "a/+b", "+a/b", "a/b+/c", "++"] {
        assert!(!server_takes_filter(bad.as_bytes()), "{bad}");
        assert_server_closes(&subscribe_raw(0x82, 1, &[(bad.as_bytes(), 0)]));
    }
}

#[test]
fn mqtt_4_7_3_1_empty_topic_names_and_filters_close_the_connection() {
    assert_server_closes(&publish_raw(0x30, b"", None, b"x"));
    assert_server_closes(&subscribe_raw(0x82, 1, &[(b"", 0)]));
    assert_server_closes(&unsubscribe_raw(0xA2, 1, &[b""]));
    assert_client_closes(&publish_raw(0x30, b"", None, b"x"));
    assert_connect_refused_silently(&connect_raw(0x06, &fields(&[b"c", b"", b"m"])));
}

// ------------------------------------------------------------------ 4.8 violations

#[test]
fn mqtt_4_8_0_1_server_closes_on_packets_a_client_never_sends() {
    for bytes in [
        vec![0x20, 0x02, 0x00, 0x00],      // CONNACK
        packet(0x90, &[0x00, 0x01, 0x00]), // SUBACK
        ack_raw(0xB0, 1),                  // UNSUBACK
        vec![0xD0, 0x00],                  // PINGRESP
        connect_raw(0x02, &field(b"c")),   // a second CONNECT
        vec![0x00, 0x00],                  // reserved type 0
        vec![0xF0, 0x00],                  // AUTH is not 3.1.1
    ] {
        assert_server_closes(&bytes);
    }
}

#[test]
fn mqtt_4_8_0_1_client_closes_on_packets_a_server_never_sends() {
    for bytes in [
        connect_raw(0x02, &field(b"c")),
        subscribe_raw(0x82, 1, &[(b"a", 0)]),
        unsubscribe_raw(0xA2, 1, &[b"a"]),
        vec![0xC0, 0x00],             // PINGREQ
        vec![0x20, 0x02, 0x00, 0x00], // a second CONNACK
        vec![0xF0, 0x00],
    ] {
        assert_client_closes(&bytes);
    }
}

// ------------------------------------------------------------------ 7.1 transport

/// A client and a server engine exchanging a whole session with every byte handed over on its
/// own: the engines need an ordered, lossless stream of bytes and nothing more. Returns the
/// payloads each side received and the outcomes the client saw.
fn exchange_byte_by_byte() -> (Vec<Bytes>, Vec<Bytes>, usize) {
    let now = Timestamp::ZERO;
    let mut client = ClientConnection::new(v311_client(), None, now);
    let mut server = ServerConnection::new(ServerConfig::default(), now);
    let mut client_events = Vec::new();
    let mut server_events = Vec::new();
    client.connect(now).unwrap();
    let mut step = |client: &mut ClientConnection, server: &mut ServerConnection| {
        for _ in 0..1000 {
            let mut moved = false;
            while let Some(bytes) = client.poll_transmit(now) {
                moved = true;
                for byte in bytes.iter() {
                    server.handle_bytes(now, &[*byte]);
                }
            }
            while let Some(bytes) = server.poll_transmit(now) {
                moved = true;
                for byte in bytes.iter() {
                    client.handle_bytes(now, &[*byte]);
                }
            }
            while let Some(event) = server.poll_event() {
                moved = true;
                match &event {
                    ServerEvent::ConnectReceived { .. } => {
                        server.accept(now, Accept::default()).unwrap()
                    }
                    ServerEvent::Subscribe(Subscribe {
                        packet_id,
                        subscriptions,
                        ..
                    }) => server
                        .answer_subscribe(
                            *packet_id,
                            vec![ReasonCode::GrantedQoS2; subscriptions.len()],
                            SubAckProperties::default(),
                        )
                        .unwrap(),
                    _ => {}
                }
                server_events.push(event);
            }
            while let Some(event) = client.poll_event() {
                moved = true;
                client_events.push(event);
            }
            if !moved {
                return;
            }
        }
        panic!("the exchange did not settle");
    };
    step(&mut client, &mut server);
    assert!(client.is_connected() && server.is_connected());
    client
        .subscribe(
            vec![Subscription::new(
                TopicFilter::new("down/#").unwrap(),
                QoS::ExactlyOnce,
            )],
            Default::default(),
        )
        .unwrap();
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let payload = vec![qos.bits(); 300]; // a Remaining Length of two bytes
        client.publish(now, publish("up", qos, &payload)).unwrap();
        server
            .deliver(now, publish("down/x", qos, &payload))
            .unwrap();
    }
    step(&mut client, &mut server);
    let up = server_events
        .iter()
        .filter_map(<ServerConnection as Engine>::message)
        .map(|m| m.payload.clone())
        .collect();
    let down = client_events
        .iter()
        .filter_map(<ClientConnection as Engine>::message)
        .map(|m| m.payload.clone())
        .collect();
    let outcomes = client_events
        .iter()
        .filter(|e| {
            matches!(
                e,
                ClientEvent::Subscribed { .. }
                    | ClientEvent::PublishAcknowledged(_)
                    | ClientEvent::PublishCompleted(_)
            )
        })
        .count();
    (up, down, outcomes)
}

fn payloads() -> Vec<Bytes> {
    (0..3u8).map(|qos| Bytes::from(vec![qos; 300])).collect()
}

#[test]
fn mqtt_7_1_1_1_server_engine_needs_only_an_ordered_lossless_byte_stream() {
    let (up, _, _) = exchange_byte_by_byte();
    assert_eq!(up, payloads());
}

#[test]
fn mqtt_7_1_2_1_client_engine_needs_only_an_ordered_lossless_byte_stream() {
    let (_, down, outcomes) = exchange_byte_by_byte();
    assert_eq!(down, payloads());
    assert_eq!(outcomes, 3, "SUBACK, PUBACK and PUBCOMP reached the client");
}
