//! Loads, validates, caches and runs rule components.
//!
//! A [`Runtime`] owns one wasmtime engine and its linker. [`Runtime::load`]
//! turns component bytes into a [`LoadedRule`]: compiled (through the
//! on-disk [`cache`]), checked against the `sluice:rule` world, and
//! pre-instantiated. A [`RuleInstance`] runs calls against a live instance
//! of a loaded rule under the rule's [`Limits`]:
//!
//! - fuel and a wall-clock deadline (epoch interruption) per call;
//! - a linear-memory cap (a resource limiter);
//! - caps on what a call returns (verdicts, emitted events and bytes).
//!
//! A call that traps, times out, exhausts memory or returns garbage fails
//! with a [`CallError`] carrying the guest backtrace; its instance is
//! discarded and the next call gets a fresh one. Handler calls always run
//! on a fresh instance, so no state leaks from one fire into another.
//!
//! Guests get an empty WASI context: no preopened directories, no network,
//! no environment or arguments, no stdin. Clocks read the engine clock, so
//! a rule under a manual clock is deterministic. Stdout and stderr become
//! `tracing` events (see [`stdio`]).

pub mod bindings;
pub mod cache;
pub mod limits;
pub(crate) mod stdio;

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap, WasmBacktrace,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use self::bindings::wit::{self, Emit, RuleError};
use self::bindings::{Rule, RuleIndices, RulePre, wit_host};
pub use self::cache::{CacheOutcome, CompileCache};
pub use self::limits::Limits;
use self::limits::MemoryLimiter;
use self::stdio::{GuestOutput, Stream};
use crate::clock::{SharedClock, SystemClock};
use crate::event::Event;
use crate::verdict::Membership;

/// The exports a component must have to implement the `rule` world.
pub const REQUIRED_EXPORTS: [&str; 5] = [
    "filter",
    "partition-key",
    "membership",
    "select",
    "handle-batch",
];

/// The interface a component of the world `projected-rule` exports: its
/// `select` takes parsed payload fields.
pub const PROJECTION_INTERFACE: &str = "sluice:rule/projection@0.1.0";

/// How calls to the projection's `select` are named in errors.
pub const PROJECTED_EXPORT: &str = "projection.select";

/// Most events packed into one `select` call; larger inputs are split.
const SELECT_CHUNK_EVENTS: usize = 1_024;

/// Longest event kind a handler may emit, in bytes.
const MAX_EMIT_KIND: usize = 256;

/// Names a rule in logs and errors: `tenant/rule`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RuleLabel {
    /// The owning tenant.
    pub tenant: Arc<str>,
    /// The rule name (with version when known, e.g. `pr-digest@3`).
    pub rule: Arc<str>,
}

impl RuleLabel {
    /// A label for `rule` of `tenant`.
    pub fn new(tenant: &str, rule: &str) -> Self {
        Self {
            tenant: tenant.into(),
            rule: rule.into(),
        }
    }
}

impl fmt::Display for RuleLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant, self.rule)
    }
}

pub use crate::verdict::{Placement, Verdict};

/// The engine's name for a WIT membership.
fn membership(m: wit::Membership) -> Membership {
    match m {
        wit::Membership::Enter => Membership::Enter,
        wit::Membership::Leave => Membership::Leave,
        wit::Membership::Refresh => Membership::Refresh,
        wit::Membership::Ignore => Membership::Ignore,
    }
}

/// How the engine allocates instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolingConfig {
    /// Component instances that may be live at once (across all rules).
    pub max_instances: u32,
    /// Core instances (and memories, tables) per component instance; a
    /// componentized Python or JavaScript rule needs several.
    pub core_per_component: u32,
}

impl Default for PoolingConfig {
    fn default() -> Self {
        Self {
            max_instances: 256,
            core_per_component: 8,
        }
    }
}

/// Engine-wide settings. Per-rule settings are [`Limits`].
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where compiled components are cached; `None` compiles every load.
    pub cache_dir: Option<PathBuf>,
    /// Meter fuel (a per-call instruction budget). Off only for measuring
    /// its overhead.
    pub fuel: bool,
    /// Enforce per-call wall-clock deadlines by epoch interruption. Off only
    /// for measuring its overhead.
    pub deadlines: bool,
    /// Granularity of deadlines: a call overruns its deadline by at most
    /// about one tick.
    pub epoch_tick: Duration,
    /// Pre-reserve instance slots (faster instantiation, fixed capacity);
    /// `None` allocates on demand, which scales to any number of rules.
    pub pooling: Option<PoolingConfig>,
    /// No rule may ask for more linear memory than this.
    pub max_memory_bytes: u64,
    /// The clock guests see through `now` and WASI clocks.
    pub clock: SharedClock,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            cache_dir: None,
            fuel: true,
            deadlines: true,
            epoch_tick: Duration::from_millis(5),
            pooling: None,
            max_memory_bytes: 1 << 30,
            clock: Arc::new(SystemClock),
        }
    }
}

/// Why a component could not be loaded as a rule.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The bytes are not a valid Wasm component.
    #[error("not a valid Wasm component: {0}")]
    Compile(String),
    /// The component lacks exports of the `rule` world.
    #[error(
        "component does not implement world sluice:rule/rule@0.1.0: missing export(s) {} (it exports: {})",
        list(missing),
        list(found)
    )]
    MissingExports {
        /// The required exports that are absent.
        missing: Vec<String>,
        /// What the component does export.
        found: Vec<String>,
    },
    /// An export exists with the wrong signature.
    #[error("component does not implement world sluice:rule/rule@0.1.0: {0}")]
    WrongExportType(String),
    /// The component imports something rules may not use.
    #[error("component imports {}, which rules may not use (allowed: sluice:rule/*, and wasi:cli, wasi:clocks, wasi:filesystem, wasi:io, wasi:random, wasi:sockets with an empty, capability-free context)", list(.0))]
    UnsupportedImport(Vec<String>),
    /// The linker could not satisfy the component's imports.
    #[error("component imports cannot be satisfied: {0}")]
    Link(String),
    /// The rule's limits are outside what this engine allows.
    #[error("limits: {0}")]
    Limits(String),
    /// The manifest declares `[select] fields` but the component cannot
    /// take them.
    #[error(
        "the manifest declares [select] fields ({}), but the component does not export the interface sluice:rule/projection: build it against the world sluice:rule/projected-rule@0.1.0 (the Rust SDK does), or remove `fields`",
        list(.0)
    )]
    NoProjection(Vec<String>),
    /// `projection.select` exists with the wrong signature.
    #[error("component does not implement world sluice:rule/projected-rule@0.1.0: {0}")]
    WrongProjectionType(String),
}

/// Bytes that are plainly not a component, said in one sentence before
/// the compiler sees them: text (a manifest or WAT uploaded by mistake),
/// or a core module.
fn not_a_component(bytes: &[u8]) -> Result<(), LoadError> {
    const MAGIC: &[u8] = b"\0asm";
    if bytes.is_empty() {
        return Err(LoadError::Compile("the file is empty".into()));
    }
    if !bytes.starts_with(MAGIC) {
        let text = std::str::from_utf8(&bytes[..bytes.len().min(512)]).is_ok();
        return Err(LoadError::Compile(if text {
            "the file is text, not Wasm (it does not start with \\0asm): a manifest or source file sent as the component?".into()
        } else {
            "the file does not start with the Wasm magic bytes \\0asm".into()
        }));
    }
    // Bytes 4..8: version 1 is a core module, 0x0d 0x00 0x01 0x00 a component.
    if bytes.get(4..8) == Some(&[1, 0, 0, 0]) {
        return Err(LoadError::Compile(
            "this is a core Wasm module, not a component: build for wasm32-wasip2, or wrap it with `wasm-tools component new`".into(),
        ));
    }
    Ok(())
}

/// A compiler error on one line (some quote the input over several).
fn one_line(message: &str) -> String {
    let joined: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let text = joined.join(" ");
    match text.char_indices().nth(400) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        return "nothing".into();
    }
    items
        .iter()
        .map(|s| format!("`{s}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What went wrong in one call into a rule.
#[derive(Debug, Clone, PartialEq)]
pub enum CallErrorKind {
    /// The call used up its fuel.
    OutOfFuel {
        /// The per-call budget.
        fuel: u64,
    },
    /// The call overran its wall-clock deadline.
    Timeout {
        /// The per-call deadline.
        deadline: Duration,
    },
    /// The guest tried to grow its memory beyond the cap.
    MemoryLimit {
        /// The cap, in bytes.
        limit: u64,
        /// The size the guest asked for, in bytes.
        requested: u64,
    },
    /// The guest trapped (a panic, an `unreachable`, a bad access…).
    Trap {
        /// The trap, as wasmtime words it.
        message: String,
    },
    /// The guest returned something the engine will not accept: too much,
    /// too large, or malformed.
    Output {
        /// What was wrong.
        problem: String,
    },
    /// The engine will not make the call: the input breaks a limit.
    Input {
        /// What was wrong.
        problem: String,
    },
    /// The handler returned an error of its own.
    Rule(RuleError),
}

/// A failed call into a rule, with the guest's backtrace and last stderr
/// lines when there are any. Boxed, so that `Result<_, CallError>` stays
/// small on the hot path; its fields are reached through `Deref`.
#[derive(Debug, Clone, PartialEq)]
pub struct CallError(Box<CallErrorDetail>);

/// The contents of a [`CallError`].
#[derive(Debug, Clone, PartialEq)]
pub struct CallErrorDetail {
    /// The rule called.
    pub rule: RuleLabel,
    /// The export called (`select`, `handle-batch`, …) or `instantiate`.
    pub export: &'static str,
    /// What went wrong.
    pub kind: CallErrorKind,
    /// The guest backtrace, when the call trapped.
    pub backtrace: Option<String>,
    /// The last lines the guest wrote to stderr during the call.
    pub stderr: Vec<String>,
}

impl std::ops::Deref for CallError {
    type Target = CallErrorDetail;

    fn deref(&self) -> &CallErrorDetail {
        &self.0
    }
}

impl From<CallErrorDetail> for CallError {
    fn from(detail: CallErrorDetail) -> Self {
        Self(Box::new(detail))
    }
}

impl CallError {
    /// True when the guest itself asked not to be retried.
    pub fn is_fatal(&self) -> bool {
        matches!(self.kind, CallErrorKind::Rule(RuleError::Fatal(_)))
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rule {}: {}: ", self.rule, self.export)?;
        match &self.kind {
            CallErrorKind::OutOfFuel { fuel } => write!(f, "ran out of fuel ({fuel} units)")?,
            CallErrorKind::Timeout { deadline } => {
                write!(f, "exceeded its deadline of {deadline:?}")?
            }
            CallErrorKind::MemoryLimit { limit, requested } => write!(
                f,
                "exceeded its memory limit of {limit} bytes (asked for {requested})"
            )?,
            CallErrorKind::Trap { message } => write!(f, "trapped: {message}")?,
            CallErrorKind::Output { problem } => write!(f, "invalid output: {problem}")?,
            CallErrorKind::Input { problem } => write!(f, "refused: {problem}")?,
            CallErrorKind::Rule(RuleError::Retryable(m)) => write!(f, "retryable error: {m}")?,
            CallErrorKind::Rule(RuleError::Fatal(m)) => write!(f, "fatal error: {m}")?,
        }
        if !self.stderr.is_empty() {
            write!(f, "\nguest stderr:")?;
            for line in &self.stderr {
                write!(f, "\n    {line}")?;
            }
        }
        if let Some(bt) = &self.backtrace {
            write!(f, "\n{}", bt.trim_end())?;
        }
        Ok(())
    }
}

impl std::error::Error for CallError {}

/// Host state of one store: the WASI context, the memory limiter, the
/// output sink and the clock.
pub(crate) struct StoreState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    output: GuestOutput,
    clock: SharedClock,
}

impl fmt::Debug for StoreState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreState")
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wit::Host for StoreState {}

impl wit_host::Host for StoreState {
    fn log(&mut self, level: wit_host::Level, message: String) {
        self.output.log(level, &message);
    }

    fn now(&mut self) -> i64 {
        self.clock.now_millis()
    }
}

/// The engine clock as WASI's wall clock.
struct EngineWallClock(SharedClock);

impl wasmtime_wasi::HostWallClock for EngineWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }

    fn now(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.0.now_millis()).unwrap_or(0))
    }
}

/// The engine clock as WASI's monotonic clock (nanoseconds).
struct EngineMonotonicClock(SharedClock);

impl wasmtime_wasi::HostMonotonicClock for EngineMonotonicClock {
    fn resolution(&self) -> u64 {
        1_000_000
    }

    fn now(&self) -> u64 {
        u64::try_from(self.0.now_millis())
            .unwrap_or(0)
            .saturating_mul(1_000_000)
    }
}

struct RuntimeInner {
    engine: Engine,
    linker: Linker<StoreState>,
    cache: Option<CompileCache>,
    config: RuntimeConfig,
    ticker: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

impl Drop for RuntimeInner {
    fn drop(&mut self) {
        if let Some((stop, handle)) = self.ticker.take() {
            stop.store(true, Ordering::Relaxed);
            handle.thread().unpark();
            let _ = handle.join();
        }
    }
}

/// A wasmtime engine configured for rules, with its linker and cache.
/// Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Build an engine, its linker and (when configured) its compile cache.
    pub fn new(config: RuntimeConfig) -> anyhow::Result<Self> {
        let mut wc = wasmtime::Config::new();
        wc.wasm_component_model(true)
            .wasm_backtrace_max_frames(std::num::NonZeroUsize::new(32))
            .consume_fuel(config.fuel)
            .epoch_interruption(config.deadlines);
        if let Some(pool) = &config.pooling {
            let per = pool.core_per_component;
            let mut p = PoolingAllocationConfig::default();
            p.total_component_instances(pool.max_instances)
                .total_core_instances(pool.max_instances.saturating_mul(per))
                .total_memories(pool.max_instances.saturating_mul(per))
                .total_tables(pool.max_instances.saturating_mul(per))
                .max_core_instances_per_component(per)
                .max_memories_per_component(per)
                .max_tables_per_component(per)
                .max_memory_size(usize::try_from(config.max_memory_bytes)?);
            wc.allocation_strategy(InstanceAllocationStrategy::Pooling(p));
        }
        let engine = Engine::new(&wc).map_err(|e| anyhow::anyhow!("wasmtime engine: {e}"))?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| anyhow::anyhow!("linking WASI: {e}"))?;
        Rule::add_to_linker::<StoreState, HasSelf<StoreState>>(&mut linker, |s| s)
            .map_err(|e| anyhow::anyhow!("linking the host interface: {e}"))?;

        let cache = match &config.cache_dir {
            Some(dir) => Some(
                CompileCache::new(dir, &engine)
                    .map_err(|e| anyhow::anyhow!("compile cache at {}: {e}", dir.display()))?,
            ),
            None => None,
        };

        let ticker = config.deadlines.then(|| {
            let stop = Arc::new(AtomicBool::new(false));
            let (engine, stop2, tick) = (engine.clone(), stop.clone(), config.epoch_tick);
            let handle = std::thread::Builder::new()
                .name("sluice-epoch".into())
                .spawn(move || {
                    while !stop2.load(Ordering::Relaxed) {
                        std::thread::park_timeout(tick);
                        engine.increment_epoch();
                    }
                })
                .expect("spawn the epoch ticker thread");
            (stop, handle)
        });

        Ok(Self {
            inner: Arc::new(RuntimeInner {
                engine,
                linker,
                cache,
                config,
                ticker,
            }),
        })
    }

    /// The engine settings.
    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.config
    }

    /// The compile cache, when configured.
    pub fn cache(&self) -> Option<&CompileCache> {
        self.inner.cache.as_ref()
    }

    /// Compile (or fetch from the cache), validate and pre-instantiate a
    /// rule component. Nothing runs guest code yet.
    pub fn load(
        &self,
        label: RuleLabel,
        bytes: &[u8],
        limits: Limits,
    ) -> Result<LoadedRule, LoadError> {
        self.load_with_fields(label, bytes, limits, &[])
    }

    /// [`load`](Self::load) for a manifest that declares `[select] fields`
    /// (checked JSON pointers): the component must export
    /// `projection.select`, which [`RuleInstance::select`] then calls with
    /// the fields' values, parsed natively, instead of `select`.
    pub fn load_with_fields(
        &self,
        label: RuleLabel,
        bytes: &[u8],
        limits: Limits,
        fields: &[String],
    ) -> Result<LoadedRule, LoadError> {
        let inner = &self.inner;
        let projection = match fields {
            [] => None,
            _ => Some(
                sluice_fields::Projection::new(fields)
                    .map_err(|e| LoadError::Limits(format!("select.fields: {e}")))?,
            ),
        };
        if limits.memory_bytes > inner.config.max_memory_bytes {
            return Err(LoadError::Limits(format!(
                "memory_bytes = {} is above the engine's maximum of {}",
                limits.memory_bytes, inner.config.max_memory_bytes
            )));
        }
        not_a_component(bytes)?;
        let digest = cache::digest(bytes);
        let (component, cache) = match &inner.cache {
            Some(c) => c.load(&inner.engine, &digest, bytes),
            None => Component::new(&inner.engine, bytes).map(|c| (c, CacheOutcome::Disabled)),
        }
        .map_err(|e| LoadError::Compile(one_line(&format!("{e:#}"))))?;

        check_world(&inner.engine, &component)?;
        let pre = inner
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Link(format!("{e:#}")))?;
        let pre = RulePre::new(pre).map_err(|e| LoadError::WrongExportType(format!("{e:#}")))?;
        let indices = RuleIndices::new(pre.instance_pre())
            .map_err(|e| LoadError::WrongExportType(format!("{e:#}")))?;
        let projected = match projection {
            None => None,
            Some(projection) => {
                let Some(index) = component
                    .get_export_index(None, PROJECTION_INTERFACE)
                    .and_then(|i| component.get_export_index(Some(&i), "select"))
                else {
                    return Err(LoadError::NoProjection(fields.to_vec()));
                };
                check_projected_type(&inner.engine, &component)?;
                Some(Projected { projection, index })
            }
        };
        Ok(LoadedRule {
            inner: Arc::new(LoadedInner {
                runtime: self.clone(),
                label,
                digest,
                limits,
                indices,
                pre,
                projected,
                cache,
                fuel_used: std::sync::atomic::AtomicU64::new(0),
            }),
        })
    }
}

/// Check exports and imports by name, so that a component built for
/// another world is rejected with a message that says what is missing.
/// The WASI interfaces the host links (wasmtime-wasi's WASI 0.2), each with
/// an empty context: no preopened directory, no network, no environment.
/// Anything else (`wasi:http`, say) is refused at load, named.
const PROVIDED_WASI: [&str; 6] = [
    "wasi:cli/",
    "wasi:clocks/",
    "wasi:filesystem/",
    "wasi:io/",
    "wasi:random/",
    "wasi:sockets/",
];

fn check_world(engine: &Engine, component: &Component) -> Result<(), LoadError> {
    let ty = component.component_type();
    let exports: BTreeSet<String> = ty
        .exports(engine)
        .filter(|(_, item)| matches!(item.ty, ComponentItem::ComponentFunc(_)))
        .map(|(name, _)| name.to_string())
        .collect();
    let missing: Vec<String> = REQUIRED_EXPORTS
        .iter()
        .filter(|name| !exports.contains(**name))
        .map(|name| name.to_string())
        .collect();
    if !missing.is_empty() {
        let found = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
        return Err(LoadError::MissingExports { missing, found });
    }
    let foreign: Vec<String> = ty
        .imports(engine)
        .map(|(name, _)| name.to_string())
        .filter(|name| {
            !(name.starts_with("sluice:rule/") || PROVIDED_WASI.iter().any(|p| name.starts_with(p)))
        })
        .collect();
    if !foreign.is_empty() {
        return Err(LoadError::UnsupportedImport(foreign));
    }
    Ok(())
}

/// `projection.select` with the fields it takes.
struct Projected {
    projection: sluice_fields::Projection,
    index: wasmtime::component::ComponentExportIndex,
}

/// The projection's `select` has the shape of the WIT (the exact types are
/// checked when an instance is made).
fn check_projected_type(engine: &Engine, component: &Component) -> Result<(), LoadError> {
    let ty = component.component_type();
    let f = ty.exports(engine).find_map(|(name, item)| match item.ty {
        ComponentItem::ComponentInstance(i) if name == PROJECTION_INTERFACE => {
            i.exports(engine).find_map(|(n, item)| match item.ty {
                ComponentItem::ComponentFunc(f) if n == "select" => Some(f),
                _ => None,
            })
        }
        _ => None,
    });
    let Some(f) = f else {
        return Err(LoadError::WrongProjectionType(format!(
            "`{PROJECTED_EXPORT}` is not a function"
        )));
    };
    let params: Vec<_> = f.params().collect();
    let results: Vec<_> = f.results().collect();
    let shape_ok = params.len() == 1
        && results.len() == 1
        && matches!(params[0].1, wasmtime::component::types::Type::Record(_))
        && matches!(results[0], wasmtime::component::types::Type::Record(_));
    if !shape_ok {
        return Err(LoadError::WrongProjectionType(format!(
            "`{PROJECTED_EXPORT}` must take a `projected-pack` and return a `selection`"
        )));
    }
    Ok(())
}

struct LoadedInner {
    runtime: Runtime,
    label: RuleLabel,
    digest: String,
    limits: Limits,
    pre: RulePre<StoreState>,
    indices: RuleIndices,
    projected: Option<Projected>,
    cache: CacheOutcome,
    /// Fuel the rule's calls have used, all instances together.
    fuel_used: std::sync::atomic::AtomicU64,
}

/// A compiled, validated, pre-instantiated rule. Cheap to clone; share it
/// between threads and give each its own [`RuleInstance`].
#[derive(Clone)]
pub struct LoadedRule {
    inner: Arc<LoadedInner>,
}

impl fmt::Debug for LoadedRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedRule")
            .field("label", &self.inner.label)
            .field("digest", &self.inner.digest)
            .field("cache", &self.inner.cache)
            .finish_non_exhaustive()
    }
}

impl LoadedRule {
    /// The rule's label.
    pub fn label(&self) -> &RuleLabel {
        &self.inner.label
    }

    /// SHA-256 of the component bytes (hex).
    pub fn digest(&self) -> &str {
        &self.inner.digest
    }

    /// The rule's limits.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// How the compile cache served this load.
    pub fn cache_outcome(&self) -> &CacheOutcome {
        &self.inner.cache
    }

    /// Fuel used by every call into this rule so far (0 when fuel is not
    /// metered).
    pub fn fuel_used(&self) -> u64 {
        self.inner.fuel_used.load(Ordering::Relaxed)
    }

    /// Count the fuel the call just made on `store` used.
    fn spent(&self, store: &Store<StoreState>) {
        if self.inner.runtime.inner.config.fuel {
            let left = store.get_fuel().unwrap_or(0);
            let used = self.inner.limits.fuel.saturating_sub(left);
            self.inner.fuel_used.fetch_add(used, Ordering::Relaxed);
        }
    }

    /// A handle that runs calls; it instantiates lazily, on first use.
    pub fn instance(&self) -> RuleInstance {
        RuleInstance {
            rule: self.clone(),
            live: None,
            pack: empty_pack(),
            projected_pack: empty_projected_pack(),
            logs: Vec::new(),
        }
    }

    fn error(&self, export: &'static str, kind: CallErrorKind) -> CallError {
        CallErrorDetail {
            rule: self.inner.label.clone(),
            export,
            kind,
            backtrace: None,
            stderr: Vec::new(),
        }
        .into()
    }

    /// A fresh store and instance, with the per-call budget already set so
    /// that instantiation itself is bounded.
    fn instantiate(&self) -> Result<Live, CallError> {
        let rt = &self.inner.runtime.inner;
        let output = GuestOutput::new(self.inner.label.clone(), self.inner.limits.max_log_bytes);
        let clock = rt.config.clock.clone();
        let wasi = WasiCtx::builder()
            .stdout(output.stream(Stream::Stdout))
            .stderr(output.stream(Stream::Stderr))
            .wall_clock(EngineWallClock(clock.clone()))
            .monotonic_clock(EngineMonotonicClock(clock.clone()))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let state = StoreState {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(self.inner.limits.memory_bytes),
            output,
            clock,
        };
        let mut store = Store::new(&rt.engine, state);
        store.limiter(|s| &mut s.limiter);
        self.arm(&mut store, "instantiate")?;
        store.data().output.begin_call();
        let result = (|| -> wasmtime::Result<_> {
            let instance = self.inner.pre.instance_pre().instantiate(&mut store)?;
            let bindings = self.inner.indices.load(&mut store, &instance)?;
            // Its exact types are checked by each call (`typed`, cheap).
            let projected = match &self.inner.projected {
                None => None,
                Some(p) => Some(
                    instance
                        .get_func(&mut store, p.index)
                        .ok_or_else(|| wasmtime::format_err!("`{PROJECTED_EXPORT}` is missing"))?,
                ),
            };
            Ok((bindings, projected))
        })();
        store.data().output.end_call();
        self.spent(&store);
        match result {
            Ok((bindings, projected)) => Ok(Live {
                store,
                bindings,
                projected,
            }),
            Err(e) => Err(self.classify(&store, "instantiate", e)),
        }
    }

    /// Give the store a full per-call budget.
    fn arm(&self, store: &mut Store<StoreState>, export: &'static str) -> Result<(), CallError> {
        let rt = &self.inner.runtime.inner;
        let limits = &self.inner.limits;
        if rt.config.fuel {
            store.set_fuel(limits.fuel).map_err(|e| {
                self.error(
                    export,
                    CallErrorKind::Trap {
                        message: format!("cannot set fuel: {e}"),
                    },
                )
            })?;
        }
        if rt.config.deadlines {
            let tick = rt.config.epoch_tick.as_nanos().max(1);
            // +1: the current tick may be about to end.
            let ticks = limits.deadline.as_nanos().div_ceil(tick) + 1;
            store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX));
        }
        store.data_mut().limiter.refused = None;
        Ok(())
    }

    /// Turn a wasmtime error from a call into a [`CallError`].
    fn classify(
        &self,
        store: &Store<StoreState>,
        export: &'static str,
        e: wasmtime::Error,
    ) -> CallError {
        let limits = &self.inner.limits;
        let backtrace = e.downcast_ref::<WasmBacktrace>().map(|bt| bt.to_string());
        let kind = match e.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => CallErrorKind::OutOfFuel { fuel: limits.fuel },
            Some(Trap::Interrupt) => CallErrorKind::Timeout {
                deadline: limits.deadline,
            },
            other => match store.data().limiter.refused {
                Some(requested) => CallErrorKind::MemoryLimit {
                    limit: limits.memory_bytes,
                    requested,
                },
                None => CallErrorKind::Trap {
                    message: match other {
                        Some(trap) => trap.to_string(),
                        None => format!("{:#}", e.root_cause()),
                    },
                },
            },
        };
        CallErrorDetail {
            rule: self.inner.label.clone(),
            export,
            kind,
            backtrace,
            stderr: store.data().output.stderr_tail(),
        }
        .into()
    }
}

/// A live store with an instance of the rule.
struct Live {
    store: Store<StoreState>,
    bindings: Rule,
    /// `projection.select`, when the rule declares fields.
    projected: Option<wasmtime::component::Func>,
}

/// Runs calls into one rule. Reuses its instance between calls (it is
/// replaced after any failure) except for handlers, which always get a
/// fresh one.
pub struct RuleInstance {
    rule: LoadedRule,
    live: Option<Live>,
    /// Reused between `select` calls to avoid reallocating.
    pack: wit::EventPack,
    /// Reused between `projection.select` calls.
    projected_pack: wit::ProjectedPack,
    /// The last lines the guest wrote during the last handler call.
    logs: Vec<String>,
}

impl fmt::Debug for RuleInstance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuleInstance")
            .field("rule", &self.rule.inner.label)
            .field("live", &self.live.is_some())
            .finish_non_exhaustive()
    }
}

impl RuleInstance {
    /// The rule this instance runs.
    pub fn rule(&self) -> &LoadedRule {
        &self.rule
    }

    /// Whether a live instance is held (false before the first call and
    /// after a failed one).
    pub fn is_live(&self) -> bool {
        self.live.is_some()
    }

    /// Instantiate now (normally done lazily by the first call).
    pub fn warm(&mut self) -> Result<(), CallError> {
        if self.live.is_none() {
            self.live = Some(self.rule.instantiate()?);
        }
        Ok(())
    }

    /// Drop the live instance; the next call instantiates afresh.
    pub fn recycle(&mut self) {
        self.live = None;
    }

    fn call<R>(
        &mut self,
        export: &'static str,
        keep_instance: bool,
        f: impl FnOnce(
            &Rule,
            Option<wasmtime::component::Func>,
            &mut Store<StoreState>,
        ) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        let mut live = match self.live.take() {
            Some(live) => live,
            None => self.rule.instantiate()?,
        };
        self.rule.arm(&mut live.store, export)?;
        live.store.data().output.begin_call();
        let result = f(&live.bindings, live.projected, &mut live.store);
        live.store.data().output.end_call();
        if !keep_instance {
            self.logs = live.store.data().output.tail();
        }
        self.rule.spent(&live.store);
        match result {
            Ok(value) => {
                if keep_instance {
                    self.live = Some(live);
                }
                Ok(value)
            }
            // After a trap the instance refuses further calls: it is
            // dropped here and the next call instantiates a fresh one.
            Err(e) => Err(self.rule.classify(&live.store, export, e)),
        }
    }

    /// The rule's `filter` on one event.
    pub fn filter(&mut self, event: &Event) -> Result<bool, CallError> {
        let event = wit::Event::from(event);
        self.call("filter", true, |b, _, s| b.call_filter(s, &event))
    }

    /// The rule's `partition-key` on one event.
    pub fn partition_key(&mut self, event: &Event) -> Result<Option<String>, CallError> {
        let event = wit::Event::from(event);
        let key = self.call("partition-key", true, |b, _, s| {
            b.call_partition_key(s, &event)
        })?;
        if let Some(k) = &key {
            self.check_key("partition-key", 0, k)?;
        }
        Ok(key)
    }

    /// The rule's `membership` on one event.
    pub fn membership(&mut self, event: &Event) -> Result<Membership, CallError> {
        let event = wit::Event::from(event);
        self.call("membership", true, |b, _, s| b.call_membership(s, &event))
            .map(membership)
    }

    /// The hot path: filter, partition key and membership of many events,
    /// one verdict per event in order. Large inputs are split into several
    /// calls so that a pack stays well within the guest's memory.
    pub fn select<E: std::borrow::Borrow<Event>>(
        &mut self,
        events: &[E],
    ) -> Result<Vec<Verdict>, CallError> {
        let mut verdicts = Vec::with_capacity(events.len());
        // A pack should use at most a quarter of the guest's memory cap.
        let byte_budget =
            usize::try_from(self.rule.inner.limits.memory_bytes / 4).unwrap_or(usize::MAX);
        let mut start = 0;
        while start < events.len() {
            let mut end = start;
            let mut bytes = 0usize;
            while end < events.len() && end - start < SELECT_CHUNK_EVENTS {
                let e: &Event = events[end].borrow();
                let size = e.id.len() + e.source.len() + e.kind.len() + e.payload.len();
                if end > start && bytes + size > byte_budget {
                    break;
                }
                bytes += size;
                end += 1;
            }
            self.select_chunk(&events[start..end], &mut verdicts)?;
            start = end;
        }
        Ok(verdicts)
    }

    fn select_chunk<E: std::borrow::Borrow<Event>>(
        &mut self,
        events: &[E],
        out: &mut Vec<Verdict>,
    ) -> Result<(), CallError> {
        let inner = self.rule.inner.clone();
        let (export, selection) = match &inner.projected {
            None => {
                let mut pack = std::mem::replace(&mut self.pack, empty_pack());
                let packed = pack_events(events, &mut pack);
                let result = match packed {
                    Ok(()) => self.call("select", true, |b, _, s| b.call_select(s, &pack)),
                    Err(problem) => {
                        Err(self.rule.error("select", CallErrorKind::Input { problem }))
                    }
                };
                self.pack = pack;
                ("select", result?)
            }
            Some(p) => {
                let mut pack = std::mem::replace(&mut self.projected_pack, empty_projected_pack());
                let packed = pack_projected(events, &p.projection, &mut pack);
                let result = match packed {
                    Ok(()) => self.call(PROJECTED_EXPORT, true, |_, f, s| {
                        let f = f.ok_or_else(|| {
                            wasmtime::format_err!("`{PROJECTED_EXPORT}` is missing")
                        })?;
                        let typed = f.typed::<(&wit::ProjectedPack,), (wit::Selection,)>(&*s)?;
                        Ok(typed.call(&mut *s, (&pack,))?.0)
                    }),
                    Err(problem) => Err(self
                        .rule
                        .error(PROJECTED_EXPORT, CallErrorKind::Input { problem })),
                };
                self.projected_pack = pack;
                (PROJECTED_EXPORT, result?)
            }
        };
        let wit::Selection {
            verdicts,
            partitions,
        } = selection;
        let kept = verdicts
            .iter()
            .filter(|v| !matches!(v, wit::Verdict::Skip))
            .count();
        if verdicts.len() != events.len() || partitions.len() != kept {
            self.recycle();
            return Err(self.rule.error(
                export,
                CallErrorKind::Output {
                    problem: format!(
                        "returned {} verdicts ({kept} kept) and {} partition keys for {} events",
                        verdicts.len(),
                        partitions.len(),
                        events.len()
                    ),
                },
            ));
        }
        let mut partitions = partitions.into_iter();
        for (i, verdict) in verdicts.into_iter().enumerate() {
            let membership = match verdict {
                wit::Verdict::Skip => {
                    out.push(Verdict::Skip);
                    continue;
                }
                wit::Verdict::Enter => Membership::Enter,
                wit::Verdict::Leave => Membership::Leave,
                wit::Verdict::Refresh => Membership::Refresh,
                wit::Verdict::Ignore => Membership::Ignore,
            };
            let partition = partitions.next().flatten();
            if let Some(k) = &partition {
                self.check_key(export, i, k)?;
            }
            out.push(Verdict::Keep(Placement {
                partition,
                membership,
            }));
        }
        Ok(())
    }

    fn check_key(
        &mut self,
        export: &'static str,
        index: usize,
        key: &str,
    ) -> Result<(), CallError> {
        let max = self.rule.inner.limits.max_partition_key_bytes;
        if key.len() > max {
            return Err(self.rule.error(
                export,
                CallErrorKind::Output {
                    problem: format!(
                        "partition key of event {index} is {} bytes; the limit is {max}",
                        key.len()
                    ),
                },
            ));
        }
        Ok(())
    }

    /// The last lines (at most 16) the guest wrote during the last handler
    /// call, to stdout, stderr or `log`, each named by where it went.
    pub fn handler_logs(&self) -> &[String] {
        &self.logs
    }

    /// Run the handler on a fresh instance (no state survives from an
    /// earlier fire) and check what it emits against the rule's limits.
    pub fn handle_batch(&mut self, batch: &wit::Batch) -> Result<Vec<Emit>, CallError> {
        let limits = self.rule.inner.limits.clone();
        if batch.events.seqs.len() > limits.max_batch {
            return Err(self.rule.error(
                "handle-batch",
                CallErrorKind::Input {
                    problem: format!(
                        "batch of {} events is above max_batch = {}",
                        batch.events.seqs.len(),
                        limits.max_batch
                    ),
                },
            ));
        }
        self.live = None;
        let result = self.call("handle-batch", false, |b, _, s| {
            b.call_handle_batch(s, batch)
        })?;
        let emits = result.map_err(|e| self.rule.error("handle-batch", CallErrorKind::Rule(e)))?;
        check_emits(&emits, &limits).map_err(|problem| {
            self.rule
                .error("handle-batch", CallErrorKind::Output { problem })
        })?;
        Ok(emits)
    }
}

/// An empty `projected-pack`, to fill with [`pack_projected`].
pub fn empty_projected_pack() -> wit::ProjectedPack {
    wit::ProjectedPack {
        fields: Vec::new(),
        seqs: Vec::new(),
        times: Vec::new(),
        ends: Vec::new(),
        text: Vec::new(),
        kinds: Vec::new(),
        integers: Vec::new(),
        floats: Vec::new(),
    }
}

/// Pack events for `projection.select` (layout: `projected-pack` in the
/// WIT): each payload parsed once, natively, for the declared fields.
pub fn pack_projected<E: std::borrow::Borrow<Event>>(
    events: &[E],
    projection: &sluice_fields::Projection,
    pack: &mut wit::ProjectedPack,
) -> Result<(), String> {
    use sluice_fields::Value;
    if pack.fields != projection.fields() {
        pack.fields = projection.fields().to_vec();
    }
    pack.seqs.clear();
    pack.times.clear();
    pack.ends.clear();
    pack.text.clear();
    pack.kinds.clear();
    pack.integers.clear();
    pack.floats.clear();
    let too_big = || "an event pack cannot exceed 4 GiB".to_string();
    let mut values = Vec::with_capacity(projection.fields().len());
    for e in events {
        let e: &Event = e.borrow();
        pack.seqs.push(e.seq);
        pack.times.push(e.time);
        for field in [&e.id, &e.source, &e.kind] {
            pack.text.extend_from_slice(field.as_bytes());
            pack.ends
                .push(u32::try_from(pack.text.len()).map_err(|_| too_big())?);
        }
        values.clear();
        projection.project(&e.payload, &mut values).map_err(|err| {
            format!(
                "the payload of event {} (seq {}) is not JSON: {err}",
                e.id, e.seq
            )
        })?;
        for value in values.drain(..) {
            let (kind, integer, float) = match value {
                Value::Absent => (wit::FieldKind::Absent, 0, 0.0),
                Value::Null => (wit::FieldKind::Null, 0, 0.0),
                Value::Bool(b) => (wit::FieldKind::Boolean, i64::from(b), 0.0),
                Value::Int(n) => (wit::FieldKind::Integer, n, 0.0),
                Value::Float(x) => (wit::FieldKind::Float, 0, x),
                Value::Text(t) => {
                    pack.text.extend_from_slice(t.as_bytes());
                    (wit::FieldKind::Text, 0, 0.0)
                }
                Value::Json(j) => {
                    pack.text.extend_from_slice(j.as_bytes());
                    (wit::FieldKind::Json, 0, 0.0)
                }
            };
            pack.ends
                .push(u32::try_from(pack.text.len()).map_err(|_| too_big())?);
            pack.kinds.push(kind);
            pack.integers.push(integer);
            pack.floats.push(float);
        }
    }
    Ok(())
}

fn empty_pack() -> wit::EventPack {
    wit::EventPack {
        seqs: Vec::new(),
        times: Vec::new(),
        ends: Vec::new(),
        text: Vec::new(),
    }
}

/// Pack events into `pack` (layout: `event-pack` in the WIT), reusing its
/// buffers.
/// `events` as an event pack (the layout `select` and `handle-batch`
/// take); fails only past 4 GiB of text.
pub fn event_pack<E: std::borrow::Borrow<Event>>(events: &[E]) -> Result<wit::EventPack, String> {
    let mut pack = empty_pack();
    pack_events(events, &mut pack)?;
    Ok(pack)
}

fn pack_events<E: std::borrow::Borrow<Event>>(
    events: &[E],
    pack: &mut wit::EventPack,
) -> Result<(), String> {
    pack.seqs.clear();
    pack.times.clear();
    pack.ends.clear();
    pack.text.clear();
    for e in events {
        let e: &Event = e.borrow();
        pack.seqs.push(e.seq);
        pack.times.push(e.time);
        for field in [&e.id, &e.source, &e.kind, &e.payload] {
            pack.text.extend_from_slice(field.as_bytes());
            let end = u32::try_from(pack.text.len())
                .map_err(|_| "an event pack cannot exceed 4 GiB".to_string())?;
            pack.ends.push(end);
        }
    }
    Ok(())
}

/// Check a handler's output against the limits; the message names the
/// offending emit.
fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((at, _)) => &s[..at],
        None => s,
    }
}

fn check_emits(emits: &[Emit], limits: &Limits) -> Result<(), String> {
    if emits.len() > limits.max_emits {
        return Err(format!(
            "emitted {} events; max_emits = {}",
            emits.len(),
            limits.max_emits
        ));
    }
    let mut bytes = 0usize;
    for (i, emit) in emits.iter().enumerate() {
        bytes = bytes.saturating_add(emit.kind.len() + emit.payload.len());
        if bytes > limits.max_emit_bytes {
            return Err(format!(
                "emitted more than max_emit_bytes = {} (at emit {i})",
                limits.max_emit_bytes
            ));
        }
        // An output is held to what an ingested event is held to.
        if emit.kind.trim().is_empty() || emit.kind.len() > MAX_EMIT_KIND {
            return Err(format!(
                "emit {i}: kind must be 1 to {MAX_EMIT_KIND} bytes and not blank, got {:?}",
                truncate(&emit.kind, 40)
            ));
        }
        if emit.kind.chars().any(char::is_control) {
            return Err(format!(
                "emit {i}: kind {:?} contains control characters",
                truncate(&emit.kind, 40)
            ));
        }
        let max_payload = crate::log::validate::EventLimits::default().max_payload_bytes;
        if emit.payload.len() > max_payload {
            return Err(format!(
                "emit {i}: payload of {} bytes is over the event limit of {max_payload} bytes",
                emit.payload.len()
            ));
        }
        match serde_json::from_str::<serde_json::Value>(&emit.payload) {
            Ok(serde_json::Value::Object(_)) => {}
            Ok(_) => return Err(format!("emit {i}: payload is not a JSON object")),
            Err(e) => return Err(format!("emit {i}: payload is not valid JSON: {e}")),
        }
    }
    Ok(())
}

impl From<&Event> for wit::Event {
    fn from(e: &Event) -> Self {
        wit::Event {
            seq: e.seq,
            id: e.id.clone(),
            source: e.source.clone(),
            kind: e.kind.clone(),
            time: e.time,
            payload: e.payload.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, payload: &str) -> Event {
        Event {
            seq: 7,
            id: "ev-1".into(),
            tenant: "t".into(),
            source: "src".into(),
            kind: kind.into(),
            time: 1_000,
            ingested: 1_000,
            payload: payload.into(),
            hops: 0,
        }
    }

    #[test]
    fn outputs_are_held_to_what_ingest_requires() {
        let emit = |kind: &str, payload: String| Emit {
            kind: kind.into(),
            payload,
        };
        let limits = Limits {
            max_emit_bytes: 1 << 30,
            ..Limits::default()
        };
        let check = |e: Emit| check_emits(&[e], &limits);
        assert!(check(emit("digest", "{}".into())).is_ok());
        assert!(
            check(emit("  ", "{}".into()))
                .unwrap_err()
                .contains("not blank")
        );
        assert!(
            check(emit("a\nb", "{}".into()))
                .unwrap_err()
                .contains("control characters")
        );
        let big = format!("{{\"x\":\"{}\"}}", "a".repeat(300 << 10));
        assert!(
            check(emit("k", big))
                .unwrap_err()
                .contains("over the event limit")
        );
        assert!(
            check(emit("k", "[1]".into()))
                .unwrap_err()
                .contains("not a JSON object")
        );
    }

    #[test]
    fn pack_lays_out_fields_in_order() {
        let mut pack = empty_pack();
        pack_events(&[event("a", "{}"), event("bé", r#"{"x":1}"#)], &mut pack).unwrap();
        let text = std::str::from_utf8(&pack.text).unwrap();
        let field = |k: usize| {
            let start = if k == 0 { 0 } else { pack.ends[k - 1] as usize };
            &text[start..pack.ends[k] as usize]
        };
        assert_eq!(
            [field(0), field(1), field(2), field(3)],
            ["ev-1", "src", "a", "{}"]
        );
        assert_eq!(field(6), "bé");
        assert_eq!(field(7), r#"{"x":1}"#);
        assert_eq!(
            (pack.seqs.clone(), pack.times.clone()),
            (vec![7, 7], vec![1_000, 1_000])
        );
    }

    #[test]
    fn emits_are_checked_and_named() {
        let limits = Limits {
            max_emits: 2,
            max_emit_bytes: 40,
            ..Limits::default()
        };
        let ok = Emit {
            kind: "k".into(),
            payload: "{}".into(),
        };
        assert!(check_emits(std::slice::from_ref(&ok), &limits).is_ok());
        let too_many = vec![ok.clone(), ok.clone(), ok.clone()];
        assert!(
            check_emits(&too_many, &limits)
                .unwrap_err()
                .contains("max_emits")
        );
        let array = Emit {
            kind: "k".into(),
            payload: "[1]".into(),
        };
        assert_eq!(
            check_emits(&[ok.clone(), array], &limits).unwrap_err(),
            "emit 1: payload is not a JSON object"
        );
        let big = Emit {
            kind: "k".into(),
            payload: format!("{{\"a\":\"{}\"}}", "x".repeat(50)),
        };
        assert!(
            check_emits(&[big], &limits)
                .unwrap_err()
                .contains("max_emit_bytes")
        );
        let unnamed = Emit {
            kind: String::new(),
            payload: "{}".into(),
        };
        assert!(
            check_emits(&[unnamed], &limits)
                .unwrap_err()
                .contains("kind")
        );
    }
}
