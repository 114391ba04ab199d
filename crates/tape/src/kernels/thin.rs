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
use super::Product;

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
    use crate::real::Real;
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
}
