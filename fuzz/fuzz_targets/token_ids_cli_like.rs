//! Fuzz target `token_ids_cli_like`; the harness and its input format are in `src/targets/token_ids_cli_like.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_common::targets::token_ids_cli_like::run(data));
