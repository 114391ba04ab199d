//! Running a safe loop compiled for the widest vectors the active
//! [`super::Family`] allows: AVX-512F, AVX2, or the baseline target (SSE2 on
//! x86_64). Only the instruction set the compiler may use changes, not the
//! operations, so a loop without fused multiply-adds (Rust never contracts
//! `a * b + c`) gives the same bits in every family.
//!
//! # Soundness
//! The `unsafe` here only calls `body` inside a `#[target_feature]` function,
//! after `is_x86_feature_detected!` said the CPU has that feature.

use super::Family;

/// `body()`, compiled (inlined) for the active family's vector width.
/// `body` must be `#[inline(always)]` code for the width to reach it.
#[inline(always)]
pub(super) fn run<R>(body: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        use super::family;
        let cap = super::active();
        if cap >= Family::Avx512 && family::has_avx512() {
            // SAFETY: the CPU has AVX-512F (detected on the line above).
            return unsafe { on_avx512(body) };
        }
        if cap >= Family::Avx2 && family::has_avx2_fma() {
            // SAFETY: the CPU has AVX2 (detected on the line above).
            return unsafe { on_avx2(body) };
        }
    }
    body()
}

/// `body()` compiled with AVX-512F.
///
/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn on_avx512<R>(body: impl FnOnce() -> R) -> R {
    body()
}

/// `body()` compiled with AVX2.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn on_avx2<R>(body: impl FnOnce() -> R) -> R {
    body()
}

/// Every family this CPU can run (for tests that compare them).
#[cfg(test)]
pub(super) fn families() -> Vec<Family> {
    [Family::Portable, Family::Avx2, Family::Avx512]
        .into_iter()
        .filter(|f| f.is_available())
        .collect()
}
