//! The fire pipeline every trigger kind shares: the outbox, and the
//! policy for what an attempt's outcome does — retries with backoff,
//! dead letters and the circuit breaker ([`outcome`]).
//!
//! A fire is created in the same transaction as the state change that
//! caused it (the outbox: `f/<order>.<fire id>`). Running it is three
//! moves:
//!
//! 1. the core marks it running ([`FireBook::set_running`]) and hands the
//!    driver its record;
//! 2. the driver runs the handler on the fire's own events (read by seq)
//!    — on another thread while the core carries on, up to the rule's
//!    `concurrency` at once, never two of one partition — and hands back
//!    a [`FireAttempt`];
//! 3. [`outcome`] decides, and the core commits the decision in one
//!    transaction: outputs appended under ids derived from the fire id (a
//!    re-run after a crash finds them and emits nothing twice) and the
//!    fire removed; or the failure recorded with its retry time
//!    (exponential backoff, jittered deterministically); or the fire moved
//!    to the dead-letter list (`d/<fire id>`), where it can be re-driven or
//!    discarded. Dead letters in a row trip the breaker and suspend the
//!    rule.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use rustc_hash::{FxHashMap, FxHashSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::FireReason;
use crate::manifest::RetryPolicy;

/// A fire waiting for (or going through) the fire pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FireRecord {
    /// Deterministic: derived from the rule, the partition and what the
    /// kind says makes the fire unique.
    pub fire_id: String,
    /// The rule's name (without version).
    pub rule: String,
    /// The partition; `None` is the global one.
    pub partition: Option<String>,
    /// Why the fire happened.
    pub reason: FireReason,
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
    /// Times the fire was re-driven from the dead-letter list (its engine
    /// records carry it, so each round of attempts is recorded anew).
    #[serde(default)]
    pub redriven: u32,
    /// Creation order among the rule's fires: fires made by one step (two
    /// reactions, caught-up ticks) run in the order the kind made them.
    #[serde(default)]
    pub order: u64,
    /// The batch's events are kept with the fire in the rule's state
    /// (from when it was dead-lettered): it needs nothing from the log,
    /// so it holds no retention pin however long it waits.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub kept: bool,
}

impl FireRecord {
    /// The lowest seq the fire needs from the log (none when its batch is
    /// kept with it).
    pub fn first_seq(&self) -> Option<u64> {
        if self.kept {
            return None;
        }
        self.seqs.first().copied()
    }

    fn order(&self) -> (u64, i64, String) {
        (self.order, self.created_at, self.fire_id.clone())
    }
}

/// How running a fire ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FireOutcome {
    /// The handler succeeded; its outputs are in the log at these seqs
    /// (the original seqs when a re-run found them already there).
    Completed {
        /// Seqs of the outputs.
        outputs: Vec<u64>,
        /// Outputs not appended: past the rule's hop limit (an
        /// `outputs.dropped` engine record says so).
        dropped: usize,
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
    /// The fire was cancelled while it ran (a newer tick took its events):
    /// the attempt's result was not committed.
    Cancelled,
}

/// A multiset of first seqs, so the lowest one still needed (the
/// retention pin) is found in O(log n).
#[derive(Debug, Default, Clone)]
pub struct FirstSeqs(BTreeMap<u64, usize>);

impl FirstSeqs {
    /// Count one more holder of `seq`.
    pub fn add(&mut self, seq: u64) {
        *self.0.entry(seq).or_default() += 1;
    }

    /// Count one holder of `seq` less.
    pub fn remove(&mut self, seq: u64) {
        if let std::collections::btree_map::Entry::Occupied(mut e) = self.0.entry(seq) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }

    /// The lowest seq held.
    pub fn min(&self) -> Option<u64> {
        self.0.keys().next().copied()
    }

    /// The lowest seq held once `removed` holders are gone and `added`
    /// ones are there, without changing the set.
    pub fn min_after(&self, removed: &[u64], added: &[u64]) -> Option<u64> {
        let mut gone: HashMap<u64, usize> = HashMap::new();
        for &r in removed {
            *gone.entry(r).or_default() += 1;
        }
        let kept = self
            .0
            .iter()
            .find(|(seq, n)| **n > gone.get(seq).copied().unwrap_or(0))
            .map(|(seq, _)| *seq);
        kept.into_iter().chain(added.iter().copied()).min()
    }
}

/// A rule's fires: pending (the outbox), running, dead-lettered, and the
/// breaker. In memory; the core keeps it equal to what is committed.
///
/// It holds up to millions of fires (a million memberships falling due
/// faster than their handlers run). A hash table grows by moving every
/// entry at once, so the big one holds records boxed (a few bytes moved
/// per fire: with records inline, a growth at half a million fires
/// stalled a step for over a second), and the index by partition is a
/// B-tree, which grows a node at a time.
#[derive(Debug, Default)]
pub struct FireBook {
    pending: FxHashMap<String, Box<FireRecord>>,
    /// Pending fires in creation order.
    order: BTreeSet<(u64, i64, String)>,
    /// The highest creation order of a fire seen.
    last_order: u64,
    /// Pending fires waiting for a retry, by retry time.
    retries: BTreeSet<(i64, String)>,
    firsts: FirstSeqs,
    /// Dead letters (fire id → first seq): their events stay pinned so
    /// that they can be re-driven.
    dead: BTreeMap<String, u64>,
    dead_firsts: FirstSeqs,
    running: FxHashSet<String>,
    /// Running fires per partition (cancelled ones no longer count).
    busy: FxHashMap<Option<String>, usize>,
    /// Pending fires by partition, in creation order within each.
    by_part: BTreeSet<(Option<String>, (u64, i64, String))>,
    /// Fires of one partition may run side by side.
    unordered: bool,
    /// Running fires that were cancelled (their partition is free).
    abandoned: FxHashSet<String>,
    /// Fires dead-lettered in a row (reset by a success).
    pub(crate) dead_in_a_row: u32,
}

impl FireBook {
    /// Put a fire in the outbox (committed).
    pub fn insert(&mut self, f: FireRecord) {
        self.remove(&f.fire_id);
        self.last_order = self.last_order.max(f.order);
        self.order.insert(f.order());
        if let Some(at) = f.retry_at {
            self.retries.insert((at, f.fire_id.clone()));
        }
        if let Some(s) = f.first_seq() {
            self.firsts.add(s);
        }
        self.by_part.insert((f.partition.clone(), f.order()));
        self.pending.insert(f.fire_id.clone(), Box::new(f));
    }

    /// The creation order the next new fire takes.
    pub fn next_order(&self) -> u64 {
        self.last_order + 1
    }

    /// Let fires of one partition run side by side (or not).
    pub fn set_ordered(&mut self, ordered: bool) {
        self.unordered = !ordered;
    }

    /// Fires of `partition` pending (running ones included).
    pub fn in_flight(&self, partition: &Option<String>) -> usize {
        self.of_part(partition).count()
    }

    /// The `by_part` entries of `partition`.
    fn of_part<'a>(&'a self, partition: &'a Option<String>) -> impl Iterator<Item = &'a str> + 'a {
        self.by_part
            .range((partition.clone(), (0, i64::MIN, String::new()))..)
            .take_while(move |(p, _)| p == partition)
            .map(|(_, (_, _, id))| id.as_str())
    }

    /// Fires of `partition` running now.
    pub fn running_in(&self, partition: &Option<String>) -> usize {
        self.busy.get(partition).copied().unwrap_or(0)
    }

    /// Pending fires of `partition`, in creation order.
    pub fn ids_in(&self, partition: &Option<String>) -> Vec<String> {
        self.of_part(partition).map(str::to_owned).collect()
    }

    /// Take a cancelled fire out of the outbox (committed). If it runs, its
    /// partition is free at once; its job's result is then not committed.
    pub fn cancel(&mut self, id: &str) {
        if let Some(f) = self.remove(id)
            && self.running.contains(id)
        {
            self.release(&f.partition);
            self.abandoned.insert(id.to_owned());
        }
    }

    fn release(&mut self, partition: &Option<String>) {
        if let Some(n) = self.busy.get_mut(partition) {
            *n -= 1;
            if *n == 0 {
                self.busy.remove(partition);
            }
        }
    }

    /// Take a fire out of the outbox (completed or dead-lettered).
    pub fn remove(&mut self, id: &str) -> Option<FireRecord> {
        let f = *self.pending.remove(id)?;
        self.order.remove(&f.order());
        if let Some(at) = f.retry_at {
            self.retries.remove(&(at, f.fire_id.clone()));
        }
        if let Some(s) = f.first_seq() {
            self.firsts.remove(s);
        }
        self.by_part.remove(&(f.partition.clone(), f.order()));
        Some(f)
    }

    /// Record a dead letter (committed).
    pub fn insert_dead(&mut self, id: &str, first: u64) {
        if self.dead.insert(id.to_owned(), first).is_none() {
            self.dead_firsts.add(first);
        }
    }

    /// Forget a dead letter (re-driven or discarded).
    pub fn remove_dead(&mut self, id: &str) -> Option<u64> {
        let first = self.dead.remove(id)?;
        self.dead_firsts.remove(first);
        Some(first)
    }

    /// Is `id` on the dead-letter list?
    pub fn is_dead(&self, id: &str) -> bool {
        self.dead.contains_key(id)
    }

    /// A pending fire.
    pub fn get(&self, id: &str) -> Option<&FireRecord> {
        self.pending.get(id).map(|f| &**f)
    }

    /// Pending fires (running ones included).
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// No fire is pending.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Dead letters.
    pub fn dead_len(&self) -> usize {
        self.dead.len()
    }

    /// Fires running now.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Pending fire ids, in creation order.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.order.iter().map(|(_, _, id)| id.as_str())
    }

    /// The lowest seq pending fires and dead letters hold, once `removed`
    /// (first seqs of pending fires) are gone and `added` are there.
    pub fn min_first_after(&self, removed: &[u64], added: &[u64]) -> Option<u64> {
        self.min_first_without_dead(removed, added, None)
    }

    /// [`Self::min_first_after`], with dead letter `gone` no longer held.
    pub fn min_first_without_dead(
        &self,
        removed: &[u64],
        added: &[u64],
        gone: Option<&str>,
    ) -> Option<u64> {
        let pending = self.firsts.min_after(removed, added);
        let dead_removed: Vec<u64> = gone
            .and_then(|id| self.dead.get(id).copied())
            .into_iter()
            .collect();
        [pending, self.dead_firsts.min_after(&dead_removed, &[])]
            .into_iter()
            .flatten()
            .min()
    }

    /// Fires that may start at `now`, oldest first, at most `max`: not
    /// waiting for a retry, not running, and no earlier fire of their
    /// partition still in the pipeline (running, picked, or waiting for
    /// its retry) — a partition's fires run in creation order.
    pub fn due(&self, now: i64, max: usize) -> Vec<String> {
        let mut picked = Vec::new();
        let mut busy: HashSet<&Option<String>> = self.busy.keys().collect();
        for (_, _, id) in &self.order {
            if picked.len() >= max {
                break;
            }
            let f = &self.pending[id];
            let ready = !self.running.contains(id) && f.retry_at.is_none_or(|at| at <= now);
            if ready && (self.unordered || !busy.contains(&f.partition)) {
                picked.push(id.clone());
            }
            busy.insert(&f.partition);
        }
        picked
    }

    /// When the next retry falls due.
    pub fn next_retry(&self) -> Option<i64> {
        self.retries
            .iter()
            .find(|(_, id)| !self.running.contains(id))
            .map(|(at, _)| *at)
    }

    /// Mark a fire running; it is not started again until finished.
    pub fn set_running(&mut self, id: &str) -> Option<&FireRecord> {
        let f = self.pending.get(id)?;
        self.running.insert(id.to_owned());
        *self.busy.entry(f.partition.clone()).or_default() += 1;
        Some(f)
    }

    /// The fire's run ended (whatever the outcome, committed or not).
    pub fn set_stopped(&mut self, id: &str, partition: &Option<String>) {
        // A cancelled fire released its partition when it was cancelled.
        if self.running.remove(id) && !self.abandoned.remove(id) {
            self.release(partition);
        }
    }
}

/// An event a handler emitted, in the engine's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Its kind.
    pub kind: String,
    /// A JSON object, as text.
    pub payload: String,
}

/// Why a handler call failed, in the engine's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError {
    /// What went wrong, naming the rule and the call.
    pub message: String,
    /// The guest asked not to be retried.
    pub fatal: bool,
    /// The guest backtrace, when the call trapped.
    pub backtrace: Option<String>,
    /// The last lines the guest wrote to stderr during the call.
    pub stderr: Vec<String>,
}

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// What one handler run of a fire returned.
#[derive(Debug, Clone)]
pub struct FireAttempt {
    /// The fire as it was when the run started.
    pub record: FireRecord,
    /// The attempt's number (from 1).
    pub attempt: u32,
    /// Engine time the attempt started (ms): the outputs' time, and the
    /// base of the retry time.
    pub now: i64,
    /// How many hops from a client event its inputs were (its outputs are
    /// one more).
    pub input_hops: u32,
    /// The handler's answer; `Err(NotRun)` when it did not run (the host
    /// could not read the fire's events: not the rule's failure).
    pub result: Result<Result<Vec<Output>, HandlerError>, NotRun>,
    /// The last lines the guest wrote during the call (at most 16, each
    /// named by its stream: `stdout: …`, `info: …`).
    pub logs: Vec<String>,
    /// The batch's events as the handler was given them (empty when the
    /// handler did not run): kept with the fire if it is dead-lettered.
    pub events: Vec<crate::event::Event>,
}

impl FireAttempt {
    /// An attempt of `record` that did not run, for `why`.
    pub fn not_run(record: FireRecord, now: i64, why: impl Into<String>) -> Self {
        Self {
            attempt: record.attempts + 1,
            record,
            now,
            input_hops: 0,
            result: Err(NotRun(why.into())),
            logs: Vec::new(),
            events: Vec::new(),
        }
    }
}

/// Why a handler was not called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotRun(pub String);

/// What the pipeline does with an attempt that ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The handler succeeded: its outputs go to the log at hop `hops`, or
    /// none do when past the rule's hop limit (`dropped`).
    Complete {
        /// The outputs.
        outputs: Vec<Output>,
        /// Their hop count.
        hops: u32,
        /// Past the hop limit: none is appended, a record says so.
        dropped: bool,
    },
    /// The attempt failed; the fire waits for `at` (its record updated).
    Retry {
        /// The fire with the attempt counted and the retry time set.
        record: FireRecord,
        /// When the next attempt is due (ms).
        at: i64,
        /// The error.
        error: String,
    },
    /// Out of attempts, or fatal: the fire goes to the dead-letter list.
    DeadLetter {
        /// The fire with the attempt counted.
        record: FireRecord,
        /// Fires dead-lettered in a row, this one included.
        in_a_row: u32,
        /// The breaker tripped: why the rule is suspended.
        suspend: Option<String>,
        /// The error.
        error: String,
    },
}

/// The outcome policy: what an attempt that ran leads to, given the
/// rule's retry policy and hop limit and how many fires in a row were
/// dead-lettered before it (`Err` when the handler did not run: nothing
/// to decide). A pure function: the core turns the decision into writes.
pub fn outcome(
    retry: &RetryPolicy,
    max_hops: u32,
    dead_in_a_row: u32,
    attempt: &FireAttempt,
) -> Result<Decision, NotRun> {
    let result = attempt.result.as_ref().map_err(Clone::clone)?;
    Ok(match result {
        Ok(outputs) => {
            let hops = attempt.input_hops.saturating_add(1);
            Decision::Complete {
                dropped: hops > max_hops && !outputs.is_empty(),
                outputs: outputs.clone(),
                hops,
            }
        }
        Err(e) => {
            let error = e.message.clone();
            let mut record = attempt.record.clone();
            record.attempts = attempt.attempt;
            record.last_error = Some(error.clone());
            if e.fatal || attempt.attempt >= retry.max_attempts {
                let in_a_row = dead_in_a_row + 1;
                let suspend = (in_a_row >= retry.suspend_after)
                    .then(|| format!("{in_a_row} fires in a row dead-lettered; last: {error}"));
                Decision::DeadLetter {
                    record,
                    in_a_row,
                    suspend,
                    error,
                }
            } else {
                let at =
                    attempt
                        .now
                        .saturating_add(backoff_ms(retry, attempt.attempt, &record.fire_id));
                record.retry_at = Some(at);
                Decision::Retry { record, at, error }
            }
        }
    })
}

/// Exponential backoff with "equal jitter": half the delay fixed, half
/// spread by a hash of the fire and attempt — so retries of many fires do
/// not stampede, and a replay computes the same times.
pub fn backoff_ms(retry: &RetryPolicy, attempt: u32, fire_id: &str) -> i64 {
    let base = retry.backoff.as_millis() as f64;
    let cap = retry.max_backoff.as_millis() as f64;
    let delay = (base * 2f64.powi(attempt.saturating_sub(1).min(62) as i32)).min(cap);
    let digest = Sha256::digest(format!("{fire_id}/{attempt}").as_bytes());
    let unit =
        u64::from_le_bytes(digest[..8].try_into().expect("8 bytes")) as f64 / u64::MAX as f64;
    (delay / 2.0 + unit * delay / 2.0) as i64
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

    fn attempt(n: u32, hops: u32, result: Result<Vec<Output>, HandlerError>) -> FireAttempt {
        FireAttempt {
            record: fire("f", "p", 0, 1),
            attempt: n,
            now: 1_000,
            input_hops: hops,
            result: Ok(result),
            logs: Vec::new(),
            events: Vec::new(),
        }
    }

    fn error(fatal: bool) -> HandlerError {
        HandlerError {
            message: "no".into(),
            fatal,
            backtrace: None,
            stderr: Vec::new(),
        }
    }

    #[test]
    fn the_outcome_policy_retries_dead_letters_trips_the_breaker_and_stops_loops() {
        let retry = RetryPolicy {
            max_attempts: 3,
            suspend_after: 2,
            ..RetryPolicy::default()
        };
        let out = vec![Output {
            kind: "k".into(),
            payload: "{}".into(),
        }];
        match outcome(&retry, 16, 0, &attempt(1, 0, Ok(out.clone()))).unwrap() {
            Decision::Complete { hops, dropped, .. } => assert_eq!((hops, dropped), (1, false)),
            other => panic!("{other:?}"),
        }
        match outcome(&retry, 16, 0, &attempt(1, 16, Ok(out))).unwrap() {
            Decision::Complete { hops, dropped, .. } => assert_eq!((hops, dropped), (17, true)),
            other => panic!("{other:?}"),
        }
        match outcome(&retry, 16, 0, &attempt(2, 0, Err(error(false)))).unwrap() {
            Decision::Retry { record, at, .. } => {
                assert_eq!((record.attempts, record.retry_at), (2, Some(at)));
                assert!(at > 1_000);
            }
            other => panic!("{other:?}"),
        }
        match outcome(&retry, 16, 0, &attempt(3, 0, Err(error(false)))).unwrap() {
            Decision::DeadLetter {
                in_a_row, suspend, ..
            } => {
                assert_eq!((in_a_row, suspend), (1, None));
            }
            other => panic!("{other:?}"),
        }
        match outcome(&retry, 16, 1, &attempt(1, 0, Err(error(true)))).unwrap() {
            Decision::DeadLetter {
                in_a_row, suspend, ..
            } => {
                assert_eq!(in_a_row, 2, "fatal: no retry");
                assert!(suspend.unwrap().starts_with("2 fires in a row"));
            }
            other => panic!("{other:?}"),
        }
        let not_run = FireAttempt::not_run(fire("f", "p", 0, 1), 0, "gone");
        assert_eq!(outcome(&retry, 16, 0, &not_run), Err(NotRun("gone".into())));
    }

    fn fire(id: &str, partition: &str, created_at: i64, first: u64) -> FireRecord {
        FireRecord {
            fire_id: id.into(),
            rule: "r".into(),
            partition: Some(partition.into()),
            reason: FireReason::CountReached,
            seqs: vec![first],
            created_at,
            attempts: 0,
            retry_at: None,
            last_error: None,
            redriven: 0,
            kept: false,
            order: created_at as u64,
        }
    }

    #[test]
    fn due_fires_keep_partition_order_and_respect_the_limit() {
        let mut book = FireBook::default();
        book.insert(fire("a1", "a", 1, 1));
        book.insert(fire("b1", "b", 2, 2));
        book.insert(fire("a2", "a", 3, 3));
        book.insert(fire("c1", "c", 4, 4));
        assert_eq!(book.due(10, 10), vec!["a1", "b1", "c1"], "a2 waits for a1");
        assert_eq!(book.due(10, 2), vec!["a1", "b1"]);
        book.set_running("a1");
        assert_eq!(book.due(10, 10), vec!["b1", "c1"], "a is busy");
        book.set_stopped("a1", &Some("a".into()));
        book.remove("a1");
        assert_eq!(book.due(10, 10), vec!["b1", "a2", "c1"]);
        assert_eq!(book.min_first_after(&[], &[]), Some(2));
        assert_eq!(book.min_first_after(&[2, 3], &[]), Some(4));
        book.insert_dead("x", 1);
        assert_eq!(book.min_first_after(&[2], &[]), Some(1));
    }

    #[test]
    fn first_seqs_is_a_multiset() {
        let mut s = FirstSeqs::default();
        s.add(5);
        s.add(5);
        s.add(9);
        assert_eq!(s.min_after(&[5], &[]), Some(5));
        assert_eq!(s.min_after(&[5, 5], &[]), Some(9));
        assert_eq!(s.min_after(&[5, 5, 9], &[7]), Some(7));
        s.remove(5);
        s.remove(5);
        assert_eq!(s.min(), Some(9));
    }
}
