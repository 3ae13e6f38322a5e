//! The CUDA kernels against the CPU backend, on random shapes. Without a GPU (or a CUDA driver)
//! every test says so and passes, so `--features cuda` tests run on build machines; with
//! `FLASHSEEK_REQUIRE_GPU=1` (GPU machines) a missing GPU fails them instead.
#![cfg(feature = "cuda")]

use std::sync::OnceLock;

use flashseek::backend::cuda::CudaDevice;
use flashseek::backend::{Backend, CpuBackend};
use flashseek::tensor::Tensor;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// The GPU, opened once for all tests; `None` (after saying why) when there is none to test on.
fn device() -> Option<&'static CudaDevice> {
    static DEVICE: OnceLock<Option<CudaDevice>> = OnceLock::new();
    DEVICE
        .get_or_init(|| match CudaDevice::new(0) {
            Ok(d) => Some(d),
            Err(e) if std::env::var("FLASHSEEK_REQUIRE_GPU").is_ok_and(|v| v == "1") => {
                panic!("FLASHSEEK_REQUIRE_GPU=1 but no GPU: {e}")
            }
            Err(e) => {
                eprintln!("skipping the CUDA kernel tests: {e}");
                None
            }
        })
        .as_ref()
}

/// Widths: tiny, below and around one block of 256 threads, odd, and DeepSeek's hidden sizes.
fn width_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![1 => 1usize..8, 4 => 8usize..1200, 1 => Just(1536usize), 1 => Just(7168usize)]
}

#[test]
fn rms_norm_matches_cpu() {
    let Some(dev) = device() else { return };
    let cpu = CpuBackend::new();
    let strategy =
        (1usize..40, width_strategy(), prop_oneof![Just(1e-6f32), Just(1e-5f32)]).prop_flat_map(|(rows, cols, eps)| {
            let values = |n| proptest::collection::vec(-4.0f32..4.0, n);
            (Just(rows), Just(cols), Just(eps), values(rows * cols), proptest::collection::vec(0.5f32..1.5, cols))
        });
    let mut runner = TestRunner::new(Config::with_cases(64));
    runner
        .run(&strategy, |(rows, cols, eps, x, w)| {
            let got = dev.rms_norm(&x, &w, rows, cols, eps).expect("cuda rms_norm");
            let xt = Tensor::<CpuBackend>::from_vec(rows, cols, x).expect("x");
            let wt = Tensor::<CpuBackend>::from_vec(1, cols, w).expect("w");
            let mut want = Tensor::<CpuBackend>::from_vec(rows, cols, vec![0.0; rows * cols]).expect("out");
            cpu.rms_norm(&xt, 0, &wt, eps, &mut want).expect("cpu rms_norm");
            // The GPU sums squares in f32 per thread (ceil(cols / 256) terms) before combining in
            // f64, the CPU all in f64: the mean differs by at most terms * 2^-24 relative and the
            // scale by half that; `w * (x * r)` then rounds each of its two products at most an
            // ulp (2^-23) away. Every step is multiplicative, so the bound is relative per value.
            let terms = cols.div_ceil(256) as f64;
            let tol = (terms / 2.0 + 4.0) * 2f64.powi(-24);
            for (i, (&g, &c)) in got.iter().zip(want.data()).enumerate() {
                let err = (f64::from(g) - f64::from(c)).abs();
                // Subnormal outputs lose relative precision: allow their absolute spacing.
                let bound = tol * f64::from(c).abs() + f64::from(f32::MIN_POSITIVE);
                prop_assert!(err <= bound, "[{rows}x{cols}] element {i}: gpu {g} cpu {c} (err {err:e} > {bound:e})");
            }
            Ok(())
        })
        .expect("rms_norm: GPU and CPU differ");
}

#[test]
fn rms_norm_rejects_bad_shapes() {
    let Some(dev) = device() else { return };
    assert!(dev.rms_norm(&[1.0; 6], &[1.0; 3], 3, 3, 1e-6).is_err(), "x too short");
    assert!(dev.rms_norm(&[1.0; 6], &[1.0; 2], 2, 3, 1e-6).is_err(), "weight too short");
    assert!(dev.rms_norm(&[], &[], 0, 0, 1e-6).is_err(), "no columns");
    assert_eq!(dev.rms_norm(&[], &[1.0; 3], 0, 3, 1e-6).expect("no rows"), Vec::<f32>::new());
}
