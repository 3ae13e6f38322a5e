//! Launchers of the elementwise family (`csrc/sm90/elementwise/elementwise.cu`): the CPU
//! backend's `silu_mul` and `add_assign`.

use cudarc::driver::{CudaFunction, CudaSlice};

use super::params::{ElementwiseParams, FLASHSEEK_ELEMENTWISE_THREADS};
use super::CudaDevice;
use crate::error::Result;

/// Blocks at most per launch: the kernels loop over the rest (a grid-stride loop), and this many
/// fill an H100 several times over.
const MAX_BLOCKS: usize = 4096;

impl CudaDevice {
    /// `gate = silu(gate) * up` over the first `n` values.
    pub fn silu_mul(&self, gate: &mut CudaSlice<f32>, up: &CudaSlice<f32>, n: usize) -> Result<()> {
        self.elementwise(&self.kernels.silu_mul, "silu_mul", gate, up, n)
    }

    /// `acc += x` over the first `n` values.
    pub fn add_assign(&self, acc: &mut CudaSlice<f32>, x: &CudaSlice<f32>, n: usize) -> Result<()> {
        self.elementwise(&self.kernels.add_assign, "add_assign", acc, x, n)
    }

    fn elementwise(
        &self,
        kernel: &CudaFunction,
        op: &'static str,
        acc: &mut CudaSlice<f32>,
        x: &CudaSlice<f32>,
        n: usize,
    ) -> Result<()> {
        let (x_ptr, _x) = self.input(x, n, op, "the operand")?;
        let (acc_ptr, _acc) = self.output(acc, n, op, "the accumulator")?;
        if n == 0 {
            return Ok(());
        }
        let blocks = n.div_ceil(FLASHSEEK_ELEMENTWISE_THREADS as usize).min(MAX_BLOCKS) as u32;
        let p = ElementwiseParams { acc: acc_ptr as *mut f32, x: x_ptr as *const f32, n: n as u64 };
        // SAFETY: the kernel reads and writes the first n values of acc and reads the first n of
        // x, both checked above.
        unsafe { self.launch(kernel, op, blocks, FLASHSEEK_ELEMENTWISE_THREADS, &p) }
    }
}
