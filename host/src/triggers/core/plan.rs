//! Planning: events and deadlines in time order.
//!
//! Time is the log's. A kept event is handed to its kind at its ingest
//! time; a deadline D (a partition's, or a schedule tick) is handled
//! after every event ingested before D and before any ingested at or
//! after it. The caller says how far the log is known (the *horizon*:
//! every event ingested before it is in the input), and a plan handles
//! no deadline past it. So the same log gives the same plan, fire for
//! fire, whether the rule kept up, lagged behind a backlog, was paused or
//! was restarted — only how late a deadline is handled differs, and that
//! is measured, not turned into a different fire.
//!
//! A plan changes nothing: it collects, per partition, the kind's
//! `Change` over the committed state, plus the fires, discards and notes
//! (each at the rule's time when it happened) and the new cursor.

use std::collections::BTreeMap;

use rustc_hash::{FxHashMap, FxHashSet};

use super::{Cancelled, DiscardRecord, Missed, NoteRecord, RuleCore, TickPosition};
use crate::event::Event;
use crate::records::{fire_id, partition_part};
use crate::triggers::fires::FireRecord;
use crate::triggers::timers::Timers;
use crate::triggers::{Due, FireReason, InFlight, Kept, Kind, KindOut, Note, Tick};
use crate::verdict::Verdict;

/// What a plan is given.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// Events right after the cursor, in seq order (their ingest times
    /// never decrease).
    pub events: &'a [Event],
    /// The rule's verdict on each event (`Skip` for those it is not
    /// asked about).
    pub verdicts: &'a [Verdict],
    /// How far the log is known: every event ingested before this time
    /// is in `events` or behind the cursor, so deadlines up to it may be
    /// handled once the events are. Never past the engine clock.
    pub horizon: i64,
    /// Consume at most this many events.
    pub limit: usize,
    /// Stop right after an event that made a fire, and before an event
    /// that a deadline precedes (`sluice test` runs what they fire before
    /// the next event is appended).
    pub at_fire: bool,
}

impl<'a> Input<'a> {
    /// Deadlines only, up to `horizon` (no new events).
    pub fn deadlines(horizon: i64) -> Input<'static> {
        Input {
            events: &[],
            verdicts: &[],
            horizon,
            limit: 0,
            at_fire: false,
        }
    }

    /// All of `events`, then the deadlines up to `horizon`.
    pub fn events(events: &'a [Event], verdicts: &'a [Verdict], horizon: i64) -> Self {
        Input {
            events,
            verdicts,
            horizon,
            limit: usize::MAX,
            at_fire: false,
        }
    }
}

/// The most deadlines one plan handles. Deadlines that fall due together
/// (a backlog after a restart or a pause: thousands, or a million) are
/// committed in steps of this many, and the engine starts the fires of
/// each step before it plans the next: the first handlers start after
/// one step's work, not after the whole backlog's, and a step's plan stays
/// small. The events after a cut wait for the next step (a lag, which
/// changes no fire). Measured at a million memberships falling due over
/// 30 s: 256 per step cost more per fire than one step for everything due;
/// 1 024 cost the same.
pub const DEADLINES_PER_STEP: usize = 1_024;

/// A step's effects, computed without I/O.
#[derive(Debug)]
pub struct Plan<K: Kind> {
    /// Events consumed (a prefix of those given).
    pub consumed: usize,
    pub(super) cursor: u64,
    /// The rule's time after the plan.
    pub(super) time: i64,
    pub(super) read: usize,
    pub(super) kept: usize,
    pub(super) changes: BTreeMap<Option<String>, K::Change>,
    pub(super) fires: Vec<FireRecord>,
    pub(super) discards: Vec<DiscardRecord>,
    pub(super) notes: Vec<NoteRecord>,
    pub(super) cancelled: Vec<Cancelled>,
    pub(super) missed: Option<Missed>,
    /// The schedule's new position.
    pub(super) tick: Option<TickPosition>,
    /// When the next tick falls due after the plan.
    pub(super) next_tick: Option<i64>,
    /// Partitions without state that events of this plan went to.
    new_parts: usize,
    /// The earliest deadline handled.
    pub(super) earliest_deadline: Option<i64>,
    /// Member-log rows below this seq can go (set by
    /// [`RuleCore::writes`]).
    pub(super) floor: u64,
    /// Deadlines handled (a tick counts once).
    deadlines: usize,
    /// Stopped at [`DEADLINES_PER_STEP`]: the rest waits for the next plan.
    pub(super) capped: bool,
}

impl<K: Kind> Plan<K> {
    /// Fires the plan makes.
    pub fn fires(&self) -> &[FireRecord] {
        &self.fires
    }

    /// Whether the plan handles a partition deadline.
    pub fn handles_deadline(&self) -> bool {
        self.earliest_deadline.is_some()
    }

    /// Whether the plan runs a schedule tick that fires, or passes ticks
    /// over.
    pub fn ticks(&self) -> bool {
        self.missed.is_some()
            || self
                .fires
                .iter()
                .any(|f| matches!(f.reason, FireReason::Schedule { .. }))
    }

    /// Whether the plan catches up ticks missed while the rule was not
    /// running (runs or passes them over).
    pub fn catches_up(&self) -> bool {
        self.missed.is_some()
            || self
                .fires
                .iter()
                .any(|f| matches!(f.reason, FireReason::Schedule { catch_up: true, .. }))
    }

    /// Nothing to write or apply.
    pub fn is_idle(&self) -> bool {
        self.consumed == 0
            && self.changes.is_empty()
            && self.fires.is_empty()
            && self.discards.is_empty()
            && self.notes.is_empty()
            && self.missed.is_none()
            && self.cancelled.is_empty()
    }
}

/// The partitions' deadlines as a plan sees them: the committed index,
/// overlaid with what the plan changed (a partition the plan touched has
/// its deadline here, and its committed entry is passed over).
struct Upcoming<'a> {
    committed: &'a Timers<Option<String>>,
    /// The latest time the plan may handle a deadline at.
    reach: i64,
    /// Committed entries before this one are all masked.
    from: Option<(i64, Option<String>)>,
    masked: FxHashSet<Option<String>>,
    planned: std::collections::BTreeSet<(i64, Option<String>)>,
    planned_at: FxHashMap<Option<String>, i64>,
}

impl<'a> Upcoming<'a> {
    fn new(committed: &'a Timers<Option<String>>, reach: i64) -> Self {
        Self {
            committed,
            reach,
            from: None,
            masked: FxHashSet::default(),
            planned: Default::default(),
            planned_at: FxHashMap::default(),
        }
    }

    /// The earliest committed entry that is not masked (entries before it
    /// are passed over for good: a masked partition stays masked).
    fn committed_first(&mut self) -> Option<&'a (i64, Option<String>)> {
        loop {
            match self.committed.after(self.from.as_ref()) {
                // A partition the plan touched: its deadline is planned.
                Some(entry) if self.masked.contains(&entry.1) => self.from = Some(entry.clone()),
                other => return other,
            }
        }
    }

    /// The earliest deadline.
    fn next(&mut self) -> Option<i64> {
        let committed = self.committed_first().map(|e| e.0);
        let planned = self.planned.first().map(|e| e.0);
        match (committed, planned) {
            (Some(c), Some(p)) => Some(c.min(p)),
            (c, p) => c.or(p),
        }
    }

    /// The earliest deadline and its partition.
    fn first(&mut self) -> Option<(i64, Option<String>)> {
        let committed = self.committed_first();
        match (committed, self.planned.first()) {
            (Some(c), Some(p)) => Some(if p < c { p.clone() } else { c.clone() }),
            (c, p) => c.or(p).cloned(),
        }
    }

    /// Partition `p`'s deadline after the plan's change to it. Only
    /// deadlines the plan may reach are tracked (most lie past it: a
    /// window's expiry, a dwell reaction), and a committed entry is hidden
    /// only when the change moved it.
    fn set(&mut self, p: &Option<String>, at: Option<i64>) {
        let due = at.filter(|a| *a <= self.reach);
        let old = self.planned_at.get(p).copied();
        if !self.masked.contains(p)
            && let Some(committed) = self.committed.deadline_of(p)
        {
            if Some(committed) == at && old.is_none() {
                // The committed index has it right (a batch window's
                // deadline stays put as events join it).
                return;
            }
            self.masked.insert(p.clone());
        }
        if old == due {
            return;
        }
        if let Some(old) = old {
            self.planned.remove(&(old, p.clone()));
            self.planned_at.remove(p);
        }
        if let Some(due) = due {
            self.planned.insert((due, p.clone()));
            self.planned_at.insert(p.clone(), due);
        }
    }
}

impl<K: Kind> RuleCore<K> {
    /// The effects of `input`: its events and the deadlines among and
    /// after them, in time order, without changing anything.
    pub fn plan(&self, input: &Input<'_>) -> Plan<K> {
        let mut plan = Plan {
            consumed: 0,
            cursor: self.cursor,
            time: self.time,
            read: 0,
            kept: 0,
            changes: BTreeMap::new(),
            fires: Vec::new(),
            discards: Vec::new(),
            notes: Vec::new(),
            cancelled: Vec::new(),
            missed: None,
            tick: self.tick,
            next_tick: self.next_tick,
            new_parts: 0,
            earliest_deadline: None,
            floor: 0,
            deadlines: 0,
            capped: false,
        };
        let n = input.events.len().min(input.limit);
        // Deadlines up to the horizon, or the last event's time, may be
        // handled in this plan.
        let reach = input.events[..n]
            .last()
            .map_or(input.horizon, |e| e.ingested.max(input.horizon));
        let mut upcoming = Upcoming::new(&self.timers, reach);
        let mut stopped = n < input.events.len();
        for (i, (event, verdict)) in input.events[..n].iter().zip(input.verdicts).enumerate() {
            let at = event.ingested.max(plan.time);
            if input.at_fire && i > 0 && Self::next_at(&mut upcoming, &plan) <= at {
                // A deadline (one this plan set) comes before the event:
                // its fire runs before the event is appended.
                stopped = true;
                break;
            }
            // Deadlines at or before the event's time come first.
            self.deadlines(&mut plan, &mut upcoming, at, Some(at));
            if plan.capped {
                // More are due before this event: it waits for them.
                stopped = true;
                break;
            }
            plan.consumed += 1;
            plan.cursor = event.seq;
            plan.time = at;
            if self.is_candidate(&event.source) {
                plan.read += 1;
            }
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
                    at,
                });
                continue;
            }
            plan.new_parts += usize::from(fresh);
            plan.kept += 1;
            let change = plan.changes.entry(place.partition.clone()).or_default();
            let mut out = KindOut::default();
            let kept = Kept {
                seq: event.seq,
                at,
                membership: place.membership,
            };
            self.kind.on_event(base, change, kept, &mut out);
            upcoming.set(&place.partition, self.kind.deadline(base, change));
            let fired = !out.fires.is_empty();
            self.collect(&mut plan, &place.partition, out, at);
            if fired && input.at_fire {
                stopped = true;
                break;
            }
        }
        if !stopped {
            self.deadlines(&mut plan, &mut upcoming, input.horizon, None);
        }
        plan
    }

    /// The earliest deadline or tick still to handle.
    fn next_at(upcoming: &mut Upcoming<'_>, plan: &Plan<K>) -> i64 {
        let part = upcoming.next().unwrap_or(i64::MAX);
        part.min(plan.next_tick.unwrap_or(i64::MAX))
    }

    /// Handle the deadlines up to `upto` in time order (a partition's
    /// before a tick at the same time). `next_event`: the time of the
    /// event that comes next, if any.
    fn deadlines(
        &self,
        plan: &mut Plan<K>,
        upcoming: &mut Upcoming<'_>,
        upto: i64,
        next_event: Option<i64>,
    ) {
        loop {
            let part_at = upcoming.next();
            let tick = plan.next_tick;
            let at = match (part_at, tick) {
                (Some(d), Some(t)) => d.min(t),
                (Some(d), None) => d,
                (None, Some(t)) => t,
                (None, None) => return,
            };
            if at > upto {
                return;
            }
            if plan.deadlines == DEADLINES_PER_STEP {
                plan.capped = true;
                return;
            }
            plan.deadlines += 1;
            // Only now is the partition named (a clone of its key).
            let part = if part_at == Some(at) {
                upcoming.first()
            } else {
                None
            };
            plan.earliest_deadline = Some(plan.earliest_deadline.map_or(at, |e| e.min(at)));
            // A deadline that fell due while the rule was not running may
            // be taken up to the restart, or the next event before it.
            let until = match self.restarted_after(at) {
                Some(up) => up.min(next_event.unwrap_or(upto)).max(at),
                None => at,
            };
            match part {
                Some((d, p)) if d == at => {
                    let base = self.parts.get(&p);
                    let change = plan.changes.entry(p.clone()).or_default();
                    let mut out = KindOut::default();
                    self.kind
                        .on_deadline(base, change, Due { at, until }, &mut out);
                    // A kind moves its deadline past what it handled.
                    let next = self.kind.deadline(base, change).map(|n| n.max(at + 1));
                    upcoming.set(&p, next);
                    self.collect(plan, &p, out, at);
                }
                _ => self.plan_tick(plan, at),
            }
            plan.time = plan.time.max(at);
        }
    }

    /// Tick `at` (the next tick of the schedule): passed over with the
    /// other missed ticks, or offered to every partition.
    fn plan_tick(&self, plan: &mut Plan<K>, at: i64) {
        let Some(pos) = plan.tick else {
            plan.next_tick = None;
            return;
        };
        let missed_while_down = self.restarted_after(at).is_some();
        let catch_up = missed_while_down
            && self
                .catch_up
                .as_ref()
                .and_then(|c| c.run.first())
                .is_some_and(|first| at >= first.at);
        if missed_while_down && !catch_up {
            // Every tick up to the first one the catch-up policy runs (or
            // up to the restart) is passed over at once; their events
            // wait for the next tick that runs.
            let c = self.catch_up.clone().unwrap_or_default();
            let last = c.last_missed.unwrap_or(at).max(at);
            plan.missed = Some(Missed {
                ticks: c.missed.max(1),
                first: c.first_missed.unwrap_or(at),
                last,
                more: c.missed_more,
                at,
            });
            let new = TickPosition {
                last,
                missed: pos.missed + c.missed.max(1),
                ..pos
            };
            plan.tick = Some(new);
            plan.next_tick = self.kind.next_tick(last);
            return;
        }
        let tick = Tick { at, catch_up };
        let mut partitions: Vec<Option<String>> = self
            .parts
            .keys()
            .chain(plan.changes.keys())
            .cloned()
            .collect();
        partitions.push(None);
        partitions.sort_unstable();
        partitions.dedup();
        let keyed = partitions.len() - 1;
        let mut skipped = 0;
        for p in &partitions {
            let base = self.parts.get(p);
            let in_flight = InFlight {
                fires: self.fires.in_flight(p),
                running: self.fires.running_in(p),
                keyed_partitions: keyed,
            };
            // Only partitions a tick does something to join the plan: an
            // idle one is not written, nor re-installed.
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
            skipped += out
                .notes
                .iter()
                .filter(|n| matches!(n, Note::TickSkipped { .. }))
                .count() as u64;
            self.collect(plan, p, out, at);
        }
        plan.tick = Some(TickPosition {
            last: at,
            skipped: pos.skipped + skipped,
            ..pos
        });
        plan.next_tick = self.kind.next_tick(at);
    }

    /// Give what a kind produced its ids and times, into the plan.
    fn collect(&self, plan: &mut Plan<K>, p: &Option<String>, out: KindOut, at: i64) {
        let part = partition_part(p);
        let id = |parts: &[String]| {
            let mut all = vec![part.as_str()];
            all.extend(parts.iter().map(String::as_str));
            fire_id(&self.spec.name, &all)
        };
        for f in out.fires {
            let fire_id = id(&f.id_parts);
            let created_at = f.at.unwrap_or(at);
            let mut seqs = f.seqs;
            if f.supersede {
                self.supersede(plan, p, &fire_id, &mut seqs, created_at);
            }
            let order = self.fires.next_order() + plan.fires.len() as u64;
            plan.fires.push(FireRecord {
                order,
                fire_id,
                rule: self.spec.name.clone(),
                partition: p.clone(),
                reason: f.reason,
                seqs,
                created_at,
                attempts: 0,
                retry_at: None,
                last_error: None,
                redriven: 0,
                kept: false,
            });
        }
        plan.notes
            .extend(out.notes.into_iter().map(|note| NoteRecord {
                partition: p.clone(),
                at: note.at().unwrap_or(at),
                note,
            }));
        for d in out.discards {
            plan.discards.push(DiscardRecord {
                fire_id: id(&d.id_parts),
                partition: p.clone(),
                seqs: d.seqs,
                at,
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
        at: i64,
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
                at,
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
                    at,
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

    /// The rule is being undeployed with `drain`: every partition's open
    /// buffer fires (reason drained) when `fire`, or is dropped and
    /// reported (`windows.discarded`), at the rule's time `at`.
    pub fn plan_drain(&self, at: i64, fire: bool) -> Plan<K> {
        let mut plan = self.plan(&Input::deadlines(i64::MIN));
        let mut partitions: Vec<Option<String>> = self.parts.keys().cloned().collect();
        partitions.sort_unstable();
        for p in partitions {
            let base = self.parts.get(&p);
            let change = plan.changes.entry(p.clone()).or_default();
            let mut out = KindOut::default();
            self.kind.drain(base, change, fire, &mut out);
            self.collect(&mut plan, &p, out, at);
        }
        plan
    }
}
