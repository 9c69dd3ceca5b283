//! Event-log benchmarks: durable ingest against a raw rusqlite insert loop
//! into a same-shaped table (same schema, same indexes, same pragmas), and
//! feed fan-out latency to 100 live subscribers.
//!
//! Run: `cargo bench -p sluice --bench log`

#[path = "common.rs"]
mod common;
use common::percentile;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use rusqlite::{Connection, params};
use sluice::clock::SystemClock;
use sluice::log::{Durability, EventLog, LogConfig, NewEvent};

const BATCHES: [usize; 3] = [1, 100, 10_000];

/// A ~200-byte payload.
fn payload(i: u64) -> String {
    format!(
        r#"{{"repo":"acme/service-{:03}","ok":true,"number":{i},"title":"Refactor the ingestion pipeline to batch writes","author":"someone","labels":["backend","perf"],"additions":120}}"#,
        i % 50
    )
}

fn batch(start: u64, n: usize) -> Vec<NewEvent> {
    (start..start + n as u64)
        .map(|i| NewEvent {
            tenant: "bench".into(),
            id: Some(format!("evt-{i:012}")),
            source: "github".into(),
            kind: "pull_request.merged".into(),
            time: None,
            payload: payload(i),
            hops: 0,
            ingested: None,
        })
        .collect()
}

fn fresh_db(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    path
}

/// The raw ceiling: the same table and indexes, one prepared INSERT per
/// event, one transaction per batch, no dedupe, no channel, no feed.
fn raw_ingest(path: &Path, durability: &str, batch_size: usize, batches: u64) -> Duration {
    // Create the schema exactly as the log does.
    drop(sluice::log::SqliteBackend::open(path, Durability::Normal).unwrap());
    let mut conn = Connection::open(path).unwrap();
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = {durability}; PRAGMA temp_store = MEMORY; PRAGMA cache_size = -32768;"
    ))
    .unwrap();
    let events: Vec<Vec<NewEvent>> = (0..batches)
        .map(|b| batch(b * batch_size as u64, batch_size))
        .collect();
    let start = Instant::now();
    let mut seq = 0i64;
    for events in &events {
        let tx = conn.transaction().unwrap();
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO events (seq, tenant, id, source, kind, time, ingested_at, payload)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .unwrap();
            for e in events {
                seq += 1;
                insert
                    .execute(params![
                        seq, e.tenant, e.id, e.source, e.kind, 0i64, 0i64, e.payload
                    ])
                    .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    start.elapsed()
}

fn log_ingest(path: &Path, durability: Durability, batch_size: usize, batches: u64) -> Duration {
    let log = EventLog::open_sqlite(
        path,
        durability,
        LogConfig::default(),
        Arc::new(SystemClock),
    )
    .unwrap();
    let events: Vec<Vec<NewEvent>> = (0..batches)
        .map(|b| batch(b * batch_size as u64, batch_size))
        .collect();
    let start = Instant::now();
    for events in events {
        log.append_blocking(events).unwrap();
    }
    let took = start.elapsed();
    log.close();
    took
}

fn ingest(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    for (durability, sync) in [(Durability::Normal, "NORMAL"), (Durability::Full, "FULL")] {
        let mut g = c.benchmark_group(format!("ingest-{}", sync.to_lowercase()));
        g.sample_size(10).warm_up_time(Duration::from_millis(300));
        for size in BATCHES {
            g.throughput(Throughput::Elements(size as u64));
            g.bench_with_input(BenchmarkId::new("raw-sqlite", size), &size, |b, &size| {
                b.iter_custom(|iters| {
                    raw_ingest(&fresh_db(dir.path(), "raw.db"), sync, size, iters)
                })
            });
            g.bench_with_input(BenchmarkId::new("event-log", size), &size, |b, &size| {
                b.iter_custom(|iters| {
                    log_ingest(&fresh_db(dir.path(), "log.db"), durability, size, iters)
                })
            });
        }
        g.finish();
    }
}

/// A fresh log (NORMAL durability) and a 2-thread runtime to drive it.
fn log_on_runtime() -> (EventLog, tokio::runtime::Runtime, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open_sqlite(
        dir.path().join("log.db"),
        Durability::Normal,
        LogConfig::default(),
        Arc::new(SystemClock),
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    (log, rt, dir)
}

/// Many concurrent single-event requests: group commit at work.
fn concurrent_single_events() -> f64 {
    let (log, rt, _dir) = log_on_runtime();
    let clients = 256u64;
    let per_client = 200u64;
    let start = Instant::now();
    rt.block_on(async {
        let tasks: Vec<_> = (0..clients)
            .map(|c| {
                let log = log.clone();
                tokio::spawn(async move {
                    for i in 0..per_client {
                        log.append(batch(c * per_client + i, 1)).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    (clients * per_client) as f64 / start.elapsed().as_secs_f64()
}

/// Latency from the start of an append to delivery at each of 100 live
/// subscribers, and from the start of the append to its acknowledgement.
fn feed_fanout() -> (Duration, Duration, Duration, Duration) {
    let (log, rt, _dir) = log_on_runtime();
    let events = 500u64;
    rt.block_on(async {
        let sent: Arc<std::sync::Mutex<Vec<Instant>>> = Arc::default();
        let subs: Vec<_> = (0..100)
            .map(|_| {
                let mut sub = log.subscribe(Some("bench"), 0);
                let sent = sent.clone();
                tokio::spawn(async move {
                    let mut lat = Vec::new();
                    for _ in 0..events {
                        let item = sub.next().await.unwrap();
                        let at = sent.lock().unwrap()[item.seq() as usize - 1];
                        lat.push(at.elapsed());
                    }
                    lat
                })
            })
            .collect();
        let mut acks = Vec::new();
        for i in 0..events {
            sent.lock().unwrap().push(Instant::now());
            let t0 = Instant::now();
            log.append(batch(i, 1)).await.unwrap();
            acks.push(t0.elapsed());
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let mut all = Vec::new();
        for s in subs {
            all.extend(s.await.unwrap());
        }
        all.sort();
        acks.sort();
        (
            percentile(&all, 0.5),
            percentile(&all, 0.99),
            percentile(&acks, 0.5),
            percentile(&acks, 0.99),
        )
    })
}

/// Mean time per iteration (ns) that criterion recorded.
fn mean_ns(group: &str, bench: &str) -> Option<f64> {
    let root = std::env::var_os("CARGO_TARGET_DIR")
        .map(|t| PathBuf::from(t).join("criterion"))
        .unwrap_or_else(|| PathBuf::from("target/criterion"));
    let path = root.join(group).join(bench).join("new/estimates.json");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    json["mean"]["point_estimate"].as_f64()
}

fn main() {
    let mut c = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    ingest(&mut c);
    c.final_summary();

    println!("\n== ingest, events/s (criterion means, same run) ==");
    for group in ["ingest-normal", "ingest-full"] {
        for size in BATCHES {
            let rate = |name: &str| {
                mean_ns(group, &format!("{name}/{size}")).map(|ns| size as f64 / (ns / 1e9))
            };
            if let (Some(raw), Some(log)) = (rate("raw-sqlite"), rate("event-log")) {
                println!(
                    "{group} batch {size:>5}: event log {log:>9.0}/s, raw sqlite {raw:>9.0}/s, ratio {:.0}%",
                    100.0 * log / raw
                );
            }
        }
    }
    println!(
        "256 concurrent clients, 1 event per request (NORMAL): {:.0} events/s",
        concurrent_single_events()
    );
    let (p50, p99, ack50, ack99) = feed_fanout();
    println!(
        "feed fan-out to 100 subscribers: append start -> delivery p50 {p50:?}, p99 {p99:?} \
         (append start -> ack p50 {ack50:?}, p99 {ack99:?})"
    );
}
