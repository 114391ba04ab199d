use tape::{Dual, Tape, Tensor};

#[test]
fn mlp_grad_and_dual_hvp_smoke() {
    let t = Tape::<f64>::new();
    let x = t.constant(&Tensor::from_fn(&[4, 3], |i| (i as f64 * 0.3).sin()));
    let w = t.var(&Tensor::from_fn(&[3, 5], |i| (i as f64 * 0.7).cos()));
    let b = t.var(&Tensor::from_fn(&[5], |i| i as f64 * 0.1));
    let h = (x.matmul(w) + b).tanh();
    let loss = h.softmax_cross_entropy(&[0, 1, 2, 3]);
    t.backward(loss);
    let gw = t.grad(w);
    // finite difference on one entry
    let f = |dw: f64| {
        let t = Tape::<f64>::new();
        let x = t.constant(&Tensor::from_fn(&[4, 3], |i| (i as f64 * 0.3).sin()));
        let mut wt = Tensor::from_fn(&[3, 5], |i| (i as f64 * 0.7).cos());
        wt.data_mut()[7] += dw;
        let w = t.var(&wt);
        let b = t.var(&Tensor::from_fn(&[5], |i| i as f64 * 0.1));
        (x.matmul(w) + b)
            .tanh()
            .softmax_cross_entropy(&[0, 1, 2, 3])
            .item()
    };
    let fd = (f(1e-6) - f(-1e-6)) / 2e-6;
    assert!((fd - gw.data()[7]).abs() < 1e-8, "{fd} vs {}", gw.data()[7]);

    // dual: tangent e_7 on w gives column 7 of the Hessian; check against grad differences
    let td = Tape::<Dual<f64>>::new();
    let x = td.constant_base(&Tensor::from_fn(&[4, 3], |i| (i as f64 * 0.3).sin()));
    let w = td.var(&Tensor::from_fn(&[3, 5], |i| {
        Dual::new((i as f64 * 0.7).cos(), if i == 7 { 1.0 } else { 0.0 })
    }));
    let b = td.var(&Tensor::from_fn(&[5], |i| Dual::constant(i as f64 * 0.1)));
    let loss = (x.matmul(w) + b)
        .tanh()
        .softmax_cross_entropy(&[0, 1, 2, 3]);
    td.backward(loss);
    let hv = td.grad(w);
    let g = |dw: f64| {
        let t = Tape::<f64>::new();
        let x = t.constant(&Tensor::from_fn(&[4, 3], |i| (i as f64 * 0.3).sin()));
        let mut wt = Tensor::from_fn(&[3, 5], |i| (i as f64 * 0.7).cos());
        wt.data_mut()[7] += dw;
        let w = t.var(&wt);
        let b = t.var(&Tensor::from_fn(&[5], |i| i as f64 * 0.1));
        let l = (x.matmul(w) + b)
            .tanh()
            .softmax_cross_entropy(&[0, 1, 2, 3]);
        t.backward(l);
        t.grad(w)
    };
    let (gp, gm) = (g(1e-5), g(-1e-5));
    for i in 0..15 {
        let fd = (gp.data()[i] - gm.data()[i]) / 2e-5;
        assert!(
            (fd - hv.data()[i].d).abs() < 1e-7,
            "{i}: {fd} vs {}",
            hv.data()[i].d
        );
        assert_eq!(hv.data()[i].v, gw.data()[i]);
    }
}
