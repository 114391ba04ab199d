//! The gradient checkers of `tape::testing` themselves: they pass correct
//! rules, reject wrong ones with the evidence, and are deterministic.

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use tape::testing::{
    check_grad, check_jvp, check_vjp, random_directions, shape_strategy, tensor_avoiding,
    tensor_in, tensor_strategy, GradCheckError, Tolerance,
};
use tape::{Shape, Tensor};

fn x() -> Tensor<f64> {
    Tensor::new([2, 2], vec![0.5, -1.25, 2.0, 0.75])
}

#[test]
fn check_jvp_rejects_a_wrong_gradient() {
    // x·detach(x): value x², gradient x (should be 2x). Along v, the analytic
    // ⟨x, v⟩ is half the numeric ⟨2x, v⟩, which is far from 0 for this x and seed.
    let err = check_jvp(
        |_, v| (v[0] * v[0].detach()).sum(),
        &[x()],
        11,
        Tolerance::for_f64(),
    )
    .unwrap_err();
    match err {
        GradCheckError::Jvp {
            analytic,
            numeric,
            seed,
            ..
        } => {
            assert_eq!(seed, 11);
            assert!(
                (numeric - 2.0 * analytic).abs() < 1e-6,
                "{analytic} {numeric}"
            );
        }
        e => panic!("unexpected {e}"),
    }
}

#[test]
fn check_vjp_rejects_a_wrong_vjp() {
    // y = x ⊙ detach(x): the VJP is u ⊙ x but the Jacobian-vector product is 2x ⊙ v.
    let err = check_vjp(|_, v| v[0] * v[0].detach(), &[x()], 5, Tolerance::for_f64()).unwrap_err();
    match err {
        GradCheckError::Vjp {
            analytic, numeric, ..
        } => assert!(
            (numeric - 2.0 * analytic).abs() < 1e-6,
            "{analytic} {numeric}"
        ),
        e => panic!("unexpected {e}"),
    }
}

#[test]
fn the_error_message_names_input_element_and_values() {
    // Two inputs; only the second is wrong: f = Σ a + Σ b·detach(b).
    let a = Tensor::vector(vec![1.0, 2.0]);
    let b = Tensor::vector(vec![3.0, -4.0]);
    let err = check_grad(
        |_, v| v[0].sum() + (v[1] * v[1].detach()).sum(),
        &[a, b],
        Tolerance::for_f64(),
    )
    .unwrap_err();
    // ∂/∂b₀: tape says b₀ = 3, the difference says 2·b₀ = 6.
    let msg = err.to_string();
    assert!(
        msg.starts_with("gradient of input 1, element 0: analytic 3e0, numeric 6"),
        "{msg}"
    );
}

#[test]
fn non_finite_values_are_reported_not_compared() {
    // ln of a negative number is NaN: the check reports it instead of passing or
    // comparing NaN with NaN.
    let err = check_grad(
        |_, v| v[0].log().sum(),
        &[Tensor::vector(vec![1.0, -1.0])],
        Tolerance::for_f64(),
    )
    .unwrap_err();
    assert!(
        matches!(err, GradCheckError::NonFinite { .. }),
        "unexpected {err}"
    );
    assert!(!Tolerance::for_f64().accepts(f64::NAN, f64::NAN, 1.0));
}

#[test]
#[should_panic(expected = "check_grad: the function's output has shape [2]")]
fn check_grad_needs_a_scalar_output() {
    let _ = check_grad(
        |_, v| v[0].exp(),
        &[Tensor::vector(vec![1.0, 2.0])],
        Tolerance::for_f64(),
    );
}

#[test]
fn directions_are_deterministic_and_seed_dependent() {
    let s = [Shape::new(&[3, 2]), Shape::new(&[4])];
    let a = random_directions::<f64>(&s, 1);
    assert_eq!(a, random_directions::<f64>(&s, 1));
    assert_ne!(a, random_directions::<f64>(&s, 2));
    assert_eq!(a[0].dims(), &[3, 2]);
    assert_eq!(a[1].dims(), &[4]);
}

#[test]
fn steps_scale_with_the_input() {
    // f = Σ x⁴ at |x| ~ 1e4 (f ~ 1e17, ∇f = 4x³ ~ 1e13). With h = 1e-6·|x| = 1e-2
    // the central difference's rounding error is ~ε·f/h ≈ 2e3 and its truncation
    // error f'''·h²/6 = 4x·h² ≈ 8, both ≤ 1e-9 relative to ∇f: within the bound.
    let big = Tensor::vector(vec![1.0e4, -2.0e4]);
    check_grad(
        |_, v| v[0].powf(4.0).sum(),
        std::slice::from_ref(&big),
        Tolerance::for_f64(),
    )
    .unwrap();
    check_jvp(|_, v| v[0].powf(4.0).sum(), &[big], 3, Tolerance::for_f64()).unwrap();
}

#[test]
fn strategies_respect_their_bounds() {
    let mut runner = TestRunner::deterministic();
    for _ in 0..50 {
        let s = shape_strategy(4, 3)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        assert!(s.rank() <= 4 && s.dims().iter().all(|&d| (1..=3).contains(&d)));
        let t = tensor_strategy(s).new_tree(&mut runner).unwrap().current();
        assert_eq!(t.shape(), s);
        assert!(t.data().iter().all(|x| x.abs() <= 3.0));
        let t = tensor_in([5], 0.25, 0.5)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        assert!(t.data().iter().all(|&x| (0.25..=0.5).contains(&x)));
        let t = tensor_avoiding([20], -2.0, 2.0, &[-1.0, 1.0], 0.1)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        assert!(
            t.data()
                .iter()
                .all(|&x| (x - 1.0).abs() >= 0.1 && (x + 1.0).abs() >= 0.1),
            "{t:?}"
        );
    }
}
