//! Exact small-sample statistics for the power tests (plain f64, no
//! dependencies): χ² tails for even degrees of freedom in closed form, the
//! noncentral χ² tail as a Poisson mixture of those, Hotelling's T² and the
//! Mahalanobis norm through a Cholesky factor, and binomial tails.
//!
//! Each function is checked against an independent value in `self_check` (a
//! test in every file that uses this module).
#![allow(dead_code)]

/// ln k! by summation (k is small here).
fn ln_factorial(k: usize) -> f64 {
    (2..=k).map(|i| (i as f64).ln()).sum()
}

/// k/2 for an even number of degrees of freedom k > 0 (the closed forms below
/// need it).
fn half_dof(k: usize) -> usize {
    assert!(
        k > 0 && k.is_multiple_of(2),
        "even degrees of freedom only, got {k}"
    );
    k / 2
}

/// P(χ²_k ≤ x) for even k: for k = 2m, χ²_k/2 is a Gamma(m, 1) variable, and
/// P(Gamma(m, 1) ≤ h) = P(Poisson(h) ≥ m) = e^{−h} Σ_{j ≥ m} h^j/j!, h = x/2.
/// The tail sum is taken directly (not 1 − upper tail), so tiny values keep
/// their relative accuracy.
pub fn chi2_cdf_even(k: usize, x: f64) -> f64 {
    let m = half_dof(k);
    if x <= 0.0 {
        return 0.0;
    }
    let h = x / 2.0;
    let mut j = m;
    let mut term = (-h + m as f64 * h.ln() - ln_factorial(m)).exp();
    let mut sum = 0.0;
    loop {
        sum += term;
        j += 1;
        term *= h / j as f64;
        if j as f64 > h && term < 1e-18 * sum.max(1e-300) {
            break;
        }
        if j > m + 100_000 {
            break;
        }
    }
    sum.min(1.0)
}

/// P(χ²_k > x) for even k: e^{−h} Σ_{j < k/2} h^j/j!, h = x/2.
pub fn chi2_sf_even(k: usize, x: f64) -> f64 {
    let m = half_dof(k);
    if x <= 0.0 {
        return 1.0;
    }
    let h = x / 2.0;
    let (mut term, mut sum) = (1.0, 1.0);
    for j in 1..m {
        term *= h / j as f64;
        sum += term;
    }
    ((-h).exp() * sum).min(1.0)
}

/// The x with P(χ²_k > x) = alpha (k even), by bisection (to 1e-12 relative).
pub fn chi2_threshold_even(k: usize, alpha: f64) -> f64 {
    let (mut lo, mut hi) = (0.0, 1.0);
    while chi2_sf_even(k, hi) > alpha {
        hi *= 2.0;
    }
    while hi - lo > 1e-12 * hi {
        let mid = 0.5 * (lo + hi);
        if chi2_sf_even(k, mid) > alpha {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

/// P(χ²_k(λ) ≤ x) for the noncentral χ² with even k: the Poisson(λ/2) mixture
/// Σ_i e^{−λ/2} (λ/2)^i/i! · P(χ²_{k+2i} ≤ x).
pub fn noncentral_chi2_cdf_even(k: usize, lambda: f64, x: f64) -> f64 {
    let mu = lambda / 2.0;
    let last = (mu + 40.0 * mu.sqrt() + 200.0) as usize;
    (0..=last)
        .map(|i| {
            let w = if mu == 0.0 {
                if i == 0 {
                    1.0
                } else {
                    0.0
                }
            } else {
                (-mu + i as f64 * mu.ln() - ln_factorial(i)).exp()
            };
            w * chi2_cdf_even(k + 2 * i, x)
        })
        .sum()
}

/// Lower Cholesky factor of a symmetric positive definite d×d matrix (row
/// major); panics with the pivot if it is not positive definite.
pub fn cholesky(s: &[f64], d: usize) -> Vec<f64> {
    assert_eq!(
        s.len(),
        d * d,
        "cholesky: {} entries for a {d}×{d} matrix",
        s.len()
    );
    let mut l = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..=i {
            let dot: f64 = (0..j).map(|k| l[i * d + k] * l[j * d + k]).sum();
            if i == j {
                let piv = s[i * d + i] - dot;
                assert!(
                    piv > 0.0,
                    "cholesky: pivot {i} is {piv}: not positive definite"
                );
                l[i * d + i] = piv.sqrt();
            } else {
                l[i * d + j] = (s[i * d + j] - dot) / l[j * d + j];
            }
        }
    }
    l
}

/// mᵀ S⁻¹ m for S symmetric positive definite (solve L y = m, return ‖y‖²).
pub fn mahalanobis_sq(s: &[f64], m: &[f64]) -> f64 {
    let d = m.len();
    let l = cholesky(s, d);
    let mut y = vec![0.0; d];
    for i in 0..d {
        let dot: f64 = (0..i).map(|k| l[i * d + k] * y[k]).sum();
        y[i] = (m[i] - dot) / l[i * d + i];
    }
    y.iter().map(|v| v * v).sum()
}

/// Sample mean and unbiased sample covariance (row major) of equal-length rows.
pub fn mean_cov(rows: &[Vec<f64>]) -> (Vec<f64>, Vec<f64>) {
    let n = rows.len();
    let d = rows[0].len();
    let mut mean = vec![0.0; d];
    for r in rows {
        assert_eq!(r.len(), d);
        for (m, x) in mean.iter_mut().zip(r) {
            *m += x;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let mut cov = vec![0.0; d * d];
    for r in rows {
        for i in 0..d {
            let a = r[i] - mean[i];
            for j in 0..d {
                cov[i * d + j] += a * (r[j] - mean[j]);
            }
        }
    }
    cov.iter_mut().for_each(|c| *c /= (n - 1) as f64);
    (mean, cov)
}

/// Hotelling's one-sample T² = N x̄ᵀ S⁻¹ x̄ of the rows against mean 0.
pub fn hotelling_t2(rows: &[Vec<f64>]) -> f64 {
    let (mean, cov) = mean_cov(rows);
    rows.len() as f64 * mahalanobis_sq(&cov, &mean)
}

/// P(X ≥ k) for X ~ Binomial(n, p), by summing the probability mass.
pub fn binomial_sf(n: usize, p: f64, k: usize) -> f64 {
    (k..=n)
        .map(|i| {
            let ln_choose = ln_factorial(n) - ln_factorial(i) - ln_factorial(n - i);
            (ln_choose + i as f64 * p.ln() + (n - i) as f64 * (1.0 - p).ln()).exp()
        })
        .sum()
}

/// Checks the functions above against values computed another way.
pub fn self_check() {
    // χ²_2 is Exp(1/2): P(χ²_2 > x) = e^{−x/2}.
    for x in [0.1, 1.0, 7.5, 40.0] {
        assert!((chi2_sf_even(2, x) - (-x / 2.0f64).exp()).abs() < 1e-15);
        assert!((chi2_cdf_even(2, x) - (1.0 - (-x / 2.0f64).exp())).abs() < 1e-14);
    }
    // CDF + SF = 1 for k = 10; the tabulated 99.99% point of χ²_10 is 35.564.
    for x in [0.5, 9.0, 30.0] {
        assert!((chi2_cdf_even(10, x) + chi2_sf_even(10, x) - 1.0).abs() < 1e-14);
    }
    assert!((chi2_threshold_even(10, 1e-4) - 35.564).abs() < 1e-3);
    // Noncentral with λ = 0 is central; the mean of χ²_k(λ) is k + λ (by a
    // Riemann sum of the survival function).
    assert!((noncentral_chi2_cdf_even(4, 0.0, 3.0) - chi2_cdf_even(4, 3.0)).abs() < 1e-15);
    let mean: f64 = (0..20_000)
        .map(|i| 0.01 * (1.0 - noncentral_chi2_cdf_even(4, 6.0, (i as f64 + 0.5) * 0.01)))
        .sum();
    assert!((mean - 10.0).abs() < 1e-3, "{mean}");
    // Mahalanobis with a diagonal matrix; T² of ±1 rows.
    assert!((mahalanobis_sq(&[4.0, 0.0, 0.0, 9.0], &[2.0, 3.0]) - 2.0).abs() < 1e-15);
    let rows = vec![vec![1.0], vec![-1.0], vec![1.0], vec![-1.0]];
    assert_eq!(hotelling_t2(&rows), 0.0);
    // Binomial: P(Bin(4, ½) ≥ 3) = 5/16.
    assert!((binomial_sf(4, 0.5, 3) - 5.0 / 16.0).abs() < 1e-15);
    assert!((binomial_sf(10, 0.3, 0) - 1.0).abs() < 1e-14);
}
