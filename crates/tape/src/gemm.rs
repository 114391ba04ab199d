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
    if T::small_gemm_simd(alpha, a, b, beta, c) {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        unsafe { portable_small_gemm_avx2(alpha, a, b, beta, c) };
        return;
    }
    portable_small_gemm(alpha, a, b, beta, c);
}

/// The portable loop compiled for AVX2 (LLVM vectorises its row updates with
/// 256-bit registers; without `fma` enabled and without fast-math it keeps
/// every product and sum rounded on its own, so the bits are the loop's).
/// For CPUs without the AVX-512 kernels.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn portable_small_gemm_avx2<T: Real>(
    alpha: T::Base,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    beta: T::Base,
    c: &mut [T],
) {
    portable_small_gemm(alpha, a, b, beta, c);
}

/// The portable loop of [`small_gemm`]; the SIMD kernels (`simd.rs`) give the
/// same bits. Always inlined, so [`portable_small_gemm_avx2`] compiles it with
/// AVX2.
#[inline(always)]
fn portable_small_gemm<T: Real>(
    alpha: T::Base,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    beta: T::Base,
    c: &mut [T],
) {
    let (k, n) = (a.cols, b.cols);
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
        row_loop(alpha, a, MatRef::row_major(packed, k, n), beta, c);
    } else {
        row_loop(alpha, a, b, beta, c);
    }
}

/// The row loop of [`portable_small_gemm`].
#[inline(always)]
fn row_loop<T: Real>(
    alpha: T::Base,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    beta: T::Base,
    c: &mut [T],
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
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

    /// Bit equality, with any NaN equal to any NaN (payloads may differ).
    fn same_bits(x: f64, y: f64) -> bool {
        x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan())
    }

    /// A value from a seed, with −0, ±∞ and NaN mixed in when `special`.
    fn val(i: usize, seed: f64, special: bool) -> f64 {
        let x = ((i as f64 + 1.0) * seed).sin() * 3.0;
        match (special, i % 37) {
            (true, 5) => -0.0,
            (true, 11) => f64::INFINITY,
            (true, 23) => f64::NAN,
            (true, 29) => f64::NEG_INFINITY,
            _ => x,
        }
    }

    /// Every layout of A and B the tape produces (row-major, transposed, and a
    /// general strided B), over shapes around the vector widths, against the
    /// portable loop, bit for bit, for one element type given as a closure
    /// building it from parts.
    fn simd_matches_portable<T: Real>(make: impl Fn(f64, f64) -> T, parts: impl Fn(T) -> Vec<f64>) {
        matches_portable(gemm::<T>, make, parts);
    }

    /// [`simd_matches_portable`] for any implementation `run` of the product.
    fn matches_portable<T: Real>(
        run: impl Fn(T::Base, MatRef<'_, T>, MatRef<'_, T>, T::Base, &mut [T]),
        make: impl Fn(f64, f64) -> T,
        parts: impl Fn(T) -> Vec<f64>,
    ) {
        let shapes = [
            (1, 1, 1),
            (10, 1, 40),
            (10, 40, 40),
            (40, 10, 40),
            (10, 40, 1),
            (40, 10, 1),
            (1, 10, 40),
            (5, 7, 3),
            (7, 17, 15),
            (9, 16, 16),
            (6, 33, 17),
            (3, 8, 64),
            (17, 5, 33),
            (4, 20, 49),
            (70, 3, 1),
            (2, 9, 1),
        ];
        let (alpha, beta) = (T::Base::from_f64(1.5), T::Base::from_f64(-0.5));
        for (case, &(m, k, n)) in shapes.iter().enumerate() {
            for special in [false, true] {
                let mk = |len: usize, seed: f64| -> Vec<T> {
                    (0..len)
                        .map(|i| make(val(i, seed, special), val(i, seed * 0.7 + 0.1, special)))
                        .collect()
                };
                let a = mk(m * k, 0.37 + case as f64);
                // B stored with room for a stride of 3 between columns.
                let b = mk(3 * k * n, 0.53 + case as f64);
                let c0 = mk(m * n, 0.29);
                let a_views = [MatRef::row_major(&a, m, k), MatRef::row_major(&a, k, m).t()];
                let b_views = [
                    MatRef::row_major(&b[..k * n], k, n),
                    MatRef::row_major(&b[..k * n], n, k).t(),
                    MatRef {
                        data: &b,
                        rows: k,
                        cols: n,
                        rs: 3 * n,
                        cs: 3,
                    },
                ];
                for (ia, &av) in a_views.iter().enumerate() {
                    for (ib, &bv) in b_views.iter().enumerate() {
                        for beta in [T::Base::from_f64(0.0), beta] {
                            let mut got = c0.clone();
                            let mut want = c0.clone();
                            run(alpha, av, bv, beta, &mut got);
                            portable_small_gemm(alpha, av, bv, beta, &mut want);
                            for (idx, (&g, &w)) in got.iter().zip(&want).enumerate() {
                                let ok =
                                    parts(g).iter().zip(parts(w)).all(|(&x, y)| same_bits(x, y));
                                assert!(
                                    ok,
                                    "[{m}, {k}] x [{k}, {n}], layouts {ia}/{ib}, beta {beta:?}, \
                                     special {special}: element {idx}: {g:?} vs {w:?}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// The SIMD kernels (where the CPU has them) give the portable loop's bits.
    #[test]
    fn simd_kernels_are_bit_identical_to_the_portable_loop() {
        #[cfg(target_arch = "x86_64")]
        if !std::is_x86_feature_detected!("avx512f") {
            eprintln!("note: this CPU has no AVX-512F; the kernels are not exercised here");
        }
        simd_matches_portable(|v, _| v as f32, |x| vec![x as f64]);
        simd_matches_portable(|v, _| v, |x| vec![x]);
        simd_matches_portable(
            |v, d| Dual::new(v as f32, d as f32),
            |x| vec![x.v as f64, x.d as f64],
        );
        simd_matches_portable(Dual::new, |x| vec![x.v, x.d]);
    }

    /// The portable loop compiled for AVX2 (the path of CPUs without AVX-512)
    /// gives the loop's bits.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_build_of_the_portable_loop_is_bit_identical() {
        if !std::is_x86_feature_detected!("avx2") {
            eprintln!("note: this CPU has no AVX2; the AVX2 build is not exercised here");
            return;
        }
        fn run<T: Real>(al: T::Base, a: MatRef<'_, T>, b: MatRef<'_, T>, be: T::Base, c: &mut [T]) {
            // SAFETY: AVX2 was detected above.
            unsafe { portable_small_gemm_avx2(al, a, b, be, c) }
        }
        matches_portable(run::<f32>, |v, _| v as f32, |x| vec![x as f64]);
        matches_portable(run::<f64>, |v, _| v, |x| vec![x]);
        matches_portable(
            run::<Dual<f32>>,
            |v, d| Dual::new(v as f32, d as f32),
            |x| vec![x.v as f64, x.d as f64],
        );
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
