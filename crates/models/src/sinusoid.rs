//! Sinusoid regression, the MAML benchmark (Finn et al. 2017).
//!
//! A task is y = A·sin(x − φ) with amplitude A ~ U[0.1, 5] and phase
//! φ ~ U[0, π]; inputs x ~ U[−5, 5]. An episode holds K support and Q query
//! points of one task.

use rand::Rng;
use rand_distr::{Distribution, Uniform};
use tape::{Float, Tensor};

/// The task distribution (ranges are settable).
#[derive(Clone, Debug, PartialEq)]
pub struct SinusoidTasks {
    /// Amplitude range (inclusive), default [0.1, 5].
    pub amplitude: (f64, f64),
    /// Phase range, default [0, π].
    pub phase: (f64, f64),
    /// Input range, default [−5, 5].
    pub x_range: (f64, f64),
}

impl Default for SinusoidTasks {
    fn default() -> Self {
        SinusoidTasks {
            amplitude: (0.1, 5.0),
            phase: (0.0, std::f64::consts::PI),
            x_range: (-5.0, 5.0),
        }
    }
}

/// One sinusoid y = amplitude·sin(x − phase).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SinusoidTask {
    /// Amplitude A.
    pub amplitude: f64,
    /// Phase φ.
    pub phase: f64,
}

impl SinusoidTask {
    /// A·sin(x − φ).
    pub fn eval(&self, x: f64) -> f64 {
        self.amplitude * (x - self.phase).sin()
    }
}

/// K support and Q query points of one regression task; `x`, `y` are `[k, 1]`.
#[derive(Clone, Debug, PartialEq)]
pub struct RegressionEpisode<F> {
    /// The task the points came from.
    pub task: SinusoidTask,
    /// Support inputs `[k, 1]`.
    pub support_x: Tensor<F>,
    /// Support targets `[k, 1]`.
    pub support_y: Tensor<F>,
    /// Query inputs `[q, 1]`.
    pub query_x: Tensor<F>,
    /// Query targets `[q, 1]`.
    pub query_y: Tensor<F>,
}

fn range(r: (f64, f64)) -> Uniform<f64> {
    Uniform::new_inclusive(r.0, r.1)
}

impl SinusoidTasks {
    /// Draws a task.
    pub fn sample_task<R: Rng>(&self, rng: &mut R) -> SinusoidTask {
        let amplitude = range(self.amplitude).sample(rng);
        let phase = range(self.phase).sample(rng);
        SinusoidTask { amplitude, phase }
    }

    /// `n` points of `task`: inputs `[n, 1]` and targets `[n, 1]`.
    pub fn sample_points<F: Float, R: Rng>(
        &self,
        rng: &mut R,
        task: &SinusoidTask,
        n: usize,
    ) -> (Tensor<F>, Tensor<F>) {
        let u = range(self.x_range);
        let xs: Vec<f64> = (0..n).map(|_| u.sample(rng)).collect();
        let ys: Vec<F> = xs.iter().map(|&x| F::from_f64(task.eval(x))).collect();
        (
            Tensor::new([n, 1], xs.into_iter().map(F::from_f64).collect()),
            Tensor::new([n, 1], ys),
        )
    }

    /// Draws a task, then `k` support and `q` query points from it (independent
    /// draws). Same RNG state → same episode.
    pub fn sample_episode<F: Float, R: Rng>(
        &self,
        rng: &mut R,
        k: usize,
        q: usize,
    ) -> RegressionEpisode<F> {
        let task = self.sample_task(rng);
        let (support_x, support_y) = self.sample_points(rng, &task, k);
        let (query_x, query_y) = self.sample_points(rng, &task, q);
        RegressionEpisode {
            task,
            support_x,
            support_y,
            query_x,
            query_y,
        }
    }
}
