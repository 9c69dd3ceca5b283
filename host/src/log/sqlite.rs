//! The embedded store: one SQLite file in WAL mode.
//!
//! One connection writes (the writer thread's); readers take connections
//! from a small pool and, thanks to WAL, never block the writer or each
//! other. The schema is versioned in `schema_version` and migrated forward
//! on open.
//!
//! One process writes a database at a time. The writer holds an exclusive
//! advisory lock on `<db>.lock` (which names the holder) for as long as it
//! is open; a second writer — another process, or another log in this one —
//! is refused at once with an error naming the database and the holder.
//! The operating system drops the lock with its process, so a killed writer
//! never blocks the next start. Readers take no lock.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params, params_from_iter};

use super::store::{
    Appender, Committed, IdGenerator, LogBackend, LogWriter, PruneReport, RetentionPolicy, Stamp,
    StateOp, StoreError, prefix_upper, prune_cut,
};
use super::{EventQuery, NewEvent};
use crate::event::Event;

/// How hard a commit tries to survive failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// `synchronous = FULL`: a committed event survives power loss and OS
    /// crashes (the WAL is fsynced at every commit).
    #[default]
    Full,
    /// `synchronous = NORMAL`: a committed event survives a crash of the
    /// process; a power loss may lose the last commits (never corrupts).
    Normal,
}

impl std::str::FromStr for Durability {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "full" => Ok(Durability::Full),
            "normal" => Ok(Durability::Normal),
            other => Err(format!("durability {other:?}: expected full or normal")),
        }
    }
}

/// Schema migrations, applied in order; the index is the version - 1.
const MIGRATIONS: &[&str] = &[
    // 1: events, dedupe tombstones, retention pins.
    "CREATE TABLE events (
        seq INTEGER PRIMARY KEY,
        tenant TEXT NOT NULL,
        id TEXT NOT NULL,
        source TEXT NOT NULL,
        kind TEXT NOT NULL,
        time INTEGER NOT NULL,
        ingested_at INTEGER NOT NULL,
        payload TEXT NOT NULL
    );
    CREATE INDEX events_by_id ON events (tenant, id);
    CREATE INDEX events_by_tenant ON events (tenant, seq);
    CREATE INDEX events_by_kind ON events (tenant, kind, seq);
    CREATE INDEX events_by_source ON events (tenant, source, seq);
    CREATE INDEX events_by_time ON events (tenant, time);
    CREATE TABLE dedupe_tombstones (
        tenant TEXT NOT NULL,
        id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        ingested_at INTEGER NOT NULL,
        PRIMARY KEY (tenant, id)
    ) WITHOUT ROWID;
    CREATE TABLE pins (
        owner TEXT PRIMARY KEY,
        min_seq INTEGER NOT NULL
    ) WITHOUT ROWID;",
    // 2: engine state (trigger state, cursors, fires).
    "CREATE TABLE state (
        ns TEXT NOT NULL,
        key TEXT NOT NULL,
        value BLOB NOT NULL,
        PRIMARY KEY (ns, key)
    ) WITHOUT ROWID;",
    // 3: how many rule steps an output is from a client event.
    "ALTER TABLE events ADD COLUMN hops INTEGER NOT NULL DEFAULT 0;",
];

/// Bytes of the database file each connection maps into memory. Every
/// read transaction that follows a commit by another connection starts
/// with an empty page cache (WAL mode); mapped pages come from the OS page
/// cache without a read call or a copy, so many short reads (a fire's
/// events by seq) stay cheap.
const MMAP_BYTES: u64 = 0;

/// The SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteBackend {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    durability: Durability,
    readers: Mutex<Vec<Connection>>,
    /// Event rows read so far (a cost meter for tests and benchmarks).
    rows_read: std::sync::atomic::AtomicU64,
}

fn err(context: &str) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |e| StoreError::new(context, e)
}

impl SqliteBackend {
    /// Open (creating and migrating as needed) the database at `path`.
    ///
    /// Opening for reads works whatever else has the database open; the
    /// one-writer rule is checked by [`LogBackend::open_writer`]. Only a
    /// database that needs migrating takes the writer lock here (briefly),
    /// so that a schema never changes under a live writer.
    pub fn open(path: impl AsRef<Path>, durability: Durability) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let mut conn = Self::connect(&path, durability, false)?;
        if schema_version(&conn)? < MIGRATIONS.len() as i64 {
            let _lock = WriterLock::acquire(&path)?;
            migrate(&mut conn)?;
        }
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                durability,
                readers: Mutex::new(vec![conn]),
                rows_read: std::sync::atomic::AtomicU64::new(0),
            }),
        })
    }

    fn count_rows(&self, n: usize) {
        self.inner
            .rows_read
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn connect(
        path: &Path,
        durability: Durability,
        read_only: bool,
    ) -> Result<Connection, StoreError> {
        let context = format!("open {}", path.display());
        let flags = if read_only {
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
        } else {
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
        };
        let conn = Connection::open_with_flags(path, flags).map_err(err(&context))?;
        conn.busy_timeout(Duration::from_secs(30))
            .map_err(err(&context))?;
        if !read_only {
            let mode: String = conn
                .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
                .map_err(err(&context))?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(StoreError::new(
                    context,
                    format!("journal_mode is {mode}, not wal"),
                ));
            }
        }
        let sync = match durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        };
        conn.execute_batch(&format!(
            "PRAGMA synchronous = {sync}; PRAGMA temp_store = MEMORY; PRAGMA cache_size = -32768; \
             PRAGMA mmap_size = {MMAP_BYTES};"
        ))
        .map_err(err(&context))?;
        Ok(conn)
    }

    fn with_reader<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let pooled = self
            .inner
            .readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop();
        let conn = match pooled {
            Some(c) => c,
            None => Self::connect(&self.inner.path, self.inner.durability, true)?,
        };
        let result = f(&conn);
        let mut pool = self.inner.readers.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < 32 {
            pool.push(conn);
        }
        result
    }

    /// The query plan SQLite picks for `query`, one line per step.
    pub fn explain(&self, query: &EventQuery) -> Result<Vec<String>, StoreError> {
        let (sql, args) = select_sql(query);
        self.with_reader(|conn| {
            let mut stmt = conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .map_err(err("explain"))?;
            let rows = stmt
                .query_map(params_from_iter(args.iter()), |r| r.get::<_, String>(3))
                .map_err(err("explain"))?;
            rows.collect::<Result<Vec<_>, _>>().map_err(err("explain"))
        })
    }
}

/// The applied schema version (0 for a new database).
fn schema_version(conn: &Connection) -> Result<i64, StoreError> {
    let exists: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master
                            WHERE type = 'table' AND name = 'schema_version')",
            [],
            |r| r.get(0),
        )
        .map_err(err("read the schema version"))?;
    if !exists {
        return Ok(0);
    }
    conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_version",
        [],
        |r| r.get(0),
    )
    .map_err(err("read the schema version"))
}

/// The writer's claim on a database: an exclusive advisory lock on
/// `<db>.lock`, held while it lives. The file holds the holder's pid and
/// when it took the lock, for the error a second writer gets. The lock is
/// the operating system's (`flock` on Unix), so it goes with the process
/// however that ends; the file itself stays (removing it could let two
/// writers lock two different files).
#[derive(Debug)]
struct WriterLock {
    _file: File,
}

impl WriterLock {
    fn acquire(db: &Path) -> Result<Self, StoreError> {
        let path = lock_path(db);
        let context = format!("lock {}", path.display());
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| StoreError::new(&context, e))?;
        // A lock this process just released can linger for a moment in a
        // child being spawned (a forked copy of the descriptor, closed at
        // its exec): retry briefly when the holder is this process; another
        // process's lock fails at once.
        let mut tries = 0;
        let outcome = loop {
            match file.try_lock() {
                Err(TryLockError::WouldBlock) if tries < 50 => {
                    let mut holder = String::new();
                    let _ = (&file).take(256).read_to_string(&mut holder);
                    if !describe_holder(&holder).starts_with("another writer in this process") {
                        break Err(TryLockError::WouldBlock);
                    }
                    use std::io::Seek;
                    let _ = (&file).seek(std::io::SeekFrom::Start(0));
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => break other,
            }
        };
        match outcome {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                use std::io::Seek;
                let _ = (&file).seek(std::io::SeekFrom::Start(0));
                let mut holder = String::new();
                let _ = (&file).take(256).read_to_string(&mut holder);
                return Err(StoreError::new(
                    "open the writer",
                    format!(
                        "database {} is in use by {}",
                        db.display(),
                        describe_holder(&holder)
                    ),
                ));
            }
            Err(TryLockError::Error(e)) => return Err(StoreError::new(&context, e)),
        }
        let since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let stamp = format!("pid {}, since {since}\n", std::process::id());
        // Best effort: the lock holds whether or not the note is written.
        if let Err(e) = file
            .set_len(0)
            .and_then(|()| (&file).write_all(stamp.as_bytes()))
        {
            tracing::warn!(file = %path.display(), error = %e, "could not note the writer's pid");
        }
        Ok(Self { _file: file })
    }
}

/// `<db>.lock`, beside the database.
fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Who holds the writer lock, from the note in the lock file:
/// `another sluice process (pid 1234, since 2026-01-01T00:00:00Z)`.
fn describe_holder(note: &str) -> String {
    let note: String = note
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .take(100)
        .collect();
    let pid = note
        .strip_prefix("pid ")
        .and_then(|rest| rest.split(',').next())
        .and_then(|pid| pid.trim().parse::<u32>().ok());
    match pid {
        Some(pid) if pid == std::process::id() => {
            format!("another writer in this process ({note}); close that log first")
        }
        Some(_) => format!("another sluice process ({note})"),
        // The holder is between taking the lock and writing its note, or
        // the note cannot be read while locked (Windows).
        None => "another sluice process (its pid could not be read)".to_owned(),
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction().map_err(err("migrate"))?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (
            version INTEGER PRIMARY KEY,
            applied_at INTEGER NOT NULL
        )",
    )
    .map_err(err("migrate"))?;
    let current: i64 = tx
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_version",
            [],
            |r| r.get(0),
        )
        .map_err(err("migrate"))?;
    let known = MIGRATIONS.len() as i64;
    if current > known {
        return Err(StoreError::new(
            "migrate",
            format!("database schema version {current} is newer than this build knows ({known})"),
        ));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = i as i64 + 1;
        tx.execute_batch(sql)
            .map_err(|e| StoreError::new(format!("migration {version}"), e))?;
        tx.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES (?1, ?2)",
            params![version, now],
        )
        .map_err(err("migrate"))?;
    }
    tx.commit().map_err(err("migrate"))
}

/// One SQL argument of a built query.
#[derive(Debug, Clone)]
enum Arg {
    Int(i64),
    Text(String),
}

impl rusqlite::ToSql for Arg {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            Arg::Int(i) => i.to_sql(),
            Arg::Text(s) => s.to_sql(),
        }
    }
}

fn select_sql(q: &EventQuery) -> (String, Vec<Arg>) {
    // A fire's few records are found by id, however long the log.
    let index = if q.id_prefix.is_some() && q.tenant.is_some() {
        " INDEXED BY events_by_id"
    } else {
        ""
    };
    let mut sql = format!(
        "SELECT seq, tenant, id, source, kind, time, payload, hops, ingested_at FROM events{index} WHERE 1 = 1",
    );
    let mut args = Vec::new();
    let mut push = |clause: &str, arg: Arg| {
        args.push(arg);
        sql.push_str(&format!(" AND {clause} ?{}", args.len()));
    };
    if let Some(t) = &q.tenant {
        push("tenant =", Arg::Text(t.clone()));
    }
    if let Some(s) = &q.source {
        push("source =", Arg::Text(s.clone()));
    }
    if let Some(k) = &q.kind {
        push("kind =", Arg::Text(k.clone()));
    }
    if let Some(after) = q.after_seq {
        push("seq >", Arg::Int(after as i64));
    }
    if let Some(until) = q.until_seq {
        push("seq <=", Arg::Int(until as i64));
    }
    if let Some(since) = q.since {
        push("time >=", Arg::Int(since));
    }
    if let Some(until) = q.until {
        push("time <", Arg::Int(until));
    }
    if let Some(prefix) = &q.id_prefix {
        push("id >=", Arg::Text(prefix.clone()));
        if let Some(upper) = prefix_upper(prefix) {
            push("id <", Arg::Text(upper));
        }
    }
    args.push(Arg::Int(q.limit.min(i64::MAX as usize) as i64));
    let order = if q.newest_first { "DESC" } else { "ASC" };
    sql.push_str(&format!(" ORDER BY seq {order} LIMIT ?{}", args.len()));
    (sql, args)
}

fn row_to_event(r: &rusqlite::Row<'_>) -> rusqlite::Result<Event> {
    Ok(Event {
        seq: r.get::<_, i64>(0)? as u64,
        tenant: r.get(1)?,
        id: r.get(2)?,
        source: r.get(3)?,
        kind: r.get(4)?,
        time: r.get(5)?,
        payload: r.get(6)?,
        hops: r.get(7)?,
        ingested: r.get(8)?,
    })
}

impl LogBackend for SqliteBackend {
    /// Take the database's writer lock (refused at once, naming the
    /// holder, while another writer has it) and open the writer, which
    /// holds the lock until it is dropped.
    fn open_writer(&self) -> Result<Box<dyn LogWriter>, StoreError> {
        let lock = WriterLock::acquire(&self.inner.path)?;
        let conn = Self::connect(&self.inner.path, self.inner.durability, false)?;
        let (last_seq, last_ingested) = read_head(&conn).map_err(err("open writer"))?;
        // Checkpoints (copying the WAL into the database file) run on a
        // thread of their own, so commits do not pay for them. The writer's
        // own autocheckpoint stays as a backstop should that thread fall
        // far behind.
        conn.execute_batch(&format!("PRAGMA wal_autocheckpoint = {WAL_BACKSTOP_PAGES}"))
            .map_err(err("open writer"))?;
        let checkpointer = Checkpointer::start(Self::connect(
            &self.inner.path,
            self.inner.durability,
            false,
        )?)?;
        Ok(Box::new(SqliteWriter {
            conn,
            last_seq,
            last_ingested,
            ids: IdGenerator::default(),
            checkpointer,
            _lock: lock,
        }))
    }

    fn read(&self, query: &EventQuery) -> Result<Vec<Event>, StoreError> {
        let (sql, args) = select_sql(query);
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(&sql).map_err(err("read events"))?;
            let rows = stmt
                .query_map(params_from_iter(args.iter()), row_to_event)
                .map_err(err("read events"))?;
            let events = rows
                .collect::<Result<Vec<_>, _>>()
                .map_err(err("read events"))?;
            self.count_rows(events.len());
            Ok(events)
        })
    }

    /// The database file and its write-ahead log.
    fn size_bytes(&self) -> Result<u64, StoreError> {
        Ok(["", "-wal"]
            .iter()
            .filter_map(|suffix| {
                let mut p = self.inner.path.as_os_str().to_owned();
                p.push(suffix);
                std::fs::metadata(p).ok().map(|m| m.len())
            })
            .sum())
    }

    fn rows_read(&self) -> u64 {
        self.inner
            .rows_read
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn last_seq(&self) -> Result<u64, StoreError> {
        self.with_reader(|conn| {
            conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|s| s as u64)
            .map_err(err("last seq"))
        })
    }

    fn state_get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.with_reader(|conn| {
            conn.prepare_cached("SELECT value FROM state WHERE ns = ?1 AND key = ?2")
                .and_then(|mut s| s.query_row(params![ns, key], |r| r.get(0)).optional())
                .map_err(err("read state"))
        })
    }

    fn state_scan(&self, ns: &str, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.with_reader(|conn| {
            let (sql, upper) = prefix_range(prefix);
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT key, value FROM state WHERE ns = ?1 AND {sql} ORDER BY key"
                ))
                .map_err(err("scan state"))?;
            let rows = stmt
                .query_map(params![ns, prefix, upper], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(err("scan state"))?;
            rows.collect::<Result<Vec<_>, _>>()
                .map_err(err("scan state"))
        })
    }

    fn read_seqs(&self, tenant: &str, seqs: &[u64]) -> Result<Vec<Event>, StoreError> {
        let mut sorted = seqs.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        self.with_reader(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT seq, tenant, id, source, kind, time, payload, hops, ingested_at FROM events
                     WHERE seq = ?1 AND tenant = ?2",
                )
                .map_err(err("read events by seq"))?;
            // One read transaction (one snapshot, one warm page cache) for
            // all of them.
            conn.execute_batch("BEGIN DEFERRED")
                .map_err(err("read events by seq"))?;
            let mut out = Vec::with_capacity(sorted.len());
            let result = (|| {
                for seq in sorted {
                    if let Some(e) = stmt
                        .query_row(params![seq as i64, tenant], row_to_event)
                        .optional()
                        .map_err(err("read events by seq"))?
                    {
                        out.push(e);
                    }
                }
                Ok::<(), StoreError>(())
            })();
            conn.execute_batch("COMMIT")
                .map_err(err("read events by seq"))?;
            result?;
            self.count_rows(out.len());
            Ok(out)
        })
    }

    fn low_water(&self) -> Result<Option<u64>, StoreError> {
        self.with_reader(|conn| {
            conn.query_row("SELECT MIN(min_seq) FROM pins", [], |r| {
                r.get::<_, Option<i64>>(0)
            })
            .map(|s| s.map(|s| s as u64))
            .map_err(err("read pins"))
        })
    }
}

/// The condition (on `key`, with `?2` = the prefix and `?3` = an upper
/// bound) that selects the keys starting with a prefix, and the bound. A
/// prefix ending in an ASCII character is an index range (`[prefix,
/// prefix with its last byte + 1)`, SQLite compares text bytewise); any
/// other prefix is compared directly, which is correct but scans the
/// namespace.
fn prefix_range(prefix: &str) -> (&'static str, String) {
    match prefix.as_bytes().last() {
        None => ("?2 = ?2 AND ?3 = ?3", String::new()),
        Some(&b) if b < 0x7f => {
            let mut upper = prefix[..prefix.len() - 1].to_owned();
            upper.push(char::from(b + 1));
            ("key >= ?2 AND key < ?3", upper)
        }
        Some(_) => ("substr(key, 1, length(?2)) = ?2 AND ?3 = ?3", String::new()),
    }
}

/// WAL pages after which the writer checkpoints by itself (≈ 256 MiB).
const WAL_BACKSTOP_PAGES: u32 = 65_536;
/// The checkpointer runs after about this many bytes were committed (about
/// SQLite's own default of 1000 pages), and every 200 ms.
const CHECKPOINT_EVERY_BYTES: usize = 4 << 20;

/// Runs passive WAL checkpoints off the write path.
struct Checkpointer {
    nudge: Option<std::sync::mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    bytes: usize,
}

impl Drop for Checkpointer {
    /// Stop with the writer, so the database is closed when the log is.
    fn drop(&mut self) {
        self.nudge.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Checkpointer {
    fn start(conn: Connection) -> Result<Self, StoreError> {
        let (nudge, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("sluice-checkpoint".into())
            .spawn(move || {
                use std::sync::mpsc::RecvTimeoutError;
                // Checkpoint when nudged or idle; stop with the writer.
                while !matches!(
                    rx.recv_timeout(Duration::from_millis(200)),
                    Err(RecvTimeoutError::Disconnected)
                ) {
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::warn!(error = %e, "WAL checkpoint failed");
                    }
                }
            })
            .map_err(|e| StoreError::new("start the checkpoint thread", e))?;
        Ok(Self {
            nudge: Some(nudge),
            thread: Some(thread),
            bytes: 0,
        })
    }

    /// Count a commit of about `bytes` bytes.
    fn committed(&mut self, bytes: usize) {
        self.bytes += bytes;
        if self.bytes >= CHECKPOINT_EVERY_BYTES {
            self.bytes = 0;
            // Full channel: a checkpoint is already due; nothing to add.
            if let Some(nudge) = &self.nudge {
                let _ = nudge.try_send(());
            }
        }
    }
}

/// The highest seq and ingest stamp in the store.
fn read_head(conn: &Connection) -> rusqlite::Result<(u64, i64)> {
    conn.query_row(
        "SELECT COALESCE(MAX(seq), 0), COALESCE(MAX(ingested_at), 0) FROM events",
        [],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
    )
}

/// Why one writer transaction failed.
enum WriteFailure {
    /// The store failed.
    Store(StoreError),
    /// An event's seq is already taken: someone else wrote the log.
    SeqTaken,
}

impl From<StoreError> for WriteFailure {
    fn from(e: StoreError) -> Self {
        WriteFailure::Store(e)
    }
}

/// Whether an insert into `events` failed because its seq is taken (the
/// table's only uniqueness constraint is its primary key).
fn seq_taken(e: &rusqlite::Error) -> bool {
    e.sqlite_error().is_some_and(|e| {
        e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
            || e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
    })
}

struct SqliteWriter {
    conn: Connection,
    /// The highest committed seq. Only this writer appends while it holds
    /// the lock; should the store contradict it all the same (a process
    /// that ignores the lock), it is re-read from the store (see
    /// [`SqliteWriter::resync`]).
    last_seq: u64,
    /// Ingest stamps never go backwards, so that "ingested before T" is a
    /// prefix of the log even if the wall clock steps back.
    last_ingested: i64,
    ids: IdGenerator,
    checkpointer: Checkpointer,
    /// Dropped last: the database is closed before another writer may
    /// open it.
    _lock: WriterLock,
}

impl SqliteWriter {
    /// Re-read the head of the log after finding a seq taken, and say what
    /// happened. The transaction was rolled back; from now on seqs continue
    /// after the store's, so one contradiction costs one failed request,
    /// never a writer that fails every request.
    fn resync(&mut self) -> StoreError {
        let expected = self.last_seq;
        match read_head(&self.conn) {
            Ok((last_seq, last_ingested)) => {
                self.last_seq = last_seq;
                self.last_ingested = self.last_ingested.max(last_ingested);
                StoreError::new(
                    "append",
                    format!(
                        "the log was written by another process: expected seq {expected}, \
                         store has {last_seq} (nothing of this request was written; \
                         the writer continues after seq {last_seq})"
                    ),
                )
            }
            Err(e) => StoreError::new(
                "append",
                format!(
                    "the log was written by another process: expected seq {expected}, \
                     and reading the store's seq failed: {e}"
                ),
            ),
        }
    }

    fn write_once(
        &mut self,
        groups: Vec<Vec<NewEvent>>,
        ops: Vec<StateOp>,
        now: Stamp,
        dedupe_window: Duration,
    ) -> Result<Committed, WriteFailure> {
        let mut appender = Appender::new(now, self.last_seq, self.last_ingested, dedupe_window);
        let groups = appender.pending(groups, &mut self.ids);
        let tx = self.conn.transaction().map_err(err("append"))?;
        {
            let mut find = tx
                .prepare_cached(
                    "SELECT seq, ingested_at FROM events WHERE tenant = ?1 AND id = ?2
                     ORDER BY seq DESC LIMIT 1",
                )
                .map_err(err("append"))?;
            let mut find_tomb = tx
                .prepare_cached(
                    "SELECT seq, ingested_at FROM dedupe_tombstones WHERE tenant = ?1 AND id = ?2",
                )
                .map_err(err("append"))?;
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO events (seq, tenant, id, source, kind, time, ingested_at, payload, hops)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )
                .map_err(err("append"))?;
            let many = groups.len() > 1;
            for (g, group) in groups.into_iter().enumerate() {
                if many && g == 1 {
                    crate::crash::point("log.append.mid_group");
                }
                for p in group {
                    let seen = if p.given {
                        let lookup = |stmt: &mut rusqlite::CachedStatement<'_>| {
                            stmt.query_row(params![p.event.tenant, p.id], |r| {
                                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)?))
                            })
                            .optional()
                            .map_err(err("dedupe lookup"))
                        };
                        match lookup(&mut find)? {
                            Some(hit) => Some(hit),
                            None => lookup(&mut find_tomb)?,
                        }
                    } else {
                        None
                    };
                    let Some(event) = appender.take(p, seen) else {
                        continue;
                    };
                    insert
                        .execute(params![
                            event.seq as i64,
                            event.tenant,
                            event.id,
                            event.source,
                            event.kind,
                            event.time,
                            event.ingested,
                            event.payload,
                            event.hops
                        ])
                        .map_err(|e| {
                            if seq_taken(&e) {
                                WriteFailure::SeqTaken
                            } else {
                                WriteFailure::Store(StoreError::new("insert event", e))
                            }
                        })?;
                }
                appender.end_group();
            }
        }
        let with_records = appender.written() > 0;
        if with_records && !ops.is_empty() {
            crate::crash::point("log.transact.between_records_and_state");
        }
        for op in ops {
            let (sql, args): (&str, Vec<Box<dyn rusqlite::ToSql>>) = match op {
                StateOp::Put { ns, key, value } => (
                    "INSERT INTO state (ns, key, value) VALUES (?1, ?2, ?3)
                     ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value",
                    vec![Box::new(ns), Box::new(key), Box::new(value)],
                ),
                StateOp::Delete { ns, key } => (
                    "DELETE FROM state WHERE ns = ?1 AND key = ?2",
                    vec![Box::new(ns), Box::new(key)],
                ),
                StateOp::DeletePrefix { ns, prefix } => {
                    let (range, upper) = prefix_range(&prefix);
                    tx.prepare_cached(&format!("DELETE FROM state WHERE ns = ?1 AND {range}"))
                        .and_then(|mut stmt| stmt.execute(params![ns, prefix, upper]))
                        .map_err(err("apply state"))?;
                    continue;
                }
                StateOp::DeleteRange { ns, from, to } => (
                    "DELETE FROM state WHERE ns = ?1 AND key >= ?2 AND key < ?3",
                    vec![Box::new(ns), Box::new(from), Box::new(to)],
                ),
                StateOp::Clear { ns } => ("DELETE FROM state WHERE ns = ?1", vec![Box::new(ns)]),
                StateOp::Pin {
                    owner,
                    min_seq: Some(seq),
                } => (
                    "INSERT INTO pins (owner, min_seq) VALUES (?1, ?2)
                     ON CONFLICT (owner) DO UPDATE SET min_seq = excluded.min_seq",
                    vec![Box::new(owner), Box::new(seq as i64)],
                ),
                StateOp::Pin {
                    owner,
                    min_seq: None,
                } => ("DELETE FROM pins WHERE owner = ?1", vec![Box::new(owner)]),
                // One process writes this database (its writer lock says
                // so): nobody else can hold a rule's lease.
                StateOp::Fence { .. } => continue,
            };
            tx.prepare_cached(sql)
                .and_then(|mut stmt| stmt.execute(params_from_iter(args.iter())))
                .map_err(err("apply state"))?;
        }
        if with_records {
            crate::crash::point("log.append.before_commit");
        }
        tx.commit().map_err(err("commit"))?;
        (self.last_seq, self.last_ingested) = appender.head();
        let committed = appender.finish();
        // Rows and their five index entries, roughly.
        let written: usize = committed
            .stored
            .iter()
            .map(|e| 2 * (e.id.len() + e.source.len() + e.kind.len()) + e.payload.len() + 160)
            .sum();
        self.checkpointer.committed(written + 4096);
        Ok(committed)
    }
}

impl LogWriter for SqliteWriter {
    fn last_seq(&self) -> u64 {
        self.last_seq
    }

    fn last_ingested(&self) -> i64 {
        self.last_ingested
    }

    /// One transaction. When an event's seq turns out to be taken, the
    /// request fails (nothing of it is written) and the writer continues
    /// from the store's seq.
    fn write(
        &mut self,
        groups: Vec<Vec<NewEvent>>,
        ops: Vec<StateOp>,
        now: Stamp,
        dedupe_window: Duration,
    ) -> Result<Committed, StoreError> {
        match self.write_once(groups, ops, now, dedupe_window) {
            Ok(committed) => Ok(committed),
            Err(WriteFailure::Store(e)) => Err(e),
            Err(WriteFailure::SeqTaken) => Err(self.resync()),
        }
    }

    fn prune(
        &mut self,
        policy: &RetentionPolicy,
        now: i64,
        dedupe_window: Duration,
        max_rows: u64,
    ) -> Result<PruneReport, StoreError> {
        let tx = self.conn.transaction().map_err(err("prune"))?;
        let first: Option<i64> = tx
            .query_row("SELECT MIN(seq) FROM events", [], |r| r.get(0))
            .map_err(err("prune"))?;
        let low: Option<i64> = tx
            .query_row("SELECT MIN(min_seq) FROM pins", [], |r| r.get(0))
            .map_err(err("prune"))?;
        let window_start = now.saturating_sub(dedupe_window.as_millis() as i64);
        tx.execute(
            "DELETE FROM dedupe_tombstones WHERE ingested_at < ?1",
            params![window_start],
        )
        .map_err(err("prune tombstones"))?;
        let Some(first) = first else {
            tx.commit().map_err(err("prune"))?;
            return Ok(PruneReport::default());
        };
        let last = self.last_seq as i64;
        let by_age = match policy.max_age {
            Some(age) => {
                let cutoff = now.saturating_sub(age.as_millis() as i64);
                // Ingest stamps grow with seq: walk from the oldest.
                tx.query_row(
                    "SELECT MAX(seq) FROM (
                        SELECT seq, ingested_at FROM events WHERE seq >= ?1 ORDER BY seq LIMIT ?2
                     ) WHERE ingested_at < ?3",
                    params![first, max_rows as i64, cutoff],
                    |r| r.get::<_, Option<i64>>(0),
                )
                .map_err(err("prune"))?
            }
            None => None,
        };
        let cut = prune_cut(policy, first, last, by_age, low, max_rows);
        let mut deleted = 0;
        if cut.cut >= first {
            tx.execute(
                "INSERT OR REPLACE INTO dedupe_tombstones (tenant, id, seq, ingested_at)
                 SELECT tenant, id, seq, ingested_at FROM events
                 WHERE seq BETWEEN ?1 AND ?2 AND ingested_at >= ?3",
                params![first, cut.cut, window_start],
            )
            .map_err(err("prune tombstones"))?;
            deleted = tx
                .execute(
                    "DELETE FROM events WHERE seq BETWEEN ?1 AND ?2",
                    params![first, cut.cut],
                )
                .map_err(err("prune events"))? as u64;
            crate::crash::point("retention.mid_prune");
        }
        tx.commit().map_err(err("prune"))?;
        Ok(cut.report(first, last, deleted))
    }
}
