//! Rules in every language, held to one kit.
//!
//! `scripts/build-languages.sh` builds the example rules of every language
//! (Rust, Python, JavaScript, C) and lists them in `index.tsv`; the first
//! test here runs it (its component cache makes a second run cost a hash
//! check). Then:
//!
//! - the **kit** (`tests/kit/<case>/`: `rule.toml`, `events.ndjson`,
//!   `expected.ndjson`) runs every case through `sluice test` against the
//!   component of every language named like the case's rule, and each
//!   must print exactly the expected lines. `SLUICE_BLESS=1` rewrites the
//!   expectations from the Rust component — read the diff.
//! - each language's components are driven through the runtime directly:
//!   `select` against the per-event exports, the handler's output and its
//!   errors, the imports each toolchain produces.
//! - `measure_languages` (ignored; run it in release) prints the figures of
//!   the README's "Rules in other languages".

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice::clock::{ManualClock, SharedClock};
use sluice::event::Event;
use sluice::runtime::bindings::wit::{self, Reason};
use sluice::runtime::{
    CallErrorKind, Limits, LoadedRule, Placement, RuleLabel, Runtime, RuntimeConfig, Verdict,
};
use sluice::verdict::Membership;

/// The languages every kit case runs in; Rust is the reference.
const LANGUAGES: [&str; 4] = ["rust", "python", "javascript", "c"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

/// The target directory this test binary was built into
/// (`<target>/<profile>/deps/all-<hash>`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "deps"))
        .and_then(|deps| deps.parent()?.parent())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| root().join("target"))
}

/// What `scripts/build-languages.sh` built.
#[derive(Debug)]
struct Built {
    /// (language, rule) → component path.
    components: BTreeMap<(String, String), PathBuf>,
    out: PathBuf,
}

impl Built {
    fn path(&self, language: &str, rule: &str) -> &Path {
        self.components
            .get(&(language.to_owned(), rule.to_owned()))
            .unwrap_or_else(|| panic!("no {language} component for rule {rule} in the index"))
    }
}

/// A command whose cargo builds are plain: the test's own build settings
/// are for the host, not the guests (as in tests/build.rs).
fn plain_build(cmd: &mut Command) {
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
    ] {
        cmd.env_remove(var);
    }
}

fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let target = target_dir();
        let out = target.join("languages");
        let mut cmd = Command::new("bash");
        cmd.arg(root().join("scripts/build-languages.sh"))
            .arg(&out)
            .env("CARGO_TARGET_DIR", &target);
        plain_build(&mut cmd);
        let output = cmd.output().expect("run scripts/build-languages.sh");
        assert!(
            output.status.success(),
            "scripts/build-languages.sh failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let index = std::fs::read_to_string(out.join("index.tsv")).expect("read index.tsv");
        let mut components = BTreeMap::new();
        for (n, line) in index.lines().enumerate() {
            let fields: Vec<&str> = line.split('\t').collect();
            let [language, rule, path] = fields[..] else {
                panic!("index.tsv line {}: expected 3 fields: {line:?}", n + 1);
            };
            components.insert((language.into(), rule.into()), PathBuf::from(path));
        }
        Built { components, out }
    })
}

/// Compiled components shared by every test here and kept between runs
/// (keyed by content and engine), so only a changed component compiles.
fn cache_dir() -> PathBuf {
    target_dir().join("languages-cache")
}

fn runtime(clock: &ManualClock, cache: Option<PathBuf>) -> Runtime {
    Runtime::new(RuntimeConfig {
        cache_dir: cache,
        clock: Arc::new(clock.clone()) as SharedClock,
        ..RuntimeConfig::default()
    })
    .unwrap()
}

fn load(rt: &Runtime, language: &str, rule: &str) -> LoadedRule {
    let path = built().path(language, rule);
    let bytes = std::fs::read(path).unwrap();
    rt.load(
        RuleLabel::new("test", &format!("{language}/{rule}")),
        &bytes,
        Limits::default(),
    )
    .unwrap_or_else(|e| panic!("load {}: {e}", path.display()))
}

fn kit_cases() -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(root().join("tests/kit"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("rule.toml").exists())
        .collect();
    cases.sort();
    cases
}

fn rule_name(case: &Path) -> String {
    let text = std::fs::read_to_string(case.join("rule.toml")).unwrap();
    sluice::manifest::Manifest::parse(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", case.display()))
        .name
}

/// `sluice test` on one case: (exit code, stdout).
fn sluice_test(component: &Path, case: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("test")
        .arg(component)
        .arg("--manifest")
        .arg(case.join("rule.toml"))
        .arg("--events")
        .arg(case.join("events.ndjson"))
        .env("SLUICE_CACHE_DIR", cache_dir())
        .env("SLUICE_LOG", "error")
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8(out.stdout).unwrap())
}

#[test]
fn kit_cases_print_the_same_lines_in_every_language() {
    let cases = kit_cases();
    assert!(cases.len() >= 9, "found {} kit cases", cases.len());
    let bless = std::env::var_os("SLUICE_BLESS").is_some();
    let mut failures = Vec::new();
    let mut runs = 0;
    for case in &cases {
        let rule = rule_name(case);
        let expected_path = case.join("expected.ndjson");
        for language in LANGUAGES {
            let (code, actual) = sluice_test(built().path(language, &rule), case);
            runs += 1;
            if bless && language == "rust" {
                std::fs::write(&expected_path, &actual).unwrap();
            }
            let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
            // Exit 1 exactly when a handler failed (an error or dead letter).
            let failed = expected.contains(r#""type":"dead_letter""#)
                || expected.contains(r#""type":"error""#);
            let want_code = Some(if failed { 1 } else { 0 });
            if expected.is_empty() || actual != expected || code != want_code {
                failures.push(format!(
                    "{} in {language}: exit {code:?} (want {want_code:?})\n--- expected\n{expected}--- actual\n{actual}",
                    case.display()
                ));
            }
        }
    }
    assert_eq!(runs, cases.len() * LANGUAGES.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_kit_rule_exists_in_every_language() {
    let rules: std::collections::BTreeSet<String> =
        kit_cases().iter().map(|c| rule_name(c)).collect();
    assert!(rules.contains("pr-digest") && rules.contains("user-inactive"));
    for rule in &rules {
        for language in LANGUAGES {
            let path = built().path(language, rule);
            assert!(
                std::fs::metadata(path).is_ok_and(|m| m.len() > 0),
                "{}",
                path.display()
            );
        }
    }
}

fn ev(seq: u64, kind: &str, payload: &str) -> Event {
    Event {
        seq,
        id: format!("ev-{seq}"),
        tenant: "test".into(),
        source: "tests".into(),
        kind: kind.into(),
        time: 1_767_225_600_000 + seq as i64 * 1000,
        payload: payload.into(),
        ingested: 0,
        hops: 0,
    }
}

fn keep(partition: Option<&str>, membership: Membership) -> Verdict {
    Verdict::Keep(Placement {
        partition: partition.map(str::to_owned),
        membership,
    })
}

fn batch(partition: Option<&str>, reason: Reason, events: &[Event]) -> wit::Batch {
    wit::Batch {
        fire_id: "f1".into(),
        rule: "kit".into(),
        partition: partition.map(str::to_owned),
        reason,
        attempt: 1,
        events: sluice::runtime::event_pack(events).unwrap(),
    }
}

fn rule_error(err: &sluice::runtime::CallError) -> String {
    match &err.kind {
        CallErrorKind::Rule(wit::RuleError::Fatal(m)) => format!("fatal: {m}"),
        CallErrorKind::Rule(wit::RuleError::Retryable(m)) => format!("retryable: {m}"),
        other => panic!("expected a rule error, got {other:?} ({err})"),
    }
}

#[test]
fn pr_digest_in_every_language_selects_and_digests_alike() {
    let clock = ManualClock::new(1_767_225_600_000);
    let rt = runtime(&clock, Some(cache_dir()));
    let events = [
        ev(
            1,
            "pull_request.merged",
            r#"{"repo":"acme/\u00e9t\u00e9","number":1,"author":"Zo\u00eb","title":"say \"hi\"\n"}"#,
        ),
        ev(
            2,
            "pull_request.opened",
            r#"{"repo":"acme/api","number":2}"#,
        ),
        ev(
            3,
            "pull_request.merged",
            r#"{"repo":"acme/été","number":3,"author":"Zoë","title":"\ud83d\ude80"}"#,
        ),
        ev(4, "pull_request.merged", r#"{"number":4,"repo":["x"]}"#),
    ];
    for language in LANGUAGES {
        let mut rule = load(&rt, language, "pr-digest").instance();
        assert_eq!(
            rule.select(&events).unwrap(),
            vec![
                keep(Some("acme/été"), Membership::Enter),
                Verdict::Skip,
                keep(Some("acme/été"), Membership::Enter),
                keep(None, Membership::Enter),
            ],
            "{language}"
        );
        // The per-event exports agree with select.
        for e in &events {
            let kept = rule.filter(e).unwrap();
            assert_eq!(kept, e.kind == "pull_request.merged", "{language}");
            if kept {
                let key = rule.partition_key(e).unwrap();
                assert_eq!(
                    key.as_deref(),
                    (e.seq != 4).then_some("acme/été"),
                    "{language}"
                );
                assert_eq!(rule.membership(e).unwrap(), Membership::Enter, "{language}");
            }
        }

        let emits = rule
            .handle_batch(&batch(
                Some("acme/été"),
                Reason::WindowExpired,
                &[events[0].clone(), events[2].clone()],
            ))
            .unwrap();
        assert_eq!(emits.len(), 1, "{language}");
        assert_eq!(emits[0].kind, "pr.digest", "{language}");
        let digest: Value = serde_json::from_str(&emits[0].payload).unwrap();
        assert_eq!(
            digest,
            json!({
                "repo": "acme/été",
                "merged": 2,
                "pull_requests": [
                    {"number": 1, "title": "say \"hi\"\n"},
                    {"number": 3, "title": "🚀"},
                ],
                "authors": ["Zoë"],
                "reason": "window expired",
            }),
            "{language}"
        );

        // A merge without a number: fatal, with the kit's message.
        let err = rule
            .handle_batch(&batch(
                None,
                Reason::CountReached,
                &[ev(9, "pull_request.merged", r#"{"repo":"a","title":"t"}"#)],
            ))
            .unwrap_err();
        assert_eq!(
            rule_error(&err),
            "fatal: event ev-9: no pull request number",
            "{language}"
        );
        // The instance is usable after a rule error.
        let emits = rule
            .handle_batch(&batch(None, Reason::Drained, &[]))
            .unwrap();
        let digest: Value = serde_json::from_str(&emits[0].payload).unwrap();
        assert_eq!(digest["merged"], 0, "{language}");
        assert_eq!(digest["reason"], "flushed", "{language}");
        assert_eq!(digest["repo"], Value::Null, "{language}");
    }
}

#[test]
fn user_inactive_in_every_language_maps_membership_and_reports_absence() {
    let clock = ManualClock::new(1_767_225_600_000);
    let rt = runtime(&clock, Some(cache_dir()));
    let events = [
        ev(1, "user.signed_up", r#"{"user_id":"u\u00e9-1"}"#),
        ev(2, "user.activity", r#"{"user_id":"ué-1","page":"/"}"#),
        ev(3, "user.deleted", r#"{"user_id":"ué-1"}"#),
        ev(4, "order.paid", r#"{"user_id":"ué-1"}"#),
        ev(5, "user.activity", r#"{"no_user":true}"#),
    ];
    for language in LANGUAGES {
        let mut rule = load(&rt, language, "user-inactive").instance();
        assert_eq!(
            rule.select(&events).unwrap(),
            vec![
                keep(Some("ué-1"), Membership::Enter),
                keep(Some("ué-1"), Membership::Refresh),
                keep(Some("ué-1"), Membership::Leave),
                Verdict::Skip,
                keep(None, Membership::Refresh),
            ],
            "{language}"
        );
        for (e, want) in
            events
                .iter()
                .zip([Membership::Enter, Membership::Refresh, Membership::Leave])
        {
            assert_eq!(rule.membership(e).unwrap(), want, "{language}");
        }

        clock.set(1_800_000_000_000);
        let reason = Reason::Dwell(wit::DwellReason {
            label: "inactive".into(),
            ordinal: 0,
            member_since: 1_767_225_602_000,
            epoch: 1,
        });
        let emits = rule
            .handle_batch(&batch(Some("ué-1"), reason.clone(), &events[..2]))
            .unwrap();
        assert_eq!(emits[0].kind, "user.inactive", "{language}");
        let out: Value = serde_json::from_str(&emits[0].payload).unwrap();
        assert_eq!(
            out,
            json!({
                "user_id": "ué-1",
                "label": "inactive",
                "last_seen": 1_767_225_602_000_i64,
                "detected_at": 1_800_000_000_000_i64,
            }),
            "{language}"
        );

        let err = rule
            .handle_batch(&batch(Some("ué-1"), Reason::Drained, &[]))
            .unwrap_err();
        assert_eq!(
            rule_error(&err),
            "fatal: unexpected reason drained",
            "{language}"
        );
        let err = rule.handle_batch(&batch(None, reason, &[])).unwrap_err();
        assert_eq!(
            rule_error(&err),
            "fatal: dwell fire without a user partition",
            "{language}"
        );
    }
}

/// The instances, functions and components a component imports, by name:
/// its top-level import sections, read from the binary (component-model
/// encoding: `\0asm`, version 0x0d, layer 1; section 10 holds imports).
/// Type imports (the world's `use types.{event, ...}`) are left out: they
/// are names for types, not capabilities.
fn imports(bytes: &[u8]) -> Result<Vec<String>, String> {
    fn leb(bytes: &[u8], at: &mut usize) -> Result<u64, String> {
        let (mut value, mut shift) = (0u64, 0);
        loop {
            let byte = *bytes.get(*at).ok_or("truncated LEB128")?;
            *at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
            shift += 7;
            if shift > 63 {
                return Err("LEB128 too long".into());
            }
        }
    }
    fn byte(bytes: &[u8], at: &mut usize) -> Result<u8, String> {
        let b = *bytes.get(*at).ok_or("truncated")?;
        *at += 1;
        Ok(b)
    }
    if bytes.get(..8) != Some(b"\0asm\x0d\0\x01\0") {
        return Err("not a component (preamble)".into());
    }
    let mut names = Vec::new();
    let mut at = 8;
    while at < bytes.len() {
        let id = byte(bytes, &mut at)?;
        let size = leb(bytes, &mut at)? as usize;
        let end = at
            .checked_add(size)
            .filter(|&e| e <= bytes.len())
            .ok_or("section too long")?;
        if id == 10 {
            let mut p = at;
            for _ in 0..leb(bytes, &mut p)? {
                match byte(bytes, &mut p)? {
                    0x00 | 0x01 => {}
                    other => return Err(format!("import name tag {other:#x}")),
                }
                let len = leb(bytes, &mut p)? as usize;
                let name = bytes.get(p..p + len).ok_or("truncated name")?;
                let name = String::from_utf8(name.to_vec()).map_err(|e| e.to_string())?;
                p += len;
                // externdesc: sort, then an index or a bound.
                let sort = byte(bytes, &mut p)?;
                if sort != 0x03 {
                    names.push(name.clone());
                }
                match sort {
                    0x00 => {
                        byte(bytes, &mut p)?;
                        leb(bytes, &mut p)?;
                    }
                    0x01 | 0x04 | 0x05 => {
                        leb(bytes, &mut p)?;
                    }
                    0x03 => {
                        if byte(bytes, &mut p)? == 0x00 {
                            leb(bytes, &mut p)?;
                        }
                    }
                    other => {
                        return Err(format!("import {:?}: extern sort {other:#x}", names.last()));
                    }
                }
            }
        }
        at = end;
    }
    Ok(names)
}

#[test]
fn components_import_only_wasi_and_the_host_interface() {
    let clock = ManualClock::new(1_767_225_600_000);
    let rt = runtime(&clock, Some(cache_dir()));
    for language in LANGUAGES {
        for rule in ["pr-digest", "user-inactive"] {
            let path = built().path(language, rule);
            let names = imports(&std::fs::read(path).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(
                names
                    .iter()
                    .any(|n| n.starts_with("sluice:rule/host@0.1.0")),
                "{language} {rule}: {names:?}"
            );
            let foreign: Vec<_> = names
                .iter()
                .filter(|n| !(n.starts_with("wasi:") || n.starts_with("sluice:rule/")))
                .collect();
            assert!(foreign.is_empty(), "{language} {rule} imports {foreign:?}");
            // No wasi:http (the engine offers none; JavaScript is built with
            // it disabled). Python's libc imports wasi:sockets and
            // wasi:filesystem, which the empty context satisfies with no
            // network and no preopened directory.
            assert!(
                !names.iter().any(|n| n.starts_with("wasi:http/")),
                "{language} {rule}: {names:?}"
            );
            // And the engine loads it (its own check of the world and the
            // imports) into the empty, capability-free WASI context.
            load(&rt, language, rule);
        }
    }
}

#[test]
fn javascript_with_wasi_http_is_refused_naming_the_import() {
    let path = built()
        .out
        .join("refused/javascript-wasi-http/pr_digest.wasm");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let clock = ManualClock::new(1_767_225_600_000);
    let rt = runtime(&clock, Some(cache_dir()));
    let err = rt
        .load(RuleLabel::new("test", "js-http"), &bytes, Limits::default())
        .unwrap_err();
    let message = err.to_string();
    assert!(message.contains("wasi:http/types@"), "{message}");
    assert!(
        imports(&bytes)
            .unwrap()
            .iter()
            .any(|n| n.starts_with("wasi:http/")),
        "the component was meant to import wasi:http"
    );
}

/// 100 merges of one repository, ~200-byte payloads, every fourth title
/// with escapes: the shape the kit's digest handles.
fn digest_events(n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let title = if i % 4 == 0 {
                format!(r#"Fix \"quoted\" names in caf\u00e9 \ud83d\ude80 #{i}"#)
            } else {
                format!("Refactor the ingestion pipeline to batch writes #{i}")
            };
            ev(
                i as u64 + 1,
                "pull_request.merged",
                &format!(
                    r#"{{"repo":"acme/service-{:02}","number":{},"author":"dev-{}","title":"{title}","labels":["backend","perf"],"additions":120,"deletions":45}}"#,
                    i % 10,
                    1000 + i,
                    i % 7
                ),
            )
        })
        .collect()
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn fmt_duration(d: Duration) -> String {
    let ns = d.as_nanos() as f64;
    if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

/// Builds the PR digest of `language` from scratch (no component cache)
/// and returns how long the build took, as the build reports it.
fn timed_build(language: &str) -> Duration {
    let scratch = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let output = if language == "rust" {
        // A cold build of the example and its dependencies (SDK, serde,
        // wit-bindgen) into an empty target directory.
        Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--release", "--target", "wasm32-wasip2"])
            .args(["-p", "pr-digest", "--manifest-path"])
            .arg(root().join("examples/Cargo.toml"))
            .arg("--target-dir")
            .arg(scratch.path())
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .output()
            .unwrap()
    } else {
        Command::new("bash")
            .arg(root().join(format!("examples/{language}/build.sh")))
            .arg(scratch.path())
            .env("SLUICE_NO_CACHE", "1")
            .env("CARGO_TARGET_DIR", target_dir())
            .output()
            .unwrap()
    };
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{language} build failed:\n{stderr}"
    );
    if language == "rust" {
        return elapsed;
    }
    // "<language> pr-digest: built in 12.3s (...)": the rule's own build,
    // without the tool checks around it.
    let line = stderr
        .lines()
        .find(|l| l.starts_with(&format!("{language} pr-digest: built in ")))
        .unwrap_or_else(|| panic!("no build time for {language} in:\n{stderr}"));
    let secs: f64 = line
        .split("built in ")
        .nth(1)
        .and_then(|rest| rest.split('s').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unreadable build line {line:?}"));
    Duration::from_secs_f64(secs)
}

/// The figures of the README's "Rules in other languages": per language,
/// build time, component size, cold compile, cached load, per-event
/// `select` and the digest handler on a 100-event batch, each a median of
/// interleaved rounds (languages alternate within a round), with ratios
/// against the Rust component of the same run. The outputs are checked
/// equal across languages while measuring.
///
/// Run: `cargo test --release -p sluice --test all measure_languages -- --ignored --nocapture`
#[test]
#[ignore = "a measurement: run it in release, by hand"]
fn measure_languages() {
    const ROUNDS: usize = 7;
    let clock = ManualClock::new(1_767_225_600_000);
    let events = digest_events(100);
    let warm = tempfile::tempdir().unwrap();
    let warm_rt = runtime(&clock, Some(warm.path().to_path_buf()));

    #[derive(Default)]
    struct Figures {
        build: Duration,
        size: u64,
        cold: Vec<Duration>,
        cached: Vec<Duration>,
        select: Vec<Duration>,
        handler: Vec<Duration>,
        handler_empty: Vec<Duration>,
        imports: usize,
    }
    let mut figures: BTreeMap<&str, Figures> = BTreeMap::new();
    for language in LANGUAGES {
        let path = built().path(language, "pr-digest");
        let bytes = std::fs::read(path).unwrap();
        let f = figures.entry(language).or_default();
        f.size = bytes.len() as u64;
        f.imports = imports(&bytes).unwrap().len();
        f.build = timed_build(language);
        eprintln!("{language}: built in {}", fmt_duration(f.build));
        // Fill the warm cache.
        load(&warm_rt, language, "pr-digest");
    }

    let mut reference: Option<Vec<Value>> = None;
    for round in 0..ROUNDS {
        for language in LANGUAGES {
            let bytes = std::fs::read(built().path(language, "pr-digest")).unwrap();
            let label = || RuleLabel::new("bench", language);
            let f = figures.get_mut(language).unwrap();
            // Cold compile: an engine with an empty cache (three rounds).
            if round < 3 {
                let empty = tempfile::tempdir().unwrap();
                let rt = runtime(&clock, Some(empty.path().to_path_buf()));
                let t = Instant::now();
                rt.load(label(), &bytes, Limits::default()).unwrap();
                f.cold.push(t.elapsed());
            }
            // Cached load: a new engine over the warm cache.
            let rt = runtime(&clock, Some(warm.path().to_path_buf()));
            let t = Instant::now();
            let loaded = rt.load(label(), &bytes, Limits::default()).unwrap();
            f.cached.push(t.elapsed());

            // select over 100 events on a live instance (warmed by one call).
            let mut instance = loaded.instance();
            instance.select(&events).unwrap();
            let t = Instant::now();
            for _ in 0..10 {
                std::hint::black_box(instance.select(&events).unwrap());
            }
            f.select.push(t.elapsed() / (10 * events.len() as u32));

            // The digest of a 100-event batch: each call on a fresh instance,
            // as the engine runs a fire.
            let b = batch(Some("acme/service-00"), Reason::CountReached, &events);
            let t = Instant::now();
            let emits = instance.handle_batch(&b).unwrap();
            f.handler.push(t.elapsed());
            let t = Instant::now();
            instance
                .handle_batch(&batch(None, Reason::Drained, &[]))
                .unwrap();
            f.handler_empty.push(t.elapsed());

            let out: Vec<Value> = emits
                .iter()
                .map(|e| serde_json::from_str(&e.payload).unwrap())
                .collect();
            match &reference {
                None => reference = Some(out),
                Some(r) => assert_eq!(&out, r, "{language} digests differently"),
            }
        }
    }

    let rust = &figures["rust"];
    let times = |r: f64| {
        if r >= 10.0 {
            format!("{r:.0}×")
        } else if r >= 0.1 {
            format!("{r:.1}×")
        } else {
            format!("{r:.2}×")
        }
    };
    let ratio = |a: Duration, b: Duration| times(a.as_secs_f64() / b.as_secs_f64());
    println!(
        "\n| language | build | component | imports | cold compile | cached load | `select` per event | digest, 100 events | handler, empty batch |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let (rs, rc, rl, rh, re) = (
        median(rust.select.clone()),
        median(rust.cold.clone()),
        median(rust.cached.clone()),
        median(rust.handler.clone()),
        median(rust.handler_empty.clone()),
    );
    for language in LANGUAGES {
        let f = &figures[language];
        let (s, c, l, h, e) = (
            median(f.select.clone()),
            median(f.cold.clone()),
            median(f.cached.clone()),
            median(f.handler.clone()),
            median(f.handler_empty.clone()),
        );
        println!(
            "| {language} | {} ({}) | {:.0} KB ({}) | {} | {} ({}) | {} ({}) | {} ({}) | {} ({}) | {} ({}) |",
            fmt_duration(f.build),
            ratio(f.build, rust.build),
            f.size as f64 / 1000.0,
            times(f.size as f64 / rust.size as f64),
            f.imports,
            fmt_duration(c),
            ratio(c, rc),
            fmt_duration(l),
            ratio(l, rl),
            fmt_duration(s),
            ratio(s, rs),
            fmt_duration(h),
            ratio(h, rh),
            fmt_duration(e),
            ratio(e, re),
        );
    }
}

/// `sluice new` in every language for every trigger: each project builds
/// with `sluice build`, using the tools `scripts/build-languages.sh`
/// installed, and passes its own test (`expected.ndjson`) at once.
#[test]
fn every_template_builds_and_passes_its_own_test() {
    let tools = std::fs::read_to_string(built().out.join("tools.path")).expect("read tools.path");
    let path = std::env::join_paths(
        tools
            .lines()
            .map(PathBuf::from)
            .chain(std::env::split_paths(
                &std::env::var_os("PATH").unwrap_or_default(),
            )),
    )
    .unwrap();
    let home = tempfile::tempdir().unwrap();
    let sluice = |dir: &Path, args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.args(args)
            .current_dir(dir)
            .env("PATH", &path)
            // One target directory for the Rust rules and the Python
            // adapter: their dependencies build once.
            .env("CARGO_TARGET_DIR", target_dir().join("templates"))
            .env("SLUICE_CACHE_DIR", cache_dir())
            .env("SLUICE_LOG", "error");
        plain_build(&mut cmd);
        let out = cmd.output().unwrap();
        let said = format!(
            "sluice {} in {}: {}\n{}{}",
            args.join(" "),
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{said}");
        String::from_utf8(out.stdout).unwrap()
    };
    for lang in LANGUAGES {
        for trigger in ["batch", "dwell", "schedule"] {
            let started = Instant::now();
            let name = format!("t-{lang}-{trigger}");
            let wrote = sluice(
                home.path(),
                &["new", &name, "--lang", lang, "--trigger", trigger],
            );
            assert!(
                wrote.starts_with(&format!("wrote {name} (a {trigger} rule in ")),
                "{wrote}"
            );
            let project = home.path().join(&name);
            let expected = std::fs::read_to_string(project.join("expected.ndjson")).unwrap();
            let lines = expected.lines().count();
            assert!(lines >= 2, "{name}: a template without an expected report");
            assert!(expected.contains(&format!("\"rule\":\"{name}\"")));
            let built = sluice(&project, &["build"]);
            assert!(built.starts_with("built "), "{built}");
            let tested = sluice(&project, &["test", ".", "--expect", "expected.ndjson"]);
            assert_eq!(
                tested.trim(),
                format!("ok: {lines} lines as expected in expected.ndjson"),
                "{name}"
            );
            eprintln!("{name}: new, build and test in {:.1?}", started.elapsed());
        }
    }
}
