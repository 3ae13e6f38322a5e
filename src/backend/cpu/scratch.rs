//! Reusable f32 scratch buffers, so kernels allocate nothing once the engine is warm.
//!
//! A pool rather than thread-locals: rayon may run another task on a thread that is waiting
//! inside a kernel, and a thread-local buffer would then be borrowed twice.

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

#[derive(Default)]
pub struct Pool {
    free: Mutex<Vec<Vec<f32>>>,
}

/// A buffer of `len` values borrowed from the pool (contents unspecified); returned on drop.
pub struct Scratch<'a> {
    pool: &'a Pool,
    buf: Vec<f32>,
    len: usize,
}

impl Pool {
    pub fn take(&self, len: usize) -> Scratch<'_> {
        let mut buf = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop().unwrap_or_default();
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        Scratch { pool: self, buf, len }
    }
}

impl Deref for Scratch<'_> {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf[..self.len]
    }
}

impl DerefMut for Scratch<'_> {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf[..self.len]
    }
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        self.pool.free.lock().unwrap_or_else(|e| e.into_inner()).push(buf);
    }
}
