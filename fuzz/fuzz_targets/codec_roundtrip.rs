//! decode → encode → decode: whatever the decoder accepts survives a round trip unchanged, and
//! our encoding is a fixed point (encoding the re-decoded packet gives the same bytes).
//!
//! `arbitrary` chooses the protocol level and whether a server-side decoder (which must first
//! see CONNECT and adopts its level) or a client-side one (told the level) reads the bytes.
//! All packets decoded from the input are then encoded into one stream, which a fresh decoder
//! of the same kind must read back as the same packets, consuming it all.
#![no_main]

use arbitrary::Unstructured;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rallymq_codec::{Decoder, Limits, ProtocolVersion};

/// The first input byte chooses the decoder: `None` is a server-side decoder that learns the
/// level from CONNECT. The rest of the input is the byte stream, raw, so that seeds are plain
/// packets behind one byte.
fn level(u: &mut Unstructured<'_>) -> arbitrary::Result<Option<ProtocolVersion>> {
    Ok(match u.arbitrary::<u8>()? % 4 {
        0 => None,
        1 => Some(ProtocolVersion::V3_1),
        2 => Some(ProtocolVersion::V3_1_1),
        _ => Some(ProtocolVersion::V5),
    })
}

fn new_decoder(level: Option<ProtocolVersion>) -> Decoder {
    match level {
        Some(level) => Decoder::with_version(level, Limits::default()),
        None => Decoder::new(Limits::default()),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(level) = level(&mut u) else {
        return;
    };
    let mut decoder = new_decoder(level);
    let mut buf = BytesMut::from(u.take_rest());
    let mut packets = Vec::new();
    // The level each packet was decoded at (a server-side decoder learns it from CONNECT).
    let mut stream = BytesMut::new();
    while let Ok(Some(packet)) = decoder.decode(&mut buf) {
        let version = decoder
            .version()
            .expect("a decoder that returned a packet knows its level");
        let wire = packet
            .to_bytes(version)
            .unwrap_or_else(|error| panic!("decoded {packet:?} does not encode: {error}"));
        assert_eq!(wire.len(), packet.encoded_len(version));

        let mut single = BytesMut::from(&wire[..]);
        let mut fresh = Decoder::with_version(version, Limits::default());
        let again = fresh
            .decode(&mut single)
            .unwrap_or_else(|error| panic!("re-encoded {packet:?} does not decode: {error}"))
            .unwrap_or_else(|| panic!("re-encoded {packet:?} is incomplete"));
        assert_eq!(again, packet);
        assert!(single.is_empty());
        let wire_again = again.to_bytes(version).expect("an equal packet encodes");
        assert_eq!(
            wire_again, wire,
            "encoding is not a fixed point for {packet:?}"
        );

        stream.extend_from_slice(&wire);
        packets.push(packet);
    }

    // The re-encoded stream reads back as the same packets through a decoder of the same kind.
    let mut decoder = new_decoder(level);
    for packet in &packets {
        let again = decoder
            .decode(&mut stream)
            .unwrap_or_else(|error| panic!("re-encoded stream fails at {packet:?}: {error}"));
        assert_eq!(again.as_ref(), Some(packet));
    }
    assert!(
        stream.is_empty(),
        "{} bytes left in the re-encoded stream",
        stream.len()
    );
});
