//! Large matrix-vector products (`n ≤` [`super::THIN_COLS`] columns) of
//! `f32`/`f64` with the vector lanes **down the rows** of `A`, for the two
//! layouts the register-blocked kernels of `simd.rs` would run with one or
//! two of their lanes busy:
//!
//! - a row-major `A` (`X·φ` with a data matrix `X [m, k]`): blocks of `R`
//!   rows (`R·k ≤` [`PACK`], `R` a multiple of the lanes) are transposed in
//!   registers into a stack buffer by the instruction set's packer
//!   ([`Isa::pack_t`]), then run down their columns;
//! - a column-major `A` (`X·φ` from a shared constant's column-major copy,
//!   `Xᵀ·g` and `Xᵀ·[g.v | g.d]` from a row-major `X`): read down its
//!   columns in place, by panels of up to eight vectors of rows — as many
//!   accumulators as half the register file holds — so that `Xᵀ·g` for up
//!   to 64 features (AVX-512F, f64) is one pass over `X`. When the columns
//!   lie a page or more apart (`X·φ` from the copy: `k` streams, more than
//!   the hardware prefetcher follows), each column's rows of the next panel
//!   are prefetched while the current one runs.
//!
//! # Bits
//! Each output element is accumulated in its own lane, from zero, in
//! increasing `l`, by the family's `madd` (`s + a_il·b_lj` rounded twice for
//! AVX-512F, one fused multiply-add for AVX2+FMA), then `α·s` (`+ β·c`), each
//! rounded on its own: exactly what the register-blocked kernels compute for
//! that element. So these products have the family's bits — the portable
//! loop's under AVX-512F — whatever the layout (`tests/suite/thin.rs` pins
//! them against the naive loop in both families).
//!
//! # Soundness
//! As `simd.rs`: the instruction set is detected ([`Isa::available`]) before
//! an entry runs; every `(i, l)` of `A` and `(l, j)` of `B` read lies in its
//! checked view (or in the packed block, `R·k ≤ PACK` elements, all written by
//! the packer); `C` is the dense row-major `m × n` slice of a [`Product`];
//! partial vectors are masked loads and stores, addresses formed with
//! `wrapping_add`.

use super::simd::Lane;
use super::{MatRef, Product};
use crate::real::Real;

/// Runs `p` here if it is a large matrix-vector product of a layout this file
/// handles and the active family has a vector kernel (then records the
/// family and returns `true`); `false`: not taken.
pub(crate) fn real<E: Lane>(p: &mut Product<'_, E>) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use super::{avx2::Avx2, avx512::Avx512, simd::Isa, Family};
        let cap = super::active();
        let family = if cap >= Family::Avx512 && Avx512::available() && imp::avx512(p) {
            Family::Avx512
        } else if cap >= Family::Avx2 && Avx2::available() && imp::avx2(p) {
            Family::Avx2
        } else {
            return false;
        };
        super::family::record(family);
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = p;
        false
    }
}

#[cfg(target_arch = "x86_64")]
mod imp {
    use super::super::avx2::Avx2;
    use super::super::avx512::Avx512;
    use super::super::simd::{Isa, Lane, Vectors};
    use super::super::{MatRef, Product, PACK, THIN_COLS};
    use super::Rows;
    use crate::real::Real;
    use std::any::TypeId;
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    use std::mem::MaybeUninit;

    /// Where `A` is read from: in place down its columns (`A[i, l] =
    /// p[i + l·cs]`), or by row blocks of `rows` transposed into a buffer.
    #[derive(Clone, Copy)]
    enum Source {
        Columns,
        RowBlocks(usize),
    }

    /// The layout this file takes for `p` under vectors of `lanes` lanes, if any.
    fn source<E: Real>(p: &Product<'_, E>, lanes: usize) -> Option<Source> {
        let (a, b) = (&p.a, &p.b);
        let (m, k, n) = (a.rows, a.cols, b.cols);
        // Small products stay with `simd.rs` (they fit its packing buffer).
        if n == 0 || n > THIN_COLS || k == 0 || m.saturating_mul(k) <= PACK {
            return None;
        }
        if a.rs == 1 {
            return Some(Source::Columns);
        }
        let rows = PACK / k / lanes * lanes;
        (a.cs == 1 && rows > 0 && m >= lanes).then_some(Source::RowBlocks(rows))
    }

    /// The AVX-512F kernel, if `p` suits it.
    pub(super) fn avx512<E: Lane>(p: &mut Product<'_, E>) -> bool {
        let Some(src) = source(p, <E::Avx512 as Vectors>::N) else {
            return false;
        };
        /// [`run`] compiled with AVX-512F.
        #[target_feature(enable = "avx512f")]
        unsafe fn entry<E: Lane>(p: &mut Product<'_, E>, src: Source) {
            // SAFETY: this fn's contract (AVX-512F detected by the caller).
            unsafe { run::<Avx512, E::Avx512>(p, src) }
        }
        // SAFETY: `super::real` asked `Avx512::available()` before calling;
        // `src` is `source`'s for this product and these lanes.
        unsafe { entry(p, src) };
        true
    }

    /// The AVX2+FMA kernel, if `p` suits it.
    pub(super) fn avx2<E: Lane>(p: &mut Product<'_, E>) -> bool {
        let Some(src) = source(p, <E::Avx2 as Vectors>::N) else {
            return false;
        };
        /// [`run`] compiled with AVX2+FMA.
        #[target_feature(enable = "avx2,fma")]
        unsafe fn entry<E: Lane>(p: &mut Product<'_, E>, src: Source) {
            // SAFETY: this fn's contract (AVX2 and FMA detected by the caller).
            unsafe { run::<Avx2, E::Avx2>(p, src) }
        }
        // SAFETY: as in `avx512`, with `Avx2::available()`.
        unsafe { entry(p, src) };
        true
    }

    /// The product, block by block.
    ///
    /// # Safety
    /// The CPU has `I`'s instruction set (whose vectors of `E` are `V`);
    /// `src` is [`source`]'s for `p` and `V::N`.
    #[inline(always)]
    unsafe fn run<I: Isa, V: Vectors>(p: &mut Product<'_, V::E>, src: Source) {
        let (alpha, a, b, beta) = (p.alpha, p.a, p.b, p.beta);
        let (m, k, n) = (a.rows, a.cols, b.cols);
        let c =
            p.c.dense_row_major()
                .expect("`run` (mod.rs) sends only dense row-major outputs to the small kernels");
        match src {
            Source::Columns => {
                // SAFETY: this fn's contract; A[i, l] = a.data[i + l·cs] for
                // i < m, l < k (a checked view with unit row stride), `c`
                // dense m × n (`dense_row_major`).
                unsafe { block::<V>(alpha, a.data.as_ptr(), a.cs, m, k, b, beta, c) }
            }
            Source::RowBlocks(rows) => {
                let mut buf = [MaybeUninit::<V::E>::uninit(); PACK];
                for i0 in (0..m).step_by(rows) {
                    let r = rows.min(m - i0);
                    // Rows i0..i0 + r of A, then their transpose [k, r]
                    // (unit row stride) packed row-major: A[i0 + i, l] = at[i + l·r].
                    let ai = MatRef::new(&a.data[i0 * a.rs..], r, k, a.rs, 1);
                    let at = I::pack_t(ai.t(), &mut buf);
                    let ci = &mut c[i0 * n..(i0 + r) * n];
                    // SAFETY: this fn's contract; `at` holds the r·k ≤ PACK
                    // elements of the block (written by the packer), `ci`
                    // the block's r × n outputs.
                    unsafe { block::<V>(alpha, at.as_ptr(), r, r, k, b, beta, ci) }
                }
            }
        }
    }

    /// Accumulator vectors a panel may hold: half the register file (32
    /// vectors under AVX-512F, 16 under AVX2), the rest for `B`'s splats and
    /// the loads.
    fn accumulators<V: Vectors>() -> usize {
        if std::mem::size_of::<V::V>() >= 64 {
            16
        } else {
            8
        }
    }

    /// `C ← α·A·B + β·C` for `A[i, l] = at[i + l·ats]` (`m × k`), `B` of
    /// `n ≤ 2` columns and `C` dense row-major `m × n`, by panels of up to
    /// eight vectors of rows (as many as [`accumulators`] allows for `n`
    /// columns): one pass over `A` when its rows fit one panel (`Aᵀ·g` for
    /// a data matrix of up to 64 features under AVX-512F).
    ///
    /// # Safety
    /// V's instruction set; `at[i + l·ats]` valid for reads for i < m, l < k;
    /// `c.len() == m·n`, `b` is `k × n`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block<V: Vectors>(
        alpha: V::E,
        at: *const V::E,
        ats: usize,
        m: usize,
        k: usize,
        b: MatRef<'_, V::E>,
        beta: V::E,
        c: &mut [V::E],
    ) {
        let vectors = m.div_ceil(V::N);
        let nv_max = (accumulators::<V>() / b.cols.max(1)).clamp(1, 8);
        let mut v0 = 0;
        while v0 < vectors {
            let nv = (vectors - v0).min(nv_max);
            let full = (v0 + nv) * V::N <= m;
            let args = (alpha, at, ats, m, k, b, beta, &mut *c, v0);
            // SAFETY: this fn's contract; vectors v0..v0 + nv ≤ ⌈m / N⌉, and
            // `full` only if all their rows are below m.
            unsafe {
                if b.cols == 1 {
                    sized::<V, 1>(full, nv, args)
                } else {
                    sized::<V, 2>(full, nv, args)
                }
            }
            v0 += nv;
        }
    }

    /// [`panel`] with its const sizes chosen from `full` and `nv` (1..=8).
    ///
    /// # Safety
    /// As [`panel`] with `NV = nv`, `FULL = full`.
    #[inline(always)]
    unsafe fn sized<V: Vectors, const NC: usize>(full: bool, nv: usize, args: Args<'_, '_, V::E>) {
        macro_rules! by_nv {
            ($full:literal) => {
                match nv {
                    1 => panel::<V, $full, 1, NC>(args),
                    2 => panel::<V, $full, 2, NC>(args),
                    3 => panel::<V, $full, 3, NC>(args),
                    4 => panel::<V, $full, 4, NC>(args),
                    5 => panel::<V, $full, 5, NC>(args),
                    6 => panel::<V, $full, 6, NC>(args),
                    7 => panel::<V, $full, 7, NC>(args),
                    _ => panel::<V, $full, 8, NC>(args),
                }
            };
        }
        // SAFETY: this fn's contract.
        unsafe {
            if full {
                by_nv!(true)
            } else {
                by_nv!(false)
            }
        }
    }

    /// The arguments of [`panel`]: α, `at`, its column stride, m, k, B, β, C
    /// and the first vector of rows.
    type Args<'a, 'c, E> = (
        E,
        *const E,
        usize,
        usize,
        usize,
        MatRef<'a, E>,
        E,
        &'c mut [E],
        usize,
    );

    /// Rows `v0·N..(v0 + NV)·N` (below m) of `C` for `N` columns of `B`
    /// (`N` = 1 or 2): `NV·N` accumulators, each row's sum in its lane.
    ///
    /// # Safety
    /// As [`block`]; vectors v0..v0 + NV have rows below ⌈m / N⌉·N, all of
    /// them below m if FULL.
    #[inline(always)]
    unsafe fn panel<V: Vectors, const FULL: bool, const NV: usize, const NC: usize>(
        (alpha, at, ats, m, k, b, beta, c, v0): Args<'_, '_, V::E>,
    ) {
        // SAFETY: this fn's contract. A vector's mask keeps only rows below m
        // (all lanes if FULL, or if it is not the panel's last); B[l, j] =
        // b.data[l·rs + j·cs] for l < k, j < NC ≤ b.cols is in its checked
        // view; C[i, j] = c[i·NC + j] for i < m.
        unsafe {
            let masks: [V::M; NV] = std::array::from_fn(|v| V::mask(m - (v0 + v) * V::N));
            // Columns a page or more apart (a column-major data matrix) are
            // as many streams as `k`, more than the hardware prefetcher
            // follows: the next panel's rows of each column are asked for
            // while this one runs.
            let prefetch = ats * std::mem::size_of::<V::E>() >= 4096 && (v0 + NV) * V::N < m;
            let mut acc = [[V::zero(); NV]; NC];
            for l in 0..k {
                let col = at.wrapping_add(l * ats + v0 * V::N);
                if prefetch {
                    // One hint per cache line of the next panel's rows: it
                    // reads nothing and cannot fault.
                    let line = (64 / std::mem::size_of::<V::E>()).max(1);
                    for e in (NV * V::N..2 * NV * V::N).step_by(line) {
                        _mm_prefetch::<_MM_HINT_T0>(col.wrapping_add(e).cast());
                    }
                }
                let y: [V::V; NC] =
                    std::array::from_fn(|j| V::splat(*b.data.get_unchecked(l * b.rs + j * b.cs)));
                for v in 0..NV {
                    let p = col.wrapping_add(v * V::N);
                    let x = if FULL || v + 1 < NV {
                        V::load(p)
                    } else {
                        V::load_masked(p, masks[v])
                    };
                    for j in 0..NC {
                        acc[j][v] = V::madd(acc[j][v], x, y[j]);
                    }
                }
            }
            let (va, vb, beta_zero) = (V::splat(alpha), V::splat(beta), beta == V::E::zero());
            for v in 0..NV {
                let i0 = (v0 + v) * V::N;
                let rows = (m - i0).min(V::N);
                if NC == 1 {
                    let p = c.as_mut_ptr().wrapping_add(i0);
                    let mut out = V::mul(va, acc[0][v]);
                    if !beta_zero {
                        out = V::add(out, V::mul(vb, V::load_masked(p, masks[v])));
                    }
                    V::store_masked(p, out, masks[v]);
                } else {
                    // Two columns: the lanes go through a stack row each, then
                    // to their interleaved places in C.
                    let mut parts = [[V::E::zero(); 16]; NC];
                    for j in 0..NC {
                        let mut out = V::mul(va, acc[j][v]);
                        if !beta_zero {
                            let mut cj = [V::E::zero(); 16];
                            for (t, x) in cj.iter_mut().enumerate().take(rows) {
                                *x = *c.get_unchecked((i0 + t) * NC + j);
                            }
                            out = V::add(out, V::mul(vb, V::load_masked(cj.as_ptr(), masks[v])));
                        }
                        V::store_masked(parts[j].as_mut_ptr(), out, masks[v]);
                    }
                    for t in 0..rows {
                        for (j, part) in parts.iter().enumerate() {
                            *c.get_unchecked_mut((i0 + t) * NC + j) = part[t];
                        }
                    }
                }
            }
        }
    }

    /// [`super::logistic`] if `T` is `E` or `Dual<E>` and the shapes suit
    /// it (then `true`).
    pub(super) fn logistic_as<T: Real, E: Lane>(
        x: MatRef<'_, T::Base>,
        w: MatRef<'_, T>,
        rows: &mut Rows<'_, T>,
        u: &mut [T],
    ) -> bool {
        use super::super::Family;
        if TypeId::of::<T::Base>() != TypeId::of::<E>() {
            return false;
        }
        let Some(parts) = super::parts::<T, E>() else {
            return false;
        };
        let (m, k, n) = (x.rows, x.cols, w.cols);
        let p = parts * n;
        let dense_w = w.cs == 1 && w.rs == n && w.rows == k;
        let fits = k * p <= super::LOGISTIC_ACC;
        if m == 0 || k == 0 || p == 0 || p > THIN_COLS || x.rs != 1 || !dense_w || !fits {
            return false;
        }
        if u.len() != k * n {
            return false;
        }
        let x = MatRef::new(
            super::super::real_left::same_type::<_, E>(x.data),
            m,
            k,
            1,
            x.cs,
        );
        let b = super::elems::<T, E>(w.data);
        let u = super::elems_mut::<T, E>(u);
        let mut f =
            |z: &[E], s: &mut [E]| rows(super::whole::<E, T>(z), super::whole_mut::<E, T>(s));
        let cap = super::super::active();
        let family = if cap >= Family::Avx512 && Avx512::available() {
            /// [`fused`] compiled with AVX-512F.
            #[target_feature(enable = "avx512f")]
            unsafe fn entry<E: Lane>(
                x: MatRef<'_, E>,
                b: &[E],
                rows: &mut Rows<'_, E>,
                u: &mut [E],
            ) {
                // SAFETY: this fn's contract (AVX-512F detected by the caller).
                unsafe { by_p::<E::Avx512>(x, b, rows, u) }
            }
            // SAFETY: `Avx512::available()` asked above; `by_p`'s shape
            // contract checked above.
            unsafe { entry(x, b, &mut f, u) };
            Family::Avx512
        } else if cap >= Family::Avx2 && Avx2::available() {
            /// [`fused`] compiled with AVX2+FMA.
            #[target_feature(enable = "avx2,fma")]
            unsafe fn entry<E: Lane>(
                x: MatRef<'_, E>,
                b: &[E],
                rows: &mut Rows<'_, E>,
                u: &mut [E],
            ) {
                // SAFETY: this fn's contract (AVX2 and FMA detected by the caller).
                unsafe { by_p::<E::Avx2>(x, b, rows, u) }
            }
            // SAFETY: as above, with `Avx2::available()`.
            unsafe { entry(x, b, &mut f, u) };
            Family::Avx2
        } else {
            return false;
        };
        super::super::family::record(family);
        true
    }

    /// [`fused`] with its column count `P = b.len() / k` as a constant.
    ///
    /// # Safety
    /// V's instruction set; `x` has unit row stride; `b.len() == k·p` and
    /// `u.len() == k·p` for p ∈ {1, 2}; `k·p ≤ LOGISTIC_ACC`.
    #[inline(always)]
    unsafe fn by_p<V: Vectors>(
        x: MatRef<'_, V::E>,
        b: &[V::E],
        rows: &mut Rows<'_, V::E>,
        u: &mut [V::E],
    ) {
        // SAFETY: this fn's contract.
        unsafe {
            if b.len() == x.cols {
                fused::<V, 1, 8>(x, b, rows, u)
            } else {
                fused::<V, 2, 4>(x, b, rows, u)
            }
        }
    }

    /// The blocks of [`super::logistic`] on real data, `X` read down its
    /// columns (`X[i, l] = x.data[i + l·cs]`), by super-blocks of up to 64
    /// rows (128 if one sub-block is that long), whose columns stay in L1:
    /// 1. per sub-block of `NV` vectors of rows, `z = X_b·B` in `NV·P = 8`
    ///    register accumulators (each row's sum in its lane, from zero, in
    ///    increasing `l`: the family's product bits);
    /// 2. `rows(z, s)` once for the super-block;
    /// 3. per sub-block, with its `s` in registers, one vector accumulator
    ///    per `(l, j)` of `u = Xᵀ·s` takes `X_b[:, l]·s[:, j]` lane by lane.
    ///
    /// At the end each accumulator's lanes are summed in lane order into `u`.
    ///
    /// # Safety
    /// As [`by_p`] with `P` = p; `NV·P ≤ 8`.
    #[inline(always)]
    #[allow(clippy::needless_range_loop)] // v indexes z, the loads and s alike
    unsafe fn fused<V: Vectors, const P: usize, const NV: usize>(
        x: MatRef<'_, V::E>,
        b: &[V::E],
        rows: &mut Rows<'_, V::E>,
        u: &mut [V::E],
    ) {
        const MAX: usize = 128;
        let (m, k, cs) = (x.rows, x.cols, x.cs);
        let r = NV * V::N;
        let sb_rows = (64 / r).max(1) * r;
        let zero = V::E::zero();
        // SAFETY (whole body): this fn's contract. Column l's rows i0..i0 +
        // rb are x.data[i0 + l·cs..][..rb], inside X's checked view; the
        // vectors of a partial sub-block are masked loads of its rows below
        // m (an empty mask reads nothing); a super-block's sb_rows ≤ MAX
        // rows (NV·N ≤ 8·16) fill at most P·sb_rows ≤ MAX elements of
        // `zbuf`, `sbuf` (P = 2 only with NV·N ≤ 64, so sb_rows = 64), and
        // its sub-blocks' vectors end at or before sb_rows; `acc` holds
        // k·P ≤ LOGISTIC_ACC vectors, the first k·P written before any read.
        unsafe {
            let mut acc = [MaybeUninit::<V::V>::uninit(); super::LOGISTIC_ACC];
            for a in &mut acc[..k * P] {
                a.write(V::zero());
            }
            let mut zbuf = [zero; MAX];
            let mut sbuf = [zero; MAX];
            let mut plane = [[zero; MAX]; P];
            let base = x.data.as_ptr();
            let full = V::mask(V::N);
            for s0 in (0..m).step_by(sb_rows) {
                let sb = sb_rows.min(m - s0);
                let subs = (s0..s0 + sb).step_by(r);
                let masks_of = |i0: usize| -> [V::M; NV] {
                    let rb = r.min(m - i0);
                    std::array::from_fn(|v| V::mask(rb.saturating_sub(v * V::N)))
                };
                let load = |l: usize, i0: usize, v: usize, masks: &[V::M; NV], whole: bool| {
                    let p = base.wrapping_add(i0 + l * cs + v * V::N);
                    if whole {
                        V::load(p)
                    } else {
                        V::load_masked(p, masks[v])
                    }
                };
                for i0 in subs.clone() {
                    let whole = i0 + r <= m;
                    let masks = if whole { [full; NV] } else { masks_of(i0) };
                    let mut z = [[V::zero(); NV]; P];
                    for l in 0..k {
                        let y: [V::V; P] =
                            std::array::from_fn(|j| V::splat(*b.get_unchecked(l * P + j)));
                        for v in 0..NV {
                            let xv = load(l, i0, v, &masks, whole);
                            for j in 0..P {
                                z[j][v] = V::madd(z[j][v], xv, y[j]);
                            }
                        }
                    }
                    for (j, zj) in z.iter().enumerate() {
                        for (v, zv) in zj.iter().enumerate() {
                            let at = plane[j].as_mut_ptr().wrapping_add(i0 - s0 + v * V::N);
                            V::store_masked(at, *zv, full);
                        }
                    }
                }
                // z to the caller row-major (sb × P), σ back as planes.
                for (j, pj) in plane.iter().enumerate() {
                    for (i, &e) in pj[..sb].iter().enumerate() {
                        zbuf[i * P + j] = e;
                    }
                }
                rows(&zbuf[..sb * P], &mut sbuf[..sb * P]);
                for (j, pj) in plane.iter_mut().enumerate() {
                    for (i, e) in pj[..sb].iter_mut().enumerate() {
                        *e = sbuf[i * P + j];
                    }
                    // Lanes past the rows: x is masked to zero there, and
                    // so must s be (0·NaN would not vanish).
                    for e in &mut pj[sb..sb_rows] {
                        *e = zero;
                    }
                }
                for i0 in subs {
                    let whole = i0 + r <= m;
                    let masks = if whole { [full; NV] } else { masks_of(i0) };
                    let sv: [[V::V; NV]; P] = std::array::from_fn(|j| {
                        std::array::from_fn(|v| {
                            V::load(plane[j].as_ptr().wrapping_add(i0 - s0 + v * V::N))
                        })
                    });
                    for l in 0..k {
                        let xv: [V::V; NV] = std::array::from_fn(|v| load(l, i0, v, &masks, whole));
                        for (j, sj) in sv.iter().enumerate() {
                            let slot = acc.get_unchecked_mut(l * P + j);
                            let mut a = slot.assume_init();
                            for v in 0..NV {
                                a = V::madd(a, xv[v], sj[v]);
                            }
                            slot.write(a);
                        }
                    }
                }
            }
            let mut lanes = [zero; 16];
            for (o, a) in u.iter_mut().zip(&acc[..k * P]) {
                V::store_masked(lanes.as_mut_ptr(), a.assume_init(), full);
                let mut t = zero;
                for &e in &lanes[..V::N] {
                    t += e;
                }
                *o = t;
            }
        }
    }
}

/// The per-block callback of [`logistic`]: `z` in, `σ` out (`r × n` each).
pub(crate) type Rows<'a, T> = dyn FnMut(&[T], &mut [T]) + 'a;

/// The most vector accumulators [`logistic`] keeps for `Xᵀ·σ` (one per
/// feature and real column, on the stack).
#[cfg(target_arch = "x86_64")]
const LOGISTIC_ACC: usize = 256;

/// The two products of the mean logistic loss from one read of `X`
/// (`ops/logistic.rs`): for `X [m, k]` (real, unit column stride) and `W
/// [k, n]` of `T` (dense row-major), block by block of rows `X_b`:
/// `z = X_b·W` (`r × n`, row-major), `rows(z, s)` writes `s` (`r × n`),
/// then `u ← X_bᵀ·s + u` (`u` overwritten by the first block), while `X_b`
/// is still in L1. On `T = Dual<E>` the dual products are real ones on the
/// parts (`X` has no tangent): `W`'s `k × n` duals are a real `k × 2n`
/// matrix with the parts in adjacent columns, and so are `z`, `s`, `u`.
///
/// `true` if run here (`T` is `f32`, `f64` or a dual of one; its real
/// columns, n or 2n, at most [`super::THIN_COLS`]; `k` small enough for a
/// block of one vector of rows to fit [`super::PACK`]; a vector family is
/// active and available); `false`: nothing was done.
///
/// # Bits
/// Each `z` element is what the family's product gives for it (a sum from
/// zero in increasing `l`, see the module docs). `u` is summed per block
/// (over the block's rows, in order, from zero), the blocks' sums added in
/// order; a fixed order, so the same bits on every run and thread count.
pub(crate) fn logistic<T: Real>(
    x: MatRef<'_, T::Base>,
    w: MatRef<'_, T>,
    rows: &mut Rows<'_, T>,
    u: &mut [T],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        imp::logistic_as::<T, f64>(x, w, rows, u) || imp::logistic_as::<T, f32>(x, w, rows, u)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, w, rows, u);
        false
    }
}

/// The number of `E`s in one `T` (1 for `E`, 2 for `Dual<E>`), or `None`
/// for any other `T`.
#[cfg(target_arch = "x86_64")]
fn parts<T: 'static, E: 'static>() -> Option<usize> {
    use crate::real::Dual;
    use std::any::TypeId;
    let t = TypeId::of::<T>();
    if t == TypeId::of::<E>() {
        Some(1)
    } else if t == TypeId::of::<Dual<E>>() {
        Some(2)
    } else {
        None
    }
}

/// A slice of `T` (`E` or `Dual<E>`) as the `E`s it is made of.
///
/// # Panics
/// If `T` is neither.
#[cfg(target_arch = "x86_64")]
fn elems<T: 'static, E: 'static>(x: &[T]) -> &[E] {
    let p = parts::<T, E>().expect("elems: T is E or Dual<E>");
    assert_eq!(size_of::<T>(), p * size_of::<E>(), "elems");
    // SAFETY: `T` is `E`, or `Dual<E>` (`#[repr(C)]`, two fields of `E`:
    // size asserted, no padding, aligned as `E`), so `x.len()` of them are
    // `p·x.len()` contiguous `E`s, borrowed for the same lifetime.
    unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<E>(), p * x.len()) }
}

/// The `&mut` form of [`elems`].
#[cfg(target_arch = "x86_64")]
fn elems_mut<T: 'static, E: 'static>(x: &mut [T]) -> &mut [E] {
    let p = parts::<T, E>().expect("elems_mut: T is E or Dual<E>");
    assert_eq!(size_of::<T>(), p * size_of::<E>(), "elems_mut");
    // SAFETY: as in `elems`; the result reborrows `x` exclusively.
    unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr().cast::<E>(), p * x.len()) }
}

/// The inverse of [`elems`]: `E`s, a whole number of `T`s, as `T`s.
///
/// # Panics
/// If `T` is neither `E` nor `Dual<E>`, or the length is not a multiple.
#[cfg(target_arch = "x86_64")]
fn whole<E: 'static, T: 'static>(x: &[E]) -> &[T] {
    let p = parts::<T, E>().expect("whole: T is E or Dual<E>");
    assert!(
        size_of::<T>() == p * size_of::<E>() && x.len().is_multiple_of(p),
        "whole"
    );
    assert_eq!(align_of::<T>(), align_of::<E>(), "whole");
    // SAFETY: as in `elems` (a `T` is `p` `E`s with `E`'s alignment, asserted),
    // and `x.len() / p` whole `T`s cover exactly `x`.
    unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<T>(), x.len() / p) }
}

/// The `&mut` form of [`whole`].
#[cfg(target_arch = "x86_64")]
fn whole_mut<E: 'static, T: 'static>(x: &mut [E]) -> &mut [T] {
    let p = parts::<T, E>().expect("whole_mut: T is E or Dual<E>");
    assert!(
        size_of::<T>() == p * size_of::<E>() && x.len().is_multiple_of(p),
        "whole_mut"
    );
    assert_eq!(align_of::<T>(), align_of::<E>(), "whole_mut");
    // SAFETY: as in `whole`; the result reborrows `x` exclusively.
    unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr().cast::<T>(), x.len() / p) }
}
