//! Neural-network ops.
//!
//! | op | forward | VJP |
//! |---|---|---|
//! | `log_softmax(a)` | x − max − ln Σ e^(x − max) | ḡx = g − softmax·Σ_a g |
//! | `softmax_cross_entropy(labels)` | mean_i (lse(x_i) − x_i\[l_i\]); softmax saved | ḡx = g·(p − onehot)/n |
//! | `mse(y)` | mean (x − y)² | ḡx = 2g(x − y)/N, ḡy = −ḡx |
//! | `conv2d(w, s, p)` | im2col, then W·cols per sample | ḡW = Σ g·colsᵀ, ḡx = col2im(Wᵀ·g) |
//! | `max_pool2d(k, s)` | window max (argmax saved) | g to the argmax |
//! | `avg_pool2d(k, s)` | window mean | g/k² to each window element |
//! | `batch_norm` | composite: (x − μ)/√(σ² + ε)·γ + β with batch statistics | through the statistics, by composition |
//!
//! The stabilising max of the softmax is taken on primal values; the formulas are
//! exact for any shift, so tangents are unaffected.

use crate::gemm::{gemm, MatRef};
use crate::ops::Op;
use crate::real::Real;
use crate::shape::{check_shapes, Shape};
use crate::tape::{Bwd, Var};

fn split3(s: Shape, axis: usize) -> (usize, usize, usize) {
    let d = s.dims();
    (
        d[..axis].iter().product(),
        d[axis],
        d[axis + 1..].iter().product(),
    )
}

/// ln Σ_j e^{x_j} over a strided lane, stabilised by the lane's maximum.
fn log_sum_exp<T: Real>(x: &[T], base: usize, n: usize, stride: usize) -> T {
    let mut m = x[base];
    for j in 1..n {
        let v = x[base + j * stride];
        if v > m {
            m = v;
        }
    }
    let mut s = T::zero();
    for j in 0..n {
        s += (x[base + j * stride] - m).exp();
    }
    m + s.ln()
}

pub(crate) fn log_softmax_vjp<T: Real>(b: &mut Bwd<'_, T>, axis: usize) {
    if !b.wants(0) {
        return;
    }
    let (outer, n, inner) = split3(b.node.shape, axis);
    let (out, g) = (b.out(), b.g);
    let gx = b.g_in(0);
    for o in 0..outer {
        for i in 0..inner {
            let base = o * n * inner + i;
            let mut gs = T::zero();
            for j in 0..n {
                gs += g[base + j * inner];
            }
            for j in 0..n {
                let k = base + j * inner;
                gx[k] += g[k] - out[k].exp() * gs;
            }
        }
    }
}

pub(crate) fn softmax_cross_entropy_vjp<T: Real>(b: &mut Bwd<'_, T>) {
    if !b.wants(0) {
        return;
    }
    let (p, labels, g) = (b.aux, b.idx, b.g[0]);
    let c = b.x_shape(0).dim(1);
    let scale = g / T::from_f64(labels.len() as f64);
    let gx = b.g_in(0);
    for (i, &l) in labels.iter().enumerate() {
        for j in 0..c {
            gx[i * c + j] += p[i * c + j] * scale;
        }
        gx[i * c + l] -= scale;
    }
}

pub(crate) fn mse_vjp<T: Real>(b: &mut Bwd<'_, T>) {
    let (x, y, g) = (b.x(0), b.x(1), b.g[0]);
    let scale = g * T::from_f64(2.0 / x.len().max(1) as f64);
    for (k, sign) in [(0, T::one()), (1, -T::one())] {
        if b.wants(k) {
            let gk = b.g_in(k);
            for i in 0..gk.len() {
                gk[i] += sign * scale * (x[i] - y[i]);
            }
        }
    }
}

/// Geometry of a 2-D convolution or pooling window.
#[derive(Copy, Clone)]
struct Geom {
    c: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    ho: usize,
    wo: usize,
    stride: usize,
    pad: usize,
}

impl Geom {
    fn new(x: Shape, kh: usize, kw: usize, stride: usize, pad: usize) -> Option<Geom> {
        let (c, h, w) = (x.dim(1), x.dim(2), x.dim(3));
        if h + 2 * pad < kh || w + 2 * pad < kw || stride == 0 {
            return None;
        }
        let ho = (h + 2 * pad - kh) / stride + 1;
        let wo = (w + 2 * pad - kw) / stride + 1;
        Some(Geom {
            c,
            h,
            w,
            kh,
            kw,
            ho,
            wo,
            stride,
            pad,
        })
    }
    fn rows(&self) -> usize {
        self.c * self.kh * self.kw
    }
    fn cols(&self) -> usize {
        self.ho * self.wo
    }
    /// Calls `f(row, col, input_index)` for every in-bounds (window, position) pair
    /// of one sample; out-of-bounds (padding) positions are skipped.
    fn for_each_tap(&self, mut f: impl FnMut(usize, usize, usize)) {
        let p = self.cols();
        for c in 0..self.c {
            for ki in 0..self.kh {
                for kj in 0..self.kw {
                    let row = (c * self.kh + ki) * self.kw + kj;
                    for oh in 0..self.ho {
                        let ih = (oh * self.stride + ki) as isize - self.pad as isize;
                        if ih < 0 || ih >= self.h as isize {
                            continue;
                        }
                        for ow in 0..self.wo {
                            let iw = (ow * self.stride + kj) as isize - self.pad as isize;
                            if iw < 0 || iw >= self.w as isize {
                                continue;
                            }
                            let _ = p;
                            f(
                                row,
                                oh * self.wo + ow,
                                (c * self.h + ih as usize) * self.w + iw as usize,
                            );
                        }
                    }
                }
            }
        }
    }
}

/// im2col of one sample into `cols` (`rows × cols`, zero where padded).
fn im2col<T: Real>(g: &Geom, x: &[T], cols: &mut [T]) {
    cols.iter_mut().for_each(|v| *v = T::zero());
    let p = g.cols();
    g.for_each_tap(|r, c, i| cols[r * p + c] = x[i]);
}

pub(crate) fn conv2d_vjp<T: Real>(b: &mut Bwd<'_, T>, stride: usize, pad: usize) {
    let (xs, ws) = (b.x_shape(0), b.x_shape(1));
    let geom = Geom::new(xs, ws.dim(2), ws.dim(3), stride, pad).expect("checked at record time");
    let (n, o) = (xs.dim(0), ws.dim(0));
    let (rows, p) = (geom.rows(), geom.cols());
    let (x, w, g) = (b.x(0), b.x(1), b.g);
    let (want_x, want_w) = (b.wants(0), b.wants(1));
    let one = <T::Base as Real>::one();
    let zero = <T::Base as Real>::zero();
    let mut scratch = std::mem::take(b.scratch);
    scratch.clear();
    scratch.resize(2 * rows * p, T::zero());
    let (cols, gcols) = scratch.split_at_mut(rows * p);
    let wm = MatRef::row_major(w, o, rows);
    let sample = xs.numel() / n.max(1);
    for s in 0..n {
        let gs = MatRef::row_major(&g[s * o * p..(s + 1) * o * p], o, p);
        if want_w {
            im2col(&geom, &x[s * sample..(s + 1) * sample], cols);
            gemm(
                one,
                gs,
                MatRef::row_major(cols, rows, p).t(),
                one,
                b.g_in(1),
            );
        }
        if want_x {
            gemm(one, wm.t(), gs, zero, gcols);
            let gx = &mut b.g_in(0)[s * sample..(s + 1) * sample];
            geom.for_each_tap(|r, c, i| gx[i] += gcols[r * p + c]);
        }
    }
    *b.scratch = scratch;
}

pub(crate) fn max_pool2d_vjp<T: Real>(b: &mut Bwd<'_, T>) {
    if b.wants(0) {
        let (g, idx) = (b.g, b.idx);
        let gx = b.g_in(0);
        for (j, &i) in idx.iter().enumerate() {
            gx[i] += g[j];
        }
    }
}

/// Calls `f(out_index, input_index)` for every element of every pooling window.
fn for_each_pool(x: Shape, k: usize, stride: usize, mut f: impl FnMut(usize, usize)) {
    let (nc, h, w) = (x.dim(0) * x.dim(1), x.dim(2), x.dim(3));
    let (ho, wo) = ((h - k) / stride + 1, (w - k) / stride + 1);
    for plane in 0..nc {
        for oh in 0..ho {
            for ow in 0..wo {
                let o = (plane * ho + oh) * wo + ow;
                for ki in 0..k {
                    for kj in 0..k {
                        f(o, (plane * h + oh * stride + ki) * w + ow * stride + kj);
                    }
                }
            }
        }
    }
}

pub(crate) fn avg_pool2d_vjp<T: Real>(b: &mut Bwd<'_, T>, k: usize, stride: usize) {
    if b.wants(0) {
        let (s, g) = (b.x_shape(0), b.g);
        let inv = T::from_f64(1.0 / (k * k) as f64);
        let gx = b.g_in(0);
        for_each_pool(s, k, stride, |o, i| gx[i] += g[o] * inv);
    }
}

#[track_caller]
fn pool_shape(op: &str, s: Shape, k: usize, stride: usize) -> Shape {
    check_shapes!(s.rank() == 4, op, ["x" => s], "expected [n, c, h, w]");
    check_shapes!(k > 0 && stride > 0 && s.dim(2) >= k && s.dim(3) >= k, op, ["x" => s], "window {k} with stride {stride} does not fit");
    Shape::new(&[
        s.dim(0),
        s.dim(1),
        (s.dim(2) - k) / stride + 1,
        (s.dim(3) - k) / stride + 1,
    ])
}

impl<'t, T: Real> Var<'t, T> {
    /// Log-softmax along `axis`: x − ln Σ_axis eˣ, computed stably.
    ///
    /// # Panics
    /// If the axis is out of range.
    #[track_caller]
    pub fn log_softmax(self, axis: usize) -> Var<'t, T> {
        let s = self.shape();
        check_shapes!(axis < s.rank(), "log_softmax", ["x" => s], "axis {axis} out of range");
        let (outer, n, inner) = split3(s, axis);
        self.tape
            .record(Op::LogSoftmax { axis: axis as u8 }, &[self], s, |f| {
                let x = f.x(0);
                for o in 0..outer {
                    for i in 0..inner {
                        let base = o * n * inner + i;
                        let lse = log_sum_exp(x, base, n, inner);
                        for j in 0..n {
                            f.out[base + j * inner] = x[base + j * inner] - lse;
                        }
                    }
                }
            })
    }

    /// Mean softmax cross-entropy of logits `[n, c]` against integer labels:
    /// (1/n) Σ_i (ln Σ_j e^{x_ij} − x_{i,l_i}). A scalar.
    ///
    /// # Panics
    /// If `self` is not `[n, c]` with `n = labels.len()`, or a label is `>= c`.
    ///
    /// ```
    /// use tape::{Tape, Tensor};
    /// let t = Tape::<f64>::new();
    /// let logits = t.var(&Tensor::new(&[1, 2], vec![0.0, 0.0]));
    /// let loss = logits.softmax_cross_entropy(&[1]);
    /// assert!((loss.item() - 2f64.ln()).abs() < 1e-15); // uniform over 2 classes
    /// ```
    #[track_caller]
    pub fn softmax_cross_entropy(self, labels: &[usize]) -> Var<'t, T> {
        let s = self.shape();
        check_shapes!(
            s.rank() == 2 && s.dim(0) == labels.len(),
            "softmax_cross_entropy",
            ["logits" => s],
            "expected [n, c] with n = {} labels",
            labels.len()
        );
        let c = s.dim(1);
        if let Some(&bad) = labels.iter().find(|&&l| l >= c) {
            crate::shape::shape_panic(
                "softmax_cross_entropy",
                &[("logits", s)],
                format_args!("label {bad} out of range for {c} classes"),
            );
        }
        self.tape
            .record(Op::SoftmaxCrossEntropy, &[self], Shape::scalar(), |f| {
                let x = f.x(0);
                f.idx.extend_from_slice(labels);
                let start = f.aux.len();
                f.aux.resize(start + x.len(), T::zero());
                let p = &mut f.aux[start..];
                let mut total = T::zero();
                for (i, &l) in labels.iter().enumerate() {
                    let lse = log_sum_exp(x, i * c, c, 1);
                    for j in 0..c {
                        p[i * c + j] = (x[i * c + j] - lse).exp();
                    }
                    total += lse - x[i * c + l];
                }
                f.out[0] = total / T::from_f64(labels.len().max(1) as f64);
            })
    }

    /// Mean squared error against a same-shaped `target`: mean (x − y)². A scalar.
    ///
    /// # Panics
    /// If the shapes differ.
    #[track_caller]
    pub fn mse(self, target: Var<'t, T>) -> Var<'t, T> {
        let (sa, sb) = (self.shape(), target.shape());
        check_shapes!(sa == sb, "mse", ["x" => sa, "target" => sb], "shapes differ");
        self.tape
            .record(Op::Mse, &[self, target], Shape::scalar(), |f| {
                let (x, y) = (f.x(0), f.x(1));
                let mut s = T::zero();
                for i in 0..x.len() {
                    let d = x[i] - y[i];
                    s += d * d;
                }
                f.out[0] = s / T::from_f64(x.len().max(1) as f64);
            })
    }

    /// 2-D convolution (cross-correlation), NCHW: `x [n, c, h, w]`, `weight
    /// [o, c, kh, kw]` → `[n, o, ho, wo]` with `ho = (h + 2·pad − kh)/stride + 1`.
    /// Zero padding. Add a bias with broadcasting (`[o, 1, 1]`).
    ///
    /// # Panics
    /// If the ranks or channel counts disagree, or the kernel does not fit.
    #[track_caller]
    pub fn conv2d(self, weight: Var<'t, T>, stride: usize, pad: usize) -> Var<'t, T> {
        let (xs, ws) = (self.shape(), weight.shape());
        check_shapes!(xs.rank() == 4 && ws.rank() == 4, "conv2d", ["x" => xs, "weight" => ws], "expected [n, c, h, w] and [o, c, kh, kw]");
        check_shapes!(xs.dim(1) == ws.dim(1), "conv2d", ["x" => xs, "weight" => ws], "channels {} != {}", xs.dim(1), ws.dim(1));
        let geom = Geom::new(xs, ws.dim(2), ws.dim(3), stride, pad);
        check_shapes!(geom.is_some(), "conv2d", ["x" => xs, "weight" => ws], "kernel does not fit with stride {stride}, padding {pad}");
        let geom = geom.expect("checked");
        let (n, o) = (xs.dim(0), ws.dim(0));
        let (rows, p) = (geom.rows(), geom.cols());
        let out = Shape::new(&[n, o, geom.ho, geom.wo]);
        let zero = <T::Base as Real>::zero();
        let one = <T::Base as Real>::one();
        self.tape
            .record(Op::Conv2d { stride, pad }, &[self, weight], out, |f| {
                let (x, w) = (f.x(0), f.x(1));
                // The im2col buffer borrows the aux arena and is released after the
                // forward: its capacity stays, so a re-recording allocates nothing.
                let start = f.aux.len();
                f.aux.resize(start + rows * p, T::zero());
                let sample = xs.numel() / n.max(1);
                for s in 0..n {
                    let cols = &mut f.aux[start..];
                    im2col(&geom, &x[s * sample..(s + 1) * sample], cols);
                    gemm(
                        one,
                        MatRef::row_major(w, o, rows),
                        MatRef::row_major(cols, rows, p),
                        zero,
                        &mut f.out[s * o * p..(s + 1) * o * p],
                    );
                }
                f.aux.truncate(start);
            })
    }

    /// 2-D max pooling with a `k × k` window, NCHW, no padding. The adjoint goes to
    /// the first maximum of each window.
    ///
    /// # Panics
    /// If `self` is not rank 4 or the window does not fit.
    #[track_caller]
    pub fn max_pool2d(self, k: usize, stride: usize) -> Var<'t, T> {
        let s = self.shape();
        let out = pool_shape("max_pool2d", s, k, stride);
        self.tape
            .record(Op::MaxPool2d { k, stride }, &[self], out, |f| {
                let x = f.x(0);
                let start = f.idx.len();
                f.idx.resize(start + out.numel(), usize::MAX);
                let arg = &mut f.idx[start..];
                for_each_pool(s, k, stride, |o, i| {
                    if arg[o] == usize::MAX || x[i] > x[arg[o]] {
                        arg[o] = i;
                    }
                });
                for (v, &i) in f.out.iter_mut().zip(arg.iter()) {
                    *v = x[i];
                }
            })
    }

    /// 2-D average pooling with a `k × k` window, NCHW, no padding.
    ///
    /// # Panics
    /// If `self` is not rank 4 or the window does not fit.
    #[track_caller]
    pub fn avg_pool2d(self, k: usize, stride: usize) -> Var<'t, T> {
        let s = self.shape();
        let out = pool_shape("avg_pool2d", s, k, stride);
        let inv = T::from_f64(1.0 / (k * k) as f64);
        self.tape
            .record(Op::AvgPool2d { k, stride }, &[self], out, |f| {
                let x = f.x(0);
                let o = &mut *f.out;
                for_each_pool(s, k, stride, |oi, i| o[oi] += x[i] * inv);
            })
    }

    /// Batch normalisation in training mode: normalises with the batch mean and
    /// (biased) variance over every axis but the channel axis 1, then scales by
    /// `gamma` and shifts by `beta` (both `[c]`). Differentiated through the
    /// statistics. Works on `[n, c]` and `[n, c, h, w]`.
    ///
    /// y = (x − μ)/√(σ² + ε)·γ + β
    ///
    /// # Panics
    /// If `x` is not rank 2 or 4, or `gamma`/`beta` are not `[c]`.
    #[track_caller]
    pub fn batch_norm(self, gamma: Var<'t, T>, beta: Var<'t, T>, eps: f64) -> Var<'t, T> {
        let s = self.shape();
        check_shapes!(s.rank() == 2 || s.rank() == 4, "batch_norm", ["x" => s], "expected [n, c] or [n, c, h, w]");
        let c = s.dim(1);
        for (name, p) in [("gamma", gamma.shape()), ("beta", beta.shape())] {
            check_shapes!(p.dims() == [c], "batch_norm", ["x" => s, name => p], "expected [{c}]");
        }
        let (axes, bshape): (&[usize], Shape) = if s.rank() == 2 {
            (&[0], Shape::new(&[1, c]))
        } else {
            (&[0, 2, 3], Shape::new(&[1, c, 1, 1]))
        };
        let mean = self.mean_axes(axes, true);
        let xc = self - mean;
        let var = xc.square().mean_axes(axes, true);
        let xhat = xc / var.add_scalar(eps).sqrt();
        xhat * gamma.reshape(bshape) + beta.reshape(bshape)
    }
}
