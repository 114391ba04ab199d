//! Several inner steps with θ and φ resident on the primal tape: recorded
//! once as its first leaves, kept across every step by
//! [`tape::Tape::rewind_updating`], which writes φ_j (for SGD φ_{j−1} − α g_j)
//! into φ's leaves from their adjoints. No copy of θ or φ into fresh leaves
//! per step; φ is copied out once, at the end. For SGD, Meta-SGD, momentum
//! and a rule whose step is one fixed linear map D per element
//! (docs/math.md §12, "Fixed linear steps": SGD, heavy ball and Nesterov
//! with a fixed β as rules).
//!
//! Every step records the same nodes on leaves of the same values as
//! [`InnerWorkspace::step_in_place`] and updates φ by the same function
//! (the hand optimisers' `update_tensor`, a rule's D by
//! `LinearStep::step_segment`, the arithmetic of `LinearStep::step`), so
//! the states are bit for bit those of step-by-step advancing, and a
//! checkpoint recomputed by either path is the same state.

use tape::{Float, Tensor};

use tape::kernels::all_finite;

use crate::engine::step::{non_finite, update_tensor, InnerWorkspace, State};
use crate::error::BloError;
use crate::problem::{InnerOptimizer, Problem};

impl<F: Float> InnerWorkspace<F> {
    /// Steps `from + 1 ..= to` in place: `state` goes from state_from to
    /// state_to, the states of [`InnerWorkspace::step_in_place`] called for
    /// each step, bit for bit. With SGD, Meta-SGD, momentum or a fixed linear
    /// rule ([`crate::InnerRule::fixed_linear`]) and two steps or more, θ and
    /// φ stay on the tape from step to step (see the module docs; momentum's
    /// velocity is updated in `state`, a rule's extra state in the
    /// workspace and copied out at the end); for another rule's steps or a
    /// single step this is `step_in_place` per step.
    ///
    /// ```
    /// use blo::{InnerLoop, InnerWorkspace, Problem};
    /// use tape::{Real, Tape, Tensor, Var};
    /// # struct Quad { inner: InnerLoop }
    /// # impl Problem<f64> for Quad {
    /// #     type Task = f64;
    /// #     fn inner_loop(&self) -> &InnerLoop { &self.inner }
    /// #     fn inner_loss<'t, T: Real<Base = f64>>(&self, _t: &'t Tape<T>, c: &f64, _j: usize,
    /// #         _th: &[Var<'t, T>], phi: &[Var<'t, T>]) -> Var<'t, T> {
    /// #         (phi[0] - *c).square().sum() * 0.5 + phi[0].tanh().sum()
    /// #     }
    /// #     fn outer_loss<'t, T: Real<Base = f64>>(&self, t: &'t Tape<T>, c: &f64,
    /// #         th: &[Var<'t, T>], phi: &[Var<'t, T>]) -> Var<'t, T> { self.inner_loss(t, c, 0, th, phi) }
    /// # }
    /// let p = Quad { inner: InnerLoop::sgd(5, 0.3)? };
    /// let theta = [Tensor::vector(vec![0.5, -1.0])];
    /// let mut ws = InnerWorkspace::new();
    /// let mut a = ws.initial_state(&p, &1.0, &theta)?;
    /// let mut b = a.clone();
    /// ws.advance(&p, &1.0, 0, 5, &theta, &mut a)?; // θ and φ stay on the tape
    /// for j in 1..=5 {
    ///     ws.step_in_place(&p, &1.0, j, &theta, &mut b)?;
    /// }
    /// assert_eq!(a, b); // bit for bit
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`InnerWorkspace::step_in_place`], naming the step j that went
    /// non-finite; `state` then holds state_{j−1}, as after step-by-step
    /// advancing (on a non-finite SGD gradient or a rule's non-finite
    /// gradient or new state, state_{j−1} is recomputed from state_from by
    /// the steps from + 1 ..= j − 1: φ's leaves hold a partly updated φ, and
    /// keeping a copy for this rare case would cost the copy per step that
    /// this path saves).
    pub fn advance<P: Problem<F>>(
        &mut self,
        problem: &P,
        task: &P::Task,
        from: usize,
        to: usize,
        theta: &[Tensor<F>],
        state: &mut State<F>,
    ) -> Result<(), BloError> {
        let opt = &problem.inner_loop().optimizer;
        // A rule is taken resident when its step is fixed linear (D, read
        // and checked as `step_in_place`'s first step would).
        let resident = to >= from + 2
            && match opt {
                InnerOptimizer::Rule(rule) => self.prepare_linear(rule, from + 1, theta, state)?,
                _ => true,
            };
        if !resident {
            for j in from + 1..=to {
                self.step_in_place(problem, task, j, theta, state)?;
            }
            return Ok(());
        }
        let rule = matches!(opt, InnerOptimizer::Rule(_));
        if rule {
            // e stays in `state` as e_from (see the failure below).
            self.linear.hold_extra(&state.extra);
        }
        let (nt, keep) = (theta.len(), theta.len() + state.phi.len());
        let t = &mut self.ws.primal;
        t.clear();
        for x in theta {
            t.constant(x);
        }
        for x in &state.phi {
            t.var(x);
        }
        let mut failed = None;
        for j in from + 1..=to {
            let (value, finite) = {
                let leaves: hvp::Leaves<'_, F> = (0..keep).map(|i| t.var_at(i)).collect();
                let out = problem.inner_loss(t, task, j, &leaves[..nt], &leaves[nt..]);
                let value = out.item();
                t.backward(out);
                // Meta-SGD and momentum check every g before the update, as
                // `step_in_place` does (SGD and a rule check in the update).
                let finite = matches!(opt, InnerOptimizer::Sgd { .. } | InnerOptimizer::Rule(_))
                    || leaves[nt..]
                        .iter()
                        .all(|&v| t.grad_ref(v).is_none_or(|g| all_finite(&g)));
                (value, finite)
            };
            if !value.is_finite() || !finite {
                let what = if value.is_finite() {
                    "inner gradient"
                } else {
                    "inner loss"
                };
                failed = Some(non_finite(what, j));
                break;
            }
            // φ_j into φ's leaves by `step_in_place`'s update: the hand
            // optimiser's `update_tensor`, or the rule's D on the tensor's
            // segment (a structural zero, no adjoint reaching φ_i, is applied
            // as zeros).
            let (mut g_finite, mut out_finite) = (true, true);
            let (phi, extra) = (&state.phi, &mut state.extra);
            let (linear, segments) = (&mut self.linear, &self.flat.segments);
            t.rewind_updating(keep, |i, x, g| {
                let Some(k) = i.checked_sub(nt) else {
                    return;
                };
                let (gf, of) = if rule {
                    linear.step_segment(segments.range(k), x, g)
                } else {
                    let v = extra.get_mut(k).map(|v| v.data_mut());
                    (
                        update_tensor(opt, theta, k, || phi[k].shape(), x, g, v),
                        true,
                    )
                };
                (g_finite, out_finite) = (g_finite && gf, out_finite && of);
            });
            if !(g_finite && out_finite) {
                // φ's leaves (and a rule's held e) are partly updated;
                // state_{j−1} is recomputed from state_from (unchanged so
                // far: φ and a rule's e are copied out at the end) by the
                // same steps. A non-finite g is named first, as
                // `step_in_place` checks g before the new state.
                for k in from + 1..j {
                    self.step_in_place(problem, task, k, theta, state)?;
                }
                let what = if g_finite {
                    "inner state"
                } else {
                    "inner gradient"
                };
                return Err(non_finite(what, j));
            }
        }
        let t = &self.ws.primal;
        for (i, p) in state.phi.iter_mut().enumerate() {
            p.data_mut().copy_from_slice(&t.value_ref(t.var_at(nt + i)));
        }
        if rule {
            self.linear.release_extra(&mut state.extra);
        }
        failed.map_or(Ok(()), Err)
    }
}
