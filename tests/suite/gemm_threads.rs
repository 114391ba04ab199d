//! The GEMM threads must not change a single bit. A large product called
//! outside rayon's workers is cut into fixed chunks of output rows or columns
//! (a function of the shape only), run as rayon jobs; inside a worker it is one
//! packed product (`kernels/packed.rs`). Each output element is one
//! accumulator summed from zero over all of k in a fixed order, whatever its
//! place in a tile, so it is computed by the same sequence of FMAs whatever
//! the thread count. These tests check it: the same GEMMs (plain, transposed, dual) and an
//! MLP gradient and HVP run in two child processes with `RAYON_NUM_THREADS=1`
//! and `=2` (rayon's global pool is built once per process), and in one
//! process both cut (called from the main thread) and uncut (called inside a
//! rayon worker); the bits of the results are compared.

use std::process::Command;

use tape::gemm::{gemm, MatRef};
use tape::{Dual, Tape, Tensor};

/// FNV-1a over the bits of the results.
fn fingerprint() -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |x: u32| {
        for b in x.to_le_bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    };
    // Shapes large enough to be cut into chunks (more than 2^25 multiply-adds),
    // along rows and along columns; the dual products' real parts are cut too.
    for &(m, k, n) in &[
        (256usize, 784usize, 256usize),
        (64, 800, 800),
        (784, 64, 1024),
    ] {
        let a: Vec<f32> = (0..m * k).map(|i| ((i as f32) * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i as f32) * 0.11).cos()).collect();
        let mut c = vec![0.0f32; m * n];
        gemm(
            1.0,
            MatRef::row_major(&a, m, k),
            MatRef::row_major(&b, k, n),
            0.0,
            &mut c,
        );
        c.iter().for_each(|x| eat(x.to_bits()));
        let mut ct = vec![0.0f32; k * n];
        gemm(
            1.0,
            MatRef::row_major(&a, m, k).t(),
            MatRef::row_major(&c, m, n),
            0.0,
            &mut ct,
        );
        ct.iter().for_each(|x| eat(x.to_bits()));
        let ad: Vec<Dual<f32>> = a.iter().map(|&x| Dual::new(x, x * 0.5 - 0.1)).collect();
        let bd: Vec<Dual<f32>> = b.iter().map(|&x| Dual::new(x, 1.0 - x)).collect();
        let mut cd = vec![Dual::default(); m * n];
        gemm(
            1.0,
            MatRef::row_major(&ad, m, k),
            MatRef::row_major(&bd, k, n),
            0.0,
            &mut cd,
        );
        cd.iter().for_each(|x| {
            eat(x.v.to_bits());
            eat(x.d.to_bits())
        });
    }
    // An MLP gradient (f32) and its forward-over-reverse HVP (Dual<f32>).
    let (n, d, hid, cls) = (64, 784, 256, 10);
    let x = Tensor::from_fn(&[n, d], |i| ((i as f32) * 0.013).sin());
    let w1 = Tensor::from_fn(&[d, hid], |i| ((i as f32) * 0.7).cos() * 0.03);
    let w2 = Tensor::from_fn(&[hid, cls], |i| ((i as f32) * 0.3).sin() * 0.06);
    let labels: Vec<usize> = (0..n).map(|i| i % cls).collect();
    let t = Tape::<f32>::new();
    let (xv, a, b) = (t.constant(&x), t.var(&w1), t.var(&w2));
    let loss = xv.matmul(a).relu().matmul(b).softmax_cross_entropy(&labels);
    t.backward(loss);
    eat(loss.item().to_bits());
    t.grad(a).data().iter().for_each(|g| eat(g.to_bits()));
    let td = Tape::<Dual<f32>>::new();
    let xv = td.constant_base(&x);
    let a = td.var(&w1.map(|w| Dual::new(w, w.sin())));
    let b = td.var(&w2.map(|w| Dual::new(w, w.cos())));
    let loss = xv.matmul(a).relu().matmul(b).softmax_cross_entropy(&labels);
    td.backward(loss);
    td.grad(a).data().iter().for_each(|g| {
        eat(g.v.to_bits());
        eat(g.d.to_bits())
    });
    format!("{h:016x}")
}

/// The child: prints the fingerprint (run by the test below, not on its own).
#[test]
#[ignore = "child process of gemm_results_do_not_depend_on_the_thread_count"]
fn gemm_threads_child() {
    println!("FINGERPRINT {}", fingerprint());
    // rayon's global pool exists once a GEMM was cut: report the process's threads.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap_or("0");
    println!("THREADS {}", threads.trim());
}

#[test]
fn gemm_results_do_not_depend_on_the_thread_count() {
    let exe = std::env::current_exe().expect("test binary path");
    let run = |threads: &str| -> (String, usize) {
        let out = Command::new(&exe)
            .args([
                "--ignored",
                "--exact",
                "gemm_threads::gemm_threads_child",
                "--nocapture",
            ])
            .env("RAYON_NUM_THREADS", threads)
            .output()
            .expect("spawn the child test");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "child with {threads} threads failed:\n{text}"
        );
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key).map(str::to_owned))
                .unwrap_or_else(|| panic!("no {key} from the child:\n{text}"))
        };
        (
            field("FINGERPRINT "),
            field("THREADS ").parse().unwrap_or(0),
        )
    };
    let ((one, threads_one), (two, threads_two)) = (run("1"), run("2"));
    // The 2-thread child really has a worker thread more (else the
    // comparison would prove nothing).
    assert!(
        threads_two > threads_one,
        "RAYON_NUM_THREADS=2 started no worker thread ({threads_two} vs {threads_one})"
    );
    assert_eq!(one, two, "1 thread and 2 threads give different bits");
    // And the fingerprint is a function of the inputs: the same in-process.
    assert_eq!(fingerprint(), fingerprint());
}

/// In one process: cut into rayon jobs (called from the test's own thread,
/// outside any pool) and one call (inside a rayon worker, where products are
/// not cut) give the same bits.
#[test]
fn cut_and_uncut_products_give_the_same_bits() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("a rayon pool");
    // Outside any pool, products are cut only if rayon's global pool has two
    // threads or more (it has one per core unless RAYON_NUM_THREADS says otherwise).
    if std::env::var_os("RAYON_NUM_THREADS").is_none()
        && std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2)
    {
        assert!(
            rayon::current_num_threads() >= 2,
            "the global pool has one thread"
        );
    }
    let outside = fingerprint();
    let inside = pool.install(fingerprint);
    assert_eq!(outside, inside, "cut and uncut GEMMs give different bits");
}
