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
use std::cell::{Ref, RefCell};

use smallvec::SmallVec;
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
        tensors_finite(self.phi.iter().chain(&self.velocity))
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
///
/// Besides the two tapes it keeps the buffers a sweep needs again and again:
/// the tangent w of [`InnerWorkspace::adjoint_step`], and (for the crate's
/// own sweeps) spare states and a spare cotangent, so that after the first
/// task a sweep on this workspace allocates only the gradient it returns.
/// Like the tapes' high-water mark, the spare states keep the memory of the
/// largest number of states a sweep on this workspace held at once.
#[derive(Debug, Default)]
pub struct InnerWorkspace<F: Float> {
    primal: Tape<F>,
    dual: Tape<Dual<F>>,
    /// The adjoint step's tangent w, concatenated in φ order.
    w: Vec<F>,
    /// Spare states whose tensors are overwritten by the next use.
    spare: Vec<State<F>>,
    /// A spare cotangent (the last sweep's).
    spare_cot: Option<Cotangent<F>>,
    /// An empty list with the capacity of the last sweep's kept states.
    spare_kept: Vec<(usize, State<F>)>,
    /// An empty list with the capacity of the last checkpoint segment.
    spare_segment: Vec<State<F>>,
}

/// The variables of one tensor list on a tape (θ or φ): inline up to 8.
pub(crate) type Vars<'t, T> = SmallVec<[Var<'t, T>; 8]>;

/// Borrowed adjoints of a tensor list; `None` is a structural zero.
pub(crate) type Adjoints<'t, T> = SmallVec<[Option<Ref<'t, [T]>>; 8]>;

pub(crate) fn non_finite(what: &'static str, step: usize) -> BloError {
    BloError::NonFinite {
        what,
        task: 0,
        step,
    }
}

/// Whether every element is finite. A branch-free fold per block of 256 (it
/// vectorises, unlike a short-circuiting `all`), stopping at the first bad block.
fn all_finite<T: Real>(x: &[T]) -> bool {
    x.chunks(256)
        .all(|c| c.iter().fold(true, |ok, v| ok & v.is_finite()))
}

/// Whether every element of every tensor is finite.
pub(crate) fn tensors_finite<'a, T: Real + 'a>(
    ts: impl IntoIterator<Item = &'a Tensor<T>>,
) -> bool {
    ts.into_iter().all(|t| all_finite(t.data()))
}

thread_local! {
    /// Slots for workspaces handed back by finished sweeps, reused by the next
    /// ones on this thread (any `F`: a slot is an `Option<InnerWorkspace<F>>`,
    /// looked up by type). A slot outlives its workspace, so taking a workspace
    /// and handing it back allocates nothing.
    static CACHE: RefCell<Vec<Box<dyn Slot>>> = const { RefCell::new(Vec::new()) };
}

/// At most this many workspace slots are kept per thread.
const CACHE_LEN: usize = 4;

impl<F: Float> InnerWorkspace<F> {
    /// Empty tapes.
    pub fn new() -> Self {
        Self::default()
    }

    /// A workspace from this thread's cache (its tapes and buffers keep their
    /// capacity, so reusing it allocates nothing), or a new one. Every use
    /// clears the tapes and overwrites the buffers first, so the results do not
    /// depend on which one is returned.
    pub(crate) fn cached() -> Self {
        CACHE.with(|c| {
            c.borrow_mut()
                .iter_mut()
                .find_map(|slot| slot.as_any_mut().downcast_mut::<Option<Self>>()?.take())
                .unwrap_or_default()
        })
    }

    /// Hands the workspace back to this thread's cache: into an empty slot of
    /// its type, a new slot, or an empty slot of another type (dropped if every
    /// slot is full).
    pub(crate) fn recycle(self) {
        CACHE.with(|c| {
            let mut c = c.borrow_mut();
            let own = c
                .iter_mut()
                .filter_map(|slot| slot.as_any_mut().downcast_mut::<Option<Self>>())
                .find(|o| o.is_none());
            if let Some(o) = own {
                *o = Some(self);
            } else if c.len() < CACHE_LEN {
                c.push(Box::new(Some(self)));
            } else if let Some(slot) = c.iter_mut().find(|slot| slot.is_empty()) {
                *slot = Box::new(Some(self));
            }
        })
    }

    /// A spare state (tensors of unspecified shapes and values), or an empty one.
    pub(crate) fn spare_state(&mut self) -> State<F> {
        self.spare.pop().unwrap_or(State {
            phi: Vec::new(),
            velocity: Vec::new(),
        })
    }

    /// Keeps `s`'s buffers for a later [`InnerWorkspace::spare_state`].
    pub(crate) fn put_spare(&mut self, s: State<F>) {
        self.spare.push(s);
    }

    /// A copy of `s` in a spare state's buffers.
    pub(crate) fn copy_state(&mut self, s: &State<F>) -> State<F> {
        let mut c = self.spare_state();
        copy_tensors(&mut c.phi, &s.phi);
        copy_tensors(&mut c.velocity, &s.velocity);
        c
    }

    /// An empty list for the kept states of a sweep (with the capacity of the
    /// last one).
    pub(crate) fn take_kept(&mut self) -> Vec<(usize, State<F>)> {
        std::mem::take(&mut self.spare_kept)
    }

    /// Hands back a kept-state list; its remaining states become spares.
    pub(crate) fn put_kept(&mut self, mut kept: Vec<(usize, State<F>)>) {
        self.spare.extend(kept.drain(..).map(|(_, s)| s));
        self.spare_kept = kept;
    }

    /// An empty list for the states of a checkpoint segment (with the capacity
    /// of the last one).
    pub(crate) fn take_segment(&mut self) -> Vec<State<F>> {
        std::mem::take(&mut self.spare_segment)
    }

    /// Hands back a segment list; its remaining states become spares.
    pub(crate) fn put_segment(&mut self, mut seg: Vec<State<F>>) {
        self.spare.append(&mut seg);
        self.spare_segment = seg;
    }

    /// A zero cotangent shaped like `s`, in the spare cotangent's buffers.
    pub(crate) fn zero_cotangent(&mut self, s: &State<F>) -> Cotangent<F> {
        let mut c = self.spare_cot.take().unwrap_or(Cotangent {
            phi: Vec::new(),
            velocity: Vec::new(),
        });
        zero_tensors(&mut c.phi, &s.phi);
        zero_tensors(&mut c.velocity, &s.velocity);
        c
    }

    /// Keeps a cotangent's buffers for the next [`InnerWorkspace::zero_cotangent`].
    pub(crate) fn put_cotangent(&mut self, c: Cotangent<F>) {
        self.spare_cot = Some(c);
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
        let mut s = State {
            phi: Vec::new(),
            velocity: Vec::new(),
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
        self.primal.clear();
        let t = &self.primal;
        let th = leaves(t, theta, false);
        let phi0 = problem.initial_state(t, task, &th);
        s.phi.truncate(phi0.len());
        for (i, v) in phi0.iter().enumerate() {
            let shape = v.shape();
            match s.phi.get_mut(i) {
                Some(p) if p.shape() == shape => p.data_mut().copy_from_slice(&t.value_ref(*v)),
                Some(p) => *p = v.value(),
                None => s.phi.push(v.value()),
            }
        }
        if problem.inner_loop().has_velocity() {
            zero_tensors(&mut s.velocity, &s.phi);
        } else {
            s.velocity.clear();
        }
        if !s.is_finite() {
            return Err(non_finite("initial state", 0));
        }
        Ok(())
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
        let th = leaves(t, theta, false);
        let ph = leaves(t, &state.phi, true);
        let loss = problem.inner_loss(t, task, j, &th, &ph);
        let value = loss.item();
        if !value.is_finite() {
            return Err(non_finite("inner loss", j));
        }
        t.backward(loss);
        // The gradients are read in place from the tape (no copy); every one is
        // checked before the state is touched. A structural zero (no adjoint
        // reached φ_i) is applied as zeros, as a copied gradient would be.
        let grads: Adjoints<'_, F> = ph.iter().map(|&v| t.grad_ref(v)).collect();
        if !grads.iter().flatten().all(|g| all_finite(g)) {
            return Err(non_finite("inner gradient", j));
        }
        let grads = grads.iter().map(|g| g.as_deref());
        match &problem.inner_loop().optimizer {
            InnerOptimizer::Sgd { lr } => {
                let a = F::from_f64(*lr);
                for (p, g) in state.phi.iter_mut().zip(grads) {
                    update(p.data_mut(), g, F::zero(), |x, gi| *x -= a * gi);
                }
            }
            InnerOptimizer::MetaSgd { lr_index } => {
                for (i, (p, g)) in state.phi.iter_mut().zip(grads).enumerate() {
                    let alpha = meta_sgd_steps(theta, lr_index, i, p);
                    let mut alpha = alpha.data().iter();
                    update(p.data_mut(), g, F::zero(), |x, gi| {
                        let a = *alpha.next().expect("α has φ's shape");
                        *x -= a * gi;
                    });
                }
            }
            InnerOptimizer::Momentum { lr, beta } => {
                let (a, b) = (F::from_f64(*lr), F::from_f64(*beta));
                for ((p, v), g) in state.phi.iter_mut().zip(&mut state.velocity).zip(grads) {
                    let mut v = v.data_mut().iter_mut();
                    update(p.data_mut(), g, F::zero(), |x, gi| {
                        let vi = v.next().expect("velocity has φ's shape");
                        *vi = b * *vi + gi;
                        *x -= a * *vi;
                    });
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
        let th = leaves(t, theta, false);
        let ph = leaves(t, phi, false);
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
        self.primal.clear();
        let t = &self.primal;
        let th = leaves(t, theta, true);
        let ph = leaves(t, phi, true);
        let loss = problem.outer_loss(t, task, &th, &ph);
        let value = loss.item();
        if !value.is_finite() {
            return Err(non_finite("outer loss", step));
        }
        t.backward(loss);
        for (g, &v) in g_theta.iter_mut().zip(&th).chain(g_phi.iter_mut().zip(&ph)) {
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
        self.primal.clear();
        let t = &self.primal;
        let th = leaves(t, theta, true);
        let phi0 = problem.initial_state(t, task, &th);
        assert_eq!(
            phi0.len(),
            u.len(),
            "initial_state_vjp: Φ_0 has {} tensors but the cotangent {}",
            phi0.len(),
            u.len()
        );
        if phi0.len() == th.len() && phi0.iter().zip(&th).all(|(p, v)| p.index() == v.index()) {
            // Φ_0 returned θ itself (MAML's default): the VJP is u. Added as
            // 0 + u, the bits the sweep below would give (a fresh adjoint is
            // zero, and 1·(1·u) = u).
            for (g, ui) in g_theta.iter_mut().zip(u) {
                for (x, &y) in g.data_mut().iter_mut().zip(ui.data()) {
                    *x += F::zero() + y;
                }
            }
            return;
        }
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
            let d = t.grad_ref(v);
            update(g.data_mut(), d.as_deref(), F::zero(), |x, di| *x += di);
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
        let th = dual_leaves(t, theta, Tangent::Tensors(theta_dot));
        problem
            .initial_state(t, task, &th)
            .iter()
            .map(|&v| {
                let d = t.value_ref(v);
                Tensor::new(v.shape(), d.iter().map(|x| x.d).collect())
            })
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
        let (t, th, ph, loss) = self.hvp_pass(problem, task, j, theta, phi, v_phi, v_theta)?;
        let split = |vars: &[Var<'_, Dual<F>>]| {
            let mut g = Vec::with_capacity(vars.len());
            let mut d = Vec::with_capacity(vars.len());
            for &v in vars {
                let shape = v.shape();
                match t.grad_ref(v) {
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
        let (grad_theta, tangent_theta) = split(&th);
        let (grad_phi, tangent_phi) = split(&ph);
        Ok(InnerHvp {
            loss,
            grad_theta,
            grad_phi,
            tangent_theta,
            tangent_phi,
        })
    }

    /// The pass of [`InnerWorkspace::inner_hvp`] without copying its results
    /// out: returns the dual tape, the θ and φ leaves (whose adjoints hold
    /// ∇L_in in `.v` and the tangent products in `.d`; read them with
    /// `Tape::grad_ref`, `None` meaning zeros) and L_in.
    ///
    /// # Errors
    /// As [`InnerWorkspace::inner_hvp`].
    #[track_caller]
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    pub(crate) fn hvp_pass<P: Problem<F>>(
        &mut self,
        problem: &P,
        task: &P::Task,
        j: usize,
        theta: &[Tensor<F>],
        phi: &[Tensor<F>],
        v_phi: &[Tensor<F>],
        v_theta: Option<&[Tensor<F>]>,
    ) -> Result<(&Tape<Dual<F>>, Vars<'_, Dual<F>>, Vars<'_, Dual<F>>, F), BloError> {
        let v_theta = v_theta.map_or(Tangent::Zero, Tangent::Tensors);
        dual_pass(
            &mut self.dual,
            problem,
            task,
            j,
            theta,
            phi,
            v_theta,
            Tangent::Tensors(v_phi),
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
        let opt = &problem.inner_loop().optimizer;
        check_like("adjoint_step: cotangent", &cot.phi, &prev.phi);
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
                check_like("adjoint_step: velocity cotangent", &cot.velocity, &prev.phi);
                let a = F::from_f64(*lr);
                for (uv, u) in cot.velocity.iter().zip(&cot.phi) {
                    w.extend(uv.data().iter().zip(u.data()).map(|(&v, &x)| v - a * x));
                }
            }
        }
        let (t, th, ph, _) = dual_pass(
            &mut self.dual,
            problem,
            task,
            j,
            theta,
            &prev.phi,
            Tangent::Zero,
            Tangent::Flat(&self.w),
        )?;
        let w = &self.w[..];
        // The products, read in place from the tape: .v is ∇L_in, .d is H w
        // (on φ) and M w (on θ). A structural zero is applied as zeros.
        let on_phi: Adjoints<'_, Dual<F>> = ph.iter().map(|&v| t.grad_ref(v)).collect();
        let on_theta: Adjoints<'_, Dual<F>> = th.iter().map(|&v| t.grad_ref(v)).collect();
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
                    update(u.data_mut(), a.as_deref(), zero, |x, hw| *x -= hw.d);
                }
                for (g, a) in g_theta.iter_mut().zip(&on_theta) {
                    update(g.data_mut(), a.as_deref(), zero, |x, mw| *x -= mw.d);
                }
            }
            InnerOptimizer::Momentum { beta, .. } => {
                let b = F::from_f64(*beta);
                for (u, a) in cot.phi.iter_mut().zip(&on_phi) {
                    update(u.data_mut(), a.as_deref(), zero, |x, hw| *x += hw.d);
                }
                let mut rest = w;
                for uv in &mut cot.velocity {
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
                update(u.data_mut(), a.as_deref(), zero, |x, g| *x += g.v);
            }
            for (g, a) in g_theta.iter_mut().zip(&on_theta) {
                update(g.data_mut(), a.as_deref(), zero, |x, gt| *x += gt.v);
            }
        }
        if !tensors_finite(cot.phi.iter().chain(&cot.velocity).chain(g_theta.iter())) {
            return Err(non_finite("adjoint", j));
        }
        Ok(())
    }
}

/// A cache slot: an `Option<InnerWorkspace<F>>` for some `F`.
trait Slot {
    fn is_empty(&self) -> bool;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<F: Float> Slot for Option<InnerWorkspace<F>> {
    fn is_empty(&self) -> bool {
        self.is_none()
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
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
}

/// The pass under [`InnerWorkspace::inner_hvp`] and
/// [`InnerWorkspace::adjoint_step`]: clears the dual tape, records L_in at
/// (θ + v_θ ε, φ + v_φ ε) and runs the reverse sweep; returns the tape, the θ
/// and φ leaves (whose adjoints hold the results) and L_in.
#[track_caller]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn dual_pass<'t, F: Float, P: Problem<F>>(
    dual: &'t mut Tape<Dual<F>>,
    problem: &P,
    task: &P::Task,
    j: usize,
    theta: &[Tensor<F>],
    phi: &[Tensor<F>],
    v_theta: Tangent<'_, F>,
    v_phi: Tangent<'_, F>,
) -> Result<(&'t Tape<Dual<F>>, Vars<'t, Dual<F>>, Vars<'t, Dual<F>>, F), BloError> {
    dual.clear();
    let t: &'t Tape<Dual<F>> = dual;
    let th = dual_leaves(t, theta, v_theta);
    let ph = dual_leaves(t, phi, v_phi);
    let loss = problem.inner_loss(t, task, j, &th, &ph);
    let value = loss.item();
    if !value.v.is_finite() {
        return Err(non_finite("inner loss", j));
    }
    t.backward(loss);
    Ok((t, th, ph, value.v))
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

/// The leaves of a tensor list on a tape, in order.
fn leaves<'t, T: Real>(t: &'t Tape<T>, x: &[Tensor<T>], requires_grad: bool) -> Vars<'t, T> {
    x.iter()
        .map(|xi| t.leaf(xi.shape(), xi.data(), requires_grad))
        .collect()
}

/// Differentiable dual leaves x + v ε, written in place on the tape.
#[track_caller]
fn dual_leaves<'t, F: Float>(
    t: &'t Tape<Dual<F>>,
    x: &[Tensor<F>],
    v: Tangent<'_, F>,
) -> Vars<'t, Dual<F>> {
    fn fill<F: Float>(out: &mut [Dual<F>], x: &[F], v: &[F]) {
        for ((o, &a), &b) in out.iter_mut().zip(x).zip(v) {
            *o = Dual::new(a, b);
        }
    }
    let mut vars = Vars::new();
    let mut at = 0;
    for (i, xi) in x.iter().enumerate() {
        let xd = xi.data();
        let leaf = match v {
            Tangent::Zero => t.leaf_with(xi.shape(), true, |out| {
                for (o, &a) in out.iter_mut().zip(xd) {
                    *o = Dual::constant(a);
                }
            }),
            Tangent::Tensors(v) => {
                let Some(vi) = v.get(i) else {
                    panic!(
                        "inner_hvp: {} point tensors but {} tangents",
                        x.len(),
                        v.len()
                    )
                };
                assert_eq!(
                    vi.shape(),
                    xi.shape(),
                    "inner_hvp: point {:?} but tangent {:?}",
                    xi.shape(),
                    vi.shape()
                );
                t.leaf_with(xi.shape(), true, |out| fill(out, xd, vi.data()))
            }
            Tangent::Flat(w) => {
                let wi = &w[at..at + xd.len()];
                at += xd.len();
                t.leaf_with(xi.shape(), true, |out| fill(out, xd, wi))
            }
        };
        vars.push(leaf);
    }
    vars
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

/// Makes `dst` a copy of `src`, reusing `dst`'s tensors where the shapes match.
fn copy_tensors<F: Float>(dst: &mut Vec<Tensor<F>>, src: &[Tensor<F>]) {
    dst.truncate(src.len());
    for (d, s) in dst.iter_mut().zip(src) {
        if d.shape() == s.shape() {
            d.data_mut().copy_from_slice(s.data());
        } else {
            d.clone_from(s);
        }
    }
    let n = dst.len();
    dst.extend_from_slice(&src[n..]);
}

/// Makes `dst` zeros shaped like `like`, reusing `dst`'s tensors where the
/// shapes match.
fn zero_tensors<F: Float>(dst: &mut Vec<Tensor<F>>, like: &[Tensor<F>]) {
    dst.truncate(like.len());
    for (d, s) in dst.iter_mut().zip(like) {
        if d.shape() == s.shape() {
            d.data_mut().fill(F::zero());
        } else {
            *d = Tensor::zeros(s.shape());
        }
    }
    let n = dst.len();
    dst.extend(like[n..].iter().map(|s| Tensor::zeros(s.shape())));
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
