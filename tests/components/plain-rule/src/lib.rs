//! A rule built straight from the world `rule` of `sluice:rule@0.1.0` as
//! first released (`wit/rule.wit` here is that file, before the world
//! `projected-rule` was added), without the SDK: it must keep loading and
//! running unchanged, and a manifest that declares `[select] fields` for it
//! must be refused with a message that says why.
//!
//! It keeps events of kind `keep`, keys them by kind, and emits one `seen`
//! per batch.

// The generated export shims take a flattened record's fields as arguments.
#![allow(clippy::too_many_arguments)]

// The world's `use` brings its types (`Event`, `EventPack`, …) here.
wit_bindgen::generate!({ world: "rule", path: "wit" });

use sluice::rule::types::Verdict;

struct Plain;

impl Guest for Plain {
    fn filter(event: Event) -> bool {
        event.kind == "keep"
    }

    fn partition_key(event: Event) -> Option<String> {
        Some(event.kind)
    }

    fn membership(_event: Event) -> Membership {
        Membership::Enter
    }

    fn select(events: EventPack) -> Selection {
        let mut verdicts = Vec::new();
        let mut partitions = Vec::new();
        for i in 0..events.seqs.len() {
            // The kind is the third of an event's four texts.
            let kind_start = events.ends[4 * i + 1] as usize;
            let kind_end = events.ends[4 * i + 2] as usize;
            let kind = String::from_utf8_lossy(&events.text[kind_start..kind_end]).into_owned();
            if kind == "keep" {
                verdicts.push(Verdict::Enter);
                partitions.push(Some(kind));
            } else {
                verdicts.push(Verdict::Skip);
            }
        }
        Selection {
            verdicts,
            partitions,
        }
    }

    fn handle_batch(batch: Batch) -> Result<Vec<Emit>, RuleError> {
        Ok(vec![Emit {
            kind: "seen".into(),
            payload: format!("{{\"events\":{}}}", batch.events.seqs.len()),
        }])
    }
}

export!(Plain);
