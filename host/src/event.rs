//! The event record every part of the engine shares.

use serde::{Deserialize, Serialize};

/// One event of a tenant's log.
///
/// `payload` is kept as JSON text (always a JSON object): the engine stores
/// it and hands it to rules without re-encoding it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the log: 1-based, gap-free; 0 before the log assigns it.
    pub seq: u64,
    /// The client's idempotency key, or a generated one.
    pub id: String,
    /// The tenant that owns the event.
    pub tenant: String,
    /// Who sent it, e.g. `github` or `rule:pr-digest`.
    pub source: String,
    /// What happened, e.g. `pull_request.merged`.
    pub kind: String,
    /// When it happened, in milliseconds since the Unix epoch.
    pub time: i64,
    /// A JSON object, as text.
    pub payload: String,
    /// Rule steps between this event and a client's: 0 for what clients
    /// send, one more than its fire's inputs for a rule's output.
    #[serde(default)]
    pub hops: u32,
}
