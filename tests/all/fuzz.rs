//! The fuzz targets' smoke (`fuzz/`): every target over its corpus, its
//! regressions (inputs a fuzzing run once crashed on) and deterministic
//! mutations of them. The long runs are `scripts/fuzz.sh`, under
//! libFuzzer.

use std::path::{Path, PathBuf};

use sluice_test_components::component_bytes;
use sluice_test_components::components::ECHO;

#[path = "../../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod targets;

/// The inputs kept for `target`: its corpus and its regressions.
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut out = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            if path.is_file() {
                let bytes = std::fs::read(&path).unwrap();
                out.push((path, bytes));
            }
        }
    }
    out.sort();
    assert!(!out.is_empty(), "no corpus for fuzz target {target}");
    out
}

/// `n` mutants of `input`: bytes flipped, inserted, removed, a slice
/// repeated — from a seeded generator, so a failure names its mutant.
fn mutants(input: &[u8], n: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move |below: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % below.max(1) as u64) as usize
    };
    (0..n)
        .map(|_| {
            let mut m = input.to_vec();
            for _ in 0..1 + next(4) {
                let at = next(m.len() + 1);
                match next(5) {
                    0 if !m.is_empty() => {
                        let i = at.min(m.len() - 1);
                        m[i] ^= 1 << next(8);
                    }
                    1 => m.insert(at, next(256) as u8),
                    2 if at < m.len() => {
                        m.remove(at);
                    }
                    3 => {
                        let end = (at + next(16)).min(m.len());
                        let slice = m[at..end].to_vec();
                        m.splice(at..at, slice);
                    }
                    _ => m.insert(at, [b'"', b'{', b'[', b'\n', 0, b'\\', 0xff][next(7)]),
                }
            }
            m
        })
        .collect()
}

fn smoke(target: &str, per_input: usize, run: impl Fn(&[u8])) {
    let mut runs = 0;
    for (path, input) in inputs(target) {
        run(&input);
        for (i, m) in mutants(&input, per_input, runs as u64 + 1)
            .iter()
            .enumerate()
        {
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(m)));
            assert!(
                caught.is_ok(),
                "fuzz target {target}: mutant {i} of {} panicked: {:?}",
                path.display(),
                String::from_utf8_lossy(m)
            );
        }
        runs += 1 + per_input;
    }
    eprintln!("fuzz smoke {target}: {runs} inputs");
}

#[test]
fn fuzz_ingest() {
    smoke("ingest", 200, targets::ingest);
}

#[test]
fn fuzz_manifest() {
    smoke("manifest", 300, targets::manifest);
}

#[test]
fn fuzz_cron() {
    smoke("cron", 300, targets::cron);
}

#[test]
fn fuzz_scenario() {
    let echo = component_bytes(ECHO);
    smoke("scenario", 150, |d| targets::scenario(d, &echo));
}

#[test]
fn fuzz_component() {
    smoke("component", 150, targets::component);
}

#[test]
fn fuzz_deploy() {
    smoke("deploy", 200, targets::deploy);
}

#[test]
fn fuzz_query() {
    smoke("query", 200, targets::query);
}

#[test]
fn fuzz_projection() {
    smoke("projection", 400, targets::projection);
}
