//! The rallymq library broker as a process of its own, for load runs (`mqtt_load compare` and
//! `backlog` start it). It binds the given listeners on a multi-thread tokio runtime, prints one
//! `listening: tcp://ADDR` / `listening: ws://ADDR/mqtt` line per listener on stdout, and runs
//! until it is killed; with `--exit-on-stdin-eof`, also until its stdin closes (so it never
//! outlives the load tool that started it), and then shuts down cleanly (the store closed).
//!
//! ```text
//! cargo build --release -p rallymq-benches --bin rallymq_bench_broker
//! rallymq_bench_broker --tcp 127.0.0.1:1883 --ws 127.0.0.1:8080 [--threads N] [--exit-on-stdin-eof]
//!                      [--data-dir DIR] [--max-queued-messages N] [--bridge ADDR]
//! ```
//!
//! `--data-dir DIR` makes it durable, with the store `rallymq broker --data-dir DIR` uses
//! ([`DiskStore`]); without it, it keeps everything in memory. With `--exit-on-stdin-eof`, a
//! line `stats` on stdin is answered on stdout with
//! `store: commits C changes N syncs S` (the store's transactions, the changes they committed
//! and the `fdatasync`s of its file; `store: none` in memory), so that a load tool can count
//! commits and syncs over a window.
//!
//! `--bridge ADDR` adds a bridge named `bench` to the MQTT broker at `ADDR` (`host:port`, TCP,
//! MQTT 3.1.1, the defaults of `[[bridge]]` otherwise) carrying `bench/#` out at QoS 1, with
//! room for 1,000,000 queued messages (`bridge_load` measures it).
//!
//! No tracing subscriber is installed: like Mosquitto with `log_type error`, nothing is logged
//! per connection.
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use rallymq_broker::{BridgeConfig, Broker, BrokerConfig, DiskStore, Store};

/// The `rallymq` binary's allocator, set up as the binary sets it up: the process measured is
/// the one people run.
#[path = "../../../crates/cli/src/allocator.rs"]
mod allocator;

fn usage() -> ExitCode {
    eprintln!(
        "usage: rallymq_bench_broker [--tcp ADDR]... [--ws ADDR]... [--threads N] [--exit-on-stdin-eof]\n\
         \x20                           [--data-dir DIR] [--max-queued-messages N] [--bridge ADDR]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    allocator::configure();
    let mut config = BrokerConfig::without_listeners();
    let mut threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut exit_on_stdin_eof = false;
    let mut data_dir: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--exit-on-stdin-eof" {
            exit_on_stdin_eof = true;
            continue;
        }
        let Some(value) = args.next() else {
            return usage();
        };
        match flag.as_str() {
            "--tcp" | "--ws" => {
                let Ok(addr) = value.parse::<SocketAddr>() else {
                    eprintln!("not an address: {value}");
                    return usage();
                };
                if flag == "--tcp" {
                    config.tcp.push(addr);
                } else {
                    config.ws.push(addr);
                }
            }
            "--threads" => match value.parse() {
                Ok(n) if n > 0 => threads = n,
                _ => return usage(),
            },
            "--data-dir" => data_dir = Some(PathBuf::from(value)),
            "--max-queued-messages" => match value.parse() {
                Ok(n) if n > 0 => config.limits.max_queued_messages = n,
                _ => return usage(),
            },
            "--bridge" => {
                let Ok(bridge) = BridgeConfig::new("bench", &value).topic("bench/# out 1") else {
                    return usage();
                };
                let mut bridge = bridge;
                bridge.client_id = format!("rallymq-bench-bridge-{}", std::process::id());
                bridge.max_queued_messages = 1_000_000;
                config.bridges.push(bridge);
            }
            _ => return usage(),
        }
    }
    if config.tcp.is_empty() && config.ws.is_empty() {
        return usage();
    }
    // Opened here rather than through `Storage::Directory`, so that its counters stay in reach.
    let store = match data_dir.map(DiskStore::open).transpose() {
        Ok(store) => store.map(Arc::new),
        Err(error) => {
            eprintln!("cannot open the store: {error}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match allocator::runtime(Some(threads)) {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot build the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let started = runtime.block_on(async {
        let handle = match &store {
            Some(store) => {
                Broker::start_with_store(config, store.clone() as Arc<dyn Store>).await?
            }
            None => Broker::start(config).await?,
        };
        let mut out = std::io::stdout().lock();
        for listener in handle.listeners() {
            // The parent reads these lines to find the ports; a closed stdout is not our problem.
            let _ = writeln!(out, "listening: {listener}");
        }
        let _ = out.flush();
        Ok::<_, rallymq_broker::Error>(handle)
    });
    let handle = match started {
        Ok(handle) => handle,
        Err(error) => {
            eprintln!("cannot start the broker: {error}");
            return ExitCode::FAILURE;
        }
    };
    if !exit_on_stdin_eof {
        // Serve until killed.
        loop {
            std::thread::park();
        }
    }
    // Serve until stdin reaches end of file (the parent closed it or died), answering `stats`.
    let mut line = String::new();
    while matches!(std::io::stdin().lock().read_line(&mut line), Ok(n) if n > 0) {
        if line.trim() == "stats" {
            let answer = match &store {
                Some(store) => {
                    let stats = store.stats();
                    format!(
                        "store: commits {} changes {} syncs {}",
                        stats.commits, stats.changes, stats.syncs
                    )
                }
                None => "store: none".to_owned(),
            };
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{answer}");
            let _ = out.flush();
        }
        line.clear();
    }
    runtime.block_on(handle.shutdown(std::time::Duration::from_millis(200)));
    // The broker's tasks hold the store too: dropping the runtime ends them, then the last
    // reference closes the store (its writer commits what is pending and redb closes cleanly).
    drop(runtime);
    drop(store);
    ExitCode::SUCCESS
}
