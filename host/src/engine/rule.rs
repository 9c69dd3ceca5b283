//! A deployable rule: a manifest and a component made into a driver of
//! the right kind ([`Deployable::open`]), behind the one object-safe face
//! ([`Driven`]) the engine and `sluice test` use whatever the kind.

use super::driver::{Driven, Driver};
use crate::log::EventLog;
use crate::manifest::Manifest;
use crate::runtime::{LoadError, LoadedRule, RuleLabel, Runtime};
use crate::triggers::Kind;
use crate::triggers::core::{CoreError, Counters, RuleSpec, Start};
use crate::triggers::fires::FireAttempt;
use crate::triggers::registry::{KindSpec, KindVisitor};

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
    /// The component did not load. (The message holds the load error;
    /// it is not also given as the source, which would print it twice in
    /// a chain.)
    #[error("{name}: {error}")]
    Load {
        /// The rule's name.
        name: String,
        /// What went wrong.
        error: LoadError,
    },
}

/// A rule ready to run: its spec (policies), its component and its kind.
#[derive(Debug, Clone)]
pub struct Deployable {
    /// Policies.
    pub spec: RuleSpec,
    /// The component.
    pub rule: LoadedRule,
    /// The manifest's version (0 when built without a manifest).
    pub version: u32,
    kind: KindSpec,
}

/// The core's spec of `manifest`'s rule for `tenant`.
pub fn spec_of(tenant: &str, manifest: &Manifest) -> RuleSpec {
    RuleSpec {
        tenant: tenant.to_owned(),
        name: manifest.name.clone(),
        retry: manifest.retry.clone(),
        select: manifest.select,
        outputs: manifest.outputs,
        concurrency: manifest.concurrency.max.max(1),
        max_partitions: None,
        shadow: false,
    }
}

impl Deployable {
    /// Load `component` for `tenant` as `manifest` describes.
    pub fn load(
        runtime: &Runtime,
        tenant: &str,
        component: &[u8],
        manifest: &Manifest,
    ) -> Result<Self, SetupError> {
        let kind =
            KindSpec::from_trigger(&manifest.trigger).map_err(|problem| SetupError::Trigger {
                name: manifest.name.clone(),
                problem,
            })?;
        let label = RuleLabel::new(tenant, &format!("{}@{}", manifest.name, manifest.version));
        let rule = runtime
            .load_with_fields(label, component, manifest.limits.clone(), &manifest.fields)
            .map_err(|error| SetupError::Load {
                name: manifest.name.clone(),
                error,
            })?;
        Ok(Self {
            spec: spec_of(tenant, manifest),
            rule,
            version: manifest.version,
            kind,
        })
    }

    /// A rule from its parts (for embedding without a manifest file).
    pub fn new(spec: RuleSpec, rule: LoadedRule, kind: KindSpec) -> Self {
        Self {
            spec,
            rule,
            version: 0,
            kind,
        }
    }

    /// A batch rule from its parts.
    pub fn batch(
        spec: RuleSpec,
        rule: LoadedRule,
        trigger: &crate::manifest::BatchTrigger,
    ) -> Self {
        let kind = KindSpec::Batch(crate::triggers::batch::Batch::from(trigger));
        Self::new(spec, rule, kind)
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
            "kind": self.kind_name(), "digest": self.rule.digest()})
    }

    /// The trigger kind's name (`batch`, `dwell`, `schedule`).
    pub fn kind_name(&self) -> &'static str {
        self.kind.name()
    }

    /// Refuse, before anything changes, a version whose trigger kind is not
    /// the kind of the rule's stored state.
    pub fn check_state(&self, log: &EventLog) -> Result<(), CoreError> {
        super::driver::check_state(log, &self.spec.tenant, &self.spec.name, self.kind_name())
    }

    /// Open the rule's durable state on `log`; it starts running at engine
    /// time `now`, as `start` says (a first start, a restart, a hot swap).
    pub fn open(
        self,
        log: &EventLog,
        now: i64,
        start: Start,
    ) -> Result<Box<dyn Driven>, CoreError> {
        struct Open<'a> {
            log: &'a EventLog,
            spec: RuleSpec,
            rule: LoadedRule,
            now: i64,
            start: Start,
        }
        impl KindVisitor for Open<'_> {
            type Out = Result<Box<dyn Driven>, CoreError>;
            fn visit<K: Kind + Clone>(self, kind: K) -> Self::Out {
                let d = Driver::open(self.log, self.spec, kind, self.rule, self.now, self.start)?;
                Ok(Box::new(d))
            }
        }
        self.kind.visit(Open {
            log,
            spec: self.spec,
            rule: self.rule,
            now,
            start,
        })
    }
}

/// What a rule is doing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleStatus {
    /// Last seq processed.
    pub cursor: u64,
    /// Fires waiting to run (or to be retried), running ones included.
    pub pending_fires: usize,
    /// Fires running now: at most the rule's `concurrency` (a slot runs a
    /// chain of fires one after another; it counts once).
    pub running_fires: usize,
    /// Dead letters.
    pub dead_letters: usize,
    /// Partitions with open state.
    pub partitions: usize,
    /// Why the rule is suspended, if it is.
    pub suspended: Option<String>,
    /// The rule is paused.
    pub paused: bool,
    /// The rule's task failed (a panic in the engine's own code): why. A
    /// resume or a redeploy starts it again from its durable state.
    pub failed: Option<String>,
    /// The last error the rule's task met (storage or `select`), if any.
    pub last_error: Option<String>,
    /// The last failed handler attempt, with the guest's backtrace.
    pub last_failure: Option<Failure>,
    /// The earliest deadline or retry time (ms), while not held.
    pub next_due: Option<i64>,
    /// Counters since the rule was deployed (saved at stops and every half
    /// minute; see [`Counters`]).
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
            message: e.message.clone(),
            backtrace: e.backtrace.clone(),
            stderr: e.stderr.clone(),
        })
    }
}
