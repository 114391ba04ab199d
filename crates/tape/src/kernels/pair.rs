//! Two halves of a job at once: the calling thread runs one, a second thread
//! kept for the purpose (started on first use) the other, with no heap
//! allocation per call.
//!
//! Why not `rayon::join`: called from outside rayon's pool (the large
//! products of one gradient or HVP call), it hands the whole join to the pool
//! through the pool's injector queue, a linked list whose blocks of 63 slots
//! are allocated as it fills (crossbeam-deque `Injector::push`): one heap
//! allocation per 63 cut products, which `crates/hvp/tests/alloc.rs` saw
//! (`docs/benchmarks.md`, "split"). It also wakes two sleeping workers and
//! puts the caller to sleep; here one thread is woken and the caller works.
//! The second half goes back to the caller if the second thread has not
//! started it when the first half is done (on a busy machine the second
//! thread may not be scheduled for milliseconds), so which thread runs it
//! varies: `large.rs` hands each half its own packing buffers, not the
//! running thread's.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// How long a side spins for the other (the second thread for its next half,
/// the caller for the second half's end) before it sleeps: the halves of a
/// product are about equal, and an MLP call's products follow each other
/// within tens of microseconds, so most hand-offs need no sleep and wake-up.
const SPIN: Duration = Duration::from_micros(50);

/// A half handed to the second thread: `run(data)`.
#[derive(Clone, Copy)]
struct Task {
    run: unsafe fn(*const ()),
    data: *const (),
}

// SAFETY: a `Task` is made only by `join` from a `&B` with `B: Sync` (so `B`
// may be called from another thread) and `call::<B>`; `join` does not return
// nor unwind before the second thread has finished with it (`Claim`).
unsafe impl Send for Task {}

/// What the two threads share, under [`Second::state`].
struct State {
    task: Option<Task>,
    done: bool,
    panicked: bool,
    /// The second thread runs (set once, when it starts serving).
    ready: bool,
}

/// The second thread's mailbox.
struct Second {
    /// Held by one `join` at a time (another caller runs both halves itself).
    taken: AtomicBool,
    /// `state.task` is set (read while spinning).
    posted: AtomicBool,
    /// `state.done` is set (read while spinning).
    done: AtomicBool,
    state: Mutex<State>,
    /// Signalled when a task is posted.
    wake: Condvar,
    /// Signalled when a task is done.
    finished: Condvar,
}

static SECOND: Second = Second {
    taken: AtomicBool::new(false),
    posted: AtomicBool::new(false),
    done: AtomicBool::new(false),
    state: Mutex::new(State {
        task: None,
        done: false,
        panicked: false,
        ready: false,
    }),
    wake: Condvar::new(),
    finished: Condvar::new(),
};

/// Whether the second thread runs (started on the first call, which waits
/// until it does, so that the thread's own start-up allocations are over;
/// `false` if the system refused a thread).
static STARTED: OnceLock<bool> = OnceLock::new();

/// The state, whatever a panic elsewhere did (no code that can panic runs
/// while it is held).
fn lock() -> MutexGuard<'static, State> {
    SECOND.state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Spins until `flag` is set or [`SPIN`] has passed; whether it was set.
fn spin(flag: &AtomicBool) -> bool {
    let t0 = Instant::now();
    loop {
        for _ in 0..64 {
            if flag.load(Ordering::Acquire) {
                return true;
            }
            std::hint::spin_loop();
        }
        if t0.elapsed() >= SPIN {
            return flag.load(Ordering::Acquire);
        }
    }
}

/// The second thread: says it runs, then waits for a task, runs it, says
/// so; forever.
fn serve() {
    lock().ready = true;
    SECOND.finished.notify_all();
    loop {
        spin(&SECOND.posted);
        let task = {
            let mut st = lock();
            loop {
                if let Some(t) = st.task.take() {
                    break t;
                }
                st = SECOND.wake.wait(st).unwrap_or_else(PoisonError::into_inner);
            }
        };
        SECOND.posted.store(false, Ordering::Relaxed);
        // SAFETY: `task` came from `join`, which keeps its `data` alive and
        // callable from this thread until `done` is set below (see `Task`).
        let ok = catch_unwind(AssertUnwindSafe(|| unsafe { (task.run)(task.data) })).is_ok();
        let mut st = lock();
        st.done = true;
        st.panicked = !ok;
        SECOND.done.store(true, Ordering::Release);
        drop(st);
        SECOND.finished.notify_one();
    }
}

/// Calls the `B` behind `data`.
///
/// # Safety
/// `data` is a live `&B`.
unsafe fn call<B: Fn() + Sync>(data: *const ()) {
    // SAFETY: this fn's contract.
    unsafe { (*data.cast::<B>())() }
}

/// A posted task: dropping it (also while unwinding) takes the task back or
/// waits for the second thread to finish it, then frees the mailbox.
struct Claim;

impl Claim {
    /// Takes the posted task back if the second thread has not taken it
    /// (`None`: run it here), else waits for it: whether it panicked.
    fn finish(&self) -> Option<bool> {
        let mut st = lock();
        if st.task.take().is_some() {
            SECOND.posted.store(false, Ordering::Relaxed);
            return None;
        }
        drop(st);
        spin(&SECOND.done);
        let mut st = lock();
        while !st.done {
            st = SECOND
                .finished
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
        st.done = false;
        SECOND.done.store(false, Ordering::Relaxed);
        Some(st.panicked)
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.finish();
        SECOND.taken.store(false, Ordering::Release);
    }
}

/// Runs `here()` on this thread and `there()` at the same time on the second
/// thread, and returns when both have returned. `there()` runs on this
/// thread too (after `here()`) when the second thread has not started it by
/// the time `here()` returns (a busy machine: no waiting for a thread the
/// system has not scheduled), when another caller is using the second thread,
/// or when it could not be started. A panic in either is passed on after
/// both have ended.
pub(crate) fn join<B: Fn() + Sync>(here: impl FnOnce(), there: &B) {
    let started = *STARTED.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("tape-second".into())
            .spawn(serve)
            .is_ok();
        let mut st = lock();
        while spawned && !st.ready {
            st = SECOND
                .finished
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
        spawned
    });
    let free = started
        && SECOND
            .taken
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok();
    if !free {
        here();
        return there();
    }
    {
        let mut st = lock();
        st.task = Some(Task {
            run: call::<B>,
            data: (there as *const B).cast(),
        });
        SECOND.posted.store(true, Ordering::Release);
    }
    SECOND.wake.notify_one();
    let claim = Claim;
    here();
    let outcome = claim.finish();
    // The task is finished or taken back: nothing for `drop` to wait for.
    std::mem::forget(claim);
    SECOND.taken.store(false, Ordering::Release);
    match outcome {
        None => there(),
        Some(panicked) => assert!(
            !panicked,
            "kernels: the second thread's half of a job panicked"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::join;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Both halves run, each once, however many threads call at once.
    #[test]
    fn both_halves_run_once_from_concurrent_callers() {
        let count = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..200 {
                        let (a, b) = (AtomicUsize::new(0), AtomicUsize::new(0));
                        join(
                            || {
                                a.fetch_add(1, Ordering::Relaxed);
                            },
                            &|| {
                                b.fetch_add(1, Ordering::Relaxed);
                            },
                        );
                        assert_eq!((a.into_inner(), b.into_inner()), (1, 1));
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        assert_eq!(count.into_inner(), 800);
    }

    /// A panic on the second thread reaches the caller, and the second thread
    /// serves the next call.
    #[test]
    fn a_panic_there_reaches_the_caller() {
        let r = std::panic::catch_unwind(|| join(|| (), &|| panic!("planted")));
        assert!(r.is_err());
        let hit = AtomicUsize::new(0);
        join(|| (), &|| {
            hit.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(hit.into_inner(), 1);
    }
}
