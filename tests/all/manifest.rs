//! `rule.toml` snapshot tests: every file under `tests/manifests/valid`
//! parses to its `.json` twin; every file under `tests/manifests/invalid`
//! fails with the message in its `.err` twin. `SLUICE_BLESS=1` rewrites the
//! twins from the current output (review the diff before committing).

use std::path::{Path, PathBuf};

use sluice::manifest::Manifest;

fn cases(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/manifests")
        .join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no cases in {}", dir.display());
    files
}

fn compare(case: &Path, twin_ext: &str, actual: &str) -> Option<String> {
    let twin = case.with_extension(twin_ext);
    if std::env::var_os("SLUICE_BLESS").is_some() {
        std::fs::write(&twin, actual).unwrap();
        return None;
    }
    let expected = std::fs::read_to_string(&twin)
        .unwrap_or_else(|_| panic!("{} is missing; run with SLUICE_BLESS=1", twin.display()));
    (expected != actual).then(|| {
        format!(
            "{}:\n--- expected\n{expected}\n--- actual\n{actual}",
            case.display()
        )
    })
}

#[test]
fn valid_manifests_parse_to_their_snapshots() {
    let mut failures = Vec::new();
    for case in cases("valid") {
        let text = std::fs::read_to_string(&case).unwrap();
        let manifest = Manifest::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", case.display()));
        let json = serde_json::to_string_pretty(&manifest).unwrap() + "\n";
        failures.extend(compare(&case, "json", &json));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn invalid_manifests_fail_with_their_snapshots() {
    let mut failures = Vec::new();
    for case in cases("invalid") {
        let text = std::fs::read_to_string(&case).unwrap();
        let err = match Manifest::parse(&text) {
            Ok(m) => panic!("{} parsed: {m:?}", case.display()),
            Err(e) => e.to_string() + "\n",
        };
        failures.extend(compare(&case, "err", &err));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn example_manifests_parse() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let manifest = entry.unwrap().path().join("rule.toml");
        if manifest.exists() {
            let text = std::fs::read_to_string(&manifest).unwrap();
            Manifest::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
            seen += 1;
        }
    }
    assert_eq!(seen, 3);
}
