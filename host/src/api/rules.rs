//! Rules: deploy (and hot swap), list, show, undeploy, pause and resume.
//!
//! A deploy checks everything before anything changes — the multipart
//! form, the manifest, the name, the version, the tenant's quota, the
//! component's world and imports (by compiling it, through the on-disk
//! cache) — then swaps under the rule's lock (the engine stops and joins
//! the old task; state and cursor carry over), then records the
//! deployment so that a restart brings it back.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::App;
use super::error::{ApiError, ErrorBody};
use super::tenants::{TenantAuth, check_name};
use crate::engine::Drain;
use crate::engine::registry::Deployment;
use crate::engine::rule::{Deployable, Failure, RuleStatus};
use crate::manifest::Manifest;
use crate::triggers::core::CoreError;

/// What a deploy did.
#[derive(Debug, Serialize, ToSchema)]
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

/// Deploy options.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeployQuery {
    /// Drop the rule's state (windows, memberships, schedule position,
    /// pending fires, dead letters) and start from the log's end: needed to
    /// change a rule's trigger kind.
    #[serde(default)]
    pub reset: bool,
}

/// A rule as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct RuleView {
    /// The rule's name.
    pub name: String,
    /// The running version.
    pub version: u32,
    /// `batch`, `dwell` or `schedule`.
    pub kind: String,
    /// SHA-256 of the component.
    pub digest: String,
    /// When this version was deployed (ms since the epoch).
    pub deployed_at: i64,
    /// `active`, `paused`, `suspended` or `failed` (could not start, or
    /// the engine failed while running it; see `last_error`). A resume or
    /// a redeploy brings a failed rule back.
    pub status: String,
    /// Why the rule is suspended.
    pub suspended_reason: Option<String>,
    /// The manifest, as parsed (trigger, limits, retry, …).
    #[schema(value_type = Object)]
    pub manifest: serde_json::Value,
    /// Last seq processed.
    pub cursor: u64,
    /// Fires waiting, retrying or running.
    pub pending_fires: usize,
    /// Fires running now.
    pub running_fires: usize,
    /// Dead letters.
    pub dead_letters: usize,
    /// Partitions with open state.
    pub partitions: usize,
    /// Counters since the rule was deployed (kept across swaps and
    /// restarts; saved every 30 s while it runs).
    #[schema(value_type = Object)]
    pub counters: serde_json::Value,
    /// Fuel used by the running version's calls.
    pub fuel_used: u64,
    /// The last error of the rule's task (storage, `select`, start-up).
    pub last_error: Option<String>,
    /// The last failed handler attempt, with the guest backtrace.
    #[schema(value_type = Option<Object>)]
    pub last_failure: Option<Failure>,
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "the upload is over the server's limit for deploys: {}",
                e.body_text()
            ),
        );
    }
    ApiError::bad_request("invalid_form", format!("multipart body: {}", e.body_text()))
}

/// Deploy a rule or swap in a new version. The body is a multipart form
/// with a `manifest` field (`rule.toml`) and a `component` field (the
/// Wasm component). A bad upload changes nothing; the running version
/// carries on.
#[utoipa::path(put, operation_id = "rules_deploy", path = "/v1/rules/{name}", tag = "rules",
    params(("name" = String, Path), DeployQuery),
    request_body(content_type = "multipart/form-data", content = Object,
        description = "fields manifest (rule.toml) and component (.wasm)"),
    responses((status = 200, body = Deployed), (status = 201, body = Deployed),
        (status = 400, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("tenant" = [])))]
pub async fn deploy(
    TenantAuth(tenant): TenantAuth,
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    query: Result<Query<DeployQuery>, axum::extract::rejection::QueryRejection>,
    form: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<(StatusCode, Json<Deployed>), ApiError> {
    let mut form = form.map_err(|e| ApiError::bad_request("invalid_form", e.body_text()))?;
    let (mut manifest_text, mut component) = (None, None);
    while let Some(field) = form.next_field().await.map_err(multipart_error)? {
        let field_name = field.name().unwrap_or_default().to_owned();
        match field_name.as_str() {
            "manifest" => {
                let bytes = field.bytes().await.map_err(multipart_error)?;
                manifest_text = Some(String::from_utf8(bytes.to_vec()).map_err(|_| {
                    ApiError::bad_request("invalid_manifest", "manifest: not UTF-8 text")
                })?);
            }
            "component" => component = Some(field.bytes().await.map_err(multipart_error)?),
            other => {
                return Err(ApiError::bad_request(
                    "invalid_form",
                    format!("{other:?}: unknown form field; expected manifest and component"),
                ));
            }
        }
    }
    // Checked once the body is read: a client still sending it gets the
    // answer, not a closed connection.
    check_name("name", &name)?;
    let query = super::error::query(query)?;
    let manifest_text = manifest_text.ok_or_else(|| {
        ApiError::bad_request("invalid_form", "manifest: the form field is missing")
    })?;
    let component = component.ok_or_else(|| {
        ApiError::bad_request("invalid_form", "component: the form field is missing")
    })?;
    let manifest = Manifest::parse(&manifest_text)
        .map_err(|e| ApiError::bad_request("invalid_manifest", format!("manifest: {e}")))?;
    if manifest.name != name {
        return Err(ApiError::bad_request(
            "invalid_manifest",
            format!(
                "manifest: name = {:?} but the URL deploys {name:?}",
                manifest.name
            ),
        ));
    }
    let quotas = app
        .tenants
        .get(&tenant)
        .map(|t| t.quotas)
        .unwrap_or_default();
    quotas
        .check(&manifest)
        .map_err(|m| ApiError::unprocessable("quota_exceeded", format!("manifest: {m}")))?;
    let digest = crate::runtime::cache::digest(&component);
    // A first look, to answer before compiling; checked again under the
    // tenant's lock, where it counts.
    let plan = Plan {
        tenant: tenant.clone(),
        name: name.clone(),
        manifest,
        manifest_text,
        digest,
        reset: query.reset,
        max_rules: quotas.max_rules,
    };
    if let Some(unchanged) = plan.check(&app)? {
        return Ok((StatusCode::OK, Json(unchanged)));
    }
    // Compile (or read the cache) off the async threads.
    let started = std::time::Instant::now();
    let rule = app
        .load_rule(&tenant, component.clone(), plan.manifest.clone())
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| ApiError::unprocessable("invalid_component", format!("component: {e}")))?;
    let load_ms = started.elapsed().as_millis() as u64;
    let compile = match rule.rule.cache_outcome() {
        crate::runtime::cache::CacheOutcome::Hit => "hit",
        _ => "compiled",
    };
    // The change runs to its end even if the client goes away meanwhile:
    // a swap half done (the old task stopped, the new one not started)
    // must not be left behind.
    let app2 = app.clone();
    tokio::spawn(async move { swap(&app2, plan, rule, component, compile, load_ms).await })
        .await
        .map_err(ApiError::internal)?
}

/// A deploy, once its request is parsed.
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

impl Plan {
    /// Check the deploy against what runs: `Some` when exactly this runs
    /// already; errors for a version not raised or a quota full.
    fn check(&self, app: &App) -> Result<Option<Deployed>, ApiError> {
        let previous = app.registry.get(&self.tenant, &self.name)?;
        match &previous {
            Some(old) if !self.reset => {
                if old.digest == self.digest && old.manifest == self.manifest_text {
                    return Ok(Some(Deployed {
                        rule: self.name.clone(),
                        version: old.version,
                        kind: self.manifest.trigger.kind().into(),
                        digest: self.digest.clone(),
                        outcome: "unchanged".into(),
                        compile: "hit".into(),
                        load_ms: 0,
                        swap_ms: 0,
                    }));
                }
                if self.manifest.version <= old.version {
                    return Err(ApiError::conflict(
                        "version_not_raised",
                        format!(
                            "manifest: version = {} but version {} runs: a new version must raise it",
                            self.manifest.version, old.version
                        ),
                    ));
                }
            }
            Some(_) => {}
            None => {
                let count = app.registry.list_tenant(&self.tenant)?.len();
                if count >= self.max_rules {
                    return Err(ApiError::unprocessable(
                        "quota_exceeded",
                        format!(
                            "tenant {:?} has {count} rules, its quota (max_rules = {})",
                            self.tenant, self.max_rules
                        ),
                    ));
                }
            }
        }
        Ok(None)
    }
}

/// Swap `rule` in under the tenant's lock. The deployment is recorded
/// first — a crash right after brings this version back at start-up, with
/// the state it then finds — and put back as it was if the engine refuses.
async fn swap(
    app: &App,
    plan: Plan,
    rule: Deployable,
    component: axum::body::Bytes,
    compile: &'static str,
    load_ms: u64,
) -> Result<(StatusCode, Json<Deployed>), ApiError> {
    let lock = app.tenant_lock(&plan.tenant);
    let _lifecycle = lock.lock().await;
    if let Some(unchanged) = plan.check(app)? {
        return Ok((StatusCode::OK, Json(unchanged)));
    }
    let (tenant, name) = (plan.tenant.clone(), plan.name.clone());
    if !plan.reset {
        // A kind change is refused before anything is written.
        let (log, check) = (app.log.clone(), rule.clone());
        let checked = tokio::task::spawn_blocking(move || check.check_state(&log))
            .await
            .map_err(ApiError::internal)?;
        if let Err(e) = checked {
            return Err(core_error(&name, e));
        }
    }
    let previous = app.registry.get(&tenant, &name)?;
    let previous_component = match &previous {
        Some(old) => app.registry.component(&old.digest)?,
        None => None,
    };
    let kind = rule.kind_name().to_owned();
    let deployment = Deployment {
        tenant: tenant.clone(),
        name: name.clone(),
        version: plan.manifest.version,
        manifest: plan.manifest_text.clone(),
        digest: plan.digest.clone(),
        deployed_at: app.now(),
    };
    app.registry.put(&deployment, &component).await?;
    let swap_started = std::time::Instant::now();
    let result = if plan.reset {
        app.engine.deploy_reset(rule).await
    } else {
        app.engine.deploy(rule).await
    };
    if let Err(e) = result {
        // The engine kept (or put back) the previous version: so does the
        // registry.
        let restored = match (&previous, &previous_component) {
            (Some(old), Some(bytes)) => app.registry.put(old, bytes).await,
            _ => app.registry.remove(&tenant, &name).await.map(drop),
        };
        if let Err(r) = restored {
            tracing::error!(%tenant, rule = %name, error = %r, "could not put the previous deployment back");
        }
        return Err(core_error(&name, e));
    }
    let swap_ms = swap_started.elapsed().as_millis() as u64;
    app.broken_remove(&tenant, &name);
    let outcome = match (&previous, plan.reset) {
        (None, false) => "created",
        (_, true) => "reset",
        (Some(_), false) => "swapped",
    };
    tracing::info!(%tenant, rule = %name, version = plan.manifest.version, outcome, compile, load_ms, swap_ms, "deployed");
    let status = if previous.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        Json(Deployed {
            rule: name,
            version: plan.manifest.version,
            kind,
            digest: plan.digest,
            outcome: outcome.into(),
            compile: compile.into(),
            load_ms,
            swap_ms,
        }),
    ))
}

fn core_error(name: &str, e: CoreError) -> ApiError {
    match e {
        CoreError::State { key, problem } if key == "kind" => ApiError::conflict(
            "kind_changed",
            format!("manifest: trigger: {problem} (deploy with ?reset=true to drop it)"),
        ),
        e => ApiError::internal(format_args!("rule {name:?}: {e}")),
    }
}

/// How a rule is shown.
pub(super) async fn view(app: &App, d: &Deployment) -> RuleView {
    let manifest = Manifest::parse(&d.manifest).ok();
    let status: Option<RuleStatus> = app.engine.status(&d.tenant, &d.name);
    let fuel_used = match app.engine.loaded(&d.tenant, &d.name) {
        Some(rule) => rule.rule.fuel_used(),
        None => 0,
    };
    let broken = app.broken_get(&d.tenant, &d.name);
    let s = status.clone().unwrap_or_default();
    let broken = broken.or_else(|| s.failed.clone());
    let state = match (&status, &broken) {
        (None, _) | (_, Some(_)) => "failed",
        (Some(s), _) if s.suspended.is_some() => "suspended",
        (Some(s), _) if s.paused => "paused",
        _ => "active",
    };
    RuleView {
        name: d.name.clone(),
        version: d.version,
        kind: manifest
            .as_ref()
            .map_or("unknown", |m| m.trigger.kind())
            .into(),
        digest: d.digest.clone(),
        deployed_at: d.deployed_at,
        status: state.into(),
        suspended_reason: s.suspended.clone(),
        manifest: manifest.map_or(serde_json::Value::Null, |m| {
            serde_json::to_value(m).unwrap_or_default()
        }),
        cursor: s.cursor,
        pending_fires: s.pending_fires,
        running_fires: s.running_fires,
        dead_letters: s.dead_letters,
        partitions: s.partitions,
        counters: serde_json::to_value(&s.counters).unwrap_or_default(),
        fuel_used,
        last_error: broken.or(s.last_error),
        last_failure: s.last_failure,
    }
}

/// `drain=fire|discard` (default `fire`).
pub(super) fn parse_drain(drain: Option<&str>) -> Result<Drain, ApiError> {
    match drain.unwrap_or("fire") {
        "fire" => Ok(Drain::Fire),
        "discard" => Ok(Drain::Discard),
        other => Err(ApiError::bad_request(
            "invalid_query",
            format!("drain: {other:?} must be fire or discard"),
        )),
    }
}

fn no_rule(name: &str) -> ApiError {
    ApiError::not_found(format_args!("rule {name:?}"))
}

/// The tenant's rules, by name.
#[utoipa::path(get, operation_id = "rules_list", path = "/v1/rules", tag = "rules",
    responses((status = 200, body = Vec<RuleView>)), security(("tenant" = [])))]
pub async fn list(
    TenantAuth(tenant): TenantAuth,
    State(app): State<Arc<App>>,
) -> Result<Json<Vec<RuleView>>, ApiError> {
    let mut out = Vec::new();
    for d in app.registry.list_tenant(&tenant)? {
        out.push(view(&app, &d).await);
    }
    Ok(Json(out))
}

/// One rule: version, trigger, status, counters, last error.
#[utoipa::path(get, operation_id = "rules_show", path = "/v1/rules/{name}", tag = "rules",
    params(("name" = String, Path)),
    responses((status = 200, body = RuleView), (status = 404, body = ErrorBody)),
    security(("tenant" = [])))]
pub async fn show(
    TenantAuth(tenant): TenantAuth,
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Json<RuleView>, ApiError> {
    let d = app
        .registry
        .get(&tenant, &name)?
        .ok_or_else(|| no_rule(&name))?;
    Ok(Json(view(&app, &d).await))
}

/// Undeploy options.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UndeployQuery {
    /// `fire` (default): open windows and buffers fire now (reason
    /// drained) and pending fires run; `discard`: they are dropped and
    /// reported (`windows.discarded`).
    pub drain: Option<String>,
}

/// What an undeploy did.
#[derive(Debug, Serialize, ToSchema)]
pub struct Undeployed {
    /// The rule.
    pub rule: String,
    /// `fire` or `discard`.
    pub drain: String,
}

/// Undeploy a rule, draining its open windows as asked.
#[utoipa::path(delete, operation_id = "rules_undeploy", path = "/v1/rules/{name}", tag = "rules",
    params(("name" = String, Path), UndeployQuery),
    responses((status = 200, body = Undeployed), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("tenant" = [])))]
pub async fn undeploy(
    TenantAuth(tenant): TenantAuth,
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    query: Result<Query<UndeployQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Undeployed>, ApiError> {
    let query = super::error::query(query)?;
    let drain = parse_drain(query.drain.as_deref())?;
    // Run to the end even if the client goes away.
    let app2 = app.clone();
    let (t, n) = (tenant.clone(), name.clone());
    tokio::spawn(async move { undeploy_now(&app2, &t, &n, drain).await })
        .await
        .map_err(ApiError::internal)??;
    tracing::info!(%tenant, rule = %name, ?drain, "undeployed");
    Ok(Json(Undeployed {
        rule: name,
        drain: match drain {
            Drain::Fire => "fire",
            Drain::Discard => "discard",
        }
        .into(),
    }))
}

/// Undeploy under the tenant's lock. The deployment is forgotten first: a
/// crash mid-drain leaves the rule's state for a later deploy, and never
/// brings back a rule the feed says is gone.
pub(super) async fn undeploy_now(
    app: &App,
    tenant: &str,
    name: &str,
    drain: Drain,
) -> Result<(), ApiError> {
    let lock = app.tenant_lock(tenant);
    let _lifecycle = lock.lock().await;
    if !app.registry.remove(tenant, name).await? {
        return Err(no_rule(name));
    }
    app.broken_remove(tenant, name);
    app.engine
        .undeploy_drain(tenant, name, drain)
        .await
        .map_err(|e| ApiError::internal(format_args!("rule {name:?}: {e}")))?;
    Ok(())
}

async fn control(
    app: &App,
    tenant: &str,
    name: &str,
    pause: bool,
) -> Result<Json<RuleView>, ApiError> {
    let d = app
        .registry
        .get(tenant, name)?
        .ok_or_else(|| no_rule(name))?;
    let result = if pause {
        app.engine.pause(tenant, name).await
    } else {
        app.engine.resume(tenant, name).await
    };
    result.map_err(|e| ApiError::control(name, e))?;
    Ok(Json(view(app, &d).await))
}

/// Pause a rule: nothing of it runs until it is resumed; its events wait.
#[utoipa::path(post, operation_id = "rules_pause", path = "/v1/rules/{name}/pause", tag = "rules",
    params(("name" = String, Path)),
    responses((status = 200, body = RuleView), (status = 404, body = ErrorBody)),
    security(("tenant" = [])))]
pub async fn pause(
    TenantAuth(tenant): TenantAuth,
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Json<RuleView>, ApiError> {
    control(&app, &tenant, &name, true).await
}

/// Resume a paused or suspended rule.
#[utoipa::path(post, operation_id = "rules_resume", path = "/v1/rules/{name}/resume", tag = "rules",
    params(("name" = String, Path)),
    responses((status = 200, body = RuleView), (status = 404, body = ErrorBody)),
    security(("tenant" = [])))]
pub async fn resume(
    TenantAuth(tenant): TenantAuth,
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Json<RuleView>, ApiError> {
    control(&app, &tenant, &name, false).await
}
