// Embedding lookup: row gather from the table in its checkpoint format, decoded to f32 as the
// CPU backend's `embedding` decodes it (src/backend/cpu/linear.rs, `dequant_rows`): f32 copied,
// bf16 and f16 widened (exact), e4m3 codes times their 128x128 block's scale rounded to f32.
// Bit for bit the CPU's values. One block per id.
#include <cuda_fp16.h>

#include "flashseek/params.h"
#include "../../common/fp8.cuh"

namespace {

struct DecodeF32 {
    __device__ float operator()(const EmbeddingParams& p, size_t i, unsigned, unsigned) const {
        return static_cast<const float*>(p.table)[i];
    }
};

// bf16 is the top half of an f32.
struct DecodeBf16 {
    __device__ float operator()(const EmbeddingParams& p, size_t i, unsigned, unsigned) const {
        return __uint_as_float(static_cast<unsigned>(static_cast<const unsigned short*>(p.table)[i]) << 16);
    }
};

struct DecodeF16 {
    __device__ float operator()(const EmbeddingParams& p, size_t i, unsigned, unsigned) const {
        return __half2float(__ushort_as_half(static_cast<const unsigned short*>(p.table)[i]));
    }
};

struct DecodeE4m3 {
    __device__ float operator()(const EmbeddingParams& p, size_t i, unsigned row, unsigned col) const {
        const unsigned blocks = (p.cols + FLASHSEEK_FP8_GROUP - 1) / FLASHSEEK_FP8_GROUP;
        const float s = p.scales[static_cast<size_t>(row / FLASHSEEK_FP8_GROUP) * blocks + col / FLASHSEEK_FP8_GROUP];
        return __fmul_rn(flashseek::e4m3_to_f32(static_cast<const unsigned char*>(p.table)[i]), s);
    }
};

template <class Decode>
__device__ __forceinline__ void gather(const EmbeddingParams& p, const Decode& decode) {
    if (blockIdx.x >= p.n_ids) {
        return;
    }
    const unsigned id = p.ids[blockIdx.x];
    // The host checked every id; this only keeps a bad one from reading past the table.
    if (id >= p.vocab) {
        return;
    }
    const size_t src = static_cast<size_t>(id) * p.cols;
    float* dst = p.out + static_cast<size_t>(blockIdx.x) * p.cols;
    for (unsigned c = threadIdx.x; c < p.cols; c += FLASHSEEK_EMBEDDING_THREADS) {
        dst[c] = decode(p, src + c, id, c);
    }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(FLASHSEEK_EMBEDDING_THREADS)
    flashseek_embedding_f32(const EmbeddingParams p) {
    gather(p, DecodeF32{});
}

extern "C" __global__ void __launch_bounds__(FLASHSEEK_EMBEDDING_THREADS)
    flashseek_embedding_wbf16_f32(const EmbeddingParams p) {
    gather(p, DecodeBf16{});
}

extern "C" __global__ void __launch_bounds__(FLASHSEEK_EMBEDDING_THREADS)
    flashseek_embedding_wf16_f32(const EmbeddingParams p) {
    gather(p, DecodeF16{});
}

extern "C" __global__ void __launch_bounds__(FLASHSEEK_EMBEDDING_THREADS)
    flashseek_embedding_we4m3_f32(const EmbeddingParams p) {
    gather(p, DecodeE4m3{});
}
