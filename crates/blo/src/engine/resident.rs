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

use super::tiles;
use crate::engine::step::{
    non_finite, tensors_finite, update_tensor, Cotangent, InnerWorkspace, OuterGrad, State,
};
use crate::error::BloError;
use crate::problem::{InnerOptimizer, Problem};

/// Where the resident steps take φ_from for φ's leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Start {
    /// From the state.
    State,
    /// φ_0 = B tiles of θ ([`crate::Problem::initial_state_tiles`]), written
    /// straight into the leaves.
    Tiles(usize),
}

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
        self.resident_steps(problem, task, from, to, theta, state, Start::State)?;
        let t = &self.ws.primal;
        for (i, p) in state.phi.iter_mut().enumerate() {
            p.data_mut()
                .copy_from_slice(&t.value_ref(t.var_at(theta.len() + i)));
        }
        if matches!(opt, InnerOptimizer::Rule(_)) {
            self.linear.release_extra(&mut state.extra);
        }
        Ok(())
    }

    /// [`InnerWorkspace::advance`] from state_from to state_to, then
    /// [`InnerWorkspace::outer_grad`] at (θ, φ_to), on one tape: the last
    /// inner step fused with the outer loss. With SGD, Meta-SGD or momentum
    /// the steps run with θ and φ resident on the primal tape (as `advance`'s
    /// steps do, even for one step), and L_out is recorded on the same tape
    /// over φ's leaves, which then hold φ_to, and θ recorded once more as
    /// variables; so φ_to is not copied into fresh leaves, nor out into the
    /// state unless asked for. Same bits as `advance` then `outer_grad`: the
    /// states of the same update function, and L_out recorded as the same
    /// nodes on leaves of the same values. (A rule's steps run as `advance`
    /// runs them, then `outer_grad`.)
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
    /// #     fn outer_loss<'t, T: Real<Base = f64>>(&self, _t: &'t Tape<T>, _c: &f64,
    /// #         th: &[Var<'t, T>], phi: &[Var<'t, T>]) -> Var<'t, T> {
    /// #         (phi[0] * th[0]).sum() + phi[0].square().sum()
    /// #     }
    /// # }
    /// let p = Quad { inner: InnerLoop::sgd(3, 0.3)? };
    /// let theta = [Tensor::vector(vec![0.5, -1.0])];
    /// let mut ws = InnerWorkspace::new();
    /// let s0 = ws.initial_state(&p, &1.0, &theta)?;
    /// let (mut a, mut b) = (s0.clone(), s0);
    /// let fused = ws.advance_outer_grad(&p, &1.0, 0, 3, &theta, &mut a)?;
    /// ws.advance(&p, &1.0, 0, 3, &theta, &mut b)?;
    /// let apart = ws.outer_grad(&p, &1.0, &theta, &b.phi)?;
    /// assert_eq!((fused.loss, &fused.theta, &fused.phi), (apart.loss, &apart.theta, &apart.phi));
    /// assert_eq!(a, b); // the state φ_3, bit for bit
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As `advance` (`state` then as `advance` leaves it), then as
    /// `outer_grad`.
    pub fn advance_outer_grad<P: Problem<F>>(
        &mut self,
        problem: &P,
        task: &P::Task,
        from: usize,
        to: usize,
        theta: &[Tensor<F>],
        state: &mut State<F>,
    ) -> Result<OuterGrad<F>, BloError> {
        let mut gt: Vec<Tensor<F>> = theta.iter().map(|x| Tensor::zeros(x.shape())).collect();
        let mut cot = Cotangent {
            phi: Vec::new(),
            extra: Vec::new(),
        };
        let loss = self.advance_outer_grad_into(
            problem,
            task,
            (from, to),
            theta,
            state,
            (Start::State, true),
            &mut gt,
            &mut cot,
        )?;
        Ok(OuterGrad {
            loss,
            theta: gt,
            phi: cot.phi,
        })
    }

    /// [`InnerWorkspace::advance_outer_grad`] written into `g_theta` (shaped
    /// like θ; overwritten) and `cot` (shaped like the state: ∇_φ L_out on
    /// φ, zeros on the extra state). Returns L_out. With
    /// [`Start::Tiles`]`(B)` (`from` = 0 and [`crate::Problem::initial_state_tiles`]
    /// saying B), φ_0 is B tiles of θ written straight into φ's leaves, not
    /// read from `state` (the `Init` fused in too). Without `keep_state`, `state.phi` holds unspecified values afterwards (for a
    /// sweep that frees the state right after the turn); on error the
    /// gradients hold unspecified values.
    ///
    /// # Panics
    /// If `g_theta` does not have one tensor per θ tensor, or a tensor's
    /// size differs from its variable's.
    #[track_caller]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn advance_outer_grad_into<P: Problem<F>>(
        &mut self,
        problem: &P,
        task: &P::Task,
        (from, to): (usize, usize),
        theta: &[Tensor<F>],
        state: &mut State<F>,
        (start, keep_state): (Start, bool),
        g_theta: &mut [Tensor<F>],
        cot: &mut Cotangent<F>,
    ) -> Result<F, BloError> {
        if let Start::Tiles(b) = start {
            // The shapes, for the cotangent.
            tiles::tiled_shapes(theta, b, state);
        }
        cot.outer_like(state);
        let g_phi = &mut cot.phi[..];
        let (nt, np) = (theta.len(), state.phi.len());
        assert!(
            g_theta.len() == nt,
            "advance_outer_grad: {} gradient tensors for {nt} θ tensors",
            g_theta.len(),
        );
        if matches!(problem.inner_loop().optimizer, InnerOptimizer::Rule(_)) {
            if let Start::Tiles(b) = start {
                tiles::tiled_state_into(theta, b, state)?;
            }
            self.advance(problem, task, from, to, theta, state)?;
            return self.outer_grad_into(problem, task, theta, &state.phi, g_theta, g_phi);
        }
        self.resident_steps(problem, task, from, to, theta, state, start)?;
        let step = problem.inner_loop().steps + 1;
        let t = &self.ws.primal;
        // θ once more, as variables (the steps held it as constants), after
        // φ's leaves, which hold φ_to.
        let th: hvp::Leaves<'_, F> = theta.iter().map(|x| t.var(x)).collect();
        let phi: hvp::Leaves<'_, F> = (nt..nt + np).map(|i| t.var_at(i)).collect();
        let out = problem.outer_loss(t, task, &th, &phi);
        let value = out.item();
        t.backward(out);
        if keep_state {
            for (p, &v) in state.phi.iter_mut().zip(&phi) {
                p.data_mut().copy_from_slice(&t.value_ref(v));
            }
        }
        if !value.is_finite() {
            return Err(non_finite("outer loss", step));
        }
        for (g, &v) in g_theta
            .iter_mut()
            .zip(&th)
            .chain(g_phi.iter_mut().zip(&phi))
        {
            t.grad_into(v, g.data_mut());
        }
        if !tensors_finite(g_theta.iter().chain(g_phi.iter())) {
            return Err(non_finite("outer gradient", step));
        }
        Ok(value)
    }

    /// Steps `from + 1 ..= to` (at least one) on the primal tape, θ recorded
    /// as its first |θ| leaves (constants) and φ as the next |φ| (variables):
    /// on success φ_to is in φ's leaves (not yet in `state`; momentum's
    /// velocity is in `state`, a fixed linear rule's extra state in the
    /// workspace). On error `state` is as [`InnerWorkspace::advance`] leaves
    /// it.
    #[allow(clippy::too_many_arguments)]
    fn resident_steps<P: Problem<F>>(
        &mut self,
        problem: &P,
        task: &P::Task,
        from: usize,
        to: usize,
        theta: &[Tensor<F>],
        state: &mut State<F>,
        start: Start,
    ) -> Result<(), BloError> {
        let opt = &problem.inner_loop().optimizer;
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
        match start {
            Start::State => {
                for x in &state.phi {
                    t.var(x);
                }
            }
            Start::Tiles(b) => {
                // φ_0 written straight into φ's leaves; `state` only shaped.
                tiles::tiled_shapes(theta, b, state);
                for (x, p) in theta.iter().zip(&state.phi) {
                    t.leaf_with(p.shape(), true, |out| tiles::tile_into(x, out));
                }
                tiles::check_initial(theta)?;
            }
        }
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
                // φ's leaves still hold φ_{j−1} (no update ran).
                for (i, p) in state.phi.iter_mut().enumerate() {
                    p.data_mut().copy_from_slice(&t.value_ref(t.var_at(nt + i)));
                }
                if rule {
                    self.linear.release_extra(&mut state.extra);
                }
                return Err(non_finite(what, j));
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
                // same steps (φ_0 written first if it went straight into
                // the leaves). A non-finite g is named first, as
                // `step_in_place` checks g before the new state.
                if let Start::Tiles(b) = start {
                    tiles::tiled_state_into(theta, b, state)?;
                }
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
        Ok(())
    }
}
