//! Launchers of the Hopper lightning indexer (`csrc/sm90/indexer/indexer_{logits,topk}_fp8.cu`,
//! index math in `indexer_fast.cuh`): the CPU backend's `indexer_topk` over the FP8 index key
//! cache (`IndexFp8` pages at dim 128) with FP8 queries (e4m3 codes and one f32 scale per head
//! row, as `act_quant` makes them with 128-wide groups), and its two steps on their own for
//! tests and benches.
//!
//! Scores: `logits[r, t] = k_scale(t) · Σ_h w[r, h] · weight_scale · q_scale[r, h] · ReLU(q8[r, h]
//! · k8(t))` on wgmma (f32 accumulation of exact e4m3 products), the CPU's value on the decoded
//! q and k up to summation order. The top-k is the simple `indexer_topk`'s selection of the same
//! scores exactly (`total_cmp`, ties to the earlier position, ascending, `-1` pads).
//!
//! Scores live in a workspace of at most 64 MiB: long prefills are scored a chunk of query rows at
//! a time, each chunk's top-k queued right after its logits on the one stream.

use cudarc::driver::sys;
use cudarc::driver::{CudaFunction, CudaSlice, LaunchConfig, PushKernelArg};

use super::params::{
    IndexerFp8Params, FLASHSEEK_INDEXER_FP8_BINS, FLASHSEEK_INDEXER_FP8_DIM, FLASHSEEK_INDEXER_FP8_HEADS,
    FLASHSEEK_INDEXER_FP8_LOGITS_SMEM, FLASHSEEK_INDEXER_FP8_MAX_SMEM, FLASHSEEK_INDEXER_FP8_THREADS,
    FLASHSEEK_INDEXER_FP8_TOPK_SMEM, FLASHSEEK_INDEXER_FP8_TOPK_THREADS,
};
use super::tma::{self, TensorMap};
use super::{driver, grid, product, raise_smem_limit, to_u32, CudaDevice};
use crate::backend::{Pages, Queries};
use crate::error::{ensure_shape, Error, Result};
use crate::kv_layout::{IndexFp8, PAGE};

/// f32 values of the scores workspace of [`CudaDevice::indexer_topk_fp8`] (64 MiB).
const WORKSPACE: usize = 16 << 20;
/// Query rows a logits CTA scores together (`kGroupRows`).
const GROUP_ROWS: usize = 2;
/// Fewest pages a logits CTA takes: each CTA loads its queries and flushes its histograms once.
const MIN_PAGES_PER_SPLIT: usize = 8;
/// Logits CTAs per multiprocessor aimed at (one runs at a time on each): several waves even out
/// groups of different lengths.
const WAVES: usize = 4;

/// The FP8 queries and the FP8 index key cache an indexer call reads.
#[derive(Clone, Copy)]
pub struct IndexerFp8Input<'a> {
    /// e4m3 codes, `[rows, heads, 128]`.
    pub q_codes: &'a CudaSlice<u8>,
    /// One scale per head row, `[rows, heads]`.
    pub q_scales: &'a CudaSlice<f32>,
    /// Head weights, `[rows, heads]`.
    pub weights: &'a CudaSlice<f32>,
    pub rows: usize,
    /// At most 64 (DeepSeek-V3.2's `index_n_heads`).
    pub heads: usize,
    pub weight_scale: f32,
    /// `cache_pages` pages of `layout` (dim 128).
    pub cache: &'a CudaSlice<u8>,
    pub layout: IndexFp8,
    pub cache_pages: usize,
    pub queries: Queries<'a>,
    /// Block tables of [`PAGE`]-position blocks: a block is a cache page.
    pub pages: Pages<'a>,
}

/// Groups of at most [`GROUP_ROWS`] consecutive entries of `list` (row indices) of one sequence,
/// as the first entry of each plus the end, and each group's first CTA plus the grid, for CTAs
/// of `per_split` pages.
fn plan_groups(list: &[u32], queries: Queries, per_split: usize) -> (Vec<u32>, Vec<u32>) {
    let mut groups = vec![0u32];
    let mut ctas = vec![0u32];
    let mut a = 0;
    while a < list.len() {
        let seq = queries.seq[list[a] as usize];
        let mut b = a + 1;
        while b < list.len() && b - a < GROUP_ROWS && queries.seq[list[b] as usize] == seq {
            b += 1;
        }
        let max_pos = list[a..b].iter().map(|&i| queries.pos[i as usize] as usize).max().unwrap_or(0);
        let pages = max_pos / PAGE + 1;
        groups.push(b as u32);
        ctas.push(ctas[ctas.len() - 1] + pages.div_ceil(per_split) as u32);
        a = b;
    }
    (groups, ctas)
}

impl CudaDevice {
    /// Raises the dynamic shared memory limits of the indexer's Hopper kernels (once, at load).
    pub(super) fn init_indexer_fp8(logits: &CudaFunction, topk: &CudaFunction) -> Result<()> {
        raise_smem_limit(logits, FLASHSEEK_INDEXER_FP8_LOGITS_SMEM as usize, "indexer_logits_fp8")?;
        raise_smem_limit(topk, FLASHSEEK_INDEXER_FP8_MAX_SMEM as usize, "indexer_topk_fp8")
    }

    /// Whether the FP8 indexer kernels take keys of `layout`, `heads` query heads and page tables
    /// of `block_size` positions. Others go to the simple kernels.
    pub fn indexer_fp8_supports(layout: IndexFp8, heads: usize, block_size: usize) -> bool {
        layout.dim == FLASHSEEK_INDEXER_FP8_DIM as usize
            && heads > 0
            && heads <= FLASHSEEK_INDEXER_FP8_HEADS as usize
            && block_size == PAGE
    }

    /// Checks everything an indexer call reads, before anything is queued.
    fn check_fp8_input(&self, x: &IndexerFp8Input, op: &'static str) -> Result<()> {
        let IndexerFp8Input { rows, heads, queries, pages, layout, cache_pages, .. } = *x;
        ensure_shape(queries.pos.len() == rows && queries.seq.len() == rows, op, || {
            format!("{rows} rows but {} positions and {} sequences", queries.pos.len(), queries.seq.len())
        })?;
        ensure_shape(Self::indexer_fp8_supports(layout, heads, pages.block_size), op, || {
            format!(
                "index keys of {}, {heads} heads, blocks of {} positions: the FP8 kernels take keys of \
                 {FLASHSEEK_INDEXER_FP8_DIM}, 1 to {FLASHSEEK_INDEXER_FP8_HEADS} heads and the FP8 cache's pages of {PAGE}",
                layout.dim, pages.block_size
            )
        })?;
        let hd = product(heads, layout.dim, op)?;
        self.input(x.q_codes, product(rows, hd, op)?, op, "q codes").map(drop)?;
        self.input(x.q_scales, product(rows, heads, op)?, op, "q scales").map(drop)?;
        self.input(x.weights, product(rows, heads, op)?, op, "weights").map(drop)?;
        self.input(x.cache, product(cache_pages, layout.page_bytes(), op)?, op, "cache").map(drop)?;
        // The TMA takes the page as an i32 coordinate; positions are written as i32.
        ensure_shape(cache_pages <= i32::MAX as usize, op, || format!("{cache_pages} cache pages"))?;
        if let Some(pos) = queries.pos.iter().find(|&&p| p >= i32::MAX as u32) {
            return Err(Error::shape(op, format!("position {pos} is 2^31 - 1 or more")));
        }
        // Every position a row reads has a page in the cache (the last one of each page bounds it).
        let cache_rows = product(cache_pages, PAGE, op)?;
        let n_seqs = pages.starts.len().saturating_sub(1);
        let mut last = vec![None::<usize>; n_seqs];
        for (&pos, &seq) in queries.pos.iter().zip(queries.seq) {
            let Some(l) = last.get_mut(seq as usize) else {
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

    /// The tensor map of the cache's key codes: `[cache_pages][64][128]` bytes, page stride
    /// `page_bytes`, loaded a page at a time into the 128-byte swizzle.
    fn key_map(&self, x: &IndexerFp8Input, cache_ptr: u64, op: &'static str) -> Result<TensorMap> {
        // The cache address is a cudarc allocation's (256-byte aligned), the strides are multiples
        // of 16 (dim 128, page_bytes 8448).
        tma::swizzled_u8(
            cache_ptr,
            &[FLASHSEEK_INDEXER_FP8_DIM as u64, PAGE as u64, x.cache_pages as u64],
            &[FLASHSEEK_INDEXER_FP8_DIM as u64, x.layout.page_bytes() as u64],
            &[FLASHSEEK_INDEXER_FP8_DIM, PAGE as u32, 1],
            &format!("{op}: the cache's keys"),
        )
    }

    /// Pages per logits CTA for groups of `total_pages` pages in all.
    fn pages_per_split(&self, total_pages: usize, op: &'static str) -> Result<usize> {
        let sms = self
            .stream
            .context()
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| driver(&format!("{op}: multiprocessor count"), e))?;
        let ctas = WAVES * (sms.max(1) as usize);
        Ok(total_pages.div_ceil(ctas).max(MIN_PAGES_PER_SPLIT))
    }

    /// Queues the logits of the list entries `list` (query rows of `x`, the same entries `p.rows`
    /// addresses on the device) into `p.logits` `[list.len(), p.stride]`, adding their histograms
    /// to `p.hist` `[list.len(), bins]` (zeroed by the caller).
    fn queue_logits(
        &self,
        x: &IndexerFp8Input,
        base: IndexerFp8Params,
        list: &[u32],
        map: &TensorMap,
        op: &'static str,
    ) -> Result<()> {
        let total_pages: usize = list.iter().map(|&i| x.queries.pos[i as usize] as usize / PAGE + 1).sum();
        let per_split = self.pages_per_split(total_pages, op)?;
        let (groups, ctas) = plan_groups(list, x.queries, per_split);
        let blocks = grid(ctas[ctas.len() - 1] as usize, op)?;
        let (groups_dev, ctas_dev) = (self.upload(&groups)?, self.upload(&ctas)?);
        let (groups_ptr, _g) = self.input(&groups_dev, groups.len(), op, "groups")?;
        let (ctas_ptr, _c) = self.input(&ctas_dev, ctas.len(), op, "CTA starts")?;
        let p = IndexerFp8Params {
            groups: groups_ptr as *const u32,
            cta_start: ctas_ptr as *const u32,
            n_rows: to_u32(list.len(), op, "rows")?,
            n_groups: to_u32(groups.len() - 1, op, "groups")?,
            pages_per_split: to_u32(per_split, op, "pages per split")?,
            ..base
        };
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (FLASHSEEK_INDEXER_FP8_THREADS, 1, 1),
            shared_mem_bytes: FLASHSEEK_INDEXER_FP8_LOGITS_SMEM,
        };
        let mut launch = self.stream.launch_builder(&self.kernels.indexer_logits_fp8);
        launch.arg(map).arg(&p);
        // SAFETY: CTA b of group g (groups and CTA starts uploaded above, b below the grid)
        // scores list entries groups[g]..groups[g + 1] (below list.len(), read through p.rows),
        // each a query row i < rows: q codes at (i * heads + h) * 128 + [0, 128), scales and
        // weights at i * heads + h, h < heads (lengths checked); pos and seq of i. It reads pages
        // j < pos / 64 + 1 of the row's sequence through starts and blocks into cache pages below
        // cache_pages (check_fp8_input checked each), by the tensor map over those pages and by a
        // bulk copy of their scales (inside cache_pages * page_bytes). It writes logits at entry
        // * stride + t for t < pages * 64 <= stride and hist at entry * bins + [0, bins), entry
        // < list.len(): both buffers hold list.len() rows (checked by the callers).
        unsafe { launch.launch(cfg) }.map_err(|e| driver(&format!("launching {op}"), e))?;
        Ok(())
    }

    /// Queues the top-k of `n_rows` list entries at `p.rows`; rows with more positions than k
    /// read `p.logits` and `p.hist` rows of `stride` positions.
    fn queue_topk(&self, p: &IndexerFp8Params, n_rows: usize, op: &'static str) -> Result<()> {
        let smem = FLASHSEEK_INDEXER_FP8_TOPK_SMEM + 8 * p.stride.div_ceil(32);
        ensure_shape(smem <= FLASHSEEK_INDEXER_FP8_MAX_SMEM, op, || {
            format!("rows of {} positions exceed the top-k's shared memory", p.stride)
        })?;
        let cfg = LaunchConfig {
            grid_dim: (grid(n_rows, op)?, 1, 1),
            block_dim: (FLASHSEEK_INDEXER_FP8_TOPK_THREADS, 1, 1),
            shared_mem_bytes: smem,
        };
        let mut launch = self.stream.launch_builder(&self.kernels.indexer_topk_fp8);
        launch.arg(p);
        // SAFETY: the callers checked that p.rows holds n_rows entries, each a query row i below
        // the rows of pos and out (out holds rows * k), and that rows of more than k positions
        // have their logits (pos + 1 <= stride values) and histogram at their entry's row of
        // p.logits and p.hist. The shared memory covers bitmaps of stride positions.
        unsafe { launch.launch(cfg) }.map_err(|e| driver(&format!("launching {op}"), e))?;
        Ok(())
    }

    /// The parameters every launch of a call shares.
    fn fp8_params(&self, x: &IndexerFp8Input, ptrs: [u64; 7], k: usize, op: &'static str) -> Result<IndexerFp8Params> {
        let [q, q_scales, weights, cache, blocks, starts, pos] = ptrs;
        Ok(IndexerFp8Params {
            q: q as *const u8,
            q_scales: q_scales as *const f32,
            weights: weights as *const f32,
            cache: cache as *const u8,
            blocks: blocks as *const u32,
            starts: starts as *const u32,
            pos: pos as *const u32,
            seq: std::ptr::null(),
            rows: std::ptr::null(),
            groups: std::ptr::null(),
            cta_start: std::ptr::null(),
            logits: std::ptr::null_mut(),
            hist: std::ptr::null_mut(),
            out: std::ptr::null_mut(),
            n_rows: 0,
            n_groups: 0,
            pages_per_split: 0,
            stride: 0,
            heads: to_u32(x.heads, op, "heads")?,
            k: to_u32(k, op, "k")?,
            weight_scale: x.weight_scale,
        })
    }

    /// The CPU backend's `indexer_topk` on the FP8 cache: into `out` `[rows, k]` each query row's
    /// `k` best positions (ascending, ties to the earlier position, `-1` padding rows with fewer
    /// than `k` positions). Every input is checked before anything is queued.
    pub fn indexer_topk_fp8(&self, x: &IndexerFp8Input, out: &mut CudaSlice<i32>, k: usize) -> Result<()> {
        const OP: &str = "indexer_topk_fp8";
        self.check_fp8_input(x, OP)?;
        let (out_ptr, _out) = self.output(out, product(x.rows, k, OP)?, OP, "out")?;
        if x.rows == 0 || k == 0 {
            return Ok(());
        }
        let scored_row = |i: &usize| x.queries.pos[*i] as usize + 1 > k;
        let scored: Vec<u32> = (0..x.rows).filter(scored_row).map(|i| i as u32).collect();
        let kept: Vec<u32> = (0..x.rows).filter(|i| !scored_row(i)).map(|i| i as u32).collect();
        let stride = scored.iter().map(|&i| (x.queries.pos[i as usize] as usize / PAGE + 1) * PAGE).max().unwrap_or(0);

        let (pos_dev, seq_dev) = (self.upload(x.queries.pos)?, self.upload(x.queries.seq)?);
        let (blocks_dev, starts_dev) = (self.upload(x.pages.blocks)?, self.upload(x.pages.starts)?);
        let (pos_ptr, _pos) = self.input(&pos_dev, x.rows, OP, "positions")?;
        let (seq_ptr, _seq) = self.input(&seq_dev, x.rows, OP, "sequences")?;
        let (blocks_ptr, _blocks) = self.input(&blocks_dev, x.pages.blocks.len(), OP, "blocks")?;
        let (starts_ptr, _starts) = self.input(&starts_dev, x.pages.starts.len(), OP, "starts")?;
        let (q_ptr, _q) = self.input(x.q_codes, 0, OP, "q codes")?;
        let (qs_ptr, _qs) = self.input(x.q_scales, 0, OP, "q scales")?;
        let (w_ptr, _w) = self.input(x.weights, 0, OP, "weights")?;
        let (cache_ptr, _cache) = self.input(x.cache, 0, OP, "cache")?;
        let base = IndexerFp8Params {
            seq: seq_ptr as *const u32,
            out: out_ptr as *mut i32,
            ..self.fp8_params(x, [q_ptr, qs_ptr, w_ptr, cache_ptr, blocks_ptr, starts_ptr, pos_ptr], k, OP)?
        };

        if !kept.is_empty() {
            let kept_dev = self.upload(&kept)?;
            let (kept_ptr, _kept) = self.input(&kept_dev, kept.len(), OP, "rows")?;
            // These rows have pos + 1 <= k: the kernel reads no logits (null here).
            let p = IndexerFp8Params { rows: kept_ptr as *const u32, n_rows: to_u32(kept.len(), OP, "rows")?, ..base };
            self.queue_topk(&p, kept.len(), OP)?;
        }
        if scored.is_empty() {
            return Ok(());
        }
        let map = self.key_map(x, cache_ptr, OP)?;
        // Whole groups per chunk: at least one group of GROUP_ROWS rows however long the rows.
        // Whole pairs of rows per chunk (a pair of one sequence shares its CTAs), at least one.
        let chunk = (WORKSPACE / stride / GROUP_ROWS * GROUP_ROWS).max(GROUP_ROWS).min(scored.len());
        let mut logits = self.zeros::<f32>(product(chunk, stride, OP)?)?;
        let mut hist = self.zeros::<u32>(product(chunk, FLASHSEEK_INDEXER_FP8_BINS as usize, OP)?)?;
        let list_dev = self.upload(&scored)?;
        let (list_ptr, _list) = self.input(&list_dev, scored.len(), OP, "rows")?;
        for (c, list) in scored.chunks(chunk).enumerate() {
            let n_hist = list.len() * FLASHSEEK_INDEXER_FP8_BINS as usize;
            self.stream.memset_zeros(&mut hist.slice_mut(..n_hist)).map_err(|e| driver(OP, e))?;
            let (logits_ptr, _l) = self.output(&mut logits, list.len() * stride, OP, "workspace")?;
            let (hist_ptr, _h) = self.output(&mut hist, n_hist, OP, "histograms")?;
            let p = IndexerFp8Params {
                rows: (list_ptr + (c * chunk * std::mem::size_of::<u32>()) as u64) as *const u32,
                logits: logits_ptr as *mut f32,
                hist: hist_ptr as *mut u32,
                stride: to_u32(stride, OP, "context")?,
                n_rows: to_u32(list.len(), OP, "rows")?,
                ..base
            };
            self.queue_logits(x, p, list, &map, OP)?;
            self.queue_topk(&p, list.len(), OP)?;
        }
        Ok(())
    }
    /// The logits step alone: every query row's scores into `logits` `[rows, stride]` (`t <=
    /// pos` scored, `-inf` for the other positions of the pages read, the rest untouched) and
    /// their histograms into `hist` `[rows, FLASHSEEK_INDEXER_FP8_BINS]`; returns the stride, the
    /// longest row's positions rounded up to whole pages. For tests and benches: the buffers must
    /// hold every row at once.
    pub fn indexer_logits_fp8(
        &self,
        x: &IndexerFp8Input,
        logits: &mut CudaSlice<f32>,
        hist: &mut CudaSlice<u32>,
    ) -> Result<usize> {
        const OP: &str = "indexer_logits_fp8";
        self.check_fp8_input(x, OP)?;
        if x.rows == 0 {
            return Ok(0);
        }
        let stride = x.queries.pos.iter().map(|&p| (p as usize / PAGE + 1) * PAGE).max().unwrap_or(0);
        let n_hist = product(x.rows, FLASHSEEK_INDEXER_FP8_BINS as usize, OP)?;
        let (logits_ptr, _l) = self.output(logits, product(x.rows, stride, OP)?, OP, "logits")?;
        self.check_device(hist, OP)?;
        ensure_shape(hist.len() >= n_hist, OP, || format!("hist holds {} values, needs {n_hist}", hist.len()))?;
        self.stream.memset_zeros(&mut hist.slice_mut(..n_hist)).map_err(|e| driver(OP, e))?;
        let (hist_ptr, _h) = self.output(hist, n_hist, OP, "hist")?;
        let list: Vec<u32> = (0..to_u32(x.rows, OP, "rows")?).collect();
        let (list_dev, pos_dev, seq_dev) =
            (self.upload(&list)?, self.upload(x.queries.pos)?, self.upload(x.queries.seq)?);
        let (blocks_dev, starts_dev) = (self.upload(x.pages.blocks)?, self.upload(x.pages.starts)?);
        let (list_ptr, _list) = self.input(&list_dev, x.rows, OP, "rows")?;
        let (pos_ptr, _pos) = self.input(&pos_dev, x.rows, OP, "positions")?;
        let (seq_ptr, _seq) = self.input(&seq_dev, x.rows, OP, "sequences")?;
        let (blocks_ptr, _blocks) = self.input(&blocks_dev, x.pages.blocks.len(), OP, "blocks")?;
        let (starts_ptr, _starts) = self.input(&starts_dev, x.pages.starts.len(), OP, "starts")?;
        let (q_ptr, _q) = self.input(x.q_codes, 0, OP, "q codes")?;
        let (qs_ptr, _qs) = self.input(x.q_scales, 0, OP, "q scales")?;
        let (w_ptr, _w) = self.input(x.weights, 0, OP, "weights")?;
        let (cache_ptr, _cache) = self.input(x.cache, 0, OP, "cache")?;
        let map = self.key_map(x, cache_ptr, OP)?;
        let p = IndexerFp8Params {
            seq: seq_ptr as *const u32,
            rows: list_ptr as *const u32,
            logits: logits_ptr as *mut f32,
            hist: hist_ptr as *mut u32,
            stride: to_u32(stride, OP, "context")?,
            ..self.fp8_params(x, [q_ptr, qs_ptr, w_ptr, cache_ptr, blocks_ptr, starts_ptr, pos_ptr], 0, OP)?
        };
        self.queue_logits(x, p, &list, &map, OP)?;
        Ok(stride)
    }

    /// The top-k step alone, over logits and histograms as [`CudaDevice::indexer_logits_fp8`]
    /// writes them: row `i` (at position `pos[i]`, its scores `logits[i * stride..][..=pos[i]]`)
    /// gets its `k` best positions in `out` `[rows, k]`.
    pub fn indexer_select_fp8(
        &self,
        logits: &CudaSlice<f32>,
        hist: &CudaSlice<u32>,
        stride: usize,
        pos: &[u32],
        out: &mut CudaSlice<i32>,
        k: usize,
    ) -> Result<()> {
        const OP: &str = "indexer_select_fp8";
        let rows = pos.len();
        if let Some(p) = pos.iter().find(|&&p| p as usize >= stride.min(i32::MAX as usize)) {
            return Err(Error::shape(OP, format!("position {p} outside rows of {stride} logits")));
        }
        let (logits_ptr, _l) = self.input(logits, product(rows, stride, OP)?, OP, "logits")?;
        let (hist_ptr, _h) = self.input(hist, product(rows, FLASHSEEK_INDEXER_FP8_BINS as usize, OP)?, OP, "hist")?;
        let (out_ptr, _out) = self.output(out, product(rows, k, OP)?, OP, "out")?;
        if rows == 0 || k == 0 {
            return Ok(());
        }
        let list: Vec<u32> = (0..to_u32(rows, OP, "rows")?).collect();
        let (list_dev, pos_dev) = (self.upload(&list)?, self.upload(pos)?);
        let (list_ptr, _list) = self.input(&list_dev, rows, OP, "rows")?;
        let (pos_ptr, _pos) = self.input(&pos_dev, rows, OP, "positions")?;
        let p = IndexerFp8Params {
            q: std::ptr::null(),
            q_scales: std::ptr::null(),
            weights: std::ptr::null(),
            cache: std::ptr::null(),
            blocks: std::ptr::null(),
            starts: std::ptr::null(),
            pos: pos_ptr as *const u32,
            seq: std::ptr::null(),
            rows: list_ptr as *const u32,
            groups: std::ptr::null(),
            cta_start: std::ptr::null(),
            logits: logits_ptr as *mut f32,
            hist: hist_ptr as *mut u32,
            out: out_ptr as *mut i32,
            n_rows: to_u32(rows, OP, "rows")?,
            n_groups: 0,
            pages_per_split: 0,
            stride: to_u32(stride, OP, "context")?,
            heads: 0,
            k: to_u32(k, OP, "k")?,
            weight_scale: 0.0,
        };
        self.queue_topk(&p, rows, OP)
    }
}
