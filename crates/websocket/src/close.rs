//! Close codes and the payload of a Close frame (RFC 6455 §5.5.1, §7.4).

use bytes::{BufMut, Bytes};
use bytestring::ByteString;

use crate::Error;

/// A WebSocket close status code (RFC 6455 §7.4).
///
/// Any `u16` can be held; [`CloseCode::is_sendable`] says whether it may appear in a Close
/// frame. The constants name the codes the RFC defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: normal closure.
    pub const NORMAL: Self = Self(1000);
    /// 1001: the endpoint is going away (server shutdown, page navigation).
    pub const GOING_AWAY: Self = Self(1001);
    /// 1002: protocol error.
    pub const PROTOCOL_ERROR: Self = Self(1002);
    /// 1003: a data type the endpoint cannot accept (e.g. text on a binary-only protocol).
    pub const UNSUPPORTED_DATA: Self = Self(1003);
    /// 1005: no status code was present. Reserved: never sent on the wire.
    pub const NO_STATUS: Self = Self(1005);
    /// 1006: closed without a Close frame. Reserved: never sent on the wire.
    pub const ABNORMAL: Self = Self(1006);
    /// 1007: message data inconsistent with its type (invalid UTF-8 in text).
    pub const INVALID_PAYLOAD: Self = Self(1007);
    /// 1008: policy violation.
    pub const POLICY_VIOLATION: Self = Self(1008);
    /// 1009: message too big to process.
    pub const MESSAGE_TOO_BIG: Self = Self(1009);
    /// 1010: the client expected an extension the server did not negotiate.
    pub const MANDATORY_EXTENSION: Self = Self(1010);
    /// 1011: the server met an unexpected condition.
    pub const INTERNAL_ERROR: Self = Self(1011);

    /// Whether this code may appear in a Close frame: 1000-1003, 1007-1011 and 3000-4999.
    pub fn is_sendable(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1011 | 3000..=4999)
    }
}

impl From<u16> for CloseCode {
    fn from(code: u16) -> Self {
        Self(code)
    }
}

impl From<CloseCode> for u16 {
    fn from(code: CloseCode) -> Self {
        code.0
    }
}

impl std::fmt::Display for CloseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The body of a Close frame that carried a status code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    /// The status code.
    pub code: CloseCode,
    /// The reason, possibly empty; at most 123 bytes.
    pub reason: ByteString,
}

impl CloseFrame {
    /// Parses a received Close payload: empty, or a valid code followed by a UTF-8 reason.
    pub(crate) fn parse(payload: Bytes) -> Result<Option<Self>, Error> {
        match payload.len() {
            0 => Ok(None),
            1 => Err(Error::CloseFrameTooShort),
            _ => {
                let code = CloseCode(u16::from_be_bytes([payload[0], payload[1]]));
                if !code.is_sendable() {
                    return Err(Error::InvalidCloseCode(code.0));
                }
                let reason =
                    ByteString::try_from(payload.slice(2..)).map_err(|_| Error::InvalidUtf8)?;
                Ok(Some(Self { code, reason }))
            }
        }
    }

    /// Checks a Close body the caller wants to send and writes its payload into `dst`.
    pub(crate) fn encode_payload(
        code: Option<CloseCode>,
        reason: &str,
        dst: &mut impl BufMut,
    ) -> Result<(), Error> {
        match code {
            None if reason.is_empty() => Ok(()),
            None => Err(Error::CloseCodeNotSendable(CloseCode::NO_STATUS.0)),
            Some(code) if !code.is_sendable() => Err(Error::CloseCodeNotSendable(code.0)),
            Some(_) if reason.len() > 123 => Err(Error::ControlPayloadTooLong(reason.len() + 2)),
            Some(code) => {
                dst.put_u16(code.0);
                dst.put_slice(reason.as_bytes());
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sendable_codes_are_exactly_the_rfc_ranges() {
        let sendable: Vec<u16> = (0..=u16::MAX)
            .filter(|&c| CloseCode(c).is_sendable())
            .collect();
        assert_eq!(sendable.len(), 4 + 5 + 2000);
        for code in [0, 999, 1004, 1005, 1006, 1012, 1015, 1016, 2999, 5000] {
            assert!(!CloseCode(code).is_sendable(), "{code}");
        }
    }

    #[test]
    fn parse_rejects_one_byte_bad_code_and_bad_utf8() {
        assert_eq!(CloseFrame::parse(Bytes::new()), Ok(None));
        assert_eq!(
            CloseFrame::parse(Bytes::from_static(&[3])),
            Err(Error::CloseFrameTooShort)
        );
        assert_eq!(
            CloseFrame::parse(Bytes::from_static(&[0x03, 0xed])),
            Err(Error::InvalidCloseCode(1005))
        );
        assert_eq!(
            CloseFrame::parse(Bytes::from_static(&[0x03, 0xe8, 0xff])),
            Err(Error::InvalidUtf8)
        );
        let frame = CloseFrame::parse(Bytes::from_static(b"\x03\xe8bye"))
            .unwrap()
            .unwrap();
        assert_eq!(frame.code, CloseCode::NORMAL);
        assert_eq!(&*frame.reason, "bye");
    }
}
