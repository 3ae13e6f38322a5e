// The warp-level online softmax shared by mla_decode (decode.cu) and mla_prefill (prefill.cu):
// one warp attends for one query row and one head, its lanes holding the query's and the
// output's columns lane, lane + 32, ... in registers. Keys come a tile at a time from a `Tile`
// (shared memory or global), which says for each of its FLASHSEEK_MLA_TILE slots whether it
// holds a key of this query (the same answer in every lane) and gives the key's and value's
// columns.
//
// The contract is the CPU backend's softmax (src/backend/cpu/attention.rs): scores
// `dot(q, k) * scale` in f32, the maximum taken with fmaxf (a NaN never becomes the maximum, as
// Rust's f32::max), weights exp(s - max), output sum(weight * value) / sum(weight). Online, the
// running maximum m grows tile by tile and what was summed before is rescaled by
// exp(m_old - m_new); the special values come out as on the CPU:
// - a score of -inf weighs exactly 0 (the CPU's exp(-inf - max)), so a value it meets is still
//   multiplied (0 * inf or 0 * NaN is NaN there too); when every score is -inf the sum stays 0
//   and the output 0 / 0 = NaN, the CPU's exp(-inf - -inf) = NaN;
// - a NaN score, or a maximum of +inf, makes the sum NaN and so every output of the head;
// - a query with no valid key at all writes zeros, as the CPU fills them.
#pragma once

#include "flashseek/params.h"

namespace flashseek::mla {

constexpr unsigned kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr unsigned kTile = FLASHSEEK_MLA_TILE;
static_assert(kTile <= kWarp, "one lane per key of a tile fetches its index");

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }

// The sum of v over the warp, in every lane. A butterfly: lanes l and l ^ o add the same two
// values (commutative, so bit-identical), hence every lane ends with the same bits and keeps
// the same running max and sum.
__device__ __forceinline__ float warp_sum(float v) {
    for (unsigned o = kWarp / 2; o > 0; o /= 2) {
        v = __fadd_rn(v, __shfl_xor_sync(kFullMask, v, o));
    }
    return v;
}

// The running softmax of one warp: the largest score so far, the sum of exp(score - max) and how
// many keys were valid.
struct Online {
    float max;
    float sum;
    unsigned keys;
};

__device__ __forceinline__ Online online_start() { return Online{neg_inf(), 0.0f, 0u}; }

// Folds one tile of keys into `st` and `acc`: q holds the query's columns lane + 32 k (the first
// `qk` of them are real), acc the output's (the first `vdim`). Every lane of the warp calls it.
template <unsigned kQ, unsigned kV, class Tile>
__device__ __forceinline__ void attend_tile(const Tile& tile, const float (&q)[kQ], unsigned qk, float (&acc)[kV],
                                            unsigned vdim, float scale, Online& st, unsigned lane) {
    float s[kTile];
    float tile_max = neg_inf();
    unsigned n = 0;
#pragma unroll
    for (unsigned j = 0; j < kTile; ++j) {
        s[j] = neg_inf();
        if (tile.valid(j)) {
            float part = 0.0f;
#pragma unroll
            for (unsigned k = 0; k < kQ; ++k) {
                const unsigned d = lane + k * kWarp;
                if (d < qk) {
                    part = fmaf(q[k], tile.key(j, d), part);
                }
            }
            s[j] = __fmul_rn(warp_sum(part), scale);
            tile_max = fmaxf(tile_max, s[j]);
            ++n;
        }
    }
    if (n == 0) {
        return;
    }
    const float m = fmaxf(st.max, tile_max);
    // Equal maxima (among them -inf and -inf) rescale by exactly 1.
    const float alpha = st.max == m ? 1.0f : expf(__fsub_rn(st.max, m));
    st.sum = __fmul_rn(st.sum, alpha);
#pragma unroll
    for (unsigned k = 0; k < kV; ++k) {
        acc[k] = __fmul_rn(acc[k], alpha);
    }
#pragma unroll
    for (unsigned j = 0; j < kTile; ++j) {
        if (tile.valid(j)) {
            const float w = s[j] == neg_inf() ? 0.0f : expf(__fsub_rn(s[j], m));
            st.sum = __fadd_rn(st.sum, w);
#pragma unroll
            for (unsigned k = 0; k < kV; ++k) {
                const unsigned d = lane + k * kWarp;
                if (d < vdim) {
                    acc[k] = fmaf(w, tile.value(j, d), acc[k]);
                }
            }
        }
    }
    st.max = m;
    st.keys += n;
}

// The output column of `acc` once every key is in: zero without keys, else acc / sum.
__device__ __forceinline__ float attend_result(float acc, const Online& st) {
    return st.keys == 0 ? 0.0f : __fdiv_rn(acc, st.sum);
}

}  // namespace flashseek::mla
