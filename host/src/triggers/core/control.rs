//! Control: starting a rule, pausing and resuming it, re-driving and
//! discarding dead letters, saving its counters. Each is a pair: the
//! writes, then (once they are committed) the change to memory.

use super::{CoreError, RuleCore, TickPosition, Writes, bad_state};
use crate::triggers::Kind;
use crate::triggers::fires::FireRecord;
use crate::triggers::state::{self as key};

/// What [`RuleCore::begin`] sets once committed.
#[derive(Debug)]
pub struct Begin {
    tick: Option<TickPosition>,
    up_since: i64,
    outage: Option<(i64, i64)>,
}

/// How a rule starts running (see [`RuleCore::begin`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// A first deploy, or a start after an outage nobody knows the
    /// beginning of: what fell due before now fell due while the rule was
    /// not running.
    Cold,
    /// A restart after an outage from `from` (the engine was known to
    /// run until then) until `until` (it ran again): what fell due before
    /// `from` or after `until` fell due while the rule ran — it is handled
    /// late, not missed — and what fell due in between was missed. An
    /// empty outage (`from >= until`) is a move: the rule changed hands
    /// while the engine ran, and only lateness follows.
    After {
        /// The outage's beginning (the last liveness mark).
        from: i64,
        /// Its end.
        until: i64,
    },
    /// Carrying on from a version that ran until just now (a hot swap).
    Carry,
}

impl<K: Kind> RuleCore<K> {
    /// The rule starts running at `now`, as `start` says: deadlines that
    /// fell due while it was not running follow its catch-up policy (see
    /// [`crate::triggers::Due`]); the others are handled as if on time. A
    /// schedule without a position starts counting ticks here.
    pub fn begin(&self, now: i64, start: Start) -> (Writes, Begin) {
        let mut ops = Vec::new();
        if !self.kind_stored {
            ops.push(self.put(key::KIND, K::NAME.into()));
        }
        let tick = (self.kind.ticks() && self.tick.is_none()).then(|| {
            let pos = TickPosition {
                last: now,
                ..TickPosition::default()
            };
            ops.push(self.put(key::TICK, pos.encode()));
            pos
        });
        let (up_since, outage) = match (self.up_since, start) {
            (Some(up), Start::Carry) => (up, self.outage),
            // Running since `up`: what fell due before `up` was missed as
            // before, and the outage (from `from`, not before `up`, until
            // `until`, not after now) was missed too. An outage over
            // before the rule came up changes nothing.
            (Some(up), Start::After { from, until }) => {
                let until = until.min(now);
                let from = from.max(up);
                (up, (from < until).then_some((from, until)))
            }
            _ => (now, None),
        };
        if self.up_since != Some(up_since) {
            ops.push(self.put(key::UP, now.to_string().into_bytes()));
        }
        (
            Writes::ops(ops),
            Begin {
                tick,
                up_since,
                outage,
            },
        )
    }

    /// Apply a committed [`Self::begin`].
    pub fn begun(&mut self, b: Begin) {
        self.kind_stored = true;
        if let Some(pos) = b.tick {
            self.set_tick(pos);
        }
        self.up_since = Some(b.up_since);
        self.outage = b.outage;
        self.plan_catch_up();
    }

    /// Pause: nothing is processed (events wait, pinned; deadlines and
    /// fires wait) until resumed.
    pub fn pause(&self) -> Writes {
        Writes::ops(vec![self.put(key::PAUSED, Vec::new())])
    }

    /// Apply a committed [`Self::pause`].
    pub fn paused_now(&mut self) {
        self.paused = true;
    }

    /// Lift a pause or a suspension at `now`; the rule carries on from
    /// its cursor, in time order. Ticks that fell due while it was held
    /// were missed (catch-up policy).
    pub fn resume(&self, now: i64) -> Writes {
        Writes::ops(vec![
            self.delete(key::SUSPENDED),
            self.delete(key::BREAKER),
            self.delete(key::PAUSED),
            self.put(key::UP, now.to_string().into_bytes()),
        ])
    }

    /// Apply a committed [`Self::resume`].
    pub fn resumed(&mut self, now: i64) {
        self.suspended = None;
        self.paused = false;
        self.fires.dead_in_a_row = 0;
        self.up_since = Some(now);
        self.outage = None;
        self.plan_catch_up();
    }

    /// Save the counters, so that the next opening of the rule's state
    /// (a swap, a restart) carries on from them.
    pub fn save_counters(&self) -> Writes {
        let json = serde_json::to_vec(&self.counters).expect("serialisable");
        Writes::ops(vec![self.put(key::COUNTERS, json)])
    }

    /// Re-drive dead letter `record` (as stored): pending again with fresh
    /// attempts (same fire id, so outputs it may have emitted stay single).
    pub fn redrive(&self, mut record: FireRecord) -> (Writes, FireRecord) {
        record.attempts = 0;
        record.retry_at = None;
        record.redriven += 1;
        let ops = vec![
            self.delete(key::dead(&record.fire_id)),
            self.put(
                key::fire_key(record.order, &record.fire_id),
                serde_json::to_vec(&record).expect("a fire serialises"),
            ),
        ];
        (Writes::ops(ops), record)
    }

    /// Apply a committed [`Self::redrive`].
    pub fn redriven(&mut self, record: FireRecord) {
        self.fires.remove_dead(&record.fire_id);
        self.fires.insert(record);
    }

    /// Drop a dead letter for good, releasing its events to retention.
    pub fn discard_dead(&self, fire_id: &str) -> Result<Writes, CoreError> {
        if !self.fires.is_dead(fire_id) {
            return Err(bad_state(&key::dead(fire_id), "no such dead letter"));
        }
        let fires = self.fires.min_first_without_dead(&[], &[], Some(fire_id));
        let pin = self.pin(self.cursor, self.part_firsts.min(), fires);
        Ok(Writes::ops(vec![
            self.delete(key::dead(fire_id)),
            self.delete(key::kept(fire_id)),
            pin,
        ]))
    }

    /// Apply a committed [`Self::discard_dead`].
    pub fn discarded(&mut self, fire_id: &str) {
        self.fires.remove_dead(fire_id);
    }
}

/// A stored dead letter (the value under `d/<fire id>`).
pub fn parse_dead(key: &str, value: &[u8]) -> Result<FireRecord, CoreError> {
    serde_json::from_slice(value).map_err(|e| bad_state(key, e))
}

/// The dead-letter list from its rows (key prefix `d/`): oldest first.
pub fn dead_letters(rows: Vec<(String, Vec<u8>)>) -> Result<Vec<FireRecord>, CoreError> {
    let mut dead = rows
        .iter()
        .map(|(k, v)| parse_dead(k, v))
        .collect::<Result<Vec<_>, _>>()?;
    dead.sort_by_key(|f| (f.created_at, f.first_seq()));
    Ok(dead)
}
