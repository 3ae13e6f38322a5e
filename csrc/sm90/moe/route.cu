// DeepSeek's `noaux_tc` router, one warp per token: the CPU backend's `route`
// (src/backend/cpu/moe.rs) step for step, so that the same experts come out in the same order.
//
// The CPU scans with `best`: the first allowed index, replaced by each later one strictly
// greater. Such a scan ends on the first allowed index if its value is NaN (nothing is greater
// than a NaN), and otherwise on the first index of the largest non-NaN value. The warp computes
// exactly that: each lane scans its experts (lane, lane + 32, ...) in order, then the lanes
// combine (the minimum allowed index, and the largest value with the lowest index on ties, a
// total order, so the butterfly gives every lane the same answer). Group scores (the best two
// biased scores of each group) are computed by one lane per group with the CPU's own scan.
//
// The sigmoid is the CPU's `1 / (1 + exp(-x))` with glibc's own expf (common/expf.cuh), so the
// scores are the CPU's bits on glibc hosts; the additions, divisions and products are single
// f32 roundings as on the CPU. The router's output is then the CPU's, bit for bit.
#include "flashseek/params.h"
#include "../../common/expf.cuh"

namespace {

constexpr unsigned kWarp = 32;
constexpr unsigned kWarps = FLASHSEEK_ROUTE_THREADS / kWarp;
constexpr unsigned kMax = FLASHSEEK_ROUTE_MAX_EXPERTS;
constexpr unsigned kNone = 0xffffffffu;
static_assert(FLASHSEEK_ROUTE_THREADS % kWarp == 0, "whole warps per block");

__device__ __forceinline__ float sigmoid(float x) {
    return __fdiv_rn(1.0f, __fadd_rn(1.0f, flashseek::glibc_expf(-x)));
}

// The CPU's `best` over vals[0 .. n] except `skip`: the first index, replaced by each later
// one strictly greater; kNone when there is none.
__device__ __forceinline__ unsigned best_scan(const float* vals, unsigned n, unsigned skip) {
    unsigned b = kNone;
    for (unsigned i = 0; i < n; ++i) {
        if (i != skip && (b == kNone || vals[i] > vals[b])) {
            b = i;
        }
    }
    return b;
}

// The CPU's `best` over vals[0 .. n] where allowed(i), computed by the whole warp (every lane
// must call it; all get the same index): kNone when nothing is allowed.
template <class Allowed>
__device__ __forceinline__ unsigned warp_best(const float* vals, unsigned n, const Allowed& allowed) {
    const unsigned lane = threadIdx.x % kWarp;
    unsigned first = kNone;
    float best_v = 0.0f;
    unsigned best_i = kNone;
    for (unsigned i = lane; i < n; i += kWarp) {
        if (!allowed(i)) {
            continue;
        }
        first = min(first, i);
        const float v = vals[i];
        // Strictly greater: the lane keeps the first of equal values.
        if (!isnan(v) && (best_i == kNone || v > best_v)) {
            best_v = v;
            best_i = i;
        }
    }
    for (unsigned offset = kWarp / 2; offset > 0; offset /= 2) {
        first = min(first, __shfl_xor_sync(0xffffffffu, first, offset));
        const float v = __shfl_xor_sync(0xffffffffu, best_v, offset);
        const unsigned i = __shfl_xor_sync(0xffffffffu, best_i, offset);
        // The other lane's candidate wins if it exists and is larger, or equal at a lower index
        // (values are never NaN here, and -0 equals +0 as in the CPU's comparison).
        const bool other = i != kNone && (best_i == kNone || v > best_v || (!(best_v > v) && i < best_i));
        if (other) {
            best_v = v;
            best_i = i;
        }
    }
    return first != kNone && isnan(vals[first]) ? first : best_i;
}

}  // namespace

extern "C" __global__ void __launch_bounds__(FLASHSEEK_ROUTE_THREADS) flashseek_route_f32(const RouteParams p) {
    __shared__ float s_choice[kWarps][kMax];
    __shared__ float s_group[kWarps][kMax];
    __shared__ unsigned char s_group_on[kWarps][kMax];
    __shared__ unsigned char s_taken[kWarps][kMax];
    const unsigned warp = threadIdx.x / kWarp;
    const unsigned lane = threadIdx.x % kWarp;
    const unsigned row = blockIdx.x * kWarps + warp;
    // Uniform across the warp, and the kernel has no block-wide barrier: a warp past the last row
    // leaves alone.
    if (row >= p.rows) {
        return;
    }
    const unsigned n = p.n_experts;
    const unsigned per_group = n / p.n_group;
    const float* logits = p.logits + static_cast<size_t>(row) * n;
    float* choice = s_choice[warp];
    float* group = s_group[warp];
    unsigned char* group_on = s_group_on[warp];
    unsigned char* taken = s_taken[warp];

    for (unsigned j = lane; j < n; j += kWarp) {
        choice[j] = __fadd_rn(sigmoid(logits[j]), p.bias[j]);
        taken[j] = 0;
    }
    for (unsigned g = lane; g < p.n_group; g += kWarp) {
        group_on[g] = 0;
    }
    __syncwarp();
    // A group's score: its best biased score plus its second best (0 for a group of one).
    for (unsigned g = lane; g < p.n_group; g += kWarp) {
        const float* grp = choice + g * per_group;
        const unsigned first = best_scan(grp, per_group, kNone);
        const unsigned second = best_scan(grp, per_group, first);
        group[g] = __fadd_rn(grp[first], second == kNone ? 0.0f : grp[second]);
    }
    __syncwarp();
    for (unsigned i = 0; i < p.topk_group; ++i) {
        const unsigned g = warp_best(group, p.n_group, [&](unsigned x) { return group_on[x] == 0; });
        // The host checked topk_group <= n_group: a group is always left.
        if (lane == 0) {
            group_on[g] = 1;
        }
        __syncwarp();
    }
    int* idx = p.idx + static_cast<size_t>(row) * p.top_k;
    float* weights = p.weights + static_cast<size_t>(row) * p.top_k;
    float sum = 0.0f;
    for (unsigned j = 0; j < p.top_k; ++j) {
        // The host checked top_k <= topk_group * per_group: an expert is always left.
        const unsigned x = warp_best(choice, n, [&](unsigned e) { return group_on[e / per_group] == 1 && taken[e] == 0; });
        if (lane == 0) {
            taken[x] = 1;
            const float w = sigmoid(logits[x]);
            idx[j] = static_cast<int>(x);
            weights[j] = w;
            sum = __fadd_rn(sum, w);
        }
        __syncwarp();
    }
    // Lane 0 rereads the weights it wrote; the CPU sums them in slot order, then divides each.
    if (lane == 0) {
        const float denom = __fadd_rn(sum, 1e-20f);
        for (unsigned j = 0; j < p.top_k; ++j) {
            const float w = p.normalize != 0 ? __fdiv_rn(weights[j], denom) : weights[j];
            weights[j] = __fmul_rn(w, p.scaling);
        }
    }
}
