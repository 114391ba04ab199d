//! Gradient checks of every model's loss against central differences (f64),
//! at a few random parameter draws, with smooth activations where the
//! architecture allows. Also one Hessian-vector product on dual numbers
//! against a difference of gradients, to show the forwards are generic over `Real`.

use models::{binary_logistic_loss, Activation, Conv4, Conv4Variant, Linear, Mlp, Model, Params};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tape::{Real, Tape, Tensor, Var};

#[derive(Clone, Copy)]
enum Loss<'a> {
    Mse(&'a Tensor<f64>),
    Xent(&'a [usize]),
    Logistic(&'a [bool]),
}

fn loss<'t, T: Real<Base = f64>, M: Model>(
    m: &M,
    t: &'t Tape<T>,
    p: &[Var<'t, T>],
    x: &Tensor<f64>,
    l: Loss<'_>,
) -> Var<'t, T> {
    let out = m.forward(t, p, t.constant_base(x));
    match l {
        Loss::Mse(y) => out.mse(t.constant_base(y)),
        Loss::Xent(labels) => out.softmax_cross_entropy(labels),
        Loss::Logistic(labels) => binary_logistic_loss(t, out, labels),
    }
}

fn value(m: &impl Model, p: &Params<f64>, x: &Tensor<f64>, l: Loss<'_>) -> f64 {
    let t = Tape::<f64>::new();
    let v = p.vars(&t);
    loss(m, &t, &v, x, l).item()
}

/// Checks `n_coords` random coordinates (all if fewer) of ∇L against
/// (L(p + h e_i) − L(p − h e_i)) / 2h, relative tolerance `tol`.
fn check(m: &impl Model, x: &Tensor<f64>, l: Loss<'_>, seeds: &[u64], n_coords: usize, tol: f64) {
    for &seed in seeds {
        let p: Params<f64> = m.init(seed);
        let t = Tape::<f64>::new();
        let vars = p.vars(&t);
        let out = loss(m, &t, &vars, x, l);
        t.backward(out);
        let grad: Vec<f64> = vars.iter().flat_map(|&v| t.grad(v).into_data()).collect();
        let flat = p.flatten();
        let mut rng = ChaCha8Rng::seed_from_u64(seed + 1000);
        let coords: Vec<usize> = if flat.len() <= n_coords {
            (0..flat.len()).collect()
        } else {
            (0..n_coords)
                .map(|_| rng.gen_range(0..flat.len()))
                .collect()
        };
        let h = 1e-5;
        let gmax = grad.iter().fold(0.0f64, |a, g| a.max(g.abs()));
        for &i in &coords {
            let mut fp = flat.clone();
            fp[i] += h;
            let mut fm = flat.clone();
            fm[i] -= h;
            let num =
                (value(m, &p.with_flat(&fp), x, l) - value(m, &p.with_flat(&fm), x, l)) / (2.0 * h);
            let err = (grad[i] - num).abs();
            assert!(
                err <= tol * (1.0 + gmax),
                "seed {seed}, coordinate {i}: analytic {} vs central difference {num} (err {err:e})",
                grad[i]
            );
        }
    }
}

fn randn(shape: &[usize], seed: u64) -> Tensor<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Tensor::from_fn(shape, |_| rng.gen_range(-1.0..1.0))
}

#[test]
fn mlp_tanh_and_softplus_mse() {
    let x = randn(&[6, 3], 1);
    let y = randn(&[6, 2], 2);
    for act in [Activation::Tanh, Activation::Softplus] {
        let m = Mlp::new(&[3, 5, 4, 2], act);
        check(&m, &x, Loss::Mse(&y), &[0, 1, 2], usize::MAX, 1e-7);
    }
}

#[test]
fn mlp_classifier_cross_entropy() {
    let x = randn(&[5, 4], 3);
    let m = Mlp::new(&[4, 6, 3], Activation::Tanh);
    check(
        &m,
        &x,
        Loss::Xent(&[0, 2, 1, 1, 0]),
        &[3, 4],
        usize::MAX,
        1e-7,
    );
}

#[test]
fn linear_softmax_and_logistic() {
    let x = randn(&[7, 3], 4);
    let m = Linear::new(3, 4).with_init(models::Init::Normal(0.5));
    check(
        &m,
        &x,
        Loss::Xent(&[0, 1, 2, 3, 0, 1, 2]),
        &[0, 1, 2],
        usize::MAX,
        1e-7,
    );
    let m1 = Linear::new(3, 1).with_init(models::Init::Normal(0.5));
    check(
        &m1,
        &x,
        Loss::Logistic(&[true, false, true, true, false, false, true]),
        &[0, 1, 2],
        usize::MAX,
        1e-7,
    );
}

#[test]
fn conv4_all_variants_tanh() {
    // Small geometries: Omniglot-style 8→4→2→1→1; pooled variants 16→8→4→2→1.
    let cases = [
        Conv4::new(Conv4Variant::Omniglot, 1, 8, 8, 3, 3),
        Conv4::new(Conv4Variant::MiniImagenet, 2, 16, 16, 3, 3),
        Conv4::new(Conv4Variant::Benchmark, 1, 16, 16, 3, 3),
    ];
    for (k, m) in cases.into_iter().enumerate() {
        let m = m.with_activation(Activation::Tanh);
        let [c, h, w] = [m.in_channels, m.height, m.width];
        let x = randn(&[4, c, h, w], 10 + k as u64);
        check(&m, &x, Loss::Xent(&[0, 1, 2, 1]), &[5, 6], 40, 1e-6);
    }
}

#[test]
fn conv4_relu_away_from_kinks() {
    // The published nonlinearity; random inputs keep every pre-activation away from 0.
    let m = Conv4::new(Conv4Variant::Benchmark, 1, 16, 16, 2, 2);
    let x = randn(&[3, 1, 16, 16], 20);
    check(&m, &x, Loss::Xent(&[0, 1, 1]), &[7], 30, 1e-6);
}

struct NetObjective<'a> {
    m: &'a Mlp,
    x: Tensor<f64>,
    y: Tensor<f64>,
}

impl hvp::Objective<f64> for NetObjective<'_> {
    fn eval<'t, T: Real<Base = f64>>(&self, tape: &'t Tape<T>, x: &[Var<'t, T>]) -> Var<'t, T> {
        loss(self.m, tape, x, &self.x, Loss::Mse(&self.y))
    }
}

#[test]
fn mlp_hvp_on_duals_matches_gradient_difference() {
    let m = Mlp::new(&[2, 4, 1], Activation::Tanh);
    let obj = NetObjective {
        m: &m,
        x: randn(&[5, 2], 30),
        y: randn(&[5, 1], 31),
    };
    let p: Params<f64> = m.init(0);
    let v = models::init_params::<f64>(&m.param_specs(), 99); // a random direction of the right shapes
    let out = hvp::hvp(&obj, p.tensors(), v.tensors());
    let h = 1e-5;
    let shift = |s: f64| {
        let f: Vec<f64> = p
            .flatten()
            .iter()
            .zip(v.flatten())
            .map(|(a, b)| a + s * b)
            .collect();
        hvp::value_and_grad(&obj, p.with_flat(&f).tensors()).1
    };
    let (gp, gm) = (shift(h), shift(-h));
    for k in 0..p.len() {
        for i in 0..p.tensors()[k].numel() {
            let num = (gp[k].data()[i] - gm[k].data()[i]) / (2.0 * h);
            let ana = out.hv[k].data()[i];
            assert!(
                (ana - num).abs() < 1e-6 * (1.0 + num.abs()),
                "tensor {k} entry {i}: Hv {ana} vs {num}"
            );
        }
    }
}
