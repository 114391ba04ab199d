//! Neural-network ops.
//!
//! | op | forward | VJP |
//! |---|---|---|
//! | `log_softmax(a)` | x − max − ln Σ e^(x − max) | ḡx = g − softmax·Σ_a g |
//! | `softmax_cross_entropy(labels)` | mean_i (lse(x_i) − x_i\[l_i\]); softmax saved | ḡx = g·(p − onehot)/n |
//! | `mse(y)` | mean (x − y)² | ḡx = 2g(x − y)/N, ḡy = −ḡx |
//! | `conv2d(w, s, p)` | im2col of a chunk of samples, then one GEMM W·cols per chunk | ḡW = Σ g·colsᵀ, ḡx = col2im(Wᵀ·g), one GEMM each per chunk |
//! | `max_pool2d(k, s)` | window max (argmax saved) | g to the argmax |
//! | `avg_pool2d(k, s)` | window mean | g/k² to each window element |
//!
//! Batch-norm has its own file (`norm.rs`).
//!
//! The stabilising max of the softmax is taken on primal values; the formulas are
//! exact for any shift, so tangents are unaffected.
//!
//! Convolutions cut the batch into chunks whose im2col matrix fits about 1 MiB
//! (so it is still in cache when the GEMM packs it), one GEMM per chunk and per
//! adjoint; layers with at least as many output positions as kernel taps go
//! sample by sample, writing the output in place. Padded "same" convolutions
//! (stride 1, or stride s after splitting each plane into s² phases) build the
//! columns from one contiguous copy per tap and plane. The chunking depends only
//! on the shapes, so results do not depend on the thread count. Buffers borrow
//! the tape's arenas: a re-recording allocates nothing (for kernels up to 5×5,
//! whose per-tap offsets live on the stack).

use crate::gemm::{adjoint_gemm, gemm, MatRef};
use crate::ops::Op;
use crate::real::Real;
use crate::shape::{check_shapes, Shape};
use crate::tape::{Bwd, Var};
use smallvec::SmallVec;

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
            let (gk, fresh) = b.g_in_overwrite(k);
            for i in 0..gk.len() {
                let v = sign * scale * (x[i] - y[i]);
                // `0 + v` on a fresh adjoint: the bits of a zero-fill then `+=`.
                gk[i] = if fresh { T::zero() + v } else { gk[i] + v };
            }
        }
    }
}

/// Geometry of a 2-D convolution window.
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

/// The output positions `lo..hi` along one axis whose input coordinate
/// `pos·stride + k − pad` lies in `0..len` (the rest read zero padding).
#[inline]
fn valid_range(len: usize, out: usize, k: usize, stride: usize, pad: usize) -> (usize, usize) {
    let hi = ((len + pad).saturating_sub(k)).div_ceil(stride).min(out);
    let lo = pad.saturating_sub(k).div_ceil(stride).min(hi);
    (lo, hi)
}

/// Bytes of im2col buffer a convolution works on at once: the batch is cut into
/// chunks of samples whose columns fit, so memory stays bounded for any batch
/// while each chunk is still one large GEMM. About a core's L2 cache: the
/// columns are still cached when the GEMM packs them (measured on Conv4:
/// 1 MiB chunks are markedly faster than 8 or 32 MiB ones). Tiny in unit tests,
/// so that small shapes run through several chunks.
const COLS_BYTES: usize = if cfg!(test) { 2048 } else { 1 << 20 };

/// Output planes of at most this many positions (`ho·wo`) are im2col'd by a
/// gather from a zero-padded copy of each input plane, and col2im'd by the
/// matching scatter-add ([`im2col_gather`], [`col2im_gather_add`]): a short
/// loop per tap with no calls. Conv4's stride-2 layers with 4×4 and 2×2
/// outputs spent most of their im2col time in the `memcpy`/`memset` calls of
/// runs of a few elements. Larger outputs take the other paths: measured on
/// `maml_conv4_bn` (AVX2), gathering the 7×7 outputs too was no faster, and
/// the 14×14 ones too was slower (`docs/benchmarks.md`, "gather").
const GATHER_COLS: usize = 16;

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
    /// Rows of the column matrix: `c·kh·kw`.
    fn rows(&self) -> usize {
        self.c * self.kh * self.kw
    }
    /// Output positions per sample: `ho·wo`.
    fn cols(&self) -> usize {
        self.ho * self.wo
    }
    /// Samples per chunk: as many as keep `rows × (chunk·cols)` elements of `T`
    /// within [`COLS_BYTES`], at least one. Depends only on the shapes and the
    /// element size, so the summation order (and the result) is fixed.
    ///
    /// A chunk's GEMM result `[o, nb·p]` needs a permute into the `[nb, o, p]`
    /// output (and the adjoint the reverse), `o·p` copies per sample, while
    /// per-sample GEMMs write the output in place but pack W once per sample,
    /// `o·rows` copies. So layers with `p ≥ rows` (large images, few input
    /// channels) go sample by sample (chunk 1, no permutes).
    fn chunk<T>(&self, n: usize) -> usize {
        if self.cols() >= self.rows() {
            return 1;
        }
        let per_sample = (self.rows() * self.cols() * std::mem::size_of::<T>()).max(1);
        (COLS_BYTES / per_sample).clamp(1, n.max(1))
    }

    /// Visits every tap of the window on one input plane: calls
    /// `f(row_offset, ki, kj, oh_range, ow_range)` where `row_offset` is the
    /// tap's index `ki·kw + kj` within the channel's rows and the ranges are the
    /// output positions reading inside the plane.
    #[inline]
    fn taps(&self, mut f: impl FnMut(usize, usize, usize, (usize, usize), (usize, usize))) {
        for ki in 0..self.kh {
            let rh = valid_range(self.h, self.ho, ki, self.stride, self.pad);
            for kj in 0..self.kw {
                let rw = valid_range(self.w, self.wo, kj, self.stride, self.pad);
                f(ki * self.kw + kj, ki, kj, rh, rw);
            }
        }
    }
}

/// How a tap `(ki, kj)` of a "shifted" convolution reads its input: the phase
/// plane it reads, the output rows `h0..h1` and columns `w0..w1` that read
/// inside that plane, and the contiguous run `qa..qb` of output positions
/// `q = oh·wo + ow` reading `plane[q + off]` (see [`Geom::shifted`]).
struct Shift {
    phase: usize,
    h0: usize,
    h1: usize,
    w0: usize,
    w1: usize,
    qa: usize,
    qb: usize,
    off: isize,
}

impl Geom {
    /// Phase-plane size `(hp, wp) = (⌈h/stride⌉, ⌈w/stride⌉)`. Phase `(a, b)`
    /// of an input plane is `P[i, j] = x[stride·i + a, stride·j + b]` (zero past
    /// the image). Tap `(ki, kj)` at output `(oh, ow)` reads `x[stride·oh + ki −
    /// pad, …]`, which is `P[oh + qi, ow + qj]` of phase `(a, b)` where
    /// `ki − pad = stride·qi + a`, `0 ≤ a < stride` (likewise `kj`).
    fn phase_dims(&self) -> (usize, usize) {
        (self.h.div_ceil(self.stride), self.w.div_ceil(self.stride))
    }
    /// Whether output rows are as wide as the phase planes (`wo = ⌈w/stride⌉`,
    /// e.g. a 3×3 kernel with padding 1 at stride 1 or 2): then each tap reads
    /// its phase plane at a constant offset `q + off`, one contiguous run per
    /// plane, and im2col and col2im are long copies and adds.
    fn is_shifted(&self) -> bool {
        self.wo == self.phase_dims().1
    }
    /// Whether im2col and col2im gather ([`GATHER_COLS`]).
    fn gathers(&self) -> bool {
        self.cols() <= GATHER_COLS
    }
    /// The zero-padded plane `(h + 2·pad, w + 2·pad)` the gather reads: tap
    /// `(ki, kj)` at output `(oh, ow)` reads its element
    /// `(stride·oh + ki, stride·ow + kj)`, always inside it.
    fn padded_dims(&self) -> (usize, usize) {
        (self.h + 2 * self.pad, self.w + 2 * self.pad)
    }
    /// For each output position `q = oh·wo + ow`, the offset of its tap
    /// `(0, 0)` in the padded plane, `stride·(oh·wq + ow)`; tap `(ki, kj)`
    /// adds `ki·wq + kj`.
    fn gather_offsets(&self) -> SmallVec<[usize; GATHER_COLS]> {
        let wq = self.padded_dims().1;
        (0..self.ho)
            .flat_map(|oh| (0..self.wo).map(move |ow| self.stride * (oh * wq + ow)))
            .collect()
    }
    /// Elements of the working planes of one input plane: the padded plane
    /// if the geometry gathers; otherwise the phase planes (none at stride
    /// 1, where the plane is its own single phase).
    fn phase_len(&self) -> usize {
        if self.gathers() {
            let (hq, wq) = self.padded_dims();
            hq * wq
        } else if self.stride > 1 && self.is_shifted() {
            let (hp, wp) = self.phase_dims();
            self.stride * self.stride * hp * wp
        } else {
            0
        }
    }
    /// The [`Shift`] of every tap, row-major over `(ki, kj)`, if the geometry
    /// is shifted (else empty). On the stack for kernels up to 5×5.
    fn shifts(&self) -> SmallVec<[Shift; 25]> {
        if !self.is_shifted() {
            return SmallVec::new();
        }
        (0..self.kh)
            .flat_map(|ki| (0..self.kw).map(move |kj| self.shifted(ki, kj)))
            .collect()
    }
    /// The [`Shift`] of tap `(ki, kj)`. Every output position of the rows
    /// `h0..h1` outside `qa..qb` is a column outside `w0..w1`: positions inside
    /// both ranges read inside the plane.
    fn shifted(&self, ki: usize, kj: usize) -> Shift {
        let (hp, wp) = self.phase_dims();
        let s = self.stride as isize;
        let (di, dj) = (
            ki as isize - self.pad as isize,
            kj as isize - self.pad as isize,
        );
        let (qi, qj) = (di.div_euclid(s), dj.div_euclid(s));
        let phase = (di.rem_euclid(s) * s + dj.rem_euclid(s)) as usize;
        let range = |q: isize, len: usize, out: usize| {
            let lo = (-q).clamp(0, out as isize);
            (
                lo as usize,
                (len as isize - q).clamp(lo, out as isize) as usize,
            )
        };
        let (h0, h1) = range(qi, hp, self.ho);
        let (w0, w1) = range(qj, wp, self.wo);
        let off = qi * wp as isize + qj;
        let qa = ((h0 * self.wo) as isize)
            .max(-off)
            .min((h1 * self.wo) as isize);
        let qb = ((h1 * self.wo) as isize)
            .min((hp * wp) as isize - off)
            .max(qa);
        Shift {
            phase,
            h0,
            h1,
            w0,
            w1,
            qa: qa as usize,
            qb: qb as usize,
            off,
        }
    }
}

/// Zeroes a padding edge of an output row: usually zero or one element, which a
/// plain store handles without the call overhead of a `memset`.
#[inline]
fn zero_edge<T: Real>(s: &mut [T]) {
    match s {
        [] => {}
        [a] => *a = T::zero(),
        _ => s.fill(T::zero()),
    }
}

/// The input rows of a stride-2 phase split, each with where its halves go:
/// for phase row `i` of row parity `a`, `(ih, even, odd)` with `ih = 2i + a`
/// the input row (`None` past the image) and `even`, `odd` the offsets of
/// phase row `i` in the phase planes `(a, 0)` and `(a, 1)`.
fn pair_rows(g: &Geom) -> impl Iterator<Item = (Option<usize>, usize, usize)> {
    let (hp, wp) = g.phase_dims();
    let (len, h) = (hp * wp, g.h);
    (0..2).flat_map(move |a| {
        (0..hp).map(move |i| {
            let ih = 2 * i + a;
            let even = 2 * a * len + i * wp;
            ((ih < h).then_some(ih), even, even + len)
        })
    })
}

/// Splits one input plane into its `stride²` phase planes (see
/// [`Geom::phase_dims`]), zero past the image. At stride 2, the phases
/// `(a, 0)` and `(a, 1)` are the even and odd columns of the input rows
/// ≡ a (mod 2): each such row is split in one pass over its pairs, which
/// the compiler deinterleaves in vectors (a strided read per phase was most
/// of im2col's time on the stride-2 Conv4, `docs/benchmarks.md` "phases").
fn split_phases<T: Real>(g: &Geom, src: &[T], phases: &mut [T]) {
    let (hp, wp) = g.phase_dims();
    let s = g.stride;
    if s == 2 {
        let pairs = g.w / 2;
        for (ih, even, odd) in pair_rows(g) {
            let (lo, hi) = phases.split_at_mut(odd);
            let (e, o) = (&mut lo[even..][..wp], &mut hi[..wp]);
            let Some(ih) = ih else {
                e.fill(T::zero());
                o.fill(T::zero());
                continue;
            };
            let srow = &src[ih * g.w..][..g.w];
            let two = srow.chunks_exact(2);
            let last = two.remainder();
            for ((e, o), p) in e.iter_mut().zip(o.iter_mut()).zip(two) {
                *e = p[0];
                *o = p[1];
            }
            // An odd width's last column is the even phase's last entry.
            let tail = &mut e[pairs..];
            if let ([v], [d, ..]) = (last, &mut *tail) {
                *d = *v;
                zero_edge(&mut tail[1..]);
            } else {
                zero_edge(tail);
            }
            zero_edge(&mut o[pairs..]);
        }
        return;
    }
    for a in 0..s {
        for b in 0..s {
            let ph = &mut phases[(a * s + b) * hp * wp..][..hp * wp];
            for i in 0..hp {
                let row = &mut ph[i * wp..][..wp];
                let ih = s * i + a;
                if ih >= g.h {
                    row.fill(T::zero());
                    continue;
                }
                let srow = &src[ih * g.w..][..g.w];
                let n = if b < g.w { (g.w - b).div_ceil(s) } else { 0 };
                for (d, &v) in row[..n]
                    .iter_mut()
                    .zip(srow[b.min(g.w)..].iter().step_by(s))
                {
                    *d = v;
                }
                row[n..].fill(T::zero());
            }
        }
    }
}

/// The adjoint of [`split_phases`]: adds each phase entry inside the image back
/// onto its input element (one add per element, so the order does not change
/// the bits; at stride 2 one pass per input row over its pairs).
fn merge_phases_add<T: Real>(g: &Geom, phases: &[T], dst: &mut [T]) {
    let (hp, wp) = g.phase_dims();
    let s = g.stride;
    if s == 2 {
        let pairs = g.w / 2;
        for (ih, even, odd) in pair_rows(g) {
            let Some(ih) = ih else { continue };
            let (e, o) = (&phases[even..][..wp], &phases[odd..][..wp]);
            let drow = &mut dst[ih * g.w..][..g.w];
            let mut two = drow.chunks_exact_mut(2);
            for ((d, &x), &y) in (&mut two).zip(e).zip(o) {
                d[0] += x;
                d[1] += y;
            }
            if let [d] = two.into_remainder() {
                *d += e[pairs];
            }
        }
        return;
    }
    for a in 0..s {
        for b in 0..s {
            let ph = &phases[(a * s + b) * hp * wp..][..hp * wp];
            for i in 0..hp {
                let ih = s * i + a;
                if ih >= g.h || b >= g.w {
                    continue;
                }
                let drow = &mut dst[ih * g.w..][..g.w];
                for (d, &v) in drow[b..].iter_mut().step_by(s).zip(&ph[i * wp..][..wp]) {
                    *d += v;
                }
            }
        }
    }
}

/// [`im2col`] for a geometry that gathers ([`Geom::gathers`]): each input
/// plane copied into the interior of the zero-padded plane `padded`
/// ([`Geom::padded_dims`]; its border is zeroed once per call), then
/// `cols[(c, ki, kj), (s, q)] = padded[ki·wq + kj + off[q]]`
/// ([`Geom::gather_offsets`]). The same entries as the other paths.
fn im2col_gather<T: Real>(g: &Geom, x: &[T], nb: usize, cols: &mut [T], padded: &mut [T]) {
    let (p, plane) = (g.cols(), g.h * g.w);
    let ncols = nb * p;
    let (hq, wq) = g.padded_dims();
    let padded = &mut padded[..hq * wq];
    padded.fill(T::zero());
    let off = g.gather_offsets();
    for s in 0..nb {
        for c in 0..g.c {
            let src = &x[(s * g.c + c) * plane..][..plane];
            let inner = padded[g.pad * wq..].chunks_exact_mut(wq);
            for (d, r) in inner.zip(src.chunks_exact(g.w)) {
                d[g.pad..g.pad + g.w].copy_from_slice(r);
            }
            let base = c * g.kh * g.kw;
            for ki in 0..g.kh {
                for kj in 0..g.kw {
                    let tap = &padded[ki * wq + kj..];
                    let dst = &mut cols[(base + ki * g.kw + kj) * ncols + s * p..][..p];
                    for (d, &o) in dst.iter_mut().zip(&off) {
                        *d = tap[o];
                    }
                }
            }
        }
    }
}

/// [`col2im_add`] for a geometry that gathers: per input plane, the taps'
/// entries added into the zeroed padded plane in tap order, then its
/// interior added onto `gx` (written into a `fresh` one: `0 + v = v`
/// exactly, as v, a sum from +0, is never −0). Each input element gets
/// `(0 + g_tap1) + g_tap2 + …` in the taps' order, then is added once: the
/// sums of the shifted path, whose phase planes accumulate the same way.
fn col2im_gather_add<T: Real>(
    g: &Geom,
    gcols: &[T],
    nb: usize,
    (gx, fresh): (&mut [T], bool),
    padded: &mut [T],
) {
    let (p, plane) = (g.cols(), g.h * g.w);
    let ncols = nb * p;
    let (hq, wq) = g.padded_dims();
    let padded = &mut padded[..hq * wq];
    let off = g.gather_offsets();
    for s in 0..nb {
        for c in 0..g.c {
            padded.fill(T::zero());
            let base = c * g.kh * g.kw;
            for ki in 0..g.kh {
                for kj in 0..g.kw {
                    let tap = &mut padded[ki * wq + kj..];
                    let src = &gcols[(base + ki * g.kw + kj) * ncols + s * p..][..p];
                    for (&v, &o) in src.iter().zip(&off) {
                        tap[o] += v;
                    }
                }
            }
            let dst = &mut gx[(s * g.c + c) * plane..][..plane];
            let inner = padded[g.pad * wq..].chunks_exact(wq);
            for (d, r) in dst.chunks_exact_mut(g.w).zip(inner) {
                let r = &r[g.pad..g.pad + g.w];
                if fresh {
                    d.copy_from_slice(r);
                } else {
                    for (d, &v) in d.iter_mut().zip(r) {
                        *d += v;
                    }
                }
            }
        }
    }
}

/// im2col of `nb` consecutive samples `x` (`[nb, c, h, w]`) into `cols`, a
/// row-major `[c·kh·kw, nb·ho·wo]` matrix: `cols[(c, ki, kj), (s, oh, ow)] =
/// x[s, c, oh·stride + ki − pad, ow·stride + kj − pad]`, zero where that is
/// padding. Every element of `cols` is written (no prior zero-fill needed).
/// Small outputs gather ([`Geom::gathers`], through `phases` as the padded
/// plane); other "shifted" geometries ([`Geom::is_shifted`]) copy one
/// contiguous run per tap and plane (after a phase split at stride > 1, into
/// `phases`, of length [`Geom::phase_len`]); the rest go row by row.
fn im2col<T: Real>(g: &Geom, x: &[T], nb: usize, cols: &mut [T], phases: &mut [T]) {
    if g.gathers() {
        return im2col_gather(g, x, nb, cols, phases);
    }
    let (p, plane) = (g.cols(), g.h * g.w);
    let ncols = nb * p;
    let zero = T::zero();
    let shifted = g.is_shifted();
    let (hp, wp) = g.phase_dims();
    let shifts = g.shifts();
    for s in 0..nb {
        for c in 0..g.c {
            let src = &x[(s * g.c + c) * plane..][..plane];
            let base = c * g.kh * g.kw;
            if shifted {
                let planes: &[T] = if g.stride == 1 {
                    src
                } else {
                    split_phases(g, src, phases);
                    phases
                };
                for ki in 0..g.kh {
                    for kj in 0..g.kw {
                        let t = &shifts[ki * g.kw + kj];
                        let ph = &planes[t.phase * hp * wp..][..hp * wp];
                        let dst = &mut cols[(base + ki * g.kw + kj) * ncols + s * p..][..p];
                        dst[..t.qa].fill(zero);
                        dst[t.qb..].fill(zero);
                        if t.qb > t.qa {
                            let sa = (t.qa as isize + t.off) as usize;
                            dst[t.qa..t.qb].copy_from_slice(&ph[sa..sa + (t.qb - t.qa)]);
                        }
                        if t.w0 > 0 || t.w1 < g.wo {
                            for oh in t.h0..t.h1 {
                                let drow = &mut dst[oh * g.wo..][..g.wo];
                                zero_edge(&mut drow[..t.w0]);
                                zero_edge(&mut drow[t.w1..]);
                            }
                        }
                    }
                }
                continue;
            }
            g.taps(|t, ki, kj, (h0, h1), (w0, w1)| {
                let dst = &mut cols[(base + t) * ncols + s * p..][..p];
                dst[..h0 * g.wo].fill(zero);
                dst[h1 * g.wo..].fill(zero);
                for oh in h0..h1 {
                    let ih = oh * g.stride + ki - g.pad;
                    let drow = &mut dst[oh * g.wo..][..g.wo];
                    zero_edge(&mut drow[..w0]);
                    zero_edge(&mut drow[w1..]);
                    let iw0 = w0 * g.stride + kj - g.pad;
                    let srow = &src[ih * g.w..][..g.w];
                    if g.stride == 1 {
                        drow[w0..w1].copy_from_slice(&srow[iw0..iw0 + (w1 - w0)]);
                    } else {
                        let taps = srow[iw0..].iter().step_by(g.stride);
                        for (d, &v) in drow[w0..w1].iter_mut().zip(taps) {
                            *d = v;
                        }
                    }
                }
            });
        }
    }
}

/// The adjoint of [`im2col`]: adds every column entry back onto the input
/// element it was copied from (`gx += col2im(gcols)`); padding entries are
/// dropped. A `fresh` `gx` holds stale values and is overwritten instead
/// (`Bwd::g_in_overwrite`). Small outputs scatter-add through a padded plane
/// ([`col2im_gather_add`]). For other "shifted" geometries the padding
/// entries of `gcols` are first
/// set to zero (they are dropped anyway), so that each tap is one long
/// contiguous add (into the phase planes, then merged) whose padding columns
/// add exactly zero.
fn col2im_add<T: Real>(
    g: &Geom,
    gcols: &mut [T],
    nb: usize,
    (gx, fresh): (&mut [T], bool),
    phases: &mut [T],
) {
    if g.gathers() {
        return col2im_gather_add(g, gcols, nb, (gx, fresh), phases);
    }
    if fresh {
        gx.fill(T::zero());
    }
    let (p, plane) = (g.cols(), g.h * g.w);
    let ncols = nb * p;
    let shifted = g.is_shifted();
    let (hp, wp) = g.phase_dims();
    let shifts = g.shifts();
    for s in 0..nb {
        for c in 0..g.c {
            let dst = &mut gx[(s * g.c + c) * plane..][..plane];
            let base = c * g.kh * g.kw;
            if shifted {
                if g.stride > 1 {
                    phases.fill(T::zero());
                }
                for ki in 0..g.kh {
                    for kj in 0..g.kw {
                        let t = &shifts[ki * g.kw + kj];
                        let src = &mut gcols[(base + ki * g.kw + kj) * ncols + s * p..][..p];
                        if t.w0 > 0 || t.w1 < g.wo {
                            for oh in t.h0..t.h1 {
                                let srow = &mut src[oh * g.wo..][..g.wo];
                                zero_edge(&mut srow[..t.w0]);
                                zero_edge(&mut srow[t.w1..]);
                            }
                        }
                        let planes: &mut [T] = if g.stride == 1 {
                            &mut *dst
                        } else {
                            &mut *phases
                        };
                        let ph = &mut planes[t.phase * hp * wp..][..hp * wp];
                        if t.qb > t.qa {
                            let sa = (t.qa as isize + t.off) as usize;
                            let run = &mut ph[sa..sa + (t.qb - t.qa)];
                            for (d, &v) in run.iter_mut().zip(&src[t.qa..t.qb]) {
                                *d += v;
                            }
                        }
                    }
                }
                if g.stride > 1 {
                    merge_phases_add(g, phases, dst);
                }
                continue;
            }
            g.taps(|t, ki, kj, (h0, h1), (w0, w1)| {
                let src = &gcols[(base + t) * ncols + s * p..][..p];
                for oh in h0..h1 {
                    let ih = oh * g.stride + ki - g.pad;
                    let srow = &src[oh * g.wo + w0..oh * g.wo + w1];
                    let iw0 = w0 * g.stride + kj - g.pad;
                    let drow = &mut dst[ih * g.w..][..g.w];
                    if g.stride == 1 {
                        for (d, &v) in drow[iw0..iw0 + srow.len()].iter_mut().zip(srow) {
                            *d += v;
                        }
                    } else {
                        let taps = drow[iw0..].iter_mut().step_by(g.stride);
                        for (d, &v) in taps.zip(srow) {
                            *d += v;
                        }
                    }
                }
            });
        }
    }
}

/// Reverse of the forward's permute: `gm[oc, (s, q)] = g[s0 + s, oc, q]`, the
/// output adjoint of a chunk as a row-major `[o, nb·p]` matrix.
fn gather_out<T: Real>(g: &[T], o: usize, p: usize, nb: usize, gm: &mut [T]) {
    for s in 0..nb {
        for oc in 0..o {
            gm[oc * nb * p + s * p..][..p].copy_from_slice(&g[(s * o + oc) * p..][..p]);
        }
    }
}

pub(crate) fn conv2d_vjp<T: Real>(b: &mut Bwd<'_, T>, stride: usize, pad: usize) {
    let (xs, ws) = (b.x_shape(0), b.x_shape(1));
    let geom = Geom::new(xs, ws.dim(2), ws.dim(3), stride, pad).expect("checked at record time");
    let (n, o) = (xs.dim(0), ws.dim(0));
    let (rows, p) = (geom.rows(), geom.cols());
    let (x, w, g) = (b.x(0), b.x(1), b.g);
    let (want_x, want_w) = (b.wants(0), b.wants(1));
    if !want_x && !want_w {
        return;
    }
    let one = <T::Base as Real>::one();
    let zero = <T::Base as Real>::zero();
    let chunk = geom.chunk::<T>(n);
    // Scratch: the chunk's columns (reused for Wᵀ·g) and, for chunks of more
    // than one sample, its permuted adjoint. Both are overwritten before being
    // read, so the resize only grows.
    let mut scratch = std::mem::take(b.scratch);
    let gm_len = if chunk > 1 { o * chunk * p } else { 0 };
    let need = rows * chunk * p + gm_len + geom.phase_len();
    if scratch.len() < need {
        scratch.resize(need, T::zero());
    }
    let (cols, rest) = scratch[..need].split_at_mut(rows * chunk * p);
    let (gm, phases) = rest.split_at_mut(gm_len);
    let wm = MatRef::row_major(w, o, rows);
    let sample = xs.numel() / n.max(1);
    let mut x_fresh = None;
    let mut s0 = 0;
    while s0 < n {
        let nb = chunk.min(n - s0);
        let cols = &mut cols[..rows * nb * p];
        let gs = &g[s0 * o * p..(s0 + nb) * o * p];
        let gmat = if nb == 1 {
            MatRef::row_major(gs, o, p)
        } else {
            let gm = &mut gm[..o * nb * p];
            gather_out(gs, o, p, nb, gm);
            MatRef::row_major(&*gm, o, nb * p)
        };
        if want_w {
            im2col(&geom, &x[s0 * sample..(s0 + nb) * sample], nb, cols, phases);
            // ḡW = Σ_chunks g·colsᵀ: the first GEMM overwrites a fresh adjoint.
            let primal = b.wants_primal(1);
            let (gw, fresh) = b.g_in_overwrite(1);
            let beta = if fresh { zero } else { one };
            adjoint_gemm(
                primal,
                one,
                gmat,
                MatRef::row_major(&*cols, rows, nb * p).t(),
                beta,
                gw,
            );
        }
        if want_x {
            gemm(one, wm.t(), gmat, zero, cols);
            // Fresh (stale values, `Bwd::g_in_overwrite`) at the first chunk
            // stays so for the others' samples. Asked after W's adjoint, in
            // case x and W are one node.
            let (gx, first) = b.g_in_overwrite(0);
            let fresh = *x_fresh.get_or_insert(first);
            let gx = &mut gx[s0 * sample..(s0 + nb) * sample];
            col2im_add(&geom, cols, nb, (gx, fresh), phases);
        }
        s0 += nb;
    }
    *b.scratch = scratch;
}

pub(crate) fn max_pool2d_vjp<T: Real>(b: &mut Bwd<'_, T>) {
    if b.wants(0) {
        let (g, idx) = (b.g, b.idx);
        let gx = b.g_in(0);
        for (&gj, &i) in g.iter().zip(idx) {
            gx[i] += gj;
        }
    }
}

/// Pooling geometry of `x [n, c, h, w]`: (planes, h, w, ho, wo).
fn pool_geom(x: Shape, k: usize, stride: usize) -> (usize, usize, usize, usize, usize) {
    let (nc, h, w) = (x.dim(0) * x.dim(1), x.dim(2), x.dim(3));
    (nc, h, w, (h - k) / stride + 1, (w - k) / stride + 1)
}

pub(crate) fn avg_pool2d_vjp<T: Real>(b: &mut Bwd<'_, T>, k: usize, stride: usize) {
    if b.wants(0) {
        let (s, g) = (b.x_shape(0), b.g);
        let (nc, h, w, ho, wo) = pool_geom(s, k, stride);
        let inv = T::from_f64(1.0 / (k * k) as f64);
        let gx = b.g_in(0);
        for plane in 0..nc {
            let gp = &g[plane * ho * wo..][..ho * wo];
            let xp = &mut gx[plane * h * w..][..h * w];
            for oh in 0..ho {
                for ki in 0..k {
                    let row = &mut xp[(oh * stride + ki) * w..][..w];
                    for (ow, &go) in gp[oh * wo..][..wo].iter().enumerate() {
                        let v = go * inv;
                        for d in &mut row[ow * stride..ow * stride + k] {
                            *d += v;
                        }
                    }
                }
            }
        }
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
        let chunk = geom.chunk::<T>(n);
        self.tape
            .record_overwrite(Op::Conv2d { stride, pad }, &[self, weight], out, |f| {
                let (x, w) = (f.x(0), f.x(1));
                // Per chunk of samples: one im2col into `[rows, nb·p]`, ONE GEMM
                // W·cols → `[o, nb·p]`, then a permute into the `[nb, o, p]`
                // output. The buffers are the tape's scratch, overwritten
                // before they are read: it only grows, so a re-recording
                // allocates nothing, and nothing is zeroed per call.
                let om_len = if chunk > 1 { o * chunk * p } else { 0 };
                let len = rows * chunk * p + om_len + geom.phase_len();
                if f.scratch.len() < len {
                    f.scratch.resize(len, T::zero());
                }
                let (cols, rest) = f.scratch[..len].split_at_mut(rows * chunk * p);
                let (om, phases) = rest.split_at_mut(om_len);
                let sample = xs.numel() / n.max(1);
                let wm = MatRef::row_major(w, o, rows);
                let mut s0 = 0;
                while s0 < n {
                    let nb = chunk.min(n - s0);
                    let cols = &mut cols[..rows * nb * p];
                    im2col(&geom, &x[s0 * sample..(s0 + nb) * sample], nb, cols, phases);
                    let cm = MatRef::row_major(&*cols, rows, nb * p);
                    let dst = &mut f.out[s0 * o * p..(s0 + nb) * o * p];
                    if nb == 1 {
                        gemm(one, wm, cm, zero, dst);
                    } else {
                        let om = &mut om[..o * nb * p];
                        gemm(one, wm, cm, zero, om);
                        for s in 0..nb {
                            for oc in 0..o {
                                dst[(s * o + oc) * p..][..p]
                                    .copy_from_slice(&om[oc * nb * p + s * p..][..p]);
                            }
                        }
                    }
                    s0 += nb;
                }
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
        let (nc, h, w, ho, wo) = pool_geom(s, k, stride);
        self.tape
            .record_overwrite(Op::MaxPool2d { k, stride }, &[self], out, |f| {
                let x = f.x(0);
                let start = f.idx.len();
                f.idx.resize(start + out.numel(), 0);
                let arg = &mut f.idx[start..];
                // The first maximum of each window in row-major order (a later
                // element wins only if strictly greater).
                for plane in 0..nc {
                    let base = plane * h * w;
                    let xp = &x[base..base + h * w];
                    let (op, ap) = (
                        &mut f.out[plane * ho * wo..][..ho * wo],
                        &mut arg[plane * ho * wo..][..ho * wo],
                    );
                    for oh in 0..ho {
                        let r0 = oh * stride * w;
                        for ow in 0..wo {
                            let c0 = r0 + ow * stride;
                            let (mut best, mut bi) = (xp[c0], c0);
                            if k == 2 {
                                for i in [c0 + 1, c0 + w, c0 + w + 1] {
                                    if xp[i] > best {
                                        (best, bi) = (xp[i], i);
                                    }
                                }
                            } else {
                                for ki in 0..k {
                                    let r = c0 + ki * w;
                                    for (i, &v) in xp[r..r + k].iter().enumerate() {
                                        if v > best {
                                            (best, bi) = (v, r + i);
                                        }
                                    }
                                }
                            }
                            op[oh * wo + ow] = best;
                            ap[oh * wo + ow] = base + bi;
                        }
                    }
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
        let (nc, h, w, ho, wo) = pool_geom(s, k, stride);
        self.tape
            .record_overwrite(Op::AvgPool2d { k, stride }, &[self], out, |f| {
                let x = f.x(0);
                for plane in 0..nc {
                    let xp = &x[plane * h * w..][..h * w];
                    let op = &mut f.out[plane * ho * wo..][..ho * wo];
                    for oh in 0..ho {
                        for ow in 0..wo {
                            let c0 = oh * stride * w + ow * stride;
                            let mut acc = T::zero();
                            for ki in 0..k {
                                for &v in &xp[c0 + ki * w..c0 + ki * w + k] {
                                    acc += v;
                                }
                            }
                            op[oh * wo + ow] = acc * inv;
                        }
                    }
                }
            })
    }
}

#[cfg(test)]
mod tests {
    //! The im2col/GEMM convolution and the pooling fast paths against direct
    //! loops over the definitions. Unit tests run with a tiny chunk budget
    //! ([`COLS_BYTES`]), so these shapes exercise per-sample GEMMs, multi-sample
    //! chunks with a short last chunk, the gather through a padded plane
    //! (small outputs), the shifted copies (stride 1, and strides 2 and 3
    //! through phase planes), and the row-by-row path.
    use crate::{Dual, Tape, Tensor, Var};

    fn data(len: usize, seed: usize) -> Vec<f64> {
        (0..len)
            .map(|i| ((i * 37 + seed * 11) as f64 * 0.731).sin())
            .collect()
    }

    /// Direct convolution: y[s,o,i,j] = Σ_{c,ki,kj} x[s,c,i·st+ki−pad,j·st+kj−pad]·w[o,c,ki,kj],
    /// and, for an output adjoint g, ḡx and ḡw by the same sum (each product's
    /// partials are g times the other factor).
    #[allow(clippy::type_complexity)]
    fn direct(
        xd: [usize; 4],
        wd: [usize; 4],
        st: usize,
        pad: usize,
        x: &[f64],
        w: &[f64],
        g: &[f64],
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let [n, c, h, wi] = xd;
        let [o, _, kh, kw] = wd;
        let ho = (h + 2 * pad - kh) / st + 1;
        let wo = (wi + 2 * pad - kw) / st + 1;
        let mut y = vec![0.0; n * o * ho * wo];
        let (mut gx, mut gw) = (vec![0.0; x.len()], vec![0.0; w.len()]);
        for s in 0..n {
            for oc in 0..o {
                for i in 0..ho {
                    for j in 0..wo {
                        let yi = ((s * o + oc) * ho + i) * wo + j;
                        for ci in 0..c {
                            for ki in 0..kh {
                                for kj in 0..kw {
                                    let ih = (i * st + ki) as isize - pad as isize;
                                    let iw = (j * st + kj) as isize - pad as isize;
                                    if ih < 0 || iw < 0 || ih >= h as isize || iw >= wi as isize {
                                        continue;
                                    }
                                    let xi = ((s * c + ci) * h + ih as usize) * wi + iw as usize;
                                    let wj = ((oc * c + ci) * kh + ki) * kw + kj;
                                    y[yi] += x[xi] * w[wj];
                                    gx[xi] += g[yi] * w[wj];
                                    gw[wj] += g[yi] * x[xi];
                                }
                            }
                        }
                    }
                }
            }
        }
        (y, gx, gw)
    }

    fn close(a: &[f64], b: &[f64], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-12 * (1.0 + y.abs()),
                "{what}[{i}]: {x} vs {y}"
            );
        }
    }

    #[test]
    fn conv2d_matches_direct_loops_on_every_path() {
        // (x dims, w dims, stride, pad). Outputs of at most GATHER_COLS
        // positions gather from a padded plane; the last five are larger,
        // for the phase, shifted-copy and row-by-row paths.
        let cases: [([usize; 4], [usize; 4], usize, usize); 21] = [
            ([3, 1, 6, 7], [4, 1, 3, 3], 1, 1), // p ≥ rows: per sample, "same" copies
            ([5, 4, 4, 4], [3, 4, 3, 3], 1, 1), // rows > p: chunks of 2, 2, 1
            ([5, 3, 5, 6], [2, 3, 3, 3], 2, 1), // stride 2: phase split, odd height
            ([3, 2, 7, 7], [2, 2, 3, 3], 2, 1), // stride 2, odd sizes
            ([2, 3, 6, 8], [2, 3, 2, 2], 2, 0), // stride 2, 2×2 kernel, no padding
            ([2, 2, 9, 9], [3, 2, 3, 3], 3, 1), // stride 3 phases
            ([3, 1, 28, 28], [4, 1, 3, 3], 2, 1), // stride 2, per sample
            ([2, 2, 2, 2], [2, 2, 3, 3], 2, 1), // stride 2, taps reading only padding
            ([2, 1, 1, 1], [1, 1, 3, 3], 2, 1), // a single pixel
            ([3, 2, 3, 3], [2, 2, 3, 3], 2, 1), // 3 → 2
            ([4, 2, 7, 5], [3, 2, 2, 3], 3, 2), // non-square kernel, row by row
            ([2, 2, 5, 5], [2, 2, 5, 5], 1, 2), // "same" with a 5×5 kernel
            ([3, 2, 3, 4], [2, 2, 3, 3], 1, 0), // valid (no padding)
            ([2, 3, 4, 4], [2, 3, 1, 1], 1, 0), // 1×1: "same" without padding
            ([2, 1, 2, 2], [1, 1, 3, 3], 1, 2), // padding wider than the image
            ([7, 6, 3, 3], [2, 6, 3, 3], 1, 1), // many chunks
            ([2, 2, 10, 10], [3, 2, 3, 3], 1, 1), // "same" copies, 100 outputs
            ([2, 2, 17, 19], [2, 2, 3, 3], 2, 1), // stride-2 phases, odd sizes, 90
            ([2, 2, 25, 25], [2, 2, 3, 3], 3, 1), // stride-3 phases, 81
            ([2, 2, 12, 12], [2, 2, 3, 3], 1, 0), // valid, row by row, 100
            ([2, 1, 20, 15], [2, 1, 2, 3], 2, 0), // row by row, stride 2, 70
        ];
        let geom = |&(xd, wd, st, pad): &([usize; 4], [usize; 4], usize, usize)| {
            super::Geom::new(crate::Shape::new(&xd), wd[2], wd[3], st, pad).expect("fits")
        };
        let (gathers, phases, copies, rows) = cases.iter().map(geom).fold((0, 0, 0, 0), |n, g| {
            match (g.gathers(), g.is_shifted(), g.stride > 1) {
                (true, ..) => (n.0 + 1, n.1, n.2, n.3),
                (false, true, true) => (n.0, n.1 + 1, n.2, n.3),
                (false, true, false) => (n.0, n.1, n.2 + 1, n.3),
                (false, false, _) => (n.0, n.1, n.2, n.3 + 1),
            }
        });
        assert!(gathers >= 10 && phases >= 3 && copies >= 1 && rows >= 2);
        for (k, &(xd, wd, st, pad)) in cases.iter().enumerate() {
            let x = data(xd.iter().product(), k);
            let w = data(wd.iter().product(), k + 100);
            let tape = Tape::<f64>::new();
            let xv = tape.var(&Tensor::new(xd, x.clone()));
            let wv = tape.var(&Tensor::new(wd, w.clone()));
            let y = xv.conv2d(wv, st, pad);
            let g = data(y.shape().numel(), k + 200);
            let (ey, egx, egw) = direct(xd, wd, st, pad, &x, &w, &g);
            let gv = tape.constant(&Tensor::new(y.shape().dims(), g));
            let loss = (y * gv).sum();
            let case = format!("case {k}: x {xd:?} w {wd:?} stride {st} pad {pad}");
            close(y.value().data(), &ey, &format!("{case}: y"));
            // Twice: the second sweep finds the first's adjoints (stale
            // values) in the buffers it overwrites.
            for sweep in 0..2 {
                tape.backward(loss);
                let (gx, gw) = (tape.grad(xv), tape.grad(wv));
                close(gx.data(), &egx, &format!("{case}: gx, sweep {sweep}"));
                close(gw.data(), &egw, &format!("{case}: gw, sweep {sweep}"));
            }
        }
    }

    /// One case per path: gathering, stride-2 phases, shifted copies, row by
    /// row: (x dims, w dims, stride, pad).
    const PATHS: [([usize; 4], [usize; 4], usize, usize); 4] = [
        ([3, 2, 5, 5], [2, 2, 3, 3], 2, 1),
        ([2, 2, 17, 19], [2, 2, 3, 3], 2, 1),
        ([2, 2, 10, 10], [3, 2, 3, 3], 1, 1),
        ([2, 2, 12, 12], [2, 2, 3, 3], 1, 0),
    ];

    /// x and W of case `k` (values from [`data`]) and their variables.
    fn operands(
        tape: &Tape<f64>,
        k: usize,
        xd: [usize; 4],
        wd: [usize; 4],
    ) -> (Vec<f64>, Vec<f64>, Var<'_, f64>, Var<'_, f64>) {
        let (x, w) = (
            data(xd.iter().product(), k),
            data(wd.iter().product(), k + 9),
        );
        let xv = tape.var(&Tensor::new(xd, x.clone()));
        let wv = tape.var(&Tensor::new(wd, w.clone()));
        (x, w, xv, wv)
    }

    #[test]
    fn conv2d_adds_onto_an_adjoint_already_there() {
        // x's adjoint touched before the conv's VJP (a later op on x), and x
        // as both operands: the VJP must add, on every path, not overwrite.
        for (k, &(xd, wd, st, pad)) in PATHS.iter().enumerate() {
            let tape = Tape::<f64>::new();
            let (x, w, xv, wv) = operands(&tape, k, xd, wd);
            let c = data(x.len(), k + 20);
            let y = xv.conv2d(wv, st, pad);
            let g = data(y.shape().numel(), k + 30);
            let gv = tape.constant(&Tensor::new(y.shape().dims(), g.clone()));
            let cv = tape.constant(&Tensor::new(xd, c.clone()));
            let loss = (y * gv).sum() + (xv * cv).sum();
            let (_, egx, _) = direct(xd, wd, st, pad, &x, &w, &g);
            let want: Vec<f64> = egx.iter().zip(&c).map(|(a, b)| a + b).collect();
            for sweep in 0..2 {
                tape.backward(loss);
                let what = format!("case {k}: gx + c, sweep {sweep}");
                close(tape.grad(xv).data(), &want, &what);
            }
        }
        // conv(x, x): x [2, 2, 3, 3] is its own 3×3 kernel.
        let tape = Tape::<f64>::new();
        let xd = [2, 2, 3, 3];
        let (x, _, xv, _) = operands(&tape, 5, xd, [0; 4]);
        let y = xv.conv2d(xv, 1, 1);
        let g = data(y.shape().numel(), 6);
        let gv = tape.constant(&Tensor::new(y.shape().dims(), g.clone()));
        let loss = (y * gv).sum();
        let (_, egx, egw) = direct(xd, xd, 1, 1, &x, &x, &g);
        let want: Vec<f64> = egx.iter().zip(&egw).map(|(a, b)| a + b).collect();
        for sweep in 0..2 {
            tape.backward(loss);
            let what = format!("conv(x, x), sweep {sweep}");
            close(tape.grad(xv).data(), &want, &what);
        }
    }

    #[test]
    fn conv2d_forward_ignores_stale_scratch() {
        // The forward's working buffers are the tape's scratch, which a
        // backward sweep leaves holding its own values (NaN here, from a NaN
        // seed): a later conv must overwrite, never read, them, on every
        // path.
        for (k, &(xd, wd, st, pad)) in PATHS.iter().enumerate() {
            let tape = Tape::<f64>::new();
            let (x, w, xv, wv) = operands(&tape, k, xd, wd);
            let y = xv.conv2d(wv, st, pad);
            let nan = vec![f64::NAN; y.shape().numel()];
            let nan = tape.constant(&Tensor::new(y.shape().dims(), nan));
            tape.backward((y * nan).sum());
            let seeded = tape.grad(wv).data().iter().all(|g| g.is_nan());
            assert!(seeded, "case {k}: the NaN seed reached W");
            let again = xv.conv2d(wv, st, pad);
            let zero = vec![0.0; again.shape().numel()];
            let (ey, _, _) = direct(xd, wd, st, pad, &x, &w, &zero);
            close(
                again.value().data(),
                &ey,
                &format!("case {k}: y after a NaN sweep"),
            );
        }
    }

    #[test]
    fn conv2d_tangents_follow_the_product_rule() {
        // y is bilinear in (x, w): ẏ = conv(ẋ, w) + conv(x, ẇ), checked per case
        // on the chunked and per-sample paths.
        for (xd, wd, st, pad) in [
            ([5, 4, 4, 4], [3, 4, 3, 3], 1, 1),
            ([3, 1, 6, 7], [4, 1, 3, 3], 2, 1),
        ] {
            let (x, xt) = (data(xd.iter().product(), 1), data(xd.iter().product(), 2));
            let (w, wt) = (data(wd.iter().product(), 3), data(wd.iter().product(), 4));
            let zero = vec![0.0; 1 << 12];
            let (y, _, _) = direct(xd, wd, st, pad, &x, &w, &zero);
            let (y1, _, _) = direct(xd, wd, st, pad, &xt, &w, &zero);
            let (y2, _, _) = direct(xd, wd, st, pad, &x, &wt, &zero);
            let dual =
                |v: &[f64], d: &[f64]| v.iter().zip(d).map(|(&v, &d)| Dual::new(v, d)).collect();
            let tape = Tape::<Dual<f64>>::new();
            let xv = tape.var(&Tensor::new(xd, dual(&x, &xt)));
            let wv = tape.var(&Tensor::new(wd, dual(&w, &wt)));
            let out = xv.conv2d(wv, st, pad).value();
            let v: Vec<f64> = out.data().iter().map(|d| d.v).collect();
            let d: Vec<f64> = out.data().iter().map(|d| d.d).collect();
            let ed: Vec<f64> = y1.iter().zip(&y2).map(|(a, b)| a + b).collect();
            close(&v, &y, "value");
            close(&d, &ed, "tangent");
        }
    }

    #[test]
    fn pooling_matches_direct_loops() {
        for (k, st) in [(2, 2), (2, 1), (3, 1), (3, 2)] {
            let xd = [2, 3, 7, 6];
            let x = data(xd.iter().product(), k * 10 + st);
            let (ho, wo) = ((7 - k) / st + 1, (6 - k) / st + 1);
            let g = data(6 * ho * wo, 7);
            let (mut emax, mut eavg) = (vec![0.0; 6 * ho * wo], vec![0.0; 6 * ho * wo]);
            let (mut gmax, mut gavg) = (vec![0.0; x.len()], vec![0.0; x.len()]);
            for pl in 0..6 {
                for i in 0..ho {
                    for j in 0..wo {
                        let oi = (pl * ho + i) * wo + j;
                        let mut best = (f64::NEG_INFINITY, 0);
                        for a in 0..k {
                            for b in 0..k {
                                let xi = (pl * 7 + i * st + a) * 6 + j * st + b;
                                if x[xi] > best.0 {
                                    best = (x[xi], xi);
                                }
                                eavg[oi] += x[xi] / (k * k) as f64;
                                gavg[xi] += g[oi] / (k * k) as f64;
                            }
                        }
                        emax[oi] = best.0;
                        gmax[best.1] += g[oi];
                    }
                }
            }
            let tape = Tape::<f64>::new();
            let xv = tape.var(&Tensor::new(xd, x.clone()));
            let (mx, av) = (xv.max_pool2d(k, st), xv.avg_pool2d(k, st));
            let gv = tape.constant(&Tensor::new(mx.shape().dims(), g.clone()));
            let what = format!("k {k} stride {st}");
            close(mx.value().data(), &emax, &format!("max {what}"));
            close(av.value().data(), &eavg, &format!("avg {what}"));
            tape.backward((mx * gv).sum());
            close(tape.grad(xv).data(), &gmax, &format!("max grad {what}"));
            let tape = Tape::<f64>::new();
            let xv = tape.var(&Tensor::new(xd, x.clone()));
            let av = xv.avg_pool2d(k, st);
            let gv = tape.constant(&Tensor::new(av.shape().dims(), g));
            tape.backward((av * gv).sum());
            close(tape.grad(xv).data(), &gavg, &format!("avg grad {what}"));
        }
    }
}
