//! The schedule kind: cron ticks that hand each partition the events its
//! filter kept (by ingest time) before the tick and since the previous
//! one.
//!
//! Ticks are rule-wide: the core keeps the schedule's position (the latest
//! tick handled) and, when the next tick falls due, offers it to every
//! partition the rule has state for, and to the global partition:
//!
//! - a partition is known from its first kept event on, and then ticks
//!   every tick — with the events since its previous tick, or an empty
//!   batch unless `skip_empty`;
//! - the global partition ticks with an empty batch while the rule has no
//!   partition with a key (a plain cron job), and like any other once it
//!   has kept an event of its own.
//!
//! Which ticks run (`catch_up`): ticks that fell due while the rule was not
//! running (engine down, rule paused) are *missed*: `skip` runs none of
//! them, `latest` the last one, `all` those within `catch_up_window` of
//! now; the others are counted and recorded (`ticks.missed`). Ticks that
//! fall due while it runs always run, late if need be.
//!
//! When the previous tick's fire of a partition is still in the pipeline
//! (running, or waiting to run or to retry) as a tick comes, `overlap`
//! decides (ticks that come together — caught up after downtime, or late —
//! all run, one after another): `skip`
//! skips the tick, `buffer-one` queues it unless one already waits,
//! `buffer-all` queues every tick, `cancel-previous` cancels the fires in
//! the pipeline and hands their events to the new tick, `allow-all` lets
//! ticks of one partition run side by side (up to the rule's
//! concurrency). A skipped tick is recorded (`tick.skipped`) and its
//! events wait for the next one: nothing is dropped.
//!
//! Daylight saving: the expression is read in the rule's time zone. A
//! local time that does not exist that day (spring forward) fires once, at
//! the end of the gap (02:30 in a 02:00→03:00 gap fires at 03:00; several
//! such times, or one that coincides with a real 03:00 tick, fire once). A
//! local time that occurs twice (fall back) fires once, at its first
//! occurrence.
//!
//! A tick's fire id is derived from (partition, tick time): a tick fires
//! once across restarts. Stored per known partition: `k` → the seq from
//! which the rule's member log holds the partition's current buffer
//! (events since the previous tick), written when that changes.

use chrono::{DateTime, NaiveDateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;

use super::{Due, DueTicks, FireReason, InFlight, Kept, Kind, KindOut, NewFire, Note, Row, Tick};
use crate::manifest::{CatchUp, Overlap, ScheduleTrigger, parse_cron};

/// Ticks counted one by one at most when working out missed ones; past
/// this many the count is a lower bound.
const COUNT_CAP: u64 = 100_000;

/// The schedule of one rule.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: cron::Schedule,
    tz: Tz,
    overlap: Overlap,
    catch_up: CatchUp,
    window_ms: i64,
    skip_empty: bool,
}

impl Schedule {
    /// The kind for `t` (already checked by the manifest parser; the error
    /// names the field otherwise).
    pub fn new(t: &ScheduleTrigger) -> Result<Self, String> {
        Ok(Self {
            cron: parse_cron(&t.cron).map_err(|e| format!("trigger.schedule.cron: {e}"))?,
            tz: t.timezone.parse().map_err(|_| {
                format!(
                    "trigger.schedule.timezone: {:?} is not an IANA time zone",
                    t.timezone
                )
            })?,
            overlap: t.overlap,
            catch_up: t.catch_up,
            window_ms: i64::try_from(t.catch_up_window.as_millis()).unwrap_or(i64::MAX),
            skip_empty: t.skip_empty,
        })
    }

    /// The instant a local wall-clock time stands for: its only instant;
    /// the first of two (fall back); the end of the gap when it does not
    /// exist (spring forward).
    fn instant(&self, local: NaiveDateTime) -> Option<i64> {
        match self.tz.from_local_datetime(&local) {
            chrono::LocalResult::Single(t) => Some(t.timestamp_millis()),
            chrono::LocalResult::Ambiguous(first, _) => Some(first.timestamp_millis()),
            chrono::LocalResult::None => Some(self.gap_end(local)),
        }
    }

    /// The first instant whose wall-clock time is past `local`, a time
    /// skipped by a transition: the transition itself. Offsets lie within
    /// −12h..+14h, so it is within that of `local` read as UTC; wall time
    /// only moves forward there (no zone has two transitions a day apart).
    fn gap_end(&self, local: NaiveDateTime) -> i64 {
        let as_utc = local.and_utc().timestamp_millis();
        let wall = |t: i64| {
            let utc = DateTime::from_timestamp_millis(t).unwrap_or_default();
            let offset = self.tz.offset_from_utc_datetime(&utc.naive_utc()).fix();
            t + i64::from(offset.local_minus_utc()) * 1000
        };
        let (mut lo, mut hi) = (as_utc - 14 * 3_600_000, as_utc + 12 * 3_600_000);
        // Invariant: wall(lo) <= local < wall(hi).
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if wall(mid) > as_utc {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        hi
    }

    /// The first tick strictly after `after` (ms).
    pub fn tick_after(&self, after: i64) -> Option<i64> {
        let utc = DateTime::from_timestamp_millis(after)?;
        // Wall-clock candidates after `after`'s own wall time, read as
        // naive times: their instants never decrease, and none before it
        // can be later than `after`.
        let wall = self.tz.from_utc_datetime(&utc.naive_utc()).naive_local();
        for candidate in self.cron.after(&Utc.from_utc_datetime(&wall)) {
            let at = self.instant(candidate.naive_utc())?;
            if at > after {
                return Some(at);
            }
        }
        None
    }
}

/// A known partition: the events kept since its previous tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Buffer {
    /// The member log holds this buffer's events from this seq on.
    pub from: u64,
    /// The events, in log order.
    pub seqs: Vec<u64>,
}

/// What one step did to a partition.
#[derive(Debug, Default)]
pub struct Buffered {
    /// A tick took the committed buffer.
    taken: bool,
    /// Events kept since (or since the committed buffer).
    appended: Vec<u64>,
    /// The new `from`, when it changes.
    from: Option<u64>,
}

fn seqs(base: Option<&Buffer>, c: &Buffered) -> Vec<u64> {
    let mut all = Vec::new();
    if !c.taken {
        all.extend(base.map_or(&[][..], |b| &b.seqs[..]));
    }
    all.extend_from_slice(&c.appended);
    all
}

impl Kind for Schedule {
    const NAME: &'static str = "schedule";
    type State = Buffer;
    type Change = Buffered;

    fn describe(&self, b: &Buffer) -> serde_json::Value {
        serde_json::json!({"events": b.seqs.len(), "first_seq": b.seqs.first(),
            "last_seq": b.seqs.last()})
    }

    fn on_event(&self, base: Option<&Buffer>, c: &mut Buffered, event: Kept, _out: &mut KindOut) {
        if base.is_none() && c.from.is_none() {
            c.from = Some(event.seq);
        }
        c.appended.push(event.seq);
    }

    fn on_deadline(&self, _: Option<&Buffer>, _: &mut Buffered, _: Due, _: &mut KindOut) {}

    fn deadline(&self, _: Option<&Buffer>, _: &Buffered) -> Option<i64> {
        None
    }

    fn write(&self, base: Option<&Buffer>, c: &Buffered, rows: &mut Vec<Row>) {
        if let Some(from) = c.from
            && base.is_none_or(|b| b.from != from)
        {
            rows.push(Row::Put("k".into(), from.to_string().into_bytes()));
        }
        rows.extend(c.appended.iter().map(|&s| Row::Member(s)));
    }

    fn apply(&self, base: Option<Buffer>, c: Buffered) -> Option<Buffer> {
        let mut b = match base {
            Some(b) => b,
            None => Buffer {
                from: c.from?,
                seqs: Vec::new(),
            },
        };
        if c.taken {
            b.seqs.clear();
        }
        if let Some(from) = c.from {
            b.from = from;
        }
        b.seqs.extend_from_slice(&c.appended);
        Some(b)
    }

    fn load(&self, rows: Vec<(String, Vec<u8>)>, members: Vec<u64>) -> Result<Buffer, String> {
        let mut from = None;
        for (key, value) in rows {
            if key != "k" {
                return Err(format!("unknown schedule row {key:?}"));
            }
            let text = String::from_utf8_lossy(&value).into_owned();
            from = Some(
                text.parse::<u64>()
                    .map_err(|e| format!("schedule row {text:?}: {e}"))?,
            );
        }
        let from = from.ok_or("partition without a schedule row")?;
        Ok(Buffer {
            from,
            seqs: members.into_iter().filter(|&s| s >= from).collect(),
        })
    }

    fn first_seq(&self, b: &Buffer) -> Option<u64> {
        b.seqs.first().copied()
    }

    fn first_seq_after(&self, base: Option<&Buffer>, c: &Buffered) -> Option<u64> {
        if c.taken {
            c.appended.first().copied()
        } else {
            base.and_then(|b| b.seqs.first())
                .or(c.appended.first())
                .copied()
        }
    }

    fn ticks(&self) -> bool {
        true
    }

    fn next_tick(&self, after: i64) -> Option<i64> {
        self.tick_after(after)
    }

    fn due_ticks(&self, last: i64, now: i64, up_since: i64) -> DueTicks {
        let mut due = DueTicks {
            position: last,
            ..DueTicks::default()
        };
        // Ticks missed while not running, in order (as many as may run).
        let keep = match self.catch_up {
            CatchUp::Skip => 0,
            CatchUp::Latest => 1,
            CatchUp::All => usize::MAX,
        };
        let mut missed_kept: std::collections::VecDeque<i64> = Default::default();
        let mut counted = 0u64;
        let mut t = last;
        while let Some(next) = self.tick_after(t).filter(|n| *n <= now) {
            t = next;
            due.position = next;
            if next >= up_since {
                due.run.push(Tick {
                    at: next,
                    catch_up: false,
                });
                continue;
            }
            let runnable = self.catch_up != CatchUp::All || now - next <= self.window_ms;
            if runnable && keep > 0 {
                missed_kept.push_back(next);
                if missed_kept.len() > keep {
                    let dropped = missed_kept.pop_front().expect("not empty");
                    due.note_missed(dropped);
                }
            } else {
                due.note_missed(next);
            }
            counted += 1;
            if counted == COUNT_CAP {
                // A dense schedule down a long time: jump to the ticks that
                // may still run, and say the count is a lower bound.
                let resume = match self.catch_up {
                    CatchUp::All => now.saturating_sub(self.window_ms),
                    _ => up_since.min(now).saturating_sub(3_600_000),
                };
                if resume > t {
                    due.missed_more = true;
                    t = resume;
                }
            }
        }
        let caught_up = missed_kept
            .into_iter()
            .map(|at| Tick { at, catch_up: true });
        due.run = caught_up.chain(due.run).collect();
        due
    }

    fn on_tick(
        &self,
        base: Option<&Buffer>,
        c: &mut Buffered,
        tick: Tick,
        in_flight: InFlight,
        out: &mut KindOut,
    ) {
        let known = base.is_some() || c.from.is_some();
        if !known && in_flight.keyed_partitions > 0 {
            return;
        }
        let batch = seqs(base, c);
        if batch.is_empty() && self.skip_empty {
            return;
        }
        // Only fires already in the pipeline count: ticks due together
        // (caught up after downtime, or late) run one after another. The
        // first fire in the pipeline is the current one (running, or
        // waiting for its retry); any after it wait behind it.
        let fires = in_flight.fires;
        let skip = match self.overlap {
            Overlap::Skip => fires > 0,
            Overlap::BufferOne => fires > 1,
            Overlap::BufferAll | Overlap::CancelPrevious | Overlap::AllowAll => false,
        };
        if skip {
            out.notes.push(Note::TickSkipped {
                tick: tick.at,
                overlap: match self.overlap {
                    Overlap::Skip => "skip",
                    _ => "buffer-one",
                },
            });
            return;
        }
        if let Some(&last) = batch.last() {
            c.from = Some(last + 1);
        }
        c.taken = true;
        c.appended.clear();
        out.fires.push(NewFire {
            id_parts: vec![tick.at.to_string()],
            reason: FireReason::Schedule {
                tick: tick.at,
                catch_up: tick.catch_up,
            },
            seqs: batch,
            supersede: self.overlap == Overlap::CancelPrevious,
            at: None,
        });
    }

    fn drain(&self, base: Option<&Buffer>, c: &mut Buffered, fire: bool, out: &mut KindOut) {
        let batch = seqs(base, c);
        let Some(&last) = batch.last() else { return };
        c.from = Some(last + 1);
        c.taken = true;
        c.appended.clear();
        let id_parts = vec!["drained".to_owned(), batch[0].to_string()];
        if fire {
            out.fires
                .push(NewFire::new(id_parts, FireReason::Drained, batch));
        } else {
            out.discards.push(super::Discard {
                id_parts,
                seqs: batch,
            });
        }
    }

    fn ordered(&self) -> bool {
        self.overlap != Overlap::AllowAll
    }
}

impl DueTicks {
    fn note_missed(&mut self, at: i64) {
        self.missed += 1;
        self.first_missed.get_or_insert(at);
        self.last_missed = Some(at);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn schedule(cron: &str, tz: &str, catch_up: CatchUp) -> Schedule {
        Schedule::new(&ScheduleTrigger {
            cron: cron.into(),
            timezone: tz.into(),
            overlap: Overlap::Skip,
            catch_up,
            catch_up_window: Duration::from_secs(3600),
            skip_empty: false,
        })
        .unwrap()
    }

    fn ms(rfc3339: &str) -> i64 {
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_millis()
    }

    fn ticks(s: &Schedule, from: &str, n: usize) -> Vec<String> {
        let mut t = ms(from);
        (0..n)
            .map(|_| {
                t = s.tick_after(t).unwrap();
                DateTime::from_timestamp_millis(t)
                    .unwrap()
                    .with_timezone(&s.tz)
                    .to_rfc3339()
            })
            .collect()
    }

    #[test]
    fn spring_forward_fires_a_missing_time_once_at_the_end_of_the_gap() {
        // Europe/Berlin, 2026-03-29: 02:00 CET → 03:00 CEST.
        let s = schedule("30 2 * * *", "Europe/Berlin", CatchUp::Skip);
        assert_eq!(
            ticks(&s, "2026-03-27T12:00:00Z", 3),
            [
                "2026-03-28T02:30:00+01:00",
                "2026-03-29T03:00:00+02:00",
                "2026-03-30T02:30:00+02:00"
            ]
        );
        // Every quarter of an hour: 02:00..02:45 do not exist; one tick at
        // 03:00 stands for them and for 03:00 itself.
        let q = schedule("*/15 * * * *", "Europe/Berlin", CatchUp::Skip);
        assert_eq!(
            ticks(&q, "2026-03-29T00:40:00Z", 3),
            [
                "2026-03-29T01:45:00+01:00",
                "2026-03-29T03:00:00+02:00",
                "2026-03-29T03:15:00+02:00"
            ]
        );
    }

    #[test]
    fn fall_back_fires_a_repeated_time_once_at_its_first_occurrence() {
        // America/New_York, 2026-11-01: 02:00 EDT → 01:00 EST.
        let s = schedule("30 1 * * *", "America/New_York", CatchUp::Skip);
        assert_eq!(
            ticks(&s, "2026-10-31T12:00:00Z", 2),
            ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]
        );
        let h = schedule("0 * * * *", "America/New_York", CatchUp::Skip);
        assert_eq!(
            ticks(&h, "2026-11-01T04:30:00Z", 3),
            [
                "2026-11-01T01:00:00-04:00",
                "2026-11-01T02:00:00-05:00",
                "2026-11-01T03:00:00-05:00"
            ],
            "the repeated hour 01:00 ticks once"
        );
        // From inside the second pass of the repeated hour.
        assert_eq!(
            ticks(&h, "2026-11-01T06:10:00Z", 1),
            ["2026-11-01T02:00:00-05:00"]
        );
    }

    #[test]
    fn seconds_field_and_utc() {
        let s = schedule("*/20 * * * * *", "UTC", CatchUp::Skip);
        assert_eq!(
            ticks(&s, "2026-01-01T00:00:00Z", 3),
            [
                "2026-01-01T00:00:20+00:00",
                "2026-01-01T00:00:40+00:00",
                "2026-01-01T00:01:00+00:00"
            ]
        );
    }

    #[test]
    fn catch_up_policies_choose_among_missed_ticks() {
        let minute = 60_000;
        let start = ms("2026-01-01T00:00:00Z");
        // Down from 00:00 to 00:10:30; up since 00:10:30; now 00:11:00.
        let (up, now) = (start + 10 * minute + 30_000, start + 11 * minute);
        let at = |due: &DueTicks| -> Vec<(i64, bool)> {
            due.run
                .iter()
                .map(|t| ((t.at - start) / minute, t.catch_up))
                .collect()
        };
        let skip = schedule("* * * * *", "UTC", CatchUp::Skip).due_ticks(start, now, up);
        assert_eq!(at(&skip), [(11, false)]);
        assert_eq!((skip.missed, skip.position), (10, now));
        let latest = schedule("* * * * *", "UTC", CatchUp::Latest).due_ticks(start, now, up);
        assert_eq!(at(&latest), [(10, true), (11, false)]);
        assert_eq!(latest.missed, 9);
        assert_eq!(latest.first_missed, Some(start + minute));
        assert_eq!(latest.last_missed, Some(start + 9 * minute));
        // `all` within the window (1h here): every missed tick.
        let all = schedule("* * * * *", "UTC", CatchUp::All).due_ticks(start, now, up);
        assert_eq!(all.run.len(), 11);
        assert_eq!(all.missed, 0);
        // Down three hours: only the last hour's ticks run.
        let back = start + 180 * minute;
        let long = schedule("* * * * *", "UTC", CatchUp::All).due_ticks(start, back, back + 1);
        assert_eq!(long.run.len(), 61, "00:00 excluded, 02:00..=03:00");
        assert!(long.run.iter().all(|t| t.catch_up));
        assert_eq!(long.missed, 119);
    }

    #[test]
    fn a_dense_schedule_down_for_long_counts_a_lower_bound() {
        let start = ms("2026-01-01T00:00:00Z");
        let day = 86_400_000;
        let s = schedule("* * * * * *", "UTC", CatchUp::Latest);
        let now = start + 30 * day + 500;
        let due = s.due_ticks(start, now, now);
        assert!(due.missed_more);
        assert!(due.missed >= COUNT_CAP);
        assert_eq!(
            due.run,
            [Tick {
                at: start + 30 * day,
                catch_up: true
            }]
        );
    }
}
