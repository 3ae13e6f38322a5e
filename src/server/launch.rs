//! `flashseek serve`: SGLang's flags for DeepSeek models, model and tokenizer loading, the
//! engine thread and the HTTP server.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};

use super::{AppState, SamplingDefaults, Server};
use crate::backend::device::{Device, Loader};
use crate::bundled;
use crate::engine::{self, EngineConfig};
use crate::kv_cache::KvCacheDtype;
use crate::metrics::Metrics;
use crate::model::config::ModelConfig;
use crate::model::ActQuant;
use crate::tokenizer::{ChatFormat, ReasoningFormat, Tokenizer};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ToolCallParserArg {
    /// DeepSeek-V3.2's DSML function calls.
    Deepseekv32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ActQuantArg {
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

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// A model directory in the Hugging Face layout (config.json, safetensors, tokenizer.json);
    /// default: the bundled arithmetic model, models/flashseek-v32-arith.
    #[arg(long)]
    pub model_path: Option<PathBuf>,
    /// Where tokenizer.json and tokenizer_config.json are, if not in the model directory.
    #[arg(long)]
    pub tokenizer_path: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 30000)]
    pub port: u16,
    /// Split reasoning from the answer: `deepseek-r1` (output always starts in reasoning) or
    /// `deepseek-v3` (only when the request turns thinking on). The bundled model defaults to
    /// `deepseek-v3`.
    #[arg(long, value_parser = parse_reasoning)]
    pub reasoning_parser: Option<ReasoningFormat>,
    /// Chat template arguments for requests that do not set them, as a JSON object, e.g.
    /// '{"thinking": true}' (default: generation_config.json's `default_chat_template_kwargs`).
    #[arg(long, value_parser = parse_kwargs)]
    pub default_chat_template_kwargs: Option<serde_json::Map<String, serde_json::Value>>,
    /// Turn DSML tool calls in the output into OpenAI `tool_calls`.
    #[arg(long, value_enum)]
    pub tool_call_parser: Option<ToolCallParserArg>,
    /// A Jinja chat template file to use instead of the model's.
    #[arg(long)]
    pub chat_template: Option<PathBuf>,
    /// Longest prompt plus output (default: the model's max_position_embeddings, capped by the KV pool).
    #[arg(long)]
    pub context_length: Option<usize>,
    #[arg(long, default_value_t = 256)]
    pub max_running_requests: usize,
    /// Share of the memory available at start-up given to the KV cache.
    #[arg(long, default_value_t = 0.3)]
    pub mem_fraction_static: f64,
    /// Size the KV cache in tokens instead (overrides --mem-fraction-static).
    #[arg(long)]
    pub max_total_tokens: Option<usize>,
    /// Prefill tokens per step; longer prompts are fed in chunks between decode steps.
    #[arg(long, default_value_t = 2048)]
    pub chunked_prefill_size: usize,
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: Device,
    #[arg(long, default_value = "fp8")]
    pub act_quant: ActQuantArg,
    /// What the KV cache stores: `auto` (f32) or `fp8_e4m3` (FlashMLA's FP8 latent layout and
    /// FP8 index keys: about 3.5x the tokens in the same memory).
    #[arg(long, default_value = "auto")]
    pub kv_cache_dtype: KvCacheDtype,
    /// Tensor-parallel size.
    #[arg(long, visible_alias = "tp-size", default_value_t = 1)]
    pub tp: usize,
    /// Data-parallel size.
    #[arg(long, visible_alias = "dp-size", default_value_t = 1)]
    pub dp: usize,
    /// Expert-parallel size.
    #[arg(long, visible_alias = "ep-size", default_value_t = 1)]
    pub ep: usize,
    #[arg(long)]
    pub enable_dp_attention: bool,
    /// Batch-invariant kernels: a greedy request gives the same tokens alone or batched, at
    /// some cost in prefill speed.
    #[arg(long)]
    pub enable_deterministic_inference: bool,
    /// The model name clients use (default: the model directory's path).
    #[arg(long)]
    pub served_model_name: Option<String>,
}

fn parse_reasoning(s: &str) -> Result<ReasoningFormat, String> {
    s.parse()
}

fn parse_kwargs(s: &str) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    serde_json::from_str(s).map_err(|e| format!("expected a JSON object: {e}"))
}

/// Checks the flags, loads everything and binds the port; the returned server is ready to run.
pub fn start(args: &ServeArgs) -> anyhow::Result<Server> {
    check_supported(args)?;
    let model_path = bundled::resolve(args.model_path.as_deref())?;
    let is_bundled = args.model_path.is_none();
    let config = ModelConfig::from_file(&model_path.join("config.json"))?;
    let tok_dir = args.tokenizer_path.as_deref().unwrap_or(&model_path);
    let tokenizer = Arc::new(Tokenizer::from_dir(tok_dir)?);
    let chat =
        ChatFormat::select(config.model_type.as_str(), tokenizer.chat_template(), args.chat_template.as_deref())?;
    let mut defaults = model_defaults(&model_path)?;
    if let Some(kwargs) = &args.default_chat_template_kwargs {
        defaults.default_chat_template_kwargs = Some(kwargs.clone());
    }
    defaults.thinking().map_err(|e| anyhow::anyhow!("default chat template arguments: {}", e.message))?;
    let metrics = Arc::new(Metrics::default());
    let engine_config = EngineConfig {
        max_running: args.max_running_requests,
        chunked_prefill_size: args.chunked_prefill_size,
        max_total_tokens: args.max_total_tokens,
        mem_fraction_static: args.mem_fraction_static,
        context_length: args.context_length,
    };
    let loader = Loader {
        device: args.device,
        act: ActQuant::from(args.act_quant),
        kv_cache_dtype: args.kv_cache_dtype,
        deterministic: args.enable_deterministic_inference,
    };
    let handle =
        engine::start_on(loader, model_path.clone(), Arc::clone(&tokenizer), engine_config, Arc::clone(&metrics))?;
    let info = handle.info().clone();
    let state = AppState {
        engine: handle,
        tokenizer,
        chat,
        model_name: args.served_model_name.clone().unwrap_or_else(|| {
            if is_bundled {
                bundled::NAME.to_string()
            } else {
                model_path.display().to_string()
            }
        }),
        model_path: model_path.clone(),
        model_type: config.model_type.as_str().to_string(),
        reasoning: args.reasoning_parser.or(is_bundled.then_some(ReasoningFormat::DeepseekV3)),
        tool_calls: args.tool_call_parser.is_some(),
        defaults,
        metrics,
    };
    let addr = format!("{}:{}", args.host, args.port);
    let server = Server::bind(&addr, state)?;
    let bound = server.local_addr().map_or(addr, |a| a.to_string());
    eprintln!(
        "flashseek: serving {} on http://{bound} (context {}, KV pool {} tokens of {} bytes ({} cache), up to {} \
         running)",
        model_path.display(),
        info.context_length,
        info.num_blocks * crate::kv_cache::BLOCK_SIZE,
        info.kv_bytes_per_token,
        info.kv_cache_dtype,
        info.max_running
    );
    Ok(server)
}

fn check_supported(args: &ServeArgs) -> anyhow::Result<()> {
    for (flag, v) in [("--tp", args.tp), ("--dp", args.dp), ("--ep", args.ep)] {
        if v == 0 {
            bail!("{flag} must be at least 1");
        }
        if v > 1 {
            bail!("{flag} {v}: parallel serving is not supported yet; run with {flag} 1");
        }
    }
    if args.enable_dp_attention {
        bail!("--enable-dp-attention is not supported yet");
    }
    Ok(())
}

/// The thinking mode a model's generation_config.json chooses for chats that do not say.
pub fn model_thinking_default(dir: &Path) -> anyhow::Result<Option<bool>> {
    model_defaults(dir)?.thinking().map_err(|e| anyhow::anyhow!("{}: {}", dir.display(), e.message))
}

/// `generation_config.json`'s defaults, when the model ships one.
fn model_defaults(dir: &Path) -> anyhow::Result<SamplingDefaults> {
    let path = dir.join("generation_config.json");
    if !path.exists() {
        return Ok(SamplingDefaults::default());
    }
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))
}
