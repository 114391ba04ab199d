//! The built-in rules: SGD, Meta-SGD, MAML++'s LSLR, momentum (heavy ball or
//! Nesterov) and Adam, each one [`InnerRule::step`] (their adjoints are the
//! engine's, docs/math.md §12).
//!
//! A broadcast θ-tensor (a step size, a β) is the second operand of its
//! product (`g * α`, not `α * g`): the tape's VJP has contiguous fast paths
//! for a broadcast second operand only, and the first form took the general
//! indexed loop (a quarter of `maml_sine:r10:exact_lslr`'s time).

use tape::shape::broadcast_shapes;
use tape::{Real, Shape, Tape, Tensor, Var};

use super::{InnerRule, RuleStep, Segments};
use crate::error::BloError;
use crate::problem::check_lr;

/// Plain SGD, φ_j = φ_{j−1} − α g_j, on the generic path (the same update as
/// [`crate::InnerOptimizer::Sgd`], whose hand-derived adjoint is the fast path).
#[derive(Clone, Debug, PartialEq)]
pub struct Sgd {
    lr: f64,
}

impl Sgd {
    /// SGD with step α.
    ///
    /// # Errors
    /// [`BloError::InvalidHyperparameter`] if α is not finite and > 0.
    pub fn new(lr: f64) -> Result<Self, BloError> {
        check_lr(lr)?;
        Ok(Sgd { lr })
    }
}

impl InnerRule for Sgd {
    fn name(&self) -> String {
        format!("sgd(α={})", self.lr)
    }
    fn affine_in_grad(&self) -> bool {
        true
    }
    fn constant_grad_coefficient(&self) -> bool {
        true
    }
    fn elementwise(&self) -> bool {
        true
    }
    fn fixed_linear(&self) -> bool {
        true
    }
    fn step<'t, T: Real>(
        &self,
        _tape: &'t Tape<T>,
        _j: usize,
        _theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
        _extra: &[Var<'t, T>],
        grad: &[Var<'t, T>],
    ) -> RuleStep<'t, T> {
        RuleStep {
            phi: phi
                .iter()
                .zip(grad)
                .map(|(&p, &g)| p - g * self.lr)
                .collect(),
            extra: Default::default(),
        }
    }
}

/// Meta-SGD (Li et al. 2017) with any broadcastable step shape:
/// φ_{j,i} = φ_{j−1,i} − α_i ⊙ g_{j,i}, α_i = θ[`lr_index[i]`] broadcast to
/// φ tensor i (NumPy rules: a scalar or `[1]` for one step per tensor, a row
/// or column for one per unit, φ's shape for one per element).
#[derive(Clone, Debug, PartialEq)]
pub struct MetaSgd {
    lr_index: Vec<usize>,
}

impl MetaSgd {
    /// Steps of φ tensor i from θ[`lr_index[i]`].
    pub fn new(lr_index: Vec<usize>) -> Self {
        MetaSgd { lr_index }
    }
}

impl InnerRule for MetaSgd {
    fn name(&self) -> String {
        format!("meta-sgd(lr_index={:?})", self.lr_index)
    }
    fn affine_in_grad(&self) -> bool {
        true
    }
    fn elementwise(&self) -> bool {
        true
    }
    fn validate(
        &self,
        _steps: usize,
        theta: &[Tensor<f64>],
        phi0: Option<&[Shape]>,
    ) -> Result<(), BloError> {
        check_steps_table(theta, &self.lr_index, phi0, None)
    }
    fn step<'t, T: Real>(
        &self,
        _tape: &'t Tape<T>,
        _j: usize,
        theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
        _extra: &[Var<'t, T>],
        grad: &[Var<'t, T>],
    ) -> RuleStep<'t, T> {
        RuleStep {
            phi: phi
                .iter()
                .zip(grad)
                .zip(&self.lr_index)
                .map(|((&p, &g), &k)| p - g * theta[k])
                .collect(),
            extra: Default::default(),
        }
    }
    /// The same update with α_i broadcast to φ tensor i's shape and the
    /// results concatenated (the broadcast's VJP sums in the order the
    /// product's does).
    fn flat_step<'t, T: Real>(
        &self,
        _tape: &'t Tape<T>,
        _j: usize,
        theta: &[Var<'t, T>],
        segments: &Segments,
        phi: Var<'t, T>,
        _extra: &[Var<'t, T>],
        grad: Var<'t, T>,
    ) -> RuleStep<'t, T> {
        let steps: super::Vars<'t, T> = segments
            .shapes()
            .iter()
            .zip(&self.lr_index)
            .map(|(&s, &k)| {
                let a = theta[k];
                let a = if a.shape() == s { a } else { a.broadcast_to(s) };
                if s.rank() == 1 {
                    a
                } else {
                    a.reshape(Shape::new(&[s.numel()]))
                }
            })
            .collect();
        RuleStep {
            phi: [phi - grad * tape::concat(&steps, 0)].into_iter().collect(),
            extra: Default::default(),
        }
    }
}

/// MAML++'s learnable per-layer, per-step step sizes (LSLR, Antoniou et al.
/// 2019): φ_{j,i} = φ_{j−1,i} − α_{j,i} g_{j,i} with a learnable scalar
/// α_{j,i} per φ tensor i and step j, held in θ as either one `[r]` tensor
/// per φ tensor ([`Lslr::per_tensor`]) or one `[r, L]` table for the L φ
/// tensors ([`Lslr::table`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Lslr {
    /// α_{j,i} = θ[`k[i]`][j − 1].
    PerTensor(Vec<usize>),
    /// α_{j,i} = θ[k][j − 1, i].
    Table(usize),
}

impl Lslr {
    /// Steps of φ tensor i at step j from θ[`lr_index[i]`][j − 1] (each an
    /// `[r]` tensor).
    pub fn per_tensor(lr_index: Vec<usize>) -> Self {
        Lslr::PerTensor(lr_index)
    }

    /// Steps from θ[`index`][j − 1, i] (an `[r, L]` table, L φ tensors).
    pub fn table(index: usize) -> Self {
        Lslr::Table(index)
    }
}

impl InnerRule for Lslr {
    fn name(&self) -> String {
        match self {
            Lslr::PerTensor(k) => format!("lslr(per tensor θ{k:?})"),
            Lslr::Table(k) => format!("lslr(table θ[{k}])"),
        }
    }
    fn affine_in_grad(&self) -> bool {
        true
    }
    fn elementwise(&self) -> bool {
        true
    }
    fn validate(
        &self,
        steps: usize,
        theta: &[Tensor<f64>],
        phi0: Option<&[Shape]>,
    ) -> Result<(), BloError> {
        match self {
            Lslr::PerTensor(index) => check_steps_table(theta, index, phi0, Some(steps)),
            Lslr::Table(k) => {
                let a = theta_tensor(theta, *k, "step-size")?;
                check_step_values(*k, a)?;
                let cols = phi0.map(|p| p.len());
                let fits = a.dims().len() == 2
                    && a.dims()[0] == steps
                    && cols.is_none_or(|l| a.dims()[1] == l);
                if !fits {
                    return Err(BloError::invalid(
                        "step-size table",
                        format!("θ[{k}] of shape {:?}", a.dims()),
                        &format!(
                            "needs shape [r, L] = [{steps}, {}] (one row per inner step, one column per φ tensor)",
                            cols.map_or("L".into(), |l| l.to_string())
                        ),
                    ));
                }
                // Each entry is one scalar step, broadcast as [1].
                for (i, p) in phi0.unwrap_or_default().iter().enumerate() {
                    check_broadcast(*k, Shape::new(&[1]), i, *p)?;
                }
                Ok(())
            }
        }
    }
    fn step<'t, T: Real>(
        &self,
        _tape: &'t Tape<T>,
        j: usize,
        theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
        _extra: &[Var<'t, T>],
        grad: &[Var<'t, T>],
    ) -> RuleStep<'t, T> {
        // A table's row j as one [L] vector (two nodes), each step a [1]
        // slice of it (one node per φ tensor).
        let row = match self {
            Lslr::PerTensor(_) => None,
            Lslr::Table(k) => Some(
                theta[*k]
                    .slice(0, j - 1, j)
                    .reshape(Shape::new(&[phi.len()])),
            ),
        };
        let alpha = |i: usize| match (self, row) {
            (Lslr::PerTensor(k), _) => theta[k[i]].slice(0, j - 1, j),
            (_, Some(row)) => row.slice(0, i, i + 1),
            (Lslr::Table(_), None) => unreachable!("a table has its row"),
        };
        RuleStep {
            phi: phi
                .iter()
                .zip(grad)
                .enumerate()
                .map(|(i, (&p, &g))| p - g * alpha(i))
                .collect(),
            extra: Default::default(),
        }
    }
    /// The same update on φ concatenated: row j of the steps as one `[L]`
    /// vector, each entry scaling its φ tensor's segment of g
    /// ([`Segments::scale`], one node; the per-tensor step's bits).
    fn flat_step<'t, T: Real>(
        &self,
        _tape: &'t Tape<T>,
        j: usize,
        theta: &[Var<'t, T>],
        segments: &Segments,
        phi: Var<'t, T>,
        _extra: &[Var<'t, T>],
        grad: Var<'t, T>,
    ) -> RuleStep<'t, T> {
        let row = match self {
            Lslr::PerTensor(k) => {
                let steps: super::Vars<'t, T> =
                    k.iter().map(|&k| theta[k].slice(0, j - 1, j)).collect();
                tape::concat(&steps, 0)
            }
            Lslr::Table(k) => theta[*k].slice(0, j - 1, j),
        };
        RuleStep {
            phi: [phi - segments.scale(grad, row)].into_iter().collect(),
            extra: Default::default(),
        }
    }
}

/// A momentum coefficient: fixed, or learnable from a θ tensor (broadcast to
/// every φ tensor; a scalar or `[1]` tensor gives one β for all).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Beta {
    /// A fixed β ∈ [0, 1).
    Fixed(f64),
    /// β = θ\[k\], every element in [0, 1).
    Theta(usize),
}

/// Heavy-ball or Nesterov momentum with velocity v (v_0 = 0):
/// v_j = β v_{j−1} + g_j, then φ_j = φ_{j−1} − α v_j (heavy ball) or
/// φ_j = φ_{j−1} − α (g_j + β v_j) (Nesterov, PyTorch's form).
#[derive(Clone, Debug, PartialEq)]
pub struct Momentum {
    lr: f64,
    beta: Beta,
    nesterov: bool,
}

impl Momentum {
    /// Heavy-ball momentum.
    ///
    /// # Errors
    /// [`BloError::InvalidHyperparameter`] if α is not finite and > 0, or a
    /// fixed β is not in [0, 1).
    pub fn heavy_ball(lr: f64, beta: Beta) -> Result<Self, BloError> {
        Self::new(lr, beta, false)
    }

    /// Nesterov momentum.
    ///
    /// # Errors
    /// As [`Momentum::heavy_ball`].
    pub fn nesterov(lr: f64, beta: Beta) -> Result<Self, BloError> {
        Self::new(lr, beta, true)
    }

    fn new(lr: f64, beta: Beta, nesterov: bool) -> Result<Self, BloError> {
        check_lr(lr)?;
        if let Beta::Fixed(b) = beta {
            check_unit("beta", b)?;
        }
        Ok(Momentum { lr, beta, nesterov })
    }
}

impl InnerRule for Momentum {
    fn name(&self) -> String {
        let kind = if self.nesterov {
            "nesterov"
        } else {
            "heavy-ball"
        };
        match self.beta {
            Beta::Fixed(b) => format!("{kind}(α={}, β={b})", self.lr),
            Beta::Theta(k) => format!("{kind}(α={}, β=θ[{k}])", self.lr),
        }
    }
    fn extra_state(&self, phi: &[Shape]) -> Vec<Shape> {
        phi.to_vec()
    }
    fn affine_in_grad(&self) -> bool {
        true
    }
    fn constant_grad_coefficient(&self) -> bool {
        // Heavy ball: B = (−α, 1) whatever β; Nesterov: B = (−α(1 + β), 1),
        // constant unless β is learnable.
        !self.nesterov || matches!(self.beta, Beta::Fixed(_))
    }
    fn elementwise(&self) -> bool {
        // A learnable β shared by several φ tensors: its adjoint is one sum
        // over the flat vector instead of per-tensor sums added up.
        matches!(self.beta, Beta::Fixed(_))
    }
    fn fixed_linear(&self) -> bool {
        // v_j = β v + g, φ_j = φ − α v_j (or − α (g + β v_j)): fixed
        // coefficients when β is.
        matches!(self.beta, Beta::Fixed(_))
    }
    fn validate(
        &self,
        _steps: usize,
        theta: &[Tensor<f64>],
        phi0: Option<&[Shape]>,
    ) -> Result<(), BloError> {
        let Beta::Theta(k) = self.beta else {
            return Ok(());
        };
        let b = theta_tensor(theta, k, "β")?;
        if let Some((e, &x)) = b
            .data()
            .iter()
            .enumerate()
            .find(|(_, x)| !(x.is_finite() && (0.0..1.0).contains(*x)))
        {
            return Err(BloError::invalid(
                "momentum β",
                format!("θ[{k}] element {e} = {x}"),
                "β must be in [0, 1)",
            ));
        }
        for (i, p) in phi0.unwrap_or_default().iter().enumerate() {
            check_broadcast(k, b.shape(), i, *p)?;
        }
        Ok(())
    }
    fn step<'t, T: Real>(
        &self,
        _tape: &'t Tape<T>,
        _j: usize,
        theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
        extra: &[Var<'t, T>],
        grad: &[Var<'t, T>],
    ) -> RuleStep<'t, T> {
        let scale = |x: Var<'t, T>| match self.beta {
            Beta::Fixed(b) => x * b,
            Beta::Theta(k) => x * theta[k],
        };
        let mut out = RuleStep {
            phi: Default::default(),
            extra: Default::default(),
        };
        for ((&p, &v), &g) in phi.iter().zip(extra).zip(grad) {
            let v = scale(v) + g;
            let d = if self.nesterov { g + scale(v) } else { v };
            out.phi.push(p - d * self.lr);
            out.extra.push(v);
        }
        out
    }
}

/// Adam (Kingma & Ba 2015), bias-corrected, with ε inside the square root:
///
/// m_j = β₁ m_{j−1} + (1 − β₁) g_j,   v_j = β₂ v_{j−1} + (1 − β₂) g_j²,
/// φ_j = φ_{j−1} − α m̂_j / √(v̂_j + ε²),   m̂_j = m_j/(1 − β₁ʲ), v̂_j = v_j/(1 − β₂ʲ).
///
/// √(v̂ + ε²) ≥ ε keeps the step and its derivatives finite at v̂ = 0 (zero
/// moments, a zero gradient), where √v̂ + ε has an infinite derivative;
/// away from 0 the two differ by O(ε²/√v̂). The extra state is (m, v): φ's
/// shapes twice, m first.
#[derive(Clone, Debug, PartialEq)]
pub struct Adam {
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
}

impl Adam {
    /// Adam with step α, moment decays β₁, β₂ and ε.
    ///
    /// # Errors
    /// [`BloError::InvalidHyperparameter`] if α is not finite and > 0, β₁ or
    /// β₂ is not in [0, 1), or ε is not finite and > 0.
    ///
    /// ```
    /// let e = blo::rules::Adam::new(0.01, 0.9, 0.999, 0.0).unwrap_err();
    /// assert!(e.to_string().contains("eps = 0"), "{e}");
    /// ```
    pub fn new(lr: f64, beta1: f64, beta2: f64, eps: f64) -> Result<Self, BloError> {
        check_lr(lr)?;
        check_unit("beta1", beta1)?;
        check_unit("beta2", beta2)?;
        if !(eps.is_finite() && eps > 0.0) {
            return Err(BloError::invalid("eps", eps, "ε must be finite and > 0"));
        }
        Ok(Adam {
            lr,
            beta1,
            beta2,
            eps,
        })
    }
}

impl InnerRule for Adam {
    fn name(&self) -> String {
        format!(
            "adam(α={}, β1={}, β2={}, ε={})",
            self.lr, self.beta1, self.beta2, self.eps
        )
    }
    fn extra_state(&self, phi: &[Shape]) -> Vec<Shape> {
        phi.iter().chain(phi).copied().collect()
    }
    fn elementwise(&self) -> bool {
        true
    }
    fn step<'t, T: Real>(
        &self,
        _tape: &'t Tape<T>,
        j: usize,
        _theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
        extra: &[Var<'t, T>],
        grad: &[Var<'t, T>],
    ) -> RuleStep<'t, T> {
        let (b1, b2) = (self.beta1, self.beta2);
        let c1 = 1.0 / (1.0 - b1.powi(j as i32));
        let c2 = 1.0 / (1.0 - b2.powi(j as i32));
        // α m̂ / √(v̂ + ε²) = (α c1 / √c2) · m / √(v + ε²/c2): the constants
        // folded into two scalars, five tape nodes per update instead of seven.
        let (scale, eps2) = (self.lr * c1 / c2.sqrt(), self.eps * self.eps / c2);
        let (m, v) = extra.split_at(phi.len());
        let mut out = RuleStep {
            phi: Default::default(),
            extra: Default::default(),
        };
        let mut vs = super::Vars::new();
        for (((&p, &m), &v), &g) in phi.iter().zip(m).zip(v).zip(grad) {
            // `m * b1 + g * (1 − b1)` in one node (the same bits), as for v.
            let m = m.axpby(b1, g, 1.0 - b1);
            let v = v.axpby(b2, g.square(), 1.0 - b2);
            out.phi.push(p - m / (v + eps2).sqrt() * scale);
            out.extra.push(m);
            vs.push(v);
        }
        out.extra.extend(vs);
        out
    }
}

fn check_unit(name: &'static str, b: f64) -> Result<(), BloError> {
    if b.is_finite() && (0.0..1.0).contains(&b) {
        Ok(())
    } else {
        Err(BloError::invalid(name, b, "must be in [0, 1)"))
    }
}

/// An error unless every step size in θ[k] is finite and ≥ 0 (a negative
/// step ascends the inner loss).
fn check_step_values(k: usize, a: &Tensor<f64>) -> Result<(), BloError> {
    match a.data().iter().position(|x| !(x.is_finite() && *x >= 0.0)) {
        None => Ok(()),
        Some(e) => Err(BloError::invalid(
            "step size",
            format!("θ[{k}] element {e} = {}", a.data()[e]),
            "a step size must be finite and >= 0",
        )),
    }
}

/// θ[k], or an error naming `what` and how many tensors θ has.
fn theta_tensor<'a>(
    theta: &'a [Tensor<f64>],
    k: usize,
    what: &str,
) -> Result<&'a Tensor<f64>, BloError> {
    theta.get(k).ok_or_else(|| {
        BloError::invalid(
            "inner rule θ index",
            k,
            &format!(
                "the {what} tensor θ[{k}] does not exist: θ has {} tensors",
                theta.len()
            ),
        )
    })
}

/// An error unless θ[k]'s shape `a` broadcasts to φ tensor i's shape `p`.
fn check_broadcast(k: usize, a: Shape, i: usize, p: Shape) -> Result<(), BloError> {
    if broadcast_shapes(a, p) == Some(p) {
        Ok(())
    } else {
        Err(BloError::invalid(
            "step-size shape",
            format!("θ[{k}] {:?}", a.dims()),
            &format!("does not broadcast to φ tensor {i} of shape {:?}", p.dims()),
        ))
    }
}

/// Step-size tensors θ[`index[i]`]: they exist, hold finite steps ≥ 0, and
/// (with φ_0's shapes) there is one per φ tensor, broadcasting to it. With
/// `table = Some(r)`, each is an `[r]` table of steps (one per inner step).
fn check_steps_table(
    theta: &[Tensor<f64>],
    index: &[usize],
    phi0: Option<&[Shape]>,
    table: Option<usize>,
) -> Result<(), BloError> {
    if let Some(phi) = phi0 {
        if index.len() != phi.len() {
            return Err(BloError::invalid(
                "lr_index",
                format!("{index:?}"),
                &format!("needs one entry per φ tensor, and φ_0 has {}", phi.len()),
            ));
        }
    }
    for (i, &k) in index.iter().enumerate() {
        let a = theta_tensor(theta, k, "step-size")?;
        check_step_values(k, a)?;
        match table {
            Some(r) => {
                let want = [r];
                if a.dims() != want.as_slice() {
                    return Err(BloError::invalid(
                        "step-size table",
                        format!("θ[{k}] of shape {:?}", a.dims()),
                        &format!("needs shape {want:?} (one row per inner step, r = {r})"),
                    ));
                }
                if let Some(phi) = phi0 {
                    check_broadcast(k, Shape::new(&[1]), i, phi[i])?;
                }
            }
            None => {
                if let Some(phi) = phi0 {
                    check_broadcast(k, a.shape(), i, phi[i])?;
                }
            }
        }
    }
    Ok(())
}
