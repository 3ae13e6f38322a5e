// The index of each row's largest value, with the CPU backend's rule
// (src/backend/cpu/elementwise.rs), which scans left to right and moves only to a strictly
// larger value: the first index on ties (-0 and +0 tie), a NaN never chosen, except that a row
// starting with a NaN stays at 0 (nothing compares larger than it).
//
// One block per row. Each thread keeps its best (value, index) over strided columns, then the
// block reduces the candidates; "better" is a total order on candidates, so the result does not
// depend on the reduction's shape.
#include <climits>

#include "flashseek/params.h"

namespace {

constexpr unsigned kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr unsigned kWarps = FLASHSEEK_ARGMAX_THREADS / kWarp;
static_assert(FLASHSEEK_ARGMAX_THREADS % kWarp == 0 && kWarps <= kWarp,
              "the second reduction stage takes one candidate per lane of a single warp");
// A thread that saw no non-NaN value holds this index, which loses to every real one.
constexpr unsigned kNone = UINT_MAX;

struct Best {
    float value;
    unsigned index;
};

__device__ __forceinline__ bool better(Best a, Best b) {
    if (a.index == kNone || b.index == kNone) {
        return b.index == kNone && a.index != kNone;
    }
    return a.value > b.value || (a.value == b.value && a.index < b.index);
}

__device__ __forceinline__ Best warp_best(Best v) {
    for (unsigned offset = kWarp / 2; offset > 0; offset /= 2) {
        const Best other{__shfl_xor_sync(kFullMask, v.value, offset), __shfl_xor_sync(kFullMask, v.index, offset)};
        if (better(other, v)) {
            v = other;
        }
    }
    return v;
}

}  // namespace

extern "C" __global__ void __launch_bounds__(FLASHSEEK_ARGMAX_THREADS) flashseek_argmax_f32(const ArgmaxParams p) {
    if (blockIdx.x >= p.rows) {
        return;
    }
    __shared__ Best partial[kWarps];
    const float* x = p.x + static_cast<size_t>(blockIdx.x) * p.cols;

    Best best{0.0f, kNone};
    for (unsigned c = threadIdx.x; c < p.cols; c += FLASHSEEK_ARGMAX_THREADS) {
        const Best here{x[c], c};
        // Columns rise, so on a tie the candidate already held is the earlier one.
        if (!isnan(here.value) && (best.index == kNone || here.value > best.value)) {
            best = here;
        }
    }
    const unsigned lane = threadIdx.x % kWarp;
    best = warp_best(best);
    if (lane == 0) {
        partial[threadIdx.x / kWarp] = best;
    }
    __syncthreads();
    if (threadIdx.x < kWarp) {
        best = warp_best(lane < kWarps ? partial[lane] : Best{0.0f, kNone});
        if (lane == 0) {
            // kNone only when every value is NaN, and then x[0] is NaN too.
            p.out[blockIdx.x] = isnan(x[0]) ? 0u : best.index;
        }
    }
}
