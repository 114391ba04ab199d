//! Checkpoint and resume: bit-identical continuation, atomic files, and errors
//! that name the file and the problem.

mod train_common;

use std::path::Path;

use blo::outer::{Adam, Sgd};
use blo::train::{checkpoint_exists, read_checkpoint, CheckpointState, StepReport, Trainer};
use blo::BloError;
use serde_json::Value;
use tape::Tensor;
use train_common::{bits, sampler, scratch, Coin, QuadMaml};

const N: u64 = 6;

fn trainer<'o>(
    theta0: Vec<Tensor<f64>>,
) -> Trainer<'o, f64, QuadMaml, impl blo::TaskSampler<train_common::Task>, Coin, Adam<f64>> {
    Trainer::new(
        QuadMaml::new(0.1, 3),
        sampler(3),
        Coin::adaptive(),
        Adam::with_schedule(blo::Schedule::linear_decay(0.05, 2 * N)),
        theta0,
    )
    .meta_batch(5)
    .seed(42)
    .progress(false)
}

/// Two θ tensors; only the first enters the losses, the second gets zero
/// gradients (its Adam moments stay zero and must survive the checkpoint too).
fn theta0() -> Vec<Tensor<f64>> {
    vec![Tensor::vector(vec![0.5, -1.0, 2.0]), Tensor::scalar(0.0)]
}

/// The log's lines with the timing fields removed.
fn log_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            for f in StepReport::TIMING_FIELDS {
                v.as_object_mut()
                    .unwrap()
                    .remove(f)
                    .expect("timing field present");
            }
            v
        })
        .collect()
}

#[test]
fn resume_continues_bit_identically() {
    let dir = scratch("resume");
    // Straight: 2N steps.
    let straight_log = dir.join("straight.jsonl");
    let mut t = trainer(theta0()).steps(2 * N).log_jsonl(&straight_log);
    let straight = t.run().unwrap();
    let ema_straight = t.estimator().ema;
    drop(t);

    // Split: N steps with a checkpoint, then a new trainer resumes for N more.
    let ckpt = dir.join("ckpt");
    let split_log = dir.join("split.jsonl");
    let first = trainer(theta0())
        .steps(N)
        .log_jsonl(&split_log)
        .checkpoint_every(4, &ckpt)
        .run()
        .unwrap();
    assert_eq!(first.history.len(), N as usize);
    assert!(checkpoint_exists(&ckpt));
    let state: CheckpointState =
        serde_json::from_slice(&std::fs::read(ckpt.join(CheckpointState::STATE_FILE)).unwrap())
            .unwrap();
    assert_eq!(state.step, N, "the final step is checkpointed");
    assert_eq!(state.param_names, ["theta.0", "theta.1"]);
    // Lines for steps after the checkpoint (as after a crash) are dropped on resume.
    let mut log = std::fs::read_to_string(&split_log).unwrap();
    // ... and a line torn by a crash (no newline) is dropped too.
    log.push_str("{\"step\": 6, \"junk\": true}\n{\"step\": 7, \"mean_ou");
    std::fs::write(&split_log, log).unwrap();

    let mut t = trainer(theta0())
        .steps(2 * N)
        .log_jsonl(&split_log)
        .resume_from(&ckpt);
    let second = t.run().unwrap();
    assert_eq!(second.history.len(), N as usize);
    assert_eq!(second.history[0].step, N);
    assert_eq!(bits(&second.theta), bits(&straight.theta));
    assert_eq!(t.estimator().ema.to_bits(), ema_straight.to_bits());
    assert_eq!(log_lines(&split_log), log_lines(&straight_log));
    assert_eq!(log_lines(&straight_log).len(), 2 * N as usize);
    // θ actually moved, so equality above is not vacuous.
    assert_ne!(bits(&straight.theta), bits(&theta0()));

    // No temporary files and no older θ files (step 4) are left behind.
    for entry in std::fs::read_dir(&ckpt).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            name == CheckpointState::theta_file_name(N) || name == CheckpointState::STATE_FILE,
            "stray file {name}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// θ is readable by any safetensors reader under its names, as f32 when training in f32.
#[test]
fn f32_checkpoint_holds_theta_under_user_names() {
    let dir = scratch("f32");
    let est = Coin::fixed(0.5);
    let out = Trainer::new(
        QuadMaml::new(0.1, 2),
        sampler(2),
        est,
        Sgd::constant(0.1),
        vec![Tensor::vector(vec![1.0_f32, -1.0])],
    )
    .param_names(["init"])
    .steps(3)
    .checkpoint_every(10, &dir)
    .progress(false)
    .run()
    .unwrap();
    let (state, back) = read_checkpoint::<f32>(&dir).unwrap();
    assert_eq!(back, out.theta);
    assert_eq!(state.step, 3);
    let file = dir.join(CheckpointState::theta_file_name(3));
    let back: Vec<Tensor<f32>> = blo::io::load_tensors(&file, &["init".to_string()]).unwrap();
    assert_eq!(back, out.theta);
    let err = blo::io::load_tensors::<f64>(&file, &["init".to_string()]).unwrap_err();
    assert!(err.to_string().contains("F32"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn make_checkpoint(name: &str) -> std::path::PathBuf {
    let dir = scratch(name);
    trainer(theta0())
        .steps(2)
        .checkpoint_every(1, &dir)
        .run()
        .unwrap();
    dir
}

fn resume_err(
    dir: &Path,
    t: Trainer<'_, f64, QuadMaml, impl blo::TaskSampler<train_common::Task>, Coin, Adam<f64>>,
) -> String {
    let mut t = t.steps(4).resume_from(dir);
    let before = bits(t.theta());
    let e = t.run().unwrap_err();
    assert!(
        matches!(
            e,
            BloError::Corrupt { .. }
                | BloError::Io { .. }
                | BloError::CheckpointField { .. }
                | BloError::SettingsMismatch { .. }
        ),
        "{e:?}"
    );
    assert_eq!(t.step(), 0, "nothing restored on error");
    assert_eq!(bits(t.theta()), before);
    e.to_string()
}

#[test]
fn flipped_byte_in_theta_file_is_reported_with_path() {
    let dir = make_checkpoint("flip");
    let p = dir.join(CheckpointState::theta_file_name(2));
    let mut bytes = std::fs::read(&p).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&p, bytes).unwrap();
    let e = resume_err(&dir, trainer(theta0()));
    assert!(
        e.contains(&p.display().to_string()) && e.contains("fingerprint"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn truncated_json_is_reported_with_path() {
    let dir = make_checkpoint("trunc");
    let p = dir.join(CheckpointState::STATE_FILE);
    let text = std::fs::read_to_string(&p).unwrap();
    std::fs::write(&p, &text[..text.len() / 2]).unwrap();
    let e = resume_err(&dir, trainer(theta0()));
    assert!(
        e.contains(&p.display().to_string()) && e.contains("bad JSON"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_checkpoint_is_an_io_error_with_path() {
    let dir = scratch("missing");
    let e = resume_err(&dir, trainer(theta0()));
    assert!(e.contains(CheckpointState::STATE_FILE), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn mismatched_run_is_reported() {
    let dir = make_checkpoint("mismatch");
    let json = dir.join(CheckpointState::STATE_FILE).display().to_string();
    // Other shapes.
    let e = resume_err(
        &dir,
        trainer(vec![Tensor::vector(vec![0.0; 4]), Tensor::scalar(0.0)]),
    );
    assert!(
        e.contains(&json) && e.contains("setting theta is") && e.contains("theta.0 [4]"),
        "{e}"
    );
    // Other seed.
    let e = resume_err(&dir, trainer(theta0()).seed(43));
    assert!(e.contains("seed is 42 in the checkpoint but 43"), "{e}");
    // Other meta-batch.
    let e = resume_err(&dir, trainer(theta0()).meta_batch(6));
    assert!(
        e.contains("setting meta_batch is 5 in the checkpoint but 6"),
        "{e}"
    );
    // Other optimiser configuration.
    let t = Trainer::new(
        QuadMaml::new(0.1, 3),
        sampler(3),
        Coin::adaptive(),
        Adam::with_schedule(blo::Schedule::linear_decay(0.07, 2 * N)),
        theta0(),
    )
    .meta_batch(5)
    .seed(42)
    .progress(false);
    let e = resume_err(&dir, t);
    assert!(
        e.contains("setting optimiser.config") && e.contains("0.07"),
        "{e}"
    );
    // θ file from another checkpoint (a torn pair).
    let other = scratch("mismatch-other");
    trainer(theta0())
        .steps(1)
        .checkpoint_every(1, &other)
        .run()
        .unwrap();
    std::fs::copy(
        other.join(CheckpointState::theta_file_name(1)),
        dir.join(CheckpointState::theta_file_name(2)),
    )
    .unwrap();
    let e = resume_err(&dir, trainer(theta0()));
    assert!(e.contains("fingerprint"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&other).unwrap();
}

/// A crash while writing the checkpoint of step 4 (θ file written, JSON not yet
/// renamed, a temporary file left over) leaves the step-2 checkpoint usable, and
/// resuming from it still gives the straight run's bits.
#[test]
fn crash_between_theta_and_json_keeps_previous_checkpoint() {
    let dir = scratch("crash");
    let straight = trainer(theta0()).steps(6).run().unwrap();
    trainer(theta0())
        .steps(2)
        .checkpoint_every(2, &dir)
        .run()
        .unwrap();
    // What a crash during the next checkpoint can leave behind.
    std::fs::write(
        dir.join(CheckpointState::theta_file_name(4)),
        b"half a file",
    )
    .unwrap();
    std::fs::write(
        dir.join(".trainer.json.tmp-12345"),
        b"{\"step\": 4, \"trunc",
    )
    .unwrap();
    let resumed = trainer(theta0()).steps(6).resume_from(&dir).run().unwrap();
    assert_eq!(resumed.history.len(), 4);
    assert_eq!(bits(&resumed.theta), bits(&straight.theta));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn corrupt_log_line_is_reported_with_path_and_line() {
    let dir = make_checkpoint("badlog");
    let log = dir.join("log.jsonl");
    std::fs::write(&log, "{\"step\": 0}\nnot json\n{\"step\": 1}\n").unwrap();
    let mut t = trainer(theta0()).steps(3).log_jsonl(&log).resume_from(&dir);
    let e = t.run().unwrap_err().to_string();
    assert!(
        e.contains(&log.display().to_string()) && e.contains("line 2"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
