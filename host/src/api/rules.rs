//! Rules: deploy (and hot swap), list, show, undeploy, pause and resume.
//! The handlers parse the request, call the deploy service
//! ([`crate::engine::deploy`]) or the engine, and map the error.

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
pub use crate::engine::deploy::Deployed;
use crate::engine::deploy::{DeployError, DeployRequest};
use crate::engine::registry::Deployment;
use crate::engine::rule::{Failure, RuleStatus};
use crate::manifest::Manifest;

impl From<DeployError> for ApiError {
    fn from(e: DeployError) -> Self {
        match e {
            DeployError::Invalid { code, message } => ApiError::bad_request(code, message),
            DeployError::Conflict { code, message } => ApiError::conflict(code, message),
            DeployError::Refused { code, message } => ApiError::unprocessable(code, message),
            DeployError::NoSuchRule(name) => no_rule(&name),
            DeployError::NoSuchShadow(name) => {
                ApiError::not_found(format_args!("shadow of rule {name:?}"))
            }
            DeployError::Internal(m) => ApiError::internal(m),
        }
    }
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
    /// Deploy the version as the rule's shadow: it runs beside the live
    /// version on the same events, from a copy of its state, and its
    /// outputs are kept aside (see `/v1/rules/{name}/shadow/diff`). The
    /// version must be raised and the trigger kind kept.
    #[serde(default)]
    pub shadow: bool,
}

/// A rule as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct RuleView {
    /// The rule's name.
    pub name: String,
    /// The running version.
    pub version: u32,
    /// The version of the rule's shadow, when it has one (see
    /// `/v1/rules/{name}/shadow`).
    pub shadow_version: Option<u32>,
    /// `batch`, `dwell` or `schedule`.
    pub kind: String,
    /// The trigger in words ("batches of 10 per partition; a window still
    /// short 1h after it opens fires what it has").
    pub trigger_text: Option<String>,
    /// SHA-256 of the component.
    pub digest: String,
    /// When this version was deployed (ms since the epoch).
    pub deployed_at: i64,
    /// `active`, `paused`, `suspended` or `failed` (could not start, or
    /// the engine failed while running it; see `last_error`). A resume or
    /// a redeploy brings a failed rule back. On several nodes, `unowned`
    /// for the moment between one node giving a rule up and another
    /// taking it. `undeploying` while an undeploy drains it.
    pub status: String,
    /// On several nodes: the node running the rule.
    pub node: Option<String>,
    /// Why the rule is suspended.
    pub suspended_reason: Option<String>,
    /// The manifest, as parsed (trigger, limits, retry, …).
    #[schema(value_type = Object)]
    pub manifest: serde_json::Value,
    /// Last seq processed.
    pub cursor: u64,
    /// Fires waiting, retrying or running.
    pub pending_fires: usize,
    /// The rule's next deadline (a window's expiry, a dwell reaction, a
    /// schedule tick; ms), if any.
    pub next_due: Option<i64>,
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

/// The deploy form, as the document describes it (the handler reads the
/// multipart fields itself, and refuses any other field).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct DeployForm {
    /// `rule.toml`.
    manifest: String,
    /// The Wasm component.
    #[schema(value_type = String, format = Binary)]
    component: Vec<u8>,
}

/// Deploy a rule or swap in a new version. The body is a multipart form
/// with a `manifest` field (`rule.toml`) and a `component` field (the
/// Wasm component). A bad upload changes nothing; the running version
/// carries on.
#[utoipa::path(put, operation_id = "rules_deploy", path = "/v1/rules/{name}", tag = "rules",
    params(("name" = String, Path, pattern = r"^[a-z][a-z0-9_-]{0,63}$"), DeployQuery),
    request_body(content_type = "multipart/form-data", content = DeployForm,
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
    let request = DeployRequest {
        quotas: app.quotas(&tenant),
        tenant,
        name,
        manifest: manifest_text,
        component,
        reset: query.reset,
    };
    // The change runs to its end even if the client goes away meanwhile:
    // a swap half done (the old task stopped, the new one not started)
    // must not be left behind.
    let app2 = app.clone();
    let shadow = query.shadow;
    let (created, deployed) = tokio::spawn(async move {
        match shadow {
            true => app2
                .deploys
                .deploy_shadow(request)
                .await
                .map(|d| (false, d)),
            false => app2.deploys.deploy(request).await,
        }
    })
    .await
    .map_err(ApiError::internal)??;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(deployed)))
}

/// How a rule is shown.
pub(super) async fn view(app: &App, d: &Deployment) -> RuleView {
    let manifest = Manifest::parse(&d.manifest).ok();
    let status: Option<RuleStatus> = app.deploys.engine.status(&d.tenant, &d.name);
    let fuel_used = match app.deploys.engine.loaded(&d.tenant, &d.name) {
        Some(rule) => rule.rule.fuel_used(),
        None => 0,
    };
    let broken = app.deploys.broken(&d.tenant, &d.name);
    let s = status.clone().unwrap_or_default();
    let broken = broken.or_else(|| s.failed.clone());
    let state = match (&status, &broken) {
        // Its undeploy is draining it (or will finish at the next start).
        _ if d.draining.is_some() => "undeploying",
        // On several nodes: running nowhere for the moment.
        (None, None) if app.cluster.is_some() => "unowned",
        (None, _) | (_, Some(_)) => "failed",
        (Some(s), _) if s.suspended.is_some() => "suspended",
        (Some(s), _) if s.paused => "paused",
        _ => "active",
    };
    let shadow_version = app
        .deploys
        .shadow(&d.tenant, &d.name)
        .ok()
        .flatten()
        .map(|s| s.deployment.version);
    RuleView {
        name: d.name.clone(),
        version: d.version,
        shadow_version,
        kind: manifest
            .as_ref()
            .map_or("unknown", |m| m.trigger.kind())
            .into(),
        trigger_text: manifest.as_ref().map(|m| m.trigger.describe()),
        digest: d.digest.clone(),
        deployed_at: d.deployed_at,
        status: state.into(),
        node: app.cluster.as_ref().map(|c| c.node().to_owned()),
        suspended_reason: s.suspended.clone(),
        manifest: manifest.map_or(serde_json::Value::Null, |m| {
            serde_json::to_value(m).unwrap_or_default()
        }),
        cursor: s.cursor,
        pending_fires: s.pending_fires,
        next_due: s.next_due,
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
    Drain::parse(drain).map_err(|m| ApiError::bad_request("invalid_query", m))
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
    headers: axum::http::HeaderMap,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    let deployed = app.deploys.registry.list_tenant(&tenant)?;
    let as_json = |v: RuleView| serde_json::to_value(v).unwrap_or_default();
    let Some(cluster) = app.cluster.clone() else {
        let mut out = Vec::new();
        for d in deployed {
            out.push(as_json(view(&app, &d).await));
        }
        return Ok(Json(out));
    };
    // Each node shows the rules it holds; the node asked merges them,
    // and shows a rule nobody holds as `unowned`.
    let mut shown: std::collections::BTreeMap<String, serde_json::Value> = Default::default();
    for d in &deployed {
        if app.log.lease(&tenant, &d.name).is_some() {
            shown.insert(d.name.clone(), as_json(view(&app, d).await));
        }
    }
    if super::cluster::forwarded(&headers) {
        return Ok(Json(shown.into_values().collect()));
    }
    for answer in super::cluster::ask_others(&app, &headers, "/v1/rules").await {
        for v in answer.as_array().into_iter().flatten() {
            if let Some(name) = v["name"].as_str() {
                shown.entry(name.to_owned()).or_insert_with(|| v.clone());
            }
        }
    }
    let mut out = Vec::new();
    for d in &deployed {
        match shown.remove(&d.name) {
            Some(v) => out.push(v),
            None => {
                let mut v = view(&app, d).await;
                v.status = "unowned".into();
                v.node = None;
                v.last_error = Some(format!(
                    "no node holds the rule's lease right now; one takes it within {} ms",
                    cluster.config().ttl.as_millis()
                ));
                out.push(as_json(v));
            }
        }
    }
    Ok(Json(out))
}

/// One rule: version, trigger, status, counters, last error.
#[utoipa::path(get, operation_id = "rules_show", path = "/v1/rules/{name}", tag = "rules",
    params(("name" = String, Path, pattern = r"^[a-z][a-z0-9_-]{0,63}$")),
    responses((status = 200, body = RuleView), (status = 404, body = ErrorBody)),
    security(("tenant" = [])))]
pub async fn show(
    TenantAuth(tenant): TenantAuth,
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Json<RuleView>, ApiError> {
    let d = app
        .deploys
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
    #[param(value_type = Option<super::openapi::DrainParam>)]
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
    params(("name" = String, Path, pattern = r"^[a-z][a-z0-9_-]{0,63}$"), UndeployQuery),
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
    tokio::spawn(async move { app2.deploys.undeploy(&t, &n, drain).await })
        .await
        .map_err(ApiError::internal)??;
    Ok(Json(Undeployed {
        rule: name,
        drain: drain.name().into(),
    }))
}

async fn control(
    app: &App,
    tenant: &str,
    name: &str,
    pause: bool,
) -> Result<Json<RuleView>, ApiError> {
    let d = app
        .deploys
        .registry
        .get(tenant, name)?
        .ok_or_else(|| no_rule(name))?;
    let result = if pause {
        app.deploys.engine.pause(tenant, name).await
    } else {
        app.deploys.engine.resume(tenant, name).await
    };
    result.map_err(|e| ApiError::control(name, e))?;
    Ok(Json(view(app, &d).await))
}

/// Pause a rule: nothing of it runs until it is resumed; its events wait.
#[utoipa::path(post, operation_id = "rules_pause", path = "/v1/rules/{name}/pause", tag = "rules",
    params(("name" = String, Path, pattern = r"^[a-z][a-z0-9_-]{0,63}$")),
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
    params(("name" = String, Path, pattern = r"^[a-z][a-z0-9_-]{0,63}$")),
    responses((status = 200, body = RuleView), (status = 404, body = ErrorBody)),
    security(("tenant" = [])))]
pub async fn resume(
    TenantAuth(tenant): TenantAuth,
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Json<RuleView>, ApiError> {
    control(&app, &tenant, &name, false).await
}

/// A page of a rule's open partitions.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PartitionsQuery {
    /// Start after this partition key (the `next_after` of the page
    /// before); absent: from the start, the global partition first.
    pub after: Option<String>,
    /// Partitions on the page (1 to 1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// One open partition.
#[derive(Debug, Serialize, ToSchema)]
pub struct PartitionView {
    /// The partition key (absent: the rule's global partition).
    pub partition: Option<String>,
    /// Its next deadline (ms since the epoch): a window's expiry, a dwell
    /// reaction, a forced leave.
    pub deadline: Option<i64>,
    /// Its state: for a batch window `events`, `opened_at`, `first_seq`,
    /// `last_seq`; for a dwell partition `member`, `epoch`, `since`,
    /// `first_seq`, `last_seq`; for a schedule `events` since the last
    /// tick.
    #[schema(value_type = Object)]
    pub state: serde_json::Value,
}

/// A page of a rule's open partitions, in key order.
#[derive(Debug, Serialize, ToSchema)]
pub struct PartitionPage {
    /// Open partitions in all.
    pub total: usize,
    /// This page.
    pub partitions: Vec<PartitionView>,
    /// Pass as `after` for the next page; absent on the last.
    pub next_after: Option<String>,
    /// For a schedule: its next ticks (ms since the epoch, at most 5).
    pub next_ticks: Vec<i64>,
}

/// A page of a rule's open partitions (windows, memberships, buffers)
/// with their deadlines; for a schedule, also its next ticks. A rule may
/// hold millions: page with `after`.
#[utoipa::path(get, operation_id = "rules_partitions", path = "/v1/rules/{name}/partitions", tag = "rules",
    params(("name" = String, Path, pattern = r"^[a-z][a-z0-9_-]{0,63}$"), PartitionsQuery),
    responses((status = 200, body = PartitionPage), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("tenant" = [])))]
pub async fn partitions(
    TenantAuth(tenant): TenantAuth,
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    query: Result<Query<PartitionsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<PartitionPage>, ApiError> {
    let q = super::error::query(query)?;
    let limit = super::error::bounded("limit", q.limit, 100, 1000)?;
    app.deploys
        .registry
        .get(&tenant, &name)?
        .ok_or_else(|| no_rule(&name))?;
    let page = app
        .deploys
        .engine
        .inspect(&tenant, &name, q.after, limit)
        .await
        .map_err(|e| ApiError::control(&name, e))?;
    Ok(Json(PartitionPage {
        total: page.total,
        partitions: page
            .partitions
            .into_iter()
            .map(|p| PartitionView {
                partition: p.partition,
                deadline: p.deadline,
                state: p.state,
            })
            .collect(),
        next_after: page.next_after,
        next_ticks: page.next_ticks,
    }))
}

/// The engine records of a rule's life, newest first.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// Records at most (1 to 1000, default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// Kinds of the records about a rule's life.
const LIFE: [&str; 5] = [
    "rule.swapped",
    "rule.reset",
    "rule.failed",
    "rule.suspended",
    "rule.undeployed",
];

/// A rule's history, newest first: swaps (each with the version before,
/// `previous`), resets, failures of its task and suspensions.
#[utoipa::path(get, operation_id = "rules_history", path = "/v1/rules/{name}/history", tag = "rules",
    params(("name" = String, Path, pattern = r"^[a-z][a-z0-9_-]{0,63}$"), HistoryQuery),
    responses((status = 200, body = Vec<super::events::EventView>), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("tenant" = [])))]
pub async fn history(
    TenantAuth(tenant): TenantAuth,
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<super::events::EventView>>, ApiError> {
    let q = super::error::query(query)?;
    let limit = super::error::bounded("limit", q.limit, 50, 1000)?;
    app.deploys
        .registry
        .get(&tenant, &name)?
        .ok_or_else(|| no_rule(&name))?;
    let log = app.log.clone();
    let found = tokio::task::spawn_blocking(move || {
        let mut found = Vec::new();
        // Newest first, per kind, on the (tenant, kind, seq) index; these
        // records are few next to the log.
        for kind in LIFE {
            let mut before = None::<u64>;
            let mut of_kind = 0;
            loop {
                let page = log.query(&crate::log::EventQuery {
                    source: Some(crate::records::ENGINE_SOURCE.into()),
                    kind: Some(kind.into()),
                    until_seq: before.map(|b| b.saturating_sub(1)),
                    newest_first: true,
                    ..crate::log::EventQuery::tenant(&tenant, 1_000)
                })?;
                let full = page.len() == 1_000;
                before = page.last().map(|e| e.seq);
                for e in page {
                    let about = serde_json::from_str::<serde_json::Value>(&e.payload)
                        .is_ok_and(|p| p["rule"].as_str() == Some(name.as_str()));
                    if about && of_kind < limit {
                        of_kind += 1;
                        found.push(e);
                    }
                }
                if !full || of_kind == limit || before <= Some(1) {
                    break;
                }
            }
        }
        found.sort_by_key(|e| std::cmp::Reverse(e.seq));
        found.truncate(limit);
        Ok::<_, crate::log::LogError>(found)
    })
    .await
    .map_err(ApiError::internal)??;
    Ok(Json(
        found.iter().map(super::events::EventView::from).collect(),
    ))
}
