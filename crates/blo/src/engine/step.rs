//! The inner loop and its building blocks: one forward step, one adjoint step,
//! the Hessian-vector product, the outer gradient and the VJP/JVP through Φ_0.
//!
//! Every state is produced by [`InnerWorkspace::step_in_place`] (the single-step
//! forward function S(θ, state_{j−1}) → state_j), or by
//! [`InnerWorkspace::advance`], its steps with θ and φ kept on the tape, bit
//! for bit the same, so a state recomputed from a checkpoint is bit-identical
//! to the one of the first sweep. Every adjoint step
//! is one forward-over-reverse pass ([`InnerWorkspace::inner_hvp`]) at the state
//! it needs: its primal part is ∇L_in, its tangent part is H_φφ w (on φ) and
//! the mixed product M w = ∂²L_in/∂θ∂φ · w (on θ). The tapes are cleared and
//! reused, so a long inner loop does not grow them.
//!
//! SGD, Meta-SGD and momentum have hand-derived steps (docs/math.md §2); an
//! [`crate::InnerRule`]'s forward, adjoint and tangent steps are derived from
//! its one step by `hvp`'s passes (docs/math.md §12).

use std::cell::Ref;

use hvp::{Leaves, Pass, Seed, Workspace};
use smallvec::SmallVec;
use tape::kernels::all_finite;
use tape::{Dual, Float, Real, Shape, Tensor};

use crate::engine::linear::LinearStep;
use crate::engine::store::refit;
use crate::engine::sweep::SweepBuffers;
use crate::error::BloError;
use crate::problem::{InnerOptimizer, Problem};
use crate::rules::{check_step_shapes, Rule, Segments};

/// An inner state: the weights φ and the optimiser's extra state e (the
/// velocity for momentum, Adam's moments, whatever an [`crate::InnerRule`]
/// carries; see [`crate::InnerLoop::extra_state`]).
#[derive(Clone, Debug, PartialEq)]
pub struct State<F: Float> {
    /// φ, one tensor per φ tensor of the problem.
    pub phi: Vec<Tensor<F>>,
    /// The extra state e (zeros at step 0; empty for SGD and Meta-SGD).
    pub extra: Vec<Tensor<F>>,
}

impl<F: Float> State<F> {
    /// Bytes held by the state's elements.
    pub fn bytes(&self) -> usize {
        let n: usize = self.phi.iter().chain(&self.extra).map(|t| t.numel()).sum();
        n * std::mem::size_of::<F>()
    }

    /// Whether every element is finite.
    pub fn is_finite(&self) -> bool {
        tensors_finite(self.phi.iter().chain(&self.extra))
    }
}

/// A cotangent on an inner state (the adjoint variable ū of the sweep), with
/// the same layout as [`State`].
#[derive(Clone, Debug, PartialEq)]
pub struct Cotangent<F: Float> {
    /// ū on φ.
    pub phi: Vec<Tensor<F>>,
    /// ū on the extra state (empty when there is none).
    pub extra: Vec<Tensor<F>>,
}

impl<F: Float> Cotangent<F> {
    /// Makes this cotangent zeros shaped like `s`, reusing its tensors where
    /// the shapes match.
    pub(crate) fn zero_like(&mut self, s: &State<F>) {
        zero_tensors(&mut self.phi, &s.phi);
        zero_tensors(&mut self.extra, &s.extra);
    }

    /// Makes this cotangent shaped like `s` for the turn of the outer
    /// objective: ū on the extra state zeros (L_out reads φ only), ū_φ's
    /// values stale (the outer gradient overwrites every element).
    pub(crate) fn outer_like(&mut self, s: &State<F>) {
        shape_like(&mut self.phi, &s.phi);
        zero_tensors(&mut self.extra, &s.extra);
    }

    /// Zero cotangent shaped like `s`.
    pub fn zeros_like(s: &State<F>) -> Self {
        Cotangent {
            phi: s.phi.iter().map(|t| Tensor::zeros(t.shape())).collect(),
            extra: s.extra.iter().map(|t| Tensor::zeros(t.shape())).collect(),
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

/// The step calculus of the inner loop: one forward step, one adjoint step,
/// the HVP pass, the outer gradient and the VJP/JVP through Φ_0, each one of
/// `hvp`'s passes ([`hvp::Workspace`]) on reusable tapes. One per thread;
/// cheap to create, and clearing keeps the tapes' capacity. Besides the tapes
/// it keeps the tangent w of [`InnerWorkspace::adjoint_step`], so a warm
/// adjoint step allocates nothing.
#[derive(Debug, Default)]
pub struct InnerWorkspace<F: Float> {
    /// The tapes: every pass of this workspace is one of `hvp`'s passes
    /// (and the resident SGD steps of [`super::resident`] use the primal
    /// tape directly).
    pub(super) ws: Workspace<F>,
    /// The adjoint step's tangent w, concatenated in φ order.
    w: Vec<F>,
    /// A rule's step: g_j, one tensor per φ tensor.
    g: Vec<Tensor<F>>,
    /// A rule's adjoint step: H w (plus ∇_φ L_in for the inner-sum
    /// objective), concatenated in φ order.
    hw: Vec<F>,
    /// The rule whose [`crate::InnerRule::constant_grad_coefficient`] claim
    /// this workspace has checked.
    checked: Option<Rule>,
    /// An elementwise rule's flat inputs (docs/math.md §12, "Flat steps").
    pub(super) flat: Flat<F>,
    /// The rule whose [`crate::InnerRule::elementwise`] claim this workspace
    /// has checked.
    checked_flat: Option<Rule>,
    /// A fixed linear rule's map (docs/math.md §12, "Fixed linear steps").
    pub(super) linear: LinearStep<F>,
}

/// An elementwise rule's step sees φ, g and ū_φ concatenated ([`Segments`]):
/// the layout and the buffers, reused from step to step.
#[derive(Debug, Default)]
pub(super) struct Flat<F: Float> {
    pub(super) segments: Segments,
    /// φ_{j−1} concatenated (one `[N]` tensor; its values are stale, see
    /// [`RuleSide`]).
    phi: Vec<Tensor<F>>,
}

/// The state as a rule's step sees it (docs/math.md §12, "Flat steps"): φ per tensor and
/// `segments` `None`, or an elementwise rule's φ concatenated, with its
/// layout. `extra` is the extra state as stored. `phi` gives the step's φ
/// shapes; its values are those of `parts` (for a flat step, `phi`'s one
/// `[N]` tensor may hold stale values: the step's leaf of φ is filled from
/// `parts`, φ's tensors, concatenated in place).
#[derive(Clone, Copy)]
pub(super) struct RuleSide<'a, F: Float> {
    pub(super) phi: &'a [Tensor<F>],
    pub(super) parts: &'a [Tensor<F>],
    pub(super) extra: &'a [Tensor<F>],
    pub(super) segments: Option<&'a Segments>,
}

impl<'a, F: Float> RuleSide<'a, F> {
    /// Where θ, φ, e and g start among the step's inputs (θ, φ, e, g) with
    /// `nt` θ tensors: the ends of θ, φ and e.
    fn split_points(&self, nt: usize) -> (usize, usize, usize) {
        let b = nt + self.phi.len();
        (nt, b, b + self.extra.len())
    }
}

/// Borrowed adjoints of a tensor list; `None` is a structural zero.
pub(crate) type Adjoints<'t, T> = SmallVec<[Option<Ref<'t, [T]>>; 16]>;

pub(crate) fn non_finite(what: &'static str, step: usize) -> BloError {
    BloError::NonFinite {
        what,
        task: 0,
        step,
    }
}

/// Whether every element of every tensor is finite
/// ([`tape::kernels::all_finite`]: a branch-free check per block of 256 at the
/// kernel family's vector width).
pub(crate) fn tensors_finite<'a, T: Float + 'a>(
    ts: impl IntoIterator<Item = &'a Tensor<T>>,
) -> bool {
    ts.into_iter().all(|t| all_finite(t.data()))
}

impl<F: Float> InnerWorkspace<F> {
    /// Empty tapes.
    pub fn new() -> Self {
        Self::default()
    }

    /// φ_0 = Φ_0(θ) (extra state zero). Not counted as a step.
    ///
    /// # Errors
    /// [`BloError::NonFinite`] (step 0) if φ_0 is not finite.
    pub fn initial_state<P: Problem<F>>(
        &mut self,
        problem: &P,
        task: &P::Task,
        theta: &[Tensor<F>],
    ) -> Result<State<F>, BloError> {
        let mut s = State {
            phi: Vec::new(),
            extra: Vec::new(),
        };
        self.initial_state_into(problem, task, theta, &mut s)?;
        Ok(s)
    }

    /// [`InnerWorkspace::initial_state`] written into `s` (whose tensors are
    /// reused where the shapes match). On error `s` holds unspecified values.
    pub(crate) fn initial_state_into<P: Problem<F>>(
        &mut self,
        problem: &P,
        task: &P::Task,
        theta: &[Tensor<F>],
        s: &mut State<F>,
    ) -> Result<(), BloError> {
        self.ws.eval(theta, |t, th| {
            let phi0 = problem.initial_state(t, task, th);
            s.phi.truncate(phi0.len());
            for (i, v) in phi0.iter().enumerate() {
                let shape = v.shape();
                match s.phi.get_mut(i) {
                    Some(p) => {
                        refit(p, shape);
                        p.data_mut().copy_from_slice(&t.value_ref(*v));
                    }
                    None => s.phi.push(v.value()),
                }
            }
        });
        match &problem.inner_loop().optimizer {
            InnerOptimizer::Momentum { .. } => zero_tensors(&mut s.extra, &s.phi),
            InnerOptimizer::Rule(rule) => {
                let phi: SmallVec<[Shape; 16]> = s.phi.iter().map(|p| p.shape()).collect();
                zero_shapes(&mut s.extra, rule.stored_extra_state(&phi).into_iter());
            }
            InnerOptimizer::Sgd { .. } | InnerOptimizer::MetaSgd { .. } => s.extra.clear(),
        }
        if !s.is_finite() {
            return Err(non_finite("initial state", 0));
        }
        Ok(())
    }

    /// One inner step j (1-based) in place: state_{j−1} → state_j, by one
    /// reverse sweep for g_j = ∇_φ L_in(θ, φ_{j−1}; τ, j) and the optimiser's
    /// update (see [`InnerOptimizer`]). Returns L_in(θ, φ_{j−1}). This is the
    /// only function that produces states (with [`InnerWorkspace::advance`],
    /// which gives its states bit for bit).
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
        if let InnerOptimizer::Rule(rule) = &problem.inner_loop().optimizer {
            return self.rule_forward(problem, task, rule, j, theta, state);
        }
        let nt = theta.len();
        let pass = self.ws.grad_pass(
            theta
                .iter()
                .map(|x| (x, false))
                .chain(state.phi.iter().map(|x| (x, true))),
            |t, v| problem.inner_loss(t, task, j, &v[..nt], &v[nt..]),
        );
        let value = pass.value();
        if !value.is_finite() {
            return Err(non_finite("inner loss", j));
        }
        // The gradients are read in place from the tape (no copy); every one is
        // checked before the state is touched. A structural zero (no adjoint
        // reached φ_i) is applied as zeros, as a copied gradient would be.
        let grads: Adjoints<'_, F> = (nt..pass.inputs().len()).map(|i| pass.adjoint(i)).collect();
        let opt = &problem.inner_loop().optimizer;
        // Meta-SGD and momentum check every g before the state is touched
        // (at the family's vector width); SGD checks g in its update's pass,
        // and on a non-finite g φ is restored from the pass's leaves (their
        // copy of φ_{j−1}).
        let sgd = matches!(opt, InnerOptimizer::Sgd { .. });
        if !sgd && !grads.iter().flatten().all(|g| all_finite(g)) {
            return Err(non_finite("inner gradient", j));
        }
        let mut finite = true;
        let State { phi, extra } = state;
        for (k, (p, g)) in phi.iter_mut().zip(&grads).enumerate() {
            let v = extra.get_mut(k).map(|v| v.data_mut());
            let shape = p.shape();
            finite &= update_tensor(opt, theta, k, || shape, p.data_mut(), g.as_deref(), v);
        }
        if !finite {
            for (p, &leaf) in phi.iter_mut().zip(&pass.inputs()[nt..]) {
                p.data_mut().copy_from_slice(&pass.tape().value_ref(leaf));
            }
            return Err(non_finite("inner gradient", j));
        }
        Ok(value)
    }

    /// A rule's forward step, state_{j−1} → state_j = R(θ, φ, e, g_j; j):
    /// one gradient pass of L_in for g_j ([`inner_grad_pass`]), then the rule
    /// recorded on the same tape, on the pass's own θ and φ leaves (so θ and
    /// φ are not copied again), its outputs' shapes checked, and the outputs
    /// copied into `state` and checked for finiteness in the same pass
    /// (`state` restored from the step's input leaves if not finite).
    /// Returns L_in(θ, φ_{j−1}).
    ///
    /// # Errors
    /// [`BloError::NonFinite`] naming step j if the loss, the gradient or the
    /// new state is not finite (`state` is then unchanged);
    /// [`BloError::InvalidHyperparameter`] naming the rule, the tensor and
    /// both shapes if the step returns a state of another shape.
    fn rule_forward<P: Problem<F>>(
        &mut self,
        problem: &P,
        task: &P::Task,
        rule: &Rule,
        j: usize,
        theta: &[Tensor<F>],
        state: &mut State<F>,
    ) -> Result<F, BloError> {
        if self.prepare_linear(rule, j, theta, state)? {
            return self.linear_forward(problem, task, j, theta, state);
        }
        let flat = rule.elementwise();
        let segments = flat.then_some(&self.flat.segments);
        let nt = theta.len();
        let (value, pass) = inner_grad_pass(
            &mut self.ws,
            &mut self.g,
            problem,
            task,
            j,
            theta,
            &state.phi,
            false,
            flat,
        )?;
        let t = pass.tape();
        let vars = rule_inputs(t, pass.inputs(), nt, segments, state, false, j)?;
        let side = RuleSide {
            phi: if flat { &self.flat.phi } else { &state.phi },
            parts: &state.phi,
            extra: &state.extra,
            segments,
        };
        let out = record_rule(t, rule, j, nt, side, &vars)?;
        // Where φ and e start among the step's inputs (θ, φ, e, g).
        let (a, b, _) = side.split_points(nt);
        let mut ok = true;
        if flat {
            let y = t.value_ref(out.phi[0]);
            let mut at = 0;
            for x in state.phi.iter_mut() {
                let n = x.numel();
                ok &= copy_finite(x.data_mut(), Some(&y[at..at + n]));
                at += n;
            }
        } else {
            for (x, &v) in state.phi.iter_mut().zip(&out.phi) {
                ok &= copy_finite(x.data_mut(), Some(&t.value_ref(v)));
            }
        }
        for (x, &v) in state.extra.iter_mut().zip(&out.extra) {
            ok &= copy_finite(x.data_mut(), Some(&t.value_ref(v)));
        }
        if !ok {
            // Back to s_{j−1}, from the step's input leaves (φ, then e).
            if flat {
                scatter(&t.value_ref(vars[a]), &mut state.phi);
            } else {
                for (x, &v) in state.phi.iter_mut().zip(&vars[a..b]) {
                    x.data_mut().copy_from_slice(&t.value_ref(v));
                }
            }
            for (x, &v) in state.extra.iter_mut().zip(&vars[b..]) {
                x.data_mut().copy_from_slice(&t.value_ref(v));
            }
            return Err(non_finite("inner state", j));
        }
        Ok(value)
    }

    /// Prepares a rule's step j at `state` ([`InnerWorkspace::prepare_flat`])
    /// and, for an elementwise rule that declares a fixed linear step
    /// ([`crate::InnerRule::fixed_linear`]), its map D ([`LinearStep::prepare`]).
    /// Returns whether the step is fixed linear (D is then ready).
    ///
    /// # Errors
    /// A false elementwise or fixed-linear claim.
    pub(super) fn prepare_linear(
        &mut self,
        rule: &Rule,
        j: usize,
        theta: &[Tensor<F>],
        state: &State<F>,
    ) -> Result<bool, BloError> {
        if !(self.prepare_flat(rule, j, theta, state)? && rule.fixed_linear()) {
            return Ok(false);
        }
        let groups = state.extra.len();
        let segments = &self.flat.segments;
        self.linear
            .prepare(&mut self.ws, rule, j, theta, segments, groups)?;
        Ok(true)
    }

    /// A fixed linear rule's forward step ([`crate::InnerRule::fixed_linear`],
    /// docs/math.md §12 "Fixed linear steps"), D prepared
    /// ([`InnerWorkspace::prepare_linear`]): one gradient pass of L_in, its
    /// φ adjoints read in place as g_j and checked, then state_j = D (φ, e,
    /// g_j) by passes over the state ([`LinearStep::step`]), written only if
    /// finite. Returns L_in(θ, φ_{j−1}).
    ///
    /// # Errors
    /// As [`InnerWorkspace::rule_forward`].
    fn linear_forward<P: Problem<F>>(
        &mut self,
        problem: &P,
        task: &P::Task,
        j: usize,
        theta: &[Tensor<F>],
        state: &mut State<F>,
    ) -> Result<F, BloError> {
        let segments = &self.flat.segments;
        let nt = theta.len();
        let pass = self.ws.grad_pass(
            theta
                .iter()
                .map(|x| (x, false))
                .chain(state.phi.iter().map(|x| (x, true))),
            |t, v| problem.inner_loss(t, task, j, &v[..nt], &v[nt..]),
        );
        let value = pass.value();
        if !value.is_finite() {
            return Err(non_finite("inner loss", j));
        }
        let grads: Adjoints<'_, F> = (nt..pass.inputs().len()).map(|i| pass.adjoint(i)).collect();
        if !grads.iter().flatten().all(|g| all_finite(g)) {
            return Err(non_finite("inner gradient", j));
        }
        let g: SmallVec<[Option<&[F]>; 16]> = grads.iter().map(|g| g.as_deref()).collect();
        if !self.linear.step(segments, &g, state) {
            return Err(non_finite("inner state", j));
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
        let nt = theta.len();
        let l = self.ws.eval(theta.iter().chain(phi), |t, v| {
            problem.outer_loss(t, task, &v[..nt], &v[nt..]).item()
        });
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
        let mut gt: Vec<Tensor<F>> = theta.iter().map(|x| Tensor::zeros(x.shape())).collect();
        let mut gp: Vec<Tensor<F>> = phi.iter().map(|x| Tensor::zeros(x.shape())).collect();
        let loss = self.outer_grad_into(problem, task, theta, phi, &mut gt, &mut gp)?;
        Ok(OuterGrad {
            loss,
            theta: gt,
            phi: gp,
        })
    }

    /// [`InnerWorkspace::outer_grad`] written into `g_theta` and `g_phi` (shaped
    /// like θ and φ; overwritten). Returns L_out. On error the gradients hold
    /// unspecified values.
    ///
    /// # Panics
    /// If a gradient tensor's size differs from its variable's.
    #[track_caller]
    pub(crate) fn outer_grad_into<P: Problem<F>>(
        &mut self,
        problem: &P,
        task: &P::Task,
        theta: &[Tensor<F>],
        phi: &[Tensor<F>],
        g_theta: &mut [Tensor<F>],
        g_phi: &mut [Tensor<F>],
    ) -> Result<F, BloError> {
        let step = problem.inner_loop().steps + 1;
        let nt = theta.len();
        let pass = self
            .ws
            .grad_pass(theta.iter().chain(phi).map(|x| (x, true)), |t, v| {
                problem.outer_loss(t, task, &v[..nt], &v[nt..])
            });
        let value = pass.value();
        if !value.is_finite() {
            return Err(non_finite("outer loss", step));
        }
        let t = pass.tape();
        for (g, &v) in g_theta
            .iter_mut()
            .chain(g_phi.iter_mut())
            .zip(pass.inputs())
        {
            t.grad_into(v, g.data_mut());
        }
        if !tensors_finite(g_theta.iter().chain(g_phi.iter())) {
            return Err(non_finite("outer gradient", step));
        }
        Ok(value)
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
        self.ws.vjp_add(
            theta,
            |t, th| Leaves::from_vec(problem.initial_state(t, task, th)),
            u,
            g_theta,
        );
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
        let mut out = Vec::new();
        self.ws.jvp_into(
            theta,
            theta_dot,
            |t, th| Leaves::from_vec(problem.initial_state(t, task, th)),
            &mut out,
        );
        out
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
        let nt = theta.len();
        let pass = self.hvp_pass(problem, task, j, theta, phi, v_phi, v_theta)?;
        let loss = pass.value().v;
        let split = |range: std::ops::Range<usize>| {
            let mut g = Vec::with_capacity(range.len());
            let mut d = Vec::with_capacity(range.len());
            for i in range {
                let shape = pass.inputs()[i].shape();
                match pass.adjoint(i) {
                    Some(a) => {
                        g.push(Tensor::new(shape, a.iter().map(|x| x.v).collect()));
                        d.push(Tensor::new(shape, a.iter().map(|x| x.d).collect()));
                    }
                    None => {
                        g.push(Tensor::zeros(shape));
                        d.push(Tensor::zeros(shape));
                    }
                }
            }
            (g, d)
        };
        let (grad_theta, tangent_theta) = split(0..nt);
        let (grad_phi, tangent_phi) = split(nt..nt + phi.len());
        Ok(InnerHvp {
            loss,
            grad_theta,
            grad_phi,
            tangent_theta,
            tangent_phi,
        })
    }

    /// The pass of [`InnerWorkspace::inner_hvp`] without copying its results
    /// out: `hvp`'s dual pass over the inputs (θ, φ), whose adjoints hold
    /// ∇L_in in `.v` and the tangent products in `.d` (inputs 0..|θ| are θ,
    /// then φ; `None` meaning zeros).
    ///
    /// # Errors
    /// As [`InnerWorkspace::inner_hvp`].
    #[track_caller]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn hvp_pass<P: Problem<F>>(
        &mut self,
        problem: &P,
        task: &P::Task,
        j: usize,
        theta: &[Tensor<F>],
        phi: &[Tensor<F>],
        v_phi: &[Tensor<F>],
        v_theta: Option<&[Tensor<F>]>,
    ) -> Result<Pass<'_, Dual<F>>, BloError> {
        let v_theta = v_theta.map_or(Tangent::Zero, Tangent::Tensors);
        dual_pass(
            &mut self.ws,
            problem,
            task,
            j,
            theta,
            phi,
            v_theta,
            Tangent::Tensors(v_phi),
            (false, &Default::default()),
        )
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
    /// Allocates nothing once the workspace's buffers have grown: w lives in
    /// the workspace and the products are read in place from the tape.
    ///
    /// # Errors
    /// [`BloError::NonFinite`] naming step j if the loss or the new cotangent is
    /// not finite.
    ///
    /// # Panics
    /// If the cotangent's tensors (or, for momentum, its velocity tensors) do
    /// not match `prev.phi` in number and shapes.
    #[track_caller]
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
        self.adjoint_step_at(
            problem,
            task,
            (j, false),
            theta,
            prev,
            cot,
            g_theta,
            with_inner_loss,
        )
    }

    /// [`InnerWorkspace::adjoint_step`], where `block_summed` says that the
    /// caller reads ū_0 (the cotangent after step j = 1) only through
    /// (∂Φ_0/∂θ)ᵀ ū_0. For SGD with φ_0 tiles of θ
    /// ([`Problem::initial_state_tiles`]) step 1's pass is then recorded by
    /// [`Problem::inner_loss_at_tiles`], whose φ adjoints are their block
    /// sums in block 0; block 0 of ū alone takes them (ū_0,0 = ū_1,0 − Σ_b
    /// (H w)_b, ū_0,b = ū_1,b for b > 0: the same block sums), and (without
    /// the inner loss) φ's adjoints are read in their tangent parts only
    /// ([`hvp::Seed::HvOnly`]).
    #[track_caller]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn adjoint_step_at<P: Problem<F>>(
        &mut self,
        problem: &P,
        task: &P::Task,
        (j, block_summed): (usize, bool),
        theta: &[Tensor<F>],
        prev: &State<F>,
        cot: &mut Cotangent<F>,
        g_theta: &mut [Tensor<F>],
        with_inner_loss: bool,
    ) -> Result<(), BloError> {
        // Where debug assertions are on, a step recorded by
        // `Problem::inner_loss_at_tiles` is taken again the ordinary way, from
        // copies, and the two compared (`tiles::assert_block_sums_match`): the
        // hook is a promise nothing else checks.
        #[cfg(debug_assertions)]
        let reference = (block_summed
            && j == 1
            && matches!(problem.inner_loop().optimizer, InnerOptimizer::Sgd { .. }))
        .then(|| super::tiles::tiles(problem, task).map(|b| (b, cot.clone(), g_theta.to_vec())))
        .flatten();
        let summed = self.adjoint_step_with(
            problem,
            task,
            (j, block_summed),
            theta,
            prev,
            cot,
            g_theta,
            with_inner_loss,
        )?;
        #[cfg(debug_assertions)]
        if let (true, Some((b, mut c, mut g))) = (summed, reference) {
            self.adjoint_step_with(
                problem,
                task,
                (j, false),
                theta,
                prev,
                &mut c,
                &mut g,
                with_inner_loss,
            )?;
            super::tiles::assert_block_sums_match(b, (&cot.phi, g_theta), (&c.phi, &g));
        }
        let _ = summed;
        Ok(())
    }

    /// [`InnerWorkspace::adjoint_step_at`] without its check; returns whether
    /// the step was recorded by [`Problem::inner_loss_at_tiles`].
    #[track_caller]
    #[allow(clippy::too_many_arguments)]
    fn adjoint_step_with<P: Problem<F>>(
        &mut self,
        problem: &P,
        task: &P::Task,
        (j, block_summed): (usize, bool),
        theta: &[Tensor<F>],
        prev: &State<F>,
        cot: &mut Cotangent<F>,
        g_theta: &mut [Tensor<F>],
        with_inner_loss: bool,
    ) -> Result<bool, BloError> {
        let opt = &problem.inner_loop().optimizer;
        check_like("adjoint_step: cotangent", &cot.phi, &prev.phi);
        if let InnerOptimizer::Rule(rule) = opt {
            check_like(
                "adjoint_step: extra-state cotangent",
                &cot.extra,
                &prev.extra,
            );
            return self
                .rule_adjoint(
                    problem,
                    task,
                    rule,
                    j,
                    theta,
                    prev,
                    cot,
                    g_theta,
                    with_inner_loss,
                )
                .map(|()| false);
        }
        let w = &mut self.w;
        w.clear();
        match opt {
            InnerOptimizer::Sgd { lr } => {
                let a = F::from_f64(*lr);
                for u in &cot.phi {
                    w.extend(u.data().iter().map(|&x| a * x));
                }
            }
            InnerOptimizer::MetaSgd { lr_index } => {
                for (i, u) in cot.phi.iter().enumerate() {
                    let alpha = meta_sgd_steps(theta, lr_index, i, u);
                    w.extend(u.data().iter().zip(alpha.data()).map(|(&x, &a)| a * x));
                }
            }
            InnerOptimizer::Momentum { lr, .. } => {
                check_like("adjoint_step: velocity cotangent", &cot.extra, &prev.phi);
                let a = F::from_f64(*lr);
                for (uv, u) in cot.extra.iter().zip(&cot.phi) {
                    w.extend(uv.data().iter().zip(u.data()).map(|(&v, &x)| v - a * x));
                }
            }
            InnerOptimizer::Rule(_) => unreachable!("a rule's adjoint is taken above"),
        }
        let blocks = super::tiles::tiles(problem, task)
            .filter(|_| block_summed && j == 1 && matches!(opt, InnerOptimizer::Sgd { .. }));
        let at_tiles = blocks.is_some();
        let v_phi = if at_tiles && !with_inner_loss {
            Tangent::FlatHvOnly(&self.w)
        } else {
            Tangent::Flat(&self.w)
        };
        let summed = std::cell::Cell::new(false);
        let pass = dual_pass(
            &mut self.ws,
            problem,
            task,
            j,
            theta,
            &prev.phi,
            Tangent::Zero,
            v_phi,
            (at_tiles, &summed),
        )?;
        // Recorded by `inner_loss_at_tiles`: φ's adjoints are block sums in
        // block 0 (of `blocks`), the other blocks unspecified, so only block 0
        // of ū takes them.
        let per_block = if summed.get() { blocks.unwrap_or(1) } else { 1 };
        let head = |x: usize| x / per_block;
        let w = &self.w[..];
        // The products, read in place from the tape: .v is ∇L_in, .d is H w
        // (on φ) and M w (on θ). A structural zero is applied as zeros.
        let nt = theta.len();
        let on_phi: Adjoints<'_, Dual<F>> =
            (nt..nt + prev.phi.len()).map(|i| pass.adjoint(i)).collect();
        let on_theta: Adjoints<'_, Dual<F>> = (0..nt).map(|i| pass.adjoint(i)).collect();
        let zero = Dual::new(F::zero(), F::zero());
        match opt {
            InnerOptimizer::Sgd { .. } | InnerOptimizer::MetaSgd { .. } => {
                if let InnerOptimizer::MetaSgd { lr_index } = opt {
                    // ∂φ_j/∂α_i = −g_i elementwise, with the cotangent ū_j (before update).
                    for (i, (u, a)) in cot.phi.iter().zip(&on_phi).enumerate() {
                        let ga = g_theta[lr_index[i]].data_mut();
                        let mut ui = u.data().iter();
                        update(ga, a.as_deref(), zero, |x, gi| {
                            *x -= gi.v * *ui.next().expect("ū has α's shape");
                        });
                    }
                }
                for (u, a) in cot.phi.iter_mut().zip(&on_phi) {
                    let n = head(u.numel());
                    let u = u.data_mut();
                    update(&mut u[..n], a.as_deref().map(|a| &a[..n]), zero, |x, hw| {
                        *x -= hw.d
                    });
                }
                for (g, a) in g_theta.iter_mut().zip(&on_theta) {
                    update(g.data_mut(), a.as_deref(), zero, |x, mw| *x -= mw.d);
                }
            }
            InnerOptimizer::Rule(_) => unreachable!("a rule's adjoint is taken above"),
            InnerOptimizer::Momentum { beta, .. } => {
                let b = F::from_f64(*beta);
                for (u, a) in cot.phi.iter_mut().zip(&on_phi) {
                    update(u.data_mut(), a.as_deref(), zero, |x, hw| *x += hw.d);
                }
                let mut rest = w;
                for uv in &mut cot.extra {
                    let (wi, tail) = rest.split_at(uv.numel());
                    rest = tail;
                    for (x, &wk) in uv.data_mut().iter_mut().zip(wi) {
                        *x = b * wk;
                    }
                }
                for (g, a) in g_theta.iter_mut().zip(&on_theta) {
                    update(g.data_mut(), a.as_deref(), zero, |x, mw| *x += mw.d);
                }
            }
        }
        if with_inner_loss {
            for (u, a) in cot.phi.iter_mut().zip(&on_phi) {
                let n = head(u.numel());
                let u = u.data_mut();
                update(&mut u[..n], a.as_deref().map(|a| &a[..n]), zero, |x, g| {
                    *x += g.v
                });
            }
            for (g, a) in g_theta.iter_mut().zip(&on_theta) {
                update(g.data_mut(), a.as_deref(), zero, |x, gt| *x += gt.v);
            }
        }
        if !tensors_finite(cot.phi.iter().chain(&cot.extra).chain(g_theta.iter())) {
            return Err(non_finite("adjoint", j));
        }
        Ok(summed.get())
    }
}

impl<F: Float> InnerWorkspace<F> {
    /// Prepares a rule's step at state `prev` (docs/math.md §12, "Flat steps"): for an
    /// elementwise rule ([`crate::InnerRule::elementwise`]), checks its claim
    /// once per workspace and rule ([`InnerWorkspace::check_elementwise`]),
    /// sets the layout of φ and shapes `self.flat.phi` as one `[N]` tensor,
    /// φ concatenated into it with `fill`. Returns whether the step is flat.
    ///
    /// # Errors
    /// A false elementwise claim ([`BloError::InvalidHyperparameter`]).
    fn prepare_flat(
        &mut self,
        rule: &Rule,
        j: usize,
        theta: &[Tensor<F>],
        prev: &State<F>,
    ) -> Result<bool, BloError> {
        if !rule.elementwise() {
            return Ok(false);
        }
        if !self
            .checked_flat
            .as_ref()
            .is_some_and(|r| r.same_object(rule))
        {
            self.check_elementwise(rule, j, theta, prev)?;
            self.checked_flat = Some(rule.clone());
        }
        let shapes: SmallVec<[Shape; 16]> = prev.phi.iter().map(|p| p.shape()).collect();
        if !self.flat.segments.is_of(&shapes) {
            self.flat.segments = Segments::new(&shapes);
        }
        flat_buffer(&mut self.flat.phi, self.flat.segments.numel());
        Ok(true)
    }

    /// A rule's adjoint step (docs/math.md §12). With s_j = R(θ, φ, e, g) and
    /// g = ∇_φ L_in(θ, φ): one reverse sweep of R at (θ, φ_{j−1}, e_{j−1}, g_j)
    /// with cotangent ū_j gives (a_θ, a_φ, a_e, a_g); one dual pass of L_in
    /// with tangent a_g gives H a_g and M a_g; then
    /// ū_{j−1} = (a_φ + H a_g, a_e) and g_θ += a_θ + M a_g.
    ///
    /// g_j comes first from a gradient pass, unless the rule is affine in g:
    /// then a_g does not depend on g, so it is taken from a sweep at g = 0, the
    /// dual pass supplies g_j in its primal part, and the full sweep follows
    /// (which checks that a_g is indeed the same). With a constant coefficient
    /// of g ([`crate::InnerRule::constant_grad_coefficient`]) no part of the
    /// VJP depends on g: the one sweep at g = 0 gives all of it, and no g_j is
    /// needed (the claim is checked once per workspace and rule,
    /// [`InnerWorkspace::check_constant_coefficient`]). An elementwise rule's
    /// sweeps run on φ, g and ū_φ concatenated (docs/math.md §12, "Flat steps").
    #[allow(clippy::too_many_arguments)]
    fn rule_adjoint<P: Problem<F>>(
        &mut self,
        problem: &P,
        task: &P::Task,
        rule: &Rule,
        j: usize,
        theta: &[Tensor<F>],
        prev: &State<F>,
        cot: &mut Cotangent<F>,
        g_theta: &mut [Tensor<F>],
        with_inner_loss: bool,
    ) -> Result<(), BloError> {
        // Only the sweeps of an affine rule read φ as one tensor; a rule not
        // affine in g records its step on the gradient pass's tape, over a
        // leaf of φ concatenated in place.
        let flat = self.prepare_flat(rule, j, theta, prev)?;
        let fl = std::mem::take(&mut self.flat);
        let side = RuleSide {
            phi: if flat { &fl.phi } else { &prev.phi },
            parts: &prev.phi,
            extra: &prev.extra,
            segments: flat.then_some(&fl.segments),
        };
        let out = self.rule_adjoint_on(
            problem,
            task,
            rule,
            j,
            theta,
            prev,
            side,
            cot,
            g_theta,
            with_inner_loss,
        );
        self.flat = fl;
        out
    }

    /// [`InnerWorkspace::rule_adjoint`] with the rule's side of the state
    /// prepared.
    #[allow(clippy::too_many_arguments)]
    fn rule_adjoint_on<P: Problem<F>>(
        &mut self,
        problem: &P,
        task: &P::Task,
        rule: &Rule,
        j: usize,
        theta: &[Tensor<F>],
        prev: &State<F>,
        side: RuleSide<'_, F>,
        cot: &mut Cotangent<F>,
        g_theta: &mut [Tensor<F>],
        with_inner_loss: bool,
    ) -> Result<(), BloError> {
        // A fixed linear step's VJP is D's passes (docs/math.md §12, "Fixed
        // linear steps"); with a constant coefficient, one sweep at g = 0.
        let linear = side.segments.filter(|_| rule.fixed_linear());
        if linear.is_some() || rule.constant_grad_coefficient() {
            if let Some(segments) = linear {
                let groups = side.extra.len();
                self.linear
                    .prepare(&mut self.ws, rule, j, theta, segments, groups)?;
                self.linear.vjp(segments, cot, &mut self.w);
            } else {
                if !self.checked.as_ref().is_some_and(|r| r.same_object(rule)) {
                    self.check_constant_coefficient(rule, j, theta, side)?;
                    self.checked = Some(rule.clone());
                }
                self.rule_vjp(rule, j, theta, side, cot, g_theta, AdjointG::Set)?;
            }
            self.rule_dual(
                problem,
                task,
                j,
                theta,
                prev,
                g_theta,
                Some(&mut cot.phi),
                with_inner_loss,
                false,
            )?;
        } else if rule.affine_in_grad() {
            shape_like(&mut self.g, side.phi);
            self.rule_vjp(rule, j, theta, side, cot, g_theta, AdjointG::Only)?;
            self.rule_dual(
                problem,
                task,
                j,
                theta,
                prev,
                g_theta,
                None,
                with_inner_loss,
                true,
            )?;
            self.rule_vjp(rule, j, theta, side, cot, g_theta, AdjointG::Check)?;
            // ū_φ = a_φ + H w, H w kept from the dual pass (a_φ needed g_j).
            let mut hw = &self.hw[..];
            for u in &mut cot.phi {
                let (h, rest) = hw.split_at(u.numel());
                hw = rest;
                for (x, &y) in u.data_mut().iter_mut().zip(h) {
                    *x += y;
                }
            }
        } else {
            self.rule_grad_vjp(problem, task, rule, j, theta, prev, side, cot, g_theta)?;
            self.rule_dual(
                problem,
                task,
                j,
                theta,
                prev,
                g_theta,
                Some(&mut cot.phi),
                with_inner_loss,
                false,
            )?;
        }
        if !tensors_finite(cot.phi.iter().chain(&cot.extra).chain(g_theta.iter())) {
            return Err(non_finite("adjoint", j));
        }
        Ok(())
    }

    /// The reverse sweep of a rule's step at (θ, φ_{j−1}, e_{j−1}, g) (g in
    /// `self.g`, the rule's side of the state `side`) with cotangent
    /// ū_j = `cot`.
    /// `Only`: a_g into `self.w`, nothing else. `Set`: a_g into `self.w`, and
    /// `Check`: a_g must equal `self.w`; both then add a_θ to `g_theta` and
    /// set `cot` to (a_φ, a_e).
    ///
    /// # Errors
    /// `Check` with a different a_g: the rule claims to be affine in g and is
    /// not ([`BloError::InvalidHyperparameter`] naming it).
    #[allow(clippy::too_many_arguments)]
    fn rule_vjp(
        &mut self,
        rule: &Rule,
        j: usize,
        theta: &[Tensor<F>],
        side: RuleSide<'_, F>,
        cot: &mut Cotangent<F>,
        g_theta: &mut [Tensor<F>],
        mode: AdjointG,
    ) -> Result<(), BloError> {
        // For a_g alone, only g is differentiated.
        let all = mode != AdjointG::Only;
        let cots = (&cot.phi[..], &cot.extra[..]);
        // g = 0 unless checking a_g at g_j (`self.g`, from the dual pass).
        let g = (mode == AdjointG::Check).then_some(&self.g[..]);
        let (pass, vars) = rule_vjp_pass(&mut self.ws, rule, j, theta, side, g, cots, all, None);
        apply_rule_vjp(
            rule,
            pass.tape(),
            &vars,
            theta.len(),
            &mut self.w,
            side.phi,
            cot,
            g_theta,
            mode,
        )
    }

    /// A non-affine rule's reverse sweep, fused with the gradient pass that
    /// gives g_j: the rule is recorded on the gradient pass's tape (on its θ
    /// leaves, and its φ leaves unless the step is flat) and swept from its
    /// outputs with cotangent ū_j = `cot`; then as
    /// [`InnerWorkspace::rule_vjp`] with [`AdjointG::Set`].
    ///
    /// # Errors
    /// [`BloError::NonFinite`] naming step j if L_in or g_j is not finite;
    /// a step returning a state of another shape.
    #[allow(clippy::too_many_arguments)]
    fn rule_grad_vjp<P: Problem<F>>(
        &mut self,
        problem: &P,
        task: &P::Task,
        rule: &Rule,
        j: usize,
        theta: &[Tensor<F>],
        prev: &State<F>,
        side: RuleSide<'_, F>,
        cot: &mut Cotangent<F>,
        g_theta: &mut [Tensor<F>],
    ) -> Result<(), BloError> {
        let (_, pass) = inner_grad_pass(
            &mut self.ws,
            &mut self.g,
            problem,
            task,
            j,
            theta,
            &prev.phi,
            true,
            side.segments.is_some(),
        )?;
        let t = pass.tape();
        let nt = theta.len();
        let vars = rule_inputs(t, pass.inputs(), nt, side.segments, prev, true, j)?;
        let out = record_rule(t, rule, j, nt, side, &vars)?;
        let outs: Leaves<'_, F> = out.phi.iter().chain(&out.extra).copied().collect();
        sweep_from(t, &outs, side.segments.is_some(), (&cot.phi, &cot.extra));
        apply_rule_vjp(
            rule,
            t,
            &vars,
            nt,
            &mut self.w,
            &self.g,
            cot,
            g_theta,
            AdjointG::Set,
        )
    }

    /// The dual pass of a rule's adjoint step: L_in at (θ, φ_{j−1} + ε w),
    /// w = a_g in `self.w`. Adds H w (plus ∇_φ L_in with `with_inner_loss`)
    /// to `cot_phi` when given (it holds a_φ), else sets `self.hw` to it
    /// (concatenated); adds M w (plus ∇_θ L_in) to `g_theta`; and with
    /// `take_g` copies g_j (the primal part) into `self.g` (per φ tensor, or
    /// concatenated when `self.g` is one flat tensor).
    #[allow(clippy::too_many_arguments)]
    fn rule_dual<P: Problem<F>>(
        &mut self,
        problem: &P,
        task: &P::Task,
        j: usize,
        theta: &[Tensor<F>],
        prev: &State<F>,
        g_theta: &mut [Tensor<F>],
        mut cot_phi: Option<&mut [Tensor<F>]>,
        with_inner_loss: bool,
        take_g: bool,
    ) -> Result<(), BloError> {
        let pass = dual_pass(
            &mut self.ws,
            problem,
            task,
            j,
            theta,
            &prev.phi,
            Tangent::Zero,
            Tangent::Flat(&self.w),
            (false, &Default::default()),
        )?;
        let nt = theta.len();
        let zero = Dual::new(F::zero(), F::zero());
        let inner = if with_inner_loss { F::one() } else { F::zero() };
        for (i, gt) in g_theta.iter_mut().enumerate() {
            update(gt.data_mut(), pass.adjoint(i).as_deref(), zero, |x, y| {
                *x += y.d + inner * y.v;
            });
        }
        self.hw.clear();
        let flat_g = self.g.len() != prev.phi.len();
        let mut at = 0;
        for (i, p) in prev.phi.iter().enumerate() {
            let n = p.numel();
            let adj = pass.adjoint(nt + i);
            match (cot_phi.as_deref_mut(), adj.as_deref()) {
                (Some(u), a) => update(u[i].data_mut(), a, zero, |x, y| *x += y.d + inner * y.v),
                (None, Some(a)) => self.hw.extend(a.iter().map(|y| y.d + inner * y.v)),
                (None, None) => self.hw.extend(std::iter::repeat_n(F::zero(), n)),
            }
            if take_g {
                let g = if flat_g {
                    &mut self.g[0].data_mut()[at..at + n]
                } else {
                    self.g[i].data_mut()
                };
                update(g, adj.as_deref(), zero, |x, y| *x = y.v);
            }
            at += n;
        }
        if take_g && !tensors_finite(&self.g) {
            return Err(non_finite("inner gradient", j));
        }
        Ok(())
    }
}

/// The fixed non-zero patterns of the claim checks: tensors shaped like
/// `like`, element k (counted over all of them) `f(k)`.
fn pattern<F: Float>(like: &[Tensor<F>], f: fn(f64) -> f64) -> Vec<Tensor<F>> {
    let mut k = 0.0;
    like.iter()
        .map(|t| {
            let data = (0..t.numel())
                .map(|_| {
                    k += 1.0;
                    F::from_f64(f(k))
                })
                .collect();
            Tensor::new(t.shape(), data)
        })
        .collect()
}

impl<F: Float> InnerWorkspace<F> {
    /// Checks a rule's [`crate::InnerRule::constant_grad_coefficient`] claim
    /// at (θ, φ_{j−1}, e_{j−1}): the VJP of the step at g = 0 and at another
    /// g (both with the same cotangent ū, every input differentiated) must be
    /// equal bit for bit (with R = A + B g and B constant, g enters only
    /// through additions of B g, so no adjoint depends on its value). g and ū
    /// are fixed non-zero patterns, g_k = 1 + ½ sin(0.7 k), ū_k = cos(1.3 k + 0.4).
    ///
    /// # Errors
    /// [`BloError::InvalidHyperparameter`] naming the rule if they differ.
    fn check_constant_coefficient(
        &mut self,
        rule: &Rule,
        j: usize,
        theta: &[Tensor<F>],
        side: RuleSide<'_, F>,
    ) -> Result<(), BloError> {
        let g1 = pattern(side.phi, |k| 1.0 + 0.5 * (0.7 * k).sin());
        let u_phi = pattern(side.phi, |k| (1.3 * k + 0.4).cos());
        let u_extra = pattern(side.extra, |k| (1.3 * k + 0.9).cos());
        let mut adjoints = |g: Option<&[Tensor<F>]>| -> Vec<Option<Vec<F>>> {
            let cots = (&u_phi[..], &u_extra[..]);
            let (pass, vars) =
                rule_vjp_pass(&mut self.ws, rule, j, theta, side, g, cots, true, None);
            let t = pass.tape();
            vars.iter()
                .map(|&v| t.grad_ref(v).map(|a| a.to_vec()))
                .collect()
        };
        let (at0, at1) = (adjoints(None), adjoints(Some(&g1)));
        let same = at0.iter().zip(&at1).all(|(x, y)| {
            let zero = |v: &[F]| v.iter().all(|x| *x == F::zero());
            match (x, y) {
                (Some(x), Some(y)) => x == y,
                (Some(x), None) | (None, Some(x)) => zero(x),
                (None, None) => true,
            }
        });
        if !same {
            return Err(BloError::invalid(
                "inner rule",
                rule.name(),
                "declares a constant coefficient of g (constant_grad_coefficient) but its VJP depends on g",
            ));
        }
        Ok(())
    }

    /// Checks a rule's [`crate::InnerRule::elementwise`] claim at (θ, φ_{j−1},
    /// e_{j−1}) (`prev`, its extra state stored flat): its extra state must be
    /// K tensors shaped like φ (`extra_state` of φ's shapes is φ's shapes K
    /// times, K = the number of flat extra tensors), and the flat step's
    /// outputs and VJP (every input differentiated) must equal the per-tensor
    /// step's concatenated, bit for bit, at g_k = 1 + ½ sin(0.7 k) and the
    /// cotangent ū_k = cos(1.3 k + 0.4) (k counted over the concatenation).
    ///
    /// # Errors
    /// [`BloError::InvalidHyperparameter`] naming the rule if they differ.
    fn check_elementwise(
        &mut self,
        rule: &Rule,
        j: usize,
        theta: &[Tensor<F>],
        prev: &State<F>,
    ) -> Result<(), BloError> {
        let bad = |why: &str| BloError::invalid("inner rule", rule.name(), why);
        let shapes: SmallVec<[Shape; 16]> = prev.phi.iter().map(|p| p.shape()).collect();
        let segments = Segments::new(&shapes);
        let flat_shape = Segments::flat_shape(&shapes);
        let groups = prev.extra.len();
        let per_tensor = rule.extra_state(&shapes);
        let k_times = per_tensor.len() == groups * shapes.len()
            && per_tensor
                .chunks(shapes.len().max(1))
                .all(|c| c == shapes.as_slice())
            && prev.extra.iter().all(|e| e.shape() == flat_shape);
        if !k_times {
            return Err(bad(
                "declares itself elementwise but its extra state is not K tensors shaped like φ",
            ));
        }
        // The per-tensor extra state: each flat group cut into segments.
        let extra: Vec<Tensor<F>> = prev
            .extra
            .iter()
            .flat_map(|e| {
                let segments = &segments;
                shapes
                    .iter()
                    .enumerate()
                    .map(move |(i, &s)| Tensor::new(s, e.data()[segments.range(i)].to_vec()))
            })
            .collect();
        let g = pattern(&prev.phi, |k| 1.0 + 0.5 * (0.7 * k).sin());
        let u: Vec<Tensor<F>> = pattern(&prev.phi, |k| (1.3 * k + 0.4).cos())
            .into_iter()
            .chain(pattern(&extra, |k| (1.3 * k + 0.9).cos()))
            .collect();
        // Everything (outputs, then every input's adjoint) concatenated.
        let mut run = |side: RuleSide<'_, F>, g: &[Tensor<F>], u: &[Tensor<F>]| -> Vec<F> {
            let n_phi = side.phi.len();
            let mut all = Vec::new();
            let (pass, vars) = rule_vjp_pass(
                &mut self.ws,
                rule,
                j,
                theta,
                side,
                Some(g),
                (&u[..n_phi], &u[n_phi..]),
                true,
                Some(&mut all),
            );
            let inputs = theta.iter().chain(side.phi).chain(side.extra).chain(g);
            for (x, &v) in inputs.zip(&vars) {
                match pass.tape().grad_ref(v) {
                    Some(a) => all.extend_from_slice(&a),
                    None => all.extend(std::iter::repeat_n(F::zero(), x.numel())),
                }
            }
            all
        };
        let per = run(
            RuleSide {
                phi: &prev.phi,
                parts: &prev.phi,
                extra: &extra,
                segments: None,
            },
            &g,
            &u,
        );
        let n = shapes.len();
        let u_flat: Vec<Tensor<F>> = u.chunks(n.max(1)).map(concat).collect();
        let flat_phi = [concat(&prev.phi)];
        let flat = run(
            RuleSide {
                phi: &flat_phi,
                parts: &flat_phi,
                extra: &prev.extra,
                segments: Some(&segments),
            },
            &[concat(&g)],
            &u_flat,
        );
        if per != flat {
            return Err(bad(
                "declares itself elementwise but its flat step (or its VJP) differs from its step per φ tensor",
            ));
        }
        Ok(())
    }
}

/// The variables of a rule step's inputs on tape `t`, recorded after a
/// gradient pass whose leaves are `theta_phi` (θ: the first `nt`, then φ):
/// θ's leaves, then φ (the pass's leaves, or one leaf of φ concatenated for a
/// flat step), then leaves for `state`'s e and for g_j = ∇_φ L_in, the
/// latter filled straight from the pass's adjoints of φ
/// ([`tape::Tape::leaf_from_adjoints`]: one pass over g, checked for
/// finiteness as it is written). Leaves for e and g are differentiated with
/// `grad`.
///
/// # Errors
/// [`BloError::NonFinite`] naming step j if g_j is not finite.
#[allow(clippy::too_many_arguments)]
fn rule_inputs<'t, F: Float>(
    t: &'t tape::Tape<F>,
    theta_phi: &[tape::Var<'t, F>],
    nt: usize,
    segments: Option<&Segments>,
    state: &State<F>,
    grad: bool,
    j: usize,
) -> Result<SmallVec<[tape::Var<'t, F>; 64]>, BloError> {
    let mut vars: SmallVec<[tape::Var<'t, F>; 64]>;
    let phi = &theta_phi[nt..];
    match segments {
        None => vars = theta_phi.iter().copied().collect(),
        Some(s) => {
            vars = theta_phi[..nt].iter().copied().collect();
            vars.push(t.leaf_with([s.numel()], grad, |d| {
                copy_concat(&state.phi, d);
            }));
        }
    }
    vars.extend(
        state
            .extra
            .iter()
            .map(|x| t.leaf(x.shape(), x.data(), grad)),
    );
    let mut ok = true;
    let mut copy = |_: usize, d: &mut [F], a: Option<&[F]>| ok &= copy_finite(d, a);
    match segments {
        None => {
            for &p in phi {
                vars.push(t.leaf_from_adjoints(p.shape(), &[p], grad, &mut copy));
            }
        }
        Some(s) => vars.push(t.leaf_from_adjoints([s.numel()], phi, grad, &mut copy)),
    }
    if !ok {
        return Err(non_finite("inner gradient", j));
    }
    Ok(vars)
}

/// `rule`'s step j over `v` = (θ, φ, e, g) laid out as `side` with `nt` θ
/// tensors: per tensor, or flat.
fn call_rule<'t, T: Real, F: Float>(
    rule: &Rule,
    t: &'t tape::Tape<T>,
    j: usize,
    nt: usize,
    side: RuleSide<'_, F>,
    v: &[tape::Var<'t, T>],
) -> crate::rules::RuleStep<'t, T> {
    let (a, b, c) = side.split_points(nt);
    match side.segments {
        None => rule.step(t, j, &v[..a], &v[a..b], &v[b..c], &v[c..]),
        Some(s) => rule.flat_step(t, j, &v[..a], s, v[a], &v[b..c], v[c]),
    }
}

/// Records `rule`'s step j on `t` over `vars` (θ, φ, e, g in order, laid
/// out as `side`) and checks the shapes it returns against `side`'s.
///
/// # Errors
/// [`BloError::InvalidHyperparameter`] naming the rule, the tensor and both
/// shapes if the step returns a state of another shape.
fn record_rule<'t, F: Float>(
    t: &'t tape::Tape<F>,
    rule: &Rule,
    j: usize,
    nt: usize,
    side: RuleSide<'_, F>,
    vars: &[tape::Var<'t, F>],
) -> Result<crate::rules::RuleStep<'t, F>, BloError> {
    let out = call_rule(rule, t, j, nt, side, vars);
    check_step_shapes(
        rule,
        "φ",
        out.phi.iter().map(|v| v.shape()),
        side.phi.iter().map(|p| p.shape()),
    )?;
    check_step_shapes(
        rule,
        "extra state",
        out.extra.iter().map(|v| v.shape()),
        side.extra.iter().map(|p| p.shape()),
    )?;
    Ok(out)
}

/// L_in(θ, φ; τ, j) by one gradient pass; `g` is shaped for g_j = ∇_φ L_in
/// (one tensor per φ tensor, or with `flat` one `[N]` tensor; its values are
/// stale: the rule reads g_j from the pass, [`rule_inputs`]); θ's leaves are
/// differentiated with `theta_grad`. Returns L_in and the pass (its tape can
/// record more: a rule step on the same leaves).
///
/// # Errors
/// [`BloError::NonFinite`] naming step j if the loss is not finite.
#[allow(clippy::too_many_arguments)]
fn inner_grad_pass<'t, F: Float, P: Problem<F>>(
    ws: &'t mut Workspace<F>,
    g: &mut Vec<Tensor<F>>,
    problem: &P,
    task: &P::Task,
    j: usize,
    theta: &[Tensor<F>],
    phi: &[Tensor<F>],
    theta_grad: bool,
    flat: bool,
) -> Result<(F, Pass<'t, F>), BloError> {
    let nt = theta.len();
    let pass = ws.grad_pass(
        theta
            .iter()
            .map(|x| (x, theta_grad))
            .chain(phi.iter().map(|x| (x, true))),
        |t, v| problem.inner_loss(t, task, j, &v[..nt], &v[nt..]),
    );
    let value = pass.value();
    if !value.is_finite() {
        return Err(non_finite("inner loss", j));
    }
    if flat {
        flat_buffer(g, phi.iter().map(|p| p.numel()).sum());
    } else {
        shape_like(g, phi);
    }
    Ok((value, pass))
}

/// What [`InnerWorkspace::rule_vjp`] does with a swept rule step on tape `t`
/// whose inputs are `vars` (θ: the first `nt`, then φ, e, g): `Only` keeps
/// a_g in `w`; `Set` also applies the rest, `Check` compares a_g with `w`
/// and applies the rest (a_θ added to `g_theta`, `cot` set to (a_φ, a_e),
/// a_φ cut into φ's tensors when the step was flat: one φ input).
///
/// # Errors
/// `Check` with a different a_g ([`BloError::InvalidHyperparameter`] naming
/// the rule).
#[allow(clippy::too_many_arguments)]
fn apply_rule_vjp<F: Float>(
    rule: &Rule,
    t: &tape::Tape<F>,
    vars: &[tape::Var<'_, F>],
    nt: usize,
    w: &mut Vec<F>,
    g: &[Tensor<F>],
    cot: &mut Cotangent<F>,
    g_theta: &mut [Tensor<F>],
    mode: AdjointG,
) -> Result<(), BloError> {
    let adjoint = |i: usize| t.grad_ref(vars[i]);
    let c = vars.len() - g.len();
    let a_g = (c..vars.len()).map(adjoint);
    match mode {
        AdjointG::Only | AdjointG::Set => {
            w.clear();
            for (ag, gi) in a_g.zip(g) {
                match ag {
                    Some(ag) => w.extend_from_slice(&ag),
                    None => w.extend(std::iter::repeat_n(F::zero(), gi.numel())),
                }
            }
            if mode == AdjointG::Only {
                return Ok(());
            }
        }
        AdjointG::Check => {
            let mut rest = &w[..];
            for (ag, gi) in a_g.zip(g) {
                let (wi, tail) = rest.split_at(gi.numel());
                rest = tail;
                let same = match ag {
                    Some(ag) => *ag == *wi,
                    None => wi.iter().all(|x| *x == F::zero()),
                };
                if !same {
                    return Err(BloError::invalid(
                        "inner rule",
                        rule.name(),
                        "declares its step affine in g (affine_in_grad) but its VJP with respect to g depends on g",
                    ));
                }
            }
        }
    }
    let zero = F::zero();
    // A θ tensor the step does not read (a structural zero) is left as it is.
    for (i, gt) in g_theta.iter_mut().enumerate() {
        if let Some(a) = adjoint(i) {
            for (x, &y) in gt.data_mut().iter_mut().zip(a.iter()) {
                *x += y;
            }
        }
    }
    let n_phi = c - nt - cot.extra.len();
    if n_phi == cot.phi.len() {
        for (i, u) in cot.phi.iter_mut().chain(&mut cot.extra).enumerate() {
            update(u.data_mut(), adjoint(nt + i).as_deref(), zero, |x, y| {
                *x = y
            });
        }
    } else {
        let a_phi = adjoint(nt);
        let mut at = 0;
        for u in &mut cot.phi {
            let n = u.numel();
            let a = a_phi.as_deref().map(|a| &a[at..at + n]);
            update(u.data_mut(), a, zero, |x, y| *x = y);
            at += n;
        }
        for (k, u) in cot.extra.iter_mut().enumerate() {
            update(
                u.data_mut(),
                adjoint(nt + 1 + k).as_deref(),
                zero,
                |x, y| *x = y,
            );
        }
    }
    Ok(())
}

/// The reverse sweep of a rule's step at (θ, φ_{j−1}, e_{j−1}, g) (φ and e
/// laid out as `side`; g = 0 when `g` is `None`) seeded with the cotangents
/// `cots` = (ū_φ, ū_e) on (φ_j, e_j) ([`sweep_from`]: ū_φ per φ tensor). Returns the pass and the step's input variables:
/// θ, φ, e (differentiated with `all`), then g (always). The leaves are
/// written once each in place: φ from `side.parts` (concatenated for a flat
/// step), a zero g by a fill. With `values`, the outputs' values are
/// appended to it, concatenated.
#[allow(clippy::too_many_arguments)]
pub(super) fn rule_vjp_pass<'t, 'a, F: Float>(
    ws: &'t mut Workspace<F>,
    rule: &Rule,
    j: usize,
    theta: &'a [Tensor<F>],
    side: RuleSide<'a, F>,
    g: Option<&'a [Tensor<F>]>,
    cots: (&[Tensor<F>], &[Tensor<F>]),
    all: bool,
    values: Option<&mut Vec<F>>,
) -> (Pass<'t, F>, Leaves<'t, F>) {
    let (mut vars, mut outs) = (Leaves::new(), Leaves::new());
    let pass = ws.vjp_pass(
        theta.iter().map(|x| (x, all)),
        |t, v| {
            vars.extend_from_slice(v);
            match side.segments {
                Some(s) => vars.push(t.leaf_with([s.numel()], all, |d| copy_concat(side.parts, d))),
                None => vars.extend(side.phi.iter().map(|x| t.leaf(x.shape(), x.data(), all))),
            }
            vars.extend(side.extra.iter().map(|x| t.leaf(x.shape(), x.data(), all)));
            match g {
                Some(g) => vars.extend(g.iter().map(|x| t.leaf(x.shape(), x.data(), true))),
                None => vars.extend(
                    side.phi
                        .iter()
                        .map(|x| t.leaf_with(x.shape(), true, |d| d.fill(F::zero()))),
                ),
            }
            let out = call_rule(rule, t, j, theta.len(), side, &vars);
            outs.extend(out.phi.into_iter().chain(out.extra));
            if let Some(values) = values {
                for &y in &outs {
                    values.extend_from_slice(&t.value_ref(y));
                }
            }
            Leaves::new()
        },
        std::iter::empty(),
    );
    sweep_from(pass.tape(), &outs, side.segments.is_some(), cots);
    (pass, vars)
}

/// One reverse sweep of tape `t` seeded at a rule step's outputs `outs`
/// (φ_j, then e_j) with `cots` = (ū_φ per φ tensor, ū_e), written straight
/// into the outputs' adjoints ([`tape::Tape::backward_seeded_by`]): for a
/// flat step (`flat`) φ_j's one `[N]` output is seeded with ū_φ's tensors
/// concatenated, with no staging copy. No sweep without outputs.
///
/// # Panics
/// If a cotangent's element count differs from its output's.
#[track_caller]
fn sweep_from<F: Float>(
    t: &tape::Tape<F>,
    outs: &[tape::Var<'_, F>],
    flat: bool,
    cots: (&[Tensor<F>], &[Tensor<F>]),
) {
    if outs.is_empty() {
        return;
    }
    let (u_phi, u_extra) = cots;
    let n_phi = if flat { 1 } else { u_phi.len() };
    t.backward_seeded_by(outs, |k, g, add| {
        let pieces = if k >= n_phi {
            std::slice::from_ref(&u_extra[k - n_phi])
        } else if flat {
            u_phi
        } else {
            std::slice::from_ref(&u_phi[k])
        };
        let n: usize = pieces.iter().map(|p| p.numel()).sum();
        assert_eq!(
            n,
            g.len(),
            "inner rule: output {k} has {} elements, its cotangent {n}",
            g.len()
        );
        let mut at = 0;
        for p in pieces {
            let (d, x) = (&mut g[at..at + p.numel()], p.data());
            if add {
                d.iter_mut().zip(x).for_each(|(a, &b)| *a += b);
            } else {
                d.copy_from_slice(x);
            }
            at += p.numel();
        }
    });
}

impl<F: Float> InnerWorkspace<F> {
    /// A rule's forward-mode tangent step at state s_{j−1} = `state` along
    /// θ̇ = `theta_dot`: one dual pass of L_in with tangents (θ̇, φ̇) gives g_j
    /// and ġ = H φ̇ + (∂²L_in/∂φ∂θ) θ̇; then (φ̇, ė) ← the JVP of R at
    /// (θ, φ, e, g_j) along (θ̇, φ̇, ė, ġ), one forward pass on dual numbers
    /// (on φ, φ̇, g and ġ concatenated for an elementwise rule, docs/math.md §12 "Flat steps").
    ///
    /// # Errors
    /// [`BloError::NonFinite`] naming step j if L_in is not finite; a false
    /// elementwise claim.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn rule_tangent_step<P: Problem<F>>(
        &mut self,
        problem: &P,
        task: &P::Task,
        rule: &Rule,
        j: usize,
        theta: &[Tensor<F>],
        state: &State<F>,
        theta_dot: &[Tensor<F>],
        phi_dot: &mut Vec<Tensor<F>>,
        extra_dot: &mut Vec<Tensor<F>>,
    ) -> Result<(), BloError> {
        let flat = self.prepare_flat(rule, j, theta, state)?;
        let nt = theta.len();
        let (mut g, mut g_dot) = (Vec::new(), Vec::new());
        {
            let pass = self.hvp_pass(
                problem,
                task,
                j,
                theta,
                &state.phi,
                phi_dot,
                Some(theta_dot),
            )?;
            for (i, p) in state.phi.iter().enumerate() {
                let (mut gi, mut di) = (Tensor::zeros(p.shape()), Tensor::zeros(p.shape()));
                if let Some(a) = pass.adjoint(nt + i) {
                    for ((gk, dk), y) in gi.data_mut().iter_mut().zip(di.data_mut()).zip(a.iter()) {
                        (*gk, *dk) = (y.v, y.d);
                    }
                }
                g.push(gi);
                g_dot.push(di);
            }
        }
        let lay = |v: Vec<Tensor<F>>| if flat { vec![concat(&v)] } else { v };
        let phi_side = lay(state.phi.clone());
        let side = RuleSide {
            phi: &phi_side,
            parts: &phi_side,
            extra: &state.extra,
            segments: flat.then_some(&self.flat.segments),
        };
        let x: Vec<Tensor<F>> = theta
            .iter()
            .cloned()
            .chain(phi_side.iter().cloned())
            .chain(state.extra.iter().cloned())
            .chain(lay(g))
            .collect();
        let x_dot: Vec<Tensor<F>> = theta_dot
            .iter()
            .cloned()
            .chain(lay(phi_dot.clone()))
            .chain(extra_dot.iter().cloned())
            .chain(lay(g_dot))
            .collect();
        let mut out = Vec::new();
        self.ws.jvp_into(
            &x,
            &x_dot,
            |t, v| {
                let out = call_rule(rule, t, j, nt, side, v);
                out.phi.into_iter().chain(out.extra).collect()
            },
            &mut out,
        );
        *extra_dot = out.split_off(phi_side.len());
        if flat {
            scatter(out[0].data(), phi_dot);
        } else {
            *phi_dot = out;
        }
        Ok(())
    }
}

/// What [`InnerWorkspace::rule_vjp`] does with the VJP's g-part a_g.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AdjointG {
    /// Keep a_g only.
    Only,
    /// Keep a_g and apply the rest.
    Set,
    /// Check a_g against the kept one and apply the rest.
    Check,
}

/// Makes `dst` one `[n]` tensor (reusing it; its values are stale).
fn flat_buffer<F: Float>(dst: &mut Vec<Tensor<F>>, n: usize) {
    let shape = Shape::new(&[n]);
    if !(dst.len() == 1 && dst[0].shape() == shape) {
        *dst = vec![Tensor::zeros(shape)];
    }
}

/// Copies `src` into `dst` (`None`, a structural zero, as zeros) and returns
/// whether every copied element is finite: one pass, a branch-free check per
/// block of 256 ([`all_finite`]).
fn copy_finite<F: Float>(dst: &mut [F], src: Option<&[F]>) -> bool {
    match src {
        Some(src) => {
            let mut ok = true;
            for (d, s) in dst.chunks_mut(256).zip(src.chunks(256)) {
                d.copy_from_slice(s);
                ok &= all_finite(d);
            }
            ok
        }
        None => {
            dst.fill(F::zero());
            true
        }
    }
}

/// Writes the elements of `src`, concatenated, into `dst`.
fn copy_concat<F: Float>(src: &[Tensor<F>], dst: &mut [F]) {
    let mut at = 0;
    for x in src {
        dst[at..at + x.numel()].copy_from_slice(x.data());
        at += x.numel();
    }
}

/// Makes `dst` one `[N]` tensor holding the tensors of `src` concatenated.
fn flatten_into<F: Float>(dst: &mut Vec<Tensor<F>>, src: &[Tensor<F>]) {
    flat_buffer(dst, src.iter().map(|x| x.numel()).sum());
    copy_concat(src, dst[0].data_mut());
}

/// The tensors of `src` concatenated, as one `[N]` tensor.
fn concat<F: Float>(src: &[Tensor<F>]) -> Tensor<F> {
    let mut v = Vec::new();
    flatten_into(&mut v, src);
    v.pop().expect("one tensor")
}

/// Copies `src` (tensors concatenated) into the tensors of `dst`, in order.
fn scatter<F: Float>(src: &[F], dst: &mut [Tensor<F>]) {
    let mut at = 0;
    for x in dst {
        let n = x.numel();
        x.data_mut().copy_from_slice(&src[at..at + n]);
        at += n;
    }
}

/// A tangent on a tensor list of a dual pass.
#[derive(Clone, Copy)]
enum Tangent<'a, F> {
    /// Zero (the leaves are dual constants).
    Zero,
    /// One tensor per point tensor, same shapes.
    Tensors(&'a [Tensor<F>]),
    /// The tensors concatenated (lengths checked by the caller).
    Flat(&'a [F]),
    /// As `Flat`, the inputs' adjoints read in their tangent parts only
    /// ([`Seed::HvOnly`]: the products feeding only their primal parts skipped).
    FlatHvOnly(&'a [F]),
}

/// The pass under [`InnerWorkspace::inner_hvp`] and
/// [`InnerWorkspace::adjoint_step`]: `hvp`'s dual pass of L_in(·, ·; τ, j)
/// at (θ + v_θ ε, φ + v_φ ε), inputs θ then φ; with `at_tiles` (j = 1, φ_0
/// tiles of θ, φ's adjoint read in block sums only) recorded by
/// [`Problem::inner_loss_at_tiles`] if the problem does (`summed_here` then
/// set: φ's adjoints are block sums in block 0).
///
/// # Errors
/// [`BloError::NonFinite`] naming step j if L_in is not finite.
#[track_caller]
#[allow(clippy::too_many_arguments)]
fn dual_pass<'t, F: Float, P: Problem<F>>(
    ws: &'t mut Workspace<F>,
    problem: &P,
    task: &P::Task,
    j: usize,
    theta: &[Tensor<F>],
    phi: &[Tensor<F>],
    v_theta: Tangent<'_, F>,
    v_phi: Tangent<'_, F>,
    (at_tiles, summed_here): (bool, &std::cell::Cell<bool>),
) -> Result<Pass<'t, Dual<F>>, BloError> {
    let nt = theta.len();
    let seeds = seeds(theta, v_theta).chain(seeds(phi, v_phi));
    let pass = ws.dual_pass(seeds, |t, v| {
        let (theta, phi) = v.split_at(nt);
        let summed = at_tiles
            .then(|| problem.inner_loss_at_tiles(t, task, theta, phi))
            .flatten();
        summed_here.set(summed.is_some());
        summed.unwrap_or_else(|| problem.inner_loss(t, task, j, theta, phi))
    });
    if !pass.value().v.is_finite() {
        return Err(non_finite("inner loss", j));
    }
    Ok(pass)
}

/// The dual-pass seeds of a tensor list with its tangent.
#[track_caller]
fn seeds<'a, F: Float>(
    x: &'a [Tensor<F>],
    v: Tangent<'a, F>,
) -> impl Iterator<Item = (&'a Tensor<F>, Seed<'a, F>)> + 'a {
    if let Tangent::Tensors(v) = v {
        assert!(
            v.len() == x.len(),
            "inner_hvp: {} point tensors but {} tangents",
            x.len(),
            v.len()
        );
        for (xi, vi) in x.iter().zip(v) {
            assert_eq!(
                vi.shape(),
                xi.shape(),
                "inner_hvp: point {:?} but tangent {:?}",
                xi.shape(),
                vi.shape()
            );
        }
    }
    let mut at = 0;
    x.iter().enumerate().map(move |(i, xi)| {
        let seed = match v {
            Tangent::Zero => Seed::Zero,
            Tangent::Tensors(v) => Seed::Tangent(v[i].data()),
            Tangent::Flat(w) | Tangent::FlatHvOnly(w) => {
                let wi = &w[at..at + xi.numel()];
                at += xi.numel();
                if matches!(v, Tangent::Flat(_)) {
                    Seed::Tangent(wi)
                } else {
                    Seed::HvOnly(wi)
                }
            }
        };
        (xi, seed)
    })
}

/// Meta-SGD's step tensor for φ tensor i (θ`[lr_index[i]]`), checked to
/// have `like`'s shape.
///
/// # Panics
/// If `lr_index` or θ has no such entry, or the shapes differ.
#[track_caller]
pub(crate) fn meta_sgd_steps<'a, F: Float>(
    theta: &'a [Tensor<F>],
    lr_index: &[usize],
    i: usize,
    like: &Tensor<F>,
) -> &'a Tensor<F> {
    meta_sgd_steps_of(theta, lr_index, i, like.shape())
}

/// [`meta_sgd_steps`] for a φ tensor of shape `like`.
#[track_caller]
fn meta_sgd_steps_of<'a, F: Float>(
    theta: &'a [Tensor<F>],
    lr_index: &[usize],
    i: usize,
    like: Shape,
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
        like,
        "MetaSgd: step tensor θ[{k}] {:?} but φ tensor {i} {:?}",
        alpha.shape(),
        like
    );
    alpha
}

/// One φ tensor's update by a hand-derived optimiser (docs/math.md §2), in
/// place: `x` is φ tensor k (of shape `shape()`, asked by Meta-SGD only),
/// `g` its gradient g_j (`None`: a
/// structural zero, applied as zeros), `v` its velocity (momentum only).
///
/// - SGD: x ← x − α g (`tape::kernels::sub_scaled_finite`: the plain loop's
///   bits at the family's vector width, g's finiteness tested in the same
///   pass);
/// - Meta-SGD: x ← x − α_k ⊙ g, α_k = θ`[lr_index[k]]`, shaped like x;
/// - momentum: v ← β v + g, x ← x − α v.
///
/// [`InnerWorkspace::step_in_place`] and [`InnerWorkspace::advance`] (on φ's
/// resident leaves) both update by it, so their states are the same bits.
/// Returns whether g is finite where that test is part of the update (SGD);
/// Meta-SGD and momentum test every g before updating any tensor, and
/// return true.
///
/// # Panics
/// If a Meta-SGD step tensor's shape differs from `shape()`, or momentum has
/// no velocity.
#[track_caller]
#[inline(always)]
pub(crate) fn update_tensor<F: Float>(
    opt: &InnerOptimizer,
    theta: &[Tensor<F>],
    k: usize,
    shape: impl FnOnce() -> Shape,
    x: &mut [F],
    g: Option<&[F]>,
    v: Option<&mut [F]>,
) -> bool {
    match opt {
        InnerOptimizer::Sgd { lr } => {
            let a = F::from_f64(*lr);
            match g {
                Some(g) => return tape::kernels::sub_scaled_finite(x, g, a),
                None => update(x, None, F::zero(), |x, gi| *x -= a * gi),
            }
        }
        InnerOptimizer::MetaSgd { lr_index } => {
            let mut alpha = meta_sgd_steps_of(theta, lr_index, k, shape()).data().iter();
            update(x, g, F::zero(), |x, gi| {
                let a = *alpha.next().expect("α has φ's shape");
                *x -= a * gi;
            });
        }
        InnerOptimizer::Momentum { lr, beta } => {
            let (a, b) = (F::from_f64(*lr), F::from_f64(*beta));
            let mut v = v.expect("momentum: a velocity per φ tensor").iter_mut();
            update(x, g, F::zero(), |x, gi| {
                let vi = v.next().expect("velocity has φ's shape");
                *vi = b * *vi + gi;
                *x -= a * *vi;
            });
        }
        InnerOptimizer::Rule(_) => unreachable!("a rule's step is its own"),
    }
    true
}

/// `f(a_k, b_k)` for every k, with `b = None` (a structural zero) read as
/// `zero` everywhere, so the arithmetic (and a −0 + 0 = +0) is the same as on
/// a buffer of zeros.
#[inline]
pub(crate) fn update<A, B: Copy>(
    a: &mut [A],
    b: Option<&[B]>,
    zero: B,
    mut f: impl FnMut(&mut A, B),
) {
    match b {
        Some(b) => {
            for (x, &y) in a.iter_mut().zip(b) {
                f(x, y);
            }
        }
        None => {
            for x in a {
                f(x, zero);
            }
        }
    }
}

/// Makes `dst` zeros shaped like `like`, reusing `dst`'s tensors where the
/// shapes match.
fn zero_tensors<F: Float>(dst: &mut Vec<Tensor<F>>, like: &[Tensor<F>]) {
    zero_shapes(dst, like.iter().map(|t| t.shape()));
}

/// Makes `dst` tensors shaped like `like`, reusing `dst`'s tensors and their
/// allocations (their values are stale).
fn shape_like<F: Float>(dst: &mut Vec<Tensor<F>>, like: &[Tensor<F>]) {
    dst.truncate(like.len());
    for (i, x) in like.iter().enumerate() {
        match dst.get_mut(i) {
            Some(d) => refit(d, x.shape()),
            None => dst.push(Tensor::zeros(x.shape())),
        }
    }
}

/// Makes `dst` zeros of the given shapes, reusing `dst`'s tensors and their
/// allocations.
fn zero_shapes<F: Float>(dst: &mut Vec<Tensor<F>>, shapes: impl ExactSizeIterator<Item = Shape>) {
    dst.truncate(shapes.len());
    let mut shapes = shapes.enumerate();
    for (i, s) in shapes.by_ref() {
        match dst.get_mut(i) {
            Some(d) => {
                refit(d, s);
                d.data_mut().fill(F::zero());
            }
            None => dst.push(Tensor::zeros(s)),
        }
    }
}

/// Panics unless `a` has one tensor per tensor of `like`, shape for shape.
#[track_caller]
fn check_like<F: Float>(what: &str, a: &[Tensor<F>], like: &[Tensor<F>]) {
    let same = a.len() == like.len() && a.iter().zip(like).all(|(x, y)| x.shape() == y.shape());
    if !same {
        let shapes = |v: &[Tensor<F>]| v.iter().map(|t| t.shape()).collect::<Vec<_>>();
        panic!(
            "{what}: shapes {:?} but the state's φ has {:?}",
            shapes(a),
            shapes(like)
        );
    }
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
    let mut bufs = SweepBuffers::cached();
    let l = bufs.ws.outer_loss(problem, task, theta, &phi_r.phi);
    bufs.recycle();
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
    let mut bufs = SweepBuffers::cached();
    let ws = &mut bufs.ws;
    let mut run = || {
        let mut s = ws.initial_state(problem, task, theta)?;
        let mut losses = Vec::with_capacity(inner.steps);
        for j in 1..=inner.steps {
            losses.push(ws.step_in_place(problem, task, j, theta, &mut s)?);
        }
        Ok((s, losses))
    };
    let out = run();
    bufs.recycle();
    out
}
