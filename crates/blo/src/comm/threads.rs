//! [`ThreadComm`]: `n` ranks on threads of one process.

use std::collections::BTreeMap;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::{CommError, Communicator};

/// The default time a collective waits for a rank that neither joins nor
/// fails (a stuck rank); failures and departures are reported at once.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// One collective in progress: its kind and each rank's contribution.
struct Round {
    op: &'static str,
    parts: Vec<Option<Vec<u8>>>,
    /// Ranks that have read the result.
    taken: usize,
}

struct State {
    /// Collectives by sequence number (each rank counts its own calls).
    rounds: BTreeMap<u64, Round>,
    /// Ranks that failed or left, with why, and the rank whose failure
    /// stopped them (`None`: their own).
    failed: BTreeMap<usize, (String, Option<usize>)>,
}

struct Shared {
    size: usize,
    timeout: Duration,
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A rank never panics while holding the lock, but a poisoned lock
        // still holds consistent data: carry on.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
    fn mark_failed(&self, rank: usize, reason: String) {
        self.lock().failed.entry(rank).or_insert((reason, None));
        self.changed.notify_all();
    }
}

/// A rank of an in-process multi-rank run: `n` threads, each with its own
/// `ThreadComm`, exchanging data through shared memory. Behaves like an MPI
/// job for [`crate::Trainer`], so tests can check a distributed run against
/// one process without MPI.
///
/// A rank that panics, returns from its closure, or drops its `ThreadComm`
/// while others still wait makes their collectives fail at once with
/// [`CommError::RankFailed`] naming it; a rank that neither joins nor fails
/// within the timeout ([`DEFAULT_TIMEOUT`]) gives [`CommError::Timeout`].
///
/// ```
/// use blo::comm::{CommError, Communicator, ThreadComm};
/// let out = ThreadComm::spawn(3, |comm| {
///     if comm.rank() == 2 {
///         panic!("rank 2 gives up");
///     }
///     comm.barrier()
/// });
/// assert!(out[2].is_err()); // its panic, caught
/// for r in &out[..2] {
///     match r.as_ref().unwrap() {
///         Err(CommError::RankFailed { rank: 2, reason }) => {
///             assert_eq!(reason, "panicked: rank 2 gives up")
///         }
///         other => panic!("{other:?}"),
///     }
/// }
/// ```
pub struct ThreadComm {
    rank: usize,
    shared: Arc<Shared>,
    /// Collectives this rank has called.
    calls: std::cell::Cell<u64>,
}

impl ThreadComm {
    /// Runs `f` on `n` ≥ 1 ranks, each on its own thread with its own
    /// communicator, and returns each rank's result (its panic, caught, as
    /// `Err`), in rank order. Collectives wait at most [`DEFAULT_TIMEOUT`].
    ///
    /// # Panics
    /// If `n == 0`.
    #[track_caller]
    pub fn spawn<R, Fun>(n: usize, f: Fun) -> Vec<std::thread::Result<R>>
    where
        R: Send,
        Fun: Fn(ThreadComm) -> R + Sync,
    {
        Self::spawn_with_timeout(n, DEFAULT_TIMEOUT, f)
    }

    /// [`ThreadComm::spawn`] with collectives waiting at most `timeout` for a
    /// rank that neither joins nor fails.
    ///
    /// # Panics
    /// If `n == 0`.
    #[track_caller]
    pub fn spawn_with_timeout<R, Fun>(
        n: usize,
        timeout: Duration,
        f: Fun,
    ) -> Vec<std::thread::Result<R>>
    where
        R: Send,
        Fun: Fn(ThreadComm) -> R + Sync,
    {
        assert!(n >= 1, "ThreadComm::spawn: need at least one rank, got 0");
        let shared = Arc::new(Shared {
            size: n,
            timeout,
            state: Mutex::new(State {
                rounds: BTreeMap::new(),
                failed: BTreeMap::new(),
            }),
            changed: Condvar::new(),
        });
        let f = &f;
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .map(|rank| {
                    let shared = Arc::clone(&shared);
                    std::thread::Builder::new()
                        .name(format!("blo-rank-{rank}"))
                        .spawn_scoped(s, move || {
                            let comm = ThreadComm {
                                rank,
                                shared: Arc::clone(&shared),
                                calls: std::cell::Cell::new(0),
                            };
                            let out = panic::catch_unwind(AssertUnwindSafe(|| f(comm)));
                            if let Err(p) = &out {
                                shared.mark_failed(rank, format!("panicked: {}", panic_text(&**p)));
                            }
                            out
                        })
                        .expect("spawning a rank thread")
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(Err))
                .collect()
        })
    }

    /// The collective `op`: contributes `mine`, waits for every rank's part.
    fn collective(&self, op: &'static str, mine: Vec<u8>) -> Result<Vec<Vec<u8>>, CommError> {
        let seq = self.calls.get();
        self.calls.set(seq + 1);
        let sh = &*self.shared;
        let n = sh.size;
        let mut st = sh.lock();
        let round = st.rounds.entry(seq).or_insert_with(|| Round {
            op,
            parts: vec![None; n],
            taken: 0,
        });
        if round.op != op {
            let other = round.op;
            drop(st);
            let e = format!(
                "rank {} called {op} as collective #{seq} while another rank called {other}",
                self.rank
            );
            sh.mark_failed(self.rank, e.clone());
            return Err(CommError::Protocol(e));
        }
        round.parts[self.rank] = Some(mine);
        sh.changed.notify_all();
        let deadline = Instant::now() + sh.timeout;
        loop {
            let round = st
                .rounds
                .get(&seq)
                .expect("a round stays until all have read it");
            let missing = round.parts.iter().position(Option::is_none);
            let Some(m) = missing else {
                break;
            };
            // A failed rank that has not contributed never will. Report the
            // failure that started it all: a rank stopped by another's names it.
            let failed = st
                .failed
                .keys()
                .find(|&&r| round.parts[r].is_none() && r != self.rank)
                .map(|&r| {
                    let mut rank = r;
                    for _ in 0..n {
                        match st.failed[&rank].1 {
                            Some(q) if q != self.rank && st.failed.contains_key(&q) => rank = q,
                            _ => break,
                        }
                    }
                    CommError::RankFailed {
                        rank,
                        reason: st.failed[&rank].0.clone(),
                    }
                });
            let now = Instant::now();
            let error = failed.or_else(|| {
                (now >= deadline).then_some(CommError::Timeout {
                    rank: m,
                    op,
                    seconds: sh.timeout.as_secs_f64(),
                })
            });
            if let Some(e) = error {
                // This rank stops too: withdraw its part, so a late rank
                // cannot complete the round and carry on alone.
                st.rounds.get_mut(&seq).expect("present").parts[self.rank] = None;
                let culprit = match &e {
                    CommError::RankFailed { rank, .. } | CommError::Timeout { rank, .. } => {
                        Some(*rank)
                    }
                    CommError::Protocol(_) => None,
                };
                st.failed
                    .entry(self.rank)
                    .or_insert_with(|| (format!("stopped in {op} #{seq}: {e}"), culprit));
                sh.changed.notify_all();
                return Err(e);
            }
            st = sh
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let round = st.rounds.get_mut(&seq).expect("present");
        let out = round
            .parts
            .iter()
            .map(|p| p.clone().expect("complete"))
            .collect();
        round.taken += 1;
        if round.taken == n {
            st.rounds.remove(&seq);
        }
        Ok(out)
    }
}

impl Communicator for ThreadComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.shared.size
    }
    fn all_gather(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>, CommError> {
        self.collective("all_gather", mine.to_vec())
    }
    #[track_caller]
    fn broadcast(&self, root: usize, buf: &mut Vec<u8>) -> Result<(), CommError> {
        assert!(
            root < self.size(),
            "ThreadComm::broadcast: root {root} of {} ranks",
            self.size()
        );
        let mine = if self.rank == root {
            buf.clone()
        } else {
            Vec::new()
        };
        let mut all = self.collective("broadcast", mine)?;
        *buf = std::mem::take(&mut all[root]);
        Ok(())
    }
    fn barrier(&self) -> Result<(), CommError> {
        self.collective("barrier", Vec::new()).map(|_| ())
    }
    fn fail(&self, reason: &str) {
        self.shared.mark_failed(self.rank, reason.to_string());
    }
    fn describe(&self) -> String {
        format!("threads(rank {} of {})", self.rank, self.shared.size)
    }
}

impl Drop for ThreadComm {
    /// A rank that goes away (returns, panics, drops its communicator) can
    /// join no later collective: the others are told at once.
    /// (A rank that panics is reported by [`ThreadComm::spawn`], with its
    /// message, once its unwinding reaches the thread's top.)
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let reason = format!(
                "left the communicator after {} collectives",
                self.calls.get()
            );
            self.shared.mark_failed(self.rank, reason);
        }
    }
}

/// The text of a caught panic's payload.
pub(crate) fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(a non-string panic payload)".into())
}
