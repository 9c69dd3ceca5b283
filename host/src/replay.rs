//! Replay over the past: a rule version run over a range of a tenant's
//! log on a virtual clock that follows the events' ingest times, into
//! state of its own ([`crate::offline`]'s run, fed from the log instead of
//! a file). See ARCHITECTURE.md, "Replay".
//!
//! - By default a dry run: the report says which fires the version would
//!   have made over the range and what they would have emitted; nothing
//!   is written.
//! - With `emit`, a backfill: the outputs are appended to the tenant's
//!   log as the rule's outputs, each with an id derived from the replayed
//!   fire (`sluice:backfill.<hash>`), so repeating the same replay writes
//!   nothing twice (while the ids are within the dedupe window).
//!
//! The range is of ingest time, `[from, to)`: the events ingested in it,
//! but the rule's own outputs and engine records (a rule never reads
//! those), in seq order, each keeping its id, its client time and its
//! ingest time; then the clock moves to `to`, so that what fell due
//! before it fires. The version starts empty at `from` — windows the live
//! rule had open then are not carried in.

use std::time::Instant;

use serde_json::{Value, json};
use sha2::Digest;

use crate::event::{Event, NewEvent};
use crate::log::{EventLog, EventQuery, LogError};
use crate::manifest::Manifest;
use crate::records::ENGINE_SOURCE;

/// Events read from the log at a time.
const PAGE: usize = 10_000;

/// The longest range (in seqs) replayed on a log in memory: the run
/// holds the events its rule's open windows span, at most this many
/// (≈ 400 bytes each). A longer range runs on a temporary SQLite file, at
/// about half the speed.
const MEMORY_RANGE: u64 = 2_000_000;

/// What to replay.
#[derive(Debug, Clone)]
pub struct Replay {
    /// The tenant whose log is read.
    pub tenant: String,
    /// The rule version: its manifest and component.
    pub manifest: Manifest,
    /// Its component's bytes.
    pub component: Vec<u8>,
    /// Ingest time the range starts at (ms, inclusive).
    pub from: i64,
    /// Ingest time it ends at (ms, exclusive).
    pub to: i64,
    /// Append the outputs to the log (a backfill) instead of a dry run.
    pub emit: bool,
    /// Where compiled components are cached.
    pub cache_dir: Option<std::path::PathBuf>,
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Summary {
    /// Events replayed.
    pub events: u64,
    /// Fires the version made.
    pub fires: u64,
    /// Outputs they emitted.
    pub outputs: u64,
    /// Outputs appended to the log (with `emit`).
    pub emitted: u64,
    /// Outputs a previous backfill had appended already.
    pub duplicates: u64,
    /// Failed handler attempts.
    pub errors: u64,
    /// How long it took (ms).
    pub millis: u64,
}

/// The first seq ingested at or after `at` (one past the last when none
/// is): ingest times never decrease along seq, so a binary search over
/// seqs finds it in O(log n) reads of one event.
pub fn seq_at(log: &EventLog, at: i64) -> Result<u64, LogError> {
    // The first event at or after `seq`, of any tenant.
    let first_at = |seq: u64| -> Result<Option<Event>, LogError> {
        let mut q = EventQuery::tenant("", 1);
        q.tenant = None;
        q.after_seq = Some(seq.saturating_sub(1));
        Ok(log.query(&q)?.into_iter().next())
    };
    let end = log.last_seq() + 1;
    // (Pruned seqs are skipped over: `first_at` finds what is kept.)
    let (mut lo, mut hi) = (1, end);
    // The smallest seq whose first event (at or after it) was ingested at
    // or after `at`, or is none.
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match first_at(mid)? {
            Some(e) if e.ingested < at => lo = e.seq + 1,
            _ => hi = mid,
        }
    }
    Ok(first_at(lo)?.map_or(end, |e| e.seq))
}

/// The id a backfilled output takes: the same for the same replayed fire
/// and output, whenever the replay is repeated.
pub fn backfill_id(tenant: &str, rule: &str, version: u32, fire_id: &str, n: usize) -> String {
    let digest = sha2::Sha256::digest(format!("{tenant}\n{rule}\n{version}\n{fire_id}\n{n}"));
    format!("sluice:backfill.{}", hex::encode(&digest[..16]))
}

/// Run `replay`, handing each report line (as `sluice test` writes them)
/// to `sink` as it happens, and a progress line (`{"type": "progress",
/// "events", "position", "start", "end"}`: events replayed, and the seq
/// reached in the range) to `progress` after each page read.
pub fn run(
    log: &EventLog,
    replay: &Replay,
    sink: &mut dyn FnMut(Value) -> std::io::Result<()>,
    progress: &mut dyn FnMut(Value) -> std::io::Result<()>,
) -> anyhow::Result<Summary> {
    let started = Instant::now();
    if replay.from > replay.to {
        anyhow::bail!(
            "from ({}) is after to ({}): the range is empty the wrong way round",
            crate::time::rfc3339(replay.from),
            crate::time::rfc3339(replay.to)
        );
    }
    let start = seq_at(log, replay.from)?;
    let end = seq_at(log, replay.to)?;
    let own = format!("rule:{}", replay.manifest.name);
    let tenant = replay.tenant.clone();
    let mut summary = Summary::default();
    let replayed = std::cell::Cell::new(0u64);
    // Pages of the range, the rule's own outputs and engine records left
    // out, read on a thread of their own a page ahead of the run (their
    // reads and the run's work overlap); the clock follows each event's
    // ingest time.
    let (pages_tx, pages_rx) =
        std::sync::mpsc::sync_channel::<Result<(Vec<NewEvent>, u64), LogError>>(1);
    let reader_log = log.clone();
    let reader = std::thread::Builder::new()
        .name("sluice-replay-read".into())
        .spawn(move || {
            let mut after = start.saturating_sub(1);
            while after + 1 < end {
                let mut q = EventQuery::tenant(&tenant, PAGE);
                q.after_seq = Some(after);
                q.until_seq = Some(end - 1);
                let page = match reader_log.query(&q) {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = pages_tx.send(Err(e));
                        return;
                    }
                };
                let Some(last) = page.last() else { return };
                after = last.seq;
                let full = page.len() == PAGE;
                let events: Vec<NewEvent> = page
                    .into_iter()
                    .filter(|e| e.source != ENGINE_SOURCE && e.source != own)
                    .map(|e| NewEvent {
                        tenant: e.tenant,
                        id: Some(e.id),
                        source: e.source,
                        kind: e.kind,
                        time: Some(e.time),
                        payload: e.payload,
                        hops: e.hops,
                        ingested: Some(e.ingested),
                    })
                    .collect();
                // The run stopped (it failed, or its report's reader left).
                if pages_tx.send(Ok((events, after))).is_err() || !full {
                    return;
                }
            }
        })?;
    let mut pages = pages_rx.iter().map(|page| {
        let (events, after) = page?;
        replayed.set(replayed.get() + events.len() as u64);
        progress(json!({"type": "progress", "events": replayed.get(),
            "position": after, "start": start, "end": end}))?;
        Ok(events)
    });
    let mut outputs: Vec<Value> = Vec::new();
    // A range of up to MEMORY_RANGE seqs runs on a log in memory; a
    // longer one on a temporary file, so that a replay's memory in the
    // server stays bounded whatever the range and its rule's windows.
    let spill = tempfile::tempdir()?;
    let options = crate::offline::Options {
        cache_dir: replay.cache_dir.clone(),
        store: (end.saturating_sub(start) > MEMORY_RANGE)
            .then(|| crate::log::Store::Sqlite(spill.path().join("replay.db"))),
        report_hops: true,
        prune_every: None,
    };
    let ran = crate::offline::replay_events(
        vec![(replay.component.clone(), replay.manifest.clone())],
        &mut pages,
        replay.to,
        &options,
        &mut |line| {
            match line["type"].as_str() {
                Some("fire") => summary.fires += 1,
                Some("output") => {
                    summary.outputs += 1;
                    if replay.emit {
                        outputs.push(line.clone());
                    }
                }
                Some("error" | "dead_letter") => summary.errors += 1,
                _ => {}
            }
            let mut line = line;
            if let Some(o) = line.as_object_mut() {
                o.remove("hops");
            }
            sink(line)
        },
    );
    // A run that stopped early drops the receiver: the reader stops too.
    drop(pages);
    let _ = reader.join();
    ran?;
    summary.events = replayed.get();
    if replay.emit {
        let (emitted, duplicates) = backfill(log, replay, &outputs)?;
        summary.emitted = emitted;
        summary.duplicates = duplicates;
    }
    summary.millis = started.elapsed().as_millis() as u64;
    Ok(summary)
}

/// Append the replay's `outputs` (report lines) to the log as the rule's
/// outputs: (accepted, duplicates).
fn backfill(log: &EventLog, replay: &Replay, outputs: &[Value]) -> anyhow::Result<(u64, u64)> {
    let name = &replay.manifest.name;
    let mut n_in_fire = std::collections::HashMap::<String, usize>::new();
    let events: Vec<NewEvent> = outputs
        .iter()
        .map(|o| {
            let fire = o["fire_id"].as_str().unwrap_or_default().to_owned();
            let n = n_in_fire.entry(fire.clone()).or_default();
            let id = backfill_id(&replay.tenant, name, replay.manifest.version, &fire, *n);
            *n += 1;
            NewEvent {
                tenant: replay.tenant.clone(),
                id: Some(id),
                source: format!("rule:{name}"),
                kind: o["kind"].as_str().unwrap_or_default().to_owned(),
                time: o["at"].as_i64(),
                payload: o["payload"].to_string(),
                hops: o["hops"].as_u64().unwrap_or(1) as u32,
                ingested: None,
            }
        })
        .collect();
    let (mut accepted, mut duplicates) = (0u64, 0u64);
    for chunk in events.chunks(1_000) {
        let report = log.append_blocking(chunk.to_vec())?;
        accepted += report.accepted as u64;
        duplicates += report.duplicates as u64;
    }
    Ok((accepted, duplicates))
}
