//! Launcher of the embedding kernel (`csrc/sm90/embedding/embedding.cu`): the CPU backend's
//! `embedding` for an f32 table, one block per id.

use cudarc::driver::CudaSlice;

use super::params::{EmbeddingParams, FLASHSEEK_EMBEDDING_THREADS};
use super::{grid, product, to_u32, CudaDevice};
use crate::error::{Error, Result};

impl CudaDevice {
    /// Row `ids[i]` of `table` (`vocab` rows of `cols`) into row `i` of `out`. The ids are
    /// host values, as the `Backend` trait passes them: they are checked here, then uploaded.
    pub fn embedding(
        &self,
        table: &CudaSlice<f32>,
        vocab: usize,
        cols: usize,
        ids: &[u32],
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        const OP: &str = "embedding";
        if let Some(id) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::Input(format!("token id {id} is outside the vocabulary ({vocab})")));
        }
        let blocks = grid(ids.len(), OP)?;
        let (t_ptr, _t) = self.input(table, product(vocab, cols, OP)?, OP, "table")?;
        let (out_ptr, _out) = self.output(out, product(ids.len(), cols, OP)?, OP, "out")?;
        if ids.is_empty() || cols == 0 {
            return Ok(());
        }
        let ids_dev = self.upload(ids)?;
        let (ids_ptr, _ids) = self.input(&ids_dev, ids.len(), OP, "ids")?;
        let p = EmbeddingParams {
            table: t_ptr as *const f32,
            ids: ids_ptr as *const u32,
            out: out_ptr as *mut f32,
            n_ids: blocks,
            cols: to_u32(cols, OP, "width")?,
            vocab: to_u32(vocab, OP, "vocabulary")?,
        };
        // SAFETY: the kernel reads the `ids.len()` uploaded ids, rows id < vocab of the table
        // (`vocab * cols` values, checked) and writes `ids.len() * cols` values of out (checked).
        // cudarc frees `ids_dev` on the stream, after the kernel has read it.
        unsafe { self.launch(&self.kernels.embedding, OP, blocks, FLASHSEEK_EMBEDDING_THREADS, &p) }
    }
}
