//! The [`Model`] trait and the networks: [`Mlp`], [`Conv4`], [`Linear`].

use tape::{Float, Real, Tape, Var};

use crate::params::{init_params, Init, ParamSpec, Params};

/// A network as a pure function of explicit parameters.
///
/// There is no hidden state: `forward` reads only `params` (in the order of
/// [`Model::param_specs`]) and `x`. Adapted parameters of an inner loop are just
/// other variables passed in, so the outer gradient flows through them. The
/// same code runs on `f32`, `f64` and dual numbers (`T: Real`).
pub trait Model {
    /// Names, shapes and initialisers of the parameters, in `forward` order.
    fn param_specs(&self) -> Vec<ParamSpec>;

    /// Records the network on `tape` and returns its output.
    ///
    /// # Panics
    /// If `params` does not match [`Model::param_specs`] or `x` has the wrong shape
    /// (the message names the parameter or input and the shapes).
    fn forward<'t, T: Real>(
        &self,
        tape: &'t Tape<T>,
        params: &[Var<'t, T>],
        x: Var<'t, T>,
    ) -> Var<'t, T>;

    /// Seeded initialisation (one ChaCha8 stream, parameters in order).
    fn init<F: Float>(&self, seed: u64) -> Params<F> {
        init_params(&self.param_specs(), seed)
    }

    /// Number of scalar parameters.
    fn num_params(&self) -> usize {
        self.param_specs().iter().map(|s| s.numel()).sum()
    }
}

/// A pointwise nonlinearity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// max(x, 0).
    Relu,
    /// tanh x.
    Tanh,
    /// ln(1 + eˣ).
    Softplus,
    /// x (no nonlinearity).
    Identity,
}

impl Activation {
    /// Applies the nonlinearity.
    pub fn apply<'t, T: Real>(self, x: Var<'t, T>) -> Var<'t, T> {
        match self {
            Activation::Relu => x.relu(),
            Activation::Tanh => x.tanh(),
            Activation::Softplus => x.softplus(),
            Activation::Identity => x,
        }
    }
}

#[track_caller]
fn check_params<T: Real>(model: &str, specs: &[ParamSpec], params: &[Var<'_, T>]) {
    assert_eq!(
        params.len(),
        specs.len(),
        "{model}: {} parameter tensors given, the model has {}",
        params.len(),
        specs.len()
    );
    for (s, p) in specs.iter().zip(params) {
        let got = p.shape();
        assert!(
            got.dims() == s.shape.as_slice(),
            "{model}: parameter `{}` has shape {:?}, expected {:?}",
            s.name,
            got.dims(),
            s.shape
        );
    }
}

/// Affine layer on `[n, in]` with PyTorch layout: `x·Wᵀ + b`, `W [out, in]`, `b [out]`.
fn affine<'t, T: Real>(x: Var<'t, T>, w: Var<'t, T>, b: Var<'t, T>) -> Var<'t, T> {
    x.matmul_t(w) + b
}

/// A multilayer perceptron with any widths.
///
/// `widths = [d_0, d_1, …, d_L]`: layer `i` maps `[n, d_i] → [n, d_{i+1}]` by
/// `x·Wᵢᵀ + bᵢ`, with the activation after every layer but the last.
/// Parameters `layers.{i}.weight [d_{i+1}, d_i]`, `layers.{i}.bias [d_{i+1}]`,
/// initialised PyTorch-style by default.
///
/// ```
/// use models::{Activation, Mlp, Model};
/// use tape::{Tape, Tensor};
/// let net = Mlp::new(&[1, 40, 40, 1], Activation::Relu); // the MAML sinusoid net
/// let p = net.init::<f64>(0);
/// let t = Tape::<f64>::new();
/// let vars = p.vars(&t);
/// let x = t.constant_base(&Tensor::new(&[5, 1], vec![0.0, 1.0, 2.0, 3.0, 4.0]));
/// let y = net.forward(&t, &vars, x);
/// assert_eq!(y.shape().dims(), &[5, 1]);
/// assert_eq!(net.num_params(), 40 + 40 + 40 * 40 + 40 + 40 + 1);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Mlp {
    /// Layer widths, input first.
    pub widths: Vec<usize>,
    /// Hidden activation.
    pub activation: Activation,
    /// Weight initialiser.
    pub weight_init: Init,
    /// Bias initialiser.
    pub bias_init: Init,
}

impl Mlp {
    /// An MLP with the given widths (at least two) and hidden activation;
    /// PyTorch-default initialisation.
    ///
    /// # Panics
    /// If fewer than two widths are given or a width is zero.
    #[track_caller]
    pub fn new(widths: &[usize], activation: Activation) -> Self {
        assert!(
            widths.len() >= 2,
            "Mlp::new: need at least input and output widths, got {widths:?}"
        );
        assert!(
            widths.iter().all(|&w| w > 0),
            "Mlp::new: zero width in {widths:?}"
        );
        Mlp {
            widths: widths.to_vec(),
            activation,
            weight_init: Init::TorchDefault,
            bias_init: Init::TorchDefault,
        }
    }
    /// Replaces the initialisers.
    pub fn with_init(mut self, weight: Init, bias: Init) -> Self {
        self.weight_init = weight;
        self.bias_init = bias;
        self
    }
}

impl Model for Mlp {
    fn param_specs(&self) -> Vec<ParamSpec> {
        let mut v = Vec::new();
        for (i, w) in self.widths.windows(2).enumerate() {
            let (din, dout) = (w[0], w[1]);
            v.push(ParamSpec::new(
                format!("layers.{i}.weight"),
                &[dout, din],
                din,
                dout,
                self.weight_init,
            ));
            v.push(ParamSpec::new(
                format!("layers.{i}.bias"),
                &[dout],
                din,
                dout,
                self.bias_init,
            ));
        }
        v
    }

    #[track_caller]
    fn forward<'t, T: Real>(
        &self,
        _tape: &'t Tape<T>,
        params: &[Var<'t, T>],
        x: Var<'t, T>,
    ) -> Var<'t, T> {
        // The shapes checked in place: `param_specs` would format every name
        // on every call (this runs once per inner step).
        let layers = self.widths.len() - 1;
        if params.len() != 2 * layers
            || self.widths.windows(2).enumerate().any(|(i, w)| {
                params[2 * i].shape().dims() != [w[1], w[0]]
                    || params[2 * i + 1].shape().dims() != [w[1]]
            })
        {
            check_params("Mlp", &self.param_specs(), params);
        }
        let xs = x.shape();
        assert!(
            xs.rank() == 2 && xs.dim(1) == self.widths[0],
            "Mlp: input {:?}, expected [n, {}]",
            xs.dims(),
            self.widths[0]
        );
        let mut h = x;
        for i in 0..layers {
            h = affine(h, params[2 * i], params[2 * i + 1]);
            if i + 1 < layers {
                h = self.activation.apply(h);
            }
        }
        h
    }
}

impl Mlp {
    /// The network on a stack of B parameter sets, one per task, in one
    /// recording: `params` are [`Model::param_specs`]' tensors with a leading
    /// batch axis (`layers.{i}.weight [B, d_{i+1}, d_i]`,
    /// `layers.{i}.bias [B, d_{i+1}]`) and `x` is `[B, n, d_0]`; slice b of the
    /// `[B, n, d_L]` output is [`Model::forward`] of parameter set b on `x_b`
    /// (h ↦ h·W_bᵀ + b_b per layer, one `batched_affine` node: the bits of
    /// `batched_matmul_t` then `batched_bias_add`; with ReLU, the hidden
    /// layers are `batched_affine_relu` nodes: the bits of `batched_affine`
    /// then `relu`). With B = 1 the numbers are
    /// bit-identical to [`Model::forward`].
    ///
    /// # Panics
    /// If a parameter or `x` has the wrong shape (the message names it and
    /// both shapes).
    ///
    /// ```
    /// use models::{Activation, Mlp, Model};
    /// use tape::{Tape, Tensor};
    /// let net = Mlp::new(&[1, 8, 1], Activation::Tanh);
    /// let p = net.init::<f64>(0);
    /// let t = Tape::<f64>::new();
    /// // Two tasks sharing the initial parameters: stack them.
    /// let stacked: Vec<_> = p.vars(&t).into_iter().map(|v| v.tile_batch(2)).collect();
    /// let x = t.constant(&Tensor::new(&[2, 3, 1], vec![0.0, 1.0, 2.0, 0.0, 1.0, 2.0]));
    /// let y = net.forward_batched(&t, &stacked, x).value();
    /// assert_eq!(y.dims(), &[2, 3, 1]);
    /// assert_eq!(y.data()[..3], y.data()[3..]); // same parameters, same inputs
    /// ```
    #[track_caller]
    pub fn forward_batched<'t, T: Real>(
        &self,
        tape: &'t Tape<T>,
        params: &[Var<'t, T>],
        x: Var<'t, T>,
    ) -> Var<'t, T> {
        self.batched(tape, params, x, false)
    }

    /// [`Mlp::forward_batched`] for stacked parameters whose adjoints are
    /// read only through their block sums (tiled from one set, as MAML's
    /// φ_0 = (θ, …, θ)): every layer is `batched_affine_tiled`
    /// (`batched_affine_relu_tiled`), which writes its weight's and bias's
    /// adjoints as their block sums Σ_b ḡW_b, Σ_b ḡc_b into block 0 (the
    /// weight's as one product over the whole stack) and leaves the other
    /// blocks unspecified. The value and the input's adjoint are
    /// [`Mlp::forward_batched`]'s bits, the block sums its up to rounding.
    ///
    /// # Panics
    /// As [`Mlp::forward_batched`].
    ///
    /// ```
    /// use models::{Activation, Mlp, Model};
    /// use tape::{Tape, Tensor};
    /// let net = Mlp::new(&[1, 8, 1], Activation::Relu);
    /// let p = net.init::<f64>(0);
    /// let t = Tape::<f64>::new();
    /// let stacked: Vec<_> = p.vars(&t).into_iter().map(|v| v.tile_batch(2)).collect();
    /// let x = t.constant(&Tensor::new(&[2, 3, 1], vec![0.0, 1.0, 2.0, 0.5, 1.5, 2.5]));
    /// let y = net.forward_batched_tiled(&t, &stacked, x);
    /// assert_eq!(y.value(), net.forward_batched(&t, &stacked, x).value());
    /// ```
    #[track_caller]
    pub fn forward_batched_tiled<'t, T: Real>(
        &self,
        tape: &'t Tape<T>,
        params: &[Var<'t, T>],
        x: Var<'t, T>,
    ) -> Var<'t, T> {
        self.batched(tape, params, x, true)
    }

    /// The body of [`Mlp::forward_batched`] (`tiled`: of
    /// [`Mlp::forward_batched_tiled`]).
    #[track_caller]
    fn batched<'t, T: Real>(
        &self,
        _tape: &'t Tape<T>,
        params: &[Var<'t, T>],
        x: Var<'t, T>,
        tiled: bool,
    ) -> Var<'t, T> {
        let layers = self.widths.len() - 1;
        let xs = x.shape();
        assert!(
            xs.rank() == 3 && xs.dim(2) == self.widths[0],
            "Mlp::forward_batched: input {:?}, expected [B, n, {}]",
            xs.dims(),
            self.widths[0]
        );
        let b = xs.dim(0);
        assert_eq!(
            params.len(),
            2 * layers,
            "Mlp::forward_batched: {} parameter tensors given, the model has {}",
            params.len(),
            2 * layers
        );
        for (i, w) in self.widths.windows(2).enumerate() {
            let (pw, pb) = (params[2 * i].shape(), params[2 * i + 1].shape());
            assert!(
                pw.dims() == [b, w[1], w[0]] && pb.dims() == [b, w[1]],
                "Mlp::forward_batched: layer {i} has weight {:?} and bias {:?}, expected {:?} and {:?} (B = {b} from the input {:?})",
                pw.dims(),
                pb.dims(),
                [b, w[1], w[0]],
                [b, w[1]],
                xs.dims()
            );
        }
        let mut h = x;
        for i in 0..layers {
            let (w, c) = (params[2 * i], params[2 * i + 1]);
            let relu = self.activation == Activation::Relu && i + 1 < layers;
            h = match (tiled, relu) {
                // The layer and its relu in one node (the same bits).
                (false, true) => h.batched_affine_relu(w, c),
                (true, true) => h.batched_affine_relu_tiled(w, c),
                (false, false) => h.batched_affine(w, c),
                (true, false) => h.batched_affine_tiled(w, c),
            };
            if i + 1 < layers && !relu {
                h = self.activation.apply(h);
            }
        }
        h
    }
}

/// A linear model `x·Wᵀ + b` (`W [out, in]`, `b [out]`): logistic or softmax
/// regression when paired with a cross-entropy loss, least squares with MSE.
/// Used by the hyperparameter-search examples. Parameters `weight`, `bias`,
/// initialised to zero by default (a convex model needs no symmetry breaking).
///
/// ```
/// use models::{Linear, Model};
/// use tape::{Tape, Tensor};
/// let m = Linear::new(3, 2);
/// let p = m.init::<f64>(0);
/// let t = Tape::<f64>::new();
/// let vars = p.vars(&t);
/// let x = t.constant_base(&Tensor::new(&[1, 3], vec![1.0, 2.0, 3.0]));
/// let loss = m.forward(&t, &vars, x).softmax_cross_entropy(&[1]);
/// assert!((loss.item() - 2f64.ln()).abs() < 1e-15); // zero weights: uniform over 2 classes
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    /// Input features.
    pub in_dim: usize,
    /// Outputs (1 for binary logistic regression, C for softmax regression).
    pub out_dim: usize,
    /// Weight initialiser.
    pub weight_init: Init,
}

impl Linear {
    /// A zero-initialised linear model.
    pub fn new(in_dim: usize, out_dim: usize) -> Self {
        Linear {
            in_dim,
            out_dim,
            weight_init: Init::Zeros,
        }
    }
    /// Replaces the weight initialiser.
    pub fn with_init(mut self, init: Init) -> Self {
        self.weight_init = init;
        self
    }
}

impl Model for Linear {
    fn param_specs(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::new(
                "weight",
                &[self.out_dim, self.in_dim],
                self.in_dim,
                self.out_dim,
                self.weight_init,
            ),
            ParamSpec::new(
                "bias",
                &[self.out_dim],
                self.in_dim,
                self.out_dim,
                Init::Zeros,
            ),
        ]
    }

    #[track_caller]
    fn forward<'t, T: Real>(
        &self,
        _tape: &'t Tape<T>,
        params: &[Var<'t, T>],
        x: Var<'t, T>,
    ) -> Var<'t, T> {
        check_params("Linear", &self.param_specs(), params);
        let xs = x.shape();
        assert!(
            xs.rank() == 2 && xs.dim(1) == self.in_dim,
            "Linear: input {:?}, expected [n, {}]",
            xs.dims(),
            self.in_dim
        );
        affine(x, params[0], params[1])
    }
}

/// Mean binary logistic loss of logits `z [n, 1]` (or `[n]`) against labels in {0, 1}:
/// (1/n) Σ softplus(z) − y·z, i.e. −(1/n) Σ [y ln σ(z) + (1 − y) ln(1 − σ(z))].
///
/// # Panics
/// If the number of logits differs from the number of labels.
#[track_caller]
pub fn binary_logistic_loss<'t, T: Real>(
    tape: &'t Tape<T>,
    z: Var<'t, T>,
    labels: &[bool],
) -> Var<'t, T> {
    let s = z.shape();
    assert_eq!(
        s.numel(),
        labels.len(),
        "binary_logistic_loss: logits {:?}, {} labels",
        s.dims(),
        labels.len()
    );
    let y = tape.leaf(
        s,
        &labels
            .iter()
            .map(|&l| if l { T::one() } else { T::zero() })
            .collect::<Vec<_>>(),
        false,
    );
    (z.softplus() - y * z).mean()
}

/// Which published Conv4 architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conv4Variant {
    /// Omniglot (Finn et al. 2017): 4 × [3×3 conv, stride 2, pad 1, batch-norm, act].
    Omniglot,
    /// Mini-ImageNet: 4 × [3×3 conv, pad 1, batch-norm, 2×2 max-pool, act].
    MiniImagenet,
    /// Benchmark: 4 × [3×3 conv, pad 1, act, 2×2 max-pool]; no batch-norm.
    ///
    /// Computed as pool, then bias, then act: `maxpool(act(y + b)) =
    /// act(maxpool(y) + b)` for a per-channel bias `b` and a non-decreasing
    /// `act` (all of [`Activation`]'s), because a window's maximum commutes
    /// with adding a constant and with a non-decreasing map, and this holds in
    /// floating point too (rounded `y + b` and the rounded activations are
    /// non-decreasing in `y`: ReLU and the identity exactly; tanh and softplus
    /// as far as their implementations are monotone). So the bias add and the
    /// activation (and their adjoints) touch a quarter of the elements. The
    /// gradient is the same except where a window has tied maxima after the
    /// activation but not before (e.g. ReLU's zeros, where the adjoint is zero
    /// either way): then the adjoint goes to the larger pre-activation, also
    /// a valid subgradient.
    Benchmark,
}

/// The four-block convolutional network of few-shot learning, then flatten and
/// a linear head to `n_classes`.
///
/// Input `[n, c, h, w]` (NCHW), output logits `[n, n_classes]`. Per block `i`:
/// `layers.{i}.conv.weight [f, c_i, 3, 3]`, `layers.{i}.conv.bias [f]`, and with
/// batch-norm `layers.{i}.bn.weight [f]`, `layers.{i}.bn.bias [f]`; then
/// `head.weight [n_classes, feat]`, `head.bias [n_classes]`. Batch-norm always
/// uses the statistics of the batch passed in (as MAML does; there are no
/// running statistics, so no hidden state). Conv weights use Kaiming-uniform by
/// default (`Init::KaimingUniform`), biases PyTorch-default; the head PyTorch-default.
///
/// Spatial sizes: stride 2 / pad 1 maps `h → ⌊(h − 1)/2⌋ + 1` (28→14→7→4→2);
/// 2×2 max-pool maps `h → ⌊h/2⌋` (84→42→21→10→5; 28→14→7→3→1).
///
/// ```
/// use models::{Conv4, Model};
/// let net = Conv4::omniglot(5);
/// assert_eq!(net.feature_dim(), 64 * 2 * 2);
/// assert_eq!(Conv4::mini_imagenet(5).feature_dim(), 32 * 5 * 5);
/// assert_eq!(Conv4::benchmark(5).feature_dim(), 64);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Conv4 {
    /// Architecture.
    pub variant: Conv4Variant,
    /// Input channels.
    pub in_channels: usize,
    /// Input height.
    pub height: usize,
    /// Input width.
    pub width: usize,
    /// Filters per block.
    pub filters: usize,
    /// Output classes.
    pub n_classes: usize,
    /// Nonlinearity (ReLU in the papers; tanh is handy for gradient checks).
    pub activation: Activation,
    /// Batch-norm ε.
    pub bn_eps: f64,
    /// Convolution weight initialiser.
    pub conv_init: Init,
}

impl Conv4 {
    /// A Conv4 of the given variant with explicit input geometry and filters.
    pub fn new(
        variant: Conv4Variant,
        in_channels: usize,
        height: usize,
        width: usize,
        filters: usize,
        n_classes: usize,
    ) -> Self {
        Conv4 {
            variant,
            in_channels,
            height,
            width,
            filters,
            n_classes,
            activation: Activation::Relu,
            bn_eps: 1e-5,
            conv_init: Init::KaimingUniform,
        }
    }
    /// Omniglot variant on 1×28×28 inputs, 64 filters.
    pub fn omniglot(n_classes: usize) -> Self {
        Self::new(Conv4Variant::Omniglot, 1, 28, 28, 64, n_classes)
    }
    /// Mini-ImageNet variant on 3×84×84 inputs, 32 filters.
    pub fn mini_imagenet(n_classes: usize) -> Self {
        Self::new(Conv4Variant::MiniImagenet, 3, 84, 84, 32, n_classes)
    }
    /// Benchmark variant (no batch-norm) on 1×28×28 inputs, 64 filters.
    pub fn benchmark(n_classes: usize) -> Self {
        Self::new(Conv4Variant::Benchmark, 1, 28, 28, 64, n_classes)
    }
    /// Sets the number of filters per block.
    pub fn with_filters(mut self, filters: usize) -> Self {
        self.filters = filters;
        self
    }
    /// Sets the input geometry `[c, h, w]`.
    pub fn with_input(mut self, channels: usize, height: usize, width: usize) -> Self {
        self.in_channels = channels;
        self.height = height;
        self.width = width;
        self
    }
    /// Sets the nonlinearity.
    pub fn with_activation(mut self, a: Activation) -> Self {
        self.activation = a;
        self
    }

    fn next_size(&self, s: usize) -> usize {
        match self.variant {
            Conv4Variant::Omniglot => (s + 2 - 3) / 2 + 1,
            Conv4Variant::MiniImagenet | Conv4Variant::Benchmark => s / 2,
        }
    }

    /// `[h, w]` after each block, for the configured input.
    pub fn block_sizes(&self) -> [[usize; 2]; 4] {
        let mut hw = [self.height, self.width];
        let mut out = [[0; 2]; 4];
        for o in &mut out {
            hw = [self.next_size(hw[0]), self.next_size(hw[1])];
            *o = hw;
        }
        out
    }

    /// Length of the flattened features fed to the head.
    ///
    /// # Panics
    /// If the input is too small to survive four blocks.
    #[track_caller]
    pub fn feature_dim(&self) -> usize {
        let [h, w] = self.block_sizes()[3];
        assert!(
            h > 0 && w > 0,
            "Conv4: input {}×{} is too small for four {:?} blocks",
            self.height,
            self.width,
            self.variant
        );
        self.filters * h * w
    }

    fn has_bn(&self) -> bool {
        self.variant != Conv4Variant::Benchmark
    }
}

impl Model for Conv4 {
    fn param_specs(&self) -> Vec<ParamSpec> {
        let f = self.filters;
        let mut v = Vec::new();
        let mut c = self.in_channels;
        for i in 0..4 {
            let (fi, fo) = (c * 9, f * 9);
            v.push(ParamSpec::new(
                format!("layers.{i}.conv.weight"),
                &[f, c, 3, 3],
                fi,
                fo,
                self.conv_init,
            ));
            v.push(ParamSpec::new(
                format!("layers.{i}.conv.bias"),
                &[f],
                fi,
                fo,
                Init::TorchDefault,
            ));
            if self.has_bn() {
                v.push(ParamSpec::new(
                    format!("layers.{i}.bn.weight"),
                    &[f],
                    f,
                    f,
                    Init::Ones,
                ));
                v.push(ParamSpec::new(
                    format!("layers.{i}.bn.bias"),
                    &[f],
                    f,
                    f,
                    Init::Zeros,
                ));
            }
            c = f;
        }
        let d = self.feature_dim();
        v.push(ParamSpec::new(
            "head.weight",
            &[self.n_classes, d],
            d,
            self.n_classes,
            Init::TorchDefault,
        ));
        v.push(ParamSpec::new(
            "head.bias",
            &[self.n_classes],
            d,
            self.n_classes,
            Init::TorchDefault,
        ));
        v
    }

    #[track_caller]
    fn forward<'t, T: Real>(
        &self,
        _tape: &'t Tape<T>,
        params: &[Var<'t, T>],
        x: Var<'t, T>,
    ) -> Var<'t, T> {
        check_params("Conv4", &self.param_specs(), params);
        let xs = x.shape();
        assert!(
            xs.rank() == 4 && xs.dims()[1..] == [self.in_channels, self.height, self.width],
            "Conv4: input {:?}, expected [n, {}, {}, {}]",
            xs.dims(),
            self.in_channels,
            self.height,
            self.width
        );
        let n = xs.dim(0);
        let f = self.filters;
        let bias_shape = [f, 1, 1];
        let mut h = x;
        let mut k = 0;
        for _ in 0..4 {
            let (w, b) = (params[k], params[k + 1]);
            k += 2;
            match self.variant {
                Conv4Variant::Omniglot => {
                    h = h.conv2d(w, 2, 1) + b.reshape(bias_shape);
                    h = h.batch_norm(params[k], params[k + 1], self.bn_eps);
                    k += 2;
                    h = self.activation.apply(h);
                }
                Conv4Variant::MiniImagenet => {
                    h = h.conv2d(w, 1, 1) + b.reshape(bias_shape);
                    h = h.batch_norm(params[k], params[k + 1], self.bn_eps);
                    k += 2;
                    h = h.max_pool2d(2, 2);
                    h = self.activation.apply(h);
                }
                Conv4Variant::Benchmark => {
                    // act(conv + b) then pool, computed as act(pool(conv) + b):
                    // the same function (see `Conv4Variant::Benchmark`), with
                    // the bias add and the activation on a quarter of the
                    // elements.
                    h = h.conv2d(w, 1, 1).max_pool2d(2, 2) + b.reshape(bias_shape);
                    h = self.activation.apply(h);
                }
            }
        }
        let feat = h.reshape([n, self.feature_dim()].as_slice());
        affine(feat, params[k], params[k + 1])
    }
}
