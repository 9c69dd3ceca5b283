//! The shared trigger core under the shapes and pressures users bring:
//! costs that follow the work, control requests, concurrency, loops,
//! sustained ingest, redeploys, and the engine agreeing with `sluice test`.

use std::time::Duration;

use proptest::prelude::*;
use serde_json::json;
use sluice::clock::Clock;
use sluice::engine::Engine;
use sluice::engine::driver::Driver;
use sluice::engine::rule::Deployable;
use sluice::log::{EventLog, EventQuery, NewEvent};
use sluice::manifest::{BatchTrigger, Expire, Manifest, RetryPolicy};
use sluice::runtime::Limits;
use sluice::triggers::batch::Batch;
use sluice::triggers::core::{RuleSpec, Start};
use sluice_test_components::component_bytes;
use sluice_test_components::components::{ECHO, HOSTILE, PR_DIGEST, SLOW_DIGEST};

use crate::engine::{batch_rule, deploy, manual_engine, wait_cursor, wait_status};
use crate::{Harness, merged, temp_log};

fn trigger(count: u32) -> BatchTrigger {
    BatchTrigger {
        count,
        window: Duration::from_secs(3600),
        expire: Expire::Fire,
        debounce: false,
        max_wait: None,
    }
}

/// The PR digest's driver over `log`, batches of `count`.
fn pr_digest(h: &Harness, log: &EventLog, count: u32) -> Driver<Batch> {
    let spec = RuleSpec::with_defaults("acme", "pr-digest");
    let rule = h.load(PR_DIGEST, Limits::default());
    let now = h.clock.now_millis();
    Driver::open(
        log,
        spec,
        Batch::from(&trigger(count)),
        rule,
        now,
        Start::Cold,
    )
    .unwrap()
}

/// Rows a fire reads, with `partitions` interleaved round-robin.
fn rows_read_by_a_fire(partitions: u64) -> (u64, usize) {
    let h = Harness::new();
    let (log, _dir) = temp_log(&h);
    const COUNT: u64 = 50;
    let events: Vec<NewEvent> = (0..partitions * COUNT)
        .map(|i| merged(&format!("r{}", i % partitions), i))
        .collect();
    for chunk in events.chunks(5_000) {
        log.append_blocking(chunk.to_vec()).unwrap();
    }
    let now = h.clock.now_millis();
    let mut core = pr_digest(&h, &log, COUNT as u32);
    while core.step(now, 1_000).unwrap().read > 0 {}
    let fire = core.pending_fires().next().unwrap().to_owned();
    let job = core.start_fire(&fire, now).unwrap();
    let before = log.rows_read();
    let attempt = job.run();
    let read = log.rows_read() - before;
    assert!(matches!(attempt.result, Ok(Ok(_))), "{:?}", attempt.result);
    (read, core.fires().len())
}

#[test]
fn a_fire_reads_its_own_events_whatever_is_interleaved() {
    let (alone, fires) = rows_read_by_a_fire(1);
    assert_eq!((alone, fires), (50, 1));
    let (crowded, fires) = rows_read_by_a_fire(300);
    assert_eq!(fires, 300);
    assert_eq!(
        crowded, 50,
        "a fire among 300 interleaved partitions reads its 50 events, not the span between them"
    );
}

#[test]
fn a_step_writes_appended_members_as_rows() {
    let h = Harness::new();
    let (log, _dir) = temp_log(&h);
    let mut core = pr_digest(&h, &log, 1_000);
    let now = h.clock.now_millis();
    for n in 0..3 {
        log.append_blocking(vec![merged("a", n)]).unwrap();
        core.step(now, 10).unwrap();
    }
    let ns = "rule:acme/pr-digest";
    let rows = log
        .state_scan_prefix(ns, &sluice::triggers::state::partition(&Some("a".into())))
        .unwrap();
    // The partition's header, written once, and a member-log row per step
    // that added members: adding an event does not write the window again.
    assert_eq!(rows.len(), 1, "{rows:?}");
    let members = || {
        log.state_scan_prefix(ns, sluice::triggers::state::MEMBERS)
            .unwrap()
    };
    assert_eq!(members().len(), 3);
    // A restart reads the window back from its rows.
    let mut again = pr_digest(&h, &log, 1_000);
    assert_eq!(again.partition(Some("a")).unwrap().seqs, vec![1, 2, 3]);
    // Once the window closes, the member log is cleared from the front.
    h.clock.advance(3_600_000);
    let closed = again.step(h.clock.now_millis(), usize::MAX).unwrap();
    assert_eq!(closed.fires[0].seqs, vec![1, 2, 3]);
    assert!(members().is_empty());
}

#[test]
fn a_backlog_of_expired_windows_is_fired_in_capped_steps_and_the_event_after_it_is_read() {
    // More windows expire at once than one step handles; an event ingested
    // after they expired waits for them, and is read once they are done
    // (a capped step must not mark the log as read past it).
    let n = sluice::triggers::core::DEADLINES_PER_STEP as u64 + 100;
    let h = Harness::new();
    let (log, _dir) = temp_log(&h);
    let mut core = pr_digest(&h, &log, 1_000);
    let opening: Vec<NewEvent> = (0..n).map(|i| merged(&format!("r{i:05}"), i)).collect();
    log.append_blocking(opening).unwrap();
    core.step(h.clock.now_millis(), usize::MAX).unwrap();
    assert_eq!(core.partitions() as u64, n);
    h.clock.advance(3_600_000);
    log.append_blocking(vec![merged("after", n)]).unwrap();
    let now = h.clock.now_millis();
    let mut fired = Vec::new();
    let mut capped = 0;
    loop {
        let step = core.step(now, usize::MAX).unwrap();
        capped += usize::from(step.capped);
        fired.extend(step.fires.iter().map(|f| f.partition.clone().unwrap()));
        if !step.capped && core.next_deadline().is_none_or(|d| d > now) {
            break;
        }
    }
    assert_eq!(capped, 1, "two steps: a capped one, then the rest");
    let expected: Vec<String> = (0..n).map(|i| format!("r{i:05}")).collect();
    assert_eq!(
        fired, expected,
        "every window fired once, in deadline order"
    );
    assert_eq!(core.cursor(), n + 1, "the event after the backlog was read");
    assert_eq!(core.partition(Some("after")).unwrap().seqs, vec![n + 1]);
}

/// Wait until the rule has read the whole log and nothing of it is due at
/// `now` (idle on a manual clock).
async fn wait_idle(engine: &Engine, log: &EventLog, name: &str, now: i64) {
    let last = log.last_seq();
    wait_status(engine, name, "it to settle", |s| {
        s.cursor >= last && s.pending_fires == 0 && s.next_due.is_none_or(|d| d > now)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_redrive_and_discard_through_the_control_channel() {
    let h = Harness::new();
    let (log, engine, _dir) = manual_engine(&h);
    let retry = RetryPolicy {
        max_attempts: 1,
        ..RetryPolicy::default()
    };
    deploy(
        &engine,
        batch_rule(&h, "hostile", HOSTILE, 1, 60, Limits::default()),
        retry,
    )
    .await;
    engine.pause("acme", "hostile").await.unwrap();
    let fatal = |id: &str| NewEvent {
        kind: "fatal".into(),
        id: Some(id.into()),
        ..merged("a", 0)
    };
    // The paused rule's task is woken by the commit, takes its round and
    // writes its status: it read nothing.
    let mut changes = engine.status_changes();
    changes.borrow_and_update();
    log.append(vec![fatal("f1"), fatal("f2")]).await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), changes.changed())
        .await
        .unwrap()
        .unwrap();
    let s = engine.status("acme", "hostile").unwrap();
    assert!(s.paused);
    assert_eq!(
        (s.cursor, s.pending_fires),
        (0, 0),
        "a paused rule processes nothing"
    );
    engine.resume("acme", "hostile").await.unwrap();
    let dead = crate::engine::collect(&log, "fire.dead_lettered", 2).await;
    assert_eq!(dead.len(), 2);
    let letters = engine.dead_letters("acme", "hostile").await.unwrap();
    assert_eq!(letters.len(), 2);
    engine
        .discard_dead("acme", "hostile", &letters[0].fire_id)
        .await
        .unwrap();
    engine
        .redrive("acme", "hostile", &letters[1].fire_id)
        .await
        .unwrap();
    // Re-driven, it fails again (fatal) and is back on the list, alone.
    crate::engine::collect(&log, "fire.dead_lettered", 3).await;
    let letters_after = engine.dead_letters("acme", "hostile").await.unwrap();
    assert_eq!(letters_after.len(), 1);
    assert_eq!(letters_after[0].fire_id, letters[1].fire_id);
    assert!(engine.redrive("acme", "hostile", "f_nope").await.is_err());
    assert!(engine.pause("acme", "nobody").await.is_err());
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_fires_keep_each_partition_in_order() {
    let h = Harness::new();
    let (log, engine, _dir) = manual_engine(&h);
    let mut rule = batch_rule(&h, "slow-digest", SLOW_DIGEST, 2, 3600, Limits::default());
    rule.spec.concurrency = 4;
    deploy(&engine, rule, RetryPolicy::default()).await;
    let orders: Vec<NewEvent> = (0..80)
        .map(|i| NewEvent {
            kind: "order".into(),
            id: Some(format!("o{i:03}")),
            payload: json!({"customer": format!("c{}", i % 8)}).to_string(),
            ..merged("x", 0)
        })
        .collect();
    log.append(orders).await.unwrap();
    let most = std::sync::atomic::AtomicUsize::new(0);
    wait_status(&engine, "slow-digest", "every window fired", |s| {
        most.fetch_max(s.running_fires, std::sync::atomic::Ordering::Relaxed);
        s.cursor >= 80 && s.pending_fires == 0
    })
    .await;
    let most = most.into_inner();
    let digests = log
        .query(&EventQuery {
            kind: Some("digest".into()),
            ..EventQuery::tenant("acme", 1_000)
        })
        .unwrap();
    assert_eq!(digests.len(), 40, "every window fired once");
    assert!(most <= 4, "never more than the rule's concurrency: {most}");
    // Per customer, the digests come in the order of the orders.
    for c in 0..8 {
        let mine: Vec<String> = digests
            .iter()
            .map(|d| serde_json::from_str::<serde_json::Value>(&d.payload).unwrap())
            .filter(|p| p["customer"] == format!("c{c}"))
            .flat_map(|p| p["orders"].as_array().unwrap().clone())
            .map(|o| o.as_str().unwrap().to_owned())
            .collect();
        let mut sorted = mine.clone();
        sorted.sort();
        assert_eq!(mine, sorted, "customer c{c}'s fires ran in order");
    }
    eprintln!("at most {most} fires ran at once");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_feeding_each_other_stop_at_the_hop_limit() {
    let h = Harness::new();
    let (log, engine, _dir) = manual_engine(&h);
    // Each keeps everything (the other's outputs too) and emits one event
    // per fire: an endless ping-pong without a hop limit.
    for name in ["ping", "pong"] {
        let mut rule = batch_rule(&h, name, HOSTILE, 1, 60, Limits::default());
        rule.spec.outputs.max_hops = 5;
        deploy(&engine, rule, RetryPolicy::default()).await;
    }
    log.append(vec![merged("a", 1)]).await.unwrap();
    let dropped = crate::engine::collect(&log, "outputs.dropped", 2).await;
    assert!(
        dropped[0].payload.contains("\"hops\":6"),
        "{}",
        dropped[0].payload
    );
    wait_idle(&engine, &log, "ping", h.clock.now_millis()).await;
    wait_idle(&engine, &log, "pong", h.clock.now_millis()).await;
    let outputs = log
        .query(&EventQuery {
            kind: Some("ok".into()),
            ..EventQuery::tenant("acme", 1_000)
        })
        .unwrap();
    // Two chains (both rules keep the client's event), five hops each.
    assert_eq!(outputs.len(), 10);
    assert_eq!(outputs.iter().map(|e| e.hops).max(), Some(5));
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_wait_for_what_was_ingested_before_them_not_for_what_comes_after() {
    // Several rounds' worth of events (a round reads at most 32 768).
    const BACKLOG: u64 = 60_000;
    let h = Harness::new();
    let (log, engine, _dir) = manual_engine(&h);
    deploy(
        &engine,
        batch_rule(&h, "pr-digest", PR_DIGEST, 10_000, 60, Limits::default()),
        RetryPolicy::default(),
    )
    .await;
    log.append(vec![merged("quiet", 0)]).await.unwrap();
    wait_cursor(&engine, "pr-digest", 1).await;
    // A backlog ingested before the quiet window's deadline, which the
    // rule needs many rounds to read, and ingest that goes on after it.
    engine.pause("acme", "pr-digest").await.unwrap();
    let backlog: Vec<NewEvent> = (1..=BACKLOG)
        .map(|i| merged(&format!("busy{}", i % 50), i))
        .collect();
    for chunk in backlog.chunks(10_000) {
        log.append(chunk.to_vec()).await.unwrap();
    }
    h.clock.advance(61_000);
    let ingested_before = log.last_seq();
    let feeder = {
        let log = log.clone();
        tokio::spawn(async move {
            let mut n = 1_000_000;
            loop {
                let batch: Vec<NewEvent> = (0..200).map(|i| merged("busy-more", n + i)).collect();
                n += 200;
                if log.append(batch).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    engine.resume("acme", "pr-digest").await.unwrap();
    let fired = crate::engine::wait_for(&log, ingested_before, |e| {
        e.kind == "fire.completed" && e.payload.contains("\"partition\":\"quiet\"")
    })
    .await;
    let s = engine.status("acme", "pr-digest").unwrap();
    assert!(
        s.cursor >= ingested_before,
        "the deadline waited for every event ingested before it: {s:?}"
    );
    assert!(
        !feeder.is_finished(),
        "and came while ingest went on: what came after it does not hold it up"
    );
    assert!(fired.seq > ingested_before);
    feeder.abort();
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeploys_mid_step_never_run_two_dispatchers() {
    let h = Harness::new();
    let (log, engine, _dir) = manual_engine(&h);
    let rule = || batch_rule(&h, "slow-digest", SLOW_DIGEST, 5, 3600, Limits::default());
    deploy(&engine, rule(), RetryPolicy::default()).await;
    for round in 0..10u64 {
        let orders: Vec<NewEvent> = (0..50)
            .map(|i| NewEvent {
                kind: "order".into(),
                id: Some(format!("o{round}-{i:02}")),
                payload: json!({"customer": format!("c{}", i % 5)}).to_string(),
                ..merged("x", 0)
            })
            .collect();
        log.append(orders).await.unwrap();
        // Swap versions while the rule is mid-step or mid-fire.
        tokio::time::sleep(Duration::from_millis(round * 3)).await;
        deploy(&engine, rule(), RetryPolicy::default()).await;
    }
    let last = log.last_seq();
    wait_status(&engine, "slow-digest", "it to catch up", |s| {
        s.cursor >= last && s.pending_fires == 0
    })
    .await;
    let digests = log
        .query(&EventQuery {
            kind: Some("digest".into()),
            ..EventQuery::tenant("acme", 10_000)
        })
        .unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut orders = 0;
    for d in &digests {
        assert!(seen.insert(d.id.clone()), "output {} twice", d.id);
        let p: serde_json::Value = serde_json::from_str(&d.payload).unwrap();
        orders += p["orders"].as_array().unwrap().len();
    }
    assert_eq!(
        (digests.len(), orders),
        (100, 500),
        "every window fired exactly once"
    );
    engine.shutdown().await;
}

/// One input of the agreement property: an event for partition `k<key>`
/// of one of four kinds (enter, refresh, leave, other), or a move of the
/// clock.
#[derive(Debug, Clone)]
enum Op {
    Event(u8, u8),
    Advance(u32),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            3 => (0u8..3, 0u8..4).prop_map(|(k, m)| Op::Event(k, m)),
            1 => (1u32..120_000).prop_map(Op::Advance),
        ],
        1..25,
    )
}

const KINDS: [&str; 4] = ["x.enter", "x.ping", "x.leave", "x.other"];

/// The rule of each kind the property runs (the `echo` component).
const BATCH: &str = "name = \"echo\"\nversion = 1\n\n[trigger.batch]\ncount = 3\nwindow = \"1m\"\n";
const DWELL: &str = "name = \"echo\"\nversion = 1\n\n[trigger.dwell]\nmax_dwell = \"3m\"\n\
    [[trigger.dwell.reactions]]\nlabel = \"a\"\nafter = \"1m\"\n\
    [[trigger.dwell.reactions]]\nlabel = \"e\"\nevery = \"45s\"\n";
const SCHEDULE: &str = "name = \"echo\"\nversion = 1\n\n[trigger.schedule]\n\
    cron = \"*/20 * * * * *\"\ntimezone = \"UTC\"\n";

fn op_event(i: usize, key: u8, kind: u8) -> serde_json::Value {
    json!({"id": format!("e{i}"), "source": "dev", "kind": KINDS[kind as usize],
        "payload": {"key": format!("k{key}"), "number": i}})
}

/// What `sluice test` says: (fire id, output seq, time) per output.
fn offline_outputs(manifest: &str, ops: &[Op]) -> Vec<(String, u64, i64)> {
    let mut input = String::new();
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Event(k, m) => input.push_str(&format!("{}\n", op_event(i, *k, *m))),
            Op::Advance(ms) => {
                input.push_str(&format!("{}\n", json!({"advance": format!("{ms}ms")})))
            }
        }
    }
    let manifest = Manifest::parse(manifest).unwrap();
    // Pruned as often as it can be: what a rule still needs stays.
    let options = sluice::offline::Options {
        prune_every: Some(1),
        ..Default::default()
    };
    let report =
        sluice::offline::run(&component_bytes(ECHO), manifest, input.as_bytes(), &options).unwrap();
    report
        .lines
        .iter()
        .filter(|l| l["type"] == "output")
        .map(|l| {
            (
                l["fire_id"].as_str().unwrap().to_owned(),
                l["seq"].as_u64().unwrap(),
                l["at"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// What the engine does with the same inputs on a manual clock.
async fn engine_outputs(manifest: &str, ops: &[Op]) -> Vec<(String, u64, i64)> {
    let h = Harness::new();
    h.clock.set(sluice::offline::DEFAULT_START);
    let (log, engine, _dir) = manual_engine(&h);
    let manifest = Manifest::parse(manifest).unwrap();
    let rule = Deployable::load(&h.runtime, "acme", &component_bytes(ECHO), &manifest).unwrap();
    deploy(&engine, rule, RetryPolicy::default()).await;
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Event(k, m) => {
                let v = op_event(i, *k, *m);
                let e = NewEvent {
                    tenant: "acme".into(),
                    id: Some(format!("e{i}")),
                    source: "dev".into(),
                    kind: v["kind"].as_str().unwrap().into(),
                    time: None,
                    payload: v["payload"].to_string(),
                    hops: 0,
                    ingested: None,
                };
                log.append(vec![e]).await.unwrap();
                wait_idle(&engine, &log, "echo", h.clock.now_millis()).await;
            }
            Op::Advance(ms) => {
                let target = h.clock.now_millis() + *ms as i64;
                // Move through each deadline on the way, as `sluice test` does.
                loop {
                    let now = h.clock.now_millis();
                    wait_idle(&engine, &log, "echo", now).await;
                    match engine.status("acme", "echo").unwrap().next_due {
                        Some(t) if t <= target => h.clock.set(t),
                        _ => break,
                    };
                }
                h.clock.set(target);
                wait_idle(&engine, &log, "echo", target).await;
            }
        }
    }
    engine.shutdown().await;
    log.query(&EventQuery {
        source: Some("rule:echo".into()),
        ..EventQuery::tenant("acme", 10_000)
    })
    .unwrap()
    .into_iter()
    .map(|e| {
        let id = e.id.strip_prefix("sluice:").unwrap().trim_end_matches(".0");
        (id.to_owned(), e.seq, e.time)
    })
    .collect()
}

fn agree(manifest: &str, ops: &[Op]) -> Result<(), TestCaseError> {
    let offline = offline_outputs(manifest, ops);
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let online = tokio.block_on(engine_outputs(manifest, ops));
    let ids: std::collections::HashSet<&String> = offline.iter().map(|o| &o.0).collect();
    prop_assert_eq!(ids.len(), offline.len(), "a fire id repeats");
    prop_assert_eq!(offline, online);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, ..ProptestConfig::default() })]

    /// The engine and `sluice test` make the same fires, with the same ids,
    /// seqs and times, for any interleaving of events and clock moves; no
    /// fire id repeats. Batch windows:
    #[test]
    fn the_engine_and_sluice_test_agree_on_batches(ops in ops()) {
        agree(BATCH, &ops)?;
    }

    /// Dwell memberships (after, every, max_dwell; enter, refresh, leave).
    #[test]
    fn the_engine_and_sluice_test_agree_on_dwell(ops in ops()) {
        agree(DWELL, &ops)?;
    }

    /// Schedule ticks every 20 s, per partition.
    #[test]
    fn the_engine_and_sluice_test_agree_on_schedules(ops in ops()) {
        agree(SCHEDULE, &ops)?;
    }
}
