//! The control packets and their encoding.

mod connect;
mod disconnect;
mod publish;
mod subscribe;

use bytes::{BufMut, Bytes, BytesMut};

pub use connect::{ConnAck, Connect, Will};
pub use disconnect::{Auth, Disconnect};
pub use publish::{Ack, Publish};
pub use subscribe::{
    RetainHandling, SubAck, Subscribe, Subscription, SubscriptionOptions, UnsubAck, Unsubscribe,
};

use crate::wire::{MAX_VARIABLE_BYTE_INTEGER, Reader, put_var_int, var_int_len};
use crate::{Error, PacketType, ProtocolVersion};

/// One MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)] // each variant is the packet of the same name
pub enum Packet {
    /// Boxed: a CONNECT is far larger than the packets that stream by, and comes once.
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(Ack),
    PubRec(Ack),
    PubRel(Ack),
    PubComp(Ack),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    /// MQTT 5 only.
    Auth(Auth),
}

impl Packet {
    /// The packet's type.
    pub fn packet_type(&self) -> PacketType {
        match self {
            Self::Connect(_) => PacketType::Connect,
            Self::ConnAck(_) => PacketType::ConnAck,
            Self::Publish(_) => PacketType::Publish,
            Self::PubAck(_) => PacketType::PubAck,
            Self::PubRec(_) => PacketType::PubRec,
            Self::PubRel(_) => PacketType::PubRel,
            Self::PubComp(_) => PacketType::PubComp,
            Self::Subscribe(_) => PacketType::Subscribe,
            Self::SubAck(_) => PacketType::SubAck,
            Self::Unsubscribe(_) => PacketType::Unsubscribe,
            Self::UnsubAck(_) => PacketType::UnsubAck,
            Self::PingReq => PacketType::PingReq,
            Self::PingResp => PacketType::PingResp,
            Self::Disconnect(_) => PacketType::Disconnect,
            Self::Auth(_) => PacketType::Auth,
        }
    }

    /// CONNECT carries its own version; every other packet is encoded as `version` says.
    #[inline]
    fn effective_version(&self, version: ProtocolVersion) -> ProtocolVersion {
        match self {
            Self::Connect(connect) => connect.protocol,
            _ => version,
        }
    }

    /// The Remaining Length: bytes after the fixed header.
    #[inline]
    fn remaining_len(&self, version: ProtocolVersion) -> usize {
        let version = self.effective_version(version);
        match self {
            Self::Connect(connect) => connect.body_len(),
            Self::ConnAck(connack) => connack.body_len(version),
            Self::Publish(publish) => publish.body_len(version),
            Self::PubAck(ack) | Self::PubRec(ack) | Self::PubRel(ack) | Self::PubComp(ack) => {
                ack.body_len(version)
            }
            Self::Subscribe(subscribe) => subscribe.body_len(version),
            Self::SubAck(suback) => suback.body_len(version),
            Self::Unsubscribe(unsubscribe) => unsubscribe.body_len(version),
            Self::UnsubAck(unsuback) => unsuback.body_len(version),
            Self::PingReq | Self::PingResp => 0,
            Self::Disconnect(disconnect) => disconnect.body_len(version),
            Self::Auth(auth) => auth.body_len(),
        }
    }

    /// Total bytes the packet takes on the wire for `version`, fixed header included.
    pub fn encoded_len(&self, version: ProtocolVersion) -> usize {
        let remaining = self.remaining_len(version);
        1 + var_int_len(remaining) + remaining
    }

    /// Checks that the packet can be encoded for `version` (caller errors).
    #[inline]
    fn check(&self, version: ProtocolVersion) -> Result<(), Error> {
        match self {
            Self::Connect(connect) => connect.check(),
            Self::Publish(publish) => publish.check(version),
            Self::Subscribe(subscribe) => subscribe.check(),
            Self::Unsubscribe(unsubscribe) => unsubscribe.check(),
            Self::Auth(_) if !version.is_v5() => Err(Error::NotInVersion("AUTH")),
            _ => Ok(()),
        }
    }

    /// Appends the packet, encoded for `version`, to `buf`. CONNECT is encoded for its own
    /// [`Connect::protocol`]. Fails only for a packet MQTT cannot carry (see [`Error`]'s caller
    /// errors, and a Remaining Length over 268,435,455); nothing is written then.
    ///
    /// MQTT 5 fields (properties, reason codes other than success) of packets encoded for an
    /// earlier version are left out, as those versions have no place for them.
    pub fn encode(&self, version: ProtocolVersion, buf: &mut impl BufMut) -> Result<(), Error> {
        self.check(version)?;
        let remaining = self.remaining_len(version);
        if remaining > MAX_VARIABLE_BYTE_INTEGER as usize {
            return Err(Error::PacketTooLarge {
                size: (1 + var_int_len(remaining) + remaining) as u64,
                max: u64::from(MAX_VARIABLE_BYTE_INTEGER) + 5,
            });
        }
        let version = self.effective_version(version);
        let flags = match self {
            Self::Publish(publish) => publish.flags(),
            other => other.packet_type().required_flags().unwrap_or(0),
        };
        buf.put_u8(((self.packet_type() as u8) << 4) | flags);
        put_var_int(buf, remaining);
        match self {
            Self::Connect(connect) => connect.write_body(buf),
            Self::ConnAck(connack) => connack.write_body(version, buf),
            Self::Publish(publish) => publish.write_body(version, buf),
            Self::PubAck(ack) | Self::PubRec(ack) | Self::PubRel(ack) | Self::PubComp(ack) => {
                ack.write_body(version, buf)
            }
            Self::Subscribe(subscribe) => subscribe.write_body(version, buf),
            Self::SubAck(suback) => suback.write_body(version, buf),
            Self::Unsubscribe(unsubscribe) => unsubscribe.write_body(version, buf),
            Self::UnsubAck(unsuback) => unsuback.write_body(version, buf),
            Self::PingReq | Self::PingResp => {}
            Self::Disconnect(disconnect) => disconnect.write_body(version, buf),
            Self::Auth(auth) => auth.write_body(buf),
        }
        Ok(())
    }

    /// The packet encoded for `version` into a new buffer.
    pub fn to_bytes(&self, version: ProtocolVersion) -> Result<Bytes, Error> {
        let mut buf = BytesMut::with_capacity(self.encoded_len(version));
        self.encode(version, &mut buf)?;
        Ok(buf.freeze())
    }

    /// Decodes one packet body whose fixed header has been checked. Never `Ok(None)`: the
    /// result is already in [`decode`](crate::decode)'s shape so that the packet is built in
    /// place rather than moved into an `Option` afterwards.
    pub(crate) fn read(
        packet_type: PacketType,
        flags: u8,
        body: Bytes,
        version: ProtocolVersion,
    ) -> Result<Option<Self>, Error> {
        let reader = &mut Reader::new(&body);
        Ok(Some(match packet_type {
            PacketType::Connect => Self::Connect(Box::new(Connect::read(reader)?)),
            PacketType::ConnAck => Self::ConnAck(ConnAck::read(reader, version)?),
            // No caller reaches this arm today: `decode` reads PUBLISH before calling here, as
            // routing it through this function (inlined) measured 3-4% slower for a small
            // PUBLISH. The arm keeps the match total without a panic path, and `flags` is kept
            // for it.
            PacketType::Publish => Self::Publish(Publish::read(body, flags, version)?),
            PacketType::PubAck => Self::PubAck(Ack::read(reader, packet_type, version)?),
            PacketType::PubRec => Self::PubRec(Ack::read(reader, packet_type, version)?),
            PacketType::PubRel => Self::PubRel(Ack::read(reader, packet_type, version)?),
            PacketType::PubComp => Self::PubComp(Ack::read(reader, packet_type, version)?),
            PacketType::Subscribe => Self::Subscribe(Subscribe::read(reader, version)?),
            PacketType::SubAck => Self::SubAck(SubAck::read(reader, version)?),
            PacketType::Unsubscribe => Self::Unsubscribe(Unsubscribe::read(reader, version)?),
            PacketType::UnsubAck => Self::UnsubAck(UnsubAck::read(reader, version)?),
            PacketType::PingReq => {
                reader.finish()?;
                Self::PingReq
            }
            PacketType::PingResp => {
                reader.finish()?;
                Self::PingResp
            }
            PacketType::Disconnect => Self::Disconnect(Disconnect::read(reader, version)?),
            PacketType::Auth => Self::Auth(Auth::read(reader)?),
        }))
    }
}

macro_rules! impl_from {
    ($($variant:ident($ty:ty)),*) => {
        $( impl From<$ty> for Packet {
            fn from(packet: $ty) -> Self {
                Self::$variant(packet)
            }
        } )*
    };
}

impl From<Connect> for Packet {
    fn from(connect: Connect) -> Self {
        Self::Connect(Box::new(connect))
    }
}

impl_from!(
    ConnAck(ConnAck),
    Publish(Publish),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    Disconnect(Disconnect),
    Auth(Auth)
);
