// MLA decode attention over the paged latent cache, split-KV: the CPU backend's `mla_decode`
// (src/backend/cpu/attention.rs), dense-causal or sparse over the indexer's top-k positions.
//
// flashseek_mla_decode_f32: one block per (query row, group of 8 heads, split of the keys), one
// warp per head. The block walks its keys (positions, or top-k entries) a tile of 16 at a time:
// 16 threads resolve the tile's cache rows through the block table (-1 for an entry outside
// 0..=pos), the block stages those rows (kv_lora + rope values each) in shared memory, and each
// warp scores them against its head's absorbed query (in registers, 18 values a lane) and folds
// them into its online softmax (attention.cuh), the weighted latent (kv_lora wide) in registers.
// A cached row is read once per group of 8 heads. With one split the block writes the output;
// with more it writes (max, sum, keys) and the unnormalized latent of each head, and
// flashseek_mla_decode_combine_f32 merges the splits by their maxima.
//
// An FP8 or bf16 cache (cache_format) is decoded as the tile is staged, into the CPU's values.
//
// Numerics against the CPU: the same f32 products summed in another order, and the softmax
// computed online (rescaled as the maximum grows) where the CPU normalizes once;
// tests/cuda_mla.rs derives the bound.
#include "flashseek/params.h"
#include "attention.cuh"
#include "../../common/kv_fp8.cuh"

namespace {

using namespace flashseek::mla;

constexpr unsigned kThreads = FLASHSEEK_MLA_DECODE_THREADS;
constexpr unsigned kHeads = FLASHSEEK_MLA_DECODE_HEADS;
constexpr unsigned kMaxLatent = FLASHSEEK_MLA_MAX_LATENT;
constexpr unsigned kPerLane = kMaxLatent / kWarp;
constexpr unsigned kMaxSplits = FLASHSEEK_MLA_MAX_SPLITS;
constexpr unsigned kStats = 3;
static_assert(kHeads * kWarp == kThreads, "one warp per head");
static_assert(kMaxLatent % kWarp == 0, "whole lanes of latent columns");
static_assert(kTile <= kThreads, "one thread per key of a tile resolves its cache row");

// The staged tile: cache rows in shared memory, `slot` < 0 where the entry is no key.
struct DecodeTile {
    const float (*rows)[kMaxLatent];
    const long long* slot;
    __device__ bool valid(unsigned j) const { return slot[j] >= 0; }
    __device__ float key(unsigned j, unsigned d) const { return rows[j][d]; }
    __device__ float value(unsigned j, unsigned d) const { return rows[j][d]; }
};

// The cache row of key entry `e` of query row `row` (at `pos`, its sequence's blocks starting
// at `blocks + first`), or -1 where the entry is not a key: a top-k entry outside 0..=pos.
// The host checked that every position 0..=pos has a cache row; the bounds here only keep a
// bad table from reading or writing out of place.
__device__ __forceinline__ long long cache_row(const MlaDecodeParams& p, unsigned row, unsigned pos,
                                               unsigned long long first, unsigned long long e) {
    long long t = static_cast<long long>(e);
    if (p.topk != nullptr) {
        t = p.topk[static_cast<size_t>(row) * p.topk_cols + e];
    }
    if (t < 0 || t > static_cast<long long>(pos)) {
        return -1;
    }
    const unsigned long long pos_t = static_cast<unsigned long long>(t);
    const unsigned long long b = first + pos_t / p.block_size;
    if (b >= p.n_blocks) {
        return -1;
    }
    const unsigned* blocks = p.meta + 2 * static_cast<size_t>(p.rows) + p.n_starts;
    const unsigned long long r =
        static_cast<unsigned long long>(blocks[b]) * p.block_size + pos_t % p.block_size;
    return r < p.cache_rows ? static_cast<long long>(r) : -1;
}

}  // namespace

extern "C" __global__ void __launch_bounds__(FLASHSEEK_MLA_DECODE_THREADS, 2)
    flashseek_mla_decode_f32(const MlaDecodeParams p) {
    __shared__ float rows[kTile][kMaxLatent];
    __shared__ long long slot[kTile];
    const unsigned groups = (p.heads + kHeads - 1) / kHeads;
    const unsigned split = blockIdx.x % p.splits;
    const unsigned group = blockIdx.x / p.splits % groups;
    const unsigned row = blockIdx.x / p.splits / groups;
    // Uniform over the block: no barrier is skipped by some threads only.
    if (row >= p.rows) {
        return;
    }
    const unsigned warp = threadIdx.x / kWarp;
    const unsigned lane = threadIdx.x % kWarp;
    const unsigned head = group * kHeads + warp;
    const bool active = head < p.heads;
    const unsigned pos = p.meta[row];
    const unsigned seq = p.meta[p.rows + row];
    const unsigned* starts = p.meta + 2 * static_cast<size_t>(p.rows);
    const unsigned long long first = seq < p.n_starts ? starts[seq] : p.n_blocks;
    const unsigned long long n = p.topk != nullptr ? p.topk_cols : static_cast<unsigned long long>(pos) + 1;
    const unsigned long long e0 = static_cast<unsigned long long>(split) * p.chunk;
    const unsigned long long e1 = min(e0 + p.chunk, n);

    const size_t qh = static_cast<size_t>(row) * p.heads + head;
    float q[kPerLane];
    float acc[kPerLane];
#pragma unroll
    for (unsigned k = 0; k < kPerLane; ++k) {
        const unsigned d = lane + k * kWarp;
        q[k] = active && d < p.latent ? p.q[qh * p.latent + d] : 0.0f;
        acc[k] = 0.0f;
    }
    Online st = online_start();
    const DecodeTile tile{rows, slot};
    const flashseek::kv_layout::LatentFp8 fp8{static_cast<int>(p.kv_lora), static_cast<int>(p.latent - p.kv_lora)};
    for (unsigned long long base = e0; base < e1; base += kTile) {
        if (threadIdx.x < kTile) {
            const unsigned long long e = base + threadIdx.x;
            slot[threadIdx.x] = e < e1 ? cache_row(p, row, pos, first, e) : -1;
        }
        __syncthreads();
        for (unsigned i = threadIdx.x; i < kTile * p.latent; i += kThreads) {
            const unsigned j = i / p.latent;
            const unsigned d = i % p.latent;
            const long long s = slot[j];
            if (s >= 0) {
                const size_t r = static_cast<size_t>(s);
                float v;
                if (p.cache_format == FLASHSEEK_CACHE_FP8) {
                    v = flashseek::kv_layout::latent_value(fp8, p.cache_bytes, r, d);
                } else if (p.cache_format == FLASHSEEK_CACHE_BF16) {
                    v = flashseek::kv_layout::bf16_value(p.cache_bytes, r, p.latent, d);
                } else {
                    v = p.cache[r * p.latent + d];
                }
                rows[j][d] = v;
            }
        }
        __syncthreads();
        if (active) {
            attend_tile(tile, q, p.latent, acc, p.kv_lora, p.scale, st, lane);
        }
        // The next tile overwrites slot and rows: every warp must be done with them.
        __syncthreads();
    }
    if (!active) {
        return;
    }
    if (p.splits == 1) {
        float* out = p.out + qh * p.kv_lora;
#pragma unroll
        for (unsigned k = 0; k < kPerLane; ++k) {
            const unsigned d = lane + k * kWarp;
            if (d < p.kv_lora) {
                out[d] = attend_result(acc[k], st);
            }
        }
        return;
    }
    const size_t part = qh * p.splits + split;
    float* part_acc = p.part_acc + part * p.kv_lora;
#pragma unroll
    for (unsigned k = 0; k < kPerLane; ++k) {
        const unsigned d = lane + k * kWarp;
        if (d < p.kv_lora) {
            part_acc[d] = acc[k];
        }
    }
    if (lane == 0) {
        float* stat = p.part_stat + part * kStats;
        stat[0] = st.max;
        stat[1] = st.sum;
        stat[2] = static_cast<float>(st.keys);
    }
}

// Merges the splits of one (query row, head), block blockIdx.x = row * heads + head: with M the
// largest maximum among splits that had keys, out = sum_s w_s acc_s / sum_s w_s sum_s with
// w_s = exp(max_s - M) (exactly 1 where max_s = M, so a head whose scores are all -inf gets
// 0 / 0 = NaN as on the CPU); zeros where no split had a key.
extern "C" __global__ void __launch_bounds__(FLASHSEEK_MLA_COMBINE_THREADS)
    flashseek_mla_decode_combine_f32(const MlaDecodeParams p) {
    __shared__ float weight[kMaxSplits];
    __shared__ float total;
    __shared__ unsigned keys;
    if (blockIdx.x >= static_cast<size_t>(p.rows) * p.heads || p.splits > kMaxSplits) {
        return;
    }
    const size_t rh = blockIdx.x;
    const float* stat = p.part_stat + rh * p.splits * kStats;
    if (threadIdx.x == 0) {
        float m = neg_inf();
        unsigned n = 0;
        for (unsigned s = 0; s < p.splits; ++s) {
            if (stat[s * kStats + 2] > 0.0f) {
                m = fmaxf(m, stat[s * kStats]);
                ++n;
            }
        }
        float sum = 0.0f;
        for (unsigned s = 0; s < p.splits; ++s) {
            float w = 0.0f;
            if (stat[s * kStats + 2] > 0.0f) {
                const float ms = stat[s * kStats];
                w = ms == m ? 1.0f : expf(__fsub_rn(ms, m));
                sum = __fadd_rn(sum, __fmul_rn(w, stat[s * kStats + 1]));
            }
            weight[s] = w;
        }
        total = sum;
        keys = n;
    }
    __syncthreads();
    float* out = p.out + rh * p.kv_lora;
    const float* part_acc = p.part_acc + rh * p.splits * p.kv_lora;
    for (unsigned d = threadIdx.x; d < p.kv_lora; d += FLASHSEEK_MLA_COMBINE_THREADS) {
        float a = 0.0f;
        // A split without keys weighs 0 and holds zeros: it adds nothing. One with keys adds
        // w_s * acc_s even where w_s is 0, so that a NaN in it (0 * inf) stays, as on the CPU.
        for (unsigned s = 0; s < p.splits; ++s) {
            a = fmaf(weight[s], part_acc[static_cast<size_t>(s) * p.kv_lora + d], a);
        }
        out[d] = keys == 0 ? 0.0f : __fdiv_rn(a, total);
    }
}
