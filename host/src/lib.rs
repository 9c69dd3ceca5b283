//! Sluice: a WebAssembly-scripted rules engine.
//!
//! The host owns the stateful machinery (event log, trigger state, timers,
//! retries, tenants, limits); user-supplied Wasm components implementing the
//! `sluice:rule` world (see `wit/rule.wit`) decide which events matter, how
//! they group and what happens when a group is ready.
//!
//! Data flows one way: ingest → log → rule core (`select`, the kind's
//! state machine) → fire outbox → handler → outputs back into the log.
//!
//! # Layout
//!
//! - [`api`]: `sluice serve` — the HTTP API over one engine for many
//!   tenants: tokens and quotas, deploys and hot swaps, ingest, the SSE
//!   feed, fires, metrics, a generated OpenAPI document.
//!   - [`api::tenants`]: tenants, hashed tokens, quotas, authentication.
//!   - [`api::rules`], [`api::events`], [`api::fires`], [`api::feed`],
//!     [`api::metrics`], [`api::openapi`], [`api::error`].
//! - [`clock`]: the engine clock — real in production, manual in tests.
//! - [`engine`]: runs deployed rules — a task per rule, with a control
//!   channel (pause, resume, re-drive, stop-and-join), woken by commits,
//!   the engine clock, finished fires and requests.
//!   - [`engine::driver`]: the one order of a rule's work at a given time,
//!     shared by the engine and `sluice test`.
//!   - [`engine::rule`]: a manifest and component made into a runnable
//!     core of its kind.
//!   - [`engine::registry`]: which rules a server runs (manifest and
//!     component per tenant and name), kept beside their state.
//! - [`event`]: the event record shared by every part of the engine.
//! - [`log`]: the durable event log — group-committed ingest with dedupe,
//!   queries (by seq too), the live feed, retention, one writing process
//!   per database.
//!   - [`log::validate`]: checks incoming events; errors name the field.
//!   - [`log::store`]: the storage traits a backend implements.
//!   - [`log::sqlite`]: the embedded SQLite backend (WAL, one file).
//! - [`manifest`]: `rule.toml` — name, version, trigger, limits, retry,
//!   concurrency, output hops, poison policy — parsed strictly, with errors
//!   that name the line and field path.
//! - [`runtime`]: loads, validates, caches and runs rule components in a
//!   sandbox with per-call limits; the only place that touches wasmtime.
//!   - [`runtime::bindings`]: the one `bindgen!` site; the WIT types.
//!   - [`runtime::cache`]: on-disk cache of compiled components.
//!   - [`runtime::limits`]: per-call limits and the memory limiter.
//!   - [`runtime::stdio`]: guest stdout/stderr and `log` into `tracing`.
//! - [`triggers`]: one core for every trigger kind; a kind is its state
//!   machine ([`triggers::Kind`]).
//!   - [`triggers::core`]: the cursor, `select` with poison isolation,
//!     partition state, steps committed in one transaction.
//!   - [`triggers::fires`]: the fire pipeline — outbox, retries, dead
//!     letters, breaker.
//!   - [`triggers::batch`]: aggregation windows — where a batch fires.
//!   - [`triggers::dwell`]: memberships and their reactions (`after`,
//!     `every`, `max_dwell`).
//!   - [`triggers::schedule`]: cron ticks (time zones, DST, catch-up,
//!     overlap) handing each partition its events since the last tick.
//!   - [`triggers::state`]: typed keys of a rule's durable state.
//!   - [`triggers::timers`]: which deadline is due next.
//! - [`offline`]: `sluice test` — rules against recorded events on a
//!   virtual clock through the engine's driver, streamed as JSON lines.
//! - [`cli`]: the `sluice` command line (the binary is a thin shell).
//!   - [`cli::client`]: the commands that talk to a running server
//!     (`deploy`, `emit`, `tail`, `rules`, `fires`, `tenants`).

#![deny(missing_docs)]

pub mod api;
pub mod cli;
pub mod clock;
pub mod engine;
pub mod event;
pub mod log;
pub mod manifest;
pub mod offline;
pub mod records;
pub mod runtime;
pub mod triggers;
pub mod verdict;
