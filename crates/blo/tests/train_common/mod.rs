//! Shared fixtures for the meta-training tests: a MAML problem with quadratic
//! task losses and a small UFO-style estimator computed with the tape, so the
//! trainer can be tested without the estimator crate's own implementations.
#![allow(dead_code)]

use blo::io::{float_from_bits, float_to_bits};
use blo::{BloError, Estimate, Estimator, InnerLoop, Problem, Stats};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tape::{Float, Real, Tape, Tensor, Var};

/// One task: L_in = L_out = ½·a·‖φ − c‖² (times +∞ from inner step 2 on if `blow`).
#[derive(Clone, Debug)]
pub struct Task {
    pub a: f64,
    pub c: Vec<f64>,
    pub blow: bool,
}

/// MAML on quadratic tasks: φ_0 = θ, r inner SGD steps with step α.
/// In closed form φ_r − c = p·(θ − c) with p = (1 − αa)^r, so
/// g_FO = ∇L(φ_r) = a·p·(θ − c) and g_exact = a·p²·(θ − c).
pub struct QuadMaml {
    pub alpha: f64,
    pub r: usize,
    pub inner: InnerLoop,
}

impl QuadMaml {
    pub fn new(alpha: f64, r: usize) -> Self {
        QuadMaml {
            alpha,
            r,
            inner: InnerLoop::sgd(r, alpha).unwrap(),
        }
    }
}

fn consts<'t, T: Real>(tape: &'t Tape<T>, c: &[f64]) -> Var<'t, T> {
    tape.constant_base(&Tensor::vector(
        c.iter().map(|&x| <T::Base as Real>::from_f64(x)).collect(),
    ))
}

impl<F: Float> Problem<F> for QuadMaml {
    type Task = Task;
    fn inner_loop(&self) -> &InnerLoop {
        &self.inner
    }
    fn inner_loss<'t, T: Real<Base = F>>(
        &self,
        tape: &'t Tape<T>,
        task: &Task,
        step: usize,
        theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        let l = <Self as Problem<F>>::outer_loss(self, tape, task, theta, phi);
        if task.blow && step >= 2 {
            l.mul_scalar(f64::INFINITY)
        } else {
            l
        }
    }
    fn outer_loss<'t, T: Real<Base = F>>(
        &self,
        tape: &'t Tape<T>,
        task: &Task,
        _theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        (phi[0] - consts(tape, &task.c))
            .square()
            .sum()
            .mul_scalar(0.5 * task.a)
    }
}

/// A UFO-style estimator for [`QuadMaml`]: runs the inner loop on the tape,
/// takes g_FO = ∇_φ L_out(φ_r), forms g_exact = p·g_FO (exact for this problem,
/// whose inner Hessian is a·I), draws ξ ~ Bernoulli(q) from the task's stream
/// and returns g_FO + (ξ/q)(g_exact − g_FO). q = 0 is FO, q = 1 is exact.
///
/// With `adaptive`, q = 0.2 + 0.6·m/(1 + m) where m is an exponential moving
/// average of the outer losses seen by `observe`, in order (m ← 0.9m + 0.1ℓ):
/// any change in order or count changes later bits.
pub struct Coin {
    pub q: f64,
    pub adaptive: bool,
    pub ema: f64,
    /// Outer losses passed to each `observe` call.
    pub observed: Vec<Vec<f64>>,
}

impl Coin {
    pub fn fixed(q: f64) -> Self {
        Coin {
            q,
            adaptive: false,
            ema: 0.0,
            observed: Vec::new(),
        }
    }
    pub fn adaptive() -> Self {
        Coin {
            q: 0.0,
            adaptive: true,
            ema: 0.0,
            observed: Vec::new(),
        }
    }
    pub fn current_q(&self) -> f64 {
        if self.adaptive {
            0.2 + 0.6 * self.ema / (1.0 + self.ema)
        } else {
            self.q
        }
    }
}

impl<F: Float> Estimator<F, QuadMaml> for Coin {
    fn estimate(
        &self,
        problem: &QuadMaml,
        task: &Task,
        theta: &[Tensor<F>],
        rng: &mut ChaCha8Rng,
    ) -> Result<Estimate<F>, BloError> {
        let mut tape = Tape::<F>::new();
        let mut phi = theta.to_vec();
        let mut stats = Stats::default();
        for j in 1..=problem.r {
            tape.clear();
            let th: Vec<_> = theta.iter().map(|t| tape.constant(t)).collect();
            let ph: Vec<_> = phi.iter().map(|t| tape.var(t)).collect();
            let l = problem.inner_loss(&tape, task, j, &th, &ph);
            if !l.item().is_finite() {
                return Err(BloError::NonFinite {
                    what: "inner loss",
                    task: 0,
                    step: j,
                });
            }
            tape.backward(l);
            let g = tape.grad(ph[0]);
            let alpha = F::from_f64(problem.alpha);
            for (x, &gx) in phi[0].data_mut().iter_mut().zip(g.data()) {
                *x -= alpha * gx;
            }
            stats.gradients += 1;
            stats.forward_steps += 1;
        }
        tape.clear();
        let th: Vec<_> = theta.iter().map(|t| tape.constant(t)).collect();
        let ph: Vec<_> = phi.iter().map(|t| tape.var(t)).collect();
        let l = <QuadMaml as Problem<F>>::outer_loss(problem, &tape, task, &th, &ph);
        let outer_loss = l.item();
        if !outer_loss.is_finite() {
            return Err(BloError::NonFinite {
                what: "outer loss",
                task: 0,
                step: problem.r + 1,
            });
        }
        tape.backward(l);
        let g_fo = tape.grad(ph[0]);
        stats.gradients += 1;
        let p = (1.0 - problem.alpha * task.a).powi(problem.r as i32);
        let q = self.current_q();
        let coin = rng.gen::<f64>() < q;
        stats.coins += 1;
        let grad = if coin {
            stats.exact_branches += 1;
            // g_FO + (g_exact − g_FO)/q with g_exact = p·g_FO.
            let w = F::from_f64((p - 1.0) / q);
            g_fo.map(|x| x + w * x)
        } else {
            g_fo
        };
        // θ tensors after the first do not enter the losses: zero gradient.
        let mut grads = vec![grad];
        grads.extend(theta[1..].iter().map(|t| Tensor::zeros(t.shape())));
        Ok(Estimate {
            grad: grads,
            outer_loss,
            stats,
        })
    }

    fn observe(&mut self, estimates: &[Estimate<F>]) {
        self.observed
            .push(estimates.iter().map(|e| e.outer_loss.to_f64()).collect());
        for e in estimates {
            self.ema = 0.9 * self.ema + 0.1 * e.outer_loss.to_f64();
        }
    }

    fn name(&self) -> String {
        if self.adaptive {
            "coin-adaptive".into()
        } else {
            format!("coin(q={})", self.q)
        }
    }

    fn save_state(&self) -> serde_json::Value {
        serde_json::json!({ "ema_bits": float_to_bits(self.ema) })
    }

    fn load_state(&mut self, state: &serde_json::Value) -> Result<(), String> {
        let bits = state["ema_bits"].as_u64().ok_or("no ema_bits")?;
        self.ema = float_from_bits::<f64>(bits);
        Ok(())
    }
}

/// Tasks of dimension `d`: a ~ U(0.5, 1.5), c ~ U(−2, 2)^d, never blowing up.
pub fn sampler(d: usize) -> impl Fn(&mut ChaCha8Rng) -> Task + Sync {
    move |rng: &mut ChaCha8Rng| Task {
        a: rng.gen_range(0.5..1.5),
        c: (0..d).map(|_| rng.gen_range(-2.0..2.0)).collect(),
        blow: false,
    }
}

/// Bit patterns of every element of θ.
pub fn bits<F: Float>(theta: &[Tensor<F>]) -> Vec<u64> {
    theta
        .iter()
        .flat_map(|t| t.data().iter().map(|&x| float_to_bits(x)))
        .collect()
}

/// A fresh scratch directory under the system temp dir.
pub fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("blo-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Rewrites the checkpoint's JSON in `dir` through `edit` with a valid
/// content fingerprint (as `blo-checkpoint/2` defines it: FNV-1a of the file
/// with its 16 digits zeroed), so the field checks, not the hash, must catch
/// the edit.
pub fn rewrite_checkpoint(dir: &std::path::Path, edit: impl FnOnce(&mut serde_json::Value)) {
    use serde_json::Value;
    let p = dir.join(blo::train::CheckpointState::STATE_FILE);
    let mut v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    edit(&mut v);
    let zeros = "0".repeat(16);
    v["content_fingerprint"] = Value::String(zeros.clone());
    let text = serde_json::to_string_pretty(&v).unwrap() + "\n";
    let fp = blo::io::fingerprint(text.as_bytes());
    let key = format!("\"content_fingerprint\": \"{zeros}\"");
    let text = text.replace(&key, &format!("\"content_fingerprint\": \"{fp}\""));
    std::fs::write(&p, text).unwrap();
}
