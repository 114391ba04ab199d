//! The chunks of a job shared between the calling thread and a second thread
//! kept for the purpose (started on first use), with no heap allocation per
//! call: both take the next chunk from one counter until none is left.
//!
//! Why not `rayon::join`: called from outside rayon's pool (the large
//! products of one gradient or HVP call), it hands the whole join to the pool
//! through the pool's injector queue, a linked list whose blocks of 63 slots
//! are allocated as it fills (crossbeam-deque `Injector::push`): one heap
//! allocation per 63 cut products, which `crates/hvp/tests/alloc.rs` saw
//! (`docs/benchmarks.md`, "split"). It also wakes two sleeping workers and
//! puts the caller to sleep; here one thread is woken and the caller works.
//! Chunks taken from a counter, not assigned: on a busy machine the second
//! thread may not be scheduled for milliseconds, and the caller then does the
//! chunks it has not taken (and waits only for one it has started), so which
//! thread runs a chunk varies.

use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// How long the caller spins for the end of the second thread's last chunk
/// before it sleeps (chunks are about equal, so the wait is short). It yields
/// the core every 64 spins, in case the second thread waits for it.
const SPIN: Duration = Duration::from_micros(50);

/// How long the second thread spins for the next task (yielding its core to
/// any other runnable thread as it goes) before it sleeps. A wake-up from
/// sleep costs about as much as a chunk of the MLP's products (tens of µs),
/// so without the spin two threads were no faster than one; measured idle on
/// the Intel VM of `docs/benchmarks.md` ("split", lead's spin): mlp_grad
/// 0.59–0.67 ms on one thread, 0.53–0.55 with a 20 µs spin, 0.46–0.49 with
/// 200 µs; with a busy loop on the other core, two threads 6 % slower than one.
const SERVE_SPIN: Duration = Duration::from_micros(200);

/// A wait for the second thread's last chunk this long, and longer than
/// [`STALL_CHUNKS`] of the caller's own chunks, means the system took its core
/// away in the middle of a chunk: the machine is busy. (The chunks of one job
/// are about equal, so the caller waits for at most about one chunk: ≤ ~140 µs
/// on one AVX2 core for the MLP benchmark's products, but ~260 µs for a
/// `[100, 512]·[512, 512]` product's quarter, and more for larger products,
/// whose chunks grow with them. With this floor alone, such waits were taken
/// for stalls and a deeper, wider MLP ran most of its products on one thread:
/// `docs/benchmarks.md`, "users' networks".)
const STALL: Duration = Duration::from_micros(200);

/// A wait is a stall only if it is also longer than this many of the
/// caller's longest chunk of the job ([`STALL`]).
const STALL_CHUNKS: u32 = 2;

/// After a [`STALL`], every job runs on its caller alone for this long: on a
/// machine whose cores are all taken, a thread that loses its core mid-chunk
/// may wait milliseconds for it, and the caller with it (seen under load 5-8
/// on 2 vCPUs, `docs/benchmarks.md` "split"). The bits do not depend on it.
const BACKOFF: Duration = Duration::from_millis(20);

/// Until when (nanoseconds after [`epoch`]) jobs run on their callers alone.
static ALONE_UNTIL: AtomicU64 = AtomicU64::new(0);

/// A fixed instant to count [`ALONE_UNTIL`] from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds from [`epoch`] to now.
fn now_ns() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// A job handed to the second thread: `run(data, chunks)`.
#[derive(Clone, Copy)]
struct Task {
    run: unsafe fn(*const (), usize),
    data: *const (),
    chunks: usize,
}

// SAFETY: a `Task` is made only by `share` from a `&J` with `J: Sync` (so
// `J` may be called from another thread) and `take::<J>`; `share` does not
// return nor unwind before the second thread has finished with it (`Claim`).
unsafe impl Send for Task {}

/// What the two threads share, under [`Second::state`].
struct State {
    task: Option<Task>,
    done: bool,
    panicked: bool,
    /// The second thread runs (set once, when it starts serving).
    ready: bool,
    /// The second thread sleeps on [`Second::wake`]: a posted task must
    /// wake it. (A futex wake is a system call even with no sleeper, ~1 µs
    /// in this VM, and a call of the MLP benchmark posts ~15 tasks; while
    /// the second thread spins, no wake is needed.)
    sleeping: bool,
    /// The caller sleeps on [`Second::finished`]: the end of the task must
    /// wake it (else the caller is spinning and sees `done`).
    waiting: bool,
}

/// The second thread's mailbox.
struct Second {
    /// Held by one `share` at a time (another caller runs its chunks itself).
    taken: AtomicBool,
    /// The next chunk to take.
    next: AtomicUsize,
    /// `state.done` is set (read while spinning).
    done: AtomicBool,
    /// `state.task` holds a task (read while the second thread spins).
    posted: AtomicBool,
    state: Mutex<State>,
    /// Signalled when a task is posted.
    wake: Condvar,
    /// Signalled when a task is done.
    finished: Condvar,
}

static SECOND: Second = Second {
    taken: AtomicBool::new(false),
    next: AtomicUsize::new(0),
    done: AtomicBool::new(false),
    posted: AtomicBool::new(false),
    state: Mutex::new(State {
        task: None,
        done: false,
        panicked: false,
        ready: false,
        sleeping: false,
        waiting: false,
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
        std::thread::yield_now();
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
        // A spin of [`SERVE_SPIN`] catches the next product of the same call
        // without a wake-up; then it sleeps. It yields as it spins: a spin
        // that did not (50 µs, branch `split`) took the caller's core on a
        // busy machine (mlp_hvp 2-3× slower under load).
        // The flag is read after every pause, not after 32 of them: a pause
        // is ~140 cycles on this Xeon, and 32 of them (~1.1 µs) were the
        // second thread's measured delay in taking its first chunk (branch
        // `bal`), a quarter of an elementwise half.
        let t0 = Instant::now();
        'spin: while t0.elapsed() < SERVE_SPIN {
            for _ in 0..32 {
                if SECOND.posted.load(Ordering::Acquire) {
                    break 'spin;
                }
                std::hint::spin_loop();
            }
            // Another runnable thread on this core (a busy machine) gets it.
            std::thread::yield_now();
        }
        let task = {
            let mut st = lock();
            loop {
                if let Some(t) = st.task.take() {
                    SECOND.posted.store(false, Ordering::Relaxed);
                    break t;
                }
                // Set and cleared under the lock that `share` posts under, so
                // a task posted after the check above sees it set.
                st.sleeping = true;
                st = SECOND.wake.wait(st).unwrap_or_else(PoisonError::into_inner);
                st.sleeping = false;
            }
        };
        // SAFETY: `task` came from `share`, which keeps its `data` alive and
        // callable from this thread until `done` is set below (see `Task`).
        let ok = catch_unwind(AssertUnwindSafe(|| unsafe {
            (task.run)(task.data, task.chunks)
        }))
        .is_ok();
        let mut st = lock();
        st.done = true;
        st.panicked = !ok;
        SECOND.done.store(true, Ordering::Release);
        let waiting = st.waiting;
        drop(st);
        if waiting {
            SECOND.finished.notify_one();
        }
    }
}

/// Runs `job(i, there)` for chunks `i < chunks` taken from [`Second::next`]
/// until none is left (`there`: on the second thread); the longest of them
/// (zero if none was left).
fn chunks_of<J: Fn(usize, bool) + Sync>(job: &J, chunks: usize, there: bool) -> Duration {
    let mut longest = Duration::ZERO;
    loop {
        let i = SECOND.next.fetch_add(1, Ordering::Relaxed);
        if i >= chunks {
            return longest;
        }
        let t0 = Instant::now();
        job(i, there);
        longest = longest.max(t0.elapsed());
    }
}

/// The second thread's side of [`share`] for the `J` behind `data`.
///
/// # Safety
/// `data` is a live `&J`.
unsafe fn take<J: Fn(usize, bool) + Sync>(data: *const (), chunks: usize) {
    // SAFETY: this fn's contract.
    chunks_of(unsafe { &*data.cast::<J>() }, chunks, true);
}

/// The shortest wait for the second thread's last chunk that is a stall,
/// when the caller's longest chunk of the job took `longest`: [`STALL`], or
/// [`STALL_CHUNKS`] of `longest` if that is longer.
fn stall_after(longest: Duration) -> Duration {
    STALL.max(longest.saturating_mul(STALL_CHUNKS))
}

/// A posted task: dropping it (also while unwinding) takes the task back or
/// waits for the second thread to finish it, then frees the mailbox.
struct Claim;

impl Claim {
    /// Takes the posted task back if the second thread has not taken it
    /// (`None`), else waits for it: whether it panicked. A wait of `stall` or
    /// longer starts a [`BACKOFF`].
    fn finish(&self, stall: Duration) -> Option<bool> {
        let mut st = lock();
        if st.task.take().is_some() {
            SECOND.posted.store(false, Ordering::Relaxed);
            return None;
        }
        drop(st);
        let t0 = Instant::now();
        spin(&SECOND.done);
        let mut st = lock();
        while !st.done {
            // Under the lock the second thread sets `done` under: it sees
            // this and wakes us.
            st.waiting = true;
            st = SECOND
                .finished
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
            st.waiting = false;
        }
        st.done = false;
        SECOND.done.store(false, Ordering::Relaxed);
        if t0.elapsed() >= stall {
            let until = now_ns().saturating_add(BACKOFF.as_nanos() as u64);
            ALONE_UNTIL.store(until, Ordering::Relaxed);
        }
        Some(st.panicked)
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.finish(STALL);
        SECOND.taken.store(false, Ordering::Release);
    }
}

/// Runs `job(i, there)` once for each chunk `i < chunks`, on this thread
/// (`there` false) and at the same time on the second thread (`there` true),
/// each taking the next chunk left, and returns when all have returned; all
/// on this thread when another caller is using the second thread, it could
/// not be started, or within [`BACKOFF`] of a stall (a wait for the second
/// thread's last chunk of at least [`STALL`] and [`STALL_CHUNKS`] of the
/// caller's longest). A panic in a chunk is passed on after the other thread's
/// chunks have ended.
pub(crate) fn share<J: Fn(usize, bool) + Sync>(chunks: usize, job: &J) {
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
        && now_ns() >= ALONE_UNTIL.load(Ordering::Relaxed)
        && SECOND
            .taken
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok();
    if !free {
        return (0..chunks).for_each(|i| job(i, false));
    }
    SECOND.next.store(0, Ordering::Relaxed);
    let sleeping = {
        let mut st = lock();
        st.task = Some(Task {
            run: take::<J>,
            data: (job as *const J).cast(),
            chunks,
        });
        SECOND.posted.store(true, Ordering::Release);
        st.sleeping
    };
    if sleeping {
        SECOND.wake.notify_one();
    }
    let claim = Claim;
    let longest = chunks_of(job, chunks, false);
    let outcome = claim.finish(stall_after(longest));
    // The task is finished or taken back (its chunks all done here): nothing
    // for `drop` to wait for.
    std::mem::forget(claim);
    SECOND.taken.store(false, Ordering::Release);
    assert!(
        outcome != Some(true),
        "kernels: a chunk on the second thread panicked"
    );
}

/// Elementwise passes over at least this many elements are cut in two
/// between the caller and the second thread ([`parts_mut`]): the MLP
/// benchmark's 64 × 256 layers (16 Ki elements), not its 64 × 10 one.
pub(crate) const SPLIT_ELEMS: usize = 1 << 13;

/// Whether work called from this thread may be cut between two threads:
/// not from inside one of rayon's workers (the caller already runs tasks in
/// parallel, e.g. a meta-batch, and the two kinds of threads would compete
/// for the cores), and not when rayon's pool has one thread
/// (`RAYON_NUM_THREADS=1`: one thread is asked for).
pub(crate) fn may_cut() -> bool {
    rayon::current_thread_index().is_none() && rayon::current_num_threads() >= 2
}

/// Whether [`channel_halves`] cuts `parts` channels with `work` elements
/// in two: `work` of at least [`SPLIT_ELEMS`], two parts or more, and
/// [`may_cut`].
pub(crate) fn cuts(work: usize, parts: usize) -> bool {
    work >= SPLIT_ELEMS && parts >= 2 && may_cut()
}

/// `out`'s first element, shared by the two threads of [`parts_mut`].
struct Base<T>(*mut T);

// SAFETY: `parts_mut` hands each thread a part of `out` disjoint from the
// other's (`T: Send`: the elements may be written from the other thread), and
// `share` returns only after both are done, while `out`'s borrow is alive.
unsafe impl<T: Send> Sync for Base<T> {}

impl<T> Base<T> {
    /// The pointer (a method, so that closures capture the whole `Base`).
    fn ptr(&self) -> *mut T {
        self.0
    }
}

/// `f(rows, part)` over `out` seen as rows of `width` elements: `part` is
/// rows `rows` of `out`. With `work` (the elements the pass reads or writes)
/// of at least [`SPLIT_ELEMS`], two rows or more and [`may_cut`], the rows
/// are cut in two halves (the first ⌈rows / 2⌉, a function of the shape
/// only) run by [`share`], else `f(0..rows, out)` here. For passes whose
/// elements do not depend on each other (or sums in an order that does not
/// follow the cut), so the bits do not depend on it.
///
/// # Panics
/// If `width` is 0 or does not divide `out.len()`.
pub(crate) fn parts_mut<T: Send, F>(out: &mut [T], width: usize, work: usize, f: &F)
where
    F: Fn(std::ops::Range<usize>, &mut [T]) + Sync,
{
    assert!(
        width > 0 && out.len().is_multiple_of(width),
        "parts_mut: {} elements are not rows of {width}",
        out.len()
    );
    let rows = out.len() / width;
    if work < SPLIT_ELEMS || rows < 2 || !may_cut() {
        return f(0..rows, out);
    }
    let half = rows.div_ceil(2);
    let base = Base(out.as_mut_ptr());
    share(2, &|i: usize, _| {
        let r = if i == 0 { 0..half } else { half..rows };
        // SAFETY: rows `r` lie inside `out` (r.end ≤ rows, rows·width =
        // out.len()), chunk 0 and chunk 1 are disjoint and each runs once
        // (`share`), and `out`'s `&mut` borrow outlives `share`.
        let part = unsafe {
            std::slice::from_raw_parts_mut(base.ptr().add(r.start * width), r.len() * width)
        };
        f(r, part);
    });
}

/// The channels `chs` of every row of a buffer seen as rows of `c` channels
/// of `width` contiguous elements (a batch-norm's `[n, c]` or
/// `[n, c, h, w]`): one thread's part in [`channel_halves`], row by row.
pub(crate) struct Channels<'a, T> {
    base: *mut T,
    rows: usize,
    /// Elements per row, c·width.
    row: usize,
    /// The part's elements in a row: `lo..hi` (`chs.start·width..chs.end·width`).
    lo: usize,
    hi: usize,
    _borrow: std::marker::PhantomData<&'a mut [T]>,
}

impl<T> Channels<'_, T> {
    /// Row `r`'s elements of these channels.
    ///
    /// # Panics
    /// If `r` is not below the buffer's number of rows.
    pub(crate) fn row(&mut self, r: usize) -> &mut [T] {
        assert!(r < self.rows, "Channels::row: row {r} of {}", self.rows);
        // SAFETY: `channel_halves` made `base` from a `&mut [T]` of
        // `rows·row` elements borrowed for `'a`, with `lo ≤ hi ≤ row`, so
        // `r·row + lo .. r·row + hi` is inside it; the other part of the
        // same buffer has a disjoint range `lo..hi` in every row, and this
        // slice's borrow of `self` ends before another row is taken.
        unsafe {
            std::slice::from_raw_parts_mut(self.base.add(r * self.row + self.lo), self.hi - self.lo)
        }
    }
}

/// The buffers of [`channel_halves`]: first element, length, `width`.
struct Buffers<T, const N: usize>([(*mut T, usize, usize); N]);

// SAFETY: `channel_halves` hands each thread the channels of one half, so the
// two threads reach disjoint elements of each buffer (`T: Send`: they may be
// written from the other thread), and `share` returns only after both are
// done, while the buffers' `&mut` borrows are alive.
unsafe impl<T: Send, const N: usize> Sync for Buffers<T, N> {}

impl<T, const N: usize> Buffers<T, N> {
    /// Channels `chs` of each of the `c`-channel buffers.
    fn part(&self, c: usize, chs: &Range<usize>) -> [Channels<'_, T>; N] {
        self.0.map(|(base, len, width)| Channels {
            base,
            rows: len / (c * width),
            row: c * width,
            lo: chs.start * width,
            hi: chs.end * width,
            _borrow: std::marker::PhantomData,
        })
    }
}

/// `f(chs, parts)` over `N` buffers, each seen as rows of `c` channels of
/// `width` contiguous elements (`bufs[j] = (buffer, width)`): with `work`
/// (the elements the pass reads or writes) of at least [`SPLIT_ELEMS`], two
/// channels or more and [`may_cut`], the channels are cut in two halves (the
/// first ⌈c / 2⌉, a function of the shape only) run by [`share`], `parts`
/// holding each buffer's channels `chs`; else `f(0..c, whole)` here. For
/// passes whose channels do not depend on each other (a batch-norm's
/// per-channel statistics), so the bits do not depend on the cut.
///
/// # Panics
/// If `c` or a `width` is 0, or a buffer is not whole rows of `c·width`.
pub(crate) fn channel_halves<T: Send, const N: usize, F>(
    c: usize,
    bufs: [(&mut [T], usize); N],
    work: usize,
    f: &F,
) where
    F: Fn(Range<usize>, [Channels<'_, T>; N]) + Sync,
{
    for (b, width) in &bufs {
        assert!(
            c > 0 && *width > 0 && b.len().is_multiple_of(c * width),
            "channel_halves: {} elements are not rows of {c} channels of {width}",
            b.len()
        );
    }
    let ptrs = Buffers(bufs.map(|(b, width)| (b.as_mut_ptr(), b.len(), width)));
    if !cuts(work, c) {
        return f(0..c, ptrs.part(c, &(0..c)));
    }
    let half = c.div_ceil(2);
    share(2, &|i: usize, _| {
        let chs = if i == 0 { 0..half } else { half..c };
        let parts = ptrs.part(c, &chs);
        f(chs, parts);
    });
}

#[cfg(test)]
mod tests {
    use super::{share, stall_after, STALL};
    use std::panic::AssertUnwindSafe;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Duration;

    /// A wait for the other thread's last chunk is a stall only past both
    /// the floor and two of the caller's chunks: a chunk of a large product
    /// takes longer than the floor, and waiting for one is not a stall.
    #[test]
    fn a_stall_is_a_wait_longer_than_the_floor_and_two_chunks() {
        let us = Duration::from_micros;
        assert_eq!(stall_after(Duration::ZERO), STALL);
        assert_eq!(stall_after(us(60)), us(200));
        assert_eq!(stall_after(us(260)), us(520));
        assert_eq!(stall_after(Duration::MAX), Duration::MAX);
    }

    /// Every chunk runs once, however many threads call at once.
    #[test]
    fn every_chunk_runs_once_from_concurrent_callers() {
        let count = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for caller in 0..4 {
                let count = &count;
                s.spawn(move || {
                    for round in 0..200 {
                        let chunks = 1 + (caller + round) % 5;
                        let hits: Vec<AtomicUsize> =
                            (0..chunks).map(|_| AtomicUsize::new(0)).collect();
                        share(chunks, &|i, _| {
                            hits[i].fetch_add(1, Ordering::Relaxed);
                        });
                        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
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
        let ran_there = AtomicBool::new(false);
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
            share(2, &|_, there| {
                if there {
                    ran_there.store(true, Ordering::Relaxed);
                    panic!("planted");
                }
                std::thread::sleep(Duration::from_millis(20));
            })
        }));
        // (The second thread takes no chunk if not scheduled within 20 ms.)
        assert_eq!(r.is_err(), ran_there.into_inner());
        let hit = AtomicUsize::new(0);
        share(3, &|_, _| {
            hit.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(hit.into_inner(), 3);
    }

    /// Posting a task wakes the second thread once it sleeps (past its
    /// spin), and the end of its chunk wakes a caller that sleeps waiting
    /// for it (past the caller's spin): no wake is lost when wakes are sent
    /// only to a sleeper. Tried a few times, as another test may hold the
    /// second thread.
    #[test]
    fn a_sleeping_second_thread_is_woken_and_wakes_its_caller() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut ran_there = false;
            for _ in 0..20 {
                // Longer than SERVE_SPIN: the second thread goes to sleep.
                std::thread::sleep(Duration::from_millis(5));
                let there = AtomicBool::new(false);
                share(2, &|_, on_second| {
                    if on_second {
                        there.store(true, Ordering::Release);
                        // Longer than SPIN: the caller goes to sleep.
                        std::thread::sleep(Duration::from_millis(2));
                        return;
                    }
                    let t0 = std::time::Instant::now();
                    while !there.load(Ordering::Acquire)
                        && t0.elapsed() < Duration::from_millis(200)
                    {
                        std::thread::yield_now();
                    }
                });
                if there.into_inner() {
                    ran_there = true;
                    break;
                }
            }
            let _ = tx.send(ran_there);
        });
        assert_eq!(rx.recv_timeout(Duration::from_secs(60)), Ok(true));
    }
}
