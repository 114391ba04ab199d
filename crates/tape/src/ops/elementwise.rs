//! Elementwise ops: binary with NumPy broadcasting, and unary.
//!
//! | op | forward | VJP (`g` = output adjoint) |
//! |---|---|---|
//! | `a + b` | a + b | ḡa = g, ḡb = g (summed over broadcast axes) |
//! | `a - b` | a − b | ḡa = g, ḡb = −g |
//! | `a * b` | a·b | ḡa = g·b, ḡb = g·a |
//! | `a / b` | a/b | ḡa = g/b, ḡb = −g·out/b |
//! | `neg` | −x | −g |
//! | `add_scalar(c)` | x + c | g |
//! | `mul_scalar(c)` | c·x | c·g |
//! | `exp` | eˣ | g·out |
//! | `log` | ln x | g/x |
//! | `sqrt` | √x | g/(2·out) |
//! | `powf(p)` | xᵖ | g·p·xᵖ⁻¹ |
//! | `square` | x² | 2·g·x |
//! | `tanh` | tanh x | g·(1 − out²) |
//! | `sigmoid` | σ(x) | g·out·(1 − out) |
//! | `relu` | max(x, 0) | g·\[x > 0\] (kink at 0: derivative 0) |
//! | `softplus` | ln(1 + eˣ) | g·σ(x) (σ(x) saved by the forward, from its e^−\|x\|) |
//! | `abs` | \|x\| | g·sign(x) (kink at 0: derivative 0) |
//! | `maximum(a, b)` | max(a, b) (broadcasting) | g to a where a ≥ b, else to b (ties go to a) |
//! | `minimum(a, b)` | min(a, b) (broadcasting) | g to a where a ≤ b, else to b (ties go to a) |
//! | `clamp(lo, hi)` | min(max(x, lo), hi) | g·\[lo < x < hi\] (0 outside and at the kinks) |
//! | `where_(c, a, b)` | a where c > 0, else b (broadcasting all three) | g to the selected operand; never to c |
//! | `x.mul_segments(a, ends)` | x_k·a_{s(k)}, one a_i per segment of the vector x | ḡx = g·a_{s(k)}, ḡa_i = Σ_{segment i} g·x |
//!
//! The JVP of each op is its forward rule evaluated on dual numbers.

use std::ops::{Add, Div, Mul, Neg, Sub};

use crate::kernels::pair::parts_mut;
use crate::ops::Op;
use crate::real::Real;
use crate::shape::{broadcast_shapes, shape_panic, Shape, MAX_RANK};
use crate::tape::{Bwd, Var};

/// Calls `f(o, ia, ib)` for every output index `o` of the broadcast of `a` and
/// `b`, with the matching flat indices into `a` and `b`, in row-major order.
pub(crate) fn for_each_broadcast(
    out: Shape,
    a: Shape,
    b: Shape,
    mut f: impl FnMut(usize, usize, usize),
) {
    let n = out.numel();
    if a == out && b == out {
        (0..n).for_each(|i| f(i, i, i));
        return;
    }
    if a == out && b.numel() == 1 {
        (0..n).for_each(|i| f(i, i, 0));
        return;
    }
    if b == out && a.numel() == 1 {
        (0..n).for_each(|i| f(i, 0, i));
        return;
    }
    let d = out.padded4();
    let (sa, sb) = (a.broadcast_strides4(), b.broadcast_strides4());
    let mut o = 0;
    for i0 in 0..d[0] {
        for i1 in 0..d[1] {
            for i2 in 0..d[2] {
                let ba = i0 * sa[0] + i1 * sa[1] + i2 * sa[2];
                let bb = i0 * sb[0] + i1 * sb[1] + i2 * sb[2];
                for i3 in 0..d[3] {
                    f(o, ba + i3 * sa[3], bb + i3 * sb[3]);
                    o += 1;
                }
            }
        }
    }
    debug_assert_eq!(o, n);
    let _ = MAX_RANK;
}

/// Whether maximum/minimum selects its first operand (ties go to the first).
// Always inlined: called with a constant `op` inside loops, the `match` folds away.
#[inline(always)]
fn picks_first<T: Real>(op: &Op, a: T, b: T) -> bool {
    match op {
        Op::Maximum => a >= b,
        Op::Minimum => a <= b,
        _ => unreachable!(),
    }
}

// Always inlined: called with a constant `op` inside loops, the `match` folds away.
#[inline(always)]
fn binary_forward<T: Real>(op: &Op, a: T, b: T) -> T {
    match op {
        Op::Add => a + b,
        Op::Sub => a - b,
        Op::Mul => a * b,
        Op::Div => a / b,
        Op::Maximum | Op::Minimum => {
            if picks_first(op, a, b) {
                a
            } else {
                b
            }
        }
        _ => unreachable!(),
    }
}

#[track_caller]
fn binary<'t, T: Real>(op: Op, a: Var<'t, T>, b: Var<'t, T>) -> Var<'t, T> {
    let (sa, sb) = (a.shape(), b.shape());
    // `let else`, not `unwrap_or_else`: a closure would lose `#[track_caller]`.
    let Some(out) = broadcast_shapes(sa, sb) else {
        shape_panic(
            op.name(),
            &[("lhs", sa), ("rhs", sb)],
            format_args!("shapes do not broadcast"),
        )
    };
    let op2 = op.clone();
    a.tape.record_overwrite(op, &[a, b], out, |f| {
        let (x, y) = (f.x(0), f.x(1));
        let o = &mut *f.out;
        // One loop per op, so the rule's `match` folds away inside the loop.
        match op2 {
            Op::Add => binary_map(out, sa, sb, x, y, o, |a, b| binary_forward(&Op::Add, a, b)),
            Op::Sub => binary_map(out, sa, sb, x, y, o, |a, b| binary_forward(&Op::Sub, a, b)),
            Op::Mul => binary_map(out, sa, sb, x, y, o, |a, b| binary_forward(&Op::Mul, a, b)),
            Op::Div => binary_map(out, sa, sb, x, y, o, |a, b| binary_forward(&Op::Div, a, b)),
            _ => binary_map(out, sa, sb, x, y, o, |a, b| binary_forward(&op2, a, b)),
        }
    })
}

/// Whether `s` broadcasts against `out` as one row repeated over the leading
/// axes (a bias `[m]` or `[1, m]` added to `[n, m]`).
#[inline]
fn is_row(s: Shape, out: Shape) -> bool {
    out.rank() >= 1
        && s.rank() >= 1
        && s.dim(s.rank() - 1) == s.numel()
        && s.numel() == out.dim(out.rank() - 1)
}

/// If `s` broadcasts against `out` as one block of consecutive axes repeated
/// over the others (a per-channel bias `[C, 1, 1]` on `[N, C, H, W]`, a row, a
/// scalar), `(outer, mid, inner)`: element `(p, c, t)` of the output, at
/// `(p·mid + c)·inner + t`, reads element `c` of `s`.
#[inline]
fn block_broadcast(s: Shape, out: Shape) -> Option<(usize, usize, usize)> {
    let (p, o) = (s.padded4(), out.padded4());
    let Some(first) = (0..MAX_RANK).find(|&i| p[i] != 1) else {
        return Some((1, 1, out.numel()));
    };
    let last = (0..MAX_RANK).rev().find(|&i| p[i] != 1)?;
    if (first..=last).any(|i| p[i] != o[i]) {
        return None;
    }
    let prod = |d: &[usize]| d.iter().product::<usize>();
    Some((
        prod(&o[..first]),
        prod(&p[first..=last]),
        prod(&o[last + 1..]),
    ))
}

/// `o[i] = f(x[ia], y[ib])` over the broadcast, with contiguous fast paths for
/// equal shapes, a broadcast row and a broadcast scalar (same values and order
/// as the general loop).
#[inline]
fn binary_map<T: Real>(
    out: Shape,
    sa: Shape,
    sb: Shape,
    x: &[T],
    y: &[T],
    o: &mut [T],
    f: impl Fn(T, T) -> T + Sync,
) {
    if o.is_empty() {
        return;
    }
    if sa == out && sb == out {
        for ((o, &a), &b) in o.iter_mut().zip(x).zip(y) {
            *o = f(a, b);
        }
    } else if sa == out && is_row(sb, out) {
        // A dense layer's bias: large ones cut in two halves of rows between
        // two threads (each element computed alone, so the same bits).
        let m = y.len();
        parts_mut(o, m, o.len(), &|rows, o| {
            let x = &x[rows.start * m..rows.end * m];
            for (orow, xrow) in o.chunks_exact_mut(m).zip(x.chunks_exact(m)) {
                for ((o, &a), &b) in orow.iter_mut().zip(xrow).zip(y) {
                    *o = f(a, b);
                }
            }
        });
    } else if sb == out && is_row(sa, out) {
        let m = x.len();
        for (orow, yrow) in o.chunks_exact_mut(m).zip(y.chunks_exact(m)) {
            for ((o, &a), &b) in orow.iter_mut().zip(x).zip(yrow) {
                *o = f(a, b);
            }
        }
    } else if sa == out && sb.numel() == 1 {
        let b = y[0];
        for (o, &a) in o.iter_mut().zip(x) {
            *o = f(a, b);
        }
    } else if let (true, Some((_, mid, inner))) = (sa == out, block_broadcast(sb, out)) {
        // A per-channel y: runs of `inner` elements share one y.
        for (ob, xb) in o
            .chunks_exact_mut(mid * inner)
            .zip(x.chunks_exact(mid * inner))
        {
            for ((orun, xrun), &b) in ob
                .chunks_exact_mut(inner)
                .zip(xb.chunks_exact(inner))
                .zip(y)
            {
                for (o, &a) in orun.iter_mut().zip(xrun) {
                    *o = f(a, b);
                }
            }
        }
    } else {
        for_each_broadcast(out, sa, sb, |i, ia, ib| o[i] = f(x[ia], y[ib]));
    }
}

/// `dst[i_dst] += h(g[i], x[ia], y[ib], out[i])` over the broadcast, where
/// `i_dst` is `ia` if `TO_A` else `ib`; contiguous fast paths for equal shapes
/// and a broadcast row `y` (the bias of a dense layer). The order of the
/// additions into each `dst` element is the general loop's (row-major).
/// `FRESH`: `dst` holds stale values and is written as `0 + h(…)`, the bits
/// of a zero-fill and `+=` without the fill; only for a `dst` shaped like the
/// output (each element written once).
#[inline]
#[allow(clippy::too_many_arguments)]
fn accumulate<T: Real, const TO_A: bool, const FRESH: bool>(
    out: Shape,
    sa: Shape,
    sb: Shape,
    dst: &mut [T],
    g: &[T],
    (x, y, o): (&[T], &[T], &[T]),
    h: impl Fn(T, T, T, T) -> T + Sync,
) {
    if g.is_empty() {
        return;
    }
    debug_assert!(
        !FRESH || dst.len() == out.numel(),
        "accumulate: a fresh dst must be shaped like the output"
    );
    // `0 + v` into a fresh adjoint (the bits of zero-fill then `+=`), else `+=`.
    let start = |d: T| if FRESH { T::zero() } else { d };
    if sa == out && sb == out {
        for (((d, &gi), (&xi, &yi)), &oi) in dst.iter_mut().zip(g).zip(x.iter().zip(y)).zip(o) {
            *d = start(*d) + h(gi, xi, yi, oi);
        }
    } else if sa == out && is_row(sb, out) {
        // A dense layer's bias. Large ones are cut in two between two threads
        // (`parts_mut`): ḡx by rows, ḡy (column sums) by columns, each column
        // still summed over the rows in order, so the same bits.
        let m = y.len();
        let rows = g.len() / m;
        let row_part = |r: usize, cols: &std::ops::Range<usize>, d: &mut [T]| {
            let at = r * m + cols.start..r * m + cols.end;
            let terms = d.iter_mut().zip(&g[at.clone()]);
            for (((d, &gi), (&xi, &yj)), &oi) in terms
                .zip(x[at.clone()].iter().zip(&y[cols.clone()]))
                .zip(&o[at])
            {
                *d = start(*d) + h(gi, xi, yj, oi);
            }
        };
        if TO_A {
            parts_mut(dst, m, g.len(), &|part_rows, d| {
                for (r, d) in part_rows.zip(d.chunks_exact_mut(m)) {
                    row_part(r, &(0..m), d);
                }
            });
        } else {
            parts_mut(&mut dst[..m], 1, g.len(), &|cols, d| {
                for r in 0..rows {
                    row_part(r, &cols, d);
                }
            });
        }
    } else if let (true, Some((_, mid, inner))) = (sa == out, block_broadcast(sb, out)) {
        // A per-channel y: runs of `inner` elements share one y (and, for ḡy,
        // one accumulator, added to in the general loop's order).
        let blk = mid * inner;
        for (p, (gb, (xb, ob))) in g
            .chunks_exact(blk)
            .zip(x.chunks_exact(blk).zip(o.chunks_exact(blk)))
            .enumerate()
        {
            for (c, ((grun, xrun), orun)) in gb
                .chunks_exact(inner)
                .zip(xb.chunks_exact(inner))
                .zip(ob.chunks_exact(inner))
                .enumerate()
            {
                let yc = y[c];
                if TO_A {
                    let at = p * blk + c * inner;
                    for (((d, &gi), &xi), &oi) in
                        dst[at..at + inner].iter_mut().zip(grun).zip(xrun).zip(orun)
                    {
                        *d = start(*d) + h(gi, xi, yc, oi);
                    }
                } else {
                    let mut acc = dst[c];
                    for ((&gi, &xi), &oi) in grun.iter().zip(xrun).zip(orun) {
                        acc += h(gi, xi, yc, oi);
                    }
                    dst[c] = acc;
                }
            }
        }
    } else {
        for_each_broadcast(out, sa, sb, |i, ia, ib| {
            let d = &mut dst[if TO_A { ia } else { ib }];
            *d = start(*d) + h(g[i], x[ia], y[ib], o[i]);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Dual, Tensor};

    fn vals(n: usize, seed: f64) -> Vec<f64> {
        (0..n)
            .map(|i| ((i as f64 + 1.0) * seed).sin() * 2.0)
            .collect()
    }

    /// The per-channel fast paths give the general loop's bits, forward and
    /// both adjoints, and `block_broadcast` recognises exactly the block shapes.
    #[test]
    fn block_broadcast_paths_match_the_general_loop() {
        let out = Shape::new(&[2, 3, 4, 5]);
        for (dims, is_block) in [
            (&[3, 1, 1][..], true),
            (&[1, 3, 4, 1], true),
            (&[2, 3, 1, 1], true),
            (&[3, 4, 5], true),
            (&[1], true),
            (&[3, 1, 5], false),
            (&[2, 1, 4, 1], false),
        ] {
            let sb = Shape::new(dims);
            assert_eq!(block_broadcast(sb, out).is_some(), is_block, "{dims:?}");
            let (x, y) = (vals(out.numel(), 0.37), vals(sb.numel(), 0.53));
            let (g, o) = (vals(out.numel(), 0.11), vals(out.numel(), 0.29));
            let f = |a: f64, b: f64| a * b - a / b;
            let (mut fast, mut slow) = (vec![0.0; out.numel()], vec![0.0; out.numel()]);
            binary_map(out, out, sb, &x, &y, &mut fast, f);
            for_each_broadcast(out, out, sb, |i, ia, ib| slow[i] = f(x[ia], y[ib]));
            assert_eq!(fast, slow, "forward {dims:?}");
            let h = |g: f64, x: f64, y: f64, o: f64| g * y / x + o;
            let (mut fa, mut sa) = (vals(out.numel(), 0.7), vals(out.numel(), 0.7));
            accumulate::<f64, true, false>(out, out, sb, &mut fa, &g, (&x, &y, &o), h);
            for_each_broadcast(out, out, sb, |i, ia, ib| {
                sa[ia] += h(g[i], x[ia], y[ib], o[i])
            });
            assert_eq!(fa, sa, "adjoint of x {dims:?}");
            let (mut fb, mut sbv) = (vals(sb.numel(), 0.9), vals(sb.numel(), 0.9));
            accumulate::<f64, false, false>(out, out, sb, &mut fb, &g, (&x, &y, &o), h);
            for_each_broadcast(out, out, sb, |i, ia, ib| {
                sbv[ib] += h(g[i], x[ia], y[ib], o[i])
            });
            assert!(
                fb.iter().zip(&sbv).all(|(a, b)| a.to_bits() == b.to_bits()),
                "adjoint of y {dims:?}: {fb:?} vs {sbv:?}"
            );
        }
    }

    /// z = a·x + b·y, then Σ z·w (+ Σ x·w with `reuse`, so x's adjoint is
    /// accumulated into, not fresh); y = x with `same`. `fused` records z
    /// as one `axpby` node, else as `mul_scalar + mul_scalar`.
    fn axpby_bits<T: Real>(
        data: [&Tensor<T>; 3],
        fused: bool,
        same: bool,
        reuse: bool,
        bits: impl Fn(T) -> u64,
    ) -> Vec<u64> {
        let t = crate::Tape::<T>::new();
        let (x, y, w) = (t.var(data[0]), t.var(data[1]), t.var(data[2]));
        let y2 = if same { x } else { y };
        let z = if fused {
            x.axpby(0.9, y2, 0.1)
        } else {
            x.mul_scalar(0.9) + y2.mul_scalar(0.1)
        };
        let mut l = (z * w).sum();
        if reuse {
            l = l + (x * w).sum();
        }
        t.backward(l);
        let mut out: Vec<u64> = z.value().data().iter().map(|&v| bits(v)).collect();
        for v in [x, y, w] {
            out.extend(t.grad(v).data().iter().map(|&v| bits(v)));
        }
        out
    }

    /// `axpby` gives the bits of its three-node form, values and adjoints,
    /// on f32 and dual numbers, with signed zeros in x, y and the adjoint w,
    /// x fresh or reused, and y = x.
    #[test]
    fn axpby_has_the_bits_of_two_scaled_terms_added() {
        let raw = |seed: f64| {
            let mut v = vals(37, seed);
            v[3] = -0.0;
            v[5] = 0.0;
            v[7] = -0.0;
            v
        };
        let (x, y, w) = (raw(0.37), raw(0.53), raw(0.71));
        let f32s = |v: &[f64]| Tensor::vector(v.iter().map(|&a| a as f32).collect());
        let duals = |v: &[f64], u: &[f64]| {
            let d = v
                .iter()
                .zip(u)
                .map(|(&a, &b)| Dual::new(a as f32, b as f32));
            Tensor::vector(d.collect())
        };
        let (xf, yf, wf) = (f32s(&x), f32s(&y), f32s(&w));
        let (xd, yd, wd) = (duals(&x, &w), duals(&y, &x), duals(&w, &y));
        for same in [false, true] {
            for reuse in [false, true] {
                let f = |fused| {
                    axpby_bits([&xf, &yf, &wf], fused, same, reuse, |v: f32| {
                        v.to_bits() as u64
                    })
                };
                assert_eq!(f(true), f(false), "f32, same {same}, reuse {reuse}");
                let dbits = |v: Dual<f32>| (v.v.to_bits() as u64) << 32 | v.d.to_bits() as u64;
                let d = |fused| axpby_bits([&xd, &yd, &wd], fused, same, reuse, dbits);
                assert_eq!(d(true), d(false), "dual, same {same}, reuse {reuse}");
            }
        }
    }
}

/// Input `k`'s adjoint buffer and whether it is fresh (stale values, to be
/// overwritten): only an input shaped like the output (`same`) is handed
/// out fresh, as only then does one sweep of the rule write each element
/// once; a broadcast input is zero-filled on first touch ([`Bwd::g_in`]).
fn adjoint_of<'b, T: Real>(b: &'b mut Bwd<'_, T>, k: usize, same: bool) -> (&'b mut [T], bool) {
    if same {
        b.g_in_overwrite(k)
    } else {
        (b.g_in(k), false)
    }
}

/// [`accumulate`] with `FRESH` chosen at run time.
#[inline]
#[allow(clippy::too_many_arguments)]
fn accumulate_into<T: Real, const TO_A: bool>(
    fresh: bool,
    out: Shape,
    sa: Shape,
    sb: Shape,
    dst: &mut [T],
    g: &[T],
    v: (&[T], &[T], &[T]),
    h: impl Fn(T, T, T, T) -> T + Sync,
) {
    if fresh {
        accumulate::<T, TO_A, true>(out, sa, sb, dst, g, v, h)
    } else {
        accumulate::<T, TO_A, false>(out, sa, sb, dst, g, v, h)
    }
}

pub(crate) fn binary_vjp<T: Real>(b: &mut Bwd<'_, T>) {
    let (out, sa, sb) = (b.node.shape, b.x_shape(0), b.x_shape(1));
    let (x, y, g, o) = (b.x(0), b.x(1), b.g, b.out());
    let op = b.node.op.clone();
    if matches!(op, Op::Add | Op::Sub | Op::Mul | Op::Div) {
        // ḡa += g·∂out/∂a and ḡb += g·∂out/∂b, one loop per op (`-=` written as
        // `+= −v`, which is the same IEEE result).
        let v = (x, y, o);
        if b.wants(0) {
            let (ga, fresh) = adjoint_of(b, 0, sa == out);
            macro_rules! acc {
                ($h:expr) => {
                    accumulate_into::<T, true>(fresh, out, sa, sb, ga, g, v, $h)
                };
            }
            match op {
                Op::Add | Op::Sub => acc!(|g, _, _, _| g),
                Op::Mul => acc!(|g, _, y, _| g * y),
                _ => acc!(|g, _, y, _| g / y),
            }
        }
        if b.wants(1) {
            let (gb, fresh) = adjoint_of(b, 1, sb == out);
            macro_rules! acc {
                ($h:expr) => {
                    accumulate_into::<T, false>(fresh, out, sa, sb, gb, g, v, $h)
                };
            }
            match op {
                Op::Add => acc!(|g, _, _, _| g),
                Op::Sub => acc!(|g, _, _, _| -g),
                Op::Mul => acc!(|g, x, _, _| g * x),
                _ => acc!(|g, _, y, o| -(g * o / y)),
            }
        }
        return;
    }
    if b.wants(0) {
        let ga = b.g_in(0);
        for_each_broadcast(out, sa, sb, |i, ia, ib| match op {
            Op::Add | Op::Sub => ga[ia] += g[i],
            Op::Mul => ga[ia] += g[i] * y[ib],
            Op::Div => ga[ia] += g[i] / y[ib],
            Op::Maximum | Op::Minimum => {
                if picks_first(&op, x[ia], y[ib]) {
                    ga[ia] += g[i]
                }
            }
            _ => unreachable!(),
        });
    }
    if b.wants(1) {
        let gb = b.g_in(1);
        for_each_broadcast(out, sa, sb, |i, ia, ib| match op {
            Op::Add => gb[ib] += g[i],
            Op::Sub => gb[ib] -= g[i],
            Op::Mul => gb[ib] += g[i] * x[ia],
            Op::Div => gb[ib] -= g[i] * o[i] / y[ib],
            Op::Maximum | Op::Minimum => {
                if !picks_first(&op, x[ia], y[ib]) {
                    gb[ib] += g[i]
                }
            }
            _ => unreachable!(),
        });
    }
}

// Always inlined: called with a constant `op` inside loops, the `match` folds away.
#[inline(always)]
fn unary_forward<T: Real>(op: &Op, x: T) -> T {
    match *op {
        Op::Neg => -x,
        Op::AddScalar(c) => x + T::from_f64(c),
        Op::MulScalar(c) => x * T::from_f64(c),
        Op::Exp => x.exp(),
        Op::Log => x.ln(),
        Op::Sqrt => x.sqrt(),
        Op::Powf(p) => x.powf(p),
        Op::Square => x * x,
        Op::Tanh => x.tanh(),
        Op::Sigmoid => x.sigmoid(),
        Op::Relu => T::select(x > T::zero(), x, T::zero()),
        Op::Softplus => x.softplus(),
        Op::Abs => x.abs(),
        Op::Clamp(lo, hi) => {
            if x < T::from_f64(lo) {
                T::from_f64(lo)
            } else if x > T::from_f64(hi) {
                T::from_f64(hi)
            } else {
                x
            }
        }
        _ => unreachable!(),
    }
}

/// The local derivative rule: ḡx = g·f'(x), with `out` = f(x) at hand.
// Always inlined: called with a constant `op` inside loops, the `match` folds away.
#[inline(always)]
fn unary_backward<T: Real>(op: &Op, x: T, out: T, g: T) -> T {
    match *op {
        Op::Neg => -g,
        Op::AddScalar(_) => g,
        Op::MulScalar(c) => g * T::from_f64(c),
        Op::Exp => g * out,
        Op::Log => g / x,
        Op::Sqrt => g * T::from_f64(0.5) / out,
        Op::Powf(p) => g * T::from_f64(p) * x.powf(p - 1.0),
        Op::Square => g * T::from_f64(2.0) * x,
        Op::Tanh => g * (T::one() - out * out),
        Op::Sigmoid => g * out * (T::one() - out),
        Op::Relu => T::select(x > T::zero(), g, T::zero()),
        Op::Softplus => g * x.sigmoid(),
        Op::Abs => {
            if x > T::zero() {
                g
            } else if x < T::zero() {
                -g
            } else {
                T::zero()
            }
        }
        Op::Clamp(lo, hi) => {
            if x > T::from_f64(lo) && x < T::from_f64(hi) {
                g
            } else {
                T::zero()
            }
        }
        _ => unreachable!(),
    }
}

/// Runs `$body` with `$op` rebound to a constant of the same variant, so the
/// rule's `match` inside a loop folds away and the loop can vectorise.
macro_rules! with_const_unary_op {
    ($op:expr, |$o:ident| $body:expr) => {
        match $op {
            Op::Relu => {
                let $o = &Op::Relu;
                $body
            }
            Op::Neg => {
                let $o = &Op::Neg;
                $body
            }
            Op::Square => {
                let $o = &Op::Square;
                $body
            }
            Op::Exp => {
                let $o = &Op::Exp;
                $body
            }
            Op::Tanh => {
                let $o = &Op::Tanh;
                $body
            }
            Op::Sqrt => {
                let $o = &Op::Sqrt;
                $body
            }
            Op::Abs => {
                let $o = &Op::Abs;
                $body
            }
            Op::Clamp(lo, hi) => {
                let $o = &Op::Clamp(lo, hi);
                $body
            }
            Op::AddScalar(c) => {
                let $o = &Op::AddScalar(c);
                $body
            }
            Op::MulScalar(c) => {
                let $o = &Op::MulScalar(c);
                $body
            }
            ref other => {
                let $o = other;
                $body
            }
        }
    };
}

fn unary<'t, T: Real>(op: Op, x: Var<'t, T>) -> Var<'t, T> {
    if op == Op::Softplus {
        // softplus' derivative σ(x) comes from the forward's exponential:
        // saved, so the VJP need not compute it again.
        // One vectorised loop for both (`Real::softplus_sigmoid_slice`).
        return x.tape.record_overwrite(op, &[x], x.shape(), |f| {
            let xs = f.x(0);
            let a0 = f.aux.len();
            f.aux.resize(a0 + xs.len(), T::zero());
            T::softplus_sigmoid_slice(xs, f.out, &mut f.aux[a0..]);
        });
    }
    if matches!(op, Op::Tanh | Op::Sigmoid) {
        // The element type's slice hook (`Real::tanh_slice`,
        // `Real::sigmoid_slice`: the bits of `tanh` or `sigmoid` on each
        // element, vectorised for `f32`, `f64` and their duals' primal parts).
        let slice: fn(&mut [T]) = if op == Op::Tanh {
            T::tanh_slice
        } else {
            T::sigmoid_slice
        };
        return x.tape.record_overwrite(op, &[x], x.shape(), |f| {
            let xs = f.x(0);
            parts_mut(f.out, 1, xs.len(), &|r, out| {
                out.copy_from_slice(&xs[r]);
                slice(out);
            })
        });
    }
    let op2 = op.clone();
    x.tape.record_overwrite(op, &[x], x.shape(), |f| {
        let xs = f.x(0);
        let out = &mut *f.out;
        // Large ones cut in two halves between two threads (`parts_mut`).
        // The op is matched inside each half, so each loop has a constant op.
        parts_mut(out, 1, xs.len(), &|r, out| {
            with_const_unary_op!(op2.clone(), |k| {
                for (o, &v) in out.iter_mut().zip(&xs[r.clone()]) {
                    *o = unary_forward(k, v);
                }
            })
        })
    })
}

pub(crate) fn unary_vjp<T: Real>(b: &mut Bwd<'_, T>) {
    if !b.wants(0) {
        return;
    }
    let (x, out, g) = (b.x(0), b.out(), b.g);
    let op = b.node.op.clone();
    if op == Op::Softplus && b.aux.len() == x.len() {
        // σ(x), saved by the forward: the same bits as `x.sigmoid()`. A
        // fresh adjoint gets `0 + ḡ·σ` (the bits of a zero-fill then `+=`).
        let s = b.aux;
        let (gx, fresh) = b.g_in_overwrite(0);
        let terms = gx.iter_mut().zip(g).zip(s);
        if fresh {
            for ((d, &gi), &si) in terms {
                *d = T::zero() + gi * si;
            }
        } else {
            for ((d, &gi), &si) in terms {
                *d += gi * si;
            }
        }
        return;
    }
    // A fresh adjoint gets `0 + ḡ` (the bits of a zero-fill then `+=`)
    // without the zero-fill pass.
    // Large ones cut in two halves between two threads (`parts_mut`).
    let (gx, fresh) = b.g_in_overwrite(0);
    parts_mut(gx, 1, g.len(), &|r, gx| {
        with_const_unary_op!(op.clone(), |k| {
            let (g, x, out) = (&g[r.clone()], &x[r.clone()], &out[r.clone()]);
            let terms = gx.iter_mut().zip(g).zip(x.iter().zip(out));
            if fresh {
                for ((d, &gi), (&xi, &oi)) in terms {
                    *d = T::zero() + unary_backward(k, xi, oi, gi);
                }
            } else {
                for ((d, &gi), (&xi, &oi)) in terms {
                    *d += unary_backward(k, xi, oi, gi);
                }
            }
        })
    })
}

/// Calls `f(o, ic, ia, ib)` for every output index `o` of the broadcast of three
/// shapes, with the matching flat indices into each operand, in row-major order.
fn for_each_broadcast3(
    out: Shape,
    c: Shape,
    a: Shape,
    b: Shape,
    mut f: impl FnMut(usize, usize, usize, usize),
) {
    if c == out && a == out && b == out {
        (0..out.numel()).for_each(|i| f(i, i, i, i));
        return;
    }
    let d = out.padded4();
    let (sc, sa, sb) = (
        c.broadcast_strides4(),
        a.broadcast_strides4(),
        b.broadcast_strides4(),
    );
    let at = |s: &[usize; MAX_RANK], i: [usize; MAX_RANK]| {
        i[0] * s[0] + i[1] * s[1] + i[2] * s[2] + i[3] * s[3]
    };
    let mut o = 0;
    for i0 in 0..d[0] {
        for i1 in 0..d[1] {
            for i2 in 0..d[2] {
                for i3 in 0..d[3] {
                    let i = [i0, i1, i2, i3];
                    f(o, at(&sc, i), at(&sa, i), at(&sb, i));
                    o += 1;
                }
            }
        }
    }
}

#[track_caller]
fn where_impl<'t, T: Real>(c: Var<'t, T>, a: Var<'t, T>, b: Var<'t, T>) -> Var<'t, T> {
    let (sc, sa, sb) = (c.shape(), a.shape(), b.shape());
    let Some(out) = broadcast_shapes(sc, sa).and_then(|s| broadcast_shapes(s, sb)) else {
        shape_panic(
            "where_",
            &[("cond", sc), ("a", sa), ("b", sb)],
            format_args!("shapes do not broadcast"),
        )
    };
    c.tape.record(Op::Where, &[c, a, b], out, |f| {
        let (xc, xa, xb) = (f.x(0), f.x(1), f.x(2));
        let o = &mut *f.out;
        for_each_broadcast3(out, sc, sa, sb, |i, ic, ia, ib| {
            o[i] = if xc[ic] > T::zero() { xa[ia] } else { xb[ib] }
        });
    })
}

/// VJP of `where_`: the adjoint goes to the selected operand, never to the condition.
pub(crate) fn where_vjp<T: Real>(b: &mut Bwd<'_, T>) {
    let (out, sc, sa, sb) = (b.node.shape, b.x_shape(0), b.x_shape(1), b.x_shape(2));
    let (xc, g) = (b.x(0), b.g);
    for (k, pick_a) in [(1, true), (2, false)] {
        if b.wants(k) {
            let gk = b.g_in(k);
            for_each_broadcast3(out, sc, sa, sb, |i, ic, ia, ib| {
                if (xc[ic] > T::zero()) == pick_a {
                    gk[if pick_a { ia } else { ib }] += g[i];
                }
            });
        }
    }
}

impl<'t, T: Real> Var<'t, T> {
    /// x + c for a constant c.
    pub fn add_scalar(self, c: f64) -> Var<'t, T> {
        unary(Op::AddScalar(c), self)
    }
    /// c·x for a constant c.
    pub fn mul_scalar(self, c: f64) -> Var<'t, T> {
        unary(Op::MulScalar(c), self)
    }
    /// eˣ.
    pub fn exp(self) -> Var<'t, T> {
        unary(Op::Exp, self)
    }
    /// ln x.
    pub fn log(self) -> Var<'t, T> {
        unary(Op::Log, self)
    }
    /// √x.
    pub fn sqrt(self) -> Var<'t, T> {
        unary(Op::Sqrt, self)
    }
    /// xᵖ for a constant p.
    pub fn powf(self, p: f64) -> Var<'t, T> {
        unary(Op::Powf(p), self)
    }
    /// x².
    pub fn square(self) -> Var<'t, T> {
        unary(Op::Square, self)
    }
    /// tanh x.
    pub fn tanh(self) -> Var<'t, T> {
        unary(Op::Tanh, self)
    }
    /// σ(x) = 1/(1 + e⁻ˣ).
    pub fn sigmoid(self) -> Var<'t, T> {
        unary(Op::Sigmoid, self)
    }
    /// max(x, 0); derivative 0 at the kink.
    pub fn relu(self) -> Var<'t, T> {
        unary(Op::Relu, self)
    }
    /// ln(1 + eˣ), computed without overflow.
    pub fn softplus(self) -> Var<'t, T> {
        unary(Op::Softplus, self)
    }
    /// |x|; derivative 0 at the kink.
    pub fn abs(self) -> Var<'t, T> {
        unary(Op::Abs, self)
    }
    /// Elementwise max(a, b) with broadcasting. The adjoint goes to the
    /// selected operand; on ties (a = b) it goes to `self`.
    ///
    /// # Panics
    /// If the shapes do not broadcast.
    ///
    /// ```
    /// use tape::{Tape, Tensor};
    /// let t = Tape::<f64>::new();
    /// let a = t.var(&Tensor::vector(vec![1.0, 5.0, 2.0]));
    /// let b = t.var(&Tensor::vector(vec![3.0, 4.0, 2.0]));
    /// let m = a.maximum(b);
    /// assert_eq!(m.value().data(), &[3.0, 5.0, 2.0]);
    /// t.backward(m.sum());
    /// assert_eq!(t.grad(a).data(), &[0.0, 1.0, 1.0]); // tie at index 2 → a
    /// assert_eq!(t.grad(b).data(), &[1.0, 0.0, 0.0]);
    /// ```
    #[track_caller]
    pub fn maximum(self, other: Var<'t, T>) -> Var<'t, T> {
        binary(Op::Maximum, self, other)
    }
    /// Elementwise min(a, b) with broadcasting. The adjoint goes to the
    /// selected operand; on ties (a = b) it goes to `self`.
    ///
    /// # Panics
    /// If the shapes do not broadcast.
    #[track_caller]
    pub fn minimum(self, other: Var<'t, T>) -> Var<'t, T> {
        binary(Op::Minimum, self, other)
    }
    /// min(max(x, lo), hi); derivative 1 strictly inside `(lo, hi)`, 0 outside
    /// and at the kinks.
    ///
    /// ```
    /// use tape::{Tape, Tensor};
    /// let t = Tape::<f64>::new();
    /// let x = t.var(&Tensor::vector(vec![-2.0, 0.5, 3.0]));
    /// let y = x.clamp(-1.0, 1.0);
    /// assert_eq!(y.value().data(), &[-1.0, 0.5, 1.0]);
    /// t.backward(y.sum());
    /// assert_eq!(t.grad(x).data(), &[0.0, 1.0, 0.0]);
    /// ```
    pub fn clamp(self, lo: f64, hi: f64) -> Var<'t, T> {
        unary(Op::Clamp(lo, hi), self)
    }
    /// Elementwise select: `a` where `self` (the condition) is > 0, else `b`.
    /// All three operands broadcast to a common shape. The adjoint flows to the
    /// selected operand, never to the condition (it is piecewise constant).
    ///
    /// # Panics
    /// If the three shapes do not broadcast: `where_: cond [2], a [3], b []: shapes do not broadcast`.
    ///
    /// ```
    /// use tape::{Tape, Tensor};
    /// let t = Tape::<f64>::new();
    /// let c = t.constant(&Tensor::vector(vec![1.0, -1.0, 0.0]));
    /// let a = t.var(&Tensor::vector(vec![10.0, 20.0, 30.0]));
    /// let b = t.var(&Tensor::scalar(7.0));
    /// let y = c.where_(a, b);
    /// assert_eq!(y.value().data(), &[10.0, 7.0, 7.0]);
    /// t.backward(y.sum());
    /// assert_eq!(t.grad(a).data(), &[1.0, 0.0, 0.0]);
    /// assert_eq!(t.grad(b).data(), &[2.0]); // summed over the broadcast
    /// ```
    #[track_caller]
    pub fn where_(self, a: Var<'t, T>, b: Var<'t, T>) -> Var<'t, T> {
        where_impl(self, a, b)
    }
    /// x_k · a_{s(k)} for a vector x `[N]` cut into L segments and a vector a
    /// `[L]`, one factor per segment: segment i is `ends[i−1]..ends[i]`
    /// (`ends` non-decreasing, its last entry N). The product of tensors
    /// concatenated by one scalar per tensor, in one node (a learnable step
    /// per φ tensor on φ concatenated). Adjoints: ḡx_k += g_k·a_{s(k)} and
    /// ḡa_i += Σ_{k ∈ segment i} g_k·x_k, added in element order: the bits of
    /// `x_i * a_i` per segment with `a_i` a `[1]` operand.
    ///
    /// # Panics
    /// If x or a is not a vector, or `ends` is not L non-decreasing
    /// positions ending at N: `mul_segments: x [3], a [2]: ends [1, 2] …`.
    ///
    /// ```
    /// use tape::{Tape, Tensor};
    /// let t = Tape::<f64>::new();
    /// let x = t.var(&Tensor::vector(vec![1.0, 2.0, 3.0]));
    /// let a = t.var(&Tensor::vector(vec![10.0, -1.0]));
    /// let y = x.mul_segments(a, &[1, 3]); // segments [0..1] and [1..3]
    /// assert_eq!(y.value().data(), &[10.0, -2.0, -3.0]);
    /// t.backward(y.sum());
    /// assert_eq!(t.grad(a).data(), &[1.0, 5.0]);
    /// assert_eq!(t.grad(x).data(), &[10.0, -1.0, -1.0]);
    /// ```
    #[track_caller]
    pub fn mul_segments(self, a: Var<'t, T>, ends: &[usize]) -> Var<'t, T> {
        let (sx, sa) = (self.shape(), a.shape());
        let ok = sx.rank() == 1
            && sa.rank() == 1
            && sa.numel() == ends.len()
            && ends.last().copied().unwrap_or(0) == sx.numel()
            && ends.windows(2).all(|w| w[0] <= w[1]);
        if !ok {
            shape_panic(
                "mul_segments",
                &[("x", sx), ("a", sa)],
                format_args!(
                    "ends {ends:?} must be one non-decreasing end per element of a, the last {}",
                    sx.numel()
                ),
            );
        }
        self.tape
            .record_overwrite(Op::MulSegments, &[self, a], sx, |f| {
                let (x, a) = (f.x(0), f.x(1));
                f.idx.extend_from_slice(ends);
                let mut at = 0;
                for (&e, &ai) in ends.iter().zip(a) {
                    for (o, &xk) in f.out[at..e].iter_mut().zip(&x[at..e]) {
                        *o = binary_forward(&Op::Mul, xk, ai);
                    }
                    at = e;
                }
            })
    }
    /// a·x + b·y for same-shaped x, y and constants a, b, in one node: the
    /// bits of `self.mul_scalar(a) + y.mul_scalar(b)` (three nodes), values
    /// and adjoints, for a moment update m·β + g·(1 − β) at a third of the
    /// passes. Adjoints: ḡx += ḡ·a, ḡy += ḡ·b.
    ///
    /// # Panics
    /// If the shapes differ: `axpby: x [2], y [3]: shapes differ`.
    ///
    /// ```
    /// use tape::{Tape, Tensor};
    /// let t = Tape::<f64>::new();
    /// let x = t.var(&Tensor::vector(vec![1.0, 2.0]));
    /// let y = t.var(&Tensor::vector(vec![10.0, 20.0]));
    /// let z = x.axpby(0.5, y, -2.0);
    /// assert_eq!(z.value().data(), &[-19.5, -39.0]);
    /// t.backward(z.sum());
    /// assert_eq!(t.grad(x).data(), &[0.5, 0.5]);
    /// assert_eq!(t.grad(y).data(), &[-2.0, -2.0]);
    /// ```
    #[track_caller]
    pub fn axpby(self, a: f64, y: Var<'t, T>, b: f64) -> Var<'t, T> {
        let (sx, sy) = (self.shape(), y.shape());
        if sx != sy {
            shape_panic(
                "axpby",
                &[("x", sx), ("y", sy)],
                format_args!("shapes differ"),
            );
        }
        self.tape
            .record_overwrite(Op::Axpby(a, b), &[self, y], sx, |f| {
                let (x, y) = (f.x(0), f.x(1));
                let (a, b) = (T::from_f64(a), T::from_f64(b));
                // The forwards of mul_scalar, mul_scalar and add, in that order.
                parts_mut(f.out, 1, x.len(), &|r, out| {
                    for (o, (&xk, &yk)) in out.iter_mut().zip(x[r.clone()].iter().zip(&y[r])) {
                        *o = xk * a + yk * b;
                    }
                })
            })
    }
}

/// The VJP of [`Var::axpby`]: ḡx += ḡ·a, ḡy += ḡ·b, each as the three-node
/// form computes it: the sum's fresh adjoint `0 + ḡ` times the constant, a
/// fresh ḡx getting `0 + (0 + ḡ)·a` without a zero-fill pass (as
/// [`unary_vjp`]), and y's term first (its product node is swept first), so
/// `x.axpby(a, x, b)` adds in the same order too.
pub(crate) fn axpby_vjp<T: Real>(b: &mut Bwd<'_, T>, ca: f64, cb: f64) {
    let g = b.g;
    for (k, c) in [(1, cb), (0, ca)] {
        if !b.wants(k) {
            continue;
        }
        let c = T::from_f64(c);
        let (gk, fresh) = b.g_in_overwrite(k);
        parts_mut(gk, 1, g.len(), &|r, gk| {
            let terms = gk.iter_mut().zip(&g[r]);
            if fresh {
                for (d, &gi) in terms {
                    *d = T::zero() + (T::zero() + gi) * c;
                }
            } else {
                for (d, &gi) in terms {
                    *d += (T::zero() + gi) * c;
                }
            }
        })
    }
}

/// The VJP of [`Var::mul_segments`]: ḡx_k += g_k·a_{s(k)}; ḡa_i += g_k·x_k
/// over segment i in element order (as [`binary_vjp`] sums a `[1]` operand).
pub(crate) fn mul_segments_vjp<T: Real>(b: &mut Bwd<'_, T>) {
    let (x, a, g, ends) = (b.x(0), b.x(1), b.g, b.idx);
    if b.wants(0) {
        let gx = b.g_in(0);
        let mut at = 0;
        for (&e, &ai) in ends.iter().zip(a) {
            for (d, &gk) in gx[at..e].iter_mut().zip(&g[at..e]) {
                *d += gk * ai;
            }
            at = e;
        }
    }
    if b.wants(1) {
        let ga = b.g_in(1);
        let mut at = 0;
        for (&e, d) in ends.iter().zip(ga.iter_mut()) {
            let mut acc = *d;
            for (&gk, &xk) in g[at..e].iter().zip(&x[at..e]) {
                acc += gk * xk;
            }
            *d = acc;
            at = e;
        }
    }
}

macro_rules! impl_binary_operator {
    ($trait:ident, $method:ident, $op:expr, $scalar:expr) => {
        impl<'t, T: Real> $trait<Var<'t, T>> for Var<'t, T> {
            type Output = Var<'t, T>;
            #[track_caller]
            fn $method(self, rhs: Var<'t, T>) -> Var<'t, T> {
                binary($op, self, rhs)
            }
        }
        impl<'t, T: Real> $trait<f64> for Var<'t, T> {
            type Output = Var<'t, T>;
            fn $method(self, c: f64) -> Var<'t, T> {
                #[allow(clippy::redundant_closure_call)]
                ($scalar)(self, c)
            }
        }
    };
}
impl_binary_operator!(Add, add, Op::Add, |x: Var<'t, T>, c: f64| x.add_scalar(c));
impl_binary_operator!(Sub, sub, Op::Sub, |x: Var<'t, T>, c: f64| x.add_scalar(-c));
impl_binary_operator!(Mul, mul, Op::Mul, |x: Var<'t, T>, c: f64| x.mul_scalar(c));
impl_binary_operator!(Div, div, Op::Div, |x: Var<'t, T>, c: f64| x
    .mul_scalar(1.0 / c));

impl<'t, T: Real> Neg for Var<'t, T> {
    type Output = Var<'t, T>;
    fn neg(self) -> Var<'t, T> {
        unary(Op::Neg, self)
    }
}
impl<'t, T: Real> Mul<Var<'t, T>> for f64 {
    type Output = Var<'t, T>;
    fn mul(self, x: Var<'t, T>) -> Var<'t, T> {
        x.mul_scalar(self)
    }
}
impl<'t, T: Real> Add<Var<'t, T>> for f64 {
    type Output = Var<'t, T>;
    fn add(self, x: Var<'t, T>) -> Var<'t, T> {
        x.add_scalar(self)
    }
}
impl<'t, T: Real> Sub<Var<'t, T>> for f64 {
    type Output = Var<'t, T>;
    fn sub(self, x: Var<'t, T>) -> Var<'t, T> {
        x.neg().add_scalar(self)
    }
}
