// Kernel parameters, one plain C struct per kernel family, passed to each kernel by value.
// build.rs turns this header into Rust (bindgen, OUT_DIR/params.rs), so the host fills the very
// layout the device reads: keep it C (no templates, no CUDA types), pointers are device pointers.
#pragma once

// Threads per block of the norm kernels (one block per row); the host launches with it.
#define FLASHSEEK_NORM_THREADS 256

// The norm family (csrc/sm90/norm/norm.cu), over `rows` rows of `cols` values:
// - rms_norm:     out[r, c] = weight[c] * (x[r, c] * rsqrt(mean_c(x[r, :]^2) + eps))
// - add_rms_norm: x[r, :] += delta[r, :] in place, then out = rms_norm(x)
// - layer_norm:   x[r, c] = ((x[r, c] - mean) * rsqrt(var + eps)) * weight[c] + bias[c], in place
typedef struct NormParams {
    // Row r starts at x + r * x_stride: for rms_norm x may be a column window of wider rows
    // (it is only read then); add_rms_norm and layer_norm write it and pass x_stride = cols.
    float* x;
    // add_rms_norm only: rows of `cols` values, packed.
    const float* delta;
    const float* weight;
    // layer_norm only.
    const float* bias;
    // rms_norm and add_rms_norm: rows of `cols` values, packed.
    float* out;
    unsigned int rows;
    unsigned int cols;
    unsigned int x_stride;
    float eps;
} NormParams;

// Threads per block of the rope kernels (one block per row).
#define FLASHSEEK_ROPE_THREADS 128

// Rotary embedding in place (csrc/sm90/rope/rope.cu): in each `cols`-wide row of x, heads
// h < n_heads have `dim` rotary columns at h * head_stride + offset, rotated by the angles of
// row r of cos_sin (dim/2 cosines, then dim/2 sines).
typedef struct RopeParams {
    float* x;
    const float* cos_sin;
    unsigned int rows;
    unsigned int cols;
    unsigned int n_heads;
    unsigned int head_stride;
    unsigned int offset;
    unsigned int dim;
} RopeParams;

// Threads per block of the elementwise kernels.
#define FLASHSEEK_ELEMENTWISE_THREADS 256

// Elementwise ops over n values (csrc/sm90/elementwise/elementwise.cu):
// - silu_mul:   acc = silu(acc) * x
// - add_assign: acc += x
typedef struct ElementwiseParams {
    float* acc;
    const float* x;
    unsigned long long n;
} ElementwiseParams;

// Values per FP8 scale group: one warp rounds one group, 4 values a lane.
#define FLASHSEEK_FP8_GROUP 128
// Threads per block of the fp8_round kernel (a warp per group).
#define FLASHSEEK_FP8_ROUND_THREADS 128
// Threads per block of the hadamard kernel (one block per segment).
#define FLASHSEEK_HADAMARD_THREADS 256

// The quantization family, in place over `segments` consecutive segments of `width` values
// (csrc/sm90/quant/quant.cu):
// - fp8_round: each segment cut into groups of FLASHSEEK_FP8_GROUP from its left (the last may be
//   partial), each rounded through e4m3 with a scale amax/448 (a power of two if ue8m0 != 0);
//   `groups` is the total number of groups, segments * ceil(width / FLASHSEEK_FP8_GROUP).
// - hadamard: each segment (width a power of two) through the Walsh-Hadamard transform, then
//   multiplied by `scale` (1/sqrt(width), computed by the host as the CPU backend does).
typedef struct QuantParams {
    float* x;
    unsigned int segments;
    unsigned int width;
    unsigned int groups;
    unsigned int ue8m0;
    float scale;
} QuantParams;

// Threads per block of the embedding kernel (one block per id).
#define FLASHSEEK_EMBEDDING_THREADS 256

// out[i, :] = table[ids[i], :] over n_ids ids, rows of `cols` values decoded to f32
// (embedding.cu): one kernel per table format (f32, bf16, f16, e4m3 codes with one scale per
// 128x128 block in `scales`, rows of ceil(cols / 128)). Ids at or past `vocab` are skipped on
// the device: the host rejects them before launching.
typedef struct EmbeddingParams {
    const void* table;
    const float* scales;
    const unsigned int* ids;
    float* out;
    unsigned int n_ids;
    unsigned int cols;
    unsigned int vocab;
} EmbeddingParams;

// Threads per block of the argmax kernel (one block per row).
#define FLASHSEEK_ARGMAX_THREADS 256

// out[r] = the index of the largest value of row r of x (rows of `cols` values), as the CPU
// backend scans: the first on ties, NaNs never chosen unless the row starts with one (then 0).
typedef struct ArgmaxParams {
    const float* x;
    unsigned int* out;
    unsigned int rows;
    unsigned int cols;
} ArgmaxParams;

// Threads per block of the act_quant kernel (a warp per 1x128 group).
#define FLASHSEEK_ACT_QUANT_THREADS 128

// DeepSeek's activation quantization (csrc/sm90/gemm/act_quant.cu): each row of x (`cols`
// values) cut into groups of FLASHSEEK_FP8_GROUP from its left (the last may be partial), each
// with the scale amax/448 (a power of two if ue8m0 != 0) in scales[row, group] (rows of
// ceil(cols / FLASHSEEK_FP8_GROUP)) and the e4m3fn codes of x / scale in codes[row, col].
// `groups` is rows * ceil(cols / FLASHSEEK_FP8_GROUP), which sets the number of rows.
typedef struct ActQuantParams {
    const float* x;
    unsigned char* codes;
    float* scales;
    unsigned int cols;
    unsigned int groups;
    unsigned int ue8m0;
} ActQuantParams;

// Each GEMM block computes a FLASHSEEK_GEMM_TILE x FLASHSEEK_GEMM_TILE tile of out (rows of a
// by rows of b) with FLASHSEEK_GEMM_THREADS threads; tiles are numbered row-major over out.
#define FLASHSEEK_GEMM_TILE 64
#define FLASHSEEK_GEMM_THREADS 256

// out[m, n] = a[m, k] . b[n, k]^T in f32 (csrc/sm90/gemm/gemm.cu), out packed [m, n]:
// - fp8_gemm:   a holds e4m3fn codes with one scale per row and 128 columns in a_scales
//               ([m, ceil(k / 128)]); b holds e4m3fn codes with one scale per 128x128 block in
//               b_scales ([ceil(n / 128), ceil(k / 128)]). Per 128-wide block of k, the codes'
//               dot product (f32) times the a scale times the b scale, summed over the blocks.
// - gemm_w<T>:  a is f32, b is f32, bf16 or f16 (bits), or e4m3fn codes each times its block's
//               scale in b_scales (then rounded to f32, as the CPU dequantizes); a_scales unused.
// m, n and k are below 2^31 (the host checks), so tile and k offsets never wrap.
typedef struct GemmParams {
    const void* a;
    const float* a_scales;
    const void* b;
    const float* b_scales;
    float* out;
    unsigned int m;
    unsigned int n;
    unsigned int k;
} GemmParams;

// The lightning indexer (csrc/sm90/indexer/indexer.cu). Logits: one block of
// FLASHSEEK_INDEXER_THREADS threads scores FLASHSEEK_INDEXER_POSITIONS consecutive positions of
// one query row; keys are at most FLASHSEEK_INDEXER_MAX_DIM wide (held in registers).
#define FLASHSEEK_INDEXER_THREADS 256
#define FLASHSEEK_INDEXER_POSITIONS 128
#define FLASHSEEK_INDEXER_MAX_DIM 128
// Top-k: one block of FLASHSEEK_INDEXER_TOPK_THREADS threads per query row.
#define FLASHSEEK_INDEXER_TOPK_THREADS 512

// Both indexer kernels run over the `n_rows` query rows listed in rows[0..n_rows] (indices into
// pos, seq, q, weights and out); list entry r owns logits[r * stride ..][0..=pos]. Query row i
// sits at position pos[i] (below 2^31 - 1) of sequence seq[i], whose position t is cache row
// blocks[starts[seq[i]] + t / block_size] * block_size + t % block_size (the host checks that
// every one the kernels read exists and lies in the cache).
// - indexer_logits: logits[r, t] = sum over heads h, in order, of
//   (weights[i, h] * weight_scale) * max(q[i, h, :] . cache[slot(t), :], 0) for t <= pos[i];
//   the grid is n_rows * tiles blocks, tiles = ceil(stride / FLASHSEEK_INDEXER_POSITIONS).
// - indexer_topk: out[i, 0..k] = the k positions of the largest logits of row r, ascending, ties
//   to the earlier position; a row with pos[i] + 1 <= k gets 0..=pos[i] then -1s without reading
//   logits (which may then be null). One block per list entry.
typedef struct IndexerParams {
    const float* q;
    const float* weights;
    const float* cache;
    const unsigned int* blocks;
    const unsigned int* starts;
    const unsigned int* pos;
    const unsigned int* seq;
    const unsigned int* rows;
    float* logits;
    int* out;
    unsigned int n_rows;
    unsigned int tiles;
    unsigned int stride;
    unsigned int heads;
    unsigned int dim;
    unsigned int block_size;
    unsigned int k;
    float weight_scale;
} IndexerParams;
