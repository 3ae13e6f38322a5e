// glibc's expf, bit for bit, for the kernels whose CPU twin calls `f32::exp` (the router's
// sigmoid): Rust's f32::exp is the platform's expf, and glibc's (2.28 on, from Arm's optimized
// routines; musl has the same code) is not correctly rounded: it differs from the correctly
// rounded exp on about 6 inputs in 10^4 in [-6, 6], enough to change which expert wins a close
// race. This is sysdeps/ieee754/flt-32/e_expf.c with the fused multiply-adds of its FMA build
// (the variant x86-64 glibc selects on CPUs with FMA, disassembled from libm 2.36; aarch64 builds
// fuse the same operations), constants as the library holds them. `tests/host_headers.rs` compiles
// this header on the host and compares it with the system's expf.
//
// Plain C++ on the host (no contraction: build with -ffp-contract=off), explicitly rounded
// operations on the device.
#pragma once

#include <cmath>
#include <cstring>

#include "host_device.cuh"

namespace flashseek {
namespace glibc_expf_detail {

// tab[i] = bits(2^(i/32)) - (i << 47): adding k << 47 to tab[k % 32] gives the bits of 2^(k/32).
#define FLASHSEEK_EXP2F_TAB                                                                                          \
    {                                                                                                                \
        0x3ff0000000000000ull, 0x3fefd9b0d3158574ull, 0x3fefb5586cf9890full, 0x3fef9301d0125b51ull,                  \
            0x3fef72b83c7d517bull, 0x3fef54873168b9aaull, 0x3fef387a6e756238ull, 0x3fef1e9df51fdee1ull,              \
            0x3fef06fe0a31b715ull, 0x3feef1a7373aa9cbull, 0x3feedea64c123422ull, 0x3feece086061892dull,              \
            0x3feebfdad5362a27ull, 0x3feeb42b569d4f82ull, 0x3feeab07dd485429ull, 0x3feea47eb03a5585ull,              \
            0x3feea09e667f3bcdull, 0x3fee9f75e8ec5f74ull, 0x3feea11473eb0187ull, 0x3feea589994cce13ull,              \
            0x3feeace5422aa0dbull, 0x3feeb737b0cdc5e5ull, 0x3feec49182a3f090ull, 0x3feed503b23e255dull,              \
            0x3feee89f995ad3adull, 0x3feeff76f2fb5e47ull, 0x3fef199bdd85529cull, 0x3fef3720dcef9069ull,              \
            0x3fef5818dcfba487ull, 0x3fef7c97337b9b5full, 0x3fefa4afa2a490daull, 0x3fefd0765b6e4540ull,              \
    }
#ifdef __CUDACC__
static __constant__ unsigned long long kTabDevice[32] = FLASHSEEK_EXP2F_TAB;
#endif
static const unsigned long long kTabHost[32] = FLASHSEEK_EXP2F_TAB;
#undef FLASHSEEK_EXP2F_TAB

// 32/ln2, 1.5 * 2^52 (adding it rounds to an integer), the polynomial of 2^(r/32) - 1 scaled for
// r in [-1/2, 1/2].
constexpr double kInvLn2N = 0x1.71547652b82fep+5;
constexpr double kShift = 0x1.8p+52;
constexpr double kC0 = 0x1.c6af84b912394p-20;
constexpr double kC1 = 0x1.ebfce50fac4f3p-13;
constexpr double kC2 = 0x1.62e42ff0c52d6p-6;

FLASHSEEK_HOST_DEVICE inline double fma_rn(double a, double b, double c) {
#ifdef __CUDA_ARCH__
    return __fma_rn(a, b, c);
#else
    return std::fma(a, b, c);
#endif
}

FLASHSEEK_HOST_DEVICE inline double mul_rn(double a, double b) {
#ifdef __CUDA_ARCH__
    return __dmul_rn(a, b);
#else
    return a * b;
#endif
}

FLASHSEEK_HOST_DEVICE inline double sub_rn(double a, double b) {
#ifdef __CUDA_ARCH__
    return __dsub_rn(a, b);
#else
    return a - b;
#endif
}

FLASHSEEK_HOST_DEVICE inline unsigned long long bits(double d) {
#ifdef __CUDA_ARCH__
    return static_cast<unsigned long long>(__double_as_longlong(d));
#else
    unsigned long long u;
    std::memcpy(&u, &d, sizeof u);
    return u;
#endif
}

FLASHSEEK_HOST_DEVICE inline double from_bits(unsigned long long u) {
#ifdef __CUDA_ARCH__
    return __longlong_as_double(static_cast<long long>(u));
#else
    double d;
    std::memcpy(&d, &u, sizeof d);
    return d;
#endif
}

FLASHSEEK_HOST_DEVICE inline unsigned float_bits(float f) {
#ifdef __CUDA_ARCH__
    return __float_as_uint(f);
#else
    unsigned u;
    std::memcpy(&u, &f, sizeof u);
    return u;
#endif
}

FLASHSEEK_HOST_DEVICE inline float float_from_bits(unsigned u) {
#ifdef __CUDA_ARCH__
    return __uint_as_float(u);
#else
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
#endif
}

}  // namespace glibc_expf_detail

// glibc's expf(x). Special cases as glibc returns them (without setting errno): -inf gives 0,
// inf and NaN give x + x, overflow inf, underflow 0, and inputs whose result lies below the
// smallest subnormal but may round up to it give that subnormal (2^-149).
FLASHSEEK_HOST_DEVICE inline float glibc_expf(float x) {
    using namespace glibc_expf_detail;
    const unsigned ix = float_bits(x);
    const unsigned abstop = (ix >> 20) & 0x7ffu;
    if (abstop >= 0x42bu) {
        // |x| >= 88 or x is NaN.
        if (ix == 0xff800000u) {
            return 0.0f;
        }
        if (abstop >= 0x7f8u) {
            return x + x;
        }
        if (x > 0x1.62e42ep6f) {
            return float_from_bits(0x7f800000u);
        }
        if (x < -0x1.9fe368p6f) {
            return 0.0f;
        }
        if (x < -0x1.9d1d9ep6f) {
            return 0x1p-149f;
        }
    }
    const double xd = static_cast<double>(x);
    // x * 32/ln2 = k + r with r in [-1/2, 1/2]: k rounded by the shift, r from the exact product.
    const double kd_shifted = fma_rn(kInvLn2N, xd, kShift);
    const unsigned long long ki = bits(kd_shifted);
    const double kd = sub_rn(kd_shifted, kShift);
    const double r = fma_rn(kInvLn2N, xd, -kd);
    // exp(x) = 2^(k/32) * 2^(r/32) ~= s * (C0 r^3 + C1 r^2 + C2 r + 1).
#ifdef __CUDA_ARCH__
    const unsigned long long t = kTabDevice[ki % 32] + (ki << 47);
#else
    const unsigned long long t = kTabHost[ki % 32] + (ki << 47);
#endif
    const double s = from_bits(t);
    const double z = fma_rn(kC0, r, kC1);
    const double r2 = mul_rn(r, r);
    const double y = fma_rn(z, r2, fma_rn(kC2, r, 1.0));
    return static_cast<float>(mul_rn(y, s));
}

}  // namespace flashseek
