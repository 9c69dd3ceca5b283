//! The dwell kind: per partition a durable membership, and reactions to
//! how long a member has stayed.
//!
//! - `enter` starts a membership: anchored at the event's ingest time,
//!   epoch + 1 (a no-op while already a member);
//! - `refresh` re-anchors it at its event's ingest time and re-arms every
//!   reaction, so a
//!   heartbeat rule reports every silence, not only the first; on a
//!   partition that is not a member it starts a membership like `enter`;
//! - `leave` ends it; `ignore` changes nothing;
//! - an `after = d` reaction fires once per anchoring when the member has
//!   stayed `d` (ordinal 0);
//! - an `every = e` reaction fires each interval while a member, ordinal =
//!   floor((t − anchor) / e) for the interval's time t; intervals that fell
//!   due while the rule was not running (engine down, rule paused) fire
//!   once, with the latest ordinal, instead of a storm;
//! - `max_dwell = m` ends a membership `m` after its anchor; reactions due
//!   before that still fire, and the leave is recorded
//!   (`membership.expired`).
//!
//! A fire's id is derived from (partition, epoch, anchoring event's seq,
//! label, ordinal): unique across refreshes and restarts, and the same on
//! every replay and in every run over the same log, whatever the clock
//! did. Its
//! batch holds the event that started the membership and the one that
//! last anchored it (one event when they are the same): at most two.
//!
//! Stored as one row per partition: `m` → the membership (JSON: epoch,
//! anchor, the two events, what each reaction has fired, by label), or
//! `o` → the epoch of a partition that is no longer a member (so the next
//! membership counts on).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Due, FireReason, Kept, Kind, KindOut, Membership, NewFire, Note, Row};
use crate::manifest::{DwellTrigger, ReactionTime};

/// When a reaction fires, in ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum When {
    After(i64),
    Every(i64),
}

/// The dwell rules of one rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dwell {
    labels: Vec<String>,
    whens: Vec<When>,
    max_dwell: Option<i64>,
}

fn millis(d: std::time::Duration) -> i64 {
    crate::time::millis(d).max(1)
}

impl From<&DwellTrigger> for Dwell {
    fn from(t: &DwellTrigger) -> Self {
        Self {
            labels: t.reactions.iter().map(|r| r.label.clone()).collect(),
            whens: t
                .reactions
                .iter()
                .map(|r| match r.when {
                    ReactionTime::After(d) => When::After(millis(d)),
                    ReactionTime::Every(d) => When::Every(millis(d)),
                })
                .collect(),
            max_dwell: t.max_dwell.map(millis),
        }
    }
}

/// A partition's membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Member {
    /// A member.
    In(Stay),
    /// Not a member; the last membership had this epoch.
    Out {
        /// The last epoch.
        epoch: u64,
    },
}

impl Member {
    fn epoch(&self) -> u64 {
        match self {
            Member::In(s) => s.epoch,
            Member::Out { epoch } => *epoch,
        }
    }

    /// The membership, if the partition is a member.
    pub fn stay(&self) -> Option<&Stay> {
        match self {
            Member::In(s) => Some(s),
            Member::Out { .. } => None,
        }
    }
}

/// An open membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stay {
    /// Counts the partition's memberships, 1 for the first.
    pub epoch: u64,
    /// When the membership was last anchored (enter or refresh), ms.
    pub since: i64,
    /// The event that started the membership.
    pub first: u64,
    /// The event that last anchored it.
    pub last: u64,
    /// Per reaction (manifest order): `after` 1 once fired; `every` the
    /// last ordinal fired. Reset by every anchoring.
    pub fired: Box<[u64]>,
}

/// What one step did to a partition: its new membership, if it changed.
#[derive(Debug, Default)]
pub struct MemberChange(Option<Member>);

#[derive(Serialize, Deserialize)]
struct StayRow {
    e: u64,
    s: i64,
    f: u64,
    l: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    r: BTreeMap<String, u64>,
}

fn current<'a>(base: Option<&'a Member>, c: &'a MemberChange) -> Option<&'a Member> {
    c.0.as_ref().or(base)
}

impl Dwell {
    fn stay(&self, epoch: u64, now: i64, seq: u64) -> Member {
        Member::In(Stay {
            epoch,
            since: now,
            first: seq,
            last: seq,
            fired: vec![0; self.whens.len()].into_boxed_slice(),
        })
    }

    /// When reaction `i` falls due next for `s` (`None`: not again this
    /// anchoring).
    fn due(&self, s: &Stay, i: usize) -> Option<i64> {
        match self.whens[i] {
            When::After(d) => (s.fired[i] == 0).then(|| s.since.saturating_add(d)),
            When::Every(e) => {
                let next = s.fired[i].saturating_add(1);
                let offset = i64::try_from(next).unwrap_or(i64::MAX).saturating_mul(e);
                Some(s.since.saturating_add(offset))
            }
        }
    }

    fn leave_at(&self, s: &Stay) -> Option<i64> {
        self.max_dwell.map(|m| s.since.saturating_add(m))
    }

    fn fire(&self, s: &Stay, i: usize, ordinal: u64) -> NewFire {
        let label = self.labels[i].clone();
        let mut seqs = vec![s.first];
        if s.last != s.first {
            seqs.push(s.last);
        }
        NewFire::new(
            vec![
                s.epoch.to_string(),
                s.last.to_string(),
                label.clone(),
                ordinal.to_string(),
            ],
            FireReason::Dwell {
                label,
                ordinal,
                member_since: s.since,
                epoch: s.epoch,
            },
            seqs,
        )
    }
}

impl Kind for Dwell {
    const NAME: &'static str = "dwell";
    type State = Member;
    type Change = MemberChange;

    fn describe(&self, m: &Member) -> serde_json::Value {
        match m {
            Member::In(s) => serde_json::json!({"member": true, "epoch": s.epoch,
                "since": s.since, "first_seq": s.first, "last_seq": s.last}),
            Member::Out { epoch } => serde_json::json!({"member": false, "epoch": epoch}),
        }
    }

    fn on_event(
        &self,
        base: Option<&Member>,
        c: &mut MemberChange,
        event: Kept,
        _out: &mut KindOut,
    ) {
        let now = event.at;
        let cur = current(base, c);
        let epoch = cur.map_or(0, Member::epoch);
        let member = cur.and_then(Member::stay);
        match (event.membership, member) {
            (Membership::Enter | Membership::Refresh, None) => {
                c.0 = Some(self.stay(epoch + 1, now, event.seq));
            }
            (Membership::Refresh, Some(s)) => {
                let mut s = s.clone();
                s.since = now;
                s.last = event.seq;
                s.fired.iter_mut().for_each(|f| *f = 0);
                c.0 = Some(Member::In(s));
            }
            (Membership::Leave, Some(s)) => c.0 = Some(Member::Out { epoch: s.epoch }),
            (Membership::Enter, Some(_)) | (Membership::Leave | Membership::Ignore, _) => {}
        }
    }

    fn on_deadline(
        &self,
        base: Option<&Member>,
        c: &mut MemberChange,
        due: Due,
        out: &mut KindOut,
    ) {
        let Some(s) = current(base, c).and_then(Member::stay) else {
            return;
        };
        let now = due.until.max(due.at);
        let mut s = s.clone();
        let leave_at = self.leave_at(&s);
        // Reactions count up to the forced leave, not past it.
        let until = leave_at.map_or(now, |l| l.min(now));
        let mut fires = Vec::new();
        for i in 0..self.whens.len() {
            if self.due(&s, i).is_none_or(|d| d > until) {
                continue;
            }
            // Ordered by the time each fire stands for.
            let (at, ordinal) = match self.whens[i] {
                When::After(d) => (s.since.saturating_add(d), 0),
                When::Every(e) => {
                    let n = (until - s.since) / e;
                    (s.since.saturating_add(n * e), u64::try_from(n).unwrap_or(0))
                }
            };
            fires.push((at, i, ordinal));
        }
        fires.sort_unstable();
        for &(at, i, ordinal) in &fires {
            let mut fire = self.fire(&s, i, ordinal);
            fire.at = Some(at);
            out.fires.push(fire);
            s.fired[i] = match self.whens[i] {
                When::After(_) => 1,
                When::Every(_) => ordinal,
            };
        }
        c.0 = Some(if let Some(left_at) = leave_at.filter(|l| *l <= now) {
            out.notes.push(Note::Left {
                epoch: s.epoch,
                member_since: s.since,
                left_at,
            });
            Member::Out { epoch: s.epoch }
        } else {
            Member::In(s)
        });
    }

    fn deadline(&self, base: Option<&Member>, c: &MemberChange) -> Option<i64> {
        let s = current(base, c)?.stay()?;
        (0..self.whens.len())
            .filter_map(|i| self.due(s, i))
            .chain(self.leave_at(s))
            .min()
    }

    fn write(&self, base: Option<&Member>, c: &MemberChange, rows: &mut Vec<Row>) {
        let Some(new) = &c.0 else { return };
        if base.is_some_and(|b| b.stay().is_some() != new.stay().is_some()) {
            rows.push(Row::Clear);
        }
        rows.push(match new {
            Member::In(s) => {
                let r = self
                    .labels
                    .iter()
                    .zip(s.fired.iter())
                    .filter(|(_, f)| **f > 0)
                    .map(|(l, f)| (l.clone(), *f))
                    .collect();
                let row = StayRow {
                    e: s.epoch,
                    s: s.since,
                    f: s.first,
                    l: s.last,
                    r,
                };
                Row::Put(
                    "m".into(),
                    serde_json::to_vec(&row).expect("a membership serialises"),
                )
            }
            Member::Out { epoch } => Row::Put("o".into(), epoch.to_string().into_bytes()),
        });
    }

    fn apply(&self, base: Option<Member>, c: MemberChange) -> Option<Member> {
        c.0.or(base)
    }

    fn load(&self, rows: Vec<(String, Vec<u8>)>, _members: Vec<u64>) -> Result<Member, String> {
        let mut found = None;
        for (key, value) in rows {
            found = Some(match key.as_str() {
                "m" => {
                    let row: StayRow = serde_json::from_slice(&value)
                        .map_err(|e| format!("membership row: {e}"))?;
                    // Reactions by label: one a redeploy removed is
                    // forgotten, a new one starts unfired.
                    let fired = self
                        .labels
                        .iter()
                        .map(|l| row.r.get(l).copied().unwrap_or(0))
                        .collect();
                    Member::In(Stay {
                        epoch: row.e,
                        since: row.s,
                        first: row.f,
                        last: row.l,
                        fired,
                    })
                }
                "o" => Member::Out {
                    epoch: String::from_utf8_lossy(&value)
                        .parse()
                        .map_err(|e| format!("left-membership row: {e}"))?,
                },
                other => return Err(format!("unknown membership row {other:?}")),
            });
        }
        found.ok_or_else(|| "partition without a membership row".to_owned())
    }

    fn first_seq(&self, m: &Member) -> Option<u64> {
        m.stay().map(|s| s.first.min(s.last))
    }

    fn first_seq_after(&self, base: Option<&Member>, c: &MemberChange) -> Option<u64> {
        current(base, c).and_then(|m| self.first_seq(m))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::manifest::Reaction;

    fn dwell(reactions: &[(&str, ReactionTime)], max_dwell_ms: Option<u64>) -> Dwell {
        Dwell::from(&DwellTrigger {
            reactions: reactions
                .iter()
                .map(|(l, w)| Reaction {
                    label: (*l).into(),
                    when: *w,
                })
                .collect(),
            max_dwell: max_dwell_ms.map(Duration::from_millis),
        })
    }

    fn after(ms: u64) -> ReactionTime {
        ReactionTime::After(Duration::from_millis(ms))
    }

    fn every(ms: u64) -> ReactionTime {
        ReactionTime::Every(Duration::from_millis(ms))
    }

    /// Drive a kind the way the core does, one event or deadline per step,
    /// through its rows (write, then load), so storage is tested too.
    struct Part {
        kind: Dwell,
        state: Option<Member>,
        rows: BTreeMap<String, Vec<u8>>,
    }

    impl Part {
        fn new(kind: Dwell) -> Self {
            Self {
                kind,
                state: None,
                rows: BTreeMap::new(),
            }
        }

        fn commit(&mut self, c: MemberChange) {
            let mut rows = Vec::new();
            self.kind.write(self.state.as_ref(), &c, &mut rows);
            for r in rows {
                match r {
                    Row::Put(k, v) => {
                        self.rows.insert(k, v);
                    }
                    Row::Clear => self.rows.clear(),
                    other => panic!("unexpected row {other:?}"),
                }
            }
            self.state = self.kind.apply(self.state.take(), c);
            if !self.rows.is_empty() {
                let loaded = self
                    .kind
                    .load(
                        self.rows
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                        Vec::new(),
                    )
                    .unwrap();
                assert_eq!(Some(&loaded), self.state.as_ref(), "reloads as it was");
            }
        }

        fn event(&mut self, seq: u64, m: Membership, now: i64) {
            let mut c = MemberChange::default();
            let mut out = KindOut::default();
            let kept = Kept {
                seq,
                at: now,
                membership: m,
            };
            self.kind
                .on_event(self.state.as_ref(), &mut c, kept, &mut out);
            assert!(out.fires.is_empty());
            self.commit(c);
        }

        fn deadline(&self) -> Option<i64> {
            self.kind
                .deadline(self.state.as_ref(), &MemberChange::default())
        }

        /// Handle the deadline with the rule not running until `now` (the
        /// deadline itself when `now` is it): (label, ordinal, epoch)
        /// fired.
        fn at(&mut self, now: i64) -> (Vec<(String, u64, u64)>, Vec<Note>) {
            let mut c = MemberChange::default();
            let mut out = KindOut::default();
            let due = Due {
                at: self.deadline().unwrap_or(now).min(now),
                until: now,
            };
            self.kind
                .on_deadline(self.state.as_ref(), &mut c, due, &mut out);
            self.commit(c);
            let fired = out
                .fires
                .iter()
                .map(|f| match &f.reason {
                    FireReason::Dwell {
                        label,
                        ordinal,
                        epoch,
                        ..
                    } => (label.clone(), *ordinal, *epoch),
                    other => panic!("{other:?}"),
                })
                .collect();
            (fired, out.notes)
        }
    }

    fn fired(v: &[(&str, u64, u64)]) -> Vec<(String, u64, u64)> {
        v.iter().map(|(l, o, e)| ((*l).into(), *o, *e)).collect()
    }

    #[test]
    fn after_fires_once_per_anchoring_and_refresh_rearms_it() {
        let mut p = Part::new(dwell(&[("silent", after(300))], None));
        p.event(1, Membership::Refresh, 0);
        assert_eq!(p.deadline(), Some(300));
        p.event(2, Membership::Refresh, 100);
        assert_eq!(p.deadline(), Some(400), "refresh moves the anchor");
        assert_eq!(p.at(400).0, fired(&[("silent", 0, 1)]));
        assert_eq!(p.deadline(), None, "fired for this anchoring");
        p.event(3, Membership::Refresh, 900);
        assert_eq!(p.deadline(), Some(1200), "a refresh re-arms it");
        assert_eq!(p.at(1200).0, fired(&[("silent", 0, 1)]));
    }

    #[test]
    fn enter_is_a_no_op_for_a_member_and_leave_ends_the_epoch() {
        let mut p = Part::new(dwell(&[("stayed", after(100))], None));
        p.event(1, Membership::Enter, 0);
        p.event(2, Membership::Enter, 50);
        assert_eq!(
            p.deadline(),
            Some(100),
            "enter while a member changes nothing"
        );
        p.event(3, Membership::Ignore, 60);
        p.event(4, Membership::Leave, 70);
        assert_eq!(p.deadline(), None);
        assert_eq!(p.state, Some(Member::Out { epoch: 1 }));
        p.event(5, Membership::Leave, 80);
        p.event(6, Membership::Enter, 90);
        assert_eq!(p.deadline(), Some(190));
        assert_eq!(p.at(190).0, fired(&[("stayed", 0, 2)]), "epoch 2");
    }

    #[test]
    fn every_fires_each_interval_and_coalesces_after_downtime() {
        let mut p = Part::new(dwell(&[("hourly", every(60))], None));
        p.event(1, Membership::Enter, 0);
        assert_eq!(p.at(60).0, fired(&[("hourly", 1, 1)]));
        assert_eq!(p.deadline(), Some(120));
        // Down from 61 to 400: one fire with the latest ordinal.
        assert_eq!(p.at(400).0, fired(&[("hourly", 6, 1)]));
        assert_eq!(p.deadline(), Some(420));
    }

    #[test]
    fn max_dwell_forces_a_leave_after_what_fell_due_before_it() {
        let mut p = Part::new(dwell(&[("a", after(100)), ("e", every(40))], Some(150)));
        p.event(1, Membership::Enter, 0);
        assert_eq!(p.deadline(), Some(40));
        // Everything at once (downtime): reactions up to the leave time.
        let (f, notes) = p.at(1_000);
        assert_eq!(f, fired(&[("a", 0, 1), ("e", 3, 1)]));
        assert_eq!(
            notes,
            vec![Note::Left {
                epoch: 1,
                member_since: 0,
                left_at: 150,
            }]
        );
        assert_eq!(p.state, Some(Member::Out { epoch: 1 }));
        assert_eq!(p.deadline(), None);
    }

    #[test]
    fn two_labels_fire_in_time_order_with_the_membership_events() {
        let k = dwell(&[("late", after(200)), ("early", after(100))], None);
        let mut p = Part::new(k.clone());
        p.event(7, Membership::Enter, 0);
        p.event(9, Membership::Refresh, 10);
        let mut c = MemberChange::default();
        let mut out = KindOut::default();
        let due = Due {
            at: 100,
            until: 500,
        };
        k.on_deadline(p.state.as_ref(), &mut c, due, &mut out);
        let labels: Vec<_> = out
            .fires
            .iter()
            .map(|f| (f.id_parts[2].clone(), f.seqs.clone()))
            .collect();
        assert_eq!(
            labels,
            vec![
                ("early".to_owned(), vec![7, 9]),
                ("late".to_owned(), vec![7, 9])
            ]
        );
        assert_ne!(out.fires[0].id_parts, out.fires[1].id_parts);
    }

    #[test]
    fn a_reaction_removed_by_a_redeploy_is_forgotten() {
        let old = dwell(&[("a", after(10)), ("b", after(20))], None);
        let mut p = Part::new(old);
        p.event(1, Membership::Enter, 0);
        p.at(10);
        let new = dwell(&[("b", after(20)), ("c", after(30))], None);
        let rows = p.rows.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let m = new.load(rows, Vec::new()).unwrap();
        assert_eq!(m.stay().unwrap().fired.as_ref(), &[0, 0]);
        assert_eq!(new.deadline(Some(&m), &MemberChange::default()), Some(20));
    }
}
