//! The frame layer (RFC 6455 §5.2): headers, whole frames, a stateless frame decoder and the
//! encoder.
//!
//! Message-level rules (continuations, UTF-8, the close handshake) live in
//! [`crate::Connection`]; this module checks what one frame can show on its own.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::{Error, Role, apply_mask};

/// The largest payload a control frame may carry.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// The longest possible frame header: 2 bytes, an 8-byte length and a 4-byte masking key.
pub const MAX_HEADER_LEN: usize = 14;

/// A frame opcode. The reserved opcodes are rejected when a header is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpCode {
    /// 0x0: continues a fragmented text or binary message.
    Continuation,
    /// 0x1: the first frame of a text message.
    Text,
    /// 0x2: the first frame of a binary message.
    Binary,
    /// 0x8: begins or answers the close handshake.
    Close,
    /// 0x9: asks the peer for a pong.
    Ping,
    /// 0xA: answers a ping, or an unsolicited heartbeat.
    Pong,
}

impl OpCode {
    /// The opcode's 4-bit value on the wire.
    pub fn as_u8(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xa,
        }
    }

    /// The opcode for a 4-bit value, or the reserved value back as an error.
    pub fn from_u8(value: u8) -> Result<Self, Error> {
        match value {
            0x0 => Ok(Self::Continuation),
            0x1 => Ok(Self::Text),
            0x2 => Ok(Self::Binary),
            0x8 => Ok(Self::Close),
            0x9 => Ok(Self::Ping),
            0xa => Ok(Self::Pong),
            other => Err(Error::ReservedOpcode(other)),
        }
    }

    /// Whether this is a control opcode (close, ping, pong).
    pub fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// FIN: this is the last frame of its message.
    pub fin: bool,
    /// The opcode.
    pub opcode: OpCode,
    /// The masking key, present on every frame a client sends.
    pub mask: Option<[u8; 4]>,
    /// The payload length in bytes.
    pub payload_len: u64,
}

impl FrameHeader {
    /// Parses a header from the start of `buf`, returning it and its length in bytes.
    ///
    /// `Ok(None)` means `buf` holds only part of a header. Errors are reported as soon as the
    /// bytes that show them are present: reserved bits and opcodes from the first two bytes, a
    /// length not in its shortest encoding (RFC 6455 §5.2) or a 64-bit one with its top bit set
    /// from the length bytes.
    pub fn parse(buf: &[u8]) -> Result<Option<(Self, usize)>, Error> {
        let [b0, b1, ..] = *buf else {
            return Ok(None);
        };
        if b0 & 0x70 != 0 {
            return Err(Error::ReservedBitsSet);
        }
        let opcode = OpCode::from_u8(b0 & 0x0f)?;
        let fin = b0 & 0x80 != 0;
        let masked = b1 & 0x80 != 0;
        let (payload_len, len_end) = match b1 & 0x7f {
            126 => match buf.get(2..4) {
                Some(&[a, b]) => (u64::from(u16::from_be_bytes([a, b])), 4),
                _ => return Ok(None),
            },
            127 => match buf.get(2..10) {
                Some(bytes) => {
                    let mut be = [0; 8];
                    be.copy_from_slice(bytes);
                    let len = u64::from_be_bytes(be);
                    if len >> 63 != 0 {
                        return Err(Error::PayloadLengthTopBitSet);
                    }
                    (len, 10)
                }
                None => return Ok(None),
            },
            short => (u64::from(short), 2),
        };
        // The shortest encoding is the one `encode` writes: 7 bits up to 125, 16 up to 65,535.
        let shortest = match payload_len {
            0..=125 => 2,
            126..=0xffff => 4,
            _ => 10,
        };
        if len_end != shortest {
            return Err(Error::NonMinimalPayloadLength(payload_len));
        }
        let (mask, header_len) = if masked {
            match buf.get(len_end..len_end + 4) {
                Some(&[a, b, c, d]) => (Some([a, b, c, d]), len_end + 4),
                _ => return Ok(None),
            }
        } else {
            (None, len_end)
        };
        Ok(Some((
            Self {
                fin,
                opcode,
                mask,
                payload_len,
            },
            header_len,
        )))
    }

    /// Checks what a single header can break, for a frame received in `role`.
    ///
    /// Masking must match the role, control frames must be unfragmented and at most 125
    /// bytes, and the payload must fit `max_frame_len`.
    pub fn check(&self, role: Role, max_frame_len: usize) -> Result<(), Error> {
        match (role, self.mask.is_some()) {
            (Role::Server, false) => return Err(Error::UnmaskedFrame),
            (Role::Client, true) => return Err(Error::MaskedFrame),
            _ => {}
        }
        if self.opcode.is_control() {
            if !self.fin {
                return Err(Error::FragmentedControlFrame);
            }
            if self.payload_len > MAX_CONTROL_PAYLOAD as u64 {
                return Err(Error::ControlFrameTooLong(self.payload_len));
            }
        }
        if self.payload_len > max_frame_len as u64 {
            return Err(Error::FrameTooLarge {
                len: self.payload_len,
                limit: max_frame_len,
            });
        }
        Ok(())
    }

    /// The encoded length of this header: the shortest length encoding is always used.
    pub fn encoded_len(&self) -> usize {
        let len_bytes = match self.payload_len {
            0..=125 => 0,
            126..=0xffff => 2,
            _ => 8,
        };
        2 + len_bytes + if self.mask.is_some() { 4 } else { 0 }
    }

    /// Writes this header with the shortest length encoding.
    pub fn encode(&self, dst: &mut impl BufMut) {
        dst.put_u8(u8::from(self.fin) << 7 | self.opcode.as_u8());
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        match self.payload_len {
            len @ 0..=125 => dst.put_u8(mask_bit | len as u8),
            len @ 126..=0xffff => {
                dst.put_u8(mask_bit | 126);
                dst.put_u16(len as u16);
            }
            len => {
                dst.put_u8(mask_bit | 127);
                dst.put_u64(len);
            }
        }
        if let Some(key) = self.mask {
            dst.put_slice(&key);
        }
    }
}

/// A whole frame with its payload unmasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// FIN: this is the last frame of its message.
    pub fin: bool,
    /// The opcode.
    pub opcode: OpCode,
    /// The unmasked payload.
    pub payload: Bytes,
}

impl Frame {
    /// A frame with FIN set.
    pub fn new(opcode: OpCode, payload: impl Into<Bytes>) -> Self {
        Self {
            fin: true,
            opcode,
            payload: payload.into(),
        }
    }

    /// Appends this frame to `dst`, masked with `mask` when given (the client role).
    pub fn encode(&self, mask: Option<[u8; 4]>, dst: &mut BytesMut) {
        encode_frame(self.fin, self.opcode, mask, &self.payload, dst);
    }
}

/// Appends a frame to `dst`: the header, then the payload, masked in place when `mask` is given.
///
/// The shortest length encoding is used. This encodes whatever it is given; the frame rules for
/// what to send are enforced by [`crate::Connection`].
pub fn encode_frame(
    fin: bool,
    opcode: OpCode,
    mask: Option<[u8; 4]>,
    payload: &[u8],
    dst: &mut BytesMut,
) {
    let header = FrameHeader {
        fin,
        opcode,
        mask,
        payload_len: payload.len() as u64,
    };
    dst.reserve(header.encoded_len() + payload.len());
    header.encode(dst);
    let start = dst.len();
    dst.extend_from_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut dst[start..], key);
    }
}

/// A stateless decoder of whole frames for one role.
///
/// It checks what each frame shows on its own ([`FrameHeader::check`]) and hands out payloads
/// unmasked in place, as `Bytes` that share the input buffer's memory. Message-level rules need
/// [`crate::Connection`].
///
/// ```
/// use bytes::BytesMut;
/// use rallymq_websocket::{FrameDecoder, OpCode, Role};
///
/// // RFC 6455 §5.7: a masked "Hello" from a client.
/// let mut input = BytesMut::from(&[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58][..]);
/// let frame = FrameDecoder::new(Role::Server, 1 << 20).decode(&mut input).unwrap().unwrap();
/// assert_eq!((frame.opcode, &frame.payload[..]), (OpCode::Text, &b"Hello"[..]));
/// assert!(input.is_empty());
/// ```
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    role: Role,
    max_frame_len: usize,
}

impl FrameDecoder {
    /// A decoder for frames received in `role`, refusing payloads over `max_frame_len`.
    pub fn new(role: Role, max_frame_len: usize) -> Self {
        Self {
            role,
            max_frame_len,
        }
    }

    /// Decodes one frame from the front of `input`.
    ///
    /// `Ok(None)` means more bytes are needed, and nothing was consumed (capacity for the rest
    /// of the frame is reserved, so one read can complete it). An oversize frame is refused from
    /// its header, before its payload is buffered.
    pub fn decode(&mut self, input: &mut BytesMut) -> Result<Option<Frame>, Error> {
        let Some((header, header_len)) = FrameHeader::parse(input)? else {
            return Ok(None);
        };
        header.check(self.role, self.max_frame_len)?;
        // `check` bounded the length by a `usize` limit.
        let payload_len = header.payload_len as usize;
        let frame_len = header_len + payload_len;
        if input.len() < frame_len {
            input.reserve(frame_len - input.len());
            return Ok(None);
        }
        input.advance(header_len);
        let mut payload = input.split_to(payload_len);
        if let Some(key) = header.mask {
            apply_mask(&mut payload, key);
        }
        Ok(Some(Frame {
            fin: header.fin,
            opcode: header.opcode,
            payload: payload.freeze(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(role: Role, bytes: &[u8]) -> Result<Option<Frame>, Error> {
        FrameDecoder::new(role, 1 << 20).decode(&mut BytesMut::from(bytes))
    }

    // RFC 6455 §5.7 examples.
    const UNMASKED_HELLO: [u8; 7] = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
    const MASKED_HELLO: [u8; 11] = [
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    const HEL: [u8; 5] = [0x01, 0x03, 0x48, 0x65, 0x6c];
    const LO: [u8; 4] = [0x80, 0x02, 0x6c, 0x6f];
    const UNMASKED_PING: [u8; 7] = [0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
    const MASKED_PONG: [u8; 11] = [
        0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];

    #[test]
    fn rfc_5_7_single_frame_unmasked_text() {
        let frame = decode_all(Role::Client, &UNMASKED_HELLO).unwrap().unwrap();
        assert_eq!(frame, Frame::new(OpCode::Text, &b"Hello"[..]));
        let mut out = BytesMut::new();
        frame.encode(None, &mut out);
        assert_eq!(&out[..], &UNMASKED_HELLO);
    }

    #[test]
    fn rfc_5_7_single_frame_masked_text() {
        let frame = decode_all(Role::Server, &MASKED_HELLO).unwrap().unwrap();
        assert_eq!(frame, Frame::new(OpCode::Text, &b"Hello"[..]));
        let mut out = BytesMut::new();
        frame.encode(Some([0x37, 0xfa, 0x21, 0x3d]), &mut out);
        assert_eq!(&out[..], &MASKED_HELLO);
    }

    #[test]
    fn rfc_5_7_fragmented_unmasked_text() {
        let mut input = BytesMut::from(&[&HEL[..], &LO[..]].concat()[..]);
        let mut decoder = FrameDecoder::new(Role::Client, 1 << 20);
        let first = decoder.decode(&mut input).unwrap().unwrap();
        let second = decoder.decode(&mut input).unwrap().unwrap();
        assert_eq!((first.fin, first.opcode), (false, OpCode::Text));
        assert_eq!(&first.payload[..], b"Hel");
        assert_eq!((second.fin, second.opcode), (true, OpCode::Continuation));
        assert_eq!(&second.payload[..], b"lo");
        let mut out = BytesMut::new();
        first.encode(None, &mut out);
        second.encode(None, &mut out);
        assert_eq!(&out[..], &[&HEL[..], &LO[..]].concat()[..]);
    }

    #[test]
    fn rfc_5_7_ping_and_masked_pong() {
        let ping = decode_all(Role::Client, &UNMASKED_PING).unwrap().unwrap();
        assert_eq!(ping, Frame::new(OpCode::Ping, &b"Hello"[..]));
        let pong = decode_all(Role::Server, &MASKED_PONG).unwrap().unwrap();
        assert_eq!(pong, Frame::new(OpCode::Pong, &b"Hello"[..]));
    }

    #[test]
    fn rfc_5_7_256_bytes_and_64_kib_binary_headers() {
        let header = FrameHeader {
            fin: true,
            opcode: OpCode::Binary,
            mask: None,
            payload_len: 256,
        };
        let mut out = BytesMut::new();
        header.encode(&mut out);
        assert_eq!(&out[..], &[0x82, 0x7e, 0x01, 0x00]);
        let header = FrameHeader {
            payload_len: 65536,
            ..header
        };
        out.clear();
        header.encode(&mut out);
        assert_eq!(
            &out[..],
            &[0x82, 0x7f, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00]
        );
        assert_eq!(FrameHeader::parse(&out), Ok(Some((header, 10))));
    }

    #[test]
    fn rfc6455_5_2_non_minimal_lengths_are_refused() {
        // "Hi" with a 16-bit length, then with a 64-bit one; 300 bytes with a 64-bit length.
        for (bytes, len) in [
            (&b"\x82\x7e\x00\x02Hi"[..], 2),
            (b"\x82\x7f\x00\x00\x00\x00\x00\x00\x00\x02Hi", 2),
            (b"\x82\x7f\x00\x00\x00\x00\x00\x00\x01\x2c", 300),
        ] {
            assert_eq!(
                FrameHeader::parse(bytes),
                Err(Error::NonMinimalPayloadLength(len)),
                "{bytes:x?}"
            );
        }
        // The shortest encodings at each boundary parse.
        for (bytes, len) in [
            (&b"\x82\x7d"[..], 125),
            (b"\x82\x7e\x00\x7e", 126),
            (b"\x82\x7e\xff\xff", 65535),
            (b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00", 65536),
        ] {
            let (header, _) = FrameHeader::parse(bytes).unwrap().unwrap();
            assert_eq!(header.payload_len, len);
        }
    }

    #[test]
    fn header_errors() {
        assert_eq!(
            decode_all(Role::Client, &[0xc1, 0x00]),
            Err(Error::ReservedBitsSet)
        );
        assert_eq!(
            decode_all(Role::Client, &[0x83, 0x00]),
            Err(Error::ReservedOpcode(3))
        );
        assert_eq!(
            decode_all(Role::Client, &[0x82, 0x7f, 0x80, 0, 0, 0, 0, 0, 0, 0]),
            Err(Error::PayloadLengthTopBitSet)
        );
        assert_eq!(
            decode_all(Role::Server, &UNMASKED_HELLO),
            Err(Error::UnmaskedFrame)
        );
        assert_eq!(
            decode_all(Role::Client, &MASKED_HELLO),
            Err(Error::MaskedFrame)
        );
        assert_eq!(
            decode_all(Role::Client, &[0x09, 0x00]),
            Err(Error::FragmentedControlFrame)
        );
        assert_eq!(
            decode_all(Role::Client, &[0x89, 0x7e, 0x00, 0x7e]),
            Err(Error::ControlFrameTooLong(126))
        );
        assert_eq!(
            FrameDecoder::new(Role::Client, 10).decode(&mut BytesMut::from(&[0x82, 0x0b][..])),
            Err(Error::FrameTooLarge { len: 11, limit: 10 })
        );
    }

    #[test]
    fn every_strict_prefix_needs_more_and_consumes_nothing() {
        for bytes in [&MASKED_HELLO[..], &HEL[..]] {
            let role = if bytes[1] & 0x80 != 0 {
                Role::Server
            } else {
                Role::Client
            };
            for cut in 0..bytes.len() {
                let mut input = BytesMut::from(&bytes[..cut]);
                assert_eq!(FrameDecoder::new(role, 100).decode(&mut input), Ok(None));
                assert_eq!(&input[..], &bytes[..cut]);
            }
        }
    }
}
