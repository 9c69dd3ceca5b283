//! Batch windows, per partition (DESIGN §3, batch):
//!
//! - the window opens at the first buffered event of a partition, on the
//!   engine clock, and expires `window` later;
//! - reaching `count` fires exactly `count` events (count-reached) and
//!   closes the window; the next event opens a fresh one;
//! - an expired window fires its partial batch (window-expired) or, with
//!   `expire = discard`, is dropped and reported;
//! - with `debounce`, every new event pushes the expiry to `now + window`,
//!   so the window fires after a quiet period with all its events (`count`
//!   still caps a batch).
//!
//! A window is identified by the seq of its first event: unique, and the
//! same on every replay, so fire ids derived from it are deterministic.

use serde::{Deserialize, Serialize};

use crate::manifest::{BatchTrigger, Expire};

/// The open window of one partition. Holds event references (seqs), not
/// events: the log keeps the events, pinned until the window closes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// When the window opened (engine clock, ms).
    pub opened_at: i64,
    /// When it expires (ms).
    pub deadline: i64,
    /// The buffered events, in log order; never empty.
    pub seqs: Vec<u64>,
}

impl Window {
    /// The window's identity: the seq of its first event.
    pub fn first_seq(&self) -> u64 {
        self.seqs[0]
    }
}

/// Why a window closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Close {
    /// `count` events arrived: fire them.
    CountReached,
    /// The window expired with `expire = fire`: fire the partial batch.
    WindowExpired,
    /// The window expired with `expire = discard`: drop the events.
    Discarded,
}

/// A closed window: what to fire (or report as discarded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// Why it closed.
    pub close: Close,
    /// Its identity (seq of its first event).
    pub first_seq: u64,
    /// Its events, in log order.
    pub seqs: Vec<u64>,
}

/// The batch rules of one rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batcher {
    count: usize,
    window_ms: i64,
    expire: Expire,
    debounce: bool,
}

impl From<&BatchTrigger> for Batcher {
    fn from(t: &BatchTrigger) -> Self {
        Self {
            count: t.count.max(1) as usize,
            window_ms: i64::try_from(t.window.as_millis()).unwrap_or(i64::MAX),
            expire: t.expire,
            debounce: t.debounce,
        }
    }
}

impl Batcher {
    /// Buffer event `seq` of a partition at `now`. Returns the closed
    /// window when it reached `count`; the partition then has no window
    /// until its next event.
    pub fn on_event(&self, window: &mut Option<Window>, seq: u64, now: i64) -> Option<Closed> {
        let deadline = now.saturating_add(self.window_ms);
        match window {
            Some(w) => {
                w.seqs.push(seq);
                if self.debounce {
                    w.deadline = deadline;
                }
            }
            None => {
                *window = Some(Window {
                    opened_at: now,
                    deadline,
                    seqs: vec![seq],
                });
            }
        }
        let full = window.as_ref().is_some_and(|w| w.seqs.len() >= self.count);
        if !full {
            return None;
        }
        let w = window.take().expect("checked above");
        Some(Closed {
            close: Close::CountReached,
            first_seq: w.first_seq(),
            seqs: w.seqs,
        })
    }

    /// Close the window if it has expired at `now`.
    pub fn on_timer(&self, window: &mut Option<Window>, now: i64) -> Option<Closed> {
        if window.as_ref().is_none_or(|w| w.deadline > now) {
            return None;
        }
        let w = window.take().expect("checked above");
        Some(Closed {
            close: match self.expire {
                Expire::Fire => Close::WindowExpired,
                Expire::Discard => Close::Discarded,
            },
            first_seq: w.first_seq(),
            seqs: w.seqs,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn batcher(count: u32, window_ms: u64, expire: Expire, debounce: bool) -> Batcher {
        Batcher::from(&BatchTrigger {
            count,
            window: Duration::from_millis(window_ms),
            expire,
            debounce,
            max_wait: None,
        })
    }

    #[test]
    fn count_reached_fires_exactly_count_and_resets() {
        let b = batcher(3, 1_000, Expire::Fire, false);
        let mut w = None;
        assert_eq!(b.on_event(&mut w, 1, 0), None);
        assert_eq!(b.on_event(&mut w, 2, 10), None);
        let closed = b.on_event(&mut w, 3, 20).unwrap();
        assert_eq!(closed.close, Close::CountReached);
        assert_eq!((closed.first_seq, closed.seqs), (1, vec![1, 2, 3]));
        assert_eq!(w, None, "the window closed");
        // The next event opens a fresh window, timed from its arrival.
        assert_eq!(b.on_event(&mut w, 4, 500), None);
        let open = w.clone().unwrap();
        assert_eq!(
            (open.opened_at, open.deadline, open.first_seq()),
            (500, 1_500, 4)
        );
    }

    #[test]
    fn expiry_fires_the_partial_batch_at_its_deadline_not_before() {
        let b = batcher(10, 1_000, Expire::Fire, false);
        let mut w = None;
        b.on_event(&mut w, 7, 100);
        b.on_event(&mut w, 9, 900);
        assert_eq!(b.on_timer(&mut w, 1_099), None);
        let closed = b.on_timer(&mut w, 1_100).unwrap();
        assert_eq!(closed.close, Close::WindowExpired);
        assert_eq!(closed.seqs, vec![7, 9]);
        assert_eq!(b.on_timer(&mut w, 5_000), None, "nothing left to expire");
    }

    #[test]
    fn discard_drops_and_reports() {
        let b = batcher(10, 1_000, Expire::Discard, false);
        let mut w = None;
        b.on_event(&mut w, 1, 0);
        let closed = b.on_timer(&mut w, 2_000).unwrap();
        assert_eq!((closed.close, closed.seqs), (Close::Discarded, vec![1]));
    }

    #[test]
    fn debounce_restarts_the_window_on_every_event() {
        let b = batcher(100, 1_000, Expire::Fire, true);
        let mut w = None;
        b.on_event(&mut w, 1, 0);
        b.on_event(&mut w, 2, 900);
        b.on_event(&mut w, 3, 1_800);
        assert_eq!(b.on_timer(&mut w, 2_799), None, "quiet period not over");
        let closed = b.on_timer(&mut w, 2_800).unwrap();
        assert_eq!(closed.seqs, vec![1, 2, 3], "all events delivered");
        assert_eq!(closed.close, Close::WindowExpired);
    }

    #[test]
    fn without_debounce_later_events_do_not_move_the_deadline() {
        let b = batcher(100, 1_000, Expire::Fire, false);
        let mut w = None;
        b.on_event(&mut w, 1, 0);
        b.on_event(&mut w, 2, 900);
        assert_eq!(w.as_ref().unwrap().deadline, 1_000);
    }

    #[test]
    fn count_of_one_fires_every_event() {
        let b = batcher(1, 1_000, Expire::Fire, false);
        let mut w = None;
        for seq in 1..=3 {
            let closed = b.on_event(&mut w, seq, 0).unwrap();
            assert_eq!(closed.seqs, vec![seq]);
        }
    }
}
