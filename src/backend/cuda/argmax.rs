//! Launcher of the argmax kernel (`csrc/sm90/argmax/argmax.cu`): the CPU backend's `argmax`,
//! one block per row.

use cudarc::driver::CudaSlice;

use super::params::{ArgmaxParams, FLASHSEEK_ARGMAX_THREADS};
use super::{grid, product, to_u32, CudaDevice};
use crate::error::{ensure_shape, Result};

impl CudaDevice {
    /// The index of the largest value of each of the `rows` rows of `logits` (each `cols` wide)
    /// into `out`: the first on ties, with the CPU backend's NaN rule (a NaN is never chosen,
    /// except that a row starting with one gives 0).
    pub fn argmax(&self, logits: &CudaSlice<f32>, rows: usize, cols: usize, out: &mut CudaSlice<u32>) -> Result<()> {
        const OP: &str = "argmax";
        ensure_shape(cols > 0, OP, || "no columns".into())?;
        let blocks = grid(rows, OP)?;
        let (x_ptr, _x) = self.input(logits, product(rows, cols, OP)?, OP, "logits")?;
        let (out_ptr, _out) = self.output(out, rows, OP, "out")?;
        if rows == 0 {
            return Ok(());
        }
        let p = ArgmaxParams {
            x: x_ptr as *const f32,
            out: out_ptr as *mut u32,
            rows: blocks,
            cols: to_u32(cols, OP, "width")?,
        };
        // SAFETY: the kernel reads `rows * cols` values of logits and writes `rows` of out, both
        // checked above.
        unsafe { self.launch(&self.kernels.argmax, OP, blocks, FLASHSEEK_ARGMAX_THREADS, &p) }
    }
}
