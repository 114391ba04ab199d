//! Every kernel family this CPU has gives the portable loop's bits, for every
//! element type, every operand layout the tape produces, shapes around the
//! vector widths, β = 0 over a NaN-filled C (never read), and inputs with −0,
//! ±∞ and NaN. Each family is forced with `kernels::with_family` (so one
//! machine tests all it supports) and `kernels::last_family` confirms which one
//! ran. The test prints, on stderr (visible with `--nocapture`), which families
//! ran and which were skipped and why.

use tape::gemm::{gemm, MatRef};
use tape::kernels::{last_family, with_family, Family};
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

/// Shapes `(m, k, n)` around the vector widths (16 f32, 8 f64 lanes; 4-row
/// blocks), single rows and columns, and the few-shot `[10, 40]·[40, 40]`.
const SHAPES: [(usize, usize, usize); 16] = [
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

/// Runs every shape, layout and β under `family` and under the portable loop
/// and compares the bits; `expect` is the family that must have run each
/// product. Returns the number of products compared.
fn family_matches_portable<T: Real>(
    family: Family,
    expect: Family,
    make: impl Fn(f64, f64) -> T,
    parts: impl Fn(T) -> Vec<f64>,
) -> usize {
    let (alpha, beta) = (T::Base::from_f64(1.5), T::Base::from_f64(-0.5));
    let mut products = 0;
    for (case, &(m, k, n)) in SHAPES.iter().enumerate() {
        for special in [false, true] {
            let mk = |len: usize, seed: f64| -> Vec<T> {
                (0..len)
                    .map(|i| make(val(i, seed, special), val(i, seed * 0.7 + 0.1, special)))
                    .collect()
            };
            let a = mk(m * k, 0.37 + case as f64);
            // B stored with room for a stride of 3 between columns.
            let b = mk(3 * k * n, 0.53 + case as f64);
            let c0 = mk(m * n, 0.29);
            let a_views = [MatRef::row_major(&a, m, k), MatRef::row_major(&a, k, m).t()];
            let b_views = [
                MatRef::row_major(&b[..k * n], k, n),
                MatRef::row_major(&b[..k * n], n, k).t(),
                MatRef::new(&b, k, n, 3 * n, 3),
            ];
            for (ia, &av) in a_views.iter().enumerate() {
                for (ib, &bv) in b_views.iter().enumerate() {
                    for beta in [T::Base::from_f64(0.0), beta] {
                        let mut got = c0.clone();
                        let mut want = c0.clone();
                        if beta == T::Base::from_f64(0.0) {
                            // β = 0: C is never read, so garbage must not leak.
                            got.fill(make(f64::NAN, f64::NAN));
                        }
                        with_family(family, || gemm(alpha, av, bv, beta, &mut got));
                        assert_eq!(
                            last_family(),
                            Some(expect),
                            "[{m}, {k}] x [{k}, {n}], layouts {ia}/{ib}: forced {family}"
                        );
                        with_family(Family::Portable, || gemm(alpha, av, bv, beta, &mut want));
                        assert_eq!(last_family(), Some(Family::Portable));
                        for (idx, (&g, &w)) in got.iter().zip(&want).enumerate() {
                            let ok = parts(g).iter().zip(parts(w)).all(|(&x, y)| same_bits(x, y));
                            assert!(
                                ok,
                                "{family}: [{m}, {k}] x [{k}, {n}], layouts {ia}/{ib}, \
                                 beta {beta:?}, special {special}: element {idx}: \
                                 {g:?} vs portable {w:?}"
                            );
                        }
                        products += 1;
                    }
                }
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

#[test]
fn every_family_is_bit_identical_to_the_portable_loop() {
    let families = available_families();
    for &family in &families {
        // Under AVX-512 the element types without kernels (nested duals) run
        // the AVX2 loop.
        let nested = if family == Family::Avx512 {
            Family::Avx2
        } else {
            family
        };
        let mut count = 0;
        count += family_matches_portable(family, family, |v, _| v as f32, |x| vec![x as f64]);
        count += family_matches_portable(family, family, |v, _| v, |x| vec![x]);
        count += family_matches_portable(
            family,
            family,
            |v, d| Dual::new(v as f32, d as f32),
            |x| vec![x.v as f64, x.d as f64],
        );
        count += family_matches_portable(family, family, Dual::new, |x| vec![x.v, x.d]);
        count += family_matches_portable(
            family,
            nested,
            |v, d| Dual::new(Dual::new(v, d), Dual::new(d * 0.5, -v)),
            |x| vec![x.v.v, x.v.d, x.d.v, x.d.d],
        );
        eprintln!(
            "kernel families: RAN {family}: {count} products (f32, f64, Dual<f32>, Dual<f64>, \
             Dual<Dual<f64>> via {nested}) bit-identical to portable"
        );
    }
    assert!(families.contains(&Family::Portable));
}

/// An MLP's loss and gradients (f32), and the same on dual numbers (a JVP
/// forward pass and forward-over-reverse sweep), under every family: the
/// tape's matmul forward and VJP rules reach the kernels, and every family
/// gives the same bits.
#[test]
fn tape_gradients_are_bit_identical_across_families() {
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
    let families = available_families();
    let want32 = with_family(Family::Portable, || run(|v, _| v as f32));
    let want_dual = with_family(Family::Portable, || run(Dual::new));
    for &family in &families {
        let got32 = with_family(family, || run(|v, _| v as f32));
        assert_eq!(last_family(), Some(family), "f32 MLP under {family}");
        let got_dual = with_family(family, || run(Dual::new));
        assert_eq!(last_family(), Some(family), "dual MLP under {family}");
        assert!(
            got32
                .iter()
                .zip(&want32)
                .all(|(g, w)| g.to_bits() == w.to_bits()),
            "{family}: f32 MLP gradient differs from the portable loop's"
        );
        assert!(
            got_dual
                .iter()
                .zip(&want_dual)
                .all(|(g, w)| g.v.to_bits() == w.v.to_bits() && g.d.to_bits() == w.d.to_bits()),
            "{family}: dual MLP gradient differs from the portable loop's"
        );
        eprintln!("kernel families: RAN {family}: MLP gradient (f32, Dual<f64>) bit-identical");
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
