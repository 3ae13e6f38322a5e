//! The lightning indexer's CUDA kernels (`CudaDevice::indexer_topk`) against the CPU backend.
//!
//! The kernels compute every score with the CPU's f32 operations in the CPU's order (that of
//! the AVX2/FMA path of `simd::dots`, which the CPU backend takes on x86-64 machines that have
//! it), so on such a machine the selections must be the CPU's exactly: the same positions in the
//! same order, ties included. Elsewhere the CPU sums its dot products another way, and only the
//! shape of each row's selection is checked.
//!
//! Two tests need no GPU: the kernels' algorithm mirrored on the host (their summation order and
//! their radix select) against the CPU backend, which checks the claim above on the machine
//! that runs the tests.
#![cfg(feature = "cuda")]

mod cuda_common;

use cuda_common::Rng;
use cuda_common::*;
use cudarc::driver::CudaSlice;
use flashseek::backend::cpu::simd::dots;
use flashseek::backend::{Pages, Queries};
use proptest::prelude::*;

/// Whether the CPU backend scores with the AVX2/FMA `dots` here, the order the kernels follow.
fn cpu_is_exact_reference() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// What the values of a case look like.
#[derive(Debug, Clone, Copy)]
enum Data {
    /// Uniform q, keys and weights (weights of both signs).
    Random,
    /// Small integers and a few distinct keys, sometimes all-zero weights: exact scores, many ties.
    Ties,
    /// Random values with some weights NaN (f32::NAN): whole rows of NaN scores.
    NanWeights,
    /// Random values with NaN, infinities and signed zeros in q and keys and infinite or zero
    /// weights: scores of ±inf and x86's default NaN. Kept apart from `NanWeights`: where a
    /// NaN weight's NaN meets a default NaN in one sum, the one the CPU keeps depends on its
    /// compiler's operand order.
    Infinities,
}

fn data_strategy() -> impl Strategy<Value = Data> {
    prop_oneof![4 => Just(Data::Random), 3 => Just(Data::Ties), 1 => Just(Data::NanWeights), 1 => Just(Data::Infinities)]
}

/// One call's inputs.
#[derive(Debug)]
struct Case {
    heads: usize,
    dim: usize,
    k: usize,
    weight_scale: f32,
    q: Vec<f32>,
    weights: Vec<f32>,
    cache: Vec<f32>,
    pos: Vec<u32>,
    seq: Vec<u32>,
    block_size: usize,
    blocks: Vec<u32>,
    starts: Vec<u32>,
}

impl Case {
    fn rows(&self) -> usize {
        self.pos.len()
    }

    fn cache_rows(&self) -> usize {
        self.cache.len() / self.dim
    }

    /// The call's inputs, for the shared reference calls.
    fn call(&self) -> IndexerCall<'_> {
        IndexerCall {
            q: &self.q,
            weights: &self.weights,
            rows: self.rows(),
            heads: self.heads,
            dim: self.dim,
            weight_scale: self.weight_scale,
            cache: &self.cache,
            cache_rows: self.cache_rows(),
            queries: self.queries(),
            pages: self.pages(),
            k: self.k,
        }
    }

    fn queries(&self) -> Queries<'_> {
        Queries { pos: &self.pos, seq: &self.seq }
    }

    fn pages(&self) -> Pages<'_> {
        Pages { block_size: self.block_size, blocks: &self.blocks, starts: &self.starts }
    }

    fn shape(&self) -> String {
        format!(
            "{} rows (positions {:?}) of {}x{}, k {}, block size {}, {} cache rows",
            self.rows(),
            self.pos,
            self.heads,
            self.dim,
            self.k,
            self.block_size,
            self.cache_rows()
        )
    }

    /// The cache row of position t of sequence s.
    fn slot(&self, s: usize, t: usize) -> usize {
        self.blocks[self.starts[s] as usize + t / self.block_size] as usize * self.block_size + t % self.block_size
    }
}

/// A random case: 1 to 3 sequences with contexts of 1 to `max_ctx` positions in pages of 1 to
/// 64 positions on shuffled physical blocks (with spare ones), each with a decode row or a
/// prefill chunk of rows ending at its last position, the rows in random order; k from 1 to
/// past the longest context.
fn random_case(rng: &mut Rng, heads: usize, dim: usize, max_ctx: usize, data: Data) -> Case {
    let block_size = 1 + rng.below(64);
    let ctxs: Vec<usize> = (0..1 + rng.below(3)).map(|_| 1 + rng.below(max_ctx)).collect();
    let pages: usize = ctxs.iter().map(|c| c.div_ceil(block_size)).sum();
    let n_blocks = pages + rng.below(4);
    let mut phys: Vec<u32> = (0..n_blocks as u32).collect();
    for i in (1..phys.len()).rev() {
        phys.swap(i, rng.below(i + 1));
    }
    let (mut blocks, mut starts, mut rows) = (Vec::new(), vec![0u32], Vec::new());
    for (s, &ctx) in ctxs.iter().enumerate() {
        let used = blocks.len();
        blocks.extend_from_slice(&phys[used..used + ctx.div_ceil(block_size)]);
        starts.push(blocks.len() as u32);
        let chunk = 1 + rng.below(ctx.min(6));
        rows.extend((ctx - chunk..ctx).map(|p| (p as u32, s as u32)));
    }
    for i in (1..rows.len()).rev() {
        rows.swap(i, rng.below(i + 1));
    }
    let longest = ctxs.iter().copied().max().unwrap_or(1);
    let k = 1 + rng.below(longest + longest / 5 + 2);
    let (n, cache_rows) = (rows.len(), n_blocks * block_size);

    let (q, weights, cache) = match data {
        Data::Random | Data::NanWeights => {
            let mut weights = rng.values(n * heads, -1.0, 1.0);
            if matches!(data, Data::NanWeights) {
                for w in weights.iter_mut() {
                    if rng.below(4 * heads) == 0 {
                        *w = f32::NAN;
                    }
                }
            }
            (rng.values(n * heads * dim, -1.0, 1.0), weights, rng.values(cache_rows * dim, -1.0, 1.0))
        }
        Data::Ties => {
            let small =
                |rng: &mut Rng, len: usize| -> Vec<f32> { (0..len).map(|_| rng.below(5) as f32 - 2.0).collect() };
            let pool: Vec<Vec<f32>> = (0..1 + rng.below(4)).map(|_| small(rng, dim)).collect();
            let cache = (0..cache_rows).flat_map(|_| pool[rng.below(pool.len())].clone()).collect();
            let weights = if rng.below(3) == 0 { vec![0.0; n * heads] } else { small(rng, n * heads) };
            (small(rng, n * heads * dim), weights, cache)
        }
        Data::Infinities => {
            let weights = (0..n * heads)
                .map(|_| match rng.below(40) {
                    0 => f32::INFINITY,
                    1 => f32::NEG_INFINITY,
                    2 => 0.0,
                    _ => rng.range(-1.0, 1.0),
                })
                .collect();
            let rate = 0.02;
            (
                rng.with_specials(n * heads * dim, -1.0, 1.0, rate),
                weights,
                rng.with_specials(cache_rows * dim, -1.0, 1.0, rate),
            )
        }
    };
    Case {
        heads,
        dim,
        k,
        weight_scale: ((heads * dim) as f32).powf(-0.5),
        q,
        weights,
        cache,
        pos: rows.iter().map(|r| r.0).collect(),
        seq: rows.iter().map(|r| r.1).collect(),
        block_size,
        blocks,
        starts,
    }
}

/// Every row holds min(k, pos + 1) distinct positions in 0..=pos, ascending, then -1s.
fn check_shape(c: &Case, got: &[i32]) -> Result<(), TestCaseError> {
    for (i, row) in got.chunks(c.k).enumerate() {
        let n = (c.pos[i] as usize + 1).min(c.k);
        prop_assert!(row[n..].iter().all(|&v| v == -1), "row {}: {:?} not -1 past {}", i, row, n);
        prop_assert!(row[..n].windows(2).all(|w| w[0] < w[1]), "row {}: not ascending: {:?}", i, row);
        prop_assert!(row[..n].iter().all(|&v| v >= 0 && v as u32 <= c.pos[i]), "row {}: out of range: {:?}", i, row);
    }
    Ok(())
}

/// The GPU's selection must be the CPU's where the CPU is the exact reference, and well formed
/// everywhere.
fn compare_topk(c: &Case, got: &[i32], want: &[i32]) -> Result<(), TestCaseError> {
    check_shape(c, got)?;
    if !cpu_is_exact_reference() {
        return Ok(());
    }
    for (i, (g, w)) in got.chunks(c.k).zip(want.chunks(c.k)).enumerate() {
        if g != w {
            let j = g.iter().zip(w).position(|(a, b)| a != b).unwrap_or(0);
            prop_assert!(false, "{}: row {} differs first at {}: gpu {:?} cpu {:?}", c.shape(), i, j, g, w);
        }
    }
    Ok(())
}

fn run_cases(op: &str, heads: impl Strategy<Value = (usize, usize)>, max_ctx: impl Strategy<Value = usize>) {
    let Some(dev) = device() else { return };
    if !cpu_is_exact_reference() {
        eprintln!("{op}: this CPU lacks AVX2/FMA, so only the selections' shape is compared");
    }
    let strategy = (heads, max_ctx, data_strategy(), any::<u64>());
    run(op, strategy, |((heads, dim), max_ctx, data, seed), worst| {
        let c = random_case(&mut Rng(seed), heads, dim, max_ctx, data);
        let got = gpu_indexer_topk(dev, &c.call()).map_err(|e| TestCaseError::fail(format!("cuda: {e}")))?;
        let want = cpu_indexer_topk(&c.call()).map_err(|e| TestCaseError::fail(format!("cpu: {e}")))?;
        let mut w = worst.borrow_mut();
        w.cases += 1;
        w.values += got.len();
        compare_topk(&c, &got, &want)
    });
}

/// Key widths: DeepSeek's (128) and the tiny models' (32, 64), others from 1 (tails of 1 to 7
/// values past the CPU's 8 lanes) to the kernels' limit of 128.
fn dim_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![2 => Just(128usize), 1 => Just(32usize), 1 => Just(64usize), 3 => 32usize..=128, 1 => 1usize..32]
}

#[test]
fn indexer_topk_matches_cpu() {
    let ctx = prop_oneof![2 => 1usize..300, 1 => 300usize..=5000];
    run_cases("indexer_topk", (1usize..=8, dim_strategy()), ctx);
}

/// DeepSeek-V3.2's 64 heads of 128, at small contexts.
#[test]
fn indexer_topk_v32_heads_matches_cpu() {
    run_cases("indexer_topk 64x128", Just((64usize, 128usize)), 1usize..300);
}

/// With all weights zero every score is 0, so every row keeps its first k positions; with one
/// key repeated everywhere every score of a row ties.
#[test]
fn indexer_topk_ties_go_to_the_earlier_position() {
    let Some(dev) = device() else { return };
    run("indexer_topk ties", (1usize..=8, 1usize..=128, any::<u64>()), |(heads, dim, seed), worst| {
        let mut rng = Rng(seed);
        let mut c = random_case(&mut rng, heads, dim, 3000, Data::Random);
        if rng.below(2) == 0 {
            c.weights.iter_mut().for_each(|w| *w = 0.0);
        } else {
            let key = rng.values(dim, -1.0, 1.0);
            c.cache = (0..c.cache_rows()).flat_map(|_| key.clone()).collect();
        }
        let got = gpu_indexer_topk(dev, &c.call()).map_err(|e| TestCaseError::fail(format!("cuda: {e}")))?;
        worst.borrow_mut().cases += 1;
        for (i, row) in got.chunks(c.k).enumerate() {
            let want: Vec<i32> = (0..c.k as i32).map(|j| if j <= c.pos[i] as i32 { j } else { -1 }).collect();
            prop_assert_eq!(row, &want[..], "{}: row {}", c.shape(), i);
        }
        let want = cpu_indexer_topk(&c.call()).map_err(|e| TestCaseError::fail(format!("cpu: {e}")))?;
        compare_topk(&c, &got, &want)
    });
}

/// Rows whose scores overflow the 64 MiB workspace are scored in chunks: 250 rows of 70,000
/// positions (17.5M scores) take two, with V3.2's k of 2048.
#[test]
fn indexer_topk_scores_long_contexts_in_chunks() {
    let Some(dev) = device() else { return };
    let mut rng = Rng(7);
    let (heads, dim, ctx, rows, block_size) = (2, 16, 70_000usize, 250usize, 64);
    let n_blocks = ctx.div_ceil(block_size);
    let c = Case {
        heads,
        dim,
        k: 2048,
        weight_scale: ((heads * dim) as f32).powf(-0.5),
        q: rng.values(rows * heads * dim, -1.0, 1.0),
        weights: rng.values(rows * heads, -1.0, 1.0),
        cache: rng.values(n_blocks * block_size * dim, -1.0, 1.0),
        pos: (0..rows).map(|i| (ctx - rows + i) as u32).collect(),
        seq: vec![0; rows],
        block_size,
        blocks: (0..n_blocks as u32).rev().collect(),
        starts: vec![0, n_blocks as u32],
    };
    let got = gpu_indexer_topk(dev, &c.call()).expect("cuda indexer_topk");
    let want = cpu_indexer_topk(&c.call()).expect("cpu indexer_topk");
    compare_topk(&c, &got, &want).unwrap_or_else(|e| panic!("GPU and CPU differ: {e}"));
    eprintln!("indexer_topk long contexts: {rows} rows of {ctx} positions, k 2048: selections match");
}

// ---- the kernels' algorithm on the host (no GPU needed) ----

/// `q · k` in the order of the logits kernel: lane l of 8 accumulates with FMAs, the lanes
/// combine as the kernel's butterfly does for lane 0, then the tail folds with FMAs.
fn kernel_dot(q: &[f32], k: &[f32]) -> f32 {
    let d8 = q.len() / 8 * 8;
    let mut acc = [0.0f32; 8];
    for j in (0..d8).step_by(8) {
        for l in 0..8 {
            acc[l] = q[j + l].mul_add(k[j + l], acc[l]);
        }
    }
    let v: [f32; 8] = std::array::from_fn(|l| acc[l] + acc[l ^ 4]);
    let v: [f32; 8] = std::array::from_fn(|l| v[l] + v[l ^ 2]);
    let tail = (d8..q.len()).fold(0.0f32, |t, e| q[e].mul_add(k[e], t));
    (v[0] + v[1]) + tail
}

/// Row i's scores as the logits kernel computes them (x86 NaN rules: the host's own).
fn kernel_scores(c: &Case, i: usize) -> Vec<f32> {
    let (h, d) = (c.heads, c.dim);
    let s = c.seq[i] as usize;
    (0..=c.pos[i] as usize)
        .map(|t| {
            let key = &c.cache[c.slot(s, t) * d..][..d];
            let mut score = 0.0f32;
            for head in 0..h {
                let w = c.weights[i * h + head] * c.weight_scale;
                score += w * kernel_dot(&c.q[(i * h + head) * d..][..d], key).max(0.0);
            }
            score + 0.0
        })
        .collect()
}

/// The top-k kernel's algorithm, one thread at a time: four 8-bit radix passes from the top
/// find the k-th largest key and how many of its ties to keep, then one pass in position order.
fn kernel_select(scores: &[f32], k: usize) -> Vec<i32> {
    let key = |v: f32| {
        let b = v.to_bits();
        if b & 0x8000_0000 != 0 {
            !b
        } else {
            b | 0x8000_0000
        }
    };
    let keys: Vec<u32> = scores.iter().map(|&v| key(v)).collect();
    let (mut prefix, mut mask, mut rem) = (0u32, 0u32, k);
    for shift in [24, 16, 8, 0] {
        let mut hist = [0usize; 256];
        for &kk in keys.iter().filter(|&&kk| kk & mask == prefix) {
            hist[(kk >> shift) as usize & 255] += 1;
        }
        let (mut digit, mut above) = (255, 0);
        while above + hist[digit] < rem {
            above += hist[digit];
            digit -= 1;
        }
        prefix |= (digit as u32) << shift;
        mask |= 255 << shift;
        rem -= above;
    }
    let mut ties = 0;
    let mut out = Vec::with_capacity(k);
    for (t, &kk) in keys.iter().enumerate() {
        let take = kk > prefix || (kk == prefix && ties < rem);
        ties += usize::from(kk == prefix);
        if take {
            out.push(t as i32);
        }
    }
    out
}

/// The kernels' selection of every row, on the host.
fn kernel_topk(c: &Case) -> Vec<i32> {
    let mut out = Vec::with_capacity(c.rows() * c.k);
    for i in 0..c.rows() {
        let n = c.pos[i] as usize + 1;
        if n <= c.k {
            out.extend((0..c.k).map(|j| if j < n { j as i32 } else { -1 }));
        } else {
            out.extend(kernel_select(&kernel_scores(c, i), c.k));
        }
    }
    out
}

/// The logits kernel's order of a dot product gives `simd::dots`' bits (on a machine with
/// AVX2 and FMA), whatever the width and wherever the rows sit in `dots`' 4x2 blocking.
#[test]
fn kernel_dot_order_is_the_cpus() {
    if !cpu_is_exact_reference() {
        eprintln!("kernel_dot_order_is_the_cpus: this CPU lacks AVX2/FMA; nothing to compare");
        return;
    }
    run("kernel dot order", (1usize..=128, 1usize..7, 1usize..5, any::<u64>()), |(d, na, nb, seed), worst| {
        let mut rng = Rng(seed);
        let a = rng.with_specials(na * d, -1.0, 1.0, 0.01);
        let b = rng.with_specials(nb * d, -1.0, 1.0, 0.01);
        let mut got = vec![0.0; na * nb];
        dots(&a, &b, d, &mut got);
        worst.borrow_mut().cases += 1;
        for (e, g) in got.iter().enumerate() {
            let (i, j) = (e / nb, e % nb);
            let want = kernel_dot(&a[i * d..][..d], &b[j * d..][..d]);
            prop_assert!(
                g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
                "d {} ({}, {}): {} vs {}",
                d,
                i,
                j,
                g,
                want
            );
        }
        Ok(())
    });
}

/// The kernels' algorithm (scores in their order, the radix select) selects what the CPU
/// backend selects, ties and NaNs included.
#[test]
fn kernel_algorithm_matches_cpu() {
    if !cpu_is_exact_reference() {
        eprintln!("kernel_algorithm_matches_cpu: this CPU lacks AVX2/FMA; nothing to compare");
        return;
    }
    let strategy = (1usize..=8, 1usize..=128, prop_oneof![1usize..100, 100usize..1500], data_strategy(), any::<u64>());
    run("kernel algorithm", strategy, |(heads, dim, max_ctx, data, seed), worst| {
        let c = random_case(&mut Rng(seed), heads, dim, max_ctx, data);
        let want = cpu_indexer_topk(&c.call()).map_err(|e| TestCaseError::fail(format!("cpu: {e}")))?;
        worst.borrow_mut().cases += 1;
        compare_topk(&c, &kernel_topk(&c), &want)
    });
}

// ---- bad input: errors, never panics or out-of-bounds reads ----

/// A valid small case: 2 rows of one sequence at positions 5 and 9, pages of 4.
fn small_case() -> Case {
    let mut rng = Rng(1);
    let (heads, dim) = (2, 8);
    Case {
        heads,
        dim,
        k: 4,
        weight_scale: 0.25,
        q: rng.values(2 * heads * dim, -1.0, 1.0),
        weights: rng.values(2 * heads, -1.0, 1.0),
        cache: rng.values(16 * dim, -1.0, 1.0),
        pos: vec![5, 9],
        seq: vec![0, 0],
        block_size: 4,
        blocks: vec![3, 0, 2],
        starts: vec![0, 3],
    }
}

#[test]
fn indexer_topk_rejects_bad_shapes() {
    let Some(dev) = device() else { return };
    let c = small_case();
    let (q, w, cache) = (upload(dev, &c.q), upload(dev, &c.weights), upload(dev, &c.cache));
    let mut out = zeros::<i32>(dev, 8);
    let (qs, pg) = (c.queries(), c.pages());
    let call =
        |q: &CudaSlice<f32>,
         rows: usize,
         w: &CudaSlice<f32>,
         heads: usize,
         cache: &CudaSlice<f32>,
         cache_rows: usize,
         dim: usize,
         queries: Queries,
         out: &mut CudaSlice<i32>,
         k: usize| { dev.indexer_topk(q, rows, w, heads, 0.25, cache, cache_rows, dim, queries, pg, out, k) };
    call(&q, 2, &w, 2, &cache, 16, 8, qs, &mut out, 4).expect("a valid call");
    let one = Queries { pos: &c.pos[..1], seq: &c.seq[..1] };
    let short_seq = Queries { pos: &c.pos, seq: &c.seq[..1] };
    assert!(call(&q, 2, &w, 2, &cache, 16, 8, one, &mut out, 4).is_err(), "fewer positions than rows");
    assert!(call(&q, 2, &w, 2, &cache, 16, 8, short_seq, &mut out, 4).is_err(), "fewer sequences than rows");
    assert!(call(&upload(dev, &c.q[1..]), 2, &w, 2, &cache, 16, 8, qs, &mut out, 4).is_err(), "q too short");
    assert!(
        call(&q, 2, &upload(dev, &c.weights[1..]), 2, &cache, 16, 8, qs, &mut out, 4).is_err(),
        "weights too short"
    );
    assert!(call(&q, 2, &w, 2, &cache, 17, 8, qs, &mut out, 4).is_err(), "cache too short");
    assert!(call(&q, 2, &w, 2, &cache, 16, 8, qs, &mut zeros(dev, 7), 4).is_err(), "out too short");
    assert!(call(&q, 2, &w, 0, &cache, 16, 8, qs, &mut out, 4).is_err(), "no heads");
    assert!(call(&q, 2, &w, 2, &cache, 16, 0, qs, &mut out, 4).is_err(), "no key width");
    let wide = zeros::<f32>(dev, 2 * 2 * 129 * 17);
    assert!(call(&wide, 2, &wide, 2, &wide, 16, 129, qs, &mut out, 4).is_err(), "keys past 128 wide");
    let empty = Queries { pos: &[], seq: &[] };
    call(&q, 0, &w, 2, &cache, 16, 8, empty, &mut out, 4).expect("no rows");
    call(&q, 2, &w, 2, &cache, 16, 8, qs, &mut out, 0).expect("k = 0");
    let far = Queries { pos: &[i32::MAX as u32, 0], seq: &c.seq };
    assert!(call(&q, 2, &w, 2, &cache, 16, 8, far, &mut out, 4).is_err(), "position 2^31 - 1");
}

/// Page tables that do not cover a row's positions are errors on both backends; a page that
/// reaches past the cache only beyond the row's last position is not.
#[test]
fn indexer_topk_rejects_bad_page_tables() {
    let Some(dev) = device() else { return };
    // Row 1 (position 9) reads page 2 up to its second position: on block 3, cache rows 12
    // and 13, so 13 cache rows are too few and 14 enough.
    type Spoil = fn(&mut Case);
    let bad: [(&str, Spoil); 8] = [
        ("sequence without a table", |c| c.seq[1] = 1),
        ("table shorter than its starts say", |c| c.blocks.truncate(2)),
        ("table ends before the last page", |c| c.starts = vec![0, 2]),
        ("no starts", |c| c.starts.clear()),
        ("starts decreasing", |c| c.starts = vec![2, 1]),
        ("block past the cache", |c| c.blocks[0] = 4),
        ("last position past the cache", |c| {
            c.blocks = vec![0, 1, 3];
            c.cache.truncate(13 * c.dim);
        }),
        ("block size 0", |c| c.block_size = 0),
    ];
    for (what, spoil) in bad {
        let mut c = small_case();
        spoil(&mut c);
        assert!(gpu_indexer_topk(dev, &c.call()).is_err(), "cuda: {what}");
        assert!(cpu_indexer_topk(&c.call()).is_err(), "cpu: {what}");
    }
    let mut c = small_case();
    c.blocks = vec![0, 1, 3];
    c.cache.truncate(14 * c.dim);
    let got = gpu_indexer_topk(dev, &c.call()).expect("cuda: the last page fits up to the last position");
    let want = cpu_indexer_topk(&c.call()).expect("cpu: the last page fits up to the last position");
    if cpu_is_exact_reference() {
        assert_eq!(got, want);
    }
}
