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

/// Runs `$body` with `$t` bound to `$tape` as a `Tape<$ty>` for the one of the
/// engine's element types (f64, f32 and their duals) it is, and returns the
/// body's value from the enclosing function; falls through for another type.
macro_rules! for_tape_types {
    ($tape:expr, |$t:ident: $ty:ident| $body:block) => {{
        let any: &dyn Any = $tape;
        for_tape_types!(@one any, $t, $ty, f64, $body);
        for_tape_types!(@one any, $t, $ty, f32, $body);
        for_tape_types!(@one any, $t, $ty, Dual<f64>, $body);
        for_tape_types!(@one any, $t, $ty, Dual<f32>, $body);
    }};
    (@one $any:ident, $t:ident, $ty:ident, $real:ty, $body:block) => {
        if let Some($t) = $any.downcast_ref::<Tape<$real>>() {
            type $ty = $real;
            return $body;
        }
    };
}

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

    /// Whether the step may be taken once on φ concatenated ("flat", docs/math.md
    /// §12 "Flat steps"): the engine then calls [`InnerRule::flat_step`] on one `[N]`
    /// vector each for φ, g and every extra-state group (N = Σ_i |φ_i|),
    /// instead of [`InnerRule::step`] on L φ tensors: L times fewer tape
    /// nodes per step, the same numbers.
    ///
    /// The contract, for every split of φ into tensors:
    /// - [`InnerRule::extra_state`] is K tensors shaped like φ, group by group
    ///   (φ's shapes K times over, K ≥ 0), so that `extra_state(&[[N]])` is
    ///   K tensors `[N]` (this is how the engine stores e for such a rule);
    /// - the flat step's outputs are the per-tensor step's concatenated, and
    ///   so are the adjoints of its VJP (θ's included), bit for bit: every
    ///   element is computed by the same operations from the same-index
    ///   elements of φ, e, g and from θ, a θ-tensor read per φ tensor being
    ///   spread over its segment ([`Segments::scale`] for one factor per φ
    ///   tensor, [`Segments::per_segment`]).
    ///
    /// SGD, Meta-SGD, LSLR, Adam and momentum with a fixed β qualify; a learnable θ scalar
    /// broadcast over *several* φ tensors does not (its adjoint is one sum
    /// over the flat vector instead of per-tensor sums added up, which rounds
    /// differently). The default `false` is always correct; a wrong `true` is
    /// detected at the first step a workspace takes with the rule, by the
    /// flat step and its VJP against the per-tensor ones at that state
    /// (g and the cotangent fixed non-zero patterns), bit for bit
    /// ([`BloError::InvalidHyperparameter`] naming the rule).
    fn elementwise(&self) -> bool {
        false
    }

    /// Whether an elementwise rule's step is one fixed linear map of
    /// (φ, e, g) per element: `s_j[k] = D (φ[k], e[k], g[k])` with D reading
    /// no θ, no state and not j (SGD; heavy-ball and Nesterov momentum with
    /// a fixed β). The engine then takes D from sweeps of the step once per
    /// workspace and rule, and steps and adjoint steps are passes over the
    /// state with D's entries, with no tape (docs/math.md §12, "Fixed linear
    /// steps"). Used only with [`InnerRule::elementwise`]. The default `false`
    /// is always correct; a wrong `true` is detected at the first step a
    /// workspace takes with the rule: D from a zero state at step j and from
    /// a non-zero state at step j + 1 must agree bit for bit, θ must get no
    /// adjoint, and the step at both states must equal D applied to them (to
    /// a few rounding errors) ([`BloError::InvalidHyperparameter`] naming the
    /// rule).
    fn fixed_linear(&self) -> bool {
        false
    }

    /// One step j on φ concatenated ([`InnerRule::elementwise`]): `phi` and
    /// `grad` are `[N]` vectors laid out as `segments` says (φ tensor i is
    /// segment i), `extra` the extra state as `extra_state(&[[N]])` shapes
    /// it. Returns φ_j as one `[N]` variable and e_j. The default is
    /// [`InnerRule::step`] on the one-element lists, right for a rule that
    /// reads θ alike for every φ tensor; a rule with per-tensor θ (Meta-SGD with a step per tensor,
    /// LSLR) overrides it and spreads them over their segments ([`Segments::scale`]).
    #[allow(clippy::too_many_arguments)]
    fn flat_step<'t, T: Real>(
        &self,
        tape: &'t Tape<T>,
        j: usize,
        theta: &[Var<'t, T>],
        segments: &Segments,
        phi: Var<'t, T>,
        extra: &[Var<'t, T>],
        grad: Var<'t, T>,
    ) -> RuleStep<'t, T> {
        let _ = segments;
        self.step(tape, j, theta, &[phi], extra, &[grad])
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
    fn elementwise(&self) -> bool;
    fn fixed_linear(&self) -> bool;
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
    #[allow(clippy::too_many_arguments)]
    fn flat_step_on<'t>(
        &self,
        tape: &'t Tape<T>,
        j: usize,
        theta: &[Var<'t, T>],
        segments: &Segments,
        phi: Var<'t, T>,
        extra: &[Var<'t, T>],
        grad: Var<'t, T>,
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
    fn elementwise(&self) -> bool {
        InnerRule::elementwise(self)
    }
    fn fixed_linear(&self) -> bool {
        InnerRule::fixed_linear(self)
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
    fn flat_step_on<'t>(
        &self,
        tape: &'t Tape<T>,
        j: usize,
        theta: &[Var<'t, T>],
        segments: &Segments,
        phi: Var<'t, T>,
        extra: &[Var<'t, T>],
        grad: Var<'t, T>,
    ) -> RuleStep<'t, T> {
        self.flat_step(tape, j, theta, segments, phi, extra, grad)
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
        for_tape_types!(tape, |t: U| {
            let out = ErasedStep::<U>::step_on(
                &*self.0,
                t,
                j,
                &retag(t, theta),
                &retag(t, phi),
                &retag(t, extra),
                &retag(t, grad),
            );
            RuleStep {
                phi: retag(tape, &out.phi),
                extra: retag(tape, &out.extra),
            }
        });
        self.unsupported::<T>()
    }

    /// [`InnerRule::elementwise`].
    pub fn elementwise(&self) -> bool {
        self.0.elementwise()
    }

    /// [`InnerRule::fixed_linear`] of an elementwise rule (`false` for a
    /// rule that is not [`InnerRule::elementwise`]): φ_j = φ − α g is
    /// D (φ, g) with D = (1, −α); Adam's step is not linear.
    ///
    /// ```
    /// use blo::rules::{Adam, Rule, Sgd};
    /// assert!(Rule::new(Sgd::new(0.1).unwrap()).fixed_linear());
    /// assert!(!Rule::new(Adam::new(0.01, 0.9, 0.999, 1e-8).unwrap()).fixed_linear());
    /// ```
    pub fn fixed_linear(&self) -> bool {
        self.0.elementwise() && self.0.fixed_linear()
    }

    /// The shapes of the extra state as the engine stores it for φ of shapes
    /// `phi`: [`InnerRule::extra_state`], or for an elementwise rule
    /// (docs/math.md §12, "Flat steps") `extra_state(&[[N]])`, N = Σ_i |φ_i|.
    pub fn stored_extra_state(&self, phi: &[Shape]) -> Vec<Shape> {
        if self.elementwise() {
            self.extra_state(&[Segments::flat_shape(phi)])
        } else {
            self.extra_state(phi)
        }
    }

    /// One flat step ([`InnerRule::flat_step`]) on any of the element types
    /// the engine records on.
    ///
    /// # Panics
    /// As [`Rule::step`].
    #[track_caller]
    #[allow(clippy::too_many_arguments)]
    pub fn flat_step<'t, T: Real>(
        &self,
        tape: &'t Tape<T>,
        j: usize,
        theta: &[Var<'t, T>],
        segments: &Segments,
        phi: Var<'t, T>,
        extra: &[Var<'t, T>],
        grad: Var<'t, T>,
    ) -> RuleStep<'t, T> {
        for_tape_types!(tape, |t: U| {
            let one = |v: Var<'t, T>| retag(t, &[v])[0];
            let out = ErasedStep::<U>::flat_step_on(
                &*self.0,
                t,
                j,
                &retag(t, theta),
                segments,
                one(phi),
                &retag(t, extra),
                one(grad),
            );
            RuleStep {
                phi: retag(tape, &out.phi),
                extra: retag(tape, &out.extra),
            }
        });
        self.unsupported::<T>()
    }

    #[track_caller]
    fn unsupported<T: Real>(&self) -> ! {
        panic!(
            "inner rule {}: element type {} is not one of f32, f64, Dual<f32>, Dual<f64>",
            self.name(),
            std::any::type_name::<T>()
        )
    }
}

/// The layout of φ concatenated into one `[N]` vector for an elementwise rule
/// ([`InnerRule::elementwise`], docs/math.md §12, "Flat steps"): φ tensor i is the
/// segment `range(i)`, its elements in row-major order.
#[derive(Clone, Debug, Default)]
pub struct Segments {
    shapes: SmallVec<[Shape; 16]>,
    /// Segment i's element count, prefix-summed: segment i is `ends[i-1]..ends[i]`.
    ends: SmallVec<[usize; 16]>,
    /// The segment of every element (built on first use).
    ids: std::sync::OnceLock<Vec<usize>>,
}

impl Segments {
    /// The layout of φ tensors of shapes `phi`.
    ///
    /// ```
    /// use blo::rules::Segments;
    /// use tape::Shape;
    /// let s = Segments::new(&[Shape::new(&[2, 3]), Shape::new(&[3])]);
    /// assert_eq!((s.len(), s.numel(), s.range(1)), (2, 9, 6..9));
    /// ```
    pub fn new(phi: &[Shape]) -> Self {
        let mut n = 0;
        Segments {
            shapes: phi.iter().copied().collect(),
            ends: phi
                .iter()
                .map(|s| {
                    n += s.numel();
                    n
                })
                .collect(),
            ids: Default::default(),
        }
    }

    /// The flat shape `[N]` of φ tensors of shapes `phi`, N = Σ_i |φ_i|.
    pub fn flat_shape(phi: &[Shape]) -> Shape {
        Shape::new(&[phi.iter().map(|s| s.numel()).sum()])
    }

    /// Whether this is the layout of φ tensors of shapes `phi`.
    pub fn is_of(&self, phi: &[Shape]) -> bool {
        self.shapes.as_slice() == phi
    }

    /// The φ tensors' shapes.
    pub fn shapes(&self) -> &[Shape] {
        &self.shapes
    }

    /// The number of segments L (φ tensors).
    pub fn len(&self) -> usize {
        self.shapes.len()
    }

    /// Whether there are no segments.
    pub fn is_empty(&self) -> bool {
        self.shapes.is_empty()
    }

    /// N, the number of elements of φ.
    pub fn numel(&self) -> usize {
        self.ends.last().copied().unwrap_or(0)
    }

    /// Where φ tensor i lies in the flat vector.
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn range(&self, i: usize) -> std::ops::Range<usize> {
        (if i == 0 { 0 } else { self.ends[i - 1] })..self.ends[i]
    }

    /// x (L elements, any shape: one value per φ tensor, e.g. a row of a
    /// step-size table) spread to `[N]`: element i over segment i. Its VJP
    /// sums the cotangent over each segment in element order, as a `[1]`
    /// operand broadcast over φ tensor i sums it (one `index_select` node).
    ///
    /// ```
    /// use blo::rules::Segments;
    /// use tape::{Shape, Tape, Tensor};
    /// let s = Segments::new(&[Shape::new(&[2]), Shape::new(&[1, 3])]);
    /// let t = Tape::<f64>::new();
    /// let a = t.var(&Tensor::vector(vec![1.0, 2.0]));
    /// let y = s.per_segment(a);
    /// assert_eq!(y.value().data(), &[1.0, 1.0, 2.0, 2.0, 2.0]);
    /// ```
    ///
    /// # Panics
    /// If x does not have L elements.
    #[track_caller]
    pub fn per_segment<'t, T: Real>(&self, x: Var<'t, T>) -> Var<'t, T> {
        assert_eq!(
            x.shape().numel(),
            self.len(),
            "Segments::per_segment: x {:?} needs one element per φ tensor ({})",
            x.shape().dims(),
            self.len()
        );
        let ids = self.ids.get_or_init(|| {
            (0..self.len())
                .flat_map(|i| std::iter::repeat_n(i, self.range(i).len()))
                .collect()
        });
        let flat = Shape::new(&[self.len()]);
        let x = if x.shape() == flat {
            x
        } else {
            x.reshape(flat)
        };
        x.index_select(0, ids)
    }
}

impl Segments {
    /// x ⊙ (a spread over the segments): x_k·a_i for k in segment i, with x
    /// `[N]` laid out as `self` and a L elements (any shape: one factor per φ
    /// tensor, e.g. a row of a step-size table), in one tape node
    /// ([`Var::mul_segments`]) whose adjoints are, bit for bit, those of
    /// `x_i * a_i` per φ tensor with `a_i` a `[1]` operand.
    ///
    /// ```
    /// use blo::rules::Segments;
    /// use tape::{Shape, Tape, Tensor};
    /// let s = Segments::new(&[Shape::new(&[2]), Shape::new(&[1, 3])]);
    /// let t = Tape::<f64>::new();
    /// let x = t.var(&Tensor::vector(vec![1.0; 5]));
    /// let a = t.var(&Tensor::vector(vec![1.0, 2.0]));
    /// assert_eq!(s.scale(x, a).value().data(), &[1.0, 1.0, 2.0, 2.0, 2.0]);
    /// ```
    ///
    /// # Panics
    /// If x is not `[N]` or a does not have L elements.
    #[track_caller]
    pub fn scale<'t, T: Real>(&self, x: Var<'t, T>, a: Var<'t, T>) -> Var<'t, T> {
        let flat = Shape::new(&[a.shape().numel()]);
        let a = if a.shape() == flat {
            a
        } else {
            a.reshape(flat)
        };
        x.mul_segments(a, &self.ends)
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
/// φ_0's shapes, and checks the shapes it returns ([`check_step_shapes`]);
/// for an elementwise rule, its flat step too.
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
    // The returned shapes against the state's (`flat`: of the flat step).
    let check = |out: &RuleStep<'_, f64>, phi: &[Shape], extra: &[Shape], flat: &str| {
        check_step_shapes(
            rule,
            &format!("{flat}φ"),
            out.phi.iter().map(|v| v.shape()),
            phi.iter().copied(),
        )?;
        check_step_shapes(
            rule,
            &format!("{flat}extra state"),
            out.extra.iter().map(|v| v.shape()),
            extra.iter().copied(),
        )
    };
    let (phi, e, g) = (zeros(phi0), zeros(&extra), zeros(phi0));
    check(&rule.step(&tape, 1, &th, &phi, &e, &g), phi0, &extra, "")?;
    if rule.elementwise() {
        let segments = Segments::new(phi0);
        let flat = [Segments::flat_shape(phi0)];
        let extra = rule.extra_state(&flat);
        let (phi, e, g) = (zeros(&flat), zeros(&extra), zeros(&flat));
        let out = rule.flat_step(&tape, 1, &th, &segments, phi[0], &e, g[0]);
        check(&out, &flat, &extra, "flat ")?;
    }
    Ok(())
}
