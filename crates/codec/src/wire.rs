//! Wire primitives: the nom-based field reader over a packet body, and the matching writers.
//!
//! nom stays inside this module: parsers run over `&[u8]` slices of one frozen [`Bytes`] body,
//! and every length-delimited field comes out as a [`Bytes`] slice of that body, so decoding
//! copies no payload.

use bytes::{BufMut, Bytes};
use nom::IResult;
use nom::Parser;
use nom::bytes::complete::take;
use nom::number::complete::be_u32;

use crate::{Error, MqttString};

/// The largest value a Variable Byte Integer can hold (MQTT 5 §1.5.5).
pub const MAX_VARIABLE_BYTE_INTEGER: u32 = 268_435_455;

/// What scanning a Variable Byte Integer at the start of a buffer found.
pub(crate) enum VarIntScan {
    /// The value and how many bytes encode it.
    Complete(u32, usize),
    /// The buffer ends inside the integer.
    Incomplete,
    /// More than four bytes, or a non-minimal encoding.
    Malformed,
}

/// Scans a Variable Byte Integer (shared by the streaming fixed-header decoder and the body
/// reader). Rejects a non-minimal encoding such as `0x80 0x00`: the spec requires the minimum
/// number of bytes (MQTT-1.5.5-1).
pub(crate) fn scan_var_int(input: &[u8]) -> VarIntScan {
    let mut value: u32 = 0;
    for (index, byte) in input.iter().take(4).enumerate() {
        value |= u32::from(byte & 0x7F) << (7 * index);
        if byte & 0x80 == 0 {
            if index > 0 && *byte == 0 {
                return VarIntScan::Malformed;
            }
            return VarIntScan::Complete(value, index + 1);
        }
    }
    if input.len() >= 4 {
        VarIntScan::Malformed
    } else {
        VarIntScan::Incomplete
    }
}

/// nom parser for a Variable Byte Integer inside a complete body.
fn var_int(input: &[u8]) -> IResult<&[u8], u32> {
    match scan_var_int(input) {
        VarIntScan::Complete(value, len) => Ok((&input[len..], value)),
        VarIntScan::Incomplete | VarIntScan::Malformed => Err(nom::Err::Error(
            nom::error::Error::new(input, nom::error::ErrorKind::Verify),
        )),
    }
}

/// Reads the fields of one complete packet body.
pub(crate) struct Reader<'a> {
    source: &'a Bytes,
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(source: &'a Bytes) -> Self {
        Self {
            source,
            rest: source,
        }
    }

    fn run<O>(
        &mut self,
        mut parser: impl Parser<&'a [u8], Output = O, Error = nom::error::Error<&'a [u8]>>,
    ) -> Result<O, Error> {
        match parser.parse(self.rest) {
            Ok((rest, value)) => {
                self.rest = rest;
                Ok(value)
            }
            Err(_) => Err(Error::Truncated),
        }
    }

    #[inline]
    pub(crate) fn u8(&mut self) -> Result<u8, Error> {
        let (&byte, rest) = self.rest.split_first().ok_or(Error::Truncated)?;
        self.rest = rest;
        Ok(byte)
    }

    /// Written out rather than through nom: with [`binary`](Self::binary) it reads every
    /// PUBLISH's topic and packet identifier, and the open-coded version inlines.
    #[inline]
    pub(crate) fn u16(&mut self) -> Result<u16, Error> {
        match *self.rest {
            [high, low, ref rest @ ..] => {
                self.rest = rest;
                Ok(u16::from_be_bytes([high, low]))
            }
            _ => Err(Error::Truncated),
        }
    }

    pub(crate) fn u32(&mut self) -> Result<u32, Error> {
        self.run(be_u32)
    }

    pub(crate) fn var_int(&mut self) -> Result<u32, Error> {
        if self.rest.is_empty() {
            return Err(Error::Truncated);
        }
        match scan_var_int(self.rest) {
            VarIntScan::Complete(..) => self.run(var_int),
            VarIntScan::Incomplete => Err(Error::Truncated),
            VarIntScan::Malformed => Err(Error::MalformedVariableByteInteger),
        }
    }

    /// Binary Data: a two-byte length and that many bytes, shared with the body.
    #[inline]
    pub(crate) fn binary(&mut self) -> Result<Bytes, Error> {
        let len = usize::from(self.u16()?);
        if self.rest.len() < len {
            return Err(Error::Truncated);
        }
        let (field, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(self.source.slice_ref(field))
    }

    /// A UTF-8 Encoded String, validated, shared with the body.
    pub(crate) fn string(&mut self) -> Result<MqttString, Error> {
        MqttString::from_bytes(self.binary()?)
    }

    /// A reader over the next `len` bytes; this reader moves past them.
    pub(crate) fn sub_reader(&mut self, len: usize) -> Result<Self, Error> {
        let slice = self.run(take(len))?;
        Ok(Self {
            source: self.source,
            rest: slice,
        })
    }

    /// Moves past the next byte if it is 0 (a zero length), and says whether it did.
    pub(crate) fn skip_zero_byte(&mut self) -> bool {
        match self.rest.split_first() {
            Some((0, rest)) => {
                self.rest = rest;
                true
            }
            _ => false,
        }
    }

    /// How many length-prefixed fields, each followed by `trailing` bytes, the rest holds (the
    /// whole ones, counting at most `limit`): enough to size a list before reading it. The
    /// limit keeps a packet of unchecked fields from reserving more than a few kilobytes.
    pub(crate) fn count_fields(&self, trailing: usize, limit: usize) -> usize {
        let mut rest = self.rest;
        let mut count = 0;
        while let ([high, low, after @ ..], true) = (rest, count < limit) {
            let len = usize::from(u16::from_be_bytes([*high, *low])) + trailing;
            let Some(next) = after.get(len..) else { break };
            rest = next;
            count += 1;
        }
        count
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    pub(crate) fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// Fails if anything is left: no bytes may follow the last field (strict decoding).
    pub(crate) fn finish(&self) -> Result<(), Error> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(Error::TrailingBytes(self.rest.len()))
        }
    }
}

/// Bytes a Variable Byte Integer of `value` takes.
pub(crate) fn var_int_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

pub(crate) fn put_var_int(buf: &mut impl BufMut, mut value: usize) {
    loop {
        // Truncation to the low seven bits is the encoding.
        let mut byte = (value & 0x7F) as u8;
        value >>= 7;
        if value > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if value == 0 {
            break;
        }
    }
}

/// Bytes a Binary Data or UTF-8 string field of `len` bytes takes.
pub(crate) fn field_len(len: usize) -> usize {
    2 + len
}

/// Writes a two-byte length and the bytes. Callers hold validated values of at most 65,535
/// bytes ([`MqttString`], topic types, or checked binary fields).
pub(crate) fn put_field(buf: &mut impl BufMut, bytes: &[u8]) {
    debug_assert!(bytes.len() <= crate::MAX_STRING_LEN);
    buf.put_u16(bytes.len() as u16);
    buf.put_slice(bytes);
}

/// Checks a binary field fits in two length bytes (a caller error otherwise).
pub(crate) fn check_binary(bytes: &[u8]) -> Result<(), Error> {
    if bytes.len() > crate::MAX_STRING_LEN {
        Err(Error::BinaryTooLong(bytes.len()))
    } else {
        Ok(())
    }
}
