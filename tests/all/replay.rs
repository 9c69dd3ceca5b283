//! Replay over the past, against the real server: a replay of a recorded
//! range makes the fires the engine made live (random streams, windows
//! and dwell reactions, the clock moving by the manual clock); a dry run
//! writes nothing; a backfill writes the outputs once, and a repeat
//! nothing new; `sluice replay` prints the report and the summary.

use proptest::prelude::*;
use serde_json::{Value, json};
use sluice_test_components::components;

use crate::server::{ADMIN, Fixture, Server};

/// 2026-01-01T00:00:00Z, the test server's manual clock at start.
const T0: i64 = 1_767_225_600_000;

const WIN: &str = "name = \"win\"\nversion = 1\n[trigger.batch]\ncount = 3\nwindow = \"10m\"\nexpire = \"fire\"\n";
const IDLE: &str = "name = \"idle\"\nversion = 1\n[trigger.dwell]\n[[trigger.dwell.reactions]]\nlabel = \"idle\"\nafter = \"5m\"\n";

/// A replay's report lines and its last (`done`) line.
fn replay(server: &Server, token: &str, rule: &str, body: Value) -> (Vec<Value>, Value) {
    let r = server
        .req(
            reqwest::Method::POST,
            &format!("/v1/rules/{rule}/replay"),
            Some(token),
        )
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().unwrap();
    let mut lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = lines.pop().unwrap();
    assert_eq!(last["type"], "done", "{last}");
    lines.retain(|l| l["type"] != "progress");
    (lines, last)
}

/// The outputs of `rule` in the tenant's log, payloads sorted.
fn live_outputs(server: &Server, token: &str, rule: &str) -> Vec<String> {
    let mut after = 0;
    let mut out = Vec::new();
    loop {
        let page = server.get(
            &format!("/v1/events?after_seq={after}&limit=1000&source=rule:{rule}"),
            token,
        );
        let events = page["events"].as_array().unwrap();
        for e in events {
            out.push(e["payload"].to_string());
            after = e["seq"].as_u64().unwrap();
        }
        if events.len() < 1000 {
            break;
        }
    }
    out.sort();
    out
}

fn sorted(lines: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = lines
        .iter()
        .filter(|l| l["type"] == "output")
        .map(|l| l["payload"].to_string())
        .collect();
    out.sort();
    out
}

/// Wait until both rules have read up to `seq`, have nothing pending
/// and nothing due by `now`.
fn settle(server: &Server, token: &str, seq: u64, now: i64) {
    server.until("rules settled", || {
        ["win", "idle"].iter().all(|r| {
            let v = server.get(&format!("/v1/rules/{r}"), token);
            v["cursor"].as_u64().unwrap_or(0) >= seq
                && v["pending_fires"] == 0
                && v["running_fires"] == 0
                && v["next_due"].as_i64().is_none_or(|d| d > now)
        })
    });
}

#[test]
fn a_replay_makes_the_fires_the_engine_made_live() {
    // One server for the cases, each case a tenant of its own (a static
    // server would outlive the test binary).
    let f = Fixture::new();
    let server = f.start();
    let case = std::cell::Cell::new(0);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 16,
        ..ProptestConfig::default()
    });
    let steps = prop::collection::vec((0usize..4, 0usize..4, 0i64..400), 5..40);
    let result = runner.run(&steps, |steps| {
        case.set(case.get() + 1);
        let tenant = format!("r{}", case.get());
        let token = server.tenant(&tenant);
        server.deployed(&token, "win", WIN, components::ECHO);
        server.deployed(&token, "idle", IDLE, components::ECHO);
        // The clock is the server's: each case goes on from where the
        // last one left it.
        let mut now = server.get("/v1/clock", ADMIN)["now"].as_i64().unwrap();
        let from = now;
        let kinds = ["thing.enter", "thing.ping", "thing.leave", "thing"];
        let mut last = 0;
        for (i, (key, kind, advance)) in steps.iter().enumerate() {
            now += advance * 1000;
            server.post("/v1/clock", ADMIN, json!({"to": now.to_string()}));
            let acked = server.post(
                "/v1/events",
                &token,
                json!({"id": format!("e{i}"), "source": "app", "kind": kinds[*kind],
                    "payload": {"key": format!("k{key}")}}),
            );
            last = acked["seqs"][0].as_u64().unwrap();
        }
        // Past every window and reaction.
        now += 3_600_000;
        server.post("/v1/clock", ADMIN, json!({"to": now.to_string()}));
        settle(&server, &token, last, now);
        for rule in ["win", "idle"] {
            let (lines, done) = replay(
                &server,
                &token,
                rule,
                json!({"from": from.to_string(), "to": (now + 1).to_string()}),
            );
            prop_assert_eq!(
                sorted(&lines),
                live_outputs(&server, &token, rule),
                "rule {}",
                rule
            );
            // The tenant's events and the other rule's outputs (which the
            // rule read live too); not its own.
            let other = live_outputs(&server, &token, if rule == "win" { "idle" } else { "win" });
            prop_assert_eq!(
                done["events"].as_u64(),
                Some((steps.len() + other.len()) as u64)
            );
        }
        Ok(())
    });
    server.stop();
    result.unwrap();
}

#[test]
fn a_dry_run_writes_nothing_and_a_backfill_writes_once() {
    let f = Fixture::new();
    let (server, token) = f.acme();
    server.deployed(&token, "win", WIN, components::ECHO);
    for i in 0..9 {
        server.post(
            "/v1/events",
            &token,
            json!({"id": format!("e{i}"), "source": "app", "kind": "thing",
                "payload": {"key": format!("k{}", i % 2)}}),
        );
    }
    server.post("/v1/clock", ADMIN, json!({"advance": "1h"}));
    let live = {
        server.until("the windows fired", || {
            live_outputs(&server, &token, "win").len() == 4
        });
        live_outputs(&server, &token, "win")
    };
    let head = |server: &Server| {
        server.get("/v1/events?limit=1000", &token)["events"]
            .as_array()
            .unwrap()
            .len()
    };
    let before = head(&server);
    let range = json!({"from": T0.to_string()});
    let (lines, done) = replay(&server, &token, "win", range.clone());
    assert_eq!(sorted(&lines), live);
    assert_eq!(
        (done["fires"].as_u64(), done["emitted"].as_u64()),
        (Some(4), Some(0))
    );
    assert_eq!(head(&server), before, "a dry run wrote to the log");
    // A backfill: the same outputs, appended once, marked by their ids.
    let mut emit = range.clone();
    emit["emit"] = json!(true);
    let (_, done) = replay(&server, &token, "win", emit.clone());
    assert_eq!(
        (done["emitted"].as_u64(), done["duplicates"].as_u64()),
        (Some(4), Some(0))
    );
    let page = server.get("/v1/events?source=rule:win&limit=1000", &token);
    let backfilled: Vec<&Value> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["id"].as_str().unwrap().starts_with("sluice:backfill."))
        .collect();
    assert_eq!(backfilled.len(), 4, "{page}");
    // Again: nothing new.
    let (_, done) = replay(&server, &token, "win", emit);
    assert_eq!(
        (done["emitted"].as_u64(), done["duplicates"].as_u64()),
        (Some(0), Some(4))
    );
    assert_eq!(head(&server), before + 4);

    // Refusals: an unknown rule, a range the wrong way round, a bad time.
    for (rule, body, status) in [
        ("nope", json!({"from": "0"}), 404),
        (
            "win",
            json!({"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}),
            422,
        ),
        (
            "win",
            json!({"from": "2026-01-01T00:00:00Z", "to": ""}),
            400,
        ),
        ("win", json!({"from": "yesterday"}), 400),
        ("win", json!({"from": "0", "speed": 2}), 400),
    ] {
        let r = server
            .req(
                reqwest::Method::POST,
                &format!("/v1/rules/{rule}/replay"),
                Some(&token),
            )
            .json(&body)
            .send()
            .unwrap();
        assert_eq!(r.status(), status, "{body}: {}", r.text().unwrap());
    }

    // The CLI: the report as JSON lines (piped), the summary on stderr.
    let out = server.cli(&token, &["replay", "win", "--from", "2026-01-01T00:00:00Z"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(sorted(&printed), live);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("replayed 9 events") && err.contains("4 fires"),
        "{err}"
    );
    assert!(err.contains("a dry run"), "{err}");
    let out = server.cli(
        &token,
        &[
            "replay",
            "win",
            "--from",
            "2026-01-01T00:00:00Z",
            "--timeline",
        ],
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("fire [k0] count-reached: 3 events"), "{text}");
    server.stop();
}
