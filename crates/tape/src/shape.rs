//! Shapes of rank 0 to 4, NumPy broadcasting, and the one shape checker whose
//! panics name the op and both shapes.

use std::fmt;

/// The largest rank a tensor may have.
pub const MAX_RANK: usize = 4;

/// A row-major shape of rank 0 to [`MAX_RANK`]; `Copy`, so it never allocates.
///
/// ```
/// use tape::Shape;
/// let s = Shape::new(&[2, 3]);
/// assert_eq!((s.rank(), s.numel(), s.dims()), (2, 6, &[2, 3][..]));
/// ```
#[derive(Copy, Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape {
    dims: [usize; MAX_RANK],
    rank: u8,
}

impl Shape {
    /// A shape with the given dimensions.
    ///
    /// # Panics
    /// If there are more than [`MAX_RANK`] dimensions.
    #[track_caller]
    pub fn new(dims: &[usize]) -> Shape {
        assert!(
            dims.len() <= MAX_RANK,
            "shape {dims:?}: rank {} exceeds the maximum rank {MAX_RANK}",
            dims.len()
        );
        let mut d = [0; MAX_RANK];
        d[..dims.len()].copy_from_slice(dims);
        Shape {
            dims: d,
            rank: dims.len() as u8,
        }
    }
    /// The shape of a scalar, `[]`.
    pub fn scalar() -> Shape {
        Shape::default()
    }
    /// The dimensions.
    #[inline]
    pub fn dims(&self) -> &[usize] {
        &self.dims[..self.rank as usize]
    }
    /// The number of dimensions.
    #[inline]
    pub fn rank(&self) -> usize {
        self.rank as usize
    }
    /// The number of elements (1 for a scalar).
    #[inline]
    pub fn numel(&self) -> usize {
        self.dims().iter().product()
    }
    /// Dimension `i`.
    ///
    /// # Panics
    /// If `i >= rank`.
    #[track_caller]
    #[inline]
    pub fn dim(&self, i: usize) -> usize {
        assert!(i < self.rank(), "shape {self:?}: axis {i} out of range");
        self.dims[i]
    }
    /// Row-major strides in elements.
    pub fn strides(&self) -> [usize; MAX_RANK] {
        let mut s = [0; MAX_RANK];
        let mut acc = 1;
        for i in (0..self.rank()).rev() {
            s[i] = acc;
            acc *= self.dims[i];
        }
        s
    }
    /// The shape padded on the left with ones to rank 4 (for broadcasting loops).
    pub(crate) fn padded4(&self) -> [usize; MAX_RANK] {
        let mut p = [1; MAX_RANK];
        let off = MAX_RANK - self.rank();
        p[off..].copy_from_slice(self.dims());
        p
    }
    /// Row-major strides of the left-padded rank-4 shape, with 0 where a dimension is 1
    /// (so indexing a broadcast operand repeats it).
    pub(crate) fn broadcast_strides4(&self) -> [usize; MAX_RANK] {
        let p = self.padded4();
        let mut s = [0; MAX_RANK];
        let mut acc = 1;
        for i in (0..MAX_RANK).rev() {
            s[i] = if p[i] == 1 { 0 } else { acc };
            acc *= p[i];
        }
        s
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.dims())
    }
}
impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.dims())
    }
}
impl From<&[usize]> for Shape {
    fn from(d: &[usize]) -> Shape {
        Shape::new(d)
    }
}
impl<const N: usize> From<[usize; N]> for Shape {
    fn from(d: [usize; N]) -> Shape {
        Shape::new(&d)
    }
}
impl<const N: usize> From<&[usize; N]> for Shape {
    fn from(d: &[usize; N]) -> Shape {
        Shape::new(d)
    }
}

/// The NumPy broadcast of two shapes, or `None` if they are incompatible.
///
/// ```
/// use tape::{shape::broadcast_shapes, Shape};
/// let s = broadcast_shapes(Shape::new(&[4, 1, 3]), Shape::new(&[2, 1])).unwrap();
/// assert_eq!(s.dims(), &[4, 2, 3]);
/// assert!(broadcast_shapes(Shape::new(&[2]), Shape::new(&[3])).is_none());
/// ```
pub fn broadcast_shapes(a: Shape, b: Shape) -> Option<Shape> {
    let rank = a.rank().max(b.rank());
    let mut out = [0; MAX_RANK];
    let (pa, pb) = (a.padded4(), b.padded4());
    for i in 0..MAX_RANK {
        out[i] = match (pa[i], pb[i]) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        };
    }
    Some(Shape::new(&out[MAX_RANK - rank..]))
}

/// Panics at the caller's line with the op, the operands' shapes and the reason.
///
/// This is the one place shape errors are formatted, so every message reads
/// `op: lhs [3, 4], rhs [5, 2]: reason`.
#[track_caller]
#[cold]
pub(crate) fn shape_panic(op: &str, shapes: &[(&str, Shape)], reason: fmt::Arguments<'_>) -> ! {
    let mut msg = String::from(op);
    msg.push(':');
    for (i, (name, s)) in shapes.iter().enumerate() {
        msg.push_str(if i == 0 { " " } else { ", " });
        msg.push_str(&format!("{name} {s:?}"));
    }
    msg.push_str(&format!(": {reason}"));
    panic!("{msg}")
}

/// Checks a condition about shapes; on failure panics through [`shape_panic`].
macro_rules! check_shapes {
    ($cond:expr, $op:expr, [$($name:expr => $shape:expr),* $(,)?], $($fmt:tt)+) => {
        if !$cond {
            $crate::shape::shape_panic($op, &[$(($name, $shape)),*], format_args!($($fmt)+))
        }
    };
}
pub(crate) use check_shapes;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_strides_repeat_unit_dims() {
        let s = Shape::new(&[3, 1]);
        assert_eq!(s.padded4(), [1, 1, 3, 1]);
        assert_eq!(s.broadcast_strides4(), [0, 0, 1, 0]);
    }

    #[test]
    #[should_panic(expected = "matmul: lhs [3, 4], rhs [5, 2]: inner dimensions 4 != 5")]
    fn shape_panic_names_op_and_shapes() {
        let (a, b) = (Shape::new(&[3, 4]), Shape::new(&[5, 2]));
        check_shapes!(a.dim(1) == b.dim(0), "matmul", ["lhs" => a, "rhs" => b], "inner dimensions {} != {}", a.dim(1), b.dim(0));
    }
}
