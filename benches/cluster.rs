//! Sluice on PostgreSQL, measured in one run (a bench binary; each part
//! prints its figures, and a table to paste into the README comes last).
//! It starts a throwaway PostgreSQL of its own (`scripts/pg.sh`, fsync on).
//!
//! 1. **ingest**: `EventLog::append` on PostgreSQL against a raw loop
//!    into the same schema (one prepared `INSERT` per event, one
//!    transaction per batch, no dedupe, no head row), batches of 100 and
//!    10 000, synchronous commit on, in the same run;
//! 2. **scale**: 300 rules over 30 tenants (the PR digest, batches of 10
//!    per repository) catching up on a backlog, on 1, 2 and 3 nodes, each
//!    node capped to the same CPU share (a cgroup CPU quota; `taskset` to
//!    one core where cgroups cannot be written); rule-events per second
//!    and PostgreSQL's own CPU;
//! 3. **peer workload**: 1 000 000 `push` events (1 000 repositories
//!    interleaved, windows of 500) through one node on PostgreSQL
//!    (`sluice ingest --store` beside `sluice serve --store`, until the
//!    rule has read the last event) against `sluice run` on SQLite with
//!    the same rule and events, and against log-only ingest on each;
//! 4. **take-over**: how long from `kill -9` (and from SIGTERM) of a node
//!    until every rule it ran is active on another node (3 nodes, 30
//!    rules, lease TTL 2 s), p50 and max over the rounds.
//!
//! Run: `cargo bench -p sluice --bench cluster` (about 4 minutes).
//! `SLUICE_BENCH_ONLY=ingest|scale|peer|takeover` runs one part;
//! `SLUICE_BENCH_PEER` (default 1 000 000) sets the peer workload's events;
//! `SLUICE_BENCH_EVENTS` (default 200 000) sets the ingest runs' length,
//! `SLUICE_BENCH_BACKLOG` (default 1 000 events a tenant) the backlog,
//! `SLUICE_BENCH_CPU` (default 0.3) each node's CPU share,
//! `SLUICE_BENCH_NODES` (default `1,2,3`) the cluster sizes, and
//! `SLUICE_BENCH_ROUNDS` (default 5) the take-over rounds.

#[path = "common.rs"]
mod common;
use common::{env_or, percentile, timed};

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::blocking::{Client, multipart};
use serde_json::{Value, json};
use sluice::clock::SystemClock;
use sluice::log::{Durability, EventLog, LogConfig, NewEvent, Store};
use sluice_test_components::components::PR_DIGEST;

const ADMIN: &str = "bench-admin";

// ---- PostgreSQL --------------------------------------------------------

/// A throwaway PostgreSQL, stopped and removed when dropped.
struct Postgres {
    dir: PathBuf,
    url: String,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/pg.sh")
}

impl Postgres {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("sluice-bench-pg-{}", std::process::id()));
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(&dir)
            .args(["--until-exit", &std::process::id().to_string()])
            .output()
            .expect("run scripts/pg.sh");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        Self { dir, url }
    }

    /// A store of its own: a fresh schema.
    fn store(&self, schema: &str) -> String {
        format!("{}?options=-csearch_path%3D{schema}", self.url)
    }

    /// CPU seconds (user + system) the PostgreSQL processes used so far.
    fn cpu_seconds(&self) -> f64 {
        let pid: u32 = std::fs::read_to_string(self.dir.join("data/postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next()?.trim().parse().ok())
            .unwrap_or(0);
        let mut total = 0u64;
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid … utime(14) stime(15) cutime cstime
            let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
                continue;
            };
            let f: Vec<&str> = rest.split_whitespace().collect();
            let me: u32 = entry.file_name().to_string_lossy().parse().unwrap_or(0);
            let ppid: u32 = f.get(1).and_then(|p| p.parse().ok()).unwrap_or(0);
            if me == pid || ppid == pid {
                let t = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                total += t(11) + t(12);
            }
        }
        total as f64 / 100.0
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(&self.dir)
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Run SQL outside any store.
fn sql(url: &str, statement: &str) -> Vec<tokio_postgres::Row> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client.query(statement, &[]).await.unwrap()
    })
}

// ---- events -------------------------------------------------------------

fn merged(tenant: &str, i: u64) -> NewEvent {
    NewEvent {
        tenant: tenant.into(),
        id: Some(format!("evt-{i:012}")),
        source: "github".into(),
        kind: "pull_request.merged".into(),
        time: None,
        payload: format!(
            r#"{{"repo":"acme/service-{:03}","ok":true,"number":{i},"title":"Refactor the ingestion pipeline to batch writes","author":"someone","additions":120}}"#,
            i % 20
        ),
        hops: 0,
        ingested: None,
    }
}

// ---- 1. ingest ----------------------------------------------------------

fn sluice_ingest(store: &str, batch: usize, total: u64) -> f64 {
    let log = EventLog::open_store(
        &Store::Postgres(store.to_owned()),
        Durability::Full,
        LogConfig::default(),
        Arc::new(SystemClock),
    )
    .unwrap();
    let start = Instant::now();
    let mut i = 0;
    while i < total {
        let events = (i..i + batch as u64).map(|n| merged("bench", n)).collect();
        log.append_blocking(events).unwrap();
        i += batch as u64;
    }
    let rate = total as f64 / start.elapsed().as_secs_f64();
    log.close();
    rate
}

fn raw_ingest(store: &str, schema: &str, batch: usize, total: u64) -> f64 {
    // The same tables, made by the store's own migrations.
    drop(sluice::log::PostgresBackend::open(store, Durability::Full).unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut client, conn) = tokio_postgres::connect(store, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let insert = client
            .prepare(&format!(
                "INSERT INTO {schema}.events (seq, tenant, id, source, kind, time, ingested_at, payload, hops)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0)"
            ))
            .await
            .unwrap();
        let start = Instant::now();
        let mut i = 0u64;
        while i < total {
            let tx = client.transaction().await.unwrap();
            for n in i..i + batch as u64 {
                let e = merged("bench", n);
                let now = chrono::Utc::now().timestamp_millis();
                tx.execute(
                    &insert,
                    &[
                        &((n + 1) as i64),
                        &e.tenant,
                        &e.id.unwrap(),
                        &e.source,
                        &e.kind,
                        &now,
                        &now,
                        &e.payload,
                    ],
                )
                .await
                .unwrap();
            }
            tx.commit().await.unwrap();
            i += batch as u64;
        }
        total as f64 / start.elapsed().as_secs_f64()
    })
}

fn ingest(pg: &Postgres, rows: &mut Vec<[String; 3]>) {
    let total: u64 = env_or("SLUICE_BENCH_EVENTS", 200_000);
    println!("== ingest on PostgreSQL: {total} events, synchronous commit on");
    for batch in [100usize, 10_000] {
        let mut ratios = Vec::new();
        let (mut ours, mut raws) = (Vec::new(), Vec::new());
        // Paired rounds, alternating which goes first.
        for round in 0..3 {
            let a = format!("ingest_s_{batch}_{round}");
            let b = format!("ingest_r_{batch}_{round}");
            let (s, r) = if round % 2 == 0 {
                let s = sluice_ingest(&pg.store(&a), batch, total);
                (s, raw_ingest(&pg.store(&b), &b, batch, total))
            } else {
                let r = raw_ingest(&pg.store(&b), &b, batch, total);
                (sluice_ingest(&pg.store(&a), batch, total), r)
            };
            ours.push(s);
            raws.push(r);
            ratios.push(s / r);
        }
        ratios.sort_by(f64::total_cmp);
        ours.sort_by(f64::total_cmp);
        raws.sort_by(f64::total_cmp);
        let (s, r, ratio) = (ours[1], raws[1], ratios[1]);
        println!(
            "batch {batch:>6}: sluice {s:>9.0} events/s, raw loop {r:>9.0} events/s, ratio {:.0} %",
            ratio * 100.0
        );
        rows.push([
            format!("ingest, batches of {batch}"),
            format!("{s:.0} events/s vs raw {r:.0}"),
            format!("{:.0} %", ratio * 100.0),
        ]);
    }
}

// ---- nodes ----------------------------------------------------------------

struct Node {
    child: Child,
    url: String,
    cgroup: Option<PathBuf>,
}

/// Where CPU caps go (cgroup v1's cpu controller, or v2), if writable.
fn cgroup_root() -> Option<(PathBuf, bool)> {
    let v1 = Path::new("/sys/fs/cgroup/cpu");
    if v1.join("cpu.cfs_quota_us").exists() {
        return Some((v1.to_path_buf(), true));
    }
    let v2 = Path::new("/sys/fs/cgroup");
    v2.join("cgroup.controllers")
        .exists()
        .then(|| (v2.to_path_buf(), false))
}

impl Node {
    fn start(store: &str, cache: &Path, ttl: &str, cpu: Option<(f64, usize)>) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--durability", "normal"])
            .args(["--lease-ttl", ttl, "--store", store, "--cache-dir"])
            .arg(cache)
            .env("SLUICE_ADMIN_TOKEN", ADMIN)
            .env("SLUICE_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("start a node");
        let mut cgroup = None;
        if let Some((share, n)) = cpu {
            cgroup = cap(child.id(), share, n);
        }
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap()
            .to_owned();
        Self { child, url, cgroup }
    }

    fn signal(&self, sig: &str) {
        Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
    }

    fn id(&self) -> String {
        let v: Value = Client::new()
            .get(format!("{}/v1/cluster", self.url))
            .bearer_auth(ADMIN)
            .send()
            .unwrap()
            .json()
            .unwrap();
        v["node"].as_str().unwrap().to_owned()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(g) = self.cgroup.take() {
            let _ = std::fs::remove_dir(g);
        }
    }
}

/// Cap process `pid` to `share` of a CPU in a cgroup of its own (`n`
/// names it); `taskset` to CPU 0 where cgroups are read-only.
fn cap(pid: u32, share: f64, n: usize) -> Option<PathBuf> {
    if let Some((root, v1)) = cgroup_root() {
        let dir = root.join(format!("sluice-bench-{}-{n}", std::process::id()));
        let period = 100_000u64;
        let quota = (share * period as f64) as u64;
        let made = std::fs::create_dir_all(&dir).is_ok()
            && if v1 {
                std::fs::write(dir.join("cpu.cfs_period_us"), period.to_string()).is_ok()
                    && std::fs::write(dir.join("cpu.cfs_quota_us"), quota.to_string()).is_ok()
            } else {
                std::fs::write(dir.join("cpu.max"), format!("{quota} {period}")).is_ok()
            }
            && std::fs::write(dir.join("cgroup.procs"), pid.to_string()).is_ok();
        if made {
            return Some(dir);
        }
        let _ = std::fs::remove_dir(&dir);
    }
    eprintln!("cgroups are not writable here: pinning node {n} to CPU 0 with taskset instead");
    let _ = Command::new("taskset")
        .args(["-a", "-p", "-c", "0", &pid.to_string()])
        .output();
    None
}

fn http() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

fn make_tenant(url: &str, name: &str) -> String {
    let v: Value = http()
        .post(format!("{url}/v1/tenants"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": name, "quotas": {"ingest_per_second": 1000000, "ingest_burst": 10000000}}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    v["token"]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("{v}"))
        .to_owned()
}

fn deploy(url: &str, token: &str, name: &str) {
    let manifest = format!(
        "name = \"{name}\"\nversion = 1\n[trigger.batch]\ncount = 10\nwindow = \"1h\"\nexpire = \"fire\"\n"
    );
    let form = multipart::Form::new()
        .part(
            "manifest",
            multipart::Part::text(manifest).file_name("rule.toml"),
        )
        .part(
            "component",
            multipart::Part::bytes(std::fs::read(PR_DIGEST).unwrap()).file_name("rule.wasm"),
        );
    let r = http()
        .put(format!("{url}/v1/rules/{name}"))
        .bearer_auth(token)
        .multipart(form)
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().unwrap());
}

/// Every rule of every tenant, as (tenant, name) → (node, status, cursor).
fn rules(
    url: &str,
    tokens: &[(String, String)],
) -> HashMap<(String, String), (String, String, u64)> {
    let mut out = HashMap::new();
    for (tenant, token) in tokens {
        let Ok(r) = http()
            .get(format!("{url}/v1/rules"))
            .bearer_auth(token)
            .send()
        else {
            continue;
        };
        let v: Value = r.json().unwrap_or_default();
        for rule in v.as_array().into_iter().flatten() {
            out.insert(
                (
                    tenant.clone(),
                    rule["name"].as_str().unwrap_or("").to_owned(),
                ),
                (
                    rule["node"].as_str().unwrap_or("").to_owned(),
                    rule["status"].as_str().unwrap_or("").to_owned(),
                    rule["cursor"].as_u64().unwrap_or(0),
                ),
            );
        }
    }
    out
}

// ---- 2. scale -----------------------------------------------------------

/// Set up 30 tenants × 10 rules in `store`; the tokens.
fn prepare_rules(store: &str, cache: &Path) -> Vec<(String, String)> {
    let node = Node::start(store, cache, "10s", None);
    let mut tokens = Vec::new();
    for t in 0..30 {
        let tenant = format!("t{t:02}");
        let token = make_tenant(&node.url, &tenant);
        for r in 0..10 {
            deploy(&node.url, &token, &format!("digest-{r}"));
        }
        tokens.push((tenant, token));
    }
    let mut node = node;
    node.signal("-TERM");
    node.child.wait().unwrap();
    tokens
}

/// Append a backlog of `per_tenant` events a tenant, interleaved.
fn append_backlog(store: &str, tokens: &[(String, String)], per_tenant: u64) {
    let log = EventLog::open_store(
        &Store::Postgres(store.to_owned()),
        Durability::Normal,
        LogConfig::default(),
        Arc::new(SystemClock),
    )
    .unwrap();
    let mut n = 0;
    for _ in 0..per_tenant / 100 {
        for (tenant, _) in tokens {
            let events = (n..n + 100).map(|i| merged(tenant, i)).collect();
            log.append_blocking(events).unwrap();
            n += 100;
        }
    }
    log.close();
}

fn scale(pg: &Postgres, rows: &mut Vec<[String; 3]>) {
    let per_tenant: u64 = env_or("SLUICE_BENCH_BACKLOG", 1_000);
    let share: f64 = env_or("SLUICE_BENCH_CPU", 0.3);
    println!(
        "== scale: 30 tenants x 10 rules, a backlog of {per_tenant} events a tenant, each node capped at {share} CPU"
    );
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let mut rates = Vec::new();
    let counts: Vec<usize> = std::env::var("SLUICE_BENCH_NODES")
        .unwrap_or_else(|_| "1,2,3".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    for nodes in counts {
        let store = pg.store(&format!("scale_{nodes}"));
        let tokens = prepare_rules(&store, &cache);
        // The nodes start and share the rules out before the backlog comes.
        let running: Vec<Node> = (0..nodes)
            .map(|i| Node::start(&store, &cache, "10s", Some((share, i))))
            .collect();
        let spread = Instant::now();
        loop {
            let all = rules(&running[0].url, &tokens);
            let on: HashSet<&String> = all.values().map(|(node, _, _)| node).collect();
            if all.len() == 300
                && on.len() == nodes
                && all.values().all(|(_, status, _)| status == "active")
            {
                break;
            }
            assert!(
                spread.elapsed() < Duration::from_secs(300),
                "the rules did not spread"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        std::thread::sleep(Duration::from_secs(2));
        let pg_before = pg.cpu_seconds();
        let start = Instant::now();
        append_backlog(&store, &tokens, per_tenant);
        let end: u64 = sql(&store, &format!("SELECT seq FROM scale_{nodes}.log_head"))[0]
            .get::<_, i64>(0) as u64;
        loop {
            std::thread::sleep(Duration::from_millis(1000));
            let all = rules(&running[0].url, &tokens);
            if all.len() == 300 && all.values().all(|(_, _, cursor)| *cursor >= end) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(900),
                "the rules did not catch up"
            );
        }
        let took = start.elapsed().as_secs_f64();
        let pg_cpu = pg.cpu_seconds() - pg_before;
        let rule_events = (per_tenant * 30 * 10) as f64;
        let rate = rule_events / took;
        println!(
            "{nodes} node(s): caught up in {took:.1} s: {rate:.0} rule-events/s; PostgreSQL used {pg_cpu:.1} CPU-s ({:.2} cores)",
            pg_cpu / took
        );
        rates.push((nodes, rate, pg_cpu / took));
        for n in running {
            n.signal("-TERM");
        }
    }
    let base = rates[0].1;
    for (nodes, rate, pg_cores) in &rates {
        rows.push([
            format!("{nodes} node(s), {share} CPU each, 300 rules"),
            format!("{rate:.0} rule-events/s (PostgreSQL {pg_cores:.2} cores)"),
            format!("{:.2}x", rate / base),
        ]);
    }
}

// ---- 3. peer workload -------------------------------------------------------

const PEER_MANIFEST: &str =
    "name = \"repo-summary\"\nversion = 1\n\n[trigger.batch]\ncount = 500\nwindow = \"10m\"\n";

fn write_peer_events(path: &Path, n: u64) {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..n {
        let line = json!({"source": "github", "kind": "push", "payload": {
            "repo": format!("acme/r{}", i % 1_000), "ok": i % 10 != 0, "n": i,
            "title": "Refactor the ingestion pipeline to batch writes", "author": "octocat"}});
        writeln!(out, "{line}").unwrap();
    }
}

fn peer(pg: &Postgres, rows: &mut Vec<[String; 3]>) {
    let n: u64 = env_or("SLUICE_BENCH_PEER", 1_000_000);
    println!("== peer workload: {n} events, 1 000 repos interleaved, windows of 500");
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.ndjson");
    write_peer_events(&events, n);
    let manifest = dir.path().join("rule.toml");
    std::fs::write(&manifest, PEER_MANIFEST).unwrap();
    let cache = dir.path().join("cache");
    let sluice = env!("CARGO_BIN_EXE_sluice");
    let ingest_args = ["ingest", "--durability", "normal", "--batch", "1000"];

    // SQLite: log-only ingest, then `sluice run`.
    let sqlite_ingest = timed(
        Command::new(sluice)
            .args(ingest_args)
            .arg("--db")
            .arg(dir.path().join("ingest.db")),
        &events,
    );
    let rule = format!(
        "{}={}",
        manifest.display(),
        sluice_test_components::components::REPO_SUMMARY
    );
    let sqlite_run = timed(
        Command::new(sluice)
            .args([
                "run",
                "--durability",
                "normal",
                "--batch",
                "1000",
                "--exit-when-idle",
            ])
            .args(["--rule", &rule, "--db"])
            .arg(dir.path().join("run.db"))
            .env("SLUICE_CACHE_DIR", &cache),
        &events,
    );

    // PostgreSQL: log-only ingest, then ingest beside a serving node.
    let pg_ingest = timed(
        Command::new(sluice)
            .args(ingest_args)
            .args(["--store", &pg.store("peer_ingest")]),
        &events,
    );
    let store = pg.store("peer_run");
    let node = Node::start(&store, &cache, "10s", None);
    let v: Value = http()
        .post(format!("{}/v1/tenants", node.url))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "default"}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let token = v["token"]["token"].as_str().unwrap().to_owned();
    let form = multipart::Form::new()
        .part(
            "manifest",
            multipart::Part::text(PEER_MANIFEST).file_name("rule.toml"),
        )
        .part(
            "component",
            multipart::Part::bytes(
                std::fs::read(sluice_test_components::components::REPO_SUMMARY).unwrap(),
            )
            .file_name("rule.wasm"),
        );
    let r = http()
        .put(format!("{}/v1/rules/repo-summary", node.url))
        .bearer_auth(&token)
        .multipart(form)
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().unwrap());
    let start = Instant::now();
    timed(
        Command::new(sluice)
            .args(ingest_args)
            .args(["--store", &store]),
        &events,
    );
    let end: u64 = sql(&store, "SELECT seq FROM peer_run.log_head")[0].get::<_, i64>(0) as u64;
    loop {
        let v: Value = http()
            .get(format!("{}/v1/rules/repo-summary", node.url))
            .bearer_auth(&token)
            .send()
            .unwrap()
            .json()
            .unwrap();
        if v["cursor"].as_u64().unwrap_or(0) >= end {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let pg_run = start.elapsed();
    drop(node);
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    for (what, d) in [
        ("SQLite, log-only ingest", sqlite_ingest),
        ("SQLite, sluice run", sqlite_run),
        ("PostgreSQL, log-only ingest", pg_ingest),
        ("PostgreSQL, a node + ingest", pg_run),
    ] {
        println!("{what}: {:.1} s, {:.0} events/s", d.as_secs_f64(), rate(d));
    }
    rows.push([
        "peer workload end to end, PostgreSQL vs SQLite".into(),
        format!("{:.0} vs {:.0} events/s", rate(pg_run), rate(sqlite_run)),
        format!(
            "{:.0} %",
            100.0 * sqlite_run.as_secs_f64() / pg_run.as_secs_f64()
        ),
    ]);
    rows.push([
        "peer workload vs log-only ingest, PostgreSQL".into(),
        format!("{:.0} vs {:.0} events/s", rate(pg_run), rate(pg_ingest)),
        format!(
            "{:.0} %",
            100.0 * pg_ingest.as_secs_f64() / pg_run.as_secs_f64()
        ),
    ]);
}

// ---- 4. take-over ---------------------------------------------------------

fn takeover(pg: &Postgres, rows: &mut Vec<[String; 3]>) {
    let rounds: usize = env_or("SLUICE_BENCH_ROUNDS", 5);
    println!("== take-over: 3 nodes, 30 rules, lease TTL 2 s, {rounds} rounds each");
    let store = pg.store("takeover");
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let mut nodes: Vec<Node> = (0..3)
        .map(|_| Node::start(&store, &cache, "2s", None))
        .collect();
    let token = make_tenant(&nodes[0].url, "acme");
    std::thread::sleep(Duration::from_secs(2));
    for r in 0..30 {
        deploy(&nodes[0].url, &token, &format!("digest-{r:02}"));
    }
    let tokens = vec![("acme".to_owned(), token)];
    let settled = |url: &str, gone: &str| {
        let all = rules(url, &tokens);
        all.len() == 30
            && all
                .values()
                .all(|(node, status, _)| node != gone && status == "active")
    };
    let mut results: HashMap<&str, Vec<f64>> = HashMap::new();
    for round in 0..rounds * 2 {
        let how = if round % 2 == 0 { "kill -9" } else { "SIGTERM" };
        // Wait for a settled cluster, then take down the node running the
        // most rules.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !settled(&nodes[0].url, "-") {
            assert!(Instant::now() < deadline, "the cluster did not settle");
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_secs(3));
        let all = rules(&nodes[0].url, &tokens);
        let mut counts: HashMap<String, usize> = HashMap::new();
        for (node, _, _) in all.values() {
            *counts.entry(node.clone()).or_default() += 1;
        }
        let ids: Vec<String> = nodes.iter().map(Node::id).collect();
        let victim = (0..nodes.len())
            .max_by_key(|&i| counts.get(&ids[i]).copied().unwrap_or(0))
            .unwrap();
        let gone = ids[victim].clone();
        let moved: HashSet<(String, String)> = all
            .iter()
            .filter(|(_, (node, _, _))| *node == gone)
            .map(|(k, _)| k.clone())
            .collect();
        let mut down = nodes.remove(victim);
        let start = Instant::now();
        if how == "kill -9" {
            down.child.kill().unwrap();
        } else {
            down.signal("-TERM");
        }
        let watch = nodes[0].url.clone();
        loop {
            let all = rules(&watch, &tokens);
            if moved.iter().all(|k| {
                all.get(k).is_some_and(|(node, status, _)| {
                    *node != gone && !node.is_empty() && status == "active"
                })
            }) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "rules did not move"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let took = start.elapsed().as_secs_f64();
        println!(
            "{how}: {} rules active elsewhere after {took:.2} s",
            moved.len()
        );
        results.entry(how).or_default().push(took);
        let _ = down.child.wait();
        drop(down);
        nodes.push(Node::start(&store, &cache, "2s", None));
    }
    for how in ["kill -9", "SIGTERM"] {
        let mut v = results.remove(how).unwrap_or_default();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            continue;
        }
        let (p50, max) = (percentile(&v, 0.5), v[v.len() - 1]);
        println!("{how}: p50 {p50:.2} s, max {max:.2} s");
        rows.push([
            format!("take-over after {how} (lease TTL 2 s)"),
            format!("p50 {p50:.2} s, max {max:.2} s"),
            format!("{} rounds", v.len()),
        ]);
    }
}

fn main() {
    if !common::benching() {
        return;
    }
    let only = std::env::var("SLUICE_BENCH_ONLY").unwrap_or_default();
    let pg = Postgres::start();
    let mut rows = Vec::new();
    if only.is_empty() || only == "ingest" {
        ingest(&pg, &mut rows);
    }
    if only.is_empty() || only == "takeover" {
        takeover(&pg, &mut rows);
    }
    if only.is_empty() || only == "scale" {
        scale(&pg, &mut rows);
    }
    if only.is_empty() || only == "peer" {
        peer(&pg, &mut rows);
    }
    println!("\n| measure | figure | ratio |\n| --- | --- | --- |");
    for [a, b, c] in rows {
        println!("| {a} | {b} | {c} |");
    }
}
