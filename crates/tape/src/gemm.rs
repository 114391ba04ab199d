//! The one safe wrapper around the GEMM kernel (`matrixmultiply`).
//!
//! Transposes never copy: a transposed operand is the same buffer with its row
//! and column strides swapped.

use crate::real::Real;

/// A read-only strided matrix view: element `(i, j)` is `data[i·rs + j·cs]`.
#[derive(Copy, Clone, Debug)]
pub struct MatRef<'a, T> {
    /// The buffer holding the matrix.
    pub data: &'a [T],
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// Row stride in elements.
    pub rs: usize,
    /// Column stride in elements.
    pub cs: usize,
}

impl<'a, T> MatRef<'a, T> {
    /// A dense row-major `rows × cols` matrix.
    pub fn row_major(data: &'a [T], rows: usize, cols: usize) -> Self {
        MatRef {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }
    /// The transpose: the same buffer with strides swapped.
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }
    fn max_index(&self) -> Option<usize> {
        if self.rows == 0 || self.cols == 0 {
            None
        } else {
            Some((self.rows - 1) * self.rs + (self.cols - 1) * self.cs)
        }
    }
}

/// `C ← alpha·A·B + beta·C` for any [`Real`] element type, dual numbers included.
///
/// `c` is a dense row-major `a.rows × b.cols` buffer. With `beta = 0`, `c` is
/// overwritten and never read (it may hold anything, NaN included).
///
/// # Panics
/// If the inner dimensions differ, `c` has the wrong length, or a view reaches
/// past its buffer.
///
/// ```
/// use tape::gemm::{gemm, MatRef};
/// let a = [1.0_f64, 2.0, 3.0, 4.0]; // [[1, 2], [3, 4]]
/// let mut c = [0.0; 4];
/// // C = A·Aᵀ
/// let m = MatRef::row_major(&a, 2, 2);
/// gemm(1.0, m, m.t(), 0.0, &mut c);
/// assert_eq!(c, [5.0, 11.0, 11.0, 25.0]);
/// ```
#[track_caller]
pub fn gemm<T: Real>(
    alpha: T::Base,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    beta: T::Base,
    c: &mut [T],
) {
    assert!(
        a.cols == b.rows,
        "gemm: lhs [{}, {}], rhs [{}, {}]: inner dimensions {} != {}",
        a.rows,
        a.cols,
        b.rows,
        b.cols,
        a.cols,
        b.rows
    );
    assert!(
        c.len() == a.rows * b.cols,
        "gemm: output has {} elements, expected {}",
        c.len(),
        a.rows * b.cols
    );
    if c.is_empty() {
        return;
    }
    if a.cols == 0 {
        // An empty sum: C ← beta·C; β = 0 overwrites without reading C (which
        // may hold stale values, as matrixmultiply also promises for β = 0).
        if beta == <T::Base as Real>::zero() {
            c.fill(T::zero());
        } else {
            let beta = T::from_base(beta);
            c.iter_mut().for_each(|x| *x = beta * *x);
        }
        return;
    }
    for (name, m) in [("lhs", &a), ("rhs", &b)] {
        if let Some(last) = m.max_index() {
            assert!(
                last < m.data.len(),
                "gemm: {name} view reaches index {last} of a buffer of {}",
                m.data.len()
            );
        }
    }
    if a.rows * a.cols * b.cols <= SMALL_GEMM_MACS && b.cols <= SMALL_GEMM_COLS {
        small_gemm(alpha, a, b, beta, c);
        return;
    }
    // SAFETY: the asserts above bound every index of A and B by their slices, C is a
    // dense rows × cols buffer of exactly that length, and C is a `&mut` so it
    // aliases neither A nor B.
    unsafe {
        T::gemm_raw(
            a.rows,
            a.cols,
            b.cols,
            alpha,
            a.data.as_ptr(),
            a.rs as isize,
            a.cs as isize,
            b.data.as_ptr(),
            b.rs as isize,
            b.cs as isize,
            beta,
            c.as_mut_ptr(),
            b.cols as isize,
            1,
        )
    }
}

/// Products up to this many multiply-adds skip the packing GEMM kernel: for
/// the tiny matrices of few-shot regression (`[10, 40]·[40, 40]`) packing and
/// masked edge kernels cost more than the arithmetic.
const SMALL_GEMM_MACS: usize = 32 * 1024;
/// ... and with at most this many columns (the accumulator row lives on the stack).
const SMALL_GEMM_COLS: usize = 64;
/// A strided right operand of at most this many elements is packed row-major
/// on the stack first (at most 32 KiB for `Dual<f64>`).
const SMALL_GEMM_PACK: usize = 2048;

/// `C ← α·A·B + β·C` by rows: `acc = Σ_l A[i, l]·B[l, :]` in increasing `l`
/// (a fixed order, so deterministic), then `C[i, :] = α·acc + β·C[i, :]`
/// (`C` not read when β = 0). Works for any [`Real`], dual numbers included.
fn small_gemm<T: Real>(
    alpha: T::Base,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    beta: T::Base,
    c: &mut [T],
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if b.cs != 1 && k * n <= SMALL_GEMM_PACK {
        // A strided B (e.g. a transposed weight) is first copied row-major into
        // a stack buffer, so the row loop below runs on contiguous (vectorised)
        // rows. Only the memory layout changes: the products and the order of
        // the sums are those of the strided product, so the bits are too.
        let mut buf = [std::mem::MaybeUninit::<T>::uninit(); SMALL_GEMM_PACK];
        for l in 0..k {
            let lane = b.data[l * b.rs..].iter().step_by(b.cs);
            for (dst, &b_lj) in buf[l * n..(l + 1) * n].iter_mut().zip(lane) {
                dst.write(b_lj);
            }
        }
        // SAFETY: the loop above wrote entries 0..k·n (each of the k rows gets n
        // values: B's view bound was checked by `gemm`), and MaybeUninit<T> has
        // the layout of T.
        let packed = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<T>(), k * n) };
        small_gemm(alpha, a, MatRef::row_major(packed, k, n), beta, c);
        return;
    }
    let (alpha, beta_is_zero, beta) = (
        T::from_base(alpha),
        beta == <T::Base as Real>::zero(),
        T::from_base(beta),
    );
    let mut acc = [T::zero(); SMALL_GEMM_COLS];
    let acc = &mut acc[..n];
    for (i, c_row) in c.chunks_exact_mut(n).enumerate().take(m) {
        acc.fill(T::zero());
        for l in 0..k {
            let a_il = a.data[i * a.rs + l * a.cs];
            let b_row = l * b.rs;
            if b.cs == 1 {
                for (s, &b_lj) in acc.iter_mut().zip(&b.data[b_row..b_row + n]) {
                    *s += a_il * b_lj;
                }
            } else {
                // A strided row (e.g. a transposed operand): a stepping iterator,
                // no bounds check per element.
                let b_lane = b.data[b_row..].iter().step_by(b.cs);
                for (s, &b_lj) in acc.iter_mut().zip(b_lane) {
                    *s += a_il * b_lj;
                }
            }
        }
        for (x, &s) in c_row.iter_mut().zip(acc.iter()) {
            *x = if beta_is_zero {
                alpha * s
            } else {
                alpha * s + beta * *x
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Dual;

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

    /// The small-matrix path against the naive triple loop: transposed views,
    /// β = 0 over a NaN-filled C (never read) and β = ½.
    #[test]
    fn small_gemm_matches_the_naive_product() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
        let b: Vec<f64> = (0..k * n).map(|i| (i as f64 * 0.53).cos()).collect();
        let want = naive(&a, &b, m, k, n);
        let at: Vec<f64> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect(); // Aᵀ stored
        let bt: Vec<f64> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect(); // Bᵀ stored
        for (ta, tb, beta) in [
            (false, false, 0.0),
            (true, false, 0.5),
            (false, true, 0.0),
            (true, true, 0.5),
        ] {
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
            let mut c = vec![if beta == 0.0 { f64::NAN } else { 2.0 }; m * n];
            gemm(2.0, am, bm, beta, &mut c);
            for (x, w) in c.iter().zip(&want) {
                let expect = 2.0 * w + if beta == 0.0 { 0.0 } else { beta * 2.0 };
                assert!(
                    (x - expect).abs() < 1e-12,
                    "{ta} {tb} {beta}: {x} vs {expect}"
                );
            }
        }
    }

    #[test]
    fn dual_gemm_is_product_rule() {
        let (m, k, n) = (3, 4, 2);
        let av: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
        let ad: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.11).cos()).collect();
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
            assert!((c[i].v - (2.0 * cv[i] + 0.5)).abs() < 1e-12);
            assert!((c[i].d - (2.0 * cd[i] + 0.5)).abs() < 1e-12);
        }
    }

    #[test]
    #[should_panic(expected = "gemm: lhs [2, 3], rhs [2, 3]: inner dimensions 3 != 2")]
    fn mismatched_inner_dims_panic() {
        let a = [0.0_f64; 6];
        let mut c = [0.0; 9];
        gemm(
            1.0,
            MatRef::row_major(&a, 2, 3),
            MatRef::row_major(&a, 2, 3),
            0.0,
            &mut c,
        );
    }
}
