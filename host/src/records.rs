//! The engine's own id space and records: what the engine writes to a
//! tenant's log about its work, and the ids it gives what it writes.
//!
//! This sits below the log (which refuses client events in this space)
//! and below the triggers (which write here), so neither reaches up into
//! the other.

use sha2::{Digest, Sha256};

use crate::event::NewEvent;

/// Source of the engine's own records in the log; rules never see them.
/// Reserved: a client event may not claim it, nor `rule:<name>`.
pub const ENGINE_SOURCE: &str = "sluice";

/// Prefix of the source of a rule's outputs (`rule:<name>`); reserved.
pub const RULE_SOURCE_PREFIX: &str = "rule:";

/// Every id the engine writes — rules' outputs and engine records — starts
/// with this, and no client event may: a client can neither take an
/// output's id before the fire completes (so that the real output would
/// be dropped as a duplicate) nor forge a record.
pub const ENGINE_ID_PREFIX: &str = "sluice:";

/// The source of rule `name`'s outputs.
pub fn rule_source(name: &str) -> String {
    format!("{RULE_SOURCE_PREFIX}{name}")
}

/// `id` in the engine's id space.
pub fn engine_id(id: impl std::fmt::Display) -> String {
    format!("{ENGINE_ID_PREFIX}{id}")
}

/// An engine record for `tenant`'s log: source `sluice`, id `id` in the
/// engine's id space, `time` the engine time it speaks of.
pub fn engine_record(
    tenant: &str,
    id: impl std::fmt::Display,
    kind: &str,
    time: i64,
    payload: &serde_json::Value,
) -> NewEvent {
    NewEvent {
        tenant: tenant.to_owned(),
        id: Some(engine_id(id)),
        source: ENGINE_SOURCE.into(),
        kind: kind.into(),
        time: Some(time),
        payload: payload.to_string(),
        hops: 0,
        ingested: None,
    }
}

/// A deterministic fire id: the same inputs give the same id on every run,
/// retry and replay, whatever the rule's version. Parts are
/// length-prefixed, so no two different part lists collide by
/// concatenation.
pub fn fire_id(rule: &str, parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for part in std::iter::once(rule).chain(parts.iter().copied()) {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    let digest = h.finalize();
    format!("f_{}", hex::encode(&digest[..16]))
}

/// The fire-id part that names a partition (`-` for the global one).
pub fn partition_part(partition: &Option<String>) -> String {
    partition
        .as_deref()
        .map_or_else(|| "-".to_owned(), |p| format!("={p}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fire_ids_are_stable_and_unambiguous() {
        let a = fire_id("digest", &["acme/api", "17"]);
        assert_eq!(a, fire_id("digest", &["acme/api", "17"]));
        assert_ne!(a, fire_id("digest", &["acme/api1", "7"]));
        assert_ne!(a, fire_id("digest2", &["acme/api", "17"]));
        assert_eq!(a.len(), 34);
    }

    #[test]
    fn records_are_in_the_engine_space() {
        let r = engine_record("t", "x.done", "fire.completed", 5, &serde_json::json!({}));
        assert_eq!(r.id.as_deref(), Some("sluice:x.done"));
        assert_eq!((r.source.as_str(), r.time), (ENGINE_SOURCE, Some(5)));
        assert_eq!(rule_source("digest"), "rule:digest");
    }
}
