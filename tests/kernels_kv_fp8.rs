//! The packed KV caches (`--kv-cache-dtype fp8_e4m3` and `bf16`) on the CPU backend: `kv_store`
//! writes exactly the bytes of `kv_layout`'s encoders (bf16: the half crate's rounding; the last
//! row of a slot given twice), `kv_gather` returns their decoders' values, and `mla_decode` /
//! `indexer_topk` over a packed cache give bit for bit what they give over an f32 cache holding
//! the decoded values (they decode into the same rows
//! and sum in the same order). Random shapes: latent widths with a partial last scale group,
//! several sequences in shuffled pages, dense and sparse decode. Bad widths, slots and formats
//! are errors that leave the cache alone.

mod common;
mod reference;

use flashseek::backend::{Backend, CacheFormat, CpuBackend, MlaDims, Queries};
use flashseek::fp8::ScaleFmt;
use flashseek::kv_cache::BLOCK_SIZE;
use flashseek::kv_layout::{IndexFp8, LatentFp8, PAGE};
use flashseek::tensor::{CacheTensor, IntTensor, Tensor};
use proptest::prelude::*;
use reference as rf;

fn tensor(rows: usize, cols: usize, data: Vec<f32>) -> Tensor<CpuBackend> {
    Tensor::<CpuBackend>::from_vec(rows, cols, data).expect("tensor")
}

fn ints(rows: usize, cols: usize, data: Vec<i32>) -> IntTensor<CpuBackend> {
    IntTensor::<CpuBackend>::from_vec(rows, cols, data).expect("int tensor")
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Rows of values with a spread of magnitudes per row (so scale groups differ), some zero rows.
fn rows(rng: &mut rf::Rng, n: usize, cols: usize) -> Vec<f32> {
    (0..n)
        .flat_map(|_| {
            let scale = if rng.chance(0.05) { 0.0 } else { rng.range(-6.0, 3.0).exp2() };
            rng.normals(cols, scale)
        })
        .collect()
}

/// A cache of `slots` rows in `format` whose sequences' positions are stored by `kv_store` in
/// random batches (a batch may give a slot twice: its last row counts), and the bytes the
/// layout's own encoder writes for the same rows.
struct Filled {
    cache: CacheTensor<CpuBackend>,
    want: Vec<u8>,
}

fn fill(b: &CpuBackend, rng: &mut rf::Rng, format: CacheFormat, slots: usize, order: &[u32]) -> Filled {
    let mut cache = b.cache_zeros(format, slots).expect("cache_zeros");
    let mut want = b.cache_read(&cache).expect("cache_read");
    let (head_cols, cols) = match format {
        CacheFormat::Fp8Latent(l) => (l.nope, l.nope + l.rope),
        CacheFormat::Fp8Index(ix) => (ix.dim, ix.dim),
        // Any split of a bf16 row between the two sources.
        CacheFormat::Bf16 { cols } => (rng.below(cols + 1), cols),
        CacheFormat::F32 { .. } => unreachable!("packed formats only"),
    };
    let mut at = 0;
    while at < order.len() {
        let n = (1 + rng.below(70)).min(order.len() - at);
        let mut batch = order[at..at + n].to_vec();
        if rng.chance(0.3) {
            // A slot written twice in one call, the first time with other values.
            batch.insert(0, batch[rng.below(n)]);
        }
        let extra = rng.below(3);
        let tail_cols = cols - head_cols + extra;
        let col = rng.below(extra + 1);
        let head = rows(rng, batch.len(), head_cols);
        let tail = rows(rng, batch.len(), tail_cols);
        let tail_t = tensor(batch.len(), tail_cols, tail.clone());
        let tail_arg = (cols > head_cols).then_some((&tail_t, col));
        b.kv_store(&mut cache, &batch, &tensor(batch.len(), head_cols, head.clone()), tail_arg).expect("kv_store");
        for (i, &s) in batch.iter().enumerate() {
            let (s, h) = (s as usize, &head[i * head_cols..(i + 1) * head_cols]);
            match format {
                CacheFormat::Fp8Latent(l) => {
                    let r = &tail[i * tail_cols + col..i * tail_cols + col + l.rope];
                    l.encode(h, r, &mut want[s * l.token_bytes()..(s + 1) * l.token_bytes()]);
                }
                CacheFormat::Fp8Index(ix) => ix.encode(s, h, &mut want),
                CacheFormat::Bf16 { .. } => {
                    let r = &tail[i * tail_cols + col..i * tail_cols + col + cols - head_cols];
                    for (j, v) in h.iter().chain(r).enumerate() {
                        let at = 2 * (s * cols + j);
                        want[at..at + 2].copy_from_slice(&half::bf16::from_f32(*v).to_le_bytes());
                    }
                }
                CacheFormat::F32 { .. } => unreachable!(),
            }
        }
        at += n;
    }
    Filled { cache, want }
}

/// The f32 cache of the decoded values of `bytes`, by `kv_layout`'s decoders.
fn decoded(format: CacheFormat, slots: usize, bytes: &[u8]) -> CacheTensor<CpuBackend> {
    let cols = format.cols();
    let mut values = vec![0.0; slots * cols];
    for (s, row) in values.chunks_exact_mut(cols).enumerate() {
        match format {
            CacheFormat::Fp8Latent(l) => l.decode(&bytes[s * l.token_bytes()..(s + 1) * l.token_bytes()], row),
            CacheFormat::Fp8Index(ix) => ix.decode(s, bytes, row),
            CacheFormat::Bf16 { .. } => {
                for (j, v) in row.iter_mut().enumerate() {
                    let at = 2 * (s * cols + j);
                    *v = half::bf16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32();
                }
            }
            CacheFormat::F32 { .. } => unreachable!(),
        }
    }
    CacheTensor::from_f32(slots, cols, values).expect("f32 cache")
}

/// Every position of every sequence, in a random order of cache slots.
fn store_order(rng: &mut rf::Rng, tables: &[Vec<u32>], lens: &[usize]) -> Vec<u32> {
    let mut order: Vec<u32> = lens
        .iter()
        .enumerate()
        .flat_map(|(s, &len)| (0..len).map(move |t| (s, t)))
        .map(|(s, t)| rf::slot(&tables[s], t) as u32)
        .collect();
    rng.shuffle(&mut order);
    order
}

fn gen_queries(rng: &mut rf::Rng, lens: &[usize]) -> (Vec<u32>, Vec<u32>) {
    let mut q = Vec::new();
    for (s, &len) in lens.iter().enumerate() {
        q.push((len as u32 - 1, s as u32));
        for _ in 0..rng.below(3) {
            q.push((rng.below(len) as u32, s as u32));
        }
    }
    rng.shuffle(&mut q);
    q.into_iter().unzip()
}

fn lens_strategy() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..200, 1..4)
}

/// Latent widths (multiples of 16, some with a partial last group of 128) and rope widths.
fn latent_strategy() -> impl Strategy<Value = (usize, usize)> {
    (prop::sample::select(vec![16usize, 48, 128, 144, 160, 272, 512]), 1usize..70)
}

#[test]
fn latent_store_gather_and_decode_match_the_layout_and_the_f32_cache() {
    let b = CpuBackend::new();
    let strategy = (lens_strategy(), latent_strategy(), 1usize..5, any::<bool>(), 1usize..40, any::<u64>());
    rf::run("fp8 latent cache", 48, strategy, |(lens, (kv_lora, rope), heads, sparse, k, seed), t| {
        let mut rng = rf::Rng::new(seed);
        let used: usize = lens.iter().map(|l| l.div_ceil(BLOCK_SIZE)).sum();
        let num_blocks = used + rng.below(3);
        let (tables, blocks, starts) = rf::gen_tables(&mut rng, &lens, num_blocks);
        let slots = num_blocks * BLOCK_SIZE;
        let format = if rng.chance(0.25) {
            CacheFormat::Bf16 { cols: kv_lora + rope }
        } else {
            CacheFormat::Fp8Latent(LatentFp8::new(kv_lora, rope).expect("layout"))
        };
        let order = store_order(&mut rng, &tables, &lens);
        let Filled { cache, want } = fill(&b, &mut rng, format, slots, &order);
        let bytes = b.cache_read(&cache).expect("cache_read");
        prop_assert!(bytes == want, "stored bytes differ from LatentFp8::encode's");
        let f32_cache = decoded(format, slots, &bytes);

        // kv_gather decodes: any slots, any columns.
        let lat = kv_lora + rope;
        let g: Vec<u32> = (0..1 + rng.below(40)).map(|_| rng.below(slots) as u32).collect();
        let w = 1 + rng.below(lat);
        let col = rng.below(lat - w + 1);
        let (mut got, mut exp) =
            (tensor(g.len(), w, vec![f32::NAN; g.len() * w]), tensor(g.len(), w, vec![0.0; g.len() * w]));
        b.kv_gather(&cache, &g, col, &mut got).expect("kv_gather fp8");
        b.kv_gather(&f32_cache, &g, col, &mut exp).expect("kv_gather f32");
        prop_assert_eq!(bits(got.data()), bits(exp.data()), "kv_gather");

        // mla_decode over both caches, bit for bit.
        let d = MlaDims { heads, nope: 8, rope, v: 8, kv_lora };
        let (pos, seq) = gen_queries(&mut rng, &lens);
        let m = pos.len();
        let topk: Option<Vec<i32>> = sparse.then(|| {
            (0..m)
                .flat_map(|i| {
                    (0..k)
                        .map(|_| if rng.chance(0.2) { -1 } else { rng.below(pos[i] as usize + 1) as i32 })
                        .collect::<Vec<_>>()
                })
                .collect()
        });
        let topk_t = topk.map(|v| ints(m, k, v));
        let q_lat = tensor(m, heads * lat, rng.normals(m * heads * lat, 1.0));
        let pages = flashseek::backend::Pages { block_size: BLOCK_SIZE, blocks: &blocks, starts: &starts };
        let queries = Queries { pos: &pos, seq: &seq };
        let scale = rng.range(0.05, 0.5) as f32;
        let mut outs = Vec::new();
        for c in [&cache, &f32_cache] {
            let mut out = tensor(m, heads * kv_lora, vec![f32::NAN; m * heads * kv_lora]);
            b.mla_decode(&q_lat, c, queries, pages, topk_t.as_ref(), scale, d, &mut out).expect("mla_decode");
            outs.push(bits(out.data()));
        }
        prop_assert!(outs[0] == outs[1], "mla_decode over the FP8 cache differs from the f32 cache of its values");
        t.count("decode rows bit-exact", m as u64);
        Ok(())
    });
}

#[test]
fn index_store_and_topk_match_the_layout_and_the_f32_cache() {
    let b = CpuBackend::new();
    let fmt = prop_oneof![Just(ScaleFmt::Exact), Just(ScaleFmt::Ue8m0)];
    let dim = prop::sample::select(vec![16usize, 32, 64, 128, 144]);
    let strategy = (lens_strategy(), dim, fmt, 1usize..9, 1usize..40, any::<u64>());
    rf::run("fp8 index cache", 48, strategy, |(lens, dim, fmt, n_heads, k, seed), t| {
        let mut rng = rf::Rng::new(seed);
        let used: usize = lens.iter().map(|l| l.div_ceil(BLOCK_SIZE)).sum();
        let num_blocks = used + rng.below(3);
        let (tables, blocks, starts) = rf::gen_tables(&mut rng, &lens, num_blocks);
        let slots = num_blocks * BLOCK_SIZE;
        let format = if rng.chance(0.25) {
            CacheFormat::Bf16 { cols: dim }
        } else {
            CacheFormat::Fp8Index(IndexFp8::new(dim, fmt).expect("layout"))
        };
        let order = store_order(&mut rng, &tables, &lens);
        let Filled { cache, want } = fill(&b, &mut rng, format, slots, &order);
        let bytes = b.cache_read(&cache).expect("cache_read");
        prop_assert!(bytes == want, "stored bytes differ from IndexFp8::encode's");
        let f32_cache = decoded(format, slots, &bytes);

        let g: Vec<u32> = (0..1 + rng.below(40)).map(|_| rng.below(slots) as u32).collect();
        let (mut got, mut exp) =
            (tensor(g.len(), dim, vec![f32::NAN; g.len() * dim]), tensor(g.len(), dim, vec![0.0; g.len() * dim]));
        b.kv_gather(&cache, &g, 0, &mut got).expect("kv_gather fp8");
        b.kv_gather(&f32_cache, &g, 0, &mut exp).expect("kv_gather f32");
        prop_assert_eq!(bits(got.data()), bits(exp.data()), "kv_gather");

        let (pos, seq) = gen_queries(&mut rng, &lens);
        let m = pos.len();
        let q = tensor(m, n_heads * dim, rng.normals(m * n_heads * dim, 1.0));
        let w = tensor(m, n_heads, rng.normals(m * n_heads, 1.0));
        let pages = flashseek::backend::Pages { block_size: BLOCK_SIZE, blocks: &blocks, starts: &starts };
        let mut outs = Vec::new();
        for c in [&cache, &f32_cache] {
            let mut out = ints(m, k, vec![-7; m * k]);
            b.indexer_topk(&q, &w, 0.3, c, Queries { pos: &pos, seq: &seq }, pages, &mut out).expect("indexer_topk");
            outs.push(out.data().to_vec());
        }
        prop_assert_eq!(&outs[0], &outs[1], "indexer_topk over the FP8 cache differs from the f32 cache of its values");
        t.count("indexer rows exact", m as u64);
        Ok(())
    });
}

#[test]
fn bad_widths_slots_and_formats_are_errors() {
    let b = CpuBackend::new();
    let l = LatentFp8::new(144, 8).expect("layout");
    let ix = IndexFp8::new(32, ScaleFmt::Ue8m0).expect("layout");
    assert!(b.cache_zeros(CacheFormat::Fp8Index(ix), PAGE + 1).is_err(), "an index cache of a partial page");
    let mut lat = b.cache_zeros(CacheFormat::Fp8Latent(l), 70).expect("latent cache");
    let mut idx = b.cache_zeros(CacheFormat::Fp8Index(ix), 2 * PAGE).expect("index cache");
    let nope = tensor(2, 144, vec![1.0; 288]);
    let kva = tensor(2, 152, vec![2.0; 304]);
    b.kv_store(&mut lat, &[3, 69], &nope, Some((&kva, 144))).expect("fits");
    let before = b.cache_read(&lat).expect("read");
    let bad: [(&str, flashseek::error::Result<()>); 6] = [
        ("slot past the cache", b.kv_store(&mut lat, &[3, 70], &nope, Some((&kva, 144)))),
        (
            "latent head narrower than kv_lora",
            b.kv_store(&mut lat, &[3, 4], &tensor(2, 128, vec![0.0; 256]), Some((&kva, 128))),
        ),
        ("latent without its rope", b.kv_store(&mut lat, &[3, 4], &nope, None)),
        ("rope columns past the tail", b.kv_store(&mut lat, &[3, 4], &nope, Some((&kva, 145)))),
        ("slot count", b.kv_store(&mut lat, &[3], &nope, Some((&kva, 144)))),
        ("bytes of another length", b.cache_write(&mut lat, &before[1..])),
    ];
    for (what, r) in bad {
        assert!(r.is_err(), "latent: {what} returned Ok");
    }
    assert_eq!(b.cache_read(&lat).expect("read"), before, "a failed store wrote to the cache");

    let keys = tensor(2, 32, vec![0.5; 64]);
    b.kv_store(&mut idx, &[0, 127], &keys, None).expect("fits");
    assert!(b.kv_store(&mut idx, &[0, 128], &keys, None).is_err(), "index slot past the cache");
    assert!(b.kv_store(&mut idx, &[0, 1], &tensor(2, 16, vec![0.0; 32]), None).is_err(), "index key width");
    assert!(b.kv_store(&mut idx, &[0, 1], &keys, Some((&keys, 0))).is_err(), "index key with a tail");
    assert!(b.kv_gather(&idx, &[0], 1, &mut tensor(1, 32, vec![0.0; 32])).is_err(), "gather past the row");
    assert!(b.kv_gather(&lat, &[70], 0, &mut tensor(1, 8, vec![0.0; 8])).is_err(), "gather slot past the cache");

    // A cache of the wrong kind or widths for the kernel.
    let d = MlaDims { heads: 1, nope: 8, rope: 8, v: 8, kv_lora: 144 };
    let pages = flashseek::backend::Pages { block_size: BLOCK_SIZE, blocks: &[0], starts: &[0, 1] };
    let queries = Queries { pos: &[0], seq: &[0] };
    let q_lat = tensor(1, 152, vec![0.1; 152]);
    let mut out = tensor(1, 144, vec![0.0; 144]);
    b.mla_decode(&q_lat, &lat, queries, pages, None, 0.5, d, &mut out).expect("the right cache");
    assert!(b.mla_decode(&q_lat, &idx, queries, pages, None, 0.5, d, &mut out).is_err(), "decode over index keys");
    let d_other = MlaDims { rope: 16, ..d };
    let q_other = tensor(1, 160, vec![0.1; 160]);
    assert!(b.mla_decode(&q_other, &lat, queries, pages, None, 0.5, d_other, &mut out).is_err(), "rope width");
    let mut top = ints(1, 4, vec![0; 4]);
    let q = tensor(1, 32, vec![0.1; 32]);
    let w = tensor(1, 1, vec![1.0]);
    b.indexer_topk(&q, &w, 1.0, &idx, queries, pages, &mut top).expect("the right cache");
    let q152 = tensor(1, 152, vec![0.1; 152]);
    assert!(b.indexer_topk(&q152, &w, 1.0, &lat, queries, pages, &mut top).is_err(), "indexer over a latent cache");
}
