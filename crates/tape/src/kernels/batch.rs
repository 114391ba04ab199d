//! A batch of equally shaped products `C_i ← α·A_i·B_i + β·C_i` (i < count)
//! whose operands sit at fixed element steps in their buffers: the batched
//! ops' one product per task. The shapes, the views and the output are
//! checked once for the whole batch, and the kernel (the family, the
//! instruction set, the operand layout) is chosen once, from slice 0: every
//! slice has the same shapes and strides, and those choices depend on
//! nothing else. Each slice then runs the kernel [`super::gemm`] would run on
//! it alone, so the results are [`super::gemm`]'s bits, slice by slice.
//!
//! Soundness: slice i reads `a.data[i·a_step..]` through `a`'s shape and
//! strides. The constructor checks the last slice's view like a
//! [`MatRef`] constructor would; an earlier slice's buffer is longer and its
//! largest index the same, so it is inside too. Slice i of `C` is the dense
//! row-major `c[i·m·n..(i + 1)·m·n]`.

use super::{active, check_inner, is_small, run, Family, MatMut, MatRef, Parts, Product};
use crate::real::Real;

/// A batch of `count` products `C_i ← α·A_i·B_i + β·C_i` with the same
/// shapes and strides: `A_i` is `a`'s view shifted by `i·a_step` elements,
/// `B_i` is `b`'s shifted by `i·b_step`, `C_i` is the dense row-major block
/// i of `c`. Built (crate-private `Batch::new`) by the batched ops for
/// `gemm_batch`; what the element types' batched kernel hooks
/// ([`Real::simd_gemm_batch`]) receive, hence public and hidden, like them.
#[doc(hidden)]
pub struct Batch<'a, T: Real> {
    alpha: T::Base,
    a: MatRef<'a, T>,
    a_step: usize,
    b: MatRef<'a, T>,
    b_step: usize,
    beta: T::Base,
    c: &'a mut [T],
    count: usize,
}

impl<'a, T: Real> Batch<'a, T> {
    /// Checks a batch: `a` (`m × k`) and `b` (`k × n`) are slice 0's views of
    /// their whole buffers, slice `count − 1`'s views (shifted by
    /// `(count − 1)·step`) are inside them, and `c` has `count·m·n` elements.
    ///
    /// # Panics
    /// On mismatched inner dimensions, an output of the wrong length, or a
    /// last slice outside its buffer (the messages have the shapes).
    #[allow(clippy::too_many_arguments)]
    #[track_caller]
    pub(crate) fn new(
        alpha: T::Base,
        (a, a_step): (MatRef<'a, T>, usize),
        (b, b_step): (MatRef<'a, T>, usize),
        beta: T::Base,
        c: &'a mut [T],
        count: usize,
    ) -> Self {
        check_inner(&a, &b);
        let (m, n) = (a.rows, b.cols);
        let len = count.checked_mul(m).and_then(|x| x.checked_mul(n));
        assert!(
            len == Some(c.len()),
            "gemm_batch: {count} × lhs [{m}, {}], rhs [{}, {n}]: output has {} elements",
            a.cols,
            b.rows,
            c.len()
        );
        if let Some(last) = count.checked_sub(1) {
            for (v, step, what) in [(&a, a_step, "lhs"), (&b, b_step, "rhs")] {
                let off = last.checked_mul(step).filter(|&o| o <= v.data.len());
                let Some(off) = off else {
                    panic!(
                        "gemm_batch: {what} slice {last} starts past its buffer of {} elements (step {step})",
                        v.data.len()
                    )
                };
                // The constructor's checks on the last slice (panics if outside).
                let _ = MatRef::new(&v.data[off..], v.rows, v.cols, v.rs, v.cs);
            }
        }
        Batch {
            alpha,
            a,
            a_step,
            b,
            b_step,
            beta,
            c,
            count,
        }
    }

    /// The number of products.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// Product i (< count), views built without checks (see the module docs).
    #[inline]
    pub(crate) fn product(&mut self, i: usize) -> Product<'_, T> {
        let (m, n) = (self.a.rows, self.b.cols);
        let shift = |v: &MatRef<'a, T>, step: usize| MatRef {
            data: &v.data[i * step..],
            ..*v
        };
        Product {
            alpha: self.alpha,
            a: shift(&self.a, self.a_step),
            b: shift(&self.b, self.b_step),
            beta: self.beta,
            c: MatMut {
                data: &mut self.c[i * m * n..(i + 1) * m * n],
                rows: m,
                cols: n,
                rs: n,
                cs: 1,
            },
        }
    }
}

/// Runs every product of `batch`, each with [`super::gemm`]'s bits: a small
/// product under a family above the portable one goes to the element type's
/// batched kernel hook ([`Real::simd_gemm_batch`]), which chooses its kernel
/// once; anything else (or a hook that declines) runs product by product as
/// [`super::gemm`] would.
pub(crate) fn gemm_batch<T: Real>(mut batch: Batch<'_, T>) {
    let (m, k, n) = (batch.a.rows, batch.a.cols, batch.b.cols);
    if batch.count == 0 || m == 0 || n == 0 {
        return;
    }
    if k > 0 && is_small(m, k, n) && active() > Family::Portable && T::simd_gemm_batch(&mut batch) {
        return;
    }
    for i in 0..batch.count {
        run(batch.product(i), Parts::Both);
    }
}

/// The batched hook of `f32` and `f64`: the matrix-vector kernel
/// (`thin.rs`) if it takes slice 0 (it then takes every slice: its choice
/// depends on shapes and strides only), else the register-blocked ones
/// (`simd.rs`), chosen once; `false`: not taken, nothing run.
pub(crate) fn real<E: super::simd::Lane>(batch: &mut Batch<'_, E>) -> bool {
    if super::thin::real(&mut batch.product(0)) {
        for i in 1..batch.count {
            let taken = super::thin::real(&mut batch.product(i));
            assert!(
                taken,
                "thin kernels took slice 0 of a batch but not slice {i}"
            );
        }
        return true;
    }
    super::simd::real_batch(batch)
}

#[cfg(test)]
mod tests {
    use super::{gemm_batch, Batch};
    use crate::kernels::{gemm, with_family, Family, MatRef};
    use crate::real::{Dual, Real};

    /// Deterministic entries of mixed sign, `make(value, tangent)`.
    fn filled<T>(len: usize, seed: u64, make: &impl Fn(f64, f64) -> T) -> Vec<T> {
        (0..len)
            .map(|i| {
                let x = ((i as u64 * 2654435761 + seed * 97) % 1000) as f64 / 500.0 - 1.0;
                let d = ((i as u64 * 40503 + seed * 31) % 1000) as f64 / 500.0 - 1.0;
                make(x, d)
            })
            .collect()
    }

    /// The batch equals one [`gemm`] per slice, bit for bit, for every
    /// family, `f32`, `f64` and `Dual<f32>`, on the batched ops' layouts
    /// (`A·Wᵀ`, `g·W`, `gᵀ·A`), a single column, and a β ≠ 0, 1.
    fn equals_per_slice<T: Real + PartialEq + std::fmt::Debug>(
        seed: u64,
        make: impl Fn(f64, f64) -> T,
    ) {
        let count = 5;
        for (m, k, n) in [
            (10, 40, 40),
            (10, 1, 40),
            (10, 40, 1),
            (3, 7, 9),
            (40, 10, 40),
        ] {
            // (a rows, a cols, a row stride, a col stride, step), the same for b.
            let layouts = [
                ((m, k, k, 1), (k, n, 1, k)), // A·Wᵀ, W [n, k] row-major
                ((m, k, k, 1), (k, n, n, 1)), // g·W
                ((m, k, 1, m), (k, n, n, 1)), // gᵀ·A, g [k, m] row-major
            ];
            for ((ar, ac, ars, acs), (br, bc, brs, bcs)) in layouts {
                let (alen, blen) = (ar * ac, br * bc);
                let a = filled(count * alen + 3, seed, &make);
                let b = filled(count * blen + 2, seed + 1, &make);
                let c0 = filled(count * m * n, seed + 2, &make);
                for family in Family::ALL.into_iter().filter(|f| f.is_available()) {
                    for (alpha, beta) in [(1.0, 0.0), (1.0, 1.0), (0.5, -1.5)] {
                        let (alpha, beta) = (
                            <T::Base as Real>::from_f64(alpha),
                            <T::Base as Real>::from_f64(beta),
                        );
                        let mut batched = c0.clone();
                        let mut single = c0.clone();
                        with_family(family, || {
                            gemm_batch(Batch::new(
                                alpha,
                                (MatRef::new(&a, ar, ac, ars, acs), alen),
                                (MatRef::new(&b, br, bc, brs, bcs), blen),
                                beta,
                                &mut batched,
                                count,
                            ));
                            for i in 0..count {
                                gemm(
                                    alpha,
                                    MatRef::new(&a[i * alen..], ar, ac, ars, acs),
                                    MatRef::new(&b[i * blen..], br, bc, brs, bcs),
                                    beta,
                                    &mut single[i * m * n..(i + 1) * m * n],
                                );
                            }
                        });
                        assert!(
                            batched == single,
                            "{family:?} [{ar}, {ac}]·[{br}, {bc}] strides ({ars}, {acs}), ({brs}, {bcs})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_batch_is_one_gemm_per_slice_bit_for_bit() {
        equals_per_slice(1, |x, _| x as f32);
        equals_per_slice(2, |x, _| x);
        equals_per_slice(3, |x, d| Dual::new(x as f32, d as f32));
        equals_per_slice(4, Dual::new);
    }

    /// Three `[1, 4]·[4, 2]` products (steps 4 and 8) from buffers of
    /// `b_len` (B's) and `c_len` (C's) elements.
    fn three_products(b_len: usize, c_len: usize) {
        let (a, b, mut c) = ([0.0f32; 12], vec![0.0f32; b_len], vec![0.0f32; c_len]);
        let _ = Batch::new(
            1.0,
            (MatRef::row_major(&a, 1, 4), 4),
            (MatRef::row_major(&b, 4, 2), 8),
            0.0,
            &mut c,
            3,
        );
    }

    #[test]
    #[should_panic(expected = "gemm_batch: rhs slice 2 starts past its buffer of 8 elements")]
    fn a_last_slice_outside_its_buffer_panics() {
        three_products(8, 6);
    }

    #[test]
    #[should_panic(expected = "gemm_batch: 3 × lhs [1, 4], rhs [4, 2]: output has 5 elements")]
    fn an_output_of_the_wrong_length_panics() {
        three_products(24, 5);
    }
}
