//! Kernel families for small products, and the switches that force one.
//!
//! By default a small product runs the best family the CPU has. The
//! environment variable [`ENV_VAR`] (`TAPE_KERNELS`, read once per process),
//! [`force`] (process-wide) and [`with_family`] (this thread, for a closure)
//! cap it, so one machine can test and benchmark every family it supports.
//! Precedence: [`with_family`] over [`force`] over `TAPE_KERNELS` over the
//! CPU's best.

use std::cell::Cell;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// The environment variable that caps the kernel family for the whole process:
/// `portable`, `avx2`, `avx512` or `auto` (the default: the CPU's best).
/// Read once, at the first small product. An unknown value, or a family the
/// CPU lacks, panics with the allowed values.
pub const ENV_VAR: &str = "TAPE_KERNELS";

/// A family of small-product kernels. [`Family::Portable`] and
/// [`Family::Avx512`] give the same bits; [`Family::Avx2`] uses fused
/// multiply-adds and differs from them by rounding only, within the bound
/// stated in the [module docs](crate::kernels) ("Determinism and accuracy").
/// Within a family, results are bit-identical for any thread count.
///
/// Families are ordered: a product runs the highest family, up to the one
/// selected, that handles it. [`Family::Avx512`] and [`Family::Avx2`] have
/// kernels for `f32`, `f64`, `Dual<f32>` and `Dual<f64>` (and a strided
/// operand that fits their packing buffer); other products under them run the
/// row loop compiled with AVX2.
/// Large products (beyond the small-product limits) run the packed kernels of
/// the same family (`packed.rs`; fused multiply-adds under both vector
/// families).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// The plain row loop, compiled for the baseline target (every CPU; what
    /// an x86_64 CPU with AVX2 but without FMA runs).
    Portable,
    /// Register-blocked AVX2 kernels with fused multiply-adds (x86_64 CPUs
    /// with AVX2 and FMA).
    Avx2,
    /// Register-blocked AVX-512F kernels without fused multiply-adds: the
    /// portable loop's bits (x86_64 CPUs with AVX-512F).
    Avx512,
}

impl Family {
    /// Every family, lowest first.
    pub const ALL: [Family; 3] = [Family::Portable, Family::Avx2, Family::Avx512];

    /// The name used by [`ENV_VAR`]: `portable`, `avx2` or `avx512`.
    pub fn name(self) -> &'static str {
        match self {
            Family::Portable => "portable",
            Family::Avx2 => "avx2",
            Family::Avx512 => "avx512",
        }
    }

    /// Why this CPU cannot run the family, or `None` if it can.
    ///
    /// ```
    /// use tape::kernels::Family;
    /// assert_eq!(Family::Portable.unavailable(), None);
    /// ```
    pub fn unavailable(self) -> Option<&'static str> {
        match self {
            Family::Portable => None,
            Family::Avx2 if has_avx2_fma() => None,
            Family::Avx512 if has_avx512() => None,
            Family::Avx2 if cfg!(target_arch = "x86_64") => Some("this CPU lacks AVX2 or FMA"),
            Family::Avx512 if cfg!(target_arch = "x86_64") => Some("this CPU has no AVX-512F"),
            _ => Some("AVX2 and AVX-512 kernels exist only on x86_64"),
        }
    }

    /// Whether this CPU can run the family.
    pub fn is_available(self) -> bool {
        self.unavailable().is_none()
    }

    /// The highest family this CPU can run.
    pub fn best() -> Family {
        *Family::ALL
            .iter()
            .rev()
            .find(|f| f.is_available())
            .unwrap_or(&Family::Portable)
    }

    fn code(self) -> u8 {
        self as u8 + 1
    }
    fn from_code(c: u8) -> Option<Family> {
        Family::ALL.get(usize::from(c).checked_sub(1)?).copied()
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not a kernel family (from [`Family::from_str`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownFamily(pub String);

impl fmt::Display for UnknownFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown kernel family {:?}; allowed values: portable, avx2, avx512 (or auto)",
            self.0
        )
    }
}

impl std::error::Error for UnknownFamily {}

impl FromStr for Family {
    type Err = UnknownFamily;
    /// Parses `portable`, `avx2` or `avx512` (ASCII case ignored).
    fn from_str(s: &str) -> Result<Family, UnknownFamily> {
        Family::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownFamily(s.to_string()))
    }
}

/// Whether the CPU has AVX2 and FMA (the [`Family::Avx2`] kernels use both).
#[cfg(target_arch = "x86_64")]
pub(in crate::kernels) fn has_avx2_fma() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}
#[cfg(not(target_arch = "x86_64"))]
pub(in crate::kernels) fn has_avx2_fma() -> bool {
    false
}
#[cfg(target_arch = "x86_64")]
pub(in crate::kernels) fn has_avx512() -> bool {
    std::is_x86_feature_detected!("avx512f")
}
#[cfg(not(target_arch = "x86_64"))]
pub(in crate::kernels) fn has_avx512() -> bool {
    false
}

/// Panics, naming `what` and the reason, if the CPU cannot run `family`.
#[track_caller]
fn require(family: Family, what: &str) {
    if let Some(why) = family.unavailable() {
        let ok: Vec<&str> = Family::ALL
            .iter()
            .filter(|f| f.is_available())
            .map(|f| f.name())
            .collect();
        panic!(
            "{what}: kernel family {family} requested, but {why} (available here: {})",
            ok.join(", ")
        );
    }
}

/// The family named by [`ENV_VAR`], or the CPU's best; read once.
fn from_env() -> Family {
    static FROM_ENV: OnceLock<Family> = OnceLock::new();
    *FROM_ENV.get_or_init(|| match std::env::var(ENV_VAR) {
        Err(std::env::VarError::NotPresent) => Family::best(),
        Err(e) => panic!("{ENV_VAR}: {e}; allowed values: portable, avx2, avx512 (or auto)"),
        Ok(s) if s.trim().is_empty() || s.trim().eq_ignore_ascii_case("auto") => Family::best(),
        Ok(s) => {
            let family = s
                .parse::<Family>()
                .unwrap_or_else(|e| panic!("{ENV_VAR}={s}: {e}"));
            require(family, &format!("{ENV_VAR}={s}"));
            family
        }
    })
}

/// Process-wide cap set by [`force`] (0: none).
static FORCED: AtomicU8 = AtomicU8::new(0);

thread_local! {
    /// This thread's cap set by [`with_family`] (0: none).
    static SCOPED: Cell<u8> = const { Cell::new(0) };
    /// The family that ran this thread's last small product (0: none yet).
    static LAST: Cell<u8> = const { Cell::new(0) };
}

/// Caps the kernel family for the whole process (every thread), overriding
/// [`ENV_VAR`]; `None` goes back to the environment variable or the CPU's best.
/// [`with_family`] still takes precedence on its thread.
///
/// # Panics
/// If the CPU cannot run `family` (the message says why and lists the
/// families it can run).
#[track_caller]
pub fn force(family: Option<Family>) {
    if let Some(f) = family {
        require(f, "kernels::force");
    }
    FORCED.store(family.map_or(0, Family::code), Ordering::Relaxed);
}

/// Runs `body` with small products on this thread capped at `family`, and
/// restores the previous setting afterwards (also if `body` panics). Other
/// threads (e.g. a thread pool's workers) are not affected: use [`force`] or
/// [`ENV_VAR`] for them.
///
/// ```
/// use tape::gemm::{gemm, MatRef};
/// use tape::kernels::{last_family, with_family, Family};
/// let a = [1.0_f32, 2.0, 3.0, 4.0];
/// let mut c = [0.0; 4];
/// with_family(Family::Portable, || {
///     gemm(1.0, MatRef::row_major(&a, 2, 2), MatRef::row_major(&a, 2, 2), 0.0, &mut c)
/// });
/// assert_eq!(last_family(), Some(Family::Portable));
/// assert_eq!(c, [7.0, 10.0, 15.0, 22.0]);
/// ```
///
/// # Panics
/// If the CPU cannot run `family`.
#[track_caller]
pub fn with_family<R>(family: Family, body: impl FnOnce() -> R) -> R {
    require(family, "kernels::with_family");
    struct Restore(u8);
    impl Drop for Restore {
        fn drop(&mut self) {
            SCOPED.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(SCOPED.with(|s| s.replace(family.code())));
    body()
}

/// The family cap in effect on this thread: [`with_family`]'s, else
/// [`force`]'s, else [`ENV_VAR`]'s, else the CPU's best.
///
/// # Panics
/// If `TAPE_KERNELS` holds an unknown name or a family the CPU lacks.
pub fn active() -> Family {
    let scoped = Family::from_code(SCOPED.with(Cell::get));
    scoped
        .or_else(|| Family::from_code(FORCED.load(Ordering::Relaxed)))
        .unwrap_or_else(from_env)
}

/// The family that ran this thread's most recent small product, or `None` if
/// it has run none. (Large products, which follow the family in effect on
/// the calling thread, do not change it.)
pub fn last_family() -> Option<Family> {
    Family::from_code(LAST.with(Cell::get))
}

/// Records that `family` ran a small product on this thread.
pub(in crate::kernels) fn record(family: Family) {
    LAST.with(|l| l.set(family.code()));
}
