//! The OpenAPI document, generated from the handlers' annotations and the
//! types they exchange (`GET /v1/openapi.json`).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{cluster, error, events, feed, fires, rules, stats, tenants};

/// `drain` as the document spells it (the handlers parse the text and
/// name a bad value).
#[derive(Debug, utoipa::ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum DrainParam {
    /// Open windows fire (reason drained) and pending fires run.
    Fire,
    /// They are dropped and reported.
    Discard,
}

/// `status` of `GET /v1/fires`, as the document spells it.
#[derive(Debug, utoipa::ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum FireStatusParam {
    /// Waiting, retrying or running.
    Pending,
    /// In the dead-letter list.
    Dead,
    /// Completed, from the engine's records.
    Completed,
    /// Failed attempts, from the engine's records.
    Failed,
}

/// The largest seq a cursor may name (the stores keep seqs as 64-bit
/// signed integers).
pub const MAX_SEQ: u64 = i64::MAX as u64;

/// The API's description.
#[derive(OpenApi)]
#[openapi(
    info(title = "Sluice", description = "A WebAssembly-scripted rules engine: tenants deploy rules (Wasm components), send events, and follow fires and outputs on the feed."),
    paths(
        tenants::whoami, tenants::create, tenants::list, tenants::show, tenants::delete, tenants::set_quotas,
        tenants::create_token, tenants::list_tokens, tenants::revoke_token,
        events::ingest, events::list, events::show,
        rules::deploy, rules::list, rules::show, rules::undeploy, rules::pause, rules::resume,
        rules::partitions, rules::history, super::replay::replay,
        super::shadow::show, super::shadow::diff, super::shadow::promote, super::shadow::discard,
        fires::list, fires::show, fires::redrive, fires::discard,
        feed::feed, stats::show,
        super::clock_get, super::clock_move, cluster::show,
        events::healthz, super::metrics::metrics_on_api,
    ),
    components(schemas(error::ErrorBody, error::ErrorDetail, DrainParam, FireStatusParam)),
    modifiers(&Security, &Refusals),
    tags(
        (name = "tenants", description = "Tenants, tokens and quotas (admin token)"),
        (name = "events", description = "Ingest and read the tenant's log"),
        (name = "rules", description = "Deploy, swap, inspect, pause and remove rules; replay them over the past; run a next version as a shadow"),
        (name = "fires", description = "Pending fires and dead letters"),
        (name = "feed", description = "The live feed (Server-Sent Events)"),
        (name = "admin", description = "The engine clock; the nodes sharing a PostgreSQL store; liveness and Prometheus metrics"),
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

/// The refusals every route shares, listed on each operation as the
/// server answers them: 401 and 403 on every route that takes a token,
/// 400 on every route that reads a query, a path or a body.
struct Refusals;

impl Modify for Refusals {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let error = |what: &str| {
            ResponseBuilder::new()
                .description(what)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        for item in doc.paths.paths.values_mut() {
            let ops = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in ops.into_iter().flatten() {
                let schemes: Vec<String> = op
                    .security
                    .iter()
                    .flatten()
                    .filter_map(|r| serde_json::to_value(r).ok())
                    .filter_map(|v| v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()))
                    .flatten()
                    .collect();
                let responses = &mut op.responses.responses;
                let mut add = |code: &str, what: &str| {
                    responses
                        .entry(code.to_owned())
                        .or_insert_with(|| error(what).into());
                };
                if !schemes.is_empty() {
                    add("401", "No token, or one that is unknown or revoked.");
                }
                // A route for both kinds of token refuses neither.
                if schemes.len() == 1 {
                    add(
                        "403",
                        "A token of the other kind: the admin token on a tenant's route, or a tenant's on an admin route.",
                    );
                }
                let reads = op.parameters.as_ref().is_some_and(|p| !p.is_empty())
                    || op.request_body.is_some();
                if reads {
                    add(
                        "400",
                        "A malformed query, path or body; the message names the field.",
                    );
                }
            }
        }
    }
}

/// A name field of an event (`id`, `source`, `kind`): 1 to 256
/// characters, no control characters, not only white space.
const EVENT_NAME: &str = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$";

/// An event's `time` as text: RFC 3339 (years 1971 to 9998, so that no
/// offset takes it out of range; a number is sent as a number).
const EVENT_TIME: &str = r"^((197[1-9]|19[89][0-9]|[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9]))$";

/// The ingest body as the server reads it: what the derive cannot say
/// (reserved values are `not`s).
fn event_in() -> serde_json::Value {
    let name = serde_json::json!({"type": "string", "minLength": 1, "maxLength": 256,
        "pattern": EVENT_NAME});
    serde_json::json!({
        "type": "object",
        "description": "One event. `source` may not be `sluice` or start with `rule:`, nor `id` with `sluice:` (the engine's).",
        "required": ["source", "kind", "payload"],
        "additionalProperties": false,
        "properties": {
            "id": {"oneOf": [{"type": "null"},
                {"allOf": [name, {"not": {"pattern": "^sluice:"}}]}]},
            "source": {"allOf": [name, {"not": {"enum": ["sluice"]}},
                {"not": {"pattern": "^rule:"}}]},
            "kind": name,
            "time": {"oneOf": [{"type": "null"},
                {"type": "integer", "minimum": 0, "maximum": 253_402_300_799_999_i64},
                {"type": "string", "pattern": EVENT_TIME}]},
            "payload": {"type": "object", "description": "At most 256 KiB as JSON text."}
        }
    })
}

/// The document as served: [`document`] with the ingest body's schema.
pub fn document_json() -> serde_json::Value {
    let mut doc = serde_json::to_value(document()).unwrap_or_default();
    doc["components"]["schemas"]["EventIn"] = event_in();
    doc["paths"]["/v1/events"]["post"]["requestBody"]["content"]["application/json"]["schema"] = serde_json::json!({
        "oneOf": [
            {"$ref": "#/components/schemas/EventIn"},
            {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/EventIn"}}
        ]
    });
    doc
}

/// The document.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
