//! The packed KV caches on the device (`csrc/sm90/mla/kv_pack.cu`): bf16 rows and the FP8
//! layouts, stored (rounded, quantized) and gathered (decoded) bit for bit as the CPU backend
//! does (`src/backend/cpu/kv.rs`), and [`CacheView`], the cache a decode or indexer kernel reads
//! (f32 rows, or packed rows it decodes on load).
//!
//! Slots and column ranges are checked on the host, as the CPU checks them, before anything is
//! queued; byte offsets on the device are 64-bit.

use cudarc::driver::CudaSlice;

use super::mla::{check_slots, fits, last_writes};
use super::params::{
    KvPackParams, FLASHSEEK_KV_BF16, FLASHSEEK_KV_INDEX_FP8, FLASHSEEK_KV_LATENT_FP8, FLASHSEEK_KV_PACK_THREADS,
};
use super::{grid, product, to_u32, CudaDevice};
use crate::backend::CacheFormat;
use crate::error::{ensure_shape, Error, Result};
use crate::fp8::ScaleFmt;
use crate::kv_layout::{IndexFp8, LatentFp8};

/// A paged cache as a kernel reads it: f32 rows, or bytes: bf16 rows of `cols`, or an FP8 layout.
#[derive(Clone, Copy)]
pub enum CacheView<'a> {
    F32(&'a CudaSlice<f32>),
    Bf16(&'a CudaSlice<u8>, usize),
    Latent(&'a CudaSlice<u8>, LatentFp8),
    Index(&'a CudaSlice<u8>, IndexFp8),
}

impl<'a> From<&'a CudaSlice<f32>> for CacheView<'a> {
    fn from(b: &'a CudaSlice<f32>) -> Self {
        CacheView::F32(b)
    }
}

/// The kernels' description of a packed format whose rows take `head` values from the head
/// tensor: `(layout, head width, tail width, ue8m0)`; an FP8 format fixes the head width.
fn pack_layout(format: CacheFormat, head: usize, op: &'static str) -> Result<(u32, usize, usize, u32)> {
    match format {
        CacheFormat::Bf16 { cols } => Ok((FLASHSEEK_KV_BF16, head, cols.saturating_sub(head), 0)),
        CacheFormat::Fp8Latent(l) => Ok((FLASHSEEK_KV_LATENT_FP8, l.nope, l.rope, 1)),
        CacheFormat::Fp8Index(ix) => Ok((FLASHSEEK_KV_INDEX_FP8, ix.dim, 0, u32::from(ix.fmt == ScaleFmt::Ue8m0))),
        CacheFormat::F32 { .. } => Err(Error::shape(op, "an f32 cache is not packed".to_string())),
    }
}

impl CudaDevice {
    /// The CPU's `kv_store` into a packed cache of `cache_rows` rows of `format`: cache row
    /// `slots[i]` = row `i` of `head` (rows of `head_cols`: for an FP8 format exactly the
    /// quantized width), then the rest of the row (an FP8 latent's rope key) from columns
    /// `col..` of row `i` of `tail` (`(buffer, width, col)`), rounded or quantized to the format.
    /// Where a slot repeats, the last row wins.
    #[allow(clippy::too_many_arguments)]
    pub fn kv_pack(
        &self,
        cache: &mut CudaSlice<u8>,
        format: CacheFormat,
        cache_rows: usize,
        slots: &[u32],
        head: &CudaSlice<f32>,
        head_cols: usize,
        tail: Option<(&CudaSlice<f32>, usize, usize)>,
    ) -> Result<()> {
        const OP: &str = "kv_store";
        let (layout, nope, rope, ue8m0) = pack_layout(format, head_cols, OP)?;
        let tail_ok = match tail {
            Some((_, width, col)) => rope > 0 && fits(col, rope, width),
            None => rope == 0,
        };
        ensure_shape(head_cols == nope && nope + rope == format.cols() && tail_ok, OP, || {
            format!(
                "{} slots from rows of {head_cols} and tail {:?} into {format:?}",
                slots.len(),
                tail.map(|t| (t.1, t.2))
            )
        })?;
        check_slots(slots, cache_rows, OP)?;
        grid(slots.len(), OP)?;
        let (head_ptr, _head) = self.input(head, product(slots.len(), head_cols, OP)?, OP, "head")?;
        let (tail_ptr, _tail, tail_stride, tail_col) = match tail {
            Some((t, width, col)) => {
                let (ptr, guard) = self.input(t, product(slots.len(), width, OP)?, OP, "tail")?;
                (ptr, Some(guard), to_u32(width, OP, "tail width")?, to_u32(col, OP, "tail column")?)
            }
            None => (0, None, 0, 0),
        };
        let (cache_ptr, _cache) = self.output(cache, format.bytes(cache_rows)?, OP, "cache")?;
        let pairs = last_writes(slots);
        let count = grid(pairs.len() / 2, OP)?;
        if count == 0 {
            return Ok(());
        }
        let pairs_dev = self.upload(&pairs)?;
        let (pairs_ptr, _pairs) = self.input(&pairs_dev, pairs.len(), OP, "rows")?;
        let p = KvPackParams {
            head: head_ptr as *const f32,
            tail: tail_ptr as *const f32,
            cache: cache_ptr as *mut u8,
            dst: std::ptr::null_mut(),
            pairs: pairs_ptr as *const u32,
            count,
            layout,
            nope: to_u32(nope, OP, "width")?,
            rope: to_u32(rope, OP, "rope width")?,
            ue8m0,
            head_stride: to_u32(head_cols, OP, "width")?,
            tail_stride,
            tail_col,
            dst_stride: 0,
            col: 0,
            n: 0,
        };
        // SAFETY: block i reads row r = pairs[2i] < slots.len() of head (head_cols values,
        // slots.len() rows checked) and, where rope > 0, columns tail_col..tail_col + rope of
        // row r of tail (within its width, checked), and writes the bytes of cache row
        // pairs[2i + 1] < cache_rows (checked) of the layout, within format.bytes(cache_rows)
        // (checked); no two pairs share a row. cudarc frees `pairs_dev` on the stream, after
        // the kernel.
        unsafe { self.launch(&self.kernels.kv_pack, OP, count, FLASHSEEK_KV_PACK_THREADS, &p) }
    }

    /// The CPU's `kv_gather` from a packed cache of `cache_rows` rows of `format`: row `i` of
    /// `dst` (`slots.len()` rows of `dst_cols`) = decoded columns `col..col + dst_cols` of cache
    /// row `slots[i]`.
    #[allow(clippy::too_many_arguments)]
    pub fn kv_unpack(
        &self,
        cache: &CudaSlice<u8>,
        format: CacheFormat,
        cache_rows: usize,
        slots: &[u32],
        col: usize,
        dst: &mut CudaSlice<f32>,
        dst_cols: usize,
    ) -> Result<()> {
        const OP: &str = "kv_gather";
        let (layout, nope, rope, ue8m0) = pack_layout(format, format.cols(), OP)?;
        ensure_shape(fits(col, dst_cols, format.cols()), OP, || {
            format!("{} slots, columns {col}+{dst_cols} of {format:?}", slots.len())
        })?;
        check_slots(slots, cache_rows, OP)?;
        let count = grid(slots.len(), OP)?;
        let (cache_ptr, _cache) = self.input(cache, format.bytes(cache_rows)?, OP, "cache")?;
        let (dst_ptr, _dst) = self.output(dst, product(slots.len(), dst_cols, OP)?, OP, "destination")?;
        if count == 0 || dst_cols == 0 {
            return Ok(());
        }
        // Row i < slots.len(), which fits a u32 (checked by grid).
        let pairs: Vec<u32> = slots.iter().enumerate().flat_map(|(i, &s)| [s, i as u32]).collect();
        let pairs_dev = self.upload(&pairs)?;
        let (pairs_ptr, _pairs) = self.input(&pairs_dev, pairs.len(), OP, "rows")?;
        let p = KvPackParams {
            head: std::ptr::null(),
            tail: std::ptr::null(),
            cache: cache_ptr as *mut u8,
            dst: dst_ptr as *mut f32,
            pairs: pairs_ptr as *const u32,
            count,
            layout,
            nope: to_u32(nope, OP, "width")?,
            rope: to_u32(rope, OP, "rope width")?,
            ue8m0,
            head_stride: 0,
            tail_stride: 0,
            tail_col: 0,
            dst_stride: to_u32(dst_cols, OP, "width")?,
            col: to_u32(col, OP, "column")?,
            n: to_u32(dst_cols, OP, "columns")?,
        };
        // SAFETY: block i reads cache row pairs[2i] < cache_rows (checked), its decoded columns
        // col..col + n within the row (checked), bytes within format.bytes(cache_rows) (checked),
        // and writes row pairs[2i + 1] < slots.len() of dst (dst_cols values, checked). The
        // kernel only reads through `cache`. cudarc frees `pairs_dev` on the stream.
        unsafe { self.launch(&self.kernels.kv_unpack, OP, count, FLASHSEEK_KV_PACK_THREADS, &p) }
    }
}
