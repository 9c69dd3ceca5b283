//! The `sluice` binary, run as a user would.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use sluice_test_components::components::{HOSTILE, NOT_A_RULE, PR_DIGEST};

fn sluice() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.env("SLUICE_LOG", "warn");
    cmd
}

fn lines(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

fn example_events(name: &str) -> String {
    format!(
        "{}/../examples/{name}/events.ndjson",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[test]
fn eval_runs_the_pr_digest_example() {
    let cache = tempfile::tempdir().unwrap();
    let out = sluice()
        .args(["eval", PR_DIGEST, "--events", &example_events("pr-digest")])
        .args(["--reason", "count-reached", "--cache-dir"])
        .arg(cache.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = lines(&out.stdout);
    let kinds: Vec<&str> = lines.iter().map(|l| l["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "keep", "skip", "keep", "keep", "skip", "fire", "output", "fire", "output"
        ]
    );
    let outputs: Vec<&Value> = lines.iter().filter(|l| l["type"] == "output").collect();
    assert_eq!(outputs[0]["payload"]["repo"], "acme/api");
    assert_eq!(outputs[0]["payload"]["merged"], 2);
    assert_eq!(outputs[1]["payload"]["repo"], "acme/web");
    assert_eq!(lines[5]["reason"], "count-reached");
    assert_eq!(lines[0]["membership"], "enter");
}

#[test]
fn eval_reports_a_failing_handler_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.ndjson");
    std::fs::write(
        &events,
        "{\"source\":\"t\",\"kind\":\"panic\",\"payload\":{}}\n",
    )
    .unwrap();
    // `panic` panics in select too; the error line carries the message.
    let out = sluice()
        .args(["eval", HOSTILE, "--events"])
        .arg(&events)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let lines = lines(&out.stdout);
    let message = lines.last().unwrap()["message"].as_str().unwrap();
    assert!(
        message.contains("hostile rule panicked on purpose"),
        "{message}"
    );
}

#[test]
fn eval_names_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.ndjson");
    std::fs::write(
        &events,
        "{\"source\":\"t\",\"kind\":\"k\",\"payload\":[1]}\n",
    )
    .unwrap();
    let out = sluice()
        .args(["eval", PR_DIGEST, "--events"])
        .arg(&events)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("events.ndjson:1: not an event"), "{err}");

    let out = sluice()
        .args(["eval", NOT_A_RULE, "--events", &example_events("pr-digest")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing export(s)"), "{err}");

    let out = sluice()
        .args(["eval", PR_DIGEST, "--events", "/nonexistent/events.ndjson"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/events.ndjson"));
}

/// `sluice ingest` into `db` with `input` on stdin.
fn ingest(db: &Path, input: &[u8]) -> Output {
    let mut child = sluice()
        .args(["ingest", "--durability", "normal", "--db"])
        .arg(db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// Every event stored in `db`, in seq order.
fn stored(db: &Path) -> Vec<sluice::event::Event> {
    let log = sluice::log::EventLog::open_sqlite(
        db,
        sluice::log::Durability::Normal,
        sluice::log::LogConfig::default(),
        std::sync::Arc::new(sluice::clock::SystemClock),
    )
    .unwrap();
    let events = log
        .query(&sluice::log::EventQuery::tenant("default", 1000))
        .unwrap();
    log.close();
    events
}

#[test]
fn ingest_acknowledges_the_id_the_log_stored() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("log.db");
    let input = concat!(
        "{\"source\":\"s\",\"kind\":\"a\",\"payload\":{}}\n",
        "{\"id\":\"x\",\"source\":\"s\",\"kind\":\"b\",\"payload\":{}}\n",
        "\n",
        "{\"id\":\"x\",\"source\":\"s\",\"kind\":\"c\",\"payload\":{}}\n",
        "{\"id\":null,\"source\":\"s\",\"kind\":\"d\",\"payload\":{}}\n",
    );
    let out = ingest(&db, input.as_bytes());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let acks = lines(&out.stdout);
    let events = stored(&db);
    assert_eq!(events.len(), 3);
    let expected = [
        (1, 1, "accepted", events[0].id.as_str()),
        (2, 2, "accepted", "x"),
        (4, 2, "duplicate", "x"),
        (5, 3, "accepted", events[2].id.as_str()),
    ];
    assert_eq!(acks.len(), expected.len());
    for (ack, (line, seq, outcome, id)) in acks.iter().zip(expected) {
        assert_eq!(ack["line"], line, "{ack}");
        assert_eq!(ack["seq"], seq, "{ack}");
        assert_eq!(ack["outcome"], outcome, "{ack}");
        assert_eq!(ack["id"], id, "{ack}");
    }
    assert_eq!(events[0].id.len(), 26, "a generated ULID");
    assert_ne!(events[0].id, events[2].id);
}
