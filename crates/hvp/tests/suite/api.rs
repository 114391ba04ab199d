//! Programmer errors panic with the shapes in the message; the generic code
//! also runs in f32; `flatten`/`unflatten` are inverse.

mod common;

use hvp::{cg, flatten, hvp, unflatten, CgParams, Damped, Hessian, LinOp, Objective, Workspace};
use tape::{Real, Tape, Tensor, Var};

/// f(x) = ½ Σ x² + Σ x³/3 = ½‖x‖² + ⅓ Σ x³: ∇f = x + x², H = I + 2·diag(x).
struct Cubic;

impl<F: tape::Float> Objective<F> for Cubic {
    fn eval<'t, T: Real<Base = F>>(&self, _t: &'t Tape<T>, x: &[Var<'t, T>]) -> Var<'t, T> {
        x[0].square().sum().mul_scalar(0.5) + x[0].powf(3.0).sum().mul_scalar(1.0 / 3.0)
    }
}

#[test]
#[should_panic(expected = "hvp: input [3] but tangent [2]")]
fn hvp_rejects_a_misshapen_tangent() {
    let x = [Tensor::vector(vec![1.0, 2.0, 3.0])];
    hvp(&Cubic, &x, &[Tensor::vector(vec![1.0, 2.0])]);
}

#[test]
#[should_panic(expected = "jvp_partial: 1 inputs but 2 tangents")]
fn jvp_rejects_a_wrong_number_of_tangents() {
    let x = [Tensor::vector(vec![1.0_f64])];
    Workspace::new().jvp_partial(&Cubic, &x, &[None, None]);
}

#[test]
#[should_panic(expected = "mixed_hvp: φ input [2] but tangent [3]")]
fn mixed_hvp_rejects_a_misshapen_tangent() {
    let t = [Tensor::vector(vec![1.0_f64])];
    let p = [Tensor::vector(vec![1.0, 2.0])];
    Workspace::new().mixed_hvp(&Cubic, &t, &p, &[Tensor::vector(vec![1.0, 2.0, 3.0])]);
}

#[test]
#[should_panic(expected = "Hessian::apply: operator of dimension 3 applied to x of length 2")]
fn hessian_apply_rejects_a_wrong_length() {
    let x = [Tensor::vector(vec![1.0_f64, 2.0, 3.0])];
    let h = Hessian::new(&Cubic, &x);
    h.apply(&[1.0, 2.0], &mut [0.0; 3]);
}

#[test]
#[should_panic(expected = "cg: operator of dimension 3 but right-hand side of length 4")]
fn cg_rejects_a_wrong_rhs_length() {
    let x = [Tensor::vector(vec![1.0_f64, 2.0, 3.0])];
    let _ = cg(&Hessian::new(&Cubic, &x), &[1.0; 4], CgParams::default());
}

#[test]
#[should_panic(expected = "Hessian::block: input index 2 out of range for 1 inputs")]
fn hessian_block_rejects_a_bad_index() {
    let x = [Tensor::vector(vec![1.0_f64])];
    Hessian::block(&Cubic, &x, &[2]);
}

#[test]
fn f32_hvp_and_cg_agree_with_the_closed_form() {
    // H = I + 2·diag(x) at x = (0.5, 1, 2): diag(2, 3, 5); all products exact in f32.
    let x = [Tensor::vector(vec![0.5_f32, 1.0, 2.0])];
    let out = hvp(&Cubic, &x, &[Tensor::vector(vec![1.0, 1.0, 1.0])]);
    assert_eq!(out.grad[0].data(), &[0.75, 2.0, 6.0]);
    assert_eq!(out.hv[0].data(), &[2.0, 3.0, 5.0]);
    // (H + I) s = (3, 4, 6) ⇒ s = (1, 1, 1).
    let h = Hessian::new(&Cubic, &x);
    let params = CgParams {
        tol: 1e-6,
        max_iter: 10,
    };
    let (s, _) = cg(&Damped::new(&h, 1.0f32), &[3.0, 4.0, 6.0], params).unwrap();
    common::assert_close(
        "f32 CG",
        &s.iter().map(|&v| v as f64).collect::<Vec<_>>(),
        &[1.0, 1.0, 1.0],
        1e-6,
    );
}

#[test]
fn flatten_and_unflatten_are_inverse() {
    let xs = [
        Tensor::new([2, 2], vec![1.0_f64, 2.0, 3.0, 4.0]),
        Tensor::scalar(5.0),
        Tensor::vector(vec![6.0, 7.0]),
    ];
    let flat = flatten(&xs);
    assert_eq!(flat, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
    assert_eq!(unflatten(&flat, &xs), xs.to_vec());
}

#[test]
fn as_vector_makes_the_jacobian_of_a_scalar_its_gradient_row() {
    // ∇f = x + x² at x = (0.5, −1, 2): (0.75, 0, 6).
    let x = [Tensor::vector(vec![0.5_f64, -1.0, 2.0])];
    let j = hvp::dense_jacobian(&hvp::AsVector(&Cubic), &x);
    assert_eq!(j.dims(), &[1, 3]);
    assert_eq!(j.data(), &[0.75, 0.0, 6.0]);
    let (y, jt) = Workspace::new().vjp_vec(&hvp::AsVector(&Cubic), &x, &Tensor::scalar(2.0));
    // f = ½(0.25 + 1 + 4) + ⅓(0.125 − 1 + 8) = 2.625 + 2.375 = 5.
    assert!((y.item() - 5.0).abs() < 1e-15);
    assert_eq!(jt[0].data(), &[1.5, 0.0, 12.0]);
}

/// f(a, b) = Σ a²·b (elementwise): ∇_a = 2ab, ∇_b = a²;
/// H·(v_a, v_b) = (2b v_a + 2a v_b, 2a v_a).
struct Mixed;
impl Objective<f64> for Mixed {
    fn eval<'t, T: Real<Base = f64>>(&self, _t: &'t Tape<T>, x: &[Var<'t, T>]) -> Var<'t, T> {
        (x[0] * x[0] * x[1]).sum()
    }
}

#[test]
fn partial_directions_equal_full_ones_with_zeros() {
    let x = [
        Tensor::vector(vec![1.0, 2.0]),
        Tensor::vector(vec![3.0, -1.0]),
    ];
    let va = Tensor::vector(vec![0.5, -2.0]);
    let mut ws = Workspace::new();
    let partial = ws.hvp_partial(&Mixed, &x, &[Some(va.clone()), None]);
    let full = ws.hvp(&Mixed, &x, &[va.clone(), Tensor::zeros([2])]);
    // H·(v_a, 0) = (2b v_a, 2a v_a) = ([3, 4], [1, -8]).
    assert_eq!(partial.hv[0].data(), &[3.0, 4.0]);
    assert_eq!(partial.hv[1].data(), &[1.0, -8.0]);
    assert_eq!(partial.hv, full.hv);
    assert_eq!(partial.grad, full.grad);
    // JVPs likewise: ⟨∇f, (v_a, 0)⟩ = Σ 2ab·v_a = 2·3·0.5 + 2·2·(−1)·(−2) = 3 + 8 = 11.
    let (_, d_partial) = ws.jvp_partial(&Mixed, &x, &[Some(va.clone()), None]);
    let (_, d_full) = ws.jvp(&Mixed, &x, &[va, Tensor::zeros([2])]);
    assert_eq!((d_partial, d_full), (11.0, 11.0));
}
