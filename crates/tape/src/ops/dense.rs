//! A dense layer in one node: `Y = act(X·W + 1·bᵀ)`.
//!
//! | op | shapes | forward | VJP (`g` = output adjoint) |
//! |---|---|---|---|
//! | `dense` | `[m, k]·[k, n] + [n] → [m, n]` | Z = X·W + 1·bᵀ, Y = act(Z) | ḡZ = 0 + act′·g, ḡX = ḡZ·Wᵀ, ḡW = Xᵀ·ḡZ, ḡb_j = Σ_i ḡZ_ij |
//!
//! `act′` comes from the saved output: relu′ = `[Y > 0]` (exactly where
//! Z > 0), tanh′ = 1 − Y², sigmoid′ = Y·(1 − Y); the identity passes `g`
//! on unchanged (no `0 +`).
//!
//! The node computes what `x.matmul(w) + b` followed by the activation's
//! own op computes, in the same order with the same roundings: the product
//! by the same GEMM (β = 0), then `act(z + b_j)` per element (bias first,
//! then the activation, on the same value), and in the VJP the activation's
//! rule into a fresh buffer, the bias's column sums in increasing row order,
//! and the two product adjoints by the same GEMMs. So the values and
//! adjoints are those ops' bits (tested on `f32`, `f64` and dual tapes),
//! with one node instead of three, one output buffer instead of three, one
//! pass over the output instead of two in the forward, and in the VJP no
//! copy of the adjoint for the product's output (the bias add's
//! pass-through).

use crate::gemm::{adjoint_gemm, gemm, MatRef};
use crate::kernels::pair::parts_mut;
use crate::kernels::rows::add_rows;
use crate::ops::batched::beta;
use crate::ops::Op;
use crate::real::Real;
use crate::shape::{check_shapes, Shape};
use crate::tape::{Bwd, Var};

/// The activation of a [`Var::dense`] layer, applied to each element of
/// `Z = X·W + 1·bᵀ`.
///
/// ```
/// use tape::ops::dense::Activation;
/// use tape::{Tape, Tensor};
/// let t = Tape::<f64>::new();
/// let x = t.var(&Tensor::new(&[1, 1], vec![0.0]));
/// let w = t.var(&Tensor::new(&[1, 1], vec![1.0]));
/// let b = t.var(&Tensor::new(&[1], vec![0.0]));
/// assert_eq!(x.dense(w, b, Activation::Sigmoid).item(), 0.5); // σ(0)
/// assert_eq!(x.dense(w, b, Activation::Tanh).item(), 0.0); // tanh(0)
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `y = z`.
    Identity,
    /// `y = relu(z) = select(z > 0, z, 0)`, as [`Var::relu`].
    Relu,
    /// `y = tanh(z)`, as [`Var::tanh`].
    Tanh,
    /// `y = σ(z) = 1 / (1 + e^(−z))`, as [`Var::sigmoid`].
    Sigmoid,
}

/// (m, k, n) of `[m, k]·[k, n] + [n]`.
#[track_caller]
fn dims(x: Shape, w: Shape, b: Shape) -> (usize, usize, usize) {
    let name = "dense";
    check_shapes!(x.rank() == 2 && w.rank() == 2 && b.rank() == 1, name, ["lhs" => x, "rhs" => w, "bias" => b], "expected [m, k]·[k, n] + [n]");
    check_shapes!(x.dim(1) == w.dim(0), name, ["lhs" => x, "rhs" => w, "bias" => b], "inner dimensions {} != {}", x.dim(1), w.dim(0));
    check_shapes!(b.dim(0) == w.dim(1), name, ["lhs" => x, "rhs" => w, "bias" => b], "bias must be [{}]", w.dim(1));
    (x.dim(0), x.dim(1), w.dim(1))
}

/// `y_ij ← act(y_ij + b_j)` over the rows of `y` (`n = b.len()` columns),
/// the activation's scalar rule (the bits of `+` then the activation's op);
/// large outputs cut in two halves of rows between two threads
/// ([`parts_mut`]). One loop per activation, so each is a constant loop.
fn bias_act<T: Real>(y: &mut [T], b: &[T], act: Activation) {
    #[inline(always)]
    fn rows<T: Real>(y: &mut [T], b: &[T], f: impl Fn(T) -> T) {
        for row in y.chunks_exact_mut(b.len()) {
            for (o, &c) in row.iter_mut().zip(b) {
                *o = f(*o + c);
            }
        }
    }
    let n = b.len();
    parts_mut(y, n, y.len(), &|_, y| match act {
        Activation::Identity => rows(y, b, |z| z),
        Activation::Relu => rows(y, b, |z| T::select(z > T::zero(), z, T::zero())),
        // The bias per row, then the row's tanh in one vectorised call
        // (`Real::tanh_slice`: the bits of `tanh` on each element).
        Activation::Tanh => {
            for row in y.chunks_exact_mut(n) {
                rows(row, b, |z| z);
                T::tanh_slice(row);
            }
        }
        // As tanh: the row's σ in one call (`Real::sigmoid_slice`).
        Activation::Sigmoid => {
            for row in y.chunks_exact_mut(n) {
                rows(row, b, |z| z);
                T::sigmoid_slice(row);
            }
        }
    });
}

/// `gz_i = 0 + act′(y_i)·g_i` (the activation's VJP into a fresh adjoint,
/// its derivative from the output `y`); not for the identity.
fn act_adjoint<T: Real>(y: &[T], g: &[T], gz: &mut [T], act: Activation) {
    #[inline(always)]
    fn each<T: Real>(y: &[T], g: &[T], gz: &mut [T], f: impl Fn(T, T) -> T) {
        for ((d, &yi), &gi) in gz.iter_mut().zip(y).zip(g) {
            *d = T::zero() + f(yi, gi);
        }
    }
    parts_mut(gz, 1, g.len(), &|r, gz| {
        let (y, g) = (&y[r.clone()], &g[r]);
        match act {
            Activation::Identity => unreachable!("the identity's adjoint is g itself"),
            Activation::Relu => each(y, g, gz, |y, g| T::select(y > T::zero(), g, T::zero())),
            Activation::Tanh => each(y, g, gz, |y, g| g * (T::one() - y * y)),
            Activation::Sigmoid => each(y, g, gz, |y, g| g * y * (T::one() - y)),
        }
    });
}

/// VJP of `Y = act(X·W + 1·bᵀ)` (module docs): ḡZ into the tape's scratch
/// (or `g` itself for the identity), then the bias's column sums and the
/// two products' adjoints from it.
pub(crate) fn dense_vjp<T: Real>(b: &mut Bwd<'_, T>, act: Activation) {
    let (m, k, n) = dims(b.x_shape(0), b.x_shape(1), b.x_shape(2));
    if !(b.wants(0) || b.wants(1) || b.wants(2)) {
        return;
    }
    let (y, g) = (b.out(), b.g);
    let mut scratch = std::mem::take(b.scratch);
    let gz = if act == Activation::Identity {
        g
    } else {
        if scratch.len() < g.len() {
            scratch.resize(g.len(), T::zero());
        }
        act_adjoint(y, g, &mut scratch[..g.len()], act);
        &scratch[..g.len()]
    };
    let one = <T::Base as Real>::one();
    let gm = MatRef::row_major(gz, m, n);
    if b.wants(2) {
        // `0 + row 0 + row 1 + …` for a fresh adjoint: the bits of the
        // broadcast add's VJP (a zero-fill, then each row added in order).
        let (gc, fresh) = b.g_in_overwrite(2);
        add_rows(gc, gz, fresh);
    }
    if b.wants(0) {
        let primal = b.wants_primal(0);
        let w = MatRef::row_major(b.x(1), k, n);
        let (ga, fresh) = b.g_in_overwrite(0);
        adjoint_gemm(primal, one, gm, w.t(), beta::<T>(fresh), ga);
    }
    if b.wants(1) {
        let primal = b.wants_primal(1);
        let x = MatRef::row_major(b.x(0), m, k);
        let (gw, fresh) = b.g_in_overwrite(1);
        adjoint_gemm(primal, one, x.t(), gm, beta::<T>(fresh), gw);
    }
    *b.scratch = scratch;
}

impl<'t, T: Real> Var<'t, T> {
    /// A dense layer in one node: `[m, k]·[k, n] + [n] → [m, n]`,
    /// `Y = act(X·W + 1·bᵀ)` (row i is `act(X_i·W + b)`). The same values
    /// and adjoints, bit for bit, as `act(self.matmul(w) + bias)` written
    /// with the three ops, with one node, one output buffer and one pass
    /// over the output instead of three nodes, three buffers and two passes
    /// (see `ops/dense.rs` for the VJP).
    ///
    /// # Panics
    /// If `self`, `w` are not 2-D or `bias` not 1-D, or the dimensions do
    /// not agree: `dense: lhs [2, 3], rhs [3, 4], bias [3]: bias must be [4]`.
    ///
    /// ```
    /// use tape::ops::dense::Activation;
    /// use tape::{Tape, Tensor};
    /// let t = Tape::<f64>::new();
    /// let x = t.var(&Tensor::new(&[1, 2], vec![1.0, 2.0]));
    /// let w = t.var(&Tensor::new(&[2, 2], vec![1.0, -1.0, 1.0, -1.0]));
    /// let b = t.var(&Tensor::new(&[2], vec![0.5, 0.5]));
    /// let y = x.dense(w, b, Activation::Relu); // relu([3.5, −2.5])
    /// assert_eq!(y.value().data(), &[3.5, 0.0]);
    /// t.backward(y.sum());
    /// assert_eq!(b.grad().data(), &[1.0, 0.0]); // nothing through the clipped unit
    /// assert_eq!(w.grad().data(), &[1.0, 0.0, 2.0, 0.0]); // ḡW = Xᵀ·ḡZ
    /// ```
    #[track_caller]
    pub fn dense(self, w: Var<'t, T>, bias: Var<'t, T>, act: Activation) -> Var<'t, T> {
        let (m, k, n) = dims(self.shape(), w.shape(), bias.shape());
        let zero = <T::Base as Real>::zero();
        let one = <T::Base as Real>::one();
        self.tape
            .record_overwrite(Op::Dense(act), &[self, w, bias], Shape::new(&[m, n]), |f| {
                let (x, w) = (f.x(0), f.x(1));
                gemm(
                    one,
                    MatRef::row_major(x, m, k),
                    MatRef::row_major(w, k, n),
                    zero,
                    f.out,
                );
                bias_act(f.out, f.x(2), act);
            })
    }
}

#[cfg(test)]
mod tests {
    use super::Activation;
    use crate::kernels::{with_family, Family};
    use crate::{Dual, Real, Tape, Tensor};

    /// Entries spread over both signs, some exactly zero, from a fixed
    /// linear-congruential sequence.
    fn filled(shape: &[usize], seed: u64) -> Tensor<f64> {
        let n: usize = shape.iter().product();
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let data = (0..n)
            .map(|i| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                if i % 13 == 5 {
                    0.0
                } else {
                    ((s >> 33) as f64 / (1u64 << 31) as f64 - 0.5) * 2.0
                }
            })
            .collect();
        Tensor::new(shape, data)
    }

    /// The loss `Σ c ⊙ Y` (c fixed, some entries −0 and 0) and every
    /// gradient, by the fused node or by matmul, `+`, activation.
    fn run<T: Real>(
        make: &impl Fn(f64, usize) -> T,
        (m, k, n): (usize, usize, usize),
        act: Activation,
        fused: bool,
    ) -> Vec<Vec<T>> {
        let conv = |t: Tensor<f64>, s: usize| {
            let d = t
                .data()
                .iter()
                .enumerate()
                .map(|(i, &v)| make(v, s + i))
                .collect();
            Tensor::new(t.shape(), d)
        };
        let tape = Tape::<T>::new();
        let x = tape.var(&conv(filled(&[m, k], 1), 0));
        let w = tape.var(&conv(filled(&[k, n], 2), 7));
        let b = tape.var(&conv(filled(&[n], 3), 11));
        let mut c = filled(&[m, n], 4);
        c.data_mut().iter_mut().step_by(17).for_each(|v| *v = -0.0);
        let c = tape.constant(&conv(c, 13));
        let y = if fused {
            x.dense(w, b, act)
        } else {
            let z = x.matmul(w) + b;
            match act {
                Activation::Identity => z,
                Activation::Relu => z.relu(),
                Activation::Tanh => z.tanh(),
                Activation::Sigmoid => z.sigmoid(),
            }
        };
        // Y used twice, so its adjoint is accumulated into, not only fresh.
        let loss = (y * c).sum() + y.sum();
        tape.backward(loss);
        let mut out = vec![y.value().data().to_vec(), vec![loss.item()]];
        for v in [x, w, b] {
            out.push(v.grad().data().to_vec());
        }
        out
    }

    fn check<T: Real + PartialEq + std::fmt::Debug>(make: impl Fn(f64, usize) -> T) {
        // A small product, the MLP benchmark's first and second layers
        // (large packed products, cut over threads), a 10-wide last layer,
        // and an edge shape.
        let shapes = [
            (3, 5, 4),
            (64, 784, 256),
            (64, 256, 256),
            (64, 256, 10),
            (7, 1, 33),
        ];
        let acts = [
            Activation::Identity,
            Activation::Relu,
            Activation::Tanh,
            Activation::Sigmoid,
        ];
        for family in Family::ALL.into_iter().filter(|f| f.is_available()) {
            for &dims in &shapes {
                for act in acts {
                    let (fused, plain) = with_family(family, || {
                        (run(&make, dims, act, true), run(&make, dims, act, false))
                    });
                    for (i, (f, p)) in fused.iter().zip(&plain).enumerate() {
                        // Bits, signed zeros included: `{:?}` prints −0 as `-0.0`.
                        let same = f.len() == p.len()
                            && f.iter()
                                .zip(p)
                                .all(|(a, b)| format!("{a:?}") == format!("{b:?}"));
                        assert!(same, "{family:?} {dims:?} {act:?}: output {i} differs");
                    }
                }
            }
        }
    }

    /// The fused node gives the three ops' values and gradients, for every
    /// activation, family and shape (f32, f64, dual tapes).
    #[test]
    fn dense_equals_matmul_add_activation_bit_for_bit() {
        check(|v, _| v as f32);
        check(|v, _| v);
        check(|v, i| Dual::new(v as f32, ((i % 7) as f32 - 3.0) * 0.25));
    }

    /// One thread (inside a one-thread pool nothing is cut) and two (the
    /// products and the passes cut between the caller and the pair's second
    /// thread, `kernels/pair.rs`) give the same bits, on the MLP benchmark's
    /// two large layers.
    #[test]
    fn dense_gives_the_same_bits_on_one_thread_and_two() {
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let make = |v: f64, _: usize| v as f32;
        let bits = |o: Vec<Vec<f32>>| -> Vec<Vec<u32>> {
            o.iter()
                .map(|v| v.iter().map(|x| x.to_bits()).collect())
                .collect()
        };
        for act in [Activation::Relu, Activation::Tanh] {
            for dims in [(64, 784, 256), (64, 256, 256)] {
                let whole = bits(one.install(|| run(&make, dims, act, true)));
                for round in 0..3 {
                    let cut = bits(run(&make, dims, act, true));
                    assert!(whole == cut, "{act:?} {dims:?}, round {round}");
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "dense: lhs [2, 3], rhs [3, 4], bias [3]: bias must be [4]")]
    fn dense_bias_mismatch_names_op_and_shapes() {
        let t = Tape::<f64>::new();
        let x = t.var(&Tensor::new([2, 3], vec![0.0; 6]));
        let w = t.var(&Tensor::new([3, 4], vec![0.0; 12]));
        let b = t.var(&Tensor::new([3], vec![0.0; 3]));
        x.dense(w, b, Activation::Relu);
    }

    #[test]
    #[should_panic(expected = "dense: lhs [2, 3], rhs [2, 4], bias [4]: inner dimensions 3 != 2")]
    fn dense_inner_mismatch_names_op_and_shapes() {
        let t = Tape::<f64>::new();
        let x = t.var(&Tensor::new([2, 3], vec![0.0; 6]));
        let w = t.var(&Tensor::new([2, 4], vec![0.0; 8]));
        let b = t.var(&Tensor::new([4], vec![0.0; 4]));
        x.dense(w, b, Activation::Relu);
    }
}
