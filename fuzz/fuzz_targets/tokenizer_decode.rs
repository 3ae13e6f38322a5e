//! Fuzz target `tokenizer_decode`; the harness and its input format are in `src/targets/tokenizer_decode.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_common::targets::tokenizer_decode::run(data));
