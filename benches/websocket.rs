//! rallymq-websocket against tungstenite, in the same groups:
//!
//! - `ws_decode_unmask/{20B,1KiB,64KiB}`: a masked binary frame from a client, received by a
//!   server-side connection and handed out as a message. Each side gets the frame's bytes by
//!   one copy, as a socket read would do (ours into the receive buffer, tungstenite's through
//!   `Read` from an in-memory stream), then decodes, unmasks in place and returns the payload.
//! - `ws_unmask/{20B,1KiB,64KiB}`: raw unmasking of an in-cache buffer. tungstenite does not
//!   export its masking function, so `tungstenite_fast32` below is its code (0.28,
//!   `protocol/frame/mask.rs`, MIT/Apache-2.0) copied verbatim into this file.
//! - `ws_unmask_interleaved` (printed after the criterion groups): the same two functions timed
//!   in alternation, minimum and median of 41 rounds, a measure that survives a shared machine.
//!
//! The echo load (our server against a tokio-tungstenite server) is `websocket_load.rs`.
use std::hint::black_box;
use std::io::{self, Read, Write};

use bytes::BytesMut;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use rallymq_websocket::{Config, Connection, Event, OpCode, apply_mask, encode_frame};
use tungstenite::protocol::{Role, WebSocket};

const SIZES: [(&str, usize); 3] = [("20B", 20), ("1KiB", 1024), ("64KiB", 64 * 1024)];
const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn masked_frame(len: usize) -> Vec<u8> {
    let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let mut frame = BytesMut::new();
    encode_frame(true, OpCode::Binary, Some(KEY), &payload, &mut frame);
    frame.to_vec()
}

/// An endless stream of the same frame, read as a socket would deliver it: each `read` copies
/// what is left of the current frame (or as much as fits). Writes are discarded.
struct RepeatingFrame {
    frame: Vec<u8>,
    pos: usize,
}

impl Read for RepeatingFrame {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.frame.len() - self.pos);
        buf[..n].copy_from_slice(&self.frame[self.pos..self.pos + n]);
        self.pos = (self.pos + n) % self.frame.len();
        Ok(n)
    }
}

impl Write for RepeatingFrame {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn decode_unmask(c: &mut Criterion) {
    let mut group = c.benchmark_group("ws_decode_unmask");
    for (name, len) in SIZES {
        let frame = masked_frame(len);
        group.throughput(Throughput::Bytes(len as u64));

        let mut ours = Connection::server(Config::default());
        group.bench_with_input(BenchmarkId::new("rallymq", name), &frame, |b, frame| {
            b.iter(|| {
                ours.receive_buffer().extend_from_slice(frame);
                match ours.poll_event() {
                    Ok(Some(Event::Binary(payload))) => black_box(payload),
                    other => panic!("unexpected {other:?}"),
                }
            })
        });

        let stream = RepeatingFrame {
            frame: frame.clone(),
            pos: 0,
        };
        let mut theirs = WebSocket::from_raw_socket(stream, Role::Server, None);
        group.bench_with_input(BenchmarkId::new("tungstenite", name), &frame, |b, _| {
            b.iter(|| match theirs.read() {
                Ok(tungstenite::Message::Binary(payload)) => black_box(payload),
                other => panic!("unexpected {other:?}"),
            })
        });
    }
    group.finish();
}

fn unmask(c: &mut Criterion) {
    let mut group = c.benchmark_group("ws_unmask");
    for (name, len) in SIZES {
        let mut buf: Vec<u8> = (0..len).map(|i| i as u8).collect();
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(BenchmarkId::new("rallymq", name), |b| {
            b.iter(|| apply_mask(black_box(&mut buf), black_box(KEY)))
        });
        group.bench_function(BenchmarkId::new("tungstenite", name), |b| {
            b.iter(|| tungstenite_fast32(black_box(&mut buf), black_box(KEY)))
        });
    }
    group.finish();
}

// ---- tungstenite 0.28's masking, copied (it is not exported) --------------------------------

#[inline]
fn tungstenite_fallback(buf: &mut [u8], mask: [u8; 4]) {
    for (i, byte) in buf.iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

#[inline]
#[allow(unsafe_code)]
fn tungstenite_fast32(buf: &mut [u8], mask: [u8; 4]) {
    let mask_u32 = u32::from_ne_bytes(mask);

    // SAFETY: any bit pattern is a valid u32 (tungstenite's own code).
    let (prefix, words, suffix) = unsafe { buf.align_to_mut::<u32>() };
    tungstenite_fallback(prefix, mask);
    let head = prefix.len() & 3;
    let mask_u32 = if head > 0 {
        if cfg!(target_endian = "big") {
            mask_u32.rotate_left(8 * head as u32)
        } else {
            mask_u32.rotate_right(8 * head as u32)
        }
    } else {
        mask_u32
    };
    for word in words.iter_mut() {
        *word ^= mask_u32;
    }
    tungstenite_fallback(suffix, mask_u32.to_ne_bytes());
}

fn config() -> Criterion {
    // A shared 2-core machine: short runs, enough samples for stable medians.
    Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = decode_unmask, unmask
}

/// Raw unmasking again, ours and tungstenite's interleaved: 41 rounds alternating the two, each
/// round timing a batch of calls; the minimum and median per call are printed. On a shared
/// machine, bursts of other work land on whichever side criterion happens to be measuring;
/// alternating and taking the minimum is robust to that.
fn unmask_interleaved() {
    const ROUNDS: usize = 41;
    println!(
        "ws_unmask_interleaved ({ROUNDS} alternating rounds; ns per call; ratio = theirs / ours)"
    );
    for (name, len) in SIZES {
        let mut buf: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let calls = (20_000_000 / (len + 20)).max(200);
        let mut time = |f: fn(&mut [u8], [u8; 4])| {
            let started = std::time::Instant::now();
            for _ in 0..calls {
                f(black_box(&mut buf), black_box(KEY));
            }
            started.elapsed().as_secs_f64() * 1e9 / calls as f64
        };
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            ours.push(time(apply_mask));
            theirs.push(time(tungstenite_fast32));
        }
        ours.sort_by(f64::total_cmp);
        theirs.sort_by(f64::total_cmp);
        let (min, med) = (0, ROUNDS / 2);
        println!(
            "  {name:>5}: min rallymq {:8.2} tungstenite {:8.2} ratio {:.2} ({:.1} GB/s ours) | \
             median rallymq {:8.2} tungstenite {:8.2} ratio {:.2}",
            ours[min],
            theirs[min],
            theirs[min] / ours[min],
            len as f64 / ours[min],
            ours[med],
            theirs[med],
            theirs[med] / ours[med],
        );
    }
}

fn main() {
    benches();
    // Also with no filter, or a filter that names it (`cargo bench --bench websocket -- ws_unmask`).
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if filters.is_empty()
        || filters
            .iter()
            .any(|f| "ws_unmask_interleaved".contains(f.as_str()))
    {
        unmask_interleaved();
    }
    Criterion::default().configure_from_args().final_summary();
}
