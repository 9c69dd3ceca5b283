//! The example rules, driven through the runtime directly.

use serde_json::{Value, json};
use sluice::runtime::Limits;
use sluice::runtime::bindings::wit::{self, Reason};
use sluice::runtime::{Placement, Verdict};
use sluice::verdict::Membership;
use sluice_test_components::components::{HOURLY_SUMMARY, PR_DIGEST, USER_INACTIVE};

use crate::{Harness, event};

fn keep(partition: Option<&str>, membership: Membership) -> Verdict {
    Verdict::Keep(Placement {
        partition: partition.map(str::to_owned),
        membership,
    })
}

fn fire(partition: Option<&str>, reason: Reason, events: &[sluice::event::Event]) -> wit::Batch {
    wit::Batch {
        fire_id: "f1".into(),
        rule: "example".into(),
        partition: partition.map(str::to_owned),
        reason,
        attempt: 1,
        events: sluice::runtime::event_pack(events).unwrap(),
    }
}

#[test]
fn pr_digest_groups_merges_by_repository() {
    let h = Harness::new();
    let mut rule = h.load(PR_DIGEST, Limits::default()).instance();
    let events = [
        event(
            1,
            "pull_request.merged",
            json!({"repo": "acme/api", "number": 1, "author": "ana"}),
        ),
        event(
            2,
            "pull_request.opened",
            json!({"repo": "acme/api", "number": 2}),
        ),
        event(
            3,
            "pull_request.merged",
            json!({"repo": "acme/web", "number": 3, "author": "bo"}),
        ),
        event(
            4,
            "pull_request.merged",
            json!({"repo": "acme/api", "number": 4, "author": "ana"}),
        ),
    ];
    let verdicts = rule.select(&events).unwrap();
    assert_eq!(
        verdicts,
        vec![
            keep(Some("acme/api"), Membership::Enter),
            Verdict::Skip,
            keep(Some("acme/web"), Membership::Enter),
            keep(Some("acme/api"), Membership::Enter),
        ]
    );
    // The per-event exports agree with select.
    assert!(rule.filter(&events[0]).unwrap());
    assert!(!rule.filter(&events[1]).unwrap());
    assert_eq!(
        rule.partition_key(&events[2]).unwrap().as_deref(),
        Some("acme/web")
    );

    let emits = rule
        .handle_batch(&fire(
            Some("acme/api"),
            Reason::CountReached,
            &[events[0].clone(), events[3].clone()],
        ))
        .unwrap();
    assert_eq!(emits.len(), 1);
    assert_eq!(emits[0].kind, "pr.digest");
    let digest: Value = serde_json::from_str(&emits[0].payload).unwrap();
    assert_eq!(digest["repo"], "acme/api");
    assert_eq!(digest["merged"], 2);
    assert_eq!(digest["authors"], json!(["ana"]));
    assert_eq!(digest["reason"], "count reached");
}

#[test]
fn user_inactive_maps_events_to_membership() {
    let h = Harness::new();
    let mut rule = h.load(USER_INACTIVE, Limits::default()).instance();
    let events = [
        event(1, "user.signed_up", json!({"user_id": "u1"})),
        event(2, "user.activity", json!({"user_id": "u1"})),
        event(3, "user.deleted", json!({"user_id": "u1"})),
        event(4, "order.paid", json!({"user_id": "u1"})),
    ];
    assert_eq!(
        rule.select(&events).unwrap(),
        vec![
            keep(Some("u1"), Membership::Enter),
            keep(Some("u1"), Membership::Refresh),
            keep(Some("u1"), Membership::Leave),
            Verdict::Skip,
        ]
    );
    assert_eq!(rule.membership(&events[1]).unwrap(), Membership::Refresh);

    h.clock.set(1_800_000_000_000);
    let reason = Reason::Dwell(wit::DwellReason {
        label: "inactive".into(),
        ordinal: 0,
        member_since: 1_767_225_600_002,
        epoch: 1,
    });
    let emits = rule
        .handle_batch(&fire(Some("u1"), reason, &events[..2]))
        .unwrap();
    let out: Value = serde_json::from_str(&emits[0].payload).unwrap();
    assert_eq!(emits[0].kind, "user.inactive");
    assert_eq!(out["user_id"], "u1");
    assert_eq!(out["last_seen"], 1_767_225_600_002_i64);
    assert_eq!(out["detected_at"], 1_800_000_000_000_i64);

    // A dwell rule fired for the wrong reason says so.
    let err = rule
        .handle_batch(&fire(Some("u1"), Reason::Drained, &[]))
        .unwrap_err();
    assert!(err.is_fatal(), "{err}");
}

#[test]
fn hourly_summary_totals_orders() {
    let h = Harness::new();
    let mut rule = h.load(HOURLY_SUMMARY, Limits::default()).instance();
    let events = [
        event(1, "order.created", json!({"amount_cents": 500})),
        event(2, "order.paid", json!({"amount_cents": 500})),
        event(3, "cart.abandoned", json!({})),
        event(4, "order.paid", json!({"amount_cents": 250})),
    ];
    let verdicts = rule.select(&events).unwrap();
    assert_eq!(verdicts[2], Verdict::Skip);
    assert_eq!(verdicts[0], keep(None, Membership::Enter));
    let kept: Vec<_> = events
        .iter()
        .filter(|e| e.kind.starts_with("order."))
        .cloned()
        .collect();
    let reason = Reason::Schedule(wit::ScheduleReason {
        tick: 1_767_229_200_000,
        catch_up: true,
    });
    let emits = rule.handle_batch(&fire(None, reason, &kept)).unwrap();
    let out: Value = serde_json::from_str(&emits[0].payload).unwrap();
    assert_eq!(out["revenue_cents"], 750);
    assert_eq!(out["by_kind"], json!({"order.created": 1, "order.paid": 2}));
    assert_eq!(out["tick"], 1_767_229_200_000_i64);
    assert_eq!(out["catch_up"], true);

    // An empty tick still summarises (skip_empty = false is the manifest's call).
    let emits = rule
        .handle_batch(&fire(
            None,
            Reason::Schedule(wit::ScheduleReason {
                tick: 0,
                catch_up: false,
            }),
            &[],
        ))
        .unwrap();
    let out: Value = serde_json::from_str(&emits[0].payload).unwrap();
    assert_eq!(out["events"], 0);
}

/// `sluice test` on an example's `scenario.ndjson` under its `rule.toml`.
fn scenario(name: &str, component: &str) -> Vec<Value> {
    let dir = format!("{}/../examples/{name}", env!("CARGO_MANIFEST_DIR"));
    let manifest = sluice::manifest::Manifest::parse(
        &std::fs::read_to_string(format!("{dir}/rule.toml")).unwrap(),
    )
    .unwrap();
    let events = std::fs::File::open(format!("{dir}/scenario.ndjson")).unwrap();
    let bytes = sluice_test_components::component_bytes(component);
    sluice::offline::run(&bytes, manifest, events, &Default::default())
        .unwrap()
        .lines
}

fn at(line: &Value, field: &str) -> String {
    chrono::DateTime::from_timestamp_millis(line[field].as_i64().unwrap())
        .unwrap()
        .to_rfc3339()
}

#[test]
fn user_inactive_scenario_reports_each_silence_of_a_member() {
    let lines = scenario("user-inactive", USER_INACTIVE);
    let fires: Vec<(String, String, String)> = lines
        .iter()
        .filter(|l| l["type"] == "fire")
        .map(|l| {
            (
                l["partition"].as_str().unwrap().to_owned(),
                at(l, "at"),
                at(l, "member_since"),
            )
        })
        .collect();
    // u-7 left (deleted) before its 7 days: no fire. u-42: 7 days after
    // its last activity, twice.
    assert_eq!(
        fires,
        [
            (
                "u-42".to_owned(),
                "2026-01-10T08:30:00+00:00".to_owned(),
                "2026-01-03T08:30:00+00:00".to_owned()
            ),
            (
                "u-42".to_owned(),
                "2026-01-19T18:00:00+00:00".to_owned(),
                "2026-01-12T18:00:00+00:00".to_owned()
            ),
        ]
    );
    let outputs = lines.iter().filter(|l| l["type"] == "output").count();
    assert_eq!(outputs, 2);
}

#[test]
fn hourly_summary_scenario_ticks_and_catches_up_the_latest_missed_tick() {
    let lines = scenario("hourly-summary", HOURLY_SUMMARY);
    let ticks: Vec<(String, bool, usize)> = lines
        .iter()
        .filter(|l| l["type"] == "fire")
        .map(|l| {
            (
                at(l, "tick"),
                l["catch_up"].as_bool().unwrap(),
                l["events"].as_array().unwrap().len(),
            )
        })
        .collect();
    assert_eq!(
        ticks,
        [
            ("2026-01-01T10:00:00+00:00".to_owned(), false, 3),
            ("2026-01-01T11:00:00+00:00".to_owned(), false, 1),
            ("2026-01-01T12:00:00+00:00".to_owned(), false, 0),
            ("2026-01-01T14:00:00+00:00".to_owned(), true, 0),
        ],
        "11:00, 12:00 and 13:00 Berlin; 15:00 (14:00 UTC) caught up after the downtime"
    );
    let missed: Vec<&Value> = lines.iter().filter(|l| l["type"] == "missed").collect();
    assert_eq!(missed.len(), 1);
    assert_eq!(missed[0]["ticks"], 1, "14:00 Berlin was missed and counted");
}
