//! The engine: runs deployed rules against the log on the engine clock.
//!
//! Each rule has a task of its own. The task dispatches new events, closes
//! windows whose deadline has come (idle partitions too: time alone
//! closes them), and runs the fires that are due, then sleeps until the
//! next commit, the next deadline or retry time, or — under a manual
//! clock — the next move of the clock. Blocking work (SQLite, Wasm) runs
//! on the blocking pool, so one rule's slow or hostile handler delays only
//! that rule. State is durable: a new engine over the same log resumes
//! each rule where it stopped, and deadlines that passed meanwhile fire at
//! once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::clock::SharedClock;
use crate::log::EventLog;
use crate::manifest::RetryPolicy;
use crate::triggers::dispatch::{BatchRule, DispatchError, Dispatcher};

/// Events read per dispatch step.
const STEP_EVENTS: usize = 1_024;

/// What a rule is doing, as far as the engine knows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleStatus {
    /// Last seq processed.
    pub cursor: u64,
    /// Fires waiting to run (or to be retried).
    pub pending_fires: usize,
    /// Why the rule is suspended, if it is.
    pub suspended: Option<String>,
    /// The last error the rule's task met (storage or `select`), if any.
    pub last_error: Option<String>,
}

struct Deployed {
    task: JoinHandle<()>,
    status: Arc<Mutex<RuleStatus>>,
}

/// Runs rules. Dropping it without [`Engine::shutdown`] aborts the tasks.
pub struct Engine {
    log: EventLog,
    clock: SharedClock,
    rules: Mutex<HashMap<(String, String), Deployed>>,
    stop: watch::Sender<bool>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine over `log`, timed by `clock`. Call from a Tokio runtime.
    pub fn new(log: EventLog, clock: SharedClock) -> Self {
        Self {
            log,
            clock,
            rules: Mutex::new(HashMap::new()),
            stop: watch::channel(false).0,
        }
    }

    /// Start running a batch rule (resuming its durable state).
    pub async fn deploy_batch(
        &self,
        spec: BatchRule,
        retry: RetryPolicy,
    ) -> Result<(), DispatchError> {
        let key = (spec.tenant.clone(), spec.name.clone());
        let log = self.log.clone();
        let dispatcher = tokio::task::spawn_blocking(move || Dispatcher::open(&log, spec))
            .await
            .map_err(|e| DispatchError::State {
                key: "open".into(),
                problem: e.to_string(),
            })??;
        let status = Arc::new(Mutex::new(RuleStatus::default()));
        let task = tokio::spawn(rule_task(
            dispatcher,
            self.log.clone(),
            self.clock.clone(),
            retry,
            status.clone(),
            self.stop.subscribe(),
        ));
        let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = rules.insert(key, Deployed { task, status }) {
            old.task.abort();
        }
        Ok(())
    }

    /// The status of a deployed rule.
    pub fn status(&self, tenant: &str, name: &str) -> Option<RuleStatus> {
        let rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        let deployed = rules.get(&(tenant.to_owned(), name.to_owned()))?;
        let status = deployed.status.lock().unwrap_or_else(|e| e.into_inner());
        Some(status.clone())
    }

    /// Stop every rule after its current piece of work.
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        let tasks: Vec<JoinHandle<()>> = self
            .rules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, d)| d.task)
            .collect();
        for task in tasks {
            let _ = task.await;
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        for (_, d) in self.rules.lock().unwrap_or_else(|e| e.into_inner()).drain() {
            d.task.abort();
        }
    }
}

/// Dispatch until caught up, close due windows, run due fires.
fn work(
    d: &mut Dispatcher,
    log: &EventLog,
    now: i64,
    retry: &RetryPolicy,
) -> Result<(), DispatchError> {
    d.catch_up(log, now, STEP_EVENTS)?;
    d.expire(log, now)?;
    for fire_id in d.due_fires(now) {
        d.run_fire(log, &fire_id, now, retry)?;
    }
    Ok(())
}

async fn rule_task(
    mut d: Dispatcher,
    log: EventLog,
    clock: SharedClock,
    retry: RetryPolicy,
    status: Arc<Mutex<RuleStatus>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut committed = log.committed();
    let mut moves = clock.moves();
    loop {
        if *stop.borrow() {
            return;
        }
        committed.borrow_and_update();
        if let Some(m) = moves.as_mut() {
            m.borrow_and_update();
        }
        let now = clock.now_millis();
        let (log2, retry2) = (log.clone(), retry.clone());
        let joined = tokio::task::spawn_blocking(move || {
            let result = work(&mut d, &log2, now, &retry2);
            (d, result)
        })
        .await;
        let result;
        (d, result) = match joined {
            Ok(pair) => pair,
            Err(e) => {
                tracing::error!(error = %e, "rule task panicked");
                return;
            }
        };
        {
            let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
            s.cursor = d.cursor();
            s.pending_fires = d.pending_fires().count();
            s.suspended = d.suspended().map(str::to_owned);
            if let Err(e) = &result {
                s.last_error = Some(e.to_string());
            }
        }
        if let Err(e) = result {
            // Nothing of the failed step was committed; try again shortly.
            tracing::warn!(error = %e, "rule step failed; retrying");
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stop.changed() => return,
            }
            continue;
        }
        let due = d.next_due();
        if due.is_some_and(|t| t <= clock.now_millis()) {
            continue;
        }
        // Sleep until a commit, the next due time, or a clock move.
        let timer = async {
            match (&mut moves, due) {
                (Some(m), _) => {
                    let _ = m.changed().await;
                }
                (None, Some(t)) => {
                    let wait = (t - clock.now_millis()).max(0) as u64;
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
                (None, None) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = committed.changed() => {}
            _ = timer => {}
            _ = stop.changed() => return,
        }
    }
}
