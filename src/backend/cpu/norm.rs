//! RMSNorm (with the fused residual add) and LayerNorm on the CPU, in f32.

use rayon::prelude::*;

use crate::error::{ensure_shape, Result};

/// Rows per parallel task.
const ROWS_PER_TASK: usize = 8;

/// Sums in f64: exact enough that the result does not depend on the width.
fn rms_row(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ms = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / x.len() as f64;
    let r = (1.0 / (ms + f64::from(eps)).sqrt()) as f32;
    for ((o, v), w) in out.iter_mut().zip(x).zip(w) {
        *o = w * (v * r);
    }
}

/// RMSNorm of columns `col0..col0 + w.len()` of each `x_cols`-wide row of `x` into `out`.
pub fn rms_norm(x: &[f32], x_cols: usize, col0: usize, w: &[f32], eps: f32, out: &mut [f32]) -> Result<()> {
    let n = w.len();
    let rows = out.len() / n.max(1);
    ensure_shape(n > 0 && out.len() == rows * n && x.len() == rows * x_cols && col0 + n <= x_cols, "rms_norm", || {
        format!("x {} values of width {x_cols}, columns {col0}+{n}, out {}", x.len(), out.len())
    })?;
    out.par_chunks_mut(n * ROWS_PER_TASK).zip(x.par_chunks(x_cols * ROWS_PER_TASK)).for_each(|(o, x)| {
        for (o, x) in o.chunks_exact_mut(n).zip(x.chunks_exact(x_cols)) {
            rms_row(&x[col0..col0 + n], w, eps, o);
        }
    });
    Ok(())
}

/// `residual += delta; out = rms_norm(residual)`.
/// `residual += delta; out = rms_norm(residual)` over rows of `cols` values.
pub fn add_rms_norm(
    residual: &mut [f32],
    cols: usize,
    delta: &[f32],
    w: &[f32],
    eps: f32,
    out: &mut [f32],
) -> Result<()> {
    let n = w.len();
    ensure_shape(
        n > 0 && residual.len() == delta.len() && out.len() == residual.len() && out.len() % n == 0 && cols == n,
        "add_rms_norm",
        || format!("residual {}, delta {}, out {}, width {n}", residual.len(), delta.len(), out.len()),
    )?;
    out.par_chunks_mut(n * ROWS_PER_TASK)
        .zip(residual.par_chunks_mut(n * ROWS_PER_TASK))
        .zip(delta.par_chunks(n * ROWS_PER_TASK))
        .for_each(|((o, r), d)| {
            for ((o, r), d) in o.chunks_exact_mut(n).zip(r.chunks_exact_mut(n)).zip(d.chunks_exact(n)) {
                for (r, d) in r.iter_mut().zip(d) {
                    *r += d;
                }
                rms_row(r, w, eps, o);
            }
        });
    Ok(())
}

/// LayerNorm of each row of `x` in place (biased variance, as torch computes it).
pub fn layer_norm(x: &mut [f32], w: &[f32], b: &[f32], eps: f32) -> Result<()> {
    let n = w.len();
    ensure_shape(n > 0 && b.len() == n && x.len() % n == 0, "layer_norm", || {
        format!("x {} values, weight {n}, bias {}", x.len(), b.len())
    })?;
    x.par_chunks_mut(n * ROWS_PER_TASK).for_each(|c| {
        for row in c.chunks_exact_mut(n) {
            let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
            let var = row.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n as f64;
            let r = 1.0 / (var + f64::from(eps)).sqrt();
            for ((v, w), b) in row.iter_mut().zip(w).zip(b) {
                *v = ((f64::from(*v) - mean) * r) as f32 * w + b;
            }
        }
    });
    Ok(())
}
