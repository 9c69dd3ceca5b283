//! The conformance suite: a folder per case under `tests/conformance`,
//! each with `rule.toml`, `events.ndjson` and `expected.ndjson` (the JSON
//! lines `sluice test` prints). The rule's name picks the test component
//! (`pr-digest` → `pr_digest.wasm`); further rules that run alongside it
//! are `rule-*.toml`. `SLUICE_BLESS=1` rewrites the expectations — read
//! the diff before committing it.

use std::path::{Path, PathBuf};
use std::process::Command;

use sluice::manifest::Manifest;
use sluice_test_components::components::ALL;

fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/conformance");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("rule.toml").exists())
        .collect();
    dirs.sort();
    dirs
}

fn component_for(manifest: &Manifest) -> &'static str {
    let stem = manifest.name.replace('-', "_");
    ALL.iter()
        .find(|(name, _)| *name == stem)
        .map(|(_, path)| *path)
        .unwrap_or_else(|| panic!("no test component named {stem}"))
}

#[test]
fn every_case_produces_its_expected_lines() {
    let cases = cases();
    assert!(cases.len() >= 9, "found {} cases", cases.len());
    let mut failures = Vec::new();
    for case in cases {
        let mut files = vec![case.join("rule.toml")];
        let mut extra: Vec<PathBuf> = std::fs::read_dir(&case)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("rule-")
            })
            .collect();
        extra.sort();
        files.extend(extra);
        let rules = files
            .iter()
            .map(|f| {
                let manifest = Manifest::parse(&std::fs::read_to_string(f).unwrap())
                    .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
                (std::fs::read(component_for(&manifest)).unwrap(), manifest)
            })
            .collect();
        let events =
            std::io::BufReader::new(std::fs::File::open(case.join("events.ndjson")).unwrap());
        // On the PostgreSQL pass each case runs in a schema of its own.
        let scratch = tempfile::tempdir().unwrap();
        let options = sluice::offline::Options {
            cache_dir: None,
            store: crate::postgres().map(|_| crate::store_at(&scratch.path().join("case.db"))),
            ..Default::default()
        };
        let report = sluice::offline::run_rules(rules, events, &options)
            .unwrap_or_else(|e| panic!("{}: {e:#}", case.display()));
        let actual: String = report.lines.iter().map(|l| format!("{l}\n")).collect();
        let expected_path = case.join("expected.ndjson");
        if std::env::var_os("SLUICE_BLESS").is_some() {
            std::fs::write(&expected_path, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected != actual {
            failures.push(format!(
                "{}\n--- expected\n{expected}--- actual\n{actual}",
                case.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn sluice_test_exits_non_zero_when_the_rule_fails() {
    let case = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/conformance/dead-letter-after-max-attempts");
    let manifest =
        Manifest::parse(&std::fs::read_to_string(case.join("rule.toml")).unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("test")
        .arg(component_for(&manifest))
        .arg("--manifest")
        .arg(case.join("rule.toml"))
        .arg("--events")
        .arg(case.join("events.ndjson"))
        .env("SLUICE_LOG", "error")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout,
        std::fs::read_to_string(case.join("expected.ndjson")).unwrap()
    );

    // A manifest error is a usage error: exit 2, naming file and line.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("rule.toml");
    std::fs::write(
        &bad,
        "name = \"x\"\nversion = 1\n[trigger.batch]\ncount = 0\nwindow = \"1m\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("test")
        .arg(component_for(&manifest))
        .arg("--manifest")
        .arg(&bad)
        .arg("--events")
        .arg(case.join("events.ndjson"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("rule.toml: line 4, column 1: trigger.batch.count: 0 is outside 1..=10000"),
        "{stderr}"
    );
}
