//! Fuzz target `safetensors_checkpoint`; the harness and its input format are in `src/targets/safetensors_checkpoint.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_common::targets::safetensors_checkpoint::run(data));
