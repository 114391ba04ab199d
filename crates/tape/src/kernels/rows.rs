//! The column sums of a row-major block, `acc_j ← s_j + Σ_i r_ij`: the
//! adjoint of a bias added to every row (`batched_affine`, `batched_bias_add`),
//! compiled for the widest vectors the active [`super::Family`] allows.
//!
//! Each column is summed on its own, in increasing row order, with the
//! element type's `+`, so every family gives the plain loop's bits; only how
//! many columns share a vector changes. Columns go in blocks (of [`BLOCK`],
//! then 8, then 1) held in a local array (registers) across the rows, rather
//! than loaded and stored back once per row.
//!
//! (`wide.rs` picks the instruction set; no `unsafe` here.)

use crate::real::Real;

/// Columns summed together in registers.
const BLOCK: usize = 32;

/// `acc_j ← s_j + r_0j + r_1j + … + r_(m−1)j` for the `m = rows.len() / n`
/// rows of `rows` (`n = acc.len()`), added left to right, where `s_j = 0` if
/// `fresh` (whatever `acc` held: the bits of a zero-fill then `+=`) and
/// `acc_j` otherwise.
///
/// # Panics
/// If `rows.len()` is not a multiple of `acc.len()` (or `acc` is empty and
/// `rows` is not).
#[track_caller]
pub(crate) fn add_rows<T: Real>(acc: &mut [T], rows: &[T], fresh: bool) {
    let n = acc.len();
    assert!(
        rows.len().is_multiple_of(n),
        "add_rows: {} row elements for rows of {n}",
        rows.len()
    );
    if n == 0 {
        return;
    }
    super::wide::wide!(sum<T: Real>(acc: &mut [T], rows: &[T], fresh: bool) -> ())
}

/// The sums: blocks of [`BLOCK`] columns, then of 8, then single columns,
/// each block's sums held in a local array across the rows (`acc` non-empty,
/// `rows` whole rows).
#[inline(always)]
fn sum<T: Real>(acc: &mut [T], rows: &[T], fresh: bool) {
    let n = acc.len();
    let mut j0 = 0;
    while j0 + BLOCK <= n {
        block::<T, BLOCK>(acc, rows, j0, fresh);
        j0 += BLOCK;
    }
    while j0 + 8 <= n {
        block::<T, 8>(acc, rows, j0, fresh);
        j0 += 8;
    }
    while j0 < n {
        block::<T, 1>(acc, rows, j0, fresh);
        j0 += 1;
    }
}

/// Columns `j0..j0 + W` of [`sum`].
#[inline(always)]
fn block<T: Real, const W: usize>(acc: &mut [T], rows: &[T], j0: usize, fresh: bool) {
    let n = acc.len();
    let out = &mut acc[j0..j0 + W];
    // A plain array and copy rather than `array::from_fn`, which the
    // compiler left out of line (a call per block, in the profile).
    let mut s = [T::zero(); W];
    if !fresh {
        s.copy_from_slice(out);
    }
    for r in rows.chunks_exact(n) {
        let r = &r[j0..j0 + W];
        for j in 0..W {
            s[j] += r[j];
        }
    }
    out.copy_from_slice(&s);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::wide::families;
    use crate::kernels::with_family;
    use crate::real::Dual;

    /// Pseudo-random values of mixed magnitude, with ±0 among them.
    fn values(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let u = (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
                match i % 13 {
                    0 => -0.0,
                    1 => 0.0,
                    _ => u * 10f64.powi((i % 7) as i32 - 3),
                }
            })
            .collect()
    }

    /// The naive loop: a zero-fill (if fresh) then one `+=` per row.
    fn naive<T: Real>(acc: &mut [T], rows: &[T], fresh: bool) {
        if fresh {
            acc.fill(T::zero());
        }
        for r in rows.chunks_exact(acc.len()) {
            acc.iter_mut().zip(r).for_each(|(a, &v)| *a += v);
        }
    }

    fn check<T: Real>(make: impl Fn(f64, f64) -> T, bits: impl Fn(&T) -> (u64, u64)) {
        // Column counts around the block and vector edges; 0 to 11 rows.
        for n in [1, 2, 7, 8, 15, 16, 17, 31, 32, 33, 40, 64, 65, 100] {
            for m in [0, 1, 2, 10, 11] {
                let rv = values(m * n, (n * 31 + m) as u64);
                let rows: Vec<T> = rv.iter().map(|&v| make(v, 3.0 * v)).collect();
                let av = values(n, 5 + n as u64);
                let acc0: Vec<T> = av.iter().map(|&v| make(v, -v)).collect();
                for fresh in [true, false] {
                    let mut want = acc0.clone();
                    naive(&mut want, &rows, fresh);
                    for f in families() {
                        let mut got = acc0.clone();
                        with_family(f, || add_rows(&mut got, &rows, fresh));
                        for (j, (g, w)) in got.iter().zip(&want).enumerate() {
                            assert_eq!(
                                bits(g),
                                bits(w),
                                "n = {n}, m = {m}, fresh = {fresh}, family {}, column {j}",
                                f.name()
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn column_sums_give_the_naive_loops_bits_in_every_family() {
        check(|v, _| v as f32, |x| (u64::from(x.to_bits()), 0));
        check(|v, _| v, |x| (x.to_bits(), 0));
        check(
            |v, d| Dual::new(v as f32, d as f32),
            |x| (u64::from(x.v.to_bits()), u64::from(x.d.to_bits())),
        );
    }

    #[test]
    #[should_panic(expected = "add_rows: 7 row elements for rows of 3")]
    fn partial_rows_panic() {
        add_rows(&mut [0.0_f32; 3], &[0.0; 7], true);
    }
}
