//! The Hopper MLA decode over the FP8 latent cache (`CudaDevice::mla_decode_fp8`,
//! `csrc/sm90/mla/decode_fast.cu`) against the CPU backend's `mla_decode` and the simple CUDA
//! decode, both over an f32 cache holding the decoded tokens (`LatentFp8::decode`), and against
//! the exact (f64) attention, within the bounds `tests/mla_bound` derives (bf16 queries and
//! weights on the GPU). The same kernel over the bf16 cache (`CudaDevice::mla_decode_bf16`)
//! against the CPU's and the simple kernel's `mla_decode` over the same bf16 cache and the exact
//! attention over its values, within the same bounds (its keys are exact in bf16 too). Dense and sparse (top-k with -1s, entries past the position, repeats),
//! ragged contexts and page sizes, prefill chunks (consecutive positions of one sequence: sparse
//! prefill in the absorbed form), batch 1..130, 64, 128 and other head counts (a partial last
//! group of 64), contexts long enough to split. Finite data only: NaN and infinity positions are
//! not held to the CPU's here. Without a GPU the GPU tests say so and pass
//! (`FLASHSEEK_REQUIRE_GPU=1` makes them fail); the check of the CPU against the bound runs
//! everywhere.
#![cfg(feature = "cuda")]

mod cuda_common;
mod mla_bound;

use cuda_common::*;
use cudarc::driver::CudaSlice;
use flashseek::backend::cuda::{CacheView, CudaDevice};
use flashseek::backend::{Backend, CacheFormat, CpuBackend, MlaDims, Pages, Queries};
use flashseek::kv_layout::LatentFp8;
use flashseek::tensor::IntTensor;
use proptest::prelude::*;

const LATENT: LatentFp8 = LatentFp8 { nope: 512, rope: 64 };

fn dims(heads: usize) -> MlaDims {
    MlaDims { heads, nope: 128, rope: 64, v: 128, kv_lora: 512 }
}

/// One random decode call over an FP8 cache (or a bf16 cache), the decoded f32 cache, and the
/// CPU's output.
struct Case {
    d: MlaDims,
    bf16: bool,
    rows: usize,
    q: Vec<f32>,
    cache: Vec<u8>,
    decoded: Vec<f32>,
    slots: usize,
    block_size: usize,
    blocks: Vec<u32>,
    starts: Vec<u32>,
    pos: Vec<u32>,
    seq: Vec<u32>,
    topk: Option<(Vec<i32>, usize)>,
    scale: f32,
    want: Vec<f32>,
}

impl Case {
    /// `bf16`: the cache holds bf16 rows of 576 (any bf16 values), and the CPU reads that cache.
    fn new(
        (heads, rows, ctx_max, block_size, sparse, seed): (usize, usize, usize, usize, bool, u64),
        bf16: bool,
    ) -> Self {
        let d = dims(heads);
        let mut rng = Rng(seed);
        let n_seqs = 1 + rng.below(rows.min(8));
        let ctx: Vec<usize> = (0..n_seqs).map(|_| 1 + rng.below(ctx_max)).collect();
        // Each sequence's pages from a shuffled pool with spares: out of order, some unused.
        let pages: Vec<usize> = ctx.iter().map(|c| c.div_ceil(block_size)).collect();
        let total: usize = pages.iter().sum();
        let pool = total + rng.below(4);
        let mut ids: Vec<u32> = (0..pool as u32).collect();
        for i in (1..ids.len()).rev() {
            ids.swap(i, rng.below(i + 1));
        }
        ids.truncate(total);
        let mut starts = vec![0u32];
        for p in &pages {
            starts.push(starts.last().copied().unwrap_or(0) + *p as u32);
        }
        let slots = pool * block_size;
        let (mut seq, mut pos) = (Vec::with_capacity(rows), Vec::with_capacity(rows));
        // One case in four is a prefill chunk (sparse prefill in the absorbed form): consecutive
        // positions of one sequence, ending at its last.
        let chunk = rng.below(4) == 0;
        for i in 0..rows {
            let s = if chunk { 0 } else { rng.below(n_seqs) };
            let p = if chunk {
                (ctx[0] + i).saturating_sub(rows)
            } else if rng.below(3) == 0 {
                rng.below(ctx[s])
            } else {
                ctx[s] - 1
            };
            seq.push(s as u32);
            pos.push(p as u32);
        }
        let topk = sparse.then(|| {
            let k = if rng.below(2) == 0 { rng.below(70) } else { rng.below(2 * ctx_max + 1) };
            let idx: Vec<i32> = pos
                .iter()
                .flat_map(|&p| {
                    (0..k)
                        .map(|_| match rng.below(6) {
                            0 => -1,
                            1 => (p as usize + 1 + rng.below(4)) as i32,
                            _ => rng.below(p as usize + 1) as i32,
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
            (idx, k)
        });
        // Tokens with magnitudes per token from 2^-3 to 1 (scales of several exponents).
        let tb = if bf16 { 2 * 576 } else { LATENT.token_bytes() };
        let mut cache = vec![0u8; slots * tb];
        let mut decoded = vec![0f32; slots * 576];
        for s in 0..slots {
            let mag = 2f32.powi(rng.below(4) as i32 - 3);
            let x = rng.values(576, -mag, mag);
            let t = &mut cache[s * tb..(s + 1) * tb];
            let row = &mut decoded[s * 576..(s + 1) * 576];
            if bf16 {
                for (i, (v, r)) in x.iter().zip(row.iter_mut()).enumerate() {
                    let b = half::bf16::from_f32(*v);
                    t[2 * i..2 * i + 2].copy_from_slice(&b.to_le_bytes());
                    *r = b.to_f32();
                }
            } else {
                LATENT.encode(&x[..512], &x[512..], t);
                LATENT.decode(t, row);
            }
        }
        let q = rng.values(rows * heads * 576, -1.0, 1.0);
        // V3.2's softmax scale is about 0.13 (1/sqrt(192) times YaRN's mscale²); a range around it
        // that keeps the scores within the bound's first-order regime.
        let scale = rng.range(0.01, 0.05);
        let cpu = CpuBackend::new();
        let mut want = tensor(rows, heads * 512, vec![0.0; rows * heads * 512]);
        let topk_t = topk
            .as_ref()
            .map(|(idx, k)| IntTensor::<CpuBackend>::from_vec(rows, *k, idx.clone()).expect("cpu int tensor"));
        let cpu_cache = if bf16 {
            let mut c = cpu.cache_zeros(CacheFormat::Bf16 { cols: 576 }, slots).expect("cpu bf16 cache");
            cpu.cache_write(&mut c, &cache).expect("cpu cache_write");
            c
        } else {
            cache_f32(slots, 576, decoded.clone())
        };
        cpu.mla_decode(
            &tensor(rows, heads * 576, q.clone()),
            &cpu_cache,
            Queries { pos: &pos, seq: &seq },
            Pages { block_size, blocks: &ids, starts: &starts },
            topk_t.as_ref(),
            scale,
            d,
            &mut want,
        )
        .expect("cpu mla_decode");
        let want = want.data().to_vec();
        Case { d, bf16, rows, q, cache, decoded, slots, block_size, blocks: ids, starts, pos, seq, topk, scale, want }
    }

    fn pages(&self) -> Pages<'_> {
        Pages { block_size: self.block_size, blocks: &self.blocks, starts: &self.starts }
    }

    /// The exact output and tolerances of every (row, head).
    fn references(&self) -> Vec<mla_bound::Reference> {
        let pages = self.pages();
        let mut out = Vec::with_capacity(self.rows * self.d.heads);
        for i in 0..self.rows {
            let p = self.pos[i] as usize;
            let entries: Vec<usize> = match &self.topk {
                Some((idx, k)) => idx[i * k..(i + 1) * k]
                    .iter()
                    .filter(|&&t| t >= 0 && t as usize <= p)
                    .map(|&t| t as usize)
                    .collect(),
                None => (0..=p).collect(),
            };
            let keys: Vec<&[f32]> = entries
                .iter()
                .map(|&t| {
                    let s = pages.slot(self.seq[i] as usize, t).expect("a page");
                    &self.decoded[s * 576..(s + 1) * 576]
                })
                .collect();
            for h in 0..self.d.heads {
                let q = &self.q[(i * self.d.heads + h) * 576..][..576];
                out.push(mla_bound::reference(q, &keys, self.scale, 512, 64));
            }
        }
        out
    }

    fn shape(&self) -> String {
        let k = self.topk.as_ref().map(|t| t.1);
        format!(
            "{} rows at {:?}, {} heads, block {} ({} slots), top-k {k:?}, {} cache",
            self.rows,
            self.pos,
            self.d.heads,
            self.block_size,
            self.slots,
            if self.bf16 { "bf16" } else { "FP8" }
        )
    }
}

/// Shapes whose f64 reference stays quick: large batches at short contexts, long contexts (that
/// split) at small batches; heads 64, 128 or any count up to 130.
fn strategy() -> impl Strategy<Value = (usize, usize, usize, usize, bool, u64)> {
    let heads = prop_oneof![2 => Just(128usize), 2 => Just(64usize), 1 => 1usize..=130];
    let block = prop_oneof![3 => Just(64usize), 1 => 1usize..=64];
    let shape = prop_oneof![
        2 => (1usize..=4, 1usize..=2500),
        1 => (5usize..=40, 1usize..=200),
        1 => (100usize..=130, 1usize..=12),
    ];
    (heads, shape, block, any::<bool>(), any::<u64>()).prop_map(|(h, (rows, ctx), b, sparse, seed)| {
        // A few million f64 products per case at most.
        let rows = if h * rows * ctx > 4_000_000 { (4_000_000 / (h * ctx)).max(1) } else { rows };
        (h, rows, ctx, b, sparse, seed)
    })
}

fn upload_ints(dev: &CudaDevice, data: &[i32]) -> CudaSlice<i32> {
    dev.upload(if data.is_empty() { &[0] } else { data }).expect("upload")
}

/// The fast kernel against the exact result, the CPU and the simple CUDA kernel, each within the
/// sum of the two sides' tolerances: over the FP8 cache, or the bf16 cache (both kernels read it
/// as it is).
fn check_fast(
    dev: &CudaDevice,
    c: &Case,
    worst: &std::cell::RefCell<Worst>,
    simple_worst: &std::cell::RefCell<Worst>,
) -> Result<(), TestCaseError> {
    let d = c.d;
    let op = if c.bf16 { "mla_decode_bf16" } else { "mla_decode_fp8" };
    let out_len = c.rows * d.heads * 512;
    let topk_dev = c.topk.as_ref().map(|(idx, k)| (upload_ints(dev, idx), *k));
    let topk_arg = topk_dev.as_ref().map(|(t, k)| (t, *k));
    let queries = Queries { pos: &c.pos, seq: &c.seq };
    let q_dev = upload(dev, &c.q);
    let mut out_dev = zeros::<f32>(dev, out_len);
    let cache_dev = dev.upload(&c.cache).expect("upload cache");
    if c.bf16 {
        dev.mla_decode_bf16(
            &q_dev,
            c.rows,
            &cache_dev,
            576,
            c.slots,
            queries,
            c.pages(),
            topk_arg,
            c.scale,
            d,
            &mut out_dev,
        )
    } else {
        dev.mla_decode_fp8(
            &q_dev,
            c.rows,
            &cache_dev,
            LATENT,
            c.slots,
            queries,
            c.pages(),
            topk_arg,
            c.scale,
            d,
            &mut out_dev,
        )
    }
    .expect(op);
    let got = download(dev, &out_dev, out_len);
    let mut simple_dev = zeros::<f32>(dev, out_len);
    let decoded_dev = upload(dev, &c.decoded);
    let simple_cache = if c.bf16 { CacheView::Bf16(&cache_dev, 576) } else { CacheView::F32(&decoded_dev) };
    dev.mla_decode(&q_dev, c.rows, simple_cache, c.slots, queries, c.pages(), topk_arg, c.scale, d, &mut simple_dev)
        .expect("cuda mla_decode");
    let simple = download(dev, &simple_dev, out_len);
    let refs = c.references();
    let at = |i: usize| (&refs[i / 512], i % 512);
    let exact: Vec<f32> = (0..out_len).map(|i| at(i).0.exact[at(i).1] as f32).collect();
    let shape = c.shape();
    compare(
        &format!("{op} vs exact"),
        &shape,
        d.heads * 512,
        &got,
        &exact,
        |i| {
            let (r, col) = at(i);
            r.bound(col, r.gpu) + f64::from(exact[i]).abs() * ULP
        },
        &std::cell::RefCell::new(Worst::default()),
    )?;
    compare(
        &format!("{op} vs simple"),
        &shape,
        d.heads * 512,
        &got,
        &simple,
        |i| {
            let (r, col) = at(i);
            r.bound(col, r.gpu + r.simple)
        },
        simple_worst,
    )?;
    compare(
        op,
        &shape,
        d.heads * 512,
        &got,
        &c.want,
        |i| {
            let (r, col) = at(i);
            r.bound(col, r.gpu + r.cpu)
        },
        worst,
    )
}

#[test]
fn mla_decode_fp8_matches_cpu_and_simple_kernel() {
    let Some(dev) = device() else { return };
    let simple_worst = std::cell::RefCell::new(Worst::default());
    run("mla_decode_fp8", strategy(), |params, worst| check_fast(dev, &Case::new(params, false), worst, &simple_worst));
    simple_worst.borrow().print("mla_decode_fp8 vs the simple CUDA decode");
}

/// The bf16 cache: the CPU's and the simple kernel's `mla_decode` read the same bf16 rows.
#[test]
fn mla_decode_bf16_matches_cpu_and_simple_kernel() {
    let Some(dev) = device() else { return };
    let simple_worst = std::cell::RefCell::new(Worst::default());
    run("mla_decode_bf16", strategy(), |params, worst| check_fast(dev, &Case::new(params, true), worst, &simple_worst));
    simple_worst.borrow().print("mla_decode_bf16 vs the simple CUDA decode");
}

/// Dims the kernel does not take are an error (the caller falls back to the simple kernel), as
/// are a cache too short for its slots and positions without pages.
#[test]
fn mla_decode_fp8_refuses_what_it_cannot_do() {
    let Some(dev) = device() else { return };
    let c = Case::new((64, 2, 100, 64, false, 5), false);
    let q = upload(dev, &c.q);
    let cache = dev.upload(&c.cache).expect("upload cache");
    let mut out = zeros::<f32>(dev, c.rows * 64 * 512);
    let queries = Queries { pos: &c.pos, seq: &c.seq };
    let other = MlaDims { kv_lora: 256, ..c.d };
    let call = |d: MlaDims, latent: LatentFp8, slots: usize, pages: Pages, out: &mut CudaSlice<f32>| {
        dev.mla_decode_fp8(&q, c.rows, &cache, latent, slots, queries, pages, None, c.scale, d, out)
    };
    assert!(call(other, LATENT, c.slots, c.pages(), &mut out).is_err());
    assert!(call(c.d, LatentFp8 { nope: 512, rope: 32 }, c.slots, c.pages(), &mut out).is_err());
    assert!(call(c.d, LATENT, c.slots + 1, c.pages(), &mut out).is_err());
    let short = Pages { block_size: c.block_size, blocks: &c.blocks[..0], starts: &[0, 0, 0, 0, 0, 0, 0, 0, 0] };
    assert!(call(c.d, LATENT, c.slots, short, &mut out).is_err());
    assert!(call(c.d, LATENT, c.slots, c.pages(), &mut out).is_ok());
}

/// The bf16 kernel refuses the same, and rows other than 576 wide.
#[test]
fn mla_decode_bf16_refuses_what_it_cannot_do() {
    let Some(dev) = device() else { return };
    let c = Case::new((64, 2, 100, 64, false, 5), true);
    let q = upload(dev, &c.q);
    let cache = dev.upload(&c.cache).expect("upload cache");
    let mut out = zeros::<f32>(dev, c.rows * 64 * 512);
    let queries = Queries { pos: &c.pos, seq: &c.seq };
    let other = MlaDims { kv_lora: 256, ..c.d };
    let call = |d: MlaDims, cols: usize, slots: usize, pages: Pages, out: &mut CudaSlice<f32>| {
        dev.mla_decode_bf16(&q, c.rows, &cache, cols, slots, queries, pages, None, c.scale, d, out)
    };
    assert!(call(other, 576, c.slots, c.pages(), &mut out).is_err());
    assert!(call(c.d, 575, c.slots, c.pages(), &mut out).is_err());
    assert!(call(c.d, 576, c.slots + 1, c.pages(), &mut out).is_err());
    let short = Pages { block_size: c.block_size, blocks: &c.blocks[..0], starts: &[0, 0, 0, 0, 0, 0, 0, 0, 0] };
    assert!(call(c.d, 576, c.slots, short, &mut out).is_err());
    assert!(call(c.d, 576, c.slots, c.pages(), &mut out).is_ok());
}

/// The CPU backend over the decoded cache (or the bf16 cache) lies within its tolerance of the
/// exact result: checks the reference and the CPU's half of the bound. Runs without a GPU.
#[test]
fn mla_fp8_reference_bounds_the_cpu() {
    let strategy = (strategy(), any::<bool>());
    run("mla_decode over the decoded FP8 or the bf16 cache (cpu vs f64)", strategy, |(params, bf16), worst| {
        let c = Case::new(params, bf16);
        let refs = c.references();
        let n = c.want.len();
        let exact: Vec<f32> = (0..n).map(|i| refs[i / 512].exact[i % 512] as f32).collect();
        compare(
            "cpu mla_decode",
            &c.shape(),
            c.d.heads * 512,
            &c.want,
            &exact,
            |i| {
                let r = &refs[i / 512];
                r.bound(i % 512, r.cpu) + f64::from(exact[i]).abs() * ULP
            },
            worst,
        )
    });
}
