//! Outer optimisers against hand-computed updates, and their state round trip.

use blo::outer::{Adam, Optimiser, OptimiserState, Schedule, Sgd};
use tape::Tensor;

#[test]
fn linear_decay_matches_formula_and_reaches_zero() {
    // η_k = η₀(1 − k/K) with η₀ = 0.3, K = 10.
    let s = Schedule::linear_decay(0.3, 10);
    for k in 0..10u64 {
        assert_eq!(s.eta(k), 0.3 * (1.0 - k as f64 / 10.0));
    }
    assert_eq!(s.eta(10), 0.0);
    assert_eq!(s.eta(11), 0.0);
}

#[test]
fn sgd_inverse_time_steps_sum_to_harmonic_series() {
    // η_k = 10/(k + 1); with g = 1 for 5 steps θ = −10·(1 + 1/2 + 1/3 + 1/4 + 1/5).
    let mut sgd = Sgd::new(Schedule::inverse_time(10.0, 1.0));
    let mut theta = vec![Tensor::vector(vec![0.0_f64, 1.0])];
    let g = vec![Tensor::vector(vec![1.0, -2.0])];
    let mut expected = [0.0_f64, 1.0];
    for k in 0..5u64 {
        assert_eq!(
            Optimiser::<f64>::learning_rate(&sgd),
            10.0 / (k as f64 + 1.0)
        );
        sgd.step(&mut theta, &g);
        let eta = 10.0 / (k as f64 + 1.0);
        expected[0] -= eta * 1.0;
        expected[1] -= eta * -2.0;
    }
    assert_eq!(theta[0].data(), &expected);
    let h5 = 1.0 + 0.5 + 1.0 / 3.0 + 0.25 + 0.2;
    assert!((theta[0].data()[0] + 10.0 * h5).abs() < 1e-12);
}

#[test]
fn adam_two_steps_match_hand_computation() {
    // β₁ = 0.9, β₂ = 0.999, ε = 1e-8, η = 0.01, θ₀ = 1, g₁ = 2, g₂ = −1:
    // step 1: m = 0.2, v = 0.004; m̂ = 2, v̂ = 4 → θ₁ = 1 − 0.01·2/(2 + ε).
    // step 2: m = 0.18 − 0.1 = 0.08, v = 0.003996 + 0.001 = 0.004996;
    //         m̂ = 0.08/0.19, v̂ = 0.004996/0.001999 → θ₂ = θ₁ − 0.01·m̂/(√v̂ + ε).
    let mut adam = Adam::<f64>::new(0.01);
    let mut theta = vec![Tensor::scalar(1.0_f64)];
    adam.step(&mut theta, &[Tensor::scalar(2.0)]);
    let th1 = 1.0 - 0.01 * 2.0 / (2.0 + 1e-8);
    assert!((theta[0].item() - th1).abs() < 1e-15);
    adam.step(&mut theta, &[Tensor::scalar(-1.0)]);
    let m_hat = 0.08 / (1.0 - 0.9f64.powi(2));
    let v_hat = 0.004996 / (1.0 - 0.999f64.powi(2));
    let th2 = th1 - 0.01 * m_hat / (v_hat.sqrt() + 1e-8);
    assert!(
        (theta[0].item() - th2).abs() < 1e-12,
        "{} vs {th2}",
        theta[0].item()
    );
}

fn grads(k: usize) -> Vec<Tensor<f32>> {
    vec![
        Tensor::new(
            [2, 2],
            (0..4).map(|i| ((k * 4 + i) as f32 * 0.37).sin()).collect(),
        ),
        Tensor::scalar((k as f32 * 1.3).cos() * 1e-3),
    ]
}

#[test]
fn adam_state_round_trips_through_json_bit_exactly() {
    let theta0 = vec![
        Tensor::new([2, 2], vec![0.1_f32, 0.2, 0.3, 0.4]),
        Tensor::scalar(-1.0_f32),
    ];
    let make = || Adam::<f32>::with_schedule(Schedule::linear_decay(0.05, 8)).betas(0.8, 0.99);
    // Straight: 8 steps.
    let mut a = make();
    let mut ta = theta0.clone();
    for k in 0..8 {
        a.step(&mut ta, &grads(k));
    }
    // Split: 3 steps, state → JSON text → new optimiser, 5 more steps.
    let mut b = make();
    let mut tb = theta0.clone();
    for k in 0..3 {
        b.step(&mut tb, &grads(k));
    }
    let json = serde_json::to_string(&Optimiser::<f32>::state(&b)).unwrap();
    let state: OptimiserState = serde_json::from_str(&json).unwrap();
    let mut c = make();
    c.load_state(&state).unwrap();
    assert_eq!(Optimiser::<f32>::steps_taken(&c), 3);
    for k in 3..8 {
        c.step(&mut tb, &grads(k));
    }
    for (x, y) in ta.iter().zip(&tb) {
        let xb: Vec<u32> = x.data().iter().map(|v| v.to_bits()).collect();
        let yb: Vec<u32> = y.data().iter().map(|v| v.to_bits()).collect();
        assert_eq!(xb, yb);
    }
    assert_eq!(Optimiser::<f32>::state(&a), Optimiser::<f32>::state(&c));
}

#[test]
fn load_state_rejects_other_kind_and_other_config() {
    let sgd_state = Optimiser::<f64>::state(&Sgd::constant(0.1));
    let mut adam = Adam::<f64>::new(0.1);
    let e = adam.load_state(&sgd_state).unwrap_err();
    assert!(e.contains("sgd") && e.contains("adam"), "{e}");
    let mut other = Sgd::constant(0.2);
    let e = Optimiser::<f64>::load_state(&mut other, &sgd_state).unwrap_err();
    assert!(e.contains("0.1") && e.contains("0.2"), "{e}");
    // An f64 Adam state does not load into an f32 Adam.
    let mut a64 = Adam::<f64>::new(0.1);
    a64.step(&mut [Tensor::scalar(0.0)], &[Tensor::scalar(1.0)]);
    let mut a32 = Adam::<f32>::new(0.1);
    let e = a32.load_state(&Optimiser::<f64>::state(&a64)).unwrap_err();
    assert!(e.contains("f64") && e.contains("f32"), "{e}");
}

#[test]
#[should_panic(expected = "Sgd::step: θ tensor 0 has shape [2], gradient [3]")]
fn sgd_shape_mismatch_panics_with_shapes() {
    let mut sgd = Sgd::constant(0.1);
    sgd.step(
        &mut [Tensor::vector(vec![0.0_f64, 0.0])],
        &[Tensor::vector(vec![1.0, 1.0, 1.0])],
    );
}
