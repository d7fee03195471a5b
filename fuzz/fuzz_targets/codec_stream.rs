//! A byte stream fed to the streaming `Decoder` in chunks of random sizes gives the same
//! packets, the same error (if any) and the same leftover bytes as the stream fed whole.
//!
//! `arbitrary` chooses, from the first bytes of the input, the level (or a server-side decoder
//! that learns it from CONNECT), the maximum packet size (the protocol's or a small one) and
//! the chunk sizes; the rest of the input is the stream. After every chunk the decoder is
//! drained until it asks for more bytes, the way a connection driver uses it; `Ok(None)` must
//! leave the buffer as it was.
#![no_main]

use arbitrary::Unstructured;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rallymq_codec::{Decoder, Error, Limits, Packet, ProtocolVersion};

/// What `arbitrary` chose from the front of the input; the rest is the byte stream, raw.
#[derive(Debug)]
struct Setup {
    /// `None`: a server-side decoder that learns the level from CONNECT.
    level: Option<ProtocolVersion>,
    limits: Limits,
    /// Sizes of the chunks (0..=255 bytes each); what is left after them comes as one chunk.
    chunks: Vec<u8>,
}

impl Setup {
    fn read(u: &mut Unstructured<'_>) -> arbitrary::Result<Self> {
        let level = match u.arbitrary::<u8>()? % 4 {
            0 => None,
            1 => Some(ProtocolVersion::V3_1),
            2 => Some(ProtocolVersion::V3_1_1),
            _ => Some(ProtocolVersion::V5),
        };
        // A small maximum packet size (16..=271 bytes) or the protocol's.
        let limits = match u.arbitrary::<Option<u8>>()? {
            Some(limit) => Limits {
                max_packet_size: 16 + u32::from(limit),
            },
            None => Limits::default(),
        };
        let count = u.arbitrary::<u8>()? % 64;
        let chunks = (0..count)
            .map(|_| u.arbitrary::<u8>())
            .collect::<arbitrary::Result<_>>()?;
        Ok(Self {
            level,
            limits,
            chunks,
        })
    }

    fn decoder(&self) -> Decoder {
        match self.level {
            Some(level) => Decoder::with_version(level, self.limits),
            None => Decoder::new(self.limits),
        }
    }
}

/// What feeding a stream produced: the packets in order, then the error that stopped it (if
/// one did), and the bytes left in the buffer.
#[derive(Debug, PartialEq)]
struct Outcome {
    packets: Vec<Packet>,
    error: Option<Error>,
    left: BytesMut,
}

/// Decodes every whole packet in `buf`; `false` once an error stopped the stream.
fn drain(decoder: &mut Decoder, buf: &mut BytesMut, outcome: &mut Outcome) -> bool {
    loop {
        let before = buf.clone();
        match decoder.decode(buf) {
            Ok(Some(packet)) => {
                assert!(buf.len() < before.len(), "a packet from no bytes");
                outcome.packets.push(packet);
            }
            Ok(None) => {
                assert_eq!(*buf, before, "Ok(None) consumed bytes");
                return true;
            }
            Err(error) => {
                outcome.error = Some(error);
                return false;
            }
        }
    }
}

fn feed<'a>(setup: &Setup, chunks: impl IntoIterator<Item = &'a [u8]>) -> Outcome {
    let mut decoder = setup.decoder();
    let mut buf = BytesMut::new();
    let mut outcome = Outcome {
        packets: Vec::new(),
        error: None,
        left: BytesMut::new(),
    };
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        if !drain(&mut decoder, &mut buf, &mut outcome) {
            // The connection is closed on an error: what follows is never read.
            return outcome;
        }
    }
    outcome.left = buf;
    outcome
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(setup) = Setup::read(&mut u) else {
        return;
    };
    let bytes = u.take_rest();
    let whole = feed(&setup, [bytes]);

    let mut chunks = Vec::new();
    let mut rest = bytes;
    for &size in &setup.chunks {
        let (chunk, tail) = rest.split_at(usize::from(size).min(rest.len()));
        chunks.push(chunk);
        rest = tail;
    }
    chunks.push(rest);
    let chunked = feed(&setup, chunks);

    // Same packets; then the same error (neither keeps bytes after one), or the same
    // incomplete tail.
    assert_eq!(whole, chunked);
});
