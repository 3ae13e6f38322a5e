// The Hopper FP8 block-scaled GEMM: fp8_gemm's product (gemm.cu, the simple reference) with
// wgmma fed by TMA. out[m, n] = sum over k blocks kb of (a8 . b8 over kb) * sa[m, kb] * sb[n/128, kb],
// written as f32 (the project's activations are f32 on the device).
//
// Warp roles: warpgroup 0 is the producer (one thread issues the TMA loads of each 128-wide k
// block of A and B into a ring of stages); warpgroups 1.. are consumers, each computing 64 rows
// of the block_m x block_n tile with wgmma m64n<block_n>k32 from the staged tiles (both K-major,
// 128B-swizzled). Per k block, the four k32 wgmma accumulate into a fresh register tile, which
// is then scaled by sa * sb and added to the f32 accumulator (DeepGEMM's promotion: the tensor
// core's FP8 accumulation keeps fewer bits than f32, so each block's sum is short). A stage
// goes back to the producer (empty mbarrier, one arrival per consumer warp) once the wgmma that
// read it have completed. Blocks are persistent: CTA c takes tiles c, c + grid, ... in the
// scheduler's raster order, the ring's stages and phases running on across tiles; the epilogue
// stores each thread's accumulator fragment straight to global (8 bytes per store, a warp
// writing full 32-byte sectors), bounds-checked against m and n, while the producer already
// loads the next tile.
//
// The same core runs three problems: the dense GEMM (`flashseek_fp8_gemm_wgmma_*`, out[m, n]) and
// the grouped GEMM of the routed experts (`flashseek_moe_gemm_wgmma_*`, contiguous layout): m
// tiles of 64 padded rows of one expert each (moe.cu's sort and permute), B the expert's rows of
// the stack of all experts, out rows the padded rows or, scattered, the assignments they hold;
// and the same in the masked layout of decode (`flashseek_moe_gemm_wgmma_masked_*`: one 64-row
// slot per active expert, moe.cu's moe_mask), differing only in how a tile finds its rows.
//
// All index math (layout, scales, scheduler, the grouped layout) is in fp8_gemm.cuh, tested on the
// host by tests/gemm_index_math.rs; the swizzle, descriptors, fragment map and ring are the common
// ones (../../common/sm90_layout.cuh, tests/sm90_layout.rs).
#include "flashseek/params.h"
#include "fp8_gemm.cuh"
#include "../../common/wgmma.cuh"
#include "../../common/wgmma_tma.cuh"

namespace {

using namespace flashseek::fp8_gemm;
using namespace flashseek::sm90;

// Register budgets after setmaxnreg: the producer needs few; the consumers hold two f32 tiles
// (accumulator and block sum, block_n / 2 values each). 128 * 40 + 256 * 232 fits the 64K
// registers of an SM with two consumer warpgroups.
constexpr uint32_t kProducerRegs = 40;
constexpr uint32_t kConsumerRegs = 232;
constexpr uint32_t kWarpsPerGroup = kWarpgroup / 32;
// An A row with no output row (past m, or a padding row of the grouped layout).
constexpr uint32_t kNoRow = 0xffffffffu;
static_assert(kGroupedBlockM == FLASHSEEK_GEMM_TILE, "moe.cu's sort cuts experts into the grouped GEMM's m tiles");

template <uint32_t BN>
__device__ __forceinline__ void wgmma_k32(float (&d)[BN / 2], uint64_t desc_a, uint64_t desc_b, uint32_t scale_d) {
    if constexpr (BN == 64) {
        wgmma_m64n64k32_e4m3(d, desc_a, desc_b, scale_d);
    } else {
        static_assert(BN == 128, "tiles are 64 or 128 columns wide");
        wgmma_m64n128k32_e4m3(d, desc_a, desc_b, scale_d);
    }
}

// Where a tile's operands and outputs are, as a problem (dense or grouped) resolves a tile id.
struct Spot {
    uint32_t a_row;    // first row of the A box (and of the a-scale rows)
    int32_t b_row;     // first row of the B box
    uint32_t n_block;  // the tile's block of out's columns
    uint32_t expert;   // grouped: whose weights (0 dense)
};

// The dense GEMM: out[m, n], tiles from the raster scheduler.
template <uint32_t BM, uint32_t BN>
struct Dense {
    Fp8GemmWgmmaParams p;
    Scheduler sched;

    __device__ Dense(const Fp8GemmWgmmaParams& params) : p(params), sched(scheduler(params.m, params.n, Tiles{BM, BN})) {}
    __device__ uint32_t n() const { return p.n; }
    __device__ uint32_t k() const { return p.k; }
    __device__ Spot spot(uint64_t t) const {
        uint32_t m_block;
        uint32_t n_block;
        sched.tile(t, m_block, n_block);
        return Spot{m_block * BM, box_row(n_block, BN), n_block, 0};
    }
    __device__ const float* b_scales(const Spot&) const { return p.b_scales; }
    // The out row of A row `row`, or kNoRow past m.
    __device__ uint32_t out_row(const Spot&, uint32_t row) const { return row < p.m ? row : kNoRow; }
};

// The grouped GEMM of the routed experts: m tiles of the padded activations, each of one expert
// (fp8_gemm.cuh, "grouped"), their number read from the sort on the device.
template <uint32_t BM, uint32_t BN>
struct Grouped {
    static_assert(BM == kGroupedBlockM, "the sort pads each expert to 64-row tiles");
    MoeGemmWgmmaParams p;
    Scheduler sched;

    __device__ Grouped(const MoeGemmWgmmaParams& params)
        : p(params), sched{params.tile_starts[params.n_experts], div_ceil(params.n, BN)} {}
    __device__ uint32_t n() const { return p.n; }
    __device__ uint32_t k() const { return p.k; }
    __device__ Spot spot(uint64_t t) const {
        uint32_t m_tile;
        uint32_t n_block;
        sched.tile(t, m_tile, n_block);
        const uint32_t e = expert_of_tile(p.tile_starts, p.n_experts, m_tile);
        return Spot{m_tile * BM, grouped_box_row(e, p.n, n_block, BN), n_block, e};
    }
    __device__ const float* b_scales(const Spot& s) const { return p.b_scales + s.expert * p.b_scale_stride; }
    __device__ uint32_t out_row(const Spot& s, uint32_t row) const {
        uint32_t pos;
        if (!padded_row_source(p.offsets, p.tile_starts, s.expert, row, pos)) {
            return kNoRow;
        }
        return p.scatter != 0 ? p.sorted[pos] : row;
    }
};

// The grouped GEMM in the masked layout (decode): m tile mt < slots[0] is slot mt, one active
// expert's at most 64 assignments (fp8_gemm.cuh, "masked layout"), their count read on the
// device; the rest as Grouped.
template <uint32_t BM, uint32_t BN>
struct MaskedGrouped {
    static_assert(BM == kGroupedBlockM, "one 64-row slot per active expert");
    MoeGemmWgmmaParams p;
    Scheduler sched;

    __device__ MaskedGrouped(const MoeGemmWgmmaParams& params)
        : p(params), sched{params.slots[masked_active_word()], div_ceil(params.n, BN)} {}
    __device__ uint32_t n() const { return p.n; }
    __device__ uint32_t k() const { return p.k; }
    __device__ Spot spot(uint64_t t) const {
        uint32_t slot;
        uint32_t n_block;
        sched.tile(t, slot, n_block);
        const uint32_t e = p.slots[masked_expert_word(slot)];
        return Spot{slot * BM, grouped_box_row(e, p.n, n_block, BN), n_block, e};
    }
    __device__ const float* b_scales(const Spot& s) const { return p.b_scales + s.expert * p.b_scale_stride; }
    __device__ uint32_t out_row(const Spot&, uint32_t row) const {
        uint32_t a;
        if (!masked_row_source(p.slots, p.m_tiles, row, a)) {
            return kNoRow;
        }
        return p.scatter != 0 ? a : row;
    }
};

template <uint32_t BM, uint32_t BN, class Problem>
__device__ __forceinline__ void producer(uint32_t base, const CUtensorMap* map_a, const CUtensorMap* map_b,
                                         const Problem& prob) {
    constexpr uint32_t kStages = stages(BM, BN);
    const uint32_t k_blocks = div_ceil(prob.k(), kBlockK);
    uint64_t it = 0;
    for (uint64_t t = blockIdx.x; t < prob.sched.tiles(); t += gridDim.x) {
        const Spot spot = prob.spot(t);
        for (uint32_t kb = 0; kb < k_blocks; ++kb, ++it) {
            const uint32_t s = ring_stage(it, kStages);
            // The first pass finds every stage free: parity 1 is the phase before a fresh
            // barrier's first.
            mbarrier_wait(base + empty_barrier_offset(BM, BN, kStages, s), ring_empty_parity(it, kStages));
            const uint32_t full = base + full_barrier_offset(BM, BN, kStages, s);
            mbarrier_arrive_expect_tx(full, stage_tx_bytes(BM, BN));
            tma_load_2d(base + a_tile_offset(BM, s), map_a, full, box_k(kb), static_cast<int32_t>(spot.a_row));
            tma_load_2d(base + b_tile_offset(BM, BN, kStages, s), map_b, full, box_k(kb), spot.b_row);
        }
    }
}

template <uint32_t BM, uint32_t BN, class Problem>
__device__ __forceinline__ void consumer(uint32_t base, const Problem& prob, const float* a_scales, float* out,
                                         uint32_t group) {
    constexpr uint32_t kStages = stages(BM, BN);
    constexpr uint32_t kRegs = BN / 2;
    const uint32_t n = prob.n();
    const uint32_t k_blocks = div_ceil(prob.k(), kBlockK);
    const uint32_t t_in = threadIdx.x % kWarpgroup;
    const uint32_t lane = threadIdx.x % 32;
    // This warpgroup's 64 rows of the tile: its A rows start 64 rows (8 swizzle atoms) in.
    const uint32_t row_in_tile = group * kWgmmaM;
    const bool pairs = n % 2 == 0;
    float acc[kRegs];
    float part[kRegs];
#pragma unroll
    for (uint32_t i = 0; i < kRegs; ++i) {
        part[i] = 0.0f;
    }
    uint64_t it = 0;
    for (uint64_t t = blockIdx.x; t < prob.sched.tiles(); t += gridDim.x) {
        const Spot spot = prob.spot(t);
        const float* b_scales = prob.b_scales(spot);
        // A thread's values sit on two rows: frag_row(t, 0) and, 8 below, frag_row(t, 2).
        const uint32_t row0 = spot.a_row + row_in_tile + frag_row(t_in, 0);
        const uint32_t row1 = spot.a_row + row_in_tile + frag_row(t_in, 2);
        const uint32_t out0 = prob.out_row(spot, row0);
        const uint32_t out1 = prob.out_row(spot, row1);
#pragma unroll
        for (uint32_t i = 0; i < kRegs; ++i) {
            acc[i] = 0.0f;
        }
        for (uint32_t kb = 0; kb < k_blocks; ++kb, ++it) {
            const uint32_t s = ring_stage(it, kStages);
            // The scales come from global memory (L2), loaded before waiting on the stage. Rows
            // without output (past m, padding) read none; their values are never stored.
            const float sa0 = out0 != kNoRow ? __ldg(a_scales + a_scale_index(row0, kb, k_blocks)) : 0.0f;
            const float sa1 = out1 != kNoRow ? __ldg(a_scales + a_scale_index(row1, kb, k_blocks)) : 0.0f;
            const float sb = __ldg(b_scales + b_scale_index(spot.n_block, BN, kb, k_blocks));
            mbarrier_wait(base + full_barrier_offset(BM, BN, kStages, s), ring_parity(it, kStages));
            const uint64_t desc_a = k_major_sw128_desc(base + a_tile_offset(BM, s) + row_in_tile * kSwizzleRow);
            const uint64_t desc_b = k_major_sw128_desc(base + b_tile_offset(BM, BN, kStages, s));
            fence_operand(part);
            wgmma_fence();
#pragma unroll
            for (uint32_t ks = 0; ks < kBlockK / kWgmmaK; ++ks) {
                wgmma_k32<BN>(part, desc_advance_k(desc_a, ks), desc_advance_k(desc_b, ks), ks == 0 ? 0u : 1u);
            }
            wgmma_commit_group();
            wgmma_wait_group<0>();
            fence_operand(part);
            // This warp's wgmma reads of the stage are complete: one arrival per consumer warp.
            if (lane == 0) {
                mbarrier_arrive(base + empty_barrier_offset(BM, BN, kStages, s));
            }
            const float s0 = __fmul_rn(sa0, sb);
            const float s1 = __fmul_rn(sa1, sb);
#pragma unroll
            for (uint32_t i = 0; i < kRegs; ++i) {
                acc[i] = __fmaf_rn(part[i], (i / 2) % 2 == 0 ? s0 : s1, acc[i]);
            }
        }
        // Values i and i + 1 are adjacent columns of one row: row0's where (i / 2) % 2 == 0.
#pragma unroll
        for (uint32_t i = 0; i < kRegs; i += 2) {
            const uint32_t row = (i / 2) % 2 == 0 ? out0 : out1;
            const uint32_t col = spot.n_block * BN + frag_col(t_in, i);
            if (row == kNoRow || col >= n) {
                continue;
            }
            float* o = out + static_cast<uint64_t>(row) * n + col;
            if (pairs) {
                // n even and col even: 8-byte aligned, and col + 1 < n.
                *reinterpret_cast<float2*>(o) = make_float2(acc[i], acc[i + 1]);
            } else {
                o[0] = acc[i];
                if (col + 1 < n) {
                    o[1] = acc[i + 1];
                }
            }
        }
    }
}

template <uint32_t BM, uint32_t BN, class Problem>
__device__ __forceinline__ void fp8_gemm(const CUtensorMap* map_a, const CUtensorMap* map_b, const Problem& prob,
                                         const float* a_scales, float* out) {
    constexpr uint32_t kStages = stages(BM, BN);
    static_assert(kScaleBlock % BN == 0, "a tile's columns share one weight scale block");
    static_assert(BM % kWgmmaM == 0, "64 rows per consumer warpgroup");
    static_assert(smem_bytes(BM, BN, kStages) <= kSmemLimit, "the stages fit in shared memory");
    extern __shared__ uint8_t smem[];
    const uint32_t base = (smem_addr(smem) + kSwizzleAtom - 1) & ~(kSwizzleAtom - 1);

    if (threadIdx.x == 0) {
        prefetch_tensormap(map_a);
        prefetch_tensormap(map_b);
        for (uint32_t s = 0; s < kStages; ++s) {
            mbarrier_init(base + full_barrier_offset(BM, BN, kStages, s), 1);
            mbarrier_init(base + empty_barrier_offset(BM, BN, kStages, s), consumers(BM) * kWarpsPerGroup);
        }
        fence_mbarrier_init();
        fence_proxy_async_shared_cta();
    }
    __syncthreads();

    // Each warpgroup's role is one branch (setmaxnreg needs it); no block-wide barrier follows.
    const uint32_t group = threadIdx.x / kWarpgroup;
    if (group == 0) {
        setmaxnreg_dec<kProducerRegs>();
        if (threadIdx.x == 0) {
            producer<BM, BN>(base, map_a, map_b, prob);
        }
    } else {
        setmaxnreg_inc<kConsumerRegs>();
        consumer<BM, BN>(base, prob, a_scales, out, group - 1);
    }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(threads(128), 1)
    flashseek_fp8_gemm_wgmma_m128n128_f32(const __grid_constant__ CUtensorMap map_a, const __grid_constant__ CUtensorMap map_b,
                                         const Fp8GemmWgmmaParams p) {
    fp8_gemm<128, 128>(&map_a, &map_b, Dense<128, 128>(p), p.a_scales, p.out);
}

extern "C" __global__ void __launch_bounds__(threads(128), 1)
    flashseek_fp8_gemm_wgmma_m128n64_f32(const __grid_constant__ CUtensorMap map_a, const __grid_constant__ CUtensorMap map_b,
                                        const Fp8GemmWgmmaParams p) {
    fp8_gemm<128, 64>(&map_a, &map_b, Dense<128, 64>(p), p.a_scales, p.out);
}

extern "C" __global__ void __launch_bounds__(threads(64), 1)
    flashseek_fp8_gemm_wgmma_m64n128_f32(const __grid_constant__ CUtensorMap map_a, const __grid_constant__ CUtensorMap map_b,
                                        const Fp8GemmWgmmaParams p) {
    fp8_gemm<64, 128>(&map_a, &map_b, Dense<64, 128>(p), p.a_scales, p.out);
}

extern "C" __global__ void __launch_bounds__(threads(64), 1)
    flashseek_fp8_gemm_wgmma_m64n64_f32(const __grid_constant__ CUtensorMap map_a, const __grid_constant__ CUtensorMap map_b,
                                       const Fp8GemmWgmmaParams p) {
    fp8_gemm<64, 64>(&map_a, &map_b, Dense<64, 64>(p), p.a_scales, p.out);
}

extern "C" __global__ void __launch_bounds__(threads(64), 1)
    flashseek_moe_gemm_wgmma_m64n128_f32(const __grid_constant__ CUtensorMap map_a, const __grid_constant__ CUtensorMap map_b,
                                        const MoeGemmWgmmaParams p) {
    fp8_gemm<64, 128>(&map_a, &map_b, Grouped<64, 128>(p), p.a_scales, p.out);
}

extern "C" __global__ void __launch_bounds__(threads(64), 1)
    flashseek_moe_gemm_wgmma_m64n64_f32(const __grid_constant__ CUtensorMap map_a, const __grid_constant__ CUtensorMap map_b,
                                       const MoeGemmWgmmaParams p) {
    fp8_gemm<64, 64>(&map_a, &map_b, Grouped<64, 64>(p), p.a_scales, p.out);
}

extern "C" __global__ void __launch_bounds__(threads(64), 1)
    flashseek_moe_gemm_wgmma_masked_m64n128_f32(const __grid_constant__ CUtensorMap map_a,
                                               const __grid_constant__ CUtensorMap map_b, const MoeGemmWgmmaParams p) {
    fp8_gemm<64, 128>(&map_a, &map_b, MaskedGrouped<64, 128>(p), p.a_scales, p.out);
}

extern "C" __global__ void __launch_bounds__(threads(64), 1)
    flashseek_moe_gemm_wgmma_masked_m64n64_f32(const __grid_constant__ CUtensorMap map_a,
                                              const __grid_constant__ CUtensorMap map_b, const MoeGemmWgmmaParams p) {
    fp8_gemm<64, 64>(&map_a, &map_b, MaskedGrouped<64, 64>(p), p.a_scales, p.out);
}
