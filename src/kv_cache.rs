//! The paged KV cache: per layer, the MLA latent (`kv_lora_rank` + rope dims per token) and,
//! for V3.2, the indexer's key; in blocks of 64 positions handed out by a ref-counted allocator
//! (a block can back several sequences that share a prefix). Rows are f32 or FP8
//! (`--kv-cache-dtype`, [`CacheFormat`]).

use std::fmt;
use std::str::FromStr;

use crate::backend::{Backend, CacheFormat};
use crate::error::{Error, Result};
use crate::fp8::ScaleFmt;
use crate::kv_layout::{IndexFp8, LatentFp8};
use crate::model::config::ModelConfig;
use crate::tensor::CacheTensor;

/// Positions per cache block.
pub const BLOCK_SIZE: usize = 64;

/// What the cache stores (`--kv-cache-dtype`, SGLang's flag and values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvCacheDtype {
    /// The values as computed (f32).
    #[default]
    Auto,
    /// bf16: the latent and the index keys rounded to bf16 (FlashMLA's non-FP8 cache).
    Bf16,
    /// FP8 e4m3: the MLA latent in FlashMLA's layout and, for V3.2, the indexer keys.
    Fp8E4m3,
}

impl KvCacheDtype {
    pub fn as_str(&self) -> &'static str {
        match self {
            KvCacheDtype::Auto => "auto",
            KvCacheDtype::Bf16 => "bf16",
            KvCacheDtype::Fp8E4m3 => "fp8_e4m3",
        }
    }
}

impl fmt::Display for KvCacheDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KvCacheDtype {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(KvCacheDtype::Auto),
            "bf16" => Ok(KvCacheDtype::Bf16),
            "fp8_e4m3" => Ok(KvCacheDtype::Fp8E4m3),
            "fp8_e5m2" | "fp4_e2m1" => {
                Err(format!("--kv-cache-dtype {s} is not supported yet; use auto, bf16 or fp8_e4m3"))
            }
            _ => Err(format!("unknown --kv-cache-dtype {s:?}: expected auto, bf16 or fp8_e4m3")),
        }
    }
}

/// The formats of one layer's caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheFormats {
    pub latent: CacheFormat,
    /// The indexer keys' (V3.2 only).
    pub index: Option<CacheFormat>,
}

impl CacheFormats {
    /// The formats `dtype` gives `cfg`'s caches; `index_fmt` is the scale format of FP8 index
    /// keys (the model's indexer format).
    pub fn new(cfg: &ModelConfig, dtype: KvCacheDtype, index_fmt: ScaleFmt) -> Result<Self> {
        let (nope, rope) = (cfg.kv_lora_rank, cfg.qk_rope_head_dim);
        Ok(match dtype {
            KvCacheDtype::Auto => CacheFormats {
                latent: CacheFormat::F32 { cols: nope + rope },
                index: cfg.indexer.map(|ix| CacheFormat::F32 { cols: ix.head_dim }),
            },
            KvCacheDtype::Bf16 => CacheFormats {
                latent: CacheFormat::Bf16 { cols: nope + rope },
                index: cfg.indexer.map(|ix| CacheFormat::Bf16 { cols: ix.head_dim }),
            },
            KvCacheDtype::Fp8E4m3 => CacheFormats {
                latent: CacheFormat::Fp8Latent(LatentFp8::new(nope, rope)?),
                index: cfg
                    .indexer
                    .map(|ix| IndexFp8::new(ix.head_dim, index_fmt).map(CacheFormat::Fp8Index))
                    .transpose()?,
            },
        })
    }

    /// Bytes one position takes in one layer.
    pub fn bytes_per_token(&self) -> usize {
        self.latent.row_bytes() + self.index.map_or(0, |f| f.row_bytes())
    }
}

/// Hands out block ids; a block returns to the free list when its last holder releases it.
pub struct BlockAllocator {
    free: Vec<u32>,
    refs: Vec<u32>,
}

impl BlockAllocator {
    pub fn new(num_blocks: usize) -> Self {
        BlockAllocator {
            // Popped from the end, so block 0 goes first.
            free: (0..num_blocks as u32).rev().collect(),
            refs: vec![0; num_blocks],
        }
    }

    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    pub fn num_blocks(&self) -> usize {
        self.refs.len()
    }

    /// Holders of a block (0 when it is free or out of range).
    pub fn ref_count(&self, block: u32) -> u32 {
        self.refs.get(block as usize).copied().unwrap_or(0)
    }

    pub fn allocate(&mut self) -> Option<u32> {
        let b = self.free.pop()?;
        self.refs[b as usize] = 1;
        Some(b)
    }

    /// Adds a holder to a block in use (a sequence reusing a cached prefix).
    pub fn share(&mut self, block: u32) -> Result<()> {
        match self.refs.get_mut(block as usize) {
            Some(r) if *r > 0 => {
                *r += 1;
                Ok(())
            }
            _ => Err(Error::Input(format!("block {block} is not in use and cannot be shared"))),
        }
    }

    pub fn release(&mut self, block: u32) -> Result<()> {
        match self.refs.get_mut(block as usize) {
            Some(r) if *r > 0 => {
                *r -= 1;
                if *r == 0 {
                    self.free.push(block);
                }
                Ok(())
            }
            _ => Err(Error::Input(format!("block {block} released but not in use"))),
        }
    }
}

/// Cache storage of every layer plus the allocator of its blocks.
pub struct KvCache<B: Backend> {
    /// `blocks·64` rows of the latent (`kv_lora_rank + qk_rope_head_dim` values) per layer.
    pub(crate) latent: Vec<CacheTensor<B>>,
    /// `blocks·64` rows of the index key (`index_head_dim` values) per layer (V3.2 only).
    pub(crate) index: Vec<CacheTensor<B>>,
    formats: CacheFormats,
    allocator: BlockAllocator,
}

impl<B: Backend> KvCache<B> {
    pub fn new(backend: &B, formats: CacheFormats, num_layers: usize, num_blocks: usize) -> Result<Self> {
        let slots = num_blocks * BLOCK_SIZE;
        let latent = (0..num_layers).map(|_| backend.cache_zeros(formats.latent, slots)).collect::<Result<_>>()?;
        let index = match formats.index {
            Some(f) => (0..num_layers).map(|_| backend.cache_zeros(f, slots)).collect::<Result<_>>()?,
            None => Vec::new(),
        };
        Ok(KvCache { latent, index, formats, allocator: BlockAllocator::new(num_blocks) })
    }

    pub fn formats(&self) -> CacheFormats {
        self.formats
    }

    pub fn allocator(&mut self) -> &mut BlockAllocator {
        &mut self.allocator
    }

    /// Grows `table` until it covers `len` positions.
    pub fn reserve(&mut self, table: &mut Vec<u32>, len: usize) -> Result<()> {
        let need = len.div_ceil(BLOCK_SIZE);
        if need.saturating_sub(table.len()) > self.allocator.num_free() {
            return Err(Error::Input(format!(
                "the KV cache has {} free blocks of {BLOCK_SIZE}; {len} positions need {} more",
                self.allocator.num_free(),
                need - table.len()
            )));
        }
        while table.len() < need {
            let b = self.allocator.allocate().ok_or_else(|| Error::Input("the KV cache ran out of blocks".into()))?;
            table.push(b);
        }
        Ok(())
    }

    /// Releases every block of `table` and empties it.
    pub fn release(&mut self, table: &mut Vec<u32>) -> Result<()> {
        for b in table.drain(..) {
            self.allocator.release(b)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DeepSeek-V3.2's bytes per token and layer: 656 + 132 with the FP8 cache, 2304 + 512 with
    /// the f32 one.
    #[test]
    fn deepseek_v32_bytes_per_token() {
        let fp8 = CacheFormats {
            latent: CacheFormat::Fp8Latent(LatentFp8::new(512, 64).unwrap()),
            index: Some(CacheFormat::Fp8Index(IndexFp8::new(128, ScaleFmt::Ue8m0).unwrap())),
        };
        let f32 = CacheFormats { latent: CacheFormat::F32 { cols: 576 }, index: Some(CacheFormat::F32 { cols: 128 }) };
        assert_eq!(fp8.bytes_per_token(), 656 + 132);
        assert_eq!(f32.bytes_per_token(), 2304 + 512);
        assert!(CacheFormat::Fp8Index(IndexFp8::new(128, ScaleFmt::Exact).unwrap()).bytes(65).is_err());
        assert_eq!(fp8.latent.bytes(64).unwrap(), 64 * 656);
    }

    #[test]
    fn kv_cache_dtype_values() {
        assert_eq!("auto".parse(), Ok(KvCacheDtype::Auto));
        assert_eq!("fp8_e4m3".parse(), Ok(KvCacheDtype::Fp8E4m3));
        assert_eq!("bf16".parse(), Ok(KvCacheDtype::Bf16));
        for (v, says) in
            [("fp8_e5m2", "not supported yet"), ("fp8", "expected auto, bf16 or fp8_e4m3"), ("", "expected")]
        {
            let e = v.parse::<KvCacheDtype>().unwrap_err();
            assert!(e.contains(says) && e.contains("fp8_e4m3"), "{v}: {e}");
        }
        assert_eq!(KvCacheDtype::Fp8E4m3.to_string(), "fp8_e4m3");
    }

    #[test]
    fn shared_blocks_return_after_the_last_release() {
        let mut a = BlockAllocator::new(2);
        let b = a.allocate().unwrap();
        a.share(b).unwrap();
        a.release(b).unwrap();
        assert_eq!(a.num_free(), 1);
        a.release(b).unwrap();
        assert_eq!(a.num_free(), 2);
        assert!(a.release(b).is_err());
        assert!(a.share(b).is_err());
    }
}
