//! Corrupt checkpoints: every truncation and one single-bit flip per byte of
//! `trainer.json` (every bit of every byte with `BLO_CORRUPT_ALL_BITS=1`), and
//! every truncation and every single-bit flip of the θ safetensors file the
//! trainer writes (a deterministic enumeration, thousands of cases per
//! format), plus 1,000 overwritten runs of random bytes per file.
//!
//! Each corrupted checkpoint is resumed. The outcome must be one of:
//! - a typed error ([`BloError::Corrupt`], [`BloError::CheckpointField`],
//!   [`BloError::SettingsMismatch`] or [`BloError::Io`]) naming the corrupted
//!   file, with nothing restored; or
//! - acceptance with the *same content*: the resumed trainer's state — θ to the
//!   bit, the step, the optimiser's state (counter, configuration, moments to
//!   the bit) and the estimator's state (adaptive q and moving averages, as
//!   bit patterns) — equals the state resumed from the intact checkpoint.
//!
//! A panic, an untyped error, an error naming another file, or an accepted
//! file whose resumed state differs is a failure. (With the content
//! fingerprint of format `blo-checkpoint/2` every changed byte of
//! `trainer.json` is refused, whitespace included; the rule above is what is
//! required, the count of accepted cases is printed.)

mod train_common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use blo::outer::{Adam, Optimiser, OptimiserState};
use blo::train::{CheckpointState, Trainer};
use blo::{BloError, Estimator, Ufo};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use tape::Tensor;
use train_common::{bits, sampler, scratch, QuadMaml, Task};

const STEPS: u64 = 4;

fn trainer() -> Trainer<'static, f64, QuadMaml, impl blo::TaskSampler<Task>, Ufo, Adam<f64>> {
    // Three θ tensors of different ranks; only the first enters the losses.
    let theta0 = vec![
        Tensor::vector(vec![0.5, -1.0, 2.0]),
        Tensor::new([2, 2], vec![0.25, 0.5, -0.75, 1.0]),
        Tensor::scalar(3.0),
    ];
    Trainer::new(
        QuadMaml::new(0.3, 3),
        sampler(3),
        // q_min = 0.5 so the exact branch runs and the moving averages are non-trivial.
        Ufo::adaptive_with(
            blo::AdaptiveParams {
                q_min: 0.5,
                decay: 0.9,
            },
            blo::Policy::Recompute,
        )
        .unwrap(),
        Adam::new(0.05),
        theta0,
    )
    .param_names(["w", "m", "s"])
    .meta_batch(4)
    .seed(9)
    .data_id("corrupt-test tasks")
    .progress(false)
}

/// What a resume restores.
#[derive(Debug, PartialEq)]
struct Resumed {
    theta: Vec<u64>,
    step: u64,
    optimiser: OptimiserState,
    estimator: Value,
}

/// Resumes from `dir` (running no further step); the outcome or the panic message.
fn resume(dir: &Path) -> Result<Result<Resumed, BloError>, String> {
    catch_unwind(AssertUnwindSafe(|| {
        let mut t = trainer().steps(STEPS).resume_from(dir);
        let fresh = bits(t.theta());
        match t.run() {
            Ok(_) => Ok(Resumed {
                theta: bits(t.theta()),
                step: t.step(),
                optimiser: t.optimiser().state(),
                estimator: Estimator::<f64, QuadMaml>::save_state(t.estimator()),
            }),
            Err(e) => {
                assert_eq!(t.step(), 0, "step restored despite {e}");
                assert_eq!(bits(t.theta()), fresh, "θ restored despite {e}");
                Err(e)
            }
        }
    }))
    .map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    })
}

fn error_path(e: &BloError) -> Option<&Path> {
    match e {
        BloError::Corrupt { path, .. }
        | BloError::CheckpointField { path, .. }
        | BloError::SettingsMismatch { path, .. }
        | BloError::Io { path, .. } => Some(path),
        _ => None,
    }
}

/// Whether to flip every bit of every byte (`BLO_CORRUPT_ALL_BITS=1`, 8× the
/// cases) rather than one bit per byte, cycling through the bit positions.
fn all_bits() -> bool {
    std::env::var_os("BLO_CORRUPT_ALL_BITS").is_some_and(|v| v == "1")
}

/// The corruptions of `original`: every truncation, then single-bit flips:
/// bit i mod 8 of every byte i, or with `all` every bit of every byte.
fn corruptions(original: &[u8], all: bool) -> impl Iterator<Item = (String, Vec<u8>)> + '_ {
    let cuts =
        (0..original.len()).map(|n| (format!("truncated to {n} bytes"), original[..n].to_vec()));
    let per_byte = if all { 8 } else { 1 };
    let flips = (0..original.len() * per_byte).map(move |k| {
        let (i, b) = if all { (k / 8, k % 8) } else { (k, k % 8) };
        let mut v = original.to_vec();
        v[i] ^= 1 << b;
        (format!("bit {b} of byte {i} flipped"), v)
    });
    cuts.chain(flips)
}

struct Tally {
    cases: usize,
    rejected: usize,
    accepted_same: usize,
}

/// Writes each corruption of `file` in `dir`, resumes, and checks the rule of
/// the module docs; returns the tally.
fn run_cases(
    dir: &Path,
    file: &Path,
    reference: &Resumed,
    cases: impl Iterator<Item = (String, Vec<u8>)>,
) -> Tally {
    let original = std::fs::read(file).unwrap();
    let mut tally = Tally {
        cases: 0,
        rejected: 0,
        accepted_same: 0,
    };
    let mut failures = Vec::new();
    for (what, bytes) in cases {
        tally.cases += 1;
        std::fs::write(file, &bytes).unwrap();
        match resume(dir) {
            Err(panic) => failures.push(format!("{what}: panicked: {panic}")),
            Ok(Err(e)) => match error_path(&e) {
                Some(p) if p == file => tally.rejected += 1,
                _ => failures.push(format!(
                    "{what}: error not naming {}: {e:?}",
                    file.display()
                )),
            },
            Ok(Ok(state)) if state == *reference => tally.accepted_same += 1,
            Ok(Ok(state)) => {
                failures.push(format!("{what}: accepted with other content: {state:?}"))
            }
        }
    }
    std::fs::write(file, original).unwrap();
    let count = |kind: &str| failures.iter().filter(|f| f.contains(kind)).count();
    assert!(
        failures.is_empty(),
        "{} of {} corruptions of {} mishandled ({} panics, {} errors not naming the file, \
         {} accepted with other content), e.g.:\n{}",
        failures.len(),
        tally.cases,
        file.display(),
        count(": panicked: "),
        count(": error not naming "),
        count(": accepted with other content: "),
        failures[..failures.len().min(8)].join("\n")
    );
    tally
}

fn checkpoint(name: &str) -> (PathBuf, Resumed) {
    let dir = scratch(name);
    trainer()
        .steps(STEPS)
        .checkpoint_every(1, &dir)
        .run()
        .unwrap();
    let reference = resume(&dir).unwrap().unwrap();
    assert_eq!(reference.step, STEPS);
    // The state is not trivial: Adam's moments and the estimator's averages are set.
    assert!(!reference.optimiser.buffers.is_empty());
    assert!(
        reference.estimator["d2"][1].as_u64().unwrap() > 0,
        "{}",
        reference.estimator
    );
    (dir, reference)
}

#[test]
fn corrupt_trainer_json_is_refused() {
    let (dir, reference) = checkpoint("corrupt-json");
    let file = dir.join(CheckpointState::STATE_FILE);
    let original = std::fs::read(&file).unwrap();
    let t = run_cases(&dir, &file, &reference, corruptions(&original, all_bits()));
    eprintln!(
        "trainer.json ({} bytes): {} cases, {} refused, {} accepted with the same content",
        original.len(),
        t.cases,
        t.rejected,
        t.accepted_same
    );
    assert_eq!(t.cases, if all_bits() { 9 } else { 2 } * original.len());
    assert!(t.cases >= 1000);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn corrupt_theta_file_is_refused() {
    let (dir, reference) = checkpoint("corrupt-theta");
    let file = dir.join(CheckpointState::theta_file_name(STEPS));
    let original = std::fs::read(&file).unwrap();
    let t = run_cases(&dir, &file, &reference, corruptions(&original, true));
    eprintln!(
        "θ file ({} bytes): {} cases, {} refused, {} accepted with the same content",
        original.len(),
        t.cases,
        t.rejected,
        t.accepted_same
    );
    assert_eq!(t.cases, 9 * original.len());
    assert!(t.cases >= 1000);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Multi-byte damage: runs of random bytes written over random places of
/// each file (a fixed-seed stream, 1,000 cases per file).
#[test]
fn overwritten_runs_are_refused() {
    let (dir, reference) = checkpoint("corrupt-runs");
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    for file in [
        dir.join(CheckpointState::STATE_FILE),
        dir.join(CheckpointState::theta_file_name(STEPS)),
    ] {
        let original = std::fs::read(&file).unwrap();
        let cases: Vec<(String, Vec<u8>)> = (0..1000)
            .map(|_| {
                let mut v = original.clone();
                let at = rng.gen_range(0..v.len());
                let n = rng.gen_range(1..=8usize).min(v.len() - at);
                for b in &mut v[at..at + n] {
                    *b = rng.gen();
                }
                (format!("{n} bytes at {at} overwritten"), v)
            })
            .collect();
        let t = run_cases(&dir, &file, &reference, cases.into_iter());
        eprintln!(
            "{}: {} cases, {} refused, {} accepted with the same content",
            file.display(),
            t.cases,
            t.rejected,
            t.accepted_same
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
