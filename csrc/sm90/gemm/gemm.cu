// The simple GEMMs, out[m, n] = a[m, k] . b[n, k]^T in f32: the FP8 block-scaled one (DeepSeek's
// 1x128 activation and 128x128 weight scales) and the plain ones for f32 activations over f32,
// bf16, f16 or FP8 weights. SIMT and f32 throughout: the first, obviously correct kernel of the
// family (DESIGN.md, "Kernels"), the GPU reference of the wgmma one to come.
//
// Each block computes one 64x64 tile of out with the tile loops of tile.cuh (shared with the
// grouped MoE GEMMs), tiles numbered row-major over out.
//
// Numerics against the CPU backend (src/backend/cpu/linear.rs): the same products summed in
// another order, so equal up to the f32 rounding of the sums; tests/cuda_kernels.rs bounds it.
#include "flashseek/params.h"
#include "tile.cuh"

namespace {

using namespace flashseek::tile;

// Whether block blockIdx.x has a tile: the host launches one block per tile, so a block past
// the last leaves whole, before any barrier.
__device__ __forceinline__ bool has_tile(const GemmParams& p) {
    return blockIdx.x < ((p.m + kTile - 1) / kTile) * ((p.n + kTile - 1) / kTile);
}

// The tile of block blockIdx.x, tiles numbered row-major over out.
__device__ __forceinline__ Span span_of_block(const GemmParams& p) {
    const unsigned tiles_n = (p.n + kTile - 1) / kTile;
    return Span{blockIdx.x / tiles_n * kTile, p.m, blockIdx.x % tiles_n * kTile, p.n, p.k};
}

// Row `row` of the packed [m, n] output.
struct OutRows {
    float* out;
    unsigned n;
    __device__ float* operator()(unsigned row) const { return out + static_cast<size_t>(row) * n; }
};

// The activation scale of row `row` and k block kb, from a_scales [m, ceil(k / 128)].
struct ScaleRows {
    const float* scales;
    unsigned blocks;
    __device__ float operator()(unsigned row, unsigned kb) const {
        return scales[static_cast<size_t>(row) * blocks + kb];
    }
};

// The plain GEMM: f32 activations, weights decoded by `load_b`.
template <class LoadB>
__device__ __forceinline__ void plain_gemm(const GemmParams& p, const LoadB& load_b) {
    if (!has_tile(p)) {
        return;
    }
    const Span s = span_of_block(p);
    __shared__ Stage st;
    float acc[kPer][kPer] = {};
    accumulate(s, st, 0, p.k, LoadF32{static_cast<const float*>(p.a), p.k}, load_b, acc);
    store(s, acc, OutRows{p.out, p.n});
}

}  // namespace

// The FP8 block-scaled GEMM (tile.cuh's fp8_accumulate). With the thread count alone as launch
// bound, ptxas (13.0) settles on 48 registers here and spills; a minimum of one block per SM asks
// nothing of occupancy and lets it use the 72 it needs.
extern "C" __global__ void __launch_bounds__(FLASHSEEK_GEMM_THREADS, 1) flashseek_fp8_gemm_f32(const GemmParams p) {
    if (!has_tile(p)) {
        return;
    }
    const Span s = span_of_block(p);
    __shared__ Stage st;
    const unsigned blocks = (p.k + kBlock - 1) / kBlock;
    float acc[kPer][kPer] = {};
    fp8_accumulate(s, st, LoadE4m3{static_cast<const unsigned char*>(p.a), p.k},
                   LoadE4m3{static_cast<const unsigned char*>(p.b), p.k}, ScaleRows{p.a_scales, blocks},
                   p.b_scales + static_cast<size_t>(s.n0 / kBlock) * blocks, acc);
    store(s, acc, OutRows{p.out, p.n});
}

extern "C" __global__ void __launch_bounds__(FLASHSEEK_GEMM_THREADS) flashseek_gemm_wf32_f32(const GemmParams p) {
    plain_gemm(p, LoadF32{static_cast<const float*>(p.b), p.k});
}

extern "C" __global__ void __launch_bounds__(FLASHSEEK_GEMM_THREADS) flashseek_gemm_wbf16_f32(const GemmParams p) {
    plain_gemm(p, LoadBf16{static_cast<const unsigned short*>(p.b), p.k});
}

extern "C" __global__ void __launch_bounds__(FLASHSEEK_GEMM_THREADS) flashseek_gemm_wf16_f32(const GemmParams p) {
    plain_gemm(p, LoadF16{static_cast<const unsigned short*>(p.b), p.k});
}

extern "C" __global__ void __launch_bounds__(FLASHSEEK_GEMM_THREADS) flashseek_gemm_we4m3_f32(const GemmParams p) {
    plain_gemm(p, LoadE4m3Scaled{static_cast<const unsigned char*>(p.b), p.b_scales, p.k});
}
