//! The functions this crate differentiates: scalar [`Objective`]s and
//! tensor-valued [`VectorFunction`]s, each written once for every element type.

use tape::{Float, Real, Tape, Var};

/// A scalar function of several tensors, written once for every element type.
///
/// Implement `eval` with tape ops only; the same code then runs on `F` (values
/// and gradients), on `Dual<F>` (JVPs and HVPs), and on nested duals. Data the
/// function closes over (stored as `F`) enters the tape with
/// [`Tape::constant_base`].
pub trait Objective<F: Float> {
    /// Records f(x) on `tape` and returns the scalar output.
    fn eval<'t, T: Real<Base = F>>(&self, tape: &'t Tape<T>, x: &[Var<'t, T>]) -> Var<'t, T>;
}

impl<F: Float, O: Objective<F> + ?Sized> Objective<F> for &O {
    fn eval<'t, T: Real<Base = F>>(&self, tape: &'t Tape<T>, x: &[Var<'t, T>]) -> Var<'t, T> {
        (**self).eval(tape, x)
    }
}

/// A tensor-valued function y = g(x₁, …, x_k) of several tensors, written once
/// for every element type (see [`Objective`] for the rules).
///
/// Its Jacobian J = ∂y/∂x maps a tangent v (one tensor per input) to J·v, the
/// shape of y ([`crate::Workspace::jvp_vec`]); its transpose maps a cotangent u
/// (the shape of y) to Jᵀu, one tensor per input ([`crate::Workspace::vjp_vec`]).
///
/// ```
/// use hvp::{VectorFunction, Workspace};
/// use tape::{Real, Tape, Tensor, Var};
///
/// /// y = x ⊙ x, so J = diag(2x) and J·v = 2x ⊙ v.
/// struct Square;
/// impl VectorFunction<f64> for Square {
///     fn eval<'t, T: Real<Base = f64>>(&self, _t: &'t Tape<T>, x: &[Var<'t, T>]) -> Var<'t, T> {
///         x[0] * x[0]
///     }
/// }
/// let (y, jv) = Workspace::new().jvp_vec(
///     &Square,
///     &[Tensor::vector(vec![1.0, 3.0])],
///     &[Tensor::vector(vec![1.0, -1.0])],
/// );
/// assert_eq!(y.data(), &[1.0, 9.0]);
/// assert_eq!(jv.data(), &[2.0, -6.0]);
/// ```
pub trait VectorFunction<F: Float> {
    /// Records y = g(x) on `tape` and returns it (any shape).
    fn eval<'t, T: Real<Base = F>>(&self, tape: &'t Tape<T>, x: &[Var<'t, T>]) -> Var<'t, T>;
}

impl<F: Float, G: VectorFunction<F> + ?Sized> VectorFunction<F> for &G {
    fn eval<'t, T: Real<Base = F>>(&self, tape: &'t Tape<T>, x: &[Var<'t, T>]) -> Var<'t, T> {
        (**self).eval(tape, x)
    }
}

/// Views a scalar [`Objective`] as a [`VectorFunction`] with a one-element output,
/// so the vector-valued tools (dense Jacobians, [`crate::Workspace::vjp_vec`])
/// apply to it too.
#[derive(Copy, Clone, Debug)]
pub struct AsVector<O>(pub O);

impl<F: Float, O: Objective<F>> VectorFunction<F> for AsVector<O> {
    fn eval<'t, T: Real<Base = F>>(&self, tape: &'t Tape<T>, x: &[Var<'t, T>]) -> Var<'t, T> {
        self.0.eval(tape, x)
    }
}
