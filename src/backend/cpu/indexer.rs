//! The lightning indexer on the CPU: weighted ReLU scores of each query against every cached
//! index key of its sequence, and a deterministic causal top-k.
//!
//! Scores are small GEMMs: consecutive query rows of one sequence (a decode token, or a
//! prefill chunk) share their keys, so a group of them is scored against one page of keys (its
//! contiguous cache rows) at a time, with a kernel that sums every query-key pair in the same
//! order, so scores (and ties) do not depend on how a step was batched.

use rayon::prelude::*;

use super::kv::Rows;
use super::scratch::Pools;
use super::simd::{dots, SharedMut};
use crate::backend::{Pages, Queries};
use crate::error::{ensure_shape, Result};

/// Query heads scored together against a page: bounds the logits buffer to a few hundred KB.
const MAX_QUERY_HEADS: usize = 1024;

/// Writes for every query row the `k` best-scoring positions (ascending, `-1`-padded). FP8
/// keys are decoded a page at a time as they are read, so scores are those over an f32 cache of
/// the decoded keys.
pub fn indexer_topk(
    pools: &Pools,
    q: &[f32],
    weights: &[f32],
    weight_scale: f32,
    cache: Rows,
    queries: Queries,
    pages: Pages,
    k: usize,
    out: &mut [i32],
) -> Result<()> {
    let m = queries.pos.len();
    if m == 0 {
        return ensure_shape(q.is_empty() && weights.is_empty() && out.is_empty(), "indexer_topk", || {
            format!("no queries but q {}, weights {}, out {} values", q.len(), weights.len(), out.len())
        });
    }
    let n_heads = weights.len() / m;
    let hd = q.len().checked_div(m * n_heads).unwrap_or(0);
    ensure_shape(
        queries.seq.len() == m
            && weights.len() == m * n_heads
            && q.len() == m * n_heads * hd
            && hd > 0
            && cache.cols() == hd
            && out.len() == m * k
            && pages.block_size > 0,
        "indexer_topk",
        || {
            format!(
                "{m} queries, q {} values, weights {}, cache of {} columns, out {} for k={k}",
                q.len(),
                weights.len(),
                cache.cols(),
                out.len()
            )
        },
    )?;
    if k == 0 {
        return Ok(());
    }
    let slots_in_cache = cache.num_rows();
    let slot = |seq: usize, t: usize| pages.cache_row(seq, t, slots_in_cache);
    // Row i's scores live at scores[off[i]..off[i] + pos_i + 1]; rows with no more candidates
    // than k need none.
    let scored = |i: usize| queries.pos[i] as usize + 1 > k;
    let mut off = pools.idx.take(m + 1);
    off[0] = 0;
    for i in 0..m {
        off[i + 1] = off[i] + if scored(i) { queries.pos[i] as usize + 1 } else { 0 };
    }
    let mut scores = pools.f32.take(off[m]);

    // Tasks: (first row, end row, page index) for groups of rows of one sequence.
    let group = (MAX_QUERY_HEADS / n_heads).max(1);
    let bs = pages.block_size;
    let mut n_tasks = 0;
    for_each_group(queries, group, &scored, |a, b| n_tasks += max_pos(queries, a, b) / bs + 1);
    let mut tasks = pools.idx.take(3 * n_tasks);
    let mut j = 0;
    for_each_group(queries, group, &scored, |a, b| {
        for page in 0..=max_pos(queries, a, b) / bs {
            tasks[3 * j..3 * j + 3].copy_from_slice(&[a, b, page]);
            j += 1;
        }
    });

    let dst = SharedMut::new(&mut scores);
    tasks.par_chunks(3).try_for_each(|task| -> Result<()> {
        let (a, b, page) = (task[0], task[1], task[2]);
        let seq = queries.seq[a] as usize;
        let t0 = page * bs;
        let nt = bs.min(max_pos(queries, a, b) + 1 - t0);
        let s0 = slot(seq, t0)?;
        // A page's positions are consecutive cache rows.
        ensure_shape(s0 + nt <= slots_in_cache, "indexer_topk", || format!("page of slot {s0} runs past the cache"))?;
        let mut decoded = pools.f32.take(if cache.is_f32() { 0 } else { nt * hd });
        let keys = cache.rows(s0, nt, &mut decoded);
        let rows = (b - a) * n_heads;
        let mut logits = pools.f32.take(rows * nt);
        dots(&q[a * n_heads * hd..b * n_heads * hd], keys, hd, &mut logits);
        for i in a..b {
            let pos = queries.pos[i] as usize;
            if pos < t0 {
                continue;
            }
            let n = nt.min(pos + 1 - t0);
            // SAFETY: row i's scores for this page belong to this task alone.
            let s = unsafe { dst.slice(off[i] + t0, n) };
            s.fill(0.0);
            for (h, l) in logits[(i - a) * n_heads * nt..(i - a + 1) * n_heads * nt].chunks_exact(nt).enumerate() {
                let w = weights[i * n_heads + h] * weight_scale;
                for (s, &l) in s.iter_mut().zip(l) {
                    *s += w * l.max(0.0);
                }
            }
            // +0.0 folds a negative zero into zero, so equal scores compare equal below.
            s.iter_mut().for_each(|v| *v += 0.0);
        }
        Ok(())
    })?;

    out.par_chunks_mut(k).enumerate().try_for_each(|(i, out_row)| -> Result<()> {
        let (pos, seq) = (queries.pos[i] as usize, queries.seq[i] as usize);
        if !scored(i) {
            // Every position is selected; the scores are not needed, but the pages must exist.
            for (j, o) in out_row.iter_mut().enumerate() {
                *o = if j <= pos {
                    slot(seq, j)?;
                    j as i32
                } else {
                    -1
                };
            }
            return Ok(());
        }
        select_top(&scores[off[i]..off[i + 1]], &pools.f32, out_row);
        Ok(())
    })
}

/// Calls `f(a, b)` for each group of at most `group` consecutive rows `a..b` that belong to one
/// sequence and need scores.
fn for_each_group(queries: Queries, group: usize, scored: &impl Fn(usize) -> bool, mut f: impl FnMut(usize, usize)) {
    let m = queries.pos.len();
    let mut a = 0;
    while a < m {
        if !scored(a) {
            a += 1;
            continue;
        }
        let mut b = a + 1;
        while b < m && b - a < group && queries.seq[b] == queries.seq[a] && scored(b) {
            b += 1;
        }
        f(a, b);
        a = b;
    }
}

fn max_pos(queries: Queries, a: usize, b: usize) -> usize {
    queries.pos[a..b].iter().copied().max().unwrap_or(0) as usize
}

/// The positions of the `out.len()` largest scores, ascending; ties go to the earlier position.
fn select_top(scores: &[f32], pool: &super::scratch::Pool<f32>, out: &mut [i32]) {
    let k = out.len();
    let mut sorted = pool.take(scores.len());
    sorted.copy_from_slice(scores);
    let (_, &mut thr, _) = sorted.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    let above = scores.iter().filter(|s| s.total_cmp(&thr).is_gt()).count();
    let mut ties = k - above;
    let mut j = 0;
    for (t, s) in scores.iter().enumerate() {
        let take = match s.total_cmp(&thr) {
            std::cmp::Ordering::Greater => true,
            std::cmp::Ordering::Equal if ties > 0 => {
                ties -= 1;
                true
            }
            _ => false,
        };
        if take {
            out[j] = t as i32;
            j += 1;
        }
    }
}
