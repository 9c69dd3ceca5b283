//! The core every trigger kind runs on: a rule's durable trigger state in
//! memory, and pure functions over it. It does no I/O and reads no clock.
//!
//! Like quinn-proto's `Connection`, the core computes and its caller
//! acts. Every change follows one pattern, whoever drives it (the engine,
//! `sluice test`, a drain, a re-drive):
//!
//! 1. the core computes what the change does — a [`Plan`] for events and
//!    deadlines, a fire's [`FinishPlan`], a control request — without
//!    changing anything;
//! 2. it says which [`Writes`] make that durable: engine records for the
//!    tenant's log and state ops for the rule's namespace, with the
//!    retention pin;
//! 3. the caller commits the writes in one transaction (the driver's one
//!    write path) and only then hands the change back to be applied to
//!    memory. A failed commit leaves memory as it was: there is nothing to
//!    roll back, and doing the same work again gives the same fires with
//!    the same ids.
//!
//! The parts, by job:
//!
//! - [`plan`]: events and deadlines in time order → per-partition changes,
//!   fires, discards, notes, the new cursor;
//! - [`writes`]: a plan → its writes (only what changed), and applying a
//!   committed plan;
//! - [`fire`]: starting fires, and committing an attempt's outcome (the
//!   policy itself is [`super::fires::outcome`]);
//! - [`poison`]: what a failing `select` does (isolate, skip, suspend);
//! - [`ticks`]: a schedule's position and catch-up after the rule was not
//!   running;
//! - [`control`]: begin, pause, resume, re-drive, discard, counters;
//! - [`records`]: the typed engine records the core writes.
//!
//! Costs follow the work: a step writes the rows its kind says changed, a
//! fire reads its own events by seq, the pin and the next deadline are
//! O(log n), dead letters are read by their own key prefix.

pub mod control;
pub mod fire;
pub mod plan;
pub mod poison;
pub mod records;
#[cfg(test)]
mod tests;
pub mod ticks;
pub mod writes;

use std::collections::{BTreeMap, HashMap};

use rustc_hash::FxHashMap;

pub use self::control::Start;
pub use self::fire::FinishPlan;
pub use self::plan::{DEADLINES_PER_STEP, Input, Plan};
pub use self::poison::SelectFailure;
pub use self::ticks::TickPosition;
pub use self::writes::Writes;
use super::fires::{FireBook, FireRecord, FirstSeqs};
use super::state::{self as key};
use super::timers::Timers;
use super::{Kind, Note};
use crate::log::{LogError, StateOp};
use crate::manifest::{OutputPolicy, RetryPolicy, SelectPolicy};
use crate::records::{ENGINE_SOURCE, rule_source};

/// What went wrong in a step.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// Reading or committing failed; nothing of the step was committed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The rule's `select` failed; the cursor did not move.
    #[error("{0}")]
    Select(String),
    /// Stored state could not be read back, or a request named something
    /// that is not there.
    #[error("rule state {key}: {problem}")]
    State {
        /// The state key.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
}

pub(crate) fn bad_state(key: &str, problem: impl ToString) -> CoreError {
    CoreError::State {
        key: key.to_owned(),
        problem: problem.to_string(),
    }
}

/// Refuse state stored for another trigger kind than `kind` (`stored`:
/// the rule's `kind` row, read before anything changes, so a redeploy of
/// another kind is refused at once).
pub fn check_kind(stored: Option<&[u8]>, kind: &str) -> Result<(), CoreError> {
    match stored.map(String::from_utf8_lossy) {
        Some(stored) if stored != kind => Err(bad_state(
            key::KIND,
            format!(
                "the rule's state is a {stored} rule's and this version is a {kind} rule: changing a rule's trigger kind needs its state reset"
            ),
        )),
        _ => Ok(()),
    }
}

/// A rule as the core needs it: who owns it and its policies. Built by
/// the engine from a manifest; the component is the driver's business.
#[derive(Debug, Clone)]
pub struct RuleSpec {
    /// The owning tenant.
    pub tenant: String,
    /// The rule's name (fire ids do not depend on the version).
    pub name: String,
    /// Handler retries and the breaker.
    pub retry: RetryPolicy,
    /// Poison events.
    pub select: SelectPolicy,
    /// Output hop limit.
    pub outputs: OutputPolicy,
    /// Fires running at once.
    pub concurrency: u32,
    /// Partitions with open state at most (the tenant's quota): an event
    /// for one more is skipped and recorded.
    pub max_partitions: Option<usize>,
    /// A shadow of the rule: a version running beside the live one on its
    /// own state (`shadow:<tenant>/<name>`), whose records are kept there
    /// and never appended to the log (ARCHITECTURE.md, "Shadow
    /// deploys"). Fire ids are the live rule's, so the two compare.
    pub shadow: bool,
}

impl RuleSpec {
    /// A spec with default policies (retry, poison, hops, concurrency 1).
    pub fn with_defaults(tenant: &str, name: &str) -> Self {
        Self {
            tenant: tenant.to_owned(),
            name: name.to_owned(),
            retry: RetryPolicy::default(),
            select: SelectPolicy::default(),
            outputs: OutputPolicy::default(),
            concurrency: 1,
            max_partitions: None,
            shadow: false,
        }
    }

    /// The rule's state namespace: `rule:<tenant>/<name>`, or a shadow's.
    pub fn namespace(&self) -> String {
        if self.shadow {
            key::shadow_namespace(&self.tenant, &self.name)
        } else {
            key::namespace(&self.tenant, &self.name)
        }
    }

    /// The name the engine runs the rule under: its name, or for a
    /// shadow `<name>~shadow` (no rule name has a `~`).
    pub fn engine_name(&self) -> String {
        if self.shadow {
            format!("{}{}", self.name, key::SHADOW_SUFFIX)
        } else {
            self.name.clone()
        }
    }
}

/// Events a kind dropped, reported on the log (`windows.discarded`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscardRecord {
    /// The fire id the window would have had.
    pub fire_id: String,
    /// Its partition.
    pub partition: Option<String>,
    /// The events dropped.
    pub seqs: Vec<u64>,
    /// The rule's time when it happened (ms).
    pub at: i64,
}

/// A kind's [`Note`] with where and when it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteRecord {
    /// The partition.
    pub partition: Option<String>,
    /// What happened.
    pub note: Note,
    /// The rule's time when it happened (ms).
    pub at: i64,
}

/// Schedule ticks missed while the rule was not running and not run
/// (catch-up policy): recorded as `ticks.missed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missed {
    /// How many (a lower bound when `more`).
    pub ticks: u64,
    /// The first one (ms).
    pub first: i64,
    /// The last one (ms).
    pub last: i64,
    /// More were missed than counted.
    pub more: bool,
    /// The rule's time when they were passed over (ms).
    pub at: i64,
}

/// A fire cancelled by a newer one of its partition (`overlap =
/// "cancel-previous"`), which took its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancelled {
    /// The cancelled fire.
    pub fire_id: String,
    /// Its first seq (it no longer holds it).
    first_seq: Option<u64>,
    /// The fire that replaces it.
    pub by: String,
    /// Its partition.
    pub partition: Option<String>,
    /// The rule's time (ms).
    pub at: i64,
}

/// What one step did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Step {
    /// Events read from the log (engine records and the rule's own
    /// outputs are not counted).
    pub read: usize,
    /// Events the rule kept.
    pub kept: usize,
    /// Fires created.
    pub fires: Vec<FireRecord>,
    /// Windows dropped.
    pub discards: Vec<DiscardRecord>,
    /// Other things the kind reported (forced leaves, skipped ticks).
    pub notes: Vec<NoteRecord>,
    /// Ticks missed while the rule was not running.
    pub missed: Option<Missed>,
    /// Fires cancelled by newer ones.
    pub cancelled: Vec<Cancelled>,
    /// The cursor after the step.
    pub cursor: u64,
    /// The earliest deadline the step handled (ms), to measure lateness.
    pub earliest_deadline: Option<i64>,
    /// The step stopped at [`DEADLINES_PER_STEP`] deadlines: more are due,
    /// and the events after them were not taken.
    pub capped: bool,
}

/// Counters of a rule since it was deployed (or last reset): kept across
/// swaps and restarts, saved at each stop and every half minute while it
/// runs (a crash loses at most that much counting; the tick tallies are
/// exact, they change with the schedule's position).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Counters {
    /// Events the rule kept.
    pub matched: u64,
    /// Fires created.
    pub fires_created: u64,
    /// Fires completed.
    pub fires_ok: u64,
    /// Failed handler attempts.
    pub fires_failed: u64,
    /// Fires moved to the dead-letter list.
    pub dead_lettered: u64,
    /// Events skipped as poison.
    pub skipped_events: u64,
    /// Outputs dropped at the hop limit.
    pub outputs_dropped: u64,
    /// Memberships ended by `max_dwell`.
    pub forced_leaves: u64,
    /// Fires cancelled by a newer tick (`cancel-previous`).
    pub fires_cancelled: u64,
    /// Schedule ticks skipped by the overlap policy, ever (durable).
    pub ticks_skipped: u64,
    /// Schedule ticks missed while not running and not caught up, ever
    /// (durable).
    pub ticks_missed: u64,
}

/// One open partition, as [`RuleCore::inspect`] shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PartitionInfo {
    /// The partition key (`None`: the global partition).
    pub partition: Option<String>,
    /// Its next deadline (ms), if it has one.
    pub deadline: Option<i64>,
    /// Its state, as the kind describes it (events buffered, membership).
    pub state: serde_json::Value,
}

/// A page of a rule's open partitions.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Inspection {
    /// Open partitions in all.
    pub total: usize,
    /// The page, in key order.
    pub partitions: Vec<PartitionInfo>,
    /// The key to ask the next page after, when there is one.
    pub next_after: Option<String>,
    /// For a schedule: its next ticks (ms).
    pub next_ticks: Vec<i64>,
}

/// A rule's durable trigger state, in memory.
#[derive(Debug)]
pub struct RuleCore<K: Kind> {
    spec: RuleSpec,
    kind: K,
    ns: String,
    own_source: String,
    cursor: u64,
    /// The rule's time: the latest ingest time or deadline it handled.
    time: i64,
    parts: FxHashMap<Option<String>, K::State>,
    part_firsts: FirstSeqs,
    timers: Timers<Option<String>>,
    fires: FireBook,
    suspended: Option<String>,
    paused: bool,
    /// The `kind` row is stored.
    kind_stored: bool,
    poison: poison::Poison,
    /// Member-log rows below this seq are deleted.
    members_floor: u64,
    counters: Counters,
    /// The schedule's position (kinds with ticks, once begun).
    tick: Option<TickPosition>,
    /// When the next tick falls due.
    next_tick: Option<i64>,
    /// Since when the rule runs (start-up, resume; a swap carries it):
    /// deadlines and ticks before it fell due while it was not running.
    up_since: Option<i64>,
    /// An outage after `up_since` (from, until): a restart after the
    /// engine was known to run until `from` (its liveness mark). What
    /// fell due in it was missed; what fell due between `up_since` and
    /// `from` fell due while the rule ran, and is only handled late. In
    /// memory only: after a second restart before the rule handled what
    /// fell due in the first outage, that outage counts as running time.
    outage: Option<(i64, i64)>,
    /// How ticks missed before `up_since` are handled: the catch-up
    /// policy's verdict (its first tick that runs, and what it passed
    /// over).
    catch_up: Option<super::DueTicks>,
}

impl<K: Kind> RuleCore<K> {
    /// Rebuild the rule's state from the rows of its namespace (every
    /// committed key and value, in key order).
    pub fn load(spec: RuleSpec, kind: K, rows: Vec<(String, Vec<u8>)>) -> Result<Self, CoreError> {
        let ns = spec.namespace();
        let mut core = Self {
            own_source: rule_source(&spec.name),
            spec,
            kind,
            ns,
            cursor: 0,
            time: i64::MIN,
            parts: FxHashMap::default(),
            part_firsts: FirstSeqs::default(),
            timers: Timers::new(),
            fires: FireBook::default(),
            suspended: None,
            paused: false,
            kind_stored: false,
            poison: poison::Poison::default(),
            members_floor: 0,
            counters: Counters::default(),
            tick: None,
            next_tick: None,
            up_since: None,
            outage: None,
            catch_up: None,
        };
        core.fires.set_ordered(core.kind.ordered());
        let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
        let mut members: HashMap<Option<String>, Vec<u64>> = HashMap::new();
        let mut part_rows: BTreeMap<Option<String>, Vec<(String, Vec<u8>)>> = BTreeMap::new();
        for (k, value) in rows {
            match k.as_str() {
                key::KIND => {
                    check_kind(Some(&value), K::NAME)?;
                    core.kind_stored = true;
                }
                key::CURSOR => {
                    core.cursor = text(&value)
                        .parse()
                        .map_err(|e| bad_state(key::CURSOR, e))?;
                }
                key::BREAKER => {
                    core.fires.dead_in_a_row = text(&value)
                        .parse()
                        .map_err(|e| bad_state(key::BREAKER, e))?;
                }
                key::SUSPENDED => core.suspended = Some(text(&value)),
                key::PAUSED => core.paused = true,
                key::COUNTERS => {
                    // Observability only: unreadable counters start again.
                    core.counters = serde_json::from_slice(&value).unwrap_or_default();
                }
                key::TICK => {
                    let pos =
                        TickPosition::decode(&text(&value)).map_err(|e| bad_state(key::TICK, e))?;
                    core.tick = Some(pos);
                }
                key::UP => {
                    core.up_since = Some(text(&value).parse().map_err(|e| bad_state(key::UP, e))?);
                }
                k if k.starts_with(key::FIRES) => {
                    let f: FireRecord =
                        serde_json::from_slice(&value).map_err(|e| bad_state(k, e))?;
                    core.fires.insert(f);
                }
                k if k.starts_with(key::DEAD) => {
                    let f: FireRecord =
                        serde_json::from_slice(&value).map_err(|e| bad_state(k, e))?;
                    core.fires
                        .insert_dead(&f.fire_id, f.first_seq().unwrap_or(u64::MAX));
                }
                k if k.starts_with(key::MEMBERS) => {
                    for (seq, p) in key::decode_members(&value).map_err(|e| bad_state(k, e))? {
                        members.entry(p).or_default().push(seq);
                    }
                }
                k if k.starts_with(key::PARTITIONS) => {
                    let (p, sub) = key::parse_partition(k)
                        .ok_or_else(|| bad_state(k, "not a partition key"))?;
                    part_rows
                        .entry(p)
                        .or_default()
                        .push((sub.to_owned(), value));
                }
                // Rows of other owners of the namespace (none today) and
                // keys a later version wrote are left alone.
                _ => {}
            }
        }
        if let Some(pos) = core.tick {
            core.set_tick(pos);
        }
        for (p, rows) in part_rows {
            let mine = members.remove(&p).unwrap_or_default();
            let state = core
                .kind
                .load(rows, mine)
                .map_err(|e| bad_state(&key::partition(&p), e))?;
            core.install(p, state);
        }
        Ok(core)
    }

    fn set_tick(&mut self, pos: TickPosition) {
        self.tick = Some(pos);
        self.next_tick = self.kind.next_tick(pos.last);
        self.counters.ticks_skipped = pos.skipped;
        self.counters.ticks_missed = pos.missed;
    }

    fn install(&mut self, p: Option<String>, state: K::State) {
        if let Some(first) = self.kind.first_seq(&state) {
            self.part_firsts.add(first);
        }
        match self.kind.deadline(Some(&state), &K::Change::default()) {
            Some(at) => self.timers.set(p.clone(), at),
            None => {
                self.timers.cancel(&p);
            }
        }
        self.parts.insert(p, state);
    }

    /// The rule's spec.
    pub fn spec(&self) -> &RuleSpec {
        &self.spec
    }

    /// The rule's kind.
    pub fn kind(&self) -> &K {
        &self.kind
    }

    /// The rule's state namespace.
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// The last seq processed.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// The committed state of `partition`.
    pub fn partition(&self, partition: Option<&str>) -> Option<&K::State> {
        self.parts.get(&partition.map(str::to_owned))
    }

    /// Partitions with state.
    pub fn partitions(&self) -> usize {
        self.parts.len()
    }

    /// A page of the open partitions in key order (the global partition
    /// first), after `after` (`None`: from the start), with their state
    /// and deadline; and for kinds with ticks, the next `ticks` ticks.
    /// Costs one pass over the partitions, not a sort of them all.
    pub fn inspect(&self, after: Option<&str>, limit: usize, ticks: usize) -> Inspection {
        let mut page: std::collections::BinaryHeap<&Option<String>> =
            std::collections::BinaryHeap::with_capacity(limit + 1);
        for p in self.parts.keys() {
            let wanted = match (after, p) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(a), Some(k)) => k.as_str() > a,
            };
            if !wanted {
                continue;
            }
            page.push(p);
            if page.len() > limit {
                page.pop();
            }
        }
        let keys = page.into_sorted_vec();
        let more = keys.len() == limit && {
            let last = keys.last().copied().cloned().flatten();
            self.parts.keys().any(|p| match (&last, p) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(l), Some(k)) => k > l,
            })
        };
        let partitions = keys
            .into_iter()
            .map(|p| PartitionInfo {
                partition: p.clone(),
                deadline: self.timers.deadline_of(p),
                state: self.kind.describe(&self.parts[p]),
            })
            .collect::<Vec<_>>();
        let mut next_ticks = Vec::new();
        let mut at = self.next_tick;
        while let Some(t) = at.filter(|_| next_ticks.len() < ticks) {
            next_ticks.push(t);
            at = self.kind.next_tick(t);
        }
        Inspection {
            total: self.parts.len(),
            next_after: more
                .then(|| partitions.last().and_then(|p| p.partition.clone()))
                .flatten(),
            partitions,
            next_ticks,
        }
    }

    /// The earliest deadline: a partition's, or the next tick.
    pub fn next_deadline(&self) -> Option<i64> {
        [self.timers.next_deadline(), self.next_tick]
            .into_iter()
            .flatten()
            .min()
    }

    /// The fire book (pending, running, dead letters).
    pub fn fires(&self) -> &FireBook {
        &self.fires
    }

    /// Pending fire ids, oldest first.
    pub fn pending_fires(&self) -> impl Iterator<Item = &str> {
        self.fires.ids()
    }

    /// A pending fire.
    pub fn fire(&self, fire_id: &str) -> Option<&FireRecord> {
        self.fires.get(fire_id)
    }

    /// Why the rule is suspended.
    pub fn suspended(&self) -> Option<&str> {
        self.suspended.as_deref()
    }

    /// The rule is paused.
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// Since when the rule runs (see [`RuleCore::begin`]).
    pub fn up_since(&self) -> Option<i64> {
        self.up_since
    }

    /// When the rule started running again after a deadline or tick at
    /// `at`, if it fell due while the rule was not running (before it
    /// started running, or in an outage since).
    pub(super) fn restarted_after(&self, at: i64) -> Option<i64> {
        match (self.up_since, self.outage) {
            (Some(up), _) if at < up => Some(up),
            (_, Some((from, until))) if from < at && at < until => Some(until),
            _ => None,
        }
    }

    /// Counters since the rule was deployed (see [`Counters`]).
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Paused or suspended: the rule processes nothing until resumed.
    pub fn held(&self) -> bool {
        self.paused || self.suspended.is_some()
    }

    /// Fires that may start at `now`, oldest first, at most `max` (the
    /// scan stops there); none while the rule is paused or suspended.
    pub fn due_fires(&self, now: i64, max: usize) -> Vec<String> {
        if self.held() {
            return Vec::new();
        }
        self.fires.due(now, max)
    }

    /// The earliest time something falls due: a deadline or a retry.
    /// (Fires ready now are found by [`Self::due_fires`].)
    pub fn next_due(&self) -> Option<i64> {
        if self.held() {
            return None;
        }
        [self.next_deadline(), self.fires.next_retry()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Whether `select` is asked about an event of `source`: engine
    /// records and the rule's own outputs are skipped without asking.
    pub fn is_candidate(&self, source: &str) -> bool {
        source != ENGINE_SOURCE && source != self.own_source
    }

    fn put(&self, key: impl Into<String>, value: Vec<u8>) -> StateOp {
        StateOp::Put {
            ns: self.ns.clone(),
            key: key.into(),
            value,
        }
    }

    fn delete(&self, key: impl Into<String>) -> StateOp {
        StateOp::Delete {
            ns: self.ns.clone(),
            key: key.into(),
        }
    }

    /// The retention pin: the lowest seq the rule still needs — the next
    /// one to read after `cursor`, the first held by a partition's state
    /// (`parts`) or by a pending fire or dead letter (`fires`).
    fn pin(&self, cursor: u64, parts: Option<u64>, fires: Option<u64>) -> StateOp {
        let min = [parts, fires]
            .into_iter()
            .flatten()
            .fold(cursor + 1, u64::min);
        StateOp::Pin {
            owner: self.ns.clone(),
            min_seq: Some(min),
        }
    }

    /// The pin as things stand, with pending fires holding `removed` no
    /// longer and `added` now (a fire moving to the dead-letter list).
    fn pin_now(&self, removed: &[u64], added: &[u64]) -> StateOp {
        let fires = self.fires.min_first_after(removed, added);
        self.pin(self.cursor, self.part_firsts.min(), fires)
    }
}
