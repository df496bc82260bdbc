//! The figures every benchmark prints: percentiles and medians of latencies.

use std::time::Duration;

/// Percentile `p` (0–100) of sorted samples, nearest-rank.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Median of durations (the lower middle for an even count).
pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    if v.is_empty() {
        Duration::ZERO
    } else {
        v[(v.len() - 1) / 2]
    }
}

/// A duration in milliseconds, for printing.
pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&s, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&s, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&s, 100.0), Duration::from_millis(100));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
        assert_eq!(percentile(&s[..1], 99.0), Duration::from_millis(1));
    }

    #[test]
    fn median_takes_the_middle() {
        let d = |ms: &[u64]| {
            ms.iter()
                .map(|m| Duration::from_millis(*m))
                .collect::<Vec<_>>()
        };
        assert_eq!(median(d(&[5, 1, 3])), Duration::from_millis(3));
        assert_eq!(median(d(&[4, 1, 3, 2])), Duration::from_millis(2));
        assert_eq!(median(Vec::new()), Duration::ZERO);
    }
}
