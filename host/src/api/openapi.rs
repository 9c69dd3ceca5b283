//! The OpenAPI document, generated from the handlers' annotations and the
//! types they exchange (`GET /v1/openapi.json`).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{cluster, error, events, feed, fires, rules, stats, tenants};

/// The API's description.
#[derive(OpenApi)]
#[openapi(
    info(title = "Sluice", description = "A WebAssembly-scripted rules engine: tenants deploy rules (Wasm components), send events, and follow fires and outputs on the feed."),
    paths(
        tenants::whoami, tenants::create, tenants::list, tenants::show, tenants::delete, tenants::set_quotas,
        tenants::create_token, tenants::list_tokens, tenants::revoke_token,
        events::ingest, events::list, events::show,
        rules::deploy, rules::list, rules::show, rules::undeploy, rules::pause, rules::resume,
        rules::partitions, rules::history,
        fires::list, fires::show, fires::redrive, fires::discard,
        feed::feed, stats::show,
        super::clock_get, super::clock_move, cluster::show,
    ),
    components(schemas(error::ErrorBody, error::ErrorDetail)),
    modifiers(&Security),
    tags(
        (name = "tenants", description = "Tenants, tokens and quotas (admin token)"),
        (name = "events", description = "Ingest and read the tenant's log"),
        (name = "rules", description = "Deploy, swap, inspect, pause and remove rules"),
        (name = "fires", description = "Pending fires and dead letters"),
        (name = "feed", description = "The live feed (Server-Sent Events)"),
        (name = "admin", description = "The engine clock; the nodes sharing a PostgreSQL store"),
    )
)]
struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        for (name, what) in [
            ("tenant", "a tenant's token (sluice_<id>_<secret>)"),
            ("admin", "the admin token"),
        ] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(what))
                        .build(),
                ),
            );
        }
    }
}

/// The document.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
