//! A batch rule's core over the real log and a real component:
//! windows, fires and the cursor move together and survive a restart.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sluice::clock::Clock;
use sluice::engine::driver::Driver;
use sluice::log::{EventLog, EventQuery, LogConfig, NewEvent};
use sluice::manifest::{BatchTrigger, Expire, RetryPolicy};
use sluice::records::ENGINE_SOURCE;
use sluice::runtime::LoadedRule;
use sluice::triggers::FireReason;
use sluice::triggers::batch::Batch;
use sluice::triggers::core::{RuleSpec, Start};
use sluice::triggers::fires::FireOutcome;
use sluice_test_components::components::{HOSTILE, PR_DIGEST};

use crate::{Harness, merged, temp_log};

fn opened(repo: &str, n: u64) -> NewEvent {
    NewEvent {
        kind: "pull_request.opened".into(),
        id: Some(format!("{repo}#{n}-open")),
        ..merged(repo, n)
    }
}

/// A batch rule's parts, for opening its core.
struct BatchRule {
    name: String,
    rule: LoadedRule,
    batcher: BatchTrigger,
    retry: RetryPolicy,
    /// When it starts.
    now: i64,
}

fn open(log: &EventLog, r: BatchRule) -> Driver<Batch> {
    let mut spec = RuleSpec::with_defaults("acme", &r.name);
    spec.retry = r.retry;
    let now = r.now;
    Driver::open(log, spec, Batch::from(&r.batcher), r.rule, now, Start::Cold).unwrap()
}

fn spec(h: &Harness, expire: Expire) -> BatchRule {
    BatchRule {
        name: "pr-digest".into(),
        retry: RetryPolicy::default(),
        batcher: (BatchTrigger {
            count: 2,
            window: Duration::from_secs(60),
            expire,
            debounce: false,
            max_wait: None,
        }),
        rule: h.load(PR_DIGEST, Default::default()),
        now: h.clock.now_millis(),
    }
}

#[test]
fn windows_fires_and_cursor_commit_together_and_survive_restart() {
    let h = Harness::new();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let open_log =
        || crate::open_log_at(&path, LogConfig::default(), Arc::new(h.clock.clone())).unwrap();
    let log = open_log();
    log.append_blocking(vec![
        merged("acme/api", 1),
        merged("acme/api", 2),
        merged("acme/web", 3),
        opened("acme/api", 4),
        merged("acme/api", 5),
    ])
    .unwrap();
    // Another tenant's events are not this rule's business.
    log.append_blocking(vec![NewEvent {
        tenant: "other".into(),
        ..merged("acme/api", 9)
    }])
    .unwrap();

    let mut d = open(&log, spec(&h, Expire::Fire));
    let now = h.clock.now_millis();
    let step = d.step(now, 1_000).unwrap();
    assert_eq!((step.read, step.kept, step.cursor), (5, 4, 5));
    assert_eq!(step.fires.len(), 1, "acme/api reached count = 2");
    let fire = &step.fires[0];
    assert_eq!(
        (
            fire.partition.as_deref(),
            fire.reason.clone(),
            fire.seqs.clone()
        ),
        (Some("acme/api"), FireReason::CountReached, vec![1, 2])
    );
    assert_eq!(d.partition(Some("acme/web")).unwrap().seqs, vec![3]);
    assert_eq!(d.partition(Some("acme/api")).unwrap().seqs, vec![5]);
    assert_eq!(d.next_deadline(), Some(now + 60_000));
    // The pin holds the pending fire's events.
    assert_eq!(log.low_water().unwrap(), Some(1));

    // Nothing new: a step changes nothing.
    assert_eq!(d.step(now, 1_000).unwrap().fires, vec![]);

    // Restart: the state comes back; replaying produces no new fire.
    let fire_id = fire.fire_id.clone();
    drop(d);
    log.close();
    let log = open_log();
    let mut d = open(&log, spec(&h, Expire::Fire));
    assert_eq!(d.cursor(), 5);
    assert_eq!(
        d.pending_fires().collect::<Vec<_>>(),
        vec![fire_id.as_str()]
    );
    assert_eq!(d.partition(Some("acme/web")).unwrap().seqs, vec![3]);

    // Windows expire on idle partitions at their deadline, not before.
    h.clock.advance(59_999);
    assert!(
        d.step(h.clock.now_millis(), usize::MAX)
            .unwrap()
            .fires
            .is_empty()
    );
    h.clock.advance(1);
    let mut fires = d.step(h.clock.now_millis(), usize::MAX).unwrap().fires;
    fires.sort_by(|a, b| a.partition.cmp(&b.partition));
    let got: Vec<_> = fires
        .iter()
        .map(|f| {
            (
                f.partition.clone().unwrap(),
                f.reason.clone(),
                f.seqs.clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("acme/api".to_string(), FireReason::WindowExpired, vec![5]),
            ("acme/web".to_string(), FireReason::WindowExpired, vec![3]),
        ]
    );
    assert_eq!(d.next_deadline(), None);

    // Completing fires releases their events.
    for id in d.pending_fires().map(str::to_owned).collect::<Vec<_>>() {
        d.run_fire(&id, h.clock.now_millis()).unwrap();
    }
    assert_eq!(
        log.low_water().unwrap(),
        Some(6),
        "only the cursor holds now"
    );
}

#[test]
fn discarded_windows_are_recorded_on_the_log_and_fire_ids_are_stable() {
    let h = Harness::new();
    let (log, _dir) = temp_log(&h);
    log.append_blocking(vec![merged("acme/api", 1)]).unwrap();
    let mut d = open(&log, spec(&h, Expire::Discard));
    d.step(h.clock.now_millis(), 100).unwrap();
    h.clock.advance(60_000);
    let fires = d.step(h.clock.now_millis(), usize::MAX).unwrap().discards;
    assert_eq!(fires.len(), 1);
    assert_eq!(d.pending_fires().count(), 0, "nothing to run for a discard");
    let records = log
        .query(&EventQuery {
            source: Some(ENGINE_SOURCE.into()),
            ..EventQuery::tenant("acme", 10)
        })
        .unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].kind, "windows.discarded");
    let payload: serde_json::Value = serde_json::from_str(&records[0].payload).unwrap();
    assert_eq!(payload["windows"][0]["seqs"], json!([1]));
    assert_eq!(payload["windows"][0]["fire_id"], json!(fires[0].fire_id));
    // The engine's own record does not feed the rule.
    let step = d.step(h.clock.now_millis(), 100).unwrap();
    assert_eq!((step.read, step.kept), (0, 0));

    // Same window, same fire id, in another engine.
    let (log2, _other) = temp_log(&h);
    log2.append_blocking(vec![merged("acme/api", 1)]).unwrap();
    let mut d2 = open(&log2, spec(&h, Expire::Discard));
    d2.step(h.clock.now_millis(), 100).unwrap();
    h.clock.advance(60_000);
    assert_eq!(
        d2.step(h.clock.now_millis(), usize::MAX).unwrap().discards[0].fire_id,
        fires[0].fire_id
    );
}

fn kind_events(kinds: &[&str], tag: &str) -> Vec<NewEvent> {
    kinds
        .iter()
        .enumerate()
        .map(|(i, k)| NewEvent {
            tenant: "acme".into(),
            id: Some(format!("{tag}-{i}")),
            source: "tests".into(),
            kind: (*k).into(),
            time: None,
            payload: "{}".into(),
            hops: 0,
            ingested: None,
        })
        .collect()
}

fn engine_kinds(log: &EventLog) -> Vec<String> {
    log.query(&EventQuery {
        source: Some(ENGINE_SOURCE.into()),
        ..EventQuery::tenant("acme", 100)
    })
    .unwrap()
    .into_iter()
    .map(|e| e.kind)
    .collect()
}

#[test]
fn a_completed_fire_appends_outputs_under_its_id_exactly_once() {
    let h = Harness::new();
    let (log, _dir) = temp_log(&h);
    log.append_blocking(vec![merged("acme/api", 1), merged("acme/api", 2)])
        .unwrap();
    let mut d = open(&log, spec(&h, Expire::Fire));
    // A second runner that loaded the same state: a stale re-run.
    let fire = d.step(h.clock.now_millis(), 10).unwrap().fires.remove(0);
    let mut stale = open(&log, spec(&h, Expire::Fire));

    let FireOutcome::Completed { outputs, .. } =
        d.run_fire(&fire.fire_id, h.clock.now_millis()).unwrap()
    else {
        panic!("the handler should succeed")
    };
    assert_eq!(outputs, vec![3]);
    let out = &log
        .query(&EventQuery {
            after_seq: Some(2),
            ..EventQuery::tenant("acme", 1)
        })
        .unwrap()[0];
    assert_eq!(
        (out.source.as_str(), out.kind.as_str()),
        ("rule:pr-digest", "pr.digest")
    );
    assert_eq!(out.id, format!("sluice:{}.0", fire.fire_id));
    assert_eq!(d.pending_fires().count(), 0);

    // The re-run finds its outputs already there: nothing is emitted twice.
    let again = stale.run_fire(&fire.fire_id, h.clock.now_millis()).unwrap();
    assert_eq!(
        again,
        FireOutcome::Completed {
            outputs: vec![3],
            dropped: 0
        }
    );
    let digests = log
        .query(&EventQuery {
            kind: Some("pr.digest".into()),
            ..EventQuery::tenant("acme", 10)
        })
        .unwrap();
    assert_eq!(digests.len(), 1);
    assert_eq!(engine_kinds(&log), vec!["fire.completed"]);
}

#[test]
fn failures_retry_with_backoff_then_dead_letter_and_suspend() {
    let h = Harness::new();
    let (log, _dir) = temp_log(&h);
    let rule = BatchRule {
        name: "hostile".into(),
        rule: h.load(HOSTILE, Default::default()),
        now: h.clock.now_millis(),
        retry: RetryPolicy {
            max_attempts: 3,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            suspend_after: 2,
        },
        ..spec(&h, Expire::Fire)
    };
    let mut d = open(&log, rule);
    log.append_blocking(kind_events(&["retry", "x"], "a"))
        .unwrap();
    let fire = d.step(h.clock.now_millis(), 10).unwrap().fires.remove(0);
    let mut retry_times = Vec::new();
    for attempt in 1..=2 {
        match d.run_fire(&fire.fire_id, h.clock.now_millis()).unwrap() {
            FireOutcome::Retry { at, error } => {
                assert!(error.contains("retryable error: try me again"), "{error}");
                let wait = at - h.clock.now_millis();
                let full = 1_000 << (attempt - 1);
                assert!(
                    (full / 2..=full).contains(&wait),
                    "attempt {attempt}: waits {wait} ms"
                );
                assert!(
                    d.due_fires(at - 1, usize::MAX).is_empty(),
                    "not before its retry time"
                );
                assert_eq!(d.due_fires(at, usize::MAX), vec![fire.fire_id.clone()]);
                retry_times.push(at);
                h.clock.set(at);
            }
            other => panic!("attempt {attempt}: {other:?}"),
        }
    }
    assert_eq!(d.fire(&fire.fire_id).unwrap().attempts, 2);
    let outcome = d.run_fire(&fire.fire_id, h.clock.now_millis()).unwrap();
    assert!(
        matches!(outcome, FireOutcome::DeadLettered { .. }),
        "{outcome:?}"
    );
    assert!(
        log.state_get("rule:acme/hostile", &format!("d/{}", fire.fire_id))
            .unwrap()
            .is_some()
    );
    assert_eq!(d.suspended(), None, "one dead letter is not yet a pattern");

    // A fatal error dead-letters at once; two in a row suspend the rule.
    log.append_blocking(kind_events(&["fatal", "x"], "b"))
        .unwrap();
    let fire = d.step(h.clock.now_millis(), 10).unwrap().fires.remove(0);
    let outcome = d.run_fire(&fire.fire_id, h.clock.now_millis()).unwrap();
    assert_eq!(
        outcome,
        FireOutcome::DeadLettered {
            error: "rule test/hostile: handle-batch: fatal error: never again".into()
        }
    );
    assert!(
        d.suspended()
            .unwrap()
            .starts_with("2 fires in a row dead-lettered")
    );
    assert_eq!(
        engine_kinds(&log),
        vec![
            "fire.failed",
            "fire.failed",
            "fire.dead_lettered",
            "fire.dead_lettered"
        ]
    );
    // Suspended: new events wait; the suspension survives a restart.
    log.append_blocking(kind_events(&["x", "x"], "c")).unwrap();
    assert_eq!(d.step(h.clock.now_millis(), 10).unwrap().read, 0);
    let rule = BatchRule {
        name: "hostile".into(),
        rule: h.load(HOSTILE, Default::default()),
        now: h.clock.now_millis(),
        retry: RetryPolicy {
            max_attempts: 3,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            suspend_after: 2,
        },
        ..spec(&h, Expire::Fire)
    };
    let mut d = open(&log, rule);
    assert!(d.suspended().is_some());
    d.resume(h.clock.now_millis()).unwrap();
    let step = d.step(h.clock.now_millis(), 10).unwrap();
    assert_eq!(step.fires.len(), 1, "resumed from its cursor");

    // A dead letter can be re-driven: pending again, with fresh attempts.
    let first_dead = d.dead_letters().unwrap()[0].fire_id.clone();
    d.redrive(&first_dead, h.clock.now_millis()).unwrap();
    assert_eq!(d.fire(&first_dead).unwrap().attempts, 0);
    assert!(
        d.due_fires(h.clock.now_millis(), usize::MAX)
            .contains(&first_dead)
    );
    assert_eq!(d.dead_letters().unwrap().len(), 1);
    assert!(d.redrive("f_nope", h.clock.now_millis()).is_err());
    // Dead letters keep their batch with them and pin nothing in the log
    // (nor does a re-driven one).
    let other_dead = d.dead_letters().unwrap()[0].clone();
    assert!(other_dead.kept);
    assert!(
        log.low_water()
            .unwrap()
            .is_none_or(|w| w > other_dead.seqs[0]),
        "{:?}",
        log.low_water()
    );
    d.discard_dead(&other_dead.fire_id, h.clock.now_millis())
        .unwrap();
    assert!(d.dead_letters().unwrap().is_empty());
    assert!(
        d.discard_dead(&other_dead.fire_id, h.clock.now_millis())
            .is_err()
    );
    assert!(retry_times[1] > retry_times[0]);
}

#[test]
fn an_event_the_rule_cannot_select_is_isolated_skipped_and_recorded() {
    let h = Harness::new();
    let (log, _dir) = temp_log(&h);
    let rule = BatchRule {
        name: "hostile".into(),
        rule: h.load(HOSTILE, Default::default()),
        now: h.clock.now_millis(),
        batcher: (BatchTrigger {
            count: 1,
            window: Duration::from_secs(60),
            expire: Expire::Fire,
            debounce: false,
            max_wait: None,
        }),
        ..spec(&h, Expire::Fire)
    };
    let mut d = open(&log, rule);
    log.append_blocking(kind_events(&["fine", "panic", "fine"], "p"))
        .unwrap();
    let mut fires = Vec::new();
    let mut errors = 0;
    for _ in 0..20 {
        match d.step(h.clock.now_millis(), 100) {
            Ok(step) => fires.extend(step.fires.into_iter().map(|f| f.seqs)),
            Err(_) => errors += 1,
        }
        if d.cursor() >= 3 {
            break;
        }
    }
    assert_eq!(
        fires,
        vec![vec![1], vec![3]],
        "the events around it are processed"
    );
    // One failure for the batch, then three for the event alone.
    assert_eq!(
        errors,
        1 + sluice::manifest::SelectPolicy::default().attempts as usize - 1
    );
    let skipped = log
        .query(&EventQuery {
            kind: Some("event.skipped".into()),
            ..EventQuery::tenant("acme", 10)
        })
        .unwrap();
    assert_eq!(skipped.len(), 1);
    let payload: serde_json::Value = serde_json::from_str(&skipped[0].payload).unwrap();
    assert_eq!(payload["seq"], 2);
    assert!(
        payload["error"]
            .as_str()
            .unwrap()
            .contains("hostile rule panicked on purpose")
    );
}

#[test]
fn a_poison_event_can_suspend_the_rule_instead() {
    let h = Harness::new();
    let (log, _dir) = temp_log(&h);
    let mut spec = RuleSpec::with_defaults("acme", "hostile");
    spec.select = sluice::manifest::SelectPolicy {
        on_poison: sluice::manifest::OnPoison::Suspend,
        attempts: 2,
    };
    let trigger = BatchTrigger {
        count: 1,
        window: Duration::from_secs(60),
        expire: Expire::Fire,
        debounce: false,
        max_wait: None,
    };
    let now = h.clock.now_millis();
    let rule = || h.load(HOSTILE, Default::default());
    let mut d = Driver::open(
        &log,
        spec.clone(),
        Batch::from(&trigger),
        rule(),
        now,
        Start::Cold,
    )
    .unwrap();
    log.append_blocking(kind_events(&["fine", "panic", "fine"], "s"))
        .unwrap();
    for _ in 0..10 {
        let _ = d.step(h.clock.now_millis(), 100);
        if d.suspended().is_some() {
            break;
        }
    }
    let why = d.suspended().expect("suspended by the poison event");
    assert!(why.contains("on event 2"), "{why}");
    assert_eq!(d.cursor(), 1, "the poison event and what follows wait");
    assert_eq!(engine_kinds(&log), vec!["rule.suspended"]);
    // The suspension is durable.
    let again = Driver::open(&log, spec, Batch::from(&trigger), rule(), now, Start::Cold).unwrap();
    assert!(again.suspended().is_some());
}
