// MLA's absorption of kv_b, per head a small GEMM against one half of the weight, read in place
// in its checkpoint format: the CPU backend's `absorb_q` and `absorb_out`
// (src/backend/cpu/attention.rs), which dequantize a head's rows to f32 (FP8: code times block
// scale, rounded to f32) and multiply in f32.
//
// Per head h, out_h[m, N] = a_h[m, K] . b_h[K, N]:
// - absorb_q:   a_h = q_nope of head h (K = nope), b_h(k, n) = W[h (nope + v) + k, n]
//               (N = kv_lora); the blocks of the first column tile also copy q_rope.
// - absorb_out: a_h = the latent of head h (K = kv_lora), b_h(k, n) = W[h (nope + v) + nope + n, k]
//               (N = v).
// Each block computes a 64x64 tile of one head's product with the GEMM family's SIMT tile
// (csrc/sm90/gemm/tile.cuh): 32 columns of K of a and b staged in shared memory as f32, k-major,
// each of the 16x16 threads accumulating 4x4 outputs with FMAs in k order.
//
// Numerics against the CPU: the same f32 products summed in another order (tests/cuda_mla.rs
// bounds the difference as it does the GEMMs').
#include <cuda_fp16.h>

#include "flashseek/params.h"
#include "../../common/fp8.cuh"
#include "../gemm/tile.cuh"

namespace {

namespace tile = flashseek::tile;
constexpr unsigned kBlock = FLASHSEEK_FP8_GROUP;
static_assert(FLASHSEEK_MLA_ABSORB_TILE == tile::kTile && FLASHSEEK_MLA_ABSORB_THREADS == tile::kThreads,
              "the launcher's tile and block are the GEMM tile's");

// Element (row, col) of kv_b ([rows, kv_lora]) as f32: f32 as is, bf16 and f16 widened
// exactly, e4m3 codes times their 128x128 block's scale rounded to f32 (the CPU's
// `decode_e4m3`). The format is uniform over the launch, so the switch never diverges.
__device__ __forceinline__ float weight_at(const MlaAbsorbParams& p, size_t row, unsigned col) {
    const size_t i = row * p.kv_lora + col;
    switch (p.format) {
        case FLASHSEEK_WEIGHT_F32:
            return static_cast<const float*>(p.w)[i];
        case FLASHSEEK_WEIGHT_BF16:
            return __uint_as_float(static_cast<unsigned>(static_cast<const unsigned short*>(p.w)[i]) << 16);
        case FLASHSEEK_WEIGHT_F16:
            return __half2float(__ushort_as_half(static_cast<const unsigned short*>(p.w)[i]));
        default: {
            const unsigned blocks = (p.kv_lora + kBlock - 1) / kBlock;
            const float s = p.w_scales[row / kBlock * blocks + col / kBlock];
            return __fmul_rn(flashseek::e4m3_to_f32(static_cast<const unsigned char*>(p.w)[i]), s);
        }
    }
}

template <bool kOut>
__device__ __forceinline__ void absorb(const MlaAbsorbParams& p) {
    const unsigned per_head = p.tiles_m * p.tiles_n;
    const unsigned h = blockIdx.x / per_head;
    // The host launches exactly heads * per_head blocks; this only guards the arithmetic.
    if (h >= p.heads) {
        return;
    }
    const unsigned m0 = blockIdx.x % per_head / p.tiles_n * tile::kTile;
    const unsigned tile_n = blockIdx.x % p.tiles_n;
    const unsigned n0 = tile_n * tile::kTile;
    const unsigned qk = p.nope + p.rope;
    const unsigned k_dim = kOut ? p.kv_lora : p.nope;
    const unsigned n_dim = kOut ? p.v : p.kv_lora;
    // Row strides and head offsets (in values) of x and out, and kv_b's first row of this head's half.
    const size_t a_head = kOut ? p.kv_lora : qk;
    const size_t a_stride = a_head * p.heads;
    const size_t out_head = kOut ? p.v : p.kv_lora + p.rope;
    const size_t out_stride = out_head * p.heads;
    const size_t w_row0 = static_cast<size_t>(h) * (p.nope + p.v) + (kOut ? p.nope : 0);
    const float* a = p.x + h * a_head;

    const tile::Span span{m0, p.rows, n0, n_dim, k_dim};
    __shared__ tile::Stage st;
    float acc[tile::kPer][tile::kPer] = {};
    for (unsigned k0 = 0; k0 < k_dim; k0 += tile::kStep) {
        tile::stage(st.a, m0, p.rows, k0, k_dim, [&](unsigned row, unsigned col) { return a[row * a_stride + col]; });
        // b: consecutive threads along the weight's rows in memory, k for absorb_out, n for
        // absorb_q.
        for (unsigned e = threadIdx.x; e < tile::kTile * tile::kStep; e += tile::kThreads) {
            const unsigned c = kOut ? e % tile::kStep : e / tile::kTile;
            const unsigned n = kOut ? e / tile::kStep : e % tile::kTile;
            const unsigned col = n0 + n;
            const unsigned k = k0 + c;
            float w = 0.0f;
            if (col < n_dim && k < k_dim) {
                w = kOut ? weight_at(p, w_row0 + col, k) : weight_at(p, w_row0 + k, col);
            }
            st.b[c][n] = w;
        }
        __syncthreads();
        tile::multiply(st, acc);
        // The next step overwrites the stage: every thread must be done reading it.
        __syncthreads();
    }
    float* out = p.out + h * out_head;
    tile::store(span, acc, [&](unsigned row) { return out + row * out_stride; });
    if (!kOut && tile_n == 0) {
        for (unsigned e = threadIdx.x; e < tile::kTile * p.rope; e += tile::kThreads) {
            const unsigned row = m0 + e / p.rope;
            const unsigned c = e % p.rope;
            if (row < p.rows) {
                out[row * out_stride + p.kv_lora + c] = a[row * a_stride + p.nope + c];
            }
        }
    }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(FLASHSEEK_MLA_ABSORB_THREADS) flashseek_absorb_q_f32(const MlaAbsorbParams p) {
    absorb<false>(p);
}

extern "C" __global__ void __launch_bounds__(FLASHSEEK_MLA_ABSORB_THREADS)
    flashseek_absorb_out_f32(const MlaAbsorbParams p) {
    absorb<true>(p);
}
