//! Launchers of the quantization family (`csrc/sm90/quant/quant.cu`): the CPU backend's
//! `fp8_round` and `hadamard`, bit for bit.

use cudarc::driver::CudaSlice;

use super::params::{QuantParams, FLASHSEEK_FP8_GROUP, FLASHSEEK_FP8_ROUND_THREADS, FLASHSEEK_HADAMARD_THREADS};
use super::{grid, product, to_u32, CudaDevice};
use crate::error::{ensure_shape, Result};
use crate::fp8::ScaleFmt;
use crate::model::config::FP8_BLOCK;

// The kernel groups values as the CPU's `round_trip_row` does, by the checkpoint's FP8 block.
const _: () = assert!(FLASHSEEK_FP8_GROUP as usize == FP8_BLOCK);

impl CudaDevice {
    /// Rounds the `rows` rows of `x` (each `cols` wide) through e4m3 in place: each row is cut
    /// into `segment`-wide pieces, each grouped in 128s from its left with one scale per group.
    pub fn fp8_round(
        &self,
        x: &mut CudaSlice<f32>,
        rows: usize,
        cols: usize,
        segment: usize,
        fmt: ScaleFmt,
    ) -> Result<()> {
        const OP: &str = "fp8_round";
        ensure_shape(segment > 0 && cols % segment == 0, OP, || format!("rows of {cols} in segments of {segment}"))?;
        let len = product(rows, cols, OP)?;
        let segments = len / segment;
        let groups = product(segments, segment.div_ceil(FP8_BLOCK), OP)?;
        let warps_per_block = (FLASHSEEK_FP8_ROUND_THREADS / 32) as usize;
        let blocks = grid(groups.div_ceil(warps_per_block), OP)?;
        let (x_ptr, _x) = self.output(x, len, OP, "x")?;
        if len == 0 {
            return Ok(());
        }
        let p = QuantParams {
            x: x_ptr as *mut f32,
            segments: to_u32(segments, OP, "segments")?,
            width: to_u32(segment, OP, "segment")?,
            groups: to_u32(groups, OP, "groups")?,
            ue8m0: u32::from(fmt == ScaleFmt::Ue8m0),
            scale: 1.0,
        };
        // SAFETY: group g of the kernel covers values of segment g / ceil(segment / 128), all
        // below segments * segment = rows * cols, which x holds (checked above).
        unsafe { self.launch(&self.kernels.fp8_round, OP, blocks, FLASHSEEK_FP8_ROUND_THREADS, &p) }
    }

    /// The normalized Walsh-Hadamard transform `H_dim / sqrt(dim)` in place of every `dim`-wide
    /// segment of the `rows` rows of `x` (each `cols` wide); `dim` is a power of two.
    pub fn hadamard(&self, x: &mut CudaSlice<f32>, rows: usize, cols: usize, dim: usize) -> Result<()> {
        const OP: &str = "hadamard";
        ensure_shape(dim.is_power_of_two() && cols % dim == 0, OP, || {
            format!("rows of {cols} in segments of {dim} (a power of two)")
        })?;
        let len = product(rows, cols, OP)?;
        let segments = len / dim;
        let blocks = grid(segments, OP)?;
        let (x_ptr, _x) = self.output(x, len, OP, "x")?;
        if len == 0 {
            return Ok(());
        }
        let p = QuantParams {
            x: x_ptr as *mut f32,
            segments: blocks,
            width: to_u32(dim, OP, "dim")?,
            groups: 0,
            ue8m0: 0,
            // The CPU's scale, computed the CPU's way: the kernel multiplies by it.
            scale: 1.0 / (dim as f32).sqrt(),
        };
        // SAFETY: block s of the kernel touches values s * dim .. (s + 1) * dim for s < segments,
        // all inside the `rows * cols` values of x checked above.
        unsafe { self.launch(&self.kernels.hadamard, OP, blocks, FLASHSEEK_HADAMARD_THREADS, &p) }
    }
}
