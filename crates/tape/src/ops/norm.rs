//! Batch normalisation (training mode) in one node.
//!
//! Per channel (axis 1 of `[n, c]` or `[n, c, h, w]`), over the m = n·h·w
//! elements x of that channel:
//!
//! | op | forward | VJP (`g` = output adjoint) |
//! |---|---|---|
//! | `batch_norm` | μ = Σx/m, σ² = Σ(x − μ)²/m, s = 1/√(σ² + ε), x̂ = (x − μ)·s, y = x̂·γ + β | ḡβ = Σg, ḡγ = Σg·x̂, ḡx = γ·s·(g − ḡβ/m − x̂·ḡγ/m) |
//!
//! The input adjoint is the chain rule through the statistics: with
//! ĝ = γ·g (the adjoint of x̂), ∂x̂_i/∂x_j = s·(δ_ij − 1/m − x̂_i·x̂_j/m),
//! so ḡx_j = s·(ĝ_j − Σĝ/m − x̂_j·Σĝ·x̂/m), and γ is constant over the
//! channel. The node saves x − μ and s (x̂ = (x − μ)·s is formed where it
//! is used), so the VJP reads neither x nor the output, and takes two
//! passes (Σg and Σg·(x − μ) together, then ḡx).
//!
//! On a dual tape the forward is the JVP and the VJP runs on dual values:
//! forward-over-reverse through the statistics, like every other op.
//!
//! A large node (`split_work`) runs each pass for half of the channels on
//! each of two threads (`kernels::pair::channel_halves`): each channel's
//! sums in the same order, so the same bits as on one thread.
//!
//! The values match the composite `((x − μ)/√(σ² + ε))·γ + β` written with
//! `mean_axes`, `-`, `square`, `add_scalar`, `sqrt`, `/`, `*` and `+` to a
//! few ulps, not bit for bit: the node multiplies by s = 1/√(σ² + ε)
//! instead of dividing by √(σ² + ε), and sums each channel in a running
//! sum (for `[n, c]`) or in eight interleaved partial sums per sample and
//! channel (for images), not by the reduction's order; and it forms
//! y = (x − μ)·(s·γ) + β. It replaces ten nodes, ten output buffers and their
//! broadcasts with one node, one saved copy and three passes over the input
//! in the forward (Σx; x − μ and Σ(x − μ)² block by block; y).

use crate::kernels::pair::{channel_halves, cuts};
use crate::ops::Op;
use crate::real::Real;
use crate::shape::{check_shapes, Shape};
use crate::tape::{Bwd, Var};

/// The work by which a batch-norm's passes are cut between two threads
/// ([`channel_halves`]): its elements, a dual one counted as its parts (the
/// passes are scalar code, and a dual's products cost about three real
/// ones), over 4, against the elementwise passes' threshold of 2^13: a
/// `Dual<f32>` `[64, 256]` is cut, an `f32` one is not, an `f32` `[64, 512]`
/// is. Measured alternately in one process (Zen 5, `docs/benchmarks.md`
/// "bnsplit"): cut, an `f32` `[64, 256]` layer's passes made `mlp_grad_bn`
/// 0–3 % slower (a hand-off and the zero-fill of the saved x − μ against
/// passes of a few µs), and a `Dual<f32>` one's made `mlp_hvp_bn` 4–12 %
/// faster.
fn split_work<T: Real>(len: usize) -> usize {
    let parts = std::mem::size_of::<T>() / std::mem::size_of::<T::Base>();
    len.saturating_mul(parts) / 4
}

/// Channels per block of the cut passes' sums: each block's sums run over
/// every row in local accumulators and are stored once, so the two threads
/// do not both write the cache line their halves of a per-channel vector
/// share once per row. Each channel's sum is still taken row by row from
/// zero: the same bits. Measured (`docs/benchmarks.md` "bnsplit"): with the
/// sums in place the cut cost `mlp_grad_bn` 2–7 % and gained `mlp_hvp_bn`
/// 4–8 %; blocked, 0–3 % and 4–12 %.
const BLOCK: usize = 32;

/// The blocks `(lo, hi)` of at most [`BLOCK`] channels of `0..chs`.
fn blocks(chs: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..chs)
        .step_by(BLOCK)
        .map(move |lo| (lo, (lo + BLOCK).min(chs)))
}

/// `(n, c, inner)` of a batch-norm input: `inner` = h·w, or 1 for `[n, c]`.
#[track_caller]
fn dims(x: Shape, gamma: Shape, beta: Shape) -> (usize, usize, usize) {
    let name = "batch_norm";
    check_shapes!(x.rank() == 2 || x.rank() == 4, name, ["x" => x], "expected [n, c] or [n, c, h, w]");
    let c = x.dim(1);
    for (what, p) in [("gamma", gamma), ("beta", beta)] {
        check_shapes!(p.dims() == [c], name, ["x" => x, what => p], "expected [{c}]");
    }
    let inner = if x.rank() == 4 {
        x.dim(2) * x.dim(3)
    } else {
        1
    };
    check_shapes!(x.dim(0) * inner > 0, name, ["x" => x], "no elements per channel: the batch statistics are undefined");
    (x.dim(0), c, inner)
}

/// The `K` sums Σ f(a_i, b_i)[k] over two equal-length slices, each in 8
/// interleaved partial sums (sum l takes the i ≡ l mod 8), the tail added
/// to the first ones, combined as ((s0 + s1) + (s2 + s3)) + ((s4 + s5) +
/// (s6 + s7)): a fixed order, so the same bits on every run (and for each
/// k the bits of a one-sum call), and the sums vectorise.
#[inline]
fn lane_sum<T: Real, const K: usize>(a: &[T], b: &[T], f: impl Fn(T, T) -> [T; K]) -> [T; K] {
    let mut acc = [[T::zero(); 8]; K];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            let v = f(x[l], y[l]);
            for k in 0..K {
                acc[k][l] += v[k];
            }
        }
    }
    for (l, (&x, &y)) in ar.iter().zip(br).enumerate() {
        let v = f(x, y);
        for k in 0..K {
            acc[k][l] += v[k];
        }
    }
    acc.map(|a| ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7])))
}

/// The element layout of a batch-norm input: rows (samples) of `c`
/// channels of `inner` contiguous elements (h·w, or 1 for `[n, c]`).
#[derive(Clone, Copy)]
struct Layout {
    c: usize,
    inner: usize,
}

impl Layout {
    /// For each channel `ch` and each k < K, `acc[k][ch] += Σ f(a_i, b_i)[k]`
    /// over the channel's elements, in one pass: for `[n, c]` row by row (a
    /// row's channels side by side), otherwise block by block, each block's
    /// sums by [`lane_sum`].
    #[inline]
    fn sums<T: Real, const K: usize>(
        self,
        mut acc: [&mut [T]; K],
        a: &[T],
        b: &[T],
        f: impl Fn(T, T) -> [T; K],
    ) {
        let row = self.c * self.inner;
        for (ra, rb) in a.chunks_exact(row).zip(b.chunks_exact(row)) {
            self.sums_row(&mut acc, ra, rb, &f);
        }
    }

    /// One row's part of [`Layout::sums`]: `ra`, `rb` hold whole channels
    /// (the first is `acc`'s element 0), all of a row's or some of them.
    #[inline]
    fn sums_row<T: Real, const K: usize>(
        self,
        acc: &mut [&mut [T]; K],
        ra: &[T],
        rb: &[T],
        f: &impl Fn(T, T) -> [T; K],
    ) {
        if self.inner == 1 {
            for (ch, (&x, &y)) in ra.iter().zip(rb).enumerate() {
                let v = f(x, y);
                for k in 0..K {
                    acc[k][ch] += v[k];
                }
            }
        } else {
            let blocks = ra.chunks_exact(self.inner).zip(rb.chunks_exact(self.inner));
            for (ch, (x, y)) in blocks.enumerate() {
                let v = lane_sum(x, y, f);
                for k in 0..K {
                    acc[k][ch] += v[k];
                }
            }
        }
    }

    /// Appends `x − μ[ch]` for every element of channel `ch` to `xc`, and
    /// `acc[ch] += Σ (x − μ)²` in the order of [`Layout::sums`] (each block
    /// summed right after it is written, while it is in cache): the bits of
    /// a centring pass followed by a sum of squares, in one pass over `x`,
    /// and no zero-fill of the appended space.
    #[inline]
    fn centre<T: Real>(self, xc: &mut Vec<T>, x: &[T], mu: &[T], acc: &mut [T]) {
        let row = self.c * self.inner;
        for rx in x.chunks_exact(row) {
            if self.inner == 1 {
                let at = xc.len();
                xc.extend(rx.iter().zip(mu).map(|(&x, &m)| x - m));
                for (s, &v) in acc.iter_mut().zip(&xc[at..]) {
                    *s += v * v;
                }
            } else {
                let blocks = rx.chunks_exact(self.inner).zip(mu).zip(acc.iter_mut());
                for ((bx, &m), s) in blocks {
                    let at = xc.len();
                    xc.extend(bx.iter().map(|&x| x - m));
                    let b = &xc[at..];
                    let [v] = lane_sum(b, b, |x, _| [x * x]);
                    *s += v;
                }
            }
        }
    }

    /// One row's part of [`Layout::centre`], written into `out` (the
    /// row's elements of the same channels as `x`, `mu` and `acc`) instead
    /// of appended: the same values and sums, in the same order.
    #[inline]
    fn centre_row<T: Real>(self, out: &mut [T], x: &[T], mu: &[T], acc: &mut [T]) {
        if self.inner == 1 {
            for ((o, &x), &m) in out.iter_mut().zip(x).zip(mu) {
                *o = x - m;
            }
            for (s, &v) in acc.iter_mut().zip(&*out) {
                *s += v * v;
            }
        } else {
            let blocks = out
                .chunks_exact_mut(self.inner)
                .zip(x.chunks_exact(self.inner));
            for ((bo, bx), (&m, s)) in blocks.zip(mu.iter().zip(acc.iter_mut())) {
                for (o, &x) in bo.iter_mut().zip(bx) {
                    *o = x - m;
                }
                let [v] = lane_sum(bo, bo, |x, _| [x * x]);
                *s += v;
            }
        }
    }

    /// `f(&mut out_i, a_i, b_i, k(ch))` for every element `i` of channel
    /// `ch` (`k(ch)`: the channel's constants, taken once per block).
    #[inline]
    fn map<T: Real, K>(
        self,
        out: &mut [T],
        a: &[T],
        b: &[T],
        k: impl Fn(usize) -> K,
        mut f: impl FnMut(&mut T, T, T, &K),
    ) {
        let row = self.c * self.inner;
        let rows = out
            .chunks_exact_mut(row)
            .zip(a.chunks_exact(row))
            .zip(b.chunks_exact(row));
        for ((ro, ra), rb) in rows {
            self.map_row(ro, ra, rb, &k, &mut f);
        }
    }

    /// One row's part of [`Layout::map`]: `ro`, `ra`, `rb` hold whole
    /// channels, the first one `k`'s channel 0.
    #[inline]
    fn map_row<T: Real, K>(
        self,
        ro: &mut [T],
        ra: &[T],
        rb: &[T],
        k: &impl Fn(usize) -> K,
        f: &mut impl FnMut(&mut T, T, T, &K),
    ) {
        if self.inner == 1 {
            for (ch, ((o, &x), &y)) in ro.iter_mut().zip(ra).zip(rb).enumerate() {
                f(o, x, y, &k(ch));
            }
        } else {
            let (ba, bb) = (ra.chunks_exact(self.inner), rb.chunks_exact(self.inner));
            for (ch, ((bo, ba), bb)) in ro.chunks_exact_mut(self.inner).zip(ba).zip(bb).enumerate()
            {
                let kc = k(ch);
                for ((o, &x), &y) in bo.iter_mut().zip(ba).zip(bb) {
                    f(o, x, y, &kc);
                }
            }
        }
    }
}

/// VJP of the batch-norm (module docs) from the saved x − μ and s: the
/// per-channel sums ḡβ = Σg and Σg·(x − μ) (ḡγ = s·Σg·(x − μ)) in one
/// pass, then
/// ḡx = γ·s·(g − ḡβ/m − (x − μ)·s·ḡγ/m).
pub(crate) fn batch_norm_vjp<'a, T: Real>(b: &mut Bwd<'a, T>) {
    let (n, c, inner) = dims(b.x_shape(0), b.x_shape(1), b.x_shape(2));
    if !(b.wants(0) || b.wants(1) || b.wants(2)) {
        return;
    }
    let lay = Layout { c, inner };
    let len = n * c * inner;
    let (xc, s) = b.aux.split_at(len);
    let g = b.g;
    let mut scratch = std::mem::take(b.scratch);
    scratch.clear();
    scratch.resize(2 * c, T::zero());
    let (sg, sgx) = scratch.split_at_mut(c);
    let inv_m = T::from_f64(1.0 / (n * inner) as f64);
    if b.wants(0) && cuts(split_work::<T>(len), c) {
        // The channels in two halves, one per thread: each half's sums, then
        // its ḡx, as below (the same bits).
        let gamma = b.x(1);
        let (gx, fresh) = b.g_in_overwrite(0);
        let bufs = [(gx, inner), (&mut *sg, 1), (&mut *sgx, 1)];
        channel_halves(c, bufs, split_work::<T>(len), &|chs, parts| {
            let [mut gx, mut sg, mut sgx] = parts;
            let (sg, sgx) = (sg.row(0), sgx.row(0));
            let span =
                |r: usize| r * c * inner + chs.start * inner..r * c * inner + chs.end * inner;
            let part = |v: &'a [T], r: usize| -> &'a [T] { &v[span(r)] };
            for (lo, hi) in blocks(chs.len()) {
                let e = lo * inner..hi * inner;
                let (mut a, mut ax) = ([T::zero(); BLOCK], [T::zero(); BLOCK]);
                for r in 0..n {
                    let (g, x) = (&part(g, r)[e.clone()], &part(xc, r)[e.clone()]);
                    let acc = &mut [&mut a[..hi - lo], &mut ax[..hi - lo]];
                    lay.sums_row(acc, g, x, &|g, x| [g, g * x]);
                }
                sg[lo..hi].copy_from_slice(&a[..hi - lo]);
                sgx[lo..hi].copy_from_slice(&ax[..hi - lo]);
            }
            for (v, &sc) in sgx.iter_mut().zip(&s[chs.clone()]) {
                *v *= sc;
            }
            let k = |ch: usize| {
                let at = chs.start + ch;
                (gamma[at] * s[at], sg[ch] * inv_m, s[at] * (sgx[ch] * inv_m))
            };
            for r in 0..n {
                let (o, g, x) = (gx.row(r), part(g, r), part(xc, r));
                if fresh {
                    lay.map_row(o, g, x, &k, &mut |o, g, x, &(k, a, d)| {
                        *o = k * (g - a - x * d)
                    });
                } else {
                    lay.map_row(o, g, x, &k, &mut |o, g, x, &(k, a, d)| {
                        *o += k * (g - a - x * d)
                    });
                }
            }
        });
        for (k, sums) in [(2, &*sg), (1, &*sgx)] {
            if b.wants(k) {
                for (a, &v) in b.g_in(k).iter_mut().zip(sums) {
                    *a += v;
                }
            }
        }
        *b.scratch = scratch;
        return;
    }
    lay.sums([&mut *sg, &mut *sgx], g, xc, |g, x| [g, g * x]);
    for (v, &sc) in sgx.iter_mut().zip(s) {
        *v *= sc; // ḡγ = s·Σg·(x − μ) = Σg·x̂
    }
    for (k, sums) in [(2, &*sg), (1, &*sgx)] {
        if b.wants(k) {
            for (a, &v) in b.g_in(k).iter_mut().zip(sums) {
                *a += v;
            }
        }
    }
    if b.wants(0) {
        // Per channel: ḡx = k·(g − a − (x − μ)·d) with k = γ·s, a = Σg/m
        // and d = s·Σg·x̂/m.
        let gamma = b.x(1);
        let (sg, sgx) = (&*sg, &*sgx);
        let k = |ch: usize| (gamma[ch] * s[ch], sg[ch] * inv_m, s[ch] * (sgx[ch] * inv_m));
        let (gx, fresh) = b.g_in_overwrite(0);
        if fresh {
            lay.map(gx, g, xc, k, |o, g, x, &(k, a, d)| *o = k * (g - a - x * d));
        } else {
            lay.map(gx, g, xc, k, |o, g, x, &(k, a, d)| {
                *o += k * (g - a - x * d)
            });
        }
    }
    *b.scratch = scratch;
}

impl<'t, T: Real> Var<'t, T> {
    /// Batch normalisation in training mode, in one node: normalises with
    /// the batch mean and (biased) variance over every axis but the channel
    /// axis 1, then scales by `gamma` and shifts by `beta` (both `[c]`).
    /// Differentiated through the statistics. Works on `[n, c]` and
    /// `[n, c, h, w]`.
    ///
    /// y = (x − μ)·s·γ + β with μ, σ² the channel's mean and variance over
    /// its m = n·h·w elements and s = 1/√(σ² + ε); the VJP is
    /// ḡx = γ·s·(ḡ − Σḡ/m − x̂·Σḡ·x̂/m), x̂ = (x − μ)·s (see `ops/norm.rs`).
    ///
    /// # Panics
    /// If `x` is not rank 2 or 4, if `gamma`/`beta` are not `[c]`, or if a
    /// channel has no elements (n·h·w = 0).
    ///
    /// ```
    /// use tape::{Tape, Tensor};
    /// let t = Tape::<f64>::new();
    /// let x = t.var(&Tensor::new(&[2, 1], vec![1.0, 3.0])); // μ = 2, σ² = 1
    /// let gamma = t.var(&Tensor::new(&[1], vec![2.0]));
    /// let beta = t.var(&Tensor::new(&[1], vec![0.5]));
    /// let y = x.batch_norm(gamma, beta, 0.0);
    /// assert_eq!(y.value().data(), &[-1.5, 2.5]); // x̂ = ∓1, then ·2 + 0.5
    /// t.backward(y.sum());
    /// assert_eq!(x.grad().data(), &[0.0, 0.0]); // Σy does not depend on x
    /// assert_eq!(gamma.grad().data(), &[0.0]); // Σx̂ = 0
    /// assert_eq!(beta.grad().data(), &[2.0]);
    /// ```
    #[track_caller]
    pub fn batch_norm(self, gamma: Var<'t, T>, beta: Var<'t, T>, eps: f64) -> Var<'t, T> {
        let s = self.shape();
        let (n, c, inner) = dims(s, gamma.shape(), beta.shape());
        let lay = Layout { c, inner };
        let len = n * c * inner;
        let inv_m = T::from_f64(1.0 / (n * inner) as f64);
        let eps_t = T::from_f64(eps);
        self.tape
            .record_overwrite(Op::BatchNorm, &[self, gamma, beta], s, |f| {
                let (x, gm, bt) = (f.x(0), f.x(1), f.x(2));
                // Saved: x − μ (len), then s per channel (c). μ and the
                // sums of squares live in the tape's scratch.
                let start = f.aux.len();
                f.aux.reserve(len + c);
                let scratch = &mut *f.scratch;
                scratch.clear();
                scratch.resize(2 * c, T::zero());
                let (mu, sq) = scratch.split_at_mut(c);
                if cuts(split_work::<T>(len), c) {
                    // The channels in two halves, one per thread: the same
                    // sums, values and bits as the pass below, x − μ written
                    // into zero-filled space instead of appended.
                    f.aux.resize(start + len + c, T::zero());
                    let (xc, sc) = f.aux[start..].split_at_mut(len);
                    let bufs = [(&mut *f.out, inner), (xc, inner), (sc, 1), (mu, 1), (sq, 1)];
                    return channel_halves(c, bufs, split_work::<T>(len), &|chs, parts| {
                        let [mut out, mut xc, mut sc, mut mu, mut sq] = parts;
                        let (mu, sq, sc) = (mu.row(0), sq.row(0), sc.row(0));
                        let rows = (0..n).map(|r| r * c * inner);
                        let part = |at: usize| &x[at + chs.start * inner..at + chs.end * inner];
                        for (lo, hi) in blocks(chs.len()) {
                            let (e, mut a) = (lo * inner..hi * inner, [T::zero(); BLOCK]);
                            for at in rows.clone() {
                                let p = &part(at)[e.clone()];
                                lay.sums_row(&mut [&mut a[..hi - lo]], p, p, &|x, _| [x]);
                            }
                            mu[lo..hi].copy_from_slice(&a[..hi - lo]);
                        }
                        for m in mu.iter_mut() {
                            *m *= inv_m;
                        }
                        for (lo, hi) in blocks(chs.len()) {
                            let (e, mut a) = (lo * inner..hi * inner, [T::zero(); BLOCK]);
                            for (r, at) in rows.clone().enumerate() {
                                let (o, p) = (&mut xc.row(r)[e.clone()], &part(at)[e.clone()]);
                                lay.centre_row(o, p, &mu[lo..hi], &mut a[..hi - lo]);
                            }
                            sq[lo..hi].copy_from_slice(&a[..hi - lo]);
                        }
                        for (s, &v) in sc.iter_mut().zip(&*sq) {
                            *s = T::one() / (v * inv_m + eps_t).sqrt();
                        }
                        let k = |ch: usize| (sc[ch] * gm[chs.start + ch], bt[chs.start + ch]);
                        for r in 0..n {
                            let xr: &[T] = xc.row(r);
                            lay.map_row(out.row(r), xr, xr, &k, &mut |o, x, _, &(k, b)| {
                                *o = x * k + b
                            });
                        }
                    });
                }
                lay.sums([&mut *mu], x, x, |x, _| [x]);
                for m in mu.iter_mut() {
                    *m *= inv_m;
                }
                lay.centre(f.aux, x, mu, sq);
                f.aux
                    .extend(sq.iter().map(|&v| T::one() / (v * inv_m + eps_t).sqrt()));
                let (xc, sc) = f.aux[start..].split_at(len);
                let k = |ch: usize| (sc[ch] * gm[ch], bt[ch]);
                lay.map(f.out, xc, xc, k, |o, x, _, &(k, b)| *o = x * k + b);
            })
    }
}

#[cfg(test)]
mod tests {
    //! The one-node batch-norm against the composite of ten ops that states
    //! its definition, on `f32`, `f64` and dual tapes, for `[n, c]` and
    //! `[n, c, h, w]`; and the VJP's two closed-form identities. Finite
    //! differences (values, gradients, and H·v on duals) check it in the
    //! gradient table (`tests/suite/grad_table.rs`) and the HVP op table.
    use crate::{Dual, Real, Shape, Tape, Tensor, Var};

    /// Entries in (−2, 2) from a fixed sequence, with an offset per channel
    /// so that the means are not near 0, each made a `T` by `make(value,
    /// index)` (the index seeds a dual's tangent).
    fn filled<T: Real>(shape: &[usize], seed: usize, make: &impl Fn(f64, usize) -> T) -> Tensor<T> {
        let n: usize = shape.iter().product();
        let data = (0..n)
            .map(|i| {
                let v = 2.0 * ((i * 37 + seed * 11) as f64 * 0.731).sin() + 0.3 * (i % 3) as f64;
                make(v, 100 * seed + i)
            })
            .collect();
        Tensor::new(shape, data)
    }

    fn real(v: f64, _: usize) -> f64 {
        v
    }

    /// The definition: ((x − μ)/√(σ² + ε))·γ + β through the tape's own
    /// reductions and broadcasts.
    fn composite<'t, T: Real>(
        x: Var<'t, T>,
        gamma: Var<'t, T>,
        beta: Var<'t, T>,
        eps: f64,
    ) -> Var<'t, T> {
        let s = x.shape();
        let c = s.dim(1);
        let (axes, b): (&[usize], Shape) = if s.rank() == 2 {
            (&[0], Shape::new(&[1, c]))
        } else {
            (&[0, 2, 3], Shape::new(&[1, c, 1, 1]))
        };
        let xc = x - x.mean_axes(axes, true);
        let var = xc.square().mean_axes(axes, true);
        xc / var.add_scalar(eps).sqrt() * gamma.reshape(b) + beta.reshape(b)
    }

    /// Output, then the gradients of x, γ, β of Σ c ⊙ y + Σ x² (x's adjoint
    /// is already written when the batch-norm's rule adds to it).
    fn run<T: Real>(make: &impl Fn(f64, usize) -> T, xs: &[usize], fused: bool) -> Vec<Vec<T>> {
        let c = xs[1];
        let tape = Tape::<T>::new();
        let x = tape.var(&filled(xs, 1, make));
        let gamma = tape.var(&filled(&[c], 2, make));
        let beta = tape.var(&filled(&[c], 3, make));
        let w = tape.constant(&filled(xs, 4, make));
        let y = if fused {
            x.batch_norm(gamma, beta, 1e-3)
        } else {
            composite(x, gamma, beta, 1e-3)
        };
        let loss = (y * w).sum() + x.square().sum();
        tape.backward(loss);
        let mut out = vec![y.value().data().to_vec()];
        for v in [x, gamma, beta] {
            out.push(v.grad().data().to_vec());
        }
        out
    }

    /// max |a − b| over max |b|, per output, in units of `ulp`.
    fn ulps(a: &[Vec<f64>], b: &[Vec<f64>], ulp: f64) -> f64 {
        a.iter()
            .zip(b)
            .map(|(a, b)| {
                let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                let err = a
                    .iter()
                    .zip(b)
                    .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
                err / scale / ulp
            })
            .fold(0.0, f64::max)
    }

    /// Rows of channels (`[n, c]`), and images whose planes are shorter
    /// and longer than the eight partial sums.
    const SHAPES: [&[usize]; 5] = [
        &[5, 3],
        &[64, 17],
        &[2, 3, 4, 5],
        &[1, 2, 3, 1],
        &[3, 4, 14, 14],
    ];

    /// Within 16 ulps of each output's largest entry on f64 and f32, for
    /// both parts of a dual (at most 7.2 measured, on the tangents).
    #[test]
    fn one_node_matches_the_composite_definition() {
        for xs in SHAPES {
            let e = ulps(&run(&real, xs, true), &run(&real, xs, false), f64::EPSILON);
            assert!(e <= 16.0, "f64 {xs:?}: {e} ulps");
            let up = |v: Vec<Vec<f32>>| -> Vec<Vec<f64>> {
                v.into_iter()
                    .map(|r| r.into_iter().map(f64::from).collect())
                    .collect()
            };
            let e = ulps(
                &up(run(&|v, _| v as f32, xs, true)),
                &up(run(&|v, _| v as f32, xs, false)),
                f32::EPSILON as f64,
            );
            assert!(e <= 16.0, "f32 {xs:?}: {e} ulps");
            let dual = |v, i: usize| Dual::new(v, ((i * 7) as f64 * 0.37).cos());
            let (a, b) = (run(&dual, xs, true), run(&dual, xs, false));
            for part in [|d: &Dual<f64>| d.v, |d: &Dual<f64>| d.d] {
                let p = |r: &Vec<Vec<Dual<f64>>>| -> Vec<Vec<f64>> {
                    r.iter().map(|r| r.iter().map(part).collect()).collect()
                };
                let e = ulps(&p(&a), &p(&b), f64::EPSILON);
                assert!(e <= 16.0, "dual {xs:?}: {e} ulps");
            }
        }
    }

    /// y is invariant to x ↦ x + t and (with ε → 0) to x ↦ a·x per channel,
    /// so for any output adjoint, ḡx sums to 0 over each channel and is
    /// orthogonal to x̂ there (to rounding), with ε = 0.
    #[test]
    fn the_input_adjoint_is_orthogonal_to_shift_and_scale() {
        for xs in SHAPES {
            let (n, c) = (xs[0], xs[1]);
            let inner: usize = xs[2..].iter().product();
            let tape = Tape::<f64>::new();
            let x = tape.var(&filled(xs, 1, &real));
            let gamma = tape.var(&filled(&[c], 2, &real));
            let beta = tape.var(&filled(&[c], 3, &real));
            let w = tape.constant(&filled(xs, 4, &real));
            let y = x.batch_norm(gamma, beta, 0.0);
            tape.backward((y * w).sum());
            let (gx, xv) = (x.grad(), x.value());
            for ch in 0..c {
                let at = |i: usize, k: usize| (i * c + ch) * inner + k;
                let idx: Vec<usize> = (0..n)
                    .flat_map(|i| (0..inner).map(move |k| at(i, k)))
                    .collect();
                let m = idx.len() as f64;
                let mu = idx.iter().map(|&i| xv.data()[i]).sum::<f64>() / m;
                let sum: f64 = idx.iter().map(|&i| gx.data()[i]).sum();
                let dot: f64 = idx
                    .iter()
                    .map(|&i| gx.data()[i] * (xv.data()[i] - mu))
                    .sum();
                let scale: f64 = idx
                    .iter()
                    .map(|&i| gx.data()[i].abs())
                    .sum::<f64>()
                    .max(1e-300);
                if m > 1.0 {
                    assert!(
                        sum.abs() <= 1e-13 * scale,
                        "{xs:?} channel {ch}: Σḡx = {sum}"
                    );
                    assert!(
                        dot.abs() <= 1e-12 * scale,
                        "{xs:?} channel {ch}: Σḡx·(x − μ) = {dot}"
                    );
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "batch_norm: x [0, 3]: no elements per channel")]
    fn an_empty_batch_is_refused() {
        let tape = Tape::<f64>::new();
        let x = tape.var(&Tensor::zeros(&[0, 3][..]));
        let g = tape.var(&Tensor::zeros(&[3][..]));
        let _ = x.batch_norm(g, g, 1e-5);
    }
}
