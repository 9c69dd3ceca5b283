//! The tenant's recent activity per minute: what the dashboard charts.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;
use utoipa::IntoParams;

use super::App;
use super::error::{ApiError, ErrorBody};
use super::tenants::TenantAuth;
use crate::engine::stats::{MINUTES, TenantSeries};

/// How many minutes.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    /// The last this many minutes of engine time (1 to 60, default 60).
    #[param(minimum = 1, maximum = 60)]
    pub minutes: Option<usize>,
}

/// The tenant's last minutes, per minute: events ingested; per rule,
/// fires completed and failed, handler latency (p50, p99) and timer
/// lateness (p99). Kept in memory for an hour by the node that saw it
/// (on several nodes, the node asked adds the others' answers);
/// percentiles are approximate (fixed histogram buckets).
#[utoipa::path(get, operation_id = "stats_show", path = "/v1/stats", tag = "rules",
    params(StatsQuery),
    responses((status = 200, body = TenantSeries), (status = 400, body = ErrorBody)),
    security(("tenant" = [])))]
pub async fn show(
    TenantAuth(tenant): TenantAuth,
    State(app): State<Arc<App>>,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
    query: Result<Query<StatsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<TenantSeries>, ApiError> {
    let q = super::error::query(query)?;
    let minutes = super::error::bounded("minutes", q.minutes, MINUTES, MINUTES)?;
    let mut series = app.deploys.engine.stats().series(&tenant, minutes);
    if app.cluster.is_some() && !super::cluster::forwarded(&headers) {
        let asked = uri.path_and_query().map_or("/v1/stats", |p| p.as_str());
        for answer in super::cluster::ask_others(&app, &headers, asked).await {
            if let Ok(other) = serde_json::from_value::<TenantSeries>(answer) {
                series.merge(&other);
            }
        }
    }
    Ok(Json(series))
}
