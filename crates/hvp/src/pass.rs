//! The passes every product is made of, with their results read in place.
//!
//! Each pass clears one of the [`Workspace`]'s tapes, records the inputs as
//! leaves, lets the caller record the function on them (a closure, so any
//! function of any number of input groups can be differentiated: an
//! [`crate::Objective`], a bilevel problem's inner loss of (θ, φ), an initial
//! state map Φ_0(θ)), and sweeps once:
//!
//! | pass | tape | what the inputs' adjoints hold |
//! |---|---|---|
//! | [`Workspace::grad_pass`] | `F` | ∇f |
//! | [`Workspace::dual_pass`] | `Dual<F>` | ∇f in `.v`, H·v in `.d` (v the seeded tangents) |
//! | [`Workspace::vjp_add`] | `F` | (written into the caller's buffers) `acc += Jᵀu` |
//! | [`Workspace::vjp_pass`] | `F` | Jᵀu (one sweep seeded at every output) |
//! | [`Workspace::jvp_into`] | `Dual<F>` | (written into the caller's buffers) J·v |
//!
//! A [`Pass`] borrows the tape: the gradient and the products are read from
//! the tape's adjoint arena without copying (`None` is a structural zero: no
//! adjoint reached that input). Every higher-level product of this crate
//! ([`Workspace::hvp`], [`Workspace::mixed_hvp`], the [`crate::Hessian`]
//! operator, …) is one of these passes, and so is every second-order product
//! of the `blo` crate.

use std::cell::Ref;

use smallvec::SmallVec;
use tape::{Dual, Float, Real, Tape, Tensor, Var};

use crate::workspace::Workspace;

/// How one input enters a dual pass.
#[derive(Copy, Clone, Debug)]
pub enum Seed<'a, F> {
    /// Differentiable, with this tangent (one value per element, row-major).
    Tangent(&'a [F]),
    /// Differentiable, with this tangent, and only the tangent part of its
    /// adjoint (the H·v row block) is read: the products that feed only the
    /// primal part (∇f) of this input's adjoint are skipped, so after a
    /// [`Workspace::dual_pass`] its adjoint's `.v` is unspecified (zero or
    /// partial) and its `.d` is bit for bit that of [`Seed::Tangent`]
    /// ([`tape::Tape::tangent_leaf_with`]).
    HvOnly(&'a [F]),
    /// Differentiable, zero tangent.
    Zero,
    /// Not differentiated: no adjoint is computed for it (pruned by
    /// `requires_grad`).
    Constant,
}

/// The leaves of a pass's inputs, in order (inline up to 32: a bilevel pass
/// records θ and φ together, and models rarely have more than 16 tensors
/// each, so collecting them does not allocate).
pub type Leaves<'t, T> = SmallVec<[Var<'t, T>; 32]>;

/// A recorded and swept scalar function: its value and, per input, the
/// adjoint read in place from the tape.
pub struct Pass<'t, T: Real> {
    tape: &'t Tape<T>,
    inputs: Leaves<'t, T>,
    value: T,
}

impl<'t, T: Real> Pass<'t, T> {
    /// f at the point (for a dual pass: `.v` is f, `.d` the directional
    /// derivative ⟨∇f, v⟩).
    pub fn value(&self) -> T {
        self.value
    }

    /// The tape the pass was recorded on.
    pub fn tape(&self) -> &'t Tape<T> {
        self.tape
    }

    /// The input leaves, in the order the inputs were given.
    pub fn inputs(&self) -> &[Var<'t, T>] {
        &self.inputs
    }

    /// The adjoint of input `i` (∂f/∂x_i; on a dual pass the gradient in `.v`
    /// and the Hessian-vector product row block in `.d`), or `None` if no
    /// adjoint reached it (a structural zero) or it was a constant.
    ///
    /// # Panics
    /// If `i` is not an input index.
    #[track_caller]
    pub fn adjoint(&self, i: usize) -> Option<Ref<'t, [T]>> {
        let n = self.inputs.len();
        let v = *self
            .inputs
            .get(i)
            .unwrap_or_else(|| panic!("Pass::adjoint: input {i} of {n}"));
        self.tape.grad_ref(v)
    }
}

impl<F: Float> Workspace<F> {
    /// f(x) and ∇f(x) by one reverse sweep, with f recorded by `f` on the
    /// cleared primal tape over leaves for `inputs` (`(x_i, differentiate)`;
    /// a leaf with `false` gets no adjoint). The value is that of the
    /// recorded output, which must be a scalar (one element).
    ///
    /// ```
    /// use hvp::Workspace;
    /// use tape::Tensor;
    /// // f(x, y) = Σ x²·y: ∇_x = 2xy, y not differentiated.
    /// let (x, y) = (Tensor::vector(vec![1.0, 2.0]), Tensor::vector(vec![3.0, 3.0]));
    /// let mut ws = Workspace::<f64>::new();
    /// let p = ws.grad_pass([(&x, true), (&y, false)], |_, v| (v[0].square() * v[1]).sum());
    /// assert_eq!(p.value(), 15.0);
    /// assert_eq!(&*p.adjoint(0).unwrap(), &[6.0, 12.0]);
    /// assert!(p.adjoint(1).is_none());
    /// ```
    ///
    /// # Panics
    /// If the recorded output is not a scalar.
    #[track_caller]
    pub fn grad_pass<'t, 'a>(
        &'t mut self,
        inputs: impl IntoIterator<Item = (&'a Tensor<F>, bool)>,
        f: impl FnOnce(&'t Tape<F>, &[Var<'t, F>]) -> Var<'t, F>,
    ) -> Pass<'t, F>
    where
        F: 'a,
    {
        let (t, inputs) = self.primal_leaves(inputs);
        let out = f(t, &inputs);
        let value = out.item();
        t.backward(out);
        Pass {
            tape: t,
            inputs,
            value,
        }
    }

    /// One forward-over-reverse pass: f recorded by `f` on the cleared dual
    /// tape at x + v ε (the seeds give each input's tangent v, or none), then
    /// one reverse sweep. Each input's adjoint holds ∇f(x) in `.v` and the row
    /// block of H(x)·v in `.d`: with a tangent on a group φ only and the
    /// inputs (θ, φ), the φ adjoints hold H_φφ·v and the θ adjoints the mixed
    /// product H_θφ·v = ∂²f/∂θ∂φ·v.
    ///
    /// ```
    /// use hvp::{Seed, Workspace};
    /// use tape::Tensor;
    /// // f(θ, φ) = θ·φ² (scalars) at θ = 3, φ = 2, v_φ = 1:
    /// // ∇ = (φ², 2θφ) = (4, 12); H_φφ v = 2θ = 6; H_θφ v = 2φ = 4.
    /// let (th, ph) = (Tensor::vector(vec![3.0]), Tensor::vector(vec![2.0]));
    /// let mut ws = Workspace::<f64>::new();
    /// let p = ws.dual_pass([(&th, Seed::Zero), (&ph, Seed::Tangent(&[1.0]))], |_, x| {
    ///     (x[0] * x[1] * x[1]).sum()
    /// });
    /// assert_eq!(p.value().v, 12.0);
    /// let (a, b) = (p.adjoint(0).unwrap()[0], p.adjoint(1).unwrap()[0]);
    /// assert_eq!((a.v, a.d, b.v, b.d), (4.0, 4.0, 12.0, 6.0));
    /// ```
    ///
    /// # Panics
    /// If a tangent's length differs from its input's element count, or the
    /// recorded output is not a scalar.
    #[track_caller]
    pub fn dual_pass<'t, 'a>(
        &'t mut self,
        seeds: impl IntoIterator<Item = (&'a Tensor<F>, Seed<'a, F>)>,
        f: impl FnOnce(&'t Tape<Dual<F>>, &[Var<'t, Dual<F>>]) -> Var<'t, Dual<F>>,
    ) -> Pass<'t, Dual<F>>
    where
        F: 'a,
    {
        self.dual.clear();
        let t: &'t Tape<Dual<F>> = &self.dual;
        let inputs = dual_leaves(t, seeds);
        let out = f(t, &inputs);
        let value = out.item();
        t.backward(out);
        Pass {
            tape: t,
            inputs,
            value,
        }
    }

    /// `acc += Jᵀu` for the map x ↦ (y_1, …, y_m) recorded by `f` on the
    /// cleared primal tape (u one cotangent per output, shaped like it; `acc`
    /// one tensor per input, shaped like it): one reverse sweep of Σ_i ⟨y_i, u_i⟩.
    /// When the map returns its inputs themselves (y_i is leaf i, as for
    /// MAML's Φ_0(θ) = θ), the sweep is skipped and u is added as `0 + u`,
    /// the bits the sweep would give.
    ///
    /// ```
    /// use hvp::Workspace;
    /// use smallvec::smallvec;
    /// use tape::Tensor;
    /// // y = 2x: Jᵀu = 2u.
    /// let x = [Tensor::vector(vec![1.0, -1.0])];
    /// let mut acc = [Tensor::vector(vec![10.0, 10.0])];
    /// Workspace::<f64>::new().vjp_add(&x, |_, v| smallvec![v[0] * 2.0],
    ///     &[Tensor::vector(vec![0.5, 1.0])], &mut acc);
    /// assert_eq!(acc[0].data(), &[11.0, 12.0]);
    /// ```
    ///
    /// # Panics
    /// If `u` does not have one tensor per output, shaped like it, or `acc`
    /// one per input.
    #[track_caller]
    pub fn vjp_add<'t>(
        &'t mut self,
        x: &[Tensor<F>],
        f: impl FnOnce(&'t Tape<F>, &[Var<'t, F>]) -> Leaves<'t, F>,
        u: &[Tensor<F>],
        acc: &mut [Tensor<F>],
    ) {
        self.primal.clear();
        let t: &'t Tape<F> = &self.primal;
        let inputs: Leaves<'t, F> = x
            .iter()
            .map(|xi| t.leaf(xi.shape(), xi.data(), true))
            .collect();
        let outs = f(t, &inputs);
        assert_eq!(
            outs.len(),
            u.len(),
            "vjp_add: the map has {} outputs but {} cotangents",
            outs.len(),
            u.len()
        );
        assert_eq!(
            acc.len(),
            x.len(),
            "vjp_add: {} inputs but {} accumulators",
            x.len(),
            acc.len()
        );
        for (o, ui) in outs.iter().zip(u) {
            assert!(
                o.shape() == ui.shape(),
                "vjp_add: output {:?} but cotangent {:?}",
                o.shape(),
                ui.shape()
            );
        }
        let identity = outs.len() == inputs.len()
            && outs
                .iter()
                .zip(&inputs)
                .all(|(o, l)| o.index() == l.index());
        if identity {
            for (g, ui) in acc.iter_mut().zip(u) {
                for (a, &b) in g.data_mut().iter_mut().zip(ui.data()) {
                    *a += F::zero() + b;
                }
            }
            return;
        }
        if outs.is_empty() {
            return;
        }
        // One sweep seeded with u_i at y_i (no recorded Σ⟨y_i, u_i⟩: its
        // reduction cost as much as the sweep on a stack of tasks' φ_0). The
        // adjoints are the same bits: the recorded sum seeded each y_i with 1·u_i.
        let seeds: SmallVec<[(Var<'t, F>, &[F]); 16]> =
            outs.iter().zip(u).map(|(&y, ui)| (y, ui.data())).collect();
        t.backward_seeded(&seeds);
        for (g, &v) in acc.iter_mut().zip(&inputs) {
            if let Some(d) = t.grad_ref(v) {
                for (a, &b) in g.data_mut().iter_mut().zip(d.iter()) {
                    *a += b;
                }
            } else {
                for a in g.data_mut() {
                    *a += F::zero();
                }
            }
        }
    }

    /// Jᵀu for the map x ↦ (y_1, …, y_m) recorded by `f` on the cleared
    /// primal tape over leaves for `inputs` (`(x_i, differentiate)`, as in
    /// [`Workspace::grad_pass`]), read in place: one reverse sweep seeded
    /// with u_i at output y_i (u one cotangent per output, shaped like it;
    /// [`Tape::backward_seeded`]). Input i's adjoint is (Jᵀu)_i (`None`: a
    /// structural zero, or a leaf with `false`); the pass's value is not
    /// computed (zero).
    ///
    /// ```
    /// use hvp::{Leaves, Workspace};
    /// use tape::Tensor;
    /// // (y_1, y_2) = (x·a, x²): Jᵀu = (a u_1 + 2x u_2, x u_1).
    /// let (x, a) = (Tensor::vector(vec![3.0]), Tensor::vector(vec![2.0]));
    /// let (u1, u2) = (Tensor::vector(vec![1.0]), Tensor::vector(vec![0.5]));
    /// let mut ws = Workspace::<f64>::new();
    /// let p = ws.vjp_pass([(&x, true), (&a, true)],
    ///     |_, v| Leaves::from_slice(&[v[0] * v[1], v[0].square()]), [&u1, &u2]);
    /// assert_eq!(p.adjoint(0).unwrap()[0], 2.0 + 3.0);
    /// assert_eq!(p.adjoint(1).unwrap()[0], 3.0);
    /// ```
    ///
    /// # Panics
    /// If `u` does not have one tensor per output, shaped like it.
    #[track_caller]
    pub fn vjp_pass<'t, 'a>(
        &'t mut self,
        inputs: impl IntoIterator<Item = (&'a Tensor<F>, bool)>,
        f: impl FnOnce(&'t Tape<F>, &[Var<'t, F>]) -> Leaves<'t, F>,
        u: impl IntoIterator<Item = &'a Tensor<F>> + Clone,
    ) -> Pass<'t, F>
    where
        F: 'a,
    {
        let (t, inputs) = self.primal_leaves(inputs);
        let outs = f(t, &inputs);
        let n_u = u.clone().into_iter().count();
        assert_eq!(
            outs.len(),
            n_u,
            "vjp_pass: the map has {} outputs but {} cotangents",
            outs.len(),
            n_u
        );
        for (o, ui) in outs.iter().zip(u.clone()) {
            assert!(
                o.shape() == ui.shape(),
                "vjp_pass: output {:?} but cotangent {:?}",
                o.shape(),
                ui.shape()
            );
        }
        // One sweep seeded at every output (no Σ⟨y_i, u_i⟩ recorded).
        let seeds: SmallVec<[(Var<'t, F>, &[F]); 32]> =
            outs.iter().zip(u).map(|(&y, ui)| (y, ui.data())).collect();
        if !seeds.is_empty() {
            t.backward_seeded(&seeds);
        }
        Pass {
            tape: t,
            inputs,
            value: F::zero(),
        }
    }

    /// J·ẋ for the map x ↦ (y_1, …, y_m) recorded by `f` on the cleared dual
    /// tape at x + ẋ ε: one forward pass (the forward rule of every op, run on
    /// dual numbers, is its JVP). `out` is overwritten with one tensor per
    /// output, shaped like it.
    ///
    /// ```
    /// use hvp::Workspace;
    /// use smallvec::smallvec;
    /// use tape::Tensor;
    /// // y = x²: J·ẋ = 2x·ẋ.
    /// let mut out = Vec::new();
    /// Workspace::<f64>::new().jvp_into(&[Tensor::vector(vec![3.0])], &[Tensor::vector(vec![1.0])],
    ///     |_, v| smallvec![v[0].square()], &mut out);
    /// assert_eq!(out[0].data(), &[6.0]);
    /// ```
    ///
    /// # Panics
    /// If `x_dot` does not have one tensor per input of the input's shape.
    #[track_caller]
    pub fn jvp_into<'t>(
        &'t mut self,
        x: &[Tensor<F>],
        x_dot: &[Tensor<F>],
        f: impl FnOnce(&'t Tape<Dual<F>>, &[Var<'t, Dual<F>>]) -> Leaves<'t, Dual<F>>,
        out: &mut Vec<Tensor<F>>,
    ) {
        assert_eq!(
            x.len(),
            x_dot.len(),
            "jvp_into: {} inputs but {} tangents",
            x.len(),
            x_dot.len()
        );
        self.dual.clear();
        let t: &'t Tape<Dual<F>> = &self.dual;
        let inputs = dual_leaves(
            t,
            x.iter().zip(x_dot).map(|(xi, vi)| {
                assert!(
                    xi.shape() == vi.shape(),
                    "jvp_into: input {:?} but tangent {:?}",
                    xi.shape(),
                    vi.shape()
                );
                (xi, Seed::Tangent(vi.data()))
            }),
        );
        let outs = f(t, &inputs);
        out.clear();
        out.extend(outs.iter().map(|&y| {
            let d = t.value_ref(y);
            Tensor::new(y.shape(), d.iter().map(|x| x.d).collect())
        }));
    }

    /// Records a map on the cleared primal tape over constant leaves for `x`
    /// and returns what `f` returns (e.g. output variables, read with
    /// `Tape::value_ref`): a forward evaluation with no derivative.
    pub fn eval<'t, 'a, R>(
        &'t mut self,
        x: impl IntoIterator<Item = &'a Tensor<F>>,
        f: impl FnOnce(&'t Tape<F>, &[Var<'t, F>]) -> R,
    ) -> R
    where
        F: 'a,
    {
        self.primal.clear();
        let t: &'t Tape<F> = &self.primal;
        let inputs: Leaves<'t, F> = x
            .into_iter()
            .map(|xi| t.leaf(xi.shape(), xi.data(), false))
            .collect();
        f(t, &inputs)
    }
}

impl<F: Float> Workspace<F> {
    /// Clears the primal tape and records a leaf per input (`(x_i, differentiate)`).
    fn primal_leaves<'t, 'a>(
        &'t mut self,
        inputs: impl IntoIterator<Item = (&'a Tensor<F>, bool)>,
    ) -> (&'t Tape<F>, Leaves<'t, F>)
    where
        F: 'a,
    {
        self.primal.clear();
        let t: &'t Tape<F> = &self.primal;
        let leaves = inputs
            .into_iter()
            .map(|(x, rg)| t.leaf(x.shape(), x.data(), rg))
            .collect();
        (t, leaves)
    }
}

/// Records each input as a dual leaf x + v ε, written straight into the
/// tape's arena.
#[track_caller]
pub(crate) fn dual_leaves<'t, 'a, F: Float + 'a>(
    t: &'t Tape<Dual<F>>,
    seeds: impl IntoIterator<Item = (&'a Tensor<F>, Seed<'a, F>)>,
) -> Leaves<'t, Dual<F>> {
    seeds
        .into_iter()
        .map(|(x, seed)| dual_leaf(t, x, seed, false))
        .collect()
}

/// One dual leaf x + v ε for `seed`. With `in_place`, a [`Seed::HvOnly`]
/// input becomes a source leaf ([`Tape::tangent_leaf_source`]) whose value
/// is not written: the caller registers x and v for it
/// ([`tape::kernels::with_plane_sources`]) while the pass runs.
#[track_caller]
pub(crate) fn dual_leaf<'t, F: Float>(
    t: &'t Tape<Dual<F>>,
    x: &Tensor<F>,
    seed: Seed<'_, F>,
    in_place: bool,
) -> Var<'t, Dual<F>> {
    let requires_grad = !matches!(seed, Seed::Constant);
    if let Seed::Tangent(v) | Seed::HvOnly(v) = seed {
        assert!(
            v.len() == x.numel(),
            "dual pass: input {:?} ({} elements) but a tangent of {} elements",
            x.shape(),
            x.numel(),
            v.len()
        );
    }
    let fill = |out: &mut [Dual<F>]| match seed {
        Seed::Tangent(v) | Seed::HvOnly(v) => tape::kernels::zip_duals(x.data(), v, out),
        Seed::Zero | Seed::Constant => {
            for (o, &a) in out.iter_mut().zip(x.data()) {
                *o = Dual::constant(a);
            }
        }
    };
    match seed {
        Seed::HvOnly(_) if in_place => t.tangent_leaf_source(x.shape()),
        Seed::HvOnly(_) => t.tangent_leaf_with(x.shape(), fill),
        _ => t.leaf_with(x.shape(), requires_grad, fill),
    }
}
