//! The rallymq library broker as a process of its own, for load runs (`mqtt_load compare`
//! starts it). It binds the given listeners on a multi-thread tokio runtime, prints one
//! `listening: tcp://ADDR` / `listening: ws://ADDR/mqtt` line per listener on stdout, and runs
//! until it is killed; with `--exit-on-stdin-eof`, also until its stdin closes (so it never
//! outlives the load tool that started it).
//!
//! ```text
//! cargo build --release -p rallymq-benches --bin rallymq_bench_broker
//! rallymq_bench_broker --tcp 127.0.0.1:1883 --ws 127.0.0.1:8080 [--threads N] [--exit-on-stdin-eof]
//! ```
//!
//! No tracing subscriber is installed: like Mosquitto with `log_type error`, nothing is logged
//! per connection.
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::ExitCode;

use rallymq_broker::{Broker, BrokerConfig};

/// The `rallymq` binary's allocator: the process measured is the one people run.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn usage() -> ExitCode {
    eprintln!(
        "usage: rallymq_bench_broker [--tcp ADDR]... [--ws ADDR]... [--threads N] [--exit-on-stdin-eof]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut config = BrokerConfig::without_listeners();
    let mut threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut exit_on_stdin_eof = false;
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
            _ => return usage(),
        }
    }
    if config.tcp.is_empty() && config.ws.is_empty() {
        return usage();
    }
    let runtime = match rallymq_benches::multi_thread_runtime(threads) {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let started = runtime.block_on(async {
        let handle = Broker::start(config).await?;
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
    // Serve until stdin reaches end of file (the parent closed it or died).
    let mut sink = [0u8; 64];
    while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
    runtime.block_on(handle.shutdown(std::time::Duration::from_millis(200)));
    ExitCode::SUCCESS
}
