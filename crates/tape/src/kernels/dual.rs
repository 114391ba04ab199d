//! Large dual products as real ones.
//!
//! `Dual<T>` is `#[repr(C)]`, so a slice of duals is two interleaved matrices
//! of `T`: the primal parts at offset 0 and the tangents at offset 1, both with
//! doubled strides ([`MatRef::parts`], [`MatMut::part`]). Two ways to use it:
//!
//! - [`three`], for any `T` (nested duals): three real products on the part
//!   views, `C.v ← α A.v B.v + β C.v`, `C.d ← α A.v B.d + β C.d`,
//!   `C.d ← α A.d B.v + C.d`;
//! - [`planes`], for `f32`/`f64`: copies the parts into contiguous planes so
//!   that every real product has unit strides and the tangent is one product
//!   with inner dimension 2k (see its docs); it also computes the tangent part
//!   alone ([`Parts::Tangent`]).
//!
//! The copies between interleaved duals and contiguous planes ([`zip_duals`],
//! [`tangents_into`], and the split of a line) are loops compiled for the
//! active family's vector width (`wide.rs`): they move bits and compare with
//! zero, so every family gives the same result.

use std::any::{Any, TypeId};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use super::real_left::same_type;
use super::{MatMut, MatRef, Parts, Prim, Product};
use crate::real::{Dual, Float, Real};

/// `out[i] = v[i] + d[i]·ε`: interleaves a primal plane and a tangent plane
/// into duals (e.g. a dual leaf `x + v ε` from a point and a direction),
/// compiled for the active family's vector width.
///
/// ```
/// use tape::kernels::zip_duals;
/// use tape::Dual;
/// let mut out = [Dual::new(0.0_f32, 0.0); 2];
/// zip_duals(&[1.0, 2.0], &[3.0, 4.0], &mut out);
/// assert_eq!(out, [Dual::new(1.0, 3.0), Dual::new(2.0, 4.0)]);
/// ```
///
/// # Panics
/// If the three slices differ in length.
#[track_caller]
pub fn zip_duals<T: Float>(v: &[T], d: &[T], out: &mut [Dual<T>]) {
    assert!(
        v.len() == out.len() && d.len() == out.len(),
        "zip_duals: v has {} elements, d {}, out {}",
        v.len(),
        d.len(),
        out.len()
    );
    in_parts(out, &mut [], 1, |s, out, _: &mut [()]| {
        let e = s + out.len();
        zip_wide(&v[s..e], &d[s..e], out);
        false
    });
}

/// `out(i, j) = vd(i, j) + vd(i, n + j)·ε` for `out` `m × n` and `vd`
/// `m × 2n` (row-major both): the two planes of a product side by side,
/// `[C.v | C.d]` (`large::real_side_by_side`), interleaved by rows as
/// [`zip_duals`] interleaves two planes (the same bits), cut over both
/// cores by rows as [`in_parts`].
///
/// # Panics
/// If `n` is 0, or `out` is not `m × n` and `vd` `m × 2n` for some `m`.
#[track_caller]
pub(crate) fn zip_rows<T: Float>(vd: &[T], n: usize, out: &mut [Dual<T>]) {
    assert!(
        n > 0 && out.len().is_multiple_of(n) && vd.len() == 2 * out.len(),
        "zip_rows: planes of {} elements side by side into {} duals in rows of {n}",
        vd.len(),
        out.len()
    );
    in_parts(out, &mut [], n, |s, out, _: &mut [()]| {
        let first = s / n;
        for (i, row) in out.chunks_exact_mut(n).enumerate() {
            let (v, d) = vd[2 * n * (first + i)..2 * n * (first + i + 1)].split_at(n);
            zip_wide(v, d, row);
        }
        false
    });
}

/// [`zip_duals`] on one thread.
fn zip_wide<T: Float>(v: &[T], d: &[T], out: &mut [Dual<T>]) {
    super::wide::wide!(zip<T: Float>(v: &[T], d: &[T], out: &mut [Dual<T>]) -> ())
}

/// `out[i] = x[i].d`: the tangent plane of interleaved duals (e.g. the H·v
/// part of a dual adjoint), compiled for the active family's vector width.
///
/// ```
/// use tape::kernels::tangents_into;
/// use tape::Dual;
/// let mut d = [0.0_f64; 2];
/// tangents_into(&[Dual::new(1.0, 3.0), Dual::new(2.0, 4.0)], &mut d);
/// assert_eq!(d, [3.0, 4.0]);
/// ```
///
/// # Panics
/// If the slices differ in length.
#[track_caller]
pub fn tangents_into<T: Float>(x: &[Dual<T>], out: &mut [T]) {
    assert_eq!(
        x.len(),
        out.len(),
        "tangents_into: x has {} elements, out {}",
        x.len(),
        out.len()
    );
    in_parts(out, &mut [], 1, |s, out, _: &mut [()]| {
        tangents_wide(&x[s..s + out.len()], out);
        false
    });
}

/// [`tangents_into`] on one thread.
fn tangents_wide<T: Float>(x: &[Dual<T>], out: &mut [T]) {
    super::wide::wide!(tangents<T: Float>(x: &[Dual<T>], out: &mut [T]) -> ())
}

/// `v[i] = x[i].v`, `d[i] = x[i].d` over the shortest of the three; whether
/// a tangent was nonzero. Compiled for the active family's vector width.
fn unzip_duals<T: Float>(x: &[Dual<T>], v: &mut [T], d: &mut [T]) -> bool {
    super::wide::wide!(unzip<T: Float>(x: &[Dual<T>], v: &mut [T], d: &mut [T]) -> bool)
}

/// `v[i] = x[i].v`, `d[i] = x[i].d`: the primal and tangent planes of
/// interleaved duals (e.g. the gradient and H·v parts of a dual adjoint),
/// compiled for the active family's vector width and, when long, cut over
/// both cores (only bits move, so the result does not depend on it).
///
/// ```
/// use tape::kernels::split_duals;
/// use tape::Dual;
/// let (mut v, mut d) = ([0.0_f32; 2], [0.0_f32; 2]);
/// split_duals(&[Dual::new(1.0, 3.0), Dual::new(2.0, 4.0)], &mut v, &mut d);
/// assert_eq!((v, d), ([1.0, 2.0], [3.0, 4.0]));
/// ```
///
/// # Panics
/// If the three slices differ in length.
#[track_caller]
pub fn split_duals<T: Float>(x: &[Dual<T>], v: &mut [T], d: &mut [T]) {
    assert!(
        v.len() == x.len() && d.len() == x.len(),
        "split_duals: x has {} elements, v {}, d {}",
        x.len(),
        v.len(),
        d.len()
    );
    unzip_all(x, v, d);
}

/// [`unzip_duals`] over all of `x` (`v`, `d` as long), cut as [`in_parts`].
fn unzip_all<T: Float>(x: &[Dual<T>], v: &mut [T], d: &mut [T]) -> bool {
    assert!(
        v.len() == x.len() && d.len() == x.len(),
        "unzip_all: lengths"
    );
    in_parts(v, d, 1, |s, v, d| unzip_duals(&x[s..s + v.len()], v, d))
}

/// Copies between duals and planes of at least this many elements are cut
/// in [`COPY_PARTS`] parts that the caller and the second thread of
/// [`super::pair::share`] take in turn, as the large products are: on the
/// MLP's W1-sized arrays (784 × 256) they are bound by memory traffic
/// (`docs/benchmarks.md`, "hvpk"), and each core brings its own. The MLP's
/// 64 × 256 activations (16 Ki duals: the splits of h1, h2 and their
/// adjoints for the products, the interleaves of z1, z2 and ḡh1) are cut
/// too: run on the caller alone, they were time the second thread spent
/// idle between two products (`docs/benchmarks.md`, "hvp8"). The same
/// threshold as the elementwise rules' ([`super::pair::SPLIT_ELEMS`]); below
/// it (the 10-wide last layer) a hand-off costs more than half the copy.
const COPY_SPLIT: usize = super::pair::SPLIT_ELEMS;
/// Parts per cut copy (more than two, as for the products: a thread the
/// system has not scheduled holds up at most one part).
const COPY_PARTS: usize = 4;

/// One part of [`in_parts`]: its first element's index and its elements of
/// the two slices.
type Part<'a, A, B> = (usize, &'a mut [A], &'a mut [B]);

/// Runs `job(start, a_part, b_part)` on consecutive parts of `a` (each a
/// multiple of `unit` long, `start` its first element's index) and the same
/// elements of `b` (as long as `a`, or empty: empty parts), and returns
/// whether any call returned `true`. Whole on this thread below
/// [`COPY_SPLIT`] elements, inside one of rayon's workers (the caller runs
/// tasks in parallel already) or with a pool of one thread; else cut in
/// [`COPY_PARTS`] for [`super::pair::share`]. Parts run on the second thread
/// in the caller's kernel family. Every element is written by one part, and
/// the jobs here only move bits, so the result does not depend on the cut.
fn in_parts<A: Send, B: Send>(
    a: &mut [A],
    b: &mut [B],
    unit: usize,
    job: impl Fn(usize, &mut [A], &mut [B]) -> bool + Sync,
) -> bool {
    let n = a.len();
    assert!(
        b.is_empty() || b.len() == n,
        "in_parts: lengths {n} and {}",
        b.len()
    );
    if n < COPY_SPLIT || rayon::current_thread_index().is_some() || rayon::current_num_threads() < 2
    {
        return job(0, a, b);
    }
    let len = (n / unit.max(1)).div_ceil(COPY_PARTS).max(1) * unit.max(1);
    let mut a_parts = a.chunks_mut(len);
    let mut b_parts = b.chunks_mut(len);
    let parts: [Mutex<Option<Part<'_, A, B>>>; COPY_PARTS] = std::array::from_fn(|i| {
        let b = b_parts.next().unwrap_or(&mut []);
        Mutex::new(a_parts.next().map(|a| (i * len, a, b)))
    });
    let family = super::active();
    let any = AtomicBool::new(false);
    super::pair::share(COPY_PARTS, &|i: usize, there: bool| {
        let mut part = parts[i].lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((s, a, b)) = part.as_mut() {
            let hit = if there {
                super::with_family(family, || job(*s, a, b))
            } else {
                job(*s, a, b)
            };
            if hit {
                any.store(true, Ordering::Relaxed);
            }
        }
    });
    any.into_inner()
}

/// The loop of [`zip_duals`].
#[inline(always)]
fn zip<T: Float>(v: &[T], d: &[T], out: &mut [Dual<T>]) {
    for ((o, &v), &d) in out.iter_mut().zip(v).zip(d) {
        *o = Dual { v, d };
    }
}

/// The loop of [`tangents_into`].
#[inline(always)]
fn tangents<T: Float>(x: &[Dual<T>], out: &mut [T]) {
    for (o, x) in out.iter_mut().zip(x) {
        *o = x.d;
    }
}

/// The loop of [`unzip_duals`] (the test has no branch, so it vectorises).
#[inline(always)]
fn unzip<T: Float>(x: &[Dual<T>], v: &mut [T], d: &mut [T]) -> bool {
    let zero = T::zero();
    let mut nonzero = false;
    for ((x, v), d) in x.iter().zip(v.iter_mut()).zip(d.iter_mut()) {
        (*v, *d) = (x.v, x.d);
        nonzero |= x.d != zero;
    }
    nonzero
}

/// `&[Dual<T>]` as the `&[T]` of twice the length: value, tangent, value, …
fn flat<T>(x: &[Dual<T>]) -> &[T] {
    const { assert!(size_of::<Dual<T>>() == 2 * size_of::<T>()) };
    // SAFETY: `Dual<T>` is `#[repr(C)]` with exactly two fields of type `T`,
    // so (const-asserted above) it is two `T`s with no padding, aligned as `T`;
    // n duals are 2n contiguous `T`s, borrowed for the same lifetime.
    unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<T>(), 2 * x.len()) }
}

/// The `&mut` form of [`flat`].
fn flat_mut<T>(x: &mut [Dual<T>]) -> &mut [T] {
    const { assert!(size_of::<Dual<T>>() == 2 * size_of::<T>()) };
    // SAFETY: as in `flat`; the result reborrows `x` exclusively.
    unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr().cast::<T>(), 2 * x.len()) }
}

/// The part at `offset` (0: value, 1: tangent) of a flattened dual slice.
fn part_of<T>(flat: &[T], offset: usize) -> &[T] {
    flat.get(offset..).unwrap_or(&[])
}

impl<'a, T> MatRef<'a, Dual<T>> {
    /// The value and tangent parts: views of `T` with doubled strides.
    pub(in crate::kernels) fn parts(self) -> (MatRef<'a, T>, MatRef<'a, T>) {
        let f = flat(self.data);
        let (r, c, rs, cs) = (
            self.rows,
            self.cols,
            self.rs.saturating_mul(2),
            self.cs.saturating_mul(2),
        );
        (
            MatRef::new(part_of(f, 0), r, c, rs, cs),
            MatRef::new(part_of(f, 1), r, c, rs, cs),
        )
    }

    /// The view as a real `rows × 2·cols` matrix (columns `2j`, `2j + 1` are
    /// the parts of column `j`); only for a unit column stride.
    pub(in crate::kernels) fn real_columns(self) -> MatRef<'a, T> {
        assert_eq!(self.cs, 1, "real_columns needs unit column stride");
        MatRef::new(
            flat(self.data),
            self.rows,
            2 * self.cols,
            self.rs.saturating_mul(2),
            1,
        )
    }
}

impl<'a, T> MatMut<'a, Dual<T>> {
    /// One part (0: value, 1: tangent), as a writable view of `T` with doubled
    /// strides (it does not overlap itself: doubling keeps the nesting).
    pub(in crate::kernels) fn part(&mut self, offset: usize) -> MatMut<'_, T> {
        let (r, c, rs, cs) = (
            self.rows,
            self.cols,
            self.rs.saturating_mul(2),
            self.cs.saturating_mul(2),
        );
        let f = flat_mut(self.data);
        let len = f.len();
        MatMut::new(&mut f[offset.min(len)..], r, c, rs, cs)
    }

    /// The `&mut` form of [`MatRef::real_columns`].
    pub(in crate::kernels) fn real_columns(&mut self) -> MatMut<'_, T> {
        assert_eq!(self.cs, 1, "real_columns needs unit column stride");
        let (r, c, rs) = (self.rows, 2 * self.cols, self.rs.saturating_mul(2));
        MatMut::new(flat_mut(self.data), r, c, rs, 1)
    }
}

/// The generic dual product: three real products of `T` on the part views
/// (`T::large_gemm`, so nested duals recurse).
pub(crate) fn three<T: Real>(p: Product<'_, Dual<T>>) {
    let Product {
        alpha,
        a,
        b,
        beta,
        mut c,
    } = p;
    let ((av, ad), (bv, bd)) = (a.parts(), b.parts());
    let one = <T::Base as Real>::one();
    T::large_gemm(Product::new(alpha, av, bv, beta, c.part(0)));
    T::large_gemm(Product::new(alpha, av, bd, beta, c.part(1)));
    T::large_gemm(Product::new(alpha, ad, bv, one, c.part(1)));
}

/// The dual product for primitive floats, on contiguous planes.
///
/// The parts are copied (in each operand's memory order, one pass) into
/// contiguous scratch: `A' = [A.v | A.d]` (`m × 2k`), `B' = [B.d ; B.v]`
/// (`2k × n`) and, for the output, two `m × n` row-major planes `C.v`, `C.d`
/// (loaded from `C` first only if β ≠ 0). Then every real product reads and
/// writes unit-stride data (the packed kernels copy a strided output
/// through a tile-sized buffer):
///
/// - `C.v ← α A.v·B.v + β C.v` (skipped for [`Parts::Tangent`], where `C.v ←
///   β·C.v`);
/// - `C.d ← α A'·B' + β C.d`, one product with inner dimension 2k; an operand
///   whose tangent is zero everywhere (a constant, e.g. the data) is left out:
///   `C.d ← α A.v·B.d + β C.d` or `α A.d·B.v + β C.d` (structural zeros, as
///   JAX's symbolic zeros);
///
/// and the planes are interleaved back into `C`. So the tangent-only product
/// computes `C.d` by the very products of the full one and gets its bits.
///
/// One layout skips the copies: a constant `A` (zero tangent) times a `B`
/// with unit column stride into a `C` with unit column stride is one real
/// product `A.v·B` with 2n columns (a row-major dual matrix is a real one with
/// the parts in alternate columns), which gives `C.d` as `α A.v·B.d + β C.d`,
/// element for element the plane product's (`α = 1` in every rule, so a
/// column's place in the packed kernels' tiles does not change its rounding).
///
/// The result depends only on the operands, never on the thread count.
pub(crate) fn planes<F: Prim>(p: Product<'_, Dual<F>>, parts: Parts) {
    F::with_scratch(|s| planes_with(s, p, parts));
}

/// Whether every tangent of `x` is zero (in its memory order; stops at the
/// first nonzero one).
fn tangent_is_zero<F: Prim>(x: &MatRef<'_, Dual<F>>) -> bool {
    let zero = F::zero();
    let (outer, inner, so, si) = lines(x);
    (0..outer).all(|o| (0..inner).all(|t| x.data[o * so + t * si].d == zero))
}

/// A view's memory order: `(lines, line length, line stride, element
/// stride)`, lines being rows if its column stride is the smaller one.
fn lines<T>(x: &MatRef<'_, T>) -> (usize, usize, usize, usize) {
    if x.cs <= x.rs {
        (x.rows, x.cols, x.rs, x.cs)
    } else {
        (x.cols, x.rows, x.cs, x.rs)
    }
}

/// Copies line `o` of `x` (see [`lines`]) into `v` (primal parts) and `d`
/// (tangents); whether a tangent was nonzero.
fn split_line<F: Prim>(x: &MatRef<'_, Dual<F>>, o: usize, v: &mut [F], d: &mut [F]) -> bool {
    let (_, inner, so, si) = lines(x);
    if si == 1 {
        return unzip_duals(&x.data[o * so..o * so + inner], v, d);
    }
    let zero = F::zero();
    let mut nonzero = false;
    for (t, (v, d)) in v.iter_mut().zip(d.iter_mut()).enumerate() {
        let x = x.data[o * so + t * si];
        (*v, *d) = (x.v, x.d);
        nonzero |= x.d != zero;
    }
    nonzero
}

/// Splits `x` into `buf` (`2 × rows × cols`) in its memory order, each line's
/// two parts side by side (`paired`: line `o` at `buf[2o·len..]`, first part
/// then second) or in two halves (line `o` at `buf[o·len..]` and
/// `buf[(lines + o)·len..]`); `v_first` says which part comes first. Returns
/// whether a tangent was nonzero.
fn split_into<F: Prim>(
    x: &MatRef<'_, Dual<F>>,
    buf: &mut [F],
    paired: bool,
    v_first: bool,
) -> bool {
    let (outer, len, _, _) = lines(x);
    if len == 0 {
        return false;
    }
    let line = |o: usize, first: &mut [F], second: &mut [F]| {
        let (v, d) = if v_first {
            (first, second)
        } else {
            (second, first)
        };
        split_line(x, o, v, d)
    };
    // Cut by lines for `in_parts` (`s` is a part's first element).
    if paired {
        in_parts(
            &mut buf[..2 * outer * len],
            &mut [],
            2 * len,
            |s, part, _: &mut [()]| {
                let mut nonzero = false;
                for (o, pair) in part.chunks_exact_mut(2 * len).enumerate() {
                    let (first, second) = pair.split_at_mut(len);
                    nonzero |= line(s / (2 * len) + o, first, second);
                }
                nonzero
            },
        )
    } else {
        let (p, q) = buf.split_at_mut(outer * len);
        in_parts(p, &mut q[..outer * len], len, |s, p, q| {
            let mut nonzero = false;
            for (o, (first, second)) in p
                .chunks_exact_mut(len)
                .zip(q.chunks_exact_mut(len))
                .enumerate()
            {
                nonzero |= line(s / len + o, first, second);
            }
            nonzero
        })
    }
}

fn planes_with<F: Prim>(scratch: &mut Vec<F>, p: Product<'_, Dual<F>>, parts: Parts) {
    let [m, k, n] = p.shape();
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        return three(p);
    }
    let Product {
        alpha,
        a,
        b,
        beta,
        c,
    } = p;
    if parts == Parts::Both && b.cs == 1 && c.cs == 1 && tangent_is_zero(&a) {
        let mut c = c;
        let av = a.parts().0;
        let (b2, c2) = (b.real_columns(), c.real_columns());
        return F::large_gemm(Product::new(alpha, av, b2, beta, c2));
    }
    split_product(scratch, alpha, a, Right::View(b), beta, c, parts);
}

/// A dual product's right operand: a dual view, or the planes of a source
/// leaf (`kernels/source.rs`).
#[derive(Clone, Copy)]
pub(crate) enum Right<'a, F> {
    /// Interleaved duals.
    View(MatRef<'a, Dual<F>>),
    /// `W` (`rows × cols`) as two row-major planes, `W.v` and `W.d`; the
    /// operand is `Wᵀ` if `transposed`.
    Planes {
        v: &'a [F],
        d: &'a [F],
        rows: usize,
        cols: usize,
        transposed: bool,
    },
}

/// `C ← α·A·B + β·C` (or its tangent part, `parts`) on contiguous planes
/// for a nonempty product (`m, k, n > 0`): [`planes`] without its
/// shortcut (which gives the same bits, see there). A right operand given
/// as planes ([`Right::Planes`]) is read in place as `B'`'s two blocks,
/// the values [`split_into`] would have split its interleaved duals into,
/// so the products and their bits are the same.
pub(crate) fn split_product<F: Prim>(
    scratch: &mut Vec<F>,
    alpha: F,
    a: MatRef<'_, Dual<F>>,
    b: Right<'_, F>,
    beta: F,
    mut c: MatMut<'_, Dual<F>>,
    parts: Parts,
) {
    let zero = F::zero();
    let (m, k, n) = (c.rows, a.cols, c.cols);
    // Every element of the scratch is written before it is read (the C planes
    // only if β ≠ 0: a product with β = 0 does not read its output), so stale
    // contents from an earlier call are fine and it is only grown.
    let (amk, bkn, cmn) = (2 * m * k, 2 * k * n, m * n);
    let need = amk + bkn + 2 * cmn;
    if scratch.len() < need {
        scratch.resize(need, zero);
    }
    let (ap, rest) = scratch[..need].split_at_mut(amk);
    let (bp, cp) = rest.split_at_mut(bkn);
    let ops = match b {
        Right::View(b) => Operands::split(&a, &b, ap, bp),
        Right::Planes {
            v,
            d,
            rows,
            cols,
            transposed,
        } => Operands::split_planes(&a, (v, d), [rows, cols], transposed, ap),
    };
    let (cv, cd) = cp.split_at_mut(cmn);
    if beta != zero {
        let c0 = c.as_ref();
        if c0.cs == 1 && c0.rs == n {
            // Dense: one pass (cut over both cores if large).
            unzip_all(&c0.data[..m * n], cv, cd);
        } else {
            for (i, (v, d)) in cv
                .chunks_exact_mut(n)
                .zip(cd.chunks_exact_mut(n))
                .enumerate()
            {
                if c0.cs == 1 {
                    unzip_duals(&c0.data[i * c0.rs..i * c0.rs + n], v, d);
                    continue;
                }
                for (j, (v, d)) in v.iter_mut().zip(d).enumerate() {
                    let x = c0.data[i * c0.rs + j * c0.cs];
                    (*v, *d) = (x.v, x.d);
                }
            }
        }
    }
    if parts == Parts::Both {
        F::large_gemm(Product::new(
            alpha,
            ops.a_v(),
            ops.b_v(),
            beta,
            MatMut::row_major(cv, m, n),
        ));
    }
    ops.tangent(alpha, beta, MatMut::row_major(cd, m, n));
    interleave(&mut c, cv, cd, parts, beta);
}

/// A product's operands split into contiguous planes (in the scratch):
/// A' (m × 2k) = [A.v | A.d] and B' (2k × n) = [B.d ; B.v], each in its
/// source's memory order: row-major A' pairs each row's parts, column-major
/// A' stacks the parts' columns; row-major B' stacks the parts' rows,
/// column-major B' pairs each column's parts. B' is read as its two blocks
/// `B.d` and `B.v` (`large::real_stacked`), which may also be a source
/// leaf's planes where they are ([`Operands::split_planes`]).
struct Operands<'s, F> {
    ap: &'s [F],
    mkn: [usize; 3],
    /// A''s strides and where A.d starts in `ap`.
    a_lay: (usize, usize, usize),
    /// B.d and B.v (k × n), the same strides.
    b_d: MatRef<'s, F>,
    b_v: MatRef<'s, F>,
    /// Whether a tangent of A (of B) was nonzero.
    has_d: (bool, bool),
}

impl<'s, F: Prim> Operands<'s, F> {
    /// Splits `a` (m × k) into `ap` (2mk elements) and `b` (k × n) into `bp` (2kn).
    fn split(
        a: &MatRef<'_, Dual<F>>,
        b: &MatRef<'_, Dual<F>>,
        ap: &'s mut [F],
        bp: &'s mut [F],
    ) -> Self {
        let b_rows = b.cs <= b.rs;
        let b_has_d = split_into(b, bp, !b_rows, false);
        let (k, n) = (b.rows, b.cols);
        let bp = &*bp;
        let (b_d, b_v) = if b_rows {
            let (d, v) = bp[..2 * k * n].split_at(k * n);
            (MatRef::row_major(d, k, n), MatRef::row_major(v, k, n))
        } else {
            let view = |off: usize| MatRef::new(&bp[off..2 * k * n], k, n, 1, 2 * k);
            (view(0), view(k))
        };
        Self::with_b(a, ap, (b_d, b_v), b_has_d)
    }

    /// [`Operands::split`] with `B` = `W` (or `Wᵀ` if `transposed`) given
    /// as the planes `(W.v, W.d)` of `W` (`rows × cols`, row-major), read
    /// where they are: no copy, the values [`split_into`] would have copied
    /// for the interleaved `W`, so the same products and bits.
    fn split_planes(
        a: &MatRef<'_, Dual<F>>,
        (wv, wd): (&'s [F], &'s [F]),
        [rows, cols]: [usize; 2],
        transposed: bool,
        ap: &'s mut [F],
    ) -> Self {
        assert!(
            wv.len() == rows * cols && wd.len() == rows * cols,
            "split_planes: planes of {} and {} elements for [{rows}, {cols}] (transposed {transposed})",
            wv.len(),
            wd.len()
        );
        let zero = F::zero();
        let b_has_d = wd.iter().any(|&x| x != zero);
        let view = |w: &'s [F]| {
            if transposed {
                MatRef::new(w, cols, rows, 1, cols)
            } else {
                MatRef::row_major(w, rows, cols)
            }
        };
        Self::with_b(a, ap, (view(wd), view(wv)), b_has_d)
    }

    /// Splits `a` into `ap` and records `B`'s blocks `(B.d, B.v)` (`k × n`,
    /// a nonzero tangent if `b_has_d`).
    fn with_b(
        a: &MatRef<'_, Dual<F>>,
        ap: &'s mut [F],
        (b_d, b_v): (MatRef<'s, F>, MatRef<'s, F>),
        b_has_d: bool,
    ) -> Self {
        let (m, k, n) = (a.rows, a.cols, b_d.cols);
        let a_rows = a.cs <= a.rs;
        let a_has_d = split_into(a, ap, a_rows, true);
        Operands {
            ap,
            mkn: [m, k, n],
            a_lay: if a_rows { (2 * k, 1, k) } else { (1, m, k * m) },
            b_d,
            b_v,
            has_d: (a_has_d, b_has_d),
        }
    }

    /// A.v (m × k).
    fn a_v(&self) -> MatRef<'s, F> {
        let ([m, k, _], (rs, cs, _)) = (self.mkn, self.a_lay);
        MatRef::new(self.ap, m, k, rs, cs)
    }

    /// B.v (k × n).
    fn b_v(&self) -> MatRef<'s, F> {
        self.b_v
    }

    /// `C.d ← α A'·B' + β C.d`, one product with inner dimension 2k; an
    /// operand whose tangent is zero everywhere is left out (`α A.v·B.d` or
    /// `α A.d·B.v`), and with both zero `C.d ← β C.d`.
    fn tangent(&self, alpha: F, beta: F, mut c_d: MatMut<'_, F>) {
        let ([m, k, _], (ars, acs, a_d_off)) = (self.mkn, self.a_lay);
        match self.has_d {
            (true, true) => {
                let a_vd = MatRef::new(self.ap, m, 2 * k, ars, acs);
                super::large::real_stacked(alpha, a_vd, [self.b_d, self.b_v], beta, c_d);
            }
            (false, true) => {
                F::large_gemm(Product::new(alpha, self.a_v(), self.b_d, beta, c_d));
            }
            (true, false) => {
                let a_d = MatRef::new(&self.ap[a_d_off..], m, k, ars, acs);
                F::large_gemm(Product::new(alpha, a_d, self.b_v(), beta, c_d));
            }
            (false, false) => super::scale(&mut c_d, beta),
        }
    }
}

/// The tangent-only dual product with β = 0 (`tangent_gemm`'s `C.d`, bit
/// for bit) written into the tangent sink of node `node` ([`super::sink`])
/// as a row-major `m × n` real plane instead of into a dual output: `true`
/// if such a sink was registered (then it holds the product), else `false`
/// and nothing is done. Only for the products [`planes`] runs (large ones,
/// `T` = `Dual<f32>` or `Dual<f64>`).
///
/// # Panics
/// If the inner dimensions differ.
#[track_caller]
pub(crate) fn tangent_sink<T: Real>(
    node: usize,
    alpha: T::Base,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
) -> bool {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    super::check_inner(&a, &b);
    if m == 0 || n == 0 || k == 0 || super::is_small(m, k, n) {
        return false;
    }
    sink_as::<T, f32>(node, alpha, a, b) || sink_as::<T, f64>(node, alpha, a, b)
}

/// [`tangent_sink`] if `T` is `Dual<F>` and a sink is there.
fn sink_as<T: Real, F: Prim>(
    node: usize,
    alpha: T::Base,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
) -> bool {
    if TypeId::of::<T>() != TypeId::of::<Dual<F>>() {
        return false;
    }
    let Some(&alpha) = (&alpha as &dyn Any).downcast_ref::<F>() else {
        return false;
    };
    let a = MatRef::new(same_type::<_, Dual<F>>(a.data), a.rows, a.cols, a.rs, a.cs);
    let b = MatRef::new(same_type::<_, Dual<F>>(b.data), b.rows, b.cols, b.rs, b.cs);
    let (m, k, n) = (a.rows, a.cols, b.cols);
    super::sink::take_sink::<F>(node, m * n, |out| {
        F::with_scratch(|s| {
            let (amk, bkn) = (2 * m * k, 2 * k * n);
            if s.len() < amk + bkn {
                s.resize(amk + bkn, F::zero());
            }
            let (ap, bp) = s[..amk + bkn].split_at_mut(amk);
            let ops = Operands::split(&a, &b, ap, bp);
            ops.tangent(alpha, F::zero(), MatMut::row_major(out, m, n));
        });
    })
}

/// The planes back into `C`: `C(i, j) ← (cv[i·n + j], cd[i·n + j])` for
/// [`Parts::Both`], `(β·C.v(i, j), cd[i·n + j])` for [`Parts::Tangent`]
/// (`0` for the primal when β = 0, which does not read `C.v`), for the
/// row-major `m × n` planes `cv`, `cd`. A row of a unit-column-stride `C`
/// goes through the wide loops ([`zip_duals`], [`set_tangents`]).
fn interleave<F: Prim>(c: &mut MatMut<'_, Dual<F>>, cv: &[F], cd: &[F], parts: Parts, beta: F) {
    let (n, rs, cs) = (c.cols, c.rs, c.cs);
    if cs == 1 && rs == n {
        // Dense: one pass over all of it (cut over both cores if large).
        let out = &mut c.data[..cv.len()];
        return match parts {
            Parts::Both => zip_duals(cv, cd, out),
            Parts::Tangent => set_tangents(out, cd, beta),
        };
    }
    for (i, (v, d)) in cv.chunks_exact(n).zip(cd.chunks_exact(n)).enumerate() {
        if cs == 1 {
            let out = &mut c.data[i * rs..i * rs + n];
            match parts {
                Parts::Both => zip_duals(v, d, out),
                Parts::Tangent => set_tangents(out, d, beta),
            }
            continue;
        }
        for (j, (&v, &d)) in v.iter().zip(d).enumerate() {
            let x = &mut c.data[i * rs + j * cs];
            let v = match parts {
                Parts::Both => v,
                Parts::Tangent if beta == F::zero() => F::zero(),
                Parts::Tangent => beta * x.v,
            };
            *x = Dual::new(v, d);
        }
    }
}

/// `out[i] ← (β·out[i].v, d[i])` (`0` for the primal when β = 0, without
/// reading it) over two slices of one length: a tangent-only product's
/// output. Compiled for the active family's vector width, cut as
/// [`in_parts`].
pub(crate) fn set_tangents<T: Float>(out: &mut [Dual<T>], d: &[T], beta: T) {
    assert_eq!(out.len(), d.len(), "set_tangents: lengths");
    in_parts(out, &mut [], 1, |s, out, _: &mut [()]| {
        set_tangents_wide(out, &d[s..s + out.len()], beta);
        false
    });
}

/// [`set_tangents`] on one thread.
fn set_tangents_wide<T: Float>(out: &mut [Dual<T>], d: &[T], beta: T) {
    super::wide::wide!(tangents_scaled<T: Float>(out: &mut [Dual<T>], d: &[T], beta: T) -> ())
}

/// The loop of [`set_tangents`], one per primal rule (each branch-free).
#[inline(always)]
fn tangents_scaled<T: Float>(out: &mut [Dual<T>], d: &[T], beta: T) {
    let zero = T::zero();
    if beta == zero {
        for (o, &d) in out.iter_mut().zip(d) {
            *o = Dual { v: zero, d };
        }
    } else {
        for (o, &d) in out.iter_mut().zip(d) {
            *o = Dual { v: beta * o.v, d };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dual matrix from a seed; zero tangents when `zero_d`.
    fn dual_mat(rows: usize, cols: usize, seed: f64, zero_d: bool) -> Vec<Dual<f64>> {
        (0..rows * cols)
            .map(|i| {
                let v = (i as f64 * 0.37 + seed).sin();
                let d = if zero_d {
                    0.0
                } else {
                    (i as f64 * 0.71 + seed).cos()
                };
                Dual::new(v, d)
            })
            .collect()
    }

    /// `x` (`rows × cols`, row-major) stored row-major, or as the transpose
    /// of a `cols × rows` buffer if `t` (read back by [`view`]).
    fn stored(x: &[Dual<f64>], rows: usize, cols: usize, t: bool) -> Vec<Dual<f64>> {
        if t {
            let at = |i: usize| x[(i % rows) * cols + i / rows];
            (0..rows * cols).map(at).collect()
        } else {
            x.to_vec()
        }
    }

    /// The `rows × cols` matrix of a [`stored`] buffer.
    fn view(buf: &[Dual<f64>], rows: usize, cols: usize, t: bool) -> MatRef<'_, Dual<f64>> {
        if t {
            MatRef::row_major(buf, cols, rows).t()
        } else {
            MatRef::row_major(buf, rows, cols)
        }
    }

    /// The plane dual product (contiguous parts, one product with inner
    /// dimension 2k) against the three-product rule, for every combination of
    /// transposed operands, column-major output, structurally zero tangents
    /// and β ∈ {0, 0.5}. With β = 0, C starts as NaN and must be overwritten,
    /// never read.
    #[test]
    fn split_dual_product_matches_the_product_rule() {
        // A tiny shape, and one whose inner dimension 2k spans two of
        // the packed kernels' panels (256) and whose sides are not multiples
        // of their tiles.
        // Then B (k × n) and C (m × n) above `COPY_SPLIT`, so their splits,
        // the load of C and the interleave are cut over both cores.
        for (m, k, n) in [(5, 7, 3), (33, 150, 20), (9, 300, 120), (190, 9, 180)] {
            product_rule_cases(m, k, n);
        }
    }

    fn product_rule_cases(m: usize, k: usize, n: usize) {
        for case in 0..64 {
            let [ta, tb, za, zb, half, tc] = std::array::from_fn(|i| case & (1 << i) != 0);
            let beta = if half { 0.5 } else { 0.0 };
            let a = dual_mat(m, k, 0.1, za);
            let b = dual_mat(k, n, 0.2, zb);
            // A stored row-major or as the transpose of a k × m buffer; same for B.
            let (sa, sb) = (stored(&a, m, k, ta), stored(&b, k, n, tb));
            let (av, bv) = (view(&sa, m, k, ta), view(&sb, k, n, tb));
            let c0 = if beta == 0.0 {
                Dual::new(f64::NAN, f64::NAN)
            } else {
                Dual::new(1.0, -2.0)
            };
            let mut got = vec![c0; m * n];
            let mut want = vec![Dual::new(1.0, -2.0); m * n];
            let (rsc, csc) = if tc { (1, m) } else { (n, 1) };
            planes(
                Product::new(2.0, av, bv, beta, MatMut::new(&mut got, m, n, rsc, csc)),
                Parts::Both,
            );
            three(Product::new(
                2.0,
                MatRef::row_major(&a, m, k),
                MatRef::row_major(&b, k, n),
                beta,
                MatMut::row_major(&mut want, m, n),
            ));
            for i in 0..m {
                for j in 0..n {
                    let (g, w) = (got[i * rsc + j * csc], want[i * n + j]);
                    let case = (ta, tb, za, zb, beta, tc);
                    assert!(
                        (g.v - w.v).abs() < 1e-10,
                        "{case:?}: value {} vs {}",
                        g.v,
                        w.v
                    );
                    assert!(
                        (g.d - w.d).abs() < 1e-10,
                        "{case:?}: tangent {} vs {}",
                        g.d,
                        w.d
                    );
                }
            }
        }
    }

    /// The tangent-only product ([`super::super::tangent_gemm`], large shapes) writes the
    /// full product's `C.d` bit for bit and `C.v = β·C.v`, for transposed
    /// operands, zero tangents on either side and β ∈ {0, 1} (β = 0: C starts
    /// as NaN and must be overwritten).
    #[test]
    fn tangent_only_product_is_the_full_products_tangent() {
        // As above: inner dimension 2k within one kc-block, and across two.
        // And large enough to cut the copies (`COPY_SPLIT`), as above.
        for (m, k, n) in [(40, 50, 70), (33, 150, 20), (9, 300, 120), (190, 9, 180)] {
            tangent_cases(m, k, n);
        }
    }

    fn tangent_cases(m: usize, k: usize, n: usize) {
        for case in 0..32 {
            let [ta, tb, za, zb, acc] = std::array::from_fn(|i| case & (1 << i) != 0);
            let beta = if acc { 1.0 } else { 0.0 };
            let a = dual_mat(m, k, 0.3, za);
            let b = dual_mat(k, n, 0.4, zb);
            let (sa, sb) = (stored(&a, m, k, ta), stored(&b, k, n, tb));
            let (av, bv) = (view(&sa, m, k, ta), view(&sb, k, n, tb));
            let c0 = if acc {
                dual_mat(m, n, 0.5, false)
            } else {
                vec![Dual::new(f64::NAN, f64::NAN); m * n]
            };
            let (mut full, mut only) = (c0.clone(), c0.clone());
            super::super::gemm(1.0, av, bv, beta, &mut full);
            super::super::tangent_gemm(1.0, av, bv, beta, &mut only);
            for (i, ((f, o), z)) in full.iter().zip(&only).zip(&c0).enumerate() {
                let case = (ta, tb, za, zb, acc);
                assert_eq!(f.d.to_bits(), o.d.to_bits(), "{case:?}: tangent {i}");
                let v = if acc { z.v } else { 0.0 };
                assert_eq!(o.v.to_bits(), v.to_bits(), "{case:?}: primal {i}");
            }
        }
    }

    /// The wide copies between duals and planes give the plain loops' bits in
    /// every family, at lengths around the vector widths (tails), with
    /// signed zeros, NaN and ∞ among the values; `set_tangents` with β = 0
    /// (and −0) writes +0 without reading the primal (NaN there), and with
    /// β ≠ 0 scales it.
    #[test]
    fn wide_plane_copies_give_the_plain_loops_bits() {
        use crate::kernels::wide::families;
        use crate::kernels::with_family;
        let special = [0.0, -0.0, f64::NAN, f64::INFINITY, -1.5];
        let value = |i: usize, s: f64| {
            let x = (i as f64 * 0.37 + s).sin();
            if i % 7 == 3 {
                special[i % 5]
            } else {
                x
            }
        };
        for family in families() {
            // The last two lengths are cut in parts for both cores
            // (`in_parts`), the last one unevenly.
            let cut = [COPY_SPLIT, 3 * COPY_SPLIT + 37];
            for n in [0, 1, 3, 7, 8, 15, 16, 17, 31, 33, 64, 100, 257]
                .into_iter()
                .chain(cut)
            {
                let v: Vec<f64> = (0..n).map(|i| value(i, 0.1)).collect();
                let d: Vec<f64> = (0..n).map(|i| value(i, 0.7)).collect();
                let mut z = vec![Dual::new(f64::NAN, f64::NAN); n];
                with_family(family, || zip_duals(&v, &d, &mut z));
                for i in 0..n {
                    let case = format!("{family:?} n {n}: zip {i}");
                    assert_eq!(z[i].v.to_bits(), v[i].to_bits(), "{case}");
                    assert_eq!(z[i].d.to_bits(), d[i].to_bits(), "{case}");
                }
                let mut t = vec![f64::NAN; n];
                with_family(family, || tangents_into(&z, &mut t));
                let (mut v2, mut d2) = (vec![f64::NAN; n], vec![f64::NAN; n]);
                let nonzero = with_family(family, || unzip_all(&z, &mut v2, &mut d2));
                let want_nonzero = d.iter().any(|&x| x != 0.0);
                assert_eq!(nonzero, want_nonzero, "{family:?} n {n}: nonzero");
                for i in 0..n {
                    let case = format!("{family:?} n {n}: split {i}");
                    assert_eq!(t[i].to_bits(), d[i].to_bits(), "{case}");
                    assert_eq!(v2[i].to_bits(), v[i].to_bits(), "{case}");
                    assert_eq!(d2[i].to_bits(), d[i].to_bits(), "{case}");
                }
                // The nonzero test: ±0 tangents with at most one negative
                // one, at each end and in the middle.
                for at in [None, Some(0), Some(n / 2), Some(n.saturating_sub(1))] {
                    let mut zd: Vec<f64> = (0..n).map(|i| [0.0, -0.0][i % 2]).collect();
                    if let (Some(i), true) = (at, n > 0) {
                        zd[i] = -2.0;
                    }
                    let zz: Vec<Dual<f64>> = zd.iter().map(|&d| Dual::new(1.0, d)).collect();
                    let got = with_family(family, || unzip_all(&zz, &mut v2, &mut d2));
                    assert_eq!(
                        got,
                        at.is_some() && n > 0,
                        "{family:?} n {n}: nonzero at {at:?}"
                    );
                }
                // Planes side by side, interleaved by rows: the bits of
                // `zip_duals` on each row's two halves (rows of 1 and of
                // 16 duals; the last lengths cut in parts by rows).
                for width in [1, 16].into_iter().filter(|w| n % w == 0 && n > 0) {
                    let vd: Vec<f64> = (0..n / width)
                        .flat_map(|i| {
                            let row = i * width..(i + 1) * width;
                            v[row.clone()]
                                .iter()
                                .chain(&d[row])
                                .copied()
                                .collect::<Vec<_>>()
                        })
                        .collect();
                    let mut zr = vec![Dual::new(f64::NAN, f64::NAN); n];
                    with_family(family, || zip_rows(&vd, width, &mut zr));
                    for i in 0..n {
                        let case = format!("{family:?} n {n} rows of {width}: zip_rows {i}");
                        assert_eq!(zr[i].v.to_bits(), z[i].v.to_bits(), "{case}");
                        assert_eq!(zr[i].d.to_bits(), z[i].d.to_bits(), "{case}");
                    }
                }
                for beta in [0.0, -0.0, 0.5, 1.0] {
                    let mut out = if beta == 0.0 {
                        vec![Dual::new(f64::NAN, 9.0); n]
                    } else {
                        z.clone()
                    };
                    with_family(family, || set_tangents(&mut out, &d, beta));
                    for i in 0..n {
                        let want = if beta == 0.0 { 0.0 } else { beta * z[i].v };
                        let case = format!("{family:?} n {n} β {beta}: set_tangents {i}");
                        assert_eq!(out[i].v.to_bits(), want.to_bits(), "{case}");
                        assert_eq!(out[i].d.to_bits(), d[i].to_bits(), "{case}");
                    }
                }
            }
        }
    }
}
