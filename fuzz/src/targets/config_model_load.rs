//! A fuzzed `config.json` next to the real `tiny-v32-fp8` weights: `Model::load` must return
//! `Ok` or `Err`, never panic. A config the weights happen to fit (router groups, top-k,
//! RoPE/YaRN parameters, norms, token ids...) is then run for one short prefill and one decode
//! step, which must not panic either.

use std::sync::OnceLock;

use crate::{load_and_smoke, tiny_v32_fp8_without, ScratchDir};

/// One directory per process: symlinks to the three shards and their index; only
/// `config.json` is rewritten per input.
fn model_dir() -> &'static ScratchDir {
    static DIR: OnceLock<ScratchDir> = OnceLock::new();
    DIR.get_or_init(|| tiny_v32_fp8_without("config-model-load", "config.json"))
}

/// One fuzz input.
pub fn run(data: &[u8]) {
    let dir = model_dir();
    dir.write("config.json", data);
    load_and_smoke(dir.path());
}
