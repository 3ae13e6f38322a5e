//! The whole model against the reference fixtures (tests/fixtures/README.md): prefill logits,
//! every hidden state, token-by-token decoding and greedy generation, with activation
//! quantization off (against `transformers`, tight) and on (against DeepSeek's FP8 semantics,
//! to the README's bounds).

mod common;

use common::fixture_checks::{check_f32, check_f32_packed_cache, check_fp8};
use common::load_model;
use flashseek::kv_cache::KvCacheDtype;
use flashseek::model::{ActQuant, Model};

fn load_fp8_cache(name: &str, act: ActQuant) -> Model<flashseek::backend::CpuBackend> {
    load_model(name, act).with_kv_cache_dtype(KvCacheDtype::Fp8E4m3).expect("an FP8 KV cache")
}

fn load_bf16_cache(name: &str, act: ActQuant) -> Model<flashseek::backend::CpuBackend> {
    load_model(name, act).with_kv_cache_dtype(KvCacheDtype::Bf16).expect("a bf16 KV cache")
}

macro_rules! fixture_tests {
    ($($test:ident => $name:literal),* $(,)?) => {
        mod f32_mode {
            $( #[test] fn $test() { super::check_f32($name, |act| super::load_model($name, act)) } )*
        }
        mod fp8_mode {
            $( #[test] fn $test() { super::check_fp8($name, |act| super::load_model($name, act)) } )*
        }
        /// `--kv-cache-dtype fp8_e4m3`.
        mod fp8_cache {
            mod f32_mode {
                $( #[test] fn $test() { crate::check_f32_packed_cache($name, |act| crate::load_fp8_cache($name, act)) } )*
            }
            mod fp8_mode {
                $( #[test] fn $test() { crate::check_fp8($name, |act| crate::load_fp8_cache($name, act)) } )*
            }
        }
        /// `--kv-cache-dtype bf16`.
        mod bf16_cache {
            mod f32_mode {
                $( #[test] fn $test() { crate::check_f32_packed_cache($name, |act| crate::load_bf16_cache($name, act)) } )*
            }
            mod fp8_mode {
                $( #[test] fn $test() { crate::check_fp8($name, |act| crate::load_bf16_cache($name, act)) } )*
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
