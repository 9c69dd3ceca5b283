//! `sluice test`: run rules against recorded events on a virtual clock,
//! with the real log, core and fire pipeline, and report every fire,
//! output, discard and error as a JSON line as it happens — stable enough
//! for golden files.
//!
//! Input lines are events (`{"id"?, "source", "kind", "time"?,
//! "payload"}`) or directives:
//!
//! - `{"advance": "10m"}` (a duration) or `{"advance":
//!   "2026-01-01T01:00:00Z"}` (a time; never backwards). An event whose
//!   `time` is later than the clock moves the clock there first. Moving the
//!   clock runs everything that falls due on the way, in time order:
//!   deadlines, ticks and retries;
//! - `{"pause": "<rule>"}` and `{"resume": "<rule>"}`: as the engine's
//!   control channel does;
//! - `{"down": "2h"}`: the engine stops, the clock moves on with nothing
//!   running, and every rule starts again from its durable state — what
//!   fell due meanwhile runs at start-up, by each rule's policy.
//!
//! An event without an id gets `line-<n>`. The clock starts at the first
//! event's time (or 2026-01-01T00:00:00Z), and so do schedules.
//!
//! The log runs on the virtual clock, and an event's time is its ingest
//! time: a rule sees exactly what the engine would have seen had the
//! events come at those times.
//!
//! Replay is fast without changing what it reports: consecutive events
//! are taken together up to the next due deadline and up to the first
//! event that makes a fire, selected in one call per rule, appended in
//! one commit and handed to the driver's step — so the seqs, fire times
//! and outputs are those of feeding the events one by one. Everything
//! else (deadlines, fires, rules' outputs feeding rules) goes through the
//! driver's round ([`crate::engine::driver`]), as in the engine. This
//! module only reads the input and writes the report.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;

use serde_json::{Value, json};

use crate::clock::{Clock, ManualClock};
use crate::engine::driver::{Driven, Inline, Input, Observer, Request, RoundIn};
use crate::engine::rule::Deployable;
use crate::event::Event;
use crate::log::validate::{EventLimits, parse_event_value};
use crate::log::{
    Durability, EventLog, LogConfig, MemoryBackend, NewEvent, RetentionPolicy, Store,
};
use crate::manifest::Manifest;
use crate::runtime::{Runtime, RuntimeConfig};
use crate::triggers::core::{Start, Step};
use crate::triggers::fires::{FireAttempt, FireOutcome};
use crate::triggers::{FireReason, Note};
use crate::verdict::Verdict;

/// The clock's start when no event gives a time: 2026-01-01T00:00:00Z.
pub const DEFAULT_START: i64 = 1_767_225_600_000;

/// The tenant events belong to in an offline run.
const TENANT: &str = "test";

/// Events taken together at most.
const CHUNK: usize = 4_096;

/// What an offline run produced.
#[derive(Debug, Default)]
pub struct Report {
    /// One JSON value per line of output (when collected).
    pub lines: Vec<Value>,
    /// A handler failed at least once.
    pub rule_failed: bool,
}

/// Rounds of dispatching in a row after which rules are taken to be feeding
/// each other forever.
const MAX_ROUNDS: usize = 10_000;

/// Rounds with deadlines left at a step's cap after which the same is
/// concluded (a billion deadlines at one instant).
const MAX_CAPPED_ROUNDS: u64 = 4_000_000;

/// An in-memory run prunes after this many events.
const PRUNE_EVERY: usize = 50_000;

/// How an offline run is set up.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Where compiled components are cached (none: compile each time).
    pub cache_dir: Option<std::path::PathBuf>,
    /// The store that holds the run's log and state, kept for a look
    /// afterwards (none: a log in memory, gone with the run). It must be
    /// empty.
    pub store: Option<Store>,
    /// Output lines also say how many rule steps the output is from a
    /// client's event (`hops`: a replay's backfill keeps it).
    pub report_hops: bool,
    /// A run on a log in memory prunes what its rules are done with
    /// after this many events (none: every 50 000; tests prune often).
    pub prune_every: Option<usize>,
}

/// Run `component` under `manifest` against the lines of `input`.
pub fn run(
    component: &[u8],
    manifest: Manifest,
    input: impl Read,
    options: &Options,
) -> anyhow::Result<Report> {
    run_rules(vec![(component.to_vec(), manifest)], input, options)
}

/// Run several rules side by side against the lines of `input`, collecting
/// the report: each rule's outputs are events the others may consume.
pub fn run_rules(
    rules: Vec<(Vec<u8>, Manifest)>,
    input: impl Read,
    options: &Options,
) -> anyhow::Result<Report> {
    let mut lines = Vec::new();
    let failed = stream_rules(rules, input, options, &mut |v| {
        lines.push(v);
        Ok(())
    })?;
    Ok(Report {
        lines,
        rule_failed: failed,
    })
}

/// Run rules against `input`, handing each report line to `sink` as it
/// happens. True when a handler failed at least once.
pub fn stream_rules(
    rules: Vec<(Vec<u8>, Manifest)>,
    input: impl Read,
    options: &Options,
    sink: &mut dyn FnMut(Value) -> std::io::Result<()>,
) -> anyhow::Result<bool> {
    let mut run = Run::open(rules, options, sink)?;
    let limits = EventLimits::default();
    // Events are taken together while more input is at hand; when the
    // reader has nothing buffered (a pipe that waits, or a file's next
    // megabyte), what was read is processed first, so output follows
    // input as it comes.
    let mut input = BufReader::with_capacity(1 << 20, input);
    let mut buf = Vec::new();
    let mut n = 0usize;
    loop {
        buf.clear();
        if input.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        n += 1;
        let line = std::str::from_utf8(&buf)
            .map_err(|e| anyhow::anyhow!("line {n}: not valid UTF-8 ({e})"))?
            .trim();
        if line.is_empty() {
            continue;
        }
        let value: Value =
            serde_json::from_str(line).map_err(|e| anyhow::anyhow!("line {n}: not JSON: {e}"))?;
        if let Some(to) = value.get("advance") {
            run.flush()?;
            let now = run.clock.now_millis();
            let target =
                advance_target(to, now).map_err(|e| anyhow::anyhow!("line {n}: advance: {e}"))?;
            run.start()?;
            run.advance_to(target)?;
            continue;
        }
        if let Some(directive) = ["pause", "resume", "down"]
            .into_iter()
            .find(|d| value.get(*d).is_some())
        {
            run.flush()?;
            run.start()?;
            run.directive(directive, &value[directive])
                .map_err(|e| anyhow::anyhow!("line {n}: {directive}: {e}"))?;
            continue;
        }
        let mut event = parse_event_value(TENANT, value, &limits)
            .map_err(|e| anyhow::anyhow!("line {n}: {e}"))?;
        let given = event.id.is_some();
        if !given {
            event.id = Some(format!("line-{n}"));
        }
        if !run.started {
            // The first event's time (if any) starts the clock.
            if let Some(t) = event.time {
                run.clock.set(t.max(i64::MIN + 1));
            }
            run.start()?;
        }
        run.pending.push((event, given));
        if run.pending.len() >= CHUNK || input.buffer().is_empty() {
            run.flush()?;
        }
    }
    run.flush()?;
    run.finish()
}

/// Run rules over events taken from a log (a replay of the past: each
/// event keeps its id, its client time and, as `ingested`, its ingest
/// time, which the clock follows), page by page; then move the clock to
/// `until`, so that what falls due by then runs. Report lines go to
/// `sink` as [`stream_rules`] writes them. True when a handler failed.
pub fn replay_events(
    rules: Vec<(Vec<u8>, Manifest)>,
    pages: &mut dyn Iterator<Item = anyhow::Result<Vec<NewEvent>>>,
    until: i64,
    options: &Options,
    sink: &mut dyn FnMut(Value) -> std::io::Result<()>,
) -> anyhow::Result<bool> {
    let mut run = Run::open(rules, options, sink)?;
    for page in pages {
        for mut event in page? {
            event.tenant = TENANT.into();
            if !run.started {
                if let Some(t) = event.ingested.or(event.time) {
                    run.clock.set(t.max(i64::MIN + 1));
                }
                run.start()?;
            }
            run.pending.push((event, true));
            if run.pending.len() >= CHUNK {
                run.flush()?;
            }
        }
    }
    run.flush()?;
    if !run.started {
        run.clock.set(until);
        run.start()?;
    }
    if until > run.clock.now_millis() {
        run.advance_to(until)?;
    }
    run.finish()
}

fn advance_target(v: &Value, now: i64) -> Result<i64, String> {
    let Value::String(s) = v else {
        return Err(format!(
            "{v} is neither a duration (\"10m\") nor an RFC 3339 time"
        ));
    };
    if let Ok(d) = humantime::parse_duration(s) {
        return i64::try_from(d.as_millis())
            .ok()
            .and_then(|ms| now.checked_add(ms))
            .ok_or_else(|| format!("{s:?} moves the clock past the year 292 million"));
    }
    let t = crate::time::parse_value(v)
        .map_err(|_| format!("{s:?} is neither a duration (\"10m\") nor an RFC 3339 time"))?;
    if t < now {
        return Err(format!(
            "{s:?} is before the clock ({}): time only moves forward",
            crate::time::rfc3339(now)
        ));
    }
    Ok(t)
}

/// A set of ids by keyed 64-bit hash: it may say an id is in it when
/// only its hash is, never the other way round.
#[derive(Default)]
struct ClientIds {
    key: std::hash::RandomState,
    seen: rustc_hash::FxHashSet<u64>,
}

impl ClientIds {
    fn hash(&self, id: Option<&str>) -> u64 {
        std::hash::BuildHasher::hash_one(&self.key, id.unwrap_or_default())
    }

    fn contains(&self, id: Option<&str>) -> bool {
        self.seen.contains(&self.hash(id))
    }

    /// False when it was (or seemed to be) in already.
    fn insert(&mut self, id: Option<&str>) -> bool {
        let h = self.hash(id);
        self.seen.insert(h)
    }
}

struct Run<'a> {
    /// What loaded the rules.
    _runtime: Runtime,
    log: EventLog,
    clock: ManualClock,
    /// The rules as loaded, to start them again (`down`).
    deployables: Vec<Deployable>,
    rules: Vec<Box<dyn Driven>>,
    report: Reporter<'a>,
    started: bool,
    /// Events read and not yet appended.
    pending: Vec<(NewEvent, bool)>,
    /// Ids clients gave to events appended so far, as keyed hashes: an
    /// event repeating one may be a duplicate, which takes no seq, so it
    /// is never part of a chunk (whose seqs are worked out before the
    /// append). Two ids sharing a hash only send an event the slower way.
    client_ids: ClientIds,
    /// Events offered to the next chunk: doubles while chunks are taken
    /// whole, shrinks to twice what a chunk that stopped early took — so
    /// `select` is not asked about many events a fire will make it ask
    /// about again.
    chunk: usize,
    /// On a log of the run's own, in memory: prune what the rules no
    /// longer need after this many events (none: a store to keep).
    prune_every: Option<usize>,
    /// Events appended since the last prune.
    unpruned: usize,
}

/// The report's lines, as the driver's rounds produce them.
struct Reporter<'a> {
    log: EventLog,
    sink: &'a mut dyn FnMut(Value) -> std::io::Result<()>,
    failed: bool,
    /// A line could not be written (a closed pipe): the run stops.
    broken: Option<std::io::Error>,
    /// Output lines carry their `hops`.
    hops: bool,
}

impl Reporter<'_> {
    fn emit(&mut self, line: Value) {
        if self.broken.is_none()
            && let Err(e) = (self.sink)(line)
        {
            self.broken = Some(e);
        }
    }

    fn check(&mut self) -> anyhow::Result<()> {
        match self.broken.take() {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}

impl Observer for Reporter<'_> {
    fn step(&mut self, rule: &str, step: &Step, _now: i64) {
        if let Some(m) = &step.missed {
            let mut line = json!({"type": "missed", "rule": rule, "at": m.at,
                "ticks": m.ticks, "first": m.first, "last": m.last});
            if m.more {
                line["at_least"] = json!(true);
            }
            self.emit(line);
        }
        for c in &step.cancelled {
            self.emit(json!({"type": "cancelled", "rule": rule, "at": c.at,
                "fire_id": c.fire_id, "partition": c.partition, "by": c.by}));
        }
        for f in &step.fires {
            let mut line = json!({"type": "fire", "rule": rule, "at": f.created_at,
                "fire_id": f.fire_id, "partition": f.partition, "reason": f.reason.name(),
                "events": f.seqs});
            match &f.reason {
                FireReason::Dwell {
                    label,
                    ordinal,
                    member_since,
                    epoch,
                } => {
                    line["label"] = json!(label);
                    line["ordinal"] = json!(ordinal);
                    line["member_since"] = json!(member_since);
                    line["epoch"] = json!(epoch);
                }
                FireReason::Schedule { tick, catch_up } => {
                    line["tick"] = json!(tick);
                    line["catch_up"] = json!(catch_up);
                }
                _ => {}
            }
            self.emit(line);
        }
        for d in &step.discards {
            self.emit(json!({"type": "discard", "rule": rule, "at": d.at,
                "fire_id": d.fire_id, "partition": d.partition, "reason": "discarded",
                "events": d.seqs}));
        }
        for n in &step.notes {
            let line = match &n.note {
                Note::Left {
                    epoch,
                    member_since,
                    ..
                } => json!({"type": "leave", "rule": rule, "at": n.at,
                    "partition": n.partition, "epoch": epoch, "member_since": member_since,
                    "why": "max_dwell"}),
                Note::TickSkipped { tick, overlap } => json!({"type": "skipped", "rule": rule,
                    "at": n.at, "partition": n.partition, "tick": tick, "overlap": overlap}),
                Note::OverQuota {
                    seq,
                    max_partitions,
                } => json!({"type": "quota", "rule": rule, "at": n.at,
                    "partition": n.partition, "seq": seq, "max_partitions": max_partitions}),
            };
            self.emit(line);
        }
    }

    fn finished(&mut self, attempt: &FireAttempt, outcome: &FireOutcome) {
        let (rule, fire_id, now) = (&attempt.record.rule, &attempt.record.fire_id, attempt.now);
        match outcome {
            FireOutcome::Completed { outputs, dropped } => {
                if *dropped > 0 {
                    self.emit(json!({"type": "dropped", "rule": rule, "at": now,
                        "fire_id": fire_id, "outputs": dropped,
                        "why": "past the rule's output hop limit ([outputs] max_hops)"}));
                }
                let events = match self.log.read_seqs(TENANT, outputs) {
                    Ok(e) => e,
                    Err(e) => {
                        self.broken = Some(std::io::Error::other(e.to_string()));
                        return;
                    }
                };
                for event in events {
                    let payload: Value =
                        serde_json::from_str(&event.payload).unwrap_or(Value::Null);
                    let mut line = json!({"type": "output", "rule": rule, "at": now,
                        "fire_id": fire_id, "seq": event.seq, "kind": event.kind,
                        "payload": payload});
                    if self.hops {
                        line["hops"] = json!(event.hops);
                    }
                    self.emit(line);
                }
            }
            FireOutcome::Retry {
                at: retry_at,
                error,
            } => {
                self.failed = true;
                self.emit(json!({"type": "error", "rule": rule, "at": now,
                    "fire_id": fire_id, "attempt": attempt.attempt, "retry_at": retry_at,
                    "error": error}));
            }
            FireOutcome::DeadLettered { error } => {
                self.failed = true;
                self.emit(json!({"type": "dead_letter", "rule": rule, "at": now,
                    "fire_id": fire_id, "attempt": attempt.attempt, "error": error}));
            }
            // Fires run one after another here: none is cancelled while it
            // runs.
            FireOutcome::Cancelled => {}
        }
    }
}

impl<'a> Run<'a> {
    /// Open the rules, and a log of the run's own on the virtual clock.
    fn open(
        rules: Vec<(Vec<u8>, Manifest)>,
        options: &Options,
        sink: &'a mut dyn FnMut(Value) -> std::io::Result<()>,
    ) -> anyhow::Result<Self> {
        let mut names = HashSet::new();
        for (_, m) in &rules {
            if !names.insert(m.name.clone()) {
                anyhow::bail!(
                    "two rules are named {:?}: a rule's name is its identity; rename one",
                    m.name
                );
            }
        }
        let clock = ManualClock::new(DEFAULT_START);
        let runtime = Runtime::new(RuntimeConfig {
            cache_dir: options.cache_dir.clone(),
            clock: Arc::new(clock.clone()),
            ..RuntimeConfig::default()
        })?;
        // On the virtual clock an event's own time is its ingest time.
        let config = LogConfig {
            follow_event_time: true,
            ..LogConfig::default()
        };
        // Without a store to keep, the run's log is in memory: nothing of
        // it outlives the run, and what the rules no longer need is pruned
        // as it goes (see `Run::prune`).
        let log = match &options.store {
            Some(store) => {
                let log = EventLog::open_store(
                    store,
                    Durability::Normal,
                    config,
                    Arc::new(clock.clone()),
                )?;
                if log.last_seq() != 0 {
                    anyhow::bail!(
                        "{store} already holds a log: an offline run starts from an empty store"
                    );
                }
                log
            }
            None => EventLog::open(
                Arc::new(MemoryBackend::new()),
                config,
                Arc::new(clock.clone()),
            )?,
        };
        let mut deployables = Vec::new();
        for (component, manifest) in rules {
            deployables.push(Deployable::load(&runtime, TENANT, &component, &manifest)?);
        }
        Ok(Run {
            report: Reporter {
                log: log.clone(),
                sink,
                failed: false,
                broken: None,
                hops: options.report_hops,
            },
            _runtime: runtime,
            log,
            clock,
            deployables,
            rules: Vec::new(),
            started: false,
            pending: Vec::new(),
            client_ids: ClientIds::default(),
            chunk: 256,
            prune_every: options
                .store
                .is_none()
                .then(|| options.prune_every.unwrap_or(PRUNE_EVERY)),
            unpruned: 0,
        })
    }

    /// Close the log: true when a handler failed.
    fn finish(self) -> anyhow::Result<bool> {
        let failed = self.report.failed;
        let Run {
            log, rules, report, ..
        } = self;
        drop((rules, report));
        log.close();
        Ok(failed)
    }

    /// The clock has its start: the rules start running (a schedule
    /// starts counting ticks here).
    fn start(&mut self) -> anyhow::Result<()> {
        if !self.started {
            self.started = true;
            self.open_rules(Start::Cold)?;
        }
        Ok(())
    }

    /// Open every rule at the clock's time, as `start` says.
    fn open_rules(&mut self, start: Start) -> anyhow::Result<()> {
        let now = self.clock.now_millis();
        for d in &self.deployables {
            self.rules.push(d.clone().open(&self.log, now, start)?);
        }
        self.settle()
    }

    fn directive(&mut self, what: &str, arg: &Value) -> anyhow::Result<()> {
        if what == "down" {
            let Some(text) = arg.as_str() else {
                anyhow::bail!("{arg} is not a duration (\"2h\")");
            };
            let now = self.clock.now_millis();
            let target = advance_target(arg, now).map_err(|e| anyhow::anyhow!(e))?;
            if humantime::parse_duration(text).is_err() {
                anyhow::bail!("{text:?} is not a duration (\"2h\")");
            }
            // Stop every rule (in `sluice test` no handler is mid-run), let
            // the time pass, start them again from what is committed.
            // They were known to run until now: the outage is the time
            // that passes.
            self.rules.clear();
            self.clock.set(target);
            return self.open_rules(Start::After {
                from: now,
                until: target,
            });
        }
        let Some(name) = arg.as_str() else {
            anyhow::bail!("{arg} is not a rule name");
        };
        let Some(i) = self.rules.iter().position(|r| r.spec().name == name) else {
            let names: Vec<&str> = self.rules.iter().map(|r| r.spec().name.as_str()).collect();
            anyhow::bail!("no rule named {name:?} (rules: {})", names.join(", "));
        };
        let request = if what == "pause" {
            Request::Pause
        } else {
            Request::Resume
        };
        let now = self.clock.now_millis();
        self.rules[i].serve(&request, now)?;
        self.report
            .emit(json!({"type": what, "rule": name, "at": now}));
        self.report.check()?;
        self.settle()
    }

    fn next_due(&self) -> Option<i64> {
        self.rules.iter().filter_map(|r| r.next_due()).min()
    }

    /// Append and process the pending events, in chunks that end before
    /// the next due deadline and right after an event that makes a fire.
    fn flush(&mut self) -> anyhow::Result<()> {
        let mut pending = std::mem::take(&mut self.pending);
        let mut start = 0;
        while start < pending.len() {
            if let Some(t) = pending[start].0.ingested.or(pending[start].0.time)
                && t > self.clock.now_millis()
            {
                self.advance_to(t)?;
            }
            let last = self.log.last_seq();
            // A paused rule takes nothing until resumed, when its turn
            // catches it up.
            let caught_up = self.rules.iter().all(|r| r.held() || r.cursor() == last);
            let taken = if caught_up {
                self.chunk(&mut pending[start..])?
            } else {
                0
            };
            let taken = if taken == 0 {
                // One at a time: what the engine would do.
                let (event, given) = &pending[start];
                self.log.append_blocking(vec![event.clone()])?;
                if *given {
                    self.client_ids.insert(event.id.as_deref());
                }
                1
            } else {
                taken
            };
            start += taken;
            self.unpruned += taken;
            self.settle()?;
        }
        pending.clear();
        self.pending = pending;
        self.prune()
    }

    /// Drop the events every rule is done with from an in-memory log
    /// (below the rules' pins: their cursors, open windows and pending
    /// fires), so that a long run holds what its rules still need, not
    /// the whole range. Runs between steps, when every report line of
    /// what came before has been written.
    fn prune(&mut self) -> anyhow::Result<()> {
        // Every rule has committed, so has pinned what it needs.
        if self.prune_every.is_none_or(|every| self.unpruned < every)
            || self.rules.iter().any(|r| r.cursor() == 0)
            || self.log.low_water()?.is_none()
        {
            return Ok(());
        }
        self.unpruned = 0;
        let everything_unpinned = RetentionPolicy {
            max_age: None,
            max_events: Some(0),
        };
        while self.log.prune_blocking(everything_unpinned.clone())?.more {}
        Ok(())
    }

    /// Take a chunk of `events` through `select` and the driver in one
    /// go, seqs and ingest times worked out before the append; how many
    /// were taken (0: take one the ordinary way). The events taken are
    /// moved out (into the log).
    fn chunk(&mut self, events: &mut [(NewEvent, bool)]) -> anyhow::Result<usize> {
        let bound = self.next_due().unwrap_or(i64::MAX);
        let mut stamps = Vec::new();
        let mut stamp = self.clock.now_millis().max(self.log.last_stamp());
        let mut ids = ClientIds::default();
        for (e, given) in events.iter().take(self.chunk) {
            stamp = stamp.max(e.ingested.or(e.time).unwrap_or(stamp));
            let id = e.id.as_deref();
            let repeat = *given && (self.client_ids.contains(id) || !ids.insert(id));
            if stamp >= bound || repeat {
                break;
            }
            stamps.push(stamp);
        }
        if stamps.is_empty() {
            return Ok(0);
        }
        let first_seq = self.log.last_seq() + 1;
        let provisional: Vec<Event> = events[..stamps.len()]
            .iter()
            .enumerate()
            .map(|(i, (e, _))| Event {
                seq: first_seq + i as u64,
                id: e.id.clone().unwrap_or_default(),
                tenant: e.tenant.clone(),
                source: e.source.clone(),
                kind: e.kind.clone(),
                time: e.time.unwrap_or(stamps[i]),
                ingested: stamps[i],
                payload: e.payload.clone(),
                hops: e.hops,
            })
            .collect();
        let horizon = stamps[stamps.len() - 1];
        fn input<'a>(
            events: &'a [Event],
            verdicts: &'a [Verdict],
            horizon: i64,
            limit: usize,
        ) -> Input<'a> {
            Input {
                limit,
                at_fire: true,
                ..Input::events(events, verdicts, horizon)
            }
        }
        let mut verdicts = Vec::with_capacity(self.rules.len());
        let mut take = stamps.len();
        for r in &mut self.rules {
            if r.held() {
                verdicts.push(Vec::new());
                continue;
            }
            match r.select(&provisional) {
                Ok(v) => {
                    take = take.min(r.plan_len(&input(&provisional, &v, horizon, take)));
                    verdicts.push(v);
                }
                // The ordinary path isolates the event that fails.
                Err(_) => return Ok(0),
            }
        }
        if take == 0 {
            return Ok(0);
        }
        for (e, given) in &events[..take] {
            if *given {
                self.client_ids.insert(e.id.as_deref());
            }
        }
        let report = self.log.append_blocking(
            events[..take]
                .iter_mut()
                .map(|(e, _)| NewEvent {
                    id: e.id.take(),
                    tenant: std::mem::take(&mut e.tenant),
                    source: std::mem::take(&mut e.source),
                    kind: std::mem::take(&mut e.kind),
                    payload: std::mem::take(&mut e.payload),
                    ..*e
                })
                .collect(),
        )?;
        let expected: Vec<u64> = (first_seq..first_seq + take as u64).collect();
        if report.seqs != expected {
            // Not the seqs worked out (an id that only looked new, say):
            // let the ordinary path read what the log holds.
            return Ok(take);
        }
        for (i, v) in verdicts.iter().enumerate() {
            if self.rules[i].held() {
                continue;
            }
            let step = self.rules[i].step_with(&input(&provisional, v, horizon, take))?;
            let name = self.rules[i].spec().name.clone();
            self.report.step(&name, &step, stamps[take - 1]);
        }
        self.report.check()?;
        self.clock.set(stamps[take - 1]);
        self.chunk = if take == stamps.len() {
            (self.chunk * 2).min(CHUNK)
        } else {
            (take * 2).clamp(64, CHUNK)
        };
        Ok(take)
    }

    /// Let every rule take its round and run what is due, until none has
    /// anything left (outputs of one rule may feed another).
    fn settle(&mut self) -> anyhow::Result<()> {
        // Rounds that stopped at a step's deadline cap count apart: a
        // backlog of deadlines takes one round per cap, however large.
        let (mut rounds, mut capped) = (0, 0u64);
        while rounds < MAX_ROUNDS && capped < MAX_CAPPED_ROUNDS {
            let mut progressed = false;
            let mut more = false;
            for rule in &mut self.rules {
                let out = rule.round(
                    RoundIn {
                        now: self.clock.now_millis(),
                        budget: usize::MAX,
                        ..RoundIn::default()
                    },
                    &mut Inline,
                    &mut self.report,
                );
                self.report.check()?;
                if let Some(e) = out.error {
                    anyhow::bail!("{e}");
                }
                progressed |= out.progressed;
                more |= out.more;
            }
            if !progressed {
                return Ok(());
            }
            if more {
                capped += 1;
            } else {
                rounds += 1;
            }
        }
        anyhow::bail!(
            "rules kept producing events for {} rounds: do they feed each other in a loop?",
            rounds as u64 + capped
        )
    }

    /// Move the clock to `target`, running what falls due on the way in
    /// time order.
    fn advance_to(&mut self, target: i64) -> anyhow::Result<()> {
        while let Some(t) = self.next_due().filter(|t| *t <= target) {
            self.clock.set(t);
            self.settle()?;
        }
        self.clock.set(target);
        Ok(())
    }
}
