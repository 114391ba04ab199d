//! `gemm` and `gemm_into` against the naive triple loop, on the small-product
//! and the large-product (packed, `kernels/packed.rs`) paths, with transposed operands,
//! strided outputs, β = 0 over a NaN-filled C (never read), and dual numbers
//! (the product rule).

use tape::gemm::{gemm, gemm_into, MatMut, MatRef};
use tape::Dual;

/// `A·B` for row-major `m × k` and `k × n` buffers.
fn naive(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            for l in 0..k {
                c[i * n + j] += a[i * k + l] * b[l * n + j];
            }
        }
    }
    c
}

/// The transpose of a row-major `rows × cols` buffer, stored row-major.
fn transposed(x: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    (0..rows * cols)
        .map(|i| x[(i % rows) * cols + i / rows])
        .collect()
}

/// Every combination of stored-transposed operands, β ∈ {0, ½} and a
/// row-major, column-major or padded output, on a small shape (the
/// small-product families) and a large one (the packed kernels).
#[test]
fn products_match_the_naive_loop() {
    for (m, k, n) in [(5, 7, 3), (70, 60, 50)] {
        let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
        let b: Vec<f64> = (0..k * n).map(|i| (i as f64 * 0.53).cos()).collect();
        let want = naive(&a, &b, m, k, n);
        let (at, bt) = (transposed(&a, m, k), transposed(&b, k, n));
        for case in 0..24 {
            let (ta, tb, half, out) = (case & 1 != 0, case & 2 != 0, case & 4 != 0, case / 8);
            let beta = if half { 0.5 } else { 0.0 };
            let am = if ta {
                MatRef::row_major(&at, k, m).t()
            } else {
                MatRef::row_major(&a, m, k)
            };
            let bm = if tb {
                MatRef::row_major(&bt, n, k).t()
            } else {
                MatRef::row_major(&b, k, n)
            };
            let c0 = if half { 2.0 } else { f64::NAN };
            // Output layouts: dense row-major through `gemm`, column-major and
            // rows padded to n + 3 through `gemm_into`.
            let (rs, cs, len) = match out {
                0 => (n, 1, m * n),
                1 => (1, m, m * n),
                _ => (n + 3, 1, m * (n + 3)),
            };
            let mut c = vec![c0; len];
            if out == 0 {
                gemm(2.0, am, bm, beta, &mut c);
            } else {
                gemm_into(2.0, am, bm, beta, MatMut::new(&mut c, m, n, rs, cs));
            }
            for i in 0..m {
                for j in 0..n {
                    let (x, w) = (c[i * rs + j * cs], want[i * n + j]);
                    let expect = 2.0 * w + if half { beta * 2.0 } else { 0.0 };
                    assert!(
                        (x - expect).abs() < 1e-10,
                        "[{m}, {k}, {n}] {ta} {tb} {beta} out ({rs}, {cs}): ({i}, {j}) {x} vs {expect}"
                    );
                }
            }
        }
    }
}

/// Dual matrices: `C.v = α A.v B.v + β C.v`, `C.d = α (A.v B.d + A.d B.v) + β C.d`,
/// small and large, including a structurally constant left operand.
#[test]
fn dual_products_follow_the_product_rule() {
    for (m, k, n) in [(3, 4, 2), (40, 70, 50)] {
        for constant_a in [false, true] {
            let av: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
            let ad: Vec<f64> = (0..m * k)
                .map(|i| {
                    if constant_a {
                        0.0
                    } else {
                        (i as f64 * 0.11).cos()
                    }
                })
                .collect();
            let bv: Vec<f64> = (0..k * n).map(|i| (i as f64 * 0.53).cos()).collect();
            let bd: Vec<f64> = (0..k * n).map(|i| (i as f64 * 0.29).sin()).collect();
            let a: Vec<Dual<f64>> = av.iter().zip(&ad).map(|(&v, &d)| Dual::new(v, d)).collect();
            let b: Vec<Dual<f64>> = bv.iter().zip(&bd).map(|(&v, &d)| Dual::new(v, d)).collect();
            let mut c = vec![Dual::new(1.0, 1.0); m * n];
            gemm(
                2.0,
                MatRef::row_major(&a, m, k),
                MatRef::row_major(&b, k, n),
                0.5,
                &mut c,
            );
            let cv = naive(&av, &bv, m, k, n);
            let cd: Vec<f64> = naive(&av, &bd, m, k, n)
                .iter()
                .zip(naive(&ad, &bv, m, k, n))
                .map(|(x, y)| x + y)
                .collect();
            for i in 0..m * n {
                assert!(
                    (c[i].v - (2.0 * cv[i] + 0.5)).abs() < 1e-10,
                    "[{m}, {k}, {n}] v {i}"
                );
                assert!(
                    (c[i].d - (2.0 * cd[i] + 0.5)).abs() < 1e-10,
                    "[{m}, {k}, {n}] d {i}"
                );
            }
        }
    }
}
