//! Payload masking (RFC 6455 §5.3), a machine word or more at a time.
//!
//! Masking is an XOR with the 4-byte key repeated. The key is widened to a 128-bit word and the
//! payload processed in exact 16-byte chunks through `from_ne_bytes`/`to_ne_bytes`, a shape
//! LLVM turns into vector loads and XORs without any `unsafe`; the tail is done byte by byte.

/// XORs `buf` in place with `key`, for a payload that starts at `buf[0]`.
///
/// Masking and unmasking are the same operation.
///
/// ```
/// use rallymq_websocket::apply_mask;
///
/// let key = [0x37, 0xfa, 0x21, 0x3d];
/// let mut payload = *b"Hello";
/// apply_mask(&mut payload, key);
/// assert_eq!(payload, [0x7f, 0x9f, 0x4d, 0x51, 0x58]); // RFC 6455 §5.7
/// apply_mask(&mut payload, key);
/// assert_eq!(&payload, b"Hello");
/// ```
#[inline]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4]) {
    apply_mask_at(buf, key, 0);
}

/// XORs `buf` in place with `key`, for a slice that starts `offset` bytes into the payload.
///
/// This lets a payload be unmasked piece by piece as it arrives.
#[inline]
pub fn apply_mask_at(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let key = rotate_key(key, offset);
    let wide = u128::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3], key[0], key[1], key[2],
        key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(16);
    for chunk in &mut chunks {
        // The chunk is exactly 16 bytes long, which is what `chunks_exact_mut(16)` guarantees.
        let word: [u8; 16] = (&*chunk).try_into().expect("chunk of 16 bytes");
        chunk.copy_from_slice(&(u128::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    // Each chunk was a multiple of 4 bytes, so the tail starts at key index 0.
    for (byte, k) in chunks.into_remainder().iter_mut().zip(key.iter().cycle()) {
        *byte ^= k;
    }
}

/// The key as seen by a slice that starts `offset` bytes into the payload.
#[inline]
fn rotate_key(key: [u8; 4], offset: usize) -> [u8; 4] {
    let mut rotated = key;
    rotated.rotate_left(offset % 4);
    rotated
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(buf: &mut [u8], key: [u8; 4], offset: usize) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b ^= key[(offset + i) % 4];
        }
    }

    #[test]
    fn matches_bytewise_masking_for_all_lengths_and_offsets() {
        let key = [0x01, 0x20, 0x0f, 0xf0];
        for len in 0..100 {
            for offset in 0..8 {
                let data: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
                let mut fast = data.clone();
                let mut slow = data.clone();
                apply_mask_at(&mut fast, key, offset);
                naive(&mut slow, key, offset);
                assert_eq!(fast, slow, "len {len} offset {offset}");
            }
        }
    }

    #[test]
    fn masking_in_pieces_equals_masking_whole() {
        let key = [9, 8, 7, 6];
        let data: Vec<u8> = (0..=255).collect();
        let mut whole = data.clone();
        apply_mask(&mut whole, key);
        let mut pieces = data.clone();
        let mut offset = 0;
        for piece in pieces.chunks_mut(13) {
            apply_mask_at(piece, key, offset);
            offset += piece.len();
        }
        assert_eq!(whole, pieces);
    }
}
