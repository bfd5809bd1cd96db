//! The time source for expiry: [`Clock`], [`SystemClock`], [`ManualClock`].

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A wall clock in milliseconds since the UNIX epoch.
///
/// The store asks it for the time whenever it needs to decide whether an entry
/// has expired. Swap in a [`ManualClock`] to test expiry without sleeping.
pub trait Clock: Send + Sync {
    /// Milliseconds since the UNIX epoch.
    fn now_millis(&self) -> i64;
}

/// The operating system's wall clock (the default).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_millis(&self) -> i64 {
        system_time_to_millis(SystemTime::now())
    }
}

/// A clock that moves only when told to.
///
/// ```
/// use sfs::{Clock, ManualClock};
/// use std::time::Duration;
///
/// let clock = ManualClock::new(1_000);
/// clock.advance(Duration::from_secs(5));
/// assert_eq!(clock.now_millis(), 6_000);
/// clock.set(42);
/// assert_eq!(clock.now_millis(), 42);
/// ```
#[derive(Debug, Default)]
pub struct ManualClock {
    now: AtomicI64,
}

impl ManualClock {
    /// A clock that reads `start_ms` until moved.
    pub fn new(start_ms: i64) -> ManualClock {
        ManualClock {
            now: AtomicI64::new(start_ms),
        }
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let _ = self
            .now
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                Some(t.saturating_add(ms))
            });
    }

    /// Sets the clock to `ms` (it may go backwards).
    pub fn set(&self, ms: i64) {
        self.now.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_millis(&self) -> i64 {
        self.now.load(Ordering::SeqCst)
    }
}

/// Converts a `SystemTime` to milliseconds since the epoch (negative before it,
/// saturating far away from it).
pub(crate) fn system_time_to_millis(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis())
            .map(|v| -v)
            .unwrap_or(i64::MIN),
    }
}

/// Converts milliseconds since the epoch back to a `SystemTime`.
pub(crate) fn millis_to_system_time(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_is_near_now() {
        let a = system_time_to_millis(SystemTime::now());
        let b = SystemClock.now_millis();
        assert!((b - a).abs() < 10_000);
        assert!(b > 1_600_000_000_000);
    }

    #[test]
    fn conversions_round_trip() {
        let t = UNIX_EPOCH + Duration::from_millis(1_234_567);
        assert_eq!(system_time_to_millis(t), 1_234_567);
        assert_eq!(millis_to_system_time(1_234_567), t);
        assert_eq!(
            system_time_to_millis(UNIX_EPOCH - Duration::from_millis(5)),
            -5
        );
    }

    #[test]
    fn manual_clock_saturates() {
        let c = ManualClock::new(i64::MAX - 1);
        c.advance(Duration::from_secs(10));
        assert_eq!(c.now_millis(), i64::MAX);
    }
}
