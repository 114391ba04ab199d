//! Trust in meta-training: every checkpoint field checked on load, every run
//! setting compared on resume (with an explicit force), and bad
//! hyperparameters reported as typed errors before the first step, never as a
//! panic or a silent NaN mid-run.

mod train_common;

use std::path::{Path, PathBuf};

use blo::outer::{Adam, Optimiser, Schedule, Sgd};
use blo::train::{CheckpointState, Trainer};
use blo::{BloError, Estimator, Exact, InnerLoop, InnerOptimizer, Policy, Problem, Ufo};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use tape::{Real, Tape, Tensor, Var};
use train_common::{bits, rewrite_checkpoint as rewrite, sampler, scratch, Coin, QuadMaml, Task};

type BoxEst = Box<dyn Estimator<f64, QuadMaml>>;
type BoxOpt = Box<dyn Optimiser<f64>>;

/// The settings a test trainer is built from; each mismatch case changes one.
#[derive(Clone)]
struct Cfg {
    seed: u64,
    b: usize,
    r: usize,
    alpha: f64,
    momentum: Option<f64>,
    estimator: &'static str,
    optimiser: &'static str,
    lr: f64,
    d: usize,
    data: Option<&'static str>,
}

const BASE: Cfg = Cfg {
    seed: 42,
    b: 3,
    r: 2,
    alpha: 0.1,
    momentum: None,
    estimator: "ufo-adaptive",
    optimiser: "adam",
    lr: 0.05,
    d: 3,
    data: Some("quad-tasks v1"),
};

fn build(
    cfg: &Cfg,
) -> Trainer<'static, f64, QuadMaml, impl blo::TaskSampler<Task>, BoxEst, BoxOpt> {
    let mut problem = QuadMaml::new(cfg.alpha, cfg.r);
    if let Some(beta) = cfg.momentum {
        problem.inner = InnerLoop::momentum(cfg.r, cfg.alpha, beta).unwrap();
    }
    let est: BoxEst = match cfg.estimator {
        "ufo-adaptive" => Box::new(Ufo::adaptive()),
        "ufo-0.5" => Box::new(Ufo::fixed(0.5).unwrap()),
        "coin" => Box::new(Coin::adaptive()),
        e => panic!("{e}"),
    };
    let opt: BoxOpt = match cfg.optimiser {
        "adam" => Box::new(Adam::new(cfg.lr)),
        "sgd" => Box::new(Sgd::constant(cfg.lr)),
        o => panic!("{o}"),
    };
    let theta0 = vec![Tensor::vector(vec![0.5; cfg.d]), Tensor::scalar(0.0)];
    let mut t = Trainer::new(problem, sampler(cfg.d), est, opt, theta0)
        .meta_batch(cfg.b)
        .seed(cfg.seed)
        .progress(false);
    if let Some(id) = cfg.data {
        t = t.data_id(id);
    }
    t
}

/// A checkpoint after 3 steps of the base configuration.
fn base_checkpoint(name: &str) -> PathBuf {
    let dir = scratch(name);
    build(&BASE)
        .steps(3)
        .checkpoint_every(1, &dir)
        .run()
        .unwrap();
    dir
}

fn json(dir: &Path) -> PathBuf {
    dir.join(CheckpointState::STATE_FILE)
}

/// Resumes `cfg` from `dir` for 2 more steps; on error checks nothing was
/// restored and returns the error.
fn resume(dir: &Path, cfg: &Cfg, force: bool) -> Result<Vec<blo::train::SettingDiff>, BloError> {
    let mut t = build(cfg).steps(5).resume_from(dir).force_resume(force);
    let before = bits(t.theta());
    match t.run() {
        Ok(out) => {
            assert_eq!(t.step(), 5);
            assert_eq!(out.history.len(), 2);
            Ok(t.resume_overrides().to_vec())
        }
        Err(e) => {
            assert_eq!(t.step(), 0, "nothing restored on error: {e}");
            assert_eq!(bits(t.theta()), before, "θ untouched on error: {e}");
            assert!(t.resume_overrides().is_empty());
            Err(e)
        }
    }
}

/// Every recorded setting has a case here that changes it alone; resuming is
/// then refused with a `SettingsMismatch` naming that setting and both
/// values, and accepted with `force_resume`, which reports exactly that
/// difference.
#[test]
fn every_setting_is_compared_on_resume() {
    let dir = base_checkpoint("settings");
    let cases: Vec<(&str, Cfg)> = vec![
        ("seed", Cfg { seed: 43, ..BASE }),
        ("meta_batch", Cfg { b: 4, ..BASE }),
        ("inner.steps", Cfg { r: 3, ..BASE }),
        ("inner.optimizer", Cfg { alpha: 0.2, ..BASE }),
        (
            "inner.optimizer",
            Cfg {
                momentum: Some(0.5),
                ..BASE
            },
        ),
        (
            "estimator",
            Cfg {
                estimator: "ufo-0.5",
                ..BASE
            },
        ),
        (
            "estimator",
            Cfg {
                estimator: "coin",
                ..BASE
            },
        ),
        (
            "optimiser",
            Cfg {
                optimiser: "sgd",
                ..BASE
            },
        ),
        ("optimiser.config", Cfg { lr: 0.06, ..BASE }),
        ("theta", Cfg { d: 4, ..BASE }),
        (
            "data",
            Cfg {
                data: Some("quad-tasks v2"),
                ..BASE
            },
        ),
        ("data", Cfg { data: None, ..BASE }),
    ];
    let here = build(&BASE).settings();
    let stored: CheckpointState =
        serde_json::from_slice(&std::fs::read(json(&dir)).unwrap()).unwrap();
    assert_eq!(
        stored.settings.as_ref(),
        Some(&here),
        "the checkpoint records the run's settings"
    );
    // Every setting but the dtype (checked as a field, see below) has a case.
    for key in here.keys() {
        assert!(
            key == "dtype" || cases.iter().any(|(f, _)| f == key),
            "setting {key} has no mismatch case"
        );
    }
    for (field, cfg) in &cases {
        let run = build(cfg).settings();
        let e = resume(&dir, cfg, false).unwrap_err();
        match &e {
            BloError::SettingsMismatch {
                path,
                field: f,
                checkpoint,
                run: r,
            } => {
                assert_eq!(path, &json(&dir), "{e}");
                assert_eq!(f, field, "{e}");
                assert_eq!(checkpoint, &here[*field], "{e}");
                assert_eq!(r, &run[*field], "{e}");
                assert_ne!(checkpoint, r);
            }
            e => panic!("{field}: expected a settings mismatch, got {e:?}"),
        }
        let msg = e.to_string();
        assert!(
            msg.contains("force"),
            "the message says how to override: {msg}"
        );
        // Forced: continues, reporting the difference — except for what can never
        // be forced (θ's layout, the optimiser's kind).
        match (*field, resume(&dir, cfg, true)) {
            ("theta", Err(BloError::SettingsMismatch { field, .. })) => assert_eq!(field, "theta"),
            ("optimiser", Err(BloError::CheckpointField { field, .. })) => {
                assert_eq!(field, "optimiser")
            }
            (f, Ok(diffs)) => {
                assert_eq!(diffs.len(), 1, "{f}: {diffs:?}");
                assert_eq!(diffs[0].field, f);
                assert_eq!(diffs[0].checkpoint, here[f]);
                assert_eq!(diffs[0].run, run[f]);
            }
            (f, r) => panic!("{f}: forced resume gave {r:?}"),
        }
    }
    // The unchanged configuration resumes with no override.
    assert_eq!(resume(&dir, &BASE, false).unwrap(), vec![]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A forced resume continues with the new settings and records them, so the
/// next resume with the same new settings needs no force.
#[test]
fn forced_resume_records_the_new_settings() {
    let dir = base_checkpoint("force-record");
    let new = Cfg {
        lr: 0.01,
        b: 5,
        ..BASE
    };
    let diffs = resume(&dir, &new, true).unwrap();
    let fields: Vec<&str> = diffs.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(fields, ["meta_batch", "optimiser.config"]);
    // The forced run ran 2 steps but wrote no checkpoint; write one now.
    let mut t = build(&new)
        .steps(6)
        .resume_from(&dir)
        .force_resume(true)
        .checkpoint_every(1, &dir);
    t.run().unwrap();
    let mut t = build(&new).steps(7).resume_from(&dir);
    t.run().unwrap();
    assert!(t.resume_overrides().is_empty());
    assert!(matches!(
        resume(&dir, &BASE, false),
        Err(BloError::SettingsMismatch { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The rewrite helper itself produces an accepted file when it changes
/// nothing (so the rejections below are due to the edits).
#[test]
fn rewrite_without_edit_is_accepted() {
    let dir = base_checkpoint("rewrite-noop");
    rewrite(&dir, |_| {});
    resume(&dir, &BASE, false).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Each edit makes a value no run can write; resume reports the field and
/// the value, naming the file, and restores nothing.
#[test]
fn every_checkpoint_field_is_validated() {
    let nan = f64::NAN.to_bits();
    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, &str, Edit)> = vec![
        // Adaptive UFO's q and moving averages.
        (
            "estimator_state",
            "q = NaN",
            Box::new(move |v| v["estimator_state"]["q"] = nan.into()),
        ),
        (
            "estimator_state",
            "q = 0 ",
            Box::new(|v| v["estimator_state"]["q"] = 0.0f64.to_bits().into()),
        ),
        (
            "estimator_state",
            "q = 1.5",
            Box::new(|v| v["estimator_state"]["q"] = 1.5f64.to_bits().into()),
        ),
        (
            "estimator_state",
            "q = -0.5",
            Box::new(|v| v["estimator_state"]["q"] = (-0.5f64).to_bits().into()),
        ),
        (
            "estimator_state",
            "q = 0.01",
            Box::new(|v| v["estimator_state"]["q"] = 0.01f64.to_bits().into()),
        ),
        (
            "estimator_state",
            "q = inf",
            Box::new(|v| v["estimator_state"]["q"] = f64::INFINITY.to_bits().into()),
        ),
        (
            "estimator_state",
            "missing q",
            Box::new(|v| {
                v["estimator_state"].as_object_mut().unwrap().remove("q");
            }),
        ),
        (
            "estimator_state",
            "d2 moving average = NaN",
            Box::new(move |v| v["estimator_state"]["d2"][0] = nan.into()),
        ),
        (
            "estimator_state",
            "c_det moving average = -2",
            Box::new(|v| v["estimator_state"]["c_det"][0] = (-2.0f64).to_bits().into()),
        ),
        (
            "estimator_state",
            "v2 moving average = inf",
            Box::new(|v| v["estimator_state"]["v2"][0] = f64::INFINITY.to_bits().into()),
        ),
        (
            "estimator_state",
            "sample counters",
            Box::new(|v| v["estimator_state"]["v2"][1] = 1_000_000.into()),
        ),
        (
            "estimator_state",
            "with 0 samples",
            Box::new(|v| v["estimator_state"]["c_det"][1] = 0.into()),
        ),
        (
            "estimator_state",
            "q_min = 0.1",
            Box::new(|v| v["estimator_state"]["q_min"] = 0.1f64.to_bits().into()),
        ),
        // The outer optimiser.
        (
            "optimiser.buffers.m.0",
            "element 1: NaN",
            Box::new(move |v| v["optimiser"]["buffers"][0][1]["bits"][1] = nan.into()),
        ),
        (
            "optimiser.buffers.v.0",
            "element 2: -0.25",
            Box::new(|v| v["optimiser"]["buffers"][2][1]["bits"][2] = (-0.25f64).to_bits().into()),
        ),
        (
            "optimiser.buffers.m.0",
            "shape [2]",
            Box::new(|v| {
                let b = &mut v["optimiser"]["buffers"][0][1];
                b["shape"] = serde_json::json!([2]);
                b["bits"].as_array_mut().unwrap().pop();
            }),
        ),
        (
            "optimiser.buffers.m.1",
            "[3]",
            Box::new(|v| v["optimiser"]["buffers"][1][1]["shape"] = serde_json::json!([3])),
        ),
        (
            "optimiser.buffers",
            "1 m and 1 v buffers",
            Box::new(|v| {
                let b = v["optimiser"]["buffers"].as_array_mut().unwrap();
                b.remove(3);
                b.remove(1);
            }),
        ),
        (
            "optimiser.step",
            "4",
            Box::new(|v| v["optimiser"]["step"] = 4.into()),
        ),
        (
            "optimiser.buffers[0]",
            "\"v.0\"",
            Box::new(|v| v["optimiser"]["buffers"][0][0] = "v.0".into()),
        ),
        // The trainer's own fields.
        (
            "theta_file",
            "theta-00000002",
            Box::new(|v| v["theta_file"] = CheckpointState::theta_file_name(2).into()),
        ),
        (
            "theta_file",
            "theta-00000003",
            Box::new(|v| v["step"] = 4.into()),
        ),
        ("meta_batch", "0", Box::new(|v| v["meta_batch"] = 0.into())),
        (
            "elapsed_seconds",
            "-1",
            Box::new(|v| v["elapsed_seconds"] = (-1.0).into()),
        ),
        (
            "param_names",
            "theta.0",
            Box::new(|v| v["param_names"][1] = "theta.0".into()),
        ),
        (
            "param_names",
            "3 names for 2 shapes",
            Box::new(|v| v["param_names"].as_array_mut().unwrap().push("x".into())),
        ),
        (
            "theta_fingerprint",
            "XYZ",
            Box::new(|v| v["theta_fingerprint"] = "XYZ".into()),
        ),
        (
            "format",
            "blo-checkpoint/9",
            Box::new(|v| v["format"] = "blo-checkpoint/9".into()),
        ),
        ("dtype", "f32", Box::new(|v| v["dtype"] = "f32".into())),
        (
            "settings",
            "(absent)",
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("settings");
            }),
        ),
    ];
    let dir = base_checkpoint("fields");
    let pristine = std::fs::read(json(&dir)).unwrap();
    for (field, needle, edit) in &cases {
        std::fs::write(json(&dir), &pristine).unwrap();
        rewrite(&dir, edit);
        let e = resume(&dir, &BASE, false).unwrap_err();
        match &e {
            BloError::CheckpointField { path, field: f, .. } => {
                assert_eq!(path, &json(&dir), "{e}");
                assert_eq!(f, field, "{e}");
            }
            e => panic!("{field} / {needle}: expected a CheckpointField error, got {e:?}"),
        }
        let msg = e.to_string();
        assert!(msg.contains(needle), "{field}: {needle:?} not in {msg}");
        // Not even force accepts a corrupt field.
        assert!(
            resume(&dir, &BASE, true).is_err(),
            "{field} / {needle}: forced"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The adaptive estimator's own check, without a trainer: a NaN q would make
/// `rng < q` always false (training silently first order).
#[test]
fn adaptive_ufo_refuses_nan_q() {
    let mut ufo = Ufo::adaptive();
    let mut state = Estimator::<f64, QuadMaml>::save_state(&ufo);
    state["q"] = f64::NAN.to_bits().into();
    let e = Estimator::<f64, QuadMaml>::load_state(&mut ufo, &state).unwrap_err();
    assert!(e.contains("q = NaN"), "{e}");
    assert_eq!(ufo.q(), 0.05, "unchanged");
    state["q"] = 0.5f64.to_bits().into();
    Estimator::<f64, QuadMaml>::load_state(&mut ufo, &state).unwrap();
    assert_eq!(ufo.q(), 0.5);
}

/// A checkpoint of the format before settings were recorded: refused with a
/// message that says so and how to force; accepted with force (field checks
/// still apply), continuing to the same θ as an uninterrupted run.
#[test]
fn legacy_checkpoint_needs_force() {
    let dir = base_checkpoint("legacy");
    let straight = build(&BASE).steps(5).run().unwrap();
    let p = json(&dir);
    let mut v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    let o = v.as_object_mut().unwrap();
    o.remove("settings");
    o.remove("content_fingerprint");
    o.insert("format".into(), CheckpointState::LEGACY_FORMAT.into());
    std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    let e = resume(&dir, &BASE, false).unwrap_err();
    match &e {
        BloError::SettingsMismatch {
            field, checkpoint, ..
        } => {
            assert_eq!(field, "settings");
            assert!(checkpoint.contains("blo-checkpoint/1"), "{e}");
        }
        e => panic!("{e:?}"),
    }
    assert!(e.to_string().contains("--force"), "{e}");
    let mut t = build(&BASE).steps(5).resume_from(&dir).force_resume(true);
    let out = t.run().unwrap();
    assert_eq!(t.resume_overrides()[0].field, "settings");
    assert_eq!(bits(&out.theta), bits(&straight.theta));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A checkpoint written in f64 is refused by an f32 run, naming the dtype field.
#[test]
fn other_dtype_is_a_field_error() {
    let dir = base_checkpoint("dtype");
    let mut t = Trainer::new(
        QuadMaml::new(0.1, 2),
        sampler(3),
        Coin::adaptive(),
        Adam::new(0.05),
        vec![Tensor::vector(vec![0.5_f32; 3]), Tensor::scalar(0.0)],
    )
    .steps(5)
    .resume_from(&dir);
    match t.run().unwrap_err() {
        BloError::CheckpointField { field, value, .. } => {
            assert_eq!(field, "dtype");
            assert_eq!(value, "f64");
        }
        e => panic!("{e:?}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------
// Hyperparameters: typed errors before the first step.

/// Runs `t` for 3 steps and returns its error, checking that no step ran.
fn run_err<S, E, O>(t: Trainer<'_, f64, QuadMaml, S, E, O>) -> BloError
where
    S: blo::TaskSampler<Task>,
    E: Estimator<f64, QuadMaml>,
    O: Optimiser<f64>,
{
    let before = bits(t.theta());
    let mut t = t.steps(3);
    let e = t.run().unwrap_err();
    assert_eq!(t.step(), 0, "{e}");
    assert_eq!(bits(t.theta()), before);
    e
}

fn quad<O: Optimiser<f64>>(
    opt: O,
) -> Trainer<'static, f64, QuadMaml, impl blo::TaskSampler<Task>, Coin, O> {
    Trainer::new(
        QuadMaml::new(0.1, 2),
        sampler(2),
        Coin::fixed(0.5),
        opt,
        vec![Tensor::vector(vec![0.5, -0.5])],
    )
    .progress(false)
}

fn assert_invalid(e: &BloError, name: &str, value: &str) {
    match e {
        BloError::InvalidHyperparameter {
            name: n, value: v, ..
        } => {
            assert_eq!(*n, name, "{e}");
            assert!(v.contains(value), "{value:?} not in {e}");
        }
        e => panic!("expected InvalidHyperparameter {name}, got {e:?}"),
    }
}

#[test]
fn trainer_settings_are_checked_before_the_first_step() {
    assert_invalid(
        &run_err(quad(Sgd::constant(0.1)).meta_batch(0)),
        "meta_batch",
        "0",
    );
    assert_invalid(
        &run_err(quad(Sgd::constant(0.1)).threads(0)),
        "threads",
        "0",
    );
    assert_invalid(
        &run_err(quad(Sgd::constant(0.1)).checkpoint_every(0, "unused-dir")),
        "checkpoint_every",
        "0",
    );
    let e = run_err(Trainer::new(
        QuadMaml::new(0.1, 2),
        sampler(2),
        Coin::fixed(0.5),
        Sgd::constant(0.1),
        vec![Tensor::vector(vec![0.5, f64::NAN])],
    ));
    assert_invalid(&e, "theta", "theta.0 element 1 = NaN");
    // An optimiser that already took steps cannot be matched to the trainer's count.
    let mut opt = Sgd::constant(0.1);
    Optimiser::<f64>::step(&mut opt, &mut [Tensor::scalar(0.0)], &[Tensor::scalar(1.0)]);
    assert_invalid(&run_err(quad(opt)), "optimiser", "1 steps taken");
    // Validate is also callable up front, with the same answer.
    assert!(quad(Sgd::constant(0.1)).meta_batch(0).validate().is_err());
    assert!(quad(Sgd::constant(0.1)).validate().is_ok());
}

/// Every schedule constructor with every kind of bad value.
#[test]
fn bad_schedules_are_typed_errors() {
    let nan = f64::NAN;
    let inf = f64::INFINITY;
    let cases: Vec<(Schedule, &str, &str)> = vec![
        (Schedule::constant(nan), "Schedule::constant eta", "NaN"),
        (Schedule::constant(-0.1), "Schedule::constant eta", "-0.1"),
        (Schedule::constant(inf), "Schedule::constant eta", "inf"),
        (
            Schedule::linear_decay(nan, 10),
            "Schedule::linear_decay eta0",
            "NaN",
        ),
        (
            Schedule::linear_decay(-1.0, 10),
            "Schedule::linear_decay eta0",
            "-1",
        ),
        (
            Schedule::linear_decay(inf, 10),
            "Schedule::linear_decay eta0",
            "inf",
        ),
        (
            Schedule::inverse_time(nan, 1.0),
            "Schedule::inverse_time scale",
            "NaN",
        ),
        (
            Schedule::inverse_time(-10.0, 1.0),
            "Schedule::inverse_time scale",
            "-10",
        ),
        (
            Schedule::inverse_time(inf, 1.0),
            "Schedule::inverse_time scale",
            "inf",
        ),
        (
            Schedule::inverse_time(10.0, 0.0),
            "Schedule::inverse_time offset",
            "0",
        ),
        (
            Schedule::inverse_time(10.0, -1.0),
            "Schedule::inverse_time offset",
            "-1",
        ),
        (
            Schedule::inverse_time(10.0, nan),
            "Schedule::inverse_time offset",
            "NaN",
        ),
        (
            Schedule::inverse_time(10.0, inf),
            "Schedule::inverse_time offset",
            "inf",
        ),
    ];
    for (s, name, value) in cases {
        assert_invalid(&s.validate().unwrap_err(), name, value);
        assert_invalid(&run_err(quad(Sgd::new(s.clone()))), name, value);
        assert_invalid(&run_err(quad(Adam::with_schedule(s))), name, value);
    }
    // Valid edge values.
    for s in [
        Schedule::constant(0.0),
        Schedule::linear_decay(0.0, 0),
        Schedule::inverse_time(0.0, 1e-300),
    ] {
        s.validate().unwrap();
        quad(Sgd::new(s)).steps(2).run().unwrap();
    }
    // A custom schedule cannot be checked ahead: its first bad η_k stops the
    // run before that step, θ after the last good one.
    let s = Schedule::custom("drops-below-zero", |k| 0.1 - 0.04 * k as f64);
    let mut t = quad(Sgd::new(s)).steps(5);
    let e = t.run().unwrap_err();
    assert_invalid(&e, "learning rate", "eta_3 = ");
    assert_eq!(t.step(), 3);
    let good = quad(Sgd::new(Schedule::custom("drops-below-zero", |k| {
        0.1 - 0.04 * k as f64
    })))
    .steps(3)
    .run()
    .unwrap();
    assert_eq!(bits(t.theta()), bits(&good.theta));
    let mut t = quad(Sgd::new(Schedule::custom("nan", |_| f64::NAN))).steps(2);
    assert_invalid(&t.run().unwrap_err(), "learning rate", "eta_0 = NaN");
}

/// Inner-loop configs written as literals (bypassing the checked
/// constructors) are checked by the trainer.
#[test]
fn bad_inner_loops_are_typed_errors() {
    let cases: Vec<(InnerLoop, &str, &str)> = vec![
        (
            InnerLoop {
                steps: 0,
                optimizer: InnerOptimizer::Sgd { lr: 0.1 },
            },
            "steps",
            "0",
        ),
        (
            InnerLoop {
                steps: 2,
                optimizer: InnerOptimizer::Sgd { lr: -0.1 },
            },
            "lr",
            "-0.1",
        ),
        (
            InnerLoop {
                steps: 2,
                optimizer: InnerOptimizer::Sgd { lr: f64::NAN },
            },
            "lr",
            "NaN",
        ),
        (
            InnerLoop {
                steps: 2,
                optimizer: InnerOptimizer::Momentum {
                    lr: f64::INFINITY,
                    beta: 0.5,
                },
            },
            "lr",
            "inf",
        ),
        (
            InnerLoop {
                steps: 2,
                optimizer: InnerOptimizer::Momentum { lr: 0.1, beta: 1.0 },
            },
            "beta",
            "1",
        ),
        (
            InnerLoop {
                steps: 2,
                optimizer: InnerOptimizer::Momentum {
                    lr: 0.1,
                    beta: -0.5,
                },
            },
            "beta",
            "-0.5",
        ),
        (
            InnerLoop {
                steps: 2,
                optimizer: InnerOptimizer::Momentum {
                    lr: 0.1,
                    beta: f64::NAN,
                },
            },
            "beta",
            "NaN",
        ),
    ];
    for (inner, name, value) in cases {
        let mut problem = QuadMaml::new(0.1, 2);
        problem.inner = inner;
        let t = Trainer::new(
            problem,
            sampler(2),
            Coin::fixed(0.5),
            Sgd::constant(0.1),
            vec![Tensor::vector(vec![0.5, -0.5])],
        );
        assert_invalid(&run_err(t), name, value);
    }
}

// Meta-SGD: φ_0 = w (θ[0]), steps α = θ[k] elementwise.

/// L_in = L_out = ½‖φ − c‖² on φ_0 = θ[0]; the inner loop is Meta-SGD with
/// `lr_index`.
struct MetaQuad {
    inner: InnerLoop,
}

impl Problem<f64> for MetaQuad {
    type Task = f64;
    fn inner_loop(&self) -> &InnerLoop {
        &self.inner
    }
    fn inner_loss<'t, T: Real<Base = f64>>(
        &self,
        _t: &'t Tape<T>,
        c: &f64,
        _j: usize,
        _th: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        (phi[0] - *c).square().sum() * 0.5
    }
    fn outer_loss<'t, T: Real<Base = f64>>(
        &self,
        t: &'t Tape<T>,
        c: &f64,
        th: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        self.inner_loss(t, c, 1, th, phi)
    }
    fn initial_state<'t, T: Real<Base = f64>>(
        &self,
        _t: &'t Tape<T>,
        _c: &f64,
        theta: &[Var<'t, T>],
    ) -> Vec<Var<'t, T>> {
        vec![theta[0]]
    }
}

fn meta_sgd(
    lr_index: Vec<usize>,
    theta: Vec<Tensor<f64>>,
    eta: f64,
) -> Trainer<'static, f64, MetaQuad, impl blo::TaskSampler<f64>, Exact, Sgd> {
    Trainer::new(
        MetaQuad {
            inner: InnerLoop::meta_sgd(1, lr_index).unwrap(),
        },
        |rng: &mut ChaCha8Rng| rng.gen_range(1.0..3.0),
        Exact::new(Policy::StoreAll).unwrap(),
        Sgd::constant(eta),
        theta,
    )
    .meta_batch(2)
    .progress(false)
}

fn meta_err(
    t: Trainer<'_, f64, MetaQuad, impl blo::TaskSampler<f64>, Exact, Sgd>,
    steps: u64,
) -> (BloError, u64) {
    let mut t = t.steps(steps);
    let e = t.run().unwrap_err();
    (e, t.step())
}

#[test]
fn meta_sgd_is_checked_before_the_first_step() {
    let w = || Tensor::vector(vec![0.0, 0.0]);
    // A valid configuration runs.
    meta_sgd(vec![1], vec![w(), Tensor::vector(vec![0.1, 0.2])], 0.1)
        .steps(3)
        .run()
        .unwrap();
    type Case = (Vec<usize>, Vec<Tensor<f64>>, &'static str, &'static str);
    let cases: Vec<Case> = vec![
        // Out of range.
        (
            vec![2],
            vec![w(), Tensor::vector(vec![0.1, 0.2])],
            "lr_index",
            "lr_index[0] = 2",
        ),
        // Wrong shape: θ[1] is [3], φ tensor 0 is [2].
        (
            vec![1],
            vec![w(), Tensor::vector(vec![0.1, 0.2, 0.3])],
            "lr_index",
            "lr_index[0] = 1",
        ),
        // One entry per φ tensor (φ_0 has one tensor).
        (
            vec![1, 1],
            vec![w(), Tensor::vector(vec![0.1, 0.2])],
            "lr_index",
            "[1, 1]",
        ),
        // Negative and non-finite step sizes.
        (
            vec![1],
            vec![w(), Tensor::vector(vec![0.1, -0.2])],
            "Meta-SGD step size",
            "θ[1] element 1 = -0.2",
        ),
        (
            vec![1],
            vec![w(), Tensor::vector(vec![f64::NAN, 0.2])],
            "Meta-SGD step size",
            "θ[1] element 0 = NaN",
        ),
        (
            vec![1],
            vec![w(), Tensor::vector(vec![0.1, f64::INFINITY])],
            "Meta-SGD step size",
            "θ[1] element 1 = inf",
        ),
    ];
    for (idx, theta, name, value) in cases {
        let (e, step) = meta_err(meta_sgd(idx, theta, 0.1), 3);
        assert_invalid(&e, name, value);
        assert_eq!(step, 0);
    }
    // The shape error names both shapes.
    let (e, _) = meta_err(
        meta_sgd(vec![1], vec![w(), Tensor::vector(vec![0.1, 0.2, 0.3])], 0.1),
        1,
    );
    assert!(
        e.to_string().contains("[3]") && e.to_string().contains("[2]"),
        "{e}"
    );
}

/// The outer update can push a step size below zero: that update is refused
/// (θ stays at the last valid value) with an error naming the element and
/// the outer step.
#[test]
fn meta_sgd_step_driven_negative_stops_the_run() {
    // φ_1 − c = (1 − α)(w − c), so ∂L_out/∂α = −(1 − α)(w − c)², positive for
    // α > 1: with w − c ≈ 8 and η = 0.1 the first update moves α = 1.5 by
    // about −0.1·0.5·64 = −3.2, below zero.
    let theta = vec![
        Tensor::vector(vec![10.0, 10.0]),
        Tensor::vector(vec![1.5, 1.5]),
    ];
    let before = bits(&theta);
    let mut t = meta_sgd(vec![1], theta, 0.1).steps(5);
    let e = t.run().unwrap_err();
    assert_invalid(&e, "Meta-SGD step size", "after the update of outer step 0");
    assert_eq!(t.step(), 0);
    assert_eq!(
        bits(t.theta()),
        before,
        "the refused update is not committed"
    );
    // A small enough step keeps α ≥ 0 and runs.
    let theta = vec![
        Tensor::vector(vec![10.0, 10.0]),
        Tensor::vector(vec![1.5, 1.5]),
    ];
    meta_sgd(vec![1], theta, 0.001).steps(5).run().unwrap();
}
