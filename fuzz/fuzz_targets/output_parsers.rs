//! Fuzz target `output_parsers`; the harness and its input format are in `src/targets/output_parsers.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_common::targets::output_parsers::run(data));
