//! The deadline index: which partition's deadline is due next, in
//! O(log n) per operation.
//!
//! The core registers here what each partition's kind says its deadline
//! is (a batch window's expiry, a dwell reaction; schedule ticks are
//! rule-wide and kept by the core itself). The index is rebuilt from
//! durable state at start-up, so deadlines that passed while the engine
//! was down are the first a plan meets.

use std::collections::BTreeSet;

use rustc_hash::FxHashMap as HashMap;
use std::hash::Hash;

/// Deadlines (milliseconds on the engine clock) by key; one per key.
#[derive(Debug, Clone)]
pub struct Timers<K> {
    by_time: BTreeSet<(i64, K)>,
    by_key: HashMap<K, i64>,
}

impl<K: Ord + Hash + Clone> Default for Timers<K> {
    fn default() -> Self {
        Self {
            by_time: BTreeSet::new(),
            by_key: HashMap::default(),
        }
    }
}

impl<K: Ord + Hash + Clone> Timers<K> {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set (or move) the deadline of `key`.
    pub fn set(&mut self, key: K, at: i64) {
        if let Some(old) = self.by_key.insert(key.clone(), at) {
            self.by_time.remove(&(old, key.clone()));
        }
        self.by_time.insert((at, key));
    }

    /// Remove the deadline of `key`; returns it if there was one.
    pub fn cancel(&mut self, key: &K) -> Option<i64> {
        let at = self.by_key.remove(key)?;
        self.by_time.remove(&(at, key.clone()));
        Some(at)
    }

    /// The deadline of `key`, if it has one.
    pub fn deadline_of(&self, key: &K) -> Option<i64> {
        self.by_key.get(key).copied()
    }

    /// The earliest deadline.
    pub fn next_deadline(&self) -> Option<i64> {
        self.by_time.first().map(|(at, _)| *at)
    }

    /// The first deadline after `from` (from the earliest when `None`),
    /// in (time, key) order.
    pub fn after(&self, from: Option<&(i64, K)>) -> Option<&(i64, K)> {
        use std::ops::Bound::{Excluded, Unbounded};
        match from {
            None => self.by_time.first(),
            Some(f) => self.by_time.range((Excluded(f), Unbounded)).next(),
        }
    }

    /// How many deadlines are set.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// True when no deadline is set.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_come_in_time_then_key_order() {
        let mut t = Timers::new();
        t.set("b", 20);
        t.set("a", 20);
        t.set("c", 10);
        t.set("d", 30);
        assert_eq!(t.next_deadline(), Some(10));
        let mut seen = Vec::new();
        let mut at = None;
        while let Some(next) = t.after(at.as_ref()) {
            seen.push(*next);
            at = Some(*next);
        }
        assert_eq!(seen, vec![(10, "c"), (20, "a"), (20, "b"), (30, "d")]);
    }

    #[test]
    fn moving_and_cancelling() {
        let mut t = Timers::new();
        t.set(1u32, 100);
        t.set(1, 50);
        assert_eq!((t.next_deadline(), t.len()), (Some(50), 1));
        t.set(2, 5);
        assert_eq!(t.cancel(&2), Some(5));
        assert_eq!(t.cancel(&2), None);
        assert_eq!(t.cancel(&1), Some(50));
        assert!(t.is_empty() && t.next_deadline().is_none());
    }
}
