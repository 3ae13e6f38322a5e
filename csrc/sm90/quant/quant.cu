// FP8 e4m3 rounding with DeepSeek's activation scales, and the normalized Walsh-Hadamard
// transform, in place over f32 segments. Both match the CPU backend bit for bit (src/fp8.rs,
// src/backend/cpu/elementwise.rs): they are its arithmetic, step for step, with explicitly
// rounded operations so that nvcc cannot contract anything into an FMA.
#include "flashseek/params.h"

namespace {

constexpr unsigned kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr unsigned kPerLane = FLASHSEEK_FP8_GROUP / kWarp;
static_assert(FLASHSEEK_FP8_GROUP % kWarp == 0, "a warp covers a group in whole rounds");
static_assert(FLASHSEEK_FP8_ROUND_THREADS % kWarp == 0, "whole warps per block");

constexpr float kE4m3Max = 448.0f;
// The f32 nearest 1/448: the value of Rust's `1.0 / E4M3_MAX`, spelled out so that no compiler
// folds the division differently.
constexpr float kInvE4m3Max = 0x1.24924ap-9f;
constexpr float kAmaxFloor = 1e-4f;

// `group_scale` of src/fp8.rs: amax/448 (amax at least 1e-4), rounded up to a power of two for
// ue8m0 by the same bit arithmetic.
__device__ __forceinline__ float group_scale(float amax, bool ue8m0) {
    const float s = __fmul_rn(fmaxf(amax, kAmaxFloor), kInvE4m3Max);
    if (!ue8m0) {
        return s;
    }
    const unsigned bits = __float_as_uint(s);
    const int exp = static_cast<int>((bits >> 23) & 0xffu) - 127 + ((bits & 0x7fffffu) != 0 ? 1 : 0);
    return __uint_as_float(static_cast<unsigned>(exp + 127) << 23);
}

// `round_e4m3` of src/fp8.rs for |x| <= 448: ties to even, the subnormals on a 2^-9 grid.
__device__ __forceinline__ float round_e4m3(float x) {
    const float a = fabsf(x);
    float r;
    if (a < 1.0f / 64.0f) {
        r = __fmul_rn(rintf(__fmul_rn(a, 512.0f)), 1.0f / 512.0f);
    } else {
        // Keep 3 mantissa bits, rounding to nearest even on the 20 dropped ones.
        const unsigned bits = __float_as_uint(a);
        const unsigned rounded = bits + 0x7ffffu + ((bits >> 20) & 1u);
        r = __uint_as_float(rounded & ~0xfffffu);
    }
    return copysignf(r, x);
}

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
    float amax = 0.0f;
#pragma unroll
    for (unsigned k = 0; k < kPerLane; ++k) {
        const unsigned i = lane + k * kWarp;
        v[k] = i < len ? x[i] : 0.0f;
        // fmaxf ignores a NaN, as Rust's f32::max in the CPU's fold.
        amax = fmaxf(amax, fabsf(v[k]));
    }
    for (unsigned offset = kWarp / 2; offset > 0; offset /= 2) {
        amax = fmaxf(amax, __shfl_xor_sync(kFullMask, amax, offset));
    }
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
