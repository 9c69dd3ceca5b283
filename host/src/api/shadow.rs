//! Shadows: a rule's next version running beside it on the same events
//! (deployed with `PUT /v1/rules/{name}?shadow=true`), its status, its
//! diff with the live rule, its promotion and its discarding. The handlers
//! parse the request, call the deploy service
//! ([`crate::engine::deploy`]) and map the error.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::App;
use super::error::{ApiError, ErrorBody};
use super::tenants::{TenantAuth, check_name};
pub use crate::engine::deploy::Deployed;
use crate::engine::deploy::shadow_name;
pub use crate::engine::shadow::ShadowDiff;

/// A rule's shadow as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ShadowView {
    /// The rule's name.
    pub rule: String,
    /// The shadow's version.
    pub version: u32,
    /// The live version beside it.
    pub live_version: u32,
    /// SHA-256 of the shadow's component.
    pub digest: String,
    /// When it was deployed (ms since the epoch).
    pub deployed_at: i64,
    /// The log position it started from: the live rule's cursor then.
    pub from_seq: u64,
    /// `active`, or `stopped` when it does not run on this node (it could
    /// not start; the server's log says why).
    pub status: String,
    /// Last seq processed.
    pub cursor: u64,
    /// Fires waiting, retrying or running.
    pub pending_fires: usize,
    /// Dead letters.
    pub dead_letters: usize,
    /// Partitions with open state.
    pub partitions: usize,
    /// Counters since it started.
    #[schema(value_type = Object)]
    pub counters: serde_json::Value,
    /// The last error of its task.
    pub last_error: Option<String>,
}

/// The diff's options.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DiffQuery {
    /// Differences shown at most (1 to 1000, default 100); `differences`
    /// counts them all.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// Which state the promoted version carries on from.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromoteRequest {
    /// `live` (default: the live rule's state, as a hot swap) or `shadow`
    /// (the shadow's: windows, memberships and pending fires as the new
    /// version left them; what it kept aside is not emitted).
    #[schema(pattern = "^(live|shadow)$")]
    pub state: Option<String>,
}

fn no_shadow(name: &str) -> ApiError {
    ApiError::not_found(format_args!("shadow of rule {name:?}"))
}

/// A rule's shadow: version, status, where it started.
#[utoipa::path(get, operation_id = "shadow_show", path = "/v1/rules/{name}/shadow", tag = "rules",
    params(("name" = String, Path, pattern = r"^[a-z][a-z0-9_-]{0,63}$")),
    responses((status = 200, body = ShadowView), (status = 404, body = ErrorBody)),
    security(("tenant" = [])))]
pub async fn show(
    TenantAuth(tenant): TenantAuth,
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Json<ShadowView>, ApiError> {
    check_name("name", &name)?;
    let shadow = app
        .deploys
        .shadow(&tenant, &name)?
        .ok_or_else(|| no_shadow(&name))?;
    let live_version = app
        .deploys
        .registry
        .get(&tenant, &name)?
        .map_or(0, |d| d.version);
    let status = app.deploys.engine.status(&tenant, &shadow_name(&name));
    let s = status.clone().unwrap_or_default();
    let d = shadow.deployment;
    Ok(Json(ShadowView {
        rule: name,
        version: d.version,
        live_version,
        digest: d.digest,
        deployed_at: d.deployed_at,
        from_seq: shadow.from_seq,
        status: match (&status, &s.failed) {
            (Some(_), None) => "active",
            _ => "stopped",
        }
        .into(),
        cursor: s.cursor,
        pending_fires: s.pending_fires,
        dead_letters: s.dead_letters,
        partitions: s.partitions,
        counters: serde_json::to_value(&s.counters).unwrap_or_default(),
        last_error: s.failed.or(s.last_error),
    }))
}

/// Where a rule and its shadow disagree, since the shadow started: fires
/// one has and the other lacks, batches that differ, outputs that differ.
/// A fire is compared once both sides have read past its events with
/// nothing pending for it; `settled` says every fire so far was.
#[utoipa::path(get, operation_id = "shadow_diff", path = "/v1/rules/{name}/shadow/diff", tag = "rules",
    params(("name" = String, Path, pattern = r"^[a-z][a-z0-9_-]{0,63}$"), DiffQuery),
    responses((status = 200, body = ShadowDiff), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("tenant" = [])))]
pub async fn diff(
    TenantAuth(tenant): TenantAuth,
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    query: Result<Query<DiffQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ShadowDiff>, ApiError> {
    check_name("name", &name)?;
    let query = super::error::query(query)?;
    let limit = super::error::bounded("limit", query.limit, 100, 1000)?;
    Ok(Json(app.deploys.shadow_diff(&tenant, &name, limit).await?))
}

/// Promote the shadow: its version becomes the live one (on the live
/// state, or on the shadow's), and the shadow goes.
#[utoipa::path(post, operation_id = "shadow_promote", path = "/v1/rules/{name}/shadow/promote", tag = "rules",
    params(("name" = String, Path, pattern = r"^[a-z][a-z0-9_-]{0,63}$")),
    request_body = PromoteRequest,
    responses((status = 200, body = Deployed), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("tenant" = [])))]
pub async fn promote(
    TenantAuth(tenant): TenantAuth,
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Deployed>, ApiError> {
    let req: PromoteRequest = super::body_json(&body)?;
    check_name("name", &name)?;
    let take_state = match req.state.as_deref() {
        None | Some("live") => false,
        Some("shadow") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_body",
                format!("state: {other:?} must be live or shadow"),
            ));
        }
    };
    let quotas = app.quotas(&tenant);
    // Runs to its end even if the client goes away (as a deploy does).
    let app2 = app.clone();
    let deployed = tokio::spawn(async move {
        app2.deploys
            .promote_shadow(&tenant, &name, take_state, &quotas)
            .await
    })
    .await
    .map_err(ApiError::internal)??;
    Ok(Json(deployed))
}

/// Discard the shadow: it stops, and its state and what it kept go.
#[utoipa::path(delete, operation_id = "shadow_discard", path = "/v1/rules/{name}/shadow", tag = "rules",
    params(("name" = String, Path, pattern = r"^[a-z][a-z0-9_-]{0,63}$")),
    responses((status = 204), (status = 404, body = ErrorBody)),
    security(("tenant" = [])))]
pub async fn discard(
    TenantAuth(tenant): TenantAuth,
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    check_name("name", &name)?;
    let app2 = app.clone();
    tokio::spawn(async move { app2.deploys.discard_shadow(&tenant, &name).await })
        .await
        .map_err(ApiError::internal)??;
    Ok(StatusCode::NO_CONTENT)
}
