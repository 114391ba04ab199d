//! Buffer reuse: after a first call has grown the tapes, `Hessian::apply` and
//! `Workspace::hvp_into` allocate nothing, and a CG solve allocates a fixed
//! number of vectors however many iterations it runs.
//!
//! A counting global allocator counts allocations made on the test's own thread
//! while a flag is set (the harness's other threads are not counted). GEMM calls
//! are the known exception: `matrixmultiply` 0.3 allocates a packing buffer
//! (aligned above 16 bytes) per call; see `crates/tape/tests/alloc.rs`.

use hvp::{cg, CgParams, Damped, Hessian, LinOp, Objective, Workspace};
use tape::testing::{count_allocations, CountingAllocator};
use tape::{Real, Tape, Tensor, Var};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// (allocations, over-aligned allocations) made by `f` on this thread.
fn count(f: impl FnOnce()) -> (usize, usize) {
    let n = count_allocations(f);
    (n.count, n.overaligned)
}

/// A smooth loss without matrix products: Σ softplus(a ⊙ x) + ½ Σ (x − b)² + tanh(Σ x).
struct Smooth {
    a: Tensor<f64>,
    b: Tensor<f64>,
}

impl Objective<f64> for Smooth {
    fn eval<'t, T: Real<Base = f64>>(&self, t: &'t Tape<T>, x: &[Var<'t, T>]) -> Var<'t, T> {
        let (a, b) = (t.constant_base(&self.a), t.constant_base(&self.b));
        (a * x[0]).softplus().sum() + (x[0] - b).square().sum().mul_scalar(0.5) + x[0].sum().tanh()
    }
}

/// Softmax cross-entropy of a linear model: one GEMM forward, one per adjoint.
struct Linear {
    x: Tensor<f64>,
}

impl Objective<f64> for Linear {
    fn eval<'t, T: Real<Base = f64>>(&self, t: &'t Tape<T>, w: &[Var<'t, T>]) -> Var<'t, T> {
        t.constant_base(&self.x)
            .matmul(w[0])
            .softmax_cross_entropy(&[0, 1, 2, 1])
    }
}

#[test]
fn hessian_apply_and_hvp_into_allocate_nothing_after_the_first_call() {
    let n = 50;
    let f = Smooth {
        a: Tensor::from_fn(&[n], |i| (i as f64 * 0.37).sin()),
        b: Tensor::from_fn(&[n], |i| (i as f64 * 0.11).cos()),
    };
    let x = [Tensor::from_fn(&[n], |i| (i as f64 * 0.23).sin())];
    let h = Hessian::new(&f, &x);
    let v: Vec<f64> = (0..n).map(|i| (i as f64 * 0.5).cos()).collect();
    let mut out = vec![0.0; n];
    h.apply(&v, &mut out); // grows the tape
    let (allocs, _) = count(|| {
        for _ in 0..10 {
            h.apply(&v, &mut out);
        }
    });
    assert_eq!(
        allocs, 0,
        "Hessian::apply allocated {allocs} times in 10 calls"
    );

    let mut ws = Workspace::new();
    let vs = [Tensor::vector(v.clone())];
    let (mut g, mut hv) = ([Tensor::zeros([n])], [Tensor::zeros([n])]);
    ws.hvp_into(&f, &x, &vs, &mut g, &mut hv);
    let (allocs, _) = count(|| {
        for _ in 0..10 {
            ws.hvp_into(&f, &x, &vs, &mut g, &mut hv);
        }
    });
    assert_eq!(allocs, 0, "hvp_into allocated {allocs} times in 10 calls");
    assert_eq!(hv[0].data(), &out[..], "same product either way");
}

#[test]
fn a_cg_solve_allocates_its_four_vectors_whatever_the_iteration_count() {
    let n = 40;
    let f = Smooth {
        a: Tensor::from_fn(&[n], |i| (i as f64 * 0.37).sin()),
        b: Tensor::zeros([n]),
    };
    let x = [Tensor::from_fn(&[n], |i| (i as f64 * 0.23).sin())];
    let h = Hessian::new(&f, &x);
    let a = Damped::new(&h, 0.1);
    let b: Vec<f64> = (0..n).map(|i| 1.0 + i as f64).collect();
    let _ = cg(
        &a,
        &b,
        CgParams {
            tol: 0.0,
            max_iter: 1,
        },
    ); // grows the tape
    let solve = |iters| {
        count(|| {
            let r = cg(
                &a,
                &b,
                CgParams {
                    tol: 0.0,
                    max_iter: iters,
                },
            );
            assert!(r.is_err(), "tol 0 cannot be met");
            drop(r);
        })
    };
    let (short, _) = solve(2);
    let (long, _) = solve(20);
    // x, r, p, A·p — the iterate then moves into the error.
    assert_eq!((short, long), (4, 4));
}

#[test]
fn with_matrix_products_only_gemm_packing_buffers_are_allocated() {
    let f = Linear {
        x: Tensor::from_fn(&[4, 6], |i| (i as f64 * 0.7).sin()),
    };
    let w = [Tensor::from_fn(&[6, 3], |i| (i as f64 * 0.3).cos())];
    let h = Hessian::new(&f, &w);
    let v = vec![0.5; 18];
    let mut out = vec![0.0; 18];
    h.apply(&v, &mut out);
    let (allocs, overaligned) = count(|| h.apply(&v, &mut out));
    // Products this small (≤ 32K multiply-adds) skip matrixmultiply and allocate
    // nothing (`tape::gemm`'s small-matrix path); larger ones allocate only the
    // kernel's over-aligned packing buffers (see crates/tape/tests/alloc.rs).
    assert_eq!(
        allocs, overaligned,
        "every allocation is a GEMM packing buffer"
    );
}
