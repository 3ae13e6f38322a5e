//! The lightning indexer on the CPU: weighted ReLU scores of each query against every cached
//! index key of its sequence, and a deterministic causal top-k.

use rayon::prelude::*;

use super::scratch::Pool;
use super::simd::dot;
use crate::backend::{Pages, Queries};
use crate::error::{ensure_shape, Error, Result};

/// Writes for every query row the `k` best-scoring positions (ascending, `-1`-padded).
pub fn indexer_topk(
    pool: &Pool<f32>,
    q: &[f32],
    weights: &[f32],
    weight_scale: f32,
    cache: &[f32],
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
    let n_heads = weights.len() / m.max(1);
    let hd = q.len().checked_div(m * n_heads).unwrap_or(0);
    ensure_shape(
        queries.seq.len() == m
            && weights.len() == m * n_heads
            && q.len() == m * n_heads * hd
            && hd > 0
            && cache.len() % hd == 0
            && out.len() == m * k,
        "indexer_topk",
        || {
            format!(
                "{m} queries, q {} values, weights {}, cache {}, out {} for k={k}",
                q.len(),
                weights.len(),
                cache.len(),
                out.len()
            )
        },
    )?;
    if k == 0 {
        return Ok(());
    }
    let slots_in_cache = cache.len() / hd;
    out.par_chunks_mut(k).enumerate().try_for_each(|(i, out_row)| -> Result<()> {
        let (pos, seq) = (queries.pos[i] as usize, queries.seq[i] as usize);
        let slot = |t: usize| {
            pages
                .slot(seq, t)
                .filter(|&s| s < slots_in_cache)
                .ok_or_else(|| Error::Input(format!("position {t} of sequence {seq} has no cache page")))
        };
        let n = pos + 1;
        if n <= k {
            // Every position is selected; the scores are not needed, but the pages must exist.
            for (j, o) in out_row.iter_mut().enumerate() {
                *o = if j < n {
                    slot(j)?;
                    j as i32
                } else {
                    -1
                };
            }
            return Ok(());
        }
        let qi = &q[i * n_heads * hd..(i + 1) * n_heads * hd];
        let wi = &weights[i * n_heads..(i + 1) * n_heads];
        let mut scores = pool.take(n);
        for (t, s) in scores.iter_mut().enumerate() {
            let s_t = slot(t)?;
            let key = &cache[s_t * hd..(s_t + 1) * hd];
            let mut acc = 0.0f32;
            for (qh, &w) in qi.chunks_exact(hd).zip(wi) {
                acc += w * weight_scale * dot(qh, key).max(0.0);
            }
            // +0.0 folds a negative zero into zero, so equal scores compare equal below.
            *s = acc + 0.0;
        }
        let mut sorted = pool.take(n);
        sorted.copy_from_slice(&scores);
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
                out_row[j] = t as i32;
                j += 1;
            }
        }
        Ok(())
    })
}
