//! A small typed matrix: a backend's storage with a row-major `[rows, cols]` shape.
//!
//! Activations in the engine are matrices: one row per token, features (heads side by side) in
//! the columns. Kernels that need more structure (heads, pages) take it as explicit parameters.

use crate::backend::{Backend, CacheFormat};

/// `[rows, cols]` of f32-valued activations in the storage of backend `B`.
pub struct Tensor<B: Backend> {
    pub(crate) buf: B::Buf,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
}

/// `[rows, cols]` of i32 (top-k positions, expert ids) in the storage of backend `B`.
pub struct IntTensor<B: Backend> {
    pub(crate) buf: B::Ints,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
}

/// A paged cache of `rows` rows in the storage of backend `B`, in `format`.
pub struct CacheTensor<B: Backend> {
    pub(crate) buf: B::Cache,
    pub(crate) format: CacheFormat,
    pub(crate) rows: usize,
}

impl<B: Backend> CacheTensor<B> {
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn format(&self) -> CacheFormat {
        self.format
    }

    /// Values of one row, decoded.
    pub fn cols(&self) -> usize {
        self.format.cols()
    }
}

impl<B: Backend> Tensor<B> {
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn shape(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }
}

impl<B: Backend> IntTensor<B> {
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }
}
