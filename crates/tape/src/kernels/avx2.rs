//! [`super::Family::Avx2`]: the portable loop compiled with AVX2 enabled.
//!
//! LLVM vectorises the loop's row updates with 256-bit registers; without
//! `fma` enabled and without fast-math it keeps every product and sum rounded
//! on its own, so the bits are the portable loop's. For CPUs without the
//! AVX-512 kernels, and for element types that have none.

use super::MatRef;
use crate::real::Real;

/// Runs the AVX2 build of the portable loop if this CPU has AVX2; `false`
/// means "not taken" (the caller runs the plain loop).
pub(super) fn small<T: Real>(
    alpha: T::Base,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    beta: T::Base,
    c: &mut [T],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if super::family::has_avx2() {
        // SAFETY: the CPU has AVX2 (detected on the line above); the function
        // is otherwise safe code.
        unsafe { small_avx2(alpha, a, b, beta, c) };
        return true;
    }
    let _ = (alpha, a, b, beta, c);
    false
}

/// `portable::small` compiled with AVX2 (it is `#[inline(always)]`).
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn small_avx2<T: Real>(
    alpha: T::Base,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    beta: T::Base,
    c: &mut [T],
) {
    super::portable::small(alpha, a, b, beta, c);
}
