//! # hvp: second-order products on the tape's one differentiation core
//!
//! Forward mode is the tape's forward rules run on [`Dual`] numbers;
//! forward-over-reverse is the tape's reverse sweep run on `Dual` numbers. One
//! pass returns the value, the gradient and the Hessian-vector product. This
//! crate has no per-op code: every op of `tape` gets HVPs for free.
//!
//! ```
//! use hvp::{hvp, Objective};
//! use tape::{Real, Tape, Tensor, Var};
//!
//! /// f(x) = Σ x³, so ∇f = 3x², H = diag(6x).
//! struct Cubes;
//! impl Objective<f64> for Cubes {
//!     fn eval<'t, T: Real<Base = f64>>(&self, _t: &'t Tape<T>, x: &[Var<'t, T>]) -> Var<'t, T> {
//!         x[0].powf(3.0).sum()
//!     }
//! }
//! let x = Tensor::vector(vec![1.0, 2.0]);
//! let v = Tensor::vector(vec![1.0, 1.0]);
//! let out = hvp(&Cubes, &[x], &[Some(v)]);
//! assert_eq!(out.value, 9.0);
//! assert_eq!(out.grad[0].data(), &[3.0, 12.0]);
//! assert_eq!(out.hv[0].data(), &[6.0, 12.0]);
//! ```
#![deny(missing_docs)]

use tape::{Dual, Float, Real, Tape, Tensor, Var};

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

/// The value, gradient and Hessian-vector product of an [`Objective`] at a point.
#[derive(Clone, Debug)]
pub struct HvpOutput<F: Float> {
    /// f(x).
    pub value: F,
    /// ∇f(x), one tensor per input.
    pub grad: Vec<Tensor<F>>,
    /// H(x)·v, one tensor per input (row block i is Σ_j ∂²f/∂x_i∂x_j · v_j).
    pub hv: Vec<Tensor<F>>,
}

/// Reusable tapes, so repeated products allocate nothing after the first.
#[derive(Debug, Default)]
pub struct Workspace<F: Float> {
    /// Tape for values and gradients.
    pub primal: Tape<F>,
    /// Tape for JVPs and HVPs.
    pub dual: Tape<Dual<F>>,
}

impl<F: Float> Workspace<F> {
    /// Empty tapes.
    pub fn new() -> Self {
        Workspace {
            primal: Tape::new(),
            dual: Tape::new(),
        }
    }

    /// f(x) and ∇f(x) by one reverse sweep.
    pub fn value_and_grad<O: Objective<F>>(
        &mut self,
        f: &O,
        x: &[Tensor<F>],
    ) -> (F, Vec<Tensor<F>>) {
        self.primal.clear();
        let t = &self.primal;
        let vars: Vec<Var<'_, F>> = x.iter().map(|xi| t.var(xi)).collect();
        let out = f.eval(t, &vars);
        let value = out.item();
        t.backward(out);
        (value, vars.iter().map(|&v| t.grad(v)).collect())
    }

    /// f(x) and the directional derivative ⟨∇f(x), v⟩ by one forward pass on
    /// dual numbers (a JVP). `None` tangents are zero.
    ///
    /// # Panics
    /// If `v` does not have one entry per input, or a tangent's shape differs.
    #[track_caller]
    pub fn jvp<O: Objective<F>>(
        &mut self,
        f: &O,
        x: &[Tensor<F>],
        v: &[Option<Tensor<F>>],
    ) -> (F, F) {
        self.dual.clear();
        let t = &self.dual;
        let vars = dual_inputs(t, x, v);
        let out = f.eval(t, &vars).item();
        (out.v, out.d)
    }

    /// f(x), ∇f(x) and H(x)·v in one forward-over-reverse pass. `None` tangents are
    /// zero, so a tangent on one group of inputs gives both the diagonal block
    /// H_φφ·v and the mixed block ∂²f/∂θ∂φ·v.
    ///
    /// # Panics
    /// If `v` does not have one entry per input, or a tangent's shape differs.
    #[track_caller]
    pub fn hvp<O: Objective<F>>(
        &mut self,
        f: &O,
        x: &[Tensor<F>],
        v: &[Option<Tensor<F>>],
    ) -> HvpOutput<F> {
        self.dual.clear();
        let t = &self.dual;
        let vars = dual_inputs(t, x, v);
        let out = f.eval(t, &vars);
        let value = out.item().v;
        t.backward(out);
        let mut grad = Vec::with_capacity(x.len());
        let mut hv = Vec::with_capacity(x.len());
        for &var in &vars {
            let g = t.grad(var);
            grad.push(g.map(|d| d.v));
            hv.push(g.map(|d| d.d));
        }
        HvpOutput { value, grad, hv }
    }
}

#[track_caller]
fn dual_inputs<'t, F: Float>(
    t: &'t Tape<Dual<F>>,
    x: &[Tensor<F>],
    v: &[Option<Tensor<F>>],
) -> Vec<Var<'t, Dual<F>>> {
    assert_eq!(
        x.len(),
        v.len(),
        "hvp: {} inputs but {} tangents",
        x.len(),
        v.len()
    );
    x.iter()
        .zip(v)
        .map(|(xi, vi)| {
            let data: Vec<Dual<F>> = match vi {
                Some(vi) => {
                    assert_eq!(
                        vi.shape(),
                        xi.shape(),
                        "hvp: input {:?} but tangent {:?}",
                        xi.shape(),
                        vi.shape()
                    );
                    xi.data()
                        .iter()
                        .zip(vi.data())
                        .map(|(&a, &b)| Dual::new(a, b))
                        .collect()
                }
                None => xi.data().iter().map(|&a| Dual::constant(a)).collect(),
            };
            t.leaf(xi.shape(), &data, true)
        })
        .collect()
}

/// f(x) and ∇f(x); see [`Workspace::value_and_grad`].
pub fn value_and_grad<F: Float, O: Objective<F>>(f: &O, x: &[Tensor<F>]) -> (F, Vec<Tensor<F>>) {
    Workspace::new().value_and_grad(f, x)
}

/// f(x) and ⟨∇f(x), v⟩; see [`Workspace::jvp`].
#[track_caller]
pub fn jvp<F: Float, O: Objective<F>>(f: &O, x: &[Tensor<F>], v: &[Option<Tensor<F>>]) -> (F, F) {
    Workspace::new().jvp(f, x, v)
}

/// f(x), ∇f(x) and H(x)·v; see [`Workspace::hvp`].
#[track_caller]
pub fn hvp<F: Float, O: Objective<F>>(
    f: &O,
    x: &[Tensor<F>],
    v: &[Option<Tensor<F>>],
) -> HvpOutput<F> {
    Workspace::new().hvp(f, x, v)
}
