// RMSNorm over f32 rows, with the CPU backend's numerics (src/backend/cpu/norm.rs).
//
// One block per row. Each thread sums the squares of its strided columns in f32 (at most
// ceil(cols / 256) terms: 28 for a 7168-wide hidden state), then the partial sums are combined in
// f64 and the scale 1/sqrt(mean + eps) is taken in f64, as on the CPU. Against the CPU's all-f64
// sum the mean differs by at most about (terms per thread) * 2^-24 relative, so the scale by half
// that; the final `w * (x * r)` is the CPU's expression, in the same order.
#include "flashseek/params.h"

namespace {

constexpr unsigned kWarp = 32;
constexpr unsigned kWarps = FLASHSEEK_RMS_NORM_THREADS / kWarp;
static_assert(FLASHSEEK_RMS_NORM_THREADS % kWarp == 0 && kWarps <= kWarp,
              "the second reduction stage sums one partial per lane of a single warp");

__device__ __forceinline__ double warp_sum(double v) {
    for (unsigned offset = kWarp / 2; offset > 0; offset /= 2) {
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    }
    return v;
}

}  // namespace

extern "C" __global__ void __launch_bounds__(FLASHSEEK_RMS_NORM_THREADS)
    flashseek_rms_norm_f32(const RmsNormParams p) {
    // The grid has one block per row; a larger grid must not write past `out`.
    if (blockIdx.x >= p.rows) {
        return;
    }
    __shared__ double partial[kWarps];
    const float* x = p.x + static_cast<size_t>(blockIdx.x) * p.x_stride;
    float* out = p.out + static_cast<size_t>(blockIdx.x) * p.cols;

    float acc = 0.0f;
    for (unsigned c = threadIdx.x; c < p.cols; c += FLASHSEEK_RMS_NORM_THREADS) {
        const float v = x[c];
        acc = fmaf(v, v, acc);
    }
    const unsigned lane = threadIdx.x % kWarp;
    const double warp_total = warp_sum(static_cast<double>(acc));
    if (lane == 0) {
        partial[threadIdx.x / kWarp] = warp_total;
    }
    __syncthreads();
    // Every warp sums the partials itself: no second barrier to broadcast the total.
    const double total = warp_sum(lane < kWarps ? partial[lane] : 0.0);
    const float r = static_cast<float>(1.0 / sqrt(total / p.cols + static_cast<double>(p.eps)));

    for (unsigned c = threadIdx.x; c < p.cols; c += FLASHSEEK_RMS_NORM_THREADS) {
        out[c] = p.weight[c] * (x[c] * r);
    }
}
