//! Matrix-vector products (at most `THIN_COLS` columns) run a small-product
//! family whatever their size, on the calling thread, reading `A` in place
//! (row-major: by rows; column-major: the single-column kernel down its
//! columns): checked by which family ran and by the family's bits (the naive
//! sum in increasing `l` for the portable and AVX-512 families, the kernel
//! bound for AVX2+FMA).

use tape::gemm::{gemm, MatRef};
use tape::kernels::{last_family, with_family, Family, SMALL_MACS, THIN_COLS};

#[test]
fn large_matrix_vector_products_run_a_small_family() {
    // 1.5·10⁶ multiply-adds per column: far above SMALL_MACS.
    let (m, k) = (1500, 1000);
    assert!(m * k > SMALL_MACS);
    let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
    // Aᵀ stored row-major, so that (Aᵀ)ᵀ is A with unit row stride.
    let at: Vec<f64> = (0..m * k).map(|i| a[(i % m) * k + i / m]).collect();
    let available: Vec<Family> = Family::ALL
        .into_iter()
        .filter(|f| f.is_available())
        .collect();
    for n in 1..=THIN_COLS {
        let b: Vec<f64> = (0..k * n).map(|i| (i as f64 * 0.71).cos()).collect();
        // The sum in increasing l, each product and sum rounded on its own,
        // and the magnitude sum for the bound.
        let (mut exact, mut mag) = (vec![0.0; m * n], vec![0.0; m * n]);
        for i in 0..m {
            for j in 0..n {
                for l in 0..k {
                    let p = a[i * k + l] * b[l * n + j];
                    exact[i * n + j] += p;
                    mag[i * n + j] += p.abs();
                }
            }
        }
        let u = f64::EPSILON / 2.0;
        let gamma = |n: usize| n as f64 * u / (1.0 - n as f64 * u);
        for &family in &available {
            let views = [
                ("row-major", MatRef::row_major(&a, m, k)),
                ("column-major", MatRef::row_major(&at, k, m).t()),
            ];
            for (layout, av) in views {
                // Mark another family as the last one, so that a product
                // that skipped the families leaves the mark.
                if let Some(&other) = available.iter().find(|&&f| f != family) {
                    let mut c = [0.0];
                    let one = MatRef::row_major(&[1.0], 1, 1);
                    with_family(other, || gemm(1.0, one, one, 0.0, &mut c));
                    assert_eq!(last_family(), Some(other));
                }
                let mut c = vec![f64::NAN; m * n];
                let bv = MatRef::row_major(&b, k, n);
                with_family(family, || gemm(1.0, av, bv, 0.0, &mut c));
                let case = format!("{family:?}, {layout} A [{m}, {k}], n = {n}");
                assert_eq!(last_family(), Some(family), "{case}: not a small family");
                for (x, (c, (e, g))) in c.iter().zip(exact.iter().zip(&mag)).enumerate() {
                    if family == Family::Avx2 {
                        let bound = 2.0 * gamma(k + 2) * g;
                        assert!((c - e).abs() <= bound, "{case}: element {x}: {c} vs {e}");
                    } else {
                        assert_eq!(c.to_bits(), e.to_bits(), "{case}: element {x}: {c} vs {e}");
                    }
                }
            }
        }
    }
}

/// The naive sum of one element of `α·A·B + β·C`: increasing `l`, from
/// zero, each product and sum rounded (`fused = false`: the portable and
/// AVX-512 families) or one fused multiply-add per `l` (`fused`: AVX2+FMA),
/// then `α·s`, `+ β·c`.
macro_rules! naive {
    ($t:ty, $name:ident) => {
        fn $name(
            fused: bool,
            alpha: $t,
            a: impl Fn(usize) -> $t,
            b: impl Fn(usize) -> $t,
            k: usize,
            beta: $t,
            c: $t,
        ) -> $t {
            let mut s: $t = 0.0;
            for l in 0..k {
                s = if fused {
                    a(l).mul_add(b(l), s)
                } else {
                    s + a(l) * b(l)
                };
            }
            let out = alpha * s;
            if beta == 0.0 {
                out
            } else {
                out + beta * c
            }
        }
    };
}
naive!(f64, naive_f64);
naive!(f32, naive_f32);

/// `kernels/thin.rs`: large matrix-vector products with a row-major `A` of
/// short rows (transposed block by block) or a column-major `A` with two
/// columns in `B` run the lanes down the rows of `A` and keep the family's
/// bits exactly: the naive loop's under AVX-512F and the portable family,
/// its fused form under AVX2+FMA. Shapes around the block and vector edges
/// (m not a multiple of the lanes or of the block), one and two columns, a
/// strided `B`, `β ≠ 0`, f64 and f32.
macro_rules! thin_bits_test {
    ($test:ident, $t:ty, $naive:ident) => {
        #[test]
        fn $test() {
            let families: Vec<Family> = Family::ALL
                .into_iter()
                .filter(|f| f.is_available())
                .collect();
            for (m, k) in [(1000, 50), (1003, 7), (37, 100), (50, 1000), (129, 33)] {
                let a: Vec<$t> = (0..m * k).map(|i| ((i as f64 * 0.37).sin()) as $t).collect();
                let at: Vec<$t> = (0..m * k).map(|i| a[(i % m) * k + i / m]).collect();
                for n in 1..=THIN_COLS {
                    // B as columns 1.. of a wider [k, n + 1] matrix: a strided view.
                    let wide: Vec<$t> =
                        (0..k * (n + 1)).map(|i| ((i as f64 * 0.71).cos()) as $t).collect();
                    let b_el = |l: usize, j: usize| wide[l * (n + 1) + 1 + j];
                    let c0: Vec<$t> = (0..m * n).map(|i| ((i as f64 * 0.13).sin()) as $t).collect();
                    for (alpha, beta) in [(1.0, 0.0), (-1.5, 0.5)] {
                        for &family in &families {
                            let views = [
                                ("row-major", MatRef::row_major(&a, m, k)),
                                ("column-major", MatRef::row_major(&at, k, m).t()),
                            ];
                            for (layout, av) in views {
                                let bv = MatRef::new(&wide[1..], k, n, n + 1, 1);
                                let mut c = c0.clone();
                                with_family(family, || gemm(alpha, av, bv, beta, &mut c));
                                let case = format!(
                                    "{family:?}, {layout} A [{m}, {k}], n = {n}, α = {alpha}, β = {beta}"
                                );
                                assert_eq!(last_family(), Some(family), "{case}");
                                for i in 0..m {
                                    for j in 0..n {
                                        let e = $naive(
                                            family == Family::Avx2,
                                            alpha,
                                            |l| a[i * k + l],
                                            |l| b_el(l, j),
                                            k,
                                            beta,
                                            c0[i * n + j],
                                        );
                                        let x = c[i * n + j];
                                        assert_eq!(
                                            x.to_bits(),
                                            e.to_bits(),
                                            "{case}: C[{i}, {j}] = {x}, expected {e}"
                                        );
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
}
thin_bits_test!(thin_products_keep_the_family_bits_f64, f64, naive_f64);
thin_bits_test!(thin_products_keep_the_family_bits_f32, f32, naive_f32);
