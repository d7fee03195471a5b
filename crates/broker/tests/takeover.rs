//! Session takeover under contention: many connections sending the same CONNECT at once must
//! leave exactly one of them connected (MQTT-3.1.4-2), as Mosquitto does, every time.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use rallymq_broker::{Broker, BrokerConfig, ListenerKind};
use rallymq_codec::ProtocolVersion;
use support::storm::{CONNECTIONS, answers_ping, storm};

fn run_storms(version: ProtocolVersion, rounds: usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let broker = runtime.block_on(async {
        let mut config = BrokerConfig::without_listeners();
        config.tcp = vec!["127.0.0.1:0".parse().unwrap()];
        config.sys_interval = None;
        Broker::start(config).await.expect("broker starts")
    });
    let addr = broker.local_addr(ListenerKind::Tcp).unwrap();
    for round in 0..rounds {
        let client_id = format!("storm-{}-{round}", rallymq_test_support::run_id());
        let mut open = storm(&[addr], CONNECTIONS, version, &client_id);
        assert_eq!(
            open.len(),
            1,
            "{version:?} round {round}: {} connections of one client id left open",
            open.len()
        );
        assert!(
            answers_ping(&mut open[0]),
            "{version:?} round {round}: the connection left is not served"
        );
        assert!(
            broker.has_session(&client_id),
            "{version:?} round {round}: the winner has no session"
        );
        drop(open);
    }
    runtime.block_on(broker.shutdown(Duration::from_secs(1)));
}

/// The same storms against Mosquitto, the reference: the test expects what it does.
#[test]
fn mqtt_3_1_4_2_mosquitto_leaves_one_connection_too() {
    let mosquitto = rallymq_test_support::Mosquitto::start();
    let addr = SocketAddr::from(([127, 0, 0, 1], mosquitto.tcp));
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let client_id = format!("storm-{}", rallymq_test_support::run_id());
        let mut open = storm(&[addr], CONNECTIONS, version, &client_id);
        assert_eq!(
            open.len(),
            1,
            "Mosquitto, {version:?}: {} left open",
            open.len()
        );
        assert!(
            answers_ping(&mut open[0]),
            "Mosquitto, {version:?}: not served"
        );
    }
}

#[test]
fn mqtt_3_1_4_2_v311_concurrent_connects_of_one_client_id_leave_one_connection() {
    run_storms(ProtocolVersion::V3_1_1, 15);
}

#[test]
fn mqtt_3_1_4_2_v5_concurrent_connects_of_one_client_id_leave_one_connection() {
    run_storms(ProtocolVersion::V5, 15);
}
