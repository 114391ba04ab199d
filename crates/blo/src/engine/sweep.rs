//! The one loop that executes a plan: every exact, truncated and first-order
//! estimate of the crate is a [`Plan`](super::plan::Plan) run by
//! [`Sweep::run`].
//!
//! The sweep holds the inputs (problem, task, θ), the step calculus
//! ([`InnerWorkspace`]: one forward step, one adjoint step), the
//! [`StateStore`] that owns every held state, the running cotangent ū and
//! θ-gradient g, and the cost meters. Each [`Action`] is one call:
//!
//! | action | effect | counted |
//! |---|---|---|
//! | `Init { buf }` | buf ← φ_0 = Φ_0(θ) | — |
//! | `Copy { from, to }` | to ← from | — |
//! | `Advance { buf, from, to }` | steps from+1..=to in place ([`InnerWorkspace::advance`]) | `forward_steps`, `gradients` |
//! | `Turn { buf }` | L_out at φ_r: g ← ∇_θ L_out, ū_φ ← ∇_φ L_out | `gradients` |
//! | `Adjoint { buf, step: j }` | ū_j → ū_{j−1}, g += θ part (docs/math.md, the adjoint sweep) | `hvps` |
//! | `Free { buf }` | buf released | — |
//!
//! Every state is produced by the same step function from the same inputs,
//! so every plan gives the same bits.

use tape::{Float, Tensor};

use super::cache;
use super::plan::Action;
use super::resident::Start;
use super::store::StateStore;
use super::tiles;
use crate::engine::step::{Cotangent, InnerWorkspace, State};
use crate::error::BloError;
use crate::estimators::{Estimate, Stats};
use crate::problem::Problem;

/// Which meta-objective the sweep differentiates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// F(θ) = L_out(θ, φ_r(θ)).
    Outer,
    /// Σ_{j=1}^r L_in(θ, φ_{j−1}(θ); τ, j) (Reptile's objective).
    InnerSum,
}

/// What a sweep keeps between tasks on one thread: the tapes, the state
/// store and a spare cotangent.
#[derive(Debug, Default)]
pub(crate) struct SweepBuffers<F: Float> {
    pub(crate) ws: InnerWorkspace<F>,
    pub(crate) store: StateStore<F>,
    cot: Option<Cotangent<F>>,
}

impl<F: Float> SweepBuffers<F> {
    /// This thread's buffers (or new ones).
    pub(crate) fn cached() -> Self {
        cache::take()
    }

    /// Hands the buffers back to this thread's cache.
    pub(crate) fn recycle(mut self) {
        self.store.reset();
        cache::give_back(self)
    }
}

/// One sweep in progress. See the module docs.
pub(crate) struct Sweep<'a, F: Float, P: Problem<F>> {
    pub(crate) problem: &'a P,
    pub(crate) task: &'a P::Task,
    pub(crate) theta: &'a [Tensor<F>],
    pub(crate) bufs: SweepBuffers<F>,
    pub(crate) stats: Stats,
    pub(crate) target: Target,
    /// ū on the state (set by the turn).
    pub(crate) cot: Option<Cotangent<F>>,
    /// The θ-gradient accumulated so far.
    pub(crate) g: Vec<Tensor<F>>,
    pub(crate) outer_loss: F,
}

impl<'a, F: Float, P: Problem<F>> Sweep<'a, F, P> {
    /// A sweep of `problem`'s inner loop on `task` at θ.
    ///
    /// # Errors
    /// Invalid inner-loop settings.
    pub(crate) fn new(
        problem: &'a P,
        task: &'a P::Task,
        theta: &'a [Tensor<F>],
        target: Target,
    ) -> Result<Self, BloError> {
        let inner = problem.inner_loop();
        inner.validate()?;
        let mut bufs = SweepBuffers::cached();
        bufs.store.reset();
        Ok(Sweep {
            problem,
            task,
            theta,
            bufs,
            stats: Stats::default(),
            target,
            cot: None,
            g: theta.iter().map(|t| Tensor::zeros(t.shape())).collect(),
            outer_loss: F::zero(),
        })
    }

    /// Executes `actions` in order.
    ///
    /// # Errors
    /// The first error of a step (a non-finite loss, gradient or cotangent,
    /// naming the inner step).
    pub(crate) fn run(&mut self, actions: &[Action]) -> Result<(), BloError> {
        let mut i = 0;
        while i < actions.len() {
            let fused = |k: usize, buf: usize| {
                self.target == Target::Outer && actions.get(k) == Some(&Action::Turn { buf })
            };
            match (actions[i], actions.get(i + 1)) {
                // The last steps and the turn on one tape; the state need
                // not be written if it is freed right after. φ_0 as tiles of
                // θ goes straight into the tape, the `Init` fused in too.
                (
                    Action::Init { buf },
                    Some(&Action::Advance {
                        buf: b,
                        from: 0,
                        to,
                    }),
                ) if b == buf
                    && fused(i + 2, buf)
                    && tiles::tiles(self.problem, self.task).is_some() =>
                {
                    let freed = actions.get(i + 3) == Some(&Action::Free { buf });
                    self.advance_and_turn(buf, 0, to, !freed, true)?;
                    i += 3;
                }
                (Action::Advance { buf, from, to }, _) if fused(i + 1, buf) => {
                    let freed = actions.get(i + 2) == Some(&Action::Free { buf });
                    self.advance_and_turn(buf, from, to, !freed, false)?;
                    i += 2;
                }
                (a, _) => {
                    self.act(a)?;
                    i += 1;
                }
            }
        }
        Ok(())
    }

    /// `Advance { buf, from, to }` then `Turn { buf }` for [`Target::Outer`],
    /// fused ([`InnerWorkspace::advance_outer_grad`]), after `Init { buf }`
    /// with `init` (φ_0 as tiles of θ, [`tiles::tiles`]): the same state, g
    /// and ū, bit for bit, and the same counts. Without `keep_state` the
    /// buffer's φ is left unspecified (the plan frees it next).
    fn advance_and_turn(
        &mut self,
        buf: usize,
        from: usize,
        to: usize,
        keep_state: bool,
        init: bool,
    ) -> Result<(), BloError> {
        let (p, task, theta) = (self.problem, self.task, self.theta);
        let SweepBuffers { ws, store, cot } = &mut self.bufs;
        // The problem's promise, checked where assertions are on (as `Init`
        // checks it).
        #[cfg(debug_assertions)]
        if let Some(b) = tiles::tiles(p, task).filter(|_| init) {
            let mut phi0 = State {
                phi: Vec::new(),
                extra: Vec::new(),
            };
            if tiles::tiled_state_into(theta, b, &mut phi0).is_ok() {
                tiles::assert_recorded_matches(ws, p, task, theta, b, &phi0);
            }
        }
        let mut c = cot.take().unwrap_or(Cotangent {
            phi: Vec::new(),
            extra: Vec::new(),
        });
        let mut run = |s: &mut State<F>, start| {
            ws.advance_outer_grad_into(
                p,
                task,
                (from, to),
                theta,
                s,
                (start, keep_state),
                &mut self.g,
                &mut c,
            )
        };
        let r = match tiles::tiles(p, task).filter(|_| init) {
            Some(b) => {
                let mut s = store.take_free(buf);
                let r = run(&mut s, Start::Tiles(b));
                store.put(buf, s);
                r
            }
            None => run(store.get_mut(buf), Start::State),
        };
        self.outer_loss = r?;
        self.stats.forward_steps += to - from;
        self.stats.gradients += to - from + 1;
        self.cot = Some(c);
        Ok(())
    }

    /// Executes one action.
    fn act(&mut self, a: Action) -> Result<(), BloError> {
        let (p, task, theta) = (self.problem, self.task, self.theta);
        let SweepBuffers { ws, store, cot } = &mut self.bufs;
        match a {
            Action::Init { buf } => {
                let mut s = store.take_free(buf);
                let r = match tiles::tiles(p, task) {
                    Some(b) => {
                        let r = tiles::tiled_state_into(theta, b, &mut s);
                        // The problem's promise, checked where assertions
                        // are on: its recorded φ_0 is those tiles, bit for bit.
                        #[cfg(debug_assertions)]
                        if r.is_ok() {
                            tiles::assert_recorded_matches(ws, p, task, theta, b, &s);
                        }
                        r
                    }
                    None => ws.initial_state_into(p, task, theta, &mut s),
                };
                store.put(buf, s);
                r?;
            }
            Action::Copy { from, to } => store.copy(from, to),
            Action::Advance { buf, from, to } => {
                let s = store.get_mut(buf);
                ws.advance(p, task, from, to, theta, s)?;
                self.stats.forward_steps += to - from;
                self.stats.gradients += to - from;
            }
            Action::Turn { buf } => {
                let s = store.get(buf);
                let mut c = cot.take().unwrap_or(Cotangent {
                    phi: Vec::new(),
                    extra: Vec::new(),
                });
                match self.target {
                    Target::Outer => {
                        // ∇_θ L_out goes straight into g (zeros so far), ∇_φ L_out into ū_φ
                        // (written whole: not zeroed first).
                        c.outer_like(s);
                        self.outer_loss =
                            ws.outer_grad_into(p, task, theta, &s.phi, &mut self.g, &mut c.phi)?;
                        self.stats.gradients += 1;
                    }
                    Target::InnerSum => {
                        c.zero_like(s);
                        self.outer_loss = ws.outer_loss(p, task, theta, &s.phi)?;
                    }
                }
                self.cot = Some(c);
            }
            Action::Adjoint { buf, step } => {
                let c = self
                    .cot
                    .as_mut()
                    .expect("plan: adjoint step before the turn");
                // ū_0 is read only by Φ_0's VJP (block sums for tiles).
                ws.adjoint_step_at(
                    p,
                    task,
                    (step, true),
                    theta,
                    store.get(buf),
                    c,
                    &mut self.g,
                    self.target == Target::InnerSum,
                )?;
                self.stats.hvps += 1;
            }
            Action::Free { buf } => store.free(buf),
        }
        Ok(())
    }

    /// `g + (∂Φ_0/∂θ)ᵀ ū_φ` with the sweep's current g and ū, into `out`
    /// (shaped like θ; overwritten), without changing the sweep (one more
    /// gradient is counted): right after the turn, the first-order estimate
    /// g_0; after the adjoint steps r..=r − k + 1, the truncated estimate g_k
    /// (docs/math.md §5; a momentum cotangent is dropped, as the truncation
    /// drops it).
    pub(crate) fn truncated_into(&mut self, out: &mut [Tensor<F>]) {
        for (o, g) in out.iter_mut().zip(&self.g) {
            o.data_mut().copy_from_slice(g.data());
        }
        self.add_initial_state_vjp(out);
    }

    /// `g_theta += (∂Φ_0/∂θ)ᵀ ū_φ` with the sweep's ū (one more gradient
    /// counted): by block sums when φ_0 is tiles of θ
    /// ([`tiles::tiled_vjp_add`]), else one recorded VJP.
    fn add_initial_state_vjp(&mut self, g_theta: &mut [Tensor<F>]) {
        let u = &self.cot.as_ref().expect("Φ_0's VJP before the turn").phi;
        match tiles::tiles(self.problem, self.task) {
            Some(_) => tiles::tiled_vjp_add(u, g_theta),
            None => self
                .bufs
                .ws
                .initial_state_vjp(self.problem, self.task, self.theta, u, g_theta),
        }
        self.stats.gradients += 1;
    }

    /// The held state in buffer `buf`.
    pub(crate) fn state(&self, buf: usize) -> &crate::engine::step::State<F> {
        self.bufs.store.get(buf)
    }

    /// g += (∂Φ_0/∂θ)ᵀ ū_φ, and the estimate.
    pub(crate) fn finish(mut self) -> Estimate<F> {
        let mut g = std::mem::take(&mut self.g);
        self.add_initial_state_vjp(&mut g);
        self.finish_with(g)
    }

    /// The estimate `grad` (computed by the caller from the sweep's reads,
    /// [`Sweep::truncated_into`]) with the sweep's outer loss and counts.
    pub(crate) fn finish_with(mut self, grad: Vec<Tensor<F>>) -> Estimate<F> {
        self.bufs.cot = self.cot.take();
        debug_assert_eq!(self.bufs.store.live(), 0, "a plan left states held");
        self.stats.states_peak = self.bufs.store.peak();
        self.stats.state_bytes_peak = self.bufs.store.peak_bytes();
        Estimate {
            grad,
            outer_loss: self.outer_loss,
            stats: std::mem::take(&mut self.stats),
        }
    }
}

impl<F: Float, P: Problem<F>> Drop for Sweep<'_, F, P> {
    /// Hands the buffers (tapes with their capacity, spare states) back to
    /// this thread's cache.
    fn drop(&mut self) {
        std::mem::take(&mut self.bufs).recycle();
    }
}
