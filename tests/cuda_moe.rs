//! The MoE family on CUDA against the CPU backend: `route` (DeepSeek's `noaux_tc` router, the
//! CPU's experts in the CPU's order and its weights bit for bit) and `moe_experts` (the grouped
//! expert GEMMs in both layouts, within a bound derived below), plus bad shapes and bad expert
//! ids. Without a GPU each test says so and passes (`FLASHSEEK_REQUIRE_GPU=1` fails instead).
//! The device's expf is checked on the host (tests/host_headers.rs).
#![cfg(feature = "cuda")]

mod cuda_common;

use cuda_common::Rng;
use cuda_common::*;
use cudarc::driver::CudaSlice;
use flashseek::backend::cuda::{CudaDevice, MoeLayout};
use flashseek::backend::{Backend, CpuBackend, HostExpert, RouterParams};
use flashseek::fp8::{group_scale, round_e4m3, round_trip_row, ScaleFmt, E4M3_MAX};
use flashseek::model::weights::{HostLinear, HostTensor};
use flashseek::tensor::IntTensor;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

fn ints(rows: usize, cols: usize, data: Vec<i32>) -> IntTensor<CpuBackend> {
    IntTensor::<CpuBackend>::from_vec(rows, cols, data).expect("cpu int tensor")
}

fn upload_ints(dev: &CudaDevice, data: &[i32]) -> CudaSlice<i32> {
    dev.upload(if data.is_empty() { &[0] } else { data }).expect("upload")
}

// ---- route ----

/// `(experts, n_group, topk_group, top_k)`: DeepSeek-V3.2's 256/8/4/8, the kernel's most experts
/// (512), one group of 384 (Kimi-K2-like), and random valid ones: groups of one (their second
/// score is 0), no groups kept and no experts picked included.
fn router_shape() -> impl Strategy<Value = (usize, usize, usize, usize)> {
    let random =
        (1usize..=9, 1usize..=9).prop_flat_map(|(n_group, per)| (Just(n_group), Just(per), 0..=n_group)).prop_flat_map(
            |(n_group, per, topk_group)| (Just(n_group * per), Just(n_group), Just(topk_group), 0..=topk_group * per),
        );
    prop_oneof![3 => Just((256, 8, 4, 8)), 1 => Just((512, 16, 8, 8)), 1 => Just((384, 1, 1, 8)), 5 => random]
}

/// Router logits and bias: spread (every score distinct in practice), few distinct values (so
/// that biased scores and group scores tie and the tie breaks decide), or spread with NaN,
/// infinities and signed zeros among the logits and now and then the bias.
fn router_data(rng: &mut Rng, mode: u8, rows: usize, e: usize) -> (Vec<f32>, Vec<f32>) {
    match mode {
        0 => (rng.values(rows * e, -8.0, 8.0), rng.values(e, -1.0, 1.0)),
        1 => {
            let logits = (0..rows * e).map(|_| [-2.0, -1.0, -0.5, -0.0, 0.0, 0.5, 1.0, 2.0][rng.below(8)]).collect();
            let bias = (0..e).map(|_| [0.0, 0.25, -0.25][rng.below(3)]).collect();
            (logits, bias)
        }
        _ => (rng.with_specials(rows * e, -8.0, 8.0, 0.05), rng.with_specials(e, -1.0, 1.0, 0.01)),
    }
}

/// The GPU's router against the CPU's: the same experts in the same order, and the same weights
/// bit for bit (any NaN matches any NaN): both take the same operations in the same order, the
/// sigmoid's exp included (glibc's on both sides, `device_expf_is_the_host_expf`).
#[test]
fn route_matches_cpu() {
    let Some(dev) = device() else { return };
    let cpu = CpuBackend::new();
    let strategy = (
        router_shape(),
        prop_oneof![1 => 0usize..4, 3 => 0usize..200],
        any::<bool>(),
        prop_oneof![Just(1.0f32), Just(2.5f32)],
        0u8..3,
        any::<u64>(),
    );
    run("route", strategy, |((e, n_group, topk_group, top_k), rows, norm, scaling, mode, seed), worst| {
        let mut rng = Rng(seed);
        let p = RouterParams { n_group, topk_group, top_k, norm_topk_prob: norm, scaling };
        let (logits, bias) = router_data(&mut rng, mode, rows, e);
        let picks = rows * top_k;
        let mut idx_dev = upload_ints(dev, &vec![-7; picks]);
        let mut w_dev = upload(dev, &vec![f32::NAN; picks]);
        dev.route(&upload(dev, &logits), rows, e, &upload(dev, &bias), p, &mut idx_dev, &mut w_dev)
            .expect("cuda route");
        let (got_idx, got_w) = (download(dev, &idx_dev, picks), download(dev, &w_dev, picks));

        let mut idx = ints(rows, top_k, vec![0; picks]);
        let mut w = tensor(rows, top_k, vec![0.0; picks]);
        cpu.route(&tensor(rows, e, logits), &tensor(1, e, bias), p, &mut idx, &mut w).expect("cpu route");
        let shape = format!("{rows} rows of {e} experts, {p:?}, data {mode}");
        prop_assert_eq!(&got_idx[..], idx.data(), "{}: experts differ", shape);
        compare("route", &shape, top_k, &got_w, w.data(), |_| 0.0, worst)
    });
}

// ---- moe_experts ----

/// An expert's `[n, k]` projection of `fmt` and the values both backends multiply (FP8: code
/// times block scale, rounded to f32, as the CPU dequantizes). FP8 codes are never NaN here: one
/// NaN weight would make whole experts NaN (NaN propagation is the GEMM family's test).
fn expert_linear(rng: &mut Rng, fmt: WeightFmt, n: usize, k: usize) -> (HostLinear, Vec<f32>) {
    match fmt {
        WeightFmt::Fp8 => random_fp8_linear(rng, n, k, 0),
        _ => random_linear(rng, fmt, n, k),
    }
}

/// The values of one expert's projections, as both backends multiply them.
struct ExpertValues {
    gate: Vec<f32>,
    up: Vec<f32>,
    down: Vec<f32>,
}

/// One MoE call's inputs.
struct MoeCase {
    rows: usize,
    hidden: usize,
    inter: usize,
    top_k: usize,
    x: Vec<f32>,
    idx: Vec<i32>,
    weights: Vec<f32>,
}

/// `n` random experts: gate and up `[inter, hidden]` of `fmt`, down `[hidden, inter]` of `down_fmt`.
fn random_experts(
    rng: &mut Rng,
    n: usize,
    (hidden, inter): (usize, usize),
    fmt: WeightFmt,
    down_fmt: WeightFmt,
) -> (Vec<HostExpert>, Vec<ExpertValues>) {
    (0..n)
        .map(|_| {
            let (gate, gv) = expert_linear(rng, fmt, inter, hidden);
            let (up, uv) = expert_linear(rng, fmt, inter, hidden);
            let (down, dv) = expert_linear(rng, down_fmt, hidden, inter);
            (HostExpert { gate, up, down }, ExpertValues { gate: gv, up: uv, down: dv })
        })
        .unzip()
}

/// Tokens (magnitudes 2^-20 .. 2^12 by row), expert ids (distinct per row where `distinct` and
/// there are enough experts, else drawn with repeats) and router weights in [-0.5, 1.5).
fn random_case(
    rng: &mut Rng,
    (rows, hidden, inter): (usize, usize, usize),
    n_experts: usize,
    top_k: usize,
    distinct: bool,
) -> MoeCase {
    let x = rng.magnitudes(rows, hidden);
    let mut idx = Vec::with_capacity(rows * top_k);
    for _ in 0..rows {
        let mut pool: Vec<i32> = (0..n_experts as i32).collect();
        for _ in 0..top_k {
            if distinct && !pool.is_empty() {
                idx.push(pool.swap_remove(rng.below(pool.len())));
            } else {
                idx.push(rng.below(n_experts) as i32);
            }
        }
    }
    let weights = rng.values(rows * top_k, -0.5, 1.5);
    MoeCase { rows, hidden, inter, top_k, x, idx, weights }
}

/// The e4m3 spacing at quotient magnitude `q` (at most 448): 2^-9 among the subnormals, else an
/// eighth of q's power of two.
fn e4m3_step(q: f64) -> f64 {
    let q = q.abs().min(f64::from(E4M3_MAX));
    if q < 1.0 / 64.0 {
        1.0 / 512.0
    } else {
        2f64.powi(q.log2().floor() as i32 - 3)
    }
}

/// `silu(g) = g / (1 + e^-g)` in f64.
fn silu(g: f64) -> f64 {
    g / (1.0 + (-g).exp())
}

/// How far the GPU's `moe_experts` may be from the CPU's, per output, derived from exact (f64)
/// references that both sides are bounded against:
///
/// - gate and up: both multiply the same activations (FP8: rounded through e4m3 by the same
///   act_quant) by the same weight values, so each side's `g`, `u` is within
///   `Eg = gemm_bound(Σ|x·w|, hidden)` of the f64 dot products g*, u* (gemm_bound bounds each
///   side's error against the exact sum; see its derivation).
/// - h = silu(g)·u: |silu'| <= 1.1, so each side's h is within `D = 1.1·Eg·(|u*| + Eu) +
///   (|silu(g*)| + 1.1·Eg)·Eu` of h* = silu(g*)·u*, plus its own roundings (exp within 2u, the add,
///   the division and the product: 5u relative, taken as 3·2^-23): `Eh = D + 3·2^-23·(|h*| + D)`.
/// - the intermediate's act_quant (FP8 down with quant): each side's group amax lies in
///   `[max(|h*| - Eh), max(|h*| + Eh)]`, so its scale in `[S_lo, S_hi]` (group_scale is monotone)
///   and each quotient h/s in the interval spanned by `(h* ± Eh) / [S_lo, S_hi]`. If that
///   interval rounds to one e4m3 value c, both sides dequantize to c times their scale: within
///   `|c|·(S_hi - S_lo)/2 (+ the CPU's rounding of c·s)` of c·(S_lo + S_hi)/2. Otherwise the
///   GPU's gate/up may have moved h across a rounding boundary (an e4m3 flip): both are within
///   `Eh + step·S_hi` of h*, step the e4m3 spacing there. Without quantization, h* ± Eh.
/// - down: each side's y is within `Ey = Σ_i dQ_i·|w_ci| + gemm_bound(Σ_i (|Q_i| + dQ_i)·|w_ci|,
///   inter)` of y_ref = Σ_i Q_i·w_ci, Q the reference and dQ the radius of the step before.
/// - combine: both sum `weights[t, j]·y_j` over j in the same order; each side is within
///   `Σ_j |w_j|·Ey_j + top_k·2^-23·Σ_j |w_j|·(|y_ref_j| + Ey_j)` of Σ_j w_j·y_ref_j.
///
/// The GPU and the CPU are each within that radius of the same reference: the bound is twice it
/// (times 1.01 for second-order terms), plus f32::MIN_POSITIVE for subnormal roundings.
///
/// `gemm` is the GEMMs' bound against the exact sum: `gemm_bound`, or `wgmma_bound` where the
/// call ran on the Hopper grouped GEMM.
fn moe_bound(
    c: &MoeCase,
    values: &[ExpertValues],
    x_quant: Option<ScaleFmt>,
    h_quant: Option<ScaleFmt>,
    gemm: fn(f64, usize) -> f64,
) -> Vec<f64> {
    let (hidden, inter, top_k) = (c.hidden, c.inter, c.top_k);
    let mut xq = c.x.clone();
    if let Some(fmt) = x_quant {
        xq.chunks_mut(hidden).for_each(|row| round_trip_row(row, 128, fmt));
    }
    let mut bound = vec![0.0; c.rows * hidden];
    let (mut q_ref, mut dq) = (vec![0.0; inter], vec![0.0; inter]);
    let (mut h_ref, mut eh) = (vec![0.0; inter], vec![0.0; inter]);
    for t in 0..c.rows {
        let x = &xq[t * hidden..(t + 1) * hidden];
        let (mut spread, mut rounding) = (vec![0.0; hidden], vec![0.0; hidden]);
        for j in 0..top_k {
            let a = t * top_k + j;
            let e = &values[c.idx[a] as usize];
            let w = f64::from(c.weights[a]).abs();
            for r in 0..inter {
                let dot = |m: &[f32]| -> (f64, f64) {
                    let row = &m[r * hidden..(r + 1) * hidden];
                    x.iter().zip(row).fold((0.0, 0.0), |(s, p), (&a, &b)| {
                        (s + f64::from(a) * f64::from(b), p + (f64::from(a) * f64::from(b)).abs())
                    })
                };
                let ((g, pg), (u, pu)) = (dot(&e.gate), dot(&e.up));
                let (eg, eu) = (gemm(pg, hidden), gemm(pu, hidden));
                let s = silu(g);
                let d = 1.1 * eg * (u.abs() + eu) + (s.abs() + 1.1 * eg) * eu;
                h_ref[r] = s * u;
                eh[r] = d + 3.0 * ULP * (h_ref[r].abs() + d) + f64::from(f32::MIN_POSITIVE);
            }
            for g0 in (0..inter).step_by(128) {
                let g1 = (g0 + 128).min(inter);
                let Some(fmt) = h_quant else {
                    q_ref[g0..g1].copy_from_slice(&h_ref[g0..g1]);
                    dq[g0..g1].copy_from_slice(&eh[g0..g1]);
                    continue;
                };
                let lo = (g0..g1).map(|i| (h_ref[i].abs() - eh[i]).max(0.0)).fold(0.0, f64::max);
                let hi = (g0..g1).map(|i| h_ref[i].abs() + eh[i]).fold(0.0, f64::max);
                // Widened past the f32 rounding of the bounds, so that they still enclose.
                let s_lo = f64::from(group_scale((lo * (1.0 - 2f64.powi(-20))) as f32, fmt));
                let s_hi = f64::from(group_scale((hi * (1.0 + 2f64.powi(-20))) as f32, fmt));
                for i in g0..g1 {
                    let corners = [
                        (h_ref[i] - eh[i]) / s_lo,
                        (h_ref[i] - eh[i]) / s_hi,
                        (h_ref[i] + eh[i]) / s_lo,
                        (h_ref[i] + eh[i]) / s_hi,
                    ];
                    let q_min = corners.iter().cloned().fold(f64::INFINITY, f64::min);
                    let q_max = corners.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let widen = |q: f64, dir: f64| q + dir * (q.abs() * 2f64.powi(-21) + 1e-30);
                    let code = |q: f64| {
                        let m = f64::from(E4M3_MAX);
                        f64::from(round_e4m3(q.clamp(-m, m) as f32))
                    };
                    let (c_lo, c_hi) = (code(widen(q_min, -1.0)), code(widen(q_max, 1.0)));
                    if c_lo == c_hi {
                        q_ref[i] = c_lo * (s_lo + s_hi) / 2.0;
                        dq[i] = c_lo.abs() * ((s_hi - s_lo) / 2.0 + s_hi * ULP);
                    } else {
                        q_ref[i] = h_ref[i];
                        dq[i] = eh[i] + e4m3_step(q_min.abs().max(q_max.abs())) * s_hi + h_ref[i].abs() * ULP;
                    }
                }
            }
            for col in 0..hidden {
                let row = &e.down[col * inter..(col + 1) * inter];
                let (mut y, mut spread_y, mut mags) = (0.0, 0.0, 0.0);
                for i in 0..inter {
                    let wd = f64::from(row[i]);
                    y += q_ref[i] * wd;
                    spread_y += dq[i] * wd.abs();
                    mags += (q_ref[i].abs() + dq[i]) * wd.abs();
                }
                let ey = spread_y + gemm(mags, inter);
                spread[col] += w * ey;
                rounding[col] += w * (y.abs() + ey);
            }
        }
        for col in 0..hidden {
            let radius = spread[col] + top_k as f64 * ULP * rounding[col];
            bound[t * hidden + col] = 2.0 * radius * 1.01 + f64::from(f32::MIN_POSITIVE);
        }
    }
    bound
}

/// Shapes `(rows, hidden, inter)`, experts and top_k: rows few (decode, the masked layout) or
/// many (prefill, contiguous), hidden and inter below, at and past one 128-block.
fn moe_shape() -> impl Strategy<Value = ((usize, usize, usize), usize, usize)> {
    let side = || prop_oneof![3 => 1usize..=160, 1 => 129usize..=300];
    let rows = prop_oneof![1 => 1usize..=16, 1 => 1usize..=300];
    ((rows, side(), side()), 1usize..=16, 1usize..=4)
}

/// `moe_experts` on both backends for experts of `fmt` (down of `fmt`, or bf16 in one case of
/// four where `mixed_down`) and activation quantization from `quant`, compared within
/// [`moe_bound`]. Where the call has at most 64 assignments it runs in both simple layouts, which
/// must give the same bits; where it took [`MoeLayout::MaskedWgmma`], that is also compared with
/// the simple masked layout within the sum of both bounds (each is a bound on the distance to the
/// CPU).
fn moe_matches_cpu(op: &str, fmt: WeightFmt, quant: impl Strategy<Value = Option<ScaleFmt>>, mixed_down: bool) {
    let Some(dev) = device() else { return };
    let cpu = CpuBackend::new();
    let strategy = (moe_shape(), quant, any::<bool>(), 0u8..4, any::<u64>());
    run(op, strategy, |((dims, n_experts, top_k), quant, distinct, down_pick, seed), worst| {
        let mut rng = Rng(seed);
        let down_fmt = if mixed_down && down_pick == 0 { WeightFmt::Bf16 } else { fmt };
        let (hosts, values) = random_experts(&mut rng, n_experts, (dims.1, dims.2), fmt, down_fmt);
        let c = random_case(&mut rng, dims, n_experts, top_k, distinct);
        let (got, layout, simple) = gpu_moe(dev, &hosts, &c, quant)?;

        let experts = cpu.load_experts(&hosts).expect("cpu load_experts");
        let mut want = tensor(c.rows, c.hidden, vec![0.0; c.rows * c.hidden]);
        let (x, idx, w) = (
            tensor(c.rows, c.hidden, c.x.clone()),
            ints(c.rows, top_k, c.idx.clone()),
            tensor(c.rows, top_k, c.weights.clone()),
        );
        cpu.moe_experts(&x, &experts, &idx, &w, quant, &mut want).expect("cpu moe_experts");
        let fp8 = |f: WeightFmt| matches!(f, WeightFmt::Fp8);
        let x_quant = quant.filter(|_| fp8(fmt));
        let h_quant = quant.filter(|_| fp8(down_fmt));
        let wgmma = matches!(layout, MoeLayout::ContiguousWgmma | MoeLayout::MaskedWgmma);
        let bound = moe_bound(&c, &values, x_quant, h_quant, if wgmma { wgmma_bound } else { gemm_bound });
        let shape = format!(
            "{} rows [{}] x {n_experts} experts [{} -> {}] top {top_k} {fmt:?}/{down_fmt:?} {quant:?} {layout:?}",
            c.rows, c.hidden, c.inter, c.hidden
        );
        compare(op, &shape, c.hidden, &got, want.data(), |i| bound[i], worst)?;
        if let Some(simple) = simple {
            let simple_bound = moe_bound(&c, &values, x_quant, h_quant, gemm_bound);
            compare(
                op,
                &format!("{shape} vs simple masked"),
                c.hidden,
                &got,
                &simple,
                |i| bound[i] + simple_bound[i],
                worst,
            )?;
        }
        Ok(())
    });
}

/// What [`gpu_moe`] gives: the output, the layout taken, and the simple masked layout's output
/// where that layout was [`MoeLayout::MaskedWgmma`].
type GpuMoe = (Vec<f32>, MoeLayout, Option<Vec<f32>>);

/// The GPU's `moe_experts` of `c`, the layout it took and, where that is
/// [`MoeLayout::MaskedWgmma`], the simple masked layout's output; with at most 64 assignments
/// the two simple layouts run and must agree bit for bit.
fn gpu_moe(
    dev: &CudaDevice,
    hosts: &[HostExpert],
    c: &MoeCase,
    quant: Option<ScaleFmt>,
) -> Result<GpuMoe, TestCaseError> {
    let experts = dev.load_experts(hosts).expect("cuda load_experts");
    let layout = MoeLayout::for_call(c.rows * c.top_k, &experts, quant);
    let (x, idx, w) = (upload(dev, &c.x), upload_ints(dev, &c.idx), upload(dev, &c.weights));
    let len = c.rows * c.hidden;
    let mut out = upload(dev, &vec![f32::NAN; len]);
    dev.moe_experts(&x, c.rows, &experts, &idx, &w, c.top_k, quant, &mut out).expect("cuda moe_experts");
    let got = download(dev, &out, len);
    if c.rows * c.top_k > 64 {
        return Ok((got, layout, None));
    }
    let with = |layout: MoeLayout| {
        let mut other = upload(dev, &vec![f32::NAN; len]);
        dev.moe_experts_with(&x, c.rows, &experts, &idx, &w, c.top_k, quant, layout, &mut other)
            .expect("cuda moe_experts, other layout");
        download(dev, &other, len)
    };
    let masked = if layout == MoeLayout::Masked { got.clone() } else { with(MoeLayout::Masked) };
    let contiguous = with(MoeLayout::Contiguous);
    let same = masked.iter().zip(&contiguous).all(|(a, b)| a.to_bits() == b.to_bits());
    prop_assert!(same, "the masked and the contiguous layouts differ ({} rows, top {})", c.rows, c.top_k);
    Ok((got, layout, (layout == MoeLayout::MaskedWgmma).then_some(masked)))
}

/// The Hopper grouped GEMM's layouts against the CPU, on FP8 experts with quantized activations
/// and hidden and inter multiples of 16 (what they take), within [`moe_bound`] on [`wgmma_bound`]:
/// the contiguous one on few or many assignments, the masked one where there are at most 64
/// (decode), also against the simple masked layout within the sum of both bounds.
#[test]
fn fp8_moe_wgmma_matches_cpu() {
    let Some(dev) = device() else { return };
    let cpu = CpuBackend::new();
    let side = || prop_oneof![3 => (1usize..=10).prop_map(|b| 16 * b), 1 => (9usize..=20).prop_map(|b| 16 * b)];
    let rows = prop_oneof![1 => 1usize..=16, 1 => 1usize..=200];
    let shape = ((rows, side(), side()), 1usize..=16, 1usize..=4);
    let strategy = (shape, fmt_strategy(), any::<bool>(), any::<u64>());
    run("moe_experts, wgmma", strategy, |((dims, n_experts, top_k), fmt, distinct, seed), worst| {
        let mut rng = Rng(seed);
        let (hosts, values) = random_experts(&mut rng, n_experts, (dims.1, dims.2), WeightFmt::Fp8, WeightFmt::Fp8);
        let c = random_case(&mut rng, dims, n_experts, top_k, distinct);
        let experts = dev.load_experts(&hosts).expect("cuda load_experts");
        let (x, idx, w) = (upload(dev, &c.x), upload_ints(dev, &c.idx), upload(dev, &c.weights));
        let len = c.rows * c.hidden;
        let with = |layout: MoeLayout| {
            let mut out = upload(dev, &vec![f32::NAN; len]);
            dev.moe_experts_with(&x, c.rows, &experts, &idx, &w, top_k, Some(fmt), layout, &mut out)
                .expect("cuda moe_experts, wgmma");
            download(dev, &out, len)
        };

        let cpu_experts = cpu.load_experts(&hosts).expect("cpu load_experts");
        let mut want = tensor(c.rows, c.hidden, vec![0.0; len]);
        let (xt, it, wt) = (
            tensor(c.rows, c.hidden, c.x.clone()),
            ints(c.rows, top_k, c.idx.clone()),
            tensor(c.rows, top_k, c.weights.clone()),
        );
        cpu.moe_experts(&xt, &cpu_experts, &it, &wt, Some(fmt), &mut want).expect("cpu moe_experts");
        let bound = moe_bound(&c, &values, Some(fmt), Some(fmt), wgmma_bound);
        let shape = format!(
            "{} rows [{}] x {n_experts} experts [{} -> {}] top {top_k} {fmt:?}",
            c.rows, c.hidden, c.inter, c.hidden
        );
        let op = "moe_experts, wgmma";
        compare(
            op,
            &format!("{shape} contiguous"),
            c.hidden,
            &with(MoeLayout::ContiguousWgmma),
            want.data(),
            |i| bound[i],
            worst,
        )?;
        if c.rows * top_k <= 64 {
            let got = with(MoeLayout::MaskedWgmma);
            compare(op, &format!("{shape} masked"), c.hidden, &got, want.data(), |i| bound[i], worst)?;
            let simple = with(MoeLayout::Masked);
            let simple_bound = moe_bound(&c, &values, Some(fmt), Some(fmt), gemm_bound);
            compare(
                op,
                &format!("{shape} masked vs simple"),
                c.hidden,
                &got,
                &simple,
                |i| bound[i] + simple_bound[i],
                worst,
            )?;
        }
        Ok(())
    });
}

#[test]
fn fp8_moe_quantized_matches_cpu() {
    moe_matches_cpu("moe_experts fp8 (act_quant)", WeightFmt::Fp8, fmt_strategy().prop_map(Some), true);
}

#[test]
fn fp8_moe_unquantized_matches_cpu() {
    moe_matches_cpu("moe_experts fp8 (unquantized)", WeightFmt::Fp8, Just(None), false);
}

/// Experts that are not FP8 never quantize their activations, with or without `quant`.
fn any_quant() -> impl Strategy<Value = Option<ScaleFmt>> {
    prop_oneof![Just(None), fmt_strategy().prop_map(Some)]
}

#[test]
fn bf16_moe_matches_cpu() {
    moe_matches_cpu("moe_experts bf16", WeightFmt::Bf16, any_quant(), false);
}

#[test]
fn f16_moe_matches_cpu() {
    moe_matches_cpu("moe_experts f16", WeightFmt::F16, any_quant(), false);
}

#[test]
fn f32_moe_matches_cpu() {
    moe_matches_cpu("moe_experts f32", WeightFmt::F32, any_quant(), false);
}

/// An expert id outside `0..n_experts` is an error on the CPU; on the GPU (ids stay on the
/// device) its token's output row is NaN and every other row is what it would be without that
/// token, in both layouts. Also: no top_k gives zeros, as on the CPU; no rows writes nothing.
#[test]
fn moe_experts_marks_bad_ids_and_handles_empty_calls() {
    let Some(dev) = device() else { return };
    let cpu = CpuBackend::new();
    let mut rng = Rng(7);
    let (hosts, _) = random_experts(&mut rng, 4, (20, 30), WeightFmt::Fp8, WeightFmt::Fp8);
    let mut c = random_case(&mut rng, (6, 20, 30), 4, 2, true);
    c.idx[2] = -1;
    c.idx[9] = 4;
    let quant = Some(ScaleFmt::Ue8m0);
    let cpu_experts = cpu.load_experts(&hosts).expect("cpu load_experts");
    let mut want = tensor(6, 20, vec![0.0; 120]);
    let (x, idx, w) = (tensor(6, 20, c.x.clone()), ints(6, 2, c.idx.clone()), tensor(6, 2, c.weights.clone()));
    assert!(cpu.moe_experts(&x, &cpu_experts, &idx, &w, quant, &mut want).is_err(), "the CPU rejects bad ids");

    let experts = dev.load_experts(&hosts).expect("cuda load_experts");
    let (x_dev, idx_dev, w_dev) = (upload(dev, &c.x), upload_ints(dev, &c.idx), upload(dev, &c.weights));
    // The good tokens alone: rows 0, 2, 3, 5.
    let good = [0usize, 2, 3, 5];
    let pick =
        |v: &[f32], cols: usize| good.iter().flat_map(|&t| v[t * cols..(t + 1) * cols].to_vec()).collect::<Vec<_>>();
    let idx_good: Vec<i32> = good.iter().flat_map(|&t| c.idx[t * 2..t * 2 + 2].to_vec()).collect();
    let mut alone = zeros::<f32>(dev, 80);
    dev.moe_experts(
        &upload(dev, &pick(&c.x, 20)),
        4,
        &experts,
        &upload_ints(dev, &idx_good),
        &upload(dev, &pick(&c.weights, 2)),
        2,
        quant,
        &mut alone,
    )
    .expect("the good tokens alone");
    let alone = download(dev, &alone, 80);
    for layout in [MoeLayout::Masked, MoeLayout::Contiguous] {
        let mut out = zeros::<f32>(dev, 120);
        dev.moe_experts_with(&x_dev, 6, &experts, &idx_dev, &w_dev, 2, quant, layout, &mut out).expect("bad ids queue");
        let got = download(dev, &out, 120);
        for t in [1usize, 4] {
            assert!(
                got[t * 20..(t + 1) * 20].iter().all(|v| v.is_nan()),
                "{layout:?}: token {t} has a bad id: NaN row"
            );
        }
        let got_good = pick(&got, 20);
        assert!(
            got_good.iter().zip(&alone).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{layout:?}: good tokens unchanged"
        );
    }

    // top_k = 0: zeros on both backends.
    let mut out = upload(dev, &[f32::NAN; 120]);
    dev.moe_experts(&x_dev, 6, &experts, &idx_dev, &w_dev, 0, quant, &mut out).expect("no experts per token");
    assert_eq!(download(dev, &out, 120), vec![0.0; 120], "top_k 0 gives zeros");
    let mut want = tensor(6, 20, vec![f32::NAN; 120]);
    cpu.moe_experts(&x, &cpu_experts, &ints(6, 0, vec![]), &tensor(6, 0, vec![]), quant, &mut want)
        .expect("cpu top_k 0");
    assert_eq!(want.data(), &[0.0; 120][..], "the CPU agrees");
    // No rows: nothing written.
    let mut out = upload(dev, &[5.0; 4]);
    dev.moe_experts(&x_dev, 0, &experts, &idx_dev, &w_dev, 2, quant, &mut out).expect("no rows");
    assert_eq!(download(dev, &out, 4), vec![5.0; 4]);
}

/// The wgmma layouts with out-of-range expert ids: their tokens' rows are NaN and the others are
/// the bits of the good tokens alone (an output row depends only on its activation row and its
/// expert, whichever tile or slot it lands in): the contiguous one over 40 tokens, the masked one
/// over the first 30 (60 assignments). Experts they cannot take are an error.
#[test]
fn moe_wgmma_marks_bad_ids_and_rejects_other_experts() {
    let Some(dev) = device() else { return };
    let mut rng = Rng(11);
    let (hosts, _) = random_experts(&mut rng, 4, (32, 48), WeightFmt::Fp8, WeightFmt::Fp8);
    let mut c = random_case(&mut rng, (40, 32, 48), 4, 2, true);
    c.idx[2] = -1;
    c.idx[9] = 4;
    let quant = Some(ScaleFmt::Ue8m0);
    let experts = dev.load_experts(&hosts).expect("cuda load_experts");
    assert!(experts.takes_wgmma(quant) && !experts.takes_wgmma(None));
    for (layout, tokens) in [(MoeLayout::ContiguousWgmma, 40usize), (MoeLayout::MaskedWgmma, 30)] {
        let good: Vec<usize> = (0..tokens).filter(|&t| t != 1 && t != 4).collect();
        let pick = |v: &[f32], cols: usize| {
            good.iter().flat_map(|&t| v[t * cols..(t + 1) * cols].to_vec()).collect::<Vec<_>>()
        };
        let idx_good: Vec<i32> = good.iter().flat_map(|&t| c.idx[t * 2..t * 2 + 2].to_vec()).collect();
        let mut alone = zeros::<f32>(dev, good.len() * 32);
        let (xg, ig, wg) =
            (upload(dev, &pick(&c.x, 32)), upload_ints(dev, &idx_good), upload(dev, &pick(&c.weights, 2)));
        dev.moe_experts_with(&xg, good.len(), &experts, &ig, &wg, 2, quant, layout, &mut alone)
            .expect("the good tokens alone");
        let alone = download(dev, &alone, good.len() * 32);
        let (x, idx, w) = (
            upload(dev, &c.x[..tokens * 32]),
            upload_ints(dev, &c.idx[..tokens * 2]),
            upload(dev, &c.weights[..tokens * 2]),
        );
        let mut out = zeros::<f32>(dev, tokens * 32);
        dev.moe_experts_with(&x, tokens, &experts, &idx, &w, 2, quant, layout, &mut out).expect("bad ids queue");
        let got = download(dev, &out, tokens * 32);
        for t in [1usize, 4] {
            assert!(got[t * 32..(t + 1) * 32].iter().all(|v| v.is_nan()), "{layout:?}: token {t} has a bad id");
        }
        let same = pick(&got, 32).iter().zip(&alone).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{layout:?}: good tokens unchanged");
    }
    let layout = MoeLayout::ContiguousWgmma;
    let (x, idx, w) = (upload(dev, &c.x), upload_ints(dev, &c.idx), upload(dev, &c.weights));
    let mut out = zeros::<f32>(dev, 40 * 32);

    let (bf16, _) = random_experts(&mut rng, 4, (32, 48), WeightFmt::Bf16, WeightFmt::Bf16);
    let bf16 = dev.load_experts(&bf16).expect("cuda load_experts");
    assert!(dev.moe_experts_with(&x, 40, &bf16, &idx, &w, 2, quant, layout, &mut out).is_err(), "bf16 experts");
    let (odd, _) = random_experts(&mut rng, 4, (40, 48), WeightFmt::Fp8, WeightFmt::Fp8);
    let odd = dev.load_experts(&odd).expect("cuda load_experts");
    assert!(!odd.takes_wgmma(quant), "hidden 40 is not a multiple of 16");
    assert!(dev.moe_experts_with(&x, 32, &odd, &idx, &w, 2, None, layout, &mut out).is_err(), "no quantization");
}

// ---- bad shapes ----

#[test]
fn route_rejects_bad_shapes() {
    let Some(dev) = device() else { return };
    let (logits, bias) = (upload(dev, &[0.5; 2 * 16]), upload(dev, &[0.0; 16]));
    let (mut idx, mut w) = (upload_ints(dev, &[0; 8]), upload(dev, &[0.0; 8]));
    let p = RouterParams { n_group: 4, topk_group: 2, top_k: 4, norm_topk_prob: true, scaling: 2.5 };
    let mut route = |rows: usize, e: usize, p: RouterParams| dev.route(&logits, rows, e, &bias, p, &mut idx, &mut w);
    route(2, 16, p).expect("fits");
    route(0, 16, p).expect("no rows");
    assert!(route(2, 16, RouterParams { n_group: 0, ..p }).is_err(), "no groups");
    assert!(route(2, 16, RouterParams { n_group: 3, ..p }).is_err(), "groups do not divide the experts");
    assert!(route(2, 16, RouterParams { topk_group: 5, ..p }).is_err(), "more groups kept than exist");
    assert!(route(2, 16, RouterParams { topk_group: 1, top_k: 5, ..p }).is_err(), "top_k past the kept experts");
    assert!(route(2, 0, RouterParams { n_group: 1, topk_group: 0, top_k: 0, ..p }).is_err(), "no experts");
    assert!(route(3, 16, p).is_err(), "logits too short");
    assert!(route(1, 32, RouterParams { n_group: 8, ..p }).is_err(), "bias too short");
    assert!(route(usize::MAX, 16, p).is_err(), "rows overflow");
    let big = upload(dev, &[0.0; 1024]);
    assert!(
        dev.route(&big, 1, 1024, &big, RouterParams { n_group: 1, topk_group: 1, top_k: 1, ..p }, &mut idx, &mut w)
            .is_err(),
        "more experts than the kernel takes"
    );
    let p1 = RouterParams { top_k: 4, ..p };
    assert!(dev.route(&logits, 2, 16, &bias, p1, &mut upload_ints(dev, &[0; 7]), &mut w).is_err(), "idx too short");
    assert!(dev.route(&logits, 2, 16, &bias, p1, &mut idx, &mut upload(dev, &[0.0; 7])).is_err(), "weights too short");
}

fn f32_linear(rows: usize, cols: usize) -> HostLinear {
    HostLinear { weight: HostTensor::from_f32("w", vec![rows, cols], &vec![0.5; rows * cols]), scale_inv: None }
}

fn fp8_linear(rows: usize, cols: usize, scales: Option<usize>) -> HostLinear {
    HostLinear {
        weight: HostTensor::from_e4m3("w", vec![rows, cols], vec![0x38; rows * cols]),
        scale_inv: scales.map(|n| vec![1.0; n]),
    }
}

#[test]
fn load_experts_rejects_mixed_experts() {
    let Some(dev) = device() else { return };
    let f32_expert = || HostExpert { gate: f32_linear(6, 4), up: f32_linear(6, 4), down: f32_linear(4, 6) };
    let fp8_expert = || HostExpert {
        gate: fp8_linear(6, 4, Some(1)),
        up: fp8_linear(6, 4, Some(1)),
        down: fp8_linear(4, 6, Some(1)),
    };
    let e = dev.load_experts(&[f32_expert(), f32_expert()]).expect("two f32 experts");
    assert_eq!((e.n_experts(), e.hidden(), e.inter()), (2, 4, 6));
    dev.load_experts(&[fp8_expert(), fp8_expert()]).expect("two FP8 experts");
    let mixed_down = HostExpert { down: f32_linear(4, 6), ..fp8_expert() };
    dev.load_experts(&[mixed_down]).expect("FP8 gate and up with an f32 down");
    let empty = dev.load_experts(&[]).expect("no experts");
    assert_eq!(empty.n_experts(), 0);

    let bad = |e: HostExpert, why: &str| assert!(dev.load_experts(&[f32_expert(), e]).is_err(), "{why}");
    bad(HostExpert { gate: f32_linear(5, 4), ..f32_expert() }, "gate rows differ");
    bad(HostExpert { up: f32_linear(6, 5), ..f32_expert() }, "up columns differ");
    bad(HostExpert { down: f32_linear(6, 4), ..f32_expert() }, "down is not [hidden, inter]");
    bad(fp8_expert(), "formats differ between experts");
    let bad1 = |e: HostExpert, why: &str| assert!(dev.load_experts(&[e]).is_err(), "{why}");
    bad1(HostExpert { up: f32_linear(6, 4), ..fp8_expert() }, "gate FP8 and up f32");
    bad1(HostExpert { gate: fp8_linear(6, 4, None), up: fp8_linear(6, 4, None), ..fp8_expert() }, "no block scales");
    bad1(HostExpert { down: fp8_linear(4, 6, Some(2)), ..fp8_expert() }, "too many block scales");
    let mut short = f32_linear(6, 4);
    short.weight.shape = vec![7, 4];
    bad1(HostExpert { gate: short, ..f32_expert() }, "bytes short of the shape");
    let mut flat = f32_linear(6, 4);
    flat.weight.shape = vec![24];
    bad1(HostExpert { gate: flat, ..f32_expert() }, "1-D");
}

#[test]
fn moe_experts_rejects_bad_shapes() {
    let Some(dev) = device() else { return };
    // hidden 4, inter 6, 3 experts; 2 tokens, top 2.
    let expert = || HostExpert { gate: f32_linear(6, 4), up: f32_linear(6, 4), down: f32_linear(4, 6) };
    let experts = dev.load_experts(&[expert(), expert(), expert()]).expect("experts");
    let (x, idx, w) = (upload(dev, &[1.0; 8]), upload_ints(dev, &[0, 1, 2, 0]), upload(dev, &[0.5; 4]));
    let mut out = zeros::<f32>(dev, 8);
    let q = None;
    dev.moe_experts(&x, 2, &experts, &idx, &w, 2, q, &mut out).expect("fits");
    // Every weight 0.5: gate = up = 2, h = silu(2)·2 per column, y = 6·0.5·h, out = (0.5 + 0.5)·y.
    let h = 2.0f32 / (1.0 + (-2.0f32).exp()) * 2.0;
    let y = (0..6).fold(0.0f32, |acc, _| acc + 0.5 * h);
    let got = download(dev, &out, 8);
    assert!(got.iter().all(|&v| (v - y).abs() <= 1e-5 * y), "known values: {got:?} vs {y}");
    assert!(dev.moe_experts(&upload(dev, &[1.0; 7]), 2, &experts, &idx, &w, 2, q, &mut out).is_err(), "x too short");
    assert!(dev.moe_experts(&x, 2, &experts, &upload_ints(dev, &[0; 3]), &w, 2, q, &mut out).is_err(), "idx too short");
    assert!(
        dev.moe_experts(&x, 2, &experts, &idx, &upload(dev, &[0.5; 3]), 2, q, &mut out).is_err(),
        "weights too short"
    );
    assert!(dev.moe_experts(&x, 2, &experts, &idx, &w, 2, q, &mut zeros::<f32>(dev, 7)).is_err(), "out too short");
    assert!(dev.moe_experts(&x, usize::MAX, &experts, &idx, &w, 2, q, &mut out).is_err(), "rows overflow");
    assert!(dev.moe_experts(&x, 2, &experts, &idx, &w, usize::MAX, q, &mut out).is_err(), "top_k overflows");
    let many = upload_ints(dev, &[0; 66]);
    let (x33, w66, mut out33) = (upload(dev, &[1.0; 132]), upload(dev, &[0.5; 66]), zeros::<f32>(dev, 132));
    for layout in [MoeLayout::Masked, MoeLayout::MaskedWgmma] {
        assert!(
            dev.moe_experts_with(&x33, 33, &experts, &many, &w66, 2, q, layout, &mut out33).is_err(),
            "{layout:?} past 64 assignments"
        );
    }
    dev.moe_experts(&x33, 33, &experts, &many, &w66, 2, q, &mut out33).expect("contiguous past 64 assignments");
    let none = dev.load_experts(&[]).expect("no experts");
    assert!(dev.moe_experts(&x, 2, &none, &idx, &w, 2, q, &mut out).is_err(), "no experts");
}
