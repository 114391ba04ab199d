//! [`Workspace`]: reusable tapes and the passes that run on them.
//!
//! | pass | element type | result | cost |
//! |---|---|---|---|
//! | [`Workspace::value_and_grad`] | `F` | f, ∇f | forward + reverse |
//! | [`Workspace::jvp`], [`Workspace::jvp_vec`] | `Dual<F>` | f, J·v | one dual forward |
//! | [`Workspace::vjp_vec`] | `F` | y, Jᵀu | forward + reverse |
//! | [`Workspace::hvp`], [`Workspace::hvp_into`], [`Workspace::mixed_hvp`] | `Dual<F>` | f, ∇f, H·v | one dual forward + reverse |
//! | [`Workspace::hvp_only`], [`Workspace::hvp_only_into`] | `Dual<F>` | f, H·v | the same, without the primal weight-gradient products |

use smallvec::SmallVec;
use tape::kernels::PlaneSource;
use tape::{Dual, Float, Tape, Tensor, Var};

use crate::objective::{Objective, VectorFunction};
use crate::pass::{dual_leaf, dual_leaves, Leaves, Seed};

/// The value, gradient and Hessian-vector product of an [`Objective`] at a point.
#[derive(Clone, Debug)]
pub struct HvpOutput<F: Float> {
    /// f(x).
    pub value: F,
    /// ∇f(x), one tensor per input.
    pub grad: Vec<Tensor<F>>,
    /// H(x)·v, one tensor per input (row block i is Σ_j ∂²f/∂x_i∂x_j · v_j).
    pub hv: Vec<Tensor<F>>,
}

/// The result of [`Workspace::mixed_hvp`]: one dual pass of f(θ, φ) with a
/// tangent v on φ only.
#[derive(Clone, Debug)]
pub struct MixedHvp<F: Float> {
    /// f(θ, φ).
    pub value: F,
    /// ∂f/∂θ, one tensor per θ input.
    pub grad_theta: Vec<Tensor<F>>,
    /// ∂f/∂φ, one tensor per φ input.
    pub grad_phi: Vec<Tensor<F>>,
    /// H_φφ·v = (∂²f/∂φ∂φ)·v, one tensor per φ input.
    pub h_phiphi_v: Vec<Tensor<F>>,
    /// H_θφ·v = (∂²f/∂θ∂φ)·v, one tensor per θ input (the mixed block that
    /// implicit hypergradients need).
    pub h_thetaphi_v: Vec<Tensor<F>>,
}

/// Reusable tapes, so repeated products allocate nothing after the first.
///
/// Every pass clears the tape it uses (keeping the capacity of all its arenas),
/// records f once and sweeps once. Keep one `Workspace` per thread and reuse it
/// across inner steps.
#[derive(Debug, Default)]
pub struct Workspace<F: Float> {
    /// Tape for values and gradients.
    pub primal: Tape<F>,
    /// Tape for JVPs and HVPs.
    pub dual: Tape<Dual<F>>,
}

impl<F: Float> Workspace<F> {
    /// Empty tapes.
    pub fn new() -> Self {
        Workspace {
            primal: Tape::new(),
            dual: Tape::new(),
        }
    }

    /// f(x) and ∇f(x) by one reverse sweep.
    pub fn value_and_grad<O: Objective<F>>(
        &mut self,
        f: &O,
        x: &[Tensor<F>],
    ) -> (F, Vec<Tensor<F>>) {
        let p = self.grad_pass(x.iter().map(|xi| (xi, true)), |t, v| f.eval(t, v));
        let t = p.tape();
        (p.value(), p.inputs().iter().map(|&v| t.grad(v)).collect())
    }

    /// f(x) and the directional derivative ⟨∇f(x), v⟩ by one forward pass on
    /// dual numbers (a JVP), with one direction per input (for directions on
    /// some inputs only, see [`Workspace::jvp_partial`]).
    ///
    /// # Panics
    /// If `v` does not have one entry per input, or a direction's shape differs.
    #[track_caller]
    pub fn jvp<O: Objective<F>>(&mut self, f: &O, x: &[Tensor<F>], v: &[Tensor<F>]) -> (F, F) {
        check_directions("jvp", x, v);
        self.jvp_seeded(f, x.iter().zip(v).map(full_seed))
    }

    /// [`Workspace::jvp`] with a direction on some inputs only: `None` stands
    /// for a zero direction, which costs nothing (no zeros are stored or
    /// multiplied).
    ///
    /// # Panics
    /// If `v` does not have one entry per input, or a direction's shape differs.
    #[track_caller]
    pub fn jvp_partial<O: Objective<F>>(
        &mut self,
        f: &O,
        x: &[Tensor<F>],
        v: &[Option<Tensor<F>>],
    ) -> (F, F) {
        check_tangents("jvp_partial", x, v);
        self.jvp_seeded(f, x.iter().zip(v).map(opt_seed))
    }

    fn jvp_seeded<'a, O: Objective<F>>(
        &mut self,
        f: &O,
        seeds: impl Iterator<Item = (&'a Tensor<F>, Seed<'a, F>)>,
    ) -> (F, F)
    where
        F: 'a,
    {
        self.dual.clear();
        let t = &self.dual;
        let vars = dual_leaves(t, seeds);
        let out = f.eval(t, &vars).item();
        (out.v, out.d)
    }

    /// y = g(x) and J·v for a tensor-valued `g`, by one forward pass on dual
    /// numbers: the forward rule of every op, run on `Dual` elements, is that op's
    /// JVP. One direction per input; both outputs have the shape of y.
    ///
    /// # Panics
    /// If `v` does not have one entry per input, or a direction's shape differs.
    #[track_caller]
    pub fn jvp_vec<G: VectorFunction<F>>(
        &mut self,
        g: &G,
        x: &[Tensor<F>],
        v: &[Tensor<F>],
    ) -> (Tensor<F>, Tensor<F>) {
        check_directions("jvp_vec", x, v);
        self.jvp_vec_seeded(g, x.iter().zip(v).map(full_seed))
    }

    /// [`Workspace::jvp_vec`] with a direction on some inputs only (`None`: zero).
    ///
    /// # Panics
    /// If `v` does not have one entry per input, or a direction's shape differs.
    #[track_caller]
    pub fn jvp_vec_partial<G: VectorFunction<F>>(
        &mut self,
        g: &G,
        x: &[Tensor<F>],
        v: &[Option<Tensor<F>>],
    ) -> (Tensor<F>, Tensor<F>) {
        check_tangents("jvp_vec_partial", x, v);
        self.jvp_vec_seeded(g, x.iter().zip(v).map(opt_seed))
    }

    fn jvp_vec_seeded<'a, G: VectorFunction<F>>(
        &mut self,
        g: &G,
        seeds: impl Iterator<Item = (&'a Tensor<F>, Seed<'a, F>)>,
    ) -> (Tensor<F>, Tensor<F>)
    where
        F: 'a,
    {
        self.dual.clear();
        let t = &self.dual;
        let vars = dual_leaves(t, seeds);
        let out = g.eval(t, &vars);
        let vals = t.value_ref(out);
        let shape = out.shape();
        let y = Tensor::new(shape, vals.iter().map(|d| d.v).collect());
        let jv = Tensor::new(shape, vals.iter().map(|d| d.d).collect());
        (y, jv)
    }

    /// y = g(x) and the vector-Jacobian product Jᵀu (one tensor per input) by one
    /// reverse sweep seeded with the cotangent `u`.
    ///
    /// # Panics
    /// If `u` does not have the shape of y.
    #[track_caller]
    pub fn vjp_vec<G: VectorFunction<F>>(
        &mut self,
        g: &G,
        x: &[Tensor<F>],
        u: &Tensor<F>,
    ) -> (Tensor<F>, Vec<Tensor<F>>) {
        self.primal.clear();
        let t = &self.primal;
        let vars: SmallVec<[Var<'_, F>; 8]> = x.iter().map(|xi| t.var(xi)).collect();
        let out = g.eval(t, &vars);
        assert!(
            out.shape() == u.shape(),
            "vjp_vec: output {:?} but cotangent {:?}",
            out.shape(),
            u.shape()
        );
        t.backward_with(out, u.data());
        (out.value(), vars.iter().map(|&v| t.grad(v)).collect())
    }

    /// f(x), ∇f(x) and H(x)·v in one forward-over-reverse pass, with one
    /// direction per input (`v[i]` shaped like `x[i]`).
    ///
    /// ```
    /// use hvp::{Objective, Workspace};
    /// use tape::{Real, Tape, Tensor, Var};
    /// /// f(x) = Σ x³: ∇f = 3x², H·v = 6x ⊙ v.
    /// struct Cubic;
    /// impl Objective<f64> for Cubic {
    ///     fn eval<'t, T: Real<Base = f64>>(&self, _t: &'t Tape<T>, x: &[Var<'t, T>]) -> Var<'t, T> {
    ///         (x[0] * x[0] * x[0]).sum()
    ///     }
    /// }
    /// let x = [Tensor::vector(vec![1.0, 2.0])];
    /// let v = [Tensor::vector(vec![1.0, 0.5])];
    /// let out = Workspace::new().hvp(&Cubic, &x, &v);
    /// assert_eq!(out.hv[0].data(), &[6.0, 6.0]);
    /// ```
    ///
    /// # Panics
    /// If `v` does not have one entry per input, or a direction's shape differs.
    #[track_caller]
    pub fn hvp<O: Objective<F>>(
        &mut self,
        f: &O,
        x: &[Tensor<F>],
        v: &[Tensor<F>],
    ) -> HvpOutput<F> {
        check_directions("hvp", x, v);
        self.hvp_seeded(f, x, x.iter().zip(v).map(full_seed))
    }

    /// [`Workspace::hvp`] with a direction on some inputs only: `None` is a zero
    /// direction at no cost, so a direction on one group of inputs gives both
    /// the diagonal block H_φφ·v and the mixed block ∂²f/∂θ∂φ·v (for two groups,
    /// [`Workspace::mixed_hvp`] names them).
    ///
    /// # Panics
    /// If `v` does not have one entry per input, or a direction's shape differs.
    #[track_caller]
    pub fn hvp_partial<O: Objective<F>>(
        &mut self,
        f: &O,
        x: &[Tensor<F>],
        v: &[Option<Tensor<F>>],
    ) -> HvpOutput<F> {
        check_tangents("hvp_partial", x, v);
        self.hvp_seeded(f, x, x.iter().zip(v).map(opt_seed))
    }

    fn hvp_seeded<'a, O: Objective<F>>(
        &mut self,
        f: &O,
        x: &[Tensor<F>],
        seeds: impl Iterator<Item = (&'a Tensor<F>, Seed<'a, F>)>,
    ) -> HvpOutput<F>
    where
        F: 'a,
    {
        let p = self.dual_pass(seeds, |t, v| f.eval(t, v));
        let mut grad = Vec::with_capacity(x.len());
        let mut hv = Vec::with_capacity(x.len());
        for (&var, xi) in p.inputs().iter().zip(x) {
            let (g, h) = split_adjoint(p.tape(), var, xi);
            grad.push(g);
            hv.push(h);
        }
        HvpOutput {
            value: p.value().v,
            grad,
            hv,
        }
    }

    /// [`Workspace::hvp`] writing ∇f(x) and H(x)·v into caller-owned tensors
    /// (shaped like `x`) and returning f(x): a steady-state call allocates
    /// nothing in this crate (the tape and GEMM kernels have their own story).
    ///
    /// # Panics
    /// If `v`, `grad` or `hv` does not have one entry per input, or a shape differs.
    #[track_caller]
    pub fn hvp_into<O: Objective<F>>(
        &mut self,
        f: &O,
        x: &[Tensor<F>],
        v: &[Tensor<F>],
        grad: &mut [Tensor<F>],
        hv: &mut [Tensor<F>],
    ) -> F {
        check_directions("hvp_into", x, v);
        assert!(
            grad.len() == x.len() && hv.len() == x.len(),
            "hvp_into: {} inputs but {} gradient and {} product buffers",
            x.len(),
            grad.len(),
            hv.len()
        );
        for ((xi, g), h) in x.iter().zip(grad.iter()).zip(hv.iter()) {
            assert!(
                g.shape() == xi.shape() && h.shape() == xi.shape(),
                "hvp_into: input {:?} but buffers {:?} and {:?}",
                xi.shape(),
                g.shape(),
                h.shape()
            );
        }
        let p = self.dual_pass(x.iter().zip(v).map(full_seed), |t, v| f.eval(t, v));
        for (i, (g, h)) in grad.iter_mut().zip(hv.iter_mut()).enumerate() {
            let (g, h) = (g.data_mut(), h.data_mut());
            match p.adjoint(i) {
                Some(adj) => tape::kernels::split_duals(&adj, g, h),
                None => {
                    g.fill(F::zero());
                    h.fill(F::zero());
                }
            }
        }
        p.value().v
    }

    /// H(x)·v alone, written into caller-owned tensors shaped like `x`, and
    /// f(x) returned: the HVP-only pass, what JAX's `jvp(grad(f), (x,), (v,))[1]`
    /// computes.
    ///
    /// It is the pass of [`Workspace::hvp_into`] with every input seeded
    /// [`Seed::HvOnly`]: the reverse sweep on x + v ε gives each input the
    /// adjoint ∇f(x) + (H(x)·v) ε, and for a product `C = A·W` with a weight
    /// input `W` the adjoint ḡW = Aᵀ·ḡC has parts
    ///
    /// - ḡW.v = A.vᵀ·ḡC.v (the gradient, not wanted here), and
    /// - ḡW.d = A.vᵀ·ḡC.d + A.dᵀ·ḡC.v (the H·v block),
    ///
    /// so the primal weight-gradient products A.vᵀ·ḡC.v are skipped (decided per
    /// node: only the inputs' own adjoints lose their primal part; every
    /// intermediate adjoint keeps it, since nonlinear rules need ḡ.v for ḡ.d).
    /// The products that remain are those of the full pass, summed in the same
    /// order, so `hv` is bit for bit [`Workspace::hvp_into`]'s.
    ///
    /// ```
    /// use hvp::{Objective, Workspace};
    /// use tape::{Real, Tape, Tensor, Var};
    /// /// f(w) = Σ tanh(x·w) for a constant x [2, 3]: H = xᵀ diag(−2 t (1 − t²)) x.
    /// struct Layer(Tensor<f64>);
    /// impl Objective<f64> for Layer {
    ///     fn eval<'t, T: Real<Base = f64>>(&self, t: &'t Tape<T>, w: &[Var<'t, T>]) -> Var<'t, T> {
    ///         t.constant_base(&self.0).matmul(w[0]).tanh().sum()
    ///     }
    /// }
    /// let f = Layer(Tensor::new(&[2, 3], vec![0.1, 0.2, 0.3, -0.4, 0.5, 0.6]));
    /// let (x, v) = ([Tensor::new(&[3, 2], vec![0.3; 6])], [Tensor::new(&[3, 2], vec![1.0; 6])]);
    /// let mut ws = Workspace::new();
    /// let mut hv = vec![Tensor::zeros(&[3, 2])];
    /// let value = ws.hvp_only_into(&f, &x, &v, &mut hv);
    /// let full = ws.hvp(&f, &x, &v);
    /// assert_eq!(value, full.value);
    /// assert_eq!(hv[0], full.hv[0]);
    /// ```
    ///
    /// # Panics
    /// If `v` or `hv` does not have one entry per input, or a shape differs.
    #[track_caller]
    pub fn hvp_only_into<O: Objective<F>>(
        &mut self,
        f: &O,
        x: &[Tensor<F>],
        v: &[Tensor<F>],
        hv: &mut [Tensor<F>],
    ) -> F {
        check_directions("hvp_only_into", x, v);
        check_shapes("hvp_only_into", "input", x, hv.iter().map(Some));
        let seeds = || {
            x.iter()
                .zip(v)
                .map(|(xi, vi)| (xi, Seed::HvOnly(vi.data())))
        };
        let mut outs: SmallVec<[Option<&mut [F]>; 32]> =
            hv.iter_mut().map(|h| Some(h.data_mut())).collect();
        if let Some(value) = self.hvp_only_sunk(f, seeds(), &mut outs) {
            return value;
        }
        drop(outs);
        // A sink was written and the leaf's dual adjoint was reached too:
        // again without sinks, so that the sum is the tape's.
        let p = self.dual_pass(seeds(), |t, v| f.eval(t, v));
        for (i, h) in hv.iter_mut().enumerate() {
            let h = h.data_mut();
            match p.adjoint(i) {
                Some(adj) => tape::kernels::tangents_into(&adj, h),
                None => h.fill(F::zero()),
            }
        }
        p.value().v
    }

    /// The HVP-only pass with each output buffer (`outs[i]`, `None` for an
    /// input whose H·v is not wanted) registered as its leaf's tangent sink
    /// ([`tape::kernels::with_tangent_sinks`]): a weight whose H·v block is
    /// one product (the first layer's ḡW.d = xᵀ·ḡz.d, a hidden layer's
    /// ḡW.d = (hᵀ·ḡz).d) gets it written there, with no dual adjoint in
    /// between; the others are copied out of their dual adjoints. Returns
    /// f(x), or `None` (the buffers then hold garbage) if a leaf's sink was
    /// written and its dual adjoint was reached as well (a weight used by
    /// more than one rule): the two would be summed in another order than
    /// the tape's.
    fn hvp_only_sunk<'a, O: Objective<F>>(
        &mut self,
        f: &O,
        seeds: impl IntoIterator<Item = (&'a Tensor<F>, Seed<'a, F>)>,
        outs: &mut [Option<&mut [F]>],
    ) -> Option<F>
    where
        F: 'a,
    {
        self.dual.clear();
        let t = &self.dual;
        // The HVP-only inputs as source leaves: x and v are read where they
        // are (the first layer's product reads them in place; other ops
        // write the dual leaf once, as `dual_leaves` would have).
        let mut sources: SmallVec<[PlaneSource<'_, F>; 32]> = SmallVec::new();
        let inputs: Leaves<'_, Dual<F>> = seeds
            .into_iter()
            .map(|(x, seed)| {
                let leaf = dual_leaf(t, x, seed, true);
                if let Seed::HvOnly(v) = seed {
                    sources.push((leaf.index(), x.data(), v));
                }
                leaf
            })
            .collect();
        tape::kernels::with_plane_sources(t.id(), &sources, || {
            let out = f.eval(t, &inputs);
            let value = out.item();
            let mut sinks: SmallVec<[(usize, &mut [F]); 32]> = inputs
                .iter()
                .zip(outs.iter_mut())
                .filter_map(|(l, o)| Some((l.index(), o.as_deref_mut()?)))
                .collect();
            let mut taken: SmallVec<[bool; 32]> = SmallVec::from_elem(false, sinks.len());
            tape::kernels::with_tangent_sinks(&mut sinks, &mut taken, || t.backward(out));
            drop(sinks);
            let mut taken = taken.into_iter();
            for (&leaf, h) in inputs.iter().zip(outs.iter_mut()) {
                let Some(h) = h else { continue };
                match (t.grad_ref(leaf), taken.next() == Some(true)) {
                    (None, true) => {}
                    (Some(_), true) => return None,
                    (Some(adj), false) => tape::kernels::tangents_into(&adj, h),
                    (None, false) => h.fill(F::zero()),
                }
            }
            Some(value.v)
        })
    }

    /// H(x)·v alone, one tensor per input: [`Workspace::hvp_only_into`] into
    /// fresh tensors (see there for the math).
    ///
    /// ```
    /// use hvp::{Objective, Workspace};
    /// use tape::{Real, Tape, Tensor, Var};
    /// /// f(x) = Σ x³: H·v = 6x ⊙ v.
    /// struct Cubic;
    /// impl Objective<f64> for Cubic {
    ///     fn eval<'t, T: Real<Base = f64>>(&self, _t: &'t Tape<T>, x: &[Var<'t, T>]) -> Var<'t, T> {
    ///         (x[0] * x[0] * x[0]).sum()
    ///     }
    /// }
    /// let hv = Workspace::new().hvp_only(&Cubic, &[Tensor::vector(vec![1.0, 2.0])],
    ///     &[Tensor::vector(vec![1.0, 0.5])]);
    /// assert_eq!(hv[0].data(), &[6.0, 6.0]);
    /// ```
    ///
    /// # Panics
    /// If `v` does not have one entry per input, or a direction's shape differs.
    #[track_caller]
    pub fn hvp_only<O: Objective<F>>(
        &mut self,
        f: &O,
        x: &[Tensor<F>],
        v: &[Tensor<F>],
    ) -> Vec<Tensor<F>> {
        let mut hv: Vec<Tensor<F>> = x.iter().map(|xi| Tensor::zeros(xi.shape())).collect();
        self.hvp_only_into(f, x, v, &mut hv);
        hv
    }

    /// One dual pass of f(θ, φ) with the tangent `v_phi` on φ and none on θ.
    /// The objective is called with the inputs `θ₁, …, θ_a, φ₁, …, φ_b` in that
    /// order. Returns both gradients, H_φφ·v and the mixed block H_θφ·v: the
    /// two products an implicit hypergradient needs, for the price of one HVP.
    ///
    /// ```
    /// use hvp::{Objective, Workspace};
    /// use tape::{Real, Tape, Tensor, Var};
    ///
    /// /// f(θ, φ) = θ·φ² (scalars): H_φφ = 2θ, H_θφ = 2φ.
    /// struct F;
    /// impl Objective<f64> for F {
    ///     fn eval<'t, T: Real<Base = f64>>(&self, _t: &'t Tape<T>, x: &[Var<'t, T>]) -> Var<'t, T> {
    ///         (x[0] * x[1] * x[1]).sum()
    ///     }
    /// }
    /// let m = Workspace::new().mixed_hvp(
    ///     &F,
    ///     &[Tensor::vector(vec![3.0])],
    ///     &[Tensor::vector(vec![2.0])],
    ///     &[Tensor::vector(vec![1.0])],
    /// );
    /// assert_eq!(m.value, 12.0);
    /// assert_eq!(m.grad_theta[0].data(), &[4.0]); // φ²
    /// assert_eq!(m.grad_phi[0].data(), &[12.0]); // 2θφ
    /// assert_eq!(m.h_phiphi_v[0].data(), &[6.0]); // 2θ·v
    /// assert_eq!(m.h_thetaphi_v[0].data(), &[4.0]); // 2φ·v
    /// ```
    ///
    /// # Panics
    /// If `v_phi` does not have one tensor per φ input of the same shape.
    #[track_caller]
    pub fn mixed_hvp<O: Objective<F>>(
        &mut self,
        f: &O,
        theta: &[Tensor<F>],
        phi: &[Tensor<F>],
        v_phi: &[Tensor<F>],
    ) -> MixedHvp<F> {
        check_shapes("mixed_hvp", "φ input", phi, v_phi.iter().map(Some));
        let seeds = theta.iter().map(|th| (th, Seed::Zero)).chain(
            phi.iter()
                .zip(v_phi)
                .map(|(p, v)| (p, Seed::Tangent(v.data()))),
        );
        let p = self.dual_pass(seeds, |t, v| f.eval(t, v));
        let t = p.tape();
        let vars = p.inputs();
        let mut m = MixedHvp {
            value: p.value().v,
            grad_theta: Vec::with_capacity(theta.len()),
            grad_phi: Vec::with_capacity(phi.len()),
            h_phiphi_v: Vec::with_capacity(phi.len()),
            h_thetaphi_v: Vec::with_capacity(theta.len()),
        };
        for (&var, xi) in vars.iter().zip(theta.iter().chain(phi)) {
            let (g, h) = split_adjoint(t, var, xi);
            if m.grad_theta.len() < theta.len() {
                m.grad_theta.push(g);
                m.h_thetaphi_v.push(h);
            } else {
                m.grad_phi.push(g);
                m.h_phiphi_v.push(h);
            }
        }
        m
    }

    /// The allocation-free core of [`crate::Hessian`]: H_SS·v for the inputs in
    /// the set S (`wrt[i]`), with the others held constant (their adjoints are
    /// pruned). `v` and `hv` are the flat concatenation over S.
    pub(crate) fn hvp_flat<O: Objective<F>>(
        &mut self,
        f: &O,
        x: &[Tensor<F>],
        wrt: &[bool],
        v: &[F],
        hv: &mut [F],
    ) {
        let seeds = || {
            let mut at = 0;
            x.iter().zip(wrt).map(move |(xi, &w)| {
                if w {
                    // Only H·v is read: the primal weight-gradient products are skipped.
                    let s = Seed::HvOnly(&v[at..at + xi.numel()]);
                    at += xi.numel();
                    (xi, s)
                } else {
                    (xi, Seed::Constant)
                }
            })
        };
        // Each input's part of `hv` as its tangent sink (see `hvp_only_into`).
        let mut rest = &mut *hv;
        let mut outs: SmallVec<[Option<&mut [F]>; 32]> = SmallVec::new();
        for (xi, &w) in x.iter().zip(wrt) {
            if w {
                let (part, tail) = std::mem::take(&mut rest).split_at_mut(xi.numel());
                outs.push(Some(part));
                rest = tail;
            } else {
                outs.push(None);
            }
        }
        if self.hvp_only_sunk(f, seeds(), &mut outs).is_some() {
            return;
        }
        drop(outs);
        let p = self.dual_pass(seeds(), |t, v| f.eval(t, v));
        let t = p.tape();
        let mut at = 0;
        for ((&var, xi), &w) in p.inputs().iter().zip(x).zip(wrt) {
            if !w {
                continue;
            }
            let n = xi.numel();
            let out = &mut hv[at..at + n];
            for_each_adjoint(t, var, n, |i, d| out[i] = d.d);
            at += n;
        }
    }
}

fn opt_seed<'a, F: Float>(
    (x, v): (&'a Tensor<F>, &'a Option<Tensor<F>>),
) -> (&'a Tensor<F>, Seed<'a, F>) {
    match v {
        Some(v) => (x, Seed::Tangent(v.data())),
        None => (x, Seed::Zero),
    }
}

fn full_seed<'a, F: Float>((x, v): (&'a Tensor<F>, &'a Tensor<F>)) -> (&'a Tensor<F>, Seed<'a, F>) {
    (x, Seed::Tangent(v.data()))
}

/// Panics unless there is one tangent per input and each present tangent has
/// its input's shape; `label` names the inputs in the message ("input", "φ input").
#[track_caller]
fn check_shapes<'a, F: Float + 'a>(
    what: &str,
    label: &str,
    x: &[Tensor<F>],
    v: impl ExactSizeIterator<Item = Option<&'a Tensor<F>>>,
) {
    assert!(
        x.len() == v.len(),
        "{what}: {} {label}s but {} tangents",
        x.len(),
        v.len()
    );
    for (xi, vi) in x.iter().zip(v) {
        if let Some(vi) = vi {
            assert!(
                vi.shape() == xi.shape(),
                "{what}: {label} {:?} but tangent {:?}",
                xi.shape(),
                vi.shape()
            );
        }
    }
}

#[track_caller]
fn check_directions<F: Float>(what: &str, x: &[Tensor<F>], v: &[Tensor<F>]) {
    check_shapes(what, "input", x, v.iter().map(Some));
}

#[track_caller]
fn check_tangents<F: Float>(what: &str, x: &[Tensor<F>], v: &[Option<Tensor<F>>]) {
    check_shapes(what, "input", x, v.iter().map(Option::as_ref));
}

/// Calls `f(i, adjoint_i)` for every element of `var`'s adjoint after a sweep,
/// reading the tape's buffer in place (an input no adjoint reached has a zero one).
fn for_each_adjoint<F: Float>(
    t: &Tape<Dual<F>>,
    var: Var<'_, Dual<F>>,
    n: usize,
    mut f: impl FnMut(usize, Dual<F>),
) {
    match t.grad_ref(var) {
        Some(g) => g.iter().enumerate().for_each(|(i, &d)| f(i, d)),
        None => (0..n).for_each(|i| f(i, Dual::default())),
    }
}

/// The adjoint of `var` after a dual sweep, split into (gradient, H·v).
fn split_adjoint<F: Float>(
    t: &Tape<Dual<F>>,
    var: Var<'_, Dual<F>>,
    x: &Tensor<F>,
) -> (Tensor<F>, Tensor<F>) {
    let n = x.numel();
    let (mut g, mut h) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for_each_adjoint(t, var, n, |_, d| {
        g.push(d.v);
        h.push(d.d);
    });
    (Tensor::new(x.shape(), g), Tensor::new(x.shape(), h))
}

/// f(x) and ∇f(x); see [`Workspace::value_and_grad`].
pub fn value_and_grad<F: Float, O: Objective<F>>(f: &O, x: &[Tensor<F>]) -> (F, Vec<Tensor<F>>) {
    Workspace::new().value_and_grad(f, x)
}

/// f(x) and ⟨∇f(x), v⟩; see [`Workspace::jvp`].
#[track_caller]
pub fn jvp<F: Float, O: Objective<F>>(f: &O, x: &[Tensor<F>], v: &[Tensor<F>]) -> (F, F) {
    Workspace::new().jvp(f, x, v)
}

/// y = g(x) and J·v; see [`Workspace::jvp_vec`].
#[track_caller]
pub fn jvp_vec<F: Float, G: VectorFunction<F>>(
    g: &G,
    x: &[Tensor<F>],
    v: &[Tensor<F>],
) -> (Tensor<F>, Tensor<F>) {
    Workspace::new().jvp_vec(g, x, v)
}

/// f(x), ∇f(x) and H(x)·v; see [`Workspace::hvp`].
#[track_caller]
pub fn hvp<F: Float, O: Objective<F>>(f: &O, x: &[Tensor<F>], v: &[Tensor<F>]) -> HvpOutput<F> {
    Workspace::new().hvp(f, x, v)
}

/// The concatenation of the tensors' data: the flat vector [`crate::LinOp`]s act on.
pub fn flatten<F: Float>(xs: &[Tensor<F>]) -> Vec<F> {
    let mut out = Vec::with_capacity(xs.iter().map(Tensor::numel).sum());
    for x in xs {
        out.extend_from_slice(x.data());
    }
    out
}

/// Splits a flat vector into tensors shaped like `like` (the inverse of [`flatten`]).
///
/// # Panics
/// If `flat.len()` is not the total element count of `like`.
#[track_caller]
pub fn unflatten<F: Float>(flat: &[F], like: &[Tensor<F>]) -> Vec<Tensor<F>> {
    let n: usize = like.iter().map(Tensor::numel).sum();
    assert!(
        flat.len() == n,
        "unflatten: {} values for tensors holding {n} elements",
        flat.len()
    );
    let mut at = 0;
    like.iter()
        .map(|l| {
            let t = Tensor::new(l.shape(), flat[at..at + l.numel()].to_vec());
            at += l.numel();
            t
        })
        .collect()
}
