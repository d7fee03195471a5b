//! Shared helpers for the integration tests: a raw frame builder that can break every rule, and
//! an echo harness over the sans-IO connection.
#![allow(dead_code, unreachable_pub)]

use bytes::BytesMut;
use rallymq_websocket::{
    CloseCode, Config, Connection, Error, Event, Frame, FrameDecoder, OpCode, RandomSource, Role,
    apply_mask,
};

pub const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A frame as a peer might send it, valid or not.
#[derive(Clone, Debug)]
pub struct Raw {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub mask: Option<[u8; 4]>,
    pub payload: Vec<u8>,
}

impl Raw {
    pub fn new(opcode: u8, payload: impl AsRef<[u8]>) -> Self {
        Self {
            fin: true,
            rsv: 0,
            opcode,
            mask: Some(KEY),
            payload: payload.as_ref().to_vec(),
        }
    }
    pub fn text(payload: impl AsRef<[u8]>) -> Self {
        Self::new(0x1, payload)
    }
    pub fn binary(payload: impl AsRef<[u8]>) -> Self {
        Self::new(0x2, payload)
    }
    pub fn cont(payload: impl AsRef<[u8]>) -> Self {
        Self::new(0x0, payload)
    }
    pub fn close(payload: impl AsRef<[u8]>) -> Self {
        Self::new(0x8, payload)
    }
    pub fn close_code(code: u16, reason: &str) -> Self {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        Self::close(payload)
    }
    pub fn ping(payload: impl AsRef<[u8]>) -> Self {
        Self::new(0x9, payload)
    }
    pub fn pong(payload: impl AsRef<[u8]>) -> Self {
        Self::new(0xa, payload)
    }
    pub fn fin(mut self, fin: bool) -> Self {
        self.fin = fin;
        self
    }
    pub fn rsv(mut self, rsv: u8) -> Self {
        self.rsv = rsv;
        self
    }
    pub fn unmasked(mut self) -> Self {
        self.mask = None;
        self
    }
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = vec![u8::from(self.fin) << 7 | (self.rsv & 7) << 4 | (self.opcode & 0xf)];
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let len = self.payload.len();
        if len < 126 {
            out.push(mask_bit | len as u8);
        } else if len <= 0xffff {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        let mut payload = self.payload.clone();
        if let Some(key) = self.mask {
            out.extend_from_slice(&key);
            apply_mask(&mut payload, key);
        }
        out.extend_from_slice(&payload);
        out
    }
}

/// What the server did in answer to some input.
#[derive(Debug, Default)]
pub struct Outcome {
    pub events: Vec<Event>,
    pub error: Option<Error>,
    /// Frames the server sent, decoded as a client would.
    pub sent: Vec<Frame>,
}

impl Outcome {
    pub fn close_sent(&self) -> Option<Option<CloseCode>> {
        self.sent
            .iter()
            .find(|f| f.opcode == OpCode::Close)
            .map(|f| {
                (f.payload.len() >= 2)
                    .then(|| CloseCode(u16::from_be_bytes([f.payload[0], f.payload[1]])))
            })
    }
    /// Asserts the server failed the connection with `code` and sent nothing after the Close.
    pub fn assert_failed(&self, code: CloseCode) {
        let error = self
            .error
            .as_ref()
            .expect("the connection should have failed");
        assert_eq!(error.close_code(), Some(code), "{error}");
        assert_eq!(self.close_sent(), Some(Some(code)));
        assert_eq!(self.sent.last().map(|f| f.opcode), Some(OpCode::Close));
    }
    pub fn echoed(&self) -> Vec<Frame> {
        self.sent
            .iter()
            .filter(|f| !f.opcode.is_control())
            .cloned()
            .collect()
    }
    pub fn pongs(&self) -> Vec<Frame> {
        self.sent
            .iter()
            .filter(|f| f.opcode == OpCode::Pong)
            .cloned()
            .collect()
    }
}

/// An echo server over a sans-IO connection, fed byte chunks.
pub struct EchoServer {
    pub ws: Connection,
    decoder: FrameDecoder,
    out: BytesMut,
}

impl EchoServer {
    pub fn new(config: Config) -> Self {
        Self {
            ws: Connection::server(config),
            decoder: FrameDecoder::new(Role::Client, usize::MAX),
            out: BytesMut::new(),
        }
    }

    pub fn default_config() -> Self {
        Self::new(Config::default())
    }

    /// Feeds `chunks` one at a time, draining events (echoing messages) after each.
    pub fn feed_chunks<'a>(&mut self, chunks: impl IntoIterator<Item = &'a [u8]>) -> Outcome {
        let mut outcome = Outcome::default();
        for chunk in chunks {
            self.ws.handle_bytes(chunk);
            self.drain(&mut outcome);
        }
        outcome
    }

    pub fn feed(&mut self, bytes: &[u8]) -> Outcome {
        self.feed_chunks([bytes])
    }

    pub fn feed_frames(&mut self, frames: &[Raw]) -> Outcome {
        let bytes: Vec<Vec<u8>> = frames.iter().map(Raw::bytes).collect();
        self.feed_chunks(bytes.iter().map(Vec::as_slice))
    }

    /// Feeds the concatenated frames in chops of `size` bytes.
    pub fn feed_chopped(&mut self, frames: &[Raw], size: usize) -> Outcome {
        let bytes: Vec<u8> = frames.iter().flat_map(Raw::bytes).collect();
        self.feed_chunks(bytes.chunks(size))
    }

    fn drain(&mut self, outcome: &mut Outcome) {
        loop {
            match self.ws.poll_event() {
                Ok(Some(event)) => {
                    match &event {
                        Event::Text(text) => self.ws.send_text(text).unwrap(),
                        Event::Binary(data) => self.ws.send_binary(data).unwrap(),
                        _ => {}
                    }
                    outcome.events.push(event);
                }
                Ok(None) => break,
                Err(error) => {
                    assert!(outcome.error.is_none(), "a second error: {error}");
                    outcome.error = Some(error);
                }
            }
        }
        if let Some(bytes) = self.ws.poll_transmit() {
            self.out.extend_from_slice(&bytes);
        }
        while let Some(frame) = self.decoder.decode(&mut self.out).unwrap() {
            outcome.sent.push(frame);
        }
    }
}

/// A client connection with fixed masking randomness, for tests.
pub fn test_client(config: Config) -> Connection {
    let mut counter = 0u8;
    Connection::client_with_random(
        config,
        RandomSource::from_fn(move |buf| {
            for b in buf.iter_mut() {
                counter = counter.wrapping_mul(31).wrapping_add(17);
                *b = counter;
            }
            Ok(())
        }),
    )
}
