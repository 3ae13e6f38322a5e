//! The paged caches on the CPU: f32 rows, or bytes (bf16 rows, or the FP8 layouts of
//! `kv_layout`), rounded as they are stored and decoded row by row where the kernels read them.

use super::simd::{decode_bf16, decode_e4m3};
use crate::backend::CacheFormat;
use crate::error::{Error, Result};
use crate::kv_layout::{IndexFp8, LatentFp8, GROUP, PAGE};

/// A cache's storage: values for an `F32` cache, bytes for the others.
pub enum CpuCache {
    F32(Vec<f32>),
    Bytes(Vec<u8>),
}

impl CpuCache {
    pub fn zeros(format: CacheFormat, rows: usize) -> Result<Self> {
        let bytes = format.bytes(rows)?;
        Ok(match format {
            CacheFormat::F32 { .. } => CpuCache::F32(vec![0.0; bytes / 4]),
            _ => CpuCache::Bytes(vec![0; bytes]),
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            CpuCache::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            CpuCache::Bytes(b) => b.clone(),
        }
    }

    /// Overwrites the storage with `bytes` ([`CpuCache::to_bytes`]'s layout, same length).
    pub fn write_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        let len = match self {
            CpuCache::F32(v) => 4 * v.len(),
            CpuCache::Bytes(b) => b.len(),
        };
        if bytes.len() != len {
            return Err(Error::shape("cache_write", format!("{} bytes into a cache of {len}", bytes.len())));
        }
        match self {
            CpuCache::F32(v) => {
                for (x, b) in v.iter_mut().zip(bytes.chunks_exact(4)) {
                    *x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            CpuCache::Bytes(b) => b.copy_from_slice(bytes),
        }
        Ok(())
    }
}

/// A cache's rows as the kernels read them: f32 rows in place, the others decoded on the fly.
#[derive(Clone, Copy)]
pub enum Rows<'a> {
    F32 { data: &'a [f32], cols: usize },
    Bf16 { bytes: &'a [u8], cols: usize },
    Latent { bytes: &'a [u8], layout: LatentFp8 },
    Index { bytes: &'a [u8], layout: IndexFp8 },
}

impl<'a> Rows<'a> {
    pub fn new(cache: &'a CpuCache, format: CacheFormat) -> Result<Self> {
        match (cache, format) {
            (CpuCache::F32(data), CacheFormat::F32 { cols }) => Ok(Rows::F32 { data, cols }),
            (CpuCache::Bytes(bytes), CacheFormat::Bf16 { cols }) => Ok(Rows::Bf16 { bytes, cols }),
            (CpuCache::Bytes(bytes), CacheFormat::Fp8Latent(layout)) => Ok(Rows::Latent { bytes, layout }),
            (CpuCache::Bytes(bytes), CacheFormat::Fp8Index(layout)) => Ok(Rows::Index { bytes, layout }),
            _ => Err(Error::Input(format!("a cache's storage does not match its format {format:?}"))),
        }
    }

    /// Values of one decoded row.
    pub fn cols(&self) -> usize {
        match self {
            Rows::F32 { cols, .. } | Rows::Bf16 { cols, .. } => *cols,
            Rows::Latent { layout, .. } => layout.nope + layout.rope,
            Rows::Index { layout, .. } => layout.dim,
        }
    }

    /// Rows the cache holds.
    pub fn num_rows(&self) -> usize {
        match self {
            Rows::F32 { data, cols } => data.len().checked_div(*cols).unwrap_or(0),
            Rows::Bf16 { bytes, cols } => bytes.len().checked_div(2 * *cols).unwrap_or(0),
            Rows::Latent { bytes, layout } => bytes.len() / layout.token_bytes(),
            Rows::Index { bytes, layout } => bytes.len() / layout.page_bytes() * PAGE,
        }
    }

    pub fn is_f32(&self) -> bool {
        matches!(self, Rows::F32 { .. })
    }

    /// Row `s` (`s < num_rows`) decoded into `out` (`cols` values): exactly `kv_layout`'s `decode`.
    pub fn decode_row(&self, s: usize, out: &mut [f32]) {
        match *self {
            Rows::F32 { data, cols } => out.copy_from_slice(&data[s * cols..(s + 1) * cols]),
            Rows::Bf16 { bytes, cols } => decode_bf16(&bytes[2 * s * cols..2 * (s + 1) * cols], out),
            Rows::Latent { bytes, layout } => {
                let token = &bytes[s * layout.token_bytes()..(s + 1) * layout.token_bytes()];
                let (nope, rope) = out.split_at_mut(layout.nope);
                decode_groups(&token[..layout.nope], &token[layout.scale_offset()..], nope);
                let at = layout.rope_offset();
                decode_bf16(&token[at..at + 2 * layout.rope], rope);
            }
            Rows::Index { bytes, layout } => {
                let k = layout.key(s);
                decode_groups(&bytes[k..k + layout.dim], &bytes[layout.scales(s)..], out);
            }
        }
    }

    /// Rows `s..s + n` (`s + n <= num_rows`) as values: in place in an f32 cache, else decoded into
    /// `buf` (at least `n · cols` long).
    pub fn rows<'o>(&self, s: usize, n: usize, buf: &'o mut [f32]) -> &'o [f32]
    where
        'a: 'o,
    {
        let cols = self.cols();
        if let Rows::F32 { data, .. } = *self {
            return &data[s * cols..(s + n) * cols];
        }
        let buf = &mut buf[..n * cols];
        for (i, row) in buf.chunks_exact_mut(cols).enumerate() {
            self.decode_row(s + i, row);
        }
        buf
    }
}

/// e4m3 `codes` times one little-endian f32 scale per [`GROUP`] of them (from `scales`).
fn decode_groups(codes: &[u8], scales: &[u8], out: &mut [f32]) {
    for (g, (c, o)) in codes.chunks(GROUP).zip(out.chunks_mut(GROUP)).enumerate() {
        let s = f32::from_le_bytes([scales[4 * g], scales[4 * g + 1], scales[4 * g + 2], scales[4 * g + 3]]);
        decode_e4m3(c, s, o);
    }
}

/// Writes cache row `slots[i]` from row `i` of `head` (`head_cols` wide) and, after it, columns
/// `col..` of row `i` of `tail` (`tail_cols` wide); shapes and slots are checked by the caller.
pub fn kv_store(
    cache: &mut CpuCache,
    format: CacheFormat,
    slots: &[u32],
    head: &[f32],
    head_cols: usize,
    tail: Option<(&[f32], usize, usize)>,
) -> Result<()> {
    let cols = format.cols();
    let tail_row = |i: usize| -> &[f32] {
        match tail {
            Some((t, t_cols, col)) => &t[i * t_cols + col..i * t_cols + col + cols - head_cols],
            None => &[],
        }
    };
    for (i, &s) in slots.iter().enumerate() {
        let (s, h) = (s as usize, &head[i * head_cols..(i + 1) * head_cols]);
        match (&mut *cache, format) {
            (CpuCache::F32(data), CacheFormat::F32 { .. }) => {
                let row = &mut data[s * cols..(s + 1) * cols];
                row[..head_cols].copy_from_slice(h);
                row[head_cols..].copy_from_slice(tail_row(i));
            }
            (CpuCache::Bytes(bytes), CacheFormat::Bf16 { .. }) => {
                let row = &mut bytes[2 * s * cols..2 * (s + 1) * cols];
                for (b, v) in row.chunks_exact_mut(2).zip(h.iter().chain(tail_row(i))) {
                    b.copy_from_slice(&half::bf16::from_f32(*v).to_le_bytes());
                }
            }
            (CpuCache::Bytes(bytes), CacheFormat::Fp8Latent(l)) => {
                l.encode(h, tail_row(i), &mut bytes[s * l.token_bytes()..(s + 1) * l.token_bytes()]);
            }
            (CpuCache::Bytes(bytes), CacheFormat::Fp8Index(ix)) => ix.encode(s, h, bytes),
            _ => return Err(Error::Input(format!("a cache's storage does not match its format {format:?}"))),
        }
    }
    Ok(())
}

/// Row `i` of `dst` (`dst_cols` wide) = decoded columns `col..col + dst_cols` of cache row
/// `slots[i]`; shapes and slots are checked by the caller.
pub fn kv_gather(rows: Rows, slots: &[u32], col: usize, dst: &mut [f32], dst_cols: usize) {
    if dst_cols == 0 {
        return;
    }
    let mut row = vec![0.0; if rows.is_f32() { 0 } else { rows.cols() }];
    for (out, &s) in dst.chunks_exact_mut(dst_cols).zip(slots) {
        let s = s as usize;
        match rows {
            Rows::F32 { data, cols } => out.copy_from_slice(&data[s * cols + col..s * cols + col + dst_cols]),
            _ => {
                rows.decode_row(s, &mut row);
                out.copy_from_slice(&row[col..col + dst_cols]);
            }
        }
    }
}
