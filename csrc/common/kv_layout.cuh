// Byte layouts of the FP8 paged caches (`--kv-cache-dtype fp8_e4m3`), the twin of
// src/kv_layout.rs; tests/kv_layout.rs compiles this header on the host and checks every offset
// against the Rust one.
//
// MLA latent, one token (FlashMLA's DeepSeek-V3.2 layout, 656 bytes at 512 + 64):
//   [nope e4m3 codes][ceil(nope/128) f32 power-of-two scales][pad to 16][rope bf16][pad to 16]
// Indexer keys, one page of kPage positions:
//   [kPage x dim e4m3 codes][kPage x ceil(dim/128) f32 scales]
// Every region starts on a 16-byte boundary (nope and dim are multiples of 16), so kernels can
// move 16-byte vectors.
#pragma once

#include <cstddef>

#include "host_device.cuh"

namespace flashseek {
namespace kv_layout {

// Positions per cache page (src/kv_cache.rs's BLOCK_SIZE).
constexpr int kPage = 64;
// Values sharing one scale.
constexpr int kGroup = 128;
constexpr int kAlign = 16;

FLASHSEEK_HOST_DEVICE inline size_t align_up(size_t n) {
    return (n + kAlign - 1) / kAlign * kAlign;
}

FLASHSEEK_HOST_DEVICE inline int groups(int cols) {
    return (cols + kGroup - 1) / kGroup;
}

// The bf16 bits of the f32 whose bits are `x`, to nearest even; a NaN keeps its sign and top
// payload bits and is made quiet. The CPU encoder's conversion (the `half` crate's
// `bf16::from_f32`), for the latent's rope key.
FLASHSEEK_HOST_DEVICE inline unsigned short bf16_bits(unsigned x) {
    if ((x & 0x7fffffffu) > 0x7f800000u) {
        return static_cast<unsigned short>((x >> 16) | 0x40u);
    }
    const unsigned round_bit = 0x8000u;
    if ((x & round_bit) != 0 && (x & (3 * round_bit - 1)) != 0) {
        return static_cast<unsigned short>((x >> 16) + 1);
    }
    return static_cast<unsigned short>(x >> 16);
}

struct LatentFp8 {
    int nope;
    int rope;

    FLASHSEEK_HOST_DEVICE size_t scale_offset() const { return static_cast<size_t>(nope); }
    FLASHSEEK_HOST_DEVICE size_t rope_offset() const { return align_up(scale_offset() + 4 * static_cast<size_t>(groups(nope))); }
    FLASHSEEK_HOST_DEVICE size_t token_bytes() const { return align_up(rope_offset() + 2 * static_cast<size_t>(rope)); }
    // The first byte of cache row `slot`.
    FLASHSEEK_HOST_DEVICE size_t token(size_t slot) const { return slot * token_bytes(); }
};

struct IndexFp8 {
    int dim;

    FLASHSEEK_HOST_DEVICE size_t scales_per_key() const { return static_cast<size_t>(groups(dim)); }
    FLASHSEEK_HOST_DEVICE size_t scale_region() const { return static_cast<size_t>(kPage) * dim; }
    FLASHSEEK_HOST_DEVICE size_t page_bytes() const { return scale_region() + static_cast<size_t>(kPage) * 4 * scales_per_key(); }
    // The codes of cache row `slot`: `dim` bytes.
    FLASHSEEK_HOST_DEVICE size_t key(size_t slot) const {
        return slot / kPage * page_bytes() + slot % kPage * static_cast<size_t>(dim);
    }
    // The scales of cache row `slot`: `scales_per_key()` f32 values.
    FLASHSEEK_HOST_DEVICE size_t scales(size_t slot) const {
        return slot / kPage * page_bytes() + scale_region() + slot % kPage * 4 * scales_per_key();
    }
};

}  // namespace kv_layout
}  // namespace flashseek
