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
use sluice::runtime::bindings::wit::{self, Membership, Reason};
use sluice::runtime::{
    CallErrorKind, Limits, LoadedRule, Placement, RuleLabel, Runtime, RuntimeConfig, Verdict,
};

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

fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let target = target_dir();
        let out = target.join("languages");
        let mut cmd = Command::new("bash");
        cmd.arg(root().join("scripts/build-languages.sh"))
            .arg(&out)
            .env("CARGO_TARGET_DIR", &target);
        // The test's own build settings are for the host; the guests'
        // builds are plain (as in tests/build.rs).
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
    assert!(cases.len() >= 6, "found {} kit cases", cases.len());
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
