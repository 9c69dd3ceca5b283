//! The engine records the core writes to the tenant's log, each built
//! from typed values in one place: what a plan did (discarded windows,
//! forced leaves, skipped and missed ticks, cancelled fires, events over
//! the partition quota), what a fire's attempt came to, and what a poison
//! event did. Ids are derived from what the record is about, so writing
//! the same record twice (a step retried after a failed commit) stores it
//! once.

use std::collections::BTreeMap;

use serde_json::json;

use super::{Missed, NoteRecord, Plan, RuleCore};
use crate::event::NewEvent;
use crate::records::{engine_id, engine_record, fire_id, partition_part};
use crate::triggers::fires::{FireAttempt, FireRecord, Output};
use crate::triggers::{Kind, Note};

/// The guest's backtrace, stderr and log lines of a failed attempt, in
/// its record.
fn failure_details(attempt: &FireAttempt, payload: &mut serde_json::Value) {
    if let Ok(Err(e)) = &attempt.result {
        if let Some(bt) = &e.backtrace {
            payload["backtrace"] = json!(bt);
        }
        if !e.stderr.is_empty() {
            payload["stderr"] = json!(e.stderr);
        }
    }
    if !attempt.logs.is_empty() {
        payload["logs"] = json!(attempt.logs);
    }
}

/// Records of one kind are grouped this many items at most (closing a
/// million windows is not a million events).
const PER_RECORD: usize = 1_000;

impl<K: Kind> RuleCore<K> {
    pub(super) fn record(
        &self,
        id: impl std::fmt::Display,
        kind: &str,
        at: i64,
        payload: serde_json::Value,
    ) -> NewEvent {
        engine_record(&self.spec.tenant, id, kind, at, &payload)
    }

    /// Records of what `plan` did.
    pub(super) fn plan_records(&self, plan: &Plan<K>) -> Vec<NewEvent> {
        let mut records = Vec::new();
        for chunk in plan.discards.chunks(PER_RECORD) {
            let windows: Vec<_> = chunk
                .iter()
                .map(|d| json!({"fire_id": d.fire_id, "partition": d.partition, "seqs": d.seqs}))
                .collect();
            records.push(self.record(
                format!("{}.discarded", chunk[0].fire_id),
                "windows.discarded",
                chunk[0].at,
                json!({"rule": self.spec.name, "windows": windows}),
            ));
        }
        self.note_records(&plan.notes, &mut records);
        if let Some(m) = &plan.missed {
            records.push(self.missed_record(m));
        }
        for c in &plan.cancelled {
            records.push(self.record(
                format!("{}.cancelled", c.fire_id),
                "fire.cancelled",
                c.at,
                json!({"rule": self.spec.name, "fire_id": c.fire_id, "by": c.by,
                    "partition": c.partition}),
            ));
        }
        records
    }

    fn missed_record(&self, m: &Missed) -> NewEvent {
        let id = fire_id(&self.spec.name, &["missed", &m.first.to_string()]);
        self.record(
            format!("{id}.missed"),
            "ticks.missed",
            m.at,
            json!({"rule": self.spec.name, "missed": m.ticks, "at_least": m.more,
                "first": m.first, "last": m.last}),
        )
    }

    /// Forced leaves, skipped ticks and events over the quota, grouped by
    /// record kind.
    fn note_records(&self, notes: &[NoteRecord], records: &mut Vec<NewEvent>) {
        let mut by_kind: BTreeMap<&'static str, Vec<&NoteRecord>> = BTreeMap::new();
        for n in notes {
            by_kind.entry(n.note.record_kind()).or_default().push(n);
        }
        for (kind, notes) in by_kind {
            for chunk in notes.chunks(PER_RECORD) {
                let items: Vec<_> = chunk
                    .iter()
                    .map(|n| {
                        let mut item = match &n.note {
                            Note::Left {
                                epoch,
                                member_since,
                                ..
                            } => json!({"epoch": epoch, "member_since": member_since,
                                "why": "max_dwell"}),
                            Note::TickSkipped { tick, overlap } => {
                                json!({"tick": tick, "overlap": overlap})
                            }
                            Note::OverQuota {
                                seq,
                                max_partitions,
                            } => json!({"seq": seq, "why": "partition quota",
                                "max_partitions": max_partitions}),
                        };
                        item["partition"] = json!(n.partition);
                        item
                    })
                    .collect();
                let first = chunk[0];
                let what = match &first.note {
                    Note::Left {
                        epoch,
                        member_since,
                        ..
                    } => format!("left:{epoch}:{member_since}"),
                    Note::TickSkipped { tick, .. } => format!("skipped:{tick}"),
                    Note::OverQuota { seq, .. } => format!("quota:{seq}"),
                };
                let id = fire_id(&self.spec.name, &[&partition_part(&first.partition), &what]);
                records.push(self.record(
                    format!("{id}.{kind}"),
                    kind,
                    first.at,
                    json!({"rule": self.spec.name, "items": items}),
                ));
            }
        }
    }

    /// The id of a fire's record `suffix`: a re-driven fire's records get
    /// ids of their own round.
    fn fire_record_id(record: &FireRecord, suffix: &str) -> String {
        match record.redriven {
            0 => format!("{}.{suffix}", record.fire_id),
            n => format!("{}.r{n}.{suffix}", record.fire_id),
        }
    }

    /// A fire's outputs, at hop `hops`, with ids derived from the fire id.
    pub(super) fn output_events(
        &self,
        record: &FireRecord,
        outputs: &[Output],
        hops: u32,
        at: i64,
    ) -> Vec<NewEvent> {
        outputs
            .iter()
            .enumerate()
            .map(|(i, e)| NewEvent {
                tenant: self.spec.tenant.clone(),
                id: Some(engine_id(format_args!("{}.{i}", record.fire_id))),
                source: self.own_source.clone(),
                kind: e.kind.clone(),
                time: Some(at),
                payload: e.payload.clone(),
                hops,
                ingested: None,
            })
            .collect()
    }

    pub(super) fn outputs_dropped(
        &self,
        record: &FireRecord,
        outputs: usize,
        hops: u32,
        at: i64,
    ) -> NewEvent {
        self.record(
            Self::fire_record_id(record, "dropped"),
            "outputs.dropped",
            at,
            json!({"rule": record.rule, "fire_id": record.fire_id, "outputs": outputs,
                "hops": hops, "max_hops": self.spec.outputs.max_hops,
                "why": "hop limit: rules feeding each other in a loop?"}),
        )
    }

    /// A fire completed: what it was about (its batch, by seq; its
    /// reason) and the guest's last log lines, so the fire can be shown
    /// once it has left the outbox.
    pub(super) fn fire_completed(&self, attempt: &FireAttempt, outputs: usize) -> NewEvent {
        let record = &attempt.record;
        let mut payload = json!({"rule": record.rule, "fire_id": record.fire_id,
            "partition": record.partition, "attempt": attempt.attempt, "outputs": outputs,
            "reason": record.reason, "seqs": record.seqs, "created_at": record.created_at});
        if !attempt.logs.is_empty() {
            payload["logs"] = json!(attempt.logs);
        }
        self.record(
            Self::fire_record_id(record, "done"),
            "fire.completed",
            attempt.now,
            payload,
        )
    }

    /// A failed attempt that will be retried, with the guest's backtrace
    /// and last output when it has them.
    pub(super) fn fire_failed(
        &self,
        attempt: &FireAttempt,
        error: &str,
        retry_at: i64,
    ) -> NewEvent {
        let record = &attempt.record;
        let mut payload = json!({"rule": record.rule, "fire_id": record.fire_id,
            "attempt": attempt.attempt, "error": error, "retry_at": retry_at});
        failure_details(attempt, &mut payload);
        self.record(
            Self::fire_record_id(record, &format!("a{}", attempt.attempt)),
            "fire.failed",
            attempt.now,
            payload,
        )
    }

    pub(super) fn fire_dead_lettered(&self, attempt: &FireAttempt, error: &str) -> NewEvent {
        let record = &attempt.record;
        let mut payload = json!({"rule": record.rule, "fire_id": record.fire_id,
            "attempts": attempt.attempt, "error": error});
        failure_details(attempt, &mut payload);
        self.record(
            Self::fire_record_id(record, "dead"),
            "fire.dead_lettered",
            attempt.now,
            payload,
        )
    }

    /// A poison event skipped, or the rule suspended for it.
    pub(super) fn poison_record(
        &self,
        seq: u64,
        kind: &str,
        at: i64,
        payload: serde_json::Value,
    ) -> NewEvent {
        self.record(format!("skip:{}:{seq}", self.spec.name), kind, at, payload)
    }
}
