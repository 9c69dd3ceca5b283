//! The server-grade store: PostgreSQL.
//!
//! The same two traits as the embedded store, on tables in the
//! connection's current schema: the first schema of its `search_path`
//! that exists, or, when none does, the first one named (created then).
//! One database can so hold several independent Sluice stores. The schema
//! is versioned in `schema_version` and migrated forward at open, under
//! an advisory lock so that nodes starting together migrate once; a
//! store whose schema is newer than this build is refused.
//!
//! **Seq.** The log's head (last seq, last ingest stamp) is one row,
//! `log_head`, locked (`FOR UPDATE`) by every append transaction and
//! updated before it commits. Appends therefore commit one after another
//! in seq order: a reader that sees seq `n` committed has every seq below
//! it committed too, and seqs stay gap-free whichever process writes. (A
//! `bigserial` would not do: sequences hand out numbers that commit out
//! of order, and a reader could pass a seq that commits later.) Ingest
//! stamps come from the same row, so they never decrease along seq either.
//!
//! **Several writers.** Every process on the store has a writer of its
//! own; the head row orders their commits. A process learns of commits
//! made elsewhere by polling the head ([`LogBackend::head`]), and seals the
//! log for a deadline by raising the head's stamp
//! ([`LogBackend::raise_floor`]), which every later commit, by any process,
//! stamps at least. Which process runs a rule is decided by leases (the
//! `leases` table, see `engine/cluster.rs`); a transaction made under a
//! lease carries a [`StateOp::Fence`] and commits nothing once the lease
//! has moved on.
//!
//! The store's calls are blocking, like SQLite's: each runs its queries
//! on a small runtime of the store's own ([`Bridge`]), so it may be called
//! from any thread, inside an async runtime or not.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;
use tokio_postgres::types::ToSql;

use super::sqlite::Durability;
use super::store::{
    Appender, Committed, IdGenerator, LogBackend, LogWriter, Pending, PruneReport, RetentionPolicy,
    Stamp, StateOp, StoreError, prefix_upper, prune_cut,
};
use super::{EventQuery, NewEvent};
use crate::event::Event;

/// Schema migrations, applied in order; the index is the version - 1.
const MIGRATIONS: &[&str] = &[
    // 1: the log's head, events, dedupe tombstones, retention pins and
    // engine state. Keys compare bytewise (`COLLATE "C"`), as the engine
    // expects of ranges and prefixes, whatever the database's locale.
    r#"CREATE TABLE log_head (
        id integer PRIMARY KEY CHECK (id = 1),
        seq bigint NOT NULL,
        ingested bigint NOT NULL
    );
    INSERT INTO log_head (id, seq, ingested) VALUES (1, 0, 0);
    CREATE TABLE events (
        seq bigint PRIMARY KEY,
        tenant text COLLATE "C" NOT NULL,
        id text COLLATE "C" NOT NULL,
        source text COLLATE "C" NOT NULL,
        kind text COLLATE "C" NOT NULL,
        time bigint NOT NULL,
        ingested_at bigint NOT NULL,
        payload text NOT NULL,
        hops integer NOT NULL DEFAULT 0
    );
    CREATE INDEX events_by_id ON events (tenant, id);
    CREATE INDEX events_by_tenant ON events (tenant, seq);
    CREATE INDEX events_by_kind ON events (tenant, kind, seq);
    CREATE INDEX events_by_source ON events (tenant, source, seq);
    CREATE INDEX events_by_time ON events (tenant, time);
    CREATE TABLE dedupe_tombstones (
        tenant text COLLATE "C" NOT NULL,
        id text COLLATE "C" NOT NULL,
        seq bigint NOT NULL,
        ingested_at bigint NOT NULL,
        PRIMARY KEY (tenant, id)
    );
    CREATE TABLE pins (
        owner text COLLATE "C" PRIMARY KEY,
        min_seq bigint NOT NULL
    );
    CREATE TABLE state (
        ns text COLLATE "C" NOT NULL,
        key text COLLATE "C" NOT NULL,
        value bytea NOT NULL,
        PRIMARY KEY (ns, key)
    );"#,
    // 2: the nodes sharing the store and the leases by which they own
    // rules (times on the database's clock).
    r#"CREATE TABLE nodes (
        id text COLLATE "C" PRIMARY KEY,
        addr text NOT NULL,
        started timestamptz NOT NULL DEFAULT now(),
        heartbeat timestamptz NOT NULL DEFAULT now(),
        stopping boolean NOT NULL DEFAULT false
    );
    CREATE TABLE leases (
        tenant text COLLATE "C" NOT NULL,
        rule text COLLATE "C" NOT NULL,
        node text COLLATE "C",
        epoch bigint NOT NULL DEFAULT 0,
        expires timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (tenant, rule)
    );
    CREATE INDEX leases_by_node ON leases (node);
    ALTER TABLE events ADD COLUMN lease_node text;
    ALTER TABLE events ADD COLUMN lease_epoch bigint;"#,
];

/// Connections the readers share (the writer has one of its own).
const READERS: usize = 16;

/// Runs the store's queries on a runtime of its own, for callers that
/// block: a call spawns its future there and waits on a plain channel, so
/// it works on any thread, including a worker of another runtime.
struct Bridge {
    rt: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bridge")
    }
}

impl Bridge {
    fn new() -> Result<Self, StoreError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sluice-postgres")
            .enable_all()
            .build()
            .map_err(|e| StoreError::new("start the PostgreSQL client", e))?;
        Ok(Self { rt: Some(rt) })
    }

    fn run<T: Send + 'static>(
        &self,
        context: &str,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let rt = self
            .rt
            .as_ref()
            .ok_or_else(|| StoreError::new(context, "the store is closed"))?;
        rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv()
            .map_err(|_| StoreError::new(context, "the PostgreSQL client stopped"))
    }
}

impl Drop for Bridge {
    /// Stop without waiting: the store may be dropped inside another
    /// runtime, where waiting is not allowed.
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// The PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PostgresBackend {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    bridge: Bridge,
    pool: Pool,
    /// How the writer connects (the pool's readers connect the same way).
    config: tokio_postgres::Config,
    /// The schema holding the tables.
    schema: String,
    durability: Durability,
    rows_read: AtomicU64,
}

fn pg(context: &str) -> impl Fn(tokio_postgres::Error) -> StoreError + '_ {
    move |e| StoreError::new(context, describe(&e))
}

/// A PostgreSQL error with its server message (the driver's own display
/// says only "db error").
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({detail})", db.message()),
            None => db.message().to_owned(),
        },
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        }
    }
}

fn pool_err(context: &str) -> impl Fn(deadpool_postgres::PoolError) -> StoreError + '_ {
    move |e| match e {
        deadpool_postgres::PoolError::Backend(e) => StoreError::new(context, describe(&e)),
        other => StoreError::new(context, other),
    }
}

/// `name` quoted as an SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The first entry of a `search_path` setting (`"$user"` stands for the
/// session user's name).
fn first_schema(search_path: &str, user: &str) -> String {
    let first = search_path.split(',').next().unwrap_or("").trim();
    let unquoted = if first.len() >= 2 && first.starts_with('"') && first.ends_with('"') {
        first[1..first.len() - 1].replace("\"\"", "\"")
    } else {
        first.to_owned()
    };
    match unquoted.as_str() {
        "$user" => user.to_owned(),
        "" => "public".to_owned(),
        _ => unquoted,
    }
}

impl PostgresBackend {
    /// Connect to the database at `url` (a libpq-style URL or key=value
    /// string), creating and migrating the store's tables as needed.
    /// Fails with a clear error when the database cannot be reached or
    /// its schema is newer than this build knows.
    pub fn open(url: &str, durability: Durability) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::new("PostgreSQL URL", describe(&e)))?;
        if config.get_application_name().is_none() {
            config.application_name(format!("sluice pid {}", std::process::id()));
        }
        config.connect_timeout(Duration::from_secs(10));
        let shown = shown_url(&config);
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(READERS)
            .build()
            .map_err(|e| StoreError::new("PostgreSQL pool", e))?;
        let bridge = Bridge::new()?;
        let context = format!("open {shown}");
        let schema = {
            let pool = pool.clone();
            let context = context.clone();
            bridge.run("open", async move { prepare(&pool, &context).await })??
        };
        Ok(Self {
            inner: Arc::new(Inner {
                bridge,
                pool,
                config,
                schema,
                durability,
                rows_read: AtomicU64::new(0),
            }),
        })
    }

    /// The schema holding the store's tables.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// Run `f` with a pooled connection, on the store's runtime.
    fn with_conn<T, F, Fut>(&self, context: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(deadpool_postgres::Object) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send,
    {
        let pool = self.inner.pool.clone();
        self.inner.bridge.run(context, async move {
            let conn = pool.get().await.map_err(pool_err(context))?;
            f(conn).await
        })?
    }

    fn count_rows(&self, n: usize) {
        self.inner.rows_read.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// The URL to show in messages: no password.
fn shown_url(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".to_owned());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{}@{host}:{port}/{}",
        config.get_user().unwrap_or(""),
        config.get_dbname().unwrap_or("")
    )
}

/// Find (creating when missing) the schema of the store and migrate it.
async fn prepare(pool: &Pool, context: &str) -> Result<String, StoreError> {
    let mut conn = pool.get().await.map_err(pool_err(context))?;
    let row = conn
        .query_one(
            "SELECT current_schema(), current_setting('search_path'), session_user::text",
            &[],
        )
        .await
        .map_err(pg(context))?;
    let schema = match row.get::<_, Option<String>>(0) {
        Some(existing) => existing,
        None => first_schema(row.get(1), row.get(2)),
    };
    let tx = conn.transaction().await.map_err(pg(context))?;
    // Nodes starting together migrate one after another.
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&lock_key("migrate", &schema)],
    )
    .await
    .map_err(pg(context))?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.schema_version (
             version integer PRIMARY KEY,
             applied_at bigint NOT NULL
         );",
        schema = quote_ident(&schema)
    ))
    .await
    .map_err(pg(context))?;
    let current: i32 = tx
        .query_one(
            &format!(
                "SELECT COALESCE(MAX(version), 0) FROM {}.schema_version",
                quote_ident(&schema)
            ),
            &[],
        )
        .await
        .map_err(pg(context))?
        .get(0);
    let known = MIGRATIONS.len() as i32;
    if current > known {
        return Err(StoreError::new(
            context,
            format!(
                "schema {schema} is at version {current}, newer than this build knows \
                 ({known}); run a newer sluice"
            ),
        ));
    }
    let now = chrono::Utc::now().timestamp_millis();
    tx.batch_execute(&format!("SET LOCAL search_path = {}", quote_ident(&schema)))
        .await
        .map_err(pg(context))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = i as i32 + 1;
        tx.batch_execute(sql)
            .await
            .map_err(|e| StoreError::new(format!("migration {version}"), describe(&e)))?;
        tx.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES ($1, $2)",
            &[&version, &now],
        )
        .await
        .map_err(pg(context))?;
    }
    tx.commit().await.map_err(pg(context))?;
    Ok(schema)
}

/// An advisory lock's key: `what` within `schema`.
fn lock_key(what: &str, schema: &str) -> i64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("sluice {what} {schema}"));
    i64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// The columns of an event row, in [`row_to_event`]'s order.
const EVENT_COLUMNS: &str = "seq, tenant, id, source, kind, time, payload, hops, ingested_at";

fn row_to_event(r: &tokio_postgres::Row) -> Event {
    Event {
        seq: r.get::<_, i64>(0) as u64,
        tenant: r.get(1),
        id: r.get(2),
        source: r.get(3),
        kind: r.get(4),
        time: r.get(5),
        payload: r.get(6),
        hops: r.get::<_, i32>(7) as u32,
        ingested: r.get(8),
    }
}

/// One argument of a built query.
#[derive(Debug, Clone)]
enum Arg {
    Int(i64),
    Text(String),
}

impl Arg {
    fn as_sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Arg::Int(i) => i,
            Arg::Text(s) => s,
        }
    }
}

fn select_sql(schema: &str, q: &EventQuery) -> (String, Vec<Arg>) {
    let mut sql = format!(
        "SELECT {EVENT_COLUMNS} FROM {}.events WHERE true",
        quote_ident(schema)
    );
    let mut args = Vec::new();
    let mut push = |clause: &str, arg: Arg| {
        args.push(arg);
        sql.push_str(&format!(" AND {clause} ${}", args.len()));
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
        push("seq >", Arg::Int(after.min(i64::MAX as u64) as i64));
    }
    if let Some(until) = q.until_seq {
        push("seq <=", Arg::Int(until.min(i64::MAX as u64) as i64));
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
    sql.push_str(&format!(" ORDER BY seq {order} LIMIT ${}", args.len()));
    (sql, args)
}

impl LogBackend for PostgresBackend {
    /// Open a writer on a connection of its own. Several may write at once,
    /// in this process or others: the head row orders their commits.
    fn open_writer(&self) -> Result<Box<dyn LogWriter>, StoreError> {
        let mut writer = PostgresWriter {
            store: self.clone(),
            conn: None,
            last_seq: 0,
            last_ingested: 0,
            ids: IdGenerator::default(),
        };
        let conn = writer.connect()?;
        let schema = quote_ident(&self.inner.schema);
        let (conn, head) = self.inner.bridge.run("open the writer", async move {
            let head = conn
                .query_one(
                    &format!("SELECT seq, ingested FROM {schema}.log_head WHERE id = 1"),
                    &[],
                )
                .await
                .map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, i64>(1)))
                .map_err(pg("open the writer"));
            (conn, head)
        })?;
        (writer.last_seq, writer.last_ingested) = head?;
        writer.conn = Some(conn);
        Ok(Box::new(writer))
    }

    fn read(&self, query: &EventQuery) -> Result<Vec<Event>, StoreError> {
        let (sql, args) = select_sql(&self.inner.schema, query);
        let events = self.with_conn("read events", move |conn| async move {
            let stmt = conn.prepare_cached(&sql).await.map_err(pg("read events"))?;
            let refs: Vec<&(dyn ToSql + Sync)> = args.iter().map(Arg::as_sql).collect();
            let rows = conn.query(&stmt, &refs).await.map_err(pg("read events"))?;
            Ok(rows.iter().map(row_to_event).collect::<Vec<_>>())
        })?;
        self.count_rows(events.len());
        Ok(events)
    }

    /// The store's tables and indexes (not the database's write-ahead
    /// log, which PostgreSQL shares among databases).
    fn size_bytes(&self) -> Result<u64, StoreError> {
        let schema = self.inner.schema.clone();
        self.with_conn("measure the store", move |conn| async move {
            let row = conn
                .query_one(
                    "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0)::bigint
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname = $1 AND c.relkind = 'r'",
                    &[&schema],
                )
                .await
                .map_err(pg("measure the store"))?;
            Ok(row.get::<_, i64>(0).max(0) as u64)
        })
    }

    fn rows_read(&self) -> u64 {
        self.inner.rows_read.load(Ordering::Relaxed)
    }

    fn shared(&self) -> bool {
        true
    }

    fn head(&self) -> Result<(u64, i64), StoreError> {
        let sql = format!(
            "SELECT seq, ingested FROM {}.log_head WHERE id = 1",
            quote_ident(&self.inner.schema)
        );
        self.with_conn("read the head", move |conn| async move {
            let stmt = conn
                .prepare_cached(&sql)
                .await
                .map_err(pg("read the head"))?;
            let row = conn
                .query_one(&stmt, &[])
                .await
                .map_err(pg("read the head"))?;
            Ok((row.get::<_, i64>(0) as u64, row.get(1)))
        })
    }

    /// Raise the head's stamp: the head row is locked by every append, so
    /// an append either committed before (its seq is at or below the head
    /// returned) or stamps at least `at`.
    fn raise_floor(&self, at: i64) -> Result<(u64, i64), StoreError> {
        let sql = format!(
            "UPDATE {}.log_head SET ingested = GREATEST(ingested, $1) WHERE id = 1
             RETURNING seq, ingested",
            quote_ident(&self.inner.schema)
        );
        self.with_conn("raise the floor", move |conn| async move {
            let stmt = conn
                .prepare_cached(&sql)
                .await
                .map_err(pg("raise the floor"))?;
            let row = conn
                .query_one(&stmt, &[&at])
                .await
                .map_err(pg("raise the floor"))?;
            Ok((row.get::<_, i64>(0) as u64, row.get(1)))
        })
    }

    fn last_seq(&self) -> Result<u64, StoreError> {
        let sql = format!(
            "SELECT seq FROM {}.log_head WHERE id = 1",
            quote_ident(&self.inner.schema)
        );
        self.with_conn("last seq", move |conn| async move {
            let row = conn.query_one(&sql, &[]).await.map_err(pg("last seq"))?;
            Ok(row.get::<_, i64>(0) as u64)
        })
    }

    fn state_get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let sql = format!(
            "SELECT value FROM {}.state WHERE ns = $1 AND key = $2",
            quote_ident(&self.inner.schema)
        );
        let (ns, key) = (ns.to_owned(), key.to_owned());
        self.with_conn("read state", move |conn| async move {
            let stmt = conn.prepare_cached(&sql).await.map_err(pg("read state"))?;
            let row = conn
                .query_opt(&stmt, &[&ns, &key])
                .await
                .map_err(pg("read state"))?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn state_scan(&self, ns: &str, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let schema = quote_ident(&self.inner.schema);
        let ns = ns.to_owned();
        let prefix = prefix.to_owned();
        self.with_conn("scan state", move |conn| async move {
            let rows = match (prefix.is_empty(), prefix_upper(&prefix)) {
                (true, _) => {
                    let sql =
                        format!("SELECT key, value FROM {schema}.state WHERE ns = $1 ORDER BY key");
                    let stmt = conn.prepare_cached(&sql).await.map_err(pg("scan state"))?;
                    conn.query(&stmt, &[&ns]).await
                }
                (false, Some(upper)) => {
                    let sql = format!(
                        "SELECT key, value FROM {schema}.state
                         WHERE ns = $1 AND key >= $2 AND key < $3 ORDER BY key"
                    );
                    let stmt = conn.prepare_cached(&sql).await.map_err(pg("scan state"))?;
                    conn.query(&stmt, &[&ns, &prefix, &upper]).await
                }
                (false, None) => {
                    let sql = format!(
                        "SELECT key, value FROM {schema}.state
                         WHERE ns = $1 AND starts_with(key, $2) ORDER BY key"
                    );
                    let stmt = conn.prepare_cached(&sql).await.map_err(pg("scan state"))?;
                    conn.query(&stmt, &[&ns, &prefix]).await
                }
            }
            .map_err(pg("scan state"))?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    fn read_seqs(&self, tenant: &str, seqs: &[u64]) -> Result<Vec<Event>, StoreError> {
        let seqs: Vec<i64> = seqs
            .iter()
            .map(|&s| s.min(i64::MAX as u64) as i64)
            .collect();
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM {}.events
             WHERE seq = ANY($1) AND tenant = $2 ORDER BY seq",
            quote_ident(&self.inner.schema)
        );
        let tenant = tenant.to_owned();
        let events = self.with_conn("read events by seq", move |conn| async move {
            let stmt = conn
                .prepare_cached(&sql)
                .await
                .map_err(pg("read events by seq"))?;
            let rows = conn
                .query(&stmt, &[&seqs, &tenant])
                .await
                .map_err(pg("read events by seq"))?;
            Ok(rows.iter().map(row_to_event).collect::<Vec<_>>())
        })?;
        self.count_rows(events.len());
        Ok(events)
    }

    fn low_water(&self) -> Result<Option<u64>, StoreError> {
        let sql = format!(
            "SELECT MIN(min_seq) FROM {}.pins",
            quote_ident(&self.inner.schema)
        );
        self.with_conn("read pins", move |conn| async move {
            let row = conn.query_one(&sql, &[]).await.map_err(pg("read pins"))?;
            Ok(row.get::<_, Option<i64>>(0).map(|s| s as u64))
        })
    }
}

/// The writer: one connection of its own. A lost connection is opened
/// again at the next write; the write that found it lost fails, with
/// nothing of it committed.
struct PostgresWriter {
    store: PostgresBackend,
    conn: Option<tokio_postgres::Client>,
    /// The head of the log as of this writer's last commit (the head row
    /// is the truth: each transaction reads it again).
    last_seq: u64,
    last_ingested: i64,
    ids: IdGenerator,
}

impl PostgresWriter {
    /// Keep the connection for the next write unless the write failed in
    /// a way that may have lost it (the driver can notice a terminated
    /// connection only after the error): then the next write opens a new
    /// one. A refused fence says nothing against the connection.
    fn keep(&mut self, conn: tokio_postgres::Client, failed: Option<&StoreError>) {
        if !conn.is_closed() && failed.is_none_or(StoreError::is_fenced) {
            self.conn = Some(conn);
        }
    }

    /// Open the writer's connection.
    fn connect(&self) -> Result<tokio_postgres::Client, StoreError> {
        let inner = &self.store.inner;
        let config = inner.config.clone();
        let schema = inner.schema.clone();
        let synchronous = match inner.durability {
            Durability::Full => "on",
            Durability::Normal => "off",
        };
        inner.bridge.run("open the writer", async move {
            let context = "open the writer";
            let (client, connection) = config.connect(NoTls).await.map_err(pg(context))?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(error = %describe(&e), "the log writer's PostgreSQL connection ended");
                }
            });
            client
                .batch_execute(&format!(
                    "SET synchronous_commit = {synchronous}; SET search_path = {}",
                    quote_ident(&schema)
                ))
                .await
                .map_err(pg(context))?;
            Ok(client)
        })?
    }
}

/// Rows of consecutive state ops of one kind, written in one statement.
enum Run {
    Put(Vec<String>, Vec<String>, Vec<Vec<u8>>),
    Delete(Vec<String>, Vec<String>),
}

/// The append transaction: lock the head, dedupe, insert the events,
/// apply the state ops, move the head, commit. Returns what was committed
/// and the new head.
async fn append_tx(
    conn: &mut tokio_postgres::Client,
    groups: Vec<Vec<Pending>>,
    ops: Vec<StateOp>,
    now: Stamp,
    dedupe_window: Duration,
    known_head: (u64, i64),
) -> Result<(Committed, u64, i64), StoreError> {
    let tx = conn.transaction().await.map_err(pg("append"))?;
    // Fences first: a node that lost a lease commits nothing, and waits
    // for nobody's head lock to find out. `FOR SHARE` holds the lease row
    // until the commit, so a take-over waits for this transaction.
    let (fences, ops): (Vec<StateOp>, Vec<StateOp>) = ops
        .into_iter()
        .partition(|op| matches!(op, StateOp::Fence { .. }));
    // The lease events are written under, kept on them (an audit: along
    // seq, a rule's epochs never go back): by each rule's source, since a
    // transaction merged from several rules' requests holds their fences
    // all.
    let mut under = Leases::default();
    for fence in fences {
        let StateOp::Fence {
            tenant,
            rule,
            node,
            epoch,
        } = fence
        else {
            continue;
        };
        let held = tx
            .query_opt(
                "SELECT 1 FROM leases WHERE tenant = $1 AND rule = $2 AND node = $3 AND epoch = $4
                 FOR SHARE",
                &[&tenant, &rule, &node, &(epoch as i64)],
            )
            .await
            .map_err(pg("fence"))?;
        under.add(&tenant, &rule, &node, epoch as i64);
        if held.is_none() {
            return Err(StoreError::new(
                super::store::FENCED,
                format!(
                    "the lease of rule {tenant}/{rule} is no longer node {node}'s at epoch {epoch}; \
                     nothing was written"
                ),
            ));
        }
    }
    // State alone (a rule's step, no records) takes no seq: it leaves the
    // head alone, and so never waits for another node's append.
    if groups.iter().all(Vec::is_empty) {
        apply_ops(&tx, ops).await?;
        tx.commit().await.map_err(pg("commit"))?;
        let committed = Committed {
            outcomes: groups.iter().map(|_| Vec::new()).collect(),
            ids: groups.iter().map(|_| Vec::new()).collect(),
            stored: Vec::new(),
        };
        return Ok((committed, known_head.0, known_head.1));
    }
    let head = tx
        .query_one(
            "SELECT seq, ingested FROM log_head WHERE id = 1 FOR UPDATE",
            &[],
        )
        .await
        .map_err(pg("append"))?;
    let (last_seq, last_ingested) = (head.get::<_, i64>(0) as u64, head.get::<_, i64>(1));
    let mut appender = Appender::new(now, last_seq, last_ingested, dedupe_window);

    // Every client id of the request, looked up at once: the newest event
    // with it, else its tombstone.
    let (tenants, ids): (Vec<&str>, Vec<&str>) = groups
        .iter()
        .flatten()
        .filter(|p| p.given)
        .map(|p| (p.event.tenant.as_str(), p.id.as_str()))
        .unzip();
    let mut seen: HashMap<(String, String), (u64, i64)> = HashMap::new();
    if !tenants.is_empty() {
        let rows = tx
            .query(
                "SELECT k.tenant, k.id, e.seq, e.ingested_at, 0 AS source
                 FROM unnest($1::text[], $2::text[]) AS k(tenant, id)
                 CROSS JOIN LATERAL (
                     SELECT seq, ingested_at FROM events
                     WHERE tenant = k.tenant AND id = k.id ORDER BY seq DESC LIMIT 1
                 ) e
                 UNION ALL
                 SELECT t.tenant, t.id, t.seq, t.ingested_at, 1
                 FROM unnest($1::text[], $2::text[]) AS k(tenant, id)
                 JOIN dedupe_tombstones t ON t.tenant = k.tenant AND t.id = k.id",
                &[&tenants, &ids],
            )
            .await
            .map_err(pg("dedupe lookup"))?;
        // A stored event wins over a tombstone (it is newer).
        for r in rows.iter().filter(|r| r.get::<_, i32>(4) == 1) {
            seen.insert((r.get(0), r.get(1)), (r.get::<_, i64>(2) as u64, r.get(3)));
        }
        for r in rows.iter().filter(|r| r.get::<_, i32>(4) == 0) {
            seen.insert((r.get(0), r.get(1)), (r.get::<_, i64>(2) as u64, r.get(3)));
        }
    }

    let mut columns = EventColumns::default();
    let many = groups.len() > 1;
    for (g, group) in groups.into_iter().enumerate() {
        if many && g == 1 {
            crate::crash::point("log.append.mid_group");
        }
        for p in group {
            let key = p.given.then(|| (p.event.tenant.clone(), p.id.clone()));
            let last = key.as_ref().and_then(|k| seen.get(k).copied());
            let Some(event) = appender.take(p, last) else {
                continue;
            };
            columns.push(event);
            if let Some(key) = key {
                // A later copy in the same request is a duplicate of this.
                seen.insert(key, (event.seq, event.ingested));
            }
        }
        appender.end_group();
    }
    let (next_head, stamp) = appender.head();
    let committed = appender.finish();
    if !committed.stored.is_empty() {
        columns.insert(&tx, &under).await?;
        tx.execute(
            "UPDATE log_head SET seq = $1, ingested = $2 WHERE id = 1",
            &[&(next_head as i64), &stamp],
        )
        .await
        .map_err(pg("append"))?;
    }
    let with_records = !committed.stored.is_empty();
    if with_records && !ops.is_empty() {
        crate::crash::point("log.transact.between_records_and_state");
    }
    apply_ops(&tx, ops).await?;
    if with_records {
        crate::crash::point("log.append.before_commit");
    }
    tx.commit().await.map_err(pg("commit"))?;
    Ok((committed, next_head, stamp))
}

/// The leases a transaction's fences name, by (tenant, rule source).
#[derive(Default)]
struct Leases(HashMap<(String, String), (String, i64)>);

impl Leases {
    fn add(&mut self, tenant: &str, rule: &str, node: &str, epoch: i64) {
        let rule = (tenant.to_owned(), crate::records::rule_source(rule));
        self.0.insert(rule, (node.to_owned(), epoch));
    }

    /// The lease an event of `tenant` from `source` is written under: the
    /// transaction's one lease, or (merged from several rules' requests)
    /// its rule's.
    fn of(&self, tenant: &str, source: &str) -> Option<&(String, i64)> {
        match self.0.len() {
            1 => self.0.values().next(),
            _ => self.0.get(&(tenant.to_owned(), source.to_owned())),
        }
    }
}

/// Events to insert, column by column (one `INSERT … SELECT unnest(…)`).
#[derive(Default)]
struct EventColumns {
    seq: Vec<i64>,
    tenant: Vec<String>,
    id: Vec<String>,
    source: Vec<String>,
    kind: Vec<String>,
    time: Vec<i64>,
    ingested: Vec<i64>,
    payload: Vec<String>,
    hops: Vec<i32>,
}

impl EventColumns {
    fn push(&mut self, e: &Event) {
        self.seq.push(e.seq as i64);
        self.tenant.push(e.tenant.clone());
        self.id.push(e.id.clone());
        self.source.push(e.source.clone());
        self.kind.push(e.kind.clone());
        self.time.push(e.time);
        self.ingested.push(e.ingested);
        self.payload.push(e.payload.clone());
        self.hops.push(e.hops.min(i32::MAX as u32) as i32);
    }

    async fn insert(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        under: &Leases,
    ) -> Result<(), StoreError> {
        let (node, epoch): (Vec<Option<&str>>, Vec<Option<i64>>) = self
            .tenant
            .iter()
            .zip(&self.source)
            .map(|(t, s)| match under.of(t, s) {
                Some((n, e)) => (Some(n.as_str()), Some(*e)),
                None => (None, None),
            })
            .unzip();
        tx.execute(
            "INSERT INTO events (seq, tenant, id, source, kind, time, ingested_at, payload, hops,
                                 lease_node, lease_epoch)
             SELECT *
             FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[],
                         $6::bigint[], $7::bigint[], $8::text[], $9::integer[],
                         $10::text[], $11::bigint[])",
            &[
                &self.seq,
                &self.tenant,
                &self.id,
                &self.source,
                &self.kind,
                &self.time,
                &self.ingested,
                &self.payload,
                &self.hops,
                &node,
                &epoch,
            ],
        )
        .await
        .map_err(pg("insert events"))?;
        Ok(())
    }
}

/// Apply state ops in order; runs of puts (and of deletes) go in one
/// statement each.
async fn apply_ops(
    tx: &tokio_postgres::Transaction<'_>,
    ops: Vec<StateOp>,
) -> Result<(), StoreError> {
    let mut run: Option<Run> = None;
    for op in ops {
        match (op, &mut run) {
            (StateOp::Put { ns, key, value }, Some(Run::Put(n, k, v))) => {
                n.push(ns);
                k.push(key);
                v.push(value);
            }
            (StateOp::Delete { ns, key }, Some(Run::Delete(n, k))) => {
                n.push(ns);
                k.push(key);
            }
            (op, _) => {
                if let Some(done) = run.take() {
                    flush(tx, done).await?;
                }
                match op {
                    StateOp::Put { ns, key, value } => {
                        run = Some(Run::Put(vec![ns], vec![key], vec![value]));
                    }
                    StateOp::Delete { ns, key } => run = Some(Run::Delete(vec![ns], vec![key])),
                    other => apply_one(tx, other).await?,
                }
            }
        }
    }
    if let Some(done) = run {
        flush(tx, done).await?;
    }
    Ok(())
}

async fn flush(tx: &tokio_postgres::Transaction<'_>, run: Run) -> Result<(), StoreError> {
    match run {
        Run::Put(ns, keys, values) => {
            // One statement may not update a row twice: the last put of a
            // key wins, as it would one statement at a time.
            let mut last: HashMap<(&str, &str), usize> = HashMap::new();
            for (i, (n, k)) in ns.iter().zip(&keys).enumerate() {
                last.insert((n.as_str(), k.as_str()), i);
            }
            let mut keep: Vec<usize> = last.into_values().collect();
            keep.sort_unstable();
            let ns: Vec<&str> = keep.iter().map(|&i| ns[i].as_str()).collect();
            let k: Vec<&str> = keep.iter().map(|&i| keys[i].as_str()).collect();
            let v: Vec<&[u8]> = keep.iter().map(|&i| values[i].as_slice()).collect();
            tx.execute(
                "INSERT INTO state (ns, key, value)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[])
                 ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value",
                &[&ns, &k, &v],
            )
            .await
            .map_err(pg("apply state"))?;
        }
        Run::Delete(ns, keys) => {
            tx.execute(
                "DELETE FROM state s USING unnest($1::text[], $2::text[]) AS d(ns, key)
                 WHERE s.ns = d.ns AND s.key = d.key",
                &[&ns, &keys],
            )
            .await
            .map_err(pg("apply state"))?;
        }
    }
    Ok(())
}

async fn apply_one(tx: &tokio_postgres::Transaction<'_>, op: StateOp) -> Result<(), StoreError> {
    let result = match op {
        StateOp::Put { .. } | StateOp::Delete { .. } | StateOp::Fence { .. } => {
            unreachable!("batched in runs, or checked first")
        }
        StateOp::DeletePrefix { ns, prefix } => match prefix_upper(&prefix) {
            _ if prefix.is_empty() => tx.execute("DELETE FROM state WHERE ns = $1", &[&ns]).await,
            Some(upper) => {
                tx.execute(
                    "DELETE FROM state WHERE ns = $1 AND key >= $2 AND key < $3",
                    &[&ns, &prefix, &upper],
                )
                .await
            }
            None => {
                tx.execute(
                    "DELETE FROM state WHERE ns = $1 AND starts_with(key, $2)",
                    &[&ns, &prefix],
                )
                .await
            }
        },
        StateOp::DeleteRange { ns, from, to } => {
            tx.execute(
                "DELETE FROM state WHERE ns = $1 AND key >= $2 AND key < $3",
                &[&ns, &from, &to],
            )
            .await
        }
        StateOp::Clear { ns } => tx.execute("DELETE FROM state WHERE ns = $1", &[&ns]).await,
        StateOp::Pin {
            owner,
            min_seq: Some(seq),
        } => {
            tx.execute(
                "INSERT INTO pins (owner, min_seq) VALUES ($1, $2)
                 ON CONFLICT (owner) DO UPDATE SET min_seq = excluded.min_seq",
                &[&owner, &(seq.min(i64::MAX as u64) as i64)],
            )
            .await
        }
        StateOp::Pin {
            owner,
            min_seq: None,
        } => {
            tx.execute("DELETE FROM pins WHERE owner = $1", &[&owner])
                .await
        }
    };
    result.map(drop).map_err(pg("apply state"))
}

impl LogWriter for PostgresWriter {
    fn last_seq(&self) -> u64 {
        self.last_seq
    }

    fn last_ingested(&self) -> i64 {
        self.last_ingested
    }

    /// One transaction; on failure, a connection that went away is
    /// dropped so the next write opens a new one.
    fn write(
        &mut self,
        groups: Vec<Vec<NewEvent>>,
        ops: Vec<StateOp>,
        now: Stamp,
        dedupe_window: Duration,
    ) -> Result<Committed, StoreError> {
        let mut conn = match self.conn.take() {
            Some(c) if !c.is_closed() => c,
            _ => self.connect()?,
        };
        // Ids first: the generator is the writer's (the transaction
        // stamps from the head it reads).
        let groups = Appender::new(now, self.last_seq, self.last_ingested, dedupe_window)
            .pending(groups, &mut self.ids);
        let head = (self.last_seq, self.last_ingested);
        let (conn, result) = self.store.inner.bridge.run("append", async move {
            let result = append_tx(&mut conn, groups, ops, now, dedupe_window, head).await;
            (conn, result)
        })?;
        self.keep(conn, result.as_ref().err());
        let (committed, last_seq, last_ingested) = result?;
        self.last_seq = last_seq;
        self.last_ingested = last_ingested;
        Ok(committed)
    }

    fn prune(
        &mut self,
        policy: &RetentionPolicy,
        now: i64,
        dedupe_window: Duration,
        max_rows: u64,
    ) -> Result<PruneReport, StoreError> {
        let mut conn = match self.conn.take() {
            Some(c) if !c.is_closed() => c,
            _ => self.connect()?,
        };
        let policy = policy.clone();
        let (conn, result) = self.store.inner.bridge.run("prune", async move {
            let result = prune_tx(&mut conn, &policy, now, dedupe_window, max_rows).await;
            (conn, result)
        })?;
        self.keep(conn, result.as_ref().err());
        result
    }
}

async fn prune_tx(
    conn: &mut tokio_postgres::Client,
    policy: &RetentionPolicy,
    now: i64,
    dedupe_window: Duration,
    max_rows: u64,
) -> Result<PruneReport, StoreError> {
    let context = "prune";
    let tx = conn.transaction().await.map_err(pg(context))?;
    let row = tx
        .query_one(
            "SELECT (SELECT MIN(seq) FROM events), (SELECT MIN(min_seq) FROM pins),
                    (SELECT seq FROM log_head WHERE id = 1)",
            &[],
        )
        .await
        .map_err(pg(context))?;
    let (first, low, last): (Option<i64>, Option<i64>, i64) = (row.get(0), row.get(1), row.get(2));
    let window_start = now.saturating_sub(dedupe_window.as_millis() as i64);
    tx.execute(
        "DELETE FROM dedupe_tombstones WHERE ingested_at < $1",
        &[&window_start],
    )
    .await
    .map_err(pg("prune tombstones"))?;
    let Some(first) = first else {
        tx.commit().await.map_err(pg(context))?;
        return Ok(PruneReport::default());
    };
    let by_age = match policy.max_age {
        Some(age) => {
            let cutoff = now.saturating_sub(age.as_millis() as i64);
            // Ingest stamps grow with seq: walk from the oldest.
            tx.query_one(
                "SELECT MAX(seq) FROM (
                     SELECT seq, ingested_at FROM events WHERE seq >= $1 ORDER BY seq LIMIT $2
                 ) oldest WHERE ingested_at < $3",
                &[&first, &(max_rows.min(i64::MAX as u64) as i64), &cutoff],
            )
            .await
            .map_err(pg(context))?
            .get::<_, Option<i64>>(0)
        }
        None => None,
    };
    let cut = prune_cut(policy, first, last, by_age, low, max_rows);
    let mut deleted = 0;
    if cut.cut >= first {
        tx.execute(
            "INSERT INTO dedupe_tombstones (tenant, id, seq, ingested_at)
             SELECT tenant, id, seq, ingested_at FROM events
             WHERE seq BETWEEN $1 AND $2 AND ingested_at >= $3
             ON CONFLICT (tenant, id) DO UPDATE
                 SET seq = excluded.seq, ingested_at = excluded.ingested_at",
            &[&first, &cut.cut, &window_start],
        )
        .await
        .map_err(pg("prune tombstones"))?;
        deleted = tx
            .execute(
                "DELETE FROM events WHERE seq BETWEEN $1 AND $2",
                &[&first, &cut.cut],
            )
            .await
            .map_err(pg("prune events"))?;
        crate::crash::point("retention.mid_prune");
    }
    tx.commit().await.map_err(pg(context))?;
    Ok(cut.report(first, last, deleted))
}

/// A node sharing the store, as the `nodes` table has it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NodeRow {
    /// The node's id.
    pub id: String,
    /// Where it serves the API (`http://host:port`).
    pub addr: String,
    /// When it joined (ms since the epoch, the database's clock).
    pub started: i64,
    /// Its last heartbeat (ms since the epoch, the database's clock).
    pub heartbeat: i64,
    /// Whether its heartbeat is within the lease time-to-live and it is
    /// not shutting down.
    pub live: bool,
}

/// A rule's lease, as the `leases` table has it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LeaseRow {
    /// The rule's tenant.
    pub tenant: String,
    /// The rule.
    pub rule: String,
    /// The node holding it (`None`: released).
    pub node: Option<String>,
    /// Bumped at every take-over: the fencing token.
    pub epoch: u64,
    /// Milliseconds until it expires (negative: expired).
    pub expires_in: i64,
}

/// Milliseconds of an interval, for SQL.
fn ttl_ms(ttl: Duration) -> i64 {
    ttl.as_millis().min(i64::MAX as u128) as i64
}

const MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// Nodes and leases: how several processes share the rules of one store
/// (see `engine/cluster.rs`). Times are the database's, so nodes' clocks
/// need not agree.
impl PostgresBackend {
    fn run_sql<T, F, Fut>(&self, context: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(deadpool_postgres::Object, String) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, tokio_postgres::Error>> + Send,
    {
        let schema = quote_ident(&self.inner.schema);
        self.with_conn(context, move |conn| async move {
            f(conn, schema).await.map_err(pg(context))
        })
    }

    /// Join (or rejoin) as node `id`, serving at `addr`.
    pub fn join(&self, id: &str, addr: &str) -> Result<(), StoreError> {
        let (id, addr) = (id.to_owned(), addr.to_owned());
        self.run_sql("join the cluster", move |conn, s| async move {
            conn.execute(
                &format!(
                    "INSERT INTO {s}.nodes (id, addr) VALUES ($1, $2)
                     ON CONFLICT (id) DO UPDATE
                         SET addr = excluded.addr, heartbeat = now(), stopping = false"
                ),
                &[&id, &addr],
            )
            .await
            .map(drop)
        })
    }

    /// Beat node `id`'s heart and list every node, live or not (nodes
    /// silent for a day are forgotten).
    pub fn heartbeat(&self, id: &str, ttl: Duration) -> Result<Vec<NodeRow>, StoreError> {
        let id = id.to_owned();
        let ttl = ttl_ms(ttl);
        self.run_sql("heartbeat", move |conn, s| async move {
            conn.execute(
                &format!("UPDATE {s}.nodes SET heartbeat = clock_timestamp() WHERE id = $1"),
                &[&id],
            )
            .await?;
            conn.execute(
                &format!(
                    "DELETE FROM {s}.nodes WHERE heartbeat < clock_timestamp() - interval '1 day'"
                ),
                &[],
            )
            .await?;
            let rows = conn.query(&nodes_sql(&s), &[&ttl]).await?;
            Ok(rows.iter().map(node_row).collect())
        })
    }

    /// Every node, live or not (a read: no heartbeat).
    pub fn nodes(&self, ttl: Duration) -> Result<Vec<NodeRow>, StoreError> {
        let ttl = ttl_ms(ttl);
        self.run_sql("read nodes", move |conn, s| async move {
            let rows = conn.query(&nodes_sql(&s), &[&ttl]).await?;
            Ok(rows.iter().map(node_row).collect())
        })
    }

    /// Every lease.
    pub fn leases(&self) -> Result<Vec<LeaseRow>, StoreError> {
        self.run_sql("read leases", move |conn, s| async move {
            let rows = conn
                .query(
                    &format!(
                        "SELECT tenant, rule, node, epoch,
                                (extract(epoch from expires - clock_timestamp()) * 1000)::bigint
                         FROM {s}.leases ORDER BY tenant, rule"
                    ),
                    &[],
                )
                .await?;
            Ok(rows.iter().map(lease_row).collect())
        })
    }

    /// The lease of one rule, if it has one.
    pub fn lease_of(&self, tenant: &str, rule: &str) -> Result<Option<LeaseRow>, StoreError> {
        let (tenant, rule) = (tenant.to_owned(), rule.to_owned());
        self.run_sql("read a lease", move |conn, s| async move {
            let row = conn
                .query_opt(
                    &format!(
                        "SELECT tenant, rule, node, epoch,
                                (extract(epoch from expires - clock_timestamp()) * 1000)::bigint
                         FROM {s}.leases WHERE tenant = $1 AND rule = $2"
                    ),
                    &[&tenant, &rule],
                )
                .await?;
            Ok(row.as_ref().map(lease_row))
        })
    }

    /// Take the lease of a rule for `node` if nobody holds it (released,
    /// expired or never taken): the epoch it now has, bumped so that the
    /// previous holder's writes are refused. `None` while another node
    /// holds it.
    pub fn acquire(
        &self,
        tenant: &str,
        rule: &str,
        node: &str,
        ttl: Duration,
    ) -> Result<Option<u64>, StoreError> {
        let (tenant, rule, node) = (tenant.to_owned(), rule.to_owned(), node.to_owned());
        let ttl = ttl_ms(ttl);
        self.run_sql("take a lease", move |conn, s| async move {
            let row = conn
                .query_opt(
                    &format!(
                        "INSERT INTO {s}.leases AS l (tenant, rule, node, epoch, expires)
                         VALUES ($1, $2, $3, 1, clock_timestamp() + make_interval(secs => $4::bigint / 1000.0))
                         ON CONFLICT (tenant, rule) DO UPDATE
                             SET node = excluded.node, epoch = l.epoch + 1, expires = excluded.expires
                             WHERE l.node IS NULL OR l.expires < clock_timestamp()
                         RETURNING epoch"
                    ),
                    &[&tenant, &rule, &node, &ttl],
                )
                .await?;
            Ok(row.map(|r| r.get::<_, i64>(0) as u64))
        })
    }

    /// Extend the leases `node` holds (rule, epoch); the ones it still
    /// holds come back, the others were lost.
    pub fn renew(
        &self,
        node: &str,
        held: &[(String, String, u64)],
        ttl: Duration,
    ) -> Result<Vec<(String, String)>, StoreError> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let node = node.to_owned();
        let ttl = ttl_ms(ttl);
        let tenants: Vec<String> = held.iter().map(|h| h.0.clone()).collect();
        let rules: Vec<String> = held.iter().map(|h| h.1.clone()).collect();
        let epochs: Vec<i64> = held.iter().map(|h| h.2 as i64).collect();
        self.run_sql("renew leases", move |conn, s| async move {
            let rows = conn
                .query(
                    &format!(
                        "UPDATE {s}.leases AS l
                         SET expires = clock_timestamp() + make_interval(secs => $5::bigint / 1000.0)
                         FROM unnest($2::text[], $3::text[], $4::bigint[]) AS h(tenant, rule, epoch)
                         WHERE l.node = $1 AND l.tenant = h.tenant AND l.rule = h.rule
                           AND l.epoch = h.epoch
                         RETURNING l.tenant, l.rule"
                    ),
                    &[&node, &tenants, &rules, &epochs, &ttl],
                )
                .await?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    /// Give a lease up, so that another node takes it at once.
    pub fn release(
        &self,
        tenant: &str,
        rule: &str,
        node: &str,
        epoch: u64,
    ) -> Result<(), StoreError> {
        let (tenant, rule, node) = (tenant.to_owned(), rule.to_owned(), node.to_owned());
        self.run_sql("release a lease", move |conn, s| async move {
            conn.execute(
                &format!(
                    "UPDATE {s}.leases SET node = NULL, expires = clock_timestamp()
                     WHERE tenant = $1 AND rule = $2 AND node = $3 AND epoch = $4"
                ),
                &[&tenant, &rule, &node, &(epoch as i64)],
            )
            .await
            .map(drop)
        })
    }

    /// Forget the lease of a rule that is gone (undeployed).
    pub fn drop_lease(&self, tenant: &str, rule: &str) -> Result<(), StoreError> {
        let (tenant, rule) = (tenant.to_owned(), rule.to_owned());
        self.run_sql("drop a lease", move |conn, s| async move {
            conn.execute(
                &format!("DELETE FROM {s}.leases WHERE tenant = $1 AND rule = $2"),
                &[&tenant, &rule],
            )
            .await
            .map(drop)
        })
    }

    /// Leave: release every lease `node` holds and say it is stopping.
    pub fn leave(&self, node: &str) -> Result<(), StoreError> {
        let node = node.to_owned();
        self.run_sql("leave the cluster", move |conn, s| async move {
            conn.execute(
                &format!(
                    "UPDATE {s}.leases SET node = NULL, expires = clock_timestamp() WHERE node = $1"
                ),
                &[&node],
            )
            .await?;
            conn.execute(
                &format!("UPDATE {s}.nodes SET stopping = true WHERE id = $1"),
                &[&node],
            )
            .await
            .map(drop)
        })
    }

    /// The database's clock (ms since the epoch).
    pub fn db_now(&self) -> Result<i64, StoreError> {
        self.run_sql("read the clock", move |conn, _| async move {
            Ok(conn.query_one(&format!("SELECT {MS}"), &[]).await?.get(0))
        })
    }
}

/// Every node, live (`$1`: the lease TTL in ms) or not.
fn nodes_sql(schema: &str) -> String {
    format!(
        "SELECT id, addr,
                (extract(epoch from started) * 1000)::bigint,
                (extract(epoch from heartbeat) * 1000)::bigint,
                NOT stopping AND heartbeat > clock_timestamp() - make_interval(secs => $1::bigint / 1000.0)
         FROM {schema}.nodes ORDER BY id"
    )
}

fn node_row(r: &tokio_postgres::Row) -> NodeRow {
    NodeRow {
        id: r.get(0),
        addr: r.get(1),
        started: r.get(2),
        heartbeat: r.get(3),
        live: r.get(4),
    }
}

fn lease_row(r: &tokio_postgres::Row) -> LeaseRow {
    LeaseRow {
        tenant: r.get(0),
        rule: r.get(1),
        node: r.get(2),
        epoch: r.get::<_, i64>(3) as u64,
        expires_in: r.get(4),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_schema_of_a_search_path() {
        assert_eq!(first_schema("\"$user\", public", "ann"), "ann");
        assert_eq!(first_schema("t_1, public", "ann"), "t_1");
        assert_eq!(first_schema("\"My \"\"S\"\"\", x", "ann"), "My \"S\"");
        assert_eq!(first_schema("", "ann"), "public");
    }

    #[test]
    fn prefixes_have_a_text_upper_bound() {
        assert_eq!(prefix_upper("ab"), Some("ac".to_owned()));
        assert_eq!(prefix_upper("fire/é"), Some("fire/ê".to_owned()));
        assert_eq!(prefix_upper(""), None);
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
