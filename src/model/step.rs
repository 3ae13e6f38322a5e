//! The host-side layout of one forward step: which token sits in which row, at which position
//! and cache slot, and how each sequence's context is reached.
//!
//! Rows are ordered decode sequences first (one token each), then prefill chunks, so the
//! absorbed-decode and expanded-prefill attention paths each work on contiguous rows. Outputs
//! are mapped back to the caller's order.

use crate::backend::{Pages, PrefillSeq, Queries};
use crate::error::{Error, Result};
use crate::kv_cache::BLOCK_SIZE;
use crate::model::config::ModelConfig;

/// Which logits a sequence wants from a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    None,
    /// The row of the chunk's last token (the next-token distribution).
    Last,
    /// One row per token of the chunk.
    All,
}

/// One sequence's part of a step: new tokens continuing `start_pos` cached ones.
#[derive(Debug, Clone, Copy)]
pub struct SeqInput<'a> {
    pub tokens: &'a [u32],
    pub start_pos: usize,
    /// Cache blocks covering positions `0..start_pos + tokens.len()`.
    pub block_table: &'a [u32],
    pub logits: Logits,
}

/// Reused across steps: building one allocates nothing once the vectors have grown.
#[derive(Default)]
pub struct StepLayout {
    pub tokens: Vec<u32>,
    pub pos: Vec<u32>,
    /// Internal sequence index of each row.
    pub seq: Vec<u32>,
    pub slots: Vec<u32>,
    pub blocks: Vec<u32>,
    pub starts: Vec<u32>,
    /// Rows `0..n_decode` are single-token sequences.
    pub n_decode: usize,
    pub prefill: Vec<PrefillSeq>,
    /// Cache slots of every prefill sequence's whole context, back to back.
    pub ctx_slots: Vec<u32>,
    /// Rows whose logits are returned, in the caller's order.
    pub logit_rows: Vec<usize>,
    /// The internal row of each token, in the caller's order.
    pub caller_rows: Vec<usize>,
    /// Internal order: caller's sequence index of each internal sequence.
    order: Vec<usize>,
    /// First internal row of each caller sequence.
    first_row: Vec<usize>,
}

impl StepLayout {
    pub fn rows(&self) -> usize {
        self.tokens.len()
    }

    pub fn pages(&self) -> Pages<'_> {
        Pages { block_size: BLOCK_SIZE, blocks: &self.blocks, starts: &self.starts }
    }

    pub fn queries(&self) -> Queries<'_> {
        Queries { pos: &self.pos, seq: &self.seq }
    }

    pub fn decode_queries(&self) -> Queries<'_> {
        Queries { pos: &self.pos[..self.n_decode], seq: &self.seq[..self.n_decode] }
    }

    pub fn build(&mut self, batch: &[SeqInput], cfg: &ModelConfig) -> Result<()> {
        self.tokens.clear();
        self.pos.clear();
        self.seq.clear();
        self.slots.clear();
        self.blocks.clear();
        self.starts.clear();
        self.prefill.clear();
        self.ctx_slots.clear();
        self.logit_rows.clear();
        self.caller_rows.clear();
        self.order.clear();
        self.first_row.clear();

        for (i, s) in batch.iter().enumerate() {
            if s.tokens.is_empty() {
                return Err(Error::Input(format!("sequence {i} of the batch has no tokens")));
            }
            let end = s.start_pos.saturating_add(s.tokens.len());
            if end > cfg.max_position_embeddings {
                return Err(Error::Input(format!(
                    "sequence {i} reaches position {end}, past the model's maximum of {}",
                    cfg.max_position_embeddings
                )));
            }
            if s.block_table.len() * BLOCK_SIZE < end {
                return Err(Error::Input(format!(
                    "sequence {i}: {} cache blocks cannot hold {end} positions",
                    s.block_table.len()
                )));
            }
            // Cache rows are numbered in u32.
            if let Some(&b) = s.block_table.iter().find(|&&b| (b as usize + 1) * BLOCK_SIZE > u32::MAX as usize + 1) {
                return Err(Error::Input(format!("sequence {i}: block id {b} is out of range")));
            }
            if let Some(&t) = s.tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
                return Err(Error::Input(format!("token id {t} is outside the vocabulary ({})", cfg.vocab_size)));
            }
        }
        let decode = (0..batch.len()).filter(|&i| batch[i].tokens.len() == 1);
        let prefill = (0..batch.len()).filter(|&i| batch[i].tokens.len() > 1);
        self.order.extend(decode.chain(prefill));
        self.first_row.resize(batch.len(), 0);
        self.n_decode = batch.iter().filter(|s| s.tokens.len() == 1).count();

        for (internal, &i) in self.order.iter().enumerate() {
            let s = &batch[i];
            self.starts.push(self.blocks.len() as u32);
            self.blocks.extend_from_slice(s.block_table);
            self.first_row[i] = self.tokens.len();
            if s.tokens.len() > 1 {
                self.prefill.push(PrefillSeq {
                    q_start: self.tokens.len(),
                    q_len: s.tokens.len(),
                    kv_start: self.ctx_slots.len(),
                    start_pos: s.start_pos,
                });
                for p in 0..s.start_pos + s.tokens.len() {
                    self.ctx_slots.push(slot(s.block_table, p));
                }
            }
            for (j, &t) in s.tokens.iter().enumerate() {
                let p = s.start_pos + j;
                self.tokens.push(t);
                self.pos.push(p as u32);
                self.seq.push(internal as u32);
                self.slots.push(slot(s.block_table, p));
            }
        }
        self.starts.push(self.blocks.len() as u32);

        for (i, s) in batch.iter().enumerate() {
            let first = self.first_row[i];
            self.caller_rows.extend(first..first + s.tokens.len());
            match s.logits {
                Logits::None => {}
                Logits::Last => self.logit_rows.push(first + s.tokens.len() - 1),
                Logits::All => self.logit_rows.extend(first..first + s.tokens.len()),
            }
        }
        Ok(())
    }
}

fn slot(table: &[u32], pos: usize) -> u32 {
    table[pos / BLOCK_SIZE] * BLOCK_SIZE as u32 + (pos % BLOCK_SIZE) as u32
}
