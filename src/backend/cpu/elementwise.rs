//! Small ops on the CPU: activations, FP8 rounding, the Hadamard rotation, argmax, and the
//! row copies of the paged KV cache.

use rayon::prelude::*;

use crate::error::{ensure_shape, Error, Result};
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

fn check_slots(slots: &[u32], cache_rows: usize, op: &'static str) -> Result<()> {
    match slots.iter().find(|&&s| s as usize >= cache_rows) {
        Some(s) => Err(Error::shape(op, format!("slot {s} outside the cache ({cache_rows} rows)"))),
        None => Ok(()),
    }
}

pub fn kv_store(
    cache: &mut [f32],
    cache_cols: usize,
    slots: &[u32],
    src: &[f32],
    src_cols: usize,
    src_col: usize,
    dst_col: usize,
    n: usize,
) -> Result<()> {
    ensure_shape(
        cache_cols > 0 && src.len() == slots.len() * src_cols && src_col + n <= src_cols && dst_col + n <= cache_cols,
        "kv_store",
        || {
            format!(
                "{} slots, src {} values of width {src_cols}, columns {src_col}+{n} -> {dst_col} of {cache_cols}",
                slots.len(),
                src.len()
            )
        },
    )?;
    check_slots(slots, cache.len() / cache_cols, "kv_store")?;
    if n == 0 {
        return Ok(());
    }
    for (row, &s) in src.chunks_exact(src_cols).zip(slots) {
        let s = s as usize;
        cache[s * cache_cols + dst_col..s * cache_cols + dst_col + n].copy_from_slice(&row[src_col..src_col + n]);
    }
    Ok(())
}

pub fn kv_gather(
    cache: &[f32],
    cache_cols: usize,
    slots: &[u32],
    col: usize,
    dst: &mut [f32],
    dst_cols: usize,
) -> Result<()> {
    ensure_shape(
        cache_cols > 0 && dst.len() == slots.len() * dst_cols && col + dst_cols <= cache_cols,
        "kv_gather",
        || {
            format!(
                "{} slots into {} values of width {dst_cols} from column {col} of {cache_cols}",
                slots.len(),
                dst.len()
            )
        },
    )?;
    check_slots(slots, cache.len() / cache_cols, "kv_gather")?;
    if dst_cols == 0 {
        return Ok(());
    }
    for (row, &s) in dst.chunks_exact_mut(dst_cols).zip(slots) {
        let s = s as usize;
        row.copy_from_slice(&cache[s * cache_cols + col..s * cache_cols + col + dst_cols]);
    }
    Ok(())
}
