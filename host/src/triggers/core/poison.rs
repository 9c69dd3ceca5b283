//! What a failing `select` does: poison-event isolation.
//!
//! When `select` fails on several events, the driver goes on one event at
//! a time until it finds the one that fails. Each failure on that event
//! counts against it — a wall-clock timeout while fuel metering is on may
//! be the machine's (an overloaded host), not the guest's, and weighs a
//! third; it still counts, so a guest whose fuel outlasts its deadline
//! cannot spin on one event forever. Past the policy's attempts the event
//! is skipped (`event.skipped`) or the rule suspended (`rule.suspended`),
//! as the manifest says.

use serde_json::json;

use super::{RuleCore, Step, Writes};
use crate::manifest::OnPoison;
use crate::triggers::Kind;
use crate::triggers::state::{self as key};

/// A failed `select`, as the core weighs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectFailure {
    /// What went wrong.
    pub message: String,
    /// A wall-clock timeout while fuel metering was on: maybe the
    /// machine's fault, so it weighs a third.
    pub maybe_machine: bool,
}

/// Isolation in progress.
#[derive(Debug, Default)]
pub(super) struct Poison {
    /// Events still to take one at a time after a failed `select`.
    isolating: usize,
    /// The single event whose `select` failed: its seq, strikes (3 per
    /// failure, 1 per maybe-the-machine's) and failures.
    suspect: Option<(u64, u32, u32)>,
}

/// A poison event's fate, to apply once committed.
#[derive(Debug)]
pub struct PoisonPlan {
    seq: u64,
    why: Option<String>,
}

impl<K: Kind> RuleCore<K> {
    /// How many events the next `select` may take: one at a time while an
    /// event that fails is being looked for.
    pub fn select_limit(&self, max: usize) -> usize {
        if self.poison.isolating > 0 { 1 } else { max }
    }

    /// `select` answered for `n` events.
    pub fn select_ok(&mut self, n: usize) {
        self.poison.isolating = self.poison.isolating.saturating_sub(n);
        self.poison.suspect = None;
    }

    /// `select` failed on a read of `read` events of which `candidates`
    /// (seqs) were asked about. Several: isolate (one at a time from now
    /// on). One: count the failure against it; past the policy's attempts,
    /// the writes that skip it or suspend the rule.
    pub fn select_failed(
        &mut self,
        read: usize,
        candidates: &[u64],
        failure: &SelectFailure,
        at: i64,
    ) -> Option<(Writes, PoisonPlan)> {
        if candidates.len() > 1 {
            self.poison.isolating = read;
            return None;
        }
        let &seq = candidates.first()?;
        let (strikes, failures) = match self.poison.suspect {
            Some((s, strikes, n)) if s == seq => (strikes, n + 1),
            _ => (0, 1),
        };
        let strikes = strikes + if failure.maybe_machine { 1 } else { 3 };
        self.poison.suspect = Some((seq, strikes, failures));
        if strikes < 3 * self.spec.select.attempts {
            return None;
        }
        let error = &failure.message;
        let mut payload = json!({"rule": self.spec.name, "seq": seq,
            "attempts": failures, "error": error});
        let (kind, mut ops, why) = match self.spec.select.on_poison {
            OnPoison::Skip => {
                tracing::warn!(rule = %self.spec.name, seq, error = %error, "skipping an event the rule cannot select");
                (
                    "event.skipped",
                    vec![self.put(key::CURSOR, seq.to_string().into_bytes())],
                    None,
                )
            }
            OnPoison::Suspend => {
                let why = format!("select failed {failures} times on event {seq}: {error}");
                tracing::warn!(rule = %self.spec.name, seq, error = %error, "suspending: an event the rule cannot select");
                payload["suspended"] = json!(true);
                (
                    "rule.suspended",
                    vec![self.put(key::SUSPENDED, why.clone().into_bytes())],
                    Some(why),
                )
            }
        };
        // The pin moves with the cursor (when the event is skipped).
        let cursor = if why.is_none() { seq } else { self.cursor };
        let fires = self.fires.min_first_after(&[], &[]);
        ops.push(self.pin(cursor, self.part_firsts.min(), fires));
        let record = self.poison_record(seq, kind, at, payload);
        Some((
            Writes {
                records: vec![record],
                ops,
            },
            PoisonPlan { seq, why },
        ))
    }

    /// Apply a committed poison plan.
    pub fn poisoned(&mut self, plan: PoisonPlan) -> Step {
        self.poison.suspect = None;
        self.poison.isolating = self.poison.isolating.saturating_sub(1);
        match plan.why {
            None => {
                self.cursor = plan.seq;
                self.counters.skipped_events += 1;
            }
            Some(why) => self.suspended = Some(why),
        }
        Step {
            read: 1,
            cursor: self.cursor,
            ..Step::default()
        }
    }
}
