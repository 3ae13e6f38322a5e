//! The lightning indexer's top-k on the CPU backend against the naive reference in
//! `tests/reference`: `score(t) = Σ_h w[h]·weight_scale·ReLU(q_h · k_t)` over positions `0..=pos`
//! through the page table, and the `k` best positions by (score descending, position ascending),
//! listed ascending and -1 padded.
//!
//! Two tests: one on inputs without near-ties at the selection boundary (so f32 and f64 agree on
//! the set), one with deliberate exact ties (repeated keys, zero keys, keys all of whose head dots
//! are negative) where ties must go to the earlier position. Cache rows outside every context are
//! NaN, so reading past a query's position is caught.

mod common;
mod reference;

use std::panic::{catch_unwind, AssertUnwindSafe};

use flashseek::backend::{Backend, CpuBackend, Pages, Queries};
use flashseek::kv_cache::BLOCK_SIZE;
use flashseek::tensor::{CacheTensor, IntTensor, Tensor};
use proptest::prelude::*;
use reference as rf;

fn tensor(rows: usize, cols: usize, data: Vec<f32>) -> Tensor<CpuBackend> {
    Tensor::<CpuBackend>::from_vec(rows, cols, data).expect("tensor")
}

fn ints(rows: usize, cols: usize, data: Vec<i32>) -> IntTensor<CpuBackend> {
    IntTensor::<CpuBackend>::from_vec(rows, cols, data).expect("int tensor")
}

/// Relative margin below which a head dot (against `‖q_h‖‖k_t‖`) or a score gap (against the
/// largest `Σ_h |w_h·ws|·‖q_h‖‖k_t‖`) counts as a near-tie that f32 rounding could flip.
const MARGIN: f64 = 1e-5;

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt()
}

/// How the selection of a query is kept robust to f32 rounding.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ties {
    /// The k-th and (k+1)-th best scores are clearly apart (or both exactly zero).
    AtBoundaryApart,
    /// Scores are few distinct values (keys from a small pool; equal keys give bit-equal
    /// scores in the kernel too): any two are exactly equal or clearly apart.
    Structural,
}

/// Whether the reference's selection for this query is robust to f32 rounding: every head dot
/// is clearly positive or negative (or exactly zero against a zero key), and scores are apart
/// as `ties` asks.
#[allow(clippy::too_many_arguments)]
fn robust(
    kc: &rf::PagedCache,
    q: &[f32],
    w: &[f32],
    ws: f32,
    seq: usize,
    pos: usize,
    k: usize,
    scores: &[f64],
    ties: Ties,
) -> bool {
    let n_heads = w.len();
    let mut scale: f64 = 0.0;
    for t in 0..=pos {
        let key = kc.row(seq, t);
        let nk = norm(key);
        let mut s = 0.0;
        for h in 0..n_heads {
            let qh = &q[h * kc.width..(h + 1) * kc.width];
            let dot: f64 = qh.iter().zip(key).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
            let size = norm(qh) * nk;
            if size > 0.0 && dot.abs() < MARGIN * size {
                return false;
            }
            s += (f64::from(w[h]) * f64::from(ws)).abs() * size;
        }
        scale = scale.max(s);
    }
    let mut sorted = scores.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    match ties {
        Ties::Structural => sorted.windows(2).all(|p| p[0] == p[1] || p[0] - p[1] > MARGIN * scale),
        Ties::AtBoundaryApart if pos < k => true,
        Ties::AtBoundaryApart => {
            let (a, b) = (sorted[k - 1], sorted[k]);
            (a == 0.0 && b == 0.0) || a - b > MARGIN * scale
        }
    }
}

/// Query rows (1..=3 per sequence, one at its last position), shuffled: `(pos, seq)`.
fn gen_queries(rng: &mut rf::Rng, lens: &[usize]) -> Vec<(u32, u32)> {
    let mut q = Vec::new();
    for (s, &len) in lens.iter().enumerate() {
        q.push((len as u32 - 1, s as u32));
        for _ in 0..rng.below(3) {
            q.push((rng.below(len) as u32, s as u32));
        }
    }
    rng.shuffle(&mut q);
    q
}

/// Runs the kernel and the reference on `kc` with queries drawn by `draw_query` (retried until
/// `robust`), and checks every row. Returns the number of rows and of rows whose k-th and
/// (k+1)-th best scores tie.
fn check_case(
    b: &CpuBackend,
    rng: &mut rf::Rng,
    kc: &rf::PagedCache,
    n_heads: usize,
    k: usize,
    ties: Ties,
    mut draw_query: impl FnMut(&mut rf::Rng) -> (Vec<f32>, Vec<f32>),
) -> Result<(usize, usize), TestCaseError> {
    let hd = kc.width;
    let ws = (1.0 / ((n_heads * hd) as f64).sqrt()) as f32;
    let qs = gen_queries(rng, &kc.lens);
    let m = qs.len();
    let (mut q, mut w, mut want) = (Vec::new(), Vec::new(), Vec::new());
    let mut boundary_ties = 0;
    for &(pos, seq) in &qs {
        let (pos, seq) = (pos as usize, seq as usize);
        let mut tries = 0;
        loop {
            let (qi, wi) = draw_query(rng);
            let scores = rf::indexer_scores(&qi, &wi, ws, &kc.cache, hd, &kc.tables[seq], pos);
            if robust(kc, &qi, &wi, ws, seq, pos, k, &scores, ties) {
                q.extend(qi);
                w.extend(wi);
                want.extend(rf::topk_positions(&scores, k));
                let mut sorted = scores.clone();
                sorted.sort_by(|a, b| b.total_cmp(a));
                if pos >= k && sorted[k - 1] == sorted[k] {
                    boundary_ties += 1;
                }
                break;
            }
            tries += 1;
            assert!(tries < 500, "no robust query found for pos {pos} k {k}");
        }
    }
    let (pos, seq): (Vec<u32>, Vec<u32>) = qs.into_iter().unzip();
    let mut out = ints(m, k, vec![-7; m * k]);
    b.indexer_topk(
        &tensor(m, n_heads * hd, q),
        &tensor(m, n_heads, w),
        ws,
        &CacheTensor::from_f32(kc.slots, hd, kc.cache.clone()).expect("cache"),
        Queries { pos: &pos, seq: &seq },
        kc.pages(),
        &mut out,
    )
    .expect("indexer_topk");
    for i in 0..m {
        prop_assert_eq!(
            &out.data()[i * k..(i + 1) * k],
            &want[i * k..(i + 1) * k],
            "query row {} (seq {}, pos {}), k {}, {} heads of {}",
            i,
            seq[i],
            pos[i],
            k,
            n_heads,
            hd
        );
    }
    Ok((m, boundary_ties))
}

fn lens_strategy() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(prop_oneof![1usize..8, 8usize..200, Just(64usize), Just(129usize)], 1..4)
}

fn k_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![1usize..8, 8usize..64, Just(16usize)]
}

#[test]
fn indexer_topk_without_near_ties() {
    let b = CpuBackend::new();
    let hd = prop_oneof![1usize..40, Just(64usize), Just(128usize)];
    let strategy = (lens_strategy(), 1usize..9, hd, k_strategy(), any::<u64>());
    rf::run("indexer_topk (no near-ties)", 128, strategy, |(lens, n_heads, hd, k, seed), t| {
        let mut rng = rf::Rng::new(seed);
        let kc = rf::PagedCache::new(&mut rng, lens, hd, |r| r.normals(hd, 1.0));
        let (rows, ties) = check_case(&b, &mut rng, &kc, n_heads, k, Ties::AtBoundaryApart, |r| {
            (r.normals(n_heads * hd, 1.0), r.normals(n_heads, 1.0))
        })?;
        t.count("query rows with the exact expected list", rows as u64);
        t.count("of which rows with a tie between the k-th and (k+1)-th best", ties as u64);
        Ok(())
    });
}

#[test]
fn indexer_topk_exact_ties_go_to_the_earlier_position() {
    let b = CpuBackend::new();
    let strategy = (lens_strategy(), 1usize..5, 1usize..33, k_strategy(), any::<u64>());
    rf::run("indexer_topk (exact ties)", 128, strategy, |(lens, n_heads, hd, k, seed), t| {
        let mut rng = rf::Rng::new(seed);
        // Keys from a pool of four: two random, the negation of the first (all its head dots
        // are negative wherever the first's are positive, often scoring an exact 0) and zero.
        let a = rng.normals(hd, 1.0);
        let pool = [a.clone(), rng.normals(hd, 1.0), a.iter().map(|v| -v).collect(), vec![0.0; hd]];
        let kc = rf::PagedCache::new(&mut rng, lens, hd, |r| pool[r.below(4)].clone());
        // Positive head weights, so zero is the lowest score and many positions tie there.
        let (rows, ties) = check_case(&b, &mut rng, &kc, n_heads, k, Ties::Structural, |r| {
            (r.normals(n_heads * hd, 1.0), (0..n_heads).map(|_| r.range(0.1, 1.0) as f32).collect())
        })?;
        t.count("query rows with the exact expected list", rows as u64);
        t.count("of which rows with a tie between the k-th and (k+1)-th best", ties as u64);
        Ok(())
    });
}

#[test]
fn indexer_topk_missing_pages_and_bad_shapes_are_errors() {
    let b = CpuBackend::new();
    let mut rng = rf::Rng::new(4);
    let (hd, n_heads, k) = (8, 2, 4);
    let kc = rf::PagedCache::new(&mut rng, vec![70, 10], hd, |r| r.normals(hd, 1.0));
    let cache = CacheTensor::from_f32(kc.slots, hd, kc.cache.clone()).expect("cache");
    let q = tensor(1, n_heads * hd, rng.normals(n_heads * hd, 1.0));
    let w = tensor(1, n_heads, vec![0.5, 0.7]);
    let mut out = ints(1, k, vec![0; k]);
    let run = |pos: u32, seq: u32, pages: Pages, out: &mut IntTensor<CpuBackend>| {
        b.indexer_topk(&q, &w, 0.25, &cache, Queries { pos: &[pos], seq: &[seq] }, pages, out)
    };
    assert!(run(69, 0, kc.pages(), &mut out).is_ok(), "the control");
    assert!(run(128, 0, kc.pages(), &mut out).is_err(), "a position past the block table returned Ok");
    assert!(run(64, 1, kc.pages(), &mut out).is_err(), "a position past the block table returned Ok");
    assert!(run(5, 2, kc.pages(), &mut out).is_err(), "an unknown sequence returned Ok");
    let bad_blocks: Vec<u32> = kc.blocks.iter().map(|_| (kc.slots / BLOCK_SIZE) as u32).collect();
    let bad = Pages { block_size: BLOCK_SIZE, blocks: &bad_blocks, starts: &kc.starts };
    assert!(run(9, 1, bad, &mut out).is_err(), "a block id past the cache returned Ok");
    assert!(run(9, 1, kc.pages(), &mut ints(2, k, vec![0; 2 * k])).is_err(), "out rows != query rows");
    // q not heads × the key width.
    let q_bad = tensor(1, n_heads * hd + 1, vec![0.5; n_heads * hd + 1]);
    let r = b.indexer_topk(&q_bad, &w, 0.25, &cache, Queries { pos: &[9], seq: &[1] }, kc.pages(), &mut out);
    assert!(r.is_err(), "q of the wrong width returned Ok");
}

/// `out` with no columns (k = 0) must give an error or nothing, not a panic.
#[test]
fn indexer_topk_with_k_zero_does_not_panic() {
    let b = CpuBackend::new();
    let mut rng = rf::Rng::new(8);
    let kc = rf::PagedCache::new(&mut rng, vec![10], 4, |r| r.normals(4, 1.0));
    let r = catch_unwind(AssertUnwindSafe(|| {
        b.indexer_topk(
            &tensor(1, 4, vec![1.0; 4]),
            &tensor(1, 1, vec![1.0]),
            1.0,
            &CacheTensor::from_f32(kc.slots, 4, kc.cache.clone()).expect("cache"),
            Queries { pos: &[9], seq: &[0] },
            kc.pages(),
            &mut ints(1, 0, vec![]),
        )
    }));
    assert!(r.is_ok(), "indexer_topk into an out of [1, 0] panicked");
}
