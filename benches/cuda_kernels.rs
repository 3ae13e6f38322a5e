//! The CUDA kernels at DeepSeek-V3.2's shapes, beside the device's own anchors measured in the
//! same run: device-to-device copy bandwidth and cuBLAS's bf16 GEMM rate (libcublas, loaded at
//! run time; "n/a" where it is not found). Prints a table at the end: time, TFLOP/s, GB/s, and
//! each as a fraction of its anchor. Without a GPU it says so and measures nothing (and fails
//! with `FLASHSEEK_REQUIRE_GPU=1`).
//!
//! `cargo bench --features cuda --bench cuda_kernels` (on a GPU machine: `scripts/gpu-check`).

mod common;

use std::time::{Duration, Instant};

use common::values;
use criterion::{BenchmarkId, Criterion};
use cudarc::cublas::{sys::cublasOperation_t, CudaBlas, Gemm, GemmConfig};
use cudarc::driver::CudaSlice;
use flashseek::backend::cuda::{CacheView, CudaDevice, CudaLinear, IndexerFp8Input, MoeLayout};
use flashseek::backend::{
    CacheFormat, HeadCols, HostExpert, MlaDims, Pages, PrefillSeq, Queries, RopeLayout, RouterParams,
};
use flashseek::fp8::ScaleFmt;
use flashseek::gemm_tiles::GemmTiles;
use flashseek::kv_layout::{IndexFp8, LatentFp8};
use flashseek::model::weights::{blocks, HostLinear, HostTensor};
use half::bf16;

/// (N, K) of DeepSeek-V3.2's projections: q_a with kv_a stacked (1536 + 576), q_b (128 heads x
/// 192), kv_b (128 x (128 + 128)), o_proj (K = 128 heads x 128), an expert's gate with up
/// stacked, an expert's down.
const GEMM_SHAPES: [(usize, usize); 6] =
    [(2112, 7168), (24576, 1536), (32768, 512), (7168, 16384), (4096, 7168), (7168, 2048)];
const GEMM_ROWS: [usize; 3] = [64, 128, 4096];
const HIDDEN: usize = 7168;
const VOCAB: usize = 129_280;

/// What one benchmark moves and computes, for the summary.
struct Entry {
    group: String,
    id: String,
    flops: f64,
    bytes: f64,
}

/// A random `[n, k]` FP8 weight (no NaN codes) with block scales of a real checkpoint's size.
fn fp8_weight(n: usize, k: usize) -> HostLinear {
    let codes: Vec<u8> = values(n * k, 11).iter().map(|v| ((v + 0.5) * 254.0) as u8 & 0xf7).collect();
    HostLinear {
        weight: HostTensor::from_e4m3("w", vec![n, k], codes),
        scale_inv: Some(vec![1.0 / 256.0; blocks(n) * blocks(k)]),
    }
}

fn bf16_weight(n: usize, k: usize) -> HostLinear {
    let v: Vec<bf16> = values(n * k, 13).into_iter().map(bf16::from_f32).collect();
    HostLinear { weight: HostTensor::from_bf16("w", vec![n, k], &v), scale_inv: None }
}

/// Criterion's timing of `launch` (which queues work): waits for the device around the batch.
fn bench(
    c: &mut Criterion,
    dev: &CudaDevice,
    entries: &mut Vec<Entry>,
    (group, id): (&str, String),
    (flops, bytes): (f64, f64),
    mut launch: impl FnMut(),
) {
    let mut g = c.benchmark_group(group);
    g.bench_function(BenchmarkId::from_parameter(&id), |b| {
        b.iter_custom(|iters| {
            dev.synchronize().expect("sync");
            let start = Instant::now();
            for _ in 0..iters {
                launch();
            }
            dev.synchronize().expect("a kernel failed");
            start.elapsed()
        })
    });
    g.finish();
    entries.push(Entry { group: group.to_string(), id, flops, bytes });
}

/// Device-to-device copy bandwidth (bytes read plus written per second), over 1 GiB.
fn copy_bandwidth(dev: &CudaDevice) -> f64 {
    let n = 1 << 28;
    let src = dev.zeros::<f32>(n).expect("alloc");
    let mut dst = dev.zeros::<f32>(n).expect("alloc");
    let mut time = |reps: u32| {
        dev.synchronize().expect("sync");
        let t = Instant::now();
        for _ in 0..reps {
            dev.copy(&src, 0, &mut dst, 0, n).expect("copy");
        }
        dev.synchronize().expect("sync");
        t.elapsed()
    };
    time(3);
    let reps = 20;
    (2 * n * 4) as f64 * f64::from(reps) / time(reps).as_secs_f64()
}

/// cuBLAS's bf16 GEMM rate at 8192^3 (f32 accumulation), FLOP/s; `None` without libcublas.
fn cublas_bf16_rate(dev: &CudaDevice) -> Option<f64> {
    // SAFETY: only tries to open the library by its usual names.
    if !unsafe { cudarc::cublas::sys::is_culib_present() } {
        return None;
    }
    let blas = CudaBlas::new(dev.stream().clone()).ok()?;
    let n = 8192;
    let a = dev.upload(&vec![bf16::from_f32(0.5); n * n]).ok()?;
    let mut c_buf: CudaSlice<bf16> = dev.zeros(n * n).ok()?;
    let cfg = GemmConfig {
        transa: cublasOperation_t::CUBLAS_OP_N,
        transb: cublasOperation_t::CUBLAS_OP_N,
        m: n as i32,
        n: n as i32,
        k: n as i32,
        alpha: bf16::ONE,
        lda: n as i32,
        ldb: n as i32,
        beta: bf16::ZERO,
        ldc: n as i32,
    };
    let mut run = |reps: u32| -> Option<Duration> {
        dev.synchronize().ok()?;
        let t = Instant::now();
        for _ in 0..reps {
            // SAFETY: a, b and c hold n*n values each, as the config says.
            unsafe { blas.gemm(cfg, &a, &a, &mut c_buf) }.ok()?;
        }
        dev.synchronize().ok()?;
        Some(t.elapsed())
    };
    run(3)?;
    let reps = 20;
    Some(2.0 * (n as f64).powi(3) * f64::from(reps) / run(reps)?.as_secs_f64())
}

fn gemm_benches(c: &mut Criterion, dev: &CudaDevice, entries: &mut Vec<Entry>) {
    for &(n, k) in &GEMM_SHAPES {
        let w = dev.load_linear(&fp8_weight(n, k)).expect("weight");
        let x = dev.upload(&values(4096 * k, 3)).expect("x");
        let mut out = dev.zeros::<f32>(4096 * n).expect("out");
        for &m in &GEMM_ROWS {
            let flops = 2.0 * (m * n * k) as f64;
            // Weights once, activations in (f32) and out (f32).
            let bytes = (n * k + 4 * m * k + 4 * m * n) as f64;
            bench(c, dev, entries, (&format!("fp8 linear {n}x{k}"), format!("m{m}")), (flops, bytes), || {
                dev.linear(&x, m, &w, Some(ScaleFmt::Ue8m0), &mut out).expect("linear")
            });
        }
    }
    // The plain GEMM of bf16 weights (the indexer's and MLA's bf16 projections in V3.2).
    let (n, k) = (4096, HIDDEN);
    let w: CudaLinear = dev.load_linear(&bf16_weight(n, k)).expect("weight");
    let x = dev.upload(&values(4096 * k, 3)).expect("x");
    let mut out = dev.zeros::<f32>(4096 * n).expect("out");
    for &m in &GEMM_ROWS {
        let flops = 2.0 * (m * n * k) as f64;
        let bytes = (2 * n * k + 4 * m * k + 4 * m * n) as f64;
        bench(c, dev, entries, (&format!("bf16 linear {n}x{k}"), format!("m{m}")), (flops, bytes), || {
            dev.linear(&x, m, &w, None, &mut out).expect("linear")
        });
    }
}

/// The FP8 GEMM alone (activations already quantized) at every bench shape: the Hopper kernel
/// (the heuristic's tiles, or `FLASHSEEK_GEMM_TILES=m128n64` and the like for all shapes), the
/// simple kernel, and cuBLAS's bf16 GEMM at the same (m, n, k). Returns the rows of the
/// side-by-side table `main` prints: (shape, m, fast group, simple group, cuBLAS group).
fn fp8_gemm_benches(c: &mut Criterion, dev: &CudaDevice, entries: &mut Vec<Entry>) -> Vec<[String; 4]> {
    let forced = std::env::var("FLASHSEEK_GEMM_TILES")
        .ok()
        .map(|v| v.parse::<GemmTiles>().unwrap_or_else(|e| panic!("FLASHSEEK_GEMM_TILES: {e}")));
    // SAFETY: only tries to open the library by its usual names.
    let blas = if unsafe { cudarc::cublas::sys::is_culib_present() } {
        CudaBlas::new(dev.stream().clone()).ok()
    } else {
        None
    };
    let mut rows = Vec::new();
    for &(n, k) in &GEMM_SHAPES {
        let w = dev.load_linear(&fp8_weight(n, k)).expect("weight");
        let m_max = GEMM_ROWS[GEMM_ROWS.len() - 1];
        let x = dev.upload(&values(m_max * k, 3)).expect("x");
        let mut codes = dev.zeros::<u8>(m_max * k).expect("codes");
        let mut scales = dev.zeros::<f32>(m_max * blocks(k)).expect("scales");
        dev.act_quant(&x, m_max, k, ScaleFmt::Ue8m0, &mut codes, &mut scales).expect("act_quant");
        let mut out = dev.zeros::<f32>(m_max * n).expect("out");
        let mut bf16_buffers = blas.as_ref().map(|_| {
            let a: CudaSlice<bf16> = dev.zeros(m_max * k).expect("bf16 a");
            let b: CudaSlice<bf16> = dev.zeros(n * k).expect("bf16 b");
            let c: CudaSlice<bf16> = dev.zeros(m_max * n).expect("bf16 c");
            (a, b, c)
        });
        let shape = format!("{n}x{k}");
        for &m in &GEMM_ROWS {
            let flops = 2.0 * (m * n * k) as f64;
            // Weights once, codes in (1 byte), out (f32).
            let bytes = (n * k + m * k + 4 * m * n) as f64;
            let tiles = forced.unwrap_or_else(|| dev.fp8_gemm_tiles(m, n));
            println!(
                "fp8 gemm {shape} m{m}: tiles {tiles} ({})",
                if forced.is_some() { "FLASHSEEK_GEMM_TILES" } else { "heuristic" }
            );
            let fast = format!("fp8 gemm wgmma {shape}");
            bench(c, dev, entries, (&fast, format!("m{m}")), (flops, bytes), || {
                dev.fp8_gemm_with(&codes, &scales, m, &w, &mut out, tiles).expect("fp8_gemm_fast")
            });
            let simple = format!("fp8 gemm simple {shape}");
            bench(c, dev, entries, (&simple, format!("m{m}")), (flops, bytes), || {
                dev.fp8_gemm(&codes, &scales, m, &w, &mut out).expect("fp8_gemm")
            });
            let cublas = format!("cublas bf16 {shape}");
            if let (Some(blas), Some((a, b, c_buf))) = (blas.as_ref(), bf16_buffers.as_mut()) {
                // Row-major out[m, n] = x[m, k] . w[n, k]^T is column-major out^T = w^T' . x^T:
                // cuBLAS's A is w (transposed), B is x.
                let cfg = GemmConfig {
                    transa: cublasOperation_t::CUBLAS_OP_T,
                    transb: cublasOperation_t::CUBLAS_OP_N,
                    m: n as i32,
                    n: m as i32,
                    k: k as i32,
                    alpha: bf16::ONE,
                    lda: k as i32,
                    ldb: k as i32,
                    beta: bf16::ZERO,
                    ldc: n as i32,
                };
                let bytes = (2 * n * k + 2 * m * k + 2 * m * n) as f64;
                bench(c, dev, entries, (&cublas, format!("m{m}")), (flops, bytes), || {
                    // SAFETY: b holds n*k, a m_max*k >= m*k and c m_max*n >= m*n values, as the
                    // config reads and writes.
                    unsafe { blas.gemm(cfg, b, a, c_buf) }.expect("cublas gemm")
                });
            }
            rows.push([format!("{shape} m{m}"), fast, simple, cublas]);
        }
    }
    rows
}

fn small_op_benches(c: &mut Criterion, dev: &CudaDevice, entries: &mut Vec<Entry>) {
    let rows = 4096;
    let x = dev.upload(&values(rows * HIDDEN, 5)).expect("x");
    let w = dev.upload(&values(HIDDEN, 6)).expect("w");
    let mut out = dev.zeros::<f32>(rows * HIDDEN).expect("out");
    let mut codes = dev.zeros::<u8>(rows * HIDDEN).expect("codes");
    let mut scales = dev.zeros::<f32>(rows * blocks(HIDDEN)).expect("scales");
    for m in [128, rows] {
        let io = (2 * 4 * m * HIDDEN) as f64;
        bench(c, dev, entries, ("rms_norm 7168", format!("m{m}")), (0.0, io), || {
            dev.rms_norm(&x, m, HIDDEN, 0, &w, HIDDEN, 1e-6, &mut out).expect("rms_norm")
        });
        let quant_io = (5 * m * HIDDEN) as f64;
        bench(c, dev, entries, ("act_quant 7168", format!("m{m}")), (0.0, quant_io), || {
            dev.act_quant(&x, m, HIDDEN, ScaleFmt::Ue8m0, &mut codes, &mut scales).expect("act_quant")
        });
    }
    let mut residual = dev.upload(&values(rows * HIDDEN, 10)).expect("residual");
    let mut gate = dev.upload(&values(rows * 2048, 12)).expect("gate");
    let up = dev.upload(&values(rows * 2048, 13)).expect("up");
    for m in [128, rows] {
        let io = (3 * 4 * m * HIDDEN) as f64;
        bench(c, dev, entries, ("add_rms_norm 7168", format!("m{m}")), (0.0, io), || {
            dev.add_rms_norm(&mut residual, &x, m, HIDDEN, &w, 1e-6, &mut out).expect("add_rms_norm")
        });
        bench(c, dev, entries, ("add_assign 7168", format!("m{m}")), (0.0, io), || {
            dev.add_assign(&mut residual, &x, m * HIDDEN).expect("add_assign")
        });
        bench(c, dev, entries, ("silu_mul 2048", format!("m{m}")), (0.0, (3 * 4 * m * 2048) as f64), || {
            dev.silu_mul(&mut gate, &up, m * 2048).expect("silu_mul")
        });
        bench(c, dev, entries, ("fp8_round 7168", format!("m{m}")), (0.0, (2 * 4 * m * HIDDEN) as f64), || {
            dev.fp8_round(&mut residual, m, HIDDEN, HIDDEN, ScaleFmt::Ue8m0).expect("fp8_round")
        });
    }
    // The indexer's key path: LayerNorm and Hadamard over 128-wide rows, its queries' Hadamard
    // over 64 heads of 128.
    let (idx_w, idx_b) = (dev.upload(&values(128, 14)).expect("w"), dev.upload(&values(128, 15)).expect("b"));
    let mut keys = dev.upload(&values(rows * 128, 16)).expect("keys");
    let mut iq = dev.upload(&values(rows * 64 * 128, 17)).expect("queries");
    bench(c, dev, entries, ("layer_norm 128", format!("m{rows}")), (0.0, (2 * 4 * rows * 128) as f64), || {
        dev.layer_norm(&mut keys, rows, 128, &idx_w, &idx_b, 1e-6).expect("layer_norm")
    });
    bench(c, dev, entries, ("hadamard 64x128", format!("m{rows}")), (0.0, (2 * 4 * rows * 64 * 128) as f64), || {
        dev.hadamard(&mut iq, rows, 64 * 128, 128).expect("hadamard")
    });
    // MLA's query rope: 128 heads of 192 columns, the last 64 rotated.
    let heads = HeadCols { n_heads: 128, stride: 192, offset: 128, dim: 64 };
    let cols = 128 * 192;
    let m = 128;
    let mut q = dev.upload(&values(m * cols, 7)).expect("q");
    let cos_sin = dev.upload(&values(m * 64, 8)).expect("cos_sin");
    bench(c, dev, entries, ("rope mla q", format!("m{m}")), (0.0, (2 * 4 * m * 128 * 64) as f64), || {
        dev.rope(&mut q, m, cols, heads, &cos_sin, RopeLayout::Interleaved).expect("rope")
    });
    let table = dev.load_linear(&bf16_weight(VOCAB, HIDDEN)).expect("table");
    let ids: Vec<u32> = (0..4096u32).map(|i| i * 31 % VOCAB as u32).collect();
    for m in [128, 4096] {
        bench(c, dev, entries, ("embedding bf16 129280x7168", format!("m{m}")), (0.0, (6 * m * HIDDEN) as f64), || {
            dev.embedding(&table, &ids[..m], &mut out).expect("embedding")
        });
    }
    let logits = dev.upload(&values(128 * VOCAB, 9)).expect("logits");
    let mut best = dev.zeros::<u32>(128).expect("best");
    bench(c, dev, entries, ("argmax 129280", "m128".into()), (0.0, (4 * 128 * VOCAB) as f64), || {
        dev.argmax(&logits, 128, VOCAB, &mut best).expect("argmax")
    });
}

/// DeepSeek-V3.2's MoE: the router over 256 experts (8 groups, top 4 groups, top 8), and the
/// grouped expert GEMMs at its expert shape (hidden 7168, intermediate 2048, FP8) over 8 experts:
/// contiguous layout for prefill (4 experts x 8192 tokens, 8 x 4096) and masked for decode (8
/// tokens x top 8, the masked layout's limit of 64 assignments).
fn moe_benches(c: &mut Criterion, dev: &CudaDevice, entries: &mut Vec<Entry>) {
    let (n_experts, inter) = (256, 2048);
    let params = RouterParams { n_group: 8, topk_group: 4, top_k: 8, norm_topk_prob: true, scaling: 2.5 };
    let logits = dev.upload(&values(4096 * n_experts, 41)).expect("logits");
    let bias = dev.upload(&values(n_experts, 42)).expect("bias");
    let mut idx = dev.zeros::<i32>(4096 * 8).expect("idx");
    let mut weights = dev.zeros::<f32>(4096 * 8).expect("weights");
    for m in [128, 4096] {
        bench(
            c,
            dev,
            entries,
            ("route 256 experts top-8", format!("m{m}")),
            (0.0, (4 * m * (n_experts + 16)) as f64),
            || dev.route(&logits, m, n_experts, &bias, params, &mut idx, &mut weights).expect("route"),
        );
    }
    let host: Vec<HostExpert> = (0..8)
        .map(|_| HostExpert {
            gate: fp8_weight(inter, HIDDEN),
            up: fp8_weight(inter, HIDDEN),
            down: fp8_weight(HIDDEN, inter),
        })
        .collect();
    let experts = dev.load_experts(&host).expect("experts");
    drop(host);
    let rows_max = 32768;
    let x = dev.upload(&values(rows_max * HIDDEN, 43)).expect("x");
    let mut out = dev.zeros::<f32>(rows_max * HIDDEN).expect("out");
    let ones = dev.upload(&vec![1.0f32; rows_max * 8]).expect("weights");
    // The contiguous cases on the simple grouped GEMM and on the Hopper one, side by side.
    for (groups, per, top_k, layout) in [
        (4, 8192, 1, MoeLayout::Contiguous),
        (4, 8192, 1, MoeLayout::ContiguousWgmma),
        (8, 4096, 1, MoeLayout::Contiguous),
        (8, 4096, 1, MoeLayout::ContiguousWgmma),
        (8, 8, 8, MoeLayout::Masked),
        (8, 8, 8, MoeLayout::MaskedWgmma),
    ] {
        let assignments = groups * per;
        let rows = assignments / top_k;
        // Token t's slot j goes to expert (t * top_k + j) / per: `per` assignments per expert.
        let ids: Vec<i32> = (0..assignments).map(|a| (a / per) as i32).collect();
        let idx = dev.upload(&ids).expect("idx");
        let flops = 6.0 * (assignments * HIDDEN * inter) as f64;
        let bytes = (3 * groups * HIDDEN * inter + 8 * rows * HIDDEN) as f64;
        let id = format!("{groups}x{per} {layout:?}");
        bench(c, dev, entries, ("moe_experts fp8 7168/2048", id), (flops, bytes), || {
            dev.moe_experts_with(&x, rows, &experts, &idx, &ones, top_k, Some(ScaleFmt::Ue8m0), layout, &mut out)
                .expect("moe_experts")
        });
    }
    // Decode, as the router spreads it: token t's slot j goes to expert j (each of the 8 experts
    // gets one assignment per token), on the simple masked GEMM and on the Hopper one.
    for (tokens, layout) in
        [(8, MoeLayout::Masked), (8, MoeLayout::MaskedWgmma), (1, MoeLayout::Masked), (1, MoeLayout::MaskedWgmma)]
    {
        let top_k = 8;
        let assignments = tokens * top_k;
        let ids: Vec<i32> = (0..assignments).map(|a| (a % top_k) as i32).collect();
        let idx = dev.upload(&ids).expect("idx");
        let flops = 6.0 * (assignments * HIDDEN * inter) as f64;
        let bytes = (3 * top_k * HIDDEN * inter + 8 * tokens * HIDDEN) as f64;
        let id = format!("{tokens} tokens top {top_k} {layout:?}");
        bench(c, dev, entries, ("moe_experts fp8 7168/2048", id), (flops, bytes), || {
            dev.moe_experts_with(&x, tokens, &experts, &idx, &ones, top_k, Some(ScaleFmt::Ue8m0), layout, &mut out)
                .expect("moe_experts")
        });
    }
}

/// Block tables giving each of `batch` sequences its own `ctx` positions in pages of 64, and the
/// cache rows they need.
fn private_pages(batch: usize, ctx: usize) -> (Vec<u32>, Vec<u32>, usize) {
    let per = ctx.div_ceil(64);
    let blocks = (0..(batch * per) as u32).collect();
    let starts = (0..=batch).map(|s| (s * per) as u32).collect();
    (blocks, starts, batch * per * 64)
}

/// V3.2's MLA: 128 heads, latent 512 + 64. Decode of one token per sequence at the end of its
/// context over the paged f32 cache, dense and over the indexer's top 2048, and dense over the
/// FP8 cache (656 bytes a token, decoded as the kernel stages it) and the bf16 one.
fn mla_benches(c: &mut Criterion, dev: &CudaDevice, entries: &mut Vec<Entry>) {
    let dims = MlaDims { heads: 128, nope: 128, rope: 64, v: 128, kv_lora: 512 };
    let latent = dims.latent();
    for (batch, ctx) in [(64, 4096), (64, 16384), (64, 65536), (128, 4096), (128, 16384), (128, 65536)] {
        let (blocks, starts, rows) = private_pages(batch, ctx);
        let Ok(cache) = dev.zeros::<f32>(rows * latent) else {
            eprintln!("mla_decode {batch}x{ctx}: the cache does not fit on this GPU");
            continue;
        };
        let pages = Pages { block_size: 64, blocks: &blocks, starts: &starts };
        let pos = vec![ctx as u32 - 1; batch];
        let seq: Vec<u32> = (0..batch as u32).collect();
        let queries = Queries { pos: &pos, seq: &seq };
        let q = dev.upload(&values(batch * dims.heads * latent, 21)).expect("q");
        let mut out = dev.zeros::<f32>(batch * dims.heads * dims.kv_lora).expect("out");
        let per_key = 2.0 * (latent + dims.kv_lora) as f64 * dims.heads as f64;
        let id = format!("b{batch} ctx{ctx}");
        let (flops, bytes) = (per_key * (batch * ctx) as f64, 4.0 * (batch * ctx * latent) as f64);
        bench(c, dev, entries, ("mla_decode dense f32 cache", id.clone()), (flops, bytes), || {
            dev.mla_decode(&q, batch, &cache, rows, queries, pages, None, 0.1, dims, &mut out).expect("mla_decode")
        });
        let k = 2048;
        let topk: Vec<i32> = (0..batch).flat_map(|_| (0..k as i32).map(|i| i * (ctx / k) as i32)).collect();
        let topk = dev.upload(&topk).expect("topk");
        let (flops, bytes) = (per_key * (batch * k) as f64, 4.0 * (batch * k * latent) as f64);
        bench(c, dev, entries, ("mla_decode top-2048 f32 cache", id.clone()), (flops, bytes), || {
            dev.mla_decode(&q, batch, &cache, rows, queries, pages, Some((&topk, k)), 0.1, dims, &mut out)
                .expect("mla_decode")
        });
        drop(cache);
        let l = LatentFp8::new(dims.kv_lora, dims.rope).expect("layout");
        let Ok(cache) = dev.zeros::<u8>(rows * l.token_bytes()) else {
            eprintln!("mla_decode {batch}x{ctx}: the FP8 cache does not fit on this GPU");
            continue;
        };
        let (flops, bytes) = (per_key * (batch * ctx) as f64, (batch * ctx * l.token_bytes()) as f64);
        bench(c, dev, entries, ("mla_decode dense fp8 cache", id.clone()), (flops, bytes), || {
            let view = CacheView::Latent(&cache, l);
            dev.mla_decode(&q, batch, view, rows, queries, pages, None, 0.1, dims, &mut out).expect("mla_decode")
        });
        drop(cache);
        let Ok(cache) = dev.zeros::<u8>(rows * latent * 2) else {
            eprintln!("mla_decode {batch}x{ctx}: the bf16 cache does not fit on this GPU");
            continue;
        };
        let (flops, bytes) = (per_key * (batch * ctx) as f64, (batch * ctx * latent * 2) as f64);
        bench(c, dev, entries, ("mla_decode dense bf16 cache", id), (flops, bytes), || {
            let view = CacheView::Bf16(&cache, latent);
            dev.mla_decode(&q, batch, view, rows, queries, pages, None, 0.1, dims, &mut out).expect("mla_decode")
        });
    }
}

/// The Hopper decode over the FP8 latent cache (656-byte tokens), then the same kernel over the
/// bf16 cache (1152-byte rows), batch 1 to 128 at 128 heads, dense over 4k to 64k positions and
/// over the indexer's top 2048, beside the simple kernel's cases above. Bytes: the tokens read
/// plus the f32 queries in and outputs out.
fn mla_fp8_benches(c: &mut Criterion, dev: &CudaDevice, entries: &mut Vec<Entry>) {
    let dims = MlaDims { heads: 128, nope: 128, rope: 64, v: 128, kv_lora: 512 };
    let latent = LatentFp8::new(512, 64).expect("V3.2's latent");
    let per_key = 2.0 * (dims.latent() + dims.kv_lora) as f64 * dims.heads as f64;
    let per_row = (4 * dims.heads * (dims.latent() + dims.kv_lora)) as f64;
    for batch in [1, 8, 32, 64, 128] {
        for ctx in [4096, 16384, 65536] {
            let (blocks, starts, rows) = private_pages(batch, ctx);
            let Ok(cache) = dev.zeros::<u8>(rows * latent.token_bytes()) else {
                eprintln!("mla_decode_fp8 {batch}x{ctx}: the cache does not fit on this GPU");
                continue;
            };
            let pages = Pages { block_size: 64, blocks: &blocks, starts: &starts };
            let pos = vec![ctx as u32 - 1; batch];
            let seq: Vec<u32> = (0..batch as u32).collect();
            let queries = Queries { pos: &pos, seq: &seq };
            let q = dev.upload(&values(batch * dims.heads * dims.latent(), 22)).expect("q");
            let mut out = dev.zeros::<f32>(batch * dims.heads * dims.kv_lora).expect("out");
            let id = format!("b{batch} ctx{ctx}");
            let keys = (batch * ctx) as f64;
            let (flops, bytes) = (per_key * keys, keys * latent.token_bytes() as f64 + per_row * batch as f64);
            bench(c, dev, entries, ("mla_decode dense fp8 cache (wgmma)", id.clone()), (flops, bytes), || {
                dev.mla_decode_fp8(&q, batch, &cache, latent, rows, queries, pages, None, 0.1, dims, &mut out)
                    .expect("mla_decode_fp8")
            });
            let k = 2048;
            let topk: Vec<i32> = (0..batch).flat_map(|_| (0..k as i32).map(|i| i * (ctx / k) as i32)).collect();
            let topk = dev.upload(&topk).expect("topk");
            let keys = (batch * k) as f64;
            let (flops, bytes) = (per_key * keys, keys * latent.token_bytes() as f64 + per_row * batch as f64);
            bench(c, dev, entries, ("mla_decode top-2048 fp8 cache (wgmma)", id.clone()), (flops, bytes), || {
                dev.mla_decode_fp8(
                    &q,
                    batch,
                    &cache,
                    latent,
                    rows,
                    queries,
                    pages,
                    Some((&topk, k)),
                    0.1,
                    dims,
                    &mut out,
                )
                .expect("mla_decode_fp8")
            });
            drop(cache);
            let row = 2 * dims.latent();
            let Ok(cache) = dev.zeros::<u8>(rows * row) else {
                eprintln!("mla_decode_bf16 {batch}x{ctx}: the cache does not fit on this GPU");
                continue;
            };
            let keys = (batch * ctx) as f64;
            let (flops, bytes) = (per_key * keys, keys * row as f64 + per_row * batch as f64);
            bench(c, dev, entries, ("mla_decode dense bf16 cache (wgmma)", id.clone()), (flops, bytes), || {
                dev.mla_decode_bf16(&q, batch, &cache, dims.latent(), rows, queries, pages, None, 0.1, dims, &mut out)
                    .expect("mla_decode_bf16")
            });
            let keys = (batch * k) as f64;
            let (flops, bytes) = (per_key * keys, keys * row as f64 + per_row * batch as f64);
            bench(c, dev, entries, ("mla_decode top-2048 bf16 cache (wgmma)", id), (flops, bytes), || {
                dev.mla_decode_bf16(
                    &q,
                    batch,
                    &cache,
                    dims.latent(),
                    rows,
                    queries,
                    pages,
                    Some((&topk, k)),
                    0.1,
                    dims,
                    &mut out,
                )
                .expect("mla_decode_bf16")
            });
        }
    }
}

/// The rest of V3.2's MLA path: the latent cache write of a decode step, the absorption of
/// kv_b (bf16, [128 x 256, 512]) into queries and out of latents at batch 128, and causal
/// prefill of one 4096-token sequence over expanded keys and values.
fn mla_path_benches(c: &mut Criterion, dev: &CudaDevice, entries: &mut Vec<Entry>) {
    let d = MlaDims { heads: 128, nope: 128, rope: 64, v: 128, kv_lora: 512 };
    let (lat, b) = (d.latent(), 128);
    let mut cache = dev.zeros::<f32>(65536 * lat).expect("cache");
    let src = dev.upload(&values(b * lat, 51)).expect("src");
    let slots: Vec<u32> = (0..b as u32).map(|i| i * 511).collect();
    bench(c, dev, entries, ("kv_store latent 576", format!("m{b}")), (0.0, (2 * 4 * b * lat) as f64), || {
        dev.kv_store(&mut cache, 65536, lat, &slots, &src, lat, 0, 0, lat).expect("kv_store")
    });
    drop(cache);
    let format = CacheFormat::Fp8Latent(LatentFp8::new(d.kv_lora, d.rope).expect("layout"));
    let mut cache8 = dev.zeros::<u8>(format.bytes(65536).expect("bytes")).expect("cache");
    let nope = dev.upload(&values(b * d.kv_lora, 57)).expect("nope");
    let bytes = (4 * b * lat + b * format.row_bytes()) as f64;
    bench(c, dev, entries, ("kv_store latent fp8 656", format!("m{b}")), (0.0, bytes), || {
        dev.kv_pack(&mut cache8, format, 65536, &slots, &nope, d.kv_lora, Some((&src, lat, d.kv_lora)))
            .expect("kv_pack")
    });
    let kv_b = dev.load_linear(&bf16_weight(d.heads * (d.nope + d.v), d.kv_lora)).expect("kv_b");
    let q = dev.upload(&values(b * d.heads * d.qk(), 52)).expect("q");
    let mut q_lat = dev.zeros::<f32>(b * d.heads * lat).expect("q_lat");
    let w_bytes = (2 * d.heads * (d.nope + d.v) * d.kv_lora) as f64;
    let flops = 2.0 * (b * d.heads * d.nope * d.kv_lora) as f64;
    bench(c, dev, entries, ("absorb_q bf16 kv_b", format!("m{b}")), (flops, w_bytes), || {
        dev.absorb_q(&q, b, &kv_b, d, &mut q_lat).expect("absorb_q")
    });
    let o_lat = dev.upload(&values(b * d.heads * d.kv_lora, 53)).expect("o_lat");
    let mut o = dev.zeros::<f32>(b * d.heads * d.v).expect("o");
    let flops = 2.0 * (b * d.heads * d.v * d.kv_lora) as f64;
    bench(c, dev, entries, ("absorb_out bf16 kv_b", format!("m{b}")), (flops, w_bytes), || {
        dev.absorb_out(&o_lat, b, &kv_b, d, &mut o).expect("absorb_out")
    });
    let t = 4096;
    let q = dev.upload(&values(t * d.heads * d.qk(), 54)).expect("q");
    let kv = dev.upload(&values(t * d.heads * (d.nope + d.v), 55)).expect("kv");
    let kpe = dev.upload(&values(t * d.rope, 56)).expect("kpe");
    let mut out = dev.zeros::<f32>(t * d.heads * d.v).expect("out");
    let seqs = [PrefillSeq { q_start: 0, q_len: t, kv_start: 0, start_pos: 0 }];
    // Causal: t(t+1)/2 (query, key) pairs per head, each a qk-wide score and a v-wide sum.
    let pairs = (t * (t + 1) / 2) as f64;
    let flops = 2.0 * pairs * (d.heads * (d.qk() + d.v)) as f64;
    let bytes = 4.0 * (t * d.heads * (d.qk() + d.nope + 2 * d.v) + t * d.rope) as f64;
    bench(c, dev, entries, ("mla_prefill causal", format!("t{t}")), (flops, bytes), || {
        dev.mla_prefill(&q, t, &kv, &kpe, t, &seqs, None, 0.07, d, &mut out).expect("mla_prefill")
    });
}

/// V3.2's lightning indexer: 64 heads x 128, top 2048. Decode (64 sequences, one query each at
/// the end of its context) and a prefill chunk of 1024 queries at the end of one long context.
fn indexer_benches(c: &mut Criterion, dev: &CudaDevice, entries: &mut Vec<Entry>) {
    let (heads, dim, k) = (64, 128, 2048);
    let weights = dev.upload(&values(4096 * heads, 31)).expect("weights");
    let q = dev.upload(&values(4096 * heads * dim, 32)).expect("q");
    for ctx in [4096, 16384, 65536, 131072] {
        let batch = 64;
        let (blocks, starts, rows) = private_pages(batch, ctx);
        let Ok(cache) = dev.upload(&values(rows * dim, 33)) else {
            eprintln!("indexer {batch}x{ctx}: the cache does not fit on this GPU");
            continue;
        };
        let pages = Pages { block_size: 64, blocks: &blocks, starts: &starts };
        let pos = vec![ctx as u32 - 1; batch];
        let seq: Vec<u32> = (0..batch as u32).collect();
        let queries = Queries { pos: &pos, seq: &seq };
        let mut out = dev.zeros::<i32>(4096 * k).expect("out");
        let flops = 2.0 * (heads * dim * batch * ctx) as f64;
        let bytes = 4.0 * (batch * ctx * dim) as f64;
        bench(
            c,
            dev,
            entries,
            ("indexer decode 64x128 top-2048", format!("b{batch} ctx{ctx}")),
            (flops, bytes),
            || {
                dev.indexer_topk(&q, batch, &weights, heads, 0.1, &cache, rows, dim, queries, pages, &mut out, k)
                    .expect("indexer_topk")
            },
        );
        let ix = IndexFp8::new(dim, ScaleFmt::Ue8m0).expect("layout");
        if let Ok(cache8) = dev.zeros::<u8>(CacheFormat::Fp8Index(ix).bytes(rows).expect("bytes")) {
            let bytes = (batch * ctx * (ix.page_bytes() / 64)) as f64;
            bench(
                c,
                dev,
                entries,
                ("indexer decode 64x128 top-2048 fp8 cache", format!("b{batch} ctx{ctx}")),
                (flops, bytes),
                || {
                    let view = CacheView::Index(&cache8, ix);
                    dev.indexer_topk(&q, batch, &weights, heads, 0.1, view, rows, dim, queries, pages, &mut out, k)
                        .expect("indexer_topk")
                },
            );
        }
        // Prefill: 1024 consecutive queries ending at the context's end, of the first sequence.
        let chunk = 1024;
        let pos: Vec<u32> = (ctx - chunk..ctx).map(|p| p as u32).collect();
        let seq = vec![0u32; chunk];
        let queries = Queries { pos: &pos, seq: &seq };
        let keys: usize = pos.iter().map(|&p| p as usize + 1).sum();
        let flops = 2.0 * (heads * dim * keys) as f64;
        let bytes = 4.0 * (keys * dim) as f64;
        bench(
            c,
            dev,
            entries,
            ("indexer prefill 64x128 top-2048", format!("q{chunk} ctx{ctx}")),
            (flops, bytes),
            || {
                dev.indexer_topk(&q, chunk, &weights, heads, 0.1, &cache, rows, dim, queries, pages, &mut out, k)
                    .expect("indexer_topk")
            },
        );
    }
}

/// The Hopper indexer on the FP8 cache (64 heads x 128, top 2048) beside the simple kernels
/// above: the logits step alone (TFLOP/s, the target 800 at long context; bytes are the
/// FP8 keys and scales read), the whole call, and the top-k step alone at 32k and 128k (bytes:
/// the logits read once). Decode: 64 sequences, one query each at the end of its context;
/// prefill: 1024 queries at the end of one context.
fn indexer_fp8_benches(c: &mut Criterion, dev: &CudaDevice, entries: &mut Vec<Entry>) {
    let (heads, k, chunk) = (64, 2048, 1024);
    let layout = IndexFp8::new(128, ScaleFmt::Exact).expect("dim 128");
    // One page of codes (no NaN code) and scales, repeated over the cache.
    let mut page: Vec<u8> = values(64 * 128, 34).iter().map(|v| ((v + 0.5) * 254.0) as u8 & 0xf7).collect();
    page.extend((0..64).flat_map(|_| (1.0f32 / 256.0).to_le_bytes()));
    let q_codes: Vec<u8> = values(chunk * heads * 128, 35).iter().map(|v| ((v + 0.5) * 254.0) as u8 & 0xf7).collect();
    let q_codes = dev.upload(&q_codes).expect("q codes");
    let q_scales = dev.upload(&vec![1.0f32 / 64.0; chunk * heads]).expect("q scales");
    let weights = dev.upload(&values(chunk * heads, 36)).expect("weights");
    for ctx in [4096, 16384, 32768, 65536, 131072] {
        let batch = 64;
        let (blocks, starts, rows) = private_pages(batch, ctx);
        let cache_pages = rows / 64;
        let Ok(cache) = dev.upload(&page.repeat(cache_pages)) else {
            eprintln!("indexer fp8 {batch}x{ctx}: the cache does not fit on this GPU");
            continue;
        };
        let pages = Pages { block_size: 64, blocks: &blocks, starts: &starts };
        let decode_pos = vec![ctx as u32 - 1; batch];
        let decode_seq: Vec<u32> = (0..batch as u32).collect();
        let prefill_pos: Vec<u32> = (ctx - chunk..ctx).map(|p| p as u32).collect();
        let prefill_seq = vec![0u32; chunk];
        let mut out = dev.zeros::<i32>(chunk * k).expect("out");
        let mut hist = dev.zeros::<u32>(chunk * 2048).expect("histograms");
        let Ok(mut logits) = dev.zeros::<f32>(chunk * ctx) else {
            eprintln!("indexer fp8 q{chunk} ctx{ctx}: the logits do not fit on this GPU");
            continue;
        };
        for (name, pos, seq) in [("decode", &decode_pos, &decode_seq), ("prefill", &prefill_pos, &prefill_seq)] {
            let x = IndexerFp8Input {
                q_codes: &q_codes,
                q_scales: &q_scales,
                weights: &weights,
                rows: pos.len(),
                heads,
                weight_scale: 0.1,
                cache: &cache,
                layout,
                cache_pages,
                queries: Queries { pos, seq },
                pages,
            };
            let keys: usize = pos.iter().map(|&p| p as usize + 1).sum();
            let flops = 2.0 * (heads * 128 * keys) as f64;
            // Decode reads every key once per query; a prefill chunk's queries share them.
            let key_bytes = if name == "decode" { keys } else { ctx } * layout.page_bytes() / 64;
            let id = if name == "decode" { format!("b{batch} ctx{ctx}") } else { format!("q{chunk} ctx{ctx}") };
            bench(
                c,
                dev,
                entries,
                (&format!("indexer_logits_fp8 {name}"), id.clone()),
                (flops, key_bytes as f64),
                || dev.indexer_logits_fp8(&x, &mut logits, &mut hist).map(drop).expect("indexer_logits_fp8"),
            );
            bench(
                c,
                dev,
                entries,
                (&format!("indexer_topk_fp8 {name} top-2048"), id),
                (flops, key_bytes as f64),
                || dev.indexer_topk_fp8(&x, &mut out, k).expect("indexer_topk_fp8"),
            );
            if name == "decode" && (ctx == 32768 || ctx == 131072) {
                let stride = dev.indexer_logits_fp8(&x, &mut logits, &mut hist).expect("indexer_logits_fp8");
                bench(
                    c,
                    dev,
                    entries,
                    ("indexer_select_fp8 top-2048", format!("b{batch} ctx{ctx}")),
                    (0.0, (4 * batch * ctx) as f64),
                    || dev.indexer_select_fp8(&logits, &hist, stride, pos, &mut out, k).expect("indexer_select_fp8"),
                );
            }
        }
    }
}

fn main() {
    let dev = match CudaDevice::new(0) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("cuda_kernels bench: no GPU to measure ({e})");
            // On GPU machines (scripts/gpu-check run) a missing GPU is a failure, as in the tests.
            if std::env::var("FLASHSEEK_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                std::process::exit(1);
            }
            return;
        }
    };
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .configure_from_args();
    let copy = copy_bandwidth(&dev);
    let bf16_rate = cublas_bf16_rate(&dev);
    let mut entries = Vec::new();
    gemm_benches(&mut c, &dev, &mut entries);
    let fp8_rows = fp8_gemm_benches(&mut c, &dev, &mut entries);
    small_op_benches(&mut c, &dev, &mut entries);
    moe_benches(&mut c, &dev, &mut entries);
    mla_benches(&mut c, &dev, &mut entries);
    mla_fp8_benches(&mut c, &dev, &mut entries);
    mla_path_benches(&mut c, &dev, &mut entries);
    indexer_benches(&mut c, &dev, &mut entries);
    indexer_fp8_benches(&mut c, &dev, &mut entries);
    c.final_summary();

    println!(
        "\nanchors: copy {:.0} GB/s (read + write), cuBLAS bf16 GEMM 8192^3 {}",
        copy / 1e9,
        match bf16_rate {
            Some(r) => format!("{:.0} TFLOP/s", r / 1e12),
            None => "n/a (libcublas not found)".into(),
        }
    );
    println!("\n| kernel | shape | time | TFLOP/s | of bf16 GEMM | GB/s | of copy |\n|---|---|---|---|---|---|---|");
    for e in &entries {
        let Some(ns) = common::mean_ns(&e.group, &e.id) else { continue };
        let (tflops, gbs) = (e.flops / ns / 1e3, e.bytes / ns);
        let of_gemm = match bf16_rate {
            Some(r) if e.flops > 0.0 => format!("{:.1}%", 100.0 * tflops * 1e12 / r),
            _ => "-".into(),
        };
        let tflops = if e.flops > 0.0 { format!("{tflops:.1}") } else { "-".into() };
        println!(
            "| {} | {} | {:.1} us | {tflops} | {of_gemm} | {gbs:.0} | {:.1}% |",
            e.group,
            e.id,
            ns / 1e3,
            100.0 * gbs * 1e9 / copy
        );
    }
    // The FP8 GEMMs side by side: TFLOP/s of each, and the Hopper kernel's ratio to the
    // simple one and to cuBLAS bf16 at the same shape.
    println!("\n| FP8 GEMM | wgmma TFLOP/s | simple TFLOP/s | cuBLAS bf16 TFLOP/s | wgmma / simple | wgmma / cuBLAS |");
    println!("|---|---|---|---|---|---|");
    for [label, fast, simple, cublas] in &fp8_rows {
        let (shape, m) = label.rsplit_once(' ').unwrap_or((label.as_str(), ""));
        let flops = entries.iter().find(|e| &e.group == fast && e.id == m).map_or(0.0, |e| e.flops);
        let rate = |group: &str| common::mean_ns(group, m).map(|ns| flops / ns / 1e3);
        let show = |r: Option<f64>| r.map_or("-".into(), |r| format!("{r:.1}"));
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => format!("{:.2}", a / b),
            _ => "-".into(),
        };
        let (f, s, b) = (rate(fast), rate(simple), rate(cublas));
        println!("| {shape} {m} | {} | {} | {} | {} | {} |", show(f), show(s), show(b), ratio(f, s), ratio(f, b));
    }
}
