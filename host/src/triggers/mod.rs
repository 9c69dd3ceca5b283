//! Trigger semantics: what turns selected events (and the passing of
//! time) into fires. The state machines are pure, free of storage and
//! threads, so that every rule of DESIGN §3 is tested directly; the
//! dispatcher makes them durable.
//!
//! - [`batch`]: aggregation windows (count, window, expire, debounce).
//! - [`dispatch`]: a batch rule's dispatcher: cursor → select → windows →
//!   fire outbox, one transaction per step.
//! - [`timers`]: the deadline index every trigger kind shares.

pub mod batch;
pub mod dispatch;
pub mod timers;

use sha2::{Digest, Sha256};

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
}
