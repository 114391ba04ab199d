//! Kill-and-resume soak: a meta-training child process (this test binary
//! re-invoked on the ignored test `soak_child`) checkpoints after every step;
//! the parent kills it with SIGKILL at pseudo-random moments, at least 10
//! times, restarting it each time (it resumes from its checkpoint), and the
//! run that finally completes must end with θ, the checkpoint and the log
//! bit-identical to an uninterrupted run's.
//!
//! When to kill is drawn from a fixed-seed stream: after the checkpoint has
//! advanced a pseudo-random 0–20 steps past the child's starting step, plus a
//! pseudo-random 0–4 ms (so 12 kills always fit in the 300-step run whatever
//! the machine's speed); the exact moments they land on (start-up, resume,
//! inside a step, inside a checkpoint write) vary with the machine's timing,
//! which is the point.

mod train_common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use blo::outer::Adam;
use blo::train::{read_checkpoint, CheckpointState, StepReport, Trainer};
use blo::Ufo;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use tape::Tensor;
use train_common::{bits, sampler, scratch, QuadMaml, Task};

const STEPS: u64 = 300;
const KILLS: usize = 12;
const ENV: &str = "BLO_SOAK_DIR";

fn trainer() -> Trainer<'static, f64, QuadMaml, impl blo::TaskSampler<Task>, Ufo, Adam<f64>> {
    Trainer::new(
        QuadMaml::new(0.2, 4),
        sampler(16),
        Ufo::adaptive_with(
            blo::AdaptiveParams {
                q_min: 0.2,
                decay: 0.9,
            },
            blo::Policy::Recompute,
        )
        .unwrap(),
        Adam::new(0.02),
        vec![Tensor::vector(vec![0.25; 16]), Tensor::scalar(1.0)],
    )
    .meta_batch(4)
    .steps(STEPS)
    .seed(5)
    .threads(1)
    .data_id("soak quadratic tasks, d = 16")
    .progress(false)
}

/// The child: trains to `STEPS` in `$BLO_SOAK_DIR`, checkpointing every
/// step, resuming if a checkpoint is there.
#[test]
#[ignore = "child process of killed_and_resumed_run_is_bit_identical"]
fn soak_child() {
    let Some(dir) = std::env::var_os(ENV).map(PathBuf::from) else {
        return;
    };
    let mut t = trainer()
        .checkpoint_every(1, &dir)
        .log_jsonl(dir.join("log.jsonl"));
    if blo::train::checkpoint_exists(&dir) {
        t = t.resume_from(&dir);
    }
    let out = t.run().unwrap_or_else(|e| panic!("soak child: {e}"));
    println!("SOAK_DONE {} steps run", out.history.len());
}

fn spawn(dir: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "soak_child", "--nocapture"])
        .env(ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the soak child")
}

/// Waits for a child and checks it completed.
fn finish(child: Child) {
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("SOAK_DONE"),
        "child failed ({}):\n{text}",
        out.status
    );
}

/// The log's lines without the timing fields.
fn log_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            for f in StepReport::TIMING_FIELDS {
                v.as_object_mut().unwrap().remove(f);
            }
            v
        })
        .collect()
}

/// The step recorded in a checkpoint's JSON, if it parses (no other check).
fn checkpoint_step(dir: &Path) -> Option<u64> {
    let bytes = std::fs::read(dir.join(CheckpointState::STATE_FILE)).ok()?;
    serde_json::from_slice::<Value>(&bytes).ok()?["step"].as_u64()
}

/// Polls the checkpoint until it records at least `step` (or the child exits).
fn wait_for_step(dir: &Path, child: &mut Child, step: u64) -> bool {
    let t0 = Instant::now();
    loop {
        if checkpoint_step(dir).unwrap_or(0) >= step {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        assert!(
            t0.elapsed().as_secs() < 120,
            "the child made no progress to step {step} in 120 s"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

#[test]
fn killed_and_resumed_run_is_bit_identical() {
    let root = scratch("soak");
    // Uninterrupted, in-process.
    let straight_log = root.join("straight.jsonl");
    let straight = trainer().log_jsonl(&straight_log).run().unwrap();

    // Interrupted: each child is killed after the checkpoint has advanced by a
    // pseudo-random 0–20 steps past where it started, plus a pseudo-random
    // 0–4 ms, so kills land during start-up and resume, inside steps and
    // inside checkpoint writes.
    let dir = root.join("killed");
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(0x50a4);
    let mut kills = Vec::new();
    while kills.len() < KILLS {
        let start = checkpoint_step(&dir).unwrap_or(0);
        let target = start + rng.gen_range(0..=20u64);
        let extra = Duration::from_micros(rng.gen_range(0..4000));
        let mut child = spawn(&dir);
        if !wait_for_step(&dir, &mut child, target) {
            finish(child); // finished early: must have succeeded
            break;
        }
        std::thread::sleep(extra);
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        kills.push((target, checkpoint_step(&dir)));
    }
    assert_eq!(
        kills.len(),
        KILLS,
        "the run ended before {KILLS} kills: {kills:?}"
    );
    finish(spawn(&dir));
    eprintln!(
        "soak: {} kills (target step, checkpoint step after the kill): {kills:?}",
        kills.len()
    );
    // Kills landed mid-run, after the first checkpoint.
    let mid = kills
        .iter()
        .filter(|(_, s)| s.is_some_and(|s| s > 0 && s < STEPS))
        .count();
    assert!(mid >= KILLS / 2, "kills mid-run: {kills:?}");

    let (state, theta) = read_checkpoint::<f64>(&dir).unwrap();
    assert_eq!(state.step, STEPS);
    assert_eq!(
        bits(&theta),
        bits(&straight.theta),
        "θ differs from the uninterrupted run"
    );
    assert_ne!(bits(&theta), bits(trainer().theta()), "θ moved");
    assert_eq!(log_lines(&dir.join("log.jsonl")), log_lines(&straight_log));
    // No stale θ files are left behind (killed children may leave their
    // temporary files, `.<name>.tmp-<pid>`, which nothing reads).
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            ["log.jsonl", CheckpointState::STATE_FILE].contains(&name.as_str())
                || name == CheckpointState::theta_file_name(STEPS)
                || name.starts_with('.'),
            "stray file {name}"
        );
    }
    let _ = std::fs::remove_dir_all(&root);
}
