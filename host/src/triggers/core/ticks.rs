//! A schedule's position, and the ticks that fell due while the rule was
//! not running.
//!
//! The position (`tick` row: the latest tick handled, and the skipped and
//! missed tallies) moves with each tick a plan handles, in the same
//! transaction as the tick's fires. A tick before the rule's start (its
//! `up` time: start-up, or resume after a pause) was missed; the kind's
//! catch-up policy says which of those still run (its
//! [`crate::triggers::DueTicks`], worked
//! out once per start, not per tick).

use super::RuleCore;
use crate::triggers::Kind;

/// A schedule's durable position and tallies (key `tick`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TickPosition {
    /// The latest tick handled (run, skipped or missed), ms.
    pub last: i64,
    /// Ticks skipped for a partition by the overlap policy, ever.
    pub skipped: u64,
    /// Ticks missed while not running and not caught up, ever.
    pub missed: u64,
}

impl TickPosition {
    pub(super) fn encode(&self) -> Vec<u8> {
        format!("{} {} {}", self.last, self.skipped, self.missed).into_bytes()
    }

    pub(super) fn decode(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split(' ').collect();
        let [last, skipped, missed] = parts[..] else {
            return Err(format!("{text:?}: expected 3 numbers"));
        };
        let num = |v: &str| v.parse::<i64>().map_err(|e| format!("{text:?}: {e}"));
        Ok(Self {
            last: num(last)?,
            skipped: num(skipped)? as u64,
            missed: num(missed)? as u64,
        })
    }
}

impl<K: Kind> RuleCore<K> {
    /// Work out the catch-up for the current position and start.
    pub(super) fn plan_catch_up(&mut self) {
        // The ticks missed: after the position, before the rule started
        // running — or, when the position is past that, in the outage
        // since (see `outage`).
        let missed = match (self.tick, self.up_since, self.outage) {
            (Some(pos), Some(up), _) if pos.last < up => Some((pos.last, up)),
            (Some(pos), _, Some((from, until))) if pos.last.max(from) < until => {
                Some((pos.last.max(from), until))
            }
            _ => None,
        };
        self.catch_up = match missed {
            Some((after, up)) if self.kind.ticks() => {
                // Ticks from the first that runs up to the start all run:
                // the first is all a plan needs to know.
                let mut due = self.kind.due_ticks(after, up - 1, up);
                due.run.truncate(1);
                Some(due)
            }
            _ => None,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_refuse_garbage() {
        let p = TickPosition {
            last: 1_767_225_600_000,
            skipped: 3,
            missed: 9,
        };
        let text = String::from_utf8(p.encode()).unwrap();
        assert_eq!(TickPosition::decode(&text), Ok(p));
        assert!(TickPosition::decode("1 2").is_err());
        assert!(TickPosition::decode("a b c").is_err());
    }
}
