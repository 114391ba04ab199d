//! Randomized telescopes over the truncation depth (docs/math.md §10): UFO-BLO's
//! one coin generalised to a random depth.
//!
//! With g_k the truncated hypergradient (the adjoint sweep over the last k
//! inner steps, [`crate::Truncated`]; g_0 = g_FO, g_r = g_exact) and levels
//! 0 = k_0 < k_1 < … < k_m = r, write Δ_i = g_{k_i} − g_{k_{i−1}}, so that
//! g_exact = g_0 + Σ_i Δ_i. Draw a level I ∈ {0, …, m} from a distribution p
//! (S_i = P(I ≥ i)) and return
//!
//! ```text
//! single sample:      ĝ = g_0 + Δ_I / p(I)                (ĝ = g_0 if I = 0)
//! Russian roulette:   ĝ = g_0 + Σ_{i ≤ I} Δ_i / S_i
//! ```
//!
//! Both are unbiased, E[ĝ | τ] = g_exact, when every level has mass
//! (single sample: p(i) > 0 for i ≥ 1; roulette: p(m) > 0). All g_{k_i},
//! i ≤ I, come from one sweep: the first sweep φ_0 → φ_r (g_0 is read at the
//! turn), then the adjoint steps r, r − 1, …, r − k_I + 1, reading g_{k_i} =
//! ḡ + (∂Φ_0/∂θ)ᵀ ū_φ as the sweep passes depth k_i: k_I HVPs and one VJP per
//! level reached, with the states supplied by revolve's plan for the last
//! k_I steps within the memory budget ([`crate::engine::plan::truncated_within`]).
//! The estimate is coupled like UFO's: one rollout, one set of batches.
//!
//! With levels {r} and p = (1 − q, q) ([`Depths::TwoPoint`]) both estimators
//! are UFO-BLO, and they return UFO's bits on the same coins.
//!
//! [`Telescope::with_baselines`] adds control variates: with b_i fixed by
//! earlier meta-batches and w_i the weight level i gets in the draw (0 when
//! unused), ĝ = g_0 + Σ_i b_i + Σ_i w_i (Δ_i − b_i), still unbiased, with the
//! moments below taken over Δ_i − b_i (docs/math.md §10, "Baselines").
//!
//! # Second moments (about g_0, per task)
//!
//! With C_ij = ⟨Δ_i, Δ_j⟩:
//!
//! ```text
//! single sample:      E‖ĝ − g_0‖² = Σ_i C_ii / p(i)
//! Russian roulette:   E‖ĝ − g_0‖² = Σ_{i,j} C_ij / S_{min(i,j)}
//! ```
//!
//! (the second because 1[I ≥ i]·1[I ≥ j] = 1[I ≥ max(i, j)] and
//! S_max/(S_i S_j) = 1/S_min). Then E‖ĝ‖² = W + E‖ĝ − g_0‖² with
//! W = ‖g_0‖² + 2⟨g_0, g_exact − g_0⟩ (UFO's W = V² − D²), independent of p.
//!
//! # Choosing p adaptively
//!
//! [`Telescope::adaptive`] measures, from its own samples, bias-corrected
//! moving averages of ‖Δ_i‖² (over the tasks whose draw reached level i: the
//! draw is independent of the task, so they are an unbiased sample) and of
//! ‖g_0‖² + 2⟨g_0, ĝ − g_0⟩ (whose mean is W), and after each meta-batch, in
//! task order, sets p to the minimiser of (expected cost) × (second moment)
//! ([`optimal_depths`]) under the cost of the plans it runs
//! ([`DepthModel`]). For roulette the cross terms C_ij (i ≠ j) are not
//! measured; the model bounds them by Cauchy–Schwarz, √(C_ii C_jj), so it
//! minimises an upper bound of the second moment (exact when the differences
//! are parallel, as they are for contracting inner dynamics).
//!
//! ```
//! # use blo::{Estimator, InnerLoop, Problem, Telescope, TelescopeKind, Depths, DepthDistribution, Budget};
//! # use tape::{Real, Tape, Tensor, Var};
//! # use rand::SeedableRng;
//! # struct Quad { inner: InnerLoop }
//! # impl Problem<f64> for Quad {
//! #     type Task = f64;
//! #     fn inner_loop(&self) -> &InnerLoop { &self.inner }
//! #     fn inner_loss<'t, T: Real<Base = f64>>(&self, _t: &'t Tape<T>, c: &f64, _j: usize,
//! #         _th: &[Var<'t, T>], phi: &[Var<'t, T>]) -> Var<'t, T> {
//! #         (phi[0] - *c).square().sum() * 0.5
//! #     }
//! #     fn outer_loss<'t, T: Real<Base = f64>>(&self, t: &'t Tape<T>, c: &f64,
//! #         th: &[Var<'t, T>], phi: &[Var<'t, T>]) -> Var<'t, T> { self.inner_loss(t, c, 0, th, phi) }
//! # }
//! // MAML on ½(φ − c)², α = 0.5, r = 3: g_k = 2^{−k}(φ_3 − c) and
//! // φ_3 − c = (θ − c)/8, so with θ − c = 2: g_k = 2^{−k}/4.
//! let p = Quad { inner: InnerLoop::sgd(3, 0.5)? };
//! let dist = DepthDistribution::new(vec![1, 2, 3], &Depths::Geometric { ratio: 0.5 })?;
//! let est = Telescope::new(TelescopeKind::RussianRoulette, dist, Budget::States(2))?;
//! let theta = [Tensor::vector(vec![3.0])];
//! // Level 2 drawn: g_0 + Δ_1/S_1 + Δ_2/S_2 with S = (1, 3/7, 1/7).
//! let e = est.estimate_at(&p, &1.0, &theta, 2)?;
//! let want = 0.25 + (0.125 - 0.25) + (0.0625 - 0.125) / (3.0 / 7.0);
//! assert!((e.grad[0].data()[0] - want).abs() < 1e-15);
//! assert_eq!(e.stats.hvps, 2); // two adjoint steps reach depth 2
//! let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
//! let _ = est.estimate(&p, &1.0, &theta, &mut rng)?; // draws the level
//! # Ok::<(), blo::BloError>(())
//! ```

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tape::{Float, Tensor};

use super::debiased::Ema;
use crate::engine::plan::{truncated_within, Action, Budget};
use crate::engine::run::{budget_states, cached_truncated_within};
use crate::engine::sweep::{Sweep, Target};
use crate::error::BloError;
use crate::estimators::{Estimate, Estimator};
use crate::problem::Problem;

/// Which telescope estimator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TelescopeKind {
    /// ĝ = g_0 + Δ_I / p(I): one difference, reweighted by its probability.
    SingleSample,
    /// ĝ = g_0 + Σ_{i ≤ I} Δ_i / P(I ≥ i): every difference up to the drawn
    /// level, each reweighted by its survival probability.
    RussianRoulette,
}

impl TelescopeKind {
    fn label(self) -> &'static str {
        match self {
            TelescopeKind::SingleSample => "single-sample",
            TelescopeKind::RussianRoulette => "roulette",
        }
    }
}

/// A depth distribution as the user gives it, over the levels I ∈ {0, …, m}
/// of a list of m levels k_1 < … < k_m (I = 0: no correction, ĝ = g_0).
#[derive(Clone, Debug, PartialEq)]
pub enum Depths {
    /// p(i) ∝ ratio^{i−1} for i = 1..m, p(0) = 0 (ratio > 0; ratio < 1
    /// favours shallow levels).
    Geometric {
        /// The ratio p(i + 1)/p(i).
        ratio: f64,
    },
    /// p(i) = 1/m for i = 1..m, p(0) = 0.
    Uniform,
    /// UFO's coin: p(0) = 1 − q, p(m) = q, nothing in between (use it with the
    /// single level {r}: that is UFO-BLO; with more levels only roulette is
    /// unbiased).
    TwoPoint {
        /// The probability of the full correction, in (0, 1].
        q: f64,
    },
    /// Any table p(0), p(1), …, p(m) (m + 1 entries, non-negative, summing to
    /// 1 within 1e-9).
    Table(Vec<f64>),
}

/// Why a depth distribution was refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum DepthError {
    /// No levels.
    #[error("telescope levels: the list is empty (give at least the last level r)")]
    NoLevels,
    /// Levels not strictly increasing from ≥ 1.
    #[error("telescope levels: level {index} is {level} after {previous}: levels must increase strictly from 1")]
    LevelsNotIncreasing {
        /// Position in the list.
        index: usize,
        /// The level before it (0 for the first).
        previous: usize,
        /// The offending level.
        level: usize,
    },
    /// The last level is not the problem's r (the telescope would not reach
    /// g_exact).
    #[error(
        "telescope levels: the last level is {last}, but the problem takes r = {r} inner steps"
    )]
    LastLevel {
        /// The last level.
        last: usize,
        /// The problem's r.
        r: usize,
    },
    /// A parameter of a named distribution out of range.
    #[error("depth distribution: {name} = {value}: {reason}")]
    Parameter {
        /// Which parameter.
        name: &'static str,
        /// Its value.
        value: f64,
        /// What is allowed.
        reason: &'static str,
    },
    /// A table of the wrong length.
    #[error(
        "depth table: {got} entries for {levels} levels; expected {expected} (p(0), p(1), …, p(m))"
    )]
    WrongLength {
        /// The number of levels m.
        levels: usize,
        /// m + 1.
        expected: usize,
        /// The table's length.
        got: usize,
    },
    /// A negative or non-finite probability.
    #[error("depth table: p({index}) = {value} is not a probability")]
    NotAProbability {
        /// The level index I.
        index: usize,
        /// The value.
        value: f64,
    },
    /// The table does not sum to 1.
    #[error("depth table: the probabilities sum to {sum}, not 1 (tolerance 1e-9)")]
    NotNormalised {
        /// The sum.
        sum: f64,
    },
    /// Zero mass where the estimator needs it for unbiasedness.
    #[error("depth distribution: {estimator} needs {what} > 0, but it is {value} (level {index}, depth {depth}): the estimate would be biased")]
    ZeroMass {
        /// Which estimator.
        estimator: &'static str,
        /// Which probability (p(i) or P(I ≥ m)).
        what: &'static str,
        /// The level index.
        index: usize,
        /// Its depth k_i.
        depth: usize,
        /// The value found.
        value: f64,
    },
}

/// Every depth 1, 2, …, r as a level (m = r): the finest telescope; one VJP
/// through Φ_0 per depth reached.
pub fn every_depth(r: usize) -> Vec<usize> {
    (1..=r).collect()
}

/// Doubling levels 1, 2, 4, …, and r (m = ⌈log₂ r⌉ + 1).
///
/// ```
/// assert_eq!(blo::doubling_depths(10), vec![1, 2, 4, 8, 10]);
/// assert_eq!(blo::doubling_depths(8), vec![1, 2, 4, 8]);
/// ```
pub fn doubling_depths(r: usize) -> Vec<usize> {
    let mut v = Vec::new();
    let mut k = 1;
    while k < r {
        v.push(k);
        k *= 2;
    }
    if r > 0 {
        v.push(r);
    }
    v
}

/// A validated distribution over the levels: the levels k_1 < … < k_m, the
/// probabilities p(0..=m) and the survival function S_i = P(I ≥ i) = Σ_{j ≥ i}
/// p(j) (summed from the top, so S_m = p(m) exactly).
#[derive(Clone, Debug, PartialEq)]
pub struct DepthDistribution {
    levels: Vec<usize>,
    p: Vec<f64>,
    survival: Vec<f64>,
}

impl DepthDistribution {
    /// The distribution `depths` over `levels` (strictly increasing, ≥ 1; the
    /// last must be the problem's r, checked at each estimate).
    ///
    /// # Errors
    /// [`DepthError`]: no levels, levels not increasing, a parameter out of
    /// range, a table of the wrong length, a negative or non-finite entry, or
    /// entries not summing to 1.
    pub fn new(levels: Vec<usize>, depths: &Depths) -> Result<Self, DepthError> {
        let m = levels.len();
        let table = match depths {
            Depths::Geometric { ratio } => {
                if !(ratio.is_finite() && *ratio > 0.0) {
                    return Err(DepthError::Parameter {
                        name: "ratio",
                        value: *ratio,
                        reason: "must be finite and > 0",
                    });
                }
                let w: Vec<f64> = (0..m).map(|i| ratio.powi(i as i32)).collect();
                let sum: f64 = w.iter().sum();
                std::iter::once(0.0)
                    .chain(w.iter().map(|x| x / sum))
                    .collect()
            }
            Depths::Uniform => std::iter::once(0.0)
                .chain((0..m).map(|_| 1.0 / m as f64))
                .collect(),
            Depths::TwoPoint { q } => {
                if !(q.is_finite() && *q > 0.0 && *q <= 1.0) {
                    return Err(DepthError::Parameter {
                        name: "q",
                        value: *q,
                        reason: "the probability of the full correction must be in (0, 1]",
                    });
                }
                let mut t = vec![0.0; m + 1];
                t[0] = 1.0 - q;
                if m > 0 {
                    t[m] = *q;
                }
                t
            }
            Depths::Table(t) => t.clone(),
        };
        Self::from_table(levels, table)
    }

    /// The distribution with probabilities `p` = (p(0), …, p(m)) over `levels`.
    ///
    /// # Errors
    /// As [`DepthDistribution::new`].
    pub fn from_table(levels: Vec<usize>, p: Vec<f64>) -> Result<Self, DepthError> {
        if levels.is_empty() {
            return Err(DepthError::NoLevels);
        }
        let mut previous = 0;
        for (index, &level) in levels.iter().enumerate() {
            if level <= previous {
                return Err(DepthError::LevelsNotIncreasing {
                    index,
                    previous,
                    level,
                });
            }
            previous = level;
        }
        let m = levels.len();
        if p.len() != m + 1 {
            return Err(DepthError::WrongLength {
                levels: m,
                expected: m + 1,
                got: p.len(),
            });
        }
        if let Some((index, &value)) = p
            .iter()
            .enumerate()
            .find(|(_, x)| !(x.is_finite() && **x >= 0.0))
        {
            return Err(DepthError::NotAProbability { index, value });
        }
        let sum: f64 = p.iter().sum();
        if (sum - 1.0).abs() > 1e-9 {
            return Err(DepthError::NotNormalised { sum });
        }
        let mut survival = vec![0.0; m + 2];
        for i in (1..=m).rev() {
            survival[i] = survival[i + 1] + p[i];
        }
        survival[0] = 1.0;
        survival.truncate(m + 1);
        Ok(DepthDistribution {
            levels,
            p,
            survival,
        })
    }

    /// The levels k_1 < … < k_m.
    pub fn levels(&self) -> &[usize] {
        &self.levels
    }

    /// p(0), …, p(m).
    pub fn probabilities(&self) -> &[f64] {
        &self.p
    }

    /// S_0 = 1, S_i = P(I ≥ i) for i = 1..m.
    pub fn survival(&self) -> &[f64] {
        &self.survival
    }

    /// Checks that `kind` is unbiased under this distribution: single sample
    /// needs p(i) > 0 for every level i ≥ 1, roulette needs S_m = p(m) > 0.
    ///
    /// # Errors
    /// [`DepthError::ZeroMass`] naming the level.
    pub fn check_for(&self, kind: TelescopeKind) -> Result<(), DepthError> {
        let m = self.levels.len();
        let zero = |what, index: usize, value| DepthError::ZeroMass {
            estimator: kind.label(),
            what,
            index,
            depth: self.levels[index - 1],
            value,
        };
        match kind {
            TelescopeKind::SingleSample => {
                if let Some(i) = (1..=m).find(|&i| self.p[i] <= 0.0) {
                    return Err(zero("p(i)", i, self.p[i]));
                }
            }
            TelescopeKind::RussianRoulette => {
                if self.survival[m] <= 0.0 {
                    return Err(zero("P(I ≥ m)", m, self.survival[m]));
                }
            }
        }
        Ok(())
    }

    /// Draws a level: I = the largest i with u < S_i for one uniform
    /// u = `rng.gen::<f64>()` (so P(I ≥ i) = S_i; with p = (1 − q, q) this is
    /// UFO's coin, I = 1 iff u < q). No number is drawn when one level has
    /// all the mass (as UFO draws none at q = 1).
    pub fn draw(&self, rng: &mut ChaCha8Rng) -> usize {
        let mut support = self.p.iter().enumerate().filter(|(_, &x)| x > 0.0);
        if let (Some((only, _)), None) = (support.next(), support.next()) {
            return only;
        }
        let u = rng.gen::<f64>();
        (1..self.levels.len() + 1)
            .rev()
            .find(|&i| u < self.survival[i])
            .unwrap_or(0)
    }
}

/// What one telescope estimate measured: the level drawn, ‖Δ_i‖² (with
/// baselines ‖Δ_i − b_i‖²) for every level reached, and ‖a‖² + 2⟨a, ĝ − a⟩
/// (whose mean is W, or W_b), with the plan it ran under (r and the states of
/// the budget).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TelescopeSample {
    /// The level I drawn.
    pub level: usize,
    /// ‖Δ_i‖² for i = 1..=I when the levels are read one by one (adaptive,
    /// or a single level); empty when only the combination is formed.
    pub diff_sq: Vec<f64>,
    /// ‖a‖² + 2⟨a, ĝ − a⟩ with the anchor a = g_0 (a = g_0 + Σ_i b_i with
    /// baselines b_i: its mean is then W_b).
    pub w: f64,
    /// With baselines ([`Telescope::with_baselines`]): Δ_i, i = 1..=I,
    /// flattened over θ's tensors, which [`Estimator::observe`] averages
    /// into the next meta-batch's baselines; empty otherwise. `diff_sq`
    /// then holds ‖Δ_i − b_i‖².
    #[serde(default)]
    pub diffs: Vec<Vec<f64>>,
    /// The problem's r.
    pub r: usize,
    /// The states the memory budget held.
    pub states: usize,
}

/// The moments and costs of a telescope over m levels, in the cost units of
/// docs/math.md §8 (gradients, an HVP counting 2):
///
/// - `c0`: the cost of g_0 (the first sweep, the outer gradient and one VJP
///   through Φ_0: r + 2);
/// - `costs[i − 1]`: what reaching level i adds: the plan's recomputed
///   forward steps, 2 per adjoint step (k_i HVPs) and the VJPs through Φ_0
///   (one per level read when the levels are read one by one, else one);
/// - `w`: W = E‖g_0‖² + 2E⟨g_0, g_exact − g_0⟩;
/// - `gram[(i − 1)·m + (j − 1)]`: C_ij = E⟨Δ_i, Δ_j⟩.
#[derive(Clone, Debug, PartialEq)]
pub struct DepthModel {
    /// Cost of g_0.
    pub c0: f64,
    /// Cost added by reaching each level.
    pub costs: Vec<f64>,
    /// W.
    pub w: f64,
    /// C_ij, row major, m × m.
    pub gram: Vec<f64>,
}

impl DepthModel {
    /// The costs of the plans a telescope over `levels` runs for r inner
    /// steps within `states` buffers: c0 = r + 2, and for level i the plan
    /// [`truncated_within`]`(r, k_i, states)`'s forward steps beyond r,
    /// plus 2k_i, plus the VJPs through Φ_0: i with `per_level` reads (an
    /// adaptive telescope, which measures every difference, or one level),
    /// else 1 (the weighted sum of the cotangent differences).
    pub fn plan_costs(
        r: usize,
        levels: &[usize],
        states: usize,
        per_level: bool,
    ) -> (f64, Vec<f64>) {
        let costs = levels
            .iter()
            .enumerate()
            .map(|(i, &k)| {
                let extra = truncated_within(r, k, states).forward_steps() - r;
                let vjps = if per_level { i + 1 } else { 1 };
                (extra + 2 * k + vjps) as f64
            })
            .collect();
        ((r + 2) as f64, costs)
    }

    /// The expected cost per estimate under p: c0 + Σ_i p(i)·costs[i − 1].
    pub fn expected_cost(&self, p: &[f64]) -> f64 {
        self.c0
            + self
                .costs
                .iter()
                .zip(&p[1..])
                .map(|(c, p)| c * p)
                .sum::<f64>()
    }

    /// E‖ĝ‖² = W + E‖ĝ − g_0‖² under `dist` (module docs; +∞ if a level with
    /// C_ii > 0 has no mass).
    pub fn second_moment(&self, kind: TelescopeKind, dist: &DepthDistribution) -> f64 {
        let m = self.costs.len();
        let (p, s) = (dist.probabilities(), dist.survival());
        let div = |c: f64, x: f64| {
            if c == 0.0 {
                0.0
            } else if x > 0.0 {
                c / x
            } else {
                f64::INFINITY
            }
        };
        let q: f64 = match kind {
            TelescopeKind::SingleSample => {
                (0..m).map(|i| div(self.gram[i * m + i], p[i + 1])).sum()
            }
            TelescopeKind::RussianRoulette => (0..m)
                .flat_map(|i| (0..m).map(move |j| (i, j)))
                .map(|(i, j)| div(self.gram[i * m + j], s[i.min(j) + 1]))
                .sum(),
        };
        self.w + q
    }

    /// (expected cost) × (second moment) under `dist`.
    pub fn figure(&self, kind: TelescopeKind, dist: &DepthDistribution) -> f64 {
        self.expected_cost(dist.probabilities()) * self.second_moment(kind, dist)
    }
}

/// The distribution over `levels` that minimises (expected cost) × (second
/// moment) under `model` within a family, with a floor 0 < floor ≤ 1 (single
/// sample: at least floor/m mass on every level; roulette: every level
/// reached with probability at least floor), which keeps every level
/// observed and the estimate unbiased whatever the measurements say.
///
/// The family is the stationary point of the unconstrained problem: for
/// f = (c0 + Σ a_i x_i)(W + Σ b_i/x_i), ∂f/∂x_i = 0 gives x_i = λ√(b_i/a_i)
/// with one common λ. Single sample: x_i = p(i), a_i = costs_i, b_i = C_ii,
/// λ ≤ 1/Σ√(b_i/a_i) (so Σ p ≤ 1); when the constraint Σ p = 1 is active its
/// multiplier ν gives p(i) ∝ √(b_i/(a_i + ν)), searched too. Without the
/// floor this is the exact optimum (the Cauchy–Schwarz optimum of
/// docs/math.md §10 with the fixed cost c0 included). Roulette:
/// x_i = S_i, a_i = costs_i − costs_{i−1} (the cost of going one level
/// deeper), b_i = C_ii + 2Σ_{j>i} C_ij (so Σ b_i/S_i is the second moment),
/// made non-increasing by a running minimum and capped at 1, and also a
/// constant S_i = t (UFO's coin over the whole telescope), and the pooled
/// minimiser of Σ b_i/S_i + t·Σ a_i S_i over non-increasing S (pool adjacent
/// violators; it also merges levels, and uses the b_i < 0 of anti-correlated
/// differences that the first family clips). The floor: single
/// sample p ← (1 − floor)·p + floor/m on the levels; roulette S_i ≥ floor
/// (so S = 1, the exact estimator, stays in the family). Each parameter is
/// chosen by a grid of 241 values (λ over six decades below λ_hi, ν over
/// twelve decades around the costs, t over [floor, 1]) and a golden section
/// refinement, on the exact figure [`DepthModel::figure`].
/// Deterministic: a pure function of its inputs.
///
/// ```
/// use blo::{optimal_depths, DepthModel, TelescopeKind};
/// // One level: UFO. c0 = 10, exact branch 100, V² = 1, D² = 0.5 (W = 0.5):
/// // q* = √(10·0.5/(100·0.5)) = √0.1 (docs/math.md §4), floor 0.05.
/// let model = DepthModel { c0: 10.0, costs: vec![100.0], w: 0.5, gram: vec![0.5] };
/// let p = optimal_depths(TelescopeKind::SingleSample, &model, &[7], 0.05)?;
/// let q = p.probabilities()[1];
/// assert!((q - 0.1f64.sqrt()).abs() < 1e-6, "{q}");
/// # Ok::<(), blo::BloError>(())
/// ```
///
/// # Errors
/// [`DepthError::Parameter`] if floor ∉ (0, 1] or the model's sizes do not
/// match `levels`.
pub fn optimal_depths(
    kind: TelescopeKind,
    model: &DepthModel,
    levels: &[usize],
    floor: f64,
) -> Result<DepthDistribution, DepthError> {
    let m = levels.len();
    if !(floor.is_finite() && floor > 0.0 && floor <= 1.0) {
        return Err(DepthError::Parameter {
            name: "floor",
            value: floor,
            reason: "must be in (0, 1]",
        });
    }
    if model.costs.len() != m || model.gram.len() != m * m {
        return Err(DepthError::Parameter {
            name: "model size",
            value: model.costs.len() as f64,
            reason: "the model needs one cost per level and an m × m Gram matrix",
        });
    }
    let tiny = 1e-12 * model.c0.max(1.0);
    // Roulette's b_i = C_ii + 2Σ_{j>i} C_ij (any sign) and a_i, the cost of
    // going one level deeper.
    let (rb, ra): (Vec<f64>, Vec<f64>) = (0..m)
        .map(|i| {
            let b = model.gram[i * m + i]
                + 2.0 * (i + 1..m).map(|j| model.gram[i * m + j]).sum::<f64>();
            let a = model.costs[i] - if i == 0 { 0.0 } else { model.costs[i - 1] };
            (b, a.max(tiny))
        })
        .unzip();
    let x: Vec<f64> = match kind {
        TelescopeKind::SingleSample => (0..m)
            .map(|i| (model.gram[i * m + i].max(0.0) / model.costs[i].max(tiny)).sqrt())
            .collect(),
        TelescopeKind::RussianRoulette => {
            let mut run = f64::INFINITY;
            (0..m)
                .map(|i| {
                    run = run.min((rb[i].max(0.0) / ra[i]).sqrt());
                    run
                })
                .collect()
        }
    };
    // The family before the floor: λ·x (single sample: p(0) = 1 − Σ p ≥ 0;
    // roulette: S capped at 1) or, for single sample with the sum constraint
    // active (p(0) = 0), p(i) ∝ √(b_i/(a_i + ν)), ν ≥ 0 its multiplier.
    let raw = |family: usize, t: f64| -> Vec<f64> {
        let mut p = vec![0.0; m + 1];
        match (kind, family) {
            (TelescopeKind::SingleSample, 0) => {
                for i in 0..m {
                    p[i + 1] = t * x[i];
                }
            }
            (TelescopeKind::SingleSample, _) => {
                let y: Vec<f64> = (0..m)
                    .map(|i| {
                        (model.gram[i * m + i].max(0.0) / (model.costs[i].max(tiny) + t)).sqrt()
                    })
                    .collect();
                let sum: f64 = y.iter().sum();
                for i in 0..m {
                    p[i + 1] = y[i] / sum;
                }
            }
            (TelescopeKind::RussianRoulette, family) => {
                // Family 0: S_i = min(1, λ x_i) (x non-increasing); family
                // 1: S_i = t for every level (UFO's coin on the whole
                // telescope); family 2: the pooled minimiser of
                // Σ b_i/S_i + t·Σ a_i S_i over non-increasing S
                // ([`pooled_survival`]). The floor is on S: every level is
                // reached with probability ≥ floor, and S = 1 (exact) stays
                // allowed.
                let s: Vec<f64> = match family {
                    0 => x.iter().map(|xi| t * xi).collect(),
                    1 => vec![t; m],
                    _ => pooled_survival(&rb, &ra, t),
                }
                .into_iter()
                .map(|si| si.min(1.0).max(floor))
                .collect();
                for i in 0..m {
                    p[i + 1] = s[i] - s.get(i + 1).copied().unwrap_or(0.0);
                }
            }
        }
        if kind == TelescopeKind::SingleSample {
            for pi in &mut p[1..] {
                *pi = (1.0 - floor) * *pi + floor / m as f64;
            }
        }
        p[0] = (1.0 - p[1..].iter().sum::<f64>()).max(0.0);
        let sum: f64 = p.iter().sum();
        p.iter_mut().for_each(|v| *v /= sum);
        p
    };
    let eval = |family: usize, t: f64| -> (f64, DepthDistribution) {
        let d = DepthDistribution::from_table(levels.to_vec(), raw(family, t))
            .expect("built tables are distributions");
        let f = model.figure(kind, &d);
        (if f.is_nan() { f64::INFINITY } else { f }, d)
    };
    // λ_hi: single sample, Σ p = 1; roulette, every S_i with x_i > 0 at 1.
    let lambda_hi = match kind {
        TelescopeKind::SingleSample => 1.0 / x.iter().sum::<f64>(),
        TelescopeKind::RussianRoulette => {
            1.0 / x
                .iter()
                .copied()
                .filter(|&v| v > 0.0)
                .fold(f64::INFINITY, f64::min)
        }
    };
    // Each family's parameter range: λ over six decades below λ_hi; ν over
    // twelve decades around the costs (ν = 0 is λ = λ_hi); t over [floor, 1].
    // With every difference measured zero only the floor (single sample) or
    // the constant coin (roulette) is left.
    let c_max = model.costs.iter().copied().fold(tiny, f64::max);
    let mut ranges = Vec::new();
    if lambda_hi.is_finite() && lambda_hi > 0.0 {
        ranges.push((0usize, lambda_hi * 1e-6, lambda_hi));
        if kind == TelescopeKind::SingleSample {
            ranges.push((1, c_max * 1e-6, c_max * 1e6));
        }
    }
    let ratios = rb
        .iter()
        .zip(&ra)
        .filter(|(b, _)| **b > 0.0)
        .map(|(b, a)| b / a);
    let (r_lo, r_hi) = ratios.fold((f64::INFINITY, 0.0f64), |(l, h), v| (l.min(v), h.max(v)));
    match kind {
        TelescopeKind::RussianRoulette => {
            ranges.push((1, floor, 1.0));
            if r_hi > 0.0 {
                // A block's S is 1 at t = Σb/Σa and the floor at that over floor².
                ranges.push((2, 0.25 * r_lo, 4.0 * r_hi / (floor * floor)));
            }
        }
        TelescopeKind::SingleSample if ranges.is_empty() => return Ok(eval(0, 0.0).1),
        TelescopeKind::SingleSample => {}
    }
    let mut best: Option<(f64, DepthDistribution)> = None;
    for (family, lo, hi) in ranges {
        let n = 241;
        let mut grid: Vec<f64> = (0..n)
            .map(|t| lo * (hi / lo).powf(t as f64 / (n - 1) as f64))
            .collect();
        grid[n - 1] = hi;
        let (at, _) = grid
            .iter()
            .enumerate()
            .map(|(t, &l)| (t, eval(family, l).0))
            .fold((0, f64::INFINITY), |a, b| if b.1 < a.1 { b } else { a });
        let (mut a, mut b) = (grid[at.saturating_sub(1)], grid[(at + 1).min(n - 1)]);
        let g = (5f64.sqrt() - 1.0) / 2.0;
        for _ in 0..60 {
            let (u, v) = (b - g * (b - a), a + g * (b - a));
            if eval(family, u).0 <= eval(family, v).0 {
                b = v;
            } else {
                a = u;
            }
        }
        for cand in [eval(family, 0.5 * (a + b)), eval(family, grid[at])] {
            if best.as_ref().is_none_or(|(f, _)| cand.0 < *f) {
                best = Some(cand);
            }
        }
    }
    Ok(best.expect("at least one family").1)
}

/// The S minimising Σ b_i/S_i + t·Σ a_i S_i over non-increasing S ≥ 0, by
/// pooling adjacent violators: a block of levels pooled together has
/// S = √(max(Σb, 0)/(t·Σa)), and a block whose S is below the next one's is
/// merged with it. Exact when every b_i ≥ 0 (the terms are then convex); with
/// negative b_i (anti-correlated differences) a candidate that the caller
/// scores by the exact figure. Equal S over a block is the coarse telescope
/// that skips the levels inside it, so this family also chooses the levels.
fn pooled_survival(b: &[f64], a: &[f64], t: f64) -> Vec<f64> {
    // (Σb, Σa, levels) per block.
    let value = |(sb, sa, _): (f64, f64, usize)| (sb.max(0.0) / (t * sa)).sqrt();
    let mut blocks: Vec<(f64, f64, usize)> = Vec::with_capacity(b.len());
    for (&bi, &ai) in b.iter().zip(a) {
        blocks.push((bi, ai, 1));
        while let [.., prev, last] = blocks[..] {
            if value(prev) >= value(last) {
                break;
            }
            blocks.pop();
            let top = blocks.last_mut().expect("two blocks");
            *top = (prev.0 + last.0, prev.1 + last.1, prev.2 + last.2);
        }
    }
    blocks
        .into_iter()
        .flat_map(|bl| std::iter::repeat_n(value(bl), bl.2))
        .collect()
}

/// Parameters of the adaptive depth distribution.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdaptiveDepths {
    /// The mass spread evenly over the levels whatever the measurements
    /// (each level gets at least floor/m); in (0, 1], default 0.05 (UFO's
    /// q_min for one level).
    pub floor: f64,
    /// The EMA decay, in [0, 1) (default 0.99).
    pub decay: f64,
}

impl Default for AdaptiveDepths {
    fn default() -> Self {
        AdaptiveDepths {
            floor: 0.05,
            decay: 0.99,
        }
    }
}

/// Parameters of the telescope's baselines (control variates, docs/math.md
/// §10): b_i is a bias-corrected moving average of Δ_i over the tasks of
/// earlier meta-batches that reached level i, so it is a constant given the
/// past and ĝ = g_0 + Σ_i b_i + Σ_i w_i (Δ_i − b_i) stays unbiased.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Baselines {
    /// The EMA decay per task reaching the level, in [0, 1) (default 0.99).
    pub decay: f64,
}

impl Default for Baselines {
    fn default() -> Self {
        Baselines { decay: 0.99 }
    }
}

/// The baselines' moving averages: one θ-sized sum per level (flattened,
/// empty before the first sample) and its sample count.
#[derive(Clone, Debug, PartialEq)]
struct BaselineState {
    sums: Vec<Vec<f64>>,
    counts: Vec<u64>,
}

impl BaselineState {
    /// b_i = sum_i/(1 − β^t_i); `None` before any level has a sample (the
    /// baselines are then all zero and the estimate is the plain one).
    fn values(&self, decay: f64) -> Option<Vec<Vec<f64>>> {
        let dim = self.sums.iter().map(Vec::len).max().filter(|&d| d > 0)?;
        Some(
            self.sums
                .iter()
                .zip(&self.counts)
                .map(|(s, &t)| {
                    if t == 0 {
                        return vec![0.0; dim];
                    }
                    let c = 1.0 - decay.powi(t.min(i32::MAX as u64) as i32);
                    s.iter().map(|x| x / c).collect()
                })
                .collect(),
        )
    }
}

/// The adaptive scheme's measurements.
#[derive(Clone, Debug, PartialEq)]
struct DepthMoments {
    /// ‖Δ_i‖², over the tasks that reached level i.
    d: Vec<Ema>,
    /// ‖g_0‖² + 2⟨g_0, ĝ − g_0⟩, over every task.
    w: Ema,
    /// (r, states) of the plans seen last.
    plan: Option<(usize, usize)>,
}

/// A moving average's decay must lie in [0, 1).
fn check_decay(name: &'static str, decay: f64) -> Result<(), BloError> {
    if decay.is_finite() && (0.0..1.0).contains(&decay) {
        Ok(())
    } else {
        Err(BloError::invalid(name, decay, "must be in [0, 1)"))
    }
}

/// A randomized telescope over the truncation depth (module docs).
#[derive(Clone, Debug)]
pub struct Telescope {
    kind: TelescopeKind,
    dist: DepthDistribution,
    memory: Budget,
    adapt: Option<(AdaptiveDepths, DepthMoments)>,
    baseline: Option<(Baselines, BaselineState)>,
}

impl Telescope {
    /// The telescope `kind` with the depth distribution `dist`, its plans
    /// within `memory` (the reversal of the last k_I steps by revolve's
    /// schedule in that many states; `Budget::States(1)` recomputes each
    /// state from φ_0, as UFO's default exact branch does).
    ///
    /// # Errors
    /// [`DepthError::ZeroMass`] if `kind` is biased under `dist`;
    /// [`BloError::InvalidHyperparameter`] for a budget of 0 states.
    pub fn new(
        kind: TelescopeKind,
        dist: DepthDistribution,
        memory: Budget,
    ) -> Result<Self, BloError> {
        dist.check_for(kind)?;
        if memory == Budget::States(0) {
            return Err(BloError::invalid(
                "memory",
                memory,
                "a telescope needs at least one state",
            ));
        }
        Ok(Telescope {
            kind,
            dist,
            memory,
            adapt: None,
            baseline: None,
        })
    }

    /// Adds baselines (control variates) to the estimate (docs/math.md §10):
    /// ĝ = g_0 + Σ_i b_i + Σ_i w_i (Δ_i − b_i), w_i the weight level i gets
    /// in this draw (0 when not used), b_i the moving average of Δ_i over the
    /// tasks of earlier meta-batches ([`Estimator::observe`], in task order),
    /// zero before the first. Unbiased for any b fixed before the draw; the
    /// variance then depends on the spread of Δ_i − b_i, not on E Δ_i. Every
    /// level is read (one VJP through Φ_0 per level reached). With
    /// [`Telescope::adaptive`] the depth model is fitted to ‖Δ_i − b_i‖².
    ///
    /// ```
    /// # use blo::{Baselines, Budget, DepthDistribution, Depths, Telescope, TelescopeKind};
    /// let d = DepthDistribution::new(vec![4], &Depths::TwoPoint { q: 0.2 })?;
    /// // UFO with a baseline: g_FO + b + (ξ/q)(g_exact − g_FO − b).
    /// let t = Telescope::new(TelescopeKind::SingleSample, d, Budget::States(1))?
    ///     .with_baselines(Baselines::default())?;
    /// assert!(t.baselines().is_none()); // zero until a meta-batch is observed
    /// # Ok::<(), blo::BloError>(())
    /// ```
    ///
    /// # Errors
    /// [`BloError::InvalidHyperparameter`] if the decay ∉ [0, 1).
    pub fn with_baselines(mut self, params: Baselines) -> Result<Self, BloError> {
        check_decay("baseline decay", params.decay)?;
        let m = self.dist.levels().len();
        self.baseline = Some((
            params,
            BaselineState {
                sums: vec![Vec::new(); m],
                counts: vec![0; m],
            },
        ));
        Ok(self)
    }

    /// The baselines b_1, …, b_m the next meta-batch uses (flattened over
    /// θ's tensors), `None` without baselines or before the first sample.
    pub fn baselines(&self) -> Option<Vec<Vec<f64>>> {
        let (params, state) = self.baseline.as_ref()?;
        state.values(params.decay)
    }

    /// Makes the distribution adaptive (module docs), starting from the one given.
    ///
    /// # Errors
    /// [`BloError::InvalidHyperparameter`] if floor ∉ (0, 1] or decay ∉ [0, 1).
    pub fn adaptive(mut self, params: AdaptiveDepths) -> Result<Self, BloError> {
        if !(params.floor.is_finite() && params.floor > 0.0 && params.floor <= 1.0) {
            return Err(BloError::invalid(
                "floor",
                params.floor,
                "must be in (0, 1]",
            ));
        }
        check_decay("decay", params.decay)?;
        let m = self.dist.levels().len();
        self.adapt = Some((
            params,
            DepthMoments {
                d: vec![Ema::default(); m],
                w: Ema::default(),
                plan: None,
            },
        ));
        Ok(self)
    }

    /// The distribution the next meta-batch draws from.
    pub fn distribution(&self) -> &DepthDistribution {
        &self.dist
    }

    /// The estimator kind.
    pub fn kind(&self) -> TelescopeKind {
        self.kind
    }

    /// The adaptive scheme's current model, if it has seen every level and
    /// a plan: c0 and the costs of the plans, W, and C_ii on the diagonal
    /// with the Cauchy–Schwarz bound √(C_ii C_jj) off it.
    pub fn model(&self) -> Option<DepthModel> {
        let (params, mom) = self.adapt.as_ref()?;
        let (r, states) = mom.plan?;
        let b = params.decay;
        let d: Vec<f64> = mom
            .d
            .iter()
            .map(|e| e.get(b))
            .collect::<Option<Vec<f64>>>()?;
        let w = mom.w.get(b)?;
        let m = d.len();
        let (c0, costs) = DepthModel::plan_costs(r, self.dist.levels(), states, true);
        let gram = (0..m * m)
            .map(|ij| {
                let (i, j) = (ij / m, ij % m);
                if i == j {
                    d[i]
                } else {
                    (d[i] * d[j]).sqrt()
                }
            })
            .collect();
        Some(DepthModel { c0, costs, w, gram })
    }

    /// The estimate for a given level I (what [`Estimator::estimate`] returns
    /// after drawing I): one sweep reading g_0 at the turn and g_{k_i} at
    /// each level i ≤ I on the way down.
    ///
    /// # Errors
    /// [`DepthError::LastLevel`] if the last level is not the problem's r;
    /// a budget below one state; a non-finite loss, gradient or cotangent.
    ///
    /// # Panics
    /// If I > m.
    #[track_caller]
    pub fn estimate_at<F: Float, P: Problem<F>>(
        &self,
        problem: &P,
        task: &P::Task,
        theta: &[Tensor<F>],
        level: usize,
    ) -> Result<Estimate<F>, BloError> {
        let levels = self.dist.levels();
        let m = levels.len();
        assert!(level <= m, "telescope: level {level} of {m}");
        let (p, s) = (self.dist.probabilities(), self.dist.survival());
        let mut acc: Vec<Tensor<F>> = Vec::new();
        let mut g0: Vec<Tensor<F>> = Vec::new();
        let mut prev: Vec<Tensor<F>> = Vec::new();
        let mut diff_sq = Vec::with_capacity(level);
        let mut diffs: Vec<Vec<f64>> = Vec::new();
        let base = self.baselines();
        let with_base = self.baseline.is_some();
        let mut plain = true;
        let mut on = |i: usize, g: &[Tensor<F>]| {
            if i == 0 {
                g0 = g.to_vec();
                acc = g.to_vec();
                prev = g.to_vec();
                return;
            }
            // ‖Δ_i‖², and ĝ updated in place: a ← a + w (g_i − g_{i−1}),
            // UFO's `s + w (e − s)` for one level.
            let mut sq = 0.0f64;
            let w = match self.kind {
                TelescopeKind::RussianRoulette => Some(s[i]),
                TelescopeKind::SingleSample => (i == level).then_some(p[i]),
            };
            // A weight of exactly 1 on the first levels keeps g_i itself
            // (UFO returns g_exact at q = 1).
            let plain_here =
                w == Some(1.0) && plain && (self.kind == TelescopeKind::RussianRoulette || i == 1);
            let wf = F::from_f64(1.0 / w.unwrap_or(1.0));
            // With baselines: ‖Δ_i − b_i‖², and Δ_i kept for the next b_i.
            let bi = base.as_ref().map(|b| b[i - 1].as_slice());
            let mut d = Vec::new();
            let mut j = 0;
            for ((a, c), pv) in acc.iter_mut().zip(g).zip(&prev) {
                for ((a, &c), &pv) in a.data_mut().iter_mut().zip(c.data()).zip(pv.data()) {
                    let delta = c.to_f64() - pv.to_f64();
                    sq += (delta - bi.map_or(0.0, |b| b[j])).powi(2);
                    j += 1;
                    if with_base {
                        d.push(delta);
                    }
                    if w.is_some() {
                        if plain_here {
                            *a = c;
                        } else {
                            *a += wf * (c - pv);
                        }
                    }
                }
            }
            if w.is_some() && !plain_here {
                plain = false;
            }
            diff_sq.push(sq);
            if with_base {
                diffs.push(d);
            }
            for (pv, c) in prev.iter_mut().zip(g) {
                pv.data_mut().copy_from_slice(c.data());
            }
        };
        // Per-level reads when the differences are measured (adaptive, or
        // baselines) or when there is one level (both ways cost the same two
        // VJPs, and the per-level arithmetic is UFO's); otherwise the
        // combination alone.
        let per_level = self.adapt.is_some() || with_base || m == 1;
        let weights: Vec<f64> = (0..=m)
            .map(|i| match self.kind {
                _ if i == 0 => 0.0,
                TelescopeKind::RussianRoulette => 1.0 / s[i],
                TelescopeKind::SingleSample if i == level => 1.0 / p[i],
                TelescopeKind::SingleSample => 0.0,
            })
            .collect();
        let reads = if per_level {
            Reads::PerLevel(&mut on)
        } else {
            Reads::Combined(&weights)
        };
        let (mut est, g0_read, states) =
            sweep_levels(problem, task, theta, levels, level, self.memory, reads)?;
        if !per_level {
            acc = std::mem::take(&mut est.grad);
            g0 = g0_read;
        }
        // Baselines: ĝ = g_0 + Σ_i w_i Δ_i + Σ_i (1 − w_i) b_i, w_i the
        // weight level i got in this draw (0 if unused), and the anchor
        // a = g_0 + Σ_i b_i of the W sample.
        let used = |i: usize| match self.kind {
            TelescopeKind::RussianRoulette => i <= level,
            TelescopeKind::SingleSample => i == level,
        };
        let (shift, anchor_shift) = match &base {
            Some(b) => {
                let dim = b[0].len();
                let (mut shift, mut anchor) = (vec![0.0f64; dim], vec![0.0f64; dim]);
                for i in 1..=m {
                    let c = 1.0 - if used(i) { weights[i] } else { 0.0 };
                    for ((x, a), &bv) in shift.iter_mut().zip(&mut anchor).zip(&b[i - 1]) {
                        *x += c * bv;
                        *a += bv;
                    }
                }
                (shift, anchor)
            }
            None => (Vec::new(), Vec::new()),
        };
        let (mut g0sq, mut cross) = (0.0f64, 0.0f64);
        let mut j = 0;
        for (a, z) in acc.iter_mut().zip(&g0) {
            for (a, &z) in a.data_mut().iter_mut().zip(z.data()) {
                let mut anchor = z.to_f64();
                if !shift.is_empty() {
                    *a += F::from_f64(shift[j]);
                    anchor += anchor_shift[j];
                }
                j += 1;
                g0sq += anchor.powi(2);
                cross += anchor * (a.to_f64() - anchor);
            }
        }
        est.grad = acc;
        if level == m {
            est.stats.exact_branches += 1;
        }
        est.stats.telescope = Some(TelescopeSample {
            level,
            diff_sq,
            w: g0sq + 2.0 * cross,
            r: problem.inner_loop().steps,
            states,
            diffs,
        });
        Ok(est)
    }
}

/// How a sweep reads the levels it passes.
enum Reads<'a, F: Float> {
    /// g_{k_i} = ḡ + (∂Φ_0/∂θ)ᵀ ū_φ at every level (one VJP each), handed
    /// to the callback with i (and g_0 with i = 0).
    PerLevel(&'a mut dyn FnMut(usize, &[Tensor<F>])),
    /// Only the combination g_0 + Σ_i w_i Δ_i, with one VJP for g_0 and one
    /// for the weighted sum of the cotangent differences (the VJP is linear
    /// in ū and taken at the same θ: docs/math.md §10); `w[i]` for i = 1..=I.
    Combined(&'a [f64]),
}

/// What [`sweep_levels`] returns: the sweep's estimate, g_0, and the states
/// the budget held.
type SweepOutput<F> = (Estimate<F>, Vec<Tensor<F>>, usize);

/// One sweep of a telescope: draws nothing; runs revolve's plan for the last
/// k_I steps within `memory` and reads the levels up to I as `reads` says.
/// Returns the sweep's estimate (its `grad` the combination for
/// [`Reads::Combined`], empty for [`Reads::PerLevel`]), g_0, and the states
/// the budget held.
fn sweep_levels<F: Float, P: Problem<F>>(
    problem: &P,
    task: &P::Task,
    theta: &[Tensor<F>],
    levels: &[usize],
    level: usize,
    memory: Budget,
    reads: Reads<'_, F>,
) -> Result<SweepOutput<F>, BloError> {
    let r = problem.inner_loop().steps;
    let last = *levels.last().expect("validated: at least one level");
    if last != r {
        return Err(DepthError::LastLevel { last, r }.into());
    }
    let states = budget_states(memory, problem, task, theta)?;
    let k = if level == 0 { 0 } else { levels[level - 1] };
    let plan = cached_truncated_within(r, k, states);
    let mut sw = Sweep::new(problem, task, theta, Target::Outer)?;
    let (sweep, reversal) = plan.split_at_turn();
    sw.run(sweep)?;
    let zeros = || -> Vec<Tensor<F>> { theta.iter().map(|t| Tensor::zeros(t.shape())).collect() };
    let mut g0 = zeros();
    sw.truncated_into(&mut g0);
    // Combined: the running θ part and cotangent of the last level read, and
    // the weighted sums of their differences.
    let cot_phi = |sw: &Sweep<'_, F, P>| sw.cot.as_ref().expect("after the turn").phi.clone();
    let (mut prev_g, mut prev_u) = (sw.g.clone(), cot_phi(&sw));
    let (mut sum_g, mut sum_u) = (
        zeros(),
        prev_u
            .iter()
            .map(|t| Tensor::zeros(t.shape()))
            .collect::<Vec<_>>(),
    );
    let mut g = zeros();
    let mut reads = reads;
    if let Reads::PerLevel(on) = &mut reads {
        on(0, &g0);
    }
    let mut next = 1;
    for a in reversal {
        sw.run(std::slice::from_ref(a))?;
        let Action::Adjoint { step, .. } = *a else {
            continue;
        };
        if next > level || r + 1 - step != levels[next - 1] {
            continue;
        }
        match &mut reads {
            Reads::PerLevel(on) => {
                sw.truncated_into(&mut g);
                on(next, &g);
            }
            Reads::Combined(w) => {
                let w = F::from_f64(w[next]);
                let cot = &sw.cot.as_ref().expect("after the turn").phi;
                for (pairs, (acc, prev)) in [
                    (sw.g.as_slice(), (&mut sum_g, &mut prev_g)),
                    (cot.as_slice(), (&mut sum_u, &mut prev_u)),
                ] {
                    for ((cur, acc), prev) in pairs.iter().zip(acc.iter_mut()).zip(prev.iter_mut())
                    {
                        for ((&c, a), p) in
                            cur.data().iter().zip(acc.data_mut()).zip(prev.data_mut())
                        {
                            *a += w * (c - *p);
                            *p = c;
                        }
                    }
                }
            }
        }
        next += 1;
    }
    debug_assert_eq!(
        next,
        level + 1,
        "the plan reached every level up to {level}"
    );
    let grad = match reads {
        Reads::PerLevel(_) => Vec::new(),
        Reads::Combined(_) => {
            for ((o, z), s) in g.iter_mut().zip(&g0).zip(&sum_g) {
                for ((o, &z), &s) in o.data_mut().iter_mut().zip(z.data()).zip(s.data()) {
                    *o = z + s;
                }
            }
            if level > 0 {
                sw.bufs
                    .ws
                    .initial_state_vjp(problem, task, theta, &sum_u, &mut g);
                sw.stats.gradients += 1;
            }
            g
        }
    };
    Ok((sw.finish_with(grad), g0, states))
}

/// Every g_{k_i}, i = 0..=m, of one task from one full sweep (a telescope at
/// its deepest level), flattened over θ's tensors, with the sweep's counts:
/// what [`crate::estimators::planner`] and the benchmarks measure moments from.
///
/// # Errors
/// As [`Telescope::estimate_at`].
pub fn all_levels<F: Float, P: Problem<F>>(
    problem: &P,
    task: &P::Task,
    theta: &[Tensor<F>],
    levels: &[usize],
    memory: Budget,
) -> Result<(Vec<Vec<f64>>, Estimate<F>), BloError> {
    let mut out = Vec::with_capacity(levels.len() + 1);
    let mut on = |_: usize, g: &[Tensor<F>]| {
        out.push(
            g.iter()
                .flat_map(|t| t.data().iter().map(|x| x.to_f64()))
                .collect(),
        )
    };
    let (est, _, _) = sweep_levels(
        problem,
        task,
        theta,
        levels,
        levels.len(),
        memory,
        Reads::PerLevel(&mut on),
    )?;
    Ok((out, est))
}

impl<F: Float, P: Problem<F>> Estimator<F, P> for Telescope {
    fn estimate(
        &self,
        problem: &P,
        task: &P::Task,
        theta: &[Tensor<F>],
        rng: &mut ChaCha8Rng,
    ) -> Result<Estimate<F>, BloError> {
        let level = self.dist.draw(rng);
        let mut est = self.estimate_at(problem, task, theta, level)?;
        est.stats.coins += 1;
        Ok(est)
    }

    /// Adaptive: pushes each task's measurements, in task order, then
    /// re-solves p ([`optimal_depths`] on [`Telescope::model`]) once every
    /// level has been observed.
    ///
    /// With baselines: first folds each task's Δ_i into b_i's moving
    /// average (task order), so the next meta-batch's b is a function of
    /// earlier meta-batches only.
    fn observe(&mut self, estimates: &[Estimate<F>]) {
        if let Some((params, state)) = self.baseline.as_mut() {
            let b = params.decay;
            for s in estimates.iter().filter_map(|e| e.stats.telescope.as_ref()) {
                for (i, d) in s.diffs.iter().enumerate() {
                    let sum = &mut state.sums[i];
                    if sum.is_empty() {
                        *sum = vec![0.0; d.len()];
                    }
                    for (x, &v) in sum.iter_mut().zip(d) {
                        *x = b * *x + (1.0 - b) * v;
                    }
                    state.counts[i] += 1;
                }
            }
        }
        let Some((params, mom)) = self.adapt.as_mut() else {
            return;
        };
        let b = params.decay;
        for e in estimates {
            let Some(s) = &e.stats.telescope else {
                continue;
            };
            mom.w.push(b, s.w);
            for (d, &x) in mom.d.iter_mut().zip(&s.diff_sq) {
                d.push(b, x);
            }
            mom.plan = Some((s.r, s.states));
        }
        let floor = params.floor;
        if let Some(model) = self.model() {
            if let Ok(d) = optimal_depths(self.kind, &model, self.dist.levels(), floor) {
                self.dist = d;
            }
        }
    }

    fn name(&self) -> String {
        format!(
            "telescope-{}(m={}{})",
            self.kind.label(),
            self.dist.levels().len(),
            if self.adapt.is_some() {
                ", adaptive"
            } else {
                ""
            }
        )
    }

    /// Fixed: `null`. Adaptive: p and the moving averages (m, t) as bit
    /// patterns, the plan (r, states) last seen, and the parameters floor and
    /// decay (a resumed run with other parameters is refused).
    ///
    /// With baselines, a `baseline` entry too: the decay, and per level the
    /// moving average's sum (bit patterns) and its sample count.
    fn save_state(&self) -> serde_json::Value {
        let mut out = match self.adaptive_state() {
            serde_json::Value::Object(o) => o,
            _ => serde_json::Map::new(),
        };
        if let Some((params, st)) = &self.baseline {
            let sums: Vec<Vec<u64>> = st
                .sums
                .iter()
                .map(|v| v.iter().map(|x| x.to_bits()).collect())
                .collect();
            out.insert(
                "baseline".into(),
                serde_json::json!({
                    "decay": params.decay.to_bits(),
                    "sums": sums,
                    "counts": st.counts,
                }),
            );
        }
        if out.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::Value::Object(out)
        }
    }

    /// Restores [`Estimator::save_state`]'s output after checking it: p a
    /// distribution over this estimator's levels under which it is unbiased;
    /// one moving average per level, finite, ≥ 0 for ‖Δ_i‖², zero when
    /// empty; the counters non-increasing in the level (level i is reached
    /// whenever a deeper one is) and at most W's (pushed every estimate);
    /// floor and decay equal to this estimator's. Baselines: present exactly
    /// when this estimator has them, the same decay, one finite sum per level
    /// (all of one length, empty or zero with no samples), the counters
    /// non-increasing in the level. Nothing changes on error.
    fn load_state(&mut self, state: &serde_json::Value) -> Result<(), String> {
        let baseline = match (&self.baseline, state.get("baseline")) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(
                    "telescope state: the checkpoint holds baselines, this estimator has none"
                        .into(),
                )
            }
            (Some(_), None) => return Err("telescope state: missing baseline".into()),
            (Some((params, _)), Some(v)) => Some((*params, self.parse_baseline(*params, v)?)),
        };
        let adaptive = if self.adapt.is_none() && baseline.is_some() {
            match state.as_object() {
                Some(o) if o.len() == 1 => None,
                _ => {
                    return Err(format!(
                    "telescope state: a fixed distribution keeps only its baselines, checkpoint holds {state}"
                ))
                }
            }
        } else {
            let mut rest = state.clone();
            if let Some(o) = rest.as_object_mut() {
                o.remove("baseline");
            }
            self.parse_adaptive(&rest)?
        };
        if let Some((dist, adapt)) = adaptive {
            self.dist = dist;
            self.adapt = Some(adapt);
        }
        if baseline.is_some() {
            self.baseline = baseline;
        }
        Ok(())
    }
}

impl Telescope {
    /// The baselines' state from a checkpoint ([`Estimator::load_state`]).
    fn parse_baseline(
        &self,
        params: Baselines,
        v: &serde_json::Value,
    ) -> Result<BaselineState, String> {
        let m = self.dist.levels().len();
        let bits = |v: &serde_json::Value| {
            v.as_u64().ok_or_else(|| {
                format!("telescope state: baseline value {v} is not a u64 bit pattern")
            })
        };
        let decay = f64::from_bits(bits(
            v.get("decay")
                .ok_or("telescope state: baseline decay missing")?,
        )?);
        if decay.to_bits() != params.decay.to_bits() {
            return Err(format!(
                "telescope state: baseline decay = {decay} in the checkpoint, {} in this estimator",
                params.decay
            ));
        }
        let counts = v
            .get("counts")
            .and_then(|c| c.as_array())
            .filter(|a| a.len() == m)
            .ok_or_else(|| format!("telescope state: baseline counts must hold {m} counters"))?
            .iter()
            .map(bits)
            .collect::<Result<Vec<u64>, String>>()?;
        let sums = v
            .get("sums")
            .and_then(|c| c.as_array())
            .filter(|a| a.len() == m)
            .ok_or_else(|| format!("telescope state: baseline sums must hold {m} vectors"))?
            .iter()
            .map(|s| {
                s.as_array()
                    .ok_or_else(|| format!("telescope state: baseline sum {s} is not an array"))?
                    .iter()
                    .map(|x| bits(x).map(f64::from_bits))
                    .collect::<Result<Vec<f64>, String>>()
            })
            .collect::<Result<Vec<Vec<f64>>, String>>()?;
        let dim = sums.iter().map(Vec::len).max().unwrap_or(0);
        for (i, (s, &t)) in sums.iter().zip(&counts).enumerate() {
            let ok = s.iter().all(|x| x.is_finite())
                && (s.len() == dim || (s.is_empty() && t == 0))
                && (t > 0 || s.iter().all(|&x| x == 0.0));
            if !ok {
                return Err(format!(
                    "telescope state: baseline {i} ({} values, {t} samples): must be finite, {dim} values, and zero with no samples",
                    s.len()
                ));
            }
        }
        if counts.windows(2).any(|c| c[1] > c[0]) {
            return Err(format!(
                "telescope state: baseline sample counters {counts:?}: a level is reached whenever a deeper one is"
            ));
        }
        Ok(BaselineState { sums, counts })
    }

    /// The adaptive distribution's part of [`Estimator::save_state`]
    /// (`null` for a fixed distribution).
    fn adaptive_state(&self) -> serde_json::Value {
        let Some((params, mom)) = &self.adapt else {
            return serde_json::Value::Null;
        };
        let e = |x: &Ema| serde_json::json!([x.m.to_bits(), x.t]);
        serde_json::json!({
            "p": self.dist.probabilities().iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            "d": mom.d.iter().map(e).collect::<Vec<_>>(),
            "w": e(&mom.w),
            "plan": mom.plan,
            "floor": params.floor.to_bits(),
            "decay": params.decay.to_bits(),
        })
    }

    /// The adaptive distribution's part of [`Estimator::load_state`]
    /// (checked, not applied): `None` for a fixed distribution.
    #[allow(clippy::type_complexity)]
    fn parse_adaptive(
        &self,
        state: &serde_json::Value,
    ) -> Result<Option<(DepthDistribution, (AdaptiveDepths, DepthMoments))>, String> {
        let Some((params, _)) = &self.adapt else {
            return if state.is_null() || state.as_object().is_some_and(|o| o.is_empty()) {
                Ok(None)
            } else {
                Err(format!(
                    "fixed telescope keeps no state, checkpoint holds {state}"
                ))
            };
        };
        let params = *params;
        let bits = |v: &serde_json::Value, what: &str| {
            v.as_u64()
                .ok_or_else(|| format!("telescope state: {what} = {v} is not a u64 bit pattern"))
        };
        let ema = |v: &serde_json::Value, name: &str, nonneg: bool| -> Result<Ema, String> {
            let a = v
                .as_array()
                .filter(|a| a.len() == 2)
                .ok_or_else(|| format!("telescope state: malformed {name}"))?;
            let e = Ema {
                m: f64::from_bits(bits(&a[0], name)?),
                t: bits(&a[1], name)?,
            };
            if !e.m.is_finite() || (nonneg && e.m < 0.0) || (e.t == 0 && e.m != 0.0) {
                return Err(format!(
                    "telescope state: {name} moving average = {} over {} samples: must be finite{}, and 0 with no samples",
                    e.m,
                    e.t,
                    if nonneg { ", >= 0" } else { "" }
                ));
            }
            Ok(e)
        };
        for (name, want) in [("floor", params.floor), ("decay", params.decay)] {
            let got = f64::from_bits(bits(
                state
                    .get(name)
                    .ok_or_else(|| format!("telescope state: missing {name}"))?,
                name,
            )?);
            if got.to_bits() != want.to_bits() {
                return Err(format!(
                    "telescope state: {name} = {got} in the checkpoint, {want} in this estimator"
                ));
            }
        }
        let m = self.dist.levels().len();
        let p = state
            .get("p")
            .and_then(|v| v.as_array())
            .ok_or("telescope state: missing p")?
            .iter()
            .map(|v| bits(v, "p").map(f64::from_bits))
            .collect::<Result<Vec<f64>, String>>()?;
        let dist = DepthDistribution::from_table(self.dist.levels().to_vec(), p)
            .and_then(|d| d.check_for(self.kind).map(|()| d))
            .map_err(|e| format!("telescope state: {e}"))?;
        let d = state
            .get("d")
            .and_then(|v| v.as_array())
            .filter(|a| a.len() == m)
            .ok_or_else(|| format!("telescope state: d must hold {m} moving averages"))?
            .iter()
            .enumerate()
            .map(|(i, v)| ema(v, &format!("d[{i}]"), true))
            .collect::<Result<Vec<Ema>, String>>()?;
        let w = ema(
            state.get("w").ok_or("telescope state: missing w")?,
            "w",
            false,
        )?;
        let counts: Vec<u64> = d.iter().map(|e| e.t).collect();
        if counts.windows(2).any(|c| c[1] > c[0]) || counts.first().is_some_and(|&c| c > w.t) {
            return Err(format!(
                "telescope state: sample counters {counts:?} (levels) and {} (W): a level is reached whenever a deeper one is, W every estimate",
                w.t
            ));
        }
        let plan = match state.get("plan") {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(
                serde_json::from_value::<(usize, usize)>(v.clone())
                    .map_err(|e| format!("telescope state: plan {v}: {e}"))?,
            ),
        };
        Ok(Some((dist, (params, DepthMoments { d, w, plan }))))
    }
}
