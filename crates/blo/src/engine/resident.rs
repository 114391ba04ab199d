//! Several SGD steps with θ and φ resident on the primal tape: recorded once
//! as its first leaves, kept across every step by [`tape::Tape::rewind_updating`],
//! which writes φ_j = φ_{j−1} − α g_j into φ's leaves from their adjoints. No
//! copy of θ or φ into fresh leaves per step; φ is copied out once, at the end.
//!
//! Every step records the same nodes on leaves of the same values as
//! [`InnerWorkspace::step_in_place`] and updates φ by the same kernel
//! (`tape::kernels::sub_scaled_finite`), so the states are bit for bit those
//! of step-by-step advancing, and a checkpoint recomputed by either path is
//! the same state.

use tape::{Float, Tensor};

use crate::engine::step::{non_finite, update, InnerWorkspace, State};
use crate::error::BloError;
use crate::problem::{InnerOptimizer, Problem};

impl<F: Float> InnerWorkspace<F> {
    /// Steps `from + 1 ..= to` in place: `state` goes from state_from to
    /// state_to, the states of [`InnerWorkspace::step_in_place`] called for
    /// each step, bit for bit. With plain SGD and two steps or more, θ and φ
    /// stay on the tape from step to step (see the module docs); otherwise
    /// this is `step_in_place` per step.
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
    /// advancing (on a non-finite gradient, φ_{j−1} is recomputed from
    /// state_from by the steps from + 1 ..= j − 1: φ's leaves hold a
    /// partly updated φ, and keeping a copy for this rare case would cost
    /// the copy per step that this path saves).
    pub fn advance<P: Problem<F>>(
        &mut self,
        problem: &P,
        task: &P::Task,
        from: usize,
        to: usize,
        theta: &[Tensor<F>],
        state: &mut State<F>,
    ) -> Result<(), BloError> {
        let lr = match &problem.inner_loop().optimizer {
            InnerOptimizer::Sgd { lr } if to >= from + 2 => *lr,
            _ => {
                for j in from + 1..=to {
                    self.step_in_place(problem, task, j, theta, state)?;
                }
                return Ok(());
            }
        };
        let a = F::from_f64(lr);
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
            let value = {
                let leaves: hvp::Leaves<'_, F> = (0..keep).map(|i| t.var_at(i)).collect();
                let out = problem.inner_loss(t, task, j, &leaves[..nt], &leaves[nt..]);
                let value = out.item();
                t.backward(out);
                value
            };
            if !value.is_finite() {
                failed = Some(non_finite("inner loss", j));
                break;
            }
            // φ_j = φ_{j−1} − α g_j into φ's leaves, g checked in the same
            // pass; a structural zero (no adjoint reached φ_i) is applied as
            // zeros, as `step_in_place` does.
            let mut finite = true;
            t.rewind_updating(keep, |i, x, g| {
                if i < nt {
                    return;
                }
                match g {
                    Some(g) => finite &= tape::kernels::sub_scaled_finite(x, g, a),
                    None => update(x, None, F::zero(), |x, gi| *x -= a * gi),
                }
            });
            if !finite {
                // φ's leaves are partly updated: state_{j−1} is recomputed
                // from state_from (unchanged so far) by the same steps.
                for k in from + 1..j {
                    self.step_in_place(problem, task, k, theta, state)?;
                }
                return Err(non_finite("inner gradient", j));
            }
        }
        let t = &self.ws.primal;
        for (i, p) in state.phi.iter_mut().enumerate() {
            p.data_mut().copy_from_slice(&t.value_ref(t.var_at(nt + i)));
        }
        failed.map_or(Ok(()), Err)
    }
}
