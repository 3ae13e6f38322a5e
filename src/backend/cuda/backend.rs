//! `CudaBackend`: the `Backend` trait on one GPU, every method a launcher of this module's
//! parent. Activations, caches and weights stay in device memory between kernels; the host sends
//! only the metadata the trait passes as host slices (ids, slots, positions, page tables) and reads
//! back only what the trait returns to it (`read`, `argmax`).
//!
//! Tensors keep the storage they grew to (`resize` reallocates only to grow), so a step's
//! workspace settles after the first steps and then allocates nothing; launchers use the first
//! `rows * cols` values of a buffer.

use cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};

use super::{product, CacheView, CudaDevice, CudaExperts, CudaLinear, IndexerFp8Input};
use crate::backend::{
    check, Backend, CacheFormat, HeadCols, HostExpert, MlaDims, Pages, PrefillSeq, Queries, RopeLayout, RouterParams,
};
use crate::error::{ensure_shape, Error, Result};
use crate::fp8::ScaleFmt;
use crate::kv_layout::PAGE;
use crate::model::weights::{HostLinear, HostTensor};
use crate::tensor::{CacheTensor, IntTensor, Tensor};

/// A paged cache's device storage: f32 values, or the bytes of bf16 rows or an FP8 layout. Both
/// are plain buffers the fast kernels can read in place (their first [`CacheFormat::bytes`]
/// bytes).
pub enum CudaCache {
    F32(CudaSlice<f32>),
    Bytes(CudaSlice<u8>),
}

/// The CUDA backend on one GPU.
pub struct CudaBackend {
    dev: CudaDevice,
}

impl CudaBackend {
    /// Opens GPU `ordinal`: an error (not a panic) where there is no GPU or driver.
    pub fn new(ordinal: usize) -> Result<Self> {
        Ok(Self { dev: CudaDevice::new(ordinal)? })
    }

    /// The device, for its launchers.
    pub fn device(&self) -> &CudaDevice {
        &self.dev
    }

    /// Makes `buf` hold at least `len` values: a new buffer (contents lost) only to grow.
    fn grow<T: DeviceRepr + ValidAsZeroBits>(&self, buf: &mut CudaSlice<T>, len: usize) -> Result<()> {
        if buf.len() < len {
            *buf = self.dev.zeros(len)?;
        }
        Ok(())
    }
}

impl Tensor<CudaBackend> {
    /// The device buffer: its first `rows * cols` values are the tensor's.
    pub fn buf(&self) -> &CudaSlice<f32> {
        &self.buf
    }
}

impl CacheTensor<CudaBackend> {
    pub fn storage(&self) -> &CudaCache {
        &self.buf
    }

    /// The cache as the decode and indexer launchers read it.
    pub fn view(&self) -> Result<CacheView<'_>> {
        match (&self.buf, self.format) {
            (CudaCache::F32(b), CacheFormat::F32 { .. }) => Ok(CacheView::F32(b)),
            (CudaCache::Bytes(b), CacheFormat::Bf16 { cols }) => Ok(CacheView::Bf16(b, cols)),
            (CudaCache::Bytes(b), CacheFormat::Fp8Latent(l)) => Ok(CacheView::Latent(b, l)),
            (CudaCache::Bytes(b), CacheFormat::Fp8Index(ix)) => Ok(CacheView::Index(b, ix)),
            _ => Err(Error::Input(format!("a cache's storage does not match its format {:?}", self.format))),
        }
    }
}

impl IntTensor<CudaBackend> {
    /// The device buffer: its first `rows * cols` values are the tensor's.
    pub fn buf(&self) -> &CudaSlice<i32> {
        &self.buf
    }
}

impl Backend for CudaBackend {
    type Buf = CudaSlice<f32>;
    type Ints = CudaSlice<i32>;
    type Cache = CudaCache;
    type Linear = CudaLinear;
    type Experts = CudaExperts;

    fn name(&self) -> &'static str {
        "cuda"
    }

    /// Kernels queue on the device's stream from the calling thread; nothing to set up.
    fn run_step<R: Send>(&self, step: impl FnOnce() -> R + Send) -> R {
        step()
    }

    /// The device's free memory (`cuMemGetInfo`), after the weights are loaded.
    fn free_memory(&self) -> Result<usize> {
        self.dev.free_memory()
    }

    fn zeros(&self, rows: usize, cols: usize) -> Result<Tensor<Self>> {
        Ok(Tensor { buf: self.dev.zeros(product(rows, cols, "zeros")?.max(1))?, rows, cols })
    }

    fn resize(&self, t: &mut Tensor<Self>, rows: usize, cols: usize) -> Result<()> {
        self.grow(&mut t.buf, product(rows, cols, "resize")?)?;
        t.rows = rows;
        t.cols = cols;
        Ok(())
    }

    fn write(&self, t: &mut Tensor<Self>, data: &[f32]) -> Result<()> {
        ensure_shape(data.len() == t.rows * t.cols, "write", || format!("{} values into {:?}", data.len(), t.shape()))?;
        self.dev.write(&mut t.buf, data)
    }

    fn read(&self, t: &Tensor<Self>) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        self.read_into(t, &mut out)?;
        Ok(out)
    }

    fn read_into(&self, t: &Tensor<Self>, out: &mut Vec<f32>) -> Result<()> {
        out.clear();
        out.resize(t.rows * t.cols, 0.0);
        self.dev.read(&t.buf, out)
    }

    fn int_zeros(&self, rows: usize, cols: usize) -> Result<IntTensor<Self>> {
        Ok(IntTensor { buf: self.dev.zeros(product(rows, cols, "int_zeros")?.max(1))?, rows, cols })
    }

    fn resize_ints(&self, t: &mut IntTensor<Self>, rows: usize, cols: usize) -> Result<()> {
        self.grow(&mut t.buf, product(rows, cols, "resize_ints")?)?;
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
        self.dev.copy(&src.buf, src_row * c, &mut dst.buf, dst_row * c, n * c)
    }

    fn load_linear(&self, w: &HostLinear) -> Result<CudaLinear> {
        self.dev.load_linear(w)
    }

    fn load_vector(&self, v: &HostTensor) -> Result<Tensor<Self>> {
        let data = v.to_f32();
        let n = data.len();
        Ok(Tensor { buf: self.dev.upload_nonempty(&data)?, rows: 1, cols: n })
    }

    fn load_experts(&self, experts: &[HostExpert]) -> Result<CudaExperts> {
        self.dev.load_experts(experts)
    }

    fn linear(&self, x: &Tensor<Self>, w: &CudaLinear, quant: Option<ScaleFmt>, out: &mut Tensor<Self>) -> Result<()> {
        check::linear(x, w.rows(), w.cols(), out)?;
        self.dev.linear(&x.buf, x.rows, w, quant, &mut out.buf)
    }

    fn embedding(&self, table: &CudaLinear, ids: &[u32], out: &mut Tensor<Self>) -> Result<()> {
        check::embedding(ids.len(), table.cols(), out)?;
        self.dev.embedding(table, ids, &mut out.buf)
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
        self.dev.route(&logits.buf, logits.rows, logits.cols, &bias.buf, params, &mut idx.buf, &mut weights.buf)
    }

    fn moe_experts(
        &self,
        x: &Tensor<Self>,
        experts: &CudaExperts,
        idx: &IntTensor<Self>,
        weights: &Tensor<Self>,
        quant: Option<ScaleFmt>,
        out: &mut Tensor<Self>,
    ) -> Result<()> {
        check::moe_experts(x, idx, weights, out)?;
        ensure_shape(x.cols == experts.hidden(), "moe_experts", || {
            format!("x {:?} for experts of hidden size {}", x.shape(), experts.hidden())
        })?;
        self.dev.moe_experts(&x.buf, x.rows, experts, &idx.buf, &weights.buf, idx.cols, quant, &mut out.buf)
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
        self.dev.rms_norm(&x.buf, x.rows, x.cols, col0, &w.buf, w.cols, eps, &mut out.buf)
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
        self.dev.add_rms_norm(&mut residual.buf, &delta.buf, residual.rows, residual.cols, &w.buf, eps, &mut out.buf)
    }

    fn layer_norm(&self, x: &mut Tensor<Self>, w: &Tensor<Self>, b: &Tensor<Self>, eps: f32) -> Result<()> {
        check::layer_norm(x, w, b)?;
        self.dev.layer_norm(&mut x.buf, x.rows, x.cols, &w.buf, &b.buf, eps)
    }

    fn rope(&self, x: &mut Tensor<Self>, heads: HeadCols, cos_sin: &Tensor<Self>, layout: RopeLayout) -> Result<()> {
        check::rope(x, heads, cos_sin)?;
        self.dev.rope(&mut x.buf, x.rows, x.cols, heads, &cos_sin.buf, layout)
    }

    fn silu_mul(&self, gate: &mut Tensor<Self>, up: &Tensor<Self>) -> Result<()> {
        check::same_shape(gate, up, "silu_mul")?;
        self.dev.silu_mul(&mut gate.buf, &up.buf, gate.rows * gate.cols)
    }

    fn add_assign(&self, acc: &mut Tensor<Self>, x: &Tensor<Self>) -> Result<()> {
        check::same_shape(acc, x, "add_assign")?;
        self.dev.add_assign(&mut acc.buf, &x.buf, acc.rows * acc.cols)
    }

    fn fp8_round(&self, x: &mut Tensor<Self>, segment: usize, fmt: ScaleFmt) -> Result<()> {
        check::segments(x, segment, "fp8_round")?;
        self.dev.fp8_round(&mut x.buf, x.rows, x.cols, segment, fmt)
    }

    fn hadamard(&self, x: &mut Tensor<Self>, dim: usize) -> Result<()> {
        check::segments(x, dim, "hadamard")?;
        self.dev.hadamard(&mut x.buf, x.rows, x.cols, dim)
    }

    fn argmax(&self, logits: &Tensor<Self>) -> Result<Vec<u32>> {
        let mut out = self.dev.zeros::<u32>(logits.rows.max(1))?;
        self.dev.argmax(&logits.buf, logits.rows, logits.cols, &mut out)?;
        let mut ids = self.dev.download(&out)?;
        ids.truncate(logits.rows);
        Ok(ids)
    }

    fn cache_zeros(&self, format: CacheFormat, rows: usize) -> Result<CacheTensor<Self>> {
        // The driver allocates no empty buffers.
        let buf = match format {
            CacheFormat::F32 { cols } => CudaCache::F32(self.dev.zeros(product(rows, cols, "cache_zeros")?.max(1))?),
            _ => CudaCache::Bytes(self.dev.zeros(format.bytes(rows)?.max(1))?),
        };
        Ok(CacheTensor { buf, format, rows })
    }

    fn cache_read(&self, cache: &CacheTensor<Self>) -> Result<Vec<u8>> {
        let len = cache.format.bytes(cache.rows)?;
        Ok(match &cache.buf {
            CudaCache::F32(b) => {
                let mut v = vec![0.0f32; len / 4];
                self.dev.read(b, &mut v)?;
                v.iter().flat_map(|x| x.to_le_bytes()).collect()
            }
            CudaCache::Bytes(b) => {
                let mut v = vec![0u8; len];
                self.dev.read(b, &mut v)?;
                v
            }
        })
    }

    fn cache_write(&self, cache: &mut CacheTensor<Self>, bytes: &[u8]) -> Result<()> {
        let len = cache.format.bytes(cache.rows)?;
        ensure_shape(bytes.len() == len, "cache_write", || format!("{} bytes into a cache of {len}", bytes.len()))?;
        match &mut cache.buf {
            CudaCache::F32(b) => {
                let v: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                self.dev.write(b, &v)
            }
            CudaCache::Bytes(b) => self.dev.write(b, bytes),
        }
    }

    fn kv_store(
        &self,
        cache: &mut CacheTensor<Self>,
        slots: &[u32],
        head: &Tensor<Self>,
        tail: Option<(&Tensor<Self>, usize)>,
    ) -> Result<()> {
        let rest = check::kv_store(cache, slots, head, tail)?;
        let (rows, format) = (cache.rows, cache.format);
        match &mut cache.buf {
            CudaCache::F32(b) => {
                let cols = format.cols();
                self.dev.kv_store(b, rows, cols, slots, &head.buf, head.cols, 0, 0, head.cols)?;
                match tail {
                    Some((t, col)) => self.dev.kv_store(b, rows, cols, slots, &t.buf, t.cols, col, head.cols, rest),
                    None => Ok(()),
                }
            }
            CudaCache::Bytes(b) => {
                let tail = tail.map(|(t, col)| (&t.buf, t.cols, col));
                self.dev.kv_pack(b, format, rows, slots, &head.buf, head.cols, tail)
            }
        }
    }

    fn kv_gather(&self, cache: &CacheTensor<Self>, slots: &[u32], col: usize, dst: &mut Tensor<Self>) -> Result<()> {
        check::kv_gather(cache, slots, col, dst)?;
        match &cache.buf {
            CudaCache::F32(b) => self.dev.kv_gather(b, cache.rows, cache.cols(), slots, col, &mut dst.buf, dst.cols),
            CudaCache::Bytes(b) => self.dev.kv_unpack(b, cache.format, cache.rows, slots, col, &mut dst.buf, dst.cols),
        }
    }

    fn absorb_q(&self, q: &Tensor<Self>, kv_b: &CudaLinear, dims: MlaDims, out: &mut Tensor<Self>) -> Result<()> {
        check::absorb_q(q, dims, out)?;
        self.dev.absorb_q(&q.buf, out.rows, kv_b, dims, &mut out.buf)
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
        let topk = topk.map(|t| (&t.buf, t.cols));
        match cache.view()? {
            CacheView::Latent(bytes, layout) if CudaDevice::mla_decode_fp8_supports(layout, dims) => {
                return self.dev.mla_decode_fp8(
                    &q_lat.buf,
                    q_lat.rows,
                    bytes,
                    layout,
                    cache.rows,
                    queries,
                    pages,
                    topk,
                    scale,
                    dims,
                    &mut out.buf,
                );
            }
            CacheView::Bf16(bytes, cols) if CudaDevice::mla_decode_bf16_supports(cols, dims) => {
                return self.dev.mla_decode_bf16(
                    &q_lat.buf,
                    q_lat.rows,
                    bytes,
                    cols,
                    cache.rows,
                    queries,
                    pages,
                    topk,
                    scale,
                    dims,
                    &mut out.buf,
                );
            }
            _ => {}
        }
        self.dev.mla_decode(
            &q_lat.buf,
            q_lat.rows,
            cache.view()?,
            cache.rows,
            queries,
            pages,
            topk,
            scale,
            dims,
            &mut out.buf,
        )
    }

    fn absorb_out(&self, o_lat: &Tensor<Self>, kv_b: &CudaLinear, dims: MlaDims, out: &mut Tensor<Self>) -> Result<()> {
        check::absorb_out(o_lat, dims, out)?;
        self.dev.absorb_out(&o_lat.buf, o_lat.rows, kv_b, dims, &mut out.buf)
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
        let topk = topk.map(|t| (&t.buf, t.cols));
        self.dev.mla_prefill(&q.buf, q.rows, &kv.buf, &kpe.buf, kv.rows, seqs, topk, scale, dims, &mut out.buf)
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
        if let CacheView::Index(bytes, layout) = cache.view()? {
            let heads = weights.cols;
            if CudaDevice::indexer_fp8_supports(layout, heads, pages.block_size) {
                // The model rounded q through e4m3 with the cache's scale format (the FP8 cache
                // turns the indexer's FP8 path on); quantizing it again with that format gives
                // back its codes and scales, which the tensor cores take.
                let head_rows = product(q.rows, heads, "indexer_topk")?;
                let mut codes = self.dev.zeros::<u8>(product(head_rows, layout.dim, "indexer_topk")?.max(1))?;
                let mut scales = self.dev.zeros::<f32>(head_rows.max(1))?;
                self.dev.act_quant(&q.buf, head_rows, layout.dim, layout.fmt, &mut codes, &mut scales)?;
                let input = IndexerFp8Input {
                    q_codes: &codes,
                    q_scales: &scales,
                    weights: &weights.buf,
                    rows: q.rows,
                    heads,
                    weight_scale,
                    cache: bytes,
                    layout,
                    cache_pages: cache.rows / PAGE,
                    queries,
                    pages,
                };
                return self.dev.indexer_topk_fp8(&input, &mut out.buf, out.cols);
            }
        }
        self.dev.indexer_topk(
            &q.buf,
            q.rows,
            &weights.buf,
            weights.cols,
            weight_scale,
            cache.view()?,
            cache.rows,
            cache.cols(),
            queries,
            pages,
            &mut out.buf,
            out.cols,
        )
    }
}
