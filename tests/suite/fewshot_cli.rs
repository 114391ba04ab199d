//! The few-shot example end to end through its command line, on a folder in
//! Omniglot's layout written by the test (10 characters of generated glyphs as
//! 105×105 grayscale PNGs), and the error a class split that does not fit gives.
//!
//! The example binary is built by `cargo test` (which builds every example);
//! run alone, build it first: `cargo build --release --example fewshot`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use models::data::image::write_png;
use models::{glyphs, GlyphOptions};

/// `target/<profile>/examples/fewshot`, next to this test's `deps/` folder.
fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let bin = profile_dir.join("examples").join("fewshot");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build --release --example fewshot` \
         (cargo test builds it when run without --test)",
        bin.display()
    );
    bin
}

/// `root/alphabetA/characterNN/KK.png`: 10 characters (2 alphabets × 5), 6
/// images each, drawn as procedural glyphs at 105×105, black strokes on white.
fn omniglot_folder(root: &Path) {
    let set = glyphs(&GlyphOptions {
        n_classes: 10,
        per_class: 6,
        size: 105,
        seed: 7,
        ..GlyphOptions::default()
    });
    for c in 0..10 {
        let dir = root
            .join(format!("alphabet{}", c / 5))
            .join(format!("character{:02}", c % 5));
        std::fs::create_dir_all(&dir).unwrap();
        for k in 0..6 {
            let px: Vec<u8> = set
                .image::<f64>(c, k)
                .iter()
                .map(|v| 255 - (v * 255.0).round() as u8)
                .collect();
            write_png(&dir.join(format!("{k:02}.png")), 105, 105, 1, &px).unwrap();
        }
    }
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("blo-fewshot-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn fewshot(data: &Path, extra: &[&str]) -> Output {
    let mut args: Vec<String> = [
        "--data",
        &data.display().to_string(),
        "--dataset",
        "omniglot",
        "--n-way",
        "2",
        "--k-shot",
        "1",
        "--q-query",
        "2",
        "--r",
        "1",
        "--alpha",
        "0.2",
        "--filters",
        "4",
        "--meta-batch",
        "2",
        "--meta-steps",
        "3",
        "--test-episodes",
        "20",
        "--no-figure",
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    Command::new(example_binary())
        .args(&args)
        .output()
        .expect("spawn the fewshot example")
}

#[test]
fn fewshot_runs_on_a_ten_character_omniglot_folder_with_a_class_split() {
    let dir = scratch("run");
    let data = dir.join("hand");
    omniglot_folder(&data);
    // 5 train, round(0.2·10) = 2 validation, the rest (3) test; 2-way episodes;
    // two methods from two seeds.
    let out = fewshot(
        &data,
        &[
            "--train-classes",
            "5",
            "--val-classes",
            "0.2",
            "--test-classes",
            "rest",
            "--methods",
            "fo,ufo:0.5",
            "--seeds",
            "2",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "fewshot failed:\n{stderr}\n{stdout}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    // 2 methods × 2 seeds runs, 2 method summaries, 1 paired comparison.
    assert_eq!(lines.len(), 4 + 2 + 1, "{stdout}");
    for run in &lines[..4] {
        assert_eq!(run["test_episodes"], 20, "{run}");
        let acc = run["test_accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc), "{run}");
        assert!(run["val_accuracy"].as_f64().is_some(), "{run}");
        assert_eq!(run["steps_done"], run["meta_steps"], "{run}");
    }
    let seeds: Vec<u64> = lines[..4]
        .iter()
        .map(|r| r["seed"].as_u64().unwrap())
        .collect();
    assert_eq!(seeds, [0, 0, 1, 1]);
    assert_eq!(lines[4]["method"], "fo");
    assert_eq!(lines[4]["seeds"], serde_json::json!([0, 1]));
    assert_eq!(lines[6]["a"], "fo");
    assert_eq!(lines[6]["b"], "ufo:0.5");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_split_that_leaves_no_test_class_says_what_was_found_and_asked() {
    let dir = scratch("empty");
    let data = dir.join("hand");
    omniglot_folder(&data);
    let path = data.display().to_string();
    // The issue's case: all 10 characters to training.
    let out = fewshot(&data, &["--train-classes", "10"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first = stderr.lines().next().unwrap_or_default();
    assert_eq!(
        first,
        format!(
            "fewshot: {path}: empty split `test`: 10 classes found; the class split asks for \
             train 10, validation 0, test rest, which gives 10 train, 0 validation, 0 test"
        )
    );
    assert_eq!(stderr.matches(&path).count(), 1, "the path once:\n{stderr}");
    assert!(
        stderr.contains("--train-classes, --val-classes, --test-classes"),
        "{stderr}"
    );
    // The default split (1,200 training characters) on 10 characters.
    let out = fewshot(&data, &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.lines().next().unwrap_or_default(),
        format!(
            "fewshot: {path}: 10 classes found, but the class split asks for train 1200, \
             validation 0, test rest: the splits add up to 1200 classes (1200 + 0 + 0)"
        )
    );
    std::fs::remove_dir_all(&dir).ok();
}
