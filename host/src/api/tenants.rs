//! The extractors that authenticate a request, and the admin routes that
//! manage tenants and their tokens (the store is [`crate::tenants`]).

use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::{App, body_json};
pub use crate::tenants::{
    Caller, CreateTenant, CreatedTenant, NewToken, Quotas, Scope, Tenant, TenantError, Tenants,
    TokenInfo,
};

impl From<TenantError> for ApiError {
    fn from(e: TenantError) -> Self {
        match e {
            TenantError::NotFound(what) => ApiError::not_found(what),
            TenantError::Exists(m) => ApiError::conflict("tenant_exists", m),
            TenantError::InvalidName(m) => ApiError::bad_request("invalid_name", m),
            TenantError::Invalid(m) => ApiError::bad_request("invalid_body", m),
            TenantError::Log(e) => e.into(),
        }
    }
}

/// Check a name (a rule's or a tenant's) in a request.
pub fn check_name(field: &str, name: &str) -> Result<(), ApiError> {
    crate::names::check(field, name).map_err(|m| ApiError::bad_request("invalid_name", m))
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| {
            ApiError::unauthorized("this route needs a token: send Authorization: Bearer <token>")
        })?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("the Authorization header is not readable text"))?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::unauthorized("the Authorization header must read Bearer <token>"))
}

fn caller(parts: &Parts, app: &App) -> Result<Caller, ApiError> {
    let token = bearer(parts)?;
    app.tenants
        .authenticate(token)
        .ok_or_else(|| ApiError::unauthorized("the token is unknown or revoked"))
}

/// The scope a tenant's request needs: sending events needs `ingest`,
/// any read `read`, any change `deploy`. One table for every route.
pub fn scope_for(method: &axum::http::Method, path: &str) -> Scope {
    use axum::http::Method;
    if *method == Method::POST && path == "/v1/events" {
        Scope::Ingest
    } else if *method == Method::GET || *method == Method::HEAD {
        Scope::Read
    } else {
        Scope::Deploy
    }
}

/// A request made with a tenant's token (one whose scopes allow the
/// route): the tenant's name.
#[derive(Debug, Clone)]
pub struct TenantAuth(pub String);

impl FromRequestParts<Arc<App>> for TenantAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        match caller(parts, app)? {
            Caller::Tenant(t) => {
                let need = scope_for(&parts.method, parts.uri.path());
                let has = app.tenants.scopes(bearer(parts)?).unwrap_or_default();
                if has.contains(&need) {
                    return Ok(Self(t));
                }
                let names: Vec<&str> = has.iter().map(|s| s.name()).collect();
                Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "scope_needed",
                    format!(
                        "{} {} needs a token with the {} scope; this one has {}",
                        parts.method,
                        parts.uri.path(),
                        need.name(),
                        names.join(", ")
                    ),
                ))
            }
            // Another node deleting a tenant undeploys its rules where
            // they run, acting for the tenant with the admin's request.
            Caller::Admin
                if super::cluster::forwarded(&parts.headers)
                    && let Some(t) = parts
                        .headers
                        .get(super::cluster::FOR_TENANT)
                        .and_then(|v| v.to_str().ok()) =>
            {
                Ok(Self(t.to_owned()))
            }
            Caller::Admin => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "tenant_token_needed",
                "this route acts for a tenant: use one of the tenant's tokens, not the admin token",
            )),
        }
    }
}

/// A request made with the admin token.
#[derive(Debug, Clone, Copy)]
pub struct AdminAuth;

impl FromRequestParts<Arc<App>> for AdminAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        match caller(parts, app)? {
            Caller::Admin => Ok(Self),
            Caller::Tenant(_) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "admin_token_needed",
                "this route needs the admin token",
            )),
        }
    }
}

/// Who a token acts for.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WhoAmI {
    /// `tenant` or `admin`.
    pub role: String,
    /// The tenant, for a tenant's token.
    pub tenant: Option<String>,
    /// What a tenant's token may do (none for the admin token, which acts
    /// for no tenant).
    pub scopes: Vec<Scope>,
}

/// Who the token acts for: a tenant (which) or the admin.
#[utoipa::path(get, operation_id = "whoami", path = "/v1/whoami", tag = "tenants",
    responses((status = 200, body = WhoAmI), (status = 401, body = super::error::ErrorBody)),
    security(("tenant" = []), ("admin" = [])))]
pub async fn whoami(
    State(app): State<Arc<App>>,
    parts: axum::http::request::Parts,
) -> Result<Json<WhoAmI>, ApiError> {
    Ok(Json(match caller(&parts, &app)? {
        Caller::Tenant(t) => WhoAmI {
            role: "tenant".into(),
            tenant: Some(t),
            scopes: app.tenants.scopes(bearer(&parts)?).unwrap_or_default(),
        },
        Caller::Admin => WhoAmI {
            role: "admin".into(),
            tenant: None,
            scopes: Vec::new(),
        },
    }))
}

/// Create a tenant and its first token.
#[utoipa::path(post, operation_id = "tenants_create", path = "/v1/tenants", tag = "tenants",
    request_body = CreateTenant,
    responses((status = 201, body = CreatedTenant), (status = 409, body = super::error::ErrorBody)),
    security(("admin" = [])))]
pub async fn create(
    _: AdminAuth,
    State(app): State<Arc<App>>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<CreatedTenant>), ApiError> {
    let req: CreateTenant = body_json(&body)?;
    let created = app
        .tenants
        .create(&req.name, req.quotas.unwrap_or_default(), app.now())
        .await?;
    tracing::info!(tenant = %req.name, "tenant created");
    Ok((StatusCode::CREATED, Json(created)))
}

/// Every tenant.
#[utoipa::path(get, operation_id = "tenants_list", path = "/v1/tenants", tag = "tenants",
    responses((status = 200, body = Vec<Tenant>)), security(("admin" = [])))]
pub async fn list(_: AdminAuth, State(app): State<Arc<App>>) -> Json<Vec<Tenant>> {
    Json(app.tenants.list())
}

/// One tenant.
#[utoipa::path(get, operation_id = "tenants_show", path = "/v1/tenants/{tenant}", tag = "tenants",
    params(("tenant" = String, Path)),
    responses((status = 200, body = Tenant), (status = 404, body = super::error::ErrorBody)),
    security(("admin" = [])))]
pub async fn show(
    _: AdminAuth,
    State(app): State<Arc<App>>,
    Path(tenant): Path<String>,
) -> Result<Json<Tenant>, ApiError> {
    app.tenants
        .get(&tenant)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format_args!("tenant {tenant:?}")))
}

/// Replace a tenant's quotas (left-out fields take their defaults).
#[utoipa::path(put, operation_id = "tenants_set_quotas", path = "/v1/tenants/{tenant}/quotas", tag = "tenants",
    params(("tenant" = String, Path)), request_body = Quotas,
    responses((status = 200, body = Tenant), (status = 404, body = super::error::ErrorBody)),
    security(("admin" = [])))]
pub async fn set_quotas(
    _: AdminAuth,
    State(app): State<Arc<App>>,
    Path(tenant): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Tenant>, ApiError> {
    let quotas: Quotas = body_json(&body)?;
    Ok(Json(app.tenants.set_quotas(&tenant, quotas).await?))
}

/// `POST /v1/tenants/{tenant}/tokens`: what the new token may do.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// Its scopes (default: all three). An ingest-only token for a
    /// webhook sender, a read-only one for a dashboard.
    #[schema(min_items = 1)]
    pub scopes: Option<Vec<Scope>>,
}

/// A new token for a tenant, with the scopes asked for (no body: all).
#[utoipa::path(post, operation_id = "tenants_create_token", path = "/v1/tenants/{tenant}/tokens", tag = "tenants",
    params(("tenant" = String, Path)), request_body(content = Option<CreateToken>, content_type = "application/json"),
    responses((status = 201, body = NewToken), (status = 404, body = super::error::ErrorBody)),
    security(("admin" = [])))]
pub async fn create_token(
    _: AdminAuth,
    State(app): State<Arc<App>>,
    Path(tenant): Path<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<NewToken>), ApiError> {
    let scopes = if body.iter().all(u8::is_ascii_whitespace) {
        Scope::ALL.to_vec()
    } else {
        body_json::<Option<CreateToken>>(&body)?
            .and_then(|b| b.scopes)
            .unwrap_or_else(|| Scope::ALL.to_vec())
    };
    let token = app.tenants.new_token(&tenant, app.now(), &scopes).await?;
    Ok((StatusCode::CREATED, Json(token)))
}

/// A tenant's tokens (without secrets).
#[utoipa::path(get, operation_id = "tenants_list_tokens", path = "/v1/tenants/{tenant}/tokens", tag = "tenants",
    params(("tenant" = String, Path)),
    responses((status = 200, body = Vec<TokenInfo>), (status = 404, body = super::error::ErrorBody)),
    security(("admin" = [])))]
pub async fn list_tokens(
    _: AdminAuth,
    State(app): State<Arc<App>>,
    Path(tenant): Path<String>,
) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    if app.tenants.get(&tenant).is_none() {
        return Err(ApiError::not_found(format_args!("tenant {tenant:?}")));
    }
    Ok(Json(app.tenants.tokens(&tenant)))
}

/// Revoke a tenant's token.
#[utoipa::path(delete, operation_id = "tenants_revoke_token", path = "/v1/tenants/{tenant}/tokens/{id}", tag = "tenants",
    params(("tenant" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = TokenInfo), (status = 404, body = super::error::ErrorBody)),
    security(("admin" = [])))]
pub async fn revoke_token(
    _: AdminAuth,
    State(app): State<Arc<App>>,
    Path((tenant, id)): Path<(String, String)>,
) -> Result<Json<TokenInfo>, ApiError> {
    Ok(Json(app.tenants.revoke(&tenant, &id, app.now()).await?))
}

/// Tenant deletion options.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeleteTenantQuery {
    /// What the tenant's rules do with open windows as they are
    /// undeployed: `fire` (default) or `discard`.
    #[param(value_type = Option<super::openapi::DrainParam>)]
    pub drain: Option<String>,
}

/// Delete a tenant: its rules are undeployed (draining as asked), its
/// tokens revoked; its name is not given out again.
#[utoipa::path(delete, operation_id = "tenants_delete", path = "/v1/tenants/{tenant}", tag = "tenants",
    params(("tenant" = String, Path), DeleteTenantQuery),
    responses((status = 200, body = Tenant), (status = 400, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody)),
    security(("admin" = [])))]
pub async fn delete(
    _: AdminAuth,
    State(app): State<Arc<App>>,
    headers: axum::http::HeaderMap,
    Path(tenant): Path<String>,
    query: Result<
        axum::extract::Query<DeleteTenantQuery>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Result<Json<Tenant>, ApiError> {
    let q = super::error::query(query)?;
    let drain = crate::engine::Drain::parse(q.drain.as_deref())
        .map_err(|m| ApiError::bad_request("invalid_query", m))?;
    let found = app
        .tenants
        .get(&tenant)
        .ok_or_else(|| ApiError::not_found(format_args!("tenant {tenant:?}")))?;
    // Runs to its end even if the client goes away.
    let (app2, t) = (app.clone(), tenant.clone());
    let admin = headers.get(axum::http::header::AUTHORIZATION).cloned();
    tokio::spawn(async move {
        match &app2.cluster {
            // Each rule is undeployed by the node that runs it.
            Some(_) => {
                for d in app2.deploys.registry.list_tenant(&t)? {
                    super::cluster::undeploy_anywhere(&app2, &t, &d.name, drain, admin.as_ref())
                        .await?;
                }
            }
            None => app2.deploys.undeploy_tenant(&t, drain).await?,
        }
        app2.tenants.delete(&t, app2.now()).await?;
        Ok::<_, ApiError>(())
    })
    .await
    .map_err(ApiError::internal)??;
    tracing::info!(%tenant, "tenant deleted");
    Ok(Json(Tenant {
        deleted_at: Some(app.now()),
        ..found
    }))
}
