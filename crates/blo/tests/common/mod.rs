//! Test problems shared by the estimator tests (f64 unless generic).
#![allow(dead_code, clippy::needless_range_loop)]

use blo::{InnerLoop, Problem};
use tape::{Float, Real, Tape, Tensor, Var};

/// A constant vector on any tape.
pub fn consts<'t, T: Real>(tape: &'t Tape<T>, c: &[f64]) -> Var<'t, T> {
    tape.constant_base(&Tensor::vector(
        c.iter().map(|&x| <T::Base as Real>::from_f64(x)).collect(),
    ))
}

/// A constant matrix (row-major) on any tape.
pub fn const_mat<'t, T: Real>(
    tape: &'t Tape<T>,
    m: &[f64],
    rows: usize,
    cols: usize,
) -> Var<'t, T> {
    tape.constant_base(&Tensor::new(
        [rows, cols],
        m.iter().map(|&x| <T::Base as Real>::from_f64(x)).collect(),
    ))
}

/// ½ xᵀ M x with M a constant d×d matrix, x a [d] vector.
pub fn quad_form<'t, T: Real>(tape: &'t Tape<T>, m: &[f64], x: Var<'t, T>) -> Var<'t, T> {
    let d = m.len().isqrt();
    let mx = const_mat(tape, m, d, d)
        .matmul(x.reshape([d, 1]))
        .reshape([d]);
    (mx * x).sum() * 0.5
}

pub fn matvec(m: &[f64], x: &[f64]) -> Vec<f64> {
    let d = x.len();
    (0..d)
        .map(|i| (0..d).map(|k| m[i * d + k] * x[k]).sum())
        .collect()
}

/// A symmetric positive definite d×d matrix, deterministic in `seed`.
pub fn spd(d: usize, seed: u64, shift: f64) -> Vec<f64> {
    let b: Vec<f64> = (0..d * d)
        .map(|i| (((i as u64 + 1) * (seed + 7)) as f64 * 0.618).sin())
        .collect();
    let mut m = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..d {
            m[i * d + j] = (0..d).map(|k| b[i * d + k] * b[j * d + k]).sum::<f64>() / d as f64;
        }
        m[i * d + i] += shift;
    }
    m
}

/// MAML on quadratics: L_in = ½φᵀAφ − bᵀφ (the same at every step),
/// L_out = ½φᵀCφ − dᵀφ, φ_0 = θ.
pub struct QuadMaml {
    pub inner: InnerLoop,
    pub dim: usize,
    pub a: Vec<f64>,
    pub b: Vec<f64>,
    pub c: Vec<f64>,
    pub d: Vec<f64>,
}

impl QuadMaml {
    pub fn new(dim: usize, inner: InnerLoop) -> Self {
        QuadMaml {
            inner,
            dim,
            a: spd(dim, 1, 0.5),
            b: (0..dim).map(|i| (i as f64 * 0.7).cos()).collect(),
            c: spd(dim, 2, 0.3),
            d: (0..dim).map(|i| (i as f64 * 1.3).sin()).collect(),
        }
    }

    /// Closed form: with P = I − αA (symmetric), φ_j = Pφ_{j−1} + αb, so
    /// dφ_r/dθ = P^r and ∇F = P^r (Cφ_r − d).
    pub fn closed_form(&self, alpha: f64, r: usize, theta: &[f64]) -> Vec<f64> {
        let p = |x: &[f64]| -> Vec<f64> {
            let ax = matvec(&self.a, x);
            x.iter().zip(&ax).map(|(xi, ai)| xi - alpha * ai).collect()
        };
        let mut phi = theta.to_vec();
        for _ in 0..r {
            phi = p(&phi)
                .iter()
                .zip(&self.b)
                .map(|(x, b)| x + alpha * b)
                .collect();
        }
        let cphi = matvec(&self.c, &phi);
        let mut g: Vec<f64> = cphi.iter().zip(&self.d).map(|(x, d)| x - d).collect();
        for _ in 0..r {
            g = p(&g);
        }
        g
    }
}

impl<F: Float> Problem<F> for QuadMaml {
    type Task = ();
    fn inner_loop(&self) -> &InnerLoop {
        &self.inner
    }
    fn inner_loss<'t, T: Real<Base = F>>(
        &self,
        t: &'t Tape<T>,
        _task: &(),
        _j: usize,
        _theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        quad_form(t, &self.a, phi[0]) - (consts(t, &self.b) * phi[0]).sum()
    }
    fn outer_loss<'t, T: Real<Base = F>>(
        &self,
        t: &'t Tape<T>,
        _task: &(),
        _theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        quad_form(t, &self.c, phi[0]) - (consts(t, &self.d) * phi[0]).sum()
    }
}

/// Hyperparameter search: per-feature L2 weights λ_k = exp(θ_k) on a least-squares
/// inner problem, φ_0 = 0 fixed:
/// L_in = ½‖Xφ − y‖²/n + ½ Σ_k λ_k φ_k², L_out = ½‖X'φ − y'‖²/n'.
pub struct Ridge {
    pub inner: InnerLoop,
    pub n: usize,
    pub dim: usize,
    pub x: Vec<f64>,
    pub y: Vec<f64>,
    pub xv: Vec<f64>,
    pub yv: Vec<f64>,
}

impl Ridge {
    pub fn new(dim: usize, n: usize, inner: InnerLoop) -> Self {
        let f = |s: f64| -> Vec<f64> {
            (0..n * dim)
                .map(|i| ((i as f64 + s) * 0.37).sin())
                .collect()
        };
        Ridge {
            inner,
            n,
            dim,
            x: f(1.0),
            y: (0..n).map(|i| (i as f64 * 0.5).cos()).collect(),
            xv: f(5.0),
            yv: (0..n).map(|i| (i as f64 * 0.3 + 1.0).sin()).collect(),
        }
    }

    /// A = XᵀX/n, c = Xᵀy/n.
    pub fn gram(&self) -> (Vec<f64>, Vec<f64>) {
        let (n, d) = (self.n, self.dim);
        let mut a = vec![0.0; d * d];
        let mut c = vec![0.0; d];
        for i in 0..n {
            for k in 0..d {
                c[k] += self.x[i * d + k] * self.y[i] / n as f64;
                for l in 0..d {
                    a[k * d + l] += self.x[i * d + k] * self.x[i * d + l] / n as f64;
                }
            }
        }
        (a, c)
    }

    /// Closed form by forward propagation of Z = dφ/dθ (d × d) in plain f64:
    /// φ_j = φ − α((A + Λ)φ − c); Z_j = (I − α(A + Λ)) Z_{j−1} − α diag(λ ⊙ φ_{j−1});
    /// ∇F = Z_rᵀ ∇_φ L_out(φ_r), ∇_φ L_out = X'ᵀ(X'φ − y')/n'.
    pub fn closed_form(&self, alpha: f64, r: usize, theta: &[f64]) -> Vec<f64> {
        let d = self.dim;
        let (a, c) = self.gram();
        let lam: Vec<f64> = theta.iter().map(|t| t.exp()).collect();
        let mut phi = vec![0.0; d];
        let mut z = vec![0.0; d * d]; // z[k*d + m] = dφ_k/dθ_m
        for _ in 0..r {
            let aphi = matvec(&a, &phi);
            let mut z2 = z.clone();
            for k in 0..d {
                for m in 0..d {
                    let az: f64 = (0..d).map(|l| a[k * d + l] * z[l * d + m]).sum();
                    z2[k * d + m] = z[k * d + m] - alpha * (az + lam[k] * z[k * d + m]);
                }
                z2[k * d + k] -= alpha * lam[k] * phi[k];
            }
            phi = (0..d)
                .map(|k| phi[k] - alpha * (aphi[k] + lam[k] * phi[k] - c[k]))
                .collect();
            z = z2;
        }
        let n = self.n;
        let res: Vec<f64> = (0..n)
            .map(|i| (0..d).map(|k| self.xv[i * d + k] * phi[k]).sum::<f64>() - self.yv[i])
            .collect();
        let gphi: Vec<f64> = (0..d)
            .map(|k| (0..n).map(|i| self.xv[i * d + k] * res[i]).sum::<f64>() / n as f64)
            .collect();
        (0..d)
            .map(|m| (0..d).map(|k| z[k * d + m] * gphi[k]).sum())
            .collect()
    }
}

impl<F: Float> Problem<F> for Ridge {
    type Task = ();
    fn inner_loop(&self) -> &InnerLoop {
        &self.inner
    }
    fn inner_loss<'t, T: Real<Base = F>>(
        &self,
        t: &'t Tape<T>,
        _task: &(),
        _j: usize,
        theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        let (n, d) = (self.n, self.dim);
        let pred = const_mat(t, &self.x, n, d)
            .matmul(phi[0].reshape([d, 1]))
            .reshape([n]);
        let fit = (pred - consts(t, &self.y)).square().sum() * (0.5 / n as f64);
        fit + (theta[0].exp() * phi[0].square()).sum() * 0.5
    }
    fn outer_loss<'t, T: Real<Base = F>>(
        &self,
        t: &'t Tape<T>,
        _task: &(),
        _theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        let (n, d) = (self.n, self.dim);
        let pred = const_mat(t, &self.xv, n, d)
            .matmul(phi[0].reshape([d, 1]))
            .reshape([n]);
        (pred - consts(t, &self.yv)).square().sum() * (0.5 / n as f64)
    }
    fn initial_state<'t, T: Real<Base = F>>(
        &self,
        t: &'t Tape<T>,
        _task: &(),
        _theta: &[Var<'t, T>],
    ) -> Vec<Var<'t, T>> {
        vec![consts(t, &vec![0.0; self.dim])]
    }
}

/// A smooth nonlinear MAML problem for the finite-difference checks: a
/// 1-hidden-layer tanh regressor φ = (W [h×2], v [h]) on a task (amplitude,
/// phase) whose inner batch depends on the step j; optional Meta-SGD steps
/// (θ = (W, v, α_W, α_v) then, φ_0 = (W, v)).
pub struct TanhNet {
    pub inner: InnerLoop,
    pub hidden: usize,
    pub meta_sgd: bool,
}

#[derive(Clone, Debug)]
pub struct Wave {
    pub amp: f64,
    pub phase: f64,
}

impl TanhNet {
    pub fn batch(task: &Wave, j: usize, n: usize) -> (Vec<f64>, Vec<f64>) {
        let xs: Vec<f64> = (0..n)
            .map(|i| -2.0 + 4.0 * ((i as f64 + 0.37 * j as f64) % n as f64) / n as f64)
            .collect();
        let ys = xs
            .iter()
            .map(|x| task.amp * (x + task.phase).sin())
            .collect();
        (xs, ys)
    }

    pub fn theta(&self, seed: u64) -> Vec<Tensor<f64>> {
        let h = self.hidden;
        let mut th = vec![
            Tensor::from_fn([h, 2], |i| ((i as u64 * 31 + seed) as f64 * 0.77).sin()),
            Tensor::from_fn([h], |i| ((i as u64 * 17 + seed) as f64 * 0.53).cos() * 0.5),
        ];
        if self.meta_sgd {
            th.push(Tensor::from_fn([h, 2], |i| 0.05 + 0.01 * (i % 3) as f64));
            th.push(Tensor::from_fn([h], |i| 0.08 - 0.01 * (i % 2) as f64));
        }
        th
    }

    fn loss<'t, T: Real>(
        &self,
        t: &'t Tape<T>,
        phi: &[Var<'t, T>],
        xs: &[f64],
        ys: &[f64],
    ) -> Var<'t, T> {
        let n = xs.len();
        let mut feats = Vec::with_capacity(2 * n);
        for &x in xs {
            feats.push(x);
            feats.push(1.0);
        }
        let xin = const_mat(t, &feats, n, 2);
        let hid = xin.matmul(phi[0].t()).tanh(); // [n, h]
        let pred = hid.matmul(phi[1].reshape([self.hidden, 1])).reshape([n]);
        (pred - consts(t, ys)).square().mean()
    }
}

impl<F: Float> Problem<F> for TanhNet {
    type Task = Wave;
    fn inner_loop(&self) -> &InnerLoop {
        &self.inner
    }
    fn inner_loss<'t, T: Real<Base = F>>(
        &self,
        t: &'t Tape<T>,
        task: &Wave,
        j: usize,
        _theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        let (xs, ys) = Self::batch(task, j, 6);
        self.loss(t, phi, &xs, &ys)
    }
    fn outer_loss<'t, T: Real<Base = F>>(
        &self,
        t: &'t Tape<T>,
        task: &Wave,
        _theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        let (xs, ys) = Self::batch(task, 1000, 9);
        self.loss(t, phi, &xs, &ys)
    }
    fn initial_state<'t, T: Real<Base = F>>(
        &self,
        _t: &'t Tape<T>,
        _task: &Wave,
        theta: &[Var<'t, T>],
    ) -> Vec<Var<'t, T>> {
        theta[..2].to_vec()
    }
}

/// Proximal quadratic: L_in = ½φᵀAφ − bᵀφ + λ/2‖φ − θ‖², L_out = ½φᵀCφ − dᵀφ.
/// φ*(θ) = (A + λI)⁻¹(b + λθ), dφ*/dθ = λ(A + λI)⁻¹, ∇F = λ(A + λI)⁻¹(Cφ* − d).
/// φ_0 = θ, or 0 with `from_zero` (θ is then the proximal centre but not the start).
pub struct Prox {
    pub q: QuadMaml,
    pub lambda: f64,
    pub from_zero: bool,
}

impl<F: Float> Problem<F> for Prox {
    type Task = ();
    fn inner_loop(&self) -> &InnerLoop {
        &self.q.inner
    }
    fn inner_loss<'t, T: Real<Base = F>>(
        &self,
        t: &'t Tape<T>,
        task: &(),
        j: usize,
        th: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        Problem::<F>::inner_loss(&self.q, t, task, j, th, phi)
            + (phi[0] - th[0]).square().sum() * (0.5 * self.lambda)
    }
    fn outer_loss<'t, T: Real<Base = F>>(
        &self,
        t: &'t Tape<T>,
        task: &(),
        th: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        Problem::<F>::outer_loss(&self.q, t, task, th, phi)
    }
    fn initial_state<'t, T: Real<Base = F>>(
        &self,
        t: &'t Tape<T>,
        _task: &(),
        th: &[Var<'t, T>],
    ) -> Vec<Var<'t, T>> {
        if self.from_zero {
            vec![consts(t, &vec![0.0; self.q.dim])]
        } else {
            th.to_vec()
        }
    }
}

/// Solves (A + λI) x = y by Gaussian elimination (small dense test helper).
pub fn solve(a: &[f64], lambda: f64, y: &[f64]) -> Vec<f64> {
    let d = y.len();
    let mut m: Vec<Vec<f64>> = (0..d)
        .map(|i| {
            let mut row: Vec<f64> = (0..d)
                .map(|j| a[i * d + j] + if i == j { lambda } else { 0.0 })
                .collect();
            row.push(y[i]);
            row
        })
        .collect();
    for c in 0..d {
        let piv = m[c][c];
        for r in 0..d {
            if r != c {
                let f = m[r][c] / piv;
                for k in c..=d {
                    m[r][k] -= f * m[c][k];
                }
            }
        }
    }
    (0..d).map(|i| m[i][d] / m[i][i]).collect()
}
