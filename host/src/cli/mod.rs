//! The `sluice` command line. `main.rs` only calls [`main`].
//!
//! - [`client`]: how commands talk to a running `sluice serve`, and the
//!   commands that move data (`deploy`, `emit`, `tail`);
//! - [`admin`]: the commands that look after rules, fires, tenants and
//!   nodes;
//! - [`testing`]: `sluice test` for people (timeline, expectations,
//!   watch);
//! - [`replay`]: `sluice replay`, a deployed rule over the log's past;
//! - [`shadow`]: `sluice shadow`, a rule's next version beside it;
//! - [`scaffold`]: `sluice new` (a rule project from a template) and
//!   `sluice build` (its component, with the language's tools).
//!
//! Exit codes: 0 done; 1 a rule failed (`test`, `eval`); 2 a usage
//! error (a bad flag, a missing or malformed file); 3 the server refused
//! the request; 4 the server could not be reached.

pub mod admin;
pub mod client;
pub mod replay;
pub mod scaffold;
pub mod shadow;
pub mod testing;

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use serde_json::json;

use crate::clock::{Clock, SystemClock};
use crate::event::Event;
use crate::log::validate::{EventLimits, parse_event};
use crate::log::{AppendOutcome, Durability, EventLog, LogConfig, NewEvent, Store};
use crate::runtime::Verdict;
use crate::runtime::bindings::wit::{self, Reason};
use crate::runtime::{Limits, RuleLabel, Runtime, RuntimeConfig};

/// Sluice: a WebAssembly-scripted rules engine.
#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about,
    after_help = "Exit codes: 0 done; 1 a rule failed (test, eval); 2 a usage error (a bad flag, a missing or malformed file); 3 the server refused the request; 4 the server could not be reached."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: the HTTP API over one engine, for many tenants.
    /// Prints `listening on http://ADDR` once it accepts requests (and,
    /// on a first start without SLUICE_ADMIN_TOKEN, the generated admin
    /// token, once).
    Serve {
        #[command(flatten)]
        store: StoreArgs,
        /// The address to listen on.
        #[arg(long, default_value = "127.0.0.1:7878")]
        listen: String,
        /// On PostgreSQL: how long a rule's lease lasts without renewal
        /// (a killed node's rules move to another after about this).
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        lease_ttl: std::time::Duration,
        /// On PostgreSQL: the URL other nodes reach this one at (default:
        /// http:// and the listen address).
        #[arg(long, env = "SLUICE_ADVERTISE")]
        advertise: Option<String>,
        /// Where compiled components are cached (default: <db>.cache, or
        /// ./sluice.cache with --store).
        #[arg(long, env = "SLUICE_CACHE_DIR")]
        cache_dir: Option<PathBuf>,
        /// full (survives power loss) or normal (survives a process crash).
        #[arg(long, default_value = "full")]
        durability: Durability,
        /// Log lines as human text or as JSON.
        #[arg(long, default_value = "human", value_parser = ["human", "json"])]
        log_format: String,
        /// The feed's heartbeat interval.
        #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
        heartbeat: std::time::Duration,
        /// How long a shutdown waits for running handlers.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        shutdown_grace: std::time::Duration,
        /// The largest request body but deploys, in bytes.
        #[arg(long, default_value_t = 16 << 20)]
        max_body: usize,
        /// Run on a manual clock starting at this time (RFC 3339 or ms),
        /// moved with POST /v1/clock: for tests.
        #[arg(long)]
        manual_clock: Option<String>,
        /// Prune events older than this (never ones still held by open
        /// windows, memberships or pending fires). Default: keep all.
        #[arg(long, value_parser = humantime::parse_duration)]
        retain: Option<std::time::Duration>,
        /// Keep at most this many of the newest events (same exception).
        #[arg(long)]
        retain_events: Option<u64>,
        /// How often retention runs (with --retain or --retain-events).
        #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
        retain_every: std::time::Duration,
        /// How long an event id is remembered, so that a resend within it
        /// is a duplicate (kept as a small tombstone once retention has
        /// pruned the event).
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        dedupe_window: std::time::Duration,
        /// Serve /metrics (and /healthz) on this address instead of the
        /// API's: it names tenants and rules, so keep it private.
        #[arg(long, env = "SLUICE_METRICS_LISTEN")]
        metrics_listen: Option<String>,
        /// Ask scrapers for this bearer token on /metrics (the admin
        /// token is taken too).
        #[arg(long, env = "SLUICE_METRICS_TOKEN", hide_env_values = true)]
        metrics_token: Option<String>,
    },
    /// Deploy a rule to a server, or swap in a new version: DIR (with
    /// rule.toml and the component) or a .wasm with --manifest.
    Deploy {
        /// The rule's directory, or its component (.wasm).
        path: PathBuf,
        /// The manifest (default: rule.toml beside the component).
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// Drop the rule's state (needed to change its trigger kind).
        #[arg(long, conflicts_with = "shadow")]
        reset: bool,
        /// Run the version as the rule's shadow: beside the live version,
        /// on the same events, its outputs kept aside (see `sluice
        /// shadow`).
        #[arg(long)]
        shadow: bool,
        #[command(flatten)]
        conn: client::Conn,
    },
    /// A rule's shadow: show it, diff it with the live rule (exit 1 when
    /// they disagree), promote or discard it.
    Shadow {
        #[command(subcommand)]
        cmd: shadow::ShadowCmd,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: client::Conn,
    },
    /// Send one event, or NDJSON events from a file or stdin.
    Emit {
        #[command(flatten)]
        args: client::EmitArgs,
        #[command(flatten)]
        conn: client::Conn,
    },
    /// Replay a deployed rule over a range of the tenant's log: what it
    /// would have done (a dry run), or a backfill of its outputs (--emit).
    Replay {
        #[command(flatten)]
        args: replay::ReplayArgs,
        #[command(flatten)]
        conn: client::Conn,
    },
    /// Follow the tenant's feed: events, fires, outputs, errors.
    Tail {
        #[command(flatten)]
        args: client::TailArgs,
        #[command(flatten)]
        conn: client::Conn,
    },
    /// List, show, pause, resume or remove the tenant's rules.
    Rules {
        #[command(subcommand)]
        cmd: Option<admin::RulesCmd>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: client::Conn,
    },
    /// List pending fires and dead letters; re-drive or discard one.
    Fires {
        #[command(subcommand)]
        cmd: Option<admin::FiresCmd>,
        /// Only dead letters.
        #[arg(long)]
        dead: bool,
        /// Only this rule's.
        #[arg(long)]
        rule: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: client::Conn,
    },
    /// The nodes sharing a PostgreSQL store: heartbeats and the rules
    /// each runs (admin token).
    Cluster {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: client::Conn,
    },
    /// Manage tenants and their tokens (admin token); alone, list them.
    Tenants {
        #[command(subcommand)]
        cmd: Option<admin::TenantsCmd>,
        /// Print JSON (lists).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: client::Conn,
    },
    /// Run a rule's functions on events, without triggers or a server:
    /// select every event (filter, partition key, membership), then call the
    /// handler once per partition with the kept events. Prints JSON lines.
    Eval {
        /// The rule component (.wasm).
        rule: PathBuf,
        /// Events as NDJSON: {"source", "kind", "payload", "id"?, "time"?},
        /// checked as `ingest` checks them.
        #[arg(long)]
        events: PathBuf,
        /// The reason the handler is given: count-reached, window-expired,
        /// drained, schedule, or dwell:<label>.
        #[arg(long, default_value = "drained")]
        reason: String,
        /// Where compiled components are cached.
        #[arg(long, env = "SLUICE_CACHE_DIR")]
        cache_dir: Option<PathBuf>,
    },
    /// Run a rule offline on a virtual clock with the real log, rule core
    /// and fire pipeline: events, or directives ({"advance": "10m" |
    /// "<time>"}, {"pause": "<rule>"}, {"resume": "<rule>"}, {"down":
    /// "2h"}), in; a timeline (on a terminal) or one JSON line per fire,
    /// output, discard, error, leave, skipped or missed tick out. Exits 1
    /// when a handler failed, or with --expect when the run differs.
    Test(testing::TestArgs),
    /// Write a new rule project from a template: the manifest, the source
    /// in the language's idiom, the SDK, sample events, a scenario with
    /// its expected report, and a README.
    New(scaffold::NewArgs),
    /// Build a rule project into its component with the language's own
    /// tools (cargo, componentize-py, componentize-js, clang), saying how
    /// to install what is missing.
    Build(scaffold::BuildArgs),
    /// Run batch rules against a log database on the real clock, while
    /// ingesting NDJSON events from stdin (acknowledged on stdout once
    /// committed, as with `ingest`).
    Run {
        #[command(flatten)]
        store: StoreArgs,
        /// The tenant of the events and rules.
        #[arg(long, default_value = "default")]
        tenant: String,
        /// A rule as MANIFEST=COMPONENT (repeat for more rules).
        #[arg(long = "rule", required = true)]
        rules: Vec<String>,
        /// Lines per commit.
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// full (survives power loss) or normal (survives a process crash).
        #[arg(long, default_value = "full")]
        durability: Durability,
        /// After stdin ends, exit once every rule has caught up and run its
        /// fires (otherwise run until interrupted).
        #[arg(long)]
        exit_when_idle: bool,
        /// Where compiled components are cached.
        #[arg(long, env = "SLUICE_CACHE_DIR")]
        cache_dir: Option<PathBuf>,
    },
    /// Append NDJSON events from stdin to a log database. Each event is
    /// acknowledged on stdout — {"line", "seq", "outcome", "id"} — once its
    /// batch is committed. A bad line stops the import with an error naming
    /// it; everything acknowledged before stays.
    Ingest {
        #[command(flatten)]
        store: StoreArgs,
        /// The tenant the events belong to.
        #[arg(long, default_value = "default")]
        tenant: String,
        /// Lines per commit.
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// full (survives power loss) or normal (survives a process crash).
        #[arg(long, default_value = "full")]
        durability: Durability,
    },
}

/// Where a command keeps its log: an SQLite file by default, or the store
/// `--store` (or `SLUICE_STORE`) names.
#[derive(Debug, Clone, clap::Args)]
struct StoreArgs {
    /// The SQLite database file.
    #[arg(long, default_value = "sluice.db")]
    db: PathBuf,
    /// The store instead of --db: a postgres:// URL (PostgreSQL) or a
    /// file path (SQLite).
    #[arg(long, env = "SLUICE_STORE", conflicts_with = "db")]
    store: Option<String>,
}

impl StoreArgs {
    fn store(&self) -> Result<Store, String> {
        match &self.store {
            Some(spec) => Store::parse(spec).map_err(|e| format!("--store: {e}")),
            None => Ok(Store::Sqlite(self.db.clone())),
        }
    }
}

/// Run the command line; the process exit code is the result.
pub fn main() -> ExitCode {
    crate::crash::arm_from_env();
    let cli = Cli::parse();
    let json_logs =
        matches!(&cli.command, Command::Serve { log_format, .. } if log_format == "json");
    init_tracing(json_logs);
    let result = match cli.command {
        Command::Serve {
            store,
            listen,
            lease_ttl,
            advertise,
            cache_dir,
            durability,
            log_format: _,
            heartbeat,
            shutdown_grace,
            max_body,
            manual_clock,
            retain,
            metrics_listen,
            metrics_token,
            retain_events,
            retain_every,
            dedupe_window,
        } => serve(crate::api::ServerConfig {
            retention: (retain.is_some() || retain_events.is_some()).then_some(
                crate::log::RetentionPolicy {
                    max_age: retain,
                    max_events: retain_events,
                },
            ),
            retention_every: retain_every,
            dedupe_window,
            store: match store.store() {
                Ok(store) => store,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            },
            listen,
            metrics_listen,
            metrics_token: metrics_token.filter(|t| !t.trim().is_empty()),
            lease_ttl,
            advertise,
            cache_dir,
            durability,
            heartbeat,
            shutdown_grace,
            max_body_bytes: max_body,
            manual_clock: match manual_clock {
                Some(t) => match crate::time::parse(&t) {
                    Ok(ms) => Some(ms),
                    Err(e) => {
                        eprintln!("error: --manual-clock: {e}");
                        return ExitCode::from(2);
                    }
                },
                None => None,
            },
            ..crate::api::ServerConfig::default()
        }),
        Command::Deploy {
            path,
            manifest,
            reset,
            shadow,
            conn,
        } => client::deploy(&conn, &path, manifest.as_deref(), reset, shadow)
            .map(|()| ExitCode::SUCCESS),
        Command::Shadow { cmd, json, conn } => shadow::shadow(&conn, &cmd, json),
        Command::Emit { args, conn } => client::emit(&conn, &args).map(|()| ExitCode::SUCCESS),
        Command::Tail { args, conn } => client::tail(&conn, &args).map(|()| ExitCode::SUCCESS),
        Command::Replay { args, conn } => replay::replay(&conn, &args).map(|()| ExitCode::SUCCESS),
        Command::Rules { cmd, json, conn } => {
            admin::rules(&conn, cmd.as_ref(), json).map(|()| ExitCode::SUCCESS)
        }
        Command::Fires {
            cmd,
            dead,
            rule,
            json,
            conn,
        } => admin::fires(&conn, cmd.as_ref(), dead, rule.as_deref(), json)
            .map(|()| ExitCode::SUCCESS),
        Command::Tenants { cmd, json, conn } => {
            admin::tenants(&conn, cmd.as_ref(), json).map(|()| ExitCode::SUCCESS)
        }
        Command::Cluster { json, conn } => admin::cluster(&conn, json).map(|()| ExitCode::SUCCESS),
        Command::Eval {
            rule,
            events,
            reason,
            cache_dir,
        } => eval(&rule, &events, &reason, cache_dir),
        Command::Ingest {
            store,
            tenant,
            batch,
            durability,
        } => match store.store() {
            Ok(store) => ingest(&store, &tenant, batch.max(1), durability),
            Err(e) => Err(anyhow::anyhow!(e)),
        },
        Command::Test(args) => testing::test(&args),
        Command::New(args) => scaffold::new(&args),
        Command::Build(args) => scaffold::build_command(&args),
        Command::Run {
            store,
            tenant,
            rules,
            batch,
            durability,
            exit_when_idle,
            cache_dir,
        } => run(RunArgs {
            store,
            tenant,
            rules,
            batch: batch.max(1),
            durability,
            exit_when_idle,
            cache_dir,
        }),
    };
    match result {
        Ok(code) => code,
        // 1 is for a rule that failed; 3 and 4 for a server that refused
        // or was not there; 2 for everything else that kept the command
        // from doing its work.
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(client::Failure::exit_code(&e))
        }
    }
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

fn serve(config: crate::api::ServerConfig) -> anyhow::Result<ExitCode> {
    let tokio = tokio::runtime::Runtime::new()?;
    tokio.block_on(crate::api::serve(config, |addr, admin| {
        if let Some(token) = admin {
            println!("admin token (shown once; stored hashed): {token}");
        }
        println!("listening on http://{addr}");
        let _ = std::io::stdout().flush();
    }))?;
    Ok(ExitCode::SUCCESS)
}

/// NDJSON events read from `input`, numbered by line and checked exactly
/// as `sluice ingest` checks them ([`parse_event`]); blank lines are
/// skipped. The input is read as bytes, so a line that is not UTF-8 is a
/// bad line like any other: an error naming it, after which the iteration
/// ends.
struct EventLines<R> {
    input: R,
    tenant: String,
    limits: EventLimits,
    /// The number of the line last read (1-based).
    line: usize,
    buf: Vec<u8>,
    done: bool,
}

impl<R: BufRead> EventLines<R> {
    fn new(input: R, tenant: &str) -> Self {
        Self {
            input,
            tenant: tenant.to_owned(),
            limits: EventLimits::default(),
            line: 0,
            buf: Vec::new(),
            done: false,
        }
    }

    /// The event on the line in `buf`, or `None` for a blank line.
    fn parse(&self) -> anyhow::Result<Option<NewEvent>> {
        let bytes = self.buf.strip_suffix(b"\n").unwrap_or(&self.buf);
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        let text = std::str::from_utf8(bytes).map_err(|e| {
            anyhow::anyhow!(
                "line {}: not valid UTF-8 (byte {} of the line); events are JSON text in UTF-8",
                self.line,
                e.valid_up_to() + 1
            )
        })?;
        if text.trim().is_empty() {
            return Ok(None);
        }
        let event = parse_event(&self.tenant, text, &self.limits).map_err(|mut e| {
            e.line = Some(self.line);
            e
        })?;
        Ok(Some(event))
    }
}

impl<R: BufRead> Iterator for EventLines<R> {
    type Item = anyhow::Result<(usize, NewEvent)>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            self.buf.clear();
            let read = match self.input.read_until(b'\n', &mut self.buf) {
                Ok(read) => read,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.done = true;
                    let line = self.line + 1;
                    return Some(Err(
                        anyhow::Error::new(e).context(format!("read line {line}"))
                    ));
                }
            };
            if read == 0 {
                self.done = true;
                break;
            }
            self.line += 1;
            match self.parse() {
                Ok(None) => {}
                Ok(Some(event)) => return Some(Ok((self.line, event))),
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        None
    }
}

/// Read an NDJSON events file, checked as `sluice ingest` checks events;
/// errors name the file and the line.
fn read_events(path: &Path, now: i64) -> anyhow::Result<Vec<Event>> {
    let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut events = Vec::new();
    for item in EventLines::new(std::io::BufReader::new(file), "local") {
        let (_, event) = item.with_context(|| path.display().to_string())?;
        let seq = events.len() as u64 + 1;
        events.push(Event {
            seq,
            id: event.id.unwrap_or_else(|| format!("ev-{seq}")),
            tenant: event.tenant,
            source: event.source,
            kind: event.kind,
            time: event.time.unwrap_or(now),
            ingested: event.time.unwrap_or(now),
            payload: event.payload,
            hops: 0,
        });
    }
    Ok(events)
}

/// The handler's reason; a dwell reason's `member_since` is the time of the
/// partition's last event.
fn parse_reason(reason: &str, now: i64, events: &[Event]) -> anyhow::Result<Reason> {
    Ok(match reason {
        "count-reached" => Reason::CountReached,
        "window-expired" => Reason::WindowExpired,
        "drained" => Reason::Drained,
        "schedule" => Reason::Schedule(wit::ScheduleReason {
            tick: now,
            catch_up: false,
        }),
        other => match other.strip_prefix("dwell:") {
            Some(label) if !label.is_empty() => Reason::Dwell(wit::DwellReason {
                label: label.into(),
                ordinal: 0,
                member_since: events.last().map_or(now, |e| e.time),
                epoch: 1,
            }),
            _ => bail!(
                "--reason {other:?}: expected count-reached, window-expired, drained, schedule or dwell:<label>"
            ),
        },
    })
}

/// A reason as the WIT spells it (`count-reached`, `{"dwell": {…}}`, …).
fn reason_json(reason: &Reason) -> serde_json::Value {
    match reason {
        Reason::CountReached => json!("count-reached"),
        Reason::WindowExpired => json!("window-expired"),
        Reason::Drained => json!("drained"),
        Reason::Dwell(d) => json!({"dwell": {"label": d.label, "ordinal": d.ordinal,
            "member-since": d.member_since, "epoch": d.epoch}}),
        Reason::Schedule(s) => json!({"schedule": {"tick": s.tick, "catch-up": s.catch_up}}),
    }
}

fn eval(
    rule_path: &Path,
    events_path: &Path,
    reason: &str,
    cache_dir: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let clock = Arc::new(SystemClock);
    let now = clock.now_millis();
    let events = read_events(events_path, now)?;
    // Reject a bad --reason before doing any work.
    parse_reason(reason, now, &[])?;
    let bytes =
        std::fs::read(rule_path).with_context(|| format!("read {}", rule_path.display()))?;
    let name = rule_path
        .file_stem()
        .map_or_else(|| "rule".into(), |s| s.to_string_lossy().into_owned());
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir,
        clock,
        ..RuntimeConfig::default()
    })?;
    let rule = runtime
        .load(RuleLabel::new("local", &name), &bytes, Limits::default())
        .with_context(|| format!("load {}", rule_path.display()))?;
    let mut instance = rule.instance();

    let mut out = std::io::stdout().lock();
    let verdicts = match instance.select(&events) {
        Ok(v) => v,
        Err(e) => {
            writeln!(
                out,
                "{}",
                json!({"type": "error", "message": e.to_string()})
            )?;
            return Ok(ExitCode::FAILURE);
        }
    };
    // Partitions in order of first appearance.
    let mut order: Vec<Option<String>> = Vec::new();
    let mut groups: BTreeMap<Option<String>, Vec<Event>> = BTreeMap::new();
    for (event, verdict) in events.iter().zip(&verdicts) {
        let line = match verdict {
            Verdict::Skip => json!({"type": "skip", "seq": event.seq, "kind": event.kind}),
            Verdict::Keep(p) => {
                if !groups.contains_key(&p.partition) {
                    order.push(p.partition.clone());
                }
                groups
                    .entry(p.partition.clone())
                    .or_default()
                    .push(event.clone());
                json!({"type": "keep", "seq": event.seq, "kind": event.kind,
                       "partition": p.partition, "membership": p.membership.name()})
            }
        };
        writeln!(out, "{line}")?;
    }
    let mut failed = false;
    for partition in order {
        let events = groups.remove(&partition).unwrap_or_default();
        let batch = wit::Batch {
            fire_id: format!("eval:{name}:{}", partition.as_deref().unwrap_or("")),
            rule: name.clone(),
            partition: partition.clone(),
            reason: parse_reason(reason, now, &events)?,
            attempt: 1,
            events: crate::runtime::event_pack(&events).map_err(anyhow::Error::msg)?,
        };
        let seqs: Vec<u64> = batch.events.seqs.clone();
        writeln!(
            out,
            "{}",
            json!({"type": "fire", "fire_id": batch.fire_id, "partition": partition,
                   "reason": reason_json(&batch.reason), "events": seqs})
        )?;
        match instance.handle_batch(&batch) {
            Ok(emits) => {
                for emit in emits {
                    let payload: serde_json::Value = serde_json::from_str(&emit.payload)?;
                    writeln!(
                        out,
                        "{}",
                        json!({"type": "output", "fire_id": batch.fire_id,
                               "kind": emit.kind, "payload": payload})
                    )?;
                }
            }
            Err(e) => {
                failed = true;
                writeln!(
                    out,
                    "{}",
                    json!({"type": "error", "fire_id": batch.fire_id, "message": e.to_string()})
                )?;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn ingest(
    store: &Store,
    tenant: &str,
    batch: usize,
    durability: Durability,
) -> anyhow::Result<ExitCode> {
    let log = EventLog::open_store(
        store,
        durability,
        LogConfig::default(),
        Arc::new(SystemClock),
    )
    .with_context(|| format!("open {store}"))?;
    pump_stdin(&log, tenant, batch)?;
    log.close();
    Ok(ExitCode::SUCCESS)
}

/// Append NDJSON events from stdin in commits of `batch` lines, printing
/// one acknowledgement per event after its commit (with the id the log
/// stored, generated when the event had none). A bad line — not UTF-8, not
/// a valid event — ends the import with an error naming it, once the good
/// lines before it are committed and acknowledged.
fn pump_stdin(log: &EventLog, tenant: &str, batch: usize) -> anyhow::Result<()> {
    /// Commits in flight at once: the next batch is read and checked while
    /// earlier ones commit.
    const IN_FLIGHT: usize = 4;
    // Acknowledgements are printed by a thread of their own, in order, as
    // soon as each commit is done (also while stdin has nothing new).
    let (tx, rx) =
        std::sync::mpsc::sync_channel::<(Vec<usize>, crate::log::PendingAppend)>(IN_FLIGHT);
    let printer = std::thread::spawn(move || -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        for (lines, sent) in rx {
            let report = sent.wait()?;
            for ((line, id), outcome) in lines.into_iter().zip(report.ids).zip(report.outcomes) {
                let (seq, outcome) = match outcome {
                    AppendOutcome::Accepted(s) => (s, "accepted"),
                    AppendOutcome::Duplicate(s) => (s, "duplicate"),
                };
                writeln!(
                    out,
                    "{}",
                    json!({"line": line, "seq": seq, "outcome": outcome, "id": id})
                )?;
            }
            out.flush()?;
        }
        Ok(())
    });
    let mut pending: Vec<(usize, NewEvent)> = Vec::with_capacity(batch);
    let send = |pending: &mut Vec<(usize, NewEvent)>| -> anyhow::Result<bool> {
        if pending.is_empty() {
            return Ok(true);
        }
        let (lines, events): (Vec<usize>, Vec<NewEvent>) = pending.drain(..).unzip();
        // A closed channel: the printer stopped on an error, reported below.
        Ok(tx.send((lines, log.append_nowait(events)?)).is_ok())
    };
    let mut failure = None;
    for item in EventLines::new(std::io::stdin().lock(), tenant) {
        match item {
            Ok(line_and_event) => pending.push(line_and_event),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
        if pending.len() >= batch && !send(&mut pending)? {
            break;
        }
    }
    send(&mut pending)?;
    drop(tx);
    printer
        .join()
        .map_err(|_| anyhow::anyhow!("the acknowledgement printer panicked"))??;
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

struct RunArgs {
    store: StoreArgs,
    tenant: String,
    rules: Vec<String>,
    batch: usize,
    durability: Durability,
    exit_when_idle: bool,
    cache_dir: Option<PathBuf>,
}

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    // Everything about the rules is checked before the database is touched.
    let mut rules = Vec::new();
    let mut names = Vec::new();
    for spec in &args.rules {
        let (manifest_path, component_path) = spec
            .split_once('=')
            .with_context(|| format!("--rule {spec:?}: expected MANIFEST=COMPONENT"))?;
        let (bytes, manifest) = read_rule(Path::new(manifest_path), Path::new(component_path))?;
        if names.contains(&manifest.name) {
            bail!(
                "{manifest_path}: two rules are named {:?}: a rule's name is its identity; rename one",
                manifest.name
            );
        }
        names.push(manifest.name.clone());
        rules.push((component_path.to_owned(), bytes, manifest));
    }
    let clock: crate::clock::SharedClock = Arc::new(SystemClock);
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: args.cache_dir.clone(),
        clock: clock.clone(),
        ..RuntimeConfig::default()
    })?;
    let mut loaded = Vec::new();
    for (component_path, bytes, manifest) in &rules {
        loaded.push(
            crate::engine::rule::Deployable::load(&runtime, &args.tenant, bytes, manifest)
                .with_context(|| format!("load {component_path}"))?,
        );
    }
    let store = args.store.store().map_err(|e| anyhow::anyhow!(e))?;
    if matches!(store, Store::Postgres(_)) {
        bail!(
            "sluice run owns every rule it runs, which a PostgreSQL store shares between \
             nodes: run rules there with sluice serve --store (sluice ingest works on either)"
        );
    }
    let log = EventLog::open_store(&store, args.durability, LogConfig::default(), clock.clone())
        .with_context(|| format!("open {store}"))?;
    let tokio = tokio::runtime::Runtime::new()?;
    let _guard = tokio.enter();
    let engine = crate::engine::Engine::new(log.clone(), clock);
    for rule in loaded {
        tokio.block_on(engine.deploy(rule))?;
    }
    // SIGINT or SIGTERM stops the run, also while stdin is still open:
    // the handlers are installed before anything is read (an inherited
    // "ignore SIGINT" does not keep a run from stopping).
    let mut stop = Box::pin(crate::api::signals()?);
    // The engine's tasks run on the Tokio runtime's threads meanwhile;
    // stdin is read on a thread of its own.
    let (done, pumped) = tokio::sync::oneshot::channel();
    let (pump_log, tenant, batch) = (log.clone(), args.tenant.clone(), args.batch);
    std::thread::spawn(move || {
        let _ = done.send(pump_stdin(&pump_log, &tenant, batch));
    });
    let interrupted = tokio.block_on(async {
        tokio::select! {
            pumped = pumped => pumped.map_err(|_| anyhow::anyhow!("reading stdin stopped")).and_then(|r| r).map(|()| false),
            () = &mut stop => Ok(true),
        }
    })?;
    if interrupted {
        // What was read and not yet committed is not acknowledged.
    } else if args.exit_when_idle {
        // Idle: every rule has read the whole log and has no fire left,
        // twice in a row.
        let mut quiet = 0;
        while quiet < 2 {
            std::thread::sleep(std::time::Duration::from_millis(50));
            let last = log.last_seq();
            let idle = names.iter().all(|n| {
                engine
                    .status(&args.tenant, n)
                    .is_some_and(|s| s.cursor >= last && s.pending_fires == 0)
            });
            quiet = if idle { quiet + 1 } else { 0 };
        }
    } else {
        tokio.block_on(stop);
    }
    tokio.block_on(engine.shutdown());
    log.close();
    Ok(ExitCode::SUCCESS)
}

/// Read a manifest and its component; errors name the file.
pub(crate) fn read_rule(
    manifest_path: &Path,
    component: &Path,
) -> anyhow::Result<(Vec<u8>, crate::manifest::Manifest)> {
    let text = std::fs::read_to_string(manifest_path)
        .with_context(|| format!("read {}", manifest_path.display()))?;
    let manifest = crate::manifest::Manifest::parse(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", manifest_path.display()))?;
    let bytes =
        std::fs::read(component).with_context(|| format!("read {}", component.display()))?;
    Ok((bytes, manifest))
}
