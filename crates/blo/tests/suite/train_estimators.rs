//! The trainer with the crate's own estimators (FirstOrder, Exact, UFO).

mod train_common;

use blo::outer::{Adam, Optimiser, Sgd};
use blo::train::{task_rng, Stream, TaskSampler, Trainer};
use blo::{BloError, Exact, FirstOrder, Policy, Ufo};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tape::Tensor;
use train_common::{bits, sampler, QuadMaml, Task};

fn adaptive_ufo_bits(threads: usize) -> (Vec<u64>, usize) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        let out = Trainer::new(
            QuadMaml::new(0.1, 4),
            sampler(3),
            Ufo::adaptive(),
            Adam::new(0.05),
            vec![Tensor::vector(vec![1.0_f64, -0.5, 0.25])],
        )
        .meta_batch(6)
        .steps(15)
        .seed(9)
        .progress(false)
        .run()
        .unwrap();
        let exact: usize = out.history.iter().map(|h| h.stats.exact_branches).sum();
        (bits(&out.theta), exact)
    })
}

#[test]
fn adaptive_ufo_is_thread_count_independent() {
    let (b1, e1) = adaptive_ufo_bits(1);
    let (b4, e4) = adaptive_ufo_bits(4);
    assert_eq!(b1, b4);
    assert_eq!(e1, e4);
    assert!(e1 > 0, "the exact branch ran at least once");
}

/// One SGD step with `Exact` moves θ by −η·(1/B)Σ a_i p_i²(θ − c_i) (closed form
/// of the quadratic tasks, p_i = (1 − α a_i)^r); with `FirstOrder` by
/// −η·(1/B)Σ a_i p_i (θ − c_i).
#[test]
fn exact_and_first_order_one_step_match_closed_form() {
    let (alpha, r, b, seed, eta) = (0.15, 3, 5, 2, 0.7);
    let theta0 = vec![Tensor::vector(vec![0.4_f64, -1.2])];
    let s = sampler(2);
    let expect = |power: i32| {
        let mut e = theta0[0].data().to_vec();
        for i in 0..b {
            let t: Task = s.sample(&mut task_rng(seed, 0, i, Stream::Sampler));
            let p = (1.0 - alpha * t.a).powi(r as i32);
            for (x, (&th, &c)) in e.iter_mut().zip(theta0[0].data().iter().zip(&t.c)) {
                *x -= eta / b as f64 * t.a * p.powi(power) * (th - c);
            }
        }
        e
    };
    let run_exact = Trainer::new(
        QuadMaml::new(alpha, r),
        sampler(2),
        Exact::new(Policy::Recompute).unwrap(),
        Sgd::constant(eta),
        theta0.clone(),
    )
    .meta_batch(b)
    .steps(1)
    .seed(seed)
    .progress(false)
    .run()
    .unwrap();
    let run_fo = Trainer::new(
        QuadMaml::new(alpha, r),
        sampler(2),
        FirstOrder::new(),
        Sgd::constant(eta),
        theta0.clone(),
    )
    .meta_batch(b)
    .steps(1)
    .seed(seed)
    .progress(false)
    .run()
    .unwrap();
    for (got, want) in [(run_exact.theta, expect(2)), (run_fo.theta, expect(1))] {
        for (x, w) in got[0].data().iter().zip(&want) {
            assert!((x - w).abs() < 1e-12, "{x} vs {w}");
        }
    }
}

/// With FirstOrder, a task whose inner loss overflows at step 2 aborts the outer
/// step with that task's index in the meta-batch and inner step 2; nothing moves.
#[test]
fn first_order_blow_up_names_task_and_inner_step() {
    // Task i of step 0 blows up iff i == 3 (the sampler reads its index from
    // nothing but its stream, so mark the task by matching the stream's first draw).
    let seed = 5;
    let marker: u64 = task_rng(seed, 0, 3, Stream::Sampler).gen();
    let s = move |rng: &mut ChaCha8Rng| {
        let first: u64 = rng.gen();
        Task {
            a: 1.0,
            c: vec![rng.gen_range(-1.0..1.0)],
            blow: first == marker,
        }
    };
    let theta0 = vec![Tensor::vector(vec![0.5_f64])];
    let mut t = Trainer::new(
        QuadMaml::new(0.1, 3),
        s,
        FirstOrder::new(),
        Adam::new(0.1),
        theta0.clone(),
    )
    .meta_batch(6)
    .steps(1)
    .seed(seed)
    .progress(false);
    let err = t.run().unwrap_err();
    match err {
        BloError::NonFinite { task, step, .. } => assert_eq!((task, step), (3, 2), "{err}"),
        e => panic!("wrong error: {e}"),
    }
    assert_eq!(t.step(), 0);
    assert_eq!(bits(t.theta()), bits(&theta0));
    assert_eq!(Optimiser::<f64>::steps_taken(t.optimiser()), 0);
}

/// Boxed (dynamically chosen) estimators and optimisers train exactly like the
/// concrete ones.
#[test]
fn boxed_estimator_and_optimiser_give_the_same_bits() {
    let run = |boxed: bool| {
        let theta0 = vec![Tensor::vector(vec![0.3_f64, 0.1])];
        if boxed {
            let est: Box<dyn blo::Estimator<f64, QuadMaml>> = Box::new(Ufo::adaptive());
            let opt: Box<dyn Optimiser<f64>> = Box::new(Adam::new(0.05));
            let out = Trainer::new(QuadMaml::new(0.1, 3), sampler(2), est, opt, theta0)
                .meta_batch(4)
                .steps(8)
                .seed(4)
                .progress(false)
                .run()
                .unwrap();
            bits(&out.theta)
        } else {
            let out = Trainer::new(
                QuadMaml::new(0.1, 3),
                sampler(2),
                Ufo::adaptive(),
                Adam::new(0.05),
                theta0,
            )
            .meta_batch(4)
            .steps(8)
            .seed(4)
            .progress(false)
            .run()
            .unwrap();
            bits(&out.theta)
        }
    };
    assert_eq!(run(true), run(false));
}
