//! A log kept in memory, for offline runs (`sluice test`, replays): the
//! same contract as the SQLite store — gap-free seqs, the dedupe window,
//! state ops applied with the events in one step, pins and retention —
//! without a file, a page cache or a B-tree insert per event. Nothing
//! survives the process, which is what an offline run wants; a server
//! never uses it.
//!
//! Events sit in seq order in a deque (seqs are gap-free and retention
//! cuts a prefix, so a seq is an index); the dedupe window is a map from
//! (tenant, id) to where the id was last stored, and the ids of pruned
//! events still inside the window are kept in seq order as tombstones,
//! dropped as the window passes them. A run that prunes below its pins
//! holds what its rules still need and no more.
//!
//! Only ids clients gave are remembered for dedupe: a generated id is a
//! ULID made during the run, which no client can have sent before it
//! (the SQLite store would also match a client's id against one, at the
//! price of an index entry per event).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use super::store::{
    Appender, Committed, IdGenerator, LogBackend, LogWriter, PruneReport, RetentionPolicy, Stamp,
    StateOp, StoreError, prune_cut,
};
use super::{EventQuery, NewEvent};
use crate::event::Event;

/// The in-memory store. Clones share the same log.
#[derive(Debug, Clone, Default)]
pub struct MemoryBackend {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    mem: RwLock<Mem>,
    /// Whether a writer is open (a store has one at a time).
    writer: Mutex<bool>,
    rows_read: AtomicU64,
}

#[derive(Debug, Default)]
struct Mem {
    /// Events in seq order: `events[i]` has seq `first + i`.
    events: VecDeque<Arc<Event>>,
    /// The seq of `events[0]` (one past the last when empty).
    first: u64,
    last_seq: u64,
    last_ingested: i64,
    /// Per tenant, per id: the seq and stamp it was last stored at.
    ids: HashMap<String, HashMap<String, (u64, i64)>>,
    /// Pruned events' ids still inside the dedupe window, in seq order:
    /// (seq, stamp, tenant, id).
    tombstones: VecDeque<(u64, i64, String, String)>,
    state: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    pins: BTreeMap<String, u64>,
    /// Bytes held by events and state, roughly.
    bytes: u64,
}

/// Bytes an event takes in memory, roughly.
fn size_of(e: &Event) -> u64 {
    (e.id.len() + e.tenant.len() + e.source.len() + e.kind.len() + e.payload.len() + 160) as u64
}

impl MemoryBackend {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    fn read_mem(&self) -> std::sync::RwLockReadGuard<'_, Mem> {
        self.inner.mem.read().unwrap_or_else(|e| e.into_inner())
    }

    fn count_rows(&self, n: usize) {
        self.inner.rows_read.fetch_add(n as u64, Ordering::Relaxed);
    }
}

impl Mem {
    fn get(&self, seq: u64) -> Option<&Arc<Event>> {
        let i = seq.checked_sub(self.first)?;
        self.events.get(usize::try_from(i).ok()?)
    }

    /// Where `id` of `tenant` was last stored (kept or tombstoned).
    fn seen(&self, tenant: &str, id: &str) -> Option<(u64, i64)> {
        self.ids.get(tenant)?.get(id).copied()
    }

    /// Forget `id` of `tenant` if it was last stored at `seq`.
    fn forget(&mut self, tenant: &str, id: &str, seq: u64) {
        if let Some(ids) = self.ids.get_mut(tenant) {
            if ids.get(id).is_some_and(|&(s, _)| s == seq) {
                ids.remove(id);
            }
            if ids.is_empty() {
                self.ids.remove(tenant);
            }
        }
    }

    fn apply(&mut self, op: StateOp) {
        match op {
            StateOp::Put { ns, key, value } => {
                self.bytes += (key.len() + value.len()) as u64;
                if let Some(old) = self.state.entry(ns).or_default().insert(key, value) {
                    self.bytes -= old.len() as u64;
                }
            }
            StateOp::Delete { ns, key } => {
                if let Some(keys) = self.state.get_mut(&ns)
                    && let Some(old) = keys.remove(&key)
                {
                    self.bytes -= (key.len() + old.len()) as u64;
                }
            }
            StateOp::DeletePrefix { ns, prefix } => {
                if let Some(keys) = self.state.get_mut(&ns) {
                    let gone: Vec<String> = keys
                        .range::<str, _>((
                            std::ops::Bound::Included(prefix.as_str()),
                            std::ops::Bound::Unbounded,
                        ))
                        .take_while(|(k, _)| k.starts_with(&prefix))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in gone {
                        if let Some(old) = keys.remove(&k) {
                            self.bytes -= (k.len() + old.len()) as u64;
                        }
                    }
                }
            }
            StateOp::DeleteRange { ns, from, to } => {
                if from < to
                    && let Some(keys) = self.state.get_mut(&ns)
                {
                    let gone: Vec<String> = keys
                        .range::<str, _>((
                            std::ops::Bound::Included(from.as_str()),
                            std::ops::Bound::Excluded(to.as_str()),
                        ))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in gone {
                        if let Some(old) = keys.remove(&k) {
                            self.bytes -= (k.len() + old.len()) as u64;
                        }
                    }
                }
            }
            StateOp::Clear { ns } => {
                if let Some(keys) = self.state.remove(&ns) {
                    self.bytes -= keys
                        .iter()
                        .map(|(k, v)| (k.len() + v.len()) as u64)
                        .sum::<u64>();
                }
            }
            StateOp::Pin {
                owner,
                min_seq: Some(seq),
            } => {
                self.pins.insert(owner, seq);
            }
            StateOp::Pin {
                owner,
                min_seq: None,
            } => {
                self.pins.remove(&owner);
            }
            // One process owns this log: nobody else can hold a lease.
            StateOp::Fence { .. } => {}
        }
    }
}

impl LogBackend for MemoryBackend {
    /// The writer; refused while another is open.
    fn open_writer(&self) -> Result<Box<dyn LogWriter>, StoreError> {
        let mut open = self.inner.writer.lock().unwrap_or_else(|e| e.into_inner());
        if *open {
            return Err(StoreError::new(
                "open writer",
                "this in-memory log already has a writer",
            ));
        }
        *open = true;
        Ok(Box::new(MemoryWriter {
            store: self.clone(),
            ids: IdGenerator::default(),
        }))
    }

    fn read(&self, q: &EventQuery) -> Result<Vec<Event>, StoreError> {
        let mem = self.read_mem();
        let lo = q
            .after_seq
            .map_or(0, |s| s.saturating_add(1))
            .max(mem.first);
        let held = mem.first + mem.events.len() as u64;
        let hi = q.until_seq.unwrap_or(u64::MAX).min(mem.last_seq);
        if mem.events.is_empty() || lo > hi || lo >= held || q.limit == 0 {
            return Ok(Vec::new());
        }
        let (a, b) = (
            (lo - mem.first) as usize,
            (hi.min(held - 1) - mem.first) as usize,
        );
        let upper = q.id_prefix.as_deref().map(super::store::prefix_upper);
        let matches = |e: &&Arc<Event>| {
            q.tenant.as_ref().is_none_or(|t| e.tenant == *t)
                && q.source.as_ref().is_none_or(|s| e.source == *s)
                && q.kind.as_ref().is_none_or(|k| e.kind == *k)
                && q.since.is_none_or(|t| e.time >= t)
                && q.until.is_none_or(|t| e.time < t)
                && q.id_prefix.as_ref().is_none_or(|p| {
                    e.id.as_str() >= p.as_str()
                        && upper
                            .as_ref()
                            .and_then(|u| u.as_deref())
                            .is_none_or(|u| e.id.as_str() < u)
                })
        };
        let range = mem.events.range(a..=b);
        let out: Vec<Event> = if q.newest_first {
            range
                .rev()
                .filter(matches)
                .take(q.limit)
                .map(|e| Event::clone(e))
                .collect()
        } else {
            range
                .filter(matches)
                .take(q.limit)
                .map(|e| Event::clone(e))
                .collect()
        };
        self.count_rows(out.len());
        Ok(out)
    }

    fn last_seq(&self) -> Result<u64, StoreError> {
        Ok(self.read_mem().last_seq)
    }

    fn low_water(&self) -> Result<Option<u64>, StoreError> {
        Ok(self.read_mem().pins.values().min().copied())
    }

    fn state_get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .read_mem()
            .state
            .get(ns)
            .and_then(|keys| keys.get(key))
            .cloned())
    }

    fn state_scan(&self, ns: &str, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mem = self.read_mem();
        let Some(keys) = mem.state.get(ns) else {
            return Ok(Vec::new());
        };
        Ok(keys
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn read_seqs(&self, tenant: &str, seqs: &[u64]) -> Result<Vec<Event>, StoreError> {
        let mut sorted = seqs.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mem = self.read_mem();
        let out: Vec<Event> = sorted
            .into_iter()
            .filter_map(|s| mem.get(s))
            .filter(|e| e.tenant == tenant)
            .map(|e| Event::clone(e))
            .collect();
        self.count_rows(out.len());
        Ok(out)
    }

    fn size_bytes(&self) -> Result<u64, StoreError> {
        Ok(self.read_mem().bytes)
    }

    fn rows_read(&self) -> u64 {
        self.inner.rows_read.load(Ordering::Relaxed)
    }
}

/// The writer of a [`MemoryBackend`].
#[derive(Debug)]
struct MemoryWriter {
    store: MemoryBackend,
    ids: IdGenerator,
}

impl MemoryWriter {
    fn mem(&self) -> std::sync::RwLockWriteGuard<'_, Mem> {
        self.store
            .inner
            .mem
            .write()
            .unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for MemoryWriter {
    fn drop(&mut self) {
        *self
            .store
            .inner
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = false;
    }
}

impl LogWriter for MemoryWriter {
    fn last_seq(&self) -> u64 {
        self.store.read_mem().last_seq
    }

    fn last_ingested(&self) -> i64 {
        self.store.read_mem().last_ingested
    }

    /// One step under the write lock: readers see all of it or none.
    fn write(
        &mut self,
        groups: Vec<Vec<NewEvent>>,
        ops: Vec<StateOp>,
        now: Stamp,
        dedupe_window: Duration,
    ) -> Result<Committed, StoreError> {
        let mut mem = self
            .store
            .inner
            .mem
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let mut appender = Appender::new(now, mem.last_seq, mem.last_ingested, dedupe_window);
        let groups = appender.pending(groups, &mut self.ids);
        for group in groups {
            for p in group {
                let seen = if p.given {
                    mem.seen(&p.event.tenant, &p.id)
                } else {
                    None
                };
                let given = p.given;
                let Some(event) = appender.take(p, seen) else {
                    continue;
                };
                if given {
                    let (tenant, id) = (event.tenant.clone(), event.id.clone());
                    let at = (event.seq, event.ingested);
                    mem.ids.entry(tenant).or_default().insert(id, at);
                }
            }
            appender.end_group();
        }
        for op in ops {
            mem.apply(op);
        }
        (mem.last_seq, mem.last_ingested) = appender.head();
        let committed = appender.finish();
        if mem.events.is_empty() {
            mem.first = committed.stored.first().map_or(mem.last_seq + 1, |e| e.seq);
        }
        for e in &committed.stored {
            mem.bytes += size_of(e);
            mem.events.push_back(Arc::clone(e));
        }
        Ok(committed)
    }

    fn prune(
        &mut self,
        policy: &RetentionPolicy,
        now: i64,
        dedupe_window: Duration,
        max_rows: u64,
    ) -> Result<PruneReport, StoreError> {
        let mut mem = self.mem();
        let window_start = now.saturating_sub(dedupe_window.as_millis() as i64);
        // Tombstones are in seq order, so in stamp order: the window
        // passes them from the front.
        while let Some((seq, at, _, _)) = mem.tombstones.front()
            && *at < window_start
        {
            let seq = *seq;
            let (_, _, tenant, id) = mem.tombstones.pop_front().expect("front exists");
            mem.forget(&tenant, &id, seq);
        }
        let Some(first) = mem.events.front().map(|e| e.seq) else {
            return Ok(PruneReport::default());
        };
        let last = mem.last_seq;
        let low = mem.pins.values().min().map(|&s| s as i64);
        let by_age = policy.max_age.and_then(|age| {
            let cutoff = now.saturating_sub(age.as_millis() as i64);
            mem.events
                .iter()
                .take(max_rows.min(usize::MAX as u64) as usize)
                .take_while(|e| e.ingested < cutoff)
                .last()
                .map(|e| e.seq as i64)
        });
        let cut = prune_cut(policy, first as i64, last as i64, by_age, low, max_rows);
        let mut deleted = 0u64;
        while let Some(e) = mem.events.front()
            && (e.seq as i64) <= cut.cut
        {
            let e = mem.events.pop_front().expect("front exists");
            mem.first = e.seq + 1;
            mem.bytes -= size_of(&e);
            deleted += 1;
            if e.ingested >= window_start {
                mem.tombstones
                    .push_back((e.seq, e.ingested, e.tenant.clone(), e.id.clone()));
            } else {
                mem.forget(&e.tenant, &e.id, e.seq);
            }
        }
        Ok(cut.report(first as i64, last as i64, deleted))
    }
}
