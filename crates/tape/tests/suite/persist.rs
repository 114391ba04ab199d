//! Persistent leaves (`Tape::rewind`, `Tape::rewind_updating`): parameters
//! recorded once and updated in place from their adjoints give the same bits
//! as parameters copied into fresh leaves on every pass.

use tape::{Constant, Dual, Tape, Tensor, Var};

/// A two-layer MLP's cross-entropy loss of `[w1, b1, w2, b2]` on fixed data.
fn mlp_loss<'t>(
    t: &'t Tape<f64>,
    x: &Tensor<f64>,
    p: &[Var<'t, f64>],
    labels: &[usize],
) -> Var<'t, f64> {
    let h = (t.constant(x).matmul(p[0]) + p[1]).relu();
    (h.matmul(p[2]) + p[3]).softmax_cross_entropy(labels)
}

fn pattern(shape: &[usize], s: f64) -> Tensor<f64> {
    Tensor::from_fn(shape, |i| ((i as f64 + 1.0) * s).sin() * 0.5)
}

/// (n, d, h, c): small products (the tape's own loop) and products large
/// enough for the packed kernels.
const SIZES: [(usize, usize, usize, usize); 2] = [(6, 4, 5, 3), (64, 96, 80, 10)];

/// `steps` SGD steps (α = 0.1): the losses and the final parameters. With
/// `persist`, the parameters are persistent leaves updated by
/// `rewind_updating`; else they are copied into fresh leaves on a cleared
/// tape each step.
fn sgd(
    x: &Tensor<f64>,
    labels: &[usize],
    p0: &[Tensor<f64>],
    steps: usize,
    persist: bool,
) -> (Vec<f64>, Vec<Tensor<f64>>) {
    let step = |x: &mut [f64], g: &[f64]| x.iter_mut().zip(g).for_each(|(a, g)| *a -= 0.1 * g);
    let (mut t, mut p, n) = (Tape::new(), p0.to_vec(), p0.len());
    if persist {
        for pi in &p {
            t.var(pi);
        }
    }
    let mut losses = Vec::new();
    for _ in 0..steps {
        if !persist {
            t.clear();
            for pi in &p {
                t.var(pi);
            }
        }
        let v: Vec<_> = (0..n).map(|i| t.var_at(i)).collect();
        let out = mlp_loss(&t, x, &v, labels);
        t.backward(out);
        losses.push(out.item());
        if persist {
            t.rewind_updating(n, |_, x, g| step(x, g.expect("every parameter is read")));
        } else {
            for (pi, vi) in p.iter_mut().zip(&v) {
                step(pi.data_mut(), t.grad(*vi).data());
            }
        }
    }
    if persist {
        p = (0..n).map(|i| t.var_at(i).value()).collect();
    }
    (losses, p)
}

#[test]
fn persistent_leaves_give_the_bits_of_copied_leaves_over_several_steps() {
    for (n, d, h, c) in SIZES {
        let x = pattern(&[n, d], 0.37);
        let labels: Vec<usize> = (0..n).map(|i| (i * 7) % c).collect();
        let p0 = [
            pattern(&[d, h], 0.11),
            pattern(&[h], 0.53),
            pattern(&[h, c], 0.29),
            pattern(&[c], 0.71),
        ];
        let (la, pa) = sgd(&x, &labels, &p0, 4, false);
        let (lb, pb) = sgd(&x, &labels, &p0, 4, true);
        assert_eq!(la, lb, "losses, sizes {:?}", (n, d, h, c));
        for (a, b) in pa.iter().zip(&pb) {
            assert_eq!(a.data(), b.data(), "parameters, sizes {:?}", (n, d, h, c));
        }
        // The steps moved the parameters (the comparison is not of φ_0 with itself).
        assert_ne!(pa[0].data(), p0[0].data());
    }
}

#[test]
fn an_update_sees_each_adjoint_of_the_last_sweep_once() {
    let mut t = Tape::<f64>::new();
    t.var(&Tensor::vector(vec![1.0, 2.0]));
    t.var(&Tensor::vector(vec![3.0]));
    t.constant(&Tensor::vector(vec![5.0]));
    let mut seen = Vec::new();
    for step in 0..3 {
        let (a, b, c) = (t.var_at(0), t.var_at(1), t.var_at(2));
        // Step 1 does not read b: its adjoint of step 0 must not come back.
        let f = if step == 1 {
            (a * c).sum()
        } else {
            (a * b).sum() + (b * c).sum()
        };
        t.backward(f);
        t.rewind_updating(3, |i, _, g| seen.push((step, i, g.map(<[f64]>::to_vec))));
        // A second rewind without a sweep hands no adjoint (an update
        // applied twice would move the leaves twice).
        t.rewind_updating(3, |i, _, g| {
            assert!(g.is_none(), "step {step}: leaf {i} got a stale adjoint")
        });
    }
    let want = |step| {
        let (b, c) = (
            if step == 1 {
                None
            } else {
                Some(vec![3.0 + 5.0])
            },
            None,
        );
        let a = if step == 1 {
            vec![5.0, 5.0]
        } else {
            vec![3.0, 3.0]
        };
        vec![(step, 0, Some(a)), (step, 1, b), (step, 2, c)]
    };
    let want: Vec<_> = (0..3).flat_map(want).collect();
    assert_eq!(seen, want);
}

#[test]
fn leaves_read_in_place_persist_and_are_not_handed_to_the_update() {
    // A shared constant on a dual tape (never materialised: only real-left
    // products read it) and a constant_base leaf persist across rewinds.
    let a = Constant::new(Tensor::new([2, 2], vec![1.0, 2.0, 3.0, 4.0]));
    let mut t = Tape::<Dual<f64>>::new();
    t.constant_shared(&a);
    t.constant_base(&Tensor::new([2, 2], vec![0.5, 0.0, 0.0, 0.5]));
    t.leaf([2, 1], &[Dual::new(1.0, 1.0), Dual::new(-1.0, 0.0)], true);
    for _ in 0..3 {
        let (c, b, x) = (t.var_at(0), t.var_at(1), t.var_at(2));
        let y = c.matmul(b.matmul(x)).sum(); // Σ A·(B·x), B = I/2
        assert_eq!(
            y.item(),
            Dual::new((1.0 - 2.0 + 3.0 - 4.0) * 0.5, (1.0 + 3.0) * 0.5)
        );
        t.backward(y);
        let mut handed = Vec::new();
        t.rewind_updating(3, |i, _, _| handed.push(i));
        assert_eq!(handed, [2]);
    }
}

#[test]
#[should_panic(expected = "Tape::rewind: node 1 of the 2 kept is a mul")]
fn rewinding_to_a_non_leaf_panics() {
    let mut t = Tape::<f64>::new();
    let x = t.var(&Tensor::vector(vec![1.0]));
    let _ = x * x;
    t.rewind(2);
}

#[test]
fn a_rewound_tape_records_on_top_of_its_leaves() {
    let mut t = Tape::<f32>::new();
    t.var(&Tensor::vector(vec![2.0]));
    let y = t.var_at(0).square();
    assert_eq!(y.item(), 4.0);
    let long = t.len();
    t.rewind(1);
    assert_eq!(t.len(), 1);
    let z = t.var_at(0) * 3.0;
    assert_eq!((z.item(), t.len()), (6.0, long));
    t.rewind(0);
    assert!(t.is_empty());
}
