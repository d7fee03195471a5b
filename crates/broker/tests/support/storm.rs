//! Storms of simultaneous CONNECTs with one client id, over blocking sockets from several
//! threads: how the broker (or a cluster of them) must leave exactly one connection open
//! (MQTT-3.1.4-2).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rallymq_codec::{Connect, MqttString, Packet, ProtocolVersion};

/// Connections per storm, and the threads that send their CONNECTs.
pub const CONNECTIONS: usize = 200;
pub const THREADS: usize = 8;

/// How long the losers of one storm may take to be closed. A storm ends as soon as one
/// connection is left, so this only bounds a slow one: in a cluster a loser's claim may wait out
/// a NATS request's timeout and its retry (the proof storms right after servers restart), and
/// it is closed then, which is what the rule asks.
pub const SETTLE: Duration = Duration::from_secs(30);

pub fn connect_bytes(version: ProtocolVersion, client_id: &str) -> Vec<u8> {
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
pub fn closed_by_broker(stream: &mut TcpStream, quiet: Duration) -> bool {
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
pub fn answers_ping(stream: &mut TcpStream) -> bool {
    if stream.write_all(&[0xC0, 0x00]).is_err() {
        return false;
    }
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 2];
    stream.read_exact(&mut buf).is_ok() && buf == [0xD0, 0x00]
}

/// Opens `connections` sockets, spread over `addrs` in turn, sends the same CONNECT on all of
/// them from `THREADS` threads at once, and returns the sockets still open once the brokers
/// have settled.
pub fn storm(
    addrs: &[SocketAddr],
    connections: usize,
    version: ProtocolVersion,
    client_id: &str,
) -> Vec<TcpStream> {
    let connect = Arc::new(connect_bytes(version, client_id));
    let barrier = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|thread| {
            let connect = connect.clone();
            let barrier = barrier.clone();
            let addrs = addrs.to_vec();
            std::thread::spawn(move || {
                let mut streams: Vec<TcpStream> = (0..connections / THREADS
                    + usize::from(thread < connections % THREADS))
                    .map(|i| {
                        let addr = addrs[(thread + i) % addrs.len()];
                        TcpStream::connect(addr).expect("TCP connect")
                    })
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
