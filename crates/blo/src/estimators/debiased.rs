//! UFO-BLO as a generic hook: [`Debiased`] pairs any first-order surrogate S
//! with an exact estimator E of the same quantity and returns
//!
//! g = g_S + (ξ/q)(g_E − g_S),   ξ ~ Bernoulli(q) drawn from the task's rng,
//!
//! so E\[g\] = g_E (unbiased) and E‖g‖² = ‖g_E‖² + (1/q − 1)‖g_S − g_E‖²
//! (docs/math.md §4). Both run on the same task with the same θ, and batches are a
//! deterministic function of (task, step), so they see the same batches and the
//! same trajectory (the coupling); E also gets a copy of the rng stream S got.
//!
//! Two pairs are built in: [`Ufo`] (S = [`FirstOrder`], E = [`Exact`], the
//! exact branch by default under [`Policy::Recompute`], so memory stays
//! constant) and the Reptile pair ([`crate::ReptileFirstOrder`], [`crate::ReptileExact`]).
//!
//! # Choosing q adaptively
//!
//! With C_det the surrogate's cost, C_rnd the exact branch's cost, V² = E‖g_E‖²
//! and D² = E‖g_S − g_E‖², the expected cost per sample times the second
//! moment is
//!
//! f(q) = (C_det + q·C_rnd)·(W + D²/q),   W = V² − D².
//!
//! Expanding, f(q) = C_det·W + C_rnd·D² + C_det·D²/q + q·C_rnd·W, so
//! f′(q) = −C_det·D²/q² + C_rnd·W. If W > 0, f is convex on (0, ∞) with its
//! minimum at q* = √(C_det·D² / (C_rnd·W)); if W ≤ 0, f′ < 0 and f decreases
//! on (0, 1], so q* = 1. The adaptive scheme clips q* to [q_min, 1], with D²,
//! V², C_det, C_rnd estimated by bias-corrected exponential moving averages
//! (decay 0.99) of the measurements in [`crate::Stats::debias`], updated in
//! [`Estimator::observe`] in task order (so the result does not depend on the
//! thread count), and starts from q = q_min.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tape::{Float, Tensor};

use super::exact::Exact;
use super::first_order::FirstOrder;
use crate::engine::policy::Policy;
use crate::error::BloError;
use crate::estimators::{DebiasSample, Estimate, Estimator};
use crate::problem::Problem;

/// How q is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum QChoice {
    /// A fixed q ∈ (0, 1].
    Fixed(f64),
    /// Re-solved after every meta-batch; see the module docs.
    Adaptive(AdaptiveParams),
}

/// Parameters of the adaptive choice of q.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdaptiveParams {
    /// The smallest q allowed, and the starting q (default 0.05).
    pub q_min: f64,
    /// The EMA decay (default 0.99).
    pub decay: f64,
}

impl Default for AdaptiveParams {
    fn default() -> Self {
        AdaptiveParams {
            q_min: 0.05,
            decay: 0.99,
        }
    }
}

/// A bias-corrected exponential moving average: m_t = β m_{t−1} + (1 − β) x_t,
/// reported as m_t / (1 − β^t).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Ema {
    pub(crate) m: f64,
    pub(crate) t: u64,
}

impl Ema {
    pub(crate) fn push(&mut self, beta: f64, x: f64) {
        self.m = beta * self.m + (1.0 - beta) * x;
        self.t += 1;
    }
    pub(crate) fn get(&self, beta: f64) -> Option<f64> {
        (self.t > 0).then(|| self.m / (1.0 - beta.powi(self.t.min(i32::MAX as u64) as i32)))
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Moments {
    d2: Ema,
    v2: Ema,
    c_det: Ema,
    c_rnd: Ema,
}

/// The optimal q of the module docs: √(C_det·D² / (C_rnd·(V² − D²))) clipped to
/// [q_min, 1] when V² > D², else 1.
///
/// ```
/// // D² = 0: the surrogate is exact, sample the exact branch as rarely as allowed.
/// assert_eq!(blo::optimal_q(10.0, 100.0, 1.0, 0.0, 0.05), 0.05);
/// // D² ≥ V²: the surrogate is useless, always run the exact branch.
/// assert_eq!(blo::optimal_q(10.0, 100.0, 1.0, 2.0, 0.05), 1.0);
/// // √(10·0.5 / (100·0.5)) = √0.1
/// assert!((blo::optimal_q(10.0, 100.0, 1.0, 0.5, 0.05) - 0.1f64.sqrt()).abs() < 1e-15);
/// ```
pub fn optimal_q(c_det: f64, c_rnd: f64, v2: f64, d2: f64, q_min: f64) -> f64 {
    let w = v2 - d2;
    if w <= 0.0 {
        return 1.0;
    }
    if c_rnd <= 0.0 {
        return 1.0;
    }
    let q = (c_det * d2 / (c_rnd * w)).sqrt();
    if q.is_finite() {
        q.clamp(q_min, 1.0)
    } else {
        1.0
    }
}

/// The debiasing hook: surrogate `S`, exact `E`, and the choice of q. See the
/// module docs.
#[derive(Clone, Debug)]
pub struct Debiased<S, E> {
    surrogate: S,
    exact: E,
    choice: QChoice,
    q: f64,
    moments: Moments,
}

fn check_q(q: f64) -> Result<(), BloError> {
    if q.is_finite() && q > 0.0 && q <= 1.0 {
        Ok(())
    } else {
        Err(BloError::invalid(
            "q",
            q,
            "the exact-branch probability must be in (0, 1]",
        ))
    }
}

impl<S, E> Debiased<S, E> {
    /// Pairs `surrogate` with `exact` under `choice`.
    ///
    /// # Errors
    /// [`BloError::InvalidHyperparameter`] if a fixed q or q_min is outside
    /// (0, 1], or the decay is outside [0, 1).
    pub fn new(surrogate: S, exact: E, choice: QChoice) -> Result<Self, BloError> {
        let q = match choice {
            QChoice::Fixed(q) => {
                check_q(q)?;
                q
            }
            QChoice::Adaptive(p) => {
                check_q(p.q_min)?;
                if !(p.decay.is_finite() && (0.0..1.0).contains(&p.decay)) {
                    return Err(BloError::invalid("decay", p.decay, "must be in [0, 1)"));
                }
                p.q_min
            }
        };
        Ok(Debiased {
            surrogate,
            exact,
            choice,
            q,
            moments: Moments::default(),
        })
    }

    /// The q the next meta-batch will use.
    pub fn q(&self) -> f64 {
        self.q
    }

    /// The surrogate.
    pub fn surrogate(&self) -> &S {
        &self.surrogate
    }

    /// The exact estimator.
    pub fn exact(&self) -> &E {
        &self.exact
    }

    /// The current estimates (D², V², C_det, C_rnd) of the adaptive scheme, if
    /// it has seen an exact sample.
    pub fn moments(&self) -> Option<(f64, f64, f64, f64)> {
        let b = match self.choice {
            QChoice::Adaptive(p) => p.decay,
            QChoice::Fixed(_) => return None,
        };
        let m = &self.moments;
        Some((m.d2.get(b)?, m.v2.get(b)?, m.c_det.get(b)?, m.c_rnd.get(b)?))
    }
}

/// UFO-BLO: [`FirstOrder`] debiased by [`Exact`].
pub type Ufo = Debiased<FirstOrder, Exact>;

impl Debiased<FirstOrder, Exact> {
    /// UFO-BLO with a fixed q; the exact branch recomputes from θ (constant memory).
    ///
    /// # Errors
    /// [`BloError::InvalidHyperparameter`] if q ∉ (0, 1].
    pub fn fixed(q: f64) -> Result<Self, BloError> {
        Self::fixed_with(q, Policy::Recompute)
    }

    /// UFO-BLO with a fixed q and the exact branch under `policy`.
    ///
    /// # Errors
    /// If q ∉ (0, 1] or the policy's budget is invalid.
    pub fn fixed_with(q: f64, policy: Policy) -> Result<Self, BloError> {
        Debiased::new(FirstOrder::new(), Exact::new(policy)?, QChoice::Fixed(q))
    }

    /// UFO-BLO with adaptive q (q_min = 0.05, decay 0.99), exact branch
    /// recomputing from θ.
    pub fn adaptive() -> Self {
        Debiased::new(
            FirstOrder::new(),
            Exact::new(Policy::Recompute).expect("recompute is a valid policy"),
            QChoice::Adaptive(AdaptiveParams::default()),
        )
        .expect("default adaptive parameters are valid")
    }

    /// UFO-BLO with adaptive q under the given parameters and policy.
    ///
    /// # Errors
    /// If q_min ∉ (0, 1], decay ∉ [0, 1) or the policy's budget is invalid.
    pub fn adaptive_with(params: AdaptiveParams, policy: Policy) -> Result<Self, BloError> {
        Debiased::new(
            FirstOrder::new(),
            Exact::new(policy)?,
            QChoice::Adaptive(params),
        )
    }
}

impl<F, P, S, E> Estimator<F, P> for Debiased<S, E>
where
    F: Float,
    P: Problem<F>,
    S: Estimator<F, P>,
    E: Estimator<F, P>,
{
    fn estimate(
        &self,
        problem: &P,
        task: &P::Task,
        theta: &[Tensor<F>],
        rng: &mut ChaCha8Rng,
    ) -> Result<Estimate<F>, BloError> {
        let q = self.q;
        let xi = q >= 1.0 || rng.gen::<f64>() < q;
        let mut rng_exact = rng.clone();
        // The exact branch continues the first-order rollout when it can: the
        // pair then costs the surrogate plus only the exact extra.
        let coupled = if xi && self.surrogate.is_first_order() {
            self.exact
                .estimate_with_first_order(problem, task, theta, &mut rng_exact)
                .transpose()?
        } else {
            None
        };
        let (mut est, ex) = match coupled {
            Some(c) => (c.first_order, Some(c.exact)),
            None => {
                let s = self.surrogate.estimate(problem, task, theta, rng)?;
                let e = if xi {
                    Some(self.exact.estimate(problem, task, theta, &mut rng_exact)?)
                } else {
                    None
                };
                (s, e)
            }
        };
        let mut sample = DebiasSample {
            surrogate_cost: est.stats.cost(),
            diff_sq: None,
            exact_sq: None,
            exact_cost: None,
        };
        est.stats.coins += 1;
        if let Some(ex) = ex {
            // One pass over both gradients: ‖g_S − g_E‖², ‖g_E‖² (in f64) and
            // the reweighted g_S + (e − s)/q, written over g_S in place.
            let w = F::from_f64(1.0 / q);
            let (mut diff_sq, mut exact_sq) = (0.0f64, 0.0f64);
            for (gs, ge) in est.grad.iter_mut().zip(&ex.grad) {
                for (s, &e) in gs.data_mut().iter_mut().zip(ge.data()) {
                    diff_sq += (s.to_f64() - e.to_f64()).powi(2);
                    exact_sq += e.to_f64().powi(2);
                    if q < 1.0 {
                        *s = *s + w * (e - *s);
                    }
                }
            }
            sample.diff_sq = Some(diff_sq);
            sample.exact_sq = Some(exact_sq);
            sample.exact_cost = Some(ex.stats.cost());
            est.stats.add(&ex.stats);
            est.stats.exact_branches += 1;
            if q >= 1.0 {
                est.grad = ex.grad;
            }
        }
        est.stats.debias = Some(sample);
        Ok(est)
    }

    fn observe(&mut self, estimates: &[Estimate<F>]) {
        let QChoice::Adaptive(p) = self.choice else {
            return;
        };
        let b = p.decay;
        for e in estimates {
            let Some(s) = &e.stats.debias else { continue };
            self.moments.c_det.push(b, s.surrogate_cost);
            if let (Some(d2), Some(v2), Some(c)) = (s.diff_sq, s.exact_sq, s.exact_cost) {
                self.moments.d2.push(b, d2);
                self.moments.v2.push(b, v2);
                self.moments.c_rnd.push(b, c);
            }
        }
        if let Some((d2, v2, c_det, c_rnd)) = self.moments() {
            self.q = optimal_q(c_det, c_rnd, v2, d2, p.q_min);
        }
    }

    fn name(&self) -> String {
        let kind = match self.choice {
            QChoice::Fixed(q) => format!("q={q}"),
            QChoice::Adaptive(_) => "adaptive".into(),
        };
        format!(
            "debiased[{} / {}]({kind})",
            Estimator::<F, P>::name(&self.surrogate),
            Estimator::<F, P>::name(&self.exact)
        )
    }

    /// Fixed q: `null`. Adaptive: q and the four moving averages (m, t) as
    /// bit patterns, plus the parameters q_min and decay (so a resumed run
    /// with other parameters is refused).
    fn save_state(&self) -> serde_json::Value {
        match self.choice {
            QChoice::Fixed(_) => serde_json::Value::Null,
            QChoice::Adaptive(p) => {
                let m = &self.moments;
                let e = |x: &Ema| serde_json::json!([x.m.to_bits(), x.t]);
                serde_json::json!({
                    "q": self.q.to_bits(),
                    "d2": e(&m.d2), "v2": e(&m.v2), "c_det": e(&m.c_det), "c_rnd": e(&m.c_rnd),
                    "q_min": p.q_min.to_bits(), "decay": p.decay.to_bits(),
                })
            }
        }
    }

    /// Restores [`Estimator::save_state`]'s output after checking it is a state
    /// the adaptive scheme can reach: q ∈ [q_min, 1] (NaN refused: `rng < NaN`
    /// is always false, so a NaN q would silently never run the exact branch),
    /// every moving average finite and ≥ 0 (they average costs and squared
    /// norms), the counters of D², V² and C_rnd equal (pushed together, once
    /// per exact branch) and at most C_det's (pushed once per estimate), an
    /// average with no samples zero, and q_min and decay (when recorded) equal
    /// to this estimator's. Nothing is changed on error.
    fn load_state(&mut self, state: &serde_json::Value) -> Result<(), String> {
        let p = match self.choice {
            QChoice::Fixed(_) => {
                return if state.is_null() {
                    Ok(())
                } else {
                    Err(format!(
                        "fixed-q estimator keeps no state, checkpoint holds {state}"
                    ))
                };
            }
            QChoice::Adaptive(p) => p,
        };
        let bits = |v: &serde_json::Value, what: &str| {
            v.as_u64()
                .ok_or_else(|| format!("adaptive UFO state: {what} = {v} is not a u64 bit pattern"))
        };
        let ema = |name: &str| -> Result<Ema, String> {
            let a = state
                .get(name)
                .and_then(|v| v.as_array())
                .filter(|a| a.len() == 2)
                .ok_or_else(|| format!("adaptive UFO state: missing or malformed {name}"))?;
            let e = Ema {
                m: f64::from_bits(bits(&a[0], name)?),
                t: bits(&a[1], name)?,
            };
            if !(e.m.is_finite() && e.m >= 0.0) {
                return Err(format!(
                    "adaptive UFO state: {name} moving average = {} (bits {:#x}): must be finite and >= 0",
                    e.m,
                    e.m.to_bits()
                ));
            }
            if e.t == 0 && e.m != 0.0 {
                return Err(format!(
                    "adaptive UFO state: {name} moving average = {} with 0 samples: must be 0",
                    e.m
                ));
            }
            Ok(e)
        };
        let q = f64::from_bits(bits(
            state.get("q").ok_or("adaptive UFO state: missing q")?,
            "q",
        )?);
        if !(q >= p.q_min && q <= 1.0) {
            return Err(format!(
                "adaptive UFO state: q = {q} (bits {:#x}): must lie in [q_min, 1] = [{}, 1]",
                q.to_bits(),
                p.q_min
            ));
        }
        for (name, want) in [("q_min", p.q_min), ("decay", p.decay)] {
            if let Some(v) = state.get(name) {
                let got = f64::from_bits(bits(v, name)?);
                if got.to_bits() != want.to_bits() {
                    return Err(format!(
                        "adaptive UFO state: {name} = {got} in the checkpoint, {want} in this estimator"
                    ));
                }
            }
        }
        let moments = Moments {
            d2: ema("d2")?,
            v2: ema("v2")?,
            c_det: ema("c_det")?,
            c_rnd: ema("c_rnd")?,
        };
        let (d, v, c, r) = (moments.d2.t, moments.v2.t, moments.c_det.t, moments.c_rnd.t);
        if d != v || d != r || d > c {
            return Err(format!(
                "adaptive UFO state: sample counters d2 {d}, v2 {v}, c_rnd {r}, c_det {c}: \
                 d2, v2 and c_rnd count the exact branches (equal), c_det every estimate (>= them)"
            ));
        }
        self.moments = moments;
        self.q = q;
        Ok(())
    }
}
