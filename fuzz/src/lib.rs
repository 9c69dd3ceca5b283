//! The bodies of Sluice's fuzz targets: each takes the fuzzer's bytes,
//! hands them to one of Sluice's input paths, and panics only when Sluice
//! does something it must never do — panic itself, answer a request with
//! a 5xx, or return a result that contradicts its own contract.
//!
//! `fuzz_targets/*.rs` are thin `libfuzzer-sys` wrappers for `cargo fuzz`
//! (`scripts/fuzz.sh`); the integration tests include this file and run
//! every target over its corpus and over mutations of it (the CI smoke).
//!
//! | target | input path |
//! | --- | --- |
//! | `ingest` | `POST /v1/events`: JSON, a JSON array or NDJSON, any bytes (invalid UTF-8, BOM, NUL, deep nesting, huge numbers) |
//! | `manifest` | `rule.toml` |
//! | `cron` | a schedule's cron expression and time zone |
//! | `scenario` | the lines `sluice test` reads: events and directives |
//! | `component` | component bytes given to the runtime |
//! | `deploy` | a multipart `PUT /v1/rules/{name}` body |
//! | `query` | query strings and feed cursors of the read routes |
//! | `projection` | payload text read for `[select] fields` (JSON pointers) |

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use sluice::api::{App, ServerConfig};
use sluice::clock::{Clock as _, ManualClock, SharedClock};
use sluice::engine::Engine;
use sluice::engine::deploy::Deployments;
use sluice::log::{Durability, EventLog, LogConfig, Store};
use sluice::manifest::Manifest;
use sluice::runtime::{Limits, RuleLabel, Runtime, RuntimeConfig};
use sluice::tenants::{Quotas, Tenants};
use tower::ServiceExt;

/// Bytes as text: the lossy UTF-8 of them (the paths under test take
/// text; the HTTP targets take the bytes as they are).
fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// `rule.toml`: parsing never panics; a manifest that parses describes
/// its trigger and builds its kind.
pub fn manifest(data: &[u8]) {
    if let Ok(m) = Manifest::parse(&text(data)) {
        let _ = m.trigger.describe();
        let _ = sluice::triggers::registry::KindSpec::from_trigger(&m.trigger);
    }
}

/// Input projection (`sluice_fields`): reading any text for a set of
/// pointers never panics; on text serde_json accepts, every pointer finds
/// what serde_json's own pointer finds (the engine only ever projects
/// payloads it validated at ingest).
pub fn projection(data: &[u8]) {
    use sluice_fields::Projection;
    let text = text(data);
    let pointers = [
        "", "/a", "/a/b", "/a/0", "/0", "/a/0/b", "/a~1b", "/~0", "/é", "/a/b/c/d", "/-",
    ];
    let mut out = Vec::new();
    let result = Projection::new(&pointers).unwrap().project(&text, &mut out);
    let Ok(doc) = serde_json::from_str::<serde_json::Value>(&text) else {
        return;
    };
    assert!(result.is_ok(), "{text:?} is JSON, yet: {result:?}");
    for (p, got) in pointers.iter().zip(&out) {
        let want = doc.pointer(p);
        let same = got.is_serde(want);
        assert!(
            same,
            "{p} in {text:?}: serde_json {want:?}, projection {got:?}"
        );
    }
}

/// A cron expression and a time zone (split at the first newline): a
/// schedule that builds ticks strictly forward, whatever the zone's
/// transitions.
pub fn cron(data: &[u8]) {
    let text = text(data);
    let (cron, zone) = text.split_once('\n').unwrap_or((&text, "UTC"));
    let trigger = sluice::manifest::ScheduleTrigger {
        cron: cron.to_owned(),
        timezone: zone.trim().to_owned(),
        overlap: sluice::manifest::Overlap::Skip,
        catch_up: sluice::manifest::CatchUp::Skip,
        catch_up_window: std::time::Duration::from_secs(3600),
        skip_empty: false,
    };
    let Ok(schedule) = sluice::triggers::schedule::Schedule::new(&trigger) else {
        return;
    };
    // 2026-01-01, and a DST change in spring in most zones that have one.
    for start in [1_767_225_600_000_i64, 1_774_746_000_000, -1, 0] {
        let mut at = start;
        for _ in 0..8 {
            match schedule.tick_after(at) {
                Some(next) => {
                    assert!(
                        next > at,
                        "tick {next} is not after {at} ({cron:?} in {zone:?})"
                    );
                    at = next;
                }
                None => break,
            }
        }
    }
}

/// The lines `sluice test` reads, run through a rule (the echo test
/// component under a count-3 window): an error is fine, a panic is not.
pub fn scenario(data: &[u8], echo: &[u8]) {
    let manifest = Manifest::parse(
        "name = \"echo\"\nversion = 1\n[trigger.batch]\ncount = 3\nwindow = \"10m\"\nexpire = \"fire\"\n",
    )
    .expect("a valid manifest");
    let options = sluice::offline::Options {
        cache_dir: Some(server().dir.path().join("cache")),
        ..Default::default()
    };
    let _ = sluice::offline::run(echo, manifest, data, &options);
}

/// Component bytes: the runtime refuses what is not a Sluice rule with
/// an error, never a panic.
pub fn component(data: &[u8]) {
    let _ = server()
        .app
        .runtime
        .load(RuleLabel::new("fuzz", "rule"), data, Limits::default());
}

/// `POST /v1/events` with the bytes as the body, under the content type
/// the first byte picks.
pub fn ingest(data: &[u8]) {
    let (kind, body) = data.split_first().unwrap_or((&0, &[]));
    let content_type = match kind % 4 {
        0 => "application/json",
        1 => "application/x-ndjson",
        2 => "text/plain",
        _ => "",
    };
    let mut request = Request::post("/v1/events");
    if !content_type.is_empty() {
        request = request.header("content-type", content_type);
    }
    send(request, body.to_vec());
}

/// `PUT /v1/rules/fuzzed` with the bytes as a multipart body.
pub fn deploy(data: &[u8]) {
    let request = Request::put("/v1/rules/fuzzed")
        .header("content-type", "multipart/form-data; boundary=XyZ");
    send(request, data.to_vec());
}

/// A read route (picked by the first byte) with the rest as its query
/// string or cursor.
pub fn query(data: &[u8]) {
    let (route, rest) = data.split_first().unwrap_or((&0, &[]));
    // Bytes a URI's query cannot hold are %-escaped, as a client would.
    let q: String = rest
        .iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let request = match route % 8 {
        0 => Request::get(format!("/v1/events?{q}")),
        1 => Request::get(format!("/v1/feed?{q}")),
        2 => Request::get("/v1/feed").header(
            "last-event-id",
            axum::http::HeaderValue::from_bytes(rest)
                .unwrap_or(axum::http::HeaderValue::from_static("0")),
        ),
        3 => Request::get(format!("/v1/fires?{q}")),
        4 => Request::get(format!("/v1/rules/echo/partitions?{q}")),
        5 => Request::get(format!("/v1/stats?{q}")),
        6 => Request::get(format!("/v1/rules/echo/history?{q}")),
        _ => Request::get(format!("/v1/fires/{q}")),
    };
    send(request, Vec::new());
}

/// A server in this process: the real router over a SQLite store in a
/// temporary directory, tenant `fuzz` with rule `echo`, no listener.
struct Server {
    app: Arc<App>,
    token: String,
    tokio: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a Tokio runtime");
        let clock = Arc::new(ManualClock::new(1_767_225_600_000));
        let shared: SharedClock = clock.clone();
        let (app, token) = tokio.block_on(async {
            let store = Store::Sqlite(dir.path().join("fuzz.db"));
            let log = EventLog::open_store(
                &store,
                Durability::Normal,
                LogConfig::default(),
                shared.clone(),
            )
            .expect("a log");
            let runtime = Runtime::new(RuntimeConfig {
                cache_dir: Some(dir.path().join("cache")),
                clock: shared.clone(),
                ..RuntimeConfig::default()
            })
            .expect("a runtime");
            let tenants = Tenants::load(log.clone()).expect("tenants");
            let created = tenants
                .create("fuzz", Quotas::default(), clock.now_millis())
                .await
                .expect("a tenant");
            let app = Arc::new(App {
                deploys: Arc::new(Deployments::new(
                    Engine::new(log.clone(), shared.clone()),
                    runtime.clone(),
                )),
                metrics: None,
                config: ServerConfig {
                    store,
                    max_body_bytes: 1 << 20,
                    max_component_bytes: 4 << 20,
                    ..ServerConfig::default()
                },
                log,
                runtime,
                tenants,
                clock: shared,
                manual: Some(clock),
                shutdown: tokio::sync::watch::channel(false).1,
                cluster: None,
                replays: Default::default(),
            });
            (app, created.token.token)
        });
        Server {
            app,
            token,
            tokio,
            dir,
        }
    })
}

/// Send `request` (with the tenant's token) and `body` to the router: any
/// answer but a 5xx.
fn send(request: axum::http::request::Builder, body: Vec<u8>) {
    let s = server();
    let request = request
        .header("authorization", format!("Bearer {}", s.token))
        .body(Body::from(body))
        .expect("a request");
    let router = sluice::api::router(s.app.clone());
    let response = s
        .tokio
        .block_on(async { router.oneshot(request).await })
        .expect("the router answers");
    let status = response.status();
    assert!(status < StatusCode::INTERNAL_SERVER_ERROR, "{status}");
}
