//! `InnerWorkspace::advance`: several SGD steps with θ and φ kept on the
//! tape give the states of `step_in_place` step by step, bit for bit (SGD,
//! Meta-SGD, momentum), and a
//! step that goes non-finite leaves the state of the step before it.

mod common;

use blo::{BloError, InnerLoop, InnerWorkspace, Problem, State};
use common::*;
use tape::{Real, Tape, Tensor, Var};

fn bits(s: &State<f64>) -> Vec<u64> {
    s.phi
        .iter()
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
    let cases = [
        (InnerLoop::sgd(7, 0.1).unwrap(), false),
        (InnerLoop::meta_sgd(7, vec![2, 3]).unwrap(), true),
        (InnerLoop::momentum(7, 0.05, 0.7).unwrap(), false),
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
            assert_eq!(bits(&s), bits(&want), "{what}");
            // Momentum's velocity too.
            assert_eq!(s.extra, want.extra, "{what}");
            assert_ne!(bits(&s), bits(&start), "the steps moved φ");
        }
    }
}

/// L_in = Σ φ₀² + Σ φ₁² + Σ φ₂² until step `at`, where the loss (or only
/// the gradient of the last tensor, by √(0·φ₂): value 0, ∂ = ∞·0 = NaN)
/// goes non-finite.
struct FailsAt {
    inner: InnerLoop,
    at: usize,
    loss: bool,
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
        match (j == self.at, self.loss) {
            (false, _) => l,
            (true, true) => l + phi[0].sum() * f64::INFINITY,
            (true, false) => l + (phi[2] * 0.0).sqrt().sum(),
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
    let inners = [
        InnerLoop::sgd(5, 0.1).unwrap(),
        InnerLoop::momentum(5, 0.05, 0.7).unwrap(),
    ];
    let cases = [(false, "inner gradient"), (true, "inner loss")];
    for (inner, (loss, what)) in inners.iter().flat_map(|i| cases.map(|c| (i, c))) {
        for at in [1, 2, 4] {
            let p = FailsAt {
                inner: inner.clone(),
                at,
                loss,
            };
            let mut ws = InnerWorkspace::new();
            let s0 = ws.initial_state(&p, &(), &th).unwrap();
            let mut s = s0.clone();
            let err = ws.advance(&p, &(), 0, 5, &th, &mut s).unwrap_err();
            assert!(
                matches!(err, BloError::NonFinite { what: w, step, .. } if w == what && step == at),
                "{err}, want {what} at step {at}"
            );
            let want = stepwise(&p, &(), &th, &s0, 0, at - 1);
            assert_eq!(
                bits(&s),
                bits(&want),
                "{what} at step {at}: not φ_{}",
                at - 1
            );
            // The workspace still works: the same steps without the failure.
            let ok = FailsAt { at: 0, ..p };
            let mut s = s0.clone();
            ws.advance(&ok, &(), 0, 5, &th, &mut s).unwrap();
            assert_eq!(bits(&s), bits(&stepwise(&ok, &(), &th, &s0, 0, 5)));
        }
    }
}
