//! Hostile guests are stopped, fail only their own call, and the engine
//! goes on serving healthy rules.

use std::time::{Duration, Instant};

use serde_json::json;
use sluice::runtime::Verdict;
use sluice::runtime::bindings::wit::{self, Reason, RuleError};
use sluice::runtime::{CallErrorKind, Limits, RuleInstance};
use sluice_test_components::components::{HOSTILE, KIND_FILTER};

use crate::{Harness, event};

fn batch(kind: &str) -> wit::Batch {
    wit::Batch {
        fire_id: format!("fire-{kind}"),
        rule: "hostile".into(),
        partition: None,
        reason: Reason::CountReached,
        attempt: 1,
        events: sluice::runtime::event_pack(&[event(1, kind, json!({}))]).unwrap(),
    }
}

/// A healthy call on the same instance handle and on another rule.
fn assert_healthy(hostile: &mut RuleInstance, other: &mut RuleInstance) {
    let ok = hostile
        .select(&[event(1, "fine", json!({}))])
        .expect("hostile rule behaves after a failure");
    assert!(matches!(ok[0], Verdict::Keep(_)));
    let emits = hostile
        .handle_batch(&batch("fine"))
        .expect("handler behaves");
    assert_eq!(emits[0].kind, "ok");
    let verdicts = other
        .select(&[event(1, "keep", json!({})), event(2, "drop", json!({}))])
        .expect("other rule unaffected");
    assert!(matches!(verdicts[0], Verdict::Keep(_)));
    assert_eq!(verdicts[1], Verdict::Skip);
}

#[test]
fn infinite_loop_is_stopped_by_fuel() {
    let h = Harness::new();
    let limits = Limits {
        fuel: 10_000_000,
        deadline: Duration::from_secs(60),
        ..Limits::default()
    };
    let mut hostile = h.load(HOSTILE, limits).instance();
    let mut other = h.load(KIND_FILTER, Limits::default()).instance();
    let err = hostile.select(&[event(1, "loop", json!({}))]).unwrap_err();
    assert_eq!(err.kind, CallErrorKind::OutOfFuel { fuel: 10_000_000 });
    assert_eq!(err.export, "select");
    assert!(!hostile.is_live(), "a trapped instance is discarded");
    let bt = err.backtrace.as_deref().expect("a guest backtrace");
    assert!(bt.contains("hostile"), "backtrace names guest frames: {bt}");
    assert_healthy(&mut hostile, &mut other);

    let err = hostile.handle_batch(&batch("loop")).unwrap_err();
    assert!(matches!(err.kind, CallErrorKind::OutOfFuel { .. }));
    assert_healthy(&mut hostile, &mut other);
}

#[test]
fn infinite_loop_is_stopped_by_deadline() {
    // Fuel off: only the epoch deadline can stop the loop.
    let h = Harness::with(|c| c.fuel = false);
    let limits = Limits {
        deadline: Duration::from_millis(50),
        ..Limits::default()
    };
    let mut hostile = h.load(HOSTILE, limits).instance();
    let mut other = h.load(KIND_FILTER, Limits::default()).instance();
    let started = Instant::now();
    let err = hostile.filter(&event(1, "loop", json!({}))).unwrap_err();
    assert_eq!(
        err.kind,
        CallErrorKind::Timeout {
            deadline: Duration::from_millis(50)
        }
    );
    // Sanity bound only (the deadline is 50 ms); not a performance check.
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_healthy(&mut hostile, &mut other);
}

#[test]
fn memory_bomb_is_stopped_by_the_cap() {
    let h = Harness::new();
    let limits = Limits {
        memory_bytes: 16 << 20,
        ..Limits::default()
    };
    let mut hostile = h.load(HOSTILE, limits).instance();
    let mut other = h.load(KIND_FILTER, Limits::default()).instance();
    for err in [
        hostile.select(&[event(1, "bomb", json!({}))]).unwrap_err(),
        hostile.handle_batch(&batch("bomb")).unwrap_err(),
    ] {
        match &err.kind {
            &CallErrorKind::MemoryLimit { limit, requested } => {
                assert_eq!(limit, 16 << 20);
                assert!(requested > limit);
            }
            other => panic!("expected a memory limit error, got {other:?}: {err}"),
        }
        assert!(err.to_string().contains("memory limit of 16777216 bytes"));
    }
    assert_healthy(&mut hostile, &mut other);
}

#[test]
fn huge_output_is_refused() {
    let h = Harness::new();
    let limits = Limits {
        memory_bytes: 256 << 20,
        ..Limits::default()
    };
    let mut hostile = h.load(HOSTILE, limits).instance();
    let mut other = h.load(KIND_FILTER, Limits::default()).instance();

    let err = hostile.handle_batch(&batch("huge")).unwrap_err();
    match &err.kind {
        CallErrorKind::Output { problem } => {
            assert!(
                problem.contains("emitted 1000000 events; max_emits = 1000"),
                "{problem}"
            )
        }
        other => panic!("expected an output error, got {other:?}"),
    }
    let err = hostile.select(&[event(1, "huge", json!({}))]).unwrap_err();
    match &err.kind {
        CallErrorKind::Output { problem } => {
            assert!(problem.contains("partition key of event 0"), "{problem}")
        }
        other => panic!("expected an output error, got {other:?}"),
    }
    assert_healthy(&mut hostile, &mut other);
}

#[test]
fn huge_output_within_memory_cap_fails_on_memory() {
    // With a small memory cap the million emits never leave the guest.
    let h = Harness::new();
    let limits = Limits {
        memory_bytes: 8 << 20,
        ..Limits::default()
    };
    let mut hostile = h.load(HOSTILE, limits).instance();
    let err = hostile.handle_batch(&batch("huge")).unwrap_err();
    assert!(
        matches!(err.kind, CallErrorKind::MemoryLimit { .. }),
        "{err}"
    );
}

#[test]
fn panic_is_reported_with_message_and_backtrace() {
    let h = Harness::new();
    let mut hostile = h.load(HOSTILE, Limits::default()).instance();
    let mut other = h.load(KIND_FILTER, Limits::default()).instance();
    let err = hostile.handle_batch(&batch("panic")).unwrap_err();
    assert!(matches!(err.kind, CallErrorKind::Trap { .. }), "{err}");
    assert!(
        err.stderr
            .iter()
            .any(|l| l.contains("hostile rule panicked on purpose")),
        "stderr tail carries the panic message: {:?}",
        err.stderr
    );
    let text = err.to_string();
    assert!(
        text.starts_with("rule test/hostile: handle-batch: trapped:"),
        "{text}"
    );
    assert!(err.backtrace.is_some());
    assert_healthy(&mut hostile, &mut other);
}

#[test]
fn handler_errors_are_typed() {
    let h = Harness::new();
    let mut hostile = h.load(HOSTILE, Limits::default()).instance();
    let err = hostile.handle_batch(&batch("retry")).unwrap_err();
    assert_eq!(
        err.kind,
        CallErrorKind::Rule(RuleError::Retryable("try me again".into()))
    );
    assert!(!err.is_fatal());
    let err = hostile.handle_batch(&batch("fatal")).unwrap_err();
    assert_eq!(
        err.kind,
        CallErrorKind::Rule(RuleError::Fatal("never again".into()))
    );
    assert!(err.is_fatal());
    let err = hostile.handle_batch(&batch("not-json")).unwrap_err();
    assert_eq!(
        err.kind,
        CallErrorKind::Output {
            problem: "emit 0: payload is not a JSON object".into()
        }
    );
}

#[test]
fn noisy_output_is_capped_not_fatal() {
    let h = Harness::new();
    let limits = Limits {
        max_log_bytes: 4 << 10,
        ..Limits::default()
    };
    let mut hostile = h.load(HOSTILE, limits).instance();
    // 2 MiB of stdout/stderr: the call still succeeds.
    let emits = hostile.handle_batch(&batch("shout")).unwrap();
    assert_eq!(emits[0].kind, "ok");
}

#[test]
fn oversized_batch_is_refused_before_the_call() {
    let h = Harness::new();
    let limits = Limits {
        max_batch: 1,
        ..Limits::default()
    };
    let mut hostile = h.load(HOSTILE, limits).instance();
    let mut b = batch("fine");
    b.events =
        sluice::runtime::event_pack(&[event(1, "fine", json!({})), event(2, "fine", json!({}))])
            .unwrap();
    let err = hostile.handle_batch(&b).unwrap_err();
    assert!(matches!(err.kind, CallErrorKind::Input { .. }), "{err}");
}

#[test]
fn guests_read_the_engine_clock() {
    let h = Harness::new();
    h.clock.set(1_800_000_000_000);
    let mut hostile = h.load(HOSTILE, Limits::default()).instance();
    let emits = hostile.handle_batch(&batch("fine")).unwrap();
    let payload: serde_json::Value = serde_json::from_str(&emits[0].payload).unwrap();
    assert_eq!(payload["now"], 1_800_000_000_000_i64);
}

#[test]
fn a_spinning_rule_does_not_block_another() {
    let h = Harness::new();
    let limits = Limits {
        deadline: Duration::from_secs(3),
        fuel: u64::MAX / 2,
        ..Limits::default()
    };
    let hostile = h.load(HOSTILE, limits);
    let spinner = std::thread::spawn(move || {
        hostile
            .instance()
            .filter(&event(1, "loop", json!({})))
            .unwrap_err()
    });
    let mut other = h.load(KIND_FILTER, Limits::default()).instance();
    for i in 0..200 {
        let v = other.select(&[event(i, "keep", json!({}))]).unwrap();
        assert!(matches!(v[0], Verdict::Keep(_)));
    }
    assert!(
        !spinner.is_finished(),
        "the healthy rule finished while the loop still ran"
    );
    let err = spinner.join().unwrap();
    assert!(matches!(err.kind, CallErrorKind::Timeout { .. }));
}

#[test]
fn select_splits_large_inputs() {
    let h = Harness::new();
    let mut rule = h.load(KIND_FILTER, Limits::default()).instance();
    let events: Vec<_> = (0..5_000)
        .map(|i| event(i, if i % 3 == 0 { "keep" } else { "drop" }, json!({"i": i})))
        .collect();
    let verdicts = rule.select(&events).unwrap();
    assert_eq!(verdicts.len(), 5_000);
    for (i, v) in verdicts.iter().enumerate() {
        assert_eq!(matches!(v, Verdict::Keep(_)), i % 3 == 0, "event {i}");
    }
}

/// A `tracing` writer that keeps everything in memory.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn guest_output_becomes_log_events_tagged_with_the_rule() {
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let h = Harness::new();
    let mut hostile = h.load(HOSTILE, Limits::default()).instance();
    tracing::subscriber::with_default(subscriber, || {
        hostile.handle_batch(&batch("chat")).unwrap();
    });
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    for expected in [
        r#"sluice::runtime::stdio: hello from stdout tenant=test rule=hostile stream="stdout""#,
        r#"sluice::runtime::stdio: hello from stderr tenant=test rule=hostile stream="stderr""#,
        "WARN sluice::runtime::stdio: hello from the log tenant=test rule=hostile",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}
