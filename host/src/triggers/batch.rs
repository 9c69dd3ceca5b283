//! The batch kind: aggregation windows per partition. This is where a
//! batch rule decides to fire.
//!
//! - the window opens at the first buffered event of a partition, at that
//!   event's ingest time, and expires `window` later;
//! - reaching `count` fires exactly `count` events (count-reached) and
//!   closes the window; the next event opens a fresh one;
//! - an expired window fires its partial batch (window-expired) or, with
//!   `expire = discard`, is dropped and reported;
//! - with `debounce`, every new event pushes the expiry to `window` after
//!   its ingest time, so the window fires after a quiet period with all
//!   its events (`count` still caps a batch); `max_wait` bounds how far a
//!   steady stream can push it: never later than `opened + max_wait`.
//!
//! A window is identified by the seq of its first event: unique, and the
//! same on every replay, so fire ids derived from it are deterministic.
//!
//! Stored as one row under the partition's prefix, `h` → the header
//! (`opened_at deadline first_seq`), written when a window opens (and when
//! a debounce moves its deadline); the members go to the rule's member log
//! ([`Row::Member`]), so buffering events writes nothing per partition.
//! Closing a window clears the prefix.

use super::{Discard, Due, FireReason, Kept, Kind, KindOut, NewFire, Row};
use crate::manifest::{BatchTrigger, Expire};

/// The open window of one partition. Holds event references (seqs), not
/// events: the log keeps the events, pinned until the window closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// When the window opened (engine clock, ms).
    pub opened_at: i64,
    /// When it expires (ms).
    pub deadline: i64,
    /// The buffered events, in log order; never empty.
    pub seqs: Vec<u64>,
}

impl Window {
    /// The window's identity: the seq of its first event.
    pub fn first_seq(&self) -> u64 {
        self.seqs[0]
    }
}

/// What one step did to a partition's window.
#[derive(Debug, Default)]
pub struct WindowChange {
    /// The committed window closed during the step (it no longer counts).
    reset: bool,
    /// A window opened during the step: (opened_at, deadline).
    opened: Option<(i64, i64)>,
    /// Events buffered during the step into the current window.
    appended: Vec<u64>,
    /// The current window's deadline moved (debounce).
    deadline: Option<i64>,
}

/// The batch rules of one rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    count: usize,
    window_ms: i64,
    max_wait_ms: Option<i64>,
    expire: Expire,
    debounce: bool,
}

fn millis(d: std::time::Duration) -> i64 {
    crate::time::millis(d)
}

impl From<&BatchTrigger> for Batch {
    fn from(t: &BatchTrigger) -> Self {
        Self {
            count: t.count.max(1) as usize,
            window_ms: millis(t.window),
            max_wait_ms: t.max_wait.map(millis),
            expire: t.expire,
            debounce: t.debounce,
        }
    }
}

/// The current window as the step sees it: committed part + change.
struct View<'a> {
    opened_at: i64,
    deadline: i64,
    base: &'a [u64],
    appended: &'a [u64],
}

impl View<'_> {
    fn len(&self) -> usize {
        self.base.len() + self.appended.len()
    }

    fn first(&self) -> u64 {
        self.base
            .first()
            .or(self.appended.first())
            .copied()
            .unwrap_or(0)
    }

    fn seqs(&self) -> Vec<u64> {
        let mut all = Vec::with_capacity(self.len());
        all.extend_from_slice(self.base);
        all.extend_from_slice(self.appended);
        all
    }
}

fn view<'a>(base: Option<&'a Window>, c: &'a WindowChange) -> Option<View<'a>> {
    if c.reset {
        let (opened_at, deadline) = c.opened?;
        return Some(View {
            opened_at,
            deadline: c.deadline.unwrap_or(deadline),
            base: &[],
            appended: &c.appended,
        });
    }
    let b = base?;
    Some(View {
        opened_at: b.opened_at,
        deadline: c.deadline.unwrap_or(b.deadline),
        base: &b.seqs,
        appended: &c.appended,
    })
}

impl Batch {
    /// Close the current window: it no longer exists after this step.
    fn close(
        &self,
        base: Option<&Window>,
        c: &mut WindowChange,
        why: Option<FireReason>,
        out: &mut KindOut,
    ) {
        let Some(v) = view(base, c) else { return };
        let (first, seqs) = (v.first(), v.seqs());
        let id_parts = vec![first.to_string()];
        match why {
            Some(reason) => out.fires.push(NewFire::new(id_parts, reason, seqs)),
            None => out.discards.push(Discard { id_parts, seqs }),
        }
        *c = WindowChange {
            reset: true,
            ..WindowChange::default()
        };
    }
}

impl Kind for Batch {
    const NAME: &'static str = "batch";
    type State = Window;
    type Change = WindowChange;

    fn describe(&self, w: &Window) -> serde_json::Value {
        serde_json::json!({"events": w.seqs.len(), "opened_at": w.opened_at,
            "first_seq": w.first_seq(), "last_seq": w.seqs.last()})
    }

    fn on_event(
        &self,
        base: Option<&Window>,
        c: &mut WindowChange,
        event: Kept,
        out: &mut KindOut,
    ) {
        let now = event.at;
        let deadline = now.saturating_add(self.window_ms);
        match view(base, c).map(|v| v.opened_at) {
            Some(opened_at) => {
                c.appended.push(event.seq);
                if self.debounce {
                    let cap = self
                        .max_wait_ms
                        .map_or(i64::MAX, |w| opened_at.saturating_add(w));
                    c.deadline = Some(deadline.min(cap));
                }
            }
            None => {
                // No window: open one (any committed one closed earlier in
                // this step, or there was none).
                c.reset = true;
                let first_deadline = match self.max_wait_ms {
                    Some(w) if self.debounce => deadline.min(now.saturating_add(w)),
                    _ => deadline,
                };
                c.opened = Some((now, first_deadline));
                c.deadline = None;
                c.appended.clear();
                c.appended.push(event.seq);
            }
        }
        if view(base, c).is_some_and(|v| v.len() >= self.count) {
            self.close(base, c, Some(FireReason::CountReached), out);
        }
    }

    fn on_deadline(
        &self,
        base: Option<&Window>,
        c: &mut WindowChange,
        due: Due,
        out: &mut KindOut,
    ) {
        if view(base, c).is_none_or(|v| v.deadline > due.at) {
            return;
        }
        let why = match self.expire {
            Expire::Fire => Some(FireReason::WindowExpired),
            Expire::Discard => None,
        };
        self.close(base, c, why, out);
    }

    fn drain(&self, base: Option<&Window>, c: &mut WindowChange, fire: bool, out: &mut KindOut) {
        let why = fire.then_some(FireReason::Drained);
        self.close(base, c, why, out);
    }

    fn deadline(&self, base: Option<&Window>, c: &WindowChange) -> Option<i64> {
        view(base, c).map(|v| v.deadline)
    }

    fn write(&self, base: Option<&Window>, c: &WindowChange, rows: &mut Vec<Row>) {
        if c.reset && base.is_some() {
            rows.push(Row::Clear);
        }
        let Some(v) = view(base, c) else { return };
        if c.reset || c.deadline.is_some() {
            rows.push(Row::Put(
                "h".into(),
                format!("{} {} {}", v.opened_at, v.deadline, v.first()).into_bytes(),
            ));
        }
        rows.extend(v.appended.iter().map(|&seq| Row::Member(seq)));
    }

    fn apply(&self, base: Option<Window>, c: WindowChange) -> Option<Window> {
        let mut w = if c.reset {
            let (opened_at, deadline) = c.opened?;
            Window {
                opened_at,
                deadline,
                seqs: Vec::with_capacity(self.count.min(1024)),
            }
        } else {
            base?
        };
        if let Some(d) = c.deadline {
            w.deadline = d;
        }
        w.seqs.extend_from_slice(&c.appended);
        Some(w)
    }

    fn load(&self, rows: Vec<(String, Vec<u8>)>, members: Vec<u64>) -> Result<Window, String> {
        let mut header = None;
        for (key, value) in rows {
            if key != "h" {
                return Err(format!("unknown window row {key:?}"));
            }
            let text = String::from_utf8_lossy(&value).into_owned();
            let parts: Vec<i64> = text
                .split(' ')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("window header {text:?}: {e}"))?;
            let [opened_at, deadline, first] = parts[..] else {
                return Err(format!("window header {text:?}: expected 3 numbers"));
            };
            header = Some((opened_at, deadline, first as u64));
        }
        let (opened_at, deadline, first) = header.ok_or("window without a header")?;
        let seqs: Vec<u64> = members.into_iter().filter(|&s| s >= first).collect();
        if seqs.first() != Some(&first) {
            return Err(format!(
                "window from seq {first}: its members are missing from the member log"
            ));
        }
        Ok(Window {
            opened_at,
            deadline,
            seqs,
        })
    }

    fn first_seq(&self, w: &Window) -> Option<u64> {
        w.seqs.first().copied()
    }

    fn first_seq_after(&self, base: Option<&Window>, c: &WindowChange) -> Option<u64> {
        view(base, c).map(|v| v.first())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::verdict::Membership;

    fn batch(count: u32, window_ms: u64, expire: Expire, debounce: bool) -> Batch {
        Batch::from(&BatchTrigger {
            count,
            window: Duration::from_millis(window_ms),
            expire,
            debounce,
            max_wait: None,
        })
    }

    /// Drive a kind the way the core does, one event or deadline per step.
    struct Part {
        kind: Batch,
        state: Option<Window>,
    }

    impl Part {
        fn new(kind: Batch) -> Self {
            Self { kind, state: None }
        }

        fn commit(&mut self, c: WindowChange) {
            self.state = self.kind.apply(self.state.take(), c);
        }

        fn event(&mut self, seq: u64, now: i64) -> KindOut {
            let mut c = WindowChange::default();
            let mut out = KindOut::default();
            let kept = Kept {
                seq,
                at: now,
                membership: Membership::Enter,
            };
            self.kind
                .on_event(self.state.as_ref(), &mut c, kept, &mut out);
            self.commit(c);
            out
        }

        fn timer(&mut self, now: i64) -> KindOut {
            let mut c = WindowChange::default();
            let mut out = KindOut::default();
            let due = Due {
                at: now,
                until: now,
            };
            self.kind
                .on_deadline(self.state.as_ref(), &mut c, due, &mut out);
            self.commit(c);
            out
        }
    }

    #[test]
    fn count_reached_fires_exactly_count_and_resets() {
        let mut p = Part::new(batch(3, 1_000, Expire::Fire, false));
        assert!(p.event(1, 0).fires.is_empty());
        assert!(p.event(2, 10).fires.is_empty());
        let out = p.event(3, 20);
        assert_eq!(out.fires[0].reason, FireReason::CountReached);
        assert_eq!(
            (out.fires[0].id_parts.clone(), out.fires[0].seqs.clone()),
            (vec!["1".to_owned()], vec![1, 2, 3])
        );
        assert_eq!(p.state, None, "the window closed");
        // The next event opens a fresh window, timed from its arrival.
        p.event(4, 500);
        let open = p.state.clone().unwrap();
        assert_eq!(
            (open.opened_at, open.deadline, open.first_seq()),
            (500, 1_500, 4)
        );
    }

    #[test]
    fn one_step_can_close_and_reopen_windows() {
        let kind = batch(2, 1_000, Expire::Fire, false);
        let mut c = WindowChange::default();
        let mut out = KindOut::default();
        for seq in 1..=5 {
            let kept = Kept {
                seq,
                at: 7,
                membership: Membership::Enter,
            };
            kind.on_event(None, &mut c, kept, &mut out);
        }
        let got: Vec<_> = out.fires.iter().map(|f| f.seqs.clone()).collect();
        assert_eq!(got, vec![vec![1, 2], vec![3, 4]]);
        let mut rows = Vec::new();
        kind.write(None, &c, &mut rows);
        assert_eq!(
            rows,
            vec![Row::Put("h".into(), b"7 1007 5".to_vec()), Row::Member(5)]
        );
        assert_eq!(kind.apply(None, c).unwrap().seqs, vec![5]);
    }

    #[test]
    fn expiry_fires_the_partial_batch_at_its_deadline_not_before() {
        let mut p = Part::new(batch(10, 1_000, Expire::Fire, false));
        p.event(7, 100);
        p.event(9, 900);
        assert!(p.timer(1_099).fires.is_empty());
        let out = p.timer(1_100);
        assert_eq!(out.fires[0].reason, FireReason::WindowExpired);
        assert_eq!(out.fires[0].seqs, vec![7, 9]);
        assert!(p.timer(5_000).fires.is_empty(), "nothing left to expire");
    }

    #[test]
    fn discard_drops_and_reports() {
        let mut p = Part::new(batch(10, 1_000, Expire::Discard, false));
        p.event(1, 0);
        let out = p.timer(2_000);
        assert!(out.fires.is_empty());
        assert_eq!(out.discards[0].seqs, vec![1]);
    }

    #[test]
    fn debounce_restarts_the_window_on_every_event() {
        let mut p = Part::new(batch(100, 1_000, Expire::Fire, true));
        p.event(1, 0);
        p.event(2, 900);
        p.event(3, 1_800);
        assert!(p.timer(2_799).fires.is_empty(), "quiet period not over");
        let out = p.timer(2_800);
        assert_eq!(out.fires[0].seqs, vec![1, 2, 3], "all events delivered");
    }

    #[test]
    fn max_wait_bounds_a_debounced_window() {
        let mut kind = batch(100, 1_000, Expire::Fire, true);
        kind.max_wait_ms = Some(2_500);
        let mut p = Part::new(kind);
        for (seq, t) in [(1, 0), (2, 900), (3, 1_800), (4, 2_400)] {
            p.event(seq, t);
        }
        assert_eq!(
            p.state.as_ref().unwrap().deadline,
            2_500,
            "capped at opened + max_wait"
        );
        assert_eq!(p.timer(2_500).fires[0].seqs, vec![1, 2, 3, 4]);
    }

    #[test]
    fn without_debounce_later_events_do_not_move_the_deadline() {
        let mut p = Part::new(batch(100, 1_000, Expire::Fire, false));
        p.event(1, 0);
        p.event(2, 900);
        assert_eq!(p.state.as_ref().unwrap().deadline, 1_000);
    }

    #[test]
    fn rows_round_trip() {
        let kind = batch(100, 1_000, Expire::Fire, false);
        let mut p = Part::new(kind);
        p.event(3, 5);
        p.event(300, 6);
        let w = p.state.clone().unwrap();
        let rows = || vec![("h".to_owned(), b"5 1005 3".to_vec())];
        // Members of an earlier, closed window are below the first seq.
        assert_eq!(kind.load(rows(), vec![1, 2, 3, 300]).unwrap(), w);
        assert!(kind.load(vec![], vec![3]).is_err(), "no header");
        assert!(kind.load(rows(), vec![300]).is_err(), "members lost");
    }
}
