//! Small ops on the CPU: activations, FP8 rounding, the Hadamard rotation, argmax, and the
//! row copies of the paged KV cache.

use rayon::prelude::*;

use crate::error::{ensure_shape, Result};
use crate::fp8::{round_trip_row, ScaleFmt};
use crate::model::config::FP8_BLOCK;

/// Rows per parallel task for row-wise ops.
const ROWS_PER_TASK: usize = 16;

#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `gate = silu(gate) * up`.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) -> Result<()> {
    ensure_shape(gate.len() == up.len(), "silu_mul", || format!("gate {}, up {}", gate.len(), up.len()))?;
    for (g, u) in gate.iter_mut().zip(up) {
        *g = silu(*g) * u;
    }
    Ok(())
}

pub fn add_assign(acc: &mut [f32], x: &[f32]) -> Result<()> {
    ensure_shape(acc.len() == x.len(), "add_assign", || format!("{} vs {}", acc.len(), x.len()))?;
    for (a, b) in acc.iter_mut().zip(x) {
        *a += b;
    }
    Ok(())
}

pub fn fp8_round(x: &mut [f32], segment: usize, fmt: ScaleFmt) -> Result<()> {
    ensure_shape(segment > 0 && x.len() % segment == 0, "fp8_round", || {
        format!("{} values in segments of {segment}", x.len())
    })?;
    x.par_chunks_mut(segment * ROWS_PER_TASK)
        .for_each(|c| c.chunks_mut(segment).for_each(|s| round_trip_row(s, FP8_BLOCK, fmt)));
    Ok(())
}

/// In-place fast Walsh-Hadamard transform of each `dim`-wide segment, scaled by `1/sqrt(dim)`.
pub fn hadamard(x: &mut [f32], dim: usize) -> Result<()> {
    ensure_shape(dim.is_power_of_two() && x.len() % dim == 0, "hadamard", || {
        format!("{} values in segments of {dim} (a power of two)", x.len())
    })?;
    let scale = 1.0 / (dim as f32).sqrt();
    x.par_chunks_mut(dim * ROWS_PER_TASK).for_each(|c| {
        for seg in c.chunks_mut(dim) {
            let mut h = 1;
            while h < dim {
                for block in seg.chunks_mut(2 * h) {
                    let (a, b) = block.split_at_mut(h);
                    for (a, b) in a.iter_mut().zip(b.iter_mut()) {
                        let (u, v) = (*a, *b);
                        *a = u + v;
                        *b = u - v;
                    }
                }
                h *= 2;
            }
            seg.iter_mut().for_each(|v| *v *= scale);
        }
    });
    Ok(())
}

pub fn argmax(logits: &[f32], cols: usize) -> Vec<u32> {
    logits
        .chunks_exact(cols)
        .map(|row| {
            let mut best = 0;
            for (i, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = i;
                }
            }
            best as u32
        })
        .collect()
}
