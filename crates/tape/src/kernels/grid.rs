//! The portable family's micro-kernel for the large products (`packed.rs`):
//! an `MR × NR` grid of scalar accumulators that the compiler keeps in vector
//! registers of the baseline target (SSE2 on x86_64, NEON on aarch64), with no
//! intrinsics, so it builds and vectorises on every target.
//!
//! # What is computed
//! As every [`Micro`]: each element of the tile is one accumulator, `s ← s +
//! a_il·b_lj` in increasing `l`, the product and the sum each rounded on its
//! own (Rust never fuses `a * b + c`), so the portable family gives the bits
//! of the portable row loop (`portable.rs`) whatever the grid's size
//! (`tests/kernel_families.rs`, `large_products_follow_the_family_and_its_bound`).
//!
//! # Why this shape
//! The grid is an array with constant sizes and every loop over it has
//! constant bounds (edges are a test on the index, not a shorter loop), so
//! the arrays become scalars, the loops unroll, and the vectoriser packs each
//! row's `NR` lanes into vectors: per `l`, `NR / W` vector loads of the packed
//! `B` row, one splat of `a_il` per row, and `MR·NR / W` vector products and
//! sums (`W` lanes per register). The grid is sized so the accumulators, the
//! `B` row and a splat fit in the register file: x86_64 has 16 vector
//! registers (12 accumulators of 4 `f32` or 2 `f64`), aarch64 has 32 (8 of
//! 4 `f32`, 16 of 2 `f64`). The `l` loop is a function of its own
//! ([`steps`]), which is what keeps the accumulators in registers.
//!
//! Checked in the disassembly (rustc 1.95, release): on x86_64 (SSE2) the
//! loop of `steps` is 47 instructions for both grids, 12 `mulps` and 12
//! `addps` (`mulpd`/`addpd`), no stack access; on aarch64 (`cargo rustc
//! --target aarch64-unknown-linux-gnu -- --emit=asm`) 8 or 16 `fmul` and as
//! many `fadd` on `v.4s` / `v.2d` per step, no shuffles and no fused
//! `fmla`.

use super::packed::{self, Bufs, Job, Micro, Tile};
use super::Prim;
use crate::real::Real;
use std::marker::PhantomData;

/// `(MR, NR)` of the `f32` grid: 6 × 8 is 12 SSE registers of 4 lanes.
#[cfg(not(target_arch = "aarch64"))]
pub(crate) const GRID_32: (usize, usize) = (6, 8);
/// `(MR, NR)` of the `f64` grid: 6 × 4 is 12 SSE registers of 2 lanes.
#[cfg(not(target_arch = "aarch64"))]
pub(crate) const GRID_64: (usize, usize) = (6, 4);
/// `(MR, NR)` of the `f32` grid: 8 × 4 is 8 NEON registers of 4 lanes.
/// (8 × 8 would fit the 32 registers, but in this crate's build the
/// vectoriser shuffled its lanes between rows on every step: `zip`/`uzp` in
/// the loop.)
#[cfg(target_arch = "aarch64")]
pub(crate) const GRID_32: (usize, usize) = (8, 4);
/// `(MR, NR)` of the `f64` grid: 8 × 4 is 16 NEON registers of 2 lanes.
#[cfg(target_arch = "aarch64")]
pub(crate) const GRID_64: (usize, usize) = (8, 4);

/// The portable micro-kernel: `MR × NR` accumulators of `E`, each step a
/// product and a sum rounded on their own.
pub(crate) struct Grid<E, const MR: usize, const NR: usize>(PhantomData<E>);

impl<E: Real<Base = E> + Copy, const MR: usize, const NR: usize> Micro for Grid<E, MR, NR> {
    type E = E;
    const MR: usize = MR;
    const NR: usize = NR;
    /// A panel of `A` of `16·MR` rows (`16·MR·KC` elements: 96 KiB of `f32`
    /// for 6 rows, in L2).
    const MC: usize = 16 * MR;
    /// 2 KiB per row of a `B` panel, rounded up to a multiple of `NR`.
    const NC: usize = (2048 / std::mem::size_of::<E>()).next_multiple_of(NR);

    unsafe fn transpose(_: super::packed::Transposition<E>) -> bool {
        false
    }

    /// Packs every sliver: the portable family is what aarch64 runs, and
    /// reading `B` in place was measured only on x86_64 (packed.rs).
    const B_IN_PLACE: bool = false;

    #[inline(always)]
    unsafe fn tile(kc: usize, a: *const E, b: *const E, rsb: usize, t: &Tile<E>) {
        debug_assert_eq!(rsb, NR, "grid: B is always packed");
        let mut acc = [[E::zero(); NR]; MR];
        // SAFETY: this fn's contract (`Micro::tile`): rows < t.rows ≤ MR and
        // columns < t.cols ≤ NR of `t.c`/`t.src`, kc·MR elements of `a`,
        // kc·NR of `b`.
        unsafe {
            if !t.first {
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    for (x, s) in acc_r.iter_mut().enumerate() {
                        if r < t.rows && x < t.cols {
                            *s = *t.c.add(r * t.rs + x);
                        }
                    }
                }
            }
            steps(kc, a, b, &mut acc);
            let beta_zero = t.beta == E::zero();
            for (r, acc_r) in acc.iter().enumerate() {
                for (x, &s) in acc_r.iter().enumerate() {
                    if r < t.rows && x < t.cols {
                        let out = t.c.add(r * t.rs + x);
                        *out = if !t.last {
                            s
                        } else if beta_zero {
                            t.alpha * s
                        } else {
                            t.alpha * s + t.beta * *t.src.add(r * t.srs + x)
                        };
                    }
                }
            }
        }
    }
}

/// `acc[r][x] ← acc[r][x] + a_rl·b_lx` for `l < kc` in increasing `l`, the
/// product and the sum each rounded on its own: the `l` loop of a tile, on
/// packed slivers `a[l·MR + r]` and `b[l·NR + x]`.
///
/// Never inlined, and on a copy of the grid: so its few live values are all
/// the register allocator sees, and the vectoriser sees only this loop.
/// Inlined into `packed::run`, or next to the tile's edge handling, the
/// accumulators were spilled to the stack and reshuffled on every step (seen
/// in the disassembly, and only with some codegen-unit splits); as it is, the
/// loop of a 6 × 8 `f32` grid on x86_64 is 2 loads of `B`, 6 splats of `A`,
/// 12 `mulps` and 12 `addps`, with no stack access (6 × 4 `f64`: the same
/// with `mulpd`/`addpd`). A call per tile and panel is nothing beside its
/// `kc·MR·NR` multiply-adds.
///
/// # Safety
/// `a` valid for `kc·MR` reads and `b` for `kc·NR` (read as `kc` arrays of
/// `MR` and of `NR`: the same layout).
#[inline(never)]
unsafe fn steps<E: Real<Base = E> + Copy, const MR: usize, const NR: usize>(
    kc: usize,
    a: *const E,
    b: *const E,
    acc: &mut [[E; NR]; MR],
) {
    let mut grid = *acc;
    let (mut pa, mut pb) = (a, b);
    for _ in 0..kc {
        // SAFETY: this fn's contract: step l reads a[l·MR..(l + 1)·MR] and
        // b[l·NR..(l + 1)·NR], l < kc.
        let (al, bl) = unsafe { (*pa.cast::<[E; MR]>(), *pb.cast::<[E; NR]>()) };
        for r in 0..MR {
            for x in 0..NR {
                grid[r][x] += al[r] * bl[x];
            }
        }
        pa = pa.wrapping_add(MR);
        pb = pb.wrapping_add(NR);
    }
    *acc = grid;
}

/// `C ← α·A·B + β·C` by [`packed::run`] with the grid of `F`'s size
/// ([`GRID_32`] or [`GRID_64`]): the portable family's large products.
///
/// # Safety
/// As [`packed::run`] (no CPU feature needed).
pub(crate) unsafe fn large<F: Prim>(job: Job<F>, bufs: &mut Bufs<F>) {
    // SAFETY: this fn's contract.
    unsafe {
        if std::mem::size_of::<F>() == 4 {
            packed::run::<Grid<F, { GRID_32.0 }, { GRID_32.1 }>>(job, bufs)
        } else {
            packed::run::<Grid<F, { GRID_64.0 }, { GRID_64.1 }>>(job, bufs)
        }
    }
}
