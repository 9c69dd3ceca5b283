//! The dispatcher of one batch rule: reads the rule's tenant log from its
//! durable cursor, runs the rule's `select` over the new events, feeds the
//! kept ones to the [`Batcher`] per partition, and commits — in one
//! transaction — the cursor, the changed windows, the fires that closed
//! windows produced (an outbox the fire pipeline drains) and the rule's
//! retention pin. A crash anywhere resumes exactly where the last commit
//! left off: the same events give the same windows and the same fire ids.
//!
//! State layout, in namespace `rule:<tenant>/<name>` of the state store:
//! `cursor` → last processed seq; `window/<partition>` → an open
//! [`Window`]; `fire/<fire id>` → a [`FireRecord`].

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::batch::{Batcher, Close, Closed, Window};
use super::fire_id;
use super::timers::Timers;
use crate::event::Event;
use crate::log::{EventLog, EventQuery, LogError, NewEvent, StateOp};
use crate::manifest::{Manifest, RetryPolicy, Trigger};
use crate::runtime::bindings::wit;
use crate::runtime::{CallError, LoadError, LoadedRule, RuleInstance, RuleLabel, Runtime, Verdict};

/// Source of the engine's own records in the log; rules never see them.
pub const ENGINE_SOURCE: &str = "sluice";

/// A fire waiting for (or going through) the fire pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FireRecord {
    /// Deterministic: (rule, partition, first seq of the window).
    pub fire_id: String,
    /// The rule's name (without version).
    pub rule: String,
    /// The partition; `None` is the global one.
    pub partition: Option<String>,
    /// Why the window closed.
    pub reason: Close,
    /// The events of the batch, in log order.
    pub seqs: Vec<u64>,
    /// Engine time the fire was created (ms).
    pub created_at: i64,
    /// Handler attempts made so far.
    pub attempts: u32,
    /// Not before this engine time (ms), after a failed attempt.
    #[serde(default)]
    pub retry_at: Option<i64>,
    /// What the last failed attempt said.
    #[serde(default)]
    pub last_error: Option<String>,
}

/// How running a fire ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FireOutcome {
    /// The handler succeeded; its outputs are in the log at these seqs
    /// (the original seqs when a re-run found them already there).
    Completed {
        /// Seqs of the outputs.
        outputs: Vec<u64>,
    },
    /// The attempt failed and will be retried at this engine time.
    Retry {
        /// When the next attempt is due (ms).
        at: i64,
        /// The error.
        error: String,
    },
    /// Out of attempts, or a fatal error: moved to the dead-letter list.
    DeadLettered {
        /// The error.
        error: String,
    },
}

/// What went wrong while dispatching.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// Reading or committing failed; nothing of the step was committed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The rule's `select` failed; the cursor did not move.
    #[error(transparent)]
    Rule(#[from] CallError),
    /// Stored state could not be read back.
    #[error("rule state {key}: {problem}")]
    State {
        /// The state key.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// What one step did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Step {
    /// Events read from the log.
    pub read: usize,
    /// Events the rule kept.
    pub kept: usize,
    /// Fires created (windows that closed).
    pub fires: Vec<FireRecord>,
    /// The cursor after the step.
    pub cursor: u64,
}

/// A batch rule as the dispatcher needs it.
#[derive(Debug, Clone)]
pub struct BatchRule {
    /// The owning tenant.
    pub tenant: String,
    /// The rule's name (fire ids do not depend on the version).
    pub name: String,
    /// The trigger's rules.
    pub batcher: Batcher,
    /// The loaded component.
    pub rule: LoadedRule,
}

/// Why a rule could not be set up to run.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The manifest names a trigger the engine does not run yet.
    #[error(
        "{0}: trigger: only batch rules run so far; dwell and schedule triggers are not available yet"
    )]
    NotBatch(String),
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

impl BatchRule {
    /// Load `component` for `tenant` as the batch rule `manifest` describes.
    pub fn load(
        runtime: &Runtime,
        tenant: &str,
        component: &[u8],
        manifest: &Manifest,
    ) -> Result<Self, SetupError> {
        let Trigger::Batch(trigger) = &manifest.trigger else {
            return Err(SetupError::NotBatch(manifest.name.clone()));
        };
        let label = RuleLabel::new(tenant, &format!("{}@{}", manifest.name, manifest.version));
        let rule = runtime
            .load(label, component, manifest.limits.clone())
            .map_err(|error| SetupError::Load {
                name: manifest.name.clone(),
                error,
            })?;
        Ok(Self {
            tenant: tenant.to_owned(),
            name: manifest.name.clone(),
            batcher: Batcher::from(trigger),
            rule,
        })
    }
}

/// Dispatches one batch rule.
#[derive(Debug)]
pub struct Dispatcher {
    spec: BatchRule,
    instance: RuleInstance,
    ns: String,
    cursor: u64,
    windows: Windows,
    timers: Timers<Option<String>>,
    /// Fires not yet completed, by id.
    pending: BTreeMap<String, FireRecord>,
    /// Dead letters (fire id → first seq): their events stay pinned so
    /// that they can be re-driven.
    dead: BTreeMap<String, u64>,
    /// Fires dead-lettered in a row (reset by a success).
    dead_in_a_row: u32,
    /// Why the rule is suspended, when it is.
    suspended: Option<String>,
    /// Events still to take one at a time after a failed `select`.
    isolating: usize,
    /// The single event whose `select` failed, and how many times.
    poison: Option<(u64, u32)>,
}

/// A single event whose `select` fails this many times in a row is
/// skipped (and recorded on the log).
pub const POISON_ATTEMPTS: u32 = 3;

fn window_key(partition: &Option<String>) -> String {
    match partition {
        None => "window/-".to_owned(),
        Some(p) => format!("window/={p}"),
    }
}

fn partition_of(key: &str) -> Option<Option<String>> {
    let rest = key.strip_prefix("window/")?;
    match rest {
        "-" => Some(None),
        _ => rest.strip_prefix('=').map(|p| Some(p.to_owned())),
    }
}

fn bad_state(key: &str, problem: impl ToString) -> DispatchError {
    DispatchError::State {
        key: key.to_owned(),
        problem: problem.to_string(),
    }
}

impl Dispatcher {
    /// Load the rule's durable state (cursor, windows, pending fires).
    pub fn open(log: &EventLog, spec: BatchRule) -> Result<Self, DispatchError> {
        let ns = format!("rule:{}/{}", spec.tenant, spec.name);
        let mut d = Self {
            instance: spec.rule.instance(),
            spec,
            ns,
            cursor: 0,
            windows: Windows::default(),
            timers: Timers::new(),
            pending: BTreeMap::new(),
            dead: BTreeMap::new(),
            dead_in_a_row: 0,
            suspended: None,
            isolating: 0,
            poison: None,
        };
        for (key, value) in log.state_scan(&d.ns)? {
            if key == "cursor" {
                let text = String::from_utf8_lossy(&value);
                d.cursor = text.parse().map_err(|e| bad_state(&key, e))?;
            } else if let Some(partition) = partition_of(&key) {
                let w: Window = serde_json::from_slice(&value).map_err(|e| bad_state(&key, e))?;
                d.timers.set(partition.clone(), w.deadline);
                d.windows.insert(partition, w);
            } else if key == "breaker" {
                let text = String::from_utf8_lossy(&value);
                d.dead_in_a_row = text.parse().map_err(|e| bad_state(&key, e))?;
            } else if key == "suspended" {
                d.suspended = Some(String::from_utf8_lossy(&value).into_owned());
            } else if let Some(id) = key.strip_prefix("fire/") {
                let f: FireRecord =
                    serde_json::from_slice(&value).map_err(|e| bad_state(&key, e))?;
                d.pending.insert(id.to_owned(), f);
            } else if let Some(id) = key.strip_prefix("dead/") {
                let f: FireRecord =
                    serde_json::from_slice(&value).map_err(|e| bad_state(&key, e))?;
                d.dead
                    .insert(id.to_owned(), f.seqs.first().copied().unwrap_or(u64::MAX));
            }
        }
        Ok(d)
    }

    /// The last seq processed.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// The open window of `partition`.
    pub fn window(&self, partition: Option<&str>) -> Option<&Window> {
        self.windows.get(&partition.map(str::to_owned))
    }

    /// When the next window expires.
    pub fn next_deadline(&self) -> Option<i64> {
        self.timers.next_deadline()
    }

    /// Fires created and not yet completed, by id.
    pub fn pending_fires(&self) -> impl Iterator<Item = &str> {
        self.pending.keys().map(String::as_str)
    }

    /// Why the rule is suspended (too many fires dead-lettered in a row).
    pub fn suspended(&self) -> Option<&str> {
        self.suspended.as_deref()
    }

    /// Lift a suspension; the rule carries on from its cursor.
    pub fn resume(&mut self, log: &EventLog) -> Result<(), DispatchError> {
        let ops = ["suspended", "breaker"]
            .map(|key| StateOp::Delete {
                ns: self.ns.clone(),
                key: key.into(),
            })
            .to_vec();
        log.transact_blocking(Vec::new(), ops)?;
        self.suspended = None;
        self.dead_in_a_row = 0;
        Ok(())
    }

    /// The dead-letter list: fires that ran out of attempts or failed
    /// fatally, with their last error, oldest first.
    pub fn dead_letters(&self, log: &EventLog) -> Result<Vec<FireRecord>, DispatchError> {
        let mut dead = Vec::new();
        for (key, value) in log.state_scan(&self.ns)? {
            if key.starts_with("dead/") {
                dead.push(
                    serde_json::from_slice::<FireRecord>(&value).map_err(|e| bad_state(&key, e))?,
                );
            }
        }
        dead.sort_by_key(|f| (f.created_at, f.seqs.first().copied()));
        Ok(dead)
    }

    /// Re-drive a dead-lettered fire: it becomes pending again with fresh
    /// attempts (same fire id, so outputs it may have emitted stay single).
    pub fn redrive(&mut self, log: &EventLog, fire_id: &str) -> Result<(), DispatchError> {
        let key = format!("dead/{fire_id}");
        let Some(value) = log.state_get(&self.ns, &key)? else {
            return Err(bad_state(&key, "no such dead letter"));
        };
        let mut record: FireRecord =
            serde_json::from_slice(&value).map_err(|e| bad_state(&key, e))?;
        record.attempts = 0;
        record.retry_at = None;
        let first = self.dead.remove(fire_id);
        self.pending.insert(fire_id.to_owned(), record.clone());
        let ops = vec![
            StateOp::Delete {
                ns: self.ns.clone(),
                key,
            },
            StateOp::Put {
                ns: self.ns.clone(),
                key: format!("fire/{fire_id}"),
                value: serde_json::to_vec(&record).expect("a fire serialises"),
            },
            self.pin_op(),
        ];
        if let Err(e) = log.transact_blocking(Vec::new(), ops) {
            self.pending.remove(fire_id);
            if let Some(first) = first {
                self.dead.insert(fire_id.to_owned(), first);
            }
            return Err(e.into());
        }
        Ok(())
    }

    /// Drop a dead letter for good, releasing its events to retention.
    pub fn discard_dead(&mut self, log: &EventLog, fire_id: &str) -> Result<(), DispatchError> {
        let Some(first) = self.dead.remove(fire_id) else {
            return Err(bad_state(&format!("dead/{fire_id}"), "no such dead letter"));
        };
        let ops = vec![
            StateOp::Delete {
                ns: self.ns.clone(),
                key: format!("dead/{fire_id}"),
            },
            self.pin_op(),
        ];
        if let Err(e) = log.transact_blocking(Vec::new(), ops) {
            self.dead.insert(fire_id.to_owned(), first);
            return Err(e.into());
        }
        Ok(())
    }

    /// Pending fires due at `now` (new, or failed with their retry time
    /// come), oldest first.
    pub fn due_fires(&self, now: i64) -> Vec<String> {
        let mut due: Vec<&FireRecord> = self
            .pending
            .values()
            .filter(|f| f.retry_at.is_none_or(|at| at <= now))
            .collect();
        due.sort_by_key(|f| (f.created_at, f.seqs.first().copied()));
        due.into_iter().map(|f| f.fire_id.clone()).collect()
    }

    /// The earliest time something of this rule falls due: a window's
    /// deadline or a failed fire's retry time.
    pub fn next_due(&self) -> Option<i64> {
        let retry = self.pending.values().filter_map(|f| f.retry_at).min();
        [self.next_deadline(), retry].into_iter().flatten().min()
    }

    /// Step in chunks of `chunk` events until the cursor reaches the end of
    /// the log; the result sums the steps.
    pub fn catch_up(
        &mut self,
        log: &EventLog,
        now: i64,
        chunk: usize,
    ) -> Result<Step, DispatchError> {
        let mut total = Step {
            cursor: self.cursor,
            ..Step::default()
        };
        loop {
            let step = self.step(log, now, chunk)?;
            if step.cursor == total.cursor {
                return Ok(total);
            }
            total.read += step.read;
            total.kept += step.kept;
            total.fires.extend(step.fires);
            total.cursor = step.cursor;
        }
    }

    /// A pending fire.
    pub fn fire(&self, fire_id: &str) -> Option<&FireRecord> {
        self.pending.get(fire_id)
    }

    /// Run fire `fire_id`'s handler once, at engine time `now`, and commit
    /// the outcome in one transaction: outputs appended under the fire id
    /// (so a re-run after a crash emits nothing twice) and the fire
    /// removed; or the failure recorded with its retry time; or the fire
    /// dead-lettered. Each outcome is also an engine record on the log.
    pub fn run_fire(
        &mut self,
        log: &EventLog,
        fire_id: &str,
        now: i64,
        retry: &RetryPolicy,
    ) -> Result<FireOutcome, DispatchError> {
        let Some(record) = self.pending.get(fire_id).cloned() else {
            return Err(bad_state(
                &format!("fire/{fire_id}"),
                "no such pending fire",
            ));
        };
        let events = self.load_events(log, &record)?;
        let attempt = record.attempts + 1;
        let batch = wit::Batch {
            fire_id: record.fire_id.clone(),
            rule: record.rule.clone(),
            partition: record.partition.clone(),
            reason: match record.reason {
                Close::CountReached => wit::Reason::CountReached,
                Close::WindowExpired | Close::Discarded => wit::Reason::WindowExpired,
            },
            attempt,
            events: events.iter().map(wit::Event::from).collect(),
        };
        let result = self.instance.handle_batch(&batch);
        let key = format!("fire/{fire_id}");
        let engine = |kind: &str, suffix: &str, payload: serde_json::Value| NewEvent {
            tenant: self.spec.tenant.clone(),
            id: Some(format!("{fire_id}.{suffix}")),
            source: ENGINE_SOURCE.into(),
            kind: kind.into(),
            time: Some(now),
            payload: payload.to_string(),
        };
        match result {
            Ok(emits) => {
                let mut events: Vec<NewEvent> = emits
                    .into_iter()
                    .enumerate()
                    .map(|(i, e)| NewEvent {
                        tenant: self.spec.tenant.clone(),
                        id: Some(format!("{fire_id}.{i}")),
                        source: format!("rule:{}", self.spec.name),
                        kind: e.kind,
                        time: Some(now),
                        payload: e.payload,
                    })
                    .collect();
                let n = events.len();
                events.push(engine(
                    "fire.completed",
                    "done",
                    serde_json::json!({"rule": record.rule, "fire_id": fire_id,
                        "partition": record.partition, "attempt": attempt, "outputs": n}),
                ));
                self.pending.remove(fire_id);
                let ops = vec![
                    StateOp::Delete {
                        ns: self.ns.clone(),
                        key,
                    },
                    StateOp::Delete {
                        ns: self.ns.clone(),
                        key: "breaker".into(),
                    },
                    self.pin_op(),
                ];
                match log.transact_blocking(events, ops) {
                    Ok(report) => {
                        self.dead_in_a_row = 0;
                        Ok(FireOutcome::Completed {
                            outputs: report.seqs[..n].to_vec(),
                        })
                    }
                    Err(e) => {
                        self.pending.insert(fire_id.to_owned(), record);
                        Err(e.into())
                    }
                }
            }
            Err(call) => {
                let error = call.to_string();
                let dead = call.is_fatal() || attempt >= retry.max_attempts;
                let mut updated = record.clone();
                updated.attempts = attempt;
                updated.last_error = Some(error.clone());
                let mut ops = Vec::new();
                let (event, outcome) = if dead {
                    self.pending.remove(fire_id);
                    self.dead.insert(
                        fire_id.to_owned(),
                        record.seqs.first().copied().unwrap_or(u64::MAX),
                    );
                    let in_a_row = self.dead_in_a_row + 1;
                    ops.push(StateOp::Delete {
                        ns: self.ns.clone(),
                        key,
                    });
                    ops.push(StateOp::Put {
                        ns: self.ns.clone(),
                        key: format!("dead/{fire_id}"),
                        value: serde_json::to_vec(&updated).expect("a fire serialises"),
                    });
                    ops.push(StateOp::Put {
                        ns: self.ns.clone(),
                        key: "breaker".into(),
                        value: in_a_row.to_string().into_bytes(),
                    });
                    if in_a_row >= retry.suspend_after {
                        ops.push(StateOp::Put {
                            ns: self.ns.clone(),
                            key: "suspended".into(),
                            value: format!(
                                "{in_a_row} fires in a row dead-lettered; last: {error}"
                            )
                            .into_bytes(),
                        });
                    }
                    ops.push(self.pin_op());
                    (
                        engine(
                            "fire.dead_lettered",
                            "dead",
                            serde_json::json!({"rule": record.rule, "fire_id": fire_id,
                                "attempts": attempt, "error": error}),
                        ),
                        FireOutcome::DeadLettered {
                            error: error.clone(),
                        },
                    )
                } else {
                    let at = now.saturating_add(backoff_ms(retry, attempt, fire_id));
                    updated.retry_at = Some(at);
                    ops.push(StateOp::Put {
                        ns: self.ns.clone(),
                        key,
                        value: serde_json::to_vec(&updated).expect("a fire serialises"),
                    });
                    (
                        engine(
                            "fire.failed",
                            &format!("a{attempt}"),
                            serde_json::json!({"rule": record.rule, "fire_id": fire_id,
                                "attempt": attempt, "error": error, "retry_at": at}),
                        ),
                        FireOutcome::Retry {
                            at,
                            error: error.clone(),
                        },
                    )
                };
                if let Err(e) = log.transact_blocking(vec![event], ops) {
                    self.dead.remove(fire_id);
                    self.pending.insert(fire_id.to_owned(), record);
                    return Err(e.into());
                }
                match &outcome {
                    FireOutcome::DeadLettered { .. } => {
                        self.dead_in_a_row += 1;
                        if self.dead_in_a_row >= retry.suspend_after {
                            self.suspended = Some(format!(
                                "{} fires in a row dead-lettered; last: {error}",
                                self.dead_in_a_row
                            ));
                        }
                    }
                    _ => {
                        self.pending.insert(fire_id.to_owned(), updated);
                    }
                }
                Ok(outcome)
            }
        }
    }

    /// The events of a fire, from the log (pinned, so still there).
    fn load_events(
        &self,
        log: &EventLog,
        record: &FireRecord,
    ) -> Result<Vec<Event>, DispatchError> {
        let (Some(&first), Some(&last)) = (record.seqs.first(), record.seqs.last()) else {
            return Ok(Vec::new());
        };
        let wanted: std::collections::HashSet<u64> = record.seqs.iter().copied().collect();
        let events: Vec<Event> = log
            .query(&EventQuery {
                after_seq: Some(first - 1),
                until_seq: Some(last),
                ..EventQuery::tenant(&self.spec.tenant, usize::MAX >> 1)
            })?
            .into_iter()
            .filter(|e| wanted.contains(&e.seq))
            .collect();
        if events.len() != record.seqs.len() {
            return Err(bad_state(
                &format!("fire/{}", record.fire_id),
                format!(
                    "{} of its {} events are missing from the log",
                    record.seqs.len() - events.len(),
                    record.seqs.len()
                ),
            ));
        }
        Ok(events)
    }

    /// Process up to `max` new events at engine time `now`. A suspended
    /// rule processes nothing (its events wait, pinned, for a resume).
    pub fn step(&mut self, log: &EventLog, now: i64, max: usize) -> Result<Step, DispatchError> {
        if self.suspended.is_some() {
            return Ok(Step {
                cursor: self.cursor,
                ..Step::default()
            });
        }
        // After a failed `select`, go one event at a time to find the one
        // that fails.
        let max = if self.isolating > 0 { 1 } else { max };
        let events = log.query(&EventQuery {
            after_seq: Some(self.cursor),
            ..EventQuery::tenant(&self.spec.tenant, max)
        })?;
        let Some(last) = events.last().map(|e| e.seq) else {
            return Ok(Step {
                cursor: self.cursor,
                ..Step::default()
            });
        };
        // Engine records are not for rules, and a rule does not consume its
        // own outputs (that would feed it to itself without end).
        let own = format!("rule:{}", self.spec.name);
        let candidates: Vec<_> = events
            .into_iter()
            .filter(|e| e.source != ENGINE_SOURCE && e.source != own)
            .collect();
        let verdicts = match self.instance.select(&candidates) {
            Ok(v) => {
                self.isolating = self.isolating.saturating_sub(1);
                self.poison = None;
                v
            }
            Err(e) if candidates.len() > 1 => {
                self.isolating = candidates.len();
                return Err(e.into());
            }
            Err(e) => {
                let seq = candidates.first().map_or(last, |c| c.seq);
                let failures = match self.poison {
                    Some((s, n)) if s == seq => n + 1,
                    _ => 1,
                };
                self.poison = Some((seq, failures));
                if failures < POISON_ATTEMPTS {
                    return Err(e.into());
                }
                // The event fails the rule's `select` every time: record it
                // on the log and move past it, so the rule is not stuck.
                return self.skip_poison(log, seq, &e);
            }
        };
        let mut step = Step {
            read: candidates.len(),
            cursor: last,
            ..Step::default()
        };
        let mut change = Change::default();
        for (event, verdict) in candidates.iter().zip(verdicts) {
            let Verdict::Keep(place) = verdict else {
                continue;
            };
            step.kept += 1;
            let mut slot = change.take(&mut self.windows, &place.partition);
            if let Some(c) = self.spec.batcher.on_event(&mut slot, event.seq, now) {
                change.closed.push((place.partition.clone(), c));
            }
            if let Some(w) = slot {
                self.windows.insert(place.partition, w);
            }
        }
        step.fires = self.commit(log, last, now, change)?;
        Ok(step)
    }

    /// Close every window whose deadline has passed at `now` (they expire
    /// on idle partitions too: no event is needed).
    pub fn expire(&mut self, log: &EventLog, now: i64) -> Result<Vec<FireRecord>, DispatchError> {
        // Read, not pop: the timers change only once the commit succeeds.
        let due: Vec<Option<String>> = self.timers.due(now).into_iter().map(|(_, p)| p).collect();
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let mut change = Change::default();
        for partition in due {
            let mut slot = change.take(&mut self.windows, &partition);
            if let Some(c) = self.spec.batcher.on_timer(&mut slot, now) {
                change.closed.push((partition.clone(), c));
            }
            if let Some(w) = slot {
                self.windows.insert(partition, w);
            }
        }
        self.commit(log, self.cursor, now, change)
    }

    /// The fire completed (or was dead-lettered): forget it.
    pub fn fire_done(&mut self, log: &EventLog, fire_id: &str) -> Result<(), DispatchError> {
        let Some(first) = self.pending.remove(fire_id) else {
            return Ok(());
        };
        let ops = vec![
            StateOp::Delete {
                ns: self.ns.clone(),
                key: format!("fire/{fire_id}"),
            },
            self.pin_op(),
        ];
        if let Err(e) = log.transact_blocking(Vec::new(), ops) {
            self.pending.insert(fire_id.to_owned(), first);
            return Err(e.into());
        }
        Ok(())
    }

    /// Move the cursor past event `seq`, which the rule cannot select,
    /// leaving an `event.skipped` engine record with the error.
    fn skip_poison(
        &mut self,
        log: &EventLog,
        seq: u64,
        error: &CallError,
    ) -> Result<Step, DispatchError> {
        let record = NewEvent {
            tenant: self.spec.tenant.clone(),
            id: Some(format!("skip:{}:{seq}", self.spec.name)),
            source: ENGINE_SOURCE.into(),
            kind: "event.skipped".into(),
            time: None,
            payload: serde_json::json!({"rule": self.spec.name, "seq": seq,
                "attempts": POISON_ATTEMPTS, "error": error.to_string()})
            .to_string(),
        };
        tracing::warn!(rule = %self.spec.name, seq, error = %error, "skipping an event the rule cannot select");
        let (old_cursor, old_poison) = (self.cursor, self.poison.take());
        self.cursor = seq;
        let ops = vec![
            StateOp::Put {
                ns: self.ns.clone(),
                key: "cursor".into(),
                value: seq.to_string().into_bytes(),
            },
            self.pin_op(),
        ];
        if let Err(e) = log.transact_blocking(vec![record], ops) {
            self.cursor = old_cursor;
            self.poison = old_poison;
            return Err(e.into());
        }
        self.isolating = self.isolating.saturating_sub(1);
        Ok(Step {
            read: 1,
            cursor: seq,
            ..Step::default()
        })
    }

    /// The lowest seq this rule still needs: the next one to read, the
    /// first of every open window, pending fire and dead letter.
    fn pin_op(&self) -> StateOp {
        let min = self
            .windows
            .min_first()
            .into_iter()
            .chain(
                self.pending
                    .values()
                    .filter_map(|f| f.seqs.first().copied()),
            )
            .chain(self.dead.values().copied())
            .fold(self.cursor + 1, u64::min);
        StateOp::Pin {
            owner: self.ns.clone(),
            min_seq: Some(min),
        }
    }

    /// Commit a step: windows touched, fires for closed windows (discards
    /// go to the log as engine records), cursor and pin, in one
    /// transaction. On failure the in-memory state is rolled back, so the
    /// same events are processed again on the next step.
    fn commit(
        &mut self,
        log: &EventLog,
        cursor: u64,
        now: i64,
        change: Change,
    ) -> Result<Vec<FireRecord>, DispatchError> {
        let mut ops = Vec::new();
        let mut engine_events = Vec::new();
        for partition in change.undo.keys() {
            let key = window_key(partition);
            ops.push(match self.windows.get(partition) {
                Some(w) => StateOp::Put {
                    ns: self.ns.clone(),
                    key,
                    value: serde_json::to_vec(w).expect("a window serialises"),
                },
                None => StateOp::Delete {
                    ns: self.ns.clone(),
                    key,
                },
            });
        }
        let mut fires = Vec::new();
        let mut discarded = Vec::new();
        for (partition, c) in change.closed {
            let part = partition
                .as_deref()
                .map_or("-".to_owned(), |p| format!("={p}"));
            let record = FireRecord {
                fire_id: fire_id(&self.spec.name, &[&part, &c.first_seq.to_string()]),
                rule: self.spec.name.clone(),
                partition,
                reason: c.close,
                seqs: c.seqs,
                created_at: now,
                attempts: 0,
                retry_at: None,
                last_error: None,
            };
            if record.reason == Close::Discarded {
                discarded.push(serde_json::json!({
                    "fire_id": record.fire_id,
                    "partition": record.partition,
                    "seqs": record.seqs,
                }));
            } else {
                ops.push(StateOp::Put {
                    ns: self.ns.clone(),
                    key: format!("fire/{}", record.fire_id),
                    value: serde_json::to_vec(&record).expect("a fire serialises"),
                });
            }
            fires.push(record);
        }
        // Discards go on the log as engine records, up to 1000 windows each
        // (so closing a million windows is not a million events).
        for chunk in discarded.chunks(1_000) {
            engine_events.push(NewEvent {
                tenant: self.spec.tenant.clone(),
                id: Some(format!(
                    "{}.discarded",
                    chunk[0]["fire_id"].as_str().unwrap_or_default()
                )),
                source: ENGINE_SOURCE.into(),
                kind: "windows.discarded".into(),
                time: Some(now),
                payload: serde_json::json!({"rule": self.spec.name, "windows": chunk}).to_string(),
            });
        }
        ops.push(StateOp::Put {
            ns: self.ns.clone(),
            key: "cursor".into(),
            value: cursor.to_string().into_bytes(),
        });
        // Remember only what this commit changes, to undo it on failure
        // (not a copy of every pending fire on every step).
        let old_cursor = self.cursor;
        self.cursor = cursor;
        let replaced: Vec<(String, Option<FireRecord>)> = fires
            .iter()
            .filter(|f| f.reason != Close::Discarded)
            .map(|f| {
                (
                    f.fire_id.clone(),
                    self.pending.insert(f.fire_id.clone(), f.clone()),
                )
            })
            .collect();
        ops.push(self.pin_op());
        if let Err(e) = log.transact_blocking(engine_events, ops) {
            self.cursor = old_cursor;
            for (id, old) in replaced {
                match old {
                    Some(f) => self.pending.insert(id, f),
                    None => self.pending.remove(&id),
                };
            }
            for (partition, original) in change.undo {
                match original {
                    Some(w) => self.windows.insert(partition, w),
                    None => self.windows.remove(&partition),
                };
            }
            return Err(e.into());
        }
        for partition in change.undo.keys() {
            match self.windows.get(partition) {
                Some(w) => self.timers.set(partition.clone(), w.deadline),
                None => {
                    self.timers.cancel(partition);
                }
            }
        }
        Ok(fires)
    }
}

/// Exponential backoff with "equal jitter": half the delay fixed, half
/// spread by a hash of the fire and attempt — so retries of many fires do
/// not stampede, and a replay computes the same times.
fn backoff_ms(retry: &RetryPolicy, attempt: u32, fire_id: &str) -> i64 {
    let base = retry.backoff.as_millis() as f64;
    let cap = retry.max_backoff.as_millis() as f64;
    let delay = (base * 2f64.powi(attempt.saturating_sub(1).min(62) as i32)).min(cap);
    let digest = Sha256::digest(format!("{fire_id}/{attempt}").as_bytes());
    let unit =
        u64::from_le_bytes(digest[..8].try_into().expect("8 bytes")) as f64 / u64::MAX as f64;
    (delay / 2.0 + unit * delay / 2.0) as i64
}

/// The open windows by partition, with the first seqs they hold counted,
/// so the lowest one (the retention pin) is found in O(log n).
#[derive(Debug, Default)]
struct Windows {
    map: HashMap<Option<String>, Window>,
    firsts: BTreeMap<u64, usize>,
}

impl Windows {
    fn get(&self, partition: &Option<String>) -> Option<&Window> {
        self.map.get(partition)
    }

    fn insert(&mut self, partition: Option<String>, window: Window) -> Option<Window> {
        *self.firsts.entry(window.first_seq()).or_default() += 1;
        let old = self.map.insert(partition, window);
        if let Some(o) = &old {
            self.forget(o.first_seq());
        }
        old
    }

    fn remove(&mut self, partition: &Option<String>) -> Option<Window> {
        let old = self.map.remove(partition);
        if let Some(o) = &old {
            self.forget(o.first_seq());
        }
        old
    }

    fn forget(&mut self, first: u64) {
        if let std::collections::btree_map::Entry::Occupied(mut e) = self.firsts.entry(first) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }

    fn min_first(&self) -> Option<u64> {
        self.firsts.keys().next().copied()
    }
}

/// The partitions a step touched (with their state before it, to roll
/// back) and the windows it closed.
#[derive(Default)]
struct Change {
    undo: BTreeMap<Option<String>, Option<Window>>,
    closed: Vec<(Option<String>, Closed)>,
}

impl Change {
    /// Take a partition's window out for changing, remembering the
    /// original the first time.
    fn take(&mut self, windows: &mut Windows, partition: &Option<String>) -> Option<Window> {
        let slot = windows.remove(partition);
        self.undo
            .entry(partition.clone())
            .or_insert_with(|| slot.clone());
        slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered_deterministically() {
        let retry = RetryPolicy {
            backoff: std::time::Duration::from_secs(1),
            max_backoff: std::time::Duration::from_secs(10),
            ..RetryPolicy::default()
        };
        for attempt in 1..=8 {
            let full = (1_000i64 << (attempt - 1)).min(10_000);
            let d = backoff_ms(&retry, attempt, "f_x");
            assert!(
                (full / 2..=full).contains(&d),
                "attempt {attempt}: {d} vs {full}"
            );
            assert_eq!(d, backoff_ms(&retry, attempt, "f_x"));
        }
        assert_ne!(backoff_ms(&retry, 3, "f_a"), backoff_ms(&retry, 3, "f_b"));
    }

    #[test]
    fn window_keys_round_trip() {
        for p in [None, Some("acme/api".to_owned()), Some(String::new())] {
            assert_eq!(partition_of(&window_key(&p)), Some(p));
        }
        assert_eq!(partition_of("cursor"), None);
    }
}
