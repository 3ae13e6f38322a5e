// Index math of the Hopper MLA decode over the FP8 latent cache and the bf16 cache
// (decode_fast.cu), host and device: the shared-memory layout of the 128-byte-swizzled tiles and
// the wgmma descriptors of its operands, the two producers' lane-to-byte maps, page and top-k
// addressing, and the online-softmax step, on the common Hopper layout
// (../../common/sm90_layout.cuh: the swizzle, the descriptor encoding, the accumulator fragment
// map, the mbarrier ring). tests/mla_index_math.rs compiles this header on the host and checks
// each piece against an independent formulation (the PTX ISA's canonical layouts, CuTe's
// Swizzle<3,4,3>, brute force).
//
// The kernel's shape (DeepSeek-V3.2's latent only): one CTA per (work item, 64 heads); a work
// item is a query row and a range of its keys (positions, or top-k entries). Keys come in tiles
// of 64; a tile is 64 tokens of 576 bf16 values (512 NoPE, dequantized or copied, + 64 RoPE),
// stored as 9 chunks of 64 columns, each chunk 64 rows of 128 bytes in the 128-byte swizzle. The
// query tile (64 heads x 576) has the same layout. Warpgroup g (0 or 1) scores keys 32g..32g+31
// of a tile against all 64 heads (S = Q K^T, m64n32k16, 36 steps over the 576 columns) and owns
// output columns 256g..256g+255 (O += P V, m64n256k16, 4 steps over the 64 keys, V read
// transposed from the same tile). The third warpgroup loads tiles: it dequantizes FP8 tokens, or
// copies bf16 rows.
#pragma once

#include <cstdint>

#include "../../common/host_device.cuh"
#include "../../common/kv_layout.cuh"
#include "../../common/sm90_layout.cuh"

#ifndef __CUDACC__
#include <cmath>
#endif

namespace flashseek {
namespace mla_fast {

using sm90::frag_col;
using sm90::frag_row;
using sm90::k_major_sw128_desc;
using sm90::kSwizzle128B;
using sm90::kSwizzleAtom;
using sm90::kSwizzleRow;
using sm90::kWarpgroup;
using sm90::ring_empty_parity;
using sm90::ring_parity;
using sm90::ring_stage;
using sm90::smem_desc;
using sm90::swizzle_128b;

// ---- shapes ----
constexpr int kNope = 512;
constexpr int kRope = 64;
constexpr int kLatent = kNope + kRope;
// Heads per CTA: the M of every wgmma.
constexpr int kHeads = 64;
// Keys per pipeline tile, and per math warpgroup of it.
constexpr int kTileKeys = 64;
constexpr int kGroupKeys = kTileKeys / 2;
// Output columns per math warpgroup.
constexpr int kGroupCols = kNope / 2;
// Columns per swizzle chunk: one 128-byte row of bf16.
constexpr int kChunkCols = 64;
constexpr int kChunks = kLatent / kChunkCols;
constexpr int kChunkBytes = kTileKeys * static_cast<int>(kSwizzleRow);
constexpr int kTileBytes = kChunks * kChunkBytes;
// The K of one wgmma step (bf16).
constexpr int kStepK = 16;
static_assert(kStepK * 2 == sm90::kWgmmaKBytes, "a k16 step is 32 bytes of bf16");
constexpr int kQkSteps = kLatent / kStepK;
constexpr int kPvSteps = kTileKeys / kStepK;
constexpr int kThreads = 384;
constexpr int kStages = 2;
// The FP8 token of the cache: 656 bytes.
FLASHSEEK_HOST_DEVICE inline kv_layout::LatentFp8 token_layout() { return kv_layout::LatentFp8{kNope, kRope}; }
static_assert(kHeads == kTileKeys, "the query tile and the key tiles share one layout");
static_assert(kLatent % kChunkCols == 0 && kNope % kChunkCols == 0, "whole chunks of NoPE and RoPE");

// ---- shared memory ----
// Byte offsets from a 1024-byte aligned base (the 128-byte swizzle repeats every 1024 bytes, and
// the descriptors' base offset field is 0 only at such bases).
struct Smem {
    static constexpr uint32_t q = 0;
    FLASHSEEK_HOST_DEVICE static constexpr uint32_t k(int stage) { return kTileBytes * (1 + stage); }
    static constexpr uint32_t p = kTileBytes * (1 + kStages);
    // P: 64 heads x 64 keys bf16, one swizzle chunk.
    static constexpr uint32_t max_part = p + kChunkBytes;
    // Per stage parity and warpgroup, each head's largest score of its 32 keys (f32).
    FLASHSEEK_HOST_DEVICE static constexpr uint32_t max_of(int parity, int group, int head) {
        return max_part + 4u * static_cast<uint32_t>((parity * 2 + group) * kHeads + head);
    }
    static constexpr uint32_t sum_part = max_part + 4 * 2 * 2 * kHeads;
    FLASHSEEK_HOST_DEVICE static constexpr uint32_t sum_of(int group, int head) {
        return sum_part + 4u * static_cast<uint32_t>(group * kHeads + head);
    }
    // Per stage, one bit per key of the tile: whether it is a key of the query (u64).
    static constexpr uint32_t mask = sum_part + 4 * 2 * kHeads;
    FLASHSEEK_HOST_DEVICE static constexpr uint32_t mask_of(int stage) { return mask + 8u * stage; }
    // mbarriers (u64): full[stage] then empty[stage].
    static constexpr uint32_t barriers = mask + 8 * kStages;
    FLASHSEEK_HOST_DEVICE static constexpr uint32_t full(int stage) { return barriers + 8u * stage; }
    FLASHSEEK_HOST_DEVICE static constexpr uint32_t empty(int stage) { return barriers + 8u * (kStages + stage); }
    static constexpr uint32_t end = barriers + 8 * 2 * kStages;
    // What the launch asks for: the layout plus the slack to align the base to 1024 bytes.
    static constexpr uint32_t bytes = end + 1024;
};
static_assert(Smem::bytes <= 232448, "an H100 CTA has at most 227 KB of shared memory");

// Byte offset of element (row, col) (bf16) of a 64 x 576 tile: chunk col / 64, then swizzled.
FLASHSEEK_HOST_DEVICE constexpr uint32_t tile_offset(uint32_t row, uint32_t col) {
    return (col / kChunkCols) * kChunkBytes + swizzle_128b(row, (col % kChunkCols) * 2);
}

// ---- wgmma operands ----
// K-major operands (rows of 64 bf16 of K) take sm90::k_major_sw128_desc. Step s of K (16 columns)
// starts 32 bytes further into the row, in the next chunk every 4 steps.
FLASHSEEK_HOST_DEVICE constexpr uint32_t k_major_step(uint32_t step) {
    return (step / 4) * kChunkBytes + (step % 4) * (kStepK * 2);
}
// QK: A = the query tile (64 heads), B = the 32 keys of warpgroup `group`: rows 32·group on.
FLASHSEEK_HOST_DEVICE constexpr uint32_t qk_a(uint32_t step) { return Smem::q + k_major_step(step); }
FLASHSEEK_HOST_DEVICE constexpr uint32_t qk_b(int stage, uint32_t group, uint32_t step) {
    return Smem::k(stage) + group * kGroupKeys * kSwizzleRow + k_major_step(step);
}
// PV: A = P (64 heads x 64 keys, one chunk, K-major).
FLASHSEEK_HOST_DEVICE constexpr uint32_t pv_a(uint32_t step) { return Smem::p + k_major_step(step); }
// PV: B = V, N = the value columns (contiguous in the tile's rows: MN-major, read transposed),
// K = the keys (rows): sm90::smem_desc(addr, kVLbo, kVSbo, kSwizzle128B). In the 128-byte swizzle
// an MN-major atom is 64 columns x 8 keys; LBO is the distance between atoms along N (the next
// chunk), SBO the one between 8-key groups.
constexpr uint32_t kVLbo = kChunkBytes;
constexpr uint32_t kVSbo = kSwizzleAtom;
FLASHSEEK_HOST_DEVICE constexpr uint32_t pv_b(int stage, uint32_t group, uint32_t step) {
    return Smem::k(stage) + group * (kGroupCols / kChunkCols) * kChunkBytes + step * 2 * kSwizzleAtom;
}

// ---- the producer warpgroup ----
// Warp w (0..3) fills keys w·16 .. w·16 + 15 of a tile, 8 at a time (`half` 0 or 1). For key j of
// a half, lane l loads bytes 16l .. 16l + 15 of its codes (one warp instruction reads a token's
// 512 codes whole), with scale l / 8; and for RoPE, lane l serves key 4·(j / 4) + l / 8 (two
// instructions for 8 keys), bytes 16·(l % 8) of its 128.
constexpr int kProducerWarps = 4;
constexpr int kKeysPerWarp = kTileKeys / kProducerWarps;
constexpr int kKeysPerHalf = kKeysPerWarp / 2;
FLASHSEEK_HOST_DEVICE constexpr uint32_t producer_key(uint32_t warp, uint32_t half, uint32_t j) {
    return warp * kKeysPerWarp + half * kKeysPerHalf + j;
}
FLASHSEEK_HOST_DEVICE constexpr uint32_t rope_key(uint32_t warp, uint32_t half, uint32_t r, uint32_t lane) {
    return producer_key(warp, half, 4 * r + lane / 8);
}
// Source bytes within the token, and the destination (tile column) of the first of the 16 (codes)
// or 8 (RoPE) values a lane moves.
FLASHSEEK_HOST_DEVICE constexpr uint32_t code_src(uint32_t lane) { return 16 * lane; }
FLASHSEEK_HOST_DEVICE constexpr uint32_t code_col(uint32_t lane) { return 16 * lane; }
FLASHSEEK_HOST_DEVICE inline uint32_t scale_src(uint32_t lane) {
    return static_cast<uint32_t>(token_layout().scale_offset()) + 4 * (16 * lane / kv_layout::kGroup);
}
FLASHSEEK_HOST_DEVICE inline uint32_t rope_src(uint32_t lane) {
    return static_cast<uint32_t>(token_layout().rope_offset()) + 16 * (lane % 8);
}
FLASHSEEK_HOST_DEVICE constexpr uint32_t rope_col(uint32_t lane) { return kNope + 8 * (lane % 8); }

// ---- the bf16 producer ----
// A bf16 cache row is the tile row as it is: 576 bf16 (1152 bytes, 72 vectors of 16 bytes).
// Warp w copies keys w·16 .. w·16 + 15 of a tile: its 16 rows are 16 x 72 vectors, 36 per lane;
// copy r of lane l is vector i = 32r + l of them, key i / 72 and vector i % 72 of that row.
// Consecutive lanes read consecutive vectors of a row (whole 128-byte lines: a row is 9 lines)
// and each 8-lane phase of the stores covers the 8 bank groups of a swizzled row once.
constexpr int kBf16RowBytes = kLatent * 2;
constexpr int kBf16RowVecs = kBf16RowBytes / 16;
constexpr int kBf16Copies = kKeysPerWarp * kBf16RowVecs / 32;
static_assert(kKeysPerWarp * kBf16RowVecs % 32 == 0, "a warp's rows are whole copies of its 32 lanes");
FLASHSEEK_HOST_DEVICE constexpr uint32_t bf16_vec(uint32_t r, uint32_t lane) { return 32 * r + lane; }
// The key (tile row) of copy r of a lane, and its index among its warp's 16 keys.
FLASHSEEK_HOST_DEVICE constexpr uint32_t bf16_warp_key(uint32_t r, uint32_t lane) {
    return bf16_vec(r, lane) / kBf16RowVecs;
}
FLASHSEEK_HOST_DEVICE constexpr uint32_t bf16_key(uint32_t warp, uint32_t r, uint32_t lane) {
    return warp * kKeysPerWarp + bf16_warp_key(r, lane);
}
// Source bytes within the row, and the tile column of the first of the 8 values copied.
FLASHSEEK_HOST_DEVICE constexpr uint32_t bf16_src(uint32_t r, uint32_t lane) {
    return 16 * (bf16_vec(r, lane) % kBf16RowVecs);
}
FLASHSEEK_HOST_DEVICE constexpr uint32_t bf16_col(uint32_t r, uint32_t lane) {
    return 8 * (bf16_vec(r, lane) % kBf16RowVecs);
}
// Byte offset of cache slot `slot`'s row (64-bit: a cache passes 4 GB at 3.7M rows).
FLASHSEEK_HOST_DEVICE constexpr uint64_t bf16_row_offset(uint64_t slot) { return slot * kBf16RowBytes; }

// ---- work items and merges (src/backend/decode_plan.rs makes them) ----
// Four u32 per item: query row, first key, end key, and the item's workspace slot, or kWhole
// where the item is the row's only one (it writes the output; otherwise its partials). Three
// per merge: the split row, its first slot, its number of slots.
constexpr int kItemWords = 4;
constexpr int kMergeWords = 3;
constexpr uint32_t kWhole = 0xffffffffu;
// CTA `block` of the grid (items x head groups, the group fastest: an item's CTAs read the same
// tokens at about the same time, the second from L2): its item and its first head.
struct Cta {
    uint32_t item;
    uint32_t head0;
};
FLASHSEEK_HOST_DEVICE constexpr uint32_t head_groups(uint32_t heads) { return (heads + kHeads - 1) / kHeads; }
FLASHSEEK_HOST_DEVICE constexpr Cta cta_of(uint32_t block, uint32_t heads) {
    return Cta{block / head_groups(heads), block % head_groups(heads) * kHeads};
}
// The partials of (slot, head): part_acc at 512 times this, part_stat at 3 times this.
FLASHSEEK_HOST_DEVICE constexpr uint64_t partial_index(uint32_t slot, uint32_t heads, uint32_t head) {
    return static_cast<uint64_t>(slot) * heads + head;
}

// ---- addressing ----
// The cache slot of position t of a sequence whose pages start at blocks[first] (n_blocks in
// the table), or -1 where the table or the cache (slots rows) does not reach.
FLASHSEEK_HOST_DEVICE inline long long position_slot(const uint32_t* blocks, uint64_t n_blocks, uint64_t first,
                                                     uint32_t block_size, uint64_t slots, uint64_t t) {
    const uint64_t b = first + t / block_size;
    if (b >= n_blocks) {
        return -1;
    }
    const uint64_t s = static_cast<uint64_t>(blocks[b]) * block_size + t % block_size;
    return s < slots ? static_cast<long long>(s) : -1;
}

// The position key entry e of a query at `pos` attends to (dense: e itself; sparse: its top-k
// entry), or -1 where it is none (a top-k entry below 0 or past pos).
FLASHSEEK_HOST_DEVICE inline long long entry_position(const int32_t* topk_row, uint64_t e, uint32_t pos) {
    const long long t = topk_row != nullptr ? static_cast<long long>(topk_row[e]) : static_cast<long long>(e);
    return t < 0 || t > static_cast<long long>(pos) ? -1 : t;
}

// Byte offset of cache slot `slot`'s token (64-bit: a cache passes 4 GB at 6.5M tokens).
FLASHSEEK_HOST_DEVICE inline uint64_t token_offset(uint64_t slot) { return slot * token_layout().token_bytes(); }

// ---- the online softmax ----
FLASHSEEK_HOST_DEVICE inline float neg_inf() { return -INFINITY; }

// e^x as the kernel takes it: 2^(x·log2 e) with the hardware's ex2 (the host: exp2f).
constexpr float kLog2e = 1.4426950408889634f;
FLASHSEEK_HOST_DEVICE inline float exp_fast(float x) {
#ifdef __CUDA_ARCH__
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x * kLog2e));
    return y;
#else
    return std::exp2(x * kLog2e);
#endif
}

// One tile's step for one head: the running maximum m grows to m_new = max(m, tile_max) (NaN
// scores never become it); what was summed is scaled by alpha (exactly 1 where the maximum
// stays, among them -inf to -inf); weights are exp(s - base), base = m_new, or 0 while no score
// is finite (so a masked key, -inf, weighs exactly 0 and nothing is inf - inf).
struct Step {
    float m_new;
    float alpha;
    float base;
};
FLASHSEEK_HOST_DEVICE inline Step online_step(float m, float tile_max) {
    const float m_new = fmaxf(m, tile_max);
    const float alpha = m == m_new ? 1.0f : exp_fast(m - m_new);
    return Step{m_new, alpha, m_new == neg_inf() ? 0.0f : m_new};
}

}  // namespace mla_fast
}  // namespace flashseek
