//! Sluice's integration tests: one binary, a module per area.

mod cli;
mod client;
mod cluster;
mod conformance;
mod core;
mod crash;
mod deploy;
mod dispatch;
mod engine;
mod examples;
mod failpoints;
mod fuzz;
mod languages;
mod load;
mod log;
mod manifest;
mod postgres;
mod projection;
mod replay;
mod sandbox;
mod server;
mod shadow;
mod timing;

use std::sync::Arc;

use sluice::clock::{ManualClock, SharedClock};
use sluice::event::Event;
use sluice::runtime::{Limits, LoadedRule, RuleLabel, Runtime, RuntimeConfig};
use sluice_test_components::component_bytes;

/// A runtime with a manual clock and a private compile cache.
#[derive(Debug)]
pub struct Harness {
    pub runtime: Runtime,
    pub clock: ManualClock,
    pub _cache: tempfile::TempDir,
}

impl Default for Harness {
    fn default() -> Self {
        Self::with(|_| {})
    }
}

impl Harness {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(tweak: impl FnOnce(&mut RuntimeConfig)) -> Self {
        let cache = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(1_767_225_600_000);
        let mut config = RuntimeConfig {
            cache_dir: Some(cache.path().to_path_buf()),
            clock: Arc::new(clock.clone()) as SharedClock,
            ..RuntimeConfig::default()
        };
        tweak(&mut config);
        Self {
            runtime: Runtime::new(config).unwrap(),
            clock,
            _cache: cache,
        }
    }

    pub fn load(&self, path: &str, limits: Limits) -> LoadedRule {
        let name = std::path::Path::new(path)
            .file_stem()
            .unwrap()
            .to_string_lossy();
        self.runtime
            .load(
                RuleLabel::new("test", &name),
                &component_bytes(path),
                limits,
            )
            .unwrap_or_else(|e| panic!("load {path}: {e}"))
    }
}

/// The PostgreSQL database the suites run on instead of SQLite
/// (`SLUICE_TEST_POSTGRES`, set by `scripts/test.sh` for its second pass),
/// if any.
pub fn postgres() -> Option<String> {
    std::env::var("SLUICE_TEST_POSTGRES")
        .ok()
        .filter(|url| !url.trim().is_empty())
}

/// A PostgreSQL database for the tests that are about PostgreSQL itself:
/// the pass's (`SLUICE_TEST_POSTGRES`), or a throwaway cluster this process
/// starts on first use (`scripts/pg.sh`, from Debian's binaries), which
/// stops once the process has exited.
pub fn pg_url() -> String {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(url) = postgres() {
        return url;
    }
    URL.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("sluice-test-pg-{}", std::process::id()));
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/pg.sh");
        let out = std::process::Command::new("bash")
            .arg(script)
            .arg("start")
            .arg(&dir)
            .args(["--fast", "--until-exit", &std::process::id().to_string()])
            .output()
            .expect("run scripts/pg.sh");
        assert!(
            out.status.success(),
            "could not start a throwaway PostgreSQL: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    })
    .clone()
}

/// A store of its own (a fresh schema) in [`pg_url`]'s database.
pub fn pg_store(name: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let base = pg_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!(
        "{base}{sep}options=-csearch_path%3Ds_{name}_{}_{n}",
        std::process::id()
    )
}

/// The store a test keeps at `path`: that SQLite file, or, on the
/// PostgreSQL pass, a schema of its own named after the path (so a test
/// that opens the same path again finds the same store).
pub fn store_at(path: &std::path::Path) -> sluice::log::Store {
    use sha2::Digest;
    match postgres() {
        None => sluice::log::Store::Sqlite(path.to_path_buf()),
        Some(base) => {
            let digest = sha2::Sha256::digest(path.as_os_str().as_encoded_bytes());
            let schema = format!("t_{}", hex(&digest[..10]));
            let sep = if base.contains('?') { '&' } else { '?' };
            sluice::log::Store::Postgres(format!("{base}{sep}options=-csearch_path%3D{schema}"))
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The arguments that point a `sluice` command at the store at `path`.
pub fn store_args(path: &std::path::Path) -> Vec<std::ffi::OsString> {
    match store_at(path) {
        sluice::log::Store::Sqlite(p) => vec!["--db".into(), p.into_os_string()],
        sluice::log::Store::Postgres(url) => vec!["--store".into(), url.into()],
    }
}

/// Open the log kept at `path` (see [`store_at`]).
pub fn open_log_at(
    path: &std::path::Path,
    config: sluice::log::LogConfig,
    clock: SharedClock,
) -> Result<sluice::log::EventLog, sluice::log::LogError> {
    sluice::log::EventLog::open_store(
        &store_at(path),
        sluice::log::Durability::Normal,
        config,
        clock,
    )
}

/// A fresh log in a temporary directory, on the harness's clock.
pub fn temp_log(h: &Harness) -> (sluice::log::EventLog, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let log = sluice::log::EventLog::open_store(
        &store_at(&dir.path().join("log.db")),
        sluice::log::Durability::Normal,
        sluice::log::LogConfig::default(),
        Arc::new(h.clock.clone()),
    )
    .unwrap();
    (log, dir)
}

/// A `pull_request.merged` event of tenant `acme` for `repo`, id
/// `<repo>#<n>`.
pub fn merged(repo: &str, n: u64) -> sluice::log::NewEvent {
    sluice::log::NewEvent {
        tenant: "acme".into(),
        id: Some(format!("{repo}#{n}")),
        source: "github".into(),
        kind: "pull_request.merged".into(),
        time: None,
        payload: serde_json::json!({"repo": repo, "number": n}).to_string(),
        hops: 0,
        ingested: None,
    }
}

/// An event of `kind` with a JSON `payload`.
pub fn event(seq: u64, kind: &str, payload: serde_json::Value) -> Event {
    event_text(seq, kind, &payload.to_string())
}

/// [`event`] with its payload as written (escapes, duplicate keys and
/// spacing kept).
pub fn event_text(seq: u64, kind: &str, payload: &str) -> Event {
    Event {
        seq,
        id: format!("ev-{seq}"),
        tenant: "test".into(),
        source: "tests".into(),
        kind: kind.into(),
        time: 1_767_225_600_000 + seq as i64,
        ingested: 1_767_225_600_000 + seq as i64,
        payload: payload.to_owned(),
        hops: 0,
    }
}
