//! Launchers of the norm family (`csrc/sm90/norm/norm.cu`): the CPU backend's `rms_norm`,
//! `add_rms_norm` and `layer_norm`, one block per row.

use cudarc::driver::CudaSlice;

use super::params::{NormParams, FLASHSEEK_NORM_THREADS};
use super::{grid, product, to_u32, CudaDevice};
use crate::error::{ensure_shape, Result};

impl CudaDevice {
    /// RMSNorm of columns `col0..col0 + cols` of the `rows` rows of `x` (each `x_cols` wide)
    /// with the scales `weight` (`cols` of them), into `out` (`rows` rows of `cols`).
    pub fn rms_norm(
        &self,
        x: &CudaSlice<f32>,
        rows: usize,
        x_cols: usize,
        col0: usize,
        weight: &CudaSlice<f32>,
        cols: usize,
        eps: f32,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        const OP: &str = "rms_norm";
        ensure_shape(cols > 0 && col0.checked_add(cols).is_some_and(|end| end <= x_cols), OP, || {
            format!("columns {col0}+{cols} of rows {x_cols} wide")
        })?;
        let blocks = grid(rows, OP)?;
        let (x_stride, cols_u32) = (to_u32(x_cols, OP, "width")?, to_u32(cols, OP, "width")?);
        let (x_ptr, _x) = self.input(x, product(rows, x_cols, OP)?, OP, "x")?;
        let (w_ptr, _w) = self.input(weight, cols, OP, "weight")?;
        let (out_ptr, _out) = self.output(out, product(rows, cols, OP)?, OP, "out")?;
        if rows == 0 {
            return Ok(());
        }
        // The window starts `col0` values into each row: one offset of the base address.
        let x_window = x_ptr + (col0 * std::mem::size_of::<f32>()) as u64;
        let p = NormParams {
            x: x_window as *mut f32,
            delta: std::ptr::null(),
            weight: w_ptr as *const f32,
            bias: std::ptr::null(),
            out: out_ptr as *mut f32,
            rows: blocks,
            cols: cols_u32,
            x_stride,
            eps,
        };
        // SAFETY: the kernel only reads x, at `col0 + r * x_stride + c` for r < rows, c < cols,
        // all below `rows * x_cols` (checked above: col0 + cols <= x_cols); it reads `cols`
        // weights and writes `rows * cols` values of out, both checked against their buffers.
        unsafe { self.launch(&self.kernels.rms_norm, OP, blocks, FLASHSEEK_NORM_THREADS, &p) }
    }

    /// `residual += delta; out = rms_norm(residual)` over `rows` rows of `cols`, with `cols`
    /// scales in `weight`.
    pub fn add_rms_norm(
        &self,
        residual: &mut CudaSlice<f32>,
        delta: &CudaSlice<f32>,
        rows: usize,
        cols: usize,
        weight: &CudaSlice<f32>,
        eps: f32,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        const OP: &str = "add_rms_norm";
        ensure_shape(cols > 0, OP, || "no columns".into())?;
        let blocks = grid(rows, OP)?;
        let cols_u32 = to_u32(cols, OP, "width")?;
        let len = product(rows, cols, OP)?;
        let (d_ptr, _d) = self.input(delta, len, OP, "delta")?;
        let (w_ptr, _w) = self.input(weight, cols, OP, "weight")?;
        let (r_ptr, _r) = self.output(residual, len, OP, "residual")?;
        let (out_ptr, _out) = self.output(out, len, OP, "out")?;
        if rows == 0 {
            return Ok(());
        }
        let p = NormParams {
            x: r_ptr as *mut f32,
            delta: d_ptr as *const f32,
            weight: w_ptr as *const f32,
            bias: std::ptr::null(),
            out: out_ptr as *mut f32,
            rows: blocks,
            cols: cols_u32,
            x_stride: cols_u32,
            eps,
        };
        // SAFETY: the kernel reads and writes `rows * cols` values of residual, reads as many of
        // delta and writes as many of out, and reads `cols` weights: all checked above.
        unsafe { self.launch(&self.kernels.add_rms_norm, OP, blocks, FLASHSEEK_NORM_THREADS, &p) }
    }

    /// LayerNorm in place of `rows` rows of `cols` in `x`, with `cols` scales and biases.
    pub fn layer_norm(
        &self,
        x: &mut CudaSlice<f32>,
        rows: usize,
        cols: usize,
        weight: &CudaSlice<f32>,
        bias: &CudaSlice<f32>,
        eps: f32,
    ) -> Result<()> {
        const OP: &str = "layer_norm";
        ensure_shape(cols > 0, OP, || "no columns".into())?;
        let blocks = grid(rows, OP)?;
        let cols_u32 = to_u32(cols, OP, "width")?;
        let (w_ptr, _w) = self.input(weight, cols, OP, "weight")?;
        let (b_ptr, _b) = self.input(bias, cols, OP, "bias")?;
        let (x_ptr, _x) = self.output(x, product(rows, cols, OP)?, OP, "x")?;
        if rows == 0 {
            return Ok(());
        }
        let p = NormParams {
            x: x_ptr as *mut f32,
            delta: std::ptr::null(),
            weight: w_ptr as *const f32,
            bias: b_ptr as *const f32,
            out: std::ptr::null_mut(),
            rows: blocks,
            cols: cols_u32,
            x_stride: cols_u32,
            eps,
        };
        // SAFETY: the kernel reads and writes `rows * cols` values of x and reads `cols` weights
        // and biases, all checked above; it does not touch the null `delta` and `out`.
        unsafe { self.launch(&self.kernels.layer_norm, OP, blocks, FLASHSEEK_NORM_THREADS, &p) }
    }
}
