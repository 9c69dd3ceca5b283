//! The one driver: it owns a rule's round and does the I/O its core
//! computes. Every caller drives a rule through it — the engine's rule
//! task, `sluice test`, undeploy drains, re-drives — and only *how fires
//! run* differs between them: a [`Runner`] runs a job at once (inline) or
//! hands it elsewhere (the engine's work slots).
//!
//! A round, in this order:
//!
//! 1. commit the fires that finished since the last round;
//! 2. serve control requests (pause, resume, re-drive, …);
//! 3. a turn: read new events, ask the rule's `select`, and hand events
//!    and deadlines to the core in time order, one step per slice of
//!    events, up to a budget (so a rule under sustained ingest still
//!    comes back to its fires and requests within a bounded time);
//! 4. start the fires that are due, up to the rule's concurrency: each
//!    slot takes a chain of fires of different partitions, run one after
//!    another and committed together.
//!
//! Every transaction that changes the rule's state or appends its records
//! goes through [`Driver::commit`]: that is the one place a store that
//! must check ownership of the rule checks it.
//!
//! Before a step handles a deadline it asks the log how far it is known
//! ([`EventLog::horizon`]): every event ingested before the deadline is
//! read first, so no event lands on the wrong side of a deadline because
//! it was still being committed.

use crate::event::Event;
use crate::log::{AppendReport, EventLog, EventQuery};
use crate::runtime::{CallErrorKind, LoadedRule, RuleInstance};
use crate::triggers::Kind;
pub use crate::triggers::core::Input;
use crate::triggers::core::control::{dead_letters, parse_dead};
use crate::triggers::core::{
    CoreError, Inspection, RuleCore, RuleSpec, SelectFailure, Start, Step, Writes,
};
use crate::triggers::fires::{FireAttempt, FireOutcome, FireRecord};
use crate::triggers::state as key;
use crate::verdict::Verdict;

use super::job::{CHAIN_FIRES, Chain, FireJob};
use super::rule::{Failure, RuleStatus};

/// Events read per step: one commit per step, so a step's writes (a row
/// per partition it touched) are shared by many events.
pub const STEP_EVENTS: usize = 8_192;

/// A request to a rule, served at the start of a round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Hold the rule: nothing is processed until resumed.
    Pause,
    /// Lift a pause or a suspension.
    Resume,
    /// Put a dead letter back in the outbox.
    Redrive(String),
    /// Drop a dead letter.
    DiscardDead(String),
    /// The dead-letter list.
    DeadLetters,
    /// The fires waiting, retrying or running.
    Pending,
    /// Save the counters.
    SaveCounters,
    /// A page of the open partitions after a key (`None`: from the
    /// start), and a schedule's next ticks.
    Inspect {
        /// Start after this partition key.
        after: Option<String>,
        /// Partitions on the page, at most.
        limit: usize,
    },
}

/// What a request answers.
#[derive(Debug, Clone)]
pub enum Answer {
    /// Done; the rule's status after it.
    Status(Box<RuleStatus>),
    /// Fires (dead letters, or pending ones), oldest first.
    Fires(Vec<FireRecord>),
    /// A page of the open partitions.
    Inspection(Box<Inspection>),
}

/// A schedule's next ticks shown by [`Request::Inspect`].
const NEXT_TICKS: usize = 5;

/// How fires run.
pub trait Runner {
    /// Run `chain` now and give its attempts back (inline; `Err(fire id)`
    /// for a fire it did not start), or take it to run elsewhere and give
    /// `None`; its attempts then come back together in a later round.
    /// `lone`: the rule has this one fire due and nothing else to do — a
    /// thread hop would only add latency.
    fn run(&mut self, chain: Chain, lone: bool) -> Option<Vec<Result<FireAttempt, String>>>;
}

/// Runs every fire at once, on the caller's thread (`sluice test`,
/// drains).
#[derive(Debug, Default)]
pub struct Inline;

impl Runner for Inline {
    fn run(&mut self, chain: Chain, _lone: bool) -> Option<Vec<Result<FireAttempt, String>>> {
        Some(chain.run(None, FireJob::run_guarded))
    }
}

/// Hears what a round did (reports, metrics, status).
pub trait Observer {
    /// A step of rule `rule` was committed at engine time `now`.
    fn step(&mut self, _rule: &str, _step: &Step, _now: i64) {}
    /// A fire's attempt was committed.
    fn finished(&mut self, _attempt: &FireAttempt, _outcome: &FireOutcome) {}
}

/// Hears nothing.
#[derive(Debug, Default)]
pub struct Quiet;

impl Observer for Quiet {}

/// What a round is given.
#[derive(Debug, Default)]
pub struct RoundIn {
    /// Engine time (ms).
    pub now: i64,
    /// Attempts of fires that finished elsewhere since the last round.
    pub finished: Vec<FireAttempt>,
    /// Requests to serve, each with where its answer goes.
    pub requests: Vec<(Request, Option<Reply>)>,
    /// Events at most in this round's turn.
    pub budget: usize,
    /// The rule is stopping: finish and serve, start nothing.
    pub stopping: bool,
    /// Run every pending fire now, retries too, until each completes or
    /// is dead-lettered (an undeploy's drain).
    pub flush: bool,
}

/// Where a request's answer goes.
pub struct Reply(pub Box<dyn FnOnce(Result<Answer, CoreError>) + Send>);

impl Reply {
    /// Send the answer.
    pub fn send(self, answer: Result<Answer, CoreError>) {
        (self.0)(answer)
    }
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reply")
    }
}

/// What a round did.
#[derive(Debug, Default)]
pub struct RoundOut {
    /// Events were left to read when the budget ran out, or deadlines
    /// still due when a step stopped at its cap: run another round now.
    pub more: bool,
    /// Something changed: the cursor moved, a deadline or tick was
    /// handled, a fire ran.
    pub progressed: bool,
    /// The last error (storage, or `select`); nothing of the failed piece
    /// was committed.
    pub error: Option<String>,
    /// The last handler failure committed this round.
    pub failure: Option<Failure>,
    /// Answers to the round's requests, for the caller to send once it has
    /// published the rule's status: whoever asked then reads at least what
    /// the answer says.
    pub replies: Vec<(Reply, Result<Answer, CoreError>)>,
}

impl RoundOut {
    /// Send the answers (once the status they speak of is published).
    pub fn send_replies(&mut self) {
        for (reply, answer) in self.replies.drain(..) {
            reply.send(answer);
        }
    }
}

/// A rule's core with the I/O around it: its log, its component.
#[derive(Debug)]
pub struct Driver<K: Kind> {
    core: RuleCore<K>,
    log: EventLog,
    rule: LoadedRule,
    instance: RuleInstance,
    /// The log holds nothing for this rule's tenant up to here (other
    /// tenants' seqs): in memory only, so idle rules need not look again.
    seen: u64,
    /// Fires started behind another in a chain: running, but not counted
    /// against the concurrency (their chain's first fire is).
    tails: rustc_hash::FxHashSet<String>,
}

impl<K: Kind> std::ops::Deref for Driver<K> {
    type Target = RuleCore<K>;

    /// The core, read-only: what the rule holds.
    fn deref(&self) -> &RuleCore<K> {
        &self.core
    }
}

impl<K: Kind> Driver<K> {
    /// Load the rule's state from `log` and start it at engine time `now`,
    /// as `start` says (see [`RuleCore::begin`]).
    pub fn open(
        log: &EventLog,
        spec: RuleSpec,
        kind: K,
        rule: LoadedRule,
        now: i64,
        start: Start,
    ) -> Result<Self, CoreError> {
        let rows = log.state_scan(&spec.namespace())?;
        let core = RuleCore::load(spec, kind, rows)?;
        let mut driver = Self {
            instance: rule.instance(),
            core,
            log: log.clone(),
            rule,
            seen: 0,
            tails: Default::default(),
        };
        let (writes, begin) = driver.core.begin(now, start);
        driver.commit(writes)?;
        driver.core.begun(begin);
        Ok(driver)
    }

    /// The core (read-only).
    pub fn core(&self) -> &RuleCore<K> {
        &self.core
    }

    /// Commit `writes` for this rule, through the one write path
    /// ([`commit`]).
    pub fn commit(&self, writes: Writes) -> Result<AppendReport, CoreError> {
        commit_rule(&self.log, self.core.spec(), writes)
    }

    /// The seq up to which the log holds nothing more for this rule.
    pub fn seen(&self) -> u64 {
        self.core.cursor().max(self.seen)
    }

    /// The rule's verdicts on `events` (engine records and the rule's own
    /// outputs are skipped without asking the guest).
    pub fn select(&mut self, events: &[Event]) -> Result<Vec<Verdict>, crate::runtime::CallError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let picked: Vec<&Event> = events
            .iter()
            .filter(|e| self.core.is_candidate(&e.source))
            .collect();
        if picked.len() == events.len() {
            return self.instance.select(events);
        }
        let mut verdicts = vec![Verdict::Skip; events.len()];
        if picked.is_empty() {
            return Ok(verdicts);
        }
        let got = self.instance.select(&picked)?;
        let mut got = got.into_iter();
        for (v, e) in verdicts.iter_mut().zip(events) {
            if self.core.is_candidate(&e.source) {
                *v = got.next().unwrap_or(Verdict::Skip);
            }
        }
        Ok(verdicts)
    }

    /// Plan, commit and apply `input`.
    pub fn step_with(&mut self, input: &Input<'_>) -> Result<Step, CoreError> {
        if self.core.held() {
            return Ok(self.idle());
        }
        let mut plan = self.core.plan(input);
        let writes = self.core.writes(&mut plan);
        if plan.catches_up() {
            crate::crash::point("schedule.catch_up.before_commit");
        } else if plan.ticks() {
            crate::crash::point("schedule.before_commit");
        } else if plan.handles_deadline() {
            crate::crash::point("timer.before_commit");
        }
        self.commit(writes)?;
        Ok(self.core.apply(plan))
    }

    /// How many events of `input` a step would take.
    pub fn plan_len(&self, input: &Input<'_>) -> usize {
        self.core.plan(input).consumed
    }

    fn idle(&self) -> Step {
        Step {
            cursor: self.core.cursor(),
            ..Step::default()
        }
    }

    /// One step at engine time `now`: up to `max` new events, and the
    /// deadlines among and after them that are due. A paused or suspended
    /// rule does nothing (its events wait, pinned).
    pub fn step(&mut self, now: i64, max: usize) -> Result<Step, CoreError> {
        if self.core.held() {
            return Ok(self.idle());
        }
        // A deadline due now: seal the log up to it first, so every event
        // ingested before it is read first.
        let due = self.core.next_deadline().filter(|d| *d <= now);
        let (sealed, last) = match due {
            Some(d) => {
                let (t, last) = self.log.horizon(d);
                (Some(t.min(now)), last)
            }
            None => (None, self.log.last_seq()),
        };
        let limit = self.core.select_limit(max);
        let events = if last > self.seen() && limit > 0 {
            self.log.query(&EventQuery {
                after_seq: Some(self.core.cursor()),
                until_seq: Some(last),
                ..EventQuery::tenant(&self.core.spec().tenant, limit)
            })?
        } else {
            Vec::new()
        };
        if events.is_empty() {
            if limit > 0 {
                self.seen = self.seen.max(last);
            }
            if due.is_none() {
                return Ok(self.idle());
            }
        }
        // Events left unread (the read was cut at `limit`): no deadline
        // past the last one read is handled yet.
        let truncated = last > self.seen() && events.len() >= limit;
        let last_time = events.last().map(|e| e.ingested);
        let horizon = match (truncated, sealed, last_time) {
            (true, _, t) => t.unwrap_or(i64::MIN),
            (false, Some(s), t) => s.max(t.unwrap_or(i64::MIN).min(now)),
            (_, _, t) => t.unwrap_or(i64::MIN).min(now),
        };
        let verdicts = match self.select(&events) {
            Ok(v) => {
                self.core.select_ok(events.len());
                v
            }
            Err(e) => return self.select_failed(&events, &e, now),
        };
        let step = self.step_with(&Input::events(&events, &verdicts, horizon))?;
        if !truncated && !step.capped {
            self.seen = self.seen.max(last);
        }
        Ok(step)
    }

    fn select_failed(
        &mut self,
        events: &[Event],
        error: &crate::runtime::CallError,
        now: i64,
    ) -> Result<Step, CoreError> {
        let candidates: Vec<u64> = events
            .iter()
            .filter(|e| self.core.is_candidate(&e.source))
            .map(|e| e.seq)
            .collect();
        let failure = SelectFailure {
            message: error.to_string(),
            maybe_machine: matches!(error.kind, CallErrorKind::Timeout { .. })
                && self.rule.limits().fuel > 0,
        };
        let at = events
            .iter()
            .find(|e| candidates.first() == Some(&e.seq))
            .map_or(now, |e| e.ingested);
        match self
            .core
            .select_failed(events.len(), &candidates, &failure, at)
        {
            Some((writes, plan)) => {
                self.commit(writes)?;
                Ok(self.core.poisoned(plan))
            }
            None => Err(CoreError::Select(failure.message)),
        }
    }

    /// Steps at `now` until no new event is left, or `budget` events were
    /// read or a step stopped at its deadline cap (then `more`). Each step
    /// is reported to `observer`.
    pub fn turn(
        &mut self,
        now: i64,
        budget: usize,
        observer: &mut dyn Observer,
    ) -> Result<(bool, bool), CoreError> {
        let mut left = budget;
        let mut progressed = false;
        loop {
            let before = self.core.cursor();
            let step = self.step(now, STEP_EVENTS.min(left.max(1)))?;
            let moved = step.cursor != before;
            let did = moved
                || step.earliest_deadline.is_some()
                || !step.fires.is_empty()
                || !step.notes.is_empty()
                || step.missed.is_some();
            if did {
                observer.step(&self.core.spec().name, &step, now);
                progressed = true;
            }
            if step.capped {
                // More deadlines are due: the round starts the fires made
                // so far, and the next round plans the rest.
                return Ok((true, progressed));
            }
            if !moved {
                return Ok((false, progressed));
            }
            left = left.saturating_sub(step.read.max(1));
            if left == 0 {
                return Ok((self.core.cursor() < self.log.last_seq(), progressed));
            }
        }
    }

    /// Start fire `fire_id` at `now`: mark it running and build its job.
    pub fn start_fire(&mut self, fire_id: &str, now: i64) -> Result<FireJob, CoreError> {
        let record = self.core.start(fire_id)?;
        Ok(FireJob::new(
            record,
            &self.core.spec().tenant,
            self.log.clone(),
            self.rule.clone(),
            now,
        ))
    }

    /// Commit what a fire's run came to.
    pub fn finish_fire(&mut self, attempt: &FireAttempt) -> Result<FireOutcome, CoreError> {
        self.finish_fires(std::slice::from_ref(attempt))?
            .pop()
            .expect("one outcome per attempt")
    }

    /// Commit what the runs of `attempts` came to, in one transaction
    /// (one fsync for all of them): an outcome per attempt, in order. If
    /// the commit fails, none is committed and every one runs again.
    #[allow(clippy::type_complexity)]
    pub fn finish_fires(
        &mut self,
        attempts: &[FireAttempt],
    ) -> Result<Vec<Result<FireOutcome, CoreError>>, CoreError> {
        for a in attempts {
            self.tails.remove(&a.record.fire_id);
        }
        let (writes, plans) = self.core.finish_all(attempts);
        crate::crash::point("fire.before_completion");
        if plans.len() > 1 {
            crate::crash::point("fire.before_grouped_completion");
        }
        match self.commit(writes) {
            Ok(report) => {
                let counts: Vec<usize> = plans.iter().map(|(_, n)| *n).collect();
                Ok(plans
                    .into_iter()
                    .zip(report.split(&counts))
                    .map(|((plan, _), report)| self.core.finished(plan, &report))
                    .collect())
            }
            Err(e) => {
                for (plan, _) in &plans {
                    self.core.abandon(plan.fire_id());
                }
                Err(e)
            }
        }
    }

    /// A fire whose run was lost (its task cancelled) or not started (its
    /// chain ran out of time): it runs again.
    pub fn lost_fire(&mut self, fire_id: &str) {
        self.tails.remove(fire_id);
        self.core.abandon(fire_id);
    }

    /// Fires running, counting a chain once.
    fn running_slots(&self) -> usize {
        self.core.fires().running().saturating_sub(self.tails.len())
    }

    /// Run fire `fire_id` once, here and now (start, run, finish).
    pub fn run_fire(&mut self, fire_id: &str, now: i64) -> Result<FireOutcome, CoreError> {
        let job = self.start_fire(fire_id, now)?;
        let attempt = job.run_guarded();
        self.finish_fire(&attempt)
    }

    /// Serve one request.
    pub fn serve(&mut self, request: &Request, now: i64) -> Result<Answer, CoreError> {
        match request {
            Request::Pause => {
                let w = self.core.pause();
                self.commit(w)?;
                self.core.paused_now();
            }
            Request::Resume => {
                let w = self.core.resume(now);
                self.commit(w)?;
                self.core.resumed(now);
            }
            Request::Redrive(id) => {
                let k = key::dead(id);
                let Some(value) = self.log.state_get(self.core.namespace(), &k)? else {
                    return Err(CoreError::State {
                        key: k,
                        problem: "no such dead letter".into(),
                    });
                };
                let (w, record) = self.core.redrive(parse_dead(&k, &value)?);
                self.commit(w)?;
                self.core.redriven(record);
            }
            Request::DiscardDead(id) => {
                let w = self.core.discard_dead(id)?;
                self.commit(w)?;
                self.core.discarded(id);
            }
            Request::DeadLetters => {
                let rows = self
                    .log
                    .state_scan_prefix(self.core.namespace(), key::DEAD)?;
                return Ok(Answer::Fires(dead_letters(rows)?));
            }
            Request::Pending => {
                let fires = self.core.fires();
                return Ok(Answer::Fires(
                    fires
                        .ids()
                        .filter_map(|id| fires.get(id).cloned())
                        .collect(),
                ));
            }
            Request::SaveCounters => {
                self.commit(self.core.save_counters())?;
            }
            Request::Inspect { after, limit } => {
                let page = self.core.inspect(after.as_deref(), *limit, NEXT_TICKS);
                return Ok(Answer::Inspection(Box::new(page)));
            }
        }
        Ok(Answer::Status(Box::new(self.status())))
    }

    /// Pause the rule ([`Request::Pause`]).
    pub fn pause(&mut self, now: i64) -> Result<RuleStatus, CoreError> {
        self.status_of(Request::Pause, now)
    }

    /// Resume the rule ([`Request::Resume`]).
    pub fn resume(&mut self, now: i64) -> Result<RuleStatus, CoreError> {
        self.status_of(Request::Resume, now)
    }

    /// Re-drive a dead letter ([`Request::Redrive`]).
    pub fn redrive(&mut self, fire_id: &str, now: i64) -> Result<RuleStatus, CoreError> {
        self.status_of(Request::Redrive(fire_id.to_owned()), now)
    }

    /// Drop a dead letter ([`Request::DiscardDead`]).
    pub fn discard_dead(&mut self, fire_id: &str, now: i64) -> Result<RuleStatus, CoreError> {
        self.status_of(Request::DiscardDead(fire_id.to_owned()), now)
    }

    /// The dead-letter list, oldest first.
    pub fn dead_letters(&mut self) -> Result<Vec<FireRecord>, CoreError> {
        match self.serve(&Request::DeadLetters, 0)? {
            Answer::Fires(f) => Ok(f),
            _ => unreachable!("a listing answers with fires"),
        }
    }

    fn status_of(&mut self, request: Request, now: i64) -> Result<RuleStatus, CoreError> {
        match self.serve(&request, now)? {
            Answer::Status(s) => Ok(*s),
            _ => unreachable!("a control request answers with the status"),
        }
    }

    /// Fire (or drop) every open buffer: the rule is being undeployed.
    pub fn drain(&mut self, now: i64, fire: bool) -> Result<Step, CoreError> {
        let mut plan = self.core.plan_drain(now, fire);
        let writes = self.core.writes(&mut plan);
        self.commit(writes)?;
        Ok(self.core.apply(plan))
    }

    /// The rule's status (without `last_error` and `last_failure`, which
    /// the caller keeps).
    pub fn status(&self) -> RuleStatus {
        let c = &self.core;
        RuleStatus {
            cursor: c.cursor(),
            pending_fires: c.fires().len(),
            running_fires: self.running_slots(),
            dead_letters: c.fires().dead_len(),
            partitions: c.partitions(),
            suspended: c.suspended().map(str::to_owned),
            paused: c.paused(),
            failed: None,
            last_error: None,
            last_failure: None,
            next_due: c.next_due(),
            counters: c.counters().clone(),
        }
    }

    /// One round (see the module's description).
    pub fn round(
        &mut self,
        input: RoundIn,
        runner: &mut dyn Runner,
        observer: &mut dyn Observer,
    ) -> RoundOut {
        // A test can make a round fail here (`round/<tenant>/<rule>`).
        fail::fail_point!(&format!(
            "round/{}/{}",
            self.core.spec().tenant,
            self.core.spec().name
        ));
        let mut out = RoundOut::default();
        let now = input.now;
        self.finished(&input.finished, &mut out, observer);
        for (request, reply) in input.requests {
            let answer = self.serve(&request, now);
            if let Err(e) = &answer
                && request == Request::SaveCounters
            {
                tracing::warn!(rule = %self.core.spec().name, error = %e, "could not save the rule's counters");
            }
            if let Some(reply) = reply {
                out.replies.push((reply, answer));
            }
        }
        if input.stopping {
            return out;
        }
        match self.turn(now, input.budget, observer) {
            Ok((more, progressed)) => {
                out.more = more;
                out.progressed |= progressed;
            }
            Err(e) => out.error = Some(e.to_string()),
        }
        // Start what is due; fires run inline may make the next fire of
        // their partition due.
        let fires_now = if input.flush { i64::MAX } else { now };
        loop {
            let running = self.running_slots();
            let slots = (self.core.spec().concurrency as usize).saturating_sub(running);
            if slots == 0 {
                break;
            }
            let due = self.core.due_fires(
                fires_now,
                slots.saturating_mul(CHAIN_FIRES).saturating_add(1),
            );
            if due.is_empty() {
                break;
            }
            let lone = due.len() == 1 && running == 0 && self.seen() >= self.log.last_seq();
            // Each slot a chain: the due fires, oldest first, cut into
            // consecutive runs (so that fires run inline go in creation
            // order).
            let take = due.len().min(slots.saturating_mul(CHAIN_FIRES));
            let per_chain = take.div_ceil(slots.min(take));
            let mut done = Vec::new();
            for ids in due[..take].chunks(per_chain) {
                let mut jobs = Vec::with_capacity(ids.len());
                for (i, id) in ids.iter().enumerate() {
                    match self.start_fire(id, now) {
                        Ok(job) => jobs.push(job),
                        Err(e) => {
                            out.error = Some(e.to_string());
                            break;
                        }
                    }
                    if i > 0 {
                        self.tails.insert(id.clone());
                    }
                }
                if jobs.is_empty() {
                    continue;
                }
                if let Some(attempts) = runner.run(Chain(jobs), lone) {
                    for a in attempts {
                        match a {
                            Ok(a) => done.push(a),
                            Err(id) => self.lost_fire(&id),
                        }
                    }
                }
            }
            out.progressed = true;
            let ran = !done.is_empty();
            self.finished(&done, &mut out, observer);
            if !ran || out.error.is_some() {
                break;
            }
        }
        out
    }

    /// Commit the attempts of fires that finished, together.
    fn finished(
        &mut self,
        attempts: &[FireAttempt],
        out: &mut RoundOut,
        observer: &mut dyn Observer,
    ) {
        if attempts.is_empty() {
            return;
        }
        let outcomes = match self.finish_fires(attempts) {
            Ok(o) => o,
            Err(e) => {
                out.error = Some(e.to_string());
                return;
            }
        };
        for (attempt, outcome) in attempts.iter().zip(outcomes) {
            match outcome {
                Ok(outcome) => {
                    if let Some(f) = Failure::of(attempt) {
                        out.failure = Some(f);
                    }
                    observer.finished(attempt, &outcome);
                }
                Err(e) => out.error = Some(e.to_string()),
            }
        }
    }
}

/// A rule's driver as the engine and `sluice test` hold it, whatever the
/// kind.
pub trait Driven: Send + std::fmt::Debug {
    /// The rule's spec.
    fn spec(&self) -> &RuleSpec;
    /// Paused or suspended.
    fn held(&self) -> bool;
    /// Last seq processed.
    fn cursor(&self) -> u64;
    /// The seq up to which the log holds nothing more for the rule.
    fn seen(&self) -> u64;
    /// The earliest deadline or retry time.
    fn next_due(&self) -> Option<i64>;
    /// Fires that may start at `now` (at most `max`).
    fn due_fires(&self, now: i64, max: usize) -> Vec<String>;
    /// Fires running now (a chain counts once: one of its fires runs at a
    /// time).
    fn running(&self) -> usize;
    /// Since when the rule runs.
    fn up_since(&self) -> Option<i64>;
    /// The rule's status.
    fn status(&self) -> RuleStatus;
    /// One round.
    fn round(
        &mut self,
        input: RoundIn,
        runner: &mut dyn Runner,
        observer: &mut dyn Observer,
    ) -> RoundOut;
    /// One step (see [`Driver::step`]).
    fn step(&mut self, now: i64, max: usize) -> Result<Step, CoreError>;
    /// Serve a request.
    fn serve(&mut self, request: &Request, now: i64) -> Result<Answer, CoreError>;
    /// Fire or drop every open buffer (undeploy).
    fn drain(&mut self, now: i64, fire: bool) -> Result<Step, CoreError>;
    /// The rule's verdicts on events (not yet, or already, in the log).
    fn select(&mut self, events: &[Event]) -> Result<Vec<Verdict>, crate::runtime::CallError>;
    /// How many events of `input` a step would take.
    fn plan_len(&self, input: &Input<'_>) -> usize;
    /// Plan, commit and apply `input`.
    fn step_with(&mut self, input: &Input<'_>) -> Result<Step, CoreError>;
    /// A pending fire.
    fn fire(&self, fire_id: &str) -> Option<&FireRecord>;
    /// Run a fire once, here and now.
    fn run_fire(&mut self, fire_id: &str, now: i64) -> Result<FireOutcome, CoreError>;
    /// Start a fire: its job.
    fn start_fire(&mut self, fire_id: &str, now: i64) -> Result<FireJob, CoreError>;
    /// Commit a fire's attempt.
    fn finish_fire(&mut self, attempt: &FireAttempt) -> Result<FireOutcome, CoreError>;
    /// A fire whose run was lost: it runs again.
    fn lost_fire(&mut self, fire_id: &str);
}

impl<K: Kind> Driven for Driver<K> {
    fn spec(&self) -> &RuleSpec {
        self.core.spec()
    }
    fn held(&self) -> bool {
        self.core.held()
    }
    fn cursor(&self) -> u64 {
        self.core.cursor()
    }
    fn seen(&self) -> u64 {
        Driver::seen(self)
    }
    fn next_due(&self) -> Option<i64> {
        self.core.next_due()
    }
    fn due_fires(&self, now: i64, max: usize) -> Vec<String> {
        self.core.due_fires(now, max)
    }
    fn running(&self) -> usize {
        self.running_slots()
    }
    fn up_since(&self) -> Option<i64> {
        self.core.up_since()
    }
    fn status(&self) -> RuleStatus {
        Driver::status(self)
    }
    fn round(
        &mut self,
        input: RoundIn,
        runner: &mut dyn Runner,
        observer: &mut dyn Observer,
    ) -> RoundOut {
        Driver::round(self, input, runner, observer)
    }
    fn step(&mut self, now: i64, max: usize) -> Result<Step, CoreError> {
        Driver::step(self, now, max)
    }
    fn serve(&mut self, request: &Request, now: i64) -> Result<Answer, CoreError> {
        Driver::serve(self, request, now)
    }
    fn drain(&mut self, now: i64, fire: bool) -> Result<Step, CoreError> {
        Driver::drain(self, now, fire)
    }
    fn select(&mut self, events: &[Event]) -> Result<Vec<Verdict>, crate::runtime::CallError> {
        Driver::select(self, events)
    }
    fn plan_len(&self, input: &Input<'_>) -> usize {
        Driver::plan_len(self, input)
    }
    fn step_with(&mut self, input: &Input<'_>) -> Result<Step, CoreError> {
        Driver::step_with(self, input)
    }
    fn fire(&self, fire_id: &str) -> Option<&FireRecord> {
        self.core.fire(fire_id)
    }
    fn run_fire(&mut self, fire_id: &str, now: i64) -> Result<FireOutcome, CoreError> {
        Driver::run_fire(self, fire_id, now)
    }
    fn start_fire(&mut self, fire_id: &str, now: i64) -> Result<FireJob, CoreError> {
        Driver::start_fire(self, fire_id, now)
    }
    fn finish_fire(&mut self, attempt: &FireAttempt) -> Result<FireOutcome, CoreError> {
        Driver::finish_fire(self, attempt)
    }
    fn lost_fire(&mut self, fire_id: &str) {
        Driver::lost_fire(self, fire_id)
    }
}

/// The one write path: every transaction that changes rule
/// `tenant`/`name`'s state or appends its records — a driver's steps,
/// fires and control requests, a reset or undeploy dropping its state, a
/// swap's registry write with its record, a lifecycle record — commits
/// here, in one transaction. A store where several nodes share rules
/// checks here that this node still owns the rule. Blocking.
pub fn commit(
    log: &EventLog,
    tenant: &str,
    name: &str,
    writes: Writes,
) -> Result<AppendReport, CoreError> {
    if writes.is_empty() {
        return Ok(AppendReport::default());
    }
    tracing::trace!(%tenant, rule = %name, records = writes.records.len(), ops = writes.ops.len(), "commit");
    let mut ops = writes.ops;
    if let Some(fence) = log.fence(tenant, name)? {
        ops.insert(0, fence);
    }
    Ok(log.transact_blocking(writes.records, ops)?)
}

/// [`commit`] for the rule `spec` describes: a shadow's records are kept
/// in its own state instead of appended ([`super::shadow::keep_aside`]);
/// its commits are fenced by the live rule's lease.
pub fn commit_rule(
    log: &EventLog,
    spec: &RuleSpec,
    writes: Writes,
) -> Result<AppendReport, CoreError> {
    let writes = match spec.shadow {
        true => super::shadow::keep_aside(&spec.namespace(), writes),
        false => writes,
    };
    commit(log, &spec.tenant, &spec.name, writes)
}

/// Check, before anything changes, that the rule's stored state is of
/// kind `kind` (a redeploy of another kind is refused at once).
pub fn check_state(log: &EventLog, tenant: &str, name: &str, kind: &str) -> Result<(), CoreError> {
    let ns = key::namespace(tenant, name);
    let stored = log.state_get(&ns, key::KIND)?;
    crate::triggers::core::check_kind(stored.as_deref(), kind)
}
