//! Benchmark package: the benches live in the `[[bench]]` targets, the load tools in
//! `src/bin`; this library holds what the tools share.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};

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

/// A global allocator that counts allocations and the bytes currently allocated, so that a
/// bench measures memory and allocations rather than guessing them. Requested sizes are counted:
/// the allocator's own per-block overhead is not included. A bench installs it with
/// `#[global_allocator] static GLOBAL: CountingAllocator = CountingAllocator;`.
pub struct CountingAllocator;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

/// Bytes currently allocated through [`CountingAllocator`].
pub fn allocated() -> usize {
    ALLOCATED.load(Ordering::Relaxed)
}

/// Allocations (and reallocations) made so far through [`CountingAllocator`].
pub fn allocations() -> usize {
    ALLOCATIONS.load(Ordering::Relaxed)
}

// The only unsafe code here: the `GlobalAlloc` contract, forwarded unchanged to `System`.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED.fetch_add(new_size, Ordering::Relaxed);
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
