//! Streaming decode: whole packets out of a growing buffer.

use bytes::{Buf, BytesMut};

use crate::wire::{VarIntScan, scan_var_int};
use crate::{Error, Packet, PacketType, ProtocolVersion, Publish};

/// Limits applied while decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest packet accepted, in bytes, fixed header included (MQTT 5 "Maximum Packet Size").
    /// A larger packet is refused from its fixed header, before its body is buffered.
    pub max_packet_size: u32,
}

impl Limits {
    /// The largest packet MQTT can express: 268,435,455 bytes of body plus a 5-byte header.
    pub const PROTOCOL_MAX_PACKET_SIZE: u32 = 268_435_460;
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_packet_size: Self::PROTOCOL_MAX_PACKET_SIZE,
        }
    }
}

/// Most that one incomplete decode reserves ahead of the bytes actually received.
const MAX_RESERVE_STEP: usize = 64 * 1024;

/// A fixed header whose packet type and flags have been checked.
struct FixedHeader {
    packet_type: PacketType,
    flags: u8,
    header_len: usize,
    total_len: usize,
}

/// Reads and checks the fixed header at the start of `buf`, if it is all there.
fn fixed_header(
    buf: &[u8],
    version: Option<ProtocolVersion>,
    limits: &Limits,
) -> Result<Option<FixedHeader>, Error> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let nibble = first >> 4;
    let flags = first & 0x0F;
    let packet_type = match PacketType::from_nibble(nibble) {
        Some(PacketType::Auth) if version.is_some_and(|v| !v.is_v5()) => {
            return Err(Error::InvalidPacketType(nibble));
        }
        Some(packet_type) => packet_type,
        None => return Err(Error::InvalidPacketType(nibble)),
    };
    if version.is_none() && packet_type != PacketType::Connect {
        return Err(Error::ConnectExpected(packet_type));
    }
    if packet_type
        .required_flags()
        .is_some_and(|required| required != flags)
    {
        return Err(Error::InvalidHeaderFlags {
            packet: packet_type,
            flags,
        });
    }
    let (remaining, len_bytes) = match scan_var_int(&buf[1..]) {
        VarIntScan::Complete(remaining, len_bytes) => (remaining, len_bytes),
        VarIntScan::Incomplete => return Ok(None),
        VarIntScan::Malformed => return Err(Error::MalformedRemainingLength),
    };
    let header_len = 1 + len_bytes;
    let total_len = header_len + remaining as usize;
    if total_len as u64 > u64::from(limits.max_packet_size) {
        return Err(Error::PacketTooLarge {
            size: total_len as u64,
            max: u64::from(limits.max_packet_size),
        });
    }
    Ok(Some(FixedHeader {
        packet_type,
        flags,
        header_len,
        total_len,
    }))
}

/// Decodes one packet from the front of `buf`.
///
/// Returns `Ok(None)` when `buf` does not hold a whole packet yet; nothing is consumed then (the
/// buffer may be grown toward the announced size, by at most 64 KiB at a time). On success the packet's bytes are split
/// off the front of `buf`, and its payload, topic and string fields are slices of them: no
/// copy. A CONNECT is decoded for its own protocol level whatever `version` says; every other
/// packet is decoded as `version` says.
///
/// On `Err` the connection cannot go on: send the error's
/// [`reason_code`](Error::reason_code) (MQTT 5) and close.
pub fn decode(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    limits: &Limits,
) -> Result<Option<Packet>, Error> {
    decode_inner(buf, Some(version), limits)
}

fn decode_inner(
    buf: &mut BytesMut,
    version: Option<ProtocolVersion>,
    limits: &Limits,
) -> Result<Option<Packet>, Error> {
    let Some(header) = fixed_header(buf, version, limits)? else {
        return Ok(None);
    };
    if buf.len() < header.total_len {
        // Grow toward the announced size, but only by a bounded step: a peer that announces a
        // large packet and sends nothing must not make us allocate it up front.
        buf.reserve((header.total_len - buf.len()).min(MAX_RESERVE_STEP));
        return Ok(None);
    }
    // Cut the whole packet out, then skip its fixed header in the frozen slice: one shared
    // allocation for the whole buffer, no reference count taken for the header, and
    // `Bytes::advance` inlines where `BytesMut::advance` does not.
    let mut body = buf.split_to(header.total_len).freeze();
    body.advance(header.header_len);
    // A CONNECT ignores `version`; the fallback only serves packets that cannot get here
    // without a version (fixed_header refused them).
    let version = version.unwrap_or(ProtocolVersion::V5);
    if header.packet_type == PacketType::Publish {
        // The packet that streams by: read here, inlined, so that the body just cut from the
        // buffer stays in registers (passed on to `Packet::read` it was reloaded through
        // memory, a store-forwarding stall in profiles).
        return Publish::read(body, header.flags, version).map(|publish| Some(publish.into()));
    }
    Packet::read(header.packet_type, header.flags, body, version)
}

/// A stateful decoder for one connection: it learns the protocol level from CONNECT (server
/// side) or is told it (client side), and applies its [`Limits`].
#[derive(Debug, Clone)]
pub struct Decoder {
    version: Option<ProtocolVersion>,
    limits: Limits,
}

impl Decoder {
    /// A server-side decoder: the first packet must be CONNECT, whose level it then adopts.
    pub fn new(limits: Limits) -> Self {
        Self {
            version: None,
            limits,
        }
    }

    /// A decoder for a known protocol version (client side, or a resumed connection).
    pub fn with_version(version: ProtocolVersion, limits: Limits) -> Self {
        Self {
            version: Some(version),
            limits,
        }
    }

    /// The protocol version in force, once known.
    pub fn version(&self) -> Option<ProtocolVersion> {
        self.version
    }

    /// Sets the protocol version (a client sets it when it sends CONNECT).
    pub fn set_version(&mut self, version: ProtocolVersion) {
        self.version = Some(version);
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Changes the limits (for example after MQTT 5 Maximum Packet Size negotiation).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Decodes the next packet, as [`decode`] does; until the version is known only CONNECT is
    /// accepted ([`Error::ConnectExpected`] otherwise, MQTT-3.1.0-1).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, Error> {
        let packet = decode_inner(buf, self.version, &self.limits)?;
        if let (None, Some(Packet::Connect(connect))) = (self.version, &packet) {
            self.version = Some(connect.protocol);
        }
        Ok(packet)
    }
}
