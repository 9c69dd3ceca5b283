//! Loading: validation against the world and the compile cache.

use std::fs;

use sluice::runtime::{CacheOutcome, Limits, LoadError, RuleLabel, Runtime, RuntimeConfig};
use sluice_test_components::component_bytes;
use sluice_test_components::components::{KIND_FILTER, NOT_A_RULE, WRONG_TYPES};

use crate::{Harness, event};

fn label() -> RuleLabel {
    RuleLabel::new("test", "r")
}

#[test]
fn component_for_another_world_is_rejected_naming_missing_exports() {
    let h = Harness::new();
    let err = h
        .runtime
        .load(label(), &component_bytes(NOT_A_RULE), Limits::default())
        .unwrap_err();
    match &err {
        LoadError::MissingExports { missing, found } => {
            assert_eq!(
                missing,
                &["partition-key", "membership", "select", "handle-batch"]
            );
            assert!(found.contains(&"hello".to_string()));
        }
        other => panic!("expected missing exports, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("missing export(s) `partition-key`, `membership`, `select`, `handle-batch`"),
        "{text}"
    );
}

#[test]
fn exports_with_wrong_signatures_are_rejected() {
    let h = Harness::new();
    let err = h
        .runtime
        .load(label(), &component_bytes(WRONG_TYPES), Limits::default())
        .unwrap_err();
    assert!(matches!(err, LoadError::WrongExportType(_)), "{err}");
    assert!(
        err.to_string().contains("does not implement world"),
        "{err}"
    );
}

#[test]
fn garbage_is_rejected() {
    let h = Harness::new();
    for (bytes, says) in [
        (&b"name = \"digest\"\nversion = 1\n"[..], "the file is text"),
        (b"\0asm\x01\0\0\0", "a core Wasm module, not a component"),
        (b"", "the file is empty"),
        (
            b"\x7fELF\x02\x01\x01\x00\xff\xfe",
            "does not start with the Wasm magic bytes",
        ),
        (b"\0asm\x0d\0\x01\0\xff\xff", "not a valid Wasm component"),
    ] {
        let err = h
            .runtime
            .load(label(), bytes, Limits::default())
            .unwrap_err();
        assert!(matches!(err, LoadError::Compile(_)), "{err}");
        let text = err.to_string();
        assert!(text.starts_with("not a valid Wasm component"), "{text}");
        assert!(text.contains(says), "{text}");
        assert!(!text.contains('\n'), "one line: {text}");
    }
}

#[test]
fn memory_limit_above_the_engine_maximum_is_rejected() {
    let h = Harness::new();
    let limits = Limits {
        memory_bytes: 8 << 30,
        ..Limits::default()
    };
    let err = h
        .runtime
        .load(label(), &component_bytes(KIND_FILTER), limits)
        .unwrap_err();
    assert!(
        err.to_string().contains("memory_bytes = 8589934592"),
        "{err}"
    );
}

#[test]
fn compile_cache_is_hit_on_the_second_load_and_across_runtimes() {
    let dir = tempfile::tempdir().unwrap();
    let config = || RuntimeConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        ..RuntimeConfig::default()
    };
    let bytes = component_bytes(KIND_FILTER);
    let rt = Runtime::new(config()).unwrap();
    let first = rt.load(label(), &bytes, Limits::default()).unwrap();
    assert_eq!(first.cache_outcome(), &CacheOutcome::Miss);
    let second = rt.load(label(), &bytes, Limits::default()).unwrap();
    assert_eq!(second.cache_outcome(), &CacheOutcome::Hit);
    drop(rt);
    let rt = Runtime::new(config()).unwrap();
    let third = rt.load(label(), &bytes, Limits::default()).unwrap();
    assert_eq!(third.cache_outcome(), &CacheOutcome::Hit);
    // And the cached artifact runs.
    let v = third
        .instance()
        .select(&[event(1, "keep", serde_json::json!({}))])
        .unwrap();
    assert_eq!(v.len(), 1);

    // A different engine configuration never reads these entries.
    let other = Runtime::new(RuntimeConfig {
        fuel: false,
        ..config()
    })
    .unwrap();
    let fourth = other.load(label(), &bytes, Limits::default()).unwrap();
    assert_eq!(fourth.cache_outcome(), &CacheOutcome::Miss);
}

#[test]
fn corrupted_cache_entries_are_detected_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::new(RuntimeConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        ..RuntimeConfig::default()
    })
    .unwrap();
    let bytes = component_bytes(KIND_FILTER);
    let rule = rt.load(label(), &bytes, Limits::default()).unwrap();
    let entry = rt.cache().unwrap().entry_path(rule.digest());
    let good = fs::read(&entry).unwrap();

    let check = |damage: &dyn Fn(&mut Vec<u8>), expect: &str| {
        let mut bad = good.clone();
        damage(&mut bad);
        fs::write(&entry, &bad).unwrap();
        let reloaded = rt.load(label(), &bytes, Limits::default()).unwrap();
        match reloaded.cache_outcome() {
            CacheOutcome::Rebuilt(why) => assert!(why.contains(expect), "{why}"),
            other => panic!("expected a rebuild ({expect}), got {other:?}"),
        }
        // The rebuilt rule works and the entry was rewritten good.
        let v = reloaded
            .instance()
            .select(&[event(1, "keep", serde_json::json!({}))])
            .unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(fs::read(&entry).unwrap(), good);
    };
    // A flipped bit in the machine code.
    check(&|b| *b.last_mut().unwrap() ^= 0x40, "checksum mismatch");
    // A truncated write.
    check(&|b| b.truncate(b.len() / 2), "checksum mismatch");
    // Not an entry at all.
    check(&|b| b[0] = b'X', "bad header");
    // Checksum made to match garbage: wasmtime's own check refuses it.
    check(
        &|b| {
            use sha2::Digest as _;
            let garbage = vec![0xAB; 4096];
            b.truncate(8);
            b.extend_from_slice(&sha2::Sha256::digest(&garbage));
            b.extend_from_slice(&garbage);
        },
        "rejected by wasmtime",
    );
}
