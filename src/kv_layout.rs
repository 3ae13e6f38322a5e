//! Byte layouts of the FP8 paged caches (`--kv-cache-dtype fp8_e4m3`) and their encoding: the
//! twin of `csrc/common/kv_layout.cuh` (tests/kv_layout.rs checks every offset against it).
//!
//! - MLA latent, per token (FlashMLA's DeepSeek-V3.2 layout, 656 bytes at 512 + 64): the NoPE
//!   part as e4m3 codes, one f32 power-of-two scale per 128 of them, then the RoPE key in bf16.
//! - Indexer keys, per page of [`PAGE`] positions: the keys' e4m3 codes, then their f32 scales
//!   (one per 128 columns), so a page's codes are one contiguous `[PAGE, dim]` matrix.
//!
//! Every region starts on a 16-byte boundary, so device kernels can move 16-byte vectors.

use crate::error::{Error, Result};
use crate::fp8::{e4m3_code, group_scale, ScaleFmt, E4M3_MAX, E4M3_TO_F32};
use crate::kv_cache::BLOCK_SIZE;

/// Positions per cache page.
pub const PAGE: usize = BLOCK_SIZE;
/// Values sharing one scale.
pub const GROUP: usize = 128;
const ALIGN: usize = 16;

fn align_up(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

fn check_cols(what: &str, cols: usize) -> Result<()> {
    if cols == 0 || cols % ALIGN != 0 {
        return Err(Error::Input(format!(
            "an FP8 KV cache needs the {what} width to be a positive multiple of {ALIGN}, not {cols}"
        )));
    }
    Ok(())
}

/// Quantizes `src` in groups of [`GROUP`] into `codes`, writing one scale per group.
fn encode_groups(src: &[f32], fmt: ScaleFmt, codes: &mut [u8], mut scales: impl FnMut(usize, f32)) {
    for (g, (x, c)) in src.chunks(GROUP).zip(codes.chunks_mut(GROUP)).enumerate() {
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let s = group_scale(amax, fmt);
        for (v, c) in x.iter().zip(c) {
            *c = e4m3_code((v / s).clamp(-E4M3_MAX, E4M3_MAX));
        }
        scales(g, s);
    }
}

fn f32_at(bytes: &[u8], at: usize) -> f32 {
    f32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// One token of the FP8 MLA latent cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatentFp8 {
    pub nope: usize,
    pub rope: usize,
}

impl LatentFp8 {
    pub fn new(nope: usize, rope: usize) -> Result<Self> {
        check_cols("latent (kv_lora_rank)", nope)?;
        Ok(LatentFp8 { nope, rope })
    }

    pub fn groups(&self) -> usize {
        self.nope.div_ceil(GROUP)
    }

    pub fn scale_offset(&self) -> usize {
        self.nope
    }

    pub fn rope_offset(&self) -> usize {
        align_up(self.scale_offset() + 4 * self.groups())
    }

    pub fn token_bytes(&self) -> usize {
        align_up(self.rope_offset() + 2 * self.rope)
    }

    /// Writes one token: `nope` quantized with power-of-two scales (FlashMLA's), `rope` rounded
    /// to bf16 (to nearest, ties to even). `token` is [`LatentFp8::token_bytes`] long; its
    /// padding is zeroed.
    pub fn encode(&self, nope: &[f32], rope: &[f32], token: &mut [u8]) {
        token.fill(0);
        let (codes, rest) = token.split_at_mut(self.nope);
        encode_groups(&nope[..self.nope], ScaleFmt::Ue8m0, codes, |g, s| {
            rest[4 * g..4 * g + 4].copy_from_slice(&s.to_le_bytes());
        });
        let at = self.rope_offset();
        for (i, v) in rope[..self.rope].iter().enumerate() {
            token[at + 2 * i..at + 2 * i + 2].copy_from_slice(&half::bf16::from_f32(*v).to_le_bytes());
        }
    }

    /// The token's `nope + rope` values, dequantized.
    pub fn decode(&self, token: &[u8], out: &mut [f32]) {
        for (g, (c, o)) in token[..self.nope].chunks(GROUP).zip(out[..self.nope].chunks_mut(GROUP)).enumerate() {
            let s = f32_at(token, self.scale_offset() + 4 * g);
            for (c, o) in c.iter().zip(o) {
                *o = E4M3_TO_F32[*c as usize] * s;
            }
        }
        let at = self.rope_offset();
        for (i, o) in out[self.nope..self.nope + self.rope].iter_mut().enumerate() {
            *o = half::bf16::from_le_bytes([token[at + 2 * i], token[at + 2 * i + 1]]).to_f32();
        }
    }
}

/// The FP8 indexer key cache, page by page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexFp8 {
    pub dim: usize,
    /// How the keys' scales are derived (the model's indexer scale format).
    pub fmt: ScaleFmt,
}

impl IndexFp8 {
    pub fn new(dim: usize, fmt: ScaleFmt) -> Result<Self> {
        check_cols("indexer key (index_head_dim)", dim)?;
        Ok(IndexFp8 { dim, fmt })
    }

    pub fn scales_per_key(&self) -> usize {
        self.dim.div_ceil(GROUP)
    }

    fn scale_region(&self) -> usize {
        PAGE * self.dim
    }

    pub fn page_bytes(&self) -> usize {
        self.scale_region() + PAGE * 4 * self.scales_per_key()
    }

    /// Byte offset of cache row `slot`'s `dim` codes.
    pub fn key(&self, slot: usize) -> usize {
        slot / PAGE * self.page_bytes() + slot % PAGE * self.dim
    }

    /// Byte offset of cache row `slot`'s scales.
    pub fn scales(&self, slot: usize) -> usize {
        slot / PAGE * self.page_bytes() + self.scale_region() + slot % PAGE * 4 * self.scales_per_key()
    }

    /// Quantizes `key` into cache row `slot` of `cache` (whole pages).
    pub fn encode(&self, slot: usize, key: &[f32], cache: &mut [u8]) {
        let (k, s) = (self.key(slot), self.scales(slot));
        let (head, tail) = cache.split_at_mut(s);
        encode_groups(&key[..self.dim], self.fmt, &mut head[k..k + self.dim], |g, v| {
            tail[4 * g..4 * g + 4].copy_from_slice(&v.to_le_bytes());
        });
    }

    /// Cache row `slot`'s key, dequantized.
    pub fn decode(&self, slot: usize, cache: &[u8], out: &mut [f32]) {
        let (k, s) = (self.key(slot), self.scales(slot));
        for (g, (c, o)) in cache[k..k + self.dim].chunks(GROUP).zip(out[..self.dim].chunks_mut(GROUP)).enumerate() {
            let scale = f32_at(cache, s + 4 * g);
            for (c, o) in c.iter().zip(o) {
                *o = E4M3_TO_F32[*c as usize] * scale;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fp8::round_trip_row;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e37_79b9) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32 - 0.5) * 6.0
            })
            .collect()
    }

    #[test]
    fn deepseek_v32_latent_token_is_656_bytes() {
        let l = LatentFp8::new(512, 64).unwrap();
        assert_eq!((l.scale_offset(), l.rope_offset(), l.token_bytes()), (512, 528, 656));
        assert!(LatentFp8::new(100, 64).is_err());
    }

    #[test]
    fn latent_round_trip_is_act_quant_with_power_of_two_scales() {
        for (nope, rope) in [(512, 64), (128, 64), (144, 8)] {
            let l = LatentFp8::new(nope, rope).unwrap();
            let x = values(nope + rope, nope as u32);
            let mut token = vec![0xaa; l.token_bytes()];
            l.encode(&x[..nope], &x[nope..], &mut token);
            let mut got = vec![0.0; nope + rope];
            l.decode(&token, &mut got);
            let mut want = x[..nope].to_vec();
            round_trip_row(&mut want, GROUP, ScaleFmt::Ue8m0);
            want.extend(x[nope..].iter().map(|v| half::bf16::from_f32(*v).to_f32()));
            assert_eq!(got, want);
        }
    }

    #[test]
    fn index_pages_hold_codes_then_scales() {
        let ix = IndexFp8::new(128, ScaleFmt::Exact).unwrap();
        assert_eq!(ix.page_bytes(), 64 * 128 + 64 * 4);
        assert_eq!((ix.key(65), ix.scales(65)), (ix.page_bytes() + 128, ix.page_bytes() + 64 * 128 + 4));
        for fmt in [ScaleFmt::Exact, ScaleFmt::Ue8m0] {
            let ix = IndexFp8::new(192, fmt).unwrap();
            let mut cache = vec![0u8; 3 * ix.page_bytes()];
            let keys: Vec<Vec<f32>> = (0..3 * PAGE).map(|t| values(192, t as u32 + 1)).collect();
            for (t, k) in keys.iter().enumerate().rev() {
                ix.encode(t, k, &mut cache);
            }
            for (t, k) in keys.iter().enumerate() {
                let mut got = vec![0.0; 192];
                ix.decode(t, &cache, &mut got);
                let mut want = k.clone();
                round_trip_row(&mut want, GROUP, fmt);
                assert_eq!(got, want, "slot {t}");
            }
        }
    }
}
