//! `bench offline`: the engine driven in-process with the same random workload `bench serve`
//! sends (same lengths and token ids for the same seed), every request submitted at once. Its
//! throughput is the ceiling the HTTP server is measured against.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::bail;
use serde::Serialize;

use super::dataset::{random_requests, Prompt, RandomSpec};
use crate::backend::device::{Device, Loader};
use crate::engine::{self, EngineConfig, FinishReason, Request, SamplingParams};
use crate::kv_cache::KvCacheDtype;
use crate::metrics::Metrics;
use crate::model::config::ModelConfig;
use crate::model::ActQuant;
use crate::server::launch::ActQuantArg;
use crate::tokenizer::Tokenizer;

#[derive(clap::Args, Clone, Debug)]
pub struct OfflineArgs {
    /// A model directory in the Hugging Face layout, with its tokenizer (default: the bundled
    /// model).
    #[arg(long)]
    pub model_path: Option<PathBuf>,
    #[arg(long, default_value_t = 64)]
    pub num_prompts: usize,
    #[arg(long, default_value_t = 1024)]
    pub random_input_len: usize,
    #[arg(long, default_value_t = 1024)]
    pub random_output_len: usize,
    #[arg(long, default_value_t = 0.0)]
    pub random_range_ratio: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long, default_value_t = 256)]
    pub max_running_requests: usize,
    #[arg(long, default_value_t = 2048)]
    pub chunked_prefill_size: usize,
    /// KV cache size in tokens (default: what the workload needs).
    #[arg(long)]
    pub max_total_tokens: Option<usize>,
    #[arg(long, default_value = "fp8")]
    pub act_quant: ActQuantArg,
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: Device,
    /// What the KV cache stores: `auto` (f32) or `fp8_e4m3`.
    #[arg(long, default_value = "auto")]
    pub kv_cache_dtype: KvCacheDtype,
}

#[derive(Clone, Debug, Serialize)]
pub struct OfflineReport {
    pub completed: usize,
    pub duration: f64,
    pub total_input_tokens: usize,
    pub total_output_tokens: usize,
    pub request_throughput: f64,
    pub input_throughput: f64,
    pub output_throughput: f64,
    pub total_throughput: f64,
}

pub fn run_offline(args: &OfflineArgs) -> anyhow::Result<OfflineReport> {
    let model_path = crate::bundled::resolve(args.model_path.as_deref())?;
    let config = ModelConfig::from_file(&model_path.join("config.json"))?;
    let spec = RandomSpec {
        input_len: args.random_input_len,
        output_len: args.random_output_len,
        range_ratio: args.random_range_ratio,
        num_prompts: args.num_prompts,
        vocab_size: u32::try_from(config.vocab_size)?,
    };
    let workload = random_requests(&spec, args.seed)?;
    let needed: usize = workload.iter().map(|r| r.prompt_len + r.output_len).sum();
    let longest = workload.iter().map(|r| r.prompt_len + r.output_len).max().unwrap_or(1);
    let tokenizer = Arc::new(Tokenizer::from_dir(&model_path)?);
    let engine_config = EngineConfig {
        max_running: args.max_running_requests,
        chunked_prefill_size: args.chunked_prefill_size,
        max_total_tokens: Some(args.max_total_tokens.unwrap_or(needed + workload.len() * 64)),
        context_length: Some(longest.max(args.random_input_len + args.random_output_len)),
        ..EngineConfig::default()
    };
    let loader = Loader {
        device: args.device,
        act: ActQuant::from(args.act_quant),
        kv_cache_dtype: args.kv_cache_dtype,
        deterministic: false,
    };
    let engine = engine::start_on(loader, model_path, tokenizer, engine_config, Arc::new(Metrics::default()))?;
    let mut requests = Vec::with_capacity(workload.len());
    for r in &workload {
        let Prompt::Ids(ids) = &r.prompt else { bail!("the random workload holds a text prompt") };
        let params = SamplingParams {
            max_new_tokens: r.output_len,
            temperature: 0.0,
            ignore_eos: true,
            ..SamplingParams::default()
        };
        requests.push(Request { prompt: ids.clone(), params });
    }
    let start = Instant::now();
    let stream = engine.submit(requests)?;
    let (mut completed, mut output_tokens) = (0, 0);
    while let Some((_, out)) = stream.recv() {
        output_tokens += out.token_ids.len();
        if let Some(f) = out.finished {
            if let FinishReason::Abort(m) = f.reason {
                bail!("a request failed: {m}");
            }
            completed += 1;
        }
    }
    let duration = start.elapsed().as_secs_f64();
    let input_tokens: usize = workload.iter().map(|r| r.prompt_len).sum();
    let report = OfflineReport {
        completed,
        duration,
        total_input_tokens: input_tokens,
        total_output_tokens: output_tokens,
        request_throughput: completed as f64 / duration,
        input_throughput: input_tokens as f64 / duration,
        output_throughput: output_tokens as f64 / duration,
        total_throughput: (input_tokens + output_tokens) as f64 / duration,
    };
    println!("{}", report.table());
    Ok(report)
}

impl OfflineReport {
    pub fn table(&self) -> String {
        let rows = [
            ("Successful requests:", format!("{}", self.completed)),
            ("Benchmark duration (s):", format!("{:.2}", self.duration)),
            ("Total input tokens:", format!("{}", self.total_input_tokens)),
            ("Total generated tokens:", format!("{}", self.total_output_tokens)),
            ("Request throughput (req/s):", format!("{:.2}", self.request_throughput)),
            ("Input token throughput (tok/s):", format!("{:.2}", self.input_throughput)),
            ("Output token throughput (tok/s):", format!("{:.2}", self.output_throughput)),
            ("Total token throughput (tok/s):", format!("{:.2}", self.total_throughput)),
        ];
        let mut out = format!("{:=^50}\n", " Offline Throughput Benchmark Result ");
        for (k, v) in rows {
            out.push_str(&format!("{k:<40} {v:<10}\n"));
        }
        out.push_str(&"=".repeat(50));
        out
    }
}
