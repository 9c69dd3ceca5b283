//! Sluice: a WebAssembly-scripted rules engine.
//!
//! The host owns the stateful machinery (event log, trigger state, timers,
//! retries, tenants, limits); user-supplied Wasm components implementing the
//! `sluice:rule` world (see `wit/rule.wit`) decide which events matter, how
//! they group and what happens when a group is ready.
//!
//! Data flows one way: ingest → log → driver (`select`, the core's plan
//! in time order) → fire outbox → handler → outputs back into the log.
//! The design — layers, data flow, invariants, vocabulary — is in
//! ARCHITECTURE.md at the repository's root.
//!
//! # Layout
//!
//! - [`api`]: `sluice serve` — HTTP handlers that parse, call the layer
//!   below and map its error: ingest, reads, the SSE feed, rules, fires,
//!   tenants, metrics, recent activity ([`api::stats`]), a generated
//!   OpenAPI document; on several nodes, [`api::cluster`] sends a rule's
//!   requests to its node. [`api::dashboard`] serves the page at `/`
//!   (`host/dashboard/`, compiled in), a client of the same API.
//!   [`api::shadow`]: a rule's shadow (show, diff, promote, discard).
//! - [`cli`]: the `sluice` command line (the binary is a thin shell).
//!   - [`cli::client`]: how commands talk to a running server; `deploy`,
//!     `emit`, `tail`.
//!   - [`cli::admin`]: `rules`, `fires`, `tenants`, `cluster`.
//!   - [`cli::testing`]: `sluice test` for people (timeline, `--expect`,
//!     `--bless`, `--watch`).
//!   - [`cli::replay`]: `sluice replay`, a deployed rule over the log's
//!     past.
//!   - [`cli::shadow`]: `sluice shadow`, a rule's next version beside it.
//!   - [`cli::scaffold`]: `sluice new` (a rule project from the templates
//!     in `host/templates/`, with the SDK of its language) and `sluice
//!     build` (its component, with the language's own tools).
//! - [`offline`]: `sluice test` — input in, report out; rules run through
//!   the engine's driver on a virtual clock.
//! - [`replay`]: a rule version over a range of a tenant's log — the
//!   offline run fed from the log; a dry run or a backfill.
//! - [`engine`]: runs rules.
//!   - [`engine::driver`]: the one driver — a rule's round and its one
//!     write path; how fires run is a parameter.
//!   - [`engine::deploy`]: deployments — the deploy saga, undeploys, tenant
//!     deletion, the start-up restore — below any front door.
//!   - [`engine::registry`]: which rules a server runs, kept beside their
//!     state (and their shadows).
//!   - [`engine::shadow`]: shadows — the records they keep aside, the copy
//!     of the live state they start from, and their diff with the live
//!     rule.
//!   - [`engine::rule`]: a manifest and component made into a driver of
//!     its kind.
//!   - [`engine::job`]: running a fire's handler.
//!   - [`engine::cluster`]: several nodes on one PostgreSQL store —
//!     heartbeats, leases, rendezvous hashing, hand-over.
//!   - [`engine::stats`]: the last hour per minute (fires, latency,
//!     lateness, ingest) for the dashboard's charts.
//!   - [`engine::alive`]: liveness marks — until when a node is known to
//!     have run, so that a restart knows when its outage began.
//! - [`triggers`]: the sans-IO rule core, the kinds, the fire pipeline.
//!   - [`triggers::core`]: a rule's trigger state and pure functions over
//!     it — plan (time order), writes, fire outcomes, poison events,
//!     schedule ticks, control.
//!   - [`triggers::fires`]: the outbox and the outcome policy (retries,
//!     dead letters, breaker).
//!   - [`triggers::batch`], [`triggers::dwell`], [`triggers::schedule`]:
//!     the kinds; [`triggers::registry`]: every kind in one place.
//!   - [`triggers::state`]: the typed keys of a rule's durable state.
//!   - [`triggers::timers`]: the deadline index.
//! - [`tenants`]: tenants, hashed tokens, quotas.
//! - [`manifest`]: `rule.toml`, parsed strictly, with errors that name the
//!   line and field path.
//! - [`runtime`]: loads, validates, caches and runs components in a
//!   sandbox with per-call limits; the only place that touches wasmtime.
//!   - [`runtime::bindings`]: the one `bindgen!` site; the WIT types.
//!   - [`runtime::cache`], [`runtime::limits`]; `runtime/stdio.rs` carries
//!     guest output into the logs and keeps a handler call's last lines
//!     for its fire's record.
//! - [`log`]: the durable event log — group-committed ingest with dedupe
//!   and ingest stamps, queries, the feed, retention, the state store.
//!   - [`log::store`]: the storage traits; [`log::sqlite`] (embedded, one
//!     writing process), [`log::postgres`] (shared by several nodes, with
//!     their leases) and [`log::memory`] (an offline run's own log, gone
//!     with it).
//!   - [`log::validate`].
//! - [`crash`]: the crash points tests stop the process at (only in a
//!   build with the `failpoints` feature).
//! - [`event`], [`verdict`], [`records`], [`names`], [`time`], [`clock`]:
//!   the shared vocabulary — events, what a rule says of one, the engine's
//!   ids and records, the name rule, times, the engine clock.

#![deny(missing_docs)]

/// The engine's allocator, for every program that links it (the server,
/// the CLI, tests and benches alike). Rule cores, fire books and step
/// plans allocate and free many small records at a high rate; glibc's
/// allocator spent about a quarter of a timer-heavy step consolidating
/// and unlinking chunks (see "Dwell and schedule" in the README).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod api;
pub mod cli;
pub mod clock;
pub mod crash;
pub mod engine;
pub mod event;
pub mod log;
pub mod manifest;
pub mod names;
pub mod offline;
pub mod records;
pub mod replay;
pub mod runtime;
pub mod tenants;
pub mod time;
pub mod triggers;
pub mod verdict;
