//! `GET /metrics`: Prometheus text. Counters and histograms the engine
//! records as it works (ingest, handler latency, timer lateness) come from
//! the `metrics` recorder; rule gauges (open partitions, pending fires,
//! fuel …) are read from the rules' status at each scrape.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::App;
use super::error::ApiError;

/// Histogram buckets (seconds) for latencies: 100 µs to 60 s.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// Install the process's metrics recorder; `None` when one is installed
/// already (a second server in one process shares the first's).
pub fn install() -> Option<PrometheusHandle> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
        .ok()?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).ok()?;
    describe();
    // Histogram samples wait in buckets until they are folded in: at each
    // scrape, or here. Without it a server nobody scrapes keeps every
    // handler time and every deadline's lateness it ever recorded (the
    // soak found it).
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(5));
                upkeep.run_upkeep();
            }
        })
        .ok()?;
    Some(handle)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "sluice_ingest_events_total",
        "Events ingested over HTTP, per tenant."
    );
    describe_counter!(
        "sluice_ingest_bytes_total",
        "Bytes of ingest request bodies, per tenant."
    );
    describe_histogram!(
        "sluice_handler_seconds",
        "Handler run time per fire attempt."
    );
    describe_histogram!(
        "sluice_timer_lateness_seconds",
        "How late a rule's earliest deadline was served."
    );
    describe_gauge!("sluice_log_last_seq", "The log's last committed seq.");
    describe_gauge!(
        "sluice_log_bytes",
        "The database's size on disk (with its WAL)."
    );
    describe_counter!(
        "sluice_fires_total",
        "Fire outcomes per rule since it was deployed (status: ok, failed, dead_lettered, cancelled)."
    );
    describe_counter!(
        "sluice_events_matched_total",
        "Events a rule kept, since it was deployed."
    );
    describe_counter!(
        "sluice_fuel_used_total",
        "Fuel used by a rule's calls (running version)."
    );
    describe_gauge!(
        "sluice_rule_open_partitions",
        "Partitions with open state, per rule."
    );
    describe_gauge!(
        "sluice_rule_pending_fires",
        "Fires waiting, retrying or running, per rule."
    );
    describe_gauge!("sluice_rule_dead_letters", "Dead letters, per rule.");
    describe_gauge!("sluice_rules", "Deployed rules by status.");
}

/// The routes of the separate metrics address (`--metrics-listen`).
pub fn router(app: Arc<App>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .route("/healthz", axum::routing::get(super::events::healthz))
        .with_state(app)
}

/// `/metrics` on the API's address: there unless it has an address of its
/// own.
#[utoipa::path(get, operation_id = "metrics", path = "/metrics", tag = "admin",
    description = "Prometheus text: the engine's and every rule's counters, labelled by tenant and rule. With --metrics-token it needs that token or the admin token; with --metrics-listen it is served on that address only (404 here).",
    responses(
        (status = 200, description = "Prometheus text exposition (version 0.0.4).", content_type = "text/plain", body = String),
        (status = 401, description = "--metrics-token is set and the request lacks it (or the admin token).", body = super::error::ErrorBody),
        (status = 404, description = "/metrics has an address of its own (--metrics-listen).", body = super::error::ErrorBody),
    ))]
pub async fn metrics_on_api(
    State(app): State<Arc<App>>,
    headers: axum::http::HeaderMap,
) -> Response {
    if let Some(at) = &app.config.metrics_listen {
        return ApiError::not_found(format_args!(
            "/metrics here: it is served on {at} (--metrics-listen)"
        ))
        .into_response();
    }
    metrics(State(app), headers).await
}

/// Whether a scrape may read: no metrics token set, or the request
/// carries it (or the admin token).
fn allowed(app: &App, headers: &axum::http::HeaderMap) -> bool {
    let Some(want) = &app.config.metrics_token else {
        return true;
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .unwrap_or_default();
    use subtle::ConstantTimeEq;
    let same: bool = given.as_bytes().ct_eq(want.trim().as_bytes()).into();
    same || app.tenants.authenticate(given) == Some(crate::tenants::Caller::Admin)
}

/// Prometheus text.
pub async fn metrics(State(app): State<Arc<App>>, headers: axum::http::HeaderMap) -> Response {
    if !allowed(&app, &headers) {
        return ApiError::unauthorized(
            "/metrics needs the metrics token (--metrics-token) or the admin token: send Authorization: Bearer <token>",
        )
        .into_response();
    }
    render(&app).await.into_response()
}

async fn render(app: &Arc<App>) -> impl IntoResponse {
    let Some(handle) = &app.metrics else {
        return (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            "# metrics are recorded by the first server of this process\n".to_owned(),
        );
    };
    metrics::gauge!("sluice_log_last_seq").set(app.log.last_seq() as f64);
    let size = app.log.store_bytes().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "could not measure the store");
        0
    });
    metrics::gauge!("sluice_log_bytes").set(size as f64);
    let mut by_status = std::collections::BTreeMap::<&str, u64>::new();
    for d in app.deploys.registry.list().unwrap_or_default() {
        let view = super::rules::view(app, &d).await;
        *by_status.entry(leak_status(&view.status)).or_default() += 1;
        let labels = [("tenant", d.tenant.clone()), ("rule", d.name.clone())];
        let c = &view.counters;
        for (status, field) in [
            ("ok", "fires_ok"),
            ("failed", "fires_failed"),
            ("dead_lettered", "dead_lettered"),
            ("cancelled", "fires_cancelled"),
        ] {
            let mut l = labels.to_vec();
            l.push(("status", status.to_owned()));
            metrics::counter!("sluice_fires_total", &l).absolute(c[field].as_u64().unwrap_or(0));
        }
        metrics::counter!("sluice_events_matched_total", &labels)
            .absolute(c["matched"].as_u64().unwrap_or(0));
        metrics::counter!("sluice_fuel_used_total", &labels).absolute(view.fuel_used);
        metrics::gauge!("sluice_rule_open_partitions", &labels).set(view.partitions as f64);
        metrics::gauge!("sluice_rule_pending_fires", &labels).set(view.pending_fires as f64);
        metrics::gauge!("sluice_rule_dead_letters", &labels).set(view.dead_letters as f64);
    }
    for status in ["active", "paused", "suspended", "failed"] {
        metrics::gauge!("sluice_rules", "status" => status)
            .set(by_status.get(status).copied().unwrap_or(0) as f64);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
}

fn leak_status(s: &str) -> &'static str {
    match s {
        "active" => "active",
        "paused" => "paused",
        "suspended" => "suspended",
        _ => "failed",
    }
}
