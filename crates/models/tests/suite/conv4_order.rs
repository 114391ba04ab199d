//! The benchmark Conv4 computes each block as act(maxpool(conv) + b) (pool
//! first: a quarter of the elements for the bias and the activation); this is
//! the published order maxpool(act(conv + b)) exactly. Checked against that
//! order written out op by op: the logits, and the gradient of a loss with
//! respect to every parameter, for every activation.

use models::{Activation, Conv4, Conv4Variant, Model, Params};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tape::{Tape, Tensor, Var};

/// The published block order: conv, bias, activation, 2×2 max-pool; then the head.
fn literal<'t>(m: &Conv4, p: &[Var<'t, f64>], x: Var<'t, f64>) -> Var<'t, f64> {
    let n = x.shape().dim(0);
    let mut h = x;
    for i in 0..4 {
        let (w, b) = (p[2 * i], p[2 * i + 1]);
        h = h.conv2d(w, 1, 1) + b.reshape([m.filters, 1, 1].as_slice());
        h = m.activation.apply(h);
        h = h.max_pool2d(2, 2);
    }
    let feat = h.reshape([n, m.feature_dim()].as_slice());
    feat.matmul_t(p[8]) + p[9]
}

/// (logits, flattened gradient of Σ logits·r) by `forward` or by [`literal`].
fn run(
    m: &Conv4,
    p: &Params<f64>,
    x: &Tensor<f64>,
    r: &Tensor<f64>,
    lit: bool,
) -> (Vec<f64>, Vec<f64>) {
    let t = Tape::<f64>::new();
    let v = p.vars(&t);
    let xv = t.constant_base(x);
    let out = if lit {
        literal(m, &v, xv)
    } else {
        m.forward(&t, &v, xv)
    };
    let loss = (out * t.constant_base(r)).sum();
    t.backward(loss);
    let grad = v.iter().flat_map(|&g| t.grad(g).into_data()).collect();
    (t.value(out).into_data(), grad)
}

#[test]
fn benchmark_blocks_pool_first_equal_the_published_order() {
    let m0 = Conv4::new(Conv4Variant::Benchmark, 2, 16, 16, 3, 4);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let x = Tensor::from_fn(&[3, 2, 16, 16], |_| rng.gen_range(-1.0..1.0));
    let r = Tensor::from_fn(&[3, 4], |_| rng.gen_range(-1.0..1.0));
    for act in [
        Activation::Relu,
        Activation::Tanh,
        Activation::Softplus,
        Activation::Identity,
    ] {
        let m = m0.clone().with_activation(act);
        for seed in [1, 2] {
            let p: Params<f64> = m.init(seed);
            let (yf, gf) = run(&m, &p, &x, &r, false);
            let (yl, gl) = run(&m, &p, &x, &r, true);
            let gmax = gl.iter().fold(0.0f64, |a, g| a.max(g.abs()));
            assert!(gmax > 0.0, "{act:?}: zero gradient");
            for (i, (a, b)) in yf.iter().zip(&yl).enumerate() {
                // ReLU and the identity: the same bits (max commutes with a
                // rounded add and with ReLU); tanh, softplus within rounding.
                let tol = match act {
                    Activation::Relu | Activation::Identity => 0.0,
                    _ => 1e-13 * (1.0 + b.abs()),
                };
                assert!(
                    (a - b).abs() <= tol,
                    "{act:?} seed {seed}: logit {i}: {a} vs {b}"
                );
            }
            for (i, (a, b)) in gf.iter().zip(&gl).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-12 * gmax,
                    "{act:?} seed {seed}: gradient coordinate {i}: {a} vs {b}"
                );
            }
        }
    }
}
