// The Hopper lightning indexer's logits: FP8 q . k on wgmma over the paged FP8 index key cache,
// ReLU, the weighted sum over heads and the key's scale fused, causal; and each row's histogram
// of score bins for the top-k kernel (indexer_topk_fp8.cu). Index math in indexer_fast.cuh.
//
// A CTA takes a group of 1 or 2 query rows of one sequence (N = 2 x 64 heads, padded with zero
// queries) and a run of that sequence's key pages (M = the 64 keys of a page, K = 128).
// Warpgroup 0 produces: one thread copies each page into a ring of kStages stages, the codes by
// the TMA (a 3-D tensor map over [pages][64][128] bytes, 128-byte swizzle) and the 64 scales by a
// 1-D bulk copy, both completing on the stage's `full` mbarrier. Warpgroups 1 and 2 consume
// alternate pages: 4 wgmma m64n128k32 (A = the page, B = the queries, both from shared memory),
// then per key the weighted ReLU sum of its 64 heads per row (in registers, then across the 4
// lanes of a quad), times the key's scale; they release the stage on its `empty` mbarrier.
#include <cuda.h>

#include "../../common/host_device.cuh"
#include "../../common/wgmma.cuh"
#include "../../common/wgmma_tma.cuh"
#include "flashseek/params.h"
#include "indexer_fast.cuh"

namespace {

using namespace flashseek::indexer_fast;
using namespace flashseek::sm90;

static_assert(FLASHSEEK_INDEXER_FP8_DIM == kDim && FLASHSEEK_INDEXER_FP8_HEADS == kHeads &&
                  FLASHSEEK_INDEXER_FP8_BINS == kBins && FLASHSEEK_INDEXER_FP8_THREADS == kThreads &&
                  FLASHSEEK_INDEXER_FP8_LOGITS_SMEM == LogitsSmem::dynamic_bytes &&
                  LogitsSmem::dynamic_bytes <= FLASHSEEK_INDEXER_FP8_MAX_SMEM,
              "params.h and indexer_fast.cuh agree");
static_assert(kAccRegs == 64, "the wgmma below is m64n128: 64 accumulators per thread");

constexpr unsigned kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;

}  // namespace

extern "C" __global__ void __launch_bounds__(kThreads, 1)
    flashseek_indexer_logits_fp8_f32(const __grid_constant__ CUtensorMap keys, const IndexerFp8Params p) {
    extern __shared__ unsigned char smem_raw[];
    // The operand tiles need the swizzle atom's alignment; the launch asks for one atom more.
    const unsigned raw = smem_addr(smem_raw);
    const unsigned pad = (kSwizzleAtom - raw % kSwizzleAtom) % kSwizzleAtom;
    unsigned char* smem = smem_raw + pad;
    const unsigned base = raw + pad;
    unsigned* hist = reinterpret_cast<unsigned*>(smem + LogitsSmem::hist);
    const float* scales_s = reinterpret_cast<const float*>(smem + LogitsSmem::scales(0));
    const auto full = [&](unsigned s) { return base + LogitsSmem::barriers + 8u * s; };
    const auto empty = [&](unsigned s) { return base + LogitsSmem::barriers + 8u * (kStages + s); };

    // The work: group g's split of pages [page0, page1) (uniform over the CTA).
    const unsigned g = find_group(p.cta_start, p.n_groups, blockIdx.x);
    const unsigned split = blockIdx.x - p.cta_start[g];
    const unsigned entry0 = p.groups[g];
    const unsigned n_rows = p.groups[g + 1] - entry0;
    unsigned row[kGroupRows];
    unsigned pos[kGroupRows];
    unsigned max_pos = 0;
#pragma unroll
    for (unsigned r = 0; r < kGroupRows; ++r) {
        row[r] = r < n_rows ? p.rows[entry0 + r] : 0u;
        pos[r] = r < n_rows ? p.pos[row[r]] : 0u;
        max_pos = max(max_pos, pos[r]);
    }
    const unsigned pages = pages_for(max_pos);
    const unsigned page0 = split_begin(split, p.pages_per_split);
    const unsigned n_pages = split_end(split, p.pages_per_split, pages) - page0;
    const unsigned* table = p.blocks + p.starts[p.seq[row[0]]];

    // Shared state: the histograms, the barriers, the queries (swizzled by hand, zero rows for
    // missing heads and rows).
    for (unsigned i = threadIdx.x; i < kGroupRows * kBins; i += kThreads) {
        hist[i] = 0;
    }
    if (threadIdx.x == 0) {
        for (unsigned s = 0; s < kStages; ++s) {
            mbarrier_init(full(s), 1);
            mbarrier_init(empty(s), kWarpgroup);
        }
        fence_mbarrier_init();
    }
    constexpr unsigned kChunks = kDim / 16;
    for (unsigned i = threadIdx.x; i < kN * kChunks; i += kThreads) {
        const unsigned n = i / kChunks;
        const unsigned chunk = i % kChunks;
        const unsigned r = n / kHeads;
        const unsigned h = n % kHeads;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (r < n_rows && h < p.heads) {
            const size_t at = (static_cast<size_t>(r == 0 ? row[0] : row[1]) * p.heads + h) * kDim + chunk * 16u;
            v = *reinterpret_cast<const uint4*>(p.q + at);
        }
        *reinterpret_cast<uint4*>(smem + LogitsSmem::q + swizzle_128b(n, chunk * 16u)) = v;
    }
    // The queries were stored through the generic proxy and the wgmma reads them through the
    // async one.
    fence_proxy_async_shared_cta();
    __syncthreads();

    const unsigned wg = threadIdx.x / kWarpgroup;
    if (wg == 0) {
        if (threadIdx.x == 0) {
            for (unsigned j = 0; j < n_pages; ++j) {
                const unsigned s = ring_stage(j, kStages);
                if (j >= kStages) {
                    // Phase j / kStages - 1 of the stage's release.
                    mbarrier_wait(empty(s), ring_empty_parity(j, kStages));
                }
                const unsigned page = table[page0 + j];
                mbarrier_arrive_expect_tx(full(s), kPageCodeBytes + kPageScaleBytes);
                tma_load_3d(base + LogitsSmem::codes(s), &keys, full(s), 0, 0, static_cast<int32_t>(page));
                bulk_copy_g2s(base + LogitsSmem::scales(s), p.cache + page_scales(page), kPageScaleBytes, full(s));
            }
        }
        return;
    }

    // A consumer: its thread within its warpgroup, its lane, and its pages j = c, c + 2, ...
    const unsigned c = wg - 1;
    const unsigned tid = threadIdx.x % kWarpgroup;
    const unsigned lane = threadIdx.x % kWarp;
    // This thread's head weights: query row r's heads 8 jj + 2 (lane % 4) + e, times the
    // weight scale and the head's query scale (positive, so it passes through the ReLU).
    float w[kGroupRows][kHeads / 8][2];
#pragma unroll
    for (unsigned r = 0; r < kGroupRows; ++r) {
#pragma unroll
        for (unsigned jj = 0; jj < kHeads / 8; ++jj) {
#pragma unroll
            for (unsigned e = 0; e < 2; ++e) {
                const unsigned h = frag_col(tid, frag_index(0, jj, e));
                float v = 0.0f;
                if (r < n_rows && h < p.heads) {
                    const size_t at = static_cast<size_t>(row[r]) * p.heads + h;
                    v = p.weights[at] * p.weight_scale * p.q_scales[at];
                }
                w[r][jj][e] = v;
            }
        }
    }
    const uint64_t desc_q = k_major_sw128_desc(base + LogitsSmem::q);
    float d[kAccRegs];
#pragma unroll
    for (unsigned i = 0; i < kAccRegs; ++i) {
        d[i] = 0.0f;
    }
    for (unsigned j = c; j < n_pages; j += kConsumers) {
        const unsigned s = ring_stage(j, kStages);
        mbarrier_wait(full(s), ring_parity(j, kStages));
        const uint64_t desc_k = k_major_sw128_desc(base + LogitsSmem::codes(s));
        wgmma_fence();
#pragma unroll
        for (unsigned k = 0; k < kKSteps; ++k) {
            wgmma_m64n128k32_e4m3(d, desc_advance_k(desc_k, k), desc_advance_k(desc_q, k), k > 0 ? 1u : 0u);
        }
        wgmma_commit_group();
        wgmma_wait_group<0>();

        // v[half][r]: the weighted ReLU sum of key frag_row(tid, 2 half) for query row r.
        float v[2][kGroupRows];
#pragma unroll
        for (unsigned half = 0; half < 2; ++half) {
#pragma unroll
            for (unsigned r = 0; r < kGroupRows; ++r) {
                float sum = 0.0f;
#pragma unroll
                for (unsigned jj = 0; jj < kHeads / 8; ++jj) {
#pragma unroll
                    for (unsigned e = 0; e < 2; ++e) {
                        sum = fmaf(w[r][jj][e], fmaxf(d[frag_index(half, r * (kHeads / 8) + jj, e)], 0.0f), sum);
                    }
                }
                sum += __shfl_xor_sync(kFullMask, sum, 1);
                sum += __shfl_xor_sync(kFullMask, sum, 2);
                v[half][r] = sum * scales_s[s * kKeys + frag_row(tid, 2u * half)];
            }
        }
        // The stage's codes (read by the finished wgmma) and scales are no longer needed.
        mbarrier_arrive(empty(s));

        // Lane q of a quad writes key half q % 2 of query row q / 2.
        const unsigned q = lane & 3u;
        const unsigned half = q & 1u;
        const unsigned r = q >> 1;
        const float score = (half == 0 ? (r == 0 ? v[0][0] : v[0][1]) : (r == 0 ? v[1][0] : v[1][1])) + 0.0f;
        const unsigned t = (page0 + j) * kKeys + frag_row(tid, 2u * half);
        const bool scored = r < n_rows && t <= (r == 0 ? pos[0] : pos[1]);
        if (r < n_rows) {
            p.logits[static_cast<size_t>(entry0 + r) * p.stride + t] = scored ? score : -INFINITY;
        }
        // Nearby scores share a bin: the lanes of one bin add once (whole warps call this).
        const unsigned bin = scored ? r * kBins + hist_bin(order_key(__float_as_uint(score))) : ~0u;
        const unsigned peers = __match_any_sync(kFullMask, bin);
        if (scored && lane == static_cast<unsigned>(__ffs(peers) - 1)) {
            atomicAdd(&hist[bin], static_cast<unsigned>(__popc(peers)));
        }
    }

    // Both consumer warpgroups are done with the histograms: add them to the rows'.
    bar_sync(1, kConsumers * kWarpgroup);
    for (unsigned i = threadIdx.x - kWarpgroup; i < n_rows * kBins; i += kConsumers * kWarpgroup) {
        const unsigned n = hist[i];
        if (n != 0) {
            atomicAdd(p.hist + static_cast<size_t>(entry0) * kBins + i, n);
        }
    }
}
