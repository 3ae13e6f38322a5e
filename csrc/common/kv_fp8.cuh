// Values of the packed paged caches (common/kv_layout.cuh's FP8 layouts, and bf16 rows) on the
// device, decoded as the CPU backend decodes them (src/backend/cpu/kv.rs, src/kv_layout.rs): an
// e4m3 code's value times its group's f32 scale, one rounding; a bf16 value widened exactly.
#pragma once

#include "fp8.cuh"
#include "kv_layout.cuh"

namespace flashseek {
namespace kv_layout {

// `code`'s value times the f32 scale at `scale` (4-byte aligned: scale regions start on 16).
__device__ __forceinline__ float scaled_e4m3(unsigned char code, const unsigned char* scale) {
    return __fmul_rn(e4m3_to_f32(code), *reinterpret_cast<const float*>(scale));
}

// Decoded column `c` (< nope + rope) of cache row `slot` of a latent cache.
__device__ __forceinline__ float latent_value(const LatentFp8& l, const unsigned char* cache, size_t slot, unsigned c) {
    const unsigned char* token = cache + l.token(slot);
    const unsigned nope = static_cast<unsigned>(l.nope);
    if (c < nope) {
        return scaled_e4m3(token[c], token + l.scale_offset() + 4 * static_cast<size_t>(c / kGroup));
    }
    const unsigned short* rope = reinterpret_cast<const unsigned short*>(token + l.rope_offset());
    return __uint_as_float(static_cast<unsigned>(rope[c - nope]) << 16);
}

// Decoded column `c` (< dim) of cache row `slot` of an index cache.
__device__ __forceinline__ float index_value(const IndexFp8& ix, const unsigned char* cache, size_t slot, unsigned c) {
    return scaled_e4m3(cache[ix.key(slot) + c], cache + ix.scales(slot) + 4 * static_cast<size_t>(c / kGroup));
}

// Decoded column `c` (< cols) of cache row `slot` of a cache of bf16 rows of `cols`.
__device__ __forceinline__ float bf16_value(const unsigned char* cache, size_t slot, unsigned cols, unsigned c) {
    const unsigned short* row = reinterpret_cast<const unsigned short*>(cache) + slot * cols;
    return __uint_as_float(static_cast<unsigned>(row[c]) << 16);
}

}  // namespace kv_layout
}  // namespace flashseek
