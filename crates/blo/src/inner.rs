//! The inner loop and its building blocks: one forward step, one adjoint step,
//! the Hessian-vector product, the outer gradient and the VJP/JVP through Φ_0.
//!
//! Every state is produced by [`InnerWorkspace::step_in_place`] (the single-step
//! forward function S(θ, state_{j−1}) → state_j), so a state recomputed from a
//! checkpoint is bit-identical to the one of the first sweep. Every adjoint step
//! is one forward-over-reverse pass ([`InnerWorkspace::inner_hvp`]) at the state
//! it needs: its primal part is ∇L_in, its tangent part is H_φφ w (on φ) and
//! the mixed product M w = ∂²L_in/∂θ∂φ · w (on θ). The tapes are cleared and
//! reused, so a long inner loop does not grow them.

use std::any::Any;
use std::cell::RefCell;

use tape::{Dual, Float, Real, Tape, Tensor, Var};

use crate::error::BloError;
use crate::problem::{InnerOptimizer, Problem};

/// An inner state: the weights φ and, for momentum, the velocity v.
#[derive(Clone, Debug, PartialEq)]
pub struct State<F: Float> {
    /// φ, one tensor per φ tensor of the problem.
    pub phi: Vec<Tensor<F>>,
    /// The velocity v (same shapes as φ) for momentum; empty otherwise.
    pub velocity: Vec<Tensor<F>>,
}

impl<F: Float> State<F> {
    /// Bytes held by the state's elements.
    pub fn bytes(&self) -> usize {
        let n: usize = self
            .phi
            .iter()
            .chain(&self.velocity)
            .map(|t| t.numel())
            .sum();
        n * std::mem::size_of::<F>()
    }

    /// Whether every element is finite.
    pub fn is_finite(&self) -> bool {
        self.phi.iter().chain(&self.velocity).all(|t| t.is_finite())
    }
}

/// A cotangent on an inner state (the adjoint variable ū of the sweep), with
/// the same layout as [`State`].
#[derive(Clone, Debug, PartialEq)]
pub struct Cotangent<F: Float> {
    /// ū on φ.
    pub phi: Vec<Tensor<F>>,
    /// ū on the velocity (momentum only; empty otherwise).
    pub velocity: Vec<Tensor<F>>,
}

impl<F: Float> Cotangent<F> {
    /// Zero cotangent shaped like `s`.
    pub fn zeros_like(s: &State<F>) -> Self {
        Cotangent {
            phi: s.phi.iter().map(|t| Tensor::zeros(t.shape())).collect(),
            velocity: s
                .velocity
                .iter()
                .map(|t| Tensor::zeros(t.shape()))
                .collect(),
        }
    }
}

/// Gradients of the outer loss at the adapted state.
#[derive(Clone, Debug)]
pub struct OuterGrad<F: Float> {
    /// L_out(θ, φ_r).
    pub loss: F,
    /// ∇_θ L_out (the direct dependence only).
    pub theta: Vec<Tensor<F>>,
    /// ∇_φ L_out.
    pub phi: Vec<Tensor<F>>,
}

/// What one forward-over-reverse pass through L_in(θ, φ; τ, j) returns, at a
/// point (θ, φ) with tangents (v_θ, v_φ).
#[derive(Clone, Debug)]
pub struct InnerHvp<F: Float> {
    /// L_in(θ, φ).
    pub loss: F,
    /// ∇_θ L_in.
    pub grad_theta: Vec<Tensor<F>>,
    /// ∇_φ L_in.
    pub grad_phi: Vec<Tensor<F>>,
    /// H_θφ v_φ + H_θθ v_θ (with v_θ = 0: the mixed product M v_φ).
    pub tangent_theta: Vec<Tensor<F>>,
    /// H_φφ v_φ + H_φθ v_θ (with v_θ = 0: the Hessian-vector product H v_φ).
    pub tangent_phi: Vec<Tensor<F>>,
}

/// Reusable tapes and buffers for the inner loop. One per thread; cheap to
/// create, and clearing keeps the tapes' capacity.
#[derive(Debug, Default)]
pub struct InnerWorkspace<F: Float> {
    primal: Tape<F>,
    dual: Tape<Dual<F>>,
    buf: Vec<F>,
    dbuf: Vec<Dual<F>>,
}

pub(crate) fn non_finite(what: &'static str, step: usize) -> BloError {
    BloError::NonFinite {
        what,
        task: 0,
        step,
    }
}

fn all_finite<T: Real>(x: &[T]) -> bool {
    x.iter().all(|v| v.is_finite())
}

thread_local! {
    /// Workspaces handed back by finished sweeps, reused by the next ones on this
    /// thread (any `F`: looked up by type).
    static CACHE: RefCell<Vec<Box<dyn Any>>> = const { RefCell::new(Vec::new()) };
}

/// At most this many workspaces are kept per thread.
const CACHE_LEN: usize = 4;

impl<F: Float> InnerWorkspace<F> {
    /// Empty tapes.
    pub fn new() -> Self {
        Self::default()
    }

    /// A workspace from this thread's cache (its tapes keep their capacity, so
    /// reusing it allocates nothing), or a new one. Every use clears the tapes
    /// first, so the results do not depend on which one is returned.
    pub(crate) fn cached() -> Self {
        CACHE.with(|c| {
            let mut c = c.borrow_mut();
            match c.iter().position(|w| w.is::<Self>()) {
                Some(i) => *c.swap_remove(i).downcast::<Self>().expect("checked type"),
                None => Self::new(),
            }
        })
    }

    /// Hands the workspace back to this thread's cache (dropped if it is full).
    pub(crate) fn recycle(self) {
        CACHE.with(|c| {
            let mut c = c.borrow_mut();
            if c.len() < CACHE_LEN {
                c.push(Box::new(self));
            }
        })
    }

    /// φ_0 = Φ_0(θ) (velocity zero for momentum). Not counted as a step.
    ///
    /// # Errors
    /// [`BloError::NonFinite`] (step 0) if φ_0 is not finite.
    pub fn initial_state<P: Problem<F>>(
        &mut self,
        problem: &P,
        task: &P::Task,
        theta: &[Tensor<F>],
    ) -> Result<State<F>, BloError> {
        self.primal.clear();
        let t = &self.primal;
        let th: Vec<Var<'_, F>> = theta.iter().map(|x| t.constant(x)).collect();
        let phi: Vec<Tensor<F>> = problem
            .initial_state(t, task, &th)
            .iter()
            .map(|v| v.value())
            .collect();
        let velocity = if problem.inner_loop().has_velocity() {
            phi.iter().map(|p| Tensor::zeros(p.shape())).collect()
        } else {
            Vec::new()
        };
        let s = State { phi, velocity };
        if !s.is_finite() {
            return Err(non_finite("initial state", 0));
        }
        Ok(s)
    }

    /// One inner step j (1-based) in place: state_{j−1} → state_j, by one
    /// reverse sweep for g_j = ∇_φ L_in(θ, φ_{j−1}; τ, j) and the optimiser's
    /// update (see [`InnerOptimizer`]). Returns L_in(θ, φ_{j−1}). This is the
    /// only function that produces states.
    ///
    /// # Errors
    /// [`BloError::NonFinite`] naming step j if the loss or the gradient is not
    /// finite; `state` is then left unchanged.
    ///
    /// # Panics
    /// If a Meta-SGD step tensor's shape differs from its φ tensor's.
    #[track_caller]
    pub fn step_in_place<P: Problem<F>>(
        &mut self,
        problem: &P,
        task: &P::Task,
        j: usize,
        theta: &[Tensor<F>],
        state: &mut State<F>,
    ) -> Result<F, BloError> {
        self.primal.clear();
        let t = &self.primal;
        let th: Vec<Var<'_, F>> = theta.iter().map(|x| t.constant(x)).collect();
        let ph: Vec<Var<'_, F>> = state.phi.iter().map(|x| t.var(x)).collect();
        let loss = problem.inner_loss(t, task, j, &th, &ph);
        let value = loss.item();
        if !value.is_finite() {
            return Err(non_finite("inner loss", j));
        }
        t.backward(loss);
        // Check every gradient before touching the state. All gradients go into
        // one reused buffer, concatenated in φ order (no allocation per step).
        self.buf.clear();
        for &v in &ph {
            let start = self.buf.len();
            self.buf.resize(start + v.shape().numel(), F::zero());
            t.grad_into(v, &mut self.buf[start..]);
            if !all_finite(&self.buf[start..]) {
                return Err(non_finite("inner gradient", j));
            }
        }
        // The i-th gradient as a slice of the buffer (shapes from the φ vars, so
        // the iterator borrows neither the state nor itself across arms).
        let mut rest = &self.buf[..];
        let grads = ph.iter().map(move |v| {
            let (g, tail) = rest.split_at(v.shape().numel());
            rest = tail;
            g
        });
        match &problem.inner_loop().optimizer {
            InnerOptimizer::Sgd { lr } => {
                let a = F::from_f64(*lr);
                for (p, g) in state.phi.iter_mut().zip(grads) {
                    for (x, &gi) in p.data_mut().iter_mut().zip(g) {
                        *x -= a * gi;
                    }
                }
            }
            InnerOptimizer::MetaSgd { lr_index } => {
                for (i, (p, g)) in state.phi.iter_mut().zip(grads).enumerate() {
                    let alpha = meta_sgd_steps(theta, lr_index, i, p);
                    for ((x, &gi), &a) in p.data_mut().iter_mut().zip(g).zip(alpha.data()) {
                        *x -= a * gi;
                    }
                }
            }
            InnerOptimizer::Momentum { lr, beta } => {
                let (a, b) = (F::from_f64(*lr), F::from_f64(*beta));
                for ((p, v), g) in state.phi.iter_mut().zip(&mut state.velocity).zip(grads) {
                    for ((x, vi), &gi) in p.data_mut().iter_mut().zip(v.data_mut()).zip(g) {
                        *vi = b * *vi + gi;
                        *x -= a * *vi;
                    }
                }
            }
        }
        Ok(value)
    }

    /// L_out(θ, φ) only (one forward pass, no sweep).
    ///
    /// # Errors
    /// [`BloError::NonFinite`] at step r + 1 if the loss is not finite.
    pub fn outer_loss<P: Problem<F>>(
        &mut self,
        problem: &P,
        task: &P::Task,
        theta: &[Tensor<F>],
        phi: &[Tensor<F>],
    ) -> Result<F, BloError> {
        self.primal.clear();
        let t = &self.primal;
        let th: Vec<Var<'_, F>> = theta.iter().map(|x| t.constant(x)).collect();
        let ph: Vec<Var<'_, F>> = phi.iter().map(|x| t.constant(x)).collect();
        let l = problem.outer_loss(t, task, &th, &ph).item();
        if !l.is_finite() {
            return Err(non_finite("outer loss", problem.inner_loop().steps + 1));
        }
        Ok(l)
    }

    /// L_out(θ, φ), ∇_θ L_out and ∇_φ L_out by one reverse sweep.
    ///
    /// # Errors
    /// [`BloError::NonFinite`] at step r + 1 if the loss or a gradient is not finite.
    pub fn outer_grad<P: Problem<F>>(
        &mut self,
        problem: &P,
        task: &P::Task,
        theta: &[Tensor<F>],
        phi: &[Tensor<F>],
    ) -> Result<OuterGrad<F>, BloError> {
        let step = problem.inner_loop().steps + 1;
        self.primal.clear();
        let t = &self.primal;
        let th: Vec<Var<'_, F>> = theta.iter().map(|x| t.var(x)).collect();
        let ph: Vec<Var<'_, F>> = phi.iter().map(|x| t.var(x)).collect();
        let loss = problem.outer_loss(t, task, &th, &ph);
        let value = loss.item();
        if !value.is_finite() {
            return Err(non_finite("outer loss", step));
        }
        t.backward(loss);
        let gt: Vec<Tensor<F>> = th.iter().map(|&v| t.grad(v)).collect();
        let gp: Vec<Tensor<F>> = ph.iter().map(|&v| t.grad(v)).collect();
        if !gt.iter().chain(&gp).all(|g| g.is_finite()) {
            return Err(non_finite("outer gradient", step));
        }
        Ok(OuterGrad {
            loss: value,
            theta: gt,
            phi: gp,
        })
    }

    /// g_θ += (∂Φ_0/∂θ)ᵀ u, one reverse sweep through [`Problem::initial_state`].
    ///
    /// # Panics
    /// If `u` does not have one tensor per φ tensor.
    #[track_caller]
    pub fn initial_state_vjp<P: Problem<F>>(
        &mut self,
        problem: &P,
        task: &P::Task,
        theta: &[Tensor<F>],
        u: &[Tensor<F>],
        g_theta: &mut [Tensor<F>],
    ) {
        self.primal.clear();
        let t = &self.primal;
        let th: Vec<Var<'_, F>> = theta.iter().map(|x| t.var(x)).collect();
        let phi0 = problem.initial_state(t, task, &th);
        assert_eq!(
            phi0.len(),
            u.len(),
            "initial_state_vjp: Φ_0 has {} tensors but the cotangent {}",
            phi0.len(),
            u.len()
        );
        // s = Σ_i ⟨Φ_0,i(θ), u_i⟩, so ∇_θ s = (∂Φ_0/∂θ)ᵀ u.
        let mut s: Option<Var<'_, F>> = None;
        for (p, ui) in phi0.iter().zip(u) {
            let term = (*p * t.constant(ui)).sum();
            s = Some(match s {
                None => term,
                Some(acc) => acc + term,
            });
        }
        let Some(s) = s else { return };
        t.backward(s);
        for (g, &v) in g_theta.iter_mut().zip(&th) {
            self.buf.clear();
            self.buf.resize(g.numel(), F::zero());
            t.grad_into(v, &mut self.buf);
            for (x, &d) in g.data_mut().iter_mut().zip(&self.buf) {
                *x += d;
            }
        }
    }

    /// φ̇_0 = (∂Φ_0/∂θ) θ̇, one forward pass on dual numbers (a JVP through
    /// [`Problem::initial_state`]).
    pub fn initial_state_jvp<P: Problem<F>>(
        &mut self,
        problem: &P,
        task: &P::Task,
        theta: &[Tensor<F>],
        theta_dot: &[Tensor<F>],
    ) -> Vec<Tensor<F>> {
        self.dual.clear();
        let t = &self.dual;
        let th = dual_leaves(t, theta, Some(theta_dot), &mut self.dbuf);
        problem
            .initial_state(t, task, &th)
            .iter()
            .map(|v| v.value().map(|d| d.d))
            .collect()
    }

    /// One forward-over-reverse pass through L_in(θ, φ; τ, j) at (θ, φ) with
    /// tangents v_φ and (optionally) v_θ: gradient, H·v and mixed products at
    /// once (see [`InnerHvp`]). This is the HVP building block.
    ///
    /// # Errors
    /// [`BloError::NonFinite`] naming step j if the loss is not finite.
    ///
    /// # Panics
    /// If a tangent's shape differs from its point's.
    #[track_caller]
    #[allow(clippy::too_many_arguments)]
    pub fn inner_hvp<P: Problem<F>>(
        &mut self,
        problem: &P,
        task: &P::Task,
        j: usize,
        theta: &[Tensor<F>],
        phi: &[Tensor<F>],
        v_phi: &[Tensor<F>],
        v_theta: Option<&[Tensor<F>]>,
    ) -> Result<InnerHvp<F>, BloError> {
        self.dual.clear();
        let t = &self.dual;
        let th = dual_leaves(t, theta, v_theta, &mut self.dbuf);
        let ph = dual_leaves(t, phi, Some(v_phi), &mut self.dbuf);
        let loss = problem.inner_loss(t, task, j, &th, &ph);
        let value = loss.item();
        if !value.v.is_finite() {
            return Err(non_finite("inner loss", j));
        }
        t.backward(loss);
        let mut split = |vars: &[Var<'_, Dual<F>>]| {
            let mut g = Vec::with_capacity(vars.len());
            let mut d = Vec::with_capacity(vars.len());
            for &v in vars {
                let shape = v.shape();
                self.dbuf.clear();
                self.dbuf.resize(shape.numel(), Dual::default());
                t.grad_into(v, &mut self.dbuf);
                g.push(Tensor::new(shape, self.dbuf.iter().map(|x| x.v).collect()));
                d.push(Tensor::new(shape, self.dbuf.iter().map(|x| x.d).collect()));
            }
            (g, d)
        };
        let (grad_theta, tangent_theta) = split(&th);
        let (grad_phi, tangent_phi) = split(&ph);
        Ok(InnerHvp {
            loss: value.v,
            grad_theta,
            grad_phi,
            tangent_theta,
            tangent_phi,
        })
    }

    /// One adjoint step: the VJP of the step j map S(θ, state_{j−1}) → state_j.
    /// Given ū_j on state_j (in `cot`), sets `cot` to ū_{j−1} and adds the θ part
    /// to `g_theta`. `prev` must be state_{j−1}. One pass of
    /// [`InnerWorkspace::inner_hvp`] with tangent w:
    ///
    /// - SGD: w = α ū; ū ← ū − H w; g_θ −= M w.
    /// - Meta-SGD: w = α ⊙ ū; g_α −= ∇_φL ⊙ ū; ū ← ū − H w; g_θ −= M w.
    /// - Momentum (ū_φ, ū_v): w = ū_v − α ū_φ; ū_φ ← ū_φ + H w; ū_v ← β w; g_θ += M w.
    ///
    /// With `with_inner_loss`, the step's own loss L_in(θ, φ_{j−1}) is part of
    /// the objective (the summed-inner-loss objective of Reptile): its gradient,
    /// the primal part of the same pass, is added, ū_φ += ∇_φL and g_θ += ∇_θL.
    ///
    /// # Errors
    /// [`BloError::NonFinite`] naming step j if the loss or the new cotangent is
    /// not finite.
    #[allow(clippy::too_many_arguments)]
    pub fn adjoint_step<P: Problem<F>>(
        &mut self,
        problem: &P,
        task: &P::Task,
        j: usize,
        theta: &[Tensor<F>],
        prev: &State<F>,
        cot: &mut Cotangent<F>,
        g_theta: &mut [Tensor<F>],
        with_inner_loss: bool,
    ) -> Result<(), BloError> {
        let opt = &problem.inner_loop().optimizer;
        let w: Vec<Tensor<F>> = match opt {
            InnerOptimizer::Sgd { lr } => {
                let a = F::from_f64(*lr);
                cot.phi.iter().map(|u| u.map(|x| a * x)).collect()
            }
            InnerOptimizer::MetaSgd { lr_index } => cot
                .phi
                .iter()
                .enumerate()
                .map(|(i, u)| {
                    let alpha = meta_sgd_steps(theta, lr_index, i, u);
                    zip_map(u, alpha, |x, a| a * x)
                })
                .collect(),
            InnerOptimizer::Momentum { lr, .. } => {
                let a = F::from_f64(*lr);
                cot.velocity
                    .iter()
                    .zip(&cot.phi)
                    .map(|(uv, u)| zip_map(uv, u, |v, x| v - a * x))
                    .collect()
            }
        };
        let out = self.inner_hvp(problem, task, j, theta, &prev.phi, &w, None)?;
        match opt {
            InnerOptimizer::Sgd { .. } | InnerOptimizer::MetaSgd { .. } => {
                if let InnerOptimizer::MetaSgd { lr_index } = opt {
                    // ∂φ_j/∂α_i = −g_i elementwise, with the cotangent ū_j (before update).
                    for (i, (u, g)) in cot.phi.iter().zip(&out.grad_phi).enumerate() {
                        let ga = g_theta[lr_index[i]].data_mut();
                        for ((x, &ui), &gi) in ga.iter_mut().zip(u.data()).zip(g.data()) {
                            *x -= gi * ui;
                        }
                    }
                }
                for (u, hw) in cot.phi.iter_mut().zip(&out.tangent_phi) {
                    sub_in_place(u, hw);
                }
                for (g, mw) in g_theta.iter_mut().zip(&out.tangent_theta) {
                    sub_in_place(g, mw);
                }
            }
            InnerOptimizer::Momentum { beta, .. } => {
                let b = F::from_f64(*beta);
                for (u, hw) in cot.phi.iter_mut().zip(&out.tangent_phi) {
                    add_in_place(u, hw);
                }
                for (uv, wi) in cot.velocity.iter_mut().zip(&w) {
                    *uv = wi.map(|x| b * x);
                }
                for (g, mw) in g_theta.iter_mut().zip(&out.tangent_theta) {
                    add_in_place(g, mw);
                }
            }
        }
        if with_inner_loss {
            for (u, g) in cot.phi.iter_mut().zip(&out.grad_phi) {
                add_in_place(u, g);
            }
            for (g, gt) in g_theta.iter_mut().zip(&out.grad_theta) {
                add_in_place(g, gt);
            }
        }
        if !cot
            .phi
            .iter()
            .chain(&cot.velocity)
            .chain(g_theta.iter())
            .all(|t| t.is_finite())
        {
            return Err(non_finite("adjoint", j));
        }
        Ok(())
    }
}

#[track_caller]
pub(crate) fn meta_sgd_steps<'a, F: Float>(
    theta: &'a [Tensor<F>],
    lr_index: &[usize],
    i: usize,
    like: &Tensor<F>,
) -> &'a Tensor<F> {
    let k = *lr_index.get(i).unwrap_or_else(|| {
        panic!(
            "MetaSgd: lr_index has {} entries but φ tensor {i} needs one",
            lr_index.len()
        )
    });
    let alpha = theta.get(k).unwrap_or_else(|| {
        panic!(
            "MetaSgd: lr_index[{i}] = {k} but θ has {} tensors",
            theta.len()
        )
    });
    assert_eq!(
        alpha.shape(),
        like.shape(),
        "MetaSgd: step tensor θ[{k}] {:?} but φ tensor {i} {:?}",
        alpha.shape(),
        like.shape()
    );
    alpha
}

fn dual_leaves<'t, F: Float>(
    t: &'t Tape<Dual<F>>,
    x: &[Tensor<F>],
    v: Option<&[Tensor<F>]>,
    buf: &mut Vec<Dual<F>>,
) -> Vec<Var<'t, Dual<F>>> {
    x.iter()
        .enumerate()
        .map(|(i, xi)| {
            buf.clear();
            match v {
                Some(v) => {
                    assert_eq!(
                        v[i].shape(),
                        xi.shape(),
                        "inner_hvp: point {:?} but tangent {:?}",
                        xi.shape(),
                        v[i].shape()
                    );
                    buf.extend(
                        xi.data()
                            .iter()
                            .zip(v[i].data())
                            .map(|(&a, &b)| Dual::new(a, b)),
                    );
                }
                None => buf.extend(xi.data().iter().map(|&a| Dual::constant(a))),
            }
            t.leaf(xi.shape(), buf, true)
        })
        .collect()
}

pub(crate) fn zip_map<F: Float>(a: &Tensor<F>, b: &Tensor<F>, f: impl Fn(F, F) -> F) -> Tensor<F> {
    Tensor::new(
        a.shape(),
        a.data()
            .iter()
            .zip(b.data())
            .map(|(&x, &y)| f(x, y))
            .collect(),
    )
}

pub(crate) fn add_in_place<F: Float>(a: &mut Tensor<F>, b: &Tensor<F>) {
    for (x, &y) in a.data_mut().iter_mut().zip(b.data()) {
        *x += y;
    }
}

pub(crate) fn sub_in_place<F: Float>(a: &mut Tensor<F>, b: &Tensor<F>) {
    for (x, &y) in a.data_mut().iter_mut().zip(b.data()) {
        *x -= y;
    }
}

/// F(θ) for one task: L_out(θ, φ_r(θ)) after the full inner loop.
///
/// # Errors
/// [`BloError::NonFinite`] naming the step where a loss or gradient became
/// non-finite; invalid inner-loop settings.
pub fn meta_loss<F: Float, P: Problem<F>>(
    problem: &P,
    task: &P::Task,
    theta: &[Tensor<F>],
) -> Result<F, BloError> {
    let (phi_r, _) = rollout(problem, task, theta)?;
    let mut ws = InnerWorkspace::cached();
    let l = ws.outer_loss(problem, task, theta, &phi_r.phi);
    ws.recycle();
    l
}

/// Σ_{j=1}^r L_in(θ, φ_{j−1}(θ); τ, j): the summed inner losses along the
/// trajectory, the meta-objective whose first-order gradient is Reptile's
/// direction (see [`crate::ReptileExact`]).
///
/// # Errors
/// As [`meta_loss`].
pub fn summed_inner_loss<F: Float, P: Problem<F>>(
    problem: &P,
    task: &P::Task,
    theta: &[Tensor<F>],
) -> Result<F, BloError> {
    Ok(rollout(problem, task, theta)?
        .1
        .iter()
        .fold(F::zero(), |a, &l| a + l))
}

/// The inner rollout: state_r and the inner losses L_in(θ, φ_{j−1}; τ, j),
/// j = 1..=r.
///
/// # Errors
/// As [`meta_loss`].
pub fn rollout<F: Float, P: Problem<F>>(
    problem: &P,
    task: &P::Task,
    theta: &[Tensor<F>],
) -> Result<(State<F>, Vec<F>), BloError> {
    let inner = problem.inner_loop();
    inner.validate()?;
    let mut ws = InnerWorkspace::cached();
    let mut run = || {
        let mut s = ws.initial_state(problem, task, theta)?;
        let mut losses = Vec::with_capacity(inner.steps);
        for j in 1..=inner.steps {
            losses.push(ws.step_in_place(problem, task, j, theta, &mut s)?);
        }
        Ok((s, losses))
    };
    let out = run();
    ws.recycle();
    out
}
