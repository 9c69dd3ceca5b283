//! `POST /v1/rules/{name}/replay`: the rule's deployed version over a
//! range of the tenant's log ([`crate::replay`]), its report streamed
//! back as NDJSON while it runs.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;

use super::App;
use super::error::{ApiError, ErrorBody};
use super::tenants::{TenantAuth, check_name};
use crate::manifest::Manifest;

/// What to replay.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Ingest time the range starts at, inclusive (RFC 3339, or ms since
    /// the epoch as text).
    #[schema(
        example = "2026-01-01T00:00:00Z",
        pattern = r"^([0-9]{1,16}|[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9]))$"
    )]
    pub from: String,
    /// Ingest time it ends at, exclusive (default: just after now, so
    /// everything ingested so far); not before `from`.
    #[schema(
        pattern = r"^([0-9]{1,16}|[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9]))$"
    )]
    pub to: Option<String>,
    /// Append the outputs to the log as the rule's (a backfill; ids
    /// derived from the replayed fires, so a repeat writes nothing twice).
    /// Default: a dry run that writes nothing.
    #[serde(default)]
    pub emit: bool,
}

/// One replay per tenant at a time: the tenant's slot, freed on drop.
struct Slot {
    app: Arc<App>,
    tenant: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.app
            .replays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.tenant);
    }
}

/// Replay the rule over a range of the tenant's log: NDJSON lines as
/// `sluice test --json` writes them (`fire`, `output`, `error`, …), a
/// `progress` line after every 10 000 events read, and last a `done`
/// line with the summary (or `failed` with the error).
#[utoipa::path(post, operation_id = "rules_replay", path = "/v1/rules/{name}/replay", tag = "rules",
    params(("name" = String, Path, pattern = r"^[a-z][a-z0-9_-]{0,63}$")),
    request_body = ReplayRequest,
    responses(
        (status = 200, description = "The report, one JSON object per line, ending with a `done` (the summary) or `failed` line.", content_type = "application/x-ndjson", body = String),
        (status = 404, body = ErrorBody),
        (status = 409, description = "A replay of this tenant is running.", body = ErrorBody),
        (status = 422, description = "`from` is after `to`.", body = ErrorBody),
    ),
    security(("tenant" = [])))]
pub async fn replay(
    TenantAuth(tenant): TenantAuth,
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: ReplayRequest = super::body_json(&body)?;
    check_name("name", &name)?;
    let time = |field: &str, text: &str| {
        crate::time::parse(text)
            .map_err(|m| ApiError::bad_request("invalid_body", format!("{field}: {m}")))
    };
    let from = time("from", &req.from)?;
    let to = match &req.to {
        Some(t) => time("to", t)?,
        // Everything ingested so far, this instant's too.
        None => app.now().saturating_add(1),
    };
    if from > to {
        return Err(ApiError::unprocessable(
            "empty_range",
            format!(
                "from ({}) is after to ({}): the range is the wrong way round",
                crate::time::rfc3339(from),
                crate::time::rfc3339(to)
            ),
        ));
    }
    let registry = app.deploys.registry.clone();
    let (t, n) = (tenant.clone(), name.clone());
    let found = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
        let Some(d) = registry.get(&t, &n).map_err(ApiError::internal)? else {
            return Ok(None);
        };
        let component = registry
            .component(&d.digest)
            .map_err(ApiError::internal)?
            .ok_or_else(|| ApiError::internal(format!("rule {n}: its component is missing")))?;
        Ok(Some((d, component)))
    })
    .await
    .map_err(ApiError::internal)??;
    let Some((deployment, component)) = found else {
        return Err(ApiError::not_found(format_args!("rule {name:?}")));
    };
    let manifest = Manifest::parse(&deployment.manifest)
        .map_err(|e| ApiError::internal(format!("rule {name}: its stored manifest: {e}")))?;
    if !app
        .replays
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(tenant.clone())
    {
        return Err(ApiError::conflict(
            "replay_running",
            "a replay of this tenant is running; wait for it to finish",
        ));
    }
    let slot = Slot {
        app: app.clone(),
        tenant: tenant.clone(),
    };
    let spec = crate::replay::Replay {
        tenant,
        manifest,
        component,
        from,
        to,
        emit: req.emit,
        cache_dir: Some(
            app.config
                .cache_dir
                .clone()
                .unwrap_or_else(|| app.config.store.default_cache_dir()),
        ),
    };
    tracing::info!(tenant = %spec.tenant, rule = %name, from, to, emit = spec.emit, "replay");
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let log = app.log.clone();
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let send = |line: serde_json::Value| {
            tx.blocking_send(Ok(Bytes::from(format!("{line}\n"))))
                .map_err(|_| std::io::Error::other("the client left"))
        };
        // (Report and progress lines share the stream.)
        let (mut lines, mut progress) = (send, send);
        let last = match crate::replay::run(&log, &spec, &mut lines, &mut progress) {
            Ok(summary) => {
                let mut v = serde_json::to_value(&summary).unwrap_or_default();
                v["type"] = json!("done");
                v
            }
            Err(e) => json!({"type": "failed", "error": format!("{e:#}")}),
        };
        let _ = tx.blocking_send(Ok(Bytes::from(format!("{last}\n"))));
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}
