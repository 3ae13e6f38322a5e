//! Tile shapes of the Hopper FP8 GEMM (`csrc/sm90/gemm/fp8_gemm.cu`) and the heuristic that picks
//! one per shape: the twin of `choose` and the shared-memory sizes in
//! `csrc/sm90/gemm/fp8_gemm.cuh` (tests/gemm_index_math.rs checks them equal). Plain Rust, so the
//! choice is testable and printable without the `cuda` feature.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// k per pipeline stage (one scale block of 128 e4m3 bytes).
const BLOCK_K: usize = 128;
/// The 1024-byte alignment slack the kernel rounds its shared-memory base up by.
const SWIZZLE_ATOM: usize = 1024;
/// Dynamic shared memory one block may opt into on H100 and H200 (227 KB).
pub const SMEM_LIMIT: usize = 232_448;
const MAX_STAGES: usize = 8;

/// One compiled tile configuration of the FP8 GEMM: `block_m` rows (64 per consumer warpgroup)
/// by `block_n` columns of out per tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmTiles {
    pub block_m: usize,
    pub block_n: usize,
}

impl GemmTiles {
    /// Every configuration the kernel file instantiates, largest first (the heuristic's tie order).
    pub const ALL: [GemmTiles; 4] = [
        GemmTiles { block_m: 128, block_n: 128 },
        GemmTiles { block_m: 128, block_n: 64 },
        GemmTiles { block_m: 64, block_n: 128 },
        GemmTiles { block_m: 64, block_n: 64 },
    ];

    /// The configurations of the grouped experts' GEMM, whose m tiles are the sort's 64 rows.
    pub const GROUPED: [GemmTiles; 2] =
        [GemmTiles { block_m: 64, block_n: 128 }, GemmTiles { block_m: 64, block_n: 64 }];

    /// The configuration with the least estimated time on `sm_count` SMs: waves of tiles times a
    /// tile's cost, `(block_m + 32) * (block_n + 32)` (its area plus a fixed overhead per row and
    /// column: loads, scale promotion, epilogue); ties to the larger tile.
    pub fn choose(m: usize, n: usize, sm_count: usize) -> GemmTiles {
        Self::least_cost(&Self::ALL, m, n, sm_count)
    }

    /// [`GemmTiles::choose`] among [`GemmTiles::GROUPED`], for `m` padded rows.
    pub fn choose_grouped(m: usize, n: usize, sm_count: usize) -> GemmTiles {
        Self::least_cost(&Self::GROUPED, m, n, sm_count)
    }

    fn least_cost(shapes: &[GemmTiles], m: usize, n: usize, sm_count: usize) -> GemmTiles {
        let sm = sm_count.max(1) as u128;
        let mut best = shapes[0];
        let mut best_cost = u128::MAX;
        for &t in shapes {
            let waves = t.tiles(m, n).div_ceil(sm);
            let cost = waves * ((t.block_m + 32) * (t.block_n + 32)) as u128;
            if cost < best_cost {
                best = t;
                best_cost = cost;
            }
        }
        best
    }

    /// Tiles over `out[m, n]`.
    pub fn tiles(&self, m: usize, n: usize) -> u128 {
        m.div_ceil(self.block_m) as u128 * n.div_ceil(self.block_n) as u128
    }

    /// Threads per block: a producer warpgroup and one consumer warpgroup per 64 rows.
    pub fn threads(&self) -> usize {
        128 * (1 + self.block_m / 64)
    }

    /// Pipeline stages: as many as fit in [`SMEM_LIMIT`], at most 8.
    pub fn stages(&self) -> usize {
        ((SMEM_LIMIT - SWIZZLE_ATOM) / (self.stage_bytes() + 16)).min(MAX_STAGES)
    }

    /// Dynamic shared memory per block: alignment slack, the stages' A and B tiles, two mbarriers
    /// per stage.
    pub fn smem_bytes(&self) -> usize {
        SWIZZLE_ATOM + self.stages() * self.stage_bytes() + 2 * self.stages() * 8
    }

    fn stage_bytes(&self) -> usize {
        (self.block_m + self.block_n) * BLOCK_K
    }
}

impl fmt::Display for GemmTiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "m{}n{}", self.block_m, self.block_n)
    }
}

/// `m128n64` and the like, as [`GemmTiles`] displays: one of [`GemmTiles::ALL`].
impl FromStr for GemmTiles {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|t| t.to_string() == s).ok_or_else(|| {
            let all: Vec<String> = Self::ALL.iter().map(ToString::to_string).collect();
            Error::Input(format!("unknown GEMM tiles `{s}`: expected one of {}", all.join(", ")))
        })
    }
}
