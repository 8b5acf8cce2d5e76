//! Summary statistics over seeds: median and range, and two ways of asking whether a variant
//! differs from the reference when both ran with the same seeds (paired by seed): the exact
//! two-sided sign test and a percentile bootstrap interval of the mean difference.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// Median, minimum and maximum of some values (NaN-free input).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    /// The median (mean of the middle two for an even count).
    pub median: f64,
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
}

impl Spread {
    /// `None` for no values.
    pub fn of(values: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { 0.5 * (v[n / 2 - 1] + v[n / 2]) };
        Some(Self { median, min: v[0], max: v[n - 1] })
    }
}

/// The difference of a variant to the reference over the seeds both have.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Paired {
    /// Seeds compared.
    pub n: usize,
    /// Median of the per-seed differences (variant − reference).
    pub median: f64,
    /// Mean of the per-seed differences.
    pub mean: f64,
    /// Seeds where the variant is higher / lower / equal.
    pub wins: usize,
    /// See `wins`.
    pub losses: usize,
    /// See `wins`.
    pub ties: usize,
    /// Exact two-sided sign-test p-value (ties dropped); 1 when nothing is left.
    pub sign_p: f64,
    /// 95 % percentile-bootstrap interval of the mean difference (10,000 resamples of the seeds).
    pub ci95: [f64; 2],
}

/// Exact two-sided sign test: the probability, under "higher and lower equally likely", of a
/// split at least as uneven as `wins : losses`.
pub fn sign_test(wins: usize, losses: usize) -> f64 {
    let n = wins + losses;
    if n == 0 {
        return 1.0;
    }
    let k = wins.min(losses);
    // P(X ≤ k) for X ~ Binomial(n, 1/2), doubled.
    let mut c = 1.0f64; // C(n, 0)
    let mut tail = 0.0;
    for i in 0..=k {
        if i > 0 {
            c = c * (n - i + 1) as f64 / i as f64;
        }
        tail += c;
    }
    (2.0 * tail / 2f64.powi(n as i32)).min(1.0)
}

/// Percentile bootstrap of the mean of `d`: `resamples` draws of `d.len()` values with
/// replacement, the 2.5 % and 97.5 % quantiles of their means. Deterministic for a `seed`.
pub fn bootstrap_mean_ci(d: &[f64], resamples: usize, seed: u64) -> [f64; 2] {
    if d.is_empty() {
        return [f64::NAN, f64::NAN];
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| (0..d.len()).map(|_| d[rng.random_range(0..d.len())]).sum::<f64>() / d.len() as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    let q = |p: f64| means[((p * (means.len() - 1) as f64).round() as usize).min(means.len() - 1)];
    [q(0.025), q(0.975)]
}

/// Compares `variant` with `reference`, pairing values by seed (`(seed, value)` lists).
pub fn paired(reference: &[(u64, f64)], variant: &[(u64, f64)]) -> Option<Paired> {
    let d: Vec<f64> = variant
        .iter()
        .filter_map(|&(s, v)| reference.iter().find(|r| r.0 == s).map(|r| v - r.1))
        .filter(|x| x.is_finite())
        .collect();
    if d.is_empty() {
        return None;
    }
    let (wins, losses) = (d.iter().filter(|&&x| x > 0.0).count(), d.iter().filter(|&&x| x < 0.0).count());
    Some(Paired {
        n: d.len(),
        median: Spread::of(&d).map_or(f64::NAN, |s| s.median),
        mean: d.iter().sum::<f64>() / d.len() as f64,
        wins,
        losses,
        ties: d.len() - wins - losses,
        sign_p: sign_test(wins, losses),
        ci95: bootstrap_mean_ci(&d, 10_000, 0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_median_min_max() {
        assert_eq!(Spread::of(&[3.0, 1.0, 2.0]), Some(Spread { median: 2.0, min: 1.0, max: 3.0 }));
        assert_eq!(Spread::of(&[4.0, 1.0, 2.0, 10.0]).unwrap().median, 3.0);
        assert_eq!(Spread::of(&[f64::NAN]), None);
    }

    #[test]
    fn sign_test_matches_the_binomial_table() {
        // scipy.stats.binomtest(k, n, 0.5).pvalue: (3 of 3) 0.25, (5 of 5) 0.0625, (9 of 10)
        // 0.021484375, (6 of 10) 0.75390625, (0 of 1) 1.0.
        assert!((sign_test(3, 0) - 0.25).abs() < 1e-12);
        assert!((sign_test(0, 5) - 0.0625).abs() < 1e-12);
        assert!((sign_test(9, 1) - 0.021484375).abs() < 1e-12);
        assert!((sign_test(6, 4) - 0.75390625).abs() < 1e-12);
        assert_eq!(sign_test(0, 1), 1.0);
        assert_eq!(sign_test(0, 0), 1.0);
    }

    #[test]
    fn bootstrap_interval_brackets_the_mean_and_collapses_for_equal_values() {
        assert_eq!(bootstrap_mean_ci(&[2.0, 2.0, 2.0], 1000, 1), [2.0, 2.0]);
        let [lo, hi] = bootstrap_mean_ci(&[1.0, 2.0, 3.0, 4.0], 10_000, 1);
        // Resample means lie in [1, 4]; the interval is inside and contains the mean 2.5.
        assert!((1.0..2.5).contains(&lo) && (2.5..=4.0).contains(&hi), "{lo} {hi}");
        // Only 3^3 = 27 resamples of three values exist; the extremes (all the same value) each have
        // probability 1/27 > 2.5 %, so the interval is the full range.
        assert_eq!(bootstrap_mean_ci(&[0.0, 1.0, 5.0], 10_000, 3), [0.0, 5.0]);
    }

    #[test]
    fn paired_differences_use_common_seeds_only() {
        let r = [(0, 10.0), (1, 12.0), (2, 11.0)];
        let v = [(0, 11.0), (1, 12.0), (3, 0.0)];
        let p = paired(&r, &v).unwrap();
        assert_eq!((p.n, p.wins, p.losses, p.ties), (2, 1, 0, 1));
        assert_eq!((p.median, p.mean), (0.5, 0.5));
        assert_eq!(p.sign_p, 1.0);
        assert!(paired(&r, &[(7, 1.0)]).is_none());
    }
}
