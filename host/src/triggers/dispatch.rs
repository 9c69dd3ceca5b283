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

use super::batch::{Batcher, Close, Closed, Window};
use super::fire_id;
use super::timers::Timers;
use crate::log::{EventLog, EventQuery, LogError, NewEvent, StateOp};
use crate::runtime::{CallError, LoadedRule, RuleInstance, Verdict};

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

/// Dispatches one batch rule.
#[derive(Debug)]
pub struct Dispatcher {
    spec: BatchRule,
    instance: RuleInstance,
    ns: String,
    cursor: u64,
    windows: HashMap<Option<String>, Window>,
    timers: Timers<Option<String>>,
    /// Fires not yet completed: fire id → lowest seq they reference.
    pending: BTreeMap<String, u64>,
}

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
            windows: HashMap::new(),
            timers: Timers::new(),
            pending: BTreeMap::new(),
        };
        for (key, value) in log.state_scan(&d.ns)? {
            if key == "cursor" {
                let text = String::from_utf8_lossy(&value);
                d.cursor = text.parse().map_err(|e| bad_state(&key, e))?;
            } else if let Some(partition) = partition_of(&key) {
                let w: Window = serde_json::from_slice(&value).map_err(|e| bad_state(&key, e))?;
                d.timers.set(partition.clone(), w.deadline);
                d.windows.insert(partition, w);
            } else if let Some(id) = key.strip_prefix("fire/") {
                let f: FireRecord =
                    serde_json::from_slice(&value).map_err(|e| bad_state(&key, e))?;
                d.pending
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

    /// Process up to `max` new events at engine time `now`.
    pub fn step(&mut self, log: &EventLog, now: i64, max: usize) -> Result<Step, DispatchError> {
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
        let candidates: Vec<_> = events
            .into_iter()
            .filter(|e| e.source != ENGINE_SOURCE)
            .collect();
        let verdicts = self.instance.select(&candidates)?;
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
        let due: Vec<Option<String>> = self
            .timers
            .clone()
            .pop_due(now)
            .into_iter()
            .map(|(_, p)| p)
            .collect();
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

    /// The lowest seq this rule still needs: the next one to read, the
    /// first of every open window, the first of every pending fire.
    fn pin_op(&self) -> StateOp {
        let min = self
            .windows
            .values()
            .map(Window::first_seq)
            .chain(self.pending.values().copied())
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
            };
            if record.reason == Close::Discarded {
                engine_events.push(NewEvent {
                    tenant: self.spec.tenant.clone(),
                    id: Some(record.fire_id.clone()),
                    source: ENGINE_SOURCE.into(),
                    kind: "window.discarded".into(),
                    time: Some(now),
                    payload: serde_json::json!({
                        "rule": record.rule,
                        "partition": record.partition,
                        "seqs": record.seqs,
                    })
                    .to_string(),
                });
            } else {
                ops.push(StateOp::Put {
                    ns: self.ns.clone(),
                    key: format!("fire/{}", record.fire_id),
                    value: serde_json::to_vec(&record).expect("a fire serialises"),
                });
            }
            fires.push(record);
        }
        ops.push(StateOp::Put {
            ns: self.ns.clone(),
            key: "cursor".into(),
            value: cursor.to_string().into_bytes(),
        });
        let (old_cursor, old_pending) = (self.cursor, self.pending.clone());
        self.cursor = cursor;
        for f in fires.iter().filter(|f| f.reason != Close::Discarded) {
            self.pending.insert(
                f.fire_id.clone(),
                f.seqs.first().copied().unwrap_or(u64::MAX),
            );
        }
        ops.push(self.pin_op());
        if let Err(e) = log.transact_blocking(engine_events, ops) {
            self.cursor = old_cursor;
            self.pending = old_pending;
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
    fn take(
        &mut self,
        windows: &mut HashMap<Option<String>, Window>,
        partition: &Option<String>,
    ) -> Option<Window> {
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
    fn window_keys_round_trip() {
        for p in [None, Some("acme/api".to_owned()), Some(String::new())] {
            assert_eq!(partition_of(&window_key(&p)), Some(p));
        }
        assert_eq!(partition_of("cursor"), None);
    }
}
