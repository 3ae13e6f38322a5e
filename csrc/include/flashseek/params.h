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

// The Hopper FP8 GEMM (csrc/sm90/gemm/fp8_gemm.cu): fp8_gemm's product (same a, a_scales, b,
// b_scales and out as GemmParams), with a and b read by TMA through two tensor maps the kernels
// take before these params (a: [m, k] bytes, b: [n, k] bytes, boxes of 128 columns by the
// tile's rows, 128B swizzle, zero fill past the edges). One kernel per tile shape,
// `flashseek_fp8_gemm_wgmma_m<block_m>n<block_n>_f32`, persistent over the tiles; the tile math
// is in csrc/sm90/gemm/fp8_gemm.cuh. m, n below 2^31, k a multiple of 16 (TMA row strides).
typedef struct Fp8GemmWgmmaParams {
    const float* a_scales;
    const float* b_scales;
    float* out;
    unsigned int m;
    unsigned int n;
    unsigned int k;
} Fp8GemmWgmmaParams;

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
// How a paged cache a kernel reads is stored (src/backend/mod.rs's CacheFormat).
#define FLASHSEEK_CACHE_F32 0
#define FLASHSEEK_CACHE_FP8 1
#define FLASHSEEK_CACHE_BF16 2

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
    // FLASHSEEK_CACHE_F32: the keys are `cache`; otherwise `cache_bytes` holds them, as an FP8
    // index cache (kv_layout.cuh's IndexFp8 of `dim`) or bf16 rows of `dim`.
    const unsigned char* cache_bytes;
    unsigned int cache_format;
} IndexerParams;

// The Hopper lightning indexer (csrc/sm90/indexer/indexer_{logits,topk}_fp8.cu; index math in
// indexer_fast.cuh): FP8 queries (e4m3 codes [rows, heads, FLASHSEEK_INDEXER_FP8_DIM], one f32
// scale per head row) against the FP8 index key cache (kv_layout.cuh's IndexFp8 at dim 128,
// pages of 64 positions = the block tables' blocks). Both kernels run over the n_rows list
// entries rows[0..n_rows] of one chunk (indices into pos, seq, q, q_scales, weights and out);
// entry r owns logits[r * stride ..][0..stride) and hist[r * FLASHSEEK_INDEXER_FP8_BINS ..].
// - indexer_logits_fp8: the entries come in n_groups groups, group g = entries groups[g] ..
//   groups[g + 1] (1 or 2 rows of one sequence); group g's CTAs are cta_start[g] ..
//   cta_start[g + 1], each scoring pages_per_split of the group's pages. logits[r, t] =
//   k_scale(t) * sum_h weights[i, h] * weight_scale * q_scales[i, h] * max(q8[i, h] . k8(t), 0)
//   for t <= pos[i], -inf for the other positions of the pages the group reads; hist[r, b]
//   counts the row's scores whose order key's top bits are b (the host zeroes it first).
// - indexer_topk_fp8: out[i, 0..k] = the k positions of the largest logits of entry r,
//   ascending, ties to the earlier position (the simple indexer_topk's selection); a row with
//   pos[i] + 1 <= k gets 0..=pos[i] then -1s without reading logits. One CTA per entry.
#define FLASHSEEK_INDEXER_FP8_DIM 128
#define FLASHSEEK_INDEXER_FP8_HEADS 64
#define FLASHSEEK_INDEXER_FP8_BINS 2048
// Threads and dynamic shared memory of the two kernels (indexer_fast.cuh's, checked there): the
// top-k's grows by 8 bytes per 32 positions of its rows, up to the 227 KB a CTA may have.
#define FLASHSEEK_INDEXER_FP8_THREADS 384
#define FLASHSEEK_INDEXER_FP8_TOPK_THREADS 512
#define FLASHSEEK_INDEXER_FP8_LOGITS_SMEM 101504
#define FLASHSEEK_INDEXER_FP8_TOPK_SMEM 73984
#define FLASHSEEK_INDEXER_FP8_MAX_SMEM 232448
typedef struct IndexerFp8Params {
    const unsigned char* q;
    const float* q_scales;
    const float* weights;
    const unsigned char* cache;
    const unsigned int* blocks;
    const unsigned int* starts;
    const unsigned int* pos;
    const unsigned int* seq;
    const unsigned int* rows;
    const unsigned int* groups;
    const unsigned int* cta_start;
    float* logits;
    unsigned int* hist;
    int* out;
    unsigned int n_rows;
    unsigned int n_groups;
    unsigned int pages_per_split;
    unsigned int stride;
    unsigned int heads;
    unsigned int k;
    float weight_scale;
} IndexerFp8Params;

// ---- The MLA family (csrc/sm90/mla/): the paged latent cache, absorption, attention ----

// Threads per block of kv_copy (one block per copied row).
#define FLASHSEEK_KV_COPY_THREADS 128

// Row copies between packed rows and the paged cache (kv_copy.cu): for i < count,
//   dst[pairs[2i + 1] * dst_stride + dst_col + c] = src[pairs[2i] * src_stride + src_col + c], c < n.
// kv_store copies step rows to cache slots (the host keeps only the last row written to a slot,
// so no two pairs share a destination row); kv_gather copies cache slots to packed rows.
typedef struct KvCopyParams {
    const float* src;
    float* dst;
    const unsigned* pairs;
    unsigned count;
    unsigned n;
    unsigned src_stride;
    unsigned src_col;
    unsigned dst_stride;
    unsigned dst_col;
} KvCopyParams;

// The packed caches (kv_pack.cu; layouts of common/kv_layout.cuh), one block per pair of `pairs`:
// - kv_pack: pair i = (step row r, cache row slot): row r of `head` (head_stride wide, its first
//   `nope` values) then columns tail_col..tail_col + rope of row r of `tail` into the slot.
//   FP8 latent: `nope` quantized (power-of-two scales), the rope key in bf16; FP8 index: `nope`
//   (the key) quantized, scales ue8m0 or exact; bf16: nope + rope values rounded to bf16. The
//   host keeps only the last pair of a slot, so no two blocks write the same row.
// - kv_unpack: pair i = (cache row slot, destination row d): row d of `dst` (dst_stride wide) =
//   decoded columns col..col + n of the slot (a bf16 row is nope + rope wide).
#define FLASHSEEK_KV_PACK_THREADS 128
#define FLASHSEEK_KV_LATENT_FP8 0
#define FLASHSEEK_KV_INDEX_FP8 1
#define FLASHSEEK_KV_BF16 2
typedef struct KvPackParams {
    const float* head;
    const float* tail;
    unsigned char* cache;
    float* dst;
    const unsigned* pairs;
    unsigned count;
    unsigned layout;
    unsigned nope;
    unsigned rope;
    unsigned ue8m0;
    unsigned head_stride;
    unsigned tail_stride;
    unsigned tail_col;
    unsigned dst_stride;
    unsigned col;
    unsigned n;
} KvPackParams;

// Formats of a linear weight read in place (kv_b in absorb.cu), as CudaLinear holds them.
#define FLASHSEEK_WEIGHT_F32 0
#define FLASHSEEK_WEIGHT_BF16 1
#define FLASHSEEK_WEIGHT_F16 2
#define FLASHSEEK_WEIGHT_E4M3 3

// Each absorb block computes a FLASHSEEK_MLA_ABSORB_TILE-square tile of one head's product.
#define FLASHSEEK_MLA_ABSORB_TILE 64
#define FLASHSEEK_MLA_ABSORB_THREADS 256

// kv_b ([heads * (nope + v), kv_lora], `format`; e4m3 codes with one scale per 128x128 block
// in w_scales) absorbed per head h into (absorb.cu):
// - absorb_q:   out[i, h, :kv_lora] = x[i, h, :nope] . W[h (nope + v) + n, c] over n, and
//               out[i, h, kv_lora:] = x[i, h, nope:] (the rotary part, copied);
//               x rows of heads * (nope + rope), out rows of heads * (kv_lora + rope).
// - absorb_out: out[i, h, j] = x[i, h, :] . W[h (nope + v) + nope + j, :]; x rows of
//               heads * kv_lora, out rows of heads * v.
// Blocks are numbered head-major, then tiles_m x tiles_n tiles of 64 rows by 64 columns.
typedef struct MlaAbsorbParams {
    const float* x;
    const void* w;
    const float* w_scales;
    float* out;
    unsigned rows;
    unsigned heads;
    unsigned nope;
    unsigned rope;
    unsigned v;
    unsigned kv_lora;
    unsigned format;
    unsigned tiles_m;
    unsigned tiles_n;
} MlaAbsorbParams;

// Keys per step of the attention kernels: a tile of keys scored, then folded into the online
// softmax at once.
#define FLASHSEEK_MLA_TILE 16
// mla_decode: one warp per head, FLASHSEEK_MLA_DECODE_HEADS heads per block, the latent row
// (kv_lora + rope values) held across a warp's lanes, so at most FLASHSEEK_MLA_MAX_LATENT wide.
#define FLASHSEEK_MLA_DECODE_HEADS 8
#define FLASHSEEK_MLA_DECODE_THREADS 256
#define FLASHSEEK_MLA_MAX_LATENT 576
// Splits of a query's keys at most, and the combine kernel's threads (one block per row, head).
#define FLASHSEEK_MLA_MAX_SPLITS 64
#define FLASHSEEK_MLA_COMBINE_THREADS 128

// Decode attention of absorbed queries over the paged latent cache (decode.cu). Query row i
// (q: rows of heads * latent) is at position meta[i] of sequence meta[rows + i]; the block
// tables follow: starts (n_starts values) at meta + 2 rows, then blocks (n_blocks values).
// Position t of sequence s lives in cache row blocks[starts[s] + t / block_size] * block_size
// + t % block_size (cache: rows of `latent`). Row i attends to positions 0..=pos, or (topk not
// null) to the entries t of topk row i (topk_cols wide) with 0 <= t <= pos, duplicates counted
// again. The keys (positions or top-k entries) are cut into `splits` chunks of `chunk`; one
// block per (row, group of 8 heads, split), numbered row-major. With one split the block writes
// out (rows of heads * kv_lora): per head the softmax-weighted latent, zeros where no key is
// valid. Otherwise it writes its partials: part_stat[(row, head, split)] = (max, sum, keys) and
// part_acc[(row, head, split), :kv_lora], and mla_decode_combine (one block per row and head)
// merges the splits into out.
typedef struct MlaDecodeParams {
    const float* q;
    const float* cache;
    const unsigned* meta;
    const int* topk;
    float* out;
    float* part_acc;
    float* part_stat;
    unsigned long long cache_rows;
    unsigned rows;
    unsigned heads;
    unsigned kv_lora;
    unsigned latent;
    unsigned block_size;
    unsigned n_starts;
    unsigned n_blocks;
    unsigned topk_cols;
    unsigned splits;
    unsigned chunk;
    float scale;
    // FLASHSEEK_CACHE_F32: the cache is `cache`; otherwise `cache_bytes` holds it, in the FP8
    // latent layout (kv_layout.cuh's LatentFp8 of kv_lora and latent - kv_lora) or as bf16 rows
    // of latent.
    const unsigned char* cache_bytes;
    unsigned cache_format;
} MlaDecodeParams;

// The Hopper decode over the FP8 latent cache or the bf16 cache (decode_fast.cu; index math in
// decode_fast.cuh): DeepSeek-V3.2's latent only (512 NoPE + 64 RoPE, kv_layout.cuh's 656-byte
// tokens, or rows of 576 bf16), 64 heads per CTA, 384 threads (two math warpgroups and a
// loading one), this much dynamic shared memory.
#define FLASHSEEK_MLA_FP8_HEADS 64
#define FLASHSEEK_MLA_FP8_THREADS 384
#define FLASHSEEK_MLA_FP8_SMEM 231984
// Keys per tile; a work item's key range is cut into tiles of this many.
#define FLASHSEEK_MLA_FP8_TILE 64

// Decode attention of absorbed queries (q: rows of heads * 576 f32) over the FP8 latent cache
// (`slots` tokens of 656 bytes). meta holds pos[rows], seq[rows], then the block table's
// n_starts starts and n_blocks blocks, as MlaDecodeParams's. items: n_items work items of 4 u32
// (query row, first key, end key, and the item's workspace slot, or 0xffffffff where the item is
// its row's only one); keys are positions 0..=pos, or (topk not null) entries of topk row `row`
// (topk_cols wide), valid where 0 <= t <= pos. flashseek_mla_decode_fp8_f32: one CTA per (item,
// group of 64 heads), head group fastest. A row's only item writes out (rows of heads * 512);
// a split item writes part_stat[(slot, head)] = (max, sum, keys) and part_acc[(slot, head), :512].
// flashseek_mla_decode_fp8_combine_f32 (FLASHSEEK_MLA_COMBINE_THREADS threads, one block per
// (merge, head), head fastest) merges them: merges holds n_merges entries of 3 u32 (row, first
// slot, slots; at most FLASHSEEK_MLA_MAX_SPLITS). flashseek_mla_decode_bf16_f32 is the same
// over the bf16 cache (`slots` rows of 576 bf16, 1152 bytes), with the same combine.
typedef struct MlaDecodeFp8Params {
    const float* q;
    const unsigned char* cache;
    const unsigned* meta;
    const unsigned* items;
    const unsigned* merges;
    const int* topk;
    float* out;
    float* part_acc;
    float* part_stat;
    unsigned long long slots;
    unsigned rows;
    unsigned heads;
    unsigned block_size;
    unsigned n_starts;
    unsigned n_blocks;
    unsigned topk_cols;
    unsigned n_items;
    unsigned n_merges;
    float scale;
} MlaDecodeFp8Params;

// mla_prefill: one warp per query row, FLASHSEEK_MLA_PREFILL_ROWS rows of one sequence and one
// head per block; a head's query (nope + rope) and value (v) each at most 256 wide.
#define FLASHSEEK_MLA_PREFILL_ROWS 8
#define FLASHSEEK_MLA_PREFILL_THREADS 256
#define FLASHSEEK_MLA_PREFILL_MAX_QK 256
#define FLASHSEEK_MLA_PREFILL_MAX_V 256

// Prefill attention over expanded keys and values (prefill.cu): q rows of heads * (nope + rope),
// kv rows of heads * (nope + v) (per head the no-position key, then the value), kpe rows of
// rope (the shared rotary key), out rows of heads * v. Item k (items[4k .. 4k + 4]) is up to 8
// query rows: the first one, how many, the kv row of position 0 of their sequence, and the
// position of the first row; row j of the item at position pos attends to kv rows
// kv_start + t for t in 0..=pos, or (topk not null) for the entries t of its topk row
// (topk_cols wide, indexed by query row) with 0 <= t <= pos. One block per (item, head),
// head fastest.
typedef struct MlaPrefillParams {
    const float* q;
    const float* kv;
    const float* kpe;
    const unsigned* items;
    const int* topk;
    float* out;
    unsigned n_items;
    unsigned heads;
    unsigned nope;
    unsigned rope;
    unsigned v;
    unsigned topk_cols;
    float scale;
} MlaPrefillParams;

// Rows (one warp each) per block of the route kernel, and the most experts it takes: each warp
// keeps a row's biased scores and group scores in shared memory.
#define FLASHSEEK_ROUTE_THREADS 128
#define FLASHSEEK_ROUTE_MAX_EXPERTS 512

// DeepSeek's `noaux_tc` router (csrc/sm90/moe/route.cu), over `rows` rows of `n_experts` router
// logits: sigmoid scores, plus bias for the choice; groups of n_experts / n_group consecutive
// experts ranked by the sum of their two best biased scores, the best topk_group kept; the
// top_k best biased scores among the kept groups' experts, best first, into idx[row, :] with
// their unbiased scores, divided by their sum (+ 1e-20) if normalize != 0, times scaling, into
// weights[row, :]. Ties go to the lower index, as the CPU's scans.
typedef struct RouteParams {
    const float* logits;
    const float* bias;
    int* idx;
    float* weights;
    unsigned int rows;
    unsigned int n_experts;
    unsigned int n_group;
    unsigned int topk_group;
    unsigned int top_k;
    unsigned int normalize;
    float scaling;
} RouteParams;

// Threads per block of the MoE bookkeeping kernels (count, scatter, combine: grid-stride loops),
// and of the offsets kernel (one block).
#define FLASHSEEK_MOE_THREADS 256
#define FLASHSEEK_MOE_SCAN_THREADS 1024

// The routing of one moe_experts call (csrc/sm90/moe/moe.cu): n_assign = rows * top_k
// assignments, assignment a = token * top_k + slot going to expert idx[a]; ids outside
// 0 .. n_experts are skipped here (the combine kernel makes their tokens NaN).
// - moe_count:   counts[e] += the assignments of expert e (counts zeroed before).
// - moe_offsets: one block: offsets[e] = the exclusive prefix sum of counts (offsets[n_experts]
//                = their total), cursor[e] = offsets[e], tile_starts[e] = the exclusive prefix
//                sum of ceil(counts / FLASHSEEK_GEMM_TILE) (tile_starts[n_experts] = all tiles).
// - moe_scatter: each assignment's id a into sorted[cursor[e]++]: expert e's assignments in
//                sorted[offsets[e] .. offsets[e + 1]], in no particular order (the GEMMs' results
//                do not depend on it).
typedef struct MoeSortParams {
    const int* idx;
    unsigned int* counts;
    unsigned int* offsets;
    unsigned int* cursor;
    unsigned int* tile_starts;
    unsigned int* sorted;
    unsigned int n_assign;
    unsigned int n_experts;
} MoeSortParams;

// Assignments at most for the masked layout: each expert one tile of rows.
#define FLASHSEEK_MOE_MASKED_MAX FLASHSEEK_GEMM_TILE

// The grouped GEMMs of the routed experts (csrc/sm90/moe/moe_gemm.cu): for each of n_mats
// matrices z (gate and up: 2; down: 1) and each assignment a of expert e,
// out[z][a, :] = a_row(a) . B_z,e^T, where a_row(a) is row a / a_row_div of a (f32, or e4m3
// codes with scales [.., ceil(k / 128)] in a_scales: the FP8 kernel) and B_z,e the [n, k] matrix
// at b[z] + e * b_stride elements (FP8: its block scales at b_scales[z] + e * b_scale_stride).
// Blocks are numbered ((z * m_tiles) + mt) * ceil(n / 64) + nt. An m tile is a list of at most 64
// assignments of one expert:
// - masked (n_assign <= FLASHSEEK_MOE_MASKED_MAX): m tile e is expert e's assignments, found in
//   idx; m_tiles = n_experts.
// - contiguous: m tile mt < tile_starts[n_experts] is the (mt - tile_starts[e])-th run of 64 of
//   expert e's sorted assignments (moe_offsets, moe_scatter); m_tiles bounds the tiles, later
//   blocks leave.
typedef struct MoeGemmParams {
    const void* a;
    const float* a_scales;
    const void* b[2];
    const float* b_scales[2];
    float* out[2];
    const int* idx;
    const unsigned int* sorted;
    const unsigned int* offsets;
    const unsigned int* tile_starts;
    unsigned long long b_stride;
    unsigned long long b_scale_stride;
    unsigned int n_experts;
    unsigned int n_assign;
    unsigned int m_tiles;
    unsigned int n;
    unsigned int k;
    unsigned int a_row_div;
    unsigned int masked;
} MoeGemmParams;

// The grouped Hopper FP8 GEMM of the routed experts, contiguous layout (csrc/sm90/gemm/fp8_gemm.cu,
// `flashseek_moe_gemm_wgmma_m64n<block_n>_f32`), on the sort of moe.cu (offsets, tile_starts,
// sorted as MoeSortParams leaves them) and the padded activations moe_permute builds: for every
// m tile mt < tile_starts[n_experts] of expert e and every column c < n,
// out row (padded row 64 mt + r, or with scatter != 0 the assignment sorted[pos] it holds; padding
// rows are not written) = A[64 mt + r] . B_e[c]^T, A read by TMA from the padded codes
// [64 m_tiles, k] (a_scales [64 m_tiles, ceil(k / 128)]) and B from the stack of all experts'
// codes [n_experts * n, k] (expert e's block scales at b_scales + e * b_scale_stride). m_tiles
// bounds tile_starts[n_experts]; n_experts * n is below 2^31; k a multiple of 16.
// The masked kernels (`flashseek_moe_gemm_wgmma_masked_m64n<block_n>_f32`) read moe_mask's
// buffer `slots` instead of the sort (fp8_gemm.cuh, "masked layout"): m tile mt < slots[0] is
// slot mt, m_tiles the number of slots; offsets, tile_starts and sorted are unused.
typedef struct MoeGemmWgmmaParams {
    const float* a_scales;
    const float* b_scales;
    float* out;
    const unsigned int* offsets;
    const unsigned int* tile_starts;
    const unsigned int* sorted;
    const unsigned int* slots;
    unsigned long long b_scale_stride;
    unsigned int n_experts;
    unsigned int m_tiles;
    unsigned int n;
    unsigned int k;
    unsigned int scatter;
} MoeGemmWgmmaParams;

// Threads per block of moe_permute (a warp per padded row).
#define FLASHSEEK_MOE_PERMUTE_THREADS 256

// moe_permute (csrc/sm90/moe/moe.cu): the grouped GEMM's padded activations. Padded row
// p < 64 m_tiles of m tile mt = p / 64 < tile_starts[n_experts] of expert e gets, where it holds
// assignment a (see MoeGemmWgmmaParams), row a / a_row_div of codes [.., k] and of scales
// [.., ceil(k / 128)]; other rows get zero codes and zero scales. k is a multiple of 16. With
// slots set (the masked layout), row p holds assignment a where masked_row_source says so.
typedef struct MoePermuteParams {
    const unsigned char* codes;
    const float* scales;
    unsigned char* out_codes;
    float* out_scales;
    const unsigned int* offsets;
    const unsigned int* tile_starts;
    const unsigned int* sorted;
    const unsigned int* slots;
    unsigned int n_experts;
    unsigned int m_tiles;
    unsigned int k;
    unsigned int a_row_div;
} MoePermuteParams;

// moe_mask (csrc/sm90/moe/moe.cu): the masked layout of the Hopper grouped GEMM (fp8_gemm.cuh,
// "masked layout") from the n_assign <= FLASHSEEK_MOE_MASKED_MAX ids of idx, into slots
// [masked_words(min(n_assign, n_experts))]. One block of FLASHSEEK_MOE_MASKED_MAX threads.
typedef struct MoeMaskParams {
    const int* idx;
    unsigned int* slots;
    unsigned int n_assign;
    unsigned int n_experts;
} MoeMaskParams;

// out[t, c] = sum over slots j ascending of weights[t, j] * y[t * top_k + j, c], rounded step by
// step as the CPU sums (csrc/sm90/moe/moe.cu); 0 when top_k is 0, NaN across the row when one of
// token t's ids is outside 0 .. n_experts. n = rows * cols.
typedef struct MoeCombineParams {
    const float* y;
    const int* idx;
    const float* weights;
    float* out;
    unsigned long long n;
    unsigned int cols;
    unsigned int top_k;
    unsigned int n_experts;
} MoeCombineParams;
