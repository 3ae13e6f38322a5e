//! The `flashseek` command line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use flashseek::backend::device::{Device, Loader, ModelTask};
use flashseek::backend::Backend;
use flashseek::engine::{self, EngineConfig, FinishReason, Request, SamplingParams};
use flashseek::kv_cache::{KvCacheDtype, BLOCK_SIZE};
use flashseek::metrics::Metrics;
use flashseek::model::config::ModelConfig;
use flashseek::model::{Logits, Model, SeqInput};
use flashseek::server::{
    self,
    launch::{self, ActQuantArg, ServeArgs},
};
use flashseek::tokenizer::{ChatFormat, ChatMessage, ChatOptions, Role, Tokenizer};
use flashseek::{bench, bundled};
use safetensors::tensor::{Dtype, TensorView};

#[derive(Parser)]
#[command(
    name = "flashseek",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("FLASHSEEK_REVISION"), ")"),
    about = "Inference engine for the DeepSeek-V3.2 family"
)]
struct Cli {
    /// Worker threads for the CPU kernels (default: one per core).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ModelArgs {
    /// A model directory in the Hugging Face layout (config.json + safetensors); default: the
    /// bundled arithmetic model, models/flashseek-v32-arith.
    #[arg(long)]
    model_path: Option<PathBuf>,
    /// Token ids, comma-separated.
    #[arg(long, value_delimiter = ',', required_unless_present = "prompt", conflicts_with = "prompt")]
    token_ids: Vec<u32>,
    #[arg(long, value_enum, default_value = "fp8")]
    act_quant: ActQuantArg,
    #[arg(long, value_enum, default_value = "cpu")]
    device: Device,
    /// What the KV cache stores: `auto` (f32) or `fp8_e4m3` (FlashMLA's FP8 latent layout and
    /// FP8 index keys).
    #[arg(long, default_value = "auto")]
    kv_cache_dtype: KvCacheDtype,
}

impl ModelArgs {
    fn loader(&self) -> Loader {
        Loader {
            device: self.device,
            act: self.act_quant.into(),
            kv_cache_dtype: self.kv_cache_dtype,
            deterministic: false,
        }
    }

    /// Loads the model on its device and runs `task` on it.
    fn run<T: ModelTask>(&self, task: T) -> anyhow::Result<T::Output> {
        Ok(self.loader().run(&bundled::resolve(self.model_path.as_deref())?, task)?)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Write the logits of every position to a safetensors file (tensor `logits` [tokens, vocab]).
    Logits {
        #[command(flatten)]
        model: ModelArgs,
        /// Feed the tokens one at a time through the KV cache instead of one prefill pass.
        #[arg(long)]
        decode: bool,
        /// Also write the hidden states entering each layer and the final normed ones
        /// (`hidden.0` .. `hidden.N`).
        #[arg(long)]
        hidden: bool,
        #[arg(long)]
        out: PathBuf,
    },
    /// Generation from token ids (greedy; prints the generated ids) or from text (`--prompt`,
    /// through the engine and the tokenizer; prints the text as it comes).
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        /// Text to continue (or, with --chat, the user's message).
        #[arg(long)]
        prompt: Option<String>,
        #[command(flatten)]
        text: TextArgs,
        #[arg(long, default_value_t = 32)]
        max_new_tokens: usize,
        /// Keep generating past the end-of-sequence token.
        #[arg(long)]
        ignore_eos: bool,
    },
    /// Serve the model over HTTP: OpenAI's and SGLang's APIs.
    Serve(Box<ServeArgs>),
    /// Benchmark a running server.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Serving throughput and latency, as `sglang.bench_serving` measures them.
    Serve(Box<bench::ServeArgs>),
    /// GSM8K-style accuracy: k-shot prompts, the last number of the answer graded.
    Accuracy(Box<bench::AccuracyArgs>),
    /// The engine in-process under `bench serve`'s random workload: the server's ceiling.
    Offline(Box<bench::OfflineArgs>),
}

/// `flashseek logits`: every position's logits (and hidden states) into a safetensors file.
struct LogitsTask<'a> {
    ids: &'a [u32],
    decode: bool,
    with_hidden: bool,
    out: &'a Path,
}

impl ModelTask for LogitsTask<'_> {
    type Output = anyhow::Result<()>;

    fn run<B: Backend>(self, mut model: Model<B>) -> flashseek::error::Result<Self::Output> {
        Ok(self.logits(&mut model))
    }
}

impl LogitsTask<'_> {
    fn logits<B: Backend>(&self, model: &mut Model<B>) -> anyhow::Result<()> {
        let ids = self.ids;
        let mut cache = model.new_cache(ids.len().div_ceil(BLOCK_SIZE))?;
        let mut table = Vec::new();
        cache.reserve(&mut table, ids.len())?;
        let vocab = model.config().vocab_size;
        let mut logits = Vec::with_capacity(ids.len() * vocab);
        let mut hidden: Vec<Vec<f32>> = Vec::new();
        let chunks: Vec<&[u32]> = if self.decode { ids.chunks(1).collect() } else { vec![ids] };
        let mut start_pos = 0;
        for chunk in chunks {
            let batch = [SeqInput { tokens: chunk, start_pos, block_table: &table, logits: Logits::All }];
            if self.with_hidden {
                let h = model.forward_with_hidden(&batch, &mut cache)?;
                hidden.resize(h.len(), Vec::new());
                for (acc, h) in hidden.iter_mut().zip(h) {
                    acc.extend(h);
                }
            } else {
                model.forward(&batch, &mut cache)?;
            }
            logits.extend(model.backend().read(model.logits())?);
            start_pos += chunk.len();
        }
        let d = model.config().hidden_size;
        let mut tensors = vec![("logits".to_string(), vec![ids.len(), vocab], logits)];
        for (i, h) in hidden.into_iter().enumerate() {
            tensors.push((format!("hidden.{i}"), vec![ids.len(), d], h));
        }
        write_safetensors(self.out, tensors)
    }
}

fn write_safetensors(path: &Path, tensors: Vec<(String, Vec<usize>, Vec<f32>)>) -> anyhow::Result<()> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> =
        tensors.into_iter().map(|(n, s, v)| (n, s, v.iter().flat_map(|x| x.to_le_bytes()).collect())).collect();
    let views = bytes
        .iter()
        .map(|(n, s, b)| Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), b)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let data = safetensors::serialize(views, None)?;
    std::fs::write(path, data).with_context(|| path.display().to_string())
}

/// `flashseek generate --token-ids`: greedy generation, the ids printed.
struct GenerateTask<'a> {
    prompt: &'a [u32],
    max_new: usize,
    ignore_eos: bool,
}

impl ModelTask for GenerateTask<'_> {
    type Output = anyhow::Result<()>;

    fn run<B: Backend>(self, mut model: Model<B>) -> flashseek::error::Result<Self::Output> {
        Ok(self.generate(&mut model))
    }
}

impl GenerateTask<'_> {
    fn generate<B: Backend>(&self, model: &mut Model<B>) -> anyhow::Result<()> {
        let (prompt, max_new, ignore_eos) = (self.prompt, self.max_new, self.ignore_eos);
        let total = prompt.len() + max_new;
        if total > model.config().max_position_embeddings {
            bail!(
                "prompt ({}) + max-new-tokens ({max_new}) exceed the model's context of {}",
                prompt.len(),
                model.config().max_position_embeddings
            );
        }
        let mut cache = model.new_cache(total.div_ceil(BLOCK_SIZE))?;
        let mut table = Vec::new();
        cache.reserve(&mut table, total)?;
        let eos = model.config().eos_token_ids.clone();
        let mut generated: Vec<u32> = Vec::with_capacity(max_new);
        let started = Instant::now();
        let mut first_token = None;
        let mut next = prompt;
        let mut start_pos = 0;
        let mut last = [0u32];
        while generated.len() < max_new {
            let batch = [SeqInput { tokens: next, start_pos, block_table: &table, logits: Logits::Last }];
            model.forward(&batch, &mut cache)?;
            start_pos += next.len();
            last[0] = model.argmax()?[0];
            generated.push(last[0]);
            first_token.get_or_insert_with(|| started.elapsed());
            if !ignore_eos && eos.contains(&last[0]) {
                break;
            }
            next = &last;
        }
        let total_time = started.elapsed();
        let ids: Vec<String> = generated.iter().map(u32::to_string).collect();
        println!("{}", ids.join(","));
        let ttft = first_token.unwrap_or(total_time);
        let decode_tokens = generated.len().saturating_sub(1);
        let decode_rate =
            if decode_tokens > 0 { decode_tokens as f64 / (total_time - ttft).as_secs_f64() } else { 0.0 };
        eprintln!(
            "{}: prompt {} tokens, generated {}; first token {:.1} ms, decode {:.1} tokens/s",
            model.backend().name(),
            prompt.len(),
            generated.len(),
            ttft.as_secs_f64() * 1e3,
            decode_rate
        );
        Ok(())
    }
}

/// Options of text generation (`generate --prompt`).
#[derive(clap::Args)]
struct TextArgs {
    /// Wrap the prompt as a user message in the model's chat format.
    #[arg(long, requires = "prompt")]
    chat: bool,
    /// Chat in thinking mode (DeepSeek-V3.2 and V3.1 templates): `--thinking` or
    /// `--thinking false` (default: the model's generation_config.json, else off).
    #[arg(long, requires = "chat", num_args = 0..=1, default_missing_value = "true")]
    thinking: Option<bool>,
    /// 0 decodes greedily.
    #[arg(long, default_value_t = 0.0, requires = "prompt")]
    temperature: f32,
    #[arg(long, requires = "prompt")]
    seed: Option<u64>,
}

fn generate_text(
    args: &ModelArgs,
    prompt: &str,
    opts: &TextArgs,
    max_new: usize,
    ignore_eos: bool,
) -> anyhow::Result<()> {
    let model_path = bundled::resolve(args.model_path.as_deref())?;
    let tokenizer = Arc::new(Tokenizer::from_dir(&model_path)?);
    let config = ModelConfig::from_file(&model_path.join("config.json"))?;
    let text = if opts.chat {
        let chat = ChatFormat::select(config.model_type.as_str(), tokenizer.chat_template(), None)?;
        let options = ChatOptions {
            thinking: match opts.thinking {
                Some(t) => t,
                None => launch::model_thinking_default(&model_path)?.unwrap_or(false),
            },
            add_generation_prompt: true,
            bos_token: tokenizer.bos_token().unwrap_or_default().to_string(),
            eos_token: tokenizer.eos_token().unwrap_or_default().to_string(),
            ..ChatOptions::default()
        };
        chat.render(&[ChatMessage::new(Role::User, prompt)], &options)?
    } else {
        prompt.to_string()
    };
    let ids = tokenizer.encode(&text)?;
    let engine_config = EngineConfig {
        max_running: 1,
        max_total_tokens: Some(ids.len() + max_new),
        context_length: Some(ids.len() + max_new),
        ..EngineConfig::default()
    };
    let engine = engine::start_on(args.loader(), model_path, tokenizer, engine_config, Arc::new(Metrics::default()))?;
    let params = SamplingParams {
        max_new_tokens: max_new,
        temperature: opts.temperature,
        seed: opts.seed,
        ignore_eos,
        ..SamplingParams::default()
    };
    let started = Instant::now();
    let stream = engine.submit(vec![Request { prompt: ids, params }])?;
    let mut stdout = std::io::stdout().lock();
    let mut first = None;
    let mut generated = 0;
    while let Some((_, out)) = stream.recv() {
        first.get_or_insert_with(|| started.elapsed());
        generated += out.token_ids.len();
        write!(stdout, "{}", out.text)?;
        stdout.flush()?;
        if let Some(f) = out.finished {
            if let FinishReason::Abort(m) = f.reason {
                bail!("generation failed: {m}");
            }
            writeln!(stdout)?;
            let total = started.elapsed();
            let ttft = first.unwrap_or(total);
            let rate = generated.saturating_sub(1) as f64 / (total - ttft).as_secs_f64().max(1e-9);
            eprintln!(
                "prompt {} tokens, generated {generated}; first token {:.1} ms, decode {rate:.1} tokens/s",
                f.prompt_tokens,
                ttft.as_secs_f64() * 1e3
            );
            return Ok(());
        }
    }
    bail!("the engine stopped during generation")
}

fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    server::launch::start(args)?.run();
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(n) = cli.threads {
        rayon::ThreadPoolBuilder::new().num_threads(n).build_global().context("starting the thread pool")?;
    }
    match cli.command {
        Command::Logits { model, decode, hidden, out } => {
            model.run(LogitsTask { ids: &model.token_ids, decode, with_hidden: hidden, out: &out })?
        }
        Command::Generate { model, prompt: Some(prompt), text, max_new_tokens, ignore_eos } => {
            generate_text(&model, &prompt, &text, max_new_tokens, ignore_eos)
        }
        Command::Generate { model, prompt: None, max_new_tokens, ignore_eos, .. } => {
            model.run(GenerateTask { prompt: &model.token_ids, max_new: max_new_tokens, ignore_eos })?
        }
        Command::Serve(args) => serve(&args),
        Command::Bench(BenchCommand::Serve(args)) => bench::run_serve(&args).map(drop),
        Command::Bench(BenchCommand::Accuracy(args)) => bench::run_accuracy(&args).map(drop),
        Command::Bench(BenchCommand::Offline(args)) => bench::run_offline(&args).map(drop),
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
