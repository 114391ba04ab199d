//! The exact hypergradient (adjoint sweep under a checkpoint [`Policy`]), its
//! first-order truncation and truncated backpropagation.

use rand_chacha::ChaCha8Rng;
use tape::{Float, Tensor};

use crate::checkpoint::{revolve_split, Policy};
use crate::error::BloError;
use crate::estimator::{Estimate, Estimator, Stats};
use crate::inner::{Cotangent, InnerWorkspace, State};
use crate::problem::Problem;

/// Which meta-objective the sweep differentiates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// F(θ) = L_out(θ, φ_r(θ)).
    Outer,
    /// Σ_{j=1}^r L_in(θ, φ_{j−1}(θ); τ, j) (Reptile's objective).
    InnerSum,
}

/// The first sweep's result: the kept states (index, state) and φ_r.
pub(crate) type Forward<F> = (Vec<(usize, State<F>)>, State<F>);

/// One adjoint sweep in progress: the inputs, the workspace, the running
/// cotangent and θ-gradient, and the cost/memory meters.
pub(crate) struct Sweep<'a, F: Float, P: Problem<F>> {
    pub(crate) problem: &'a P,
    pub(crate) task: &'a P::Task,
    pub(crate) theta: &'a [Tensor<F>],
    pub(crate) ws: InnerWorkspace<F>,
    pub(crate) stats: Stats,
    pub(crate) target: Target,
    pub(crate) r: usize,
    live: usize,
    live_bytes: usize,
    pub(crate) cot: Option<Cotangent<F>>,
    pub(crate) g: Vec<Tensor<F>>,
    pub(crate) outer_loss: F,
}

impl<'a, F: Float, P: Problem<F>> Sweep<'a, F, P> {
    pub(crate) fn new(
        problem: &'a P,
        task: &'a P::Task,
        theta: &'a [Tensor<F>],
        target: Target,
    ) -> Result<Self, BloError> {
        let inner = problem.inner_loop();
        inner.validate()?;
        Ok(Sweep {
            problem,
            task,
            theta,
            ws: InnerWorkspace::cached(),
            stats: Stats::default(),
            target,
            r: inner.steps,
            live: 0,
            live_bytes: 0,
            cot: None,
            g: theta.iter().map(|t| Tensor::zeros(t.shape())).collect(),
            outer_loss: F::zero(),
        })
    }

    pub(crate) fn hold(&mut self, s: &State<F>) {
        self.live += 1;
        self.live_bytes += s.bytes();
        self.stats.states_peak = self.stats.states_peak.max(self.live);
        self.stats.state_bytes_peak = self.stats.state_bytes_peak.max(self.live_bytes);
    }

    pub(crate) fn release(&mut self, s: &State<F>) {
        self.live -= 1;
        self.live_bytes -= s.bytes();
    }

    /// φ_0 = Φ_0(θ), held (in a spare state's buffers).
    pub(crate) fn initial(&mut self) -> Result<State<F>, BloError> {
        let mut s = self.ws.spare_state();
        self.ws
            .initial_state_into(self.problem, self.task, self.theta, &mut s)?;
        self.hold(&s);
        Ok(s)
    }

    /// A held copy of a held state (in a spare state's buffers).
    pub(crate) fn copy(&mut self, s: &State<F>) -> State<F> {
        let c = self.ws.copy_state(s);
        self.hold(&c);
        c
    }

    /// Releases a held state and keeps its buffers for a later state.
    pub(crate) fn discard(&mut self, s: State<F>) {
        self.release(&s);
        self.ws.put_spare(s);
    }

    /// Keeps the buffers of a state that is no longer held (φ_r of
    /// [`Sweep::forward`]) for a later state.
    pub(crate) fn reuse(&mut self, s: State<F>) {
        self.ws.put_spare(s);
    }

    /// Advances `s` from state `from` to state `to` (steps from+1..=to).
    pub(crate) fn advance(
        &mut self,
        s: &mut State<F>,
        from: usize,
        to: usize,
    ) -> Result<(), BloError> {
        for j in from + 1..=to {
            self.ws
                .step_in_place(self.problem, self.task, j, self.theta, s)?;
            self.stats.forward_steps += 1;
            self.stats.gradients += 1;
        }
        Ok(())
    }

    /// The first sweep: φ_0 → φ_r, keeping a held copy of state j (j < r)
    /// wherever `keep(j)`; then L_out at φ_r and the initial cotangent.
    /// Returns the kept states in order, and φ_r (released).
    pub(crate) fn forward(&mut self, keep: impl Fn(usize) -> bool) -> Result<Forward<F>, BloError> {
        let mut kept = self.ws.take_kept();
        let mut s = self.initial()?;
        for j in 0..self.r {
            if keep(j) {
                let c = self.copy(&s);
                kept.push((j, c));
            }
            self.advance(&mut s, j, j + 1)?;
        }
        match self.target {
            Target::Outer => {
                // ∇_θ L_out goes straight into g (zeros so far), ∇_φ L_out into ū_φ.
                let mut cot = self.ws.zero_cotangent(&s);
                self.outer_loss = self.ws.outer_grad_into(
                    self.problem,
                    self.task,
                    self.theta,
                    &s.phi,
                    &mut self.g,
                    &mut cot.phi,
                )?;
                self.stats.gradients += 1;
                self.cot = Some(cot);
            }
            Target::InnerSum => {
                self.outer_loss =
                    self.ws
                        .outer_loss(self.problem, self.task, self.theta, &s.phi)?;
                self.cot = Some(self.ws.zero_cotangent(&s));
            }
        }
        self.release(&s);
        Ok((kept, s))
    }

    /// The adjoint step j at `prev` = state_{j−1}.
    pub(crate) fn adjoint(&mut self, j: usize, prev: &State<F>) -> Result<(), BloError> {
        let cot = self.cot.as_mut().expect("adjoint before the forward sweep");
        self.ws.adjoint_step(
            self.problem,
            self.task,
            j,
            self.theta,
            prev,
            cot,
            &mut self.g,
            self.target == Target::InnerSum,
        )?;
        self.stats.hvps += 1;
        Ok(())
    }

    /// Adjoint steps lo+1..=r under `policy`, from the states the first sweep
    /// kept (the policy's own choice of `keep`; see [`keep_for`]).
    pub(crate) fn reverse(
        &mut self,
        policy: Policy,
        mut kept: Vec<(usize, State<F>)>,
    ) -> Result<(), BloError> {
        let r = self.r;
        match policy {
            Policy::StoreAll => {
                while let Some((j, s)) = kept.pop() {
                    self.adjoint(j + 1, &s)?;
                    self.discard(s);
                }
            }
            Policy::Recompute => {
                for j in (1..=r).rev() {
                    let mut s = self.initial()?;
                    self.advance(&mut s, 0, j - 1)?;
                    self.adjoint(j, &s)?;
                    self.discard(s);
                }
            }
            Policy::EveryK { .. } | Policy::Sqrt => {
                let k = policy.spacing(r).unwrap_or(1);
                let mut seg = self.ws.take_segment();
                while let Some((start, cp)) = kept.pop() {
                    let end = (start + k).min(r);
                    seg.push(cp);
                    for i in start + 1..end {
                        let mut s = self.copy(seg.last().expect("segment has its checkpoint"));
                        self.advance(&mut s, i - 1, i)?;
                        seg.push(s);
                    }
                    for j in (start + 1..=end).rev() {
                        let s = seg.pop().expect("one state per step of the segment");
                        self.adjoint(j, &s)?;
                        self.discard(s);
                    }
                }
                self.ws.put_segment(seg);
            }
            Policy::Binomial { snapshots } => {
                let (a, s0) = kept.pop().expect("binomial keeps φ_0");
                debug_assert_eq!(a, 0);
                self.revolve(0, &s0, r, snapshots)?;
                self.discard(s0);
            }
        }
        self.ws.put_kept(kept);
        Ok(())
    }

    /// Reverses steps a+1..=a+l from the held state `sa` = state_a with `c`
    /// snapshot slots (`sa`'s included); recomputes exactly t(l, c) steps.
    fn revolve(&mut self, a: usize, sa: &State<F>, l: usize, c: usize) -> Result<(), BloError> {
        if l == 0 {
            return Ok(());
        }
        if l == 1 {
            return self.adjoint(a + 1, sa);
        }
        if c == 1 {
            for j in (a + 1..=a + l).rev() {
                if j == a + 1 {
                    self.adjoint(j, sa)?;
                } else {
                    let mut w = self.copy(sa);
                    self.advance(&mut w, a, j - 1)?;
                    self.adjoint(j, &w)?;
                    self.discard(w);
                }
            }
            return Ok(());
        }
        let m = revolve_split(l, c);
        let mut w = self.copy(sa);
        self.advance(&mut w, a, a + m)?;
        self.revolve(a + m, &w, l - m, c - 1)?;
        self.discard(w);
        self.revolve(a, sa, m, c)
    }

    /// g += (∂Φ_0/∂θ)ᵀ ū_φ and the estimate.
    pub(crate) fn finish(mut self) -> Estimate<F> {
        let cot = self.cot.take().expect("finish before the forward sweep");
        self.ws
            .initial_state_vjp(self.problem, self.task, self.theta, &cot.phi, &mut self.g);
        self.ws.put_cotangent(cot);
        self.stats.gradients += 1;
        Estimate {
            grad: std::mem::take(&mut self.g),
            outer_loss: self.outer_loss,
            stats: std::mem::take(&mut self.stats),
        }
    }
}

impl<F: Float, P: Problem<F>> Drop for Sweep<'_, F, P> {
    /// Hands the workspace (tapes with their capacity) back to this thread's cache.
    fn drop(&mut self) {
        std::mem::take(&mut self.ws).recycle();
    }
}

/// Which states of the first sweep `policy` keeps.
pub(crate) fn keep_for(policy: Policy, r: usize) -> impl Fn(usize) -> bool {
    let k = policy.spacing(r);
    move |j: usize| match policy {
        Policy::StoreAll => true,
        Policy::Recompute => false,
        Policy::EveryK { .. } | Policy::Sqrt => j.checked_rem(k.unwrap_or(1)) == Some(0),
        Policy::Binomial { .. } => j == 0,
    }
}

pub(crate) fn exact_sweep<F: Float, P: Problem<F>>(
    problem: &P,
    task: &P::Task,
    theta: &[Tensor<F>],
    policy: Policy,
    target: Target,
) -> Result<Estimate<F>, BloError> {
    let mut sw = Sweep::new(problem, task, theta, target)?;
    let (kept, phi_r) = sw.forward(keep_for(policy, sw.r))?;
    sw.reuse(phi_r);
    sw.reverse(policy, kept)?;
    Ok(sw.finish())
}

/// The exact hypergradient ∇F(θ) of the unrolled inner loop, by the adjoint
/// sweep of REFERENCE §2 (one HVP + mixed-product pass per step, then the VJP
/// through Φ_0), with the states supplied by a checkpoint [`Policy`]. All
/// policies return the same bits.
///
/// ```
/// # use blo::{Exact, Estimator, InnerLoop, Policy, Problem};
/// # use tape::{Real, Tape, Tensor, Var};
/// # use rand::SeedableRng;
/// # struct Quad { inner: InnerLoop }
/// # impl Problem<f64> for Quad {
/// #     type Task = f64;
/// #     fn inner_loop(&self) -> &InnerLoop { &self.inner }
/// #     fn inner_loss<'t, T: Real<Base = f64>>(&self, _t: &'t Tape<T>, c: &f64, _j: usize,
/// #         _th: &[Var<'t, T>], phi: &[Var<'t, T>]) -> Var<'t, T> {
/// #         (phi[0] - *c).square().sum() * 0.5
/// #     }
/// #     fn outer_loss<'t, T: Real<Base = f64>>(&self, t: &'t Tape<T>, c: &f64,
/// #         th: &[Var<'t, T>], phi: &[Var<'t, T>]) -> Var<'t, T> { self.inner_loss(t, c, 0, th, phi) }
/// # }
/// // MAML on L = ½(φ − c)², α = 0.5, r = 3: φ_3 − c = (θ − c)/8, F = (θ − c)²/128,
/// // F'(θ) = (θ − c)/64.
/// let p = Quad { inner: InnerLoop::sgd(3, 0.5)? };
/// let est = Exact::new(Policy::Recompute)?;
/// let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
/// let e = est.estimate(&p, &1.0, &[Tensor::vector(vec![3.0])], &mut rng)?;
/// assert!((e.grad[0].data()[0] - 2.0 / 64.0).abs() < 1e-15);
/// assert_eq!(e.stats.forward_steps, 6); // r(r+1)/2
/// # Ok::<(), blo::BloError>(())
/// ```
#[derive(Clone, Debug)]
pub struct Exact {
    pub(crate) policy: Policy,
}

impl Exact {
    /// The exact estimator under `policy`.
    ///
    /// # Errors
    /// [`BloError::InvalidHyperparameter`] if the policy's budget is invalid.
    pub fn new(policy: Policy) -> Result<Self, BloError> {
        policy.validate()?;
        Ok(Exact { policy })
    }

    /// The checkpoint policy.
    pub fn policy(&self) -> Policy {
        self.policy
    }
}

impl<F: Float, P: Problem<F>> Estimator<F, P> for Exact {
    fn estimate(
        &self,
        problem: &P,
        task: &P::Task,
        theta: &[Tensor<F>],
        _rng: &mut ChaCha8Rng,
    ) -> Result<Estimate<F>, BloError> {
        exact_sweep(problem, task, theta, self.policy, Target::Outer)
    }

    fn name(&self) -> String {
        format!("exact({:?})", self.policy)
    }
}

/// The first-order estimator (FO-BLO / FOMAML, REFERENCE §3): every second
/// derivative dropped,
///
/// g_FO = ∇_θ L_out(θ, φ_r) + (∂Φ_0/∂θ)ᵀ ∇_φ L_out(θ, φ_r).
///
/// Cost: r + 2 gradients (r steps, the outer gradient, the VJP through Φ_0);
/// one state in memory. Biased in general; exact when L_in is linear in φ
/// and θ does not enter L_in.
#[derive(Clone, Debug, Default)]
pub struct FirstOrder;

impl FirstOrder {
    /// The first-order estimator.
    pub fn new() -> Self {
        FirstOrder
    }
}

impl<F: Float, P: Problem<F>> Estimator<F, P> for FirstOrder {
    fn estimate(
        &self,
        problem: &P,
        task: &P::Task,
        theta: &[Tensor<F>],
        _rng: &mut ChaCha8Rng,
    ) -> Result<Estimate<F>, BloError> {
        let mut sw = Sweep::new(problem, task, theta, Target::Outer)?;
        let (kept, phi_r) = sw.forward(|_| false)?;
        sw.reuse(phi_r);
        sw.ws.put_kept(kept);
        Ok(sw.finish())
    }

    fn name(&self) -> String {
        "first-order".into()
    }
}

/// Truncated backpropagation (Shaban et al. 2019): the adjoint sweep over the
/// last k steps only (states φ_{r−k}..φ_{r−1} stored); the earlier steps are
/// treated as the identity on φ (their second derivatives and their θ
/// dependence dropped, a momentum cotangent discarded), so ū reaches Φ_0
/// unchanged: `Truncated { k: r }` is [`Exact`], and k = 0 would be
/// [`FirstOrder`]. Biased; O(k·d) memory, k HVPs.
#[derive(Clone, Debug)]
pub struct Truncated {
    k: usize,
}

impl Truncated {
    /// Truncation to the last `k` ≥ 1 steps (k > r means all r).
    ///
    /// # Errors
    /// [`BloError::InvalidHyperparameter`] if k = 0 (use [`FirstOrder`]).
    pub fn new(k: usize) -> Result<Self, BloError> {
        if k == 0 {
            return Err(BloError::invalid(
                "k",
                0,
                "truncation needs at least one step; k = 0 is FirstOrder",
            ));
        }
        Ok(Truncated { k })
    }
}

impl<F: Float, P: Problem<F>> Estimator<F, P> for Truncated {
    fn estimate(
        &self,
        problem: &P,
        task: &P::Task,
        theta: &[Tensor<F>],
        _rng: &mut ChaCha8Rng,
    ) -> Result<Estimate<F>, BloError> {
        let mut sw = Sweep::new(problem, task, theta, Target::Outer)?;
        let lo = sw.r.saturating_sub(self.k);
        let (kept, phi_r) = sw.forward(|j| j >= lo)?;
        sw.reuse(phi_r);
        sw.reverse(Policy::StoreAll, kept)?;
        if let Some(c) = sw.cot.as_mut() {
            c.velocity
                .iter_mut()
                .for_each(|v| v.data_mut().fill(F::zero()));
        }
        Ok(sw.finish())
    }

    fn name(&self) -> String {
        format!("truncated(k={})", self.k)
    }
}
