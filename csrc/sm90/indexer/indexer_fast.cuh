// Index math of the Hopper lightning indexer (indexer_logits_fp8.cu, indexer_topk_fp8.cu), on
// the host and the device, on the common Hopper layout (../../common/sm90_layout.cuh: the 128-byte
// swizzle, the wgmma descriptor, the accumulator fragment map, the mbarrier ring):
// tests/indexer_index_math.rs compiles this header on the host and checks every function against
// an independent formulation (brute force, the PTX ISA's figures).
//
// Logits: one CTA scores a group of up to kGroupRows consecutive query rows of one sequence
// against a run of key pages. The wgmma is m64n128k32 e4m3 x e4m3 -> f32 with
//   A = one page of keys (M = the 64 positions of the page, K = dim 128, K-major),
//   B = the group's queries (N = kGroupRows x 64 heads, K-major),
// so an accumulator row is a key and its columns the heads: the weighted ReLU sum over heads runs
// inside a thread and across the 4 lanes of a quad, never through shared memory.
// Both operands sit in shared memory in the 128-byte swizzle (the TMA's SWIZZLE_128B for keys,
// the same pattern stored by hand for queries).
//
// Top-k: the logits kernel also counts each row's scores in a histogram of the top kHistBits of
// their order keys; the top-k kernel picks the bin holding the k-th largest from it, then reads
// the row once: bins above it are selected, the bin itself is kept as candidates and refined by
// radix passes over the remaining bits.
#pragma once

#include <cstdint>

#include "../../common/host_device.cuh"
#include "../../common/kv_layout.cuh"
#include "../../common/sm90_layout.cuh"

namespace flashseek {
namespace indexer_fast {

using sm90::desc_advance_k;
using sm90::frag_col;
using sm90::frag_index;
using sm90::frag_row;
using sm90::k_major_sw128_desc;
using sm90::kSwizzleAtom;
using sm90::kWarpgroup;
using sm90::ring_empty_parity;
using sm90::ring_parity;
using sm90::ring_stage;
using sm90::swizzle_128b;

// ---- shapes ----

// Key width (DeepSeek-V3.2's index_head_dim): one 128-byte row of e4m3 per key, one scale.
constexpr unsigned kDim = 128;
// Keys per page (the cache layout's) = the wgmma's M.
constexpr unsigned kKeys = static_cast<unsigned>(kv_layout::kPage);
// Heads per query row (DeepSeek-V3.2's index_n_heads; fewer are padded with zero queries).
constexpr unsigned kHeads = 64;
// Query rows per CTA: the wgmma's N is kGroupRows * kHeads.
constexpr unsigned kGroupRows = 2;
constexpr unsigned kN = kGroupRows * kHeads;
// K per wgmma for 8-bit inputs, and steps over the key.
constexpr unsigned kMmaK = sm90::kWgmmaKBytes;
constexpr unsigned kKSteps = kDim / kMmaK;
// Pipeline: pages in flight, consumer warpgroups (pages alternate between them), and the CTA
// (warpgroup 0 produces: one thread issues the copies).
constexpr unsigned kStages = 8;
constexpr unsigned kConsumers = 2;
constexpr unsigned kThreads = kWarpgroup * (1 + kConsumers);
static_assert(kStages % kConsumers == 0, "a stage is always read by the same consumer");
// Accumulator registers of a thread: 64 x kN f32 over 128 threads.
constexpr unsigned kAccRegs = kKeys * kN / kWarpgroup;

// ---- shared memory of the logits kernel (byte offsets from a 1024-aligned base) ----

constexpr unsigned kQBytes = kN * kDim;
constexpr unsigned kPageCodeBytes = kKeys * kDim;
constexpr unsigned kPageScaleBytes = kKeys * 4;
// Histogram bins per query row (see the top-k section).
constexpr unsigned kHistBits = 11;
constexpr unsigned kBins = 1u << kHistBits;

struct LogitsSmem {
    static constexpr unsigned q = 0;
    FLASHSEEK_HOST_DEVICE static constexpr unsigned codes(unsigned stage) { return kQBytes + stage * kPageCodeBytes; }
    FLASHSEEK_HOST_DEVICE static constexpr unsigned scales(unsigned stage) {
        return kQBytes + kStages * kPageCodeBytes + stage * kPageScaleBytes;
    }
    static constexpr unsigned hist = kQBytes + kStages * (kPageCodeBytes + kPageScaleBytes);
    // full[s] at barriers + 8 s, empty[s] at barriers + 8 (kStages + s).
    static constexpr unsigned barriers = hist + kGroupRows * kBins * 4;
    static constexpr unsigned bytes = barriers + 2 * kStages * 8;
    // What a launch asks for: the base is aligned up to kSwizzleAtom inside the allocation.
    static constexpr unsigned dynamic_bytes = bytes + kSwizzleAtom;
};

// ---- work of the logits kernel ----

// Pages a row at position `pos` reads.
FLASHSEEK_HOST_DEVICE inline unsigned pages_for(unsigned pos) {
    return pos / kKeys + 1u;
}

// The group a CTA works for: `cta_start[g]` is the first CTA of group g (non-decreasing,
// cta_start[0] = 0, cta_start[n_groups] = the grid), so the largest g with cta_start[g] <= cta.
FLASHSEEK_HOST_DEVICE inline unsigned find_group(const unsigned* cta_start, unsigned n_groups, unsigned cta) {
    unsigned lo = 0;
    unsigned hi = n_groups;
    // Invariant: cta_start[lo] <= cta < cta_start[hi].
    while (hi - lo > 1u) {
        const unsigned mid = lo + (hi - lo) / 2u;
        if (cta_start[mid] <= cta) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    return lo;
}

// Splits of a group of `pages` pages into runs of `per_split` pages.
FLASHSEEK_HOST_DEVICE inline unsigned splits_for(unsigned pages, unsigned per_split) {
    return (pages + per_split - 1u) / per_split;
}

// First page of split `split`; the split ends where the next begins or at `pages`.
FLASHSEEK_HOST_DEVICE inline unsigned split_begin(unsigned split, unsigned per_split) {
    return split * per_split;
}

FLASHSEEK_HOST_DEVICE inline unsigned split_end(unsigned split, unsigned per_split, unsigned pages) {
    const unsigned e = (split + 1u) * per_split;
    return e < pages ? e : pages;
}

// Byte offset of page `page`'s codes and of its scales in the cache (the TMA's tensor map views
// the cache as [pages][64][128] bytes with strides page_bytes and 128).
FLASHSEEK_HOST_DEVICE inline size_t page_codes(size_t page) {
    return kv_layout::IndexFp8{static_cast<int>(kDim)}.key(page * kKeys);
}

FLASHSEEK_HOST_DEVICE inline size_t page_scales(size_t page) {
    return kv_layout::IndexFp8{static_cast<int>(kDim)}.scales(page * kKeys);
}

// ---- top-k ----

// Unsigned keys in the order of Rust's `f32::total_cmp`: negative values (and negative NaNs) have
// every bit flipped, the others only the sign bit.
FLASHSEEK_HOST_DEVICE inline uint32_t order_key(uint32_t bits) {
    return (bits & 0x80000000u) != 0 ? ~bits : (bits | 0x80000000u);
}

// The histogram bin of a key: its top kHistBits bits (sign, exponent, two mantissa bits).
constexpr unsigned kHistShift = 32u - kHistBits;
FLASHSEEK_HOST_DEVICE inline unsigned hist_bin(uint32_t key) {
    return key >> kHistShift;
}

// The refinement of the threshold bin: two radix digits over the remaining bits.
constexpr unsigned kRefineBits0 = 11;
constexpr unsigned kRefineShift0 = kHistShift - kRefineBits0;
constexpr unsigned kRefineBits1 = kRefineShift0;
static_assert(kRefineBits1 > 0 && kRefineBits1 <= kRefineBits0, "two digits cover the rest");

FLASHSEEK_HOST_DEVICE inline unsigned refine_digit(uint32_t key, unsigned pass) {
    return pass == 0 ? (key >> kRefineShift0) & ((1u << kRefineBits0) - 1u) : key & ((1u << kRefineBits1) - 1u);
}

FLASHSEEK_HOST_DEVICE inline unsigned refine_bins(unsigned pass) {
    return pass == 0 ? 1u << kRefineBits0 : 1u << kRefineBits1;
}

// The bits of a key fixed once refinement pass `pass` is done (top bin plus its digits).
FLASHSEEK_HOST_DEVICE inline uint32_t refine_mask(unsigned pass) {
    return pass == 0 ? ~((1u << kRefineShift0) - 1u) : 0xffffffffu;
}

// The bin holding the `want`-th largest of the counted values (1 <= want <= their number):
// `bin` with above = the count in higher bins < want <= above + hist[bin]. The kernel finds it
// with a block scan; this is the sequential definition.
struct Threshold {
    unsigned bin;
    unsigned above;
};

FLASHSEEK_HOST_DEVICE inline Threshold find_threshold(const unsigned* hist, unsigned bins, unsigned want) {
    unsigned above = 0;
    for (unsigned b = bins; b-- > 0;) {
        if (above + hist[b] >= want) {
            return Threshold{b, above};
        }
        above += hist[b];
    }
    return Threshold{0, above};
}

// Candidates of the threshold bin kept in shared memory; a bin with more is refined from the
// logits in global memory instead (read again, once per pass).
constexpr unsigned kCandidates = 8192;
constexpr unsigned kTopkThreads = 512;

// Shared memory of the top-k kernel for rows of at most `n` positions: the histogram, the
// candidates (key and position), and two bitmaps of the row's positions (selected, tied).
FLASHSEEK_HOST_DEVICE inline unsigned bitmap_words(unsigned n) {
    return (n + 31u) / 32u;
}

struct TopkSmem {
    static constexpr unsigned hist = 0;
    static constexpr unsigned cand_keys = hist + kBins * 4;
    static constexpr unsigned cand_pos = cand_keys + kCandidates * 4;
    static constexpr unsigned scratch = cand_pos + kCandidates * 4;
    // Per-warp partial sums of the block scans, and the few values the block shares.
    static constexpr unsigned scratch_words = 64;
    static constexpr unsigned selected = scratch + scratch_words * 4;
    FLASHSEEK_HOST_DEVICE static constexpr unsigned tied(unsigned n) { return selected + ((n + 31u) / 32u) * 4; }
    FLASHSEEK_HOST_DEVICE static constexpr unsigned bytes(unsigned n) { return tied(n) + ((n + 31u) / 32u) * 4; }
};

}  // namespace indexer_fast
}  // namespace flashseek
