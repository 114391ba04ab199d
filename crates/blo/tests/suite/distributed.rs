//! Distributed meta-training on the thread simulator ([`ThreadComm`]): any
//! number of ranks gives the one-process run bit for bit (θ after every step,
//! the meta-gradient's norm, the log, UFO's adaptive state), a run resumes
//! with another number of ranks and continues bit-identically, and a rank
//! that fails makes the others stop with an error naming it and the step.

mod common;
mod train_common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use blo::comm::{Communicator, ThreadComm};
use blo::train::{StepReport, Trainer};
use blo::{AdaptiveParams, BloError, Estimate, Estimator, Exact, InnerLoop, Policy, Sgd, Ufo};
use common::{TanhNet, Wave};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use tape::Tensor;
use train_common::{bits, scratch};

/// Tasks per meta-step: 7 splits unevenly over 2, 3 and 5 ranks.
const B: usize = 7;

/// Sinusoid regression (amplitude, phase), the MAML benchmark's tasks.
fn sampler(rng: &mut ChaCha8Rng) -> Wave {
    Wave {
        amp: rng.gen_range(0.1..5.0),
        phase: rng.gen_range(0.0..std::f64::consts::PI),
    }
}

fn problem() -> TanhNet {
    TanhNet {
        inner: InnerLoop::sgd(3, 0.05).unwrap(),
        hidden: 6,
        meta_sgd: false,
    }
}

/// UFO with adaptive q, tuned so the exact branch runs often and q moves.
fn ufo() -> Ufo {
    Ufo::adaptive_with(
        AdaptiveParams {
            q_min: 0.3,
            decay: 0.5,
        },
        Policy::StoreAll,
    )
    .unwrap()
}

/// A trainer of B tasks per step, SGD on θ, no progress bar.
fn trainer<'o, E: Estimator<f64, TanhNet>>(
    estimator: E,
) -> Trainer<'o, f64, TanhNet, impl blo::TaskSampler<Wave>, E, Sgd> {
    Trainer::new(
        problem(),
        sampler,
        estimator,
        Sgd::constant(0.05),
        problem().theta(3),
    )
    .meta_batch(B)
    .progress(false)
}

/// What a run produced, on one rank.
#[derive(Debug, PartialEq)]
struct Run {
    /// θ's bits after every step.
    thetas: Vec<Vec<u64>>,
    /// Each step's report, timings removed, as JSON (the mean loss and ‖ḡ‖ as written).
    reports: Vec<Value>,
    /// The estimator's saved state at the end.
    estimator_state: Value,
}

fn without_timings(r: &StepReport) -> Value {
    let mut v = serde_json::to_value(r).unwrap();
    for f in StepReport::TIMING_FIELDS {
        v.as_object_mut().unwrap().remove(f).unwrap();
    }
    v
}

/// Trains `steps` steps (from `resume`, if given) with checkpoints every 3
/// steps and a log, both in `dir`, as a rank of `comm` (one process if `None`).
fn train<E: Estimator<f64, TanhNet>>(
    estimator: E,
    comm: Option<&dyn Communicator>,
    dir: &Path,
    steps: u64,
    resume: bool,
) -> Result<Run, BloError> {
    let mut thetas = Vec::new();
    let mut reports = Vec::new();
    let state = {
        let t = trainer(estimator)
            .steps(steps)
            .seed(11)
            .threads(2)
            .log_jsonl(dir.join("log.jsonl"))
            .checkpoint_every(3, dir.join("ckpt"))
            .on_step_theta(|r: &StepReport, th: &[Tensor<f64>]| {
                thetas.push(bits(th));
                reports.push(without_timings(r));
            });
        let t = if resume {
            t.resume_from(dir.join("ckpt"))
        } else {
            t
        };
        let mut t = match comm {
            Some(c) => t.communicator(c),
            None => t,
        };
        t.run()?;
        t.estimator().save_state()
    };
    Ok(Run {
        thetas,
        reports,
        estimator_state: state,
    })
}

/// The log's lines without timings.
fn log(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            for f in StepReport::TIMING_FIELDS {
                v.as_object_mut().unwrap().remove(f).unwrap();
            }
            v
        })
        .collect()
}

/// Runs `n` ranks on threads; each returns its run.
fn ranks<E: Estimator<f64, TanhNet>>(
    n: usize,
    estimator: impl Fn() -> E + Sync,
    dir: &Path,
    steps: u64,
    resume: bool,
) -> Vec<Run> {
    ThreadComm::spawn(n, |comm| {
        train(estimator(), Some(&comm), dir, steps, resume).unwrap()
    })
    .into_iter()
    .map(|r| r.expect("no rank panics"))
    .collect()
}

fn same_as_one_process<E: Estimator<f64, TanhNet>>(name: &str, estimator: impl Fn() -> E + Sync) {
    const K: u64 = 6;
    let one_dir = scratch(&format!("dist-one-{name}"));
    let one = train(estimator(), None, &one_dir, K, false).unwrap();
    let one_log = log(&one_dir);
    assert_eq!(one_log.len(), K as usize);
    assert_eq!(one_log, one.reports);
    for n in [1, 2, 3, 5] {
        let dir = scratch(&format!("dist-{name}-{n}"));
        let runs = ranks(n, &estimator, &dir, K, false);
        for (rank, run) in runs.iter().enumerate() {
            assert_eq!(
                run, &one,
                "{name}: rank {rank} of {n} differs from the one-process run"
            );
        }
        assert_eq!(log(&dir), one_log, "{name}: the log of {n} ranks differs");
        let (state, theta) = blo::train::read_checkpoint::<f64>(&dir.join("ckpt")).unwrap();
        assert_eq!(state.step, K);
        assert_eq!(bits(&theta), *one.thetas.last().unwrap());
    }
}

#[test]
fn ufo_adaptive_on_1_2_3_5_ranks_equals_one_process_bit_for_bit() {
    // The test means something only if the exact branch ran and q moved.
    let dir = scratch("dist-ufo-probe");
    let run = train(ufo(), None, &dir, 6, false).unwrap();
    let branches: u64 = run
        .reports
        .iter()
        .map(|r| r["stats"]["exact_branches"].as_u64().unwrap())
        .sum();
    assert!(branches > 0, "no exact branch ran");
    assert_ne!(
        run.estimator_state,
        Estimator::<f64, TanhNet>::save_state(&ufo()),
        "q never adapted"
    );
    same_as_one_process("ufo", ufo);
}

#[test]
fn exact_on_1_2_3_5_ranks_equals_one_process_bit_for_bit() {
    same_as_one_process("exact", || Exact::new(Policy::Recompute).unwrap());
}

#[test]
fn resume_with_another_rank_count_continues_bit_identically() {
    const K: u64 = 8;
    let ref_dir = scratch("dist-resume-ref");
    let full = train(ufo(), None, &ref_dir, K, false).unwrap();
    let full_log = log(&ref_dir);
    // (ranks before the stop, ranks after): the checkpoint of step 6 (every 3 steps) is resumed.
    for (before, after) in [(3, 2), (1, 5), (2, 1)] {
        let dir = scratch(&format!("dist-resume-{before}-{after}"));
        let first = ranks(before, ufo, &dir, 6, false);
        assert_eq!(first[0].thetas[..], full.thetas[..6]);
        let second = if after == 1 {
            vec![train(ufo(), None, &dir, K, true).unwrap()]
        } else {
            ranks(after, ufo, &dir, K, true)
        };
        for (rank, run) in second.iter().enumerate() {
            assert_eq!(
                run.thetas[..],
                full.thetas[6..],
                "{before} -> {after} ranks: rank {rank}'s θ differs after the resume"
            );
            assert_eq!(run.reports[..], full.reports[6..]);
            assert_eq!(run.estimator_state, full.estimator_state);
        }
        assert_eq!(
            log(&dir),
            full_log,
            "{before} -> {after} ranks: log differs"
        );
    }
}

/// An estimator that behaves like `E` until its `fail_at`-th call (counted
/// on this rank), where it errors or panics.
struct Faulty<E> {
    inner: E,
    fail_at: usize,
    panic: bool,
    calls: AtomicUsize,
}

impl<E: Estimator<f64, TanhNet>> Estimator<f64, TanhNet> for Faulty<E> {
    fn estimate(
        &self,
        problem: &TanhNet,
        task: &Wave,
        theta: &[Tensor<f64>],
        rng: &mut ChaCha8Rng,
    ) -> Result<Estimate<f64>, BloError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) == self.fail_at {
            if self.panic {
                panic!("planted panic");
            }
            return Err(BloError::SolverFailed {
                solver: "planted",
                reason: "planted failure".into(),
            });
        }
        self.inner.estimate(problem, task, theta, rng)
    }
    fn name(&self) -> String {
        Estimator::<f64, TanhNet>::name(&self.inner)
    }
}

/// 3 ranks, B = 7: rank 2 holds tasks 5 and 6 and fails at its 4th call,
/// task 6 of step 1 (one thread per rank so the calls come in task order).
fn failing_run(panic: bool) -> Vec<std::thread::Result<Result<Run, BloError>>> {
    ThreadComm::spawn(3, |comm| {
        let est = Faulty {
            inner: Exact::new(Policy::Recompute).unwrap(),
            fail_at: if comm.rank() == 2 { 3 } else { usize::MAX },
            panic,
            calls: AtomicUsize::new(0),
        };
        let mut t = trainer(est).steps(4).threads(1).communicator(&comm);
        t.run().map(|o| Run {
            thetas: vec![bits(&o.theta)],
            reports: vec![],
            estimator_state: Value::Null,
        })
    })
}

fn assert_names_rank_2_step_1(r: &Result<Run, BloError>, what: &str) {
    match r {
        Err(BloError::RankFailed {
            rank: 2,
            step: 1,
            reason,
        }) => {
            assert!(reason.contains(what), "{reason}")
        }
        other => panic!("expected rank 2 failing at step 1, got {other:?}"),
    }
}

#[test]
fn a_rank_whose_task_errors_stops_every_rank_naming_it() {
    let out = failing_run(false);
    for r in &out[..2] {
        assert_names_rank_2_step_1(
            r.as_ref().unwrap(),
            "task 6: planted failed: planted failure",
        );
    }
    // The failing rank has its own typed error.
    match out[2].as_ref().unwrap() {
        Err(BloError::SolverFailed { solver, .. }) => assert_eq!(*solver, "planted"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_rank_that_panics_stops_every_rank_naming_it() {
    let out = failing_run(true);
    for r in &out[..2] {
        assert_names_rank_2_step_1(r.as_ref().unwrap(), "panicked: planted panic");
    }
    assert!(out[2].is_err(), "rank 2's panic is resumed on rank 2");
}

#[test]
fn a_stuck_rank_is_reported_within_the_timeout_never_a_hang() {
    let started = Instant::now();
    let out = ThreadComm::spawn_with_timeout(2, Duration::from_secs(1), |comm| {
        let mut t = trainer(Exact::new(Policy::Recompute).unwrap())
            .steps(3)
            .threads(1)
            .on_step(|r: &StepReport| {
                if comm.rank() == 1 && r.step == 1 {
                    std::thread::sleep(Duration::from_secs(4));
                }
            })
            .communicator(&comm);
        t.run().map(|_| ())
    });
    match out[0].as_ref().unwrap() {
        Err(BloError::RankFailed {
            rank: 1,
            step: 2,
            reason,
        }) => {
            assert!(
                reason.contains("did not join all_gather within 1 s"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    // Rank 1 comes back to find rank 0 gone.
    match out[1].as_ref().unwrap() {
        Err(BloError::RankFailed {
            rank: 0, step: 2, ..
        }) => {}
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[test]
fn ranks_given_other_settings_are_refused_naming_the_setting() {
    let out = ThreadComm::spawn(3, |comm| {
        let seed = if comm.rank() == 1 { 12 } else { 11 };
        let mut t = trainer(Exact::new(Policy::Recompute).unwrap())
            .seed(seed)
            .steps(2)
            .communicator(&comm);
        t.run().map(|_| ())
    });
    for r in out {
        match r.unwrap() {
            Err(BloError::RankFailed {
                rank: 1,
                step: 0,
                reason,
            }) => {
                assert_eq!(reason, "setting seed is 12 on rank 1 but 11 on rank 0")
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn rank_0_failing_to_write_its_checkpoint_stops_the_others() {
    let dir = scratch("dist-ckpt-fail");
    // A file where the checkpoint directory should be.
    std::fs::write(dir.join("ckpt"), b"not a directory").unwrap();
    let out = ThreadComm::spawn(2, |comm| {
        train(
            Exact::new(Policy::Recompute).unwrap(),
            Some(&comm),
            &dir,
            6,
            false,
        )
        .map(|_| ())
    });
    match out[0].as_ref().unwrap() {
        Err(BloError::Io { path, .. }) => assert!(path.ends_with("ckpt"), "{path:?}"),
        other => panic!("{other:?}"),
    }
    match out[1].as_ref().unwrap() {
        Err(BloError::RankFailed {
            rank: 0,
            step: 3,
            reason,
        }) => {
            assert!(reason.contains("ckpt"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_theta_file_has_the_same_bytes_whatever_the_hash_order_of_its_metadata() {
    // Ranks and runs are separate processes, each with its own HashMap
    // order; so are these maps (each RandomState has its own keys).
    let names: Vec<String> = ["w", "b", "Z", "_a"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let theta: Vec<Tensor<f64>> = (0..4).map(|i| Tensor::vector(vec![i as f64; 3])).collect();
    let files: Vec<Vec<u8>> = (0..16)
        .map(|_| {
            let meta = (0..8)
                .map(|i| (format!("key{i}"), format!("{i}")))
                .collect();
            blo::io::tensors_to_bytes(&names, &theta, Some(meta))
        })
        .collect();
    for f in &files[1..] {
        assert_eq!(f, &files[0]);
    }
}
