//! Payload masking (RFC 6455 §5.3), a machine word or more at a time.
//!
//! Masking is an XOR with the 4-byte key repeated. The key is widened to a 64-bit word and the
//! payload processed in exact 64-byte blocks of eight such words, a shape LLVM unrolls and turns
//! into vector XORs without any `unsafe`; the rest goes 4 bytes at a time, then by bytes.

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
    let [a, b, c, d] = key;
    let key8 = u64::from_ne_bytes([a, b, c, d, a, b, c, d]);
    // 64-byte blocks as fixed-size arrays of 8-byte words: LLVM unrolls and vectorizes this.
    let mut blocks = buf.chunks_exact_mut(BLOCK);
    for block in &mut blocks {
        // `chunks_exact_mut(BLOCK)` yields slices of exactly BLOCK bytes.
        let block: &mut [u8; BLOCK] = block.try_into().expect("a block of BLOCK bytes");
        for word in block.chunks_exact_mut(8) {
            xor_word8(word, key8);
        }
    }
    // Blocks are multiples of 4 bytes, so the rest starts at key index 0: 4-byte words (a loop
    // LLVM vectorizes too), then at most 3 bytes.
    let key4 = u32::from_ne_bytes(key);
    let mut words = blocks.into_remainder().chunks_exact_mut(4);
    for word in &mut words {
        // `chunks_exact_mut(4)` yields slices of exactly 4 bytes.
        let bytes: [u8; 4] = (&*word).try_into().expect("a word of 4 bytes");
        word.copy_from_slice(&(u32::from_ne_bytes(bytes) ^ key4).to_ne_bytes());
    }
    for (byte, k) in words.into_remainder().iter_mut().zip(key) {
        *byte ^= k;
    }
}

/// The bytes unmasked per step of the main loop.
const BLOCK: usize = 64;

/// XORs an 8-byte word with the key repeated twice.
#[inline(always)]
fn xor_word8(word: &mut [u8], key8: u64) {
    // Only called on the items of `chunks_exact_mut(8)`: exactly 8 bytes.
    let bytes: [u8; 8] = (&*word).try_into().expect("a word of 8 bytes");
    word.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ key8).to_ne_bytes());
}

/// The key as seen by a slice that starts `offset` bytes into the payload.
#[inline]
fn rotate_key(key: [u8; 4], offset: usize) -> [u8; 4] {
    // A 32-bit rotation (a single instruction, folded away for offset 0); the slice method
    // `rotate_left` is a generic routine that costs more than unmasking a short payload.
    u32::from_le_bytes(key)
        .rotate_right(8 * (offset % 4) as u32)
        .to_le_bytes()
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
        for len in 0..200 {
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
