//! Time as the engine sees it: a value the driver passes in, never read from a clock.

use std::fmt;
use std::ops::{Add, Sub};
use std::time::Duration;

/// A point in time, measured from an epoch the driver picks (its start, say). The engine only
/// compares and adds timestamps, so any monotonic source works: `std::time::Instant` minus a
/// start instant, `performance.now()` in a browser, a simulated clock in tests.
///
/// Nanoseconds in a `u64` (584 years; later saturates) rather than a 16-byte `Duration`: every
/// connection keeps several.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(u64);

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Timestamp")
            .field(&self.since_epoch())
            .finish()
    }
}

/// A duration in nanoseconds, saturating at `u64::MAX`.
const fn nanos(duration: Duration) -> u64 {
    let nanos = duration.as_nanos();
    if nanos > u64::MAX as u128 {
        u64::MAX
    } else {
        nanos as u64
    }
}

impl Timestamp {
    /// The epoch.
    pub const ZERO: Self = Self(0);

    /// The time `since_epoch` after the epoch.
    pub const fn from_since_epoch(since_epoch: Duration) -> Self {
        Self(nanos(since_epoch))
    }

    /// The time `millis` milliseconds after the epoch.
    pub const fn from_millis(millis: u64) -> Self {
        Self(millis.saturating_mul(1_000_000))
    }

    /// How long after the epoch this is.
    pub const fn since_epoch(self) -> Duration {
        Duration::from_nanos(self.0)
    }

    /// How long after `earlier` this is; zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Self) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Timestamp {
    type Output = Self;
    fn add(self, duration: Duration) -> Self {
        Self(self.0.saturating_add(nanos(duration)))
    }
}

impl Sub<Self> for Timestamp {
    type Output = Duration;
    fn sub(self, earlier: Self) -> Duration {
        self.saturating_duration_since(earlier)
    }
}
