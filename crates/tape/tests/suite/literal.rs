//! Literal-value tests: small cases whose values and derivatives are worked out
//! by hand in the comments.

use tape::{Dual, Tape, Tensor};

fn close(a: &[f64], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol,
            "element {i}: {x} vs {y} ({a:?} vs {b:?})"
        );
    }
}

#[test]
fn cube_at_two() {
    // f(x) = x³, f'(x) = 3x², at x = 2: f = 8, f' = 12.
    let t = Tape::<f64>::new();
    let x = t.var(&Tensor::scalar(2.0));
    let y = x * x * x;
    t.backward(y);
    assert_eq!(y.item(), 8.0);
    assert_eq!(t.grad(x).item(), 12.0);
    // The same through powf: 3·2^(3−1) = 12.
    let z = x.powf(3.0);
    t.backward(z);
    assert!((t.grad(x).item() - 12.0).abs() < 1e-12);
}

#[test]
fn a_reused_variable_accumulates() {
    // f(x) = x + x·x at x = 3: f' = 1 + 2x = 7.
    let t = Tape::<f64>::new();
    let x = t.var(&Tensor::scalar(3.0));
    t.backward(x + x * x);
    assert_eq!(t.grad(x).item(), 7.0);
}

#[test]
fn sigmoid_and_tanh_at_zero() {
    // σ(0) = 1/2, σ'(0) = σ(1 − σ) = 1/4; tanh(0) = 0, tanh'(0) = 1 − 0² = 1.
    let t = Tape::<f64>::new();
    let x = t.var(&Tensor::scalar(0.0));
    let s = x.sigmoid();
    t.backward(s);
    assert_eq!((s.item(), t.grad(x).item()), (0.5, 0.25));
    t.backward(x.tanh());
    assert_eq!(t.grad(x).item(), 1.0);
    // softplus(0) = ln 2, softplus'(0) = σ(0) = 1/2.
    let sp = x.softplus();
    t.backward(sp);
    assert!((sp.item() - 2f64.ln()).abs() < 1e-15);
    assert_eq!(t.grad(x).item(), 0.5);
}

#[test]
fn softmax_cross_entropy_of_uniform_logits_is_ln_c() {
    // Equal logits: p = 1/c for every class, so the loss is −ln(1/c) = ln c, and
    // ∂loss/∂x_ij = (p_ij − [j = l_i]) / n = (1/c − [j = l_i]) / n.
    let (n, c) = (2, 4);
    let t = Tape::<f64>::new();
    let x = t.var(&Tensor::full([n, c], 0.7));
    let labels = [1, 3];
    let loss = x.softmax_cross_entropy(&labels);
    t.backward(loss);
    assert!((loss.item() - (c as f64).ln()).abs() < 1e-15);
    let mut expected = vec![0.25 / 2.0; n * c];
    expected[1] -= 0.5;
    expected[c + 3] -= 0.5;
    close(t.grad(x).data(), &expected, 1e-15);
}

#[test]
fn log_softmax_of_zero_and_ln3() {
    // softmax([0, ln 3]) = [1/4, 3/4], so log_softmax = [ln 1/4, ln 3/4].
    // Σ of log_softmax: ∂/∂x_j = 1 − 2·p_j = [1/2, −1/2].
    let t = Tape::<f64>::new();
    let x = t.var(&Tensor::vector(vec![0.0, 3f64.ln()]));
    let y = x.log_softmax(0);
    close(y.value().data(), &[0.25f64.ln(), 0.75f64.ln()], 1e-15);
    t.backward(y.sum());
    close(t.grad(x).data(), &[0.5, -0.5], 1e-15);
}

#[test]
fn matmul_two_by_two() {
    // [[1, 2], [3, 4]]·[[5, 6], [7, 8]] = [[19, 22], [43, 50]].
    // For Σ C: ḡA = 1·Bᵀ → each row is the row sums of B = [11, 15];
    //          ḡB = Aᵀ·1 → each column is the column sums of A = [4, 6]ᵀ.
    let t = Tape::<f64>::new();
    let a = t.var(&Tensor::new([2, 2], vec![1.0, 2.0, 3.0, 4.0]));
    let b = t.var(&Tensor::new([2, 2], vec![5.0, 6.0, 7.0, 8.0]));
    let c = a.matmul(b);
    assert_eq!(c.value().data(), &[19.0, 22.0, 43.0, 50.0]);
    t.backward(c.sum());
    assert_eq!(t.grad(a).data(), &[11.0, 15.0, 11.0, 15.0]);
    assert_eq!(t.grad(b).data(), &[4.0, 4.0, 6.0, 6.0]);
}

#[test]
fn conv2d_on_a_known_3x3_image() {
    // x = [[1, 2, 3], [4, 5, 6], [7, 8, 9]], kernel [[1, 0], [0, −1]]:
    // out[i, j] = x[i, j] − x[i+1, j+1] = −4 everywhere (x grows by 4 along the diagonal).
    let t = Tape::<f64>::new();
    let x = t.var(&Tensor::new([1, 1, 3, 3], (1..=9).map(f64::from).collect()));
    let w = t.var(&Tensor::new([1, 1, 2, 2], vec![1.0, 0.0, 0.0, -1.0]));
    let y = x.conv2d(w, 1, 0);
    assert_eq!(y.shape().dims(), &[1, 1, 2, 2]);
    assert_eq!(y.value().data(), &[-4.0; 4]);
    // For Σ y: ∂/∂w[a, b] = Σ over the four windows of x[i+a, j+b]:
    // w00: 1+2+4+5 = 12, w01: 2+3+5+6 = 16, w10: 4+5+7+8 = 24, w11: 5+6+8+9 = 28.
    // ∂/∂x: +1 for each window with x at its top-left, −1 at its bottom-right.
    t.backward(y.sum());
    assert_eq!(t.grad(w).data(), &[12.0, 16.0, 24.0, 28.0]);
    assert_eq!(
        t.grad(x).data(),
        &[1.0, 1.0, 0.0, 1.0, 0.0, -1.0, 0.0, -1.0, -1.0]
    );

    // A 3×3 box kernel with padding 1 and stride 2: outputs centred on the
    // corners, each the sum of the in-bounds 2×2 block: [12, 16, 24, 28].
    // ∂Σy/∂x counts the windows covering each pixel: [[1, 2, 1], [2, 4, 2], [1, 2, 1]].
    let w3 = t.var(&Tensor::full([1, 1, 3, 3], 1.0));
    let y = x.conv2d(w3, 2, 1);
    assert_eq!(y.value().data(), &[12.0, 16.0, 24.0, 28.0]);
    t.backward(y.sum());
    assert_eq!(
        t.grad(x).data(),
        &[1.0, 2.0, 1.0, 2.0, 4.0, 2.0, 1.0, 2.0, 1.0]
    );
}

#[test]
fn pooling_on_a_known_image() {
    // x = [[1, 5], [3, 2]]: max = 5 (its adjoint goes to index 1), mean = 11/4.
    let t = Tape::<f64>::new();
    let x = t.var(&Tensor::new([1, 1, 2, 2], vec![1.0, 5.0, 3.0, 2.0]));
    let m = x.max_pool2d(2, 2);
    assert_eq!(m.value().data(), &[5.0]);
    t.backward(m.sum());
    assert_eq!(t.grad(x).data(), &[0.0, 1.0, 0.0, 0.0]);
    let a = x.avg_pool2d(2, 2);
    assert_eq!(a.value().data(), &[2.75]);
    t.backward(a.sum());
    assert_eq!(t.grad(x).data(), &[0.25; 4]);
}

#[test]
fn reductions_and_max_ties() {
    // mean of 4 elements: ∂/∂x = 1/4 each. max_axis of [2, 7, 7]: 7, first maximum gets it.
    let t = Tape::<f64>::new();
    let x = t.var(&Tensor::new([2, 2], vec![1.0, 2.0, 3.0, 4.0]));
    let m = x.mean();
    assert_eq!(m.item(), 2.5);
    t.backward(m);
    assert_eq!(t.grad(x).data(), &[0.25; 4]);
    // Row sums [3, 7]; weighting them by [1, 10] gives ∂/∂x = [1, 1, 10, 10].
    let w = t.constant(&Tensor::new([2, 1], vec![1.0, 10.0]));
    t.backward((x.sum_axes(&[1], true) * w).sum());
    assert_eq!(t.grad(x).data(), &[1.0, 1.0, 10.0, 10.0]);
    let y = t.var(&Tensor::vector(vec![2.0, 7.0, 7.0]));
    let mx = y.max_axis(0, false);
    assert_eq!(mx.item(), 7.0);
    t.backward(mx);
    assert_eq!(t.grad(y).data(), &[0.0, 1.0, 0.0]);
}

#[test]
fn repeated_indices_accumulate() {
    // index_select rows [1, 1, 0] of a [2, 2]: Σ out counts row 1 twice and row 0 once.
    // gather([[1, 2], [3, 4]], [1, 0]) = [2, 3]; adjoints land on those positions.
    let t = Tape::<f64>::new();
    let x = t.var(&Tensor::new([2, 2], vec![1.0, 2.0, 3.0, 4.0]));
    let s = x.index_select(0, &[1, 1, 0]);
    assert_eq!(s.value().data(), &[3.0, 4.0, 3.0, 4.0, 1.0, 2.0]);
    t.backward(s.sum());
    assert_eq!(t.grad(x).data(), &[1.0, 1.0, 2.0, 2.0]);
    let g = x.gather(&[1, 0]);
    assert_eq!(g.value().data(), &[2.0, 3.0]);
    t.backward(g.sum());
    assert_eq!(t.grad(x).data(), &[0.0, 1.0, 1.0, 0.0]);
}

#[test]
fn mse_and_batch_norm_values() {
    // mse([1, 2], [3, 5]) = ((−2)² + (−3)²)/2 = 6.5; ∂/∂x = 2(x − y)/2 = [−2, −3].
    let t = Tape::<f64>::new();
    let x = t.var(&Tensor::vector(vec![1.0, 2.0]));
    let y = t.constant(&Tensor::vector(vec![3.0, 5.0]));
    let l = x.mse(y);
    assert_eq!(l.item(), 6.5);
    t.backward(l);
    assert_eq!(t.grad(x).data(), &[-2.0, -3.0]);

    // Batch norm of x = [[1], [3]] (n = 2, c = 1), eps = 0: μ = 2, σ² = 1, so
    // x̂ = [−1, 1] and y = 2·x̂ + 0.5 = [−1.5, 2.5]. Σ y = n·β + γ·Σ x̂ does not
    // depend on x (Σ x̂ = 0 always): ∂/∂x = 0, ∂/∂γ = Σ x̂ = 0, ∂/∂β = n = 2.
    let xb = t.var(&Tensor::new([2, 1], vec![1.0, 3.0]));
    let gamma = t.var(&Tensor::vector(vec![2.0]));
    let beta = t.var(&Tensor::vector(vec![0.5]));
    let yb = xb.batch_norm(gamma, beta, 0.0);
    close(yb.value().data(), &[-1.5, 2.5], 1e-15);
    t.backward(yb.sum());
    close(t.grad(xb).data(), &[0.0, 0.0], 1e-15);
    close(t.grad(gamma).data(), &[0.0], 1e-15);
    close(t.grad(beta).data(), &[2.0], 1e-15);
}

#[test]
fn backward_with_a_cotangent_is_a_vjp() {
    // y = 3x² elementwise: J = diag(6x); Jᵀu = 6x⊙u = 6·[1·1, 2·(−2)] = [6, −24].
    let t = Tape::<f64>::new();
    let x = t.var(&Tensor::vector(vec![1.0, 2.0]));
    let y = x.square().mul_scalar(3.0);
    t.backward_with(y, &[1.0, -2.0]);
    assert_eq!(t.grad(x).data(), &[6.0, -24.0]);
}

#[test]
fn stop_gradient_blocks_the_adjoint() {
    // f(x) = x·detach(x): the value is x², but the detached factor is a
    // constant, so ∂f/∂x = detach(x) = x, not 2x. At x = 3: f = 9, ∂f/∂x = 3.
    let t = Tape::<f64>::new();
    let x = t.var(&Tensor::scalar(3.0));
    let d = x.detach();
    let f = x * d;
    t.backward(f);
    assert_eq!(f.item(), 9.0);
    assert_eq!(t.grad(x).item(), 3.0);
    // No adjoint reaches the detached copy itself either.
    assert_eq!(t.grad(d).item(), 0.0);

    // A path only through detach contributes nothing:
    // g(x) = Σ exp(detach(x)) + Σ x has ∂g/∂x = 1.
    let v = t.var(&Tensor::vector(vec![0.5, -1.0]));
    let g = t.detach(v).exp().sum() + v.sum();
    t.backward(g);
    assert_eq!(t.grad(v).data(), &[1.0, 1.0]);
    // Everything computed from the detached copy alone is a constant.
    let only = t.detach(v).exp().sum();
    t.backward(only);
    assert_eq!(t.grad(v).data(), &[0.0, 0.0]);
}

#[test]
fn an_unconnected_variable_has_a_zero_gradient() {
    // y does not depend on z: ∂y/∂z = 0 (a structural zero, no rule runs for it).
    let t = Tape::<f64>::new();
    let x = t.var(&Tensor::scalar(1.5));
    let z = t.var(&Tensor::vector(vec![1.0, 2.0]));
    let _unused = z.exp();
    t.backward(x.square());
    assert_eq!(t.grad(z).data(), &[0.0, 0.0]);
    assert_eq!(t.grad(x).item(), 3.0);
}

#[test]
fn the_new_ops_give_hessian_vector_products_on_duals() {
    // The reverse sweep on dual numbers with tangent v on x gives H·v.
    // f(x) = Σ_i where(c_i > 0, x_i³, clamp(x_i, −1, 1)²)
    // with c = [1, −1, −1] and x = [2, 0.5, 3]:
    //   term 0: x³ → ∂² = 6x = 12;  term 1: clamp inside → x² → ∂² = 2;
    //   term 2: clamp saturated (3 > 1) → constant → ∂² = 0.
    // H is diagonal, so H·v = [12·v0, 2·v1, 0·v2] with v = [1, 1, 1].
    let t = Tape::<Dual<f64>>::new();
    let x = t.var(&Tensor::vector(vec![
        Dual::new(2.0, 1.0),
        Dual::new(0.5, 1.0),
        Dual::new(3.0, 1.0),
    ]));
    let c = t.constant_base(&Tensor::vector(vec![1.0, -1.0, -1.0]));
    let f = c.where_(x.powf(3.0), x.clamp(-1.0, 1.0).square()).sum();
    t.backward(f);
    let g = t.grad(x);
    // Gradient: [3x², 2x, 0] = [12, 1, 0]; H·v = [12, 2, 0].
    let (grad, hv): (Vec<f64>, Vec<f64>) = g.data().iter().map(|d| (d.v, d.d)).unzip();
    close(&grad, &[12.0, 1.0, 0.0], 1e-12);
    close(&hv, &[12.0, 2.0, 0.0], 1e-12);

    // h(x, y) = Σ max(x, y)² with x = [1, −1], y = [0, 0.5]: max picks x0 and y1.
    // ∂²/∂x0² = 2, everything else in the x-block 0. Tangent on x only:
    // (H·v)_x = [2, 0], (H·v)_y = [0, 0] (no cross term since max picks one side).
    let x = t.var(&Tensor::vector(vec![
        Dual::new(1.0, 1.0),
        Dual::new(-1.0, 1.0),
    ]));
    let y = t.var(&Tensor::vector(vec![
        Dual::new(0.0, 0.0),
        Dual::new(0.5, 0.0),
    ]));
    let h = x.maximum(y).square().sum();
    t.backward(h);
    let hx: Vec<f64> = t.grad(x).data().iter().map(|d| d.d).collect();
    let hy: Vec<f64> = t.grad(y).data().iter().map(|d| d.d).collect();
    close(&hx, &[2.0, 0.0], 1e-12);
    close(&hy, &[0.0, 0.0], 1e-12);
    // minimum picks the other sides: ∂²/∂x1² = 2.
    t.backward(x.minimum(y).square().sum());
    let hx: Vec<f64> = t.grad(x).data().iter().map(|d| d.d).collect();
    close(&hx, &[0.0, 2.0], 1e-12);
}

#[test]
fn a_leaf_from_adjoints_is_the_gradient_and_a_fresh_leaf() {
    // f(x, y, c) = Σ x²·y + 0·… (c unused) at x = [1, 2], y = [3]:
    // ∂f/∂x = 2x·y = [6, 12], ∂f/∂y = Σ x² = 5, nothing reaches c.
    let t = Tape::<f64>::new();
    let x = t.var(&Tensor::vector(vec![1.0, 2.0]));
    let y = t.var(&Tensor::vector(vec![3.0]));
    let c = t.var(&Tensor::vector(vec![7.0, 7.0]));
    t.backward((x.square() * y).sum());
    let mut seen = Vec::new();
    let g = t.leaf_from_adjoints([5], &[c, x, y], true, |k, out, a| {
        seen.push((k, out.len(), a.is_some()));
        match a {
            Some(a) => out.copy_from_slice(a),
            None => out.fill(-1.0),
        }
    });
    assert_eq!(seen, [(0, 2, false), (1, 2, true), (2, 1, true)]);
    assert_eq!(g.value().data(), &[-1.0, -1.0, 6.0, 12.0, 5.0]);
    // The leaf is a new input of its own: a step x − α g on it, swept, gives
    // g's adjoint −α u and leaves x's own adjoint to the new sweep.
    let step = x - g.slice(0, 2, 4) * 0.5;
    assert_eq!(step.value().data(), &[1.0 - 3.0, 2.0 - 6.0]);
    t.backward_with(step, &[1.0, 10.0]);
    assert_eq!(t.grad(g).data(), &[0.0, 0.0, -0.5, -5.0, 0.0]);
    assert_eq!(t.grad(x).data(), &[1.0, 10.0]);
}

#[test]
fn seeds_written_in_place_add_up_like_sliced_seeds() {
    // y = 3x at x = [1, 2], seeded twice: u = [1, 10] (in two pieces), then
    // [0.5, 0.5] on the same output: x̄ = 3 (u + u') = [4.5, 31.5], as
    // backward_seeded with the two slices gives.
    let t = Tape::<f64>::new();
    let x = t.var(&Tensor::vector(vec![1.0, 2.0]));
    let y = x * 3.0;
    let mut calls = Vec::new();
    t.backward_seeded_by(&[y, y], |k, g, add| {
        calls.push((k, add));
        let u: &[f64] = if k == 0 { &[1.0, 10.0] } else { &[0.5, 0.5] };
        for (a, &b) in g.iter_mut().zip(u) {
            *a = if add { *a + b } else { b };
        }
    });
    assert_eq!(calls, [(0, false), (1, true)]);
    let by_fill = t.grad(x);
    t.backward_seeded(&[(y, &[1.0, 10.0]), (y, &[0.5, 0.5])]);
    assert_eq!(by_fill.data(), t.grad(x).data());
    assert_eq!(by_fill.data(), &[4.5, 31.5]);
}
