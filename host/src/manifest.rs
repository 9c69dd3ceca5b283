//! `rule.toml`: what a rule is called, which trigger runs it, its limits
//! and its retry policy.
//!
//! Parsing is strict: unknown fields are errors, every value is checked,
//! and an error names the file position and the field by its path
//! (`trigger.batch.window: "soon" is not a duration ...`). Durations are
//! written as `"10m"`, `"1h 30m"`, `"500ms"`, in whole milliseconds and
//! within the range each field states; sizes as `"32MiB"`, `"512KiB"` or a
//! number of bytes.
//!
//! ```toml
//! name = "pr-digest"
//! version = 1
//!
//! [trigger.batch]          # or [trigger.dwell] or [trigger.schedule]
//! count = 10               # 1..=10000
//! window = "1h"            # 1ms..=366d
//! expire = "fire"          # or "discard"
//! debounce = false         # true: every event restarts the window
//! # max_wait = "6h"        # only with debounce = true; window..=366d:
//! #                        # fire at the latest this long after opening
//!
//! # [trigger.dwell]
//! # max_dwell = "30d"      # optional, 1ms..=3660d: force a leave
//! # [[trigger.dwell.reactions]]
//! # label = "nudge"
//! # after = "7d"           # once per membership, 1ms..=3660d
//! # # or every = "1h"      # each interval, 1s..=366d
//!
//! # [trigger.schedule]
//! # cron = "0 3 * * *"     # 5 fields, or 6 with seconds first
//! # timezone = "UTC"
//! # overlap = "skip"       # buffer-one, buffer-all, cancel-previous, allow-all
//! # catch_up = "skip"      # latest, all
//! # catch_up_window = "1d" # 1ms..=366d
//! # skip_empty = false
//!
//! [limits]                 # all optional; defaults in runtime::Limits
//! fuel = 200_000_000
//! deadline = "500ms"       # 1ms..=5m
//! memory = "32MiB"
//!
//! [retry]                  # all optional
//! max_attempts = 5         # 1..=100
//! backoff = "1s"           # 1ms..=1h
//! max_backoff = "5m"       # 1ms..=1d, not below backoff
//! suspend_after = 10
//!
//! [concurrency]            # optional
//! max = 1                  # fires running at once, 1..=64
//!
//! [outputs]                # optional
//! max_hops = 16            # rule steps from a client event, 1..=1000
//!
//! [select]                 # optional
//! fields = ["/repo", "/ok"] # the payload fields `select` reads (JSON
//!                          # pointers, at most 64): the engine parses each
//!                          # payload natively and calls `projection.select`
//! on_poison = "skip"       # or "suspend": an event `select` keeps failing on
//! attempts = 3             # failures before on_poison applies, 1..=100
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::ops::Range;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use toml::Spanned;

use crate::runtime::Limits;

/// A parsed, checked `rule.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Manifest {
    /// The rule's name: lowercase letters, digits, `-` and `_`.
    pub name: String,
    /// The version, from 1; a redeploy must raise it.
    pub version: u32,
    /// What runs the rule.
    pub trigger: Trigger,
    /// Sandbox limits per call.
    pub limits: Limits,
    /// What happens when the handler fails.
    pub retry: RetryPolicy,
    /// How many fires of the rule run at once.
    pub concurrency: Concurrency,
    /// What the rule's outputs may do.
    pub outputs: OutputPolicy,
    /// What happens to an event the rule's `select` keeps failing on.
    pub select: SelectPolicy,
    /// The payload fields the rule's `select` reads (`[select] fields`,
    /// JSON pointers, checked). When there are any, the engine parses each
    /// payload natively and calls the component's `projection.select`
    /// with their values instead of `select` with whole payloads.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
}

/// `[concurrency]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Concurrency {
    /// Fires of the rule running at once (1..=64); the fires of one
    /// partition still run in order.
    pub max: u32,
}

impl Default for Concurrency {
    fn default() -> Self {
        Self { max: 1 }
    }
}

/// `[outputs]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OutputPolicy {
    /// An output is `hops` rule steps away from a client event (a fire fed
    /// by client events emits hop 1). Outputs past this are not appended;
    /// an engine record says so (1..=1000).
    pub max_hops: u32,
}

/// Default hop limit of outputs.
pub const DEFAULT_MAX_HOPS: u32 = 16;

impl Default for OutputPolicy {
    fn default() -> Self {
        Self {
            max_hops: DEFAULT_MAX_HOPS,
        }
    }
}

/// `[select]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SelectPolicy {
    /// What to do with an event `select` fails on `attempts` times in a row.
    pub on_poison: OnPoison,
    /// Failed `select` calls on one event before `on_poison` applies
    /// (1..=100).
    pub attempts: u32,
}

impl Default for SelectPolicy {
    fn default() -> Self {
        Self {
            on_poison: OnPoison::Skip,
            attempts: 3,
        }
    }
}

/// What happens to a poison event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnPoison {
    /// Move past it; an `event.skipped` engine record keeps it visible.
    Skip,
    /// Suspend the rule (its status says why) until it is resumed.
    Suspend,
}

/// Exactly one trigger per rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// Aggregation windows.
    Batch(BatchTrigger),
    /// Membership age.
    Dwell(DwellTrigger),
    /// Cron.
    Schedule(ScheduleTrigger),
}

impl Trigger {
    /// The trigger kind's name: `batch`, `dwell` or `schedule`.
    pub fn kind(&self) -> &'static str {
        match self {
            Trigger::Batch(_) => "batch",
            Trigger::Dwell(_) => "dwell",
            Trigger::Schedule(_) => "schedule",
        }
    }

    /// The trigger in words: "batches of 10 per partition, or after 1h".
    pub fn describe(&self) -> String {
        let d = |d: &Duration| crate::time::human(*d);
        match self {
            Trigger::Batch(b) => {
                let expired = match b.expire {
                    Expire::Fire => "fires what it has",
                    Expire::Discard => "is discarded",
                };
                let window = if b.debounce {
                    let mut w = format!("{} after its last event", d(&b.window));
                    if let Some(max) = &b.max_wait {
                        w.push_str(&format!(" (at most {} after its first)", d(max)));
                    }
                    w
                } else {
                    format!("{} after it opens", d(&b.window))
                };
                format!(
                    "batches of {} per partition; a window still short {window} {expired}",
                    b.count
                )
            }
            Trigger::Dwell(t) => {
                let reactions: Vec<String> = t
                    .reactions
                    .iter()
                    .map(|r| match r.when {
                        ReactionTime::After(a) => format!("{:?} once after {}", r.label, d(&a)),
                        ReactionTime::Every(e) => format!("{:?} every {}", r.label, d(&e)),
                    })
                    .collect();
                let mut text = format!("per partition, while a member: {}", reactions.join(", "));
                if let Some(max) = &t.max_dwell {
                    text.push_str(&format!("; members leave after {}", d(max)));
                }
                text
            }
            Trigger::Schedule(s) => {
                let overlap = match s.overlap {
                    Overlap::Skip => "a tick is skipped while the previous one runs",
                    Overlap::BufferOne => "one tick waits while the previous one runs",
                    Overlap::BufferAll => "ticks queue while the previous one runs",
                    Overlap::CancelPrevious => "a tick cancels the previous one",
                    Overlap::AllowAll => "ticks run side by side",
                };
                let missed = match s.catch_up {
                    CatchUp::Skip => "missed ticks are skipped".to_owned(),
                    CatchUp::Latest => "only the latest missed tick runs".to_owned(),
                    CatchUp::All => format!("missed ticks within {} run", d(&s.catch_up_window)),
                };
                let empty = if s.skip_empty {
                    "; empty ticks do not fire"
                } else {
                    ""
                };
                format!(
                    "on cron {:?} ({}); {overlap}; {missed}{empty}",
                    s.cron, s.timezone
                )
            }
        }
    }
}

/// `[trigger.batch]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BatchTrigger {
    /// Fire when a partition has this many events (1..=10000).
    pub count: u32,
    /// Fire (or discard) when this long has passed since the window opened.
    #[serde(with = "humantime_serde_compat")]
    pub window: Duration,
    /// What an expired window does.
    pub expire: Expire,
    /// Every new event restarts the window.
    pub debounce: bool,
    /// With `debounce`: the window fires at the latest this long after it
    /// opened, however steady the stream.
    #[serde(with = "humantime_serde_compat::option")]
    pub max_wait: Option<Duration>,
}

/// What happens to a window that expires before reaching `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expire {
    /// Fire with the partial batch (reason window-expired).
    Fire,
    /// Drop the events; the discard is recorded on the feed.
    Discard,
}

/// `[trigger.dwell]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DwellTrigger {
    /// Reactions, each with a unique label.
    pub reactions: Vec<Reaction>,
    /// Force a leave after this long.
    #[serde(with = "humantime_serde_compat::option")]
    pub max_dwell: Option<Duration>,
}

/// One dwell reaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reaction {
    /// Names the reaction in the fire reason and the fire id.
    pub label: String,
    /// When it fires.
    pub when: ReactionTime,
}

/// `after` (once per membership) or `every` (each interval).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReactionTime {
    /// Once per membership epoch, when the member has stayed this long.
    After(#[serde(with = "humantime_serde_compat")] Duration),
    /// Each interval while a member.
    Every(#[serde(with = "humantime_serde_compat")] Duration),
}

/// `[trigger.schedule]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScheduleTrigger {
    /// The cron expression (seconds field optional), as written.
    pub cron: String,
    /// IANA time zone the expression is read in.
    pub timezone: String,
    /// When the previous tick's handler still runs.
    pub overlap: Overlap,
    /// Ticks missed while the engine was down.
    pub catch_up: CatchUp,
    /// How far back `catch_up = "all"` reaches.
    #[serde(with = "humantime_serde_compat")]
    pub catch_up_window: Duration,
    /// Do not fire on a tick with no events.
    pub skip_empty: bool,
}

/// Overlap policy of a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Overlap {
    /// Skip the tick (counted).
    Skip,
    /// Run it after the current one; at most one waits.
    BufferOne,
    /// Queue every tick.
    BufferAll,
    /// Cancel the running handler and start the new tick.
    CancelPrevious,
    /// Run concurrently.
    AllowAll,
}

/// Catch-up policy of a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Missed ticks are skipped (and counted).
    Skip,
    /// Only the latest missed tick runs.
    Latest,
    /// Every missed tick within `catch_up_window` runs.
    All,
}

/// `[retry]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = no retry).
    pub max_attempts: u32,
    /// Delay before the first retry; doubles each time (with jitter).
    #[serde(with = "humantime_serde_compat")]
    pub backoff: Duration,
    /// Cap on the delay.
    #[serde(with = "humantime_serde_compat")]
    pub max_backoff: Duration,
    /// Suspend the rule after this many fires in a row end dead-lettered.
    pub suspend_after: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            suspend_after: 10,
        }
    }
}

/// Why a manifest was refused: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// 1-based line and column, when known.
    pub at: Option<(usize, usize)>,
    /// What is wrong, naming the field.
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some((line, col)) => write!(f, "line {line}, column {col}: {}", self.message),
            None => write!(f, "{}", self.message),
        }
    }
}

impl std::error::Error for ManifestError {}

// ---- the file as written -------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: String,
    version: u32,
    trigger: RawTrigger,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    retry: RawRetry,
    #[serde(default)]
    concurrency: RawConcurrency,
    #[serde(default)]
    outputs: RawOutputs,
    #[serde(default)]
    select: RawSelect,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrigger {
    batch: Option<RawBatch>,
    dwell: Option<RawDwell>,
    schedule: Option<RawSchedule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBatch {
    count: u32,
    window: Spanned<Written>,
    #[serde(default = "default_expire")]
    expire: Expire,
    #[serde(default)]
    debounce: bool,
    max_wait: Option<Spanned<Written>>,
}

fn default_expire() -> Expire {
    Expire::Fire
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDwell {
    reactions: Vec<RawReaction>,
    max_dwell: Option<Spanned<Written>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReaction {
    label: String,
    after: Option<Spanned<Written>>,
    every: Option<Spanned<Written>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    cron: String,
    #[serde(default = "default_timezone")]
    timezone: String,
    #[serde(default = "default_overlap")]
    overlap: Overlap,
    #[serde(default = "default_catch_up")]
    catch_up: CatchUp,
    catch_up_window: Option<Spanned<Written>>,
    #[serde(default)]
    skip_empty: bool,
}

fn default_timezone() -> String {
    "UTC".into()
}

fn default_overlap() -> Overlap {
    Overlap::Skip
}

fn default_catch_up() -> CatchUp {
    CatchUp::Skip
}

/// How far back `catch_up = "all"` reaches unless the manifest says.
const DEFAULT_CATCH_UP_WINDOW: Duration = Duration::from_secs(24 * 3600);

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    fuel: Option<u64>,
    deadline: Option<Spanned<Written>>,
    #[serde(default, deserialize_with = "opt_size")]
    memory: Option<u64>,
    max_emits: Option<usize>,
    #[serde(default, deserialize_with = "opt_size")]
    max_emit_bytes: Option<u64>,
    max_batch: Option<usize>,
    #[serde(default, deserialize_with = "opt_size")]
    max_log_bytes: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    max_attempts: Option<u32>,
    backoff: Option<Spanned<Written>>,
    max_backoff: Option<Spanned<Written>>,
    suspend_after: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConcurrency {
    max: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawOutputs {
    max_hops: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSelect {
    on_poison: Option<OnPoison>,
    attempts: Option<u32>,
    #[serde(default)]
    fields: Vec<String>,
}

/// A duration as written (`"10m"`), parsed; the range a field accepts is
/// checked later, where the field is known.
struct Written {
    value: Duration,
    text: String,
}

impl<'de> Deserialize<'de> for Written {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let value = humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "{text:?} is not a duration ({e}); write e.g. \"500ms\", \"10m\", \"1h 30m\""
            ))
        })?;
        Ok(Self { value, text })
    }
}

/// A byte size: an integer, or a string with a unit (B, KiB, MiB, GiB, KB,
/// MB, GB).
fn opt_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Bytes(n) => Ok(Some(n)),
        Size::Text(text) => parse_size(&text).map(Some).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{text:?} is not a size; write e.g. \"32MiB\", \"512KiB\" or a number of bytes"
            ))
        }),
    }
}

fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '_')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.replace('_', "").parse().ok()?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    number.checked_mul(scale)
}

/// Serialises durations in the same form the manifest accepts.
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::Serializer;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub(super) mod option {
        use std::time::Duration;

        use serde::Serializer;

        pub(in super::super) fn serialize<S: Serializer>(
            d: &Option<Duration>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }
    }
}

// ---- checking --------------------------------------------------------------

/// Largest `count` of a batch trigger.
pub const MAX_COUNT: u32 = 10_000;

/// Why a check refused the manifest: the message names the field by its
/// path; `span` is where the value sits in the text, when known.
struct Refused {
    message: String,
    span: Option<Range<usize>>,
}

fn invalid(message: impl Into<String>) -> Refused {
    Refused {
        message: message.into(),
        span: None,
    }
}

/// The durations a field accepts, both ends included.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    min: Duration,
    max: Duration,
    /// The range as the message states it, e.g. `1ms..=366d`.
    text: &'static str,
}

const MS: u64 = 1;
const SECOND: u64 = 1000 * MS;
const HOUR: u64 = 3600 * SECOND;
const DAY: u64 = 24 * HOUR;

const fn bounds(min_ms: u64, max_ms: u64, text: &'static str) -> Bounds {
    Bounds {
        min: Duration::from_millis(min_ms),
        max: Duration::from_millis(max_ms),
        text,
    }
}

/// `trigger.batch.window` and `max_wait`.
const BATCH_WINDOW: Bounds = bounds(MS, 366 * DAY, "1ms..=366d");
/// `trigger.dwell` reactions' `after` and `max_dwell`: memberships may
/// last years.
const DWELL_AGE: Bounds = bounds(MS, 3660 * DAY, "1ms..=3660d");
/// `trigger.dwell` reactions' `every`: a repeating fire per member, so not
/// more often than each second.
const DWELL_EVERY: Bounds = bounds(SECOND, 366 * DAY, "1s..=366d");
/// `trigger.schedule.catch_up_window`.
const CATCH_UP_WINDOW: Bounds = bounds(MS, 366 * DAY, "1ms..=366d");
/// `limits.deadline`.
const DEADLINE: Bounds = bounds(MS, 300 * SECOND, "1ms..=5m");
/// `retry.backoff`.
const BACKOFF: Bounds = bounds(MS, HOUR, "1ms..=1h");
/// `retry.max_backoff`.
const MAX_BACKOFF: Bounds = bounds(MS, DAY, "1ms..=1d");

/// The duration of the field at `path`, if it lies within `bounds` and is a
/// whole number of milliseconds (the engine's clock unit).
fn within(path: &str, written: &Spanned<Written>, bounds: Bounds) -> Result<Duration, Refused> {
    let Written { value, text } = written.get_ref();
    let refuse = |why: String| Refused {
        message: format!("{path}: {text:?} {why}"),
        span: Some(written.span()),
    };
    if *value < bounds.min || *value > bounds.max {
        return Err(refuse(format!("is outside {}", bounds.text)));
    }
    if value.subsec_nanos() % 1_000_000 != 0 {
        return Err(refuse(
            "is not a whole number of milliseconds, the engine's unit of time".into(),
        ));
    }
    Ok(*value)
}

/// An optional count of the field at `path` within `range`, else `default`.
fn count_within(
    path: &str,
    value: Option<u32>,
    range: std::ops::RangeInclusive<u32>,
    default: u32,
) -> Result<u32, Refused> {
    match value {
        None => Ok(default),
        Some(n) if range.contains(&n) => Ok(n),
        Some(n) => Err(invalid(format!(
            "{path}: {n} is outside {}..={}",
            range.start(),
            range.end()
        ))),
    }
}

impl Manifest {
    /// Parse and check manifest text.
    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        let raw: RawManifest = toml::from_str(text).map_err(|e| {
            let span = e.span();
            let message = e.message().trim_end();
            ManifestError {
                at: span.as_ref().map(|span| line_col(text, span.start)),
                message: match span.and_then(|span| path_at(text, &span)) {
                    Some(path) => format!("{path}: {message}"),
                    None => message.to_owned(),
                },
            }
        })?;
        check(raw).map_err(|e| ManifestError {
            // Checks name the field by its path; point at its value, or
            // else at the field (or its table) in the file.
            at: match &e.span {
                Some(span) => Some(line_col(text, span.start)),
                None => e
                    .message
                    .split(':')
                    .next()
                    .and_then(|path| locate(text, path)),
            },
            message: e.message,
        })
    }
}

/// The path (`trigger.batch.window`, `trigger.dwell.reactions[1]`) of what
/// a parse error at `span` is about: the innermost value holding the span,
/// or, when the span is a key (an unknown field), the table holding the
/// key. `None` for the top level.
fn path_at(text: &str, span: &Range<usize>) -> Option<String> {
    fn holds(outer: &Range<usize>, inner: &Range<usize>) -> bool {
        outer.start <= inner.start && inner.end <= outer.end && outer.start < outer.end
    }
    fn walk(
        table: &toml::de::DeTable<'_>,
        prefix: &str,
        span: &Range<usize>,
        best: &mut Option<(usize, String)>,
    ) {
        let depth = |path: &str| path.matches(['.', '[']).count() + 1;
        let offer = |path: String, best: &mut Option<(usize, String)>| {
            if best.as_ref().is_none_or(|(d, _)| depth(&path) >= *d) {
                *best = Some((depth(&path), path));
            }
        };
        for (key, value) in table {
            let path = if prefix.is_empty() {
                key.get_ref().to_string()
            } else {
                format!("{prefix}.{}", key.get_ref())
            };
            if key.span() == *span {
                // An unknown or duplicate key: name the table it is in.
                if !prefix.is_empty() {
                    offer(prefix.to_owned(), best);
                }
                continue;
            }
            if holds(&value.span(), span) {
                offer(path.clone(), best);
            }
            match value.get_ref() {
                toml::de::DeValue::Table(inner) => walk(inner, &path, span, best),
                toml::de::DeValue::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        let path = format!("{path}[{i}]");
                        if holds(&item.span(), span) {
                            offer(path.clone(), best);
                        }
                        if let toml::de::DeValue::Table(inner) = item.get_ref() {
                            walk(inner, &path, span, best);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    let root = toml::de::DeTable::parse(text).ok()?;
    let mut best = None;
    walk(root.get_ref(), "", span, &mut best);
    best.map(|(_, path)| path)
}

/// The line and column of the field at `path` (`name`,
/// `trigger.batch.count`, `trigger.dwell.reactions[1].label`), or of its
/// table when the key is absent.
fn locate(text: &str, path: &str) -> Option<(usize, usize)> {
    let (table, index, key) = match path.rsplit_once('.') {
        None => ("", None::<usize>, path),
        Some((table, key)) => match table.split_once('[') {
            Some((array, rest)) => (array, rest.trim_end_matches(']').parse().ok(), key),
            None => (table, None, key),
        },
    };
    // `trigger.dwell.reactions[0]` has no key part after the index.
    let (table, index, key) = match key.split_once('[') {
        Some((array, rest)) if index.is_none() && !table.is_empty() => (
            &path[..table.len() + 1 + array.len()],
            rest.trim_end_matches(']').parse().ok(),
            "",
        ),
        _ => (table, index, key),
    };
    let mut current = String::new();
    let mut seen = 0usize;
    let mut table_line = None;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if let Some(header) = trimmed.strip_prefix('[') {
            let array = header.starts_with('[');
            current = header
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_owned();
            if current == table {
                let wanted = index.is_none_or(|i| array && seen == i);
                if array {
                    seen += 1;
                }
                if wanted {
                    table_line = Some((n + 1, line.find('[').unwrap_or(0) + 1));
                    if key.is_empty() {
                        return table_line;
                    }
                } else if table_line.is_some() {
                    break;
                }
            } else if table_line.is_some() {
                break;
            }
            continue;
        }
        let in_table = if table.is_empty() {
            current.is_empty()
        } else {
            table_line.is_some() && current == table
        };
        if in_table
            && !key.is_empty()
            && let Some(rest) = trimmed.strip_prefix(key)
            && rest.trim_start().starts_with('=')
        {
            return Some((n + 1, line.find(key).unwrap_or(0) + 1));
        }
    }
    if table_line.is_none() && table.is_empty() {
        // A top-level path that is a table: its first header.
        let header = format!("[{key}");
        return text
            .lines()
            .position(|l| l.trim_start().starts_with(&header))
            .map(|n| (n + 1, 1));
    }
    table_line
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

fn check(raw: RawManifest) -> Result<Manifest, Refused> {
    crate::names::check("name", &raw.name).map_err(invalid)?;
    if raw.version == 0 {
        return Err(invalid("version: must be 1 or more"));
    }
    let trigger = match (raw.trigger.batch, raw.trigger.dwell, raw.trigger.schedule) {
        (Some(b), None, None) => Trigger::Batch(check_batch(b)?),
        (None, Some(d), None) => Trigger::Dwell(check_dwell(d)?),
        (None, None, Some(s)) => Trigger::Schedule(check_schedule(s)?),
        (None, None, None) => {
            return Err(invalid(
                "trigger: one of [trigger.batch], [trigger.dwell] or [trigger.schedule] is required",
            ));
        }
        _ => {
            return Err(invalid(
                "trigger: a rule has exactly one trigger; found more than one of batch, dwell, schedule",
            ));
        }
    };
    Ok(Manifest {
        name: raw.name,
        version: raw.version,
        trigger,
        limits: check_limits(raw.limits)?,
        retry: check_retry(raw.retry)?,
        concurrency: Concurrency {
            max: count_within(
                "concurrency.max",
                raw.concurrency.max,
                1..=64,
                Concurrency::default().max,
            )?,
        },
        outputs: OutputPolicy {
            max_hops: count_within(
                "outputs.max_hops",
                raw.outputs.max_hops,
                1..=1000,
                DEFAULT_MAX_HOPS,
            )?,
        },
        fields: check_fields(&raw.select.fields)?,
        select: check_select(raw.select)?,
    })
}

fn check_fields(fields: &[String]) -> Result<Vec<String>, Refused> {
    sluice_fields::Projection::new(fields).map_err(|e| invalid(format!("select.fields: {e}")))?;
    Ok(fields.to_vec())
}

fn check_batch(b: RawBatch) -> Result<BatchTrigger, Refused> {
    if !(1..=MAX_COUNT).contains(&b.count) {
        return Err(invalid(format!(
            "trigger.batch.count: {} is outside 1..={MAX_COUNT}",
            b.count
        )));
    }
    let window = within("trigger.batch.window", &b.window, BATCH_WINDOW)?;
    let max_wait = match &b.max_wait {
        None => None,
        Some(written) if !b.debounce => {
            return Err(Refused {
                message: format!(
                    "trigger.batch.max_wait: {:?} is only allowed with debounce = true (without it a window already fires `window` after it opens)",
                    written.get_ref().text
                ),
                span: Some(written.span()),
            });
        }
        Some(written) => {
            let max_wait = within("trigger.batch.max_wait", written, BATCH_WINDOW)?;
            if max_wait < window {
                return Err(Refused {
                    message: format!(
                        "trigger.batch.max_wait: {:?} is shorter than trigger.batch.window ({:?})",
                        written.get_ref().text,
                        b.window.get_ref().text
                    ),
                    span: Some(written.span()),
                });
            }
            Some(max_wait)
        }
    };
    Ok(BatchTrigger {
        count: b.count,
        window,
        expire: b.expire,
        debounce: b.debounce,
        max_wait,
    })
}

fn check_dwell(d: RawDwell) -> Result<DwellTrigger, Refused> {
    if d.reactions.is_empty() {
        return Err(invalid(
            "trigger.dwell.reactions: at least one reaction is required",
        ));
    }
    let mut labels = BTreeSet::new();
    let mut reactions = Vec::new();
    for (i, r) in d.reactions.into_iter().enumerate() {
        let at = format!("trigger.dwell.reactions[{i}]");
        if r.label.trim().is_empty() {
            return Err(invalid(format!("{at}.label: must not be empty")));
        }
        if !labels.insert(r.label.clone()) {
            return Err(invalid(format!(
                "{at}.label: {:?} is used by another reaction",
                r.label
            )));
        }
        let when = match (&r.after, &r.every) {
            (Some(a), None) => ReactionTime::After(within(&format!("{at}.after"), a, DWELL_AGE)?),
            (None, Some(e)) => ReactionTime::Every(within(&format!("{at}.every"), e, DWELL_EVERY)?),
            _ => {
                return Err(invalid(format!(
                    "{at}: give exactly one of `after` or `every`"
                )));
            }
        };
        reactions.push(Reaction {
            label: r.label,
            when,
        });
    }
    let max_dwell = d
        .max_dwell
        .as_ref()
        .map(|m| within("trigger.dwell.max_dwell", m, DWELL_AGE))
        .transpose()?;
    Ok(DwellTrigger {
        reactions,
        max_dwell,
    })
}

/// Parse a cron expression of 5 fields (minute first) or 6–7 (seconds
/// first, optional year); the error says what is wrong.
pub fn parse_cron(text: &str) -> Result<cron::Schedule, String> {
    // The cron crate wants a seconds field; five-field expressions get one.
    let fields = text.split_whitespace().count();
    let expr = match fields {
        5 => format!("0 {text}"),
        6 | 7 => text.to_owned(),
        _ => {
            return Err(format!(
                "{text:?} has {fields} field{}; expected 5 (min hour day month weekday) or 6 (with seconds first)",
                if fields == 1 { "" } else { "s" }
            ));
        }
    };
    expr.parse::<cron::Schedule>().map_err(|e| {
        // The parser's message ends with the reason, after a caret line.
        let text_err = e.to_string();
        let reason = text_err
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_owned();
        format!("{text:?} is not a cron expression: {reason}")
    })
}

fn check_schedule(s: RawSchedule) -> Result<ScheduleTrigger, Refused> {
    parse_cron(&s.cron).map_err(|e| invalid(format!("trigger.schedule.cron: {e}")))?;
    s.timezone.parse::<chrono_tz::Tz>().map_err(|_| {
        invalid(format!(
            "trigger.schedule.timezone: {:?} is not an IANA time zone (e.g. \"UTC\", \"Europe/Berlin\")",
            s.timezone
        ))
    })?;
    Ok(ScheduleTrigger {
        cron: s.cron,
        timezone: s.timezone,
        overlap: s.overlap,
        catch_up: s.catch_up,
        catch_up_window: s
            .catch_up_window
            .as_ref()
            .map(|w| within("trigger.schedule.catch_up_window", w, CATCH_UP_WINDOW))
            .transpose()?
            .unwrap_or(DEFAULT_CATCH_UP_WINDOW),
        skip_empty: s.skip_empty,
    })
}

fn check_limits(raw: RawLimits) -> Result<Limits, Refused> {
    let mut limits = Limits::default();
    if let Some(fuel) = raw.fuel {
        if fuel == 0 {
            return Err(invalid("limits.fuel: must be more than zero"));
        }
        limits.fuel = fuel;
    }
    if let Some(deadline) = &raw.deadline {
        limits.deadline = within("limits.deadline", deadline, DEADLINE)?;
    }
    if let Some(memory) = raw.memory {
        if memory < (1 << 20) {
            return Err(invalid(format!(
                "limits.memory: {memory} bytes is below the 1MiB minimum"
            )));
        }
        limits.memory_bytes = memory;
    }
    if let Some(n) = raw.max_emits {
        limits.max_emits = n;
    }
    if let Some(n) = raw.max_emit_bytes {
        limits.max_emit_bytes = usize::try_from(n).unwrap_or(usize::MAX);
    }
    if let Some(n) = raw.max_batch {
        if !(1..=MAX_COUNT as usize).contains(&n) {
            return Err(invalid(format!(
                "limits.max_batch: {n} is outside 1..={MAX_COUNT}"
            )));
        }
        limits.max_batch = n;
    }
    if let Some(n) = raw.max_log_bytes {
        limits.max_log_bytes = usize::try_from(n).unwrap_or(usize::MAX);
    }
    Ok(limits)
}

fn check_retry(raw: RawRetry) -> Result<RetryPolicy, Refused> {
    let mut retry = RetryPolicy::default();
    if let Some(n) = raw.max_attempts {
        if !(1..=100).contains(&n) {
            return Err(invalid(format!(
                "retry.max_attempts: {n} is outside 1..=100"
            )));
        }
        retry.max_attempts = n;
    }
    if let Some(b) = &raw.backoff {
        retry.backoff = within("retry.backoff", b, BACKOFF)?;
    }
    if let Some(b) = &raw.max_backoff {
        retry.max_backoff = within("retry.max_backoff", b, MAX_BACKOFF)?;
    }
    if retry.max_backoff < retry.backoff {
        return Err(invalid(format!(
            "retry.max_backoff: {} is shorter than retry.backoff ({})",
            humantime::format_duration(retry.max_backoff),
            humantime::format_duration(retry.backoff)
        )));
    }
    if let Some(n) = raw.suspend_after {
        if n == 0 {
            return Err(invalid("retry.suspend_after: must be 1 or more"));
        }
        retry.suspend_after = n;
    }
    Ok(retry)
}

fn check_select(raw: RawSelect) -> Result<SelectPolicy, Refused> {
    let default = SelectPolicy::default();
    Ok(SelectPolicy {
        on_poison: raw.on_poison.unwrap_or(default.on_poison),
        attempts: count_within("select.attempts", raw.attempts, 1..=100, default.attempts)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triggers_are_said_in_words() {
        let said = |text: &str| {
            Manifest::parse(&format!("name = \"x\"\nversion = 1\n{text}"))
                .unwrap()
                .trigger
                .describe()
        };
        assert_eq!(
            said("[trigger.batch]\ncount = 10\nwindow = \"1h\"\nexpire = \"discard\"\n"),
            "batches of 10 per partition; a window still short 1h after it opens is discarded"
        );
        assert_eq!(
            said(
                "[trigger.batch]\ncount = 5\nwindow = \"10m\"\ndebounce = true\nmax_wait = \"1h\"\n"
            ),
            "batches of 5 per partition; a window still short 10m after its last event \
             (at most 1h after its first) fires what it has"
        );
        assert_eq!(
            said(
                "[trigger.dwell]\nmax_dwell = \"30d\"\n[[trigger.dwell.reactions]]\nlabel = \"idle\"\nafter = \"7d\"\n[[trigger.dwell.reactions]]\nlabel = \"nag\"\nevery = \"1d\"\n"
            ),
            "per partition, while a member: \"idle\" once after 7d, \"nag\" every 1d; members leave after 30d"
        );
        assert_eq!(
            said("[trigger.schedule]\ncron = \"0 * * * *\"\ntimezone = \"Europe/Berlin\"\n"),
            "on cron \"0 * * * *\" (Europe/Berlin); a tick is skipped while the previous one runs; missed ticks are skipped"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("32MiB"), Some(32 << 20));
        assert_eq!(parse_size("512 KiB"), Some(512 << 10));
        assert_eq!(parse_size("1_000"), Some(1000));
        assert_eq!(parse_size("2GB"), Some(2_000_000_000));
        assert_eq!(parse_size("3 parsecs"), None);
        assert_eq!(parse_size("MiB"), None);
    }

    #[test]
    fn fields_are_located() {
        let text = "name = \"x\"\n[trigger.dwell]\nmax_dwell = \"1d\"\n\n[[trigger.dwell.reactions]]\nlabel = \"a\"\n[[trigger.dwell.reactions]]\n  label = \"b\"\n[limits]\nfuel = 0\n";
        assert_eq!(locate(text, "name"), Some((1, 1)));
        assert_eq!(locate(text, "trigger.dwell.max_dwell"), Some((3, 1)));
        assert_eq!(
            locate(text, "trigger.dwell.reactions[1].label"),
            Some((8, 3))
        );
        assert_eq!(locate(text, "trigger.dwell.reactions[0]"), Some((5, 1)));
        assert_eq!(locate(text, "limits.fuel"), Some((10, 1)));
        assert_eq!(locate(text, "retry.backoff"), None);
        assert_eq!(
            locate(text, "limits.memory"),
            Some((9, 1)),
            "the table when the key is absent"
        );
    }

    #[test]
    fn parse_errors_are_named_by_path() {
        let text = "name = \"x\"\n[trigger.batch]\ncount = 1\nwindow = 5\ncont = 2\n\n[[trigger.dwell.reactions]]\nlabel = \"a\"\n[[trigger.dwell.reactions]]\nafter = \"soon\"\n";
        let at = |needle: &str| {
            let start = text.find(needle).unwrap();
            path_at(text, &(start..start + needle.len()))
        };
        assert_eq!(at("5").as_deref(), Some("trigger.batch.window"));
        assert_eq!(
            at("cont").as_deref(),
            Some("trigger.batch"),
            "a key names its table"
        );
        assert_eq!(
            at("\"soon\"").as_deref(),
            Some("trigger.dwell.reactions[1].after")
        );
        assert_eq!(at("[trigger.batch]").as_deref(), Some("trigger.batch"));
        assert_eq!(at("name").as_deref(), None, "top-level keys have no table");
        assert_eq!(path_at(text, &(0..text.len())), None);
    }

    #[test]
    fn durations_are_bounded_and_whole_milliseconds() {
        let written = |text: &str| {
            Spanned::new(
                0..1,
                Written {
                    value: humantime::parse_duration(text).unwrap(),
                    text: text.into(),
                },
            )
        };
        let check = |text: &str| within("f", &written(text), BATCH_WINDOW).map_err(|e| e.message);
        assert_eq!(check("1ms"), Ok(Duration::from_millis(1)));
        assert_eq!(check("366d"), Ok(Duration::from_secs(366 * 86_400)));
        assert_eq!(
            check("367d"),
            Err("f: \"367d\" is outside 1ms..=366d".into())
        );
        assert_eq!(
            check("999us"),
            Err("f: \"999us\" is outside 1ms..=366d".into())
        );
        assert!(
            check("2ms 1ns")
                .unwrap_err()
                .contains("whole number of milliseconds")
        );
    }

    #[test]
    fn positions() {
        assert_eq!(line_col("a\nbc\nd", 3), (2, 2));
        assert_eq!(line_col("abc", 0), (1, 1));
    }
}
