//! Recent activity per minute, for the dashboard's charts: per tenant the
//! events ingested, per rule the fires completed and failed, the handler's
//! latency and the timers' lateness. Kept in memory for the last hour of
//! engine time (a ring of minutes), by the node that saw it; histograms
//! with fixed buckets, so percentiles are approximate (interpolated
//! within a bucket) and two nodes' minutes add up.
//!
//! `/metrics` keeps the same measures for Prometheus; this is the view a
//! tenant may read of its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::SharedClock;

/// Minutes kept.
pub const MINUTES: usize = 60;
const MINUTE_MS: i64 = 60_000;

/// Upper bounds of the histogram buckets, in microseconds (the last one
/// holds everything above).
const BOUNDS_US: [u64; 19] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000,
];
const BUCKETS: usize = BOUNDS_US.len() + 1;

/// A histogram of durations.
#[derive(Debug, Clone, Copy, Default)]
struct Histogram {
    counts: [u32; BUCKETS],
}

impl Histogram {
    fn record(&mut self, us: u64) {
        let i = BOUNDS_US.partition_point(|&b| b < us);
        self.counts[i] = self.counts[i].saturating_add(1);
    }

    fn total(&self) -> u64 {
        self.counts.iter().map(|&c| u64::from(c)).sum()
    }

    /// The `q` quantile in milliseconds, interpolated within its bucket;
    /// `None` when empty.
    fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let rank = (q * total as f64).ceil().max(1.0);
        let mut seen = 0.0;
        for (i, &c) in self.counts.iter().enumerate() {
            let c = f64::from(c);
            if c > 0.0 && seen + c >= rank {
                let low = if i == 0 { 0 } else { BOUNDS_US[i - 1] } as f64;
                let high = BOUNDS_US.get(i).copied().unwrap_or(BOUNDS_US[i - 1] * 2) as f64;
                let within = (rank - seen) / c;
                return Some((low + (high - low) * within) / 1000.0);
            }
            seen += c;
        }
        None
    }
}

/// One minute of one rule.
#[derive(Debug, Clone, Copy, Default)]
struct RuleMinute {
    minute: i64,
    fires: u64,
    failed: u64,
    latency: Histogram,
    lateness: Histogram,
}

/// One minute of one tenant's ingest.
#[derive(Debug, Clone, Copy, Default)]
struct IngestMinute {
    minute: i64,
    events: u64,
}

/// A ring of minutes: slot `m % MINUTES` holds minute `m` (older ones
/// are overwritten).
#[derive(Debug)]
struct Ring<T> {
    slots: Box<[T]>,
}

trait Slot: Default + Copy {
    fn minute(&self) -> i64;
    fn fresh(minute: i64) -> Self;
}

impl Slot for RuleMinute {
    fn minute(&self) -> i64 {
        self.minute
    }
    fn fresh(minute: i64) -> Self {
        Self {
            minute,
            ..Self::default()
        }
    }
}

impl Slot for IngestMinute {
    fn minute(&self) -> i64 {
        self.minute
    }
    fn fresh(minute: i64) -> Self {
        Self { minute, events: 0 }
    }
}

impl<T: Slot> Ring<T> {
    fn new() -> Self {
        Self {
            slots: vec![T::fresh(i64::MIN); MINUTES].into_boxed_slice(),
        }
    }

    fn at(&mut self, minute: i64) -> &mut T {
        let slot = &mut self.slots[minute.rem_euclid(MINUTES as i64) as usize];
        if slot.minute() != minute {
            *slot = T::fresh(minute);
        }
        slot
    }

    fn get(&self, minute: i64) -> Option<&T> {
        let slot = &self.slots[minute.rem_euclid(MINUTES as i64) as usize];
        (slot.minute() == minute).then_some(slot)
    }
}

#[derive(Debug)]
struct TenantStats {
    ingest: Ring<IngestMinute>,
    rules: HashMap<String, Ring<RuleMinute>>,
}

/// The engine's recent activity.
#[derive(Debug)]
pub struct Stats {
    clock: SharedClock,
    tenants: Mutex<HashMap<String, TenantStats>>,
}

/// One rule's last minutes.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RuleSeries {
    /// The rule.
    pub rule: String,
    /// Fires completed, per minute.
    pub fires: Vec<u64>,
    /// Failed handler attempts, per minute.
    pub failed: Vec<u64>,
    /// Handler latency, median (ms), per minute (`null`: no call).
    pub latency_p50_ms: Vec<Option<f64>>,
    /// Handler latency, 99th percentile (ms), per minute.
    pub latency_p99_ms: Vec<Option<f64>>,
    /// How late deadlines were handled, 99th percentile (ms), per minute
    /// (`null`: none fell due).
    pub lateness_p99_ms: Vec<Option<f64>>,
}

/// A tenant's last minutes.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TenantSeries {
    /// Engine time (ms) of the answer.
    pub now: i64,
    /// The start (ms) of each minute, oldest first; every series below
    /// has one value per minute.
    pub minutes: Vec<i64>,
    /// Events ingested, per minute.
    pub ingest: Vec<u64>,
    /// Per rule with any activity in these minutes, by name.
    pub rules: Vec<RuleSeries>,
}

impl Stats {
    /// Stats on `clock`'s minutes.
    pub fn new(clock: SharedClock) -> Arc<Self> {
        Arc::new(Self {
            clock,
            tenants: Mutex::new(HashMap::new()),
        })
    }

    fn minute(&self) -> i64 {
        self.clock.now_millis().div_euclid(MINUTE_MS)
    }

    fn with_rule(&self, tenant: &str, rule: &str, f: impl FnOnce(&mut RuleMinute)) {
        let minute = self.minute();
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        let t = tenants
            .entry(tenant.to_owned())
            .or_insert_with(|| TenantStats {
                ingest: Ring::new(),
                rules: HashMap::new(),
            });
        let ring = match t.rules.get_mut(rule) {
            Some(r) => r,
            None => t.rules.entry(rule.to_owned()).or_insert_with(Ring::new),
        };
        f(ring.at(minute));
    }

    /// `n` events of `tenant` were ingested.
    pub fn ingested(&self, tenant: &str, n: u64) {
        let minute = self.minute();
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        let t = match tenants.get_mut(tenant) {
            Some(t) => t,
            None => tenants
                .entry(tenant.to_owned())
                .or_insert_with(|| TenantStats {
                    ingest: Ring::new(),
                    rules: HashMap::new(),
                }),
        };
        t.ingest.at(minute).events += n;
    }

    /// A handler call of `rule` took `took` and completed the fire (`ok`)
    /// or failed.
    pub fn handled(&self, tenant: &str, rule: &str, took: Duration, ok: bool) {
        self.with_rule(tenant, rule, |m| {
            m.latency
                .record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
            if ok {
                m.fires += 1;
            } else {
                m.failed += 1;
            }
        });
    }

    /// A deadline of `rule` was handled `late_ms` after it fell due.
    pub fn late(&self, tenant: &str, rule: &str, late_ms: i64) {
        let us = u64::try_from(late_ms.max(0))
            .unwrap_or(0)
            .saturating_mul(1000);
        self.with_rule(tenant, rule, |m| m.lateness.record(us));
    }

    /// Forget a tenant (deleted).
    pub fn forget(&self, tenant: &str) {
        self.tenants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(tenant);
    }

    /// `tenant`'s last `minutes` minutes (1 to 60), the current one last.
    pub fn series(&self, tenant: &str, minutes: usize) -> TenantSeries {
        let minutes = minutes.clamp(1, MINUTES);
        let now = self.clock.now_millis();
        let last = now.div_euclid(MINUTE_MS);
        let range: Vec<i64> = (last + 1 - minutes as i64..=last).collect();
        let tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        let t = tenants.get(tenant);
        let ingest = range
            .iter()
            .map(|&m| t.and_then(|t| t.ingest.get(m)).map_or(0, |s| s.events))
            .collect();
        let mut rules: Vec<RuleSeries> = t
            .into_iter()
            .flat_map(|t| &t.rules)
            .filter(|(_, ring)| range.iter().any(|&m| ring.get(m).is_some()))
            .map(|(name, ring)| {
                let at = |m: i64| ring.get(m).copied().unwrap_or_default();
                RuleSeries {
                    rule: name.clone(),
                    fires: range.iter().map(|&m| at(m).fires).collect(),
                    failed: range.iter().map(|&m| at(m).failed).collect(),
                    latency_p50_ms: range
                        .iter()
                        .map(|&m| at(m).latency.quantile_ms(0.5))
                        .collect(),
                    latency_p99_ms: range
                        .iter()
                        .map(|&m| at(m).latency.quantile_ms(0.99))
                        .collect(),
                    lateness_p99_ms: range
                        .iter()
                        .map(|&m| at(m).lateness.quantile_ms(0.99))
                        .collect(),
                }
            })
            .collect();
        rules.sort_by(|a, b| a.rule.cmp(&b.rule));
        TenantSeries {
            now,
            minutes: range.iter().map(|m| m * MINUTE_MS).collect(),
            ingest,
            rules,
        }
    }
}

impl TenantSeries {
    /// Add another node's answer for the same minutes: counts add up; a
    /// percentile is the larger of the two (a rule runs on one node at a
    /// time, so both have it only in the minute it moved).
    pub fn merge(&mut self, other: &TenantSeries) {
        if other.minutes != self.minutes {
            return;
        }
        let add = |a: &mut Vec<u64>, b: &[u64]| {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        };
        let max = |a: &mut Vec<Option<f64>>, b: &[Option<f64>]| {
            for (x, y) in a.iter_mut().zip(b) {
                *x = match (*x, *y) {
                    (Some(p), Some(q)) => Some(p.max(q)),
                    (p, q) => p.or(q),
                };
            }
        };
        add(&mut self.ingest, &other.ingest);
        for r in &other.rules {
            match self.rules.iter_mut().find(|m| m.rule == r.rule) {
                Some(m) => {
                    add(&mut m.fires, &r.fires);
                    add(&mut m.failed, &r.failed);
                    max(&mut m.latency_p50_ms, &r.latency_p50_ms);
                    max(&mut m.latency_p99_ms, &r.latency_p99_ms);
                    max(&mut m.lateness_p99_ms, &r.lateness_p99_ms);
                }
                None => self.rules.push(r.clone()),
            }
        }
        self.rules.sort_by(|a, b| a.rule.cmp(&b.rule));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn minutes_count_and_roll_over() {
        let clock = Arc::new(ManualClock::new(10 * MINUTE_MS));
        let stats = Stats::new(clock.clone());
        stats.ingested("t", 5);
        stats.handled("t", "r", Duration::from_millis(3), true);
        stats.handled("t", "r", Duration::from_millis(3), false);
        clock.set(11 * MINUTE_MS + 5);
        stats.ingested("t", 2);
        stats.late("t", "r", 40);
        let s = stats.series("t", 3);
        assert_eq!(
            s.minutes,
            vec![9 * MINUTE_MS, 10 * MINUTE_MS, 11 * MINUTE_MS]
        );
        assert_eq!(s.ingest, vec![0, 5, 2]);
        assert_eq!(s.rules.len(), 1);
        assert_eq!(s.rules[0].fires, vec![0, 1, 0]);
        assert_eq!(s.rules[0].failed, vec![0, 1, 0]);
        let p50 = s.rules[0].latency_p50_ms[1].unwrap();
        assert!((2.5..=5.0).contains(&p50), "{p50}");
        let late = s.rules[0].lateness_p99_ms[2].unwrap();
        assert!((25.0..=50.0).contains(&late), "{late}");
        assert_eq!(s.rules[0].latency_p99_ms[0], None);
        // An hour on, the old minutes are gone, not mistaken for new ones.
        clock.set(71 * MINUTE_MS);
        let s = stats.series("t", 60);
        assert_eq!(s.ingest.iter().sum::<u64>(), 0);
        assert!(s.rules.is_empty());
        assert!(stats.series("other", 5).rules.is_empty());
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let mut h = Histogram::default();
        for us in 1..=100u64 {
            h.record(us * 1000);
        }
        let p50 = h.quantile_ms(0.5).unwrap();
        assert!((25.0..=50.0).contains(&p50), "{p50}");
        let p99 = h.quantile_ms(0.99).unwrap();
        assert!((50.0..=100.0).contains(&p99), "{p99}");
        assert_eq!(Histogram::default().quantile_ms(0.5), None);
    }

    #[test]
    fn nodes_answers_merge() {
        let clock = Arc::new(ManualClock::new(0));
        let (a, b) = (Stats::new(clock.clone()), Stats::new(clock));
        a.handled("t", "r", Duration::from_millis(1), true);
        b.handled("t", "r", Duration::from_millis(100), true);
        b.handled("t", "s", Duration::from_millis(1), true);
        let mut s = a.series("t", 2);
        s.merge(&b.series("t", 2));
        assert_eq!(s.rules.len(), 2);
        assert_eq!(s.rules[0].fires, vec![0, 2]);
        assert!(s.rules[0].latency_p99_ms[1].unwrap() >= 50.0);
    }
}
