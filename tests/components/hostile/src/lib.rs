//! A rule that misbehaves on request, for sandbox tests. The event kind
//! picks the misbehaviour, in `filter`/`select` and in `handle-batch`
//! (where the first event's kind decides):
//!
//! - `loop`: spins forever
//! - `bomb`: allocates until memory runs out
//! - `huge`: emits a million events (handler) / returns a huge key (select)
//! - `panic`: panics
//! - `retry` / `fatal`: returns that error (handler)
//! - `flaky`: a retryable error on the first attempt, success after
//! - `handler-<mode>`: `<mode>` in the handler only (`select` keeps it)
//! - `not-json`: emits a payload that is not a JSON object (handler)
//! - `shout`: writes 1 MiB to stdout and stderr, then behaves
//! - `chat`: writes a line to stdout, stderr and the log, then behaves
//! - anything else: behaves (keeps the event, emits one `ok` event)

use sluice_sdk::prelude::*;

struct Hostile;

fn misbehave(kind: &str) {
    match kind {
        "loop" => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "bomb" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            // Big zeroed chunks: the limit is reached in a few growths,
            // well before any deadline, however loaded the machine.
            loop {
                hoard.push(vec![0u8; 16 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "panic" => panic!("hostile rule panicked on purpose"),
        "shout" => {
            let line = "x".repeat(1023);
            for _ in 0..1024 {
                println!("{line}");
                eprintln!("{line}");
            }
        }
        "chat" => {
            println!("hello from stdout");
            eprintln!("hello from stderr");
            log::warn("hello from the log");
        }
        _ => {}
    }
}

impl Rule for Hostile {
    fn filter(event: &Event<'_>) -> bool {
        misbehave(event.kind());
        true
    }

    fn partition_key(event: &Event<'_>) -> Option<String> {
        if event.kind() == "huge" {
            return Some("k".repeat(1 << 20));
        }
        None
    }

    fn handle_batch(batch: &Batch<'_>) -> Result<Vec<Emit>, RuleError> {
        let first = batch.events().first().map_or("", |e| e.kind());
        let kind = first.strip_prefix("handler-").unwrap_or(first);
        misbehave(kind);
        match kind {
            "huge" => Ok((0..1_000_000)
                .map(|i| Emit::raw("spam", format!("{{\"i\":{i}}}")))
                .collect()),
            "retry" => Err(RuleError::retryable("try me again")),
            "flaky" if batch.attempt() < 2 => Err(RuleError::retryable("not yet")),
            "fatal" => Err(RuleError::fatal("never again")),
            "not-json" => Ok(vec![Emit::raw("bad", "[1, 2, 3]")]),
            _ => Ok(vec![Emit::json(
                "ok",
                &json!({ "events": batch.events().len(), "now": sluice_sdk::now() }),
            )?]),
        }
    }
}

export_rule!(Hostile);
