//! The trigger kinds, registered in one place.
//!
//! A manifest's `[trigger.<kind>]` section becomes a [`KindSpec`] here;
//! everything else reaches the kind through the [`Kind`] trait, handed
//! over by [`KindSpec::visit`]. Adding a kind is its own file, one variant
//! and its arms below, and its manifest section (see ARCHITECTURE.md,
//! "Adding a trigger kind").

use super::Kind;
use super::batch::Batch;
use super::dwell::Dwell;
use super::schedule::Schedule;
use crate::manifest::Trigger;

/// A rule's trigger kind with its parameters, ready to drive.
#[derive(Debug, Clone)]
pub enum KindSpec {
    /// Aggregation windows.
    Batch(Batch),
    /// Membership age.
    Dwell(Dwell),
    /// Cron ticks.
    Schedule(Schedule),
}

/// Something to do with a kind whatever it is (open it, name it, …).
pub trait KindVisitor {
    /// What it gives.
    type Out;
    /// Do it with kind `kind`.
    fn visit<K: Kind + Clone>(self, kind: K) -> Self::Out;
}

impl KindSpec {
    /// The kind of `trigger` (already checked by the manifest's parser;
    /// an inconsistency is named otherwise).
    pub fn from_trigger(trigger: &Trigger) -> Result<Self, String> {
        Ok(match trigger {
            Trigger::Batch(t) => KindSpec::Batch(Batch::from(t)),
            Trigger::Dwell(t) => KindSpec::Dwell(Dwell::from(t)),
            Trigger::Schedule(t) => KindSpec::Schedule(Schedule::new(t)?),
        })
    }

    /// Hand the kind to `v`.
    pub fn visit<V: KindVisitor>(self, v: V) -> V::Out {
        match self {
            KindSpec::Batch(k) => v.visit(k),
            KindSpec::Dwell(k) => v.visit(k),
            KindSpec::Schedule(k) => v.visit(k),
        }
    }

    /// The kind's name as a manifest spells it.
    pub fn name(&self) -> &'static str {
        struct Name;
        impl KindVisitor for Name {
            type Out = &'static str;
            fn visit<K: Kind + Clone>(self, _: K) -> &'static str {
                K::NAME
            }
        }
        self.clone().visit(Name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;
    use crate::triggers::{Kept, KindOut, Membership, Row};

    /// One manifest per registered kind: adding a kind without adding it
    /// here fails `every_kind_parses_opens_reports_and_round_trips`.
    const MANIFESTS: &[&str] = &[
        "name = \"r\"\nversion = 1\n[trigger.batch]\ncount = 2\nwindow = \"1m\"\n",
        "name = \"r\"\nversion = 1\n[trigger.dwell]\n[[trigger.dwell.reactions]]\nlabel = \"a\"\nafter = \"1m\"\n",
        "name = \"r\"\nversion = 1\n[trigger.schedule]\ncron = \"* * * * *\"\n",
    ];

    /// Feed a kind two events and its deadline, write every change, load
    /// the rows back: what it reports and what it reloads agree.
    struct RoundTrip;

    impl KindVisitor for RoundTrip {
        type Out = (&'static str, usize);
        fn visit<K: Kind + Clone>(self, kind: K) -> (&'static str, usize) {
            let mut state: Option<K::State> = None;
            let mut rows: std::collections::BTreeMap<String, Vec<u8>> = Default::default();
            let mut members = Vec::new();
            let mut fires = 0;
            for seq in 1..=2 {
                let mut c = K::Change::default();
                let mut out = KindOut::default();
                let kept = Kept {
                    seq,
                    at: seq as i64 * 1_000,
                    membership: Membership::Enter,
                };
                kind.on_event(state.as_ref(), &mut c, kept, &mut out);
                fires += out.fires.len();
                let mut written = Vec::new();
                kind.write(state.as_ref(), &c, &mut written);
                for r in written {
                    match r {
                        Row::Put(k, v) => {
                            rows.insert(k, v);
                        }
                        Row::Delete(k) => {
                            rows.remove(&k);
                        }
                        Row::Clear => rows.clear(),
                        Row::Member(s) => members.push(s),
                    }
                }
                state = kind.apply(state.take(), c);
                if let Some(s) = &state {
                    let loaded = kind
                        .load(
                            rows.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                            members.clone(),
                        )
                        .expect("what a kind writes, it loads");
                    assert_eq!(
                        format!("{loaded:?}"),
                        format!("{s:?}"),
                        "{} reloads as it was",
                        K::NAME
                    );
                }
            }
            if let Some(d) = kind.deadline(state.as_ref(), &K::Change::default()) {
                let mut c = K::Change::default();
                let mut out = KindOut::default();
                kind.on_deadline(
                    state.as_ref(),
                    &mut c,
                    crate::triggers::Due { at: d, until: d },
                    &mut out,
                );
                fires += out.fires.len();
                assert!(
                    kind.deadline(state.as_ref(), &c).is_none_or(|n| n > d),
                    "{}: a deadline handled moves on",
                    K::NAME
                );
            }
            (K::NAME, fires)
        }
    }

    #[test]
    fn every_kind_parses_opens_reports_and_round_trips() {
        let mut names = Vec::new();
        for text in MANIFESTS {
            let m = Manifest::parse(text).expect("a valid manifest");
            let spec = KindSpec::from_trigger(&m.trigger).expect("a registered kind");
            assert_eq!(spec.name(), m.trigger.kind());
            let (name, _fires) = spec.visit(RoundTrip);
            names.push(name);
        }
        assert_eq!(names, ["batch", "dwell", "schedule"]);
    }
}
