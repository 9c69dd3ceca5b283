//! The live feed over Server-Sent Events: the tenant's log from a cursor
//! (`after_seq`, or the `Last-Event-ID` a reconnecting client sends), then
//! live, with no gap and no duplicate at the switch. Each SSE message has
//! `id:` = the seq, `event:` = `event` (a client's), `output` (a rule's),
//! `fire` (`fire.*` records), `error` (failures, skips, suspensions) or
//! `record` (other engine records), and the event as JSON data.
//! Comments are sent as heartbeats while nothing happens.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use serde::Deserialize;
use utoipa::IntoParams;

use super::App;
use super::error::{ApiError, ErrorBody};
use super::events::EventView;
use super::tenants::TenantAuth;
use crate::event::Event;
use crate::log::FeedItem;
use crate::records::ENGINE_SOURCE;

/// Where the feed starts and what it shows.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FeedQuery {
    /// Start after this seq (default 0: the whole log). A `Last-Event-ID`
    /// header takes precedence.
    #[param(minimum = 0, maximum = 9_223_372_036_854_775_807_u64)]
    pub after_seq: Option<u64>,
    /// Only this source (`rule:<name>` for a rule's outputs, `sluice` for
    /// engine records).
    pub source: Option<String>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Only this rule's outputs and the engine's records about it.
    pub rule: Option<String>,
    /// Start at the log's end: only what comes from now on (when neither
    /// `after_seq` nor `Last-Event-ID` is given).
    pub live: Option<bool>,
}

/// The SSE event name of a feed item.
pub fn item_type(e: &Event) -> &'static str {
    if e.source == ENGINE_SOURCE {
        match e.kind.as_str() {
            "fire.failed" | "fire.dead_lettered" | "event.skipped" | "rule.suspended"
            | "outputs.dropped" => "error",
            k if k.starts_with("fire.") => "fire",
            _ => "record",
        }
    } else if e.source.starts_with("rule:") {
        "output"
    } else {
        "event"
    }
}

fn wanted(q: &FeedQuery, e: &Event) -> bool {
    if q.source.as_ref().is_some_and(|s| *s != e.source)
        || q.kind.as_ref().is_some_and(|k| *k != e.kind)
    {
        return false;
    }
    match &q.rule {
        None => true,
        Some(rule) if e.source == ENGINE_SOURCE => {
            serde_json::from_str::<serde_json::Value>(&e.payload)
                .is_ok_and(|p| p["rule"].as_str() == Some(rule.as_str()))
        }
        Some(rule) => e.source.strip_prefix("rule:") == Some(rule.as_str()),
    }
}

/// Follow the tenant's log: replay from the cursor, then live.
#[utoipa::path(get, operation_id = "feed_feed", path = "/v1/feed", tag = "feed", params(FeedQuery,
        ("Last-Event-ID" = Option<u64>, Header, nullable = false, minimum = 0, maximum = 9_223_372_036_854_775_807_u64, description = "resume after this seq")),
    responses((status = 200, content_type = "text/event-stream", description = "SSE: id = seq, event = event | output | fire | error | record, data = the event as JSON"),
        (status = 400, body = ErrorBody)),
    security(("tenant" = [])))]
pub async fn feed(
    TenantAuth(tenant): TenantAuth,
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    query: Result<Query<FeedQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let q = super::error::query(query)?;
    let resume = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_header",
                        "Last-Event-ID: must be a seq (a whole number)",
                    )
                })?,
        ),
        None => None,
    };
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| t.trim().to_owned())
        .unwrap_or_default();
    let resume = super::error::seq("Last-Event-ID", resume)?;
    let after_seq = super::error::seq("after_seq", q.after_seq)?;
    let after = resume.or(after_seq).unwrap_or_else(|| {
        if q.live == Some(true) {
            app.log.last_seq()
        } else {
            0
        }
    });
    let sub = app.log.subscribe(Some(&tenant), after);
    let shutdown = app.shutdown.clone();
    // The token is checked again as the feed runs: a revoked token's feed
    // ends within a heartbeat.
    let mut recheck = tokio::time::interval(app.config.heartbeat);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let watch = (app.clone(), token, tenant.clone());
    let stream = futures_util::stream::unfold(
        (sub, shutdown, q, false, recheck, watch),
        |(mut sub, mut shutdown, q, done, mut recheck, watch)| async move {
            if done {
                return None;
            }
            loop {
                let item = tokio::select! {
                    item = sub.next() => item,
                    _ = shutdown.wait_for(|s| *s) => return None,
                    _ = recheck.tick() => {
                        if watch.0.tenants.still_valid(&watch.1, &watch.2) {
                            continue;
                        }
                        return None;
                    }
                };
                match item {
                    Ok(FeedItem::Event(e)) => {
                        if !wanted(&q, &e) {
                            continue;
                        }
                        let data = serde_json::to_string(&EventView::from(&*e)).unwrap_or_default();
                        let msg = SseEvent::default()
                            .id(e.seq.to_string())
                            .event(item_type(&e))
                            .data(data);
                        return Some((Ok(msg), (sub, shutdown, q, false, recheck, watch)));
                    }
                    Err(e) => {
                        let msg = SseEvent::default().event("feed-error").data(e.to_string());
                        return Some((Ok(msg), (sub, shutdown, q, true, recheck, watch)));
                    }
                }
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(
        KeepAlive::new()
            .interval(app.config.heartbeat)
            .text("heartbeat"),
    ))
}
