// Elementwise ops over f32 buffers, with the CPU backend's numerics
// (src/backend/cpu/elementwise.rs). A grid-stride loop: the host caps the grid, so any length
// runs.
//
// add_assign is bit for bit the CPU's. silu_mul is `x / (1 + exp(-x)) * up` as on the CPU, but
// exp comes from a different library: CUDA's expf is off by up to 2 ulp where the CPU's (glibc)
// is within about half an ulp, so here exp is taken in f64 and rounded to f32, which is the
// correctly rounded expf nearly always. Where the two still differ (an exp within ~2^-29 ulp of a
// rounding boundary on either side) the result is a few ulp away; the test bounds it.
#include "flashseek/params.h"

namespace {

__device__ __forceinline__ float silu(float x) {
    const float e = static_cast<float>(exp(-static_cast<double>(x)));
    return __fdiv_rn(x, __fadd_rn(1.0f, e));
}

__device__ __forceinline__ size_t first_index() {
    return static_cast<size_t>(blockIdx.x) * FLASHSEEK_ELEMENTWISE_THREADS + threadIdx.x;
}

__device__ __forceinline__ size_t grid_stride() {
    return static_cast<size_t>(gridDim.x) * FLASHSEEK_ELEMENTWISE_THREADS;
}

}  // namespace

extern "C" __global__ void __launch_bounds__(FLASHSEEK_ELEMENTWISE_THREADS)
    flashseek_silu_mul_f32(const ElementwiseParams p) {
    for (size_t i = first_index(); i < p.n; i += grid_stride()) {
        p.acc[i] = __fmul_rn(silu(p.acc[i]), p.x[i]);
    }
}

extern "C" __global__ void __launch_bounds__(FLASHSEEK_ELEMENTWISE_THREADS)
    flashseek_add_assign_f32(const ElementwiseParams p) {
    for (size_t i = first_index(); i < p.n; i += grid_stride()) {
        p.acc[i] = __fadd_rn(p.acc[i], p.x[i]);
    }
}
