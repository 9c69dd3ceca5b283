//! Starting fires, and making an attempt's outcome durable.
//!
//! [`RuleCore::start`] marks a pending fire running and hands back its
//! record (the driver runs the handler). [`RuleCore::finish`] turns the
//! attempt into writes by the pipeline's policy
//! ([`crate::triggers::fires::outcome`]); once those are committed,
//! [`RuleCore::finished`] applies them. Whatever happens to the commit,
//! the fire stops counting as running ([`RuleCore::abandon`] when it
//! failed), so it runs again.
//!
//! Attempts that finished together are decided together
//! ([`RuleCore::finish_all`]) and committed in one transaction: one
//! fsync for all of them. They are decided in order, as if committed one
//! after another (the breaker counts dead letters in a row across them),
//! and the retention pin is written once, for the whole group.

use super::{CoreError, RuleCore, Writes, bad_state};
use crate::log::AppendReport;
use crate::triggers::Kind;
use crate::triggers::fires::{Decision, FireAttempt, FireOutcome, FireRecord, outcome};
use crate::triggers::state::{self as key};

/// An attempt, decided: what [`RuleCore::finished`] applies once the
/// writes that came with it are committed.
#[derive(Debug)]
pub struct FinishPlan {
    fire_id: String,
    partition: Option<String>,
    what: Finish,
}

#[derive(Debug)]
enum Finish {
    /// Cancelled while it ran (a newer tick took its events): nothing is
    /// committed.
    Cancelled,
    /// The handler did not run; the fire stays pending and runs again.
    NotRun(String),
    /// The policy's decision.
    Decided {
        decision: Box<Decision>,
        first: Option<u64>,
        outputs: usize,
    },
}

impl FinishPlan {
    /// The fire.
    pub fn fire_id(&self) -> &str {
        &self.fire_id
    }
}

impl<K: Kind> RuleCore<K> {
    /// Start fire `fire_id`: mark it running and hand back its record.
    /// Fails when it is not pending.
    pub fn start(&mut self, fire_id: &str) -> Result<FireRecord, CoreError> {
        self.fires
            .set_running(fire_id)
            .cloned()
            .ok_or_else(|| bad_state(&key::fire(fire_id), "no such pending fire"))
    }

    /// Decide what `attempt` leads to and the writes that record it:
    /// outputs and completion; or the failure and its retry time; or the
    /// dead letter (and maybe the suspension). Each is also an engine
    /// record on the log.
    pub fn finish(&self, attempt: &FireAttempt) -> (Writes, FinishPlan) {
        let (writes, mut plans) = self.finish_all(std::slice::from_ref(attempt));
        let (plan, _) = plans.pop().expect("one plan per attempt");
        (writes, plan)
    }

    /// [`Self::finish`] for attempts committed together, in this order:
    /// the writes of all of them, and per attempt its plan and how many
    /// of the writes' records are its own (its share of the commit's
    /// report, in order).
    pub fn finish_all(&self, attempts: &[FireAttempt]) -> (Writes, Vec<(FinishPlan, usize)>) {
        let mut all = Writes::default();
        let mut plans = Vec::with_capacity(attempts.len());
        let mut in_a_row = self.fires.dead_in_a_row;
        let mut pin: Option<(Vec<u64>, Vec<u64>)> = None;
        for attempt in attempts {
            let (writes, plan, released) = self.decide(attempt, &mut in_a_row);
            plans.push((plan, writes.records.len()));
            all.records.extend(writes.records);
            all.ops.extend(writes.ops);
            if let Some((r, a)) = released {
                let (removed, added) = pin.get_or_insert_default();
                removed.extend(r);
                added.extend(a);
            }
        }
        if let Some((removed, added)) = pin {
            all.ops.push(self.pin_now(&removed, &added));
        }
        (all, plans)
    }

    /// One attempt's writes (without the retention pin) and plan, and
    /// the first seqs it releases and holds, with `in_a_row` dead letters
    /// before it (updated).
    #[allow(clippy::type_complexity)]
    fn decide(
        &self,
        attempt: &FireAttempt,
        in_a_row_before: &mut u32,
    ) -> (Writes, FinishPlan, Option<(Vec<u64>, Vec<u64>)>) {
        let record = &attempt.record;
        let mut plan = FinishPlan {
            fire_id: record.fire_id.clone(),
            partition: record.partition.clone(),
            what: Finish::Cancelled,
        };
        let Some(pending) = self.fires.get(&record.fire_id) else {
            return (Writes::default(), plan, None);
        };
        let order = pending.order;
        let decision = match outcome(
            &self.spec.retry,
            self.spec.outputs.max_hops,
            *in_a_row_before,
            attempt,
        ) {
            Ok(d) => d,
            Err(why) => {
                plan.what = Finish::NotRun(why.0);
                return (Writes::default(), plan, None);
            }
        };
        let whole = attempt;
        let (record, now) = (&attempt.record, attempt.now);
        let mut first = record.first_seq();
        let firsts: Vec<u64> = first.into_iter().collect();
        let mut outputs = 0;
        let mut pin = None;
        let writes = match &decision {
            Decision::Complete {
                outputs: emitted,
                hops,
                dropped,
            } => {
                let mut records = Vec::with_capacity(emitted.len() + 1);
                if *dropped {
                    records.push(self.outputs_dropped(record, emitted.len(), *hops, now));
                } else {
                    records.extend(self.output_events(record, emitted, *hops, now));
                    outputs = emitted.len();
                }
                records.push(self.fire_completed(whole, emitted.len()));
                *in_a_row_before = 0;
                pin = Some((firsts, Vec::new()));
                let mut ops = vec![
                    self.delete(key::fire_key(order, &record.fire_id)),
                    self.delete(key::BREAKER),
                ];
                if record.kept {
                    ops.push(self.delete(key::kept(&record.fire_id)));
                }
                Writes { records, ops }
            }
            Decision::Retry {
                record: updated,
                at,
                error,
            } => Writes {
                records: vec![self.fire_failed(whole, error, *at)],
                ops: vec![self.put(
                    key::fire_key(updated.order, &record.fire_id),
                    serde_json::to_vec(updated).expect("a fire serialises"),
                )],
            },
            Decision::DeadLetter {
                record: updated,
                in_a_row,
                suspend,
                error,
            } => {
                // The dead letter keeps its batch (the events the handler
                // was given), so it holds nothing in the log: retention
                // goes on past it however long it waits.
                let keep = !record.kept
                    && !attempt.events.is_empty()
                    && attempt.events.len() == record.seqs.len();
                let mut dead = updated.clone();
                dead.kept |= keep;
                let mut ops = vec![
                    self.delete(key::fire_key(order, &record.fire_id)),
                    self.put(
                        key::dead(&record.fire_id),
                        serde_json::to_vec(&dead).expect("a fire serialises"),
                    ),
                    self.put(key::BREAKER, in_a_row.to_string().into_bytes()),
                ];
                if keep {
                    ops.push(self.put(
                        key::kept(&record.fire_id),
                        serde_json::to_vec(&attempt.events).expect("events serialise"),
                    ));
                }
                *in_a_row_before = *in_a_row;
                if dead.kept {
                    first = None;
                    pin = Some((firsts, Vec::new()));
                } else {
                    pin = Some((firsts.clone(), firsts));
                }
                if let Some(why) = suspend {
                    ops.push(self.put(key::SUSPENDED, why.clone().into_bytes()));
                }
                Writes {
                    records: vec![self.fire_dead_lettered(whole, error)],
                    ops,
                }
            }
        };
        plan.what = Finish::Decided {
            decision: Box::new(decision),
            first,
            outputs,
        };
        (writes, plan, pin)
    }

    /// Apply an attempt whose writes are committed (`report`: what the
    /// commit appended).
    pub fn finished(
        &mut self,
        plan: FinishPlan,
        report: &AppendReport,
    ) -> Result<FireOutcome, CoreError> {
        self.fires.set_stopped(&plan.fire_id, &plan.partition);
        let (decision, first, outputs) = match plan.what {
            Finish::Cancelled => return Ok(FireOutcome::Cancelled),
            Finish::NotRun(why) => return Err(bad_state(&key::fire(&plan.fire_id), why)),
            Finish::Decided {
                decision,
                first,
                outputs,
            } => (decision, first, outputs),
        };
        let id = plan.fire_id;
        Ok(match *decision {
            Decision::Complete {
                outputs: emitted,
                dropped,
                ..
            } => {
                self.fires.remove(&id);
                self.fires.dead_in_a_row = 0;
                self.counters.fires_ok += 1;
                if dropped {
                    self.counters.outputs_dropped += emitted.len() as u64;
                    FireOutcome::Completed {
                        outputs: Vec::new(),
                        dropped: emitted.len(),
                    }
                } else {
                    FireOutcome::Completed {
                        outputs: report.seqs[..outputs.min(report.seqs.len())].to_vec(),
                        dropped: 0,
                    }
                }
            }
            Decision::Retry { record, at, error } => {
                self.fires.insert(record);
                self.counters.fires_failed += 1;
                FireOutcome::Retry { at, error }
            }
            Decision::DeadLetter {
                in_a_row,
                suspend,
                error,
                ..
            } => {
                self.fires.remove(&id);
                self.fires.insert_dead(&id, first.unwrap_or(u64::MAX));
                self.fires.dead_in_a_row = in_a_row;
                self.counters.fires_failed += 1;
                self.counters.dead_lettered += 1;
                if suspend.is_some() {
                    self.suspended = suspend;
                }
                FireOutcome::DeadLettered { error }
            }
        })
    }

    /// The attempt's writes could not be committed (or it never ran to
    /// the end): the fire no longer counts as running and runs again.
    pub fn abandon(&mut self, fire_id: &str) {
        let partition = self.fires.get(fire_id).map(|f| f.partition.clone());
        match partition {
            Some(p) => self.fires.set_stopped(fire_id, &p),
            // Cancelled meanwhile: its partition was released then.
            None => self.fires.set_stopped(fire_id, &None),
        }
    }
}
