// The lightning indexer of DeepSeek-V3.2 (src/backend/cpu/indexer.rs on the device): weighted
// ReLU scores of each query row against every cached index key of its sequence, then a
// deterministic top-k of them.
//
// The scores are the CPU's bits. Each is computed with the CPU backend's f32 operations in its
// order, which is that of the AVX2 path of `dots` (src/backend/cpu/simd.rs) for q_h . k_t: eight
// lanes, lane l accumulating q[l + 8j] * k[l + 8j] with FMAs over the first dim/8*8 values, the
// lanes summed as ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)), plus the remaining values
// folded with FMAs from 0; then, head by head in order, score += (w_h * weight_scale) *
// max(dot, 0) with a rounded product and a rounded sum (no FMA), and finally score + 0 (folding
// -0 into +0). A group of 8 threads computes one score, lane l holding the CPU's lane l, and
// combines the lanes with butterfly shuffles: f32 addition commutes, so every lane of the group
// ends with the CPU's sum. `__fmul_rn`/`__fadd_rn` keep nvcc from contracting products into
// FMAs where the CPU has none, and `fmaf` is an FMA where it has one.
//
// The CPU ranks scores with `total_cmp`, so a NaN score's sign and payload decide its rank; x86
// makes NaNs differently from CUDA (an invalid operation gives the negative default NaN
// 0xffc00000, an operation on a NaN returns that NaN quieted), so the score's products and sums
// follow x86's rules (`x86_mul`, `x86_add`). The dot products need none: ReLU (max(NaN, 0) = 0
// on both) swallows their NaNs.
//
// The top-k keeps the k largest scores in that order (`total_cmp`: -0 < +0, NaNs above +inf or
// below -inf by sign), ties to the earlier position, positions ascending: a radix select over
// order-preserving keys of the scores' bits (4 passes of 8-bit digits over the row, histograms
// in shared memory) finds the k-th largest key and how many of its ties to keep, then one pass
// in position order keeps every larger score and the first of the ties, writing their positions
// in order through block-wide ballot scans.
#include "flashseek/params.h"
#include "../../common/kv_fp8.cuh"

namespace {

constexpr unsigned kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;

// ---- logits ----

// Lanes of the CPU's dot product, and threads per score.
constexpr unsigned kLanes = 8;
constexpr unsigned kGroups = FLASHSEEK_INDEXER_THREADS / kLanes;
// Positions each group scores: keys in registers, each q value read once for all of them.
constexpr unsigned kPerGroup = FLASHSEEK_INDEXER_POSITIONS / kGroups;
// FMA steps per lane at most, and key registers per position.
constexpr unsigned kMaxSteps = FLASHSEEK_INDEXER_MAX_DIM / kLanes;
// q values of the row staged in shared memory at once (whole heads: 64 of 128 for V3.2), and
// heads at most (their weights sit in shared memory too).
constexpr unsigned kQFloats = 8192;
constexpr unsigned kMaxChunkHeads = 256;
static_assert(FLASHSEEK_INDEXER_THREADS % kWarp == 0 && kWarp % kLanes == 0, "groups of 8 lanes tile the warps");
static_assert(FLASHSEEK_INDEXER_POSITIONS % kGroups == 0, "every group scores the same number of positions");
static_assert(FLASHSEEK_INDEXER_MAX_DIM % kLanes == 0, "whole steps of 8 lanes");
static_assert(kQFloats >= FLASHSEEK_INDEXER_MAX_DIM, "at least one head is staged");

__device__ __forceinline__ float quiet(float nan) {
    return __uint_as_float(__float_as_uint(nan) | 0x00400000u);
}

// The NaN x86 returns for an operation on a and b whose result is NaN: a's if a is one (the
// CPU's operand order is only known to be a's where both are NaN), else b's, else the default.
__device__ __forceinline__ float x86_nan(float a, float b) {
    if (isnan(a)) {
        return quiet(a);
    }
    if (isnan(b)) {
        return quiet(b);
    }
    return __uint_as_float(0xffc00000u);
}

__device__ __forceinline__ float x86_mul(float a, float b) {
    const float r = __fmul_rn(a, b);
    return isnan(r) ? x86_nan(a, b) : r;
}

__device__ __forceinline__ float x86_add(float a, float b) {
    const float r = __fadd_rn(a, b);
    return isnan(r) ? x86_nan(a, b) : r;
}

// The cache row of position t, through the sequence's block table (the host checked it).
__device__ __forceinline__ size_t key_slot(const IndexerParams& p, const unsigned* table, unsigned t) {
    return static_cast<size_t>(table[t / p.block_size]) * p.block_size + t % p.block_size;
}

// Column c of the key in cache row `slot`: an f32, or an FP8 code or a bf16 value decoded as
// the CPU does.
__device__ __forceinline__ float key_value(const IndexerParams& p, size_t slot, unsigned c) {
    if (p.cache_format == FLASHSEEK_CACHE_FP8) {
        return flashseek::kv_layout::index_value(flashseek::kv_layout::IndexFp8{static_cast<int>(p.dim)},
                                                 p.cache_bytes, slot, c);
    }
    if (p.cache_format == FLASHSEEK_CACHE_BF16) {
        return flashseek::kv_layout::bf16_value(p.cache_bytes, slot, p.dim, c);
    }
    return p.cache[slot * p.dim + c];
}

// ---- top-k ----

constexpr unsigned kTopkWarps = FLASHSEEK_INDEXER_TOPK_THREADS / kWarp;
// Digits of 8 bits: 4 passes over the row.
constexpr unsigned kBins = 256;
static_assert(FLASHSEEK_INDEXER_TOPK_THREADS % kWarp == 0 && FLASHSEEK_INDEXER_TOPK_THREADS >= kBins &&
                  kBins % kWarp == 0,
              "one thread per bin in whole warps for the bin scan");

// Unsigned keys in the order of `f32::total_cmp`: negative values (and NaNs) have every bit
// flipped, the others only the sign bit.
__device__ __forceinline__ unsigned order_key(float v) {
    const unsigned b = __float_as_uint(v);
    return (b & 0x80000000u) != 0 ? ~b : (b | 0x80000000u);
}

// The number of threads before this one (in thread order) whose flag is set, and in `total`
// that of the whole block. Every thread of the block calls it; `counts` (kTopkWarps values of
// shared memory) is free again when it returns.
__device__ __forceinline__ unsigned block_rank(bool flag, unsigned* counts, unsigned& total) {
    const unsigned warp = threadIdx.x / kWarp;
    const unsigned lane = threadIdx.x % kWarp;
    const unsigned ballot = __ballot_sync(kFullMask, flag);
    if (lane == 0) {
        counts[warp] = __popc(ballot);
    }
    __syncthreads();
    unsigned before = 0;
    unsigned sum = 0;
    for (unsigned w = 0; w < kTopkWarps; ++w) {
        const unsigned c = counts[w];
        before += w < warp ? c : 0;
        sum += c;
    }
    // Every thread has read the counts before the next call writes them.
    __syncthreads();
    total = sum;
    return before + __popc(ballot & ((1u << lane) - 1u));
}

}  // namespace

extern "C" __global__ void __launch_bounds__(FLASHSEEK_INDEXER_THREADS)
    flashseek_indexer_logits_f32(const IndexerParams p) {
    const unsigned r = blockIdx.x / p.tiles;
    const unsigned t0 = blockIdx.x % p.tiles * FLASHSEEK_INDEXER_POSITIONS;
    if (r >= p.n_rows) {
        return;
    }
    const unsigned row = p.rows[r];
    const unsigned n = p.pos[row] + 1;
    // Uniform over the block, so before any barrier.
    if (t0 >= n) {
        return;
    }
    __shared__ float qs[kQFloats];
    __shared__ float ws[kMaxChunkHeads];

    const unsigned lane = threadIdx.x % kLanes;
    const unsigned group = threadIdx.x / kLanes;
    // The first lane of this thread's group, within the warp.
    const unsigned group_base = threadIdx.x % kWarp & ~(kLanes - 1);
    const unsigned dim = p.dim;
    const unsigned d8 = dim / kLanes * kLanes;
    const unsigned steps = d8 / kLanes;
    const unsigned rest = dim - d8;
    const unsigned* table = p.blocks + p.starts[p.seq[row]];

    // Lane l holds values l, l + 8, ... of its group's keys (zeros past the row's last
    // position, which are scored but not written), and value d8 + l of the rest.
    float key[kPerGroup][kMaxSteps];
    float key_rest[kPerGroup];
#pragma unroll
    for (unsigned m = 0; m < kPerGroup; ++m) {
        const unsigned t = t0 + group + m * kGroups;
        const bool has = t < n;
        const size_t slot = has ? key_slot(p, table, t) : 0;
#pragma unroll
        for (unsigned j = 0; j < kMaxSteps; ++j) {
            key[m][j] = has && j < steps ? key_value(p, slot, j * kLanes + lane) : 0.0f;
        }
        key_rest[m] = has && lane < rest ? key_value(p, slot, d8 + lane) : 0.0f;
    }

    const unsigned chunk_heads = min(kQFloats / dim, kMaxChunkHeads);
    const float* q = p.q + static_cast<size_t>(row) * p.heads * dim;
    const float* w = p.weights + static_cast<size_t>(row) * p.heads;
    float score[kPerGroup];
#pragma unroll
    for (unsigned m = 0; m < kPerGroup; ++m) {
        score[m] = 0.0f;
    }
    for (unsigned h0 = 0; h0 < p.heads; h0 += chunk_heads) {
        const unsigned nh = min(chunk_heads, p.heads - h0);
        // Every thread is done with the previous chunk's heads before they are overwritten.
        __syncthreads();
        for (unsigned i = threadIdx.x; i < nh * dim; i += FLASHSEEK_INDEXER_THREADS) {
            qs[i] = q[static_cast<size_t>(h0) * dim + i];
        }
        for (unsigned i = threadIdx.x; i < nh; i += FLASHSEEK_INDEXER_THREADS) {
            ws[i] = x86_mul(w[h0 + i], p.weight_scale);
        }
        __syncthreads();
        for (unsigned h = 0; h < nh; ++h) {
            const float* qh = qs + h * dim;
            float acc[kPerGroup];
#pragma unroll
            for (unsigned m = 0; m < kPerGroup; ++m) {
                acc[m] = 0.0f;
            }
#pragma unroll
            for (unsigned j = 0; j < kMaxSteps; ++j) {
                if (j < steps) {
                    const float x = qh[j * kLanes + lane];
#pragma unroll
                    for (unsigned m = 0; m < kPerGroup; ++m) {
                        acc[m] = fmaf(x, key[m][j], acc[m]);
                    }
                }
            }
#pragma unroll
            for (unsigned m = 0; m < kPerGroup; ++m) {
                // Lane 0 sums (l0 + l4), then + (l2 + l6), then + ((l1 + l5) + (l3 + l7)):
                // the CPU's order; the other lanes the same sums with operands swapped.
                float v = acc[m];
                v = __fadd_rn(v, __shfl_xor_sync(kFullMask, v, 4));
                v = __fadd_rn(v, __shfl_xor_sync(kFullMask, v, 2));
                v = __fadd_rn(v, __shfl_xor_sync(kFullMask, v, 1));
                float tail = 0.0f;
                for (unsigned e = 0; e < rest; ++e) {
                    tail = fmaf(qh[d8 + e], __shfl_sync(kFullMask, key_rest[m], group_base + e), tail);
                }
                const float dot = __fadd_rn(v, tail);
                score[m] = x86_add(score[m], x86_mul(ws[h], fmaxf(dot, 0.0f)));
            }
        }
    }
    float* out = p.logits + static_cast<size_t>(r) * p.stride;
#pragma unroll
    for (unsigned m = 0; m < kPerGroup; ++m) {
        const unsigned t = t0 + group + m * kGroups;
        if (lane == 0 && t < n) {
            out[t] = x86_add(score[m], 0.0f);
        }
    }
}

extern "C" __global__ void __launch_bounds__(FLASHSEEK_INDEXER_TOPK_THREADS)
    flashseek_indexer_topk_f32(const IndexerParams p) {
    if (blockIdx.x >= p.n_rows) {
        return;
    }
    const unsigned row = p.rows[blockIdx.x];
    const unsigned n = p.pos[row] + 1;
    int* out = p.out + static_cast<size_t>(row) * p.k;
    if (n <= p.k) {
        // Every position is kept: no scores needed.
        for (unsigned j = threadIdx.x; j < p.k; j += FLASHSEEK_INDEXER_TOPK_THREADS) {
            out[j] = j < n ? static_cast<int>(j) : -1;
        }
        return;
    }
    const float* s = p.logits + static_cast<size_t>(blockIdx.x) * p.stride;
    __shared__ unsigned hist[kBins];
    __shared__ unsigned counts[kTopkWarps];
    // The chosen digit of a pass, and how many keys with it are still to be kept.
    __shared__ unsigned chosen[2];
    const unsigned warp = threadIdx.x / kWarp;
    const unsigned lane = threadIdx.x % kWarp;

    // Invariant: the k largest keys are those above prefix in its `mask` bits, plus the `rem`
    // largest of those equal to prefix there.
    unsigned prefix = 0;
    unsigned mask = 0;
    unsigned rem = p.k;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (unsigned i = threadIdx.x; i < kBins; i += FLASHSEEK_INDEXER_TOPK_THREADS) {
            hist[i] = 0;
        }
        __syncthreads();
        // base is uniform, so whole warps run each step: the warp adds equal digits once.
        for (unsigned base = 0; base < n; base += FLASHSEEK_INDEXER_TOPK_THREADS) {
            const unsigned t = base + threadIdx.x;
            unsigned bin = kBins;
            if (t < n) {
                const unsigned key = order_key(s[t]);
                if ((key & mask) == prefix) {
                    bin = key >> shift & (kBins - 1);
                }
            }
            const unsigned peers = __match_any_sync(kFullMask, bin);
            if (bin < kBins && lane == static_cast<unsigned>(__ffs(peers) - 1)) {
                atomicAdd(&hist[bin], static_cast<unsigned>(__popc(peers)));
            }
        }
        __syncthreads();
        // Thread i < 256 takes bin 255 - i: an inclusive scan over the threads gives the count
        // of keys at or above each digit; the digit where it first reaches rem is chosen.
        unsigned c = 0;
        unsigned incl = 0;
        if (threadIdx.x < kBins) {
            c = hist[kBins - 1 - threadIdx.x];
            incl = c;
            for (unsigned d = 1; d < kWarp; d *= 2) {
                const unsigned up = __shfl_up_sync(kFullMask, incl, d);
                if (lane >= d) {
                    incl += up;
                }
            }
            if (lane == kWarp - 1) {
                counts[warp] = incl;
            }
        }
        __syncthreads();
        if (threadIdx.x < kBins) {
            for (unsigned w = 0; w < warp; ++w) {
                incl += counts[w];
            }
            const unsigned above = incl - c;
            // Exactly one bin: the counts above rise from 0 to at least rem (the keys matching
            // the prefix number at least rem), and c > 0 there.
            if (above < rem && rem <= incl) {
                chosen[0] = kBins - 1 - threadIdx.x;
                chosen[1] = rem - above;
            }
        }
        __syncthreads();
        // The next writes of hist, counts and chosen come after the next pass's barriers.
        prefix |= chosen[0] << shift;
        mask |= (kBins - 1) << shift;
        rem = chosen[1];
    }

    // prefix is now the k-th largest key; keep every larger one and its first rem ties, in
    // position order. The loop's bounds are uniform, so every thread meets block_rank's barriers.
    unsigned ties_before = 0;
    unsigned taken = 0;
    for (unsigned base = 0; base < n && taken < p.k; base += FLASHSEEK_INDEXER_TOPK_THREADS) {
        const unsigned t = base + threadIdx.x;
        const unsigned key = t < n ? order_key(s[t]) : 0;
        const bool tie = t < n && key == prefix;
        unsigned ties = 0;
        const unsigned tie_rank = ties_before + block_rank(tie, counts, ties);
        const bool take = (t < n && key > prefix) || (tie && tie_rank < rem);
        unsigned takes = 0;
        const unsigned at = taken + block_rank(take, counts, takes);
        // Exactly k are taken in all, so at < k.
        if (take) {
            out[at] = static_cast<int>(t);
        }
        ties_before += ties;
        taken += takes;
    }
}
