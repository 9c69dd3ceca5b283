//! Sluice's integration tests: one binary, a module per area.

mod cli;
mod conformance;
mod core;
mod crash;
mod deploy;
mod dispatch;
mod engine;
mod examples;
mod languages;
mod load;
mod log;
mod manifest;
mod sandbox;
mod server;
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

/// A fresh SQLite log in a temporary directory, on the harness's clock.
pub fn temp_log(h: &Harness) -> (sluice::log::EventLog, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let log = sluice::log::EventLog::open_sqlite(
        dir.path().join("log.db"),
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
    }
}

/// An event of `kind` with a JSON `payload`.
pub fn event(seq: u64, kind: &str, payload: serde_json::Value) -> Event {
    Event {
        seq,
        id: format!("ev-{seq}"),
        tenant: "test".into(),
        source: "tests".into(),
        kind: kind.into(),
        time: 1_767_225_600_000 + seq as i64,
        ingested: 1_767_225_600_000 + seq as i64,
        payload: payload.to_string(),
        hops: 0,
    }
}
