//! Meta-training with an adaptive randomized telescope: the depth
//! distribution is refreshed between meta-batches in task order (bit-identical
//! for any thread count) and saved in checkpoints, so a resumed run continues
//! bit-identically.

mod train_common;

use blo::outer::Adam;
use blo::train::Trainer;
use blo::{
    every_depth, AdaptiveDepths, Budget, DepthDistribution, Depths, Estimator, Telescope,
    TelescopeKind,
};
use tape::Tensor;
use train_common::{bits, sampler, scratch, QuadMaml};

const N: u64 = 6;

fn telescope() -> Telescope {
    Telescope::new(
        TelescopeKind::RussianRoulette,
        DepthDistribution::new(every_depth(4), &Depths::Uniform).unwrap(),
        Budget::States(2),
    )
    .unwrap()
    .adaptive(AdaptiveDepths::default())
    .unwrap()
}

fn trainer<'o>(
    threads: usize,
) -> Trainer<'o, f64, QuadMaml, impl blo::TaskSampler<train_common::Task>, Telescope, Adam<f64>> {
    Trainer::new(
        QuadMaml::new(0.3, 4),
        sampler(3),
        telescope(),
        Adam::new(0.05),
        vec![Tensor::vector(vec![0.5, -1.0, 2.0])],
    )
    .meta_batch(6)
    .threads(threads)
    .seed(9)
    .progress(false)
}

fn p_bits(t: &Telescope) -> Vec<u64> {
    t.distribution()
        .probabilities()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

#[test]
fn adaptive_telescope_trains_identically_on_any_thread_count_and_resumes_bit_identically() {
    let mut one = trainer(1).steps(2 * N);
    let a = one.run().unwrap();
    let mut three = trainer(3).steps(2 * N);
    let b = three.run().unwrap();
    assert_eq!(bits(&a.theta), bits(&b.theta));
    assert_eq!(p_bits(one.estimator()), p_bits(three.estimator()));
    assert_ne!(
        p_bits(one.estimator()),
        p_bits(&telescope()),
        "the distribution adapted"
    );

    let dir = scratch("telescope-resume");
    let ckpt = dir.join("ckpt");
    trainer(1)
        .steps(N)
        .checkpoint_every(N, &ckpt)
        .run()
        .unwrap();
    let mut resumed = trainer(1).steps(2 * N).resume_from(&ckpt);
    let c = resumed.run().unwrap();
    assert_eq!(bits(&c.theta), bits(&a.theta));
    assert_eq!(p_bits(resumed.estimator()), p_bits(one.estimator()));
    assert_eq!(
        Estimator::<f64, QuadMaml>::save_state(resumed.estimator()),
        Estimator::<f64, QuadMaml>::save_state(one.estimator())
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
