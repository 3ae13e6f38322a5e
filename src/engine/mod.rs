//! The engine: one thread owns the model and its paged KV cache and runs continuous batching;
//! HTTP workers (or the CLI) submit requests through an [`EngineHandle`] and read each one's
//! output from its own [`Stream`].
//!
//! Every step packs the decode tokens of running sequences and prefill chunks of waiting ones,
//! under a token budget, into one forward pass. When the cache runs out of blocks the newest
//! sequence is preempted and later recomputed; full blocks are kept for prefix reuse.

mod core;
mod params;
mod prefix_cache;
mod sampler;
mod stop;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;

pub use self::core::EngineConfig;
pub use params::{SamplingParams, MAX_TOP_LOGPROBS};
pub use sampler::TokenLogprob;

use crate::backend::device::{Loader, ModelTask};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::kv_cache::KvCacheDtype;
use crate::metrics::Metrics;
use crate::model::Model;
use crate::tokenizer::Tokenizer;

/// A tokenized prompt and how to continue it.
#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
}

/// Why a sequence ended.
#[derive(Debug, Clone, PartialEq)]
pub enum FinishReason {
    /// It reached its token limit or the context length.
    Length,
    /// It produced the end-of-sequence token.
    Eos(u32),
    /// It produced one of the request's `stop_token_ids`.
    StopToken(u32),
    /// Its text reached one of the request's stop strings (cut from the output).
    StopString(String),
    /// The engine could not go on with it (the message says why).
    Abort(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens whose cache blocks came from the prefix cache.
    pub cached_tokens: usize,
}

/// What one step produced for a sequence: the tokens it sampled, the text that became final
/// (stop strings and incomplete characters are held back), and the end when it ended.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Output {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub logprobs: Vec<TokenLogprob>,
    pub finished: Option<Finished>,
}

/// What the engine serves, fixed when it starts.
#[derive(Debug, Clone)]
pub struct EngineInfo {
    /// Longest prompt plus output a request may have.
    pub context_length: usize,
    pub vocab_size: usize,
    pub max_running: usize,
    pub num_blocks: usize,
    /// What the KV cache stores, and the bytes one position takes across all layers.
    pub kv_cache_dtype: KvCacheDtype,
    pub kv_bytes_per_token: usize,
    pub eos_token_ids: Vec<u32>,
}

enum Command {
    Submit { id: u64, index: usize, request: Request, out: Sender<(usize, Output)> },
    Abort(u64),
}

/// Why a request did not reach the engine.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The request cannot run on this model (the message says why).
    #[error("{0}")]
    Invalid(String),
    #[error("the engine has stopped")]
    Stopped,
}

/// Submits requests to the engine thread; cheap to clone, one per HTTP worker.
#[derive(Clone)]
pub struct EngineHandle {
    tx: Sender<Command>,
    info: Arc<EngineInfo>,
    next_id: Arc<AtomicU64>,
    alive: Arc<AtomicBool>,
}

/// Marks the engine stopped when its thread ends, by returning or by a panic.
struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// The outputs of the requests submitted together, each tagged with its index in the
/// submission and in order per request; dropping it aborts them and frees their blocks.
pub struct Stream {
    ids: Vec<u64>,
    rx: Receiver<(usize, Output)>,
    tx: Sender<Command>,
}

impl Stream {
    /// The next output of any of the requests; `None` once all finished (or the engine stopped).
    pub fn recv(&self) -> Option<(usize, Output)> {
        self.rx.recv().ok()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        for &id in &self.ids {
            // The engine may have stopped already; then nothing is left to free.
            let _ = self.tx.send(Command::Abort(id));
        }
    }
}

/// Starts the engine thread. `load` runs on it, so the model never crosses threads.
pub fn start<B, F>(
    load: F,
    tokenizer: Arc<Tokenizer>,
    config: EngineConfig,
    metrics: Arc<Metrics>,
) -> Result<EngineHandle>
where
    B: Backend + 'static,
    F: FnOnce() -> Result<Model<B>> + Send + 'static,
{
    spawn(tokenizer, config, metrics, move |task| load().and_then(|model| task.run(model)))
}

/// Starts the engine thread on the model at `dir`, which `loader` loads there on its device.
pub fn start_on(
    loader: Loader,
    dir: PathBuf,
    tokenizer: Arc<Tokenizer>,
    config: EngineConfig,
    metrics: Arc<Metrics>,
) -> Result<EngineHandle> {
    loader.check()?;
    spawn(tokenizer, config, metrics, move |task| loader.run(&dir, task))
}

/// What the engine thread does with its model: build the core, say it is ready, run it.
struct RunCore {
    tokenizer: Arc<Tokenizer>,
    config: EngineConfig,
    metrics: Arc<Metrics>,
    rx: Receiver<Command>,
    ready: Sender<Result<EngineInfo>>,
}

impl ModelTask for RunCore {
    type Output = ();

    fn run<B: Backend>(self, model: Model<B>) -> Result<()> {
        let mut core = core::Core::new(model, self.tokenizer, self.config, self.metrics, self.rx)?;
        if self.ready.send(Ok(core.info().clone())).is_ok() {
            core.run();
        }
        Ok(())
    }
}

/// Spawns the engine thread, which hands `body` the task that runs the core on a loaded model,
/// and waits until the core is running or loading failed.
fn spawn(
    tokenizer: Arc<Tokenizer>,
    config: EngineConfig,
    metrics: Arc<Metrics>,
    body: impl FnOnce(RunCore) -> Result<()> + Send + 'static,
) -> Result<EngineHandle> {
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    let alive = Arc::new(AtomicBool::new(true));
    let guard = AliveGuard(Arc::clone(&alive));
    let task = RunCore { tokenizer, config, metrics, rx, ready: ready_tx.clone() };
    std::thread::Builder::new()
        .name("flashseek-engine".into())
        .spawn(move || {
            let _guard = guard;
            if let Err(e) = body(task) {
                let _ = ready_tx.send(Err(e));
            }
        })
        .map_err(|e| Error::Input(format!("cannot start the engine thread: {e}")))?;
    let info = ready_rx.recv().map_err(|_| Error::Input("the engine thread stopped while starting".into()))??;
    Ok(EngineHandle { tx, info: Arc::new(info), next_id: Arc::new(AtomicU64::new(0)), alive })
}

impl EngineHandle {
    pub fn info(&self) -> &EngineInfo {
        &self.info
    }

    /// Whether the engine thread is still running (it stops only on a bug).
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }

    /// Checks the requests against the model and queues them all, or none.
    pub fn submit(&self, requests: Vec<Request>) -> Result<Stream, SubmitError> {
        for r in &requests {
            self.validate(r).map_err(|e| SubmitError::Invalid(e.to_string()))?;
        }
        let (out, rx) = mpsc::channel();
        let mut stream = Stream { ids: Vec::with_capacity(requests.len()), rx, tx: self.tx.clone() };
        for (index, request) in requests.into_iter().enumerate() {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            stream.ids.push(id);
            let cmd = Command::Submit { id, index, request, out: out.clone() };
            self.tx.send(cmd).map_err(|_| SubmitError::Stopped)?;
        }
        Ok(stream)
    }

    fn validate(&self, r: &Request) -> Result<()> {
        r.params.validate()?;
        let info = &self.info;
        if r.prompt.is_empty() {
            return Err(Error::Input("the prompt is empty".into()));
        }
        if let Some(&bad) = r.prompt.iter().find(|&&t| t as usize >= info.vocab_size) {
            return Err(Error::Input(format!("token id {bad} is outside the vocabulary of {}", info.vocab_size)));
        }
        let total = r.prompt.len().saturating_add(r.params.max_new_tokens);
        if total > info.context_length {
            return Err(Error::Input(format!(
                "this model's maximum context length is {} tokens; the request has {} prompt tokens and asks \
                 for {} more",
                info.context_length,
                r.prompt.len(),
                r.params.max_new_tokens
            )));
        }
        Ok(())
    }
}
