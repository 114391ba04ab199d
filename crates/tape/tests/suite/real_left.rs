//! A `constant_base` left operand of `matmul` on a dual tape runs as real
//! products on the other operand's parts (`kernels/real_left.rs`): checked bit
//! for bit against the general dual product of the same constant converted
//! with zero tangents (`Tape::constant`), forward and adjoint (full and
//! HVP-only), small and large shapes, `f32` and `f64`, every kernel family
//! the CPU has.

use tape::kernels::{with_family, Family};
use tape::{Constant, Dual, Float, Tape, Tensor};

/// How the constant left operand is recorded.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Left {
    /// `Tape::constant` of the converted duals (zero tangents): the reference.
    General,
    /// `Tape::constant_base` (a real copy in the arena).
    Base,
    /// `Tape::constant_shared` (read in place; its column-major copy in the
    /// forward matrix-vector products).
    Shared,
}

/// Deterministic entries in (−0.5, 0.5) from a seed (a linear-congruential
/// sequence), as `F`.
fn filled<F: Float>(n: usize, seed: u32) -> Vec<F> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(12_345);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            F::from_f64(f64::from(s >> 8) / f64::from(1u32 << 24) - 0.5)
        })
        .collect()
}

/// Duals with both parts filled.
fn duals<F: Float>(n: usize, seed: u32) -> Vec<Dual<F>> {
    let (v, d) = (filled::<F>(n, seed), filled::<F>(n, seed + 100));
    v.into_iter().zip(d).map(|(v, d)| Dual::new(v, d)).collect()
}

/// What one recording gives: C = A·X, and after a sweep of Σ (C ⊙ W) + Σ A
/// (which reads A's dual value too, so a kept real copy must also be
/// converted), the adjoint of X; plus A's value.
struct Run<F> {
    c: Vec<Dual<F>>,
    grad_x: Vec<Dual<F>>,
    a: Vec<Dual<F>>,
}

/// Records `A·X` with A `[.., m, k]` (shape `sa`) and X (shape `sx`); A as
/// `left` says.
/// `hvp_only`: X is a `tangent_leaf_with` leaf (only the tangent of its
/// adjoint is compared).
fn run<F: Float>(
    sa: &[usize],
    sx: &[usize],
    sc: &[usize],
    left: Left,
    hvp_only: bool,
    also_value: bool,
) -> Run<F> {
    let na: usize = sa.iter().product();
    let a = Tensor::new(sa, filled::<F>(na, 1));
    let x = duals::<F>(sx.iter().product(), 2);
    let w = Tensor::new(sc, duals::<F>(sc.iter().product(), 3));
    let t = Tape::<Dual<F>>::new();
    let shared = Constant::new(a.clone());
    let av = match left {
        Left::Base => t.constant_base(&a),
        Left::Shared => t.constant_shared(&shared),
        Left::General => {
            let zero_d = a.data().iter().map(|&v| Dual::new(v, F::zero())).collect();
            t.constant(&Tensor::new(sa, zero_d))
        }
    };
    let xv = if hvp_only {
        t.tangent_leaf_with(sx, |out| out.copy_from_slice(&x))
    } else {
        t.leaf(sx, &x, true)
    };
    let c = av.matmul(xv);
    let mut loss = (c * t.constant(&w)).sum();
    if also_value {
        loss = loss + av.sum();
    }
    t.backward(loss);
    let mut grad_x = t.grad(xv).data().to_vec();
    if hvp_only {
        // The primal part of a tangent leaf's adjoint is unspecified.
        grad_x.iter_mut().for_each(|g| g.v = F::zero());
    }
    Run {
        c: t.value(c).data().to_vec(),
        grad_x,
        a: t.value(av).data().to_vec(),
    }
}

fn bits<F: Float>(x: &[Dual<F>]) -> Vec<(u64, u64)> {
    x.iter()
        .map(|d| (d.v.to_f64_prim().to_bits(), d.d.to_f64_prim().to_bits()))
        .collect()
}

/// The shapes: small products with one, three and 40 columns (the last one
/// converts the constant: 80 real columns do not fit the small kernels),
/// large ones with one and 70 columns, and both batched forms.
const CASES: [(&[usize], &[usize], &[usize]); 8] = [
    (&[100, 100], &[100, 1], &[100, 1]),
    (&[7, 13], &[13, 3], &[7, 3]),
    (&[10, 5], &[5, 40], &[10, 40]),
    (&[1000, 50], &[50, 1], &[1000, 1]),
    (&[40, 50], &[50, 70], &[40, 70]),
    (&[3, 200, 60], &[60, 2], &[3, 200, 2]),
    (&[2, 3, 4], &[4, 5], &[2, 3, 5]),
    (&[2, 3, 4], &[2, 4, 5], &[2, 3, 5]),
];

fn check<F: Float>() {
    for family in Family::ALL.into_iter().filter(|f| f.is_available()) {
        for (sa, sx, sc) in CASES {
            for (hvp_only, also_value) in [(false, false), (false, true), (true, false)] {
                let [general, base, shared] =
                    [Left::General, Left::Base, Left::Shared].map(|left| {
                        with_family(family, || run::<F>(sa, sx, sc, left, hvp_only, also_value))
                    });
                for (left, real) in [(Left::Base, base), (Left::Shared, shared)] {
                    let case = format!(
                        "{family:?} {left:?} {sa:?}·{sx:?} hvp_only {hvp_only} value {also_value}"
                    );
                    assert_eq!(bits(&real.c), bits(&general.c), "{case}: A·X");
                    assert_eq!(bits(&real.grad_x), bits(&general.grad_x), "{case}: ḡX");
                    assert_eq!(bits(&real.a), bits(&general.a), "{case}: value of A");
                }
            }
        }
    }
}

#[test]
fn real_left_products_match_the_dual_product_f64() {
    check::<f64>();
}

#[test]
fn real_left_products_match_the_dual_product_f32() {
    check::<f32>();
}

/// A product of a `constant_base` leaf has the tangent (A·X).d = A·X.d, here
/// with small integers, so every sum is exact.
#[test]
fn a_constant_base_product_has_the_exact_tangent() {
    let t = Tape::<Dual<f64>>::new();
    let a = t.constant_base(&Tensor::new([2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
    let x = t.leaf(
        [3, 1],
        &[
            Dual::new(1.0, 1.0),
            Dual::new(0.0, 2.0),
            Dual::new(-1.0, 3.0),
        ],
        true,
    );
    let c = t.value(a.matmul(x));
    assert_eq!(c.data(), &[Dual::new(-2.0, 14.0), Dual::new(-2.0, 32.0)]);
}

/// On a real (`f64`, `f32`) tape a `constant_shared` left operand is read in
/// place (its column-major copy in the forward product): value, the
/// gradient of the other operand and the constant's own value are bit for
/// bit those of `Tape::constant`, in every family, over the shapes above,
/// and a tape cleared and recorded again gives them again.
fn check_real<F: Float>() {
    for family in Family::ALL.into_iter().filter(|f| f.is_available()) {
        for (sa, sx, sc) in CASES {
            let a = Tensor::new(sa, filled::<F>(sa.iter().product(), 1));
            let x = Tensor::new(sx, filled::<F>(sx.iter().product(), 2));
            let w = Tensor::new(sc, filled::<F>(sc.iter().product(), 3));
            let shared_a = Constant::new(a.clone());
            let mut t = Tape::<F>::new();
            let record = |t: &Tape<F>, shared: bool| {
                with_family(family, || {
                    let av = if shared {
                        t.constant_shared(&shared_a)
                    } else {
                        t.constant(&a)
                    };
                    let xv = t.var(&x);
                    let c = av.matmul(xv);
                    t.backward((c * t.constant(&w)).sum());
                    let bits = |v: &[F]| -> Vec<u64> {
                        v.iter().map(|e| e.to_f64_prim().to_bits()).collect()
                    };
                    [
                        bits(t.value(c).data()),
                        bits(t.grad(xv).data()),
                        bits(t.value(av).data()),
                    ]
                })
            };
            let general = record(&t, false);
            t.clear();
            for round in 0..2 {
                let shared = record(&t, true);
                t.clear();
                for (what, (p, q)) in ["A·X", "ḡX", "value of A"]
                    .iter()
                    .zip(shared.iter().zip(&general))
                {
                    assert_eq!(p, q, "{family:?} {sa:?}·{sx:?} round {round}: {what}");
                }
            }
        }
    }
}

#[test]
fn shared_constants_on_a_real_tape_match_copied_ones_f64() {
    check_real::<f64>();
}

#[test]
fn shared_constants_on_a_real_tape_match_copied_ones_f32() {
    check_real::<f32>();
}
