// Index math of the Hopper FP8 block-scaled GEMM (fp8_gemm.cu): tile shapes and their choice, the
// persistent tile scheduler, the shared-memory layout and the block-scale addressing, on the
// common Hopper layout (../../common/sm90_layout.cuh: 128B swizzle, wgmma descriptor, fragment
// map, mbarrier ring). Host and device: tests/gemm_index_math.rs compiles this header on the host
// and checks every function against an independent formulation (and runs the kernel's whole
// data flow on the host).
//
// out[m, n] = sum over 128-wide k blocks kb of (sum_{k in kb} a8[m, k] * b8[n, k]) * sa[m, kb] *
// sb[n / 128, kb], with a8 [m, k] and b8 [n, k] e4m3 codes (row-major, so both K-major), sa
// [m, ceil(k / 128)] and sb [ceil(n / 128), ceil(k / 128)] f32.
#pragma once

#include <stdint.h>

#include "../../common/host_device.cuh"
#include "../../common/sm90_layout.cuh"

namespace flashseek {
namespace fp8_gemm {

using sm90::desc_advance_k;
using sm90::frag_col;
using sm90::frag_row;
using sm90::k_major_sw128_desc;
using sm90::kSwizzleAtom;
using sm90::kSwizzleRow;
using sm90::kWarpgroup;
using sm90::ring_empty_parity;
using sm90::ring_parity;
using sm90::ring_stage;
using sm90::swizzle_128b;

// k per pipeline stage: one scale block, and 128 e4m3 bytes, the span of the 128B swizzle.
constexpr uint32_t kBlockK = 128;
// Rows and columns sharing one weight scale (and columns sharing one activation scale).
constexpr uint32_t kScaleBlock = 128;
// One wgmma instruction: m64nNk32 for e4m3 (32 bytes of k).
constexpr uint32_t kWgmmaM = 64;
constexpr uint32_t kWgmmaK = 32;
static_assert(kWgmmaK == sm90::kWgmmaKBytes, "a k32 step is 32 one-byte e4m3 values");
// Dynamic shared memory one block may opt into on H100 and H200 (227 KB).
constexpr uint32_t kSmemLimit = 232448;
constexpr uint32_t kMaxStages = 8;
// Tiles of n sharing one raster group of the scheduler.
constexpr uint32_t kRasterGroup = 16;

// One compiled tile configuration: block_m rows (64 per consumer warpgroup) by block_n columns.
// block_n divides 128, so that a tile's columns lie in one 128-row block of weight scales.
struct Tiles {
    uint32_t block_m;
    uint32_t block_n;
};

// The configurations fp8_gemm.cu instantiates, largest first (the heuristic's tie order).
constexpr uint32_t kNumTiles = 4;
FLASHSEEK_HOST_DEVICE inline Tiles tiles_at(uint32_t i) {
    const Tiles all[kNumTiles] = {{128, 128}, {128, 64}, {64, 128}, {64, 64}};
    return all[i];
}

FLASHSEEK_HOST_DEVICE constexpr uint32_t consumers(uint32_t block_m) {
    return block_m / kWgmmaM;
}

// A producer warpgroup (TMA) and one consumer warpgroup per 64 rows.
FLASHSEEK_HOST_DEVICE constexpr uint32_t threads(uint32_t block_m) {
    return kWarpgroup * (1 + consumers(block_m));
}

FLASHSEEK_HOST_DEVICE constexpr uint32_t div_ceil(uint32_t a, uint32_t b) {
    return (a + b - 1) / b;
}

// Shared memory, from a base rounded up to 1024 bytes (the dynamic allocation's own alignment
// is not promised): `stages` A tiles [block_m][128] bytes, then `stages` B tiles [block_n][128],
// each 128B-swizzled and 1024-aligned, then `stages` full and `stages` empty mbarriers.
FLASHSEEK_HOST_DEVICE constexpr uint32_t a_tile_bytes(uint32_t block_m) {
    return block_m * kBlockK;
}

FLASHSEEK_HOST_DEVICE constexpr uint32_t b_tile_bytes(uint32_t block_n) {
    return block_n * kBlockK;
}

FLASHSEEK_HOST_DEVICE constexpr uint32_t stage_bytes(uint32_t block_m, uint32_t block_n) {
    return a_tile_bytes(block_m) + b_tile_bytes(block_n);
}

FLASHSEEK_HOST_DEVICE constexpr uint32_t smem_bytes(uint32_t block_m, uint32_t block_n, uint32_t stages) {
    return kSwizzleAtom + stages * stage_bytes(block_m, block_n) + 2 * stages * 8;
}

// The most stages (at most kMaxStages) that fit in kSmemLimit.
FLASHSEEK_HOST_DEVICE constexpr uint32_t stages(uint32_t block_m, uint32_t block_n) {
    return (kSmemLimit - kSwizzleAtom) / (stage_bytes(block_m, block_n) + 16) < kMaxStages
               ? (kSmemLimit - kSwizzleAtom) / (stage_bytes(block_m, block_n) + 16)
               : kMaxStages;
}

FLASHSEEK_HOST_DEVICE constexpr uint32_t a_tile_offset(uint32_t block_m, uint32_t stage) {
    return stage * a_tile_bytes(block_m);
}

FLASHSEEK_HOST_DEVICE constexpr uint32_t b_tile_offset(uint32_t block_m, uint32_t block_n, uint32_t stages,
                                                      uint32_t stage) {
    return stages * a_tile_bytes(block_m) + stage * b_tile_bytes(block_n);
}

FLASHSEEK_HOST_DEVICE constexpr uint32_t full_barrier_offset(uint32_t block_m, uint32_t block_n, uint32_t stages,
                                                            uint32_t stage) {
    return stages * stage_bytes(block_m, block_n) + stage * 8;
}

FLASHSEEK_HOST_DEVICE constexpr uint32_t empty_barrier_offset(uint32_t block_m, uint32_t block_n, uint32_t stages,
                                                             uint32_t stage) {
    return stages * stage_bytes(block_m, block_n) + (stages + stage) * 8;
}

// Bytes TMA writes into a stage, whole boxes (zero-filled past the matrix): the expect_tx count.
FLASHSEEK_HOST_DEVICE constexpr uint32_t stage_tx_bytes(uint32_t block_m, uint32_t block_n) {
    return stage_bytes(block_m, block_n);
}

// The persistent tile scheduler. Tiles are numbered in raster groups of kRasterGroup n-blocks
// (the last group may be narrower): group g holds n-blocks g * G .. g * G + width, visited
// m-block by m-block, n fastest. The blocks in flight at once (consecutive tile numbers) then
// cover a compact patch of a few m-blocks by G n-blocks, whose A and B tiles stay in L2.
// CTA c of a grid of `grid` takes tiles c, c + grid, c + 2 grid, ... below tiles().
struct Scheduler {
    uint32_t m_blocks;
    uint32_t n_blocks;

    FLASHSEEK_HOST_DEVICE uint64_t tiles() const { return static_cast<uint64_t>(m_blocks) * n_blocks; }

    // (m_block, n_block) of tile t < tiles().
    FLASHSEEK_HOST_DEVICE void tile(uint64_t t, uint32_t& m_block, uint32_t& n_block) const {
        const uint64_t per_group = static_cast<uint64_t>(kRasterGroup) * m_blocks;
        const uint32_t group = static_cast<uint32_t>(t / per_group);
        const uint32_t first_n = group * kRasterGroup;
        const uint32_t width = n_blocks - first_n < kRasterGroup ? n_blocks - first_n : kRasterGroup;
        const uint64_t j = t - group * per_group;
        m_block = static_cast<uint32_t>(j / width);
        n_block = first_n + static_cast<uint32_t>(j % width);
    }
};

FLASHSEEK_HOST_DEVICE inline Scheduler scheduler(uint32_t m, uint32_t n, Tiles t) {
    return Scheduler{div_ceil(m, t.block_m), div_ceil(n, t.block_n)};
}

// The tile-shape heuristic: the configuration with the least estimated time, waves x per-tile
// cost, where a wave is sm_count tiles at once and a tile's cost grows with its area plus a
// fixed overhead per row and column (loads, scale promotion, epilogue):
// (block_m + 32) * (block_n + 32). Ties go to the larger tile (tiles_at's order). A 64-row tile
// wins wherever m <= 64; narrower tiles win where they fill more SMs.
FLASHSEEK_HOST_DEVICE inline Tiles choose(uint32_t m, uint32_t n, uint32_t sm_count) {
    Tiles best = tiles_at(0);
    uint64_t best_cost = ~static_cast<uint64_t>(0);
    for (uint32_t i = 0; i < kNumTiles; ++i) {
        const Tiles t = tiles_at(i);
        const uint64_t tiles = scheduler(m, n, t).tiles();
        const uint64_t waves = (tiles + sm_count - 1) / sm_count;
        const uint64_t cost = waves * (t.block_m + 32) * (t.block_n + 32);
        if (cost < best_cost) {
            best = t;
            best_cost = cost;
        }
    }
    return best;
}

// The index of sa[row, kb] in [m, k_blocks] and of sb for the tile n_block at k block kb in
// [ceil(n / 128), k_blocks]: one scale for all its columns since block_n divides 128.
FLASHSEEK_HOST_DEVICE constexpr uint64_t a_scale_index(uint32_t row, uint32_t kb, uint32_t k_blocks) {
    return static_cast<uint64_t>(row) * k_blocks + kb;
}

FLASHSEEK_HOST_DEVICE constexpr uint64_t b_scale_index(uint32_t n_block, uint32_t block_n, uint32_t kb,
                                                      uint32_t k_blocks) {
    return static_cast<uint64_t>(n_block / (kScaleBlock / block_n)) * k_blocks + kb;
}

// TMA box coordinates (innermost first: k, then rows) of k block kb of the tile starting at row
// block * rows of a K-major [rows, k] matrix.
FLASHSEEK_HOST_DEVICE constexpr int32_t box_k(uint32_t kb) {
    return static_cast<int32_t>(kb * kBlockK);
}

FLASHSEEK_HOST_DEVICE constexpr int32_t box_row(uint32_t block, uint32_t rows) {
    return static_cast<int32_t>(block * rows);
}

// The grouped GEMM of the routed experts (contiguous layout). moe.cu's sort puts expert e's
// assignments in sorted[offsets[e] .. offsets[e + 1]] and gives it m tiles tile_starts[e] ..
// tile_starts[e + 1] of kGroupedBlockM rows (ceil(count / 64) of them). The GEMM's A is the
// padded matrix whose row 64 * mt + r holds, for the m tile mt of expert e, its assignment
// sorted[offsets[e] + 64 * (mt - tile_starts[e]) + r] if that position is below offsets[e + 1]
// (a padding row otherwise); moe_permute builds it. The m tiles number at most
// grouped_m_tiles(assignments, n_experts), which the host allocates for.
constexpr uint32_t kGroupedBlockM = 64;

FLASHSEEK_HOST_DEVICE inline uint32_t grouped_m_tiles(uint32_t assignments, uint32_t n_experts) {
    return div_ceil(assignments, kGroupedBlockM) + (n_experts < assignments ? n_experts : assignments);
}

// The expert of m tile mt < tile_starts[n_experts]: the last e with tile_starts[e] <= mt (experts
// without assignments own no tiles, so their equal starts are passed over).
FLASHSEEK_HOST_DEVICE inline uint32_t expert_of_tile(const uint32_t* tile_starts, uint32_t n_experts, uint32_t mt) {
    uint32_t lo = 0;
    uint32_t hi = n_experts;
    while (hi - lo > 1) {
        const uint32_t mid = lo + (hi - lo) / 2;
        if (tile_starts[mid] <= mt) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    return lo;
}

// Where padded row `row` (m tile row / 64 of expert e) comes from: its position in `sorted`, or
// false for a padding row.
FLASHSEEK_HOST_DEVICE inline bool padded_row_source(const uint32_t* offsets, const uint32_t* tile_starts, uint32_t e,
                                                    uint32_t row, uint32_t& sorted_pos) {
    const uint32_t mt = row / kGroupedBlockM;
    const uint64_t pos =
        static_cast<uint64_t>(offsets[e]) + static_cast<uint64_t>(mt - tile_starts[e]) * kGroupedBlockM +
        row % kGroupedBlockM;
    sorted_pos = static_cast<uint32_t>(pos);
    return pos < offsets[e + 1];
}

// The first row of expert e's [n, k] weight in the stack of all experts, [n_experts * n, k]: the
// B box row of the grouped GEMM's tile (n_block of expert e). Below 2^31 (the host checks
// n_experts * n).
FLASHSEEK_HOST_DEVICE constexpr int32_t grouped_box_row(uint32_t e, uint32_t n, uint32_t n_block, uint32_t block_n) {
    return static_cast<int32_t>(e * n + n_block * block_n);
}

// The grouped GEMM of the routed experts, masked layout (decode: at most 64 assignments, so one
// 64-row m tile, a "slot", per active expert). moe.cu's moe_mask writes one buffer of words:
// [0] the number of active experts (experts with at least one valid assignment), then the
// expert of each of `slots` = masked_slots(assignments, n_experts) slots, then 64 rows per slot,
// each an assignment id or kMaskedEmpty. Slots follow the experts' first appearance in idx and
// rows the assignments' order, so the layout is a pure function of idx (no atomics). The GEMM
// runs the tiles (slot < active, n block): no CTA for an empty expert. A's padded row
// 64 slot + r holds the activation row of the assignment in that slot row (moe_permute).
constexpr uint32_t kMaskedEmpty = 0xffffffffu;

FLASHSEEK_HOST_DEVICE constexpr uint32_t masked_slots(uint32_t assignments, uint32_t n_experts) {
    return assignments < n_experts ? assignments : n_experts;
}

FLASHSEEK_HOST_DEVICE constexpr uint32_t masked_active_word() {
    return 0;
}

FLASHSEEK_HOST_DEVICE constexpr uint32_t masked_expert_word(uint32_t slot) {
    return 1 + slot;
}

FLASHSEEK_HOST_DEVICE constexpr uint64_t masked_row_word(uint32_t slots, uint32_t row) {
    return 1 + static_cast<uint64_t>(slots) + row;
}

FLASHSEEK_HOST_DEVICE constexpr uint64_t masked_words(uint32_t slots) {
    return masked_row_word(slots, slots * kGroupedBlockM);
}

FLASHSEEK_HOST_DEVICE constexpr bool masked_valid(int32_t e, uint32_t n_experts) {
    return e >= 0 && static_cast<uint32_t>(e) < n_experts;
}

// Whether assignment a is the first of its (valid) expert in idx.
FLASHSEEK_HOST_DEVICE inline bool masked_is_first(const int32_t* idx, uint32_t n_experts, uint32_t a) {
    if (!masked_valid(idx[a], n_experts)) {
        return false;
    }
    for (uint32_t b = 0; b < a; ++b) {
        if (idx[b] == idx[a]) {
            return false;
        }
    }
    return true;
}

// The slot and slot row of assignment a (false for an out-of-range id), given first[b] =
// masked_is_first(idx, n_experts, b) for b < a: the slot is the number of experts whose first
// assignment precedes its expert's first, the row the number of its expert's assignments before a.
FLASHSEEK_HOST_DEVICE inline bool masked_place(const int32_t* idx, const uint8_t* first, uint32_t n_experts,
                                               uint32_t a, uint32_t& slot, uint32_t& row) {
    if (!masked_valid(idx[a], n_experts)) {
        return false;
    }
    uint32_t first_of_expert = a;
    row = 0;
    for (uint32_t b = a; b-- > 0;) {
        if (idx[b] == idx[a]) {
            first_of_expert = b;
            ++row;
        }
    }
    slot = 0;
    for (uint32_t b = 0; b < first_of_expert; ++b) {
        slot += first[b] != 0 ? 1u : 0u;
    }
    return true;
}

// The assignment in padded row `row` of the masked layout (buffer `words` of `slots` slots), or
// false for a padding row or a row of an inactive slot.
FLASHSEEK_HOST_DEVICE inline bool masked_row_source(const uint32_t* words, uint32_t slots, uint32_t row,
                                                    uint32_t& assignment) {
    if (row / kGroupedBlockM >= words[masked_active_word()] || row >= slots * kGroupedBlockM) {
        return false;
    }
    assignment = words[masked_row_word(slots, row)];
    return assignment != kMaskedEmpty;
}

}  // namespace fp8_gemm
}  // namespace flashseek
