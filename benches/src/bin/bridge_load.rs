//! Bridged QoS 1 throughput: rallymq's bridge beside Mosquitto's own, in the same run.
//!
//! ```text
//! cargo build --release -p rallymq-benches --bin bridge_load --bin rallymq_bench_broker
//! target/release/bridge_load [--messages 20000] [--rounds 3] [--window 64] [--durable]
//!                            [--mosquitto-inflight 64] [--mosquitto PATH] [--bench-broker PATH]
//! ```
//!
//! Three brokers over loopback: a "cloud" Mosquitto, and an "edge" broker bridged out to it on
//! `bench/# out 1` (MQTT 3.1.1 over TCP): `rallymq_bench_broker --bridge`, or a Mosquitto with a
//! `connection` section. A publisher on the edge sends `--messages` QoS 1 messages with at most
//! `--window` unacknowledged; a subscriber on the cloud (QoS 1) counts them. Throughput is the
//! messages received per second, from the first publish to the last message received, once the
//! bridge has carried a probe (it is connected and subscribed). Edge CPU is the edge process's
//! user + system time over the same span (100% = one core). With `--durable`, a third edge:
//! rallymq with its disk store in a fresh temporary directory (`--data-dir`), where every
//! bridged message is a queue entry written, then deleted once the cloud acknowledged it.
//!
//! Both edges keep every message (queues of 1,000,000); Mosquitto's bridge has at most
//! `max_inflight_messages` unacknowledged messages to the cloud, set by `--mosquitto-inflight`
//! (64 by default, rallymq's bridge window; Mosquitto's own default is 20). Each round starts
//! fresh processes, rallymq first, then Mosquitto; the summary gives medians and the median of
//! the per-round ratios rallymq / Mosquitto. Every wait is bounded (60 s for a round's
//! messages).
use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rallymq_benches::{BenchBroker, MosquittoProcess, cpu_seconds, load_average, median};
use rallymq_client::{AckFuture, Client, ClientOptions, QoS};

/// How long a round's messages may take to arrive.
const ROUND_DEADLINE: Duration = Duration::from_secs(60);

/// How long a broker, and the bridge, may take to come up.
const START_DEADLINE: Duration = Duration::from_secs(10);

struct Options {
    messages: usize,
    rounds: usize,
    window: usize,
    mosquitto_inflight: usize,
    mosquitto: String,
    bench_broker: Option<PathBuf>,
    durable: bool,
}

fn parse_args() -> Result<Options, String> {
    let mut options = Options {
        messages: 20_000,
        rounds: 3,
        window: 64,
        mosquitto_inflight: 64,
        mosquitto: "mosquitto".to_owned(),
        bench_broker: None,
        durable: false,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        if flag == "--durable" {
            options.durable = true;
            continue;
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{flag}: not a positive number: {value}"))
        };
        match flag.as_str() {
            "--messages" => options.messages = number()?,
            "--rounds" => options.rounds = number()?,
            "--window" => options.window = number()?,
            "--mosquitto-inflight" => options.mosquitto_inflight = number()?,
            "--mosquitto" => options.mosquitto = value.clone(),
            "--bench-broker" => options.bench_broker = Some(PathBuf::from(value)),
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(options)
}

/// A free port on 127.0.0.1 (bound, then released for a Mosquitto to take).
fn free_port() -> io::Result<u16> {
    Ok(StdTcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A Mosquitto on a free port with `settings` added to its configuration.
fn start_mosquitto(program: &str, name: &str, settings: &str) -> io::Result<MosquittoProcess> {
    let settings = format!(
        "per_listener_settings false\npersistence false\nlog_type error\n\
         allow_anonymous true\nmax_queued_messages 1000000\n{settings}\n"
    );
    MosquittoProcess::start(
        program,
        &format!("bridge-load-{name}"),
        &settings,
        free_port()?,
        START_DEADLINE,
    )
}

/// The bridging broker under test.
enum Edge {
    Rallymq {
        broker: BenchBroker,
        /// Its store's directory, removed when dropped (after the broker, declared first).
        _store: Option<TempDir>,
    },
    Mosquitto(MosquittoProcess),
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Edge {
    fn port(&self) -> u16 {
        match self {
            Self::Rallymq { broker, .. } => broker.tcp.port(),
            Self::Mosquitto(mosquitto) => mosquitto.port,
        }
    }

    fn pid(&self) -> u32 {
        match self {
            Self::Rallymq { broker, .. } => broker.pid(),
            Self::Mosquitto(mosquitto) => mosquitto.pid(),
        }
    }
}

/// One round's figures.
struct Sample {
    rate: f64,
    cpu: Option<f64>,
}

async fn client(port: u16, id: &str) -> io::Result<(Client, rallymq_client::Messages)> {
    let options = ClientOptions::new(&format!("mqtt://127.0.0.1:{port}"))
        .client_id(id)
        .reconnect(None);
    let (client, messages, _) = Client::connect(options)
        .await
        .map_err(|e| io::Error::other(format!("connecting to {port}: {e}")))?;
    Ok((client, messages))
}

fn failed(error: impl std::fmt::Display) -> io::Error {
    io::Error::other(error.to_string())
}

/// Sends `options.messages` QoS 1 messages through the bridge of `edge` to a subscriber on
/// `cloud`, and times them.
async fn measure(edge: &Edge, cloud: u16, options: &Options) -> io::Result<Sample> {
    let (sink, mut received) = client(cloud, "bench-sink").await?;
    sink.subscribe("bench/#", QoS::AtLeastOnce)
        .await
        .map_err(failed)?;
    let (publisher, _) = client(edge.port(), "bench-publisher").await?;
    // The bridge is up once a probe crosses it.
    let deadline = Instant::now() + START_DEADLINE;
    'probing: loop {
        publisher
            .publish("bench/probe", "probe", QoS::AtLeastOnce, false)
            .await
            .map_err(failed)?;
        let wait = tokio::time::sleep(Duration::from_millis(200));
        tokio::pin!(wait);
        loop {
            tokio::select! {
                message = received.recv() => match message {
                    Some(message) if message.topic.as_str() == "bench/probe" => break 'probing,
                    Some(_) => {}
                    None => return Err(failed("the sink's connection ended")),
                },
                () = &mut wait => break,
            }
        }
        if Instant::now() > deadline {
            return Err(failed("the bridge did not carry a probe within 10 s"));
        }
    }
    let total = options.messages;
    let counting = tokio::spawn(async move {
        let mut count = 0;
        while count < total {
            match tokio::time::timeout(ROUND_DEADLINE, received.recv()).await {
                Ok(Some(message)) if message.topic.as_str() == "bench/n" => count += 1,
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        (count, Instant::now())
    });
    let cpu_before = cpu_seconds(edge.pid());
    let started = Instant::now();
    let payload = vec![b'x'; 64];
    let mut acks: VecDeque<AckFuture> = VecDeque::with_capacity(options.window);
    for _ in 0..total {
        if acks.len() >= options.window
            && let Some(ack) = acks.pop_front()
        {
            ack.await.map_err(failed)?;
        }
        loop {
            match publisher.try_publish("bench/n", payload.clone(), QoS::AtLeastOnce, false) {
                Ok(ack) => {
                    acks.push_back(ack);
                    break;
                }
                // The client's own queue is full: wait for the oldest acknowledgement.
                Err(rallymq_client::Error::Full) => match acks.pop_front() {
                    Some(ack) => {
                        ack.await.map_err(failed)?;
                    }
                    None => tokio::task::yield_now().await,
                },
                Err(error) => return Err(failed(error)),
            }
        }
    }
    for ack in acks {
        ack.await.map_err(failed)?;
    }
    let (count, last) = counting.await.map_err(failed)?;
    let cpu_after = cpu_seconds(edge.pid());
    let _ = publisher.disconnect().await;
    let _ = sink.disconnect().await;
    if count < total {
        return Err(failed(format!(
            "{count} of {total} messages arrived within {ROUND_DEADLINE:?}"
        )));
    }
    let elapsed = last.duration_since(started).as_secs_f64();
    Ok(Sample {
        rate: total as f64 / elapsed,
        cpu: cpu_before
            .zip(cpu_after)
            .map(|(before, after)| (after - before) / elapsed),
    })
}

fn start_edge(kind: &str, cloud: u16, options: &Options) -> io::Result<Edge> {
    match kind {
        "rallymq" | "rallymq-durable" => {
            let path = match &options.bench_broker {
                Some(path) => path.clone(),
                None => std::env::current_exe()?.with_file_name("rallymq_bench_broker"),
            };
            let tcp: SocketAddr = "127.0.0.1:0".parse().map_err(failed)?;
            let mut extra = vec!["--bridge".to_owned(), format!("127.0.0.1:{cloud}")];
            let dir = (kind == "rallymq-durable").then(|| {
                TempDir(std::env::temp_dir().join(format!(
                    "rallymq-bridge-load-store-{}-{cloud}",
                    std::process::id()
                )))
            });
            if let Some(dir) = &dir {
                extra.push("--data-dir".to_owned());
                extra.push(dir.0.display().to_string());
            }
            let broker = BenchBroker::start(&path, tcp, None, &extra, START_DEADLINE)?;
            Ok(Edge::Rallymq {
                broker,
                _store: dir,
            })
        }
        _ => {
            let settings = format!(
                "max_inflight_messages {}\n\
                 connection bench\naddress 127.0.0.1:{cloud}\ntopic bench/# out 1\n\
                 remote_clientid mosquitto-bench-bridge-{}\nrestart_timeout 1 5\n",
                options.mosquitto_inflight,
                std::process::id()
            );
            Ok(Edge::Mosquitto(start_mosquitto(
                &options.mosquitto,
                "edge",
                &settings,
            )?))
        }
    }
}

fn run(options: &Options) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    println!(
        "bridge_load: {} QoS 1 messages of 64 bytes a round, window {}, {} rounds; Mosquitto's \
         bridge max_inflight_messages {}; load average {}",
        options.messages,
        options.window,
        options.rounds,
        options.mosquitto_inflight,
        load_average()
    );
    let mut edges = vec!["rallymq"];
    if options.durable {
        edges.push("rallymq-durable");
    }
    edges.push("mosquitto");
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); edges.len()];
    // Per round, each rallymq edge's rate over Mosquitto's (the last edge).
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); edges.len() - 1];
    for round in 1..=options.rounds {
        let mut round_rates = Vec::new();
        for (index, kind) in edges.iter().enumerate() {
            let cloud = start_mosquitto(&options.mosquitto, "cloud", "max_inflight_messages 1000")?;
            let edge = start_edge(kind, cloud.port, options)?;
            let sample = runtime.block_on(measure(&edge, cloud.port, options))?;
            let cpu = sample
                .cpu
                .map_or("?".to_owned(), |cpu| format!("{:.0}%", cpu * 100.0));
            let per_cpu = sample
                .cpu
                .map_or("?".to_owned(), |cpu| format!("{:.0}", sample.rate / cpu));
            println!(
                "round {round} {kind:15}: {:>8.0} msg/s, edge CPU {cpu:>5}, {per_cpu} msg per edge CPU-s",
                sample.rate
            );
            round_rates.push(sample.rate);
            rates[index].push(sample.rate);
        }
        let mosquitto = round_rates.last().copied().unwrap_or(f64::NAN);
        for (index, rate) in round_rates.iter().take(edges.len() - 1).enumerate() {
            ratios[index].push(rate / mosquitto);
        }
    }
    let mut line = "median:".to_owned();
    for (kind, rates) in edges.iter().zip(&mut rates) {
        let rate = median(rates).unwrap_or(f64::NAN);
        line.push_str(&format!(" {kind} {rate:.0} msg/s;"));
    }
    for (kind, ratios) in edges.iter().zip(&mut ratios) {
        let ratio = median(ratios).unwrap_or(f64::NAN);
        line.push_str(&format!(" ratio {kind} / mosquitto {ratio:.2};"));
    }
    println!("{}", line.trim_end_matches(';'));
    Ok(())
}

fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(options) => options,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(2);
        }
    };
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bridge_load: {error}");
            ExitCode::FAILURE
        }
    }
}
