//! Triggers: what turns selected events (and the passing of time) into
//! fires. Every trigger kind runs on one core (see ARCHITECTURE.md):
//!
//! - [`core`]: the rule's durable cursor, its `select` with poison-event
//!   isolation, the per-partition state of its kind, the deadline index,
//!   and the step: effects computed without I/O, committed in one
//!   transaction, applied to memory only after the commit.
//! - [`fires`]: the fire pipeline every kind shares — the outbox, handler
//!   runs, outputs under the fire id, retries with backoff, dead letters,
//!   re-drive, the circuit breaker.
//! - [`batch`]: the batch kind — where a window decides to fire.
//! - [`dwell`]: the dwell kind — memberships, their reactions and
//!   `max_dwell`.
//! - [`schedule`]: the schedule kind — cron ticks (DST, catch-up, overlap)
//!   handing each partition the events kept since the previous tick.
//! - [`registry`]: every kind, registered in one place.
//! - [`state`]: the typed keys of a rule's durable state.
//! - [`timers`]: the deadline index.
//!
//! A kind is a [`Kind`]: given a partition's committed state and what the
//! current step already changed, it says what a kept event or a due
//! deadline does — changes, fires, engine records — and how its state is
//! written (only what changed) and read back. A kind with rule-wide
//! ticks (schedule) also says when they fall due ([`Kind::next_tick`],
//! [`Kind::due_ticks`]); the core keeps the schedule's position and calls
//! [`Kind::on_tick`] for every partition at each tick.

pub mod batch;
pub mod core;
pub mod dwell;
pub mod fires;
pub mod registry;
pub mod schedule;
pub mod state;
pub mod timers;

use serde::{Deserialize, Serialize};

pub use crate::verdict::Membership;

/// Why a fire happened, whatever the kind (the WIT's `reason`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FireReason {
    /// A batch reached `count`.
    CountReached,
    /// A batch window expired with `expire = fire`.
    WindowExpired,
    /// A dwell reaction fell due.
    Dwell {
        /// The reaction's label.
        label: String,
        /// Intervals stayed (`every`), 0 for `after`.
        ordinal: u64,
        /// When the membership was anchored (ms).
        member_since: i64,
        /// The membership's epoch.
        epoch: u64,
    },
    /// A schedule ticked.
    Schedule {
        /// The tick's time (ms).
        tick: i64,
        /// The tick was missed while the engine was down.
        catch_up: bool,
    },
    /// The rule was undeployed with `drain = fire`.
    Drained,
}

impl FireReason {
    /// The reason as the WIT spells it, for one-line reports.
    pub fn name(&self) -> &'static str {
        match self {
            FireReason::CountReached => "count-reached",
            FireReason::WindowExpired => "window-expired",
            FireReason::Dwell { .. } => "dwell",
            FireReason::Schedule { .. } => "schedule",
            FireReason::Drained => "drained",
        }
    }
}

/// A kept event as a kind sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kept {
    /// Its seq in the log.
    pub seq: u64,
    /// When the log took it (ingest time, ms): the time a kind reads.
    /// Windows open and memberships anchor here, whenever the engine got
    /// round to the event.
    pub at: i64,
    /// What it does to the partition's membership (dwell).
    pub membership: Membership,
}

/// A fire a kind asks for: the core gives it its id and puts it in the
/// outbox, in the same transaction as the change that caused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFire {
    /// What makes the fire unique within its partition (the fire id is
    /// derived from the rule, the partition and these parts).
    pub id_parts: Vec<String>,
    /// Why.
    pub reason: FireReason,
    /// Its events, in log order.
    pub seqs: Vec<u64>,
    /// Cancel the partition's fires still in the pipeline and hand their
    /// events to this one (`overlap = "cancel-previous"`).
    pub supersede: bool,
    /// The time the fire stands for, when not the time of what caused it
    /// (a dwell `every` reaction caught up after the rule was not running
    /// stands for its latest interval).
    pub at: Option<i64>,
}

impl NewFire {
    /// A fire that leaves earlier fires alone.
    pub fn new(id_parts: Vec<String>, reason: FireReason, seqs: Vec<u64>) -> Self {
        Self {
            id_parts,
            reason,
            seqs,
            supersede: false,
            at: None,
        }
    }
}

/// Something a kind did that is neither a fire nor a discard, reported on
/// the log as an engine record (and by `sluice test`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// `max_dwell` ended a membership.
    Left {
        /// The membership's epoch.
        epoch: u64,
        /// When it was last anchored (ms).
        member_since: i64,
        /// When it ended (ms): its anchor plus `max_dwell`.
        left_at: i64,
    },
    /// A tick did not fire for the partition: its previous tick's fire was
    /// still in the pipeline (`overlap`). Its events wait for the next
    /// tick.
    TickSkipped {
        /// The tick (ms).
        tick: i64,
        /// The overlap policy that skipped it.
        overlap: &'static str,
    },
    /// The rule kept an event for a partition it had no state for, and
    /// it already had its quota of partitions: the event was not added.
    OverQuota {
        /// The event.
        seq: u64,
        /// The quota (partitions with open state).
        max_partitions: usize,
    },
}

impl Note {
    /// The time the note stands for, when not the time it was noted at.
    pub fn at(&self) -> Option<i64> {
        match self {
            Note::Left { left_at, .. } => Some(*left_at),
            _ => None,
        }
    }

    /// The engine record's kind.
    pub fn record_kind(&self) -> &'static str {
        match self {
            Note::Left { .. } => "membership.expired",
            Note::TickSkipped { .. } => "tick.skipped",
            Note::OverQuota { .. } => "event.skipped",
        }
    }
}

/// A schedule tick as the core hands it to every partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    /// The tick's time (ms).
    pub at: i64,
    /// It was missed while the rule was not running (engine down, rule
    /// paused) and runs by the catch-up policy.
    pub catch_up: bool,
}

/// What is known about a partition's fires when a tick comes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InFlight {
    /// Fires of the partition in the pipeline (running or waiting).
    pub fires: usize,
    /// Of those, fires running now.
    pub running: usize,
    /// Partitions with a key that the rule has state for (does the rule
    /// partition?).
    pub keyed_partitions: usize,
}

/// The ticks due when a schedule's position moves from `last` to `now`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DueTicks {
    /// Ticks to run, in time order.
    pub run: Vec<Tick>,
    /// Ticks missed and not run (catch-up policy).
    pub missed: u64,
    /// The first missed tick.
    pub first_missed: Option<i64>,
    /// The last missed tick.
    pub last_missed: Option<i64>,
    /// More ticks were missed than were counted (`missed` is a lower
    /// bound).
    pub missed_more: bool,
    /// The schedule's new position: the latest tick at or before `now`.
    pub position: i64,
}

/// Events a kind drops without firing (a batch window with `expire =
/// discard`): reported on the log as `windows.discarded`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discard {
    /// Identity parts, as for a fire (the report names the would-be fire
    /// id).
    pub id_parts: Vec<String>,
    /// The events dropped.
    pub seqs: Vec<u64>,
}

/// What a kind's reaction to one event or deadline produced.
#[derive(Debug, Default)]
pub struct KindOut {
    /// Fires to create.
    pub fires: Vec<NewFire>,
    /// Events dropped.
    pub discards: Vec<Discard>,
    /// Other things worth a record.
    pub notes: Vec<Note>,
}

/// A write to a partition's durable state, relative to the partition's key
/// prefix (the core owns the prefix, so a kind cannot touch another
/// partition's or the core's keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Row {
    /// Set a key under the partition.
    Put(String, Vec<u8>),
    /// Remove a key under the partition.
    Delete(String),
    /// Remove every key of the partition (before the puts that follow).
    Clear,
    /// Event `seq` joined the partition's buffer: the core writes it to the
    /// rule's member log (one row per step for all partitions), and hands
    /// it back to [`Kind::load`] until the buffer's first seq passes it.
    Member(u64),
}

/// A partition deadline as the core hands it to a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// The deadline being handled (ms): what [`Kind::deadline`] said.
    pub at: i64,
    /// How far the kind may take the partition in one go: `at`, unless
    /// the deadline fell due while the rule was not running (engine down,
    /// rule paused) — then up to the rule's restart or the next event,
    /// whichever comes first, so that an `every` reaction fires once for
    /// the time it missed instead of a storm.
    pub until: i64,
}

/// A trigger kind's state machine, free of I/O and of the clock: it reads
/// only the times it is handed (events' ingest times, deadlines). A step
/// works on a partition's committed `State` (read-only) and a `Change`
/// that collects what the step did to it; the core commits
/// [`Kind::write`]'s rows and only then calls [`Kind::apply`].
pub trait Kind: Send + std::fmt::Debug + 'static {
    /// A partition's committed state, in memory.
    type State: Send + std::fmt::Debug;

    /// The kind's name as a manifest spells it (`batch`, `dwell`,
    /// `schedule`): stored with the rule's state, so a version of another
    /// kind is refused instead of misreading it.
    const NAME: &'static str;
    /// What the current step changed in one partition.
    type Change: Default + Send + std::fmt::Debug;

    /// A kept event arrives (at its ingest time, `event.at`).
    fn on_event(
        &self,
        base: Option<&Self::State>,
        change: &mut Self::Change,
        event: Kept,
        out: &mut KindOut,
    );

    /// The partition's deadline has come: every event ingested before it
    /// has been handed over, none after.
    fn on_deadline(
        &self,
        base: Option<&Self::State>,
        change: &mut Self::Change,
        due: Due,
        out: &mut KindOut,
    );

    /// The partition's deadline after the change (`None`: no timer). After
    /// [`Kind::on_deadline`] it is later than what was handled.
    fn deadline(&self, base: Option<&Self::State>, change: &Self::Change) -> Option<i64>;

    /// The rows that make the change durable (only what changed).
    fn write(&self, base: Option<&Self::State>, change: &Self::Change, rows: &mut Vec<Row>);

    /// The state after the change (`None`: the partition has no state
    /// left). Called once the change is committed.
    fn apply(&self, base: Option<Self::State>, change: Self::Change) -> Option<Self::State>;

    /// Rebuild a partition's state from its rows (keys relative to the
    /// partition prefix, in key order) and the member-log seqs written for
    /// it that are still kept (in seq order; some may belong to buffers
    /// that closed, below the state's own first seq).
    fn load(&self, rows: Vec<(String, Vec<u8>)>, members: Vec<u64>) -> Result<Self::State, String>;

    /// The lowest seq the state still needs from the log (retention).
    fn first_seq(&self, state: &Self::State) -> Option<u64>;

    /// The lowest seq the state still needs after the change.
    fn first_seq_after(&self, base: Option<&Self::State>, change: &Self::Change) -> Option<u64>;

    /// Rule-wide ticks: the first tick after `after` (ms). `None`: the kind
    /// has no ticks (the default), or there is no tick left.
    fn next_tick(&self, _after: i64) -> Option<i64> {
        None
    }

    /// Whether the kind ticks at all (`next_tick` may still run out).
    fn ticks(&self) -> bool {
        false
    }

    /// The ticks after `last` up to `now`; those before `up_since` were
    /// missed while the rule was not running and follow the catch-up
    /// policy.
    fn due_ticks(&self, last: i64, now: i64, _up_since: i64) -> DueTicks {
        DueTicks {
            position: last.max(now),
            ..DueTicks::default()
        }
    }

    /// A tick comes for a partition (`base` is `None` for a partition
    /// without state: the global one is offered every tick). A tick that
    /// makes no fire and no note must leave `change` as it was.
    fn on_tick(
        &self,
        _base: Option<&Self::State>,
        _change: &mut Self::Change,
        _tick: Tick,
        _in_flight: InFlight,
        _out: &mut KindOut,
    ) {
    }

    /// The rule is undeployed with `drain`: the partition's open buffer
    /// fires (reason drained) when `fire`, or is dropped (a discard). The
    /// default does nothing: a dwell membership is not a window.
    fn drain(
        &self,
        _base: Option<&Self::State>,
        _change: &mut Self::Change,
        _fire: bool,
        _out: &mut KindOut,
    ) {
    }

    /// A partition's state as the API shows it (a JSON object).
    fn describe(&self, state: &Self::State) -> serde_json::Value;

    /// Fires of one partition run one at a time, in order (the default).
    /// `false` lets them overlap (`overlap = "allow-all"`), up to the
    /// rule's concurrency.
    fn ordered(&self) -> bool {
        true
    }
}
