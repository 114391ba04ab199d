//! ReLU over slices, forward and adjoint, compiled for the widest vectors
//! the active [`super::Family`] allows (`batched_affine_relu`'s passes over
//! its output and its adjoint).
//!
//! Each element is computed on its own, with the element type's `select`,
//! comparison and `+`: the bits of `relu`'s rules (`ops/elementwise.rs`) in
//! every family; only how many elements share a vector changes.
//!
//! (`wide.rs` picks the instruction set; no `unsafe` here.)

use crate::real::Real;

/// `x_i ← relu(x_i) = select(x_i > 0, x_i, 0)`, relu's forward.
pub(crate) fn relu_in_place<T: Real>(x: &mut [T]) {
    super::wide::wide!(forward<T: Real>(x: &mut [T]) -> ())
}

/// `out_i = 0 + select(y_i > 0, g_i, 0)`: relu's adjoint written into a
/// fresh buffer (the bits of a zero-fill then `+=`), its mask read from the
/// output `y = relu(z)` (`y_i > 0` exactly where `z_i > 0`).
///
/// # Panics
/// If the three lengths differ.
#[track_caller]
pub(crate) fn relu_adjoint<T: Real>(y: &[T], g: &[T], out: &mut [T]) {
    assert!(
        y.len() == g.len() && g.len() == out.len(),
        "relu_adjoint: output {}, adjoint {}, destination {} elements",
        y.len(),
        g.len(),
        out.len()
    );
    super::wide::wide!(adjoint<T: Real>(y: &[T], g: &[T], out: &mut [T]) -> ())
}

/// The loop of [`relu_in_place`].
#[inline(always)]
fn forward<T: Real>(x: &mut [T]) {
    for v in x {
        *v = T::select(*v > T::zero(), *v, T::zero());
    }
}

/// The loop of [`relu_adjoint`] (equal lengths).
#[inline(always)]
fn adjoint<T: Real>(y: &[T], g: &[T], out: &mut [T]) {
    for ((o, &yi), &gi) in out.iter_mut().zip(y).zip(g) {
        *o = T::zero() + T::select(yi > T::zero(), gi, T::zero());
    }
}

#[cfg(test)]
mod tests {
    use super::{relu_adjoint, relu_in_place};
    use crate::kernels::wide::families;
    use crate::kernels::with_family;
    use crate::real::Real;

    /// Every family gives the scalar rules' bits, signed zeros, NaN and the
    /// vector edges included (lengths around 8 and 16 lanes).
    #[test]
    fn every_family_gives_the_scalar_rules_bits() {
        let specials = [
            0.0f32,
            -0.0,
            1.5,
            -2.5,
            f32::NAN,
            f32::INFINITY,
            -f32::INFINITY,
            1e-40,
        ];
        for len in [0, 1, 7, 8, 9, 15, 16, 17, 33, 400] {
            let x: Vec<f32> = (0..len)
                .map(|i| match i % 11 {
                    j if j < specials.len() => specials[j],
                    j => (j as f32 - 9.5) * (i as f32 + 1.0),
                })
                .collect();
            let g: Vec<f32> = (0..len)
                .map(|i| {
                    if i % 3 == 0 {
                        -0.0
                    } else {
                        0.25 * i as f32 - 3.0
                    }
                })
                .collect();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let want_y: Vec<f32> = x.iter().map(|&v| f32::select(v > 0.0, v, 0.0)).collect();
            let want_g: Vec<f32> = want_y
                .iter()
                .zip(&g)
                .map(|(&y, &gi)| 0.0 + f32::select(y > 0.0, gi, 0.0))
                .collect();
            for family in families() {
                let mut y = x.clone();
                let mut out = vec![f32::NAN; len];
                with_family(family, || {
                    relu_in_place(&mut y);
                    relu_adjoint(&y, &g, &mut out);
                });
                assert_eq!(
                    bits(&y),
                    bits(&want_y),
                    "{family:?} forward, {len} elements"
                );
                assert_eq!(
                    bits(&out),
                    bits(&want_g),
                    "{family:?} adjoint, {len} elements"
                );
            }
        }
    }
}
