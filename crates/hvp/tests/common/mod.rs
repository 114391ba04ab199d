//! Shared helpers for the hvp tests: random tensors, central differences, and
//! closeness checks that report the worst entry.
#![allow(dead_code)]

use hvp::{Objective, VectorFunction, Workspace};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tape::{Tape, Tensor};

/// Deterministic generator from a seed.
pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// A tensor with entries uniform in [lo, hi).
pub fn uniform(r: &mut ChaCha8Rng, dims: &[usize], lo: f64, hi: f64) -> Tensor<f64> {
    Tensor::from_fn(dims, |_| r.gen_range(lo..hi))
}

/// Entries ±[0.2, 1): away from the kink at 0 (relu, abs).
pub fn away_from_zero(r: &mut ChaCha8Rng, dims: &[usize]) -> Tensor<f64> {
    Tensor::from_fn(dims, |_| {
        let m = r.gen_range(0.2..1.0);
        if r.gen_bool(0.5) {
            m
        } else {
            -m
        }
    })
}

/// Distinct entries at least 0.3 apart (a random permutation of a grid, plus
/// noise below 0.1): no ties for max, so a small perturbation keeps the argmax.
pub fn spread(r: &mut ChaCha8Rng, dims: &[usize]) -> Tensor<f64> {
    let n: usize = dims.iter().product();
    let mut ranks: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        ranks.swap(i, r.gen_range(0..=i));
    }
    let scale = 1.0 / n as f64;
    Tensor::from_fn(dims, |i| {
        (ranks[i] as f64 * 0.5 + r.gen_range(-0.1..0.1)) * scale.max(0.05)
    })
}

/// x + s·v, elementwise over lists of tensors.
pub fn axpy(x: &[Tensor<f64>], s: f64, v: &[Tensor<f64>]) -> Vec<Tensor<f64>> {
    x.iter()
        .zip(v)
        .map(|(a, b)| {
            Tensor::new(
                a.shape(),
                a.data()
                    .iter()
                    .zip(b.data())
                    .map(|(p, q)| p + s * q)
                    .collect(),
            )
        })
        .collect()
}

/// Σ_i ⟨a_i, b_i⟩.
pub fn dot(a: &[Tensor<f64>], b: &[Tensor<f64>]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            x.data()
                .iter()
                .zip(y.data())
                .map(|(p, q)| p * q)
                .sum::<f64>()
        })
        .sum()
}

/// y = g(x) on an f64 tape.
pub fn eval_vec<G: VectorFunction<f64>>(g: &G, x: &[Tensor<f64>]) -> Tensor<f64> {
    let t = Tape::<f64>::new();
    let vars: Vec<_> = x.iter().map(|xi| t.var(xi)).collect();
    g.eval(&t, &vars).value()
}

/// f(x) on an f64 tape.
pub fn eval_scalar<O: Objective<f64>>(f: &O, x: &[Tensor<f64>]) -> f64 {
    let t = Tape::<f64>::new();
    let vars: Vec<_> = x.iter().map(|xi| t.var(xi)).collect();
    f.eval(&t, &vars).item()
}

/// Central difference of y = g(x) along v: (g(x + hv) − g(x − hv))/2h,
/// which equals J·v up to O(h²) truncation and O(ε/h) rounding.
pub fn fd_jvp<G: VectorFunction<f64>>(
    g: &G,
    x: &[Tensor<f64>],
    v: &[Tensor<f64>],
    h: f64,
) -> Vec<f64> {
    let yp = eval_vec(g, &axpy(x, h, v));
    let ym = eval_vec(g, &axpy(x, -h, v));
    yp.data()
        .iter()
        .zip(ym.data())
        .map(|(a, b)| (a - b) / (2.0 * h))
        .collect()
}

/// Central difference of the gradient along v: (∇f(x + hv) − ∇f(x − hv))/2h ≈ H·v.
pub fn fd_hvp<O: Objective<f64>>(
    f: &O,
    x: &[Tensor<f64>],
    v: &[Tensor<f64>],
    h: f64,
) -> Vec<Tensor<f64>> {
    let mut ws = Workspace::new();
    let (_, gp) = ws.value_and_grad(f, &axpy(x, h, v));
    let (_, gm) = ws.value_and_grad(f, &axpy(x, -h, v));
    axpy(&gp, -1.0, &gm)
        .into_iter()
        .map(|d| d.map(|e| e / (2.0 * h)))
        .collect()
}

/// Asserts |a_i − b_i| ≤ tol·max(1, max_j |b_j|) for every i, naming the worst entry.
#[track_caller]
pub fn assert_close(what: &str, a: &[f64], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    let scale = b.iter().fold(1.0_f64, |m, x| m.max(x.abs()));
    let (worst, err) = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .enumerate()
        .fold(
            (0, 0.0),
            |(wi, we), (i, e)| if e > we { (i, e) } else { (wi, we) },
        );
    assert!(
        err <= tol * scale && err.is_finite(),
        "{what}: entry {worst}: {} vs {} (error {err:.3e}, allowed {:.3e})",
        a.get(worst).copied().unwrap_or(f64::NAN),
        b.get(worst).copied().unwrap_or(f64::NAN),
        tol * scale
    );
}

/// Flattened data of a list of tensors.
pub fn flat(xs: &[Tensor<f64>]) -> Vec<f64> {
    hvp::flatten(xs)
}
