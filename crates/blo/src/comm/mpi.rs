//! [`Mpi`]: the ranks of an MPI job (cargo feature `mpi`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mpi::collective::{CommunicatorCollectives, Root};
use mpi::datatype::PartitionMut;
use mpi::environment::Universe;
use mpi::point_to_point::{Destination, Source};
use mpi::topology::{Communicator as _, SimpleCommunicator};
use mpi::Threading;

use super::{CommError, Communicator};

/// The tag of heartbeat messages (on a communicator of their own).
const HEARTBEAT_TAG: i32 = 0x6b6c;
/// The tag of a rank's last heartbeat message, at shutdown.
const BYE_TAG: i32 = 0x6b6d;
/// How often each rank sends its heartbeat.
const HEARTBEAT_PERIOD: Duration = Duration::from_millis(200);
/// The exit code of a rank that stops because another rank was lost.
pub const LOST_RANK_EXIT_CODE: i32 = 75;
/// No rank lost (the value of the shared "lost" cell).
const NONE_LOST: usize = usize::MAX;
/// The UCX setting [`Mpi`] makes before `MPI_Init` when the environment has
/// none: no rendezvous protocol, every message eager (see [`Mpi`], "Why
/// eager messages").
const UCX_RNDV_THRESH: (&str, &str) = ("UCX_RNDV_THRESH", "inf");
/// After the launcher's notice that a process of the job died (SIGUSR1 under
/// `mpiexec -disable-auto-cleanup`), a rank silent for this long is the dead
/// one (5 heartbeat periods: the live ranks' heartbeats keep arriving).
const NOTICED_SILENCE: Duration = Duration::from_secs(1);

/// The ranks of an MPI job started with `mpiexec -n N program …` (rsmpi on
/// the system's MPI library; tested with MPICH's `mpiexec`).
///
/// Collectives are MPI's (`MPI_Iallgatherv`, `MPI_Ibcast`, `MPI_Ibarrier`,
/// polled), so they move bytes only: the trainer sums in task order itself.
///
/// # A lost rank
/// An MPI collective waiting for a rank that will never answer cannot be
/// cancelled, and a hung or frozen process (or machine) is reported by no
/// transport. Each rank therefore runs a heartbeat thread (on a duplicate of
/// `MPI_COMM_WORLD`, MPI initialised with `MPI_THREAD_MULTIPLE`): every
/// 0.2 s it sends a byte to every other rank and reads theirs. A rank silent
/// for longer than the heartbeat timeout (default 10 s, environment variable
/// `BLO_MPI_HEARTBEAT_SECS`; `off` for none) is lost: a rank waiting in a
/// collective prints
/// `blo: rank R: rank L lost (no heartbeat for T s) during <op> at <context>`
/// to stderr and exits with code [`LOST_RANK_EXIT_CODE`] (the trainer sets
/// the context to the outer step; rank 0 writes checkpoints between
/// collectives, so the last checkpoint is whole), and MPICH's launcher then
/// ends the job.
///
/// A *killed* (or crashed) process: MPICH's launcher (hydra 4.0.2) kills
/// every rank of the job at once when one dies by a signal, even under
/// `-disable-auto-cleanup`, so no survivor can report. Started as
/// `mpiexec -disable-auto-cleanup -n N scripts/mpi-rank.sh program …`, each
/// rank runs under a shell that turns its death into a plain exit (status
/// 128 + signal), to which the launcher answers only by sending the other
/// ranks SIGUSR1. Each rank catches that notice (a flag set by the
/// `signal-hook` crate's handler, registered when the heartbeat is on) and
/// names the rank whose heartbeat has been silent for over 1 s since (the
/// live ranks' heartbeats keep arriving); a rank waiting in a collective
/// prints `blo: rank R: rank L lost (its process ended: mpiexec's notice, no
/// heartbeat for 1 s) during <op> at <context>` and exits with
/// [`LOST_RANK_EXIT_CODE`]. Rank 0's start-up line
/// (`blo: MPI job of N ranks: rank 0 = pid … on host, …`) maps PIDs to ranks.
///
/// # Why eager messages
/// MPICH's UCX netmod (MPICH 4.0.2, UCX 1.13.1) sends a large message (a
/// block of per-task gradients: 145 kB for the sinusoid at r = 10, B = 20)
/// by rendezvous: the sender announces it, and on the same host the
/// *receiver* copies it out of the sender's memory (`process_vm_readv`, the
/// CMA transport). If the sender is killed between its announcement and that
/// copy, the copy fails with `ESRCH`, and UCX, whose endpoints MPICH opens
/// without error handling, aborts the receiver inside `MPI_Test` (a
/// `cma_ep.c: process_vm_readv(...) returned -1: No such process` line and a
/// backtrace) tens of milliseconds after the kill, before the notice and
/// the heartbeat can name the lost rank. Unless `UCX_RNDV_THRESH` is already
/// set, [`Mpi::init`] therefore sets it to `inf` before `MPI_Init`: every
/// message goes eagerly through the shared-memory queues the receiver owns,
/// so a rank never reads another's memory, and a sender that dies mid-message
/// leaves its peer waiting, where the notice and the heartbeat name it.
/// (Excluding CMA, `UCX_TLS=^cma`, does not do: UCX then runs the
/// rendezvous over TCP on the loopback and Ethernet interfaces, whose closed
/// sockets fail the next send to the dead rank at once, and MPICH aborts.)
/// The exchange's result is unchanged (the same bytes arrive); its cost is
/// one more copy per message, measured in docs/distributed.md. A user who
/// sets `UCX_RNDV_THRESH` (e.g. `auto`, UCX's default) gets that setting and
/// a warning from rank 0 that a killed rank may then abort the others inside
/// UCX unnamed. Between machines UCX's network transports (TCP, InfiniBand)
/// report a dead peer as an error, which MPICH's default error handler turns
/// into an abort of the survivors (MPICH's error stack, not blo's message).
///
/// Dropping the last `Mpi` finalises MPI (after a barrier, so every rank's
/// heartbeats stop first); a rank that saw a lost peer skips finalisation.
pub struct Mpi {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    heartbeat: Option<Heartbeat>,
    /// What the caller is doing, for messages about lost ranks.
    context: std::cell::RefCell<String>,
    /// Collectives called.
    calls: std::cell::Cell<u64>,
    /// Dropped last: finalises MPI.
    _universe: Universe,
}

/// The heartbeat thread and what it shares with its rank.
struct Heartbeat {
    stop: Arc<AtomicBool>,
    /// The first rank found silent, or `NONE_LOST`.
    lost: Arc<AtomicUsize>,
    /// Set by SIGUSR1: the launcher's notice that a process of the job died.
    noticed: Arc<AtomicBool>,
    timeout: Duration,
    thread: Option<JoinHandle<()>>,
}

impl Mpi {
    /// Initialises MPI (once per process) with the heartbeat timeout from
    /// `BLO_MPI_HEARTBEAT_SECS` (default 10 s). Sets `UCX_RNDV_THRESH=inf`
    /// first unless the environment sets it (see "Why eager messages" on
    /// [`Mpi`]); call it before starting threads.
    ///
    /// # Errors
    /// [`CommError::Protocol`] if MPI was already initialised or the timeout
    /// is not a positive number of seconds.
    pub fn init() -> Result<Mpi, CommError> {
        let secs = match std::env::var("BLO_MPI_HEARTBEAT_SECS") {
            Ok(s) if s.trim() == "off" => return Self::start(None),
            Ok(s) => s
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x > 0.0)
                .ok_or_else(|| {
                    CommError::Protocol(format!(
                        "BLO_MPI_HEARTBEAT_SECS = {s:?}: expected a number of seconds > 0"
                    ))
                })?,
            Err(_) => 10.0,
        };
        Self::init_with_heartbeat(Duration::from_secs_f64(secs))
    }

    /// Initialises MPI with a heartbeat timeout of `timeout` (and
    /// `UCX_RNDV_THRESH` as [`Mpi::init`] does).
    ///
    /// # Errors
    /// [`CommError::Protocol`] if MPI was already initialised.
    pub fn init_with_heartbeat(timeout: Duration) -> Result<Mpi, CommError> {
        Self::start(Some(timeout))
    }

    /// Initialises MPI, with a heartbeat of timeout `heartbeat` or none
    /// (`BLO_MPI_HEARTBEAT_SECS=off`: single-threaded MPI, a lost rank is
    /// then left to the launcher).
    fn start(heartbeat: Option<Duration>) -> Result<Mpi, CommError> {
        // UCX reads its settings from the environment in MPI_Init. Setting a
        // variable is not thread-safe against C code reading the
        // environment at the same time; MPI is initialised first thing in a
        // program, before its threads (rayon's pool is started lazily).
        let (var, eager) = UCX_RNDV_THRESH;
        let users = std::env::var(var).ok();
        if users.is_none() {
            std::env::set_var(var, eager);
        }
        let want = if heartbeat.is_some() {
            Threading::Multiple
        } else {
            Threading::Single
        };
        let (universe, threading) = mpi::initialize_with_threading(want)
            .ok_or_else(|| CommError::Protocol("MPI was already initialised".into()))?;
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        let heartbeat = heartbeat
            .filter(|_| size > 1 && threading == Threading::Multiple)
            .map(|timeout| {
                let stop = Arc::new(AtomicBool::new(false));
                let lost = Arc::new(AtomicUsize::new(NONE_LOST));
                let noticed = Arc::new(AtomicBool::new(false));
                // MPICH's launcher under -disable-auto-cleanup tells the
                // survivors of a dead process with SIGUSR1 (whose default
                // action would end them silently): note it instead.
                if let Err(e) =
                    signal_hook::flag::register(signal_hook::consts::SIGUSR1, Arc::clone(&noticed))
                {
                    eprintln!("blo: rank {rank}: cannot catch SIGUSR1 ({e}): a killed rank will not be named");
                }
                let comm = world.duplicate();
                let (s, l, n) = (Arc::clone(&stop), Arc::clone(&lost), Arc::clone(&noticed));
                let thread = std::thread::Builder::new()
                    .name("blo-mpi-heartbeat".into())
                    .spawn(move || heartbeat_loop(comm, rank, size, timeout, &s, &l, &n))
                    .expect("spawning the heartbeat thread");
                Heartbeat {
                    stop,
                    lost,
                    noticed,
                    timeout,
                    thread: Some(thread),
                }
            });
        let me = Mpi {
            world,
            rank,
            size,
            heartbeat,
            context: std::cell::RefCell::new("start-up".into()),
            calls: std::cell::Cell::new(0),
            _universe: universe,
        };
        if threading != want && size > 1 {
            eprintln!(
                "blo: MPI gave thread level {threading:?}, not Multiple: no heartbeat, a lost rank may hang the job"
            );
        }
        // Who is who, so the launcher's report of a dead PID names a rank.
        let host = mpi::environment::processor_name().unwrap_or_else(|_| "?".into());
        let me_text = format!("rank {} = pid {} on {host}", rank, std::process::id());
        let all = me.all_gather(me_text.as_bytes())?;
        if rank == 0 {
            let list: Vec<String> = all
                .iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect();
            eprintln!("blo: MPI job of {size} ranks: {}", list.join(", "));
            if let Some(v) = users.filter(|v| v.trim() != eager) {
                eprintln!(
                    "blo: {var}={v} (set by the environment; blo sets {eager}): a rank killed while \
                     another copies a large message from it may abort that rank inside UCX before \
                     blo can name the lost rank (docs/distributed.md, \"Faults\")"
                );
            }
        }
        Ok(me)
    }

    /// Polls `test` until it reports completion; exits the process if a rank
    /// is lost meanwhile (an MPI request cannot be abandoned).
    fn poll(&self, op: &'static str, mut test: impl FnMut() -> bool) {
        // Spin (yielding the core) for the first 2 ms: a meta-step's
        // exchange is usually that quick, and a sleep costs ~60 µs at least.
        // Then nap, up to 1 ms, so a rank waiting for a slow peer idles.
        let started = Instant::now();
        let mut nap = Duration::from_micros(50);
        while !test() {
            if let Some(hb) = &self.heartbeat {
                let lost = hb.lost.load(Ordering::SeqCst);
                if lost != NONE_LOST {
                    let why = if hb.noticed.load(Ordering::SeqCst) {
                        format!(
                            "its process ended: mpiexec's notice, no heartbeat for {} s",
                            NOTICED_SILENCE.min(hb.timeout).as_secs_f64()
                        )
                    } else {
                        format!("no heartbeat for {} s", hb.timeout.as_secs_f64())
                    };
                    eprintln!(
                        "blo: rank {}: rank {lost} lost ({why}) during {op} at {}; stopping (exit code {LOST_RANK_EXIT_CODE})",
                        self.rank,
                        self.context.borrow()
                    );
                    std::process::exit(LOST_RANK_EXIT_CODE);
                }
            }
            if started.elapsed() < Duration::from_millis(2) {
                std::thread::yield_now();
            } else {
                std::thread::sleep(nap);
                nap = (nap * 2).min(Duration::from_millis(1));
            }
        }
    }

    /// Waits for `req` (polled, see [`Mpi::poll`]).
    fn wait<'a, D: ?Sized, S: mpi::request::Scope<'a>>(
        &self,
        op: &'static str,
        req: mpi::request::Request<'a, D, S>,
    ) {
        let mut req = Some(req);
        self.poll(op, || match req.take().expect("pending").test() {
            Ok(_) => true,
            Err(r) => {
                req = Some(r);
                false
            }
        });
    }

    fn count_call(&self) {
        self.calls.set(self.calls.get() + 1);
    }
}

/// Sends a heartbeat to every other rank every [`HEARTBEAT_PERIOD`], reads
/// theirs, and records the first rank silent for longer than `timeout`, or,
/// once `noticed` (the launcher said a process died), the rank silent the
/// longest if that is over [`NOTICED_SILENCE`].
fn heartbeat_loop(
    comm: SimpleCommunicator,
    rank: usize,
    size: usize,
    timeout: Duration,
    stop: &AtomicBool,
    lost: &AtomicUsize,
    noticed: &AtomicBool,
) {
    let mut seen = vec![Instant::now(); size];
    let mut last_sent = Instant::now() - HEARTBEAT_PERIOD;
    while !stop.load(Ordering::SeqCst) {
        if last_sent.elapsed() >= HEARTBEAT_PERIOD {
            for p in (0..size).filter(|&p| p != rank) {
                if lost.load(Ordering::SeqCst) != p {
                    comm.process_at_rank(p as i32)
                        .send_with_tag(&1u8, HEARTBEAT_TAG);
                }
            }
            last_sent = Instant::now();
        }
        while let Some((msg, status)) = comm
            .any_process()
            .immediate_matched_probe_with_tag(HEARTBEAT_TAG)
        {
            let _: (u8, _) = msg.matched_receive();
            seen[status.source_rank() as usize] = Instant::now();
        }
        if lost.load(Ordering::SeqCst) == NONE_LOST {
            let limit = if noticed.load(Ordering::SeqCst) {
                NOTICED_SILENCE.min(timeout)
            } else {
                timeout
            };
            if let Some(p) = (0..size)
                .filter(|&p| p != rank && seen[p].elapsed() > limit)
                .max_by_key(|&p| seen[p].elapsed())
            {
                lost.store(p, Ordering::SeqCst);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Say goodbye, then read every peer's messages up to its goodbye (one
    // sender's messages arrive in order), so none is left unread at
    // MPI_Finalize. A peer lost meanwhile is given up after `timeout`.
    for p in (0..size).filter(|&p| p != rank && lost.load(Ordering::SeqCst) != p) {
        comm.process_at_rank(p as i32).send_with_tag(&0u8, BYE_TAG);
    }
    let mut done: Vec<bool> = (0..size)
        .map(|p| p == rank || lost.load(Ordering::SeqCst) == p)
        .collect();
    let started = Instant::now();
    while done.iter().any(|d| !d) && started.elapsed() < timeout {
        match comm.any_process().immediate_matched_probe() {
            Some((msg, status)) => {
                let _: (u8, _) = msg.matched_receive();
                if status.tag() == BYE_TAG {
                    done[status.source_rank() as usize] = true;
                }
            }
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

impl Communicator for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn all_gather(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>, CommError> {
        self.count_call();
        let len = i32::try_from(mine.len()).map_err(|_| {
            CommError::Protocol(format!(
                "all_gather: {} bytes exceed MPI's count limit of 2^31 - 1",
                mine.len()
            ))
        })?;
        let mut lens = vec![0i32; self.size];
        mpi::request::scope(|scope| {
            let req = self
                .world
                .immediate_all_gather_into(scope, &len, &mut lens[..]);
            self.wait("all_gather (lengths)", req);
        });
        let mut displs = Vec::with_capacity(self.size);
        let mut total: i64 = 0;
        for &l in &lens {
            displs.push(i32::try_from(total).map_err(|_| {
                CommError::Protocol("all_gather: more than 2^31 - 1 bytes in all".into())
            })?);
            total += i64::from(l);
        }
        let mut buf = vec![0u8; total as usize];
        {
            let mut part = PartitionMut::new(&mut buf[..], &lens[..], &displs[..]);
            mpi::request::scope(|scope| {
                let req = self
                    .world
                    .immediate_all_gather_varcount_into(scope, mine, &mut part);
                self.wait("all_gather", req);
            });
        }
        Ok(lens
            .iter()
            .zip(&displs)
            .map(|(&l, &d)| buf[d as usize..(d + l) as usize].to_vec())
            .collect())
    }

    #[track_caller]
    fn broadcast(&self, root: usize, buf: &mut Vec<u8>) -> Result<(), CommError> {
        assert!(
            root < self.size,
            "Mpi::broadcast: root {root} of {} ranks",
            self.size
        );
        self.count_call();
        let mut len = buf.len() as u64;
        let root_proc = self.world.process_at_rank(root as i32);
        mpi::request::scope(|scope| {
            let req = root_proc.immediate_broadcast_into(scope, &mut len);
            self.wait("broadcast (length)", req);
        });
        buf.resize(len as usize, 0);
        mpi::request::scope(|scope| {
            let req = root_proc.immediate_broadcast_into(scope, &mut buf[..]);
            self.wait("broadcast", req);
        });
        Ok(())
    }

    fn barrier(&self) -> Result<(), CommError> {
        self.count_call();
        let req = self.world.immediate_barrier();
        self.wait("barrier", req);
        Ok(())
    }

    fn fail(&self, reason: &str) {
        eprintln!(
            "blo: rank {} cannot go on at {}: {reason}; aborting the MPI job",
            self.rank,
            self.context.borrow()
        );
        self.world.abort(1);
    }

    fn set_context(&self, context: &str) {
        *self.context.borrow_mut() = context.to_string();
    }

    fn describe(&self) -> String {
        format!("mpi(rank {} of {})", self.rank, self.size)
    }
}

impl Drop for Mpi {
    /// Stops the heartbeat after a barrier (everyone is here, so no heartbeat
    /// can be missed while they stop); each heartbeat thread reads its peers'
    /// messages up to their goodbyes before it ends; the universe, dropped
    /// last, finalises MPI.
    fn drop(&mut self) {
        if self.heartbeat.is_some() {
            self.set_context("shutdown");
            let _ = Communicator::barrier(self);
            if let Some(mut hb) = self.heartbeat.take() {
                hb.stop.store(true, Ordering::SeqCst);
                if let Some(t) = hb.thread.take() {
                    let _ = t.join();
                }
            }
        }
    }
}
