//! Strided matrix views, built only by checked constructors.
//!
//! Element `(i, j)` of a view is `data[i·rs + j·cs]`. The constructors
//! establish the invariants every kernel of this folder relies on, so that a
//! view that exists is a view that can be read (and, for [`MatMut`], written)
//! without a bounds check:
//!
//! 1. **Strides.** A stride may be 0 only where it is never multiplied by a
//!    nonzero index: along a dimension of size ≤ 1, or in an empty view. Any
//!    other zero stride is a programmer error (it would repeat one row or
//!    column), and it is rejected even though reading it would be harmless,
//!    because kernels that pack or vectorise count on distinct elements.
//! 2. **Bounds.** In a non-empty view the last element,
//!    `(rows − 1)·rs + (cols − 1)·cs`, is computed without overflow and lies
//!    inside `data`; with nonnegative strides every other element lies below it.
//! 3. **No overlap (outputs only).** In a [`MatMut`] no two elements share an
//!    index: one dimension nests inside the other, `cs·cols ≤ rs` (rows of
//!    contiguous-or-strided columns, row-major-like) or `rs·rows ≤ cs`
//!    (column-major-like), dimensions of size ≤ 1 aside. Every layout a dense
//!    buffer, a block of one, or one part of an interleaved buffer has passes;
//!    a few exotic non-overlapping layouts (`rs = 3, cs = 2` on `2 × 2`) are
//!    rejected too.
//!
//! A violation panics at the caller's line with the shape and strides, e.g.
//! `MatRef::new: [2, 3] view with strides (2, 0): column stride 0 repeats one
//! column 3 times`.

/// A read-only strided matrix view: element `(i, j)` is `data[i·rs + j·cs]`.
///
/// Built by [`MatRef::new`] or [`MatRef::row_major`], which check the layout
/// (see [`crate::kernels`]): no zero stride along a dimension of more than one
/// element, every element inside `data`. Read by accessors. Overlapping rows
/// or columns (e.g. `rs = cs = 1`) are allowed in an input.
///
/// ```
/// use tape::gemm::MatRef;
/// let data = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
/// let m = MatRef::new(&data, 2, 2, 3, 2); // columns 0 and 2 of a row-major 2 × 3 buffer
/// assert_eq!((m.rows(), m.cols(), m.rs(), m.cs()), (2, 2, 3, 2));
/// assert_eq!(m.get(1, 1), 6.0); // data[1·3 + 1·2]
/// ```
#[derive(Copy, Clone, Debug)]
pub struct MatRef<'a, T> {
    pub(in crate::kernels) data: &'a [T],
    pub(in crate::kernels) rows: usize,
    pub(in crate::kernels) cols: usize,
    pub(in crate::kernels) rs: usize,
    pub(in crate::kernels) cs: usize,
}

/// A writable strided matrix view whose elements do not overlap: element
/// `(i, j)` is `data[i·rs + j·cs]`.
///
/// Built by [`MatMut::new`] or [`MatMut::row_major`], which check everything
/// [`MatRef`]'s constructors check and, in addition, that no two elements share
/// an index (one dimension nests inside the other: `cs·cols ≤ rs` or
/// `rs·rows ≤ cs`).
///
/// ```
/// use tape::gemm::{gemm_into, MatMut, MatRef};
/// let a = [1.0_f64, 2.0, 3.0, 4.0]; // [[1, 2], [3, 4]]
/// let mut c = [0.0; 4];
/// // A·A written column-major: C[i, j] at c[i + 2j].
/// gemm_into(1.0, MatRef::row_major(&a, 2, 2), MatRef::row_major(&a, 2, 2), 0.0,
///           MatMut::new(&mut c, 2, 2, 1, 2));
/// assert_eq!(c, [7.0, 15.0, 10.0, 22.0]);
/// ```
#[derive(Debug)]
pub struct MatMut<'a, T> {
    pub(in crate::kernels) data: &'a mut [T],
    pub(in crate::kernels) rows: usize,
    pub(in crate::kernels) cols: usize,
    pub(in crate::kernels) rs: usize,
    pub(in crate::kernels) cs: usize,
}

/// What is wrong with a layout (see [`check_layout`]).
enum Flaw {
    /// A zero stride along a dimension (`"row"` or `"column"`) of this size > 1.
    ZeroStride(&'static str, usize),
    /// The index of the last element overflows `usize`.
    Overflow,
    /// The last element's index, at or past the end of the slice.
    OutOfBounds(usize),
    /// Two output elements share an index.
    Overlap,
}

/// The index of element `(rows − 1, cols − 1)`, if the view is non-empty and
/// it does not overflow.
#[inline]
pub(in crate::kernels) fn last_index(
    [rows, cols]: [usize; 2],
    [rs, cs]: [usize; 2],
) -> Option<usize> {
    let r = rows.checked_sub(1)?.checked_mul(rs)?;
    r.checked_add(cols.checked_sub(1)?.checked_mul(cs)?)
}

/// Invariants 1 and 2 (and 3 when `output`) of the module docs for a
/// `rows × cols` view with strides `(rs, cs)` over `len` elements.
#[inline]
fn flaw(len: usize, [rows, cols]: [usize; 2], [rs, cs]: [usize; 2], output: bool) -> Option<Flaw> {
    if rows == 0 || cols == 0 {
        return None; // no element: nothing to read, write or overlap
    }
    if rs == 0 && rows > 1 {
        return Some(Flaw::ZeroStride("row", rows));
    }
    if cs == 0 && cols > 1 {
        return Some(Flaw::ZeroStride("column", cols));
    }
    let Some(last) = last_index([rows, cols], [rs, cs]) else {
        return Some(Flaw::Overflow);
    };
    if last >= len {
        return Some(Flaw::OutOfBounds(last));
    }
    // Dimensions of size 1 never multiply their stride, so they cannot
    // collide; otherwise one dimension must step over the whole other one.
    let fits = |stride: usize, size: usize, outer: usize| {
        stride.checked_mul(size).is_some_and(|span| span <= outer)
    };
    let nested = rows == 1 || cols == 1 || fits(cs, cols, rs) || fits(rs, rows, cs);
    (output && !nested).then_some(Flaw::Overlap)
}

/// Checks a layout (invariants 1–2, and 3 when `output`); `what` names the
/// constructor in the panic message. Cheap when the layout is fine: the
/// message is formatted only on the cold path.
#[inline]
#[track_caller]
fn check_layout(what: &str, len: usize, dims: [usize; 2], strides: [usize; 2], output: bool) {
    if let Some(flaw) = flaw(len, dims, strides, output) {
        layout_panic(what, len, dims, strides, flaw);
    }
}

#[cold]
#[inline(never)]
#[track_caller]
fn layout_panic(
    what: &str,
    len: usize,
    [rows, cols]: [usize; 2],
    [rs, cs]: [usize; 2],
    flaw: Flaw,
) -> ! {
    let view = format_args!("{what}: [{rows}, {cols}] view with strides ({rs}, {cs})");
    match flaw {
        Flaw::ZeroStride(name, size) => panic!(
            "{view}: {name} stride 0 repeats one {name} {size} times (a stride may be 0 only \
             along a dimension of size ≤ 1)"
        ),
        Flaw::Overflow => panic!("{view}: the index of the last element overflows usize"),
        Flaw::OutOfBounds(last) => {
            panic!("{view} reaches index {last} of a buffer of {len} elements")
        }
        Flaw::Overlap => panic!(
            "{view}: output elements overlap (an output needs cs·cols ≤ rs or rs·rows ≤ cs, \
             here {cs}·{cols} > {rs} and {rs}·{rows} > {cs})"
        ),
    }
}

/// The constructors and shape accessors, the same for both views: `$buf` is
/// the slice type, `$output` whether the no-overlap check applies, `$extra` the
/// `# Panics` line beyond [`check_layout`]'s common ones.
macro_rules! view_common {
    ($view:ident, $buf:ty, $output:literal, $what:literal, $extra:literal) => {
        impl<'a, T> $view<'a, T> {
            /// A `rows × cols` view of `data` with row stride `rs` and column
            /// stride `cs` (in elements): `(i, j)` is `data[i·rs + j·cs]`.
            ///
            /// # Panics
            /// If a stride is 0 along a dimension of size > 1, or the last
            /// element lies outside `data` (the message has the shape and
            #[doc = concat!("strides)", $extra, ".")]
            #[track_caller]
            pub fn new(data: $buf, rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
                Self::checked(concat!($what, "::new"), data, [rows, cols], [rs, cs])
            }

            /// A dense row-major `rows × cols` matrix in the first `rows·cols`
            /// elements of `data` (`rs = cols`, `cs = 1`).
            ///
            /// # Panics
            /// If `data` has fewer than `rows·cols` elements.
            #[track_caller]
            pub fn row_major(data: $buf, rows: usize, cols: usize) -> Self {
                Self::checked(concat!($what, "::row_major"), data, [rows, cols], [cols, 1])
            }

            #[track_caller]
            fn checked(
                what: &str,
                data: $buf,
                [rows, cols]: [usize; 2],
                [rs, cs]: [usize; 2],
            ) -> Self {
                check_layout(what, data.len(), [rows, cols], [rs, cs], $output);
                $view {
                    data,
                    rows,
                    cols,
                    rs,
                    cs,
                }
            }

            /// Number of rows.
            pub fn rows(&self) -> usize {
                self.rows
            }
            /// Number of columns.
            pub fn cols(&self) -> usize {
                self.cols
            }
            /// Row stride, in elements.
            pub fn rs(&self) -> usize {
                self.rs
            }
            /// Column stride, in elements.
            pub fn cs(&self) -> usize {
                self.cs
            }
        }
    };
}

view_common!(MatRef, &'a [T], false, "MatRef", "");
view_common!(
    MatMut,
    &'a mut [T],
    true,
    "MatMut",
    "; or if two elements share an index (neither `cs·cols ≤ rs` nor `rs·rows ≤ cs`, dimensions of size 1 aside)"
);

impl<'a, T> MatRef<'a, T> {
    /// The transpose: the same buffer with the strides swapped (no copy).
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// The buffer the view reads from.
    pub fn data(&self) -> &'a [T] {
        self.data
    }
    /// Whether the view has no element (`rows·cols = 0`).
    pub fn is_empty(&self) -> bool {
        self.rows == 0 || self.cols == 0
    }
    /// Element `(i, j)`.
    ///
    /// # Panics
    /// If `i ≥ rows` or `j ≥ cols`.
    #[track_caller]
    pub fn get(&self, i: usize, j: usize) -> T
    where
        T: Copy,
    {
        assert!(
            i < self.rows && j < self.cols,
            "MatRef::get: ({i}, {j}) outside a [{}, {}] view",
            self.rows,
            self.cols
        );
        self.data[i * self.rs + j * self.cs]
    }
}

impl<'a, T> MatMut<'a, T> {
    /// A read-only view of the same elements.
    pub fn as_ref(&self) -> MatRef<'_, T> {
        MatRef {
            data: self.data,
            rows: self.rows,
            cols: self.cols,
            rs: self.rs,
            cs: self.cs,
        }
    }
    /// The same view for a shorter borrow (to pass it on and use it again).
    pub fn rb(&mut self) -> MatMut<'_, T> {
        MatMut {
            data: self.data,
            rows: self.rows,
            cols: self.cols,
            rs: self.rs,
            cs: self.cs,
        }
    }

    /// Whether the view is exactly a dense row-major buffer of `rows·cols`
    /// elements (the layout the small-product kernels write).
    pub(in crate::kernels) fn dense_row_major(&mut self) -> Option<&mut [T]> {
        let n = self.rows * self.cols;
        let dense = self.cs == 1 || self.cols <= 1;
        let rows_packed = self.rs == self.cols || self.rows <= 1;
        (dense && rows_packed && self.data.len() >= n).then(|| &mut self.data[..n])
    }

    /// Applies `f` to every element, row by row.
    pub(in crate::kernels) fn for_each(&mut self, mut f: impl FnMut(&mut T)) {
        for i in 0..self.rows {
            for j in 0..self.cols {
                f(&mut self.data[i * self.rs + j * self.cs]);
            }
        }
    }
}
