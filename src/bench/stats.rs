//! Summary statistics with numpy's conventions, so our numbers line up with SGLang's, which
//! computes them with `np.mean`, `np.median`, `np.std` (population) and `np.percentile` (linear).

use serde::Serialize;

/// Mean, spread and tail of one latency series; every field is 0 for an empty series (SGLang
/// reports 0 when, e.g., a non-streaming backend yields no inter-token latencies).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    pub mean: f64,
    pub median: f64,
    pub std: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    pub fn of(values: &[f64]) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        Summary {
            mean: mean(values),
            median: percentile_sorted(&sorted, 50.0),
            std: std(values),
            p95: percentile_sorted(&sorted, 95.0),
            p99: percentile_sorted(&sorted, 99.0),
            max: sorted.last().copied().unwrap_or(0.0),
        }
    }

    /// The same summary with every statistic multiplied by `factor` (seconds to milliseconds).
    pub fn scaled(self, factor: f64) -> Self {
        Summary {
            mean: self.mean * factor,
            median: self.median * factor,
            std: self.std * factor,
            p95: self.p95 * factor,
            p99: self.p99 * factor,
            max: self.max * factor,
        }
    }
}

/// Arithmetic mean; 0 for an empty slice.
pub fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.iter().sum::<f64>() / values.len() as f64
}

/// Population standard deviation (numpy's default `ddof=0`); 0 for an empty slice.
pub fn std(values: &[f64]) -> f64 {
    let m = mean(values);
    mean(&values.iter().map(|v| (v - m) * (v - m)).collect::<Vec<_>>()).sqrt()
}

/// The `q`-th percentile (0..=100) by numpy's default linear interpolation between the two
/// nearest ranks; 0 for an empty slice.
pub fn percentile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    percentile_sorted(&sorted, q)
}

fn percentile_sorted(sorted: &[f64], q: f64) -> f64 {
    let Some(last) = sorted.len().checked_sub(1) else {
        return 0.0;
    };
    let rank = (q.clamp(0.0, 100.0) / 100.0) * last as f64;
    let lo = (rank.floor() as usize).min(last);
    let hi = (lo + 1).min(last);
    let (a, b) = (sorted[lo], sorted[hi]);
    lerp(a, b, rank - lo as f64)
}

/// numpy's `_lerp`: interpolating from the nearer end keeps the result exact at both ends and
/// bit-identical to numpy's.
fn lerp(a: f64, b: f64, t: f64) -> f64 {
    let diff = b - a;
    if t >= 0.5 {
        b - diff * (1.0 - t)
    } else {
        a + diff * t
    }
}
