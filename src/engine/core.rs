//! The engine thread: the sequences, the scheduling policy and the step loop.

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

use super::prefix_cache::{block_key, PrefixCache};
use super::sampler::{Sampler, SeqSampler, TokenLogprob};
use super::stop::{Released, StopText};
use super::{Command, EngineInfo, FinishReason, Finished, Output, Request, SamplingParams};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::kv_cache::{KvCache, BLOCK_SIZE};
use crate::metrics::Metrics;
use crate::model::{Logits, Model, SeqInput};
use crate::tokenizer::{IncrementalDecoder, Tokenizer};

/// How the engine sizes its batches and its KV pool.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Sequences decoding at once; more wait.
    pub max_running: usize,
    /// Prefill tokens per step: long prompts are fed in chunks of this size between decode steps.
    pub chunked_prefill_size: usize,
    /// Size of the KV pool in tokens; `None` sizes it from `mem_fraction_static`.
    pub max_total_tokens: Option<usize>,
    /// Share of the memory available at start-up given to the KV pool.
    pub mem_fraction_static: f64,
    /// Longest prompt plus output; `None` is the model's `max_position_embeddings`.
    pub context_length: Option<usize>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_running: 256,
            chunked_prefill_size: 2048,
            max_total_tokens: None,
            mem_fraction_static: 0.3,
            context_length: None,
        }
    }
}

struct Seq {
    id: u64,
    /// Prompt then generated tokens.
    tokens: Vec<u32>,
    prompt_len: usize,
    /// Tokens whose keys are in the cache.
    computed: usize,
    table: Vec<u32>,
    /// Prefix-cache keys of the leading full blocks of `table`.
    keys: Vec<u64>,
    cached_tokens: usize,
    params: SamplingParams,
    sampler: SeqSampler,
    detok: IncrementalDecoder,
    stop: StopText,
    index: usize,
    out: Sender<(usize, Output)>,
    /// What this step produced, sent once the step is done.
    pending: Output,
}

impl Seq {
    fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    fn uncomputed(&self) -> usize {
        self.tokens.len() - self.computed
    }

    fn finish(&mut self, reason: FinishReason) {
        self.pending.finished = Some(Finished {
            reason,
            prompt_tokens: self.prompt_len,
            completion_tokens: self.generated(),
            cached_tokens: self.cached_tokens,
        });
    }
}

pub(super) struct Core<B: Backend> {
    model: Model<B>,
    cache: KvCache<B>,
    prefix: PrefixCache,
    tok: Arc<Tokenizer>,
    info: EngineInfo,
    config: EngineConfig,
    metrics: Arc<Metrics>,
    rx: Receiver<Command>,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    sampler: Sampler,
    /// This step's work: (index into `running`, tokens fed).
    plan: Vec<(usize, usize)>,
    logits: Vec<f32>,
}

fn blocks_for(tokens: usize) -> usize {
    tokens.div_ceil(BLOCK_SIZE)
}

impl<B: Backend> Core<B> {
    pub(super) fn new(
        model: Model<B>,
        tok: Arc<Tokenizer>,
        config: EngineConfig,
        metrics: Arc<Metrics>,
        rx: Receiver<Command>,
    ) -> Result<Self> {
        let cfg = model.config();
        let max_pos = cfg.max_position_embeddings;
        let context = config.context_length.unwrap_or(max_pos);
        if context == 0 || context > max_pos {
            return Err(Error::Input(format!(
                "--context-length must be in 1..={max_pos} for this model, got {context}"
            )));
        }
        if config.max_running == 0 || config.chunked_prefill_size == 0 {
            return Err(Error::Input("--max-running-requests and --chunked-prefill-size must be at least 1".into()));
        }
        let num_blocks = pool_blocks(&config, context, model.kv_bytes_per_token(), || model.backend().free_memory())?;
        let context_length = context.min(num_blocks * BLOCK_SIZE);
        let cache = model.new_cache(num_blocks)?;
        let mut eos_token_ids = cfg.eos_token_ids.clone();
        eos_token_ids.extend(tok.eos_token_id().filter(|id| !eos_token_ids.contains(id)));
        let info = EngineInfo {
            context_length,
            vocab_size: cfg.vocab_size,
            max_running: config.max_running,
            num_blocks,
            kv_cache_dtype: model.kv_cache_dtype(),
            kv_bytes_per_token: model.kv_bytes_per_token(),
            eos_token_ids,
        };
        Metrics::set(&metrics.kv_blocks_total, num_blocks);
        Ok(Core {
            model,
            cache,
            prefix: PrefixCache::default(),
            tok,
            info,
            config,
            metrics,
            rx,
            waiting: VecDeque::new(),
            running: Vec::new(),
            sampler: Sampler::default(),
            plan: Vec::new(),
            logits: Vec::new(),
        })
    }

    pub(super) fn info(&self) -> &EngineInfo {
        &self.info
    }

    /// Steps while there is work; waits for commands when there is none. Ends when every
    /// handle is gone and the last sequence finished.
    pub(super) fn run(&mut self) {
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                match self.rx.recv() {
                    Ok(c) => self.command(c),
                    Err(_) => return,
                }
            }
            while let Ok(c) = self.rx.try_recv() {
                self.command(c);
            }
            self.step();
            self.publish_gauges();
        }
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::Submit { id, index, request, out } => self.admit(id, index, request, out),
            Command::Abort(id) => self.abort(id),
        }
    }

    fn admit(&mut self, id: u64, index: usize, r: Request, out: Sender<(usize, Output)>) {
        let seq = Seq {
            id,
            prompt_len: r.prompt.len(),
            sampler: SeqSampler::new(&r.params, &r.prompt),
            tokens: r.prompt,
            computed: 0,
            table: Vec::new(),
            keys: Vec::new(),
            cached_tokens: 0,
            detok: IncrementalDecoder::new(r.params.skip_special_tokens),
            stop: StopText::new(r.params.stop.clone()),
            params: r.params,
            index,
            out,
            pending: Output::default(),
        };
        self.waiting.push_back(seq);
    }

    fn abort(&mut self, id: u64) {
        if let Some(i) = self.waiting.iter().position(|s| s.id == id) {
            if let Some(mut s) = self.waiting.remove(i) {
                self.free(&mut s);
            }
        } else if let Some(i) = self.running.iter().position(|s| s.id == id) {
            let mut s = self.running.remove(i);
            self.free(&mut s);
        }
    }

    fn free(&mut self, s: &mut Seq) {
        // Releasing blocks this sequence holds cannot fail unless the bookkeeping is broken;
        // the blocks are then lost to the pool, which the gauges show.
        if let Err(e) = self.cache.release(&mut s.table) {
            eprintln!("flashseek: releasing blocks of request {}: {e}", s.id);
        }
        s.keys.clear();
        s.computed = 0;
    }

    fn step(&mut self) {
        if let Err(e) = self.schedule() {
            self.fail_planned(&e);
            return;
        }
        if self.plan.is_empty() {
            return;
        }
        if let Err(e) = self.forward() {
            self.fail_planned(&e);
            return;
        }
        if let Err(e) = self.sample_and_register() {
            self.fail_planned(&e);
        }
        self.send_and_retire();
    }

    /// Picks this step's work and reserves its blocks: running sequences first (oldest first,
    /// preempting the newest when blocks run out), then waiting ones while the budget lasts.
    fn schedule(&mut self) -> Result<()> {
        self.plan.clear();
        let mut budget = self.config.chunked_prefill_size;
        let mut i = 0;
        while i < self.running.len() {
            let s = &self.running[i];
            let chunk = if s.uncomputed() == 1 { 1 } else { s.uncomputed().min(budget) };
            if chunk == 0 {
                i += 1;
                continue;
            }
            let need = blocks_for(s.computed + chunk).saturating_sub(s.table.len());
            if !self.prefix.make_room(need, self.cache.allocator())? {
                let victim = self.running.len() - 1;
                self.preempt(victim);
                if victim == i {
                    break;
                }
                continue;
            }
            let s = &mut self.running[i];
            self.cache.reserve(&mut s.table, s.computed + chunk)?;
            if chunk > 1 {
                budget -= chunk;
            }
            self.plan.push((i, chunk));
            i += 1;
        }
        while budget > 0 && self.running.len() < self.config.max_running {
            let Some(mut s) = self.waiting.pop_front() else { break };
            if s.table.is_empty() {
                self.reuse_prefix(&mut s)?;
            }
            let chunk = s.uncomputed().min(budget);
            let need = blocks_for(s.computed + chunk) - s.table.len();
            // Leave a block per running sequence so admitting this one does not force a
            // preemption at their next block boundary.
            if !self.prefix.make_room(need + self.running.len(), self.cache.allocator())? {
                self.free(&mut s);
                self.waiting.push_front(s);
                break;
            }
            self.cache.reserve(&mut s.table, s.computed + chunk)?;
            budget -= chunk;
            self.running.push(s);
            self.plan.push((self.running.len() - 1, chunk));
        }
        Ok(())
    }

    /// Takes the cached blocks of the sequence's longest cached prefix, always leaving at
    /// least one token to compute (its logits pick the next token).
    fn reuse_prefix(&mut self, s: &mut Seq) -> Result<()> {
        let reusable = &s.tokens[..s.tokens.len() - 1];
        s.table = self.prefix.lookup(reusable, self.cache.allocator(), &mut s.keys)?;
        s.computed = s.table.len() * BLOCK_SIZE;
        s.cached_tokens = s.cached_tokens.max(s.computed.min(s.prompt_len));
        Ok(())
    }

    /// Frees the blocks of `running[i]` and puts it back first in line; it is recomputed
    /// (mostly from the prefix cache) when blocks allow.
    fn preempt(&mut self, i: usize) {
        let mut s = self.running.remove(i);
        self.free(&mut s);
        Metrics::add(&self.metrics.preemptions, 1);
        self.waiting.push_front(s);
    }

    fn forward(&mut self) -> Result<()> {
        let batch: Vec<SeqInput> = self
            .plan
            .iter()
            .map(|&(i, chunk)| {
                let s = &self.running[i];
                SeqInput {
                    tokens: &s.tokens[s.computed..s.computed + chunk],
                    start_pos: s.computed,
                    block_table: &s.table,
                    logits: if s.computed + chunk == s.tokens.len() { Logits::Last } else { Logits::None },
                }
            })
            .collect();
        self.model.forward(&batch, &mut self.cache)?;
        self.model.backend().read_into(self.model.logits(), &mut self.logits)?;
        Ok(())
    }

    fn sample_and_register(&mut self) -> Result<()> {
        let vocab = self.info.vocab_size;
        let mut row = 0;
        for &(i, chunk) in &self.plan {
            let s = &mut self.running[i];
            s.computed += chunk;
            register_full_blocks(s, &mut self.prefix, &mut self.cache)?;
            if s.computed < s.tokens.len() {
                continue;
            }
            let logits = self
                .logits
                .get_mut(row * vocab..(row + 1) * vocab)
                .ok_or_else(|| Error::Input("the model returned fewer logits rows than asked".into()))?;
            row += 1;
            let (id, logprob) = self.sampler.sample(logits, &s.params, &mut s.sampler)?;
            accept(s, id, logprob, &self.tok, &self.info)?;
        }
        Metrics::add(&self.metrics.generation_tokens, row);
        Ok(())
    }

    /// Sends each planned sequence its output and retires those that finished or whose
    /// client is gone.
    fn send_and_retire(&mut self) {
        let mut planned: Vec<usize> = self.plan.iter().map(|p| p.0).collect();
        planned.sort_unstable();
        for &i in planned.iter().rev() {
            let s = &mut self.running[i];
            if s.pending.token_ids.is_empty() && s.pending.finished.is_none() {
                continue;
            }
            let out = std::mem::take(&mut s.pending);
            let done = out.finished.is_some();
            if let Some(f) = &out.finished {
                Metrics::add(&self.metrics.prompt_tokens, f.prompt_tokens);
                Metrics::add(&self.metrics.cached_tokens, f.cached_tokens);
            }
            if s.out.send((s.index, out)).is_err() || done {
                let mut s = self.running.remove(i);
                self.free(&mut s);
            }
        }
        self.plan.clear();
    }

    /// A step failed as a whole: its sequences end with the error; the engine goes on.
    fn fail_planned(&mut self, e: &Error) {
        let msg = e.to_string();
        eprintln!("flashseek: step failed: {msg}");
        for &(i, _) in &self.plan {
            if let Some(s) = self.running.get_mut(i) {
                s.pending.text.clear();
                s.finish(FinishReason::Abort(msg.clone()));
            }
        }
        self.send_and_retire();
    }

    fn publish_gauges(&mut self) {
        let m = &self.metrics;
        Metrics::set(&m.running, self.running.len());
        Metrics::set(&m.waiting, self.waiting.len());
        let alloc = self.cache.allocator();
        let idle = self.prefix.idle(alloc);
        Metrics::set(&m.kv_blocks_used, alloc.num_blocks() - alloc.num_free() - idle);
    }
}

/// Blocks in the KV pool: `--max-total-tokens` when given, else the configured share of the
/// backend's memory free now, never more than every running sequence at full context needs.
fn pool_blocks(
    config: &EngineConfig,
    context: usize,
    bytes_per_token: usize,
    free_memory: impl FnOnce() -> Result<usize>,
) -> Result<usize> {
    let most = config.max_running.saturating_mul(blocks_for(context));
    let blocks = match config.max_total_tokens {
        Some(tokens) => blocks_for(tokens),
        None => {
            let f = config.mem_fraction_static;
            if !(f > 0.0 && f <= 1.0) {
                return Err(Error::Input(format!("--mem-fraction-static must be in (0, 1], got {f}")));
            }
            let bytes = (free_memory()? as f64 * f) as usize;
            (bytes / (bytes_per_token * BLOCK_SIZE).max(1)).min(most)
        }
    };
    if blocks == 0 {
        return Err(Error::Input(
            "the KV pool would hold no block of 64 tokens: raise --mem-fraction-static or --max-total-tokens".into(),
        ));
    }
    Ok(blocks)
}

/// Adds the sequence's newly filled blocks to the prefix cache.
fn register_full_blocks<B: Backend>(s: &mut Seq, prefix: &mut PrefixCache, cache: &mut KvCache<B>) -> Result<()> {
    for b in s.keys.len()..s.computed / BLOCK_SIZE {
        let prev = s.keys.last().copied().unwrap_or(0);
        let tokens = &s.tokens[b * BLOCK_SIZE..(b + 1) * BLOCK_SIZE];
        let key = block_key(prev, tokens);
        prefix.insert(key, prev, tokens, s.table[b], cache.allocator())?;
        s.keys.push(key);
    }
    Ok(())
}

/// Appends a sampled token: detokenizes it, checks the stop conditions and records the output.
fn accept(s: &mut Seq, id: u32, logprob: Option<TokenLogprob>, tok: &Tokenizer, info: &EngineInfo) -> Result<()> {
    s.tokens.push(id);
    s.sampler.observe(id);
    s.pending.token_ids.push(id);
    s.pending.logprobs.extend(logprob);
    let stop_token = if !s.params.ignore_eos && info.eos_token_ids.contains(&id) {
        Some(FinishReason::Eos(id))
    } else if s.params.stop_token_ids.contains(&id) {
        Some(FinishReason::StopToken(id))
    } else {
        None
    };
    if let Some(reason) = stop_token {
        let tail = s.detok.finish(tok)?;
        let reason = flush_text(s, &tail).map_or(reason, FinishReason::StopString);
        s.finish(reason);
        return Ok(());
    }
    let text = s.detok.push(tok, id)?;
    match s.stop.push(&text) {
        Released::Stopped(before, stop) => {
            s.pending.text.push_str(&before);
            s.finish(FinishReason::StopString(stop));
            return Ok(());
        }
        Released::Text(t) => s.pending.text.push_str(&t),
    }
    if s.generated() >= s.params.max_new_tokens || s.tokens.len() >= info.context_length {
        let tail = s.detok.finish(tok)?;
        let reason = flush_text(s, &tail).map_or(FinishReason::Length, FinishReason::StopString);
        s.finish(reason);
    }
    Ok(())
}

/// The sequence ends: the decoder's last text and everything held back become output, up to
/// a stop string if the tail completes one (returned).
fn flush_text(s: &mut Seq, tail: &str) -> Option<String> {
    match s.stop.push(tail) {
        Released::Stopped(before, stop) => {
            s.pending.text.push_str(&before);
            Some(stop)
        }
        Released::Text(t) => {
            s.pending.text.push_str(&t);
            let rest = s.stop.flush();
            s.pending.text.push_str(&rest);
            None
        }
    }
}
