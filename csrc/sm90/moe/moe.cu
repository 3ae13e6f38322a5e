// The bookkeeping of the routed experts around the grouped GEMMs (moe_gemm.cu, and the Hopper
// one in sm90/gemm/fp8_gemm.cu): the contiguous layout's sort of assignments by expert (count,
// offsets, scatter) on the device, so the host never waits for the routing, the Hopper GEMM's
// padded activations (permute), and the combine of the experts' outputs per token.
//
// The sort places assignments in their expert's segment by atomic counters, so their order
// inside a segment varies from run to run; nothing downstream depends on it (a GEMM output row
// depends only on its own activation row, and each row is written to its assignment's place).
// The combine sums each token's slots in slot order with one rounding per step, as the CPU does
// (src/backend/cpu/moe.rs): bit for bit the CPU's sum of the same expert outputs.
#include "flashseek/params.h"
#include "../gemm/fp8_gemm.cuh"

namespace {

constexpr unsigned kThreads = FLASHSEEK_MOE_THREADS;
constexpr unsigned kScanThreads = FLASHSEEK_MOE_SCAN_THREADS;
constexpr unsigned kWarp = 32;
constexpr unsigned kScanWarps = kScanThreads / kWarp;
constexpr unsigned kTile = FLASHSEEK_GEMM_TILE;
static_assert(kScanWarps <= kWarp, "one warp scans the warps' totals");
static_assert(kTile == flashseek::fp8_gemm::kGroupedBlockM, "the sort's tiles are the grouped GEMM's m tiles");

__device__ __forceinline__ size_t first_index() {
    return static_cast<size_t>(blockIdx.x) * kThreads + threadIdx.x;
}

__device__ __forceinline__ size_t grid_stride() {
    return static_cast<size_t>(gridDim.x) * kThreads;
}

// Expert of assignment a, or n_experts when its id is out of range.
__device__ __forceinline__ unsigned expert_of(const MoeSortParams& p, size_t a) {
    const int e = p.idx[a];
    return e >= 0 && static_cast<unsigned>(e) < p.n_experts ? static_cast<unsigned>(e) : p.n_experts;
}

// The inclusive prefix sums of v over the warp.
__device__ __forceinline__ unsigned warp_inclusive(unsigned v, unsigned lane) {
    for (unsigned offset = 1; offset < kWarp; offset *= 2) {
        const unsigned other = __shfl_up_sync(0xffffffffu, v, offset);
        if (lane >= offset) {
            v += other;
        }
    }
    return v;
}

}  // namespace

extern "C" __global__ void __launch_bounds__(FLASHSEEK_MOE_THREADS) flashseek_moe_count_f32(const MoeSortParams p) {
    for (size_t a = first_index(); a < p.n_assign; a += grid_stride()) {
        const unsigned e = expert_of(p, a);
        if (e < p.n_experts) {
            atomicAdd(p.counts + e, 1u);
        }
    }
}

// One block scans the experts' counts and tile counts, 1024 experts per round: each warp scans
// its 32, warp 0 scans the warps' totals, and a carry takes each round's total to the next.
extern "C" __global__ void __launch_bounds__(FLASHSEEK_MOE_SCAN_THREADS)
    flashseek_moe_offsets_f32(const MoeSortParams p) {
    __shared__ unsigned s_rows[kScanWarps];
    __shared__ unsigned s_tiles[kScanWarps];
    __shared__ unsigned s_carry[2];
    const unsigned lane = threadIdx.x % kWarp;
    const unsigned warp = threadIdx.x / kWarp;
    if (threadIdx.x == 0) {
        s_carry[0] = 0;
        s_carry[1] = 0;
    }
    __syncthreads();
    // The loop's bounds are the same for every thread: every thread reaches every barrier.
    for (unsigned base = 0; base < p.n_experts; base += kScanThreads) {
        const unsigned e = base + threadIdx.x;
        const unsigned rows = e < p.n_experts ? p.counts[e] : 0u;
        const unsigned tiles = (rows + kTile - 1) / kTile;
        const unsigned rows_incl = warp_inclusive(rows, lane);
        const unsigned tiles_incl = warp_inclusive(tiles, lane);
        if (lane == kWarp - 1) {
            s_rows[warp] = rows_incl;
            s_tiles[warp] = tiles_incl;
        }
        __syncthreads();
        if (warp == 0) {
            const unsigned r = warp_inclusive(lane < kScanWarps ? s_rows[lane] : 0u, lane);
            const unsigned t = warp_inclusive(lane < kScanWarps ? s_tiles[lane] : 0u, lane);
            if (lane < kScanWarps) {
                s_rows[lane] = r;
                s_tiles[lane] = t;
            }
        }
        __syncthreads();
        const unsigned rows_before = s_carry[0] + (warp > 0 ? s_rows[warp - 1] : 0u) + rows_incl - rows;
        const unsigned tiles_before = s_carry[1] + (warp > 0 ? s_tiles[warp - 1] : 0u) + tiles_incl - tiles;
        if (e < p.n_experts) {
            p.offsets[e] = rows_before;
            p.cursor[e] = rows_before;
            p.tile_starts[e] = tiles_before;
        }
        // Everyone has read the carry and the warps' sums before they change.
        __syncthreads();
        if (threadIdx.x == 0) {
            s_carry[0] += s_rows[kScanWarps - 1];
            s_carry[1] += s_tiles[kScanWarps - 1];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        p.offsets[p.n_experts] = s_carry[0];
        p.tile_starts[p.n_experts] = s_carry[1];
    }
}

extern "C" __global__ void __launch_bounds__(FLASHSEEK_MOE_THREADS) flashseek_moe_scatter_f32(const MoeSortParams p) {
    for (size_t a = first_index(); a < p.n_assign; a += grid_stride()) {
        const unsigned e = expert_of(p, a);
        if (e < p.n_experts) {
            p.sorted[atomicAdd(p.cursor + e, 1u)] = static_cast<unsigned>(a);
        }
    }
}

extern "C" __global__ void __launch_bounds__(FLASHSEEK_MOE_THREADS) flashseek_moe_combine_f32(const MoeCombineParams p) {
    for (size_t i = first_index(); i < p.n; i += grid_stride()) {
        const size_t t = i / p.cols;
        const size_t c = i % p.cols;
        float acc = 0.0f;
        bool bad = false;
        for (unsigned j = 0; j < p.top_k; ++j) {
            const size_t a = t * p.top_k + j;
            const int e = p.idx[a];
            if (e < 0 || static_cast<unsigned>(e) >= p.n_experts) {
                bad = true;
                break;
            }
            const float v = __fmul_rn(p.y[a * p.cols + c], p.weights[a]);
            acc = j == 0 ? v : __fadd_rn(acc, v);
        }
        p.out[i] = bad ? __int_as_float(0x7fc00000) : acc;
    }
}

// The grouped Hopper GEMM's padded activations (fp8_gemm.cuh, "grouped", or with slots the
// "masked layout"): a warp per padded row
// copies its assignment's row of codes (16 bytes a lane at a time: k is a multiple of 16 and
// rows start 16-aligned) and of scales, or writes zeros for a padding row.
extern "C" __global__ void __launch_bounds__(FLASHSEEK_MOE_PERMUTE_THREADS)
    flashseek_moe_permute_f32(const MoePermuteParams p) {
    using namespace flashseek::fp8_gemm;
    constexpr unsigned kWarps = FLASHSEEK_MOE_PERMUTE_THREADS / kWarp;
    const unsigned row = blockIdx.x * kWarps + threadIdx.x / kWarp;
    const unsigned lane = threadIdx.x % kWarp;
    // The host launches ceil(64 m_tiles / kWarps) blocks, 64 m_tiles below 2^32.
    if (row >= p.m_tiles * kGroupedBlockM) {
        return;
    }
    bool has = false;
    unsigned src = 0;
    if (p.slots != nullptr) {
        unsigned a;
        if (masked_row_source(p.slots, p.m_tiles, row, a)) {
            has = true;
            src = a / p.a_row_div;
        }
    } else if (row / kGroupedBlockM < p.tile_starts[p.n_experts]) {
        const unsigned e = expert_of_tile(p.tile_starts, p.n_experts, row / kGroupedBlockM);
        unsigned pos;
        if (padded_row_source(p.offsets, p.tile_starts, e, row, pos)) {
            has = true;
            src = p.sorted[pos] / p.a_row_div;
        }
    }
    const unsigned vectors = p.k / 16;
    uint4* to = reinterpret_cast<uint4*>(p.out_codes + static_cast<size_t>(row) * p.k);
    const uint4* from = reinterpret_cast<const uint4*>(p.codes + static_cast<size_t>(src) * p.k);
    for (unsigned c = lane; c < vectors; c += kWarp) {
        to[c] = has ? from[c] : make_uint4(0, 0, 0, 0);
    }
    const unsigned blocks = (p.k + FLASHSEEK_FP8_GROUP - 1) / FLASHSEEK_FP8_GROUP;
    for (unsigned c = lane; c < blocks; c += kWarp) {
        p.out_scales[static_cast<size_t>(row) * blocks + c] = has ? p.scales[static_cast<size_t>(src) * blocks + c] : 0.0f;
    }
}

// The masked layout (fp8_gemm.cuh, "masked layout"): thread a places assignment a from idx in
// shared memory. The padding rows are marked empty before the barrier after which the placed
// rows are written, so a placed row is never overwritten.
extern "C" __global__ void __launch_bounds__(FLASHSEEK_MOE_MASKED_MAX) flashseek_moe_mask_f32(const MoeMaskParams p) {
    using namespace flashseek::fp8_gemm;
    __shared__ int s_idx[FLASHSEEK_MOE_MASKED_MAX];
    __shared__ uint8_t s_first[FLASHSEEK_MOE_MASKED_MAX];
    const unsigned slots = masked_slots(p.n_assign, p.n_experts);
    for (unsigned r = threadIdx.x; r < slots * kGroupedBlockM; r += FLASHSEEK_MOE_MASKED_MAX) {
        p.slots[masked_row_word(slots, r)] = kMaskedEmpty;
    }
    const unsigned a = threadIdx.x;
    if (a < p.n_assign) {
        s_idx[a] = p.idx[a];
    }
    __syncthreads();
    if (a < p.n_assign) {
        s_first[a] = masked_is_first(s_idx, p.n_experts, a) ? 1 : 0;
    }
    __syncthreads();
    unsigned slot;
    unsigned row;
    if (a < p.n_assign && masked_place(s_idx, s_first, p.n_experts, a, slot, row)) {
        p.slots[masked_row_word(slots, slot * kGroupedBlockM + row)] = a;
        if (row == 0) {
            p.slots[masked_expert_word(slot)] = static_cast<unsigned>(s_idx[a]);
        }
    }
    if (threadIdx.x == 0) {
        unsigned active = 0;
        for (unsigned b = 0; b < p.n_assign; ++b) {
            active += s_first[b];
        }
        p.slots[masked_active_word()] = active;
    }
}
