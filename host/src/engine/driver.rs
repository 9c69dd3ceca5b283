//! The one driver: the order in which a rule's work is done at a given
//! engine time, used by the engine (real clock, a task per rule) and by
//! `sluice test` (virtual clock).
//!
//! A turn at `now`: first close what is due (a deadline that has passed
//! comes before any event read at `now`), then read new events in steps of
//! [`STEP_EVENTS`] up to a budget, so that a rule under sustained ingest
//! still comes back to its deadlines, fires and control requests within a
//! bounded time. Fires are then started by whoever drives: the engine runs
//! up to the rule's concurrency at once, `sluice test` one after another.

use super::rule::Driven;
use crate::clock::Clock;
use crate::log::EventLog;
use crate::triggers::core::{CoreError, Step};

/// Events read per step: one commit per step, so a step's writes (a row
/// per partition it touched) are shared by many events.
pub const STEP_EVENTS: usize = 8_192;

/// What one turn did.
#[derive(Debug, Default)]
pub struct Turn {
    /// Fires and discards the deadlines due produced.
    pub expired: Step,
    /// Events stepped through (summed over the turn's steps).
    pub stepped: Step,
    /// The budget ran out with events left to read.
    pub more: bool,
}

/// Close what is due now, then step through up to `budget` new events.
/// Each step reads the committed seq before the clock, so an event is never
/// processed at an engine time before its ingest.
pub fn turn(
    core: &mut dyn Driven,
    log: &EventLog,
    clock: &dyn Clock,
    budget: usize,
) -> Result<Turn, CoreError> {
    let mut t = Turn {
        expired: core.expire(log, clock.now_millis())?,
        ..Turn::default()
    };
    t.stepped.cursor = core.cursor();
    let mut left = budget;
    loop {
        let until = log.last_seq();
        let now = clock.now_millis();
        let step = core.step(log, now, STEP_EVENTS.min(left), Some(until))?;
        if step.cursor == t.stepped.cursor {
            return Ok(t);
        }
        t.stepped.read += step.read;
        t.stepped.kept += step.kept;
        t.stepped.fires.extend(step.fires);
        t.stepped.discards.extend(step.discards);
        t.stepped.cursor = step.cursor;
        left = left.saturating_sub(step.read.max(1));
        if left == 0 {
            t.more = t.stepped.cursor < log.last_seq();
            return Ok(t);
        }
    }
}
