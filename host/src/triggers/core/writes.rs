//! What makes a plan durable, and applying it once committed.
//!
//! A plan writes only what changed: the rows each kind says a touched
//! partition needs, one member-log row for every event the plan buffered
//! (whatever the number of partitions), the new fires, the cursor, the
//! schedule's position, the engine records of what the plan did, and the
//! retention pin.

use super::{Plan, RuleCore, Step};
use crate::event::NewEvent;
use crate::log::StateOp;
use crate::triggers::fires::FireRecord;
use crate::triggers::state::{self as key};
use crate::triggers::{Kind, Note, Row};

/// Writes for one transaction: engine records (and outputs) for the
/// tenant's log, and state ops. The driver commits them in one go.
#[derive(Debug, Default)]
pub struct Writes {
    /// Events to append.
    pub records: Vec<NewEvent>,
    /// State changes.
    pub ops: Vec<StateOp>,
}

impl Writes {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.ops.is_empty()
    }

    /// State changes only.
    pub fn ops(ops: Vec<StateOp>) -> Self {
        Self {
            records: Vec::new(),
            ops,
        }
    }
}

impl<K: Kind> RuleCore<K> {
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

    /// The writes that make `plan` durable (empty when it changes
    /// nothing durable).
    pub fn writes(&self, plan: &mut Plan<K>) -> Writes {
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
        // write this plan's additions as one row.
        let min_open = self.min_open_after(plan);
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
        let records = self.plan_records(plan);
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
        plan.floor = floor;
        if ops.is_empty() && records.is_empty() {
            return Writes::default();
        }
        let new_fires: Vec<u64> = plan
            .fires
            .iter()
            .filter_map(FireRecord::first_seq)
            .collect();
        let gone: Vec<u64> = plan.cancelled.iter().filter_map(|c| c.first_seq).collect();
        let fires = self.fires.min_first_after(&gone, &new_fires);
        ops.push(self.pin(plan.cursor, min_open, fires));
        Writes { records, ops }
    }

    /// Apply a plan whose writes are committed (or that had none).
    pub fn apply(&mut self, plan: Plan<K>) -> Step {
        self.members_floor = self.members_floor.max(plan.floor);
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
        if let Some(pos) = plan.tick
            && self.tick != Some(pos)
        {
            self.set_tick(pos);
        }
        self.cursor = plan.cursor;
        self.time = self.time.max(plan.time);
        self.counters.matched += plan.kept as u64;
        self.counters.fires_created += plan.fires.len() as u64;
        self.counters.fires_cancelled += plan.cancelled.len() as u64;
        self.counters.forced_leaves += plan
            .notes
            .iter()
            .filter(|n| matches!(n.note, Note::Left { .. }))
            .count() as u64;
        Step {
            read: plan.read,
            kept: plan.kept,
            fires: plan.fires,
            discards: plan.discards,
            notes: plan.notes,
            missed: plan.missed,
            cancelled: plan.cancelled,
            cursor: self.cursor,
            earliest_deadline: plan.earliest_deadline,
            capped: plan.capped,
        }
    }
}
