// DeepSeek's activation quantization (`act_quant`) into e4m3fn codes and one f32 scale per 1x128
// group: the input of the FP8 GEMM. Bit for bit the CPU's `quantize_rows`: there the values are
// rounded through e4m3 and kept as f32, code * scale; here the same scale (common/fp8.cuh) and the
// code of the same rounded quotient, so decoding a code and multiplying by its scale gives the
// CPU's f32 exactly.
#include "flashseek/params.h"
#include "../../common/fp8.cuh"

namespace {

using flashseek::kWarp;
constexpr unsigned kPerLane = flashseek::kGroupPerLane;
static_assert(FLASHSEEK_ACT_QUANT_THREADS % kWarp == 0, "whole warps per block");

// The code of `v` in a group of scale `scale`: `round_trip_group` of src/fp8.rs without the final
// multiplication by the scale. A NaN quotient (a NaN input, or an infinity over its infinite
// scale) gets a NaN code, as the CPU keeps it NaN.
__device__ __forceinline__ unsigned char quantize(float v, float scale) {
    const float q = __fdiv_rn(v, scale);
    if (isnan(q)) {
        return flashseek::f32_to_e4m3(q);
    }
    return flashseek::f32_to_e4m3(
        flashseek::round_e4m3(fminf(fmaxf(q, -flashseek::kE4m3Max), flashseek::kE4m3Max)));
}

}  // namespace

// One warp per group, as fp8_round: the values sit in registers (4 a lane) while the warp takes
// their absolute maximum, exact in any order, so the scale is the CPU's.
extern "C" __global__ void __launch_bounds__(FLASHSEEK_ACT_QUANT_THREADS)
    flashseek_act_quant_f32(const ActQuantParams p) {
    const size_t group = (static_cast<size_t>(blockIdx.x) * FLASHSEEK_ACT_QUANT_THREADS + threadIdx.x) / kWarp;
    // Uniform across the warp: a warp past the last group leaves whole, before any shuffle.
    if (group >= p.groups) {
        return;
    }
    const unsigned per_row = (p.cols + FLASHSEEK_FP8_GROUP - 1) / FLASHSEEK_FP8_GROUP;
    const unsigned row = static_cast<unsigned>(group / per_row);
    const unsigned start = static_cast<unsigned>(group % per_row) * FLASHSEEK_FP8_GROUP;
    const unsigned len = min(static_cast<unsigned>(FLASHSEEK_FP8_GROUP), p.cols - start);
    const size_t first = static_cast<size_t>(row) * p.cols + start;
    const float* x = p.x + first;
    unsigned char* codes = p.codes + first;
    const unsigned lane = threadIdx.x % kWarp;

    float v[kPerLane];
    const float amax = flashseek::load_group_amax(x, len, lane, v);
    const float scale = flashseek::group_scale(amax, p.ue8m0 != 0);
    // Groups are numbered row-major, as the scales are laid out.
    if (lane == 0) {
        p.scales[group] = scale;
    }
#pragma unroll
    for (unsigned k = 0; k < kPerLane; ++k) {
        const unsigned i = lane + k * kWarp;
        if (i < len) {
            codes[i] = quantize(v[k], scale);
        }
    }
}
