//! MAML on a chunk of regression tasks at once (a `vmap`-like path).
//!
//! Tasks of a meta-batch are independent, so B of them can be one bilevel
//! problem: stack the inner variables φ = (φ_1, …, φ_B) along a leading axis
//! and take the sums
//!
//! L_in(θ, φ) = Σ_b L_in,b(θ, φ_b),   L_out(θ, φ) = Σ_b L_out,b(θ, φ_b),
//! φ_0 = (θ, …, θ).
//!
//! Then ∇_{φ_b} L_in = ∇ L_in,b, so SGD on the stack is SGD on every task; the
//! Hessian of L_in in φ is block-diagonal, and the exact (or first-order)
//! hypergradient of the sum is the sum of the per-task ones (the VJP through
//! φ_0 = (θ, …, θ) adds the blocks). One tape then records a whole chunk with
//! batched products (`[B, n, k]·[B, m, k]ᵀ`, [`Mlp::forward_batched`]), and
//! every per-node cost is paid once per chunk instead of once per task.
//!
//! For thread-count independence, chunk a meta-batch into fixed-size chunks
//! ([`RegressionChunk::chunks`], the size a parameter, never the thread
//! count) and sum the chunks' estimates in chunk order ([`sum_estimates`]).
//!
//! ```
//! use blo::{Estimator, FirstOrder, InnerLoop};
//! use models::{Activation, BatchedRegressionMaml, Mlp, Model, RegressionChunk, SinusoidTasks};
//! use rand::SeedableRng;
//! use rand_chacha::ChaCha8Rng;
//!
//! let net = Mlp::new(&[1, 16, 16, 1], Activation::Relu);
//! let theta = net.init::<f64>(0).into_tensors();
//! let mut rng = ChaCha8Rng::seed_from_u64(0);
//! let episodes: Vec<_> = (0..5)
//!     .map(|_| SinusoidTasks::default().sample_episode::<f64, _>(&mut rng, 10, 10))
//!     .collect();
//! // 5 tasks in chunks of 2: [2, 2, 1].
//! let chunks = RegressionChunk::chunks(&episodes, 2)?;
//! assert_eq!(chunks.iter().map(|c| c.tasks()).collect::<Vec<_>>(), [2, 2, 1]);
//! let problem = BatchedRegressionMaml { net, inner: InnerLoop::sgd(3, 0.01)? };
//! // The sum over the 5 tasks of the first-order hypergradient and query loss.
//! let sum = models::sum_estimates(&problem, &FirstOrder::new(), &chunks, &theta, 0)?;
//! assert_eq!(sum.grad[0].dims(), theta[0].dims());
//! assert!(sum.outer_loss.is_finite());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use blo::problem::InnerLoop;
use blo::{BloError, Estimate, Estimator, Problem};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use tape::{Float, Real, Shape, Tape, Tensor, Var};

use crate::error::BatchError;
use crate::{Mlp, RegressionEpisode};

/// B regression episodes stacked along a leading axis: the task of
/// [`BatchedRegressionMaml`]. Every episode must have the same shapes.
#[derive(Clone, Debug, PartialEq)]
pub struct RegressionChunk<F> {
    /// Support inputs `[B, k, d_in]`.
    pub support_x: Tensor<F>,
    /// Support targets `[B, k, d_out]`.
    pub support_y: Tensor<F>,
    /// Query inputs `[B, q, d_in]`.
    pub query_x: Tensor<F>,
    /// Query targets `[B, q, d_out]`.
    pub query_y: Tensor<F>,
}

/// `[B, ..dims]` from B equally shaped tensors; the error names the first that differs.
fn stack<F: Float>(
    what: &'static str,
    parts: impl ExactSizeIterator<Item = (usize, Tensor<F>)>,
) -> Result<Tensor<F>, BatchError> {
    let b = parts.len();
    let mut data = Vec::new();
    let mut first: Option<Vec<usize>> = None;
    for (episode, t) in parts {
        match &first {
            None => first = Some(t.dims().to_vec()),
            Some(d) if d.as_slice() != t.dims() => {
                return Err(BatchError::ShapeMismatch {
                    episode,
                    what,
                    expected: d.clone(),
                    found: t.dims().to_vec(),
                })
            }
            Some(_) => {}
        }
        data.extend_from_slice(t.data());
    }
    let mut dims = vec![b];
    dims.extend(first.ok_or(BatchError::Empty("no episode given"))?);
    Ok(Tensor::new(Shape::new(&dims), data))
}

impl<F: Float> RegressionChunk<F> {
    /// Stacks `episodes` (in order) into one chunk.
    ///
    /// # Errors
    /// [`BatchError::Empty`] for no episode; [`BatchError::ShapeMismatch`]
    /// naming the episode and tensor whose shape differs from episode 0's.
    pub fn new(episodes: &[RegressionEpisode<F>]) -> Result<Self, BatchError> {
        let field = |what, f: fn(&RegressionEpisode<F>) -> &Tensor<F>| {
            stack(what, episodes.iter().map(f).cloned().enumerate())
        };
        Ok(RegressionChunk {
            support_x: field("support_x", |e| &e.support_x)?,
            support_y: field("support_y", |e| &e.support_y)?,
            query_x: field("query_x", |e| &e.query_x)?,
            query_y: field("query_y", |e| &e.query_y)?,
        })
    }

    /// Consecutive chunks of `size` episodes (the last may be shorter), in
    /// order. The chunking depends on `size` only, so the sum of the chunks'
    /// estimates in chunk order ([`sum_estimates`]) is the same for any
    /// number of threads.
    ///
    /// # Errors
    /// [`BatchError::Empty`] for `size` = 0 or no episode;
    /// [`BatchError::ShapeMismatch`] as for [`RegressionChunk::new`] (the
    /// episode index is the one within its chunk).
    pub fn chunks(episodes: &[RegressionEpisode<F>], size: usize) -> Result<Vec<Self>, BatchError> {
        if size == 0 {
            return Err(BatchError::Empty("chunk size 0"));
        }
        if episodes.is_empty() {
            return Err(BatchError::Empty("no episode given"));
        }
        episodes.chunks(size).map(Self::new).collect()
    }

    /// The number of tasks B.
    pub fn tasks(&self) -> usize {
        self.support_x.dims()[0]
    }
}

/// MAML on a chunk of regression tasks ([`RegressionChunk`]) with an
/// [`Mlp`]: φ_0 = θ broadcast to every task, L_in = Σ_b MSE_b(support),
/// L_out = Σ_b MSE_b(query) (module docs). Its estimates are the sums over
/// the chunk's tasks of [`crate::RegressionMaml`]'s per-task estimates, up
/// to rounding (the sums run in another order).
#[derive(Clone, Debug)]
pub struct BatchedRegressionMaml {
    /// The network (its parameters get a leading task axis inside the inner loop).
    pub net: Mlp,
    /// The inner optimiser: SGD (or momentum), whose step acts on each
    /// element by itself, so a step on the stack is a step on every task.
    pub inner: InnerLoop,
}

impl BatchedRegressionMaml {
    /// Σ_b mean_i (ŷ_bi − y_bi)² = B · (mean over all B·n points) of the
    /// network at the stacked φ on `x` (every task has the same number of points).
    /// With `tiled`, the network is [`Mlp::forward_batched_tiled`] (the
    /// weights' adjoints as their block sums).
    fn summed_mse<'t, T: Real>(
        &self,
        tape: &'t Tape<T>,
        phi: &[Var<'t, T>],
        (x, y): (&Tensor<T::Base>, &Tensor<T::Base>),
        tiled: bool,
    ) -> Var<'t, T> {
        let (x, y) = (tape.constant_base(x), tape.constant_base(y));
        let b = x.shape().dim(0);
        let out = if tiled {
            self.net.forward_batched_tiled(tape, phi, x)
        } else {
            self.net.forward_batched(tape, phi, x)
        };
        out.mse(y).mul_scalar(b as f64)
    }
}

impl<F: Float> Problem<F> for BatchedRegressionMaml {
    type Task = RegressionChunk<F>;

    fn inner_loop(&self) -> &InnerLoop {
        &self.inner
    }

    fn inner_loss<'t, T: Real<Base = F>>(
        &self,
        tape: &'t Tape<T>,
        task: &Self::Task,
        _step: usize,
        _theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        self.summed_mse(tape, phi, (&task.support_x, &task.support_y), false)
    }

    fn outer_loss<'t, T: Real<Base = F>>(
        &self,
        tape: &'t Tape<T>,
        task: &Self::Task,
        _theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        self.summed_mse(tape, phi, (&task.query_x, &task.query_y), false)
    }

    /// The support loss with every weight's and bias's adjoint as its block
    /// sum in block 0, one product per layer for the whole chunk
    /// ([`Mlp::forward_batched_tiled`]).
    fn inner_loss_at_tiles<'t, T: Real<Base = F>>(
        &self,
        tape: &'t Tape<T>,
        task: &Self::Task,
        _theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Option<Var<'t, T>> {
        Some(self.summed_mse(tape, phi, (&task.support_x, &task.support_y), true))
    }

    /// φ_0 = (θ, …, θ): each θ tensor of shape `d` tiled to `[B, ..d]`
    /// (`tile_batch`; its VJP sums the B blocks).
    fn initial_state<'t, T: Real<Base = F>>(
        &self,
        _tape: &'t Tape<T>,
        task: &Self::Task,
        theta: &[Var<'t, T>],
    ) -> Vec<Var<'t, T>> {
        let b = task.tasks();
        theta.iter().map(|v| v.tile_batch(b)).collect()
    }

    /// φ_0 is θ tiled once per task of the chunk (`initial_state`), so the
    /// sweeps write it and take its VJP without a tape.
    fn initial_state_tiles(&self, task: &Self::Task) -> Option<usize> {
        Some(task.tasks())
    }
}

/// The sum of the estimates of `tasks` (for [`BatchedRegressionMaml`]: the
/// chunks of a meta-batch, so the sum over all its tasks), computed in
/// parallel on the current rayon pool (on the calling thread, in order, when
/// the pool has one thread) and summed in task order, so the result is
/// bit-identical for any number of threads. Task i gets the
/// estimator stream `ChaCha8Rng::seed_from_u64((seed << 16) | i)`. Gradients
/// and losses are summed, the stats added ([`blo::Stats::add`]).
///
/// # Errors
/// The first failing task's error, in task order.
///
/// # Panics
/// If `tasks` is empty.
#[track_caller]
pub fn sum_estimates<F, P, E>(
    problem: &P,
    estimator: &E,
    tasks: &[P::Task],
    theta: &[Tensor<F>],
    seed: u64,
) -> Result<Estimate<F>, BloError>
where
    F: Float,
    P: Problem<F>,
    E: Estimator<F, P> + ?Sized,
{
    assert!(!tasks.is_empty(), "sum_estimates: no task given");
    let one = |(i, task): (usize, &P::Task)| {
        let mut rng = ChaCha8Rng::seed_from_u64((seed << 16) | i as u64);
        estimator.estimate(problem, task, theta, &mut rng)
    };
    // On a one-thread pool the chunks run on this thread, in order (the same
    // numbers, without handing them to the pool's one worker).
    let estimates: Vec<Result<Estimate<F>, BloError>> = if rayon::current_num_threads() == 1 {
        tasks.iter().enumerate().map(one).collect()
    } else {
        tasks
            .par_iter()
            .enumerate()
            // One task per job: an idle thread steals the next chunk.
            .with_max_len(1)
            .map(one)
            .collect()
    };
    let mut it = estimates.into_iter();
    let mut sum = it.next().expect("one task at least")?;
    for e in it {
        let e = e?;
        sum.outer_loss += e.outer_loss;
        sum.stats.add(&e.stats);
        for (acc, g) in sum.grad.iter_mut().zip(&e.grad) {
            acc.data_mut()
                .iter_mut()
                .zip(g.data())
                .for_each(|(a, &b)| *a += b);
        }
    }
    Ok(sum)
}
