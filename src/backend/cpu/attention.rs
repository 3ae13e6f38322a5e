//! Multi-head latent attention on the CPU: decode absorbed into the paged latent cache, prefill
//! over expanded keys/values; both dense-causal or sparse over the indexer's top-k positions.

use rayon::prelude::*;

use super::kv::Rows;
use super::linear::{CpuLinear, GemmMode};
use super::min_len;
use super::scratch::Pool;
use super::simd::{axpy, dot, dots, SharedMut};
use crate::backend::{MlaDims, Pages, PrefillSeq, Queries};
use crate::error::{ensure_shape, Result};

/// Heads handled together by one decode task: each cached row is read once per group.
const HEAD_GROUP: usize = 16;

/// The positions query row `row` at position `pos` attends to: the valid entries (within
/// `0..=pos`) of its top-k row, or all of `0..=pos`.
#[derive(Clone)]
struct Candidates<'a> {
    list: Option<std::slice::Iter<'a, i32>>,
    next: usize,
    pos: usize,
}

impl<'a> Candidates<'a> {
    fn new(topk: Option<(&'a [i32], usize)>, row: usize, pos: usize) -> Self {
        Candidates { list: topk.map(|(idx, k)| idx[row * k..(row + 1) * k].iter()), next: 0, pos }
    }
}

impl Iterator for Candidates<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        match &mut self.list {
            Some(it) => it.by_ref().find(|&&t| t >= 0 && t as usize <= self.pos).map(|&t| t as usize),
            None => (self.next <= self.pos).then(|| {
                self.next += 1;
                self.next - 1
            }),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.list {
            Some(it) => (0, Some(it.len())),
            None => {
                let n = (self.pos + 1).saturating_sub(self.next);
                (n, Some(n))
            }
        }
    }
}

/// In-place softmax of `s`.
fn softmax(s: &mut [f32]) {
    let max = s.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0.0f32;
    for v in s.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in s.iter_mut() {
        *v *= inv;
    }
}

/// Per head `h`: `out[i, h] = [W_kb,hᵀ q_nope[i, h], q_rope[i, h]]`, where `W_kb,h` are the
/// key rows of head `h` in `kv_b` (`[heads·(nope+v), kv_lora]`).
pub fn absorb_q(
    pool: &Pool<f32>,
    mode: GemmMode,
    q: &[f32],
    kv_b: &CpuLinear,
    d: MlaDims,
    m: usize,
    out: &mut [f32],
) -> Result<()> {
    let (qk, lat) = (d.qk(), d.latent());
    ensure_shape(
        q.len() >= m * d.heads * qk
            && out.len() == m * d.heads * lat
            && kv_b.rows() == d.heads * (d.nope + d.v)
            && kv_b.cols() == d.kv_lora,
        "absorb_q",
        || {
            format!(
                "q {} values, out {} for {m} rows, kv_b [{}, {}], dims {d:?}",
                q.len(),
                out.len(),
                kv_b.rows(),
                kv_b.cols()
            )
        },
    )?;
    let dst = SharedMut::new(out);
    let work = m * d.heads * d.nope * d.kv_lora;
    (0..d.heads).into_par_iter().with_min_len(min_len(d.heads, work)).for_each(|h| {
        let mut w = pool.take(d.nope * d.kv_lora);
        kv_b.dequant_rows(h * (d.nope + d.v), &mut w);
        let row_stride = d.heads * qk;
        // out[i, h*lat .. h*lat + kv_lora] = q_nope[i, h] · W_kb,h  (W as [nope, kv_lora])
        // SAFETY: this task writes only head h's columns; gemm strides stay inside `out`.
        unsafe {
            for (r0, rows) in row_blocks(m, mode) {
                gemm::gemm(
                    rows,
                    d.kv_lora,
                    d.nope,
                    dst.ptr().add(r0 * d.heads * lat + h * lat),
                    1,
                    (d.heads * lat) as isize,
                    false,
                    q.as_ptr().add(r0 * row_stride + h * qk),
                    1,
                    row_stride as isize,
                    w.as_ptr(),
                    1,
                    d.kv_lora as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            for i in 0..m {
                let src = &q[i * row_stride + h * qk + d.nope..i * row_stride + (h + 1) * qk];
                dst.slice(i * d.heads * lat + h * lat + d.kv_lora, d.rope).copy_from_slice(src);
            }
        }
    });
    Ok(())
}

/// Per head `h`: `out[i, h] = W_vb,h · o_lat[i, h]` with the value rows of head `h` in `kv_b`.
pub fn absorb_out(
    pool: &Pool<f32>,
    mode: GemmMode,
    o_lat: &[f32],
    kv_b: &CpuLinear,
    d: MlaDims,
    m: usize,
    out: &mut [f32],
) -> Result<()> {
    ensure_shape(
        o_lat.len() == m * d.heads * d.kv_lora
            && out.len() == m * d.heads * d.v
            && kv_b.rows() == d.heads * (d.nope + d.v)
            && kv_b.cols() == d.kv_lora,
        "absorb_out",
        || format!("o_lat {} values, out {} for {m} rows, dims {d:?}", o_lat.len(), out.len()),
    )?;
    let dst = SharedMut::new(out);
    let work = m * d.heads * d.v * d.kv_lora;
    (0..d.heads).into_par_iter().with_min_len(min_len(d.heads, work)).for_each(|h| {
        let mut w = pool.take(d.v * d.kv_lora);
        kv_b.dequant_rows(h * (d.nope + d.v) + d.nope, &mut w);
        let lhs = &o_lat[h * d.kv_lora..];
        // SAFETY: this task writes only head h's columns of `out`.
        for (r0, rows) in row_blocks(m, mode) {
            unsafe {
                gemm::gemm(
                    rows,
                    d.v,
                    d.kv_lora,
                    dst.ptr().add(r0 * d.heads * d.v + h * d.v),
                    1,
                    (d.heads * d.v) as isize,
                    false,
                    lhs.as_ptr().add(r0 * d.heads * d.kv_lora),
                    1,
                    (d.heads * d.kv_lora) as isize,
                    w.as_ptr(),
                    d.kv_lora as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                )
            };
        }
    });
    Ok(())
}

/// Row ranges a product over `m` rows is split into: one call for all of them, or (batch
/// invariant) one per row, so a row's sums never depend on the rows beside it.
fn row_blocks(m: usize, mode: GemmMode) -> impl Iterator<Item = (usize, usize)> {
    let block = if mode == GemmMode::BatchInvariant { 1 } else { m.max(1) };
    (0..m).step_by(block).map(move |r0| (r0, block.min(m - r0)))
}

fn topk_view<'a>(
    topk: Option<(&'a [i32], usize)>,
    rows: usize,
    op: &'static str,
) -> Result<Option<(&'a [i32], usize)>> {
    if let Some((idx, k)) = topk {
        ensure_shape(idx.len() >= rows * k, op, || format!("top-k has {} values for {rows} rows of {k}", idx.len()))?;
    }
    Ok(topk)
}

/// Decode attention of absorbed queries `q_lat` `[m, heads·(kv_lora+rope)]` over the paged
/// latent `cache` (rows of `kv_lora+rope`, FP8 ones decoded page by page as they are read, so
/// the sums are those over an f32 cache of the decoded values); writes `out`
/// `[m, heads·kv_lora]`.
pub fn mla_decode(
    pool: &Pool<f32>,
    q_lat: &[f32],
    cache: Rows,
    queries: Queries,
    pages: Pages,
    topk: Option<(&[i32], usize)>,
    scale: f32,
    d: MlaDims,
    out: &mut [f32],
) -> Result<()> {
    let lat = d.latent();
    let m = queries.pos.len();
    ensure_shape(
        q_lat.len() == m * d.heads * lat
            && out.len() == m * d.heads * d.kv_lora
            && queries.seq.len() == m
            && pages.block_size > 0
            && lat > 0
            && cache.cols() == lat,
        "mla_decode",
        || format!("q_lat {} values, out {} for {m} rows, dims {d:?}", q_lat.len(), out.len()),
    )?;
    let topk = topk_view(topk, m, "mla_decode")?;
    let slots_in_cache = cache.num_rows();
    let groups = d.heads.div_ceil(HEAD_GROUP);
    let dst = SharedMut::new(out);
    let candidates: usize =
        (0..m).map(|i| Candidates::new(topk, i, queries.pos[i] as usize).size_hint().1.unwrap_or(0)).sum();
    let work = 2 * candidates * d.heads * lat;
    (0..m * groups).into_par_iter().with_min_len(min_len(m * groups, work)).try_for_each(|task| -> Result<()> {
        let (i, g) = (task / groups, task % groups);
        let heads = g * HEAD_GROUP..((g + 1) * HEAD_GROUP).min(d.heads);
        let (pos, seq) = (queries.pos[i] as usize, queries.seq[i] as usize);
        let slot = |t: usize| pages.cache_row(seq, t, slots_in_cache);
        let hg = heads.len();
        let q = &q_lat[(i * d.heads + heads.start) * lat..(i * d.heads + heads.end) * lat];
        // The attended rows in segments of consecutive cache rows: the pages of a dense
        // context (in place, or decoded into `page`), or the top-k rows gathered (decoded)
        // into one buffer.
        let n = Candidates::new(topk, i, pos).count();
        let mut gathered = pool.take(if topk.is_some() { n * lat } else { 0 });
        if topk.is_some() {
            for (row, t) in gathered.chunks_exact_mut(lat).zip(Candidates::new(topk, i, pos)) {
                cache.decode_row(slot(t)?, row);
            }
        }
        let mut page = pool.take(if topk.is_none() && !cache.is_f32() { pages.block_size * lat } else { 0 });
        let step = if topk.is_some() { n.max(1) } else { pages.block_size };
        // The first cache row and the length of the dense segment at position `j`.
        let page_at = |j: usize| -> Result<(usize, usize)> {
            let c = pages.block_size.min(n - j);
            let s = slot(j)?;
            ensure_shape(s + c <= slots_in_cache, "mla_decode", || format!("page of slot {s} runs past the cache"))?;
            Ok((s, c))
        };

        let mut scores = pool.take(hg * n);
        let mut tile = pool.take(hg * step);
        for j in (0..n).step_by(step) {
            let rows = if topk.is_some() {
                &gathered[..]
            } else {
                let (s, c) = page_at(j)?;
                cache.rows(s, c, &mut page)
            };
            let c = rows.len() / lat;
            dots(q, rows, lat, &mut tile[..hg * c]);
            for h in 0..hg {
                for (sc, &v) in scores[h * n + j..h * n + j + c].iter_mut().zip(&tile[h * c..(h + 1) * c]) {
                    *sc = v * scale;
                }
            }
        }
        for h in 0..hg {
            softmax(&mut scores[h * n..(h + 1) * n]);
        }
        // SAFETY: this task owns row i, heads `heads` of out.
        let o = unsafe { dst.slice((i * d.heads + heads.start) * d.kv_lora, hg * d.kv_lora) };
        for j in (0..n).step_by(step) {
            let rows = if topk.is_some() {
                &gathered[..]
            } else {
                let (s, c) = page_at(j)?;
                cache.rows(s, c, &mut page)
            };
            let c = rows.len() / lat;
            // o[hg, kv_lora] (+)= P[:, j..j + c] · rows[:, ..kv_lora]
            // SAFETY: P has hg rows of stride n; rows holds c rows of stride lat; o is [hg, kv_lora].
            unsafe {
                gemm::gemm(
                    hg,
                    d.kv_lora,
                    c,
                    o.as_mut_ptr(),
                    1,
                    d.kv_lora as isize,
                    j > 0,
                    scores.as_ptr().add(j),
                    1,
                    n as isize,
                    rows.as_ptr(),
                    1,
                    lat as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                )
            };
        }
        if n == 0 {
            o.fill(0.0);
        }
        Ok(())
    })
}

/// Prefill attention over expanded keys/values: `q` `[T, heads·(nope+rope)]`, `kv`
/// `[ΣC, heads·(nope+v)]`, `kpe` `[ΣC, rope]`; writes the rows of `seqs` in `out`
/// `[T, heads·v]`.
pub fn mla_prefill(
    pool: &Pool<f32>,
    q: &[f32],
    kv: &[f32],
    kpe: &[f32],
    seqs: &[PrefillSeq],
    topk: Option<(&[i32], usize)>,
    scale: f32,
    d: MlaDims,
    out: &mut [f32],
) -> Result<()> {
    let (qk, kvw) = (d.qk(), d.nope + d.v);
    ensure_shape(d.heads > 0 && qk > 0 && kvw > 0, "mla_prefill", || format!("empty heads in dims {d:?}"))?;
    let t_rows = q.len() / (d.heads * qk);
    let kv_rows = kv.len() / (d.heads * kvw);
    ensure_shape(
        q.len() == t_rows * d.heads * qk && out.len() == t_rows * d.heads * d.v && kpe.len() == kv_rows * d.rope,
        "mla_prefill",
        || format!("q {} values, kv {}, kpe {}, out {}, dims {d:?}", q.len(), kv.len(), kpe.len(), out.len()),
    )?;
    let mut q_end = 0;
    for s in seqs {
        ensure_shape(
            s.q_start >= q_end && s.q_start + s.q_len <= t_rows && s.kv_start + s.start_pos + s.q_len <= kv_rows,
            "mla_prefill",
            || {
                format!(
                    "sequence {s:?} overlaps the one before or reaches past q ({t_rows} rows) or kv ({kv_rows} rows)"
                )
            },
        )?;
        q_end = s.q_start + s.q_len;
    }
    let topk = topk_view(topk, t_rows, "mla_prefill")?;
    let dst = SharedMut::new(out);
    for s in seqs {
        let work = s.q_len * d.heads * (s.start_pos + s.q_len) * (qk + d.v);
        (0..s.q_len * d.heads).into_par_iter().with_min_len(min_len(s.q_len * d.heads, work)).for_each(|task| {
            let (j, h) = (task / d.heads, task % d.heads);
            let (row, pos) = (s.q_start + j, s.start_pos + j);
            let cand = Candidates::new(topk, row, pos);
            let qh = &q[(row * d.heads + h) * qk..(row * d.heads + h + 1) * qk];
            let mut scores = pool.take(cand.clone().count());
            for (sc, t) in scores.iter_mut().zip(cand.clone()) {
                let r = s.kv_start + t;
                let k_nope = &kv[(r * d.heads + h) * kvw..(r * d.heads + h) * kvw + d.nope];
                *sc = (dot(&qh[..d.nope], k_nope) + dot(&qh[d.nope..], &kpe[r * d.rope..(r + 1) * d.rope])) * scale;
            }
            softmax(&mut scores);
            // SAFETY: each (row, head) pair is one task, and sequences do not share rows.
            let o = unsafe { dst.slice((row * d.heads + h) * d.v, d.v) };
            o.fill(0.0);
            for (&p, t) in scores.iter().zip(cand) {
                let r = s.kv_start + t;
                axpy(o, p, &kv[(r * d.heads + h) * kvw + d.nope..(r * d.heads + h + 1) * kvw]);
            }
        });
    }
    Ok(())
}
