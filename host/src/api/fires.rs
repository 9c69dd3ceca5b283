//! Fires: the tenant's pending fires and dead letters, completed and
//! failed attempts (from the engine's records), re-drive and discard.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::App;
use super::error::{ApiError, ErrorBody};
use super::events::EventView;
use super::tenants::TenantAuth;
use crate::event::Event;
use crate::log::EventQuery;
use crate::records::ENGINE_SOURCE;
use crate::triggers::fires::FireRecord;

/// A fire as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FireView {
    /// The fire's deterministic id.
    pub fire_id: String,
    /// The rule.
    pub rule: String,
    /// `pending` (waiting, retrying or running), `dead` (in the
    /// dead-letter list), `completed` or `failed` (an attempt that
    /// failed, from the feed's records).
    pub status: String,
    /// The partition (absent: the global one).
    pub partition: Option<String>,
    /// Why it fired (`count-reached`, `window-expired`, `drained`,
    /// `schedule`, `dwell:<label>`), when known.
    #[schema(value_type = Option<Object>)]
    pub reason: Option<serde_json::Value>,
    /// The seqs of its events, when known.
    pub seqs: Option<Vec<u64>>,
    /// Handler attempts made.
    pub attempts: Option<u32>,
    /// When the next attempt is due (ms), if it waits for a retry.
    pub retry_at: Option<i64>,
    /// What the last failed attempt said.
    pub error: Option<String>,
    /// When it was created (pending, dead) or recorded (completed,
    /// failed), in ms since the epoch.
    pub at: i64,
    /// The seq of the engine record (completed, failed).
    pub record_seq: Option<u64>,
}

fn from_record(r: FireRecord, status: &str) -> FireView {
    FireView {
        fire_id: r.fire_id,
        rule: r.rule,
        status: status.into(),
        partition: r.partition,
        reason: serde_json::to_value(&r.reason).ok(),
        seqs: Some(r.seqs),
        attempts: Some(r.attempts),
        retry_at: r.retry_at,
        error: r.last_error,
        at: r.created_at,
        record_seq: None,
    }
}

/// A read of the tenant's fires.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FiresQuery {
    /// Only this rule's.
    pub rule: Option<String>,
    /// `pending`, `dead`, `completed`, `failed`; default: pending and
    /// dead.
    #[param(value_type = Option<super::openapi::FireStatusParam>)]
    pub status: Option<String>,
    /// At most this many completed or failed ones (default 100, at most
    /// 10 000), newest last.
    #[param(minimum = 1, maximum = 10_000)]
    pub limit: Option<usize>,
}

async fn open_fires(app: &App, tenant: &str, rule: &str, dead: bool) -> Vec<FireRecord> {
    let got = if dead {
        app.deploys.engine.dead_letters(tenant, rule).await
    } else {
        app.deploys.engine.pending_fires(tenant, rule).await
    };
    got.unwrap_or_default()
}

/// The tenant's fires.
#[utoipa::path(get, operation_id = "fires_list", path = "/v1/fires", tag = "fires", params(FiresQuery),
    responses((status = 200, body = Vec<FireView>), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("tenant" = [])))]
pub async fn list(
    TenantAuth(tenant): TenantAuth,
    State(app): State<Arc<App>>,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
    query: Result<Query<FiresQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    let q = super::error::query(query)?;
    let statuses: &[&str] = match q.status.as_deref() {
        None => &["pending", "dead"],
        Some("pending") => &["pending"],
        Some("dead") => &["dead"],
        Some("completed") => &["completed"],
        Some("failed") => &["failed"],
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("status: {other:?} must be pending, dead, completed or failed"),
            ));
        }
    };
    let limit = super::error::bounded("limit", q.limit, 100, 10_000)?;
    let rules: Vec<String> = match &q.rule {
        Some(r) => {
            if app.deploys.registry.get(&tenant, r)?.is_none() {
                return Err(ApiError::not_found(format_args!("rule {r:?}")));
            }
            vec![r.clone()]
        }
        None => app
            .deploys
            .registry
            .list_tenant(&tenant)?
            .into_iter()
            .map(|d| d.name)
            .collect(),
    };
    let mut out = Vec::new();
    for status in statuses {
        match *status {
            "pending" | "dead" => {
                for r in &rules {
                    for f in open_fires(&app, &tenant, r, *status == "dead").await {
                        out.push(from_record(f, status));
                    }
                }
            }
            _ => out.extend(recorded(&app, &tenant, q.rule.as_deref(), status, limit).await?),
        }
    }
    let mut out: Vec<serde_json::Value> = out
        .into_iter()
        .map(|f| serde_json::to_value(f).unwrap_or_default())
        .collect();
    // On several nodes the pending fires and dead letters of a rule are
    // its node's to tell (completed and failed ones are in the log, read
    // here).
    if app.cluster.is_some() && !super::cluster::forwarded(&headers) {
        let asked = uri.path_and_query().map_or("/v1/fires", |p| p.as_str());
        for answer in super::cluster::ask_others(&app, &headers, asked).await {
            out.extend(
                answer
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|f| matches!(f["status"].as_str(), Some("pending" | "dead")))
                    .cloned(),
            );
        }
    }
    Ok(Json(out))
}

/// Completed or failed attempts, from the engine's records: the newest
/// `limit`, oldest first.
async fn recorded(
    app: &App,
    tenant: &str,
    rule: Option<&str>,
    status: &str,
    limit: usize,
) -> Result<Vec<FireView>, ApiError> {
    let kind = if status == "completed" {
        "fire.completed"
    } else {
        "fire.failed"
    };
    // The newest records of that kind, on the (tenant, kind, seq) index:
    // what this reads does not grow with the log.
    let log = app.log.clone();
    let mut out = Vec::new();
    let mut before = None::<u64>;
    while out.len() < limit {
        let query = EventQuery {
            source: Some(ENGINE_SOURCE.into()),
            kind: Some(kind.into()),
            until_seq: before.map(|b| b - 1),
            newest_first: true,
            ..EventQuery::tenant(tenant, 1_000)
        };
        let log2 = log.clone();
        let page = tokio::task::spawn_blocking(move || log2.query(&query))
            .await
            .map_err(ApiError::internal)??;
        let Some(last) = page.last() else {
            break;
        };
        before = Some(last.seq);
        let full = page.len() == 1_000;
        for e in &page {
            let p: serde_json::Value = serde_json::from_str(&e.payload).unwrap_or_default();
            let r = p["rule"].as_str().unwrap_or_default();
            if rule.is_some_and(|want| want != r) {
                continue;
            }
            out.push(FireView {
                fire_id: p["fire_id"].as_str().unwrap_or_default().into(),
                rule: r.into(),
                status: status.into(),
                partition: p["partition"].as_str().map(str::to_owned),
                reason: None,
                seqs: None,
                attempts: p["attempt"].as_u64().map(|a| a as u32),
                retry_at: p["retry_at"].as_i64(),
                error: p["error"].as_str().map(str::to_owned),
                at: e.time,
                record_seq: Some(e.seq),
            });
            if out.len() == limit {
                break;
            }
        }
        if !full || before == Some(1) {
            break;
        }
    }
    out.reverse();
    Ok(out)
}

/// Find one of the tenant's open fires: (rule, record, dead).
async fn find(app: &App, tenant: &str, id: &str) -> Result<(String, FireRecord, bool), ApiError> {
    for d in app.deploys.registry.list_tenant(tenant)? {
        for dead in [true, false] {
            if let Some(f) = open_fires(app, tenant, &d.name, dead)
                .await
                .into_iter()
                .find(|f| f.fire_id == id)
            {
                return Ok((d.name, f, dead));
            }
        }
    }
    Err(ApiError::not_found(format_args!(
        "pending fire or dead letter {id:?}"
    )))
}

/// Events of a fire's batch shown with it, at most.
const BATCH_SHOWN: usize = 100;

/// A fire whole: where it stands, its batch, its engine records (each
/// attempt), its outputs and the guest's last log lines.
#[derive(Debug, Serialize, ToSchema)]
pub struct FireDetail {
    /// The fire (`status` also `cancelled`, or `discarded` for a dead
    /// letter dropped).
    #[serde(flatten)]
    pub fire: FireView,
    /// The first 100 events of its batch, in log order (the batch of a
    /// fire completed before this field was recorded is not known).
    pub events: Vec<EventView>,
    /// How many events its batch has.
    pub batch_size: usize,
    /// Its engine records, oldest first: `fire.failed` (with the error,
    /// the guest backtrace, stderr and log lines), `fire.dead_lettered`,
    /// `fire.completed`, `fire.cancelled`, `outputs.dropped`.
    pub records: Vec<EventView>,
    /// What its handler emitted, as appended to the log.
    pub outputs: Vec<EventView>,
    /// The guest's last lines (stdout, stderr, `log`) during the attempt
    /// that completed it, each named by where it went.
    pub logs: Vec<String>,
}

/// A fire's engine records and outputs: the tenant's events whose id
/// starts with the fire's (found on the id index, however long the log).
async fn fire_events(app: &App, tenant: &str, id: &str) -> Result<Vec<Event>, ApiError> {
    let query = EventQuery {
        id_prefix: Some(crate::records::engine_id(format_args!("{id}."))),
        ..EventQuery::tenant(tenant, 10_000)
    };
    let log = app.log.clone();
    Ok(tokio::task::spawn_blocking(move || log.query(&query))
        .await
        .map_err(ApiError::internal)??)
}

/// A fire no longer open, as its records tell it.
fn from_records(id: &str, records: &[&Event]) -> Option<FireView> {
    let status_of = |kind: &str| match kind {
        "fire.completed" => Some("completed"),
        "fire.cancelled" => Some("cancelled"),
        "fire.dead_lettered" => Some("discarded"),
        "fire.failed" => Some("failed"),
        _ => None,
    };
    let last = records
        .iter()
        .rev()
        .find(|e| status_of(&e.kind).is_some())?;
    let payload =
        |e: &Event| serde_json::from_str::<serde_json::Value>(&e.payload).unwrap_or_default();
    let p = payload(last);
    let first = records
        .iter()
        .map(|e| payload(e))
        .find(|p| p["seqs"].is_array());
    let attempts = records
        .iter()
        .filter(|e| e.kind.starts_with("fire."))
        .count();
    Some(FireView {
        fire_id: id.to_owned(),
        rule: p["rule"].as_str().unwrap_or_default().to_owned(),
        status: status_of(&last.kind).unwrap_or_default().to_owned(),
        partition: records
            .iter()
            .map(|e| payload(e))
            .find_map(|p| p["partition"].as_str().map(str::to_owned)),
        reason: first.as_ref().map(|p| p["reason"].clone()),
        seqs: first
            .as_ref()
            .and_then(|p| serde_json::from_value(p["seqs"].clone()).ok()),
        attempts: p["attempt"]
            .as_u64()
            .or(p["attempts"].as_u64())
            .map(|a| a as u32)
            .or(Some(attempts as u32)),
        retry_at: None,
        error: p["error"].as_str().map(str::to_owned),
        at: last.time,
        record_seq: Some(last.seq),
    })
}

/// One fire, whole: a pending fire or dead letter, or one that completed,
/// failed or was cancelled (from its engine records).
#[utoipa::path(get, operation_id = "fires_show", path = "/v1/fires/{id}", tag = "fires",
    params(("id" = String, Path)),
    responses((status = 200, body = FireDetail), (status = 404, body = ErrorBody)),
    security(("tenant" = [])))]
pub async fn show(
    TenantAuth(tenant): TenantAuth,
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    req: OnAnyNode,
) -> Result<Response, ApiError> {
    let open = find(&app, &tenant, &id).await;
    let all = fire_events(&app, &tenant, &id).await?;
    let (outputs, records): (Vec<&Event>, Vec<&Event>) =
        all.iter().partition(|e| e.source != ENGINE_SOURCE);
    let fire = match open {
        Ok((_, f, dead)) => from_record(f, if dead { "dead" } else { "pending" }),
        Err(e) => {
            let done = records
                .iter()
                .any(|r| matches!(r.kind.as_str(), "fire.completed" | "fire.cancelled"));
            // Still open on the node running its rule?
            if !done && (records.is_empty() || app.cluster.is_some()) {
                match req.elsewhere(&app, e).await {
                    Ok(answer) => return Ok(answer),
                    Err(e) if records.is_empty() => return Err(e),
                    Err(_) => {}
                }
            }
            from_records(&id, &records)
                .ok_or_else(|| ApiError::not_found(format_args!("fire {id:?}")))?
        }
    };
    let seqs = fire.seqs.clone().unwrap_or_default();
    let shown: Vec<u64> = seqs.iter().copied().take(BATCH_SHOWN).collect();
    let (log, t, rule, fire_id) = (
        app.log.clone(),
        tenant.clone(),
        fire.rule.clone(),
        fire.fire_id.clone(),
    );
    let events = tokio::task::spawn_blocking(move || {
        let found = log.read_seqs(&t, &shown)?;
        if found.len() == shown.len() {
            return Ok(found);
        }
        // Pruned from the log: a dead letter keeps its batch with it.
        let ns = crate::triggers::state::namespace(&t, &rule);
        Ok::<_, crate::log::LogError>(
            match log.state_get(&ns, &crate::triggers::state::kept(&fire_id))? {
                Some(bytes) => serde_json::from_slice::<Vec<crate::event::Event>>(&bytes)
                    .map(|mut kept| {
                        kept.truncate(BATCH_SHOWN);
                        kept
                    })
                    .unwrap_or(found),
                None => found,
            },
        )
    })
    .await
    .map_err(ApiError::internal)??;
    let logs = records
        .iter()
        .rev()
        .find(|r| r.kind == "fire.completed")
        .and_then(|r| serde_json::from_str::<serde_json::Value>(&r.payload).ok())
        .and_then(|p| serde_json::from_value(p["logs"].clone()).ok())
        .unwrap_or_default();
    Ok(Json(FireDetail {
        fire,
        batch_size: seqs.len(),
        events: events.iter().map(EventView::from).collect(),
        records: records.into_iter().map(EventView::from).collect(),
        outputs: outputs.into_iter().map(EventView::from).collect(),
        logs,
    })
    .into_response())
}

/// A request about a fire, which on several nodes only the node running
/// its rule can answer: one this node cannot answer (404) goes to the
/// others.
#[derive(Debug)]
pub struct OnAnyNode {
    method: axum::http::Method,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for OnAnyNode {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self {
            method: parts.method.clone(),
            headers: parts.headers.clone(),
            uri: parts.uri.clone(),
        })
    }
}

impl OnAnyNode {
    /// `e` if it is not a 404 or no other node knows better; else what
    /// the node that does answered.
    async fn elsewhere(&self, app: &App, e: ApiError) -> Result<Response, ApiError> {
        if e.status != axum::http::StatusCode::NOT_FOUND {
            return Err(e);
        }
        let path = self
            .uri
            .path_and_query()
            .map_or(self.uri.path(), |p| p.as_str());
        match super::cluster::try_others(app, self.method.clone(), &self.headers, path).await {
            Some(r) => Ok(r),
            None => Err(e),
        }
    }
}

/// One of the tenant's dead letters: (rule, record); a pending fire of
/// that id is a conflict.
async fn dead_letter(app: &App, tenant: &str, id: &str) -> Result<(String, FireRecord), ApiError> {
    match find(app, tenant, id).await? {
        (rule, f, true) => Ok((rule, f)),
        _ => Err(ApiError::conflict(
            "not_dead_lettered",
            format!("fire {id:?} is pending, not in the dead-letter list"),
        )),
    }
}

/// Re-drive a dead letter: it runs again with a fresh round of attempts.
#[utoipa::path(post, operation_id = "fires_redrive", path = "/v1/fires/{id}/redrive", tag = "fires",
    params(("id" = String, Path)),
    responses((status = 200, body = FireView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)),
    security(("tenant" = [])))]
pub async fn redrive(
    TenantAuth(tenant): TenantAuth,
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    req: OnAnyNode,
) -> Result<Response, ApiError> {
    let (rule, f) = match dead_letter(&app, &tenant, &id).await {
        Err(e) => return req.elsewhere(&app, e).await,
        Ok(found) => found,
    };
    app.deploys
        .engine
        .redrive(&tenant, &rule, &id)
        .await
        .map_err(|e| ApiError::control(&rule, e))?;
    Ok(Json(from_record(f, "pending")).into_response())
}

/// Discard a dead letter (recorded on the feed).
#[utoipa::path(delete, operation_id = "fires_discard", path = "/v1/fires/{id}", tag = "fires",
    params(("id" = String, Path)),
    responses((status = 200, body = FireView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)),
    security(("tenant" = [])))]
pub async fn discard(
    TenantAuth(tenant): TenantAuth,
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    req: OnAnyNode,
) -> Result<Response, ApiError> {
    let (rule, f) = match dead_letter(&app, &tenant, &id).await {
        Err(e) => return req.elsewhere(&app, e).await,
        Ok(found) => found,
    };
    app.deploys
        .engine
        .discard_dead(&tenant, &rule, &id)
        .await
        .map_err(|e| ApiError::control(&rule, e))?;
    Ok(Json(from_record(f, "discarded")).into_response())
}
