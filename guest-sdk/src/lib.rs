//! Write Sluice rules in Rust.
//!
//! A rule is a type that implements [`Rule`] — `filter`, `partition_key`,
//! `membership` (all with defaults) and `handle_batch` — exported with
//! [`export_rule!`]. Build it for `wasm32-wasip2` and deploy it with a
//! `rule.toml` that says which trigger runs it.
//!
//! ```ignore
//! use sluice_sdk::prelude::*;
//!
//! #[derive(Deserialize)]
//! #[serde(crate = "sluice_sdk::serde")]
//! struct Merged<'a> {
//!     // Cow borrows when the string has no escapes and copies when it has;
//!     // a plain `&'a str` would fail on `"acme/\u00e9t\u00e9"`.
//!     #[serde(borrow)]
//!     repo: Cow<'a, str>,
//! }
//!
//! struct PrDigest;
//!
//! impl Rule for PrDigest {
//!     fn filter(event: &Event<'_>) -> bool {
//!         event.kind() == "pull_request.merged"
//!     }
//!     fn partition_key(event: &Event<'_>) -> Option<String> {
//!         event.json::<Merged>().ok().map(|m| m.repo.into_owned())
//!     }
//!     fn handle_batch(batch: &Batch<'_>) -> Result<Vec<Emit>, RuleError> {
//!         Ok(vec![Emit::json("digest", &json!({ "merged": batch.events().len() }))?])
//!     }
//! }
//!
//! export_rule!(PrDigest);
//! ```
//!
//! Rules are stateless: the engine may run each call on a fresh instance,
//! and state that must survive belongs to the engine's triggers. The engine
//! calls the batched `select` export on the hot path; this crate implements
//! it with your per-event methods, so you never see the packed format.

#![deny(missing_docs)]

use std::marker::PhantomData;

pub use serde;
pub use serde_json;

/// The error [`Event::json`] returns when a payload does not parse into the
/// requested type.
///
/// Its message is serde_json's, plus what to do when the cause is a common
/// pattern that cannot work on every payload: a borrowed `&str` field meeting
/// a string with JSON escapes (`\"`, `\n`, `\u00e9`), which can only be
/// decoded into a string of its own.
#[derive(Debug)]
pub struct JsonError(serde_json::Error);

impl JsonError {
    /// The underlying serde_json error (line, column, category).
    pub fn serde(&self) -> &serde_json::Error {
        &self.0
    }

    /// True when a borrowed `&str` met a string with escapes.
    pub fn is_borrowed_escape(&self) -> bool {
        // serde_json reports it only through the message text: a decoded
        // string offered where a borrowed one was expected. (A number
        // there is a plain type error and gets no hint.)
        let message = self.0.to_string();
        message.starts_with("invalid type: string ")
            && message.contains(", expected a borrowed string")
    }
}

impl From<serde_json::Error> for JsonError {
    fn from(e: serde_json::Error) -> Self {
        Self(e)
    }
}

impl std::fmt::Display for JsonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        if self.is_borrowed_escape() {
            write!(
                f,
                " (a `&str` field borrows from the payload and cannot hold a string \
                 with JSON escapes such as \\\" \\n \\u00e9; declare the field as \
                 `Cow<'a, str>` with `#[serde(borrow)]`, or as `String`)"
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for JsonError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

#[doc(hidden)]
pub mod __private {
    /// The raw bindings of the `sluice:rule` world; not part of the API.
    #[allow(missing_docs, unused_qualifications, clippy::all)]
    pub mod bindings {
        wit_bindgen::generate!({
            world: "projected-rule",
            path: "../wit",
            pub_export_macro: true,
            export_macro_name: "__export_rule",
            default_bindings_module: "sluice_sdk::__private::bindings",
        });
    }

    pub use super::Adapter;
}

use __private::bindings as b;
use b::sluice::rule::host as wit_host;
use b::sluice::rule::types as wit;

/// Everything a rule usually needs, in one import.
pub mod prelude {
    pub use crate::serde::{Deserialize, Serialize};
    pub use crate::serde_json::json;
    pub use crate::{
        Batch, Emit, Event, Field, Membership, Placement, Reason, Rule, RuleError, export_rule, log,
    };
    pub use std::borrow::Cow;
}

/// What a JSON pointer finds in a payload: [`Event::field`].
pub use sluice_fields::Value as Field;

/// One event, borrowed from the engine's call.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    seq: u64,
    time: i64,
    id: &'a [u8],
    source: &'a [u8],
    kind: &'a [u8],
    payload: &'a [u8],
    /// Set when the engine sent the declared fields instead of the
    /// payload (`select` under `[select] fields`): the pack and the event's
    /// index in it.
    projected: Option<(&'a wit::ProjectedPack, usize)>,
}

/// Text fields are kept as bytes and checked as UTF-8 only when read, so a
/// filter that looks at `kind` never pays for validating the payload.
fn text<'a>(field: &'static str, bytes: &'a [u8]) -> &'a str {
    match std::str::from_utf8(bytes) {
        Ok(s) => s,
        // The engine only sends UTF-8; anything else is a broken host.
        Err(e) => panic!("sluice: event {field} is not UTF-8: {e}"),
    }
}

impl<'a> Event<'a> {
    fn from_wit(e: &'a wit::Event) -> Self {
        Self {
            seq: e.seq,
            time: e.time,
            id: e.id.as_bytes(),
            source: e.source.as_bytes(),
            kind: e.kind.as_bytes(),
            payload: e.payload.as_bytes(),
            projected: None,
        }
    }

    /// Event `i` of a pack (see `event-pack` in the WIT for the layout).
    fn from_pack(pack: &'a wit::EventPack, i: usize) -> Self {
        Self {
            seq: pack.seqs[i],
            time: pack.times[i],
            id: slice(&pack.ends, &pack.text, 4 * i),
            source: slice(&pack.ends, &pack.text, 4 * i + 1),
            kind: slice(&pack.ends, &pack.text, 4 * i + 2),
            payload: slice(&pack.ends, &pack.text, 4 * i + 3),
            projected: None,
        }
    }

    /// Event `i` of a projected pack (see `projected-pack` in the WIT).
    fn from_projected(pack: &'a wit::ProjectedPack, i: usize) -> Self {
        let stride = 3 + pack.fields.len();
        Self {
            seq: pack.seqs[i],
            time: pack.times[i],
            id: slice(&pack.ends, &pack.text, stride * i),
            source: slice(&pack.ends, &pack.text, stride * i + 1),
            kind: slice(&pack.ends, &pack.text, stride * i + 2),
            payload: &[],
            projected: Some((pack, i)),
        }
    }

    /// Position in the tenant's log (1-based, gap-free).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// When the event happened, in milliseconds since the Unix epoch.
    pub fn time(&self) -> i64 {
        self.time
    }

    /// The idempotency key.
    pub fn id(&self) -> &'a str {
        text("id", self.id)
    }

    /// Who sent the event; `rule:<name>` for rule outputs.
    pub fn source(&self) -> &'a str {
        text("source", self.source)
    }

    /// What happened.
    pub fn kind(&self) -> &'a str {
        text("kind", self.kind)
    }

    /// The payload, a JSON object, as text.
    ///
    /// Not available to `filter`, `partition_key`, `membership` and
    /// `select` when `rule.toml` declares `[select] fields`: the engine then
    /// sends only those fields (read them with [`field`](Self::field)), and
    /// reading the payload panics with a message that says so.
    pub fn payload(&self) -> &'a str {
        self.whole_payload();
        text("payload", self.payload)
    }

    /// Panics, saying why, where the engine sent fields instead.
    fn whole_payload(&self) {
        if self.projected.is_some() {
            panic!(
                "sluice: event {} has no payload here: rule.toml declares [select] fields, so \
                 select sees only those; read them with event.field(\"/...\")",
                self.id()
            );
        }
    }

    /// The value a JSON pointer (RFC 6901, e.g. `"/repo"` or
    /// `"/pull_request/number"`) finds in the payload, typed.
    ///
    /// Under `[select] fields` in `rule.toml` the engine has parsed the
    /// payload already and this reads its answer; the pointer must be one
    /// of the declared fields (else it panics, naming it). Anywhere else
    /// (a handler, a rule without `fields`) it reads the payload, in one
    /// pass that skips everything the pointer does not lead to. Both give
    /// the same value.
    ///
    /// ```ignore
    /// fn partition_key(event: &Event<'_>) -> Option<String> {
    ///     event.field("/repo").as_str().map(str::to_owned)
    /// }
    /// ```
    pub fn field(&self, pointer: &str) -> Field<'a> {
        match self.projected {
            Some((pack, i)) => projected_field(pack, i, pointer),
            None => {
                let projection = sluice_fields::Projection::new(&[pointer])
                    .unwrap_or_else(|e| panic!("sluice: event.field: {e}"));
                let mut out = Vec::with_capacity(1);
                // The engine sends JSON objects only.
                match projection.project(self.payload(), &mut out) {
                    Ok(()) => out.pop().unwrap_or_default(),
                    Err(_) => Field::Absent,
                }
            }
        }
    }

    /// The payload parsed into `T`.
    ///
    /// `T` may borrow from the payload to avoid copying, but only through
    /// `Cow<'a, str>` fields marked `#[serde(borrow)]`: they borrow when
    /// the string has no escapes and copy when it has. A plain `&'a str`
    /// field fails on a string with escapes (`"say \"hi\""`, `"caf\u00e9"`),
    /// and the error says so.
    pub fn json<T: serde::Deserialize<'a>>(&self) -> Result<T, JsonError> {
        self.whole_payload();
        serde_json::from_slice(self.payload).map_err(JsonError)
    }
}

/// Bytes `k` of a pack's text: from the end of field `k - 1` to `ends[k]`.
fn slice<'a>(ends: &[u32], text: &'a [u8], k: usize) -> &'a [u8] {
    let start = if k == 0 { 0 } else { ends[k - 1] as usize };
    let end = ends[k] as usize;
    match text.get(start..end) {
        Some(bytes) => bytes,
        None => panic!("sluice: event field {start}..{end} outside the pack"),
    }
}

/// Field `pointer` of event `i` of a projected pack.
fn projected_field<'a>(pack: &'a wit::ProjectedPack, i: usize, pointer: &str) -> Field<'a> {
    let n = pack.fields.len();
    let Some(j) = pack.fields.iter().position(|f| f == pointer) else {
        panic!(
            "sluice: event.field({pointer:?}): rule.toml declares [select] fields = {:?}; \
             add {pointer:?} there to read it in select",
            pack.fields
        );
    };
    let slot = n * i + j;
    let bytes = slice(&pack.ends, &pack.text, (3 + n) * i + 3 + j);
    match pack.kinds[slot] {
        wit::FieldKind::Absent => Field::Absent,
        wit::FieldKind::Null => Field::Null,
        wit::FieldKind::Boolean => Field::Bool(pack.integers[slot] != 0),
        wit::FieldKind::Integer => Field::Int(pack.integers[slot]),
        wit::FieldKind::Float => Field::Float(pack.floats[slot]),
        wit::FieldKind::Text => Field::Text(std::borrow::Cow::Borrowed(text("field", bytes))),
        wit::FieldKind::Json => Field::Json(text("field", bytes)),
    }
}

/// What an event does to its partition's membership (dwell rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// Start a membership (no-op when already a member).
    Enter,
    /// End the membership.
    Leave,
    /// Re-anchor the membership clock at now: heartbeats, absence.
    Refresh,
    /// Leave the membership as it is.
    Ignore,
}

impl From<Membership> for wit::Membership {
    fn from(m: Membership) -> Self {
        match m {
            Membership::Enter => wit::Membership::Enter,
            Membership::Leave => wit::Membership::Leave,
            Membership::Refresh => wit::Membership::Refresh,
            Membership::Ignore => wit::Membership::Ignore,
        }
    }
}

/// Where an accepted event goes: see [`Rule::select`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The partition key; `None` for the rule's global partition.
    pub partition: Option<String>,
    /// What the event does to the partition's membership (dwell rules).
    pub membership: Membership,
}

/// Why the handler runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// A batch reached the rule's `count`.
    CountReached,
    /// A batch window elapsed before `count` was reached.
    WindowExpired,
    /// A dwell reaction is due.
    Dwell {
        /// The reaction's label from the manifest.
        label: String,
        /// 0 for `after`; intervals stayed for `every`.
        ordinal: u64,
        /// When the membership clock was last anchored (ms).
        member_since: i64,
        /// Counts the partition's memberships, from 1.
        epoch: u64,
    },
    /// A schedule tick.
    Schedule {
        /// The tick this fire stands for (ms).
        tick: i64,
        /// True when the tick was missed while the engine was down.
        catch_up: bool,
    },
    /// The rule was undeployed with `drain = fire`.
    Drained,
}

impl Reason {
    /// The reason's case name in the WIT: `count-reached`,
    /// `window-expired`, `dwell`, `schedule` or `drained` — the same word
    /// in every language a rule is written in.
    pub fn name(&self) -> &'static str {
        match self {
            Reason::CountReached => "count-reached",
            Reason::WindowExpired => "window-expired",
            Reason::Dwell { .. } => "dwell",
            Reason::Schedule { .. } => "schedule",
            Reason::Drained => "drained",
        }
    }
}

impl From<&wit::Reason> for Reason {
    fn from(r: &wit::Reason) -> Self {
        match r {
            wit::Reason::CountReached => Reason::CountReached,
            wit::Reason::WindowExpired => Reason::WindowExpired,
            wit::Reason::Dwell(d) => Reason::Dwell {
                label: d.label.clone(),
                ordinal: d.ordinal,
                member_since: d.member_since,
                epoch: d.epoch,
            },
            wit::Reason::Schedule(s) => Reason::Schedule {
                tick: s.tick,
                catch_up: s.catch_up,
            },
            wit::Reason::Drained => Reason::Drained,
        }
    }
}

/// One invocation of the handler.
#[derive(Debug)]
pub struct Batch<'a> {
    fire_id: &'a str,
    rule: &'a str,
    partition: Option<&'a str>,
    reason: Reason,
    attempt: u32,
    events: Vec<Event<'a>>,
}

impl<'a> Batch<'a> {
    /// Deterministic id of this fire: the same on every retry.
    pub fn fire_id(&self) -> &'a str {
        self.fire_id
    }

    /// The rule's name.
    pub fn rule(&self) -> &'a str {
        self.rule
    }

    /// The partition key; `None` for the global partition.
    pub fn partition(&self) -> Option<&'a str> {
        self.partition
    }

    /// Why the handler runs.
    pub fn reason(&self) -> &Reason {
        &self.reason
    }

    /// 1 on the first try, 2, 3, … on retries.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The events, in log order.
    pub fn events(&self) -> &[Event<'a>] {
        &self.events
    }
}

/// An event the handler emits; the engine appends it to the log with source
/// `rule:<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emit {
    kind: String,
    payload: String,
}

impl Emit {
    /// An event of `kind` whose payload is `payload` serialised as JSON. The
    /// engine rejects payloads that are not JSON objects.
    pub fn json<T: serde::Serialize + ?Sized>(
        kind: impl Into<String>,
        payload: &T,
    ) -> Result<Self, RuleError> {
        Ok(Self {
            kind: kind.into(),
            payload: serde_json::to_string(payload)
                .map_err(|e| RuleError::Fatal(format!("cannot serialise emit payload: {e}")))?,
        })
    }

    /// An event whose payload is already JSON text (an object).
    pub fn raw(kind: impl Into<String>, payload: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            payload: payload.into(),
        }
    }

    /// The event kind.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The payload, as JSON text.
    pub fn payload(&self) -> &str {
        &self.payload
    }
}

/// How a handler fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleError {
    /// Try again later, with backoff.
    Retryable(String),
    /// Do not retry; the fire goes to the dead-letter list.
    Fatal(String),
}

impl RuleError {
    /// A retryable error.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self::Retryable(message.into())
    }

    /// A fatal error.
    pub fn fatal(message: impl Into<String>) -> Self {
        Self::Fatal(message.into())
    }
}

/// A payload that does not parse will not parse on a retry either.
impl From<JsonError> for RuleError {
    fn from(e: JsonError) -> Self {
        Self::Fatal(format!("bad JSON: {e}"))
    }
}

/// So that `?` works on serde_json's own functions too, with the same hint.
impl From<serde_json::Error> for RuleError {
    fn from(e: serde_json::Error) -> Self {
        JsonError(e).into()
    }
}

impl std::fmt::Display for RuleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RuleError::Retryable(m) => write!(f, "retryable: {m}"),
            RuleError::Fatal(m) => write!(f, "fatal: {m}"),
        }
    }
}

impl std::error::Error for RuleError {}

/// A rule's logic. Every method is an associated function: a rule keeps no
/// state between calls.
pub trait Rule {
    /// Does this event concern the rule? Default: every event does.
    fn filter(event: &Event<'_>) -> bool {
        let _ = event;
        true
    }

    /// Which partition the event belongs to. Default: `None`, the rule's
    /// single global partition.
    fn partition_key(event: &Event<'_>) -> Option<String> {
        let _ = event;
        None
    }

    /// What the event does to its partition's membership (dwell rules
    /// only). Default: [`Membership::Enter`].
    fn membership(event: &Event<'_>) -> Membership {
        let _ = event;
        Membership::Enter
    }

    /// `filter`, `partition_key` and `membership` in one step: `None` when
    /// the event does not concern the rule. The default calls the three
    /// methods; override it to parse a payload once instead of twice.
    fn select(event: &Event<'_>) -> Option<Placement> {
        if !Self::filter(event) {
            return None;
        }
        Some(Placement {
            partition: Self::partition_key(event),
            membership: Self::membership(event),
        })
    }

    /// The rule's action on a ready batch: the events to emit, or an error.
    fn handle_batch(batch: &Batch<'_>) -> Result<Vec<Emit>, RuleError>;
}

/// Maps a [`Rule`] onto the WIT exports; used by [`export_rule!`].
#[doc(hidden)]
pub struct Adapter<R>(PhantomData<R>);

impl<R> std::fmt::Debug for Adapter<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Adapter")
    }
}

impl<R: Rule> b::Guest for Adapter<R> {
    fn filter(event: wit::Event) -> bool {
        R::filter(&Event::from_wit(&event))
    }

    fn partition_key(event: wit::Event) -> Option<String> {
        R::partition_key(&Event::from_wit(&event))
    }

    fn membership(event: wit::Event) -> wit::Membership {
        R::membership(&Event::from_wit(&event)).into()
    }

    fn select(pack: wit::EventPack) -> wit::Selection {
        selection::<R>(checked(&pack), |i| Event::from_pack(&pack, i))
    }

    fn handle_batch(batch: wit::Batch) -> Result<Vec<wit::Emit>, wit::RuleError> {
        handle(&batch, R::handle_batch)
    }
}

impl<R: Rule> b::exports::sluice::rule::projection::Guest for Adapter<R> {
    fn select(pack: wit::ProjectedPack) -> wit::Selection {
        let n = pack.seqs.len();
        let per = pack.fields.len();
        assert!(
            pack.times.len() == n
                && pack.ends.len() == (3 + per) * n
                && pack.kinds.len() == per * n
                && pack.integers.len() == per * n
                && pack.floats.len() == per * n,
            "sluice: malformed projected pack ({n} seqs, {per} fields)"
        );
        selection::<R>(n, |i| Event::from_projected(&pack, i))
    }
}

/// The number of events in `pack`, whose columns must agree (a pack that
/// does not add up is a broken host).
fn checked(pack: &wit::EventPack) -> usize {
    let n = pack.seqs.len();
    assert!(
        pack.times.len() == n && pack.ends.len() == 4 * n,
        "sluice: malformed event pack ({n} seqs, {} times, {} ends)",
        pack.times.len(),
        pack.ends.len()
    );
    n
}

/// The verdicts of `R::select` on `n` events.
fn selection<'a, R: Rule>(n: usize, event: impl Fn(usize) -> Event<'a>) -> wit::Selection {
    let mut verdicts = Vec::with_capacity(n);
    let mut partitions = Vec::new();
    for i in 0..n {
        match R::select(&event(i)) {
            None => verdicts.push(wit::Verdict::Skip),
            Some(place) => {
                verdicts.push(match place.membership {
                    Membership::Enter => wit::Verdict::Enter,
                    Membership::Leave => wit::Verdict::Leave,
                    Membership::Refresh => wit::Verdict::Refresh,
                    Membership::Ignore => wit::Verdict::Ignore,
                });
                partitions.push(place.partition);
            }
        }
    }
    wit::Selection {
        verdicts,
        partitions,
    }
}

fn handle(
    batch: &wit::Batch,
    handler: impl FnOnce(&Batch<'_>) -> Result<Vec<Emit>, RuleError>,
) -> Result<Vec<wit::Emit>, wit::RuleError> {
    let view = Batch {
        fire_id: &batch.fire_id,
        rule: &batch.rule,
        partition: batch.partition.as_deref(),
        reason: Reason::from(&batch.reason),
        attempt: batch.attempt,
        events: (0..checked(&batch.events))
            .map(|i| Event::from_pack(&batch.events, i))
            .collect(),
    };
    match handler(&view) {
        Ok(emits) => Ok(emits
            .into_iter()
            .map(|e| wit::Emit {
                kind: e.kind,
                payload: e.payload,
            })
            .collect()),
        Err(RuleError::Retryable(m)) => Err(wit::RuleError::Retryable(m)),
        Err(RuleError::Fatal(m)) => Err(wit::RuleError::Fatal(m)),
    }
}

/// Export a type implementing [`Rule`] as this component's rule.
///
/// Use it once per component. A type that does not implement [`Rule`] is a
/// compile error naming the missing trait; using the macro twice is a
/// compile error (duplicate exports).
#[macro_export]
macro_rules! export_rule {
    ($rule:ty) => {
        const _: () = {
            const fn assert_implements_rule<T: $crate::Rule>() {}
            assert_implements_rule::<$rule>();
        };
        #[doc(hidden)]
        type __SluiceRuleExport = $crate::__private::Adapter<$rule>;
        $crate::__private::bindings::__export_rule!(
            __SluiceRuleExport with_types_in $crate::__private::bindings
        );
    };
}

/// Write to the engine's logs, tagged with the tenant and rule.
pub mod log {
    use super::wit_host::{self, Level};

    /// Log at trace level.
    pub fn trace(message: impl AsRef<str>) {
        wit_host::log(Level::Trace, message.as_ref());
    }

    /// Log at debug level.
    pub fn debug(message: impl AsRef<str>) {
        wit_host::log(Level::Debug, message.as_ref());
    }

    /// Log at info level.
    pub fn info(message: impl AsRef<str>) {
        wit_host::log(Level::Info, message.as_ref());
    }

    /// Log at warn level.
    pub fn warn(message: impl AsRef<str>) {
        wit_host::log(Level::Warn, message.as_ref());
    }

    /// Log at error level.
    pub fn error(message: impl AsRef<str>) {
        wit_host::log(Level::Error, message.as_ref());
    }
}

/// The engine's clock in milliseconds since the Unix epoch: virtual in
/// tests, so a rule that reads the time stays deterministic.
pub fn now() -> i64 {
    wit_host::now()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_fields_are_sliced_and_parsed() {
        let pack = wit::EventPack {
            seqs: vec![5, 6],
            times: vec![42, 43],
            ends: vec![4, 7, 11, 36, 38, 39, 40, 42],
            text: br#"id-1srckind{"repo":"acme/api","n":3}i2sk{}"#.to_vec(),
        };
        let event = Event::from_pack(&pack, 0);
        assert_eq!(
            (event.id(), event.source(), event.kind()),
            ("id-1", "src", "kind")
        );
        #[derive(serde::Deserialize)]
        struct P<'a> {
            repo: &'a str,
            n: u32,
        }
        let p: P<'_> = event.json().unwrap();
        assert_eq!(
            (p.repo, p.n, event.seq(), event.time()),
            ("acme/api", 3, 5, 42)
        );
        let second = Event::from_pack(&pack, 1);
        assert_eq!(
            (
                second.id(),
                second.source(),
                second.kind(),
                second.payload()
            ),
            ("i2", "s", "k", "{}")
        );
        assert_eq!((second.seq(), second.time()), (6, 43));
    }

    fn payload_event(payload: &[u8]) -> Event<'_> {
        Event {
            seq: 1,
            time: 0,
            id: b"e1",
            source: b"s",
            kind: b"k",
            payload,
            projected: None,
        }
    }

    #[test]
    fn projected_fields_read_like_the_payload() {
        // Two events, fields /repo and /n: the host's layout.
        let pack = wit::ProjectedPack {
            fields: vec!["/repo".into(), "/n".into()],
            seqs: vec![1, 2],
            times: vec![10, 20],
            ends: vec![2, 3, 4, 12, 12, 14, 15, 16, 16, 21],
            text: b"e1skacme/apie2sk[1,2]".to_vec(),
            kinds: vec![
                wit::FieldKind::Text,
                wit::FieldKind::Integer,
                wit::FieldKind::Absent,
                wit::FieldKind::Json,
            ],
            integers: vec![0, 3, 0, 0],
            floats: vec![0.0; 4],
        };
        let first = Event::from_projected(&pack, 0);
        assert_eq!((first.id(), first.kind(), first.seq()), ("e1", "k", 1));
        assert_eq!(first.field("/repo").as_str(), Some("acme/api"));
        assert_eq!(first.field("/n"), Field::Int(3));
        let second = Event::from_projected(&pack, 1);
        assert_eq!(second.field("/repo"), Field::Absent);
        assert_eq!(second.field("/n"), Field::Json("[1,2]"));
        // The same pointers on a whole payload give the same values.
        let whole = payload_event(br#"{"repo":"acme/api","n":3}"#);
        assert_eq!(whole.field("/repo"), first.field("/repo"));
        assert_eq!(whole.field("/n"), first.field("/n"));

        let undeclared = std::panic::catch_unwind(|| first.field("/other")).unwrap_err();
        let message = undeclared.downcast_ref::<String>().unwrap();
        assert!(message.contains(r#"add "/other" there"#), "{message}");
        let payload = std::panic::catch_unwind(|| first.payload()).unwrap_err();
        let message = payload.downcast_ref::<String>().unwrap();
        assert!(message.contains("declares [select] fields"), "{message}");
    }

    #[test]
    fn borrowed_str_meeting_an_escape_says_what_to_do() {
        #[derive(serde::Deserialize, Debug)]
        struct Borrowed<'a> {
            #[allow(dead_code)]
            title: &'a str,
        }
        #[derive(serde::Deserialize, Debug)]
        struct Owned<'a> {
            #[serde(borrow)]
            title: std::borrow::Cow<'a, str>,
            author: String,
        }
        let escaped = payload_event(
            br#"{"title":"say \"hi\" to caf\u00e9 \ud83d\ude80","author":"Zo\u00eb"}"#,
        );
        let err = escaped.json::<Borrowed<'_>>().unwrap_err();
        assert!(err.is_borrowed_escape(), "{err}");
        let message = err.to_string();
        assert!(message.starts_with("invalid type: string"), "{message}");
        assert!(
            message.contains("`Cow<'a, str>` with `#[serde(borrow)]`"),
            "{message}"
        );
        let fatal = RuleError::from(err);
        assert!(
            matches!(&fatal, RuleError::Fatal(m) if m.starts_with("bad JSON: ") && m.contains("String")),
            "{fatal}"
        );

        let owned: Owned<'_> = escaped.json().unwrap();
        assert_eq!(owned.title, "say \"hi\" to caf\u{e9} \u{1f680}");
        assert_eq!(owned.author, "Zo\u{eb}");
        // Without escapes, Cow borrows from the payload.
        let plain = payload_event(br#"{"title":"plain","author":"ana"}"#);
        let owned: Owned<'_> = plain.json().unwrap();
        assert!(matches!(owned.title, std::borrow::Cow::Borrowed("plain")));

        // Other errors carry no hint.
        let err = plain.json::<Borrowed<'_>>().map(|_| ()).and_then(|_| {
            payload_event(b"{\"title\":1}")
                .json::<Borrowed<'_>>()
                .map(|_| ())
        });
        let err = err.unwrap_err();
        assert!(
            !err.is_borrowed_escape() && !err.to_string().contains("Cow"),
            "{err}"
        );
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn reason_names_are_the_wit_case_names() {
        let names: Vec<_> = [
            Reason::CountReached,
            Reason::WindowExpired,
            Reason::Dwell {
                label: "l".into(),
                ordinal: 0,
                member_since: 0,
                epoch: 1,
            },
            Reason::Schedule {
                tick: 0,
                catch_up: false,
            },
            Reason::Drained,
        ]
        .iter()
        .map(Reason::name)
        .collect();
        assert_eq!(
            names,
            [
                "count-reached",
                "window-expired",
                "dwell",
                "schedule",
                "drained"
            ]
        );
    }

    #[test]
    fn emit_json_and_errors() {
        let e = Emit::json("digest", &serde_json::json!({"n": 1})).unwrap();
        assert_eq!((e.kind(), e.payload()), ("digest", r#"{"n":1}"#));
        let bad: Result<serde_json::Value, _> = serde_json::from_str("{");
        let err = RuleError::from(bad.unwrap_err());
        assert!(matches!(err, RuleError::Fatal(m) if m.starts_with("bad JSON")));
    }
}
