//! `sluice test`: run a rule against recorded events on a virtual clock,
//! with the real log, dispatcher and fire pipeline, and report every fire,
//! output, discard and error as a JSON line — stable enough for golden
//! files.
//!
//! Input lines are events (`{"id"?, "source", "kind", "time"?,
//! "payload"}`) or directives: `{"advance": "10m"}` (a duration) or
//! `{"advance": "2026-01-01T01:00:00Z"}` (a time). An event whose `time`
//! is later than the clock moves the clock there first. Moving the clock
//! runs everything that falls due on the way, in time order: window
//! expiries and retries.

use std::io::BufRead;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::clock::{Clock, ManualClock};
use crate::log::validate::{EventLimits, parse_event};
use crate::log::{Durability, EventLog, LogConfig};
use crate::manifest::Manifest;
use crate::runtime::{Runtime, RuntimeConfig};
use crate::triggers::batch::Close;
use crate::triggers::dispatch::{BatchRule, Dispatcher, FireOutcome, FireRecord};

/// The clock's start when no event gives a time: 2026-01-01T00:00:00Z.
pub const DEFAULT_START: i64 = 1_767_225_600_000;

/// The tenant events belong to in an offline run.
const TENANT: &str = "test";

/// What an offline run produced.
#[derive(Debug, Default)]
pub struct Report {
    /// One JSON value per line of output.
    pub lines: Vec<Value>,
    /// A handler failed at least once.
    pub rule_failed: bool,
}

/// One rule of an offline run.
struct RuleRun {
    name: String,
    dispatcher: Dispatcher,
    retry: crate::manifest::RetryPolicy,
}

struct Run {
    log: EventLog,
    clock: ManualClock,
    rules: Vec<RuleRun>,
    report: Report,
}

/// Rounds of dispatching in a row after which rules are taken to be feeding
/// each other forever.
const MAX_ROUNDS: usize = 10_000;

/// Run `component` under `manifest` against the lines of `input`.
pub fn run(
    component: &[u8],
    manifest: Manifest,
    input: impl BufRead,
    cache_dir: Option<std::path::PathBuf>,
) -> anyhow::Result<Report> {
    run_rules(vec![(component.to_vec(), manifest)], input, cache_dir)
}

/// Run several rules side by side against the lines of `input`: each
/// rule's outputs are events the others (and itself) may consume. Lines
/// carry a `rule` field.
pub fn run_rules(
    rules: Vec<(Vec<u8>, Manifest)>,
    input: impl BufRead,
    cache_dir: Option<std::path::PathBuf>,
) -> anyhow::Result<Report> {
    let lines: Vec<(usize, String)> = input
        .lines()
        .enumerate()
        .map(|(n, l)| l.map(|l| (n + 1, l)))
        .collect::<Result<_, _>>()?;
    let start = lines
        .iter()
        .find_map(|(_, l)| serde_json::from_str::<Value>(l).ok()?.get("time").cloned())
        .and_then(|t| parse_time(&t))
        .unwrap_or(DEFAULT_START);
    let clock = ManualClock::new(start);
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir,
        clock: Arc::new(clock.clone()),
        ..RuntimeConfig::default()
    })?;
    let dir = tempfile::tempdir()?;
    let log = EventLog::open_sqlite(
        dir.path().join("test.db"),
        Durability::Normal,
        LogConfig::default(),
        Arc::new(clock.clone()),
    )?;
    let mut runs = Vec::new();
    for (component, manifest) in rules {
        let spec = BatchRule::load(&runtime, TENANT, &component, &manifest)?;
        let dispatcher = Dispatcher::open(&log, spec)?;
        runs.push(RuleRun {
            name: manifest.name.clone(),
            dispatcher,
            retry: manifest.retry.clone(),
        });
    }
    let mut run = Run {
        log,
        clock,
        rules: runs,
        report: Report::default(),
    };
    let limits = EventLimits::default();
    for (n, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let value: Value =
            serde_json::from_str(&line).map_err(|e| anyhow::anyhow!("line {n}: not JSON: {e}"))?;
        if let Some(to) = value.get("advance") {
            let target = advance_target(to, run.clock.now_millis()).ok_or_else(|| {
                anyhow::anyhow!(
                    "line {n}: advance: {to} is neither a duration (\"10m\") nor an RFC 3339 time"
                )
            })?;
            run.advance_to(target)?;
            continue;
        }
        let event =
            parse_event(TENANT, &line, &limits).map_err(|e| anyhow::anyhow!("line {n}: {e}"))?;
        if let Some(t) = event.time {
            run.advance_to(t)?;
        }
        run.log.append_blocking(vec![event])?;
        run.settle()?;
    }
    let Run { log, report, .. } = run;
    log.close();
    Ok(report)
}

fn parse_time(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.timestamp_millis()),
        _ => None,
    }
}

fn advance_target(v: &Value, now: i64) -> Option<i64> {
    let Value::String(s) = v else {
        return None;
    };
    if let Ok(d) = humantime::parse_duration(s) {
        return Some(now.saturating_add(d.as_millis() as i64));
    }
    parse_time(v)
}

fn reason(close: Close) -> &'static str {
    match close {
        Close::CountReached => "count-reached",
        Close::WindowExpired => "window-expired",
        Close::Discarded => "discarded",
    }
}

impl Run {
    fn emit(&mut self, line: Value) {
        self.report.lines.push(line);
    }

    fn created(&mut self, rule: &str, fires: &[FireRecord]) {
        let at = self.clock.now_millis();
        for f in fires {
            let kind = if f.reason == Close::Discarded {
                "discard"
            } else {
                "fire"
            };
            self.emit(
                json!({"type": kind, "rule": rule, "at": at, "fire_id": f.fire_id,
                "partition": f.partition, "reason": reason(f.reason), "events": f.seqs}),
            );
        }
    }

    /// Let every rule dispatch what is new and run what is due, until none
    /// has anything left (outputs of one rule may feed another).
    fn settle(&mut self) -> anyhow::Result<()> {
        for _ in 0..MAX_ROUNDS {
            let mut progressed = false;
            for i in 0..self.rules.len() {
                let now = self.clock.now_millis();
                let before = self.rules[i].dispatcher.cursor();
                let step = self.rules[i].dispatcher.catch_up(&self.log, now, 1_024)?;
                progressed |= step.cursor != before;
                let name = self.rules[i].name.clone();
                self.created(&name, &step.fires);
                progressed |= self.run_due(i)?;
            }
            if !progressed {
                return Ok(());
            }
        }
        anyhow::bail!(
            "rules kept producing events for {MAX_ROUNDS} rounds: do they feed each other in a loop?"
        )
    }

    /// Run rule `i`'s fires due now; failed ones wait for their retry
    /// time. True when any ran.
    fn run_due(&mut self, i: usize) -> anyhow::Result<bool> {
        let now = self.clock.now_millis();
        let due = self.rules[i].dispatcher.due_fires(now);
        let ran = !due.is_empty();
        for fire_id in due {
            let r = &mut self.rules[i];
            let attempt = r.dispatcher.fire(&fire_id).map_or(1, |f| f.attempts + 1);
            let outcome = r.dispatcher.run_fire(&self.log, &fire_id, now, &r.retry)?;
            let rule = r.name.clone();
            match outcome {
                FireOutcome::Completed { outputs } => {
                    for event in self.log.query(&crate::log::EventQuery {
                        after_seq: outputs.first().map(|s| s - 1),
                        until_seq: outputs.last().copied(),
                        ..crate::log::EventQuery::tenant(TENANT, outputs.len())
                    })? {
                        let payload: Value =
                            serde_json::from_str(&event.payload).unwrap_or(Value::Null);
                        self.emit(json!({"type": "output", "rule": rule, "at": now,
                            "fire_id": fire_id, "seq": event.seq, "kind": event.kind,
                            "payload": payload}));
                    }
                }
                FireOutcome::Retry {
                    at: retry_at,
                    error,
                } => {
                    self.report.rule_failed = true;
                    self.emit(json!({"type": "error", "rule": rule, "at": now,
                        "fire_id": fire_id, "attempt": attempt, "retry_at": retry_at,
                        "error": error}));
                }
                FireOutcome::DeadLettered { error } => {
                    self.report.rule_failed = true;
                    self.emit(json!({"type": "dead_letter", "rule": rule, "at": now,
                        "fire_id": fire_id, "attempt": attempt, "error": error}));
                }
            }
        }
        Ok(ran)
    }

    /// The earliest window deadline or retry time of any rule.
    fn next_due(&self) -> Option<i64> {
        self.rules
            .iter()
            .filter_map(|r| r.dispatcher.next_due())
            .min()
    }

    /// Move the clock to `target`, running what falls due on the way in
    /// time order.
    fn advance_to(&mut self, target: i64) -> anyhow::Result<()> {
        while let Some(t) = self.next_due().filter(|t| *t <= target) {
            self.clock.set(t);
            let now = self.clock.now_millis();
            for i in 0..self.rules.len() {
                let fires = self.rules[i].dispatcher.expire(&self.log, now)?;
                let name = self.rules[i].name.clone();
                self.created(&name, &fires);
            }
            self.settle()?;
        }
        self.clock.set(target);
        Ok(())
    }
}
