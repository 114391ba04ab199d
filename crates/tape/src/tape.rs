//! The Wengert tape: nodes in one `Vec`, values and adjoints in flat arenas.
//!
//! Recording order is a topological order, so the reverse sweep is one loop
//! from the output back to the start over a dense adjoint buffer. A node's
//! inputs were recorded before it, so their values and adjoints all lie
//! *before* the node's own range in the arenas: `split_at_mut` at the node's
//! offset hands out the node's adjoint and its inputs' adjoints without
//! `RefCell` juggling or `unsafe`.

use std::cell::{Ref, RefCell};
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU32, Ordering};

use smallvec::SmallVec;

use crate::constant::Constant;
use crate::ops::{self, Op};
use crate::real::{Dual, Real};
use crate::shape::{shape_panic, Shape};
use crate::tensor::Tensor;

static NEXT_TAPE_ID: AtomicU32 = AtomicU32::new(1);

/// One recorded operation: an op tag, its inputs, its output shape and where its
/// value and saved data live in the arenas. No closures: the same node can be
/// replayed over any element type.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub(crate) op: Op,
    pub(crate) inputs: SmallVec<[u32; 3]>,
    pub(crate) shape: Shape,
    /// Start of the value (and adjoint) in the arenas; the length is `shape.numel()`.
    pub(crate) at: usize,
    /// Extra saved values (e.g. softmax probabilities) in the `aux` arena.
    pub(crate) aux: Range<usize>,
    /// Saved indices (labels, argmax positions) in the `idx` arena.
    pub(crate) idx: Range<usize>,
    /// Whether any adjoint flows through this node (false for constants and
    /// everything computed only from constants).
    pub(crate) requires_grad: bool,
    /// Whether the primal part of this node's adjoint is read by anyone: false
    /// for the leaves of [`Tape::tangent_leaf_with`] (an HVP-only pass, which
    /// reads the tangent part ḡ.d alone), and for a node all of whose
    /// differentiable inputs have it false and whose rule forms their ḡ.d
    /// without reading ḡ.v ([`ops::tangent_reads_primal`]: a copy, sum or
    /// selection of ḡ, or a product with a real constant on the left). A
    /// liveness analysis, run forward at recording time (a rule's inputs
    /// come before it); rules may skip the products that feed only ḡ.v
    /// (in an MLP's HVP-only pass: ḡh1.v = ḡz2.v·W2ᵀ, dead behind the first
    /// layer's ReLU and its real data). True on every node of a tape without
    /// such leaves.
    pub(crate) primal_adjoint: bool,
    /// Start of this node's value as real data in the `base` arena: set
    /// only on the leaves of [`Tape::constant_base`] on a tape whose
    /// products take a real left operand (`Dual<f32>`, `Dual<f64>`). A
    /// matmul reads its left operand from there (real products on the other
    /// operand's parts, no zero tangents); see [`crate::ops::linalg`].
    pub(crate) base: Option<usize>,
    /// Index of this node's [`Constant`] in the tape's `shared` list: set
    /// only on the leaves of [`Tape::constant_shared`], whose data is read
    /// in place (like `base`, but not copied).
    pub(crate) shared: Option<u32>,
    /// Whether the value in `vals` is not written yet (a `base` or `shared`
    /// leaf that only real-left products have read, or a `source` leaf);
    /// [`Inner::materialize`] writes it on the first read of `vals`.
    pub(crate) pending: bool,
    /// Whether this is a leaf of [`Tape::tangent_leaf_source`]: its dual
    /// value is the caller's planes registered with
    /// [`crate::kernels::with_plane_sources`] (`kernels/source.rs`).
    pub(crate) source: bool,
}

impl Node {
    #[inline]
    pub(crate) fn range(&self) -> Range<usize> {
        self.at..self.at + self.shape.numel()
    }
}

/// The arenas. `vals` and `grads` are never shrunk: their initialised length is
/// a high-water mark, and the part in use is `vals[..len]` (values) and the
/// ranges of nodes with `has_adj` set (adjoints). Reusing stale but initialised
/// memory lets a re-recording skip the zero-fill of outputs that the forward
/// rule overwrites anyway, and lets the sweep zero an adjoint only when it is
/// first touched (or not at all, when the rule overwrites it).
#[derive(Default)]
struct Inner<T: Real> {
    nodes: Vec<Node>,
    /// Values; `vals[..len]` is in use, the rest is stale.
    vals: Vec<T>,
    len: usize,
    aux: Vec<T>,
    idx: Vec<usize>,
    grads: Vec<T>,
    has_adj: Vec<bool>,
    scratch: Vec<T>,
    /// Index of the node the last backward sweep started from, if any.
    swept_from: Option<u32>,
    /// Real-valued copies of the [`Tape::constant_base`] leaves (`Node::base`).
    base: Vec<T::Base>,
    /// The [`Tape::constant_shared`] leaves' data, by reference (`Node::shared`).
    shared: Vec<Constant<T::Base>>,
}

impl<T: Real> Inner<T> {
    /// Writes node `i`'s value into `vals` (`T::from_base` of its real copy,
    /// or a source leaf's registered planes) if it is still pending; a no-op
    /// otherwise. `tape` is the tape's id.
    ///
    /// # Panics
    /// If it is a source leaf whose planes are not registered.
    #[track_caller]
    fn materialize(&mut self, i: usize, tape: u32) {
        let node = &mut self.nodes[i];
        if !node.pending {
            return;
        }
        node.pending = false;
        let r = node.range();
        if node.source {
            let out = &mut self.vals[r];
            assert!(
                crate::kernels::source::zip_source(tape, i, out),
                "Tape: node {i} {:?} is a source leaf (tangent_leaf_source) read outside \
                 with_plane_sources: its value is the caller's planes, registered only while \
                 its pass runs",
                node.shape
            );
            return;
        }
        let src = match (node.base, node.shared) {
            (Some(b), _) => &self.base[b..b + r.len()],
            (None, Some(c)) => self.shared[c as usize].value().data(),
            (None, None) => return,
        };
        for (o, &v) in self.vals[r].iter_mut().zip(src) {
            *o = T::from_base(v);
        }
    }

    /// Appends a leaf node of `shape` whose value starts at `at`.
    fn push_leaf(&mut self, shape: Shape, at: usize, requires_grad: bool, primal_adjoint: bool) {
        let (a, i) = (self.aux.len(), self.idx.len());
        self.nodes.push(Node {
            op: Op::Leaf,
            inputs: SmallVec::new(),
            shape,
            at,
            aux: a..a,
            idx: i..i,
            requires_grad,
            primal_adjoint,
            base: None,
            shared: None,
            pending: false,
            source: false,
        });
    }

    /// Reserves `n` values at the end of the arena and returns their start. The
    /// slots are zeroed if `zeroed`, else they hold stale (initialised) values.
    #[inline]
    fn alloc(&mut self, n: usize, zeroed: bool) -> usize {
        let at = self.len;
        self.len = at + n;
        if self.vals.len() < self.len {
            // Fresh memory is zero anyway; only the stale prefix needs a fill.
            let stale = self.vals.len();
            self.vals.resize(self.len, T::zero());
            if zeroed && stale > at {
                self.vals[at..stale].fill(T::zero());
            }
        } else if zeroed {
            self.vals[at..self.len].fill(T::zero());
        }
        at
    }
}

/// A Wengert tape over element type `T` (`f32`, `f64` or a [`crate::Dual`]).
///
/// Variables ([`Var`]) borrow the tape, so it cannot be cleared while any are
/// alive. [`Tape::clear`] keeps every buffer's capacity: recording the same
/// computation again allocates nothing.
///
/// ```
/// use tape::{Tape, Tensor};
/// let t = Tape::<f64>::new();
/// let x = t.var(&Tensor::vector(vec![1.0, 2.0, 3.0]));
/// let y = (x * x).sum(); // y = Σ x², ∂y/∂x = 2x
/// t.backward(y);
/// assert_eq!(t.grad(x).data(), &[2.0, 4.0, 6.0]);
/// ```
pub struct Tape<T: Real> {
    id: u32,
    inner: RefCell<Inner<T>>,
}

impl<T: Real> Default for Tape<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Real> fmt::Debug for Tape<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.inner.borrow();
        f.debug_struct("Tape")
            .field("id", &self.id)
            .field("nodes", &inner.nodes.len())
            .finish()
    }
}

/// A variable: a node of a tape. `Copy`; an index plus the tape it belongs to.
///
/// Arithmetic operators and the methods of [`crate::ops`] record new nodes.
#[derive(Copy, Clone)]
pub struct Var<'t, T: Real> {
    pub(crate) tape: &'t Tape<T>,
    pub(crate) idx: u32,
}

impl<T: Real> fmt::Debug for Var<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Var(tape {}, node {}, shape {:?})",
            self.tape.id,
            self.idx,
            self.shape()
        )
    }
}

/// What a forward rule sees: its inputs' values and its output buffer.
pub(crate) struct Fwd<'a, T: Real> {
    /// The tape's id (a source leaf's key, with its node index).
    tape: u32,
    vals: &'a [T],
    base: &'a [T::Base],
    shared: &'a [Constant<T::Base>],
    nodes: &'a [Node],
    inputs: &'a [u32],
    /// The output buffer: zero-initialised by [`Tape::record`]; stale (finite
    /// or not) by [`Tape::record_overwrite`], whose rules write every element.
    pub(crate) out: &'a mut [T],
    /// Arena for extra saved values; push to save.
    pub(crate) aux: &'a mut Vec<T>,
    /// Arena for saved indices; push to save.
    pub(crate) idx: &'a mut Vec<usize>,
    /// The tape's reusable scratch buffer (the backward sweep's, idle while
    /// a node is recorded): working space a rule overwrites before it reads,
    /// so it only grows and is never zeroed per call (unlike `aux`, whose
    /// length is the node's saved data).
    pub(crate) scratch: &'a mut Vec<T>,
}

impl<'a, T: Real> Fwd<'a, T> {
    /// Value of input `k`.
    #[inline]
    pub(crate) fn x(&self, k: usize) -> &'a [T] {
        &self.vals[self.nodes[self.inputs[k] as usize].range()]
    }
    /// Input `k` as real data, if it is a [`Tape::constant_base`] leaf with
    /// a real copy (its `vals` may not be written: only rules that the
    /// recording exempts from materialising may read it this way).
    #[inline]
    pub(crate) fn x_base(&self, k: usize) -> Option<&'a [T::Base]> {
        base_of(self.nodes, self.base, self.shared, self.inputs[k])
    }
    /// Input `k`'s column-major copy, if it is a [`Tape::constant_shared`]
    /// leaf of rank ≥ 2 (see [`Constant`]).
    #[inline]
    pub(crate) fn x_columns(&self, k: usize) -> Option<&'a [T::Base]> {
        let n = &self.nodes[self.inputs[k] as usize];
        n.shared.and_then(|c| self.shared[c as usize].columns())
    }
    /// `(tape id, node index)` of input `k` if it is a source leaf whose
    /// value is not written (see [`Tape::tangent_leaf_source`]): only rules
    /// that the recording exempts from materialising it see one.
    #[inline]
    pub(crate) fn x_source(&self, k: usize) -> Option<(u32, usize)> {
        let i = self.inputs[k] as usize;
        let n = &self.nodes[i];
        (n.source && n.pending).then_some((self.tape, i))
    }
}

/// Node `i`'s real data: its copy in the `base` arena or its shared
/// constant, if it has one.
fn base_of<'a, B: crate::real::Float>(
    nodes: &[Node],
    base: &'a [B],
    shared: &'a [Constant<B>],
    i: u32,
) -> Option<&'a [B]> {
    let n = &nodes[i as usize];
    match (n.base, n.shared) {
        (Some(b), _) => Some(&base[b..b + n.shape.numel()]),
        (None, Some(c)) => Some(shared[c as usize].value().data()),
        (None, None) => None,
    }
}

/// What a VJP rule sees: the node, its inputs' values, its output value and
/// adjoint, and the adjoint buffers of its inputs to accumulate into.
pub(crate) struct Bwd<'a, T: Real> {
    /// The tape's id (a source leaf's key, with its node index).
    tape: u32,
    pub(crate) node: &'a Node,
    nodes: &'a [Node],
    vals: &'a [T],
    base: &'a [T::Base],
    shared: &'a [Constant<T::Base>],
    /// The adjoint of this node's output (`g_out`).
    pub(crate) g: &'a [T],
    grads: &'a mut [T],
    has_adj: &'a mut [bool],
    /// Saved values of this node.
    pub(crate) aux: &'a [T],
    /// Saved indices of this node.
    pub(crate) idx: &'a [usize],
    /// A reusable scratch buffer (kept across sweeps).
    pub(crate) scratch: &'a mut Vec<T>,
}

impl<'a, T: Real> Bwd<'a, T> {
    /// Value of input `k`.
    #[inline]
    pub(crate) fn x(&self, k: usize) -> &'a [T] {
        &self.vals[self.nodes[self.node.inputs[k] as usize].range()]
    }
    /// Input `k` as real data (see [`Fwd::x_base`]).
    #[inline]
    pub(crate) fn x_base(&self, k: usize) -> Option<&'a [T::Base]> {
        base_of(self.nodes, self.base, self.shared, self.node.inputs[k])
    }
    /// `(tape id, node index)` of input `k` if it is a source leaf whose
    /// value is not written (see [`Fwd::x_source`]).
    #[inline]
    pub(crate) fn x_source(&self, k: usize) -> Option<(u32, usize)> {
        let i = self.node.inputs[k] as usize;
        let n = &self.nodes[i];
        (n.source && n.pending).then_some((self.tape, i))
    }
    /// Shape of input `k`.
    #[inline]
    pub(crate) fn x_shape(&self, k: usize) -> Shape {
        self.nodes[self.node.inputs[k] as usize].shape
    }
    /// The node's own output value.
    #[inline]
    pub(crate) fn out(&self) -> &'a [T] {
        &self.vals[self.node.range()]
    }
    /// Whether input `k` wants an adjoint.
    #[inline]
    pub(crate) fn wants(&self, k: usize) -> bool {
        self.nodes[self.node.inputs[k] as usize].requires_grad
    }
    /// Whether input `k` wants the primal part of its adjoint (false: only
    /// the tangent part, see [`Tape::tangent_leaf_with`]); implies nothing
    /// unless [`Bwd::wants`] is true.
    #[inline]
    pub(crate) fn wants_primal(&self, k: usize) -> bool {
        self.nodes[self.node.inputs[k] as usize].primal_adjoint
    }
    /// The adjoint buffer of input `k`, to accumulate into (`+=`). Zeroed on
    /// the first touch of the sweep.
    #[inline]
    pub(crate) fn g_in(&mut self, k: usize) -> &mut [T] {
        let i = self.node.inputs[k] as usize;
        let r = self.nodes[i].range();
        if !self.has_adj[i] {
            self.has_adj[i] = true;
            self.grads[r.clone()].fill(T::zero());
        }
        &mut self.grads[r]
    }

    /// The adjoint buffer of input `k` and whether it is *fresh*: not yet
    /// touched in this sweep, holding stale values. A rule that gets `true`
    /// must overwrite every element (e.g. a GEMM with β = 0) instead of
    /// accumulating; this saves the zero-fill of large adjoints.
    #[inline]
    pub(crate) fn g_in_overwrite(&mut self, k: usize) -> (&mut [T], bool) {
        let i = self.node.inputs[k] as usize;
        let fresh = !self.has_adj[i];
        self.has_adj[i] = true;
        (&mut self.grads[self.nodes[i].range()], fresh)
    }
}

impl<T: Real> Tape<T> {
    /// An empty tape with a fresh id.
    pub fn new() -> Self {
        Tape {
            id: NEXT_TAPE_ID.fetch_add(1, Ordering::Relaxed),
            inner: RefCell::new(Inner::default()),
        }
    }

    /// This tape's id (shown in messages about mixing tapes).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Forgets every node but keeps all buffers' capacity, so recording the same
    /// computation again allocates nothing.
    pub fn clear(&mut self) {
        let inner = self.inner.get_mut();
        inner.nodes.clear();
        inner.len = 0;
        inner.aux.clear();
        inner.idx.clear();
        inner.swept_from = None;
        inner.base.clear();
        inner.shared.clear();
    }

    /// Forgets every node after the first `keep`, which must all be leaves,
    /// and the last sweep's adjoints; the kept leaves stay with their values
    /// in the arena (persistent leaves: parameters recorded once and reused
    /// by every later recording, with no copy per pass). Buffers keep their
    /// capacity, as with [`Tape::clear`] (which is `rewind(0)`). The kept
    /// leaves are [`Tape::var_at`]`(0..keep)`.
    ///
    /// ```
    /// use tape::{Tape, Tensor};
    /// let mut t = Tape::<f64>::new();
    /// t.var(&Tensor::vector(vec![1.0, 2.0])); // node 0, recorded once
    /// for c in [1.0, 3.0] {
    ///     t.rewind(1);
    ///     let w = t.var_at(0);
    ///     t.backward((w * c).sum()); // ∂/∂w Σ c·w = c
    ///     assert_eq!(t.grad(w).data(), &[c, c]);
    /// }
    /// ```
    ///
    /// # Panics
    /// If `keep` exceeds the number of nodes, or one of the first `keep`
    /// nodes is not a leaf (its value would go stale when a leaf it reads
    /// is updated by [`Tape::rewind_updating`]).
    #[track_caller]
    pub fn rewind(&mut self, keep: usize) {
        self.rewind_updating(keep, |_, _, _| {});
    }

    /// [`Tape::rewind`]`(keep)` that first hands every kept leaf to
    /// `update(i, value, adjoint)`: leaf i's value, to change in place, and
    /// its adjoint from the last sweep (`None`: a constant leaf, a leaf no
    /// adjoint reached, or no sweep since the last rewind). Leaves whose
    /// value is read in place and not held in the arena
    /// ([`Tape::constant_shared`], and [`Tape::constant_base`] on a dual
    /// tape, until an op materialises them) are constants and skipped. An optimiser's
    /// step on persistent parameters, x_i ← x_i − α ∂f/∂x_i for plain
    /// gradient descent, reads g and writes x once, with no copy of x into
    /// the next recording. Nothing is recorded while `update` runs, and the
    /// nodes that read the old values are forgotten, so no stale value can
    /// be read. `update` decides what a failure means: the tape does not
    /// keep the old values (a caller that must undo a step keeps its own
    /// copy or recomputes it).
    ///
    /// ```
    /// use tape::{Tape, Tensor};
    /// // Two steps of gradient descent on f(x) = Σ x², α = 0.25: x ← x − 0.25·2x = x/2.
    /// let mut t = Tape::<f64>::new();
    /// t.var(&Tensor::vector(vec![4.0, -2.0]));
    /// for _ in 0..2 {
    ///     let x = t.var_at(0);
    ///     t.backward(x.square().sum());
    ///     t.rewind_updating(1, |_, x, g| {
    ///         let g = g.expect("x is read by f");
    ///         x.iter_mut().zip(g).for_each(|(x, g)| *x -= 0.25 * g);
    ///     });
    /// }
    /// assert_eq!(t.var_at(0).value().data(), &[1.0, -0.5]);
    /// ```
    ///
    /// # Panics
    /// As [`Tape::rewind`].
    #[track_caller]
    pub fn rewind_updating(
        &mut self,
        keep: usize,
        mut update: impl FnMut(usize, &mut [T], Option<&[T]>),
    ) {
        let inner = self.inner.get_mut();
        let n = inner.nodes.len();
        assert!(
            keep <= n,
            "Tape::rewind: keep {keep} nodes of a tape of {n} nodes"
        );
        if let Some((i, node)) = inner.nodes[..keep]
            .iter()
            .enumerate()
            .find(|(_, node)| !matches!(node.op, Op::Leaf))
        {
            panic!(
                "Tape::rewind: node {i} of the {keep} kept is a {} {:?}, not a leaf; only \
                 leaves persist across a rewind",
                node.op.name(),
                node.shape
            );
        }
        let root = inner.swept_from;
        for (i, node) in inner.nodes[..keep].iter().enumerate() {
            let r = node.range();
            let adj = root
                .filter(|&root| i <= root as usize && inner.has_adj[i] && node.requires_grad)
                .map(|_| &inner.grads[r.clone()]);
            if node.pending {
                // A constant read in place: its value is not in `vals`, and
                // a constant has no adjoint to update from.
                continue;
            }
            update(i, &mut inner.vals[r], adj);
        }
        let kept = &inner.nodes[..keep];
        let len = kept.last().map_or(0, |n| n.range().end);
        let (aux, idx) = kept.last().map_or((0, 0), |n| (n.aux.end, n.idx.end));
        let base = kept
            .iter()
            .filter_map(|n| n.base.map(|b| b + n.shape.numel()))
            .max()
            .unwrap_or(0);
        let shared = kept
            .iter()
            .filter_map(|n| n.shared.map(|c| c as usize + 1))
            .max()
            .unwrap_or(0);
        inner.nodes.truncate(keep);
        inner.len = len;
        inner.aux.truncate(aux);
        inner.idx.truncate(idx);
        inner.base.truncate(base);
        inner.shared.truncate(shared);
        inner.swept_from = None;
        inner.has_adj.clear();
    }

    /// Number of recorded nodes.
    pub fn len(&self) -> usize {
        self.inner.borrow().nodes.len()
    }

    /// Whether no node is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held by recorded values, saved data and adjoints (not capacity).
    pub fn bytes_in_use(&self) -> usize {
        let i = self.inner.borrow();
        let e = std::mem::size_of::<T>();
        let swept = match i.swept_from {
            Some(r) => i.nodes[r as usize].range().end,
            None => 0,
        };
        (i.len + i.aux.len() + swept) * e
            + i.base.len() * std::mem::size_of::<T::Base>()
            + i.idx.len() * std::mem::size_of::<usize>()
            + i.nodes.len() * std::mem::size_of::<Node>()
    }

    /// Bytes reserved by the tape's arenas (capacity).
    pub fn bytes_reserved(&self) -> usize {
        let i = self.inner.borrow();
        let e = std::mem::size_of::<T>();
        (i.vals.capacity() + i.aux.capacity() + i.grads.capacity() + i.scratch.capacity()) * e
            + i.base.capacity() * std::mem::size_of::<T::Base>()
            + i.idx.capacity() * std::mem::size_of::<usize>()
            + i.nodes.capacity() * std::mem::size_of::<Node>()
            + i.has_adj.capacity()
    }

    /// A differentiable leaf holding a copy of `x`.
    pub fn var(&self, x: &Tensor<T>) -> Var<'_, T> {
        self.leaf(x.shape(), x.data(), true)
    }

    /// A constant leaf (no adjoint flows into it) holding a copy of `x`.
    pub fn constant(&self, x: &Tensor<T>) -> Var<'_, T> {
        self.leaf(x.shape(), x.data(), false)
    }

    /// A constant leaf from data of the primitive type (e.g. `f64` data on a
    /// `Dual<f64>` tape), converted with a zero tangent.
    ///
    /// On a `Dual<f32>` or `Dual<f64>` tape the data is kept as a real copy
    /// (a `memcpy`, not a conversion), and a [`Var::matmul`] with this leaf
    /// as its left operand reads it from there: real products on the other
    /// operand's value and tangent parts, with the same bits as the dual
    /// product of the converted leaf (a zero tangent contributes exact
    /// zeros; see `kernels/real_left.rs`). The converted dual value is
    /// written only when another op (or [`Tape::value`]) reads it.
    ///
    /// ```
    /// use tape::{Dual, Tape, Tensor};
    /// let t = Tape::<Dual<f64>>::new();
    /// let a = t.constant_base(&Tensor::new(&[1, 2], vec![1.0, 2.0]));
    /// let x = t.leaf(&[2, 1], &[Dual::new(3.0, 1.0), Dual::new(4.0, 0.5)], true);
    /// // A·x = 1·3 + 2·4, tangent A·ẋ = 1·1 + 2·0.5
    /// assert_eq!(a.matmul(x).item(), Dual::new(11.0, 2.0));
    /// assert_eq!(t.value(a).data()[1], Dual::new(2.0, 0.0));
    /// ```
    pub fn constant_base(&self, x: &Tensor<T::Base>) -> Var<'_, T> {
        if !crate::kernels::takes_real_left::<T>() {
            return self.record_leaf(x.shape(), false, |out| {
                for (o, &v) in out.iter_mut().zip(x.data()) {
                    *o = T::from_base(v);
                }
            });
        }
        let v = self.record_leaf(x.shape(), false, |_| {});
        let mut inner = self.inner.borrow_mut();
        let inner = &mut *inner;
        let node = inner.nodes.last_mut().expect("just recorded");
        node.base = Some(inner.base.len());
        node.pending = true;
        inner.base.extend_from_slice(x.data());
        v
    }

    /// A constant leaf reading `x`'s data in place: recording it clones a
    /// reference (no copy of the elements; the tape holds the reference
    /// until [`Tape::clear`]). As [`Tape::constant_base`], a [`Var::matmul`]
    /// with it as the left operand reads the real data (on a `Dual<f32>`/
    /// `Dual<f64>` tape: real products on the other operand's parts; on an
    /// `f32`/`f64` tape: the data itself), and the forward product reads
    /// the constant's column-major copy (see [`Constant`]); its value in
    /// the arena is written only when another op (or [`Tape::value`])
    /// reads it. The same bits as [`Tape::constant_base`] of `x.value()`.
    ///
    /// ```
    /// use tape::{Constant, Dual, Tape, Tensor};
    /// let a = Constant::new(Tensor::new(&[1, 2], vec![1.0, 2.0]));
    /// let t = Tape::<Dual<f64>>::new();
    /// let x = t.leaf(&[2, 1], &[Dual::new(3.0, 1.0), Dual::new(4.0, 0.5)], true);
    /// let c = t.constant_shared(&a);
    /// assert_eq!(c.matmul(x).item(), Dual::new(11.0, 2.0));
    /// assert_eq!(t.value(c).data()[1], Dual::new(2.0, 0.0));
    /// ```
    pub fn constant_shared(&self, x: &Constant<T::Base>) -> Var<'_, T> {
        let v = self.record_leaf(x.value().shape(), false, |_| {});
        let mut inner = self.inner.borrow_mut();
        let inner = &mut *inner;
        let node = inner.nodes.last_mut().expect("just recorded");
        node.shared = Some(inner.shared.len() as u32);
        node.pending = true;
        inner.shared.push(x.clone());
        v
    }

    /// A rank-0 constant.
    pub fn scalar(&self, x: T) -> Var<'_, T> {
        self.leaf(Shape::scalar(), &[x], false)
    }

    /// A leaf of the given shape from a slice.
    ///
    /// # Panics
    /// If `data.len()` differs from the shape's element count.
    #[track_caller]
    pub fn leaf(&self, shape: impl Into<Shape>, data: &[T], requires_grad: bool) -> Var<'_, T> {
        let shape = shape.into();
        if data.len() != shape.numel() {
            shape_panic(
                "Tape::leaf",
                &[("shape", shape)],
                format_args!("{} elements given", data.len()),
            );
        }
        self.record_leaf(shape, requires_grad, |out| out.copy_from_slice(data))
    }

    /// A leaf of the given shape whose values `fill` writes in place (no staging
    /// copy). `fill` must write every element: the slice holds stale values.
    ///
    /// ```
    /// use tape::{Dual, Tape};
    /// let t = Tape::<Dual<f64>>::new();
    /// let (x, v) = ([1.0, 2.0], [0.5, 0.0]);
    /// let a = t.leaf_with([2], true, |out| {
    ///     for ((o, &x), &v) in out.iter_mut().zip(&x).zip(&v) {
    ///         *o = Dual::new(x, v);
    ///     }
    /// });
    /// assert_eq!(t.value(a).data()[0], Dual::new(1.0, 0.5));
    /// ```
    pub fn leaf_with(
        &self,
        shape: impl Into<Shape>,
        requires_grad: bool,
        fill: impl FnOnce(&mut [T]),
    ) -> Var<'_, T> {
        self.record_leaf(shape.into(), requires_grad, fill)
    }

    /// A leaf of the given shape filled from the adjoints of `of` from the
    /// last sweep, in order, without staging them elsewhere: the leaf's
    /// elements are cut into one segment per variable of `of` (its element
    /// count), and `fill(k, segment, adjoint)` writes segment k from the
    /// adjoint of `of[k]` (`None`: no adjoint reached it, a structural zero).
    /// `fill` must write every element of its segment (it holds stale
    /// values). This is how a gradient g = ∇f becomes the input of a further
    /// computation on the same tape (an optimiser's step x − α g) with one
    /// pass over g.
    ///
    /// ```
    /// use tape::{Tape, Tensor};
    /// let t = Tape::<f64>::new();
    /// let (x, c) = (t.var(&Tensor::vector(vec![1.0, 2.0])), t.var(&Tensor::vector(vec![5.0])));
    /// t.backward((x * x).sum()); // ∂/∂x = 2x; nothing reaches c
    /// let g = t.leaf_from_adjoints([3], &[x, c], false, |_, out, a| match a {
    ///     Some(a) => out.copy_from_slice(a),
    ///     None => out.fill(0.0),
    /// });
    /// assert_eq!(g.value().data(), &[2.0, 4.0, 0.0]);
    /// ```
    ///
    /// # Panics
    /// If no sweep has run since the last [`Tape::clear`], a variable of `of`
    /// is of another tape, or the shape's element count differs from the
    /// total of `of`'s.
    #[track_caller]
    pub fn leaf_from_adjoints(
        &self,
        shape: impl Into<Shape>,
        of: &[Var<'_, T>],
        requires_grad: bool,
        mut fill: impl FnMut(usize, &mut [T], Option<&[T]>),
    ) -> Var<'_, T> {
        let shape = shape.into();
        for &v in of {
            self.check_own(v, "leaf_from_adjoints");
        }
        let (n, root) = {
            let inner = self.inner.borrow();
            let n: usize = of
                .iter()
                .map(|v| inner.nodes[v.idx as usize].shape.numel())
                .sum();
            let root = inner
                .swept_from
                .expect("leaf_from_adjoints: no backward sweep has run on this tape");
            (n, root)
        };
        if n != shape.numel() {
            shape_panic(
                "Tape::leaf_from_adjoints",
                &[("shape", shape)],
                format_args!("the adjoints of `of` have {n} elements"),
            );
        }
        let mut inner = self.inner.borrow_mut();
        let inner = &mut *inner;
        let at = inner.alloc(n, false);
        let (vals, grads, nodes, has_adj) = (
            &mut inner.vals[at..at + n],
            &inner.grads,
            &inner.nodes,
            &inner.has_adj,
        );
        let mut off = 0;
        for (k, v) in of.iter().enumerate() {
            let i = v.idx as usize;
            let src = nodes[i].range();
            let len = src.len();
            let adj = (v.idx <= root && has_adj[i]).then(|| &grads[src]);
            fill(k, &mut vals[off..off + len], adj);
            off += len;
        }
        inner.push_leaf(shape, at, requires_grad, true);
        Var {
            tape: self,
            idx: (inner.nodes.len() - 1) as u32,
        }
    }

    fn record_leaf(
        &self,
        shape: Shape,
        requires_grad: bool,
        fill: impl FnOnce(&mut [T]),
    ) -> Var<'_, T> {
        self.record_leaf_as(shape, requires_grad, true, fill)
    }

    fn record_leaf_as(
        &self,
        shape: Shape,
        requires_grad: bool,
        primal_adjoint: bool,
        fill: impl FnOnce(&mut [T]),
    ) -> Var<'_, T> {
        let mut inner = self.inner.borrow_mut();
        let inner = &mut *inner;
        let at = inner.alloc(shape.numel(), false);
        fill(&mut inner.vals[at..inner.len]);
        inner.push_leaf(shape, at, requires_grad, primal_adjoint);
        Var {
            tape: self,
            idx: (inner.nodes.len() - 1) as u32,
        }
    }

    /// Records a node: checks the inputs belong to this tape, allocates the
    /// output in the value arena (zero-filled) and runs the forward rule into it.
    #[track_caller]
    pub(crate) fn record(
        &self,
        op: Op,
        inputs: &[Var<'_, T>],
        shape: Shape,
        forward: impl FnOnce(&mut Fwd<'_, T>),
    ) -> Var<'_, T> {
        self.record_impl(op, inputs, shape, true, forward)
    }

    /// Like [`Tape::record`], but the output buffer is not zero-filled: it holds
    /// stale values of an earlier recording. For rules that write every output
    /// element (elementwise maps, a GEMM with β = 0); saves a memset per node.
    #[track_caller]
    pub(crate) fn record_overwrite(
        &self,
        op: Op,
        inputs: &[Var<'_, T>],
        shape: Shape,
        forward: impl FnOnce(&mut Fwd<'_, T>),
    ) -> Var<'_, T> {
        self.record_impl(op, inputs, shape, false, forward)
    }

    #[track_caller]
    fn record_impl(
        &self,
        op: Op,
        inputs: &[Var<'_, T>],
        shape: Shape,
        zeroed: bool,
        forward: impl FnOnce(&mut Fwd<'_, T>),
    ) -> Var<'_, T> {
        for v in inputs {
            if !std::ptr::eq(v.tape, self) {
                panic!(
                    "{}: operand {v:?} belongs to tape {}, but the op is recorded on tape {}; \
                     variables of two tapes cannot be mixed",
                    op.name(),
                    v.tape.id,
                    self.id
                );
            }
        }
        let mut inner = self.inner.borrow_mut();
        let inner = &mut *inner;
        let idxs: SmallVec<[u32; 3]> = inputs.iter().map(|v| v.idx).collect();
        let requires_grad = idxs.iter().any(|&i| inner.nodes[i as usize].requires_grad);
        // Liveness of the primal adjoint part (see `Node::primal_adjoint`):
        // ḡ.v is read if an input wants its own ḡ.v, or the rule forms an
        // input's ḡ.d from ḡ.v. Computed before the forward, which may
        // materialise nothing that changes it.
        let base_left = idxs.first().is_some_and(|&i| {
            let n = &inner.nodes[i as usize];
            n.base.is_some() || n.shared.is_some()
        });
        let primal_adjoint = idxs.iter().enumerate().any(|(k, &i)| {
            let n = &inner.nodes[i as usize];
            n.requires_grad
                && (n.primal_adjoint
                    || ops::tangent_reads_primal::<T>(&op, k, base_left, |j| {
                        inner.nodes[idxs[j] as usize].shape
                    }))
        });
        for (k, &i) in idxs.iter().enumerate() {
            let shape = |j: usize| inner.nodes[idxs[j] as usize].shape;
            let n = &inner.nodes[i as usize];
            let in_place = if n.source {
                ops::reads_source::<T>(&op, k, base_left, shape)
            } else {
                ops::reads_base::<T>(&op, k, shape)
            };
            if n.pending && !in_place {
                inner.materialize(i as usize, self.id);
            }
        }
        let at = inner.alloc(shape.numel(), zeroed);
        let (aux0, idx0) = (inner.aux.len(), inner.idx.len());
        {
            let (before, rest) = inner.vals.split_at_mut(at);
            let out = &mut rest[..shape.numel()];
            let mut f = Fwd {
                tape: self.id,
                vals: before,
                base: &inner.base,
                shared: &inner.shared,
                nodes: &inner.nodes,
                inputs: &idxs,
                out,
                aux: &mut inner.aux,
                idx: &mut inner.idx,
                scratch: &mut inner.scratch,
            };
            forward(&mut f);
        }
        let (aux1, idx1) = (inner.aux.len(), inner.idx.len());
        inner.nodes.push(Node {
            op,
            inputs: idxs,
            shape,
            at,
            aux: aux0..aux1,
            idx: idx0..idx1,
            requires_grad,
            primal_adjoint,
            base: None,
            shared: None,
            pending: false,
            source: false,
        });
        Var {
            tape: self,
            idx: (inner.nodes.len() - 1) as u32,
        }
    }

    /// A constant copy of `v`: the same value, but no adjoint flows back
    /// through it (stop-gradient).
    pub fn detach<'t>(&'t self, v: Var<'_, T>) -> Var<'t, T> {
        self.check_own(v, "detach");
        let mut inner = self.inner.borrow_mut();
        let inner = &mut *inner;
        inner.materialize(v.idx as usize, self.id);
        let src = inner.nodes[v.idx as usize].clone();
        let at = inner.alloc(src.shape.numel(), false);
        inner.vals.copy_within(src.range(), at);
        let (a, i) = (inner.aux.len(), inner.idx.len());
        inner.nodes.push(Node {
            op: Op::Leaf,
            inputs: SmallVec::new(),
            shape: src.shape,
            at,
            aux: a..a,
            idx: i..i,
            requires_grad: false,
            primal_adjoint: true,
            base: None,
            shared: None,
            pending: false,
            source: false,
        });
        Var {
            tape: self,
            idx: (inner.nodes.len() - 1) as u32,
        }
    }

    /// The shape of a variable.
    pub fn shape_of(&self, v: Var<'_, T>) -> Shape {
        self.check_own(v, "shape_of");
        self.inner.borrow().nodes[v.idx as usize].shape
    }

    /// A copy of a variable's value.
    pub fn value(&self, v: Var<'_, T>) -> Tensor<T> {
        self.check_own(v, "value");
        self.materialize(v);
        let inner = self.inner.borrow();
        let n = &inner.nodes[v.idx as usize];
        Tensor::new(n.shape, inner.vals[n.range()].to_vec())
    }

    /// A borrowed view of a variable's value (no copy). Recording while the
    /// view is alive panics, as the arena may move.
    pub fn value_ref(&self, v: Var<'_, T>) -> Ref<'_, [T]> {
        self.check_own(v, "value_ref");
        self.materialize(v);
        Ref::map(self.inner.borrow(), |i| {
            &i.vals[i.nodes[v.idx as usize].range()]
        })
    }

    /// Writes `v`'s value into the arena if it is still pending (a
    /// [`Tape::constant_base`] leaf read so far only as real data).
    ///
    /// # Panics
    /// If it is pending while a [`Tape::value_ref`] view is alive.
    #[track_caller]
    fn materialize(&self, v: Var<'_, T>) {
        if self.inner.borrow().nodes[v.idx as usize].pending {
            let Ok(mut inner) = self.inner.try_borrow_mut() else {
                panic!(
                    "value_ref: {v:?} (a constant_base leaf) is first read while another \
                     value_ref view is alive; drop the view or read this value first"
                );
            };
            inner.materialize(v.idx as usize, self.id);
        }
    }

    /// Runs the reverse sweep from a scalar output, seeding its adjoint with 1.
    ///
    /// # Panics
    /// If `out` is not a one-element tensor.
    #[track_caller]
    pub fn backward(&self, out: Var<'_, T>) {
        let shape = self.shape_of(out);
        if shape.numel() != 1 {
            shape_panic(
                "backward",
                &[("output", shape)],
                format_args!("the output is not a scalar; use backward_with and a cotangent"),
            );
        }
        self.backward_with(out, &[T::one()]);
    }

    /// Runs the reverse sweep from `out` with the given cotangent (a VJP).
    ///
    /// # Panics
    /// If the cotangent's length differs from the output's element count.
    #[track_caller]
    pub fn backward_with(&self, out: Var<'_, T>, cotangent: &[T]) {
        self.backward_seeded(&[(out, cotangent)]);
    }

    /// Runs one reverse sweep seeded at several outputs: afterwards each
    /// variable's adjoint is Σ_i (∂y_i/∂x)ᵀ u_i for the seeds (y_i, u_i), the
    /// VJP of the map x ↦ (y_1, …, y_m) without recording Σ_i ⟨y_i, u_i⟩. A
    /// variable seeded twice gets the sum of its cotangents.
    ///
    /// ```
    /// use tape::{Tape, Tensor};
    /// let t = Tape::<f64>::new();
    /// let x = t.var(&Tensor::vector(vec![3.0]));
    /// let (y1, y2) = (x * 2.0, x.square());
    /// t.backward_seeded(&[(y1, &[1.0]), (y2, &[0.5])]);
    /// assert_eq!(x.grad().data(), &[2.0 + 3.0]); // 2·1 + 2x·0.5
    /// ```
    ///
    /// # Panics
    /// If there is no seed, a seed is of another tape, or a cotangent's length
    /// differs from its output's element count.
    #[track_caller]
    pub fn backward_seeded(&self, seeds: &[(Var<'_, T>, &[T])]) {
        let outs: SmallVec<[Var<'_, T>; 16]> = seeds.iter().map(|(v, _)| *v).collect();
        for (out, cotangent) in seeds {
            self.check_own(*out, "backward_seeded");
            let shape = self.shape_of(*out);
            if cotangent.len() != shape.numel() {
                shape_panic(
                    "backward_seeded",
                    &[("output", shape)],
                    format_args!("cotangent has {} elements", cotangent.len()),
                );
            }
        }
        self.backward_seeded_by(&outs, |k, g, add| {
            if add {
                g.iter_mut().zip(seeds[k].1).for_each(|(a, &b)| *a += b);
            } else {
                g.copy_from_slice(seeds[k].1);
            }
        });
    }

    /// [`Tape::backward_seeded`] with the cotangents written in place:
    /// `seed(k, adjoint, add)` puts output `outs[k]`'s cotangent u_k into its
    /// adjoint buffer (`add`: the output was seeded before, add u_k to it;
    /// else overwrite it: the buffer holds stale values), so a cotangent held
    /// in pieces (one per tensor of a concatenated output) needs no staging
    /// copy.
    ///
    /// ```
    /// use tape::{Tape, Tensor};
    /// let t = Tape::<f64>::new();
    /// let x = t.var(&Tensor::vector(vec![1.0, 2.0]));
    /// let y = x * 3.0;
    /// let (u0, u1) = ([1.0], [10.0]); // u = [1, 10] in two pieces
    /// t.backward_seeded_by(&[y], |_, g, _| {
    ///     g[..1].copy_from_slice(&u0);
    ///     g[1..].copy_from_slice(&u1);
    /// });
    /// assert_eq!(x.grad().data(), &[3.0, 30.0]);
    /// ```
    ///
    /// # Panics
    /// If there is no output or an output is of another tape.
    #[track_caller]
    pub fn backward_seeded_by(
        &self,
        outs: &[Var<'_, T>],
        mut seed: impl FnMut(usize, &mut [T], bool),
    ) {
        for out in outs {
            self.check_own(*out, "backward_seeded");
        }
        let Some(root) = outs.iter().map(|v| v.idx).max() else {
            panic!("backward_seeded: no seed")
        };
        let mut guard = self.inner.borrow_mut();
        let inner = &mut *guard;
        let end = inner.nodes[root as usize].range().end;
        // Adjoints are zeroed lazily, on first touch (see `Bwd::g_in`).
        if inner.grads.len() < end {
            inner.grads.resize(end, T::zero());
        }
        inner.has_adj.clear();
        inner.has_adj.resize(root as usize + 1, false);
        for (k, out) in outs.iter().enumerate() {
            let i = out.idx as usize;
            let g = &mut inner.grads[inner.nodes[i].range()];
            seed(k, g, inner.has_adj[i]);
            inner.has_adj[i] = true;
        }
        let root = root as usize;
        inner.swept_from = Some(root as u32);
        let mut scratch = std::mem::take(&mut inner.scratch);
        for i in (0..=root).rev() {
            let node = &inner.nodes[i];
            if !inner.has_adj[i] || !node.requires_grad || matches!(node.op, Op::Leaf) {
                continue;
            }
            let (g_before, g_rest) = inner.grads.split_at_mut(node.at);
            let (adj_before, _) = inner.has_adj.split_at_mut(i);
            let mut b = Bwd {
                tape: self.id,
                node,
                nodes: &inner.nodes,
                vals: &inner.vals,
                base: &inner.base,
                shared: &inner.shared,
                g: &g_rest[..node.shape.numel()],
                grads: g_before,
                has_adj: adj_before,
                aux: &inner.aux[node.aux.clone()],
                idx: &inner.idx[node.idx.clone()],
                scratch: &mut scratch,
            };
            ops::vjp(&mut b);
        }
        inner.scratch = scratch;
    }

    /// The adjoint of `v` from the last sweep (zeros if no adjoint reached it).
    ///
    /// # Panics
    /// If no sweep has run since the last [`Tape::clear`].
    #[track_caller]
    pub fn grad(&self, v: Var<'_, T>) -> Tensor<T> {
        let shape = self.shape_of(v);
        let mut t = Tensor::zeros(shape);
        self.grad_into(v, t.data_mut());
        t
    }

    /// Writes the adjoint of `v` from the last sweep into `out` (no allocation).
    ///
    /// # Panics
    /// If no sweep has run, or `out` has the wrong length.
    #[track_caller]
    pub fn grad_into(&self, v: Var<'_, T>, out: &mut [T]) {
        self.check_own(v, "grad");
        let inner = self.inner.borrow();
        let root = inner
            .swept_from
            .expect("grad: no backward sweep has run on this tape");
        let n = &inner.nodes[v.idx as usize];
        if out.len() != n.shape.numel() {
            shape_panic(
                "grad_into",
                &[("variable", n.shape)],
                format_args!("output buffer has {} elements", out.len()),
            );
        }
        if v.idx <= root && inner.has_adj[v.idx as usize] {
            out.copy_from_slice(&inner.grads[n.range()]);
        } else {
            out.iter_mut().for_each(|x| *x = T::zero());
        }
    }

    /// A borrowed view of the adjoint of `v` from the last sweep (no copy), or
    /// `None` if no adjoint reached it (a structural zero). Recording or sweeping
    /// while the view is alive panics.
    ///
    /// ```
    /// use tape::{Tape, Tensor};
    /// let t = Tape::<f64>::new();
    /// let x = t.var(&Tensor::vector(vec![1.0, 2.0]));
    /// let c = t.var(&Tensor::vector(vec![5.0]));
    /// t.backward((x * x).sum()); // ∂/∂x Σ x² = 2x; nothing reaches c
    /// assert_eq!(&*t.grad_ref(x).unwrap(), &[2.0, 4.0]);
    /// assert!(t.grad_ref(c).is_none());
    /// ```
    ///
    /// # Panics
    /// If no sweep has run since the last [`Tape::clear`].
    #[track_caller]
    pub fn grad_ref(&self, v: Var<'_, T>) -> Option<Ref<'_, [T]>> {
        self.check_own(v, "grad_ref");
        let inner = self.inner.borrow();
        let root = inner
            .swept_from
            .expect("grad_ref: no backward sweep has run on this tape");
        let i = v.idx as usize;
        if v.idx > root || !inner.has_adj[i] {
            return None;
        }
        Some(Ref::map(inner, |inner| {
            &inner.grads[inner.nodes[i].range()]
        }))
    }

    /// Convenience: sweep from a scalar `out` and return the gradients of `wrt`.
    #[track_caller]
    pub fn gradients(&self, out: Var<'_, T>, wrt: &[Var<'_, T>]) -> Vec<Tensor<T>> {
        self.backward(out);
        wrt.iter().map(|&v| self.grad(v)).collect()
    }

    #[track_caller]
    fn check_own(&self, v: Var<'_, T>, what: &str) {
        if !std::ptr::eq(v.tape, self) {
            panic!(
                "{what}: {v:?} belongs to tape {}, not to tape {}",
                v.tape.id, self.id
            );
        }
    }

    /// The variable at node `index` of this tape: for code that hands a
    /// tape's variables across a type-erased boundary (it downcasts
    /// `&Tape<T>` with [`std::any::Any`] to a concrete element type, then
    /// rebuilds the variables by their [`Var::index`]).
    ///
    /// ```
    /// use tape::{Tape, Tensor};
    /// let t = Tape::<f64>::new();
    /// let x = t.var(&Tensor::vector(vec![1.0, 2.0]));
    /// let any: &dyn std::any::Any = &t;
    /// let t64 = any.downcast_ref::<Tape<f64>>().unwrap();
    /// assert_eq!(t64.var_at(x.index()).value().data(), &[1.0, 2.0]);
    /// ```
    ///
    /// # Panics
    /// If `index` is not a node of this tape.
    #[track_caller]
    pub fn var_at(&self, index: usize) -> Var<'_, T> {
        let n = self.len();
        assert!(
            index < n,
            "Tape::var_at: node {index} of a tape of {n} nodes"
        );
        Var {
            tape: self,
            idx: index as u32,
        }
    }

    /// Shape of node `i` (crate-internal, for op constructors).
    #[inline]
    pub(crate) fn node_shape(&self, i: u32) -> Shape {
        self.inner.borrow().nodes[i as usize].shape
    }
}

impl<T: Real> Tape<Dual<T>> {
    /// A differentiable leaf whose adjoint is wanted for its **tangent part
    /// only**, its values written in place by `fill` (as [`Tape::leaf_with`]).
    ///
    /// On a dual tape the reverse sweep gives each leaf the adjoint
    /// ḡ = ∇f + (H·v) ε. For a product `C = A·B` whose right operand is such a
    /// leaf, ḡB = Aᵀ·ḡC splits into
    ///
    /// - ḡB.v = A.vᵀ·ḡC.v (the gradient), and
    /// - ḡB.d = A.vᵀ·ḡC.d + A.dᵀ·ḡC.v (the H·v block),
    ///
    /// and only the second is computed: the primal weight-gradient products
    /// that JAX's `jvp(grad(f))` drops as dead code. Rules that have no such
    /// saving compute ḡ.v anyway, so after the sweep **the primal part of this
    /// leaf's adjoint is unspecified** (zero or partial); the tangent part is
    /// the same as for [`Tape::leaf_with`] — bit for bit, as the same products
    /// are summed in the same order.
    ///
    /// The saving propagates: a node recorded from such leaves alone, by a
    /// rule that forms its inputs' ḡ.d without reading its own ḡ.v (a bias
    /// add, a ReLU, a product with a real constant on the left), has a dead
    /// primal adjoint too, and so on through the graph; a product whose left
    /// operand's adjoint is dead then skips its primal part as well (in an
    /// MLP, ḡh1.v = ḡz2.v·W2ᵀ behind the first layer). The primal adjoint of
    /// every such node is unspecified as well.
    ///
    /// ```
    /// use tape::{Dual, Tape, Tensor};
    /// // f(x, w) = Σ (x·w)² for a constant x [1, 2] and w [2, 1]:
    /// // ∇_w f = 2 xᵀ(x w), H = 2 xᵀx, so H·v = 2 xᵀ(x v).
    /// let t = Tape::<Dual<f64>>::new();
    /// let x = t.constant_base(&Tensor::new(&[1, 2], vec![1.0, 3.0]));
    /// let (w, v) = ([0.5, -1.0], [1.0, 2.0]);
    /// let wv = t.tangent_leaf_with([2, 1], |out| {
    ///     for ((o, &w), &v) in out.iter_mut().zip(&w).zip(&v) {
    ///         *o = Dual::new(w, v);
    ///     }
    /// });
    /// t.backward(x.matmul(wv).square().sum());
    /// let hv: Vec<f64> = t.grad(wv).data().iter().map(|g| g.d).collect();
    /// assert_eq!(hv, [14.0, 42.0]); // x v = 7; 2·7·xᵀ
    /// ```
    pub fn tangent_leaf_with(
        &self,
        shape: impl Into<Shape>,
        fill: impl FnOnce(&mut [Dual<T>]),
    ) -> Var<'_, Dual<T>> {
        self.record_leaf_as(shape.into(), true, false, fill)
    }

    /// [`Tape::tangent_leaf_with`] whose value x + v ε is not written into
    /// the tape: it is read from the caller's planes x and v, registered for
    /// this leaf ([`Var::index`]) and this tape ([`Tape::id`]) by
    /// [`crate::kernels::with_plane_sources`] while the pass runs. A product
    /// `A·W` with a real left operand `A` (a [`Tape::constant_base`] or
    /// [`Tape::constant_shared`] leaf) and this leaf as `W` reads the planes
    /// in place (two real products, `A·x` and `A·v`, large shapes only); any
    /// other read writes the dual value into the tape first (a copy, once).
    /// The bits are those of [`Tape::tangent_leaf_with`] filled with x + v ε.
    ///
    /// ```
    /// use tape::kernels::with_plane_sources;
    /// use tape::{Dual, Tape, Tensor};
    /// // f(w) = Σ (a·w)² for a constant a [64, 40], w [40, 30], direction v:
    /// // H·v = 2 aᵀa·v, the same bits as from a leaf written with w + v ε.
    /// let a = Tensor::new(&[64, 40], (0..2560).map(|i| (i % 9) as f64 * 0.1 - 0.4).collect());
    /// let w: Vec<f64> = (0..1200).map(|i| (i % 5) as f64 * 0.2 - 0.3).collect();
    /// let v: Vec<f64> = (0..1200).map(|i| (i % 7) as f64 * 0.1 - 0.2).collect();
    /// let hv = |source: bool| {
    ///     let t = Tape::<Dual<f64>>::new();
    ///     let leaf = if source {
    ///         t.tangent_leaf_source([40, 30])
    ///     } else {
    ///         t.tangent_leaf_with([40, 30], |o| tape::kernels::zip_duals(&w, &v, o))
    ///     };
    ///     let run = || {
    ///         t.backward(t.constant_base(&a).matmul(leaf).square().sum());
    ///         t.grad(leaf).data().iter().map(|g| g.d).collect::<Vec<f64>>()
    ///     };
    ///     with_plane_sources(t.id(), &[(leaf.index(), &w[..], &v[..])], run)
    /// };
    /// assert_eq!(hv(true), hv(false));
    /// ```
    ///
    /// # Panics
    /// A read of its value outside the registration panics (the planes are
    /// the caller's, borrowed only while they are registered).
    pub fn tangent_leaf_source(&self, shape: impl Into<Shape>) -> Var<'_, Dual<T>> {
        let v = self.record_leaf_as(shape.into(), true, false, |_| {});
        let mut inner = self.inner.borrow_mut();
        let node = inner.nodes.last_mut().expect("just recorded");
        node.pending = true;
        node.source = true;
        v
    }
}

impl<'t, T: Real> Var<'t, T> {
    /// The tape this variable lives on.
    pub fn tape(&self) -> &'t Tape<T> {
        self.tape
    }
    /// The node index on its tape.
    pub fn index(&self) -> usize {
        self.idx as usize
    }
    /// The shape.
    pub fn shape(&self) -> Shape {
        self.tape.node_shape(self.idx)
    }
    /// A copy of the value.
    pub fn value(&self) -> Tensor<T> {
        self.tape.value(*self)
    }
    /// The single element of a one-element variable.
    ///
    /// # Panics
    /// If the variable has more than one element.
    #[track_caller]
    pub fn item(&self) -> T {
        let v = self.tape.value_ref(*self);
        if v.len() != 1 {
            shape_panic(
                "item",
                &[("variable", self.shape())],
                format_args!("expected one element"),
            );
        }
        v[0]
    }
    /// Reverse sweep from this scalar (see [`Tape::backward`]).
    #[track_caller]
    pub fn backward(&self) {
        self.tape.backward(*self)
    }
    /// The adjoint from the last sweep (see [`Tape::grad`]).
    #[track_caller]
    pub fn grad(&self) -> Tensor<T> {
        self.tape.grad(*self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small network whose ops overwrite their outputs (matmul, elementwise)
    /// and accumulate into them (sum), with a broadcast bias.
    fn loss_and_grads(
        t: &Tape<f64>,
        w: &Tensor<f64>,
        b: &Tensor<f64>,
    ) -> (f64, Tensor<f64>, Tensor<f64>) {
        let x = t.constant(&Tensor::from_fn(&[3, 4], |i| (i as f64 * 0.3).sin()));
        let (wv, bv) = (t.var(w), t.var(b));
        let h = (x.matmul(wv) + bv).relu();
        let y = (h * h).sum() + h.exp().mean_axes(&[0], false).sum();
        t.backward(y);
        (y.item(), t.grad(wv), t.grad(bv))
    }

    /// Values and adjoints reuse stale memory of earlier recordings (no zero-fill
    /// for overwriting rules, lazy zeroing of adjoints). A cleared tape that first
    /// recorded something else, with other values (NaN included), must give
    /// bit-for-bit the numbers of a fresh tape.
    #[test]
    fn a_reused_tape_gives_the_numbers_of_a_fresh_one() {
        let w = Tensor::from_fn(&[4, 2], |i| (i as f64 * 0.7).cos());
        let b = Tensor::from_fn(&[2], |i| i as f64 * 0.1 - 0.05);
        let fresh = loss_and_grads(&Tape::new(), &w, &b);
        let mut t = Tape::<f64>::new();
        // Fill the arenas with garbage: a bigger graph holding NaNs and infinities.
        let junk = t.var(&Tensor::from_fn(&[64], |i| {
            if i % 3 == 0 {
                f64::NAN
            } else {
                f64::INFINITY
            }
        }));
        let j2 = (junk * junk).exp();
        t.backward(j2.sum());
        t.clear();
        let reused = loss_and_grads(&t, &w, &b);
        assert_eq!(fresh.0.to_bits(), reused.0.to_bits());
        assert_eq!(fresh.1, reused.1);
        assert_eq!(fresh.2, reused.2);
        // And again on the same tape, after a sweep of the same graph.
        t.clear();
        let again = loss_and_grads(&t, &w, &b);
        assert_eq!(fresh.1, again.1);
        assert_eq!(fresh.2, again.2);
    }

    /// An input no adjoint reaches reads as zero, even over stale memory.
    #[test]
    fn untouched_adjoints_read_as_zero_after_reuse() {
        let mut t = Tape::<f64>::new();
        let a = t.var(&Tensor::vector(vec![1.0, 2.0]));
        t.backward((a * a).sum());
        assert_eq!(t.grad(a).data(), &[2.0, 4.0]);
        t.clear();
        let a = t.var(&Tensor::vector(vec![1.0, 2.0]));
        let b = t.var(&Tensor::vector(vec![3.0, 4.0]));
        t.backward(b.sum());
        assert_eq!(t.grad(a).data(), &[0.0, 0.0]);
        assert_eq!(t.grad(b).data(), &[1.0, 1.0]);
    }
}
