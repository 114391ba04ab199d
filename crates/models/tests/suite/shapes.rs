//! Shapes of every layer and model, parameter names and counts, seeded
//! initialisation statistics, and the panics for misuse.

use models::{
    init_params, Activation, Conv4, Conv4Variant, Init, Linear, Mlp, Model, ParamSpec, Params,
};
use tape::{Tape, Tensor};

fn run<M: Model>(m: &M, input: &[usize]) -> Vec<usize> {
    let p: Params<f64> = m.init(0);
    let t = Tape::<f64>::new();
    let v = p.vars(&t);
    let x = t.constant(&Tensor::full(input, 0.5));
    m.forward(&t, &v, x).shape().dims().to_vec()
}

#[test]
fn mlp_shapes_names_and_count() {
    let m = Mlp::new(&[3, 7, 5, 2], Activation::Relu);
    assert_eq!(run(&m, &[4, 3]), [4, 2]);
    let specs = m.param_specs();
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "layers.0.weight",
            "layers.0.bias",
            "layers.1.weight",
            "layers.1.bias",
            "layers.2.weight",
            "layers.2.bias"
        ]
    );
    assert_eq!(specs[2].shape, [5, 7]); // [out, in], PyTorch layout
                                        // Σ (d_in + 1)·d_out
    assert_eq!(m.num_params(), (3 + 1) * 7 + (7 + 1) * 5 + (5 + 1) * 2);
    assert_eq!(m.init::<f32>(0).num_scalars(), m.num_params());
}

#[test]
fn linear_shapes() {
    let m = Linear::new(6, 3);
    assert_eq!(run(&m, &[10, 6]), [10, 3]);
    assert_eq!(m.num_params(), 6 * 3 + 3);
}

/// Spatial size after each Conv4 block, from the layer formulas:
/// conv(k=3, stride s, pad 1): ⌊(h + 2 − 3)/s⌋ + 1; 2×2 max-pool: ⌊h/2⌋.
fn expected_sizes(v: Conv4Variant, mut h: usize) -> Vec<usize> {
    (0..4)
        .map(|_| {
            h = match v {
                Conv4Variant::Omniglot => (h - 1) / 2 + 1,
                _ => h / 2,
            };
            h
        })
        .collect()
}

#[test]
fn conv4_block_sizes_follow_the_layer_formulas() {
    for (m, h) in [
        (Conv4::omniglot(5), 28),
        (Conv4::mini_imagenet(5), 84),
        (Conv4::benchmark(5), 28),
    ] {
        let got: Vec<usize> = m.block_sizes().iter().map(|s| s[0]).collect();
        assert_eq!(got, expected_sizes(m.variant, h));
        assert_eq!(m.feature_dim(), m.filters * got[3] * got[3]);
    }
    assert_eq!(Conv4::omniglot(5).block_sizes()[3], [2, 2]);
    assert_eq!(Conv4::mini_imagenet(5).block_sizes()[3], [5, 5]);
}

#[test]
fn conv4_forward_shapes_small() {
    // Full-size forwards are slow without optimisation; small filter counts keep the geometry.
    let om = Conv4::omniglot(7).with_filters(4);
    assert_eq!(run(&om, &[2, 1, 28, 28]), [2, 7]);
    let mi = Conv4::mini_imagenet(5).with_filters(2);
    assert_eq!(run(&mi, &[2, 3, 84, 84]), [2, 5]);
    let be = Conv4::benchmark(3).with_filters(4);
    assert_eq!(run(&be, &[2, 1, 28, 28]), [2, 3]);
    let rect = Conv4::benchmark(2).with_filters(2).with_input(3, 32, 48);
    assert_eq!(rect.block_sizes()[3], [2, 3]);
    assert_eq!(run(&rect, &[1, 3, 32, 48]), [1, 2]);
}

#[test]
fn conv4_parameter_names_and_count() {
    let m = Conv4::omniglot(5);
    let names: Vec<String> = m.param_specs().into_iter().map(|s| s.name).collect();
    assert_eq!(
        names[..4],
        [
            "layers.0.conv.weight",
            "layers.0.conv.bias",
            "layers.0.bn.weight",
            "layers.0.bn.bias"
        ]
    );
    assert_eq!(names[names.len() - 2..], ["head.weight", "head.bias"]);
    // 4 blocks of conv (c·9·f + f) and bn (2f), then the head (feat + 1)·n.
    let f = 64;
    let conv = (9 + 1) * f + (64 * 9 + 1) * f * 3;
    assert_eq!(m.num_params(), conv + 2 * f * 4 + (f * 4 + 1) * 5);
    // The benchmark variant has no batch-norm parameters.
    let b = Conv4::benchmark(5);
    assert_eq!(b.param_specs().len(), 4 * 2 + 2);
    assert_eq!(b.num_params(), conv + (f + 1) * 5);
}

#[test]
fn seeded_init_is_deterministic_and_follows_the_scheme() {
    let m = Mlp::new(&[200, 100, 1], Activation::Relu);
    let a: Params<f64> = m.init(3);
    assert_eq!(a, m.init(3));
    assert_ne!(a, m.init(4));
    // f32 init is the f64 init rounded.
    let b: Params<f32> = m.init(3);
    assert!(a
        .flatten()
        .iter()
        .zip(b.flatten())
        .all(|(x, y)| *x as f32 == y));
    // PyTorch default: U(−1/√fan_in, 1/√fan_in), so every |w| ≤ 1/√200 and the
    // variance is bound²/3.
    let w = a.get("layers.0.weight").unwrap().data();
    let bound = 1.0 / 200f64.sqrt();
    assert!(w.iter().all(|x| x.abs() <= bound));
    let var = w.iter().map(|x| x * x).sum::<f64>() / w.len() as f64;
    assert!(
        (var / (bound * bound / 3.0) - 1.0).abs() < 0.05,
        "variance {var}"
    );
}

#[test]
fn init_schemes_have_their_variances() {
    let (fi, fo, n) = (50, 30, 20000);
    let cases = [
        (Init::KaimingNormal, 2.0 / fi as f64),
        (Init::KaimingUniform, 2.0 / fi as f64), // (√(6/fi))²/3
        (Init::XavierNormal, 2.0 / (fi + fo) as f64),
        (Init::XavierUniform, 2.0 / (fi + fo) as f64),
        (Init::TorchDefault, 1.0 / (3.0 * fi as f64)),
    ];
    for (init, want) in cases {
        let p: Params<f64> = init_params(&[ParamSpec::new("w", &[n], fi, fo, init)], 1);
        let d = p.tensors()[0].data();
        let mean = d.iter().sum::<f64>() / n as f64;
        let var = d.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
        // Sample variance of 20000 draws is within ~2% (5 s.e.) of the truth.
        assert!(
            (var / want - 1.0).abs() < 0.05,
            "{init:?}: variance {var}, expected {want}"
        );
        assert!(
            mean.abs() < 5.0 * (want / n as f64).sqrt(),
            "{init:?}: mean {mean}"
        );
    }
}

#[test]
fn params_flatten_roundtrip() {
    let p: Params<f64> = Mlp::new(&[2, 3, 1], Activation::Tanh).init(1);
    assert_eq!(p.with_flat(&p.flatten()), p);
}

#[test]
#[should_panic(expected = "Mlp: input [4, 2], expected [n, 3]")]
fn mlp_wrong_input_panics_with_shapes() {
    run(&Mlp::new(&[3, 2], Activation::Tanh), &[4, 2]);
}

#[test]
#[should_panic(expected = "parameter `layers.0.weight` has shape [3, 2], expected [2, 3]")]
fn wrong_parameter_shape_panics_with_name() {
    let m = Mlp::new(&[3, 2], Activation::Tanh);
    let t = Tape::<f64>::new();
    let w = t.var(&Tensor::zeros([3, 2]));
    let b = t.var(&Tensor::zeros([2]));
    m.forward(&t, &[w, b], t.constant(&Tensor::zeros([1, 3])));
}

#[test]
#[should_panic(expected = "Conv4: input [1, 1, 27, 28], expected [n, 1, 28, 28]")]
fn conv4_wrong_input_panics() {
    run(&Conv4::benchmark(2).with_filters(1), &[1, 1, 27, 28]);
}

#[test]
#[should_panic(expected = "too small")]
fn conv4_too_small_input_panics() {
    Conv4::benchmark(2).with_input(1, 8, 8).feature_dim();
}

fn logits(m: &Conv4, p: &Params<f64>, x: &Tensor<f64>) -> Vec<f64> {
    let t = Tape::<f64>::new();
    let v = p.vars(&t);
    m.forward(&t, &v, t.constant(x)).value().into_data()
}

#[test]
fn batch_norm_uses_batch_statistics() {
    // With zero conv biases, conv is linear, so batch-norm with batch statistics
    // makes the network invariant to scaling the input batch (up to ε):
    // BN(a·y) = BN(y). The benchmark variant (no batch-norm) is not. And with
    // batch statistics, one sample's output depends on the other samples.
    for (variant, side, has_bn) in [
        (Conv4Variant::Omniglot, 8, true),
        (Conv4Variant::MiniImagenet, 16, true),
        (Conv4Variant::Benchmark, 16, false),
    ] {
        let x = Tensor::from_fn([4, 1, side, side], |i| ((i * 37 % 101) as f64 / 50.0) - 1.0);
        let x5 = x.map(|v| 5.0 * v);
        let mut x_other = x.clone();
        x_other.data_mut()[side * side..]
            .iter_mut()
            .for_each(|v| *v = -*v * 0.3 + 0.2);
        let m = Conv4::new(variant, 1, side, side, 3, 2);
        let mut p: Params<f64> = m.init(0);
        for (name, t) in p.names().to_vec().iter().zip(p.tensors_mut()) {
            if name.ends_with("conv.bias") {
                t.data_mut().iter_mut().for_each(|v| *v = 0.0);
            }
        }
        let (a, b) = (logits(&m, &p, &x), logits(&m, &p, &x5));
        let diff = a
            .iter()
            .zip(&b)
            .map(|(u, v)| (u - v).abs())
            .fold(0.0, f64::max);
        // Changing samples 1..3 only moves sample 0's logits iff batch-norm is used.
        let c = logits(&m, &p, &x_other);
        let d0 = (a[0] - c[0]).abs() + (a[1] - c[1]).abs();
        if has_bn {
            assert!(
                diff < 1e-4,
                "{variant:?}: scaling the input changed the logits by {diff}"
            );
            assert!(
                d0 > 1e-6,
                "{variant:?}: sample 0 ignores the rest of the batch"
            );
        } else {
            assert!(
                diff > 1e-3,
                "{variant:?}: expected scale dependence, diff {diff}"
            );
            assert_eq!(
                d0, 0.0,
                "{variant:?}: samples must be independent without batch-norm"
            );
        }
    }
}
