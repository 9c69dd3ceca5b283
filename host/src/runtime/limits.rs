//! Per-call limits and the memory limiter that enforces the memory cap.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What one call into a rule may consume. Every call gets the full budget
/// afresh; the limits of one rule never affect another's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Fuel per call (about one unit per Wasm instruction).
    pub fuel: u64,
    /// Wall-clock time per call.
    #[serde(with = "millis")]
    pub deadline: Duration,
    /// Cap on the guest's linear memory, in bytes.
    pub memory_bytes: u64,
    /// Most events one handler call may emit.
    pub max_emits: usize,
    /// Most bytes (kinds plus payloads) one handler call may emit.
    pub max_emit_bytes: usize,
    /// Most events one handler call receives.
    pub max_batch: usize,
    /// Longest partition key a rule may return, in bytes.
    pub max_partition_key_bytes: usize,
    /// Most bytes of guest stdout, stderr and `log` kept per call; the rest
    /// is counted and dropped.
    pub max_log_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel: 2_000_000_000,
            deadline: Duration::from_secs(2),
            memory_bytes: 64 << 20,
            max_emits: 1_000,
            max_emit_bytes: 4 << 20,
            max_batch: 10_000,
            max_partition_key_bytes: 1_024,
            max_log_bytes: 64 << 10,
        }
    }
}

/// Serialises a [`Duration`] as whole milliseconds.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// Enforces the linear-memory cap of one store, and remembers whether it
/// had to refuse growth so that the trap that follows (an allocator abort,
/// usually) is reported as what it is: memory exhaustion.
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    pub(crate) max_bytes: u64,
    pub(crate) refused: Option<u64>,
}

impl MemoryLimiter {
    pub(crate) fn new(max_bytes: u64) -> Self {
        Self {
            max_bytes,
            refused: None,
        }
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let desired = desired as u64;
        if desired > self.max_bytes {
            self.refused = Some(desired);
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; a million is far beyond any
        // honest rule and keeps a hostile one from exhausting host memory.
        Ok(desired <= 1_000_000)
    }
}
