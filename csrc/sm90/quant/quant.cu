// FP8 e4m3 rounding with DeepSeek's activation scales (common/fp8.cuh), and the normalized
// Walsh-Hadamard transform, in place over f32 segments. Both match the CPU backend bit for bit (src/fp8.rs,
// src/backend/cpu/elementwise.rs): they are its arithmetic, step for step, with explicitly
// rounded operations so that nvcc cannot contract anything into an FMA.
#include "flashseek/params.h"
#include "../../common/fp8.cuh"

namespace {

using flashseek::group_scale;
using flashseek::kE4m3Max;
using flashseek::round_e4m3;

using flashseek::kWarp;
constexpr unsigned kPerLane = flashseek::kGroupPerLane;
static_assert(FLASHSEEK_FP8_ROUND_THREADS % kWarp == 0, "whole warps per block");

// `round_trip_group` of src/fp8.rs for one value. A NaN stays NaN here; the CPU's bit trick
// keeps it NaN too for the NaNs its division makes of a NaN input (a payload below 0x7ff80000),
// but it would carry CUDA's canonical NaN (0x7fffffff) into the sign bit and return zero.
__device__ __forceinline__ float round_trip(float v, float scale) {
    const float q = __fdiv_rn(v, scale);
    if (isnan(q)) {
        return q;
    }
    return __fmul_rn(round_e4m3(fminf(fmaxf(q, -kE4m3Max), kE4m3Max)), scale);
}

}  // namespace

// One warp per group: the group's values sit in registers (4 a lane) while the warp takes their
// absolute maximum, which is exact in any order, so the scale is the CPU's.
extern "C" __global__ void __launch_bounds__(FLASHSEEK_FP8_ROUND_THREADS) flashseek_fp8_round_f32(const QuantParams p) {
    const size_t warp = (static_cast<size_t>(blockIdx.x) * FLASHSEEK_FP8_ROUND_THREADS + threadIdx.x) / kWarp;
    // Uniform across the warp: a warp past the last group leaves whole, before any shuffle.
    if (warp >= p.groups) {
        return;
    }
    const unsigned per_segment = (p.width + FLASHSEEK_FP8_GROUP - 1) / FLASHSEEK_FP8_GROUP;
    const unsigned segment = static_cast<unsigned>(warp / per_segment);
    const unsigned start = static_cast<unsigned>(warp % per_segment) * FLASHSEEK_FP8_GROUP;
    const unsigned len = min(static_cast<unsigned>(FLASHSEEK_FP8_GROUP), p.width - start);
    float* x = p.x + static_cast<size_t>(segment) * p.width + start;
    const unsigned lane = threadIdx.x % kWarp;

    float v[kPerLane];
    const float amax = flashseek::load_group_amax(x, len, lane, v);
    const float scale = group_scale(amax, p.ue8m0 != 0);
#pragma unroll
    for (unsigned k = 0; k < kPerLane; ++k) {
        const unsigned i = lane + k * kWarp;
        if (i < len) {
            x[i] = round_trip(v[k], scale);
        }
    }
}

// One block per segment, transformed in place in global memory: stage h adds and subtracts the
// pairs (i, i + h) that the CPU pairs at that stage, so every value sees the CPU's operations in
// the CPU's order. The pairs of a stage are disjoint, one thread each; the barrier between
// stages makes a stage's writes visible to the threads of the next.
extern "C" __global__ void __launch_bounds__(FLASHSEEK_HADAMARD_THREADS) flashseek_hadamard_f32(const QuantParams p) {
    if (blockIdx.x >= p.segments) {
        return;
    }
    float* x = p.x + static_cast<size_t>(blockIdx.x) * p.width;
    const unsigned half = p.width / 2;
    for (unsigned h = 1; h < p.width; h *= 2) {
        for (unsigned k = threadIdx.x; k < half; k += FLASHSEEK_HADAMARD_THREADS) {
            const unsigned i = (k / h) * 2 * h + k % h;
            const float u = x[i];
            const float v = x[i + h];
            x[i] = __fadd_rn(u, v);
            x[i + h] = __fsub_rn(u, v);
        }
        __syncthreads();
    }
    for (unsigned i = threadIdx.x; i < p.width; i += FLASHSEEK_HADAMARD_THREADS) {
        x[i] = __fmul_rn(x[i], p.scale);
    }
}
