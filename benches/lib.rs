//! Benchmark package: the benches live in the `[[bench]]` targets, the load tools in
//! `src/bin`; this library holds what the tools share.

use std::io;
use std::process::ExitCode;

use rallymq_websocket::ClientRequest;
use rallymq_websocket::tokio::ByteStream;
use tokio::io::{AsyncRead, AsyncWrite};

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

/// Opens MQTT over WebSockets on `stream` (connected to `host`): the upgrade on `/mqtt` with
/// subprotocol `mqtt`, then a byte stream whose binary messages carry the MQTT bytes.
pub async fn mqtt_over_websocket<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    host: &str,
) -> io::Result<ByteStream<S>> {
    let request = ClientRequest::new(host, "/mqtt")
        .and_then(|request| request.with_subprotocols(&["mqtt"]))
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error.to_string()))?;
    let (ws, _) =
        rallymq_websocket::tokio::connect(stream, &request, rallymq_websocket::Config::default())
            .await?;
    Ok(ws.into_byte_stream())
}
