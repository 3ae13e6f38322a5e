//! Rotary position embedding on the CPU, in both of DeepSeek's layouts.

use rayon::prelude::*;

use crate::backend::{HeadCols, RopeLayout};
use crate::error::{ensure_shape, Result};

/// Rotates the rotary columns of each `cols`-wide row of `x` by the angles of the matching row
/// of `cos_sin` (`dim/2` cosines, then `dim/2` sines).
pub fn rope(x: &mut [f32], cols: usize, heads: HeadCols, cos_sin: &[f32], layout: RopeLayout) -> Result<()> {
    let half = heads.dim / 2;
    let rows = x.len() / cols.max(1);
    ensure_shape(
        heads.dim % 2 == 0
            && heads.offset + heads.dim <= heads.stride
            && heads.n_heads * heads.stride <= cols
            && x.len() == rows * cols
            && cos_sin.len() == rows * heads.dim,
        "rope",
        || format!("{rows} rows of {cols}, heads {heads:?}, cos_sin {} values", cos_sin.len()),
    )?;
    if heads.dim == 0 || heads.n_heads == 0 {
        return Ok(());
    }
    x.par_chunks_mut(cols).zip(cos_sin.par_chunks(heads.dim)).for_each(|(row, cs)| {
        let (cos, sin) = cs.split_at(half);
        for h in 0..heads.n_heads {
            let seg = &mut row[h * heads.stride + heads.offset..h * heads.stride + heads.offset + heads.dim];
            match layout {
                RopeLayout::Interleaved => {
                    for (i, pair) in seg.chunks_exact_mut(2).enumerate() {
                        let (a, b) = (pair[0], pair[1]);
                        pair[0] = a * cos[i] - b * sin[i];
                        pair[1] = b * cos[i] + a * sin[i];
                    }
                }
                RopeLayout::HalfSplit => {
                    let (lo, hi) = seg.split_at_mut(half);
                    for i in 0..half {
                        let (a, b) = (lo[i], hi[i]);
                        lo[i] = a * cos[i] - b * sin[i];
                        hi[i] = b * cos[i] + a * sin[i];
                    }
                }
            }
        }
    });
    Ok(())
}
