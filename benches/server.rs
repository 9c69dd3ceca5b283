//! `sluice serve` benchmarks: the real server binary, over HTTP, in one run
//! (a bench binary; each part prints its figures, and a table to paste
//! into the README comes last):
//!
//! 1. HTTP ingest under `wrk` (32 connections): one event per request and
//!    NDJSON batches of 100, events/s and request latency p50/p99, against
//!    in-process `EventLog::append` from 32 tasks with the same batches,
//!    the same durability (full, the server's default) and the same
//!    payloads, in the same run;
//! 2. deploy latency of the ECHO component: cold (a fresh server, so an
//!    empty compile cache), from the cache on a server's first deploy, and
//!    a hot swap (the same component, version raised);
//! 3. fire processing across hot swaps: a batch rule with `count = 1`
//!    under a steady ingest of 500 events/s, swapped 5 times; the longest
//!    wall-clock gap between outputs on the SSE feed around the swaps
//!    against the longest elsewhere, and a check from the log that every
//!    event is in exactly one output;
//! 4. isolation: tenant B's ingest → output latency (POST answered to the
//!    output on B's feed) with tenant A idle, with A flooding a hostile
//!    rule whose `select` spins on every event until its fuel runs out
//!    (≈ 200 ms of CPU an event, then skipped), and, as a control, with the
//!    same hostile tenant on a second server process (what sharing the
//!    machine's cores costs by itself). The three alternate in short
//!    rounds; the p99 compared is the median of the rounds' p99s.
//!
//! Parts 3 and 4 run the server with durability normal, so that they
//! measure the engine rather than the disk's flush times (with full, a
//! `count = 1` rule at 500 fires/s waits on an fsync per fire). Every
//! warning the servers log is printed when they stop.
//!
//! Run: `cargo bench -p sluice --bench server` (about 2.5 minutes).
//! `SLUICE_BENCH_SECS` (default 10) sets the length of each ingest run and
//! of each isolation phase (split over its rounds);
//! `SLUICE_BENCH_ONLY=ingest|deploy|swap|isolation|swap-state` runs one part. Part 1
//! needs `wrk` on the PATH (`apt-get install wrk`) and is skipped without
//! it.

#[path = "common.rs"]
mod common;
use common::percentile;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use reqwest::blocking::{Client, multipart};
use serde_json::{Value, json};
use sluice::clock::SystemClock;
use sluice::event::Event;
use sluice::log::{Durability, EventLog, LogConfig, NewEvent};
use sluice::runtime::{Limits, RuleLabel, Runtime, RuntimeConfig};
use sluice_test_components::component_bytes;
use sluice_test_components::components::{ECHO, HOSTILE};

const ADMIN_TOKEN: &str = "bench-admin-token";

/// The most fuel per call a tenant may ask for by default.
const QUOTA_MAX_FUEL: u64 = 10_000_000_000;

/// Quotas high enough that no benchmark meets the ingest rate limit.
const OPEN_QUOTAS: &str = r#"{"ingest_per_second":1000000,"ingest_burst":10000000}"#;

// ---- the server process -------------------------------------------------

/// A `sluice serve` child process; stopped with SIGTERM when dropped.
struct Server {
    child: Child,
    url: String,
    /// Where its stderr (the tracing log, as JSON lines) goes.
    log: PathBuf,
    /// From spawn to `listening on`.
    started_in: Duration,
}

impl Server {
    /// Start a server on a free port with the database `db` (the compile
    /// cache defaults to `<db>.cache`).
    fn start(db: &Path, extra: &[&str]) -> Server {
        let log = db.with_extension("stderr");
        let t0 = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("serve")
            .arg("--db")
            .arg(db)
            .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(extra)
            .env("SLUICE_ADMIN_TOKEN", ADMIN_TOKEN)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("create the server's log"))
            .spawn()
            .expect("start sluice serve");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let url = loop {
            line.clear();
            if stdout.read_line(&mut line).unwrap_or(0) == 0 {
                let err = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("sluice serve exited before listening:\n{err}");
            }
            if let Some(addr) = line.trim().strip_prefix("listening on ") {
                break addr.to_owned();
            }
        };
        let started_in = t0.elapsed();
        // Keep reading stdout so that the server never writes into a full
        // pipe.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        Server {
            child,
            url,
            log,
            started_in,
        }
    }

    /// CPU time the server used so far (user + system).
    fn cpu(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // After the command name (which ends with ')'): utime is the 12th
        // field, stime the 13th, in clock ticks of 10 ms.
        let rest = stat.rsplit(')').next().unwrap_or_default();
        let ticks: u64 = rest
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|f| f.parse::<u64>().ok())
            .sum();
        Duration::from_millis(ticks * 10)
    }

    /// An admin client.
    fn admin(&self) -> Api {
        Api::new(&self.url, ADMIN_TOKEN)
    }

    /// Create a tenant with open ingest quotas; a client with its token.
    fn tenant(&self, name: &str) -> Api {
        let body = format!(r#"{{"name":"{name}","quotas":{OPEN_QUOTAS}}}"#);
        let admin = self.admin();
        let r = admin
            .http
            .post(format!("{}/v1/tenants", self.url))
            .bearer_auth(&admin.token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .expect("create a tenant");
        let v = expect_ok(r, "create a tenant");
        Api::new(&self.url, v["token"]["token"].as_str().unwrap())
    }

    /// Warnings and errors the server logged: how many, and a sample of
    /// each distinct message (with how often it came).
    fn complaints(&self) -> (usize, Vec<(String, usize)>) {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut total = 0;
        let mut distinct: Vec<(String, usize)> = Vec::new();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if !matches!(v["level"].as_str(), Some("WARN" | "ERROR")) {
                continue;
            }
            total += 1;
            let message = format!(
                "{} {}",
                v["level"].as_str().unwrap_or_default(),
                v["fields"]["message"].as_str().unwrap_or_default()
            );
            match distinct.iter_mut().find(|(m, _)| *m == message) {
                Some((_, n)) => *n += 1,
                None => distinct.push((message, 1)),
            }
        }
        (total, distinct)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.child.try_wait().ok().flatten().is_none() {
            eprintln!("  server did not stop within 20 s of SIGTERM: killed");
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let (n, distinct) = self.complaints();
        if n > 0 {
            eprintln!("  server log: {n} warnings/errors:");
            for (message, times) in distinct {
                eprintln!("    {times} × {message}");
            }
        }
    }
}

/// A successful answer's JSON, or a panic naming `what`.
fn expect_ok(r: reqwest::blocking::Response, what: &str) -> Value {
    let status = r.status();
    let text = r.text().unwrap_or_default();
    assert!(status.is_success(), "{what}: {status}: {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// A client of one server with one bearer token.
#[derive(Clone)]
struct Api {
    http: Client,
    base: String,
    token: String,
}

impl Api {
    fn new(base: &str, token: &str) -> Api {
        Api {
            // No overall timeout: the feed is a response that never ends.
            http: Client::builder().timeout(None).build().unwrap(),
            base: base.to_owned(),
            token: token.to_owned(),
        }
    }

    /// POST one JSON event; its seq.
    fn ingest(&self, event: &Value) -> u64 {
        let r = self
            .http
            .post(format!("{}/v1/events", self.base))
            .bearer_auth(&self.token)
            .json(event)
            .send()
            .expect("POST /v1/events");
        expect_ok(r, "ingest")["seqs"][0].as_u64().unwrap()
    }

    /// Deploy or swap `name`: the answer and the request's wall time.
    fn deploy(&self, name: &str, manifest: &str, wasm: &[u8]) -> (Value, Duration) {
        let form = multipart::Form::new()
            .text("manifest", manifest.to_owned())
            .part(
                "component",
                multipart::Part::bytes(wasm.to_vec()).file_name("rule.wasm"),
            );
        let t0 = Instant::now();
        let r = self
            .http
            .put(format!("{}/v1/rules/{name}", self.base))
            .bearer_auth(&self.token)
            .multipart(form)
            .send()
            .expect("PUT /v1/rules");
        let took = t0.elapsed();
        (expect_ok(r, "deploy"), took)
    }

    /// POST with no body (pause, resume).
    fn post(&self, path: &str) -> Value {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .expect("POST");
        expect_ok(r, path)
    }

    fn get(&self, path: &str) -> Value {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .expect("GET");
        expect_ok(r, path)
    }

    /// Every event of `source` in the log (paged).
    fn events_of(&self, source: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let page = self.get(&format!(
                "/v1/events?after_seq={after}&source={source}&limit=10000"
            ));
            let events = page["events"].as_array().cloned().unwrap_or_default();
            out.extend(events);
            match page["next_after_seq"].as_u64() {
                Some(n) => after = n,
                None => return out,
            }
        }
    }

    /// Follow the live feed of `source` on a thread: each output as it
    /// arrives, with the instant its SSE message was complete. Returns once
    /// the server has answered (the subscription is in place).
    fn feed(&self, source: &str) -> mpsc::Receiver<(Instant, Value)> {
        let (tx, rx) = mpsc::channel();
        let response = self
            .http
            .get(format!("{}/v1/feed?live=true&source={source}", self.base))
            .bearer_auth(&self.token)
            .send()
            .expect("GET /v1/feed");
        assert!(
            response.status().is_success(),
            "feed: {}",
            response.status()
        );
        std::thread::spawn(move || {
            let mut reader = BufReader::new(response);
            let (mut line, mut data) = (String::new(), String::new());
            // SSE: `data:` lines, a blank line ends a message; heartbeats
            // are comments (`:`) and carry no data.
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                let l = line.trim_end_matches(['\r', '\n']);
                if l.is_empty() {
                    if !data.is_empty() {
                        let at = Instant::now();
                        let v: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
                        if tx.send((at, v)).is_err() {
                            return;
                        }
                        data.clear();
                    }
                } else if let Some(d) = l.strip_prefix("data:") {
                    data.push_str(d.strip_prefix(' ').unwrap_or(d));
                }
                line.clear();
            }
        });
        rx
    }
}

/// An ECHO batch rule firing every `count` events (per partition: the
/// payload's `key`).
fn echo_manifest(version: u32, count: u32) -> String {
    format!(
        "name = \"echo\"\nversion = {version}\n\n[trigger.batch]\ncount = {count}\nwindow = \"1h\"\nexpire = \"fire\"\n"
    )
}

/// A ≈ 200-byte payload, as in the other ingest benches.
fn payload(i: u64) -> Value {
    json!({"key": format!("k{:02}", i % 16), "repo": format!("acme/service-{:03}", i % 50),
        "ok": true, "number": i, "title": "Refactor the ingestion pipeline to batch writes",
        "author": "someone", "labels": ["backend", "perf"]})
}

/// Call `f(i)` for i = 0, 1, … at `rate` per second until `stop` is set;
/// a call that runs late is caught up at once. How many calls were made.
fn paced(rate: f64, stop: &AtomicBool, mut f: impl FnMut(u64)) -> u64 {
    let start = Instant::now();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        f(i);
        i += 1;
    }
    i
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The README table, a row at a time.
#[derive(Default)]
struct Table(Vec<[String; 2]>);

impl Table {
    fn row(&mut self, what: impl Into<String>, measured: impl Into<String>) {
        self.0.push([what.into(), measured.into()]);
    }
}

// ---- 1. ingest -----------------------------------------------------------

/// What `wrk --latency` reported.
struct Wrk {
    requests: u64,
    secs: f64,
    p50: Duration,
    p99: Duration,
    /// Non-2xx answers plus socket errors.
    errors: u64,
}

/// A wrk time such as `812.00us`, `1.23ms`, `2.00s`.
fn wrk_time(s: &str) -> Duration {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let n: f64 = num.parse().unwrap_or(f64::NAN);
    let secs = match unit {
        "us" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        _ => panic!("wrk time {s:?}"),
    };
    Duration::from_secs_f64(secs)
}

fn parse_wrk(out: &str) -> Wrk {
    let mut w = Wrk {
        requests: 0,
        secs: 0.0,
        p50: Duration::ZERO,
        p99: Duration::ZERO,
        errors: 0,
    };
    for line in out.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", t] => w.p50 = wrk_time(t),
            ["99%", t] => w.p99 = wrk_time(t),
            [n, "requests", "in", t, ..] => {
                w.requests = n.parse().unwrap();
                w.secs = wrk_time(t.trim_end_matches(',')).as_secs_f64();
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => w.errors += n.parse::<u64>().unwrap(),
            ["Socket", "errors:", rest @ ..] => {
                // connect 0, read 0, write 0, timeout 0
                w.errors += rest
                    .iter()
                    .filter_map(|x| x.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    w
}

/// Run wrk against `POST /v1/events` with `body` for `secs`.
fn run_wrk(dir: &Path, api: &Api, body: &str, content_type: &str, secs: u64) -> Wrk {
    let body_path = dir.join(format!("body-{}.txt", body.len()));
    std::fs::write(&body_path, body).unwrap();
    // The body is read from a file: no quoting of JSON inside Lua.
    let script = format!(
        "local f = assert(io.open({:?}, \"rb\"))\nwrk.body = f:read(\"*a\")\nf:close()\nwrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = {content_type:?}\nwrk.headers[\"Authorization\"] = \"Bearer {}\"\n",
        body_path.display().to_string(),
        api.token
    );
    let script_path = dir.join("post.lua");
    std::fs::write(&script_path, script).unwrap();
    let out = Command::new("wrk")
        .args(["-t2", "-c32", "--latency", "--timeout", "10s"])
        .arg(format!("-d{secs}s"))
        .arg("-s")
        .arg(&script_path)
        .arg(format!("{}/v1/events", api.base))
        .output()
        .expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "wrk failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_wrk(&text)
}

/// In-process ingest: 32 tasks appending `batch` events at a time for
/// `secs`; (events/s, append latency p50, p99).
fn in_process(dir: &Path, batch: usize, secs: u64) -> (f64, Duration, Duration) {
    let path = dir.join(format!("inproc-{batch}.db"));
    let log = EventLog::open_sqlite(
        &path,
        Durability::Full,
        LogConfig::default(),
        Arc::new(SystemClock),
    )
    .unwrap();
    // The server's runtime: one worker per core.
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let (events, mut lat) = tokio.block_on(async {
        let tasks: Vec<_> = (0..32u64)
            .map(|t| {
                let log = log.clone();
                tokio::spawn(async move {
                    let (mut n, mut lat) = (0u64, Vec::new());
                    while Instant::now() < end {
                        let events = (0..batch as u64)
                            .map(|j| NewEvent {
                                tenant: "bench".into(),
                                // No id, as over HTTP: the log makes one.
                                id: None,
                                source: "bench".into(),
                                kind: "x".into(),
                                time: None,
                                payload: payload(t * 1_000_000 + n + j).to_string(),
                                hops: 0,
                                ingested: None,
                            })
                            .collect();
                        let t0 = Instant::now();
                        log.append(events).await.unwrap();
                        lat.push(t0.elapsed());
                        n += batch as u64;
                    }
                    (n, lat)
                })
            })
            .collect();
        let (mut events, mut lat) = (0, Vec::new());
        for t in tasks {
            let (n, l) = t.await.unwrap();
            events += n;
            lat.extend(l);
        }
        (events, lat)
    });
    let rate = events as f64 / start.elapsed().as_secs_f64();
    log.close();
    lat.sort_unstable();
    (rate, percentile(&lat, 0.5), percentile(&lat, 0.99))
}

fn ingest(secs: u64, table: &mut Table) {
    println!(
        "== 1. ingest: wrk -t2 -c32 -d{secs}s against in-process appends (durability full) =="
    );
    if Command::new("wrk").arg("--version").output().is_err() {
        println!("  skipped: `wrk` is not installed (apt-get install -y wrk)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("ingest.db"), &[]);
    let api = server.tenant("bench");
    let event = |i: u64| json!({"source": "bench", "kind": "x", "payload": payload(i)});
    for (batch, content_type) in [(1usize, "application/json"), (100, "application/x-ndjson")] {
        let body: String = (0..batch as u64)
            .map(|i| event(i).to_string() + "\n")
            .collect();
        // Probes before and after: the seq difference is what was stored.
        let before = api.ingest(&event(0));
        let w = run_wrk(dir.path(), &api, &body, content_type, secs);
        let after = api.ingest(&event(0));
        let http = (w.requests * batch as u64) as f64 / w.secs;
        let (local, lp50, lp99) = in_process(dir.path(), batch, secs);
        println!(
            "  batch {batch:>3}: HTTP {http:>8.0} events/s ({:.0} requests/s), request p50 {:.2} ms, p99 {:.2} ms, {} errors; stored {} events; in-process {local:>8.0} events/s, append p50 {:.2} ms, p99 {:.2} ms; HTTP/in-process {:.0} %",
            w.requests as f64 / w.secs,
            ms(w.p50),
            ms(w.p99),
            w.errors,
            after - before - 1,
            ms(lp50),
            ms(lp99),
            100.0 * http / local
        );
        let what = match batch {
            1 => "HTTP ingest, one event per request (wrk, 32 connections, durability full)",
            _ => "HTTP ingest, NDJSON batches of 100 (wrk, 32 connections, durability full)",
        };
        table.row(
            what,
            format!(
                "{} events/s, request p50 {:.2} ms, p99 {:.2} ms; in-process append (32 tasks) {} events/s, p50 {:.2} ms, p99 {:.2} ms: **{:.0} %**{}",
                thousands(http),
                ms(w.p50),
                ms(w.p99),
                thousands(local),
                ms(lp50),
                ms(lp99),
                100.0 * http / local,
                if w.errors > 0 {
                    format!(" ({} failed requests)", w.errors)
                } else {
                    String::new()
                }
            ),
        );
    }
}

/// 12345.6 → "12 346".
fn thousands(x: f64) -> String {
    let digits = format!("{x:.0}");
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

// ---- 2. deploy -----------------------------------------------------------

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    percentile(&v, 0.5)
}

fn deploy(table: &mut Table) {
    const N: usize = 5;
    println!("== 2. deploy latency, ECHO component (median of {N}) ==");
    let wasm = component_bytes(ECHO);
    let root = tempfile::tempdir().unwrap();
    let (mut cold, mut cold_load, mut starts) = (Vec::new(), Vec::new(), Vec::new());
    let (mut first, mut first_load) = (Vec::new(), Vec::new());
    let (mut swap, mut swap_load, mut swap_swap) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..N {
        // A fresh database: its compile cache (`<db>.cache`) is empty.
        let db = root.path().join(format!("cold-{i}.db"));
        let server = Server::start(&db, &[]);
        starts.push(server.started_in);
        let api = server.tenant("acme");
        let (v, took) = api.deploy("echo", &echo_manifest(1, 10), &wasm);
        assert_eq!(v["compile"], "compiled", "{v}");
        cold.push(took);
        cold_load.push(Duration::from_millis(v["load_ms"].as_u64().unwrap()));
        // A swap: same component, version raised (cache hit).
        let (v, took) = api.deploy("echo", &echo_manifest(2, 10), &wasm);
        assert_eq!(v["compile"], "hit", "{v}");
        swap.push(took);
        swap_load.push(Duration::from_millis(v["load_ms"].as_u64().unwrap()));
        swap_swap.push(Duration::from_millis(v["swap_ms"].as_u64().unwrap()));
        drop(server);
        // A second server on the same cache, a fresh database: its first
        // deploy reads the compiled component from the cache.
        let cache = format!("{}.cache", db.display());
        let server = Server::start(
            &root.path().join(format!("warm-{i}.db")),
            &["--cache-dir", &cache],
        );
        let api = server.tenant("acme");
        let (v, took) = api.deploy("echo", &echo_manifest(1, 10), &wasm);
        assert_eq!(v["compile"], "hit", "{v}");
        first.push(took);
        first_load.push(Duration::from_millis(v["load_ms"].as_u64().unwrap()));
    }
    let (cold, cold_load) = (median(cold), median(cold_load));
    let (first, first_load) = (median(first), median(first_load));
    let (swap, swap_load, swap_swap) = (median(swap), median(swap_load), median(swap_swap));
    let start_up = median(starts);
    println!(
        "  cold (compile): {:.0} ms request, load {:.0} ms; cached, a new server's first deploy: {:.0} ms request, load {:.0} ms; hot swap (cached): {:.0} ms request, load {:.0} ms, swap {:.0} ms; server start-up to listening: {:.0} ms",
        ms(cold),
        ms(cold_load),
        ms(first),
        ms(first_load),
        ms(swap),
        ms(swap_load),
        ms(swap_swap),
        ms(start_up)
    );
    table.row(
        format!(
            "deploy ECHO ({} KB), cold (empty compile cache)",
            wasm.len() / 1000
        ),
        format!(
            "{:.0} ms (request); of which compile {:.0} ms",
            ms(cold),
            ms(cold_load)
        ),
    );
    table.row(
        "deploy, cached: a new server's first deploy from the compile cache",
        format!(
            "{:.0} ms (request); load {:.0} ms",
            ms(first),
            ms(first_load)
        ),
    );
    table.row(
        "server start-up, empty database, to `listening on`",
        format!("{:.0} ms", ms(start_up)),
    );
    table.row(
        "hot swap, cached (version raised)",
        format!(
            "{:.0} ms (request); load {:.0} ms, swap {:.0} ms",
            ms(swap),
            ms(swap_load),
            ms(swap_swap)
        ),
    );
}

// ---- 3. hot swap under ingest --------------------------------------------

/// The ids of the input events an ECHO output lists.
fn echoed(output: &Value) -> Vec<String> {
    output["payload"]["events"]
        .as_array()
        .map(|ids| {
            ids.iter()
                .filter_map(|i| i.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Take outputs from `feed` into `arrivals` until they list `sent` input
/// events in all (or 20 s pass).
fn collect(
    feed: &mpsc::Receiver<(Instant, Value)>,
    arrivals: &mut Vec<(Instant, Value)>,
    sent: usize,
) {
    let until = Instant::now() + Duration::from_secs(20);
    let mut seen: usize = arrivals.iter().map(|(_, v)| echoed(v).len()).sum();
    while seen < sent {
        let Some(left) = until.checked_duration_since(Instant::now()) else {
            break;
        };
        match feed.recv_timeout(left) {
            Ok((at, v)) => {
                seen += echoed(&v).len();
                arrivals.push((at, v));
            }
            Err(_) => break,
        }
    }
    while let Ok(item) = feed.try_recv() {
        arrivals.push(item);
    }
}

fn hot_swap(table: &mut Table) {
    // 500 fires/s. With durability full every fire's commit waits for an
    // fsync, and one `count = 1` rule falls behind at this rate on this
    // VM (then the backlog, not the swaps, sets the gaps): this part runs
    // with durability normal, as does part 4, so that what is measured is
    // the engine, not the shared disk's flush times.
    const RATE: f64 = 500.0;
    const SWAPS: u32 = 5;
    const EVERY: Duration = Duration::from_secs(2);
    println!(
        "== 3. hot swaps under ingest: {RATE} events/s, count = 1, {SWAPS} swaps {EVERY:?} apart (durability normal) =="
    );
    let wasm = component_bytes(ECHO);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("swap.db"), &["--durability", "normal"]);
    let api = server.tenant("acme");
    api.deploy("echo", &echo_manifest(1, 1), &wasm);
    let feed = api.feed("rule:echo");
    let stop = Arc::new(AtomicBool::new(false));
    let ingest = {
        let (api, stop) = (api.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut answered = Vec::new();
            paced(RATE, &stop, |i| {
                let id = format!("e{i:06}");
                api.ingest(
                    &json!({"id": id, "source": "bench", "kind": "x", "payload": payload(i)}),
                );
                answered.push((id, Instant::now()));
            });
            answered
        })
    };
    let t0 = Instant::now();
    std::thread::sleep(EVERY);
    let mut swaps = Vec::new();
    for v in 2..=SWAPS + 1 {
        let at = Instant::now();
        let (answer, took) = api.deploy("echo", &echo_manifest(v, 1), &wasm);
        assert_eq!(answer["outcome"], "swapped", "{answer}");
        // (request sent, answered, the server's swap_ms)
        swaps.push((at, at + took, answer["swap_ms"].as_u64().unwrap()));
        std::thread::sleep(EVERY);
    }
    stop.store(true, Ordering::Relaxed);
    let stopped = Instant::now();
    let answered = ingest.join().unwrap();
    let rate = answered.len() as f64 / stopped.duration_since(t0).as_secs_f64();
    let mut arrivals = Vec::new();
    collect(&feed, &mut arrivals, answered.len());

    // Exactly once, checked on the log (the feed's count is shown too).
    let mut count: HashMap<String, u32> = HashMap::new();
    for o in api.events_of("rule:echo") {
        for id in echoed(&o) {
            *count.entry(id).or_default() += 1;
        }
    }
    let lost = answered
        .iter()
        .filter(|(id, _)| !count.contains_key(id))
        .count();
    let doubled = count.values().filter(|&&n| n > 1).count();
    let on_feed: usize = arrivals.iter().map(|(_, v)| echoed(v).len()).sum();

    // Gaps between consecutive outputs on the feed, in the steady part
    // (after the first second, until ingest stopped). A gap is a swap's
    // when it comes within 100 ms of a deploy request; a quiet gap is one
    // at least 500 ms away from every deploy request.
    let near = |a: Instant, b: Instant, margin: Duration| {
        swaps
            .iter()
            .any(|&(s, e, _)| a < e + margin && b + margin > s)
    };
    let steady = t0 + Duration::from_secs(1);
    let (mut swap_gap, mut quiet_gap) = (Duration::ZERO, Duration::ZERO);
    for w in arrivals.windows(2) {
        let (a, b) = (w[0].0, w[1].0);
        if a < steady || b > stopped {
            continue;
        }
        if near(a, b, Duration::from_millis(100)) {
            swap_gap = swap_gap.max(b - a);
        } else if !near(a, b, Duration::from_millis(500)) {
            quiet_gap = quiet_gap.max(b - a);
        }
    }
    // Ingest → output latency, split the same way.
    let arrived: HashMap<String, Instant> = arrivals
        .iter()
        .flat_map(|(at, v)| echoed(v).into_iter().map(move |id| (id, *at)))
        .collect();
    let (mut swap_lat, mut quiet_lat) = (Vec::new(), Vec::new());
    for (id, sent) in &answered {
        let Some(&at) = arrived.get(id) else { continue };
        let lat = at.saturating_duration_since(*sent);
        if near(*sent, at, Duration::from_millis(100)) {
            swap_lat.push(lat);
        } else if !near(*sent, at, Duration::from_millis(500)) {
            quiet_lat.push(lat);
        }
    }
    swap_lat.sort_unstable();
    quiet_lat.sort_unstable();
    let max = |v: &[Duration]| v.last().copied().unwrap_or_default();
    let q = |v: &[Duration], p| {
        if v.is_empty() {
            Duration::ZERO
        } else {
            percentile(v, p)
        }
    };
    let swap_ms: Vec<u64> = swaps.iter().map(|s| s.2).collect();
    let requests: Vec<u64> = swaps
        .iter()
        .map(|s| (s.1 - s.0).as_millis() as u64)
        .collect();
    println!(
        "  ingested {} events ({rate:.0}/s); outputs listed them: {} lost, {} doubled; on the feed {on_feed}",
        answered.len(),
        lost,
        doubled
    );
    println!(
        "  swaps: requests {requests:?} ms, swap_ms {swap_ms:?}; longest gap between outputs around a swap {:.1} ms, elsewhere {:.1} ms",
        ms(swap_gap),
        ms(quiet_gap)
    );
    println!(
        "  ingest → output: around swaps max {:.1} ms (p99 {:.1}); elsewhere p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(max(&swap_lat)),
        ms(q(&swap_lat, 0.99)),
        ms(q(&quiet_lat, 0.5)),
        ms(q(&quiet_lat, 0.99)),
        ms(max(&quiet_lat))
    );
    table.row(
        format!("hot swap under ingest ({rate:.0} events/s, `count = 1`, {SWAPS} swaps, durability normal): longest gap between outputs"),
        format!(
            "{:.0} ms around a swap, {:.0} ms elsewhere; ingest → output max {:.0} ms around a swap, {:.0} ms elsewhere; {lost} lost, {doubled} doubled of {}",
            ms(swap_gap),
            ms(quiet_gap),
            ms(max(&swap_lat)),
            ms(max(&quiet_lat)),
            answered.len()
        ),
    );
}

// ---- 4. isolation --------------------------------------------------------

/// Fuel that a `loop` event of HOSTILE burns in about `target` on this
/// machine (measured in-process, the server's runtime settings).
fn fuel_for(target: Duration) -> u64 {
    let rt = Runtime::new(RuntimeConfig::default()).unwrap();
    const PROBE: u64 = 1_000_000_000;
    let limits = Limits {
        fuel: PROBE,
        deadline: Duration::from_secs(60),
        ..Limits::default()
    };
    let rule = rt
        .load(
            RuleLabel::new("bench", "hostile"),
            &component_bytes(HOSTILE),
            limits,
        )
        .unwrap();
    let event = Event {
        seq: 1,
        id: "spin".into(),
        tenant: "bench".into(),
        source: "bench".into(),
        kind: "loop".into(),
        time: 0,
        ingested: 0,
        payload: "{}".into(),
        hops: 0,
    };
    // The fastest of five: the probe's own rate, not the machine's load.
    let fastest = (0..5)
        .map(|_| {
            let mut instance = rule.instance();
            let t0 = Instant::now();
            assert!(instance.filter(&event).is_err(), "the loop ran out of fuel");
            t0.elapsed()
        })
        .min()
        .unwrap();
    (PROBE as f64 * target.as_secs_f64() / fastest.as_secs_f64()) as u64
}

/// Tenant B ingests at `rate` for `length` (ids `<tag>-<i>`); its ingest
/// → output latencies, and how many outputs were missing.
fn b_latency(
    b: &Api,
    feed: &mpsc::Receiver<(Instant, Value)>,
    tag: &str,
    rate: f64,
    length: Duration,
) -> (Vec<Duration>, usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let ingest = {
        let (b, stop, tag) = (b.clone(), stop.clone(), tag.to_owned());
        std::thread::spawn(move || {
            let mut answered = Vec::new();
            paced(rate, &stop, |i| {
                let id = format!("{tag}-{i:06}");
                b.ingest(&json!({"id": id, "source": "bench", "kind": "x", "payload": payload(i)}));
                answered.push((id, Instant::now()));
            });
            answered
        })
    };
    std::thread::sleep(length);
    stop.store(true, Ordering::Relaxed);
    let answered = ingest.join().unwrap();
    let mut arrivals = Vec::new();
    collect(feed, &mut arrivals, answered.len());
    let arrived: HashMap<String, Instant> = arrivals
        .iter()
        .flat_map(|(at, v)| echoed(v).into_iter().map(move |id| (id, *at)))
        .collect();
    let lat: Vec<Duration> = answered
        .iter()
        .filter_map(|(id, sent)| {
            arrived
                .get(id)
                .map(|at| at.saturating_duration_since(*sent))
        })
        .collect();
    let missing = answered.len() - lat.len();
    (lat, missing)
}

/// Tenant A's hostile rule: `select` spins on every `loop` event until its
/// fuel runs out. An event that runs out of fuel counts as a failure of
/// that event and, with one attempt, is skipped at once. (The deadline is
/// only the backstop: a deadline hit with fuel metering on is taken for the
/// machine's slowness and retried, not counted against the event.)
struct Hostile {
    api: Api,
    spin: Duration,
}

impl Hostile {
    /// More `loop` events a second than the rule gets through (≈ 5 at
    /// 200 ms each): while it runs it spins all the time.
    const RATE: f64 = 20.0;

    /// Deploy the rule for `api`'s tenant, paused.
    fn deploy(api: Api, fuel: u64, spin: Duration) -> Hostile {
        let manifest = format!(
            "name = \"hostile\"\nversion = 1\n\n[trigger.batch]\ncount = 1\nwindow = \"1h\"\nexpire = \"fire\"\n\n[limits]\nfuel = {fuel}\ndeadline = \"2s\"\n\n[select]\non_poison = \"skip\"\nattempts = 1\n"
        );
        api.deploy("hostile", &manifest, &component_bytes(HOSTILE));
        api.post("/v1/rules/hostile/pause");
        Hostile { api, spin }
    }

    /// Run `f` while the rule runs (its backlog, and a steady stream of
    /// `loop` events); paused again after. `f`'s result and the events sent.
    fn during<T>(&self, f: impl FnOnce() -> T) -> (T, u64) {
        self.api.post("/v1/rules/hostile/resume");
        let stop = Arc::new(AtomicBool::new(false));
        let flood = {
            let (api, stop) = (self.api.clone(), stop.clone());
            std::thread::spawn(move || {
                paced(Self::RATE, &stop, |i| {
                    api.ingest(&json!({"source": "bench", "kind": "loop", "payload": {"n": i}}));
                })
            })
        };
        std::thread::sleep(Duration::from_millis(500));
        let out = f();
        stop.store(true, Ordering::Relaxed);
        let sent = flood.join().unwrap();
        self.api.post("/v1/rules/hostile/pause");
        // The spin under way when the pause came ends within its fuel.
        std::thread::sleep(2 * self.spin);
        (out, sent)
    }

    /// (events skipped, median time between consecutive skips while busy:
    /// how long the rule spun on an event.)
    fn skips(&self) -> (usize, i64) {
        let times: Vec<i64> = self
            .api
            .events_of("sluice")
            .iter()
            .filter(|e| e["kind"] == "event.skipped")
            .filter_map(|e| e["time"].as_i64())
            .collect();
        let mut gaps: Vec<i64> = times
            .windows(2)
            .map(|w| w[1] - w[0])
            .filter(|&d| d < 1_000)
            .collect();
        gaps.sort_unstable();
        (times.len(), gaps.get(gaps.len() / 2).copied().unwrap_or(0))
    }
}

/// Tenant B's latencies in one kind of phase (all rounds), the p99 of
/// each round, and the server's CPU.
#[derive(Default)]
struct Phase {
    lat: Vec<Duration>,
    round_p99: Vec<Duration>,
    missing: usize,
    cpu: Duration,
    wall: Duration,
}

impl Phase {
    fn measure(&mut self, server: &Server, run: impl FnOnce() -> (Vec<Duration>, usize)) {
        let (cpu, t0) = (server.cpu(), Instant::now());
        let (mut lat, missing) = run();
        self.cpu += server.cpu() - cpu;
        self.wall += t0.elapsed();
        lat.sort_unstable();
        if !lat.is_empty() {
            self.round_p99.push(percentile(&lat, 0.99));
        }
        self.lat.extend(lat);
        self.missing += missing;
    }

    /// p50, p99 and max of all rounds together, and the median of the
    /// rounds' p99s (one stall of the machine moves only its round's).
    fn quantiles(&mut self) -> Quantiles {
        self.lat.sort_unstable();
        self.round_p99.sort_unstable();
        match self.lat.last() {
            None => Quantiles::default(),
            Some(&max) => Quantiles {
                p50: percentile(&self.lat, 0.5),
                p99: percentile(&self.lat, 0.99),
                max,
                median_p99: percentile(&self.round_p99, 0.5),
            },
        }
    }

    fn cores(&self) -> f64 {
        self.cpu.as_secs_f64() / self.wall.as_secs_f64()
    }
}

#[derive(Default, Clone, Copy)]
struct Quantiles {
    p50: Duration,
    p99: Duration,
    max: Duration,
    median_p99: Duration,
}

fn isolation(secs: u64, table: &mut Table) {
    const B_RATE: f64 = 200.0;
    // The phases alternate in short rounds, so that the drift of a shared
    // machine falls on all alike.
    const ROUNDS: u32 = 5;
    let segment = Duration::from_secs_f64((secs as f64 / ROUNDS as f64).max(2.0));
    let spin = Duration::from_millis(200);
    let fuel = fuel_for(spin).min(QUOTA_MAX_FUEL);
    println!(
        "== 4. isolation (durability normal): tenant B at {B_RATE} events/s through ECHO (count = 1); tenant A idle (its rule paused) / hostile ({} `loop` events/s into HOSTILE, fuel {fuel} ≈ {spin:?} of spinning an event) / the same hostile tenant on a second server process (the 2 cores shared, nothing else); {ROUNDS} rounds of {segment:?} each ==",
        Hostile::RATE
    );
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("isolation.db"),
        &["--durability", "normal"],
    );
    let a = Hostile::deploy(server.tenant("tenant-a"), fuel, spin);
    let b = server.tenant("tenant-b");
    b.deploy("echo", &echo_manifest(1, 1), &component_bytes(ECHO));
    let feed = b.feed("rule:echo");
    // The control: the same hostile load, in another process.
    let elsewhere = Server::start(
        &dir.path().join("elsewhere.db"),
        &["--durability", "normal"],
    );
    let other = Hostile::deploy(elsewhere.tenant("tenant-a"), fuel, spin);

    // Warm-up, not measured: the feed's and the rule's first events.
    b_latency(&b, &feed, "warm", B_RATE, Duration::from_secs(1));
    let (mut idle, mut loaded, mut control) =
        (Phase::default(), Phase::default(), Phase::default());
    let mut a_sent = 0;
    for round in 0..ROUNDS {
        idle.measure(&server, || {
            b_latency(&b, &feed, &format!("idle{round}"), B_RATE, segment)
        });
        a_sent += a
            .during(|| {
                loaded.measure(&server, || {
                    b_latency(&b, &feed, &format!("hostile{round}"), B_RATE, segment)
                })
            })
            .1;
        other.during(|| {
            control.measure(&server, || {
                b_latency(&b, &feed, &format!("control{round}"), B_RATE, segment)
            })
        });
    }
    let (skipped, spun) = a.skips();
    let (_, spun_elsewhere) = other.skips();
    let status = a.api.get("/v1/rules/hostile");
    let last_error = status["last_error"].as_str().unwrap_or("none");
    println!(
        "  A: {a_sent} `loop` events sent, {skipped} skipped by its rule, {spun} ms apart (median; on the second server {spun_elsewhere} ms); last error: {}",
        last_error.lines().next().unwrap_or_default()
    );
    let report = |name: &str, phase: &mut Phase| {
        let q = phase.quantiles();
        println!(
            "  B ingest → output, A {name}: p50 {:.2} ms, p99 {:.2} ms (rounds' p99s {:.1?} ms, median {:.2} ms), max {:.1} ms ({} outputs, {} missing); B's server used {:.2} cores",
            ms(q.p50),
            ms(q.p99),
            phase.round_p99.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
            ms(q.median_p99),
            ms(q.max),
            phase.lat.len(),
            phase.missing,
            phase.cores()
        );
        q
    };
    let i = report("idle", &mut idle);
    let l = report("hostile", &mut loaded);
    let c = report("hostile on the second server", &mut control);
    let up = |x: Duration, base: Duration| 100.0 * (x.as_secs_f64() / base.as_secs_f64() - 1.0);
    println!(
        "  B's p99 (median of rounds): {:+.0} % with A hostile in the same server, {:+.0} % with A hostile in another process; all rounds pooled: {:+.0} % / {:+.0} %",
        up(l.median_p99, i.median_p99),
        up(c.median_p99, i.median_p99),
        up(l.p99, i.p99),
        up(c.p99, i.p99)
    );
    table.row(
        format!(
            "isolation: tenant B's ingest → output ({B_RATE:.0} events/s, `count = 1`, durability normal), A idle / A's hostile rule spinning / the same on a second server process"
        ),
        format!(
            "p50 {:.2} / {:.2} / {:.2} ms, p99 (median of {ROUNDS} rounds) {:.1} / {:.1} / {:.1} ms: **{:+.0} %** (a second process: {:+.0} %); pooled p99 {:.1} / {:.1} / {:.1} ms",
            ms(i.p50),
            ms(l.p50),
            ms(c.p50),
            ms(i.median_p99),
            ms(l.median_p99),
            ms(c.median_p99),
            up(l.median_p99, i.median_p99),
            up(c.median_p99, i.median_p99),
            ms(i.p99),
            ms(l.p99),
            ms(c.p99)
        ),
    );
}

/// Let the disk catch up with what a part wrote (and deleted) before the
/// next part measures latencies.
fn settle() {
    let _ = Command::new("sync").status();
    std::thread::sleep(Duration::from_secs(1));
}

// ---- 5. a hot swap over a large state ----------------------------------

/// A swap stops the old task and opens the rule's state again: its cost is
/// that state's. The shape users have — thousands of interleaved
/// partitions, each with a window of hundreds of events — against the same
/// rule with no state yet, in the same run.
fn swap_state(table: &mut Table) {
    const PARTS: u64 = 2_000;
    const PER: u64 = 250;
    const CHUNK: u64 = 5_000;
    println!(
        "== 5. hot swap over a large state: {PARTS} partitions x {PER} events in open windows (count = 1000), durability normal =="
    );
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&root.path().join("state.db"), &["--durability", "normal"]);
    let api = server.tenant("acme");
    let wasm = component_bytes(ECHO);
    let swap_ms = |v: &Value| Duration::from_millis(v["swap_ms"].as_u64().unwrap());
    api.deploy("echo", &echo_manifest(1, 1_000), &wasm);
    let (mut empty, mut empty_req) = (Vec::new(), Vec::new());
    for version in 2..=4 {
        let (v, took) = api.deploy("echo", &echo_manifest(version, 1_000), &wasm);
        empty.push(swap_ms(&v));
        empty_req.push(took);
    }
    // Interleaved: event i goes to partition i mod PARTS.
    let t0 = Instant::now();
    let mut last = 0;
    for chunk in 0..(PARTS * PER / CHUNK) {
        let mut body = String::new();
        for i in chunk * CHUNK..(chunk + 1) * CHUNK {
            let mut p = payload(i);
            p["key"] = json!(format!("p{:04}", i % PARTS));
            body.push_str(&json!({"source": "bench", "kind": "x", "payload": p}).to_string());
            body.push('\n');
        }
        let r = api
            .http
            .post(format!("{}/v1/events", api.base))
            .bearer_auth(&api.token)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .expect("POST /v1/events");
        last = expect_ok(r, "ingest")["seqs"]
            .as_array()
            .and_then(|s| s.last())
            .and_then(Value::as_u64)
            .unwrap();
    }
    loop {
        let rule = api.get("/v1/rules/echo");
        if rule["cursor"].as_u64().unwrap_or(0) >= last {
            assert_eq!(rule["partitions"].as_u64(), Some(PARTS), "{rule}");
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let filled = t0.elapsed();
    let (mut full, mut full_req) = (Vec::new(), Vec::new());
    for version in 5..=7 {
        let (v, took) = api.deploy("echo", &echo_manifest(version, 1_000), &wasm);
        full.push(swap_ms(&v));
        full_req.push(took);
    }
    let rule = api.get("/v1/rules/echo");
    assert_eq!(
        rule["partitions"].as_u64(),
        Some(PARTS),
        "the windows carried over: {rule}"
    );
    let (empty, empty_req, full, full_req) = (
        median(empty),
        median(empty_req),
        median(full),
        median(full_req),
    );
    println!(
        "  filled in {:.1} s; swap with no state: {:.0} ms (request {:.0} ms); with {PARTS} x {PER} events open: {:.0} ms (request {:.0} ms)",
        filled.as_secs_f64(),
        ms(empty),
        ms(empty_req),
        ms(full),
        ms(full_req)
    );
    table.row(
        format!("hot swap over {PARTS} interleaved partitions with {PER} events each in open windows (durability normal), vs the same rule with no state"),
        format!(
            "swap {:.0} ms (request {:.0} ms) vs {:.0} ms (request {:.0} ms): {:.1}x the request",
            ms(full),
            ms(full_req),
            ms(empty),
            ms(empty_req),
            full_req.as_secs_f64() / empty_req.as_secs_f64()
        ),
    );
}

fn main() {
    if !common::benching() {
        return;
    }
    let secs: u64 = common::env_or("SLUICE_BENCH_SECS", 10);
    let only = std::env::var("SLUICE_BENCH_ONLY").unwrap_or_default();
    let run = |part: &str| only.is_empty() || only == part;
    let mut table = Table::default();
    if run("ingest") {
        ingest(secs, &mut table);
        settle();
    }
    if run("deploy") {
        deploy(&mut table);
    }
    if run("swap") {
        hot_swap(&mut table);
        settle();
    }
    if run("isolation") {
        isolation(secs, &mut table);
        settle();
    }
    if run("swap-state") {
        swap_state(&mut table);
    }
    println!("\n| what | measured |\n| --- | --- |");
    for [what, measured] in &table.0 {
        println!("| {what} | {measured} |");
    }
}
