//! Arbitrary byte chunks, timeouts and commands fed into a client and a server session engine,
//! each facing a hostile peer: nothing may panic, and the engines' own invariants must hold.
#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use rallymq_codec::{
    Connect, MqttString, Packet, ProtocolVersion, Publish, QoS, ReasonCode, SubAckProperties,
    TopicName,
};
use rallymq_session::{
    Accept, ClientConfig, ClientConnection, ClientEvent, ServerConfig, ServerConnection,
    ServerEvent, Timestamp,
};

#[derive(Arbitrary, Debug)]
enum Action {
    ToServer(Vec<u8>),
    ToClient(Vec<u8>),
    Advance(u16),
    Deliver { qos: u8, payload: Vec<u8> },
    Publish { qos: u8, payload: Vec<u8> },
    ServerTransportClosed,
    ClientTransportClosed,
}

#[derive(Arbitrary, Debug)]
struct Input {
    level: u8,
    valid_connect: bool,
    valid_connack: bool,
    keep_alive: u8,
    actions: Vec<Action>,
}

fn qos(n: u8) -> QoS {
    [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][usize::from(n % 3)]
}

fn message(qos_n: u8, payload: Vec<u8>) -> Publish {
    // "f/t" is a valid topic name, so this cannot fail.
    let mut publish = Publish::new(TopicName::from_static("f/t").expect("valid topic"), payload);
    publish.qos = qos(qos_n);
    publish
}

fuzz_target!(|input: Input| {
    let version = [
        ProtocolVersion::V3_1,
        ProtocolVersion::V3_1_1,
        ProtocolVersion::V5,
    ][usize::from(input.level % 3)];
    let mut now = Timestamp::ZERO;
    let mut connect = Connect::new(version, MqttString::from_static("fuzz").expect("valid id"));
    connect.keep_alive = u16::from(input.keep_alive);
    let config = ServerConfig {
        max_packet_size: 4096,
        receive_maximum: 4,
        ..ServerConfig::default()
    };
    let mut server = ServerConnection::new(config, now);
    let mut client = ClientConnection::new(ClientConfig::new(connect.clone()), None, now);
    let _ = client.connect(now);
    let _ = client.poll_transmit(now);
    if input.valid_connect {
        let bytes = Packet::from(connect)
            .to_bytes(version)
            .expect("valid CONNECT encodes");
        server.handle_bytes(now, &bytes);
    }
    if input.valid_connack {
        let connack = if version.is_v5() {
            &[0x20, 0x03, 0x00, 0x00, 0x00][..]
        } else {
            &[0x20, 0x02, 0x00, 0x00][..]
        };
        client.handle_bytes(now, connack);
    }
    for action in input.actions {
        match action {
            Action::ToServer(bytes) => server.handle_bytes(now, &bytes),
            Action::ToClient(bytes) => client.handle_bytes(now, &bytes),
            Action::Advance(ms) => {
                now = now + Duration::from_millis(u64::from(ms) * 50);
                server.handle_timeout(now);
                client.handle_timeout(now);
            }
            Action::Deliver { qos, payload } => {
                let _ = server.deliver(now, message(qos, payload));
            }
            Action::Publish { qos, payload } => {
                let _ = client.publish(now, message(qos, payload));
            }
            Action::ServerTransportClosed => server.handle_transport_closed(now),
            Action::ClientTransportClosed => client.handle_transport_closed(),
        }
        while server.poll_transmit(now).is_some() {}
        while client.poll_transmit(now).is_some() {}
        while let Some(event) = server.poll_event() {
            match event {
                ServerEvent::ConnectReceived {
                    needs_client_id, ..
                } => {
                    let accept = Accept {
                        assigned_client_id: needs_client_id
                            .then(|| MqttString::from_static("a").expect("valid")),
                        ..Accept::default()
                    };
                    // The connection may have ended since the event (a transport close, a
                    // timeout): then, and only then, accepting fails.
                    if let Err(error) = server.accept(now, accept) {
                        assert!(
                            server.is_closed(),
                            "accept failed on a live connection: {error}"
                        );
                    }
                }
                ServerEvent::Subscribe(subscribe) => {
                    let codes = vec![ReasonCode::GrantedQoS1; subscribe.subscriptions.len()];
                    let _ = server.answer_subscribe(
                        subscribe.packet_id,
                        codes,
                        SubAckProperties::default(),
                    );
                }
                ServerEvent::Unsubscribe(unsubscribe) => {
                    let codes = vec![ReasonCode::Success; unsubscribe.filters.len()];
                    let _ = server.answer_unsubscribe(
                        unsubscribe.packet_id,
                        codes,
                        SubAckProperties::default(),
                    );
                }
                _ => {}
            }
        }
        while let Some(event) = client.poll_event() {
            if let ClientEvent::Closed(_) = event {
                assert!(client.is_closed());
            }
        }
        let (in_flight, _) = server.pending_messages();
        assert!(in_flight <= 64, "the server's window is 64");
    }
    let _ = server.session_state();
    let _ = client.session_state();
});
