//! A planned training run (`Trainer::planned`): the planner's choice and the
//! figures it compared are saved in checkpoints and restored on resume (no
//! re-plan), so a resumed run continues bit-identically; another planner
//! setting is refused naming it and both values (a forced resume plans
//! again); a stored report no planner can have written is a field error.

mod train_common;

use std::path::Path;

use blo::outer::Adam;
use blo::train::{read_checkpoint, task_rng, Stream, Trainer, PILOT_STEP};
use blo::{
    plan_estimator, BloError, Budget, Choice, Estimator, PlanSpec, PlannerReport, TaskSampler,
};
use serde_json::Value;
use tape::Tensor;
use train_common::{bits, rewrite_checkpoint, sampler, scratch, QuadMaml, Task};

const N: u64 = 6;
const R: usize = 4;
const ALPHA: f64 = 0.3;

fn spec(states: usize, pilot: usize) -> PlanSpec {
    PlanSpec::new(Budget::States(states), pilot)
}

fn theta0() -> Vec<Tensor<f64>> {
    vec![Tensor::vector(vec![0.5, -1.0, 2.0])]
}

type Planned<'o> = Trainer<
    'o,
    f64,
    QuadMaml,
    Box<dyn Fn(&mut rand_chacha::ChaCha8Rng) -> Task + Sync>,
    Box<dyn Estimator<f64, QuadMaml>>,
    Adam<f64>,
>;

fn planned<'o>(spec: PlanSpec) -> Planned<'o> {
    Trainer::planned(
        QuadMaml::new(ALPHA, R),
        Box::new(sampler(3)) as Box<dyn Fn(&mut rand_chacha::ChaCha8Rng) -> Task + Sync>,
        spec,
        Adam::new(0.05),
        theta0(),
    )
    .meta_batch(6)
    .seed(9)
    .progress(false)
}

/// A checkpoint of a planned run after N steps, with its report.
fn checkpoint(name: &str) -> (std::path::PathBuf, PlannerReport) {
    let dir = scratch(name);
    let mut t = planned(spec(2, 8)).steps(N).checkpoint_every(N, &dir);
    t.run().unwrap();
    (dir, t.planner_report().unwrap().clone())
}

#[test]
fn planned_run_resumes_with_the_saved_choice_bit_identically() {
    let mut full = planned(spec(2, 8)).steps(2 * N);
    let a = full.run().unwrap();
    let report = full.planner_report().unwrap().clone();
    // A randomized estimator, so resuming must also restore its draws' law.
    assert!(
        matches!(
            report.choice().choice,
            Choice::Ufo { .. } | Choice::Telescope { .. }
        ),
        "{report}"
    );

    let (dir, saved) = checkpoint("planner-resume");
    assert_eq!(saved, report, "the planner runs at θ₀ in both runs");
    let (state, theta_n) = read_checkpoint::<f64>(&dir).unwrap();
    assert_eq!(
        state.planner.as_ref(),
        Some(&report),
        "the checkpoint records the report"
    );
    // Planning again at the resumed θ would not reproduce the saved report,
    // so the comparisons below tell a restored choice from a re-plan.
    let pilot: Vec<Task> = (0..8)
        .map(|i| sampler(3).sample(&mut task_rng(9, PILOT_STEP, i, Stream::Sampler)))
        .collect();
    let again = plan_estimator(
        &QuadMaml::new(ALPHA, R),
        &pilot,
        &theta_n,
        Budget::States(2),
        &Default::default(),
    )
    .unwrap();
    assert_ne!(again, report);

    let mut resumed = planned(spec(2, 8)).steps(2 * N).resume_from(&dir);
    let c = resumed.run().unwrap();
    assert_eq!(bits(&c.theta), bits(&a.theta));
    assert_eq!(resumed.planner_report(), Some(&report));
    assert_eq!(resumed.estimator().name(), full.estimator().name());
    assert!(resumed.resume_overrides().is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

fn resume_err(dir: &Path, t: Planned<'_>) -> BloError {
    let mut t = t.steps(2 * N).resume_from(dir);
    let e = t.run().unwrap_err();
    assert_eq!(t.step(), 0, "nothing restored on error");
    assert!(t.planner_report().is_none(), "no plan restored on error");
    e
}

fn assert_mismatch(e: &BloError, want: (&str, &str, &str)) {
    match e {
        BloError::SettingsMismatch {
            field,
            checkpoint,
            run,
            ..
        } => assert_eq!(
            (field.as_str(), checkpoint.as_str(), run.as_str()),
            want,
            "{e}"
        ),
        e => panic!("expected a settings mismatch on {}, got {e}", want.0),
    }
}

#[test]
fn resume_with_another_planner_setting_is_refused_naming_it() {
    let (dir, saved) = checkpoint("planner-mismatch");
    let e = resume_err(&dir, planned(spec(3, 8)));
    assert_mismatch(&e, ("planner.budget", "2 states", "3 states"));
    assert!(e.to_string().contains("planner.budget"), "{e}");
    let e = resume_err(&dir, planned(spec(2, 9)));
    assert_mismatch(&e, ("planner.pilot_tasks", "8", "9"));
    let mut floor = spec(2, 8);
    floor.params.floor = 0.1;
    let e = resume_err(&dir, planned(floor));
    assert_mismatch(&e, ("planner.floor", "0.05", "0.1"));
    let mut tol = spec(2, 8);
    tol.params.fo_tolerance = 0.5;
    let e = resume_err(&dir, planned(tol));
    assert_mismatch(&e, ("planner.fo_tolerance", "0.0", "0.5"));
    // A run without the planner, even with the estimator it chose.
    let plain = Trainer::new(
        QuadMaml::new(ALPHA, R),
        sampler(3),
        saved.choice().choice.build::<f64, QuadMaml>().unwrap(),
        Adam::new(0.05),
        theta0(),
    )
    .meta_batch(6)
    .seed(9)
    .progress(false)
    .steps(2 * N)
    .resume_from(&dir);
    let mut plain = plain;
    assert_mismatch(
        &plain.run().unwrap_err(),
        ("planner.budget", "2 states", "(absent)"),
    );

    // Forced: the documented re-plan at the resumed θ under the new budget.
    let mut forced = planned(spec(3, 8))
        .steps(N + 1)
        .resume_from(&dir)
        .force_resume(true);
    forced.run().unwrap();
    let fields: Vec<&str> = forced
        .resume_overrides()
        .iter()
        .map(|d| d.field.as_str())
        .collect();
    assert!(fields.contains(&"planner.budget"), "{fields:?}");
    let replanned = forced.planner_report().unwrap();
    assert_eq!(replanned.states, 3);
    assert_ne!(replanned, &saved);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_stored_report_no_planner_can_write_is_a_field_error() {
    type Edit = Box<dyn Fn(&mut Value, &PlannerReport)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "planner.chosen",
            Box::new(|v, rep| {
                let other = (rep.chosen + 1) % rep.candidates.len();
                v["planner"]["chosen"] = other.into();
            }),
        ),
        (
            "planner.candidates.1.figure",
            Box::new(|v, rep| {
                v["planner"]["candidates"][1]["figure"] = (rep.candidates[1].figure * 0.5).into();
            }),
        ),
        (
            "planner.candidates.0.variance",
            Box::new(|v, rep| {
                v["planner"]["candidates"][0]["variance"] =
                    (rep.candidates[0].variance * 1.05).into();
            }),
        ),
        (
            "planner.r",
            Box::new(|v, _| v["planner"]["r"] = (R + 1).into()),
        ),
        (
            "planner.depth_diff_sq.0",
            Box::new(|v, _| v["planner"]["depth_diff_sq"][0] = (-1.0).into()),
        ),
        (
            "planner.candidates.{chosen}.choice",
            Box::new(|v, rep| {
                // The chosen estimator's parameter out of range (q or p(m)).
                let c = &mut v["planner"]["candidates"][rep.chosen]["choice"];
                if let Some(u) = c.get_mut("Ufo") {
                    u["q"] = 1.5.into();
                } else {
                    let p = c["Telescope"]["p"].as_array_mut().unwrap();
                    let last = p.len() - 1;
                    p[last] = (-0.25).into();
                }
            }),
        ),
    ];
    for (want, edit) in cases {
        let (dir, saved) = checkpoint("planner-corrupt");
        rewrite_checkpoint(&dir, |v| edit(v, &saved));
        let e = resume_err(&dir, planned(spec(2, 8)));
        let want = want.replace("{chosen}", &saved.chosen.to_string());
        match &e {
            BloError::CheckpointField { field, .. } => {
                assert_eq!(field, &want, "edit of {want}: error names {field}: {e}")
            }
            e => panic!("edit of {want}: expected a field error, got {e}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
    // The same rewrite without an edit is accepted.
    let (dir, _) = checkpoint("planner-noop");
    rewrite_checkpoint(&dir, |_| {});
    planned(spec(2, 8))
        .steps(N + 1)
        .resume_from(&dir)
        .run()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
