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

use super::registry::{Deployment, Registry, Shadow};
use super::rule::{Deployable, SetupError};
use super::{Drain, Engine, lifecycle_record};
use crate::log::{EventLog, LogError, StateOp};
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
    /// The rule has no shadow.
    #[error("rule {0:?} has no shadow")]
    NoSuchShadow(String),
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

impl DeployRequest {
    /// The manifest, parsed, naming the rule the request deploys and
    /// within the tenant's quotas.
    fn manifest(&self) -> Result<Manifest, DeployError> {
        let manifest = Manifest::parse(&self.manifest).map_err(|e| DeployError::Invalid {
            code: "invalid_manifest",
            message: format!("manifest: {e}"),
        })?;
        if manifest.name != self.name {
            return Err(DeployError::Invalid {
                code: "invalid_manifest",
                message: format!(
                    "manifest: name = {:?} but the URL deploys {:?}",
                    manifest.name, self.name
                ),
            });
        }
        self.quotas
            .check(&manifest)
            .map_err(|m| DeployError::Refused {
                code: "quota_exceeded",
                message: format!("manifest: {m}"),
            })?;
        Ok(manifest)
    }
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

    /// Load the component a request uploads: the rule, `hit` or
    /// `compiled`, and the time it took (ms).
    async fn load_requested(
        &self,
        req: &DeployRequest,
        manifest: &Manifest,
    ) -> Result<(Deployable, &'static str, u64), DeployError> {
        let started = std::time::Instant::now();
        let rule = self
            .load(
                &req.tenant,
                req.component.clone(),
                manifest.clone(),
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
        Ok((rule, compile, load_ms))
    }

    /// Deploy a rule, or swap in a new version (see the module's
    /// description). `Ok((created, deployed))`.
    pub async fn deploy(&self, req: DeployRequest) -> Result<(bool, Deployed), DeployError> {
        let manifest = req.manifest()?;
        let plan = Plan {
            tenant: req.tenant.clone(),
            name: req.name.clone(),
            manifest,
            manifest_text: req.manifest.clone(),
            digest: crate::runtime::cache::digest(&req.component),
            reset: req.reset,
            max_rules: req.quotas.max_rules,
        };
        // A first look, to answer before compiling; checked again under
        // the tenant's lock, where it counts.
        if let Some(unchanged) = self.check(&plan)? {
            return Ok((false, unchanged));
        }
        let (rule, compile, load_ms) = self.load_requested(&req, &plan.manifest).await?;
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
        if plan.reset && self.registry.shadow(&plan.tenant, &plan.name)?.is_some() {
            return Err(DeployError::Conflict {
                code: "shadow_running",
                message: format!(
                    "rule {:?} has a shadow, which runs on a copy of its state: promote or discard it before a reset",
                    plan.name
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
        let mut also = self.registry.remove_ops(tenant, name)?;
        also.extend(self.stop_shadow(tenant, name).await?);
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
        self.engine.stop(tenant, &shadow_name(name)).await;
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
                self.start_shadow(d, quotas).await;
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
            let mut also = self
                .registry
                .remove_ops(&d.tenant, &d.name)
                .map_err(|e| e.to_string())?;
            also.extend(
                self.stop_shadow(&d.tenant, &d.name)
                    .await
                    .map_err(|e| e.to_string())?,
            );
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

    // ---- shadows (see `super::shadow`) ----------------------------------

    /// Deploy a shadow of a running rule: a new version that runs beside
    /// it on the same events, from a copy of its state taken while it is
    /// stopped for a moment, its records kept aside. A shadow the rule
    /// already has is replaced. The version must be above the live one
    /// (a promotion makes it the live version) and keep its trigger kind
    /// (it runs on the live state); a shadow counts as a rule in the
    /// tenant's quota.
    pub async fn deploy_shadow(&self, req: DeployRequest) -> Result<Deployed, DeployError> {
        let manifest = req.manifest()?;
        if req.reset {
            return Err(DeployError::Invalid {
                code: "invalid_request",
                message: "a shadow starts from a copy of the live state: reset does not apply"
                    .into(),
            });
        }

        let digest = crate::runtime::cache::digest(&req.component);
        self.check_shadow(&req, &manifest)?;
        let (mut rule, compile, load_ms) = self.load_requested(&req, &manifest).await?;
        rule.spec.shadow = true;

        let (tenant, name) = (req.tenant.clone(), req.name.clone());
        let lock = self.lock(&tenant);
        let _lifecycle = lock.lock().await;
        self.check_shadow(&req, &manifest)?;
        let Some(live) = self.engine.loaded(&tenant, &name) else {
            return Err(DeployError::Conflict {
                code: "not_running",
                message: format!(
                    "rule {name:?} is not running here{}: a shadow runs beside a running rule",
                    self.broken(&tenant, &name)
                        .map(|why| format!(" (it could not start: {why})"))
                        .unwrap_or_default()
                ),
            });
        };
        let swap_started = std::time::Instant::now();
        // A shadow already there goes; then the live rule stops for the
        // copy, and runs on with its state as it was.
        self.engine.stop(&tenant, &shadow_name(&name)).await;
        let shadow = Shadow {
            deployment: Deployment {
                tenant: tenant.clone(),
                name: name.clone(),
                version: manifest.version,
                manifest: req.manifest.clone(),
                digest: digest.clone(),
                deployed_at: self.engine.clock().now_millis(),
                draining: None,
            },
            from_seq: 0,
        };
        let (registry, log, bytes) = (
            self.registry.clone(),
            self.log.clone(),
            req.component.clone(),
        );
        let (t, n) = (tenant.clone(), name.clone());
        let commit: super::SwapCommit = Box::new(move |_old: Option<&Deployable>| {
            let live_ns = crate::triggers::state::namespace(&t, &n);
            let shadow_ns = crate::triggers::state::shadow_namespace(&t, &n);
            let from_seq = log
                .state_get(&live_ns, crate::triggers::state::CURSOR)?
                .and_then(|v| String::from_utf8_lossy(&v).parse().ok())
                .unwrap_or(0);
            let mut ops = super::shadow::copy_state(&log, &live_ns, &shadow_ns)?;
            ops.extend(registry.put_shadow_ops(&Shadow { from_seq, ..shadow }, &bytes)?);
            commit_state(&log, &t, &n, ops)
        });
        self.engine
            .swap_with(live, false, commit)
            .await
            .map_err(|e| DeployError::Internal(format!("rule {name:?}: copying its state: {e}")))?;
        if let Err(e) = self.engine.deploy_shadow(rule).await {
            let dropped = async {
                let ops = self.shadow_drop_ops(&tenant, &name)?;
                self.commit_ops(&tenant, &name, ops).await
            }
            .await;
            if let Err(d) = dropped {
                tracing::error!(%tenant, rule = %name, error = %d, "could not drop a shadow that failed to start");
            }
            return Err(DeployError::Internal(format!(
                "rule {name:?}: the shadow could not start: {e}"
            )));
        }
        let swap_ms = swap_started.elapsed().as_millis() as u64;
        tracing::info!(%tenant, rule = %name, version = manifest.version, compile, load_ms, swap_ms, "shadow deployed");
        Ok(Deployed {
            rule: name,
            version: manifest.version,
            kind: manifest.trigger.kind().into(),
            digest,
            outcome: "shadow".into(),
            compile: compile.into(),
            load_ms,
            swap_ms,
        })
    }

    /// A shadow deploy against what runs: the rule exists, is not being
    /// undeployed, the version is raised, the kind kept, the quota not
    /// full.
    fn check_shadow(&self, req: &DeployRequest, manifest: &Manifest) -> Result<(), DeployError> {
        let Some(live) = self.registry.get(&req.tenant, &req.name)? else {
            return Err(DeployError::NoSuchRule(req.name.clone()));
        };
        if live.draining.is_some() {
            return Err(DeployError::Conflict {
                code: "undeploying",
                message: format!("rule {:?} is being undeployed", req.name),
            });
        }
        if manifest.version <= live.version {
            return Err(DeployError::Conflict {
                code: "version_not_raised",
                message: format!(
                    "manifest: version = {} but version {} runs: a shadow is a next version, and must raise it",
                    manifest.version, live.version
                ),
            });
        }
        let live_kind = Manifest::parse(&live.manifest)
            .map(|m| m.trigger.kind())
            .unwrap_or_default();
        if manifest.trigger.kind() != live_kind {
            return Err(DeployError::Conflict {
                code: "kind_changed",
                message: format!(
                    "manifest: trigger: a shadow runs on a copy of the live state, so it keeps the live rule's kind ({live_kind}), not {}",
                    manifest.trigger.kind()
                ),
            });
        }
        if self.registry.shadow(&req.tenant, &req.name)?.is_none() {
            let count = self.registry.list_tenant(&req.tenant)?.len()
                + self.registry.shadows_of(&req.tenant)?.len();
            if count >= req.quotas.max_rules {
                return Err(DeployError::Refused {
                    code: "quota_exceeded",
                    message: format!(
                        "tenant {:?} has {count} rules and shadows, its quota (max_rules = {}): a shadow counts as a rule",
                        req.tenant, req.quotas.max_rules
                    ),
                });
            }
        }
        Ok(())
    }

    /// Discard a rule's shadow: it stops, and its state and kept records
    /// go.
    pub async fn discard_shadow(&self, tenant: &str, name: &str) -> Result<(), DeployError> {
        let lock = self.lock(tenant);
        let _lifecycle = lock.lock().await;
        if self.registry.shadow(tenant, name)?.is_none() {
            return Err(DeployError::NoSuchShadow(name.to_owned()));
        }
        let ops = self.stop_shadow(tenant, name).await?;
        self.commit_ops(tenant, name, ops).await?;
        tracing::info!(%tenant, rule = %name, "shadow discarded");
        Ok(())
    }

    /// Promote a rule's shadow: its version becomes the live one, on the
    /// live state (`take_state` false: a hot swap) or on the shadow's
    /// (`take_state`: the live rule carries on from where the shadow is;
    /// what the shadow kept aside is not emitted). The shadow goes.
    pub async fn promote_shadow(
        &self,
        tenant: &str,
        name: &str,
        take_state: bool,
        quotas: &Quotas,
    ) -> Result<Deployed, DeployError> {
        let lock = self.lock(tenant);
        let _lifecycle = lock.lock().await;
        let Some(shadow) = self.registry.shadow(tenant, name)? else {
            return Err(DeployError::NoSuchShadow(name.to_owned()));
        };
        let d = shadow.deployment.clone();
        let bytes = self
            .registry
            .component(&d.digest)?
            .ok_or_else(|| DeployError::Internal(format!("component {} is missing", d.digest)))?;
        let started = std::time::Instant::now();
        let rule = self
            .load_deployment(&d, quotas)
            .await
            .map_err(DeployError::Internal)?;
        let load_ms = started.elapsed().as_millis() as u64;
        let kind = rule.kind_name().to_owned();
        let swap_started = std::time::Instant::now();
        // The shadow stops first: its state is final while it is copied.
        let mut ops = self.stop_shadow(tenant, name).await?;
        // The shadow's component is the live one's now.
        ops.retain(|op| !matches!(op, StateOp::Delete { ns, key } if ns == super::registry::NS_COMPONENTS && *key == d.digest));
        let deployment = Deployment {
            deployed_at: self.engine.clock().now_millis(),
            ..d.clone()
        };
        let (registry, log, clock, spec, new) = (
            self.registry.clone(),
            self.log.clone(),
            self.engine.clock().clone(),
            rule.spec.clone(),
            rule.describe(),
        );
        let commit: super::SwapCommit = Box::new(move |old: Option<&Deployable>| {
            let live_ns = spec.namespace();
            let shadow_ns = crate::triggers::state::shadow_namespace(&spec.tenant, &spec.name);
            let mut all = Vec::new();
            if take_state {
                all.extend(super::shadow::copy_state(&log, &shadow_ns, &live_ns)?);
            }
            all.extend(ops);
            all.extend(registry.put_ops(&deployment, &bytes)?);
            let mut payload = new;
            payload["promoted_from_shadow"] = serde_json::json!({
                "state": if take_state { "shadow" } else { "live" }});
            if let Some(old) = old {
                payload["previous"] = old.describe();
            }
            let records = vec![lifecycle_record(
                &spec,
                "rule.swapped",
                clock.now_millis(),
                &payload,
            )];
            super::driver::commit(&log, &spec.tenant, &spec.name, Writes { records, ops: all })
                .map(drop)
        });
        if let Err(e) = self.engine.swap_with(rule, false, commit).await {
            // Nothing was committed, or the previous version runs again:
            // the shadow (its row and state are as they were unless the
            // commit went through) starts again if it is still recorded.
            if let Ok(Some(_)) = self.registry.shadow(tenant, name)
                && let Ok(Some(live)) = self.registry.get(tenant, name)
            {
                self.start_shadow(&live, quotas).await;
            }
            return Err(DeployError::Internal(format!(
                "rule {name:?}: promoting its shadow: {e}"
            )));
        }
        let swap_ms = swap_started.elapsed().as_millis() as u64;
        tracing::info!(%tenant, rule = %name, version = d.version, take_state, "shadow promoted");
        Ok(Deployed {
            rule: name.to_owned(),
            version: d.version,
            kind,
            digest: d.digest,
            outcome: "promoted".into(),
            compile: "hit".into(),
            load_ms,
            swap_ms,
        })
    }

    /// Start the shadow of `live`, if it has one, from its own state (a
    /// start-up, or a node taking the rule over). One that cannot start is
    /// logged; the live rule runs on.
    async fn start_shadow(&self, live: &Deployment, quotas: &Quotas) {
        let (tenant, name) = (&live.tenant, &live.name);
        let result: Result<(), String> = async {
            let Some(shadow) = self
                .registry
                .shadow(tenant, name)
                .map_err(|e| e.to_string())?
            else {
                return Ok(());
            };
            let mut rule = self.load_deployment(&shadow.deployment, quotas).await?;
            rule.spec.shadow = true;
            self.engine.deploy(rule).await.map_err(|e| e.to_string())
        }
        .await;
        if let Err(e) = result {
            tracing::error!(%tenant, rule = %name, error = %e, "the rule's shadow could not start");
        }
    }

    /// Stop a rule's shadow here, if it runs, and give the ops that drop
    /// it (its state, its kept records, its pin, its row).
    async fn stop_shadow(&self, tenant: &str, name: &str) -> Result<Vec<StateOp>, DeployError> {
        self.engine.stop(tenant, &shadow_name(name)).await;
        Ok(self.shadow_drop_ops(tenant, name)?)
    }

    fn shadow_drop_ops(&self, tenant: &str, name: &str) -> Result<Vec<StateOp>, LogError> {
        if self.registry.shadow(tenant, name)?.is_none() {
            return Ok(Vec::new());
        }
        let ns = crate::triggers::state::shadow_namespace(tenant, name);
        let mut ops = vec![
            StateOp::Clear { ns: ns.clone() },
            StateOp::Pin {
                owner: ns,
                min_seq: None,
            },
        ];
        ops.extend(self.registry.remove_shadow_ops(tenant, name)?);
        Ok(ops)
    }

    async fn commit_ops(
        &self,
        tenant: &str,
        name: &str,
        ops: Vec<StateOp>,
    ) -> Result<(), DeployError> {
        let (log, t, n) = (self.log.clone(), tenant.to_owned(), name.to_owned());
        tokio::task::spawn_blocking(move || commit_state(&log, &t, &n, ops))
            .await
            .map_err(|e| DeployError::Internal(e.to_string()))?
            .map_err(|e| DeployError::Internal(e.to_string()))
    }

    /// The diff of a rule and its shadow (at most `limit` differences
    /// shown).
    pub async fn shadow_diff(
        &self,
        tenant: &str,
        name: &str,
        limit: usize,
    ) -> Result<super::shadow::ShadowDiff, DeployError> {
        let Some(shadow) = self.registry.shadow(tenant, name)? else {
            return Err(DeployError::NoSuchShadow(name.to_owned()));
        };
        let live_version = self.registry.get(tenant, name)?.map_or(0, |d| d.version);
        let (log, t, n) = (self.log.clone(), tenant.to_owned(), name.to_owned());
        let from = shadow.from_seq;
        let (live, shadow_side) = tokio::task::spawn_blocking(move || {
            // The shadow's side first: the live side read after it is at
            // least as far along, so a fire the shadow has is never missed
            // on the live side for being read too early.
            let s = super::shadow::shadow_side(&log, &t, &n)?;
            let l = super::shadow::live_side(&log, &t, &n, from)?;
            Ok::<_, LogError>((l, s))
        })
        .await
        .map_err(|e| DeployError::Internal(e.to_string()))??;
        let c = super::shadow::compare(&live, &shadow_side);
        let settled = c.pending == 0
            && live.cursor == shadow_side.cursor
            && live.pending.is_empty()
            && shadow_side.pending.is_empty();
        let differences = c.differences.len();
        let mut shown = c.differences;
        shown.truncate(limit);
        Ok(super::shadow::ShadowDiff {
            rule: name.to_owned(),
            live_version,
            shadow_version: shadow.deployment.version,
            from_seq: shadow.from_seq,
            live_cursor: live.cursor,
            shadow_cursor: shadow_side.cursor,
            live_fires: live.fires.len(),
            shadow_fires: shadow_side.fires.len(),
            same: c.same,
            pending: c.pending,
            settled,
            differences,
            shown,
        })
    }

    /// A rule's shadow: its row, if it has one.
    pub fn shadow(&self, tenant: &str, name: &str) -> Result<Option<Shadow>, DeployError> {
        Ok(self.registry.shadow(tenant, name)?)
    }
}

/// Commit state ops through rule `name`'s write path (fenced by its
/// lease), with no records.
fn commit_state(
    log: &EventLog,
    tenant: &str,
    name: &str,
    ops: Vec<StateOp>,
) -> Result<(), CoreError> {
    let writes = Writes {
        records: Vec::new(),
        ops,
    };
    super::driver::commit(log, tenant, name, writes).map(drop)
}

/// The name the engine runs a rule's shadow under.
pub fn shadow_name(name: &str) -> String {
    format!("{name}{}", crate::triggers::state::SHADOW_SUFFIX)
}
