//! Raw bytes into `rallymq_codec::decode` at each protocol level (3, 4 and 5), with the
//! protocol's maximum packet size and with a small one.
//!
//! Checked on every input:
//! * nothing panics, and every error maps to a reason code;
//! * `Ok(None)` consumes nothing;
//! * a decoded packet took at least one byte and no more than the maximum packet size;
//! * a decoded packet re-encodes (a packet the decoder accepts is one the encoder can write),
//!   to exactly `encoded_len` bytes, and those bytes decode to an equal packet, consuming them
//!   all.
//!
//! The input is decoded as a stream: after a packet, decoding goes on with the bytes left.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rallymq_codec::{Limits, Packet, ProtocolVersion, decode};

const VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V3_1,
    ProtocolVersion::V3_1_1,
    ProtocolVersion::V5,
];

/// Small enough that ordinary inputs hit the "packet too large" path.
const SMALL: Limits = Limits {
    max_packet_size: 24,
};

fuzz_target!(|data: &[u8]| {
    for version in VERSIONS {
        for limits in [Limits::default(), SMALL] {
            decode_all(data, version, &limits);
        }
    }
});

fn decode_all(data: &[u8], version: ProtocolVersion, limits: &Limits) {
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.clone();
        match decode(&mut buf, version, limits) {
            Ok(None) => {
                assert_eq!(buf, before, "Ok(None) consumed bytes");
                return;
            }
            Err(error) => {
                // Every peer error has a reason code to answer it with.
                let _ = error.reason_code();
                return;
            }
            Ok(Some(packet)) => {
                let consumed = before.len() - buf.len();
                assert!(consumed > 0, "a packet from no bytes: {packet:?}");
                assert!(
                    consumed as u64 <= u64::from(limits.max_packet_size),
                    "{consumed} bytes over the limit {limits:?}"
                );
                reencode(&packet, version);
            }
        }
    }
}

/// The packet, encoded again for `version`, decodes to itself.
fn reencode(packet: &Packet, version: ProtocolVersion) {
    let wire = packet
        .to_bytes(version)
        .unwrap_or_else(|error| panic!("decoded {packet:?} does not encode: {error}"));
    assert_eq!(wire.len(), packet.encoded_len(version), "{packet:?}");
    let mut buf = BytesMut::from(&wire[..]);
    let again = decode(&mut buf, version, &Limits::default())
        .unwrap_or_else(|error| panic!("re-encoded {packet:?} does not decode: {error}"))
        .unwrap_or_else(|| panic!("re-encoded {packet:?} is incomplete"));
    assert_eq!(&again, packet);
    assert!(buf.is_empty(), "{} bytes left after {packet:?}", buf.len());
}
