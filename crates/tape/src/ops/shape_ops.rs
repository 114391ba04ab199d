//! Ops that move data without arithmetic. All are linear, so each VJP is the
//! transposed data movement (a scatter-add).
//!
//! | op | forward | VJP |
//! |---|---|---|
//! | `reshape(s)` | same data, new shape | ḡx = g |
//! | `permute(p)` | out[i…] = x[i_p…] | inverse permutation of g |
//! | `broadcast_to(s)` | repeat along unit axes | sum g over them |
//! | `slice(a, r)` | x[…, r, …] | g added into the range |
//! | `concat(a, xs)` | join along a | g split back |
//! | `index_select(a, ix)` | x[…, ix, …] | g scatter-added at ix |
//! | `gather(labels)` | out\[i\] = x\[i, labels\[i\]\] | g scatter-added |
//! | `detach` | x | none (stop-gradient) |

use crate::ops::elementwise::for_each_broadcast;
use crate::ops::Op;
use crate::real::Real;
use crate::shape::{broadcast_shapes, check_shapes, Shape, MAX_RANK};
use crate::tape::{Bwd, Var};

/// (outer, len, inner): the shape seen as `[outer, len, inner]` around `axis`.
fn split3(s: Shape, axis: usize) -> (usize, usize, usize) {
    let d = s.dims();
    (
        d[..axis].iter().product(),
        d[axis],
        d[axis + 1..].iter().product(),
    )
}

/// For each output element in row-major order, the flat index of its source
/// in the input of a permutation.
fn for_each_permuted(x: Shape, perm: [u8; 4], mut f: impl FnMut(usize, usize)) {
    let r = x.rank();
    let xs = x.strides();
    // Pad to rank 4 with leading unit axes that stay in place.
    let off = MAX_RANK - r;
    let mut dims = [1usize; MAX_RANK];
    let mut strides = [0usize; MAX_RANK];
    for i in 0..r {
        dims[off + i] = x.dim(perm[i] as usize);
        strides[off + i] = xs[perm[i] as usize];
    }
    let mut o = 0;
    for i0 in 0..dims[0] {
        for i1 in 0..dims[1] {
            for i2 in 0..dims[2] {
                let base = i0 * strides[0] + i1 * strides[1] + i2 * strides[2];
                for i3 in 0..dims[3] {
                    f(o, base + i3 * strides[3]);
                    o += 1;
                }
            }
        }
    }
}

pub(crate) fn reshape_vjp<T: Real>(b: &mut Bwd<'_, T>) {
    if b.wants(0) {
        let g = b.g;
        b.g_in(0).iter_mut().zip(g).for_each(|(a, &v)| *a += v);
    }
}

pub(crate) fn permute_vjp<T: Real>(b: &mut Bwd<'_, T>, perm: [u8; 4]) {
    if b.wants(0) {
        let (s, g) = (b.x_shape(0), b.g);
        let gx = b.g_in(0);
        for_each_permuted(s, perm, |o, i| gx[i] += g[o]);
    }
}

pub(crate) fn broadcast_to_vjp<T: Real>(b: &mut Bwd<'_, T>) {
    if b.wants(0) {
        let (s, out, g) = (b.x_shape(0), b.node.shape, b.g);
        let gx = b.g_in(0);
        for_each_broadcast(out, s, out, |o, i, _| gx[i] += g[o]);
    }
}

pub(crate) fn slice_vjp<T: Real>(b: &mut Bwd<'_, T>, axis: usize, start: usize) {
    if b.wants(0) {
        let (s, g) = (b.x_shape(0), b.g);
        let len = b.node.shape.dim(axis);
        let (outer, n, inner) = split3(s, axis);
        let gx = b.g_in(0);
        for o in 0..outer {
            let src = &g[o * len * inner..(o + 1) * len * inner];
            let dst = &mut gx[(o * n + start) * inner..(o * n + start + len) * inner];
            dst.iter_mut().zip(src).for_each(|(a, &v)| *a += v);
        }
    }
}

pub(crate) fn concat_vjp<T: Real>(b: &mut Bwd<'_, T>, axis: usize) {
    let g = b.g;
    let (outer, total, inner) = split3(b.node.shape, axis);
    let mut offset = 0;
    for k in 0..b.node.inputs.len() {
        let len = b.x_shape(k).dim(axis);
        if b.wants(k) {
            let gx = b.g_in(k);
            for o in 0..outer {
                let src = &g[(o * total + offset) * inner..(o * total + offset + len) * inner];
                let dst = &mut gx[o * len * inner..(o + 1) * len * inner];
                dst.iter_mut().zip(src).for_each(|(a, &v)| *a += v);
            }
        }
        offset += len;
    }
}

pub(crate) fn index_select_vjp<T: Real>(b: &mut Bwd<'_, T>, axis: usize) {
    if b.wants(0) {
        let (s, g, idx) = (b.x_shape(0), b.g, b.idx);
        let (outer, n, inner) = split3(s, axis);
        let gx = b.g_in(0);
        if inner == 1 {
            // One element per index (a gather along the last axis): the same
            // additions in the same order, without a slice per element.
            for (o, go) in g.chunks_exact(idx.len().max(1)).enumerate().take(outer) {
                let gxo = &mut gx[o * n..(o + 1) * n];
                for (&ix, &v) in idx.iter().zip(go) {
                    gxo[ix] += v;
                }
            }
            return;
        }
        for o in 0..outer {
            for (j, &ix) in idx.iter().enumerate() {
                let src = &g[(o * idx.len() + j) * inner..(o * idx.len() + j + 1) * inner];
                let dst = &mut gx[(o * n + ix) * inner..(o * n + ix + 1) * inner];
                dst.iter_mut().zip(src).for_each(|(a, &v)| *a += v);
            }
        }
    }
}

pub(crate) fn gather_vjp<T: Real>(b: &mut Bwd<'_, T>) {
    if b.wants(0) {
        let (c, g, idx) = (b.x_shape(0).dim(1), b.g, b.idx);
        let gx = b.g_in(0);
        for (i, &l) in idx.iter().enumerate() {
            gx[i * c + l] += g[i];
        }
    }
}

impl<'t, T: Real> Var<'t, T> {
    /// The same elements under a new shape.
    ///
    /// # Panics
    /// If the element counts differ.
    #[track_caller]
    pub fn reshape(self, shape: impl Into<Shape>) -> Var<'t, T> {
        let (s, to) = (self.shape(), shape.into());
        check_shapes!(s.numel() == to.numel(), "reshape", ["x" => s, "to" => to], "element counts {} != {}", s.numel(), to.numel());
        self.tape
            .record(Op::Reshape, &[self], to, |f| f.out.copy_from_slice(f.x(0)))
    }

    /// Permutes the axes: output axis `i` is input axis `perm[i]`.
    ///
    /// # Panics
    /// If `perm` is not a permutation of `0..rank`.
    #[track_caller]
    pub fn permute(self, perm: &[usize]) -> Var<'t, T> {
        let s = self.shape();
        let mut seen = [false; MAX_RANK];
        let valid = perm.len() == s.rank()
            && perm
                .iter()
                .all(|&p| p < s.rank() && !std::mem::replace(&mut seen[p], true));
        check_shapes!(valid, "permute", ["x" => s], "{perm:?} is not a permutation of the axes");
        let mut p = [0u8; 4];
        let mut d = [0usize; 4];
        for (i, &a) in perm.iter().enumerate() {
            p[i] = a as u8;
            d[i] = s.dim(a);
        }
        let out = Shape::new(&d[..s.rank()]);
        self.tape.record(Op::Permute(p), &[self], out, |f| {
            let x = f.x(0);
            let o = &mut *f.out;
            for_each_permuted(s, p, |oi, i| o[oi] = x[i]);
        })
    }

    /// Swaps the last two axes (a matrix transpose for rank 2).
    ///
    /// # Panics
    /// If the rank is below 2.
    #[track_caller]
    pub fn t(self) -> Var<'t, T> {
        let r = self.shape().rank();
        check_shapes!(r >= 2, "transpose", ["x" => self.shape()], "needs rank >= 2");
        // A fixed array, not a Vec: recording allocates nothing.
        let mut p = [0, 1, 2, 3];
        p.swap(r - 2, r - 1);
        self.permute(&p[..r])
    }

    /// Repeats the tensor along unit (or missing leading) axes to `shape`.
    ///
    /// # Panics
    /// If `self` does not broadcast to `shape`.
    #[track_caller]
    pub fn broadcast_to(self, shape: impl Into<Shape>) -> Var<'t, T> {
        let (s, to) = (self.shape(), shape.into());
        check_shapes!(broadcast_shapes(s, to) == Some(to), "broadcast_to", ["x" => s, "to" => to], "does not broadcast");
        self.tape.record(Op::BroadcastTo, &[self], to, |f| {
            let x = f.x(0);
            let o = &mut *f.out;
            for_each_broadcast(to, s, to, |oi, i, _| o[oi] = x[i]);
        })
    }

    /// The elements `start..end` along `axis`.
    ///
    /// # Panics
    /// If the axis or the range is out of bounds.
    #[track_caller]
    pub fn slice(self, axis: usize, start: usize, end: usize) -> Var<'t, T> {
        let s = self.shape();
        check_shapes!(axis < s.rank(), "slice", ["x" => s], "axis {axis} out of range");
        check_shapes!(start <= end && end <= s.dim(axis), "slice", ["x" => s], "range {start}..{end} out of bounds on axis {axis}");
        let mut d = [0usize; 4];
        d[..s.rank()].copy_from_slice(s.dims());
        d[axis] = end - start;
        let out = Shape::new(&d[..s.rank()]);
        let (outer, n, inner) = split3(s, axis);
        let len = end - start;
        self.tape.record(
            Op::Slice {
                axis: axis as u8,
                start,
            },
            &[self],
            out,
            |f| {
                let x = f.x(0);
                for o in 0..outer {
                    f.out[o * len * inner..(o + 1) * len * inner]
                        .copy_from_slice(&x[(o * n + start) * inner..(o * n + end) * inner]);
                }
            },
        )
    }

    /// Selects the given positions along `axis` (repeats allowed).
    ///
    /// # Panics
    /// If the axis or an index is out of range.
    #[track_caller]
    pub fn index_select(self, axis: usize, indices: &[usize]) -> Var<'t, T> {
        let s = self.shape();
        check_shapes!(axis < s.rank(), "index_select", ["x" => s], "axis {axis} out of range");
        if let Some(&bad) = indices.iter().find(|&&i| i >= s.dim(axis)) {
            crate::shape::shape_panic(
                "index_select",
                &[("x", s)],
                format_args!("index {bad} out of range on axis {axis}"),
            );
        }
        let mut d = [0usize; 4];
        d[..s.rank()].copy_from_slice(s.dims());
        d[axis] = indices.len();
        let out = Shape::new(&d[..s.rank()]);
        let (outer, n, inner) = split3(s, axis);
        let k = indices.len();
        self.tape
            .record(Op::IndexSelect { axis: axis as u8 }, &[self], out, |f| {
                let x = f.x(0);
                f.idx.extend_from_slice(indices);
                if inner == 1 {
                    // One element per index: a plain gather.
                    for (o, out) in f.out.chunks_exact_mut(k.max(1)).enumerate().take(outer) {
                        let xo = &x[o * n..(o + 1) * n];
                        for (y, &ix) in out.iter_mut().zip(indices) {
                            *y = xo[ix];
                        }
                    }
                    return;
                }
                for o in 0..outer {
                    for (j, &ix) in indices.iter().enumerate() {
                        f.out[(o * k + j) * inner..(o * k + j + 1) * inner]
                            .copy_from_slice(&x[(o * n + ix) * inner..(o * n + ix + 1) * inner]);
                    }
                }
            })
    }

    /// For a 2-D `[n, c]` tensor, `out[i] = self[i, labels[i]]`, shape `[n]`.
    ///
    /// # Panics
    /// If `self` is not 2-D, there are not `n` labels, or a label is `>= c`.
    #[track_caller]
    pub fn gather(self, labels: &[usize]) -> Var<'t, T> {
        let s = self.shape();
        check_shapes!(s.rank() == 2 && s.dim(0) == labels.len(), "gather", ["x" => s], "expected [n, c] with n = {} labels", labels.len());
        if let Some(&bad) = labels.iter().find(|&&l| l >= s.dim(1)) {
            crate::shape::shape_panic(
                "gather",
                &[("x", s)],
                format_args!("label {bad} out of range"),
            );
        }
        let c = s.dim(1);
        self.tape
            .record(Op::Gather, &[self], Shape::new(&[labels.len()]), |f| {
                let x = f.x(0);
                f.idx.extend_from_slice(labels);
                for (i, &l) in labels.iter().enumerate() {
                    f.out[i] = x[i * c + l];
                }
            })
    }

    /// A stop-gradient copy: same value, no adjoint flows back (see [`crate::Tape::detach`]).
    pub fn detach(self) -> Var<'t, T> {
        self.tape.detach(self)
    }
}

/// Joins variables along `axis`; all other dimensions must agree.
///
/// # Panics
/// If `xs` is empty, or shapes disagree off the axis.
///
/// ```
/// use tape::{concat, Tape, Tensor};
/// let t = Tape::<f64>::new();
/// let a = t.var(&Tensor::vector(vec![1.0, 2.0]));
/// let b = t.var(&Tensor::vector(vec![3.0]));
/// assert_eq!(concat(&[a, b], 0).value().data(), &[1.0, 2.0, 3.0]);
/// ```
#[track_caller]
pub fn concat<'t, T: Real>(xs: &[Var<'t, T>], axis: usize) -> Var<'t, T> {
    assert!(!xs.is_empty(), "concat: no operands");
    let s0 = xs[0].shape();
    check_shapes!(axis < s0.rank(), "concat", ["x0" => s0], "axis {axis} out of range");
    let mut total = 0;
    for x in xs {
        let s = x.shape();
        let same =
            s.rank() == s0.rank() && (0..s.rank()).all(|i| i == axis || s.dim(i) == s0.dim(i));
        check_shapes!(same, "concat", ["first" => s0, "other" => s], "shapes differ off axis {axis}");
        total += s.dim(axis);
    }
    let mut d = [0usize; 4];
    d[..s0.rank()].copy_from_slice(s0.dims());
    d[axis] = total;
    let out = Shape::new(&d[..s0.rank()]);
    let (outer, _, inner) = split3(out, axis);
    xs[0]
        .tape
        .record(Op::Concat { axis: axis as u8 }, xs, out, |f| {
            let mut offset = 0;
            for k in 0..xs.len() {
                let x = f.x(k);
                let len = x.len() / (outer * inner).max(1);
                for o in 0..outer {
                    f.out[(o * total + offset) * inner..(o * total + offset + len) * inner]
                        .copy_from_slice(&x[o * len * inner..(o + 1) * len * inner]);
                }
                offset += len;
            }
        })
}
