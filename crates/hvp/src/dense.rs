//! Dense Hessians and Jacobians of small functions, column by column
//! (n HVPs or n JVPs for n inputs). For tests and teaching: the whole point of
//! this crate is that you rarely need them.

use tape::{Float, Tensor};

use crate::linop::{Hessian, LinOp};
use crate::objective::{Objective, VectorFunction};
use crate::workspace::Workspace;

/// The matrix of a [`LinOp`], as an `[n, n]` tensor: column j is A·e_j
/// (n applications).
pub fn dense_matrix<F: Float>(a: &impl LinOp<F>) -> Tensor<F> {
    let n = a.dim();
    let mut m = Tensor::zeros([n, n]);
    let mut e = vec![F::zero(); n];
    let mut col = vec![F::zero(); n];
    for j in 0..n {
        e[j] = F::one();
        a.apply(&e, &mut col);
        e[j] = F::zero();
        for (i, &c) in col.iter().enumerate() {
            m.data_mut()[i * n + j] = c;
        }
    }
    m
}

/// The full Hessian ∇²f(x) over all inputs, flattened and concatenated in order,
/// as an `[n, n]` tensor (n forward-over-reverse passes).
///
/// ```
/// use hvp::{dense_hessian, Objective};
/// use tape::{Real, Tape, Tensor, Var};
/// /// f(x) = x₀²·x₁: H = [[2x₁, 2x₀], [2x₀, 0]].
/// struct F;
/// impl Objective<f64> for F {
///     fn eval<'t, T: Real<Base = f64>>(&self, _t: &'t Tape<T>, x: &[Var<'t, T>]) -> Var<'t, T> {
///         (x[0] * x[0] * x[1]).sum()
///     }
/// }
/// let h = dense_hessian(&F, &[Tensor::vector(vec![3.0]), Tensor::vector(vec![5.0])]);
/// assert_eq!(h.data(), &[10.0, 6.0, 6.0, 0.0]);
/// ```
pub fn dense_hessian<F: Float, O: Objective<F>>(f: &O, x: &[Tensor<F>]) -> Tensor<F> {
    dense_matrix(&Hessian::new(f, x))
}

/// The Jacobian ∂y/∂x of a tensor-valued function as an `[m, n]` tensor, where
/// m is the number of output elements and n the total number of input
/// elements (inputs flattened and concatenated in order). Column j is one JVP
/// along e_j.
///
/// ```
/// use hvp::{dense_jacobian, VectorFunction};
/// use tape::{Real, Tape, Tensor, Var};
/// /// y = [x₀·x₁, x₀ + x₁]: J = [[x₁, x₀], [1, 1]].
/// struct G;
/// impl VectorFunction<f64> for G {
///     fn eval<'t, T: Real<Base = f64>>(&self, _t: &'t Tape<T>, x: &[Var<'t, T>]) -> Var<'t, T> {
///         let (a, b) = (x[0].slice(0, 0, 1), x[0].slice(0, 1, 2));
///         tape::concat(&[a * b, a + b], 0)
///     }
/// }
/// let j = dense_jacobian(&G, &[Tensor::vector(vec![2.0, 3.0])]);
/// assert_eq!(j.data(), &[3.0, 2.0, 1.0, 1.0]);
/// ```
pub fn dense_jacobian<F: Float, G: VectorFunction<F>>(g: &G, x: &[Tensor<F>]) -> Tensor<F> {
    let mut ws = Workspace::new();
    let n: usize = x.iter().map(Tensor::numel).sum();
    let mut tangents: Vec<Tensor<F>> = x.iter().map(|xi| Tensor::zeros(xi.shape())).collect();
    let mut jac: Vec<F> = Vec::new();
    let mut m = 0;
    let mut col = 0;
    for (i, xi) in x.iter().enumerate() {
        for k in 0..xi.numel() {
            tangents[i].data_mut()[k] = F::one();
            let (_, jv) = ws.jvp_vec(g, x, &tangents);
            tangents[i].data_mut()[k] = F::zero();
            if col == 0 {
                m = jv.numel();
                jac = vec![F::zero(); m * n];
            }
            for (r, &d) in jv.data().iter().enumerate() {
                jac[r * n + col] = d;
            }
            col += 1;
        }
    }
    if n == 0 {
        let (y, _) = ws.jvp_vec(g, x, &tangents);
        m = y.numel();
    }
    Tensor::new([m, n], jac)
}
