//! The statistics across seeds (`blo_examples::stats`) against hand
//! computations on fixed numbers.

use blo_examples::stats::{mean_t_ci95, paired_t_ci95, t975};

#[test]
fn mean_interval_matches_the_hand_computation() {
    // x = 0.60, 0.64, 0.68, 0.72 (n = 4):
    //   mean = 2.64 / 4 = 0.66
    //   deviations −0.06, −0.02, 0.02, 0.06; squares 0.0036, 0.0004, 0.0004, 0.0036, sum 0.008
    //   s² = 0.008 / 3 = 0.0026667, s = 0.0516398
    //   s/√n = 0.0516398 / 2 = 0.0258199
    //   t_{0.975, 3} = 3.1824 → half-width 3.1824 · 0.0258199 = 0.0821693
    let m = mean_t_ci95(&[0.60, 0.64, 0.68, 0.72]).unwrap();
    assert_eq!(m.n, 4);
    assert!((m.mean - 0.66).abs() < 1e-12, "{m:?}");
    assert!((m.half_width - 0.0821693).abs() < 1e-6, "{m:?}");
}

#[test]
fn paired_interval_matches_the_hand_computation() {
    // a = 0.70, 0.65, 0.80; b = 0.66, 0.64, 0.73 (same three seeds):
    //   d = 0.04, 0.01, 0.07; mean 0.12 / 3 = 0.04
    //   deviations 0, −0.03, 0.03; squares sum 0.0018; s² = 0.0009, s = 0.03
    //   s/√3 = 0.0173205; t_{0.975, 2} = 4.3027 → half-width 0.0745250
    // Unpaired, the spread between seeds (a's s ≈ 0.076) would swamp the difference.
    let d = paired_t_ci95(&[0.70, 0.65, 0.80], &[0.66, 0.64, 0.73]).unwrap();
    assert!((d.mean - 0.04).abs() < 1e-12, "{d:?}");
    assert!((d.half_width - 0.0745250).abs() < 1e-6, "{d:?}");
    // Swapping the methods flips the sign, not the width.
    let e = paired_t_ci95(&[0.66, 0.64, 0.73], &[0.70, 0.65, 0.80]).unwrap();
    assert!((e.mean + 0.04).abs() < 1e-12 && (e.half_width - d.half_width).abs() < 1e-15);
}

#[test]
fn quantiles_and_refusals() {
    // Table values and the large-ν expansion (t_{0.975, 31} = 2.039513, t_{0.975, 60} = 2.000298).
    assert_eq!(t975(1), 12.7062);
    assert_eq!(t975(30), 2.0423);
    assert!((t975(31) - 2.039513).abs() < 1e-4);
    assert!((t975(60) - 2.000298).abs() < 1e-4);
    assert!((t975(100_000) - 1.959964).abs() < 1e-4);
    // One value has no spread; mismatched seeds cannot be paired; NaN is refused.
    assert!(mean_t_ci95(&[0.5]).unwrap_err().contains("at least 2"));
    assert!(paired_t_ci95(&[0.5, 0.6], &[0.5])
        .unwrap_err()
        .contains("seeds"));
    assert!(mean_t_ci95(&[0.5, f64::NAN])
        .unwrap_err()
        .contains("non-finite"));
}
