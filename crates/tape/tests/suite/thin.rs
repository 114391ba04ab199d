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
