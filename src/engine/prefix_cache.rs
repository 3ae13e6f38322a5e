//! Prefix caching: full cache blocks are kept, keyed by the tokens they hold and everything
//! before them, so a request that repeats a prefix (a system prompt, earlier turns, the n
//! choices of one prompt) reuses the blocks instead of computing them again.
//!
//! The cache holds one reference to each block it knows. A block only the cache holds is idle:
//! it stays until the allocator runs short, then the least recently used go first.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use crate::error::Result;
use crate::kv_cache::{BlockAllocator, BLOCK_SIZE};

/// Key of a full block: a hash of the previous block's key and this block's tokens.
pub fn block_key(prev: u64, tokens: &[u32]) -> u64 {
    let mut h = DefaultHasher::new();
    prev.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

struct Entry {
    block: u32,
    prev: u64,
    /// Kept to rule out hash collisions: a hit must hold exactly these tokens.
    tokens: Vec<u32>,
    last_used: u64,
}

#[derive(Default)]
pub struct PrefixCache {
    entries: HashMap<u64, Entry>,
    clock: u64,
}

impl PrefixCache {
    /// The cached blocks covering the longest prefix of `tokens` (full blocks only), each with a
    /// reference taken for the caller; the keys of those blocks are pushed onto `keys`.
    pub fn lookup(&mut self, tokens: &[u32], alloc: &mut BlockAllocator, keys: &mut Vec<u64>) -> Result<Vec<u32>> {
        self.clock += 1;
        let mut blocks = Vec::new();
        let mut prev = 0;
        for chunk in tokens.chunks_exact(BLOCK_SIZE) {
            let key = block_key(prev, chunk);
            match self.entries.get_mut(&key) {
                Some(e) if e.prev == prev && e.tokens == chunk => {
                    alloc.share(e.block)?;
                    e.last_used = self.clock;
                    blocks.push(e.block);
                    keys.push(key);
                    prev = key;
                }
                _ => break,
            }
        }
        Ok(blocks)
    }

    /// Records a full block a sequence has computed. A block with the same content already
    /// cached (computed concurrently by another sequence) is left as it is.
    pub fn insert(
        &mut self,
        key: u64,
        prev: u64,
        tokens: &[u32],
        block: u32,
        alloc: &mut BlockAllocator,
    ) -> Result<()> {
        if self.entries.contains_key(&key) {
            return Ok(());
        }
        alloc.share(block)?;
        self.clock += 1;
        self.entries.insert(key, Entry { block, prev, tokens: tokens.to_vec(), last_used: self.clock });
        Ok(())
    }

    /// Blocks only the cache holds: free for the taking.
    pub fn idle(&self, alloc: &BlockAllocator) -> usize {
        self.entries.values().filter(|e| alloc.ref_count(e.block) == 1).count()
    }

    /// Drops idle blocks, least recently used first, until `want` blocks are free or none is
    /// idle. Returns whether `want` blocks are free.
    pub fn make_room(&mut self, want: usize, alloc: &mut BlockAllocator) -> Result<bool> {
        if alloc.num_free() >= want {
            return Ok(true);
        }
        let mut idle: Vec<(u64, u64)> = self
            .entries
            .iter()
            .filter(|(_, e)| alloc.ref_count(e.block) == 1)
            .map(|(&k, e)| (e.last_used, k))
            .collect();
        idle.sort_unstable();
        for (_, key) in idle {
            if alloc.num_free() >= want {
                break;
            }
            if let Some(e) = self.entries.remove(&key) {
                alloc.release(e.block)?;
            }
        }
        Ok(alloc.num_free() >= want)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_prefix_reuses_its_full_blocks_and_idle_blocks_are_evicted_oldest_first() {
        let mut alloc = BlockAllocator::new(4);
        let mut cache = PrefixCache::default();
        let tokens: Vec<u32> = (0..150).collect();
        let (b0, b1) = (alloc.allocate().unwrap(), alloc.allocate().unwrap());
        let k0 = block_key(0, &tokens[..64]);
        let k1 = block_key(k0, &tokens[64..128]);
        cache.insert(k0, 0, &tokens[..64], b0, &mut alloc).unwrap();
        cache.insert(k1, k0, &tokens[64..128], b1, &mut alloc).unwrap();
        alloc.release(b0).unwrap();
        alloc.release(b1).unwrap();
        assert_eq!(cache.idle(&alloc), 2);

        let mut keys = Vec::new();
        let hit = cache.lookup(&tokens, &mut alloc, &mut keys).unwrap();
        assert_eq!((hit, keys), (vec![b0, b1], vec![k0, k1]));
        assert_eq!(cache.idle(&alloc), 0);
        let mut other: Vec<u32> = tokens.clone();
        other[70] = 999;
        let hit = cache.lookup(&other, &mut alloc, &mut Vec::new()).unwrap();
        assert_eq!(hit, vec![b0]);

        for b in [b0, b1, b0] {
            alloc.release(b).unwrap();
        }
        assert_eq!(alloc.num_free(), 2);
        assert!(cache.make_room(3, &mut alloc).unwrap());
        assert_eq!(cache.entries.len(), 1, "only the least recently used block went");
        assert!(cache.entries.values().all(|e| e.block == b0), "the least recently used block went first");
        assert!(cache.make_room(4, &mut alloc).unwrap());
        assert!(!cache.make_room(5, &mut alloc).unwrap());
    }
}
