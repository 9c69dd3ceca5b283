//! `sluice serve`: the HTTP API over one engine, for many tenants.
//!
//! The server owns the log (one writing process per database), the
//! runtime (with its on-disk compile cache), the engine, the deploy
//! registry (rules come back at start-up with their state) and the
//! tenants. Every route but the dashboard (`/`, `/ui/*`), `/healthz`,
//! `/metrics` and `/v1/openapi.json` needs a bearer token: the admin token for
//! `/v1/tenants*` (and the manual clock), a tenant's token for the rest.
//! A tenant sees only its own events, rules, fires and feed: another
//! tenant's object answers 404 like a missing one.
//!
//! Errors are `{"error": {"code", "message"}}`, whatever layer answers
//! (handlers, extractors, body limits, routing).
//!
//! - [`dashboard`]: the page at `/`, its assets embedded.
//! - [`error`]: the error shape.
//! - [`tenants`]: tenants, tokens, quotas, authentication, admin routes.
//! - [`events`]: ingest and reads of the log.
//! - [`rules`]: deploy and hot swap, show, undeploy, pause, resume.
//! - [`shadow`]: a rule's shadow: show, diff, promote, discard.
//! - [`fires`]: pending fires, dead letters, re-drive, discard.
//! - [`feed`]: the live feed over SSE.
//! - [`stats`]: the tenant's recent activity per minute (charts).
//! - [`metrics`]: Prometheus text.
//! - [`openapi`]: the OpenAPI document, generated from the handlers.

// The OpenAPI annotations name parameter types in a way the lint
// mistakes for needless paths.
#![allow(unused_qualifications)]

pub mod cluster;
pub mod dashboard;
pub mod error;
pub mod events;
pub mod feed;
pub mod fires;
pub mod metrics;
pub mod openapi;
pub mod replay;
pub mod rules;
pub mod shadow;
pub mod stats;
pub mod tenants;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{Method, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use self::error::ApiError;
use self::tenants::{AdminAuth, Tenants};
use crate::clock::{Clock, ManualClock, SharedClock, SystemClock};
use crate::engine::Engine;
use crate::engine::cluster::{Cluster, ClusterConfig};
use crate::engine::deploy::Deployments;
use crate::log::{Durability, EventLimits, EventLog, LogConfig, PostgresBackend, Store};
use crate::runtime::{Runtime, RuntimeConfig};

/// How a server runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where the log and the engine's state are kept.
    pub store: Store,
    /// The address to listen on (`127.0.0.1:0` picks a free port).
    pub listen: String,
    /// Serve `/metrics` (and `/healthz`) on this address, not the API's.
    pub metrics_listen: Option<String>,
    /// A bearer token `/metrics` asks for (the admin token is taken too).
    pub metrics_token: Option<String>,
    /// Where compiled components are cached (default: `<db>.cache`).
    pub cache_dir: Option<PathBuf>,
    /// Commit durability.
    pub durability: Durability,
    /// The feed's heartbeat interval.
    pub heartbeat: Duration,
    /// The largest request body, but for deploys.
    pub max_body_bytes: usize,
    /// The largest deploy (manifest and component).
    pub max_component_bytes: usize,
    /// How long a shutdown waits for running handlers; fires still running
    /// then stay pending and run after the next start.
    pub shutdown_grace: Duration,
    /// Run on a manual clock starting here (ms), moved by `POST /v1/clock`:
    /// for tests.
    pub manual_clock: Option<i64>,
    /// Limits of ingested events.
    pub event_limits: EventLimits,
    /// Pruning of old events, if any (a pass every `retention_every`).
    pub retention: Option<crate::log::RetentionPolicy>,
    /// How often a retention pass runs.
    pub retention_every: Duration,
    /// How long an event's id is remembered to refuse a resend as a
    /// duplicate (past retention too, as a tombstone).
    pub dedupe_window: Duration,
    /// On a shared store (PostgreSQL): how long a rule's lease lasts
    /// without renewal.
    pub lease_ttl: Duration,
    /// On a shared store: the URL other nodes reach this one at (default:
    /// `http://` and the listen address).
    pub advertise: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            store: Store::Sqlite(PathBuf::from("sluice.db")),
            listen: "127.0.0.1:7878".into(),
            metrics_listen: None,
            metrics_token: None,
            cache_dir: None,
            durability: Durability::Full,
            heartbeat: Duration::from_secs(15),
            max_body_bytes: 16 << 20,
            max_component_bytes: 64 << 20,
            shutdown_grace: Duration::from_secs(10),
            manual_clock: None,
            event_limits: EventLimits::default(),
            retention: None,
            retention_every: Duration::from_secs(60),
            dedupe_window: LogConfig::default().dedupe_window,
            lease_ttl: Duration::from_secs(10),
            advertise: None,
        }
    }
}

/// What the handlers share.
#[derive(Debug)]
pub struct App {
    /// The server's settings.
    pub config: ServerConfig,
    /// The log.
    pub log: EventLog,
    /// Deployments: the engine running every tenant's rules, the registry
    /// of what runs, the deploy saga.
    pub deploys: Arc<Deployments>,
    /// Loads components.
    pub runtime: Runtime,
    /// Tenants and tokens.
    pub tenants: Tenants,
    /// The engine clock.
    pub clock: SharedClock,
    /// The clock, when it is manual.
    pub manual: Option<Arc<ManualClock>>,
    /// The Prometheus recorder's handle.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// True once the server is shutting down (ends feeds).
    pub shutdown: watch::Receiver<bool>,
    /// This node's part in a cluster (a shared store), if any.
    pub cluster: Option<Arc<Cluster>>,
    /// Tenants with a replay running (one at a time each).
    pub replays: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl App {
    /// Engine time (ms).
    pub fn now(&self) -> i64 {
        self.clock.now_millis()
    }

    /// Mark this node known to run until `at` ([`crate::engine::alive`]).
    pub async fn mark_alive_at(&self, at: i64) -> Result<(), crate::log::LogError> {
        let node = self.cluster.as_ref().map(|c| c.node().to_owned());
        crate::engine::alive::mark(&self.log, node.as_deref(), at).await
    }

    /// [`Self::mark_alive_at`] now; a failure is logged (the next mark
    /// tries again).
    pub async fn mark_alive(&self) {
        if let Err(e) = self.mark_alive_at(self.now()).await {
            tracing::warn!(error = %e, "could not write the liveness mark");
        }
    }

    /// A tenant's quotas (the defaults for an unknown one).
    pub fn quotas(&self, tenant: &str) -> self::tenants::Quotas {
        self.tenants
            .get(tenant)
            .map(|t| t.quotas)
            .unwrap_or_default()
    }
}

/// Parse a JSON request body; errors name the field.
pub fn body_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("invalid_body", format!("body: {e}")))
}

/// Answer every error in the one JSON shape, also those made below the
/// handlers (routing, body limits, extractor rejections) in plain text.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 64 << 10)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).trim().to_owned();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text
    };
    let mut out = ApiError::new(status, error::code_of(status), message).into_response();
    for (k, v) in &parts.headers {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}

async fn fallback(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format_args!("route {method} {}", uri.path()))
}

/// The engine clock.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ClockView {
    /// Engine time (ms since the epoch).
    pub now: i64,
    /// Whether the clock is manual (moved by `POST /v1/clock`).
    pub manual: bool,
}

/// A move of the manual clock.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClockMove {
    /// Move forward by this much (`10m`, `1h 30m`).
    pub advance: Option<String>,
    /// Move to this time (RFC 3339 or ms), not backwards.
    pub to: Option<String>,
}

/// The engine clock.
#[utoipa::path(get, operation_id = "clock_get", path = "/v1/clock", tag = "admin",
    responses((status = 200, body = ClockView)), security(("admin" = [])))]
async fn clock_get(_: AdminAuth, State(app): State<Arc<App>>) -> axum::Json<ClockView> {
    axum::Json(ClockView {
        now: app.now(),
        manual: app.manual.is_some(),
    })
}

/// Move the manual clock (a server started with `--manual-clock`).
#[utoipa::path(post, operation_id = "clock_move", path = "/v1/clock", tag = "admin", request_body = ClockMove,
    responses((status = 200, body = ClockView), (status = 409, body = error::ErrorBody)),
    security(("admin" = [])))]
async fn clock_move(
    _: AdminAuth,
    State(app): State<Arc<App>>,
    body: axum::body::Bytes,
) -> Result<axum::Json<ClockView>, ApiError> {
    let m: ClockMove = body_json(&body)?;
    let clock = app.manual.as_ref().ok_or_else(|| {
        ApiError::conflict(
            "real_clock",
            "this server runs on the real clock (start it with --manual-clock to move it)",
        )
    })?;
    let now = clock.now_millis();
    let to = match (&m.advance, &m.to) {
        (Some(d), None) => {
            let d = humantime::parse_duration(d).map_err(|e| {
                ApiError::bad_request("invalid_body", format!("advance: {d:?}: {e}"))
            })?;
            now.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        }
        (None, Some(t)) => events::parse_time("to", t)?,
        _ => {
            return Err(ApiError::bad_request(
                "invalid_body",
                "body: give exactly one of advance and to",
            ));
        }
    };
    if to < now {
        return Err(ApiError::bad_request(
            "invalid_body",
            format!("to: {to} is before the clock's {now}: the clock does not go back"),
        ));
    }
    // Marked before the clock moves: the engine is known to run until
    // `to` once anything happens at `to`.
    app.mark_alive_at(to).await?;
    clock.set(to);
    Ok(axum::Json(ClockView {
        now: to,
        manual: true,
    }))
}

async fn openapi_json() -> impl IntoResponse {
    axum::Json(openapi::document_json())
}

/// The routes over `app`.
pub fn router(app: Arc<App>) -> Router {
    let deploy = put(rules::deploy).layer(DefaultBodyLimit::max(app.config.max_component_bytes));
    let max_body = app.config.max_body_bytes;
    Router::new()
        .route("/", get(dashboard::index))
        .route("/ui/{*file}", get(dashboard::asset))
        .route("/healthz", get(events::healthz))
        .route("/metrics", get(metrics::metrics_on_api))
        .route("/v1/openapi.json", get(openapi_json))
        .route("/v1/whoami", get(tenants::whoami))
        .route("/v1/tenants", post(tenants::create).get(tenants::list))
        .route(
            "/v1/tenants/{tenant}",
            get(tenants::show).delete(tenants::delete),
        )
        .route("/v1/tenants/{tenant}/quotas", put(tenants::set_quotas))
        .route(
            "/v1/tenants/{tenant}/tokens",
            post(tenants::create_token).get(tenants::list_tokens),
        )
        .route(
            "/v1/tenants/{tenant}/tokens/{id}",
            axum::routing::delete(tenants::revoke_token),
        )
        .route("/v1/events", post(events::ingest).get(events::list))
        .route("/v1/events/{seq}", get(events::show))
        .route("/v1/rules", get(rules::list))
        .route(
            "/v1/rules/{name}",
            deploy.get(rules::show).delete(rules::undeploy),
        )
        .route("/v1/rules/{name}/pause", post(rules::pause))
        .route("/v1/rules/{name}/replay", post(replay::replay))
        .route(
            "/v1/rules/{name}/shadow",
            get(shadow::show).delete(shadow::discard),
        )
        .route("/v1/rules/{name}/shadow/diff", get(shadow::diff))
        .route("/v1/rules/{name}/shadow/promote", post(shadow::promote))
        .route("/v1/rules/{name}/resume", post(rules::resume))
        .route("/v1/rules/{name}/partitions", get(rules::partitions))
        .route("/v1/rules/{name}/history", get(rules::history))
        .route("/v1/fires", get(fires::list))
        .route("/v1/fires/{id}", get(fires::show).delete(fires::discard))
        .route("/v1/fires/{id}/redrive", post(fires::redrive))
        .route("/v1/feed", get(feed::feed))
        .route("/v1/stats", get(stats::show))
        .route("/v1/clock", get(clock_get).post(clock_move))
        .route("/v1/cluster", get(cluster::show))
        .fallback(fallback)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            cluster::route_to_owner,
        ))
        .layer(axum::middleware::map_response(json_errors))
        .with_state(app)
}

/// SIGINT or SIGTERM, from handlers installed when this is called (so a
/// signal that comes right after the server says it is listening is not
/// lost to the default action).
pub(crate) fn signals() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("handle SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// Run the server until SIGINT or SIGTERM. `ready` is called with the
/// bound address (and the admin token, when one was generated) once the
/// server accepts requests.
pub async fn serve(
    config: ServerConfig,
    ready: impl FnOnce(SocketAddr, Option<&str>),
) -> anyhow::Result<()> {
    let (clock, manual): (SharedClock, _) = match config.manual_clock {
        Some(start) => {
            let m = Arc::new(ManualClock::new(start));
            (m.clone(), Some(m))
        }
        None => (Arc::new(SystemClock), None),
    };
    let log = EventLog::open_store(
        &config.store,
        config.durability,
        LogConfig {
            dedupe_window: config.dedupe_window,
            ..LogConfig::default()
        },
        clock.clone(),
    )
    .with_context(|| format!("open {}", config.store))?;
    let cache_dir = config
        .cache_dir
        .clone()
        .unwrap_or_else(|| config.store.default_cache_dir());
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(cache_dir),
        clock: clock.clone(),
        ..RuntimeConfig::default()
    })?;
    let tenants = Tenants::load(log.clone())?;
    let mut generated = None;
    match std::env::var("SLUICE_ADMIN_TOKEN") {
        Ok(token) if !token.trim().is_empty() => tenants.set_admin(token.trim()).await?,
        _ if !tenants.has_admin() => {
            let token = Tenants::generate_admin();
            tenants.set_admin(&token).await?;
            generated = Some(token);
        }
        _ => {}
    }
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("listen on {}", config.listen))?;
    let metrics_listener = match &config.metrics_listen {
        Some(at) => Some(
            tokio::net::TcpListener::bind(at)
                .await
                .with_context(|| format!("listen for /metrics on {at}"))?,
        ),
        None => None,
    };
    let addr = listener.local_addr()?;
    let (stop, shutdown) = watch::channel(false);
    let cluster = match &config.store {
        Store::Postgres(url) => {
            let store = PostgresBackend::open(url, config.durability)?;
            let node = ClusterConfig {
                node: ClusterConfig::new_node_id(),
                addr: config
                    .advertise
                    .clone()
                    .unwrap_or_else(|| format!("http://{addr}")),
                ttl: config.lease_ttl,
            };
            log.require_leases();
            let cluster = tokio::task::spawn_blocking(move || Cluster::join(store, node)).await??;
            tracing::info!(node = %cluster.node(), "joined the cluster");
            Some(cluster)
        }
        Store::Sqlite(_) => None,
    };
    let app = Arc::new(App {
        deploys: Arc::new(Deployments::new(
            Engine::new(log.clone(), clock.clone()),
            runtime.clone(),
        )),
        metrics: metrics::install(),
        config,
        log,
        runtime,
        tenants,
        clock,
        manual,
        shutdown: shutdown.clone(),
        cluster: cluster.clone(),
        replays: Default::default(),
    });
    // The outage before this start: from the last mark any engine left on
    // this store (a take-over also reads the mark of the node it takes
    // over from).
    let started = app.now();
    let start = crate::engine::alive::outage_before(&app.log, started)?;
    app.deploys.engine.started_after(started, start);
    if app.manual.is_some() {
        // The manual clock marks at each move; this start is a mark too.
        app.mark_alive_at(started).await?;
    }
    let marking = app.manual.is_none().then(|| {
        let (app, mut stopping) = (app.clone(), shutdown.clone());
        tokio::spawn(async move {
            while !*stopping.borrow() {
                app.mark_alive().await;
                tokio::select! {
                    _ = tokio::time::sleep(crate::engine::alive::EVERY) => {}
                    _ = stopping.changed() => {}
                }
            }
        })
    });
    let started = match &cluster {
        // Rules start as this node takes their leases.
        Some(cluster) => {
            // A first tick before requests come: the rules this node
            // should run and nobody holds (a restart after a clean stop)
            // run from the start.
            let quotas = |t: &str| app.quotas(t);
            if let Err(e) = cluster.tick(&app.deploys, &quotas).await {
                tracing::warn!(error = %e, "first cluster tick failed; retrying");
            }
            let (app2, cluster2) = (app.clone(), cluster.clone());
            tokio::spawn(cluster2.run(
                app.deploys.clone(),
                move |t| app2.quotas(t),
                shutdown.clone(),
            ));
            let app3 = app.clone();
            let mut stopping = shutdown.clone();
            let every = cluster.config().tick();
            tokio::spawn(async move {
                // Tenants and tokens another node changed.
                while !*stopping.borrow() {
                    let app = app3.clone();
                    if let Ok(Err(e)) =
                        tokio::task::spawn_blocking(move || app.tenants.reload()).await
                    {
                        tracing::warn!(error = %e, "could not reload tenants");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(every) => {}
                        _ = stopping.changed() => {}
                    }
                }
            });
            app.deploys.engine.running().len()
        }
        None => app.deploys.restore(|t| app.quotas(t)).await?,
    };
    if let Some(policy) = app.config.retention.clone() {
        app.log.spawn_retention(policy, app.config.retention_every);
    }
    let signalled = signals()?;
    tracing::info!(%addr, rules = started, "sluice serving");
    ready(addr, generated.as_deref());
    if let Some(listener) = metrics_listener {
        let at = listener.local_addr()?;
        tracing::info!(%at, "serving /metrics");
        let mut stopping = shutdown.clone();
        let routes = metrics::router(app.clone());
        tokio::spawn(async move {
            let served = axum::serve(listener, routes).with_graceful_shutdown(async move {
                let _ = stopping.wait_for(|s| *s).await;
            });
            if let Err(e) = served.await {
                tracing::warn!(error = %e, "the /metrics listener failed");
            }
        });
    }
    let server = axum::serve(listener, router(app.clone())).with_graceful_shutdown(async move {
        signalled.await;
        tracing::info!("shutting down: no new requests; running handlers get a grace period");
        stop.send_replace(true);
    });
    server.await.context("serve")?;
    let grace = app.config.shutdown_grace;
    if tokio::time::timeout(grace, app.deploys.engine.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "handlers still running after the grace period: their fires stay pending and run after the next start"
        );
    }
    if let Some(marking) = marking {
        let _ = marking.await;
        // Known to run until now: a restart counts its outage from here.
        app.mark_alive().await;
    }
    if let Some(cluster) = &app.cluster {
        cluster.leave(&app.deploys).await;
    }
    app.log.clone().close();
    tracing::info!("stopped");
    Ok(())
}
