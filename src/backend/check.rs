//! The shape contract of the `Backend` trait's methods, checked the same way by every backend
//! before it reaches its kernels (which check what only they know: page tables, ids, formats).

use super::{Backend, HeadCols, MlaDims, RouterParams};
use crate::error::{ensure_shape, Result};
use crate::tensor::{IntTensor, Tensor};

/// Values of a 1-D weight held as a `[1, n]` (or any) tensor.
fn len<B: Backend>(t: &Tensor<B>) -> usize {
    t.rows * t.cols
}

pub fn same_shape<B: Backend>(a: &Tensor<B>, b: &Tensor<B>, op: &'static str) -> Result<()> {
    ensure_shape(a.shape() == b.shape(), op, || format!("{:?} and {:?}", a.shape(), b.shape()))
}

pub fn copy_rows<B: Backend>(src: &Tensor<B>, src_row: usize, dst: &Tensor<B>, dst_row: usize, n: usize) -> Result<()> {
    let fits = |row: usize, rows: usize| row.checked_add(n).is_some_and(|end| end <= rows);
    ensure_shape(dst.cols == src.cols && fits(src_row, src.rows) && fits(dst_row, dst.rows), "copy_rows", || {
        format!("rows {src_row}+{n} of {:?} to row {dst_row} of {:?}", src.shape(), dst.shape())
    })
}

/// `out = x · wᵀ` for a weight `[w_rows, w_cols]`.
pub fn linear<B: Backend>(x: &Tensor<B>, w_rows: usize, w_cols: usize, out: &Tensor<B>) -> Result<()> {
    ensure_shape(x.cols == w_cols && out.rows == x.rows && out.cols == w_rows, "linear", || {
        format!("x {:?} · w [{w_rows}, {w_cols}]ᵀ into {:?}", x.shape(), out.shape())
    })
}

pub fn embedding<B: Backend>(ids: usize, table_cols: usize, out: &Tensor<B>) -> Result<()> {
    ensure_shape(out.rows == ids && out.cols == table_cols, "embedding", || {
        format!("{ids} ids of width {table_cols} into {:?}", out.shape())
    })
}

pub fn route<B: Backend>(
    logits: &Tensor<B>,
    bias: &Tensor<B>,
    params: RouterParams,
    idx: &IntTensor<B>,
    weights: &Tensor<B>,
) -> Result<()> {
    ensure_shape(
        logits.cols == len(bias)
            && idx.rows == logits.rows
            && weights.rows == logits.rows
            && idx.cols == params.top_k
            && weights.cols == params.top_k,
        "route",
        || {
            format!(
                "logits {:?}, bias {}, idx [{}, {}], weights {:?}",
                logits.shape(),
                len(bias),
                idx.rows,
                idx.cols,
                weights.shape()
            )
        },
    )
}

pub fn moe_experts<B: Backend>(x: &Tensor<B>, idx: &IntTensor<B>, weights: &Tensor<B>, out: &Tensor<B>) -> Result<()> {
    ensure_shape(idx.rows == x.rows && weights.rows == x.rows && idx.cols == weights.cols, "moe_experts", || {
        format!("x {:?}, idx [{}, {}], weights {:?}", x.shape(), idx.rows, idx.cols, weights.shape())
    })?;
    same_shape(x, out, "moe_experts")
}

pub fn rms_norm<B: Backend>(x: &Tensor<B>, w: &Tensor<B>, out: &Tensor<B>) -> Result<()> {
    ensure_shape(out.rows == x.rows && out.cols == len(w), "rms_norm", || {
        format!("x {:?}, weight {}, out {:?}", x.shape(), len(w), out.shape())
    })
}

pub fn add_rms_norm<B: Backend>(residual: &Tensor<B>, delta: &Tensor<B>, w: &Tensor<B>, out: &Tensor<B>) -> Result<()> {
    same_shape(residual, delta, "add_rms_norm")?;
    same_shape(residual, out, "add_rms_norm")?;
    ensure_shape(len(w) == residual.cols, "add_rms_norm", || {
        format!("weight of {} for rows of {}", len(w), residual.cols)
    })
}

pub fn layer_norm<B: Backend>(x: &Tensor<B>, w: &Tensor<B>, b: &Tensor<B>) -> Result<()> {
    ensure_shape(x.cols == len(w) && len(b) == len(w), "layer_norm", || {
        format!("x {:?}, weight {}, bias {}", x.shape(), len(w), len(b))
    })
}

pub fn rope<B: Backend>(x: &Tensor<B>, heads: HeadCols, cos_sin: &Tensor<B>) -> Result<()> {
    ensure_shape(cos_sin.rows == x.rows && cos_sin.cols == heads.dim, "rope", || {
        format!("x {:?}, cos_sin {:?}, heads {heads:?}", x.shape(), cos_sin.shape())
    })
}

/// Rows cut into `segment`-wide pieces (fp8_round, hadamard).
pub fn segments<B: Backend>(x: &Tensor<B>, segment: usize, op: &'static str) -> Result<()> {
    ensure_shape(segment > 0 && x.cols % segment == 0, op, || format!("{:?} in segments of {segment}", x.shape()))
}

pub fn absorb_q<B: Backend>(q: &Tensor<B>, dims: MlaDims, out: &Tensor<B>) -> Result<()> {
    ensure_shape(
        q.cols == dims.heads * dims.qk() && out.rows <= q.rows && out.cols == dims.heads * dims.latent(),
        "absorb_q",
        || format!("q {:?}, out {:?}, dims {dims:?}", q.shape(), out.shape()),
    )
}

/// `topk` (when given) has a row for every query row, and may have more.
pub fn mla_decode<B: Backend>(
    q_lat: &Tensor<B>,
    cache: &Tensor<B>,
    topk: Option<&IntTensor<B>>,
    dims: MlaDims,
    out: &Tensor<B>,
) -> Result<()> {
    ensure_shape(
        cache.cols == dims.latent()
            && q_lat.cols == dims.heads * dims.latent()
            && out.rows == q_lat.rows
            && out.cols == dims.heads * dims.kv_lora
            && topk.is_none_or(|t| t.rows >= q_lat.rows),
        "mla_decode",
        || format!("q_lat {:?}, cache {:?}, out {:?}, dims {dims:?}", q_lat.shape(), cache.shape(), out.shape()),
    )
}

pub fn absorb_out<B: Backend>(o_lat: &Tensor<B>, dims: MlaDims, out: &Tensor<B>) -> Result<()> {
    ensure_shape(
        out.rows == o_lat.rows && o_lat.cols == dims.heads * dims.kv_lora && out.cols == dims.heads * dims.v,
        "absorb_out",
        || format!("o_lat {:?}, out {:?}, dims {dims:?}", o_lat.shape(), out.shape()),
    )
}

pub fn mla_prefill<B: Backend>(
    q: &Tensor<B>,
    kv: &Tensor<B>,
    kpe: &Tensor<B>,
    topk: Option<&IntTensor<B>>,
    dims: MlaDims,
    out: &Tensor<B>,
) -> Result<()> {
    ensure_shape(
        q.cols == dims.heads * dims.qk()
            && kv.cols == dims.heads * (dims.nope + dims.v)
            && kpe.cols == dims.rope
            && kpe.rows * kpe.cols == kv.rows * dims.rope
            && out.rows == q.rows
            && out.cols == dims.heads * dims.v
            && topk.is_none_or(|t| t.rows >= q.rows),
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
    )
}

pub fn indexer_topk<B: Backend>(
    q: &Tensor<B>,
    weights: &Tensor<B>,
    cache: &Tensor<B>,
    out: &IntTensor<B>,
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
    )
}

/// One step row per slot (kv_store's source, kv_gather's destination).
pub fn rows_per_slot<B: Backend>(rows: &Tensor<B>, slots: usize, op: &'static str) -> Result<()> {
    ensure_shape(rows.rows == slots, op, || format!("{slots} slots for {:?}", rows.shape()))
}
