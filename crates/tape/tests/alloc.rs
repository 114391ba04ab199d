//! Buffer reuse: recording and differentiating the same computation a second
//! time on a cleared tape performs no heap allocation.
//!
//! A counting global allocator counts allocations made on the test's own thread
//! while a flag is set (the harness's other threads are not counted), and
//! remembers their alignment.
//!
//! Status: the tape itself (arenas, node list, adjoint buffers, scratch)
//! allocates nothing on a rerun, in f64 and on dual numbers, for every
//! GEMM-free op (`Var::t` used to allocate its permutation; fixed), and
//! neither do the matrix products: small ones run the tape's own fixed-order
//! loop, large ones the packed kernels (`kernels/packed.rs`), whose packing
//! buffers are thread-local and reused. (`matrixmultiply` 0.3, which ran the
//! large products before, allocated a packing buffer on every call.)

use tape::testing::{count_allocations, CountingAllocator};
use tape::{concat, Dual, Real, Tape, Tensor};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// (all, over-aligned) allocations made by `f` on this thread.
fn allocations_in(f: impl FnOnce()) -> (usize, usize) {
    let n = count_allocations(f);
    (n.count, n.overaligned)
}

struct Mlp {
    x: Tensor<f64>,
    w1: Tensor<f64>,
    b1: Tensor<f64>,
    w2: Tensor<f64>,
    b2: Tensor<f64>,
    labels: Vec<usize>,
}

/// Records a two-layer MLP's cross-entropy loss, runs the reverse sweep and
/// copies the weight gradients into the given buffers (no allocation by the caller).
fn loss_and_grads(tape: &mut Tape<f64>, m: &Mlp, g1: &mut [f64], g2: &mut [f64]) -> f64 {
    tape.clear();
    let x = tape.constant(&m.x);
    let w1 = tape.var(&m.w1);
    let b1 = tape.var(&m.b1);
    let w2 = tape.var(&m.w2);
    let b2 = tape.var(&m.b2);
    let h = (x.matmul(w1) + b1).tanh();
    let loss = (h.matmul(w2) + b2).softmax_cross_entropy(&m.labels);
    tape.backward(loss);
    tape.grad_into(w1, g1);
    tape.grad_into(w2, g2);
    loss.item()
}

/// Small enough that every product takes the tape's own small-GEMM loop.
fn mlp() -> Mlp {
    mlp_of(8, 4, 16, 3)
}

/// Large enough that every product goes through the packed large-product kernel
/// (more than `tape::kernels::SMALL_MACS` multiply-adds per product).
fn big_mlp() -> Mlp {
    mlp_of(64, 128, 64, 3)
}

fn mlp_of(n: usize, d: usize, h: usize, c: usize) -> Mlp {
    Mlp {
        x: Tensor::from_fn([n, d], |i| (i as f64 * 0.37).sin()),
        w1: Tensor::from_fn([d, h], |i| (i as f64 * 0.11).cos() * 0.5),
        b1: Tensor::from_fn([h], |i| i as f64 * 0.01),
        w2: Tensor::from_fn([h, c], |i| (i as f64 * 0.23).sin() * 0.5),
        b2: Tensor::zeros([c]),
        labels: (0..n).map(|i| i % c).collect(),
    }
}

/// Runs the MLP twice on one tape; returns the second run's allocations and
/// checks both runs give the same numbers.
fn rerun_allocations(
    m: Mlp,
    record: fn(&mut Tape<f64>, &Mlp, &mut [f64], &mut [f64]) -> f64,
) -> (usize, usize) {
    let mut tape = Tape::<f64>::new();
    let (mut g1, mut g2) = (vec![0.0; m.w1.numel()], vec![0.0; m.w2.numel()]);
    let first = record(&mut tape, &m, &mut g1, &mut g2);
    let g1_first = g1.clone();
    let mut second = 0.0;
    let counts = allocations_in(|| second = record(&mut tape, &m, &mut g1, &mut g2));
    // The counter itself works: a Vec allocates once, with its element's alignment.
    assert_eq!(
        allocations_in(|| drop(std::hint::black_box(vec![1u8; 3]))),
        (1, 0)
    );
    // Same computation, same numbers.
    assert_eq!(first.to_bits(), second.to_bits());
    assert_eq!(g1_first, g1);
    counts
}

/// The same MLP with the matrix products written as broadcast products and
/// sums (`x [n, d, 1] · w [d, h]` summed over d), so no GEMM runs.
fn loss_and_grads_without_gemm(
    tape: &mut Tape<f64>,
    m: &Mlp,
    g1: &mut [f64],
    g2: &mut [f64],
) -> f64 {
    tape.clear();
    let (n, d) = (m.x.dims()[0], m.x.dims()[1]);
    let x = tape.constant(&m.x);
    let w1 = tape.var(&m.w1);
    let b1 = tape.var(&m.b1);
    let w2 = tape.var(&m.w2);
    let b2 = tape.var(&m.b2);
    let h = ((x.reshape([n, d, 1]) * w1).sum_axes(&[1], false) + b1).tanh();
    let hd = m.w2.dims()[0];
    let logits = (h.reshape([n, hd, 1]) * w2).sum_axes(&[1], false) + b2;
    let loss = logits.softmax_cross_entropy(&m.labels);
    tape.backward(loss);
    tape.grad_into(w1, g1);
    tape.grad_into(w2, g2);
    loss.item()
}

#[test]
fn the_tape_itself_allocates_nothing_on_a_rerun() {
    let (all, _) = rerun_allocations(big_mlp(), loss_and_grads_without_gemm);
    assert_eq!(
        all, 0,
        "the second recording + backward allocated {all} times"
    );
}

#[test]
fn small_mlp_rerun_allocates_nothing() {
    let (all, gemm) = rerun_allocations(mlp(), loss_and_grads);
    assert_eq!(
        all, 0,
        "the second recording + backward allocated {all} times ({gemm} over-aligned)"
    );
}

/// A larger MLP: its products are large ones (packed kernels), whose
/// packing buffers are kept from the first run.
#[test]
fn second_recording_and_backward_allocate_nothing() {
    let (all, gemm) = rerun_allocations(big_mlp(), loss_and_grads);
    assert_eq!(
        all, 0,
        "the second recording + backward allocated {all} times ({gemm} over-aligned)"
    );
}

/// A graph touching most GEMM-free ops, on any element type: records, sweeps
/// and copies the gradient of the first input into `g`.
fn many_ops<T: Real<Base = f64>>(tape: &mut Tape<T>, x: &[Tensor<T>], g: &mut [T]) -> T {
    tape.clear();
    let img = tape.var(&x[0]); // [2, 2, 4, 4]
    let gamma = tape.var(&x[1]); // [2]
    let beta = tape.constant(&x[2]); // [2]
    let bn = img.batch_norm(gamma, beta, 1e-5);
    let pooled = bn.max_pool2d(2, 2) + bn.avg_pool2d(2, 2); // [2, 2, 2, 2]
    let flat = pooled.reshape([2, 8]);
    let picked = flat.index_select(1, &[0, 3, 3, 7]); // [2, 4]
    let both = concat(&[picked, flat.slice(1, 0, 4)], 0); // [4, 4]
    let sel = both.where_(both.clamp(-0.5, 0.5), both.maximum(both.t()));
    let z = sel.log_softmax(1).max_axis(1, false) + sel.minimum(sel.exp()).mean_axes(&[1], false);
    let loss = z.softplus().sum()
        + both.gather(&[0, 1, 2, 3]).sigmoid().sum()
        + both.softmax_cross_entropy(&[3, 2, 1, 0])
        + both.mse(sel.detach());
    tape.backward(loss);
    tape.grad_into(img, g);
    loss.item()
}

fn many_ops_rerun<T: Real<Base = f64>>() -> usize {
    let shapes: [&[usize]; 3] = [&[2, 2, 4, 4], &[2], &[2]];
    let x: Vec<Tensor<T>> = shapes
        .iter()
        .enumerate()
        .map(|(k, s)| {
            Tensor::from_fn(*s, |i| {
                // (Zero tangents for duals: what is allocated does not depend on values.)
                T::from_f64(((i * 7 + k * 3) as f64 * 0.61).sin())
            })
        })
        .collect();
    let mut tape = Tape::<T>::new();
    let mut g = vec![T::zero(); x[0].numel()];
    let first = many_ops(&mut tape, &x, &mut g);
    let g_first = g.clone();
    let mut second = T::zero();
    let (all, _) = allocations_in(|| second = many_ops(&mut tape, &x, &mut g));
    assert_eq!(first, second);
    assert_eq!(g_first, g);
    all
}

#[test]
fn many_ops_rerun_allocates_nothing_in_f64_and_dual() {
    assert_eq!(many_ops_rerun::<f64>(), 0, "f64");
    assert_eq!(many_ops_rerun::<Dual<f64>>(), 0, "Dual<f64>");
}
