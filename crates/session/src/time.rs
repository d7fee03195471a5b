//! Time as the engine sees it: a value the driver passes in, never read from a clock.

use std::ops::{Add, Sub};
use std::time::Duration;

/// A point in time, measured from an epoch the driver picks (its start, say). The engine only
/// compares and adds timestamps, so any monotonic source works: `std::time::Instant` minus a
/// start instant, `performance.now()` in a browser, a simulated clock in tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(Duration);

impl Timestamp {
    /// The epoch.
    pub const ZERO: Self = Self(Duration::ZERO);

    /// The time `since_epoch` after the epoch.
    pub const fn from_since_epoch(since_epoch: Duration) -> Self {
        Self(since_epoch)
    }

    /// The time `millis` milliseconds after the epoch.
    pub const fn from_millis(millis: u64) -> Self {
        Self(Duration::from_millis(millis))
    }

    /// How long after the epoch this is.
    pub const fn since_epoch(self) -> Duration {
        self.0
    }

    /// How long after `earlier` this is; zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Self) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

impl Add<Duration> for Timestamp {
    type Output = Self;
    fn add(self, duration: Duration) -> Self {
        Self(self.0.saturating_add(duration))
    }
}

impl Sub<Self> for Timestamp {
    type Output = Duration;
    fn sub(self, earlier: Self) -> Duration {
        self.saturating_duration_since(earlier)
    }
}
