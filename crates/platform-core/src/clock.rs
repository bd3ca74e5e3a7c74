//! An injectable clock: every timestamp, expiry and TTL in the workspace reads it.
//!
//! Production code holds a [`DynClock`] (the [`SystemClock`] by default); tests hold a
//! [`ManualClock`] and move time forward explicitly instead of sleeping.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, TimeDelta, Utc};

/// A source of the current time.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current time in UTC.
    fn now(&self) -> DateTime<Utc>;

    /// The current time as a [`SystemTime`].
    fn now_system(&self) -> SystemTime {
        SystemTime::from(self.now())
    }

    /// The current time as whole seconds since the Unix epoch.
    fn unix_seconds(&self) -> i64 {
        self.now().timestamp()
    }
}

/// A shared clock handle, what structs hold.
pub type DynClock = Arc<dyn Clock>;

/// The operating system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// The system clock as a [`DynClock`].
pub fn system_clock() -> DynClock {
    Arc::new(SystemClock)
}

/// A clock that only moves when told to. Clones share the same time.
#[derive(Clone)]
pub struct ManualClock {
    now: Arc<Mutex<DateTime<Utc>>>,
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ManualClock").field(&self.now()).finish()
    }
}

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        Self {
            now: Arc::new(Mutex::new(start)),
        }
    }

    /// A clock stopped at `secs` seconds after the Unix epoch.
    pub fn at_unix(secs: i64) -> Self {
        Self::new(DateTime::from_timestamp(secs, 0).unwrap_or(DateTime::UNIX_EPOCH))
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let delta = TimeDelta::from_std(by).unwrap_or(TimeDelta::MAX);
        let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
        *now = now.checked_add_signed(delta).unwrap_or(DateTime::<Utc>::MAX_UTC);
    }

    /// Sets the clock to `to` (which may be in the past).
    pub fn set(&self, to: DateTime<Utc>) {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner) = to;
    }

    /// This clock as a [`DynClock`] sharing the same time.
    pub fn shared(&self) -> DynClock {
        Arc::new(self.clone())
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told_and_clones_share_time() {
        let clock = ManualClock::at_unix(1_000);
        let other = clock.shared();
        assert_eq!(clock.unix_seconds(), 1_000);
        clock.advance(Duration::from_secs(90));
        assert_eq!(other.unix_seconds(), 1_090);
        clock.set(DateTime::from_timestamp(10, 0).unwrap_or_default());
        assert_eq!(other.unix_seconds(), 10);
        assert_eq!(
            other.now_system(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(10)
        );
    }

    #[test]
    fn system_clock_is_near_now() {
        let sys = SystemClock.now_system();
        let delta = SystemTime::now().duration_since(sys).unwrap_or_default();
        assert!(delta < Duration::from_secs(5));
    }
}
