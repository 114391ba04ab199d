//! The shortest useful program: state a bilevel problem, print its
//! hypergradient with two estimators (the README's first code block).
//!
//! ```text
//! cargo run --release --example quickstart
//! ```

use blo::{BloError, Estimator, Exact, FirstOrder, InnerLoop, Policy, Problem};
use rand::SeedableRng;
use tape::{Real, Tape, Tensor, Var};

/// MAML on a 1-D task with centre c: L_in = L_out = ½·a·(φ − c)², φ_0 = θ, r SGD steps.
struct Quadratic {
    a: f64,
    inner: InnerLoop,
}

impl Problem<f64> for Quadratic {
    type Task = f64; // the centre c
    fn inner_loop(&self) -> &InnerLoop {
        &self.inner
    }
    fn inner_loss<'t, T: Real<Base = f64>>(
        &self,
        _: &'t Tape<T>,
        c: &f64,
        _step: usize,
        _: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        (phi[0] - *c).square().sum() * (0.5 * self.a)
    }
    fn outer_loss<'t, T: Real<Base = f64>>(
        &self,
        t: &'t Tape<T>,
        c: &f64,
        th: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        self.inner_loss(t, c, 0, th, phi)
    }
}

/// Returns (exact, first-order) hypergradients at θ = 3 for the task c = 1.
pub fn run() -> Result<(f64, f64), BloError> {
    let problem = Quadratic {
        a: 1.5,
        inner: InnerLoop::sgd(10, 0.1)?,
    };
    let theta = [Tensor::vector(vec![3.0])];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let exact = Exact::new(Policy::Recompute)?.estimate(&problem, &1.0, &theta, &mut rng)?;
    let fo = FirstOrder::new().estimate(&problem, &1.0, &theta, &mut rng)?;
    Ok((exact.grad[0].data()[0], fo.grad[0].data()[0]))
}

fn main() -> Result<(), BloError> {
    let (exact, fo) = run()?;
    // φ_r − c = p·(θ − c) with p = (1 − αa)^r, so F′(θ) = a·p²·(θ − c) while FO gives a·p·(θ − c).
    let p = (1.0_f64 - 0.1 * 1.5).powi(10);
    println!(
        "exact hypergradient  {exact:.6}   (closed form a·p²·(θ − c) = {:.6})",
        1.5 * p * p * 2.0
    );
    println!(
        "first-order estimate {fo:.6}   (closed form a·p·(θ − c)  = {:.6})",
        1.5 * p * 2.0
    );
    Ok(())
}
