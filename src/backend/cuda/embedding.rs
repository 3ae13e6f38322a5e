//! Launcher of the embedding kernels (`csrc/sm90/embedding/embedding.cu`): the CPU backend's
//! `embedding`, rows of a table in its checkpoint format decoded to f32, one block per id.

use cudarc::driver::{CudaFunction, CudaSlice};

use super::gemm::{CudaLinear, Weight};
use super::params::{EmbeddingParams, FLASHSEEK_EMBEDDING_THREADS};
use super::{grid, product, to_u32, CudaDevice};
use crate::error::{Error, Result};
use crate::model::weights::blocks;

impl CudaDevice {
    /// Row `ids[i]` of `table` into row `i` of `out` (rows of `table.cols()`). The ids are host
    /// values, as the `Backend` trait passes them: they are checked here, then uploaded.
    pub fn embedding(&self, table: &CudaLinear, ids: &[u32], out: &mut CudaSlice<f32>) -> Result<()> {
        const OP: &str = "embedding";
        let (vocab, cols) = (table.rows(), table.cols());
        if let Some(id) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::Input(format!("token id {id} is outside the vocabulary ({vocab})")));
        }
        let blocks_n = grid(ids.len(), OP)?;
        let len = product(vocab, cols, OP)?;
        // Weights were checked against their shape when loaded.
        let (kernel, (t_ptr, _t), scales): (&CudaFunction, _, _) = match &table.weight {
            Weight::F32(t) => (&self.kernels.embedding, self.input(t, len, OP, "table")?, None),
            Weight::Bf16(t) => (&self.kernels.embedding_wbf16, self.input(t, len, OP, "table")?, None),
            Weight::F16(t) => (&self.kernels.embedding_wf16, self.input(t, len, OP, "table")?, None),
            Weight::Fp8 { codes, scales } => (
                &self.kernels.embedding_we4m3,
                self.input(codes, len, OP, "table")?,
                Some(self.input(scales, product(blocks(vocab), blocks(cols), OP)?, OP, "scales")?),
            ),
        };
        let (out_ptr, _out) = self.output(out, product(ids.len(), cols, OP)?, OP, "out")?;
        if ids.is_empty() || cols == 0 {
            return Ok(());
        }
        let ids_dev = self.upload(ids)?;
        let (ids_ptr, _ids) = self.input(&ids_dev, ids.len(), OP, "ids")?;
        let p = EmbeddingParams {
            table: t_ptr as *const std::ffi::c_void,
            scales: scales.as_ref().map_or(0, |s| s.0) as *const f32,
            ids: ids_ptr as *const u32,
            out: out_ptr as *mut f32,
            n_ids: blocks_n,
            cols: to_u32(cols, OP, "width")?,
            vocab: to_u32(vocab, OP, "vocabulary")?,
        };
        // SAFETY: the kernel reads the `ids.len()` uploaded ids, rows id < vocab of the table
        // (`vocab * cols` values of its format, checked at load) and, for e4m3, the scales of
        // those rows' blocks (checked above), and writes `ids.len() * cols` values of out
        // (checked). cudarc frees `ids_dev` on the stream, after the kernel has read it.
        unsafe { self.launch(kernel, OP, blocks_n, FLASHSEEK_EMBEDDING_THREADS, &p) }
    }
}
