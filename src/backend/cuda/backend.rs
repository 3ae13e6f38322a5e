//! `CudaBackend`: the `Backend` trait on one GPU, every method a launcher of this module's
//! parent. Activations, caches and weights stay in device memory between kernels; the host sends
//! only the metadata the trait passes as host slices (ids, slots, positions, page tables) and reads
//! back only what the trait returns to it (`read`, `argmax`).
//!
//! Tensors keep the storage they grew to (`resize` reallocates only to grow), so a step's
//! workspace settles after the first steps and then allocates nothing; launchers use the first
//! `rows * cols` values of a buffer.

use cudarc::driver::CudaSlice;

use super::{product, CudaDevice, CudaExperts, CudaLinear};
use crate::backend::{Backend, HeadCols, HostExpert, MlaDims, Pages, PrefillSeq, Queries, RopeLayout, RouterParams};
use crate::error::{ensure_shape, Result};
use crate::fp8::ScaleFmt;
use crate::model::weights::{HostLinear, HostTensor};
use crate::tensor::{IntTensor, Tensor};

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
}

fn same_shape(a: &Tensor<CudaBackend>, b: &Tensor<CudaBackend>, op: &'static str) -> Result<()> {
    ensure_shape(a.shape() == b.shape(), op, || format!("{:?} and {:?}", a.shape(), b.shape()))
}

impl Tensor<CudaBackend> {
    /// The device buffer: its first `rows * cols` values are the tensor's.
    pub fn buf(&self) -> &CudaSlice<f32> {
        &self.buf
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
    type Linear = CudaLinear;
    type Experts = CudaExperts;

    fn name(&self) -> &'static str {
        "cuda"
    }

    /// Kernels queue on the device's stream from the calling thread; nothing to set up.
    fn run_step<R: Send>(&self, step: impl FnOnce() -> R + Send) -> R {
        step()
    }

    fn elem_bytes(&self) -> usize {
        std::mem::size_of::<f32>()
    }

    /// The device's free memory (`cuMemGetInfo`), after the weights are loaded.
    fn free_memory(&self) -> Result<usize> {
        self.dev.free_memory()
    }

    fn zeros(&self, rows: usize, cols: usize) -> Result<Tensor<Self>> {
        Ok(Tensor { buf: self.dev.zeros(product(rows, cols, "zeros")?.max(1))?, rows, cols })
    }

    fn resize(&self, t: &mut Tensor<Self>, rows: usize, cols: usize) -> Result<()> {
        let len = product(rows, cols, "resize")?;
        if t.buf.len() < len {
            t.buf = self.dev.zeros(len)?;
        }
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
        let len = product(rows, cols, "resize_ints")?;
        if t.buf.len() < len {
            t.buf = self.dev.zeros(len)?;
        }
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
        let c = src.cols;
        ensure_shape(
            dst.cols == c
                && src_row.checked_add(n).is_some_and(|end| end <= src.rows)
                && dst_row.checked_add(n).is_some_and(|end| end <= dst.rows),
            "copy_rows",
            || format!("rows {src_row}+{n} of {:?} to row {dst_row} of {:?}", src.shape(), dst.shape()),
        )?;
        self.dev.copy(&src.buf, src_row * c, &mut dst.buf, dst_row * c, n * c)
    }

    fn load_linear(&self, w: &HostLinear) -> Result<CudaLinear> {
        self.dev.load_linear(w)
    }

    fn load_vector(&self, v: &HostTensor) -> Result<Tensor<Self>> {
        let data = v.to_f32();
        let n = data.len();
        let buf = if data.is_empty() { self.dev.zeros(1)? } else { self.dev.upload(&data)? };
        Ok(Tensor { buf, rows: 1, cols: n })
    }

    fn load_experts(&self, experts: &[HostExpert]) -> Result<CudaExperts> {
        self.dev.load_experts(experts)
    }

    fn linear(&self, x: &Tensor<Self>, w: &CudaLinear, quant: Option<ScaleFmt>, out: &mut Tensor<Self>) -> Result<()> {
        ensure_shape(x.cols == w.cols() && out.rows == x.rows && out.cols == w.rows(), "linear", || {
            format!("x {:?}, weight [{}, {}], out {:?}", x.shape(), w.rows(), w.cols(), out.shape())
        })?;
        self.dev.linear(&x.buf, x.rows, w, quant, &mut out.buf)
    }

    fn embedding(&self, table: &CudaLinear, ids: &[u32], out: &mut Tensor<Self>) -> Result<()> {
        ensure_shape(out.rows == ids.len() && out.cols == table.cols(), "embedding", || {
            format!("{} ids of width {} into {:?}", ids.len(), table.cols(), out.shape())
        })?;
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
        ensure_shape(
            logits.cols == bias.cols
                && bias.rows == 1
                && idx.rows == logits.rows
                && weights.rows == logits.rows
                && idx.cols == params.top_k
                && weights.cols == params.top_k,
            "route",
            || {
                format!(
                    "logits {:?}, bias {:?}, idx [{}, {}], weights {:?}",
                    logits.shape(),
                    bias.shape(),
                    idx.rows,
                    idx.cols,
                    weights.shape()
                )
            },
        )?;
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
        ensure_shape(idx.rows == x.rows && weights.rows == x.rows && idx.cols == weights.cols, "moe_experts", || {
            format!("x {:?}, idx [{}, {}], weights {:?}", x.shape(), idx.rows, idx.cols, weights.shape())
        })?;
        same_shape(x, out, "moe_experts")?;
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
        ensure_shape(out.rows == x.rows && out.cols == w.cols && w.rows == 1, "rms_norm", || {
            format!("x {:?}, weight {:?}, out {:?}", x.shape(), w.shape(), out.shape())
        })?;
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
        same_shape(residual, delta, "add_rms_norm")?;
        same_shape(residual, out, "add_rms_norm")?;
        ensure_shape(w.rows == 1 && w.cols == residual.cols, "add_rms_norm", || {
            format!("weight {:?} for rows of {}", w.shape(), residual.cols)
        })?;
        self.dev.add_rms_norm(&mut residual.buf, &delta.buf, residual.rows, residual.cols, &w.buf, eps, &mut out.buf)
    }

    fn layer_norm(&self, x: &mut Tensor<Self>, w: &Tensor<Self>, b: &Tensor<Self>, eps: f32) -> Result<()> {
        ensure_shape(w.rows == 1 && w.cols == x.cols && b.shape() == w.shape(), "layer_norm", || {
            format!("x {:?}, weight {:?}, bias {:?}", x.shape(), w.shape(), b.shape())
        })?;
        self.dev.layer_norm(&mut x.buf, x.rows, x.cols, &w.buf, &b.buf, eps)
    }

    fn rope(&self, x: &mut Tensor<Self>, heads: HeadCols, cos_sin: &Tensor<Self>, layout: RopeLayout) -> Result<()> {
        ensure_shape(cos_sin.rows == x.rows && cos_sin.cols == heads.dim, "rope", || {
            format!("x {:?}, cos_sin {:?}, heads {heads:?}", x.shape(), cos_sin.shape())
        })?;
        self.dev.rope(&mut x.buf, x.rows, x.cols, heads, &cos_sin.buf, layout)
    }

    fn silu_mul(&self, gate: &mut Tensor<Self>, up: &Tensor<Self>) -> Result<()> {
        same_shape(gate, up, "silu_mul")?;
        self.dev.silu_mul(&mut gate.buf, &up.buf, gate.rows * gate.cols)
    }

    fn add_assign(&self, acc: &mut Tensor<Self>, x: &Tensor<Self>) -> Result<()> {
        same_shape(acc, x, "add_assign")?;
        self.dev.add_assign(&mut acc.buf, &x.buf, acc.rows * acc.cols)
    }

    fn fp8_round(&self, x: &mut Tensor<Self>, segment: usize, fmt: ScaleFmt) -> Result<()> {
        self.dev.fp8_round(&mut x.buf, x.rows, x.cols, segment, fmt)
    }

    fn hadamard(&self, x: &mut Tensor<Self>, dim: usize) -> Result<()> {
        self.dev.hadamard(&mut x.buf, x.rows, x.cols, dim)
    }

    fn argmax(&self, logits: &Tensor<Self>) -> Result<Vec<u32>> {
        let mut out = self.dev.zeros::<u32>(logits.rows.max(1))?;
        self.dev.argmax(&logits.buf, logits.rows, logits.cols, &mut out)?;
        let mut ids = self.dev.download(&out)?;
        ids.truncate(logits.rows);
        Ok(ids)
    }

    fn kv_store(
        &self,
        cache: &mut Tensor<Self>,
        slots: &[u32],
        src: &Tensor<Self>,
        src_col: usize,
        dst_col: usize,
        n: usize,
    ) -> Result<()> {
        ensure_shape(slots.len() <= src.rows, "kv_store", || {
            format!("{} slots for {:?} rows", slots.len(), src.shape())
        })?;
        self.dev.kv_store(&mut cache.buf, cache.rows, cache.cols, slots, &src.buf, src.cols, src_col, dst_col, n)
    }

    fn kv_gather(&self, cache: &Tensor<Self>, slots: &[u32], col: usize, dst: &mut Tensor<Self>) -> Result<()> {
        ensure_shape(dst.rows == slots.len(), "kv_gather", || format!("{} slots into {:?}", slots.len(), dst.shape()))?;
        self.dev.kv_gather(&cache.buf, cache.rows, cache.cols, slots, col, &mut dst.buf, dst.cols)
    }

    fn absorb_q(&self, q: &Tensor<Self>, kv_b: &CudaLinear, dims: MlaDims, out: &mut Tensor<Self>) -> Result<()> {
        ensure_shape(
            q.cols == dims.heads * dims.qk() && out.rows <= q.rows && out.cols == dims.heads * dims.latent(),
            "absorb_q",
            || format!("q {:?}, out {:?}, dims {dims:?}", q.shape(), out.shape()),
        )?;
        self.dev.absorb_q(&q.buf, out.rows, kv_b, dims, &mut out.buf)
    }

    fn mla_decode(
        &self,
        q_lat: &Tensor<Self>,
        cache: &Tensor<Self>,
        queries: Queries,
        pages: Pages,
        topk: Option<&IntTensor<Self>>,
        scale: f32,
        dims: MlaDims,
        out: &mut Tensor<Self>,
    ) -> Result<()> {
        ensure_shape(
            cache.cols == dims.latent()
                && q_lat.cols == dims.heads * dims.latent()
                && out.rows == q_lat.rows
                && out.cols == dims.heads * dims.kv_lora
                && topk.is_none_or(|t| t.rows == q_lat.rows),
            "mla_decode",
            || format!("q_lat {:?}, cache {:?}, out {:?}, dims {dims:?}", q_lat.shape(), cache.shape(), out.shape()),
        )?;
        let topk = topk.map(|t| (&t.buf, t.cols));
        self.dev.mla_decode(
            &q_lat.buf,
            q_lat.rows,
            &cache.buf,
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
        ensure_shape(
            out.rows == o_lat.rows && o_lat.cols == dims.heads * dims.kv_lora && out.cols == dims.heads * dims.v,
            "absorb_out",
            || format!("o_lat {:?}, out {:?}, dims {dims:?}", o_lat.shape(), out.shape()),
        )?;
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
        ensure_shape(
            q.cols == dims.heads * dims.qk()
                && kv.cols == dims.heads * (dims.nope + dims.v)
                && kpe.cols == dims.rope
                && kpe.rows == kv.rows
                && out.rows == q.rows
                && out.cols == dims.heads * dims.v
                && topk.is_none_or(|t| t.rows == q.rows),
            "mla_prefill",
            || {
                format!(
                    "q {:?}, kv {:?}, kpe {:?}, out {:?}, dims {dims:?}",
                    q.shape(),
                    kv.shape(),
                    kpe.shape(),
                    out.shape()
                )
            },
        )?;
        let topk = topk.map(|t| (&t.buf, t.cols));
        self.dev.mla_prefill(&q.buf, q.rows, &kv.buf, &kpe.buf, kv.rows, seqs, topk, scale, dims, &mut out.buf)
    }

    fn indexer_topk(
        &self,
        q: &Tensor<Self>,
        weights: &Tensor<Self>,
        weight_scale: f32,
        cache: &Tensor<Self>,
        queries: Queries,
        pages: Pages,
        out: &mut IntTensor<Self>,
    ) -> Result<()> {
        ensure_shape(
            q.rows == weights.rows && out.rows == q.rows && q.cols == weights.cols * cache.cols,
            "indexer_topk",
            || {
                format!(
                    "q {:?}, weights {:?}, cache {:?}, out [{}, {}]",
                    q.shape(),
                    weights.shape(),
                    cache.shape(),
                    out.rows,
                    out.cols
                )
            },
        )?;
        self.dev.indexer_topk(
            &q.buf,
            q.rows,
            &weights.buf,
            weights.cols,
            weight_scale,
            &cache.buf,
            cache.rows,
            cache.cols,
            queries,
            pages,
            &mut out.buf,
            out.cols,
        )
    }
}
