//! Launchers of the rope family (`csrc/sm90/rope/rope.cu`): the CPU backend's `rope`, in both
//! layouts, one block per row.

use cudarc::driver::CudaSlice;

use super::params::{RopeParams, FLASHSEEK_ROPE_THREADS};
use super::{grid, product, to_u32, CudaDevice};
use crate::backend::{HeadCols, RopeLayout};
use crate::error::{ensure_shape, Result};

impl CudaDevice {
    /// Rotates, in place, the rotary columns `heads` of the `rows` rows of `x` (each `cols`
    /// wide) by the angles of the matching row of `cos_sin` (`heads.dim / 2` cosines, then as
    /// many sines).
    pub fn rope(
        &self,
        x: &mut CudaSlice<f32>,
        rows: usize,
        cols: usize,
        heads: HeadCols,
        cos_sin: &CudaSlice<f32>,
        layout: RopeLayout,
    ) -> Result<()> {
        const OP: &str = "rope";
        let head_cols = heads.n_heads.checked_mul(heads.stride);
        ensure_shape(
            heads.dim % 2 == 0
                && heads.offset.checked_add(heads.dim).is_some_and(|end| end <= heads.stride)
                && head_cols.is_some_and(|n| n <= cols),
            OP,
            || format!("{rows} rows of {cols}, heads {heads:?}"),
        )?;
        let blocks = grid(rows, OP)?;
        let (cs_ptr, _cs) = self.input(cos_sin, product(rows, heads.dim, OP)?, OP, "cos_sin")?;
        let (x_ptr, _x) = self.output(x, product(rows, cols, OP)?, OP, "x")?;
        if rows == 0 || heads.dim == 0 || heads.n_heads == 0 {
            return Ok(());
        }
        let p = RopeParams {
            x: x_ptr as *mut f32,
            cos_sin: cs_ptr as *const f32,
            rows: blocks,
            cols: to_u32(cols, OP, "width")?,
            // `n_heads * (dim / 2)` pairs are counted in u32 by the kernel; below `cols`.
            n_heads: to_u32(heads.n_heads, OP, "heads")?,
            head_stride: to_u32(heads.stride, OP, "head stride")?,
            offset: to_u32(heads.offset, OP, "offset")?,
            dim: to_u32(heads.dim, OP, "rotary dims")?,
        };
        let kernel = match layout {
            RopeLayout::Interleaved => &self.kernels.rope_interleaved,
            RopeLayout::HalfSplit => &self.kernels.rope_half_split,
        };
        // SAFETY: the kernel touches, in row r < rows, the columns h * stride + offset + i for
        // h < n_heads and i < dim, all below n_heads * stride <= cols (checked above, as is
        // offset + dim <= stride), so inside the `rows * cols` values of x; it reads `dim` values
        // of cos_sin per row, inside its checked `rows * dim`.
        unsafe { self.launch(kernel, OP, blocks, FLASHSEEK_ROPE_THREADS, &p) }
    }
}
