//! Fixed linear steps (docs/math.md §12, "Fixed linear steps"): an elementwise
//! rule whose step is one linear map D of (φ, e, g) per element
//! ([`crate::InnerRule::fixed_linear`]: SGD, momentum with a fixed β). D is
//! read once per workspace and rule from reverse sweeps of the rule's own
//! step (cotangent one on one output, zero on the others: for a diagonal
//! Jacobian the input adjoints are D's entries), checked, and then every
//! forward step is passes y_o = Σ_i D_oi ⊙ x_i over the state and every
//! adjoint step passes a_i = Σ_o D_oi ⊙ ū_o over the cotangent: no tape.

use hvp::Workspace;
use tape::kernels::{all_finite, sub_scaled, sub_scaled_finite};
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

/// With a D that is φ_j = φ + c g alone (no extra state, c one number:
/// SGD), the step in place: x ← x − (−c) g (`tape::kernels::sub_scaled_finite`,
/// [`axpy`]'s bits: copying φ and adding c g give the same number), and
/// whether g is finite, in one pass (`g` `None`, a structural zero, leaves
/// x). `None` for any other D. [`LinearStep::step`] (on a copy of φ) and the
/// resident [`LinearStep::step_segment`] both step by it.
fn sgd_in_place<F: Float>(d: &[Coef<F>], x: &mut [F], g: Option<&[F]>) -> Option<bool> {
    let c = match d {
        [Coef::One, Coef::One] => F::one(),
        [Coef::One, Coef::Scalar(c)] => *c,
        _ => return None,
    };
    Some(g.is_none_or(|g| sub_scaled_finite(x, g, -c)))
}

/// The forward step's arithmetic on one φ tensor's segment (flat positions
/// from `at`): y_o ← Σ_i D_oi ⊙ x_i for every output o (`y` its rows, cut
/// to the segment), each entry applied by [`axpy`] in input order (`x(i)`
/// `None`: a structural zero). [`LinearStep::step`] and the resident
/// [`LinearStep::step_segment`] both step by it (but for
/// [`sgd_in_place`]'s D).
fn map_segment<'x, 'y, F: Float + 'x + 'y>(
    d: &[Coef<F>],
    n_in: usize,
    at: usize,
    x: impl Fn(usize) -> Option<&'x [F]>,
    y: impl Iterator<Item = &'y mut [F]>,
) {
    for (o, y) in y.enumerate() {
        for i in 0..n_in {
            axpy(y, &d[o * n_in + i], at, x(i), i == 0);
        }
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
    /// The extra state during resident steps, K × N ([`LinearStep::hold_extra`]).
    held: Vec<F>,
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
            if n_out == 1 {
                // φ_j = φ + c g: the resident step's pass, on a copy.
                let y = &mut self.scratch[r.clone()];
                y.copy_from_slice(state.phi[s].data());
                if sgd_in_place(&self.d, y, *gs).is_some() {
                    continue;
                }
            }
            let x = |i: usize| -> Option<&[F]> {
                match i {
                    0 => Some(state.phi[s].data()),
                    i if i < n_in - 1 => Some(&state.extra[i - 1].data()[r.clone()]),
                    _ => *gs,
                }
            };
            let y = self.scratch.chunks_mut(n.max(1)).map(|y| &mut y[r.clone()]);
            map_segment(&self.d, n_in, r.start, x, y);
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

    /// Starts resident steps ([`crate::InnerWorkspace::advance`]): the extra
    /// state e (K tensors `[N]`) is copied into this step's own buffer, where
    /// [`LinearStep::step_segment`] updates it, so `extra` keeps e_from.
    pub(crate) fn hold_extra(&mut self, extra: &[Tensor<F>]) {
        self.held.clear();
        for e in extra {
            self.held.extend_from_slice(e.data());
        }
    }

    /// Ends resident steps: the held e into `extra`.
    pub(crate) fn release_extra(&self, extra: &mut [Tensor<F>]) {
        let n = self.held.len() / extra.len().max(1);
        for (e, h) in extra.iter_mut().zip(self.held.chunks(n.max(1))) {
            e.data_mut().copy_from_slice(h);
        }
    }

    /// One resident step of φ tensor s (segment `r` of the flat layout), in
    /// place: `x` (its φ values, on the tape) and its segment of the held e
    /// ([`LinearStep::hold_extra`]) ← D (x, e, `g`), the bits of
    /// [`LinearStep::step`]. Returns (g finite, outputs finite). When both
    /// hold, the segment is updated; otherwise it may be partly updated (the
    /// caller recomputes the state from an earlier one).
    pub(crate) fn step_segment(
        &mut self,
        r: std::ops::Range<usize>,
        x: &mut [F],
        g: Option<&[F]>,
    ) -> (bool, bool) {
        if let Some(g_finite) = sgd_in_place(&self.d, x, g) {
            return (g_finite, all_finite(x));
        }
        let (len, n_in, n_out) = (r.len(), self.n_in(), self.groups + 1);
        let g_finite = g.is_none_or(all_finite);
        if len == 0 || !g_finite {
            return (g_finite, true);
        }
        let n = self.held.len() / self.groups.max(1);
        let need = n_out * len;
        if self.scratch.len() < need {
            self.scratch.resize(need, F::zero());
        }
        let held = &self.held;
        let xs = |i: usize| -> Option<&[F]> {
            match i {
                0 => Some(&*x),
                i if i < n_in - 1 => Some(&held[(i - 1) * n + r.start..(i - 1) * n + r.end]),
                _ => g,
            }
        };
        let y = &mut self.scratch[..need];
        map_segment(&self.d, n_in, r.start, xs, y.chunks_mut(len));
        if !all_finite(y) {
            return (true, false);
        }
        let (phi, extra) = y.split_at(len);
        x.copy_from_slice(phi);
        for (i, e) in extra.chunks(len).enumerate() {
            self.held[i * n + r.start..i * n + r.end].copy_from_slice(e);
        }
        (true, true)
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
