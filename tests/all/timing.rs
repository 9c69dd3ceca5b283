//! Time is the log's: a rule's fires follow from the log alone.
//!
//! Each case runs the engine on a manual clock through pauses, restarts
//! that kill the engine mid-work (its runtime dropped: tasks cancelled at
//! their next await, blocking work ends after its commit in progress),
//! hot swaps and backlogs (events stored and the clock moved on before the
//! engine read them), then runs `sluice test` over the same log — the
//! clients' events, each at the time the log took it, the clock's moves
//! and a pause for each stretch the rule was not running — and compares
//! every fire: partition, reason with its details, and the batch's events.
//! (Seqs, and the fire ids derived from them, differ between two logs
//! where outputs and engine records interleave differently; the events'
//! ids do not.)

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use serde_json::{Value, json};
use sluice::clock::{Clock, ManualClock, SharedClock};
use sluice::engine::Engine;
use sluice::engine::rule::Deployable;
use sluice::log::{EventLog, EventQuery, NewEvent};
use sluice::manifest::Manifest;
use sluice_test_components::component_bytes;
use sluice_test_components::components::ECHO;

use crate::Harness;
use crate::engine::open_log;

const MINUTE: i64 = 60_000;

/// An engine in a runtime of its own, so that it can be killed.
struct Node {
    rt: tokio::runtime::Runtime,
    engine: Engine,
}

/// A world: one log on a manual clock, one rule, and the engine that runs
/// it (or none, while it is down).
struct World {
    h: Harness,
    log: EventLog,
    rule: Deployable,
    manifest: String,
    node: Option<Node>,
    paused: bool,
    /// The engine was killed (and not started again yet).
    node_killed: bool,
    version: u32,
    /// What `sluice test` is given to stand for the same run: the
    /// clients' events at their ingest times, the clock's moves, and a
    /// pause for each time the rule was not running.
    script: Vec<Value>,
    _dir: tempfile::TempDir,
}

impl World {
    fn new(manifest: &str) -> Self {
        let h = Harness::new();
        h.clock.set(sluice::offline::DEFAULT_START);
        let dir = tempfile::tempdir().unwrap();
        let clock: SharedClock = Arc::new(h.clock.clone());
        let log = open_log(&dir, clock);
        let m = Manifest::parse(manifest).unwrap();
        let rule = Deployable::load(&h.runtime, "acme", &component_bytes(ECHO), &m).unwrap();
        let mut w = Self {
            h,
            log,
            rule,
            manifest: manifest.to_owned(),
            node: None,
            paused: false,
            node_killed: false,
            version: 1,
            // The clock starts where the engine's did (the rule's deploy).
            script: vec![json!({"advance": "0ms"})],
            _dir: dir,
        };
        w.boot();
        w
    }

    fn clock(&self) -> &ManualClock {
        &self.h.clock
    }

    /// Start the engine (a fresh one, on what the log holds).
    fn boot(&mut self) {
        assert!(self.node.is_none());
        if self.node_killed && !self.paused {
            self.script.push(json!({"resume": "echo"}));
        }
        self.node_killed = false;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let clock: SharedClock = Arc::new(self.h.clock.clone());
        let engine = Engine::new(self.log.clone(), clock);
        rt.block_on(engine.deploy(self.rule.clone())).unwrap();
        self.node = Some(Node { rt, engine });
    }

    /// Kill the engine: its tasks stop where they are.
    fn kill(&mut self) {
        if !self.paused {
            self.script.push(json!({"pause": "echo"}));
        }
        self.node_killed = true;
        let node = self.node.take().expect("running");
        drop(node.engine);
        drop(node.rt);
    }

    fn node(&self) -> &Node {
        self.node.as_ref().expect("running")
    }

    fn pause(&mut self) {
        let n = self.node();
        let s = n.rt.block_on(n.engine.pause("acme", "echo")).unwrap();
        assert!(s.paused, "the answer is the new status");
        self.paused = true;
        self.script.push(json!({"pause": "echo"}));
    }

    fn resume(&mut self) {
        let n = self.node();
        let s = n.rt.block_on(n.engine.resume("acme", "echo")).unwrap();
        assert!(!s.paused, "the answer is the new status");
        self.paused = false;
        self.script.push(json!({"resume": "echo"}));
    }

    /// A hot swap to the same rule, one version up.
    fn swap(&mut self) {
        self.version += 1;
        let text = self
            .manifest
            .replacen("version = 1", &format!("version = {}", self.version), 1);
        let m = Manifest::parse(&text).unwrap();
        let rule = Deployable::load(&self.h.runtime, "acme", &component_bytes(ECHO), &m).unwrap();
        let n = self.node();
        n.rt.block_on(n.engine.deploy(rule)).unwrap();
    }

    fn emit(&mut self, id: &str, kind: &str, key: &str) {
        let e = NewEvent {
            tenant: "acme".into(),
            id: Some(id.into()),
            source: "dev".into(),
            kind: kind.into(),
            time: None,
            payload: json!({"key": key}).to_string(),
            hops: 0,
            ingested: None,
        };
        self.log.append_blocking(vec![e]).unwrap();
        self.script
            .push(json!({"id": id, "source": "dev", "kind": kind,
            "time": self.log.last_stamp(), "payload": {"key": key}}));
    }

    fn advance(&mut self, ms: i64) {
        self.h.clock.advance(ms);
        self.script.push(json!({"advance": format!("{ms}ms")}));
    }

    /// Wait until the running, unpaused rule has read the whole log, run
    /// its fires and has nothing due at the clock's time.
    fn settle(&self) {
        let Some(n) = &self.node else { return };
        if self.paused {
            return;
        }
        let mut committed = self.log.committed();
        n.rt.block_on(async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                let now = self.h.clock.now_millis();
                if let Some(s) = n.engine.status("acme", "echo")
                    && s.cursor >= self.log.last_seq()
                    && s.pending_fires == 0
                    && s.next_due.is_none_or(|d| d > now)
                {
                    return;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the rule did not settle at {now}, the log at seq {}: {:?}",
                    self.log.last_seq(),
                    n.engine.status("acme", "echo")
                );
                // A commit wakes the wait; the rule's status follows its
                // round, so look again shortly too.
                let _ = tokio::time::timeout(Duration::from_millis(20), committed.changed()).await;
            }
        });
    }

    /// Bring the engine back up and unpaused, and let it finish.
    fn finish(&mut self) {
        if self.node.is_none() {
            self.boot();
        }
        if self.paused {
            self.resume();
        }
        self.settle();
    }

    /// Every fire the engine made, as its echo output says: (partition,
    /// reason and details, events by id), sorted.
    fn engine_fires(&self) -> Vec<Value> {
        let outputs = self
            .log
            .query(&EventQuery {
                source: Some("rule:echo".into()),
                ..EventQuery::tenant("acme", 100_000)
            })
            .unwrap();
        fires(
            outputs
                .iter()
                .map(|e| serde_json::from_str(&e.payload).unwrap()),
        )
    }

    /// What `sluice test` makes of the same run: the clients' events at
    /// the times the log took them, the clock's moves and the holds.
    fn offline_fires(&self) -> Vec<Value> {
        let input: String = self.script.iter().map(|l| format!("{l}\n")).collect();
        let manifest = Manifest::parse(&self.manifest).unwrap();
        // Pruned as often as it can be: what a rule still needs stays.
        let options = sluice::offline::Options {
            prune_every: Some(1),
            ..Default::default()
        };
        let report =
            sluice::offline::run(&component_bytes(ECHO), manifest, input.as_bytes(), &options)
                .unwrap();
        fires(
            report
                .lines
                .into_iter()
                .filter(|l| l["type"] == "output")
                .map(|l| l["payload"].clone()),
        )
    }

    fn shut(mut self) {
        if let Some(n) = self.node.take() {
            n.rt.block_on(n.engine.shutdown());
        }
    }
}

/// Echo payloads without the attempt, sorted.
fn fires(payloads: impl Iterator<Item = Value>) -> Vec<Value> {
    let mut out: Vec<Value> = payloads
        .map(|mut p| {
            p.as_object_mut().unwrap().remove("attempt");
            p
        })
        .collect();
    out.sort_by_key(|p| p.to_string());
    out
}

/// The engine's fires equal `sluice test`'s over the final log.
fn agrees(w: &World) -> Vec<Value> {
    let engine = w.engine_fires();
    let offline = w.offline_fires();
    assert_eq!(engine, offline, "the engine and sluice test over its log");
    engine
}

// ---- the named cases ------------------------------------------------------

const DIGEST: &str =
    "name = \"echo\"\nversion = 1\n\n[trigger.batch]\ncount = 3\nwindow = \"1h\"\n";
const INACTIVE: &str = "name = \"echo\"\nversion = 1\n\n[trigger.dwell]\n\
    [[trigger.dwell.reactions]]\nlabel = \"inactive\"\nafter = \"1h\"\n";
const TEN_MINUTES: &str = "name = \"echo\"\nversion = 1\n\n[trigger.schedule]\n\
    cron = \"0 */10 * * * *\"\ntimezone = \"UTC\"\ncatch_up = \"all\"\n\
    overlap = \"buffer-all\"\nskip_empty = true\n";

/// How the rule was kept from keeping up.
#[derive(Debug, Clone, Copy)]
enum Hold {
    /// Paused, then resumed.
    Pause,
    /// The engine killed, then started again.
    Kill,
    /// Events stored and the clock moved on before the rule read them.
    Backlog,
}

fn hold(w: &mut World, how: Hold) {
    match how {
        Hold::Pause => w.pause(),
        Hold::Kill => w.kill(),
        Hold::Backlog => {}
    }
}

fn release(w: &mut World, how: Hold) {
    match how {
        Hold::Pause => w.resume(),
        Hold::Kill => w.boot(),
        Hold::Backlog => {}
    }
    w.settle();
}

/// A batch rule (`count = 3`, `window = "1h"`) whose second and third
/// events were stored inside the window but read after it: a digest of 3.
fn batch_counts_what_was_stored_in_the_window(how: Hold) {
    let mut w = World::new(DIGEST);
    w.emit("e1", "pr.merged", "acme/api");
    w.settle();
    hold(&mut w, how);
    w.advance(10 * MINUTE);
    w.emit("e2", "pr.merged", "acme/api");
    w.advance(10 * MINUTE);
    w.emit("e3", "pr.merged", "acme/api");
    w.advance(50 * MINUTE);
    release(&mut w, how);
    let fires = agrees(&w);
    assert_eq!(
        fires,
        vec![json!({"reason": "count-reached", "partition": "acme/api",
            "events": ["e1", "e2", "e3"]})],
        "{how:?}"
    );
    w.shut();
}

#[test]
fn a_paused_batch_rule_counts_what_was_stored_in_the_window() {
    batch_counts_what_was_stored_in_the_window(Hold::Pause);
}

#[test]
fn a_killed_batch_rule_counts_what_was_stored_in_the_window() {
    batch_counts_what_was_stored_in_the_window(Hold::Kill);
}

#[test]
fn a_batch_rule_behind_a_backlog_counts_what_was_stored_in_the_window() {
    batch_counts_what_was_stored_in_the_window(Hold::Backlog);
}

/// A dwell rule (`after = "1h"`): signed up at T0, active at T0+30m, the
/// clock at T0+70m before the rule reads the activity. The user was not
/// inactive at T0+60m; they are at T0+90m, last seen at T0+30m.
fn dwell_sees_activity_stored_before_the_deadline(how: Hold) {
    let mut w = World::new(INACTIVE);
    let t0 = w.clock().now_millis();
    w.emit("signed-up", "user.enter", "u1");
    w.settle();
    hold(&mut w, how);
    w.advance(30 * MINUTE);
    w.emit("active", "user.ping", "u1");
    w.advance(40 * MINUTE);
    release(&mut w, how);
    assert_eq!(
        agrees(&w),
        Vec::<Value>::new(),
        "{how:?}: not inactive at T0+60m"
    );
    w.advance(20 * MINUTE);
    w.settle();
    let fires = agrees(&w);
    assert_eq!(
        fires,
        vec![
            json!({"reason": "dwell", "partition": "u1", "label": "inactive",
            "ordinal": 0, "epoch": 1, "member_since": t0 + 30 * MINUTE,
            "events": ["signed-up", "active"]})
        ],
        "{how:?}"
    );
    w.shut();
}

#[test]
fn a_paused_dwell_rule_sees_activity_stored_before_the_deadline() {
    dwell_sees_activity_stored_before_the_deadline(Hold::Pause);
}

#[test]
fn a_killed_dwell_rule_sees_activity_stored_before_the_deadline() {
    dwell_sees_activity_stored_before_the_deadline(Hold::Kill);
}

#[test]
fn a_dwell_rule_behind_a_backlog_sees_activity_stored_before_the_deadline() {
    dwell_sees_activity_stored_before_the_deadline(Hold::Backlog);
}

/// The refresh is stored a moment before the engine is killed, and the
/// engine starts again after the deadline it moved.
#[test]
fn a_refresh_stored_just_before_a_kill_counts_after_the_restart() {
    let mut w = World::new(INACTIVE);
    let t0 = w.clock().now_millis();
    w.emit("signed-up", "user.enter", "u1");
    w.settle();
    w.advance(30 * MINUTE);
    w.emit("active", "user.ping", "u1");
    w.kill();
    w.advance(40 * MINUTE);
    w.boot();
    w.settle();
    assert_eq!(agrees(&w), Vec::<Value>::new(), "not inactive at T0+60m");
    w.advance(20 * MINUTE);
    w.settle();
    let fires = agrees(&w);
    assert_eq!(fires.len(), 1);
    assert_eq!(fires[0]["member_since"], json!(t0 + 30 * MINUTE));
    w.shut();
}

/// A schedule (every 10 min, `catch_up = "all"`): an event stored at
/// T0+5m, the clock at T0+25m before the rule reads it. The 00:10 tick
/// hands it over, whenever the rule ran that tick.
fn schedule_cuts_batches_where_events_were_stored(how: Hold) {
    let mut w = World::new(TEN_MINUTES);
    let t0 = w.clock().now_millis();
    w.settle();
    hold(&mut w, how);
    w.advance(5 * MINUTE);
    w.emit("order", "order.paid", "shop");
    w.advance(20 * MINUTE);
    release(&mut w, how);
    let fires = agrees(&w);
    // Caught up when the rule was not running at the tick (paused,
    // killed); on time, late, behind a backlog.
    let caught_up = !matches!(how, Hold::Backlog);
    assert_eq!(
        fires,
        vec![
            json!({"reason": "schedule", "partition": "shop", "tick": t0 + 10 * MINUTE,
            "catch_up": caught_up, "events": ["order"]})
        ],
        "{how:?}"
    );
    w.shut();
}

#[test]
fn a_paused_schedule_cuts_batches_where_events_were_stored() {
    schedule_cuts_batches_where_events_were_stored(Hold::Pause);
}

#[test]
fn a_killed_schedule_cuts_batches_where_events_were_stored() {
    schedule_cuts_batches_where_events_were_stored(Hold::Kill);
}

#[test]
fn a_schedule_behind_a_backlog_cuts_batches_where_events_were_stored() {
    schedule_cuts_batches_where_events_were_stored(Hold::Backlog);
}

// ---- the property -----------------------------------------------------------

/// One step of a random run.
#[derive(Debug, Clone)]
enum Op {
    /// An event for partition `k<key>`: enter, refresh, leave or other.
    Event(u8, u8),
    /// The clock moves on, the engine reading or not.
    Advance(u32),
    /// Let the engine catch up before going on.
    Settle,
    /// Pause the rule, or resume it.
    Toggle,
    /// Kill the engine and start it again (maybe later).
    Kill,
    /// Swap the rule for its next version.
    Swap,
}

const KINDS: [&str; 4] = ["x.enter", "x.ping", "x.leave", "x.other"];

fn ops(disturb: bool) -> impl Strategy<Value = Vec<Op>> {
    let hold = if disturb { 1 } else { 0 };
    prop::collection::vec(
        prop_oneof![
            5 => (0u8..3, 0u8..4).prop_map(|(k, m)| Op::Event(k, m)),
            2 => (1u32..150_000).prop_map(Op::Advance),
            2 => Just(Op::Settle),
            hold => Just(Op::Toggle),
            hold => Just(Op::Kill),
            1 => Just(Op::Swap),
        ],
        1..30,
    )
}

fn run(manifest: &str, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut w = World::new(manifest);
    let mut down = false;
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Event(k, m) => w.emit(&format!("e{i}"), KINDS[*m as usize], &format!("k{k}")),
            Op::Advance(ms) => w.advance(*ms as i64),
            Op::Settle => w.settle(),
            Op::Toggle if !down => {
                if w.paused {
                    w.resume()
                } else {
                    w.pause()
                }
            }
            Op::Kill if !down => {
                w.kill();
                down = true;
            }
            // A killed engine starts again at the next hold or swap.
            Op::Kill | Op::Toggle => {
                w.boot();
                down = false;
            }
            Op::Swap if !down => w.swap(),
            Op::Swap => {}
        }
    }
    w.finish();
    let engine = w.engine_fires();
    let offline = w.offline_fires();
    w.shut();
    prop_assert_eq!(engine, offline);
    Ok(())
}

/// Batch windows (count, window, debounce off).
const BATCH: &str = "name = \"echo\"\nversion = 1\n\n[trigger.batch]\ncount = 3\nwindow = \"1m\"\n";
/// Dwell memberships with an `after` reaction and `max_dwell`.
const DWELL_AFTER: &str = "name = \"echo\"\nversion = 1\n\n[trigger.dwell]\nmax_dwell = \"3m\"\n\
    [[trigger.dwell.reactions]]\nlabel = \"a\"\nafter = \"1m\"\n";
/// Dwell with an `every` reaction too.
const DWELL_EVERY: &str = "name = \"echo\"\nversion = 1\n\n[trigger.dwell]\nmax_dwell = \"3m\"\n\
    [[trigger.dwell.reactions]]\nlabel = \"a\"\nafter = \"1m\"\n\
    [[trigger.dwell.reactions]]\nlabel = \"e\"\nevery = \"45s\"\n";
/// Ticks every 20 s, per partition, queued behind a running fire.
const SCHEDULE: &str = "name = \"echo\"\nversion = 1\n\n[trigger.schedule]\n\
    cron = \"*/20 * * * * *\"\ntimezone = \"UTC\"\noverlap = \"buffer-all\"\n";

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Batch windows, through pauses, kills, swaps and backlogs.
    #[test]
    fn batch_fires_follow_from_the_log(ops in ops(true)) {
        run(BATCH, &ops)?;
    }

    /// Dwell `after` and `max_dwell`, through pauses, kills, swaps and
    /// backlogs.
    #[test]
    fn dwell_fires_follow_from_the_log(ops in ops(true)) {
        run(DWELL_AFTER, &ops)?;
    }

    /// Dwell `every` (which coalesces what fell due while the rule was not
    /// running), through swaps and backlogs.
    #[test]
    fn dwell_every_fires_follow_from_the_log(ops in ops(false)) {
        run(DWELL_EVERY, &ops)?;
    }

    /// Schedule ticks (whose catch-up policy is for ticks that fell due
    /// while the rule was not running), through swaps and backlogs.
    #[test]
    fn schedule_fires_follow_from_the_log(ops in ops(false)) {
        run(SCHEDULE, &ops)?;
    }
}
