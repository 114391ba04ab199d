//! Plane sources: caller-owned primal and tangent planes that a dual leaf
//! reads in place.
//!
//! An HVP-only pass records each weight as a dual leaf x + v ε. Written into
//! the tape's arena, that leaf is a copy of both of the caller's arrays,
//! interleaved (`zip_duals`: for an MLP's first layer, 784 × 256, 1.6 MB of
//! duals written and read once by x·W). A *source leaf*
//! ([`crate::Tape::tangent_leaf_source`]) is recorded without values; while
//! [`with_plane_sources`] has the caller's two planes registered for it, a
//! product with a real left operand (the first layer's `x·W`) reads them
//! where they are ([`real_left_source_gemm`]: one real product
//! `x·[W.v | W.d]`, no dual copy), and any other op that reads the leaf writes
//! its dual value into the arena first ([`zip_source`], the copy of
//! before, once).
//!
//! The registry is per thread and keyed by tape id and node index; it holds
//! entries only while [`with_plane_sources`] runs its closure (a pass that
//! records and sweeps on this thread).

use std::any::TypeId;
use std::cell::RefCell;

use super::dual::{split_product, Right};
use super::real_left::{same_type, same_type_mut};
use super::{MatMut, MatRef, Parts, Prim};
use crate::real::{Dual, Real};

/// One registered pair of planes: the leaf it stands for, its element type,
/// and the caller's two `&[F]` as pointers and a length.
struct Entry {
    tape: u32,
    node: usize,
    ty: TypeId,
    v: *const (),
    d: *const (),
    len: usize,
}

/// The entries, and where the innermost [`with_plane_sources`] call's start.
struct Registry {
    entries: Vec<Entry>,
    start: usize,
}

thread_local! {
    static SOURCES: RefCell<Registry> = const {
        RefCell::new(Registry { entries: Vec::new(), start: 0 })
    };
}

/// A registered source: `(node index, primal plane, tangent plane)`.
pub type PlaneSource<'a, F> = (usize, &'a [F], &'a [F]);

/// Runs `f` with `sources` (`(node index, primal plane, tangent plane)` of
/// tape `tape`, [`crate::Tape::id`]) registered on this thread: the source
/// leaves of those nodes ([`crate::Tape::tangent_leaf_source`]) read their
/// values from the planes while `f` runs. Calls nest (an inner call sees
/// only its own sources). Allocates only when the registry grows.
///
/// ```
/// use tape::kernels::with_plane_sources;
/// use tape::{Dual, Tape, Tensor};
/// let t = Tape::<Dual<f64>>::new();
/// let (w, v) = ([1.0, 2.0], [0.5, -1.0]);
/// let leaf = t.tangent_leaf_source([2]);
/// with_plane_sources(t.id(), &[(leaf.index(), &w[..], &v[..])], || {
///     assert_eq!(t.value(leaf).data(), &[Dual::new(1.0, 0.5), Dual::new(2.0, -1.0)]);
/// });
/// ```
///
/// # Panics
/// If a primal and a tangent plane differ in length.
#[track_caller]
pub fn with_plane_sources<F: 'static, R>(
    tape: u32,
    sources: &[PlaneSource<'_, F>],
    f: impl FnOnce() -> R,
) -> R {
    for (node, v, d) in sources {
        assert_eq!(
            v.len(),
            d.len(),
            "with_plane_sources: node {node}: primal plane of {} elements, tangent plane of {}",
            v.len(),
            d.len()
        );
    }
    /// Removes this call's entries (also on unwind) and restores the outer start.
    struct Scope(usize);
    impl Drop for Scope {
        fn drop(&mut self) {
            SOURCES.with(|s| {
                let mut s = s.borrow_mut();
                let start = s.start;
                s.entries.truncate(start);
                s.start = self.0;
            });
        }
    }
    let outer = SOURCES.with(|s| {
        let mut s = s.borrow_mut();
        let outer = s.start;
        s.start = s.entries.len();
        for (node, v, d) in sources {
            s.entries.push(Entry {
                tape,
                node: *node,
                ty: TypeId::of::<F>(),
                v: v.as_ptr().cast(),
                d: d.as_ptr().cast(),
                len: v.len(),
            });
        }
        outer
    });
    let _scope = Scope(outer);
    f()
}

/// Calls `read(v, d)` with the planes registered for node `node` of tape
/// `tape` if they are of element type `F` and length `len`; `None` if there
/// are none.
fn read_source<F: 'static, R>(
    tape: u32,
    node: usize,
    len: usize,
    read: impl FnOnce(&[F], &[F]) -> R,
) -> Option<R> {
    let (v, d) = SOURCES.with(|s| {
        let s = s.borrow();
        let e = s.entries[s.start..].iter().find(|e| {
            e.tape == tape && e.node == node && e.ty == TypeId::of::<F>() && e.len == len
        })?;
        Some((e.v.cast::<F>(), e.d.cast::<F>()))
    })?;
    // SAFETY: `v`, `d` and `len` come from two `&[F]` (the type checked by
    // `TypeId` above) that `with_plane_sources` borrows for as long as its
    // entry exists: entries are removed before it returns or unwinds, and
    // the registry is thread-local, so this runs inside those borrows. The
    // references are shared and end with `read`.
    let (v, d) = unsafe {
        (
            std::slice::from_raw_parts(v, len),
            std::slice::from_raw_parts(d, len),
        )
    };
    Some(read(v, d))
}

/// Writes the dual value `out[i] = v[i] + d[i] ε` of the source leaf `node`
/// of tape `tape` from its registered planes (as [`super::zip_duals`]);
/// `false` (and nothing written) if `T` is not `Dual<f32>`/`Dual<f64>` or
/// no planes of `out`'s length are registered.
pub(crate) fn zip_source<T: Real>(tape: u32, node: usize, out: &mut [T]) -> bool {
    zip_as::<T, f32>(tape, node, out) || zip_as::<T, f64>(tape, node, out)
}

/// [`zip_source`] if `T` is `Dual<F>`.
fn zip_as<T: Real, F: Prim>(tape: u32, node: usize, out: &mut [T]) -> bool {
    if TypeId::of::<T>() != TypeId::of::<Dual<F>>() {
        return false;
    }
    let out = same_type_mut::<T, Dual<F>>(out);
    read_source::<F, ()>(tape, node, out.len(), |v, d| super::zip_duals(v, d, out)).is_some()
}

/// Whether an `m × k` real left operand times a `k × n` source leaf is read
/// in place ([`real_left_source_gemm`]): the shapes that
/// [`super::real_left_gemm`] runs as one large real product (a small one
/// runs the small kernels on the interleaved duals, so its leaf is written).
pub(crate) fn reads_source(m: usize, k: usize, n: usize) -> bool {
    super::real_left_ok(m, k, n) && !super::is_small(m, k, n)
}

/// The forward product `C = α·A·W` of a real `A` (`m × k`, `T::Base`) and
/// the source leaf `node` of tape `tape` (`W`, `k × n`), into the dense
/// row-major dual `C`: `[C.v | C.d] = α A·[W.v | W.d]`, one real product on
/// the registered planes side by side (`A` packed once), into two planes
/// of this thread's dual scratch, interleaved into `C` by one pass. The same
/// bits as [`super::real_left_gemm`] on the interleaved leaf (`β = 0`,
/// `primal`), which runs one real product on `[W.v | W.d]` with the parts in
/// alternate columns: in the packed kernels an element's value does not
/// depend on its column's place (`packed.rs`). Returns `false` (nothing
/// done) if `T` is not `Dual<f32>`/`Dual<f64>`, the shape is not one of
/// [`reads_source`], or no planes of `k × n` elements are registered.
///
/// # Panics
/// If `C` is not `m × n` for `n = c.len() / m`, or `k·n` is not `W`'s length.
#[track_caller]
pub(crate) fn real_left_source_gemm<T: Real>(
    tape: u32,
    node: usize,
    alpha: T::Base,
    a: MatRef<'_, T::Base>,
    c: &mut [T],
) -> bool {
    source_gemm_as::<T, f32>(tape, node, alpha, a, c)
        || source_gemm_as::<T, f64>(tape, node, alpha, a, c)
}

/// [`real_left_source_gemm`] if `T` is `Dual<F>`.
fn source_gemm_as<T: Real, F: Prim>(
    tape: u32,
    node: usize,
    alpha: T::Base,
    a: MatRef<'_, T::Base>,
    c: &mut [T],
) -> bool {
    if TypeId::of::<T>() != TypeId::of::<Dual<F>>() {
        return false;
    }
    let alpha = same_type::<T::Base, F>(std::slice::from_ref(&alpha))[0];
    let a = MatRef::new(same_type::<_, F>(a.data), a.rows, a.cols, a.rs, a.cs);
    let c = same_type_mut::<T, Dual<F>>(c);
    let (m, k) = (a.rows, a.cols);
    let n = c.len().checked_div(m).unwrap_or(0);
    assert_eq!(
        c.len(),
        m * n,
        "real_left_source_gemm: output of {} elements for {m} rows",
        c.len()
    );
    if !reads_source(m, k, n) {
        return false;
    }
    read_source::<F, ()>(tape, node, k * n, |v, d| {
        // One product `A·[W.v | W.d]` (A packed once, one hand-off) into
        // contiguous planes side by side (the packed kernels' direct tile
        // stores; a strided part of `C` would go through a tile copy), then
        // one wide pass interleaves them by rows.
        F::with_scratch(|s| {
            if s.len() < 2 * m * n {
                s.resize(2 * m * n, F::zero());
            }
            let vd = &mut s[..2 * m * n];
            let w = [v, d].map(|w| MatRef::row_major(w, k, n));
            let planes = MatMut::row_major(vd, m, 2 * n);
            super::large::real_side_by_side(alpha, a, w, F::zero(), planes);
            super::dual::zip_rows(vd, n, c);
        });
    })
    .is_some()
}

/// Whether a dual `m × k` left operand times a `k × n` source leaf `W` is
/// read in place ([`dual_source_gemm`]) in the forward product `A·W` and in
/// the adjoint product `ḡA = ḡ·Wᵀ` (`m × n` by `n × k`): both large (the
/// small kernels read interleaved duals), and `n ≥ 2` (`Wᵀ`'s layout).
pub(crate) fn reads_source_dual(m: usize, k: usize, n: usize) -> bool {
    m > 0 && k > 0 && n >= 2 && !super::is_small(m, k, n) && !super::is_small(m, n, k)
}

/// A dual product with the source leaf `node` of tape `tape` as its right
/// operand: `C ← α·A·W + β·C` (`transposed = false`; `A` `m × k`, `W`
/// `k × n`) or `C ← α·A·Wᵀ + β·C` (`transposed`; `A` `m × n`, `C` `m × k`),
/// the whole product, or its tangent part alone if `!primal` (as
/// [`super::tangent_gemm`]). The same products, with the same bits, as the
/// interleaved leaf through [`super::gemm`] (`kernels/dual.rs`: the planes
/// are read in place as the two blocks of the product's split operand,
/// the values the split of the interleaved leaf would have put there). `C` is dense row-major. Returns
/// `false` (nothing done) if `T` is not `Dual<f32>`/`Dual<f64>`, the shape
/// is not one of [`reads_source_dual`], or no planes of `W`'s size are
/// registered.
pub(crate) fn dual_source_gemm<T: Real>(
    (tape, node): (u32, usize),
    (alpha, beta): (T::Base, T::Base),
    a: MatRef<'_, T>,
    transposed: bool,
    c: &mut [T],
    primal: bool,
) -> bool {
    let p = DualSource {
        tape,
        node,
        alpha,
        beta,
        transposed,
        primal,
    };
    p.run::<T, f32>(a, c) || p.run::<T, f64>(a, c)
}

/// The arguments of [`dual_source_gemm`] but the operands.
#[derive(Clone, Copy)]
struct DualSource<B> {
    tape: u32,
    node: usize,
    alpha: B,
    beta: B,
    transposed: bool,
    primal: bool,
}

impl<B: 'static + Copy> DualSource<B> {
    /// [`dual_source_gemm`] if `T` is `Dual<F>` (whose base `B` is `F`).
    fn run<T: Real<Base = B>, F: Prim>(self, a: MatRef<'_, T>, c: &mut [T]) -> bool {
        let DualSource {
            tape,
            node,
            alpha,
            beta,
            transposed,
            primal,
        } = self;
        if TypeId::of::<T>() != TypeId::of::<Dual<F>>() {
            return false;
        }
        let scalars = [alpha, beta];
        let [alpha, beta] = [0, 1].map(|i| same_type::<T::Base, F>(&scalars)[i]);
        let a = MatRef::new(same_type::<_, Dual<F>>(a.data), a.rows, a.cols, a.rs, a.cs);
        let c = same_type_mut::<T, Dual<F>>(c);
        let m = a.rows;
        let cols = c.len().checked_div(m).unwrap_or(0);
        assert_eq!(
            c.len(),
            m * cols,
            "dual_source_gemm: output of {} elements for {m} rows",
            c.len()
        );
        // W is k × n: A's columns by C's (A·W), or C's by A's (A·Wᵀ).
        let (k, n) = if transposed {
            (cols, a.cols)
        } else {
            (a.cols, cols)
        };
        if !reads_source_dual(m, k, n) {
            return false;
        }
        read_source::<F, ()>(tape, node, k * n, |v, d| {
            let w = Right::Planes {
                v,
                d,
                rows: k,
                cols: n,
                transposed,
            };
            let parts = if primal { Parts::Both } else { Parts::Tangent };
            let c = MatMut::row_major(c, m, cols);
            F::with_scratch(|s| split_product(s, alpha, a, w, beta, c, parts));
        })
        .is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Product;

    /// Planes are found by tape, node, type and length, and only inside
    /// their scope; a nested scope sees only its own.
    #[test]
    fn a_source_is_found_only_inside_its_scope() {
        let (v, d) = ([1.0_f32, 2.0], [3.0_f32, 4.0]);
        let (v64, d64) = ([5.0_f64], [6.0_f64]);
        let get = |tape, node, len| read_source::<f32, _>(tape, node, len, |v, d| (v[0], d[0]));
        with_plane_sources(9, &[(2, &v[..], &d[..])], || {
            assert_eq!(get(9, 2, 2), Some((1.0, 3.0)));
            assert_eq!(get(8, 2, 2), None, "wrong tape");
            assert_eq!(get(9, 3, 2), None, "wrong node");
            assert_eq!(get(9, 2, 3), None, "wrong length");
            assert!(
                read_source::<f64, _>(9, 2, 2, |_, _| ()).is_none(),
                "wrong type"
            );
            with_plane_sources(9, &[(2, &v64[..], &d64[..])], || {
                assert_eq!(get(9, 2, 2), None, "outer source seen inside");
                assert_eq!(
                    read_source::<f64, _>(9, 2, 1, |v, d| v[0] + d[0]),
                    Some(11.0)
                );
            });
            assert_eq!(get(9, 2, 2), Some((1.0, 3.0)));
        });
        assert_eq!(get(9, 2, 2), None, "left registered");
    }

    /// `A·[B_l | B_r]` with the blocks read where they are
    /// (`large::real_side_by_side`, the first layer's `x·[W.v | W.d]`)
    /// gives the bits of the same `B` joined in one buffer, for every
    /// family: both layouts of `B`, β = 0 and β = 1, products too small to
    /// cut, cut along `C`'s columns with `n_l` on a chunk's edge (the MLP's
    /// 64 × 784 · 784 × (256 + 256)) or inside a chunk (100 + 300: that
    /// chunk runs as two products), and cut along `C`'s rows (every chunk
    /// across `n_l`). Each block sits in a buffer of its own padded with
    /// NaN, so a read outside it shows.
    #[test]
    fn side_by_side_blocks_give_the_bits_of_one_buffer() {
        use super::super::{large, with_family, Family};
        let wave = |n: usize, s: f32| -> Vec<f32> {
            (0..n).map(|i| (i as f32 * 0.731 + s).sin() * 0.5).collect()
        };
        let shapes = [
            (7, 20, 5, 9),
            (64, 784, 256, 256),
            (64, 784, 100, 300),
            (300, 200, 40, 60),
            (33, 300, 1, 90),
        ];
        let families = Family::ALL.into_iter().filter(|f| f.is_available());
        for (family, (m, k, nl, nr)) in families.flat_map(|f| shapes.map(|s| (f, s))) {
            let n = nl + nr;
            for (rows, beta) in [(true, 0.0), (false, 0.0), (true, 1.0), (false, 1.0)] {
                let (a, b, c0) = (wave(m * k, 0.1), wave(k * n, 0.2), wave(m * n, 0.3));
                // Element (l, j) of B or of a block, with the strides of
                // the joined k × n B: row-major, or column-major.
                let (rs, cs) = if rows { (n, 1) } else { (1, k) };
                // Columns `from..from + w` of B in a buffer of their own
                // (NaN elsewhere).
                let block = |from: usize, w: usize| -> Vec<f32> {
                    let mut x = vec![f32::NAN; k * n];
                    for (l, j) in (0..k).flat_map(|l| (0..w).map(move |j| (l, j))) {
                        x[l * rs + j * cs] = b[l * rs + (from + j) * cs];
                    }
                    x
                };
                let (lb, rb) = (block(0, nl), block(nl, nr));
                let (mut c1, mut c2) = (c0.clone(), c0.clone());
                with_family(family, || {
                    let am = MatRef::row_major(&a, m, k);
                    let c = MatMut::row_major(&mut c1, m, n);
                    large::real(Product::new(
                        1.0,
                        am,
                        MatRef::new(&b, k, n, rs, cs),
                        beta,
                        c,
                    ));
                    let blocks = [(&lb, nl), (&rb, nr)].map(|(x, w)| MatRef::new(x, k, w, rs, cs));
                    let c = MatMut::row_major(&mut c2, m, n);
                    large::real_side_by_side(1.0, am, blocks, beta, c);
                });
                let case = format!("{family:?} [{m}, {k}]·[{k}, {nl} | {nr}] rows {rows} β {beta}");
                let bits = |c: &[f32]| c.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&c1), bits(&c2), "{case}");
            }
        }
    }

    /// The blocks must have `A`'s columns as rows and fill `C`'s columns.
    #[test]
    #[should_panic(expected = "real_side_by_side: lhs [2, 5], rhs [5, 3] | [5, 3]")]
    fn side_by_side_blocks_of_the_wrong_width_panic_with_shapes() {
        let (a, b) = (vec![0.0_f32; 10], vec![0.0_f32; 15]);
        let mut c = vec![0.0_f32; 10];
        let bm = MatRef::row_major(&b, 5, 3);
        super::super::large::real_side_by_side(
            1.0,
            MatRef::row_major(&a, 2, 5),
            [bm, bm],
            0.0,
            MatMut::row_major(&mut c, 2, 5),
        );
    }

    /// A source leaf's value is written from its planes inside the scope
    /// (bit for bit `zip_duals`), and a first read outside it panics instead
    /// of reading stale memory.
    #[test]
    fn a_source_leaf_is_read_inside_its_scope_only() {
        use crate::Tape;
        let (w, v) = ([1.5_f32, -2.0, 0.25], [-0.0_f32, 3.0, f32::NAN]);
        let t = Tape::<Dual<f32>>::new();
        let leaf = t.tangent_leaf_source([3]);
        let got = with_plane_sources(t.id(), &[(leaf.index(), &w[..], &v[..])], || {
            (leaf + leaf).value()
        });
        let mut want = [Dual::new(0.0, 0.0); 3];
        super::super::zip_duals(&w, &v, &mut want);
        let twice = want.iter().map(|&x| x + x);
        for (g, w) in got.data().iter().zip(twice) {
            assert_eq!(
                (g.v.to_bits(), g.d.to_bits()),
                (w.v.to_bits(), w.d.to_bits())
            );
        }
        let late = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let t = Tape::<Dual<f32>>::new();
            let leaf = t.tangent_leaf_source([3]);
            with_plane_sources(t.id(), &[(leaf.index(), &w[..], &v[..])], || ());
            t.value(leaf)
        }));
        let msg = late.expect_err("read after the scope");
        let msg = msg.downcast_ref::<String>().expect("a formatted message");
        assert!(msg.contains("read outside with_plane_sources"), "{msg}");
    }
}
