//! Connecting, keep-alive, wills and disconnecting, on both sides. Test names carry the
//! normative statement they check (`mqtt_X_Y_Z_N_...`, MQTT 5.0 unless marked `v311`).

mod support;

use std::time::Duration;

use rallymq_codec::{
    Auth, ConnAckProperties, Disconnect, DisconnectProperties, MqttString, Packet, ProtocolVersion,
    QoS, ReasonCode, TopicName, Will, WillProperties,
};
use rallymq_session::{
    Accept, ClientConfig, ClientConnection, ClientEvent, CloseReason, Error, ServerConfig,
    ServerConnection, ServerEvent, Timestamp,
};
use support::{Pair, connect_packet, publish};

const V31: ProtocolVersion = ProtocolVersion::V3_1;
const V311: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;
const T0: Timestamp = Timestamp::ZERO;

fn encode(packet: Packet, version: ProtocolVersion) -> Vec<u8> {
    packet.to_bytes(version).expect("encodable").to_vec()
}

fn connect_bytes(version: ProtocolVersion, client_id: &str, clean: bool) -> Vec<u8> {
    let mut connect = connect_packet(version, client_id);
    connect.clean_start = clean;
    encode(Packet::from(connect), version)
}

fn will(delay: Option<u32>) -> Will {
    Will {
        topic: TopicName::new("clients/1/status").unwrap(),
        payload: "offline".into(),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: WillProperties {
            will_delay_interval: delay,
            ..Default::default()
        }
        .into(),
    }
}

fn pair_with_will(
    version: ProtocolVersion,
    delay: Option<u32>,
    session_expiry: Option<u32>,
) -> Pair {
    let mut connect = connect_packet(version, "with-will");
    connect.will = Some(will(delay));
    connect.properties.session_expiry_interval = session_expiry;
    let mut pair = Pair::new(ClientConfig::new(connect), ServerConfig::default());
    pair.connect();
    assert!(pair.server.is_connected());
    pair
}

fn wills_due(pair: &Pair) -> usize {
    pair.server_events
        .iter()
        .filter(|e| matches!(e, ServerEvent::WillDue(_)))
        .count()
}

fn sent_by_server(server: &mut ServerConnection) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(bytes) = server.poll_transmit(T0) {
        out.extend_from_slice(&bytes);
    }
    out
}

fn server_events(server: &mut ServerConnection) -> Vec<ServerEvent> {
    std::iter::from_fn(|| server.poll_event()).collect()
}

// ------------------------------------------------------------------ CONNECT first and once

#[test]
fn mqtt_3_1_0_1_first_packet_must_be_connect() {
    for version in [V311, V5] {
        let mut server = ServerConnection::new(ServerConfig::default(), T0);
        server.handle_bytes(T0, &[0xC0, 0x00]); // PINGREQ
        assert!(server.is_closed());
        assert!(
            sent_by_server(&mut server).is_empty(),
            "nothing is sent to a peer that did not CONNECT ({version:?})"
        );
        let events = server_events(&mut server);
        assert!(
            matches!(
                events.as_slice(),
                [ServerEvent::Closed(CloseReason::ProtocolViolation { .. })]
            ),
            "{events:?}"
        );
    }
}

#[test]
fn mqtt_3_1_0_2_second_connect_is_a_protocol_error() {
    let mut pair = Pair::connected(V5);
    pair.inject_to_server(&connect_bytes(V5, "client-1", true));
    assert!(pair.server.is_closed());
    pair.assert_server_disconnected_with(ReasonCode::ProtocolError);
}

#[test]
fn mqtt_3_1_0_2_v311_second_connect_closes() {
    let mut pair = Pair::connected(V311);
    pair.inject_to_server(&connect_bytes(V311, "client-1", true));
    assert!(pair.server.is_closed());
    assert!(matches!(
        pair.server_close(),
        Some(CloseReason::ProtocolViolation { .. })
    ));
}

/// "It is a Protocol Error to include Authentication Data if there is no Authentication
/// Method" (MQTT 5 §3.1.2.11.10): such a CONNECT is not surfaced, and the connection closes as
/// for any invalid CONNECT (MQTT-3.1.4-1), after CONNACK 0x82 (Protocol Error) says why.
#[test]
fn mqtt_3_1_2_11_10_authentication_data_without_method_closes_the_connection() {
    // CONNECT v5, client id "c", with Authentication Data (0x16) "x" and no method.
    let connect = [
        0x10, 0x12, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 4, 0x16, 0, 1, b'x', 0, 1, b'c',
    ];
    let mut server = ServerConnection::new(ServerConfig::default(), T0);
    server.handle_bytes(T0, &connect);
    assert!(server.is_closed());
    assert_eq!(sent_by_server(&mut server), [0x20, 0x03, 0x00, 0x82, 0x00]);
    let events = server_events(&mut server);
    assert!(
        matches!(
            events.as_slice(),
            [ServerEvent::Closed(CloseReason::ProtocolViolation {
                reason_code: ReasonCode::ProtocolError,
                ..
            })]
        ),
        "{events:?}"
    );
}

#[test]
fn server_closes_when_no_connect_arrives_in_time() {
    let mut server = ServerConnection::new(ServerConfig::default(), T0);
    assert_eq!(server.poll_timeout(), Some(T0 + Duration::from_secs(10)));
    server.handle_timeout(T0 + Duration::from_millis(9_999));
    assert!(!server.is_closed());
    server.handle_timeout(T0 + Duration::from_secs(10));
    assert!(server.is_closed());
    assert_eq!(
        server_events(&mut server),
        vec![ServerEvent::Closed(CloseReason::ConnectTimeout)]
    );
}

// ------------------------------------------------------------------ protocol levels

#[test]
fn mqtt_3_1_2_2_v311_unsupported_level_gets_connack_0x01_and_close() {
    // CONNECT "MQTT" level 6.
    let connect = [
        0x10, 0x0D, 0, 4, b'M', b'Q', b'T', b'T', 6, 0x02, 0, 60, 0, 1, b'c',
    ];
    let mut server = ServerConnection::new(ServerConfig::default(), T0);
    server.handle_bytes(T0, &connect);
    assert_eq!(sent_by_server(&mut server), vec![0x20, 0x02, 0x00, 0x01]);
    assert!(server.is_closed());
    assert_eq!(
        server_events(&mut server),
        vec![ServerEvent::Closed(CloseReason::Refused(
            ReasonCode::UnsupportedProtocolVersion
        ))]
    );
}

#[test]
fn mqtt_3_1_2_1_v311_wrong_protocol_name_is_refused() {
    // "MQTT" with level 3 (3.1 is "MQIsdp"): the name does not fit the level.
    let connect = [
        0x10, 0x0D, 0, 4, b'M', b'Q', b'T', b'T', 3, 0x02, 0, 60, 0, 1, b'c',
    ];
    let mut server = ServerConnection::new(ServerConfig::default(), T0);
    server.handle_bytes(T0, &connect);
    assert!(server.is_closed());
    assert!(!server.is_connected());
}

#[test]
fn all_three_versions_connect() {
    for version in [V31, V311, V5] {
        let pair = Pair::connected(version);
        assert!(pair.client.is_connected(), "{version:?}");
        assert_eq!(pair.server.version(), Some(version));
    }
}

// ------------------------------------------------------------------ client identifiers

#[test]
fn mqtt_3_1_3_8_v311_empty_client_id_without_clean_session_gets_0x02() {
    let mut server = ServerConnection::new(ServerConfig::default(), T0);
    server.handle_bytes(T0, &connect_bytes(V311, "", false));
    assert_eq!(sent_by_server(&mut server), vec![0x20, 0x02, 0x00, 0x02]);
    assert!(server.is_closed());
}

#[test]
fn mqtt_3_1_3_6_v311_empty_client_id_with_clean_session_is_assigned() {
    let mut server = ServerConnection::new(ServerConfig::default(), T0);
    server.handle_bytes(T0, &connect_bytes(V311, "", true));
    let events = server_events(&mut server);
    assert!(matches!(
        events.as_slice(),
        [ServerEvent::ConnectReceived {
            needs_client_id: true,
            ..
        }]
    ));
    assert_eq!(
        server.accept(T0, Accept::default()),
        Err(Error::InvalidState(
            "the client sent an empty client id: assign one"
        ))
    );
    let accept = Accept {
        assigned_client_id: Some(MqttString::from_static("auto-1").unwrap()),
        ..Accept::default()
    };
    server.accept(T0, accept).unwrap();
    assert_eq!(sent_by_server(&mut server), vec![0x20, 0x02, 0x00, 0x00]);
}

#[test]
fn v31_empty_client_id_is_rejected() {
    let mut server = ServerConnection::new(ServerConfig::default(), T0);
    server.handle_bytes(T0, &connect_bytes(V31, "", true));
    assert_eq!(sent_by_server(&mut server), vec![0x20, 0x02, 0x00, 0x02]);
    assert!(server.is_closed());
}

#[test]
fn mqtt_3_1_3_7_assigned_client_identifier_is_returned_in_connack() {
    let mut pair = Pair::new(
        ClientConfig::new(connect_packet(V5, "")),
        ServerConfig::default(),
    );
    pair.connect();
    let Some(ClientEvent::Connected { connack, .. }) = pair.client_events.first() else {
        panic!("not connected")
    };
    assert_eq!(
        connack
            .properties
            .assigned_client_identifier
            .as_ref()
            .map(|s| s.as_str()),
        Some("assigned-1")
    );
}

// ------------------------------------------------------------------ CONNACK and sessions

#[test]
fn mqtt_3_1_4_6_refused_connect_processes_nothing_after_it() {
    let mut server = ServerConnection::new(ServerConfig::default(), T0);
    let mut bytes = connect_bytes(V5, "c", true);
    bytes.extend(encode(
        Packet::Publish(publish("a/b", QoS::AtMostOnce, b"x")),
        V5,
    ));
    server.handle_bytes(T0, &bytes);
    assert!(matches!(
        server_events(&mut server).as_slice(),
        [ServerEvent::ConnectReceived { .. }]
    ));
    server
        .refuse(ReasonCode::NotAuthorized, ConnAckProperties::default())
        .unwrap();
    let events = server_events(&mut server);
    assert_eq!(
        events,
        vec![ServerEvent::Closed(CloseReason::Refused(
            ReasonCode::NotAuthorized
        ))]
    );
    let sent = sent_by_server(&mut server);
    assert_eq!(&sent[..4], &[0x20, 0x03, 0x00, 0x87]);
}

#[test]
fn mqtt_3_2_2_7_client_closes_after_a_failure_connack() {
    let mut client = ClientConnection::new(ClientConfig::new(connect_packet(V5, "c")), None, T0);
    client.connect(T0).unwrap();
    client.handle_bytes(T0, &[0x20, 0x03, 0x00, 0x86, 0x00]);
    assert!(client.is_closed());
    assert_eq!(
        client.poll_event(),
        Some(ClientEvent::Closed(CloseReason::Refused(
            ReasonCode::BadUserNameOrPassword
        )))
    );
}

#[test]
fn packets_sent_before_connack_are_processed_after_accept() {
    let mut server = ServerConnection::new(ServerConfig::default(), T0);
    let mut bytes = connect_bytes(V311, "c", true);
    bytes.extend(encode(
        Packet::Publish(publish("a/b", QoS::AtMostOnce, b"early")),
        V311,
    ));
    server.handle_bytes(T0, &bytes);
    assert!(matches!(
        server_events(&mut server).as_slice(),
        [ServerEvent::ConnectReceived { .. }]
    ));
    server.accept(T0, Accept::default()).unwrap();
    let events = server_events(&mut server);
    assert!(
        matches!(&events[..], [ServerEvent::Message(m)] if m.publish.payload == "early"),
        "{events:?}"
    );
}

#[test]
fn mqtt_3_2_2_2_clean_start_never_resumes_a_session() {
    for version in [V311, V5] {
        let mut pair = Pair::connected(version);
        pair.server_session = Some(Default::default());
        pair.reconnect(true);
        let Some(ClientEvent::Connected {
            session_present, ..
        }) = pair
            .client_events
            .iter()
            .rev()
            .find(|e| matches!(e, ClientEvent::Connected { .. }))
        else {
            panic!("not reconnected")
        };
        assert!(!session_present, "{version:?}");
    }
}

#[test]
fn mqtt_3_2_2_4_client_without_session_state_closes_on_session_present() {
    let mut connect = connect_packet(V5, "c");
    connect.clean_start = false;
    let mut client = ClientConnection::new(ClientConfig::new(connect), None, T0);
    client.connect(T0).unwrap();
    client.handle_bytes(T0, &[0x20, 0x03, 0x01, 0x00, 0x00]);
    assert!(client.is_closed());
    assert!(matches!(
        client.poll_event(),
        Some(ClientEvent::Closed(CloseReason::ProtocolViolation { .. }))
    ));
}

#[test]
fn mqtt_3_2_2_1_v311_session_present_after_clean_session_is_refused_by_the_client() {
    let mut client = ClientConnection::new(ClientConfig::new(connect_packet(V311, "c")), None, T0);
    client.connect(T0).unwrap();
    client.handle_bytes(T0, &[0x20, 0x02, 0x01, 0x00]);
    assert!(client.is_closed());
}

#[test]
fn mqtt_3_2_0_2_server_sends_only_auth_before_connack() {
    let mut server = ServerConnection::new(ServerConfig::default(), T0);
    // AUTH goes only to a client that gave an Authentication Method (MQTT-4.12.0-6), and
    // continues the authentication before CONNACK (MQTT-4.12.0-2).
    let mut connect = connect_packet(V5, "c");
    connect.properties.authentication_method = Some(MqttString::from_static("M").unwrap());
    server.handle_bytes(T0, &encode(Packet::from(connect), V5));
    let _ = server_events(&mut server);
    assert_eq!(
        server.deliver(T0, publish("a", QoS::AtMostOnce, b"x")),
        Err(Error::NotConnected),
        "no PUBLISH before CONNACK"
    );
    server
        .send_auth(Auth {
            reason_code: ReasonCode::ContinueAuthentication,
            ..Auth::default()
        })
        .unwrap();
    let sent = sent_by_server(&mut server);
    assert_eq!(sent[0] >> 4, 15, "AUTH may go before CONNACK");
}

/// A client whose CONNECT had no Authentication Method must not send AUTH (MQTT-4.12.0-7): the
/// server does not hand it on, and closes with DISCONNECT 0x82 (Protocol Error).
#[test]
fn mqtt_4_12_0_7_auth_without_authentication_method_is_a_protocol_error() {
    let mut pair = Pair::connected(V5);
    pair.inject_to_server(&encode(Packet::Auth(Auth::default()), V5));
    assert!(
        !pair
            .server_events
            .iter()
            .any(|e| matches!(e, ServerEvent::Auth(_))),
        "AUTH handed on"
    );
    pair.assert_server_disconnected_with(ReasonCode::ProtocolError);
    // Before CONNACK too: the connection closes (no DISCONNECT before CONNACK).
    let mut server = ServerConnection::new(ServerConfig::default(), T0);
    let mut bytes = connect_bytes(V5, "c", true);
    bytes.extend_from_slice(&encode(Packet::Auth(Auth::default()), V5));
    server.handle_bytes(T0, &bytes);
    assert!(server.is_closed());
    assert!(
        !server_events(&mut server)
            .iter()
            .any(|e| matches!(e, ServerEvent::Auth(_)))
    );
    assert!(sent_by_server(&mut server).is_empty());
}

#[test]
fn auth_exchange_before_accept_is_handed_to_both_callers() {
    let mut connect = connect_packet(V5, "c");
    connect.properties.authentication_method =
        Some(MqttString::from_static("SCRAM-SHA-1").unwrap());
    let mut client = ClientConnection::new(ClientConfig::new(connect), None, T0);
    let mut server = ServerConnection::new(ServerConfig::default(), T0);
    client.connect(T0).unwrap();
    server.handle_bytes(T0, &client.poll_transmit(T0).unwrap());
    assert!(matches!(
        server.poll_event(),
        Some(ServerEvent::ConnectReceived { .. })
    ));
    let mut challenge = Auth {
        reason_code: ReasonCode::ContinueAuthentication,
        ..Auth::default()
    };
    challenge.properties.authentication_method =
        Some(MqttString::from_static("SCRAM-SHA-1").unwrap());
    server.send_auth(challenge.clone()).unwrap();
    client.handle_bytes(T0, &server.poll_transmit(T0).unwrap());
    assert_eq!(
        client.poll_event(),
        Some(ClientEvent::Auth(challenge.clone()))
    );
    client.send_auth(challenge.clone()).unwrap();
    server.handle_bytes(T0, &client.poll_transmit(T0).unwrap());
    assert_eq!(server.poll_event(), Some(ServerEvent::Auth(challenge)));
    server.accept(T0, Accept::default()).unwrap();
    client.handle_bytes(T0, &server.poll_transmit(T0).unwrap());
    assert!(client.is_connected());
}

// ------------------------------------------------------------------ keep alive

fn keep_alive_pair(version: ProtocolVersion, keep_alive: u16) -> Pair {
    let mut connect = connect_packet(version, "ka");
    connect.keep_alive = keep_alive;
    let mut pair = Pair::new(ClientConfig::new(connect), ServerConfig::default());
    pair.connect();
    pair
}

#[test]
fn mqtt_3_1_2_22_server_closes_after_one_and_a_half_keep_alives_of_silence() {
    for version in [V311, V5] {
        let mut server = ServerConnection::new(ServerConfig::default(), T0);
        let mut connect = connect_packet(version, "ka");
        connect.keep_alive = 10;
        server.handle_bytes(T0, &encode(Packet::from(connect), version));
        let _ = server_events(&mut server);
        server.accept(T0, Accept::default()).unwrap();
        let _ = sent_by_server(&mut server);
        assert_eq!(server.poll_timeout(), Some(T0 + Duration::from_secs(15)));
        server.handle_timeout(T0 + Duration::from_millis(14_999));
        assert!(server.is_connected(), "{version:?}: not before 1.5x");
        server.handle_timeout(T0 + Duration::from_secs(15));
        assert!(server.is_closed(), "{version:?}: at 1.5x");
        assert_eq!(
            server_events(&mut server),
            vec![ServerEvent::Closed(CloseReason::KeepAliveTimeout)]
        );
        let sent = sent_by_server(&mut server);
        if version.is_v5() {
            assert_eq!(
                sent,
                vec![0xE0, 0x01, 0x8D],
                "DISCONNECT 0x8D Keep Alive timeout"
            );
        } else {
            assert!(sent.is_empty());
        }
    }
}

#[test]
fn mqtt_3_1_2_24_v311_any_packet_resets_the_keep_alive_timer() {
    let mut server = ServerConnection::new(ServerConfig::default(), T0);
    let mut connect = connect_packet(V311, "ka");
    connect.keep_alive = 4;
    server.handle_bytes(T0, &encode(Packet::from(connect), V311));
    let _ = server_events(&mut server);
    server.accept(T0, Accept::default()).unwrap();
    assert_eq!(sent_by_server(&mut server), [0x20, 0x02, 0x00, 0x00]);
    let t5 = T0 + Duration::from_secs(5);
    server.handle_bytes(t5, &[0xC0, 0x00]);
    assert_eq!(
        sent_by_server(&mut server),
        [0xD0, 0x00],
        "MQTT-3.12.4-1: PINGRESP answers PINGREQ"
    );
    assert_eq!(server.poll_timeout(), Some(t5 + Duration::from_secs(6)));
    server.handle_timeout(T0 + Duration::from_secs(10));
    assert!(server.is_connected());
}

#[test]
fn mqtt_3_1_2_20_client_sends_pingreq_when_idle_and_the_connection_lives() {
    let mut pair = keep_alive_pair(V5, 30);
    pair.advance(Duration::from_secs(600));
    assert!(pair.client.is_connected() && pair.server.is_connected());
    let pings = pair
        .packets_to_server(V5)
        .iter()
        .filter(|p| **p == Packet::PingReq)
        .count();
    assert!(
        (19..=21).contains(&pings),
        "one PINGREQ per 30 s idle, got {pings}"
    );
    let pongs = pair
        .packets_to_client(V5)
        .iter()
        .filter(|p| **p == Packet::PingResp)
        .count();
    assert_eq!(pings, pongs, "MQTT-3.12.4-1");
}

#[test]
fn client_closes_when_pingresp_does_not_come() {
    let mut connect = connect_packet(V311, "ka");
    connect.keep_alive = 10;
    let mut client = ClientConnection::new(ClientConfig::new(connect), None, T0);
    client.connect(T0).unwrap();
    let _ = client.poll_transmit(T0);
    client.handle_bytes(T0, &[0x20, 0x02, 0x00, 0x00]);
    assert!(client.is_connected());
    let t10 = T0 + Duration::from_secs(10);
    assert_eq!(client.poll_timeout(), Some(t10));
    client.handle_timeout(t10);
    assert_eq!(
        client.poll_transmit(t10).as_deref(),
        Some(&[0xC0, 0x00][..])
    );
    let deadline = client.poll_timeout().expect("waiting for PINGRESP");
    client.handle_timeout(deadline);
    assert!(client.is_closed());
    assert!(matches!(
        client.poll_event(),
        Some(ClientEvent::Connected { .. })
    ));
    assert_eq!(
        client.poll_event(),
        Some(ClientEvent::Closed(CloseReason::KeepAliveTimeout))
    );
}

#[test]
fn mqtt_3_2_2_21_client_uses_server_keep_alive() {
    let mut connect = connect_packet(V5, "ka");
    connect.keep_alive = 0;
    let config = ServerConfig {
        max_keep_alive: Some(20),
        ..ServerConfig::default()
    };
    let mut pair = Pair::new(ClientConfig::new(connect), config);
    pair.connect();
    assert_eq!(pair.server.keep_alive(), Duration::from_secs(20));
    let Some(ClientEvent::Connected { connack, .. }) = pair.client_events.first() else {
        panic!()
    };
    assert_eq!(connack.properties.server_keep_alive, Some(20));
    pair.advance(Duration::from_secs(100));
    let pings = pair
        .packets_to_server(V5)
        .iter()
        .filter(|p| **p == Packet::PingReq)
        .count();
    assert_eq!(
        pings, 5,
        "a PINGREQ every 20 s though the client asked for none"
    );
    assert!(pair.server.is_connected());
}

/// A server with a keep alive maximum of 60 s, fed a CONNECT asking for `keep_alive`: what it
/// sends back, and the keep alive it then enforces (`None` when it refused).
fn max_keep_alive_outcome(version: ProtocolVersion, keep_alive: u16) -> (Packet, Option<u16>) {
    let config = ServerConfig {
        max_keep_alive: Some(60),
        ..ServerConfig::default()
    };
    let mut server = ServerConnection::new(config, T0);
    let mut connect = connect_packet(version, "ka");
    connect.keep_alive = keep_alive;
    server.handle_bytes(T0, &encode(Packet::from(connect), version));
    if let [ServerEvent::ConnectReceived { .. }] = server_events(&mut server).as_slice() {
        server.accept(T0, Accept::default()).unwrap();
    }
    let sent = sent_by_server(&mut server);
    let mut decoder = rallymq_codec::Decoder::with_version(version, Default::default());
    let connack = decoder
        .decode(&mut bytes::BytesMut::from(&sent[..]))
        .expect("a valid packet")
        .expect("a whole CONNACK");
    let enforced = server
        .is_connected()
        .then(|| server.keep_alive().as_secs() as u16);
    (connack, enforced)
}

#[test]
fn max_keep_alive_v5_over_it_or_none_gets_server_keep_alive() {
    for (asked, told, enforced) in [
        (0, Some(60), 60),
        (30, None, 30),
        (60, None, 60),
        (61, Some(60), 60),
        (65535, Some(60), 60),
    ] {
        let (connack, kept) = max_keep_alive_outcome(V5, asked);
        let Packet::ConnAck(connack) = connack else {
            panic!("not a CONNACK: {connack:?}");
        };
        assert_eq!(connack.reason_code, ReasonCode::Success, "asked {asked}");
        assert_eq!(connack.properties.server_keep_alive, told, "asked {asked}");
        assert_eq!(kept, Some(enforced), "asked {asked}");
    }
}

/// MQTT 3.1 and 3.1.1 have no Server Keep Alive: a keep alive over the maximum, or none, is
/// refused with return code 0x02 (identifier rejected), as Mosquitto 2.0.12 and later do.
#[test]
fn max_keep_alive_v311_and_v31_over_it_or_none_refused_with_0x02() {
    for version in [V31, V311] {
        for (asked, accepted) in [
            (0, false),
            (30, true),
            (60, true),
            (61, false),
            (65535, false),
        ] {
            let (connack, kept) = max_keep_alive_outcome(version, asked);
            let Packet::ConnAck(connack) = connack else {
                panic!("not a CONNACK: {connack:?}");
            };
            let expected = if accepted {
                ReasonCode::Success
            } else {
                ReasonCode::ClientIdentifierNotValid
            };
            assert_eq!(connack.reason_code, expected, "{version:?} asked {asked}");
            assert_eq!(kept, accepted.then_some(asked), "{version:?} asked {asked}");
        }
    }
    // The refusal is on the wire as 3.1.1's return code 2, and the connection ends.
    let mut server = ServerConnection::new(
        ServerConfig {
            max_keep_alive: Some(60),
            ..ServerConfig::default()
        },
        T0,
    );
    let mut connect = connect_packet(V311, "ka");
    connect.keep_alive = 61;
    server.handle_bytes(T0, &encode(Packet::from(connect), V311));
    assert_eq!(sent_by_server(&mut server), [0x20, 0x02, 0x00, 0x02]);
    assert!(server.is_closed());
    assert_eq!(
        server_events(&mut server),
        [ServerEvent::Closed(CloseReason::Refused(
            ReasonCode::ClientIdentifierNotValid
        ))]
    );
}

#[test]
fn without_max_keep_alive_any_keep_alive_is_accepted() {
    for version in [V31, V311, V5] {
        for keep_alive in [0, 65535] {
            let mut server = ServerConnection::new(ServerConfig::default(), T0);
            let mut connect = connect_packet(version, "ka");
            connect.keep_alive = keep_alive;
            server.handle_bytes(T0, &encode(Packet::from(connect), version));
            let _ = server_events(&mut server);
            server.accept(T0, Accept::default()).unwrap();
            assert!(server.is_connected(), "{version:?} {keep_alive}");
            assert_eq!(server.keep_alive().as_secs(), u64::from(keep_alive));
        }
    }
}

// ------------------------------------------------------------------ wills

#[test]
fn mqtt_3_1_2_8_v311_will_published_when_connection_drops() {
    let mut pair = pair_with_will(V311, None, None);
    pair.drop_link();
    let last = pair.server_events.last().cloned();
    assert_eq!(last, Some(ServerEvent::WillDue(will(None))));
}

#[test]
fn mqtt_3_14_4_3_v311_will_discarded_on_disconnect() {
    let mut pair = pair_with_will(V311, None, None);
    pair.client.disconnect(Disconnect::new(ReasonCode::Success));
    pair.drive();
    assert!(pair.server.is_closed());
    assert_eq!(wills_due(&pair), 0);
}

#[test]
fn mqtt_3_14_4_3_will_discarded_on_disconnect_0x00_but_sent_on_0x04() {
    let mut pair = pair_with_will(V5, None, None);
    pair.client.disconnect(Disconnect::new(ReasonCode::Success));
    pair.drive();
    assert_eq!(wills_due(&pair), 0);

    let mut pair = pair_with_will(V5, None, None);
    pair.client
        .disconnect(Disconnect::new(ReasonCode::DisconnectWithWillMessage));
    pair.drive();
    assert_eq!(wills_due(&pair), 1);
}

#[test]
fn will_published_on_protocol_violation_and_keep_alive_timeout() {
    let mut pair = pair_with_will(V5, None, None);
    pair.inject_to_server(&[0x20, 0x02, 0x00, 0x00]); // a CONNACK from a client
    assert_eq!(wills_due(&pair), 1);
}

#[test]
fn will_delay_postpones_the_will_until_the_delay_or_the_session_end() {
    let mut pair = pair_with_will(V5, Some(30), Some(3600));
    pair.drop_link();
    assert_eq!(wills_due(&pair), 0);
    let closed_at = pair.now;
    assert_eq!(
        pair.server.poll_timeout(),
        Some(closed_at + Duration::from_secs(30))
    );
    pair.server
        .handle_timeout(closed_at + Duration::from_secs(29));
    assert!(pair.server.poll_event().is_none());
    pair.server
        .handle_timeout(closed_at + Duration::from_secs(30));
    assert_eq!(
        pair.server.poll_event(),
        Some(ServerEvent::WillDue(will(Some(30))))
    );

    // A session that ends sooner than the delay brings the will forward.
    let mut pair = pair_with_will(V5, Some(30), Some(5));
    pair.drop_link();
    let closed_at = pair.now;
    assert_eq!(
        pair.server.poll_timeout(),
        Some(closed_at + Duration::from_secs(5))
    );

    // A resumed session cancels it.
    let mut pair = pair_with_will(V5, Some(30), Some(3600));
    pair.drop_link();
    pair.server.cancel_will();
    assert_eq!(pair.server.poll_timeout(), None);
}

#[test]
fn refused_connection_never_publishes_its_will() {
    let mut connect = connect_packet(V5, "c");
    connect.will = Some(will(None));
    let mut server = ServerConnection::new(ServerConfig::default(), T0);
    server.handle_bytes(T0, &encode(Packet::from(connect), V5));
    let _ = server_events(&mut server);
    server
        .refuse(ReasonCode::NotAuthorized, ConnAckProperties::default())
        .unwrap();
    assert_eq!(
        server_events(&mut server),
        vec![ServerEvent::Closed(CloseReason::Refused(
            ReasonCode::NotAuthorized
        ))]
    );
}

// ------------------------------------------------------------------ disconnect

#[test]
fn session_expiry_cannot_be_given_at_disconnect_after_zero_at_connect() {
    let mut pair = Pair::connected(V5);
    let mut disconnect = Disconnect::new(ReasonCode::Success);
    disconnect.properties.session_expiry_interval = Some(60);
    pair.inject_to_server(&encode(Packet::Disconnect(disconnect), V5));
    assert!(matches!(
        pair.server_close(),
        Some(CloseReason::ProtocolViolation {
            reason_code: ReasonCode::ProtocolError,
            ..
        })
    ));
}

#[test]
fn session_expiry_changed_at_disconnect_is_kept() {
    let mut connect = connect_packet(V5, "c");
    connect.properties.session_expiry_interval = Some(60);
    let mut pair = Pair::new(ClientConfig::new(connect), ServerConfig::default());
    pair.connect();
    let mut disconnect = Disconnect::new(ReasonCode::Success);
    disconnect.properties.session_expiry_interval = Some(0);
    pair.client.disconnect(disconnect);
    pair.drive();
    assert_eq!(pair.server.session_state().session_expiry_interval, 0);
    assert_eq!(pair.client.session_state().session_expiry_interval, 0);
}

#[test]
fn server_disconnect_tells_v5_clients_why() {
    let mut pair = Pair::connected(V5);
    pair.server.disconnect(
        pair.now,
        ReasonCode::SessionTakenOver,
        DisconnectProperties::default(),
    );
    pair.drive();
    assert!(matches!(
        pair.client_close(),
        Some(CloseReason::PeerDisconnected {
            reason_code: ReasonCode::SessionTakenOver,
            ..
        })
    ));
    assert_eq!(
        pair.server_close(),
        Some(&CloseReason::LocalDisconnect(ReasonCode::SessionTakenOver))
    );
}

#[test]
fn mqtt_4_13_1_1_malformed_packet_closes_with_0x81() {
    let mut pair = Pair::connected(V5);
    pair.inject_to_server(&[0x30, 0x02, 0x00, 0x05]); // a topic length past the packet's end
    pair.assert_server_disconnected_with(ReasonCode::MalformedPacket);
}

#[test]
fn oversize_packet_is_refused_from_its_header_with_0x95() {
    let config = ServerConfig {
        max_packet_size: 100,
        ..ServerConfig::default()
    };
    let mut pair = Pair::new(ClientConfig::new(connect_packet(V5, "c")), config);
    pair.connect();
    let Some(ClientEvent::Connected { connack, .. }) = pair.client_events.first() else {
        panic!()
    };
    assert_eq!(
        connack.properties.maximum_packet_size.map(|m| m.get()),
        Some(100)
    );
    // Only the fixed header of a 1,000-byte PUBLISH: refused before its body arrives.
    pair.inject_to_server(&[0x30, 0xE8, 0x07]);
    assert!(matches!(
        pair.server_close(),
        Some(CloseReason::ProtocolViolation {
            reason_code: ReasonCode::PacketTooLarge,
            ..
        })
    ));
}

#[test]
fn commands_after_close_fail_cleanly() {
    let mut pair = Pair::connected(V5);
    pair.drop_link();
    assert_eq!(
        pair.client
            .publish(pair.now, publish("a", QoS::AtMostOnce, b"x")),
        Err(Error::Closed)
    );
    assert_eq!(
        pair.server
            .deliver(pair.now, publish("a", QoS::AtMostOnce, b"x")),
        Err(Error::Closed)
    );
    assert_eq!(
        pair.client.subscribe(vec![], Default::default()),
        Err(Error::Closed)
    );
}

#[test]
fn accept_after_the_connection_ended_fails_with_closed() {
    let mut server = ServerConnection::new(ServerConfig::default(), T0);
    server.handle_bytes(T0, &connect_bytes(V5, "c", true));
    server.handle_transport_closed(T0);
    let events = server_events(&mut server);
    assert!(matches!(
        events.as_slice(),
        [ServerEvent::ConnectReceived { .. }, ServerEvent::Closed(_)]
    ));
    assert_eq!(server.accept(T0, Accept::default()), Err(Error::Closed));
}

#[test]
fn mqtt_3_1_3_9_a_delayed_will_goes_when_the_session_ends_first() {
    let mut pair = pair_with_will(V5, Some(30), Some(3600));
    pair.drop_link();
    assert_eq!(wills_due(&pair), 0, "still within its delay");
    pair.server.end_session();
    assert_eq!(
        pair.server.poll_event(),
        Some(ServerEvent::WillDue(will(Some(30))))
    );
    assert_eq!(pair.server.poll_timeout(), None, "nothing left to wait for");
    pair.server.end_session();
    assert_eq!(pair.server.poll_event(), None, "published once");
}

/// A driver that handles events before it writes (and stops at `Closed`) still finds the
/// DISCONNECT of `disconnect` waiting in `poll_transmit`: the engine keeps the last bytes
/// after `Closed`, as the crate docs say, whichever output is drained first.
#[test]
fn client_disconnect_is_there_to_write_after_closed() {
    for version in [V311, V5] {
        let mut pair = Pair::connected(version);
        pair.client.disconnect(Disconnect::new(ReasonCode::Success));
        assert_eq!(
            pair.client.poll_event(),
            Some(ClientEvent::Closed(CloseReason::LocalDisconnect(
                ReasonCode::Success
            )))
        );
        let last = pair
            .client
            .poll_transmit(pair.now)
            .expect("DISCONNECT still to write after Closed");
        let packets = support::decode_all(std::slice::from_ref(&last), version);
        assert!(
            matches!(&packets[..], [Packet::Disconnect(d)] if d.reason_code == ReasonCode::Success),
            "{version:?}: {packets:?}"
        );
        // Written, the server sees a clean end: no will.
        pair.server.handle_bytes(pair.now, &last);
        assert!(server_events(&mut pair.server).iter().any(|event| matches!(
            event,
            ServerEvent::Closed(reason) if !reason.publishes_will()
        )));
    }
}

/// The server side keeps its last packet after `Closed` the same way.
#[test]
fn server_disconnect_is_there_to_write_after_closed() {
    let mut pair = Pair::connected(V5);
    pair.server.disconnect(
        pair.now,
        ReasonCode::ServerShuttingDown,
        DisconnectProperties::default(),
    );
    assert!(
        server_events(&mut pair.server)
            .iter()
            .any(|event| matches!(event, ServerEvent::Closed(_)))
    );
    let packets = support::decode_all(&[pair.server.poll_transmit(pair.now).unwrap()], V5);
    assert!(
        matches!(&packets[..], [Packet::Disconnect(d)] if d.reason_code == ReasonCode::ServerShuttingDown)
    );
}

/// A packet begun must arrive whole within the packet timeout, though each byte it trickles
/// in keeps the keep alive satisfied; a packet that arrives whole restarts the count.
#[test]
fn a_packet_trickled_past_the_packet_timeout_closes_the_connection() {
    for version in [V311, V5] {
        let config = ServerConfig {
            packet_timeout: Duration::from_secs(5),
            ..ServerConfig::default()
        };
        let mut pair = Pair::new(
            ClientConfig::new(connect_packet(version, "trickle")),
            config,
        );
        pair.connect();
        let bytes = encode(
            Packet::Publish(publish("t/1", QoS::AtMostOnce, b"abc")),
            version,
        );
        // Whole packets a second apart for a while: no timeout.
        for _ in 0..10 {
            pair.now = pair.now + Duration::from_secs(1);
            pair.server.handle_bytes(pair.now, &bytes);
            pair.server.handle_timeout(pair.now);
            assert!(!pair.server.is_closed(), "{version:?}");
        }
        // Then the next one a byte a second: closed once 5 s have passed since the last whole.
        let mut closed_after = None;
        for (n, byte) in bytes.iter().take(bytes.len() - 1).enumerate() {
            pair.now = pair.now + Duration::from_secs(1);
            pair.server.handle_bytes(pair.now, &[*byte]);
            if let Some(deadline) = pair.server.poll_timeout() {
                if pair.now >= deadline {
                    pair.server.handle_timeout(pair.now);
                }
            }
            if pair.server.is_closed() {
                closed_after = Some(n + 1);
                break;
            }
        }
        assert_eq!(closed_after, Some(5), "{version:?}");
        assert!(
            server_events(&mut pair.server)
                .iter()
                .any(|event| matches!(event, ServerEvent::Closed(CloseReason::PacketTimeout)))
        );
    }
}
