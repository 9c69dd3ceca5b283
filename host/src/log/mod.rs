//! The durable event log: ingest with dedupe, queries, the live feed and
//! retention.
//!
//! One writer thread owns every write ([`EventLog`] sends it commands).
//! It takes whatever requests are queued — up to `max_batch_events` — and
//! commits them in one transaction (group commit); each request is
//! acknowledged only after that commit. Seqs are assigned by the writer,
//! 1-based and gap-free, so log order, seq order and feed order are one.
//!
//! The feed is the log read from a cursor: a subscriber replays from the
//! store, then follows an in-memory ring of recent events, and waits for the
//! next commit when it has seen everything. A subscriber that falls behind
//! the ring reads from the store again; it never blocks the writer and never
//! misses or repeats an item.
//!
//! Retention deletes old events by age and/or count, but never events at or
//! after the lowest *pin*: a pin is `(owner, min_seq)`, set by whatever
//! still needs events (a rule's cursor, an open window's buffer, a pending
//! fire) and moved forward as that need goes away.

pub mod memory;
pub mod postgres;
pub mod sqlite;
pub mod store;
pub mod validate;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

pub use self::memory::MemoryBackend;
pub use self::postgres::PostgresBackend;
pub use self::sqlite::{Durability, SqliteBackend};
pub use self::store::{
    AppendOutcome, LogBackend, LogWriter, PruneReport, RetentionPolicy, Stamp, StateOp, StoreError,
};
pub use self::validate::{EventLimits, ValidationError};
use crate::clock::SharedClock;
use crate::event::Event;
pub use crate::event::NewEvent;

/// A read of the log. Results come in seq order, at most `limit` of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventQuery {
    /// Only this tenant's events (`None`: all tenants, for the engine).
    pub tenant: Option<String>,
    /// Only events with a greater seq.
    pub after_seq: Option<u64>,
    /// Only events with seq at most this.
    pub until_seq: Option<u64>,
    /// Only events whose time is at or after this (ms).
    pub since: Option<i64>,
    /// Only events whose time is before this (ms).
    pub until: Option<i64>,
    /// Only this source.
    pub source: Option<String>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Only events whose id starts with this (a fire's records and
    /// outputs: `sluice:<fire id>.`).
    pub id_prefix: Option<String>,
    /// At most this many events.
    pub limit: usize,
    /// The newest `limit` of them, newest first (`false`: oldest first).
    pub newest_first: bool,
}

impl EventQuery {
    /// All of `tenant`'s events, up to `limit`.
    pub fn tenant(tenant: &str, limit: usize) -> Self {
        Self {
            tenant: Some(tenant.to_owned()),
            after_seq: None,
            until_seq: None,
            since: None,
            until: None,
            source: None,
            kind: None,
            id_prefix: None,
            limit,
            newest_first: false,
        }
    }
}

/// Where a log is kept: an SQLite file (the embedded default) or a
/// PostgreSQL database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Store {
    /// An SQLite database file.
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL database, by URL (`postgres://user@host:port/db`; a
    /// libpq `options=-csearch_path=NAME` parameter picks the schema).
    Postgres(String),
}

impl Store {
    /// `postgres://…` or `postgresql://…` is a PostgreSQL database;
    /// `sqlite:PATH` or a bare path is an SQLite file.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err("the store is empty: give a file path or a postgres:// URL".into());
        }
        if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
            return Ok(Store::Postgres(spec.to_owned()));
        }
        if let Some((scheme, _)) = spec.split_once("://") {
            return Err(format!(
                "store {scheme}:// is not known: give a file path (SQLite) or a postgres:// URL"
            ));
        }
        Ok(Store::Sqlite(
            spec.strip_prefix("sqlite:").unwrap_or(spec).into(),
        ))
    }

    /// Open the store (creating and migrating it as needed).
    pub fn open(&self, durability: Durability) -> Result<Arc<dyn LogBackend>, StoreError> {
        Ok(match self {
            Store::Sqlite(path) => Arc::new(SqliteBackend::open(path, durability)?),
            Store::Postgres(url) => Arc::new(PostgresBackend::open(url, durability)?),
        })
    }

    /// Where compiled components are cached unless told otherwise:
    /// `<db>.cache` beside an SQLite file, `sluice.cache` in the working
    /// directory for PostgreSQL.
    pub fn default_cache_dir(&self) -> std::path::PathBuf {
        match self {
            Store::Sqlite(path) => {
                let mut p = path.as_os_str().to_owned();
                p.push(".cache");
                p.into()
            }
            Store::Postgres(_) => "sluice.cache".into(),
        }
    }
}

impl std::fmt::Display for Store {
    /// The file, or the URL without its password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Store::Sqlite(path) => write!(f, "{}", path.display()),
            Store::Postgres(url) => match url::Url::parse(url) {
                Ok(mut u) => {
                    if u.password().is_some() {
                        let _ = u.set_password(Some("***"));
                    }
                    write!(f, "{u}")
                }
                Err(_) => f.write_str("the PostgreSQL database"),
            },
        }
    }
}

/// What an ingest request got: one outcome per event, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct AppendReport {
    /// Events newly stored.
    pub accepted: usize,
    /// Events already stored within the dedupe window.
    pub duplicates: usize,
    /// The seq of every event of the request (original seq for duplicates).
    pub seqs: Vec<u64>,
    /// The id of every event of the request: the client's, or the one the
    /// log generated (a duplicate's is the original's).
    pub ids: Vec<String>,
    /// Per event: accepted or duplicate.
    pub outcomes: Vec<AppendOutcome>,
}

impl AppendReport {
    /// Split a report into consecutive reports of `counts` events each
    /// (one per part of a request that was committed as one). A part the
    /// report does not reach (its events were not appended: a shadow's
    /// records are kept aside) gets an empty report.
    pub fn split(self, counts: &[usize]) -> Vec<AppendReport> {
        let mut outcomes = self.outcomes.into_iter();
        let mut ids = self.ids.into_iter();
        counts
            .iter()
            .map(|&n| {
                AppendReport::new(
                    outcomes.by_ref().take(n).collect(),
                    ids.by_ref().take(n).collect(),
                )
            })
            .collect()
    }

    fn new(outcomes: Vec<AppendOutcome>, ids: Vec<String>) -> Self {
        let duplicates = outcomes
            .iter()
            .filter(|o| matches!(o, AppendOutcome::Duplicate(_)))
            .count();
        Self {
            accepted: outcomes.len() - duplicates,
            duplicates,
            seqs: outcomes.iter().map(|o| o.seq()).collect(),
            ids,
            outcomes,
        }
    }
}

/// An append sent with [`EventLog::append_nowait`], not yet acknowledged.
#[derive(Debug)]
pub struct PendingAppend(oneshot::Receiver<Result<AppendReport, LogError>>);

impl PendingAppend {
    /// Wait for the commit (outside an async runtime).
    pub fn wait(self) -> Result<AppendReport, LogError> {
        reply_soon(self.0)?
    }
}

/// Why a log operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The store failed; nothing of the request was written.
    // The message includes the store's, so it is not also a `source` (an
    // error chain would say it twice).
    #[error("event log storage: {0}")]
    Store(StoreError),
    /// The log is shut down.
    #[error("the event log is closed")]
    Closed,
}

impl From<StoreError> for LogError {
    fn from(e: StoreError) -> Self {
        LogError::Store(e)
    }
}

/// Settings of the log.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A repeated (tenant, id) within this window is a duplicate.
    pub dedupe_window: Duration,
    /// Most events committed in one transaction.
    pub max_batch_events: usize,
    /// Wait this long for more requests before committing (0: commit as
    /// soon as the queue is drained; batching then comes from load alone).
    pub linger: Duration,
    /// Recent events kept in memory for the feed.
    pub feed_ring: usize,
    /// Requests queued for the writer before ingest waits (backpressure).
    pub queue: usize,
    /// The log runs on a virtual clock (`sluice test`): an event's own
    /// time, when later than the clock, is its ingest stamp.
    pub follow_event_time: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            dedupe_window: Duration::from_secs(24 * 3600),
            max_batch_events: 10_000,
            linger: Duration::ZERO,
            feed_ring: 65_536,
            queue: 1_024,
            follow_event_time: false,
        }
    }
}

/// One item of the feed. Events only, for now; fires, outputs and errors
/// join as further variants.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FeedItem {
    /// An event of the log.
    Event(Arc<Event>),
}

impl FeedItem {
    /// Position in the log.
    pub fn seq(&self) -> u64 {
        match self {
            FeedItem::Event(e) => e.seq,
        }
    }
}

enum Command {
    Append {
        events: Vec<NewEvent>,
        reply: oneshot::Sender<Result<AppendReport, LogError>>,
    },
    Transact {
        events: Vec<NewEvent>,
        ops: Vec<StateOp>,
        reply: oneshot::Sender<Result<AppendReport, LogError>>,
    },
    Prune {
        policy: RetentionPolicy,
        reply: oneshot::Sender<Result<PruneReport, LogError>>,
    },
}

/// Recent committed events, contiguous in seq.
#[derive(Debug)]
struct Ring {
    events: Mutex<VecDeque<Arc<Event>>>,
    capacity: usize,
}

impl Ring {
    /// Forget every event: the next one pushed starts the ring afresh.
    fn clear(&self) {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    fn push(&self, stored: &[Arc<Event>]) {
        let mut ring = self.events.lock().unwrap_or_else(|e| e.into_inner());
        // Commits made by other processes on a shared store are not in the
        // ring: after such a gap it starts afresh (readers take the gap
        // from the store).
        if let (Some(last), Some(first)) = (ring.back(), stored.first())
            && first.seq != last.seq + 1
        {
            ring.clear();
        }
        for e in stored {
            if ring.len() == self.capacity {
                ring.pop_front();
            }
            ring.push_back(e.clone());
        }
    }

    /// Events from `from` to `until` (inclusive) matching `tenant`, at most
    /// `max`, and the seq to continue at; `None` when `from` is no longer
    /// (or not yet) in the ring.
    fn read(
        &self,
        from: u64,
        until: u64,
        tenant: Option<&str>,
        max: usize,
    ) -> Option<(Vec<Arc<Event>>, u64)> {
        let ring = self.events.lock().unwrap_or_else(|e| e.into_inner());
        let first = ring.front()?.seq;
        let last = ring.back()?.seq;
        if from < first || from > last {
            return None;
        }
        let mut out = Vec::new();
        let mut next = from;
        for e in ring.range((from - first) as usize..) {
            if e.seq > until || out.len() == max {
                break;
            }
            if tenant.is_none_or(|t| t == e.tenant) {
                out.push(e.clone());
            }
            next = e.seq + 1;
        }
        Some((out, next))
    }
}

struct Shared {
    backend: Arc<dyn LogBackend>,
    ring: Ring,
    committed: watch::Sender<u64>,
    /// The ingest stamp of the last commit, stored after `committed`
    /// moved: every event stamped lower has a seq at or below the
    /// committed seq read after it.
    stamp: AtomicI64,
    /// The lowest stamp a commit may still give. The writer holds this
    /// lock from reading the clock until its commit is published, so a
    /// reader that raises it knows every event stamped below it is
    /// committed ([`EventLog::horizon`]).
    floor: Mutex<i64>,
    clock: SharedClock,
    /// Writer transactions that failed.
    failed_writes: AtomicU64,
    /// The rules this node holds leases on, when rules are owned by leases
    /// (several nodes on one store); `None` when this process owns every
    /// rule.
    leases: Mutex<Option<HashMap<(String, String), Lease>>>,
    /// Set when the writer has stopped: the follower stops too.
    closed: AtomicBool,
}

/// A lease this node holds on a rule: writes for the rule carry it, and a
/// shared store commits them only while the lease is still this node's at
/// this epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// This node's id.
    pub node: String,
    /// The lease's epoch when this node took it.
    pub epoch: u64,
}

/// The event log. Cheap to clone; clones share the writer.
#[derive(Clone)]
pub struct EventLog {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    writer: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog")
            .field("last_seq", &self.last_seq())
            .finish_non_exhaustive()
    }
}

impl EventLog {
    /// Open the log on `backend` and start its writer thread. A backend
    /// allows one writer at a time: while another log (in this process or
    /// another) writes the same database, this fails at once with an error
    /// naming the database and the holder.
    pub fn open(
        backend: Arc<dyn LogBackend>,
        config: LogConfig,
        clock: SharedClock,
    ) -> Result<Self, LogError> {
        let mut writer = backend.open_writer()?;
        let (committed, _) = watch::channel(writer.last_seq());
        let shared = Arc::new(Shared {
            backend,
            ring: Ring {
                events: Mutex::new(VecDeque::new()),
                capacity: config.feed_ring.max(1),
            },
            committed,
            stamp: AtomicI64::new(writer.last_ingested()),
            floor: Mutex::new(writer.last_ingested()),
            clock,
            failed_writes: AtomicU64::new(0),
            leases: Mutex::new(None),
            closed: AtomicBool::new(false),
        });
        if shared.backend.shared() {
            let weak = Arc::downgrade(&shared);
            std::thread::Builder::new()
                .name("sluice-log-follow".into())
                .spawn(move || follow(weak))
                .map_err(|e| StoreError::new("start the follower thread", e))?;
        }
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let thread_shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name("sluice-log-writer".into())
            .spawn(move || {
                run_writer(&mut *writer, rx, &thread_shared, &config);
                thread_shared.closed.store(true, Ordering::Release);
            })
            .map_err(|e| StoreError::new("start the writer thread", e))?;
        Ok(Self {
            tx,
            shared,
            writer: Arc::new(Mutex::new(Some(handle))),
        })
    }

    /// Open an SQLite log at `path`. Fails at once, naming the database and
    /// the holder, while another log (in this process or another) writes
    /// it; [`Self::close`] releases it.
    pub fn open_sqlite(
        path: impl AsRef<std::path::Path>,
        durability: Durability,
        config: LogConfig,
        clock: SharedClock,
    ) -> Result<Self, LogError> {
        let backend = SqliteBackend::open(path, durability)?;
        Self::open(Arc::new(backend), config, clock)
    }

    /// Open the log on `store` (see [`Store`]).
    pub fn open_store(
        store: &Store,
        durability: Durability,
        config: LogConfig,
        clock: SharedClock,
    ) -> Result<Self, LogError> {
        Self::open(store.open(durability)?, config, clock)
    }

    /// Send the writer a command and wait for its reply.
    async fn request<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, LogError>>) -> Command,
    ) -> Result<T, LogError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(command(reply))
            .await
            .map_err(|_| LogError::Closed)?;
        rx.await.map_err(|_| LogError::Closed)?
    }

    /// [`Self::request`] for code outside an async runtime.
    fn request_blocking<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, LogError>>) -> Command,
    ) -> Result<T, LogError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .blocking_send(command(reply))
            .map_err(|_| LogError::Closed)?;
        reply_soon(rx)?
    }

    /// Append events (one request: committed together, all or nothing).
    /// Returns after the commit.
    pub async fn append(&self, events: Vec<NewEvent>) -> Result<AppendReport, LogError> {
        if events.is_empty() {
            return Ok(AppendReport::new(Vec::new(), Vec::new()));
        }
        self.request(|reply| Command::Append { events, reply })
            .await
    }

    /// Send an append to the writer without waiting for its commit, so a
    /// producer can prepare the next request meanwhile (requests are
    /// committed in the order they were sent). Blocks only while the
    /// writer's queue is full.
    pub fn append_nowait(&self, events: Vec<NewEvent>) -> Result<PendingAppend, LogError> {
        let (reply, rx) = oneshot::channel();
        if events.is_empty() {
            let _ = reply.send(Ok(AppendReport::new(Vec::new(), Vec::new())));
        } else {
            self.tx
                .blocking_send(Command::Append { events, reply })
                .map_err(|_| LogError::Closed)?;
        }
        Ok(PendingAppend(rx))
    }

    /// [`Self::append`] for code outside an async runtime.
    pub fn append_blocking(&self, events: Vec<NewEvent>) -> Result<AppendReport, LogError> {
        if events.is_empty() {
            return Ok(AppendReport::new(Vec::new(), Vec::new()));
        }
        self.request_blocking(|reply| Command::Append { events, reply })
    }

    /// Append `events` and apply the state changes `ops` in one
    /// transaction: everything is written or nothing is. This is how
    /// engine state moves together with the log (a rule's cursor with its
    /// window buffers, a fire's outputs with its completion).
    pub async fn transact(
        &self,
        events: Vec<NewEvent>,
        ops: Vec<StateOp>,
    ) -> Result<AppendReport, LogError> {
        self.request(|reply| Command::Transact { events, ops, reply })
            .await
    }

    /// [`Self::transact`] for code outside an async runtime.
    pub fn transact_blocking(
        &self,
        events: Vec<NewEvent>,
        ops: Vec<StateOp>,
    ) -> Result<AppendReport, LogError> {
        self.request_blocking(|reply| Command::Transact { events, ops, reply })
    }

    /// Pin events from `min_seq` on against retention, for `owner`; `None`
    /// releases the owner's pin.
    pub async fn pin(&self, owner: &str, min_seq: Option<u64>) -> Result<(), LogError> {
        let op = StateOp::Pin {
            owner: owner.to_owned(),
            min_seq,
        };
        self.transact(Vec::new(), vec![op]).await.map(drop)
    }

    /// The committed value of `key` in state namespace `ns`.
    pub fn state_get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, LogError> {
        Ok(self.shared.backend.state_get(ns, key)?)
    }

    /// Every committed key and value of state namespace `ns`, in key order.
    pub fn state_scan(&self, ns: &str) -> Result<Vec<(String, Vec<u8>)>, LogError> {
        Ok(self.shared.backend.state_scan(ns, "")?)
    }

    /// The committed keys of `ns` starting with `prefix`, with their
    /// values, in key order.
    pub fn state_scan_prefix(
        &self,
        ns: &str,
        prefix: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, LogError> {
        Ok(self.shared.backend.state_scan(ns, prefix)?)
    }

    /// Event rows read from the store so far, by every reader of this log
    /// (a cost meter: what a fire reads must not grow with the log).
    pub fn rows_read(&self) -> u64 {
        self.shared.backend.rows_read()
    }

    /// `tenant`'s events with exactly these seqs, in seq order (a blocking
    /// read that costs what it returns).
    pub fn read_seqs(&self, tenant: &str, seqs: &[u64]) -> Result<Vec<Event>, LogError> {
        Ok(self.shared.backend.read_seqs(tenant, seqs)?)
    }

    /// Run one retention pass now.
    pub async fn prune(&self, policy: RetentionPolicy) -> Result<PruneReport, LogError> {
        self.request(|reply| Command::Prune { policy, reply }).await
    }

    /// [`Self::prune`] for code outside an async runtime.
    pub fn prune_blocking(&self, policy: RetentionPolicy) -> Result<PruneReport, LogError> {
        self.request_blocking(|reply| Command::Prune { policy, reply })
    }

    /// Prune on a timer until the log closes (passes repeat at once while
    /// more is due).
    pub fn spawn_retention(
        &self,
        policy: RetentionPolicy,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let log = self.clone();
        tokio::spawn(async move {
            loop {
                match log.prune(policy.clone()).await {
                    Ok(report) if report.more => continue,
                    Ok(_) => {}
                    Err(LogError::Closed) => return,
                    Err(e) => tracing::error!(error = %e, "retention pass failed"),
                }
                tokio::time::sleep(every).await;
            }
        })
    }

    /// Committed events matching `query` (a blocking read).
    pub fn query(&self, query: &EventQuery) -> Result<Vec<Event>, LogError> {
        Ok(self.shared.backend.read(query)?)
    }

    /// The highest committed seq.
    pub fn last_seq(&self) -> u64 {
        *self.shared.committed.borrow()
    }

    /// How far the log is known in time: `(t, seq)` such that every
    /// event ingested before `t` has a seq at most `seq` (and is
    /// committed). `t` is at least `want` when the engine clock has
    /// reached it: the log is then *sealed* up to the clock — no commit
    /// from now on is stamped lower — which costs a brief wait while a
    /// commit is in progress. A driver asks this before it handles a
    /// deadline: every event ingested before the deadline comes first.
    pub fn horizon(&self, want: i64) -> (i64, u64) {
        let stamp = self.shared.stamp.load(Ordering::Acquire);
        let last = self.last_seq();
        if stamp >= want {
            return (stamp, last);
        }
        if self.shared.backend.shared() {
            // Other processes write too: the floor is the store's.
            let at = self.shared.clock.now_millis();
            match self.shared.backend.raise_floor(at) {
                Ok((seq, stamp)) => {
                    self.shared.advance(seq, stamp);
                    return (stamp, seq);
                }
                Err(e) => {
                    // Known only up to what was seen: deadlines wait.
                    tracing::warn!(error = %e, "could not seal the log");
                    return (stamp, last);
                }
            }
        }
        let mut floor = self.shared.floor.lock().unwrap_or_else(|e| e.into_inner());
        *floor = (*floor).max(self.shared.clock.now_millis());
        (*floor, self.last_seq())
    }

    /// The ingest stamp of the last commit (0 for an empty log).
    pub fn last_stamp(&self) -> i64 {
        self.shared.stamp.load(Ordering::Acquire)
    }

    /// From now on, rules are owned by leases: a write for a rule carries
    /// its lease ([`Self::fence`]), and a write for a rule this node holds
    /// no lease on is refused. Called once by a node that shares its store.
    pub fn require_leases(&self) {
        let mut leases = self.shared.leases.lock().unwrap_or_else(|e| e.into_inner());
        leases.get_or_insert_with(HashMap::new);
    }

    /// Record (or, with `None`, forget) the lease this node holds on a
    /// rule.
    pub fn set_lease(&self, tenant: &str, rule: &str, lease: Option<Lease>) {
        let mut leases = self.shared.leases.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(map) = leases.as_mut() {
            let key = (tenant.to_owned(), rule.to_owned());
            match lease {
                Some(l) => map.insert(key, l),
                None => map.remove(&key),
            };
        }
    }

    /// The lease this node holds on a rule, if rules are owned by leases.
    pub fn lease(&self, tenant: &str, rule: &str) -> Option<Lease> {
        let leases = self.shared.leases.lock().unwrap_or_else(|e| e.into_inner());
        leases
            .as_ref()
            .and_then(|m| m.get(&(tenant.to_owned(), rule.to_owned())).cloned())
    }

    /// Every lease this node holds, as (tenant, rule, lease).
    pub fn leases(&self) -> Vec<(String, String, Lease)> {
        let leases = self.shared.leases.lock().unwrap_or_else(|e| e.into_inner());
        leases
            .iter()
            .flatten()
            .map(|((t, r), l)| (t.clone(), r.clone(), l.clone()))
            .collect()
    }

    /// The fence a write for `tenant`/`rule` must carry: none when this
    /// process owns every rule, the rule's lease when rules are owned by
    /// leases; refused when this node holds no lease on it.
    pub fn fence(&self, tenant: &str, rule: &str) -> Result<Option<StateOp>, LogError> {
        let leases = self.shared.leases.lock().unwrap_or_else(|e| e.into_inner());
        let Some(map) = leases.as_ref() else {
            return Ok(None);
        };
        match map.get(&(tenant.to_owned(), rule.to_owned())) {
            Some(l) => Ok(Some(StateOp::Fence {
                tenant: tenant.to_owned(),
                rule: rule.to_owned(),
                node: l.node.clone(),
                epoch: l.epoch,
            })),
            None => Err(LogError::Store(StoreError::new(
                store::FENCED,
                format!("rule {tenant}/{rule} is not this node's: it holds no lease on it"),
            ))),
        }
    }

    /// Follow the highest committed seq: changes on every commit.
    pub fn committed(&self) -> watch::Receiver<u64> {
        self.shared.committed.subscribe()
    }

    /// Writer transactions that failed since the log opened (each failed
    /// transaction once, whatever number of requests it carried). A store
    /// that another process wrote behind the writer's back costs one.
    pub fn failed_writes(&self) -> u64 {
        self.shared.failed_writes.load(Ordering::Relaxed)
    }

    /// The bytes the store takes on disk.
    pub fn store_bytes(&self) -> Result<u64, LogError> {
        Ok(self.shared.backend.size_bytes()?)
    }

    /// The lowest pinned seq, if any.
    pub fn low_water(&self) -> Result<Option<u64>, LogError> {
        Ok(self.shared.backend.low_water()?)
    }

    /// Follow the log from just after `after_seq`: replay, then live.
    /// `tenant` limits the feed to one tenant's items.
    pub fn subscribe(&self, tenant: Option<&str>, after_seq: u64) -> Subscription {
        Subscription {
            shared: self.shared.clone(),
            committed: self.shared.committed.subscribe(),
            tenant: tenant.map(str::to_owned),
            next_seq: after_seq + 1,
            buf: VecDeque::new(),
            log_reads: 0,
        }
    }

    /// Stop the writer after the queued requests and wait for it. Closing
    /// the last handle of the log releases the database: another writer
    /// may open it as soon as this returns. (Dropping the last handle
    /// releases it too, but without waiting for the writer to finish.)
    pub fn close(self) {
        let writer = self.writer.clone();
        drop(self);
        let mut slot = writer.lock().unwrap_or_else(|e| e.into_inner());
        // Only the last handle waits; others leave the thread to it.
        if Arc::strong_count(&writer) == 1
            && let Some(handle) = slot.take()
        {
            drop(slot);
            let _ = handle.join();
        }
    }
}

impl Shared {
    /// Move the committed mark and the stamp forward (never back: on a
    /// shared store the follower and the writer both move them).
    fn advance(&self, seq: u64, stamp: i64) {
        self.committed.send_if_modified(|c| {
            let moved = seq > *c;
            if moved {
                *c = seq;
            }
            moved
        });
        self.stamp.fetch_max(stamp, Ordering::AcqRel);
    }
}

/// How often a process on a shared store looks for commits made by
/// others.
const FOLLOW_EVERY: Duration = Duration::from_millis(20);

/// Follow the head of a shared store until the log is gone.
fn follow(shared: std::sync::Weak<Shared>) {
    let mut failing = false;
    loop {
        std::thread::sleep(FOLLOW_EVERY);
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.closed.load(Ordering::Acquire) {
            return;
        }
        match shared.backend.head() {
            Ok((seq, stamp)) => {
                failing = false;
                shared.advance(seq, stamp);
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "could not follow the log's head");
            }
            Err(_) => {}
        }
    }
}

/// How long a thread polls before it parks. A commit takes tens of
/// microseconds; parking and waking a thread costs about as much again on a
/// virtual machine, so a short poll halves the latency of a lone request.
const SPIN: Duration = Duration::from_micros(150);

/// The next command, polling briefly before parking.
fn recv_soon(rx: &mut mpsc::Receiver<Command>) -> Option<Command> {
    let start = std::time::Instant::now();
    while start.elapsed() < SPIN {
        match rx.try_recv() {
            Ok(c) => return Some(c),
            Err(mpsc::error::TryRecvError::Empty) => std::thread::yield_now(),
            Err(mpsc::error::TryRecvError::Disconnected) => return None,
        }
    }
    rx.blocking_recv()
}

/// Threads waiting for a writer reply right now: only a lone waiter polls
/// (with many, the writer is busy anyway and polling would steal its CPU).
static WAITERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A writer reply, polling briefly before parking when alone.
fn reply_soon<T>(
    rx: oneshot::Receiver<Result<T, LogError>>,
) -> Result<Result<T, LogError>, LogError> {
    use std::sync::atomic::Ordering::SeqCst;
    let alone = WAITERS.fetch_add(1, SeqCst) == 0;
    let result = wait_reply(rx, alone);
    WAITERS.fetch_sub(1, SeqCst);
    result
}

fn wait_reply<T>(
    mut rx: oneshot::Receiver<Result<T, LogError>>,
    spin: bool,
) -> Result<Result<T, LogError>, LogError> {
    let start = std::time::Instant::now();
    while spin && start.elapsed() < SPIN {
        match rx.try_recv() {
            Ok(r) => return Ok(r),
            Err(oneshot::error::TryRecvError::Empty) => std::thread::yield_now(),
            Err(oneshot::error::TryRecvError::Closed) => return Err(LogError::Closed),
        }
    }
    rx.blocking_recv().map_err(|_| LogError::Closed)
}

/// Run `write` under the stamping lock, with the stamp it gives, and
/// publish its result before the lock goes (see [`Shared::floor`]).
fn stamped(
    writer: &mut dyn LogWriter,
    shared: &Shared,
    config: &LogConfig,
    write: impl FnOnce(&mut dyn LogWriter, Stamp) -> Result<store::Committed, StoreError>,
) -> Result<Vec<AppendReport>, LogError> {
    let floor = shared.floor.lock().unwrap_or_else(|e| e.into_inner());
    let stamp = Stamp {
        at: shared.clock.now_millis().max(*floor),
        follow_event_time: config.follow_event_time,
    };
    let result = write(writer, stamp);
    let published = publish(writer, shared, result);
    drop(floor);
    published
}

fn run_writer(
    writer: &mut dyn LogWriter,
    mut rx: mpsc::Receiver<Command>,
    shared: &Shared,
    config: &LogConfig,
) {
    let clock = &shared.clock;
    let mut pending: VecDeque<Command> = VecDeque::new();
    loop {
        let first = match pending.pop_front() {
            Some(c) => c,
            None => match recv_soon(&mut rx) {
                Some(c) => c,
                None => return,
            },
        };
        let (events, reply) = match first {
            Command::Append { events, reply } => (events, reply),
            Command::Transact { events, ops, reply } => {
                // Take the small transactions queued behind it too (rules'
                // fire completions, mostly): one commit, one fsync.
                let mut batch = vec![(events, ops, reply)];
                if batch[0].0.len() + batch[0].1.len() <= MERGE_MAX {
                    while batch.len() < MERGE_REQUESTS {
                        match rx.try_recv() {
                            Ok(Command::Transact { events, ops, reply })
                                if events.len() + ops.len() <= MERGE_MAX =>
                            {
                                batch.push((events, ops, reply));
                            }
                            Ok(other) => {
                                pending.push_back(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                }
                transact_merged(writer, shared, config, batch);
                continue;
            }
            Command::Prune { policy, reply } => {
                let result = writer
                    .prune(
                        &policy,
                        clock.now_millis(),
                        config.dedupe_window,
                        config.max_batch_events as u64,
                    )
                    .map_err(LogError::from);
                if result.is_err() {
                    shared.failed_writes.fetch_add(1, Ordering::Relaxed);
                }
                let _ = reply.send(result);
                continue;
            }
        };
        // Group commit: take every append already queued (and, with a
        // linger, what arrives shortly), up to the batch limit.
        let mut count = events.len();
        let mut groups = vec![events];
        let mut replies = vec![reply];
        let deadline = std::time::Instant::now() + config.linger;
        while count < config.max_batch_events {
            let next = match rx.try_recv() {
                Ok(c) => c,
                Err(mpsc::error::TryRecvError::Empty) if !config.linger.is_zero() => {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    std::thread::sleep(left.min(Duration::from_micros(200)));
                    continue;
                }
                Err(_) => break,
            };
            match next {
                Command::Append { events, reply } => {
                    count += events.len();
                    groups.push(events);
                    replies.push(reply);
                }
                other => {
                    pending.push_back(other);
                    break;
                }
            }
        }
        let result = stamped(writer, shared, config, |w, stamp| {
            w.append(groups, stamp, config.dedupe_window)
        });
        match result {
            Ok(reports) => {
                crate::crash::point("log.append.before_ack");
                for (reply, report) in replies.into_iter().zip(reports) {
                    let _ = reply.send(Ok(report));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(match &e {
                        LogError::Store(s) => LogError::Store(StoreError {
                            context: s.context.clone(),
                            message: s.message.clone(),
                        }),
                        LogError::Closed => LogError::Closed,
                    }));
                }
            }
        }
    }
}

/// Most events and state ops of a transaction that is merged with others.
const MERGE_MAX: usize = 512;
/// Most transactions merged into one.
const MERGE_REQUESTS: usize = 256;

/// Commit transactions `batch`, in order, in one transaction when there
/// are several; each gets its own report. Should the merged one fail, each
/// is tried again on its own, so that one request's failure (a rule whose
/// lease this node lost) fails that request alone.
#[allow(clippy::type_complexity)]
fn transact_merged(
    writer: &mut dyn LogWriter,
    shared: &Shared,
    config: &LogConfig,
    batch: Vec<(
        Vec<NewEvent>,
        Vec<StateOp>,
        oneshot::Sender<Result<AppendReport, LogError>>,
    )>,
) {
    let one = |writer: &mut dyn LogWriter, events, ops| {
        stamped(writer, shared, config, |w, stamp| {
            w.transact(events, ops, stamp, config.dedupe_window)
        })
        .map(|mut reports| {
            reports
                .pop()
                .unwrap_or_else(|| AppendReport::new(Vec::new(), Vec::new()))
        })
    };
    if batch.len() == 1 {
        let (events, ops, reply) = batch.into_iter().next().expect("one request");
        let _ = reply.send(one(writer, events, ops));
        return;
    }
    // Copies, to try each again should the merged one fail (each request
    // is small: at most `MERGE_MAX` events and ops).
    let groups: Vec<Vec<NewEvent>> = batch.iter().map(|(e, _, _)| e.clone()).collect();
    let ops: Vec<StateOp> = batch
        .iter()
        .flat_map(|(_, o, _)| o.iter().cloned())
        .collect();
    crate::crash::point("log.transact.merged");
    let merged = stamped(writer, shared, config, |w, stamp| {
        w.write(groups, ops, stamp, config.dedupe_window)
    });
    match merged {
        Ok(reports) => {
            for ((_, _, reply), report) in batch.into_iter().zip(reports) {
                let _ = reply.send(Ok(report));
            }
        }
        Err(_) => {
            tracing::debug!(
                requests = batch.len(),
                "each request of the merged transaction is tried on its own"
            );
            for (events, ops, reply) in batch {
                let _ = reply.send(one(writer, events, ops));
            }
        }
    }
}

/// After a commit: feed the ring, then move the committed mark (which wakes
/// subscribers); only then are requests acknowledged. Yields a report per
/// group.
///
/// After a failure: count it. A writer that found the store ahead of it
/// (another process wrote the log) continues after the store's seq; the
/// events it did not write are not in the ring, so the ring starts afresh
/// (subscribers read those from the store) and the committed mark moves to
/// the store's, so followers see them.
fn publish(
    writer: &dyn LogWriter,
    shared: &Shared,
    result: Result<store::Committed, StoreError>,
) -> Result<Vec<AppendReport>, LogError> {
    match result {
        Ok(committed) => {
            shared.ring.push(&committed.stored);
            shared.advance(writer.last_seq(), writer.last_ingested());
            Ok(committed
                .outcomes
                .into_iter()
                .zip(committed.ids)
                .map(|(outcomes, ids)| AppendReport::new(outcomes, ids))
                .collect())
        }
        Err(e) => {
            shared.failed_writes.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "write failed; the requests were not written");
            let last = writer.last_seq();
            if last != *shared.committed.borrow() {
                shared.ring.clear();
                shared.committed.send_replace(last);
            }
            Err(LogError::Store(e))
        }
    }
}

/// A cursor on the feed: [`Subscription::next`] yields every item after the
/// cursor, in seq order, then waits for new commits.
pub struct Subscription {
    shared: Arc<Shared>,
    committed: watch::Receiver<u64>,
    tenant: Option<String>,
    next_seq: u64,
    buf: VecDeque<FeedItem>,
    log_reads: u64,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("tenant", &self.tenant)
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

/// Items read from the store per refill when replaying.
const REPLAY_CHUNK: usize = 1_024;

impl Subscription {
    /// The next item; waits for a commit when caught up. Errors only when
    /// the log closes or the store fails.
    pub async fn next(&mut self) -> Result<FeedItem, LogError> {
        loop {
            if let Some(item) = self.buf.pop_front() {
                return Ok(item);
            }
            let committed = *self.committed.borrow_and_update();
            if self.next_seq <= committed {
                if !self.fill_from_ring(committed) {
                    let shared = self.shared.clone();
                    let query = self.replay_query(committed);
                    let events = tokio::task::spawn_blocking(move || shared.backend.read(&query))
                        .await
                        .map_err(|e| StoreError::new("feed replay", e))??;
                    self.took_from_log(events, committed);
                }
                continue;
            }
            if self.committed.changed().await.is_err() {
                return Err(LogError::Closed);
            }
        }
    }

    /// The next item if one is committed, without waiting (a blocking read
    /// when it must replay from the store).
    pub fn try_next(&mut self) -> Result<Option<FeedItem>, LogError> {
        loop {
            if let Some(item) = self.buf.pop_front() {
                return Ok(Some(item));
            }
            let committed = *self.committed.borrow_and_update();
            if self.next_seq > committed {
                return Ok(None);
            }
            if !self.fill_from_ring(committed) {
                let events = self.shared.backend.read(&self.replay_query(committed))?;
                self.took_from_log(events, committed);
            }
        }
    }

    /// The seq this subscription will look at next.
    pub fn cursor(&self) -> u64 {
        self.next_seq
    }

    /// How many times it had to read from the store (replay or lagging).
    pub fn log_reads(&self) -> u64 {
        self.log_reads
    }

    fn fill_from_ring(&mut self, committed: u64) -> bool {
        match self.shared.ring.read(
            self.next_seq,
            committed,
            self.tenant.as_deref(),
            REPLAY_CHUNK,
        ) {
            Some((events, next)) => {
                self.buf.extend(events.into_iter().map(FeedItem::Event));
                self.next_seq = next;
                true
            }
            None => false,
        }
    }

    fn replay_query(&self, committed: u64) -> EventQuery {
        EventQuery {
            tenant: self.tenant.clone(),
            after_seq: Some(self.next_seq - 1),
            until_seq: Some(committed),
            since: None,
            until: None,
            source: None,
            kind: None,
            id_prefix: None,
            limit: REPLAY_CHUNK,
            newest_first: false,
        }
    }

    fn took_from_log(&mut self, events: Vec<Event>, committed: u64) {
        self.log_reads += 1;
        // A short read means nothing more up to `committed` for us.
        self.next_seq = match events.last() {
            Some(last) if events.len() == REPLAY_CHUNK => last.seq + 1,
            _ => committed + 1,
        };
        self.buf
            .extend(events.into_iter().map(|e| FeedItem::Event(Arc::new(e))));
    }
}
