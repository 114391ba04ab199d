//! The paper's one-dimensional counterexample: first-order MAML (FO-BLO)
//! converges to the wrong point (docs/math.md §6).
//!
//! Two tasks, each drawn with probability ½. Task i's inner and outer loss is
//! the same "Huber-like" function f_i centred at c_i = b_i/a_i. With
//! z = |φ − c_i|:
//!
//! | zone | f_i | f_i'' |
//! |---|---|---|
//! | z ≤ A | a z²/2 | a |
//! | A < z ≤ A+1 | −a(z−A)³/6 + a(z−A)²/2 + aAz − aA²/2 | a(1 + A − z) |
//! | z > A+1 | (a/2 + aA)z − a/6 − aA²/2 − aA/2 | 0 |
//!
//! The inner loop is r steps of SGD from φ_0 = θ: φ_j = φ_{j−1} − α f_i'(φ_{j−1}),
//! and F(θ) = ½ Σ_i f_i(φ_r^i(θ)). Defaults: r = 10, α = 0.1, a = (0.5, 1.5),
//! b_1 = 0, D = 0.06 and, with p_i = (1 − α a_i)^r,
//! b_2 = 2√(2D) / |(a_1p_1² + a_2p_2²)p_2/(a_1p_1 + a_2p_2) − p_2²| ≈ 17.395,
//! A = |b_1/a_1 − b_2/a_2| + 1.
//!
//! For any b_1, [`Counterexample::from_d`] places the second centre at
//! c_2 = c_1 + Δ with Δ = 2√(2D)(a_1p_1 + a_2p_2) / (a_1a_2p_1p_2|p_1 − p_2|),
//! so D keeps one meaning across the family: ½F′(θ_FO)² = D, the squared
//! gradient norm (halved) at FO's fixed point (docs/math.md §6). With b_1 = 0
//! this is the b_2 above.
//!
//! [`CounterexampleProblem`] is the family as a [`blo::Problem`], ready for
//! any estimator.
//!
//! ```
//! use models::Counterexample;
//! let ce = Counterexample::paper();
//! // FO's fixed point is not stationary for F: |F'(θ_FO)| = √(2D).
//! let g = ce.hypergradient(ce.theta_fo());
//! assert!((g.abs() - (2.0 * 0.06f64).sqrt()).abs() < 1e-9);
//! assert!(ce.hypergradient(ce.theta_star()).abs() < 1e-12);
//! ```

use blo::{BloError, InnerLoop, Problem};
use tape::{Real, Tape, Var};

/// The counterexample's constants; every field is settable.
#[derive(Clone, Debug, PartialEq)]
pub struct Counterexample {
    /// Curvatures a_1, a_2.
    pub a: [f64; 2],
    /// Offsets b_1, b_2 (centres c_i = b_i/a_i).
    pub b: [f64; 2],
    /// Width A of the quadratic zone.
    pub big_a: f64,
    /// Inner steps r.
    pub r: usize,
    /// Inner step size α.
    pub alpha: f64,
}

impl Default for Counterexample {
    fn default() -> Self {
        Self::paper()
    }
}

impl Counterexample {
    /// The paper's constants: a = (0.5, 1.5), b_1 = 0, D = 0.06, r = 10, α = 0.1.
    pub fn paper() -> Self {
        Self::from_d([0.5, 1.5], 0.0, 0.06, 10, 0.1)
    }

    /// The family member with curvatures `a`, first offset `b1` (c_1 = b_1/a_1),
    /// gap `d` = D, `r` steps of size `alpha`. The second centre is
    /// c_2 = c_1 + Δ, Δ = 2√(2D)(a_1p_1 + a_2p_2)/(a_1a_2p_1p_2|p_1 − p_2|),
    /// so that ½F′(θ_FO)² = D for every b_1 (docs/math.md §6), and
    /// A = |c_1 − c_2| + 1 keeps both fixed points in both quadratic zones.
    ///
    /// ```
    /// use models::Counterexample;
    /// let ce = Counterexample::from_d([0.8, 2.0], -3.0, 0.1, 5, 0.1);
    /// assert!((ce.hypergradient(ce.theta_fo()).abs() - (2.0f64 * 0.1).sqrt()).abs() < 1e-12);
    /// ```
    ///
    /// # Panics
    /// If Δ is not finite (e.g. a_1 = a_2, so p_1 = p_2), or r = 0.
    #[track_caller]
    pub fn from_d(a: [f64; 2], b1: f64, d: f64, r: usize, alpha: f64) -> Self {
        assert!(r >= 1, "Counterexample::from_d: r = 0");
        let p = [
            (1.0 - alpha * a[0]).powi(r as i32),
            (1.0 - alpha * a[1]).powi(r as i32),
        ];
        // |F′(θ_FO)| = ½ Δ a_1a_2p_1p_2|p_1 − p_2| / (a_1p_1 + a_2p_2) (docs/math.md §6).
        let slope = a[0] * a[1] * p[0] * p[1] * (p[0] - p[1]).abs() / (a[0] * p[0] + a[1] * p[1]);
        let delta = 2.0 * (2.0 * d).sqrt() / slope;
        assert!(
            delta.is_finite(),
            "Counterexample::from_d: degenerate constants a = {a:?}, r = {r}, α = {alpha} \
             (p_1 = p_2, so FO's fixed point is stationary and no gap D can be made)"
        );
        let b2 = a[1] * (b1 / a[0] + delta);
        let big_a = (b1 / a[0] - b2 / a[1]).abs() + 1.0;
        Counterexample {
            a,
            b: [b1, b2],
            big_a,
            r,
            alpha,
        }
    }

    /// Centre c_i = b_i/a_i.
    pub fn c(&self, i: usize) -> f64 {
        self.b[i] / self.a[i]
    }

    /// Contraction per inner run in the quadratic zone: p_i = (1 − α a_i)^r.
    pub fn p(&self, i: usize) -> f64 {
        (1.0 - self.alpha * self.a[i]).powi(self.r as i32)
    }

    /// f_i(φ) in closed form.
    pub fn f(&self, i: usize, phi: f64) -> f64 {
        let (a, big_a) = (self.a[i], self.big_a);
        let z = (phi - self.c(i)).abs();
        if z <= big_a {
            a * z * z / 2.0
        } else if z <= big_a + 1.0 {
            let u = z - big_a;
            -a * u.powi(3) / 6.0 + a * u * u / 2.0 + a * big_a * z - a * big_a * big_a / 2.0
        } else {
            (a / 2.0 + a * big_a) * z - a / 6.0 - a * big_a * big_a / 2.0 - a * big_a / 2.0
        }
    }

    /// f_i'(φ) = sign(φ − c_i)·g(z) with g(z) = a z, a(A + u − u²/2) (u = z − A), a(A + ½).
    pub fn df(&self, i: usize, phi: f64) -> f64 {
        let (a, big_a) = (self.a[i], self.big_a);
        let d = phi - self.c(i);
        let z = d.abs();
        let g = if z <= big_a {
            a * z
        } else if z <= big_a + 1.0 {
            let u = z - big_a;
            a * (big_a + u - u * u / 2.0)
        } else {
            a * (big_a + 0.5)
        };
        g * d.signum()
    }

    /// f_i''(φ): a, a(1 + A − z), 0 in the three zones.
    pub fn d2f(&self, i: usize, phi: f64) -> f64 {
        let (a, big_a) = (self.a[i], self.big_a);
        let z = (phi - self.c(i)).abs();
        if z <= big_a {
            a
        } else if z <= big_a + 1.0 {
            a * (1.0 + big_a - z)
        } else {
            0.0
        }
    }

    /// f_i on a tape, generic over the element type (so it runs on dual numbers
    /// for HVPs). Written as
    /// f = a·[d²/2 − relu(z − A)³/6 + relu(z − A − 1)³/6], d = φ − c_i, z = |d|,
    /// which equals the three-zone definition (expand the middle zone: its
    /// quadratic and linear terms sum to z²/2; in the last zone f'' = a(1 − u + (u − 1)) = 0)
    /// and is C² by construction, so no branch selection is needed and the
    /// second derivative is exact on both sides of each zone boundary.
    /// The quadratic term uses d² (not z²) so the kink of |·| at the centre never matters.
    pub fn f_tape<'t, T: Real>(&self, i: usize, phi: Var<'t, T>) -> Var<'t, T> {
        let big_a = self.big_a;
        let d = phi.add_scalar(-self.c(i));
        let z = d.abs();
        let u1 = z.add_scalar(-big_a).relu();
        let u2 = z.add_scalar(-big_a - 1.0).relu();
        let cube = |u: Var<'t, T>| u.square() * u;
        (d.square().mul_scalar(0.5) - cube(u1).mul_scalar(1.0 / 6.0)
            + cube(u2).mul_scalar(1.0 / 6.0))
        .mul_scalar(self.a[i])
    }

    /// f_i on a tape, written zone by zone exactly as the three-case definition
    /// with `where_` (the zone is chosen on primal values; the adjoint flows only
    /// into the selected formula). Equal to [`Counterexample::f_tape`] in value,
    /// gradient and second derivative; kept as the literal transcription that the
    /// tests compare against.
    pub fn f_tape_piecewise<'t, T: Real>(&self, i: usize, phi: Var<'t, T>) -> Var<'t, T> {
        let (a, big_a) = (self.a[i], self.big_a);
        let d = phi.add_scalar(-self.c(i));
        let z = d.abs();
        let u = z.add_scalar(-big_a);
        let quad = d.square().mul_scalar(a / 2.0);
        let cubic = u.square() * u * (-a / 6.0)
            + u.square() * (a / 2.0)
            + z * (a * big_a)
            + (-a * big_a * big_a / 2.0);
        let linear =
            z * (a / 2.0 + a * big_a) + (-a / 6.0 - a * big_a * big_a / 2.0 - a * big_a / 2.0);
        // Zone tests as "c > 0": z < A selects the quadratic, z < A + 1 the cubic
        // (at the boundaries the neighbouring formulas agree to second order).
        let in_quad = z.mul_scalar(-1.0).add_scalar(big_a);
        let in_cubic = z.mul_scalar(-1.0).add_scalar(big_a + 1.0);
        in_quad.where_(quad, in_cubic.where_(cubic, linear))
    }

    /// The inner trajectory φ_0 = θ, …, φ_r of task i (r + 1 values).
    pub fn trajectory(&self, i: usize, theta: f64) -> Vec<f64> {
        let mut phi = theta;
        let mut out = Vec::with_capacity(self.r + 1);
        out.push(phi);
        for _ in 0..self.r {
            phi -= self.alpha * self.df(i, phi);
            out.push(phi);
        }
        out
    }

    /// Task i's outer loss f_i(φ_r^i(θ)).
    pub fn task_loss(&self, i: usize, theta: f64) -> f64 {
        self.f(i, *self.trajectory(i, theta).last().expect("r + 1 states"))
    }

    /// F(θ) = ½ Σ_i f_i(φ_r^i(θ)).
    pub fn loss(&self, theta: f64) -> f64 {
        0.5 * (self.task_loss(0, theta) + self.task_loss(1, theta))
    }

    /// Task i's exact hypergradient by the chain rule through the r SGD steps:
    /// dφ_r/dθ = Π_{j=1..r} (1 − α f_i''(φ_{j−1})), so
    /// d f_i(φ_r)/dθ = f_i'(φ_r) · Π_j (1 − α f_i''(φ_{j−1})). Valid in every zone.
    pub fn task_hypergradient(&self, i: usize, theta: f64) -> f64 {
        let traj = self.trajectory(i, theta);
        let jac: f64 = traj[..self.r]
            .iter()
            .map(|&p| 1.0 - self.alpha * self.d2f(i, p))
            .product();
        self.df(i, traj[self.r]) * jac
    }

    /// F'(θ) = ½ Σ_i task_hypergradient(i, θ).
    pub fn hypergradient(&self, theta: f64) -> f64 {
        0.5 * (self.task_hypergradient(0, theta) + self.task_hypergradient(1, theta))
    }

    /// Task i's first-order estimate g_FO = f_i'(φ_r^i(θ)) (second derivatives dropped).
    pub fn task_fo_gradient(&self, i: usize, theta: f64) -> f64 {
        self.df(i, *self.trajectory(i, theta).last().expect("r + 1 states"))
    }

    /// FO's mean field ½ Σ_i f_i'(φ_r^i(θ)); FO-BLO's fixed points are its zeros.
    pub fn fo_mean_field(&self, theta: f64) -> f64 {
        0.5 * (self.task_fo_gradient(0, theta) + self.task_fo_gradient(1, theta))
    }

    /// Zero of FO's mean field when both tasks stay in the quadratic zone
    /// (there φ_r − c = p(θ − c), so g_FO = a p (θ − c)):
    /// θ_FO = Σ a_i p_i c_i / Σ a_i p_i (≈ 5.759 for the paper's constants).
    pub fn theta_fo(&self) -> f64 {
        let num: f64 = (0..2).map(|i| self.a[i] * self.p(i) * self.c(i)).sum();
        let den: f64 = (0..2).map(|i| self.a[i] * self.p(i)).sum();
        num / den
    }

    /// The stationary point of F in the quadratic zone (g_exact = a p² (θ − c)):
    /// θ* = Σ a_i p_i² c_i / Σ a_i p_i² (≈ 2.840 for the paper's constants).
    pub fn theta_star(&self) -> f64 {
        let num: f64 = (0..2)
            .map(|i| self.a[i] * self.p(i).powi(2) * self.c(i))
            .sum();
        let den: f64 = (0..2).map(|i| self.a[i] * self.p(i).powi(2)).sum();
        num / den
    }
}

/// The counterexample family as a [`blo::Problem`]: θ and φ are one scalar
/// each (shape `[1]`), a task is the index i ∈ {0, 1} (draw each with
/// probability ½), L_in = L_out = f_i(φ), and the inner loop is r SGD steps of
/// size α from φ_0 = θ, so F(θ) = ½ Σ_i f_i(φ_r^i(θ)) (docs/math.md §6).
///
/// ```
/// use blo::{Estimator, Exact, FirstOrder, Policy};
/// use models::{Counterexample, CounterexampleProblem};
/// use rand::SeedableRng;
/// let p = CounterexampleProblem::new(Counterexample::paper()).unwrap();
/// let ce = p.ce();
/// let theta = [tape::Tensor::vector(vec![ce.theta_fo()])];
/// let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
/// let mean = |e: &dyn Fn(usize) -> f64| 0.5 * (e(0) + e(1));
/// let fo = mean(&|i| FirstOrder::new().estimate(&p, &i, &theta, &mut rng.clone()).unwrap().grad[0].data()[0]);
/// let exact = mean(&|i| Exact::new(Policy::Recompute).unwrap().estimate(&p, &i, &theta, &mut rng.clone()).unwrap().grad[0].data()[0]);
/// // At FO's fixed point FO's mean field vanishes but F′ does not: |F′| = √(2D).
/// assert!(fo.abs() < 1e-9);
/// assert!((exact.abs() - (2.0f64 * 0.06).sqrt()).abs() < 1e-9);
/// ```
#[derive(Clone, Debug)]
pub struct CounterexampleProblem {
    ce: Counterexample,
    inner: InnerLoop,
}

impl CounterexampleProblem {
    /// The problem for the constants `ce` (its r and α make the inner loop).
    ///
    /// # Errors
    /// [`BloError::InvalidHyperparameter`] if `ce.r` = 0 or `ce.alpha` is not
    /// finite and positive.
    pub fn new(ce: Counterexample) -> Result<Self, BloError> {
        let inner = InnerLoop::sgd(ce.r, ce.alpha)?;
        Ok(CounterexampleProblem { ce, inner })
    }

    /// The constants and closed forms.
    pub fn ce(&self) -> &Counterexample {
        &self.ce
    }
}

impl Problem<f64> for CounterexampleProblem {
    type Task = usize;

    fn inner_loop(&self) -> &InnerLoop {
        &self.inner
    }

    fn inner_loss<'t, T: Real<Base = f64>>(
        &self,
        _tape: &'t Tape<T>,
        task: &usize,
        _step: usize,
        _theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        self.ce.f_tape(*task, phi[0]).sum()
    }

    fn outer_loss<'t, T: Real<Base = f64>>(
        &self,
        _tape: &'t Tape<T>,
        task: &usize,
        _theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        self.ce.f_tape(*task, phi[0]).sum()
    }
}
