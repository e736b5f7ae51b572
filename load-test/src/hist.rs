//! Latency histograms: a log-scale [`Histogram`] of microsecond values (about 1% relative
//! error, mergeable and subtractable, serialized sparse) and [`AtomicHistogram`], the same
//! buckets recorded lock-free by many bot tasks at once.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Growth factor between bucket bounds.
const GROWTH: f64 = 1.02;
/// Buckets: enough for values up to ~2.4 × 10^9 µs (40 minutes).
const BUCKETS: usize = 1_100;

/// The bucket of a value in microseconds.
fn bucket_of(us: u64) -> usize {
    if us <= 1 {
        return 0;
    }
    ((us as f64).ln() / GROWTH.ln())
        .floor()
        .min((BUCKETS - 1) as f64) as usize
}

/// The lower bound of bucket `i`, microseconds.
fn bucket_low(i: usize) -> f64 {
    if i == 0 { 0.0 } else { GROWTH.powi(i as i32) }
}

/// A representative value of bucket `i` (its geometric middle), microseconds.
fn bucket_mid(i: usize) -> f64 {
    if i == 0 {
        1.0
    } else {
        GROWTH.powf(i as f64 + 0.5)
    }
}

/// A histogram of microsecond values (see the module docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(from = "SparseHistogram", into = "SparseHistogram")]
pub struct Histogram {
    counts: Vec<u64>,
    count: u64,
    sum_us: u64,
    max_us: u64,
}

/// The serialized form: only the non-empty buckets.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct SparseHistogram {
    count: u64,
    sum_us: u64,
    max_us: u64,
    /// `[bucket, count]` pairs.
    buckets: Vec<(u32, u64)>,
}

impl From<Histogram> for SparseHistogram {
    fn from(h: Histogram) -> Self {
        SparseHistogram {
            count: h.count,
            sum_us: h.sum_us,
            max_us: h.max_us,
            buckets: h
                .counts
                .iter()
                .enumerate()
                .filter(|(_, c)| **c > 0)
                .map(|(i, c)| (i as u32, *c))
                .collect(),
        }
    }
}

impl From<SparseHistogram> for Histogram {
    fn from(s: SparseHistogram) -> Self {
        let mut h = Histogram::new();
        for (i, c) in s.buckets {
            if let Some(slot) = h.counts.get_mut(i as usize) {
                *slot += c;
            }
        }
        h.count = s.count;
        h.sum_us = s.sum_us;
        h.max_us = s.max_us;
        h
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            count: 0,
            sum_us: 0,
            max_us: 0,
        }
    }

    /// Records one value.
    pub fn record(&mut self, value: Duration) {
        let us = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        self.counts[bucket_of(us)] += 1;
        self.count += 1;
        self.sum_us = self.sum_us.saturating_add(us);
        self.max_us = self.max_us.max(us);
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The largest value recorded, in milliseconds (0 when empty).
    pub fn max_ms(&self) -> f64 {
        self.max_us as f64 / 1_000.0
    }

    /// The mean, in milliseconds (0 when empty).
    pub fn mean_ms(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum_us as f64 / self.count as f64 / 1_000.0
        }
    }

    /// The `q` quantile (0..=1), in milliseconds, within about 1% (0 when empty). Never more
    /// than the maximum recorded.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_mid(i).min(self.max_us as f64) / 1_000.0;
            }
        }
        self.max_ms()
    }

    /// Adds `other`'s values.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.count += other.count;
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
        self.max_us = self.max_us.max(other.max_us);
    }

    /// The values recorded since `earlier` (a previous snapshot of the same histogram). The
    /// maximum of the difference is the largest non-empty bucket's upper bound, capped by the
    /// overall maximum.
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let mut d = Histogram::new();
        for (i, (a, b)) in self.counts.iter().zip(&earlier.counts).enumerate() {
            d.counts[i] = a.saturating_sub(*b);
            if d.counts[i] > 0 {
                d.max_us = (bucket_low(i + 1) as u64).min(self.max_us);
            }
        }
        d.count = self.count.saturating_sub(earlier.count);
        d.sum_us = self.sum_us.saturating_sub(earlier.sum_us);
        d
    }

    /// Non-empty buckets as `(lower bound ms, upper bound ms, count)`, for plotting.
    pub fn buckets_ms(&self) -> Vec<(f64, f64, u64)> {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| (bucket_low(i) / 1_000.0, bucket_low(i + 1) / 1_000.0, *c))
            .collect()
    }

    /// Count, mean, p50, p90, p99, max as a serializable summary.
    pub fn summary(&self) -> Summary {
        Summary {
            count: self.count,
            mean_ms: round3(self.mean_ms()),
            p50_ms: round3(self.quantile_ms(0.5)),
            p90_ms: round3(self.quantile_ms(0.9)),
            p99_ms: round3(self.quantile_ms(0.99)),
            max_ms: round3(self.max_ms()),
        }
    }
}

/// Rounds to three decimals (report readability).
pub fn round3(x: f64) -> f64 {
    (x * 1_000.0).round() / 1_000.0
}

/// A histogram's headline numbers, milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Values recorded.
    pub count: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Maximum.
    pub max_ms: f64,
}

/// A [`Histogram`] recorded with atomics, from any thread.
#[derive(Debug)]
pub struct AtomicHistogram {
    counts: Vec<AtomicU64>,
    sum_us: AtomicU64,
    max_us: AtomicU64,
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl AtomicHistogram {
    /// An empty histogram.
    pub fn new() -> Self {
        AtomicHistogram {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
        }
    }

    /// Records one value.
    pub fn record(&self, value: Duration) {
        let us = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        self.counts[bucket_of(us)].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
        self.max_us.fetch_max(us, Relaxed);
    }

    /// A copy of the values so far.
    pub fn snapshot(&self) -> Histogram {
        let mut h = Histogram::new();
        for (slot, c) in h.counts.iter_mut().zip(&self.counts) {
            *slot = c.load(Relaxed);
        }
        // The count is the buckets' sum, so it never claims values the buckets lack.
        h.count = h.counts.iter().sum();
        h.sum_us = self.sum_us.load(Relaxed);
        h.max_us = self.max_us.load(Relaxed);
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(x: u64) -> Duration {
        Duration::from_millis(x)
    }

    #[test]
    fn quantiles_are_within_two_percent() {
        let mut h = Histogram::new();
        for v in 1..=1_000 {
            h.record(ms(v));
        }
        for (q, want) in [(0.5, 500.0), (0.9, 900.0), (0.99, 990.0)] {
            let got = h.quantile_ms(q);
            assert!((got - want).abs() / want < 0.02, "q{q}: {got} vs {want}");
        }
        assert_eq!(h.max_ms(), 1_000.0);
        assert_eq!(h.count(), 1_000);
        assert!((h.mean_ms() - 500.5).abs() < 1e-9);
        assert_eq!(Histogram::new().quantile_ms(0.99), 0.0);
    }

    #[test]
    fn merge_since_and_serde_round_trip() {
        let mut a = Histogram::new();
        a.record(ms(10));
        let earlier = a.clone();
        a.record(ms(20));
        a.record(ms(30));
        let d = a.since(&earlier);
        assert_eq!(d.count(), 2);
        assert!(d.quantile_ms(0.01) > 19.0 && d.quantile_ms(1.0) <= 30.0);
        let mut m = earlier.clone();
        m.merge(&d);
        assert_eq!(m.count(), 3);
        let json = serde_json::to_string(&a).unwrap();
        let back: Histogram = serde_json::from_str(&json).unwrap();
        assert_eq!(back, a);
        assert!(json.len() < 200, "sparse: {json}");
    }

    #[test]
    fn atomic_snapshot_matches_plain() {
        let atomic = AtomicHistogram::new();
        let mut plain = Histogram::new();
        for v in [0, 1, 5, 50, 5_000, 50_000] {
            atomic.record(Duration::from_micros(v));
            plain.record(Duration::from_micros(v));
        }
        assert_eq!(atomic.snapshot(), plain);
        let buckets = plain.buckets_ms();
        assert_eq!(buckets.iter().map(|b| b.2).sum::<u64>(), 6);
        assert!(buckets.iter().all(|(lo, hi, _)| lo < hi));
    }
}
