// The simple GEMMs, out[m, n] = a[m, k] . b[n, k]^T in f32: the FP8 block-scaled one (DeepSeek's
// 1x128 activation and 128x128 weight scales) and the plain ones for f32 activations over f32,
// bf16, f16 or FP8 weights. SIMT and f32 throughout: the first, obviously correct kernel of the
// family (DESIGN.md, "Kernels"), the GPU reference of the wgmma one to come.
//
// Each block computes one 64x64 tile of out. Per step it stages 32 columns of k of its 64 rows
// of a and of b in shared memory, decoded to f32 (exactly: every format here widens to f32
// without rounding, except FP8 weights times their scale, which round as on the CPU), k-major so
// that the inner loop reads a row of each. Each of the 16x16 threads owns 4x4 outputs, rows
// ty + 16 i and columns tx + 16 j, and accumulates them with FMAs in k order.
//
// Numerics against the CPU backend (src/backend/cpu/linear.rs): the same products summed in
// another order, so equal up to the f32 rounding of the sums; tests/cuda_kernels.rs bounds it.
#include <cuda_fp16.h>

#include "flashseek/params.h"
#include "../../common/fp8.cuh"

namespace {

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

// The tile of out this block computes.
struct Tile {
    unsigned m0;
    unsigned n0;
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

// e4m3 codes, decoded exactly (fp8_gemm applies the scales per block, after the dot products).
struct LoadE4m3 {
    const unsigned char* p;
    unsigned k;
    __device__ float operator()(unsigned row, unsigned col) const {
        return flashseek::e4m3_to_f32(p[static_cast<size_t>(row) * k + col]);
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
        return __fmul_rn(flashseek::e4m3_to_f32(p[static_cast<size_t>(row) * k + col]), s);
    }
};

// Whether block blockIdx.x has a tile: the host launches one block per tile, so a block past
// the last leaves whole, before any barrier.
__device__ __forceinline__ bool has_tile(const GemmParams& p) {
    return blockIdx.x < ((p.m + kTile - 1) / kTile) * ((p.n + kTile - 1) / kTile);
}

// The tile of block blockIdx.x, tiles numbered row-major over out.
__device__ __forceinline__ Tile tile_of_block(const GemmParams& p) {
    const unsigned tiles_n = (p.n + kTile - 1) / kTile;
    return Tile{blockIdx.x / tiles_n * kTile, blockIdx.x % tiles_n * kTile};
}

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
template <class LoadA, class LoadB>
__device__ __forceinline__ void accumulate(const GemmParams& p, const Tile& t, Stage& st, unsigned k0, unsigned k1,
                                           const LoadA& load_a, const LoadB& load_b,
                                           float (&acc)[kPer][kPer]) {
    for (unsigned c0 = k0; c0 < k1; c0 += kStep) {
        stage(st.a, t.m0, p.m, c0, p.k, load_a);
        stage(st.b, t.n0, p.n, c0, p.k, load_b);
        __syncthreads();
        multiply(st, acc);
        // The next step overwrites the stage: every thread must be done reading it.
        __syncthreads();
    }
}

__device__ __forceinline__ void store(const GemmParams& p, const Tile& t, const float (&acc)[kPer][kPer]) {
    const unsigned ty = threadIdx.x / kSide;
    const unsigned tx = threadIdx.x % kSide;
#pragma unroll
    for (unsigned i = 0; i < kPer; ++i) {
        const unsigned row = t.m0 + ty + i * kSide;
#pragma unroll
        for (unsigned j = 0; j < kPer; ++j) {
            const unsigned col = t.n0 + tx + j * kSide;
            if (row < p.m && col < p.n) {
                p.out[static_cast<size_t>(row) * p.n + col] = acc[i][j];
            }
        }
    }
}

// The plain GEMM: f32 activations, weights decoded by `load_b`.
template <class LoadB>
__device__ __forceinline__ void plain_gemm(const GemmParams& p, const LoadB& load_b) {
    if (!has_tile(p)) {
        return;
    }
    const Tile t = tile_of_block(p);
    __shared__ Stage st;
    float acc[kPer][kPer] = {};
    accumulate(p, t, st, 0, p.k, LoadF32{static_cast<const float*>(p.a), p.k}, load_b, acc);
    store(p, t, acc);
}

}  // namespace

// Per 128-wide block of k: the dot products of the e4m3 values (exact products, summed in f32),
// then times the row's activation scale and the tile's weight scale, added to the total. The
// tile's 64 columns lie in one 128-row block of weights (kBlock % kTile == 0): one b scale per
// k block for the whole tile. With the thread count alone as launch bound, ptxas (13.0) settles on
// 48 registers here and spills; a minimum of one block per SM asks nothing of occupancy and lets
// it use the 72 it needs.
extern "C" __global__ void __launch_bounds__(FLASHSEEK_GEMM_THREADS, 1) flashseek_fp8_gemm_f32(const GemmParams p) {
    if (!has_tile(p)) {
        return;
    }
    const Tile t = tile_of_block(p);
    __shared__ Stage st;
    const LoadE4m3 load_a{static_cast<const unsigned char*>(p.a), p.k};
    const LoadE4m3 load_b{static_cast<const unsigned char*>(p.b), p.k};
    const unsigned blocks = (p.k + kBlock - 1) / kBlock;
    const unsigned ty = threadIdx.x / kSide;
    const float* b_scales = p.b_scales + static_cast<size_t>(t.n0 / kBlock) * blocks;
    float acc[kPer][kPer] = {};
    for (unsigned kb = 0; kb < blocks; ++kb) {
        float part[kPer][kPer] = {};
        accumulate(p, t, st, kb * kBlock, min(p.k, (kb + 1) * kBlock), load_a, load_b, part);
        const float sb = b_scales[kb];
#pragma unroll
        for (unsigned i = 0; i < kPer; ++i) {
            const unsigned row = t.m0 + ty + i * kSide;
            // Rows past m compute on zeros and are never stored.
            const float sa = row < p.m ? p.a_scales[static_cast<size_t>(row) * blocks + kb] : 0.0f;
#pragma unroll
            for (unsigned j = 0; j < kPer; ++j) {
                acc[i][j] = __fadd_rn(acc[i][j], __fmul_rn(__fmul_rn(part[i][j], sa), sb));
            }
        }
    }
    store(p, t, acc);
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
