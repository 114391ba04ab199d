//! Programmer errors panic with the op and the shapes (or tapes) involved, at
//! the caller's line.

mod common;
use common::panic_of;

use tape::{concat, Tape, Tensor};

// ---------- mixing tapes ----------

#[test]
#[should_panic(expected = "add: operand Var(tape")]
fn adding_vars_of_two_tapes_panics() {
    let (t1, t2) = (Tape::<f64>::new(), Tape::<f64>::new());
    let a = t1.var(&Tensor::vector(vec![1.0, 2.0]));
    let b = t2.var(&Tensor::vector(vec![3.0, 4.0]));
    let _ = a + b;
}

/// `(line of the call, a closure running it)`, for checking panic locations.
macro_rules! at_line {
    ($e:expr) => {
        (line!(), Box::new(move || drop_value($e)) as Box<dyn Fn()>)
    };
}

fn drop_value<T>(_: T) {}

#[test]
fn the_mixing_message_names_both_tapes_and_the_callers_line() {
    let (t1, t2) = (Tape::<f64>::new(), Tape::<f64>::new());
    let a = t1.var(&Tensor::vector(vec![1.0, 2.0]));
    let b = t2.var(&Tensor::vector(vec![3.0, 4.0]));
    let (line, f) = at_line!(a * b);
    let (msg, at) = panic_of(f);
    let (id1, id2) = (t1.id(), t2.id());
    assert_ne!(id1, id2);
    assert!(
        msg.contains(&format!("belongs to tape {id2}"))
            && msg.contains(&format!("recorded on tape {id1}"))
            && msg.starts_with("mul:"),
        "{msg}"
    );
    assert_eq!(at, format!("{}:{line}", file!()), "{msg}");
}

#[test]
fn mixing_tapes_in_matmul_concat_and_where_panics() {
    let (t1, t2) = (Tape::<f64>::new(), Tape::<f64>::new());
    let a = t1.var(&Tensor::zeros([2, 2]));
    let b = t2.var(&Tensor::zeros([2, 2]));
    let (id1, id2) = (t1.id(), t2.id());
    for (name, msg) in [
        (
            "matmul",
            panic_of(|| {
                let _ = a.matmul(b);
            })
            .0,
        ),
        (
            "concat",
            panic_of(|| {
                let _ = concat(&[a, b], 0);
            })
            .0,
        ),
        (
            "where_",
            panic_of(|| {
                let _ = a.where_(a, b);
            })
            .0,
        ),
        (
            "maximum",
            panic_of(|| {
                let _ = a.maximum(b);
            })
            .0,
        ),
    ] {
        assert!(
            msg.starts_with(name)
                && msg.contains(&format!("tape {id1}"))
                && msg.contains(&format!("tape {id2}")),
            "{name}: {msg}"
        );
    }
    // Asking one tape about another's variable.
    let msg = panic_of(|| {
        let _ = t1.value(b);
    })
    .0;
    assert!(
        msg.contains(&format!("belongs to tape {id2}, not to tape {id1}")),
        "{msg}"
    );
}

// ---------- shapes ----------

#[test]
#[should_panic(expected = "matmul: lhs [3, 4], rhs [5, 2]: inner dimensions 4 != 5")]
fn matmul_inner_dimension_mismatch() {
    let t = Tape::<f64>::new();
    let a = t.var(&Tensor::zeros([3, 4]));
    let b = t.var(&Tensor::zeros([5, 2]));
    let _ = a.matmul(b);
}

#[test]
#[should_panic(expected = "matmul: lhs [2, 3, 4], rhs [3, 4, 5]: batch dimensions 2 != 3")]
fn matmul_batch_mismatch() {
    let t = Tape::<f64>::new();
    let a = t.var(&Tensor::zeros([2, 3, 4]));
    let b = t.var(&Tensor::zeros([3, 4, 5]));
    let _ = a.matmul(b);
}

#[test]
#[should_panic(expected = "add: lhs [2, 3], rhs [4]: shapes do not broadcast")]
fn add_shapes_do_not_broadcast() {
    let t = Tape::<f64>::new();
    let a = t.var(&Tensor::zeros([2, 3]));
    let b = t.var(&Tensor::zeros([4]));
    let _ = a + b;
}

#[test]
#[should_panic(expected = "conv2d: x [1, 3, 5, 5], weight [2, 2, 3, 3]: channels 3 != 2")]
fn conv2d_channel_mismatch() {
    let t = Tape::<f64>::new();
    let x = t.var(&Tensor::zeros([1, 3, 5, 5]));
    let w = t.var(&Tensor::zeros([2, 2, 3, 3]));
    let _ = x.conv2d(w, 1, 0);
}

#[test]
#[should_panic(
    expected = "conv2d: x [1, 1, 2, 2], weight [1, 1, 3, 3]: kernel does not fit with stride 1, padding 0"
)]
fn conv2d_kernel_too_large() {
    let t = Tape::<f64>::new();
    let x = t.var(&Tensor::zeros([1, 1, 2, 2]));
    let w = t.var(&Tensor::zeros([1, 1, 3, 3]));
    let _ = x.conv2d(w, 1, 0);
}

#[test]
#[should_panic(expected = "reshape: x [2, 3], to [4]: element counts 6 != 4")]
fn reshape_element_count_mismatch() {
    let t = Tape::<f64>::new();
    let x = t.var(&Tensor::zeros([2, 3]));
    let _ = x.reshape([4]);
}

#[test]
#[should_panic(expected = "where_: cond [2], a [3], b []: shapes do not broadcast")]
fn where_shapes_do_not_broadcast() {
    let t = Tape::<f64>::new();
    let c = t.var(&Tensor::zeros([2]));
    let a = t.var(&Tensor::zeros([3]));
    let b = t.var(&Tensor::scalar(0.0));
    let _ = c.where_(a, b);
}

#[test]
#[should_panic(expected = "maximum: lhs [2], rhs [3]: shapes do not broadcast")]
fn maximum_shapes_do_not_broadcast() {
    let t = Tape::<f64>::new();
    let a = t.var(&Tensor::zeros([2]));
    let b = t.var(&Tensor::zeros([3]));
    let _ = a.maximum(b);
}

#[test]
#[should_panic(expected = "backward: output [2]: the output is not a scalar")]
fn backward_from_a_non_scalar() {
    let t = Tape::<f64>::new();
    let a = t.var(&Tensor::zeros([2]));
    t.backward(a.exp());
}

#[test]
fn shape_errors_are_reported_at_the_callers_line() {
    let t = &Tape::<f64>::new();
    let a = t.var(&Tensor::zeros([3, 4]));
    let b = t.var(&Tensor::zeros([5, 2]));
    let cases = [
        at_line!(a.matmul(b)),
        at_line!(a + b),
        at_line!(a.reshape([7])),
        at_line!(a.maximum(b)),
        at_line!(a.where_(a, b)),
        at_line!(a.conv2d(b, 1, 0)),
        at_line!(a.log_softmax(2)),
        at_line!(a.sum_axes(&[2], false)),
        at_line!(a.mean_axes(&[3], true)),
        at_line!(a.max_axis(2, false)),
        at_line!(a.permute(&[0, 0])),
        at_line!(a.broadcast_to([2, 2])),
        at_line!(a.slice(0, 2, 9)),
        at_line!(a.index_select(1, &[4])),
        at_line!(a.gather(&[0, 1])),
        at_line!(a.softmax_cross_entropy(&[0])),
        at_line!(a.mse(b)),
        at_line!(a.max_pool2d(2, 1)),
        at_line!(a.avg_pool2d(2, 1)),
        at_line!(a.batch_norm(b, b, 1e-5)),
        at_line!(concat(&[a, b], 0)),
        at_line!(t.leaf([2], &[1.0], true)),
        at_line!(t.backward(a)),
        at_line!(t.backward_with(a, &[1.0])),
    ];
    for (line, f) in cases {
        let (msg, at) = panic_of(f);
        assert_eq!(at, format!("{}:{line}", file!()), "{msg}");
    }
}
