//! A [`Problem`]'s losses seen as [`hvp::Objective`]s, so that every
//! second-order product an estimator needs (H_φφ·v, the mixed block H_θφ·v,
//! gradients) is taken by `hvp` ([`hvp::Workspace::hvp`],
//! [`hvp::Workspace::mixed_hvp`], [`hvp::Hessian`], …) and not by `blo` code.
//!
//! | adapter | the function | its inputs |
//! |---|---|---|
//! | [`InnerObjective::of_phi`] | φ ↦ L_in(θ, φ; τ, j), θ fixed | φ₁, …, φ_b |
//! | [`InnerObjective::joint`] | (θ, φ) ↦ L_in(θ, φ; τ, j) | θ₁, …, θ_a, φ₁, …, φ_b |
//! | [`OuterObjective::of_phi`] | φ ↦ L_out(θ, φ; τ), θ fixed | φ₁, …, φ_b |
//! | [`OuterObjective::joint`] | (θ, φ) ↦ L_out(θ, φ; τ) | θ₁, …, θ_a, φ₁, …, φ_b |
//!
//! The joint layout (θ first, then φ) is the one [`hvp::Workspace::mixed_hvp`]
//! calls its objective with, so one dual pass of the joint inner loss with a
//! tangent v on φ returns ∇_θ L_in, ∇_φ L_in, H_φφ v = ∂²L_in/∂φ² · v and the
//! mixed product H_θφ v = ∂²L_in/∂θ∂φ · v. With θ fixed, θ enters the tape as a
//! constant (no adjoint is computed for it), so the φ-only adapter is the
//! cheaper one for H_φφ v alone (e.g. inside a linear solver).

use tape::{Float, Real, Tape, Tensor, Var};

use crate::problem::Problem;

/// How θ enters an adapter: as the leading inputs, or as fixed values.
#[derive(Clone, Copy, Debug)]
enum Theta<'a, F> {
    /// The first `n` inputs are θ₁..θ_n.
    Inputs(usize),
    /// θ is fixed at these values (recorded as constants).
    Fixed(&'a [Tensor<F>]),
}

impl<F: Float> Theta<'_, F> {
    /// Splits the objective's inputs into (θ, φ) variables on `tape`.
    #[track_caller]
    fn split<'t, T: Real<Base = F>>(
        self,
        what: &str,
        tape: &'t Tape<T>,
        x: &[Var<'t, T>],
    ) -> (Vec<Var<'t, T>>, Vec<Var<'t, T>>) {
        match self {
            Theta::Inputs(n) => {
                assert!(
                    x.len() >= n,
                    "{what}: {} inputs but θ has {n} tensors (the joint layout is θ₁..θ_a, φ₁..φ_b)",
                    x.len()
                );
                let (th, ph) = x.split_at(n);
                (th.to_vec(), ph.to_vec())
            }
            Theta::Fixed(theta) => (
                theta.iter().map(|t| tape.constant_base(t)).collect(),
                x.to_vec(),
            ),
        }
    }
}

/// The inner loss L_in(θ, φ; τ, j) at a fixed task τ and inner-loss index j,
/// as an [`hvp::Objective`]: over φ with θ fixed ([`InnerObjective::of_phi`]),
/// or over (θ, φ) jointly ([`InnerObjective::joint`], for the mixed products
/// H_θφ v = ∂²L_in/∂θ∂φ · v).
///
/// ```
/// use blo::{InnerLoop, InnerObjective, Problem};
/// use hvp::Workspace;
/// use tape::{Real, Tape, Tensor, Var};
///
/// /// L_in = ½ θ φ² (scalars): ∇_φ L_in = θφ, H_φφ = θ, H_θφ = φ.
/// struct P { inner: InnerLoop }
/// impl Problem<f64> for P {
///     type Task = ();
///     fn inner_loop(&self) -> &InnerLoop { &self.inner }
///     fn inner_loss<'t, T: Real<Base = f64>>(&self, _t: &'t Tape<T>, _: &(), _j: usize,
///         theta: &[Var<'t, T>], phi: &[Var<'t, T>]) -> Var<'t, T> {
///         (theta[0] * phi[0] * phi[0]).sum() * 0.5
///     }
///     fn outer_loss<'t, T: Real<Base = f64>>(&self, _t: &'t Tape<T>, _: &(),
///         _theta: &[Var<'t, T>], phi: &[Var<'t, T>]) -> Var<'t, T> {
///         phi[0].sum()
///     }
/// }
/// let p = P { inner: InnerLoop::sgd(1, 0.1)? };
/// let (theta, phi) = ([Tensor::vector(vec![3.0])], [Tensor::vector(vec![2.0])]);
/// let v = [Tensor::vector(vec![1.0])];
/// let mut ws = Workspace::new();
/// // Over (θ, φ): one pass gives H_φφ v = θv = 3 and H_θφ v = φv = 2.
/// let m = ws.mixed_hvp(&InnerObjective::joint(&p, &(), 1, 1), &theta, &phi, &v);
/// assert_eq!((m.h_phiphi_v[0].data(), m.h_thetaphi_v[0].data()), (&[3.0][..], &[2.0][..]));
/// // Over φ with θ fixed: the gradient θφ = 6.
/// let (l, g) = ws.value_and_grad(&InnerObjective::of_phi(&p, &(), 1, &theta), &phi);
/// assert_eq!((l, g[0].data()), (6.0, &[6.0][..]));
/// # Ok::<(), blo::BloError>(())
/// ```
pub struct InnerObjective<'a, F: Float, P: Problem<F>> {
    problem: &'a P,
    task: &'a P::Task,
    step: usize,
    theta: Theta<'a, F>,
}

impl<'a, F: Float, P: Problem<F>> InnerObjective<'a, F, P> {
    /// φ ↦ L_in(θ, φ; τ, `step`) with θ fixed at `theta` (recorded as
    /// constants). The inputs are φ₁, …, φ_b.
    pub fn of_phi(problem: &'a P, task: &'a P::Task, step: usize, theta: &'a [Tensor<F>]) -> Self {
        InnerObjective {
            problem,
            task,
            step,
            theta: Theta::Fixed(theta),
        }
    }

    /// (θ, φ) ↦ L_in(θ, φ; τ, `step`). The inputs are θ₁, …, θ_a, φ₁, …, φ_b
    /// with a = `n_theta` (the layout of [`hvp::Workspace::mixed_hvp`]).
    pub fn joint(problem: &'a P, task: &'a P::Task, step: usize, n_theta: usize) -> Self {
        InnerObjective {
            problem,
            task,
            step,
            theta: Theta::Inputs(n_theta),
        }
    }
}

impl<F: Float, P: Problem<F>> hvp::Objective<F> for InnerObjective<'_, F, P> {
    /// Records L_in(θ, φ; τ, j).
    ///
    /// # Panics
    /// In the joint layout, if there are fewer inputs than θ tensors.
    #[track_caller]
    fn eval<'t, T: Real<Base = F>>(&self, tape: &'t Tape<T>, x: &[Var<'t, T>]) -> Var<'t, T> {
        let (th, ph) = self.theta.split("InnerObjective", tape, x);
        self.problem
            .inner_loss(tape, self.task, self.step, &th, &ph)
    }
}

/// The outer loss L_out(θ, φ; τ) at a fixed task τ as an [`hvp::Objective`]:
/// over φ with θ fixed ([`OuterObjective::of_phi`]) or over (θ, φ) jointly
/// ([`OuterObjective::joint`]: one reverse sweep gives ∇_θ L_out and ∇_φ L_out).
///
/// ```
/// use blo::{InnerLoop, OuterObjective, Problem};
/// use tape::{Real, Tape, Tensor, Var};
///
/// /// L_out = θ·Σφ: ∇_θ = Σφ, ∇_φ = θ.
/// struct P { inner: InnerLoop }
/// impl Problem<f64> for P {
///     type Task = ();
///     fn inner_loop(&self) -> &InnerLoop { &self.inner }
///     fn inner_loss<'t, T: Real<Base = f64>>(&self, _t: &'t Tape<T>, _: &(), _j: usize,
///         _theta: &[Var<'t, T>], phi: &[Var<'t, T>]) -> Var<'t, T> {
///         phi[0].square().sum()
///     }
///     fn outer_loss<'t, T: Real<Base = f64>>(&self, _t: &'t Tape<T>, _: &(),
///         theta: &[Var<'t, T>], phi: &[Var<'t, T>]) -> Var<'t, T> {
///         (theta[0] * phi[0].sum()).sum()
///     }
/// }
/// let p = P { inner: InnerLoop::sgd(1, 0.1)? };
/// let x = [Tensor::vector(vec![2.0]), Tensor::vector(vec![1.0, 4.0])];
/// let (l, g) = hvp::value_and_grad(&OuterObjective::joint(&p, &(), 1), &x);
/// assert_eq!((l, g[0].data(), g[1].data()), (10.0, &[5.0][..], &[2.0, 2.0][..]));
/// # Ok::<(), blo::BloError>(())
/// ```
pub struct OuterObjective<'a, F: Float, P: Problem<F>> {
    problem: &'a P,
    task: &'a P::Task,
    theta: Theta<'a, F>,
}

impl<'a, F: Float, P: Problem<F>> OuterObjective<'a, F, P> {
    /// φ ↦ L_out(θ, φ; τ) with θ fixed at `theta`. The inputs are φ₁, …, φ_b.
    pub fn of_phi(problem: &'a P, task: &'a P::Task, theta: &'a [Tensor<F>]) -> Self {
        OuterObjective {
            problem,
            task,
            theta: Theta::Fixed(theta),
        }
    }

    /// (θ, φ) ↦ L_out(θ, φ; τ). The inputs are θ₁, …, θ_a, φ₁, …, φ_b with
    /// a = `n_theta`.
    pub fn joint(problem: &'a P, task: &'a P::Task, n_theta: usize) -> Self {
        OuterObjective {
            problem,
            task,
            theta: Theta::Inputs(n_theta),
        }
    }
}

impl<F: Float, P: Problem<F>> hvp::Objective<F> for OuterObjective<'_, F, P> {
    /// Records L_out(θ, φ; τ).
    ///
    /// # Panics
    /// In the joint layout, if there are fewer inputs than θ tensors.
    #[track_caller]
    fn eval<'t, T: Real<Base = F>>(&self, tape: &'t Tape<T>, x: &[Var<'t, T>]) -> Var<'t, T> {
        let (th, ph) = self.theta.split("OuterObjective", tape, x);
        self.problem.outer_loss(tape, self.task, &th, &ph)
    }
}
