//! The typed keys of a rule's durable state.
//!
//! A rule's state lives in namespace `rule:<tenant>/<name>` of the state
//! store. Every key is built and parsed here, and each family has a prefix
//! of its own, so a prefix scan reads one family only: listing dead
//! letters reads dead letters, loading windows reads partition rows.
//!
//! | key | value |
//! | --- | --- |
//! | `cursor` | last processed seq (decimal) |
//! | `kind` | the trigger kind the state is of |
//! | `breaker` | fires dead-lettered in a row |
//! | `suspended` | why the rule is suspended |
//! | `paused` | present while the rule is paused |
//! | `tick` | a schedule's position: last tick handled, ticks skipped, ticks missed |
//! | `up` | since when the rule runs (ms): set at start-up and resume, carried by a swap |
//! | `counters` | the rule's counters as last saved (JSON) |
//! | `f/<order>.<fire id>` | a pending fire (JSON [`super::fires::FireRecord`]), by creation order (16 hex digits) |
//! | `d/<fire id>` | a dead letter (same) |
//! | `k/<fire id>` | the events of a fire's batch, kept with it (JSON) once it was dead-lettered, so that it needs nothing from the log |
//! | `p/-/<sub>` | a row of the global partition's kind state |
//! | `p/<len>:<partition>/<sub>` | a row of a partition's kind state: batch `h` (window header), dwell `m` (membership) or `o` (epoch after a leave), schedule `k` (where the buffer starts in the member log) |
//! | `s/<seq>` | the member log: the events a step added to partitions' buffers, keyed by the step's last seq |
//! | `o/<record id>` | a shadow's only (namespace `shadow:<tenant>/<name>`): a record it kept instead of appending it (JSON [`crate::log::NewEvent`]) |
//!
//! A partition is written with its byte length, so any string (slashes
//! included) round-trips and one partition's prefix never covers
//! another's.
//!
//! The member log keeps a step's additions together, in seq order, so a
//! step writes a few adjacent pages however many partitions it touched;
//! a row is deleted once every buffer has moved past it (a range delete
//! at the front of the log).

/// The rule's cursor.
pub const CURSOR: &str = "cursor";
/// The trigger kind the state belongs to (`batch`, `dwell`, `schedule`).
pub const KIND: &str = "kind";
/// The circuit breaker's count.
pub const BREAKER: &str = "breaker";
/// Why the rule is suspended.
pub const SUSPENDED: &str = "suspended";
/// Present while the rule is paused.
pub const PAUSED: &str = "paused";
/// The rule's counters as last saved (JSON): at each stop, and every
/// half minute while it runs.
pub const COUNTERS: &str = "counters";
/// A schedule's position and tallies: `<last tick> <skipped> <missed>`.
pub const TICK: &str = "tick";
/// Since when the rule runs (ms): deadlines and ticks before it fell due
/// while it was not running.
pub const UP: &str = "up";
/// Prefix of pending fires.
pub const FIRES: &str = "f/";
/// Prefix of dead letters.
pub const DEAD: &str = "d/";
/// Prefix of the batches kept with fires.
pub const KEPT: &str = "k/";
/// Prefix of every partition's rows.
pub const PARTITIONS: &str = "p/";

/// Prefix of the member log.
pub const MEMBERS: &str = "s/";

/// The member-log key of a step whose last added seq is `seq` (keys sort
/// as seqs do).
pub fn members(seq: u64) -> String {
    format!("{MEMBERS}{seq:016x}")
}

/// Encode member-log entries: (seq, partition) each.
pub fn encode_members(entries: &[(u64, &Option<String>)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * 24);
    for (seq, p) in entries {
        out.extend_from_slice(&seq.to_le_bytes());
        match p {
            None => out.extend_from_slice(&u32::MAX.to_le_bytes()),
            Some(p) => {
                out.extend_from_slice(&(p.len() as u32).to_le_bytes());
                out.extend_from_slice(p.as_bytes());
            }
        }
    }
    out
}

/// Decode member-log entries.
pub fn decode_members(mut bytes: &[u8]) -> Result<Vec<(u64, Option<String>)>, String> {
    let mut out = Vec::new();
    let take = |b: &mut &[u8], n: usize| -> Result<Vec<u8>, String> {
        if b.len() < n {
            return Err(format!(
                "member log entry cut short ({} bytes left)",
                b.len()
            ));
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Ok(head.to_vec())
    };
    while !bytes.is_empty() {
        let seq = u64::from_le_bytes(take(&mut bytes, 8)?.try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(take(&mut bytes, 4)?.try_into().expect("4 bytes"));
        let p = if len == u32::MAX {
            None
        } else {
            let raw = take(&mut bytes, len as usize)?;
            Some(String::from_utf8(raw).map_err(|e| format!("member log partition: {e}"))?)
        };
        out.push((seq, p));
    }
    Ok(out)
}

/// The state namespace of a rule.
pub fn namespace(tenant: &str, rule: &str) -> String {
    format!("rule:{tenant}/{rule}")
}

/// The state namespace of a rule's shadow: the same keys as the rule's,
/// and [`KEPT_RECORDS`].
pub fn shadow_namespace(tenant: &str, rule: &str) -> String {
    format!("shadow:{tenant}/{rule}")
}

/// What the engine calls a rule's shadow: `<name>~shadow`.
pub const SHADOW_SUFFIX: &str = "~shadow";

/// Prefix of the records a shadow kept instead of appending them to the
/// log (its outputs and engine records), by record id.
pub const KEPT_RECORDS: &str = "o/";

/// The key of a pending fire (for messages: see [`fire_key`]).
pub fn fire(id: &str) -> String {
    format!("{FIRES}{id}")
}

/// The key a pending fire is stored under: by creation order, so new
/// fires append at the end of the family instead of landing at random
/// places of a large table (fires made before creation orders existed,
/// order 0, keep their id alone).
pub fn fire_key(order: u64, id: &str) -> String {
    match order {
        0 => fire(id),
        n => format!("{FIRES}{n:016x}.{id}"),
    }
}

/// The key of a dead letter.
pub fn dead(id: &str) -> String {
    format!("{DEAD}{id}")
}

/// The key of the batch kept with fire `id`.
pub fn kept(id: &str) -> String {
    format!("{KEPT}{id}")
}

/// The prefix of one partition's rows.
pub fn partition(p: &Option<String>) -> String {
    match p {
        None => format!("{PARTITIONS}-/"),
        Some(p) => format!("{PARTITIONS}{}:{p}/", p.len()),
    }
}

/// Split a partition row's key into the partition and the kind's own key.
pub fn parse_partition(key: &str) -> Option<(Option<String>, &str)> {
    let rest = key.strip_prefix(PARTITIONS)?;
    if let Some(sub) = rest.strip_prefix("-/") {
        return Some((None, sub));
    }
    let (len, rest) = rest.split_once(':')?;
    let len: usize = len.parse().ok()?;
    let p = rest.get(..len)?;
    let sub = rest.get(len..)?.strip_prefix('/')?;
    Some((Some(p.to_owned()), sub))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_keys_round_trip_and_never_overlap() {
        for p in [
            None,
            Some(String::new()),
            Some("acme/api".to_owned()),
            Some("a:b/c".to_owned()),
            Some("é😀".to_owned()),
        ] {
            let key = format!("{}m/00ff", partition(&p));
            assert_eq!(parse_partition(&key), Some((p.clone(), "m/00ff")));
        }
        // "a" is not a prefix-scan hit for "ab".
        let a = partition(&Some("a".into()));
        assert!(!partition(&Some("ab".into())).starts_with(&a));
        assert_eq!(parse_partition("cursor"), None);
    }

    #[test]
    fn member_log_entries_round_trip_and_sort_by_seq() {
        let (a, none) = (Some("acme/é".to_owned()), None);
        let bytes = encode_members(&[(3, &a), (7, &none), (9, &a)]);
        assert_eq!(
            decode_members(&bytes).unwrap(),
            vec![(3, a.clone()), (7, None), (9, a)]
        );
        assert!(decode_members(&bytes[..5]).is_err());
        assert!(members(0xff) < members(0x100));
    }
}
