//! Inner optimisers as rules (docs/math.md §12): every built-in rule under
//! every estimator against central differences, every checkpoint policy bit
//! for bit against store-all, the generic path against the hand-derived fast
//! paths, Adam at zero moments, and the typed errors.

use blo::rules::{Adam, Beta, Lslr, MetaSgd, Momentum, Sgd};
use blo::{
    check_hypergradient, meta_loss, rollout, BloError, Budget, Estimate, Estimator, Exact,
    FirstOrder, ForwardMode, InnerLoop, InnerRule, Policy, Problem, ReptileExact, RuleStep,
    Truncated, Ufo,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tape::{Real, Shape, Tape, Tensor, Var};

/// A small smooth problem: φ = (W [2,3], b [3], v [3]), prediction
/// tanh(X W + b)·v, squared error; the batch of inner step j is a closed-form
/// function of j. θ = (W₀, b₀, v₀, ρ, rule tensors…): Φ_0(θ) = θ[..3], and
/// L_in carries a θ-weighted penalty ½ σ(ρ) ‖W‖² / 10 so the mixed product M
/// is non-zero.
struct Net {
    inner: InnerLoop,
}

fn batch(j: usize, n: usize) -> (Tensor<f64>, Tensor<f64>) {
    let x = (0..n * 2)
        .map(|i| (0.7 * (i / 2) as f64 + 1.3 * (i % 2) as f64 + 0.5 * j as f64).sin())
        .collect();
    let y = (0..n)
        .map(|k| (k as f64 + 0.3 * j as f64).cos() * 0.8)
        .collect();
    (Tensor::new([n, 2], x), Tensor::vector(y))
}

impl Net {
    fn fit<'t, T: Real<Base = f64>>(
        &self,
        t: &'t Tape<T>,
        j: usize,
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        let (x, y) = batch(j, 4);
        let (x, y) = (t.constant_base(&x), t.constant_base(&y));
        let h = (x.matmul(phi[0]) + phi[1]).tanh();
        ((h * phi[2]).sum_axes(&[1], false) - y).square().mean()
    }
}

impl Problem<f64> for Net {
    type Task = ();
    fn inner_loop(&self) -> &InnerLoop {
        &self.inner
    }
    fn inner_loss<'t, T: Real<Base = f64>>(
        &self,
        t: &'t Tape<T>,
        _: &(),
        j: usize,
        theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        self.fit(t, j, phi) + theta[3].sigmoid().sum() * phi[0].square().sum() * 0.05
    }
    fn outer_loss<'t, T: Real<Base = f64>>(
        &self,
        t: &'t Tape<T>,
        _: &(),
        _theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        self.fit(t, 100, phi)
    }
    fn initial_state<'t, T: Real<Base = f64>>(
        &self,
        _t: &'t Tape<T>,
        _: &(),
        theta: &[Var<'t, T>],
    ) -> Vec<Var<'t, T>> {
        theta[..3].to_vec()
    }
}

const R: usize = 4;

/// θ's first four tensors, then `extra`.
fn theta(extra: Vec<Tensor<f64>>) -> Vec<Tensor<f64>> {
    let w = Tensor::new([2, 3], vec![0.3, -0.2, 0.5, 0.1, 0.4, -0.6]);
    let b = Tensor::vector(vec![0.05, -0.1, 0.2]);
    let v = Tensor::vector(vec![0.7, -0.5, 0.4]);
    let rho = Tensor::vector(vec![-0.3]);
    let mut t = vec![w, b, v, rho];
    t.extend(extra);
    t
}

/// Every built-in rule, with the θ it needs.
fn cases() -> Vec<(&'static str, InnerLoop, Vec<Tensor<f64>>)> {
    let lslr_table: Vec<f64> = (0..R * 3).map(|i| 0.2 + 0.02 * i as f64).collect();
    vec![
        (
            "sgd",
            InnerLoop::rule(R, Sgd::new(0.3).unwrap()).unwrap(),
            theta(vec![]),
        ),
        (
            // W per column [1, 3], b a scalar [], v per element [3].
            "meta-sgd",
            InnerLoop::rule(R, MetaSgd::new(vec![4, 5, 6])).unwrap(),
            theta(vec![
                Tensor::new([1, 3], vec![0.2, 0.3, 0.25]),
                Tensor::new([], vec![0.3]),
                Tensor::vector(vec![0.1, 0.2, 0.3]),
            ]),
        ),
        (
            "lslr-table",
            InnerLoop::rule(R, Lslr::table(4)).unwrap(),
            theta(vec![Tensor::new([R, 3], lslr_table)]),
        ),
        (
            "lslr-per-tensor",
            InnerLoop::rule(R, Lslr::per_tensor(vec![4, 5, 4])).unwrap(),
            theta(vec![
                Tensor::vector(vec![0.3, 0.25, 0.2, 0.15]),
                Tensor::vector(vec![0.1, 0.2, 0.3, 0.4]),
            ]),
        ),
        (
            "heavy-ball",
            InnerLoop::rule(R, Momentum::heavy_ball(0.2, Beta::Fixed(0.6)).unwrap()).unwrap(),
            theta(vec![]),
        ),
        (
            "heavy-ball-learnable",
            InnerLoop::rule(R, Momentum::heavy_ball(0.2, Beta::Theta(4)).unwrap()).unwrap(),
            theta(vec![Tensor::vector(vec![0.5])]),
        ),
        (
            "nesterov",
            InnerLoop::rule(R, Momentum::nesterov(0.2, Beta::Fixed(0.5)).unwrap()).unwrap(),
            theta(vec![]),
        ),
        (
            "nesterov-learnable",
            InnerLoop::rule(R, Momentum::nesterov(0.2, Beta::Theta(4)).unwrap()).unwrap(),
            theta(vec![Tensor::vector(vec![0.4])]),
        ),
        (
            "adam",
            InnerLoop::rule(R, Adam::new(0.05, 0.9, 0.99, 1e-3).unwrap()).unwrap(),
            theta(vec![]),
        ),
    ]
}

fn estimate<P: Problem<f64, Task = ()>, E: Estimator<f64, P>>(
    e: &E,
    p: &P,
    th: &[Tensor<f64>],
) -> Estimate<f64> {
    e.estimate(p, &(), th, &mut ChaCha8Rng::seed_from_u64(3))
        .unwrap_or_else(|err| panic!("{}: {err}", e.name()))
}

fn bits(e: &Estimate<f64>) -> Vec<u64> {
    e.grad
        .iter()
        .flat_map(|t| t.data().iter().map(|x| x.to_bits()))
        .collect()
}

fn flat(g: &[Tensor<f64>]) -> Vec<f64> {
    g.iter().flat_map(|t| t.data().to_vec()).collect()
}

fn rel(a: &[f64], b: &[f64]) -> f64 {
    let d: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt();
    let n: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    d / n.max(1e-300)
}

fn check<E: Estimator<f64, Net>>(name: &str, p: &Net, th: &[Tensor<f64>], e: &E) {
    let rep = check_hypergradient(p, &(), th, e, 1e-6)
        .unwrap_or_else(|err| panic!("{name} / {}: {err}", e.name()));
    assert!(rep.rel_err < 1e-6, "{name} / {}: {}", e.name(), rep.rel_err);
}

#[test]
fn every_rule_under_every_unbiased_estimator_matches_central_differences() {
    for (name, inner, th) in cases() {
        let p = Net { inner };
        blo::problem::check_start(&p, &(), &th).unwrap();
        check(name, &p, &th, &Exact::new(Policy::StoreAll).unwrap());
        check(name, &p, &th, &Truncated::new(R).unwrap());
        check(name, &p, &th, &Ufo::fixed(1.0).unwrap());
        check(name, &p, &th, &ForwardMode::new());
    }
}

#[test]
fn every_policy_and_budget_equals_store_all_bit_for_bit() {
    for (name, inner, th) in cases() {
        let p = Net { inner };
        let reference = bits(&estimate(&Exact::new(Policy::StoreAll).unwrap(), &p, &th));
        let policies = [
            Policy::Recompute,
            Policy::EveryK { k: 2 },
            Policy::Sqrt,
            Policy::Binomial { snapshots: 2 },
        ];
        for policy in policies {
            let got = bits(&estimate(&Exact::new(policy).unwrap(), &p, &th));
            assert_eq!(got, reference, "{name} under {policy:?}");
        }
        for states in [1, 2, 3] {
            let got = bits(&estimate(
                &Exact::with_budget(Budget::States(states)),
                &p,
                &th,
            ));
            assert_eq!(got, reference, "{name} within {states} states");
        }
        // Truncation to all r steps is the exact sweep.
        let got = bits(&estimate(&Truncated::new(R).unwrap(), &p, &th));
        assert_eq!(got, reference, "{name}: truncated(k = r)");
    }
}

/// First order: ∇_θ L_out + (∂Φ_0/∂θ)ᵀ ∇_φ L_out at φ_r, the rollout's φ_r
/// (Φ_0 = θ[..3] here); truncation to k < r and UFO with q < 1 run and are
/// finite.
#[test]
fn biased_and_randomised_estimators_run_on_every_rule() {
    for (name, inner, th) in cases() {
        let p = Net { inner };
        let fo = estimate(&FirstOrder::new(), &p, &th);
        let (s, _) = rollout(&p, &(), &th).unwrap();
        let og = blo::InnerWorkspace::new()
            .outer_grad(&p, &(), &th, &s.phi)
            .unwrap();
        let mut want = og.theta.clone();
        for (w, g) in want.iter_mut().zip(&og.phi) {
            for (a, b) in w.data_mut().iter_mut().zip(g.data()) {
                *a += b;
            }
        }
        assert_eq!(flat(&fo.grad), flat(&want), "{name}: first order");
        assert_eq!(fo.outer_loss, meta_loss(&p, &(), &th).unwrap(), "{name}");
        for e in [
            Box::new(Truncated::new(2).unwrap()) as Box<dyn Estimator<f64, Net>>,
            Box::new(Ufo::fixed(0.3).unwrap()),
        ] {
            let g = flat(&estimate(&e, &p, &th).grad);
            assert!(g.iter().all(|x| x.is_finite()), "{name} / {}", e.name());
        }
    }
}

/// The gradient of the summed inner losses (Reptile's objective) through a
/// rule, against central differences of `summed_inner_loss`.
#[test]
fn reptile_exact_through_rules_matches_central_differences() {
    for (name, inner, th) in cases() {
        let p = Net { inner };
        let g = flat(&estimate(&ReptileExact::new(Policy::Recompute).unwrap(), &p, &th).grad);
        let mut fd = Vec::new();
        let mut t = th.clone();
        for ti in 0..t.len() {
            for k in 0..t[ti].numel() {
                let x = t[ti].data()[k];
                let h = 1e-5 * x.abs().max(1.0);
                t[ti].data_mut()[k] = x + h;
                let up = blo::summed_inner_loss(&p, &(), &t).unwrap();
                t[ti].data_mut()[k] = x - h;
                let down = blo::summed_inner_loss(&p, &(), &t).unwrap();
                t[ti].data_mut()[k] = x;
                fd.push((up - down) / (2.0 * h));
            }
        }
        assert!(rel(&g, &fd) < 1e-6, "{name}: {}", rel(&g, &fd));
    }
}

/// The generic path gives the fast paths' hypergradient (relative 1e-12) for
/// SGD, Meta-SGD (per-element steps) and heavy-ball momentum, under exact,
/// forward mode and the inner-sum objective.
#[test]
fn generic_path_equals_the_hand_derived_fast_paths() {
    let steps = vec![
        Tensor::new([2, 3], vec![0.2, 0.3, 0.25, 0.15, 0.1, 0.3]),
        Tensor::vector(vec![0.3, 0.2, 0.1]),
        Tensor::vector(vec![0.1, 0.2, 0.3]),
    ];
    let pairs = [
        (
            InnerLoop::sgd(R, 0.3).unwrap(),
            InnerLoop::rule(R, Sgd::new(0.3).unwrap()).unwrap(),
            theta(vec![]),
        ),
        (
            InnerLoop::meta_sgd(R, vec![4, 5, 6]).unwrap(),
            InnerLoop::rule(R, MetaSgd::new(vec![4, 5, 6])).unwrap(),
            theta(steps),
        ),
        (
            InnerLoop::momentum(R, 0.2, 0.6).unwrap(),
            InnerLoop::rule(R, Momentum::heavy_ball(0.2, Beta::Fixed(0.6)).unwrap()).unwrap(),
            theta(vec![]),
        ),
    ];
    for (hand, generic, th) in pairs {
        let (h, g) = (Net { inner: hand }, Net { inner: generic });
        let name = format!("{:?}", g.inner.optimizer);
        let exact = Exact::new(Policy::Recompute).unwrap();
        let (eh, eg) = (estimate(&exact, &h, &th), estimate(&exact, &g, &th));
        assert!(
            rel(&flat(&eg.grad), &flat(&eh.grad)) < 1e-12,
            "{name}: exact"
        );
        assert!((eg.outer_loss - eh.outer_loss).abs() < 1e-14, "{name}: F");
        let (fh, fg) = (
            estimate(&ForwardMode, &h, &th),
            estimate(&ForwardMode, &g, &th),
        );
        assert!(
            rel(&flat(&fg.grad), &flat(&eh.grad)) < 1e-12,
            "{name}: forward"
        );
        assert!(
            rel(&flat(&fh.grad), &flat(&eh.grad)) < 1e-12,
            "{name}: forward"
        );
        let rep = ReptileExact::new(Policy::StoreAll).unwrap();
        let (rh, rg) = (estimate(&rep, &h, &th), estimate(&rep, &g, &th));
        assert!(
            rel(&flat(&rg.grad), &flat(&rh.grad)) < 1e-12,
            "{name}: inner sum"
        );
        let fo = FirstOrder::new();
        assert!(
            rel(
                &flat(&estimate(&fo, &g, &th).grad),
                &flat(&estimate(&fo, &h, &th).grad)
            ) < 1e-12
        );
    }
}

/// A problem whose inner gradient is exactly zero at φ_0 (L_in = ½ Σ (φ − c)²
/// with φ_0 = c, c from θ): Adam's moments stay zero, v̂ = 0 at every step.
/// With ε inside the square root the hypergradient is finite (the derivative
/// of √v̂ is infinite at 0).
struct Flat {
    inner: InnerLoop,
}

impl Problem<f64> for Flat {
    type Task = ();
    fn inner_loop(&self) -> &InnerLoop {
        &self.inner
    }
    fn inner_loss<'t, T: Real<Base = f64>>(
        &self,
        _t: &'t Tape<T>,
        _: &(),
        _j: usize,
        theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        (phi[0] - theta[0]).square().sum() * 0.5
    }
    fn outer_loss<'t, T: Real<Base = f64>>(
        &self,
        _t: &'t Tape<T>,
        _: &(),
        _theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        (phi[0] - 1.0).square().sum()
    }
}

#[test]
fn adam_at_zero_moments_has_a_finite_hypergradient() {
    for eps in [1e-8, 0.1] {
        adam_at_zero_moments(eps);
    }
}

fn adam_at_zero_moments(eps: f64) {
    let p = Flat {
        inner: InnerLoop::rule(5, Adam::new(0.1, 0.9, 0.999, eps).unwrap()).unwrap(),
    };
    let th = vec![Tensor::vector(vec![0.5, -0.25])];
    for e in [
        Box::new(Exact::new(Policy::StoreAll).unwrap()) as Box<dyn Estimator<f64, Flat>>,
        Box::new(ForwardMode::new()),
        Box::new(Ufo::fixed(1.0).unwrap()),
    ] {
        let g = e
            .estimate(&p, &(), &th, &mut ChaCha8Rng::seed_from_u64(0))
            .unwrap_or_else(|err| panic!("{}: {err}", e.name()));
        // g_j = φ_{j−1} − θ = 0 for every θ (φ_0 = θ), so φ_r = θ and
        // F(θ) = Σ (θ − 1)²: ∂F/∂θ = 2(θ − 1). The adjoint reaches it by
        // cancelling terms of size α(1 − β₁)/((1 − β₁ʲ) ε) (∂φ_j/∂g at zero
        // moments); for ε = 1e-8 those are ~1e7 per step, so there we only
        // ask for finiteness.
        let want = [2.0 * (0.5 - 1.0), 2.0 * (-0.25 - 1.0)];
        let got = flat(&g.grad);
        assert!(got.iter().all(|x| x.is_finite()), "{}: {got:?}", e.name());
        if eps >= 0.1 {
            assert!(
                rel(&got, &want) < 1e-10,
                "{}: {got:?} vs {want:?}",
                e.name()
            );
        }
    }
}

#[test]
fn bad_hyperparameters_are_typed_errors_naming_the_value() {
    let msg = |e: &BloError| e.to_string();
    assert!(msg(&Momentum::heavy_ball(0.1, Beta::Fixed(1.0)).unwrap_err()).contains("beta = 1"));
    assert!(msg(&Momentum::nesterov(0.1, Beta::Fixed(-0.1)).unwrap_err()).contains("beta = -0.1"));
    assert!(msg(&Adam::new(0.1, 0.9, 0.999, 0.0).unwrap_err()).contains("eps = 0"));
    assert!(msg(&Adam::new(0.1, 0.9, 0.999, -1e-8).unwrap_err()).contains("eps = -0.00000001"));
    assert!(msg(&Adam::new(0.1, 1.0, 0.999, 1e-8).unwrap_err()).contains("beta1 = 1"));
    assert!(msg(&Sgd::new(-0.1).unwrap_err()).contains("lr = -0.1"));

    // An LSLR table whose length is not r.
    let p = Net {
        inner: InnerLoop::rule(R, Lslr::table(4)).unwrap(),
    };
    let e = blo::problem::check_start(
        &p,
        &(),
        &theta(vec![Tensor::new([R + 1, 3], vec![0.1; (R + 1) * 3])]),
    )
    .unwrap_err();
    assert!(
        msg(&e).contains("θ[4] of shape [5, 3]") && msg(&e).contains("[r, L] = [4, "),
        "{e}"
    );
    let p = Net {
        inner: InnerLoop::rule(R, Lslr::per_tensor(vec![4, 4, 4])).unwrap(),
    };
    let e =
        blo::problem::check_start(&p, &(), &theta(vec![Tensor::vector(vec![0.1; 3])])).unwrap_err();
    assert!(
        msg(&e).contains("θ[4] of shape [3]") && msg(&e).contains("r = 4"),
        "{e}"
    );

    // A Meta-SGD step tensor that does not broadcast to its φ tensor (W is [2, 3]).
    let p = Net {
        inner: InnerLoop::rule(R, MetaSgd::new(vec![4, 4, 4])).unwrap(),
    };
    let e = blo::problem::check_start(&p, &(), &theta(vec![Tensor::vector(vec![0.1, 0.1])]))
        .unwrap_err();
    assert!(
        msg(&e).contains("θ[4] [2]") && msg(&e).contains("[2, 3]"),
        "{e}"
    );
    // … and a negative step.
    let e = InnerLoop::rule(R, MetaSgd::new(vec![4, 4, 4]))
        .unwrap()
        .validate_theta(&theta(vec![Tensor::vector(vec![0.1, -0.1, 0.1])]))
        .unwrap_err();
    assert!(msg(&e).contains("θ[4] element 1 = -0.1"), "{e}");

    // A learnable β outside [0, 1).
    let e = InnerLoop::rule(R, Momentum::heavy_ball(0.1, Beta::Theta(4)).unwrap())
        .unwrap()
        .validate_theta(&theta(vec![Tensor::vector(vec![1.5])]))
        .unwrap_err();
    assert!(msg(&e).contains("θ[4] element 0 = 1.5"), "{e}");

    // A rule whose step returns an extra state of another shape.
    let p = Net {
        inner: InnerLoop::rule(R, Misshapen).unwrap(),
    };
    let e = blo::problem::check_start(&p, &(), &theta(vec![])).unwrap_err();
    assert!(
        msg(&e).contains("extra state tensor 0 of shape [1, 3]") && msg(&e).contains("[2, 3]"),
        "{e}"
    );
    // … and the same error (not a panic) from a run without the check.
    let e = Exact::new(Policy::StoreAll)
        .unwrap()
        .estimate(&p, &(), &theta(vec![]), &mut ChaCha8Rng::seed_from_u64(0))
        .unwrap_err();
    assert!(
        msg(&e).contains("extra state tensor 0 of shape [1, 3]") && msg(&e).contains("[2, 3]"),
        "{e}"
    );
    // A φ tensor of another shape with the same number of elements (b [3]
    // returned as [1, 3]): an error naming the tensor and both shapes, from
    // the start check and from every estimator's first step.
    let p = Net {
        inner: InnerLoop::rule(R, MisshapenPhi).unwrap(),
    };
    let want = |e: &BloError| {
        let m = msg(e);
        m.contains("misshapen-φ") && m.contains("φ tensor 1 of shape [1, 3]") && m.contains("[3]")
    };
    let e = blo::problem::check_start(&p, &(), &theta(vec![])).unwrap_err();
    assert!(want(&e), "{e}");
    let th = theta(vec![]);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    for e in [
        Exact::new(Policy::StoreAll)
            .unwrap()
            .estimate(&p, &(), &th, &mut rng),
        FirstOrder::new().estimate(&p, &(), &th, &mut rng),
        ForwardMode::new().estimate(&p, &(), &th, &mut rng),
    ] {
        let e = e.unwrap_err();
        assert!(want(&e), "{e}");
    }
}

/// SGD, but φ tensor 1 (b, [3]) comes back as [1, 3].
struct MisshapenPhi;

impl InnerRule for MisshapenPhi {
    fn name(&self) -> String {
        "misshapen-φ".into()
    }
    fn step<'t, T: Real>(
        &self,
        _t: &'t Tape<T>,
        _j: usize,
        _theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
        _extra: &[Var<'t, T>],
        grad: &[Var<'t, T>],
    ) -> RuleStep<'t, T> {
        RuleStep {
            phi: phi
                .iter()
                .zip(grad)
                .enumerate()
                .map(|(i, (&p, &g))| {
                    let p = p - g * 0.1;
                    if i == 1 {
                        p.reshape(Shape::new(&[1, 3]))
                    } else {
                        p
                    }
                })
                .collect(),
            extra: Default::default(),
        }
    }
}

/// Declares a velocity shaped like φ but returns W's summed over rows.
struct Misshapen;

impl InnerRule for Misshapen {
    fn name(&self) -> String {
        "misshapen".into()
    }
    fn extra_state(&self, phi: &[Shape]) -> Vec<Shape> {
        phi.to_vec()
    }
    fn step<'t, T: Real>(
        &self,
        _t: &'t Tape<T>,
        _j: usize,
        _theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
        extra: &[Var<'t, T>],
        grad: &[Var<'t, T>],
    ) -> RuleStep<'t, T> {
        RuleStep {
            phi: phi.iter().zip(grad).map(|(&p, &g)| p - g * 0.1).collect(),
            extra: extra
                .iter()
                .enumerate()
                .map(|(i, &e)| if i == 0 { e.sum_axes(&[0], true) } else { e })
                .collect(),
        }
    }
}

/// A rule that claims to be affine in g and is not: the adjoint step says so.
struct FalselyAffine;

impl InnerRule for FalselyAffine {
    fn name(&self) -> String {
        "falsely-affine".into()
    }
    fn affine_in_grad(&self) -> bool {
        true
    }
    fn step<'t, T: Real>(
        &self,
        _t: &'t Tape<T>,
        _j: usize,
        _theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
        _extra: &[Var<'t, T>],
        grad: &[Var<'t, T>],
    ) -> RuleStep<'t, T> {
        RuleStep {
            phi: phi
                .iter()
                .zip(grad)
                .map(|(&p, &g)| p - g.tanh() * 0.1)
                .collect(),
            extra: Default::default(),
        }
    }
}

#[test]
fn a_false_affine_claim_is_detected() {
    let p = Net {
        inner: InnerLoop::rule(R, FalselyAffine).unwrap(),
    };
    let e = Exact::new(Policy::StoreAll)
        .unwrap()
        .estimate(&p, &(), &theta(vec![]), &mut ChaCha8Rng::seed_from_u64(0))
        .unwrap_err();
    assert!(
        e.to_string().contains("falsely-affine") && e.to_string().contains("affine"),
        "{e}"
    );
}

/// A rule that is affine in g but whose coefficient reads φ:
/// φ_j = φ − (0.1 + 0.05 φ²) ⊙ g, declared with a constant coefficient.
struct FalselyConstant;

impl InnerRule for FalselyConstant {
    fn name(&self) -> String {
        "falsely-constant".into()
    }
    fn affine_in_grad(&self) -> bool {
        true
    }
    fn constant_grad_coefficient(&self) -> bool {
        true
    }
    fn step<'t, T: Real>(
        &self,
        _t: &'t Tape<T>,
        _j: usize,
        _theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
        _extra: &[Var<'t, T>],
        grad: &[Var<'t, T>],
    ) -> RuleStep<'t, T> {
        RuleStep {
            phi: phi
                .iter()
                .zip(grad)
                .map(|(&p, &g)| p - g * (p.square() * 0.05 + 0.1))
                .collect(),
            extra: Default::default(),
        }
    }
}

#[test]
fn a_false_constant_coefficient_claim_is_detected() {
    let p = Net {
        inner: InnerLoop::rule(R, FalselyConstant).unwrap(),
    };
    for policy in [Policy::StoreAll, Policy::Recompute] {
        let err = Exact::new(policy)
            .unwrap()
            .estimate(&p, &(), &theta(vec![]), &mut ChaCha8Rng::seed_from_u64(0))
            .unwrap_err();
        assert!(
            err.to_string().contains("falsely-constant")
                && err.to_string().contains("constant_grad_coefficient"),
            "{policy:?}: {err}"
        );
    }
}

/// A built-in rule with some of its claims withdrawn, so the engine takes its
/// other paths: never [`InnerRule::fixed_linear`] (the step is recorded on
/// the tape); affine in g only with `affine`, a constant coefficient of g
/// only with `constant`, elementwise (one flat step over φ concatenated) only
/// with `flat`, each also only if the rule says so.
struct Claims {
    rule: blo::rules::Rule,
    affine: bool,
    constant: bool,
    flat: bool,
}

impl Claims {
    /// Every claim but `fixed_linear` kept; the flat step only with `flat`.
    fn on_tape(rule: &blo::rules::Rule, flat: bool) -> Self {
        let rule = rule.clone();
        Claims {
            rule,
            affine: true,
            constant: true,
            flat,
        }
    }
}

impl InnerRule for Claims {
    fn name(&self) -> String {
        let (r, a, c, f) = (&self.rule, self.affine, self.constant, self.flat);
        format!("claims({r:?}, affine {a}, constant {c}, flat {f})")
    }
    fn extra_state(&self, phi: &[Shape]) -> Vec<Shape> {
        self.rule.extra_state(phi)
    }
    fn affine_in_grad(&self) -> bool {
        self.affine && self.rule.affine_in_grad()
    }
    fn constant_grad_coefficient(&self) -> bool {
        self.constant && self.rule.constant_grad_coefficient()
    }
    fn elementwise(&self) -> bool {
        self.flat && self.rule.elementwise()
    }
    fn validate(
        &self,
        steps: usize,
        theta: &[Tensor<f64>],
        phi0: Option<&[Shape]>,
    ) -> Result<(), BloError> {
        self.rule.validate(steps, theta, phi0)
    }
    fn flat_step<'t, T: Real>(
        &self,
        t: &'t Tape<T>,
        j: usize,
        theta: &[Var<'t, T>],
        segments: &blo::rules::Segments,
        phi: Var<'t, T>,
        extra: &[Var<'t, T>],
        grad: Var<'t, T>,
    ) -> RuleStep<'t, T> {
        self.rule.flat_step(t, j, theta, segments, phi, extra, grad)
    }
    fn step<'t, T: Real>(
        &self,
        t: &'t Tape<T>,
        j: usize,
        theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
        extra: &[Var<'t, T>],
        grad: &[Var<'t, T>],
    ) -> RuleStep<'t, T> {
        self.rule.step(t, j, theta, phi, extra, grad)
    }
}

/// The engine's three adjoint paths for a rule (one sweep at g = 0 for a
/// constant coefficient of g; a g-only sweep, the dual pass, then the full
/// sweep for an affine rule; a gradient pass with the sweep fused on its tape
/// otherwise) give the same hypergradient for every built-in rule, under the
/// exact and the inner-sum (Reptile) objectives, to 1e-13 relative.
#[test]
fn the_adjoint_paths_agree_on_every_built_in() {
    let mut constant = 0;
    for (name, inner, th) in cases() {
        let blo::InnerOptimizer::Rule(rule) = &inner.optimizer else {
            unreachable!("{name} is a rule")
        };
        constant += usize::from(rule.constant_grad_coefficient());
        let grads = |inner: InnerLoop| {
            let p = Net { inner };
            [
                flat(&estimate(&Exact::new(Policy::StoreAll).unwrap(), &p, &th).grad),
                flat(&estimate(&ReptileExact::new(Policy::StoreAll).unwrap(), &p, &th).grad),
            ]
        };
        let want = grads(inner.clone());
        for affine in [true, false] {
            let weak = Claims {
                rule: rule.clone(),
                affine,
                constant: false,
                flat: false,
            };
            let got = grads(InnerLoop::rule(R, weak).unwrap());
            for (g, w) in got.iter().zip(&want) {
                assert!(rel(g, w) < 1e-13, "{name}, affine {affine}: {}", rel(g, w));
            }
        }
    }
    // SGD, heavy ball (fixed and learnable β), Nesterov with a fixed β.
    assert_eq!(constant, 4);
}

/// Unrolled Adam and LSLR (r = 10) on `Net` against JAX's `value_and_grad`
/// of the same unrolled loop (`scripts/reference_inner_rules.py`, which
/// defines the problem identically with closed-form data and wrote the
/// fixture), value for value: the same θ and hyperparameters (read from the
/// fixture), the same batches (checked against the fixture's), F to 1e-12
/// and dF/dθ to 1e-10 relative, in f64.
#[test]
fn rules_agree_with_the_jax_reference() {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("../fixtures/inner_rules_reference.json")).unwrap();
    let r = fixture["r"].as_u64().unwrap() as usize;
    let floats = |v: &serde_json::Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    // Both sides fit the same data: the script's batches are ours.
    for j in (1..=r).chain([100]) {
        let b = &fixture["batches"][j.to_string()];
        let (x, y) = batch(j, 4);
        let (fx, fy) = (floats(&b["x"]), floats(&b["y"]));
        let close = |a: &[f64], b: &[f64]| {
            a.len() == b.len() && a.iter().zip(b).all(|(p, q)| (p - q).abs() <= 1e-15)
        };
        assert!(
            close(x.data(), &fx),
            "batch {j}: X {:?} vs {fx:?}",
            x.data()
        );
        assert!(
            close(y.data(), &fy),
            "batch {j}: y {:?} vs {fy:?}",
            y.data()
        );
    }
    for name in ["adam", "lslr"] {
        let case = &fixture[name];
        let mut flat_theta = floats(&case["theta"]).into_iter();
        let th: Vec<Tensor<f64>> = case["theta_shapes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let dims: Vec<usize> = s
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .collect();
                let n = dims.iter().product();
                Tensor::new(dims.as_slice(), flat_theta.by_ref().take(n).collect())
            })
            .collect();
        let inner = match name {
            "adam" => {
                let f = |k: &str| case[k].as_f64().unwrap();
                InnerLoop::rule(
                    r,
                    Adam::new(f("lr"), f("beta1"), f("beta2"), f("eps")).unwrap(),
                )
            }
            _ => InnerLoop::rule(r, Lslr::table(4)),
        }
        .unwrap();
        let p = Net { inner };
        blo::problem::check_start(&p, &(), &th).unwrap();
        let want = floats(&case["grad"]);
        for e in [
            estimate(
                &Exact::new(Policy::Binomial { snapshots: 3 }).unwrap(),
                &p,
                &th,
            ),
            estimate(&ForwardMode::new(), &p, &th),
        ] {
            let got = flat(&e.grad);
            assert!(
                rel(&got, &want) < 1e-10,
                "{name}: {} {got:?} vs {want:?}",
                rel(&got, &want)
            );
            let f = case["loss"].as_f64().unwrap();
            assert!(
                (e.outer_loss - f).abs() <= 1e-12 * f.abs(),
                "{name}: F {} vs {f}",
                e.outer_loss
            );
        }
    }
}

/// L_in = ½ Σ d ⊙ (φ − θ)² with d = (1, 2), φ_0 = 0, L_out = Σ (φ − 1)²: the
/// inner minimiser is φ* = θ, so at convergence ∂F/∂θ = 2(θ − 1).
struct Quadratic {
    inner: InnerLoop,
}

impl Problem<f64> for Quadratic {
    type Task = ();
    fn inner_loop(&self) -> &InnerLoop {
        &self.inner
    }
    fn inner_loss<'t, T: Real<Base = f64>>(
        &self,
        t: &'t Tape<T>,
        _: &(),
        _j: usize,
        theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        let d = t.constant_base(&Tensor::vector(vec![1.0, 2.0]));
        (d * (phi[0] - theta[0]).square()).sum() * 0.5
    }
    fn outer_loss<'t, T: Real<Base = f64>>(
        &self,
        _t: &'t Tape<T>,
        _: &(),
        _theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        (phi[0] - 1.0).square().sum()
    }
    fn initial_state<'t, T: Real<Base = f64>>(
        &self,
        t: &'t Tape<T>,
        _: &(),
        _theta: &[Var<'t, T>],
    ) -> Vec<Var<'t, T>> {
        vec![t.constant_base(&Tensor::vector(vec![0.0, 0.0]))]
    }
}

/// The implicit estimator only runs the inner loop to a stationary point, so
/// a rule that gets there (Nesterov here) gives the implicit hypergradient.
#[test]
fn implicit_runs_on_a_rule_that_converges() {
    let p = Quadratic {
        inner: InnerLoop::rule(80, Momentum::nesterov(0.3, Beta::Fixed(0.5)).unwrap()).unwrap(),
    };
    let th = vec![Tensor::vector(vec![0.25, -0.5])];
    let g = flat(&estimate(&blo::Implicit::ift(), &p, &th).grad);
    let want = [2.0 * (0.25 - 1.0), 2.0 * (-0.5 - 1.0)];
    assert!(rel(&g, &want) < 1e-8, "{g:?} vs {want:?}");
    // … and the exact sweep through 80 Nesterov steps agrees.
    let e = flat(&estimate(&Exact::new(Policy::Sqrt).unwrap(), &p, &th).grad);
    assert!(rel(&e, &want) < 1e-8, "{e:?} vs {want:?}");
}

/// docs/math.md §12, "Flat steps": an elementwise built-in taken flat (φ, g and each
/// extra-state group concatenated) gives bit for bit the numbers of the same
/// rule taken per φ tensor: the rollout (φ_r, and e_r concatenated), and the
/// hypergradients of Exact (store-all and recompute), Reptile, first order
/// and forward mode (the tangent step).
#[test]
fn the_flat_step_equals_the_per_tensor_step_bit_for_bit() {
    let mut flat_rules = Vec::new();
    for (name, inner, th) in cases() {
        let blo::InnerOptimizer::Rule(rule) = &inner.optimizer else {
            unreachable!("{name} is a rule")
        };
        if !rule.elementwise() {
            continue;
        }
        flat_rules.push(name);
        let per = Net {
            inner: InnerLoop::rule(R, Claims::on_tape(rule, false)).unwrap(),
        };
        // A fixed linear rule's flat step on the tape (its own path is
        // `the_fixed_linear_path_equals_the_tape_path`).
        let p = Net {
            inner: InnerLoop::rule(R, Claims::on_tape(rule, true)).unwrap(),
        };
        let _ = inner;
        let (s_flat, l_flat) = rollout(&p, &(), &th).unwrap();
        let (s_per, l_per) = rollout(&per, &(), &th).unwrap();
        let bits_of =
            |ts: &[Tensor<f64>]| -> Vec<u64> { flat(ts).iter().map(|x| x.to_bits()).collect() };
        assert_eq!(bits_of(&s_flat.phi), bits_of(&s_per.phi), "{name}: φ_r");
        assert_eq!(bits_of(&s_flat.extra), bits_of(&s_per.extra), "{name}: e_r");
        assert_eq!(l_flat, l_per, "{name}: inner losses");
        // Stored flat: K tensors [N] (N = 6 + 3 + 3) instead of K per φ tensor.
        assert!(
            s_flat.extra.iter().all(|e| e.shape().dims() == [12]),
            "{name}"
        );
        assert_eq!(s_flat.extra.len() * 3, s_per.extra.len(), "{name}");
        let both = |e: &dyn Fn(&Net) -> Estimate<f64>, what: &str| {
            assert_eq!(bits(&e(&p)), bits(&e(&per)), "{name}: {what}");
        };
        both(
            &|p| estimate(&Exact::new(Policy::StoreAll).unwrap(), p, &th),
            "exact",
        );
        both(
            &|p| estimate(&Exact::new(Policy::Recompute).unwrap(), p, &th),
            "exact, recompute",
        );
        both(
            &|p| estimate(&ReptileExact::new(Policy::StoreAll).unwrap(), p, &th),
            "reptile",
        );
        both(&|p| estimate(&FirstOrder::new(), p, &th), "first order");
        both(&|p| estimate(&ForwardMode::new(), p, &th), "forward mode");
    }
    assert_eq!(
        flat_rules,
        [
            "sgd",
            "meta-sgd",
            "lslr-table",
            "lslr-per-tensor",
            "heavy-ball",
            "nesterov",
            "adam"
        ]
    );
}

/// An estimator run on a problem.
type Run<'a> = dyn Fn(&Net) -> Estimate<f64> + 'a;

/// docs/math.md §12, "Fixed linear steps": a fixed linear built-in (SGD,
/// momentum with a fixed β) stepped and swept by passes over the state with
/// its map D gives the numbers of its flat step on the tape: SGD bit for bit
/// (φ + (−α) g is φ − α g), momentum to 1e-13 relative (D's entries are
/// products, −αβ, so its sums round differently): the rollout and the
/// hypergradients of Exact (store-all and recompute), Reptile and first
/// order.
#[test]
fn the_fixed_linear_path_equals_the_tape_path() {
    let mut linear = Vec::new();
    for (name, inner, th) in cases() {
        let blo::InnerOptimizer::Rule(rule) = &inner.optimizer else {
            unreachable!("{name} is a rule")
        };
        if !rule.fixed_linear() {
            continue;
        }
        linear.push(name);
        let tape = Net {
            inner: InnerLoop::rule(R, Claims::on_tape(rule, true)).unwrap(),
        };
        let p = Net { inner };
        let tol = if name == "sgd" { 0.0 } else { 1e-13 };
        let (s, _) = rollout(&p, &(), &th).unwrap();
        let (s_tape, _) = rollout(&tape, &(), &th).unwrap();
        let state = |s: &blo::State<f64>| {
            flat(&s.phi)
                .into_iter()
                .chain(flat(&s.extra))
                .collect::<Vec<_>>()
        };
        assert!(rel(&state(&s), &state(&s_tape)) <= tol, "{name}: state");
        let estimators: [(&str, &Run); 4] = [
            ("exact", &|p| {
                estimate(&Exact::new(Policy::StoreAll).unwrap(), p, &th)
            }),
            ("recompute", &|p| {
                estimate(&Exact::new(Policy::Recompute).unwrap(), p, &th)
            }),
            ("reptile", &|p| {
                estimate(&ReptileExact::new(Policy::StoreAll).unwrap(), p, &th)
            }),
            ("first order", &|p| estimate(&FirstOrder::new(), p, &th)),
        ];
        for (what, e) in estimators {
            let (a, b) = (e(&p), e(&tape));
            let r = rel(&flat(&a.grad), &flat(&b.grad));
            assert!(r <= tol, "{name}, {what}: {r}");
            if tol == 0.0 {
                assert_eq!(bits(&a), bits(&b), "{name}, {what}");
            }
        }
    }
    assert_eq!(linear, ["sgd", "heavy-ball", "nesterov"]);
}

/// Rules that claim a fixed linear step and are not: `Nonlinear`
/// φ − 0.1 tanh(g) (its VJP depends on g), `ReadsTheta` Meta-SGD
/// φ − α ⊙ g (α from θ), `Offset` φ − 0.1 g + 0.01 (its VJP is fixed, its
/// step is not D x).
#[derive(Clone, Copy, Debug)]
enum FalselyLinear {
    Nonlinear,
    ReadsTheta,
    Offset,
}

/// Meta-SGD's flat step, for [`FalselyLinear::ReadsTheta`].
fn meta_sgd() -> MetaSgd {
    MetaSgd::new(vec![4, 5, 6])
}

impl InnerRule for FalselyLinear {
    fn name(&self) -> String {
        format!("falsely-linear-{self:?}")
    }
    fn elementwise(&self) -> bool {
        true
    }
    fn fixed_linear(&self) -> bool {
        true
    }
    fn flat_step<'t, T: Real>(
        &self,
        t: &'t Tape<T>,
        j: usize,
        theta: &[Var<'t, T>],
        segments: &blo::rules::Segments,
        phi: Var<'t, T>,
        extra: &[Var<'t, T>],
        grad: Var<'t, T>,
    ) -> RuleStep<'t, T> {
        match self {
            FalselyLinear::ReadsTheta => {
                meta_sgd().flat_step(t, j, theta, segments, phi, extra, grad)
            }
            _ => self.step(t, j, theta, &[phi], extra, &[grad]),
        }
    }
    fn step<'t, T: Real>(
        &self,
        t: &'t Tape<T>,
        j: usize,
        theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
        _extra: &[Var<'t, T>],
        grad: &[Var<'t, T>],
    ) -> RuleStep<'t, T> {
        if let FalselyLinear::ReadsTheta = self {
            return meta_sgd().step(t, j, theta, phi, _extra, grad);
        }
        let step = |p: Var<'t, T>, g: Var<'t, T>| match self {
            FalselyLinear::Offset => (p - g * 0.1).add_scalar(0.01),
            _ => p - g.tanh() * 0.1,
        };
        RuleStep {
            phi: phi.iter().zip(grad).map(|(&p, &g)| step(p, g)).collect(),
            extra: Default::default(),
        }
    }
}

/// A false `fixed_linear` claim is a typed error naming the rule and the
/// claim, at the first forward step (a rollout, first order) and the first
/// adjoint step a workspace takes with it.
#[test]
fn a_false_fixed_linear_claim_is_detected() {
    let th = theta(vec![
        Tensor::new([2, 3], vec![0.2, 0.3, 0.25, 0.15, 0.1, 0.3]),
        Tensor::vector(vec![0.3, 0.2, 0.1]),
        Tensor::vector(vec![0.1, 0.2, 0.3]),
    ]);
    let mut missed = Vec::new();
    for rule in [
        FalselyLinear::Nonlinear,
        FalselyLinear::ReadsTheta,
        FalselyLinear::Offset,
    ] {
        let p = Net {
            inner: InnerLoop::rule(R, rule).unwrap(),
        };
        let errs = [
            rollout(&p, &(), &th).map(|_| ()).err(),
            FirstOrder::new()
                .estimate(&p, &(), &th, &mut ChaCha8Rng::seed_from_u64(0))
                .map(|_| ())
                .err(),
            Exact::new(Policy::StoreAll)
                .unwrap()
                .estimate(&p, &(), &th, &mut ChaCha8Rng::seed_from_u64(0))
                .map(|_| ())
                .err(),
        ];
        for e in errs {
            let caught = e.is_some_and(|e| {
                e.to_string().contains(&rule.name()) && e.to_string().contains("fixed_linear")
            });
            if !caught {
                missed.push(rule);
            }
        }
    }
    assert!(missed.is_empty(), "not detected: {missed:?}");
}

/// φ_j = φ − c_i g with c_i = 0.1 (i + 1) for φ tensor i: not elementwise
/// (the coefficient depends on which tensor an element is in), claimed so.
struct FalselyElementwise;

impl InnerRule for FalselyElementwise {
    fn name(&self) -> String {
        "falsely-elementwise".into()
    }
    fn elementwise(&self) -> bool {
        true
    }
    fn step<'t, T: Real>(
        &self,
        _t: &'t Tape<T>,
        _j: usize,
        _theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
        _extra: &[Var<'t, T>],
        grad: &[Var<'t, T>],
    ) -> RuleStep<'t, T> {
        RuleStep {
            phi: phi
                .iter()
                .zip(grad)
                .enumerate()
                .map(|(i, (&p, &g))| p - g * (0.1 * (i + 1) as f64))
                .collect(),
            extra: Default::default(),
        }
    }
}

/// A false `elementwise` claim is a typed error naming the rule, at the
/// first step (forward, adjoint or tangent) a workspace takes with it.
#[test]
fn a_false_elementwise_claim_is_detected() {
    let p = Net {
        inner: InnerLoop::rule(R, FalselyElementwise).unwrap(),
    };
    let th = theta(vec![]);
    let errs = [
        rollout(&p, &(), &th).map(|_| ()).unwrap_err(),
        ForwardMode::new()
            .estimate(&p, &(), &th, &mut ChaCha8Rng::seed_from_u64(0))
            .map(|_| ())
            .unwrap_err(),
    ];
    for e in errs {
        assert!(
            e.to_string().contains("falsely-elementwise") && e.to_string().contains("elementwise"),
            "{e}"
        );
    }
}

/// A rule whose new state overflows where φ is well above 0.35:
/// φ_j = φ − 0.1 g + exp(10⁴ (φ − 0.35)), e_j = e + 1; taken per tensor or
/// flat (`flat`, its elementwise claim).
struct Overflows {
    flat: bool,
}

impl InnerRule for Overflows {
    fn name(&self) -> String {
        format!("overflows(flat={})", self.flat)
    }
    fn extra_state(&self, phi: &[Shape]) -> Vec<Shape> {
        phi.to_vec()
    }
    fn elementwise(&self) -> bool {
        self.flat
    }
    fn step<'t, T: Real>(
        &self,
        _t: &'t Tape<T>,
        _j: usize,
        _theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
        extra: &[Var<'t, T>],
        grad: &[Var<'t, T>],
    ) -> RuleStep<'t, T> {
        // exp(10⁴ (φ − 0.35)) is tiny for φ ≤ 0.3 and ∞ in f64 at φ = 0.5.
        RuleStep {
            phi: phi
                .iter()
                .zip(grad)
                .map(|(&p, &g)| p - g * 0.1 + (p.add_scalar(-0.35) * 1e4).exp())
                .collect(),
            extra: extra.iter().map(|&e| e.add_scalar(1.0)).collect(),
        }
    }
}

/// φ and the extra state, bit patterns concatenated.
fn state_bits(s: &blo::State<f64>) -> Vec<u64> {
    s.phi
        .iter()
        .chain(&s.extra)
        .flat_map(|t| t.data().iter().map(|x| x.to_bits()))
        .collect()
}

/// A step whose new state is not finite is a typed error naming step j and
/// "inner state", and leaves the state as it was, bit for bit (φ and the
/// extra state; per tensor and flat).
#[test]
fn a_non_finite_new_state_is_an_error_and_leaves_the_state_unchanged() {
    for flat in [false, true] {
        let p = Net {
            inner: InnerLoop::rule(R, Overflows { flat }).unwrap(),
        };
        let th = theta(vec![]);
        let mut ws = blo::InnerWorkspace::new();
        let mut s = ws.initial_state(&p, &(), &th).unwrap();
        // φ's largest element is 0.5 (W[0, 2]): the first step overflows.
        let before = state_bits(&s);
        let err = ws.step_in_place(&p, &(), 1, &th, &mut s).unwrap_err();
        assert!(
            matches!(
                err,
                BloError::NonFinite {
                    what: "inner state",
                    step: 1,
                    ..
                }
            ),
            "flat={flat}: {err}"
        );
        let after = state_bits(&s);
        assert_eq!(before, after, "flat={flat}: the state changed");
    }
}
