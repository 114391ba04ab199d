//! The one owner of a sweep's inner states: the buffers a plan names, the
//! spare buffers kept for reuse, and the meters of what is held.
//!
//! A [`Plan`](super::plan::Plan) numbers its buffers 0..b. The store maps a
//! buffer id to a held [`State`]; taking a buffer reuses the tensors of a
//! spare state (so a warm sweep allocates nothing), and freeing one hands its
//! tensors back. The meters count held states and their bytes and keep their
//! peaks: the `states_peak` and `state_bytes_peak` of [`crate::Stats`].

use tape::{Float, Shape, Tensor};

use crate::engine::step::State;

/// Held states by buffer id, spare states, and the meters.
#[derive(Debug, Default)]
pub(crate) struct StateStore<F: Float> {
    /// `held[b]` is the state in buffer b, if held.
    held: Vec<Option<State<F>>>,
    /// Tensors of states no longer held, reused by the next ones.
    spare: Vec<State<F>>,
    live: usize,
    live_bytes: usize,
    peak: usize,
    peak_bytes: usize,
}

impl<F: Float> StateStore<F> {
    /// Empties the store for a new sweep: held states become spares and the
    /// meters restart at zero.
    pub(crate) fn reset(&mut self) {
        for s in self.held.iter_mut().filter_map(Option::take) {
            self.spare.push(s);
        }
        self.live = 0;
        self.live_bytes = 0;
        self.peak = 0;
        self.peak_bytes = 0;
    }

    /// A free buffer's state to write into (tensors of a spare state, of
    /// unspecified shapes and values, or empty), to be handed back with
    /// [`StateStore::put`].
    ///
    /// # Panics
    /// If buffer `b` is held (a plan that writes over a held state is wrong).
    #[track_caller]
    pub(crate) fn take_free(&mut self, b: usize) -> State<F> {
        if self.held.len() <= b {
            self.held.resize_with(b + 1, || None);
        }
        assert!(
            self.held[b].is_none(),
            "state store: buffer {b} is already held"
        );
        self.spare.pop().unwrap_or(State {
            phi: Vec::new(),
            extra: Vec::new(),
        })
    }

    /// Holds `s` in buffer `b` (free), counting it in the meters.
    pub(crate) fn put(&mut self, b: usize, s: State<F>) {
        self.live += 1;
        self.live_bytes += s.bytes();
        self.peak = self.peak.max(self.live);
        self.peak_bytes = self.peak_bytes.max(self.live_bytes);
        self.held[b] = Some(s);
    }

    /// Buffer `b`'s held state.
    ///
    /// # Panics
    /// If buffer `b` is not held.
    #[track_caller]
    pub(crate) fn get(&self, b: usize) -> &State<F> {
        self.held
            .get(b)
            .and_then(Option::as_ref)
            .unwrap_or_else(|| panic!("state store: buffer {b} is not held"))
    }

    /// Buffer `b`'s held state, to advance in place (the meters are unchanged:
    /// a step keeps the state's shapes).
    ///
    /// # Panics
    /// If buffer `b` is not held.
    #[track_caller]
    pub(crate) fn get_mut(&mut self, b: usize) -> &mut State<F> {
        self.held
            .get_mut(b)
            .and_then(Option::as_mut)
            .unwrap_or_else(|| panic!("state store: buffer {b} is not held"))
    }

    /// Holds in the free buffer `to` a copy of buffer `from`'s state.
    ///
    /// # Panics
    /// If `from` is not held or `to` is.
    #[track_caller]
    pub(crate) fn copy(&mut self, from: usize, to: usize) {
        let mut c = self.take_free(to);
        let s = self.get(from);
        copy_tensors(&mut c.phi, &s.phi);
        copy_tensors(&mut c.extra, &s.extra);
        self.put(to, c);
    }

    /// Releases buffer `b`: its tensors become spares.
    ///
    /// # Panics
    /// If buffer `b` is not held.
    #[track_caller]
    pub(crate) fn free(&mut self, b: usize) {
        let s = self
            .held
            .get_mut(b)
            .and_then(Option::take)
            .unwrap_or_else(|| panic!("state store: freeing buffer {b}, which is not held"));
        self.live -= 1;
        self.live_bytes -= s.bytes();
        self.spare.push(s);
    }

    /// Held states at the peak.
    pub(crate) fn peak(&self) -> usize {
        self.peak
    }

    /// Bytes of held states at the peak.
    pub(crate) fn peak_bytes(&self) -> usize {
        self.peak_bytes
    }

    /// States held now.
    pub(crate) fn live(&self) -> usize {
        self.live
    }
}

/// Makes `dst` a copy of `src`, reusing `dst`'s tensors (and their
/// allocations, whatever their shapes: [`refit`]).
pub(crate) fn copy_tensors<F: Float>(dst: &mut Vec<Tensor<F>>, src: &[Tensor<F>]) {
    dst.truncate(src.len());
    for (d, s) in dst.iter_mut().zip(src) {
        refit(d, s.shape());
        d.data_mut().copy_from_slice(s.data());
    }
    let n = dst.len();
    dst.extend_from_slice(&src[n..]);
}

/// Gives `t` the shape `shape`, keeping its allocation: nothing happens when
/// the shape is already `shape`; otherwise the values are unspecified (the
/// caller overwrites them), and memory is allocated only if `t` never held
/// as many elements. A thread that sweeps chunks of different sizes in turn
/// (a meta-batch of 25 tasks in chunks of 13 and 12) then reuses its states
/// and cotangents instead of freeing and allocating them on every sweep.
pub(crate) fn refit<F: Float>(t: &mut Tensor<F>, shape: Shape) {
    if t.shape() == shape {
        return;
    }
    // An empty tensor in its place allocates nothing.
    let mut data = std::mem::replace(t, Tensor::zeros(Shape::new(&[0]))).into_data();
    data.resize(shape.numel(), F::zero());
    *t = Tensor::new(shape, data);
}
