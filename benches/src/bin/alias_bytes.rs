//! Bytes the tennis demo's scoreboard traffic costs a WebSocket subscriber with topic aliases
//! and without, in the same run.
//!
//! ```text
//! cargo build --release -p rallymq-benches --bin alias_bytes -p rallymq-examples --example tennis
//! target/release/alias_bytes [--matches 16] [--speed 200] [--best-of 3] [--seed 1]
//!                            [--maximums 0,64,4] [--tennis PATH]
//! ```
//!
//! Starts the broker in-process (default limits: up to 64 aliases to each client) on free
//! ports, connects one MQTT 5 subscriber over `ws://…/mqtt` per Topic Alias Maximum in
//! `--maximums` (0: the property left out, so no aliases), each subscribing to
//! `tennis/+/score` at QoS 1 as the scoreboard page does, then runs the real simulator
//! (`examples/tennis.rs`, `--once` with a fixed seed: a fixed set of matches and so a fixed count
//! of messages) against the broker's TCP port. When it is done and every subscriber has the same
//! count, it reports per subscriber: PUBLISH bytes (the MQTT packets, exact), how many set an
//! alias and how many came on an alias alone, and every byte read from the socket (WebSocket
//! frames and the CONNACK and SUBACK included). Each subscriber resolves the aliases itself, and
//! the tool checks that every one got the same messages on the same topics.
//!
//! Bounded: the simulator gets at most `--deadline` seconds (120), the subscribers 5 s more to
//! catch up.
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rallymq_broker::{Broker, BrokerConfig, ListenerKind};
use rallymq_codec::{
    Ack, Connect, Limits, MqttString, Packet, PacketId, ProtocolVersion, QoS, ReasonCode,
    Subscribe, SubscribeProperties, Subscription, TopicFilter,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

const V5: ProtocolVersion = ProtocolVersion::V5;
const FILTER: &str = "tennis/+/score";
/// Longest wait, after the simulator is done, for the subscribers to hold the same count.
const CATCH_UP: Duration = Duration::from_secs(5);

const USAGE: &str = "\
usage: alias_bytes [options]
  --matches N      matches (courts) played at once, one topic each (16)
  --speed N        points per second in each match (200)
  --best-of N      3 or 5 sets (3)
  --seed N         the simulator's seed: the same matches, the same messages (1)
  --maximums LIST  one subscriber per Topic Alias Maximum, 0 for none (0,64,4)
  --deadline SECS  longest the simulator may run (120)
  --tennis PATH    the simulator (default: examples/tennis next to this binary)";

struct Options {
    matches: u32,
    speed: u32,
    best_of: u32,
    seed: u64,
    maximums: Vec<u16>,
    deadline: Duration,
    tennis: Option<PathBuf>,
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        matches: 16,
        speed: 200,
        best_of: 3,
        seed: 1,
        maximums: vec![0, 64, 4],
        deadline: Duration::from_secs(120),
        tennis: None,
    };
    let mut iter = args.iter();
    while let Some(flag) = iter.next() {
        let value = iter.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("{flag}: not a number: {value}"))
        };
        match flag.as_str() {
            "--matches" => options.matches = number()? as u32,
            "--speed" => options.speed = number()? as u32,
            "--best-of" => options.best_of = number()? as u32,
            "--seed" => options.seed = number()?,
            "--deadline" => options.deadline = Duration::from_secs(number()?),
            "--tennis" => options.tennis = Some(PathBuf::from(value)),
            "--maximums" => {
                options.maximums = value
                    .split(',')
                    .map(|m| m.trim().parse::<u16>())
                    .collect::<Result<_, _>>()
                    .map_err(|_| format!("--maximums: not a list of numbers: {value}"))?;
            }
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if options.maximums.is_empty() {
        return Err("--maximums: no subscriber".to_owned());
    }
    Ok(options)
}

fn invalid(error: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error.to_string())
}

/// A stream that counts the bytes read from it: what the subscriber got off the socket.
struct Counted<S> {
    inner: S,
    read: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        self.read.fetch_add(read, Ordering::Relaxed);
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What one subscriber received.
#[derive(Default)]
struct Received {
    messages: u64,
    /// Bytes of the PUBLISH packets, as decoded.
    publish_bytes: u64,
    /// PUBLISHes that carried topic and alias (the alias set or re-pointed).
    alias_set: u64,
    /// PUBLISHes that carried the alias alone (an empty topic).
    alias_alone: u64,
    /// Payloads in order, per resolved topic.
    by_topic: BTreeMap<String, Vec<Bytes>>,
}

/// An MQTT 5 subscriber over WebSockets announcing `maximum` (0: no property).
struct Subscriber {
    io: rallymq_websocket::tokio::ByteStream<Counted<TcpStream>>,
    buf: BytesMut,
    socket_bytes: Arc<AtomicU64>,
    maximum: u16,
}

impl Subscriber {
    async fn connect(ws: SocketAddr, maximum: u16) -> io::Result<Self> {
        let socket_bytes = Arc::new(AtomicU64::new(0));
        let tcp = Counted {
            inner: TcpStream::connect(ws).await?,
            read: socket_bytes.clone(),
        };
        let io = rallymq_benches::mqtt_over_websocket(tcp, &ws.to_string()).await?;
        let mut subscriber = Self {
            io,
            buf: BytesMut::new(),
            socket_bytes,
            maximum,
        };
        let mut connect = Connect::new(
            V5,
            MqttString::new(format!("alias-bytes-{maximum}")).map_err(invalid)?,
        );
        connect.properties.topic_alias_maximum = (maximum > 0).then_some(maximum);
        subscriber.send(Packet::from(connect)).await?;
        match subscriber.next_packet().await?.0 {
            Packet::ConnAck(ack) if ack.reason_code == ReasonCode::Success => {}
            other => return Err(invalid(format!("CONNECT answered with {other:?}"))),
        }
        let subscribe = Subscribe {
            packet_id: PacketId::new(1).ok_or_else(|| invalid("packet id 0"))?,
            properties: SubscribeProperties::default().into(),
            subscriptions: vec![Subscription::new(
                TopicFilter::new(FILTER).map_err(invalid)?,
                QoS::AtLeastOnce,
            )],
        };
        subscriber.send(Packet::Subscribe(subscribe)).await?;
        match subscriber.next_packet().await?.0 {
            Packet::SubAck(ack) if !ack.reason_codes.iter().any(|c| c.is_error()) => {}
            other => return Err(invalid(format!("SUBSCRIBE answered with {other:?}"))),
        }
        Ok(subscriber)
    }

    async fn send(&mut self, packet: Packet) -> io::Result<()> {
        let mut out = BytesMut::new();
        packet.encode(V5, &mut out).map_err(invalid)?;
        self.io.write_all(&out).await?;
        self.io.flush().await
    }

    /// The next packet and how many bytes it took.
    async fn next_packet(&mut self) -> io::Result<(Packet, usize)> {
        let limits = Limits::default();
        loop {
            let before = self.buf.len();
            if let Some(packet) =
                rallymq_codec::decode(&mut self.buf, V5, &limits).map_err(invalid)?
            {
                return Ok((packet, before - self.buf.len()));
            }
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Receives, acknowledges and resolves until `stop` turns true; `count` follows the
    /// messages received.
    async fn receive(
        mut self,
        count: Arc<AtomicU64>,
        mut stop: watch::Receiver<bool>,
    ) -> io::Result<(u16, Received, u64)> {
        let mut received = Received::default();
        let mut aliases: HashMap<NonZeroU16, String> = HashMap::new();
        loop {
            let (packet, len) = tokio::select! {
                next = self.next_packet() => next?,
                _ = stop.wait_for(|stop| *stop) => break,
            };
            let Packet::Publish(publish) = packet else {
                continue;
            };
            if publish
                .properties
                .topic_alias
                .is_some_and(|a| a.get() > self.maximum)
            {
                return Err(invalid("an alias above the maximum"));
            }
            received.messages += 1;
            received.publish_bytes += len as u64;
            let topic = match (publish.topic, publish.properties.topic_alias) {
                (Some(topic), None) => topic.as_str().to_owned(),
                (Some(topic), Some(alias)) => {
                    received.alias_set += 1;
                    aliases.insert(alias, topic.as_str().to_owned());
                    topic.as_str().to_owned()
                }
                (None, Some(alias)) => {
                    received.alias_alone += 1;
                    let topic = aliases
                        .get(&alias)
                        .ok_or_else(|| invalid("unknown alias"))?;
                    topic.clone()
                }
                (None, None) => return Err(invalid("a PUBLISH without topic or alias")),
            };
            received
                .by_topic
                .entry(topic)
                .or_default()
                .push(publish.payload);
            if let Some(id) = publish.packet_id {
                self.send(Packet::PubAck(Ack::new(id))).await?;
            }
            count.store(received.messages, Ordering::Relaxed);
        }
        let socket_bytes = self.socket_bytes.load(Ordering::Relaxed);
        Ok((self.maximum, received, socket_bytes))
    }
}

async fn run(options: &Options) -> io::Result<String> {
    let mut config = BrokerConfig::without_listeners();
    config.tcp = vec![SocketAddr::from(([127, 0, 0, 1], 0))];
    config.ws = vec![SocketAddr::from(([127, 0, 0, 1], 0))];
    config.sys_interval = None;
    let outgoing_limit = config.limits.outgoing_topic_alias_maximum;
    let broker = Broker::start(config).await.map_err(io::Error::other)?;
    let (Some(tcp), Some(ws)) = (
        broker.local_addr(ListenerKind::Tcp),
        broker.local_addr(ListenerKind::WebSocket),
    ) else {
        return Err(io::Error::other("the broker has no listener"));
    };

    let (stop, stopped) = watch::channel(false);
    let mut counts = Vec::new();
    let mut readers = Vec::new();
    for &maximum in &options.maximums {
        let subscriber = Subscriber::connect(ws, maximum).await?;
        let count = Arc::new(AtomicU64::new(0));
        counts.push(count.clone());
        readers.push(tokio::spawn(subscriber.receive(count, stopped.clone())));
    }

    let tennis = match &options.tennis {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .with_file_name("examples")
            .join("tennis"),
    };
    let mut child = Command::new(&tennis)
        .args(["--broker", &format!("mqtt://{tcp}")])
        .args(["--matches", &options.matches.to_string()])
        .args(["--speed", &options.speed.to_string()])
        .args(["--best-of", &options.best_of.to_string()])
        .args(["--seed", &options.seed.to_string()])
        .arg("--once")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", tennis.display())))?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > options.deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::other("the simulator did not finish in time"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    if !status.success() {
        return Err(io::Error::other(format!("the simulator failed: {status}")));
    }
    let played = started.elapsed();

    // Every subscriber gets every message; wait until the counts agree and stay put.
    let caught_up = Instant::now();
    let mut last = Vec::new();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        if now == last && now.windows(2).all(|w| w[0] == w[1]) {
            break;
        }
        if caught_up.elapsed() > CATCH_UP {
            return Err(io::Error::other(format!(
                "the subscribers did not catch up: {now:?}"
            )));
        }
        last = now;
    }
    let _ = stop.send(true);
    let mut results = Vec::new();
    for reader in readers {
        results.push(reader.await.map_err(io::Error::other)??);
    }
    broker.shutdown(Duration::from_millis(200)).await;

    let (_, reference, _) = &results[0];
    for (maximum, received, _) in &results[1..] {
        if received.by_topic != reference.by_topic {
            return Err(invalid(format!(
                "the subscriber with maximum {maximum} got other messages than the first"
            )));
        }
    }
    Ok(report(options, outgoing_limit, played, &results))
}

fn report(
    options: &Options,
    outgoing_limit: u16,
    played: Duration,
    results: &[(u16, Received, u64)],
) -> String {
    use std::fmt::Write as _;
    let (_, first, _) = &results[0];
    let topics = first.by_topic.len();
    let mut out = format!(
        "tennis: {} matches (best of {}, seed {}, {} points/s), {} messages on {} topics to each \
         subscriber, played in {:.1} s; broker limit {} aliases\n\n",
        options.matches,
        options.best_of,
        options.seed,
        options.speed,
        first.messages,
        topics,
        played.as_secs_f64(),
        outgoing_limit,
    );
    let baseline = results
        .iter()
        .find(|(maximum, ..)| *maximum == 0)
        .map(|(_, received, socket)| (received.publish_bytes, *socket));
    let _ = writeln!(
        out,
        "| Topic Alias Maximum | PUBLISH bytes | per message | alias set | alias alone | socket bytes | per message | saved (PUBLISH) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for (maximum, received, socket) in results {
        let n = received.messages.max(1) as f64;
        let saved = baseline.map_or("".to_owned(), |(publish, _)| {
            let saved = publish as i64 - received.publish_bytes as i64;
            format!("{saved} ({:.1}%)", 100.0 * saved as f64 / publish as f64)
        });
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {} | {} | {} | {:.1} | {} |",
            if *maximum == 0 {
                "none".to_owned()
            } else {
                maximum.to_string()
            },
            received.publish_bytes,
            received.publish_bytes as f64 / n,
            received.alias_set,
            received.alias_alone,
            socket,
            *socket as f64 / n,
            saved,
        );
    }
    out
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let options = match parse_args(&args) {
        Ok(options) => options,
        Err(error) => {
            eprintln!("{error}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match rallymq_benches::multi_thread_runtime(2) {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match runtime.block_on(run(&options)) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("alias_bytes: {error}");
            ExitCode::FAILURE
        }
    }
}
