//! The HVP-only pass ([`Workspace::hvp_only_into`], [`hvp::Seed::HvOnly`]):
//! it skips the primal weight-gradient products, and must give the full
//! pass's H·v bit for bit (the same products summed in the same order) and
//! agree with the central difference of gradients.
//!
//! The networks are large enough that their products leave the small-product
//! kernels (more than 32 k multiply-adds), where the tangent-only product
//! runs; the small ones take the full product in both passes.

use hvp::{Objective, Seed, Workspace};
use tape::{Float, Real, Tape, Tensor, Var};

/// Deterministic entries in [−0.5, 0.5) (a fixed linear-congruential sequence).
fn filled<F: Float>(shape: &[usize], seed: u32, scale: f64) -> Tensor<F> {
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(12345);
    Tensor::from_fn(shape, |_| {
        s = s.wrapping_mul(1664525).wrapping_add(1013904223);
        F::from_f64(scale * ((s >> 8) as f64 / (1u64 << 24) as f64 - 0.5))
    })
}

/// An MLP 48-64-64-20 on 40 constant samples, tanh then ReLU, softmax
/// cross-entropy; the last layer is `matmul_t` (weight `[20, 64]`), so both
/// product ops and both operand sides of the tangent-only product are used.
struct Mlp<F: Float> {
    x: Tensor<F>,
    labels: Vec<usize>,
}

impl<F: Float> Objective<F> for Mlp<F> {
    fn eval<'t, T: Real<Base = F>>(&self, t: &'t Tape<T>, p: &[Var<'t, T>]) -> Var<'t, T> {
        let h = (t.constant_base(&self.x).matmul(p[0]) + p[1]).tanh();
        let h = (h.matmul(p[2]) + p[3]).relu();
        h.matmul_t(p[4]).softmax_cross_entropy(&self.labels)
    }
}

/// The same MLP with a ReLU after the first layer (as the benchmark's): the
/// first hidden layer's adjoint ḡh1 = ḡz2·W2ᵀ then feeds only tangent-only
/// leaves through a ReLU, a bias add and a product with the real data, so
/// its primal part is dead and the HVP-only pass skips that product too.
struct MlpRelu<F: Float>(Mlp<F>);

impl<F: Float> Objective<F> for MlpRelu<F> {
    fn eval<'t, T: Real<Base = F>>(&self, t: &'t Tape<T>, p: &[Var<'t, T>]) -> Var<'t, T> {
        let h = (t.constant_base(&self.0.x).matmul(p[0]) + p[1]).relu();
        let h = (h.matmul(p[2]) + p[3]).relu();
        h.matmul_t(p[4]).softmax_cross_entropy(&self.0.labels)
    }
}

/// A weight used by two products with real data on the left: its H·v block
/// is the sum of two products, so the first one's tangent sink
/// (`tape::kernels::with_tangent_sinks`) must not stand for the whole block
/// (the HVP-only pass runs again without sinks).
struct Twice<F: Float> {
    x: Tensor<F>,
    y: Tensor<F>,
    labels: Vec<usize>,
}

impl<F: Float> Objective<F> for Twice<F> {
    fn eval<'t, T: Real<Base = F>>(&self, t: &'t Tape<T>, p: &[Var<'t, T>]) -> Var<'t, T> {
        let z = t.constant_base(&self.x).matmul(p[0]) + t.constant_base(&self.y).matmul(p[0]);
        (z + p[1])
            .tanh()
            .matmul_t(p[2])
            .softmax_cross_entropy(&self.labels)
    }
}

fn twice<F: Float>() -> (Twice<F>, Vec<Tensor<F>>, Vec<Tensor<F>>) {
    let (f, x, v) = mlp();
    let y = filled(&[40, 48], 2, 2.0);
    let pick = |t: Vec<Tensor<F>>| vec![t[0].clone(), t[1].clone(), t[4].clone()];
    let f = Twice {
        x: f.x,
        y,
        labels: f.labels,
    };
    (f, pick(x), pick(v))
}

fn mlp_relu<F: Float>() -> (MlpRelu<F>, Vec<Tensor<F>>, Vec<Tensor<F>>) {
    let (f, x, v) = mlp();
    (MlpRelu(f), x, v)
}

/// A conv layer (8 → 16 channels, 3×3, on 6 images of 10×10) and a linear
/// read-out: the weight gradient is the chunked `g·colsᵀ` product.
struct Conv<F: Float> {
    x: Tensor<F>,
    labels: Vec<usize>,
}

impl<F: Float> Objective<F> for Conv<F> {
    fn eval<'t, T: Real<Base = F>>(&self, t: &'t Tape<T>, p: &[Var<'t, T>]) -> Var<'t, T> {
        let h = t.constant_base(&self.x).conv2d(p[0], 1, 1).tanh(); // [6, 16, 10, 10]
        h.reshape([6, 1600])
            .matmul(p[1])
            .softmax_cross_entropy(&self.labels)
    }
}

fn mlp<F: Float>() -> (Mlp<F>, Vec<Tensor<F>>, Vec<Tensor<F>>) {
    let f = Mlp {
        x: filled(&[40, 48], 1, 2.0),
        labels: (0..40).map(|i| (i * 7) % 20).collect(),
    };
    let shapes: [&[usize]; 5] = [&[48, 64], &[64], &[64, 64], &[64], &[20, 64]];
    let x = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| filled(s, 10 + i as u32, 0.6))
        .collect();
    let v = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| filled(s, 20 + i as u32, 2.0))
        .collect();
    (f, x, v)
}

fn conv<F: Float>() -> (Conv<F>, Vec<Tensor<F>>, Vec<Tensor<F>>) {
    let f = Conv {
        x: filled(&[6, 8, 10, 10], 3, 2.0),
        labels: (0..6).map(|i| i % 4).collect(),
    };
    let shapes: [&[usize]; 2] = [&[16, 8, 3, 3], &[1600, 4]];
    let x = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| filled(s, 30 + i as u32, 0.3))
        .collect();
    let v = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| filled(s, 40 + i as u32, 2.0))
        .collect();
    (f, x, v)
}

/// The bits of H·v from the HVP-only pass and from the full pass.
fn both<F: Float, O: Objective<F>>(f: &O, x: &[Tensor<F>], v: &[Tensor<F>]) -> [Vec<Vec<F>>; 2] {
    let mut ws = Workspace::new();
    let mut hv: Vec<Tensor<F>> = x.iter().map(|xi| Tensor::zeros(xi.shape())).collect();
    let value = ws.hvp_only_into(f, x, v, &mut hv);
    let full = ws.hvp(f, x, v);
    assert_eq!(value, full.value);
    let data = |t: &[Tensor<F>]| t.iter().map(|t| t.data().to_vec()).collect();
    [data(&hv), data(&full.hv)]
}

/// H·v of the HVP-only pass is bit for bit the full pass's (f32 and f64, an
/// MLP with `matmul` and `matmul_t`, and a convolution).
#[test]
fn hvp_only_equals_the_full_pass_bit_for_bit() {
    fn check<F: Float, O: Objective<F>>(
        what: &str,
        (f, x, v): (O, Vec<Tensor<F>>, Vec<Tensor<F>>),
    ) {
        let [only, full] = both(&f, &x, &v);
        for (i, (a, b)) in only.iter().zip(&full).enumerate() {
            assert!(
                a.iter().any(|&h| h != F::zero()),
                "{what}: input {i}: H·v is zero"
            );
            for (j, (p, q)) in a.iter().zip(b).enumerate() {
                assert!(
                    p == q || (p.to_f64() == 0.0 && q.to_f64() == 0.0),
                    "{what} {}: input {i} element {j}: {p} (HVP-only) vs {q} (full pass)",
                    F::NAME
                );
                assert_eq!(
                    p.to_f64().to_bits(),
                    q.to_f64().to_bits(),
                    "{what}: {i}/{j}"
                );
            }
        }
    }
    check("mlp", mlp::<f32>());
    check("mlp", mlp::<f64>());
    check("mlp_relu", mlp_relu::<f32>());
    check("mlp_relu", mlp_relu::<f64>());
    check("conv", conv::<f32>());
    check("conv", conv::<f64>());
    check("twice", twice::<f32>());
    check("twice", twice::<f64>());
}

/// H·v against the central difference of f64 gradients, (∇f(x + εv) −
/// ∇f(x − εv)) / 2ε, within 1e-6 relative (ε = 1e-5: no ReLU changes side).
#[test]
fn hvp_only_matches_differences_of_gradients() {
    fn check<O: Objective<f64>>(what: &str, (f, x, v): (O, Vec<Tensor<f64>>, Vec<Tensor<f64>>)) {
        let eps = 1e-5;
        let shifted = |s: f64| -> Vec<Tensor<f64>> {
            x.iter()
                .zip(&v)
                .map(|(p, d)| {
                    let data = p.data().iter().zip(d.data()).map(|(&a, &b)| a + s * b);
                    Tensor::new(p.shape(), data.collect())
                })
                .collect()
        };
        let mut ws = Workspace::new();
        let (_, gp) = ws.value_and_grad(&f, &shifted(eps));
        let (_, gm) = ws.value_and_grad(&f, &shifted(-eps));
        let hv = ws.hvp_only(&f, &x, &v);
        let (mut num, mut den) = (0.0f64, 0.0f64);
        for ((a, b), h) in gp.iter().zip(&gm).zip(&hv) {
            for ((&a, &b), &h) in a.data().iter().zip(b.data()).zip(h.data()) {
                num += ((a - b) / (2.0 * eps) - h).powi(2);
                den += h * h;
            }
        }
        let rel = (num / den).sqrt();
        assert!(rel < 1e-6, "{what}: |Hv − FD| / |Hv| = {rel:e}");
    }
    check("mlp", mlp::<f64>());
    check("mlp_relu", mlp_relu::<f64>());
    check("conv", conv::<f64>());
    check("twice", twice::<f64>());
}

/// Which inputs' adjoints have a nonzero primal part after a dual pass
/// with every input seeded `HvOnly` (`only`) or `Tangent`.
fn primal_parts<O: Objective<f64>>(
    f: &O,
    x: &[Tensor<f64>],
    v: &[Tensor<f64>],
    only: bool,
) -> Vec<bool> {
    let mut ws = Workspace::new();
    let seeds = x.iter().zip(v).map(|(xi, vi)| {
        let s = if only {
            Seed::HvOnly(vi.data())
        } else {
            Seed::Tangent(vi.data())
        };
        (xi, s)
    });
    let p = ws.dual_pass(seeds, |t, p| f.eval(t, p));
    (0..x.len())
        .map(|i| p.adjoint(i).unwrap().iter().any(|d| d.v != 0.0))
        .collect()
}

/// The skip is structural: after an HVP-only dual pass, a weight's adjoint
/// has no primal part (its product was not taken, the fresh adjoint's `.v` is
/// written as β·C.v = 0), while the full pass's holds the gradient. The
/// biases (an add's adjoint: a sum, no product to skip) keep theirs, except
/// behind a dead primal adjoint: with a ReLU first layer, ḡh1.v = ḡz2.v·W2ᵀ
/// is not taken (the first layer's rules form ḡ.d without it), so the first
/// bias's primal part is zero too; with tanh it is needed (tanh's adjoint
/// tangent reads ḡ.v) and kept.
#[test]
fn hvp_only_skips_the_primal_weight_gradient() {
    let (f, x, v) = mlp::<f64>();
    assert_eq!(primal_parts(&f, &x, &v, false), [true; 5]);
    // Weights 0, 2 (matmul) and 4 (matmul_t): skipped; biases 1, 3: kept.
    assert_eq!(
        primal_parts(&f, &x, &v, true),
        [false, true, false, true, false]
    );
    let (f, x, v) = mlp_relu::<f64>();
    assert_eq!(primal_parts(&f, &x, &v, false), [true; 5]);
    // The first layer's bias too: its adjoint's primal part is dead.
    assert_eq!(
        primal_parts(&f, &x, &v, true),
        [false, false, false, true, false]
    );
}

/// The same bits on one thread and two: [`MlpRelu`] widened so that its
/// weights (48 · 1024 and 1024 · 64 elements) are above the size from which
/// the copies between duals and planes are cut over both cores
/// (`kernels/dual.rs`, 2^15 elements), and so are its first layer's
/// products (`kernels/large.rs`, 2^22 multiply-adds). H·v of the HVP-only
/// pass and value, gradient and H·v of the full pass, each from the calling
/// thread (cut, when the global pool has two threads or more) and inside a
/// pool of one thread (nothing is cut there).
#[test]
fn hvp_passes_give_the_same_bits_on_one_thread_and_two() {
    let (h, b) = (1024, 96);
    let f = MlpRelu(Mlp::<f32> {
        x: filled(&[b, 48], 5, 2.0),
        labels: (0..b).map(|i| (i * 7) % 20).collect(),
    });
    let shapes: [&[usize]; 5] = [&[48, h], &[h], &[h, 64], &[64], &[20, 64]];
    let x: Vec<Tensor<f32>> = (0..5)
        .map(|i| filled(shapes[i], 50 + i as u32, 0.3))
        .collect();
    let v: Vec<Tensor<f32>> = (0..5)
        .map(|i| filled(shapes[i], 60 + i as u32, 2.0))
        .collect();
    let run = || {
        let mut ws = Workspace::new();
        let zeros =
            || -> Vec<Tensor<f32>> { x.iter().map(|xi| Tensor::zeros(xi.shape())).collect() };
        let (mut only, mut grad, mut hv) = (zeros(), zeros(), zeros());
        let v_only = ws.hvp_only_into(&f, &x, &v, &mut only);
        let v_full = ws.hvp_into(&f, &x, &v, &mut grad, &mut hv);
        let bits = |t: &[Tensor<f32>]| -> Vec<u32> {
            t.iter()
                .flat_map(|t| t.data().iter().map(|e| e.to_bits()))
                .collect()
        };
        (
            v_only.to_bits(),
            v_full.to_bits(),
            bits(&only),
            bits(&grad),
            bits(&hv),
        )
    };
    let two = run();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let one = pool.install(run);
    assert!(two.2.iter().any(|&e| e != 0), "H·v is zero");
    assert_eq!(one.0, two.0, "value (HVP-only pass)");
    assert_eq!(one.1, two.1, "value (full pass)");
    for (what, a, b) in [
        ("HVP-only H·v", &one.2, &two.2),
        ("gradient", &one.3, &two.3),
        ("H·v", &one.4, &two.4),
    ] {
        let first = a.iter().zip(b).position(|(p, q)| p != q);
        assert_eq!(
            first, None,
            "{what}: first differing element (one thread vs two)"
        );
    }
}

/// The Hessian operator's flat products (`Hessian::apply`, the full
/// Hessian and a block with the other inputs held constant) give the
/// HVP-only pass's bits, each input's part written through its tangent sink
/// or copied from its dual adjoint, and with a weight used twice (the pass
/// run again without sinks).
#[test]
fn hessian_apply_gives_the_hvp_only_bits() {
    use hvp::{Hessian, LinOp};
    fn check<O: Objective<f32>>(what: &str, (f, x, v): (O, Vec<Tensor<f32>>, Vec<Tensor<f32>>)) {
        let only = Workspace::new().hvp_only(&f, &x, &v);
        let flat = |t: &[Tensor<f32>]| -> Vec<u32> {
            t.iter()
                .flat_map(|t| t.data().iter().map(|e| e.to_bits()))
                .collect()
        };
        let h = Hessian::new(&f, &x);
        let mut out = vec![f32::NAN; h.dim()];
        h.apply(&hvp::flatten(&v), &mut out);
        let got: Vec<u32> = out.iter().map(|e| e.to_bits()).collect();
        assert_eq!(got, flat(&only), "{what}: full Hessian");
        // The block of the first input alone (the others constant): its own
        // pass, compared with the HVP-only pass of the same block.
        let h0 = Hessian::block(&f, &x, &[0]);
        let mut out0 = vec![f32::NAN; h0.dim()];
        h0.apply(v[0].data(), &mut out0);
        let mut ws = Workspace::new();
        let seeds = x.iter().enumerate().map(|(i, xi)| {
            let s = if i == 0 {
                Seed::HvOnly(v[0].data())
            } else {
                Seed::Constant
            };
            (xi, s)
        });
        let p = ws.dual_pass(seeds, |t, p| f.eval(t, p));
        let want: Vec<u32> = p
            .adjoint(0)
            .unwrap()
            .iter()
            .map(|d| d.d.to_bits())
            .collect();
        let got0: Vec<u32> = out0.iter().map(|e| e.to_bits()).collect();
        assert_eq!(got0, want, "{what}: block of input 0");
    }
    check("mlp", mlp::<f32>());
    check("twice", twice::<f32>());
}
