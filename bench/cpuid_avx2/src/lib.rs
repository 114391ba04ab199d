//! `libcpuid_avx2.so`: loaded with `LD_PRELOAD`, it hides AVX-512 from the
//! `cpuid` instruction for the whole process, so that a program that picks its
//! kernels from CPUID (JAX's YNNPACK, through cpuinfo, which no environment
//! variable caps: `docs/benchmarks.md`, "ynn") runs on an AVX-512 machine what
//! it would run on an AVX2+FMA one. `bench/compare.py --family avx2` puts it
//! under the JAX side.
//!
//! How: Linux's CPUID faulting (`arch_prctl(ARCH_SET_CPUID, 0)`, x86_64 CPUs
//! whose `/proc/cpuinfo` flags include `cpuid_fault`) makes every `cpuid` of
//! this thread and of the threads it starts raise `SIGSEGV` (`si_code ==
//! SI_KERNEL`). The handler below runs the real `cpuid` with faulting
//! switched off for that one instruction, clears the AVX-512 bits of leaf 7
//! (subleaf 0: EBX, ECX, EDX; subleaf 1: EAX's AVX512_BF16), writes the four
//! registers into the interrupted context and steps over the two-byte
//! instruction. Any other `SIGSEGV` gets the default action back and faults
//! again where it was. AVX2, FMA and everything else read as they are.
//!
//! A program's own `SIGSEGV` handler, installed after this one, would take
//! the faults instead: then its `cpuid`s crash it, loudly. Where faulting
//! is not available, nothing is hidden and one line on stderr says so. With
//! `CPUID_AVX2_REPORT=1` the library prints, at exit, how many `cpuid`s it
//! answered (start-up only, for JAX: a timed loop that called `cpuid` would
//! be slowed by the traps).
//!
//! Linux on x86_64 only; elsewhere it builds to an empty library.

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod imp {
    use std::sync::atomic::{AtomicU64, Ordering};

    /// `arch_prctl` codes (`asm/prctl.h`).
    const ARCH_SET_CPUID: libc::c_ulong = 0x1012;
    /// `si_code` of a fault the kernel raises itself (#GP: CPUID faulting).
    const SI_KERNEL: libc::c_int = 0x80;

    /// The `cpuid`s answered so far.
    static TRAPS: AtomicU64 = AtomicU64::new(0);

    /// `(eax, ebx, ecx, edx)` of `cpuid(leaf, sub)` with AVX-512 cleared:
    /// leaf 7 subleaf 0 EBX bits 16 (F), 17 (DQ), 21 (IFMA), 26 (PF), 27
    /// (ER), 28 (CD), 30 (BW), 31 (VL); ECX bits 1 (VBMI), 6 (VBMI2), 11
    /// (VNNI), 12 (BITALG), 14 (VPOPCNTDQ); EDX bits 2 (4VNNIW), 3 (4FMAPS), 8
    /// (VP2INTERSECT), 23 (FP16); subleaf 1 EAX bit 5 (BF16).
    pub(crate) fn masked(leaf: u32, sub: u32, r: [u32; 4]) -> [u32; 4] {
        let bits = |list: &[u32]| list.iter().fold(0u32, |m, b| m | 1 << b);
        let [mut a, mut b, mut c, mut d] = r;
        if leaf == 7 && sub == 0 {
            b &= !bits(&[16, 17, 21, 26, 27, 28, 30, 31]);
            c &= !bits(&[1, 6, 11, 12, 14]);
            d &= !bits(&[2, 3, 8, 23]);
        } else if leaf == 7 && sub == 1 {
            a &= !bits(&[5]);
        }
        [a, b, c, d]
    }

    /// The `SIGSEGV` handler (see the crate's docs).
    unsafe extern "C" fn on_fault(
        _: libc::c_int,
        info: *mut libc::siginfo_t,
        ctx: *mut libc::c_void,
    ) {
        // SAFETY: the kernel passes a valid siginfo_t and ucontext_t to an
        // SA_SIGINFO handler. A SI_KERNEL fault is a #GP at a mapped
        // instruction, so its first two bytes can be read; arch_prctl and
        // cpuid have no memory effects.
        unsafe {
            let uc = &mut *(ctx as *mut libc::ucontext_t);
            let g = &mut uc.uc_mcontext.gregs;
            let rip = g[libc::REG_RIP as usize] as *const u8;
            if (*info).si_code != SI_KERNEL || *rip != 0x0f || *rip.add(1) != 0xa2 {
                libc::signal(libc::SIGSEGV, libc::SIG_DFL);
                return;
            }
            let (leaf, sub) = (
                g[libc::REG_RAX as usize] as u32,
                g[libc::REG_RCX as usize] as u32,
            );
            libc::syscall(libc::SYS_arch_prctl, ARCH_SET_CPUID, 1 as libc::c_ulong);
            let r = std::arch::x86_64::__cpuid_count(leaf, sub);
            libc::syscall(libc::SYS_arch_prctl, ARCH_SET_CPUID, 0 as libc::c_ulong);
            let out = masked(leaf, sub, [r.eax, r.ebx, r.ecx, r.edx]);
            // cpuid writes the low halves and zeroes the high ones.
            for (reg, v) in [libc::REG_RAX, libc::REG_RBX, libc::REG_RCX, libc::REG_RDX]
                .into_iter()
                .zip(out)
            {
                g[reg as usize] = v as i64;
            }
            g[libc::REG_RIP as usize] += 2;
        }
        TRAPS.fetch_add(1, Ordering::Relaxed);
    }

    /// At exit, with `CPUID_AVX2_REPORT=1`: the count of answered `cpuid`s.
    extern "C" fn report() {
        eprintln!(
            "cpuid_avx2: {} cpuid instructions answered without AVX-512",
            TRAPS.load(Ordering::Relaxed)
        );
    }

    /// Installs the handler and switches CPUID faulting on for this thread
    /// (and the threads it starts). Runs when the library is loaded.
    extern "C" fn init() {
        // SAFETY: a zeroed sigaction is valid; the handler is an
        // `extern "C"` SA_SIGINFO handler of the right signature.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_fault as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(libc::SIGSEGV, &sa, std::ptr::null_mut()) != 0 {
                eprintln!("cpuid_avx2: sigaction failed; AVX-512 is not hidden");
                return;
            }
            if libc::syscall(libc::SYS_arch_prctl, ARCH_SET_CPUID, 0 as libc::c_ulong) != 0 {
                libc::signal(libc::SIGSEGV, libc::SIG_DFL);
                eprintln!("cpuid_avx2: no CPUID faulting here (arch_prctl ARCH_SET_CPUID); AVX-512 is not hidden");
                return;
            }
            if std::env::var_os("CPUID_AVX2_REPORT").is_some() {
                libc::atexit(report);
            }
        }
    }

    #[used]
    #[link_section = ".init_array"]
    static INIT: extern "C" fn() = init;

    #[cfg(test)]
    mod tests {
        /// The AVX-512 bits of leaf 7 are cleared and nothing else is: AVX2
        /// (EBX bit 5), BMI2 (bit 8), other leaves untouched.
        #[test]
        fn only_avx512_bits_are_cleared() {
            let all = [u32::MAX; 4];
            let [a, b, c, d] = super::masked(7, 0, all);
            assert_eq!(a, u32::MAX);
            assert_eq!(b, !0xDC23_0000, "EBX");
            assert_eq!(c, !0x5842, "ECX");
            assert_eq!(d, !0x0080_010C, "EDX");
            assert_eq!(b & (1 << 5 | 1 << 8), 1 << 5 | 1 << 8);
            assert_eq!(super::masked(7, 1, all)[0], !(1 << 5));
            assert_eq!(super::masked(1, 0, all), all);
        }
    }
}
