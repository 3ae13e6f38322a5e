//! The Hopper MLA decode over the FP8 latent cache or the bf16 cache
//! (`csrc/sm90/mla/decode_fast.cu`): bf16 wgmma for Q·Kᵀ and P·V with the latent dequantized
//! (FP8) or copied (bf16) to shared memory, split-KV over a host plan (`backend::decode_plan`),
//! and a combine kernel for the rows the plan splits. One kernel body; the two formats differ
//! only in the loading warpgroup.
//!
//! DeepSeek-V3.2's latent only (kv_lora 512, RoPE 64: `LatentFp8 { nope: 512, rope: 64 }`, or
//! bf16 rows of 576); other dims are an error here, and the caller falls back to the simple
//! kernel. Any number of
//! heads (64 per CTA; a last partial group computes zeros for the missing heads). Host metadata
//! is checked as the simple decode checks it, then uploaded: a bad index is an error, never a
//! device read out of place.

use cudarc::driver::{CudaFunction, CudaSlice};

use super::params::{
    MlaDecodeFp8Params, FLASHSEEK_MLA_COMBINE_THREADS, FLASHSEEK_MLA_FP8_HEADS, FLASHSEEK_MLA_FP8_SMEM,
    FLASHSEEK_MLA_FP8_THREADS, FLASHSEEK_MLA_FP8_TILE, FLASHSEEK_MLA_MAX_SPLITS,
};
use super::{grid, product, to_u32, CudaDevice};
use crate::backend::decode_plan::decode_plan;
use crate::backend::{MlaDims, Pages, Queries};
use crate::error::{ensure_shape, Result};
use crate::kv_layout::LatentFp8;

/// The only latent the kernel takes: DeepSeek-V3.2's.
const KV_LORA: usize = 512;
const ROPE: usize = 64;

/// The cache the kernel reads: FP8 latent tokens, or bf16 rows of KV_LORA + ROPE.
#[derive(Clone, Copy)]
enum FastCache<'a> {
    Fp8(&'a CudaSlice<u8>, LatentFp8),
    Bf16(&'a CudaSlice<u8>, usize),
}

/// CTAs one wave holds: an H100's or H200's 132 SMs, one CTA each (227 KB of shared memory).
const WAVE: usize = 132;

impl CudaDevice {
    /// Whether [`CudaDevice::mla_decode_fp8`] takes these shapes: DeepSeek-V3.2's latent (512 +
    /// 64) in the FP8 layout. Others go to the simple kernel.
    pub fn mla_decode_fp8_supports(latent: LatentFp8, dims: MlaDims) -> bool {
        dims.kv_lora == KV_LORA && dims.rope == ROPE && latent == LatentFp8 { nope: KV_LORA, rope: ROPE }
    }

    /// The CPU's `mla_decode` over the FP8 latent cache: absorbed queries `q_lat` (`rows` rows
    /// of `heads · 576`) over `cache`, `slots` tokens of `latent`'s layout (656 bytes). Query row
    /// `i` at `queries.pos[i]` of sequence `queries.seq[i]` attends to positions `0..=pos`, or
    /// with `topk` (a buffer of `rows` rows and its width) to the entries `t` of its top-k row
    /// with `0 <= t <= pos` (duplicates count again, -1 is none). Writes per head the
    /// softmax-weighted latent, `out` rows of `heads · 512`; zeros for a row without keys.
    ///
    /// Numerics: the query and the softmax weights rounded to bf16 (the keys are exact in
    /// bf16), f32 accumulation and softmax; `tests/mla_bound` bounds the error. Every position
    /// `0..=pos` must have a cache slot. Refuses dims other than kv_lora 512 and RoPE 64.
    /// Allocates its plan and split workspace for the call.
    #[allow(clippy::too_many_arguments)]
    pub fn mla_decode_fp8(
        &self,
        q_lat: &CudaSlice<f32>,
        rows: usize,
        cache: &CudaSlice<u8>,
        latent: LatentFp8,
        slots: usize,
        queries: Queries,
        pages: Pages,
        topk: Option<(&CudaSlice<i32>, usize)>,
        scale: f32,
        dims: MlaDims,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let cache = FastCache::Fp8(cache, latent);
        self.mla_decode_fast(q_lat, rows, cache, slots, queries, pages, topk, scale, dims, out)
    }

    /// Whether [`CudaDevice::mla_decode_bf16`] takes these shapes: DeepSeek-V3.2's latent (512 +
    /// 64) in bf16 rows of 576. Others go to the simple kernel.
    pub fn mla_decode_bf16_supports(cols: usize, dims: MlaDims) -> bool {
        dims.kv_lora == KV_LORA && dims.rope == ROPE && cols == KV_LORA + ROPE
    }

    /// [`CudaDevice::mla_decode_fp8`] over the bf16 cache: `cache` holds `slots` rows of `cols`
    /// bf16 values (little-endian, 2 bytes each; `cols` must be 576). The same numerics, with the
    /// keys exact as stored.
    #[allow(clippy::too_many_arguments)]
    pub fn mla_decode_bf16(
        &self,
        q_lat: &CudaSlice<f32>,
        rows: usize,
        cache: &CudaSlice<u8>,
        cols: usize,
        slots: usize,
        queries: Queries,
        pages: Pages,
        topk: Option<(&CudaSlice<i32>, usize)>,
        scale: f32,
        dims: MlaDims,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let cache = FastCache::Bf16(cache, cols);
        self.mla_decode_fast(q_lat, rows, cache, slots, queries, pages, topk, scale, dims, out)
    }

    /// The body of both: checks, plan, uploads, the decode kernel of the cache's format and the
    /// combine.
    #[allow(clippy::too_many_arguments)]
    fn mla_decode_fast(
        &self,
        q_lat: &CudaSlice<f32>,
        rows: usize,
        cache: FastCache,
        slots: usize,
        queries: Queries,
        pages: Pages,
        topk: Option<(&CudaSlice<i32>, usize)>,
        scale: f32,
        dims: MlaDims,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let d = dims;
        let (op, kernel, bytes, row_bytes): (&'static str, &CudaFunction, _, _) = match cache {
            FastCache::Fp8(bytes, latent) => {
                const OP: &str = "mla_decode_fp8";
                ensure_shape(Self::mla_decode_fp8_supports(latent, d), OP, || {
                    format!("dims {d:?}, cache {latent:?}: the FP8 kernel takes DeepSeek-V3.2's latent (512 + 64) only")
                })?;
                (OP, &self.kernels.mla_decode_fp8, bytes, latent.token_bytes())
            }
            FastCache::Bf16(bytes, cols) => {
                const OP: &str = "mla_decode_bf16";
                ensure_shape(Self::mla_decode_bf16_supports(cols, d), OP, || {
                    format!("dims {d:?}, bf16 rows of {cols}: the kernel takes DeepSeek-V3.2's latent (512 + 64) only")
                })?;
                (OP, &self.kernels.mla_decode_bf16, bytes, 2 * cols)
            }
        };
        ensure_shape(queries.pos.len() == rows && queries.seq.len() == rows && pages.block_size > 0, op, || {
            format!("{rows} rows, {} positions, {} sequences", queries.pos.len(), queries.seq.len())
        })?;
        let lat = d.latent();
        let heads = to_u32(d.heads, op, "heads")?;
        let (q_ptr, _q) = self.input(q_lat, product(rows, product(d.heads, lat, op)?, op)?, op, "q_lat")?;
        let (cache_ptr, _cache) = self.input(bytes, product(slots, row_bytes, op)?, op, "cache")?;
        let (out_ptr, _out) = self.output(out, product(rows, product(d.heads, KV_LORA, op)?, op)?, op, "out")?;
        let (topk_ptr, _topk, topk_cols) = match topk {
            Some((t, k)) => {
                let (ptr, guard) = self.input(t, product(rows, k, op)?, op, "topk")?;
                (ptr, Some(guard), to_u32(k, op, "top-k width")?)
            }
            None => (0, None, 0),
        };
        for (&pos, &seq) in queries.pos.iter().zip(queries.seq) {
            pages.check_context(seq as usize, pos as usize, slots)?;
        }
        let keys: Vec<usize> = match topk {
            Some((_, k)) => vec![k; rows],
            None => queries.pos.iter().map(|&p| p as usize + 1).collect(),
        };
        for &k in &keys {
            to_u32(k, op, "keys of a row")?;
        }
        to_u32(rows, op, "rows")?;
        let groups = d.heads.div_ceil(FLASHSEEK_MLA_FP8_HEADS as usize);
        let plan = decode_plan(&keys, FLASHSEEK_MLA_FP8_TILE as usize, groups, WAVE, FLASHSEEK_MLA_MAX_SPLITS as usize);
        let n_ctas = grid(product(plan.items.len(), groups, op)?, op)?;
        let merge_blocks = grid(product(plan.merges.len(), d.heads, op)?, op)?;
        if n_ctas == 0 {
            return Ok(());
        }
        let meta_dev = self.upload_decode_meta(queries, pages)?;
        let (meta_ptr, _meta) = self.input(&meta_dev, meta_dev.len(), op, "metadata")?;
        let words = plan.words();
        let items_dev = self.upload(&words)?;
        let (items_ptr, _items) = self.input(&items_dev, words.len(), op, "work items")?;
        // One u32 where no row is split: the driver allocates nothing of 0 bytes.
        let merge_words = plan.merge_words();
        let merges_dev = self.upload(if merge_words.is_empty() { &[0] } else { &merge_words[..] })?;
        let (merges_ptr, _merges) = self.input(&merges_dev, merge_words.len(), op, "merges")?;
        // The split items' partials, one slot per (split item, head).
        let slots_heads = product(plan.parts, d.heads, op)?;
        let mut part_acc = self.zeros::<f32>(product(slots_heads, KV_LORA, op)?.max(1))?;
        let mut part_stat = self.zeros::<f32>(product(slots_heads, 3, op)?.max(1))?;
        let (acc_ptr, _acc) = self.output(&mut part_acc, slots_heads * KV_LORA, op, "workspace")?;
        let (stat_ptr, _stat) = self.output(&mut part_stat, slots_heads * 3, op, "workspace")?;
        let p = MlaDecodeFp8Params {
            q: q_ptr as *const f32,
            cache: cache_ptr as *const u8,
            meta: meta_ptr as *const u32,
            items: items_ptr as *const u32,
            merges: merges_ptr as *const u32,
            topk: topk_ptr as *const i32,
            out: out_ptr as *mut f32,
            part_acc: acc_ptr as *mut f32,
            part_stat: stat_ptr as *mut f32,
            slots: slots as u64,
            // Checked to fit a u32 above.
            rows: rows as u32,
            heads,
            block_size: to_u32(pages.block_size, op, "block size")?,
            n_starts: to_u32(pages.starts.len(), op, "block table starts")?,
            n_blocks: to_u32(pages.blocks.len(), op, "block table")?,
            topk_cols,
            // Both at most their grids, below 2^31.
            n_items: plan.items.len() as u32,
            n_merges: plan.merges.len() as u32,
            scale,
        };
        // SAFETY: CTA (item, group) reads q_lat row `row` (rows · heads · 576 values, checked),
        // top-k row `row` (rows · topk_cols, checked), the uploaded metadata and items at their
        // layout's offsets (every item's row below rows and keys within the row's count, by
        // construction of the plan), and tokens of slots its checks keep below `slots` (slots ·
        // row_bytes bytes, checked; 16-byte loads: rows of 656 or 1152 bytes from an allocation's
        // start stay 16-byte aligned); it writes out's row (rows · heads · 512, checked) or its
        // workspace slot's (slot < parts: parts · heads · 512 and · 3 values allocated above).
        // The combine reads the slots of each merge (first + count <= parts) and writes out's
        // row alike. Both decode kernels' shared memory limits were raised to
        // FLASHSEEK_MLA_FP8_SMEM at load. cudarc frees the uploads and workspaces on the stream, after the kernels.
        unsafe { self.launch_smem(kernel, op, n_ctas, FLASHSEEK_MLA_FP8_THREADS, FLASHSEEK_MLA_FP8_SMEM, &p) }?;
        if merge_blocks > 0 {
            // SAFETY: as above.
            unsafe {
                self.launch(&self.kernels.mla_decode_fp8_combine, op, merge_blocks, FLASHSEEK_MLA_COMBINE_THREADS, &p)
            }?;
        }
        Ok(())
    }
}
