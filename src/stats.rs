//! Statistics across training seeds: a mean with its 95% Student-t interval,
//! and the paired comparison of two methods run on the same seeds.
//!
//! A test-episode interval (1.96·s/√n over the episodes of one trained
//! network) says how well that one network was measured; it says nothing about
//! how much the result moves when the network is trained again from another
//! seed. With n training seeds giving accuracies x_1 … x_n, the interval for
//! the mean over seeds is
//!
//! x̄ ± t_{0.975, n−1} · s/√n,   s² = Σ (x_i − x̄)² / (n − 1),
//!
//! with Student's t quantile because s is estimated from few values. Two
//! methods trained on the same seeds are compared through the per-seed
//! differences d_i = x_i − y_i (the seed's initialisation and episodes are
//! shared, so much of the between-seed variation cancels): d̄ ± t_{0.975, n−1}·s_d/√n.
//! An interval that excludes 0 says the methods differ at the 5% level.
//!
//! ```
//! use blo_examples::stats::{mean_t_ci95, paired_t_ci95};
//! let a = [0.70, 0.72, 0.68];
//! let b = [0.66, 0.69, 0.67];
//! let m = mean_t_ci95(&a).unwrap();
//! assert!((m.mean - 0.70).abs() < 1e-12);
//! let d = paired_t_ci95(&a, &b).unwrap();
//! assert!((d.mean - 0.02666666666666667).abs() < 1e-12);
//! ```

/// A mean and the half-width of its 95% interval over `n` values.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Interval {
    /// The mean.
    pub mean: f64,
    /// Half-width: t_{0.975, n−1}·s/√n (0 would claim certainty, so one value
    /// gives an error instead).
    pub half_width: f64,
    /// Number of values.
    pub n: usize,
}

/// Two-sided 95% quantiles t_{0.975, ν} of Student's t for ν = 1..=30
/// (standard tables, e.g. Abramowitz & Stegun table 26.10).
const T975: [f64; 30] = [
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010,
    2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687,
    2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
];

/// t_{0.975, ν}: the table for ν ≤ 30, beyond it the Cornish–Fisher expansion
/// z + (z³ + z)/(4ν) + (5z⁵ + 16z³ + 3z)/(96ν²) with z = 1.959964 (error
/// below 1e-4 for ν > 30; t → z as ν → ∞).
///
/// # Panics
/// If ν = 0 (no interval from one value).
#[track_caller]
pub fn t975(dof: usize) -> f64 {
    assert!(
        dof >= 1,
        "t975: 0 degrees of freedom (one value has no spread)"
    );
    if dof <= 30 {
        return T975[dof - 1];
    }
    let z: f64 = 1.959964;
    let v = dof as f64;
    z + (z.powi(3) + z) / (4.0 * v)
        + (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / (96.0 * v * v)
}

/// The mean of `xs` with its 95% Student-t interval.
///
/// # Errors
/// A message if there are fewer than two values or one is not finite.
pub fn mean_t_ci95(xs: &[f64]) -> Result<Interval, String> {
    let n = xs.len();
    if n < 2 {
        return Err(format!(
            "an interval across seeds needs at least 2 values, got {n}"
        ));
    }
    if let Some(x) = xs.iter().find(|x| !x.is_finite()) {
        return Err(format!("non-finite value {x} among {xs:?}"));
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    Ok(Interval {
        mean,
        half_width: t975(n - 1) * (var / n as f64).sqrt(),
        n,
    })
}

/// The mean paired difference a_i − b_i with its 95% Student-t interval
/// (a and b measured on the same seeds, in the same order).
///
/// # Errors
/// A message if the lengths differ, or as [`mean_t_ci95`].
pub fn paired_t_ci95(a: &[f64], b: &[f64]) -> Result<Interval, String> {
    if a.len() != b.len() {
        return Err(format!(
            "paired comparison of {} and {} values: the seeds must match",
            a.len(),
            b.len()
        ));
    }
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    mean_t_ci95(&d)
}
