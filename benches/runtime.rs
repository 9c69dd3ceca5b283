//! Runtime benchmarks: the cost of a rule per event against native Rust
//! doing the same work, instantiation, cached loads, and the overhead of
//! fuel and epoch deadlines. Ratios against the same-run baselines are
//! printed at the end.
//!
//! Run: `cargo bench -p sluice --bench runtime`; only the interleaved
//! ratios (a minute): `SLUICE_BENCH_ONLY=ratios cargo bench -p sluice
//! --bench runtime`.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use serde::Deserialize;
use sluice::event::Event;
use sluice::runtime::Verdict;
use sluice::runtime::{Limits, LoadedRule, PoolingConfig, RuleLabel, Runtime, RuntimeConfig};
use sluice_test_components::component_bytes;
use sluice_test_components::components::{JSON_KEY, KIND_FILTER, REPO_SUMMARY};

/// Events per batched call, as the rule core sends them.
const BATCH: usize = 256;

fn events() -> Vec<Event> {
    (0..BATCH)
        .map(|i| {
            let payload = serde_json::json!({
                "repo": format!("acme/service-{:03}", i % 50),
                "ok": i % 2 == 0,
                "number": 1000 + i,
                "title": "Refactor the ingestion pipeline to batch writes",
                "author": "someone",
                "labels": ["backend", "perf"],
                "additions": 120,
                "deletions": 45,
            })
            .to_string();
            Event {
                seq: i as u64 + 1,
                id: format!("01JD{i:022}"),
                tenant: "bench".into(),
                source: "github".into(),
                kind: if i % 2 == 0 { "keep" } else { "drop" }.into(),
                time: 1_767_225_600_000 + i as i64,
                ingested: 1_767_225_600_000 + i as i64,
                payload,
                hops: 0,
            }
        })
        .collect()
}

fn runtime(tweak: impl FnOnce(&mut RuntimeConfig)) -> (Runtime, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = RuntimeConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        ..RuntimeConfig::default()
    };
    tweak(&mut config);
    (Runtime::new(config).unwrap(), dir)
}

fn load(rt: &Runtime, path: &str) -> LoadedRule {
    rt.load(
        RuleLabel::new("bench", path),
        &component_bytes(path),
        Limits::default(),
    )
    .unwrap()
}

/// repo-summary (json-key's logic, reading its two fields through
/// `event.field`) under `[select] fields = ["/repo", "/ok"]`: the engine
/// parses the payloads, the rule reads two typed values.
fn load_projected(rt: &Runtime) -> LoadedRule {
    rt.load_with_fields(
        RuleLabel::new("bench", "projected"),
        &component_bytes(REPO_SUMMARY),
        Limits::default(),
        &["/repo".to_string(), "/ok".to_string()],
    )
    .unwrap()
}

/// The native equivalent of the json-key rule.
#[derive(Deserialize)]
struct Payload<'a> {
    #[serde(borrow)]
    repo: &'a str,
    ok: bool,
}

fn native_json_key(e: &Event) -> Option<Option<String>> {
    match serde_json::from_str::<Payload<'_>>(&e.payload) {
        Ok(p) if p.ok => Some(Some(p.repo.to_owned())),
        _ => None,
    }
}

fn per_event(c: &mut Criterion) {
    let evs = events();
    let (rt, _dir) = runtime(|_| {});

    let mut g = c.benchmark_group("trivial-filter");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("native", |b| {
        b.iter(|| {
            black_box(&evs)
                .iter()
                .map(|e| e.kind == "keep")
                .filter(|k| *k)
                .count()
        })
    });
    let mut inst = load(&rt, KIND_FILTER).instance();
    g.bench_function("wasm-per-event", |b| {
        b.iter(|| {
            evs.iter()
                .map(|e| inst.filter(black_box(e)).unwrap())
                .filter(|k| *k)
                .count()
        })
    });
    g.bench_function("wasm-batched", |b| {
        b.iter(|| {
            inst.select(black_box(&evs))
                .unwrap()
                .iter()
                .filter(|v| matches!(v, Verdict::Keep(_)))
                .count()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("json-filter-key");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("native", |b| {
        b.iter(|| black_box(&evs).iter().filter_map(native_json_key).count())
    });
    let mut inst = load(&rt, JSON_KEY).instance();
    g.bench_function("wasm-per-event", |b| {
        b.iter(|| {
            let mut kept = 0;
            for e in black_box(&evs) {
                if inst.filter(e).unwrap() {
                    black_box(inst.partition_key(e).unwrap());
                    kept += 1;
                }
            }
            kept
        })
    });
    g.bench_function("wasm-batched", |b| {
        b.iter(|| {
            inst.select(black_box(&evs))
                .unwrap()
                .iter()
                .filter(|v| matches!(v, Verdict::Keep(_)))
                .count()
        })
    });
    let mut projected = load_projected(&rt).instance();
    g.bench_function("wasm-projected", |b| {
        b.iter(|| {
            projected
                .select(black_box(&evs))
                .unwrap()
                .iter()
                .filter(|v| matches!(v, Verdict::Keep(_)))
                .count()
        })
    });
    g.finish();
}

fn instantiate_and_load(c: &mut Criterion) {
    let mut g = c.benchmark_group("instantiate");
    for (name, pooling) in [
        ("on-demand", None),
        ("pooling", Some(PoolingConfig::default())),
    ] {
        let (rt, _dir) = runtime(|c| c.pooling = pooling);
        let rule = load(&rt, JSON_KEY);
        g.bench_function(BenchmarkId::new("fresh-instance", name), |b| {
            b.iter(|| {
                let mut inst = rule.instance();
                inst.warm().unwrap();
                black_box(inst)
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("load");
    let (rt, _dir) = runtime(|_| {});
    let bytes = component_bytes(JSON_KEY);
    load(&rt, JSON_KEY); // fills the cache
    g.bench_function("cached", |b| {
        b.iter(|| {
            let rule = rt
                .load(RuleLabel::new("bench", "r"), &bytes, Limits::default())
                .unwrap();
            assert_eq!(rule.cache_outcome(), &sluice::runtime::CacheOutcome::Hit);
            rule
        })
    });
    g.sample_size(10);
    let (uncached, _dir2) = runtime(|c| c.cache_dir = None);
    g.bench_function("compile", |b| {
        b.iter(|| {
            uncached
                .load(RuleLabel::new("bench", "r"), &bytes, Limits::default())
                .unwrap()
        })
    });
    g.finish();
}

fn limits_overhead(c: &mut Criterion) {
    let evs = events();
    let mut g = c.benchmark_group("limits-overhead");
    g.throughput(Throughput::Elements(BATCH as u64));
    for (name, fuel, deadlines) in [
        ("none", false, false),
        ("fuel", true, false),
        ("epoch", false, true),
        ("fuel+epoch", true, true),
    ] {
        let (rt, _dir) = runtime(|c| {
            c.fuel = fuel;
            c.deadlines = deadlines;
        });
        let mut inst = load(&rt, JSON_KEY).instance();
        g.bench_function(name, |b| b.iter(|| inst.select(black_box(&evs)).unwrap()));
    }
    g.finish();
}

/// Mean time per iteration (ns) that criterion recorded for `group/bench`.
fn mean_ns(group: &str, bench: &str) -> Option<f64> {
    let root = std::env::var_os("CRITERION_HOME")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR").map(|t| PathBuf::from(t).join("criterion"))
        })
        .unwrap_or_else(|| PathBuf::from("target/criterion"));
    let path = root.join(group).join(bench).join("new/estimates.json");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    json["mean"]["point_estimate"].as_f64()
}

/// Nanoseconds per event of `f` over `iters` batches.
fn ns_per_event(iters: u32, mut f: impl FnMut()) -> f64 {
    let start = std::time::Instant::now();
    for _ in 0..iters {
        f();
    }
    start.elapsed().as_nanos() as f64 / f64::from(iters) / BATCH as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Ratios measured by alternating the contenders in short rounds, so that
/// the drift of a shared 2-core machine hits both sides alike; the median
/// of the per-round ratios is reported.
fn interleaved_ratios() {
    const ROUNDS: usize = 15;
    let evs = events();
    let (rt, _dir) = runtime(|_| {});
    let mut trivial = load(&rt, KIND_FILTER).instance();
    let mut json = load(&rt, JSON_KEY).instance();
    let mut projected = load_projected(&rt).instance();
    let bare = |fuel, deadlines| {
        let (rt, dir) = runtime(|c| {
            c.fuel = fuel;
            c.deadlines = deadlines;
        });
        (load(&rt, JSON_KEY).instance(), rt, dir)
    };
    let mut none = bare(false, false);
    let mut fuel = bare(true, false);
    let mut epoch = bare(false, true);
    // `json` runs with both (the default).
    let (mut a, mut a_n, mut b, mut b_n) = (vec![], vec![], vec![], vec![]);
    let (mut f, mut e, mut fe) = (vec![], vec![], vec![]);
    let (mut p, mut p_n, mut p_host) = (vec![], vec![], vec![]);
    let projection = sluice_fields::Projection::new(&["/repo", "/ok"]).unwrap();
    let mut pack = sluice::runtime::empty_projected_pack();
    for _ in 0..ROUNDS {
        let native_a = ns_per_event(400, || {
            black_box(black_box(&evs).iter().filter(|e| e.kind == "keep").count());
        });
        let wasm_a = ns_per_event(400, || {
            black_box(trivial.select(black_box(&evs)).unwrap());
        });
        a.push(wasm_a - native_a);
        a_n.push(wasm_a);
        let native_b = ns_per_event(100, || {
            black_box(black_box(&evs).iter().filter_map(native_json_key).count());
        });
        let wasm_b = ns_per_event(100, || {
            black_box(json.select(black_box(&evs)).unwrap());
        });
        b.push(wasm_b / native_b);
        b_n.push(wasm_b);
        let projected_b = ns_per_event(100, || {
            black_box(projected.select(black_box(&evs)).unwrap());
        });
        let native_p = ns_per_event(100, || {
            black_box(black_box(&evs).iter().filter_map(native_json_key).count());
        });
        p.push(projected_b / native_p);
        p_n.push(projected_b);
        p_host.push(ns_per_event(100, || {
            sluice::runtime::pack_projected(black_box(&evs), &projection, &mut pack).unwrap();
        }));
        let base = ns_per_event(100, || {
            black_box(none.0.select(black_box(&evs)).unwrap());
        });
        f.push(
            ns_per_event(100, || {
                black_box(fuel.0.select(black_box(&evs)).unwrap());
            }) / base,
        );
        e.push(
            ns_per_event(100, || {
                black_box(epoch.0.select(black_box(&evs)).unwrap());
            }) / base,
        );
        fe.push(
            ns_per_event(100, || {
                black_box(json.select(black_box(&evs)).unwrap());
            }) / base,
        );
    }
    println!("\n== interleaved ratios (median of {ROUNDS} rounds) ==");
    println!(
        "(a) trivial filter, batched: {:.1} ns/event, {:.1} ns/event over native",
        median(a_n),
        median(a)
    );
    println!(
        "(b) JSON filter + key, batched: {:.1} ns/event, {:.2}x native",
        median(b_n),
        median(b)
    );
    println!(
        "(b) with input projection ([select] fields): {:.1} ns/event, {:.2}x native \
         (of which the engine's parse and pack: {:.1} ns/event)",
        median(p_n),
        median(p),
        median(p_host)
    );
    println!(
        "overhead vs no limits: fuel {:.2}x, epoch {:.2}x, fuel+epoch {:.2}x",
        median(f),
        median(e),
        median(fe)
    );
}

fn summary() {
    let per = |g: &str, b: &str| mean_ns(g, b).map(|ns| ns / BATCH as f64);
    println!("\n== criterion means ==");
    if let (Some(native), Some(projected)) = (
        per("json-filter-key", "native"),
        per("json-filter-key", "wasm-projected"),
    ) {
        println!(
            "json-filter-key with input projection: {projected:.1} ns/event, {:.2}x native {native:.1} ns/event",
            projected / native
        );
    }
    for group in ["trivial-filter", "json-filter-key"] {
        if let (Some(native), Some(naive), Some(batched)) = (
            per(group, "native"),
            per(group, "wasm-per-event"),
            per(group, "wasm-batched"),
        ) {
            println!(
                "{group}: native {native:.1} ns/event, wasm per-event {naive:.1} ns/event, \
                 wasm batched {batched:.1} ns/event"
            );
        }
    }
    for name in ["on-demand", "pooling"] {
        if let Some(ns) = mean_ns("instantiate", &format!("fresh-instance/{name}")) {
            println!("instantiate ({name}): {:.1} us", ns / 1e3);
        }
    }
    if let (Some(cached), Some(compile)) = (mean_ns("load", "cached"), mean_ns("load", "compile")) {
        println!(
            "load: cached {:.3} ms, compile {:.1} ms",
            cached / 1e6,
            compile / 1e6
        );
    }
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
        .configure_from_args();
    if std::env::var("SLUICE_BENCH_ONLY").as_deref() != Ok("ratios") {
        per_event(&mut c);
        instantiate_and_load(&mut c);
        limits_overhead(&mut c);
        c.final_summary();
        summary();
    }
    interleaved_ratios();
}
