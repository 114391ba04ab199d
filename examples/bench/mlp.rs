//! The MLP configs: `mlp_grad` and `mlp_hvp` on the MLP 784-256-256-10 with
//! ReLU, mean softmax cross-entropy on 64 samples (x ~ N(0, 1), labels
//! uniform in 0..10), f32; weights and biases start from
//! U(−1/√fan_in, 1/√fan_in). The same work on the networks users train
//! ([`Net`]): `_tanh`, `_sigmoid` and `_softplus` hidden layers of the same
//! widths, `_deep`, 784-512-512-512-512-10 with tanh on 100 samples (a
//! batch that no register tile divides), and `_bn`, the base network with a
//! batch-norm (training mode, ε = 1e-5, γ = 1, β = 0 at the start) between
//! each hidden layer's affine map and its ReLU.

use hvp::{Objective, Workspace};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal, Uniform};
use serde_json::{json, Map, Value};
use tape::ops::dense::Activation;
use tape::{Constant, Float, Real, Tape, Tensor, Var};

use crate::{median, Bench};

/// The hidden layers' activation of an MLP config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hidden {
    Relu,
    Tanh,
    Sigmoid,
    /// `ln(1 + eˣ)`: no [`Activation`] of its own, so `mlp_grad_softplus`
    /// records the three ops per layer (what a user of this activation writes).
    Softplus,
}

impl Hidden {
    /// `h = act(z)` by the tape's elementwise op.
    fn apply<'t, T: Real>(self, z: Var<'t, T>) -> Var<'t, T> {
        match self {
            Hidden::Relu => z.relu(),
            Hidden::Tanh => z.tanh(),
            Hidden::Sigmoid => z.sigmoid(),
            Hidden::Softplus => z.softplus(),
        }
    }

    /// The [`Var::dense`] activation, if the node has this one.
    fn dense(self) -> Option<Activation> {
        match self {
            Hidden::Relu => Some(Activation::Relu),
            Hidden::Tanh => Some(Activation::Tanh),
            Hidden::Sigmoid => Some(Activation::Sigmoid),
            Hidden::Softplus => None,
        }
    }
}

/// The network and batch of an MLP config: layer widths (input first), the
/// samples per call, the hidden activation (the last layer is linear) and
/// whether a batch-norm sits between each hidden affine map and its
/// activation (parameters `[w, b, γ, β]` per hidden layer, `[w, b]` last).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Net {
    widths: &'static [usize],
    batch: usize,
    hidden: Hidden,
    norm: bool,
}

/// The batch-norm's ε in `_bn` (PyTorch's and Flax's default).
const BN_EPS: f64 = 1e-5;

/// The benchmark's network (`mlp_grad`, `mlp_hvp`).
const BASE: [usize; 4] = [784, 256, 256, 10];
/// `_deep`: deeper and wider layers.
const DEEP: [usize; 6] = [784, 512, 512, 512, 512, 10];
/// The most parameter tensors of a [`Net`] (`_deep`'s weights and biases,
/// or `_bn`'s with its γ and β).
const MAX_PARAMS: usize = {
    let deep = 2 * (DEEP.len() - 1);
    let bn = 4 * (BASE.len() - 2) + 2;
    if deep > bn {
        deep
    } else {
        bn
    }
};

impl Net {
    /// The network of a config's model suffix (`""`, `"_tanh"`,
    /// `"_sigmoid"`, `"_softplus"`, `"_deep"`, `"_bn"`), if it is one.
    fn of(suffix: &str) -> Option<Net> {
        let net = |hidden| Net {
            widths: &BASE,
            batch: 64,
            hidden,
            norm: false,
        };
        Some(match suffix {
            "" => net(Hidden::Relu),
            "_tanh" => net(Hidden::Tanh),
            "_sigmoid" => net(Hidden::Sigmoid),
            "_softplus" => net(Hidden::Softplus),
            "_deep" => Net {
                widths: &DEEP,
                batch: 100,
                hidden: Hidden::Tanh,
                norm: false,
            },
            "_bn" => Net {
                norm: true,
                ..net(Hidden::Relu)
            },
            _ => return None,
        })
    }

    /// The model suffixes of [`Net::of`], for `bench --list`.
    pub(crate) const SUFFIXES: [&'static str; 6] =
        ["", "_tanh", "_sigmoid", "_softplus", "_deep", "_bn"];

    fn layers(&self) -> usize {
        self.widths.len() - 1
    }

    /// Parameter tensors per hidden layer: w, b, and γ, β with a batch-norm.
    fn per_hidden(&self) -> usize {
        if self.norm {
            4
        } else {
            2
        }
    }

    /// The number of parameter tensors.
    fn params(&self) -> usize {
        self.per_hidden() * (self.layers() - 1) + 2
    }

    fn json(&self, mode: &str) -> Value {
        let norm = if self.norm {
            json!({"batch_norm": "training mode", "eps": BN_EPS})
        } else {
            Value::Null
        };
        json!({"sizes": self.widths, "batch": self.batch, "hidden": format!("{:?}", self.hidden),
            "norm": norm, "mode": mode, "dtype": "f32"})
    }
}

/// The loss as an [`Objective`]: inputs are `[w1, b1, w2, b2, …]`, the data
/// are constants, shared with the tape (read in place, as JAX reads its
/// argument; [`Tape::constant_shared`]).
pub(crate) struct MlpLoss<F: Float = f32> {
    x: Constant<F>,
    labels: Vec<usize>,
    net: Net,
}

impl<F: Float> Objective<F> for MlpLoss<F> {
    fn eval<'t, T: Real<Base = F>>(&self, tape: &'t Tape<T>, p: &[Var<'t, T>]) -> Var<'t, T> {
        self.on(tape.constant_shared(&self.x), p)
    }
}

impl<F: Float> MlpLoss<F> {
    /// The loss with the data already on the tape as `x`: per layer
    /// `matmul`, `+`, the batch-norm if the net has one, and the hidden
    /// activation (neither on the last layer).
    fn on<'t, T: Real<Base = F>>(&self, x: Var<'t, T>, p: &[Var<'t, T>]) -> Var<'t, T> {
        let mut h = x;
        let (layers, per) = (self.net.layers(), self.net.per_hidden());
        for l in 0..layers {
            let q = &p[per * l..];
            let z = h.matmul(q[0]) + q[1];
            h = if l + 1 == layers {
                z
            } else if self.net.norm {
                self.net.hidden.apply(z.batch_norm(q[2], q[3], BN_EPS))
            } else {
                self.net.hidden.apply(z)
            };
        }
        h.softmax_cross_entropy(&self.labels)
    }
}

impl MlpLoss {
    /// The loss as `mlp_grad` records it: each layer one [`Var::dense`]
    /// node (the same values and gradients as [`MlpLoss::on`]'s three ops
    /// per layer); `fused: false`, or an activation that has no [`Var::dense`]
    /// form, writes the three ops (`matmul`, `+`, the activation) instead.
    /// With batch-norms, a hidden layer is `dense` without activation, the
    /// batch-norm, then the activation's op.
    fn on_dense<'t>(&self, x: Var<'t, f32>, p: &[Var<'t, f32>], fused: bool) -> Var<'t, f32> {
        let act = self.net.hidden.dense().filter(|_| fused);
        let Some(act) = act else {
            return self.on(x, p);
        };
        let mut h = x;
        let (layers, per) = (self.net.layers(), self.net.per_hidden());
        for l in 0..layers {
            let q = &p[per * l..];
            h = if l + 1 == layers {
                h.dense(q[0], q[1], Activation::Identity)
            } else if self.net.norm {
                let z = h.dense(q[0], q[1], Activation::Identity);
                self.net.hidden.apply(z.batch_norm(q[2], q[3], BN_EPS))
            } else {
                h.dense(q[0], q[1], act)
            };
        }
        h.softmax_cross_entropy(&self.labels)
    }
}

/// Data, initial parameters and a random normal direction for `net`, from a
/// fixed seed (drawn in this order, so the base network's numbers are those
/// it has always had).
fn setup(net: Net) -> (MlpLoss, Vec<Tensor<f32>>, Vec<Tensor<f32>>) {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut params = Vec::new();
    for (l, w) in net.widths.windows(2).enumerate() {
        let (fan_in, fan_out) = (w[0], w[1]);
        let s = 1.0 / (fan_in as f32).sqrt();
        let u = Uniform::new(-s, s);
        params.push(Tensor::from_fn(&[fan_in, fan_out], |_| u.sample(&mut rng)));
        params.push(Tensor::from_fn(&[fan_out], |_| u.sample(&mut rng)));
        if net.norm && l + 1 < net.layers() {
            params.push(Tensor::from_fn(&[fan_out], |_| 1.0));
            params.push(Tensor::zeros([fan_out]));
        }
    }
    let (inputs, classes) = (net.widths[0], net.widths[net.layers()]);
    let x = Tensor::from_fn(&[net.batch, inputs], |_| StandardNormal.sample(&mut rng));
    let labels = (0..net.batch).map(|_| rng.gen_range(0..classes)).collect();
    let v = params
        .iter()
        .map(|p| Tensor::from_fn(p.shape(), |_| StandardNormal.sample(&mut rng)))
        .collect();
    let x = Constant::new(x);
    (MlpLoss { x, labels, net }, params, v)
}

/// `mlp_grad`: loss and gradient of every weight and bias, by one reverse sweep
/// on a reused tape; a steady-state call allocates nothing (the GEMMs'
/// packing buffers are thread-local and kept). Each layer is one
/// [`Var::dense`] node (product, bias and activation); `mlp_grad_unfused`
/// records the three ops per layer instead (same bits). `mlp_grad_tanh`,
/// `_sigmoid`, `_softplus`, `_deep` and `_bn` are the other networks of [`Net`]
/// (`_unfused` after the model suffix: `mlp_grad_tanh_unfused`).
///
/// The data x and the parameters (0.92 MB for the base network) are the
/// tape's first leaves, recorded once: every call rewinds the tape to them
/// ([`Tape::rewind`]) and records the loss on top, with no copy of the
/// parameters into the tape. This is the API a training loop on this tape
/// uses (it would take its step with [`Tape::rewind_updating`], writing
/// W ← W − α ∂L/∂W into the leaves); JAX's jitted `value_and_grad` likewise
/// reads its parameter and data arguments where they are.
pub(crate) struct MlpGrad {
    loss: MlpLoss,
    fused: bool,
    tape: Tape<f32>,
    norm_next: bool,
    grad_norm: f64,
}

impl MlpGrad {
    /// The network and whether each layer is one node, for config `name`
    /// (`mlp_grad` + a [`Net`] suffix + an optional `_unfused`), if it is one.
    pub(crate) fn layers(name: &str) -> Option<(Net, bool)> {
        let model = name.strip_prefix("mlp_grad")?;
        let (model, fused) = match model.strip_suffix("_unfused") {
            Some(m) => (m, false),
            None => (model, true),
        };
        Some((Net::of(model)?, fused))
    }

    /// The workload of config `name` ([`MlpGrad::layers`]).
    ///
    /// # Panics
    /// If `name` is not one of them.
    pub(crate) fn named(name: &str) -> Self {
        let (net, fused) = Self::layers(name).expect("an mlp_grad config");
        Self::new(net, fused)
    }

    fn new(net: Net, fused: bool) -> Self {
        let (loss, params, _) = setup(net);
        let tape = Tape::new();
        tape.constant_base(loss.x.value());
        for p in &params {
            tape.var(p);
        }
        MlpGrad {
            loss,
            fused,
            tape,
            norm_next: false,
            grad_norm: f64::NAN,
        }
    }
}

impl Bench for MlpGrad {
    fn params(&self) -> Value {
        let mut p = self.loss.net.json("value_and_grad");
        p["fused_layers"] = json!(self.fused && self.loss.net.hidden.dense().is_some());
        p
    }
    /// Forward `x·W` of every layer, the weight gradients `hᵀ·ḡ` of every
    /// layer, and the input gradients `ḡ·Wᵀ` of all layers but the first (the
    /// data are constants): Σ B·in·out over those 8 products.
    fn gemm_macs(&self) -> Option<usize> {
        let net = self.loss.net;
        let layer = |w: &[usize]| net.batch * w[0] * w[1];
        let all: usize = net.widths.windows(2).map(layer).sum();
        let first = layer(&net.widths[..2]);
        Some(3 * all - first)
    }
    fn call(&mut self) -> f64 {
        let n = self.loss.net.params();
        self.tape.rewind(1 + n);
        let t = &self.tape;
        let mut vars = [t.var_at(0); MAX_PARAMS];
        let vars = &mut vars[..n];
        for (i, v) in vars.iter_mut().enumerate() {
            *v = t.var_at(1 + i);
        }
        let out = self.loss.on_dense(t.var_at(0), vars, self.fused);
        t.backward(out);
        // The gradients stay in the tape's adjoint arena and are read in place
        // (`grad_ref`, no copy), as the last GEMM of JAX's program writes its
        // output buffer. Their squared norm is taken once, after the timed calls.
        if self.norm_next {
            let mut g2 = 0.0f64;
            for v in vars.iter() {
                let g = t.grad_ref(*v).expect("every parameter gets an adjoint");
                g2 += g.iter().map(|&x| (x as f64).powi(2)).sum::<f64>();
            }
            self.grad_norm = g2.sqrt();
        }
        out.item() as f64
    }
    fn extra(&mut self) -> Map<String, Value> {
        self.norm_next = true;
        self.call();
        // Later calls (`bench --pack-b`) are timed like the timed ones.
        self.norm_next = false;
        let mut m = Map::new();
        m.insert("tape_nodes".into(), json!(self.tape.len()));
        m.insert("tape_bytes".into(), json!(self.tape.bytes_in_use()));
        m.insert(
            "tape_bytes_reserved".into(),
            json!(self.tape.bytes_reserved()),
        );
        m.insert("grad_norm".into(), json!(self.grad_norm));
        m
    }
}

/// `mlp_hvp`: H·v for all parameters along a random normal direction, by one
/// forward-over-reverse pass that computes H·v alone, as JAX's
/// `jvp(grad(loss))[1]` does (`hvp::Workspace::hvp_only_into`: the primal
/// weight-gradient products are skipped). `mlp_hvp_full`: the same pass
/// returning the value, the gradient and H·v (`Workspace::hvp_into`). Tapes
/// and outputs are reused, so a steady-state call allocates nothing.
/// `mlp_hvp_tanh`, `_sigmoid`, `_softplus`, `_deep` and `_bn`: H·v alone on the
/// other networks of [`Net`].
pub(crate) struct MlpHvp {
    loss: MlpLoss,
    params: Vec<Tensor<f32>>,
    v: Vec<Tensor<f32>>,
    ws: Workspace<f32>,
    grad: Vec<Tensor<f32>>,
    hv: Vec<Tensor<f32>>,
    /// Value, gradient and H·v (`mlp_hvp_full`) instead of H·v alone.
    full: bool,
}

impl MlpHvp {
    /// The workload of config `name` (`mlp_hvp` + a [`Net`] suffix, or
    /// `mlp_hvp_full`), if it is one.
    pub(crate) fn named(name: &str) -> Option<Self> {
        if name == "mlp_hvp_full" {
            return Some(Self::new(Net::of("")?, true));
        }
        Some(Self::new(Net::of(name.strip_prefix("mlp_hvp")?)?, false))
    }

    fn new(net: Net, full: bool) -> Self {
        let (loss, params, v) = setup(net);
        let mut ws = Workspace::new();
        let out = ws.hvp(&loss, &params, &v);
        MlpHvp {
            loss,
            params,
            v,
            ws,
            grad: out.grad,
            hv: out.hv,
            full,
        }
    }
}

impl Bench for MlpHvp {
    fn params(&self) -> Value {
        self.loss.net.json(if self.full {
            "forward-over-reverse (dual reverse sweep): value, gradient and H·v"
        } else {
            "forward-over-reverse (dual reverse sweep): H·v only"
        })
    }
    fn call(&mut self) -> f64 {
        let (x, v) = (&self.params, &self.v);
        let value = if self.full {
            self.ws
                .hvp_into(&self.loss, x, v, &mut self.grad, &mut self.hv)
        } else {
            self.ws.hvp_only_into(&self.loss, x, v, &mut self.hv)
        };
        value as f64
    }
    fn extra(&mut self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("tape_nodes".into(), json!(self.ws.dual.len()));
        m.insert("tape_bytes".into(), json!(self.ws.dual.bytes_in_use()));
        m.insert(
            "tape_bytes_reserved".into(),
            json!(self.ws.dual.bytes_reserved()),
        );
        let hv_norm = self.hv.iter().map(|t| t.norm().powi(2)).sum::<f64>().sqrt();
        let grad_norm = self
            .grad
            .iter()
            .map(|t| t.norm().powi(2))
            .sum::<f64>()
            .sqrt();
        m.insert("hv_norm".into(), json!(hv_norm));
        m.insert("grad_norm".into(), json!(grad_norm));
        if !self.full {
            m.insert("hvp_over_grad".into(), self.over_grad(PAIRS));
        }
        m
    }
}

/// Calls of each kind in [`MlpHvp::over_grad`]: about 1 s on 2 AVX2 cores.
const PAIRS: usize = 500;

impl MlpHvp {
    /// The HVP's time over the gradient's (`mlp_grad` with this config's
    /// network, the same data), from `pairs` calls of each made alternately in this process
    /// after 3 warm-up calls of each: `ratio_of_medians` = median(HVP) /
    /// median(gradient), and `median_ratio` = the median over the pairs of
    /// HVP / the gradient call just before it. A pair's two calls are
    /// milliseconds apart, so a slow window of a shared machine slows both
    /// (across two processes minutes apart, as `compare.py`'s rounds are, the
    /// ratio moved from 1.6 to 3.1 on one VM: `docs/benchmarks.md`). Each call
    /// runs with the other workload's data in the caches, so both times are
    /// those of a cache shared with other work.
    fn over_grad(&mut self, pairs: usize) -> Value {
        let mut grad = MlpGrad::new(self.loss.net, true);
        let timed = |f: &mut dyn FnMut() -> f64| {
            let t0 = std::time::Instant::now();
            let loss = f();
            assert!(loss.is_finite(), "hvp_over_grad: non-finite loss {loss}");
            t0.elapsed().as_secs_f64() * 1e3
        };
        for _ in 0..3 {
            grad.call();
            self.call();
        }
        let (mut g, mut h) = (Vec::with_capacity(pairs), Vec::with_capacity(pairs));
        for _ in 0..pairs {
            g.push(timed(&mut || grad.call()));
            h.push(timed(&mut || self.call()));
        }
        let mut ratios: Vec<f64> = h.iter().zip(&g).map(|(h, g)| h / g).collect();
        let (gm, hm, rm) = (median(&mut g), median(&mut h), median(&mut ratios));
        json!({
            "pairs": pairs,
            "grad_median_ms": gm,
            "hvp_median_ms": hm,
            "ratio_of_medians": hm / gm,
            "median_ratio": rm,
        })
    }
}

/// `bench mlp_hvp --check` (or any `mlp_hvp*` config but `_full`): the f32
/// H·v of the benchmark against the central difference of f64 gradients;
/// prints the relative error to stderr. Not part of a timed run (the f64
/// tapes would inflate the peak RSS).
///
/// # Panics
/// If `name` is not an `mlp_hvp` config of [`MlpHvp::named`].
pub(crate) fn check_hvp(name: &str) -> f64 {
    let net = name
        .strip_prefix("mlp_hvp")
        .and_then(Net::of)
        .unwrap_or_else(|| panic!("--check: {name:?} is not an mlp_hvp config"));
    let (loss, params, v) = setup(net);
    // A check that the runner measures the right thing: the f32 H·v against the
    // central difference of f64 gradients (g(x + εv) − g(x − εv))/2ε. ε is tiny
    // so that (almost) no ReLU changes side between the two points.
    let loss64 = MlpLoss {
        x: Constant::new(loss.x.value().cast::<f64>()),
        labels: loss.labels.clone(),
        net,
    };
    let eps = 1e-7;
    let shifted = |s: f64| -> Vec<Tensor<f64>> {
        params
            .iter()
            .zip(&v)
            .map(|(p, d)| {
                let data = p.data().iter().zip(d.data());
                let data = data.map(|(&a, &b)| a as f64 + s * b as f64);
                Tensor::new(p.shape(), data.collect())
            })
            .collect()
    };
    let mut ws64 = Workspace::<f64>::new();
    let (_, gp) = ws64.value_and_grad(&loss64, &shifted(eps));
    let (_, gm) = ws64.value_and_grad(&loss64, &shifted(-eps));
    // The HVP-only pass that `mlp_hvp` times.
    let hv = Workspace::new().hvp_only(&loss, &params, &v);
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for ((a, b), h) in gp.iter().zip(&gm).zip(&hv) {
        for ((&a, &b), &h) in a.data().iter().zip(b.data()).zip(h.data()) {
            let fd = (a - b) / (2.0 * eps);
            num += (fd - h as f64).powi(2);
            den += (h as f64).powi(2);
        }
    }
    let rel = (num / den).sqrt();
    eprintln!(
        "{name}: |Hv - FD|/|Hv| = {:.2e} (f32 dual sweep vs central difference of f64 \
             gradients, eps = {eps:e})",
        rel
    );
    rel
}
