//! The MoE family of the CPU backend against the references in `tests/reference`: `route`
//! (DeepSeek's `noaux_tc` router: sigmoid scores, bias for the choice, group-limited top-k) and
//! `moe_experts` (SiLU-gated experts with F32, BF16 and FP8 weights, with and without FP8
//! activation quantization).

mod common;
mod reference;

use std::panic::{catch_unwind, AssertUnwindSafe};

use common::*;
use flashseek::backend::{Backend, CpuBackend, HostExpert, RouterParams};
use flashseek::fp8::ScaleFmt;
use flashseek::tensor::{IntTensor, Tensor};
use proptest::prelude::*;
use reference::{self as rf, WType};

fn tensor(rows: usize, cols: usize, data: Vec<f32>) -> Tensor<CpuBackend> {
    Tensor::<CpuBackend>::from_vec(rows, cols, data).expect("tensor")
}

fn ints(rows: usize, cols: usize, data: Vec<i32>) -> IntTensor<CpuBackend> {
    IntTensor::<CpuBackend>::from_vec(rows, cols, data).expect("int tensor")
}

/// `(experts, n_group, topk_group, top_k)`: DeepSeek-V3's 256/8/4/8, the fixtures' 16/4/2/4,
/// and random valid ones (at least two experts per group: a group score takes its best two).
fn router_shape() -> impl Strategy<Value = (usize, usize, usize, usize)> {
    let random =
        (1usize..9, 2usize..9).prop_flat_map(|(n_group, per)| (Just(n_group), Just(per), 1..=n_group)).prop_flat_map(
            |(n_group, per, topk_group)| (Just(n_group * per), Just(n_group), Just(topk_group), 1..=topk_group * per),
        );
    prop_oneof![1 => Just((256, 8, 4, 8)), 1 => Just((16, 4, 2, 4)), 4 => random]
}

#[test]
fn route_matches_noaux_tc() {
    let b = CpuBackend::new();
    let strategy = (router_shape(), 1usize..40, any::<bool>(), prop_oneof![Just(1.0f32), Just(2.5f32)], any::<u64>());
    rf::run("route", 64, strategy, |((e, n_group, topk_group, top_k), rows, norm, scaling, seed), t| {
        let mut rng = rf::Rng::new(seed);
        let p = RouterParams { n_group, topk_group, top_k, norm_topk_prob: norm, scaling };
        let (logits, bias) = rf::gen_router_inputs(&mut rng, rows, e, n_group);
        let mut idx = ints(rows, top_k, vec![-7; rows * top_k]);
        let mut w = tensor(rows, top_k, vec![f32::NAN; rows * top_k]);
        b.route(&tensor(rows, e, logits.clone()), &tensor(1, e, bias.clone()), p, &mut idx, &mut w).expect("route");
        let (mut got_w, mut want_w) = (Vec::new(), Vec::new());
        for r in 0..rows {
            let want = rf::route(&logits[r * e..(r + 1) * e], &bias, p);
            let mut got: Vec<(i32, f32)> = idx.data()[r * top_k..(r + 1) * top_k]
                .iter()
                .cloned()
                .zip(w.data()[r * top_k..(r + 1) * top_k].iter().cloned())
                .collect();
            got.sort_by_key(|&(j, _)| j);
            let got_set: Vec<i32> = got.iter().map(|&(j, _)| j).collect();
            let want_set: Vec<i32> = want.iter().map(|&(j, _)| j as i32).collect();
            prop_assert_eq!(&got_set, &want_set, "row {} ({:?}): selected experts differ", r, p);
            got_w.extend(got.iter().map(|&(_, w)| w));
            want_w.extend(want.iter().map(|&(_, w)| w));
        }
        let r = assert_close(&format!("route weights {p:?}"), &got_w, &want_w, top_k, 1e-6);
        t.record(if norm { "weights, normalized" } else { "weights, not normalized" }, &r);
        t.count("rows with the same expert set", rows as u64);
        Ok(())
    });
}

#[test]
fn route_bad_params_are_errors() {
    let b = CpuBackend::new();
    let mut rng = rf::Rng::new(3);
    let (logits, bias) = rf::gen_router_inputs(&mut rng, 2, 16, 4);
    let (l, bs) = (tensor(2, 16, logits), tensor(1, 16, bias));
    let p = RouterParams { n_group: 4, topk_group: 2, top_k: 4, norm_topk_prob: true, scaling: 1.0 };
    let run = |p: RouterParams, k: usize| {
        b.route(&l, &bs, p, &mut ints(2, k, vec![0; 2 * k]), &mut tensor(2, k, vec![0.0; 2 * k])).is_err()
    };
    assert!(run(RouterParams { n_group: 3, ..p }, 4), "16 experts in 3 groups");
    assert!(run(RouterParams { n_group: 0, ..p }, 4), "0 groups");
    assert!(run(RouterParams { topk_group: 5, ..p }, 4), "topk_group > n_group");
    assert!(run(RouterParams { top_k: 9, ..p }, 9), "top_k beyond the kept groups' experts");
    assert!(run(p, 3), "idx/weights narrower than top_k");
    assert!(b
        .route(&l, &tensor(1, 15, vec![0.0; 15]), p, &mut ints(2, 4, vec![0; 8]), &mut tensor(2, 4, vec![0.0; 8]))
        .is_err());
}

fn quant_strategy() -> impl Strategy<Value = Option<ScaleFmt>> {
    prop_oneof![Just(None), Just(Some(ScaleFmt::Exact)), Just(Some(ScaleFmt::Ue8m0))]
}

/// Random experts of type `wt`: host weights for the kernel, reference weights for the checks.
fn gen_experts(
    rng: &mut rf::Rng,
    wt: WType,
    n: usize,
    d: usize,
    inter: usize,
) -> (Vec<HostExpert>, Vec<rf::RefExpert>) {
    (0..n)
        .map(|_| {
            let (gh, gr) = rf::gen_linear(rng, wt, inter, d, 1.0 / (d as f64).sqrt());
            let (uh, ur) = rf::gen_linear(rng, wt, inter, d, 1.0 / (d as f64).sqrt());
            let (dh, dr) = rf::gen_linear(rng, wt, d, inter, 1.0 / (inter as f64).sqrt());
            (HostExpert { gate: gh, up: uh, down: dh }, rf::RefExpert { gate: gr, up: ur, down: dr })
        })
        .unzip()
}

/// Distinct experts per token and positive weights, as the router produces.
fn gen_assignment(rng: &mut rf::Rng, tokens: usize, n_exp: usize, k: usize) -> (Vec<i32>, Vec<f32>) {
    let mut idx = Vec::with_capacity(tokens * k);
    let mut w = Vec::with_capacity(tokens * k);
    for _ in 0..tokens {
        let mut all: Vec<i32> = (0..n_exp as i32).collect();
        rng.shuffle(&mut all);
        idx.extend(&all[..k]);
        w.extend((0..k).map(|_| rng.range(0.05, 1.5) as f32));
    }
    (idx, w)
}

fn check_moe(wt: WType, cases: u32) {
    let b = CpuBackend::new();
    let dim = prop_oneof![1 => 1usize..8, 3 => 8usize..200, 1 => Just(130usize), 1 => Just(256usize)];
    let inter = prop_oneof![1 => 1usize..8, 3 => 8usize..150, 1 => Just(128usize)];
    let shape = (1usize..9, 1usize..5).prop_map(|(n_exp, k)| (n_exp, k.min(n_exp)));
    let strategy = (shape, dim, inter, 1usize..25, quant_strategy(), any::<u64>());
    rf::run(&format!("moe_experts {wt:?}"), cases, strategy, |((n_exp, k), d, inter, tokens, quant, seed), t| {
        let mut rng = rf::Rng::new(seed);
        let (host, refs) = gen_experts(&mut rng, wt, n_exp, d, inter);
        let experts = b.load_experts(&host).expect("load_experts");
        let x = rng.activations(tokens, d);
        let (idx, w) = gen_assignment(&mut rng, tokens, n_exp, k);
        let mut out = tensor(tokens, d, vec![f32::NAN; tokens * d]);
        let (it, wtn) = (ints(tokens, k, idx.clone()), tensor(tokens, k, w.clone()));
        b.moe_experts(&tensor(tokens, d, x.clone()), &experts, &it, &wtn, quant, &mut out).expect("moe_experts");
        let want = rf::moe(&x, d, &refs, &idx, &w, k, quant);
        // Tokens whose intermediate FP8 rounding is fragile (an h within 1e-5 of an e4m3
        // rounding boundary) may round one code differently in f32: they get a tolerance of a
        // few e4m3 steps; every other token the tight one.
        let (mut g_ok, mut w_ok, mut m_ok) = (Vec::new(), Vec::new(), Vec::new());
        for tok in 0..tokens {
            let span = tok * d..(tok + 1) * d;
            if want.fragile[tok] {
                let (r, _) = rf::assert_close_to_magnitude(
                    "moe_experts fragile token",
                    &out.data()[span.clone()],
                    &want.out[span.clone()],
                    &want.mag[span],
                    d,
                    0.3,
                );
                t.record("fragile tokens (tolerance 0.3)", &r);
            } else {
                g_ok.extend_from_slice(&out.data()[span.clone()]);
                w_ok.extend_from_slice(&want.out[span.clone()]);
                m_ok.extend_from_slice(&want.mag[span]);
            }
        }
        let n_fragile = want.fragile.iter().filter(|&&f| f).count();
        t.count("fragile tokens (FP8 rounding of h within 1e-5 of a boundary)", n_fragile as u64);
        t.count("tokens checked tightly", (tokens - n_fragile) as u64);
        if !g_ok.is_empty() {
            let what = format!(
                "moe_experts {wt:?} {n_exp} experts top-{k}, d {d}, inter {inter}, {tokens} tokens, quant {quant:?}"
            );
            let (r, norm) = rf::assert_close_to_magnitude(&what, &g_ok, &w_ok, &m_ok, d, 1e-5);
            t.record(&format!("quant {quant:?}"), &r);
            t.record_value("error / Σ|w||down||h|", norm, format!("{norm:.3e}"));
        }
        // Expert ids outside the layer are errors.
        let mut bad = idx.clone();
        let at = rng.below(bad.len());
        bad[at] = if rng.chance(0.5) { n_exp as i32 } else { -1 };
        let r = b.moe_experts(&tensor(tokens, d, x.clone()), &experts, &ints(tokens, k, bad), &wtn, quant, &mut out);
        prop_assert!(r.is_err(), "an expert id outside 0..{} was accepted", n_exp);
        Ok(())
    });
}

#[test]
fn moe_experts_f32() {
    check_moe(WType::F32, 48);
}

#[test]
fn moe_experts_bf16() {
    check_moe(WType::Bf16, 24);
}

#[test]
fn moe_experts_fp8() {
    check_moe(WType::Fp8, 64);
}

#[test]
fn moe_experts_bad_shapes_are_errors() {
    let b = CpuBackend::new();
    let mut rng = rf::Rng::new(5);
    let (host, _) = gen_experts(&mut rng, WType::F32, 3, 10, 6);
    let experts = b.load_experts(&host).expect("load_experts");
    let x = tensor(4, 10, vec![1.0; 40]);
    let idx = ints(4, 2, vec![0, 1, 1, 2, 2, 0, 0, 1]);
    let w = tensor(4, 2, vec![0.5; 8]);
    assert!(b.moe_experts(&x, &experts, &ints(3, 2, vec![0; 6]), &w, None, &mut tensor(4, 10, vec![0.0; 40])).is_err());
    assert!(b
        .moe_experts(&x, &experts, &idx, &tensor(4, 3, vec![0.5; 12]), None, &mut tensor(4, 10, vec![0.0; 40]))
        .is_err());
    assert!(b.moe_experts(&x, &experts, &idx, &w, None, &mut tensor(4, 11, vec![0.0; 44])).is_err());
    assert!(b
        .moe_experts(&tensor(4, 11, vec![1.0; 44]), &experts, &idx, &w, None, &mut tensor(4, 11, vec![0.0; 44]))
        .is_err());
}

/// Tokens routed to no expert (`idx` of width 0) must give zeros or an error, not a panic.
#[test]
fn moe_experts_with_zero_experts_per_token_does_not_panic() {
    let b = CpuBackend::new();
    let mut rng = rf::Rng::new(6);
    let (host, _) = gen_experts(&mut rng, WType::F32, 2, 8, 4);
    let experts = b.load_experts(&host).expect("load_experts");
    let mut out = tensor(3, 8, vec![f32::NAN; 24]);
    let r = catch_unwind(AssertUnwindSafe(|| {
        b.moe_experts(
            &tensor(3, 8, vec![1.0; 24]),
            &experts,
            &ints(3, 0, vec![]),
            &tensor(3, 0, vec![]),
            None,
            &mut out,
        )
    }));
    match r {
        Err(_) => panic!("moe_experts with idx [3, 0] panicked"),
        Ok(Ok(())) => assert!(out.data().iter().all(|&v| v == 0.0), "no experts must give zeros: {:?}", out.data()),
        Ok(Err(_)) => {}
    }
}
