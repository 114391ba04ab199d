//! Communicators: the ranks of a distributed meta-training run and the few
//! collectives [`crate::Trainer`] needs to split a meta-batch across them.
//!
//! A run of `size` ranks splits each meta-batch of B tasks into contiguous
//! blocks ([`block`]); every rank estimates its block with the per-task
//! streams `task_rng(seed, k, i, …)`, then the per-task estimates are gathered
//! to every rank ([`Communicator::all_gather`]) and summed in task order
//! 0, 1, …, B − 1 exactly as in one process. The meta-gradient, θ and the
//! estimators' adaptive state are therefore bit-identical for any number of
//! ranks and threads (a float allreduce would not be: it sums in an order of
//! its own). See docs/distributed.md for the design and measurements.
//!
//! Implementations:
//!
//! - [`Local`]: one rank, no communication (the default);
//! - [`ThreadComm`]: `n` ranks on threads of one process, for tests (a rank
//!   that panics, errors or leaves makes the others' collectives return
//!   [`CommError::RankFailed`] naming it, never hang);
//! - `Mpi` (cargo feature `mpi`): the ranks of an MPI job (rsmpi on the
//!   system's MPI, e.g. MPICH), started with `mpiexec -n N`.
//!
//! ```
//! use blo::comm::{Communicator, ThreadComm};
//! // Three ranks each contribute their rank number; every rank sees all three, in rank order.
//! let out = ThreadComm::spawn(3, |comm| comm.all_gather(&[comm.rank() as u8]).unwrap());
//! for r in out {
//!     assert_eq!(r.unwrap(), vec![vec![0], vec![1], vec![2]]);
//! }
//! ```

use std::ops::Range;

mod exchange;
mod local;
#[cfg(feature = "mpi")]
mod mpi;
mod threads;

#[cfg(feature = "mpi")]
pub use self::mpi::{Mpi, LOST_RANK_EXIT_CODE};
pub(crate) use exchange::exchange;
pub use local::Local;
pub(crate) use threads::panic_text;
pub use threads::{ThreadComm, DEFAULT_TIMEOUT};

/// Why a collective did not complete.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum CommError {
    /// Rank `rank` failed (error, panic, lost process) or left the
    /// communicator before joining the collective.
    #[error("rank {rank} failed: {reason}")]
    RankFailed {
        /// The failed rank.
        rank: usize,
        /// What happened to it, as far as this rank knows.
        reason: String,
    },
    /// Rank `rank` did not join the collective `op` within `seconds`.
    #[error("rank {rank} did not join {op} within {seconds} s (lost or stuck)")]
    Timeout {
        /// The first rank missing.
        rank: usize,
        /// The collective.
        op: &'static str,
        /// The time waited.
        seconds: f64,
    },
    /// The ranks called different collectives at the same point (a bug in
    /// the calling program), or the transport refused the call.
    #[error("{0}")]
    Protocol(String),
}

/// The ranks of a run and the collectives between them.
///
/// Every rank calls the same collectives in the same order; each call returns
/// on every rank with the same data, or with an error on every surviving
/// rank. Implementations never hang on a failed rank: they report it as
/// [`CommError::RankFailed`] or [`CommError::Timeout`].
pub trait Communicator {
    /// This rank, in `0..size()`.
    fn rank(&self) -> usize;
    /// The number of ranks, ≥ 1.
    fn size(&self) -> usize;
    /// Every rank's `mine`, indexed by rank, on every rank.
    ///
    /// # Errors
    /// [`CommError`] naming a failed or missing rank.
    fn all_gather(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>, CommError>;
    /// Rank `root`'s `buf` on every rank (other ranks' `buf` is replaced).
    ///
    /// # Errors
    /// [`CommError`] naming a failed or missing rank.
    fn broadcast(&self, root: usize, buf: &mut Vec<u8>) -> Result<(), CommError>;
    /// Returns once every rank has called it.
    ///
    /// # Errors
    /// [`CommError`] naming a failed or missing rank.
    fn barrier(&self) -> Result<(), CommError>;
    /// Tells the other ranks that this one cannot go on (`reason` says why):
    /// their pending and later collectives fail with
    /// [`CommError::RankFailed`] naming this rank. Called by the trainer when
    /// it stops on an error the other ranks cannot know of (e.g. rank 0
    /// failing to write a checkpoint). An MPI job is aborted.
    fn fail(&self, reason: &str);
    /// What the caller is doing (e.g. `outer step 7`), for the messages of
    /// failures that cannot be returned as errors (an MPI rank that loses a
    /// peer in the middle of a collective exits); default: ignored.
    fn set_context(&self, context: &str) {
        let _ = context;
    }
    /// A short description for logs, e.g. `threads(rank 1 of 3)`.
    fn describe(&self) -> String;

    /// Every rank's `mine` (f64 values, bit-exact), indexed by rank, on every rank.
    ///
    /// # Errors
    /// As [`Communicator::all_gather`].
    ///
    /// ```
    /// use blo::comm::{Communicator, Local};
    /// assert_eq!(Local.all_gather_f64(&[1.5, -0.0]).unwrap(), vec![vec![1.5, -0.0]]);
    /// ```
    fn all_gather_f64(&self, mine: &[f64]) -> Result<Vec<Vec<f64>>, CommError> {
        let bytes: Vec<u8> = mine.iter().flat_map(|x| x.to_le_bytes()).collect();
        let all = self.all_gather(&bytes)?;
        all.into_iter()
            .enumerate()
            .map(|(r, b)| {
                if b.len() % 8 != 0 {
                    return Err(CommError::Protocol(format!(
                        "all_gather_f64: rank {r} sent {} bytes, not a whole number of f64",
                        b.len()
                    )));
                }
                Ok(b.chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect())
            })
            .collect()
    }
}

impl<C: Communicator + ?Sized> Communicator for &C {
    fn rank(&self) -> usize {
        (**self).rank()
    }
    fn size(&self) -> usize {
        (**self).size()
    }
    fn all_gather(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>, CommError> {
        (**self).all_gather(mine)
    }
    fn broadcast(&self, root: usize, buf: &mut Vec<u8>) -> Result<(), CommError> {
        (**self).broadcast(root, buf)
    }
    fn barrier(&self) -> Result<(), CommError> {
        (**self).barrier()
    }
    fn fail(&self, reason: &str) {
        (**self).fail(reason)
    }
    fn set_context(&self, context: &str) {
        (**self).set_context(context)
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

/// The tasks of a meta-batch of `b` tasks that rank `rank` of `size`
/// estimates: contiguous blocks in rank order, the first `b mod size` ranks
/// one task more (ranks beyond `b` get none).
///
/// # Panics
/// If `size == 0` or `rank >= size`.
///
/// ```
/// use blo::comm::block;
/// let blocks: Vec<_> = (0..3).map(|r| block(7, 3, r)).collect();
/// assert_eq!(blocks, vec![0..3, 3..5, 5..7]);
/// assert_eq!(block(2, 3, 2), 2..2);
/// ```
#[track_caller]
pub fn block(b: usize, size: usize, rank: usize) -> Range<usize> {
    assert!(
        rank < size,
        "comm::block: rank {rank} is not below the size {size}"
    );
    let (base, extra) = (b / size, b % size);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}
