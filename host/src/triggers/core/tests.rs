//! The core on its own: no SQLite, no Wasm. Writes go to an in-memory
//! map of state rows, and what the core writes it must load back.

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::event::Event;
use crate::log::StateOp;
use crate::manifest::{BatchTrigger, CatchUp, Expire, Overlap, ScheduleTrigger};
use crate::triggers::FireReason;
use crate::triggers::batch::Batch;
use crate::triggers::fires::{FireAttempt, FireOutcome, HandlerError, Output};
use crate::triggers::schedule::Schedule;
use crate::verdict::{Membership, Placement, Verdict};

const S: i64 = 1_000;

/// The rule's namespace as the core writes it: rows by key.
#[derive(Default)]
struct Rows(BTreeMap<String, Vec<u8>>);

impl Rows {
    fn apply(&mut self, writes: &Writes) {
        for op in &writes.ops {
            match op {
                StateOp::Put { key, value, .. } => {
                    self.0.insert(key.clone(), value.clone());
                }
                StateOp::Delete { key, .. } => {
                    self.0.remove(key);
                }
                StateOp::DeletePrefix { prefix, .. } => {
                    self.0.retain(|k, _| !k.starts_with(prefix))
                }
                StateOp::DeleteRange { from, to, .. } => {
                    self.0.retain(|k, _| k < from || k >= to);
                }
                StateOp::Clear { .. } => self.0.clear(),
                StateOp::Pin { .. } | StateOp::Fence { .. } => {}
            }
        }
    }

    fn rows(&self) -> Vec<(String, Vec<u8>)> {
        self.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// A core with its rows, driven the way the driver drives it.
struct Bench<K: Kind> {
    core: RuleCore<K>,
    rows: Rows,
    kind: K,
}

impl<K: Kind + Clone> Bench<K> {
    fn new(kind: K, now: i64) -> Self {
        let mut b = Self {
            core: RuleCore::load(RuleSpec::with_defaults("t", "r"), kind.clone(), Vec::new())
                .unwrap(),
            rows: Rows::default(),
            kind,
        };
        let (w, begin) = b.core.begin(now, Start::Cold);
        b.rows.apply(&w);
        b.core.begun(begin);
        b
    }

    /// Plan, write, apply.
    fn step(&mut self, events: &[Event], horizon: i64) -> Step {
        let verdicts: Vec<Verdict> = events.iter().map(keep).collect();
        let mut plan = self.core.plan(&Input::events(events, &verdicts, horizon));
        let w = self.core.writes(&mut plan);
        self.rows.apply(&w);
        self.core.apply(plan)
    }

    /// Load the core again from its rows (a restart).
    fn reload(&mut self, now: i64) {
        self.restart(now, Start::Cold);
    }

    /// Load the core again from its rows and start it as `start` says.
    fn restart(&mut self, now: i64, start: Start) {
        let core = RuleCore::load(
            RuleSpec::with_defaults("t", "r"),
            self.kind.clone(),
            self.rows.rows(),
        )
        .unwrap();
        self.core = core;
        let (w, begin) = self.core.begin(now, start);
        self.rows.apply(&w);
        self.core.begun(begin);
    }
}

/// Event `seq` for partition `key`, ingested at `at`.
fn ev(seq: u64, key: &str, at: i64) -> Event {
    Event {
        seq,
        id: format!("e{seq}"),
        tenant: "t".into(),
        source: "dev".into(),
        kind: "k".into(),
        time: 0,
        ingested: at,
        payload: format!("{{\"key\":\"{key}\"}}"),
        hops: 0,
    }
}

fn keep(e: &Event) -> Verdict {
    let v: serde_json::Value = serde_json::from_str(&e.payload).unwrap();
    Verdict::Keep(Placement {
        partition: v["key"].as_str().map(str::to_owned),
        membership: Membership::Enter,
    })
}

fn batch(count: u32, window_s: u64) -> Batch {
    Batch::from(&BatchTrigger {
        count,
        window: Duration::from_secs(window_s),
        expire: Expire::Fire,
        debounce: false,
        max_wait: None,
    })
}

fn summary(fires: &[FireRecord]) -> Vec<(String, &'static str, Vec<u64>, i64)> {
    fires
        .iter()
        .map(|f| {
            (
                f.partition.clone().unwrap_or_default(),
                f.reason.name(),
                f.seqs.clone(),
                f.created_at,
            )
        })
        .collect()
}

#[test]
fn events_and_deadlines_are_handed_over_in_time_order() {
    let mut b = Bench::new(batch(10, 60), 0);
    // a opens at 0 (deadline 60 s); b's event at 70 s comes after it; a's
    // second event at exactly 60 s comes after the deadline too.
    let step = b.step(
        &[ev(1, "a", 0), ev(2, "a", 60 * S), ev(3, "b", 70 * S)],
        70 * S,
    );
    assert_eq!(
        summary(&step.fires),
        vec![("a".into(), "window-expired", vec![1], 60 * S)],
        "the deadline at 60 s fires before the events at and after it"
    );
    assert_eq!(b.core.partition(Some("a")).unwrap().seqs, vec![2]);
    assert_eq!(b.core.partition(Some("b")).unwrap().opened_at, 70 * S);
    assert_eq!(step.earliest_deadline, Some(60 * S));
}

#[test]
fn a_deadline_waits_for_the_horizon() {
    let mut b = Bench::new(batch(10, 60), 0);
    let step = b.step(&[ev(1, "a", 0)], 59 * S);
    assert!(step.fires.is_empty());
    // The log is known only up to 59 s: nothing past it is handled.
    assert!(b.step(&[], 59 * S).fires.is_empty());
    let step = b.step(&[], 60 * S);
    assert_eq!(summary(&step.fires)[0].2, vec![1]);
}

#[test]
fn a_backlog_of_deadlines_is_taken_a_capped_step_at_a_time_in_time_order() {
    // More windows expire at once than one step handles, and an event
    // comes after them: each step takes the next deadlines, the event
    // waits until none is left before it, and the fires are those of one
    // uninterrupted reading, in the same order.
    let n = DEADLINES_PER_STEP * 2 + 10;
    let mut b = Bench::new(batch(10, 60), 0);
    let opening: Vec<Event> = (0..n as u64)
        .map(|i| ev(i + 1, &format!("p{i:05}"), i as i64))
        .collect();
    b.step(&opening, n as i64);
    let late = ev(n as u64 + 1, "late", 3_600 * S);
    let mut fires = Vec::new();
    let mut steps = 0;
    loop {
        let step = b.step(std::slice::from_ref(&late), 3_600 * S);
        steps += 1;
        assert!(step.fires.len() <= DEADLINES_PER_STEP);
        fires.extend(step.fires);
        if !step.capped {
            assert_eq!(
                step.cursor, late.seq,
                "the event is taken after the backlog"
            );
            break;
        }
        assert_eq!(step.cursor, n as u64, "a capped step leaves the event");
    }
    assert_eq!(steps, 3);
    let expected: Vec<(String, Vec<u64>, i64)> = (0..n as u64)
        .map(|i| (format!("p{i:05}"), vec![i + 1], 60 * S + i as i64))
        .collect();
    let got: Vec<(String, Vec<u64>, i64)> = summary(&fires)
        .into_iter()
        .map(|(p, _, seqs, at)| (p, seqs, at))
        .collect();
    assert_eq!(got, expected);
    assert_eq!(b.core.partition(Some("late")).unwrap().seqs, vec![late.seq]);
}

#[test]
fn windows_open_at_ingest_time_whenever_they_are_read() {
    // Three events stored inside an hour's window, read two hours later:
    // one batch of three, at count-reached.
    let mut b = Bench::new(batch(3, 3_600), 0);
    let step = b.step(
        &[ev(1, "a", 0), ev(2, "a", 600 * S), ev(3, "a", 1_200 * S)],
        7_200 * S,
    );
    assert_eq!(
        summary(&step.fires),
        vec![("a".into(), "count-reached", vec![1, 2, 3], 1_200 * S)]
    );
}

#[test]
fn what_the_core_writes_it_loads_back() {
    let mut b = Bench::new(batch(3, 60), 0);
    b.step(&[ev(1, "a", 0), ev(2, "b", S), ev(3, "a", 2 * S)], 2 * S);
    let cursor = b.core.cursor();
    b.reload(10 * S);
    assert_eq!(b.core.cursor(), cursor);
    assert_eq!(b.core.partition(Some("a")).unwrap().seqs, vec![1, 3]);
    assert_eq!(b.core.partition(Some("b")).unwrap().seqs, vec![2]);
    assert_eq!(b.core.next_deadline(), Some(60 * S));
    // The kind row was written once, at the first start.
    assert_eq!(b.rows.0.get("kind").map(Vec::as_slice), Some(&b"batch"[..]));
}

#[test]
fn a_fire_completes_once_and_its_writes_carry_the_outputs() {
    let mut b = Bench::new(batch(1, 60), 0);
    let step = b.step(&[ev(1, "a", 0)], 0);
    let id = step.fires[0].fire_id.clone();
    let record = b.core.start(&id).unwrap();
    assert!(b.core.start(&id).is_ok(), "marked running, still pending");
    let attempt = FireAttempt {
        attempt: 1,
        now: 5 * S,
        input_hops: 0,
        logs: vec!["stdout: hi".into()],
        events: Vec::new(),
        result: Ok(Ok(vec![Output {
            kind: "digest".into(),
            payload: "{}".into(),
        }])),
        record,
    };
    let (w, plan) = b.core.finish(&attempt);
    let kinds: Vec<&str> = w.records.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(kinds, ["digest", "fire.completed"]);
    assert_eq!(
        w.records[0].id.as_deref(),
        Some(format!("sluice:{id}.0").as_str())
    );
    b.rows.apply(&w);
    let report = crate::log::AppendReport {
        seqs: vec![2, 3],
        ..Default::default()
    };
    let outcome = b.core.finished(plan, &report).unwrap();
    assert_eq!(
        outcome,
        FireOutcome::Completed {
            outputs: vec![2],
            dropped: 0
        }
    );
    assert!(b.core.fire(&id).is_none());
    assert!(
        !b.rows.0.keys().any(|k| k.starts_with("f/")),
        "out of the outbox"
    );
}

#[test]
fn failures_retry_then_dead_letter_and_trip_the_breaker() {
    let mut b = Bench::new(batch(1, 60), 0);
    b.core.spec.retry.max_attempts = 2;
    b.core.spec.retry.suspend_after = 1;
    let id = b.step(&[ev(1, "a", 0)], 0).fires[0].fire_id.clone();
    let fail = |b: &mut Bench<Batch>, n: u32, now: i64| {
        let record = b.core.start(&id).unwrap();
        let attempt = FireAttempt {
            attempt: n,
            now,
            input_hops: 0,
            logs: Vec::new(),
            events: Vec::new(),
            result: Ok(Err(HandlerError {
                message: "boom".into(),
                fatal: false,
                backtrace: None,
                stderr: Vec::new(),
            })),
            record,
        };
        let (w, plan) = b.core.finish(&attempt);
        b.rows.apply(&w);
        (b.core.finished(plan, &Default::default()).unwrap(), w)
    };
    let (first, w) = fail(&mut b, 1, 0);
    let FireOutcome::Retry { at, .. } = first else {
        panic!("{first:?}")
    };
    assert!(
        (500..=1_000).contains(&at),
        "backoff of 1 s, jittered: {at}"
    );
    assert_eq!(w.records[0].kind, "fire.failed");
    assert!(
        b.core.due_fires(at - 1, 10).is_empty(),
        "waits for its retry"
    );
    assert_eq!(b.core.due_fires(at, 10), vec![id.clone()]);
    let (second, w) = fail(&mut b, 2, at);
    assert!(
        matches!(second, FireOutcome::DeadLettered { .. }),
        "{second:?}"
    );
    assert_eq!(w.records[0].kind, "fire.dead_lettered");
    assert!(b.core.suspended().unwrap().contains("1 fires in a row"));
    assert!(b.rows.0.contains_key(&format!("d/{id}")));
    b.reload(10 * S);
    assert!(b.core.suspended().is_some(), "the suspension is durable");
    assert_eq!(b.core.fires().dead_len(), 1);
}

/// The pin a write sets.
fn pin_of(w: &Writes) -> Option<u64> {
    w.ops.iter().find_map(|op| match op {
        StateOp::Pin { min_seq, .. } => *min_seq,
        _ => None,
    })
}

#[test]
fn a_dead_letter_keeps_its_batch_and_holds_back_no_retention() {
    let mut b = Bench::new(batch(1, 60), 0);
    b.core.spec.retry.max_attempts = 1;
    b.step(&[ev(1, "a", 0)], 0);
    let id = b.core.fires().ids().next().unwrap().to_owned();
    let attempt = |b: &mut Bench<Batch>, ok: bool| {
        let record = b.core.start(&id).unwrap();
        FireAttempt {
            attempt: 1,
            now: S,
            input_hops: 0,
            logs: Vec::new(),
            events: vec![ev(1, "a", 0)],
            result: Ok(if ok {
                Ok(Vec::new())
            } else {
                Err(HandlerError {
                    message: "boom".into(),
                    fatal: true,
                    backtrace: None,
                    stderr: Vec::new(),
                })
            }),
            record,
        }
    };
    let failed = attempt(&mut b, false);
    let (w, plan) = b.core.finish(&failed);
    assert_eq!(
        pin_of(&w),
        Some(2),
        "the dead letter holds nothing: the pin is the cursor's next"
    );
    b.rows.apply(&w);
    let outcome = b.core.finished(plan, &Default::default()).unwrap();
    assert!(matches!(outcome, FireOutcome::DeadLettered { .. }));
    let kept: Vec<Event> = serde_json::from_slice(&b.rows.0[&format!("k/{id}")]).unwrap();
    assert_eq!(kept, vec![ev(1, "a", 0)]);
    let dead: FireRecord = serde_json::from_slice(&b.rows.0[&format!("d/{id}")]).unwrap();
    assert!(dead.kept && dead.first_seq().is_none());
    // After a restart, re-driven: pending without a pin, and its success
    // drops the kept batch.
    b.reload(2 * S);
    let (w, record) = b.core.redrive(dead);
    b.rows.apply(&w);
    b.core.redriven(record);
    let done = attempt(&mut b, true);
    let (w, plan) = b.core.finish(&done);
    assert_eq!(pin_of(&w), Some(2));
    b.rows.apply(&w);
    b.core.finished(plan, &Default::default()).unwrap();
    assert!(
        !b.rows.0.keys().any(|k| k.starts_with("k/")),
        "{:?}",
        b.rows.0.keys()
    );
}

#[test]
fn a_poison_event_is_isolated_then_skipped() {
    let mut b = Bench::new(batch(10, 60), 0);
    let failure = SelectFailure {
        message: "trap".into(),
        maybe_machine: false,
    };
    // Several candidates: isolate, one at a time from now on.
    assert!(b.core.select_failed(3, &[1, 2, 3], &failure, 0).is_none());
    assert_eq!(b.core.select_limit(100), 1);
    b.core.select_ok(1);
    // Event 2 fails: three attempts (the default) before it is skipped.
    assert!(b.core.select_failed(1, &[2], &failure, 0).is_none());
    assert!(b.core.select_failed(1, &[2], &failure, 0).is_none());
    let (w, plan) = b.core.select_failed(1, &[2], &failure, 0).unwrap();
    assert_eq!(w.records[0].kind, "event.skipped");
    b.rows.apply(&w);
    b.core.poisoned(plan);
    assert_eq!(b.core.cursor(), 2);
    assert_eq!(b.core.counters().skipped_events, 1);
    // A timeout that may be the machine's weighs a third.
    let machine = SelectFailure {
        maybe_machine: true,
        ..failure
    };
    for _ in 0..8 {
        assert!(b.core.select_failed(1, &[3], &machine, 0).is_none());
    }
    assert!(b.core.select_failed(1, &[3], &machine, 0).is_some());
}

fn schedule(catch_up: CatchUp) -> Schedule {
    Schedule::new(&ScheduleTrigger {
        cron: "0 * * * * *".into(),
        timezone: "UTC".into(),
        overlap: Overlap::BufferAll,
        catch_up,
        catch_up_window: Duration::from_secs(86_400),
        skip_empty: true,
    })
    .unwrap()
}

/// A step's schedule fires as (tick, catch-up, seqs).
fn ticks_of(step: &Step) -> Vec<(i64, bool, Vec<u64>)> {
    step.fires
        .iter()
        .map(|f| match f.reason {
            FireReason::Schedule { tick, catch_up } => (tick, catch_up, f.seqs.clone()),
            _ => unreachable!(),
        })
        .collect()
}

#[test]
fn a_tick_takes_the_events_ingested_before_it() {
    let mut b = Bench::new(schedule(CatchUp::Skip), 0);
    // Read late, at 130 s: the event at 30 s goes to the 60 s tick, the
    // one at 90 s to the 120 s tick.
    let step = b.step(&[ev(1, "a", 30 * S), ev(2, "a", 90 * S)], 130 * S);
    let ticks = ticks_of(&step);
    assert_eq!(
        ticks,
        vec![(60 * S, false, vec![1]), (120 * S, false, vec![2])]
    );
}

#[test]
fn ticks_missed_while_not_running_follow_the_catch_up_policy() {
    let mut b = Bench::new(schedule(CatchUp::Latest), 0);
    b.step(&[ev(1, "a", 30 * S)], 30 * S);
    // Down from 30 s to 250 s: ticks at 60, 120, 180 and 240 s fell due
    // while the rule was not running; the latest runs, with the event.
    b.reload(250 * S);
    let step = b.step(&[], 250 * S);
    let missed = step.missed.clone().unwrap();
    assert_eq!(
        (missed.ticks, missed.first, missed.last),
        (3, 60 * S, 180 * S)
    );
    assert_eq!(summary(&step.fires)[0].2, vec![1]);
    assert_eq!(
        step.fires[0].reason,
        FireReason::Schedule {
            tick: 240 * S,
            catch_up: true
        }
    );
    assert_eq!(b.core.counters().ticks_missed, 3);
}

#[test]
fn a_restart_after_a_known_running_time_misses_only_the_outage() {
    // Running from 0; the engine was known to run until 130 s and came
    // back at 250 s, before it had handled the 60 s and 120 s ticks (it
    // lagged, then crashed). Those fell due while it ran: they fire on
    // time's terms, not as catch-up. The ticks at 180 and 240 s fell in
    // the outage: the policy (latest) runs 240 s only.
    let mut b = Bench::new(schedule(CatchUp::Latest), 0);
    b.step(&[ev(1, "a", 30 * S)], 30 * S);
    b.restart(
        250 * S,
        Start::After {
            from: 130 * S,
            until: 250 * S,
        },
    );
    let step = b.step(&[ev(2, "a", 100 * S)], 250 * S);
    let ticks = ticks_of(&step);
    assert_eq!(
        ticks,
        vec![(60 * S, false, vec![1]), (120 * S, false, vec![2])],
        "no events wait for the 240 s tick (skip_empty)"
    );
    let missed = step.missed.clone().unwrap();
    assert_eq!(
        (missed.ticks, missed.first, missed.last),
        (1, 180 * S, 180 * S)
    );
    // With no mark (`Cold`), all four would have counted as missed.
    let mut cold = Bench::new(schedule(CatchUp::Latest), 0);
    cold.step(&[ev(1, "a", 30 * S)], 30 * S);
    cold.restart(250 * S, Start::Cold);
    let step = cold.step(&[ev(2, "a", 100 * S)], 250 * S);
    assert_eq!(step.missed.clone().unwrap().ticks, 3);
    // Moved to another node while the engine ran (an empty outage): the
    // four ticks are late, none missed — the same fires as if it had
    // kept running.
    let mut moved = Bench::new(schedule(CatchUp::Latest), 0);
    moved.step(&[ev(1, "a", 30 * S)], 30 * S);
    moved.restart(
        250 * S,
        Start::After {
            from: 250 * S,
            until: 250 * S,
        },
    );
    let step = moved.step(&[ev(2, "a", 100 * S)], 250 * S);
    assert!(step.missed.is_none(), "{:?}", step.missed);
    assert!(
        ticks_of(&step).iter().all(|(_, catch_up, _)| !catch_up),
        "{:?}",
        ticks_of(&step)
    );
}

#[test]
fn inspection_pages_partitions_in_key_order_with_their_deadlines() {
    let mut b = Bench::new(batch(10, 60), 0);
    let keys = ["e", "b", "d", "a", "c"];
    let events: Vec<Event> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| ev(i as u64 + 1, k, 1_000 * i as i64))
        .collect();
    b.step(&events, 10_000);
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = b.core.inspect(after.as_deref(), 2, 5);
        assert_eq!(page.total, 5);
        assert!(page.partitions.len() <= 2);
        for p in &page.partitions {
            let key = p.partition.clone().unwrap();
            let opened = p.state["opened_at"].as_i64().unwrap();
            assert_eq!(p.deadline, Some(opened + 60_000), "{key}");
            assert_eq!(p.state["events"], 1);
            seen.push(key);
        }
        match page.next_after {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, ["a", "b", "c", "d", "e"]);
    assert!(b.core.inspect(Some("e"), 2, 5).partitions.is_empty());
    // A batch rule has no ticks.
    assert!(b.core.inspect(None, 2, 5).next_ticks.is_empty());
}

#[test]
fn inspection_shows_a_schedules_next_ticks() {
    let b = Bench::new(schedule(CatchUp::Skip), 0);
    let page = b.core.inspect(None, 10, 3);
    assert_eq!(page.next_ticks.len(), 3);
    assert!(page.next_ticks.windows(2).all(|w| w[0] < w[1]));
}
