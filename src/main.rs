//! The `flashseek` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use flashseek::backend::{Backend, CpuBackend};
use flashseek::kv_cache::BLOCK_SIZE;
use flashseek::model::{ActQuant, Logits, Model, SeqInput};
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

#[derive(Clone, Copy, ValueEnum)]
enum ActQuantArg {
    /// Round activations through FP8 as DeepSeek's inference does.
    Fp8,
    /// Keep activations in f32.
    None,
}

impl From<ActQuantArg> for ActQuant {
    fn from(a: ActQuantArg) -> Self {
        match a {
            ActQuantArg::Fp8 => ActQuant::Fp8,
            ActQuantArg::None => ActQuant::None,
        }
    }
}

#[derive(clap::Args)]
struct ModelArgs {
    /// A model directory in the Hugging Face layout (config.json + safetensors).
    #[arg(long)]
    model_path: PathBuf,
    /// Token ids, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    token_ids: Vec<u32>,
    #[arg(long, value_enum, default_value = "fp8")]
    act_quant: ActQuantArg,
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
    /// Greedy generation; prints the generated token ids.
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long, default_value_t = 32)]
        max_new_tokens: usize,
        /// Keep generating past the end-of-sequence token.
        #[arg(long)]
        ignore_eos: bool,
    },
}

fn load(args: &ModelArgs) -> anyhow::Result<Model<CpuBackend>> {
    let model = Model::load(CpuBackend::new(), &args.model_path, args.act_quant.into())?;
    Ok(model)
}

fn logits(args: &ModelArgs, decode: bool, with_hidden: bool, out: &Path) -> anyhow::Result<()> {
    let mut model = load(args)?;
    let ids = &args.token_ids;
    let mut cache = model.new_cache(ids.len().div_ceil(BLOCK_SIZE))?;
    let mut table = Vec::new();
    cache.reserve(&mut table, ids.len())?;
    let vocab = model.config().vocab_size;
    let mut logits = Vec::with_capacity(ids.len() * vocab);
    let mut hidden: Vec<Vec<f32>> = Vec::new();
    let chunks: Vec<&[u32]> = if decode { ids.chunks(1).collect() } else { vec![ids] };
    let mut start_pos = 0;
    for chunk in chunks {
        let batch = [SeqInput { tokens: chunk, start_pos, block_table: &table, logits: Logits::All }];
        if with_hidden {
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
    write_safetensors(out, tensors)
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

fn generate(args: &ModelArgs, max_new: usize, ignore_eos: bool) -> anyhow::Result<()> {
    let mut model = load(args)?;
    let prompt = &args.token_ids;
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
    let mut next = prompt.as_slice();
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
    let decode_rate = if decode_tokens > 0 { decode_tokens as f64 / (total_time - ttft).as_secs_f64() } else { 0.0 };
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

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(n) = cli.threads {
        rayon::ThreadPoolBuilder::new().num_threads(n).build_global().context("starting the thread pool")?;
    }
    match cli.command {
        Command::Logits { model, decode, hidden, out } => logits(&model, decode, hidden, &out),
        Command::Generate { model, max_new_tokens, ignore_eos } => generate(&model, max_new_tokens, ignore_eos),
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
