// Embedding lookup: row gather from an f32 table, the CPU backend's `embedding` for f32 tables
// (src/backend/cpu/linear.rs), bit for bit since it only copies. One block per id.
#include "flashseek/params.h"

extern "C" __global__ void __launch_bounds__(FLASHSEEK_EMBEDDING_THREADS)
    flashseek_embedding_f32(const EmbeddingParams p) {
    if (blockIdx.x >= p.n_ids) {
        return;
    }
    const unsigned id = p.ids[blockIdx.x];
    // The host checked every id; this only keeps a bad one from reading past the table.
    if (id >= p.vocab) {
        return;
    }
    const float* src = p.table + static_cast<size_t>(id) * p.cols;
    float* dst = p.out + static_cast<size_t>(blockIdx.x) * p.cols;
    for (unsigned c = threadIdx.x; c < p.cols; c += FLASHSEEK_EMBEDDING_THREADS) {
        dst[c] = src[c];
    }
}
