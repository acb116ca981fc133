//! Latency histogram.

/// Log-linear histogram of microseconds: exact below 64, then 32 buckets per
/// power of two (about 3 % wide).
#[derive(Clone)]
pub(crate) struct Hist {
    pub(crate) counts: Vec<u64>,
    pub(crate) n: u64,
    pub(crate) max: u64,
}

pub(crate) const HIST_SUB: u64 = 32;
pub(crate) const HIST_LINEAR: u64 = 64;

impl Hist {
    pub(crate) fn new() -> Self {
        Hist { counts: vec![0; (HIST_LINEAR + 40 * HIST_SUB) as usize], n: 0, max: 0 }
    }
    pub(crate) fn index(v: u64) -> usize {
        if v < HIST_LINEAR {
            return v as usize;
        }
        let e = 63 - u64::from(v.leading_zeros()); // >= 6
        let sub = (v >> (e - 5)) & (HIST_SUB - 1);
        (HIST_LINEAR + (e - 6) * HIST_SUB + sub).min(HIST_LINEAR + 40 * HIST_SUB - 1) as usize
    }
    /// Lower bound of a bucket's values.
    pub(crate) fn value(i: usize) -> u64 {
        let i = i as u64;
        if i < HIST_LINEAR {
            return i;
        }
        let e = (i - HIST_LINEAR) / HIST_SUB + 6;
        let sub = (i - HIST_LINEAR) % HIST_SUB;
        (1 << e) + (sub << (e - 5))
    }
    pub(crate) fn record(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
        self.n += 1;
        self.max = self.max.max(v);
    }
    pub(crate) fn merge(&mut self, o: &Hist) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.n += o.n;
        self.max = self.max.max(o.max);
    }
    /// The value at quantile `q`, in milliseconds.
    pub(crate) fn quantile_ms(&self, q: f64) -> Option<f64> {
        if self.n == 0 {
            return None;
        }
        let rank = ((q * self.n as f64).ceil() as u64).clamp(1, self.n);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                // Middle of the bucket, never above the true maximum.
                let lo = Self::value(i);
                let hi = if i + 1 < self.counts.len() { Self::value(i + 1) } else { lo };
                return Some(((lo + hi) / 2).min(self.max) as f64 / 1000.0);
            }
        }
        Some(self.max as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles() {
        let mut h = Hist::new();
        for v in 1..=10_000 {
            h.record(v);
        }
        let p50 = h.quantile_ms(0.5).unwrap_or(0.0);
        assert!((4.8..5.2).contains(&p50), "{p50}");
        assert_eq!(h.quantile_ms(1.0), Some(10.0));
    }
}
