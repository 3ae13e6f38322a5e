// The packed paged caches (`--kv-cache-dtype fp8_e4m3` and `bf16`): the CPU backend's
// quantize-and-store and decoding gather (src/backend/cpu/kv.rs), bit for bit. A bf16 row is its
// values rounded as the half crate rounds them. An FP8 store quantizes each group of 128 as
// src/kv_layout.rs's encoders do: amax (exact in any order), the scale of common/fp8.cuh's
// group_scale (power-of-two for the latent, the model's format for index keys), each code
// e4m3(clamp(v / scale, +-448)) rounded to nearest even; the latent's rope key is rounded to
// bf16 and the token's padding zeroed. One block per row; a warp per group of 128.
#include "flashseek/params.h"
#include "../../common/fp8.cuh"
#include "../../common/kv_fp8.cuh"

namespace {

using flashseek::kE4m3Max;
using flashseek::kWarp;
using flashseek::kv_layout::IndexFp8;
using flashseek::kv_layout::LatentFp8;

constexpr unsigned kThreads = FLASHSEEK_KV_PACK_THREADS;
constexpr unsigned kWarps = kThreads / kWarp;
constexpr unsigned kGroup = flashseek::kv_layout::kGroup;
constexpr unsigned kPerLane = flashseek::kGroupPerLane;
static_assert(kThreads % kWarp == 0, "whole warps per block");
static_assert(kGroup == FLASHSEEK_FP8_GROUP, "a cache scale group is an activation group");

// src/fp8.rs's `e4m3_code((v / scale).clamp(-448, 448))`. A NaN quotient gets the sign x86
// gives it: an input NaN's own, or negative for the default NaN of an invalid division (inf /
// inf where the group's amax is infinite).
__device__ __forceinline__ unsigned char quantize(float v, float scale) {
    const float q = __fdiv_rn(v, scale);
    if (isnan(q)) {
        const bool negative = isnan(v) ? signbit(v) != 0 : true;
        return negative ? 0xffu : 0x7fu;
    }
    return flashseek::f32_to_e4m3(flashseek::round_e4m3(fminf(fmaxf(q, -kE4m3Max), kE4m3Max)));
}

}  // namespace

extern "C" __global__ void __launch_bounds__(FLASHSEEK_KV_PACK_THREADS) flashseek_kv_pack_f32(const KvPackParams p) {
    if (blockIdx.x >= p.count) {
        return;
    }
    const unsigned row = p.pairs[2 * static_cast<size_t>(blockIdx.x)];
    const size_t slot = p.pairs[2 * static_cast<size_t>(blockIdx.x) + 1];
    if (p.layout == FLASHSEEK_KV_BF16) {
        const unsigned cols = p.nope + p.rope;
        unsigned short* out = reinterpret_cast<unsigned short*>(p.cache) + slot * cols;
        const float* head = p.head + static_cast<size_t>(row) * p.head_stride;
        const float* tail = p.tail + static_cast<size_t>(row) * p.tail_stride + p.tail_col;
        for (unsigned c = threadIdx.x; c < cols; c += kThreads) {
            out[c] = flashseek::kv_layout::bf16_bits(__float_as_uint(c < p.nope ? head[c] : tail[c - p.nope]));
        }
        return;
    }
    const bool latent = p.layout == FLASHSEEK_KV_LATENT_FP8;
    const LatentFp8 l{static_cast<int>(p.nope), static_cast<int>(p.rope)};
    const IndexFp8 ix{static_cast<int>(p.nope)};
    unsigned char* codes = p.cache + (latent ? l.token(slot) : ix.key(slot));
    unsigned char* scales = latent ? codes + l.scale_offset() : p.cache + ix.scales(slot);
    const bool ue8m0 = latent || p.ue8m0 != 0;
    const float* x = p.head + static_cast<size_t>(row) * p.head_stride;
    const unsigned warp = threadIdx.x / kWarp;
    const unsigned lane = threadIdx.x % kWarp;
    const unsigned groups = (p.nope + kGroup - 1) / kGroup;
    // Uniform over each warp: load_group_amax's shuffles see every lane.
    for (unsigned g = warp; g < groups; g += kWarps) {
        const unsigned start = g * kGroup;
        const unsigned len = min(kGroup, p.nope - start);
        float v[kPerLane];
        const float amax = flashseek::load_group_amax(x + start, len, lane, v);
        const float scale = flashseek::group_scale(amax, ue8m0);
#pragma unroll
        for (unsigned k = 0; k < kPerLane; ++k) {
            const unsigned i = lane + k * kWarp;
            if (i < len) {
                codes[start + i] = quantize(v[k], scale);
            }
        }
        if (lane == 0) {
            *reinterpret_cast<float*>(scales + 4 * static_cast<size_t>(g)) = scale;
        }
    }
    if (!latent) {
        return;
    }
    // The rest of the token: zeros up to the rope key, the key in bf16, zeros to the end (the
    // CPU's encoder zeroes the whole token first).
    const float* rope = p.tail + static_cast<size_t>(row) * p.tail_stride + p.tail_col;
    unsigned short* key = reinterpret_cast<unsigned short*>(codes + l.rope_offset());
    for (size_t b = l.scale_offset() + 4 * static_cast<size_t>(groups) + threadIdx.x; b < l.rope_offset(); b += kThreads) {
        codes[b] = 0;
    }
    for (unsigned i = threadIdx.x; i < p.rope; i += kThreads) {
        key[i] = flashseek::kv_layout::bf16_bits(__float_as_uint(rope[i]));
    }
    for (size_t b = l.rope_offset() + 2 * static_cast<size_t>(p.rope) + threadIdx.x; b < l.token_bytes(); b += kThreads) {
        codes[b] = 0;
    }
}

extern "C" __global__ void __launch_bounds__(FLASHSEEK_KV_PACK_THREADS) flashseek_kv_unpack_f32(const KvPackParams p) {
    if (blockIdx.x >= p.count) {
        return;
    }
    const size_t slot = p.pairs[2 * static_cast<size_t>(blockIdx.x)];
    const unsigned row = p.pairs[2 * static_cast<size_t>(blockIdx.x) + 1];
    const bool latent = p.layout == FLASHSEEK_KV_LATENT_FP8;
    const LatentFp8 l{static_cast<int>(p.nope), static_cast<int>(p.rope)};
    const IndexFp8 ix{static_cast<int>(p.nope)};
    float* dst = p.dst + static_cast<size_t>(row) * p.dst_stride;
    for (unsigned c = threadIdx.x; c < p.n; c += kThreads) {
        const unsigned col = p.col + c;
        if (p.layout == FLASHSEEK_KV_BF16) {
            dst[c] = flashseek::kv_layout::bf16_value(p.cache, slot, p.nope + p.rope, col);
        } else {
            dst[c] = latent ? flashseek::kv_layout::latent_value(l, p.cache, slot, col)
                            : flashseek::kv_layout::index_value(ix, p.cache, slot, col);
        }
    }
}
