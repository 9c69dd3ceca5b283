//! Trigger benchmarks (a bench binary; each part prints its figures):
//!
//! 1. end-to-end events/s through 10 batch rules × 10 000 partitions with
//!    durable windows, against the log-only ingest rate in the same run;
//! 2. latency from ingest to a fire's output on the feed when `count` is
//!    reached (handler included), p50/p99;
//! 3. timer lateness with 1 000 000 open windows: how late after its
//!    deadline each window is closed and committed, p50/p99, and the memory
//!    an open window costs;
//! 4. fires with `durability = full`: `count = 1` rules over 1 000
//!    partitions (each fire a batch of one event, its output and its
//!    completion committed) — one rule at `concurrency` 1 and 4, and ten
//!    rules over the same events — fires/s against full-durability ingest
//!    of one event per commit in the same run.
//!
//! Run: `cargo bench -p sluice --bench triggers` (`SLUICE_BENCH_ONLY=
//! rules|latency|timers|full` runs one part).

#[path = "common.rs"]
mod common;
use common::{percentile, rss_bytes};

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sluice::clock::{Clock, ManualClock, SharedClock, SystemClock};
use sluice::engine::Engine;
use sluice::engine::driver::Driver;
use sluice::engine::rule::Deployable;
use sluice::log::{Durability, EventLog, FeedItem, LogConfig, NewEvent, StateOp};
use sluice::manifest::{BatchTrigger, Expire};
use sluice::runtime::{Limits, LoadedRule, RuleLabel, Runtime, RuntimeConfig};
use sluice::triggers::batch::Batch;
use sluice::triggers::core::{RuleSpec, Start};
use sluice_test_components::component_bytes;
use sluice_test_components::components::{HOSTILE, JSON_KEY};

fn event(i: u64, partitions: u64) -> NewEvent {
    NewEvent {
        tenant: "bench".into(),
        id: Some(format!("e{i:09}")),
        source: "github".into(),
        kind: "push".into(),
        time: None,
        payload: json!({"repo": format!("r{:05}", i % partitions), "ok": true, "n": i,
            "title": "Refactor the ingestion pipeline to batch writes"})
        .to_string(),
        hops: 0,
        ingested: None,
    }
}

fn open_log(dir: &tempfile::TempDir, name: &str, clock: SharedClock) -> EventLog {
    open_log_with(dir, name, clock, Durability::Normal)
}

fn open_log_with(
    dir: &tempfile::TempDir,
    name: &str,
    clock: SharedClock,
    durability: Durability,
) -> EventLog {
    EventLog::open_sqlite(
        dir.path().join(name),
        durability,
        LogConfig::default(),
        clock,
    )
    .unwrap()
}

fn batch_parts(
    rt: &Runtime,
    name: &str,
    component: &str,
    count: u32,
    expire: Expire,
) -> (RuleSpec, Batch, LoadedRule) {
    let rule = rt
        .load(
            RuleLabel::new("bench", name),
            &component_bytes(component),
            Limits::default(),
        )
        .unwrap();
    let trigger = BatchTrigger {
        count,
        window: Duration::from_secs(3600),
        expire,
        debounce: false,
        max_wait: None,
    };
    (
        RuleSpec::with_defaults("bench", name),
        Batch::from(&trigger),
        rule,
    )
}

fn batch_rule(rt: &Runtime, name: &str, component: &str, count: u32, expire: Expire) -> Deployable {
    let (spec, _, rule) = batch_parts(rt, name, component, count, expire);
    Deployable::batch(
        spec,
        rule,
        &BatchTrigger {
            count,
            window: Duration::from_secs(3600),
            expire,
            debounce: false,
            max_wait: None,
        },
    )
}

fn end_to_end(tokio: &tokio::runtime::Runtime, rt: &Runtime) {
    const N: u64 = 100_000;
    const PARTITIONS: u64 = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let batches: Vec<Vec<NewEvent>> = (0..N / 1_000)
        .map(|b| {
            (b * 1_000..(b + 1) * 1_000)
                .map(|i| event(i, PARTITIONS))
                .collect()
        })
        .collect();

    // Log only.
    let log = open_log(&dir, "ingest.db", Arc::new(SystemClock));
    let start = Instant::now();
    for b in batches.clone() {
        log.append_blocking(b).unwrap();
    }
    let ingest_rate = N as f64 / start.elapsed().as_secs_f64();
    log.close();

    // The same events through 10 rules × 10 000 partitions (count 100:
    // windows stay open, every event updates a durable window).
    let clock = ManualClock::new(1_767_225_600_000);
    let log = open_log(&dir, "e2e.db", Arc::new(clock.clone()));
    let engine = tokio.block_on(async {
        let engine = Engine::new(log.clone(), Arc::new(clock.clone()));
        for r in 0..10 {
            let rule = batch_rule(rt, &format!("rule-{r}"), JSON_KEY, 100, Expire::Fire);
            engine.deploy(rule).await.unwrap();
        }
        engine
    });
    let start = Instant::now();
    for b in batches {
        log.append_blocking(b).unwrap();
    }
    let last = log.last_seq();
    loop {
        let done = (0..10).all(|r| {
            engine
                .status("bench", &format!("rule-{r}"))
                .is_some_and(|s| s.cursor >= last)
        });
        if done {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let e2e_rate = N as f64 / start.elapsed().as_secs_f64();
    tokio.block_on(engine.shutdown());
    log.close();
    println!(
        "end-to-end, 10 rules x {PARTITIONS} partitions, {N} events: {e2e_rate:.0} events/s \
         (each event through all 10 rules); log-only ingest {ingest_rate:.0} events/s; ratio {:.0}%",
        100.0 * e2e_rate / ingest_rate
    );
}

fn fire_latency(tokio: &tokio::runtime::Runtime, rt: &Runtime) {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(&dir, "latency.db", Arc::new(SystemClock));
    let samples = 300;
    let lat = tokio.block_on(async {
        let engine = Engine::new(log.clone(), Arc::new(SystemClock));
        // count = 1: every event closes its window and fires at once.
        let rule = batch_rule(rt, "hostile", HOSTILE, 1, Expire::Fire);
        engine.deploy(rule).await.unwrap();
        let mut sub = log.subscribe(Some("bench"), 0);
        let mut lat = Vec::new();
        for i in 0..samples {
            let start = Instant::now();
            let mut e = event(i, 1);
            e.kind = "fine".into();
            log.append(vec![e]).await.unwrap();
            loop {
                let FeedItem::Event(e) = sub.next().await.unwrap() else {
                    continue;
                };
                if e.source == "rule:hostile" {
                    break;
                }
            }
            lat.push(start.elapsed());
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        engine.shutdown().await;
        lat
    });
    let mut lat = lat;
    lat.sort();
    println!(
        "ingest -> fire -> handler output on the feed (count reached, fresh instance per fire): p50 {:?}, p99 {:?}",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
}

fn timer_lateness(rt: &Runtime) {
    const WINDOWS: u64 = 1_000_000;
    const SPREAD_MS: i64 = 30_000;
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(&dir, "timers.db", Arc::new(SystemClock));
    let spec = batch_parts(rt, "timers", JSON_KEY, 100, Expire::Discard);
    // 1M open windows, expiring uniformly over 30 s from 20 s from now
    // (written as state, as the rule core would have left them).
    let base = SystemClock.now_millis() + 20_000;
    let deadline = |i: u64| base + (i as i64 * SPREAD_MS) / WINDOWS as i64;
    let ns = "rule:bench/timers".to_string();
    for chunk in (0..WINDOWS).collect::<Vec<_>>().chunks(100_000) {
        let ops = chunk
            .iter()
            .flat_map(|&i| {
                let prefix = sluice::triggers::state::partition(&Some(format!("p{i:07}")));
                [
                    StateOp::Put {
                        ns: ns.clone(),
                        key: format!("{prefix}h"),
                        value: format!("{} {} {}", base - 3_600_000, deadline(i), i + 1)
                            .into_bytes(),
                    },
                    StateOp::Put {
                        ns: ns.clone(),
                        key: sluice::triggers::state::members(i + 1),
                        value: sluice::triggers::state::encode_members(&[(
                            i + 1,
                            &Some(format!("p{i:07}")),
                        )]),
                    },
                ]
            })
            .collect();
        log.transact_blocking(vec![], ops).unwrap();
    }
    let before = rss_bytes();
    let now = SystemClock.now_millis();
    let mut d = Driver::open(&log, spec.0, spec.1, spec.2, now, Start::Cold).unwrap();
    let per_window = (rss_bytes().saturating_sub(before)) as f64 / WINDOWS as f64;
    let mut late = Vec::with_capacity(WINDOWS as usize);
    while let Some(next) = d.next_deadline() {
        let wait = next - SystemClock.now_millis();
        if wait > 0 {
            std::thread::sleep(Duration::from_millis(wait as u64));
        }
        let closed = d
            .step(SystemClock.now_millis(), usize::MAX)
            .unwrap()
            .discards;
        let done = SystemClock.now_millis();
        for f in closed {
            late.push(Duration::from_millis(
                (done - deadline(f.seqs[0] - 1)).max(0) as u64,
            ));
        }
    }
    late.sort();
    println!(
        "timer lateness, {WINDOWS} open windows expiring over {} s (closed and committed): p50 {:?}, p99 {:?}, max {:?}; memory per open window {per_window:.0} bytes",
        SPREAD_MS / 1000,
        percentile(&late, 0.5),
        percentile(&late, 0.99),
        late.last().unwrap()
    );
}

/// Fires with `durability = full`: events ingested first, then `count =
/// 1` rules deployed over them; fires/s until every one completed, against
/// full-durability ingest of one event per commit.
fn full_durability_fires(tokio: &tokio::runtime::Runtime, rt: &Runtime) {
    const N: u64 = 5_000;
    const PARTITIONS: u64 = 1_000;
    let dir = tempfile::tempdir().unwrap();
    let log = open_log_with(&dir, "ingest.db", Arc::new(SystemClock), Durability::Full);
    let start = Instant::now();
    for i in 0..N {
        log.append_blocking(vec![event(i, PARTITIONS)]).unwrap();
    }
    let ingest_rate = N as f64 / start.elapsed().as_secs_f64();
    log.close();
    let mut line = format!(
        "fires with durability full, count = 1, {N} events over {PARTITIONS} partitions: \
         ingest one event per commit {ingest_rate:.0} events/s"
    );
    // (rules, concurrency of each): one rule, one rule with four slots,
    // ten rules over the same events (their commits merge in the writer).
    for (rules, concurrency) in [(1usize, 1u32), (1, 4), (10, 1)] {
        let log = open_log_with(
            &dir,
            &format!("fires-{rules}-{concurrency}.db"),
            Arc::new(SystemClock),
            Durability::Full,
        );
        let events: Vec<NewEvent> = (0..N).map(|i| event(i, PARTITIONS)).collect();
        for chunk in events.chunks(1_000) {
            log.append_blocking(chunk.to_vec()).unwrap();
        }
        let engine = tokio.block_on(async { Engine::new(log.clone(), Arc::new(SystemClock)) });
        let names: Vec<String> = (0..rules).map(|r| format!("each-{r}")).collect();
        let start = Instant::now();
        for name in &names {
            let mut rule = batch_rule(rt, name, JSON_KEY, 1, Expire::Fire);
            rule.spec.concurrency = concurrency;
            tokio.block_on(engine.deploy(rule)).unwrap();
        }
        let fires = N * rules as u64;
        loop {
            let ok: u64 = names
                .iter()
                .map(|n| engine.status("bench", n).map_or(0, |s| s.counters.fires_ok))
                .sum();
            if ok >= fires {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let rate = fires as f64 / start.elapsed().as_secs_f64();
        tokio.block_on(engine.shutdown());
        log.close();
        line += &format!(
            "; {rules} rule(s), concurrency {concurrency}: {rate:.0} fires/s ({:.0}% of ingest)",
            100.0 * rate / ingest_rate
        );
    }
    println!("{line}");
}

fn main() {
    if !common::benching() {
        return;
    }
    let only = std::env::var("SLUICE_BENCH_ONLY").unwrap_or_default();
    let part = |name: &str| only.is_empty() || only == name;
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
    if part("rules") {
        end_to_end(&tokio, &rt);
    }
    if part("latency") {
        fire_latency(&tokio, &rt);
    }
    if part("timers") {
        timer_lateness(&rt);
    }
    if part("full") {
        full_durability_fires(&tokio, &rt);
    }
}
