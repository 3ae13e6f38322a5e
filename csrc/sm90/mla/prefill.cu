// MLA prefill attention over expanded keys and values: the CPU backend's `mla_prefill`
// (src/backend/cpu/attention.rs), dense-causal or sparse over the indexer's top-k positions.
//
// One block per (item of up to 8 query rows of one sequence, head), one warp per query row, its
// query (nope + rope values) and output (v values) in registers, 8 a lane at most. The keys go
// a tile of 16 at a time through the warp's online softmax (attention.cuh):
// - flashseek_mla_prefill_f32 (causal): the block stages keys 0..=the item's last position in
//   shared memory, per key the head's [k_nope, k_pe] and v, read once for its 8 query rows;
//   each warp takes the keys up to its own position.
// - flashseek_mla_prefill_topk_f32 (sparse): each warp's keys are its top-k row's entries
//   within 0..=pos (duplicates counted again), read straight from global memory: no two rows
//   share them. No shared memory, no barriers.
//
// Numerics against the CPU: as mla_decode (tests/cuda_mla.rs derives the bound).
#include "flashseek/params.h"
#include "attention.cuh"

namespace {

using namespace flashseek::mla;

constexpr unsigned kThreads = FLASHSEEK_MLA_PREFILL_THREADS;
constexpr unsigned kRows = FLASHSEEK_MLA_PREFILL_ROWS;
constexpr unsigned kMaxQk = FLASHSEEK_MLA_PREFILL_MAX_QK;
constexpr unsigned kMaxV = FLASHSEEK_MLA_PREFILL_MAX_V;
constexpr unsigned kQ = kMaxQk / kWarp;
constexpr unsigned kV = kMaxV / kWarp;
constexpr unsigned kItem = 4;
static_assert(kRows * kWarp == kThreads, "one warp per query row");
static_assert(kMaxQk % kWarp == 0 && kMaxV % kWarp == 0, "whole lanes of columns");

// One item: its first query row, how many rows, the kv row of its sequence's position 0 and
// the position of its first row.
struct Item {
    unsigned q_row;
    unsigned rows;
    unsigned kv_start;
    unsigned pos;
};

__device__ __forceinline__ Item item_of(const MlaPrefillParams& p, unsigned i) {
    const unsigned* it = p.items + static_cast<size_t>(i) * kItem;
    return Item{it[0], it[1], it[2], it[3]};
}

// Keys staged in shared memory: slot j holds position base + j; a warp's keys end at its `pos`.
struct DenseTile {
    const float (*k)[kMaxQk];
    const float (*v)[kMaxV];
    unsigned long long base;
    unsigned long long pos;
    __device__ bool valid(unsigned j) const { return base + j <= pos; }
    __device__ float key(unsigned j, unsigned d) const { return k[j][d]; }
    __device__ float value(unsigned j, unsigned d) const { return v[j][d]; }
};

// Keys read in place: slot j is kv row rows[j] where bit j of `mask` is set. `head` points at
// the head's columns of kv row 0.
struct SparseTile {
    const float* head;
    const float* kpe;
    size_t kv_stride;
    unsigned nope;
    unsigned rope;
    unsigned mask;
    unsigned rows[kTile];
    __device__ bool valid(unsigned j) const { return (mask >> j & 1u) != 0; }
    __device__ float key(unsigned j, unsigned d) const {
        return d < nope ? head[rows[j] * kv_stride + d] : kpe[static_cast<size_t>(rows[j]) * rope + (d - nope)];
    }
    __device__ float value(unsigned j, unsigned d) const { return head[rows[j] * kv_stride + nope + d]; }
};

struct Warp {
    unsigned row;
    unsigned long long pos;
    unsigned lane;
    float q[kQ];
    float acc[kV];
    Online st;
};

// The warp's query row and position, its query columns loaded, nothing attended yet.
__device__ __forceinline__ Warp warp_start(const MlaPrefillParams& p, const Item& item, unsigned h) {
    Warp w;
    const unsigned r = threadIdx.x / kWarp;
    w.row = item.q_row + r;
    w.pos = static_cast<unsigned long long>(item.pos) + r;
    w.lane = threadIdx.x % kWarp;
    const unsigned qk = p.nope + p.rope;
    const float* q = p.q + (static_cast<size_t>(w.row) * p.heads + h) * qk;
#pragma unroll
    for (unsigned k = 0; k < kQ; ++k) {
        const unsigned d = w.lane + k * kWarp;
        w.q[k] = r < item.rows && d < qk ? q[d] : 0.0f;
    }
#pragma unroll
    for (unsigned k = 0; k < kV; ++k) {
        w.acc[k] = 0.0f;
    }
    w.st = online_start();
    return w;
}

__device__ __forceinline__ void warp_finish(const MlaPrefillParams& p, const Warp& w, unsigned h) {
    float* out = p.out + (static_cast<size_t>(w.row) * p.heads + h) * p.v;
#pragma unroll
    for (unsigned k = 0; k < kV; ++k) {
        const unsigned d = w.lane + k * kWarp;
        if (d < p.v) {
            out[d] = attend_result(w.acc[k], w.st);
        }
    }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(FLASHSEEK_MLA_PREFILL_THREADS, 2)
    flashseek_mla_prefill_f32(const MlaPrefillParams p) {
    __shared__ float ks[kTile][kMaxQk];
    __shared__ float vs[kTile][kMaxV];
    // Uniform over the block: no barrier is skipped by some threads only.
    if (blockIdx.x >= static_cast<size_t>(p.n_items) * p.heads) {
        return;
    }
    const unsigned h = blockIdx.x % p.heads;
    const Item item = item_of(p, blockIdx.x / p.heads);
    Warp w = warp_start(p, item, h);
    const bool active = threadIdx.x / kWarp < item.rows;
    const unsigned kvw = p.nope + p.v;
    const unsigned cols = kvw + p.rope;
    const size_t kv_stride = static_cast<size_t>(p.heads) * kvw;
    // Keys 0..=the last row's position, in the kv rows from item.kv_start.
    const unsigned long long keys = static_cast<unsigned long long>(item.pos) + item.rows;
    for (unsigned long long base = 0; base < keys; base += kTile) {
        // Per key: the head's k_nope and v (contiguous in kv), then k_pe; consecutive threads
        // take consecutive columns.
        for (unsigned i = threadIdx.x; i < kTile * cols; i += kThreads) {
            const unsigned j = i / cols;
            const unsigned d = i % cols;
            if (base + j < keys) {
                const size_t r = item.kv_start + base + j;
                if (d < kvw) {
                    const float x = p.kv[r * kv_stride + static_cast<size_t>(h) * kvw + d];
                    if (d < p.nope) {
                        ks[j][d] = x;
                    } else {
                        vs[j][d - p.nope] = x;
                    }
                } else {
                    ks[j][p.nope + (d - kvw)] = p.kpe[r * p.rope + (d - kvw)];
                }
            }
        }
        __syncthreads();
        if (active) {
            const DenseTile tile{ks, vs, base, w.pos};
            attend_tile(tile, w.q, p.nope + p.rope, w.acc, p.v, p.scale, w.st, w.lane);
        }
        // The next tile overwrites the stage: every warp must be done with it.
        __syncthreads();
    }
    if (active) {
        warp_finish(p, w, h);
    }
}

extern "C" __global__ void __launch_bounds__(FLASHSEEK_MLA_PREFILL_THREADS, 2)
    flashseek_mla_prefill_topk_f32(const MlaPrefillParams p) {
    if (blockIdx.x >= static_cast<size_t>(p.n_items) * p.heads) {
        return;
    }
    const unsigned h = blockIdx.x % p.heads;
    const Item item = item_of(p, blockIdx.x / p.heads);
    // Warp-uniform, and nothing below waits for other warps.
    if (threadIdx.x / kWarp >= item.rows) {
        return;
    }
    Warp w = warp_start(p, item, h);
    const unsigned kvw = p.nope + p.v;
    SparseTile tile;
    tile.kv_stride = static_cast<size_t>(p.heads) * kvw;
    tile.head = p.kv + static_cast<size_t>(h) * kvw;
    tile.kpe = p.kpe;
    tile.nope = p.nope;
    tile.rope = p.rope;
    const int* topk = p.topk + static_cast<size_t>(w.row) * p.topk_cols;
    for (unsigned long long base = 0; base < p.topk_cols; base += kTile) {
        // Lane j < 16 fetches entry base + j; the warp learns which are keys and their rows.
        long long t = -1;
        if (w.lane < kTile && base + w.lane < p.topk_cols) {
            t = topk[base + w.lane];
        }
        const bool key = t >= 0 && static_cast<unsigned long long>(t) <= w.pos;
        tile.mask = __ballot_sync(kFullMask, key);
        const unsigned row = key ? item.kv_start + static_cast<unsigned>(t) : 0u;
#pragma unroll
        for (unsigned j = 0; j < kTile; ++j) {
            tile.rows[j] = __shfl_sync(kFullMask, row, j);
        }
        attend_tile(tile, w.q, p.nope + p.rope, w.acc, p.v, p.scale, w.st, w.lane);
    }
    warp_finish(p, w, h);
}
