//! The planner: from a memory budget and a pilot sample of tasks, pick the
//! estimator (first order, UFO, a randomized telescope or exact) and its
//! parameters with the smallest (expected cost) × (variance), and say why.
//!
//! The pilot runs one full telescope sweep per task ([`all_levels`]: g_0, g_1,
//! …, g_r from one sweep within the budget) and measures, over the pilot
//! tasks, V² = E‖g_exact‖², D² = E‖g_exact − g_0‖², W = E‖g_0‖² +
//! 2E⟨g_0, g_exact − g_0⟩, the Gram matrix C_ij = E⟨Δ_i, Δ_j⟩ of the depth
//! differences and ‖ḡ‖², ḡ the mean of g_exact. Costs are those of the plans
//! that fit the budget (docs/math.md §8, §9). The variance of an unbiased
//! estimator over tasks and draws is its second moment minus ‖ḡ‖²; each
//! candidate's parameters are chosen for the smallest cost × variance:
//!
//! | candidate | expected cost | second moment |
//! |---|---|---|
//! | exact, binomial plan in s states | r + U(r, s) + 2 + 2r | V² |
//! | UFO, q* of docs/math.md §4 | c0 + q·(U(r, s) + 2r + 1) | W + D²/q |
//! | telescopes, [`optimal_depths`] over every depth and over doubling depths | [`DepthModel::expected_cost`] | [`DepthModel::second_moment`] |
//! | first order (biased) | r + 2 | E‖g_0‖², eligible only if D² ≤ tolerance·V² |
//! | UFO and the telescopes with baselines b_i = E Δ_i (docs/math.md §10) | as above, every level read | W_b + the moments of Δ_i − b_i |
//!
//! The figures are in sample: a candidate's parameters are fitted and scored
//! on the same pilot tasks. [`Candidate::held_out`] adds the figure out of
//! sample for the fitted candidates (two-fold cross-fitting over the even-
//! and odd-numbered pilot tasks), so a report shows how much of a fitted
//! candidate's advantage is fitted noise.

use serde::{Deserialize, Serialize};
use tape::{Float, Tensor};

use super::debiased::{optimal_q, Debiased, QChoice};
use super::exact::Exact;
use super::first_order::FirstOrder;
use super::telescope::{
    all_levels, doubling_depths, every_depth, optimal_depths, Baselines, DepthDistribution,
    DepthModel, Telescope, TelescopeKind,
};
use crate::engine::plan::{truncated_within, Budget};
use crate::engine::run::budget_states;
use crate::error::BloError;
use crate::estimators::Estimator;
use crate::problem::Problem;

/// An estimator with its parameters, as the planner chooses it (serializable,
/// so a training run can store its choice).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Choice {
    /// [`FirstOrder`].
    FirstOrder,
    /// [`Exact`] within `states`.
    Exact {
        /// States held.
        states: usize,
    },
    /// UFO-BLO with a fixed q, the exact branch within `states`.
    Ufo {
        /// The exact-branch probability.
        q: f64,
        /// States held.
        states: usize,
    },
    /// A [`Telescope`].
    Telescope {
        /// Single sample or roulette.
        kind: TelescopeKind,
        /// The levels k_1 < … < k_m.
        levels: Vec<usize>,
        /// p(0), …, p(m).
        p: Vec<f64>,
        /// States held.
        states: usize,
        /// Baselines (control variates, [`Telescope::with_baselines`] with
        /// the default decay), learnt during training from b = 0. With one
        /// level and p = (1 − q, q) this is UFO with a baseline.
        #[serde(default)]
        baseline: bool,
    },
}

impl Choice {
    /// The estimator this choice names.
    ///
    /// # Errors
    /// An invalid parameter (a q outside (0, 1], a table that is not a
    /// distribution the kind can use), e.g. from a hand-edited checkpoint.
    pub fn build<F: Float, P: Problem<F>>(&self) -> Result<Box<dyn Estimator<F, P>>, BloError> {
        self.validate()?;
        Ok(match self {
            Choice::FirstOrder => Box::new(FirstOrder::new()),
            Choice::Exact { states } => Box::new(Exact::with_budget(Budget::States(*states))),
            Choice::Ufo { q, states } => Box::new(Debiased::new(
                FirstOrder::new(),
                Exact::with_budget(Budget::States(*states)),
                QChoice::Fixed(*q),
            )?),
            Choice::Telescope {
                kind,
                levels,
                p,
                states,
                baseline,
            } => {
                let t = Telescope::new(
                    *kind,
                    DepthDistribution::from_table(levels.clone(), p.clone())?,
                    Budget::States(*states),
                )?;
                Box::new(if *baseline {
                    t.with_baselines(Baselines::default())?
                } else {
                    t
                })
            }
        })
    }
}

impl Choice {
    /// Checks the parameters [`Choice::build`] would refuse: a q outside
    /// (0, 1], a depth table that is not a distribution over its levels or
    /// under which its kind is biased, a budget of 0 states.
    ///
    /// # Errors
    /// [`BloError::InvalidHyperparameter`] or [`BloError::Depths`] naming the value.
    pub fn validate(&self) -> Result<(), BloError> {
        let states = match self {
            Choice::FirstOrder => return Ok(()),
            Choice::Exact { states } => *states,
            Choice::Ufo { q, states } => {
                if !(q.is_finite() && *q > 0.0 && *q <= 1.0) {
                    return Err(BloError::invalid("q", q, "must be in (0, 1]"));
                }
                *states
            }
            Choice::Telescope {
                kind,
                levels,
                p,
                states,
                ..
            } => {
                DepthDistribution::from_table(levels.clone(), p.clone())?.check_for(*kind)?;
                *states
            }
        };
        if states == 0 {
            return Err(BloError::invalid("states", 0, "at least one state"));
        }
        Ok(())
    }
}

/// One candidate the planner compared.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Candidate {
    /// A readable name.
    pub name: String,
    /// The estimator and its parameters.
    pub choice: Choice,
    /// Expected cost per estimate (gradient units, docs/math.md §8).
    pub cost: f64,
    /// E‖ĝ‖² over the pilot tasks and the draws.
    pub second_moment: f64,
    /// E‖ĝ − ḡ‖² = second moment − ‖ḡ‖².
    pub variance: f64,
    /// cost × variance, the criterion.
    pub figure: f64,
    /// Whether it may be chosen (unbiased, or first order within tolerance).
    pub eligible: bool,
    /// The figure out of sample, for candidates whose parameters the planner
    /// fits (UFO's q, the telescopes' depth tables): the pilot tasks are cut
    /// into the even- and odd-numbered halves, the parameters fitted on one
    /// half and cost × variance scored on the other, and the two scores
    /// averaged (two-fold cross-fitting). `None` for fixed candidates (first
    /// order, exact) and with fewer than 4 pilot tasks (a half of one task has
    /// no spread over tasks: its variance is rounding). The planner chooses
    /// by `figure`; this says how much of a fitted candidate's advantage
    /// survives on tasks it was not fitted to.
    #[serde(default)]
    pub held_out: Option<f64>,
}

/// The planner's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannerParams {
    /// First order is eligible when D² ≤ `fo_tolerance`·V² (default 0: only
    /// if it is exact on the pilot tasks).
    pub fo_tolerance: f64,
    /// The least probability mass on corrections (UFO's q_min, the
    /// telescopes' floor; default 0.05).
    pub floor: f64,
}

impl Default for PlannerParams {
    fn default() -> Self {
        PlannerParams {
            fo_tolerance: 0.0,
            floor: 0.05,
        }
    }
}

/// What the planner measured, compared and chose.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannerReport {
    /// The number of inner steps.
    pub r: usize,
    /// States the budget holds.
    pub states: usize,
    /// Pilot tasks.
    pub tasks: usize,
    /// V² = E‖g_exact‖².
    pub v2: f64,
    /// D² = E‖g_exact − g_0‖².
    pub d2: f64,
    /// ‖ḡ‖², ḡ = E g_exact.
    pub mean_sq: f64,
    /// ‖E(g_exact − g_0)‖²: what a constant baseline removes from D²
    /// (E‖g_exact − g_0 − b‖² = D² − this at b = E(g_exact − g_0)).
    #[serde(default)]
    pub mean_diff_sq: f64,
    /// E‖Δ_k‖², k = 1..=r (the per-depth differences).
    pub depth_diff_sq: Vec<f64>,
    /// Every candidate, in the order compared.
    pub candidates: Vec<Candidate>,
    /// Index of the chosen candidate: the smallest cost × variance among the
    /// eligible, the first listed on a tie (within 1e-9).
    pub chosen: usize,
}

impl PlannerReport {
    /// The chosen candidate.
    pub fn choice(&self) -> &Candidate {
        &self.candidates[self.chosen]
    }

    /// The candidate with the smallest figure among those whose name starts
    /// with `prefix` (`"UFO"`, `"telescope"`, `"exact"`…), eligible or not.
    pub fn best(&self, prefix: &str) -> Option<&Candidate> {
        self.candidates
            .iter()
            .filter(|c| c.name.starts_with(prefix))
            .min_by(|a, b| a.figure.total_cmp(&b.figure))
    }
}

impl std::fmt::Display for PlannerReport {
    /// The measured moments, then one line per candidate (why: the figures
    /// compared), the choice marked.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "planner: r = {}, {} states, {} pilot tasks: V² = {:.4e}, D² = {:.4e}, ‖ḡ‖² = {:.4e}, ‖E(g_exact − g_0)‖² = {:.4e}",
            self.r, self.states, self.tasks, self.v2, self.d2, self.mean_sq, self.mean_diff_sq
        )?;
        let shown: Vec<String> = std::iter::successors(Some(1usize), |k| Some(k * 2))
            .take_while(|&k| k < self.r)
            .chain((self.r > 0).then_some(self.r))
            .map(|k| format!("{k}: {:.3e}", self.depth_diff_sq[k - 1]))
            .collect();
        writeln!(f, "  E‖g_k − g_(k−1)‖² at depth {}", shown.join(", "))?;
        writeln!(
            f,
            "  {:<40} {:>10} {:>12} {:>12} {:>12} {:>12}",
            "candidate", "cost", "2nd moment", "variance", "cost×var", "held out"
        )?;
        for (i, c) in self.candidates.iter().enumerate() {
            writeln!(
                f,
                "{} {:<40} {:>10.1} {:>12.4e} {:>12.4e} {:>12.4e} {:>12}{}",
                if i == self.chosen { "*" } else { " " },
                c.name,
                c.cost,
                c.second_moment,
                c.variance,
                c.figure,
                c.held_out.map_or("–".into(), |h| format!("{h:.4e}")),
                if c.eligible {
                    ""
                } else {
                    "  (biased: not eligible)"
                }
            )?;
        }
        Ok(())
    }
}

/// Per-task measurements, summed over a set of pilot tasks.
#[derive(Default)]
struct Sums {
    n: usize,
    v2: f64,
    d2: f64,
    w: f64,
    g0sq: f64,
    gram: Vec<f64>,
    mean: Vec<f64>,
    /// Σ over tasks of Δ_i, per level.
    diffs: Vec<Vec<f64>>,
}

impl Sums {
    /// Adds one task's levels `g` = (g_0, …, g_m).
    fn add(&mut self, g: &[Vec<f64>]) {
        let m = g.len() - 1;
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        let sub = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x - y).collect::<Vec<_>>();
        let (g0, gr) = (&g[0], &g[m]);
        let d = sub(gr, g0);
        self.n += 1;
        self.v2 += dot(gr, gr);
        self.d2 += dot(&d, &d);
        self.g0sq += dot(g0, g0);
        self.w += dot(g0, g0) + 2.0 * dot(g0, &d);
        if self.mean.is_empty() {
            self.mean = vec![0.0; gr.len()];
            self.gram = vec![0.0; m * m];
        }
        self.mean.iter_mut().zip(gr).for_each(|(a, b)| *a += b);
        let diffs: Vec<Vec<f64>> = (1..=m).map(|i| sub(&g[i], &g[i - 1])).collect();
        if self.diffs.is_empty() {
            self.diffs = vec![vec![0.0; gr.len()]; m];
        }
        for (s, d) in self.diffs.iter_mut().zip(&diffs) {
            s.iter_mut().zip(d).for_each(|(a, b)| *a += b);
        }

        for i in 0..m {
            for j in i..m {
                let c = dot(&diffs[i], &diffs[j]);
                self.gram[i * m + j] += c;
                if j != i {
                    self.gram[j * m + i] += c;
                }
            }
        }
    }

    /// The means over the tasks added.
    fn moments(&self) -> Moments {
        let n = self.n as f64;
        Moments {
            v2: self.v2 / n,
            d2: self.d2 / n,
            w: self.w / n,
            g0sq: self.g0sq / n,
            mean_sq: self.mean.iter().map(|x| (x / n).powi(2)).sum::<f64>(),
            gram: self.gram.iter().map(|x| x / n).collect(),
            diff_mean: self
                .diffs
                .iter()
                .map(|d| d.iter().map(|x| x / n).collect())
                .collect(),
        }
    }
}

/// V², D², W = E‖g_0‖² + 2E⟨g_0, g_exact − g_0⟩, E‖g_0‖², ‖ḡ‖² and the Gram matrix of the depth differences
/// over a set of pilot tasks (module docs).
struct Moments {
    v2: f64,
    d2: f64,
    w: f64,
    g0sq: f64,
    mean_sq: f64,
    gram: Vec<f64>,
    /// μ_i = E Δ_i per level (the baselines fitted on these tasks).
    diff_mean: Vec<Vec<f64>>,
}

impl Moments {
    /// The Gram matrix of Δ_i − b_i over these tasks for baselines `b`
    /// (fixed vectors, one per level; docs/math.md §10):
    /// E⟨Δ_i − b_i, Δ_j − b_j⟩ = C_ij − ⟨b_i, μ_j⟩ − ⟨μ_i, b_j⟩ + ⟨b_i, b_j⟩.
    /// Its sum is E‖g_exact − g_0 − Σ_i b_i‖², and W_b = V² − that sum.
    fn centered(&self, b: &[Vec<f64>]) -> Vec<f64> {
        let m = b.len();
        let dot = |a: &[f64], c: &[f64]| a.iter().zip(c).map(|(x, y)| x * y).sum::<f64>();
        let bm: Vec<f64> = (0..m * m)
            .map(|ij| dot(&b[ij / m], &self.diff_mean[ij % m]))
            .collect();
        let mut out = vec![0.0; m * m];
        for i in 0..m {
            for j in i..m {
                let c = self.gram[i * m + j] - bm[i * m + j] - bm[j * m + i] + dot(&b[i], &b[j]);
                out[i * m + j] = c;
                out[j * m + i] = c;
            }
        }
        out
    }
}

/// How a fitted candidate's parameters are chosen and scored: `fit` picks
/// the parameters from one set of moments, `score` returns (cost, variance)
/// of those parameters under another.
trait Fitted {
    type Params;
    fn fit(&self, on: &Moments) -> Result<Self::Params, BloError>;
    fn score(&self, params: &Self::Params, on: &Moments) -> (f64, f64);

    /// The two-fold cross-fitted figure: fitted on each half, scored on the
    /// other, averaged (`Candidate::held_out`).
    fn held_out(&self, halves: Option<&[Moments; 2]>) -> Result<Option<f64>, BloError> {
        let Some([a, b]) = halves else {
            return Ok(None);
        };
        let mut total = 0.0;
        for (fit_on, score_on) in [(a, b), (b, a)] {
            let (cost, var) = self.score(&self.fit(fit_on)?, score_on);
            total += cost * var;
        }
        Ok(Some(total / 2.0))
    }
}

/// The baselines a candidate fits on a set of tasks (their mean depth
/// differences) when it uses them, and the moments it is scored by under
/// baselines `b`: the Gram matrix of Δ_i − b_i and W_b − ‖ḡ‖²
/// (`None`: the plain Gram matrix and W − ‖ḡ‖²).
fn fit_baselines(use_them: bool, on: &Moments) -> Option<Vec<Vec<f64>>> {
    use_them.then(|| on.diff_mean.clone())
}

fn scored_moments(on: &Moments, b: Option<&Vec<Vec<f64>>>) -> (Vec<f64>, f64) {
    match b {
        None => (on.gram.clone(), on.w - on.mean_sq),
        Some(b) => {
            let gram = on.centered(b);
            let e2: f64 = gram.iter().sum();
            (gram, on.v2 - e2 - on.mean_sq)
        }
    }
}

/// UFO at the q* of docs/math.md §4; with a baseline b (the mean of
/// g_exact − g_0 on the fitting tasks), g_0 + b + (ξ/q)(g_exact − g_0 − b):
/// D² becomes E‖g_exact − g_0 − b‖² and W becomes V² − that.
struct UfoFit {
    c0: f64,
    c_rnd: f64,
    floor: f64,
    baseline: bool,
}

impl UfoFit {
    /// D² (with a baseline b: E‖g_exact − g_0 − b‖²) on `on`.
    fn d2(&self, on: &Moments, b: Option<&Vec<Vec<f64>>>) -> f64 {
        match b {
            None => on.d2,
            Some(b) => on.centered(b).iter().sum(),
        }
    }
}

impl Fitted for UfoFit {
    type Params = (f64, Option<Vec<Vec<f64>>>);
    fn fit(&self, on: &Moments) -> Result<Self::Params, BloError> {
        let b = fit_baselines(self.baseline, on);
        let d2 = self.d2(on, b.as_ref());
        // V² − ‖ḡ‖² in place of V² (W = V² − D² is shifted by the constant ‖ḡ‖²).
        let q = optimal_q(self.c0, self.c_rnd, on.v2 - on.mean_sq, d2, self.floor);
        Ok((q, b))
    }
    fn score(&self, (q, b): &Self::Params, on: &Moments) -> (f64, f64) {
        let cost = self.c0 + q * self.c_rnd;
        match b {
            None => (cost, on.w + on.d2 / q - on.mean_sq),
            Some(b) => {
                let d2 = self.d2(on, Some(b));
                (cost, on.v2 - d2 + d2 / q - on.mean_sq)
            }
        }
    }
}

/// A telescope of one kind over fixed levels at [`optimal_depths`], with or
/// without baselines (the mean depth differences of the fitting tasks).
struct TelescopeFit<'a> {
    kind: TelescopeKind,
    levels: &'a [usize],
    r: usize,
    states: usize,
    floor: f64,
    baseline: bool,
}

impl TelescopeFit<'_> {
    fn model(&self, on: &Moments, b: Option<&Vec<Vec<f64>>>) -> DepthModel {
        let (gram, w) = scored_moments(on, b);
        // Baselines read every level (one VJP each), as one level does.
        let per_level = self.baseline || self.levels.len() == 1;
        coarse_model(self.r, self.states, &gram, w, self.levels, per_level)
    }
}

impl Fitted for TelescopeFit<'_> {
    type Params = (DepthDistribution, Option<Vec<Vec<f64>>>);
    fn fit(&self, on: &Moments) -> Result<Self::Params, BloError> {
        let b = fit_baselines(self.baseline, on);
        let d = optimal_depths(
            self.kind,
            &self.model(on, b.as_ref()),
            self.levels,
            self.floor,
        )?;
        Ok((d, b))
    }
    fn score(&self, (d, b): &Self::Params, on: &Moments) -> (f64, f64) {
        let model = self.model(on, b.as_ref());
        (
            model.expected_cost(d.probabilities()),
            model.second_moment(self.kind, d),
        )
    }
}

/// Measures the pilot `tasks` at θ within `budget` and picks the estimator
/// (module docs). Tasks are measured in order (deterministic). Each fitted
/// candidate also gets its cross-fitted figure ([`Candidate::held_out`]).
///
/// # Errors
/// No tasks; a budget below one state; any error of a sweep.
pub fn plan_estimator<F: Float, P: Problem<F>>(
    problem: &P,
    tasks: &[P::Task],
    theta: &[Tensor<F>],
    budget: Budget,
    params: &PlannerParams,
) -> Result<PlannerReport, BloError> {
    let first = tasks
        .first()
        .ok_or_else(|| BloError::invalid("tasks", 0, "the planner needs pilot tasks"))?;
    let r = problem.inner_loop().steps;
    let states = budget_states(budget, problem, first, theta)?;
    let levels = every_depth(r);
    let m = r;
    // All tasks, then the even- and odd-numbered halves.
    let mut sums: [Sums; 3] = Default::default();
    for (i, task) in tasks.iter().enumerate() {
        let (g, _) = all_levels(problem, task, theta, &levels, Budget::States(states))?;
        sums[0].add(&g);
        sums[1 + i % 2].add(&g);
    }
    let all = sums[0].moments();
    let halves = (tasks.len() >= 4).then(|| [sums[1].moments(), sums[2].moments()]);
    let halves = halves.as_ref();
    let mean_sq = all.mean_sq;
    let mut candidates = Vec::new();
    let mut push = |name: String,
                    choice: Choice,
                    cost: f64,
                    second_moment: f64,
                    eligible,
                    held_out: Option<f64>| {
        let variance = second_moment - mean_sq;
        candidates.push(Candidate {
            name,
            choice,
            cost,
            second_moment,
            variance,
            figure: cost * variance,
            eligible,
            held_out,
        });
    };
    let c0 = (r + 2) as f64;
    // The exact branch: revolve's plan in `states` (what reaching depth r
    // adds to the first-order rollout, its VJP included).
    let c_rnd = (truncated_within(r, r, states).forward_steps() - r + 2 * r + 1) as f64;
    push(
        "first order".into(),
        Choice::FirstOrder,
        c0,
        all.g0sq,
        all.d2 <= params.fo_tolerance * all.v2,
        None,
    );
    push(
        format!("exact ({states} states)"),
        Choice::Exact { states },
        // Alone, exact reads no first-order estimate: one VJP fewer.
        c0 + c_rnd - 1.0,
        all.v2,
        true,
        None,
    );
    // Without and with baselines (constant: the mean depth differences).
    let bases = [(false, ""), (true, " + baselines")];
    for (baseline, _) in bases {
        let ufo = UfoFit {
            c0,
            c_rnd,
            floor: params.floor,
            baseline,
        };
        let fitted = ufo.fit(&all)?;
        let q = fitted.0;
        let (cost, var) = ufo.score(&fitted, &all);
        if !baseline {
            push(
                format!("UFO q = {q:.4}"),
                Choice::Ufo { q, states },
                cost,
                all.w + all.d2 / q,
                true,
                ufo.held_out(halves)?,
            );
        } else {
            // UFO with a baseline is the one-level telescope with UFO's coin.
            push(
                format!("UFO + baseline q = {q:.4}"),
                Choice::Telescope {
                    kind: TelescopeKind::SingleSample,
                    levels: vec![r],
                    p: vec![1.0 - q, q],
                    states,
                    baseline: true,
                },
                cost,
                var + mean_sq,
                true,
                ufo.held_out(halves)?,
            );
        }
    }
    for (baseline, suffix) in bases {
        for (lname, lv) in [
            ("every depth", every_depth(r)),
            ("doubling", doubling_depths(r)),
        ] {
            for kind in [TelescopeKind::SingleSample, TelescopeKind::RussianRoulette] {
                let fit = TelescopeFit {
                    kind,
                    levels: &lv,
                    r,
                    states,
                    floor: params.floor,
                    baseline,
                };
                let fitted = fit.fit(&all)?;
                let (cost, var) = fit.score(&fitted, &all);
                let d = fitted.0;
                push(
                    format!("telescope {kind:?}, {lname}{suffix}"),
                    Choice::Telescope {
                        kind,
                        levels: lv.clone(),
                        p: d.probabilities().to_vec(),
                        states,
                        baseline,
                    },
                    cost,
                    var + mean_sq,
                    true,
                    fit.held_out(halves)?,
                );
            }
        }
    }
    let chosen = pick(&candidates).expect("exact is always eligible");
    Ok(PlannerReport {
        r,
        states,
        tasks: tasks.len(),
        v2: all.v2,
        d2: all.d2,
        mean_sq,
        mean_diff_sq: {
            let mut total = vec![0.0; all.diff_mean.first().map_or(0, Vec::len)];
            for d in &all.diff_mean {
                total.iter_mut().zip(d).for_each(|(t, x)| *t += x);
            }
            total.iter().map(|x| x * x).sum()
        },
        depth_diff_sq: (0..m).map(|i| all.gram[i * m + i]).collect(),
        candidates,
        chosen,
    })
}

/// The planner's rule: the smallest figure among the eligible; within 1e-9
/// of it, the simplest (the first listed: first order, exact, UFO, then the
/// telescopes). `None` if none is eligible.
fn pick(candidates: &[Candidate]) -> Option<usize> {
    let best = candidates
        .iter()
        .filter(|c| c.eligible)
        .map(|c| c.figure)
        .fold(f64::INFINITY, f64::min);
    candidates
        .iter()
        .position(|c| c.eligible && c.figure <= best + 1e-9 * best.abs())
}

/// A field of a stored [`PlannerReport`] that no planner run can have
/// written ([`PlannerReport::check`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportFault {
    /// The field (dotted, e.g. `chosen` or `candidates.2.figure`).
    pub field: String,
    /// The value found.
    pub value: String,
    /// Why it cannot be right.
    pub reason: String,
}

impl PlannerReport {
    /// Checks that this report, read back from a checkpoint, is one
    /// [`plan_estimator`] can have written for a problem of `r` inner steps:
    /// r, at least one state and one pilot task; E‖Δ_k‖² one finite value
    /// ≥ 0 per depth; every candidate's figures finite, its variance its
    /// second moment − ‖ḡ‖² and its figure cost × variance (bit for bit, as
    /// computed); `chosen` the candidate the planner's rule picks from these
    /// figures; and the chosen estimator buildable within the report's states
    /// (q ∈ (0, 1], a depth table that is a distribution under which its kind
    /// is unbiased, levels ending at r).
    ///
    /// # Errors
    /// The first [`ReportFault`] found.
    pub fn check(&self, r: usize) -> Result<(), ReportFault> {
        let fault = |field: &str, value: String, reason: String| {
            Err(ReportFault {
                field: field.into(),
                value,
                reason,
            })
        };
        if self.r != r {
            return fault(
                "r",
                self.r.to_string(),
                format!("this run takes r = {r} inner steps"),
            );
        }
        if self.states == 0 || self.tasks == 0 {
            return fault(
                if self.states == 0 { "states" } else { "tasks" },
                "0".into(),
                "the planner holds at least one state and measures at least one pilot task".into(),
            );
        }
        if self.depth_diff_sq.len() != r {
            return fault(
                "depth_diff_sq",
                format!("{} values", self.depth_diff_sq.len()),
                format!("one per depth 1..={r}"),
            );
        }
        let finite = |x: f64| x.is_finite();
        if let Some((k, x)) = self
            .depth_diff_sq
            .iter()
            .enumerate()
            .find(|(_, x)| !(finite(**x) && **x >= 0.0))
        {
            return fault(
                &format!("depth_diff_sq.{k}"),
                x.to_string(),
                "a mean square: finite and >= 0".into(),
            );
        }
        for (name, x) in [
            ("v2", self.v2),
            ("d2", self.d2),
            ("mean_sq", self.mean_sq),
            ("mean_diff_sq", self.mean_diff_sq),
        ] {
            if !(finite(x) && x >= 0.0) {
                return fault(name, x.to_string(), "a mean square: finite and >= 0".into());
            }
        }
        for (i, c) in self.candidates.iter().enumerate() {
            let at = |f: &str| format!("candidates.{i}.{f}");
            if !(finite(c.cost) && c.cost > 0.0) {
                return fault(&at("cost"), c.cost.to_string(), "finite and > 0".into());
            }
            if (c.second_moment - self.mean_sq).to_bits() != c.variance.to_bits() {
                return fault(
                    &at("variance"),
                    c.variance.to_string(),
                    format!(
                        "the planner writes second moment − ‖ḡ‖² = {}",
                        c.second_moment - self.mean_sq
                    ),
                );
            }
            if let Some(h) = c.held_out.filter(|h| !finite(*h)) {
                return fault(&at("held_out"), h.to_string(), "finite".into());
            }
            if (c.cost * c.variance).to_bits() != c.figure.to_bits() || !finite(c.figure) {
                return fault(
                    &at("figure"),
                    c.figure.to_string(),
                    format!(
                        "the planner writes cost × variance = {}",
                        c.cost * c.variance
                    ),
                );
            }
        }
        match pick(&self.candidates) {
            Some(i) if i == self.chosen => {}
            want => {
                return fault(
                    "chosen",
                    self.chosen.to_string(),
                    match want {
                        Some(i) => format!(
                            "the planner's rule picks candidate {i} ({}) from these figures",
                            self.candidates[i].name
                        ),
                        None => "no candidate is eligible".into(),
                    },
                )
            }
        }
        let choice = &self.candidates[self.chosen].choice;
        let states = match choice {
            Choice::FirstOrder => None,
            Choice::Exact { states } | Choice::Ufo { states, .. } => Some(*states),
            Choice::Telescope { states, levels, .. } => {
                if levels.last() != Some(&r) {
                    return fault(
                        &format!("candidates.{}.choice.levels", self.chosen),
                        format!("{levels:?}"),
                        format!("the last level must be r = {r}"),
                    );
                }
                Some(*states)
            }
        };
        if let Some(s) = states.filter(|&s| s != self.states) {
            return fault(
                &format!("candidates.{}.choice.states", self.chosen),
                s.to_string(),
                format!("the report's budget holds {} states", self.states),
            );
        }
        if let Err(e) = choice.validate() {
            return fault(
                &format!("candidates.{}.choice", self.chosen),
                format!("{choice:?}"),
                e.to_string(),
            );
        }
        Ok(())
    }
}

/// What a planned training run asks of the planner
/// ([`crate::train::Trainer::planned`]): the memory budget, the number of
/// pilot tasks and the planner's parameters. These are settings of the run
/// ([`PlanSpec::settings`]): a run resumed with other values is refused.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanSpec {
    /// The memory budget the estimator's plans must fit.
    pub budget: Budget,
    /// Pilot tasks measured at θ₀ (at least 1).
    pub pilot_tasks: usize,
    /// The planner's parameters.
    pub params: PlannerParams,
}

impl PlanSpec {
    /// The spec with the default [`PlannerParams`].
    pub fn new(budget: Budget, pilot_tasks: usize) -> Self {
        PlanSpec {
            budget,
            pilot_tasks,
            params: PlannerParams::default(),
        }
    }

    /// The settings a resumed run must share (`planner.budget`,
    /// `planner.pilot_tasks`, `planner.floor`, `planner.fo_tolerance`), values
    /// as text (floats in their shortest round-trip form).
    pub fn settings(&self) -> [(&'static str, String); 4] {
        [
            ("planner.budget", self.budget.to_string()),
            ("planner.pilot_tasks", self.pilot_tasks.to_string()),
            ("planner.floor", format!("{:?}", self.params.floor)),
            (
                "planner.fo_tolerance",
                format!("{:?}", self.params.fo_tolerance),
            ),
        ]
    }
}

/// The model of a telescope over the coarse `levels` from the Gram matrix of
/// the per-depth differences (`fine`, r × r): a coarse difference is the sum
/// of the fine ones between its levels, so its Gram entries are block sums
/// (with baselines too: a coarse baseline is the sum of the fine ones).
/// `per_level`: the costs of an estimator that reads every level
/// ([`DepthModel::plan_costs`]).
pub fn coarse_model(
    r: usize,
    states: usize,
    fine: &[f64],
    w: f64,
    levels: &[usize],
    per_level: bool,
) -> DepthModel {
    let m = levels.len();
    let block = |i: usize| {
        let lo = if i == 0 { 0 } else { levels[i - 1] };
        lo..levels[i]
    };
    let gram = (0..m * m)
        .map(|ij| {
            let (bi, bj) = (block(ij / m), block(ij % m));
            bi.flat_map(|a| bj.clone().map(move |b| (a, b)))
                .map(|(a, b)| fine[a * r + b])
                .sum()
        })
        .collect();
    let (c0, costs) = DepthModel::plan_costs(r, levels, states, per_level);
    DepthModel { c0, costs, w, gram }
}
