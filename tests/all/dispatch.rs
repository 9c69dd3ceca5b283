//! A batch rule's dispatcher over the real log and a real component:
//! windows, fires and the cursor move together and survive a restart.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sluice::clock::Clock;
use sluice::log::{Durability, EventLog, EventQuery, LogConfig, NewEvent};
use sluice::manifest::{BatchTrigger, Expire};
use sluice::triggers::batch::{Batcher, Close};
use sluice::triggers::dispatch::{BatchRule, Dispatcher, ENGINE_SOURCE};
use sluice_test_components::components::PR_DIGEST;

use crate::Harness;

fn merged(repo: &str, n: u32) -> NewEvent {
    NewEvent {
        tenant: "acme".into(),
        id: Some(format!("{repo}#{n}")),
        source: "github".into(),
        kind: "pull_request.merged".into(),
        time: None,
        payload: json!({"repo": repo, "number": n}).to_string(),
    }
}

fn opened(repo: &str, n: u32) -> NewEvent {
    NewEvent {
        kind: "pull_request.opened".into(),
        id: Some(format!("{repo}#{n}-open")),
        ..merged(repo, n)
    }
}

fn spec(h: &Harness, expire: Expire) -> BatchRule {
    BatchRule {
        tenant: "acme".into(),
        name: "pr-digest".into(),
        batcher: Batcher::from(&BatchTrigger {
            count: 2,
            window: Duration::from_secs(60),
            expire,
            debounce: false,
        }),
        rule: h.load(PR_DIGEST, Default::default()),
    }
}

#[test]
fn windows_fires_and_cursor_commit_together_and_survive_restart() {
    let h = Harness::new();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let open_log = || {
        EventLog::open_sqlite(
            &path,
            Durability::Normal,
            LogConfig::default(),
            Arc::new(h.clock.clone()),
        )
        .unwrap()
    };
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

    let mut d = Dispatcher::open(&log, spec(&h, Expire::Fire)).unwrap();
    let now = h.clock.now_millis();
    let step = d.step(&log, now, 1_000).unwrap();
    assert_eq!((step.read, step.kept, step.cursor), (5, 4, 5));
    assert_eq!(step.fires.len(), 1, "acme/api reached count = 2");
    let fire = &step.fires[0];
    assert_eq!(
        (fire.partition.as_deref(), fire.reason, fire.seqs.clone()),
        (Some("acme/api"), Close::CountReached, vec![1, 2])
    );
    assert_eq!(d.window(Some("acme/web")).unwrap().seqs, vec![3]);
    assert_eq!(d.window(Some("acme/api")).unwrap().seqs, vec![5]);
    assert_eq!(d.next_deadline(), Some(now + 60_000));
    // The pin holds the pending fire's events.
    assert_eq!(log.low_water().unwrap(), Some(1));

    // Nothing new: a step changes nothing.
    assert_eq!(d.step(&log, now, 1_000).unwrap().fires, vec![]);

    // Restart: the state comes back; replaying produces no new fire.
    let fire_id = fire.fire_id.clone();
    drop(d);
    log.close();
    let log = open_log();
    let mut d = Dispatcher::open(&log, spec(&h, Expire::Fire)).unwrap();
    assert_eq!(d.cursor(), 5);
    assert_eq!(
        d.pending_fires().collect::<Vec<_>>(),
        vec![fire_id.as_str()]
    );
    assert_eq!(d.window(Some("acme/web")).unwrap().seqs, vec![3]);

    // Windows expire on idle partitions at their deadline, not before.
    h.clock.advance(59_999);
    assert!(d.expire(&log, h.clock.now_millis()).unwrap().is_empty());
    h.clock.advance(1);
    let mut fires = d.expire(&log, h.clock.now_millis()).unwrap();
    fires.sort_by(|a, b| a.partition.cmp(&b.partition));
    let got: Vec<_> = fires
        .iter()
        .map(|f| (f.partition.clone().unwrap(), f.reason, f.seqs.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("acme/api".to_string(), Close::WindowExpired, vec![5]),
            ("acme/web".to_string(), Close::WindowExpired, vec![3]),
        ]
    );
    assert_eq!(d.next_deadline(), None);

    // Completing fires releases their events.
    for id in d.pending_fires().map(str::to_owned).collect::<Vec<_>>() {
        d.fire_done(&log, &id).unwrap();
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
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open_sqlite(
        dir.path().join("log.db"),
        Durability::Normal,
        LogConfig::default(),
        Arc::new(h.clock.clone()),
    )
    .unwrap();
    log.append_blocking(vec![merged("acme/api", 1)]).unwrap();
    let mut d = Dispatcher::open(&log, spec(&h, Expire::Discard)).unwrap();
    d.step(&log, h.clock.now_millis(), 100).unwrap();
    h.clock.advance(60_000);
    let fires = d.expire(&log, h.clock.now_millis()).unwrap();
    assert_eq!(fires.len(), 1);
    assert_eq!(fires[0].reason, Close::Discarded);
    assert_eq!(d.pending_fires().count(), 0, "nothing to run for a discard");
    let records = log
        .query(&EventQuery {
            source: Some(ENGINE_SOURCE.into()),
            ..EventQuery::tenant("acme", 10)
        })
        .unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].kind, "window.discarded");
    let payload: serde_json::Value = serde_json::from_str(&records[0].payload).unwrap();
    assert_eq!(payload["seqs"], json!([1]));
    // The engine's own record does not feed the rule.
    let step = d.step(&log, h.clock.now_millis(), 100).unwrap();
    assert_eq!((step.read, step.kept), (0, 0));

    // Same window, same fire id, in another engine.
    let other = tempfile::tempdir().unwrap();
    let log2 = EventLog::open_sqlite(
        other.path().join("log.db"),
        Durability::Normal,
        LogConfig::default(),
        Arc::new(h.clock.clone()),
    )
    .unwrap();
    log2.append_blocking(vec![merged("acme/api", 1)]).unwrap();
    let mut d2 = Dispatcher::open(&log2, spec(&h, Expire::Discard)).unwrap();
    d2.step(&log2, h.clock.now_millis(), 100).unwrap();
    h.clock.advance(60_000);
    assert_eq!(
        d2.expire(&log2, h.clock.now_millis()).unwrap()[0].fire_id,
        fires[0].fire_id
    );
}
