//! The Hopper FP8 GEMM (`CudaDevice::fp8_gemm_fast`, csrc/sm90/gemm/fp8_gemm.cu) against the CPU
//! backend's `linear` and the simple CUDA `fp8_gemm`, on random shapes that are mostly not
//! multiples of the tiles, in the heuristic's tile shape and in every shape forced. Skips without
//! a GPU; fails with `FLASHSEEK_REQUIRE_GPU=1` then. The index math is tested on the host
//! (tests/gemm_index_math.rs); this checks the hardware agrees.
#![cfg(feature = "cuda")]

mod cuda_common;

use cuda_common::Rng;
use cuda_common::*;
use flashseek::backend::cuda::CudaDevice;
use flashseek::backend::{Backend, CpuBackend};
use flashseek::fp8::ScaleFmt;
use flashseek::gemm_tiles::GemmTiles;
use proptest::prelude::*;

/// k: positive multiples of 16 (TMA's stride rule): below one block, ragged blocks, whole ones,
/// and DeepSeek's 512, 1536 and 7168.
fn k_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => (1usize..66).prop_map(|b| 16 * b),
        1 => prop_oneof![Just(128usize), Just(256), Just(512), Just(1536), Just(7168)],
    ]
}

/// (m, n, k): m = 1..300 mostly (decode to small prefill), a few large; n ragged around the
/// tiles (64, 128) and DeepSeek's 576 and 2112.
fn shape_strategy() -> impl Strategy<Value = (usize, usize, usize)> {
    let n = || prop_oneof![4 => 1usize..400, 1 => prop_oneof![Just(64usize), Just(128), Just(576), Just(2112)]];
    prop_oneof![
        6 => (1usize..300, n(), k_strategy()),
        1 => (prop_oneof![Just(1024usize), Just(4096), Just(1000)], 1usize..300, (1usize..20).prop_map(|b| 16 * b)),
    ]
}

/// The heuristic's choice (None) or one of the shapes forced.
fn tiles_strategy() -> impl Strategy<Value = Option<GemmTiles>> {
    prop_oneof![Just(None), (0..GemmTiles::ALL.len()).prop_map(|i| Some(GemmTiles::ALL[i]))]
}

/// The fast kernel against the CPU's `linear` (within [`wgmma_bound`]) and the simple CUDA
/// `fp8_gemm` (both within their bounds of the exact sums: `wgmma_bound` plus `gemm_bound`).
/// Activations span 2^-20 .. 2^12 by row; one case in four has NaNs, infinities and zeros, whose
/// positions must match.
#[test]
fn fast_fp8_gemm_matches_cpu_and_simple_kernel() {
    let Some(dev) = device() else { return };
    let cpu = CpuBackend::new();
    let strategy = (shape_strategy(), tiles_strategy(), fmt_strategy(), any::<bool>(), any::<u64>());
    let vs_simple = std::cell::RefCell::new(Worst::default());
    run("fp8_gemm_fast", strategy, |((m, n, k), tiles, fmt, specials, seed), worst| {
        let mut rng = Rng(seed);
        let (host, w_values) = random_fp8_linear(&mut rng, n, k, 4096);
        let mut x = rng.magnitudes(m, k);
        if specials {
            for _ in 0..(m * k) / 3000 + 1 {
                let i = rng.below(m * k);
                x[i] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 0.0][rng.below(5)];
            }
        }
        let w = dev.load_linear(&host).expect("cuda load_linear");
        let x_dev = upload(dev, &x);
        let (mut codes, mut scales) = (zeros::<u8>(dev, m * k), zeros::<f32>(dev, m * k.div_ceil(128)));
        dev.act_quant(&x_dev, m, k, fmt, &mut codes, &mut scales).expect("cuda act_quant");
        let mut out = zeros::<f32>(dev, m * n);
        match tiles {
            Some(t) => dev.fp8_gemm_with(&codes, &scales, m, &w, &mut out, t),
            None => dev.fp8_gemm_fast(&codes, &scales, m, &w, &mut out),
        }
        .expect("fp8_gemm_fast");
        let got = download(dev, &out, m * n);
        let mut simple_out = zeros::<f32>(dev, m * n);
        dev.fp8_gemm(&codes, &scales, m, &w, &mut simple_out).expect("fp8_gemm");
        let simple = download(dev, &simple_out, m * n);

        let w_cpu = cpu.load_linear(&host).expect("cpu load_linear");
        let mut want = tensor(m, n, vec![0.0; m * n]);
        cpu.linear(&tensor(m, k, x.clone()), &w_cpu, Some(fmt), &mut want).expect("cpu linear");
        let mut xq = tensor(m, k, x);
        cpu.fp8_round(&mut xq, k, fmt).expect("cpu fp8_round");
        let p = abs_dots(xq.data(), &w_values, m, n, k);
        let chosen = tiles.unwrap_or_else(|| dev.fp8_gemm_tiles(m, n));
        let shape = format!("[{m}x{k}]·[{n}x{k}]ᵀ {fmt:?} tiles {chosen}");
        compare("fp8_gemm_fast vs cpu", &shape, n, &got, want.data(), |i| wgmma_bound(p[i], k), worst)?;
        compare("fp8_gemm_fast vs fp8_gemm", &shape, n, &got, &simple, |i| wgmma_bound(p[i], k), &vs_simple)
    });
    vs_simple.borrow().print("fp8_gemm_fast vs the simple fp8_gemm");
}

/// Every tile shape at the model's projection shapes, decode and prefill rows, against the simple
/// kernel (the CPU would take minutes here).
#[test]
fn fast_fp8_gemm_at_deepseek_shapes() {
    let Some(dev) = device() else { return };
    let worst = std::cell::RefCell::new(Worst::default());
    let mut rng = Rng(7);
    for (n, k) in [(2112, 7168), (24576, 1536), (32768, 512), (4096, 7168), (7168, 2048)] {
        let (host, w_values) = random_fp8_linear(&mut rng, n, k, 0);
        let w = dev.load_linear(&host).expect("cuda load_linear");
        for m in [1, 64, 129] {
            let x = rng.magnitudes(m, k);
            let x_dev = upload(dev, &x);
            let (mut codes, mut scales) = (zeros::<u8>(dev, m * k), zeros::<f32>(dev, m * k.div_ceil(128)));
            dev.act_quant(&x_dev, m, k, ScaleFmt::Ue8m0, &mut codes, &mut scales).expect("cuda act_quant");
            let mut simple_out = zeros::<f32>(dev, m * n);
            dev.fp8_gemm(&codes, &scales, m, &w, &mut simple_out).expect("fp8_gemm");
            let simple = download(dev, &simple_out, m * n);
            let mut xq = tensor(m, k, x);
            CpuBackend::new().fp8_round(&mut xq, k, ScaleFmt::Ue8m0).expect("cpu fp8_round");
            let p = abs_dots(xq.data(), &w_values, m, n, k);
            for t in GemmTiles::ALL {
                let mut out = zeros::<f32>(dev, m * n);
                dev.fp8_gemm_with(&codes, &scales, m, &w, &mut out, t).expect("fp8_gemm_fast");
                let got = download(dev, &out, m * n);
                let shape = format!("[{m}x{k}]·[{n}x{k}]ᵀ tiles {t}");
                compare("fp8_gemm_fast", &shape, n, &got, &simple, |i| wgmma_bound(p[i], k), &worst)
                    .unwrap_or_else(|e| panic!("{e}"));
            }
        }
    }
    worst.borrow().print("fp8_gemm_fast at DeepSeek's shapes vs fp8_gemm");
}

/// Bad shapes and short buffers are errors, never device reads out of bounds; empty products
/// are no-ops.
#[test]
fn fast_fp8_gemm_rejects_bad_input() {
    let Some(dev) = device() else { return };
    let mut rng = Rng(3);
    let (host, _) = random_fp8_linear(&mut rng, 100, 256, 0);
    let w = dev.load_linear(&host).expect("cuda load_linear");
    let (codes, scales) = (zeros::<u8>(dev, 4 * 256), zeros::<f32>(dev, 4 * 2));
    let mut out = zeros::<f32>(dev, 4 * 100);
    dev.fp8_gemm_fast(&codes, &scales, 4, &w, &mut out).expect("fits");
    assert!(dev.fp8_gemm_fast(&codes, &scales, 5, &w, &mut out).is_err(), "a too short");
    assert!(dev.fp8_gemm_fast(&codes, &zeros::<f32>(dev, 7), 4, &w, &mut out).is_err(), "a_scales too short");
    assert!(dev.fp8_gemm_fast(&codes, &scales, 4, &w, &mut zeros::<f32>(dev, 399)).is_err(), "out too short");
    assert!(dev.fp8_gemm_fast(&codes, &scales, usize::MAX, &w, &mut out).is_err(), "m overflows");
    dev.fp8_gemm_fast(&codes, &scales, 0, &w, &mut out).expect("no rows");
    // k = 200 is not a multiple of 16: TMA cannot stride it.
    let (ragged, _) = random_fp8_linear(&mut rng, 100, 200, 0);
    let ragged = dev.load_linear(&ragged).expect("cuda load_linear");
    assert!(dev.fp8_gemm_fast(&codes, &scales, 4, &ragged, &mut out).is_err(), "k = 200");
    assert!(!CudaDevice::fp8_gemm_fast_supports(0) && !CudaDevice::fp8_gemm_fast_supports(200));
    let (f32_w, _) = random_linear(&mut rng, WeightFmt::F32, 100, 256);
    let f32_w = dev.load_linear(&f32_w).expect("cuda load_linear");
    assert!(dev.fp8_gemm_fast(&codes, &scales, 4, &f32_w, &mut out).is_err(), "not FP8");
}
