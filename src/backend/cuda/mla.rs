//! The MLA family (`csrc/sm90/mla/`): row copies between packed rows and the paged latent cache
//! (`kv_store`, `kv_gather`), the absorption of `kv_b` into queries and outputs (`absorb_q`,
//! `absorb_out`), split-KV decode attention over the paged cache (`mla_decode`) and prefill
//! attention over expanded keys and values (`mla_prefill`), each dense-causal or sparse over
//! the indexer's top-k positions.
//!
//! Host metadata (slots, positions, block tables, prefill sequences) is checked here as the CPU
//! backend checks it, then uploaded: a bad index is an error, never a device access out of
//! place. These are the simple first kernels of the family: SIMT, f32 throughout, the CPU's
//! numerics up to the order of f32 sums (`tests/cuda_mla.rs` bounds the differences).

use std::collections::HashSet;

use cudarc::driver::{CudaSlice, SyncOnDrop};

use super::gemm::WeightView;
use super::kv_pack::CacheView;
use super::params::{
    KvCopyParams, MlaAbsorbParams, MlaDecodeParams, MlaPrefillParams, FLASHSEEK_CACHE_BF16, FLASHSEEK_CACHE_F32,
    FLASHSEEK_CACHE_FP8, FLASHSEEK_KV_COPY_THREADS, FLASHSEEK_MLA_ABSORB_THREADS, FLASHSEEK_MLA_ABSORB_TILE,
    FLASHSEEK_MLA_COMBINE_THREADS, FLASHSEEK_MLA_DECODE_HEADS, FLASHSEEK_MLA_DECODE_THREADS, FLASHSEEK_MLA_MAX_LATENT,
    FLASHSEEK_MLA_MAX_SPLITS, FLASHSEEK_MLA_PREFILL_MAX_QK, FLASHSEEK_MLA_PREFILL_MAX_V, FLASHSEEK_MLA_PREFILL_ROWS,
    FLASHSEEK_MLA_PREFILL_THREADS, FLASHSEEK_MLA_TILE, FLASHSEEK_WEIGHT_BF16, FLASHSEEK_WEIGHT_E4M3,
    FLASHSEEK_WEIGHT_F16, FLASHSEEK_WEIGHT_F32,
};
use super::{grid, product, to_u32, CudaDevice, CudaLinear};
use crate::backend::{CacheFormat, MlaDims, Pages, PrefillSeq, Queries};
use crate::error::{ensure_shape, Error, Result};
use crate::model::weights::blocks;

/// Each MLA dimension (heads, nope, rope, v, kv_lora) at most this, so that the kernels' u32
/// sums and products of a few of them (`nope + rope`, 64 · rope, ...) never wrap.
const MAX_DIM: usize = 1 << 24;

/// Blocks `mla_decode` aims for before it splits a query's keys: two waves of an H100's 132 SMs.
const DECODE_TARGET_BLOCKS: usize = 264;
/// Keys a decode split handles at least: fewer would spend more on the combine than they save.
const DECODE_MIN_CHUNK: usize = 64;

/// Whether columns `col..col + n` lie within rows `width` wide.
pub(super) fn fits(col: usize, n: usize, width: usize) -> bool {
    col.checked_add(n).is_some_and(|end| end <= width)
}

/// The kernels' u32 dimensions `[heads, nope, rope, v, kv_lora]`, each at most [`MAX_DIM`].
fn mla_dims(d: MlaDims, op: &'static str) -> Result<[u32; 5]> {
    let all = [d.heads, d.nope, d.rope, d.v, d.kv_lora];
    ensure_shape(all.iter().all(|&n| n <= MAX_DIM), op, || format!("dims {d:?} exceed 2^24"))?;
    // Each is at most 2^24: the casts are exact.
    Ok(all.map(|n| n as u32))
}

/// Every slot must address a row of the cache, as the CPU's `kv_store` and `kv_gather` check.
pub(super) fn check_slots(slots: &[u32], cache_rows: usize, op: &'static str) -> Result<()> {
    match slots.iter().find(|&&s| s as usize >= cache_rows) {
        Some(s) => Err(Error::shape(op, format!("slot {s} outside the cache ({cache_rows} rows)"))),
        None => Ok(()),
    }
}

/// `(step row, slot)` pairs for `kv_store`, flattened: for a slot written more than once only
/// the last row, which is what the CPU's writes in row order leave. No two pairs then share a
/// slot, so no two blocks write the same place. `slots.len()` fits a u32 (the caller checked).
pub(super) fn last_writes(slots: &[u32]) -> Vec<u32> {
    let mut seen = HashSet::with_capacity(slots.len());
    let mut pairs = Vec::with_capacity(2 * slots.len());
    for (i, &s) in slots.iter().enumerate().rev() {
        if seen.insert(s) {
            pairs.extend([i as u32, s]);
        }
    }
    pairs
}

/// How `mla_decode` cuts each query's keys (at most `keys` of them) for `blocks` blocks per split:
/// `(splits, chunk)`, keys `s·chunk..(s + 1)·chunk` in split `s`. Enough splits to give the GPU
/// [`DECODE_TARGET_BLOCKS`] blocks, each at least [`DECODE_MIN_CHUNK`] keys (a whole number of
/// tiles), at most `FLASHSEEK_MLA_MAX_SPLITS`; one split where the rows and heads fill the GPU.
fn decode_splits(blocks: usize, keys: usize) -> (usize, usize) {
    let tile = FLASHSEEK_MLA_TILE as usize;
    let most = keys.div_ceil(DECODE_MIN_CHUNK).clamp(1, FLASHSEEK_MLA_MAX_SPLITS as usize);
    let want = DECODE_TARGET_BLOCKS.div_ceil(blocks.max(1)).clamp(1, most);
    let chunk = keys.div_ceil(want).next_multiple_of(tile).max(tile);
    (keys.div_ceil(chunk).max(1), chunk)
}

/// A linear weight's device addresses for a kernel reading it in place: the format
/// (`FLASHSEEK_WEIGHT_*`), the values and the block scales (0 unless FP8), with the guards that
/// keep cudarc's stream bookkeeping until the launch.
struct WeightPtrs<'a> {
    format: u32,
    values: u64,
    scales: u64,
    _guards: [Option<SyncOnDrop<'a>>; 2],
}

impl CudaDevice {
    /// The decode kernels' metadata in one buffer: the rows' positions, then their sequences,
    /// then the block table's starts and blocks (`mla_decode` and `mla_decode_fp8` read it so).
    pub(super) fn upload_decode_meta(&self, queries: Queries, pages: Pages) -> Result<CudaSlice<u32>> {
        let mut meta = Vec::with_capacity(2 * queries.pos.len() + pages.starts.len() + pages.blocks.len());
        meta.extend_from_slice(queries.pos);
        meta.extend_from_slice(queries.seq);
        meta.extend_from_slice(pages.starts);
        meta.extend_from_slice(pages.blocks);
        self.upload(&meta)
    }

    fn weight_ptrs<'a>(&'a self, w: &'a CudaLinear, op: &'static str) -> Result<WeightPtrs<'a>> {
        let len = product(w.rows(), w.cols(), op)?;
        let (format, values, guard) = match w.view() {
            WeightView::F32(b) => {
                let (ptr, g) = self.input(b, len, op, "weight")?;
                (FLASHSEEK_WEIGHT_F32, ptr, g)
            }
            WeightView::Bf16(b) => {
                let (ptr, g) = self.input(b, len, op, "weight")?;
                (FLASHSEEK_WEIGHT_BF16, ptr, g)
            }
            WeightView::F16(b) => {
                let (ptr, g) = self.input(b, len, op, "weight")?;
                (FLASHSEEK_WEIGHT_F16, ptr, g)
            }
            WeightView::Fp8 { codes, scales } => {
                let (ptr, g) = self.input(codes, len, op, "weight")?;
                let (s_ptr, s_g) = self.input(scales, blocks(w.rows()) * blocks(w.cols()), op, "weight scales")?;
                return Ok(WeightPtrs {
                    format: FLASHSEEK_WEIGHT_E4M3,
                    values: ptr,
                    scales: s_ptr,
                    _guards: [Some(g), Some(s_g)],
                });
            }
        };
        Ok(WeightPtrs { format, values, scales: 0, _guards: [Some(guard), None] })
    }

    /// For each `(source row, destination row)` pair of `pairs` (flattened), copies `n` values
    /// from column `src_col` of the source row to column `dst_col` of the destination row, one
    /// block per pair. `src` and `dst` come with the values they must hold and their row width;
    /// the callers checked every row of `pairs` and the column ranges.
    #[allow(clippy::too_many_arguments)]
    fn kv_copy(
        &self,
        op: &'static str,
        src: &CudaSlice<f32>,
        (src_len, src_stride, src_col): (usize, usize, usize),
        dst: &mut CudaSlice<f32>,
        (dst_len, dst_stride, dst_col): (usize, usize, usize),
        n: usize,
        pairs: &[u32],
    ) -> Result<()> {
        let count = grid(pairs.len() / 2, op)?;
        let p_n = to_u32(n, op, "columns")?;
        let (p_src_stride, p_src_col) = (to_u32(src_stride, op, "width")?, to_u32(src_col, op, "column")?);
        let (p_dst_stride, p_dst_col) = (to_u32(dst_stride, op, "width")?, to_u32(dst_col, op, "column")?);
        let (src_ptr, _src) = self.input(src, src_len, op, "source")?;
        let (dst_ptr, _dst) = self.output(dst, dst_len, op, "destination")?;
        if count == 0 || n == 0 {
            return Ok(());
        }
        let pairs_dev = self.upload(pairs)?;
        let (pairs_ptr, _pairs) = self.input(&pairs_dev, pairs.len(), op, "rows")?;
        let p = KvCopyParams {
            src: src_ptr as *const f32,
            dst: dst_ptr as *mut f32,
            pairs: pairs_ptr as *const u32,
            count,
            n: p_n,
            src_stride: p_src_stride,
            src_col: p_src_col,
            dst_stride: p_dst_stride,
            dst_col: p_dst_col,
        };
        // SAFETY: block i reads src row pairs[2i] and writes dst row pairs[2i + 1], columns
        // col..col + n of rows `stride` wide; the callers checked every row against the rows
        // of src_len and dst_len values, and col + n against the width. cudarc frees
        // `pairs_dev` on the stream, after the kernel has read it.
        unsafe { self.launch(&self.kernels.kv_copy, op, count, FLASHSEEK_KV_COPY_THREADS, &p) }
    }

    /// The CPU's `kv_store`: columns `src_col..src_col + n` of row `i` of `src` (`slots.len()`
    /// rows of `src_cols`) into cache row `slots[i]` (of `cache_rows` rows of `cache_cols`),
    /// from column `dst_col`. Where a slot repeats, the last row wins, as on the CPU.
    #[allow(clippy::too_many_arguments)]
    pub fn kv_store(
        &self,
        cache: &mut CudaSlice<f32>,
        cache_rows: usize,
        cache_cols: usize,
        slots: &[u32],
        src: &CudaSlice<f32>,
        src_cols: usize,
        src_col: usize,
        dst_col: usize,
        n: usize,
    ) -> Result<()> {
        const OP: &str = "kv_store";
        ensure_shape(cache_cols > 0 && fits(src_col, n, src_cols) && fits(dst_col, n, cache_cols), OP, || {
            format!("{} slots, columns {src_col}+{n} of {src_cols} -> {dst_col} of {cache_cols}", slots.len())
        })?;
        check_slots(slots, cache_rows, OP)?;
        grid(slots.len(), OP)?;
        let src_len = product(slots.len(), src_cols, OP)?;
        let cache_len = product(cache_rows, cache_cols, OP)?;
        let pairs = last_writes(slots);
        self.kv_copy(OP, src, (src_len, src_cols, src_col), cache, (cache_len, cache_cols, dst_col), n, &pairs)
    }

    /// The CPU's `kv_gather`: row `i` of `dst` (`slots.len()` rows of `dst_cols`) = columns
    /// `col..col + dst_cols` of cache row `slots[i]` (of `cache_rows` rows of `cache_cols`).
    #[allow(clippy::too_many_arguments)]
    pub fn kv_gather(
        &self,
        cache: &CudaSlice<f32>,
        cache_rows: usize,
        cache_cols: usize,
        slots: &[u32],
        col: usize,
        dst: &mut CudaSlice<f32>,
        dst_cols: usize,
    ) -> Result<()> {
        const OP: &str = "kv_gather";
        ensure_shape(cache_cols > 0 && fits(col, dst_cols, cache_cols), OP, || {
            format!("{} slots, columns {col}+{dst_cols} of {cache_cols}", slots.len())
        })?;
        check_slots(slots, cache_rows, OP)?;
        grid(slots.len(), OP)?;
        let dst_len = product(slots.len(), dst_cols, OP)?;
        let cache_len = product(cache_rows, cache_cols, OP)?;
        // Row i < slots.len(), which fits a u32 (checked by grid).
        let pairs: Vec<u32> = slots.iter().enumerate().flat_map(|(i, &s)| [s, i as u32]).collect();
        self.kv_copy(OP, cache, (cache_len, cache_cols, col), dst, (dst_len, dst_cols, 0), dst_cols, &pairs)
    }

    /// The CPU's `absorb_q` over the first `rows` rows of `q` (rows of `heads · (nope + rope)`):
    /// per head, `[W_kᵀ q_nope, q_rope]` into `out` (rows of `heads · (kv_lora + rope)`), with
    /// `W_k` the head's key rows of `kv_b` (`[heads · (nope + v), kv_lora]`, any format).
    pub fn absorb_q(
        &self,
        q: &CudaSlice<f32>,
        rows: usize,
        kv_b: &CudaLinear,
        dims: MlaDims,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        self.absorb(false, q, rows, kv_b, dims, out)
    }

    /// The CPU's `absorb_out`: per head, `W_v · o_lat[i, h]` into `out` (rows of `heads · v`) for
    /// the `rows` rows of `o_lat` (rows of `heads · kv_lora`), with `W_v` the head's value rows
    /// of `kv_b`.
    pub fn absorb_out(
        &self,
        o_lat: &CudaSlice<f32>,
        rows: usize,
        kv_b: &CudaLinear,
        dims: MlaDims,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        self.absorb(true, o_lat, rows, kv_b, dims, out)
    }

    /// `absorb_out` where `values`, else `absorb_q`: one block per head and 64x64 tile of its
    /// product.
    fn absorb(
        &self,
        values: bool,
        x: &CudaSlice<f32>,
        rows: usize,
        kv_b: &CudaLinear,
        d: MlaDims,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let (op, kernel) =
            if values { ("absorb_out", &self.kernels.absorb_out) } else { ("absorb_q", &self.kernels.absorb_q) };
        let [heads, nope, rope, v, kv_lora] = mla_dims(d, op)?;
        ensure_shape(kv_b.rows() == d.heads * (d.nope + d.v) && kv_b.cols() == d.kv_lora, op, || {
            format!("kv_b [{}, {}] for dims {d:?}", kv_b.rows(), kv_b.cols())
        })?;
        let (x_cols, out_cols, n_dim) = if values { (d.kv_lora, d.v, d.v) } else { (d.qk(), d.latent(), d.kv_lora) };
        let rows_u32 = to_u32(rows, op, "rows")?;
        let tile = FLASHSEEK_MLA_ABSORB_TILE as usize;
        let tiles_m = rows.div_ceil(tile);
        // absorb_q's first column tile also copies q_rope: one even where kv_lora is 0.
        let tiles_n = if values { n_dim.div_ceil(tile) } else { n_dim.div_ceil(tile).max(1) };
        let blocks = grid(product(d.heads, product(tiles_m, tiles_n, op)?, op)?, op)?;
        let (x_ptr, _x) = self.input(x, product(rows, product(d.heads, x_cols, op)?, op)?, op, "x")?;
        let (out_ptr, _out) = self.output(out, product(rows, product(d.heads, out_cols, op)?, op)?, op, "out")?;
        let w = self.weight_ptrs(kv_b, op)?;
        if blocks == 0 {
            return Ok(());
        }
        let p = MlaAbsorbParams {
            x: x_ptr as *const f32,
            w: w.values as *const std::ffi::c_void,
            w_scales: w.scales as *const f32,
            out: out_ptr as *mut f32,
            rows: rows_u32,
            heads,
            nope,
            rope,
            v,
            kv_lora,
            format: w.format,
            // Both at most `blocks` (below 2^31) since neither is 0 here.
            tiles_m: tiles_m as u32,
            tiles_n: tiles_n as u32,
        };
        // SAFETY: block (h, tile) reads x and writes out at rows < rows and columns within
        // head h's x_cols and out_cols (both buffers checked for rows · heads · cols values),
        // and reads kv_b's rows of head h (below heads · (nope + v) = its rows, checked) in its
        // format, with FP8 scales of those rows' blocks (checked by weight_ptrs).
        unsafe { self.launch(kernel, op, blocks, FLASHSEEK_MLA_ABSORB_THREADS, &p) }
    }

    /// The CPU's `mla_decode`: absorbed queries `q_lat` (`rows` rows of `heads · latent`) over
    /// the paged latent `cache` (`cache_rows` rows of `latent = kv_lora + rope`: f32 values, or
    /// bf16 rows or the FP8 latent layout of those widths, decoded as the tiles are staged).
    /// Query row `i`
    /// at `queries.pos[i]` of sequence `queries.seq[i]` attends to positions `0..=pos`, or with
    /// `topk` (a buffer of `rows` rows and its width) to the entries `t` of its top-k row with
    /// `0 <= t <= pos` (duplicates count again, -1 is none). Writes per head the
    /// softmax-weighted latent, `out` rows of `heads · kv_lora`; zeros for a row without keys.
    ///
    /// Every position `0..=pos` must have a cache row (also with `topk`, where the CPU checks
    /// only the positions it reads). Latents wider than `FLASHSEEK_MLA_MAX_LATENT` (576, V3.2's
    /// 512 + 64) are refused. Allocates its split workspace for the call.
    #[allow(clippy::too_many_arguments)]
    pub fn mla_decode<'c>(
        &self,
        q_lat: &CudaSlice<f32>,
        rows: usize,
        cache: impl Into<CacheView<'c>>,
        cache_rows: usize,
        queries: Queries,
        pages: Pages,
        topk: Option<(&CudaSlice<i32>, usize)>,
        scale: f32,
        dims: MlaDims,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        const OP: &str = "mla_decode";
        let d = dims;
        let lat = d.latent();
        ensure_shape(queries.pos.len() == rows && queries.seq.len() == rows && pages.block_size > 0, OP, || {
            format!("{rows} rows, {} positions, {} sequences", queries.pos.len(), queries.seq.len())
        })?;
        let [heads, _, _, _, kv_lora] = mla_dims(d, OP)?;
        ensure_shape(lat > 0 && lat <= FLASHSEEK_MLA_MAX_LATENT as usize, OP, || {
            format!("latent width {lat}: the kernel takes 1 to {FLASHSEEK_MLA_MAX_LATENT}")
        })?;
        let (q_ptr, _q) = self.input(q_lat, product(rows, d.heads * lat, OP)?, OP, "q_lat")?;
        let (cache_ptr, bytes_ptr, cache_format, _cache) = match cache.into() {
            CacheView::F32(b) => {
                let (ptr, guard) = self.input(b, product(cache_rows, lat, OP)?, OP, "cache")?;
                (ptr, 0, FLASHSEEK_CACHE_F32, guard)
            }
            CacheView::Bf16(b, cols) => {
                ensure_shape(cols == lat, OP, || format!("bf16 cache rows of {cols} for dims {d:?}"))?;
                let (ptr, guard) = self.input(b, CacheFormat::Bf16 { cols }.bytes(cache_rows)?, OP, "cache")?;
                (0, ptr, FLASHSEEK_CACHE_BF16, guard)
            }
            CacheView::Latent(b, l) => {
                ensure_shape(l.nope == d.kv_lora && l.rope == d.rope, OP, || format!("cache {l:?} for dims {d:?}"))?;
                let (ptr, guard) = self.input(b, CacheFormat::Fp8Latent(l).bytes(cache_rows)?, OP, "cache")?;
                (0, ptr, FLASHSEEK_CACHE_FP8, guard)
            }
            CacheView::Index(..) => return Err(Error::shape(OP, "an index key cache is no latent cache".to_string())),
        };
        let (out_ptr, _out) = self.output(out, product(rows, d.heads * d.kv_lora, OP)?, OP, "out")?;
        let (topk_ptr, _topk, topk_cols) = match topk {
            Some((t, k)) => {
                let (ptr, guard) = self.input(t, product(rows, k, OP)?, OP, "topk")?;
                (ptr, Some(guard), to_u32(k, OP, "top-k width")?)
            }
            None => (0, None, 0),
        };
        for (&pos, &seq) in queries.pos.iter().zip(queries.seq) {
            pages.check_context(seq as usize, pos as usize, cache_rows)?;
        }
        let keys = match topk {
            Some((_, k)) => k,
            None => queries.pos.iter().map(|&p| p as usize + 1).max().unwrap_or(0),
        };
        let groups = d.heads.div_ceil(FLASHSEEK_MLA_DECODE_HEADS as usize);
        let (splits, chunk) = decode_splits(product(rows, groups, OP)?, keys);
        let n_blocks = grid(product(product(rows, groups, OP)?, splits, OP)?, OP)?;
        let combine_blocks = grid(product(rows, d.heads, OP)?, OP)?;
        if n_blocks == 0 || d.kv_lora == 0 {
            return Ok(());
        }
        let meta_dev = self.upload_decode_meta(queries, pages)?;
        let (meta_ptr, _meta) = self.input(&meta_dev, meta_dev.len(), OP, "metadata")?;
        // The partials of every (row, head, split), only where the keys are split.
        let parts = if splits > 1 { product(product(rows, d.heads, OP)?, splits, OP)? } else { 0 };
        let mut part_acc = self.zeros::<f32>(product(parts, d.kv_lora, OP)?.max(1))?;
        let mut part_stat = self.zeros::<f32>(product(parts, 3, OP)?.max(1))?;
        let (acc_ptr, _acc) = self.output(&mut part_acc, parts * d.kv_lora, OP, "workspace")?;
        let (stat_ptr, _stat) = self.output(&mut part_stat, parts * 3, OP, "workspace")?;
        let p = MlaDecodeParams {
            q: q_ptr as *const f32,
            cache: cache_ptr as *const f32,
            meta: meta_ptr as *const u32,
            topk: topk_ptr as *const i32,
            out: out_ptr as *mut f32,
            part_acc: acc_ptr as *mut f32,
            part_stat: stat_ptr as *mut f32,
            cache_rows: cache_rows as u64,
            rows: to_u32(rows, OP, "rows")?,
            heads,
            kv_lora,
            // At most FLASHSEEK_MLA_MAX_LATENT (checked).
            latent: lat as u32,
            block_size: to_u32(pages.block_size, OP, "block size")?,
            n_starts: to_u32(pages.starts.len(), OP, "block table starts")?,
            n_blocks: to_u32(pages.blocks.len(), OP, "block table")?,
            topk_cols,
            // At most FLASHSEEK_MLA_MAX_SPLITS.
            splits: splits as u32,
            chunk: to_u32(chunk, OP, "keys per split")?,
            scale,
            cache_bytes: bytes_ptr as *const u8,
            cache_format,
        };
        // SAFETY: block (row, group, split) reads q_lat row `row` (rows · heads · latent values,
        // checked), top-k row `row` (rows · topk_cols, checked), the uploaded metadata at its
        // layout's offsets, and cache rows that its checks keep below cache_rows (cache_rows ·
        // latent values, or the bf16 or FP8 bytes of cache_rows rows, checked); it writes out's row (rows · heads · kv_lora, checked) or its
        // partials (parts · kv_lora and parts · 3 values allocated above). The combine reads the
        // partials and writes out alike. cudarc frees the uploads and workspaces on the stream,
        // after the kernels.
        unsafe { self.launch(&self.kernels.mla_decode, OP, n_blocks, FLASHSEEK_MLA_DECODE_THREADS, &p) }?;
        if splits > 1 {
            // SAFETY: as above.
            unsafe {
                self.launch(&self.kernels.mla_decode_combine, OP, combine_blocks, FLASHSEEK_MLA_COMBINE_THREADS, &p)
            }?;
        }
        Ok(())
    }

    /// The CPU's `mla_prefill`: queries `q` (`q_rows` rows of `heads · (nope + rope)`) over
    /// expanded keys and values `kv` (`kv_rows` rows of `heads · (nope + v)`: per head k_nope,
    /// then v) and the shared rotary keys `kpe` (`kv_rows` rows of `rope`). Each of `seqs` (in
    /// order of `q_start`, not overlapping) has its query rows at positions `start_pos..` attend
    /// to kv rows `kv_start + t` for `t` in `0..=pos`, or with `topk` (`q_rows` rows and its
    /// width, indexed by query row) for the entries `t` of its top-k row with `0 <= t <= pos`.
    /// Writes those rows of `out` (`q_rows` rows of `heads · v`) only. A head's query and value
    /// are each at most 256 wide (`FLASHSEEK_MLA_PREFILL_MAX_QK`, `_MAX_V`; V3.2: 192 and 128).
    #[allow(clippy::too_many_arguments)]
    pub fn mla_prefill(
        &self,
        q: &CudaSlice<f32>,
        q_rows: usize,
        kv: &CudaSlice<f32>,
        kpe: &CudaSlice<f32>,
        kv_rows: usize,
        seqs: &[PrefillSeq],
        topk: Option<(&CudaSlice<i32>, usize)>,
        scale: f32,
        dims: MlaDims,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        const OP: &str = "mla_prefill";
        let d = dims;
        let [heads, nope, rope, v, _] = mla_dims(d, OP)?;
        // As the CPU: heads with no query or key/value columns are malformed dims.
        ensure_shape(heads > 0 && d.qk() > 0 && d.nope + d.v > 0, OP, || format!("empty heads in dims {d:?}"))?;
        ensure_shape(
            d.qk() <= FLASHSEEK_MLA_PREFILL_MAX_QK as usize && d.v <= FLASHSEEK_MLA_PREFILL_MAX_V as usize,
            OP,
            || {
                format!("dims {d:?} exceed the kernel's {FLASHSEEK_MLA_PREFILL_MAX_QK} query and {FLASHSEEK_MLA_PREFILL_MAX_V} value columns")
            },
        )?;
        to_u32(q_rows, OP, "query rows")?;
        to_u32(kv_rows, OP, "kv rows")?;
        let (q_ptr, _q) = self.input(q, product(q_rows, d.heads * d.qk(), OP)?, OP, "q")?;
        let (kv_ptr, _kv) = self.input(kv, product(kv_rows, d.heads * (d.nope + d.v), OP)?, OP, "kv")?;
        let (kpe_ptr, _kpe) = self.input(kpe, product(kv_rows, d.rope, OP)?, OP, "kpe")?;
        let (out_ptr, _out) = self.output(out, product(q_rows, d.heads * d.v, OP)?, OP, "out")?;
        let (topk_ptr, _topk, topk_cols) = match topk {
            Some((t, k)) => {
                let (ptr, guard) = self.input(t, product(q_rows, k, OP)?, OP, "topk")?;
                (ptr, Some(guard), to_u32(k, OP, "top-k width")?)
            }
            None => (0, None, 0),
        };
        let mut q_end = 0;
        for s in seqs {
            let q_fits = s.q_start >= q_end && fits(s.q_start, s.q_len, q_rows);
            let kv_fits = s.start_pos.checked_add(s.q_len).is_some_and(|ctx| fits(s.kv_start, ctx, kv_rows));
            ensure_shape(q_fits && kv_fits, OP, || {
                format!(
                    "sequence {s:?} overlaps the one before or reaches past q ({q_rows} rows) or kv ({kv_rows} rows)"
                )
            })?;
            q_end = s.q_start + s.q_len;
        }
        // Every value is below q_rows or kv_rows, both u32 (checked): the casts are exact.
        let rows_per_item = FLASHSEEK_MLA_PREFILL_ROWS as usize;
        let mut items = Vec::new();
        for s in seqs {
            for r0 in (0..s.q_len).step_by(rows_per_item) {
                let n = rows_per_item.min(s.q_len - r0);
                items.extend([(s.q_start + r0) as u32, n as u32, s.kv_start as u32, (s.start_pos + r0) as u32]);
            }
        }
        let n_items = items.len() / 4;
        let n_blocks = grid(product(n_items, d.heads, OP)?, OP)?;
        if n_blocks == 0 || d.v == 0 {
            return Ok(());
        }
        let items_dev = self.upload(&items)?;
        let (items_ptr, _items) = self.input(&items_dev, items.len(), OP, "items")?;
        let p = MlaPrefillParams {
            q: q_ptr as *const f32,
            kv: kv_ptr as *const f32,
            kpe: kpe_ptr as *const f32,
            items: items_ptr as *const u32,
            topk: topk_ptr as *const i32,
            out: out_ptr as *mut f32,
            // At most n_blocks, below 2^31.
            n_items: n_items as u32,
            heads,
            nope,
            rope,
            v,
            topk_cols,
            scale,
        };
        let kernel = if topk.is_some() { &self.kernels.mla_prefill_topk } else { &self.kernels.mla_prefill };
        // SAFETY: block (item, head) reads q and writes out at the item's rows (below q_rows,
        // checked for every sequence; q_rows · heads · qk and · v values, checked), reads the
        // top-k rows of those rows (q_rows · topk_cols, checked), and reads kv and kpe rows
        // kv_start + t for t <= the row's position, below kv_start + start_pos + q_len <= kv_rows
        // (checked). cudarc frees `items_dev` on the stream, after the kernel.
        unsafe { self.launch(kernel, OP, n_blocks, FLASHSEEK_MLA_PREFILL_THREADS, &p) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_splits_cover_the_keys() {
        let tile = FLASHSEEK_MLA_TILE as usize;
        for blocks in [1, 2, 7, 64, 263, 264, 1000] {
            for keys in [0, 1, 15, 16, 63, 64, 65, 200, 4096, 100_000, 1 << 20] {
                let (splits, chunk) = decode_splits(blocks, keys);
                assert!((1..=FLASHSEEK_MLA_MAX_SPLITS as usize).contains(&splits), "{blocks} {keys}: {splits}");
                assert!(chunk >= tile && chunk % tile == 0, "{blocks} {keys}: chunk {chunk}");
                assert!(
                    splits * chunk >= keys && (splits - 1) * chunk < keys.max(1),
                    "{blocks} {keys}: {splits}x{chunk}"
                );
                if blocks >= DECODE_TARGET_BLOCKS || keys <= DECODE_MIN_CHUNK {
                    assert_eq!(splits, 1, "{blocks} {keys}");
                }
            }
        }
    }

    #[test]
    fn last_writes_keep_the_last_row_of_each_slot() {
        assert_eq!(last_writes(&[3, 1, 3, 2, 1]), vec![4, 1, 3, 2, 2, 3]);
        assert!(last_writes(&[]).is_empty());
    }
}
