//! Operands of the GEMM timing examples (`examples/gemm_vs_mm.rs`,
//! `examples/gemm_split.rs`): the same deterministic f32 data for a product
//! `[m, k]·[k, n]`, with either factor stored transposed, and the median of
//! timed calls.

use tape::gemm::MatRef;

/// The data of one product `C = A·B` with `A: [m, k]` and `B: [k, n]`:
/// `A[i] = ((i mod 17) − 8)/100`, `B[i] = ((i mod 13) − 6)/10` in storage
/// order, so every run and every side multiplies the same numbers. `A` is
/// stored as `[k, m]` when `at` (the view is its transpose), `B` as `[n, k]`
/// when `bt`.
///
/// ```
/// use blo_examples::gemm_operands::Operands;
///
/// let ops = Operands::new(2, 3, 4, true, false);
/// let (a, b) = ops.views();
/// // A is stored [k, m] = [3, 2] and viewed as its transpose [2, 3].
/// assert_eq!((a.rows(), a.cols(), b.rows(), b.cols()), (2, 3, 3, 4));
/// assert_eq!(a.get(1, 0), ops.a[1]);
/// ```
pub struct Operands {
    /// Rows of `A` and `C`.
    pub m: usize,
    /// Columns of `A`, rows of `B`.
    pub k: usize,
    /// Columns of `B` and `C`.
    pub n: usize,
    /// `A` stored transposed (`[k, m]`).
    pub at: bool,
    /// `B` stored transposed (`[n, k]`).
    pub bt: bool,
    /// `A`'s storage, `m·k` values.
    pub a: Vec<f32>,
    /// `B`'s storage, `k·n` values.
    pub b: Vec<f32>,
}

impl Operands {
    /// The operands of `[m, k]·[k, n]` (see the type's doc for the values).
    pub fn new(m: usize, k: usize, n: usize, at: bool, bt: bool) -> Operands {
        let a = (0..m * k).map(|i| ((i % 17) as f32 - 8.0) * 0.01).collect();
        let b = (0..k * n).map(|i| ((i % 13) as f32 - 6.0) * 0.1).collect();
        Operands {
            m,
            k,
            n,
            at,
            bt,
            a,
            b,
        }
    }

    /// The views `A: [m, k]` and `B: [k, n]` over the stored data.
    pub fn views(&self) -> (MatRef<'_, f32>, MatRef<'_, f32>) {
        let (m, k, n) = (self.m, self.k, self.n);
        let a = if self.at {
            MatRef::row_major(&self.a, k, m).t()
        } else {
            MatRef::row_major(&self.a, m, k)
        };
        let b = if self.bt {
            MatRef::row_major(&self.b, n, k).t()
        } else {
            MatRef::row_major(&self.b, k, n)
        };
        (a, b)
    }

    /// GFLOP/s of one product that took `seconds` (2·m·k·n flops).
    ///
    /// ```
    /// let ops = blo_examples::gemm_operands::Operands::new(10, 10, 10, false, false);
    /// assert_eq!(ops.gflops(2e-6), 1.0);
    /// ```
    pub fn gflops(&self, seconds: f64) -> f64 {
        2.0 * (self.m * self.k * self.n) as f64 / seconds / 1e9
    }
}

/// The median of timings (the upper one of an even count; NaN for none).
///
/// ```
/// use blo_examples::gemm_operands::median;
/// assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
/// assert!(median(Vec::new()).is_nan());
/// ```
pub fn median(mut t: Vec<f64>) -> f64 {
    if t.is_empty() {
        return f64::NAN;
    }
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}
