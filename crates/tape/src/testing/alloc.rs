//! Counting heap allocations, to check that a computation reuses its buffers.
//!
//! Install [`CountingAllocator`] as the global allocator of a test binary (or
//! a benchmark), then measure a closure with [`count_allocations`]:
//!
//! ```
//! use tape::testing::{count_allocations, CountingAllocator};
//! use tape::{Tape, Tensor};
//!
//! #[global_allocator]
//! static ALLOC: CountingAllocator = CountingAllocator;
//!
//! let x = Tensor::vector(vec![1.0_f64, 2.0, 3.0]);
//! let mut t = Tape::<f64>::new();
//! let mut run = |t: &mut Tape<f64>| {
//!     t.clear();
//!     let v = t.var(&x);
//!     t.backward((v * v).tanh().sum());
//! };
//! run(&mut t); // the first recording grows the tape's arenas
//! let n = count_allocations(|| run(&mut t));
//! assert_eq!(n.count, 0, "a rerun on a cleared tape allocates nothing");
//! ```
//!
//! Counts are kept per thread (so tests running in parallel do not see each
//! other's allocations) and also process-wide ([`process_allocations`], for
//! work spread over a thread pool).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A global allocator that forwards to [`System`] and counts allocations
/// (`alloc`, `alloc_zeroed` and `realloc` each count once).
#[derive(Debug, Default, Clone, Copy)]
pub struct CountingAllocator;

/// Allocations counted over some span.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AllocationCount {
    /// Number of allocations (reallocations included).
    pub count: usize,
    /// Bytes requested by them.
    pub bytes: usize,
    /// How many asked for an alignment above 16 bytes (no `Vec` of ordinary
    /// numbers does; SIMD packing buffers of GEMM kernels do).
    pub overaligned: usize,
}

thread_local! {
    static THREAD: Cell<AllocationCount> = const { Cell::new(AllocationCount { count: 0, bytes: 0, overaligned: 0 }) };
}
static PROCESS_COUNT: AtomicUsize = AtomicUsize::new(0);
static PROCESS_BYTES: AtomicUsize = AtomicUsize::new(0);

fn note(layout: Layout, bytes: usize) {
    PROCESS_COUNT.fetch_add(1, Ordering::Relaxed);
    PROCESS_BYTES.fetch_add(bytes, Ordering::Relaxed);
    // `try_with`: allocations during thread teardown are counted process-wide only.
    let _ = THREAD.try_with(|c| {
        let mut n = c.get();
        n.count += 1;
        n.bytes += bytes;
        n.overaligned += usize::from(layout.align() > 16);
        c.set(n);
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// bookkeeping only touches atomics and a const-initialised thread-local `Cell`,
// neither of which allocates.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout, layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout, layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(layout, new_size);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// The allocations made on this thread while `f` runs. Counts nothing unless
/// [`CountingAllocator`] is the global allocator.
pub fn count_allocations(f: impl FnOnce()) -> AllocationCount {
    let before = THREAD.with(Cell::get);
    f();
    let after = THREAD.with(Cell::get);
    AllocationCount {
        count: after.count - before.count,
        bytes: after.bytes - before.bytes,
        overaligned: after.overaligned - before.overaligned,
    }
}

/// Allocations made by every thread of the process so far (take differences
/// around a span; `overaligned` is not tracked process-wide and reads 0).
pub fn process_allocations() -> AllocationCount {
    AllocationCount {
        count: PROCESS_COUNT.load(Ordering::Relaxed),
        bytes: PROCESS_BYTES.load(Ordering::Relaxed),
        overaligned: 0,
    }
}
