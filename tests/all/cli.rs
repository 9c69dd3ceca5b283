//! The `sluice` binary, run as a user would.

use std::process::Command;

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
