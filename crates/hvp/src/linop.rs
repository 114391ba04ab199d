//! Linear operators on flat vectors, so a Hessian-vector product can be handed
//! to a solver ([`crate::cg`], [`crate::neumann`], [`crate::power_iteration`])
//! directly.

use std::cell::{Cell, RefCell};
use std::marker::PhantomData;

use tape::{Float, Tensor};

use crate::objective::Objective;
use crate::workspace::Workspace;

/// A square linear operator A on flat vectors of length [`LinOp::dim`].
///
/// Solvers only ever call `apply`; an implementation may do anything inside
/// (a dense product, a dual pass over a tape) as long as it is linear.
///
/// ```
/// use hvp::{Damped, Identity, LinOp};
/// // (I + 0.5·I)·x = 1.5·x
/// let a = Damped::new(Identity::new(2), 0.5);
/// let mut out = [0.0; 2];
/// a.apply(&[2.0, -4.0], &mut out);
/// assert_eq!(out, [3.0, -6.0]);
/// ```
pub trait LinOp<F: Float> {
    /// The dimension n: A is n × n.
    fn dim(&self) -> usize;
    /// `out ← A·x`, overwriting `out`.
    ///
    /// # Panics
    /// Implementations panic if `x` or `out` does not have length `dim()`.
    fn apply(&self, x: &[F], out: &mut [F]);
}

impl<F: Float, A: LinOp<F> + ?Sized> LinOp<F> for &A {
    fn dim(&self) -> usize {
        (**self).dim()
    }
    #[track_caller]
    fn apply(&self, x: &[F], out: &mut [F]) {
        (**self).apply(x, out)
    }
}

#[track_caller]
pub(crate) fn check_apply<F>(what: &str, dim: usize, x: &[F], out: &[F]) {
    assert!(
        x.len() == dim && out.len() == dim,
        "{what}: operator of dimension {dim} applied to x of length {} into out of length {}",
        x.len(),
        out.len()
    );
}

/// The Hessian of an [`Objective`] at a fixed point, as a [`LinOp`]: each
/// `apply` is one forward-over-reverse pass ([`Workspace::hvp`]'s machinery).
///
/// With [`Hessian::block`] the operator is the diagonal block H_SS for a subset S
/// of the inputs; the other inputs are recorded as constants, so the reverse
/// sweep computes no adjoints for them (`requires_grad` pruning).
///
/// The flat vector is the concatenation of the selected inputs in order
/// ([`crate::flatten`]). `apply` reuses one [`Workspace`] (behind a `RefCell`,
/// so the operator is shared by `&` like any other), and allocates nothing once
/// the tape has grown to size (the GEMMs' packing buffers are thread-local
/// and kept: see `crates/tape/tests/alloc.rs`).
///
/// ```
/// use hvp::{Hessian, LinOp, Objective};
/// use tape::{Real, Tape, Tensor, Var};
///
/// /// f(x, y) = Σ x²·y: the block H_xx = diag(2y).
/// struct F;
/// impl Objective<f64> for F {
///     fn eval<'t, T: Real<Base = f64>>(&self, _t: &'t Tape<T>, x: &[Var<'t, T>]) -> Var<'t, T> {
///         (x[0] * x[0] * x[1]).sum()
///     }
/// }
/// let point = [Tensor::vector(vec![1.0, 2.0]), Tensor::vector(vec![3.0, 5.0])];
/// let h = Hessian::block(&F, &point, &[0]);
/// let mut out = [0.0; 2];
/// h.apply(&[1.0, 1.0], &mut out);
/// assert_eq!(out, [6.0, 10.0]);
/// assert_eq!(h.applications(), 1);
/// ```
pub struct Hessian<'a, F: Float, O> {
    f: &'a O,
    x: &'a [Tensor<F>],
    wrt: Vec<bool>,
    dim: usize,
    ws: RefCell<Workspace<F>>,
    applications: Cell<usize>,
}

impl<'a, F: Float, O: Objective<F>> Hessian<'a, F, O> {
    /// The full Hessian ∇²f(x) over all inputs.
    pub fn new(f: &'a O, x: &'a [Tensor<F>]) -> Self {
        let all: Vec<usize> = (0..x.len()).collect();
        Self::block(f, x, &all)
    }

    /// The diagonal block H_SS = ∂²f/∂x_S² for the inputs with indices in `wrt`
    /// (the others are held fixed).
    ///
    /// # Panics
    /// If an index in `wrt` is out of range.
    #[track_caller]
    pub fn block(f: &'a O, x: &'a [Tensor<F>], wrt: &[usize]) -> Self {
        Self::block_with_workspace(f, x, wrt, Workspace::new())
    }

    /// [`Hessian::block`] reusing an existing workspace (its buffers keep their
    /// capacity); take it back with [`Hessian::into_workspace`].
    ///
    /// # Panics
    /// If an index in `wrt` is out of range.
    #[track_caller]
    pub fn block_with_workspace(
        f: &'a O,
        x: &'a [Tensor<F>],
        wrt: &[usize],
        ws: Workspace<F>,
    ) -> Self {
        let mut mask = vec![false; x.len()];
        for &i in wrt {
            assert!(
                i < x.len(),
                "Hessian::block: input index {i} out of range for {} inputs",
                x.len()
            );
            mask[i] = true;
        }
        let dim = x
            .iter()
            .zip(&mask)
            .filter(|(_, &w)| w)
            .map(|(xi, _)| xi.numel())
            .sum();
        Hessian {
            f,
            x,
            wrt: mask,
            dim,
            ws: RefCell::new(ws),
            applications: Cell::new(0),
        }
    }

    /// The point x the Hessian is taken at.
    pub fn point(&self) -> &'a [Tensor<F>] {
        self.x
    }

    /// How many Hessian-vector products `apply` has run (the cost measure of
    /// the solvers that use it).
    pub fn applications(&self) -> usize {
        self.applications.get()
    }

    /// The workspace, to reuse its buffers elsewhere.
    pub fn into_workspace(self) -> Workspace<F> {
        self.ws.into_inner()
    }
}

impl<F: Float, O: Objective<F>> LinOp<F> for Hessian<'_, F, O> {
    fn dim(&self) -> usize {
        self.dim
    }
    #[track_caller]
    fn apply(&self, x: &[F], out: &mut [F]) {
        check_apply("Hessian::apply", self.dim, x, out);
        self.ws
            .borrow_mut()
            .hvp_flat(self.f, self.x, &self.wrt, x, out);
        self.applications.set(self.applications.get() + 1);
    }
}

/// A + λI: Tikhonov damping of an operator (e.g. a Hessian that is only
/// positive semi-definite, before handing it to CG).
#[derive(Clone, Debug)]
pub struct Damped<F, A> {
    /// The operator A.
    pub op: A,
    /// The shift λ.
    pub lambda: F,
}

impl<F: Float, A: LinOp<F>> Damped<F, A> {
    /// A + λI.
    pub fn new(op: A, lambda: F) -> Self {
        Damped { op, lambda }
    }
}

impl<F: Float, A: LinOp<F>> LinOp<F> for Damped<F, A> {
    fn dim(&self) -> usize {
        self.op.dim()
    }
    #[track_caller]
    fn apply(&self, x: &[F], out: &mut [F]) {
        check_apply("Damped::apply", self.dim(), x, out);
        self.op.apply(x, out);
        for (o, &xi) in out.iter_mut().zip(x) {
            *o += self.lambda * xi;
        }
    }
}

/// The n × n identity.
#[derive(Copy, Clone, Debug)]
pub struct Identity {
    dim: usize,
}

impl Identity {
    /// I of dimension `dim`.
    pub fn new(dim: usize) -> Self {
        Identity { dim }
    }
}

impl<F: Float> LinOp<F> for Identity {
    fn dim(&self) -> usize {
        self.dim
    }
    #[track_caller]
    fn apply(&self, x: &[F], out: &mut [F]) {
        check_apply("Identity::apply", self.dim, x, out);
        out.copy_from_slice(x);
    }
}

/// Any closure `|x, out| { out ← A·x }` as a [`LinOp`] of a given dimension.
///
/// ```
/// use hvp::{FnOp, LinOp};
/// // A = diag(1, 2, 3)
/// let a = FnOp::new(3, |x: &[f64], out: &mut [f64]| {
///     for i in 0..3 {
///         out[i] = (i + 1) as f64 * x[i];
///     }
/// });
/// let mut out = [0.0; 3];
/// a.apply(&[1.0, 1.0, 1.0], &mut out);
/// assert_eq!(out, [1.0, 2.0, 3.0]);
/// ```
pub struct FnOp<F, C> {
    dim: usize,
    f: C,
    _elem: PhantomData<fn(F)>,
}

impl<F: Float, C: Fn(&[F], &mut [F])> FnOp<F, C> {
    /// Wraps `f`, which must write A·x into its second argument.
    pub fn new(dim: usize, f: C) -> Self {
        FnOp {
            dim,
            f,
            _elem: PhantomData,
        }
    }
}

impl<F: Float, C: Fn(&[F], &mut [F])> LinOp<F> for FnOp<F, C> {
    fn dim(&self) -> usize {
        self.dim
    }
    #[track_caller]
    fn apply(&self, x: &[F], out: &mut [F]) {
        check_apply("FnOp::apply", self.dim, x, out);
        (self.f)(x, out)
    }
}

/// A dense row-major n × n matrix as a [`LinOp`] (small problems, tests, teaching).
#[derive(Clone, Debug)]
pub struct DenseOp<F> {
    n: usize,
    data: Vec<F>,
}

impl<F: Float> DenseOp<F> {
    /// The matrix with row-major entries `data` (`n·n` of them).
    ///
    /// # Panics
    /// If `data.len() != n·n`.
    #[track_caller]
    pub fn new(n: usize, data: Vec<F>) -> Self {
        assert!(
            data.len() == n * n,
            "DenseOp::new: {} entries for a {n} × {n} matrix",
            data.len()
        );
        DenseOp { n, data }
    }

    /// The matrix of a square `[n, n]` tensor (e.g. from [`crate::dense_hessian`]).
    ///
    /// # Panics
    /// If the tensor is not `[n, n]`.
    #[track_caller]
    pub fn from_tensor(t: &Tensor<F>) -> Self {
        let d = t.dims();
        assert!(
            d.len() == 2 && d[0] == d[1],
            "DenseOp::from_tensor: expected [n, n], got {d:?}"
        );
        Self::new(d[0], t.data().to_vec())
    }

    /// Entry (i, j).
    pub fn get(&self, i: usize, j: usize) -> F {
        self.data[i * self.n + j]
    }
}

impl<F: Float> LinOp<F> for DenseOp<F> {
    fn dim(&self) -> usize {
        self.n
    }
    #[track_caller]
    fn apply(&self, x: &[F], out: &mut [F]) {
        check_apply("DenseOp::apply", self.n, x, out);
        for (i, o) in out.iter_mut().enumerate() {
            let row = &self.data[i * self.n..(i + 1) * self.n];
            let mut s = F::zero();
            for (&a, &b) in row.iter().zip(x) {
                s += a * b;
            }
            *o = s;
        }
    }
}
