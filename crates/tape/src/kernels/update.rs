//! The passes over long `f32`/`f64` slices that an inner optimiser's step
//! makes over the whole state (φ of a meta-batch chunk: ≈ 23 000 elements for
//! the sine MLP's 13 tasks): [`all_finite`], [`sub_scaled`], and the two in
//! one pass, [`sub_scaled_finite`] (the SGD step reads `g` once), compiled
//! for the widest vectors the active [`super::Family`] allows (AVX-512F,
//! AVX2, or the baseline target's SSE2).
//!
//! Only the vector width changes between families: every element is computed
//! on its own by the same IEEE operations (`a·g_i` rounded, then `x_i − ·`
//! rounded; no fused multiply-add, which Rust never contracts), so every
//! family gives the plain loop's bits.
//!
//! (`wide.rs` picks the instruction set; no `unsafe` here.)

use crate::real::Float;

/// Whether every element of `x` is finite (neither ±∞ nor NaN).
///
/// ```
/// use tape::kernels::all_finite;
/// assert!(all_finite(&[1.0_f32, -2.0, 0.0]));
/// assert!(!all_finite(&[1.0_f64, f64::NAN]));
/// assert!(all_finite::<f32>(&[]));
/// ```
pub fn all_finite<T: Float>(x: &[T]) -> bool {
    super::wide::wide!(finite<T: Float>(x: &[T]) -> bool)
}

/// `x_i ← x_i − a·g_i` for every `i` (an SGD step with rate `a`), the
/// product and the difference each rounded on its own.
///
/// ```
/// use tape::kernels::sub_scaled;
/// let mut x = [1.0_f32, 2.0, 3.0];
/// sub_scaled(&mut x, &[1.0, 0.5, -2.0], 0.5);
/// assert_eq!(x, [0.5, 1.75, 4.0]);
/// ```
///
/// # Panics
/// If `x` and `g` differ in length.
#[track_caller]
pub fn sub_scaled<T: Float>(x: &mut [T], g: &[T], a: T) {
    assert_eq!(
        x.len(),
        g.len(),
        "sub_scaled: x has {} elements, g has {}",
        x.len(),
        g.len()
    );
    super::wide::wide!(sub<T: Float>(x: &mut [T], g: &[T], a: T) -> ())
}

/// `x_i ← x_i − a·g_i` for every `i`, as [`sub_scaled`] (the same bits),
/// and whether every `g_i` is finite, in one pass over `g`. Every element of
/// `x` is updated whatever the answer: a caller that must leave `x`
/// untouched on a non-finite gradient restores it from a copy (the SGD step
/// restores φ from its gradient pass's leaves).
///
/// ```
/// use tape::kernels::sub_scaled_finite;
/// let mut x = [1.0_f32, 2.0, 3.0];
/// assert!(sub_scaled_finite(&mut x, &[1.0, 0.5, -2.0], 0.5));
/// assert_eq!(x, [0.5, 1.75, 4.0]);
/// assert!(!sub_scaled_finite(&mut x, &[0.0, f32::INFINITY, 0.0], 0.5));
/// ```
///
/// # Panics
/// If `x` and `g` differ in length.
#[track_caller]
pub fn sub_scaled_finite<T: Float>(x: &mut [T], g: &[T], a: T) -> bool {
    assert_eq!(
        x.len(),
        g.len(),
        "sub_scaled_finite: x has {} elements, g has {}",
        x.len(),
        g.len()
    );
    super::wide::wide!(sub_finite<T: Float>(x: &mut [T], g: &[T], a: T) -> bool)
}

/// The fused loop: the update, and the finiteness test of `g` as sums
/// `s_t ← s_t + (g_i − g_i)` in [`LANES`] independent lanes (`g − g` is +0
/// for a finite `g` and NaN for ±∞ or NaN, and a NaN stays), so the test is
/// two vector operations beside the update's and needs no reordering of a
/// sum (no branch, no mask packing).
#[inline(always)]
fn sub_finite<T: Float>(x: &mut [T], g: &[T], a: T) -> bool {
    let mut lanes = [T::zero(); LANES];
    let mut xs = x.chunks_exact_mut(LANES);
    let mut gs = g.chunks_exact(LANES);
    for (xb, gb) in (&mut xs).zip(&mut gs) {
        for ((s, x), &g) in lanes.iter_mut().zip(xb).zip(gb) {
            sub_and_test(s, x, g, a);
        }
    }
    for ((s, x), &g) in lanes
        .iter_mut()
        .zip(xs.into_remainder())
        .zip(gs.remainder())
    {
        sub_and_test(s, x, g, a);
    }
    lanes.iter().all(|s| *s == T::zero())
}

/// One element of [`sub_finite`]: `x ← x − a·g` and `s ← s + (g − g)`.
#[inline(always)]
#[allow(clippy::eq_op)] // g − g is the test: 0, or NaN for a non-finite g
fn sub_and_test<T: Float>(s: &mut T, x: &mut T, g: T, a: T) {
    *s += g - g;
    *x -= a * g;
}

/// Lanes of [`sub_finite`]'s test: 8 AVX2 vectors of `f32` (4 of AVX-512),
/// so the sums' latency is hidden behind the update.
const LANES: usize = 64;

/// The finiteness test, in blocks of 256 (a non-finite element stops the
/// pass at the end of its block; within a block the test has no branch, so
/// it vectorises).
#[inline(always)]
fn finite<T: Float>(x: &[T]) -> bool {
    x.chunks(256)
        .all(|c| c.iter().fold(true, |ok, v| ok & v.is_finite()))
}

/// The update loop.
#[inline(always)]
fn sub<T: Float>(x: &mut [T], g: &[T], a: T) {
    for (x, &g) in x.iter_mut().zip(g) {
        *x -= a * g;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::wide::families;
    use crate::kernels::with_family;

    /// Values with every rounding case nearby: mixed signs and magnitudes, ±0.
    fn values<T: Float>(n: usize, seed: u64) -> Vec<T> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|i| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = (s >> 11) as f64 / (1u64 << 53) as f64;
                match i % 17 {
                    0 => T::from_f64(0.0),
                    1 => T::from_f64(-0.0),
                    _ => T::from_f64((u - 0.5) * 10f64.powi((i % 9) as i32 - 4)),
                }
            })
            .collect()
    }

    fn sub_matches_the_plain_loop<T: Float>() {
        // Lengths around every vector width's edges, and a long one.
        for n in [
            0, 1, 3, 4, 7, 8, 15, 16, 17, 31, 33, 255, 256, 257, 1000, 22_893,
        ] {
            let (x0, g) = (values::<T>(n, n as u64), values::<T>(n, 7 + n as u64));
            let a = T::from_f64(0.012_345_678_9);
            let mut want = x0.clone();
            for (x, &g) in want.iter_mut().zip(&g) {
                *x -= a * g;
            }
            for f in families() {
                let mut got = x0.clone();
                with_family(f, || sub_scaled(&mut got, &g, a));
                let bits = |v: &[T]| v.iter().map(|x| x.to_f64()).collect::<Vec<_>>();
                assert!(
                    got.iter()
                        .zip(&want)
                        .all(|(p, q)| p.to_f64().to_bits() == q.to_f64().to_bits()),
                    "{} n = {n}, family {}: {:?} != {:?}",
                    T::NAME,
                    f.name(),
                    &bits(&got)[..n.min(8)],
                    &bits(&want)[..n.min(8)]
                );
            }
        }
    }

    #[test]
    fn sub_scaled_gives_the_plain_loops_bits_in_every_family() {
        sub_matches_the_plain_loop::<f32>();
        sub_matches_the_plain_loop::<f64>();
    }

    /// The fused step gives `sub_scaled`'s bits on finite gradients (and says
    /// so), and finds a non-finite element at either end, the middle and
    /// around the vector widths' edges, still updating every element.
    fn fused_matches_the_two_passes<T: Float>() {
        let a = T::from_f64(0.012_345_678_9);
        for n in [
            1, 3, 7, 8, 9, 15, 16, 17, 31, 33, 255, 256, 257, 1000, 22_893,
        ] {
            let (x0, g) = (values::<T>(n, n as u64), values::<T>(n, 5 + n as u64));
            let bits = |v: &[T]| v.iter().map(|x| x.to_f64().to_bits()).collect::<Vec<_>>();
            for f in families() {
                let (mut want, mut got) = (x0.clone(), x0.clone());
                with_family(f, || sub_scaled(&mut want, &g, a));
                assert!(with_family(f, || sub_scaled_finite(&mut got, &g, a)));
                assert_eq!(bits(&got), bits(&want), "{} n = {n} {}", T::NAME, f.name());
                for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
                    for i in [0, n / 2, n - 1, 7.min(n - 1), 8.min(n - 1), 16.min(n - 1)] {
                        let mut gb = g.clone();
                        gb[i] = T::from_f64(bad);
                        let mut got = x0.clone();
                        assert!(
                            !with_family(f, || sub_scaled_finite(&mut got, &gb, a)),
                            "{} n = {n}, family {}: {bad} at {i} not found",
                            T::NAME,
                            f.name()
                        );
                        // Every other element is updated as by `sub_scaled`.
                        let j = if i == 0 { n - 1 } else { 0 };
                        if j != i {
                            assert_eq!(got[j].to_f64().to_bits(), want[j].to_f64().to_bits());
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn sub_scaled_finite_is_sub_scaled_and_all_finite_in_every_family() {
        fused_matches_the_two_passes::<f32>();
        fused_matches_the_two_passes::<f64>();
    }

    #[test]
    #[should_panic(expected = "sub_scaled_finite: x has 3 elements, g has 2")]
    fn sub_scaled_finite_panics_on_lengths_that_differ() {
        sub_scaled_finite(&mut [0.0_f32; 3], &[0.0; 2], 1.0);
    }

    fn finite_finds_every_bad_element<T: Float>() {
        for n in [1, 5, 8, 16, 17, 255, 256, 257, 600] {
            let x = values::<T>(n, 3);
            for f in families() {
                assert!(
                    with_family(f, || all_finite(&x)),
                    "{} n = {n} {}",
                    T::NAME,
                    f.name()
                );
                for bad in [
                    T::from_f64(f64::NAN),
                    T::from_f64(f64::INFINITY),
                    T::from_f64(f64::NEG_INFINITY),
                ] {
                    // The first, last and a middle element, and each block edge.
                    for i in [0, n / 2, n - 1, 255.min(n - 1), 256.min(n - 1)] {
                        let mut y = x.clone();
                        y[i] = bad;
                        assert!(
                            !with_family(f, || all_finite(&y)),
                            "{} n = {n}, family {}: {} at {i} not found",
                            T::NAME,
                            f.name(),
                            bad.to_f64()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn all_finite_finds_a_non_finite_element_anywhere_in_every_family() {
        finite_finds_every_bad_element::<f32>();
        finite_finds_every_bad_element::<f64>();
    }

    #[test]
    #[should_panic(expected = "sub_scaled: x has 3 elements, g has 2")]
    fn sub_scaled_panics_on_lengths_that_differ() {
        sub_scaled(&mut [0.0_f32; 3], &[0.0; 2], 1.0);
    }
}
