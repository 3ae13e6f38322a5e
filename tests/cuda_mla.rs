//! The CUDA MLA family (`src/backend/cuda/mla.rs`) against the CPU backend, on random shapes:
//! the paged cache's row copies, the absorption of `kv_b`, decode attention over random page
//! tables and prefill attention over random sequences, dense-causal and sparse (top-k with -1s,
//! duplicates and entries past the query's position). Without a GPU every GPU test says so and
//! passes (`FLASHSEEK_REQUIRE_GPU=1` makes a missing GPU fail them); the tests that check this
//! file's own f64 references and bounds against the CPU backend run everywhere.
#![cfg(feature = "cuda")]

mod cuda_common;

use cuda_common::Rng;
use cuda_common::*;
use cudarc::driver::CudaSlice;
use flashseek::backend::cuda::CudaDevice;
use flashseek::backend::{Backend, CpuBackend, MlaDims, Pages, PrefillSeq, Queries};
use flashseek::model::weights::{HostLinear, HostTensor};
use flashseek::tensor::IntTensor;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// DeepSeek-V3.2's MLA: 128 heads, 128 + 64 query columns, 128 value columns, a 512 + 64 latent.
const V32: MlaDims = MlaDims { heads: 128, nope: 128, rope: 64, v: 128, kv_lora: 512 };

fn int_tensor(rows: usize, cols: usize, data: Vec<i32>) -> IntTensor<CpuBackend> {
    IntTensor::<CpuBackend>::from_vec(rows, cols, data).expect("cpu int tensor")
}

fn upload_ints(dev: &CudaDevice, data: &[i32]) -> CudaSlice<i32> {
    dev.upload(if data.is_empty() { &[0] } else { data }).expect("upload")
}

/// A few NaNs at random places of `x` (none where `x` is empty).
fn sprinkle_nans(rng: &mut Rng, x: &mut [f32], count: usize) {
    for _ in 0..count {
        if !x.is_empty() {
            let i = rng.below(x.len());
            x[i] = f32::NAN;
        }
    }
}

// ---- the paged cache's row copies ----

#[test]
fn kv_store_matches_cpu() {
    let Some(dev) = device() else { return };
    let strategy = (1usize..200, prop_oneof![1usize..700, Just(576usize)], 0usize..80, any::<u64>());
    run("kv_store", strategy, |(cache_rows, cache_cols, n_slots, seed), worst| {
        let mut rng = Rng(seed);
        // Repeated slots too: the last row written wins.
        let slots: Vec<u32> = (0..n_slots).map(|_| rng.below(cache_rows) as u32).collect();
        let n = rng.below(cache_cols + 1);
        let dst_col = rng.below(cache_cols - n + 1);
        let src_cols = n + rng.below(40);
        let src_col = rng.below(src_cols - n + 1);
        let cache = rng.values(cache_rows * cache_cols, -1.0, 1.0);
        let src = rng.values(n_slots * src_cols, -1.0, 1.0);
        let mut cache_dev = upload(dev, &cache);
        dev.kv_store(&mut cache_dev, cache_rows, cache_cols, &slots, &upload(dev, &src), src_cols, src_col, dst_col, n)
            .expect("cuda kv_store");
        let got = download(dev, &cache_dev, cache.len());

        // The CPU's in-order writes (its kv_store writes whole rows: the columns are the launcher's).
        let mut want = cache;
        for (i, &s) in slots.iter().enumerate() {
            let (d, r) = (s as usize * cache_cols + dst_col, i * src_cols + src_col);
            want[d..d + n].copy_from_slice(&src[r..r + n]);
        }
        let shape =
            format!("{n_slots} rows [{src_cols}] cols {src_col}+{n} -> [{cache_rows}x{cache_cols}] col {dst_col}");
        compare("kv_store", &shape, cache_cols, &got, &want, |_| 0.0, worst)
    });
}

#[test]
fn kv_gather_matches_cpu() {
    let Some(dev) = device() else { return };
    let cpu = CpuBackend::new();
    let strategy = (1usize..200, prop_oneof![1usize..700, Just(576usize)], 0usize..80, any::<u64>());
    run("kv_gather", strategy, |(cache_rows, cache_cols, n_slots, seed), worst| {
        let mut rng = Rng(seed);
        let slots: Vec<u32> = (0..n_slots).map(|_| rng.below(cache_rows) as u32).collect();
        let dst_cols = rng.below(cache_cols + 1);
        let col = rng.below(cache_cols - dst_cols + 1);
        let cache = rng.with_specials(cache_rows * cache_cols, -1.0, 1.0, 0.01);
        let mut dst_dev = zeros::<f32>(dev, n_slots * dst_cols);
        dev.kv_gather(&upload(dev, &cache), cache_rows, cache_cols, &slots, col, &mut dst_dev, dst_cols)
            .expect("cuda kv_gather");
        let got = download(dev, &dst_dev, n_slots * dst_cols);

        let mut want = tensor(n_slots, dst_cols, vec![0.0; n_slots * dst_cols]);
        cpu.kv_gather(&cache_f32(cache_rows, cache_cols, cache), &slots, col, &mut want).expect("cpu kv_gather");
        let shape = format!("{n_slots} slots of [{cache_rows}x{cache_cols}] cols {col}+{dst_cols}");
        compare("kv_gather", &shape, dst_cols, &got, want.data(), |_| 0.0, worst)
    });
}

// ---- absorption of kv_b ----

fn weight_fmt_strategy() -> impl Strategy<Value = WeightFmt> {
    prop_oneof![Just(WeightFmt::F32), Just(WeightFmt::Bf16), Just(WeightFmt::F16), Just(WeightFmt::Fp8)]
}

/// Small random MLA shapes (heads past one decode group of 8 too), or V3.2's.
fn dims_strategy() -> impl Strategy<Value = MlaDims> {
    let small = (1usize..=20, 0usize..48, 0usize..24, 1usize..48, 1usize..200)
        // Heads with no query columns are malformed dims, which both backends reject.
        .prop_map(|(heads, nope, rope, v, kv_lora)| MlaDims {
            heads,
            nope: if nope + rope == 0 { 1 } else { nope },
            rope,
            v,
            kv_lora,
        });
    prop_oneof![6 => small, 1 => Just(V32)]
}

/// `absorb_q` (or `absorb_out`, where `values`) on both backends for `kv_b` of `fmt`, compared
/// within [`gemm_bound`]: per output the same f32 products (activations times kv_b's values as
/// both dequantize them) summed in another order, over k = nope (or kv_lora) columns. The
/// rotary columns absorb_q copies are bit-exact. One case in four has NaNs in the activations.
fn absorb_matches_cpu(values: bool) {
    let Some(dev) = device() else { return };
    let cpu = CpuBackend::new();
    let op = if values { "absorb_out" } else { "absorb_q" };
    let strategy = (dims_strategy(), 0usize..70, 0usize..3, weight_fmt_strategy(), 0usize..4, any::<u64>());
    run(op, strategy, |(d, rows, extra_rows, fmt, specials, seed), worst| {
        // V3.2's 128 heads at a few rows: the f64 reference stays quick.
        let rows = if d.heads > 20 { rows % 6 } else { rows };
        let mut rng = Rng(seed);
        let kvw = d.nope + d.v;
        let (host, w) = random_linear(&mut rng, fmt, d.heads * kvw, d.kv_lora);
        let (x_rows, x_cols, out_cols) = if values {
            (rows, d.heads * d.kv_lora, d.heads * d.v)
        } else {
            // absorb_q reads the first `rows` rows of a taller q.
            (rows + extra_rows, d.heads * d.qk(), d.heads * d.latent())
        };
        let mut x = rng.values(x_rows * x_cols, -2.0, 2.0);
        if specials == 0 {
            sprinkle_nans(&mut rng, &mut x, 2);
        }
        let w_dev = dev.load_linear(&host).expect("cuda load_linear");
        let mut out_dev = zeros::<f32>(dev, rows * out_cols);
        let x_dev = upload(dev, &x);
        let w_cpu = cpu.load_linear(&host).expect("cpu load_linear");
        let mut want = tensor(rows, out_cols, vec![0.0; rows * out_cols]);
        let x_t = tensor(x_rows, x_cols, x.clone());
        if values {
            dev.absorb_out(&x_dev, rows, &w_dev, d, &mut out_dev).expect("cuda absorb_out");
            cpu.absorb_out(&x_t, &w_cpu, d, &mut want).expect("cpu absorb_out");
        } else {
            dev.absorb_q(&x_dev, rows, &w_dev, d, &mut out_dev).expect("cuda absorb_q");
            cpu.absorb_q(&x_t, &w_cpu, d, &mut want).expect("cpu absorb_q");
        }
        let got = download(dev, &out_dev, rows * out_cols);
        // Per output: its absolute products' sum and k, or None where it is a copy.
        let bound = |i: usize| -> f64 {
            let (r, c) = (i / out_cols, i % out_cols);
            if values {
                let (h, j) = (c / d.v, c % d.v);
                let xr = &x[r * x_cols + h * d.kv_lora..][..d.kv_lora];
                let wr = &w[(h * kvw + d.nope + j) * d.kv_lora..][..d.kv_lora];
                let p = xr.iter().zip(wr).map(|(&a, &b)| f64::from(a.abs()) * f64::from(b.abs())).sum();
                gemm_bound(p, d.kv_lora)
            } else {
                let (h, j) = (c / d.latent(), c % d.latent());
                if j >= d.kv_lora {
                    return 0.0;
                }
                let xr = &x[r * x_cols + h * d.qk()..][..d.nope];
                let p = (0..d.nope)
                    .map(|n| f64::from(xr[n].abs()) * f64::from(w[(h * kvw + n) * d.kv_lora + j].abs()))
                    .sum();
                gemm_bound(p, d.nope)
            }
        };
        let shape = format!("{rows} rows, {d:?}, kv_b {fmt:?}");
        compare(op, &shape, out_cols, &got, want.data(), bound, worst)
    });
}

#[test]
fn absorb_q_matches_cpu() {
    absorb_matches_cpu(false);
}

#[test]
fn absorb_out_matches_cpu() {
    absorb_matches_cpu(true);
}

// ---- attention: the reference and its bound ----

/// The exact (f64) attention output of one query and head, and for each output column the bound
/// on |gpu - cpu|. `keys[j]` and `values[j]` are the columns of the j-th attended key (as the
/// query multiplies them, `l` of them) and its value; keys repeat where a top-k row does.
///
/// The bound, with u = 2^-24, n keys, s_j = scale·(q·k_j) exact, P = max_j |scale|·Σ_d |q_d·k_jd|
/// (over keys where that is finite), π = softmax(s) and A_c = Σ_j π_j·|v_jc|:
/// 1. Scores: either backend sums the l products in some order (the CPU's prefill as two dots
///    added), then multiplies by scale: |ŝ_j - s_j| <= γ_{l+2}·P =: δ (Higham 3.1, γ_k = k·u/(1 - k·u)).
/// 2. The exact softmax of scores off by at most δ has weights within e^{±2δ} of π's, so its
///    output is within (e^{2δ} - 1)·A_c of the exact one and its Σ π̂_j·|v_jc| within e^{2δ}·A_c.
/// 3. From the scores on, an output is Σ_j w_j·v_jc / Σ_j w_j (the CPU multiplies by a rounded
///    1/Σ instead) where the computed weights w_j are exp(ŝ_j - max) times (1 + θ_j), and every
///    product w_j·v_jc and w_j reaches its sum through at most N roundings; that is within
///    (2θ + 2γ_N + d)·Σ π̂_j·|v_jc| of the softmax of ŝ to first order, d the final division's
///    roundings. Each exp's argument is rounded (relative u) and the arguments of the exps a
///    weight goes through add up to max - ŝ_j <= 2P, so together they move the weight by at
///    most 2u·P. The CPU: one expf (glibc, within 1 ulp: 2u), θ_C = 2u + 2u·P, N = n, d = 2u.
///    The GPU: one expf (CUDA, within 2 ulp: 4u) per key and per rescale of the running maximum
///    (at most one per tile of keys, plus the split combine: fewer than n + 2 in all),
///    θ_G = 4u·(n + 2) + 2u·P; each product meets at most n additions, n + 1 rescales and the
///    combine's at most 64 splits: N = 2n + 68, d = u.
///
/// Summed over both backends, |gpu - cpu| is at most 2(e^{2δ} - 1)·A_c plus
/// e^{2δ}·(2θ_G + 2θ_C + 2γ_{2n+68} + 2γ_n + 3u)·A_c, which is A_c·u·((4l + 16)·P + 14n + 159)
/// to first order. The tests keep δ and every u-term here below 2^-9, so the second-order terms
/// stay under 1% of the first; the factor 1.05 covers them, and one f32 MIN_POSITIVE keeps the
/// bound positive where A_c is 0 (no keys: both write 0).
fn attention_ref(q: &[f32], keys: &[Vec<f32>], values: &[&[f32]], scale: f32, vdim: usize) -> (Vec<f64>, Vec<f64>) {
    let n = keys.len();
    if n == 0 {
        return (vec![0.0; vdim], vec![f64::from(f32::MIN_POSITIVE); vdim]);
    }
    let scale = f64::from(scale);
    let mut s = Vec::with_capacity(n);
    let mut p_max = 0.0f64;
    for k in keys {
        let dot: f64 = q.iter().zip(k).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
        let abs: f64 = q.iter().zip(k).map(|(&a, &b)| (f64::from(a) * f64::from(b)).abs()).sum();
        s.push(dot * scale);
        if (abs * scale.abs()).is_finite() {
            p_max = p_max.max(abs * scale.abs());
        }
    }
    let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = s.iter().map(|&x| (x - m).exp()).collect();
    let sum: f64 = w.iter().sum();
    let u = ULP / 2.0;
    let l = q.len();
    let delta = (l + 2) as f64 * u * p_max;
    assert!(delta < 1.0 / 512.0 && (2 * n + 68) as f64 * u < 1.0 / 512.0, "data past the bound's first-order regime");
    let tolerance = u * ((4 * l + 16) as f64 * p_max + (14 * n + 159) as f64) * 1.05;
    let mut exact = vec![0.0; vdim];
    let mut bound = vec![0.0; vdim];
    for c in 0..vdim {
        let (mut o, mut a) = (0.0, 0.0);
        for (wj, v) in w.iter().zip(values) {
            o += wj / sum * f64::from(v[c]);
            a += wj / sum * f64::from(v[c]).abs();
        }
        exact[c] = o;
        bound[c] = a * tolerance + f64::from(f32::MIN_POSITIVE);
    }
    (exact, bound)
}

/// The positions query row `row` at `pos` attends to, as the CPU backend lists them: the
/// entries of its top-k row within `0..=pos` (duplicates kept), or all of `0..=pos`.
fn candidates(topk: Option<(&[i32], usize)>, row: usize, pos: usize) -> Vec<usize> {
    match topk {
        Some((idx, k)) => {
            idx[row * k..(row + 1) * k].iter().filter(|&&t| t >= 0 && t as usize <= pos).map(|&t| t as usize).collect()
        }
        None => (0..=pos).collect(),
    }
}

/// A top-k row for a query at `pos`: -1s, positions past `pos` and repeats among the rest.
fn random_topk_row(rng: &mut Rng, k: usize, pos: usize) -> Vec<i32> {
    (0..k).map(|_| if rng.below(5) == 0 { -1 } else { rng.below(pos + 4) as i32 }).collect()
}

// ---- decode ----

/// Block tables for sequences of `ctx` positions: each sequence gets its pages from a shuffled
/// pool with a few spare blocks, so pages are out of order and some cache rows belong to none.
struct Paged {
    block_size: usize,
    blocks: Vec<u32>,
    starts: Vec<u32>,
    cache_rows: usize,
}

impl Paged {
    fn new(rng: &mut Rng, ctx: &[usize], block_size: usize) -> Self {
        let pages: Vec<usize> = ctx.iter().map(|&c| c.div_ceil(block_size)).collect();
        let total: usize = pages.iter().sum();
        let pool = total + rng.below(4);
        let mut ids: Vec<u32> = (0..pool as u32).collect();
        for i in (1..ids.len()).rev() {
            ids.swap(i, rng.below(i + 1));
        }
        let mut starts = vec![0u32];
        for p in &pages {
            starts.push(starts.last().copied().unwrap_or(0) + *p as u32);
        }
        ids.truncate(total);
        Paged { block_size, blocks: ids, starts, cache_rows: pool * block_size }
    }

    fn pages(&self) -> Pages<'_> {
        Pages { block_size: self.block_size, blocks: &self.blocks, starts: &self.starts }
    }
}

fn block_size_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![3 => 1usize..=64, 1 => Just(64usize), 1 => Just(1usize)]
}

/// One random decode call: queries of `rows` rows over `n_seqs` sequences of up to `ctx_max`
/// positions, with or without top-k, and what the CPU backend makes of it.
struct DecodeCase {
    d: MlaDims,
    rows: usize,
    q: Vec<f32>,
    cache: Vec<f32>,
    paged: Paged,
    pos: Vec<u32>,
    seq: Vec<u32>,
    topk: Option<(Vec<i32>, usize)>,
    scale: f32,
    want: Vec<f32>,
}

impl DecodeCase {
    #[allow(clippy::too_many_arguments)]
    fn new(
        d: MlaDims,
        rows: usize,
        n_seqs: usize,
        ctx_max: usize,
        block_size: usize,
        sparse: bool,
        nans: bool,
        seed: u64,
    ) -> Self {
        let mut rng = Rng(seed);
        let lat = d.latent();
        let ctx: Vec<usize> = (0..n_seqs).map(|_| 1 + rng.below(ctx_max)).collect();
        let paged = Paged::new(&mut rng, &ctx, block_size);
        let mut seq = Vec::with_capacity(rows);
        let mut pos = Vec::with_capacity(rows);
        for _ in 0..rows {
            let s = rng.below(n_seqs);
            // Mostly the sequence's last position, as in decoding; sometimes an earlier one.
            let p = if rng.below(3) == 0 { rng.below(ctx[s]) } else { ctx[s] - 1 };
            seq.push(s as u32);
            pos.push(p as u32);
        }
        let topk = sparse.then(|| {
            let k = if rng.below(2) == 0 { rng.below(40) } else { rng.below(2 * ctx_max + 1) };
            let idx: Vec<i32> = pos.iter().flat_map(|&p| random_topk_row(&mut rng, k, p as usize)).collect();
            (idx, k)
        });
        let mut q = rng.values(rows * d.heads * lat, -1.0, 1.0);
        let mut cache = rng.values(paged.cache_rows * lat, -1.0, 1.0);
        if nans {
            sprinkle_nans(&mut rng, &mut q, 1);
            sprinkle_nans(&mut rng, &mut cache, 2);
        }
        // A softmax scale of 0.5..4 over the query head's width, capped so that the scores stay
        // in the first-order regime of `attention_ref`'s bound: with values in [-1, 1] a score's
        // P is at most scale·lat, and (lat + 2)·u·P must stay below 2^-9.
        let cap = 16384.0 / (lat * (lat + 2)) as f32;
        let scale = (rng.range(0.5, 4.0) / (d.nope + d.rope).max(1) as f32).min(cap);
        let cpu = CpuBackend::new();
        let mut want = tensor(rows, d.heads * d.kv_lora, vec![0.0; rows * d.heads * d.kv_lora]);
        let topk_t = topk.as_ref().map(|(idx, k)| int_tensor(rows, *k, idx.clone()));
        let queries = Queries { pos: &pos, seq: &seq };
        cpu.mla_decode(
            &tensor(rows, d.heads * lat, q.clone()),
            &cache_f32(paged.cache_rows, lat, cache.clone()),
            queries,
            paged.pages(),
            topk_t.as_ref(),
            scale,
            d,
            &mut want,
        )
        .expect("cpu mla_decode");
        DecodeCase { d, rows, q, cache, paged, pos, seq, topk, scale, want: want.data().to_vec() }
    }

    /// The exact outputs and the bounds of [`attention_ref`], row by row and head by head.
    fn reference(&self) -> (Vec<f64>, Vec<f64>) {
        let (d, lat) = (self.d, self.d.latent());
        let topk = self.topk.as_ref().map(|(idx, k)| (idx.as_slice(), *k));
        let (mut exact, mut bounds) = (Vec::new(), Vec::new());
        for i in 0..self.rows {
            let pages = self.paged.pages();
            let rows: Vec<&[f32]> = candidates(topk, i, self.pos[i] as usize)
                .into_iter()
                .map(|t| {
                    let s = pages.slot(self.seq[i] as usize, t).expect("a page");
                    &self.cache[s * lat..(s + 1) * lat]
                })
                .collect();
            let keys: Vec<Vec<f32>> = rows.iter().map(|r| r.to_vec()).collect();
            for h in 0..d.heads {
                let q = &self.q[(i * d.heads + h) * lat..][..lat];
                let (e, b) = attention_ref(q, &keys, &rows, self.scale, d.kv_lora);
                exact.extend(e);
                bounds.extend(b);
            }
        }
        (exact, bounds)
    }

    fn shape(&self) -> String {
        let k = self.topk.as_ref().map(|t| t.1);
        format!(
            "{} rows at {:?}, {:?}, block {} ({} cache rows), top-k {k:?}",
            self.rows, self.pos, self.d, self.paged.block_size, self.paged.cache_rows
        )
    }
}

fn decode_strategy() -> impl Strategy<Value = (MlaDims, usize, usize, usize, usize, bool, bool, u64)> {
    (
        dims_strategy(),
        1usize..7,
        1usize..4,
        // Long contexts split the keys (64 at least per split).
        prop_oneof![4 => 1usize..90, 1 => 200usize..1500],
        block_size_strategy(),
        any::<bool>(),
        prop_oneof![3 => Just(false), 1 => Just(true)],
        any::<u64>(),
    )
}

/// V3.2's 128 heads at short contexts only: the f64 reference stays quick.
fn decode_case(
    (d, rows, n_seqs, ctx_max, block_size, sparse, nans, seed): (MlaDims, usize, usize, usize, usize, bool, bool, u64),
) -> DecodeCase {
    let (rows, ctx_max) = if d.heads > 20 { (rows.min(3), ctx_max.min(70)) } else { (rows, ctx_max) };
    DecodeCase::new(d, rows, n_seqs, ctx_max, block_size, sparse, nans, seed)
}

#[test]
fn mla_decode_matches_cpu() {
    let Some(dev) = device() else { return };
    run("mla_decode", decode_strategy(), |params, worst| {
        let c = decode_case(params);
        let d = c.d;
        let out_len = c.rows * d.heads * d.kv_lora;
        let topk_dev = c.topk.as_ref().map(|(idx, k)| (upload_ints(dev, idx), *k));
        let mut out_dev = zeros::<f32>(dev, out_len);
        dev.mla_decode(
            &upload(dev, &c.q),
            c.rows,
            &upload(dev, &c.cache),
            c.paged.cache_rows,
            Queries { pos: &c.pos, seq: &c.seq },
            c.paged.pages(),
            topk_dev.as_ref().map(|(t, k)| (t, *k)),
            c.scale,
            d,
            &mut out_dev,
        )
        .expect("cuda mla_decode");
        let got = download(dev, &out_dev, out_len);
        let (_, bounds) = c.reference();
        compare("mla_decode", &c.shape(), d.heads * d.kv_lora, &got, &c.want, |i| bounds[i], worst)
    });
}

/// The reference and bound of the decode test hold for the CPU backend itself: its outputs lie
/// within the bound of the exact ones (the bound counts both backends' errors, so this checks
/// the reference and the bound's CPU half with room to spare). Runs without a GPU.
#[test]
fn mla_decode_reference_bounds_the_cpu() {
    run("mla_decode (cpu vs f64)", decode_strategy(), |params, worst| {
        let c = decode_case(params);
        let (exact, bounds) = c.reference();
        let exact: Vec<f32> = exact.iter().map(|&x| x as f32).collect();
        check_cpu_against_exact("mla_decode", &c.shape(), c.d.heads * c.d.kv_lora, &c.want, &exact, &bounds, worst)
    });
}

/// The CPU's `got` against the exact reference (rounded to f32, off by at most half an ulp more),
/// where the CPU's output is finite; NaN positions are the GPU test's business.
fn check_cpu_against_exact(
    op: &str,
    shape: &str,
    cols: usize,
    got: &[f32],
    exact: &[f32],
    bounds: &[f64],
    worst: &std::cell::RefCell<Worst>,
) -> Result<(), TestCaseError> {
    let finite: Vec<usize> = (0..got.len()).filter(|&i| got[i].is_finite()).collect();
    let got: Vec<f32> = finite.iter().map(|&i| got[i]).collect();
    let want: Vec<f32> = finite.iter().map(|&i| exact[i]).collect();
    let slack = |i: usize| bounds[finite[i]] + f64::from(want[i]).abs() * ULP;
    compare(op, shape, cols, &got, &want, slack, worst)
}

// ---- prefill ----

/// One random prefill call: sequences with gaps between their query rows and their kv rows,
/// with or without top-k, and what the CPU backend makes of it (rows outside the sequences keep
/// the sentinel both start with).
struct PrefillCase {
    d: MlaDims,
    q_rows: usize,
    kv_rows: usize,
    q: Vec<f32>,
    kv: Vec<f32>,
    kpe: Vec<f32>,
    seqs: Vec<PrefillSeq>,
    topk: Option<(Vec<i32>, usize)>,
    scale: f32,
    sentinel: Vec<f32>,
    want: Vec<f32>,
}

impl PrefillCase {
    fn new(d: MlaDims, n_seqs: usize, q_max: usize, sparse: bool, nans: bool, seed: u64) -> Self {
        let mut rng = Rng(seed);
        let (mut seqs, mut q_rows, mut kv_rows) = (Vec::new(), 0, 0);
        for _ in 0..n_seqs {
            let q_start = q_rows + rng.below(3);
            let q_len = rng.below(q_max + 1);
            let start_pos = if rng.below(3) == 0 { 0 } else { rng.below(40) };
            let kv_start = kv_rows + rng.below(3);
            seqs.push(PrefillSeq { q_start, q_len, kv_start, start_pos });
            q_rows = q_start + q_len;
            kv_rows = kv_start + start_pos + q_len;
        }
        q_rows += rng.below(3);
        kv_rows += rng.below(3);
        let positions: Vec<usize> = (0..q_rows)
            .map(|r| {
                seqs.iter()
                    .find(|s| (s.q_start..s.q_start + s.q_len).contains(&r))
                    .map_or(0, |s| s.start_pos + r - s.q_start)
            })
            .collect();
        let topk = sparse.then(|| {
            let k = rng.below(48);
            let idx: Vec<i32> = positions.iter().flat_map(|&p| random_topk_row(&mut rng, k, p)).collect();
            (idx, k)
        });
        let kvw = d.nope + d.v;
        let mut q = rng.values(q_rows * d.heads * d.qk(), -1.0, 1.0);
        let mut kv = rng.values(kv_rows * d.heads * kvw, -1.0, 1.0);
        let kpe = rng.values(kv_rows * d.rope, -1.0, 1.0);
        if nans {
            sprinkle_nans(&mut rng, &mut q, 1);
            sprinkle_nans(&mut rng, &mut kv, 2);
        }
        let scale = rng.range(0.5, 4.0) / d.qk().max(1) as f32;
        let sentinel = rng.values(q_rows * d.heads * d.v, 10.0, 20.0);
        let cpu = CpuBackend::new();
        let mut want = tensor(q_rows, d.heads * d.v, sentinel.clone());
        let topk_t = topk.as_ref().map(|(idx, k)| int_tensor(q_rows, *k, idx.clone()));
        cpu.mla_prefill(
            &tensor(q_rows, d.heads * d.qk(), q.clone()),
            &tensor(kv_rows, d.heads * kvw, kv.clone()),
            &tensor(kv_rows, d.rope, kpe.clone()),
            &seqs,
            topk_t.as_ref(),
            scale,
            d,
            &mut want,
        )
        .expect("cpu mla_prefill");
        let want = want.data().to_vec();
        PrefillCase { d, q_rows, kv_rows, q, kv, kpe, seqs, topk, scale, sentinel, want }
    }

    /// The exact outputs and bounds of [`attention_ref`]: the sentinel, bit-exact, outside the
    /// sequences.
    fn reference(&self) -> (Vec<f64>, Vec<f64>) {
        let d = self.d;
        let kvw = d.nope + d.v;
        let mut exact: Vec<f64> = self.sentinel.iter().map(|&x| f64::from(x)).collect();
        let mut bounds = vec![0.0; self.sentinel.len()];
        let topk = self.topk.as_ref().map(|(idx, k)| (idx.as_slice(), *k));
        for s in &self.seqs {
            for j in 0..s.q_len {
                let row = s.q_start + j;
                let ts = candidates(topk, row, s.start_pos + j);
                for h in 0..d.heads {
                    let keys: Vec<Vec<f32>> = ts
                        .iter()
                        .map(|&t| {
                            let r = s.kv_start + t;
                            let mut k = self.kv[(r * d.heads + h) * kvw..][..d.nope].to_vec();
                            k.extend_from_slice(&self.kpe[r * d.rope..(r + 1) * d.rope]);
                            k
                        })
                        .collect();
                    let values: Vec<&[f32]> = ts
                        .iter()
                        .map(|&t| &self.kv[((s.kv_start + t) * d.heads + h) * kvw + d.nope..][..d.v])
                        .collect();
                    let q = &self.q[(row * d.heads + h) * d.qk()..][..d.qk()];
                    let (e, b) = attention_ref(q, &keys, &values, self.scale, d.v);
                    let at = (row * d.heads + h) * d.v;
                    exact[at..at + d.v].copy_from_slice(&e);
                    bounds[at..at + d.v].copy_from_slice(&b);
                }
            }
        }
        (exact, bounds)
    }

    fn shape(&self) -> String {
        let k = self.topk.as_ref().map(|t| t.1);
        format!("{:?} over q {} rows, kv {} rows, {:?}, top-k {k:?}", self.seqs, self.q_rows, self.kv_rows, self.d)
    }
}

/// Small random shapes within the kernel's 256 query and value columns, or V3.2's.
fn prefill_dims_strategy() -> impl Strategy<Value = MlaDims> {
    // Heads with no query columns are malformed dims, which both backends reject.
    let small = (1usize..=12, 0usize..64, 0usize..32, 1usize..64).prop_map(|(heads, nope, rope, v)| MlaDims {
        heads,
        nope: if nope + rope == 0 { 1 } else { nope },
        rope,
        v,
        kv_lora: 16,
    });
    prop_oneof![6 => small, 1 => Just(V32)]
}

fn prefill_strategy() -> impl Strategy<Value = (MlaDims, usize, usize, bool, bool, u64)> {
    (
        prefill_dims_strategy(),
        1usize..4,
        prop_oneof![4 => 0usize..24, 1 => 24usize..70],
        any::<bool>(),
        prop_oneof![3 => Just(false), 1 => Just(true)],
        any::<u64>(),
    )
}

fn prefill_case((d, n_seqs, q_max, sparse, nans, seed): (MlaDims, usize, usize, bool, bool, u64)) -> PrefillCase {
    let q_max = if d.heads > 20 { q_max.min(12) } else { q_max };
    PrefillCase::new(d, n_seqs, q_max, sparse, nans, seed)
}

#[test]
fn mla_prefill_matches_cpu() {
    let Some(dev) = device() else { return };
    run("mla_prefill", prefill_strategy(), |params, worst| {
        let c = prefill_case(params);
        let d = c.d;
        let topk_dev = c.topk.as_ref().map(|(idx, k)| (upload_ints(dev, idx), *k));
        let mut out_dev = upload(dev, &c.sentinel);
        dev.mla_prefill(
            &upload(dev, &c.q),
            c.q_rows,
            &upload(dev, &c.kv),
            &upload(dev, &c.kpe),
            c.kv_rows,
            &c.seqs,
            topk_dev.as_ref().map(|(t, k)| (t, *k)),
            c.scale,
            d,
            &mut out_dev,
        )
        .expect("cuda mla_prefill");
        let got = download(dev, &out_dev, c.sentinel.len());
        let (_, bounds) = c.reference();
        compare("mla_prefill", &c.shape(), d.heads * d.v, &got, &c.want, |i| bounds[i], worst)
    });
}

/// As [`mla_decode_reference_bounds_the_cpu`], for prefill.
#[test]
fn mla_prefill_reference_bounds_the_cpu() {
    run("mla_prefill (cpu vs f64)", prefill_strategy(), |params, worst| {
        let c = prefill_case(params);
        let (exact, bounds) = c.reference();
        let exact: Vec<f32> = exact.iter().map(|&x| x as f32).collect();
        check_cpu_against_exact("mla_prefill", &c.shape(), c.d.heads * c.d.v, &c.want, &exact, &bounds, worst)
    });
}

// ---- bad shapes and bad metadata: errors, never a panic or a read out of place ----

fn buf(dev: &CudaDevice, n: usize) -> CudaSlice<f32> {
    zeros(dev, n)
}

#[test]
fn kv_store_and_gather_reject_bad_shapes() {
    let Some(dev) = device() else { return };
    // A cache of 4 rows of 6, two source rows of 5.
    let (mut cache, src, mut dst) = (buf(dev, 24), buf(dev, 10), buf(dev, 10));
    let slots = [1u32, 3];
    assert!(dev.kv_store(&mut cache, 4, 6, &[1, 4], &src, 5, 0, 0, 5).is_err(), "slot past the cache");
    assert!(dev.kv_store(&mut cache, 4, 6, &slots, &src, 5, 1, 0, 5).is_err(), "source columns past the row");
    assert!(dev.kv_store(&mut cache, 4, 6, &slots, &src, 5, 0, 2, 5).is_err(), "cache columns past the row");
    assert!(dev.kv_store(&mut cache, 4, 6, &slots, &src, 5, usize::MAX, 0, 2).is_err(), "columns overflow");
    assert!(dev.kv_store(&mut cache, 4, 6, &slots, &buf(dev, 9), 5, 0, 0, 5).is_err(), "source too short");
    assert!(dev.kv_store(&mut buf(dev, 23), 4, 6, &slots, &src, 5, 0, 0, 5).is_err(), "cache too short");
    assert!(dev.kv_store(&mut cache, 4, 0, &[], &src, 5, 0, 0, 0).is_err(), "no cache columns");
    dev.kv_store(&mut cache, 4, 6, &slots, &src, 5, 0, 1, 5).expect("fits");
    dev.kv_store(&mut cache, 4, 6, &[], &src, 5, 0, 1, 5).expect("no slots");
    assert!(dev.kv_gather(&cache, 4, 6, &[0, 4], 0, &mut dst, 5).is_err(), "slot past the cache");
    assert!(dev.kv_gather(&cache, 4, 6, &slots, 2, &mut dst, 5).is_err(), "columns past the row");
    assert!(dev.kv_gather(&cache, 4, 6, &slots, usize::MAX, &mut dst, 5).is_err(), "columns overflow");
    assert!(dev.kv_gather(&cache, 4, 6, &slots, 0, &mut buf(dev, 9), 5).is_err(), "destination too short");
    assert!(dev.kv_gather(&buf(dev, 23), 4, 6, &slots, 0, &mut dst, 5).is_err(), "cache too short");
    dev.kv_gather(&cache, 4, 6, &slots, 1, &mut dst, 5).expect("fits");
    assert_eq!(download(dev, &dst, 10), vec![0.0; 10], "the zeros stored from the zero source");
}

#[test]
fn absorb_rejects_bad_shapes() {
    let Some(dev) = device() else { return };
    let d = MlaDims { heads: 2, nope: 3, rope: 2, v: 4, kv_lora: 5 };
    // kv_b [14, 5]: e4m3 ones (code 0x38) in one scale block.
    let w =
        HostLinear { weight: HostTensor::from_e4m3("kv_b", vec![14, 5], vec![0x38; 70]), scale_inv: Some(vec![1.0]) };
    let w = dev.load_linear(&w).expect("kv_b");
    // absorb_q: q rows of 10, out rows of 14; absorb_out: o_lat rows of 10, out rows of 8.
    let (q, mut out_q, o, mut out_o) = (buf(dev, 20), buf(dev, 28), buf(dev, 20), buf(dev, 16));
    assert!(dev.absorb_q(&buf(dev, 19), 2, &w, d, &mut out_q).is_err(), "q too short");
    assert!(dev.absorb_q(&q, 2, &w, d, &mut buf(dev, 27)).is_err(), "out too short");
    assert!(dev.absorb_q(&q, 2, &w, MlaDims { v: 3, ..d }, &mut out_q).is_err(), "kv_b rows do not match");
    assert!(dev.absorb_q(&q, 2, &w, MlaDims { kv_lora: 4, ..d }, &mut out_q).is_err(), "kv_b columns do not match");
    assert!(dev.absorb_q(&q, usize::MAX, &w, d, &mut out_q).is_err(), "rows overflow");
    dev.absorb_q(&q, 0, &w, d, &mut out_q).expect("no rows");
    dev.absorb_q(&q, 2, &w, d, &mut out_q).expect("fits");
    assert!(dev.absorb_out(&buf(dev, 19), 2, &w, d, &mut out_o).is_err(), "o_lat too short");
    assert!(dev.absorb_out(&o, 2, &w, d, &mut buf(dev, 15)).is_err(), "out too short");
    assert!(dev.absorb_out(&o, 2, &w, MlaDims { nope: 2, ..d }, &mut out_o).is_err(), "kv_b rows do not match");
    assert!(dev.absorb_out(&o, usize::MAX, &w, d, &mut out_o).is_err(), "rows overflow");
    dev.absorb_out(&o, 0, &w, d, &mut out_o).expect("no rows");
    dev.absorb_out(&o, 2, &w, d, &mut out_o).expect("fits");
    assert_eq!(download(dev, &out_o, 16), vec![0.0; 16], "kv_b times zeros");
}

#[test]
fn mla_decode_rejects_bad_shapes_and_page_tables() {
    let Some(dev) = device() else { return };
    let d = MlaDims { heads: 3, nope: 4, rope: 2, v: 4, kv_lora: 6 };
    let lat = d.latent();
    // Two sequences: the first at 5 positions in blocks 2, 0 (block size 4), the second at 2 in
    // block 1; a cache of 3 blocks (12 rows).
    let (blocks, starts) = ([2u32, 0, 1], [0u32, 2, 3]);
    let pages = Pages { block_size: 4, blocks: &blocks, starts: &starts };
    let (pos, seq) = ([4u32, 1], [0u32, 1]);
    let queries = Queries { pos: &pos, seq: &seq };
    let (q, cache, mut out) = (buf(dev, 2 * 3 * lat), buf(dev, 12 * lat), buf(dev, 2 * 3 * 6));
    let topk = upload_ints(dev, &[0, -1, 3, 9, 1, 1, -1, 0]);
    let decode = |q: &CudaSlice<f32>,
                  rows: usize,
                  cache_rows: usize,
                  queries: Queries,
                  pages: Pages,
                  topk: Option<(&CudaSlice<i32>, usize)>,
                  d: MlaDims,
                  out: &mut CudaSlice<f32>| {
        dev.mla_decode(q, rows, &cache, cache_rows, queries, pages, topk, 0.5, d, out)
    };
    assert!(decode(&buf(dev, 2 * 3 * lat - 1), 2, 12, queries, pages, None, d, &mut out).is_err(), "q too short");
    assert!(decode(&q, 2, 13, queries, pages, None, d, &mut out).is_err(), "cache too short");
    assert!(decode(&q, 2, 12, queries, pages, None, d, &mut buf(dev, 35)).is_err(), "out too short");
    assert!(decode(&q, 3, 12, queries, pages, None, d, &mut out).is_err(), "rows do not match the queries");
    let one_seq = Queries { pos: &pos, seq: &seq[..1] };
    assert!(decode(&q, 2, 12, one_seq, pages, None, d, &mut out).is_err(), "positions and sequences differ");
    assert!(decode(&q, 2, 12, queries, pages, Some((&topk, 5)), d, &mut out).is_err(), "top-k too short");
    let wide = MlaDims { kv_lora: 600, ..d };
    assert!(decode(&q, 2, 12, queries, pages, None, wide, &mut out).is_err(), "latent past the kernel's 576");
    assert!(decode(&q, 2, 12, queries, Pages { block_size: 0, ..pages }, None, d, &mut out).is_err(), "block size 0");
    let past = Queries { pos: &[8, 1], seq: &seq };
    assert!(decode(&q, 2, 12, past, pages, None, d, &mut out).is_err(), "position past the sequence's pages");
    let no_seq = Queries { pos: &pos, seq: &[0, 2] };
    assert!(decode(&q, 2, 12, no_seq, pages, None, d, &mut out).is_err(), "sequence without a block table");
    let bad_block = Pages { blocks: &[2, 3, 1], ..pages };
    assert!(decode(&q, 2, 12, queries, bad_block, None, d, &mut out).is_err(), "block past the cache");
    assert!(decode(&q, 2, 11, queries, pages, None, d, &mut out).is_err(), "a page's rows past the cache");
    let short_table = Pages { starts: &[0, 2], ..pages };
    assert!(decode(&q, 2, 12, queries, short_table, None, d, &mut out).is_err(), "starts end early");
    // The second sequence's table claims blocks 2..9 of 3: its second page has none.
    let bad_starts = Pages { starts: &[0, 2, 9], ..pages };
    decode(&q, 2, 12, queries, bad_starts, None, d, &mut out).expect("only the first page is read");
    let longer = Queries { pos: &[4, 5], seq: &seq };
    assert!(decode(&q, 2, 12, longer, bad_starts, None, d, &mut out).is_err(), "starts past the blocks");
    decode(&q, 0, 12, Queries { pos: &[], seq: &[] }, pages, None, d, &mut out).expect("no rows");
    decode(&q, 2, 12, queries, pages, None, d, &mut out).expect("dense fits");
    decode(&q, 2, 12, queries, pages, Some((&topk, 4)), d, &mut out).expect("top-k fits");
    decode(&q, 2, 12, queries, pages, Some((&topk, 0)), d, &mut out).expect("empty top-k rows");
    assert_eq!(download(dev, &out, 36), vec![0.0; 36], "no keys: zeros");
}

#[test]
fn mla_prefill_rejects_bad_shapes() {
    let Some(dev) = device() else { return };
    let d = MlaDims { heads: 2, nope: 3, rope: 2, v: 4, kv_lora: 5 };
    // Six query rows, eight kv rows; two sequences.
    let (q_rows, kv_rows) = (6, 8);
    let seqs = [
        PrefillSeq { q_start: 0, q_len: 2, kv_start: 0, start_pos: 1 },
        PrefillSeq { q_start: 3, q_len: 3, kv_start: 4, start_pos: 1 },
    ];
    let (q, kv, kpe) = (buf(dev, q_rows * 2 * 5), buf(dev, kv_rows * 2 * 7), buf(dev, kv_rows * 2));
    let mut out = buf(dev, q_rows * 2 * 4);
    let topk = upload_ints(dev, &[0; 12]);
    let prefill =
        |q: &CudaSlice<f32>,
         kv: &CudaSlice<f32>,
         kpe: &CudaSlice<f32>,
         seqs: &[PrefillSeq],
         topk: Option<(&CudaSlice<i32>, usize)>,
         d: MlaDims,
         out: &mut CudaSlice<f32>| { dev.mla_prefill(q, q_rows, kv, kpe, kv_rows, seqs, topk, 0.5, d, out) };
    assert!(prefill(&buf(dev, 59), &kv, &kpe, &seqs, None, d, &mut out).is_err(), "q too short");
    assert!(prefill(&q, &buf(dev, 111), &kpe, &seqs, None, d, &mut out).is_err(), "kv too short");
    assert!(prefill(&q, &kv, &buf(dev, 15), &seqs, None, d, &mut out).is_err(), "kpe too short");
    assert!(prefill(&q, &kv, &kpe, &seqs, None, d, &mut buf(dev, 47)).is_err(), "out too short");
    assert!(prefill(&q, &kv, &kpe, &seqs, Some((&topk, 3)), d, &mut out).is_err(), "top-k too short");
    let wide = MlaDims { nope: 255, ..d };
    assert!(prefill(&q, &kv, &kpe, &seqs, None, wide, &mut out).is_err(), "query past the kernel's 256");
    let overlap = [seqs[0], PrefillSeq { q_start: 1, ..seqs[1] }];
    assert!(prefill(&q, &kv, &kpe, &overlap, None, d, &mut out).is_err(), "sequences overlap");
    let past_q = [PrefillSeq { q_len: 4, ..seqs[1] }];
    assert!(prefill(&q, &kv, &kpe, &past_q, None, d, &mut out).is_err(), "rows past q");
    let past_kv = [PrefillSeq { start_pos: 2, ..seqs[1] }];
    assert!(prefill(&q, &kv, &kpe, &past_kv, None, d, &mut out).is_err(), "context past kv");
    let overflow = [PrefillSeq { start_pos: usize::MAX, ..seqs[1] }];
    assert!(prefill(&q, &kv, &kpe, &overflow, None, d, &mut out).is_err(), "context overflows");
    prefill(&q, &kv, &kpe, &[], None, d, &mut out).expect("no sequences");
    prefill(&q, &kv, &kpe, &seqs, None, d, &mut out).expect("dense fits");
    prefill(&q, &kv, &kpe, &seqs, Some((&topk, 2)), d, &mut out).expect("top-k fits");
}
