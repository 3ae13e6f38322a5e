// The grouped GEMMs of the routed experts: one launch multiplies every expert's assignments by
// that expert's weights (gate and up together, or down), each block a 64x64 tile whose rows are
// assignments of one expert. The tile loops are the GEMM family's (sm90/gemm/tile.cuh), so each
// output has the numerics of `linear` for that activation row and expert: the FP8 kernel the
// block-scaled product of e4m3 codes, the others the plain f32 GEMM over weights of their format.
//
// A block first finds its expert and rows (MoeGemmParams in params.h): in the masked layout
// (decode: at most 64 assignments) by scanning idx for its expert, in the contiguous one
// (prefill) from the sorted segments and tile starts that moe.cu wrote. A block without rows
// leaves, whole, after the barrier that publishes them. Tile rows map to activation rows
// (assignment / a_row_div: the token for gate and up, the assignment for down) and to output rows
// (the assignment) through two lists in shared memory.
#include "flashseek/params.h"
#include "../gemm/tile.cuh"

namespace {

using namespace flashseek::tile;
constexpr unsigned kWarp = 32;
static_assert(FLASHSEEK_MOE_MASKED_MAX <= kTile, "a masked expert's assignments fit one tile");

// The rows of a block's tile: activation row and assignment of each, how many, and the expert.
struct Rows {
    unsigned src[kTile];
    unsigned dst[kTile];
    unsigned count;
    unsigned expert;
    unsigned start;
};

// Fills `r` for m tile mt; every thread must call it. Returns r.count, the same in every thread.
__device__ __forceinline__ unsigned find_rows(const MoeGemmParams& p, unsigned mt, Rows& r) {
    if (p.masked != 0) {
        // Warp 0 compacts expert mt's assignments in order: n_assign <= 64, two ballots at most.
        if (threadIdx.x < kWarp) {
            const unsigned lane = threadIdx.x;
            unsigned count = 0;
            for (unsigned a0 = 0; a0 < p.n_assign; a0 += kWarp) {
                const unsigned a = a0 + lane;
                const bool hit = a < p.n_assign && p.idx[a] == static_cast<int>(mt);
                const unsigned mask = __ballot_sync(0xffffffffu, hit);
                if (hit) {
                    const unsigned at = count + __popc(mask & ((1u << lane) - 1u));
                    r.dst[at] = a;
                    r.src[at] = a / p.a_row_div;
                }
                count += __popc(mask);
            }
            if (lane == 0) {
                r.count = count;
                r.expert = mt;
            }
        }
        __syncthreads();
        return r.count;
    }
    if (threadIdx.x == 0) {
        const unsigned total = p.tile_starts[p.n_experts];
        unsigned count = 0;
        if (mt < total) {
            // The expert e with tile_starts[e] <= mt < tile_starts[e + 1]; tile_starts[0] = 0.
            unsigned lo = 0;
            unsigned hi = p.n_experts;
            while (hi - lo > 1) {
                const unsigned mid = lo + (hi - lo) / 2;
                if (p.tile_starts[mid] <= mt) {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            const unsigned start = p.offsets[lo] + (mt - p.tile_starts[lo]) * kTile;
            count = min(kTile, p.offsets[lo + 1] - start);
            r.expert = lo;
            r.start = start;
        }
        r.count = count;
    }
    __syncthreads();
    const unsigned count = r.count;
    if (threadIdx.x < count) {
        const unsigned a = p.sorted[r.start + threadIdx.x];
        r.dst[threadIdx.x] = a;
        r.src[threadIdx.x] = a / p.a_row_div;
    }
    __syncthreads();
    return count;
}

// Activation rows through the tile's list: tile row `row` is row src[row] of a [.., k] matrix.
template <class Load>
struct Gather {
    Load load;
    const unsigned* src;
    __device__ float operator()(unsigned row, unsigned col) const { return load(src[row], col); }
};

// The activation scale of tile row `row` and k block kb, from a_scales [.., blocks].
struct GatherScales {
    const float* scales;
    const unsigned* src;
    unsigned blocks;
    __device__ float operator()(unsigned row, unsigned kb) const {
        return scales[static_cast<size_t>(src[row]) * blocks + kb];
    }
};

// Output row of tile row `row`: row dst[row] of the packed [n_assign, n] output.
struct ScatterRows {
    float* out;
    const unsigned* dst;
    unsigned n;
    __device__ float* operator()(unsigned row) const { return out + static_cast<size_t>(dst[row]) * n; }
};

// The block's matrix z, m tile and n tile; the host launches n_mats * m_tiles * ceil(n / 64)
// blocks, n > 0.
struct Block {
    unsigned z;
    unsigned mt;
    unsigned n0;
};

__device__ __forceinline__ Block block_of(const MoeGemmParams& p) {
    const unsigned n_tiles = (p.n + kTile - 1) / kTile;
    const unsigned per_mat = p.m_tiles * n_tiles;
    const unsigned rest = blockIdx.x % per_mat;
    return Block{blockIdx.x / per_mat, rest / n_tiles, rest % n_tiles * kTile};
}

// The plain grouped GEMM: f32 activations, expert e's weights decoded by make_b(e's matrix, e).
template <class MakeB>
__device__ __forceinline__ void plain_moe_gemm(const MoeGemmParams& p, const MakeB& make_b) {
    __shared__ Rows r;
    __shared__ Stage st;
    const Block b = block_of(p);
    const unsigned count = find_rows(p, b.mt, r);
    if (count == 0) {
        return;
    }
    const Span s{0, count, b.n0, p.n, p.k};
    const Gather<LoadF32> load_a{LoadF32{static_cast<const float*>(p.a), p.k}, r.src};
    float acc[kPer][kPer] = {};
    accumulate(s, st, 0, p.k, load_a, make_b(b.z, r.expert), acc);
    store(s, acc, ScatterRows{p.out[b.z], r.dst, p.n});
}

// Expert e's matrix of z, as elements of T.
template <class T>
__device__ __forceinline__ const T* matrix(const MoeGemmParams& p, unsigned z, unsigned e) {
    return static_cast<const T*>(p.b[z]) + static_cast<size_t>(e) * p.b_stride;
}

__device__ __forceinline__ const float* matrix_scales(const MoeGemmParams& p, unsigned z, unsigned e) {
    return p.b_scales[z] + static_cast<size_t>(e) * p.b_scale_stride;
}

}  // namespace

// FP8 activations (act_quant codes and scales) times FP8 experts. Launch bounds as the GEMM
// family's fp8_gemm, which needs 72 registers.
extern "C" __global__ void __launch_bounds__(FLASHSEEK_GEMM_THREADS, 1)
    flashseek_moe_gemm_fp8_f32(const MoeGemmParams p) {
    __shared__ Rows r;
    __shared__ Stage st;
    const Block b = block_of(p);
    const unsigned count = find_rows(p, b.mt, r);
    if (count == 0) {
        return;
    }
    const Span s{0, count, b.n0, p.n, p.k};
    const unsigned blocks = (p.k + kBlock - 1) / kBlock;
    const Gather<LoadE4m3> load_a{LoadE4m3{static_cast<const unsigned char*>(p.a), p.k}, r.src};
    const LoadE4m3 load_b{matrix<unsigned char>(p, b.z, r.expert), p.k};
    const float* b_scales = matrix_scales(p, b.z, r.expert) + static_cast<size_t>(b.n0 / kBlock) * blocks;
    float acc[kPer][kPer] = {};
    fp8_accumulate(s, st, load_a, load_b, GatherScales{p.a_scales, r.src, blocks}, b_scales, acc);
    store(s, acc, ScatterRows{p.out[b.z], r.dst, p.n});
}

extern "C" __global__ void __launch_bounds__(FLASHSEEK_GEMM_THREADS) flashseek_moe_gemm_wf32_f32(const MoeGemmParams p) {
    plain_moe_gemm(p, [&](unsigned z, unsigned e) { return LoadF32{matrix<float>(p, z, e), p.k}; });
}

extern "C" __global__ void __launch_bounds__(FLASHSEEK_GEMM_THREADS)
    flashseek_moe_gemm_wbf16_f32(const MoeGemmParams p) {
    plain_moe_gemm(p, [&](unsigned z, unsigned e) { return LoadBf16{matrix<unsigned short>(p, z, e), p.k}; });
}

extern "C" __global__ void __launch_bounds__(FLASHSEEK_GEMM_THREADS) flashseek_moe_gemm_wf16_f32(const MoeGemmParams p) {
    plain_moe_gemm(p, [&](unsigned z, unsigned e) { return LoadF16{matrix<unsigned short>(p, z, e), p.k}; });
}

extern "C" __global__ void __launch_bounds__(FLASHSEEK_GEMM_THREADS)
    flashseek_moe_gemm_we4m3_f32(const MoeGemmParams p) {
    plain_moe_gemm(p, [&](unsigned z, unsigned e) {
        return LoadE4m3Scaled{matrix<unsigned char>(p, z, e), matrix_scales(p, z, e), p.k};
    });
}
