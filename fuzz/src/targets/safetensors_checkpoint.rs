//! A fuzzed `model.safetensors` (next to `tests/fixtures/tiny-v32/config.json`):
//! `Checkpoint::open`, a few tensor look-ups and the whole `Model::load` must return `Ok` or
//! `Err`, never panic; a model that loads (its weights possibly patched to NaN, infinities...)
//! then runs a short prefill and a decode step, which must not panic either.
//!
//! The first input byte picks how the file is made (`mode = byte % 5`):
//! - 0: the rest of the input is the file, verbatim;
//! - 1: `tiny-v32-fp8/model-00003-of-00003.safetensors` with the rest of the input applied as
//!   edits (see [`apply_edits`]): byte patches, truncation, a new header length;
//! - 2: the rest of the input is the JSON header, followed by that shard's real data section
//!   (the header length is computed), so mutations explore the metadata;
//! - 3: like 1, on the three `tiny-v32-fp8` shards merged into one complete checkpoint, so that
//!   near-valid files get through `Model::load`;
//! - 4: like 2, with the merged checkpoint's data section.

use std::sync::OnceLock;

use crate::{
    join_safetensors, load_and_smoke, merged_tiny_v32_fp8, read_fixture, show, split_safetensors, Reader, ScratchDir,
};
use flashseek::model::weights::Checkpoint;

const CONFIG: &str = include_str!("../../../tests/fixtures/tiny-v32/config.json");

fn shard3() -> &'static [u8] {
    static S: OnceLock<Vec<u8>> = OnceLock::new();
    S.get_or_init(|| read_fixture("tiny-v32-fp8/model-00003-of-00003.safetensors"))
}

fn merged() -> &'static [u8] {
    static S: OnceLock<Vec<u8>> = OnceLock::new();
    S.get_or_init(merged_tiny_v32_fp8)
}

/// Edits `base` as the input says, one record after another:
/// - `0, off: u16, byte`: patch within the first 64 KiB (the header and the first tensors);
/// - `1, off: u32, byte`: patch anywhere (offset modulo the length);
/// - `2, len: u32`: truncate to `len` modulo (length + 1);
/// - `3, n: u64`: overwrite the 8-byte header length;
/// - `4, off: u16, n: u8, bytes`: overwrite a run of bytes in the first 64 KiB;
/// - `5, n: u16, bytes`: append bytes.
fn apply_edits(base: &[u8], r: &mut Reader) -> Vec<u8> {
    let mut f = base.to_vec();
    while !r.is_empty() {
        match r.u8() % 6 {
            0 => {
                let (off, b) = (r.u16() as usize, r.u8());
                if let Some(x) = f.get_mut(off) {
                    *x = b;
                }
            }
            1 => {
                let (off, b) = (r.u32() as usize, r.u8());
                if !f.is_empty() {
                    let n = f.len();
                    f[off % n] = b;
                }
            }
            2 => {
                let len = r.u32() as usize % (f.len() + 1);
                f.truncate(len);
            }
            3 => {
                let n = r.u64().to_le_bytes();
                let k = f.len().min(8);
                f[..k].copy_from_slice(&n[..k]);
            }
            4 => {
                let off = r.u16() as usize;
                let n = r.u8() as usize;
                let bytes = r.bytes(n);
                for (i, &b) in bytes.iter().enumerate() {
                    if let Some(x) = f.get_mut(off + i) {
                        *x = b;
                    }
                }
            }
            _ => {
                let n = r.u16() as usize;
                f.extend_from_slice(r.bytes(n));
            }
        }
    }
    f
}

fn make_file(data: &[u8]) -> Vec<u8> {
    let mut r = Reader::new(data);
    let mode = r.u8() % 5;
    match mode {
        0 => r.rest().to_vec(),
        1 => apply_edits(shard3(), &mut r),
        2 => join_safetensors(r.rest(), split_safetensors(shard3()).1),
        3 => apply_edits(merged(), &mut r),
        _ => join_safetensors(r.rest(), split_safetensors(merged()).1),
    }
}

/// One fuzz input.
pub fn run(data: &[u8]) {
    let file = make_file(data);
    let dir = ScratchDir::new("safetensors");
    dir.write("config.json", CONFIG.as_bytes());
    dir.write("model.safetensors", &file);

    if let Ok(ckpt) = show("open", Checkpoint::open(dir.path())) {
        let _ = show("linear layer 0 q_a_proj", ckpt.linear("model.layers.0.self_attn.q_a_proj", 128, 256));
        // The same projection of the last layer, which shard 3 holds (with its FP8 scales).
        let _ = show("linear layer 2 q_a_proj", ckpt.linear("model.layers.2.self_attn.q_a_proj", 128, 256));
        let _ = ckpt.linear("model.layers.2.mlp.gate", 16, 256);
        let _ = show("vector model.norm", ckpt.vector("model.norm.weight", 256));
        let _ = ckpt.vector("model.layers.2.mlp.gate.e_score_correction_bias", 16);
        if let Ok(t) = ckpt.tensor("model.layers.2.self_attn.kv_a_layernorm.weight", &[128]) {
            let _ = t.to_f32();
        }
    }
    load_and_smoke(dir.path());
}
