//! Reductions.
//!
//! | op | forward | VJP |
//! |---|---|---|
//! | `sum_axes(A)` | out = Σ_{A} x | ḡx = g broadcast back over A |
//! | `mean_axes(A)` | out = Σ_{A} x / n | ḡx = g / n broadcast back over A |
//! | `max_axis(a)` | out = max_a x (first maximum on ties; argmax saved) | ḡx at the argmax = g, 0 elsewhere |
//!
//! Sums run in row-major order, so results are the same on every run. A
//! whole-tensor sum or mean, or one over the leading axes (and its adjoint),
//! takes a straight loop over the contiguous data, with the general loop's
//! additions in the general loop's order.

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

/// Whether the reduced axes are the leading ones (0..p for some p ≥ 1): then
/// the output is the contiguous trailing block, element i going to i mod c.
fn leading(axes: u8) -> bool {
    axes != 0 && axes & axes.wrapping_add(1) == 0
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
        let c = keep.numel();
        if c > 0 && (c == 1 || leading(mask)) {
            // A whole-tensor or leading-axes sum: output j sums elements j,
            // j + c, j + 2c, … in that order, as the general loop below does,
            // in one pass with no index arithmetic.
            match c {
                1 => fold_rows::<T, 1>(xs, o),
                2 => fold_rows::<T, 2>(xs, o),
                3 => fold_rows::<T, 3>(xs, o),
                4 => fold_rows::<T, 4>(xs, o),
                _ => {
                    for row in xs.chunks_exact(c) {
                        o.iter_mut().zip(row).for_each(|(a, &x)| *a += x);
                    }
                }
            }
        } else {
            for_each_broadcast(s, s, keep, |i, _, io| o[io] += xs[i]);
        }
        if mean {
            o.iter_mut().for_each(|v| *v *= scale);
        }
    })
}

/// `o[j] = Σ_i xs[i·C + j]`, summed from zero in increasing i (`o` holds C
/// elements, `xs` whole rows of C).
#[inline(always)]
fn fold_rows<T: Real, const C: usize>(xs: &[T], o: &mut [T]) {
    let mut acc = [T::zero(); C];
    for row in xs.chunks_exact(C) {
        for j in 0..C {
            acc[j] += row[j];
        }
    }
    o[..C].copy_from_slice(&acc);
}

/// `gx[i·C + j] (+)= g[j]·scale`: written over when `fresh`, else added.
#[inline(always)]
fn spread_rows<T: Real, const C: usize>(gx: &mut [T], g: &[T], scale: T, fresh: bool) {
    let gs: [T; C] = std::array::from_fn(|j| g[j] * scale);
    if fresh {
        for row in gx.chunks_exact_mut(C) {
            row.copy_from_slice(&gs);
        }
    } else {
        for row in gx.chunks_exact_mut(C) {
            for j in 0..C {
                row[j] += gs[j];
            }
        }
    }
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
    let c = keep.numel();
    if c == 1 || (c > 0 && leading(axes)) {
        // A whole-tensor or leading-axes sum: element i's adjoint gains
        // g[i mod c]·scale; a fresh adjoint is written, not zero-filled and
        // then added to.
        let (gx, fresh) = b.g_in_overwrite(0);
        match c {
            1 => spread_rows::<T, 1>(gx, g, scale, fresh),
            2 => spread_rows::<T, 2>(gx, g, scale, fresh),
            3 => spread_rows::<T, 3>(gx, g, scale, fresh),
            4 => spread_rows::<T, 4>(gx, g, scale, fresh),
            _ => {
                for row in gx.chunks_exact_mut(c) {
                    let each = row.iter_mut().zip(g);
                    if fresh {
                        each.for_each(|(a, &gj)| *a = gj * scale);
                    } else {
                        each.for_each(|(a, &gj)| *a += gj * scale);
                    }
                }
            }
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

    /// Means over the leading axis (the straight loop) against the general
    /// loop's order (column j folded down its rows) bit for bit, and their
    /// adjoints, fresh and accumulated: ∂/∂x [w·mean₀ x + ½Σx²] = w_j/n + x.
    #[test]
    fn leading_axis_means_fold_down_the_rows_and_their_adjoints_accumulate() {
        let (n, c) = (250, 4);
        let xs = data(n * c);
        let t = Tape::<f64>::new();
        let x = t.var(&Tensor::new([n, c], xs.clone()));
        let m = x.mean_axes(&[0], false);
        let got = t.value(m);
        for j in 0..c {
            let fold = (0..n).fold(0.0, |a, i| a + xs[i * c + j]);
            assert_eq!(got.data()[j].to_bits(), (fold * (1.0 / n as f64)).to_bits());
        }
        let w = [1.0, -1.0, 0.5, 3.0];
        let wv = t.constant(&Tensor::new([c], w.to_vec()));
        let g = t.gradients((m * wv).sum(), &[x]);
        for (i, gi) in g[0].data().iter().enumerate() {
            assert_eq!(*gi, w[i % c] * (1.0 / n as f64));
        }
        let loss = (m * wv).sum() + x.square().sum() * 0.5;
        let g = t.gradients(loss, &[x]);
        for (i, (gi, xi)) in g[0].data().iter().zip(&xs).enumerate() {
            let want = w[i % c] / n as f64 + xi;
            assert!(
                (gi - want).abs() <= 1e-12 * want.abs().max(1.0),
                "{gi} vs {want}"
            );
        }
    }
}
