//! Running a fire's handler: the one piece of a rule's work that calls
//! the guest's `handle-batch`. A [`FireJob`] owns everything it needs
//! (the log to read the fire's events by seq, the component), so it runs
//! on any thread while the driver carries on.

use crate::event::Event;
use crate::log::EventLog;
use crate::runtime::bindings::wit;
use crate::runtime::{CallError, LoadedRule};
use crate::triggers::FireReason;
use crate::triggers::fires::{FireAttempt, FireRecord, HandlerError, NotRun, Output};
use crate::triggers::state as key;

/// One handler run of a fire.
#[derive(Debug)]
pub struct FireJob {
    /// The fire as it was when the job started.
    pub record: FireRecord,
    /// This attempt's number (from 1).
    pub attempt: u32,
    /// Engine time the attempt started (the outputs' time, and the base of
    /// the retry time).
    pub now: i64,
    tenant: String,
    log: EventLog,
    rule: LoadedRule,
}

impl FireJob {
    /// A job for `record`, whose events it reads from `log`.
    pub fn new(
        record: FireRecord,
        tenant: &str,
        log: EventLog,
        rule: LoadedRule,
        now: i64,
    ) -> Self {
        Self {
            attempt: record.attempts + 1,
            record,
            now,
            tenant: tenant.to_owned(),
            log,
            rule,
        }
    }

    /// [`Self::run`], turning a panic of the host's own code into an
    /// attempt that did not run (so the fire is not left marked running).
    pub fn run_guarded(self) -> FireAttempt {
        let (record, now) = (self.record.clone(), self.now);
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run())).unwrap_or_else(|_| {
            FireAttempt::not_run(record, now, "the host panicked while running the fire")
        })
    }

    /// Read the fire's events (by seq: what is interleaved with them is
    /// never read) and run the handler on a fresh instance.
    pub fn run(self) -> FireAttempt {
        let events = batch(&self.log, &self.tenant, &self.record).map_err(NotRun);
        let mut input_hops = 0;
        let mut logs = Vec::new();
        let mut given = Vec::new();
        let result = events.and_then(|events: Vec<Event>| {
            input_hops = events.iter().map(|e| e.hops).max().unwrap_or(0);
            let pack = crate::runtime::event_pack(&events).map_err(NotRun)?;
            given = events;
            let batch = wit::Batch {
                fire_id: self.record.fire_id.clone(),
                rule: self.record.rule.clone(),
                partition: self.record.partition.clone(),
                reason: reason(&self.record.reason),
                attempt: self.attempt,
                events: pack,
            };
            let mut instance = self.rule.instance();
            let answer = instance.handle_batch(&batch);
            logs = instance.handler_logs().to_vec();
            Ok(answer
                .map(|emits| {
                    emits
                        .into_iter()
                        .map(|e| Output {
                            kind: e.kind,
                            payload: e.payload,
                        })
                        .collect()
                })
                .map_err(|e| handler_error(&e)))
        });
        FireAttempt {
            record: self.record,
            attempt: self.attempt,
            now: self.now,
            input_hops,
            result,
            logs,
            events: given,
        }
    }
}

/// The events of `record`'s batch: kept with it (a fire that was
/// dead-lettered), or read from the log by seq (what is interleaved with
/// them is never read).
pub fn batch(log: &EventLog, tenant: &str, record: &FireRecord) -> Result<Vec<Event>, String> {
    if record.kept {
        let ns = key::namespace(tenant, &record.rule);
        let bytes = log
            .state_get(&ns, &key::kept(&record.fire_id))
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "the batch kept with it is missing".to_owned())?;
        return serde_json::from_slice(&bytes).map_err(|e| format!("the batch kept with it: {e}"));
    }
    match log.read_seqs(tenant, &record.seqs) {
        Ok(e) if e.len() == record.seqs.len() => Ok(e),
        Ok(e) => Err(format!(
            "{} of its {} events are missing from the log",
            record.seqs.len() - e.len(),
            record.seqs.len()
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// A guest call's failure in the pipeline's terms.
pub fn handler_error(e: &CallError) -> HandlerError {
    HandlerError {
        message: e.to_string(),
        fatal: e.is_fatal(),
        backtrace: e.backtrace.clone(),
        stderr: e.stderr.clone(),
    }
}

/// A fire's reason as the WIT spells it.
pub fn reason(r: &FireReason) -> wit::Reason {
    match r {
        FireReason::CountReached => wit::Reason::CountReached,
        FireReason::WindowExpired => wit::Reason::WindowExpired,
        FireReason::Dwell {
            label,
            ordinal,
            member_since,
            epoch,
        } => wit::Reason::Dwell(wit::DwellReason {
            label: label.clone(),
            ordinal: *ordinal,
            member_since: *member_since,
            epoch: *epoch,
        }),
        FireReason::Schedule { tick, catch_up } => wit::Reason::Schedule(wit::ScheduleReason {
            tick: *tick,
            catch_up: *catch_up,
        }),
        FireReason::Drained => wit::Reason::Drained,
    }
}

/// Fires handed to one worker to run one after another: the rule's
/// `concurrency` counts a chain once, since one of its fires runs at a
/// time, and the attempts come back together, to be committed in one
/// transaction (one fsync for the chain, not one per fire).
#[derive(Debug)]
pub struct Chain(pub Vec<FireJob>);

/// How long a chain goes on starting fires: the rest come back unstarted
/// and run again later, so that one chain of slow handlers does not hold
/// its fires' commit back for long.
pub const CHAIN_BUDGET: std::time::Duration = std::time::Duration::from_millis(10);

/// Fires a chain holds at most.
pub const CHAIN_FIRES: usize = 64;

impl Chain {
    /// Run the jobs in order with `run`, while `budget` lasts (all of them
    /// with `None`): an attempt per job run, and `Err(fire id)` for each
    /// job not started.
    pub fn run(
        self,
        budget: Option<std::time::Duration>,
        mut run: impl FnMut(FireJob) -> FireAttempt,
    ) -> Vec<Result<FireAttempt, String>> {
        let started = std::time::Instant::now();
        self.0
            .into_iter()
            .enumerate()
            .map(|(i, job)| {
                let over = budget.is_some_and(|b| started.elapsed() >= b);
                match i > 0 && over {
                    true => Err(job.record.fire_id),
                    false => Ok(run(job)),
                }
            })
            .collect()
    }
}
