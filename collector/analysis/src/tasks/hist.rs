//! A small log-linear histogram of nanosecond durations (16 sub-buckets per power of two, about
//! 6 % error), for wake→poll percentiles per task without keeping every sample.

/// Values below this are their own bucket.
const LINEAR: u64 = 16;
const SUB_BITS: u32 = 4;

/// Counts per bucket; grows only as far as the largest value seen.
#[derive(Debug, Clone, Default)]
pub(crate) struct LogHist {
    counts: Vec<u32>,
    total: u64,
}

fn bucket(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros(); // >= 4
    let sub = (v >> (exp - SUB_BITS)) & ((1 << SUB_BITS) - 1);
    (LINEAR + u64::from(exp - SUB_BITS) * (1 << SUB_BITS) + sub) as usize
}

/// The middle of a bucket's range.
fn value(b: usize) -> u64 {
    let b = b as u64;
    if b < LINEAR {
        return b;
    }
    let exp = (b - LINEAR) / (1 << SUB_BITS) + u64::from(SUB_BITS);
    let sub = (b - LINEAR) % (1 << SUB_BITS);
    let low = (1u64 << exp) + (sub << (exp - u64::from(SUB_BITS)));
    low + (1u64 << (exp - u64::from(SUB_BITS))) / 2
}

impl LogHist {
    pub(crate) fn add(&mut self, v: u64) {
        let b = bucket(v);
        if b >= self.counts.len() {
            self.counts.resize(b + 1, 0);
        }
        self.counts[b] = self.counts[b].saturating_add(1);
        self.total += 1;
    }

    pub(crate) fn merge(&mut self, other: &LogHist) {
        if other.counts.len() > self.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a = a.saturating_add(*b);
        }
        self.total += other.total;
    }

    /// The value at quantile `q` (0..=1), or None when empty.
    pub(crate) fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank {
                return Some(value(b));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_the_bucket_error() {
        let mut h = LogHist::default();
        assert_eq!(h.quantile(0.5), None);
        for v in 1..=1000u64 {
            h.add(v * 1000);
        }
        let p50 = h.quantile(0.5).unwrap() as f64;
        let p99 = h.quantile(0.99).unwrap() as f64;
        assert!((p50 / 500_000.0 - 1.0).abs() < 0.07, "{p50}");
        assert!((p99 / 990_000.0 - 1.0).abs() < 0.07, "{p99}");
        h.add(u64::MAX);
        assert!(h.quantile(1.0).unwrap() > 1 << 62);
        for v in 0..16 {
            assert_eq!(value(bucket(v)), v);
        }
    }
}
