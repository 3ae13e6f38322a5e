//! Fuzz target `chat_encoding`; the harness and its input format are in `src/targets/chat_encoding.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_common::targets::chat_encoding::run(data));
