//! Batches built from arbitrary bytes, fed to a loaded `tiny-v32` model's `forward` the way a
//! caller (the CLI, a server) would: token ids, start positions and block tables from the
//! model's own `KvCache`. Some batches are valid; others have empty sequences, ids outside the
//! vocabulary, start positions past the table or the model's context, tables too short, block
//! ids the cache does not have. `forward` must return `Ok` or `Err`, never panic; after `Ok`,
//! the logits must have one row per requested row and `argmax` must give ids in the vocabulary.
//!
//! Input layout (reads past the end give zeros):
//! `blocks: u8` (cache size, 0..=16 blocks), `steps: u8` (1..=3 steps from the low 7 bits; the
//! top bit runs them through `forward_with_hidden`), then per step
//! `n_seqs: u8` (0..=4) and per sequence: `slot: u8` (which of 4 persistent sequences),
//! `flags: u8`, `n_tokens: u8` (or `u16` with a flag), the token ids (`u16` each, modulo the
//! vocabulary unless a flag injects an out-of-range id), then whatever the start-position and
//! table modes read.

use std::sync::{Mutex, OnceLock};

use crate::{fixture, show, Reader};
use flashseek::backend::CpuBackend;
use flashseek::kv_cache::BLOCK_SIZE;
use flashseek::model::{ActQuant, Logits, Model, SeqInput};

fn model() -> &'static Mutex<Model<CpuBackend>> {
    static M: OnceLock<Mutex<Model<CpuBackend>>> = OnceLock::new();
    M.get_or_init(|| {
        let m = Model::load(CpuBackend::new(), &fixture("tiny-v32"), ActQuant::Fp8)
            .unwrap_or_else(|e| panic!("fuzz setup: cannot load tiny-v32: {e}"));
        Mutex::new(m)
    })
}

const SLOTS: usize = 4;

#[derive(Default, Clone)]
struct Slot {
    table: Vec<u32>,
    /// Positions already in the cache (advanced after each successful step).
    len: usize,
}

struct Seq {
    slot: usize,
    tokens: Vec<u32>,
    start_pos: usize,
    table: Vec<u32>,
    logits: Logits,
}

/// One fuzz input.
pub fn run(data: &[u8]) {
    let mut r = Reader::new(data);
    // A panic in a previous input already aborted the process, so the lock is never poisoned
    // in a run that matters; recover anyway to keep the message about the real panic.
    let mut model = model().lock().unwrap_or_else(|e| e.into_inner());
    let vocab = model.config().vocab_size;
    let max_pos = model.config().max_position_embeddings;

    let num_blocks = (r.u8() % 17) as usize;
    let Ok(mut cache) = model.new_cache(num_blocks) else { return };
    let mut slots = vec![Slot::default(); SLOTS];
    let steps_byte = r.u8();
    let steps = 1 + (steps_byte & 0x7f) % 3;
    // The top bit: run the steps through `forward_with_hidden` (the CLI's `logits --hidden`).
    let with_hidden = steps_byte & 0x80 != 0;

    for _ in 0..steps {
        let n_seqs = (r.u8() % 5) as usize;
        let mut seqs = Vec::with_capacity(n_seqs);
        for _ in 0..n_seqs {
            let slot = (r.u8() as usize) % SLOTS;
            let flags = r.u8();
            let logits = match flags & 3 {
                0 => Logits::None,
                1 => Logits::Last,
                _ => Logits::All,
            };
            // Token count: mostly short chunks (0 = empty sequence), sometimes long prefills.
            let n_tokens = if flags & 4 != 0 { (r.u16() % 200) as usize } else { (r.u8() % 70) as usize };
            let mut tokens: Vec<u32> = (0..n_tokens).map(|_| r.u16() as u32 % vocab as u32).collect();
            if flags & 8 != 0 && !tokens.is_empty() {
                // One id outside the vocabulary, anywhere up to u32::MAX.
                let i = r.u8() as usize % tokens.len();
                let over = r.u32();
                let v = vocab as u32;
                tokens[i] = if over & 1 == 0 { v + over % 64 } else { over.max(v) };
            }
            let start_pos = match (flags >> 4) & 3 {
                // Continue the slot's sequence, as a caller does.
                0 => slots[slot].len,
                // Anywhere in the first few blocks (often past the table).
                1 => r.u16() as usize % (4 * BLOCK_SIZE * 4),
                // Near or past the model's context.
                2 => (max_pos - 64).wrapping_add(r.u8() as usize),
                // Anything at all (overflow of start_pos + len).
                _ => r.u64() as usize,
            };
            let end = start_pos.saturating_add(tokens.len());
            let table = match flags >> 6 {
                // The slot's table grown to cover the sequence (may fail: the cache is small).
                0 => {
                    let _ = cache.reserve(&mut slots[slot].table, end);
                    slots[slot].table.clone()
                }
                // Grown to cover the sequence but then cut short by up to 3 blocks.
                1 => {
                    let _ = cache.reserve(&mut slots[slot].table, end);
                    let mut t = slots[slot].table.clone();
                    let cut = (r.u8() % 4) as usize;
                    t.truncate(t.len().saturating_sub(cut));
                    t
                }
                // Block ids straight from the input: small ones (in or just past the cache)
                // or any u32.
                2 => {
                    let n = (r.u8() % 8) as usize;
                    (0..n)
                        .map(|_| {
                            let b = r.u8();
                            if b & 0x80 != 0 {
                                r.u32()
                            } else {
                                (b as u32) % (num_blocks as u32 + 2)
                            }
                        })
                        .collect()
                }
                // Another slot's table (two sequences on the same blocks).
                _ => slots[(slot + 1) % SLOTS].table.clone(),
            };
            seqs.push(Seq { slot, tokens, start_pos, table, logits });
        }

        let batch: Vec<SeqInput> = seqs
            .iter()
            .map(|s| SeqInput { tokens: &s.tokens, start_pos: s.start_pos, block_table: &s.table, logits: s.logits })
            .collect();
        let what = format!("forward of {} seqs", batch.len());
        let layers = model.config().num_layers;
        let hidden_size = model.config().hidden_size;
        if with_hidden {
            let Ok(hidden) = show(&what, model.forward_with_hidden(&batch, &mut cache)) else { continue };
            let tokens: usize = seqs.iter().map(|s| s.tokens.len()).sum();
            assert_eq!(hidden.len(), layers + 1, "forward_with_hidden: one matrix per layer and the final one");
            for h in &hidden {
                assert_eq!(h.len(), tokens * hidden_size, "forward_with_hidden: one row per token");
            }
        } else if show(&what, model.forward(&batch, &mut cache)).is_err() {
            continue;
        }
        let rows: usize = seqs
            .iter()
            .map(|s| match s.logits {
                Logits::None => 0,
                Logits::Last => 1,
                Logits::All => s.tokens.len(),
            })
            .sum();
        let logits = model.logits();
        assert_eq!(logits.shape(), [rows, vocab], "logits shape after a successful step");
        match model.argmax() {
            Ok(ids) => {
                assert_eq!(ids.len(), rows, "argmax rows");
                if let Some(&t) = ids.iter().find(|&&t| t as usize >= vocab) {
                    panic!("argmax returned token {t} outside the vocabulary ({vocab})");
                }
            }
            Err(e) => panic!("argmax failed after a successful step: {e}"),
        }
        for s in &seqs {
            let slot = &mut slots[s.slot];
            slot.len = slot.len.max(s.start_pos.saturating_add(s.tokens.len()));
        }
    }
}
