//! Launcher of the lightning indexer (`csrc/sm90/indexer/indexer.cu`): the CPU backend's
//! `indexer_topk`, in two kernels. `indexer_logits` scores query rows against every cached index
//! key of their sequence (one block per 128 positions of a row); `indexer_topk` keeps each row's
//! `k` best positions (one block per row). Scores live in a workspace of at most 64 MiB, so long
//! contexts are scored a chunk of query rows at a time, each chunk's top-k queued right after
//! its scores on the one stream (no host sync in between).
//!
//! Bit-exact with the CPU backend on x86-64 with AVX2 and FMA (the path its `dots` takes there):
//! each score is the CPU's f32 operations in the CPU's order, NaNs made as x86 makes them, so
//! both select the same positions, ties included. Not bit-exact with the CPU's portable path
//! (other CPUs), which sums the dot products without FMAs; there scores differ by roundings and
//! selections may differ where scores nearly tie. Where two different NaNs meet in one score's
//! sum (a NaN weight and an invalid product, say), the NaN the CPU keeps depends on its
//! compiler's operand order; the GPU keeps the running sum's.

use cudarc::driver::CudaSlice;

use super::kv_pack::CacheView;
use super::params::{
    IndexerParams, FLASHSEEK_CACHE_BF16, FLASHSEEK_CACHE_F32, FLASHSEEK_CACHE_FP8, FLASHSEEK_INDEXER_MAX_DIM,
    FLASHSEEK_INDEXER_POSITIONS, FLASHSEEK_INDEXER_THREADS, FLASHSEEK_INDEXER_TOPK_THREADS,
};
use super::{grid, product, to_u32, CudaDevice};
use crate::backend::{CacheFormat, Pages, Queries};
use crate::error::{ensure_shape, Error, Result};

/// f32 values of the scores workspace (64 MiB): query rows are scored in chunks that fit it, at
/// least one row per chunk however long its context.
const WORKSPACE: usize = 16 << 20;

/// Checks, as the CPU does with [`Pages::cache_row`] for each, that every position a query row
/// reads (`0..=pos` of its sequence) has a page and lies in the cache's `cache_rows` rows: one
/// [`Pages::check_context`] per sequence, up to the last position its rows read.
fn check_pages(queries: Queries, pages: Pages, cache_rows: usize) -> Result<()> {
    let n_seqs = pages.starts.len().saturating_sub(1);
    // The last position each sequence's rows read.
    let mut last = vec![None::<usize>; n_seqs];
    for (&pos, &seq) in queries.pos.iter().zip(queries.seq) {
        let seq = seq as usize;
        let Some(l) = last.get_mut(seq) else {
            return Err(Error::Input(format!("position 0 of sequence {seq} has no cache page")));
        };
        *l = Some(l.map_or(pos as usize, |m| m.max(pos as usize)));
    }
    for (seq, l) in last.iter().enumerate() {
        if let Some(last) = *l {
            pages.check_context(seq, last, cache_rows)?;
        }
    }
    Ok(())
}

impl CudaDevice {
    /// The CPU backend's `indexer_topk`: for each of the `rows` query rows (`q` `[rows, heads *
    /// dim]`, `weights` `[rows, heads]`), `score(t) = Σ_h weights[h]·weight_scale · ReLU(q_h ·
    /// k_t)` over the cached keys (`cache` `[cache_rows, dim]` of f32 or bf16, or the FP8 index
    /// layout of `dim`, decoded on load; reached through `pages`) of
    /// positions `0..=pos` of its sequence (`queries`), and into `out` `[rows, k]` the `k` best
    /// positions, ascending, ties to the earlier position, `-1` padding rows with fewer than `k`
    /// positions. `dim` is at most 128 (DeepSeek-V3.2's `index_head_dim`); positions below
    /// 2^31 - 1. A position without a cache page is an error, checked before anything is queued.
    // The Backend trait method's arguments, plus the dims of each buffer.
    #[allow(clippy::too_many_arguments)]
    pub fn indexer_topk<'c>(
        &self,
        q: &CudaSlice<f32>,
        rows: usize,
        weights: &CudaSlice<f32>,
        heads: usize,
        weight_scale: f32,
        cache: impl Into<CacheView<'c>>,
        cache_rows: usize,
        dim: usize,
        queries: Queries,
        pages: Pages,
        out: &mut CudaSlice<i32>,
        k: usize,
    ) -> Result<()> {
        const OP: &str = "indexer_topk";
        ensure_shape(queries.pos.len() == rows && queries.seq.len() == rows, OP, || {
            format!("{rows} rows but {} positions and {} sequences", queries.pos.len(), queries.seq.len())
        })?;
        ensure_shape(heads > 0 && dim > 0 && dim <= FLASHSEEK_INDEXER_MAX_DIM as usize, OP, || {
            format!("{heads} heads of {dim} (1 to {FLASHSEEK_INDEXER_MAX_DIM})")
        })?;
        let (q_ptr, _q) = self.input(q, product(rows, product(heads, dim, OP)?, OP)?, OP, "q")?;
        let (w_ptr, _w) = self.input(weights, product(rows, heads, OP)?, OP, "weights")?;
        let (cache_ptr, bytes_ptr, cache_format, _cache) = match cache.into() {
            CacheView::F32(b) => {
                let (ptr, guard) = self.input(b, product(cache_rows, dim, OP)?, OP, "cache")?;
                (ptr, 0, FLASHSEEK_CACHE_F32, guard)
            }
            CacheView::Bf16(b, cols) => {
                ensure_shape(cols == dim, OP, || format!("bf16 cache rows of {cols} for keys of {dim}"))?;
                let (ptr, guard) = self.input(b, CacheFormat::Bf16 { cols }.bytes(cache_rows)?, OP, "cache")?;
                (0, ptr, FLASHSEEK_CACHE_BF16, guard)
            }
            CacheView::Index(b, ix) => {
                ensure_shape(ix.dim == dim, OP, || format!("cache {ix:?} for keys of {dim}"))?;
                let (ptr, guard) = self.input(b, CacheFormat::Fp8Index(ix).bytes(cache_rows)?, OP, "cache")?;
                (0, ptr, FLASHSEEK_CACHE_FP8, guard)
            }
            CacheView::Latent(..) => return Err(Error::shape(OP, "a latent cache holds no index keys".to_string())),
        };
        let (out_ptr, _out) = self.output(out, product(rows, k, OP)?, OP, "out")?;
        // As the CPU: no rows is no work; a block size of 0 is an error even for k = 0.
        if rows == 0 {
            return Ok(());
        }
        ensure_shape(pages.block_size > 0, OP, || "block size 0".into())?;
        if k == 0 {
            return Ok(());
        }
        let block_size = to_u32(pages.block_size, OP, "block size")?;
        let (p_heads, p_dim, p_k) = (to_u32(heads, OP, "heads")?, to_u32(dim, OP, "dim")?, to_u32(k, OP, "k")?);
        // Positions are written as i32, and a row's count of them fits the kernels' u32 loops.
        if let Some(pos) = queries.pos.iter().find(|&&p| p >= i32::MAX as u32) {
            return Err(Error::shape(OP, format!("position {pos} is 2^31 - 1 or more")));
        }
        check_pages(queries, pages, cache_rows)?;

        // Rows with more positions than k are scored; the others keep every position. The list
        // holds the scored rows first.
        let scored_row = |i: &usize| queries.pos[*i] as usize + 1 > k;
        let mut list: Vec<u32> = (0..rows).filter(scored_row).map(|i| i as u32).collect();
        let scored = list.len();
        let stride = list.iter().map(|&i| queries.pos[i as usize] as usize + 1).max().unwrap_or(0);
        list.extend((0..rows).filter(|i| !scored_row(i)).map(|i| i as u32));

        // Every upload is non-empty: rows > 0, and a row's sequence has a page (checked above).
        let (pos_dev, seq_dev, list_dev) = (self.upload(queries.pos)?, self.upload(queries.seq)?, self.upload(&list)?);
        let (blocks_dev, starts_dev) = (self.upload(pages.blocks)?, self.upload(pages.starts)?);
        let (pos_ptr, _pos) = self.input(&pos_dev, rows, OP, "positions")?;
        let (seq_ptr, _seq) = self.input(&seq_dev, rows, OP, "sequences")?;
        let (list_ptr, _list) = self.input(&list_dev, rows, OP, "rows")?;
        let (blocks_ptr, _blocks) = self.input(&blocks_dev, pages.blocks.len(), OP, "blocks")?;
        let (starts_ptr, _starts) = self.input(&starts_dev, pages.starts.len(), OP, "starts")?;
        let list_at = |i: usize| (list_ptr + (i * std::mem::size_of::<u32>()) as u64) as *const u32;
        let base = IndexerParams {
            q: q_ptr as *const f32,
            weights: w_ptr as *const f32,
            cache: cache_ptr as *const f32,
            blocks: blocks_ptr as *const u32,
            starts: starts_ptr as *const u32,
            pos: pos_ptr as *const u32,
            seq: seq_ptr as *const u32,
            rows: list_at(0),
            logits: std::ptr::null_mut(),
            out: out_ptr as *mut i32,
            n_rows: 0,
            tiles: 0,
            stride: 0,
            heads: p_heads,
            dim: p_dim,
            block_size,
            k: p_k,
            weight_scale,
            cache_bytes: bytes_ptr as *const u8,
            cache_format,
        };

        if scored < rows {
            let n = grid(rows - scored, OP)?;
            let p = IndexerParams { rows: list_at(scored), n_rows: n, ..base };
            // SAFETY: each block takes one of the n list entries from `scored` on (all below
            // rows), reads its pos (rows values uploaded) and writes its k values of out (rows *
            // k checked); these rows have pos + 1 <= k, so the kernel reads no scores (logits is
            // null).
            unsafe { self.launch(&self.kernels.indexer_topk, OP, n, FLASHSEEK_INDEXER_TOPK_THREADS, &p)? };
        }
        if scored == 0 {
            return Ok(());
        }
        let chunk = (WORKSPACE / stride).clamp(1, scored);
        let tiles = stride.div_ceil(FLASHSEEK_INDEXER_POSITIONS as usize);
        let mut logits = self.zeros::<f32>(product(chunk, stride, OP)?)?;
        let (logits_ptr, _logits) = self.output(&mut logits, chunk * stride, OP, "workspace")?;
        for c0 in (0..scored).step_by(chunk) {
            let n = chunk.min(scored - c0);
            let logits_blocks = grid(product(n, tiles, OP)?, OP)?;
            let p = IndexerParams {
                rows: list_at(c0),
                logits: logits_ptr as *mut f32,
                n_rows: grid(n, OP)?,
                tiles: to_u32(tiles, OP, "tiles")?,
                stride: to_u32(stride, OP, "context")?,
                ..base
            };
            // SAFETY: the kernels take list entries c0..c0 + n (below scored <= rows), each a
            // query row i < rows, and read q at i * heads * dim + [0, heads * dim), weights at
            // i * heads + [0, heads), pos[i] and seq[i] (checked or uploaded above). Row i reads
            // positions t <= pos[i] of sequence seq[i], each through starts[seq] and blocks[starts
            // [seq] + t / block_size] into cache row slot < cache_rows, values slot * dim + [0,
            // dim), or that row's bf16 values or FP8 codes and scales in cache_rows rows (check_pages
            // checked every such t). Entry r writes and reads the workspace at
            // r * stride + t, t <= pos[i] < stride, r < n <= chunk, and writes out at i * k +
            // [0, k) (rows * k checked).
            unsafe {
                self.launch(&self.kernels.indexer_logits, OP, logits_blocks, FLASHSEEK_INDEXER_THREADS, &p)?;
                self.launch(&self.kernels.indexer_topk, OP, p.n_rows, FLASHSEEK_INDEXER_TOPK_THREADS, &p)?;
            }
        }
        Ok(())
    }
}
