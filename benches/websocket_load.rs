//! Echo load over loopback TCP: our echo server (the `ws_echo` example's loop on the
//! rallymq-websocket tokio adapter) against a tokio-tungstenite echo server, with identical
//! scenarios and the same load client, in the same run.
//!
//! ```text
//! cargo bench -p rallymq-benches --bench websocket_load
//! ```
//!
//! Scenarios (bounded in count and in time): 100 connections doing 2000 round trips each of a
//! 20-byte binary message, and 500 connections doing 40 round trips each of a 16 KiB one; one
//! message in flight per connection. Each scenario runs `ROUNDS` times per server, alternating
//! servers, and the median round is reported: messages per second (each echoed once), payload
//! MB/s each way, and round-trip latency percentiles.
//!
//! The server runs on its own one-worker tokio runtime and the load client on another, so on a
//! 2-core machine each has a core. The client is deliberately lean and identical for both
//! servers: pre-masked frames written with one write, the echo read back whole and compared
//! byte for byte with the expected unmasked frame.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use rallymq_websocket::tokio::{WebSocketStream, accept};
use rallymq_websocket::{ClientRequest, Config, Event, OpCode, encode_frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::Barrier;

const ROUNDS: usize = 3;
/// A scenario that takes longer than this is stopped and reported as such.
const TIME_LIMIT: Duration = Duration::from_secs(30);

struct Scenario {
    name: &'static str,
    connections: usize,
    payload: usize,
    round_trips: usize,
}

const SCENARIOS: [Scenario; 2] = [
    Scenario {
        name: "100 conns x 20 B",
        connections: 100,
        payload: 20,
        round_trips: 2000,
    },
    Scenario {
        name: "500 conns x 16 KiB",
        connections: 500,
        payload: 16 * 1024,
        round_trips: 40,
    },
];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Server {
    Rallymq,
    TokioTungstenite,
}

// ---- servers --------------------------------------------------------------------------------

async fn rallymq_echo(mut ws: WebSocketStream<TcpStream>) {
    // The ws_echo example's loop: answers are queued and written by the next `recv`.
    while let Some(event) = ws.recv().await {
        let queued = match event {
            Ok(Event::Text(text)) => ws.queue_text(&text),
            Ok(Event::Binary(data)) => ws.queue_binary(&data),
            Ok(_) => Ok(()),
            Err(_) => return,
        };
        if queued.is_err() {
            return;
        }
    }
}

async fn tungstenite_echo(tcp: TcpStream) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
        return;
    };
    while let Some(Ok(message)) = ws.next().await {
        if (message.is_binary() || message.is_text()) && ws.send(message).await.is_err() {
            return;
        }
    }
}

/// Starts `server` on its own one-worker runtime; returns its address and the runtime.
fn start_server(server: Server) -> (SocketAddr, Runtime) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let address = listener.local_addr().unwrap();
    runtime.spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            tcp.set_nodelay(true).unwrap();
            match server {
                Server::Rallymq => {
                    tokio::spawn(async move {
                        if let Ok(ws) = accept(tcp, Config::default()).await {
                            rallymq_echo(ws).await;
                        }
                    });
                }
                Server::TokioTungstenite => {
                    tokio::spawn(tungstenite_echo(tcp));
                }
            }
        }
    });
    (address, runtime)
}

// ---- the load client ------------------------------------------------------------------------

struct Frames {
    /// What the client sends: a masked binary frame.
    request: Vec<u8>,
    /// What the echo must be: the same payload, unmasked.
    reply: Vec<u8>,
}

fn frames(payload_len: usize) -> Frames {
    let payload: Vec<u8> = (0..payload_len).map(|i| (i % 251) as u8).collect();
    let mut request = BytesMut::new();
    encode_frame(
        true,
        OpCode::Binary,
        Some([1, 2, 3, 4]),
        &payload,
        &mut request,
    );
    let mut reply = BytesMut::new();
    encode_frame(true, OpCode::Binary, None, &payload, &mut reply);
    Frames {
        request: request.to_vec(),
        reply: reply.to_vec(),
    }
}

/// One connection: handshake, wait for the start, `round_trips` echoes, close handshake.
/// Returns the round-trip latencies in microseconds.
async fn client(
    address: SocketAddr,
    frames: Arc<Frames>,
    round_trips: usize,
    start: Arc<Barrier>,
) -> std::io::Result<Vec<u32>> {
    let mut tcp = TcpStream::connect(address).await?;
    tcp.set_nodelay(true)?;
    let request = ClientRequest::with_key(&address.to_string(), "/", [7; 16]).unwrap();
    tcp.write_all(&request.to_bytes()).await?;
    let mut head = BytesMut::with_capacity(512);
    loop {
        if tcp.read_buf(&mut head).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        match request.parse_response(&head) {
            Ok(Some((_, len))) if len == head.len() => break,
            Ok(Some(_)) => return Err(std::io::Error::other("frames before the first message")),
            Ok(None) => {}
            Err(e) => return Err(std::io::Error::other(e)),
        }
    }
    start.wait().await;

    let mut latencies = Vec::with_capacity(round_trips);
    let mut reply = vec![0; frames.reply.len()];
    for _ in 0..round_trips {
        let sent = Instant::now();
        tcp.write_all(&frames.request).await?;
        tcp.read_exact(&mut reply).await?;
        latencies.push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
        if reply != frames.reply {
            return Err(std::io::Error::other("the echo differs"));
        }
    }

    // Close 1000, masked; then read the server's Close and the end of the stream.
    let mut close = BytesMut::new();
    encode_frame(
        true,
        OpCode::Close,
        Some([9, 9, 9, 9]),
        &1000u16.to_be_bytes(),
        &mut close,
    );
    tcp.write_all(&close).await?;
    let mut rest = Vec::new();
    tcp.read_to_end(&mut rest).await?;
    if rest.first() != Some(&0x88) {
        return Err(std::io::Error::other("no Close frame from the server"));
    }
    Ok(latencies)
}

struct Outcome {
    elapsed: Duration,
    messages: usize,
    latencies: Vec<u32>,
}

fn run(client_rt: &Runtime, address: SocketAddr, scenario: &Scenario) -> Result<Outcome, String> {
    let frames = Arc::new(frames(scenario.payload));
    client_rt.block_on(async {
        let start = Arc::new(Barrier::new(scenario.connections + 1));
        let tasks: Vec<_> = (0..scenario.connections)
            .map(|_| {
                tokio::spawn(client(
                    address,
                    frames.clone(),
                    scenario.round_trips,
                    start.clone(),
                ))
            })
            .collect();
        start.wait().await;
        let began = Instant::now();
        let all = async {
            let mut latencies = Vec::new();
            for task in tasks {
                latencies.extend(task.await.unwrap().map_err(|e| e.to_string())?);
            }
            Ok::<_, String>(latencies)
        };
        let latencies = tokio::time::timeout(TIME_LIMIT, all)
            .await
            .map_err(|_| format!("stopped after {TIME_LIMIT:?}"))??;
        Ok(Outcome {
            elapsed: began.elapsed(),
            messages: latencies.len(),
            latencies,
        })
    })
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument selects scenarios by name.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let servers = [Server::Rallymq, Server::TokioTungstenite];
    let started: Vec<_> = servers.iter().map(|&s| (s, start_server(s))).collect();

    println!(
        "{:<20} {:<18} {:>12} {:>10} {:>9} {:>9} {:>9}",
        "scenario", "server", "msg/s", "MB/s", "p50 us", "p99 us", "max us"
    );
    for scenario in &SCENARIOS {
        if !filter.is_empty() && !filter.iter().any(|f| scenario.name.contains(f.as_str())) {
            continue;
        }
        let mut rounds: Vec<(Server, Outcome)> = Vec::new();
        for _ in 0..ROUNDS {
            for (server, (address, _)) in &started {
                match run(&client_rt, *address, scenario) {
                    Ok(outcome) => rounds.push((*server, outcome)),
                    Err(e) => println!(
                        "{:<20} {:<18} failed: {e}",
                        scenario.name,
                        format!("{server:?}")
                    ),
                }
            }
        }
        let mut rates = Vec::new();
        for &server in &servers {
            let mut mine: Vec<&Outcome> = rounds
                .iter()
                .filter(|(s, _)| *s == server)
                .map(|(_, o)| o)
                .collect();
            if mine.is_empty() {
                continue;
            }
            mine.sort_by_key(|o| o.elapsed);
            let median = mine[mine.len() / 2];
            let rate = median.messages as f64 / median.elapsed.as_secs_f64();
            let mut sorted = median.latencies.clone();
            sorted.sort_unstable();
            println!(
                "{:<20} {:<18} {:>12.0} {:>10.1} {:>9} {:>9} {:>9}",
                scenario.name,
                format!("{server:?}"),
                rate,
                rate * scenario.payload as f64 / 1e6,
                percentile(&sorted, 0.5),
                percentile(&sorted, 0.99),
                sorted.last().copied().unwrap_or_default(),
            );
            rates.push(rate);
        }
        if let [ours, theirs] = rates[..] {
            println!(
                "{:<20} rallymq / tokio-tungstenite throughput: {:.2}x",
                scenario.name,
                ours / theirs
            );
        }
    }
}
