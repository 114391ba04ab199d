//! Checkpoint plans: the schedule of an adjoint sweep as data.
//!
//! A [`Plan`] is the list of [`Action`]s one exact (or truncated, or first
//! order) estimate performs on a set of state buffers: where φ_0 is written,
//! which states are copied aside as snapshots during the first sweep, which
//! are recomputed, in which buffer each adjoint step finds its state, and when
//! a buffer is given back. It is computed up front by a pure function of
//! (policy, r) ([`plan`], [`truncated`], [`first_order`], or of a memory
//! budget: [`plan_for_budget`]), checked by replaying it on a symbolic machine
//! ([`Plan::check`]), and executed by one loop that knows nothing of policies.
//!
//! # The cost and memory convention
//!
//! - **States live in buffers**, numbered `0..plan.buffers()`. A forward step
//!   j (j = 1..=r) advances a buffer *in place* from state_{j−1} to state_j
//!   ([`Action::Advance`]); a snapshot is a copy into another buffer
//!   ([`Action::Copy`], no forward step).
//! - **φ_0 is free to regenerate**: φ_0 = Φ_0(θ) is written into a buffer at any
//!   time at zero forward-step cost ([`Action::Init`]), so no plan holds φ_0
//!   between two uses.
//! - **The first sweep** starts from φ_0 and walks one working buffer to φ_r
//!   (exactly r forward steps, in every plan), copying snapshots as it passes;
//!   then [`Action::Turn`] evaluates the outer loss and its gradient at φ_r.
//!   No state is recomputed before the Turn.
//! - **The reversal** runs the adjoint steps j = r, r−1, …, `lowest`
//!   ([`Action::Adjoint`]); step j needs state_{j−1} in some buffer. It *consumes*
//!   that state (no later adjoint step can use state_{j−1}, and no state can be
//!   derived from it that is still needed), so the only action allowed on that
//!   buffer afterwards is [`Action::Free`]. States are recomputed by copying a
//!   snapshot to a fresh buffer (or writing φ_0 into one) and advancing it.
//! - **Forward steps** count every step of every `Advance`: r for the first
//!   sweep plus the recomputation. This is the count `Stats::forward_steps`
//!   reports and the count of docs/math.md §9.
//! - **Memory** is the number of buffers held at once (between the action that
//!   fills a buffer, `Init` or `Copy`, and its `Free`), working buffer
//!   included. Every plan frees every buffer after its last use, so an
//!   executor whose held-state meter counts `Init`/`Copy` up and `Free` down
//!   measures exactly [`Plan::peak`]. Buffer ids are allocated lowest-free
//!   first, so [`Plan::buffers`] = [`Plan::peak`]: an executor allocates that
//!   many state buffers and never more.
//!
//! In docs/math.md §9's terms, a budget of s *slots* "with φ_0 in one of them" is
//! a plan holding at most s buffers: φ_0's slot is the regenerable φ_0 (it
//! holds no buffer), and the slot it frees is the working buffer. So s slots
//! = s − 1 real snapshots + 1 working buffer. With this reading §9's optimum
//! r + U(r, s) is reached with peak ≤ s (the binomial plan below; proof
//! sketch: reversing l steps from a *held* snapshot with c slots holds at
//! most c + 1 buffers, its own included, by induction over the split; from
//! the regenerable φ_0 it holds at most c), and the table's counts follow.
//!
//! # The plans
//!
//! | plan | peak (buffers held at once) | forward steps |
//! |---|---|---|
//! | [`Policy::StoreAll`] | max(r, 1): φ_1..φ_{r−1} and the working buffer | r |
//! | [`Policy::Recompute`] | 1 | r + r(r−1)/2 = r(r+1)/2 |
//! | [`Policy::Binomial`] `{ snapshots: s }` | ≤ min(s, max(r, 1)) (= in every case tested) | r + U(r, s), the optimum ([`optimal_forward_steps`]) |
//! | [`Policy::EveryK`] `{ k }`, n = ⌈r/k⌉ segments | max(n, max_i [max(i, 1) + len_i − 1]) ≤ n + k − 1 | 2r − n |
//! | [`Policy::Sqrt`] | `EveryK` with k = ⌈√r⌉ | 2r − ⌈r/k⌉ |
//! | [`truncated`]`(r, k)`, k' = min(k, r) | k' + 1 if k' < r, else max(r, 1) | r |
//! | [`first_order`]`(r)` | 1 | r |
//!
//! - **StoreAll** snapshots φ_1..φ_{r−1} in the first sweep; adjoint step 1
//!   gets a fresh φ_0. It is the binomial plan with s = r.
//! - **Recompute** takes no snapshot; adjoint step j writes φ_0 into the one
//!   buffer and advances it j − 1 steps. It is the binomial plan with s = 1.
//! - **Binomial** (revolve over the whole unroll): the first sweep places the
//!   snapshots of U's optimal splits (docs/math.md §9: U(l, c) = min_m U(l − m,
//!   c − 1) + T(m, c), the snapshot at m taken as the sweep passes) down to a
//!   part that either fits (c ≥ l: all its states are kept) or has one slot
//!   (c = 1: recompute); the reversal then runs that last part and, right to
//!   left, each split's left part with T's optimal schedule (advance m,
//!   snapshot, reverse the right part with one slot fewer, then the left part).
//!   Splits are the smallest minimisers, found by binary search (both
//!   objectives are convex in m), with T and U in closed form
//!   ([`reversal_steps`], [`reversal_steps_after_sweep`]), and the parts
//!   waiting for their reversal on an explicit stack: a plan for r = 10 000
//!   takes milliseconds (1–2 ms measured for s = 15), and O(r) actions.
//! - **EveryK**: snapshots φ_k, φ_2k, … (and the regenerable φ_0) in the first
//!   sweep; segment i = [ik, min(ik + k, r)), of length len_i, is reversed last
//!   to first by recomputing its states ik+1..end−1 from its snapshot (each
//!   state in its own buffer, the snapshot's buffer holding state ik), then its
//!   adjoint steps. While segment i is reversed the plan holds the snapshots
//!   φ_k..φ_ik (i buffers, or φ_0's one buffer for i = 0) and len_i − 1
//!   recomputed states; the first sweep holds n − 1 snapshots and the working
//!   buffer. Each segment recomputes len_i − 1 steps: r − n in all.
//! - **Truncated**: the first sweep keeps the last k' states φ_{r−k'}..φ_{r−1};
//!   adjoint steps r..r−k'+1 only ([`Plan::lowest`] = r − k' + 1).
//! - **First order**: the first sweep and the Turn; no adjoint step
//!   ([`Plan::lowest`] = r + 1).
//!
//! For r = 0 every plan is `Init`, `Turn`, `Free` (peak 1, no forward step).
//!
//! # Example
//!
//! ```
//! use blo::engine::plan::{plan, Action};
//! use blo::Policy;
//!
//! // Store-all over r = 3 steps, worked out by hand: the working buffer 0 walks
//! // to φ_3, leaving φ_1 in buffer 1 and φ_2 in buffer 2; adjoint step 1 gets a
//! // fresh φ_0 in the buffer the working state gave back.
//! let p = plan(Policy::StoreAll, 3);
//! use Action::*;
//! assert_eq!(p.actions(), &[
//!     Init { buf: 0 },
//!     Advance { buf: 0, from: 0, to: 1 }, Copy { from: 0, to: 1 },
//!     Advance { buf: 0, from: 1, to: 2 }, Copy { from: 0, to: 2 },
//!     Advance { buf: 0, from: 2, to: 3 }, Turn { buf: 0 }, Free { buf: 0 },
//!     Adjoint { buf: 2, step: 3 }, Free { buf: 2 },
//!     Adjoint { buf: 1, step: 2 }, Free { buf: 1 },
//!     Init { buf: 0 }, Adjoint { buf: 0, step: 1 }, Free { buf: 0 },
//! ]);
//! assert_eq!((p.peak(), p.forward_steps(), p.buffers()), (3, 3, 3));
//!
//! // Revolve's optimum for r = 50 steps in 7 buffers (docs/math.md §9): 108 steps.
//! let b = plan(Policy::Binomial { snapshots: 7 }, 50);
//! let counts = b.check()?; // replays the plan and checks every invariant
//! assert_eq!(counts.forward_steps, 108);
//! assert!(counts.peak <= 7);
//! println!("{b}"); // one action per line
//! # Ok::<(), blo::engine::plan::PlanError>(())
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::ops::RangeInclusive;

use crate::engine::policy::Policy;

/// One action of a checkpoint plan. Buffers are numbered `0..plan.buffers()`;
/// "state_j" is φ_j, the inner state after j steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// `buf` ← φ_0 = Φ_0(θ). Not a forward step. `buf` must be free.
    Init {
        /// The buffer written (free before).
        buf: usize,
    },
    /// `to` ← a copy of the state in `from` (a snapshot, or a working copy of
    /// one). Not a forward step. `to` must be free.
    Copy {
        /// The buffer read.
        from: usize,
        /// The buffer written (free before).
        to: usize,
    },
    /// The state in `buf` goes from state_`from` to state_`to` in place, by the
    /// forward steps from+1..=to (`to` − `from` of them; `from` < `to` ≤ r).
    Advance {
        /// The buffer advanced (holding state_`from`).
        buf: usize,
        /// The state it holds before.
        from: usize,
        /// The state it holds after.
        to: usize,
    },
    /// `buf` holds φ_r: the outer loss and its gradient (the reversal's initial
    /// cotangent). Exactly once, right after the first sweep (before any
    /// recomputation and any adjoint step).
    Turn {
        /// The buffer holding φ_r.
        buf: usize,
    },
    /// The adjoint step j = `step` at state_{j−1}, held in `buf`; the state is
    /// consumed (the next action on `buf` is its `Free`).
    Adjoint {
        /// The buffer holding state_{step−1}.
        buf: usize,
        /// The step j ≥ 1.
        step: usize,
    },
    /// `buf` is no longer needed: its buffer may be reused.
    Free {
        /// The buffer given back.
        buf: usize,
    },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Action::Init { buf } => write!(f, "init    [{buf}] ← φ_0"),
            Action::Copy { from, to } => write!(f, "copy    [{to}] ← [{from}]"),
            Action::Advance { buf, from, to } => {
                write!(f, "advance [{buf}] φ_{from} → φ_{to}")
            }
            Action::Turn { buf } => write!(f, "turn    [{buf}] (outer gradient at φ_r)"),
            Action::Adjoint { buf, step } => write!(f, "adjoint [{buf}] step {step}"),
            Action::Free { buf } => write!(f, "free    [{buf}]"),
        }
    }
}

/// A checkpoint plan: the actions of one sweep over r inner steps and their
/// predicted cost. Built by [`plan`], [`truncated`], [`first_order`],
/// [`plan_for_budget`] or (checked) [`Plan::from_actions`]; see the
/// [module docs](self) for the convention.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    r: usize,
    lowest: usize,
    actions: Vec<Action>,
    buffers: usize,
    peak: usize,
    forward_steps: usize,
}

/// The counts measured by replaying a plan ([`Plan::check`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlanCounts {
    /// Forward steps over all `Advance`s (first sweep included).
    pub forward_steps: usize,
    /// The most buffers held at once.
    pub peak: usize,
    /// Distinct buffer ids (the largest id + 1).
    pub buffers: usize,
    /// Adjoint steps run.
    pub adjoints: usize,
    /// `Copy` actions.
    pub copies: usize,
    /// `Init` actions (φ_0 written).
    pub inits: usize,
}

/// What a plan breaks; `at` is the index of the offending action.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// `lowest` is not in 1..=r+1.
    #[error("lowest adjoint step {lowest} outside 1..={} for r = {r}", r + 1)]
    Lowest {
        /// The lowest adjoint step given.
        lowest: usize,
        /// The number of inner steps.
        r: usize,
    },
    /// A buffer id at or beyond the plan's buffer count.
    #[error("action {at}: buffer {buf} out of range (plan has {buffers} buffers)")]
    BufferOutOfRange {
        /// Action index.
        at: usize,
        /// The buffer id.
        buf: usize,
        /// The plan's buffer count.
        buffers: usize,
    },
    /// `Init` or `Copy` into a buffer that is still held.
    #[error("action {at}: buffer {buf} is written but still held")]
    NotFree {
        /// Action index.
        at: usize,
        /// The buffer id.
        buf: usize,
    },
    /// A read, advance or free of a buffer that holds nothing.
    #[error("action {at}: buffer {buf} is used but holds no state")]
    NotHeld {
        /// Action index.
        at: usize,
        /// The buffer id.
        buf: usize,
    },
    /// A use (other than `Free`) of a buffer whose state an adjoint step consumed.
    #[error("action {at}: buffer {buf} is used after an adjoint step consumed it")]
    Consumed {
        /// Action index.
        at: usize,
        /// The buffer id.
        buf: usize,
    },
    /// An `Advance` or `Adjoint` finds another state in its buffer than it needs.
    #[error("action {at}: buffer {buf} holds state {held}, the action needs state {expected}")]
    WrongState {
        /// Action index.
        at: usize,
        /// The buffer id.
        buf: usize,
        /// The state the action needs.
        expected: usize,
        /// The state the buffer holds.
        held: usize,
    },
    /// An `Advance` that does not go forward within 0..=r.
    #[error("action {at}: advance {from} → {to} is not forward within 0..={r}")]
    BadAdvance {
        /// Action index.
        at: usize,
        /// Start state.
        from: usize,
        /// End state.
        to: usize,
        /// The number of inner steps.
        r: usize,
    },
    /// A second `Turn`.
    #[error("action {at}: a second turn")]
    TurnRepeated {
        /// Action index.
        at: usize,
    },
    /// The `Turn` comes after recomputation (the first sweep took more than r steps).
    #[error(
        "action {at}: turn after {steps} forward steps; the first sweep must be exactly r = {r}"
    )]
    TurnLate {
        /// Action index.
        at: usize,
        /// Forward steps before the turn.
        steps: usize,
        /// The number of inner steps.
        r: usize,
    },
    /// An adjoint step before the `Turn`.
    #[error("action {at}: adjoint step {step} before the turn")]
    AdjointBeforeTurn {
        /// Action index.
        at: usize,
        /// The adjoint step.
        step: usize,
    },
    /// An adjoint step out of the order r, r−1, …, lowest.
    #[error("action {at}: adjoint step {found}, expected {expected}")]
    AdjointOrder {
        /// Action index.
        at: usize,
        /// The step due next.
        expected: usize,
        /// The step found.
        found: usize,
    },
    /// An adjoint step below the plan's `lowest` (after all of its steps ran).
    #[error("action {at}: adjoint step {step} below the plan's lowest adjoint step {lowest}")]
    AdjointBelowLowest {
        /// Action index.
        at: usize,
        /// The adjoint step.
        step: usize,
        /// The plan's lowest adjoint step.
        lowest: usize,
    },
    /// The plan ends without a `Turn`.
    #[error("the plan has no turn")]
    NoTurn,
    /// The plan ends before adjoint step `next` (≥ lowest).
    #[error("the plan ends before adjoint step {next} (lowest {lowest})")]
    MissingAdjoints {
        /// The first adjoint step not run.
        next: usize,
        /// The plan's lowest adjoint step.
        lowest: usize,
    },
    /// Buffers still held at the end (a missing `Free`).
    #[error("buffers {bufs:?} are still held at the end of the plan")]
    Leaked {
        /// The buffer ids.
        bufs: Vec<usize>,
    },
    /// The plan's stored count differs from the replay.
    #[error("the plan says {what} = {stored}, the replay measures {measured}")]
    CountMismatch {
        /// Which count.
        what: &'static str,
        /// The plan's field.
        stored: usize,
        /// The replay's count.
        measured: usize,
    },
}

/// What a buffer holds during the replay.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    Free,
    Holds(usize),
    Consumed,
}

/// Replays `actions` for r steps and adjoint steps r..=lowest on a symbolic
/// machine with `buffers` buffers (all ids must be below it).
fn replay(
    r: usize,
    lowest: usize,
    actions: &[Action],
    buffers: usize,
) -> Result<PlanCounts, PlanError> {
    if lowest == 0 || lowest > r + 1 {
        return Err(PlanError::Lowest { lowest, r });
    }
    let mut slots = vec![Slot::Free; buffers];
    let mut c = PlanCounts::default();
    let mut held = 0usize;
    let mut max_id = None::<usize>;
    let mut turned = false;
    let mut next = r; // the adjoint step due next
    for (at, &a) in actions.iter().enumerate() {
        let get = |buf: usize| -> Result<usize, PlanError> {
            if buf >= buffers {
                return Err(PlanError::BufferOutOfRange { at, buf, buffers });
            }
            Ok(buf)
        };
        // The state a read of `buf` sees.
        let read = |slots: &[Slot], buf: usize| -> Result<usize, PlanError> {
            match slots[get(buf)?] {
                Slot::Holds(j) => Ok(j),
                Slot::Free => Err(PlanError::NotHeld { at, buf }),
                Slot::Consumed => Err(PlanError::Consumed { at, buf }),
            }
        };
        // Checks that `buf` holds state `expected`.
        let holds = |slots: &[Slot], buf: usize, expected: usize| -> Result<(), PlanError> {
            let held = read(slots, buf)?;
            if held != expected {
                return Err(PlanError::WrongState {
                    at,
                    buf,
                    expected,
                    held,
                });
            }
            Ok(())
        };
        let mut fill = |slots: &mut [Slot], buf: usize, j: usize| -> Result<(), PlanError> {
            if slots[get(buf)?] != Slot::Free {
                return Err(PlanError::NotFree { at, buf });
            }
            slots[buf] = Slot::Holds(j);
            held += 1;
            c.peak = c.peak.max(held);
            max_id = max_id.max(Some(buf));
            Ok(())
        };
        match a {
            Action::Init { buf } => {
                fill(&mut slots, buf, 0)?;
                c.inits += 1;
            }
            Action::Copy { from, to } => {
                let j = read(&slots, from)?;
                fill(&mut slots, to, j)?;
                c.copies += 1;
            }
            Action::Advance { buf, from, to } => {
                holds(&slots, buf, from)?;
                if from >= to || to > r {
                    return Err(PlanError::BadAdvance { at, from, to, r });
                }
                slots[buf] = Slot::Holds(to);
                c.forward_steps += to - from;
            }
            Action::Turn { buf } => {
                if turned {
                    return Err(PlanError::TurnRepeated { at });
                }
                holds(&slots, buf, r)?;
                if c.forward_steps != r {
                    return Err(PlanError::TurnLate {
                        at,
                        steps: c.forward_steps,
                        r,
                    });
                }
                turned = true;
            }
            Action::Adjoint { buf, step } => {
                if !turned {
                    return Err(PlanError::AdjointBeforeTurn { at, step });
                }
                if next < lowest {
                    return Err(PlanError::AdjointBelowLowest { at, step, lowest });
                }
                if step != next {
                    return Err(PlanError::AdjointOrder {
                        at,
                        expected: next,
                        found: step,
                    });
                }
                holds(&slots, buf, step - 1)?;
                slots[buf] = Slot::Consumed;
                next -= 1;
                c.adjoints += 1;
            }
            Action::Free { buf } => {
                if slots[get(buf)?] == Slot::Free {
                    return Err(PlanError::NotHeld { at, buf });
                }
                slots[buf] = Slot::Free;
                held -= 1;
            }
        }
    }
    if !turned {
        return Err(PlanError::NoTurn);
    }
    if next + 1 != lowest {
        return Err(PlanError::MissingAdjoints { next, lowest });
    }
    let bufs: Vec<usize> = (0..buffers).filter(|&b| slots[b] != Slot::Free).collect();
    if !bufs.is_empty() {
        return Err(PlanError::Leaked { bufs });
    }
    c.buffers = max_id.map_or(0, |m| m + 1);
    Ok(c)
}

impl Plan {
    /// A plan from hand-written actions: replays them ([`Plan::check`]'s
    /// invariants) and takes the counts from the replay. `lowest` is the
    /// lowest adjoint step (r + 1 for none). Buffer ids must be below the
    /// number of actions (a plan fills each buffer by an action of its own).
    ///
    /// # Errors
    /// The first broken invariant, as a [`PlanError`].
    pub fn from_actions(r: usize, lowest: usize, actions: Vec<Action>) -> Result<Plan, PlanError> {
        let buffers = actions
            .iter()
            .map(|a| match *a {
                Action::Init { buf }
                | Action::Advance { buf, .. }
                | Action::Turn { buf }
                | Action::Adjoint { buf, .. }
                | Action::Free { buf } => buf,
                Action::Copy { from, to } => from.max(to),
            })
            .max()
            .map_or(0, |m| m.saturating_add(1).min(actions.len()));
        let c = replay(r, lowest, &actions, buffers)?;
        Ok(Plan {
            r,
            lowest,
            actions,
            buffers: c.buffers,
            peak: c.peak,
            forward_steps: c.forward_steps,
        })
    }

    /// The actions, in execution order.
    pub fn actions(&self) -> &[Action] {
        &self.actions
    }

    /// The most buffers held at once (the executor's held-state meter peak).
    pub fn peak(&self) -> usize {
        self.peak
    }

    /// Forward steps over all `Advance`s: r for the first sweep plus the
    /// recomputation.
    pub fn forward_steps(&self) -> usize {
        self.forward_steps
    }

    /// The number of inner steps r.
    pub fn r(&self) -> usize {
        self.r
    }

    /// How many distinct buffers the plan uses (ids `0..buffers`); equal to
    /// [`Plan::peak`] for the plans built here.
    pub fn buffers(&self) -> usize {
        self.buffers
    }

    /// The lowest adjoint step: the plan runs adjoint steps r, r−1, …,
    /// `lowest` (1 for a full reversal, r + 1 for none).
    pub fn lowest(&self) -> usize {
        self.lowest
    }

    /// The adjoint steps the plan runs, `lowest..=r` (run in decreasing order).
    pub fn adjoint_steps(&self) -> RangeInclusive<usize> {
        self.lowest..=self.r
    }

    /// The plan cut right after its `Turn`: the first sweep (φ_0 → φ_r with
    /// its snapshots, then the Turn) and the reversal (the rest). A first-order
    /// rollout that may turn into an exact estimate runs the first part of the
    /// exact plan and, if the coin says exact, continues with the second.
    ///
    /// ```
    /// use blo::engine::plan::{plan, Action};
    /// use blo::Policy;
    /// let p = plan(Policy::Binomial { snapshots: 3 }, 10);
    /// let (sweep, reversal) = p.split_at_turn();
    /// assert!(matches!(sweep.last(), Some(Action::Turn { .. })));
    /// assert!(!sweep.iter().any(|a| matches!(a, Action::Adjoint { .. })));
    /// assert_eq!(sweep.len() + reversal.len(), p.actions().len());
    /// ```
    ///
    /// # Panics
    /// If the plan has no `Turn` (never for a checked plan).
    pub fn split_at_turn(&self) -> (&[Action], &[Action]) {
        let t = self
            .actions
            .iter()
            .position(|a| matches!(a, Action::Turn { .. }))
            .expect("a plan has a turn");
        self.actions.split_at(t + 1)
    }

    /// Replays the plan on a symbolic machine (which state each buffer holds)
    /// and checks every invariant: buffer ids below [`Plan::buffers`]; `Init`
    /// and `Copy` write free buffers; no read, advance or adjoint of a free or
    /// consumed buffer; each `Advance` starts from the state its buffer holds
    /// and goes forward within 0..=r; exactly one `Turn`, at φ_r after exactly
    /// r forward steps, before any adjoint step; adjoint steps r, r−1, …,
    /// `lowest` each once, in that order, each at state_{step−1}; every buffer
    /// freed at the end; the plan's stored counts equal the measured ones.
    /// O(actions + buffers): cheap enough for a `debug_assert!` in an executor.
    ///
    /// # Errors
    /// The first broken invariant, as a [`PlanError`].
    pub fn check(&self) -> Result<PlanCounts, PlanError> {
        let c = replay(self.r, self.lowest, &self.actions, self.buffers)?;
        for (what, stored, measured) in [
            ("forward_steps", self.forward_steps, c.forward_steps),
            ("peak", self.peak, c.peak),
            ("buffers", self.buffers, c.buffers),
        ] {
            if stored != measured {
                return Err(PlanError::CountMismatch {
                    what,
                    stored,
                    measured,
                });
            }
        }
        Ok(c)
    }
}

impl fmt::Display for Plan {
    /// The plan's summary line, then one action per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "plan: r = {}, adjoint steps {}..={}, {} buffers, peak {}, {} forward steps",
            self.r, self.lowest, self.r, self.buffers, self.peak, self.forward_steps
        )?;
        for a in &self.actions {
            writeln!(f, "  {a}")?;
        }
        Ok(())
    }
}

/// Builds a plan: allocates buffer ids lowest-free first and meters them.
struct Builder {
    r: usize,
    actions: Vec<Action>,
    free: BTreeSet<usize>,
    next_id: usize,
    held: usize,
    peak: usize,
    forward_steps: usize,
}

impl Builder {
    fn new(r: usize) -> Self {
        Builder {
            r,
            actions: Vec::new(),
            free: BTreeSet::new(),
            next_id: 0,
            held: 0,
            peak: 0,
            forward_steps: 0,
        }
    }

    fn alloc(&mut self) -> usize {
        let id = self.free.pop_first().unwrap_or_else(|| {
            self.next_id += 1;
            self.next_id - 1
        });
        self.held += 1;
        self.peak = self.peak.max(self.held);
        id
    }

    /// A fresh buffer holding φ_0.
    fn init(&mut self) -> usize {
        let buf = self.alloc();
        self.actions.push(Action::Init { buf });
        buf
    }

    /// A fresh buffer holding a copy of `from`.
    fn copy(&mut self, from: usize) -> usize {
        let to = self.alloc();
        self.actions.push(Action::Copy { from, to });
        to
    }

    /// A fresh buffer holding state_a: a copy of `start`, or φ_0 if `start`
    /// is the regenerable φ_0 (`None`).
    fn fresh(&mut self, start: Option<usize>) -> usize {
        match start {
            Some(b) => self.copy(b),
            None => self.init(),
        }
    }

    fn advance(&mut self, buf: usize, from: usize, to: usize) {
        if to > from {
            self.actions.push(Action::Advance { buf, from, to });
            self.forward_steps += to - from;
        }
    }

    fn free(&mut self, buf: usize) {
        self.actions.push(Action::Free { buf });
        self.free.insert(buf);
        self.held -= 1;
    }

    /// The first sweep: φ_0 → φ_r in one working buffer, copying a snapshot at
    /// each state of `snapshots` (increasing, within 1..r), then the Turn (and
    /// the working buffer freed). Returns the snapshots' buffers, in order.
    fn first_sweep(&mut self, snapshots: impl IntoIterator<Item = usize>) -> Vec<usize> {
        let w = self.init();
        let (mut at, mut bufs) = (0, Vec::new());
        for p in snapshots {
            self.advance(w, at, p);
            bufs.push(self.copy(w));
            at = p;
        }
        self.advance(w, at, self.r);
        self.turn(w);
        bufs
    }

    /// The Turn at `buf` (holding φ_r), which is then freed.
    fn turn(&mut self, buf: usize) {
        self.actions.push(Action::Turn { buf });
        self.free(buf);
    }

    /// The adjoint step `step` at `buf`, which is then freed.
    fn adjoint(&mut self, buf: usize, step: usize) {
        self.actions.push(Action::Adjoint { buf, step });
        self.free(buf);
    }

    fn finish(self, lowest: usize) -> Plan {
        let p = Plan {
            r: self.r,
            lowest,
            actions: self.actions,
            buffers: self.next_id,
            peak: self.peak,
            forward_steps: self.forward_steps,
        };
        debug_assert_eq!(p.check().map(|_| ()), Ok(()), "{p}");
        p
    }

    /// Reverses the parts, the last one first, each by T's optimal schedule:
    /// a part of l steps with c slots recomputes exactly
    /// [`reversal_steps`]`(l, c)` steps, holds at most c + 1 buffers (its
    /// start's included) or c from φ_0, and frees its start at its last use
    /// (the part's lowest adjoint step).
    fn reverse(&mut self, parts: Vec<Part>) {
        // Each split reverses its right part first, then its left part: the
        // left parts wait on a stack (no recursion, so no depth limit on r).
        let mut todo = parts;
        while let Some(Part {
            mut a,
            mut start,
            mut l,
            mut c,
        }) = todo.pop()
        {
            loop {
                match l {
                    0 => break,
                    1 => {
                        let buf = start.unwrap_or_else(|| self.init());
                        self.adjoint(buf, a + 1);
                        break;
                    }
                    _ if c == 1 => {
                        for j in (a + 2..=a + l).rev() {
                            let w = self.fresh(start);
                            self.advance(w, a, j - 1);
                            self.adjoint(w, j);
                        }
                        l = 1;
                    }
                    _ => {
                        let m = t_split(l, c);
                        let w = self.fresh(start);
                        self.advance(w, a, a + m);
                        todo.push(Part { a, start, l: m, c });
                        (a, start, l, c) = (a + m, Some(w), l - m, c - 1);
                    }
                }
            }
        }
    }
}

/// A part of the reversal: the steps a+1..=a+l from state_a, held in `start`
/// (`None`: the regenerable φ_0), with c slots (`start`'s included).
struct Part {
    a: usize,
    start: Option<usize>,
    l: usize,
    c: usize,
}

/// The binomial (revolve) plan over r steps with s slots: r + U(r, s) forward
/// steps, peak ≤ s.
#[track_caller]
fn binomial(r: usize, s: usize) -> Plan {
    binomial_tail(r, r, s)
}

/// The reversal of the last k steps (adjoint steps r..=r − k + 1, k ≤ r) by
/// revolve's schedule within s buffers. The tail starts at φ_{r−k}: for k = r
/// that is the regenerable φ_0 and this is the binomial plan; otherwise the
/// first sweep snapshots φ_{r−k} (one buffer) and the tail is reversed like a
/// whole unroll with the s − 1 other slots (the spine of U's splits taken as
/// the sweep passes, then T's schedule). With s = 1 no snapshot fits beside
/// the working buffer, and each adjoint step j recomputes φ_{j−1} from φ_0.
#[track_caller]
fn binomial_tail(r: usize, k: usize, s: usize) -> Plan {
    assert!(s >= 1, "plan for r = {r} steps with 0 snapshots");
    assert!(k <= r, "tail of k = {k} steps of r = {r}");
    let lo = r - k;
    let mut b = Builder::new(r);
    if lo > 0 && s == 1 {
        b.first_sweep(None);
        for j in (lo + 1..=r).rev() {
            let w = b.init();
            b.advance(w, 0, j - 1);
            b.adjoint(w, j);
        }
        return b.finish(lo + 1);
    }
    // The tail's start: the regenerable φ_0, or a snapshot holding one slot.
    let held = lo > 0;
    // U's spine of optimal splits (a, m, c): the first sweep takes the
    // snapshot at each split point a + m; each split leaves its left part
    // (a + 1..=a + m with c slots) for the reversal.
    let mut spine = Vec::new();
    let (mut a, mut l, mut c) = (lo, k, if held { s - 1 } else { s });
    while l >= 2 && c >= 2 && c < l {
        let m = u_split(l, c);
        spine.push((a, m, c));
        (a, l, c) = (a + m, l - m, c - 1);
    }
    // The last part: all of its states fit (c ≥ l), or one slot (c = 1).
    let keep_all = c >= l;
    let tail = if keep_all { a + 1..a + l } else { 0..0 };
    let base = held.then_some(lo);
    let mut snaps = b.first_sweep(
        base.into_iter()
            .chain(spine.iter().map(|&(a, m, _)| a + m))
            .chain(tail),
    );
    let base = held.then(|| snaps.remove(0));
    let mut kept = snaps.split_off(spine.len());
    while let Some(buf) = kept.pop() {
        b.adjoint(buf, a + kept.len() + 2);
    }
    // Part i starts at the snapshot of split i − 1 (part 0 at the tail's start).
    let start = |i: usize| i.checked_sub(1).map_or(base, |i| Some(snaps[i]));
    let mut parts: Vec<Part> = spine
        .iter()
        .enumerate()
        .map(|(i, &(a, m, c))| Part {
            a,
            start: start(i),
            l: m,
            c,
        })
        .collect();
    let l = if keep_all { l.min(1) } else { l };
    parts.push(Part {
        a,
        start: start(spine.len()),
        l,
        c,
    });
    b.reverse(parts);
    b.finish(lo + 1)
}

/// The every-k plan (module docs).
#[track_caller]
fn every_k(r: usize, k: usize) -> Plan {
    assert!(k >= 1, "every-k plan for r = {r} steps with k = 0");
    let mut b = Builder::new(r);
    let mut snaps = b.first_sweep((k..r).step_by(k));
    let mut seg = Vec::new();
    for i in (0..r.div_ceil(k)).rev() {
        let (start, end) = (i * k, ((i + 1) * k).min(r));
        let base = if i == 0 {
            b.init()
        } else {
            snaps
                .pop()
                .expect("one snapshot per segment after the first")
        };
        seg.push(base);
        for p in start + 1..end {
            let s = b.copy(*seg.last().expect("the segment has its start"));
            b.advance(s, p - 1, p);
            seg.push(s);
        }
        for j in (start + 1..=end).rev() {
            let s = seg.pop().expect("one state per step of the segment");
            b.adjoint(s, j);
        }
    }
    b.finish(1)
}

/// The plan of a checkpoint `policy` for r inner steps (see the [module
/// docs](self) for each plan's peak and forward steps).
///
/// ```
/// use blo::engine::plan::{optimal_forward_steps, plan};
/// use blo::Policy;
/// let p = plan(Policy::Binomial { snapshots: 9 }, 200);
/// assert_eq!(p.forward_steps(), 537); // docs/math.md §9
/// assert_eq!(p.forward_steps() as u128, optimal_forward_steps(200, 9));
/// assert!(p.peak() <= 9);
/// assert_eq!(plan(Policy::Recompute, 200).forward_steps(), 200 * 201 / 2);
/// ```
///
/// # Panics
/// For `EveryK { k: 0 }` or `Binomial { snapshots: 0 }` (rejected by
/// [`Policy::validate`]).
#[track_caller]
pub fn plan(policy: Policy, r: usize) -> Plan {
    match policy {
        Policy::StoreAll => binomial(r, r.max(1)),
        Policy::Recompute => binomial(r, 1),
        Policy::Binomial { snapshots } => binomial(r, snapshots),
        Policy::EveryK { .. } | Policy::Sqrt => every_k(
            r,
            policy.spacing(r).expect("EveryK and Sqrt have a spacing"),
        ),
    }
}

/// The first-order plan: `Init`, the first sweep to φ_r, `Turn`, `Free`; no
/// adjoint step ([`Plan::lowest`] = r + 1). Peak 1, r forward steps.
///
/// ```
/// use blo::engine::plan::{first_order, Action};
/// let p = first_order(4);
/// assert_eq!(p.actions()[1], Action::Advance { buf: 0, from: 0, to: 4 });
/// assert_eq!((p.peak(), p.forward_steps(), p.adjoint_steps().count()), (1, 4, 0));
/// ```
pub fn first_order(r: usize) -> Plan {
    let mut b = Builder::new(r);
    b.first_sweep(None);
    b.finish(r + 1)
}

/// Truncated backpropagation over the last k steps: the first sweep keeps
/// φ_{r−k'}..φ_{r−1} (k' = min(k, r); φ_0 is regenerated instead of kept),
/// the reversal runs adjoint steps r..=r−k'+1 ([`Plan::lowest`] = r − k' + 1).
/// Peak k' + 1 (k' < r) or max(r, 1) (k' = r: the store-all plan); r forward
/// steps. k = 0 is [`first_order`].
///
/// ```
/// use blo::engine::plan::truncated;
/// let p = truncated(10, 3);
/// assert_eq!(p.adjoint_steps(), 8..=10);
/// assert_eq!((p.peak(), p.forward_steps()), (4, 10));
/// ```
pub fn truncated(r: usize, k: usize) -> Plan {
    let k = k.min(r);
    let lo = r - k;
    let mut b = Builder::new(r);
    // Keep φ_lo..φ_{r−1}, except the regenerable φ_0.
    let mut kept = b.first_sweep(lo.max(1)..r);
    for j in (lo + 1..=r).rev() {
        let buf = kept.pop().unwrap_or_else(|| b.init());
        b.adjoint(buf, j);
    }
    b.finish(lo + 1)
}

/// Truncated backpropagation over the last k steps within a memory budget of
/// s buffers: the adjoint steps r..=r − k' + 1 (k' = min(k, r);
/// [`Plan::lowest`] = r − k' + 1) by revolve's schedule. For k' = r it is
/// [`plan`]`(Policy::Binomial { snapshots: s }, r)`; otherwise the first
/// sweep snapshots φ_{r−k'} and the last k' steps are reversed as an unroll
/// of their own with the other s − 1 buffers (so for s ≥ k' + 1 it is
/// [`truncated`]`(r, k)`, k' + 1 buffers, no recomputation); with s = 1 each
/// adjoint step recomputes its state from φ_0. k = 0 is [`first_order`].
/// This is the plan of one draw of a randomized telescope
/// ([`crate::Telescope`], docs/math.md §10): its reversal passes every depth
/// 1..=k' on the way.
///
/// ```
/// use blo::engine::plan::{truncated, truncated_within, plan};
/// use blo::Policy;
/// assert_eq!(truncated_within(10, 3, 4), truncated(10, 3));
/// assert_eq!(truncated_within(10, 10, 3), plan(Policy::Binomial { snapshots: 3 }, 10));
/// let p = truncated_within(50, 20, 4);
/// assert_eq!(p.adjoint_steps(), 31..=50);
/// assert!(p.peak() <= 4 && p.check().is_ok());
/// // s = 1: φ_{j−1} recomputed from φ_0 for j = 50, 49: 49 + 48 steps.
/// assert_eq!(truncated_within(50, 2, 1).forward_steps(), 50 + 49 + 48);
/// ```
///
/// # Panics
/// If s = 0.
#[track_caller]
pub fn truncated_within(r: usize, k: usize, s: usize) -> Plan {
    assert!(s >= 1, "truncated_within: r = {r}, k = {k} with 0 buffers");
    if k == 0 {
        return first_order(r);
    }
    binomial_tail(r, k.min(r), s)
}

/// T(l, c): the forward steps that reversing l steps costs beyond the
/// adjoint steps, when the start state is held (or is the regenerable φ_0)
/// and the end state is not, with c slots, the start's included (docs/math.md §9:
/// T(1, c) = 0, T(l, 1) = l(l − 1)/2, T(l, c) = min_{1≤m<l} m + T(l − m, c − 1)
/// + T(m, c)). Griewank and Walther's closed form:
///
/// T(l, c) = τ·l − β(c + 1, τ − 1) for β(c, τ − 1) < l ≤ β(c, τ), β(c, τ) = C(c + τ, c),
///
/// the same function as [`crate::revolve_cost`], evaluated in O(τ) instead of
/// O(τ²). Piecewise linear and convex in l, slope τ on (β(c, τ−1), β(c, τ)].
///
/// ```
/// use blo::engine::plan::reversal_steps;
/// assert_eq!(reversal_steps(10, 1), 45);
/// assert_eq!(reversal_steps(50, 7), 155 - 50); // docs/math.md §9: r + T = 155
/// ```
///
/// # Panics
/// If c = 0 and l > 1.
#[track_caller]
pub fn reversal_steps(l: usize, c: usize) -> u128 {
    if l <= 1 {
        return 0;
    }
    assert!(c >= 1, "reversal of {l} steps with 0 slots");
    let (l, c) = (l as u128, c as u128);
    if c == 1 {
        return l * (l - 1) / 2;
    }
    if c + 1 >= l {
        return l - 1; // τ = 1: every state computed once
    }
    let (mut tau, mut beta) = (1u128, c + 1); // β(c, 1)
    while beta < l {
        tau += 1;
        beta = beta
            .checked_mul(c + tau)
            .expect("reversal_steps: β(c, τ) overflows u128")
            / tau;
    }
    // β(c + 1, τ − 1) = C(c + τ, τ − 1) = β(c, τ)·τ/(c + 1).
    tau * l - beta * tau / (c + 1)
}

/// U(l, c): the forward steps that reversing l steps costs beyond the
/// adjoint steps right after a free sweep through all l steps (snapshots taken
/// as it passes), with c slots, the start's included (docs/math.md §9: U(l, c) = 0
/// if l ≤ 1 or c ≥ l, U(l, 1) = T(l, 1), U(l, c) = min_{1≤m<l} U(l − m, c − 1)
/// + T(m, c)).
///
/// Closed form: U(·, c) is the infimal convolution of U(·, c − 1) and the
/// convex T(·, c), so its slopes are the merged slopes of T(·, 1), …, T(·, c)
/// after c − 1 zeros; T(·, c') has slope τ β(c' − 1, τ) times, and
/// Σ_{c'=1..c} β(c' − 1, τ) = C(c + τ, τ + 1). So for l > c, U(l, c) is the sum
/// of the l − c smallest numbers of the multiset in which each τ ≥ 1 appears
/// C(c + τ, τ + 1) times. (Checked against the recurrence in the tests.)
///
/// ```
/// use blo::engine::plan::reversal_steps_after_sweep;
/// // r = 50, s = 7: C(8, 2) = 28 ones and then 15 twos.
/// assert_eq!(reversal_steps_after_sweep(50, 7), 28 + 15 * 2);
/// ```
///
/// # Panics
/// If c = 0 and l > 1.
#[track_caller]
pub fn reversal_steps_after_sweep(l: usize, c: usize) -> u128 {
    if l <= 1 {
        return 0;
    }
    assert!(c >= 1, "reversal of {l} steps with 0 slots");
    if c >= l {
        return 0;
    }
    let (l, c) = (l as u128, c as u128);
    if c == 1 {
        return l * (l - 1) / 2;
    }
    let mut rest = l - c;
    let (mut tau, mut count, mut total) = (1u128, c * (c + 1) / 2, 0u128);
    loop {
        let take = count.min(rest);
        total += take * tau;
        rest -= take;
        if rest == 0 {
            return total;
        }
        // C(c + τ + 1, τ + 2) = C(c + τ, τ + 1)·(c + τ + 1)/(τ + 2); count < rest here.
        count = count * (c + tau + 1) / (tau + 2);
        tau += 1;
    }
}

/// Revolve's optimum in forward steps for r inner steps and s slots
/// (docs/math.md §9): r + U(r, s), in the convention of the [module docs](self)
/// (peak ≤ s buffers). The binomial plan reaches it; the tests check both
/// against the recurrence evaluated by plain dynamic programming.
///
/// ```
/// use blo::engine::plan::optimal_forward_steps;
/// assert_eq!(optimal_forward_steps(50, 7), 108);
/// assert_eq!(optimal_forward_steps(200, 9), 537);
/// assert_eq!(optimal_forward_steps(10, 1), 10 + 45);
/// ```
///
/// # Panics
/// If s = 0 and r > 1.
#[track_caller]
pub fn optimal_forward_steps(r: usize, s: usize) -> u128 {
    r as u128 + reversal_steps_after_sweep(r, s)
}

/// The smallest m in 1..=l−1 minimising the convex `f`, by binary search on
/// the sign of f(m + 1) − f(m).
fn argmin_convex(l: usize, f: impl Fn(usize) -> u128) -> usize {
    let (mut lo, mut hi) = (1, l - 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if f(mid + 1) >= f(mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

/// T's optimal split: the smallest m minimising m + T(l − m, c − 1) + T(m, c)
/// (l ≥ 2, c ≥ 2; convex in m).
fn t_split(l: usize, c: usize) -> usize {
    argmin_convex(l, |m| {
        m as u128 + reversal_steps(l - m, c - 1) + reversal_steps(m, c)
    })
}

/// U's optimal split: the smallest m minimising U(l − m, c − 1) + T(m, c)
/// (2 ≤ c < l; convex in m).
fn u_split(l: usize, c: usize) -> usize {
    argmin_convex(l, |m| {
        reversal_steps_after_sweep(l - m, c - 1) + reversal_steps(m, c)
    })
}

/// A memory budget for the held states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Budget {
    /// At most this many states held at once.
    States(usize),
    /// At most this many bytes of held states (a state is `state_bytes`).
    Bytes(usize),
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Budget::States(n) => write!(f, "{n} states"),
            Budget::Bytes(n) => write!(f, "{n} bytes"),
        }
    }
}

/// A memory budget below what any plan needs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "memory budget of {given} is below the minimum of {minimum_states} state ({minimum_bytes} bytes at \
     {state_bytes} bytes per state) that any plan for r = {r} inner steps needs"
)]
pub struct BudgetError {
    /// The budget given.
    pub given: Budget,
    /// The minimum in states (1: the recompute plan).
    pub minimum_states: usize,
    /// The minimum in bytes (`minimum_states × state_bytes`).
    pub minimum_bytes: usize,
    /// The size of one state.
    pub state_bytes: usize,
    /// The number of inner steps.
    pub r: usize,
}

/// The fastest plan (fewest forward steps) whose peak fits the budget: the
/// binomial plan with s = min(budget in states, max(r, 1)) slots, which is
/// revolve's optimum r + U(r, s) among plans holding at most s states (s = 1 is
/// the recompute plan, s ≥ r the store-all plan). A `Bytes` budget holds
/// ⌊bytes / state_bytes⌋ states (any number if `state_bytes` = 0).
///
/// ```
/// use blo::engine::plan::{plan_for_budget, Budget};
/// let p = plan_for_budget(Budget::Bytes(7 * 4096 + 100), 50, 4096)?;
/// assert_eq!((p.forward_steps(), p.peak()), (108, 7));
/// let e = plan_for_budget(Budget::Bytes(4000), 50, 4096).unwrap_err();
/// assert_eq!(e.minimum_bytes, 4096);
/// # Ok::<(), blo::engine::plan::BudgetError>(())
/// ```
///
/// # Errors
/// [`BudgetError`] if the budget holds no state (the minimum is one).
pub fn plan_for_budget(budget: Budget, r: usize, state_bytes: usize) -> Result<Plan, BudgetError> {
    let states = match budget {
        Budget::States(n) => n,
        Budget::Bytes(b) => b.checked_div(state_bytes).unwrap_or(usize::MAX),
    };
    if states == 0 {
        return Err(BudgetError {
            given: budget,
            minimum_states: 1,
            minimum_bytes: state_bytes,
            state_bytes,
            r,
        });
    }
    Ok(binomial(r, states.min(r.max(1))))
}
