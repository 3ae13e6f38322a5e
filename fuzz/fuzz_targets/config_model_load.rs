//! Fuzz target `config_model_load`; the harness and its input format are in `src/targets/config_model_load.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_common::targets::config_model_load::run(data));
