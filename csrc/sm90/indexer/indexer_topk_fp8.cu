// The Hopper lightning indexer's top-k: the k largest logits of a row (f32::total_cmp order,
// ties to the earlier position, positions ascending: the simple indexer_topk's selection),
// reading the row once from global memory. Index math in indexer_fast.cuh.
//
// The logits kernel counted the row's scores by the top kHistBits of their order keys, so the
// bin holding the k-th largest is known before the row is read: one pass over the row marks every
// score of a higher bin in a bitmap of positions and keeps those of that bin (key, position) in
// shared memory; two radix passes over them find the k-th largest key and how many of its ties
// to keep; the ties are kept in position order through a second bitmap; the selected bitmap,
// scanned in order, gives the positions ascending. A bin of more than kCandidates scores (many
// equal logits) is refined from the row in global memory instead, read once per pass.
#include "../../common/host_device.cuh"
#include "flashseek/params.h"
#include "indexer_fast.cuh"

namespace {

using namespace flashseek::indexer_fast;

constexpr unsigned kWarp = 32;
constexpr unsigned kWarps = kTopkThreads / kWarp;
constexpr unsigned kFullMask = 0xffffffffu;
static_assert(kWarps <= kWarp, "one warp scans the warps' sums");
static_assert(kBins % kTopkThreads == 0 && (1u << kRefineBits1) % kTopkThreads == 0,
              "every thread takes whole bins");
static_assert(2 * kWarps + 4 <= TopkSmem::scratch_words, "the scans' sums and the shared values fit");
static_assert(FLASHSEEK_INDEXER_FP8_TOPK_THREADS == kTopkThreads && FLASHSEEK_INDEXER_FP8_BINS == kBins &&
                  FLASHSEEK_INDEXER_FP8_TOPK_SMEM == TopkSmem::tied(0) &&
                  TopkSmem::bytes(32) == FLASHSEEK_INDEXER_FP8_TOPK_SMEM + 8,
              "params.h and indexer_fast.cuh agree: a fixed part, then 8 bytes per 32 positions");

// Exclusive prefix sum of `v` over the block in thread order, and the total in `total`. Every
// thread calls it; `sums` (kWarps words) is free again when it returns.
__device__ __forceinline__ unsigned block_scan(unsigned v, unsigned* sums, unsigned& total) {
    const unsigned warp = threadIdx.x / kWarp;
    const unsigned lane = threadIdx.x % kWarp;
    unsigned incl = v;
    for (unsigned d = 1; d < kWarp; d *= 2) {
        const unsigned up = __shfl_up_sync(kFullMask, incl, d);
        if (lane >= d) {
            incl += up;
        }
    }
    if (lane == kWarp - 1) {
        sums[warp] = incl;
    }
    __syncthreads();
    unsigned before = 0;
    unsigned all = 0;
    for (unsigned w = 0; w < kWarps; ++w) {
        const unsigned s = sums[w];
        before += w < warp ? s : 0;
        all += s;
    }
    // Every thread has read the sums before the next call writes them.
    __syncthreads();
    total = all;
    return before + incl - v;
}

// find_threshold over `bins` bins of `hist` by the block: thread i takes the bins counted from
// the top, i * per ... i * per + per - 1 of them. Writes the bin and the count above it to
// shared[0] and shared[1]; every thread calls it and reads them after the next barrier.
__device__ __forceinline__ void block_threshold(const unsigned* hist, unsigned bins, unsigned want, unsigned* sums,
                                                unsigned* shared) {
    const unsigned per = bins / kTopkThreads;
    const unsigned top = bins - 1 - threadIdx.x * per;
    unsigned mine = 0;
    for (unsigned i = 0; i < per; ++i) {
        mine += hist[top - i];
    }
    unsigned total = 0;
    unsigned above = block_scan(mine, sums, total);
    for (unsigned i = 0; i < per; ++i) {
        const unsigned h = hist[top - i];
        // Exactly one bin of the block: the counts above rise from 0 to at least want.
        if (above < want && want <= above + h) {
            shared[0] = top - i;
            shared[1] = above;
        }
        above += h;
    }
    __syncthreads();
}

// Calls f(key, position) for every score of the row in the threshold bin `bin`: the candidates
// in shared memory, or the row in global memory.
template <class F>
__device__ __forceinline__ void for_each_candidate(bool in_smem, unsigned n_cand, const unsigned* cand_keys,
                                                   const unsigned* cand_pos, const float* s, unsigned n,
                                                   unsigned bin, F f) {
    if (in_smem) {
        for (unsigned i = threadIdx.x; i < n_cand; i += kTopkThreads) {
            f(cand_keys[i], cand_pos[i]);
        }
    } else {
        for (unsigned t = threadIdx.x; t < n; t += kTopkThreads) {
            const unsigned key = order_key(__float_as_uint(s[t]));
            if (hist_bin(key) == bin) {
                f(key, t);
            }
        }
    }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(kTopkThreads)
    flashseek_indexer_topk_fp8_f32(const IndexerFp8Params p) {
    if (blockIdx.x >= p.n_rows) {
        return;
    }
    const unsigned row = p.rows[blockIdx.x];
    const unsigned n = p.pos[row] + 1;
    int* out = p.out + static_cast<size_t>(row) * p.k;
    if (n <= p.k) {
        // Every position is kept: no scores needed.
        for (unsigned j = threadIdx.x; j < p.k; j += kTopkThreads) {
            out[j] = j < n ? static_cast<int>(j) : -1;
        }
        return;
    }
    const float* s = p.logits + static_cast<size_t>(blockIdx.x) * p.stride;
    const unsigned* row_hist = p.hist + static_cast<size_t>(blockIdx.x) * kBins;

    extern __shared__ unsigned smem_words[];
    unsigned char* smem = reinterpret_cast<unsigned char*>(smem_words);
    unsigned* hist = reinterpret_cast<unsigned*>(smem + TopkSmem::hist);
    unsigned* cand_keys = reinterpret_cast<unsigned*>(smem + TopkSmem::cand_keys);
    unsigned* cand_pos = reinterpret_cast<unsigned*>(smem + TopkSmem::cand_pos);
    unsigned* sums = reinterpret_cast<unsigned*>(smem + TopkSmem::scratch);
    // shared[0], shared[1]: block_threshold's results; shared[2]: the candidates appended.
    unsigned* shared = sums + kWarps;
    unsigned* selected = reinterpret_cast<unsigned*>(smem + TopkSmem::selected);
    unsigned* tied = reinterpret_cast<unsigned*>(smem + TopkSmem::tied(n));
    const unsigned words = bitmap_words(n);

    for (unsigned i = threadIdx.x; i < kBins; i += kTopkThreads) {
        hist[i] = row_hist[i];
    }
    for (unsigned i = threadIdx.x; i < words; i += kTopkThreads) {
        selected[i] = 0;
        tied[i] = 0;
    }
    if (threadIdx.x == 0) {
        // Bin 0 where a histogram that disagrees with the logits has no bin of rank k: the
        // selection is then wrong, but every access stays in bounds.
        shared[0] = 0;
        shared[1] = 0;
        shared[2] = 0;
    }
    __syncthreads();
    block_threshold(hist, kBins, p.k, sums, shared);
    const unsigned bin = shared[0];
    unsigned want = p.k - shared[1];
    const bool in_smem = hist[bin] <= kCandidates;

    // The one read of the row.
    for (unsigned t = threadIdx.x; t < n; t += kTopkThreads) {
        const unsigned key = order_key(__float_as_uint(s[t]));
        const unsigned b = hist_bin(key);
        if (b > bin) {
            atomicOr(&selected[t / 32], 1u << (t % 32));
        } else if (b == bin && in_smem) {
            const unsigned at = atomicAdd(&shared[2], 1u);
            // The histogram counted this bin's scores: at < hist[bin] <= kCandidates.
            if (at < kCandidates) {
                cand_keys[at] = key;
                cand_pos[at] = t;
            }
        }
    }
    __syncthreads();
    const unsigned n_cand = min(shared[2], kCandidates);

    // Refine: the k-th largest key is `prefix` in the bits `mask` covers, and `want` of the keys
    // equal to it there are still to be kept.
    unsigned prefix = bin << kHistShift;
    unsigned mask = ~((1u << kHistShift) - 1u);
    for (unsigned pass = 0; pass < 2; ++pass) {
        const unsigned bins = refine_bins(pass);
        for (unsigned i = threadIdx.x; i < bins; i += kTopkThreads) {
            hist[i] = 0;
        }
        __syncthreads();
        for_each_candidate(in_smem, n_cand, cand_keys, cand_pos, s, n, bin, [&](unsigned key, unsigned) {
            if ((key & mask) == prefix) {
                atomicAdd(&hist[refine_digit(key, pass)], 1u);
            }
        });
        __syncthreads();
        block_threshold(hist, bins, want, sums, shared);
        prefix |= shared[0] << (pass == 0 ? kRefineShift0 : 0u);
        mask = refine_mask(pass);
        want -= shared[1];
        // shared[0..2] is written again only after the next pass's barriers.
    }

    // Keep every candidate above the k-th largest key, and mark its ties.
    for_each_candidate(in_smem, n_cand, cand_keys, cand_pos, s, n, bin, [&](unsigned key, unsigned t) {
        if (key > prefix) {
            atomicOr(&selected[t / 32], 1u << (t % 32));
        } else if (key == prefix) {
            atomicOr(&tied[t / 32], 1u << (t % 32));
        }
    });
    __syncthreads();

    // The first `want` ties in position order: each thread takes a run of words.
    const unsigned per = (words + kTopkThreads - 1) / kTopkThreads;
    const unsigned w0 = min(threadIdx.x * per, words);
    const unsigned w1 = min(w0 + per, words);
    unsigned mine = 0;
    for (unsigned i = w0; i < w1; ++i) {
        mine += __popc(tied[i]);
    }
    unsigned total = 0;
    unsigned before = block_scan(mine, sums, total);
    for (unsigned i = w0; i < w1 && before < want; ++i) {
        unsigned bits = tied[i];
        while (bits != 0 && before < want) {
            const unsigned bit = bits & (0u - bits);
            selected[i] |= bit;
            bits ^= bit;
            ++before;
        }
    }
    __syncthreads();

    // The positions, ascending: exactly k bits are set.
    mine = 0;
    for (unsigned i = w0; i < w1; ++i) {
        mine += __popc(selected[i]);
    }
    unsigned at = block_scan(mine, sums, total);
    for (unsigned i = w0; i < w1; ++i) {
        unsigned bits = selected[i];
        while (bits != 0 && at < p.k) {
            const unsigned b = __ffs(bits) - 1;
            out[at++] = static_cast<int>(i * 32 + b);
            bits &= bits - 1;
        }
    }
}
