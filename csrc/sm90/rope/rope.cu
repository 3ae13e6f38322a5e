// Rotary position embedding in place, in DeepSeek's two layouts, with the CPU backend's numerics
// (src/backend/cpu/rope.rs): bit for bit, since every rotated value is the CPU's expression with
// explicitly rounded operations (no FMA contraction, which the CPU does not do).
//
// One block per row; its threads take the (head, pair) rotations of the row in turn. Each pair is
// read and written by one thread only, so there is nothing to synchronize.
#include "flashseek/params.h"

namespace {

enum class Layout { Interleaved, HalfSplit };

template <Layout L>
__device__ __forceinline__ void rope_row(const RopeParams& p) {
    if (blockIdx.x >= p.rows) {
        return;
    }
    float* x = p.x + static_cast<size_t>(blockIdx.x) * p.cols;
    const unsigned half = p.dim / 2;
    const float* cos = p.cos_sin + static_cast<size_t>(blockIdx.x) * p.dim;
    const float* sin = cos + half;
    const unsigned pairs = p.n_heads * half;
    for (unsigned k = threadIdx.x; k < pairs; k += FLASHSEEK_ROPE_THREADS) {
        const unsigned h = k / half;
        const unsigned i = k % half;
        float* seg = x + h * p.head_stride + p.offset;
        // Interleaved rotates (x[2i], x[2i+1]), half-split (x[i], x[i + dim/2]).
        float* lo = L == Layout::Interleaved ? seg + 2 * i : seg + i;
        float* hi = L == Layout::Interleaved ? lo + 1 : lo + half;
        const float a = *lo;
        const float b = *hi;
        *lo = __fsub_rn(__fmul_rn(a, cos[i]), __fmul_rn(b, sin[i]));
        *hi = __fadd_rn(__fmul_rn(b, cos[i]), __fmul_rn(a, sin[i]));
    }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(FLASHSEEK_ROPE_THREADS) flashseek_rope_interleaved_f32(const RopeParams p) {
    rope_row<Layout::Interleaved>(p);
}

extern "C" __global__ void __launch_bounds__(FLASHSEEK_ROPE_THREADS) flashseek_rope_half_split_f32(const RopeParams p) {
    rope_row<Layout::HalfSplit>(p);
}
