//! A fuzzed `model.safetensors.index.json` in a directory holding (symlinks to) the three
//! `tiny-v32-fp8` shards and its `config.json`: `Checkpoint::open` and `Model::load` must
//! return `Ok` or `Err`, never panic (a model that loads also runs a short forward pass).
//! Inputs that are not UTF-8 are written as they are (the loader must reject them with an
//! error too).

use std::sync::OnceLock;

use crate::{load_and_smoke, show, tiny_v32_fp8_without, ScratchDir};
use flashseek::model::weights::Checkpoint;

/// One directory per process; only the index is rewritten per input.
fn model_dir() -> &'static ScratchDir {
    static DIR: OnceLock<ScratchDir> = OnceLock::new();
    DIR.get_or_init(|| tiny_v32_fp8_without("shard-index", "model.safetensors.index.json"))
}

/// One fuzz input.
pub fn run(data: &[u8]) {
    let dir = model_dir();
    dir.write("model.safetensors.index.json", data);
    if let Ok(ckpt) = show("open", Checkpoint::open(dir.path())) {
        let _ = ckpt.linear("model.layers.0.self_attn.q_a_proj", 128, 256);
        let _ = ckpt.vector("model.norm.weight", 256);
    }
    load_and_smoke(dir.path());
}
