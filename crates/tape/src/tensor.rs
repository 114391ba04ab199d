//! Owned row-major tensors.

use crate::real::Real;
use crate::shape::{check_shapes, Shape};

/// An owned, row-major tensor of rank 0 to 4.
///
/// ```
/// use tape::Tensor;
/// let t = Tensor::new(&[2, 2], vec![1.0_f64, 2.0, 3.0, 4.0]);
/// assert_eq!(t.shape().dims(), &[2, 2]);
/// assert_eq!(t.data()[3], 4.0);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor<T> {
    shape: Shape,
    data: Vec<T>,
}

impl<T: Real> Tensor<T> {
    /// A tensor from its shape and row-major data.
    ///
    /// # Panics
    /// If `data.len()` is not the number of elements of `shape`.
    #[track_caller]
    pub fn new(shape: impl Into<Shape>, data: Vec<T>) -> Self {
        let shape = shape.into();
        check_shapes!(
            data.len() == shape.numel(),
            "Tensor::new",
            ["shape" => shape],
            "{} elements given for {} places",
            data.len(),
            shape.numel()
        );
        Tensor { shape, data }
    }
    /// A rank-0 tensor.
    pub fn scalar(x: T) -> Self {
        Tensor {
            shape: Shape::scalar(),
            data: vec![x],
        }
    }
    /// A tensor of zeros.
    pub fn zeros(shape: impl Into<Shape>) -> Self {
        let shape = shape.into();
        Tensor {
            data: vec![T::zero(); shape.numel()],
            shape,
        }
    }
    /// A tensor filled with `x`.
    pub fn full(shape: impl Into<Shape>, x: T) -> Self {
        let shape = shape.into();
        Tensor {
            data: vec![x; shape.numel()],
            shape,
        }
    }
    /// A tensor whose element at flat index `i` is `f(i)`.
    pub fn from_fn(shape: impl Into<Shape>, f: impl FnMut(usize) -> T) -> Self {
        let shape = shape.into();
        Tensor {
            data: (0..shape.numel()).map(f).collect(),
            shape,
        }
    }
    /// A rank-1 tensor holding `data`.
    pub fn vector(data: Vec<T>) -> Self {
        Tensor {
            shape: Shape::new(&[data.len()]),
            data,
        }
    }
    /// The shape.
    #[inline]
    pub fn shape(&self) -> Shape {
        self.shape
    }
    /// The dimensions (shorthand for `shape().dims()`).
    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }
    /// The number of elements.
    #[inline]
    pub fn numel(&self) -> usize {
        self.data.len()
    }
    /// The row-major data.
    #[inline]
    pub fn data(&self) -> &[T] {
        &self.data
    }
    /// The row-major data, mutably.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [T] {
        &mut self.data
    }
    /// The data, consuming the tensor.
    pub fn into_data(self) -> Vec<T> {
        self.data
    }
    /// The single element of a one-element tensor.
    ///
    /// # Panics
    /// If the tensor has more than one element.
    #[track_caller]
    pub fn item(&self) -> T {
        check_shapes!(self.numel() == 1, "Tensor::item", ["tensor" => self.shape], "expected one element");
        self.data[0]
    }
    /// The same data under another shape with as many elements.
    ///
    /// # Panics
    /// If the element counts differ.
    #[track_caller]
    pub fn reshape(self, shape: impl Into<Shape>) -> Self {
        let shape = shape.into();
        check_shapes!(
            shape.numel() == self.numel(),
            "Tensor::reshape",
            ["from" => self.shape, "to" => shape],
            "element counts {} != {}",
            self.numel(),
            shape.numel()
        );
        Tensor {
            shape,
            data: self.data,
        }
    }
    /// Converts every element through its primal value (tangents are dropped).
    pub fn cast<U: Real>(&self) -> Tensor<U> {
        Tensor {
            shape: self.shape,
            data: self.data.iter().map(|&x| U::from_f64(x.to_f64())).collect(),
        }
    }
    /// Elementwise map.
    pub fn map<U: Real>(&self, f: impl FnMut(T) -> U) -> Tensor<U> {
        Tensor {
            shape: self.shape,
            data: self.data.iter().copied().map(f).collect(),
        }
    }
    /// Whether every element is finite.
    pub fn is_finite(&self) -> bool {
        self.data.iter().all(|x| x.is_finite())
    }
    /// The Euclidean norm of the primal values, as `f64`.
    pub fn norm(&self) -> f64 {
        self.data
            .iter()
            .map(|x| x.to_f64() * x.to_f64())
            .sum::<f64>()
            .sqrt()
    }
}
