//! A rule's task: the engine's caller of the driver.
//!
//! The task alone touches the rule's driver. It runs a round on the
//! blocking pool (commit finished fires, serve requests, a turn, start due
//! fires), spawns the fires the round handed over into the engine's work
//! slots, and sleeps until the next commit, the next deadline or retry
//! time, a finished fire, a control request or — under a manual clock —
//! the next move of the clock.
//!
//! A panic in the engine's own code during a round loses the driver: the
//! rule shows as `failed`, with the reason, in its status and on the feed
//! (`rule.failed`), and waits. A resume (or a redeploy) starts it again
//! from its durable state.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::driver::{Driven, Observer, Reply, Request, RoundIn, Runner};
use super::job::{CHAIN_BUDGET, Chain, FireJob};
use super::rule::{Deployable, RuleStatus};
use super::stats::Stats;
use super::{Work, record_lifecycle};
use crate::clock::SharedClock;
use crate::log::EventLog;
use crate::triggers::core::{Start, Step};
use crate::triggers::fires::FireAttempt;

/// Events a rule's task reads per round before it serves deadlines, fires
/// and control requests again.
const ROUND_EVENTS: usize = 4 * super::driver::STEP_EVENTS;

/// How often a running rule saves its counters.
const COUNTERS_EVERY: Duration = Duration::from_secs(30);

/// A request with where its answer goes.
pub(super) type Control = (Request, Option<Reply>);

/// Where a rule's measures go: `/metrics` (with the rule's labels) and
/// the engine's recent activity ([`Stats`]).
#[derive(Clone)]
struct Meter {
    labels: [(String, String); 2],
    stats: Arc<Stats>,
}

impl Meter {
    fn of(core: &dyn Driven, stats: &Arc<Stats>) -> Self {
        let spec = core.spec();
        Self {
            labels: [
                ("tenant".to_owned(), spec.tenant.clone()),
                ("rule".to_owned(), spec.engine_name()),
            ],
            stats: stats.clone(),
        }
    }

    fn handled(&self, took: Duration, ok: bool) {
        metrics::histogram!("sluice_handler_seconds", &self.labels).record(took.as_secs_f64());
        let [(_, tenant), (_, rule)] = &self.labels;
        self.stats.handled(tenant, rule, took, ok);
    }

    fn late(&self, late_ms: i64) {
        metrics::histogram!("sluice_timer_lateness_seconds", &self.labels)
            .record(late_ms as f64 / 1000.0);
        let [(_, tenant), (_, rule)] = &self.labels;
        self.stats.late(tenant, rule, late_ms);
    }
}

/// Run a fire's handler, timing it.
fn run_timed(job: FireJob, meter: &Meter) -> FireAttempt {
    let started = std::time::Instant::now();
    let attempt = job.run_guarded();
    meter.handled(started.elapsed(), matches!(attempt.result, Ok(Ok(_))));
    attempt
}

/// The engine's runner: a lone fire runs on the round's thread (a hop
/// would only add latency); chains go to the work slots.
struct Spawner {
    meter: Meter,
    chains: Vec<Chain>,
}

impl Runner for Spawner {
    fn run(&mut self, chain: Chain, lone: bool) -> Option<Vec<Result<FireAttempt, String>>> {
        if lone {
            return Some(chain.run(None, |job| run_timed(job, &self.meter)));
        }
        self.chains.push(chain);
        None
    }
}

/// The engine's observer: how late deadlines are handled.
struct Lateness<'a> {
    meter: &'a Meter,
}

impl Observer for Lateness<'_> {
    fn step(&mut self, _rule: &str, step: &Step, now: i64) {
        if let Some(due) = step.earliest_deadline {
            self.meter.late((now - due).max(0));
        }
    }
}

/// Everything a rule's task works with.
pub(super) struct Task {
    pub log: EventLog,
    pub clock: SharedClock,
    pub status: Arc<Mutex<RuleStatus>>,
    pub requests: mpsc::Receiver<Control>,
    pub stop: watch::Receiver<bool>,
    pub work: Work,
    /// What runs, to open it again after a failure.
    pub rule: Deployable,
    /// Bumped each time the status is written.
    pub changes: Arc<watch::Sender<u64>>,
    /// The engine's recent activity.
    pub stats: Arc<Stats>,
}

/// What a chain in the work slots came to: an attempt per fire run,
/// `Err(fire id)` per fire not started or whose run was lost.
type ChainDone = Vec<Result<FireAttempt, String>>;

/// Chains of fires running in the work slots, by task id, so a run that
/// is lost (its task cancelled or panicked) is known by its fires.
#[derive(Default)]
struct Running {
    set: JoinSet<ChainDone>,
    fires: HashMap<tokio::task::Id, Vec<String>>,
}

impl Running {
    fn spawn(&mut self, chain: Chain, work: Work, meter: Meter) {
        let ids = chain.0.iter().map(|j| j.record.fire_id.clone()).collect();
        let handle = self.set.spawn(async move {
            let permit = work.acquire().await;
            let done = tokio::task::spawn_blocking(move || {
                let done = chain.run(Some(CHAIN_BUDGET), |job| run_timed(job, &meter));
                drop(permit);
                done
            })
            .await;
            match done {
                Ok(done) => done,
                Err(e) => std::panic::resume_unwind(Box::new(e.to_string())),
            }
        });
        self.fires.insert(handle.id(), ids);
    }

    fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// A finished chain: its attempts, or its fires if its run was lost.
    fn took(
        &mut self,
        done: Result<(tokio::task::Id, ChainDone), tokio::task::JoinError>,
    ) -> ChainDone {
        match done {
            Ok((id, done)) => {
                self.fires.remove(&id);
                done
            }
            Err(e) => {
                let fires = self.fires.remove(&e.id()).unwrap_or_default();
                tracing::warn!(fires = ?fires, error = %e, "a chain of fires was lost; they run again");
                fires.into_iter().map(Err).collect()
            }
        }
    }

    async fn next(&mut self) -> Option<ChainDone> {
        let done = self.set.join_next_with_id().await?;
        Some(self.took(done))
    }

    fn try_next(&mut self) -> Option<ChainDone> {
        let done = self.set.try_join_next_with_id()?;
        Some(self.took(done))
    }
}

/// Sort a chain's results into attempts to commit and fires to run again.
fn sort_out(done: ChainDone, finished: &mut Vec<FireAttempt>, lost: &mut Vec<String>) {
    for d in done {
        match d {
            Ok(a) => finished.push(a),
            Err(fire) => lost.push(fire),
        }
    }
}

impl Task {
    /// Run the rule until told to stop.
    pub(super) async fn run(mut self, mut core: Box<dyn Driven>) {
        let mut committed = self.log.committed();
        let mut moves = self.clock.moves();
        let mut running = Running::default();
        let mut finished: Vec<FireAttempt> = Vec::new();
        let mut lost: Vec<String> = Vec::new();
        let mut pending: Vec<Control> = Vec::new();
        let mut counters_saved = tokio::time::Instant::now();
        loop {
            let stopping = *self.stop.borrow();
            if stopping && running.is_empty() && finished.is_empty() && pending.is_empty() {
                // The next opening of the state (a swap, a restart) carries
                // the counters on.
                let saved = tokio::task::spawn_blocking(move || {
                    core.serve(&Request::SaveCounters, 0).map(drop)
                })
                .await;
                if let Ok(Err(e)) = saved {
                    tracing::warn!(error = %e, "could not save the rule's counters");
                }
                return;
            }
            if counters_saved.elapsed() >= COUNTERS_EVERY {
                counters_saved = tokio::time::Instant::now();
                pending.push((Request::SaveCounters, None));
            }
            committed.borrow_and_update();
            if let Some(m) = moves.as_mut() {
                m.borrow_and_update();
            }
            while let Ok(r) = self.requests.try_recv() {
                pending.push(r);
            }
            // Fires that finished meanwhile are committed this round, even
            // while the rule is busy catching up.
            while let Some(done) = running.try_next() {
                sort_out(done, &mut finished, &mut lost);
            }
            let meter = Meter::of(&*core, &self.stats);
            let input = RoundIn {
                now: self.clock.now_millis(),
                finished: std::mem::take(&mut finished),
                requests: std::mem::take(&mut pending),
                budget: ROUND_EVENTS,
                stopping,
                flush: false,
            };
            let lost_now = std::mem::take(&mut lost);
            let clock = self.clock.clone();
            let permit = self.work.acquire().await;
            let round_meter = meter.clone();
            let joined = tokio::task::spawn_blocking(move || {
                for fire in &lost_now {
                    core.lost_fire(fire);
                }
                let mut input = input;
                // The clock is read again on the pool: the wait for a slot
                // must not make the round work at a stale time.
                input.now = clock.now_millis();
                let mut spawner = Spawner {
                    meter: round_meter.clone(),
                    chains: Vec::new(),
                };
                let out = core.round(
                    input,
                    &mut spawner,
                    &mut Lateness {
                        meter: &round_meter,
                    },
                );
                drop(permit);
                (core, out, spawner.chains)
            })
            .await;
            let (c, mut out, chains) = match joined {
                Ok(r) => r,
                Err(e) => {
                    // The driver is lost with the round: the rule is failed
                    // until resumed or redeployed.
                    match self.failed(e.to_string(), &mut running).await {
                        Some((c, done)) => {
                            core = c;
                            finished = done;
                            continue;
                        }
                        None => return,
                    }
                }
            };
            core = c;
            for chain in chains {
                running.spawn(chain, self.work.clone(), meter.clone());
            }
            {
                let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
                let last_error = out.error.clone().or_else(|| s.last_error.take());
                let last_failure = out.failure.clone().or_else(|| s.last_failure.take());
                *s = core.status();
                s.last_error = last_error;
                s.last_failure = last_failure;
            }
            self.changes.send_modify(|n| *n += 1);
            // Answered once the status is published: a read right after an
            // answer sees at least what it says.
            out.send_replies();
            if let Some(e) = &out.error {
                // Nothing of the failed piece was committed; try again shortly.
                tracing::warn!(rule = %core.spec().name, error = %e, "rule step failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    Some(done) = running.next(), if !running.is_empty() => {
                        sort_out(done, &mut finished, &mut lost);
                    }
                }
                continue;
            }
            if stopping {
                if let Some(done) = running.next().await {
                    sort_out(done, &mut finished, &mut lost);
                }
                continue;
            }
            if out.more {
                continue;
            }
            let now = self.clock.now_millis();
            let slots = (core.spec().concurrency as usize).saturating_sub(core.running());
            if slots > 0 && !core.due_fires(now, 1).is_empty() {
                continue;
            }
            // Something due now that cannot start (its partition's fire is
            // running) waits for a running fire to finish, not for a timer.
            let next = core.next_due();
            let due = next.filter(|t| *t > now);
            if due.is_none() && next.is_some() && running.is_empty() {
                continue;
            }
            let idle = next.is_none();
            loop {
                // Sleep until a commit, the next due time, a clock move, a
                // finished fire, a request or a stop.
                let timer = async {
                    match (&mut moves, due) {
                        (Some(m), _) if due.is_some() || idle => {
                            let _ = m.changed().await;
                        }
                        (None, Some(t)) => {
                            let wait = (t - self.clock.now_millis()).max(0) as u64;
                            tokio::time::sleep(Duration::from_millis(wait)).await;
                        }
                        _ => std::future::pending::<()>().await,
                    }
                };
                tokio::select! {
                    _ = committed.changed() => {}
                    _ = timer => {}
                    Some(done) = running.next(), if !running.is_empty() => {
                        sort_out(done, &mut finished, &mut lost);
                    }
                    Some(r) = self.requests.recv() => pending.push(r),
                    _ = self.stop.changed() => {}
                }
                // A commit that brought nothing past this rule's cursor (its
                // own records, say) and nothing due: sleep again, without a
                // round — a thousand idle rules cost nothing per commit. What
                // was seen is marked before it is looked at, so a commit or a
                // clock move that comes after the look still wakes the task.
                committed.borrow_and_update();
                if let Some(m) = moves.as_mut() {
                    m.borrow_and_update();
                }
                let nothing_new = finished.is_empty()
                    && lost.is_empty()
                    && pending.is_empty()
                    && !*self.stop.borrow()
                    && self.log.last_seq() <= core.seen()
                    && core.next_due().is_none_or(|t| t > self.clock.now_millis());
                if !nothing_new {
                    break;
                }
            }
        }
    }

    /// The round panicked: say so, wait for the fires still running, then
    /// for a resume (open the rule again from its durable state, with
    /// those fires' attempts to commit) or a stop (`None`).
    async fn failed(
        &mut self,
        why: String,
        running: &mut Running,
    ) -> Option<(Box<dyn Driven>, Vec<FireAttempt>)> {
        let name = self.rule.spec.name.clone();
        let reason = format!("the engine failed while running the rule: {why}");
        tracing::error!(rule = %name, error = %why, "rule task failed");
        self.status.lock().unwrap_or_else(|e| e.into_inner()).failed = Some(reason.clone());
        self.changes.send_modify(|n| *n += 1);
        let mut record = self.rule.describe();
        record["why"] = serde_json::json!(reason);
        record_lifecycle(
            &self.log,
            &self.clock,
            &self.rule.spec,
            "rule.failed",
            record,
        )
        .await;
        let mut done = Vec::new();
        while let Some(r) = running.next().await {
            // Fires not run come back pending when the rule opens again.
            done.extend(r.into_iter().flatten());
        }
        loop {
            tokio::select! {
                Some((request, reply)) = self.requests.recv() => {
                    if request != Request::Resume {
                        if let Some(reply) = reply {
                            reply.send(Err(crate::triggers::core::CoreError::State {
                                key: "task".into(),
                                problem: format!("{reason}; resume or redeploy the rule"),
                            }));
                        }
                        continue;
                    }
                    let (log, clock, rule) = (self.log.clone(), self.clock.clone(), self.rule.clone());
                    let opened = tokio::task::spawn_blocking(move || {
                        let mut core = rule.open(&log, clock.now_millis(), Start::Carry)?;
                        let answer = core.serve(&Request::Resume, clock.now_millis());
                        answer.map(|a| (core, a))
                    })
                    .await;
                    match opened {
                        Ok(Ok((core, answer))) => {
                            {
                                let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
                                *s = core.status();
                            }
                            self.changes.send_modify(|n| *n += 1);
                            if let Some(reply) = reply {
                                reply.send(Ok(answer));
                            }
                            return Some((core, done));
                        }
                        Ok(Err(e)) => {
                            if let Some(reply) = reply {
                                reply.send(Err(e));
                            }
                        }
                        Err(e) => {
                            if let Some(reply) = reply {
                                reply.send(Err(crate::triggers::core::CoreError::State {
                                    key: "task".into(),
                                    problem: e.to_string(),
                                }));
                            }
                        }
                    }
                }
                _ = self.stop.changed() => {
                    if *self.stop.borrow() {
                        return None;
                    }
                }
            }
        }
    }
}
