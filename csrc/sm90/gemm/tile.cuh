// The SIMT GEMM tile shared by the GEMM family (gemm.cu) and the grouped MoE GEMMs
// (sm90/moe/moe_gemm.cu): one block of FLASHSEEK_GEMM_THREADS threads computes a 64x64 tile of
// out = a . b^T in f32, so that an expert's product has the very numerics of `linear`.
//
// Per step the block stages 32 columns of k of its 64 rows of a and of b in shared memory,
// decoded to f32 (exactly: every format here widens to f32 without rounding, except FP8 weights
// times their scale, which round as on the CPU), k-major so that the inner loop reads a row of
// each. Each of the 16x16 threads owns 4x4 outputs, rows ty + 16 i and columns tx + 16 j, and
// accumulates them with FMAs in k order. An output depends only on its row of a and its row of
// b: which other rows share the tile never changes its bits.
//
// Rows are addressed through the loaders: the GEMM family's loaders index a matrix directly,
// the MoE ones map a tile row to an activation row through a list in shared memory.
#pragma once

#include <cuda_fp16.h>

#include "flashseek/params.h"
#include "../../common/fp8.cuh"

namespace flashseek {
namespace tile {

constexpr unsigned kTile = FLASHSEEK_GEMM_TILE;
constexpr unsigned kThreads = FLASHSEEK_GEMM_THREADS;
// k columns staged per step: a 128-wide scale block is 4 whole steps.
constexpr unsigned kStep = 32;
constexpr unsigned kBlock = FLASHSEEK_FP8_GROUP;
// Threads per side of the block's 16x16 grid, and outputs per thread per side.
constexpr unsigned kSide = 16;
constexpr unsigned kPer = kTile / kSide;
static_assert(kSide * kSide == kThreads, "one thread per 4x4 outputs of the tile");
static_assert(kBlock % kStep == 0, "a scale block is whole steps");
static_assert(kBlock % kTile == 0, "a tile's columns share one weight scale block");

// One staged step of a and b: [k][row], padded by one so that the staging stores (a warp writes
// one row's 32 k values) fall in distinct banks.
struct Stage {
    float a[kStep][kTile + 1];
    float b[kStep][kTile + 1];
};

// What a block multiplies: rows m0 .. m0 + 64 of a (those below m) by rows n0 .. n0 + 64 of b
// (those below n), over k columns. Rows past m or n compute on zeros and are never stored.
struct Span {
    unsigned m0;
    unsigned m;
    unsigned n0;
    unsigned n;
    unsigned k;
};

// Loads of one matrix element, decoded to f32, at (row, col) of a row-major [rows, k] matrix.
struct LoadF32 {
    const float* p;
    unsigned k;
    __device__ float operator()(unsigned row, unsigned col) const { return p[static_cast<size_t>(row) * k + col]; }
};

// bf16 is the top half of an f32: widening is a shift, exact.
struct LoadBf16 {
    const unsigned short* p;
    unsigned k;
    __device__ float operator()(unsigned row, unsigned col) const {
        return __uint_as_float(static_cast<unsigned>(p[static_cast<size_t>(row) * k + col]) << 16);
    }
};

// f16 to f32 is exact.
struct LoadF16 {
    const unsigned short* p;
    unsigned k;
    __device__ float operator()(unsigned row, unsigned col) const {
        return __half2float(__ushort_as_half(p[static_cast<size_t>(row) * k + col]));
    }
};

// e4m3 codes, decoded exactly (the FP8 GEMM applies the scales per block, after the dot products).
struct LoadE4m3 {
    const unsigned char* p;
    unsigned k;
    __device__ float operator()(unsigned row, unsigned col) const {
        return e4m3_to_f32(p[static_cast<size_t>(row) * k + col]);
    }
};

// FP8 weights dequantized value by value, `code * scale` rounded to f32: the CPU's
// `decode_e4m3`, for the plain GEMM of unquantized activations.
struct LoadE4m3Scaled {
    const unsigned char* p;
    const float* scales;
    unsigned k;
    __device__ float operator()(unsigned row, unsigned col) const {
        const unsigned blocks = (k + kBlock - 1) / kBlock;
        const float s = scales[static_cast<size_t>(row / kBlock) * blocks + col / kBlock];
        return __fmul_rn(e4m3_to_f32(p[static_cast<size_t>(row) * k + col]), s);
    }
};

// Stages columns k0 .. k0 + kStep of rows row0 .. row0 + kTile of a [rows, k] matrix into
// s[col - k0][row - row0], zeros outside the matrix. Consecutive threads take consecutive
// columns of a row: coalesced loads.
template <class Load>
__device__ __forceinline__ void stage(float (*s)[kTile + 1], unsigned row0, unsigned rows, unsigned k0,
                                      unsigned k, const Load& load) {
    for (unsigned e = threadIdx.x; e < kTile * kStep; e += kThreads) {
        const unsigned r = e / kStep;
        const unsigned c = e % kStep;
        const unsigned row = row0 + r;
        const unsigned col = k0 + c;
        s[c][r] = row < rows && col < k ? load(row, col) : 0.0f;
    }
}

// acc[i][j] += the staged step's dot product of row ty + 16 i of a with row tx + 16 j of b.
__device__ __forceinline__ void multiply(const Stage& st, float (&acc)[kPer][kPer]) {
    const unsigned ty = threadIdx.x / kSide;
    const unsigned tx = threadIdx.x % kSide;
#pragma unroll 4
    for (unsigned c = 0; c < kStep; ++c) {
        float a[kPer];
        float b[kPer];
#pragma unroll
        for (unsigned i = 0; i < kPer; ++i) {
            a[i] = st.a[c][ty + i * kSide];
            b[i] = st.b[c][tx + i * kSide];
        }
#pragma unroll
        for (unsigned i = 0; i < kPer; ++i) {
#pragma unroll
            for (unsigned j = 0; j < kPer; ++j) {
                acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
            }
        }
    }
}

// acc[i][j] += a . b over k columns k0 .. k1 (k1 a multiple of kStep or k), staged step by step.
// Every thread of the block must call it (it holds barriers).
template <class LoadA, class LoadB>
__device__ __forceinline__ void accumulate(const Span& s, Stage& st, unsigned k0, unsigned k1, const LoadA& load_a,
                                           const LoadB& load_b, float (&acc)[kPer][kPer]) {
    for (unsigned c0 = k0; c0 < k1; c0 += kStep) {
        stage(st.a, s.m0, s.m, c0, s.k, load_a);
        stage(st.b, s.n0, s.n, c0, s.k, load_b);
        __syncthreads();
        multiply(st, acc);
        // The next step overwrites the stage: every thread must be done reading it.
        __syncthreads();
    }
}

// The FP8 block-scaled product: per 128-wide block of k, the dot products of the e4m3 values
// (exact products, summed in f32), then times the row's activation scale `scale_a(row, kb)` and
// the tile's weight scale b_scales[kb], added to the total. The tile's 64 columns lie in one
// 128-row block of weights (kBlock % kTile == 0): one b scale per k block for the whole tile, so
// b_scales points at the scales of that row block.
template <class LoadA, class LoadB, class ScaleA>
__device__ __forceinline__ void fp8_accumulate(const Span& s, Stage& st, const LoadA& load_a, const LoadB& load_b,
                                               const ScaleA& scale_a, const float* b_scales,
                                               float (&acc)[kPer][kPer]) {
    const unsigned blocks = (s.k + kBlock - 1) / kBlock;
    const unsigned ty = threadIdx.x / kSide;
    for (unsigned kb = 0; kb < blocks; ++kb) {
        float part[kPer][kPer] = {};
        accumulate(s, st, kb * kBlock, min(s.k, (kb + 1) * kBlock), load_a, load_b, part);
        const float sb = b_scales[kb];
#pragma unroll
        for (unsigned i = 0; i < kPer; ++i) {
            const unsigned row = s.m0 + ty + i * kSide;
            // Rows past m compute on zeros and are never stored.
            const float sa = row < s.m ? scale_a(row, kb) : 0.0f;
#pragma unroll
            for (unsigned j = 0; j < kPer; ++j) {
                acc[i][j] = __fadd_rn(acc[i][j], __fmul_rn(__fmul_rn(part[i][j], sa), sb));
            }
        }
    }
}

// Writes the tile's outputs that lie inside [m, n]: row `row` of out starts at out_row(row).
template <class OutRow>
__device__ __forceinline__ void store(const Span& s, const float (&acc)[kPer][kPer], const OutRow& out_row) {
    const unsigned ty = threadIdx.x / kSide;
    const unsigned tx = threadIdx.x % kSide;
#pragma unroll
    for (unsigned i = 0; i < kPer; ++i) {
        const unsigned row = s.m0 + ty + i * kSide;
#pragma unroll
        for (unsigned j = 0; j < kPer; ++j) {
            const unsigned col = s.n0 + tx + j * kSide;
            if (row < s.m && col < s.n) {
                out_row(row)[col] = acc[i][j];
            }
        }
    }
}

}  // namespace tile
}  // namespace flashseek
