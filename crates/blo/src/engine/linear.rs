//! Fixed linear steps (docs/math.md §12, "Fixed linear steps"): an elementwise
//! rule whose step is one linear map D of (φ, e, g) per element
//! ([`crate::InnerRule::fixed_linear`]: SGD, momentum with a fixed β). D is
//! read once per workspace and rule from reverse sweeps of the rule's own
//! step (cotangent one on one output, zero on the others: for a diagonal
//! Jacobian the input adjoints are D's entries), checked, and then every
//! forward step is passes y_o = Σ_i D_oi ⊙ x_i over the state and every
//! adjoint step passes a_i = Σ_o D_oi ⊙ ū_o over the cotangent: no tape.

use hvp::Workspace;
use tape::kernels::{all_finite, sub_scaled};
use tape::{Float, Shape, Tensor};

use super::step::{rule_vjp_pass, Cotangent, RuleSide, State};
use crate::error::BloError;
use crate::rules::{Rule, Segments};

/// One entry D_oi of the map over the flat vector: a structural zero, one,
/// one number for every element, or one number per element.
#[derive(Clone, Debug, PartialEq)]
enum Coef<F: Float> {
    Zero,
    One,
    Scalar(F),
    Elements(Vec<F>),
}

impl<F: Float> Coef<F> {
    /// The entry from a sweep's adjoint (`None`: not reached).
    fn of(a: Option<Vec<F>>) -> Self {
        let Some(a) = a else { return Coef::Zero };
        match a.first() {
            None => Coef::Zero,
            Some(&c) if a.iter().all(|&x| x == c) => {
                if c == F::zero() {
                    Coef::Zero
                } else if c == F::one() {
                    Coef::One
                } else {
                    Coef::Scalar(c)
                }
            }
            Some(_) => Coef::Elements(a),
        }
    }

    /// The entry at flat position `k`.
    fn at(&self, k: usize) -> F {
        match self {
            Coef::Zero => F::zero(),
            Coef::One => F::one(),
            Coef::Scalar(c) => *c,
            Coef::Elements(c) => c[k],
        }
    }
}

/// y ← c ⊙ x (`first`) or y += c ⊙ x, over flat positions `at..at + y.len()`
/// (`x` `None`: zeros). Each product and sum rounded on its own.
fn axpy<F: Float>(y: &mut [F], c: &Coef<F>, at: usize, x: Option<&[F]>, first: bool) {
    let x = match (c, x) {
        (Coef::Zero, _) | (_, None) => {
            if first {
                y.fill(F::zero());
            }
            return;
        }
        (_, Some(x)) => x,
    };
    // y + c·x as y − (−c)·x, the same number (negation is exact), at the
    // kernel family's vector width (`tape::kernels::sub_scaled`).
    match (c, first) {
        (Coef::One, true) => y.copy_from_slice(x),
        (Coef::One, false) => sub_scaled(y, x, -F::one()),
        (Coef::Scalar(c), true) => y.iter_mut().zip(x).for_each(|(y, &x)| *y = *c * x),
        (Coef::Scalar(c), false) => sub_scaled(y, x, -*c),
        (Coef::Elements(c), first) => {
            let c = &c[at..at + y.len()];
            for ((y, &x), &c) in y.iter_mut().zip(x).zip(c) {
                *y = if first { c * x } else { *y + c * x };
            }
        }
        (Coef::Zero, _) => unreachable!("handled above"),
    }
}

/// D of a fixed linear rule, and the buffer its passes write into before the
/// state or cotangent is touched. Inputs are (φ, e_1, …, e_K, g), outputs
/// (φ_j, e_1, …, e_K): D is (K + 1) × (K + 2), row o, column i.
#[derive(Debug, Default)]
pub(crate) struct LinearStep<F: Float> {
    /// The rule D belongs to (checked once per workspace and rule).
    rule: Option<Rule>,
    /// K.
    groups: usize,
    d: Vec<Coef<F>>,
    /// Outputs of a pass, (K + 1) × N.
    scratch: Vec<F>,
}

impl<F: Float> LinearStep<F> {
    fn n_in(&self) -> usize {
        self.groups + 2
    }

    /// Reads and checks D for `rule` (elementwise, its claim already checked;
    /// φ laid out as `segments`, K = `groups` extra-state tensors `[N]`)
    /// unless this is the rule it holds. D from the zero state at step j and
    /// from a non-zero state at step j + 1 must agree bit for bit (a zero and
    /// a structural zero alike), θ must get no adjoint, and at both states
    /// each output must equal Σ_i D_oi x_i to `tol` relative (the rule's own
    /// rounding may differ from the sum's).
    ///
    /// # Errors
    /// [`BloError::InvalidHyperparameter`] naming the rule if any of this
    /// fails.
    pub(crate) fn prepare(
        &mut self,
        ws: &mut Workspace<F>,
        rule: &Rule,
        j: usize,
        theta: &[Tensor<F>],
        segments: &Segments,
        groups: usize,
    ) -> Result<(), BloError> {
        if self.groups == groups && self.rule.as_ref().is_some_and(|r| r.same_object(rule)) {
            return Ok(());
        }
        self.rule = None;
        let bad = |why: &str| {
            BloError::invalid(
                "inner rule",
                rule.name(),
                &format!("declares a fixed linear step (fixed_linear) but {why}"),
            )
        };
        let n = segments.numel();
        let n_in = groups + 2;
        let shape = Shape::new(&[n]);
        let zero: Vec<Tensor<F>> = (0..n_in).map(|_| Tensor::zeros(shape)).collect();
        let wave: Vec<Tensor<F>> = (0..n_in)
            .map(|i| {
                let x =
                    (0..n).map(|k| F::from_f64(1.0 + 0.5 * (0.7 * (k + i * n + 1) as f64).sin()));
                Tensor::new(shape, x.collect())
            })
            .collect();
        let (d0, y0) = sweep_map(ws, rule, j, theta, segments, &zero).map_err(bad)?;
        let (d1, y1) = sweep_map(ws, rule, j + 1, theta, segments, &wave).map_err(bad)?;
        let same = d0.iter().zip(&d1).all(|(a, b)| match (a, b) {
            (Some(a), Some(b)) => a == b,
            (Some(a), None) | (None, Some(a)) => a.iter().all(|x| *x == F::zero()),
            (None, None) => true,
        });
        if !same {
            return Err(bad("its VJP depends on the state or on the step j"));
        }
        self.groups = groups;
        self.d = d1.into_iter().map(Coef::of).collect();
        let tol = if std::mem::size_of::<F>() == 4 {
            1e-5
        } else {
            1e-13
        };
        for (x, y) in [(&zero, &y0), (&wave, &y1)] {
            for (o, y) in y.chunks(n.max(1)).enumerate() {
                for (k, &yk) in y.iter().enumerate() {
                    let terms =
                        (0..n_in).map(|i| (self.d[o * n_in + i].at(k) * x[i].data()[k]).to_f64());
                    let (sum, size) = terms.fold((0.0, 0.0), |(s, a), t| (s + t, a + t.abs()));
                    let yk = yk.to_f64();
                    let close = (yk - sum).abs() <= tol * (size + yk.abs());
                    if !close {
                        return Err(bad("its step is not the map its VJP gives"));
                    }
                }
            }
        }
        self.rule = Some(rule.clone());
        Ok(())
    }

    /// The forward step: state ← D (φ, e, g_j), g_j per φ tensor (`None`: a
    /// structural zero). The outputs are written to the state only if they
    /// are all finite; returns whether they were.
    pub(crate) fn step(
        &mut self,
        segments: &Segments,
        g: &[Option<&[F]>],
        state: &mut State<F>,
    ) -> bool {
        let (n, n_in, n_out) = (segments.numel(), self.n_in(), self.groups + 1);
        self.scratch.resize(n_out * n, F::zero());
        for (s, gs) in g.iter().enumerate() {
            let r = segments.range(s);
            let x = |i: usize| -> Option<&[F]> {
                match i {
                    0 => Some(state.phi[s].data()),
                    i if i <= self.groups => Some(&state.extra[i - 1].data()[r.clone()]),
                    _ => *gs,
                }
            };
            for (o, y) in self.scratch.chunks_mut(n.max(1)).enumerate() {
                for i in 0..n_in {
                    axpy(
                        &mut y[r.clone()],
                        &self.d[o * n_in + i],
                        r.start,
                        x(i),
                        i == 0,
                    );
                }
            }
        }
        if !all_finite(&self.scratch) {
            return false;
        }
        let (phi, extra) = self.scratch.split_at(n);
        for (s, p) in state.phi.iter_mut().enumerate() {
            p.data_mut().copy_from_slice(&phi[segments.range(s)]);
        }
        for (e, y) in state.extra.iter_mut().zip(extra.chunks(n.max(1))) {
            e.data_mut().copy_from_slice(y);
        }
        true
    }

    /// The adjoint of the step: with ū = (ū_φ, ū_e) in `cot`, w ← a_g and
    /// `cot` ← (a_φ, a_e), a_i = Σ_o D_oi ⊙ ū_o (an identity column, a_i =
    /// ū_i, is left in place).
    pub(crate) fn vjp(&mut self, segments: &Segments, cot: &mut Cotangent<F>, w: &mut Vec<F>) {
        let (n, n_in, n_out) = (segments.numel(), self.n_in(), self.groups + 1);
        let identity = |i: usize| {
            (0..n_out).all(|o| self.d[o * n_in + i] == if o == i { Coef::One } else { Coef::Zero })
        };
        let keep: Vec<bool> = (0..n_out).map(identity).collect();
        w.resize(n, F::zero());
        self.scratch.resize(n_out * n, F::zero());
        for s in 0..segments.len() {
            let r = segments.range(s);
            let u = |o: usize| -> Option<&[F]> {
                Some(if o == 0 {
                    cot.phi[s].data()
                } else {
                    &cot.extra[o - 1].data()[r.clone()]
                })
            };
            let targets = self
                .scratch
                .chunks_mut(n.max(1))
                .enumerate()
                .filter(|(i, _)| !keep[*i])
                .map(|(i, y)| (i, &mut y[r.clone()]))
                .chain(std::iter::once((n_in - 1, &mut w[r.clone()])));
            for (i, y) in targets {
                for o in 0..n_out {
                    axpy(y, &self.d[o * n_in + i], r.start, u(o), o == 0);
                }
            }
        }
        let (phi, extra) = self.scratch.split_at(n);
        if !keep[0] {
            for (s, p) in cot.phi.iter_mut().enumerate() {
                p.data_mut().copy_from_slice(&phi[segments.range(s)]);
            }
        }
        for ((e, y), keep) in cot
            .extra
            .iter_mut()
            .zip(extra.chunks(n.max(1)))
            .zip(&keep[1..])
        {
            if !keep {
                e.data_mut().copy_from_slice(y);
            }
        }
    }
}

/// D's raw entries (row-major) and the step's outputs, from [`sweep_map`].
type SweptMap<F> = (Vec<Option<Vec<F>>>, Vec<F>);

/// D's entries (row o, column i; `None` where the sweep did not reach the
/// input) and the step's outputs concatenated, at the flat inputs `x` =
/// (φ, e_1, …, e_K, g), each `[N]`: one sweep of the recorded step per output
/// with cotangent one on it and zero on the others.
///
/// # Errors
/// Why the map is not fixed (a θ adjoint that is not zero).
fn sweep_map<F: Float>(
    ws: &mut Workspace<F>,
    rule: &Rule,
    j: usize,
    theta: &[Tensor<F>],
    segments: &Segments,
    x: &[Tensor<F>],
) -> Result<SweptMap<F>, &'static str> {
    let (k, nt) = (x.len() - 2, theta.len());
    let shape = x[0].shape();
    let n = shape.numel();
    let side = RuleSide {
        phi: &x[..1],
        parts: &x[..1],
        extra: &x[1..=k],
        segments: Some(segments),
    };
    let (mut d, mut values) = (Vec::new(), Vec::new());
    for o in 0..=k {
        let u: Vec<Tensor<F>> = (0..=k)
            .map(|p| Tensor::new(shape, vec![F::from_f64(f64::from(u8::from(p == o))); n]))
            .collect();
        let out = if o == 0 { Some(&mut values) } else { None };
        let (pass, vars) = rule_vjp_pass(
            ws,
            rule,
            j,
            theta,
            side,
            Some(&x[k + 1..]),
            (&u[..1], &u[1..]),
            true,
            out,
        );
        let t = pass.tape();
        let reads_theta = vars[..nt].iter().any(|&v| {
            t.grad_ref(v)
                .is_some_and(|a| a.iter().any(|x| *x != F::zero()))
        });
        if reads_theta {
            return Err("its VJP reaches θ");
        }
        d.extend(
            vars[nt..]
                .iter()
                .map(|&v| t.grad_ref(v).map(|a| a.to_vec())),
        );
    }
    Ok((d, values))
}
