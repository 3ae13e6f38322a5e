// MLA decode over the FP8 latent cache or the bf16 cache on Hopper (FlashMLA's V3.2 sparse FP8
// decode, in numerics): the latent dequantized (FP8) or copied (bf16) to bf16 in shared memory
// (e4m3 times a power-of-two scale is exact in bf16), the query rounded to bf16, S = Q K^T and
// O += P V on bf16 wgmma with f32 accumulation, the online softmax in f32 registers, P rounded to
// bf16. Dense (positions 0..=pos) and sparse (top-k entries, -1 or past pos masked) in one kernel.
//
// One CTA per (work item, 64 heads), 384 threads (decode_fast.cuh has the index math):
// - warpgroup 2 (the producer) resolves each tile's 64 keys to cache slots through the block
//   table (and the top-k row) and fills a stage of the ring (mbarriers full/empty, two stages);
//   zeros for masked keys. Its code is the cache format's, everything else is shared:
//   - FP8: loads the 656-byte tokens (16-byte loads, a warp reads a token's 512 codes in one
//     instruction), dequantizes codes x scale to bf16 and stores them, with the bf16 RoPE values,
//     in the 128-byte swizzle. A tile's loads are issued before the stage they go to drains.
//   - bf16: copies the 1152-byte rows into the swizzled tile with 16-byte cp.async (zero-fill for
//     masked keys) once the stage drains, and signals a stage when its copies landed, after it
//     issued the next tile's: two tiles in flight.
// - warpgroups 0 and 1 (the math): g scores keys 32g..32g+31 of the tile against all 64 heads
//   (36 wgmma m64n32k16 over the 576 columns), the two exchange their per-head maxima through
//   shared memory, both take the same online-softmax step, write their half of P (bf16) to
//   shared memory, and each adds P V for its 256 output columns (4 wgmma m64n256k16, V read
//   transposed from the same tile). Each holds 64 x 256 f32 of O in registers (128 a thread).
// At the end a row's only item writes O / l; a split item writes O, max and l to its workspace
// slot, and flashseek_mla_decode_fp8_combine_f32 merges a split row's slots (for both formats).
#include <cstdint>

#include "flashseek/params.h"
#include "decode_fast.cuh"
#include "../../common/wgmma.cuh"
#include "../../common/wgmma_tma.cuh"

namespace {

using namespace flashseek::mla_fast;
using namespace flashseek::sm90;

static_assert(Smem::bytes == FLASHSEEK_MLA_FP8_SMEM, "params.h's shared memory size is the layout's");
static_assert(kThreads == FLASHSEEK_MLA_FP8_THREADS && kHeads == FLASHSEEK_MLA_FP8_HEADS, "params.h's shape");
static_assert(kTileKeys == FLASHSEEK_MLA_FP8_TILE, "params.h's tile");

// Registers per thread after the split: the producer gives up what the math warpgroups take
// (128 x 152 + 256 x 176 = 64512, within the 384 x 168 the launch bounds allot).
constexpr uint32_t kProducerRegs = 152;
constexpr uint32_t kMathRegs = 176;
// Named barriers of the two math warpgroups (0 is __syncthreads).
constexpr uint32_t kBarQ = 1;
constexpr uint32_t kBarMax = 2;
constexpr uint32_t kBarP = 3;
constexpr uint32_t kMathThreads = 2 * kWarpgroup;

constexpr int kS = kGroupKeys / 2;
constexpr int kO = kGroupCols / 2;

__device__ __forceinline__ void st_shared_v4(uint32_t addr, uint4 v) {
    asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};" ::"r"(addr), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
                 : "memory");
}

__device__ __forceinline__ void st_shared_v2(uint32_t addr, uint32_t a, uint32_t b) {
    asm volatile("st.shared.v2.b32 [%0], {%1, %2};" ::"r"(addr), "r"(a), "r"(b) : "memory");
}

__device__ __forceinline__ void st_shared_b32(uint32_t addr, uint32_t a) {
    asm volatile("st.shared.b32 [%0], %1;" ::"r"(addr), "r"(a) : "memory");
}

__device__ __forceinline__ void st_shared_f32(uint32_t addr, float a) {
    asm volatile("st.shared.f32 [%0], %1;" ::"r"(addr), "f"(a) : "memory");
}

__device__ __forceinline__ void st_shared_b16(uint32_t addr, uint16_t a) {
    asm volatile("st.shared.b16 [%0], %1;" ::"r"(addr), "h"(a) : "memory");
}

// 16 bytes global to shared, the first `src_bytes` (16 or 0) from `src`, the rest zeros; L2 only
// (a row is read once per CTA).
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, uint32_t src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}

// Closes the group of this thread's cp.async issued since the last commit.
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }

// Waits until at most N of this thread's committed groups are pending: the older groups' stores
// are then its own, ordered as st.shared.
template <int N>
__device__ __forceinline__ void cp_async_wait_group() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

__device__ __forceinline__ float ld_shared_f32(uint32_t addr) {
    float v;
    asm volatile("ld.shared.f32 %0, [%1];" : "=f"(v) : "r"(addr) : "memory");
    return v;
}

__device__ __forceinline__ uint64_t ld_shared_u64(uint32_t addr) {
    uint64_t v;
    asm volatile("ld.shared.b64 %0, [%1];" : "=l"(v) : "r"(addr) : "memory");
    return v;
}

// Two bf16 in one word, `lo` in the low half (the lower column).
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    uint32_t r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// Two e4m3 codes (the low byte first) times `scale`, as two bf16: exact (3 mantissa bits times
// a power of two).
__device__ __forceinline__ uint32_t dequant2(uint32_t two, float scale) {
    uint32_t h2;
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(h2) : "h"(static_cast<uint16_t>(two)));
    float lo, hi;
    asm("cvt.f32.f16 %0, %1;" : "=f"(lo) : "h"(static_cast<uint16_t>(h2)));
    asm("cvt.f32.f16 %0, %1;" : "=f"(hi) : "h"(static_cast<uint16_t>(h2 >> 16)));
    return pack_bf16(lo * scale, hi * scale);
}

// Eight codes (a word pair) to eight bf16 (four words).
__device__ __forceinline__ uint4 dequant8(uint32_t a, uint32_t b, float scale) {
    return make_uint4(dequant2(a, scale), dequant2(a >> 16, scale), dequant2(b, scale), dequant2(b >> 16, scale));
}

struct Work {
    uint32_t row;
    uint32_t begin;
    uint32_t end;
    uint32_t part;
    uint32_t head0;
    uint32_t tiles;
};

// An item's entries to cache slots: entry e's, or -1 where it is none (past the item, a top-k
// entry below 0 or past the position, a position without a page).
struct Keys {
    const uint32_t* blocks;
    uint64_t first;
    const int32_t* topk_row;
    uint32_t pos;

    __device__ __forceinline__ Keys(const MlaDecodeFp8Params& p, const Work& w) {
        pos = p.meta[w.row];
        const uint32_t seq = p.meta[p.rows + w.row];
        const uint32_t* starts = p.meta + 2 * static_cast<size_t>(p.rows);
        blocks = starts + p.n_starts;
        first = seq < p.n_starts ? starts[seq] : p.n_blocks;
        topk_row = p.topk != nullptr ? p.topk + static_cast<size_t>(w.row) * p.topk_cols : nullptr;
    }

    __device__ __forceinline__ long long slot(const MlaDecodeFp8Params& p, const Work& w, uint64_t e) const {
        if (e >= w.end) {
            return -1;
        }
        const long long t = entry_position(topk_row, e, pos);
        return t < 0 ? -1 : position_slot(blocks, p.n_blocks, first, p.block_size, p.slots, static_cast<uint64_t>(t));
    }
};

// The FP8 producer warpgroup: tiles of 64 keys into the two stages.
__device__ __forceinline__ void produce_fp8(const MlaDecodeFp8Params& p, const Work& w, uint32_t base) {
    const uint32_t warp = (threadIdx.x - kMathThreads) / 32;
    const uint32_t lane = threadIdx.x % 32;
    const Keys keys(p, w);
    for (uint32_t it = 0; it < w.tiles; ++it) {
        const int stage = static_cast<int>(ring_stage(it, kStages));
        const uint64_t e0 = static_cast<uint64_t>(w.begin) + static_cast<uint64_t>(it) * kTileKeys;
        const uint32_t tile = base + Smem::k(stage);
        // Both halves' loads (a tile's 42 KB per CTA) go out before the stage drains.
        uint32_t bits = 0;
        uint4 codes[2][kKeysPerHalf];
        float scales[2][kKeysPerHalf];
        uint4 rope[2][2];
#pragma unroll
        for (uint32_t half = 0; half < 2; ++half) {
            // Lanes 0..7 resolve the half's 8 keys; every lane then reads them by shuffle.
            const long long slot = lane < kKeysPerHalf ? keys.slot(p, w, e0 + producer_key(warp, half, lane)) : -1;
            bits |= (__ballot_sync(0xffffffffu, slot >= 0) & 0xffu) << (8 * half);
#pragma unroll
            for (uint32_t j = 0; j < kKeysPerHalf; ++j) {
                const long long s = __shfl_sync(0xffffffffu, slot, j);
                codes[half][j] = make_uint4(0, 0, 0, 0);
                scales[half][j] = 0.0f;
                if (s >= 0) {
                    const unsigned char* token = p.cache + token_offset(static_cast<uint64_t>(s));
                    codes[half][j] = __ldg(reinterpret_cast<const uint4*>(token + code_src(lane)));
                    scales[half][j] = __ldg(reinterpret_cast<const float*>(token + scale_src(lane)));
                }
            }
#pragma unroll
            for (uint32_t r = 0; r < 2; ++r) {
                const long long s = __shfl_sync(0xffffffffu, slot, 4 * r + lane / 8);
                rope[half][r] = make_uint4(0, 0, 0, 0);
                if (s >= 0) {
                    const unsigned char* token = p.cache + token_offset(static_cast<uint64_t>(s));
                    rope[half][r] = __ldg(reinterpret_cast<const uint4*>(token + rope_src(lane)));
                }
            }
        }
        mbarrier_wait(base + Smem::empty(stage), ring_empty_parity(it, kStages));
        // Lanes 4..7 of each 8 store their upper 8 values first: each 8-lane phase of a 16-byte
        // store then covers the 8 bank groups of the row once.
        const uint32_t col = code_col(lane);
        const bool swap = (lane / 4) % 2 == 1;
#pragma unroll
        for (uint32_t half = 0; half < 2; ++half) {
#pragma unroll
            for (uint32_t j = 0; j < kKeysPerHalf; ++j) {
                const uint32_t row = producer_key(warp, half, j);
                const uint4 lo = dequant8(codes[half][j].x, codes[half][j].y, scales[half][j]);
                const uint4 hi = dequant8(codes[half][j].z, codes[half][j].w, scales[half][j]);
                st_shared_v4(tile + tile_offset(row, swap ? col + 8 : col), swap ? hi : lo);
                st_shared_v4(tile + tile_offset(row, swap ? col : col + 8), swap ? lo : hi);
            }
#pragma unroll
            for (uint32_t r = 0; r < 2; ++r) {
                st_shared_v4(tile + tile_offset(rope_key(warp, half, r, lane), rope_col(lane)), rope[half][r]);
            }
        }
        if (lane == 0) {
            st_shared_b16(base + Smem::mask_of(stage) + 2 * warp, static_cast<uint16_t>(bits));
        }
        fence_proxy_async_shared_cta();
        mbarrier_arrive(base + Smem::full(stage));
    }
}

// The bf16 producer warpgroup: rows copied as they are into the two stages, 36 16-byte copies a
// thread per tile (72 KB per CTA), no registers held for them. Tile it's copies go out as soon as
// its stage drains; the thread then waits for tile it - 1's (still in flight beside tile it's),
// fences them and signals that stage: two tiles in flight while the math waits on the older.
// Slots are resolved a tile ahead, after the signal, so their dependent global reads (top-k row,
// block table) delay no stage.
__device__ __forceinline__ void produce_bf16(const MlaDecodeFp8Params& p, const Work& w, uint32_t base) {
    const uint32_t warp = (threadIdx.x - kMathThreads) / 32;
    const uint32_t lane = threadIdx.x % 32;
    const Keys keys(p, w);
    // Lanes 0..15 resolve the warp's 16 keys of a tile (bit j of its mask is key j); every lane
    // then reads the slot of each of its copies by shuffle.
    const auto resolve = [&](uint32_t it) -> long long {
        const uint64_t e0 = static_cast<uint64_t>(w.begin) + static_cast<uint64_t>(it) * kTileKeys;
        return lane < kKeysPerWarp && it < w.tiles ? keys.slot(p, w, e0 + producer_key(warp, 0, lane)) : -1;
    };
    long long slot = resolve(0);
    for (uint32_t it = 0; it < w.tiles; ++it) {
        const int stage = static_cast<int>(ring_stage(it, kStages));
        const uint32_t tile = base + Smem::k(stage);
        const uint32_t bits = __ballot_sync(0xffffffffu, slot >= 0) & 0xffffu;
        mbarrier_wait(base + Smem::empty(stage), ring_empty_parity(it, kStages));
// Unrolled by 4 of the 36: fully, the copies' 36 addresses stay live across tiles and spill.
#pragma unroll 4
        for (uint32_t r = 0; r < kBf16Copies; ++r) {
            const long long s = __shfl_sync(0xffffffffu, slot, bf16_warp_key(r, lane));
            // A masked key reads nothing (0 source bytes) from a valid address and stores zeros.
            const unsigned char* src =
                s >= 0 ? p.cache + bf16_row_offset(static_cast<uint64_t>(s)) + bf16_src(r, lane) : p.cache;
            cp_async_16(tile + tile_offset(bf16_key(warp, r, lane), bf16_col(r, lane)), src, s >= 0 ? 16u : 0u);
        }
        cp_async_commit();
        // Released with the stage's arrival (the next iteration's or the last one's).
        if (lane == 0) {
            st_shared_b16(base + Smem::mask_of(stage) + 2 * warp, static_cast<uint16_t>(bits));
        }
        if (it > 0) {
            // Tile it - 1's copies landed and are this thread's stores: then, as the FP8
            // producer's, fenced for the math warpgroups' wgmma (the async proxy) and released by
            // the arrival.
            cp_async_wait_group<1>();
            fence_proxy_async_shared_cta();
            mbarrier_arrive(base + Smem::full(static_cast<int>(ring_stage(it - 1, kStages))));
        }
        slot = resolve(it + 1);
    }
    if (w.tiles > 0) {
        cp_async_wait_group<0>();
        fence_proxy_async_shared_cta();
        mbarrier_arrive(base + Smem::full(static_cast<int>(ring_stage(w.tiles - 1, kStages))));
    }
}

// The query's 64 heads (zeros past `heads`) to bf16 in the query tile, by both math warpgroups.
__device__ __forceinline__ void load_q(const MlaDecodeFp8Params& p, const Work& w, uint32_t base) {
    constexpr uint32_t kVecs = kLatent / 4;
    for (uint32_t i = threadIdx.x; i < kHeads * kVecs; i += kMathThreads) {
        const uint32_t head = i / kVecs;
        const uint32_t col = 4 * (i % kVecs);
        const uint32_t h = w.head0 + head;
        float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (h < p.heads) {
            const size_t at = (static_cast<size_t>(w.row) * p.heads + h) * kLatent + col;
            v = __ldg(reinterpret_cast<const float4*>(p.q + at));
        }
        st_shared_v2(base + Smem::q + tile_offset(head, col), pack_bf16(v.x, v.y), pack_bf16(v.z, v.w));
    }
    fence_proxy_async_shared_cta();
    bar_sync(kBarQ, kMathThreads);
}

// A math warpgroup: scores, softmax and its 256 columns of O, then the output or the partials.
__device__ __forceinline__ void attend(const MlaDecodeFp8Params& p, const Work& w, uint32_t base) {
    const uint32_t g = threadIdx.x / kWarpgroup;
    const uint32_t t = threadIdx.x % kWarpgroup;
    load_q(p, w, base);
    // This thread's two heads (rows of every fragment).
    const uint32_t r0 = frag_row(t, 0);
    const uint32_t r1 = frag_row(t, 2);
    float o[kO];
#pragma unroll
    for (int i = 0; i < kO; ++i) {
        o[i] = 0.0f;
    }
    float m0 = neg_inf();
    float m1 = neg_inf();
    float l0 = 0.0f;
    float l1 = 0.0f;
    uint32_t keys = 0;
    for (uint32_t it = 0; it < w.tiles; ++it) {
        const int stage = static_cast<int>(ring_stage(it, kStages));
        mbarrier_wait(base + Smem::full(stage), ring_parity(it, kStages));
        float s[kS];
        wgmma_fence();
#pragma unroll
        for (uint32_t step = 0; step < kQkSteps; ++step) {
            const uint64_t a = k_major_sw128_desc(base + qk_a(step));
            const uint64_t b = k_major_sw128_desc(base + qk_b(stage, g, step));
            wgmma_m64n32k16_bf16(s, a, b, step > 0 ? 1u : 0u);
        }
        wgmma_commit_group();
        wgmma_wait_group<0>();
        fence_operand(s);

        const uint64_t mask = ld_shared_u64(base + Smem::mask_of(stage));
        keys += __popcll(mask);
        const uint32_t mine = static_cast<uint32_t>(mask >> (kGroupKeys * g));
        float x0 = neg_inf();
        float x1 = neg_inf();
#pragma unroll
        for (int i = 0; i < kS; ++i) {
            s[i] = (mine >> frag_col(t, i)) & 1u ? s[i] * p.scale : neg_inf();
            if ((i / 2) % 2 == 0) {
                x0 = fmaxf(x0, s[i]);
            } else {
                x1 = fmaxf(x1, s[i]);
            }
        }
        // The four lanes of a quad share the rows: their maxima, then the other warpgroup's.
#pragma unroll
        for (int lanes = 1; lanes < 4; lanes *= 2) {
            x0 = fmaxf(x0, __shfl_xor_sync(0xffffffffu, x0, lanes));
            x1 = fmaxf(x1, __shfl_xor_sync(0xffffffffu, x1, lanes));
        }
        const int parity = static_cast<int>(it & 1u);
        if (t % 4 == 0) {
            st_shared_f32(base + Smem::max_of(parity, g, r0), x0);
            st_shared_f32(base + Smem::max_of(parity, g, r1), x1);
        }
        bar_sync(kBarMax, kMathThreads);
        // Both warpgroups take max(group 0, group 1) in that order: the same bits.
        const float y0 = ld_shared_f32(base + Smem::max_of(parity, 1 - g, r0));
        const float y1 = ld_shared_f32(base + Smem::max_of(parity, 1 - g, r1));
        const Step st0 = online_step(m0, g == 0 ? fmaxf(x0, y0) : fmaxf(y0, x0));
        const Step st1 = online_step(m1, g == 0 ? fmaxf(x1, y1) : fmaxf(y1, x1));
        m0 = st0.m_new;
        m1 = st1.m_new;
        l0 *= st0.alpha;
        l1 *= st1.alpha;
#pragma unroll
        for (int i = 0; i < kS; i += 2) {
            const bool lower = (i / 2) % 2 == 0;
            const float b = lower ? st0.base : st1.base;
            const float w0 = exp_fast(s[i] - b);
            const float w1 = exp_fast(s[i + 1] - b);
            if (lower) {
                l0 += w0 + w1;
            } else {
                l1 += w0 + w1;
            }
            const uint32_t row = lower ? r0 : r1;
            const uint32_t col = kGroupKeys * g + frag_col(t, i);
            st_shared_b32(base + Smem::p + swizzle_128b(row, 2 * col), pack_bf16(w0, w1));
        }
        fence_proxy_async_shared_cta();
        bar_sync(kBarP, kMathThreads);
#pragma unroll
        for (int i = 0; i < kO; ++i) {
            o[i] *= (i / 2) % 2 == 0 ? st0.alpha : st1.alpha;
        }
        // The rescaled accumulators are the wgmma's inputs: ordered before its fence.
        fence_operand(o);
        wgmma_fence();
#pragma unroll
        for (uint32_t step = 0; step < kPvSteps; ++step) {
            const uint64_t a = k_major_sw128_desc(base + pv_a(step));
            const uint64_t b = smem_desc(base + pv_b(stage, g, step), kVLbo, kVSbo, kSwizzle128B);
            wgmma_m64n256k16_bf16_tb(o, a, b, 1u);
        }
        wgmma_commit_group();
        wgmma_wait_group<0>();
        fence_operand(o);
        mbarrier_arrive(base + Smem::empty(stage));
    }

    // Each row's sum: the quad's partial sums, then both warpgroups' in a fixed order.
#pragma unroll
    for (int lanes = 1; lanes < 4; lanes *= 2) {
        l0 += __shfl_xor_sync(0xffffffffu, l0, lanes);
        l1 += __shfl_xor_sync(0xffffffffu, l1, lanes);
    }
    if (t % 4 == 0) {
        st_shared_f32(base + Smem::sum_of(g, r0), l0);
        st_shared_f32(base + Smem::sum_of(g, r1), l1);
    }
    bar_sync(kBarMax, kMathThreads);
    l0 = ld_shared_f32(base + Smem::sum_of(0, r0)) + ld_shared_f32(base + Smem::sum_of(1, r0));
    l1 = ld_shared_f32(base + Smem::sum_of(0, r1)) + ld_shared_f32(base + Smem::sum_of(1, r1));

    const uint32_t h0 = w.head0 + r0;
    const uint32_t h1 = w.head0 + r1;
    const size_t col0 = static_cast<size_t>(kGroupCols) * g;
    const bool whole = w.part == kWhole;
    // The output rows, or the item's partial slots.
    const uint64_t q0 = whole ? static_cast<uint64_t>(w.row) * p.heads + h0 : partial_index(w.part, p.heads, h0);
    const uint64_t q1 = whole ? static_cast<uint64_t>(w.row) * p.heads + h1 : partial_index(w.part, p.heads, h1);
    float* dst0 = (whole ? p.out : p.part_acc) + q0 * kNope + col0;
    float* dst1 = (whole ? p.out : p.part_acc) + q1 * kNope + col0;
    // A row without keys writes zeros, as the CPU; a whole row is normalized here.
    const float inv0 = !whole ? 1.0f : keys == 0 ? 0.0f : 1.0f / l0;
    const float inv1 = !whole ? 1.0f : keys == 0 ? 0.0f : 1.0f / l1;
#pragma unroll
    for (int i = 0; i < kO; i += 2) {
        const bool lower = (i / 2) % 2 == 0;
        const uint32_t col = frag_col(t, i);
        if (lower && h0 < p.heads) {
            *reinterpret_cast<float2*>(dst0 + col) = make_float2(o[i] * inv0, o[i + 1] * inv0);
        }
        if (!lower && h1 < p.heads) {
            *reinterpret_cast<float2*>(dst1 + col) = make_float2(o[i] * inv1, o[i + 1] * inv1);
        }
    }
    if (!whole && g == 0 && t % 4 == 0) {
        const float k = static_cast<float>(keys);
        if (h0 < p.heads) {
            float* stat = p.part_stat + q0 * 3;
            stat[0] = m0;
            stat[1] = l0;
            stat[2] = k;
        }
        if (h1 < p.heads) {
            float* stat = p.part_stat + q1 * 3;
            stat[0] = m1;
            stat[1] = l1;
            stat[2] = k;
        }
    }
}

// The cache formats: the producer's code, the rest of the kernel is one.
enum class Format { Fp8, Bf16 };

template <Format F>
__device__ __forceinline__ void decode(const MlaDecodeFp8Params& p) {
    extern __shared__ __align__(1024) unsigned char smem[];
    const uint32_t raw = smem_addr(smem);
    const uint32_t base = (raw + 1023u) & ~1023u;
    const Cta cta = cta_of(blockIdx.x, p.heads);
    // Uniform over the CTA: no barrier is skipped by some threads only.
    if (cta.item >= p.n_items) {
        return;
    }
    const uint32_t* words = p.items + static_cast<size_t>(cta.item) * kItemWords;
    Work w{words[0], words[1], words[2], words[3], cta.head0, 0};
    if (w.row >= p.rows || w.end < w.begin) {
        return;
    }
    w.tiles = static_cast<uint32_t>((static_cast<uint64_t>(w.end - w.begin) + kTileKeys - 1) / kTileKeys);
    if (threadIdx.x == 0) {
        for (int s = 0; s < kStages; ++s) {
            mbarrier_init(base + Smem::full(s), kWarpgroup);
            mbarrier_init(base + Smem::empty(s), kMathThreads);
        }
        fence_mbarrier_init();
    }
    __syncthreads();
    if (threadIdx.x >= kMathThreads) {
        setmaxnreg_dec<kProducerRegs>();
        if constexpr (F == Format::Fp8) {
            produce_fp8(p, w, base);
        } else {
            produce_bf16(p, w, base);
        }
    } else {
        setmaxnreg_inc<kMathRegs>();
        attend(p, w, base);
    }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(FLASHSEEK_MLA_FP8_THREADS, 1)
    flashseek_mla_decode_fp8_f32(const MlaDecodeFp8Params p) {
    decode<Format::Fp8>(p);
}

// The same kernel over the bf16 cache: p.cache holds p.slots rows of 576 bf16.
extern "C" __global__ void __launch_bounds__(FLASHSEEK_MLA_FP8_THREADS, 1)
    flashseek_mla_decode_bf16_f32(const MlaDecodeFp8Params p) {
    decode<Format::Bf16>(p);
}

// Merges the slots of one split row and head, block blockIdx.x = merge * heads + head: with M the
// largest maximum among slots that had keys, out = sum_s w_s acc_s / sum_s w_s sum_s with
// w_s = exp(max_s - M) (exactly 1 where max_s = M); zeros where no slot had a key. decode.cu's
// combine over this kernel's compact slots.
extern "C" __global__ void __launch_bounds__(FLASHSEEK_MLA_COMBINE_THREADS)
    flashseek_mla_decode_fp8_combine_f32(const MlaDecodeFp8Params p) {
    __shared__ float weight[FLASHSEEK_MLA_MAX_SPLITS];
    __shared__ float total;
    __shared__ unsigned keys;
    const uint32_t merge = blockIdx.x / p.heads;
    const uint32_t head = blockIdx.x % p.heads;
    if (merge >= p.n_merges) {
        return;
    }
    const uint32_t* m = p.merges + static_cast<size_t>(merge) * kMergeWords;
    const uint32_t row = m[0];
    const uint32_t first = m[1];
    const uint32_t count = m[2];
    if (row >= p.rows || count > FLASHSEEK_MLA_MAX_SPLITS) {
        return;
    }
    if (threadIdx.x == 0) {
        float mx = neg_inf();
        unsigned n = 0;
        for (uint32_t s = 0; s < count; ++s) {
            const float* stat = p.part_stat + partial_index(first + s, p.heads, head) * 3;
            if (stat[2] > 0.0f) {
                mx = fmaxf(mx, stat[0]);
                ++n;
            }
        }
        float sum = 0.0f;
        for (uint32_t s = 0; s < count; ++s) {
            const float* stat = p.part_stat + partial_index(first + s, p.heads, head) * 3;
            float w = 0.0f;
            if (stat[2] > 0.0f) {
                w = stat[0] == mx ? 1.0f : expf(__fsub_rn(stat[0], mx));
                sum = __fadd_rn(sum, __fmul_rn(w, stat[1]));
            }
            weight[s] = w;
        }
        total = sum;
        keys = n;
    }
    __syncthreads();
    float* out = p.out + (static_cast<size_t>(row) * p.heads + head) * kNope;
    for (uint32_t d = threadIdx.x; d < kNope; d += FLASHSEEK_MLA_COMBINE_THREADS) {
        float a = 0.0f;
        // A slot without keys weighs 0 and holds zeros; one with keys adds w_s * acc_s even
        // where w_s is 0, so that a NaN in it stays, as on the CPU.
        for (uint32_t s = 0; s < count; ++s) {
            a = fmaf(weight[s], p.part_acc[partial_index(first + s, p.heads, head) * kNope + d], a);
        }
        out[d] = keys == 0 ? 0.0f : __fdiv_rn(a, total);
    }
}
