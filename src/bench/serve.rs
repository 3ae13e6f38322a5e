//! `flashseek bench serve`: an online-serving load generator that reproduces SGLang's
//! `python -m sglang.bench_serving` (same flags, workloads, metric definitions and result table),
//! so numbers from our server and from SGLang can be compared side by side.

use std::fs::OpenOptions;
use std::io::Write;
use std::iter;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::dataset::{self, BenchRequest, Prompt, RandomSpec, SharegptSpec};
use super::http::{Client, StreamEnd};
use super::pool::run_scheduled;
use super::stats::Summary;

/// Warmup requests ask for at most this many tokens, as SGLang's do.
const WARMUP_OUTPUT_LEN: usize = 32;

/// The API the requests go to.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// SGLang's native `POST /generate`.
    #[value(alias = "sglang-native")]
    Sglang,
    /// OpenAI `POST /v1/completions`.
    #[value(alias = "sglang-oai", alias = "vllm")]
    Openai,
    /// OpenAI `POST /v1/chat/completions` (text prompts only, so not with the random dataset).
    #[value(alias = "sglang-oai-chat", alias = "vllm-chat")]
    OpenaiChat,
}

impl Backend {
    fn path(self) -> &'static str {
        match self {
            Backend::Sglang => "/generate",
            Backend::Openai => "/v1/completions",
            Backend::OpenaiChat => "/v1/chat/completions",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Backend::Sglang => "sglang",
            Backend::Openai => "openai",
            Backend::OpenaiChat => "openai-chat",
        }
    }
}

/// Where the prompts come from.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetName {
    /// First turns of a ShareGPT JSON dump (`--dataset-path`), lengths counted by the server's
    /// `/v1/tokenize`.
    Sharegpt,
    /// Uniformly random token ids, sent as ids (no tokenizer needed).
    #[value(alias = "random-ids")]
    Random,
}

/// Benchmark online serving: SGLang's `bench_serving` flags and table. Plain HTTP only: put a
/// local proxy in front of an https server.
#[derive(clap::Args, Clone, Debug)]
pub struct ServeArgs {
    /// The API to benchmark.
    #[arg(long, value_enum, default_value_t = Backend::Sglang)]
    pub backend: Backend,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 30000)]
    pub port: u16,
    /// Server URL (`http://host:port`) instead of --host/--port; https needs a proxy.
    #[arg(long)]
    pub base_url: Option<String>,
    /// Model name for the OpenAI APIs (default: the first one `GET /v1/models` lists).
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long, value_enum, default_value_t = DatasetName::Sharegpt)]
    pub dataset_name: DatasetName,
    /// The ShareGPT JSON file (e.g. ShareGPT_V3_unfiltered_cleaned_split.json).
    #[arg(long)]
    pub dataset_path: Option<PathBuf>,
    /// Number of requests to send.
    #[arg(long, default_value_t = 1000)]
    pub num_prompts: usize,
    /// Output length of every ShareGPT request instead of the recorded reply's length.
    #[arg(long)]
    pub sharegpt_output_len: Option<usize>,
    /// Drop ShareGPT conversations whose prompt plus output exceed this many tokens.
    #[arg(long)]
    pub sharegpt_context_len: Option<usize>,
    /// Maximum input length of a random request, in tokens.
    #[arg(long, default_value_t = 1024)]
    pub random_input_len: usize,
    /// Maximum output length of a random request, in tokens.
    #[arg(long, default_value_t = 1024)]
    pub random_output_len: usize,
    /// Random lengths are uniform in [max(len * ratio, 1), len]: 0 spans 1..=len, 1 fixes len.
    #[arg(long, default_value_t = 0.0)]
    pub random_range_ratio: f64,
    /// Random token ids are drawn from 0..this (default: `vocab_size` from `GET /get_model_info`).
    #[arg(long)]
    pub random_vocab_size: Option<u32>,
    /// Requests per second, as a Poisson process; inf sends everything at once.
    #[arg(long, default_value_t = f64::INFINITY)]
    pub request_rate: f64,
    /// Cap on requests in flight (default: no cap).
    #[arg(long)]
    pub max_concurrency: Option<usize>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Append the results as one JSON line to this file.
    #[arg(long)]
    pub output_file: Option<PathBuf>,
    /// Wait for whole responses (TTFT then equals the end-to-end latency).
    #[arg(long)]
    pub disable_stream: bool,
    /// Let generation stop at EOS instead of always producing the requested length.
    #[arg(long)]
    pub disable_ignore_eos: bool,
    /// A JSON object merged into every request body, e.g. '{"top_k": 1}'.
    #[arg(long)]
    pub extra_request_body: Option<String>,
    /// Requests sent (one at a time) before the measured run; the run aborts if all fail.
    #[arg(long, default_value_t = 1)]
    pub warmup_requests: usize,
    /// Seconds one request may take before it counts as failed.
    #[arg(long, default_value_t = 6.0 * 3600.0)]
    pub request_timeout: f64,
}

/// The results of one run; latency summaries are in milliseconds over the successful requests.
#[derive(Clone, Debug, Serialize)]
pub struct ServeReport {
    pub backend: Backend,
    pub dataset_name: DatasetName,
    pub request_rate: f64,
    pub max_concurrency: Option<usize>,
    pub sharegpt_output_len: Option<usize>,
    pub random_input_len: usize,
    pub random_output_len: usize,
    pub random_range_ratio: f64,
    /// Requests sent in the measured run.
    pub num_prompts: usize,
    /// Seconds from the first request to the end of the last response.
    pub duration: f64,
    pub completed: usize,
    pub failed: usize,
    pub total_input_tokens: usize,
    pub total_output_tokens: usize,
    pub request_throughput: f64,
    pub input_throughput: f64,
    pub output_throughput: f64,
    pub total_throughput: f64,
    /// Average number of requests in flight: the summed latencies over the duration.
    pub concurrency: f64,
    pub e2e_latency_ms: Summary,
    pub ttft_ms: Summary,
    /// Per request: (latency - TTFT) / (output tokens - 1), for requests with 2+ output tokens.
    pub tpot_ms: Summary,
    pub itl_ms: Summary,
    /// The first failure's message, to tell a misconfiguration from a flaky server.
    pub first_error: Option<String>,
}

/// Runs the benchmark, prints SGLang's result table and returns the numbers. Failed requests are
/// counted, not fatal; setup problems (no dataset, unreachable server, failed warmup) are errors.
pub fn run_serve(args: &ServeArgs) -> anyhow::Result<ServeReport> {
    validate(args)?;
    let base = args.base_url.clone().unwrap_or_else(|| format!("http://{}:{}", args.host, args.port));
    let timeout = Duration::try_from_secs_f64(args.request_timeout).context("--request-timeout")?;
    let client = Client::new(&base, timeout)?;
    let requests = load_requests(args, &client)?;
    println!("#Input tokens: {}", requests.iter().map(|r| r.prompt_len).sum::<usize>());
    println!("#Output tokens: {}", requests.iter().map(|r| r.output_len).sum::<usize>());
    let Some(first) = requests.first() else {
        bail!("the dataset yielded no requests");
    };
    let sender = Sender::new(args, client)?;
    warm_up(&sender, first, args.warmup_requests)?;

    let arrivals = dataset::poisson_arrivals(requests.len(), args.request_rate, args.seed.wrapping_add(1));
    let start = Instant::now();
    let outcomes = run_scheduled(&arrivals, args.max_concurrency.unwrap_or(requests.len()), |i| {
        requests.get(i).map_or_else(|| Outcome::failed("no such request".into()), |r| sender.send(r, r.output_len))
    })?;
    let duration = start.elapsed().as_secs_f64();

    let report = ServeReport::new(args, &requests, &outcomes, duration);
    print!("{}", report.table());
    if let Some(err) = &report.first_error {
        eprintln!("{} of {} requests failed; the first error: {err}", report.failed, report.num_prompts);
    }
    if let Some(path) = &args.output_file {
        append_jsonl(path, &report)?;
    }
    Ok(report)
}

fn validate(args: &ServeArgs) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&args.random_range_ratio) {
        bail!("--random-range-ratio must be in [0, 1], got {}", args.random_range_ratio);
    }
    if args.request_rate.is_nan() || args.request_rate <= 0.0 {
        bail!("--request-rate must be positive (or inf), got {}", args.request_rate);
    }
    if args.max_concurrency == Some(0) {
        bail!("--max-concurrency must be at least 1");
    }
    if args.backend == Backend::OpenaiChat && args.dataset_name == DatasetName::Random {
        bail!("the random dataset sends token ids, which chat messages cannot carry; use --backend sglang or openai");
    }
    Ok(())
}

fn load_requests(args: &ServeArgs, client: &Client) -> anyhow::Result<Vec<BenchRequest>> {
    match args.dataset_name {
        DatasetName::Random => {
            let vocab_size = match args.random_vocab_size {
                Some(v) => v,
                None => server_vocab_size(client)?,
            };
            let spec = RandomSpec {
                input_len: args.random_input_len,
                output_len: args.random_output_len,
                range_ratio: args.random_range_ratio,
                num_prompts: args.num_prompts,
                vocab_size,
            };
            dataset::random_requests(&spec, args.seed)
        }
        DatasetName::Sharegpt => {
            let Some(path) = &args.dataset_path else {
                bail!("--dataset-name sharegpt needs --dataset-path (a ShareGPT JSON file)");
            };
            let spec = SharegptSpec {
                num_prompts: args.num_prompts,
                fixed_output_len: args.sharegpt_output_len,
                context_len: args.sharegpt_context_len,
            };
            dataset::sharegpt_requests(path, &spec, args.seed, |text| count_tokens(client, text))
        }
    }
}

fn server_vocab_size(client: &Client) -> anyhow::Result<u32> {
    let info = client.get_json("/get_model_info").context("asking the server for its vocabulary size")?;
    let size = info.get("vocab_size").and_then(Value::as_u64).context(
        "the server's /get_model_info has no vocab_size; pass --random-vocab-size (the model's vocabulary size)",
    )?;
    u32::try_from(size).context("the server's vocab_size does not fit in a token id")
}

/// Counts tokens with the server's own tokenizer (`POST /v1/tokenize`).
fn count_tokens(client: &Client, text: &str) -> anyhow::Result<usize> {
    let resp = client.post_json("/v1/tokenize", &json!({ "prompt": text }))?;
    if let Some(count) = resp.get("count").and_then(Value::as_u64) {
        return usize::try_from(count).context("token count out of range");
    }
    match resp.get("tokens").and_then(Value::as_array) {
        Some(tokens) => Ok(tokens.len()),
        None => bail!("/v1/tokenize answered without `count` or `tokens`"),
    }
}

fn warm_up(sender: &Sender, request: &BenchRequest, count: usize) -> anyhow::Result<()> {
    if count == 0 {
        return Ok(());
    }
    println!("Starting warmup with {count} sequences...");
    let mut last_error = String::new();
    let mut any_ok = false;
    for _ in 0..count {
        let outcome = sender.send(request, request.output_len.min(WARMUP_OUTPUT_LEN));
        any_ok |= outcome.ok;
        if !outcome.ok {
            last_error = outcome.error;
        }
    }
    if !any_ok {
        bail!("warmup failed; check the server address and the benchmark arguments. Error: {last_error}");
    }
    println!("Warmup completed with {count} sequences. Starting main benchmark run...");
    Ok(())
}

/// What one request produced; times are seconds from when it was sent.
#[derive(Clone, Debug, Default)]
struct Outcome {
    ok: bool,
    ttft: f64,
    latency: f64,
    itl: Vec<f64>,
    output_len: usize,
    error: String,
}

impl Outcome {
    fn failed(error: String) -> Self {
        Outcome { error, ..Outcome::default() }
    }
}

/// Everything needed to turn a [`BenchRequest`] into an HTTP request and time its response.
struct Sender {
    client: Client,
    backend: Backend,
    model: String,
    stream: bool,
    ignore_eos: bool,
    extra: Map<String, Value>,
}

impl Sender {
    fn new(args: &ServeArgs, client: Client) -> anyhow::Result<Self> {
        let extra = match &args.extra_request_body {
            None => Map::new(),
            Some(text) => match serde_json::from_str(text).context("--extra-request-body is not JSON")? {
                Value::Object(map) => map,
                _ => bail!("--extra-request-body must be a JSON object"),
            },
        };
        let model = match (&args.model, args.backend) {
            (Some(model), _) => model.clone(),
            (None, Backend::Sglang) => String::new(),
            (None, _) => client.served_model()?,
        };
        Ok(Sender {
            client,
            backend: args.backend,
            model,
            stream: !args.disable_stream,
            ignore_eos: !args.disable_ignore_eos,
            extra,
        })
    }

    fn send(&self, request: &BenchRequest, output_len: usize) -> Outcome {
        let start = Instant::now();
        let result = self.body(request, output_len).and_then(|body| {
            if self.stream {
                self.send_streaming(&body, start)
            } else {
                self.send_whole(&body, start, output_len)
            }
        });
        result.unwrap_or_else(|e| Outcome::failed(format!("{e:#}")))
    }

    fn body(&self, request: &BenchRequest, output_len: usize) -> anyhow::Result<Value> {
        let mut body = Map::new();
        match self.backend {
            Backend::Sglang => {
                let key = if matches!(request.prompt, Prompt::Ids(_)) { "input_ids" } else { "text" };
                body.insert(key.into(), prompt_json(&request.prompt));
                let params = json!({"temperature": 0.0, "max_new_tokens": output_len, "ignore_eos": self.ignore_eos});
                body.insert("sampling_params".into(), params);
            }
            Backend::Openai | Backend::OpenaiChat => {
                body.insert("model".into(), json!(self.model));
                if self.backend == Backend::Openai {
                    body.insert("prompt".into(), prompt_json(&request.prompt));
                } else {
                    let Prompt::Text(text) = &request.prompt else {
                        bail!("chat requests need a text prompt");
                    };
                    body.insert("messages".into(), json!([{"role": "user", "content": text}]));
                }
                body.insert("temperature".into(), json!(0.0));
                body.insert("max_tokens".into(), json!(output_len));
                body.insert("ignore_eos".into(), json!(self.ignore_eos));
                if self.stream {
                    body.insert("stream_options".into(), json!({"include_usage": true}));
                }
            }
        }
        body.insert("stream".into(), json!(self.stream));
        body.extend(self.extra.clone());
        Ok(Value::Object(body))
    }

    fn send_streaming(&self, body: &Value, start: Instant) -> anyhow::Result<Outcome> {
        let mut reader = StreamReader::new(self.backend, start);
        let end = self.client.post_sse(self.backend.path(), body, |event| reader.event(event))?;
        if end == StreamEnd::Eof && reader.events == 0 {
            bail!("the stream ended before any event");
        }
        Ok(reader.finish())
    }

    fn send_whole(&self, body: &Value, start: Instant, requested: usize) -> anyhow::Result<Outcome> {
        let resp = self.client.post_json(self.backend.path(), body)?;
        let latency = start.elapsed().as_secs_f64();
        check_error(&resp)?;
        let tokens = match self.backend {
            Backend::Sglang => resp.pointer("/meta_info/completion_tokens"),
            Backend::Openai | Backend::OpenaiChat => resp.pointer("/usage/completion_tokens"),
        };
        let output_len = tokens.and_then(Value::as_u64).map_or(requested, |n| n as usize);
        Ok(Outcome { ok: true, ttft: latency, latency, itl: Vec::new(), output_len, error: String::new() })
    }
}

fn prompt_json(prompt: &Prompt) -> Value {
    match prompt {
        Prompt::Ids(ids) => json!(ids),
        Prompt::Text(text) => json!(text),
    }
}

/// Servers report failures inside a 200 response as `{"error": ..}`.
fn check_error(event: &Value) -> anyhow::Result<()> {
    match event.get("error") {
        Some(err) if !err.is_null() => bail!("the server reported an error: {err}"),
        _ => Ok(()),
    }
}

/// Timestamps a token stream the way SGLang does: TTFT at the first chunk with text, then one
/// inter-token latency per new token (a chunk carrying k tokens adds k equal gaps).
struct StreamReader {
    backend: Backend,
    start: Instant,
    events: usize,
    ttft: Option<f64>,
    last_chunk: f64,
    itl: Vec<f64>,
    /// Tokens seen so far: SGLang's cumulative count, else the number of text chunks.
    tokens: usize,
    /// The server's own completion-token count (`usage` on the OpenAI APIs).
    reported: Option<usize>,
}

impl StreamReader {
    fn new(backend: Backend, start: Instant) -> Self {
        StreamReader {
            backend,
            start,
            events: 0,
            ttft: None,
            last_chunk: 0.0,
            itl: Vec::new(),
            tokens: 0,
            reported: None,
        }
    }

    fn event(&mut self, payload: &str) -> anyhow::Result<()> {
        let data: Value =
            serde_json::from_str(payload).with_context(|| format!("a stream event is not JSON: {payload}"))?;
        check_error(&data)?;
        self.events += 1;
        if let Some(n) = data.pointer("/usage/completion_tokens").and_then(Value::as_u64) {
            self.reported = Some(n as usize);
        }
        match self.backend {
            Backend::Sglang => self.sglang_event(&data),
            Backend::Openai => self.text_chunk(data.pointer("/choices/0/text")),
            Backend::OpenaiChat => {
                let content = data.pointer("/choices/0/delta/content").filter(|v| has_text(v));
                self.text_chunk(content.or_else(|| data.pointer("/choices/0/delta/reasoning_content")));
            }
        }
        Ok(())
    }

    /// `/generate` events carry the cumulative text and completion-token count.
    fn sglang_event(&mut self, data: &Value) {
        let count = data.pointer("/meta_info/completion_tokens").and_then(Value::as_u64).map(|n| n as usize);
        let total = count.unwrap_or(self.tokens + 1);
        if data.get("text").is_some_and(has_text) {
            let new_tokens = total.saturating_sub(self.tokens);
            self.tokens_arrived(new_tokens);
        }
        self.tokens = total.max(self.tokens);
    }

    fn text_chunk(&mut self, text: Option<&Value>) {
        if text.is_some_and(has_text) {
            self.tokens_arrived(1);
            self.tokens += 1;
        }
    }

    fn tokens_arrived(&mut self, new_tokens: usize) {
        let now = self.start.elapsed().as_secs_f64();
        if self.ttft.is_none() {
            self.ttft = Some(now);
        } else if new_tokens == 0 {
            return;
        } else {
            let gap = (now - self.last_chunk) / new_tokens as f64;
            self.itl.extend(iter::repeat_n(gap, new_tokens));
        }
        self.last_chunk = now;
    }

    fn finish(self) -> Outcome {
        let latency = self.start.elapsed().as_secs_f64();
        Outcome {
            ok: true,
            ttft: self.ttft.unwrap_or(latency),
            latency,
            itl: self.itl,
            output_len: self.reported.unwrap_or(self.tokens),
            error: String::new(),
        }
    }
}

fn has_text(v: &Value) -> bool {
    v.as_str().is_some_and(|s| !s.is_empty())
}

impl ServeReport {
    fn new(args: &ServeArgs, requests: &[BenchRequest], outcomes: &[Outcome], duration: f64) -> Self {
        let done: Vec<(&BenchRequest, &Outcome)> = requests.iter().zip(outcomes).filter(|(_, o)| o.ok).collect();
        let total_input_tokens: usize = done.iter().map(|(r, _)| r.prompt_len).sum();
        let total_output_tokens: usize = done.iter().map(|(_, o)| o.output_len).sum();
        let e2e: Vec<f64> = done.iter().map(|(_, o)| o.latency).collect();
        let ttft: Vec<f64> = done.iter().map(|(_, o)| o.ttft).collect();
        let itl: Vec<f64> = done.iter().flat_map(|(_, o)| o.itl.iter().copied()).collect();
        let tpot: Vec<f64> = done
            .iter()
            .filter(|(_, o)| o.output_len > 1)
            .map(|(_, o)| (o.latency - o.ttft) / (o.output_len - 1) as f64)
            .collect();
        let per_sec = |x: f64| if duration > 0.0 { x / duration } else { 0.0 };
        let completed = done.len();
        ServeReport {
            backend: args.backend,
            dataset_name: args.dataset_name,
            request_rate: args.request_rate,
            max_concurrency: args.max_concurrency,
            sharegpt_output_len: args.sharegpt_output_len,
            random_input_len: args.random_input_len,
            random_output_len: args.random_output_len,
            random_range_ratio: args.random_range_ratio,
            num_prompts: outcomes.len(),
            duration,
            completed,
            failed: outcomes.len() - completed,
            total_input_tokens,
            total_output_tokens,
            request_throughput: per_sec(completed as f64),
            input_throughput: per_sec(total_input_tokens as f64),
            output_throughput: per_sec(total_output_tokens as f64),
            total_throughput: per_sec((total_input_tokens + total_output_tokens) as f64),
            concurrency: per_sec(e2e.iter().sum()),
            e2e_latency_ms: Summary::of(&e2e).scaled(1e3),
            ttft_ms: Summary::of(&ttft).scaled(1e3),
            tpot_ms: Summary::of(&tpot).scaled(1e3),
            itl_ms: Summary::of(&itl).scaled(1e3),
            first_error: outcomes.iter().find(|o| !o.ok).map(|o| o.error.clone()),
        }
    }

    /// SGLang's result table, line for line (its `{:<40} {:<10}` layout), plus a P99 E2E line
    /// and, only when some requests failed, a failure count.
    pub fn table(&self) -> String {
        let mut t = Table(String::from("\n"));
        t.rule(" Serving Benchmark Result ", '=');
        t.row("Backend:", self.backend.name());
        t.row("Traffic request rate:", &python_float(self.request_rate));
        t.row("Max request concurrency:", &self.max_concurrency.map_or("not set".into(), |c| c.to_string()));
        t.row("Successful requests:", &self.completed.to_string());
        if self.failed > 0 {
            t.row("Failed requests:", &self.failed.to_string());
        }
        t.num("Benchmark duration (s):", self.duration);
        t.row("Total input tokens:", &self.total_input_tokens.to_string());
        t.row("Total generated tokens:", &self.total_output_tokens.to_string());
        t.num("Request throughput (req/s):", self.request_throughput);
        t.num("Input token throughput (tok/s):", self.input_throughput);
        t.num("Output token throughput (tok/s):", self.output_throughput);
        t.num("Total token throughput (tok/s):", self.total_throughput);
        t.num("Concurrency:", self.concurrency);
        t.rule("End-to-End Latency", '-');
        t.num("Mean E2E Latency (ms):", self.e2e_latency_ms.mean);
        t.num("Median E2E Latency (ms):", self.e2e_latency_ms.median);
        t.num("P99 E2E Latency (ms):", self.e2e_latency_ms.p99);
        t.rule("Time to First Token", '-');
        t.num("Mean TTFT (ms):", self.ttft_ms.mean);
        t.num("Median TTFT (ms):", self.ttft_ms.median);
        t.num("P99 TTFT (ms):", self.ttft_ms.p99);
        t.rule("Time per Output Token (excl. 1st token)", '-');
        t.num("Mean TPOT (ms):", self.tpot_ms.mean);
        t.num("Median TPOT (ms):", self.tpot_ms.median);
        t.num("P99 TPOT (ms):", self.tpot_ms.p99);
        t.rule("Inter-Token Latency", '-');
        t.num("Mean ITL (ms):", self.itl_ms.mean);
        t.num("Median ITL (ms):", self.itl_ms.median);
        t.num("P95 ITL (ms):", self.itl_ms.p95);
        t.num("P99 ITL (ms):", self.itl_ms.p99);
        t.num("Max ITL (ms):", self.itl_ms.max);
        t.rule("", '=');
        t.0
    }
}

struct Table(String);

impl Table {
    /// A 50-wide title centred in `fill` (Python's `{:=^50}`; the odd pad goes right, as in Rust).
    fn rule(&mut self, title: &str, fill: char) {
        let pad = 50usize.saturating_sub(title.chars().count());
        let (left, right) = (pad / 2, pad - pad / 2);
        let line: String = iter::repeat_n(fill, left).chain(title.chars()).chain(iter::repeat_n(fill, right)).collect();
        self.0.push_str(&line);
        self.0.push('\n');
    }

    fn row(&mut self, label: &str, value: &str) {
        self.0.push_str(&format!("{label:<40} {value:<10}\n"));
    }

    fn num(&mut self, label: &str, value: f64) {
        self.row(label, &format!("{value:.2}"));
    }
}

/// Python's `str(float)` for the values a request rate takes: `inf`, `4.0`, `0.5`.
fn python_float(x: f64) -> String {
    if x.is_infinite() {
        if x > 0.0 { "inf" } else { "-inf" }.to_string()
    } else if x.fract() == 0.0 && x.abs() < 1e16 {
        format!("{x:.1}")
    } else {
        x.to_string()
    }
}

/// Appends `report` as one JSON line, as SGLang's `--output-file` does.
pub(super) fn append_jsonl(path: &std::path::Path, report: &impl Serialize) -> anyhow::Result<()> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let line = serde_json::to_string(report).context("serializing the report")?;
    writeln!(file, "{line}").with_context(|| format!("writing {}", path.display()))
}
