//! The paged KV cache: per layer, the MLA latent (`kv_lora_rank` + rope dims per token) and,
//! for V3.2, the indexer's key; in blocks of 64 positions handed out by a ref-counted allocator
//! (a block can back several sequences that share a prefix).

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use crate::tensor::Tensor;

/// Positions per cache block.
pub const BLOCK_SIZE: usize = 64;

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
    /// `[blocks·64, kv_lora_rank + qk_rope_head_dim]` per layer.
    pub(crate) latent: Vec<Tensor<B>>,
    /// `[blocks·64, index_head_dim]` per layer (V3.2 only).
    pub(crate) index: Vec<Tensor<B>>,
    allocator: BlockAllocator,
}

impl<B: Backend> KvCache<B> {
    pub fn new(backend: &B, cfg: &ModelConfig, num_blocks: usize) -> Result<Self> {
        let slots = num_blocks * BLOCK_SIZE;
        let latent = (0..cfg.num_layers)
            .map(|_| backend.zeros(slots, cfg.kv_lora_rank + cfg.qk_rope_head_dim))
            .collect::<Result<_>>()?;
        let index = match &cfg.indexer {
            Some(ix) => (0..cfg.num_layers).map(|_| backend.zeros(slots, ix.head_dim)).collect::<Result<_>>()?,
            None => Vec::new(),
        };
        Ok(KvCache { latent, index, allocator: BlockAllocator::new(num_blocks) })
    }

    /// Bytes of cache one position takes across all layers.
    pub fn bytes_per_token(backend: &B, cfg: &ModelConfig) -> usize {
        let per_layer = cfg.kv_lora_rank + cfg.qk_rope_head_dim + cfg.indexer.map_or(0, |ix| ix.head_dim);
        cfg.num_layers * per_layer * backend.elem_bytes()
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
