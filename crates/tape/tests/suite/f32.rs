//! Single precision: the same rules in f32 agree with f64 to f32 accuracy, and
//! the f32 tolerance preset of `tape::testing` accepts f32 gradients.

use tape::testing::{check_grad, check_vjp, Tolerance};
use tape::{Float, Tape, Tensor, Var};

/// A two-layer MLP's cross-entropy loss on fixed data, for any float type.
fn mlp_loss<'t, T: Float>(t: &'t Tape<T>, p: &[Var<'t, T>]) -> Var<'t, T> {
    let x = t.constant(&Tensor::from_fn([6, 5], |i| {
        T::from_f64((i as f64 * 0.37).sin())
    }));
    let h = (x.matmul(p[0]) + p[1]).tanh();
    let logits = h.matmul(p[2]) + p[3];
    logits.softmax_cross_entropy(&[0, 1, 2, 0, 1, 2])
}

fn params() -> Vec<Tensor<f64>> {
    vec![
        Tensor::from_fn([5, 7], |i| (i as f64 * 0.11).cos() * 0.6),
        Tensor::from_fn([7], |i| i as f64 * 0.05 - 0.1),
        Tensor::from_fn([7, 3], |i| (i as f64 * 0.23).sin() * 0.6),
        Tensor::from_fn([3], |i| i as f64 * 0.1),
    ]
}

fn value_and_grads<T: Float>(params: &[Tensor<T>]) -> (f64, Vec<Vec<f64>>) {
    let t = Tape::<T>::new();
    let p: Vec<_> = params.iter().map(|x| t.var(x)).collect();
    let loss = mlp_loss(&t, &p);
    t.backward(loss);
    let grads = p
        .iter()
        .map(|&v| t.grad(v).data().iter().map(|x| x.to_f64()).collect())
        .collect();
    (loss.item().to_f64(), grads)
}

#[test]
fn mlp_gradient_in_f32_agrees_with_f64() {
    let p64 = params();
    let p32: Vec<Tensor<f32>> = p64.iter().map(|x| x.cast()).collect();
    let (l64, g64) = value_and_grads(&p64);
    let (l32, g32) = value_and_grads(&p32);
    // f32 carries ~7 digits; a few dozen roundings per entry keep the error
    // well under 1e-5 relative to the gradient's scale.
    assert!(
        (l64 - l32).abs() <= 1e-5 * l64.abs().max(1.0),
        "{l64} vs {l32}"
    );
    let scale = g64.iter().flatten().fold(0.0f64, |m, x| m.max(x.abs()));
    for (k, (a, b)) in g64.iter().zip(&g32).enumerate() {
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-5 * scale,
                "param {k}, element {i}: f64 {x} vs f32 {y} (scale {scale})"
            );
        }
    }
}

#[test]
fn f32_gradients_pass_the_f32_tolerance() {
    let p32: Vec<Tensor<f32>> = params().iter().map(|x| x.cast()).collect();
    check_grad(mlp_loss, &p32, Tolerance::for_f32()).unwrap();
    // A matrix-valued map in f32: tanh(A·B), A [4, 5], B [5, 3].
    let a = Tensor::from_fn([4, 5], |i| (i as f32 * 0.4).cos());
    let b = Tensor::from_fn([5, 3], |i| (i as f32 * 0.3).sin());
    check_vjp(
        |_, v| v[0].matmul(v[1]).tanh(),
        &[a, b],
        3,
        Tolerance::for_f32(),
    )
    .unwrap();
    assert_eq!(Tolerance::for_float::<f32>(), Tolerance::for_f32());
    assert_eq!(Tolerance::for_float::<f64>(), Tolerance::for_f64());
}

#[test]
fn the_f32_tolerance_still_catches_a_wrong_rule() {
    // x·detach(x) has the value x² but the gradient x instead of 2x: at order-one
    // inputs the discrepancy (≈ x) is far above the f32 bound.
    let x = Tensor::<f32>::vector(vec![0.5, 1.5, -1.0]);
    let err = check_grad(
        |_, v| (v[0] * v[0].detach()).sum(),
        &[x],
        Tolerance::for_f32(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("input 0, element 0"), "{err}");
}
