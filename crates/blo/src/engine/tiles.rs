//! φ_0 as tiles of θ ([`crate::Problem::initial_state_tiles`]): the state
//! written by block copies, and the VJP through Φ_0 by block sums, with the
//! bits of the recorded `tile_batch` and its rule, without a tape.
//!
//! Recorded, φ_0 costs a pass over a tape (θ's leaves, B block copies into
//! the tape, a copy out into the state), and its VJP another (the leaves,
//! the B blocks written again, u copied in as the seed, the block sums). For
//! a meta-batch chunk of B = 13 tasks each of those copies is 13 θ's worth;
//! here φ_0 is written once and u read once.

use smallvec::SmallVec;
use tape::{Float, Shape, Tensor};

use super::step::{non_finite, tensors_finite, State};
use super::store::refit;
use crate::error::BloError;
use crate::problem::{InnerOptimizer, Problem};

/// `Some(B)` when the sweeps may take φ_0 as B tiles of θ: the problem states
/// it, and its optimiser keeps no extra state (SGD, Meta-SGD), so φ_0 is the
/// whole state.
pub(crate) fn tiles<F: Float, P: Problem<F>>(problem: &P, task: &P::Task) -> Option<usize> {
    match problem.inner_loop().optimizer {
        InnerOptimizer::Sgd { .. } | InnerOptimizer::MetaSgd { .. } => {
            problem.initial_state_tiles(task)
        }
        _ => None,
    }
}

/// `s` ← φ_0 = (tile_B(θ_1), …, tile_B(θ_n)), no extra state (reusing `s`'s
/// tensors).
///
/// # Errors
/// [`BloError::NonFinite`] (step 0, "initial state") if θ is not finite, as
/// the recorded φ_0's check would be; `s` then holds unspecified values.
pub(crate) fn tiled_state_into<F: Float>(
    theta: &[Tensor<F>],
    b: usize,
    s: &mut State<F>,
) -> Result<(), BloError> {
    tiled_shapes(theta, b, s);
    for (p, x) in s.phi.iter_mut().zip(theta) {
        tile_into(x, p.data_mut());
    }
    check_initial(theta)
}

/// Shapes `s` as φ_0 = B tiles of θ, no extra state, reusing its tensors;
/// φ's values are stale.
pub(crate) fn tiled_shapes<F: Float>(theta: &[Tensor<F>], b: usize, s: &mut State<F>) {
    s.phi.truncate(theta.len());
    for (i, x) in theta.iter().enumerate() {
        let mut dims: SmallVec<[usize; 5]> = SmallVec::new();
        dims.push(b);
        dims.extend_from_slice(x.dims());
        let shape = Shape::new(&dims);
        match s.phi.get_mut(i) {
            Some(p) => refit(p, shape),
            None => s.phi.push(Tensor::zeros(shape)),
        }
    }
    s.extra.clear();
}

/// `out` ← x, x, …, x (blocks of x's size).
pub(crate) fn tile_into<F: Float>(x: &Tensor<F>, out: &mut [F]) {
    for block in out.chunks_exact_mut(x.numel()) {
        block.copy_from_slice(x.data());
    }
}

/// The error of a non-finite φ_0 (step 0, "initial state") if θ, whose
/// tiles it is, is not finite.
pub(crate) fn check_initial<F: Float>(theta: &[Tensor<F>]) -> Result<(), BloError> {
    if !tensors_finite(theta) {
        return Err(non_finite("initial state", 0));
    }
    Ok(())
}

/// Elements summed per pass over the B blocks (a stack buffer).
const SUM_CHUNK: usize = 256;

/// `acc_i += Σ_b u_i,b` for each θ tensor i (u_i of shape `[B, ..dims_i]`),
/// each element summed as `tile_batch`'s rule sums it, u_1 + u_2 + … + u_B,
/// then added to acc: the bits of the recorded VJP.
///
/// # Panics
/// If a cotangent is not B blocks of its θ tensor's size.
#[track_caller]
pub(crate) fn tiled_vjp_add<F: Float>(u: &[Tensor<F>], acc: &mut [Tensor<F>]) {
    assert_eq!(
        u.len(),
        acc.len(),
        "tiled VJP: {} cotangents for {} θ tensors",
        u.len(),
        acc.len()
    );
    for (ui, gi) in u.iter().zip(acc.iter_mut()) {
        let n = gi.numel();
        assert!(
            n > 0 && ui.numel() % n == 0 && ui.numel() >= n,
            "tiled VJP: cotangent {:?} is not blocks of θ {:?}",
            ui.shape(),
            gi.shape()
        );
        let (u, g) = (ui.data(), gi.data_mut());
        let mut sum = [F::zero(); SUM_CHUNK];
        for k0 in (0..n).step_by(SUM_CHUNK) {
            let len = SUM_CHUNK.min(n - k0);
            let s = &mut sum[..len];
            let mut blocks = u.chunks_exact(n).map(|blk| &blk[k0..k0 + len]);
            s.copy_from_slice(blocks.next().expect("one block at least"));
            for blk in blocks {
                s.iter_mut().zip(blk).for_each(|(a, &v)| *a += v);
            }
            g[k0..k0 + len]
                .iter_mut()
                .zip(s.iter())
                .for_each(|(a, &v)| *a += v);
        }
    }
}

/// Panics unless the problem's recorded φ_0 ([`Problem::initial_state`]) is
/// `s`, the B tiles of θ it promised by [`Problem::initial_state_tiles`]:
/// a broken promise would otherwise give a wrong hypergradient silently.
/// Run where debug assertions are on (one recording per initial state).
///
/// # Panics
/// Naming B and the first tensor whose shape or values differ.
#[cfg(debug_assertions)]
#[track_caller]
pub(crate) fn assert_recorded_matches<F: Float, P: Problem<F>>(
    ws: &mut super::step::InnerWorkspace<F>,
    problem: &P,
    task: &P::Task,
    theta: &[Tensor<F>],
    b: usize,
    s: &State<F>,
) {
    let recorded = ws
        .initial_state(problem, task, theta)
        .expect("φ_0 = tiles of a finite θ is finite");
    assert_eq!(
        recorded.phi.len(),
        s.phi.len(),
        "Problem::initial_state_tiles promised {b} tiles of θ's {} tensors, \
         but initial_state records {} tensors",
        s.phi.len(),
        recorded.phi.len()
    );
    for (i, (r, t)) in recorded.phi.iter().zip(&s.phi).enumerate() {
        assert!(
            r == t,
            "Problem::initial_state_tiles promised φ_0 = {b} tiles of θ, but \
             initial_state's tensor {i} ({:?}) is not {b} tiles of θ_{i} ({:?})",
            r.shape(),
            t.shape()
        );
    }
}

/// Panics unless a step recorded by [`Problem::inner_loss_at_tiles`] (its
/// cotangent on φ `u` and θ's gradient `g`, after the step) agrees with the
/// same step taken the ordinary way (`u_ref`, `g_ref`): θ's gradients
/// elementwise, and u's block sums over the `b` tiles (the only part of u
/// the sweep reads), each within √ε of the largest magnitude of its tensor
/// (f64: 1.5e-8, f32: 3.5e-4; the hook changes a rounding order, not the
/// terms). A broken promise would otherwise give a wrong hypergradient
/// silently. Run where debug assertions are on.
///
/// # Panics
/// Naming the tensor, the element and both values.
#[cfg(debug_assertions)]
#[track_caller]
pub(crate) fn assert_block_sums_match<F: Float>(
    b: usize,
    (u, g): (&[Tensor<F>], &[Tensor<F>]),
    (u_ref, g_ref): (&[Tensor<F>], &[Tensor<F>]),
) {
    let sums = |t: &Tensor<F>| -> Vec<F> {
        let n = t.numel() / b;
        let mut s = vec![F::zero(); n];
        for block in t.data().chunks_exact(n.max(1)) {
            s.iter_mut().zip(block).for_each(|(a, &v)| *a += v);
        }
        s
    };
    let close = |what: &str, i: usize, a: &[F], r: &[F]| {
        let f = |x: F| x.to_f64_prim();
        let scale = r.iter().chain(a).fold(0.0_f64, |m, &x| m.max(f(x).abs()));
        let tol = f(F::EPSILON).sqrt() * scale.max(f64::MIN_POSITIVE);
        if let Some((k, (&x, &y))) = a
            .iter()
            .zip(r)
            .enumerate()
            .find(|(_, (&x, &y))| (f(x) - f(y)).abs() > tol || (f(x) - f(y)).is_nan())
        {
            panic!(
                "Problem::inner_loss_at_tiles: step 1 recorded by it gives {what} {i}'s element {k} = {x}, \
                 the step recorded by inner_loss gives {y} (tolerance {tol:e}): its value, θ's adjoint \
                 and φ's block sums must be inner_loss's up to rounding"
            );
        }
    };
    for (i, (a, r)) in g.iter().zip(g_ref).enumerate() {
        close("θ's gradient", i, a.data(), r.data());
    }
    for (i, (a, r)) in u.iter().zip(u_ref).enumerate() {
        close("the block sum of φ's cotangent", i, &sums(a), &sums(r));
    }
}
