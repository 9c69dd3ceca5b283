//! Events: ingest (one JSON event, a JSON array, or NDJSON with per-line
//! results) and reads of the tenant's log.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::App;
use super::error::{ApiError, ErrorBody};
use super::tenants::TenantAuth;
use crate::event::Event;
use crate::log::validate::{parse_batch, parse_event};
use crate::log::{AppendOutcome, EventQuery};

/// An event as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EventView {
    /// Position in the log (global, gap-free).
    pub seq: u64,
    /// The client's idempotency key, or a generated one.
    pub id: String,
    /// Who sent it: a client's source, `rule:<name>` for outputs, `sluice`
    /// for engine records.
    pub source: String,
    /// What happened.
    pub kind: String,
    /// When it happened (ms since the epoch): the client's claim.
    pub time: i64,
    /// When the log took it (ms since the epoch; never decreasing along
    /// seq): the time windows, memberships and schedules go by.
    pub ingested: i64,
    /// The event's JSON object.
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    /// Rule steps between this event and a client's.
    pub hops: u32,
}

impl From<&Event> for EventView {
    fn from(e: &Event) -> Self {
        Self {
            seq: e.seq,
            id: e.id.clone(),
            source: e.source.clone(),
            kind: e.kind.clone(),
            time: e.time,
            ingested: e.ingested,
            payload: serde_json::from_str(&e.payload)
                .unwrap_or_else(|_| serde_json::Value::String(e.payload.clone())),
            hops: e.hops,
        }
    }
}

/// What one event of an ingest request got.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LineResult {
    /// The event's line (NDJSON) or position (array), from 1.
    pub line: usize,
    /// Its seq (the original's, for a duplicate).
    pub seq: u64,
    /// Its id (generated when the event had none).
    pub id: String,
    /// `accepted` or `duplicate`.
    pub outcome: String,
}

/// The answer to an ingest: every event is committed before it is sent.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Ingested {
    /// Events newly stored.
    pub accepted: usize,
    /// Events already stored (same id within the dedupe window).
    pub duplicates: usize,
    /// The seq of every event, in request order.
    pub seqs: Vec<u64>,
    /// One result per event, in request order.
    pub results: Vec<LineResult>,
}

/// Append events. The body is one JSON event (`application/json`), a
/// JSON array of events, or NDJSON (`application/x-ndjson`), at most the
/// server's body limit. The request is all or nothing: a bad line refuses
/// the whole request with an error naming its line and field, and nothing
/// is stored.
#[utoipa::path(post, operation_id = "events_ingest", path = "/v1/events", tag = "events",
    request_body(content = Object, description = "An event {id?, source, kind, time?, payload}, a JSON array of them, or NDJSON",
        content_type = "application/json"),
    responses((status = 200, body = Ingested),
        (status = 400, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 429, body = ErrorBody, description = "over the tenant's ingest rate; see Retry-After")),
    security(("tenant" = [])))]
pub async fn ingest(
    TenantAuth(tenant): TenantAuth,
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Json<Ingested>, ApiError> {
    let max = app.config.max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "the body is over the server's limit of {max} bytes; send fewer events per request"
            ),
        )
    };
    // A declared length over the limit is refused before anything is read.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let body: Bytes = axum::body::to_bytes(body, max)
        .await
        .map_err(|_| too_large())?;
    let text = std::str::from_utf8(&body).map_err(|e| {
        ApiError::bad_request(
            "invalid_event",
            format!("the body is not UTF-8 (at byte {})", e.valid_up_to()),
        )
    })?;
    let ndjson = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("ndjson") || v.contains("jsonl"));
    let limits = &app.config.event_limits;
    let trimmed = text.trim_start();
    // One object (pretty-printed or not) is one event; NDJSON sent
    // without its media type is still NDJSON: several lines that are not
    // one JSON value.
    let single = !ndjson
        && trimmed.starts_with('{')
        && (serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
            || text.lines().filter(|l| !l.trim().is_empty()).count() < 2);
    let events = if single {
        parse_event(&tenant, text, limits).map(|e| vec![e])
    } else {
        parse_batch(&tenant, text, limits)
    }
    .map_err(|e| ApiError::bad_request("invalid_event", e.to_string()))?;
    if let Err(wait) = app.tenants.take(&tenant, events.len()) {
        return Err(ApiError::too_many(
            format!("tenant {tenant:?} is over its ingest rate; try again in {wait} s"),
            wait,
        ));
    }
    let n = events.len();
    let report = app.log.append(events).await?;
    metrics::counter!("sluice_ingest_events_total", "tenant" => tenant.clone()).increment(n as u64);
    app.deploys.engine.stats().ingested(&tenant, n as u64);
    metrics::counter!("sluice_ingest_bytes_total", "tenant" => tenant).increment(body.len() as u64);
    let results = report
        .outcomes
        .iter()
        .zip(&report.ids)
        .enumerate()
        .map(|(i, (o, id))| LineResult {
            line: i + 1,
            seq: o.seq(),
            id: id.clone(),
            outcome: match o {
                AppendOutcome::Accepted(_) => "accepted",
                AppendOutcome::Duplicate(_) => "duplicate",
            }
            .into(),
        })
        .collect();
    Ok(Json(Ingested {
        accepted: report.accepted,
        duplicates: report.duplicates,
        seqs: report.seqs,
        results,
    }))
}

/// A read of the tenant's events.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Only events after this seq.
    #[param(minimum = 0, maximum = 9_223_372_036_854_775_807_u64)]
    pub after_seq: Option<u64>,
    /// Only events at or after this time (RFC 3339, or ms since the epoch).
    #[param(
        pattern = r"^([0-9]{1,16}|[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9]))$"
    )]
    pub since: Option<String>,
    /// Only events before this time (RFC 3339, or ms since the epoch).
    #[param(
        pattern = r"^([0-9]{1,16}|[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9]))$"
    )]
    pub until: Option<String>,
    /// Only this source.
    pub source: Option<String>,
    /// Only this kind.
    pub kind: Option<String>,
    /// At most this many (default 100, at most 10 000).
    #[param(minimum = 1, maximum = 10_000)]
    pub limit: Option<usize>,
}

/// A page of events.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventPage {
    /// The events, in seq order.
    pub events: Vec<EventView>,
    /// Pass as `after_seq` for the next page (absent when this page is the
    /// last one for now).
    pub next_after_seq: Option<u64>,
}

/// A time given as RFC 3339 or milliseconds since the epoch.
pub fn parse_time(field: &str, text: &str) -> Result<i64, ApiError> {
    crate::time::parse(text)
        .map_err(|m| ApiError::bad_request("invalid_query", format!("{field}: {m}")))
}

/// The tenant's events, filtered, in seq order.
#[utoipa::path(get, operation_id = "events_list", path = "/v1/events", tag = "events", params(EventsQuery),
    responses((status = 200, body = EventPage), (status = 400, body = ErrorBody)),
    security(("tenant" = [])))]
pub async fn list(
    TenantAuth(tenant): TenantAuth,
    State(app): State<Arc<App>>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<EventPage>, ApiError> {
    let q = super::error::query(query)?;
    let limit = super::error::bounded("limit", q.limit, 100, 10_000)?;
    let query = EventQuery {
        after_seq: super::error::seq("after_seq", q.after_seq)?,
        since: q
            .since
            .as_deref()
            .map(|t| parse_time("since", t))
            .transpose()?,
        until: q
            .until
            .as_deref()
            .map(|t| parse_time("until", t))
            .transpose()?,
        source: q.source,
        kind: q.kind,
        ..EventQuery::tenant(&tenant, limit)
    };
    let log = app.log.clone();
    let events = tokio::task::spawn_blocking(move || log.query(&query))
        .await
        .map_err(ApiError::internal)??;
    let next_after_seq = (events.len() == limit)
        .then(|| events.last().map(|e| e.seq))
        .flatten();
    Ok(Json(EventPage {
        events: events.iter().map(EventView::from).collect(),
        next_after_seq,
    }))
}

/// One of the tenant's events, by seq.
#[utoipa::path(get, operation_id = "events_show", path = "/v1/events/{seq}", tag = "events",
    params(("seq" = u64, Path)),
    responses((status = 200, body = EventView), (status = 404, body = ErrorBody)),
    security(("tenant" = [])))]
pub async fn show(
    TenantAuth(tenant): TenantAuth,
    State(app): State<Arc<App>>,
    Path(seq): Path<String>,
) -> Result<Json<EventView>, ApiError> {
    let missing = || ApiError::not_found(format_args!("event {seq}"));
    let n: u64 = seq.parse().map_err(|_| missing())?;
    let log = app.log.clone();
    let t = tenant.clone();
    let found = tokio::task::spawn_blocking(move || log.read_seqs(&t, &[n]))
        .await
        .map_err(ApiError::internal)?;
    // A seq past the end, or one of another tenant's events, is missing
    // alike.
    match found {
        Ok(events) => events
            .iter()
            .find(|e| e.seq == n && e.tenant == tenant)
            .map(|e| Json(EventView::from(e)))
            .ok_or_else(missing),
        Err(_) => Err(missing()),
    }
}

/// 200 with no body: the server is up.
#[utoipa::path(get, operation_id = "healthz", path = "/healthz", tag = "admin",
    responses((status = 200, description = "The server is up (no body).")))]
pub async fn healthz() -> StatusCode {
    StatusCode::OK
}
