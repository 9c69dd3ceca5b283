//! The storage boundary of the log.
//!
//! [`LogBackend`] is all the engine asks of a store: one [`LogWriter`]
//! (owned by the writer thread, the only code that writes) and reads that
//! see committed data only. SQLite ([`super::sqlite`]) is the embedded
//! default; a server-grade store implements the same two traits, and no
//! code above them changes.

use std::sync::Arc;
use std::time::Duration;

use super::{EventQuery, NewEvent};
use crate::event::Event;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {message}")]
pub struct StoreError {
    /// What the store was doing.
    pub context: String,
    /// What went wrong.
    pub message: String,
}

/// The context of a [`StoreError`] that refused a write made under a
/// lease this node no longer holds.
pub const FENCED: &str = "fenced";

impl StoreError {
    /// Whether a write was refused because its lease is no longer this
    /// node's (nothing of it was committed).
    pub fn is_fenced(&self) -> bool {
        self.context == FENCED
    }

    /// A store error with context.
    pub fn new(context: impl Into<String>, err: impl std::fmt::Display) -> Self {
        Self {
            context: context.into(),
            message: err.to_string(),
        }
    }
}

/// What happened to one appended event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "outcome", content = "seq", rename_all = "snake_case")]
pub enum AppendOutcome {
    /// Stored at this seq.
    Accepted(u64),
    /// Same (tenant, id) already stored within the dedupe window, at this
    /// seq; nothing new was written.
    Duplicate(u64),
}

impl AppendOutcome {
    /// The seq the event has in the log (new or original).
    pub fn seq(self) -> u64 {
        match self {
            AppendOutcome::Accepted(s) | AppendOutcome::Duplicate(s) => s,
        }
    }
}

/// A change to durable engine state, applied atomically with the other
/// changes (and events) of the same transaction. Trigger state lives in
/// namespaces (one per rule, say) of opaque values under string keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateOp {
    /// Set `key` in `ns` to `value`.
    Put {
        /// Namespace.
        ns: String,
        /// Key within the namespace.
        key: String,
        /// The value (the owner's encoding).
        value: Vec<u8>,
    },
    /// Remove `key` from `ns` (a no-op when absent).
    Delete {
        /// Namespace.
        ns: String,
        /// Key within the namespace.
        key: String,
    },
    /// Remove every key of `ns` that starts with `prefix`.
    DeletePrefix {
        /// Namespace.
        ns: String,
        /// Key prefix.
        prefix: String,
    },
    /// Remove the keys of `ns` in `[from, to)`.
    DeleteRange {
        /// Namespace.
        ns: String,
        /// First key removed.
        from: String,
        /// First key kept.
        to: String,
    },
    /// Remove every key of `ns`.
    Clear {
        /// Namespace.
        ns: String,
    },
    /// Commit the transaction only while `node` holds the lease of
    /// `tenant`/`rule` at `epoch` (a store shared by several nodes checks
    /// this first and refuses the whole transaction otherwise; a store one
    /// process owns has nothing to check).
    Fence {
        /// The rule's tenant.
        tenant: String,
        /// The rule.
        rule: String,
        /// This node.
        node: String,
        /// The lease's epoch when this node took it.
        epoch: u64,
    },
    /// Keep events from `min_seq` on against retention for `owner`;
    /// `None` releases the owner's pin.
    Pin {
        /// Who holds the pin, e.g. `rule:pr-digest/cursor`.
        owner: String,
        /// The lowest seq the owner still needs.
        min_seq: Option<u64>,
    },
}

/// The result of one writer transaction.
#[derive(Debug, Default)]
pub struct Committed {
    /// Per group, per event: what happened.
    pub outcomes: Vec<Vec<AppendOutcome>>,
    /// Per group, per event: the stored id (the client's, or the one
    /// generated for an event without; a duplicate's is the original's).
    pub ids: Vec<Vec<String>>,
    /// The events stored, in seq order (for the feed).
    pub stored: Vec<Arc<Event>>,
}

/// How old events go away. Events still referenced by a pin are kept
/// whatever the policy says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Prune events ingested longer ago than this.
    pub max_age: Option<Duration>,
    /// Keep at most this many of the newest events.
    pub max_events: Option<u64>,
}

/// What one pruning pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Events deleted.
    pub deleted: u64,
    /// The lowest seq still in the log afterwards (`None` when empty).
    pub first_seq: Option<u64>,
    /// The policy wanted to delete more, but a pin holds those events.
    pub held_by_pin: bool,
    /// More is due than one pass deletes; run again.
    pub more: bool,
}

/// How a transaction stamps the events it appends with their ingest
/// time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The engine clock at the commit (ms). A store never stamps lower
    /// than a stamp it gave before: stamps do not decrease along seq.
    pub at: i64,
    /// A log on a virtual clock (`sluice test`, replays): an event whose
    /// own time is later than `at` is stamped with it, so that events
    /// taken together in one commit keep the times they stand for.
    pub follow_event_time: bool,
}

/// The single writer of a log. Every method is one transaction.
pub trait LogWriter: Send {
    /// The highest seq committed (0 for an empty log).
    fn last_seq(&self) -> u64;

    /// The highest ingest stamp committed (0 for an empty log): every
    /// later event is stamped at least this.
    fn last_ingested(&self) -> i64;

    /// Append groups of events (one group per ingest request) and apply
    /// `ops`, all in one transaction: either everything is written or
    /// nothing is. Seqs continue gap-free from [`Self::last_seq`]. An event
    /// with an id already stored for its tenant, ingested at or after
    /// `now - dedupe_window`, is a duplicate. An event without an id gets a
    /// generated, time-sortable one; an event without a time gets its
    /// ingest stamp. (See [`Appender`], which does this bookkeeping for a
    /// store.)
    fn write(
        &mut self,
        groups: Vec<Vec<NewEvent>>,
        ops: Vec<StateOp>,
        now: Stamp,
        dedupe_window: Duration,
    ) -> Result<Committed, StoreError>;

    /// [`Self::write`] of ingest groups alone.
    fn append(
        &mut self,
        groups: Vec<Vec<NewEvent>>,
        now: Stamp,
        dedupe_window: Duration,
    ) -> Result<Committed, StoreError> {
        self.write(groups, Vec::new(), now, dedupe_window)
    }

    /// [`Self::write`] of one group of events with state ops.
    fn transact(
        &mut self,
        events: Vec<NewEvent>,
        ops: Vec<StateOp>,
        now: Stamp,
        dedupe_window: Duration,
    ) -> Result<Committed, StoreError> {
        self.write(vec![events], ops, now, dedupe_window)
    }

    /// Delete what `policy` allows (at most `max_rows` events per pass).
    /// Events deleted while still inside the dedupe window leave a
    /// tombstone, so a late retry is still recognised as a duplicate.
    fn prune(
        &mut self,
        policy: &RetentionPolicy,
        now: i64,
        dedupe_window: Duration,
        max_rows: u64,
    ) -> Result<PruneReport, StoreError>;
}

/// A store for the log.
pub trait LogBackend: Send + Sync + 'static {
    /// Open the writer. The log opens exactly one, on its writer thread.
    /// A store has one writer at a time, across processes: while another
    /// is open this fails at once with an error naming the store and the
    /// holder; dropping the writer lets the next one open.
    fn open_writer(&self) -> Result<Box<dyn LogWriter>, StoreError>;

    /// Committed events matching `query`, in seq order.
    fn read(&self, query: &EventQuery) -> Result<Vec<Event>, StoreError>;

    /// The highest committed seq.
    fn last_seq(&self) -> Result<u64, StoreError>;

    /// The lowest pinned seq, if any pin stands.
    fn low_water(&self) -> Result<Option<u64>, StoreError>;

    /// The committed value of `key` in `ns`.
    fn state_get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Every committed key and value of `ns` whose key starts with
    /// `prefix` (all of them for `""`), in key order. Costs what it
    /// returns, not the size of the namespace.
    fn state_scan(&self, ns: &str, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// The events of `tenant` with exactly these seqs, in seq order (seqs
    /// that are missing or another tenant's are left out). Costs
    /// O(k log n) for k seqs, whatever lies between them.
    fn read_seqs(&self, tenant: &str, seqs: &[u64]) -> Result<Vec<Event>, StoreError>;

    /// Whether several processes write this store at once (each with a
    /// writer of its own): then commits made elsewhere are followed by
    /// polling [`Self::head`], and [`Self::raise_floor`] seals the log.
    fn shared(&self) -> bool {
        false
    }

    /// The committed head of the log: its last seq and the lowest stamp a
    /// later commit may give.
    fn head(&self) -> Result<(u64, i64), StoreError> {
        Ok((self.last_seq()?, 0))
    }

    /// Make every later commit, by any process, stamp at least `at`;
    /// returns the head as of then (every event stamped lower is at or
    /// below its seq). Only a [shared](Self::shared) store needs it.
    fn raise_floor(&self, at: i64) -> Result<(u64, i64), StoreError> {
        let _ = at;
        Err(StoreError::new(
            "raise the floor",
            "this store has one writer; its writer keeps the floor",
        ))
    }

    /// The bytes the store takes on disk (tables, indexes, journal).
    fn size_bytes(&self) -> Result<u64, StoreError>;

    /// Event rows read so far, when the store counts them (a cost meter).
    fn rows_read(&self) -> u64 {
        0
    }
}

/// An event of an append, its id settled: the client's (`given`), or
/// one generated.
#[derive(Debug)]
pub struct Pending {
    /// The event.
    pub event: NewEvent,
    /// Its id.
    pub id: String,
    /// Whether the client gave the id (only those are deduplicated).
    pub given: bool,
}

/// The bookkeeping of one append transaction that every store shares:
/// ingest stamps (never decreasing along seq; on a virtual clock an
/// event's own later time), seqs, the dedupe window, and what was
/// committed. The store looks duplicates up its own way and inserts the
/// events [`Self::take`] hands it.
#[derive(Debug)]
pub struct Appender {
    follow: bool,
    stamp: i64,
    window_start: i64,
    next: u64,
    outcomes: Vec<AppendOutcome>,
    ids: Vec<String>,
    committed: Committed,
}

impl Appender {
    /// An append after `last_seq`, whose stamps are at least
    /// `last_ingested`.
    pub fn new(now: Stamp, last_seq: u64, last_ingested: i64, dedupe_window: Duration) -> Self {
        let at = now.at.max(last_ingested);
        Self {
            follow: now.follow_event_time,
            stamp: at,
            window_start: at.saturating_sub(dedupe_window.as_millis() as i64),
            next: last_seq + 1,
            outcomes: Vec::new(),
            ids: Vec::new(),
            committed: Committed::default(),
        }
    }

    /// The groups' events with their ids: the client's, or generated from
    /// `ids` at this append's stamp.
    pub fn pending(&self, groups: Vec<Vec<NewEvent>>, ids: &mut IdGenerator) -> Vec<Vec<Pending>> {
        groups
            .into_iter()
            .map(|group| {
                group
                    .into_iter()
                    .map(|mut event| match event.id.take() {
                        Some(id) => Pending {
                            event,
                            id,
                            given: true,
                        },
                        None => Pending {
                            id: ids.generate(self.stamp),
                            event,
                            given: false,
                        },
                    })
                    .collect()
            })
            .collect()
    }

    /// Take one event, `seen` being the (seq, stamp) its id was last
    /// stored at: a duplicate within the window is reported as such
    /// (`None`); otherwise the stored event, to insert.
    pub fn take(&mut self, p: Pending, seen: Option<(u64, i64)>) -> Option<&Event> {
        if p.given
            && let Some((seq, at)) = seen
            && at >= self.window_start
        {
            self.outcomes.push(AppendOutcome::Duplicate(seq));
            self.ids.push(p.id);
            return None;
        }
        if self.follow
            && let Some(t) = p.event.ingested.or(p.event.time)
        {
            self.stamp = self.stamp.max(t);
        }
        let e = p.event;
        let event = Event {
            seq: self.next,
            id: p.id,
            tenant: e.tenant,
            source: e.source,
            kind: e.kind,
            time: e.time.unwrap_or(self.stamp),
            ingested: self.stamp,
            payload: e.payload,
            hops: e.hops,
        };
        self.outcomes.push(AppendOutcome::Accepted(self.next));
        self.ids.push(event.id.clone());
        self.next += 1;
        self.committed.stored.push(Arc::new(event));
        self.committed.stored.last().map(|e| &**e)
    }

    /// The current group (one ingest request) is complete.
    pub fn end_group(&mut self) {
        self.committed
            .outcomes
            .push(std::mem::take(&mut self.outcomes));
        self.committed.ids.push(std::mem::take(&mut self.ids));
    }

    /// How many events this append stores so far.
    pub fn written(&self) -> usize {
        self.committed.stored.len()
    }

    /// The last seq and stamp given (the head after the commit).
    pub fn head(&self) -> (u64, i64) {
        (self.next - 1, self.stamp)
    }

    /// What the transaction committed.
    pub fn finish(self) -> Committed {
        self.committed
    }
}

/// Ids for events sent without one: ULIDs, time-sortable, from the
/// writer's clock.
#[derive(Debug, Default)]
pub struct IdGenerator(ulid::Generator);

impl IdGenerator {
    /// A new id for an event ingested at `now` (ms).
    pub fn generate(&mut self, now: i64) -> String {
        let at = std::time::UNIX_EPOCH + Duration::from_millis(now.max(0) as u64);
        match self.0.generate_from_datetime(at) {
            Ok(id) => id.to_string(),
            // 2^80 ids in one millisecond: start a fresh random sequence.
            Err(_) => {
                self.0 = ulid::Generator::new();
                ulid::Ulid::from_datetime(at).to_string()
            }
        }
    }
}

/// Where one pruning pass cuts the log: every event with a seq at most
/// `cut` goes (none when `cut` is below the first seq).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneCut {
    /// The last seq deleted.
    pub cut: i64,
    /// A pin kept events the policy wanted gone.
    pub held_by_pin: bool,
    /// More is due than this pass deletes.
    pub more: bool,
}

/// Where to cut a log whose seqs run `first..=last`: what `policy` wants
/// gone (`by_age`: the last seq old enough, among the first `max_rows`),
/// held below the lowest pin `low`, at most `max_rows` events per pass.
pub fn prune_cut(
    policy: &RetentionPolicy,
    first: i64,
    last: i64,
    by_age: Option<i64>,
    low: Option<i64>,
    max_rows: u64,
) -> PruneCut {
    let max_rows = max_rows.min(i64::MAX as u64) as i64;
    let mut cut = 0i64;
    if let Some(max) = policy.max_events {
        cut = cut.max(last - max.min(i64::MAX as u64) as i64);
    }
    cut = cut.max(by_age.unwrap_or(0));
    let mut held_by_pin = false;
    if let Some(low) = low
        && cut >= low
    {
        cut = low - 1;
        held_by_pin = true;
    }
    let more = cut >= first.saturating_add(max_rows);
    PruneCut {
        cut: cut.min(first.saturating_add(max_rows) - 1),
        held_by_pin,
        more,
    }
}

impl PruneCut {
    /// The report of a pass that cut here and deleted `deleted` events.
    pub fn report(&self, first: i64, last: i64, deleted: u64) -> PruneReport {
        let first_seq = if self.cut >= first {
            (self.cut < last).then_some(self.cut as u64 + 1)
        } else {
            Some(first as u64)
        };
        PruneReport {
            deleted,
            first_seq,
            held_by_pin: self.held_by_pin,
            more: self.more,
        }
    }
}

/// The upper bound of the keys starting with `prefix` (bytewise), when
/// there is one that is still text: the prefix with its last character
/// incremented. `None` for `""` or a last character at the top of its
/// range.
pub(crate) fn prefix_upper(prefix: &str) -> Option<String> {
    let last = prefix.chars().next_back()?;
    let next = char::from_u32(last as u32 + 1)?;
    let mut upper = prefix[..prefix.len() - last.len_utf8()].to_owned();
    upper.push(next);
    Some(upper)
}
