//! The engine: runs deployed rules against the log on the engine clock.
//!
//! Each rule has a task of its own, which alone touches the rule's core.
//! The task runs [`driver::turn`] (due deadlines, then new events in
//! bounded slices), starts the fires that are due — up to the rule's
//! concurrency at once, never two of one partition — on the blocking pool
//! (rounds and handler runs of all rules share a bound of 4 per core, so
//! a thousand rules due at once take turns on a few threads; one tenant's
//! rules hold at most half of it),
//! commits their outcomes as they finish, and serves its control channel
//! (pause, resume, re-drive, discard dead letters, stop). Then it sleeps
//! until the next commit, the next deadline or retry time, a finished
//! fire, a control request or — under a manual clock — the next move of
//! the clock.
//!
//! Stop-and-join: [`Engine::undeploy`] and a redeploy of the same name
//! stop the rule's task, let its running handlers finish and commit, and
//! wait for the task to end before anything else opens the rule's state —
//! never two dispatchers on one rule.
//!
//! - [`driver`]: the order of a rule's work, shared with `sluice test`.
//! - [`rule`]: a manifest and component made into a core of its kind.
//! - [`registry`]: which rules a server runs, kept beside their state.

pub mod driver;
pub mod registry;
pub mod rule;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

use self::rule::{Deployable, Driven, RuleStatus};
use crate::clock::SharedClock;
use crate::log::{EventLog, StateOp};
use crate::triggers::core::CoreError;
use crate::triggers::fires::{FireAttempt, FireRecord};

/// Events a rule's task reads per turn before it serves deadlines, fires
/// and control requests again.
const TURN_EVENTS: usize = 4 * driver::STEP_EVENTS;

/// A request to a rule's task.
enum Control {
    Pause(oneshot::Sender<Result<(), CoreError>>),
    Resume(oneshot::Sender<Result<(), CoreError>>),
    Redrive(String, oneshot::Sender<Result<(), CoreError>>),
    DiscardDead(String, oneshot::Sender<Result<(), CoreError>>),
    DeadLetters(oneshot::Sender<Result<Vec<FireRecord>, CoreError>>),
    Pending(oneshot::Sender<Result<Vec<FireRecord>, CoreError>>),
    /// Save the counters (the task asks itself, now and then).
    SaveCounters,
}

/// How often a running rule saves its counters.
const COUNTERS_EVERY: Duration = Duration::from_secs(30);

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No such rule is deployed.
    #[error("no rule {0} is deployed")]
    NoSuchRule(String),
    /// The rule's task has stopped.
    #[error("rule {0} is stopping")]
    Stopped(String),
    /// The rule refused or failed.
    #[error(transparent)]
    Core(#[from] CoreError),
}

/// (tenant, rule name).
type RuleKey = (String, String);

/// What an undeploy does with open windows and buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// They fire (reason drained), and pending fires run.
    Fire,
    /// They are dropped, reported as `windows.discarded`.
    Discard,
}

/// A rule's status, written by its task.
type SharedStatus = Arc<Mutex<RuleStatus>>;

/// A rule's running task, if any.
type Slot = Arc<tokio::sync::Mutex<Option<Deployed>>>;

struct Deployed {
    /// What runs, to start it again if a new version cannot open.
    rule: Deployable,
    task: JoinHandle<()>,
    control: mpsc::Sender<Control>,
    stop: watch::Sender<bool>,
}

/// Runs rules. Dropping it without [`Engine::shutdown`] aborts the tasks.
pub struct Engine {
    log: EventLog,
    clock: SharedClock,
    /// One slot per rule, locked while that rule is deployed, swapped or
    /// stopped (other rules are not held up), and briefly by requests.
    rules: Mutex<HashMap<RuleKey, Slot>>,
    /// Status by rule, readable during a swap (a rule being swapped shows
    /// its last status until the new version reports).
    statuses: Mutex<HashMap<RuleKey, SharedStatus>>,
    /// Rounds and handler runs in progress at once, across all rules: a
    /// thousand rules falling due together queue for a few threads (in
    /// turn) instead of a thread, a database connection and a sandbox
    /// each.
    work: Arc<Semaphore>,
    /// Each tenant's share of `work`: at most half of it, so one tenant's
    /// rules (a hostile one's, say) cannot hold every slot.
    shares: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// Slots for rounds and handler runs: the engine's, and the tenant's
/// share of them. A piece of work holds one of each.
#[derive(Debug, Clone)]
struct Work {
    all: Arc<Semaphore>,
    tenant: Arc<Semaphore>,
}

impl Work {
    async fn acquire(
        &self,
    ) -> (
        tokio::sync::OwnedSemaphorePermit,
        tokio::sync::OwnedSemaphorePermit,
    ) {
        // The tenant's first: a tenant at its share queues without holding
        // an engine slot.
        let tenant = self
            .tenant
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let all = self
            .all
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        (tenant, all)
    }
}

/// How many rounds and handler runs go on at once, across all rules.
fn work_permits() -> usize {
    (std::thread::available_parallelism().map_or(2, usize::from) * 4).max(8)
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

fn joined<T>(r: Result<T, tokio::task::JoinError>) -> Result<T, CoreError> {
    r.map_err(|e| CoreError::State {
        key: "task".into(),
        problem: e.to_string(),
    })
}

impl Engine {
    /// An engine over `log`, timed by `clock`. Call from a Tokio runtime.
    pub fn new(log: EventLog, clock: SharedClock) -> Self {
        Self {
            log,
            clock,
            rules: Mutex::new(HashMap::new()),
            statuses: Mutex::new(HashMap::new()),
            work: Arc::new(Semaphore::new(work_permits())),
            shares: Mutex::new(HashMap::new()),
        }
    }

    /// Start running a rule, resuming its durable state. A rule of the same
    /// tenant and name already running is stopped and joined first; the
    /// new version carries on from the state the old one committed.
    ///
    /// A version whose trigger kind differs from the kind of the rule's
    /// stored state is refused before anything changes; one that cannot
    /// open its state once the old version stopped puts the old version
    /// back and returns the error.
    pub async fn deploy(&self, rule: Deployable) -> Result<(), CoreError> {
        self.deploy_inner(rule, false).await
    }

    /// [`Self::deploy`], starting from empty state: the rule's windows,
    /// memberships, schedule position, pending fires and dead letters are
    /// dropped first (recorded as `rule.reset`), and its cursor starts
    /// again from the log's end. The way to change a rule's trigger kind.
    pub async fn deploy_reset(&self, rule: Deployable) -> Result<(), CoreError> {
        self.deploy_inner(rule, true).await
    }

    async fn deploy_inner(&self, rule: Deployable, reset: bool) -> Result<(), CoreError> {
        let key = (rule.spec.tenant.clone(), rule.spec.name.clone());
        let slot = self.slot(&key, true).expect("created");
        let mut running = slot.lock().await;
        if !reset {
            let (log, check) = (self.log.clone(), rule.clone());
            joined(tokio::task::spawn_blocking(move || check.check_state(&log)).await)??;
        }
        let previous = match running.take() {
            Some(old) => {
                let rule = old.rule.clone();
                stop_and_join(old).await;
                Some(rule)
            }
            None => None,
        };
        let previous = match reset {
            // Nothing of the old state is left to go back to.
            true => {
                self.reset(&key, &rule).await?;
                None
            }
            false => previous,
        };
        let opened = self.open(rule.clone()).await;
        let before = previous.as_ref().map(Deployable::describe);
        let (rule, core) = match (opened, previous) {
            (Ok(core), _) => (rule, core),
            (Err(e), Some(previous)) => {
                tracing::warn!(rule = %key.1, error = %e, "the new version cannot open its state; the previous one runs on");
                let core = self.open(previous.clone()).await?;
                *running = Some(self.start(&key, previous, core));
                return Err(e);
            }
            (Err(e), None) => return Err(e),
        };
        let mut record = rule.describe();
        *running = Some(self.start(&key, rule, core));
        // A swap is on the feed (a first deploy, or a start-up, is not:
        // the log then holds exactly what `sluice test` makes of it).
        if let Some(before) = before {
            record["previous"] = before;
            self.record(&key, "rule.swapped", record).await;
        }
        Ok(())
    }

    /// An engine record of the rule's lifecycle on the feed (best effort:
    /// the change itself is done; a failure to record it is logged).
    async fn record(&self, key: &RuleKey, kind: &str, payload: serde_json::Value) {
        let now = self.clock.now_millis();
        let id = format!(
            "{kind}:{}:{now}:{}",
            key.1,
            crate::triggers::fire_id(&key.1, &[&payload.to_string()])
        );
        let event = crate::triggers::engine_record(&key.0, id, kind, now, &payload);
        if let Err(e) = self.log.append(vec![event]).await {
            tracing::warn!(rule = %key.1, error = %e, "could not record {kind}");
        }
    }

    /// Drop a (stopped) rule's state and pin; its cursor starts at the log's
    /// end. One transaction, with a `rule.reset` record.
    async fn reset(&self, key: &RuleKey, rule: &Deployable) -> Result<(), CoreError> {
        self.drop_state(key, "rule.reset", &rule.describe()).await
    }

    /// Drop a stopped rule's state and release its pin, in one transaction
    /// with the engine record `kind`; a later start of the name reads on
    /// from the log's end.
    async fn drop_state(
        &self,
        key: &RuleKey,
        kind: &str,
        payload: &serde_json::Value,
    ) -> Result<(), CoreError> {
        let ns = crate::triggers::state::namespace(&key.0, &key.1);
        let last = self.log.last_seq();
        let now = self.clock.now_millis();
        let record = crate::triggers::engine_record(
            &key.0,
            format_args!("{kind}:{}:{now}:{last}", key.1),
            kind,
            now,
            payload,
        );
        let ops = vec![
            StateOp::Clear { ns: ns.clone() },
            StateOp::Put {
                ns: ns.clone(),
                key: crate::triggers::state::CURSOR.into(),
                value: last.to_string().into_bytes(),
            },
            StateOp::Pin {
                owner: ns,
                min_seq: None,
            },
        ];
        self.log.transact(vec![record], ops).await?;
        Ok(())
    }

    async fn open(&self, rule: Deployable) -> Result<Box<dyn Driven>, CoreError> {
        let log = self.log.clone();
        let now = self.clock.now_millis();
        joined(tokio::task::spawn_blocking(move || rule.open(&log, now)).await)?
    }

    /// The slots `tenant`'s rules take their work from.
    fn work_of(&self, tenant: &str) -> Work {
        let share = (work_permits() / 2).max(1);
        let tenant = self
            .shares
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(tenant.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(share)))
            .clone();
        Work {
            all: self.work.clone(),
            tenant,
        }
    }

    /// Start `core`'s task.
    fn start(&self, key: &RuleKey, rule: Deployable, core: Box<dyn Driven>) -> Deployed {
        let status = Arc::new(Mutex::new(core.status()));
        let (control, requests) = mpsc::channel(16);
        let stop = watch::channel(false).0;
        let task = tokio::spawn(rule_task(
            core,
            self.log.clone(),
            self.clock.clone(),
            status.clone(),
            requests,
            stop.subscribe(),
            self.work_of(&key.0),
        ));
        self.statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone(), status);
        Deployed {
            rule,
            task,
            control,
            stop,
        }
    }

    /// Stop a rule and wait until its task has ended (running handlers
    /// finish and commit first). Its durable state stays. False when no
    /// such rule runs.
    pub async fn undeploy(&self, tenant: &str, name: &str) -> bool {
        let key = (tenant.to_owned(), name.to_owned());
        let Some(slot) = self.slot(&key, false) else {
            return false;
        };
        let removed = slot.lock().await.take();
        self.statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        match removed {
            Some(d) => {
                let record = d.rule.describe();
                stop_and_join(d).await;
                self.record(&key, "rule.undeployed", record).await;
                true
            }
            None => false,
        }
    }

    /// Undeploy a rule, draining its open windows and buffers: with
    /// [`Drain::Fire`] each fires (reason drained) and every fire still
    /// pending runs now — retried at once up to the rule's attempts, then
    /// dead-lettered — so nothing waits for a rule that is gone; with
    /// [`Drain::Discard`] they are dropped and reported
    /// (`windows.discarded`). Then the rule's state goes — what the drain
    /// left (memberships, dead letters) is counted on the `rule.undeployed`
    /// record — and its retention pin with it; a later deploy of the name
    /// starts afresh at the log's end. False when no such rule runs.
    pub async fn undeploy_drain(
        &self,
        tenant: &str,
        name: &str,
        drain: Drain,
    ) -> Result<bool, CoreError> {
        let key = (tenant.to_owned(), name.to_owned());
        let Some(slot) = self.slot(&key, false) else {
            return Ok(false);
        };
        let mut running = slot.lock().await;
        let Some(deployed) = running.take() else {
            return Ok(false);
        };
        let rule = deployed.rule.clone();
        stop_and_join(deployed).await;
        self.statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        let mut record = rule.describe();
        record["drain"] = serde_json::json!(match drain {
            Drain::Fire => "fire",
            Drain::Discard => "discard",
        });
        let mut core = self.open(rule.clone()).await?;
        let (log, clock) = (self.log.clone(), self.clock.clone());
        let left = joined(
            tokio::task::spawn_blocking(move || -> Result<RuleStatus, CoreError> {
                let now = clock.now_millis();
                core.drain(&log, now, drain == Drain::Fire)?;
                if drain == Drain::Fire {
                    for id in core.pending() {
                        while core.fire(&id).is_some() {
                            let job = core.start(&log, &id, clock.now_millis())?;
                            core.finish(&log, job.run_guarded())?;
                        }
                    }
                }
                Ok(core.status())
            })
            .await,
        )??;
        // What the drain leaves (memberships, dead letters, fires not
        // fired) goes with the rule, counted on the record; the rule's pin
        // goes too, so retention can prune what it held. A later deploy
        // of the name starts afresh at the log's end.
        record["dropped"] = serde_json::json!({"partitions": left.partitions,
            "dead_letters": left.dead_letters, "pending_fires": left.pending_fires});
        self.drop_state(&key, "rule.undeployed", &record).await?;
        Ok(true)
    }

    /// The status of a deployed rule.
    pub fn status(&self, tenant: &str, name: &str) -> Option<RuleStatus> {
        let status = self
            .statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(tenant.to_owned(), name.to_owned()))?
            .clone();
        let status = status.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Some(status)
    }

    async fn request<T>(
        &self,
        tenant: &str,
        name: &str,
        make: impl FnOnce(oneshot::Sender<Result<T, CoreError>>) -> Control,
    ) -> Result<T, ControlError> {
        let label = format!("{tenant}/{name}");
        let slot = self
            .slot(&(tenant.to_owned(), name.to_owned()), false)
            .ok_or_else(|| ControlError::NoSuchRule(label.clone()))?;
        let sender = {
            let running = slot.lock().await;
            let d = running
                .as_ref()
                .ok_or_else(|| ControlError::NoSuchRule(label.clone()))?;
            d.control.clone()
        };
        let (reply, rx) = oneshot::channel();
        sender
            .send(make(reply))
            .await
            .map_err(|_| ControlError::Stopped(label.clone()))?;
        Ok(rx.await.map_err(|_| ControlError::Stopped(label))??)
    }

    /// Pause a rule: nothing of it is processed until resumed.
    pub async fn pause(&self, tenant: &str, name: &str) -> Result<(), ControlError> {
        self.request(tenant, name, Control::Pause).await
    }

    /// Resume a paused or suspended rule.
    pub async fn resume(&self, tenant: &str, name: &str) -> Result<(), ControlError> {
        self.request(tenant, name, Control::Resume).await
    }

    /// Re-drive a dead letter.
    pub async fn redrive(
        &self,
        tenant: &str,
        name: &str,
        fire_id: &str,
    ) -> Result<(), ControlError> {
        let id = fire_id.to_owned();
        self.request(tenant, name, |r| Control::Redrive(id, r))
            .await
    }

    /// Drop a dead letter.
    pub async fn discard_dead(
        &self,
        tenant: &str,
        name: &str,
        fire_id: &str,
    ) -> Result<(), ControlError> {
        let id = fire_id.to_owned();
        self.request(tenant, name, |r| Control::DiscardDead(id, r))
            .await
    }

    /// The rule's dead letters, oldest first.
    pub async fn dead_letters(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Vec<FireRecord>, ControlError> {
        self.request(tenant, name, Control::DeadLetters).await
    }

    /// The rule's fires waiting to run, to be retried or running, oldest
    /// first.
    pub async fn pending_fires(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Vec<FireRecord>, ControlError> {
        self.request(tenant, name, Control::Pending).await
    }

    /// The component a deployed rule runs (its fuel meter included).
    /// `None` while the rule is being swapped or stopped (a read does not
    /// wait for that).
    pub fn loaded(&self, tenant: &str, name: &str) -> Option<Deployable> {
        let slot = self.slot(&(tenant.to_owned(), name.to_owned()), false)?;
        let running = slot.try_lock().ok()?;
        running.as_ref().map(|d| d.rule.clone())
    }

    /// Stop every rule and wait for their tasks.
    pub async fn shutdown(&self) {
        let slots: Vec<Slot> = self
            .rules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        // Every rule is told to stop first, then all are joined: a grace
        // period that runs out leaves no rule still starting fires.
        let mut stopping = Vec::new();
        for slot in slots {
            if let Some(d) = slot.lock().await.take() {
                d.stop.send_replace(true);
                stopping.push(d);
            }
        }
        for d in stopping {
            stop_and_join(d).await;
        }
    }

    /// The slot of `key`, created when `create`.
    fn slot(&self, key: &RuleKey, create: bool) -> Option<Slot> {
        let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        if create {
            return Some(rules.entry(key.clone()).or_default().clone());
        }
        rules.get(key).cloned()
    }
}

async fn stop_and_join(d: Deployed) {
    d.stop.send_replace(true);
    let _ = d.task.await;
}

impl Drop for Engine {
    fn drop(&mut self) {
        let rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        for slot in rules.values() {
            if let Ok(mut running) = slot.try_lock()
                && let Some(d) = running.take()
            {
                d.task.abort();
            }
        }
    }
}

/// Answer a control request on the core (blocking: it commits).
fn serve(core: &mut dyn Driven, log: &EventLog, request: Control) {
    match request {
        Control::Pause(r) => drop(r.send(core.pause(log))),
        Control::Resume(r) => drop(r.send(core.resume(log))),
        Control::Redrive(id, r) => drop(r.send(core.redrive(log, &id))),
        Control::DiscardDead(id, r) => drop(r.send(core.discard_dead(log, &id))),
        Control::DeadLetters(r) => drop(r.send(core.dead_letters(log))),
        Control::SaveCounters => {
            if let Err(e) = core.save_counters(log) {
                tracing::warn!(error = %e, "could not save the rule's counters");
            }
        }
        Control::Pending(r) => drop(
            r.send(Ok(core
                .pending()
                .iter()
                .filter_map(|id| core.fire(id).cloned())
                .collect())),
        ),
    }
}

/// What one blocking round of the task did.
struct Round {
    core: Box<dyn Driven>,
    jobs: Vec<crate::triggers::fires::FireJob>,
    more: bool,
    error: Option<String>,
    /// The last handler failure committed this round.
    failure: Option<rule::Failure>,
}

/// Run a fire's handler, timing it for `/metrics`.
fn run_timed(job: crate::triggers::fires::FireJob, labels: &[(String, String); 2]) -> FireAttempt {
    let started = std::time::Instant::now();
    let attempt = job.run_guarded();
    metrics::histogram!("sluice_handler_seconds", labels).record(started.elapsed().as_secs_f64());
    attempt
}

/// The metric labels of a rule.
fn rule_labels(core: &dyn Driven) -> [(String, String); 2] {
    let spec = core.spec();
    [
        ("tenant".to_owned(), spec.tenant.clone()),
        ("rule".to_owned(), spec.name.clone()),
    ]
}

/// One round on the blocking pool: commit finished fires, serve control
/// requests, take a turn, start due fires into free slots.
fn round(
    mut core: Box<dyn Driven>,
    log: &EventLog,
    clock: &dyn crate::clock::Clock,
    finished: Vec<FireAttempt>,
    requests: Vec<Control>,
    stopping: bool,
) -> Round {
    let mut error = None;
    let mut failure = None;
    let labels = rule_labels(&*core);
    for attempt in finished {
        let failed = rule::Failure::of(&attempt);
        match core.finish(log, attempt) {
            Ok(_) => failure = failed.or(failure),
            Err(e) => error = Some(e.to_string()),
        }
    }
    for r in requests {
        serve(&mut *core, log, r);
    }
    if stopping {
        return Round {
            core,
            jobs: Vec::new(),
            more: false,
            error,
            failure,
        };
    }
    // How late the earliest deadline is served (it is served now).
    if let Some(due) = core.next_due() {
        let late = clock.now_millis() - due;
        if late >= 0 {
            metrics::histogram!("sluice_timer_lateness_seconds", &labels)
                .record(late as f64 / 1000.0);
        }
    }
    let mut more = false;
    match driver::turn(&mut *core, log, clock, TURN_EVENTS) {
        Ok(t) => more = t.more,
        Err(e) => error = Some(e.to_string()),
    }
    let now = clock.now_millis();
    let slots = (core.spec().concurrency as usize).saturating_sub(core.running());
    let mut jobs = Vec::new();
    let due = core.due_fires(now, slots.saturating_add(1));
    // A lone fire of a rule with nothing else to read runs right here: a
    // thread hop would only add latency, there is nothing to overlap.
    let inline =
        slots > 0 && due.len() == 1 && core.running() == 0 && core.cursor() >= log.last_seq();
    for id in due.into_iter().take(slots) {
        match core.start(log, &id, now) {
            Ok(job) if inline => {
                let attempt = run_timed(job, &labels);
                let failed = rule::Failure::of(&attempt);
                match core.finish(log, attempt) {
                    Ok(_) => failure = failed.or(failure),
                    Err(e) => error = Some(e.to_string()),
                }
            }
            Ok(job) => jobs.push(job),
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    Round {
        core,
        jobs,
        more,
        error,
        failure,
    }
}

async fn rule_task(
    mut core: Box<dyn Driven>,
    log: EventLog,
    clock: SharedClock,
    status: Arc<Mutex<RuleStatus>>,
    mut requests: mpsc::Receiver<Control>,
    mut stop: watch::Receiver<bool>,
    work: Work,
) {
    let mut committed = log.committed();
    let mut moves = clock.moves();
    let mut running: JoinSet<FireAttempt> = JoinSet::new();
    let mut finished = Vec::new();
    let mut pending_requests = Vec::new();
    let mut counters_saved = tokio::time::Instant::now();
    loop {
        let stopping = *stop.borrow();
        if stopping && running.is_empty() && finished.is_empty() && pending_requests.is_empty() {
            // The next opening of the state (a swap, a restart) carries
            // the counters on.
            let log = log.clone();
            let saved = tokio::task::spawn_blocking(move || core.save_counters(&log)).await;
            if let Ok(Err(e)) = saved {
                tracing::warn!(error = %e, "could not save the rule's counters");
            }
            return;
        }
        if counters_saved.elapsed() >= COUNTERS_EVERY {
            counters_saved = tokio::time::Instant::now();
            pending_requests.push(Control::SaveCounters);
        }
        committed.borrow_and_update();
        if let Some(m) = moves.as_mut() {
            m.borrow_and_update();
        }
        while let Ok(r) = requests.try_recv() {
            pending_requests.push(r);
        }
        // Fires that finished meanwhile are committed this round, even
        // while the rule is busy catching up.
        while let Some(done) = running.try_join_next() {
            if let Ok(a) = done {
                finished.push(a);
            }
        }
        let (log2, clock2, done, reqs) = (
            log.clone(),
            clock.clone(),
            std::mem::take(&mut finished),
            std::mem::take(&mut pending_requests),
        );
        let permit = work.acquire().await;
        let r = match tokio::task::spawn_blocking(move || {
            let r = round(core, &log2, &*clock2, done, reqs, stopping);
            drop(permit);
            r
        })
        .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "rule task panicked");
                return;
            }
        };
        core = r.core;
        for job in r.jobs {
            let work = work.clone();
            let labels = rule_labels(&*core);
            running.spawn(async move {
                let permit = work.acquire().await;
                let attempt = tokio::task::spawn_blocking(move || {
                    let a = run_timed(job, &labels);
                    drop(permit);
                    a
                })
                .await;
                attempt.expect("a guarded job does not panic")
            });
        }
        {
            let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
            let last_error = r.error.clone().or_else(|| s.last_error.take());
            let last_failure = r.failure.clone().or_else(|| s.last_failure.take());
            *s = core.status();
            s.last_error = last_error;
            s.last_failure = last_failure;
        }
        if let Some(e) = &r.error {
            // Nothing of the failed piece was committed; try again shortly.
            tracing::warn!(rule = %core.spec().name, error = %e, "rule step failed; retrying");
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                Some(done) = running.join_next(), if !running.is_empty() => {
                    if let Ok(a) = done { finished.push(a) }
                }
            }
            continue;
        }
        if stopping {
            if let Some(done) = running.join_next().await
                && let Ok(a) = done
            {
                finished.push(a);
            }
            continue;
        }
        if r.more {
            continue;
        }
        let now = clock.now_millis();
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
        let core_idle = next.is_none();
        loop {
            // Sleep until a commit, the next due time, a clock move, a
            // finished fire, a request or a stop.
            let timer = async {
                match (&mut moves, due) {
                    (Some(m), _) if due.is_some() || core_idle => {
                        let _ = m.changed().await;
                    }
                    (None, Some(t)) => {
                        let wait = (t - clock.now_millis()).max(0) as u64;
                        tokio::time::sleep(Duration::from_millis(wait)).await;
                    }
                    _ => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = committed.changed() => {}
                _ = timer => {}
                Some(done) = running.join_next(), if !running.is_empty() => {
                    if let Ok(a) = done { finished.push(a) }
                }
                Some(r) = requests.recv() => pending_requests.push(r),
                _ = stop.changed() => {}
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
                && pending_requests.is_empty()
                && !*stop.borrow()
                && log.last_seq() <= core.seen()
                && core.next_due().is_none_or(|t| t > clock.now_millis());
            if !nothing_new {
                break;
            }
        }
    }
}
