//! The GEMM family of the CPU backend (`linear`, `embedding`) against the f64 references in
//! `tests/reference`: every weight type (F32, BF16, F16, FP8 e4m3 with 128x128 block scales incl.
//! partial edge blocks), both code paths (fewer than 8 rows: row dot products; 8 or more: tiled
//! GEMM) and every activation quantization (none, exact scales, ue8m0 scales; it applies to FP8
//! weights only).
//!
//! The FP8 reference quantizes the activations itself (its own e4m3 rounding, shown bit-equal to
//! `flashseek::fp8` in kernels_fp8.rs) and sums per 128-wide K block as DeepSeek's `fp8_gemm`
//! does. Since the kernel and the reference quantize the same f32 inputs with the same f32
//! scale arithmetic, the quantized operands are identical and only the f32 accumulation differs:
//! the tolerance is the same tight one as without quantization.

mod common;
mod reference;

use common::*;
use flashseek::backend::{Backend, CpuBackend};
use flashseek::fp8::ScaleFmt;
use flashseek::model::weights::{HostLinear, HostTensor};
use flashseek::tensor::Tensor;
use proptest::prelude::*;
use reference::{self as rf, WType};

/// Per-row error allowed for an f32-accumulated product against the f64 reference, relative to
/// the row's `Σ|x|·|w|` (its relative error where the sums do not cancel).
const TOL: f64 = 1e-5;

fn quant_strategy() -> impl Strategy<Value = Option<ScaleFmt>> {
    prop_oneof![Just(None), Just(Some(ScaleFmt::Exact)), Just(Some(ScaleFmt::Ue8m0))]
}

/// Rows: the row-dot path (< 8), the tiled path (>= 8), and a moderately large batch.
fn rows_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![3 => 1usize..8, 3 => 8usize..40, 1 => Just(64usize)]
}

/// Output features: tiny to several 64-row tiles and 128-row scale blocks, rarely aligned.
fn n_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![1 => 1usize..4, 4 => 4usize..300, 1 => Just(128usize)]
}

/// Input features: tiny, below/above one FP8 block, and moderately large (several blocks with a
/// partial last one).
fn k_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![1 => 1usize..4, 4 => 4usize..300, 2 => 300usize..1100, 1 => Just(256usize)]
}

fn tensor(rows: usize, cols: usize, data: Vec<f32>) -> Tensor<CpuBackend> {
    Tensor::<CpuBackend>::from_vec(rows, cols, data).expect("tensor")
}

fn label(wt: WType, m: usize, quant: Option<ScaleFmt>) -> String {
    let path = if m < 8 { "row-dot path" } else { "gemm path" };
    format!("{wt:?} weights, {path}, quant {quant:?}")
}

fn check_linear(wt: WType, cases: u32) {
    let b = CpuBackend::new();
    let strategy = (rows_strategy(), n_strategy(), k_strategy(), quant_strategy(), any::<u64>());
    rf::run(&format!("linear {wt:?}"), cases, strategy, |(m, n, k, quant, seed), t| {
        let mut rng = rf::Rng::new(seed);
        let (host, refw) = rf::gen_linear(&mut rng, wt, n, k, 0.1);
        let w = b.load_linear(&host).expect("load_linear");
        let x = rng.activations(m, k);
        let xt = tensor(m, k, x.clone());
        let mut out = tensor(m, n, vec![f32::NAN; m * n]);
        b.linear(&xt, &w, quant, &mut out).expect("linear");
        let want = rf::linear(&x, m, &refw, quant);
        let x_abs: Vec<f32> = x.iter().map(|v| v.abs()).collect();
        let mag = rf::linear(&x_abs, m, &refw.abs(), quant);
        let what = format!("linear {wt:?} [{m}x{k}]·[{n}x{k}]ᵀ quant {quant:?}");
        let (r, norm) = rf::assert_close_to_magnitude(&what, out.data(), &want, &mag, n, TOL);
        t.record(&label(wt, m, quant), &r);
        t.record_value("error / Σ|x||w| (all paths)", norm, format!("{norm:.3e}"));
        // Quantization applies to FP8 weights only; for FP8 it must make a difference (the
        // reference with the other setting is far from the kernel's output).
        if quant.is_some() && wt == WType::Fp8 && k >= 16 && x.iter().any(|&v| v != 0.0) {
            let unq = rf::linear(&x, m, &refw, None);
            let r = compare(out.data(), &unq, n);
            prop_assert!(r.max_rel() > 1e-4, "FP8 linear with quant {quant:?} looks unquantized: {r}");
        }
        Ok(())
    });
}

#[test]
fn linear_f32() {
    check_linear(WType::F32, 64);
}

#[test]
fn linear_bf16() {
    check_linear(WType::Bf16, 64);
}

#[test]
fn linear_f16() {
    check_linear(WType::F16, 64);
}

#[test]
fn linear_fp8() {
    check_linear(WType::Fp8, 96);
}

/// In batch-invariant mode every row comes out bit for bit the same whether it is computed
/// alone or among other rows (the fast mode switches loops with the row count).
#[test]
fn batch_invariant_linear_rows_do_not_depend_on_the_batch() {
    let b = CpuBackend::batch_invariant();
    let strategy = (1usize..40, n_strategy(), k_strategy(), quant_strategy(), any::<u64>());
    rf::run("batch-invariant linear", 48, strategy, |(m, n, k, quant, seed), t| {
        let mut rng = rf::Rng::new(seed);
        for wt in [WType::Fp8, WType::Bf16] {
            let (host, refw) = rf::gen_linear(&mut rng, wt, n, k, 0.1);
            let w = b.load_linear(&host).expect("load_linear");
            let x = rng.activations(m, k);
            let mut batched = tensor(m, n, vec![f32::NAN; m * n]);
            b.linear(&tensor(m, k, x.clone()), &w, quant, &mut batched).expect("linear");
            for i in 0..m {
                let mut alone = tensor(1, n, vec![f32::NAN; n]);
                b.linear(&tensor(1, k, x[i * k..(i + 1) * k].to_vec()), &w, quant, &mut alone).expect("linear");
                let row = &batched.data()[i * n..(i + 1) * n];
                prop_assert!(
                    row.iter().zip(alone.data()).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{wt:?} row {i} of {m} differs from the row alone"
                );
            }
            let want = rf::linear(&x, m, &refw, quant);
            let x_abs: Vec<f32> = x.iter().map(|v| v.abs()).collect();
            let mag = rf::linear(&x_abs, m, &refw.abs(), quant);
            let (r, _) = rf::assert_close_to_magnitude("batch-invariant linear", batched.data(), &want, &mag, n, TOL);
            t.record(&format!("{wt:?} weights, batch-invariant"), &r);
        }
        Ok(())
    });
}

#[test]
fn embedding_all_dtypes_and_out_of_vocab() {
    let b = CpuBackend::new();
    let wt = prop_oneof![Just(WType::F32), Just(WType::Bf16), Just(WType::F16), Just(WType::Fp8)];
    let strategy = (wt, 1usize..300, 1usize..300, 1usize..40, any::<u64>());
    rf::run("embedding", 64, strategy, |(wt, vocab, hidden, n_ids, seed), t| {
        let mut rng = rf::Rng::new(seed);
        let (host, refw) = rf::gen_linear(&mut rng, wt, vocab, hidden, 1.0);
        let table = b.load_linear(&host).expect("load_linear");
        let mut ids: Vec<u32> = (0..n_ids).map(|_| rng.below(vocab) as u32).collect();
        ids[0] = (vocab - 1) as u32;
        let mut out = tensor(n_ids, hidden, vec![f32::NAN; n_ids * hidden]);
        b.embedding(&table, &ids, &mut out).expect("embedding");
        let wd = refw.dequant();
        let want: Vec<f64> =
            ids.iter().flat_map(|&id| wd[id as usize * hidden..(id as usize + 1) * hidden].to_vec()).collect();
        // Each value is one product of two f32s (code · scale) rounded once to f32: the f32
        // nearest to the reference, bit for bit.
        let r = assert_close(&format!("embedding {wt:?}"), out.data(), &want, hidden, 1e-7);
        for (i, (g, w)) in out.data().iter().zip(&want).enumerate() {
            prop_assert_eq!(g.to_bits(), (*w as f32).to_bits(), "embedding {:?} value {}", wt, i);
        }
        t.record(&format!("{wt:?}"), &r);
        // An id outside the vocabulary is an error, not a panic.
        let mut bad = ids.clone();
        bad[rng.below(n_ids)] = vocab as u32 + rng.below(3) as u32;
        prop_assert!(b.embedding(&table, &bad, &mut out).is_err(), "out-of-vocab id accepted");
        prop_assert!(b.embedding(&table, &[u32::MAX], &mut tensor(1, hidden, vec![0.0; hidden])).is_err());
        Ok(())
    });
}

#[test]
fn bad_weights_and_shapes_are_errors() {
    let b = CpuBackend::new();
    let mut rng = rf::Rng::new(7);
    let (fp8, _) = rf::gen_linear(&mut rng, WType::Fp8, 200, 130, 0.1);
    // FP8 without block scales, or with the wrong number of them ([2, 2] needed here).
    assert!(b.load_linear(&HostLinear { weight: fp8.weight.clone(), scale_inv: None }).is_err());
    assert!(b.load_linear(&HostLinear { weight: fp8.weight.clone(), scale_inv: Some(vec![1.0; 3]) }).is_err());
    assert!(b.load_linear(&HostLinear { weight: fp8.weight.clone(), scale_inv: Some(vec![1.0; 5]) }).is_err());
    // A weight that is not 2-D.
    let w3 = HostTensor::from_f32("w", vec![2, 3, 4], &[0.0; 24]);
    assert!(b.load_linear(&HostLinear { weight: w3, scale_inv: None }).is_err());
    // Shape mismatches in linear: x columns, out rows, out columns.
    let w = b.load_linear(&fp8).expect("load_linear");
    let x = tensor(3, 130, vec![1.0; 390]);
    assert!(b.linear(&tensor(3, 129, vec![1.0; 387]), &w, None, &mut tensor(3, 200, vec![0.0; 600])).is_err());
    assert!(b.linear(&x, &w, None, &mut tensor(2, 200, vec![0.0; 400])).is_err());
    assert!(b.linear(&x, &w, Some(ScaleFmt::Ue8m0), &mut tensor(3, 201, vec![0.0; 603])).is_err());
    // Embedding into the wrong shape.
    assert!(b.embedding(&w, &[1, 2], &mut tensor(3, 130, vec![0.0; 390])).is_err());
    assert!(b.embedding(&w, &[1, 2], &mut tensor(2, 131, vec![0.0; 262])).is_err());
}

/// Degenerate but well-formed shapes (a weight with no output rows, or no input columns) must
/// give zeros / nothing or an error, not a panic.
#[test]
fn degenerate_linear_shapes_do_not_panic() {
    let b = CpuBackend::new();
    let mut rng = rf::Rng::new(12);
    let mut failures = Vec::new();
    for (wt, n, k, m, quant) in [
        (WType::F32, 0usize, 5usize, 3usize, None),
        (WType::Bf16, 0, 5, 3, None),
        (WType::Fp8, 0, 5, 3, Some(ScaleFmt::Exact)),
        (WType::F32, 4, 0, 3, None),
        (WType::Fp8, 4, 0, 3, Some(ScaleFmt::Ue8m0)),
        (WType::Fp8, 4, 0, 9, Some(ScaleFmt::Ue8m0)),
    ] {
        let (host, _) = rf::gen_linear(&mut rng, wt, n, k, 0.1);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let w = b.load_linear(&host)?;
            let mut out = tensor(m, n, vec![f32::NAN; m * n]);
            b.linear(&tensor(m, k, vec![1.0; m * k]), &w, quant, &mut out)?;
            Ok::<_, flashseek::Error>(out.data().to_vec())
        }));
        match r {
            Err(_) => failures.push(format!("linear {wt:?} [{m}x{k}]·[{n}x{k}]ᵀ quant {quant:?} panicked")),
            Ok(Ok(out)) => assert!(out.iter().all(|&v| v == 0.0), "linear with k = 0 must give zeros: {out:?}"),
            Ok(Err(_)) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
