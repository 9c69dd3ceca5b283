//! Several nodes, one API: every node answers every route. A request
//! about one rule goes to the node holding the rule's lease (forwarded
//! as it came, token included, and answered as that node answers); a
//! listing asks every live node for the rules it holds and merges the
//! answers. A forwarded request carries [`FORWARDED`] and is answered
//! where it lands, never forwarded again.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::App;
use super::error::{ApiError, ErrorBody};
use super::tenants::AdminAuth;
use crate::engine::cluster::{ClusterView, Owner};
use crate::tenants::Caller;

/// The header a forwarded request carries: the forwarding node's id.
pub const FORWARDED: &str = "x-sluice-forwarded";

/// On a forwarded admin request: the tenant it acts for (a tenant's
/// deletion undeploying its rules on the nodes that run them).
pub const FOR_TENANT: &str = "x-sluice-tenant";

fn client() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("an HTTP client")
    })
}

/// The rule a path is about: `/v1/rules/{name}` and its `pause` and
/// `resume`.
fn rule_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v1/rules/")?;
    let name = rest
        .strip_suffix("/pause")
        .or_else(|| rest.strip_suffix("/resume"))
        .or_else(|| rest.strip_suffix("/partitions"))
        .or_else(|| rest.strip_suffix("/shadow/diff"))
        .or_else(|| rest.strip_suffix("/shadow/promote"))
        .or_else(|| rest.strip_suffix("/shadow"))
        .unwrap_or(rest);
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

/// The tenant a request's bearer token belongs to.
fn tenant_of(app: &App, headers: &HeaderMap) -> Option<String> {
    let token = headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?;
    match app.tenants.authenticate(token.trim())? {
        Caller::Tenant(t) => Some(t),
        Caller::Admin => None,
    }
}

/// Whether a request was forwarded here by another node.
pub fn forwarded(headers: &HeaderMap) -> bool {
    headers.contains_key(FORWARDED)
}

/// Send a request about one rule to the node holding its lease.
pub async fn route_to_owner(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let Some(cluster) = app.cluster.clone() else {
        return next.run(req).await;
    };
    let Some(rule) = rule_of(req.uri().path()).map(str::to_owned) else {
        return next.run(req).await;
    };
    // No tenant: the handler answers 401 / 403.
    let Some(tenant) = tenant_of(&app, req.headers()) else {
        return next.run(req).await;
    };
    if forwarded(req.headers()) {
        // Sent here to be handled here: a change to a rule this node holds
        // no lease on (a new rule sent to its tenant's home) takes it
        // first, if it is free; it never goes further.
        if req.method() != Method::GET
            && app.log.lease(&tenant, &rule).is_none()
            && !matches!(owner(&app, &tenant, &rule).await, Ok(Owner::Here))
        {
            return unavailable(format!("rule {rule} is changing hands; try again"));
        }
        return next.run(req).await;
    }
    // A read of a rule nobody holds takes no lease.
    let held = cluster.holder(&tenant, &rule).is_some();
    if req.method() == Method::GET && !held {
        return next.run(req).await;
    }
    // A new rule is deployed on its tenant's home node, where the
    // tenant's lock makes its rule count and quota checks one at a time.
    let new_rule = req.method() == Method::PUT
        && !held
        && matches!(app.deploys.registry.get(&tenant, &rule), Ok(None));
    // The body is read first: it may have to go to another node, or to a
    // second one, and a refusal is answered after the upload, never in
    // the middle of it.
    let (parts, body) = req.into_parts();
    let limit = app
        .config
        .max_component_bytes
        .max(app.config.max_body_bytes)
        + (1 << 20);
    let body = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(e) => {
            return ApiError::bad_request("invalid_body", format!("body: {e}")).into_response();
        }
    };
    if new_rule && let Some(addr) = cluster.home(&tenant) {
        return forward(&app, &addr, &parts, body)
            .await
            .unwrap_or_else(|e| unavailable(format!("rule {rule}: {e}")));
    }
    // A node that stopped beating (killed) holds its leases until they
    // expire: wait that long for the rule to be taken, here or elsewhere.
    let deadline = std::time::Instant::now() + cluster.config().ttl + Duration::from_secs(2);
    loop {
        let routed = owner(&app, &tenant, &rule).await;
        let waited_enough = std::time::Instant::now() >= deadline;
        match routed {
            Ok(Owner::Here) => {
                return next.run(Request::from_parts(parts, Body::from(body))).await;
            }
            Ok(Owner::There { addr, live, .. }) if live || waited_enough => {
                match forward(&app, &addr, &parts, body.clone()).await {
                    Ok(answer) => return answer,
                    Err(e) if waited_enough => return unavailable(format!("rule {rule}: {e}")),
                    Err(_) => {}
                }
            }
            Err(e) if waited_enough => return unavailable(format!("rule {rule}: {e}")),
            Ok(Owner::There { .. }) | Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Where `tenant`'s rule `rule` is run ([`crate::engine::cluster::Cluster::route`],
/// off the async threads). A deployed rule whose lease this node has just
/// taken is started before the caller acts on it (a swap takes over a
/// running version, a pause pauses it).
async fn owner(app: &Arc<App>, tenant: &str, rule: &str) -> Result<Owner, String> {
    let routed = {
        let (app, tenant, rule) = (app.clone(), tenant.to_owned(), rule.to_owned());
        tokio::task::spawn_blocking(move || {
            app.cluster
                .as_ref()
                .expect("a cluster")
                .route(&app.deploys, &tenant, &rule)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?
    };
    if routed == Owner::Here
        && app.deploys.engine.status(tenant, rule).is_none()
        && app.deploys.broken(tenant, rule).is_none()
    {
        app.deploys.start(tenant, rule, app.quotas(tenant)).await;
    }
    Ok(routed)
}

fn unavailable(message: String) -> Response {
    let mut r =
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "rule_moving", message).into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// Forward a request as it came to the node at `addr`: what it answered,
/// or why it could not be reached.
async fn forward(
    app: &App,
    addr: &str,
    parts: &axum::http::request::Parts,
    body: axum::body::Bytes,
) -> Result<Response, String> {
    let path = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |p| p.as_str());
    let mut out = client().request(parts.method.clone(), format!("{addr}{path}"));
    for name in [header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT] {
        if let Some(v) = parts.headers.get(&name) {
            out = out.header(name, v);
        }
    }
    let node = app.cluster.as_ref().map_or("", |c| c.node());
    out = out.header(FORWARDED, node).body(body);
    let answer = out
        .send()
        .await
        .map_err(|e| format!("the rule's node {addr} could not be reached: {e}"))?;
    let status = answer.status();
    let mut headers = HeaderMap::new();
    for name in [header::CONTENT_TYPE, header::RETRY_AFTER] {
        if let Some(v) = answer.headers().get(&name) {
            headers.insert(name, v.clone());
        }
    }
    let bytes = answer
        .bytes()
        .await
        .map_err(|e| format!("the rule's node {addr} did not finish answering: {e}"))?;
    Ok((status, headers, Body::from(bytes)).into_response())
}

/// Undeploy `tenant`'s rule `rule` on the node that runs it (here, or
/// forwarded with the admin's token, acting for the tenant).
pub async fn undeploy_anywhere(
    app: &Arc<App>,
    tenant: &str,
    rule: &str,
    drain: crate::engine::Drain,
    admin: Option<&HeaderValue>,
) -> Result<(), ApiError> {
    let cluster = app.cluster.clone().expect("a cluster");
    let deadline = std::time::Instant::now() + cluster.config().ttl + Duration::from_secs(2);
    loop {
        let routed = owner(app, tenant, rule).await;
        let waited_enough = std::time::Instant::now() >= deadline;
        match routed {
            Ok(Owner::Here) => match app.deploys.undeploy(tenant, rule, drain).await {
                // The rule changed hands meanwhile: ask again who has it.
                Err(e) if !waited_enough && moved(&e.to_string()) => {}
                done => return Ok(done?),
            },
            Ok(Owner::There { addr, live, .. }) if live || waited_enough => {
                let mut req = client()
                    .delete(format!("{addr}/v1/rules/{rule}?drain={}", drain.name()))
                    .header(FORWARDED, cluster.node())
                    .header(FOR_TENANT, tenant);
                if let Some(v) = admin {
                    req = req.header(header::AUTHORIZATION, v);
                }
                match req.send().await {
                    Ok(r) if r.status().is_success() || r.status() == StatusCode::NOT_FOUND => {
                        return Ok(());
                    }
                    Ok(r) => {
                        let status = r.status();
                        let text = r.text().await.unwrap_or_default();
                        let moving = status == StatusCode::SERVICE_UNAVAILABLE || moved(&text);
                        if waited_enough || !moving {
                            return Err(ApiError::internal(format!(
                                "undeploy {rule} on {addr}: {status} {text}"
                            )));
                        }
                    }
                    Err(e) if waited_enough => {
                        return Err(ApiError::internal(format!(
                            "undeploy {rule} on {addr}: {e}"
                        )));
                    }
                    Err(_) => {}
                }
            }
            Err(e) if waited_enough => return Err(ApiError::internal(e)),
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether a refusal says the rule changed hands while it was being
/// handled (its lease moved: the write was fenced).
fn moved(error: &str) -> bool {
    error.contains("fenced") || error.contains("rule_moving")
}

/// Ask every other live node the same GET (as a forwarded request: each
/// answers for the rules it holds) and collect the JSON answers that
/// succeeded.
pub async fn ask_others(
    app: &App,
    headers: &HeaderMap,
    path_and_query: &str,
) -> Vec<serde_json::Value> {
    let Some(cluster) = &app.cluster else {
        return Vec::new();
    };
    let mut asks = Vec::new();
    // The live nodes as of the last tick.
    for (id, addr) in cluster.peers() {
        let mut req = client()
            .get(format!("{addr}{path_and_query}"))
            .header(FORWARDED, cluster.node());
        if let Some(v) = headers.get(header::AUTHORIZATION) {
            req = req.header(header::AUTHORIZATION, v);
        }
        asks.push(async move {
            match req.send().await {
                Ok(r) if r.status().is_success() => r.json::<serde_json::Value>().await.ok(),
                Ok(_) => None,
                Err(e) => {
                    tracing::warn!(node = %id, error = %e, "a node did not answer");
                    None
                }
            }
        });
    }
    futures_util::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// The nodes sharing this server's store, their heartbeats and the rules
/// each holds.
#[utoipa::path(get, operation_id = "cluster_show", path = "/v1/cluster", tag = "admin",
    responses((status = 200, body = ClusterView), (status = 404, body = ErrorBody)),
    security(("admin" = [])))]
pub async fn show(
    _: AdminAuth,
    State(app): State<Arc<App>>,
) -> Result<axum::Json<ClusterView>, ApiError> {
    let cluster = app.cluster.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_a_cluster",
            "this server runs alone on an SQLite store; nodes share a PostgreSQL store (--store postgres://…)",
        )
    })?;
    let view = tokio::task::spawn_blocking(move || cluster.view())
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    Ok(axum::Json(view))
}

/// Send the same request (no body) to the other live nodes in turn: the
/// first answer that is not 404 (the one node that holds what it names),
/// or `None`.
pub async fn try_others(
    app: &App,
    method: Method,
    headers: &HeaderMap,
    path_and_query: &str,
) -> Option<Response> {
    let cluster = app.cluster.as_ref()?;
    if forwarded(headers) {
        return None;
    }
    for (_, addr) in cluster.peers() {
        let mut req = client()
            .request(method.clone(), format!("{addr}{path_and_query}"))
            .header(FORWARDED, cluster.node());
        if let Some(v) = headers.get(header::AUTHORIZATION) {
            req = req.header(header::AUTHORIZATION, v);
        }
        let Ok(answer) = req.send().await else {
            continue;
        };
        if answer.status() == StatusCode::NOT_FOUND {
            continue;
        }
        let status = answer.status();
        let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
        let bytes = answer.bytes().await.ok()?;
        let mut r = (status, Body::from(bytes)).into_response();
        if let Some(ct) = content_type {
            r.headers_mut().insert(header::CONTENT_TYPE, ct);
        }
        return Some(r);
    }
    None
}
