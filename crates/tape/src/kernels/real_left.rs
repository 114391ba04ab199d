//! Products whose left operand is real data on a dual tape: `C ← α·A·B + β·C`
//! with `A` of `F` (the real copy of a [`crate::Tape::constant_base`] leaf)
//! and `B`, `C` of `Dual<F>`, for `F` = `f32`, `f64`.
//!
//! A constant has a zero tangent, so the dual product is
//! `C.v = α A B.v + β C.v`, `C.d = α A B.d + β C.d`. With `B` and `C`
//! row-major, a dual `k × n` matrix is a real `k × 2n` one with the parts in
//! alternate columns, so both are **one real product**
//! `[C.v | C.d] ← α A [B.v | B.d] + β [C.v | C.d]`: no dual kernel, no copy
//! or scan of `A`'s zero tangents.
//!
//! # Bits
//! The result is bit for bit the dual product of `A` converted with zero
//! tangents (`tests/suite/real_left.rs` checks it per family, small and
//! large, forward and adjoint), because the dual kernels add `a.d·b.v = 0`
//! exactly: a small product runs the same family's real kernel with the same
//! order over `l` (the dual tangent `s + (0·b.v + a.v·b.d)` or
//! `fma(a.v, b.d, fma(0, b.v, s))` is the real `s + a.v·b.d` or
//! `fma(a.v, b.d, s)`), and a large one is the very packed product the
//! dual path makes once it has found `A`'s tangent zero
//! ([`super::dual::split`]). The only exceptions are the sign of a zero
//! (`+0 + −0`) and non-finite `B` (`0·∞`), where the dual path gives `+0`
//! or NaN in the tangent and this one `−0` or the finite product.

use std::any::{Any, TypeId};

use super::dual::{set_tangents, tangents_into};
use super::sink::take_sink;
use super::{is_small, MatMut, MatRef, Prim, Product, SMALL_COLS};
use crate::real::{Dual, Real};

/// Whether `T` takes a real left operand without converting it: `Dual<f32>`
/// and `Dual<f64>` (a tape of another type converts its constants).
pub(crate) fn takes_real_left<T: Real>() -> bool {
    let t = TypeId::of::<T>();
    t == TypeId::of::<Dual<f32>>() || t == TypeId::of::<Dual<f64>>()
}

/// Whether an `m × k` real left operand times a `k × n` dual one runs as real
/// products ([`real_left_gemm`]): always, except for an empty sum and for a
/// small product whose `2n` real columns would not fit the small kernels'
/// accumulator row ([`SMALL_COLS`]); those convert the constant instead.
pub(crate) fn real_left_ok(m: usize, k: usize, n: usize) -> bool {
    k > 0 && !(is_small(m, k, n) && 2 * n > SMALL_COLS)
}

/// `C ← α·A·B + β·C` for a real `A` (`T::Base`) and `B`, `C` of `T`, where
/// `c` is dense row-major; the same bits as the general product of `A`
/// converted with zero tangents (see the module docs). On a real `T`
/// (`f32`, `f64`: `T::Base` is `T`) it is [`super::gemm`]. `primal = false`:
/// only `C.d` is wanted and `C.v ← β·C.v`, as [`super::dual::tangent_gemm`].
///
/// # Panics
/// If the shapes do not agree (the message has them).
#[track_caller]
pub(crate) fn real_left_gemm<T: Real>(
    primal: bool,
    alpha: T::Base,
    a: MatRef<'_, T::Base>,
    b: MatRef<'_, T>,
    beta: T::Base,
    c: &mut [T],
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert!(
        k == b.rows && c.len() == m * n,
        "gemm: real lhs [{m}, {k}], rhs [{}, {n}]: inner dimensions or output length {} (expected {m} × {n})",
        b.rows,
        c.len()
    );
    if m == 0 || n == 0 {
        return;
    }
    if TypeId::of::<T>() == TypeId::of::<T::Base>() {
        // A real tape (a shared constant's data): the product itself.
        let a = MatRef::new(same_type::<_, T>(a.data), a.rows, a.cols, a.rs, a.cs);
        super::gemm(alpha, a, b, beta, c);
        return;
    }
    let taken = real_left_ok(m, k, n)
        && b.cs == 1
        && (as_dual::<T, f32>(primal, alpha, a, b, beta, c)
            || as_dual::<T, f64>(primal, alpha, a, b, beta, c));
    if !taken {
        // Not reached from the tape (it converts such constants when it
        // records them): the general product of A with zero tangents.
        let at: Vec<T> = (0..m * k)
            .map(|x| T::from_base(a.data[(x / k) * a.rs + (x % k) * a.cs]))
            .collect();
        let at = MatRef::row_major(&at, m, k);
        if primal {
            super::gemm(alpha, at, b, beta, c);
        } else {
            super::tangent_gemm(alpha, at, b, beta, c);
        }
    }
}

/// [`real_left_gemm`] if `T` is `Dual<F>` (then `true`), else nothing (`false`).
fn as_dual<T: Real, F: Prim>(
    primal: bool,
    alpha: T::Base,
    a: MatRef<'_, T::Base>,
    b: MatRef<'_, T>,
    beta: T::Base,
    c: &mut [T],
) -> bool {
    let Some((alpha, beta)) = dual_scalars::<T, F>(alpha, beta) else {
        return false;
    };
    let a = MatRef::new(same_type::<_, F>(a.data), a.rows, a.cols, a.rs, a.cs);
    let b = MatRef::new(same_type::<_, Dual<F>>(b.data), b.rows, b.cols, b.rs, b.cs);
    let c = same_type_mut::<_, Dual<F>>(c);
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if is_small(m, k, n) || primal {
        // `A (m × k) · [B.v | B.d] (k × 2n, parts interleaved)` into the
        // interleaved `C`, both with unit column stride; a small one by the
        // small family, as the dual product would run it (its own
        // small/large choice counts n dual columns).
        let mut c = MatMut::row_major(c, m, n);
        let p = Product::new(alpha, a, b.real_columns(), beta, c.real_columns());
        if is_small(m, k, n) {
            super::small(p);
        } else {
            F::large_gemm(p);
        }
    } else {
        tangent(alpha, a, b, beta, c);
    }
    true
}

/// The tangent alone, as `tangent_gemm`: `C.v ← β·C.v`, `C.d ← α A·B.d +
/// β C.d`, for a dense row-major `C` (`m × n`). The product writes a
/// contiguous plane (this thread's dual scratch; loaded from `C.d` first if
/// β ≠ 0), which one wide pass ([`set_tangents`]) interleaves back with the
/// primal rule: the same bits as writing `C.d` in place (an element's value
/// does not depend on where the output lies), with unit-stride stores in the
/// product and one pass over `C` instead of two strided ones.
fn tangent<F: Prim>(
    alpha: F,
    a: MatRef<'_, F>,
    b: MatRef<'_, Dual<F>>,
    beta: F,
    c: &mut [Dual<F>],
) {
    let (m, n) = (a.rows, b.cols);
    let b_d = b.parts().1;
    F::with_scratch(|s| {
        if s.len() < m * n {
            s.resize(m * n, F::zero());
        }
        let plane = &mut s[..m * n];
        if beta != F::zero() {
            tangents_into(c, plane);
        }
        F::large_gemm(Product::new(
            alpha,
            a,
            b_d,
            beta,
            MatMut::row_major(plane, m, n),
        ));
        set_tangents(c, plane, beta);
    });
}

/// The tangent-only product `α·A·B.d` of [`real_left_gemm`] (`primal =
/// false`, β = 0) written into the tangent sink of node `node`
/// ([`super::sink`]) instead of into a dual output: `true` if a sink of
/// `m × n` elements of `T::Base` was registered for it (then it holds the
/// product, row-major, with the bits `C.d` would get), else `false` and
/// nothing is done. Only for the shapes where [`real_left_gemm`] forms the
/// tangent as one real product into a plane (large, unit column stride).
///
/// # Panics
/// If the inner dimensions differ.
#[track_caller]
pub(crate) fn real_left_tangent_sink<T: Real>(
    node: usize,
    alpha: T::Base,
    a: MatRef<'_, T::Base>,
    b: MatRef<'_, T>,
) -> bool {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert!(
        k == b.rows,
        "gemm: real lhs [{m}, {k}], rhs [{}, {n}]: inner dimensions",
        b.rows
    );
    if m == 0 || n == 0 || !real_left_ok(m, k, n) || is_small(m, k, n) || b.cs != 1 {
        return false;
    }
    sink_as::<T, f32>(node, alpha, a, b) || sink_as::<T, f64>(node, alpha, a, b)
}

/// [`real_left_tangent_sink`] if `T` is `Dual<F>` and a sink is there.
fn sink_as<T: Real, F: Prim>(
    node: usize,
    alpha: T::Base,
    a: MatRef<'_, T::Base>,
    b: MatRef<'_, T>,
) -> bool {
    let Some((alpha, _)) = dual_scalars::<T, F>(alpha, alpha) else {
        return false;
    };
    let a = MatRef::new(same_type::<_, F>(a.data), a.rows, a.cols, a.rs, a.cs);
    let b = MatRef::new(same_type::<_, Dual<F>>(b.data), b.rows, b.cols, b.rs, b.cs);
    let (m, n) = (a.rows, b.cols);
    // The product of `tangent` with β = 0, into the sink instead of a plane.
    let b_d = b.parts().1;
    take_sink::<F>(node, m * n, |out| {
        F::large_gemm(Product::new(
            alpha,
            a,
            b_d,
            F::zero(),
            MatMut::row_major(out, m, n),
        ));
    })
}

/// `(α, β)` as `F`s if `T` is `Dual<F>` (whose `Base` is `F`), else `None`.
fn dual_scalars<T: Real, F: Prim>(alpha: T::Base, beta: T::Base) -> Option<(F, F)> {
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
pub(super) fn same_type<T: 'static, U: 'static>(x: &[T]) -> &[U] {
    assert_eq!(TypeId::of::<T>(), TypeId::of::<U>(), "same_type");
    // SAFETY: the assert above: `T` and `U` are the same type, so the slice
    // is reborrowed unchanged (same pointer, length and lifetime).
    unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<U>(), x.len()) }
}

/// The `&mut` form of [`same_type`].
pub(super) fn same_type_mut<T: 'static, U: 'static>(x: &mut [T]) -> &mut [U] {
    assert_eq!(TypeId::of::<T>(), TypeId::of::<U>(), "same_type_mut");
    // SAFETY: as in `same_type`; the result reborrows `x` exclusively.
    unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr().cast::<U>(), x.len()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::wide::families;
    use crate::kernels::with_family;

    /// The tangent-only real-left product (a large shape: through the
    /// contiguous plane) against the general tangent-only product of `A`
    /// with zero tangents, bit for bit in every family, for β ∈ {0, −0, ½, 1}
    /// (β = 0: `C` starts as NaN and must be overwritten, its primal with
    /// +0), with `A` row-major and transposed.
    #[test]
    fn tangent_only_real_left_product_is_the_dual_products_tangent() {
        let (m, k, n) = (37, 45, 70);
        assert!(!is_small(m, k, n));
        let val = |i: usize, s: f64| (i as f64 * 0.37 + s).sin();
        let a: Vec<f64> = (0..m * k).map(|i| val(i, 0.1)).collect();
        let b: Vec<Dual<f64>> = (0..k * n)
            .map(|i| Dual::new(val(i, 0.2), val(i, 0.3)))
            .collect();
        let c0: Vec<Dual<f64>> = (0..m * n)
            .map(|i| Dual::new(val(i, 0.4), val(i, 0.5)))
            .collect();
        let at: Vec<f64> = (0..m * k).map(|x| a[(x % m) * k + x / m]).collect();
        for family in families() {
            for beta in [0.0, -0.0, 0.5, 1.0] {
                for transposed in [false, true] {
                    let av = if transposed {
                        MatRef::row_major(&at, k, m).t()
                    } else {
                        MatRef::row_major(&a, m, k)
                    };
                    let start = if beta == 0.0 {
                        vec![Dual::new(f64::NAN, f64::NAN); m * n]
                    } else {
                        c0.clone()
                    };
                    let (mut got, mut want) = (start.clone(), start);
                    let bv = MatRef::row_major(&b, k, n);
                    with_family(family, || {
                        real_left_gemm(false, 1.0, av, bv, beta, &mut got);
                        let ad: Vec<Dual<f64>> = a.iter().map(|&x| Dual::constant(x)).collect();
                        let ad = MatRef::row_major(&ad, m, k);
                        super::super::tangent_gemm(1.0, ad, bv, beta, &mut want);
                    });
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        let case = format!("{family:?} β {beta} Aᵀ {transposed}: element {i}");
                        assert_eq!(g.d.to_bits(), w.d.to_bits(), "{case}: tangent");
                        assert_eq!(g.v.to_bits(), w.v.to_bits(), "{case}: primal");
                    }
                }
            }
        }
    }
}
