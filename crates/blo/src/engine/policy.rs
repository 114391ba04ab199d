//! Checkpoint policies for the adjoint sweep, and the revolve cost.
//!
//! The adjoint step j needs state_{j−1}, and the sweep visits j = r, r−1, …, 1,
//! the reverse of the order in which states are produced. A [`Policy`] names
//! which states are kept and which are recomputed; its plan
//! ([`crate::engine::plan::plan`]) is the list of actions the sweep executes
//! (always the same step function, so the hypergradient is bit-identical under
//! every policy). The plan module documents the cost convention; in short,
//! φ_0 is regenerated from θ instead of held, and a policy's peak counts every
//! state held at once, the working state included:
//!
//! | policy | states held at peak | forward steps |
//! |---|---|---|
//! | `StoreAll` | r | r |
//! | `Recompute` (from θ) | 1 | r + r(r−1)/2 = r(r+1)/2 |
//! | `EveryK { k }`, n = ⌈r/k⌉ | ≤ n + k − 1 | 2r − n |
//! | `Sqrt` | `EveryK` with k = ⌈√r⌉ | ≈ 2r − √r |
//! | `Binomial { snapshots: s }` | ≤ s | r + U(r, s), revolve's optimum over the whole unroll |
//!
//! U is docs/math.md §9's recurrence (docs/math.md): the binomial plan places its
//! snapshots during the first sweep. [`revolve_cost`] is the closed form of the
//! reversal-only count t(l, s), which the plan uses for the parts it reverses
//! from a held snapshot.

use crate::error::BloError;

/// Which states of the inner trajectory the exact adjoint sweep keeps.
///
/// A policy is plain data, written as a value (`Policy::Binomial { snapshots: 4 }`);
/// its budget is checked where it is used ([`crate::Exact::new`], or
/// [`Policy::validate`] directly), which names the field and its value.
///
/// ```
/// use blo::{Exact, Policy};
/// assert!(Exact::new(Policy::Binomial { snapshots: 4 }).is_ok());
/// let e = Exact::new(Policy::EveryK { k: 0 }).unwrap_err();
/// assert!(e.to_string().contains("k = 0"), "{e}");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Keep every state φ_0..φ_{r−1}: no recomputation, O(r·d) memory.
    StoreAll,
    /// Keep nothing; recompute φ_{j−1} from φ_0 = Φ_0(θ) for every adjoint
    /// step: constant memory, O(r²) time (the UFO-BLO authors' exact branch).
    Recompute,
    /// Keep every k-th state in the first sweep; in the reversal, recompute
    /// one segment of k states at a time from its checkpoint.
    EveryK {
        /// The checkpoint spacing k ≥ 1.
        k: usize,
    },
    /// `EveryK` with k = ⌈√r⌉, about 2√r states and r recomputed steps.
    Sqrt,
    /// Binomial checkpointing (revolve, Griewank & Walther 2000) with
    /// `snapshots` stored states, φ_0 included: the reversal recomputes the
    /// minimal number of steps t(r, s) ([`revolve_cost`]).
    Binomial {
        /// The number of snapshot slots s ≥ 1 (one holds φ_0).
        snapshots: usize,
    },
}

impl Policy {
    /// `EveryK { k }`, checked.
    ///
    /// # Errors
    /// [`BloError::InvalidHyperparameter`] if k = 0.
    #[deprecated(
        since = "0.1.0",
        note = "write the value `Policy::EveryK { k }`; `Exact::new` (or `Policy::validate`) checks it"
    )]
    pub fn every_k(k: usize) -> Result<Self, BloError> {
        let p = Policy::EveryK { k };
        p.validate()?;
        Ok(p)
    }

    /// `Binomial { snapshots }`, checked.
    ///
    /// # Errors
    /// [`BloError::InvalidHyperparameter`] if snapshots = 0 (φ_0 needs a slot).
    #[deprecated(
        since = "0.1.0",
        note = "write the value `Policy::Binomial { snapshots }`; `Exact::new` (or `Policy::validate`) checks it"
    )]
    pub fn binomial(snapshots: usize) -> Result<Self, BloError> {
        let p = Policy::Binomial { snapshots };
        p.validate()?;
        Ok(p)
    }

    /// Checks the policy's budget.
    ///
    /// # Errors
    /// [`BloError::InvalidHyperparameter`] for k = 0 or zero snapshots.
    pub fn validate(&self) -> Result<(), BloError> {
        match *self {
            Policy::EveryK { k: 0 } => Err(BloError::invalid(
                "k",
                0,
                "checkpoint spacing must be at least 1",
            )),
            Policy::Binomial { snapshots: 0 } => Err(BloError::invalid(
                "snapshots",
                0,
                "binomial checkpointing needs at least one snapshot (for φ_0)",
            )),
            _ => Ok(()),
        }
    }

    /// The spacing `EveryK`/`Sqrt` use for r steps.
    pub fn spacing(&self, r: usize) -> Option<usize> {
        match *self {
            Policy::EveryK { k } => Some(k),
            Policy::Sqrt => Some(((r as f64).sqrt().ceil() as usize).max(1)),
            _ => None,
        }
    }
}

/// β(s, t) = C(s + t, s), saturating at `u128::MAX`: the number of steps that
/// s snapshots can reverse when every step is recomputed at most t times.
pub fn revolve_beta(s: usize, t: usize) -> u128 {
    // C(s+t, t) = Π_{i=1..t} (s + i)/i, exact at every prefix.
    let mut c: u128 = 1;
    for i in 1..=t as u128 {
        c = match c.checked_mul(s as u128 + i) {
            Some(x) => x / i,
            None => return u128::MAX,
        };
    }
    c
}

/// t(l, s): the minimal number of forward steps needed to reverse a chain of
/// l steps from a stored initial state with s snapshot slots (the initial
/// state's slot included), not counting the one evaluation of each step the
/// reversal itself makes (our HVP pass). Griewank & Walther (2000):
///
/// ```text
/// t(l, s) = τ·l − β(s + 1, τ − 1)   for β(s, τ − 1) < l ≤ β(s, τ),
/// β(s, τ) = C(s + τ, s),
/// ```
///
/// the closed form of the recurrence t(1, s) = 0, t(l, 1) = l(l − 1)/2,
/// t(l, s) = min_{1≤m<l} [m + t(l − m, s − 1) + t(m, s)] (advance m steps,
/// store the state there, reverse the right part with one slot fewer, then the
/// left part with all slots again).
///
/// ```
/// // One slot: recompute from the start every time, 0 + 1 + … + (l−1).
/// assert_eq!(blo::revolve_cost(10, 1), 45);
/// // Enough slots to store everything: each state is produced once.
/// assert_eq!(blo::revolve_cost(10, 10), 9);
/// ```
///
/// # Panics
/// If s = 0 and l > 1 (nothing can be reversed without a slot).
pub fn revolve_cost(l: usize, s: usize) -> u128 {
    if l <= 1 {
        return 0;
    }
    assert!(s >= 1, "revolve_cost: {l} steps with 0 snapshots");
    let l128 = l as u128;
    let mut tau = 1usize;
    while revolve_beta(s, tau) < l128 {
        tau += 1;
    }
    tau as u128 * l128 - revolve_beta(s + 1, tau - 1)
}
