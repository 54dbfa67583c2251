//! Small statistics: exact percentiles of latency samples, medians, a least-squares slope.

/// Latency samples in microseconds; exact percentiles (sorted on demand).
#[derive(Debug, Default, Clone)]
pub struct Latencies {
    samples: Vec<u32>,
    sorted: bool,
}

impl From<Vec<u32>> for Latencies {
    fn from(samples: Vec<u32>) -> Self {
        Latencies {
            samples,
            sorted: false,
        }
    }
}

impl Latencies {
    pub fn merge(&mut self, other: Latencies) {
        self.samples.extend(other.samples);
        self.sorted = false;
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// The `q`-quantile (0..=1) in milliseconds; 0 without samples.
    pub fn quantile_ms(&mut self, q: f64) -> f64 {
        if self.samples.is_empty() {
            return 0.0;
        }
        if !self.sorted {
            self.samples.sort_unstable();
            self.sorted = true;
        }
        let rank = ((self.samples.len() as f64 - 1.0) * q).round() as usize;
        f64::from(self.samples[rank.min(self.samples.len() - 1)]) / 1000.0
    }
}

/// The median (upper median for an even count); 0 for none.
pub fn median(values: &[f64]) -> f64 {
    quantile(values, 0.5)
}

/// The `q`-quantile of a few values (nearest rank); 0 for none.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Least-squares slope of `y` over `x`; 0 with fewer than two distinct x.
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    if sxx == 0.0 { 0.0 } else { sxy / sxx }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_exact_ranks() {
        let mut latencies = Latencies::from((1..=100).map(|ms| ms * 1000).collect::<Vec<u32>>());
        assert_eq!(latencies.quantile_ms(0.0), 1.0);
        assert_eq!(latencies.quantile_ms(0.5), 51.0);
        assert_eq!(latencies.quantile_ms(0.99), 99.0);
        assert_eq!(latencies.quantile_ms(1.0), 100.0);
        assert_eq!(Latencies::default().quantile_ms(0.5), 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    }

    #[test]
    fn slope_of_a_line() {
        let points: Vec<(f64, f64)> = (0..5)
            .map(|x| (x as f64 * 100.0, 50.0 + x as f64 * 2500.0))
            .collect();
        assert!((slope(&points) - 25.0).abs() < 1e-9);
        assert_eq!(slope(&[(1.0, 1.0)]), 0.0);
    }
}
