//! The episode sampler (statistics, no overlap, determinism, errors), the
//! procedural glyphs, and the sinusoid task distribution.

use models::{glyphs, DataError, EpisodeSampler, GlyphOptions, ImageSet, SinusoidTasks};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn small_glyphs(n_classes: usize, per_class: usize) -> ImageSet {
    glyphs(&GlyphOptions {
        n_classes,
        per_class,
        size: 12,
        ..GlyphOptions::default()
    })
}

#[test]
fn episodes_have_no_overlap_and_the_right_contents() {
    let set = small_glyphs(12, 7);
    let s = EpisodeSampler::new(&set, 5, 2, 3).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    for _ in 0..50 {
        let ep = s.sample::<f64, _>(&set, &mut rng);
        assert_eq!(ep.support_x.dims(), &[10, 1, 12, 12]);
        assert_eq!(ep.query_x.dims(), &[15, 1, 12, 12]);
        // N distinct classes.
        let mut cls = ep.classes.clone();
        cls.sort();
        cls.dedup();
        assert_eq!(cls.len(), 5);
        // Labels grouped by class, support and query disjoint.
        assert_eq!(ep.support_y, [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]);
        assert_eq!(ep.query_y, (0..5).flat_map(|l| [l; 3]).collect::<Vec<_>>());
        for id in &ep.support_ids {
            assert!(!ep.query_ids.contains(id), "{id:?} in support and query");
        }
        let mut all = ep.support_ids.clone();
        all.extend(&ep.query_ids);
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 25, "an example was drawn twice");
        // Pixels are the set's images; labels point to the right class.
        let len = 144;
        for (j, &(c, k)) in ep.query_ids.iter().enumerate() {
            assert_eq!(ep.classes[ep.query_y[j]], c);
            assert_eq!(
                &ep.query_x.data()[j * len..(j + 1) * len],
                set.image::<f64>(c, k).as_slice()
            );
        }
        for (j, &(c, k)) in ep.support_ids.iter().enumerate() {
            assert_eq!(ep.classes[ep.support_y[j]], c);
            assert_eq!(
                &ep.support_x.data()[j * len..(j + 1) * len],
                set.image::<f64>(c, k).as_slice()
            );
        }
    }
}

#[test]
fn classes_and_examples_are_drawn_uniformly() {
    // 10 classes of 4 examples, 5-way 1-shot 1-query, 2000 episodes.
    // Each class appears with probability 1/2 per episode: count ~ Bin(2000, 1/2),
    // mean 1000, s.d. √500 ≈ 22.4. Given its class is drawn, each example is used
    // (support or query) with probability 2/4, and each episode label is equally
    // likely. Every count must lie within 5 s.d. of its mean, which fails for
    // any noticeable bias.
    let set = small_glyphs(10, 4);
    let s = EpisodeSampler::new(&set, 5, 1, 1).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let episodes = 2000;
    let mut class_count = [0usize; 10];
    let mut label_count = [[0usize; 5]; 10];
    let mut ex_count = [[0usize; 4]; 10];
    for _ in 0..episodes {
        let ep = s.sample::<f32, _>(&set, &mut rng);
        for (label, &c) in ep.classes.iter().enumerate() {
            class_count[c] += 1;
            label_count[c][label] += 1;
        }
        for &(c, k) in ep.support_ids.iter().chain(&ep.query_ids) {
            ex_count[c][k] += 1;
        }
    }
    let sd = (episodes as f64 * 0.25).sqrt();
    for (c, &n) in class_count.iter().enumerate() {
        assert!(
            (n as f64 - 1000.0).abs() < 5.0 * sd,
            "class {c} drawn {n} times, expected 1000 ± {}",
            5.0 * sd
        );
        // Each example of a drawn class is used with probability 2/4.
        for (k, &m) in ex_count[c].iter().enumerate() {
            let (mean, sd) = (n as f64 * 0.5, (n as f64 * 0.25).sqrt());
            assert!(
                (m as f64 - mean).abs() < 5.0 * sd,
                "class {c} example {k}: {m} vs {mean}"
            );
        }
        // Episode labels are a random permutation: each label 1/10 of episodes.
        for (l, &m) in label_count[c].iter().enumerate() {
            let (mean, sd) = (episodes as f64 * 0.1, (episodes as f64 * 0.09).sqrt());
            assert!(
                (m as f64 - mean).abs() < 5.0 * sd,
                "class {c} label {l}: {m} vs {mean}"
            );
        }
    }
}

#[test]
fn same_seed_same_episode() {
    let set = small_glyphs(8, 5);
    let s = EpisodeSampler::new(&set, 3, 1, 2).unwrap();
    let a = s.sample::<f64, _>(&set, &mut ChaCha8Rng::seed_from_u64(9));
    let b = s.sample::<f64, _>(&set, &mut ChaCha8Rng::seed_from_u64(9));
    let c = s.sample::<f64, _>(&set, &mut ChaCha8Rng::seed_from_u64(10));
    assert_eq!(a, b);
    assert_ne!(a.support_ids, c.support_ids);
}

#[test]
fn sampler_errors_name_the_class_and_path() {
    let set = small_glyphs(4, 3);
    let e = EpisodeSampler::new(&set, 3, 2, 2).unwrap_err();
    assert!(
        matches!(&e, DataError::TooFewExamples { class, have: 3, need: 4, .. } if class == "glyph000"),
        "{e}"
    );
    assert!(
        e.to_string().contains("glyph000") && e.to_string().contains("<glyphs>"),
        "{e}"
    );
    let e = EpisodeSampler::new(&set, 5, 1, 1).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::TooFewClasses {
                have: 4,
                need: 5,
                ..
            }
        ),
        "{e}"
    );
    let empty = ImageSet::new("/data/empty", 1, 4, 4);
    let e = EpisodeSampler::new(&empty, 1, 1, 1).unwrap_err();
    assert!(
        matches!(e, DataError::EmptySplit { .. }) && e.to_string().contains("/data/empty"),
        "{e}"
    );
    // A class added later with too few examples is named too.
    let mut set = small_glyphs(3, 3);
    set.add_class("tiny", "/data/tiny", vec![vec![0; 144]]);
    let e = EpisodeSampler::new(&set, 2, 1, 1).unwrap_err();
    assert!(
        e.to_string().contains("tiny") && e.to_string().contains("/data/tiny"),
        "{e}"
    );
}

#[test]
fn rotations_are_quarter_turns() {
    let mut set = ImageSet::new("mem", 1, 3, 3);
    set.add_class("x", "mem/x", vec![(0u8..9).collect()]);
    set.add_rotations();
    let img = |c| {
        set.image::<f64>(c, 0)
            .iter()
            .map(|v| (v * 255.0).round() as u8)
            .collect::<Vec<_>>()
    };
    // numpy.rot90 of [[0,1,2],[3,4,5],[6,7,8]], k = 1, 2, 3.
    assert_eq!(img(1), [2, 5, 8, 1, 4, 7, 0, 3, 6]);
    assert_eq!(img(2), [8, 7, 6, 5, 4, 3, 2, 1, 0]);
    assert_eq!(img(3), [6, 3, 0, 7, 4, 1, 8, 5, 2]);
}

#[test]
fn glyphs_are_deterministic_and_classes_differ_more_than_samples() {
    let a = small_glyphs(6, 5);
    assert_eq!(a, small_glyphs(6, 5));
    // A class does not depend on how many classes are generated.
    let b = small_glyphs(3, 5);
    assert_eq!(a.image::<f64>(2, 4), b.image::<f64>(2, 4));
    let other = glyphs(&GlyphOptions {
        n_classes: 6,
        per_class: 5,
        size: 12,
        seed: 1,
        ..GlyphOptions::default()
    });
    assert_ne!(a, other);
    // Mean squared distance within a class is below that between classes.
    let set = glyphs(&GlyphOptions {
        n_classes: 10,
        per_class: 6,
        ..GlyphOptions::default()
    });
    let d = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(a, b)| (a - b) * (a - b)).sum::<f64>();
    let (mut within, mut nw, mut between, mut nb) = (0.0, 0, 0.0, 0);
    for c in 0..10 {
        for k in 0..6 {
            let x = set.image::<f64>(c, k);
            assert!(
                x.iter().any(|&v| v > 0.9),
                "class {c} sample {k} has no ink"
            );
            for k2 in k + 1..6 {
                within += d(&x, &set.image::<f64>(c, k2));
                nw += 1;
            }
            let y = set.image::<f64>((c + 1) % 10, k);
            between += d(&x, &y);
            nb += 1;
        }
    }
    let (w, b) = (within / nw as f64, between / nb as f64);
    assert!(w < 0.7 * b, "within-class {w} vs between-class {b}");
}

#[test]
fn sinusoid_tasks_follow_the_maml_distribution() {
    let tasks = SinusoidTasks::default();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let n = 4000;
    let mut amp_sum = 0.0;
    for _ in 0..n {
        let ep = tasks.sample_episode::<f64, _>(&mut rng, 5, 7);
        let t = ep.task;
        assert!(
            (0.1..=5.0).contains(&t.amplitude) && (0.0..=std::f64::consts::PI).contains(&t.phase)
        );
        amp_sum += t.amplitude;
        assert_eq!(
            (ep.support_x.dims(), ep.query_x.dims()),
            (&[5, 1][..], &[7, 1][..])
        );
        for (x, y) in ep.query_x.data().iter().zip(ep.query_y.data()) {
            assert!((-5.0..=5.0).contains(x));
            assert_eq!(*y, t.amplitude * (x - t.phase).sin());
        }
    }
    // E[A] = 2.55, s.d. of U[0.1, 5] is 4.9/√12 ≈ 1.41; 5 s.e. bound.
    let mean = amp_sum / n as f64;
    assert!(
        (mean - 2.55).abs() < 5.0 * 1.415 / (n as f64).sqrt(),
        "{mean}"
    );
    let e1 = tasks.sample_episode::<f32, _>(&mut ChaCha8Rng::seed_from_u64(1), 3, 3);
    let e2 = tasks.sample_episode::<f32, _>(&mut ChaCha8Rng::seed_from_u64(1), 3, 3);
    assert_eq!(e1, e2);
}
