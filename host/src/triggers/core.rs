//! The core every trigger kind runs on: this is where a rule's cursor
//! lives.
//!
//! A [`RuleCore`] reads its tenant's log from its durable cursor, runs the
//! rule's `select` over the new events (isolating an event `select` keeps
//! failing on, then skipping it or suspending the rule as the manifest
//! says), feeds the kept ones to its [`Kind`] per partition, closes what
//! the deadline index says is due, and creates fires in the outbox of the
//! [fire pipeline](super::fires).
//!
//! Every step follows one pattern: compute the effects without I/O (a
//! [`Plan`]: per-partition changes, fires, engine records, the new
//! cursor), commit them in one transaction together with the retention
//! pin, and only then change memory. A failed commit leaves memory as it
//! was, so there is nothing to roll back; the same events are processed
//! again by the next step, giving the same fires with the same ids.
//!
//! Costs follow the work: a step writes the rows its kind says changed, a
//! fire reads its own events by seq, the pin and the next deadline are
//! O(log n), dead letters are read by their own key prefix.

use std::collections::{BTreeMap, HashMap};

use rustc_hash::FxHashMap;

use serde_json::json;

use super::fires::{
    FireAttempt, FireBook, FireJob, FireOutcome, FireRecord, FirstSeqs, NotRun, backoff_ms,
};
use super::state::{self as key};
use super::timers::Timers;
use super::{ENGINE_SOURCE, InFlight, Kept, Kind, KindOut, Note, Row, fire_id, partition_part};
use crate::event::Event;
use crate::log::{EventLog, EventQuery, LogError, NewEvent, StateOp};
use crate::manifest::{Manifest, OnPoison, OutputPolicy, RetryPolicy, SelectPolicy};
use crate::runtime::{CallError, CallErrorKind, LoadedRule, RuleInstance, Verdict};

/// What went wrong in a step.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// Reading or committing failed; nothing of the step was committed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The rule's `select` failed; the cursor did not move.
    #[error(transparent)]
    Rule(#[from] CallError),
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

/// Refuse state stored for another trigger kind than `kind` (read before
/// anything changes: a redeploy of another kind is refused at once).
pub fn check_kind(log: &EventLog, ns: &str, kind: &str) -> Result<(), CoreError> {
    let stored = log.state_get(ns, key::KIND)?;
    match stored.map(|v| String::from_utf8_lossy(&v).into_owned()) {
        Some(stored) if stored != kind => Err(bad_state(
            key::KIND,
            format!(
                "the rule's state is a {stored} rule's and this version is a {kind} rule: changing a rule's trigger kind needs its state reset"
            ),
        )),
        _ => Ok(()),
    }
}

fn bad_state(key: &str, problem: impl ToString) -> CoreError {
    CoreError::State {
        key: key.to_owned(),
        problem: problem.to_string(),
    }
}

/// A rule as the core needs it: who owns it, its policies, its component.
#[derive(Debug, Clone)]
pub struct RuleSpec {
    /// The owning tenant.
    pub tenant: String,
    /// The rule's name (fire ids do not depend on the version).
    pub name: String,
    /// The loaded component.
    pub rule: LoadedRule,
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
}

impl RuleSpec {
    /// A spec with default policies (retry, poison, hops, concurrency 1).
    pub fn with_defaults(tenant: &str, name: &str, rule: LoadedRule) -> Self {
        Self {
            tenant: tenant.to_owned(),
            name: name.to_owned(),
            rule,
            retry: RetryPolicy::default(),
            select: SelectPolicy::default(),
            outputs: OutputPolicy::default(),
            concurrency: 1,
            max_partitions: None,
        }
    }

    /// The spec of `manifest`'s rule for `tenant`, running `rule`.
    pub fn new(tenant: &str, manifest: &Manifest, rule: LoadedRule) -> Self {
        Self {
            tenant: tenant.to_owned(),
            name: manifest.name.clone(),
            rule,
            retry: manifest.retry.clone(),
            select: manifest.select,
            outputs: manifest.outputs,
            concurrency: manifest.concurrency.max.max(1),
            max_partitions: None,
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
    /// Engine time (ms).
    pub at: i64,
}

/// A kind's [`Note`] with where and when it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteRecord {
    /// The partition.
    pub partition: Option<String>,
    /// What happened.
    pub note: Note,
    /// Engine time (ms).
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
    /// Engine time (ms).
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
    /// Engine time (ms).
    pub at: i64,
}

/// A schedule's durable position and tallies (key `tick`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TickPosition {
    /// The latest tick handled (run, skipped or missed), ms.
    pub last: i64,
    /// Ticks skipped for a partition by the overlap policy, ever.
    pub skipped: u64,
    /// Ticks missed while not running and not caught up, ever.
    pub missed: u64,
}

impl TickPosition {
    fn encode(&self) -> Vec<u8> {
        format!("{} {} {}", self.last, self.skipped, self.missed).into_bytes()
    }

    fn decode(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split(' ').collect();
        let [last, skipped, missed] = parts[..] else {
            return Err(format!("{text:?}: expected 3 numbers"));
        };
        let num = |v: &str| v.parse::<i64>().map_err(|e| format!("{text:?}: {e}"));
        Ok(Self {
            last: num(last)?,
            skipped: num(skipped)? as u64,
            missed: num(missed)? as u64,
        })
    }
}

/// What one step did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Step {
    /// Events read from the log.
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
}

/// When a plan stops consuming events.
#[derive(Debug, Clone, Copy)]
pub struct Stop {
    /// Consume at most this many events.
    pub limit: usize,
    /// Stop right after an event that created a fire (so that the fire
    /// runs before the next event, as when events come one by one).
    pub at_fire: bool,
    /// Do not consume an event whose engine time is at or after this (a
    /// deadline falls due first).
    pub before: i64,
}

impl Stop {
    /// Consume everything given.
    pub const NEVER: Stop = Stop {
        limit: usize::MAX,
        at_fire: false,
        before: i64::MAX,
    };
}

/// A step's effects, computed without I/O.
#[derive(Debug)]
pub struct Plan<K: Kind> {
    /// Events consumed (a prefix of those given).
    pub consumed: usize,
    cursor: u64,
    read: usize,
    kept: usize,
    changes: BTreeMap<Option<String>, K::Change>,
    fires: Vec<FireRecord>,
    discards: Vec<DiscardRecord>,
    notes: Vec<NoteRecord>,
    cancelled: Vec<Cancelled>,
    missed: Option<Missed>,
    /// The schedule's new position.
    tick: Option<TickPosition>,
    /// Partitions without state that events of this plan went to.
    new_parts: usize,
}

impl<K: Kind> Plan<K> {
    /// Nothing done yet, from `cursor`.
    fn empty(cursor: u64) -> Self {
        Self {
            consumed: 0,
            cursor,
            read: 0,
            kept: 0,
            changes: BTreeMap::new(),
            fires: Vec::new(),
            discards: Vec::new(),
            notes: Vec::new(),
            cancelled: Vec::new(),
            missed: None,
            tick: None,
            new_parts: 0,
        }
    }
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

/// A rule's durable trigger state and the machinery around it.
#[derive(Debug)]
pub struct RuleCore<K: Kind> {
    spec: RuleSpec,
    kind: K,
    instance: RuleInstance,
    ns: String,
    own_source: String,
    cursor: u64,
    parts: FxHashMap<Option<String>, K::State>,
    part_firsts: FirstSeqs,
    timers: Timers<Option<String>>,
    fires: FireBook,
    suspended: Option<String>,
    paused: bool,
    /// Events still to take one at a time after a failed `select`.
    isolating: usize,
    /// The single event whose `select` failed: its seq, strikes (3 per
    /// failure, 1 per timeout that may be the machine's) and failures.
    poison: Option<(u64, u32, u32)>,
    /// Member-log rows below this seq are deleted.
    members_floor: u64,
    counters: Counters,
    /// The schedule's position (kinds with ticks).
    tick: Option<TickPosition>,
    /// When the next tick falls due.
    next_tick: Option<i64>,
    /// Engine time of the first turn since the core opened or resumed:
    /// ticks before it were missed while the rule was not running.
    up_since: Option<i64>,
    /// The log has nothing for this rule's tenant up to here (other
    /// tenants' seqs): in memory only, so idle rules need not look again.
    seen: u64,
}

impl<K: Kind> RuleCore<K> {
    /// Load the rule's durable state: cursor, partitions, fires, breaker.
    pub fn open(log: &EventLog, spec: RuleSpec, kind: K) -> Result<Self, CoreError> {
        let ns = key::namespace(&spec.tenant, &spec.name);
        let mut core = Self {
            instance: spec.rule.instance(),
            own_source: format!("rule:{}", spec.name),
            spec,
            kind,
            ns,
            cursor: 0,
            parts: FxHashMap::default(),
            part_firsts: FirstSeqs::default(),
            timers: Timers::new(),
            fires: FireBook::default(),
            suspended: None,
            paused: false,
            isolating: 0,
            poison: None,
            members_floor: 0,
            counters: Counters::default(),
            tick: None,
            next_tick: None,
            up_since: None,
            seen: 0,
        };
        core.fires.set_ordered(core.kind.ordered());
        // The rule's own keys one by one; each family below by its prefix.
        let text = |k: &str| -> Result<Option<String>, CoreError> {
            Ok(log
                .state_get(&core.ns, k)?
                .map(|v| String::from_utf8_lossy(&v).into_owned()))
        };
        check_kind(log, &core.ns, K::NAME)?;
        if let Some(v) = text(key::CURSOR)? {
            core.cursor = v.parse().map_err(|e| bad_state(key::CURSOR, e))?;
        }
        if let Some(v) = text(key::BREAKER)? {
            core.fires.dead_in_a_row = v.parse().map_err(|e| bad_state(key::BREAKER, e))?;
        }
        core.suspended = text(key::SUSPENDED)?;
        core.paused = text(key::PAUSED)?.is_some();
        if let Some(v) = text(key::COUNTERS)? {
            // Observability only: unreadable counters start again.
            core.counters = serde_json::from_str(&v).unwrap_or_default();
        }
        if let Some(v) = text(key::TICK)? {
            let pos = TickPosition::decode(&v).map_err(|e| bad_state(key::TICK, e))?;
            core.set_tick(pos);
        }
        for (k, value) in log.state_scan_prefix(&core.ns, key::FIRES)? {
            let f: FireRecord = serde_json::from_slice(&value).map_err(|e| bad_state(&k, e))?;
            core.fires.insert(f);
        }
        for (k, value) in log.state_scan_prefix(&core.ns, key::DEAD)? {
            let f: FireRecord = serde_json::from_slice(&value).map_err(|e| bad_state(&k, e))?;
            core.fires
                .insert_dead(&f.fire_id, f.first_seq().unwrap_or(u64::MAX));
        }
        let mut members: HashMap<Option<String>, Vec<u64>> = HashMap::new();
        for (k, value) in log.state_scan_prefix(&core.ns, key::MEMBERS)? {
            for (seq, p) in key::decode_members(&value).map_err(|e| bad_state(&k, e))? {
                members.entry(p).or_default().push(seq);
            }
        }
        let mut rows: BTreeMap<Option<String>, Vec<(String, Vec<u8>)>> = BTreeMap::new();
        for (k, value) in log.state_scan_prefix(&core.ns, key::PARTITIONS)? {
            let (p, sub) =
                key::parse_partition(&k).ok_or_else(|| bad_state(&k, "not a partition key"))?;
            rows.entry(p).or_default().push((sub.to_owned(), value));
        }
        for (p, rows) in rows {
            let mine = members.remove(&p).unwrap_or_default();
            let state = core
                .kind
                .load(rows, mine)
                .map_err(|e| bad_state(&key::partition(&p), e))?;
            core.install(p, state);
        }
        Ok(core)
    }

    /// The rule starts running at `now` (deploy, start-up): ticks that fell
    /// due before it were missed (catch-up policy), and a schedule without
    /// a position starts counting ticks here (committed at once, so a
    /// restart does not move it).
    pub fn begin(&mut self, log: &EventLog, now: i64) -> Result<(), CoreError> {
        self.up_since = Some(now);
        if log.state_get(&self.ns, key::KIND)?.is_none() {
            log.transact_blocking(Vec::new(), vec![self.put(key::KIND, K::NAME.into())])?;
        }
        if self.kind.ticks() && self.tick.is_none() {
            let pos = TickPosition {
                last: now,
                ..TickPosition::default()
            };
            log.transact_blocking(Vec::new(), vec![self.put(key::TICK, pos.encode())])?;
            self.set_tick(pos);
        }
        Ok(())
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

    /// The last seq processed.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// The seq up to which the log holds nothing more for this rule: the
    /// cursor, or further when the seqs after it are other tenants'.
    pub fn seen(&self) -> u64 {
        self.cursor.max(self.seen)
    }

    /// The committed state of `partition`.
    pub fn partition(&self, partition: Option<&str>) -> Option<&K::State> {
        self.parts.get(&partition.map(str::to_owned))
    }

    /// Partitions with state.
    pub fn partitions(&self) -> usize {
        self.parts.len()
    }

    /// The earliest deadline: a partition's, or the next tick.
    pub fn next_deadline(&self) -> Option<i64> {
        [self.timers.next_deadline(), self.next_tick]
            .into_iter()
            .flatten()
            .min()
    }

    /// The schedule's position (kinds with ticks, once started).
    pub fn tick_position(&self) -> Option<TickPosition> {
        self.tick
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

    /// Counters since the rule was deployed (see [`Counters`]).
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Save the counters, so that the next opening of the rule's state
    /// (a swap, a restart) carries on from them.
    pub fn save_counters(&self, log: &EventLog) -> Result<(), CoreError> {
        let json = serde_json::to_vec(&self.counters).expect("serialisable");
        log.transact_blocking(Vec::new(), vec![self.put(key::COUNTERS, json)])?;
        Ok(())
    }

    /// Paused or suspended: the rule processes nothing until resumed.
    pub fn held(&self) -> bool {
        self.paused || self.suspended.is_some()
    }

    /// Fires that may start at `now`, oldest first; none while the rule is
    /// paused or suspended.
    pub fn due_fires(&self, now: i64) -> Vec<String> {
        self.due_fires_upto(now, usize::MAX)
    }

    /// [`Self::due_fires`], at most `max` of them (the scan stops there).
    pub fn due_fires_upto(&self, now: i64, max: usize) -> Vec<String> {
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

    // ---- select --------------------------------------------------------

    /// The rule's verdict on every event: engine records and the rule's own
    /// outputs are skipped without asking the guest.
    pub fn select(&mut self, events: &[Event]) -> Result<Vec<Verdict>, CallError> {
        let candidates: Vec<usize> = (0..events.len())
            .filter(|&i| self.is_candidate(&events[i]))
            .collect();
        let mut verdicts = vec![Verdict::Skip; events.len()];
        if candidates.is_empty() {
            return Ok(verdicts);
        }
        let picked: Vec<&Event> = candidates.iter().map(|&i| &events[i]).collect();
        let got = self.instance.select(&picked)?;
        for (i, v) in candidates.into_iter().zip(got) {
            verdicts[i] = v;
        }
        Ok(verdicts)
    }

    fn is_candidate(&self, e: &Event) -> bool {
        e.source != ENGINE_SOURCE && e.source != self.own_source
    }

    // ---- planning --------------------------------------------------------

    /// The effects of feeding `events` (with `verdicts`) to the kind, the
    /// `i`-th at engine time `now_of(i)`, without changing anything.
    pub fn plan(
        &self,
        events: &[Event],
        verdicts: &[Verdict],
        now_of: &dyn Fn(usize) -> i64,
        stop: Stop,
    ) -> Plan<K> {
        let mut plan = Plan::empty(self.cursor);
        // Deadlines this plan set, to stop before an event they precede.
        let mut new_deadline = i64::MAX;
        for (i, (event, verdict)) in events.iter().zip(verdicts).enumerate() {
            let now = now_of(i);
            if i >= stop.limit || (i > 0 && now >= stop.before.min(new_deadline)) {
                break;
            }
            plan.consumed = i + 1;
            if self.is_candidate(event) {
                plan.read += 1;
            }
            plan.cursor = event.seq;
            let Verdict::Keep(place) = verdict else {
                continue;
            };
            let base = self.parts.get(&place.partition);
            let fresh = base.is_none() && !plan.changes.contains_key(&place.partition);
            if fresh
                && let Some(max) = self.spec.max_partitions
                && self.parts.len() + plan.new_parts >= max
            {
                plan.notes.push(NoteRecord {
                    partition: place.partition.clone(),
                    note: Note::OverQuota {
                        seq: event.seq,
                        max_partitions: max,
                    },
                    at: now,
                });
                continue;
            }
            plan.new_parts += usize::from(fresh);
            plan.kept += 1;
            let change = plan.changes.entry(place.partition.clone()).or_default();
            let mut out = KindOut::default();
            let kept = Kept {
                seq: event.seq,
                time: event.time,
                membership: place.membership,
            };
            self.kind.on_event(base, change, kept, now, &mut out);
            if let Some(d) = self.kind.deadline(base, change) {
                new_deadline = new_deadline.min(d);
            }
            let fired = !out.fires.is_empty();
            self.collect(&mut plan, &place.partition, out, now);
            if fired && stop.at_fire {
                break;
            }
        }
        plan
    }

    /// The effects of the deadlines due at `now`: partitions' deadlines,
    /// then the schedule's ticks.
    fn plan_deadlines(&self, now: i64) -> Plan<K> {
        let mut plan = Plan::empty(self.cursor);
        for (_, p) in self.timers.due(now) {
            let base = self.parts.get(&p);
            let change = plan.changes.entry(p.clone()).or_default();
            let mut out = KindOut::default();
            self.kind.on_deadline(base, change, now, &mut out);
            self.collect(&mut plan, &p, out, now);
        }
        if self.kind.ticks() {
            self.plan_ticks(&mut plan, now);
        }
        plan
    }

    /// Ticks due at `now`, each offered to every partition with state and
    /// to the global one, in partition order.
    fn plan_ticks(&self, plan: &mut Plan<K>, now: i64) {
        let Some(pos) = self.tick else {
            // First turn: the schedule starts here.
            plan.tick = Some(TickPosition {
                last: now,
                ..TickPosition::default()
            });
            return;
        };
        if self.next_tick.is_none_or(|t| t > now) {
            return;
        }
        let up_since = self.up_since.unwrap_or(now);
        let due = self.kind.due_ticks(pos.last, now, up_since);
        let mut new_pos = TickPosition {
            last: due.position.max(pos.last),
            missed: pos.missed + due.missed,
            ..pos
        };
        if let (Some(first), Some(last)) = (due.first_missed, due.last_missed) {
            plan.missed = Some(Missed {
                ticks: due.missed,
                first,
                last,
                more: due.missed_more,
                at: now,
            });
        }
        if !due.run.is_empty() {
            let mut partitions: Vec<&Option<String>> = self.parts.keys().collect();
            if !self.parts.contains_key(&None) {
                partitions.push(&None);
            }
            partitions.sort_unstable();
            let keyed = self.parts.len() - usize::from(self.parts.contains_key(&None));
            for tick in due.run {
                for &p in &partitions {
                    let base = self.parts.get(p);
                    let in_flight = InFlight {
                        fires: self.fires.in_flight(p),
                        running: self.fires.running_in(p),
                        keyed_partitions: keyed,
                    };
                    // Only partitions a tick does something to join the
                    // plan: an idle one is not written, nor re-installed.
                    let had = plan.changes.contains_key(p);
                    let mut change = plan.changes.remove(p).unwrap_or_default();
                    let mut out = KindOut::default();
                    self.kind
                        .on_tick(base, &mut change, tick, in_flight, &mut out);
                    let quiet = out.fires.is_empty() && out.notes.is_empty();
                    if had || !quiet {
                        plan.changes.insert(p.clone(), change);
                    }
                    if quiet {
                        continue;
                    }
                    new_pos.skipped += out
                        .notes
                        .iter()
                        .filter(|n| matches!(n, Note::TickSkipped { .. }))
                        .count() as u64;
                    self.collect(plan, p, out, now);
                }
            }
        }
        plan.tick = Some(new_pos);
    }

    fn collect(&self, plan: &mut Plan<K>, p: &Option<String>, out: KindOut, now: i64) {
        let part = partition_part(p);
        let id = |parts: &[String]| {
            let mut all = vec![part.as_str()];
            all.extend(parts.iter().map(String::as_str));
            fire_id(&self.spec.name, &all)
        };
        for f in out.fires {
            let fire_id = id(&f.id_parts);
            let mut seqs = f.seqs;
            if f.supersede {
                self.supersede(plan, p, &fire_id, &mut seqs, now);
            }
            let order = self.fires.next_order() + plan.fires.len() as u64;
            plan.fires.push(FireRecord {
                order,
                fire_id,
                rule: self.spec.name.clone(),
                partition: p.clone(),
                reason: f.reason,
                seqs,
                created_at: now,
                attempts: 0,
                retry_at: None,
                last_error: None,
                redriven: 0,
            });
        }
        plan.notes
            .extend(out.notes.into_iter().map(|note| NoteRecord {
                partition: p.clone(),
                note,
                at: now,
            }));
        for d in out.discards {
            plan.discards.push(DiscardRecord {
                fire_id: id(&d.id_parts),
                partition: p.clone(),
                seqs: d.seqs,
                at: now,
            });
        }
    }

    /// Cancel the partition's fires in the pipeline (committed ones and
    /// ones this plan made) in favour of `by`, which takes their events.
    fn supersede(
        &self,
        plan: &mut Plan<K>,
        p: &Option<String>,
        by: &str,
        seqs: &mut Vec<u64>,
        now: i64,
    ) {
        let mut taken = Vec::new();
        for id in self.fires.ids_in(p) {
            if plan.cancelled.iter().any(|c| c.fire_id == id) {
                continue;
            }
            let f = self.fires.get(&id).expect("indexed fires are pending");
            taken.extend_from_slice(&f.seqs);
            plan.cancelled.push(Cancelled {
                first_seq: f.first_seq(),
                fire_id: id,
                by: by.to_owned(),
                partition: p.clone(),
                at: now,
            });
        }
        let mut i = 0;
        while i < plan.fires.len() {
            if plan.fires[i].partition == *p {
                let f = plan.fires.remove(i);
                taken.extend_from_slice(&f.seqs);
                plan.cancelled.push(Cancelled {
                    fire_id: f.fire_id,
                    first_seq: None,
                    by: by.to_owned(),
                    partition: p.clone(),
                    at: now,
                });
            } else {
                i += 1;
            }
        }
        if !taken.is_empty() {
            taken.append(seqs);
            taken.sort_unstable();
            taken.dedup();
            *seqs = taken;
        }
    }

    // ---- committing --------------------------------------------------------

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

    /// The lowest first seq of the partitions' state after `plan`.
    fn min_open_after(&self, plan: &Plan<K>) -> Option<u64> {
        let mut removed = Vec::new();
        let mut added = Vec::new();
        for (p, change) in &plan.changes {
            let base = self.parts.get(p);
            if let Some(s) = base.and_then(|b| self.kind.first_seq(b)) {
                removed.push(s);
            }
            if let Some(s) = self.kind.first_seq_after(base, change) {
                added.push(s);
            }
        }
        self.part_firsts.min_after(&removed, &added)
    }

    /// The pin after `plan`, whose partitions hold `min_open` at the least.
    fn pin_after(&self, plan: &Plan<K>, min_open: Option<u64>) -> StateOp {
        let new_fires: Vec<u64> = plan
            .fires
            .iter()
            .filter_map(FireRecord::first_seq)
            .collect();
        let gone: Vec<u64> = plan.cancelled.iter().filter_map(|c| c.first_seq).collect();
        let fires = self.fires.min_first_after(&gone, &new_fires);
        self.pin(plan.cursor, min_open, fires)
    }

    /// The pin as things stand, with pending fires holding `removed` no
    /// longer and `added` now (a fire moving to the dead-letter list).
    fn pin_now(&self, removed: &[u64], added: &[u64]) -> StateOp {
        let fires = self.fires.min_first_after(removed, added);
        self.pin(self.cursor, self.part_firsts.min(), fires)
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

    fn engine_record(
        &self,
        id: String,
        kind: &str,
        now: i64,
        payload: serde_json::Value,
    ) -> NewEvent {
        super::engine_record(&self.spec.tenant, id, kind, now, &payload)
    }

    /// Commit `plan` in one transaction, then apply it to memory.
    pub fn commit(&mut self, log: &EventLog, plan: Plan<K>) -> Result<Step, CoreError> {
        let mut ops = Vec::new();
        let mut rows = Vec::new();
        let mut members: Vec<(u64, &Option<String>)> = Vec::new();
        for (p, change) in &plan.changes {
            rows.clear();
            self.kind.write(self.parts.get(p), change, &mut rows);
            let prefix = key::partition(p);
            for row in rows.drain(..) {
                ops.push(match row {
                    Row::Put(sub, value) => self.put(format!("{prefix}{sub}"), value),
                    Row::Delete(sub) => self.delete(format!("{prefix}{sub}")),
                    Row::Clear => StateOp::DeletePrefix {
                        ns: self.ns.clone(),
                        prefix: prefix.clone(),
                    },
                    Row::Member(seq) => {
                        members.push((seq, p));
                        continue;
                    }
                });
            }
        }
        // The member log: drop the rows every buffer has moved past, then
        // write this step's additions as one row.
        let min_open = self.min_open_after(&plan);
        let floor = min_open.unwrap_or(plan.cursor + 1);
        if floor > self.members_floor {
            ops.push(StateOp::DeleteRange {
                ns: self.ns.clone(),
                from: key::MEMBERS.to_owned(),
                to: key::members(floor),
            });
        }
        members.sort_unstable_by_key(|(seq, _)| *seq);
        if let Some(&(last, _)) = members.last()
            && last >= floor
        {
            ops.push(self.put(key::members(last), key::encode_members(&members)));
        }
        for f in &plan.fires {
            ops.push(self.put(
                key::fire_key(f.order, &f.fire_id),
                serde_json::to_vec(f).expect("a fire serialises"),
            ));
        }
        // Discards go on the log as engine records, up to 1000 windows each
        // (so closing a million windows is not a million events).
        let mut records = Vec::new();
        for chunk in plan.discards.chunks(1_000) {
            let windows: Vec<_> = chunk
                .iter()
                .map(|d| json!({"fire_id": d.fire_id, "partition": d.partition, "seqs": d.seqs}))
                .collect();
            records.push(self.engine_record(
                format!("{}.discarded", chunk[0].fire_id),
                "windows.discarded",
                chunk[0].at,
                json!({"rule": self.spec.name, "windows": windows}),
            ));
        }
        self.note_records(&plan, &mut records);
        for c in &plan.cancelled {
            if let Some(f) = self.fires.get(&c.fire_id) {
                ops.push(self.delete(key::fire_key(f.order, &c.fire_id)));
            }
        }
        if let Some(pos) = &plan.tick
            && self.tick.as_ref() != Some(pos)
        {
            ops.push(self.put(key::TICK, pos.encode()));
        }
        if plan.cursor != self.cursor {
            ops.push(self.put(key::CURSOR, plan.cursor.to_string().into_bytes()));
        }
        if ops.is_empty() && records.is_empty() {
            return Ok(Step {
                read: plan.read,
                cursor: self.cursor,
                ..Step::default()
            });
        }
        ops.push(self.pin_after(&plan, min_open));
        log.transact_blocking(records, ops)?;
        self.members_floor = self.members_floor.max(floor);
        // Committed: now memory follows.
        for (p, change) in plan.changes {
            let base = self.parts.remove(&p);
            if let Some(s) = base.as_ref().and_then(|b| self.kind.first_seq(b)) {
                self.part_firsts.remove(s);
            }
            match self.kind.apply(base, change) {
                Some(state) => self.install(p, state),
                None => {
                    self.timers.cancel(&p);
                }
            }
        }
        for c in &plan.cancelled {
            self.fires.cancel(&c.fire_id);
        }
        for f in &plan.fires {
            self.fires.insert(f.clone());
        }
        if let Some(pos) = plan.tick {
            self.set_tick(pos);
        }
        self.cursor = plan.cursor;
        self.counters.matched += plan.kept as u64;
        self.counters.fires_created += plan.fires.len() as u64;
        self.counters.fires_cancelled += plan.cancelled.len() as u64;
        self.counters.forced_leaves += plan
            .notes
            .iter()
            .filter(|n| matches!(n.note, Note::Left { .. }))
            .count() as u64;
        Ok(Step {
            read: plan.read,
            kept: plan.kept,
            fires: plan.fires,
            discards: plan.discards,
            notes: plan.notes,
            missed: plan.missed,
            cancelled: plan.cancelled,
            cursor: self.cursor,
        })
    }

    /// Engine records for what the plan noted: forced leaves and skipped
    /// ticks (up to 1000 per record, as discards), missed ticks, cancelled
    /// fires.
    fn note_records(&self, plan: &Plan<K>, records: &mut Vec<NewEvent>) {
        let mut by_kind: BTreeMap<&'static str, Vec<&NoteRecord>> = BTreeMap::new();
        for n in &plan.notes {
            by_kind.entry(n.note.record_kind()).or_default().push(n);
        }
        for (kind, notes) in by_kind {
            for chunk in notes.chunks(1_000) {
                let items: Vec<_> = chunk
                    .iter()
                    .map(|n| {
                        let mut item = match &n.note {
                            Note::Left {
                                epoch,
                                member_since,
                            } => json!({"epoch": epoch, "member_since": member_since,
                                "why": "max_dwell"}),
                            Note::TickSkipped { tick, overlap } => {
                                json!({"tick": tick, "overlap": overlap})
                            }
                            Note::OverQuota {
                                seq,
                                max_partitions,
                            } => json!({"seq": seq, "why": "partition quota",
                                "max_partitions": max_partitions}),
                        };
                        item["partition"] = json!(n.partition);
                        item
                    })
                    .collect();
                let first = chunk[0];
                let what = match &first.note {
                    Note::Left {
                        epoch,
                        member_since,
                    } => format!("left:{epoch}:{member_since}"),
                    Note::TickSkipped { tick, .. } => format!("skipped:{tick}"),
                    Note::OverQuota { seq, .. } => format!("quota:{seq}"),
                };
                let id = fire_id(&self.spec.name, &[&partition_part(&first.partition), &what]);
                records.push(self.engine_record(
                    format!("{id}.{kind}"),
                    kind,
                    first.at,
                    json!({"rule": self.spec.name, "items": items}),
                ));
            }
        }
        if let Some(m) = &plan.missed {
            let id = fire_id(&self.spec.name, &["missed", &m.first.to_string()]);
            records.push(self.engine_record(
                format!("{id}.missed"),
                "ticks.missed",
                m.at,
                json!({"rule": self.spec.name, "missed": m.ticks, "at_least": m.more,
                    "first": m.first, "last": m.last}),
            ));
        }
        for c in &plan.cancelled {
            records.push(self.engine_record(
                format!("{}.cancelled", c.fire_id),
                "fire.cancelled",
                c.at,
                json!({"rule": self.spec.name, "fire_id": c.fire_id, "by": c.by,
                    "partition": c.partition}),
            ));
        }
    }

    // ---- steps -------------------------------------------------------------

    /// Process up to `max` new events of the log at engine time `now`. A
    /// paused or suspended rule processes nothing (its events wait, pinned).
    pub fn step(&mut self, log: &EventLog, now: i64, max: usize) -> Result<Step, CoreError> {
        self.step_until(log, now, max, None)
    }

    /// [`Self::step`] reading no further than seq `until`. A driver reads
    /// the committed seq, then the clock, then steps up to that seq: no
    /// event is then processed at an engine time before it was ingested.
    pub fn step_until(
        &mut self,
        log: &EventLog,
        now: i64,
        max: usize,
        until: Option<u64>,
    ) -> Result<Step, CoreError> {
        let idle = Step {
            cursor: self.cursor,
            ..Step::default()
        };
        if self.held() || until.is_some_and(|u| u <= self.seen()) {
            return Ok(idle);
        }
        // After a failed `select`, go one event at a time to find the one
        // that fails.
        let max = if self.isolating > 0 { 1 } else { max };
        let events = log.query(&EventQuery {
            after_seq: Some(self.cursor),
            until_seq: until,
            ..EventQuery::tenant(&self.spec.tenant, max)
        })?;
        if events.is_empty() {
            if let Some(u) = until {
                self.seen = self.seen.max(u);
            }
            return Ok(idle);
        }
        let verdicts = match self.select(&events) {
            Ok(v) => {
                self.isolating = self
                    .isolating
                    .saturating_sub(events.len().min(self.isolating));
                self.poison = None;
                v
            }
            Err(e) => return self.select_failed(log, &events, e, now),
        };
        self.step_with(log, &events, &verdicts, &|_| now, Stop::NEVER)
    }

    /// Feed events already selected (a prefix of them, as `stop` says) and
    /// commit. The events must be the ones right after the cursor. A paused
    /// or suspended rule takes none.
    pub fn step_with(
        &mut self,
        log: &EventLog,
        events: &[Event],
        verdicts: &[Verdict],
        now_of: &dyn Fn(usize) -> i64,
        stop: Stop,
    ) -> Result<Step, CoreError> {
        if self.held() {
            return Ok(Step {
                cursor: self.cursor,
                ..Step::default()
            });
        }
        let plan = self.plan(events, verdicts, now_of, stop);
        self.commit(log, plan)
    }

    /// The rule is being undeployed with `drain`: every partition's open
    /// buffer fires (reason drained) when `fire`, or is dropped and
    /// reported (`windows.discarded`). Committed as one step.
    pub fn drain(&mut self, log: &EventLog, now: i64, fire: bool) -> Result<Step, CoreError> {
        let mut plan = Plan::empty(self.cursor);
        let mut partitions: Vec<Option<String>> = self.parts.keys().cloned().collect();
        partitions.sort_unstable();
        for p in partitions {
            let base = self.parts.get(&p);
            let change = plan.changes.entry(p.clone()).or_default();
            let mut out = KindOut::default();
            self.kind.drain(base, change, fire, &mut out);
            self.collect(&mut plan, &p, out, now);
        }
        self.commit(log, plan)
    }

    /// Close what is due at `now`: partitions whose deadline has come
    /// (idle ones too: no event is needed).
    pub fn expire(&mut self, log: &EventLog, now: i64) -> Result<Step, CoreError> {
        if self.held() {
            return Ok(Step {
                cursor: self.cursor,
                ..Step::default()
            });
        }
        self.up_since.get_or_insert(now);
        let starting = self.kind.ticks() && self.tick.is_none();
        if !starting && self.next_deadline().is_none_or(|d| d > now) {
            return Ok(Step {
                cursor: self.cursor,
                ..Step::default()
            });
        }
        let plan = self.plan_deadlines(now);
        self.commit(log, plan)
    }

    /// `select` failed on `events`. Several candidates: isolate (one at a
    /// time from now on). One: count the failure against that event; past
    /// the policy's attempts, skip it or suspend the rule. A failure that
    /// may be the machine's (the wall-clock deadline while fuel metering
    /// is on to catch a runaway guest) counts a third.
    fn select_failed(
        &mut self,
        log: &EventLog,
        events: &[Event],
        error: CallError,
        now: i64,
    ) -> Result<Step, CoreError> {
        let candidates: Vec<&Event> = events.iter().filter(|e| self.is_candidate(e)).collect();
        if candidates.len() > 1 {
            self.isolating = events.len();
            return Err(error.into());
        }
        let Some(event) = candidates.first() else {
            return Err(error.into());
        };
        // A wall-clock timeout while fuel metering is on may be the
        // machine's (an overloaded host), not the guest's: it weighs a
        // third of another failure. It still counts, so a guest whose
        // fuel outlasts its deadline cannot spin on one event forever.
        let machine =
            matches!(error.kind, CallErrorKind::Timeout { .. }) && self.spec.rule.limits().fuel > 0;
        let seq = event.seq;
        let (strikes, failures) = match self.poison {
            Some((s, strikes, n)) if s == seq => (strikes, n + 1),
            _ => (0, 1),
        };
        let strikes = strikes + if machine { 1 } else { 3 };
        self.poison = Some((seq, strikes, failures));
        if strikes < 3 * self.spec.select.attempts {
            return Err(error.into());
        }
        let mut payload = json!({"rule": self.spec.name, "seq": seq,
            "attempts": failures, "error": error.to_string()});
        let (kind, mut ops) = match self.spec.select.on_poison {
            OnPoison::Skip => {
                tracing::warn!(rule = %self.spec.name, seq, error = %error, "skipping an event the rule cannot select");
                (
                    "event.skipped",
                    vec![self.put(key::CURSOR, seq.to_string().into_bytes())],
                )
            }
            OnPoison::Suspend => {
                let why = format!("select failed {failures} times on event {seq}: {error}");
                tracing::warn!(rule = %self.spec.name, seq, error = %error, "suspending: an event the rule cannot select");
                payload["suspended"] = json!(true);
                (
                    "rule.suspended",
                    vec![self.put(key::SUSPENDED, why.into_bytes())],
                )
            }
        };
        let record =
            self.engine_record(format!("skip:{}:{seq}", self.spec.name), kind, now, payload);
        let skip = self.spec.select.on_poison == OnPoison::Skip;
        // The pin moves with the cursor (when the event is skipped).
        let cursor = if skip { seq } else { self.cursor };
        let fires = self.fires.min_first_after(&[], &[]);
        ops.push(self.pin(cursor, self.part_firsts.min(), fires));
        log.transact_blocking(vec![record], ops)?;
        self.poison = None;
        self.isolating = self.isolating.saturating_sub(1);
        if skip {
            self.cursor = seq;
            self.counters.skipped_events += 1;
        } else {
            self.suspended = Some(format!(
                "select failed {failures} times on event {seq}: {error}"
            ));
        }
        Ok(Step {
            read: 1,
            cursor: self.cursor,
            ..Step::default()
        })
    }

    // ---- fires -------------------------------------------------------------

    /// Start fire `fire_id`: mark it running and build its job (which reads
    /// the fire's events by seq when it runs). Fails when it is not
    /// pending.
    pub fn start(&mut self, log: &EventLog, fire_id: &str, now: i64) -> Result<FireJob, CoreError> {
        let Some(record) = self.fires.get(fire_id).cloned() else {
            return Err(bad_state(&key::fire(fire_id), "no such pending fire"));
        };
        self.fires.set_running(fire_id);
        Ok(FireJob::new(
            record,
            &self.spec.tenant,
            log.clone(),
            self.spec.rule.clone(),
            now,
        ))
    }

    /// Commit what a job's handler run returned: outputs and completion;
    /// or the failure and its retry time; or the dead letter (and maybe
    /// the suspension). Each is also an engine record on the log.
    pub fn finish(
        &mut self,
        log: &EventLog,
        attempt: FireAttempt,
    ) -> Result<FireOutcome, CoreError> {
        let partition = attempt.record.partition.clone();
        let id = attempt.record.fire_id.clone();
        if self.fires.get(&id).is_none() {
            // Cancelled while it ran: its result is not committed.
            self.fires.set_stopped(&id, &partition);
            return Ok(FireOutcome::Cancelled);
        }
        let result = self.finish_inner(log, attempt);
        self.fires.set_stopped(&id, &partition);
        result
    }

    fn finish_inner(
        &mut self,
        log: &EventLog,
        attempt: FireAttempt,
    ) -> Result<FireOutcome, CoreError> {
        let FireAttempt {
            record,
            attempt,
            now,
            input_hops,
            result,
        } = attempt;
        let fire_id = record.fire_id.clone();
        let first = record.first_seq();
        let result = match result {
            Ok(r) => r,
            // The handler did not run: nothing to record; the fire stays
            // pending and is tried again.
            Err(NotRun(why)) => return Err(bad_state(&key::fire(&fire_id), why)),
        };
        // A re-driven fire's records get ids of their own round.
        let round = match record.redriven {
            0 => String::new(),
            n => format!("r{n}."),
        };
        let engine = |kind: &str, suffix: &str, payload: serde_json::Value| {
            self.engine_record(format!("{fire_id}.{round}{suffix}"), kind, now, payload)
        };
        match result {
            Ok(emits) => {
                let hops = input_hops.saturating_add(1);
                let n = emits.len();
                let mut events = Vec::with_capacity(n + 2);
                let over_limit = hops > self.spec.outputs.max_hops && n > 0;
                if over_limit {
                    events.push(engine(
                        "outputs.dropped",
                        "dropped",
                        json!({"rule": record.rule, "fire_id": fire_id, "outputs": n,
                            "hops": hops, "max_hops": self.spec.outputs.max_hops,
                            "why": "hop limit: rules feeding each other in a loop?"}),
                    ));
                } else {
                    events.extend(emits.into_iter().enumerate().map(|(i, e)| NewEvent {
                        tenant: self.spec.tenant.clone(),
                        id: Some(super::engine_id(format_args!("{fire_id}.{i}"))),
                        source: self.own_source.clone(),
                        kind: e.kind,
                        time: Some(now),
                        payload: e.payload,
                        hops,
                    }));
                }
                events.push(engine(
                    "fire.completed",
                    "done",
                    json!({"rule": record.rule, "fire_id": fire_id,
                        "partition": record.partition, "attempt": attempt, "outputs": n}),
                ));
                let ops = vec![
                    self.delete(key::fire_key(record.order, &fire_id)),
                    self.delete(key::BREAKER),
                    self.pin_now(&first.into_iter().collect::<Vec<_>>(), &[]),
                ];
                let report = log.transact_blocking(events, ops)?;
                self.fires.remove(&fire_id);
                self.fires.dead_in_a_row = 0;
                self.counters.fires_ok += 1;
                let (outputs, dropped) = if over_limit {
                    self.counters.outputs_dropped += n as u64;
                    (Vec::new(), n)
                } else {
                    (report.seqs[..n].to_vec(), 0)
                };
                Ok(FireOutcome::Completed { outputs, dropped })
            }
            Err(call) => {
                let error = call.to_string();
                let retry = &self.spec.retry;
                let dead = call.is_fatal() || attempt >= retry.max_attempts;
                let mut updated = record.clone();
                updated.attempts = attempt;
                updated.last_error = Some(error.clone());
                if dead {
                    let in_a_row = self.fires.dead_in_a_row + 1;
                    let suspend = (in_a_row >= retry.suspend_after)
                        .then(|| format!("{in_a_row} fires in a row dead-lettered; last: {error}"));
                    let first_v: Vec<u64> = first.into_iter().collect();
                    let mut ops = vec![
                        self.delete(key::fire_key(record.order, &fire_id)),
                        self.put(
                            key::dead(&fire_id),
                            serde_json::to_vec(&updated).expect("a fire serialises"),
                        ),
                        self.put(key::BREAKER, in_a_row.to_string().into_bytes()),
                        self.pin_now(&first_v, &first_v),
                    ];
                    if let Some(why) = &suspend {
                        ops.push(self.put(key::SUSPENDED, why.clone().into_bytes()));
                    }
                    let record_event = engine(
                        "fire.dead_lettered",
                        "dead",
                        json!({"rule": record.rule, "fire_id": fire_id,
                            "attempts": attempt, "error": error}),
                    );
                    log.transact_blocking(vec![record_event], ops)?;
                    self.fires.remove(&fire_id);
                    self.fires.insert_dead(&fire_id, first.unwrap_or(u64::MAX));
                    self.fires.dead_in_a_row = in_a_row;
                    self.counters.fires_failed += 1;
                    self.counters.dead_lettered += 1;
                    if suspend.is_some() {
                        self.suspended = suspend;
                    }
                    Ok(FireOutcome::DeadLettered { error })
                } else {
                    let at = now.saturating_add(backoff_ms(retry, attempt, &fire_id));
                    updated.retry_at = Some(at);
                    let ops = vec![self.put(
                        key::fire_key(updated.order, &fire_id),
                        serde_json::to_vec(&updated).expect("a fire serialises"),
                    )];
                    let record_event = engine(
                        "fire.failed",
                        &format!("a{attempt}"),
                        json!({"rule": record.rule, "fire_id": fire_id,
                            "attempt": attempt, "error": error, "retry_at": at}),
                    );
                    log.transact_blocking(vec![record_event], ops)?;
                    self.fires.insert(updated);
                    self.counters.fires_failed += 1;
                    Ok(FireOutcome::Retry { at, error })
                }
            }
        }
    }

    /// Run fire `fire_id` once, here and now (start, run, finish).
    pub fn run_fire(
        &mut self,
        log: &EventLog,
        fire_id: &str,
        now: i64,
    ) -> Result<FireOutcome, CoreError> {
        let job = self.start(log, fire_id, now)?;
        let attempt = job.run();
        self.finish(log, attempt)
    }

    /// The fire completed elsewhere (or is abandoned): forget it.
    pub fn fire_done(&mut self, log: &EventLog, fire_id: &str) -> Result<(), CoreError> {
        let Some((first, order)) = self.fires.get(fire_id).map(|f| (f.first_seq(), f.order)) else {
            return Ok(());
        };
        let ops = vec![
            self.delete(key::fire_key(order, fire_id)),
            self.pin_now(&first.into_iter().collect::<Vec<_>>(), &[]),
        ];
        log.transact_blocking(Vec::new(), ops)?;
        self.fires.remove(fire_id);
        Ok(())
    }

    // ---- control -------------------------------------------------------------

    /// Lift a suspension; the rule carries on from its cursor.
    pub fn resume(&mut self, log: &EventLog) -> Result<(), CoreError> {
        let ops = vec![
            self.delete(key::SUSPENDED),
            self.delete(key::BREAKER),
            self.delete(key::PAUSED),
        ];
        log.transact_blocking(Vec::new(), ops)?;
        self.suspended = None;
        self.paused = false;
        self.fires.dead_in_a_row = 0;
        // Ticks that fell due while held were missed (catch-up policy).
        self.up_since = None;
        Ok(())
    }

    /// Pause: nothing is processed (events wait, pinned; deadlines and
    /// fires wait) until [`Self::resume`].
    pub fn pause(&mut self, log: &EventLog) -> Result<(), CoreError> {
        log.transact_blocking(Vec::new(), vec![self.put(key::PAUSED, Vec::new())])?;
        self.paused = true;
        Ok(())
    }

    /// The dead-letter list: fires that ran out of attempts or failed
    /// fatally, with their last error, oldest first. Reads dead letters
    /// only.
    pub fn dead_letters(&self, log: &EventLog) -> Result<Vec<FireRecord>, CoreError> {
        let mut dead = Vec::new();
        for (k, value) in log.state_scan_prefix(&self.ns, key::DEAD)? {
            dead.push(serde_json::from_slice::<FireRecord>(&value).map_err(|e| bad_state(&k, e))?);
        }
        dead.sort_by_key(|f| (f.created_at, f.first_seq()));
        Ok(dead)
    }

    /// Re-drive a dead-lettered fire: pending again with fresh attempts
    /// (same fire id, so outputs it may have emitted stay single).
    pub fn redrive(&mut self, log: &EventLog, fire_id: &str) -> Result<(), CoreError> {
        let k = key::dead(fire_id);
        let Some(value) = log.state_get(&self.ns, &k)? else {
            return Err(bad_state(&k, "no such dead letter"));
        };
        let mut record: FireRecord =
            serde_json::from_slice(&value).map_err(|e| bad_state(&k, e))?;
        record.attempts = 0;
        record.retry_at = None;
        record.redriven += 1;
        let ops = vec![
            self.delete(k),
            self.put(
                key::fire_key(record.order, fire_id),
                serde_json::to_vec(&record).expect("a fire serialises"),
            ),
        ];
        log.transact_blocking(Vec::new(), ops)?;
        self.fires.remove_dead(fire_id);
        self.fires.insert(record);
        Ok(())
    }

    /// Drop a dead letter for good, releasing its events to retention.
    pub fn discard_dead(&mut self, log: &EventLog, fire_id: &str) -> Result<(), CoreError> {
        if !self.fires.is_dead(fire_id) {
            return Err(bad_state(&key::dead(fire_id), "no such dead letter"));
        }
        let fires = self.fires.min_first_without_dead(&[], &[], Some(fire_id));
        let pin = self.pin(self.cursor, self.part_firsts.min(), fires);
        let ops = vec![self.delete(key::dead(fire_id)), pin];
        log.transact_blocking(Vec::new(), ops)?;
        self.fires.remove_dead(fire_id);
        Ok(())
    }
}
