//! The Hopper lightning indexer (`CudaDevice::indexer_topk_fp8` and its two steps) against the
//! CPU backend's `indexer_topk` and the simple CUDA kernel, on an FP8 index key cache filled with
//! `IndexFp8::encode` and queries quantized per head row; the references read the decoded keys
//! and queries (code times scale), so both sides score the same values.
//!
//! Error bound of a score (`FP8_BOUND`): the products of e4m3 codes are exact; the wgmma sums the
//! 128 of a head in 4 instructions of 32, and Hopper's FP8 accumulator keeps about 14 bits
//! (DeepSeek-V3 technical report, §3.3.2), so each of the 4 additions into it errs by at most
//! 2^-13 of the magnitudes summed so far: 4 · 2^-13 · Σ|products|. The epilogue's f32 chain over
//! 64 heads (γ_64 ≈ 2^-18), the scales' products (3 roundings) and the references' own f32 sums
//! (γ_128) add below 2^-16. Relative to M = k_scale · Σ_h |w_h · weight_scale · q_scale_h| ·
//! Σ_d |q8 · k8| the GPU is within 2^-11 + 2^-16 of the exact score, and of the CPU's: 2^-10·M
//! covers both with a margin of 2, and one f32 MIN_POSITIVE keeps it positive.
//!
//! Selections are compared as sets: a position one side keeps and the other does not must be a
//! near tie (its exact score within 2 bounds of the row's k-th largest); those are counted and
//! reported, any other difference fails. The top-k step alone is compared exactly with the
//! simple kernel's selection (`total_cmp`, ties to the earlier position) on the same logits.
#![cfg(feature = "cuda")]

mod cuda_common;

use std::cell::RefCell;

use cuda_common::Rng;
use cuda_common::*;
use flashseek::backend::cuda::{CudaDevice, IndexerFp8Input};
use flashseek::backend::{Pages, Queries};
use flashseek::fp8::{e4m3_code, group_scale, ScaleFmt, E4M3_MAX, E4M3_TO_F32};
use flashseek::kv_layout::{IndexFp8, PAGE};
use proptest::prelude::*;

const DIM: usize = 128;
/// Bins of the score histograms (`FLASHSEEK_INDEXER_FP8_BINS`): the top 11 bits of order keys.
const BINS: usize = 2048;

fn fp8_bound(m: f64) -> f64 {
    m / 1024.0 + f64::from(f32::MIN_POSITIVE)
}

/// One call's inputs: FP8 codes and scales, and the decoded values the references read.
#[derive(Debug)]
struct Case {
    heads: usize,
    k: usize,
    fmt: ScaleFmt,
    q_codes: Vec<u8>,
    q_scales: Vec<f32>,
    q: Vec<f32>,
    weights: Vec<f32>,
    weight_scale: f32,
    cache: Vec<u8>,
    keys: Vec<f32>,
    cache_pages: usize,
    pos: Vec<u32>,
    seq: Vec<u32>,
    blocks: Vec<u32>,
    starts: Vec<u32>,
}

impl Case {
    fn rows(&self) -> usize {
        self.pos.len()
    }

    fn layout(&self) -> IndexFp8 {
        IndexFp8::new(DIM, self.fmt).expect("dim 128")
    }

    /// The references' inputs: the decoded queries and keys.
    fn call(&self) -> IndexerCall<'_> {
        IndexerCall {
            q: &self.q,
            weights: &self.weights,
            rows: self.rows(),
            heads: self.heads,
            dim: DIM,
            weight_scale: self.weight_scale,
            cache: &self.keys,
            cache_rows: self.cache_pages * PAGE,
            queries: self.queries(),
            pages: self.pages(),
            k: self.k,
        }
    }

    fn queries(&self) -> Queries<'_> {
        Queries { pos: &self.pos, seq: &self.seq }
    }

    fn pages(&self) -> Pages<'_> {
        Pages { block_size: PAGE, blocks: &self.blocks, starts: &self.starts }
    }

    fn slot(&self, row: usize, t: usize) -> usize {
        let s = self.seq[row] as usize;
        self.blocks[self.starts[s] as usize + t / PAGE] as usize * PAGE + t % PAGE
    }

    fn shape(&self) -> String {
        format!(
            "{} rows of {} heads at {:?} (sequences {:?}), k {}",
            self.rows(),
            self.heads,
            self.pos,
            self.seq,
            self.k
        )
    }

    /// The exact score of row `row` at position `t` (f64 over the decoded values) and its
    /// magnitude M (see the module's bound).
    fn score(&self, row: usize, t: usize) -> (f64, f64) {
        let key = &self.keys[self.slot(row, t) * DIM..][..DIM];
        let (mut s, mut m) = (0.0, 0.0);
        for h in 0..self.heads {
            let q = &self.q[(row * self.heads + h) * DIM..][..DIM];
            let dot: f64 = q.iter().zip(key).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
            let mag: f64 = q.iter().zip(key).map(|(&a, &b)| (f64::from(a) * f64::from(b)).abs()).sum();
            let w = f64::from(self.weights[row * self.heads + h]) * f64::from(self.weight_scale);
            s += w * dot.max(0.0);
            m += w.abs() * mag;
        }
        (s, m)
    }
}

/// Quantizes `x` in rows of 128 as `act_quant` and `IndexFp8::encode` do: codes and one scale.
fn quantize(x: &[f32], fmt: ScaleFmt) -> (Vec<u8>, Vec<f32>) {
    let mut codes = Vec::with_capacity(x.len());
    let mut scales = Vec::new();
    for row in x.chunks(DIM) {
        let s = group_scale(row.iter().fold(0.0f32, |m, v| m.max(v.abs())), fmt);
        codes.extend(row.iter().map(|v| e4m3_code((v / s).clamp(-E4M3_MAX, E4M3_MAX))));
        scales.push(s);
    }
    (codes, scales)
}

/// A random case: 1 to 3 sequences of 1 to `max_ctx` positions on shuffled cache pages (with
/// spares), each with a decode step (1 or 2 rows) or a prefill chunk ending at its last
/// position; rows by sequence, sometimes shuffled; some heads of some rows with tiny or
/// all-negative queries (all-zero ReLUs), weights of both signs.
fn random_case(rng: &mut Rng, max_ctx: usize) -> Case {
    let heads = [64, 64, 1 + rng.below(64)][rng.below(3)];
    let fmt = if rng.below(2) == 0 { ScaleFmt::Exact } else { ScaleFmt::Ue8m0 };
    let ctxs: Vec<usize> = (0..1 + rng.below(3)).map(|_| 1 + rng.below(max_ctx)).collect();
    let used: usize = ctxs.iter().map(|c| c.div_ceil(PAGE)).sum();
    let cache_pages = used + rng.below(3);
    let mut phys: Vec<u32> = (0..cache_pages as u32).collect();
    for i in (1..phys.len()).rev() {
        phys.swap(i, rng.below(i + 1));
    }
    let (mut blocks, mut starts, mut rows) = (Vec::new(), vec![0u32], Vec::new());
    for (s, &ctx) in ctxs.iter().enumerate() {
        let at = blocks.len();
        blocks.extend_from_slice(&phys[at..at + ctx.div_ceil(PAGE)]);
        starts.push(blocks.len() as u32);
        let n = match rng.below(3) {
            0 => 1,
            1 => 2,
            _ => 1 + rng.below(9),
        }
        .min(ctx);
        rows.extend((ctx - n..ctx).map(|p| (p as u32, s as u32)));
    }
    if rng.below(4) == 0 {
        for i in (1..rows.len()).rev() {
            rows.swap(i, rng.below(i + 1));
        }
    }
    let longest = ctxs.iter().copied().max().unwrap_or(1);
    let k = match rng.below(4) {
        0 => 16,
        1 => 2048,
        _ => 1 + rng.below(longest + 8),
    };
    let n = rows.len();
    let mut q_f32 = rng.values(n * heads * DIM, -1.0, 1.0);
    for head in q_f32.chunks_mut(DIM) {
        match rng.below(16) {
            0 => head.iter_mut().for_each(|v| *v *= 1e-6),
            1 => head.iter_mut().for_each(|v| *v = -v.abs()),
            _ => {}
        }
    }
    let (q_codes, q_scales) = quantize(&q_f32, fmt);
    let q: Vec<f32> = q_codes.iter().enumerate().map(|(i, &c)| E4M3_TO_F32[c as usize] * q_scales[i / DIM]).collect();
    let layout = IndexFp8::new(DIM, fmt).expect("dim 128");
    let mut cache = vec![0u8; cache_pages * layout.page_bytes()];
    let mut keys = vec![0f32; cache_pages * PAGE * DIM];
    for slot in 0..cache_pages * PAGE {
        let scale = [1.0, 3.0, 0.01][rng.below(3)];
        layout.encode(slot, &rng.values(DIM, -scale, scale), &mut cache);
        layout.decode(slot, &cache, &mut keys[slot * DIM..(slot + 1) * DIM]);
    }
    Case {
        heads,
        k,
        fmt,
        q_codes,
        q_scales,
        q,
        weights: rng.values(n * heads, -1.0, 1.0),
        weight_scale: ((heads * DIM) as f32).powf(-0.5),
        cache,
        keys,
        cache_pages,
        pos: rows.iter().map(|r| r.0).collect(),
        seq: rows.iter().map(|r| r.1).collect(),
        blocks,
        starts,
    }
}

struct Uploaded {
    q_codes: cudarc::driver::CudaSlice<u8>,
    q_scales: cudarc::driver::CudaSlice<f32>,
    weights: cudarc::driver::CudaSlice<f32>,
    cache: cudarc::driver::CudaSlice<u8>,
}

fn upload_case(dev: &CudaDevice, c: &Case) -> Uploaded {
    Uploaded {
        q_codes: dev.upload(&c.q_codes).expect("upload"),
        q_scales: upload(dev, &c.q_scales),
        weights: upload(dev, &c.weights),
        cache: dev.upload(&c.cache).expect("upload"),
    }
}

fn input<'a>(c: &'a Case, u: &'a Uploaded) -> IndexerFp8Input<'a> {
    IndexerFp8Input {
        q_codes: &u.q_codes,
        q_scales: &u.q_scales,
        weights: &u.weights,
        rows: c.rows(),
        heads: c.heads,
        weight_scale: c.weight_scale,
        cache: &u.cache,
        layout: c.layout(),
        cache_pages: c.cache_pages,
        queries: c.queries(),
        pages: c.pages(),
    }
}

/// The same positions as `want` in every row but near ties (see the module doc); returns how
/// many positions differ as near ties.
fn same_selection(c: &Case, got: &[i32], want: &[i32], what: &str) -> Result<usize, TestCaseError> {
    let mut near = 0;
    for (i, (g, w)) in got.chunks(c.k).zip(want.chunks(c.k)).enumerate() {
        let n = (c.pos[i] as usize + 1).min(c.k);
        prop_assert!(g[n..].iter().all(|&v| v == -1), "{}: row {} not -1 past {}: {:?}", what, i, n, g);
        prop_assert!(g[..n].windows(2).all(|p| p[0] < p[1]), "{}: row {} not ascending: {:?}", what, i, g);
        prop_assert!(g[..n].iter().all(|&v| v >= 0 && v as u32 <= c.pos[i]), "{}: row {} out of range", what, i);
        if g == w {
            continue;
        }
        let scores: Vec<(f64, f64)> = (0..=c.pos[i] as usize).map(|t| c.score(i, t)).collect();
        let mut sorted: Vec<f64> = scores.iter().map(|s| s.0).collect();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let kth = sorted[c.k - 1];
        let kth_m = scores.iter().filter(|s| s.0 == kth).map(|s| s.1).fold(0.0, f64::max);
        let (gs, ws): (std::collections::BTreeSet<i32>, std::collections::BTreeSet<i32>) =
            (g.iter().copied().collect(), w.iter().copied().collect());
        for &t in gs.symmetric_difference(&ws) {
            let (s, m) = scores[t as usize];
            let tie = (s - kth).abs() <= 2.0 * (fp8_bound(m) + fp8_bound(kth_m));
            prop_assert!(
                tie,
                "{}: row {} position {} (score {:e}) differs but is no near tie of {:e}",
                what,
                i,
                t,
                s,
                kth
            );
            near += 1;
        }
    }
    Ok(near)
}

/// Logits against the exact scores, `-inf` past each row's position within its pages, and the
/// histograms counting exactly the scores' bins.
#[test]
fn logits_are_the_exact_scores_within_the_bound() {
    let Some(dev) = device() else { return };
    let worst = RefCell::new(Worst::default());
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config::with_cases(CASES));
    let strategy = (any::<u64>(), prop_oneof![3 => Just(300usize), 1 => Just(3000usize)]);
    let result = runner.run(&strategy, |(seed, max_ctx)| {
        let c = random_case(&mut Rng(seed), max_ctx);
        let u = upload_case(dev, &c);
        let stride_max = c.pos.iter().map(|&p| (p as usize / PAGE + 1) * PAGE).max().unwrap_or(0);
        let mut logits = zeros::<f32>(dev, c.rows() * stride_max);
        let mut hist = zeros::<u32>(dev, c.rows() * BINS);
        let stride = dev.indexer_logits_fp8(&input(&c, &u), &mut logits, &mut hist).expect("logits");
        prop_assert_eq!(stride, stride_max);
        let logits = download(dev, &logits, c.rows() * stride);
        let hist = download(dev, &hist, c.rows() * BINS);
        let mut w = worst.borrow_mut();
        w.cases += 1;
        for i in 0..c.rows() {
            let row = &logits[i * stride..(i + 1) * stride];
            let mut want_hist = vec![0u32; BINS];
            for (t, &g) in row.iter().enumerate() {
                if t > c.pos[i] as usize {
                    // The pages the row's group reads end at its longest row's last page.
                    prop_assert!(
                        g == f32::NEG_INFINITY || g == 0.0,
                        "{}: row {} t {}: {} past pos",
                        c.shape(),
                        i,
                        t,
                        g
                    );
                    continue;
                }
                let (s, m) = c.score(i, t);
                let err = (f64::from(g) - s).abs();
                prop_assert!(
                    err <= fp8_bound(m),
                    "{}: row {} t {}: gpu {:e} exact {:e} (M {:e})",
                    c.shape(),
                    i,
                    t,
                    g,
                    s,
                    m
                );
                w.values += 1;
                let rel = err / m.max(f64::MIN_POSITIVE);
                if rel > w.rel {
                    w.rel = rel;
                    w.at = format!("{} row {i} t {t} (of M)", c.shape());
                }
                let b = g.to_bits();
                let key = if b >> 31 == 1 { !b } else { b | 0x8000_0000 };
                want_hist[(key >> 21) as usize] += 1;
            }
            prop_assert_eq!(&hist[i * BINS..(i + 1) * BINS], &want_hist[..], "{}: row {} histogram", c.shape(), i);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("indexer_logits_fp8: {e}");
    }
    worst.borrow().print("indexer_logits_fp8");
}

/// The whole call against the CPU backend and the simple CUDA kernel: the same selections but
/// near ties.
#[test]
fn topk_is_the_cpu_selection_but_near_ties() {
    let Some(dev) = device() else { return };
    let near = RefCell::new((0usize, 0usize));
    run(
        "indexer_topk_fp8",
        (any::<u64>(), prop_oneof![3 => Just(400usize), 1 => Just(5000usize)]),
        |(seed, max_ctx), worst| {
            let c = random_case(&mut Rng(seed), max_ctx);
            let u = upload_case(dev, &c);
            let mut out = zeros::<i32>(dev, c.rows() * c.k);
            dev.indexer_topk_fp8(&input(&c, &u), &mut out, c.k).expect("indexer_topk_fp8");
            let got = download(dev, &out, c.rows() * c.k);
            let cpu = cpu_indexer_topk(&c.call()).expect("cpu indexer_topk");
            let simple = gpu_indexer_topk(dev, &c.call()).expect("simple indexer_topk");
            let mut n = near.borrow_mut();
            n.0 += same_selection(&c, &got, &cpu, "vs the CPU")?;
            n.1 += same_selection(&c, &got, &simple, "vs the simple kernel")?;
            let mut w = worst.borrow_mut();
            w.cases += 1;
            w.values += got.len();
            Ok(())
        },
    );
    let n = near.borrow();
    eprintln!("indexer_topk_fp8: near-tie differences: {} vs the CPU, {} vs the simple kernel", n.0, n.1);
}

/// The order key of `total_cmp`, and the histogram the logits kernel would have made.
fn histogram(row: &[f32]) -> Vec<u32> {
    let mut h = vec![0u32; BINS];
    for v in row {
        let b = v.to_bits();
        let key = if b >> 31 == 1 { !b } else { b | 0x8000_0000 };
        h[(key >> 21) as usize] += 1;
    }
    h
}

/// The simple kernels' and the CPU's selection of `scores`.
fn select_top(scores: &[f32], k: usize) -> Vec<i32> {
    if scores.len() <= k {
        return (0..k).map(|j| if j < scores.len() { j as i32 } else { -1 }).collect();
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut keep: Vec<i32> = order[..k].iter().map(|&t| t as i32).collect();
    keep.sort_unstable();
    keep
}

/// The top-k step alone on uploaded logits: exactly the simple selection, ties, signed zeros,
/// NaNs and infinities included, and bins of more candidates than shared memory holds.
#[test]
fn select_is_the_simple_selection_exactly() {
    let Some(dev) = device() else { return };
    run(
        "indexer_select_fp8",
        (any::<u64>(), 1usize..5, prop_oneof![Just(16usize), Just(2048usize), 1usize..300]),
        |(seed, rows, k), worst| {
            let mut rng = Rng(seed);
            let pos: Vec<u32> = (0..rows)
                .map(|_| {
                    let len = [100, 3000, 40_000][rng.below(3)];
                    rng.below(len) as u32
                })
                .collect();
            let stride = pos.iter().map(|&p| p as usize + 1).max().unwrap_or(1) + rng.below(70);
            let kind = rng.below(5);
            let mut logits = vec![f32::NAN; rows * stride];
            let mut hist = vec![0u32; rows * BINS];
            for (i, &p) in pos.iter().enumerate() {
                let row = &mut logits[i * stride..][..p as usize + 1];
                for v in row.iter_mut() {
                    *v = match kind {
                        // A few values: ties, and one bin of more than 8192 scores.
                        0 => [0.0, -0.0, 1.5, 1.5][rng.below(4)],
                        1 => f32::from_bits(0x4000_0000 | rng.below(1 << 19) as u32),
                        2 => [f32::NAN, -f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 2.0][rng.below(7)],
                        _ => rng.range(-1.0, 1.0),
                    };
                }
                hist[i * BINS..(i + 1) * BINS].copy_from_slice(&histogram(row));
            }
            let (l, h) = (upload(dev, &logits), dev.upload(&hist).expect("upload"));
            let mut out = zeros::<i32>(dev, rows * k);
            dev.indexer_select_fp8(&l, &h, stride, &pos, &mut out, k).expect("indexer_select_fp8");
            let got = download(dev, &out, rows * k);
            for (i, &p) in pos.iter().enumerate() {
                let want = select_top(&logits[i * stride..][..p as usize + 1], k);
                prop_assert_eq!(
                    &got[i * k..(i + 1) * k],
                    &want[..],
                    "row {} of {} positions, k {}, kind {}",
                    i,
                    p + 1,
                    k,
                    kind
                );
            }
            let mut w = worst.borrow_mut();
            w.cases += 1;
            w.values += got.len();
            Ok(())
        },
    );
}

/// Bad inputs are errors before anything runs: another key width, too many heads, blocks other
/// than the cache's pages, a position without a page, short buffers.
#[test]
fn bad_inputs_are_errors() {
    let Some(dev) = device() else { return };
    let c = random_case(&mut Rng(7), 200);
    let u = upload_case(dev, &c);
    let mut out = zeros::<i32>(dev, c.rows() * c.k);
    let ok = input(&c, &u);
    assert!(dev.indexer_topk_fp8(&ok, &mut out, c.k).is_ok());
    let bad_dim = IndexFp8::new(64, c.fmt).expect("dim 64");
    let pos_far: Vec<u32> = c.pos.iter().map(|p| p + 10_000).collect();
    let block_size_32 = Pages { block_size: 32, ..c.pages() };
    let cases = [
        IndexerFp8Input { layout: bad_dim, ..ok },
        IndexerFp8Input { heads: 65, ..ok },
        IndexerFp8Input { pages: block_size_32, ..ok },
        IndexerFp8Input { queries: Queries { pos: &pos_far, seq: &c.seq }, ..ok },
        IndexerFp8Input { cache_pages: c.cache_pages + 1, ..ok },
        IndexerFp8Input { rows: c.rows() + 1, ..ok },
    ];
    for (i, x) in cases.iter().enumerate() {
        assert!(dev.indexer_topk_fp8(x, &mut out, c.k).is_err(), "bad input {i} accepted");
    }
    let mut short = zeros::<i32>(dev, c.rows() * c.k - 1);
    assert!(dev.indexer_topk_fp8(&ok, &mut short, c.k).is_err());
}
