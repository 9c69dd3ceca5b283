//! The deadline index: which timer is due next, in O(log n) per operation.
//!
//! Every trigger kind registers its deadlines here (a batch window's
//! expiry, a dwell reaction, a schedule tick) under a key of its own. The
//! index is rebuilt from durable state at start-up, so deadlines that
//! passed while the engine was down come out of [`Timers::pop_due`] at
//! once.

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

    /// The deadline of `key`.
    pub fn get(&self, key: &K) -> Option<i64> {
        self.by_key.get(key).copied()
    }

    /// The earliest deadline.
    pub fn next_deadline(&self) -> Option<i64> {
        self.by_time.first().map(|(at, _)| *at)
    }

    /// Remove and return every key due at `now` (deadline ≤ now), earliest
    /// first; keys with the same deadline come in key order.
    pub fn pop_due(&mut self, now: i64) -> Vec<(i64, K)> {
        let mut due = Vec::new();
        while let Some((at, _)) = self.by_time.first() {
            if *at > now {
                break;
            }
            let (at, key) = self.by_time.pop_first().expect("checked above");
            self.by_key.remove(&key);
            due.push((at, key));
        }
        due
    }

    /// Every key due at `now` (deadline ≤ now), earliest first, without
    /// removing them.
    pub fn due(&self, now: i64) -> Vec<(i64, K)> {
        self.by_time
            .iter()
            .take_while(|(at, _)| *at <= now)
            .cloned()
            .collect()
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
    fn due_timers_come_out_in_order() {
        let mut t = Timers::new();
        t.set("b", 20);
        t.set("a", 20);
        t.set("c", 10);
        t.set("d", 30);
        assert_eq!(t.next_deadline(), Some(10));
        assert_eq!(t.due(20), vec![(10, "c"), (20, "a"), (20, "b")]);
        assert_eq!(t.len(), 4, "due() leaves the timers set");
        assert_eq!(t.pop_due(20), vec![(10, "c"), (20, "a"), (20, "b")]);
        assert_eq!(t.len(), 1);
        assert!(t.pop_due(29).is_empty());
        assert_eq!(t.next_deadline(), Some(30));
    }

    #[test]
    fn moving_and_cancelling() {
        let mut t = Timers::new();
        t.set(1u32, 100);
        t.set(1, 50);
        assert_eq!((t.get(&1), t.len()), (Some(50), 1));
        assert_eq!(t.pop_due(60), vec![(50, 1)]);
        t.set(2, 5);
        assert_eq!(t.cancel(&2), Some(5));
        assert_eq!(t.cancel(&2), None);
        assert!(t.is_empty() && t.next_deadline().is_none());
    }
}
