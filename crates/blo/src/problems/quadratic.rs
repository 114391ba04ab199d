//! The quadratic bilevel problem with a closed-form value function.

use tape::{Constant, Real, Tape, Tensor, Var};

use super::{col, normals, rng, spd_solve};
use crate::error::BloError;
use crate::problem::{InnerLoop, Problem};

/// A quadratic bilevel problem (benchopt `benchmark_bilevel`'s quadratic
/// problem), with θ = x ∈ Rⁿ and φ = y ∈ Rᵖ:
///
/// ```text
/// g(x, y) = ½ yᵀA y + yᵀB x + aᵀy                 (A ≻ 0: strongly convex in y)
/// f(x, y) = ½ yᵀC y + cᵀy + ½ xᵀD x + dᵀx          (C ⪰ 0, D ≻ 0)
/// ```
///
/// Everything is in closed form: y*(x) = K x + k₀ with K = −A⁻¹B, k₀ = −A⁻¹a;
/// h(x) = f(x, y*(x)) is quadratic with Hessian S = KᵀCK + D and gradient
/// ∇h(x) = S x + Kᵀ(C k₀ + c) + d, so x* = −S⁻¹(Kᵀ(C k₀ + c) + d). The
/// products are H_yy = A and H_xy v = Bᵀv; v*(x, y) = −A⁻¹(C y + c).
///
/// Generated from a seed: A = I/2 + XᵀX/(4p), C = YᵀY/(4p), D = I/2 + ZᵀZ/(4n)
/// with Gaussian X, Y ([4p, p]), Z ([4n, n]); B Gaussian / √p; a, c, d
/// Gaussian. φ_0 = 0 (a constant start), θ_0 = 0. The inner loss does not
/// depend on j; the inner loop (for the unrolled estimators) is 100 SGD steps
/// of 1/λ_max(A) bounded by its Gershgorin bound.
///
/// ```
/// use blo::problems::Quadratic;
/// let q = Quadratic::generate(5, 4, 7)?;
/// // ∇h vanishes at the closed-form solution.
/// let g = q.hypergradient(&q.theta_star());
/// assert!(g.iter().all(|x| x.abs() < 1e-12));
/// # Ok::<(), blo::BloError>(())
/// ```
#[derive(Clone, Debug)]
pub struct Quadratic {
    n: usize,
    p: usize,
    /// A, B, C, D are shared with the tapes: each pass reads them in place
    /// ([`Tape::constant_shared`]) instead of copying them into the arena.
    a: Constant<f64>,
    b: Constant<f64>,
    a_vec: Tensor<f64>,
    c: Constant<f64>,
    c_vec: Tensor<f64>,
    d: Constant<f64>,
    d_vec: Tensor<f64>,
    inner: InnerLoop,
    theta_star: Vec<f64>,
}

fn gram(rng: &mut rand_chacha::ChaCha8Rng, m: usize, k: usize, shift: f64) -> Vec<f64> {
    let x = normals(rng, m * k);
    let mut g = vec![0.0; k * k];
    for i in 0..k {
        for j in 0..k {
            let s: f64 = (0..m).map(|r| x[r * k + i] * x[r * k + j]).sum();
            g[i * k + j] = s / m as f64 + if i == j { shift } else { 0.0 };
        }
    }
    g
}

fn matvec(m: &[f64], rows: usize, cols: usize, x: &[f64]) -> Vec<f64> {
    (0..rows)
        .map(|i| (0..cols).map(|j| m[i * cols + j] * x[j]).sum())
        .collect()
}

fn matvec_t(m: &[f64], rows: usize, cols: usize, x: &[f64]) -> Vec<f64> {
    (0..cols)
        .map(|j| (0..rows).map(|i| m[i * cols + j] * x[i]).sum())
        .collect()
}

impl Quadratic {
    /// The problem with θ ∈ Rⁿ (`n_theta`) and φ ∈ Rᵖ (`n_phi`) from `seed`.
    ///
    /// # Errors
    /// [`BloError::InvalidHyperparameter`] if a dimension is 0.
    pub fn generate(n_theta: usize, n_phi: usize, seed: u64) -> Result<Self, BloError> {
        let (n, p) = (n_theta, n_phi);
        if n == 0 || p == 0 {
            return Err(BloError::invalid(
                "Quadratic dimensions",
                format!("n_theta = {n}, n_phi = {p}"),
                "both must be ≥ 1",
            ));
        }
        let mut r = rng(seed);
        let a = gram(&mut r, 4 * p, p, 0.5);
        let c = gram(&mut r, 4 * p, p, 0.0);
        let d = gram(&mut r, 4 * n, n, 0.5);
        let b: Vec<f64> = normals(&mut r, p * n)
            .iter()
            .map(|x| x / (p as f64).sqrt())
            .collect();
        let a_vec = normals(&mut r, p);
        let c_vec = normals(&mut r, p);
        let d_vec = normals(&mut r, n);
        // Gershgorin bound on λ_max(A): a safe SGD step for the unrolled inner loop.
        let lmax = (0..p)
            .map(|i| (0..p).map(|j| a[i * p + j].abs()).sum::<f64>())
            .fold(0.0, f64::max);
        let inner = InnerLoop::sgd(100, 1.0 / lmax)?;
        let mut q = Quadratic {
            n,
            p,
            a: Constant::new(Tensor::new([p, p], a)),
            b: Constant::new(Tensor::new([p, n], b)),
            a_vec: Tensor::new([p, 1], a_vec),
            c: Constant::new(Tensor::new([p, p], c)),
            c_vec: Tensor::new([p, 1], c_vec),
            d: Constant::new(Tensor::new([n, n], d)),
            d_vec: Tensor::new([n, 1], d_vec),
            inner,
            theta_star: Vec::new(),
        };
        q.theta_star = q.solve_theta_star()?;
        Ok(q)
    }

    /// Replaces the inner loop the unrolled estimators run.
    pub fn with_inner_loop(mut self, inner: InnerLoop) -> Self {
        self.inner = inner;
        self
    }

    /// (n, p) = (dim θ, dim φ).
    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.p)
    }

    /// The matrices (A, B, C, D) row-major: A, C are p×p, B is p×n, D is n×n.
    pub fn matrices(&self) -> [&[f64]; 4] {
        [
            self.a.value().data(),
            self.b.value().data(),
            self.c.value().data(),
            self.d.value().data(),
        ]
    }

    /// The vectors (a, c, d).
    pub fn vectors(&self) -> [&[f64]; 3] {
        [self.a_vec.data(), self.c_vec.data(), self.d_vec.data()]
    }

    /// θ_0 = 0.
    pub fn theta0(&self) -> Vec<Tensor<f64>> {
        vec![Tensor::zeros(&[self.n][..])]
    }

    /// −A⁻¹ w.
    fn neg_a_inv(&self, w: &[f64]) -> Vec<f64> {
        spd_solve(self.a.value().data(), self.p, w)
            .expect("A = I/2 + XᵀX/m is positive definite")
            .into_iter()
            .map(|x| -x)
            .collect()
    }

    /// y*(x) = −A⁻¹(Bx + a).
    pub fn phi_star(&self, theta: &[f64]) -> Vec<f64> {
        let mut w = matvec(self.b.value().data(), self.p, self.n, theta);
        for (wi, ai) in w.iter_mut().zip(self.a_vec.data()) {
            *wi += ai;
        }
        self.neg_a_inv(&w)
    }

    /// v*(y) = −A⁻¹(C y + c), the solution of H v = −∇_y f.
    pub fn v_star(&self, phi: &[f64]) -> Vec<f64> {
        let mut w = matvec(self.c.value().data(), self.p, self.p, phi);
        for (wi, ci) in w.iter_mut().zip(self.c_vec.data()) {
            *wi += ci;
        }
        self.neg_a_inv(&w)
    }

    /// ∇_y g(x, y) = A y + B x + a.
    pub fn grad_inner_phi(&self, theta: &[f64], phi: &[f64]) -> Vec<f64> {
        let ay = matvec(self.a.value().data(), self.p, self.p, phi);
        let bx = matvec(self.b.value().data(), self.p, self.n, theta);
        (0..self.p)
            .map(|i| ay[i] + bx[i] + self.a_vec.data()[i])
            .collect()
    }

    /// ∇_x g(x, y) = Bᵀ y.
    pub fn grad_inner_theta(&self, phi: &[f64]) -> Vec<f64> {
        matvec_t(self.b.value().data(), self.p, self.n, phi)
    }

    /// ∇_y f(x, y) = C y + c.
    pub fn grad_outer_phi(&self, phi: &[f64]) -> Vec<f64> {
        let cy = matvec(self.c.value().data(), self.p, self.p, phi);
        cy.iter()
            .zip(self.c_vec.data())
            .map(|(a, b)| a + b)
            .collect()
    }

    /// ∇_x f(x, y) = D x + d.
    pub fn grad_outer_theta(&self, theta: &[f64]) -> Vec<f64> {
        let dx = matvec(self.d.value().data(), self.n, self.n, theta);
        dx.iter()
            .zip(self.d_vec.data())
            .map(|(a, b)| a + b)
            .collect()
    }

    /// H_yy v = A v.
    pub fn hvp(&self, v: &[f64]) -> Vec<f64> {
        matvec(self.a.value().data(), self.p, self.p, v)
    }

    /// H_xy v = Bᵀ v.
    pub fn mixed(&self, v: &[f64]) -> Vec<f64> {
        matvec_t(self.b.value().data(), self.p, self.n, v)
    }

    /// f(x, y).
    pub fn outer_value(&self, theta: &[f64], phi: &[f64]) -> f64 {
        let cy = matvec(self.c.value().data(), self.p, self.p, phi);
        let dx = matvec(self.d.value().data(), self.n, self.n, theta);
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        0.5 * dot(phi, &cy)
            + dot(self.c_vec.data(), phi)
            + 0.5 * dot(theta, &dx)
            + dot(self.d_vec.data(), theta)
    }

    /// h(x) = f(x, y*(x)).
    pub fn value(&self, theta: &[f64]) -> f64 {
        self.outer_value(theta, &self.phi_star(theta))
    }

    /// ∇h(x) = ∇_x f + Bᵀ v* at y = y*(x).
    pub fn hypergradient(&self, theta: &[f64]) -> Vec<f64> {
        let y = self.phi_star(theta);
        let v = self.v_star(&y);
        let g = self.grad_outer_theta(theta);
        let m = self.mixed(&v);
        g.iter().zip(&m).map(|(a, b)| a + b).collect()
    }

    /// x*, the minimiser of h.
    pub fn theta_star(&self) -> Vec<f64> {
        self.theta_star.clone()
    }

    /// ‖θ − θ*‖ for a θ given as this problem's one tensor.
    pub fn distance_to_solution(&self, theta: &[Tensor<f64>]) -> f64 {
        theta[0]
            .data()
            .iter()
            .zip(&self.theta_star)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f64>()
            .sqrt()
    }

    fn solve_theta_star(&self) -> Result<Vec<f64>, BloError> {
        let (n, p) = (self.n, self.p);
        // K = −A⁻¹B column by column; S = KᵀCK + D; rhs = Kᵀ(C k₀ + c) + d.
        let bcols: Vec<Vec<f64>> = (0..n)
            .map(|j| (0..p).map(|i| self.b.value().data()[i * n + j]).collect())
            .collect();
        let kcols: Vec<Vec<f64>> = bcols.iter().map(|b| self.neg_a_inv(b)).collect();
        let ckcols: Vec<Vec<f64>> = kcols
            .iter()
            .map(|k| matvec(self.c.value().data(), p, p, k))
            .collect();
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        let mut s = self.d.value().data().to_vec();
        for i in 0..n {
            for j in 0..n {
                s[i * n + j] += dot(&kcols[i], &ckcols[j]);
            }
        }
        let k0 = self.neg_a_inv(self.a_vec.data());
        let w = self.grad_outer_phi(&k0);
        let rhs: Vec<f64> = (0..n)
            .map(|i| dot(&kcols[i], &w) + self.d_vec.data()[i])
            .collect();
        Ok(spd_solve(&s, n, &rhs)?.into_iter().map(|x| -x).collect())
    }
}

impl Problem<f64> for Quadratic {
    type Task = ();

    fn inner_loop(&self) -> &InnerLoop {
        &self.inner
    }

    /// g(x, y) = ½ yᵀA y + yᵀB x + aᵀy (the same at every index j).
    fn inner_loss<'t, T: Real<Base = f64>>(
        &self,
        tape: &'t Tape<T>,
        _task: &(),
        _step: usize,
        theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        let (x, y) = (col(theta[0]), col(phi[0]));
        let ay = tape.constant_shared(&self.a).matmul(y);
        let bx = tape.constant_shared(&self.b).matmul(x);
        let a = tape.constant_base(&self.a_vec);
        (y * (ay * 0.5 + bx + a)).sum()
    }

    /// g(x, y) − g(x, z) with B x and the constants recorded once: the
    /// forward values are those of two [`Problem::inner_loss`] calls, bit for
    /// bit; the gradient over x takes one product Bᵀ(ḡ_y + ḡ_z) instead of
    /// two (a rounding difference).
    fn inner_loss_gap<'t, T: Real<Base = f64>>(
        &self,
        tape: &'t Tape<T>,
        _task: &(),
        _step: usize,
        theta: &[Var<'t, T>],
        y: &[Var<'t, T>],
        z: &[Var<'t, T>],
    ) -> Var<'t, T> {
        let a = tape.constant_shared(&self.a);
        let bx = tape.constant_shared(&self.b).matmul(col(theta[0]));
        let a_vec = tape.constant_base(&self.a_vec);
        let g = |y: Var<'t, T>| (y * (a.matmul(y) * 0.5 + bx + a_vec)).sum();
        g(col(y[0])) - g(col(z[0]))
    }

    /// f(x, y) = ½ yᵀC y + cᵀy + ½ xᵀD x + dᵀx.
    fn outer_loss<'t, T: Real<Base = f64>>(
        &self,
        tape: &'t Tape<T>,
        _task: &(),
        theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        let (x, y) = (col(theta[0]), col(phi[0]));
        let cy = tape.constant_shared(&self.c).matmul(y);
        let dx = tape.constant_shared(&self.d).matmul(x);
        let c = tape.constant_base(&self.c_vec);
        let d = tape.constant_base(&self.d_vec);
        (y * (cy * 0.5 + c)).sum() + (x * (dx * 0.5 + d)).sum()
    }

    /// φ_0 = 0 (a constant).
    fn initial_state<'t, T: Real<Base = f64>>(
        &self,
        tape: &'t Tape<T>,
        _task: &(),
        _theta: &[Var<'t, T>],
    ) -> Vec<Var<'t, T>> {
        vec![tape.constant_base(&Tensor::zeros(&[self.p][..]))]
    }
}
