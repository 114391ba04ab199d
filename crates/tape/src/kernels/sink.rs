//! Tangent sinks: caller-owned real buffers that take an HVP-only leaf's
//! H·v block straight from the product that forms it.
//!
//! In an HVP-only pass ([`crate::Tape::tangent_leaf_with`]) a weight `W` of
//! `C = A·W`, with `A` real data, gets the adjoint tangent ḡW.d = Aᵀ·ḡC.d
//! from one real product into a plane (`real_left.rs`). Without a sink that
//! plane is interleaved into the dual adjoint (`(0, d)` pairs, twice the
//! bytes) and the caller copies the tangents out again: two passes over the
//! largest array of an MLP. With a sink registered for `W`'s node, the
//! product writes the caller's buffer itself, and `W`'s dual adjoint is not
//! touched (it reads as absent after the sweep).
//!
//! A sink is taken at most once. If another rule also reaches the leaf, that
//! contribution lands in the dual adjoint as usual, so the caller sees both a
//! taken sink and an adjoint: it must then discard the sink's contents and
//! run the pass without sinks (the sum's order is the tape's, so only that
//! pass gives the documented bits). `hvp::Workspace::hvp_only_into` does so.
//!
//! The registry is per thread and holds entries only while
//! [`with_tangent_sinks`] runs its closure (a backward sweep on this thread:
//! the rules run on the caller; only product chunks go to other threads).

use std::any::TypeId;
use std::cell::RefCell;

/// One registered buffer: the node it stands for, its element type, and the
/// caller's `&mut [F]` as a pointer and a length.
struct Entry {
    node: usize,
    ty: TypeId,
    ptr: *mut (),
    len: usize,
    taken: bool,
}

/// The entries, and where the innermost [`with_tangent_sinks`] call's start.
struct Registry {
    entries: Vec<Entry>,
    start: usize,
}

thread_local! {
    static SINKS: RefCell<Registry> = const {
        RefCell::new(Registry { entries: Vec::new(), start: 0 })
    };
}

/// Runs `f` with `sinks` (`(node index, buffer)`) registered on this thread,
/// then writes into `taken[i]` whether sink `i` was written by a product.
/// A taken buffer holds its node's whole adjoint tangent (overwritten, every
/// element); an untaken one is left as it was. Calls nest (an inner call sees
/// only its own sinks). Allocates only when the registry grows.
///
/// ```
/// use tape::kernels::with_tangent_sinks;
/// use tape::{Dual, Tape, Tensor};
/// // f(w) = Σ (x·w)² for a constant x [40, 50] and w [50, 40]: H·v = 2 xᵀx·v,
/// // the same bits through a sink as through the dual adjoint.
/// let x = Tensor::new(&[40, 50], (0..2000).map(|i| (i % 7) as f64 * 0.1 - 0.3).collect());
/// let hv = |sink: bool| {
///     let t = Tape::<Dual<f64>>::new();
///     let w = t.tangent_leaf_with([50, 40], |o| o.fill(Dual::new(0.5, 1.0)));
///     let out = t.constant_base(&x).matmul(w).square().sum();
///     if !sink {
///         t.backward(out);
///         return t.grad(w).data().iter().map(|g| g.d).collect();
///     }
///     let (mut hv, mut taken) = (vec![f64::NAN; 50 * 40], [false]);
///     with_tangent_sinks(&mut [(w.index(), &mut hv[..])], &mut taken, || t.backward(out));
///     assert!(taken[0] && t.grad_ref(w).is_none());
///     hv
/// };
/// assert_eq!(hv(true), hv(false));
/// ```
///
/// # Panics
/// If `taken` is not as long as `sinks`.
#[track_caller]
pub fn with_tangent_sinks<F: 'static, R>(
    sinks: &mut [(usize, &mut [F])],
    taken: &mut [bool],
    f: impl FnOnce() -> R,
) -> R {
    assert_eq!(
        sinks.len(),
        taken.len(),
        "with_tangent_sinks: {} sinks but {} flags",
        sinks.len(),
        taken.len()
    );
    /// Removes this call's entries (also on unwind) and restores the outer start.
    struct Scope(usize);
    impl Drop for Scope {
        fn drop(&mut self) {
            SINKS.with(|s| {
                let mut s = s.borrow_mut();
                let start = s.start;
                s.entries.truncate(start);
                s.start = self.0;
            });
        }
    }
    let outer = SINKS.with(|s| {
        let mut s = s.borrow_mut();
        let outer = s.start;
        s.start = s.entries.len();
        for (node, buf) in sinks.iter_mut() {
            s.entries.push(Entry {
                node: *node,
                ty: TypeId::of::<F>(),
                ptr: buf.as_mut_ptr().cast(),
                len: buf.len(),
                taken: false,
            });
        }
        outer
    });
    let scope = Scope(outer);
    let r = f();
    SINKS.with(|s| {
        let s = s.borrow();
        for (t, e) in taken.iter_mut().zip(&s.entries[s.start..]) {
            *t = e.taken;
        }
    });
    drop(scope);
    r
}

/// Calls `write` with the sink of `node` if one of element type `F` and
/// length `len` is registered and not yet taken (then marks it taken and
/// returns `true`; `write` must overwrite every element); else `false`.
pub(crate) fn take_sink<F: 'static>(node: usize, len: usize, write: impl FnOnce(&mut [F])) -> bool {
    let hit = SINKS.with(|s| {
        let mut s = s.borrow_mut();
        let start = s.start;
        let e = s.entries[start..]
            .iter_mut()
            .find(|e| e.node == node && e.ty == TypeId::of::<F>() && e.len == len && !e.taken)?;
        e.taken = true;
        Some(e.ptr.cast::<F>())
    });
    let Some(ptr) = hit else {
        return false;
    };
    // SAFETY: `ptr` and `len` come from a `&mut [F]` (the type checked by
    // `TypeId` above) that `with_tangent_sinks` borrows for as long as its
    // entry exists: entries are removed before it returns or unwinds, and
    // the registry is thread-local, so this runs inside that borrow. The
    // `taken` flag hands each entry out once, so this is the only live
    // reference to the buffer, and it ends with `write`.
    let out = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
    write(out);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink is found by node, type and length, handed out once, and gone
    /// after its scope; a nested scope sees only its own sinks.
    #[test]
    fn a_sink_is_taken_once_and_only_inside_its_scope() {
        let (mut a, mut b) = (vec![0.0_f32; 4], vec![0.0_f64; 3]);
        let (mut outer, mut inner) = ([false], [false]);
        with_tangent_sinks(&mut [(7, &mut a[..])], &mut outer, || {
            assert!(!take_sink::<f64>(7, 4, |_| ()), "wrong type");
            assert!(!take_sink::<f32>(7, 5, |_| ()), "wrong length");
            assert!(!take_sink::<f32>(6, 4, |_| ()), "wrong node");
            with_tangent_sinks(&mut [(7, &mut b[..])], &mut inner, || {
                assert!(!take_sink::<f32>(7, 4, |_| ()), "outer sink seen inside");
                assert!(take_sink::<f64>(7, 3, |o| o.fill(2.0)));
            });
            assert!(take_sink::<f32>(7, 4, |o| o.fill(1.0)));
            assert!(!take_sink::<f32>(7, 4, |o| o.fill(3.0)), "taken twice");
        });
        assert!(!take_sink::<f32>(7, 4, |_| ()), "left registered");
        assert_eq!((outer, inner), ([true], [true]));
        assert_eq!((a, b), (vec![1.0; 4], vec![2.0; 3]));
    }
}
