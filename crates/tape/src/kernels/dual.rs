//! Large dual products as real ones.
//!
//! `Dual<T>` is `#[repr(C)]`, so a slice of duals is two interleaved matrices
//! of `T`: the primal parts at offset 0 and the tangents at offset 1, both with
//! doubled strides ([`MatRef::parts`], [`MatMut::part`]). Two ways to use it:
//!
//! - [`three`], for any `T` (nested duals): three real products on the part
//!   views, `C.v ← α A.v B.v + β C.v`, `C.d ← α A.v B.d + β C.d`,
//!   `C.d ← α A.d B.v + C.d`;
//! - [`split`], for `f32`/`f64`: copies the parts into contiguous scratch so
//!   that the tangent is one product with inner dimension 2k (see its docs).

use std::any::{Any, TypeId};

use super::{MatMut, MatRef, Prim, Product};
use crate::real::{Dual, Real};

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

/// The dual product for primitive floats. The parts are copied into
/// contiguous scratch, `A' = [A.v | A.d]` (`m × 2k`) and `B' = [B.d ; B.v]`
/// (`2k × n`), so that `C.v = α A.v B.v + β C.v` is one product on views of
/// them and `C.d = α A'·B' + β C.d` is a second one with inner dimension 2k
/// (instead of two products on stride-2 data, whose packing is slow). A
/// tangent part that is zero everywhere (a constant operand, e.g. the data) is
/// left out of `A'·B'`: its products are structurally zero, as with JAX's
/// symbolic zeros.
///
/// When `B` and `C` have unit column stride there is no copy at all: a
/// row-major dual `B` is a real `k × 2n` matrix with the parts in alternate
/// columns, and so is `C`, so one real product with 2n columns computes
/// `C.v = α A.v B.v + β C.v` and the first half of `C.d = α A.v B.d + β C.d`;
/// a second, strided one adds `α A.d B.v` unless `A`'s tangent is zero. If
/// `B`'s tangent is zero instead (and `A`'s is not), the two products are
/// `C.v = α A.v B.v + β C.v` and `C.d = α A.d B.v + β C.d`.
///
/// Each copy runs in the source's memory order, and the scratch takes the
/// matching layout (row- or column-major). The result depends only on the
/// operands, never on the thread count.
pub(crate) fn split<F: Prim>(p: Product<'_, Dual<F>>) {
    F::with_scratch(|s| split_with(s, p, Want::Both));
}

/// Which parts of a dual product's output are wanted.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
enum Want {
    /// `C.v` and `C.d`.
    Both,
    /// `C.d` only; `C.v ← β·C.v` (the `α·A.v·B.v` product is skipped).
    Tangent,
}

/// `C.d ← α (A.v B.d + A.d B.v) + β C.d` and `C.v ← β C.v`: the tangent part
/// of the dual product alone, for an adjoint whose primal part nobody reads
/// (a leaf of [`crate::Tape::tangent_leaf_with`]). `c` is dense row-major,
/// as for [`super::gemm`].
///
/// The tangent is computed by the same real products, in the same order, as
/// the full dual product would compute it ([`split`]: one with inner
/// dimension k and 2n columns, or with inner dimension 2k), so `C.d` is bit
/// for bit the one [`super::gemm`] writes; only the `A.v·B.v` product is left
/// out. Products that [`super::gemm`] sends to a small-product family, and
/// element types other than `Dual<f32>`/`Dual<f64>`, run the full product
/// (the small kernels interleave both parts; the saving is in large
/// products).
///
/// # Panics
/// As [`super::gemm`].
#[track_caller]
pub(crate) fn tangent_gemm<T: Real>(
    alpha: T::Base,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    beta: T::Base,
    c: &mut [T],
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let small = super::is_small(m, k, n);
    if small || m == 0 || n == 0 || k == 0 || a.cols != b.rows || c.len() != m * n {
        // The full product (which also reports shape errors).
        return super::gemm(alpha, a, b, beta, c);
    }
    if !tangent_as::<T, f32>(alpha, a, b, beta, c) && !tangent_as::<T, f64>(alpha, a, b, beta, c) {
        super::gemm(alpha, a, b, beta, c);
    }
}

/// [`tangent_gemm`] if `T` is `Dual<F>` (then `true`), else nothing (`false`).
fn tangent_as<T: Real, F: Prim>(
    alpha: T::Base,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    beta: T::Base,
    c: &mut [T],
) -> bool {
    let Some((alpha, beta)) = dual_scalars::<T, F>(alpha, beta) else {
        return false;
    };
    let a = MatRef::new(same_type(a.data), a.rows, a.cols, a.rs, a.cs);
    let b = MatRef::new(same_type(b.data), b.rows, b.cols, b.rs, b.cs);
    let c = MatMut::row_major(same_type_mut(c), a.rows, b.cols);
    F::with_scratch(|s| split_with(s, Product::new(alpha, a, b, beta, c), Want::Tangent));
    true
}

/// `(α, β)` as `F`s if `T` is `Dual<F>` (whose `Base` is `F`), else `None`.
pub(in crate::kernels) fn dual_scalars<T: Real, F: Prim>(
    alpha: T::Base,
    beta: T::Base,
) -> Option<(F, F)> {
    let base = |x: T::Base| (&x as &dyn Any).downcast_ref::<F>().copied();
    if TypeId::of::<T>() != TypeId::of::<Dual<F>>() {
        return None;
    }
    Some((base(alpha)?, base(beta)?))
}

/// `&[T]` as `&[U]` for one and the same type.
///
/// # Panics
/// If `T` and `U` are different types.
pub(in crate::kernels) fn same_type<T: 'static, U: 'static>(x: &[T]) -> &[U] {
    assert_eq!(TypeId::of::<T>(), TypeId::of::<U>(), "same_type");
    // SAFETY: the assert above: `T` and `U` are the same type, so the slice
    // is reborrowed unchanged (same pointer, length and lifetime).
    unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<U>(), x.len()) }
}

/// The `&mut` form of [`same_type`].
pub(in crate::kernels) fn same_type_mut<T: 'static, U: 'static>(x: &mut [T]) -> &mut [U] {
    assert_eq!(TypeId::of::<T>(), TypeId::of::<U>(), "same_type_mut");
    // SAFETY: as in `same_type`; the result reborrows `x` exclusively.
    unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr().cast::<U>(), x.len()) }
}

fn split_with<F: Prim>(scratch: &mut Vec<F>, p: Product<'_, Dual<F>>, want: Want) {
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
        mut c,
    } = p;
    let (zero, one) = (F::zero(), F::one());
    let rows_outer = a.cs <= a.rs;
    // The scan runs in A's memory order and stops at the first non-zero.
    let a_d_zero = if rows_outer {
        (0..m).all(|i| (0..k).all(|l| a.data[i * a.rs + l * a.cs].d == zero))
    } else {
        (0..k).all(|l| (0..m).all(|i| a.data[i * a.rs + l * a.cs].d == zero))
    };
    if b.cs == 1 && c.cs == 1 {
        let (av, ad) = a.parts();
        // A constant right operand (e.g. a weight held fixed in a partial
        // HVP): C.v = α A.v B.v + β C.v and C.d = α A.d B.v + β C.d, two real
        // products, not A.v·[B.v | B.d] with half its columns multiplying zeros.
        // The scan runs in B's memory order and stops at the first non-zero.
        if !a_d_zero && (0..k).all(|l| (0..n).all(|j| b.data[l * b.rs + j].d == zero)) {
            let bv = b.parts().0;
            if want == Want::Both {
                F::large_gemm(Product::new(alpha, av, bv, beta, c.part(0)));
            } else {
                super::scale(&mut c.part(0), beta);
            }
            F::large_gemm(Product::new(alpha, ad, bv, beta, c.part(1)));
            return;
        }
        if want == Want::Both {
            F::large_gemm(Product::new(
                alpha,
                av,
                b.real_columns(),
                beta,
                c.real_columns(),
            ));
        } else {
            // The tangent half of the 2n columns above: C.d = α A.v B.d + β C.d.
            super::scale(&mut c.part(0), beta);
            F::large_gemm(Product::new(alpha, av, b.parts().1, beta, c.part(1)));
        }
        if !a_d_zero {
            // C.d += α A.d B.v
            F::large_gemm(Product::new(alpha, ad, b.parts().0, one, c.part(1)));
        }
        return;
    }
    // Every element of the scratch is written below, so stale contents from an
    // earlier call are fine and it is only grown, never zero-filled.
    let need = 2 * m * k + 2 * k * n;
    if scratch.len() < need {
        scratch.resize(need, zero);
    }
    let (ap, bp) = scratch[..need].split_at_mut(2 * m * k);
    // A' (m × 2k): A'(i, l) = A.v(i, l), A'(i, k + l) = A.d(i, l).
    let mut a_has_d = false;
    let (ars, acs, a_d_off);
    if rows_outer {
        (ars, acs, a_d_off) = (2 * k, 1, k);
        for i in 0..m {
            for l in 0..k {
                let x = a.data[i * a.rs + l * a.cs];
                ap[i * 2 * k + l] = x.v;
                ap[i * 2 * k + k + l] = x.d;
                a_has_d |= x.d != zero;
            }
        }
    } else {
        (ars, acs, a_d_off) = (1, m, k * m);
        for l in 0..k {
            for i in 0..m {
                let x = a.data[i * a.rs + l * a.cs];
                ap[l * m + i] = x.v;
                ap[(k + l) * m + i] = x.d;
                a_has_d |= x.d != zero;
            }
        }
    }
    // B' (2k × n): B'(l, j) = B.d(l, j), B'(k + l, j) = B.v(l, j).
    let mut b_has_d = false;
    let (brs, bcs, b_v_off);
    if b.cs <= b.rs {
        (brs, bcs, b_v_off) = (n, 1, k * n);
        for l in 0..k {
            for j in 0..n {
                let x = b.data[l * b.rs + j * b.cs];
                bp[l * n + j] = x.d;
                bp[(k + l) * n + j] = x.v;
                b_has_d |= x.d != zero;
            }
        }
    } else {
        (brs, bcs, b_v_off) = (1, 2 * k, k);
        for j in 0..n {
            for l in 0..k {
                let x = b.data[l * b.rs + j * b.cs];
                bp[j * 2 * k + l] = x.d;
                bp[j * 2 * k + k + l] = x.v;
                b_has_d |= x.d != zero;
            }
        }
    }
    let (ap, bp) = (&*ap, &*bp);
    let a_v = MatRef::new(ap, m, k, ars, acs);
    let b_v = MatRef::new(&bp[b_v_off..], k, n, brs, bcs);
    match want {
        Want::Both => F::large_gemm(Product::new(alpha, a_v, b_v, beta, c.part(0))),
        Want::Tangent => super::scale(&mut c.part(0), beta),
    }
    let mut c_d = c.part(1);
    match (a_has_d, b_has_d) {
        (true, true) => {
            let a_vd = MatRef::new(ap, m, 2 * k, ars, acs);
            let b_dv = MatRef::new(bp, 2 * k, n, brs, bcs);
            F::large_gemm(Product::new(alpha, a_vd, b_dv, beta, c_d));
        }
        (false, true) => {
            let b_d = MatRef::new(bp, k, n, brs, bcs);
            F::large_gemm(Product::new(alpha, a_v, b_d, beta, c_d));
        }
        (true, false) => {
            let a_d = MatRef::new(&ap[a_d_off..], m, k, ars, acs);
            F::large_gemm(Product::new(alpha, a_d, b_v, beta, c_d));
        }
        (false, false) => super::scale(&mut c_d, beta),
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

    /// The split dual product (contiguous parts, one product with inner
    /// dimension 2k) against the three-product rule, for every combination of
    /// transposed operands, column-major output, structurally zero tangents
    /// and β ∈ {0, 0.5}. With β = 0, C starts as NaN and must be overwritten,
    /// never read.
    #[test]
    fn split_dual_product_matches_the_product_rule() {
        let (m, k, n) = (5, 7, 3);
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
            split(Product::new(
                2.0,
                av,
                bv,
                beta,
                MatMut::new(&mut got, m, n, rsc, csc),
            ));
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
                        (g.v - w.v).abs() < 1e-12,
                        "{case:?}: value {} vs {}",
                        g.v,
                        w.v
                    );
                    assert!(
                        (g.d - w.d).abs() < 1e-12,
                        "{case:?}: tangent {} vs {}",
                        g.d,
                        w.d
                    );
                }
            }
        }
    }

    /// The tangent-only product ([`tangent_gemm`], large shapes) writes the
    /// full product's `C.d` bit for bit and `C.v = β·C.v`, for transposed
    /// operands, zero tangents on either side and β ∈ {0, 1} (β = 0: C starts
    /// as NaN and must be overwritten).
    #[test]
    fn tangent_only_product_is_the_full_products_tangent() {
        let (m, k, n) = (40, 50, 70);
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
            tangent_gemm(1.0, av, bv, beta, &mut only);
            for (i, ((f, o), z)) in full.iter().zip(&only).zip(&c0).enumerate() {
                let case = (ta, tb, za, zb, acc);
                assert_eq!(f.d.to_bits(), o.d.to_bits(), "{case:?}: tangent {i}");
                let v = if acc { z.v } else { 0.0 };
                assert_eq!(o.v.to_bits(), v.to_bits(), "{case:?}: primal {i}");
            }
        }
    }
}
