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
    assert!(
        err.contains("events.ndjson: line 1: payload: must be a JSON object, got an array"),
        "{err}"
    );

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

#[test]
fn ingest_reports_invalid_utf8_as_a_bad_line() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("log.db");
    let mut input = b"{\"source\":\"s\",\"kind\":\"a\",\"payload\":{}}\n\n".to_vec();
    input.extend_from_slice(b"{\"source\":\"s\",\"kind\":\"caf\xe9\",\"payload\":{}}\n");
    input.extend_from_slice(b"{\"source\":\"s\",\"kind\":\"never\",\"payload\":{}}\n");
    let out = ingest(&db, &input);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 3: not valid UTF-8 (byte 26 of the line)"),
        "{err}"
    );
    // The good line before it was committed and acknowledged; nothing after.
    let acks = lines(&out.stdout);
    assert_eq!(acks.len(), 1, "{acks:?}");
    assert_eq!(
        (acks[0]["line"].as_u64(), acks[0]["seq"].as_u64()),
        (Some(1), Some(1))
    );
    let kinds: Vec<String> = stored(&db).into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds, ["a"]);
}

#[test]
fn eval_and_ingest_accept_and_refuse_the_same_events() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let good = b"{\"source\":\"s\",\"kind\":\"k\",\"payload\":{}}\n".as_slice();
    let cases: [&[u8]; 14] = [
        br#"{"source":"s","kind":"k","payload":{"x":1}}"#,
        br#"{"source":"s","kind":"k","payload":{},"id":"a","time":5}"#,
        br#"{"source":"s","kind":"k","payload":{},"id":null,"time":"2026-01-01T00:00:00Z"}"#,
        br#"{"source":"s","kind":"","payload":{}}"#,
        br#"{"source":"s","kind":"k","payload":[1]}"#,
        br#"{"source":"s","kind":"k"}"#,
        br#"{"kind":"k","payload":{}}"#,
        br#"{"source":"s","kind":"k","payload":{},"tenant":"x"}"#,
        br#"{"source":"s","kind":"k","payload":{},"time":-1}"#,
        br#"{"source":"s","kind":"k","payload":{},"time":"yesterday"}"#,
        br#"{"source":"s","kind":"k","payload":{},"id":7}"#,
        br#"[{"source":"s","kind":"k","payload":{}}]"#,
        b"not json",
        b"{\"source\":\"s\",\"kind\":\"\xff\",\"payload\":{}}",
    ];
    let mut accepted = 0;
    for (i, case) in cases.iter().enumerate() {
        // A good line first: the error must name line 2.
        let mut input = good.to_vec();
        input.extend_from_slice(case);
        input.push(b'\n');
        let events = dir.path().join(format!("case-{i}.ndjson"));
        std::fs::write(&events, &input).unwrap();
        let eval = sluice()
            .args(["eval", PR_DIGEST, "--events"])
            .arg(&events)
            .arg("--cache-dir")
            .arg(&cache)
            .output()
            .unwrap();
        let ingested = ingest(&dir.path().join(format!("case-{i}.db")), &input);
        let shown = String::from_utf8_lossy(case);
        let eval_err = String::from_utf8_lossy(&eval.stderr);
        let ingest_err = String::from_utf8_lossy(&ingested.stderr);
        assert_eq!(
            eval.status.success(),
            ingested.status.success(),
            "{shown}: eval said {eval_err:?}, ingest said {ingest_err:?}"
        );
        if ingested.status.success() {
            accepted += 1;
            assert_eq!(lines(&ingested.stdout).len(), 2, "{shown}");
            continue;
        }
        assert_eq!(ingested.status.code(), Some(2), "{shown}");
        assert_eq!(eval.status.code(), Some(2), "{shown}");
        // Ingest: `error: line 2: …`; eval names the file first.
        let ingest_says = ingest_err
            .trim_end()
            .strip_prefix("error: ")
            .unwrap_or_else(|| panic!("{shown}: {ingest_err}"));
        assert!(
            ingest_says.starts_with("line 2: "),
            "{shown}: {ingest_says}"
        );
        let eval_says = eval_err.trim_end();
        let expected = format!("error: {}: {ingest_says}", events.display());
        assert_eq!(eval_says, expected, "{shown}");
    }
    assert_eq!(accepted, 3);
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// `sluice test` of the PR digest under `manifest` on `events`.
fn sluice_test(manifest: &str, events: &str) -> Output {
    sluice()
        .args([
            "test",
            PR_DIGEST,
            "--manifest",
            manifest,
            "--events",
            events,
        ])
        .output()
        .unwrap()
}

const DIGEST_TOML: &str =
    "name = \"pr-digest\"\nversion = 1\n\n[trigger.batch]\ncount = 2\nwindow = \"1h\"\n";

#[test]
fn test_refuses_a_clock_that_goes_backwards_or_overflows() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = write(dir.path(), "rule.toml", DIGEST_TOML);
    for (events, expected) in [
        (
            "{\"advance\": \"2026-06-01T00:00:00Z\"}\n{\"advance\": \"2026-01-01T00:00:00Z\"}\n",
            "line 2: advance: \"2026-01-01T00:00:00Z\" is before the clock",
        ),
        (
            "{\"advance\": \"500000000000y\"}\n",
            "line 1: advance: \"500000000000y\" moves the clock past",
        ),
    ] {
        let events = write(dir.path(), "events.ndjson", events);
        let out = sluice_test(&manifest, &events);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
    }
}

#[test]
fn two_rules_with_one_name_are_refused_by_test_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = write(dir.path(), "rule.toml", DIGEST_TOML);
    let events = write(dir.path(), "events.ndjson", "");
    let also = format!("{manifest}={PR_DIGEST}");
    let out = sluice()
        .args([
            "test",
            PR_DIGEST,
            "--manifest",
            &manifest,
            "--events",
            &events,
        ])
        .args(["--rule", &also])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("two rules are named \"pr-digest\""),
        "{stderr}"
    );

    let db = dir.path().join("run.db");
    let out = sluice()
        .args([
            "run",
            "--exit-when-idle",
            "--rule",
            &also,
            "--rule",
            &also,
            "--db",
        ])
        .arg(&db)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("two rules are named \"pr-digest\""),
        "{stderr}"
    );
    assert!(!db.exists(), "nothing was created for a refused run");
}

#[test]
fn run_checks_its_manifests_before_creating_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = write(
        dir.path(),
        "rule.toml",
        "name = \"pr-digest\"\nversion = 1\n\n[trigger.batch]\ncount = 2\nwindow = \"soon\"\n",
    );
    let db = dir.path().join("run.db");
    let out = sluice()
        .args([
            "run",
            "--exit-when-idle",
            "--rule",
            &format!("{manifest}={PR_DIGEST}"),
            "--db",
        ])
        .arg(&db)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("trigger.batch.window"), "{stderr}");
    assert!(!db.exists(), "a bad manifest leaves no database behind");
}

#[test]
fn test_streams_fires_and_outputs_as_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = write(dir.path(), "rule.toml", DIGEST_TOML);
    let events: String = (0..4)
        .map(|n| {
            format!(
                "{{\"source\":\"github\",\"kind\":\"pull_request.merged\",\"payload\":{{\"repo\":\"a\",\"number\":{n},\"title\":\"hi\"}}}}\n"
            )
        })
        .collect();
    let events = write(dir.path(), "events.ndjson", &events);
    let out = sluice_test(&manifest, &events);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = lines(&out.stdout);
    let kinds: Vec<&str> = got.iter().map(|l| l["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["fire", "output", "fire", "output"]);
    assert_eq!(got[0]["events"], serde_json::json!([1, 2]));
    // The outputs and their engine records take seqs 3 and 4: the second
    // window holds the events that came after them.
    assert_eq!(got[2]["events"], serde_json::json!([5, 6]));
}

#[test]
fn test_prints_each_fire_before_its_input_ends() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let manifest = write(dir.path(), "rule.toml", DIGEST_TOML);
    let fifo = dir.path().join("events.fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let mut child = sluice()
        .args(["test", PR_DIGEST, "--manifest", &manifest, "--events"])
        .arg(&fifo)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // The input stays open while the first fire is read back.
    let mut input = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    for n in 0..2 {
        writeln!(
            input,
            "{{\"source\":\"github\",\"kind\":\"pull_request.merged\",\"payload\":{{\"repo\":\"a\",\"number\":{n}}}}}"
        )
        .unwrap();
    }
    input.flush().unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["type"], "fire", "{first}");
    drop(input);
    assert!(child.wait().unwrap().success());
}

#[test]
fn test_stops_quietly_when_its_reader_stops() {
    // `sluice test … | head -1`: once the reader is gone, the run's next
    // line cannot be written; that ends the run, and is not an error of
    // the events file's.
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let manifest = write(dir.path(), "rule.toml", DIGEST_TOML);
    let fifo = dir.path().join("events.fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let mut child = sluice()
        .args(["test", PR_DIGEST, "--manifest", &manifest, "--events"])
        .arg(&fifo)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    let merged = |input: &mut std::fs::File, n: u32| {
        writeln!(
            input,
            "{{\"source\":\"github\",\"kind\":\"pull_request.merged\",\"payload\":{{\"repo\":\"a\",\"number\":{n}}}}}"
        )
        .unwrap();
        input.flush().unwrap();
    };
    merged(&mut input, 0);
    merged(&mut input, 1);
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["type"], "fire", "{first}");
    // The reader goes; two more merges make a fire whose line has nowhere
    // to go.
    drop(lines);
    merged(&mut input, 2);
    merged(&mut input, 3);
    drop(input);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("error"), "{stderr}");
}

/// The trust boundary: no client event may claim the engine's
/// source, a rule's source, or an id of the engine's id space — so none can
/// be mistaken for an engine record or a rule's output, or take an
/// output's id before its fire completes (the real output would then be
/// dropped as a duplicate while the fire counts as done).
#[test]
fn reserved_sources_and_engine_ids_are_refused_on_every_ingest_path() {
    let dir = tempfile::tempdir().unwrap();
    let forged = [
        (
            r#"{"source":"sluice","kind":"fire.completed","payload":{}}"#,
            "source: \"sluice\" is reserved",
        ),
        (
            r#"{"source":"rule:pr-digest","kind":"pr.digest","payload":{}}"#,
            "source: \"rule:pr-digest\" is reserved",
        ),
        (
            r#"{"id":"sluice:f_00000000000000000000000000000000.0","source":"github","kind":"pull_request.merged","payload":{"repo":"a","number":1}}"#,
            "id: ids starting with \"sluice:\" are reserved",
        ),
    ];
    let honest = r#"{"source":"github","kind":"pull_request.merged","payload":{"repo":"a","number":0,"title":"t"}}"#;
    for (i, (line, why)) in forged.iter().enumerate() {
        let input = format!("{honest}\n{line}\n");
        // `sluice ingest`: the honest line is stored, the forged one refused.
        let db = dir.path().join(format!("ingest-{i}.db"));
        let out = ingest(&db, input.as_bytes());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{line}");
        assert!(
            stderr.contains("line 2") && stderr.contains(why),
            "{stderr}"
        );
        let stored = stored(&db);
        assert_eq!(stored.len(), 1, "only the honest event is stored");
        // `sluice test`: the run stops at the forged line, naming it.
        let manifest = write(dir.path(), "rule.toml", DIGEST_TOML);
        let events = write(dir.path(), &format!("events-{i}.ndjson"), &input);
        let out = sluice_test(&manifest, &events);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("line 2") && stderr.contains(why),
            "{stderr}"
        );
        // `sluice eval` checks events as ingest does.
        let out = sluice()
            .args(["eval", PR_DIGEST, "--events", &events])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(why), "{stderr}");
    }
}

/// A rule's directory as `sluice new` and the examples lay it out: the
/// manifest, the component, a scenario.
fn digest_dir(dir: &Path) -> std::path::PathBuf {
    let rule = dir.join("digest");
    std::fs::create_dir_all(&rule).unwrap();
    std::fs::write(rule.join("rule.toml"), DIGEST_TOML).unwrap();
    std::fs::copy(PR_DIGEST, rule.join("pr_digest.wasm")).unwrap();
    std::fs::copy(
        format!(
            "{}/../examples/pr-digest/scenario.ndjson",
            env!("CARGO_MANIFEST_DIR")
        ),
        rule.join("scenario.ndjson"),
    )
    .unwrap();
    rule
}

/// Change the scenario of [`digest_dir`]: one pull request's title.
fn retitle(rule: &Path) {
    let scenario = rule.join("scenario.ndjson");
    let text = std::fs::read_to_string(&scenario).unwrap();
    std::fs::write(
        &scenario,
        text.replace("\"Add rate limits\"", "\"Add limits\""),
    )
    .unwrap();
}

#[test]
fn test_prints_a_timeline_for_people_and_json_for_programs() {
    let dir = tempfile::tempdir().unwrap();
    let rule = digest_dir(dir.path());
    let run = |extra: &[&str]| {
        let out = sluice()
            .arg("test")
            .arg(&rule)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    // The directory alone: rule.toml, the component, scenario.ndjson.
    let json = run(&[]);
    let fires = lines(json.as_bytes())
        .into_iter()
        .filter(|l| l["type"] == "fire")
        .count();
    assert!(fires > 0, "{json}");
    assert_eq!(json, run(&["--json"]));
    // The timeline: a day header, a line per fire with its partition and
    // reason, outputs under it, a summary.
    let timeline = run(&["--timeline"]);
    assert!(timeline.starts_with("── 2026-01-01"), "{timeline}");
    assert!(
        timeline
            .lines()
            .any(|l| l.contains("pr-digest")
                && l.contains("fire [acme/api] count-reached: 2 events")),
        "{timeline}"
    );
    assert!(timeline.contains("  → pr.digest {"), "{timeline}");
    let last = timeline.lines().last().unwrap();
    assert!(
        last.starts_with(&format!("{fires} fire")) && last.contains("0 dead letters"),
        "{timeline}"
    );
    assert!(!timeline.contains("\"type\""), "{timeline}");
}

#[test]
fn test_compares_with_an_expected_file_and_blesses_it() {
    let dir = tempfile::tempdir().unwrap();
    let rule = digest_dir(dir.path());
    let expected = rule.join("expected.ndjson");
    let run = |extra: &[&str]| {
        sluice()
            .arg("test")
            .arg(&rule)
            .arg("--expect")
            .arg(&expected)
            .args(extra)
            .output()
            .unwrap()
    };
    // No file yet: say how to make one.
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bless writes it"));
    let out = run(&["--bless"]);
    assert!(out.status.success());
    let blessed = std::fs::read_to_string(&expected).unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .starts_with(&format!("wrote {} lines", blessed.lines().count()))
    );
    // The same run: as expected, key order and spacing aside.
    let reordered: String = blessed
        .lines()
        .map(|l| {
            let v: serde_json::Map<String, Value> = serde_json::from_str(l).unwrap();
            let mut keys: Vec<_> = v.into_iter().collect();
            keys.reverse();
            let body: Vec<String> = keys
                .iter()
                .map(|(k, v)| format!("{}: {v}", Value::from(k.as_str())))
                .collect();
            format!("{{ {} }}\n", body.join(", "))
        })
        .collect();
    std::fs::write(&expected, reordered).unwrap();
    let out = run(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok: "));
    // A changed scenario: a diff, exit 1, and how to accept it.
    retitle(&rule);
    let out = run(&[]);
    let report = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{report}");
    let minus: Vec<&str> = report.lines().filter(|l| l.starts_with("- ")).collect();
    let plus: Vec<&str> = report.lines().filter(|l| l.starts_with("+ ")).collect();
    assert_eq!((minus.len(), plus.len()), (1, 1), "{report}");
    assert!(minus[0].contains("Add rate limits") && plus[0].contains("Add limits"));
    assert!(
        report.contains("--bless takes the run as expected"),
        "{report}"
    );
    // A broken expected file is named, with its line.
    std::fs::write(&expected, "{\"type\": \"fire\"}\nnot json\n").unwrap();
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected.ndjson line 2: not JSON"));
}

#[test]
fn test_watch_runs_again_when_the_scenario_changes() {
    let dir = tempfile::tempdir().unwrap();
    let rule = digest_dir(dir.path());
    let mut child = sluice()
        .arg("test")
        .arg(&rule)
        .args(["--watch", "--timeline"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    // A run: its header, its lines, its summary.
    let until_run = |what: &str| -> Vec<String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no {what}: {e} (so far {got:?})"));
            let done = line.contains(" dead letter");
            got.push(line);
            if done {
                return got;
            }
        }
    };
    let first = until_run("first run");
    assert!(first[0].starts_with("── "), "{first:?}");
    assert!(
        first.iter().any(|l| l.contains("Add rate limits")),
        "{first:?}"
    );
    retitle(&rule);
    let second = until_run("run after the change");
    assert!(second[0].starts_with("── "), "{second:?}");
    assert!(
        second.iter().any(|l| l.contains("\"Add limits\"")),
        "{second:?}"
    );
    assert!(
        !second.iter().any(|l| l.contains("Add rate limits")),
        "{second:?}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// `sluice new` and `sluice build` as a newcomer gets them wrong: each
/// mistake is one sentence naming the fix, exit code 2.
#[test]
fn new_and_build_explain_what_is_wrong() {
    let home = tempfile::tempdir().unwrap();
    let run = |args: &[&str], path: Option<&str>| {
        let mut cmd = sluice();
        cmd.args(args).current_dir(home.path());
        if let Some(p) = path {
            cmd.env("PATH", p);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let one_error = |stderr: &str, wanted: &str| {
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("error: "))
            .collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(lines[0].contains(wanted), "wanted {wanted:?} in {stderr}");
    };

    // A name the engine would refuse.
    let (code, _, err) = run(&["new", "Cart Watch", "--lang", "c"], None);
    assert_eq!(code, Some(2));
    one_error(&err, "must be 1 to 64 characters of a-z");
    // An unknown language lists the ones there are.
    let (code, _, err) = run(&["new", "cart", "--lang", "go"], None);
    assert_eq!(code, Some(2));
    assert!(err.contains("rust") && err.contains("javascript"), "{err}");

    // A project, then the same name again.
    let (code, out, _) = run(
        &["new", "cart", "--lang", "python", "--trigger", "dwell"],
        None,
    );
    assert_eq!(code, Some(0));
    assert!(out.contains("wrote cart (a dwell rule in Python"), "{out}");
    for f in [
        "rule.toml",
        "app.py",
        "sdk/sluice_rule.py",
        "scenario.ndjson",
        "expected.ndjson",
        "README.md",
    ] {
        assert!(home.path().join("cart").join(f).is_file(), "{f}");
    }
    let (code, _, err) = run(&["new", "cart", "--lang", "c"], None);
    assert_eq!(code, Some(2));
    one_error(&err, "cart already exists and is not empty");

    // Building without the language's tools names how to install them
    // (PATH without componentize-py; no .venv in the project).
    let (code, _, err) = run(&["build", "cart"], Some("/nonexistent"));
    assert_eq!(code, Some(2));
    one_error(
        &err,
        "componentize-py was not found: install it once with `python3 -m venv .venv",
    );
    let (code, _, err) = run(&["new", "sums", "--lang", "c"], None);
    assert_eq!((code, err.as_str()), (Some(0), ""));
    let (code, _, err) = run(&["build", "sums"], Some("/nonexistent"));
    assert_eq!(code, Some(2));
    one_error(&err, "clang was not found");

    // A directory that is not a project.
    std::fs::create_dir(home.path().join("empty")).unwrap();
    let (code, _, err) = run(&["build", "empty"], None);
    assert_eq!(code, Some(2));
    one_error(
        &err,
        "no rule to build (looked for Cargo.toml, app.py, app.js and rule.c",
    );
    let (code, _, err) = run(&["build", "missing"], None);
    assert_eq!(code, Some(2));
    one_error(&err, "missing: no such directory");
}
