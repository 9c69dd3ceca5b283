//! Deployments: the saga that puts a rule version in place, below any
//! front door (the HTTP API calls it; a test calls it without a server).
//!
//! A deploy checks everything before anything changes — the manifest, the
//! name, the version, the tenant's quota, the component's world and
//! imports (by compiling it, through the on-disk cache), the trigger kind
//! of the state it would take over — then, under the tenant's lock, swaps:
//! the old version's task is stopped and joined, the deployment is
//! recorded in the registry *in the same transaction as* the swap's
//! record on the feed (`rule.swapped`), and the new version starts on the
//! state. If it cannot open that state, the old version starts again and
//! the registry says so.
//!
//! Undeploys, tenant deletions and the start-up restore go through the
//! same tenant locks, so quota counts and version order hold.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use utoipa::ToSchema;

use super::registry::{Deployment, Registry};
use super::rule::{Deployable, SetupError};
use super::{Drain, Engine, lifecycle_record};
use crate::log::{EventLog, LogError};
use crate::manifest::Manifest;
use crate::runtime::Runtime;
use crate::runtime::cache::CacheOutcome;
use crate::tenants::Quotas;
use crate::triggers::core::{CoreError, Writes};

/// Why a deployment was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The request is malformed (the manifest, the name): nothing changed.
    #[error("{message}")]
    Invalid {
        /// What was wrong, for machines.
        code: &'static str,
        /// What was wrong, naming the field.
        message: String,
    },
    /// The request contradicts what runs (a version not raised, a kind
    /// change without a reset): nothing changed.
    #[error("{message}")]
    Conflict {
        /// What was wrong, for machines.
        code: &'static str,
        /// What was wrong, naming the field.
        message: String,
    },
    /// Well-formed but not acceptable (a quota, a component that does not
    /// implement the world): nothing changed.
    #[error("{message}")]
    Refused {
        /// What was wrong, for machines.
        code: &'static str,
        /// What was wrong, naming the field.
        message: String,
    },
    /// No such rule is deployed.
    #[error("rule {0:?} does not exist")]
    NoSuchRule(String),
    /// The engine or the store failed.
    #[error("{0}")]
    Internal(String),
}

impl From<LogError> for DeployError {
    fn from(e: LogError) -> Self {
        DeployError::Internal(e.to_string())
    }
}

/// A deploy as asked.
#[derive(Debug, Clone)]
pub struct DeployRequest {
    /// The owning tenant.
    pub tenant: String,
    /// The rule's name (the manifest must say the same).
    pub name: String,
    /// `rule.toml`, as uploaded.
    pub manifest: String,
    /// The component's bytes.
    pub component: bytes::Bytes,
    /// Drop the rule's state first (needed to change its trigger kind).
    pub reset: bool,
    /// The tenant's quotas.
    pub quotas: Quotas,
}

/// What a deploy did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Deployed {
    /// The rule's name.
    pub rule: String,
    /// The version now running.
    pub version: u32,
    /// Its trigger kind.
    pub kind: String,
    /// SHA-256 of the component.
    pub digest: String,
    /// `created` (a new rule), `swapped` (a new version took over the
    /// rule's state), `reset` (a new version started from empty state) or
    /// `unchanged` (the same manifest and component were running).
    pub outcome: String,
    /// `hit` when the compiled component came from the cache, `compiled`
    /// otherwise.
    pub compile: String,
    /// Time spent loading (compiling or reading the cache), in ms.
    pub load_ms: u64,
    /// Time the swap took (old task stopped and joined, new one started),
    /// in ms.
    pub swap_ms: u64,
}

/// Deployments of every tenant's rules: the engine that runs them, the
/// registry that remembers them, and the locks that order them.
#[derive(Debug)]
pub struct Deployments {
    /// The engine running the rules.
    pub engine: Engine,
    /// Which rules run.
    pub registry: Registry,
    runtime: Runtime,
    log: EventLog,
    /// Per tenant: one deploy or undeploy at a time (compiles run before
    /// it is taken).
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Rules that could not start at start-up, with why.
    broken: Mutex<HashMap<(String, String), String>>,
}

/// A deploy, once its request is checked.
#[derive(Debug)]
struct Plan {
    tenant: String,
    name: String,
    manifest: Manifest,
    manifest_text: String,
    digest: String,
    reset: bool,
    max_rules: usize,
}

impl Deployments {
    /// Deployments on `engine`, remembered in `log`'s database.
    pub fn new(engine: Engine, runtime: Runtime) -> Self {
        let log = engine.log().clone();
        Self {
            registry: Registry::new(log.clone()),
            engine,
            runtime,
            log,
            locks: Mutex::new(HashMap::new()),
            broken: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self, tenant: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(tenant.to_owned())
            .or_default()
            .clone()
    }

    /// Why a deployed rule could not start at start-up, if it could not.
    pub fn broken(&self, tenant: &str, name: &str) -> Option<String> {
        self.broken
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(tenant.to_owned(), name.to_owned()))
            .cloned()
    }

    fn set_broken(&self, tenant: &str, name: &str, why: Option<String>) {
        let mut broken = self.broken.lock().unwrap_or_else(|e| e.into_inner());
        let key = (tenant.to_owned(), name.to_owned());
        match why {
            Some(why) => broken.insert(key, why),
            None => broken.remove(&key),
        };
    }

    /// Load (compile, or read the cache) a rule of `tenant` off the async
    /// threads, held to the tenant's partition quota.
    pub async fn load(
        &self,
        tenant: &str,
        component: bytes::Bytes,
        manifest: Manifest,
        quotas: &Quotas,
    ) -> Result<Result<Deployable, SetupError>, DeployError> {
        let max = quotas.max_partitions_per_rule;
        let (runtime, tenant) = (self.runtime.clone(), tenant.to_owned());
        let loaded = tokio::task::spawn_blocking(move || {
            Deployable::load(&runtime, &tenant, &component, &manifest)
        })
        .await
        .map_err(|e| DeployError::Internal(e.to_string()))?;
        Ok(loaded.map(|rule| rule.with_max_partitions(max)))
    }

    /// Deploy a rule, or swap in a new version (see the module's
    /// description). `Ok((created, deployed))`.
    pub async fn deploy(&self, req: DeployRequest) -> Result<(bool, Deployed), DeployError> {
        let manifest = Manifest::parse(&req.manifest).map_err(|e| DeployError::Invalid {
            code: "invalid_manifest",
            message: format!("manifest: {e}"),
        })?;
        if manifest.name != req.name {
            return Err(DeployError::Invalid {
                code: "invalid_manifest",
                message: format!(
                    "manifest: name = {:?} but the URL deploys {:?}",
                    manifest.name, req.name
                ),
            });
        }
        req.quotas
            .check(&manifest)
            .map_err(|m| DeployError::Refused {
                code: "quota_exceeded",
                message: format!("manifest: {m}"),
            })?;
        let plan = Plan {
            tenant: req.tenant.clone(),
            name: req.name.clone(),
            manifest,
            manifest_text: req.manifest,
            digest: crate::runtime::cache::digest(&req.component),
            reset: req.reset,
            max_rules: req.quotas.max_rules,
        };
        // A first look, to answer before compiling; checked again under
        // the tenant's lock, where it counts.
        if let Some(unchanged) = self.check(&plan)? {
            return Ok((false, unchanged));
        }
        let started = std::time::Instant::now();
        let rule = self
            .load(
                &req.tenant,
                req.component.clone(),
                plan.manifest.clone(),
                &req.quotas,
            )
            .await?
            .map_err(|e| DeployError::Refused {
                code: "invalid_component",
                message: format!("component: {e}"),
            })?;
        let load_ms = started.elapsed().as_millis() as u64;
        let compile = match rule.rule.cache_outcome() {
            CacheOutcome::Hit => "hit",
            _ => "compiled",
        };
        self.swap(plan, rule, req.component, compile, load_ms).await
    }

    /// Check a deploy against what runs: `Some` when exactly this runs
    /// already; errors for a version not raised or a quota full.
    fn check(&self, plan: &Plan) -> Result<Option<Deployed>, DeployError> {
        let previous = self.registry.get(&plan.tenant, &plan.name)?;
        if let Some(old) = previous.as_ref().filter(|d| d.draining.is_some()) {
            return Err(DeployError::Conflict {
                code: "undeploying",
                message: format!(
                    "rule {:?} is being undeployed (drain = {}); deploy it again once that is done",
                    old.name,
                    old.draining.as_deref().unwrap_or_default()
                ),
            });
        }
        match &previous {
            Some(old) if !plan.reset => {
                if old.digest == plan.digest && old.manifest == plan.manifest_text {
                    return Ok(Some(Deployed {
                        rule: plan.name.clone(),
                        version: old.version,
                        kind: plan.manifest.trigger.kind().into(),
                        digest: plan.digest.clone(),
                        outcome: "unchanged".into(),
                        compile: "hit".into(),
                        load_ms: 0,
                        swap_ms: 0,
                    }));
                }
                if plan.manifest.version <= old.version {
                    return Err(DeployError::Conflict {
                        code: "version_not_raised",
                        message: format!(
                            "manifest: version = {} but version {} runs: a new version must raise it",
                            plan.manifest.version, old.version
                        ),
                    });
                }
            }
            Some(_) => {}
            None => {
                let count = self.registry.list_tenant(&plan.tenant)?.len();
                if count >= plan.max_rules {
                    return Err(DeployError::Refused {
                        code: "quota_exceeded",
                        message: format!(
                            "tenant {:?} has {count} rules, its quota (max_rules = {})",
                            plan.tenant, plan.max_rules
                        ),
                    });
                }
            }
        }
        Ok(None)
    }

    /// Swap `rule` in under the tenant's lock.
    async fn swap(
        &self,
        plan: Plan,
        rule: Deployable,
        component: bytes::Bytes,
        compile: &'static str,
        load_ms: u64,
    ) -> Result<(bool, Deployed), DeployError> {
        let lock = self.lock(&plan.tenant);
        let _lifecycle = lock.lock().await;
        if let Some(unchanged) = self.check(&plan)? {
            return Ok((false, unchanged));
        }
        let (tenant, name) = (plan.tenant.clone(), plan.name.clone());
        let previous = self.registry.get(&tenant, &name)?;
        let previous_component = match &previous {
            Some(old) => self.registry.component(&old.digest)?,
            None => None,
        };
        let kind = rule.kind_name().to_owned();
        let deployment = Deployment {
            tenant: tenant.clone(),
            name: name.clone(),
            version: plan.manifest.version,
            manifest: plan.manifest_text.clone(),
            digest: plan.digest.clone(),
            deployed_at: self.engine.clock().now_millis(),
            draining: None,
        };
        // The registry's write and the swap's record commit together, once
        // the old version has stopped: a crash after it brings this
        // version back at start-up, with its record on the feed.
        let (registry, new, reset) = (self.registry.clone(), rule.describe(), plan.reset);
        let log = self.log.clone();
        let clock = self.engine.clock().clone();
        let spec = rule.spec.clone();
        let put = deployment.clone();
        let bytes = component.clone();
        let commit: super::SwapCommit = Box::new(move |old: Option<&Deployable>| {
            let mut records = Vec::new();
            if let Some(old) = old.filter(|_| !reset) {
                let mut payload = new;
                payload["previous"] = old.describe();
                records.push(lifecycle_record(
                    &spec,
                    "rule.swapped",
                    clock.now_millis(),
                    &payload,
                ));
            }
            let ops = registry.put_ops(&put, &bytes)?;
            super::driver::commit(&log, &spec.tenant, &spec.name, Writes { records, ops }).map(drop)
        });
        let swap_started = std::time::Instant::now();
        let result = self.engine.swap_with(rule, plan.reset, commit).await;
        if let Err(e) = result {
            // The engine kept (or put back) the previous version: so does
            // the registry.
            let restored = match (&previous, &previous_component) {
                (Some(old), Some(bytes)) => self.registry.put(old, bytes).await,
                _ => self.registry.remove(&tenant, &name).await.map(drop),
            };
            if let Err(r) = restored {
                tracing::error!(%tenant, rule = %name, error = %r, "could not put the previous deployment back");
            }
            return Err(match e {
                CoreError::State { key, problem } if key == "kind" => DeployError::Conflict {
                    code: "kind_changed",
                    message: format!(
                        "manifest: trigger: {problem} (deploy again with a reset to drop it: `sluice deploy --reset`, or `?reset=true`)"
                    ),
                },
                e => DeployError::Internal(format!("rule {name:?}: {e}")),
            });
        }
        let swap_ms = swap_started.elapsed().as_millis() as u64;
        self.set_broken(&tenant, &name, None);
        let outcome = match (&previous, plan.reset) {
            (None, false) => "created",
            (_, true) => "reset",
            (Some(_), false) => "swapped",
        };
        tracing::info!(%tenant, rule = %name, version = plan.manifest.version, outcome, compile, load_ms, swap_ms, "deployed");
        Ok((
            previous.is_none(),
            Deployed {
                rule: name,
                version: plan.manifest.version,
                kind,
                digest: plan.digest,
                outcome: outcome.into(),
                compile: compile.into(),
                load_ms,
                swap_ms,
            },
        ))
    }

    /// Undeploy under the tenant's lock. The deployment is marked as
    /// draining first, and forgotten in the transaction that drops the
    /// rule's state: an undeploy a crash interrupts is finished when the
    /// rule would start again ([`Self::restore`], or the node that takes
    /// its lease), never left half done, and never brings back a rule the
    /// feed says is gone.
    pub async fn undeploy(
        &self,
        tenant: &str,
        name: &str,
        drain: Drain,
    ) -> Result<(), DeployError> {
        let lock = self.lock(tenant);
        let _lifecycle = lock.lock().await;
        self.undeploy_locked(tenant, name, drain).await
    }

    async fn undeploy_locked(
        &self,
        tenant: &str,
        name: &str,
        drain: Drain,
    ) -> Result<(), DeployError> {
        if !self
            .registry
            .mark_draining(tenant, name, drain.name())
            .await?
        {
            return Err(DeployError::NoSuchRule(name.to_owned()));
        }
        self.set_broken(tenant, name, None);
        let also = self.registry.remove_ops(tenant, name)?;
        let drained = self
            .engine
            .undeploy_drain(tenant, name, drain, None, also)
            .await
            .map_err(|e| DeployError::Internal(format!("rule {name:?}: {e}")))?;
        if !drained {
            // Not running here (it could not start): nothing to drain;
            // its state stays for a later deploy.
            self.registry.remove(tenant, name).await?;
        }
        tracing::info!(%tenant, rule = %name, ?drain, "undeployed");
        Ok(())
    }

    /// Undeploy every rule of `tenant` (draining as asked), under its
    /// lock: the first step of deleting a tenant.
    pub async fn undeploy_tenant(&self, tenant: &str, drain: Drain) -> Result<(), DeployError> {
        let lock = self.lock(tenant);
        let _lifecycle = lock.lock().await;
        for d in self.registry.list_tenant(tenant)? {
            self.undeploy_locked(tenant, &d.name, drain).await?;
        }
        self.engine.stats().forget(tenant);
        Ok(())
    }

    /// Start the rules the registry holds, each with its tenant's quotas;
    /// one that cannot start is logged and shown as failed
    /// ([`Self::broken`]), and the others start. How many started.
    pub async fn restore(&self, quotas: impl Fn(&str) -> Quotas) -> Result<usize, DeployError> {
        let mut started = 0;
        for d in self.registry.list()? {
            if self.start_locked(&d, &quotas(&d.tenant)).await {
                started += 1;
            }
        }
        Ok(started)
    }

    /// Start one deployed rule here (a node that took its lease), under
    /// its tenant's lock. False when it is not deployed, already runs, or
    /// could not start (then it shows as failed, with why).
    pub async fn start(&self, tenant: &str, name: &str, quotas: Quotas) -> bool {
        let lock = self.lock(tenant);
        let _lifecycle = lock.lock().await;
        if self.engine.status(tenant, name).is_some() {
            return false;
        }
        match self.registry.get(tenant, name) {
            Ok(Some(d)) => self.start_locked(&d, &quotas).await,
            Ok(None) => false,
            Err(e) => {
                tracing::error!(%tenant, rule = %name, error = %e, "could not read the deployment");
                false
            }
        }
    }

    /// Stop one rule here without undeploying it (a node handing it over),
    /// under its tenant's lock. False when it did not run here.
    pub async fn stop(&self, tenant: &str, name: &str) -> bool {
        let lock = self.lock(tenant);
        let _lifecycle = lock.lock().await;
        self.set_broken(tenant, name, None);
        self.engine.stop(tenant, name).await.is_some()
    }

    async fn start_locked(&self, d: &Deployment, quotas: &Quotas) -> bool {
        if let Some(drain) = &d.draining {
            self.finish_undeploy(d, drain, quotas).await;
            return false;
        }
        let result: Result<(), String> = async {
            let rule = self.load_deployment(d, quotas).await?;
            self.engine.deploy(rule).await.map_err(|e| e.to_string())
        }
        .await;
        match result {
            Ok(()) => {
                self.set_broken(&d.tenant, &d.name, None);
                true
            }
            Err(e) => {
                tracing::error!(tenant = %d.tenant, rule = %d.name, error = %e, "rule could not start");
                self.set_broken(&d.tenant, &d.name, Some(e));
                false
            }
        }
    }

    /// Load a deployed rule from the registry (its stored component and
    /// manifest).
    async fn load_deployment(&self, d: &Deployment, quotas: &Quotas) -> Result<Deployable, String> {
        let bytes = self
            .registry
            .component(&d.digest)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("component {} is missing", d.digest))?;
        let manifest = Manifest::parse(&d.manifest).map_err(|e| format!("manifest: {e}"))?;
        self.load(&d.tenant, bytes.into(), manifest, quotas)
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    /// Finish the undeploy of `d` that a crash interrupted: drain what
    /// its state still holds and drop it, with the deployment. A rule
    /// that can no longer be loaded is forgotten, its state left.
    async fn finish_undeploy(&self, d: &Deployment, drain: &str, quotas: &Quotas) {
        let result: Result<(), String> = async {
            let drain = Drain::parse(Some(drain))?;
            let rule = self.load_deployment(d, quotas).await?;
            let also = self
                .registry
                .remove_ops(&d.tenant, &d.name)
                .map_err(|e| e.to_string())?;
            self.engine
                .undeploy_drain(&d.tenant, &d.name, drain, Some(rule), also)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        }
        .await;
        match result {
            Ok(()) => {
                tracing::info!(tenant = %d.tenant, rule = %d.name, "finished an undeploy a restart interrupted");
            }
            Err(e) => {
                tracing::error!(tenant = %d.tenant, rule = %d.name, error = %e,
                    "could not finish an interrupted undeploy; the rule is forgotten, its state left");
                if let Err(e) = self.registry.remove(&d.tenant, &d.name).await {
                    tracing::error!(tenant = %d.tenant, rule = %d.name, error = %e, "could not forget the rule");
                }
            }
        }
    }

    /// The log the deployments live in.
    pub fn log(&self) -> &EventLog {
        &self.log
    }
}
