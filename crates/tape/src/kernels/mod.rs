//! The matrix-product kernels: every `unsafe` block of the crate lives in this
//! folder, behind the safe functions [`gemm`] and [`gemm_into`].
//!
//! | file | what | `unsafe` for |
//! |---|---|---|
//! | `view.rs` | [`MatRef`], [`MatMut`]: strided views built only by checked constructors | — |
//! | `family.rs` | [`Family`], [`with_family`], [`force`], `TAPE_KERNELS` | — |
//! | `batch.rs` | [`Batch`]: B equally shaped products at fixed steps (the batched ops), checked once, their kernel chosen once | — |
//! | `portable.rs` | the small-product row loop, and a strided loop for other element types | reading a packed stack buffer |
//! | `simd.rs` | register-blocked kernels for `f32`, `f64`, `Dual<f32>`, `Dual<f64>`, written once over a vector shape, and the tiling loop of the transposing packers | raw pointers, masked loads and stores |
//! | `avx2.rs` | those kernels for AVX2+FMA (`f32 × 8`, `f64 × 4`), a transposing packer (8 × 8 / 4 × 4 tiles), and the row loop compiled with AVX2 | intrinsics, calling `#[target_feature]` functions |
//! | `avx512.rs` | those kernels for AVX-512F (`f32 × 16`, `f64 × 8`), and a transposing packer | intrinsics, masked loads and stores |
//! | `large.rs` | large real products: the per-call thread split | raw pointers and strides |
//! | `packed.rs` | large real products by packed panels and register tiles (portable, and written once over a vector shape for AVX2+FMA and AVX-512F); a row-major `B` of a product of few rows read in place ([`pack_b_always`] turns that off) | raw pointers, masked loads and stores |
//! | `grid.rs` | the portable family's micro-kernel for `packed.rs`: a grid of scalar accumulators the compiler vectorises for the baseline target (SSE2, NEON) | reading packed slivers, writing a tile of `C` |
//! | `dual.rs` | a dual matrix as two real ones (parts with doubled strides, or split into contiguous planes) | viewing `[Dual<T>]` as `[T]` |
//! | `thin.rs` | large matrix-vector products (row-major `A`, or column-major `A` with two columns) with the lanes down the rows of `A` | calling `#[target_feature]` functions, raw pointers, masked loads and stores |
//! | `vmath.rs` | softplus and the sigmoid of `f32`/`f64` from one branch-free exponential, over slices compiled for the family's width (same bits) | — (through `wide.rs`) |
//! | `real_left.rs` | a real left operand (a constant's real copy) times a dual one, as one real product | — |
//! | `relu.rs` | ReLU in place and its adjoint from the saved output, over slices, compiled for the active family's vector width (`batched_affine_relu`) | — |
//! | `source.rs` | [`with_plane_sources`]: caller planes x, v that an HVP-only pass's dual leaves read in place (the first layer's product as two real ones) | registered `&[F]` kept as pointers while they are borrowed |
//! | `sink.rs` | [`with_tangent_sinks`]: caller buffers that take an HVP-only leaf's H·v block from its product | a registered `&mut [F]` kept as a pointer while it is borrowed |
//! | `peak.rs` | [`fma_gflops`]: this machine's measured f32 FMA throughput (independent chains in registers), for the benchmarks' share of the peak | calling `#[target_feature]` functions, an unaligned store |
//! | `rows.rs` | the column sums of a row-major block (a bias's adjoint), compiled for the active family's vector width | — |
//! | `update.rs` | [`all_finite`], [`sub_scaled`] (an SGD step) and the two fused ([`sub_scaled_finite`]) over long slices, compiled for the active family's vector width | — |
//! | `wide.rs` | running a safe loop compiled for the active family's vector width (AVX-512F, AVX2 or baseline) | calling `#[target_feature]` functions |
//!
//! # Soundness
//! The kernels read and write without bounds checks. What makes that sound
//! is established once, by safe constructors, and named by every
//! `// SAFETY:` comment:
//!
//! - **Views** ([`MatRef::new`], [`MatMut::new`], `row_major`): a stride is 0
//!   only along a dimension of size ≤ 1 (or in an empty view); the last element
//!   `(rows − 1)·rs + (cols − 1)·cs` is computed without overflow and lies in
//!   the slice, so every element does; an output's elements do not overlap
//!   (`cs·cols ≤ rs` or `rs·rows ≤ cs`). Fields are private to this folder, so
//!   no other code can build a view that skips the checks.
//! - **Products** ([`Product::new`]): `A` is `m × k`, `B` is `k × n` and `C` is
//!   `m × n`. `C` is a `&mut` borrow, so it aliases neither `A` nor `B`.
//! - **CPU features**: a `#[target_feature]` function is called only after
//!   `is_x86_feature_detected!` said yes, in the same function.
//! - **Masks**: vector kernels compute addresses with `wrapping_add` and touch
//!   only the lanes of their mask, which are elements of a checked view.
//!
//! A bad view is a panic at the caller's line, with its shape and strides,
//! before any kernel runs, on every CPU.
//!
//! # Kernel families
//! A *small* product (at most [`SMALL_MACS`] multiply-adds and [`SMALL_COLS`]
//! columns, or at most [`THIN_COLS`] columns whatever its size — a
//! matrix-vector product; dense row-major output) runs one of three families:
//!
//! - [`Family::Portable`]: the row loop, compiled for the baseline target. For
//!   each output element the products `a_il·b_lj` are added in increasing `l`,
//!   from zero, each product and each sum rounded on its own (Rust never
//!   fuses `a * b + c`), then `α·s (+ β·c)`; duals follow `Dual`'s `Mul` and
//!   `Add`. On aarch64 the compiler vectorises its row updates with NEON.
//! - [`Family::Avx2`] (x86_64 with AVX2 **and** FMA): register-blocked kernels
//!   (`simd.rs`, `avx2.rs`) for `f32`, `f64`, `Dual<f32>` and `Dual<f64>`, in
//!   the same order over `l` but with fused multiply-adds: `s ← fma(a_il,
//!   b_lj, s)`, and a dual tangent `s ← fma(a.v, b.d, fma(a.d, b.v, s))`; the
//!   same epilogue. Other element types (nested duals), and a strided operand
//!   too large to pack, run the row loop compiled with AVX2 (no fused
//!   operations). A CPU with AVX2 but no FMA gets [`Family::Portable`].
//! - [`Family::Avx512`] (x86_64 with AVX-512F): the same register-blocked
//!   kernels for AVX-512F, without fused multiply-adds, so they give the row
//!   loop's bits; other element types run [`Family::Avx2`]'s row loop.
//!
//! # Determinism and accuracy
//! Within one family the result is a fixed function of the operands: each
//! element is summed in increasing `l` into its own accumulator, whatever its
//! place in a register block, the shape around it, or how a caller splits the
//! rows between threads; so results are bit-identical for any thread count and
//! from run to run. [`Family::Portable`] and [`Family::Avx512`] give the same
//! bits. [`Family::Avx2`] differs from them by rounding only, within a bound
//! (`tests/kernel_families.rs` checks it on random shapes and layouts):
//!
//! ```text
//! |c_avx2 − c_portable| ≤ 2·γ_{K+2}·(|α|·Σ_l |x_l·y_l| + |β·c_ij|),   γ_n = n·u / (1 − n·u)
//! ```
//!
//! where `u` is the unit roundoff (2⁻²⁴ for `f32`, 2⁻⁵³ for `f64`) and the
//! sum runs over the `K` products that make up the element: `K = k`,
//! `x_l·y_l = a_il·b_lj` for a real element and a dual's primal part, and
//! `K = 2k` with the terms `a.d_il·b.v_lj` and `a.v_il·b.d_lj` for a dual's
//! tangent. Why: each family's accumulated sum `ŝ` is a recursive sum of the
//! `K` products in which every term passes through at most `K` roundings (the
//! portable loop: one for the product, at most `K − 1` for the additions after
//! it, its tangent's pair sum adding one more; the fused loop: at most `K`
//! fused steps), so `|ŝ − s| ≤ γ_K·Σ|x_l·y_l|` (Higham, *Accuracy and
//! Stability of Numerical Algorithms*, §3.1); the epilogue rounds `α·ŝ` and
//! `β·c` once and their sum once, so each family is within
//! `γ_{K+2}·|α|·Σ|x_l·y_l| + γ_2·|β·c_ij|` of the exact `α·s + β·c_ij`, and the
//! two families within twice that of each other. (For `f32` and `k = 40`:
//! `2·γ_42 ≈ 5.0·10⁻⁶` of the magnitude sum.) Non-finite operands give
//! non-finite results in every family, but not necessarily the same ones.
//!
//! By default the best family the CPU has runs. To test or benchmark another
//! one: the environment variable `TAPE_KERNELS=portable|avx2|avx512|auto`
//! (read once per process), [`force`] (process-wide), or [`with_family`]
//! (this thread, for the duration of a closure). Asking for a family the CPU
//! lacks, or an unknown name, panics with the allowed values; it never
//! reaches an instruction the CPU does not have. [`last_family`] tells which
//! family ran the thread's last small product.
//!
//! A *large* real product runs the packed kernels (`packed.rs`) of the same
//! family: [`Family::Portable`] with the portable loop's bits, and
//! [`Family::Avx2`] and [`Family::Avx512`] with fused multiply-adds, each
//! element summed from zero in increasing `l` as above, so within the same
//! bound of the portable loop (`tests/kernel_families.rs` checks it on large
//! shapes and every layout). So under the AVX-512 family, small products give
//! the portable bits and large ones do not. A dual large product is split into
//! real ones (`dual.rs`). Whether a large product's `B` is packed or read in
//! place changes where it is read from, never an element's sum: the same
//! bits either way.
//!
//! ```
//! use tape::gemm::{gemm, MatRef};
//! use tape::kernels::{last_family, with_family, Family};
//! let a = [1.0_f64, 2.0, 3.0, 4.0, 5.0, 6.0]; // [[1, 2, 3], [4, 5, 6]]
//! let a = MatRef::row_major(&a, 2, 3);
//! for family in Family::ALL.into_iter().filter(|f| f.is_available()) {
//!     let mut c = [f64::NAN; 4]; // β = 0: C is written, never read
//!     with_family(family, || gemm(1.0, a, a.t(), 0.0, &mut c)); // A·Aᵀ
//!     assert_eq!(last_family(), Some(family));
//!     // Small integers: every product and partial sum is exact, so no
//!     // family rounds and all give the same bits here.
//!     assert_eq!(c, [14.0, 32.0, 32.0, 77.0]);
//! }
//! ```

mod avx2;
pub(crate) mod avx512;
pub(crate) mod batch;
pub(crate) mod dual;
mod family;
mod grid;
pub(crate) mod large;
pub(crate) mod packed;
pub(crate) mod pair;
mod peak;
pub(crate) mod portable;
pub(crate) mod real_left;
pub(crate) mod relu;
pub(crate) mod rows;
pub(crate) mod simd;
mod sink;
pub(crate) mod source;
pub(crate) mod thin;
mod update;
mod view;
pub(crate) mod vmath;
mod wide;

pub use batch::Batch;
pub use dual::{split_duals, tangents_into, zip_duals};
pub use family::{active, force, last_family, with_family, Family, UnknownFamily, ENV_VAR};
pub use packed::pack_b_always;
pub use peak::fma_gflops;
pub use sink::with_tangent_sinks;
pub use source::{with_plane_sources, PlaneSource};
pub use update::{all_finite, sub_scaled, sub_scaled_finite};
pub use view::{MatMut, MatRef};

pub(crate) use real_left::{real_left_gemm, real_left_ok, real_left_tangent_sink, takes_real_left};

use crate::real::{Float, Real};

/// Products with at most this many multiply-adds (and at most [`SMALL_COLS`]
/// columns, into a dense row-major output) run a small-product family instead
/// of the packed kernels: for the tiny matrices of few-shot regression
/// (`[10, 40]·[40, 40]`) packing and edge kernels cost more than the arithmetic.
pub const SMALL_MACS: usize = 32 * 1024;
/// ... and with at most this many columns (the accumulator row lives on the stack).
pub const SMALL_COLS: usize = 64;
/// Products with at most this many columns run a small-product family
/// whatever their size: for a matrix-vector product a packed product would
/// pack the whole matrix (as much memory traffic as the product itself) to
/// fill register tiles that are mostly empty, while the families read each
/// element once, in place (no packing when `B`'s rows are contiguous; the
/// single-column kernel reads a column-major `A` in place). They run on the
/// calling thread (no rayon hand-off).
pub const THIN_COLS: usize = 2;

/// Whether an `m × k` by `k × n` product runs a small-product family (given a
/// dense row-major output): at most [`SMALL_MACS`] multiply-adds and
/// [`SMALL_COLS`] columns, or at most [`THIN_COLS`] columns.
pub(crate) fn is_small(m: usize, k: usize, n: usize) -> bool {
    // Input views may overlap, so m·k·n is not bounded by any slice length.
    let macs = m.saturating_mul(k).saturating_mul(n);
    n <= THIN_COLS || (macs <= SMALL_MACS && n <= SMALL_COLS)
}
/// A strided operand of at most this many elements is packed on the stack
/// before a small product (at most 32 KiB for `Dual<f64>`); a small product
/// with a larger strided right operand runs the row loop (the portable bits)
/// under every family.
pub const PACK: usize = 2048;

/// Whether a `rows × cols` operand fits the packing buffer. (Input views may
/// overlap, so `rows·cols` is not bounded by a slice length: no wrapping.)
fn fits_pack(rows: usize, cols: usize) -> bool {
    rows.checked_mul(cols).is_some_and(|len| len <= PACK)
}

/// One matrix product `C ← α·A·B + β·C` whose shapes agree: `A` is `m × k`,
/// `B` is `k × n`, `C` is `m × n`. Built by [`Product::new`]; it is what the
/// element types' kernel hooks on [`Real`] receive.
pub struct Product<'a, T: Real> {
    alpha: T::Base,
    a: MatRef<'a, T>,
    b: MatRef<'a, T>,
    beta: T::Base,
    c: MatMut<'a, T>,
}

impl<'a, T: Real> Product<'a, T> {
    /// Checks the shapes of `C ← α·A·B + β·C`.
    ///
    /// # Panics
    /// If `A`'s columns differ from `B`'s rows, or `C` is not `A.rows × B.cols`
    /// (the message has the three shapes).
    #[track_caller]
    pub fn new(
        alpha: T::Base,
        a: MatRef<'a, T>,
        b: MatRef<'a, T>,
        beta: T::Base,
        c: MatMut<'a, T>,
    ) -> Self {
        check_inner(&a, &b);
        assert!(
            c.rows == a.rows && c.cols == b.cols,
            "gemm: lhs [{}, {}], rhs [{}, {}]: output is [{}, {}], expected [{}, {}]",
            a.rows,
            a.cols,
            b.rows,
            b.cols,
            c.rows,
            c.cols,
            a.rows,
            b.cols
        );
        Product {
            alpha,
            a,
            b,
            beta,
            c,
        }
    }

    /// `[m, k, n]`.
    pub fn shape(&self) -> [usize; 3] {
        [self.a.rows, self.a.cols, self.b.cols]
    }
}

#[track_caller]
fn check_inner<T>(a: &MatRef<'_, T>, b: &MatRef<'_, T>) {
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
}

/// `C ← alpha·A·B + beta·C` for any [`Real`] element type, dual numbers included.
///
/// `c` is a dense row-major `a.rows × b.cols` buffer. With `beta = 0`, `c` is
/// overwritten and never read (it may hold anything, NaN included).
/// [`gemm_into`] takes a strided output instead.
///
/// # Panics
/// If the inner dimensions differ or `c` has the wrong length (the message
/// has the shapes). The views were checked when they were built.
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
    dense(alpha, a, b, beta, c, Parts::Both);
}

/// `C.d ← α·(A.v·B.d + A.d·B.v) + β·C.d` and `C.v ← β·C.v`: the tangent part
/// of a dual product alone, for an adjoint whose primal part nobody reads (a
/// leaf of [`crate::Tape::tangent_leaf_with`]). `c` is dense row-major, as
/// for [`gemm`].
///
/// `C.d` is bit for bit the one [`gemm`] writes: a large `Dual<f32>`/
/// `Dual<f64>` product computes it by the same real products in the same
/// order and only leaves out `A.v·B.v` ([`Real::large_tangent_gemm`]); small
/// products (the small kernels interleave both parts) and other element types
/// run the full product.
///
/// # Panics
/// As [`gemm`].
#[track_caller]
pub(crate) fn tangent_gemm<T: Real>(
    alpha: T::Base,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    beta: T::Base,
    c: &mut [T],
) {
    dense(alpha, a, b, beta, c, Parts::Tangent);
}

/// Which parts of a product's output are wanted.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub(crate) enum Parts {
    /// The whole product.
    Both,
    /// A dual output's tangent part only; its primal part becomes `β·C.v`.
    Tangent,
}

/// [`gemm`] and [`tangent_gemm`]: the checks of a dense output, then [`run`].
#[track_caller]
fn dense<T: Real>(
    alpha: T::Base,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    beta: T::Base,
    c: &mut [T],
    parts: Parts,
) {
    check_inner(&a, &b);
    assert!(
        c.len() == a.rows * b.cols,
        "gemm: lhs [{}, {}], rhs [{}, {}]: output has {} elements, expected {} × {} = {}",
        a.rows,
        a.cols,
        b.rows,
        b.cols,
        c.len(),
        a.rows,
        b.cols,
        a.rows * b.cols
    );
    run(
        Product::new(alpha, a, b, beta, MatMut::row_major(c, a.rows, b.cols)),
        parts,
    );
}

/// `C ← alpha·A·B + beta·C` into a strided output view (see [`gemm`]). A dense
/// row-major `c` takes the same path, with the same bits, as [`gemm`]; other
/// layouts run the large-product path whatever the size.
///
/// # Panics
/// If the shapes do not agree (the message has the three shapes).
#[track_caller]
pub fn gemm_into<T: Real>(
    alpha: T::Base,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    beta: T::Base,
    c: MatMut<'_, T>,
) {
    run(Product::new(alpha, a, b, beta, c), Parts::Both);
}

/// The dispatch: empty products, the empty sum, small and large products
/// (a tangent-only one, `parts`, only where a large product can skip work).
fn run<T: Real>(mut p: Product<'_, T>, parts: Parts) {
    let [m, k, n] = p.shape();
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // An empty sum: C ← β·C; β = 0 overwrites without reading C (which
        // may hold stale values, as the packed kernels also promise for β = 0).
        scale(&mut p.c, p.beta);
        return;
    }
    if is_small(m, k, n) && p.c.dense_row_major().is_some() {
        small(p);
    } else if parts == Parts::Tangent {
        T::large_tangent_gemm(p);
    } else {
        T::large_gemm(p);
    }
}

/// `C ← β·C`, without reading `C` when β = 0.
fn scale<T: Real>(c: &mut MatMut<'_, T>, beta: T::Base) {
    if beta == <T::Base as Real>::zero() {
        c.for_each(|x| *x = T::zero());
    } else {
        let beta = T::from_base(beta);
        c.for_each(|x| *x = beta * *x);
    }
}

/// A small product with a dense row-major output, by the highest family up to
/// the active one that handles it.
fn small<T: Real>(mut p: Product<'_, T>) {
    let family = active();
    // The hand-written kernels (they record which family ran).
    if family > Family::Portable && T::simd_gemm(&mut p) {
        return;
    }
    let Product {
        alpha,
        a,
        b,
        beta,
        mut c,
    } = p;
    let c = c
        .dense_row_major()
        .expect("`run` sends only dense row-major outputs here");
    if family >= Family::Avx2 && avx2::small(alpha, a, b, beta, c) {
        family::record(Family::Avx2);
        return;
    }
    portable::small(alpha, a, b, beta, c);
    family::record(Family::Portable);
}

/// The primitive floats, with what the kernels need to know about them: their
/// vector shapes, the large products' packing buffers and the dual product's
/// scratch. Crate-private, so no other type can claim to be one.
pub(crate) trait Prim: Float + simd::Lane {
    /// Runs `f` on this thread's packing buffers for the large products
    /// (`packed.rs`), one set per half of a product cut in two (`large.rs`),
    /// whichever thread runs that half (kept, so a steady state allocates
    /// nothing; fresh ones if re-entered).
    fn with_pack<R>(f: impl FnOnce(&mut [packed::Bufs<Self>; 2]) -> R) -> R;

    /// Runs `f` on this thread's scratch for the dual product's split parts
    /// (kept, so a steady state allocates nothing; a fresh one if re-entered).
    fn with_scratch<R>(f: impl FnOnce(&mut Vec<Self>) -> R) -> R;
}

macro_rules! impl_prim {
    ($t:ty, $pack:ident, $scratch:ident) => {
        thread_local! {
            static $pack: std::cell::RefCell<[packed::Bufs<$t>; 2]> =
                std::cell::RefCell::new(Default::default());
            static $scratch: std::cell::RefCell<Vec<$t>> =
                const { std::cell::RefCell::new(Vec::new()) };
        }
        impl Prim for $t {
            fn with_pack<R>(f: impl FnOnce(&mut [packed::Bufs<$t>; 2]) -> R) -> R {
                $pack.with(|s| match s.try_borrow_mut() {
                    Ok(mut s) => f(&mut s),
                    Err(_) => f(&mut Default::default()),
                })
            }
            fn with_scratch<R>(f: impl FnOnce(&mut Vec<$t>) -> R) -> R {
                $scratch.with(|s| match s.try_borrow_mut() {
                    Ok(mut s) => f(&mut s),
                    Err(_) => f(&mut Vec::new()),
                })
            }
        }
    };
}
impl_prim!(f32, PACK_F32, DUAL_SCRATCH_F32);
impl_prim!(f64, PACK_F64, DUAL_SCRATCH_F64);
