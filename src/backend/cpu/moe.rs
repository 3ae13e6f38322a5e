//! Mixture of experts on the CPU: DeepSeek's `noaux_tc` router and the routed experts, run
//! expert by expert over the tokens routed to each (the grouped GEMM of the GPU backends).

use rayon::prelude::*;

use super::elementwise::{add_assign, silu_mul};
use super::linear::{linear, CpuLinear, GemmMode};
use super::min_len;
use super::scratch::Pools;
use super::simd::SharedMut;
use crate::backend::{HostExpert, RouterParams};
use crate::error::{ensure_shape, Error, Result};
use crate::fp8::ScaleFmt;

/// One routed expert: SiLU-gated MLP.
pub struct CpuExpert {
    gate: CpuLinear,
    up: CpuLinear,
    down: CpuLinear,
}

impl CpuExpert {
    pub fn new(e: &HostExpert) -> Result<Self> {
        Ok(CpuExpert { gate: CpuLinear::new(&e.gate)?, up: CpuLinear::new(&e.up)?, down: CpuLinear::new(&e.down)? })
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Index of the largest value among `vals` where `allowed`, the first on ties.
fn best(vals: &[f32], allowed: impl Fn(usize) -> bool) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, &v) in vals.iter().enumerate() {
        if allowed(i) && best.is_none_or(|b| v > vals[b]) {
            best = Some(i);
        }
    }
    best
}

/// Group-limited top-k over sigmoid scores: experts are chosen by score + bias within the
/// `topk_group` groups whose two best biased scores sum highest; their weights are the unbiased
/// scores, normalized if asked, times the scaling factor.
pub fn route(
    pools: &Pools,
    logits: &[f32],
    bias: &[f32],
    p: RouterParams,
    idx: &mut [i32],
    weights: &mut [f32],
) -> Result<()> {
    let e = bias.len();
    let t = logits.len().checked_div(e).unwrap_or(0);
    ensure_shape(
        e > 0
            && logits.len() == t * e
            && idx.len() == t * p.top_k
            && weights.len() == t * p.top_k
            && p.n_group > 0
            && e % p.n_group == 0
            && p.topk_group <= p.n_group
            && p.top_k <= p.topk_group * (e / p.n_group),
        "route",
        || format!("{t} rows of {e} experts, params {p:?}, idx {} weights {}", idx.len(), weights.len()),
    )?;
    let per_group = e / p.n_group;
    let mut values = pools.f32.take(2 * e + p.n_group);
    let (scores, rest) = values.split_at_mut(e);
    let (choice, group_score) = rest.split_at_mut(e);
    // 1 where a group is kept / an expert is taken.
    let mut flags = pools.idx.take(p.n_group + e);
    let (group_on, taken) = flags.split_at_mut(p.n_group);
    for r in 0..t {
        for j in 0..e {
            scores[j] = sigmoid(logits[r * e + j]);
            choice[j] = scores[j] + bias[j];
        }
        for (g, gs) in group_score.iter_mut().enumerate() {
            let grp = &choice[g * per_group..(g + 1) * per_group];
            let first = best(grp, |_| true).unwrap_or(0);
            let second = best(grp, |i| i != first).map_or(0.0, |i| grp[i]);
            *gs = grp[first] + second;
        }
        group_on.fill(0);
        for _ in 0..p.topk_group {
            let g =
                best(group_score, |g| group_on[g] == 0).ok_or_else(|| Error::shape("route", "ran out of groups"))?;
            group_on[g] = 1;
        }
        taken.fill(0);
        let (ri, rw) = (&mut idx[r * p.top_k..(r + 1) * p.top_k], &mut weights[r * p.top_k..(r + 1) * p.top_k]);
        for j in 0..p.top_k {
            let x = best(choice, |x| group_on[x / per_group] == 1 && taken[x] == 0)
                .ok_or_else(|| Error::shape("route", "ran out of experts"))?;
            taken[x] = 1;
            ri[j] = x as i32;
            rw[j] = scores[x];
        }
        if p.norm_topk_prob {
            let sum: f32 = rw.iter().sum::<f32>() + 1e-20;
            rw.iter_mut().for_each(|w| *w /= sum);
        }
        rw.iter_mut().for_each(|w| *w *= p.scaling);
    }
    Ok(())
}

/// `out[t] = Σ_j weights[t, j] · expert_{idx[t, j]}(x[t])`.
pub fn moe_experts(
    pools: &Pools,
    mode: GemmMode,
    x: &[f32],
    experts: &[CpuExpert],
    idx: &[i32],
    weights: &[f32],
    quant: Option<ScaleFmt>,
    out: &mut [f32],
) -> Result<()> {
    let d = experts.first().map_or(0, |e| e.gate.cols());
    let t = x.len().checked_div(d).unwrap_or(0);
    let k = idx.len().checked_div(t).unwrap_or(0);
    ensure_shape(
        d > 0 && x.len() == t * d && out.len() == t * d && idx.len() == t * k && weights.len() == t * k,
        "moe_experts",
        || format!("x {} values, idx {}, weights {}, out {}, hidden {d}", x.len(), idx.len(), weights.len(), out.len()),
    )?;
    if k == 0 {
        out.fill(0.0);
        return Ok(());
    }
    if let Some(&bad) = idx.iter().find(|&&e| e < 0 || e as usize >= experts.len()) {
        return Err(Error::shape("moe_experts", format!("expert id {bad} of {}", experts.len())));
    }
    // Assignments (token·k + slot) grouped by expert, in token order within each.
    let n_experts = experts.len();
    let mut starts = pools.idx.take(n_experts + 1);
    starts.fill(0);
    for &e in idx {
        starts[e as usize + 1] += 1;
    }
    for i in 0..n_experts {
        starts[i + 1] += starts[i];
    }
    let mut fill = pools.idx.take(n_experts);
    fill.copy_from_slice(&starts[..n_experts]);
    let mut order = pools.idx.take(idx.len());
    for (a, &e) in idx.iter().enumerate() {
        order[fill[e as usize]] = a;
        fill[e as usize] += 1;
    }
    let pool = &pools.f32;
    let mut per_slot = pool.take(t * k * d);
    let slots = SharedMut::new(&mut per_slot);
    let work = idx.len() * 3 * d * experts[0].gate.rows();
    (0..n_experts)
        .into_par_iter()
        .with_min_len(min_len(n_experts, work))
        .filter(|&e| starts[e + 1] > starts[e])
        .try_for_each(|e| -> Result<()> {
            let assigned = &order[starts[e]..starts[e + 1]];
            let n = assigned.len();
            let ex = &experts[e];
            let inter = ex.gate.rows();
            let mut xe = pool.take(n * d);
            for (j, &a) in assigned.iter().enumerate() {
                xe[j * d..(j + 1) * d].copy_from_slice(&x[(a / k) * d..(a / k + 1) * d]);
            }
            let mut g = pool.take(n * inter);
            let mut u = pool.take(n * inter);
            linear(pool, mode, &xe, n, &ex.gate, quant, &mut g)?;
            linear(pool, mode, &xe, n, &ex.up, quant, &mut u)?;
            silu_mul(&mut g, &u)?;
            let mut y = pool.take(n * d);
            linear(pool, mode, &g, n, &ex.down, quant, &mut y)?;
            for (j, &a) in assigned.iter().enumerate() {
                // SAFETY: assignment `a` belongs to exactly one expert.
                let dst = unsafe { slots.slice(a * d, d) };
                let w = weights[a];
                for (o, v) in dst.iter_mut().zip(&y[j * d..(j + 1) * d]) {
                    *o = v * w;
                }
            }
            Ok(())
        })?;
    for (r, o) in out.chunks_exact_mut(d).enumerate() {
        o.copy_from_slice(&per_slot[r * k * d..r * k * d + d]);
        for j in 1..k {
            add_assign(o, &per_slot[(r * k + j) * d..(r * k + j + 1) * d])?;
        }
    }
    Ok(())
}
