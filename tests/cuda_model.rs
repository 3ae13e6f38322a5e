//! The whole model on the CUDA backend: every fixture against the same references and bounds the
//! CPU backend meets (`common::fixture_checks`), and the GPU's logits against the CPU's. Without
//! a GPU every test says so and passes; with `FLASHSEEK_REQUIRE_GPU=1` a missing GPU fails it.
#![cfg(feature = "cuda")]

mod common;

use common::fixture_checks::{check_f32, check_f32_packed_cache, check_fp8, F32_TOL};
use common::*;
use flashseek::backend::cuda::CudaBackend;
use flashseek::kv_cache::KvCacheDtype;
use flashseek::model::{ActQuant, Model};

/// A backend on GPU 0; `None` (after saying why) when there is none to test on.
fn gpu() -> Option<CudaBackend> {
    match CudaBackend::new(0) {
        Ok(b) => Some(b),
        Err(e) if std::env::var("FLASHSEEK_REQUIRE_GPU").is_ok_and(|v| v == "1") => {
            panic!("FLASHSEEK_REQUIRE_GPU=1 but no GPU: {e}")
        }
        Err(e) => {
            eprintln!("skipping the CUDA model tests: {e}");
            None
        }
    }
}

/// The GPU, and the fixture on this machine: `scripts/gpu-check slim` leaves the largest
/// fixtures behind when the checkout travels to a GPU machine, and their tests say so.
fn ready(name: &str) -> bool {
    if gpu().is_none() {
        return false;
    }
    if !fixture(name).exists() {
        eprintln!("skipping {name}: the fixture is not on this machine (scripts/gpu-check slim)");
        return false;
    }
    true
}

fn on_gpu(name: &str, act: ActQuant) -> Model<CudaBackend> {
    load_model_on(CudaBackend::new(0).expect("GPU 0"), name, act)
}

/// With `--kv-cache-dtype fp8_e4m3`.
fn on_gpu_fp8_cache(name: &str, act: ActQuant) -> Model<CudaBackend> {
    on_gpu(name, act).with_kv_cache_dtype(KvCacheDtype::Fp8E4m3).expect("an FP8 KV cache")
}

/// The prefill logits of the fixture's reference input on both backends: in f32 mode they must
/// agree as tightly as each agrees with `transformers`; in FP8 mode an e4m3 rounding flip (the
/// GEMMs sum in another order) may move a few positions, so that error is only reported.
fn gpu_matches_cpu(name: &str) {
    if !ready(name) {
        return;
    }
    let refs = read_safetensors(&fixture(name).join("reference.safetensors"));
    let ids = refs["input_ids"].ids();
    let vocab = refs["logits"].cols();
    for act in [ActQuant::None, ActQuant::Fp8] {
        let cpu = logits_of(&mut load_model(name, act), &ids, false);
        let cuda = logits_of(&mut on_gpu(name, act), &ids, false);
        let r = compare(&cuda, &to_f64(&cpu), vocab);
        println!("{name} {act:?} prefill logits, cuda vs cpu: {r}");
        assert!(r.nonfinite_mismatch.is_empty(), "{name}: non-finite values differ");
        if act == ActQuant::None {
            assert!(r.max_rel() <= F32_TOL, "{name}: cuda vs cpu worst {:.3e} > {F32_TOL:e}", r.max_rel());
        }
        // The FP8 cache rounds the latent even with f32 activations, so a flip may move a few
        // positions here too: reported only.
        let dt = KvCacheDtype::Fp8E4m3;
        let cpu = logits_of(&mut load_model(name, act).with_kv_cache_dtype(dt).expect("fp8 cache"), &ids, false);
        let cuda = logits_of(&mut on_gpu_fp8_cache(name, act), &ids, false);
        let r = compare(&cuda, &to_f64(&cpu), vocab);
        println!("{name} {act:?} prefill logits with the FP8 cache, cuda vs cpu: {r}");
        assert!(r.nonfinite_mismatch.is_empty(), "{name}: non-finite values differ (FP8 cache)");
    }
}

macro_rules! fixture_tests {
    ($($test:ident => $name:literal),* $(,)?) => {
        mod f32_mode {
            $( #[test] fn $test() {
                if super::ready($name) {
                    super::check_f32($name, |act| super::on_gpu($name, act));
                }
            } )*
        }
        mod fp8_mode {
            $( #[test] fn $test() {
                if super::ready($name) {
                    super::check_fp8($name, |act| super::on_gpu($name, act));
                }
            } )*
        }
        mod cuda_vs_cpu {
            $( #[test] fn $test() { super::gpu_matches_cpu($name) } )*
        }
        /// `--kv-cache-dtype fp8_e4m3`.
        mod fp8_cache {
            mod f32_mode {
                $( #[test] fn $test() {
                    if crate::ready($name) {
                        crate::check_f32_packed_cache($name, |act| crate::on_gpu_fp8_cache($name, act));
                    }
                } )*
            }
            mod fp8_mode {
                $( #[test] fn $test() {
                    if crate::ready($name) {
                        crate::check_fp8($name, |act| crate::on_gpu_fp8_cache($name, act));
                    }
                } )*
            }
        }
    };
}

fixture_tests! {
    tiny_v3 => "tiny-v3",
    tiny_v32 => "tiny-v32",
    tiny_v32_fp8 => "tiny-v32-fp8",
    odd_v32_fp8 => "odd-v32-fp8",
    odd_v3_bf16 => "odd-v3-bf16",
    bundled_arith => "flashseek-v32-arith",
}
