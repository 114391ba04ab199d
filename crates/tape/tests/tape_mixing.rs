//! Mixing variables of two tapes panics with both tape ids.
//!
//! This file holds exactly one test so that its two tapes are the first ones
//! created in the process: tape ids come from a process-wide counter starting
//! at 1, which makes the ids in the expected message deterministic. Add other
//! tests to `errors.rs`, not here.

use tape::{Tape, Tensor};

#[test]
#[should_panic(
    expected = "add: operand Var(tape 2, node 0, shape [2]) belongs to tape 2, but the op is \
                recorded on tape 1; variables of two tapes cannot be mixed"
)]
fn an_op_on_vars_of_two_tapes_names_both_tape_ids() {
    let t1 = Tape::<f64>::new();
    let t2 = Tape::<f64>::new();
    assert_eq!((t1.id(), t2.id()), (1, 2));
    let a = t1.var(&Tensor::vector(vec![1.0, 2.0]));
    let b = t2.var(&Tensor::vector(vec![3.0, 4.0]));
    let _ = a + b;
}
