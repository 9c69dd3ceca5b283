//! Shadow deploys: a new version of a rule running beside the live one on
//! the same events, from a copy of the live state, whose fires run and
//! whose records (outputs, engine records) are kept in its own state
//! instead of the log — and the diff of the two (ARCHITECTURE.md, "Shadow
//! deploys").
//!
//! The live rule's side of the diff is read from the log, where its fires
//! already leave everything a comparison needs: `fire.completed` (the
//! fire's partition, reason and batch) and `fire.dead_lettered` records,
//! and its outputs, whose ids derive from the fire id. The shadow's side
//! is the same records, kept under [`KEPT_RECORDS`]. Fire ids derive from
//! the rule's name and the fire's partition and events, not from the
//! version, so one fire has one id on both sides.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::event::{Event, NewEvent};
use crate::log::{EventLog, EventQuery, LogError, StateOp};
use crate::records::{ENGINE_ID_PREFIX, ENGINE_SOURCE, rule_source};
use crate::triggers::core::Writes;
use crate::triggers::state::{self as key, KEPT_RECORDS};

/// A record a shadow kept instead of appending it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kept {
    /// The id it would have had in the log.
    pub id: String,
    /// `sluice` (an engine record) or `rule:<name>` (an output).
    pub source: String,
    /// The record's or output's kind.
    pub kind: String,
    /// Engine time (ms).
    pub time: Option<i64>,
    /// The payload.
    pub payload: Value,
}

impl Kept {
    fn of(e: &NewEvent) -> Self {
        Self {
            id: e.id.clone().unwrap_or_default(),
            source: e.source.clone(),
            kind: e.kind.clone(),
            time: e.time,
            payload: serde_json::from_str(&e.payload).unwrap_or(Value::Null),
        }
    }

    fn from_event(e: &Event) -> Self {
        Self {
            id: e.id.clone(),
            source: e.source.clone(),
            kind: e.kind.clone(),
            time: Some(e.time),
            payload: serde_json::from_str(&e.payload).unwrap_or(Value::Null),
        }
    }
}

/// A shadow's writes: its records become rows of its namespace `ns`
/// (`o/<id>`), committed in the same transaction as the state they go
/// with, so a crash keeps both or neither; nothing is appended.
pub fn keep_aside(ns: &str, writes: Writes) -> Writes {
    let mut ops = writes.ops;
    for r in &writes.records {
        let kept = Kept::of(r);
        ops.push(StateOp::Put {
            ns: ns.to_owned(),
            key: format!("{KEPT_RECORDS}{}", kept.id),
            value: serde_json::to_vec(&kept).expect("serialisable"),
        });
    }
    Writes {
        records: Vec::new(),
        ops,
    }
}

/// The ops that copy the state of `from` into `to` (cleared first),
/// leaving out a shadow's kept records: a shadow starting from the live
/// state, or a promotion taking the shadow's.
pub fn copy_state(log: &EventLog, from: &str, to: &str) -> Result<Vec<StateOp>, LogError> {
    let mut ops = vec![StateOp::Clear { ns: to.to_owned() }];
    for (k, value) in log.state_scan(from)? {
        if k.starts_with(KEPT_RECORDS) {
            continue;
        }
        ops.push(StateOp::Put {
            ns: to.to_owned(),
            key: k,
            value,
        });
    }
    Ok(ops)
}

/// One fire as one side settled it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FireSeen {
    /// Its partition (`null`: the global one).
    pub partition: Option<String>,
    /// Why it fired (as `fire.completed` says).
    #[schema(value_type = Object)]
    pub reason: Value,
    /// The seqs of its batch.
    pub seqs: Vec<u64>,
    /// `completed` or `dead_lettered`.
    pub outcome: String,
    /// Its outputs, in order: kind and payload.
    #[schema(value_type = Vec<Object>)]
    pub outputs: Vec<Value>,
}

/// What one side did since the shadow started.
#[derive(Debug, Default)]
pub struct Side {
    /// Settled fires by id.
    pub fires: BTreeMap<String, FireSeen>,
    /// Fires still pending (or running), by id.
    pub pending: BTreeSet<String>,
    /// The last seq the side has processed.
    pub cursor: u64,
    /// Dead letters kept in the side's state: the partition, reason and
    /// batch of a dead-lettered fire (its record has only the error).
    pub dead: BTreeMap<String, FireSeen>,
}

impl Side {
    /// Fold records (the log's, or a shadow's kept ones) of rule `rule`
    /// into the side. Records of other rules are passed over.
    pub fn add(&mut self, rule: &str, records: impl IntoIterator<Item = Kept>) {
        let own = rule_source(rule);
        let mut outputs: BTreeMap<String, Vec<(u64, Value)>> = BTreeMap::new();
        for r in records {
            if r.source == own {
                // `sluice:<fire id>.<n>`
                let Some((fire, n)) =
                    r.id.strip_prefix(ENGINE_ID_PREFIX)
                        .and_then(|id| id.rsplit_once('.'))
                else {
                    continue;
                };
                let n = n.parse().unwrap_or(u64::MAX);
                outputs
                    .entry(fire.to_owned())
                    .or_default()
                    .push((n, serde_json::json!({"kind": r.kind, "payload": r.payload})));
                continue;
            }
            if r.source != ENGINE_SOURCE || r.payload["rule"] != rule {
                continue;
            }
            let Some(fire) = r.payload["fire_id"].as_str() else {
                continue;
            };
            let outcome = match r.kind.as_str() {
                "fire.completed" => "completed",
                "fire.dead_lettered" => "dead_lettered",
                _ => continue,
            };
            let seen = self.fires.entry(fire.to_owned()).or_insert(FireSeen {
                partition: None,
                reason: Value::Null,
                seqs: Vec::new(),
                outcome: outcome.into(),
                outputs: Vec::new(),
            });
            seen.outcome = outcome.into();
            if outcome == "completed" {
                seen.partition = r.payload["partition"].as_str().map(str::to_owned);
                seen.reason = r.payload["reason"].clone();
                seen.seqs = r.payload["seqs"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_u64).collect())
                    .unwrap_or_default();
            }
        }
        for (fire, mut outs) in outputs {
            outs.sort_by_key(|(n, _)| *n);
            if let Some(seen) = self.fires.get_mut(&fire) {
                seen.outputs = outs.into_iter().map(|(_, v)| v).collect();
            }
        }
        for (id, seen) in &mut self.fires {
            if seen.outcome == "dead_lettered"
                && seen.seqs.is_empty()
                && let Some(d) = self.dead.get(id)
            {
                seen.partition = d.partition.clone();
                seen.reason = d.reason.clone();
                seen.seqs = d.seqs.clone();
            }
        }
    }

    /// The side's cursor and pending fires, from its state namespace.
    pub fn read_state(&mut self, log: &EventLog, ns: &str) -> Result<(), LogError> {
        self.cursor = log
            .state_get(ns, key::CURSOR)?
            .and_then(|v| String::from_utf8_lossy(&v).parse().ok())
            .unwrap_or(0);
        for (_, value) in log.state_scan_prefix(ns, key::FIRES)? {
            if let Ok(f) = serde_json::from_slice::<crate::triggers::fires::FireRecord>(&value) {
                self.pending.insert(f.fire_id);
            }
        }
        for (_, value) in log.state_scan_prefix(ns, key::DEAD)? {
            if let Ok(f) = serde_json::from_slice::<crate::triggers::fires::FireRecord>(&value) {
                let seen = FireSeen {
                    partition: f.partition,
                    reason: serde_json::to_value(&f.reason).unwrap_or(Value::Null),
                    seqs: f.seqs,
                    outcome: "dead_lettered".into(),
                    outputs: Vec::new(),
                };
                self.dead.insert(f.fire_id, seen);
            }
        }
        Ok(())
    }
}

/// How a fire differs between the live rule and its shadow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Difference {
    /// The fire.
    pub fire_id: String,
    /// `only_live` (the shadow passed the fire's events without firing
    /// it), `only_shadow`, `batch` (both fired, with other events or in
    /// another partition) or `outputs` (the same batch, other outputs,
    /// or one side dead-lettered it).
    pub what: String,
    /// The live rule's fire, if it has one.
    pub live: Option<FireSeen>,
    /// The shadow's fire, if it has one.
    pub shadow: Option<FireSeen>,
}

/// The diff of a live rule and its shadow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ShadowDiff {
    /// The rule.
    pub rule: String,
    /// The live version.
    pub live_version: u32,
    /// The shadow's version.
    pub shadow_version: u32,
    /// The diff covers what happened after this seq (the shadow's start).
    pub from_seq: u64,
    /// Seqs processed by the live rule and by the shadow.
    pub live_cursor: u64,
    /// (See `live_cursor`.)
    pub shadow_cursor: u64,
    /// Fires settled by the live rule, by the shadow, since the start.
    pub live_fires: usize,
    /// (See `live_fires`.)
    pub shadow_fires: usize,
    /// Fires both settled alike.
    pub same: usize,
    /// Fires not compared yet: pending on a side, or beyond what the
    /// other side has read.
    pub pending: usize,
    /// Both sides are at the same cursor with no fire pending: every
    /// fire so far is compared.
    pub settled: bool,
    /// How many differences there are.
    pub differences: usize,
    /// The first of them (at most the request's `limit`), by fire id.
    pub shown: Vec<Difference>,
}

/// What [`compare`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Compared {
    /// Fires both sides settled alike.
    pub same: usize,
    /// Fires not compared yet.
    pub pending: usize,
    /// Every difference, by fire id.
    pub differences: Vec<Difference>,
}

/// Compare the two sides: a fire both settled is the same or differs; a
/// fire one side settled and the other lacks differs once the other has
/// read past its events with nothing pending for it, and is pending
/// until then.
pub fn compare(live: &Side, shadow: &Side) -> Compared {
    let mut out = Compared::default();
    let ids: BTreeSet<&String> = live.fires.keys().chain(shadow.fires.keys()).collect();
    for id in ids {
        let (l, s) = (live.fires.get(id), shadow.fires.get(id));
        let what = match (l, s) {
            (Some(l), Some(s)) => {
                if l.partition != s.partition || l.seqs != s.seqs {
                    "batch"
                } else if l.outputs != s.outputs || l.outcome != s.outcome {
                    "outputs"
                } else {
                    out.same += 1;
                    continue;
                }
            }
            (Some(f), None) | (None, Some(f)) => {
                let other = if l.is_some() { shadow } else { live };
                let last = f.seqs.iter().copied().max().unwrap_or(0);
                if other.pending.contains(id) || other.cursor < last {
                    out.pending += 1;
                    continue;
                }
                if l.is_some() {
                    "only_live"
                } else {
                    "only_shadow"
                }
            }
            (None, None) => unreachable!("an id of one side"),
        };
        out.differences.push(Difference {
            fire_id: id.clone(),
            what: what.into(),
            live: l.cloned(),
            shadow: s.cloned(),
        });
    }
    // Fires pending on a side that neither has settled.
    out.pending += live
        .pending
        .iter()
        .chain(&shadow.pending)
        .filter(|id| !live.fires.contains_key(*id) && !shadow.fires.contains_key(*id))
        .collect::<BTreeSet<_>>()
        .len();
    out
}

/// The live side of rule `rule` of `tenant`: its records in the log after
/// `from_seq`, read page by page (outputs by their source; engine
/// records by kind).
pub fn live_side(
    log: &EventLog,
    tenant: &str,
    rule: &str,
    from_seq: u64,
) -> Result<Side, LogError> {
    let mut side = Side::default();
    side.read_state(log, &key::namespace(tenant, rule))?;
    let mut records = Vec::new();
    for (source, kind) in [
        (rule_source(rule), None),
        (ENGINE_SOURCE.to_owned(), Some("fire.completed")),
        (ENGINE_SOURCE.to_owned(), Some("fire.dead_lettered")),
    ] {
        let mut after = from_seq;
        loop {
            let page = log.query(&EventQuery {
                after_seq: Some(after),
                source: Some(source.clone()),
                kind: kind.map(str::to_owned),
                ..EventQuery::tenant(tenant, PAGE)
            })?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            let full = page.len() == PAGE;
            records.extend(page.iter().map(Kept::from_event));
            if !full {
                break;
            }
        }
    }
    side.add(rule, records);
    Ok(side)
}

/// The shadow's side: its kept records and its state.
pub fn shadow_side(log: &EventLog, tenant: &str, rule: &str) -> Result<Side, LogError> {
    let ns = key::shadow_namespace(tenant, rule);
    let mut side = Side::default();
    side.read_state(log, &ns)?;
    let kept = log
        .state_scan_prefix(&ns, KEPT_RECORDS)?
        .into_iter()
        .filter_map(|(_, v)| serde_json::from_slice::<Kept>(&v).ok());
    side.add(rule, kept);
    Ok(side)
}

/// Records read per query.
const PAGE: usize = 10_000;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn completed(fire: &str, partition: &str, seqs: &[u64]) -> Kept {
        Kept {
            id: format!("sluice:{fire}.done"),
            source: ENGINE_SOURCE.into(),
            kind: "fire.completed".into(),
            time: Some(0),
            payload: json!({"rule": "r", "fire_id": fire, "partition": partition,
                "reason": "count_reached", "seqs": seqs}),
        }
    }

    fn output(fire: &str, n: usize, payload: Value) -> Kept {
        Kept {
            id: format!("sluice:{fire}.{n}"),
            source: "rule:r".into(),
            kind: "out".into(),
            time: Some(0),
            payload,
        }
    }

    #[test]
    fn fires_compare_by_batch_then_outputs() {
        let mut live = Side {
            cursor: 10,
            ..Side::default()
        };
        let mut shadow = Side {
            cursor: 10,
            ..Side::default()
        };
        live.add(
            "r",
            [
                completed("f1", "a", &[1, 2]),
                output("f1", 0, json!({"n": 1})),
                completed("f2", "b", &[3, 4]),
                output("f2", 0, json!({"n": 2})),
                completed("f3", "c", &[5]),
                completed("f5", "e", &[11]),
                // Another rule's record is no part of it.
                Kept {
                    payload: json!({"rule": "other", "fire_id": "f9", "seqs": [1]}),
                    ..completed("f9", "z", &[1])
                },
            ],
        );
        shadow.add(
            "r",
            [
                output("f1", 0, json!({"n": 1})),
                completed("f1", "a", &[1, 2]),
                completed("f2", "b", &[3, 4]),
                output("f2", 0, json!({"n": 3})),
                completed("f4", "d", &[6, 7]),
            ],
        );
        let c = compare(&live, &shadow);
        let got: Vec<(&str, &str)> = c
            .differences
            .iter()
            .map(|d| (d.fire_id.as_str(), d.what.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("f2", "outputs"),
                ("f3", "only_live"),
                ("f4", "only_shadow")
            ]
        );
        // f1 alike; f5's event is beyond the shadow's cursor.
        assert_eq!((c.same, c.pending), (1, 1));
        assert!(!live.fires.contains_key("f9"));
        // Pending on the shadow: not a difference.
        shadow.pending.insert("f3".into());
        let c = compare(&live, &shadow);
        assert_eq!((c.differences.len(), c.pending), (2, 2));
    }
}
