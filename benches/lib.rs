//! Benchmark package: the benches live in the `[[bench]]` targets, the load tools in
//! `src/bin`; this library holds what the tools share.

use std::process::ExitCode;

/// A multi-thread tokio runtime with `threads` workers and every driver enabled, or, if it
/// cannot be built, the reason printed and the exit code for a tool's `main` to return.
pub fn multi_thread_runtime(threads: usize) -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .map_err(|error| {
            eprintln!("cannot build the runtime: {error}");
            ExitCode::FAILURE
        })
}
