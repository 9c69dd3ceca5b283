//! Throughput on the shapes users have (a bench binary; prints figures):
//!
//! 1. end-to-end: 1 000 000 `push` events (≈ 160 B payloads, 1 000 repos
//!    interleaved, 90 % kept) through `sluice run` with a rule that parses
//!    the payload, keeps `ok`, keys by `repo`, batches 500 per window and
//!    emits one summary per batch — against `sluice ingest` of the same
//!    file in the same run (both `--durability normal --batch 1000`);
//! 2. `sluice test` replaying 1 000 000 timed events (1 ms apart) with the
//!    same rule, against the same ingest baseline;
//! 3. fire cost against interleaving: the same rule with 10, 1 000 and
//!    10 000 partitions interleaved round-robin, windows of 500 events —
//!    time per fire (read its events, run the handler, commit);
//! 4. fires per second of a rule whose handler takes a few milliseconds,
//!    at `concurrency` 1 and 4 (one fire per event, 64 partitions);
//! 5. replay over the past: the same events ingested into a server (the
//!    manual clock moving 10 s per 10 000), the same rule deployed, then
//!    `sluice replay` over the whole range — events per second, against
//!    `sluice test` of the same events in the same run.
//!
//! Parts 1 and 2 run the rule twice: reading the payload in the guest, and
//! with input projection (`[select] fields = ["/repo", "/ok"]`: the engine
//! parses the payloads).
//!
//! Run: `cargo bench -p sluice --bench throughput` (SLUICE_BENCH_EVENTS
//! overrides the 1 000 000; SLUICE_BENCH_ONLY=replay runs part 5 alone,
//! SLUICE_BENCH_ONLY=e2e parts 1 and 2).

#[path = "common.rs"]
mod common;
use common::timed;

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sluice::clock::ManualClock;
use sluice::engine::driver::Driver;
use sluice::log::{Durability, EventLog, LogConfig, NewEvent};
use sluice::manifest::{BatchTrigger, Expire};
use sluice::runtime::{Limits, RuleLabel, Runtime, RuntimeConfig};
use sluice::triggers::batch::Batch;
use sluice::triggers::core::{RuleSpec, Start};
use sluice_test_components::component_bytes;
use sluice_test_components::components::{REPO_SUMMARY, SLOW_DIGEST};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

fn payload(i: u64, repos: u64) -> String {
    json!({"repo": format!("acme/r{}", i % repos), "ok": !i.is_multiple_of(10), "n": i,
        "title": "Refactor the ingestion pipeline to batch writes", "author": "octocat"})
    .to_string()
}

fn write_events(path: &Path, n: u64, timed: bool) {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let start = 1_767_225_600_000i64;
    for i in 0..n {
        let mut line = json!({"source": "github", "kind": "push",
            "payload": serde_json::from_str::<serde_json::Value>(&payload(i, 1_000)).unwrap()});
        if timed {
            line["time"] = json!(start + i as i64);
        }
        writeln!(out, "{line}").unwrap();
    }
}

/// Count the events of `kind` in a database, through the library.
fn count_kind(db: &Path, kind: &str) -> i64 {
    let log = EventLog::open_sqlite(
        db,
        Durability::Normal,
        LogConfig::default(),
        Arc::new(ManualClock::new(0)),
    )
    .unwrap();
    let mut n = 0;
    let mut after = 0;
    loop {
        let got = log
            .query(&sluice::log::EventQuery {
                kind: Some(kind.into()),
                after_seq: Some(after),
                ..sluice::log::EventQuery::tenant("default", 100_000)
            })
            .unwrap();
        let Some(last) = got.last() else { break };
        after = last.seq;
        n += got.len() as i64;
    }
    log.close();
    n
}

const MANIFEST: &str = r#"name = "repo-summary"
version = 1

[trigger.batch]
count = 500
window = "10m"
"#;

/// The same rule with input projection.
const MANIFEST_FIELDS: &str = r#"name = "repo-summary"
version = 1

[trigger.batch]
count = 500
window = "10m"

[select]
fields = ["/repo", "/ok"]
"#;

fn end_to_end_and_replay(n: u64) {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.ndjson");
    let timed_events = dir.path().join("timed.ndjson");
    write_events(&events, n, false);
    write_events(&timed_events, n, true);
    let cache = dir.path().join("cache");

    let ingest = timed(
        Command::new(SLUICE)
            .args([
                "ingest",
                "--durability",
                "normal",
                "--batch",
                "1000",
                "--db",
            ])
            .arg(dir.path().join("ingest.db")),
        &events,
    );
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "log-only ingest ({n} events): {:.1} s, {:.0} events/s",
        ingest.as_secs_f64(),
        rate(ingest)
    );
    for (how, text) in [
        ("the rule reads the payload", MANIFEST),
        ("with [select] fields", MANIFEST_FIELDS),
    ] {
        let tag = if text == MANIFEST { "plain" } else { "fields" };
        let manifest = dir.path().join(format!("rule-{tag}.toml"));
        std::fs::write(&manifest, text).unwrap();
        let rule = format!("{}={REPO_SUMMARY}", manifest.display());
        let run_db = dir.path().join(format!("run-{tag}.db"));
        let run = timed(
            Command::new(SLUICE)
                .args([
                    "run",
                    "--durability",
                    "normal",
                    "--batch",
                    "1000",
                    "--exit-when-idle",
                ])
                .args(["--rule", &rule, "--db"])
                .arg(&run_db)
                .env("SLUICE_CACHE_DIR", &cache),
            &events,
        );
        let fires = count_kind(&run_db, "repo.summary");
        let replay = timed(
            Command::new(SLUICE)
                .args(["test", REPO_SUMMARY, "--manifest"])
                .arg(&manifest)
                .arg("--events")
                .arg(&timed_events)
                .env("SLUICE_CACHE_DIR", &cache),
            Path::new("/dev/null"),
        );
        println!(
            "end-to-end sluice run, {how} (1 rule, 1000 repos, count 500): {:.1} s, {:.0} events/s, {fires} fires; {:.0}% of log-only ingest",
            run.as_secs_f64(),
            rate(run),
            100.0 * ingest.as_secs_f64() / run.as_secs_f64()
        );
        println!(
            "sluice test replay, {how} ({n} timed events): {:.1} s, {:.0} events/s; {:.0}% of log-only ingest",
            replay.as_secs_f64(),
            rate(replay),
            100.0 * ingest.as_secs_f64() / replay.as_secs_f64()
        );
    }
}

/// Time per fire with `partitions` interleaved round-robin, windows of 500.
fn fire_cost(rt: &Runtime, partitions: u64) -> (Duration, u64) {
    const COUNT: u64 = 500;
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_767_225_600_000);
    let log = EventLog::open_sqlite(
        dir.path().join("f.db"),
        Durability::Normal,
        LogConfig::default(),
        Arc::new(clock.clone()),
    )
    .unwrap();
    let total = partitions * COUNT;
    let mut batch = Vec::with_capacity(10_000);
    for i in 0..total {
        batch.push(NewEvent {
            tenant: "bench".into(),
            id: None,
            source: "github".into(),
            kind: "push".into(),
            time: None,
            payload: json!({"repo": format!("p{}", i % partitions), "ok": true}).to_string(),
            hops: 0,
            ingested: None,
        });
        if batch.len() == 10_000 {
            log.append_blocking(std::mem::take(&mut batch)).unwrap();
        }
    }
    log.append_blocking(batch).unwrap();
    let rule = rt
        .load(
            RuleLabel::new("bench", "repo-summary"),
            &component_bytes(REPO_SUMMARY),
            Limits::default(),
        )
        .unwrap();
    let trigger = BatchTrigger {
        count: COUNT as u32,
        ..trigger_500()
    };
    let now = 1_767_225_600_000;
    let spec = RuleSpec::with_defaults("bench", "repo-summary");
    let mut core = Driver::open(&log, spec, Batch::from(&trigger), rule, now, Start::Cold).unwrap();
    while core.step(now, 4_096).unwrap().read > 0 {}
    let ids: Vec<String> = core.pending_fires().map(str::to_owned).collect();
    let measured = ids.len().min(200);
    let start = Instant::now();
    for id in &ids[..measured] {
        core.run_fire(id, now).unwrap();
    }
    let per = start.elapsed() / measured as u32;
    if std::env::var("SLUICE_BENCH_ONLY").is_ok() {
        // Where a fire's time goes: reading its events alone.
        let ids: Vec<String> = core.pending_fires().map(str::to_owned).take(100).collect();
        let seqs: Vec<Vec<u64>> = ids
            .iter()
            .map(|id| core.fire(id).unwrap().seqs.clone())
            .collect();
        let t = Instant::now();
        for s in &seqs {
            log.read_seqs("bench", s).unwrap();
        }
        println!(
            "read 500 events by seq: {:?}",
            t.elapsed() / seqs.len() as u32
        );
        let (mut run, mut fin) = (Duration::ZERO, Duration::ZERO);
        for id in &ids {
            let t = Instant::now();
            let job = core.start_fire(id, now).unwrap();
            let attempt = job.run();
            run += t.elapsed();
            let t = Instant::now();
            core.finish_fire(&attempt).unwrap();
            fin += t.elapsed();
        }
        println!(
            "read + handler: {:?}, commit: {:?}",
            run / ids.len() as u32,
            fin / ids.len() as u32
        );
    }
    log.close();
    (per, ids.len() as u64)
}

/// Fires per second through the engine with `max` fires at once.
fn fires_per_second(rt: &Runtime, max: u32) -> f64 {
    const FIRES: u64 = 400;
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(sluice::clock::SystemClock);
    let log = EventLog::open_sqlite(
        dir.path().join("c.db"),
        Durability::Normal,
        LogConfig::default(),
        clock.clone(),
    )
    .unwrap();
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let rule = rt
        .load(
            RuleLabel::new("bench", "slow-digest"),
            &component_bytes(SLOW_DIGEST),
            Limits::default(),
        )
        .unwrap();
    let mut spec = RuleSpec::with_defaults("bench", "slow-digest");
    spec.concurrency = max;
    let engine = sluice::engine::Engine::new(log.clone(), clock);
    tokio
        .block_on(engine.deploy(sluice::engine::rule::Deployable::batch(
            spec,
            rule,
            &BatchTrigger {
                count: 1,
                ..trigger_500()
            },
        )))
        .unwrap();
    let events: Vec<NewEvent> = (0..FIRES)
        .map(|i| NewEvent {
            tenant: "bench".into(),
            id: None,
            source: "shop".into(),
            kind: "order".into(),
            time: None,
            payload: json!({"customer": format!("c{}", i % 64)}).to_string(),
            hops: 0,
            ingested: None,
        })
        .collect();
    let start = Instant::now();
    log.append_blocking(events).unwrap();
    loop {
        let s = engine.status("bench", "slow-digest").unwrap();
        if s.counters.fires_ok >= FIRES {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let rate = FIRES as f64 / start.elapsed().as_secs_f64();
    tokio.block_on(engine.shutdown());
    log.close();
    rate
}

fn trigger_500() -> BatchTrigger {
    BatchTrigger {
        count: 500,
        window: Duration::from_secs(3600),
        expire: Expire::Fire,
        debounce: false,
        max_wait: None,
    }
}

fn main() {
    if !common::benching() {
        return;
    }
    let n: u64 = common::env_or("SLUICE_BENCH_EVENTS", 1_000_000);
    if std::env::var("SLUICE_BENCH_ONLY").is_ok_and(|v| v == "replay") {
        replay_over_the_log(n);
        return;
    }
    if std::env::var("SLUICE_BENCH_ONLY").is_ok_and(|v| v == "e2e") {
        end_to_end_and_replay(n);
        return;
    }
    // SLUICE_BENCH_ONLY=fires skips the end-to-end part (for profiling).
    let only_fires = std::env::var("SLUICE_BENCH_ONLY").is_ok_and(|v| v == "fires");
    if !only_fires {
        end_to_end_and_replay(n);
    }
    let cache = tempfile::tempdir().unwrap();
    let rt = Runtime::new(RuntimeConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        ..RuntimeConfig::default()
    })
    .unwrap();
    println!("fire cost vs interleaving (windows of 500 events):");
    println!("| partitions | fires | time per fire |");
    println!("| ---: | ---: | ---: |");
    let sizes: &[u64] = if only_fires {
        &[1_000]
    } else {
        &[10, 1_000, 10_000]
    };
    for &p in sizes {
        let (per, fires) = fire_cost(&rt, p);
        println!("| {p} | {fires} | {per:?} |");
    }
    if only_fires {
        return;
    }
    let one = fires_per_second(&rt, 1);
    let four = fires_per_second(&rt, 4);
    println!(
        "slow handler, one fire per event: concurrency 1 {one:.0} fires/s, concurrency 4 {four:.0} fires/s ({:.1}x)",
        four / one
    );
}

/// Part 5: `sluice replay` of `n` events a server ingested, against
/// `sluice test` of the same events.
fn replay_over_the_log(n: u64) {
    use std::io::BufRead;
    const ADMIN: &str = "bench-admin";
    let dir = tempfile::tempdir().unwrap();
    let mut server = Command::new(SLUICE)
        .args(["serve", "--listen", "127.0.0.1:0", "--durability", "normal"])
        .args(["--manual-clock", "2026-01-01T00:00:00Z", "--db"])
        .arg(dir.path().join("replay.db"))
        .env("SLUICE_ADMIN_TOKEN", ADMIN)
        .env("SLUICE_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(server.stdout.take().unwrap());
    let url = loop {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "the server exited");
        if let Some(u) = line.trim().strip_prefix("listening on ") {
            break u.to_owned();
        }
    };
    let http = reqwest::blocking::Client::builder()
        .timeout(None)
        .build()
        .unwrap();
    let created: serde_json::Value = http
        .post(format!("{url}/v1/tenants"))
        .bearer_auth(ADMIN)
        .json(
            &json!({"name": "bench", "quotas": {"ingest_per_second": 4_000_000_000u32,
            "ingest_burst": 4_000_000_000u32}}),
        )
        .send()
        .unwrap()
        .json()
        .unwrap();
    let token = created["token"]["token"].as_str().unwrap().to_owned();
    let form = reqwest::blocking::multipart::Form::new()
        .text("manifest", MANIFEST)
        .part(
            "component",
            reqwest::blocking::multipart::Part::bytes(component_bytes(REPO_SUMMARY))
                .file_name("rule.wasm"),
        );
    let r = http
        .put(format!("{url}/v1/rules/repo-summary"))
        .bearer_auth(&token)
        .multipart(form)
        .send()
        .unwrap();
    assert!(r.status().is_success(), "deploy: {}", r.text().unwrap());
    let timed_events = dir.path().join("timed.ndjson");
    write_events(&timed_events, n, true);
    let text = std::fs::read_to_string(&timed_events).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut clock = 1_767_225_600_000i64;
    let mut last = 0;
    for chunk in lines.chunks(10_000) {
        clock += 10_000;
        http.post(format!("{url}/v1/clock"))
            .bearer_auth(ADMIN)
            .json(&json!({"to": clock.to_string()}))
            .send()
            .unwrap();
        let body = chunk.join("\n");
        let v: serde_json::Value = http
            .post(format!("{url}/v1/events"))
            .bearer_auth(&token)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .unwrap()
            .json()
            .unwrap();
        last = v["seqs"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .as_u64()
            .unwrap();
    }
    // The live rule catches up first: the replay has the machine to itself.
    loop {
        let v: serde_json::Value = http
            .get(format!("{url}/v1/rules/repo-summary"))
            .bearer_auth(&token)
            .send()
            .unwrap()
            .json()
            .unwrap();
        if v["cursor"].as_u64().unwrap_or(0) >= last && v["pending_fires"] == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let started = Instant::now();
    let replay = Command::new(SLUICE)
        .args([
            "replay",
            "repo-summary",
            "--from",
            "2026-01-01T00:00:00Z",
            "--json",
        ])
        .env("SLUICE_URL", &url)
        .env("SLUICE_TOKEN", &token)
        .stdout(std::process::Stdio::null())
        .output()
        .unwrap();
    let replayed = started.elapsed();
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let manifest = dir.path().join("rule.toml");
    std::fs::write(&manifest, MANIFEST).unwrap();
    let test = timed(
        Command::new(SLUICE)
            .args(["test", REPO_SUMMARY, "--json", "--manifest"])
            .arg(&manifest)
            .arg("--events")
            .arg(&timed_events)
            .env("SLUICE_CACHE_DIR", dir.path().join("cache")),
        Path::new("/dev/null"),
    );
    let _ = server.kill();
    let _ = server.wait();
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "sluice replay over the log ({n} events): {:.1} s, {:.0} events/s; sluice test of the same events: {:.1} s, {:.0} events/s ({})",
        replayed.as_secs_f64(),
        rate(replayed),
        test.as_secs_f64(),
        rate(test),
        String::from_utf8_lossy(&replay.stderr).trim()
    );
}
