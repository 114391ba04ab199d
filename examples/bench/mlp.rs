//! `mlp_grad` and `mlp_hvp`: MLP 784-256-256-10, ReLU, mean softmax
//! cross-entropy on 64 samples (x ~ N(0, 1), labels uniform in 0..10), f32.
//! Weights and biases start from U(−1/√fan_in, 1/√fan_in).

use hvp::{Objective, Workspace};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal, Uniform};
use serde_json::{json, Map, Value};
use tape::ops::dense::Activation;
use tape::{Constant, Float, Real, Tape, Tensor, Var};

use crate::{median, Bench};

const SIZES: [usize; 4] = [784, 256, 256, 10];
const BATCH: usize = 64;

/// The loss as an [`Objective`]: inputs are `[w1, b1, w2, b2, w3, b3]`, the data
/// are constants, shared with the tape (read in place, as JAX reads its
/// argument; [`Tape::constant_shared`]).
pub(crate) struct MlpLoss<F: Float = f32> {
    x: Constant<F>,
    labels: Vec<usize>,
}

impl<F: Float> Objective<F> for MlpLoss<F> {
    fn eval<'t, T: Real<Base = F>>(&self, tape: &'t Tape<T>, p: &[Var<'t, T>]) -> Var<'t, T> {
        self.on(tape.constant_shared(&self.x), p)
    }
}

impl<F: Float> MlpLoss<F> {
    /// The loss with the data already on the tape as `x`.
    fn on<'t, T: Real<Base = F>>(&self, x: Var<'t, T>, p: &[Var<'t, T>]) -> Var<'t, T> {
        let mut h = x;
        for l in 0..3 {
            let z = h.matmul(p[2 * l]) + p[2 * l + 1];
            h = if l < 2 { z.relu() } else { z };
        }
        h.softmax_cross_entropy(&self.labels)
    }

    /// The loss as `mlp_grad` records it: each layer one
    /// [`Var::dense`] node, `act` on the hidden layers (the same values and
    /// gradients as [`MlpLoss::on`]'s three ops per layer when `act` is
    /// ReLU); `fused: false` writes the three ops (`matmul`, `+`, the
    /// activation) instead, for comparison.
    fn on_dense<'t>(
        &self,
        x: Var<'t, f32>,
        p: &[Var<'t, f32>],
        act: Activation,
        fused: bool,
    ) -> Var<'t, f32> {
        let mut h = x;
        for l in 0..3 {
            let a = if l < 2 { act } else { Activation::Identity };
            h = if fused {
                h.dense(p[2 * l], p[2 * l + 1], a)
            } else {
                let z = h.matmul(p[2 * l]) + p[2 * l + 1];
                match a {
                    Activation::Identity => z,
                    Activation::Relu => z.relu(),
                    Activation::Tanh => z.tanh(),
                    Activation::Sigmoid => z.sigmoid(),
                }
            };
        }
        h.softmax_cross_entropy(&self.labels)
    }
}

fn params_json(mode: &str) -> Value {
    json!({"sizes": SIZES, "batch": BATCH, "mode": mode, "dtype": "f32"})
}

/// Data, initial parameters and a random normal direction, from a fixed seed.
fn setup() -> (MlpLoss, Vec<Tensor<f32>>, Vec<Tensor<f32>>) {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut params = Vec::new();
    for w in SIZES.windows(2) {
        let (fan_in, fan_out) = (w[0], w[1]);
        let s = 1.0 / (fan_in as f32).sqrt();
        let u = Uniform::new(-s, s);
        params.push(Tensor::from_fn(&[fan_in, fan_out], |_| u.sample(&mut rng)));
        params.push(Tensor::from_fn(&[fan_out], |_| u.sample(&mut rng)));
    }
    let x = Tensor::from_fn(&[BATCH, SIZES[0]], |_| StandardNormal.sample(&mut rng));
    let labels = (0..BATCH).map(|_| rng.gen_range(0..SIZES[3])).collect();
    let v = params
        .iter()
        .map(|p| Tensor::from_fn(p.shape(), |_| StandardNormal.sample(&mut rng)))
        .collect();
    let x = Constant::new(x);
    (MlpLoss { x, labels }, params, v)
}

/// `mlp_grad`: loss and gradient of every weight and bias, by one reverse sweep
/// on a reused tape; a steady-state call allocates nothing (the GEMMs'
/// packing buffers are thread-local and kept). Each layer is one
/// [`Var::dense`] node (product, bias and ReLU); `mlp_grad_unfused` records
/// the three ops per layer instead (same bits), and `mlp_grad_tanh` /
/// `mlp_grad_tanh_unfused` the same network with tanh hidden layers (not a
/// JAX config: for our own before/after).
///
/// The data x and the six parameters (0.92 MB) are the tape's first leaves,
/// recorded once: every call rewinds the tape to them
/// ([`Tape::rewind`]) and records the loss on top, with no copy of the
/// parameters into the tape. This is the API a training loop on this tape
/// uses (it would take its step with [`Tape::rewind_updating`], writing
/// W ← W − α ∂L/∂W into the leaves); JAX's jitted `value_and_grad` likewise
/// reads its parameter and data arguments where they are.
pub(crate) struct MlpGrad {
    loss: MlpLoss,
    act: Activation,
    fused: bool,
    tape: Tape<f32>,
    norm_next: bool,
    grad_norm: f64,
}

impl MlpGrad {
    /// The hidden layers' activation and whether each layer is one node,
    /// for config `name` (`mlp_grad[_tanh][_unfused]`), if it is one.
    pub(crate) fn layers(name: &str) -> Option<(Activation, bool)> {
        Some(match name {
            "mlp_grad" => (Activation::Relu, true),
            "mlp_grad_unfused" => (Activation::Relu, false),
            "mlp_grad_tanh" => (Activation::Tanh, true),
            "mlp_grad_tanh_unfused" => (Activation::Tanh, false),
            _ => return None,
        })
    }

    /// The workload of config `name` ([`MlpGrad::layers`]).
    ///
    /// # Panics
    /// If `name` is not one of them.
    pub(crate) fn named(name: &str) -> Self {
        let (act, fused) = Self::layers(name).expect("an mlp_grad config");
        Self::new(act, fused)
    }

    fn new(act: Activation, fused: bool) -> Self {
        let (loss, params, _) = setup();
        let tape = Tape::new();
        tape.constant_base(loss.x.value());
        for p in &params {
            tape.var(p);
        }
        MlpGrad {
            loss,
            act,
            fused,
            tape,
            norm_next: false,
            grad_norm: f64::NAN,
        }
    }
}

impl Bench for MlpGrad {
    fn params(&self) -> Value {
        let mut p = params_json("value_and_grad");
        p["activation"] = json!(format!("{:?}", self.act));
        p["fused_layers"] = json!(self.fused);
        p
    }
    /// Forward `x·W` of every layer, the weight gradients `hᵀ·ḡ` of every
    /// layer, and the input gradients `ḡ·Wᵀ` of all layers but the first (the
    /// data are constants): Σ B·in·out over those 8 products.
    fn gemm_macs(&self) -> Option<usize> {
        let layer = |w: &[usize]| BATCH * w[0] * w[1];
        let all: usize = SIZES.windows(2).map(layer).sum();
        let first = layer(&SIZES[..2]);
        Some(3 * all - first)
    }
    fn call(&mut self) -> f64 {
        self.tape.rewind(1 + 6);
        let t = &self.tape;
        let vars: [Var<'_, f32>; 6] = std::array::from_fn(|i| t.var_at(1 + i));
        let out = self.loss.on_dense(t.var_at(0), &vars, self.act, self.fused);
        t.backward(out);
        // The gradients stay in the tape's adjoint arena and are read in place
        // (`grad_ref`, no copy), as the last GEMM of JAX's program writes its
        // output buffer. Their squared norm is taken once, after the timed calls.
        if self.norm_next {
            let mut g2 = 0.0f64;
            for v in &vars {
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
    pub(crate) fn new(full: bool) -> Self {
        let (loss, params, v) = setup();
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
        params_json(if self.full {
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
    /// The HVP's time over the gradient's (`mlp_grad`, the same model and
    /// data), from `pairs` calls of each made alternately in this process
    /// after 3 warm-up calls of each: `ratio_of_medians` = median(HVP) /
    /// median(gradient), and `median_ratio` = the median over the pairs of
    /// HVP / the gradient call just before it. A pair's two calls are
    /// milliseconds apart, so a slow window of a shared machine slows both
    /// (across two processes minutes apart, as `compare.py`'s rounds are, the
    /// ratio moved from 1.6 to 3.1 on one VM: `docs/benchmarks.md`). Each call
    /// runs with the other workload's data in the caches, so both times are
    /// those of a cache shared with other work.
    fn over_grad(&mut self, pairs: usize) -> Value {
        let mut grad = MlpGrad::named("mlp_grad");
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

/// `bench mlp_hvp --check`: the f32 H·v of the benchmark against the central
/// difference of f64 gradients; prints the relative error to stderr. Not part of
/// a timed run (the f64 tapes would inflate the peak RSS).
pub(crate) fn check_hvp() -> f64 {
    let (loss, params, v) = setup();
    // A check that the runner measures the right thing: the f32 H·v against the
    // central difference of f64 gradients (g(x + εv) − g(x − εv))/2ε. ε is tiny
    // so that (almost) no ReLU changes side between the two points.
    let loss64 = MlpLoss {
        x: Constant::new(loss.x.value().cast::<f64>()),
        labels: loss.labels.clone(),
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
        "mlp_hvp: |Hv - FD|/|Hv| = {:.2e} (f32 dual sweep vs central difference of f64 \
             gradients, eps = {eps:e})",
        rel
    );
    rel
}
