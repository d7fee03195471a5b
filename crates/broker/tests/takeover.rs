//! Session takeover under contention: many connections sending the same CONNECT at once must
//! leave exactly one of them connected (MQTT-3.1.4-2), as Mosquitto does, every time.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rallymq_broker::{Broker, BrokerConfig, ListenerKind};
use rallymq_codec::{Connect, MqttString, Packet, ProtocolVersion};

/// Connections per storm, and the threads that send their CONNECTs.
const CONNECTIONS: usize = 200;
const THREADS: usize = 8;

/// How long the losers of one storm may take to be closed.
const SETTLE: Duration = Duration::from_secs(10);

fn connect_bytes(version: ProtocolVersion, client_id: &str) -> Vec<u8> {
    let mut connect = Connect::new(version, MqttString::new(client_id).unwrap());
    connect.keep_alive = 60;
    connect.clean_start = false;
    if version.is_v5() {
        connect.properties.session_expiry_interval = Some(300);
    }
    let mut buf = BytesMut::new();
    Packet::from(connect).encode(version, &mut buf).unwrap();
    buf.to_vec()
}

/// Whether the broker has closed `stream`: reads (discarding CONNACK, DISCONNECT) until the
/// end of the stream or until nothing comes for `quiet`.
fn closed_by_broker(stream: &mut TcpStream, quiet: Duration) -> bool {
    stream.set_read_timeout(Some(quiet)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// Whether the connection still answers PINGREQ with PINGRESP.
fn answers_ping(stream: &mut TcpStream) -> bool {
    if stream.write_all(&[0xC0, 0x00]).is_err() {
        return false;
    }
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 2];
    stream.read_exact(&mut buf).is_ok() && buf == [0xD0, 0x00]
}

/// Opens `CONNECTIONS` sockets, sends the same CONNECT on all of them from `THREADS` threads at
/// once, and returns the sockets still open once the broker has settled.
fn storm(addr: SocketAddr, version: ProtocolVersion, client_id: &str) -> Vec<TcpStream> {
    let connect = Arc::new(connect_bytes(version, client_id));
    let barrier = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let connect = connect.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut streams: Vec<TcpStream> = (0..CONNECTIONS / THREADS)
                    .map(|_| TcpStream::connect(addr).expect("TCP connect"))
                    .collect();
                for stream in &streams {
                    stream.set_nodelay(true).unwrap();
                }
                barrier.wait();
                for stream in &mut streams {
                    stream.write_all(&connect).expect("CONNECT sent");
                }
                streams
            })
        })
        .collect();
    let mut streams: Vec<TcpStream> = threads
        .into_iter()
        .flat_map(|thread| thread.join().expect("storm thread"))
        .collect();
    // Losers are closed within SETTLE; once one is left, a quiet spell shows the rest stay.
    let deadline = Instant::now() + SETTLE;
    loop {
        streams.retain_mut(|stream| !closed_by_broker(stream, Duration::from_millis(1)));
        if streams.len() <= 1 || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    streams.retain_mut(|stream| !closed_by_broker(stream, Duration::from_millis(300)));
    streams
}

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
        let mut open = storm(addr, version, &client_id);
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
        let mut open = storm(addr, version, &client_id);
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
