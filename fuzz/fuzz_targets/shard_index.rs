//! Fuzz target `shard_index`; the harness and its input format are in `src/targets/shard_index.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_common::targets::shard_index::run(data));
