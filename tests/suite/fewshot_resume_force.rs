//! The few-shot example's resume refuses a checkpoint written with other
//! settings (naming the setting), and `force` (the example's `--force`)
//! continues with this run's settings.

use blo::BloError;
use blo_examples::fewshot::{self, Config, DataSource, Method};

fn tiny(dir: &std::path::Path) -> Config {
    Config {
        data: DataSource::Glyphs {
            train_classes: 12,
            test_classes: 8,
            per_class: 6,
            size: 28,
        },
        n_way: 3,
        k_shot: 1,
        q_query: 2,
        r: 2,
        alpha: 0.02,
        filters: Some(8),
        meta_batch: 2,
        meta_steps: 4,
        pilot_steps: 2,
        outer_lr: 1e-2,
        test_episodes: 10,
        methods: vec![Method::FirstOrder],
        equal_compute: false,
        checkpoint_dir: Some(dir.to_path_buf()),
        checkpoint_every: 2,
        figure: None,
        progress: false,
        ..Config::default()
    }
}

#[test]
fn fewshot_resume_checks_settings_and_force_overrides() {
    let dir = std::env::temp_dir().join(format!("blo-fewshot-force-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cfg = tiny(&dir);
    cfg.stop_after = Some(2);
    fewshot::run(&cfg).unwrap();

    // Other data (more query samples per class): refused, naming the setting.
    let mut other = tiny(&dir);
    other.resume = true;
    other.q_query = 3;
    match fewshot::run(&other) {
        Err(fewshot::Error::Blo(BloError::SettingsMismatch {
            field,
            checkpoint,
            run,
            ..
        })) => {
            assert_eq!(field, "data");
            assert!(
                checkpoint.contains("2 query") && run.contains("3 query"),
                "{checkpoint} / {run}"
            );
        }
        r => panic!("expected a settings mismatch, got {:?}", r.map(|r| r.len())),
    }
    // Another meta-batch size, likewise.
    let mut other = tiny(&dir);
    other.resume = true;
    other.meta_batch = 3;
    match fewshot::run(&other) {
        Err(fewshot::Error::Blo(BloError::SettingsMismatch { field, .. })) => {
            assert_eq!(field, "meta_batch")
        }
        r => panic!("expected a settings mismatch, got {:?}", r.map(|r| r.len())),
    }
    // Forced: continues from step 2 to the end.
    other.force = true;
    let out = fewshot::run(&other).unwrap();
    assert!(out[0].resumed);
    assert_eq!(out[0].steps_done, 4);
    std::fs::remove_dir_all(&dir).ok();
}
