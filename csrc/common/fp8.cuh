// FP8 e4m3 (the e4m3fn variant: no infinities, max 448) and DeepSeek's activation scales on the
// device: the arithmetic of src/fp8.rs step for step, with explicitly rounded operations so that
// nvcc cannot contract anything into an FMA. Shared by the kernels that round or quantize
// activations (sm90/quant, sm90/gemm) and those that decode e4m3 codes (sm90/gemm).
#pragma once

#include "flashseek/params.h"

namespace flashseek {

constexpr float kE4m3Max = 448.0f;
// The f32 nearest 1/448: the value of Rust's `1.0 / E4M3_MAX`, spelled out so that no compiler
// folds the division differently.
constexpr float kInvE4m3Max = 0x1.24924ap-9f;
constexpr float kAmaxFloor = 1e-4f;
// The e4m3fn NaN codes are 0x7f and 0xff: all exponent and mantissa bits set.
constexpr unsigned kE4m3NanMagnitude = 0x7fu;

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

// The value of an e4m3fn code, exactly as src/fp8.rs's table `E4M3_TO_F32` holds it. A normal
// code's exponent and mantissa fields move into f32's with the bias changed from 7 to 127; a
// subnormal one is its mantissa times 2^-9 (exact).
__device__ __forceinline__ float e4m3_to_f32(unsigned code) {
    const unsigned mag = code & 0x7fu;
    float v;
    if (mag == kE4m3NanMagnitude) {
        v = __uint_as_float(0x7fc00000u);
    } else if (mag < 8u) {
        v = __fmul_rn(static_cast<float>(mag), 1.0f / 512.0f);
    } else {
        v = __uint_as_float((((mag >> 3) + 120u) << 23) | ((mag & 7u) << 20));
    }
    return (code & 0x80u) != 0 ? -v : v;
}

// The e4m3fn code of `r`, a value `round_e4m3` returned (so one e4m3 holds exactly) or a NaN;
// the sign of a zero is kept. Subnormals (and the first normal, 2^-6 = code 8) are multiples of
// 2^-9 whose code is that multiple; other values carry their exponent and top 3 mantissa bits.
__device__ __forceinline__ unsigned char f32_to_e4m3(float r) {
    const unsigned sign = signbit(r) ? 0x80u : 0u;
    if (isnan(r)) {
        return static_cast<unsigned char>(sign | kE4m3NanMagnitude);
    }
    const float a = fabsf(r);
    unsigned mag;
    if (a < 1.0f / 64.0f) {
        mag = static_cast<unsigned>(__fmul_rn(a, 512.0f));
    } else {
        const unsigned bits = __float_as_uint(a);
        mag = (((bits >> 23) - 120u) << 3) | ((bits >> 20) & 7u);
    }
    return static_cast<unsigned char>(sign | mag);
}

constexpr unsigned kWarp = 32;
// Values of a 1x128 group each lane of its warp holds.
constexpr unsigned kGroupPerLane = FLASHSEEK_FP8_GROUP / kWarp;
static_assert(FLASHSEEK_FP8_GROUP % kWarp == 0, "a warp covers a group in whole rounds");

// One warp loads a group of `len` values of x (lane l takes l, l + 32, ...; past `len`, zeros)
// into `v` and returns the group's absolute maximum in every lane: exact in any order, so the
// scale made of it is the CPU's. Every lane of the warp must call it.
__device__ __forceinline__ float load_group_amax(const float* x, unsigned len, unsigned lane,
                                                 float (&v)[kGroupPerLane]) {
    float amax = 0.0f;
#pragma unroll
    for (unsigned k = 0; k < kGroupPerLane; ++k) {
        const unsigned i = lane + k * kWarp;
        v[k] = i < len ? x[i] : 0.0f;
        // fmaxf ignores a NaN, as Rust's f32::max in the CPU's fold.
        amax = fmaxf(amax, fabsf(v[k]));
    }
    for (unsigned offset = kWarp / 2; offset > 0; offset /= 2) {
        amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, offset));
    }
    return amax;
}

}  // namespace flashseek
