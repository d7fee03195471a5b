//! Incremental UTF-8 validation for text messages that arrive in pieces.
//!
//! Each piece is checked with the standard library's validator, which reports an invalid byte
//! as soon as it sees one, and tells an invalid sequence apart from one merely cut short by the
//! end of the input. A cut-short tail (at most 3 bytes) is kept and completed by the next piece,
//! so a message fails at the first byte that cannot start or continue a valid sequence, even in
//! the middle of a frame, and a code point split across frames is accepted.

/// Validates a byte stream as UTF-8 piece by piece.
#[derive(Debug, Clone, Default)]
pub(crate) struct Utf8Validator {
    /// The start of a sequence cut short by the end of the last piece.
    pending: [u8; 4],
    pending_len: u8,
}

/// The input is not UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InvalidUtf8;

impl Utf8Validator {
    /// Checks the next piece; fails as soon as the stream so far cannot be valid UTF-8.
    pub(crate) fn feed(&mut self, mut piece: &[u8]) -> Result<(), InvalidUtf8> {
        if self.pending_len > 0 {
            let have = usize::from(self.pending_len);
            let need = sequence_len(self.pending[0]) - have;
            let take = need.min(piece.len());
            self.pending[have..have + take].copy_from_slice(&piece[..take]);
            let filled = have + take;
            piece = &piece[take..];
            match std::str::from_utf8(&self.pending[..filled]) {
                Ok(_) => self.pending_len = 0,
                Err(e) if e.error_len().is_some() => return Err(InvalidUtf8),
                Err(_) => {
                    // Still cut short: `take` used up the whole piece.
                    self.pending_len = filled as u8;
                    return Ok(());
                }
            }
        }
        match std::str::from_utf8(piece) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(InvalidUtf8),
            Err(e) => {
                let tail = &piece[e.valid_up_to()..];
                self.pending[..tail.len()].copy_from_slice(tail);
                self.pending_len = tail.len() as u8;
                Ok(())
            }
        }
    }

    /// Checks that the stream did not end inside a sequence.
    pub(crate) fn finish(&self) -> Result<(), InvalidUtf8> {
        if self.pending_len == 0 {
            Ok(())
        } else {
            Err(InvalidUtf8)
        }
    }
}

/// The length of the sequence a (valid) leading byte starts.
fn sequence_len(lead: u8) -> usize {
    match lead {
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate_split(bytes: &[u8], splits: &[usize]) -> Result<(), InvalidUtf8> {
        let mut v = Utf8Validator::default();
        let mut start = 0;
        for &end in splits.iter().chain(std::iter::once(&bytes.len())) {
            v.feed(&bytes[start..end])?;
            start = end;
        }
        v.finish()
    }

    #[test]
    fn agrees_with_std_for_every_two_way_split() {
        let samples: [&[u8]; 8] = [
            "κόσμε".as_bytes(),
            "Hello-µ@ßöäüàá-UTF-8!!".as_bytes(),
            b"\xf0\x9f\x98\x80",
            b"\xf4\x90\x80\x80",
            b"\xed\xa0\x80",
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",
            b"\xc0\xaf",
            b"ab\xe2\x82",
        ];
        for bytes in samples {
            let expected = std::str::from_utf8(bytes).is_ok();
            for a in 0..=bytes.len() {
                for b in a..=bytes.len() {
                    assert_eq!(
                        validate_split(bytes, &[a, b]).is_ok(),
                        expected,
                        "{bytes:x?} split at {a},{b}"
                    );
                }
            }
        }
    }

    #[test]
    fn fails_fast_on_an_impossible_prefix() {
        let mut v = Utf8Validator::default();
        v.feed(b"ok \xf4").unwrap();
        // 0xf4 0x90 can only start a code point above U+10FFFF.
        assert_eq!(v.feed(b"\x90"), Err(InvalidUtf8));
        let mut v = Utf8Validator::default();
        assert_eq!(v.feed(b"\xed\xa0"), Err(InvalidUtf8));
    }
}
