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
// All index math (layout, descriptors, fragment map, scales, scheduler) is in fp8_gemm.cuh,
// tested on the host by tests/gemm_index_math.rs.
#include "flashseek/params.h"
#include "fp8_gemm.cuh"
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

template <uint32_t BN>
__device__ __forceinline__ void wgmma_k32(float (&d)[BN / 2], uint64_t desc_a, uint64_t desc_b, uint32_t scale_d) {
    if constexpr (BN == 64) {
        wgmma_m64n64k32_e4m3(d, desc_a, desc_b, scale_d);
    } else {
        static_assert(BN == 128, "tiles are 64 or 128 columns wide");
        wgmma_m64n128k32_e4m3(d, desc_a, desc_b, scale_d);
    }
}

template <uint32_t BM, uint32_t BN>
__device__ __forceinline__ void producer(uint32_t base, const CUtensorMap* map_a, const CUtensorMap* map_b,
                                         const Scheduler& sched, uint32_t k_blocks) {
    constexpr uint32_t kStages = stages(BM, BN);
    uint64_t it = 0;
    for (uint64_t t = blockIdx.x; t < sched.tiles(); t += gridDim.x) {
        uint32_t m_block;
        uint32_t n_block;
        sched.tile(t, m_block, n_block);
        for (uint32_t kb = 0; kb < k_blocks; ++kb, ++it) {
            const uint32_t s = ring_stage(it, kStages);
            // The first pass finds every stage free: parity 1 is the phase before a fresh
            // barrier's first.
            mbarrier_wait(base + empty_barrier_offset(BM, BN, kStages, s), ring_parity(it, kStages) ^ 1u);
            const uint32_t full = base + full_barrier_offset(BM, BN, kStages, s);
            mbarrier_arrive_expect_tx(full, stage_tx_bytes(BM, BN));
            tma_load_2d(base + a_tile_offset(BM, s), map_a, full, box_k(kb), box_row(m_block, BM));
            tma_load_2d(base + b_tile_offset(BM, BN, kStages, s), map_b, full, box_k(kb), box_row(n_block, BN));
        }
    }
}

template <uint32_t BM, uint32_t BN>
__device__ __forceinline__ void consumer(uint32_t base, const Fp8GemmWgmmaParams& p, const Scheduler& sched,
                                         uint32_t k_blocks, uint32_t group) {
    constexpr uint32_t kStages = stages(BM, BN);
    constexpr uint32_t kRegs = BN / 2;
    const uint32_t t_in = threadIdx.x % kWarpgroup;
    const uint32_t lane = threadIdx.x % 32;
    // This warpgroup's 64 rows of the tile: its A rows start 64 rows (8 swizzle atoms) in.
    const uint32_t row_in_tile = group * kWgmmaM;
    const bool pairs = p.n % 2 == 0;
    float acc[kRegs];
    float part[kRegs];
#pragma unroll
    for (uint32_t i = 0; i < kRegs; ++i) {
        part[i] = 0.0f;
    }
    uint64_t it = 0;
    for (uint64_t t = blockIdx.x; t < sched.tiles(); t += gridDim.x) {
        uint32_t m_block;
        uint32_t n_block;
        sched.tile(t, m_block, n_block);
        // A thread's values sit on two rows: frag_row(t, 0) and, 8 below, frag_row(t, 2).
        const uint32_t row0 = m_block * BM + row_in_tile + frag_row(t_in, 0);
        const uint32_t row1 = m_block * BM + row_in_tile + frag_row(t_in, 2);
#pragma unroll
        for (uint32_t i = 0; i < kRegs; ++i) {
            acc[i] = 0.0f;
        }
        for (uint32_t kb = 0; kb < k_blocks; ++kb, ++it) {
            const uint32_t s = ring_stage(it, kStages);
            // The scales come from global memory (L2), loaded before waiting on the stage.
            // Rows past m have no scales; their values are never stored.
            const float sa0 = row0 < p.m ? __ldg(p.a_scales + a_scale_index(row0, kb, k_blocks)) : 0.0f;
            const float sa1 = row1 < p.m ? __ldg(p.a_scales + a_scale_index(row1, kb, k_blocks)) : 0.0f;
            const float sb = __ldg(p.b_scales + b_scale_index(n_block, BN, kb, k_blocks));
            mbarrier_wait(base + full_barrier_offset(BM, BN, kStages, s), ring_parity(it, kStages));
            const uint64_t desc_a =
                smem_descriptor(base + a_tile_offset(BM, s) + row_in_tile * kSwizzleRow);
            const uint64_t desc_b = smem_descriptor(base + b_tile_offset(BM, BN, kStages, s));
#pragma unroll
            for (uint32_t i = 0; i < kRegs; ++i) {
                fence_operand(part[i]);
            }
            wgmma_fence();
#pragma unroll
            for (uint32_t ks = 0; ks < kBlockK / kWgmmaK; ++ks) {
                wgmma_k32<BN>(part, advance_k(desc_a, ks), advance_k(desc_b, ks), ks == 0 ? 0u : 1u);
            }
            wgmma_commit();
            wgmma_wait_all();
#pragma unroll
            for (uint32_t i = 0; i < kRegs; ++i) {
                fence_operand(part[i]);
            }
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
        // Values i and i + 1 are adjacent columns of one row.
#pragma unroll
        for (uint32_t i = 0; i < kRegs; i += 2) {
            const uint32_t row = m_block * BM + row_in_tile + frag_row(t_in, i);
            const uint32_t col = n_block * BN + frag_col(t_in, i);
            if (row >= p.m || col >= p.n) {
                continue;
            }
            float* o = p.out + static_cast<uint64_t>(row) * p.n + col;
            if (pairs) {
                // n even and col even: 8-byte aligned, and col + 1 < n.
                *reinterpret_cast<float2*>(o) = make_float2(acc[i], acc[i + 1]);
            } else {
                o[0] = acc[i];
                if (col + 1 < p.n) {
                    o[1] = acc[i + 1];
                }
            }
        }
    }
}

template <uint32_t BM, uint32_t BN>
__device__ __forceinline__ void fp8_gemm(const CUtensorMap* map_a, const CUtensorMap* map_b,
                                         const Fp8GemmWgmmaParams& p) {
    constexpr uint32_t kStages = stages(BM, BN);
    static_assert(kScaleBlock % BN == 0, "a tile's columns share one weight scale block");
    static_assert(BM % kWgmmaM == 0, "64 rows per consumer warpgroup");
    static_assert(smem_bytes(BM, BN, kStages) <= kSmemLimit, "the stages fit in shared memory");
    extern __shared__ uint8_t smem[];
    const uint32_t base = (smem_addr(smem) + kSwizzleAtom - 1) & ~(kSwizzleAtom - 1);
    const Scheduler sched = scheduler(p.m, p.n, Tiles{BM, BN});
    const uint32_t k_blocks = div_ceil(p.k, kBlockK);

    if (threadIdx.x == 0) {
        prefetch_tensor_map(map_a);
        prefetch_tensor_map(map_b);
        for (uint32_t s = 0; s < kStages; ++s) {
            mbarrier_init(base + full_barrier_offset(BM, BN, kStages, s), 1);
            mbarrier_init(base + empty_barrier_offset(BM, BN, kStages, s), consumers(BM) * kWarpsPerGroup);
        }
        fence_barrier_init();
    }
    __syncthreads();

    // Each warpgroup's role is one branch (setmaxnreg needs it); no block-wide barrier follows.
    const uint32_t group = threadIdx.x / kWarpgroup;
    if (group == 0) {
        setmaxnreg_dec<kProducerRegs>();
        if (threadIdx.x == 0) {
            producer<BM, BN>(base, map_a, map_b, sched, k_blocks);
        }
    } else {
        setmaxnreg_inc<kConsumerRegs>();
        consumer<BM, BN>(base, p, sched, k_blocks, group - 1);
    }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(threads(128), 1)
    flashseek_fp8_gemm_wgmma_m128n128_f32(const __grid_constant__ CUtensorMap map_a,
                                          const __grid_constant__ CUtensorMap map_b, const Fp8GemmWgmmaParams p) {
    fp8_gemm<128, 128>(&map_a, &map_b, p);
}

extern "C" __global__ void __launch_bounds__(threads(128), 1)
    flashseek_fp8_gemm_wgmma_m128n64_f32(const __grid_constant__ CUtensorMap map_a,
                                         const __grid_constant__ CUtensorMap map_b, const Fp8GemmWgmmaParams p) {
    fp8_gemm<128, 64>(&map_a, &map_b, p);
}

extern "C" __global__ void __launch_bounds__(threads(64), 1)
    flashseek_fp8_gemm_wgmma_m64n128_f32(const __grid_constant__ CUtensorMap map_a,
                                         const __grid_constant__ CUtensorMap map_b, const Fp8GemmWgmmaParams p) {
    fp8_gemm<64, 128>(&map_a, &map_b, p);
}

extern "C" __global__ void __launch_bounds__(threads(64), 1)
    flashseek_fp8_gemm_wgmma_m64n64_f32(const __grid_constant__ CUtensorMap map_a,
                                        const __grid_constant__ CUtensorMap map_b, const Fp8GemmWgmmaParams p) {
    fp8_gemm<64, 64>(&map_a, &map_b, p);
}
