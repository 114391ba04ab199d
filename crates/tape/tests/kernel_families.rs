//! Every kernel family this CPU has, against the portable loop: the
//! families without fused multiply-adds (portable, AVX-512F) give the same
//! bits; AVX2+FMA stays within the rounding bound stated in the `kernels`
//! module docs. Checked for every element type, every operand layout the tape
//! produces, random shapes (m, k, n up to 70, edges of the vector widths
//! included), α ≠ 1, β = 0 over a NaN-filled C (never read) and β ≠ 0, and
//! inputs with −0, ±∞ and NaN. Within each family, a product split into row
//! blocks (as threads would split it) gives the bits of the whole product.
//! Each family is forced with `kernels::with_family` (so one machine tests
//! all it supports) and `kernels::last_family` confirms which one ran. The
//! test prints, on stderr (visible with `--nocapture`), which families ran
//! and which were skipped and why.

use tape::gemm::{gemm, gemm_into, MatMut, MatRef};
use tape::kernels::{last_family, with_family, Family, PACK, SMALL_COLS, SMALL_MACS};
use tape::{Dual, Real, Tape, Tensor};

/// Bit equality, with any NaN equal to any NaN (payloads may differ).
fn same_bits(x: f64, y: f64) -> bool {
    x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan())
}

/// A value from a seed, with −0, ±∞ and NaN mixed in when `special`.
fn val(i: usize, seed: f64, special: bool) -> f64 {
    let x = ((i as f64 + 1.0) * seed).sin() * 3.0;
    match (special, i % 37) {
        (true, 5) => -0.0,
        (true, 11) => f64::INFINITY,
        (true, 23) => f64::NAN,
        (true, 29) => f64::NEG_INFINITY,
        _ => x,
    }
}

/// SplitMix64: a small deterministic generator for the random shapes.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    fn int(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
    /// Uniform in [−1, 1), spread over magnitudes 2⁻⁴..2⁴ (so that sums
    /// cancel and the bound's magnitude sum matters).
    fn val(&mut self) -> f64 {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        let e = self.int(0, 8) as i32 - 4;
        (2.0 * u - 1.0) * 2f64.powi(e)
    }
}

/// Shapes `(m, k, n)` around the vector widths (8/16 f32, 4/8 f64 lanes;
/// 4-row blocks), single rows and columns, and the few-shot `[10, 40]·[40, 40]`;
/// then random ones with m, k, n in 1..=70 within the small-product limits.
fn shapes() -> Vec<(usize, usize, usize)> {
    let mut shapes = vec![
        (1, 1, 1),
        (10, 1, 40),
        (10, 40, 40),
        (40, 10, 40),
        (10, 40, 1),
        (40, 10, 1),
        (1, 10, 40),
        (5, 7, 3),
        (7, 17, 15),
        (9, 16, 16),
        (6, 33, 17),
        (3, 8, 64),
        (17, 5, 33),
        (4, 20, 49),
        (70, 3, 1),
        (2, 9, 1),
    ];
    let mut rng = Rng(0x5EED);
    while shapes.len() < 60 {
        let (m, k, n) = (rng.int(1, 70), rng.int(1, 70), rng.int(1, 70));
        if n <= SMALL_COLS && m * k * n <= SMALL_MACS {
            shapes.push((m, k, n));
        }
    }
    shapes
}

/// How one element type is built from and read back into `f64` parts, and
/// what the products of each part are (for the bound).
struct Elem<T> {
    name: &'static str,
    make: fn(f64, f64) -> T,
    parts: fn(T) -> Vec<f64>,
    /// The unit roundoff of the parts.
    u: f64,
    /// Per part of `A[i, l]·B[l, j]`, the sum of the absolute values of the
    /// products that the part adds up (primal: |a.v·b.v|; tangent:
    /// |a.d·b.v| + |a.v·b.d|).
    mags: fn(T, T) -> [f64; 2],
    /// Per part, how many products each `l` contributes (`K = k·this`).
    per_l: [usize; 2],
}

const F32: Elem<f32> = Elem {
    name: "f32",
    make: |v, _| v as f32,
    parts: |x| vec![x as f64],
    u: f32::EPSILON as f64 / 2.0,
    mags: |a, b| [(a as f64 * b as f64).abs(), 0.0],
    per_l: [1, 0],
};
const F64: Elem<f64> = Elem {
    name: "f64",
    make: |v, _| v,
    parts: |x| vec![x],
    u: f64::EPSILON / 2.0,
    mags: |a, b| [(a * b).abs(), 0.0],
    per_l: [1, 0],
};
const D32: Elem<Dual<f32>> = Elem {
    name: "Dual<f32>",
    make: |v, d| Dual::new(v as f32, d as f32),
    parts: |x| vec![x.v as f64, x.d as f64],
    u: f32::EPSILON as f64 / 2.0,
    mags: |a, b| {
        let (av, ad, bv, bd) = (a.v as f64, a.d as f64, b.v as f64, b.d as f64);
        [(av * bv).abs(), (ad * bv).abs() + (av * bd).abs()]
    },
    per_l: [1, 2],
};
const D64: Elem<Dual<f64>> = Elem {
    name: "Dual<f64>",
    make: Dual::new,
    parts: |x| vec![x.v, x.d],
    u: f64::EPSILON / 2.0,
    mags: |a, b| [(a.v * b.v).abs(), (a.d * b.v).abs() + (a.v * b.d).abs()],
    per_l: [1, 2],
};

/// γ_n = n·u / (1 − n·u).
fn gamma(n: usize, u: f64) -> f64 {
    let nu = n as f64 * u;
    nu / (1.0 - nu)
}

/// The operand layouts the tape produces: A row-major or transposed; B
/// row-major, transposed, or with a column stride of 3.
fn layouts<'a, T: Copy>(
    a: &'a [T],
    b: &'a [T],
    (m, k, n): (usize, usize, usize),
) -> Vec<(MatRef<'a, T>, MatRef<'a, T>)> {
    let a_views = [
        MatRef::row_major(&a[..m * k], m, k),
        MatRef::row_major(&a[..m * k], k, m).t(),
    ];
    let b_views = [
        MatRef::row_major(&b[..k * n], k, n),
        MatRef::row_major(&b[..k * n], n, k).t(),
        MatRef::new(b, k, n, 3 * n, 3),
    ];
    let mut out = Vec::new();
    for &av in &a_views {
        for &bv in &b_views {
            out.push((av, bv));
        }
    }
    out
}

/// Runs every shape, layout, α and β under `family` and under the portable
/// loop. Each part of each element must be within
/// `2·γ_{K+2}·(|α|·Σ|x_l y_l| + |β·c|)` of the portable loop's (the bound of
/// the `kernels` module docs), and bit-identical to it when `exact`.
/// `expect` is the family that must have run each product. Returns the
/// number of products compared and the largest error seen relative to its
/// bound.
fn family_against_portable<T: Real>(
    family: Family,
    expect: Family,
    exact: bool,
    e: &Elem<T>,
) -> (usize, f64) {
    let mut products = 0;
    let mut worst: f64 = 0.0;
    let mut rng = Rng(0xC0FFEE);
    for (m, k, n) in shapes() {
        let mut mk =
            |len: usize| -> Vec<T> { (0..len).map(|_| (e.make)(rng.val(), rng.val())).collect() };
        let a = mk(m * k);
        // B stored with room for a stride of 3 between columns.
        let b = mk(3 * k * n);
        let c0 = mk(m * n);
        for (ia, (av, bv)) in layouts(&a, &b, (m, k, n)).into_iter().enumerate() {
            for (alpha, beta) in [(1.0, 0.0), (1.5, -0.5), (-0.75, 2.0)] {
                let (alpha_t, beta_t) = (T::Base::from_f64(alpha), T::Base::from_f64(beta));
                let mut got = c0.clone();
                let mut want = c0.clone();
                let exact = exact || (ia % 3 != 0 && n > 1 && k * n > PACK);
                if beta == 0.0 {
                    // β = 0: C is never read, so garbage must not leak.
                    got.fill((e.make)(f64::NAN, f64::NAN));
                }
                with_family(family, || gemm(alpha_t, av, bv, beta_t, &mut got));
                // A strided B too large to pack runs the AVX2-compiled row loop
                // under both vector families (the portable bits).
                let unpacked = ia % 3 != 0 && n > 1 && k * n > PACK && family > Family::Portable;
                let expect = if unpacked { Family::Avx2 } else { expect };
                assert_eq!(
                    last_family(),
                    Some(expect),
                    "[{m}, {k}] x [{k}, {n}], layout {ia}: forced {family}"
                );
                with_family(Family::Portable, || {
                    gemm(alpha_t, av, bv, beta_t, &mut want)
                });
                assert_eq!(last_family(), Some(Family::Portable));
                for i in 0..m {
                    for j in 0..n {
                        // Σ_l |x_l y_l| per part.
                        let mut sums = [0.0; 2];
                        for l in 0..k {
                            let mags = (e.mags)(av.get(i, l), bv.get(l, j));
                            sums[0] += mags[0];
                            sums[1] += mags[1];
                        }
                        let idx = i * n + j;
                        let (g, w, c) = (
                            (e.parts)(got[idx]),
                            (e.parts)(want[idx]),
                            (e.parts)(c0[idx]),
                        );
                        for p in 0..g.len() {
                            let (sum, big_k) = (sums[p.min(1)], k * e.per_l[p.min(1)]);
                            let bound = 2.0
                                * gamma(big_k + 2, e.u)
                                * (alpha.abs() * sum + (beta * c[p]).abs())
                                // the f64 magnitude sum is itself rounded
                                * (1.0 + 1e-9);
                            let err = (g[p] - w[p]).abs();
                            let ok = if exact {
                                same_bits(g[p], w[p])
                            } else {
                                err <= bound
                            };
                            assert!(
                                ok,
                                "{family} {}: [{m}, {k}] x [{k}, {n}], layout {ia}, α {alpha}, \
                                 β {beta}: element ({i}, {j}) part {p}: {} vs portable {}, \
                                 |diff| {err:e} > bound {bound:e}",
                                e.name, g[p], w[p]
                            );
                            if bound > 0.0 {
                                worst = worst.max(err / bound);
                            }
                        }
                    }
                }
                products += 1;
            }
        }
    }
    (products, worst)
}

/// Inputs with −0, ±∞ and NaN: the families without fused multiply-adds give
/// the portable bits (NaN for NaN); AVX2+FMA gives a NaN wherever the portable
/// loop does and the same infinities elsewhere or a value within the bound.
/// Only checked bit for bit for the exact families; for the fused one, that
/// every non-finite portable element is non-finite there too.
fn specials_against_portable<T: Real>(family: Family, exact: bool, e: &Elem<T>) -> usize {
    let mut products = 0;
    for (case, &(m, k, n)) in shapes()[..16].iter().enumerate() {
        let mk = |len: usize, seed: f64| -> Vec<T> {
            (0..len)
                .map(|i| (e.make)(val(i, seed, true), val(i, seed * 0.7 + 0.1, true)))
                .collect()
        };
        let a = mk(m * k, 0.37 + case as f64);
        let b = mk(3 * k * n, 0.53 + case as f64);
        let c0 = mk(m * n, 0.29);
        for (ia, (av, bv)) in layouts(&a, &b, (m, k, n)).into_iter().enumerate() {
            for beta in [0.0, -0.5] {
                let (alpha_t, beta_t) = (T::Base::from_f64(1.5), T::Base::from_f64(beta));
                let mut got = c0.clone();
                let mut want = c0.clone();
                if beta == 0.0 {
                    got.fill((e.make)(f64::NAN, f64::NAN));
                }
                with_family(family, || gemm(alpha_t, av, bv, beta_t, &mut got));
                with_family(Family::Portable, || {
                    gemm(alpha_t, av, bv, beta_t, &mut want)
                });
                for (idx, (&g, &w)) in got.iter().zip(&want).enumerate() {
                    for (x, y) in (e.parts)(g).into_iter().zip((e.parts)(w)) {
                        let ok = if exact {
                            same_bits(x, y)
                        } else {
                            y.is_finite() || !x.is_finite()
                        };
                        assert!(
                            ok,
                            "{family} {}: [{m}, {k}] x [{k}, {n}], layout {ia}, β {beta}, \
                             specials: element {idx}: {x} vs portable {y}",
                            e.name
                        );
                    }
                }
                products += 1;
            }
        }
    }
    products
}

/// The families this CPU has, and a line per family saying whether it runs.
fn available_families() -> Vec<Family> {
    let mut ran = Vec::new();
    for family in Family::ALL {
        match family.unavailable() {
            None => ran.push(family),
            Some(why) => eprintln!("kernel families: SKIPPED {family}: {why}"),
        }
    }
    ran
}

/// Whether a family gives the portable loop's bits (no fused multiply-adds).
fn is_exact(family: Family) -> bool {
    family != Family::Avx2
}

#[test]
fn every_family_is_within_its_bound_of_the_portable_loop() {
    let families = available_families();
    for &family in &families {
        // Element types without kernels (nested duals) run the AVX2-compiled
        // row loop under both vector families: the portable bits.
        let nested = if family == Family::Portable {
            family
        } else {
            Family::Avx2
        };
        let exact = is_exact(family);
        let mut count = 0;
        let mut worst: f64 = 0.0;
        for (c, w) in [
            family_against_portable(family, family, exact, &F32),
            family_against_portable(family, family, exact, &F64),
            family_against_portable(family, family, exact, &D32),
            family_against_portable(family, family, exact, &D64),
        ] {
            count += c;
            worst = worst.max(w);
        }
        count += specials_against_portable(family, exact, &F32);
        count += specials_against_portable(family, exact, &F64);
        count += specials_against_portable(family, exact, &D32);
        count += specials_against_portable(family, exact, &D64);
        let nested_elem: Elem<Dual<Dual<f64>>> = Elem {
            name: "Dual<Dual<f64>>",
            make: |v, d| Dual::new(Dual::new(v, d), Dual::new(d * 0.5, -v)),
            parts: |x| vec![x.v.v, x.v.d, x.d.v, x.d.d],
            u: f64::EPSILON / 2.0,
            // Checked bit for bit only: no bound needed.
            mags: |_, _| [0.0; 2],
            per_l: [1, 1],
        };
        count += family_against_portable(family, nested, true, &nested_elem).0;
        eprintln!(
            "kernel families: RAN {family}: {count} products (f32, f64, Dual<f32>, Dual<f64>; \
             Dual<Dual<f64>> via {nested}) {}; largest error / bound {worst:.3}",
            if exact {
                "bit-identical to portable"
            } else {
                "within the bound of portable"
            }
        );
    }
    assert!(families.contains(&Family::Portable));
}

/// Within a family, a product computed in row blocks on separate threads (as
/// a caller splitting rows between threads would) gives the bits of the whole
/// product, for block sizes that cut across the kernels' 4-row blocks.
#[test]
fn a_family_gives_the_same_bits_for_any_row_split() {
    fn check<T: Real + Send + Sync>(family: Family, e: &Elem<T>) {
        // 20·40·40 multiply-adds: a small product (≤ SMALL_MACS) as a whole.
        let (m, k, n) = (20, 40, 40);
        assert!(m * k * n <= SMALL_MACS);
        let mut rng = Rng(7);
        let a: Vec<T> = (0..m * k).map(|_| (e.make)(rng.val(), rng.val())).collect();
        let b: Vec<T> = (0..k * n).map(|_| (e.make)(rng.val(), rng.val())).collect();
        let (bv, alpha) = (MatRef::row_major(&b, k, n), T::Base::from_f64(1.5));
        let mut whole = vec![T::zero(); m * n];
        with_family(family, || {
            gemm(
                alpha,
                MatRef::row_major(&a, m, k),
                bv,
                T::Base::from_f64(0.0),
                &mut whole,
            )
        });
        for rows in [1, 3, 5, 7, 11] {
            let mut split = vec![T::zero(); m * n];
            std::thread::scope(|s| {
                for (a_rows, c_rows) in a.chunks(rows * k).zip(split.chunks_mut(rows * n)) {
                    s.spawn(move || {
                        let r = a_rows.len() / k;
                        let av = MatRef::row_major(a_rows, r, k);
                        with_family(family, || {
                            gemm(alpha, av, bv, T::Base::from_f64(0.0), c_rows)
                        });
                    });
                }
            });
            let same = whole.iter().zip(&split).all(|(&x, &y)| {
                (e.parts)(x)
                    .into_iter()
                    .zip((e.parts)(y))
                    .all(|(x, y)| same_bits(x, y))
            });
            assert!(
                same,
                "{family} {}: rows in blocks of {rows} differ from the whole product",
                e.name
            );
        }
    }
    for family in available_families() {
        check(family, &F32);
        check(family, &F64);
        check(family, &D32);
        check(family, &D64);
    }
}

/// An MLP's loss and gradients (f32), and the same on dual numbers (a JVP
/// forward pass and forward-over-reverse sweep), under every family: the
/// tape's matmul forward and VJP rules reach the kernels. The exact families
/// give the portable bits; AVX2+FMA agrees to a relative 10⁻⁵ (f32) and
/// 10⁻¹³ (f64 duals): products within the bound above, through tanh and a
/// softmax.
#[test]
fn tape_gradients_agree_across_families() {
    fn run<T: Real>(make: impl Fn(f64, f64) -> T) -> Vec<T> {
        let (n, d, h, c) = (10, 40, 40, 3);
        let x = Tensor::from_fn([n, d], |i| make((i as f64 * 0.37).sin(), 0.0));
        let w1 = Tensor::from_fn([d, h], |i| make((i as f64 * 0.11).cos() * 0.3, 0.1));
        let w2 = Tensor::from_fn([h, c], |i| make((i as f64 * 0.23).sin() * 0.3, -0.2));
        let labels: Vec<usize> = (0..n).map(|i| i % c).collect();
        let t = Tape::<T>::new();
        let (x, w1, w2) = (t.constant(&x), t.var(&w1), t.var(&w2));
        let loss = x
            .matmul(w1)
            .tanh()
            .matmul(w2)
            .softmax_cross_entropy(&labels);
        t.backward(loss);
        let mut out = vec![loss.item()];
        out.extend_from_slice(t.grad(w1).data());
        out.extend_from_slice(t.grad(w2).data());
        out
    }
    let close = |g: f64, w: f64, exact: bool, rel: f64| {
        if exact {
            g.to_bits() == w.to_bits()
        } else {
            (g - w).abs() <= rel * (1.0 + w.abs())
        }
    };
    let families = available_families();
    let want32 = with_family(Family::Portable, || run(|v, _| v as f32));
    let want_dual = with_family(Family::Portable, || run(Dual::new));
    for &family in &families {
        let exact = is_exact(family);
        let got32 = with_family(family, || run(|v, _| v as f32));
        assert_eq!(last_family(), Some(family), "f32 MLP under {family}");
        let got_dual = with_family(family, || run(Dual::new));
        assert_eq!(last_family(), Some(family), "dual MLP under {family}");
        for (i, (g, w)) in got32.iter().zip(&want32).enumerate() {
            assert!(
                close(*g as f64, *w as f64, exact, 1e-5),
                "{family}: f32 MLP output {i}: {g} vs portable {w}"
            );
        }
        for (i, (g, w)) in got_dual.iter().zip(&want_dual).enumerate() {
            assert!(
                close(g.v, w.v, exact, 1e-13) && close(g.d, w.d, exact, 1e-13),
                "{family}: dual MLP output {i}: {g:?} vs portable {w:?}"
            );
        }
        eprintln!(
            "kernel families: RAN {family}: MLP gradient (f32, Dual<f64>) {}",
            if exact {
                "bit-identical"
            } else {
                "within 1e-5 / 1e-13"
            }
        );
    }
}

/// Asking for a family this CPU lacks panics with the reason (never runs
/// its instructions); on a CPU that has them all, nothing to check.
#[test]
fn forcing_a_missing_family_panics_with_the_reason() {
    let missing: Vec<Family> = Family::ALL
        .into_iter()
        .filter(|f| !f.is_available())
        .collect();
    for family in &missing {
        let err = std::panic::catch_unwind(|| with_family(*family, || ()))
            .expect_err("forcing a missing family must panic");
        let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("requested, but"), "{msg}");
    }
    if missing.is_empty() {
        eprintln!("kernel families: this CPU has every family; no missing one to force");
    }
    assert_eq!(
        "AVX512".parse::<Family>(),
        Ok(Family::Avx512),
        "names parse case-insensitively"
    );
    let err = "sse9".parse::<Family>().unwrap_err().to_string();
    assert!(
        err.contains("\"sse9\"") && err.contains("portable, avx2, avx512"),
        "{err}"
    );
}

/// Runs a 2 × 2 product on this thread; returns the family that ran it.
fn tiny_product_family() -> Option<Family> {
    let a = [1.0_f32, 2.0, 3.0, 4.0];
    let mut c = [0.0; 4];
    let m = MatRef::row_major(&a, 2, 2);
    gemm(1.0, m, m, 0.0, &mut c);
    assert_eq!(c, [7.0, 10.0, 15.0, 22.0]);
    last_family()
}

/// `TAPE_KERNELS` (read once per process) caps the family; an unknown name or
/// a family the CPU lacks panics with the allowed values. Checked in child
/// processes of this test binary, each with its own environment.
#[test]
fn tape_kernels_env_var_selects_or_rejects() {
    const CHILD: &str = "KERNEL_FAMILIES_TEST_CHILD";
    if std::env::var_os(CHILD).is_some() {
        let ran = tiny_product_family().expect("a small product ran");
        println!("CHILD RAN {ran}");
        return;
    }
    let child = |value: &str| {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "tape_kernels_env_var_selects_or_rejects",
                "--exact",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .env("TAPE_KERNELS", value)
            .output()
            .expect("run the test binary");
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    for family in Family::ALL {
        let (ok, text) = child(family.name());
        match family.unavailable() {
            None => assert!(
                ok && text.contains(&format!("CHILD RAN {family}")),
                "TAPE_KERNELS={family}: {text}"
            ),
            Some(why) => assert!(
                !ok && text.contains("requested, but") && text.contains(why),
                "TAPE_KERNELS={family} on a CPU without it: {text}"
            ),
        }
    }
    let (ok, text) = child("auto");
    assert!(
        ok && text.contains(&format!("CHILD RAN {}", Family::best())),
        "{text}"
    );
    let (ok, text) = child("sse9");
    assert!(
        !ok && text.contains("TAPE_KERNELS=sse9: unknown kernel family")
            && text.contains("portable, avx2, avx512"),
        "{text}"
    );
}

/// `force` caps the family on every thread until it is reset with `None`;
/// `with_family` still wins on its own thread. (The other tests of this
/// binary use `with_family`, so a brief `force` does not disturb them.)
#[test]
fn force_caps_every_thread_and_with_family_wins() {
    fn product_on_a_new_thread() -> Option<Family> {
        std::thread::spawn(tiny_product_family).join().unwrap()
    }
    let default = std::thread::spawn(tape::kernels::active).join().unwrap();
    tape::kernels::force(Some(Family::Portable));
    let forced = product_on_a_new_thread();
    let scoped = Family::Avx2.is_available().then(|| {
        let a = [1.0_f64; 4];
        with_family(Family::Avx2, || {
            gemm(
                1.0,
                MatRef::row_major(&a, 2, 2),
                MatRef::row_major(&a, 2, 2),
                0.0,
                &mut [0.0; 4],
            )
        });
        last_family()
    });
    tape::kernels::force(None);
    let reset = product_on_a_new_thread();
    assert_eq!(forced, Some(Family::Portable));
    if let Some(scoped) = scoped {
        assert_eq!(scoped, Some(Family::Avx2), "with_family over force");
    }
    assert_eq!(reset, Some(default), "force(None) goes back to the default");
}

/// The large products (`kernels/packed.rs`: packed panels, register tiles of
/// MR × NR, panels of at most 256 values of `l`): shapes beyond the
/// small-product limits whose edges are not multiples of any tile (6, 8 rows;
/// 16, 32, 64 columns), of the row and column blocks (128 rows, 512 columns)
/// nor of the panels (k = 257, 300, 513, 600: two or three panels).
fn large_shapes() -> Vec<(usize, usize, usize)> {
    vec![
        (64, 300, 70),
        (33, 257, 47),
        (1, 600, 70),
        (70, 513, 9),
        (130, 40, 530),
        (7, 1, 200),
        (200, 64, 65),
        (200, 80, 3),
    ]
}

/// `C ← α·A·B + β·C` element by element in the portable loop's order: the sum
/// from zero in increasing `l`, each product and sum rounded, then `α·s`
/// (β = 0) or `α·s + β·c`.
fn reference<T: Real>(
    alpha: T::Base,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    beta: T::Base,
    c: &mut [T],
    (rs, cs): (usize, usize),
) {
    let (alpha, beta_zero, beta) = (
        T::from_base(alpha),
        beta == T::Base::zero(),
        T::from_base(beta),
    );
    for i in 0..a.rows() {
        for j in 0..b.cols() {
            let mut s = T::zero();
            for l in 0..a.cols() {
                s += a.get(i, l) * b.get(l, j);
            }
            let x = &mut c[i * rs + j * cs];
            *x = if beta_zero {
                alpha * s
            } else {
                alpha * s + beta * *x
            };
        }
    }
}

/// The operand layouts of the large products: A row-major, transposed, or
/// with a column stride of 2 (`a` has `2·m·k` elements); B row-major,
/// transposed, or with a column stride of 3 (`b` has `3·k·n`).
#[allow(clippy::type_complexity)]
fn large_views<'x, T: Copy>(
    a: &'x [T],
    b: &'x [T],
    (m, k, n): (usize, usize, usize),
) -> ([MatRef<'x, T>; 3], [MatRef<'x, T>; 3]) {
    (
        [
            MatRef::row_major(&a[..m * k], m, k),
            MatRef::row_major(&a[..m * k], k, m).t(),
            MatRef::new(a, m, k, 2 * k, 2),
        ],
        [
            MatRef::row_major(&b[..k * n], k, n),
            MatRef::row_major(&b[..k * n], n, k).t(),
            MatRef::new(b, k, n, 3 * n, 3),
        ],
    )
}

/// Every large shape, every operand layout `large.rs` accepts (A row-major,
/// transposed, or with a column stride of 2; B row-major, transposed, or with
/// a column stride of 3; C row-major, column-major (computed as `Cᵀ = Bᵀ·Aᵀ`)
/// or with strides (2n + 1, 2)), four α/β pairs (β = 0 over a NaN-filled C),
/// under `family`, against [`reference`]: bit for bit for the portable
/// family, within `2·γ_{k+2}·(|α|·Σ|a·b| + |β·c|)` for the fused ones.
/// Returns the products compared and the largest error / bound.
fn large_against_reference<T: Real>(family: Family, e: &Elem<T>) -> (usize, f64) {
    let exact = family == Family::Portable;
    let (mut products, mut worst) = (0, 0.0_f64);
    let mut rng = Rng(0x1A26E);
    for (m, k, n) in large_shapes() {
        assert!(
            n > SMALL_COLS || m * k * n > SMALL_MACS,
            "[{m}, {k}, {n}] is small"
        );
        let mut mk =
            |len: usize| -> Vec<T> { (0..len).map(|_| (e.make)(rng.val(), rng.val())).collect() };
        let a = mk(2 * m * k);
        let b = mk(3 * k * n);
        let c_len = m * (2 * n + 1);
        let c0 = mk(c_len);
        let (a_views, b_views) = large_views(&a, &b, (m, k, n));
        let c_strides = [(n, 1), (1, m), (2 * n + 1, 2)];
        for (ia, &av) in a_views.iter().enumerate() {
            for (ib, &bv) in b_views.iter().enumerate() {
                // Σ_l |a_il·b_lj| per element (the bound's magnitude sum).
                let mut sums = vec![0.0; m * n];
                for i in 0..m {
                    for j in 0..n {
                        for l in 0..k {
                            sums[i * n + j] += (e.mags)(av.get(i, l), bv.get(l, j))[0];
                        }
                    }
                }
                for (ic, &(rs, cs)) in c_strides.iter().enumerate() {
                    for (alpha, beta) in [(1.0, 0.0), (1.5, -0.5), (-0.75, 2.0), (1.0, 1.0)] {
                        let (alpha_t, beta_t) = (T::Base::from_f64(alpha), T::Base::from_f64(beta));
                        let mut got = c0.clone();
                        let mut want = c0.clone();
                        if beta == 0.0 {
                            got.fill((e.make)(f64::NAN, f64::NAN));
                        }
                        let before = got.clone();
                        with_family(family, || {
                            let cv = MatMut::new(&mut got[..], m, n, rs, cs);
                            gemm_into(alpha_t, av, bv, beta_t, cv)
                        });
                        reference(alpha_t, av, bv, beta_t, &mut want, (rs, cs));
                        for i in 0..m {
                            for j in 0..n {
                                let sum = sums[i * n + j];
                                let idx = i * rs + j * cs;
                                let (g, w, c) = (
                                    (e.parts)(got[idx])[0],
                                    (e.parts)(want[idx])[0],
                                    (e.parts)(c0[idx])[0],
                                );
                                let bound = 2.0
                                    * gamma(k + 2, e.u)
                                    * (alpha.abs() * sum + (beta * c).abs())
                                    * (1.0 + 1e-9);
                                let err = (g - w).abs();
                                let ok = if exact { same_bits(g, w) } else { err <= bound };
                                assert!(
                                    ok,
                                    "{family} {}: large [{m}, {k}] x [{k}, {n}], layouts A{ia} \
                                     B{ib} C{ic}, α {alpha}, β {beta}: element ({i}, {j}): {g} \
                                     vs reference {w}, |diff| {err:e} > bound {bound:e}",
                                    e.name
                                );
                                if bound > 0.0 {
                                    worst = worst.max(err / bound);
                                }
                            }
                        }
                        // Outside the view (strided C): untouched.
                        let mut inside = vec![false; c_len];
                        for i in 0..m {
                            for j in 0..n {
                                inside[i * rs + j * cs] = true;
                            }
                        }
                        for (idx, (x, y)) in got.iter().zip(&before).enumerate() {
                            if !inside[idx] {
                                assert!(
                                    same_bits((e.parts)(*x)[0], (e.parts)(*y)[0]),
                                    "{family}: [{m}, {k}, {n}] C{ic} wrote outside the view at {idx}"
                                );
                            }
                        }
                        products += 1;
                    }
                }
            }
        }
    }
    (products, worst)
}

#[test]
fn large_products_follow_the_family_and_its_bound() {
    for family in available_families() {
        let (c32, w32) = large_against_reference(family, &F32);
        let (c64, w64) = large_against_reference(family, &F64);
        eprintln!(
            "kernel families: RAN {family}: {} large products (f32, f64) {}; largest error / \
             bound {:.3}",
            c32 + c64,
            if family == Family::Portable {
                "bit-identical to the portable loop"
            } else {
                "within the bound of the portable loop"
            },
            w32.max(w64)
        );
    }
}

/// A large product's fused families differ from the portable loop
/// somewhere (so `TAPE_KERNELS` / `with_family` reaches the large products:
/// before, `matrixmultiply` ran whatever the family), and give the same bits
/// from run to run.
#[test]
fn the_family_governs_large_products() {
    let (m, k, n) = (64, 300, 70);
    let mut rng = Rng(99);
    let a: Vec<f32> = (0..m * k).map(|_| rng.val() as f32).collect();
    let b: Vec<f32> = (0..k * n).map(|_| rng.val() as f32).collect();
    let run = |family| {
        let mut c = vec![0.0_f32; m * n];
        with_family(family, || {
            gemm(
                1.0,
                MatRef::row_major(&a, m, k),
                MatRef::row_major(&b, k, n),
                0.0,
                &mut c,
            )
        });
        c
    };
    let portable = run(Family::Portable);
    for family in available_families() {
        let got = run(family);
        assert_eq!(got, run(family), "{family}: two runs differ");
        if family != Family::Portable {
            assert!(
                got != portable,
                "{family}: the portable bits on a large product"
            );
        }
    }
}

/// Within a family, a large product gives the same bits whole, cut into row
/// blocks or column blocks at any offset (not multiples of the tiles), and
/// cut by `large.rs` between two threads (a product of ≥ 2²² multiply-adds
/// called from outside a pool, against the same call inside a one-thread
/// pool, where it is not cut).
#[test]
fn large_products_give_the_same_bits_for_any_split() {
    fn check(family: Family) {
        let (m, k, n) = (300, 400, 300);
        let mut rng = Rng(5);
        let a: Vec<f32> = (0..m * k).map(|_| rng.val() as f32).collect();
        let b: Vec<f32> = (0..k * n).map(|_| rng.val() as f32).collect();
        let c0: Vec<f32> = (0..m * n).map(|_| rng.val() as f32).collect();
        let (av, bv) = (MatRef::row_major(&a, m, k), MatRef::row_major(&b, k, n));
        let (alpha, beta) = (1.5_f32, -0.5_f32);
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let mut whole = c0.clone();
        one.install(|| with_family(family, || gemm(alpha, av, bv, beta, &mut whole)));
        let mut cut = c0.clone();
        with_family(family, || gemm(alpha, av, bv, beta, &mut cut));
        assert!(whole == cut, "{family}: cut between threads differs");
        for rows in [37, 100, 1] {
            let mut blocks = c0.clone();
            for (r0, c_rows) in (0..m).step_by(rows).zip(blocks.chunks_mut(rows * n)) {
                let r = c_rows.len() / n;
                let a_rows = MatRef::new(&a[r0 * k..], r, k, k, 1);
                with_family(family, || gemm(alpha, a_rows, bv, beta, c_rows));
            }
            assert!(whole == blocks, "{family}: row blocks of {rows} differ");
        }
        for cols in [70, 129] {
            let mut blocks = c0.clone();
            for j0 in (0..n).step_by(cols) {
                let w = cols.min(n - j0);
                let b_cols = MatRef::new(&b[j0..], k, w, n, 1);
                let c_cols = MatMut::new(&mut blocks[j0..], m, w, n, 1);
                with_family(family, || gemm_into(alpha, av, b_cols, beta, c_cols));
            }
            assert!(whole == blocks, "{family}: column blocks of {cols} differ");
        }
    }
    for family in available_families() {
        check(family);
    }
}

/// The MLP benchmark's products (`examples/gemm_split.rs`, cut in two from
/// 2²² multiply-adds: along `C`'s columns, or rows when it has more), `B`
/// also transposed, and with `β` = 1 (an adjoint accumulated; with `k` of
/// more than one panel `C` is saved first): the same bits cut between two
/// threads as whole on one, in every family, twenty times over (each time the
/// second half may run on either thread).
#[test]
fn the_mlp_products_give_the_same_bits_cut_in_two() {
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let shapes = [
        (64, 784, 256),
        (64, 256, 256),
        (784, 64, 256),
        (64, 512, 256),
    ];
    for family in available_families() {
        for (m, k, n) in shapes {
            let mut rng = Rng(11);
            let a: Vec<f32> = (0..m * k).map(|_| rng.val() as f32).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rng.val() as f32).collect();
            let c0: Vec<f32> = (0..m * n).map(|_| rng.val() as f32).collect();
            let av = MatRef::row_major(&a, m, k);
            for b_t in [false, true] {
                let bv = if b_t {
                    MatRef::new(&b, k, n, 1, k)
                } else {
                    MatRef::row_major(&b, k, n)
                };
                let what = format!("[{m}, {k}]·[{k}, {n}], B transposed {b_t}");
                cut_gives_whole_bits(&one, family, (av, bv, &c0), 20, &what);
            }
        }
    }
}

/// `C ← 0.5·A·B + β·C` from `c0` (the operands `(A, B, c0)`), for β 0 and 1:
/// run `rounds` times on the calling thread (cut between two threads where
/// the shape says so), the same bits as on the one-thread pool `one` (whole).
fn cut_gives_whole_bits(
    one: &rayon::ThreadPool,
    family: Family,
    (av, bv, c0): (MatRef<'_, f32>, MatRef<'_, f32>, &[f32]),
    rounds: usize,
    what: &str,
) {
    for beta in [0.0_f32, 1.0] {
        let mut whole = c0.to_vec();
        one.install(|| with_family(family, || gemm(0.5, av, bv, beta, &mut whole)));
        for round in 0..rounds {
            let mut cut = c0.to_vec();
            with_family(family, || gemm(0.5, av, bv, beta, &mut cut));
            assert!(
                whole == cut,
                "{family}: {what}, β {beta}, round {round}: cut differs from whole"
            );
        }
    }
}

/// Products cut along `C`'s columns pack `A` once for all the chunks
/// (`kernels/large.rs`, `packed::APack`): the same bits as whole on one
/// thread, in every family, for an `A` of more rows than one block of the
/// AVX-512 (128), AVX2 (96) and portable (96) kernels and not a multiple of
/// any sliver height (131, 7), `k` of one to three panels (200, 600, 700),
/// `A` row-major and transposed, and `β` 0 and 1, ten times over.
#[test]
fn column_chunks_reading_one_packed_a_give_the_same_bits() {
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    // Each cut along its columns (n > m) in four (tape::kernels::large::chunking).
    let shapes = [
        (131, 600, 300),
        (7, 2400, 512),
        (100, 200, 600),
        (70, 700, 400),
    ];
    for family in available_families() {
        for (m, k, n) in shapes {
            let mut rng = Rng(23);
            let a: Vec<f32> = (0..m * k).map(|_| rng.val() as f32).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rng.val() as f32).collect();
            let c0: Vec<f32> = (0..m * n).map(|_| rng.val() as f32).collect();
            let bv = MatRef::row_major(&b, k, n);
            for a_t in [false, true] {
                let av = if a_t {
                    MatRef::new(&a, m, k, 1, m)
                } else {
                    MatRef::row_major(&a, m, k)
                };
                let what = format!("[{m}, {k}]·[{k}, {n}], A transposed {a_t}");
                cut_gives_whole_bits(&one, family, (av, bv, &c0), 10, &what);
            }
        }
    }
}

/// The two threads each pack a part of a column cut's shared `A`, and no
/// chunk reads it before both parts are in (`kernels/large.rs`, `PACKS`):
/// two different `A`s of one shape, taken in turn, so that a chunk reading
/// the other thread's rows too early would find the last product's `A` in
/// the reused buffer; each gives the bits of one thread, 200 times over.
#[test]
fn column_chunks_wait_for_both_parts_of_a_packed_a() {
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    // x·W1 of the MLP benchmark: cut in four column chunks.
    let (m, k, n) = (64, 784, 256);
    let mut rng = Rng(29);
    let mut fill = |len: usize| -> Vec<f32> { (0..len).map(|_| rng.val() as f32).collect() };
    let (a0, a1, b) = (fill(m * k), fill(m * k), fill(k * n));
    let bv = MatRef::row_major(&b, k, n);
    for family in available_families() {
        let whole: Vec<Vec<f32>> = [&a0, &a1]
            .iter()
            .map(|a| {
                let mut c = vec![0.0; m * n];
                let av = MatRef::row_major(a, m, k);
                one.install(|| with_family(family, || gemm(1.0, av, bv, 0.0, &mut c)));
                c
            })
            .collect();
        for round in 0..200 {
            let a = if round % 2 == 0 { &a0 } else { &a1 };
            let mut c = vec![0.0; m * n];
            let av = MatRef::row_major(a, m, k);
            with_family(family, || gemm(1.0, av, bv, 0.0, &mut c));
            assert!(
                c == whole[round % 2],
                "{family}: [{m}, {k}]·[{k}, {n}], round {round}: cut differs from whole"
            );
        }
    }
}

/// Loss and gradients of a small MLP (batch 64, 300 → 256 → 256 → 10, ReLU,
/// a residual `+ h1` so that an adjoint is accumulated into, softmax
/// cross-entropy) on a tape of `T`; `dual` gives every input a tangent.
fn mlp_bits<T: Real>(dual: impl Fn(f64, f64) -> T) -> Vec<T> {
    let sizes = [300, 256, 256, 10];
    let t = Tape::<T>::new();
    let data = |n: usize, seed: f64| -> Vec<T> {
        (0..n)
            .map(|i| dual(val(i, seed, false) * 0.1, val(i, seed * 1.7, false)))
            .collect()
    };
    let x = t.leaf(&[64, sizes[0]][..], &data(64 * sizes[0], 0.37), false);
    let mut params = Vec::new();
    for (l, w) in sizes.windows(2).enumerate() {
        let s = 0.5 + l as f64;
        params.push(t.leaf(&[w[0], w[1]][..], &data(w[0] * w[1], 0.11 * s), true));
        params.push(t.leaf(&[w[1]][..], &data(w[1], 0.23 * s), true));
    }
    let h1 = (x.matmul(params[0]) + params[1]).relu();
    let h2 = (h1.matmul(params[2]) + params[3]).relu() + h1;
    let z = h2.matmul(params[4]) + params[5];
    let labels: Vec<usize> = (0..64).map(|i| (i * 7) % 10).collect();
    let loss = z.softmax_cross_entropy(&labels);
    t.backward(loss);
    let mut out = vec![loss.item()];
    for p in params {
        out.extend(t.grad(p).data().iter().copied());
    }
    out
}

/// Panics unless `bits()` run ten times on this thread's pool (its passes
/// cut between two threads where they are large enough) gives the bits it
/// gives inside the one-thread pool `one` (nothing cut), element by element.
fn same_bits_cut_in_two<T: Real>(
    one: &rayon::ThreadPool,
    name: &str,
    bits: impl Fn() -> Vec<T> + Sync,
) {
    let whole = one.install(&bits);
    for round in 0..10 {
        let cut = bits();
        let bad = whole.iter().zip(&cut).position(|(a, b)| a != b);
        assert!(
            bad.is_none(),
            "{name}, round {round}: element {bad:?} of the loss and gradients differs"
        );
    }
}

/// The elementwise passes of a dense layer (bias add, ReLU, their adjoints:
/// the bias's column sums, an accumulated adjoint) cut in two halves between
/// two threads (`kernels::pair::parts_mut`) give the bits of one thread, on
/// `f32`, `f64` and dual tapes, ten times over (each half may run on either
/// thread).
#[test]
fn dense_layer_elementwise_passes_give_the_same_bits_cut_in_two() {
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    fn check<T: Real>(one: &rayon::ThreadPool, name: &str, dual: impl Fn(f64, f64) -> T + Sync) {
        same_bits_cut_in_two(one, name, || mlp_bits(&dual));
    }
    check(&one, "f32", |v, _| v as f32);
    check(&one, "f64", |v, _| v);
    check(&one, "Dual<f64>", Dual::new);
}

/// The portable family's large products (`kernels/grid.rs`: grids of 6 × 8
/// `f32` / 6 × 4 `f64` on x86_64, 8 × 4 for both on aarch64, `A` blocks of
/// 16 grid rows, `B` blocks of 2 KiB rows, panels of ≤ 256 values of `l`),
/// bit for bit against [`reference`] (the portable loop's order): every `m`
/// from 1 to 17 and around the `A` blocks (95, 96, 97, 127, 129), `n` around
/// the grid widths and past 64 (so every product is large: 65, 67, 68, 71,
/// 72, 73, 79, 80, 81) and past the `B` blocks (257 and 513 columns), `k` of 1, 2, 7,
/// 255, 256, 257 and 600 (one to three panels, the last one short), the
/// three layouts of each operand and of `C` and the four α/β pairs of
/// [`large_against_reference`] in turn, and writes nothing outside a strided
/// `C`.
#[test]
fn portable_grids_give_the_portable_bits_on_every_edge() {
    fn check<T: Real>(e: &Elem<T>) -> usize {
        let ms = (1..=17).chain([95, 96, 97, 127, 129]);
        let ns = [65, 67, 68, 71, 72, 73, 79, 80, 81, 257, 513];
        let ks = [1, 2, 7, 255, 256, 257, 600];
        let pairs = [(1.0, 0.0), (1.5, -0.5), (-0.75, 2.0), (1.0, 1.0)];
        let mut rng = Rng(0x6121D);
        let mut count = 0;
        for (s, (m, (n, k))) in ms
            .flat_map(|m| {
                ns.iter()
                    .zip(ks.iter().cycle().skip(m % 7))
                    .map(move |(&n, &k)| (m, (n, k)))
            })
            .enumerate()
        {
            if m * k * n > 3_000_000 {
                continue;
            }
            let (ia, ib, ic) = (s % 3, (s / 3) % 3, (s / 9) % 3);
            let (alpha, beta) = pairs[s % 4];
            let mut mk = |len: usize| -> Vec<T> {
                (0..len).map(|_| (e.make)(rng.val(), rng.val())).collect()
            };
            let (a, b) = (mk(2 * m * k), mk(3 * k * n));
            let c_len = m * (2 * n + 1);
            let c0 = mk(c_len);
            let (a_views, b_views) = large_views(&a, &b, (m, k, n));
            let (av, bv) = (a_views[ia], b_views[ib]);
            let (rs, cs) = [(n, 1), (1, m), (2 * n + 1, 2)][ic];
            let (alpha_t, beta_t) = (T::Base::from_f64(alpha), T::Base::from_f64(beta));
            let mut got = c0.clone();
            if beta == 0.0 {
                got.fill((e.make)(f64::NAN, f64::NAN));
            }
            let before = got.clone();
            let mut want = c0.clone();
            with_family(Family::Portable, || {
                gemm_into(
                    alpha_t,
                    av,
                    bv,
                    beta_t,
                    MatMut::new(&mut got[..], m, n, rs, cs),
                )
            });
            reference(alpha_t, av, bv, beta_t, &mut want, (rs, cs));
            let mut inside = vec![false; c_len];
            for i in 0..m {
                for j in 0..n {
                    let idx = i * rs + j * cs;
                    inside[idx] = true;
                    let (g, w) = ((e.parts)(got[idx])[0], (e.parts)(want[idx])[0]);
                    assert!(
                        same_bits(g, w),
                        "portable {}: [{m}, {k}] x [{k}, {n}], A{ia} B{ib} C{ic}, α {alpha}, \
                         β {beta}: element ({i}, {j}): {g} vs the portable loop's {w}",
                        e.name
                    );
                }
            }
            for (idx, (x, y)) in got.iter().zip(&before).enumerate() {
                assert!(
                    inside[idx] || same_bits((e.parts)(*x)[0], (e.parts)(*y)[0]),
                    "portable {}: [{m}, {k}, {n}] C{ic} wrote outside the view at {idx}",
                    e.name
                );
            }
            count += 1;
        }
        count
    }
    let count = check(&F32) + check(&F64);
    eprintln!("kernel families: RAN portable grids: {count} large products, bit-identical");
}

/// Loss and gradients through two batch-norms of one input `x` (so the
/// second adds to x's adjoint): `Σ bn1(x)·w + Σ bn2(x)²/2`, on a tape of
/// `T`; `dual` gives every input a tangent. Returned: the loss, then the
/// gradients of x, γ1, β1, γ2, β2.
fn batch_norm_bits<T: Real>(shape: &[usize], dual: impl Fn(f64, f64) -> T) -> Vec<T> {
    let t = Tape::<T>::new();
    let data = |n: usize, seed: f64| -> Vec<T> {
        (0..n)
            .map(|i| dual(val(i, seed, false), val(i, seed * 1.3, false)))
            .collect()
    };
    let (len, c) = (shape.iter().product::<usize>(), shape[1]);
    let x = t.leaf(shape, &data(len, 0.41), true);
    let w = t.leaf(shape, &data(len, 0.77), false);
    let params: Vec<_> = (0..4)
        .map(|j| t.leaf(&[c][..], &data(c, 0.19 + 0.1 * j as f64), true))
        .collect();
    let y1 = x.batch_norm(params[0], params[1], 1e-5);
    let y2 = x.batch_norm(params[2], params[3], 1e-3);
    let loss = (y1 * w).sum() + (y2 * y2).sum().mul_scalar(0.5);
    t.backward(loss);
    let mut out = vec![loss.item()];
    for v in std::iter::once(x).chain(params) {
        out.extend(t.grad(v).data().iter().copied());
    }
    out
}

/// A batch-norm's passes with the channels cut in two halves between two
/// threads (`kernels::pair::channel_halves`, from 2^15 elements, a dual's
/// counted twice: the statistics, x − μ, the output; the adjoint's sums and
/// ḡx, fresh and accumulated) give the bits of one thread, for `[n, c]` (an
/// even and an odd channel count) and `[n, c, h, w]`, batch statistics over
/// m not a power of two, on `f32`, `f64` and dual tapes, ten times over
/// (each half may run on either thread).
#[test]
fn batch_norm_gives_the_same_bits_cut_in_two() {
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    fn check<T: Real>(one: &rayon::ThreadPool, name: &str, dual: impl Fn(f64, f64) -> T + Sync) {
        for shape in [&[96, 384][..], &[120, 277], &[6, 6, 40, 24]] {
            let name = format!("{name} {shape:?}");
            same_bits_cut_in_two(one, &name, || batch_norm_bits(shape, &dual));
        }
    }
    check(&one, "f32", |v, _| v as f32);
    check(&one, "f64", |v, _| v);
    check(&one, "Dual<f64>", Dual::new);
}
