//! Gradient checking for your own test suites (feature `testing`, on by default).
//!
//! Three checks, all against central finite differences of the function itself:
//!
//! | check | output | compares |
//! |---|---|---|
//! | [`check_grad`] | scalar | every entry of ∇f against (f(x + h·eᵢ) − f(x − h·eᵢ)) / 2h |
//! | [`check_jvp`] | scalar | ⟨∇f, v⟩ against (f(x + h·v) − f(x − h·v)) / 2h for a random v |
//! | [`check_vjp`] | any shape | ⟨Jᵀu, v⟩ (one reverse sweep) against ⟨u, J·v⟩ (a central difference) |
//!
//! The function under test is a closure that records on a tape it is handed:
//! `|tape, x| -> Var`, where `x` holds one variable per input tensor. It is
//! re-run on fresh tapes for the finite differences, so it must be a pure
//! function of its inputs. Write the closure inline in the call (or pass a
//! generic `fn`): a closure first bound to a `let` does not get the
//! higher-ranked lifetime `for<'t> Fn(&'t Tape<T>, &[Var<'t, T>]) -> Var<'t, T>`
//! the checks require, and fails to compile with "lifetime may not live long enough".
//!
//! Random directions come from a `ChaCha8Rng` seeded explicitly, so a failure
//! reproduces from its seed. [`Tolerance`] bundles the finite-difference step
//! and a mixed absolute/relative bound, with presets for `f64` and `f32`.
//!
//! ```
//! use tape::testing::{check_grad, check_jvp, check_vjp, Tolerance};
//! use tape::Tensor;
//!
//! let x = Tensor::new(&[2, 3], vec![0.1, -0.4, 0.9, 1.3, -2.0, 0.5]);
//! let w = Tensor::new(&[3, 2], vec![0.3, 0.2, -0.7, 1.1, 0.6, -0.5]);
//! let tol = Tolerance::for_f64();
//! // A scalar loss: every gradient entry, and one random direction.
//! check_grad(|_, v| v[0].matmul(v[1]).tanh().sum(), &[x.clone(), w.clone()], tol).unwrap();
//! check_jvp(|_, v| v[0].matmul(v[1]).tanh().sum(), &[x.clone(), w.clone()], 7, tol).unwrap();
//! // A matrix-valued function: the dot-product test.
//! check_vjp(|_, v| v[0].matmul(v[1]).tanh(), &[x, w], 7, tol).unwrap();
//! ```
//!
//! A wrong derivative is reported with where it went wrong: input index, flat
//! element index, both values (see [`check_grad`] for a worked failing example).
//!
//! Strategies for `proptest` ([`tensor_strategy`], [`tensor_in`],
//! [`tensor_avoiding`], [`shape_strategy`]) generate inputs; use
//! [`tensor_in`] or [`tensor_avoiding`] to keep inputs away from kinks and poles.

use std::fmt;

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::real::Float;
use crate::shape::{Shape, MAX_RANK};
use crate::tape::{Tape, Var};
use crate::tensor::Tensor;

mod alloc;
pub use alloc::{count_allocations, process_allocations, AllocationCount, CountingAllocator};

/// Finite-difference step and acceptance bound of a gradient check.
///
/// An analytic value `a` and a numeric value `n` agree when
/// `|a − n| ≤ abs + rel·max(|a|, |n|, scale)`, where `scale` is a magnitude the
/// check knows the difference is measured against (1 for [`check_grad`]; the
/// sum of the absolute terms of the inner product for [`check_jvp`] and
/// [`check_vjp`], so that cancellation does not demand more accuracy than the
/// terms carry).
///
/// The step along a direction `v` is `h = step·max(1, ‖x‖∞) / ‖v‖∞`, scaled to
/// the input so large inputs are not perturbed below their rounding error.
///
/// ```
/// use tape::testing::Tolerance;
/// let t = Tolerance::for_f64();
/// assert!(t.accepts(1.0, 1.0 + 1e-7, 0.0));
/// assert!(!t.accepts(1.0, 1.01, 0.0));
/// ```
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct Tolerance {
    /// Absolute part of the bound.
    pub abs: f64,
    /// Relative part of the bound.
    pub rel: f64,
    /// Relative finite-difference step.
    pub step: f64,
}

impl Tolerance {
    /// For `f64` evaluation: step 1e-6 (truncation error ~h², rounding ~ε/h,
    /// both ≲1e-10 for smooth functions of order-one inputs), bound 1e-6 + 1e-5·scale.
    pub fn for_f64() -> Self {
        Tolerance {
            abs: 1e-6,
            rel: 1e-5,
            step: 1e-6,
        }
    }
    /// For `f32` evaluation: step 3e-3 (near ε^(1/3) for ε = 1.2e-7, balancing
    /// truncation ~h² against rounding ~ε/h), bound 1e-2 + 2e-2·scale.
    pub fn for_f32() -> Self {
        Tolerance {
            abs: 1e-2,
            rel: 2e-2,
            step: 3e-3,
        }
    }
    /// The preset for a float type: [`Tolerance::for_f32`] for `f32`, else [`Tolerance::for_f64`].
    pub fn for_float<T: Float>() -> Self {
        if T::NAME == "f32" {
            Self::for_f32()
        } else {
            Self::for_f64()
        }
    }
    /// The same tolerance with the bounds multiplied by `k` (for ops whose
    /// finite differences are known to be noisier, e.g. long reductions).
    pub fn scaled(self, k: f64) -> Self {
        Tolerance {
            abs: self.abs * k,
            rel: self.rel * k,
            step: self.step,
        }
    }
    /// The bound `abs + rel·max(|a|, |n|, scale)`.
    pub fn bound(&self, analytic: f64, numeric: f64, scale: f64) -> f64 {
        self.abs + self.rel * analytic.abs().max(numeric.abs()).max(scale.abs())
    }
    /// Whether `analytic` and `numeric` agree (see the struct docs); false if either is not finite.
    pub fn accepts(&self, analytic: f64, numeric: f64, scale: f64) -> bool {
        analytic.is_finite()
            && numeric.is_finite()
            && (analytic - numeric).abs() <= self.bound(analytic, numeric, scale)
    }
}

impl Default for Tolerance {
    fn default() -> Self {
        Self::for_f64()
    }
}

/// Why a gradient check failed, with the evidence.
#[derive(Clone, Debug, PartialEq)]
pub enum GradCheckError {
    /// One gradient entry disagrees with its central difference.
    Gradient {
        /// Which input tensor.
        input: usize,
        /// Flat (row-major) element index in that input.
        element: usize,
        /// The reverse-mode value.
        analytic: f64,
        /// The central difference.
        numeric: f64,
        /// The bound that was exceeded.
        bound: f64,
    },
    /// The directional derivative disagrees with its central difference.
    Jvp {
        /// ⟨∇f, v⟩ from the reverse sweep.
        analytic: f64,
        /// (f(x + hv) − f(x − hv)) / 2h.
        numeric: f64,
        /// The bound that was exceeded.
        bound: f64,
        /// The seed of the direction v.
        seed: u64,
    },
    /// The dot-product test ⟨Jᵀu, v⟩ = ⟨u, Jv⟩ failed.
    Vjp {
        /// ⟨Jᵀu, v⟩ from `backward_with(u)`.
        analytic: f64,
        /// ⟨u, Jv⟩ with Jv from a central difference.
        numeric: f64,
        /// The bound that was exceeded.
        bound: f64,
        /// The seed of the directions u and v.
        seed: u64,
    },
    /// The function or its gradient is not finite.
    NonFinite {
        /// What was not finite.
        what: &'static str,
        /// Input tensor (if the failure is tied to one).
        input: Option<usize>,
        /// Flat element index (if the failure is tied to one).
        element: Option<usize>,
        /// The offending value.
        value: f64,
    },
}

impl fmt::Display for GradCheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GradCheckError::Gradient {
                input,
                element,
                analytic,
                numeric,
                bound,
            } => write!(
                f,
                "gradient of input {input}, element {element}: analytic {analytic:e}, \
                 numeric {numeric:e}, |difference| {:e} > bound {bound:e}",
                (analytic - numeric).abs()
            ),
            GradCheckError::Jvp {
                analytic,
                numeric,
                bound,
                seed,
            } => write!(
                f,
                "directional derivative (direction seed {seed}): ⟨∇f, v⟩ = {analytic:e}, \
                 central difference {numeric:e}, |difference| {:e} > bound {bound:e}",
                (analytic - numeric).abs()
            ),
            GradCheckError::Vjp {
                analytic,
                numeric,
                bound,
                seed,
            } => write!(
                f,
                "dot-product test (seed {seed}): ⟨Jᵀu, v⟩ = {analytic:e}, ⟨u, Jv⟩ = {numeric:e}, \
                 |difference| {:e} > bound {bound:e}",
                (analytic - numeric).abs()
            ),
            GradCheckError::NonFinite {
                what,
                input,
                element,
                value,
            } => {
                write!(f, "{what} is not finite ({value})")?;
                if let Some(i) = input {
                    write!(f, " at input {i}")?;
                }
                if let Some(e) = element {
                    write!(f, ", element {e}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for GradCheckError {}

/// Records `f` on a fresh tape at `inputs` and returns the output value
/// and, if `cotangent` is given, the input adjoints of `backward_with(cotangent)`.
///
/// # Panics
/// If `scalar_for` names a check and the output is not a one-element tensor.
#[track_caller]
fn run<T, F>(
    f: &F,
    inputs: &[Tensor<T>],
    cotangent: Option<&[T]>,
    scalar_for: Option<&str>,
) -> (Tensor<T>, Vec<Tensor<T>>)
where
    T: Float,
    F: for<'t> Fn(&'t Tape<T>, &[Var<'t, T>]) -> Var<'t, T>,
{
    let tape = Tape::<T>::new();
    let vars: Vec<Var<'_, T>> = inputs.iter().map(|x| tape.var(x)).collect();
    let out = f(&tape, &vars);
    let value = out.value();
    if let Some(what) = scalar_for {
        expect_scalar(what, &value);
    }
    let grads = match cotangent {
        Some(u) => {
            tape.backward_with(out, u);
            vars.iter().map(|&v| tape.grad(v)).collect()
        }
        None => Vec::new(),
    };
    (value, grads)
}

/// `x + s·v` for every input.
fn shifted<T: Float>(inputs: &[Tensor<T>], v: &[Tensor<T>], s: f64) -> Vec<Tensor<T>> {
    inputs
        .iter()
        .zip(v)
        .map(|(x, d)| {
            let mut y = x.clone();
            for (a, &b) in y.data_mut().iter_mut().zip(d.data()) {
                *a = T::from_f64(a.to_f64() + s * b.to_f64());
            }
            y
        })
        .collect()
}

fn inf_norm<T: Float>(xs: &[Tensor<T>]) -> f64 {
    xs.iter()
        .flat_map(|x| x.data().iter())
        .fold(0.0, |m, v| m.max(v.to_f64().abs()))
}

#[track_caller]
fn expect_scalar<T: Float>(what: &str, out: &Tensor<T>) {
    assert!(
        out.numel() == 1,
        "{what}: the function's output has shape {:?}; it must be a one-element tensor \
         (use check_vjp for non-scalar outputs)",
        out.shape()
    );
}

fn finite<T: Float>(
    what: &'static str,
    t: &Tensor<T>,
    input: Option<usize>,
) -> Result<(), GradCheckError> {
    match t.data().iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(e) => Err(GradCheckError::NonFinite {
            what,
            input,
            element: Some(e),
            value: t.data()[e].to_f64(),
        }),
    }
}

/// Random directions, one tensor per shape, entries uniform in [−1, 1], from a
/// `ChaCha8Rng` seeded with `seed` (the same seed gives the same directions).
///
/// ```
/// use tape::testing::random_directions;
/// use tape::Shape;
/// let a = random_directions::<f64>(&[Shape::new(&[2, 2])], 3);
/// let b = random_directions::<f64>(&[Shape::new(&[2, 2])], 3);
/// assert_eq!(a, b);
/// assert!(a[0].data().iter().all(|x| x.abs() <= 1.0));
/// ```
pub fn random_directions<T: Float>(shapes: &[Shape], seed: u64) -> Vec<Tensor<T>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    shapes
        .iter()
        .map(|&s| Tensor::from_fn(s, |_| T::from_f64(rng.gen_range(-1.0..=1.0))))
        .collect()
}

/// Checks every entry of the gradient of a scalar function against a central
/// difference: for input k, element i, with `h = tol.step·max(1, |xᵢ|)`,
/// `∂f/∂xᵢ ≈ (f(x + h·eᵢ) − f(x − h·eᵢ)) / 2h`.
///
/// Costs one reverse sweep and two evaluations per input element; keep inputs small.
///
/// # Errors
/// [`GradCheckError::Gradient`] naming the input, flat element index, analytic and
/// numeric values of the first disagreeing entry; [`GradCheckError::NonFinite`] if
/// the value or gradient is not finite.
///
/// # Panics
/// If the output of `f` is not a one-element tensor.
///
/// ```
/// use tape::testing::{check_grad, GradCheckError, Tolerance};
/// use tape::Tensor;
/// // f(x) = Σ x³ : ∇f = 3x².
/// let x = Tensor::vector(vec![0.5, -1.0, 2.0]);
/// check_grad(|_, v| v[0].powf(3.0).sum(), &[x.clone()], Tolerance::for_f64()).unwrap();
/// // A deliberately wrong "derivative": x·detach(x)² has value x³ but gradient x².
/// let err = check_grad(|_, v| (v[0] * v[0].detach() * v[0].detach()).sum(), &[x], Tolerance::for_f64())
///     .unwrap_err();
/// match err {
///     GradCheckError::Gradient { input: 0, element: 0, analytic, numeric, .. } => {
///         assert!((analytic - 0.25).abs() < 1e-12);   // x² at 0.5
///         assert!((numeric - 0.75).abs() < 1e-6);     // 3x² at 0.5
///     }
///     e => panic!("unexpected {e}"),
/// }
/// ```
#[track_caller]
pub fn check_grad<T, F>(f: F, inputs: &[Tensor<T>], tol: Tolerance) -> Result<(), GradCheckError>
where
    T: Float,
    F: for<'t> Fn(&'t Tape<T>, &[Var<'t, T>]) -> Var<'t, T>,
{
    let (value, grads) = run(&f, inputs, Some(&[T::one()]), Some("check_grad"));
    finite("the function value", &value, None)?;
    for (k, g) in grads.iter().enumerate() {
        finite("the analytic gradient", g, Some(k))?;
    }
    let mut probe = inputs.to_vec();
    for k in 0..inputs.len() {
        for i in 0..inputs[k].numel() {
            let x = inputs[k].data()[i];
            let h = tol.step * x.to_f64().abs().max(1.0);
            // The step actually taken, after rounding x ± h to T.
            let xp = T::from_f64(x.to_f64() + h);
            let xm = T::from_f64(x.to_f64() - h);
            probe[k].data_mut()[i] = xp;
            let fp = run(&f, &probe, None, None).0.item().to_f64();
            probe[k].data_mut()[i] = xm;
            let fm = run(&f, &probe, None, None).0.item().to_f64();
            probe[k].data_mut()[i] = x;
            let numeric = (fp - fm) / (xp.to_f64() - xm.to_f64());
            if !numeric.is_finite() {
                return Err(GradCheckError::NonFinite {
                    what: "the central difference",
                    input: Some(k),
                    element: Some(i),
                    value: numeric,
                });
            }
            let analytic = grads[k].data()[i].to_f64();
            if !tol.accepts(analytic, numeric, 1.0) {
                return Err(GradCheckError::Gradient {
                    input: k,
                    element: i,
                    analytic,
                    numeric,
                    bound: tol.bound(analytic, numeric, 1.0),
                });
            }
        }
    }
    Ok(())
}

/// Checks the directional derivative of a scalar function along a random
/// direction `v` (seeded by `seed`, see [`random_directions`]):
/// `⟨∇f, v⟩ ≈ (f(x + h·v) − f(x − h·v)) / 2h` with
/// `h = tol.step·max(1, ‖x‖∞)/‖v‖∞`. Two evaluations and one sweep, whatever
/// the input size.
///
/// # Errors
/// [`GradCheckError::Jvp`] with both values and the seed; [`GradCheckError::NonFinite`].
///
/// # Panics
/// If the output of `f` is not a one-element tensor.
///
/// ```
/// use tape::testing::{check_jvp, Tolerance};
/// use tape::Tensor;
/// let x = Tensor::from_fn(&[4, 4], |i| (i as f64).sin());
/// check_jvp(|_, v| v[0].exp().mean(), &[x], 42, Tolerance::for_f64()).unwrap();
/// ```
#[track_caller]
pub fn check_jvp<T, F>(
    f: F,
    inputs: &[Tensor<T>],
    seed: u64,
    tol: Tolerance,
) -> Result<(), GradCheckError>
where
    T: Float,
    F: for<'t> Fn(&'t Tape<T>, &[Var<'t, T>]) -> Var<'t, T>,
{
    let (value, grads) = run(&f, inputs, Some(&[T::one()]), Some("check_jvp"));
    finite("the function value", &value, None)?;
    let shapes: Vec<Shape> = inputs.iter().map(|x| x.shape()).collect();
    let v = random_directions::<T>(&shapes, seed);
    let (mut analytic, mut scale) = (0.0, 0.0);
    for (k, (g, d)) in grads.iter().zip(&v).enumerate() {
        finite("the analytic gradient", g, Some(k))?;
        for (&a, &b) in g.data().iter().zip(d.data()) {
            analytic += a.to_f64() * b.to_f64();
            scale += (a.to_f64() * b.to_f64()).abs();
        }
    }
    let h = tol.step * inf_norm(inputs).max(1.0) / inf_norm(&v).max(f64::MIN_POSITIVE);
    let fp = run(&f, &shifted(inputs, &v, h), None, None)
        .0
        .item()
        .to_f64();
    let fm = run(&f, &shifted(inputs, &v, -h), None, None)
        .0
        .item()
        .to_f64();
    let numeric = (fp - fm) / (2.0 * h);
    if !tol.accepts(analytic, numeric, scale) {
        return Err(GradCheckError::Jvp {
            analytic,
            numeric,
            bound: tol.bound(analytic, numeric, scale),
            seed,
        });
    }
    Ok(())
}

/// The dot-product test of the VJP of a function with any output shape: for
/// random `u` (output-shaped) and `v` (input-shaped), both from `seed`,
/// `⟨Jᵀu, v⟩` from one `backward_with(u)` sweep must equal `⟨u, J·v⟩`, where
/// `J·v ≈ (f(x + h·v) − f(x − h·v)) / 2h` (h as in [`check_jvp`]).
///
/// # Errors
/// [`GradCheckError::Vjp`] with both inner products and the seed;
/// [`GradCheckError::NonFinite`].
///
/// ```
/// use tape::testing::{check_vjp, Tolerance};
/// use tape::Tensor;
/// // A [2, 3] → [3, 2] map: transpose then sigmoid.
/// let x = Tensor::from_fn(&[2, 3], |i| i as f64 * 0.3 - 0.7);
/// check_vjp(|_, v| v[0].t().sigmoid(), &[x], 1, Tolerance::for_f64()).unwrap();
/// ```
pub fn check_vjp<T, F>(
    f: F,
    inputs: &[Tensor<T>],
    seed: u64,
    tol: Tolerance,
) -> Result<(), GradCheckError>
where
    T: Float,
    F: for<'t> Fn(&'t Tape<T>, &[Var<'t, T>]) -> Var<'t, T>,
{
    let shapes: Vec<Shape> = inputs.iter().map(|x| x.shape()).collect();
    let v = random_directions::<T>(&shapes, seed);
    let out_shape = run(&f, inputs, None, None).0.shape();
    let u = random_directions::<T>(&[out_shape], seed ^ 0x9E37_79B9_7F4A_7C15)
        .pop()
        .expect("one direction");
    let (value, jt_u) = run(&f, inputs, Some(u.data()), None);
    finite("the function value", &value, None)?;
    let (mut analytic, mut scale_a) = (0.0, 0.0);
    for (k, (g, d)) in jt_u.iter().zip(&v).enumerate() {
        finite("the vector-Jacobian product", g, Some(k))?;
        for (&a, &b) in g.data().iter().zip(d.data()) {
            analytic += a.to_f64() * b.to_f64();
            scale_a += (a.to_f64() * b.to_f64()).abs();
        }
    }
    let h = tol.step * inf_norm(inputs).max(1.0) / inf_norm(&v).max(f64::MIN_POSITIVE);
    let fp = run(&f, &shifted(inputs, &v, h), None, None).0;
    let fm = run(&f, &shifted(inputs, &v, -h), None, None).0;
    let (mut numeric, mut scale_n) = (0.0, 0.0);
    for ((&p, &m), &w) in fp.data().iter().zip(fm.data()).zip(u.data()) {
        let jv = (p.to_f64() - m.to_f64()) / (2.0 * h);
        numeric += w.to_f64() * jv;
        scale_n += (w.to_f64() * jv).abs();
    }
    let scale = scale_a.max(scale_n);
    if !tol.accepts(analytic, numeric, scale) {
        return Err(GradCheckError::Vjp {
            analytic,
            numeric,
            bound: tol.bound(analytic, numeric, scale),
            seed,
        });
    }
    Ok(())
}

/// Shapes of rank 0 to `max_rank` (at most 4) with every dimension in `1..=max_dim`.
///
/// ```
/// use proptest::strategy::{Strategy, ValueTree};
/// use proptest::test_runner::TestRunner;
/// use tape::testing::shape_strategy;
/// let mut runner = TestRunner::deterministic();
/// let s = shape_strategy(3, 4).new_tree(&mut runner).unwrap().current();
/// assert!(s.rank() <= 3 && s.dims().iter().all(|&d| (1..=4).contains(&d)));
/// ```
///
/// # Panics
/// If `max_rank > 4` or `max_dim == 0`.
pub fn shape_strategy(max_rank: usize, max_dim: usize) -> impl Strategy<Value = Shape> {
    assert!(
        max_rank <= MAX_RANK && max_dim >= 1,
        "shape_strategy: max_rank {max_rank} must be ≤ {MAX_RANK} and max_dim {max_dim} ≥ 1"
    );
    proptest::collection::vec(1..=max_dim, 0..=max_rank).prop_map(|d| Shape::new(&d))
}

/// Tensors of the given shape with entries uniform in `[lo, hi]`.
///
/// ```
/// use proptest::strategy::{Strategy, ValueTree};
/// use proptest::test_runner::TestRunner;
/// use tape::testing::tensor_in;
/// let mut runner = TestRunner::deterministic();
/// let t = tensor_in(&[2, 3], 0.5, 2.0).new_tree(&mut runner).unwrap().current();
/// assert!(t.data().iter().all(|&x| (0.5..=2.0).contains(&x)));
/// ```
pub fn tensor_in(shape: impl Into<Shape>, lo: f64, hi: f64) -> impl Strategy<Value = Tensor<f64>> {
    let shape = shape.into();
    assert!(lo <= hi, "tensor_in: empty range [{lo}, {hi}]");
    proptest::collection::vec(lo..=hi, shape.numel()).prop_map(move |d| Tensor::new(shape, d))
}

/// Tensors of the given shape with entries in `[-3, 3]`.
pub fn tensor_strategy(shape: impl Into<Shape>) -> impl Strategy<Value = Tensor<f64>> {
    tensor_in(shape, -3.0, 3.0)
}

/// Tensors with entries in `[lo, hi]` but at least `margin` away from every
/// point in `kinks` (e.g. `&[0.0]` for relu and abs): an entry that falls
/// too close is pushed out to `kink ± margin`, towards its side. The margin must
/// exceed the finite-difference step so a central difference never straddles a kink.
/// Kinks are processed in order, so they should be more than `2·margin` apart.
///
/// ```
/// use proptest::strategy::{Strategy, ValueTree};
/// use proptest::test_runner::TestRunner;
/// use tape::testing::tensor_avoiding;
/// let mut runner = TestRunner::deterministic();
/// let t = tensor_avoiding(&[50], -1.0, 1.0, &[0.0], 0.05).new_tree(&mut runner).unwrap().current();
/// assert!(t.data().iter().all(|&x| x.abs() >= 0.05));
/// ```
pub fn tensor_avoiding(
    shape: impl Into<Shape>,
    lo: f64,
    hi: f64,
    kinks: &[f64],
    margin: f64,
) -> impl Strategy<Value = Tensor<f64>> {
    let kinks = kinks.to_vec();
    tensor_in(shape, lo, hi).prop_map(move |mut t| {
        for x in t.data_mut() {
            for &k in &kinks {
                if (*x - k).abs() < margin {
                    // A hair beyond the margin, so rounding of k ± margin cannot
                    // land inside it.
                    let m = margin * (1.0 + 1e-9);
                    *x = if *x >= k { k + m } else { k - m };
                }
            }
        }
        t
    })
}
