//! The kernel interface: one method per kernel family, implemented by every backend with the
//! same numerics (DESIGN.md, "Numerics"). The model is written once against this trait.
//!
//! Host-side metadata (positions, cache slots, page tables) is passed as plain slices; a device
//! backend uploads what it needs. Activations, cache pages and weights live in the backend's
//! own storage types.

mod check;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod decode_plan;
pub mod device;

use crate::error::{Error, Result};
use crate::fp8::ScaleFmt;
use crate::kv_layout::{IndexFp8, LatentFp8, PAGE};
use crate::model::weights::{HostLinear, HostTensor};
use crate::tensor::{CacheTensor, IntTensor, Tensor};

pub use cpu::CpuBackend;

/// Shapes of multi-head latent attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MlaDims {
    pub heads: usize,
    pub nope: usize,
    pub rope: usize,
    pub v: usize,
    pub kv_lora: usize,
}

impl MlaDims {
    /// Columns of one head of the query: no-position part, then rotary part.
    pub fn qk(&self) -> usize {
        self.nope + self.rope
    }

    /// Columns of one cached token: the latent, then the shared rotary key.
    pub fn latent(&self) -> usize {
        self.kv_lora + self.rope
    }
}

/// Where rotary dims sit in a row: `n_heads` heads of `stride` columns, each with `dim` rotary
/// columns starting at `offset` within the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadCols {
    pub n_heads: usize,
    pub stride: usize,
    pub offset: usize,
    pub dim: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// Pairs `(x0, x1), (x2, x3), …` rotate together (DeepSeek's MLA).
    Interleaved,
    /// `x[i]` rotates with `x[i + dim/2]` (the V3.2 indexer).
    HalfSplit,
}

/// The paged KV cache's block tables: sequence `s` owns the blocks
/// `blocks[starts[s]..starts[s + 1]]`, each holding `block_size` consecutive positions.
#[derive(Debug, Clone, Copy)]
pub struct Pages<'a> {
    pub block_size: usize,
    pub blocks: &'a [u32],
    pub starts: &'a [u32],
}

impl Pages<'_> {
    /// Cache row of position `pos` of sequence `seq`; `None` where the table does not reach.
    #[inline]
    pub fn slot(&self, seq: usize, pos: usize) -> Option<usize> {
        let b = pos.checked_div(self.block_size)?;
        let start = *self.starts.get(seq)? as usize;
        let end = *self.starts.get(seq + 1)? as usize;
        let b = start + b;
        let block = *self.blocks.get(b).filter(|_| b < end)? as usize;
        Some(block * self.block_size + pos % self.block_size)
    }

    /// Like [`Pages::slot`], for a cache of `rows` rows; a position without a page is an error.
    pub fn cache_row(&self, seq: usize, pos: usize, rows: usize) -> Result<usize> {
        self.slot(seq, pos)
            .filter(|&s| s < rows)
            .ok_or_else(|| Error::Input(format!("position {pos} of sequence {seq} has no cache page")))
    }

    /// [`Pages::cache_row`] of every position `0..=pos` of sequence `seq`, checked page by page:
    /// a page's positions are consecutive cache rows, so the last one read bounds them all. Device
    /// backends check a step's contexts with it before reading the cache through the tables.
    pub fn check_context(&self, seq: usize, pos: usize, rows: usize) -> Result<()> {
        let bs = self.block_size;
        if bs == 0 {
            return Err(Error::Input("cache pages of 0 positions".into()));
        }
        for page in 0..=pos / bs {
            self.cache_row(seq, (page * bs + bs - 1).min(pos), rows)?;
        }
        Ok(())
    }
}

/// How a paged cache holds its rows (`--kv-cache-dtype`). Every kernel that reads a cache
/// decodes its rows to f32 values, so the formats differ only in what they store:
/// - `F32`: the values as given (`auto`);
/// - `Bf16`: the values rounded to bf16 (to nearest even), 2 bytes each, row after row;
/// - `Fp8Latent`: the MLA latent in FlashMLA's DeepSeek-V3.2 layout ([`LatentFp8`]): the
///   `kv_lora_rank` part as e4m3 with one power-of-two scale per 128, the rope key in bf16;
/// - `Fp8Index`: the indexer keys as e4m3 with one scale per 128 of the model's indexer scale
///   format, page by page ([`IndexFp8`]).
///
/// `kv_store` quantizes into the FP8 formats; `kv_gather`, `mla_decode` and `indexer_topk` decode
/// on the fly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheFormat {
    F32 { cols: usize },
    Bf16 { cols: usize },
    Fp8Latent(LatentFp8),
    Fp8Index(IndexFp8),
}

impl CacheFormat {
    /// Values of one row, decoded.
    pub fn cols(&self) -> usize {
        match self {
            CacheFormat::F32 { cols } | CacheFormat::Bf16 { cols } => *cols,
            CacheFormat::Fp8Latent(l) => l.nope + l.rope,
            CacheFormat::Fp8Index(ix) => ix.dim,
        }
    }

    /// Bytes one row takes (an index page's bytes divide evenly among its rows).
    pub fn row_bytes(&self) -> usize {
        match self {
            CacheFormat::F32 { cols } => 4 * cols,
            CacheFormat::Bf16 { cols } => 2 * cols,
            CacheFormat::Fp8Latent(l) => l.token_bytes(),
            CacheFormat::Fp8Index(ix) => ix.page_bytes() / PAGE,
        }
    }

    /// Whether `kv_store` rounds values through FP8 (so the model need not round them first).
    pub fn is_fp8(&self) -> bool {
        matches!(self, CacheFormat::Fp8Latent(_) | CacheFormat::Fp8Index(_))
    }

    /// Bytes of a cache of `rows` rows; an index cache holds whole pages.
    pub fn bytes(&self, rows: usize) -> Result<usize> {
        if matches!(self, CacheFormat::Fp8Index(_)) && rows % PAGE != 0 {
            return Err(Error::Input(format!("an FP8 index cache holds whole pages of {PAGE} rows, not {rows}")));
        }
        rows.checked_mul(self.row_bytes()).ok_or_else(|| Error::Input(format!("a cache of {rows} rows is too large")))
    }
}

/// Query rows of one step: row `i` belongs to sequence `seq[i]` and sits at position `pos[i]`,
/// so it attends to positions `0..=pos[i]` of that sequence.
#[derive(Debug, Clone, Copy)]
pub struct Queries<'a> {
    pub pos: &'a [u32],
    pub seq: &'a [u32],
}

/// One sequence of a prefill attention call: query rows `q_start..q_start + q_len` at positions
/// `start_pos..`, attending over expanded keys/values in rows `kv_start..kv_start + start_pos +
/// q_len` (its whole context, position 0 first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefillSeq {
    pub q_start: usize,
    pub q_len: usize,
    pub kv_start: usize,
    pub start_pos: usize,
}

/// Parameters of the `noaux_tc` router.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouterParams {
    pub n_group: usize,
    pub topk_group: usize,
    pub top_k: usize,
    pub norm_topk_prob: bool,
    pub scaling: f32,
}

/// One routed expert's projections, as the checkpoint stores them.
pub struct HostExpert {
    pub gate: HostLinear,
    pub up: HostLinear,
    pub down: HostLinear,
}

pub trait Backend: Sized + Send + Sync + 'static {
    /// Activation storage (f32 values).
    type Buf: Send + Sync;
    /// Integer storage.
    type Ints: Send + Sync;
    /// A paged cache's storage, in its [`CacheFormat`].
    type Cache: Send + Sync;
    /// A projection weight `[out, in]` in the format the checkpoint holds it.
    type Linear: Send + Sync;
    /// The routed experts of one MoE layer.
    type Experts: Send + Sync;

    fn name(&self) -> &'static str;

    /// Runs `step`, a sequence of kernel calls, where this backend's kernels run best.
    fn run_step<R: Send>(&self, step: impl FnOnce() -> R + Send) -> R;

    // ---- memory ----
    /// Bytes this backend's storage can still take (host RAM or device memory), for sizing the
    /// KV pool from `--mem-fraction-static`.
    fn free_memory(&self) -> Result<usize>;
    fn zeros(&self, rows: usize, cols: usize) -> Result<Tensor<Self>>;
    /// Reshapes `t`, reusing its storage where it is large enough; contents are unspecified.
    fn resize(&self, t: &mut Tensor<Self>, rows: usize, cols: usize) -> Result<()>;
    /// Overwrites `t` with `data` (row-major, `rows * cols` values).
    fn write(&self, t: &mut Tensor<Self>, data: &[f32]) -> Result<()>;
    fn read(&self, t: &Tensor<Self>) -> Result<Vec<f32>>;
    /// Like [`Backend::read`], into a buffer the caller reuses from step to step.
    fn read_into(&self, t: &Tensor<Self>, out: &mut Vec<f32>) -> Result<()>;
    fn int_zeros(&self, rows: usize, cols: usize) -> Result<IntTensor<Self>>;
    fn resize_ints(&self, t: &mut IntTensor<Self>, rows: usize, cols: usize) -> Result<()>;
    /// Copies rows `src_row..src_row + n` of `src` to rows `dst_row..` of `dst` (same width).
    fn copy_rows(
        &self,
        src: &Tensor<Self>,
        src_row: usize,
        dst: &mut Tensor<Self>,
        dst_row: usize,
        n: usize,
    ) -> Result<()>;

    // ---- weights ----
    fn load_linear(&self, w: &HostLinear) -> Result<Self::Linear>;
    /// A 1-D weight (norm scales, biases) as a `[1, n]` tensor.
    fn load_vector(&self, v: &HostTensor) -> Result<Tensor<Self>>;
    fn load_experts(&self, experts: &[HostExpert]) -> Result<Self::Experts>;

    // ---- GEMM: FP8 block-scaled and plain ----
    /// `out = x · wᵀ`. Where `w` is FP8 and `quant` is set, `x` is first quantized to e4m3 in
    /// 1x128 groups with scales of that format (DeepSeek's `act_quant`).
    fn linear(&self, x: &Tensor<Self>, w: &Self::Linear, quant: Option<ScaleFmt>, out: &mut Tensor<Self>)
        -> Result<()>;
    /// Rows `ids` of the `[vocab, hidden]` table.
    fn embedding(&self, table: &Self::Linear, ids: &[u32], out: &mut Tensor<Self>) -> Result<()>;

    // ---- grouped MoE ----
    /// `route` picks `idx.cols()` experts per row of `logits` (router logits, f32) with DeepSeek's
    /// group-limited sigmoid router and writes their weights.
    fn route(
        &self,
        logits: &Tensor<Self>,
        bias: &Tensor<Self>,
        params: RouterParams,
        idx: &mut IntTensor<Self>,
        weights: &mut Tensor<Self>,
    ) -> Result<()>;
    /// `out[t] = Σ_j weights[t, j] · expert_{idx[t, j]}(x[t])` with SiLU-gated experts.
    fn moe_experts(
        &self,
        x: &Tensor<Self>,
        experts: &Self::Experts,
        idx: &IntTensor<Self>,
        weights: &Tensor<Self>,
        quant: Option<ScaleFmt>,
        out: &mut Tensor<Self>,
    ) -> Result<()>;

    // ---- norms ----
    /// RMSNorm of columns `col0..col0 + w.cols()` of `x` into `out`.
    fn rms_norm(&self, x: &Tensor<Self>, col0: usize, w: &Tensor<Self>, eps: f32, out: &mut Tensor<Self>)
        -> Result<()>;
    /// `residual += delta; out = rms_norm(residual)`.
    fn add_rms_norm(
        &self,
        residual: &mut Tensor<Self>,
        delta: &Tensor<Self>,
        w: &Tensor<Self>,
        eps: f32,
        out: &mut Tensor<Self>,
    ) -> Result<()>;
    /// LayerNorm over rows, in place.
    fn layer_norm(&self, x: &mut Tensor<Self>, w: &Tensor<Self>, b: &Tensor<Self>, eps: f32) -> Result<()>;

    // ---- rotary embedding ----
    /// Rotates the rotary columns of every row by its position's angles: `cos_sin` row `i`
    /// holds `dim/2` cosines then `dim/2` sines for row `i` of `x`.
    fn rope(&self, x: &mut Tensor<Self>, heads: HeadCols, cos_sin: &Tensor<Self>, layout: RopeLayout) -> Result<()>;

    // ---- small ops ----
    /// `gate = silu(gate) * up`.
    fn silu_mul(&self, gate: &mut Tensor<Self>, up: &Tensor<Self>) -> Result<()>;
    fn add_assign(&self, acc: &mut Tensor<Self>, x: &Tensor<Self>) -> Result<()>;
    /// Rounds `x` through e4m3 in place: each row is cut into `segment`-wide pieces, each
    /// grouped in 128s from its left with one scale per group.
    fn fp8_round(&self, x: &mut Tensor<Self>, segment: usize, fmt: ScaleFmt) -> Result<()>;
    /// The normalized Walsh-Hadamard transform `H_dim / sqrt(dim)` of every `dim`-wide segment.
    fn hadamard(&self, x: &mut Tensor<Self>, dim: usize) -> Result<()>;
    /// The index of each row's largest value (the first on ties).
    fn argmax(&self, logits: &Tensor<Self>) -> Result<Vec<u32>>;

    // ---- paged KV cache ----
    /// A cache of `rows` rows in `format`, zeroed.
    fn cache_zeros(&self, format: CacheFormat, rows: usize) -> Result<CacheTensor<Self>>;
    /// The cache's bytes as stored ([`CacheFormat::bytes`]; an F32 cache's values little-endian).
    fn cache_read(&self, cache: &CacheTensor<Self>) -> Result<Vec<u8>>;
    /// Overwrites the cache with `bytes`, laid out as [`Backend::cache_read`] returns them.
    fn cache_write(&self, cache: &mut CacheTensor<Self>, bytes: &[u8]) -> Result<()>;
    /// Writes cache row `slots[i]` from row `i` of the sources: all of `head`'s columns, then,
    /// where `head` is narrower than the cache row, the rest from columns `col..` of `tail`
    /// (`tail = (tensor, col)`): the latent and the rope key of one token from two tensors. An
    /// FP8 cache quantizes here (its `head` is exactly the quantized part: the latent's
    /// `kv_lora_rank` columns, or the whole index key). A slot given twice holds its last row.
    fn kv_store(
        &self,
        cache: &mut CacheTensor<Self>,
        slots: &[u32],
        head: &Tensor<Self>,
        tail: Option<(&Tensor<Self>, usize)>,
    ) -> Result<()>;
    /// Row `i` of `dst` = columns `col..col + dst.cols()` of cache row `slots[i]`, decoded.
    fn kv_gather(&self, cache: &CacheTensor<Self>, slots: &[u32], col: usize, dst: &mut Tensor<Self>) -> Result<()>;

    // ---- MLA ----
    /// Absorbs `kv_b`'s key half into the queries of the first `out.rows()` rows of `q`:
    /// per head, `[W_kᵀ q_nope, q_rope]`, a query against the cached latent directly.
    fn absorb_q(&self, q: &Tensor<Self>, kv_b: &Self::Linear, dims: MlaDims, out: &mut Tensor<Self>) -> Result<()>;
    /// Attention of absorbed queries over the paged latent cache. Query row `i` attends to its
    /// sequence's positions `0..=pos[i]`, or only to those in `topk` row `i` (-1 = none) when
    /// given. Writes the attention-weighted latent per head. The cache is `F32` of
    /// `kv_lora + rope` columns or `Fp8Latent` of those widths.
    fn mla_decode(
        &self,
        q_lat: &Tensor<Self>,
        cache: &CacheTensor<Self>,
        queries: Queries,
        pages: Pages,
        topk: Option<&IntTensor<Self>>,
        scale: f32,
        dims: MlaDims,
        out: &mut Tensor<Self>,
    ) -> Result<()>;
    /// Maps per-head attention-weighted latents through `kv_b`'s value half.
    fn absorb_out(
        &self,
        o_lat: &Tensor<Self>,
        kv_b: &Self::Linear,
        dims: MlaDims,
        out: &mut Tensor<Self>,
    ) -> Result<()>;
    /// Causal attention over expanded keys/values (`kv` = per head `[k_nope, v]`, `kpe` = the
    /// shared rotary key). With `topk`, query row `r` attends only to the positions in
    /// `topk` row `r`. `seqs` are ordered by `q_start` and do not overlap; only their rows of
    /// `out` are written.
    fn mla_prefill(
        &self,
        q: &Tensor<Self>,
        kv: &Tensor<Self>,
        kpe: &Tensor<Self>,
        seqs: &[PrefillSeq],
        topk: Option<&IntTensor<Self>>,
        scale: f32,
        dims: MlaDims,
        out: &mut Tensor<Self>,
    ) -> Result<()>;

    // ---- lightning indexer ----
    /// For every query row: `score(t) = Σ_h w[h]·weight_scale · ReLU(q_h · k_t)` over the cached
    /// index keys of positions `0..=pos`, and the `out.cols()` best positions (ascending; -1
    /// pads rows with fewer candidates). Ties go to the earlier position. The cache is `F32` or
    /// `Fp8Index` of the key width.
    fn indexer_topk(
        &self,
        q: &Tensor<Self>,
        weights: &Tensor<Self>,
        weight_scale: f32,
        cache: &CacheTensor<Self>,
        queries: Queries,
        pages: Pages,
        out: &mut IntTensor<Self>,
    ) -> Result<()>;
}

#[cfg(test)]
mod tests {
    use super::Pages;

    /// Page by page agrees with position by position, for random tables.
    #[test]
    fn check_context_is_cache_row_for_every_position() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n) as usize
        };
        for _ in 0..2000 {
            let bs = 1 + next(6);
            let n_blocks = next(8);
            let blocks: Vec<u32> = (0..n_blocks).map(|_| next(6) as u32).collect();
            let mut starts: Vec<u32> = (0..3).map(|_| next(n_blocks as u64 + 2) as u32).collect();
            if next(4) != 0 {
                starts.sort_unstable();
            }
            let pages = Pages { block_size: bs, blocks: &blocks, starts: &starts };
            let rows = next(40);
            let (seq, pos) = (next(4), next(30));
            let want = (0..=pos).all(|t| pages.cache_row(seq, t, rows).is_ok());
            assert_eq!(pages.check_context(seq, pos, rows).is_ok(), want, "{pages:?} seq {seq} pos {pos} rows {rows}");
        }
    }
}
