//! The engine clock.
//!
//! Everything time-dependent — windows, dwell timers, schedules, and the
//! `now` a rule sees — reads one [`Clock`]. Production uses
//! [`SystemClock`]; tests use [`ManualClock`] and move time explicitly, so
//! nothing waits on a real timer.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

/// A source of the current time, in milliseconds since the Unix epoch (UTC).
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time in milliseconds since the Unix epoch.
    fn now_millis(&self) -> i64;

    /// For clocks that jump (the manual clock): a receiver that sees every
    /// move, so a timer task can wake when time is moved instead of
    /// sleeping. `None` for clocks that simply run (sleep on the runtime).
    fn moves(&self) -> Option<watch::Receiver<i64>> {
        None
    }
}

/// Shared handle to the engine clock.
pub type SharedClock = Arc<dyn Clock>;

/// The operating system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_millis(&self) -> i64 {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            // A wall clock set before 1970: report it as negative time.
            Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
        }
    }
}

/// A clock that moves only when told to. Cloning shares the same time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<AtomicI64>,
    moved: Arc<watch::Sender<i64>>,
}

impl ManualClock {
    /// A manual clock reading `start_millis`.
    pub fn new(start_millis: i64) -> Self {
        Self {
            now: Arc::new(AtomicI64::new(start_millis)),
            moved: Arc::new(watch::channel(start_millis).0),
        }
    }

    /// Set the time. Time never moves backwards: an earlier value is ignored
    /// and the current time returned.
    pub fn set(&self, millis: i64) -> i64 {
        let now = self.now.fetch_max(millis, Ordering::SeqCst).max(millis);
        self.moved.send_replace(now);
        now
    }

    /// Move the time forward by `millis` (negative values are ignored).
    pub fn advance(&self, millis: i64) -> i64 {
        let step = millis.max(0);
        let now = self.now.fetch_add(step, Ordering::SeqCst) + step;
        self.moved.send_replace(now);
        now
    }
}

impl Clock for ManualClock {
    fn now_millis(&self) -> i64 {
        self.now.load(Ordering::SeqCst)
    }

    fn moves(&self) -> Option<watch::Receiver<i64>> {
        Some(self.moved.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_forward() {
        let clock = ManualClock::new(1_000);
        assert_eq!(clock.advance(500), 1_500);
        assert_eq!(
            clock.set(1_200),
            1_500,
            "setting an earlier time is ignored"
        );
        assert_eq!(clock.set(2_000), 2_000);
        assert_eq!(clock.clone().now_millis(), 2_000, "clones share the time");
    }

    #[test]
    fn manual_clock_announces_its_moves() {
        let clock = ManualClock::new(0);
        let mut moves = clock.moves().expect("a manual clock announces moves");
        assert!(!moves.has_changed().unwrap());
        clock.advance(250);
        assert!(moves.has_changed().unwrap());
        assert_eq!(*moves.borrow_and_update(), 250);
        assert!(SystemClock.moves().is_none());
    }

    #[test]
    fn system_clock_is_after_2020() {
        assert!(SystemClock.now_millis() > 1_577_836_800_000);
    }
}
