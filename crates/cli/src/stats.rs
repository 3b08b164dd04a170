//! Figures of benchmarks: quantiles of latencies.

use std::time::Duration;

/// The `p` quantile of `samples` in milliseconds (sorts them); 0 for none.
pub fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_unstable();
    let i = ((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1;
    samples[i].as_secs_f64() * 1000.0
}
