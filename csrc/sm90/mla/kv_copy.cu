// Row copies between packed rows and the paged latent cache: the CPU backend's `kv_store` and
// `kv_gather` (src/backend/cpu/elementwise.rs), bit for bit since they only copy. One block per
// (source row, destination row) pair; the host checked every row and column range and, for
// kv_store, dropped all but the last of the rows written to one slot (the CPU's sequential
// order), so no two blocks write the same value.
#include "flashseek/params.h"

extern "C" __global__ void __launch_bounds__(FLASHSEEK_KV_COPY_THREADS) flashseek_kv_copy_f32(const KvCopyParams p) {
    if (blockIdx.x >= p.count) {
        return;
    }
    const unsigned src_row = p.pairs[2 * static_cast<size_t>(blockIdx.x)];
    const unsigned dst_row = p.pairs[2 * static_cast<size_t>(blockIdx.x) + 1];
    const float* src = p.src + static_cast<size_t>(src_row) * p.src_stride + p.src_col;
    float* dst = p.dst + static_cast<size_t>(dst_row) * p.dst_stride + p.dst_col;
    for (unsigned c = threadIdx.x; c < p.n; c += FLASHSEEK_KV_COPY_THREADS) {
        dst[c] = src[c];
    }
}
