//! Reductions.
//!
//! | op | forward | VJP |
//! |---|---|---|
//! | `sum_axes(A)` | out = Σ_{A} x | ḡx = g broadcast back over A |
//! | `mean_axes(A)` | out = Σ_{A} x / n | ḡx = g / n broadcast back over A |
//! | `max_axis(a)` | out = max_a x (first maximum on ties; argmax saved) | ḡx at the argmax = g, 0 elsewhere |
//!
//! Sums run in row-major order, so results are the same on every run. A
//! whole-tensor sum or mean (and its adjoint) takes a straight loop over the
//! contiguous data, with the general loop's additions in the general loop's order.

use crate::ops::elementwise::for_each_broadcast;
use crate::ops::Op;
use crate::real::Real;
use crate::shape::{check_shapes, Shape};
use crate::tape::{Bwd, Var};

/// The shape with the masked axes set to 1 (keepdims), or removed.
fn reduced_shape(s: Shape, axes: u8, keepdims: bool) -> Shape {
    let mut d = [0usize; 4];
    let mut r = 0;
    for (i, &n) in s.dims().iter().enumerate() {
        if axes & (1 << i) != 0 {
            if keepdims {
                d[r] = 1;
                r += 1;
            }
        } else {
            d[r] = n;
            r += 1;
        }
    }
    Shape::new(&d[..r])
}

#[track_caller]
fn axes_mask(op: &str, s: Shape, axes: &[usize]) -> u8 {
    let mut m = 0u8;
    for &a in axes {
        check_shapes!(a < s.rank(), op, ["x" => s], "axis {a} out of range for rank {}", s.rank());
        m |= 1 << a;
    }
    m
}

#[track_caller]
fn sum_impl<'t, T: Real>(x: Var<'t, T>, axes: &[usize], keepdims: bool, mean: bool) -> Var<'t, T> {
    let s = x.shape();
    let name = if mean { "mean" } else { "sum" };
    let mask = axes_mask(name, s, axes);
    let keep = reduced_shape(s, mask, true);
    let out = reduced_shape(s, mask, keepdims);
    let scale = T::from_f64(keep.numel() as f64 / s.numel().max(1) as f64);
    let op = if mean {
        Op::Mean { axes: mask }
    } else {
        Op::Sum { axes: mask }
    };
    x.tape.record(op, &[x], out, |f| {
        let xs = f.x(0);
        let o = &mut *f.out;
        if keep.numel() == 1 {
            // A whole-tensor sum: the same additions in the same order as
            // the general loop below, in one pass with no index arithmetic.
            o[0] = xs.iter().fold(T::zero(), |acc, &x| acc + x);
        } else {
            for_each_broadcast(s, s, keep, |i, _, io| o[io] += xs[i]);
        }
        if mean {
            o.iter_mut().for_each(|v| *v *= scale);
        }
    })
}

pub(crate) fn sum_vjp<T: Real>(b: &mut Bwd<'_, T>, axes: u8, mean: bool) {
    if !b.wants(0) {
        return;
    }
    let s = b.x_shape(0);
    let keep = reduced_shape(s, axes, true);
    let scale = if mean {
        T::from_f64(keep.numel() as f64 / s.numel().max(1) as f64)
    } else {
        T::one()
    };
    let g = b.g;
    if keep.numel() == 1 {
        // A whole-tensor sum: every element's adjoint gains the same g·scale;
        // a fresh adjoint is written, not zero-filled and then added to.
        let v = g[0] * scale;
        let (gx, fresh) = b.g_in_overwrite(0);
        if fresh {
            gx.fill(v);
        } else {
            gx.iter_mut().for_each(|a| *a += v);
        }
        return;
    }
    let gx = b.g_in(0);
    for_each_broadcast(s, s, keep, |i, _, io| gx[i] += g[io] * scale);
}

pub(crate) fn max_vjp<T: Real>(b: &mut Bwd<'_, T>, _axis: usize) {
    if !b.wants(0) {
        return;
    }
    let (g, idx) = (b.g, b.idx);
    let gx = b.g_in(0);
    for (j, &i) in idx.iter().enumerate() {
        gx[i] += g[j];
    }
}

impl<'t, T: Real> Var<'t, T> {
    /// Sum of all elements, a scalar.
    pub fn sum(self) -> Var<'t, T> {
        let r = self.shape().rank();
        sum_impl(self, &[0, 1, 2, 3][..r], false, false)
    }
    /// Mean of all elements, a scalar.
    pub fn mean(self) -> Var<'t, T> {
        let r = self.shape().rank();
        sum_impl(self, &[0, 1, 2, 3][..r], false, true)
    }
    /// Sum over the given axes; `keepdims` keeps them with size 1.
    ///
    /// # Panics
    /// If an axis is out of range.
    #[track_caller]
    pub fn sum_axes(self, axes: &[usize], keepdims: bool) -> Var<'t, T> {
        sum_impl(self, axes, keepdims, false)
    }
    /// Mean over the given axes; `keepdims` keeps them with size 1.
    ///
    /// # Panics
    /// If an axis is out of range.
    #[track_caller]
    pub fn mean_axes(self, axes: &[usize], keepdims: bool) -> Var<'t, T> {
        sum_impl(self, axes, keepdims, true)
    }
    /// Maximum along one axis (the first maximum wins ties; the adjoint goes to it).
    ///
    /// # Panics
    /// If the axis is out of range or has length 0.
    #[track_caller]
    pub fn max_axis(self, axis: usize, keepdims: bool) -> Var<'t, T> {
        let s = self.shape();
        let mask = axes_mask("max", s, &[axis]);
        check_shapes!(s.dim(axis) > 0, "max", ["x" => s], "axis {axis} is empty");
        let out = reduced_shape(s, mask, keepdims);
        let keep = reduced_shape(s, mask, true);
        self.tape
            .record(Op::Max { axis: axis as u8 }, &[self], out, |f| {
                let xs = f.x(0);
                let n = keep.numel();
                let start = f.idx.len();
                f.idx.resize(start + n, usize::MAX);
                let arg = &mut f.idx[start..];
                for_each_broadcast(s, s, keep, |i, _, io| {
                    if arg[io] == usize::MAX || xs[i] > xs[arg[io]] {
                        arg[io] = i;
                    }
                });
                for (o, &i) in f.out.iter_mut().zip(arg.iter()) {
                    *o = xs[i];
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use crate::{Tape, Tensor};

    /// Entries of mixed sign and magnitude, so that the order of the
    /// additions shows in the bits.
    fn data(n: usize) -> Vec<f64> {
        (0..n)
            .map(|i| ((i * 7919 % 1013) as f64 - 506.0) * 1.000_1_f64.powi(i as i32) / 3.0)
            .collect()
    }

    /// Whole-tensor `sum` and `mean` (the straight loop): the row-major fold's
    /// bits; their adjoints 1 and 1/n when fresh, and added to (not written
    /// over) when the input has another use: ∂/∂x [Σx + mean x + ½Σx²] =
    /// 1 + 1/n + x.
    #[test]
    fn whole_tensor_sums_fold_in_order_and_their_adjoints_accumulate() {
        let n = 1000;
        let xs = data(n);
        let t = Tape::<f64>::new();
        let x = t.var(&Tensor::new([n / 4, 4], xs.clone()));
        let (s, m) = (x.sum(), x.mean());
        let fold = xs.iter().fold(0.0, |a, &b| a + b);
        assert_eq!(t.value(s).item().to_bits(), fold.to_bits());
        assert_eq!(
            t.value(m).item().to_bits(),
            (fold * (1.0 / n as f64)).to_bits()
        );
        let g = t.gradients(m, &[x]);
        assert!(g[0].data().iter().all(|&v| v == 1.0 / n as f64));
        let loss = s + m + x.square().sum() * 0.5;
        let g = t.gradients(loss, &[x]);
        for (gi, xi) in g[0].data().iter().zip(&xs) {
            let want = 1.0 + 1.0 / n as f64 + xi;
            assert!(
                (gi - want).abs() <= 1e-12 * want.abs().max(1.0),
                "{gi} vs {want}"
            );
        }
    }
}
