//! Durable-timer benchmarks for dwell and schedule rules (a bench binary;
//! each part prints its figures):
//!
//! 1. 1 000 000 open dwell memberships with an `after` reaction, made by
//!    the rule core from 1 000 000 events: bytes per membership on disk and
//!    in memory, start-up time to reload them, and timer lateness (fire
//!    created and committed, after its deadline) when they fall due over
//!    30 s;
//! 2. 1 000 schedule rules ticking every second, each of its own tenant (a
//!    multi-tenant server's shape), in the engine on the real clock: tick
//!    lateness (handler start after the tick) and CPU used,
//!    against the same 1 000 rules whose cron does not fire, in the same
//!    run;
//! 3. one schedule rule with 10 000 partitions ticking every 10 s (10 000
//!    fires a tick): lateness of the tick's fires, CPU used.
//!
//! Run: `cargo bench -p sluice --bench timers` (`SLUICE_BENCH_SECS`, default
//! 60, sets how long parts 2 and 3 run).

#[path = "common.rs"]
mod common;
use common::{percentile, rss_bytes};

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sluice::clock::{Clock, SharedClock, SystemClock};
use sluice::engine::Engine;
use sluice::engine::driver::Driver;
use sluice::engine::rule::Deployable;
use sluice::log::{Durability, EventLog, EventQuery, LogConfig, NewEvent};
use sluice::manifest::{DwellTrigger, Manifest, Reaction, ReactionTime};
use sluice::runtime::{Limits, RuleLabel, Runtime, RuntimeConfig};
use sluice::triggers::FireReason;
use sluice::triggers::core::{RuleSpec, Start};
use sluice::triggers::dwell::Dwell;
use sluice_test_components::component_bytes;
use sluice_test_components::components::ECHO;

fn open_log(dir: &tempfile::TempDir, name: &str) -> EventLog {
    EventLog::open_sqlite(
        dir.path().join(name),
        Durability::Normal,
        // Events carry the times their memberships anchor at.
        LogConfig {
            follow_event_time: true,
            ..LogConfig::default()
        },
        Arc::new(SystemClock),
    )
    .unwrap()
}

/// CPU time this process used so far (user + system).
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which ends with ')'): utime is the
    // 12th, stime the 13th; both in clock ticks of 10 ms.
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<u64> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    Duration::from_millis((fields.get(11).unwrap_or(&0) + fields.get(12).unwrap_or(&0)) * 10)
}

fn db_bytes(dir: &tempfile::TempDir, name: &str) -> u64 {
    ["", "-wal"]
        .iter()
        .filter_map(|s| std::fs::metadata(dir.path().join(format!("{name}{s}"))).ok())
        .map(|m| m.len())
        .sum()
}

fn dwell(after: Duration) -> Dwell {
    Dwell::from(&DwellTrigger {
        reactions: vec![Reaction {
            label: "silent".into(),
            when: ReactionTime::After(after),
        }],
        max_dwell: None,
    })
}

fn memberships(rt: &Runtime) {
    const N: u64 = 1_000_000;
    const SPREAD_MS: i64 = 30_000;
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(&dir, "dwell.db");
    let rule = || {
        rt.load(
            RuleLabel::new("bench", "absence"),
            &component_bytes(ECHO),
            Limits::default(),
        )
        .unwrap()
    };
    let spec = || RuleSpec::with_defaults("bench", "absence");
    // A membership per device, anchored (at its event's ingest time) over
    // 30 s of engine time from t0.
    let t0 = SystemClock.now_millis();
    let anchor = |seq: u64| t0 + ((seq - 1) as i64 * SPREAD_MS) / N as i64;
    for chunk in (0..N).collect::<Vec<_>>().chunks(10_000) {
        let events = chunk
            .iter()
            .map(|i| NewEvent {
                tenant: "bench".into(),
                id: Some(format!("hb{i:07}")),
                source: "dev".into(),
                kind: "heartbeat.ping".into(),
                time: Some(anchor(i + 1)),
                payload: json!({"key": format!("device-{i:07}")}).to_string(),
                hops: 0,
                ingested: None,
            })
            .collect();
        log.append_blocking(events).unwrap();
    }
    log.close();
    let events_only = db_bytes(&dir, "dwell.db");
    let log = open_log(&dir, "dwell.db");
    let now = SystemClock.now_millis();
    let hour = dwell(Duration::from_secs(3600));
    // Memory is measured on this first core: the allocator keeps what a
    // dropped core freed for reuse, so a second one would seem free.
    let before = rss_bytes();
    let mut core = Driver::open(&log, spec(), hour, rule(), now, Start::Cold).unwrap();
    let started = Instant::now();
    while core.step(now, 8_192).unwrap().read > 0 {}
    let stepped = started.elapsed();
    let per_member = rss_bytes().saturating_sub(before) as f64 / N as f64;
    assert_eq!(core.partitions() as u64, N);
    drop(core);
    log.close();
    let with_state = db_bytes(&dir, "dwell.db");
    let log = open_log(&dir, "dwell.db");
    // Start-up: reload every membership. The reaction's `after` is chosen
    // now so that the deadlines fall 5 s from now, over 30 s.
    let reload = Instant::now();
    let after = Duration::from_millis((SystemClock.now_millis() + 5_000 - t0).max(0) as u64);
    let now = SystemClock.now_millis();
    let mut core = Driver::open(&log, spec(), dwell(after), rule(), now, Start::Cold).unwrap();
    let reloaded = reload.elapsed();
    let mut late = Vec::with_capacity(N as usize);
    let mut fires = 0u64;
    let (mut busy, mut steps, mut largest) = (Duration::ZERO, 0u64, 0usize);
    eprintln!("dwell: reloaded; the memberships fall due from now");
    while let Some(next) = core.next_deadline() {
        let wait = next - SystemClock.now_millis();
        if wait > 0 {
            std::thread::sleep(Duration::from_millis(wait as u64));
        }
        let began = Instant::now();
        let step = core.step(SystemClock.now_millis(), usize::MAX).unwrap();
        let done = SystemClock.now_millis();
        busy += began.elapsed();
        steps += 1;
        largest = largest.max(step.fires.len());
        for f in &step.fires {
            let FireReason::Dwell { member_since, .. } = f.reason else {
                unreachable!("a dwell fire")
            };
            let due = member_since + after.as_millis() as i64;
            late.push((done - due).max(0));
        }
        fires += step.fires.len() as u64;
    }
    assert_eq!(fires, N, "every membership fired once");
    late.sort_unstable();
    println!(
        "dwell: {N} memberships made by the core from {N} events in {stepped:.1?}; on disk {:.0} bytes per membership (state rows + index), in memory {per_member:.0} bytes; start-up reload {reloaded:.2?}; timer lateness falling due over {} s (fire created and committed): p50 {} ms, p99 {} ms, max {} ms; {steps} steps (largest {largest} fires), {:.1} µs of step per fire",
        (with_state.saturating_sub(events_only)) as f64 / N as f64,
        SPREAD_MS / 1000,
        percentile(&late, 0.5),
        percentile(&late, 0.99),
        late.last().unwrap(),
        busy.as_secs_f64() * 1e6 / N as f64,
    );
}

fn schedule_manifest(name: &str, cron: &str, extra: &str) -> Manifest {
    Manifest::parse(&format!(
        "name = \"{name}\"\nversion = 1\n\n[trigger.schedule]\ncron = \"{cron}\"\ntimezone = \"UTC\"\n{extra}"
    ))
    .unwrap()
}

/// Deploy `manifests`, run for `secs`, stop: (handler-start lateness of
/// every tick's fire in ms, sorted; CPU used).
fn run_schedules(
    tokio: &tokio::runtime::Runtime,
    rt: &Runtime,
    manifests: &[Manifest],
    seed: Vec<NewEvent>,
    secs: u64,
    per_tenant: bool,
) -> (Vec<i64>, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(&dir, "sched.db");
    let clock: SharedClock = Arc::new(SystemClock);
    let engine = Engine::new(log.clone(), clock);
    let bytes = component_bytes(ECHO);
    let rss0 = rss_bytes();
    let tenant = |i: usize| match per_tenant {
        true => format!("t{i:04}"),
        false => "bench".to_owned(),
    };
    for (i, m) in manifests.iter().enumerate() {
        let d = Deployable::load(rt, &tenant(i), &bytes, m).unwrap();
        tokio.block_on(engine.deploy(d)).unwrap();
    }
    let rss_deployed = rss_bytes();
    if !seed.is_empty() {
        log.append_blocking(seed).unwrap();
    }
    let cpu0 = cpu();
    std::thread::sleep(Duration::from_secs(secs));
    let used = cpu() - cpu0;
    eprintln!(
        "  {} rules: memory {:.1} MB after deploying, {:.1} MB after {secs} s",
        manifests.len(),
        rss_deployed.saturating_sub(rss0) as f64 / 1e6,
        rss_bytes().saturating_sub(rss0) as f64 / 1e6
    );
    tokio.block_on(engine.shutdown());
    let outputs: Vec<_> = (0..manifests.len())
        .flat_map(|i| {
            log.query(&EventQuery {
                kind: Some("echo".into()),
                ..EventQuery::tenant(&tenant(i), usize::MAX >> 1)
            })
            .unwrap()
        })
        .collect();
    let mut late: Vec<i64> = outputs
        .iter()
        .map(|e| {
            let p: serde_json::Value = serde_json::from_str(&e.payload).unwrap();
            e.time - p["tick"].as_i64().unwrap()
        })
        .collect();
    late.sort_unstable();
    log.close();
    (late, used)
}

fn many_rules(tokio: &tokio::runtime::Runtime, rt: &Runtime, secs: u64) {
    let rules: usize = common::env_or("SLUICE_BENCH_RULES", 1_000);
    let ticking: Vec<Manifest> = (0..rules)
        .map(|i| schedule_manifest(&format!("tick-{i:04}"), "* * * * * *", ""))
        .collect();
    // The same rules, with a cron that does not fire while measured.
    let idle: Vec<Manifest> = (0..rules)
        .map(|i| schedule_manifest(&format!("idle-{i:04}"), "0 0 0 1 1 * 2099", ""))
        .collect();
    let (_, idle_cpu) = run_schedules(tokio, rt, &idle, Vec::new(), secs, true);
    let (late, busy_cpu) = run_schedules(tokio, rt, &ticking, Vec::new(), secs, true);
    report(
        &format!("{rules} rules ticking every second for {secs} s"),
        "ticks",
        &late,
        secs,
        (busy_cpu, idle_cpu),
    );
}

fn many_partitions(tokio: &tokio::runtime::Runtime, rt: &Runtime, secs: u64) {
    const PARTITIONS: usize = 10_000;
    let seed: Vec<NewEvent> = (0..PARTITIONS)
        .map(|i| NewEvent {
            tenant: "bench".into(),
            id: Some(format!("s{i:05}")),
            source: "shop".into(),
            kind: "order.paid".into(),
            time: None,
            payload: json!({"key": format!("customer-{i:05}")}).to_string(),
            hops: 0,
            ingested: None,
        })
        .collect();
    let m = schedule_manifest("digest", "*/10 * * * * *", "\n[concurrency]\nmax = 2\n");
    let idle = schedule_manifest("digest", "0 0 0 1 1 * 2099", "");
    let (_, idle_cpu) = run_schedules(tokio, rt, &[idle], seed.clone(), secs, false);
    let (late, busy_cpu) = run_schedules(tokio, rt, &[m], seed, secs, false);
    report(
        &format!("1 rule, {PARTITIONS} partitions, a tick every 10 s for {secs} s"),
        "fires",
        &late,
        secs,
        (busy_cpu, idle_cpu),
    );
}

/// One line of schedule figures: what ran, lateness (handler start after
/// the tick, queueing included), CPU against the same rules idle.
fn report(shape: &str, what: &str, late: &[i64], secs: u64, (busy, idle): (Duration, Duration)) {
    let q = |p: f64| {
        if late.is_empty() {
            0
        } else {
            percentile(late, p)
        }
    };
    println!(
        "schedule: {shape}: {} {what} ran ({:.0}/s); lateness (handler start after the tick) p50 {} ms, p99 {} ms, max {} ms; CPU {busy:.1?} ({:.0} % of a core) against {idle:.1?} for the same rules idle",
        late.len(),
        late.len() as f64 / secs as f64,
        q(0.5),
        q(0.99),
        late.last().copied().unwrap_or(0),
        busy.as_secs_f64() * 100.0 / secs as f64,
    );
}

fn main() {
    if !common::benching() {
        return;
    }
    let secs: u64 = common::env_or("SLUICE_BENCH_SECS", 60);
    let only = std::env::var("SLUICE_BENCH_ONLY").unwrap_or_default();
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let rt = Runtime::new(RuntimeConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        ..RuntimeConfig::default()
    })
    .unwrap();
    if only.is_empty() || only == "dwell" {
        memberships(&rt);
    }
    if only.is_empty() || only == "rules" {
        many_rules(&tokio, &rt, secs);
    }
    if only.is_empty() || only == "partitions" {
        many_partitions(&tokio, &rt, secs);
    }
}
