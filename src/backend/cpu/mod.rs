//! The CPU backend: every kernel family in f32 with rayon, the GEMMs on the `gemm` crate.
//! It is both a product (serving on machines without a GPU) and the reference the GPU kernels
//! are tested against.

pub mod attention;
pub mod elementwise;
pub mod indexer;
pub mod kv;
pub mod linear;
pub mod moe;
pub mod norm;
pub mod rope;
pub mod scratch;
pub mod simd;

use super::check;
use crate::backend::{
    Backend, CacheFormat, HeadCols, HostExpert, MlaDims, Pages, PrefillSeq, Queries, RopeLayout, RouterParams,
};
use crate::error::{ensure_shape, Error, Result};
use crate::fp8::ScaleFmt;
use crate::model::weights::{HostLinear, HostTensor};
use crate::tensor::{CacheTensor, IntTensor, Tensor};

pub use kv::CpuCache;
pub use linear::{CpuLinear, GemmMode};
pub use moe::CpuExpert;

/// Multiply-adds below which a kernel stays on one thread: handing work to another costs more
/// than it saves.
const PARALLEL_WORK: usize = 1 << 17;

/// The `with_min_len` for `items` parallel items doing `work` multiply-adds in all: every item
/// in one task when the work is small.
fn min_len(items: usize, work: usize) -> usize {
    if work < PARALLEL_WORK {
        items.max(1)
    } else {
        1
    }
}

#[derive(Default)]
pub struct CpuBackend {
    pools: scratch::Pools,
    gemm: GemmMode,
}

impl CpuBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// A backend whose results for a row do not depend on what else is in the batch.
    pub fn batch_invariant() -> Self {
        CpuBackend { gemm: GemmMode::BatchInvariant, ..Self::default() }
    }
}

impl Tensor<CpuBackend> {
    /// The values, row-major.
    pub fn data(&self) -> &[f32] {
        &self.buf
    }

    pub fn from_vec(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self> {
        ensure_shape(data.len() == rows * cols, "from_vec", || format!("{} values for [{rows}, {cols}]", data.len()))?;
        Ok(Tensor { buf: data, rows, cols })
    }
}

impl IntTensor<CpuBackend> {
    pub fn data(&self) -> &[i32] {
        &self.buf
    }

    pub fn from_vec(rows: usize, cols: usize, data: Vec<i32>) -> Result<Self> {
        ensure_shape(data.len() == rows * cols, "from_vec", || format!("{} values for [{rows}, {cols}]", data.len()))?;
        Ok(IntTensor { buf: data, rows, cols })
    }
}

impl CacheTensor<CpuBackend> {
    /// An f32 cache of `rows` rows of `cols` values.
    pub fn from_f32(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self> {
        ensure_shape(data.len() == rows * cols, "from_f32", || format!("{} values for [{rows}, {cols}]", data.len()))?;
        Ok(CacheTensor { buf: CpuCache::F32(data), format: CacheFormat::F32 { cols }, rows })
    }

    /// A cache of `rows` rows in `format` holding `bytes` ([`Backend::cache_read`]'s layout).
    pub fn from_bytes(format: CacheFormat, rows: usize, bytes: &[u8]) -> Result<Self> {
        let mut buf = CpuCache::zeros(format, rows)?;
        buf.write_bytes(bytes)?;
        Ok(CacheTensor { buf, format, rows })
    }

    /// The storage: values of an f32 cache, bytes of the others.
    pub fn storage(&self) -> &CpuCache {
        &self.buf
    }

    fn rows_view(&self) -> Result<kv::Rows<'_>> {
        kv::Rows::new(&self.buf, self.format)
    }
}

impl Backend for CpuBackend {
    type Buf = Vec<f32>;
    type Ints = Vec<i32>;
    type Cache = CpuCache;
    type Linear = CpuLinear;
    type Experts = Vec<CpuExpert>;

    fn name(&self) -> &'static str {
        "cpu"
    }

    /// On a rayon worker: kernels then split work with their siblings directly, where a call
    /// from another thread would wait for a worker to wake up for every kernel.
    fn run_step<R: Send>(&self, step: impl FnOnce() -> R + Send) -> R {
        rayon::join(step, || ()).0
    }

    /// `MemAvailable` of /proc/meminfo.
    fn free_memory(&self) -> Result<usize> {
        let path = std::path::Path::new("/proc/meminfo");
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        text.lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
            .map(|kb| kb * 1024)
            .ok_or_else(|| Error::Input("cannot read MemAvailable from /proc/meminfo: pass --max-total-tokens".into()))
    }

    fn zeros(&self, rows: usize, cols: usize) -> Result<Tensor<Self>> {
        Ok(Tensor { buf: vec![0.0; rows * cols], rows, cols })
    }

    fn resize(&self, t: &mut Tensor<Self>, rows: usize, cols: usize) -> Result<()> {
        t.buf.resize(rows * cols, 0.0);
        t.rows = rows;
        t.cols = cols;
        Ok(())
    }

    fn write(&self, t: &mut Tensor<Self>, data: &[f32]) -> Result<()> {
        ensure_shape(data.len() == t.buf.len(), "write", || format!("{} values into {:?}", data.len(), t.shape()))?;
        t.buf.copy_from_slice(data);
        Ok(())
    }

    fn read(&self, t: &Tensor<Self>) -> Result<Vec<f32>> {
        Ok(t.buf.clone())
    }

    fn read_into(&self, t: &Tensor<Self>, out: &mut Vec<f32>) -> Result<()> {
        out.clear();
        out.extend_from_slice(&t.buf);
        Ok(())
    }

    fn int_zeros(&self, rows: usize, cols: usize) -> Result<IntTensor<Self>> {
        Ok(IntTensor { buf: vec![0; rows * cols], rows, cols })
    }

    fn resize_ints(&self, t: &mut IntTensor<Self>, rows: usize, cols: usize) -> Result<()> {
        t.buf.resize(rows * cols, 0);
        t.rows = rows;
        t.cols = cols;
        Ok(())
    }

    fn copy_rows(
        &self,
        src: &Tensor<Self>,
        src_row: usize,
        dst: &mut Tensor<Self>,
        dst_row: usize,
        n: usize,
    ) -> Result<()> {
        check::copy_rows(src, src_row, dst, dst_row, n)?;
        let c = src.cols;
        dst.buf[dst_row * c..(dst_row + n) * c].copy_from_slice(&src.buf[src_row * c..(src_row + n) * c]);
        Ok(())
    }

    fn load_linear(&self, w: &HostLinear) -> Result<CpuLinear> {
        CpuLinear::new(w)
    }

    fn load_vector(&self, v: &HostTensor) -> Result<Tensor<Self>> {
        let data = v.to_f32();
        let n = data.len();
        Tensor::from_vec(1, n, data)
    }

    fn load_experts(&self, experts: &[HostExpert]) -> Result<Vec<CpuExpert>> {
        experts.iter().map(CpuExpert::new).collect()
    }

    fn linear(&self, x: &Tensor<Self>, w: &CpuLinear, quant: Option<ScaleFmt>, out: &mut Tensor<Self>) -> Result<()> {
        check::linear(x, w.rows(), w.cols(), out)?;
        linear::linear(&self.pools.f32, self.gemm, &x.buf, x.rows, w, quant, &mut out.buf)
    }

    fn embedding(&self, table: &CpuLinear, ids: &[u32], out: &mut Tensor<Self>) -> Result<()> {
        check::embedding(ids.len(), table.cols(), out)?;
        linear::embedding(table, ids, &mut out.buf)
    }

    fn route(
        &self,
        logits: &Tensor<Self>,
        bias: &Tensor<Self>,
        params: RouterParams,
        idx: &mut IntTensor<Self>,
        weights: &mut Tensor<Self>,
    ) -> Result<()> {
        check::route(logits, bias, params, idx, weights)?;
        moe::route(&self.pools, &logits.buf, &bias.buf, params, &mut idx.buf, &mut weights.buf)
    }

    fn moe_experts(
        &self,
        x: &Tensor<Self>,
        experts: &Vec<CpuExpert>,
        idx: &IntTensor<Self>,
        weights: &Tensor<Self>,
        quant: Option<ScaleFmt>,
        out: &mut Tensor<Self>,
    ) -> Result<()> {
        check::moe_experts(x, idx, weights, out)?;
        moe::moe_experts(&self.pools, self.gemm, &x.buf, experts, &idx.buf, &weights.buf, quant, &mut out.buf)
    }

    fn rms_norm(
        &self,
        x: &Tensor<Self>,
        col0: usize,
        w: &Tensor<Self>,
        eps: f32,
        out: &mut Tensor<Self>,
    ) -> Result<()> {
        check::rms_norm(x, w, out)?;
        norm::rms_norm(&x.buf, x.cols, col0, &w.buf, eps, &mut out.buf)
    }

    fn add_rms_norm(
        &self,
        residual: &mut Tensor<Self>,
        delta: &Tensor<Self>,
        w: &Tensor<Self>,
        eps: f32,
        out: &mut Tensor<Self>,
    ) -> Result<()> {
        check::add_rms_norm(residual, delta, w, out)?;
        norm::add_rms_norm(&mut residual.buf, residual.cols, &delta.buf, &w.buf, eps, &mut out.buf)
    }

    fn layer_norm(&self, x: &mut Tensor<Self>, w: &Tensor<Self>, b: &Tensor<Self>, eps: f32) -> Result<()> {
        check::layer_norm(x, w, b)?;
        norm::layer_norm(&mut x.buf, &w.buf, &b.buf, eps)
    }

    fn rope(&self, x: &mut Tensor<Self>, heads: HeadCols, cos_sin: &Tensor<Self>, layout: RopeLayout) -> Result<()> {
        check::rope(x, heads, cos_sin)?;
        rope::rope(&mut x.buf, x.cols, heads, &cos_sin.buf, layout)
    }

    fn silu_mul(&self, gate: &mut Tensor<Self>, up: &Tensor<Self>) -> Result<()> {
        check::same_shape(gate, up, "silu_mul")?;
        elementwise::silu_mul(&mut gate.buf, &up.buf)
    }

    fn add_assign(&self, acc: &mut Tensor<Self>, x: &Tensor<Self>) -> Result<()> {
        check::same_shape(acc, x, "add_assign")?;
        elementwise::add_assign(&mut acc.buf, &x.buf)
    }

    fn fp8_round(&self, x: &mut Tensor<Self>, segment: usize, fmt: ScaleFmt) -> Result<()> {
        check::segments(x, segment, "fp8_round")?;
        elementwise::fp8_round(&mut x.buf, segment, fmt)
    }

    fn hadamard(&self, x: &mut Tensor<Self>, dim: usize) -> Result<()> {
        check::segments(x, dim, "hadamard")?;
        elementwise::hadamard(&mut x.buf, dim)
    }

    fn argmax(&self, logits: &Tensor<Self>) -> Result<Vec<u32>> {
        ensure_shape(logits.cols > 0, "argmax", || "no columns".into())?;
        Ok(elementwise::argmax(&logits.buf, logits.cols))
    }

    fn cache_zeros(&self, format: CacheFormat, rows: usize) -> Result<CacheTensor<Self>> {
        Ok(CacheTensor { buf: CpuCache::zeros(format, rows)?, format, rows })
    }

    fn cache_read(&self, cache: &CacheTensor<Self>) -> Result<Vec<u8>> {
        Ok(cache.buf.to_bytes())
    }

    fn cache_write(&self, cache: &mut CacheTensor<Self>, bytes: &[u8]) -> Result<()> {
        cache.buf.write_bytes(bytes)
    }

    fn kv_store(
        &self,
        cache: &mut CacheTensor<Self>,
        slots: &[u32],
        head: &Tensor<Self>,
        tail: Option<(&Tensor<Self>, usize)>,
    ) -> Result<()> {
        check::kv_store(cache, slots, head, tail)?;
        let tail = tail.map(|(t, col)| (t.buf.as_slice(), t.cols, col));
        kv::kv_store(&mut cache.buf, cache.format, slots, &head.buf, head.cols, tail)
    }

    fn kv_gather(&self, cache: &CacheTensor<Self>, slots: &[u32], col: usize, dst: &mut Tensor<Self>) -> Result<()> {
        check::kv_gather(cache, slots, col, dst)?;
        kv::kv_gather(cache.rows_view()?, slots, col, &mut dst.buf, dst.cols);
        Ok(())
    }

    fn absorb_q(&self, q: &Tensor<Self>, kv_b: &CpuLinear, dims: MlaDims, out: &mut Tensor<Self>) -> Result<()> {
        check::absorb_q(q, dims, out)?;
        attention::absorb_q(&self.pools.f32, self.gemm, &q.buf, kv_b, dims, out.rows, &mut out.buf)
    }

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
    ) -> Result<()> {
        check::mla_decode(q_lat, cache, topk, dims, out)?;
        let topk = topk.map(|t| (t.buf.as_slice(), t.cols));
        let rows = cache.rows_view()?;
        attention::mla_decode(&self.pools.f32, &q_lat.buf, rows, queries, pages, topk, scale, dims, &mut out.buf)
    }

    fn absorb_out(&self, o_lat: &Tensor<Self>, kv_b: &CpuLinear, dims: MlaDims, out: &mut Tensor<Self>) -> Result<()> {
        check::absorb_out(o_lat, dims, out)?;
        attention::absorb_out(&self.pools.f32, self.gemm, &o_lat.buf, kv_b, dims, o_lat.rows, &mut out.buf)
    }

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
    ) -> Result<()> {
        check::mla_prefill(q, kv, kpe, topk, dims, out)?;
        let topk = topk.map(|t| (t.buf.as_slice(), t.cols));
        attention::mla_prefill(&self.pools.f32, &q.buf, &kv.buf, &kpe.buf, seqs, topk, scale, dims, &mut out.buf)
    }

    fn indexer_topk(
        &self,
        q: &Tensor<Self>,
        weights: &Tensor<Self>,
        weight_scale: f32,
        cache: &CacheTensor<Self>,
        queries: Queries,
        pages: Pages,
        out: &mut IntTensor<Self>,
    ) -> Result<()> {
        check::indexer_topk(q, weights, cache, out)?;
        indexer::indexer_topk(
            &self.pools,
            &q.buf,
            &weights.buf,
            weight_scale,
            cache.rows_view()?,
            queries,
            pages,
            out.cols,
            &mut out.buf,
        )
    }
}
