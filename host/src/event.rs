//! The event record every part of the engine shares, as stored and as
//! submitted.

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
    /// What happened, e.g. `pull_request.merged`, in the client's words.
    pub kind: String,
    /// When it happened, in milliseconds since the Unix epoch: the
    /// client's own claim, handed to rules as it is.
    pub time: i64,
    /// When the log took it (the engine clock at append, ms): never
    /// decreasing along seq. Trigger state follows this time, so a rule's
    /// fires are a function of the log alone (see ARCHITECTURE.md, "Time
    /// is the log's").
    #[serde(default)]
    pub ingested: i64,
    /// A JSON object, as text.
    pub payload: String,
    /// Rule steps between this event and a client's: 0 for what clients
    /// send, one more than its fire's inputs for a rule's output.
    #[serde(default)]
    pub hops: u32,
}

/// An event as submitted, already validated (see [`crate::log::validate`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// The owning tenant.
    pub tenant: String,
    /// Idempotency key; generated (time-sortable) when absent.
    pub id: Option<String>,
    /// Who sent it.
    pub source: String,
    /// What happened.
    pub kind: String,
    /// When it happened (ms); the ingest time when absent.
    pub time: Option<i64>,
    /// A JSON object, as text.
    pub payload: String,
    /// Rule steps from a client event (0 for what clients send).
    pub hops: u32,
    /// The ingest time to take on a log that follows event times (a
    /// replay of the past: the event's original ingest time); `None`
    /// everywhere else.
    pub ingested: Option<i64>,
}
