//! Inner optimisers as update rules written once, generic over the element
//! type ([`InnerRule`]), with their adjoints derived by the engine
//! (docs/math.md §12).
//!
//! A rule is one step s_j = R(θ, s_{j−1}, g_j; j) on the state s = (φ, e)
//! (e the rule's extra state: a velocity, Adam's moments, …, zero at j = 0),
//! with g_j = ∇_φ L_in(θ, φ_{j−1}; τ, j). Written with the tape's
//! differentiable ops over any [`Real`], the same code gives
//!
//! - the forward step (on `F`),
//! - the adjoint step: one VJP of R by a reverse sweep (on `F`), then one
//!   forward-over-reverse pass of L_in along the VJP's g-part,
//! - the forward-mode tangent step: one JVP of R (on `Dual<F>`),
//!
//! so a rule of yours works with every estimator and every checkpoint policy
//! (its extra state is checkpointed with φ). Wrap it with
//! [`InnerLoop::rule`](crate::InnerLoop::rule).
//!
//! Built in ([`builtin`]): [`Sgd`], [`MetaSgd`] (any broadcastable step
//! shape), [`Lslr`] (MAML++'s per-layer, per-step steps), [`Momentum`]
//! (heavy ball or Nesterov, β fixed or learnable), [`Adam`].
//!
//! ```
//! use blo::rules::{InnerRule, RuleStep};
//! use tape::{Real, Tape, Var};
//!
//! /// φ_j = φ_{j−1} − α tanh(g_j): a smooth sign-SGD.
//! struct SmoothSign { lr: f64 }
//! impl InnerRule for SmoothSign {
//!     fn name(&self) -> String { format!("smooth-sign(α={})", self.lr) }
//!     fn step<'t, T: Real>(&self, _t: &'t Tape<T>, _j: usize, _theta: &[Var<'t, T>],
//!         phi: &[Var<'t, T>], _extra: &[Var<'t, T>], grad: &[Var<'t, T>]) -> RuleStep<'t, T> {
//!         RuleStep {
//!             phi: phi.iter().zip(grad).map(|(&p, &g)| p - g.tanh() * self.lr).collect(),
//!             extra: Default::default(),
//!         }
//!     }
//! }
//! let inner = blo::InnerLoop::rule(5, SmoothSign { lr: 0.1 }).unwrap();
//! assert_eq!(format!("{:?}", inner.optimizer), "Rule(smooth-sign(α=0.1))");
//! ```

pub mod builtin;

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use smallvec::SmallVec;
use tape::{Dual, Real, Shape, Tape, Tensor, Var};

use crate::error::BloError;

pub use builtin::{Adam, Beta, Lslr, MetaSgd, Momentum, Sgd};

/// A list of variables (inline up to 16, so a step allocates nothing for
/// models of up to 16 tensors).
pub type Vars<'t, T> = SmallVec<[Var<'t, T>; 16]>;

/// What one step of a rule returns: φ_j (one variable per φ tensor, shaped
/// like it) and e_j (one per extra-state tensor, shaped as
/// [`InnerRule::extra_state`] says).
pub struct RuleStep<'t, T: Real> {
    /// φ_j.
    pub phi: Vars<'t, T>,
    /// e_j.
    pub extra: Vars<'t, T>,
}

/// An inner update rule: one step (θ, φ_{j−1}, e_{j−1}, g_j; j) ↦ (φ_j, e_j),
/// written once over any [`Real`] with the tape's differentiable ops. θ
/// tensors may enter the step (learnable step sizes, a learnable momentum):
/// the hypergradient flows into them.
///
/// The engine differentiates the step: write it with smooth operations where
/// you want a correct hypergradient (a `relu`, `abs` or `max` has a kink),
/// and keep every operation finite and differentiable at the zero initial
/// extra state (Adam here uses √(v̂ + ε²), not √v̂ + ε: the derivative of √v̂
/// is infinite at v̂ = 0).
///
/// See the module docs for an example and `docs/tutorial-inner-optimiser.md`
/// for a rule checked with [`crate::check_hypergradient`].
pub trait InnerRule: Send + Sync + 'static {
    /// The name with its hyperparameters, e.g. `adam(α=0.01, β1=0.9, …)`;
    /// shown in logs and errors, and written into training checkpoints'
    /// settings, where two rules with the same name count as the same.
    fn name(&self) -> String;

    /// The shapes of the extra state e (zeros at j = 0) given the shapes of
    /// φ: none for SGD, φ's shapes for a velocity, twice φ's for Adam's two
    /// moments. The default is none.
    fn extra_state(&self, phi: &[Shape]) -> Vec<Shape> {
        let _ = phi;
        Vec::new()
    }

    /// Whether the step is affine in g_j (R = A(θ, φ, e) + B(θ, φ, e) g), so
    /// its VJP with respect to g does not depend on g. The adjoint step then
    /// needs no separate gradient pass (docs/math.md §12). The default `false`
    /// is always correct; a wrong `true` is detected at the first adjoint step
    /// ([`BloError::InvalidHyperparameter`] naming the rule).
    fn affine_in_grad(&self) -> bool {
        false
    }

    /// Whether the step is R = A(θ, φ, e) + B g with B a constant linear map
    /// (B reads no θ, φ or e: SGD's −α, heavy-ball momentum's (−α, 1) for
    /// any β, Nesterov with a fixed β). This implies
    /// [`InnerRule::affine_in_grad`], and more: no part of the step's VJP
    /// depends on g, so the adjoint step takes one sweep of the rule (at
    /// g = 0) instead of two (docs/math.md §12). The default `false` is
    /// always correct; a wrong `true` is detected at the first adjoint step a
    /// workspace takes with the rule, by the VJP at g = 0 against the VJP at
    /// another g, bit for bit ([`BloError::InvalidHyperparameter`] naming
    /// the rule).
    fn constant_grad_coefficient(&self) -> bool {
        false
    }

    /// Checks the rule against θ (its values, as `f64`) and the number of
    /// steps r and, when known, the shapes of φ_0: the θ tensors it reads
    /// exist, broadcast to their φ tensors, hold valid values. Called before
    /// a run ([`crate::InnerLoop::validate_theta`],
    /// [`crate::InnerLoop::validate_phi0`]); the default accepts everything.
    ///
    /// # Errors
    /// [`BloError::InvalidHyperparameter`] naming the value.
    fn validate(
        &self,
        steps: usize,
        theta: &[Tensor<f64>],
        phi0: Option<&[Shape]>,
    ) -> Result<(), BloError> {
        let _ = (steps, theta, phi0);
        Ok(())
    }

    /// One step j (1-based): φ_j and e_j from θ, φ_{j−1}, e_{j−1} and g_j,
    /// recorded on `tape` (every input is a variable of `tape`).
    #[allow(clippy::too_many_arguments)]
    fn step<'t, T: Real>(
        &self,
        tape: &'t Tape<T>,
        j: usize,
        theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
        extra: &[Var<'t, T>],
        grad: &[Var<'t, T>],
    ) -> RuleStep<'t, T>;
}

/// [`InnerRule`] with its generic step instantiated for the four element
/// types the engine records on, so it can live behind a pointer.
trait ErasedRule: Send + Sync {
    fn name(&self) -> String;
    fn extra_state(&self, phi: &[Shape]) -> Vec<Shape>;
    fn affine_in_grad(&self) -> bool;
    fn constant_grad_coefficient(&self) -> bool;
    fn validate(
        &self,
        steps: usize,
        theta: &[Tensor<f64>],
        phi0: Option<&[Shape]>,
    ) -> Result<(), BloError>;
    fn any(&self) -> &dyn Any;
}

/// The step of an erased rule on one element type.
trait ErasedStep<T: Real> {
    #[allow(clippy::too_many_arguments)]
    fn step_on<'t>(
        &self,
        tape: &'t Tape<T>,
        j: usize,
        theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
        extra: &[Var<'t, T>],
        grad: &[Var<'t, T>],
    ) -> RuleStep<'t, T>;
}

/// The rule behind a [`Rule`]: every element type's step.
trait DynRule:
    ErasedRule + ErasedStep<f32> + ErasedStep<f64> + ErasedStep<Dual<f32>> + ErasedStep<Dual<f64>>
{
}

impl<R: InnerRule> ErasedRule for R {
    fn name(&self) -> String {
        InnerRule::name(self)
    }
    fn extra_state(&self, phi: &[Shape]) -> Vec<Shape> {
        InnerRule::extra_state(self, phi)
    }
    fn affine_in_grad(&self) -> bool {
        InnerRule::affine_in_grad(self)
    }
    fn constant_grad_coefficient(&self) -> bool {
        InnerRule::constant_grad_coefficient(self)
    }
    fn validate(
        &self,
        steps: usize,
        theta: &[Tensor<f64>],
        phi0: Option<&[Shape]>,
    ) -> Result<(), BloError> {
        InnerRule::validate(self, steps, theta, phi0)
    }
    fn any(&self) -> &dyn Any {
        self
    }
}

impl<R: InnerRule, T: Real> ErasedStep<T> for R {
    fn step_on<'t>(
        &self,
        tape: &'t Tape<T>,
        j: usize,
        theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
        extra: &[Var<'t, T>],
        grad: &[Var<'t, T>],
    ) -> RuleStep<'t, T> {
        self.step(tape, j, theta, phi, extra, grad)
    }
}

impl<R: InnerRule> DynRule for R {}

/// A shared, type-erased [`InnerRule`]: what
/// [`InnerOptimizer::Rule`](crate::InnerOptimizer::Rule) holds. Cheap to
/// clone; `Debug` prints and `==` compares [`InnerRule::name`].
#[derive(Clone)]
pub struct Rule(Arc<dyn DynRule>);

impl Rule {
    /// Wraps a rule.
    pub fn new(rule: impl InnerRule) -> Self {
        Rule(Arc::new(rule))
    }

    /// [`InnerRule::name`].
    pub fn name(&self) -> String {
        self.0.name()
    }

    /// [`InnerRule::extra_state`].
    pub fn extra_state(&self, phi: &[Shape]) -> Vec<Shape> {
        self.0.extra_state(phi)
    }

    /// [`InnerRule::affine_in_grad`].
    pub fn affine_in_grad(&self) -> bool {
        self.0.affine_in_grad()
    }

    /// [`InnerRule::constant_grad_coefficient`].
    pub fn constant_grad_coefficient(&self) -> bool {
        self.0.constant_grad_coefficient()
    }

    /// Whether `self` and `other` wrap the same rule object (not only rules
    /// of the same name).
    pub fn same_object(&self, other: &Rule) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// [`InnerRule::validate`].
    ///
    /// # Errors
    /// As [`InnerRule::validate`].
    pub fn validate(
        &self,
        steps: usize,
        theta: &[Tensor<f64>],
        phi0: Option<&[Shape]>,
    ) -> Result<(), BloError> {
        self.0.validate(steps, theta, phi0)
    }

    /// The rule as its concrete type, if it is an `R`.
    pub fn downcast_ref<R: InnerRule>(&self) -> Option<&R> {
        self.0.any().downcast_ref()
    }

    /// One step on any of the element types the engine records on (`f32`,
    /// `f64` and their duals), by the rule's [`InnerRule::step`].
    ///
    /// # Panics
    /// If `T` is none of those, or the rule returns a variable of another tape.
    #[track_caller]
    #[allow(clippy::too_many_arguments)]
    pub fn step<'t, T: Real>(
        &self,
        tape: &'t Tape<T>,
        j: usize,
        theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
        extra: &[Var<'t, T>],
        grad: &[Var<'t, T>],
    ) -> RuleStep<'t, T> {
        let any: &'t dyn Any = tape;
        macro_rules! on {
            ($ty:ty) => {
                if let Some(t) = any.downcast_ref::<Tape<$ty>>() {
                    let out = ErasedStep::<$ty>::step_on(
                        &*self.0,
                        t,
                        j,
                        &retag(t, theta),
                        &retag(t, phi),
                        &retag(t, extra),
                        &retag(t, grad),
                    );
                    return RuleStep {
                        phi: retag(tape, &out.phi),
                        extra: retag(tape, &out.extra),
                    };
                }
            };
        }
        on!(f64);
        on!(f32);
        on!(Dual<f64>);
        on!(Dual<f32>);
        panic!(
            "inner rule {}: element type {} is not one of f32, f64, Dual<f32>, Dual<f64>",
            self.name(),
            std::any::type_name::<T>()
        )
    }
}

/// `vars` (variables of a tape that is `tape` under another element type) as
/// variables of `tape`.
#[track_caller]
fn retag<'t, T: Real, U: Real>(tape: &'t Tape<U>, vars: &[Var<'t, T>]) -> Vars<'t, U> {
    vars.iter()
        .map(|v| {
            assert!(
                v.tape().id() == tape.id(),
                "inner rule: a variable of tape {} where tape {} was expected",
                v.tape().id(),
                tape.id()
            );
            tape.var_at(v.index())
        })
        .collect()
}

impl fmt::Debug for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl PartialEq for Rule {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.name() == other.name()
    }
}

/// An error unless a step returned one tensor per state tensor, each of the
/// state's shape (`what`: "φ" or "extra state"), naming the rule, the tensor
/// and both shapes.
pub(crate) fn check_step_shapes(
    rule: &Rule,
    what: &str,
    got: impl ExactSizeIterator<Item = Shape>,
    want: impl ExactSizeIterator<Item = Shape> + Clone,
) -> Result<(), BloError> {
    let (n_got, n_want) = (got.len(), want.len());
    let bad = |reason: String| BloError::invalid("inner rule", rule.name(), &reason);
    if n_got != n_want {
        return Err(bad(format!(
            "its step returned {n_got} {what} tensors, the state has {n_want}"
        )));
    }
    for (i, (g, w)) in got.zip(want).enumerate() {
        if g != w {
            return Err(bad(format!(
                "its step returned {what} tensor {i} of shape {:?}, the state's is {:?}",
                g.dims(),
                w.dims()
            )));
        }
    }
    Ok(())
}

/// Runs one step of `rule` on a scratch tape at θ, φ = 0, e = 0, g = 0 with
/// φ_0's shapes, and checks the shapes it returns ([`check_step_shapes`]).
pub(crate) fn check_trial_step(
    rule: &Rule,
    theta: &[Tensor<f64>],
    phi0: &[Shape],
) -> Result<(), BloError> {
    let extra = rule.extra_state(phi0);
    let tape = Tape::<f64>::new();
    let th: Vars<'_, f64> = theta.iter().map(|t| tape.constant(t)).collect();
    let zeros = |s: &[Shape]| -> Vars<'_, f64> {
        s.iter()
            .map(|&s| tape.constant(&Tensor::zeros(s)))
            .collect()
    };
    let (phi, e, g) = (zeros(phi0), zeros(&extra), zeros(phi0));
    let out = rule.step(&tape, 1, &th, &phi, &e, &g);
    check_step_shapes(
        rule,
        "φ",
        out.phi.iter().map(|v| v.shape()),
        phi0.iter().copied(),
    )?;
    check_step_shapes(
        rule,
        "extra state",
        out.extra.iter().map(|v| v.shape()),
        extra.iter().copied(),
    )
}
