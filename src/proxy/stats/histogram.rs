//! Latency histograms: fixed buckets of relaxed atomic counters, so that
//! recording a duration costs one bucket lookup and one `fetch_add`, with
//! no lock and no allocation. The same buckets are what `/metrics`
//! exports as a Prometheus histogram, what `SHOW STATS` reads p50 and p99
//! from, and what the dashboard subtracts between two snapshots to get
//! the percentiles of the last seconds.
//!
//! Bounds run from 10 µs to 100 s, five per decade (1, 2, 3, 5, 7), so a
//! percentile read from them is off by at most the width of one bucket,
//! at most 2x.

use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of the buckets, in microseconds; one more bucket past the
/// last holds everything longer (`+Inf`).
pub const BOUNDS_US: [u64; 36] = {
    const STEPS: [u64; 5] = [10, 20, 30, 50, 70];
    let mut b = [0u64; 36];
    let mut decade = 1u64;
    let mut i = 0;
    while i < 35 {
        b[i] = STEPS[i % 5] * decade;
        if i % 5 == 4 {
            decade *= 10;
        }
        i += 1;
    }
    b[35] = 100_000_000;
    b
};

/// Buckets, the `+Inf` one included.
pub const BUCKETS: usize = BOUNDS_US.len() + 1;

/// The bucket a duration falls in: the first whose bound is at least it.
pub fn bucket_of(us: u64) -> usize {
    BOUNDS_US.partition_point(|&b| b < us)
}

/// Counts per bucket, live.
#[derive(Debug)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS],
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Histogram {
    pub fn record(&self, us: u64) {
        self.counts[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts now, one per bucket (not cumulative).
    pub fn counts(&self) -> Vec<u64> {
        self.counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }
}

/// The `q` quantile (0..1) of bucket counts, in microseconds: the bucket
/// where the cumulative count reaches `q` of the total, interpolated
/// linearly inside it, as Prometheus' `histogram_quantile` does. None
/// when there is no sample. Past the last bound it answers that bound.
pub fn quantile(counts: &[u64], q: f64) -> Option<u64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    for (i, &n) in counts.iter().enumerate() {
        if n > 0 && (below + n) as f64 >= rank {
            let Some(&upper) = BOUNDS_US.get(i) else {
                return Some(BOUNDS_US[BOUNDS_US.len() - 1]);
            };
            let lower = if i == 0 { 0 } else { BOUNDS_US[i - 1] };
            let within = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
            return Some(lower + ((upper - lower) as f64 * within).round() as u64);
        }
        below += n;
    }
    Some(BOUNDS_US[BOUNDS_US.len() - 1])
}

/// `now - before`, bucket by bucket: the samples recorded in between.
pub fn delta(now: &[u64], before: &[u64]) -> Vec<u64> {
    now.iter()
        .enumerate()
        .map(|(i, &n)| n.saturating_sub(before.get(i).copied().unwrap_or(0)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_rise_five_per_decade() {
        assert_eq!(&BOUNDS_US[..6], &[10, 20, 30, 50, 70, 100]);
        assert_eq!(BOUNDS_US[34], 70_000_000);
        assert_eq!(BOUNDS_US[35], 100_000_000);
        assert!(BOUNDS_US.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn durations_land_in_the_first_bucket_that_holds_them() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(10), 0);
        assert_eq!(bucket_of(11), 1);
        assert_eq!(bucket_of(100), 5);
        assert_eq!(bucket_of(101), 6);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        let h = Histogram::default();
        assert_eq!(quantile(&h.counts(), 0.5), None);
        // 100 samples of 150 µs (bucket 100..200) and one of 3 s.
        for _ in 0..99 {
            h.record(150);
        }
        h.record(3_000_000);
        let c = h.counts();
        let p50 = quantile(&c, 0.5).unwrap();
        assert!((100..=200).contains(&p50), "{p50}");
        assert!(quantile(&c, 0.99).unwrap() <= 200);
        let p999 = quantile(&c, 0.999).unwrap();
        assert!((2_000_000..=3_000_000).contains(&p999), "{p999}");
        // Beyond the last bound.
        let h = Histogram::default();
        h.record(500_000_000);
        assert_eq!(quantile(&h.counts(), 0.99), Some(100_000_000));
    }

    #[test]
    fn a_delta_holds_only_what_came_in_between() {
        let h = Histogram::default();
        for _ in 0..1000 {
            h.record(40);
        }
        let before = h.counts();
        for _ in 0..10 {
            h.record(40_000);
        }
        let d = delta(&h.counts(), &before);
        assert_eq!(d.iter().sum::<u64>(), 10);
        let p50 = quantile(&d, 0.5).unwrap();
        assert!((30_000..=50_000).contains(&p50), "{p50}");
    }
}
