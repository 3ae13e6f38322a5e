//! The GEMM family on the CPU: `y = x · wᵀ` for FP8 block-scaled, BF16, F16 and F32 weights.
//!
//! Packed weights stay in the checkpoint's mapping and are dequantized tile by tile into scratch
//! (never a full f32 copy). Few rows (decode) take a row-parallel dot-product path; many rows
//! (prefill) dequantize a tile of weight rows and hand it to the `gemm` crate. Both accumulate
//! in f32; FP8 activations are rounded through e4m3 per 1x128 group first, so
//! `Σ_k x'·w'` with `x' = q_x·s_x`, `w' = q_w·s_w` equals DeepSeek's block-scaled sum up to f32
//! rounding.

use half::f16;
use rayon::prelude::*;

use super::scratch::Pool;
use super::simd::{decode_bf16, decode_e4m3, dot, dot_e4m3, SharedMut};
use crate::error::{ensure_shape, Error, Result};
use crate::fp8::{round_trip_row, ScaleFmt};
use crate::model::config::FP8_BLOCK;
use crate::model::weights::{blocks, Bytes, DType, HostLinear};

/// Below this many activation rows, weights are consumed row by row with dot products.
const SMALL_M: usize = 8;

/// How [`linear`] picks its inner loop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GemmMode {
    /// The fastest loop for the number of rows: the result of a row may change in its last
    /// bits with how many rows share the call.
    #[default]
    Fastest,
    /// Every output element is one `dot` of a dequantized weight row, whatever the batch: a
    /// request gets bit-identical logits alone or batched (SGLang's deterministic inference).
    BatchInvariant,
}
/// Weight rows dequantized per tile on the GEMM path.
const TILE_ROWS: usize = 64;
/// Roughly the multiply-adds one parallel task should carry to be worth its scheduling.
const TASK_WORK: usize = 1 << 16;

enum Packed {
    F32(Vec<f32>),
    Bf16(Bytes),
    F16(Bytes),
    /// e4m3 codes with one scale per 128x128 block, `[blocks(rows), blocks(cols)]`.
    Fp8 {
        codes: Bytes,
        scales: Vec<f32>,
    },
}

/// A projection weight `[rows, cols]` (out, in) in its checkpoint format.
pub struct CpuLinear {
    rows: usize,
    cols: usize,
    data: Packed,
}

impl CpuLinear {
    pub fn new(w: &HostLinear) -> Result<Self> {
        let t = &w.weight;
        if t.shape.len() != 2 {
            return Err(Error::shape("load_linear", format!("`{}` is not 2-D: {:?}", t.name, t.shape)));
        }
        let (rows, cols) = (t.shape[0], t.shape[1]);
        let data = match t.dtype {
            // f32 is copied: the mapping gives no alignment guarantee and these are small.
            DType::F32 => Packed::F32(t.to_f32()),
            DType::Bf16 => Packed::Bf16(t.bytes.clone()),
            DType::F16 => Packed::F16(t.bytes.clone()),
            DType::F8E4M3 => {
                let scales = w.scale_inv.clone().ok_or_else(|| {
                    Error::shape("load_linear", format!("FP8 weight `{}` has no block scales", t.name))
                })?;
                ensure_shape(scales.len() == blocks(rows) * blocks(cols), "load_linear", || {
                    format!("`{}` needs {}x{} block scales, got {}", t.name, blocks(rows), blocks(cols), scales.len())
                })?;
                Packed::Fp8 { codes: t.bytes.clone(), scales }
            }
        };
        Ok(CpuLinear { rows, cols, data })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn is_fp8(&self) -> bool {
        matches!(self.data, Packed::Fp8 { .. })
    }

    /// Rows `r0..r0 + out.len() / cols` as f32.
    pub fn dequant_rows(&self, r0: usize, out: &mut [f32]) {
        let k = self.cols;
        let n = out.len() / k;
        let range = r0 * k..(r0 + n) * k;
        match &self.data {
            Packed::F32(v) => out.copy_from_slice(&v[range]),
            Packed::Bf16(b) => decode_bf16(&b.as_slice()[range.start * 2..range.end * 2], out),
            Packed::F16(b) => {
                for (o, c) in out.iter_mut().zip(b.as_slice()[range.start * 2..range.end * 2].chunks_exact(2)) {
                    *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
            Packed::Fp8 { codes, scales } => {
                for (i, orow) in out.chunks_exact_mut(k).enumerate() {
                    let (crow, srow) = self.fp8_row(codes, scales, r0 + i);
                    for ((o, c), &s) in orow.chunks_mut(FP8_BLOCK).zip(crow.chunks(FP8_BLOCK)).zip(srow) {
                        decode_e4m3(c, s, o);
                    }
                }
            }
        }
    }

    /// Row `r` of FP8 weights: its codes and the scales of its 128-row block.
    fn fp8_row<'a>(&self, codes: &'a Bytes, scales: &'a [f32], r: usize) -> (&'a [u8], &'a [f32]) {
        let (k, kb) = (self.cols, blocks(self.cols));
        let b = r / FP8_BLOCK;
        (&codes.as_slice()[r * k..(r + 1) * k], &scales[b * kb..(b + 1) * kb])
    }

    /// `x · row r` for FP8 weights, decoding in registers; `None` for other formats.
    fn fp8_row_dot(&self, r: usize, x: &[f32]) -> Option<f32> {
        let Packed::Fp8 { codes, scales } = &self.data else { return None };
        let (crow, srow) = self.fp8_row(codes, scales, r);
        Some(dot_e4m3(x, crow, srow, FP8_BLOCK))
    }

    /// Row `r` as f32: borrowed for f32 weights, dequantized into `buf` otherwise.
    fn row<'a>(&'a self, r: usize, buf: &'a mut [f32]) -> &'a [f32] {
        let range = r * self.cols..(r + 1) * self.cols;
        match &self.data {
            Packed::F32(v) => &v[range],
            _ => {
                let buf = &mut buf[..self.cols];
                self.dequant_rows(r, buf);
                buf
            }
        }
    }
}

/// Rows of `x` rounded through e4m3 per 1x128 group, as FP8 GEMM inputs see them.
pub fn quantize_rows(x: &[f32], k: usize, fmt: ScaleFmt, out: &mut [f32]) {
    out.copy_from_slice(x);
    for row in out.chunks_mut(k) {
        round_trip_row(row, FP8_BLOCK, fmt);
    }
}

/// `out[m, rows] = x[m, cols] · wᵀ`.
pub fn linear(
    pool: &Pool<f32>,
    mode: GemmMode,
    x: &[f32],
    m: usize,
    w: &CpuLinear,
    quant: Option<ScaleFmt>,
    out: &mut [f32],
) -> Result<()> {
    let (n, k) = (w.rows, w.cols);
    ensure_shape(x.len() == m * k && out.len() == m * n, "linear", || {
        format!("x has {} values for [{m}, {k}], out {} for [{m}, {n}]", x.len(), out.len())
    })?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        out.fill(0.0);
        return Ok(());
    }
    let mut xq = None;
    if let (Some(fmt), true) = (quant, w.is_fp8()) {
        let mut buf = pool.take(m * k);
        quantize_rows(x, k, fmt, &mut buf);
        xq = Some(buf);
    }
    let x = xq.as_deref().unwrap_or(x);
    if mode == GemmMode::BatchInvariant || m < SMALL_M {
        linear_rows(pool, mode, x, m, w, out);
    } else {
        linear_tiles(pool, x, m, w, out);
    }
    Ok(())
}

/// Few activation rows: each weight row is visited once and dotted with every activation row.
fn linear_rows(pool: &Pool<f32>, mode: GemmMode, x: &[f32], m: usize, w: &CpuLinear, out: &mut [f32]) {
    let (n, k) = (w.rows, w.cols);
    let rows_per_task = (TASK_WORK / (k * m).max(1)).clamp(1, n);
    let dst = SharedMut::new(out);
    let task = |r0: usize| {
        let r1 = (r0 + rows_per_task).min(n);
        if m == 1 && w.is_fp8() && mode == GemmMode::Fastest {
            for r in r0..r1 {
                let v = w.fp8_row_dot(r, x).unwrap_or(0.0);
                // SAFETY: element (0, r) belongs to this task's rows alone.
                unsafe { dst.slice(r, 1)[0] = v };
            }
            return;
        }
        let mut buf = pool.take(k);
        for r in r0..r1 {
            let wr = w.row(r, &mut buf);
            for i in 0..m {
                // SAFETY: element (i, r) belongs to this task's rows alone.
                unsafe { dst.slice(i * n + r, 1)[0] = dot(&x[i * k..(i + 1) * k], wr) };
            }
        }
    };
    let tasks = n.div_ceil(rows_per_task);
    if tasks == 1 {
        task(0);
    } else {
        (0..tasks).into_par_iter().for_each(|t| task(t * rows_per_task));
    }
}

/// Many activation rows: f32 weights go straight to `gemm`; packed ones tile by tile.
fn linear_tiles(pool: &Pool<f32>, x: &[f32], m: usize, w: &CpuLinear, out: &mut [f32]) {
    let (n, k) = (w.rows, w.cols);
    if let Packed::F32(wv) = &w.data {
        let threads = if m * n * k >= TASK_WORK * 4 { rayon::current_num_threads() } else { 1 };
        // SAFETY: shapes were checked by `linear`; strides describe x [m,k], wᵀ [k,n], out [m,n].
        unsafe { gemm_into(out.as_mut_ptr(), n, x, m, k, wv, n, threads) };
        return;
    }
    let dst = SharedMut::new(out);
    let tiles = n.div_ceil(TILE_ROWS);
    let task = |tile: usize| {
        let r0 = tile * TILE_ROWS;
        let rows = TILE_ROWS.min(n - r0);
        let mut tile = pool.take(rows * k);
        w.dequant_rows(r0, &mut tile);
        // SAFETY: this task writes only columns r0..r0 + rows of out.
        unsafe { gemm_into(dst.ptr().add(r0), n, x, m, k, &tile, rows, 1) };
    };
    if tiles == 1 || m * n * k < TASK_WORK * 4 {
        (0..tiles).for_each(task);
    } else {
        (0..tiles).into_par_iter().for_each(task);
    }
}

/// `dst[m, n] = x[m, k] · wᵀ` for `w` row-major `[n, k]`, `dst` with row stride `dst_rs`.
///
/// # Safety
/// `dst` must be valid for writes of `m` rows of `n` values at row stride `dst_rs`, and `x`,
/// `w` must hold `m * k` and `n * k` values.
pub unsafe fn gemm_into(
    dst: *mut f32,
    dst_rs: usize,
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    threads: usize,
) {
    debug_assert!(x.len() >= m * k && w.len() >= n * k);
    let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        false,
        x.as_ptr(),
        1,
        k as isize,
        w.as_ptr(),
        k as isize,
        1,
        0.0,
        1.0,
        false,
        false,
        false,
        par,
    );
}

/// Rows `ids` of the table.
pub fn embedding(table: &CpuLinear, ids: &[u32], out: &mut [f32]) -> Result<()> {
    let d = table.cols;
    ensure_shape(out.len() == ids.len() * d, "embedding", || {
        format!("out has {} values for {} ids of width {d}", out.len(), ids.len())
    })?;
    for (&id, row) in ids.iter().zip(out.chunks_exact_mut(d)) {
        if id as usize >= table.rows {
            return Err(Error::Input(format!("token id {id} is outside the vocabulary ({})", table.rows)));
        }
        table.dequant_rows(id as usize, row);
    }
    Ok(())
}
