//! `InnerWorkspace::advance`: several steps with θ and φ kept on the tape
//! give the states of `step_in_place` step by step, bit for bit (SGD,
//! Meta-SGD, momentum, and the rules: SGD, heavy ball and Nesterov with a
//! fixed β resident, Adam step by step), and a step that goes non-finite
//! leaves the state of the step before it and names it.

mod common;

use blo::rules::{Adam, Beta, Momentum, Sgd};
use blo::{BloError, InnerLoop, InnerWorkspace, Problem, State};
use common::*;
use tape::{Real, Tape, Tensor, Var};

/// φ's and the extra state's bit patterns, concatenated.
fn bits(s: &State<f64>) -> Vec<u64> {
    s.phi
        .iter()
        .chain(&s.extra)
        .flat_map(|t| t.data().iter().map(|x| x.to_bits()))
        .collect()
}

/// φ_to from φ_from step by step.
fn stepwise<P: Problem<f64>>(
    p: &P,
    task: &P::Task,
    th: &[Tensor<f64>],
    s: &State<f64>,
    from: usize,
    to: usize,
) -> State<f64> {
    let mut ws = InnerWorkspace::new();
    let mut s = s.clone();
    for j in from + 1..=to {
        ws.step_in_place(p, task, j, th, &mut s).unwrap();
    }
    s
}

#[test]
fn resident_steps_give_the_bits_of_step_by_step_advancing() {
    let heavy_ball = Momentum::heavy_ball(0.05, Beta::Fixed(0.7)).unwrap();
    let nesterov = Momentum::nesterov(0.05, Beta::Fixed(0.6)).unwrap();
    let cases = [
        (InnerLoop::sgd(7, 0.1).unwrap(), false),
        (InnerLoop::meta_sgd(7, vec![2, 3]).unwrap(), true),
        (InnerLoop::momentum(7, 0.05, 0.7).unwrap(), false),
        (InnerLoop::rule(7, Sgd::new(0.1).unwrap()).unwrap(), false),
        (InnerLoop::rule(7, heavy_ball).unwrap(), false),
        (InnerLoop::rule(7, nesterov).unwrap(), false),
        (
            InnerLoop::rule(7, Adam::new(0.05, 0.9, 0.99, 1e-3).unwrap()).unwrap(),
            false,
        ),
    ];
    for (inner, meta_sgd) in cases {
        let p = TanhNet {
            inner,
            hidden: 6,
            meta_sgd,
        };
        let task = Wave {
            amp: 1.3,
            phase: 0.4,
        };
        let th = p.theta(3);
        let mut ws = InnerWorkspace::new();
        let s0 = ws.initial_state(&p, &task, &th).unwrap();
        // From φ_0 and from a later state, into a workspace used before.
        for (from, to) in [(0, 7), (2, 5), (4, 6)] {
            let start = stepwise(&p, &task, &th, &s0, 0, from);
            let mut s = start.clone();
            ws.advance(&p, &task, from, to, &th, &mut s).unwrap();
            let want = stepwise(&p, &task, &th, &start, from, to);
            let what = format!("{:?}, steps {}..={to}", p.inner.optimizer, from + 1);
            // φ and the extra state (a velocity, moments).
            assert_eq!(bits(&s), bits(&want), "{what}");
            assert_ne!(bits(&s), bits(&start), "the steps moved φ");
        }
    }
}

/// How [`FailsAt`] fails at its step.
#[derive(Clone, Copy, Debug)]
enum Fail {
    /// The gradient of the last tensor, by √(0·φ₂): value 0, ∂ = ∞·0 = NaN.
    Gradient,
    /// The loss, by + ∞·Σφ₀.
    Loss,
    /// The new state, by + 10³⁰⁸ Σ (φ₂ − φ₂ detached): the loss unchanged,
    /// a finite gradient 2φ₂ + 10³⁰⁸, so a step of α = 2 overflows.
    State,
}

impl Fail {
    fn what(self) -> &'static str {
        match self {
            Fail::Gradient => "inner gradient",
            Fail::Loss => "inner loss",
            Fail::State => "inner state",
        }
    }
}

/// L_in = Σ φ₀² + Σ φ₁² + Σ φ₂² until step `at`, where the loss, the
/// gradient or the new state goes non-finite ([`Fail`]).
struct FailsAt {
    inner: InnerLoop,
    at: usize,
    fail: Fail,
}

impl Problem<f64> for FailsAt {
    type Task = ();
    fn inner_loop(&self) -> &InnerLoop {
        &self.inner
    }
    fn inner_loss<'t, T: Real<Base = f64>>(
        &self,
        _t: &'t Tape<T>,
        _: &(),
        j: usize,
        _theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        let l = phi[0].square().sum() + phi[1].square().sum() + phi[2].square().sum();
        if j != self.at {
            return l;
        }
        match self.fail {
            Fail::Loss => l + phi[0].sum() * f64::INFINITY,
            Fail::Gradient => l + (phi[2] * 0.0).sqrt().sum(),
            Fail::State => l + (phi[2] - phi[2].detach()).sum() * 1e308,
        }
    }
    fn outer_loss<'t, T: Real<Base = f64>>(
        &self,
        _t: &'t Tape<T>,
        _: &(),
        _theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        phi[0].sum()
    }
}

#[test]
fn a_step_gone_non_finite_leaves_the_state_before_it_and_names_it() {
    let th = vec![
        Tensor::vector((0..37).map(|i| 0.3 + i as f64 / 7.0).collect()),
        Tensor::vector((0..70).map(|i| -1.0 + i as f64 / 9.0).collect()),
        Tensor::vector((0..19).map(|i| 1.0 + i as f64).collect()),
    ];
    let heavy_ball = |lr| InnerLoop::rule(5, Momentum::heavy_ball(lr, Beta::Fixed(0.7)).unwrap());
    let sgd_rule = |lr| InnerLoop::rule(5, Sgd::new(lr).unwrap());
    let both = [Fail::Gradient, Fail::Loss];
    let cases = [
        (InnerLoop::sgd(5, 0.1), &both[..]),
        (InnerLoop::momentum(5, 0.05, 0.7), &both),
        (sgd_rule(0.1), &both),
        (heavy_ball(0.05), &both),
        // The hand-derived steps do not check the new state; a rule's do.
        (sgd_rule(2.0), &[Fail::State]),
        (heavy_ball(2.0), &[Fail::State]),
    ];
    for (inner, fails) in cases {
        let inner = inner.unwrap();
        for (&fail, at) in fails.iter().flat_map(|f| [1, 2, 4].map(|at| (f, at))) {
            let p = FailsAt {
                inner: inner.clone(),
                at,
                fail,
            };
            let what = fail.what();
            let mut ws = InnerWorkspace::new();
            let s0 = ws.initial_state(&p, &(), &th).unwrap();
            let mut s = s0.clone();
            let err = ws.advance(&p, &(), 0, 5, &th, &mut s).unwrap_err();
            let case = format!("{:?}: {what} at step {at}", inner.optimizer);
            assert!(
                matches!(err, BloError::NonFinite { what: w, step, .. } if w == what && step == at),
                "{case}: {err}"
            );
            let want = stepwise(&p, &(), &th, &s0, 0, at - 1);
            assert_eq!(bits(&s), bits(&want), "{case}: not state_{}", at - 1);
            // The workspace still works: the same steps without the failure.
            let ok = FailsAt { at: 0, ..p };
            let mut s = s0.clone();
            ws.advance(&ok, &(), 0, 5, &th, &mut s).unwrap();
            assert_eq!(
                bits(&s),
                bits(&stepwise(&ok, &(), &th, &s0, 0, 5)),
                "{case}"
            );
        }
    }
}

/// [`TanhNet`] with θ in the outer loss too: L_out + 0.3 Σ θ₁ ⊙ φ₁, so the
/// fused turn's ∇_θ L_out is not a structural zero.
struct ThetaOut(TanhNet);

impl Problem<f64> for ThetaOut {
    type Task = Wave;
    fn inner_loop(&self) -> &InnerLoop {
        &self.0.inner
    }
    fn inner_loss<'t, T: Real<Base = f64>>(
        &self,
        t: &'t Tape<T>,
        task: &Wave,
        j: usize,
        theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        self.0.inner_loss(t, task, j, theta, phi)
    }
    fn outer_loss<'t, T: Real<Base = f64>>(
        &self,
        t: &'t Tape<T>,
        task: &Wave,
        theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        self.0.outer_loss(t, task, theta, phi) + (theta[1] * phi[1]).sum() * 0.3
    }
    fn initial_state<'t, T: Real<Base = f64>>(
        &self,
        t: &'t Tape<T>,
        task: &Wave,
        theta: &[Var<'t, T>],
    ) -> Vec<Var<'t, T>> {
        self.0.initial_state(t, task, theta)
    }
}

/// Bit patterns of a tensor list.
fn tensor_bits(ts: &[Tensor<f64>]) -> Vec<u64> {
    ts.iter()
        .flat_map(|t| t.data().iter().map(|x| x.to_bits()))
        .collect()
}

#[test]
fn the_last_steps_fused_with_the_turn_give_the_bits_of_advance_then_outer_grad() {
    let heavy_ball = Momentum::heavy_ball(0.05, Beta::Fixed(0.7)).unwrap();
    let cases = [
        (InnerLoop::sgd(7, 0.1).unwrap(), false),
        (InnerLoop::meta_sgd(7, vec![2, 3]).unwrap(), true),
        (InnerLoop::momentum(7, 0.05, 0.7).unwrap(), false),
        (InnerLoop::rule(7, heavy_ball).unwrap(), false),
    ];
    for (inner, meta_sgd) in cases {
        let p = ThetaOut(TanhNet {
            inner,
            hidden: 6,
            meta_sgd,
        });
        let task = Wave {
            amp: 1.3,
            phase: 0.4,
        };
        let th = p.0.theta(3);
        let mut ws = InnerWorkspace::new();
        let s0 = ws.initial_state(&p, &task, &th).unwrap();
        // One step (from φ_0 and later), several, and the whole unroll, in a
        // workspace used before.
        for (from, to) in [(0, 1), (3, 4), (0, 7), (2, 5)] {
            let start = stepwise(&p, &task, &th, &s0, 0, from);
            let mut fused_state = start.clone();
            let fused = ws
                .advance_outer_grad(&p, &task, from, to, &th, &mut fused_state)
                .unwrap();
            let mut want_state = start.clone();
            ws.advance(&p, &task, from, to, &th, &mut want_state)
                .unwrap();
            let want = ws.outer_grad(&p, &task, &th, &want_state.phi).unwrap();
            let what = format!("{:?}, steps {}..={to}", p.0.inner.optimizer, from + 1);
            assert_eq!(fused.loss.to_bits(), want.loss.to_bits(), "{what}: L_out");
            assert_eq!(
                tensor_bits(&fused.theta),
                tensor_bits(&want.theta),
                "{what}: ∇_θ"
            );
            assert_eq!(
                tensor_bits(&fused.phi),
                tensor_bits(&want.phi),
                "{what}: ∇_φ"
            );
            assert_eq!(bits(&fused_state), bits(&want_state), "{what}: state");
            assert!(fused.theta[1].data().iter().any(|&x| x != 0.0), "{what}");
        }
    }
}

#[test]
fn a_fused_turn_after_a_step_gone_non_finite_fails_as_advance_does() {
    let th = vec![
        Tensor::vector((0..37).map(|i| 0.3 + i as f64 / 7.0).collect()),
        Tensor::vector((0..70).map(|i| -1.0 + i as f64 / 9.0).collect()),
        Tensor::vector((0..19).map(|i| 1.0 + i as f64).collect()),
    ];
    for inner in [InnerLoop::sgd(5, 0.1), InnerLoop::momentum(5, 0.05, 0.7)] {
        let inner = inner.unwrap();
        for (fail, at) in [(Fail::Gradient, 1), (Fail::Loss, 1), (Fail::Gradient, 4)] {
            let p = FailsAt {
                inner: inner.clone(),
                at,
                fail,
            };
            let mut ws = InnerWorkspace::new();
            let s0 = ws.initial_state(&p, &(), &th).unwrap();
            let (mut a, mut b) = (s0.clone(), s0);
            let fused = ws
                .advance_outer_grad(&p, &(), 0, 5, &th, &mut a)
                .unwrap_err();
            let apart = ws.advance(&p, &(), 0, 5, &th, &mut b).unwrap_err();
            let case = format!("{:?}: {} at step {at}", inner.optimizer, fail.what());
            assert_eq!(fused.to_string(), apart.to_string(), "{case}");
            assert_eq!(bits(&a), bits(&b), "{case}: the state left");
        }
    }
}
