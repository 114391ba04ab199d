//! Running a safe loop compiled for the widest vectors the active
//! [`super::Family`] allows: AVX-512F, AVX2, or the baseline target (SSE2 on
//! x86_64). Only the instruction set the compiler may use changes, not the
//! operations, so a loop without fused multiply-adds (Rust never contracts
//! `a * b + c`) gives the same bits in every family.
//!
//! # Soundness
//! The `unsafe` here (in [`wide!`]'s expansion) only calls `body` inside a
//! `#[target_feature]` function, after [`width`] said the CPU has that
//! feature (`is_x86_feature_detected!` through `family.rs`).

/// The widest instruction set the active family allows on this CPU.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Width {
    /// AVX-512F.
    Avx512,
    /// AVX2.
    Avx2,
    /// The baseline target (SSE2 on x86_64).
    Baseline,
}

/// Which width [`wide!`] runs now (the family's cap, and what the CPU has).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) fn width() -> Width {
    use super::{family, Family};
    let cap = super::active();
    if cap >= Family::Avx512 && family::has_avx512() {
        return Width::Avx512;
    }
    if cap >= Family::Avx2 && family::has_avx2_fma() {
        return Width::Avx2;
    }
    Width::Baseline
}

/// `wide!(body<T: Bound>(a: A, b: B) -> R)` calls the `#[inline(always)]`
/// function `body(a, b)` compiled for the active family's width: it defines
/// `#[target_feature]` copies that call `body` directly, so `body` is
/// inlined into them. (A closure handed to a generic `run(f)` is not: the
/// compiler left it out of line, compiled for the baseline target, and the
/// AVX2/AVX-512 entries were a bare jump to it in the disassembly.)
macro_rules! wide {
    ($body:ident<$($g:ident: $b:path),*>($($a:ident: $t:ty),*) -> $r:ty) => {{
        let out: $r;
        #[cfg(target_arch = "x86_64")]
        {
            /// `body` compiled with AVX-512F.
            ///
            /// # Safety
            /// The CPU must have AVX-512F.
            #[target_feature(enable = "avx512f")]
            unsafe fn avx512<$($g: $b),*>($($a: $t),*) -> $r {
                $body($($a),*)
            }
            /// `body` compiled with AVX2.
            ///
            /// # Safety
            /// The CPU must have AVX2.
            #[target_feature(enable = "avx2")]
            unsafe fn avx2<$($g: $b),*>($($a: $t),*) -> $r {
                $body($($a),*)
            }
            out = match super::wide::width() {
                // SAFETY: `width` said the CPU has AVX-512F.
                super::wide::Width::Avx512 => unsafe { avx512($($a),*) },
                // SAFETY: `width` said the CPU has AVX2.
                super::wide::Width::Avx2 => unsafe { avx2($($a),*) },
                super::wide::Width::Baseline => $body($($a),*),
            };
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            out = $body($($a),*);
        }
        out
    }};
}
pub(super) use wide;

/// Every family this CPU can run (for tests that compare them).
#[cfg(test)]
pub(super) fn families() -> Vec<super::Family> {
    use super::Family;
    [Family::Portable, Family::Avx2, Family::Avx512]
        .into_iter()
        .filter(|f| f.is_available())
        .collect()
}
