//! The shape contract of the `Backend` trait's methods, checked the same way by every backend
//! before it reaches its kernels (which check what only they know: page tables, ids, formats).

use super::{Backend, CacheFormat, HeadCols, MlaDims, RouterParams};
use crate::error::{ensure_shape, Error, Result};
use crate::tensor::{CacheTensor, IntTensor, Tensor};

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

/// The cache is an MLA latent cache of `dims`: f32 rows of `kv_lora + rope`, or the FP8 latent
/// layout of those widths.
fn latent_cache(format: CacheFormat, dims: MlaDims) -> bool {
    match format {
        CacheFormat::F32 { cols } | CacheFormat::Bf16 { cols } => cols == dims.latent(),
        CacheFormat::Fp8Latent(l) => l.nope == dims.kv_lora && l.rope == dims.rope,
        CacheFormat::Fp8Index(_) => false,
    }
}

/// `topk` (when given) has a row for every query row, and may have more.
pub fn mla_decode<B: Backend>(
    q_lat: &Tensor<B>,
    cache: &CacheTensor<B>,
    topk: Option<&IntTensor<B>>,
    dims: MlaDims,
    out: &Tensor<B>,
) -> Result<()> {
    ensure_shape(
        latent_cache(cache.format, dims)
            && q_lat.cols == dims.heads * dims.latent()
            && out.rows == q_lat.rows
            && out.cols == dims.heads * dims.kv_lora
            && topk.is_none_or(|t| t.rows >= q_lat.rows),
        "mla_decode",
        || format!("q_lat {:?}, cache {:?}, out {:?}, dims {dims:?}", q_lat.shape(), cache.format, out.shape()),
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

/// The cache holds index keys: f32 rows or the FP8 index layout.
pub fn indexer_topk<B: Backend>(
    q: &Tensor<B>,
    weights: &Tensor<B>,
    cache: &CacheTensor<B>,
    out: &IntTensor<B>,
) -> Result<()> {
    ensure_shape(
        q.rows == weights.rows
            && out.rows == q.rows
            && q.cols == weights.cols * cache.cols()
            && !matches!(cache.format, CacheFormat::Fp8Latent(_)),
        "indexer_topk",
        || {
            format!(
                "q {:?}, weights {:?}, cache {:?}, out [{}, {}]",
                q.shape(),
                weights.shape(),
                cache.format,
                out.rows,
                out.cols
            )
        },
    )
}

/// Every slot addresses a row of the cache.
fn slots_in<B: Backend>(cache: &CacheTensor<B>, slots: &[u32], op: &'static str) -> Result<()> {
    match slots.iter().find(|&&s| s as usize >= cache.rows) {
        Some(s) => Err(Error::shape(op, format!("slot {s} outside the cache ({} rows)", cache.rows))),
        None => Ok(()),
    }
}

/// `kv_store`'s contract; returns how many columns come from `tail`. An FP8 cache's `head` is
/// its quantized part exactly, so every scale group is whole.
pub fn kv_store<B: Backend>(
    cache: &CacheTensor<B>,
    slots: &[u32],
    head: &Tensor<B>,
    tail: Option<(&Tensor<B>, usize)>,
) -> Result<usize> {
    const OP: &str = "kv_store";
    let cols = cache.cols();
    let head_cols_ok = match cache.format {
        CacheFormat::F32 { cols } | CacheFormat::Bf16 { cols } => head.cols <= cols,
        CacheFormat::Fp8Latent(l) => head.cols == l.nope,
        CacheFormat::Fp8Index(ix) => head.cols == ix.dim,
    };
    let rest = cols.saturating_sub(head.cols);
    let tail_ok = match tail {
        Some((t, col)) => rest > 0 && t.rows == slots.len() && col.checked_add(rest).is_some_and(|end| end <= t.cols),
        None => rest == 0,
    };
    ensure_shape(head.rows == slots.len() && head_cols_ok && tail_ok, OP, || {
        format!(
            "{} slots from head {:?} and tail {:?} into a cache of {:?}",
            slots.len(),
            head.shape(),
            tail.map(|(t, col)| (t.shape(), col)),
            cache.format
        )
    })?;
    slots_in(cache, slots, OP)?;
    Ok(rest)
}

/// `kv_gather`'s contract: one `dst` row per slot, columns within the decoded row.
pub fn kv_gather<B: Backend>(cache: &CacheTensor<B>, slots: &[u32], col: usize, dst: &Tensor<B>) -> Result<()> {
    const OP: &str = "kv_gather";
    ensure_shape(
        dst.rows == slots.len() && col.checked_add(dst.cols).is_some_and(|end| end <= cache.cols()),
        OP,
        || format!("{} slots into {:?} from column {col} of {:?}", slots.len(), dst.shape(), cache.format),
    )?;
    slots_in(cache, slots, OP)
}
