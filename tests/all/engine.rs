//! The engine running rules: outputs feed other rules, windows close on
//! idle partitions when the clock moves, deadlines passed while down fire
//! at start, and a hostile rule delays no one else.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sluice::clock::{Clock, SharedClock};
use sluice::engine::Engine;
use sluice::engine::rule::Deployable;
use sluice::event::Event;
use sluice::log::{EventLog, FeedItem, LogConfig, NewEvent};
use sluice::manifest::{BatchTrigger, Expire, RetryPolicy};
use sluice::runtime::Limits;
use sluice::triggers::core::RuleSpec;
use sluice_test_components::components::{ECHO, HOSTILE, PR_DIGEST};

use crate::Harness;

pub(crate) fn merged(n: u32) -> NewEvent {
    NewEvent {
        tenant: "acme".into(),
        id: Some(format!("m{n}")),
        source: "github".into(),
        kind: "pull_request.merged".into(),
        time: None,
        payload: json!({"repo": "acme/api", "number": n}).to_string(),
        hops: 0,
        ingested: None,
    }
}

pub(crate) fn batch_rule(
    h: &Harness,
    name: &str,
    component: &str,
    count: u32,
    window_s: u64,
    limits: Limits,
) -> Deployable {
    Deployable::batch(
        RuleSpec::with_defaults("acme", name),
        h.load(component, limits),
        &BatchTrigger {
            count,
            window: Duration::from_secs(window_s),
            expire: Expire::Fire,
            debounce: false,
            max_wait: None,
        },
    )
}

/// The first event on the feed (from `after`) matching `pred`, waiting for
/// the engine's tasks (not for a timer: the clock is manual).
pub(crate) async fn wait_for(log: &EventLog, after: u64, pred: impl Fn(&Event) -> bool) -> Event {
    let mut sub = log.subscribe(Some("acme"), after);
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let FeedItem::Event(e) = sub.next().await.unwrap() else {
                continue;
            };
            if pred(&e) {
                return (*e).clone();
            }
        }
    })
    .await;
    found.expect("the engine produced the event in time")
}

pub(crate) async fn deploy(engine: &Engine, mut rule: Deployable, retry: RetryPolicy) {
    rule.spec.retry = retry;
    engine.deploy(rule).await.unwrap();
}

/// The first `n` engine records of `kind` on the feed, waiting for them.
pub(crate) async fn collect(log: &EventLog, kind: &str, n: usize) -> Vec<Event> {
    let mut sub = log.subscribe(Some("acme"), 0);
    let mut found = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        while found.len() < n {
            let FeedItem::Event(e) = sub.next().await.unwrap() else {
                continue;
            };
            if e.kind == kind {
                found.push((*e).clone());
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{n} {kind} records in time; got {}", found.len()));
    found
}

/// Wait until the rule has processed the log up to `seq`.
pub(crate) async fn wait_cursor(engine: &Engine, name: &str, seq: u64) {
    wait_status(engine, name, "its cursor to reach {seq}", |s| {
        s.cursor >= seq
    })
    .await;
}

/// Wait until rule `name`'s status satisfies `pred`, woken by the engine's
/// status changes (never by a timer).
pub(crate) async fn wait_status(
    engine: &Engine,
    name: &str,
    what: &str,
    pred: impl Fn(&sluice::engine::rule::RuleStatus) -> bool,
) -> sluice::engine::rule::RuleStatus {
    let mut changes = engine.status_changes();
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            changes.borrow_and_update();
            if let Some(s) = engine.status("acme", name)
                && pred(&s)
            {
                return s;
            }
            changes.changed().await.unwrap();
        }
    })
    .await;
    found.unwrap_or_else(|_| {
        panic!(
            "{name}: waited for {what}: {:?}",
            engine.status("acme", name)
        )
    })
}

/// A log and an engine on `h`'s manual clock, in a directory of their
/// own (kept while the returned guard lives).
pub(crate) fn manual_engine(h: &Harness) -> (EventLog, Engine, tempfile::TempDir) {
    let clock: SharedClock = Arc::new(h.clock.clone());
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(&dir, clock.clone());
    let engine = Engine::new(log.clone(), clock);
    (log, engine, dir)
}

pub(crate) fn open_log(dir: &tempfile::TempDir, clock: SharedClock) -> EventLog {
    crate::open_log_at(&dir.path().join("log.db"), LogConfig::default(), clock).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_feed_another_rule() {
    let h = Harness::new();
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(&dir, Arc::new(h.clock.clone()));
    let engine = Engine::new(log.clone(), Arc::new(h.clock.clone()));
    deploy(
        &engine,
        batch_rule(&h, "pr-digest", PR_DIGEST, 2, 3600, Limits::default()),
        RetryPolicy::default(),
    )
    .await;
    // The hostile rule keeps every event, its peers' outputs included.
    deploy(
        &engine,
        batch_rule(&h, "hostile", HOSTILE, 3, 3600, Limits::default()),
        RetryPolicy::default(),
    )
    .await;
    log.append(vec![merged(1), merged(2)]).await.unwrap();
    let digest = wait_for(&log, 0, |e| e.kind == "pr.digest").await;
    assert_eq!(digest.source, "rule:pr-digest");
    let ok = wait_for(&log, 0, |e| e.source == "rule:hostile").await;
    let payload: serde_json::Value = serde_json::from_str(&ok.payload).unwrap();
    assert_eq!(payload["events"], 3, "two merges and pr-digest's output");
    assert!(ok.seq > digest.seq);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_close_on_idle_partitions_and_after_a_restart() {
    let h = Harness::new();
    let clock: SharedClock = Arc::new(h.clock.clone());
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(&dir, clock.clone());
    let engine = Engine::new(log.clone(), clock.clone());
    deploy(
        &engine,
        batch_rule(&h, "pr-digest", PR_DIGEST, 10, 60, Limits::default()),
        RetryPolicy::default(),
    )
    .await;
    log.append(vec![merged(1)]).await.unwrap();
    wait_cursor(&engine, "pr-digest", 1).await;
    // Nothing else happens: moving the clock alone closes the window.
    h.clock.advance(60_000);
    let digest = wait_for(&log, 0, |e| e.kind == "pr.digest").await;
    assert!(digest.payload.contains("window expired"));
    assert_eq!(digest.time, h.clock.now_millis());

    // An open window, then the engine stops; its deadline passes while down.
    log.append(vec![merged(2)]).await.unwrap();
    let after = log.last_seq();
    wait_cursor(&engine, "pr-digest", after).await;
    engine.shutdown().await;
    h.clock.advance(120_000);
    let engine = Engine::new(log.clone(), clock.clone());
    deploy(
        &engine,
        batch_rule(&h, "pr-digest", PR_DIGEST, 10, 60, Limits::default()),
        RetryPolicy::default(),
    )
    .await;
    let late = wait_for(&log, after, |e| e.kind == "pr.digest").await;
    assert!(late.payload.contains("\"number\":2"), "{}", late.payload);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_rule_delays_no_other_rule() {
    let h = Harness::new();
    let clock: SharedClock = Arc::new(h.clock.clone());
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(&dir, clock.clone());
    let engine = Engine::new(log.clone(), clock.clone());
    let slow = Limits {
        deadline: Duration::from_secs(10),
        fuel: u64::MAX / 2,
        ..Limits::default()
    };
    // The hostile rule spins in `select` on every `loop` event until its
    // 10 s deadline; pr-digest must not wait for it.
    deploy(
        &engine,
        batch_rule(&h, "hostile", HOSTILE, 1, 60, slow),
        RetryPolicy::default(),
    )
    .await;
    deploy(
        &engine,
        batch_rule(&h, "pr-digest", PR_DIGEST, 2, 60, Limits::default()),
        RetryPolicy::default(),
    )
    .await;
    let loop_event = NewEvent {
        kind: "loop".into(),
        id: Some("spin".into()),
        ..merged(0)
    };
    log.append(vec![loop_event]).await.unwrap();
    log.append(vec![merged(1), merged(2)]).await.unwrap();
    wait_for(&log, 0, |e| e.kind == "pr.digest").await;
    // The outcome, not a figure of the machine's speed: the digest came
    // while the hostile rule was still stuck before the spinning event.
    let hostile = engine.status("acme", "hostile").unwrap();
    assert_eq!(
        hostile.cursor, 0,
        "pr-digest waited for the hostile rule: {hostile:?}"
    );
    // The hostile rule's select keeps failing (timeout) and says so.
    let status = wait_status(&engine, "hostile", "an error", |s| s.last_error.is_some()).await;
    assert!(status.last_error.unwrap().contains("exceeded its deadline"));
    drop(engine);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_handlers_are_stopped_retried_and_dead_lettered() {
    let h = Harness::new();
    let clock: SharedClock = Arc::new(h.clock.clone());
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(&dir, clock.clone());
    let engine = Engine::new(log.clone(), clock.clone());
    // Room for a million emits to reach the host (and be refused there).
    let tight = Limits {
        deadline: Duration::from_millis(500),
        memory_bytes: 256 << 20,
        ..Limits::default()
    };
    let retry = RetryPolicy {
        max_attempts: 2,
        backoff: Duration::from_secs(10),
        max_backoff: Duration::from_secs(10),
        suspend_after: 10,
    };
    deploy(
        &engine,
        batch_rule(&h, "hostile", HOSTILE, 1, 60, tight),
        retry,
    )
    .await;
    deploy(
        &engine,
        batch_rule(&h, "pr-digest", PR_DIGEST, 2, 60, Limits::default()),
        RetryPolicy::default(),
    )
    .await;
    let hostile = |kind: &str| NewEvent {
        kind: kind.into(),
        id: Some(kind.into()),
        ..merged(0)
    };
    log.append(vec![
        hostile("handler-loop"),
        hostile("handler-bomb"),
        hostile("handler-huge"),
    ])
    .await
    .unwrap();
    log.append(vec![merged(1), merged(2)]).await.unwrap();
    // The healthy rule's digest comes while the hostile fires fail.
    wait_for(&log, 0, |e| e.kind == "pr.digest").await;
    // The hostile fires share a partition, so they run in order: each
    // waits for the one before to use its two attempts (the retry falls
    // due when the clock reaches it).
    for failures in 1..=3 {
        collect(&log, "fire.failed", failures).await;
        h.clock.advance(10_000);
    }
    let failed = collect(&log, "fire.failed", 3).await;
    let errors: Vec<&str> = failed.iter().map(|e| e.payload.as_str()).collect();
    assert!(
        errors.iter().all(|p| p.contains("\"attempt\":1")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|p| p.contains("ran out of fuel") || p.contains("exceeded its deadline")),
        "the loop is stopped: {errors:?}"
    );
    assert!(
        errors.iter().any(|p| p.contains("memory limit")),
        "{errors:?}"
    );
    let dead = collect(&log, "fire.dead_lettered", 3).await;
    assert!(dead.iter().all(|e| e.payload.contains("\"attempts\":2")));
    // The engine records its work before it reports the status.
    let status = wait_status(&engine, "hostile", "no pending fire", |s| {
        s.pending_fires == 0
    })
    .await;
    assert_eq!(status.pending_fires, 0);
    engine.shutdown().await;
}

/// A redeploy that changes the trigger kind is refused before
/// anything changes — the running version carries on with its state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redeploy_of_another_trigger_kind_is_refused_and_the_rule_runs_on() {
    use sluice::manifest::Manifest;
    use sluice_test_components::component_bytes;
    use sluice_test_components::components::ECHO;
    let h = Harness::new();
    let (log, engine, _dir) = manual_engine(&h);
    let load = |toml: &str| {
        let m = Manifest::parse(toml).unwrap();
        Deployable::load(&h.runtime, "acme", &component_bytes(ECHO), &m).unwrap()
    };
    let dwell = load(
        "name = \"echo\"\nversion = 1\n[trigger.dwell]\n[[trigger.dwell.reactions]]\nlabel = \"quiet\"\nafter = \"1m\"\n",
    );
    engine.deploy(dwell).await.unwrap();
    let ping = NewEvent {
        tenant: "acme".into(),
        id: Some("p1".into()),
        source: "dev".into(),
        kind: "x.ping".into(),
        time: None,
        payload: json!({"key": "d1"}).to_string(),
        hops: 0,
        ingested: None,
    };
    let seq = log.append(vec![ping]).await.unwrap().seqs[0];
    wait_cursor(&engine, "echo", seq).await;
    let batch = load("name = \"echo\"\nversion = 2\n[trigger.batch]\ncount = 2\nwindow = \"1h\"\n");
    let err = engine.deploy(batch).await.unwrap_err().to_string();
    assert!(
        err.contains("dwell rule's") && err.contains("batch rule"),
        "{err}"
    );
    // The dwell version still runs: its membership falls due.
    h.clock.advance(60_000);
    let out = wait_for(&log, 0, |e| e.source == "rule:echo").await;
    assert!(
        out.payload.contains("\"label\":\"quiet\""),
        "{}",
        out.payload
    );
    // A swap to a new version of the same kind is on the feed.
    let v3 = load(
        "name = \"echo\"\nversion = 3\n[trigger.dwell]\n[[trigger.dwell.reactions]]\nlabel = \"quiet\"\nafter = \"2m\"\n",
    );
    engine.deploy(v3).await.unwrap();
    let swap = collect(&log, "rule.swapped", 1).await;
    let p: serde_json::Value = serde_json::from_str(&swap[0].payload).unwrap();
    assert_eq!(
        (p["version"].as_u64(), p["previous"]["version"].as_u64()),
        (Some(3), Some(1))
    );
    assert_eq!(p["kind"], "dwell");
    // Changing the kind takes a reset: the state starts empty, from the
    // log's end; the new kind works on what comes next.
    let batch = load("name = \"echo\"\nversion = 4\n[trigger.batch]\ncount = 1\nwindow = \"1h\"\n");
    engine.deploy_reset(batch).await.unwrap();
    collect(&log, "rule.reset", 1).await;
    let next = NewEvent {
        tenant: "acme".into(),
        id: Some("p2".into()),
        source: "dev".into(),
        kind: "x.ping".into(),
        time: None,
        payload: json!({"key": "d2"}).to_string(),
        hops: 0,
        ingested: None,
    };
    log.append(vec![next]).await.unwrap();
    let out = wait_for(&log, 0, |e| {
        e.source == "rule:echo" && e.payload.contains("count-reached")
    })
    .await;
    assert!(out.payload.contains("\"p2\""), "{}", out.payload);
    assert_eq!(engine.status("acme", "echo").unwrap().partitions, 0);
    assert!(engine.undeploy("acme", "echo").await);
    let gone = collect(&log, "rule.undeployed", 1).await;
    assert!(
        gone[0].payload.contains("\"version\":4"),
        "{}",
        gone[0].payload
    );
    engine.shutdown().await;
}

/// Undeploy with `drain = fire` fires the open windows (reason
/// drained) before the rule goes; with `drain = discard` drops them, on the
/// feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeploy_drains_open_windows_by_firing_or_discarding_them() {
    use sluice::engine::Drain;
    use sluice::manifest::Manifest;
    use sluice_test_components::component_bytes;
    use sluice_test_components::components::ECHO;
    let h = Harness::new();
    let (log, engine, _dir) = manual_engine(&h);
    let event = |i: usize, key: &str| NewEvent {
        tenant: "acme".into(),
        id: Some(format!("e{i}")),
        source: "dev".into(),
        kind: "x.other".into(),
        time: None,
        payload: json!({"key": key}).to_string(),
        hops: 0,
        ingested: None,
    };
    let mut last = 0;
    for (drain, name) in [(Drain::Fire, "echo"), (Drain::Discard, "echo")] {
        let m = Manifest::parse(
            "name = \"echo\"\nversion = 1\n[trigger.batch]\ncount = 10\nwindow = \"1h\"\n",
        )
        .unwrap();
        let rule = Deployable::load(&h.runtime, "acme", &component_bytes(ECHO), &m).unwrap();
        engine.deploy(rule).await.unwrap();
        let keys = ["a", "a", "a", "b", "b"];
        let events = keys
            .iter()
            .enumerate()
            .map(|(i, k)| event(last as usize + i, k))
            .collect();
        last = *log.append(events).await.unwrap().seqs.last().unwrap();
        wait_cursor(&engine, name, last).await;
        assert!(
            engine
                .undeploy_drain("acme", name, drain, None, Vec::new())
                .await
                .unwrap()
        );
        assert!(engine.status("acme", name).is_none());
        let outputs = log
            .query(&sluice::log::EventQuery {
                source: Some("rule:echo".into()),
                ..sluice::log::EventQuery::tenant("acme", 100)
            })
            .unwrap();
        match drain {
            Drain::Fire => {
                let mut got: Vec<String> = outputs.iter().map(|e| e.payload.clone()).collect();
                got.sort();
                assert_eq!(got.len(), 2, "one drained fire per open window");
                assert!(got.iter().all(|p| p.contains("\"reason\":\"drained\"")));
                assert!(got[0].contains("\"partition\":\"a\"") && got[0].contains("e2"));
            }
            Drain::Discard => {
                assert_eq!(outputs.len(), 2, "no new output");
                let discarded = collect(&log, "windows.discarded", 1).await;
                assert!(discarded[0].payload.contains("\"partition\":\"b\""));
            }
        }
    }
    engine.shutdown().await;
}

/// A panic in the engine's own code during a rule's round: the rule shows
/// as failed, with the reason, on its status and on the feed; the other
/// rules run on; a resume brings it back from its durable state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_round_fails_the_rule_visibly_until_resumed() {
    let h = Harness::new();
    let (log, engine, _dir) = manual_engine(&h);
    fail::cfg("round/acme/crashy", "1*panic(on purpose)").unwrap();
    deploy(
        &engine,
        batch_rule(&h, "crashy", ECHO, 1, 60, Limits::default()),
        RetryPolicy::default(),
    )
    .await;
    let failed = wait_for(&log, 0, |e| e.kind == "rule.failed").await;
    assert!(failed.payload.contains("on purpose"), "{}", failed.payload);
    let s = engine.status("acme", "crashy").unwrap();
    assert!(s.failed.as_deref().unwrap().contains("on purpose"), "{s:?}");
    // Requests other than a resume say why they cannot be served.
    let e = engine.pause("acme", "crashy").await.unwrap_err();
    assert!(e.to_string().contains("resume or redeploy"), "{e}");
    // Events wait for it; a resume opens its state again and reads them.
    log.append(vec![crate::merged("r", 1)]).await.unwrap();
    let s = engine.resume("acme", "crashy").await.unwrap();
    assert!(s.failed.is_none() && !s.paused, "{s:?}");
    let out = wait_for(&log, 0, |e| e.source == "rule:crashy").await;
    assert!(out.payload.contains("r#1"), "{}", out.payload);
    assert!(engine.status("acme", "crashy").unwrap().failed.is_none());
    engine.shutdown().await;
}

/// An answer to a control request is sent once the rule's status is
/// published: what a caller reads after it is never older than the answer,
/// and never overwritten by it. (A resume that lets a due window expire in
/// the same round once left the status showing the deadline as due, with
/// nothing left to wake the rule.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_after_an_answer_is_at_least_as_new_as_the_answer() {
    let h = Harness::new();
    let (log, engine, _dir) = manual_engine(&h);
    deploy(
        &engine,
        batch_rule(&h, "window", ECHO, 10, 60, Limits::default()),
        RetryPolicy::default(),
    )
    .await;
    for round in 0..20 {
        log.append(vec![crate::merged("w", round)]).await.unwrap();
        wait_cursor(&engine, "window", log.last_seq()).await;
        let paused = engine.pause("acme", "window").await.unwrap();
        assert!(paused.paused);
        assert!(engine.status("acme", "window").unwrap().paused);
        h.clock.advance(61_000);
        let resumed = engine.resume("acme", "window").await.unwrap();
        assert!(!resumed.paused);
        let now = h.clock.now_millis();
        let s = wait_status(&engine, "window", "the window to expire", |s| {
            s.pending_fires == 0 && s.next_due.is_none_or(|d| d > now)
        })
        .await;
        assert!(!s.paused, "round {round}: {s:?}");
    }
    engine.shutdown().await;
}
