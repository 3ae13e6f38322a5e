//! Reusable scratch buffers, so kernels allocate nothing once the engine is warm.
//!
//! A pool rather than thread-locals: rayon may run another task on a thread that is waiting
//! inside a kernel, and a thread-local buffer would then be borrowed twice.

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

pub struct Pool<T> {
    free: Mutex<Vec<Vec<T>>>,
}

impl<T> Default for Pool<T> {
    fn default() -> Self {
        Pool { free: Mutex::new(Vec::new()) }
    }
}

/// A buffer of `len` values borrowed from the pool (contents unspecified); returned on drop.
pub struct Scratch<'a, T> {
    pool: &'a Pool<T>,
    buf: Vec<T>,
    len: usize,
}

impl<T: Copy + Default> Pool<T> {
    pub fn take(&self, len: usize) -> Scratch<'_, T> {
        let mut buf = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop().unwrap_or_default();
        if buf.len() < len {
            buf.resize(len, T::default());
        }
        Scratch { pool: self, buf, len }
    }
}

impl<T> Deref for Scratch<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.buf[..self.len]
    }
}

impl<T> DerefMut for Scratch<'_, T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.buf[..self.len]
    }
}

impl<T> Drop for Scratch<'_, T> {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        self.pool.free.lock().unwrap_or_else(|e| e.into_inner()).push(buf);
    }
}

/// The scratch pools of the CPU backend: values and indices.
#[derive(Default)]
pub struct Pools {
    pub f32: Pool<f32>,
    pub idx: Pool<usize>,
}
