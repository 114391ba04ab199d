//! Matrix views are built only by checked constructors: zero strides along a
//! dimension of size > 1, overlapping outputs, views that reach past their
//! buffer, and index overflow all panic with the shape and strides, at the
//! caller's line, before any kernel runs. Nothing here depends on the CPU:
//! the same panics happen under every kernel family this machine has.

mod common;
use common::{panic_of, try_panic_of};

use tape::gemm::{gemm, gemm_into, MatMut, MatRef};
use tape::kernels::{with_family, Family};
use tape::{Dual, Tape, Tensor};

/// `(line, expected message fragments, call)`.
type Case<'a> = (u32, Vec<&'static str>, Box<dyn Fn() + 'a>);

/// A [`Case`] for the expression `$e`.
macro_rules! case {
    ([$($want:expr),*], $e:expr) => {
        (line!(), vec![$($want),*], Box::new(move || { let _ = $e; }) as Box<dyn Fn() + '_>)
    };
}

/// Every bad layout, through the public constructors and `gemm`, under every
/// kernel family this CPU has (so the check cannot depend on AVX-512).
#[test]
fn bad_views_panic_with_shapes_at_the_callers_line() {
    let d3 = [1.0_f64, 2.0, 3.0];
    let d6 = [0.5_f64; 6];
    let (d3, d6) = (&d3, &d6);
    let max = usize::MAX;
    let cases: Vec<Case> = vec![
        // The case: rows 2, cols 3, rs 2, cs 0, 3 elements.
        case!(["MatRef::new: [2, 3] view with strides (2, 0): column stride 0 repeats one column 3 times"], MatRef::new(d3, 2, 3, 2, 0)),
        // ... as the right operand of a small product, the path that used to
        // pack it into a partly uninitialised stack buffer under AVX-512.
        case!(["MatRef::new: [2, 3] view with strides (2, 0): column stride 0"], gemm(1.0, MatRef::row_major(d6, 1, 2), MatRef::new(d3, 2, 3, 2, 0), 0.0, &mut [0.0; 3])),
        case!(["MatRef::new: [2, 3] view with strides (2, 0): column stride 0"], gemm(1.0, MatRef::row_major(&[Dual::new(1.0, 0.5); 2], 1, 2), MatRef::new(&[Dual::new(2.0_f64, 1.0); 3], 2, 3, 2, 0), 0.0, &mut [Dual::default(); 3])),
        case!(["MatRef::new: [3, 2] view with strides (0, 1): row stride 0 repeats one row 3 times"], MatRef::new(d6, 3, 2, 0, 1)),
        case!(["[2, 3] view with strides (0, 0)", "stride 0"], MatRef::new(d3, 2, 3, 0, 0)),
        // Out of bounds: (1, 2) is at 3 + 4 = 7.
        case!(["MatRef::new: [2, 3] view with strides (3, 2) reaches index 7 of a buffer of 6 elements"], MatRef::new(d6, 2, 3, 3, 2)),
        case!(["MatRef::row_major: [2, 3] view with strides (3, 1) reaches index 5 of a buffer of 3"], MatRef::row_major(d3, 2, 3)),
        // "Negative" strides (a wrapped −1) overflow the index of the last element.
        case!(["MatRef::new: [2, 2] view with strides (2, 18446744073709551615)", "overflows usize"], MatRef::new(d6, 2, 2, 2, max)),
        case!(["[2, 2] view with strides (18446744073709551615, 1)", "overflows usize"], MatRef::new(d6, 2, 2, max, 1)),
        // Outputs that overlap themselves: rows 1 apart with 3 columns, a
        // Hankel layout, a zero row stride.
        case!(["MatMut::new: [2, 3] view with strides (1, 1): output elements overlap"], MatMut::new(&mut [0.0_f64; 6], 2, 3, 1, 1)),
        case!(["MatMut::new: [2, 3] view with strides (2, 1): output elements overlap"], MatMut::new(&mut [0.0_f64; 6], 2, 3, 2, 1)),
        case!(["MatMut::new: [3, 2] view with strides (1, 2): output elements overlap"], MatMut::new(&mut [0.0_f64; 6], 3, 2, 1, 2)),
        case!(["MatMut::new: [2, 3] view with strides (0, 1): row stride 0"], MatMut::new(&mut [0.0_f64; 6], 2, 3, 0, 1)),
        case!(["MatMut::row_major: [2, 4]", "reaches index 7 of a buffer of 6"], MatMut::row_major(&mut [0.0_f64; 6], 2, 4)),
        // Shapes that do not agree.
        case!(["gemm: lhs [2, 3], rhs [2, 3]: inner dimensions 3 != 2"], gemm(1.0, MatRef::row_major(d6, 2, 3), MatRef::row_major(d6, 2, 3), 0.0, &mut [0.0; 6])),
        case!(["gemm: lhs [2, 3], rhs [3, 2]: output has 6 elements, expected 2 × 2 = 4"], gemm(1.0, MatRef::row_major(d6, 2, 3), MatRef::row_major(d6, 3, 2), 0.0, &mut [0.0; 6])),
        case!(["gemm: lhs [2, 3], rhs [3, 2]: output is [3, 2], expected [2, 2]"], gemm_into(1.0, MatRef::row_major(d6, 2, 3), MatRef::row_major(d6, 3, 2), 0.0, MatMut::row_major(&mut [0.0; 6], 3, 2))),
    ];
    let families: Vec<Family> = Family::ALL
        .into_iter()
        .filter(|f| f.is_available())
        .collect();
    let mut failures = Vec::new();
    for family in &families {
        for (line, want, f) in &cases {
            let Some((msg, at)) = with_family(*family, || try_panic_of(f)) else {
                failures.push(format!("{family}: line {line}: no panic"));
                continue;
            };
            for w in want.iter().filter(|w| !msg.contains(*w)) {
                failures.push(format!("{family}: line {line}: {msg:?} lacks {w:?}"));
            }
            // Reported in this file (the caller), not inside the crate.
            if !at.starts_with(file!()) {
                failures.push(format!("{family}: line {line}: reported at {at}: {msg}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!(
        "bad views: {} cases under families {:?}",
        cases.len(),
        families
    );
}

/// The dual and real element types share the checks (the views are generic).
#[test]
#[should_panic(expected = "MatRef::new: [2, 3] view with strides (2, 0): column stride 0")]
fn dual_views_are_checked_too() {
    let d = [Dual::new(1.0_f32, 0.0); 3];
    let _ = MatRef::new(&d, 2, 3, 2, 0);
}

/// What the checks allow: a zero stride along a dimension of size 1 (a
/// broadcast row), empty views with any strides, overlapping *input* rows,
/// and a column-major or padded output. Each gives the product of the same
/// matrices stored densely.
#[test]
fn allowed_layouts_give_the_dense_product() {
    let x = [1.0_f64, -2.0, 0.5];
    let b = [3.0_f64, 1.0, -1.0, 2.0, 0.25, 4.0]; // 3 × 2
    let bm = MatRef::row_major(&b, 3, 2);
    let mut want = [0.0; 2];
    gemm(1.0, MatRef::row_major(&x, 1, 3), bm, 0.0, &mut want);
    let mut got = [0.0; 2];
    gemm(1.0, MatRef::new(&x, 1, 3, 0, 1), bm, 0.0, &mut got);
    assert_eq!(got, want);
    // The row [1, 2, 3] repeated through overlapping rows: A[i, l] = h[i + l].
    let h = [1.0_f64, 2.0, 3.0, 4.0];
    let hankel = MatRef::new(&h, 2, 3, 1, 1);
    let dense = [1.0, 2.0, 3.0, 2.0, 3.0, 4.0];
    let (mut got, mut want) = ([0.0; 4], [0.0; 4]);
    gemm(1.0, hankel, bm, 0.0, &mut got);
    gemm(1.0, MatRef::row_major(&dense, 2, 3), bm, 0.0, &mut want);
    assert_eq!(got, want);
    // Column-major and padded outputs (rows 3 apart), β = 0.5.
    for (rs, cs, len) in [(1, 2, 4), (3, 1, 6)] {
        let mut c = vec![1.0; len];
        gemm_into(1.0, hankel, bm, 0.5, MatMut::new(&mut c, 2, 2, rs, cs));
        for i in 0..2 {
            for j in 0..2 {
                assert_eq!(c[i * rs + j * cs], want[i * 2 + j] + 0.5, "({rs}, {cs})");
            }
        }
    }
    // Empty views: any strides, nothing read.
    let mut none: [f64; 0] = [];
    gemm(
        1.0,
        MatRef::new(&[], 0, 5, 0, 0),
        MatRef::new(&b, 5, 0, 0, 7),
        0.0,
        &mut none,
    );
}

/// The tape's matrix product reaches the kernels only through checked views:
/// a shape mismatch panics with the op and both shapes under every family.
#[test]
fn tape_matmul_mismatch_panics_under_every_family() {
    for family in Family::ALL.into_iter().filter(|f| f.is_available()) {
        let (msg, _) = with_family(family, || {
            panic_of(|| {
                let t = Tape::<f32>::new();
                let a = t.var(&Tensor::zeros([3, 4]));
                let b = t.var(&Tensor::zeros([5, 2]));
                let _ = a.matmul(b);
            })
        });
        assert!(
            msg.contains("matmul: lhs [3, 4], rhs [5, 2]"),
            "{family}: {msg}"
        );
    }
}
