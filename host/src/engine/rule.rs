//! A deployable rule: a manifest and a component turned into a core of the
//! right kind, behind one object-safe face ([`Driven`]) that the driver,
//! the engine and `sluice test` use whatever the kind.

use crate::event::Event;
use crate::log::EventLog;
use crate::manifest::{Manifest, Trigger};
use crate::runtime::{CallError, LoadError, RuleLabel, Runtime, Verdict};
use crate::triggers::Kind;
use crate::triggers::batch::Batch;
use crate::triggers::core::{CoreError, Counters, RuleCore, RuleSpec, Step, Stop};
use crate::triggers::dwell::Dwell;
use crate::triggers::fires::{FireAttempt, FireJob, FireOutcome, FireRecord};
use crate::triggers::schedule::Schedule;

/// Why a rule could not be set up to run.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The manifest's trigger cannot be set up (it passed the manifest's
    /// checks, so this names an inconsistency).
    #[error("{name}: {problem}")]
    Trigger {
        /// The rule's name.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// The component did not load.
    #[error("{name}: {error}")]
    Load {
        /// The rule's name.
        name: String,
        /// What went wrong.
        #[source]
        error: LoadError,
    },
}

/// The trigger kind, ready to open on a log.
#[derive(Debug, Clone)]
enum KindSpec {
    Batch(Batch),
    Dwell(Dwell),
    Schedule(Schedule),
}

/// A rule ready to run: its spec (component, policies) and its kind.
#[derive(Debug, Clone)]
pub struct Deployable {
    /// Component and policies.
    pub spec: RuleSpec,
    /// The manifest's version (0 when built without a manifest).
    pub version: u32,
    kind: KindSpec,
}

impl Deployable {
    /// Load `component` for `tenant` as `manifest` describes.
    pub fn load(
        runtime: &Runtime,
        tenant: &str,
        component: &[u8],
        manifest: &Manifest,
    ) -> Result<Self, SetupError> {
        let kind = match &manifest.trigger {
            Trigger::Batch(t) => KindSpec::Batch(Batch::from(t)),
            Trigger::Dwell(t) => KindSpec::Dwell(Dwell::from(t)),
            Trigger::Schedule(t) => {
                KindSpec::Schedule(Schedule::new(t).map_err(|problem| SetupError::Trigger {
                    name: manifest.name.clone(),
                    problem,
                })?)
            }
        };
        let label = RuleLabel::new(tenant, &format!("{}@{}", manifest.name, manifest.version));
        let rule = runtime
            .load(label, component, manifest.limits.clone())
            .map_err(|error| SetupError::Load {
                name: manifest.name.clone(),
                error,
            })?;
        Ok(Self {
            spec: RuleSpec::new(tenant, manifest, rule),
            version: manifest.version,
            kind,
        })
    }

    /// A batch rule from its parts (for embedding without a manifest file).
    pub fn batch(spec: RuleSpec, trigger: &crate::manifest::BatchTrigger) -> Self {
        Self {
            spec,
            version: 0,
            kind: KindSpec::Batch(Batch::from(trigger)),
        }
    }

    /// Hold the rule to at most `max` partitions with open state (a
    /// tenant's quota): an event for one more is skipped and recorded.
    pub fn with_max_partitions(mut self, max: usize) -> Self {
        self.spec.max_partitions = Some(max);
        self
    }

    /// What the feed says of this version: rule, version, kind, component
    /// digest.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({"rule": self.spec.name, "version": self.version,
            "kind": self.kind_name(), "digest": self.spec.rule.digest()})
    }

    /// The trigger kind's name (`batch`, `dwell`, `schedule`).
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            KindSpec::Batch(_) => Batch::NAME,
            KindSpec::Dwell(_) => Dwell::NAME,
            KindSpec::Schedule(_) => Schedule::NAME,
        }
    }

    /// Refuse, before anything changes, a version whose trigger kind is not
    /// the kind of the rule's stored state.
    pub fn check_state(&self, log: &EventLog) -> Result<(), CoreError> {
        let ns = crate::triggers::state::namespace(&self.spec.tenant, &self.spec.name);
        crate::triggers::core::check_kind(log, &ns, self.kind_name())
    }

    /// Open the rule's durable state on `log`; it starts running at engine
    /// time `now` (see [`RuleCore::begin`]).
    pub fn open(self, log: &EventLog, now: i64) -> Result<Box<dyn Driven>, CoreError> {
        fn begun<K: Kind>(
            mut core: RuleCore<K>,
            log: &EventLog,
            now: i64,
        ) -> Result<Box<dyn Driven>, CoreError> {
            core.begin(log, now)?;
            Ok(Box::new(core))
        }
        match self.kind {
            KindSpec::Batch(b) => begun(RuleCore::open(log, self.spec, b)?, log, now),
            KindSpec::Dwell(d) => begun(RuleCore::open(log, self.spec, d)?, log, now),
            KindSpec::Schedule(s) => begun(RuleCore::open(log, self.spec, s)?, log, now),
        }
    }
}

/// What a rule is doing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleStatus {
    /// Last seq processed.
    pub cursor: u64,
    /// Fires waiting to run (or to be retried), running ones included.
    pub pending_fires: usize,
    /// Fires running now.
    pub running_fires: usize,
    /// Dead letters.
    pub dead_letters: usize,
    /// Partitions with open state.
    pub partitions: usize,
    /// Why the rule is suspended, if it is.
    pub suspended: Option<String>,
    /// The rule is paused.
    pub paused: bool,
    /// The last error the rule's task met (storage or `select`), if any.
    pub last_error: Option<String>,
    /// The last failed handler attempt, with the guest's backtrace.
    pub last_failure: Option<Failure>,
    /// The earliest deadline or retry time (ms), while not held.
    pub next_due: Option<i64>,
    /// Counters since the rule was deployed (saved at stops and every half
    /// minute; see [`crate::triggers::core::Counters`]).
    pub counters: Counters,
}

/// A failed handler attempt, as a rule's status shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Failure {
    /// The fire.
    pub fire_id: String,
    /// The attempt's number (1-based).
    pub attempt: u32,
    /// When the attempt started (engine time, ms).
    pub at: i64,
    /// What went wrong.
    pub message: String,
    /// The guest backtrace, when the call trapped.
    pub backtrace: Option<String>,
    /// The last lines the guest wrote to stderr during the call.
    pub stderr: Vec<String>,
}

impl Failure {
    /// The failure of `attempt`, if its handler failed.
    pub fn of(attempt: &FireAttempt) -> Option<Self> {
        let Ok(Err(e)) = &attempt.result else {
            return None;
        };
        Some(Self {
            fire_id: attempt.record.fire_id.clone(),
            attempt: attempt.attempt,
            at: attempt.now,
            message: e.to_string(),
            backtrace: e.backtrace.clone(),
            stderr: e.stderr.clone(),
        })
    }
}

/// A rule's core as the driver sees it, whatever its kind.
pub trait Driven: Send + std::fmt::Debug {
    /// The rule's spec.
    fn spec(&self) -> &RuleSpec;
    /// Paused or suspended: it processes nothing until resumed.
    fn held(&self) -> bool;
    /// Last seq processed.
    fn cursor(&self) -> u64;
    /// The seq up to which the log holds nothing more for the rule.
    fn seen(&self) -> u64;
    /// Close what is due at `now`.
    fn expire(&mut self, log: &EventLog, now: i64) -> Result<Step, CoreError>;
    /// Fire (or drop) every open buffer: the rule is being undeployed.
    fn drain(&mut self, log: &EventLog, now: i64, fire: bool) -> Result<Step, CoreError>;
    /// Pending fire ids, oldest first.
    fn pending(&self) -> Vec<String>;
    /// Read, select and process up to `max` new events at `now`, no
    /// further than seq `until`.
    fn step(
        &mut self,
        log: &EventLog,
        now: i64,
        max: usize,
        until: Option<u64>,
    ) -> Result<Step, CoreError>;
    /// The rule's verdicts on events (not yet, or already, in the log).
    fn select(&mut self, events: &[Event]) -> Result<Vec<Verdict>, CallError>;
    /// How many of `events` a step would consume under `stop`.
    fn plan_len(
        &self,
        events: &[Event],
        verdicts: &[Verdict],
        now_of: &dyn Fn(usize) -> i64,
        stop: Stop,
    ) -> usize;
    /// Process selected events right after the cursor, as `stop` says.
    fn step_with(
        &mut self,
        log: &EventLog,
        events: &[Event],
        verdicts: &[Verdict],
        now_of: &dyn Fn(usize) -> i64,
        stop: Stop,
    ) -> Result<Step, CoreError>;
    /// Fires that may start at `now`, oldest first, at most `max` (none
    /// while held).
    fn due_fires(&self, now: i64, max: usize) -> Vec<String>;
    /// Start a fire: its job.
    fn start(&mut self, log: &EventLog, fire_id: &str, now: i64) -> Result<FireJob, CoreError>;
    /// Commit a job's attempt.
    fn finish(&mut self, log: &EventLog, attempt: FireAttempt) -> Result<FireOutcome, CoreError>;
    /// A pending fire.
    fn fire(&self, fire_id: &str) -> Option<&FireRecord>;
    /// The earliest deadline or retry time.
    fn next_due(&self) -> Option<i64>;
    /// Fires running now.
    fn running(&self) -> usize;
    /// Status (without `last_error`, which the driver knows).
    fn status(&self) -> RuleStatus;
    /// Save the counters (at a stop, and now and then while running).
    fn save_counters(&self, log: &EventLog) -> Result<(), CoreError>;
    /// Pause.
    fn pause(&mut self, log: &EventLog) -> Result<(), CoreError>;
    /// Resume (from a pause or a suspension).
    fn resume(&mut self, log: &EventLog) -> Result<(), CoreError>;
    /// The dead-letter list.
    fn dead_letters(&self, log: &EventLog) -> Result<Vec<FireRecord>, CoreError>;
    /// Re-drive a dead letter.
    fn redrive(&mut self, log: &EventLog, fire_id: &str) -> Result<(), CoreError>;
    /// Drop a dead letter.
    fn discard_dead(&mut self, log: &EventLog, fire_id: &str) -> Result<(), CoreError>;
}

impl<K: Kind> Driven for RuleCore<K> {
    fn spec(&self) -> &RuleSpec {
        RuleCore::spec(self)
    }
    fn held(&self) -> bool {
        RuleCore::held(self)
    }
    fn cursor(&self) -> u64 {
        RuleCore::cursor(self)
    }
    fn seen(&self) -> u64 {
        RuleCore::seen(self)
    }
    fn expire(&mut self, log: &EventLog, now: i64) -> Result<Step, CoreError> {
        RuleCore::expire(self, log, now)
    }
    fn drain(&mut self, log: &EventLog, now: i64, fire: bool) -> Result<Step, CoreError> {
        RuleCore::drain(self, log, now, fire)
    }
    fn pending(&self) -> Vec<String> {
        self.pending_fires().map(str::to_owned).collect()
    }
    fn step(
        &mut self,
        log: &EventLog,
        now: i64,
        max: usize,
        until: Option<u64>,
    ) -> Result<Step, CoreError> {
        RuleCore::step_until(self, log, now, max, until)
    }
    fn select(&mut self, events: &[Event]) -> Result<Vec<Verdict>, CallError> {
        RuleCore::select(self, events)
    }
    fn plan_len(
        &self,
        events: &[Event],
        verdicts: &[Verdict],
        now_of: &dyn Fn(usize) -> i64,
        stop: Stop,
    ) -> usize {
        self.plan(events, verdicts, now_of, stop).consumed
    }
    fn step_with(
        &mut self,
        log: &EventLog,
        events: &[Event],
        verdicts: &[Verdict],
        now_of: &dyn Fn(usize) -> i64,
        stop: Stop,
    ) -> Result<Step, CoreError> {
        RuleCore::step_with(self, log, events, verdicts, now_of, stop)
    }
    fn due_fires(&self, now: i64, max: usize) -> Vec<String> {
        RuleCore::due_fires_upto(self, now, max)
    }
    fn start(&mut self, log: &EventLog, fire_id: &str, now: i64) -> Result<FireJob, CoreError> {
        RuleCore::start(self, log, fire_id, now)
    }
    fn finish(&mut self, log: &EventLog, attempt: FireAttempt) -> Result<FireOutcome, CoreError> {
        RuleCore::finish(self, log, attempt)
    }
    fn fire(&self, fire_id: &str) -> Option<&FireRecord> {
        RuleCore::fire(self, fire_id)
    }
    fn next_due(&self) -> Option<i64> {
        RuleCore::next_due(self)
    }
    fn running(&self) -> usize {
        self.fires().running()
    }
    fn save_counters(&self, log: &EventLog) -> Result<(), CoreError> {
        RuleCore::save_counters(self, log)
    }
    fn status(&self) -> RuleStatus {
        RuleStatus {
            cursor: self.cursor(),
            pending_fires: self.fires().len(),
            running_fires: self.fires().running(),
            dead_letters: self.fires().dead_len(),
            partitions: self.partitions(),
            suspended: self.suspended().map(str::to_owned),
            paused: self.paused(),
            last_error: None,
            last_failure: None,
            next_due: self.next_due(),
            counters: self.counters().clone(),
        }
    }
    fn pause(&mut self, log: &EventLog) -> Result<(), CoreError> {
        RuleCore::pause(self, log)
    }
    fn resume(&mut self, log: &EventLog) -> Result<(), CoreError> {
        RuleCore::resume(self, log)
    }
    fn dead_letters(&self, log: &EventLog) -> Result<Vec<FireRecord>, CoreError> {
        RuleCore::dead_letters(self, log)
    }
    fn redrive(&mut self, log: &EventLog, fire_id: &str) -> Result<(), CoreError> {
        RuleCore::redrive(self, log, fire_id)
    }
    fn discard_dead(&mut self, log: &EventLog, fire_id: &str) -> Result<(), CoreError> {
        RuleCore::discard_dead(self, log, fire_id)
    }
}
