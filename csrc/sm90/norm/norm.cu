// RMSNorm, RMSNorm with the residual add, and LayerNorm over f32 rows, with the CPU backend's
// numerics (src/backend/cpu/norm.rs).
//
// One block per row. The CPU sums in f64; so do these kernels: each thread sums its strided
// columns in f64 (a square of an f32 is exact in f64), then the block combines the partial sums
// in f64. Only the order of the f64 additions differs from the CPU's, which moves the sums by
// about cols * 2^-53 relative: the f32 results then match the CPU's except where an f64 value
// sits that close to an f32 rounding boundary, and there they differ by one rounding (the test
// bounds this). The final expressions are the CPU's, in the same order, with explicitly rounded
// operations so that nvcc cannot contract them into FMAs the CPU does not do.
#include "flashseek/params.h"

namespace {

constexpr unsigned kWarp = 32;
constexpr unsigned kWarps = FLASHSEEK_NORM_THREADS / kWarp;
static_assert(FLASHSEEK_NORM_THREADS % kWarp == 0 && kWarps <= kWarp,
              "the second reduction stage sums one partial per lane of a single warp");

__device__ __forceinline__ double warp_sum(double v) {
    for (unsigned offset = kWarp / 2; offset > 0; offset /= 2) {
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    }
    return v;
}

// The sum of `v` over the block, returned to every thread. `partial` is reused by the next call:
// the closing barrier keeps a fast warp from overwriting partials a slow one still reads.
__device__ double block_sum(double v, double* partial) {
    const unsigned lane = threadIdx.x % kWarp;
    const double warp_total = warp_sum(v);
    if (lane == 0) {
        partial[threadIdx.x / kWarp] = warp_total;
    }
    __syncthreads();
    // Every warp sums the partials itself: no broadcast through shared memory.
    const double total = warp_sum(lane < kWarps ? partial[lane] : 0.0);
    __syncthreads();
    return total;
}

// 1 / sqrt(mean of squares + eps), in f64 and then rounded to f32, as the CPU's `rms_row`.
__device__ __forceinline__ float rms_scale(double sum_squares, unsigned cols, float eps) {
    return static_cast<float>(1.0 / sqrt(sum_squares / cols + static_cast<double>(eps)));
}

}  // namespace

extern "C" __global__ void __launch_bounds__(FLASHSEEK_NORM_THREADS) flashseek_rms_norm_f32(const NormParams p) {
    // The grid has one block per row; a larger grid must not write past `out`.
    if (blockIdx.x >= p.rows) {
        return;
    }
    __shared__ double partial[kWarps];
    const float* x = p.x + static_cast<size_t>(blockIdx.x) * p.x_stride;
    float* out = p.out + static_cast<size_t>(blockIdx.x) * p.cols;

    double acc = 0.0;
    for (unsigned c = threadIdx.x; c < p.cols; c += FLASHSEEK_NORM_THREADS) {
        const double v = x[c];
        acc = fma(v, v, acc);
    }
    const float r = rms_scale(block_sum(acc, partial), p.cols, p.eps);
    for (unsigned c = threadIdx.x; c < p.cols; c += FLASHSEEK_NORM_THREADS) {
        out[c] = __fmul_rn(p.weight[c], __fmul_rn(x[c], r));
    }
}

extern "C" __global__ void __launch_bounds__(FLASHSEEK_NORM_THREADS) flashseek_add_rms_norm_f32(const NormParams p) {
    if (blockIdx.x >= p.rows) {
        return;
    }
    __shared__ double partial[kWarps];
    const size_t row = static_cast<size_t>(blockIdx.x) * p.cols;
    float* x = p.x + row;
    const float* delta = p.delta + row;
    float* out = p.out + row;

    // Each thread writes the residual columns it reads back below: no barrier needed between.
    double acc = 0.0;
    for (unsigned c = threadIdx.x; c < p.cols; c += FLASHSEEK_NORM_THREADS) {
        const float v = __fadd_rn(x[c], delta[c]);
        x[c] = v;
        acc = fma(static_cast<double>(v), static_cast<double>(v), acc);
    }
    const float r = rms_scale(block_sum(acc, partial), p.cols, p.eps);
    for (unsigned c = threadIdx.x; c < p.cols; c += FLASHSEEK_NORM_THREADS) {
        out[c] = __fmul_rn(p.weight[c], __fmul_rn(x[c], r));
    }
}

// Biased variance, as torch and the CPU compute it: two passes, the mean first.
extern "C" __global__ void __launch_bounds__(FLASHSEEK_NORM_THREADS) flashseek_layer_norm_f32(const NormParams p) {
    if (blockIdx.x >= p.rows) {
        return;
    }
    __shared__ double partial[kWarps];
    float* x = p.x + static_cast<size_t>(blockIdx.x) * p.cols;

    double acc = 0.0;
    for (unsigned c = threadIdx.x; c < p.cols; c += FLASHSEEK_NORM_THREADS) {
        acc += static_cast<double>(x[c]);
    }
    const double mean = block_sum(acc, partial) / p.cols;
    acc = 0.0;
    for (unsigned c = threadIdx.x; c < p.cols; c += FLASHSEEK_NORM_THREADS) {
        // Squared then added, as the CPU does: an FMA would skip the rounding of the square.
        const double d = __dsub_rn(static_cast<double>(x[c]), mean);
        acc = __dadd_rn(acc, __dmul_rn(d, d));
    }
    const double var = block_sum(acc, partial) / p.cols;
    const double r = 1.0 / sqrt(var + static_cast<double>(p.eps));
    for (unsigned c = threadIdx.x; c < p.cols; c += FLASHSEEK_NORM_THREADS) {
        const float z = static_cast<float>(__dmul_rn(__dsub_rn(static_cast<double>(x[c]), mean), r));
        x[c] = __fadd_rn(__fmul_rn(z, p.weight[c]), p.bias[c]);
    }
}
