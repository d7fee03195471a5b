//! Randomness, an input to the sans-IO core: client handshake keys and masking keys.

use std::fmt;

use crate::Error;

/// The function a [`RandomSource`] draws bytes from.
type FillFn = dyn FnMut(&mut [u8]) -> Result<(), Error> + Send;

/// Where a client draws its masking keys from.
///
/// RFC 6455 §5.3 asks for keys an intermediary cannot predict, so the source should be a
/// cryptographically strong one. With the default `getrandom` feature, [`RandomSource::os`] uses
/// the operating system's; without it (e.g. on `wasm32-unknown-unknown`), supply one with
/// [`RandomSource::from_fn`], for example backed by `crypto.getRandomValues`.
///
/// Bytes are drawn 256 at a time, so a source is called once per 64 frames.
pub struct RandomSource {
    fill: Box<FillFn>,
    pool: [u8; 256],
    used: usize,
}

impl RandomSource {
    /// A source that fills a buffer with `fill`, which reports failure as [`Error::Randomness`].
    pub fn from_fn(fill: impl FnMut(&mut [u8]) -> Result<(), Error> + Send + 'static) -> Self {
        Self {
            fill: Box::new(fill),
            pool: [0; 256],
            used: 256,
        }
    }

    /// The operating system's randomness, through `getrandom`.
    #[cfg(feature = "getrandom")]
    pub fn os() -> Self {
        Self::from_fn(|buf| getrandom::fill(buf).map_err(|_| Error::Randomness))
    }

    /// The next 4-byte masking key.
    pub(crate) fn mask_key(&mut self) -> Result<[u8; 4], Error> {
        if self.used + 4 > self.pool.len() {
            (self.fill)(&mut self.pool)?;
            self.used = 0;
        }
        let mut key = [0; 4];
        key.copy_from_slice(&self.pool[self.used..self.used + 4]);
        self.used += 4;
        Ok(key)
    }
}

impl fmt::Debug for RandomSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RandomSource").finish_non_exhaustive()
    }
}
