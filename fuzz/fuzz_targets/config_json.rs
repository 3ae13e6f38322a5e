//! Fuzz target `config_json`; the harness and its input format are in `src/targets/config_json.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_common::targets::config_json::run(data));
