//! The packed KV caches on the GPU (`csrc/sm90/mla/kv_pack.cu`, and the FP8 and bf16 paths of
//! `mla/decode.cu` and `indexer/indexer.cu`) against the CPU backend, through the `Backend` trait:
//! - `kv_store` writes the CPU's bytes exactly (FP8 latent and index layouts, both index scale
//!   formats, partial scale groups, bf16 rows; repeated slots, NaN / infinite / signed-zero
//!   inputs);
//! - `kv_gather` returns the CPU's decoded values (NaN where the CPU has NaN: the GPU's NaNs
//!   carry its canonical payload);
//! - `mla_decode` over an FP8 or bf16 cache is bit for bit the GPU's own `mla_decode` over an f32 cache
//!   of the decoded values (the kernel decodes into the tile it stages, then runs unchanged), so
//!   it meets the CPU within tests/cuda_mla.rs's bound, which that file checks for f32 caches;
//! - `indexer_topk` over an FP8 index cache selects the CPU's positions exactly (the indexer is
//!   bit-exact with the CPU on x86-64 with AVX2 and FMA, and the decoded keys are the CPU's).
//!
//! Skips without a GPU; fails without one under `FLASHSEEK_REQUIRE_GPU=1`.
#![cfg(feature = "cuda")]

mod cuda_common;

use std::sync::OnceLock;

use cuda_common::{Rng, CASES};
use flashseek::backend::cuda::CudaBackend;
use flashseek::backend::{Backend, CacheFormat, CpuBackend, MlaDims, Pages, Queries};
use flashseek::fp8::ScaleFmt;
use flashseek::kv_layout::{IndexFp8, LatentFp8, PAGE};
use flashseek::tensor::{CacheTensor, Tensor};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn gpu() -> Option<&'static CudaBackend> {
    static GPU: OnceLock<Option<CudaBackend>> = OnceLock::new();
    GPU.get_or_init(|| match CudaBackend::new(0) {
        Ok(b) => Some(b),
        Err(e) if std::env::var("FLASHSEEK_REQUIRE_GPU").is_ok_and(|v| v == "1") => {
            panic!("FLASHSEEK_REQUIRE_GPU=1 but no GPU: {e}")
        }
        Err(e) => {
            eprintln!("skipping the CUDA FP8 cache tests: {e}");
            None
        }
    })
    .as_ref()
}

fn run<S: Strategy>(strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>) {
    let mut runner = TestRunner::new(Config { cases: CASES, ..Config::default() });
    if let Err(e) = runner.run(&strategy, test) {
        panic!("{e}");
    }
}

/// The same values as a tensor of each backend.
fn pair<B: Backend>(b: &B, rows: usize, cols: usize, data: &[f32]) -> (Tensor<B>, Tensor<CpuBackend>) {
    let mut t = b.zeros(rows, cols).expect("zeros");
    b.write(&mut t, data).expect("write");
    (t, Tensor::<CpuBackend>::from_vec(rows, cols, data.to_vec()).expect("cpu tensor"))
}

fn same_or_both_nan(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
}

fn format_strategy() -> impl Strategy<Value = CacheFormat> {
    let latent = (prop::sample::select(vec![16usize, 48, 128, 144, 512]), prop_oneof![Just(64usize), 0usize..70])
        .prop_map(|(n, r)| CacheFormat::Fp8Latent(LatentFp8::new(n, r).expect("layout")));
    let index =
        (prop::sample::select(vec![16usize, 64, 128]), prop_oneof![Just(ScaleFmt::Exact), Just(ScaleFmt::Ue8m0)])
            .prop_map(|(d, f)| CacheFormat::Fp8Index(IndexFp8::new(d, f).expect("layout")));
    let bf16 = (1usize..600).prop_map(|cols| CacheFormat::Bf16 { cols });
    prop_oneof![latent, index, bf16]
}

/// The widths of the two parts of a row: the head (an FP8 format's quantized part) and the rest.
fn widths(format: CacheFormat) -> (usize, usize) {
    match format {
        CacheFormat::Fp8Latent(l) => (l.nope, l.rope),
        CacheFormat::Fp8Index(ix) => (ix.dim, 0),
        CacheFormat::Bf16 { cols } => (cols - cols / 3, cols / 3),
        CacheFormat::F32 { cols } => (cols, 0),
    }
}

/// Every row of `bytes` decoded by the CPU's decoders (`kv_layout`, the half crate).
fn decode_all(format: CacheFormat, rows: usize, bytes: &[u8]) -> Vec<f32> {
    let cols = format.cols();
    let mut values = vec![0.0; rows * cols];
    for (s, row) in values.chunks_exact_mut(cols).enumerate() {
        match format {
            CacheFormat::Fp8Latent(l) => l.decode(&bytes[s * l.token_bytes()..(s + 1) * l.token_bytes()], row),
            CacheFormat::Fp8Index(ix) => ix.decode(s, bytes, row),
            CacheFormat::Bf16 { .. } | CacheFormat::F32 { .. } => {
                let w = format.row_bytes() / cols;
                for (j, v) in row.iter_mut().enumerate() {
                    let b = &bytes[w * (s * cols + j)..w * (s * cols + j + 1)];
                    *v = match w {
                        2 => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
                        _ => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                    };
                }
            }
        }
    }
    values
}

#[test]
fn store_and_gather_match_the_cpu() {
    let Some(g) = gpu() else { return };
    let cpu = CpuBackend::new();
    run((format_strategy(), 1usize..4, 0usize..150, any::<u64>()), |(format, pages, n, seed)| {
        let mut rng = Rng(seed);
        let rows = pages * PAGE;
        let (head_cols, rope) = widths(format);
        let tail_cols = rope + rng.below(3);
        let col = rng.below(tail_cols - rope + 1);
        // Repeated slots too: the last row written wins.
        let slots: Vec<u32> = (0..n).map(|_| rng.below(rows) as u32).collect();
        let mut head = rng.magnitudes(n, head_cols);
        if rng.below(3) == 0 {
            head = rng.with_specials(n * head_cols, -3.0, 3.0, 0.02);
        }
        let tail = rng.with_specials(n * tail_cols, -3.0, 3.0, 0.02);
        let (gh, ch) = pair(g, n, head_cols, &head);
        let (gt, ct) = pair(g, n, tail_cols, &tail);
        let mut gc = g.cache_zeros(format, rows).expect("gpu cache");
        let mut cc = cpu.cache_zeros(format, rows).expect("cpu cache");
        g.kv_store(&mut gc, &slots, &gh, (rope > 0).then_some((&gt, col))).expect("gpu kv_store");
        cpu.kv_store(&mut cc, &slots, &ch, (rope > 0).then_some((&ct, col))).expect("cpu kv_store");
        let (gb, cb) = (g.cache_read(&gc).expect("read"), cpu.cache_read(&cc).expect("read"));
        prop_assert!(gb == cb, "{format:?}: stored bytes differ from the CPU's");

        let cols = format.cols();
        let w = 1 + rng.below(cols);
        let c0 = rng.below(cols - w + 1);
        let gs: Vec<u32> = (0..1 + rng.below(40)).map(|_| rng.below(rows) as u32).collect();
        let (mut gd, mut cd) = pair(g, gs.len(), w, &vec![0.0; gs.len() * w]);
        g.kv_gather(&gc, &gs, c0, &mut gd).expect("gpu kv_gather");
        cpu.kv_gather(&cc, &gs, c0, &mut cd).expect("cpu kv_gather");
        prop_assert!(same_or_both_nan(&g.read(&gd).expect("read"), cd.data()), "{format:?}: gathered values differ");
        Ok(())
    });
}

/// Block tables over `lens`: consecutive blocks per sequence, in reverse order of sequences.
fn tables(lens: &[usize]) -> (Vec<u32>, Vec<u32>, usize) {
    let total: usize = lens.iter().map(|l| l.div_ceil(PAGE)).sum();
    let (mut blocks, mut starts) = (Vec::new(), vec![0u32]);
    let mut next = total;
    for &len in lens {
        for _ in 0..len.div_ceil(PAGE) {
            next -= 1;
            blocks.push(next as u32);
        }
        starts.push(blocks.len() as u32);
    }
    (blocks, starts, total * PAGE)
}

fn slot_of(blocks: &[u32], starts: &[u32], seq: usize, t: usize) -> u32 {
    blocks[starts[seq] as usize + t / PAGE] * PAGE as u32 + (t % PAGE) as u32
}

#[test]
fn decode_over_a_packed_cache_is_decode_over_its_values() {
    let Some(g) = gpu() else { return };
    let strategy = (
        prop::collection::vec(1usize..300, 1..3),
        prop::sample::select(vec![128usize, 144, 512]),
        1usize..70,
        1usize..20,
        any::<bool>(),
        any::<u64>(),
    );
    run(strategy, |(lens, kv_lora, rope, heads, sparse, seed)| {
        let mut rng = Rng(seed);
        let (blocks, starts, rows) = tables(&lens);
        let format = if rng.below(4) == 0 {
            CacheFormat::Bf16 { cols: kv_lora + rope }
        } else {
            CacheFormat::Fp8Latent(LatentFp8::new(kv_lora, rope).expect("layout"))
        };
        let mut cache = g.cache_zeros(format, rows).expect("cache");
        let slots: Vec<u32> = lens
            .iter()
            .enumerate()
            .flat_map(|(s, &len)| (0..len).map(move |t| (s, t)))
            .map(|(s, t)| slot_of(&blocks, &starts, s, t))
            .collect();
        let (head, _) = pair(g, slots.len(), kv_lora, &rng.magnitudes(slots.len(), kv_lora));
        let (tail, _) = pair(g, slots.len(), rope, &rng.values(slots.len() * rope, -2.0, 2.0));
        g.kv_store(&mut cache, &slots, &head, Some((&tail, 0))).expect("kv_store");
        let bytes = g.cache_read(&cache).expect("read");
        let lat = kv_lora + rope;
        let values = decode_all(format, rows, &bytes);
        let mut f32_cache: CacheTensor<CudaBackend> =
            g.cache_zeros(CacheFormat::F32 { cols: lat }, rows).expect("cache");
        g.cache_write(&mut f32_cache, &values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>()).expect("write");

        let pos: Vec<u32> = lens.iter().map(|&len| (len - 1 - rng.below(len.min(3))) as u32).collect();
        let seq: Vec<u32> = (0..lens.len() as u32).collect();
        let m = pos.len();
        let k = 1 + rng.below(40);
        let topk: Vec<i32> = (0..m * k).map(|i| rng.below(pos[i / k] as usize + 2) as i32 - 1).collect();
        let dev = g.device();
        let topk_dev = dev.upload(&topk).expect("upload top-k");
        let (q, _) = pair(g, m, heads * lat, &rng.values(m * heads * lat, -1.0, 1.0));
        let d = MlaDims { heads, nope: 8, rope, v: 8, kv_lora };
        let pages = Pages { block_size: PAGE, blocks: &blocks, starts: &starts };
        let mut outs = Vec::new();
        for c in [&cache, &f32_cache] {
            let mut out = dev.zeros::<f32>(m * heads * kv_lora).expect("out");
            let view = c.view().expect("view");
            let t = sparse.then_some((&topk_dev, k));
            dev.mla_decode(q.buf(), m, view, rows, Queries { pos: &pos, seq: &seq }, pages, t, 0.2, d, &mut out)
                .expect("mla_decode");
            outs.push(dev.download(&out).expect("download"));
        }
        prop_assert!(same_or_both_nan(&outs[0], &outs[1]), "decode over the FP8 cache differs from its values'");
        Ok(())
    });
}

#[test]
fn indexer_over_a_packed_cache_selects_the_cpus_positions() {
    let Some(g) = gpu() else { return };
    let cpu = CpuBackend::new();
    let strategy = (
        prop::collection::vec(1usize..400, 1..3),
        prop::sample::select(vec![64usize, 128]),
        prop_oneof![Just(ScaleFmt::Exact), Just(ScaleFmt::Ue8m0)],
        1usize..9,
        1usize..64,
        any::<u64>(),
    );
    run(strategy, |(lens, dim, fmt, heads, k, seed)| {
        let mut rng = Rng(seed);
        let (blocks, starts, rows) = tables(&lens);
        let format = if rng.below(4) == 0 {
            CacheFormat::Bf16 { cols: dim }
        } else {
            CacheFormat::Fp8Index(IndexFp8::new(dim, fmt).expect("layout"))
        };
        let slots: Vec<u32> = lens
            .iter()
            .enumerate()
            .flat_map(|(s, &len)| (0..len).map(move |t| (s, t)))
            .map(|(s, t)| slot_of(&blocks, &starts, s, t))
            .collect();
        let keys = rng.magnitudes(slots.len(), dim);
        let (gk, ck) = pair(g, slots.len(), dim, &keys);
        let mut gc = g.cache_zeros(format, rows).expect("cache");
        let mut cc = cpu.cache_zeros(format, rows).expect("cache");
        g.kv_store(&mut gc, &slots, &gk, None).expect("gpu kv_store");
        cpu.kv_store(&mut cc, &slots, &ck, None).expect("cpu kv_store");

        let pos: Vec<u32> = lens.iter().map(|&len| (len - 1) as u32).collect();
        let seq: Vec<u32> = (0..lens.len() as u32).collect();
        let m = pos.len();
        let (gq, cq) = pair(g, m, heads * dim, &rng.values(m * heads * dim, -1.0, 1.0));
        let (gw, cw) = pair(g, m, heads, &rng.values(m * heads, -1.0, 1.0));
        let pages = Pages { block_size: PAGE, blocks: &blocks, starts: &starts };
        let queries = Queries { pos: &pos, seq: &seq };
        let mut gout = g.int_zeros(m, k).expect("ints");
        let mut cout = cpu.int_zeros(m, k).expect("ints");
        g.indexer_topk(&gq, &gw, 0.25, &gc, queries, pages, &mut gout).expect("gpu indexer_topk");
        cpu.indexer_topk(&cq, &cw, 0.25, &cc, queries, pages, &mut cout).expect("cpu indexer_topk");
        let got = g.device().download(gout.buf()).expect("download");
        prop_assert_eq!(&got[..m * k], cout.data(), "selected positions differ");
        Ok(())
    });
}

#[test]
fn bad_input_is_an_error() {
    let Some(g) = gpu() else { return };
    let l = LatentFp8::new(144, 8).expect("layout");
    let ix = IndexFp8::new(32, ScaleFmt::Ue8m0).expect("layout");
    assert!(g.cache_zeros(CacheFormat::Fp8Index(ix), PAGE + 1).is_err(), "an index cache of a partial page");
    let mut lat = g.cache_zeros(CacheFormat::Fp8Latent(l), 70).expect("latent cache");
    let (nope, _) = pair(g, 2, 144, &[1.0; 288]);
    let (kva, _) = pair(g, 2, 152, &[2.0; 304]);
    g.kv_store(&mut lat, &[3, 69], &nope, Some((&kva, 144))).expect("fits");
    let before = g.cache_read(&lat).expect("read");
    assert!(g.kv_store(&mut lat, &[3, 70], &nope, Some((&kva, 144))).is_err(), "slot past the cache");
    assert!(g.kv_store(&mut lat, &[3, 4], &nope, None).is_err(), "latent without its rope");
    assert!(g.kv_store(&mut lat, &[3, 4], &nope, Some((&kva, 145))).is_err(), "rope past the tail");
    assert!(g.cache_write(&mut lat, &before[1..]).is_err(), "bytes of another length");
    assert_eq!(g.cache_read(&lat).expect("read"), before, "a failed store wrote to the cache");
    let mut dst = g.zeros(1, 8).expect("dst");
    assert!(g.kv_gather(&lat, &[70], 0, &mut dst).is_err(), "gather past the cache");
    let idx = g.cache_zeros(CacheFormat::Fp8Index(ix), PAGE).expect("index cache");
    let d = MlaDims { heads: 1, nope: 8, rope: 8, v: 8, kv_lora: 144 };
    let pages = Pages { block_size: PAGE, blocks: &[0], starts: &[0, 1] };
    let (q, _) = pair(g, 1, 152, &[0.1; 152]);
    let mut out = g.zeros(1, 144).expect("out");
    let queries = Queries { pos: &[0], seq: &[0] };
    assert!(g.mla_decode(&q, &idx, queries, pages, None, 0.5, d, &mut out).is_err(), "decode over index keys");
}
