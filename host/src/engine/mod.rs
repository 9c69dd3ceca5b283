//! The engine: runs deployed rules against the log on the engine clock.
//!
//! Each rule has a task of its own (`task.rs`), which alone drives the
//! rule through its [`driver`]: rounds on the blocking pool (rounds and
//! handler runs of all rules share a bound of 4 per core, so a thousand
//! rules due at once take turns on a few threads; one tenant's rules hold
//! at most half of it), fires in the engine's work slots, control requests
//! served between rounds.
//!
//! Stop-and-join: [`Engine::undeploy`] and a redeploy of the same name
//! stop the rule's task, let its running handlers finish and commit, and
//! wait for the task to end before anything else opens the rule's state —
//! never two dispatchers on one rule.
//!
//! - [`deploy`]: deployments — the deploy saga, undeploys, tenant
//!   deletion, the start-up restore — below any front door.
//! - [`driver`]: the one driver of a rule's round and writes, shared with
//!   `sluice test`.
//! - [`job`]: running a fire's handler.
//! - `task.rs`: a rule's task.
//! - [`rule`]: a manifest and component made into a driver of its kind.
//! - [`registry`]: which rules a server runs, kept beside their state.
//! - [`shadow`]: a shadow's kept records, its state copy, and the diff
//!   of a rule and its shadow.
//! - [`stats`]: recent activity per minute (fires, latency, lateness,
//!   ingest) for the dashboard's charts.

pub mod alive;
pub mod cluster;
pub mod deploy;
pub mod driver;
pub mod job;
pub mod registry;
pub mod rule;
pub mod shadow;
pub mod stats;
mod task;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use self::driver::{Answer, Driven, Inline, Quiet, Request, RoundIn};
use self::rule::{Deployable, RuleStatus};
use self::task::{Control, Task};
use crate::clock::SharedClock;
use crate::log::{EventLog, StateOp};
use crate::triggers::core::{CoreError, Inspection, RuleSpec, Start, Writes};
use crate::triggers::fires::FireRecord;

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

/// A commit made while a rule is swapped: after the old version stopped
/// (given), before the new one starts.
pub type SwapCommit = Box<dyn FnOnce(Option<&Deployable>) -> Result<(), CoreError> + Send>;

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

impl Drain {
    /// `fire` or `discard`, as a request spells it (`None`: `fire`).
    pub fn parse(text: Option<&str>) -> Result<Self, String> {
        match text.unwrap_or("fire") {
            "fire" => Ok(Drain::Fire),
            "discard" => Ok(Drain::Discard),
            other => Err(format!("drain: {other:?} must be fire or discard")),
        }
    }

    /// The name a request spells.
    pub fn name(self) -> &'static str {
        match self {
            Drain::Fire => "fire",
            Drain::Discard => "discard",
        }
    }
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
    /// The slots shadows take turns on (see [`Engine::deploy_shadow`]),
    /// apart from the live rules': one in the engine, one per tenant.
    shadow_work: Arc<Semaphore>,
    shadow_shares: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Counts rule status changes: a watcher wakes when any rule's status
    /// moves (see [`Engine::status_changes`]).
    changes: Arc<watch::Sender<u64>>,
    /// Recent activity per minute.
    stats: Arc<stats::Stats>,
    /// The outage before a rule's start, if known (see [`alive`]): this
    /// engine's own, and for rules taken over from a node that stopped
    /// while this one ran, none.
    outages: Mutex<Outages>,
}

/// See [`Engine::started_after`] and [`Engine::rule_taken_over`].
#[derive(Debug)]
struct Outages {
    /// How this engine's start followed the run before it.
    start: Start,
    /// When this engine started (engine time).
    started: i64,
    /// Rules taken over from a node that ran past `started`: moved, not
    /// down.
    moved: HashMap<RuleKey, Start>,
}

/// Slots for rounds and handler runs: the engine's, and the tenant's
/// share of them. A piece of work holds one of each.
#[derive(Debug, Clone)]
pub(crate) struct Work {
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
            rules: Mutex::new(HashMap::new()),
            statuses: Mutex::new(HashMap::new()),
            work: Arc::new(Semaphore::new(work_permits())),
            shares: Mutex::new(HashMap::new()),
            shadow_work: Arc::new(Semaphore::new(1)),
            shadow_shares: Mutex::new(HashMap::new()),
            changes: Arc::new(watch::channel(0).0),
            stats: stats::Stats::new(clock.clone()),
            outages: Mutex::new(Outages {
                start: Start::Cold,
                started: i64::MIN,
                moved: HashMap::new(),
            }),
            clock,
        }
    }

    /// This engine started at `now`, after the outage `start` describes
    /// ([`alive::outage_before`]): rules it restarts from their state
    /// miss what fell due in that outage, and only that.
    pub fn started_after(&self, now: i64, start: Start) {
        let mut outages = self.outages.lock().unwrap_or_else(|e| e.into_inner());
        outages.start = start;
        outages.started = now;
    }

    /// Rule `tenant`/`name` is about to be taken over from a node whose
    /// liveness mark is `mark`. A node that ran past this engine's start
    /// stopped while this one ran: the rule moved, the engine was not
    /// down, and its due work is late, not missed. Otherwise the rule was
    /// down with the engine (this engine's own outage).
    pub fn rule_taken_over(&self, tenant: &str, name: &str, mark: Option<i64>) {
        let mut outages = self.outages.lock().unwrap_or_else(|e| e.into_inner());
        let key = (tenant.to_owned(), name.to_owned());
        match mark {
            Some(at) if at >= outages.started => {
                let moved = Start::After {
                    from: at,
                    until: at,
                };
                outages.moved.insert(key, moved);
            }
            _ => {
                outages.moved.remove(&key);
            }
        }
    }

    /// How rule `key` starts now (`carry`: a hot swap).
    fn start_of(&self, key: &RuleKey, carry: bool) -> Start {
        if carry {
            return Start::Carry;
        }
        let mut outages = self.outages.lock().unwrap_or_else(|e| e.into_inner());
        outages.moved.remove(key).unwrap_or(outages.start)
    }

    /// The engine's recent activity, per minute (the dashboard's charts).
    pub fn stats(&self) -> &Arc<stats::Stats> {
        &self.stats
    }

    /// Follow rule status changes: the receiver sees a change each time a
    /// rule's status is written (after a round, a control request, a
    /// failure). Wait on it instead of polling [`Engine::status`].
    pub fn status_changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The log the engine runs on.
    pub fn log(&self) -> &EventLog {
        &self.log
    }

    /// The engine clock.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
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
        self.deploy_inner(rule, false, None, false).await
    }

    /// Start a rule's shadow (its spec says `shadow`) on the state its
    /// namespace holds — a copy of the live rule's, taken while the live
    /// rule was stopped — as a hot swap would carry it on. A shadow
    /// already running is stopped and joined first.
    pub async fn deploy_shadow(&self, rule: Deployable) -> Result<(), CoreError> {
        debug_assert!(rule.spec.shadow);
        self.deploy_inner(rule, false, None, true).await
    }

    /// [`Self::deploy`], starting from empty state: the rule's windows,
    /// memberships, schedule position, pending fires and dead letters are
    /// dropped first (recorded as `rule.reset`), and its cursor starts
    /// again from the log's end. The way to change a rule's trigger kind.
    pub async fn deploy_reset(&self, rule: Deployable) -> Result<(), CoreError> {
        self.deploy_inner(rule, true, None, false).await
    }

    /// [`Self::deploy`] (or with `reset`, [`Self::deploy_reset`]), with a
    /// commit that must happen once the old version has stopped and
    /// before the new one starts (a deploy registry's write, with the
    /// swap's record): if it fails, the old version runs on.
    pub async fn swap_with(
        &self,
        rule: Deployable,
        reset: bool,
        commit: SwapCommit,
    ) -> Result<(), CoreError> {
        self.deploy_inner(rule, reset, Some(commit), false).await
    }

    /// `carried`: the state in place is carried on as by a hot swap even
    /// when nothing ran before (a shadow's copy).
    async fn deploy_inner(
        &self,
        rule: Deployable,
        reset: bool,
        commit: Option<SwapCommit>,
        carried: bool,
    ) -> Result<(), CoreError> {
        let key = (rule.spec.tenant.clone(), rule.spec.engine_name());
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
                crate::crash::point("swap.old_stopped");
                Some(rule)
            }
            None => None,
        };
        let restart = |previous: Option<Deployable>| async {
            if let Some(previous) = previous {
                let core = self.open(previous.clone(), true).await?;
                Ok::<_, CoreError>(Some(self.start(&key, previous, core)))
            } else {
                Ok(None)
            }
        };
        let before = previous
            .as_ref()
            .filter(|_| !reset)
            .map(Deployable::describe);
        let recorded = commit.is_some();
        if let Some(commit) = commit {
            let prev = previous.clone();
            let done = joined(tokio::task::spawn_blocking(move || commit(prev.as_ref())).await)
                .and_then(|r| r);
            if let Err(e) = done {
                *running = restart(previous).await?;
                return Err(e);
            }
        }
        let carry = (previous.is_some() || carried) && !reset;
        let previous = match reset {
            // Nothing of the old state is left to go back to.
            true => {
                self.reset(&key, &rule).await?;
                None
            }
            false => previous,
        };
        let opened = self.open(rule.clone(), carry).await;
        let (rule, core) = match (opened, previous) {
            (Ok(core), _) => (rule, core),
            (Err(e), Some(previous)) => {
                tracing::warn!(rule = %key.1, error = %e, "the new version cannot open its state; the previous one runs on");
                *running = restart(Some(previous)).await?;
                return Err(e);
            }
            (Err(e), None) => return Err(e),
        };
        let mut record = rule.describe();
        let spec = rule.spec.clone();
        *running = Some(self.start(&key, rule, core));
        // A swap is on the feed (a first deploy, or a start-up, is not:
        // the log then holds exactly what `sluice test` makes of it). A
        // caller's commit records it itself, with what it commits.
        if let Some(before) = before
            && !recorded
        {
            record["previous"] = before;
            record_lifecycle(&self.log, &self.clock, &spec, "rule.swapped", record).await;
        }
        Ok(())
    }

    /// Drop a (stopped) rule's state and pin; its cursor starts at the log's
    /// end. One transaction, with a `rule.reset` record.
    async fn reset(&self, key: &RuleKey, rule: &Deployable) -> Result<(), CoreError> {
        self.drop_state(key, "rule.reset", &rule.describe(), Vec::new())
            .await
    }

    /// Drop a stopped rule's state and release its pin, in one transaction
    /// with the engine record `kind`; a later start of the name reads on
    /// from the log's end.
    async fn drop_state(
        &self,
        key: &RuleKey,
        kind: &str,
        payload: &serde_json::Value,
        also: Vec<StateOp>,
    ) -> Result<(), CoreError> {
        let ns = crate::triggers::state::namespace(&key.0, &key.1);
        let last = self.log.last_seq();
        let now = self.clock.now_millis();
        let record = crate::records::engine_record(
            &key.0,
            format_args!("{kind}:{}:{now}:{last}", key.1),
            kind,
            now,
            payload,
        );
        let mut ops = vec![
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
        ops.extend(also);
        let (log, key) = (self.log.clone(), key.clone());
        let writes = Writes {
            records: vec![record],
            ops,
        };
        joined(
            tokio::task::spawn_blocking(move || driver::commit(&log, &key.0, &key.1, writes)).await,
        )??;
        Ok(())
    }

    async fn open(&self, rule: Deployable, carry: bool) -> Result<Box<dyn Driven>, CoreError> {
        let log = self.log.clone();
        let now = self.clock.now_millis();
        let start = self.start_of(&(rule.spec.tenant.clone(), rule.spec.engine_name()), carry);
        joined(tokio::task::spawn_blocking(move || rule.open(&log, now, start)).await)?
    }

    /// The slots a rule takes its work from: its tenant's share of the
    /// engine's, or for a shadow, the shadows' own (one at a time in the
    /// engine, one per tenant): a shadow never holds a slot a live rule
    /// waits for.
    fn work_for(&self, spec: &RuleSpec) -> Work {
        if spec.shadow {
            let tenant = self
                .shadow_shares
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(spec.tenant.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(1)))
                .clone();
            return Work {
                all: self.shadow_work.clone(),
                tenant,
            };
        }
        let share = (work_permits() / 2).max(1);
        let tenant = self
            .shares
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(spec.tenant.clone())
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
        let task = Task {
            log: self.log.clone(),
            clock: self.clock.clone(),
            status: status.clone(),
            requests,
            stop: stop.subscribe(),
            work: self.work_for(&rule.spec),
            rule: rule.clone(),
            changes: self.changes.clone(),
            stats: self.stats.clone(),
        };
        let task = tokio::spawn(task.run(core));
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
        match self.stop(tenant, name).await {
            Some(rule) => {
                let record = rule.describe();
                record_lifecycle(
                    &self.log,
                    &self.clock,
                    &rule.spec,
                    "rule.undeployed",
                    record,
                )
                .await;
                true
            }
            None => false,
        }
    }

    /// Stop a rule here and wait until its task has ended, recording
    /// nothing: its state stays, for this node or another to run it again
    /// (a hand-over). What was running, or `None` when no such rule runs.
    pub async fn stop(&self, tenant: &str, name: &str) -> Option<Deployable> {
        let key = (tenant.to_owned(), name.to_owned());
        let slot = self.slot(&key, false)?;
        let removed = slot.lock().await.take();
        self.statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        let d = removed?;
        let rule = d.rule.clone();
        stop_and_join(d).await;
        Some(rule)
    }

    /// Every rule running here, as (tenant, name).
    pub fn running(&self) -> Vec<(String, String)> {
        self.rules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Undeploy a rule, draining its open windows and buffers (see
    /// [`Self::drain_and_drop`]): the running version is stopped and
    /// joined first; when none runs here, `stopped` (the deployed version,
    /// not running — an undeploy a restart interrupted) is drained
    /// instead. `also` commits with the state's removal (the deploy
    /// registry's row). False when there was nothing to drain.
    pub async fn undeploy_drain(
        &self,
        tenant: &str,
        name: &str,
        drain: Drain,
        stopped: Option<Deployable>,
        also: Vec<StateOp>,
    ) -> Result<bool, CoreError> {
        let key = (tenant.to_owned(), name.to_owned());
        // The slot stays locked until the state is gone: nothing starts
        // the rule meanwhile.
        let slot = self.slot(&key, false);
        let mut guard = match &slot {
            Some(slot) => Some(slot.lock().await),
            None => None,
        };
        let running = guard.as_mut().and_then(|g| g.take());
        let rule = match running {
            Some(deployed) => {
                let rule = deployed.rule.clone();
                stop_and_join(deployed).await;
                rule
            }
            None => match stopped {
                Some(rule) => rule,
                None => return Ok(false),
            },
        };
        self.statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        self.drain_and_drop(rule, drain, also).await?;
        drop(guard);
        Ok(true)
    }

    /// Drain a rule that is not running and drop its state: with
    /// [`Drain::Fire`] each open window and buffer fires (reason drained)
    /// and every fire still pending runs now — retried at once up to the
    /// rule's attempts, then dead-lettered — so nothing waits for a rule
    /// that is gone; with [`Drain::Discard`] they are dropped and reported
    /// (`windows.discarded`). Then the rule's state goes — what the drain
    /// left (memberships, dead letters) is counted on the
    /// `rule.undeployed` record — and its retention pin with it, in one
    /// transaction with `also`; a later deploy of the name starts afresh
    /// at the log's end.
    ///
    /// Every step commits through the rule's one write path, so a crash
    /// midway leaves state that the same call, made again, finishes: the
    /// drained fires are in the outbox, and those that ran are gone from
    /// it.
    pub async fn drain_and_drop(
        &self,
        rule: Deployable,
        drain: Drain,
        also: Vec<StateOp>,
    ) -> Result<(), CoreError> {
        let key = (rule.spec.tenant.clone(), rule.spec.name.clone());
        let mut record = rule.describe();
        record["drain"] = serde_json::json!(drain.name());
        let mut core = self.open(rule, true).await?;
        let clock = self.clock.clone();
        let left = joined(
            tokio::task::spawn_blocking(move || -> Result<RuleStatus, CoreError> {
                core.drain(clock.now_millis(), drain == Drain::Fire)?;
                crate::crash::point("undeploy.mid_drain");
                if drain == Drain::Fire {
                    // Every pending fire runs now, retried at once, through
                    // the one round.
                    loop {
                        let out = core.round(
                            RoundIn {
                                now: clock.now_millis(),
                                flush: true,
                                ..RoundIn::default()
                            },
                            &mut Inline,
                            &mut Quiet,
                        );
                        if let Some(e) = out.error {
                            return Err(CoreError::State {
                                key: "drain".into(),
                                problem: e,
                            });
                        }
                        if core.status().pending_fires == 0 || !out.progressed {
                            break;
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
        self.drop_state(&key, "rule.undeployed", &record, also)
            .await
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

    async fn request(
        &self,
        tenant: &str,
        name: &str,
        request: Request,
    ) -> Result<Answer, ControlError> {
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
        let reply = driver::Reply(Box::new(move |answer| drop(reply.send(answer))));
        sender
            .send((request, Some(reply)))
            .await
            .map_err(|_| ControlError::Stopped(label.clone()))?;
        let answer = rx.await.map_err(|_| ControlError::Stopped(label))??;
        Ok(answer)
    }

    async fn status_request(
        &self,
        tenant: &str,
        name: &str,
        request: Request,
    ) -> Result<RuleStatus, ControlError> {
        match self.request(tenant, name, request).await? {
            // The task published the rule's status before it answered.
            Answer::Status(s) => Ok(*s),
            _ => unreachable!("a control request answers with the status"),
        }
    }

    async fn fires_request(
        &self,
        tenant: &str,
        name: &str,
        request: Request,
    ) -> Result<Vec<FireRecord>, ControlError> {
        match self.request(tenant, name, request).await? {
            Answer::Fires(f) => Ok(f),
            _ => unreachable!("a listing answers with fires"),
        }
    }

    /// Pause a rule: nothing of it is processed until resumed. Answers its
    /// new status.
    pub async fn pause(&self, tenant: &str, name: &str) -> Result<RuleStatus, ControlError> {
        self.status_request(tenant, name, Request::Pause).await
    }

    /// Resume a paused, suspended or failed rule. Answers its new status.
    pub async fn resume(&self, tenant: &str, name: &str) -> Result<RuleStatus, ControlError> {
        self.status_request(tenant, name, Request::Resume).await
    }

    /// Re-drive a dead letter.
    pub async fn redrive(
        &self,
        tenant: &str,
        name: &str,
        fire_id: &str,
    ) -> Result<(), ControlError> {
        let r = Request::Redrive(fire_id.to_owned());
        self.status_request(tenant, name, r).await.map(drop)
    }

    /// Drop a dead letter.
    pub async fn discard_dead(
        &self,
        tenant: &str,
        name: &str,
        fire_id: &str,
    ) -> Result<(), ControlError> {
        let r = Request::DiscardDead(fire_id.to_owned());
        self.status_request(tenant, name, r).await.map(drop)
    }

    /// The rule's dead letters, oldest first.
    pub async fn dead_letters(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Vec<FireRecord>, ControlError> {
        self.fires_request(tenant, name, Request::DeadLetters).await
    }

    /// The rule's fires waiting to run, to be retried or running, oldest
    /// first.
    pub async fn pending_fires(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Vec<FireRecord>, ControlError> {
        self.fires_request(tenant, name, Request::Pending).await
    }

    /// A page of a rule's open partitions after the key `after`, with
    /// their state and deadlines (and a schedule's next ticks).
    pub async fn inspect(
        &self,
        tenant: &str,
        name: &str,
        after: Option<String>,
        limit: usize,
    ) -> Result<Inspection, ControlError> {
        match self
            .request(tenant, name, Request::Inspect { after, limit })
            .await?
        {
            Answer::Inspection(page) => Ok(*page),
            _ => unreachable!("an inspection answers with partitions"),
        }
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

/// An engine record of a rule's lifecycle on the feed (best effort: the
/// change itself is done; a failure to record it is logged).
pub(crate) async fn record_lifecycle(
    log: &EventLog,
    clock: &SharedClock,
    spec: &RuleSpec,
    kind: &str,
    payload: serde_json::Value,
) {
    let writes = Writes {
        records: vec![lifecycle_record(spec, kind, clock.now_millis(), &payload)],
        ops: Vec::new(),
    };
    let (log, for_rule) = (log.clone(), spec.clone());
    let committed =
        tokio::task::spawn_blocking(move || driver::commit_rule(&log, &for_rule, writes)).await;
    if let Err(e) = joined(committed).and_then(|r| r) {
        tracing::warn!(rule = %spec.name, error = %e, "could not record {kind}");
    }
}

/// The engine record `kind` of a rule's lifecycle at `now`.
pub fn lifecycle_record(
    spec: &RuleSpec,
    kind: &str,
    now: i64,
    payload: &serde_json::Value,
) -> crate::event::NewEvent {
    let id = format!(
        "{kind}:{}:{now}:{}",
        spec.name,
        crate::records::fire_id(&spec.name, &[&payload.to_string()])
    );
    crate::records::engine_record(&spec.tenant, id, kind, now, payload)
}
