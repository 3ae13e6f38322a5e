//! `flashseek bench accuracy`: GSM8K-style grading as SGLang's `benchmark/gsm8k/bench_sglang.py`
//! does it (same k-shot prompt, stop strings and answer extraction), so accuracies are comparable.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::http::Client;
use super::pool::run_scheduled;

/// Where SGLang's k-shot completion stops: at the start of the next question (or a chat turn).
const STOP: [&str; 3] = ["Question", "Assistant:", "<|separator|>"];

/// Grade a model on GSM8K-style questions. Plain HTTP only: put a local proxy in front of an
/// https server.
#[derive(clap::Args, Clone, Debug)]
pub struct AccuracyArgs {
    /// JSONL with one `{"question": .., "answer": ..}` per line (GSM8K's test.jsonl).
    #[arg(long, default_value = "test.jsonl")]
    pub data_path: PathBuf,
    /// Worked examples in front of every question (the file's first lines, as SGLang takes them).
    #[arg(long, default_value_t = 5)]
    pub num_shots: usize,
    /// How many questions to ask, from the top of the file.
    #[arg(long, default_value_t = 200)]
    pub num_questions: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    pub parallel: usize,
    #[arg(long, default_value_t = 512)]
    pub max_new_tokens: usize,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 30000)]
    pub port: u16,
    /// Server URL (`http://host:port`) instead of --host/--port; https needs a proxy.
    #[arg(long)]
    pub base_url: Option<String>,
    /// Ask each question alone as a user message on /v1/chat/completions instead of a k-shot
    /// completion on /generate.
    #[arg(long)]
    pub chat: bool,
    /// Model name for --chat (default: the first one `GET /v1/models` lists).
    #[arg(long)]
    pub model: Option<String>,
    /// With --chat: ask for thinking mode (`chat_template_kwargs.thinking`); the answer is
    /// graded from the content only, not the reasoning.
    #[arg(long, requires = "chat")]
    pub thinking: bool,
    /// Grade with the sign: `-5` is not `5` (SGLang drops the sign, which GSM8K never needs).
    #[arg(long)]
    pub signed: bool,
    /// Append the report as one JSON line to this file.
    #[arg(long)]
    pub output_file: Option<PathBuf>,
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Seconds one request may take before it counts as failed.
    #[arg(long, default_value_t = 6.0 * 3600.0)]
    pub request_timeout: f64,
}

/// One GSM8K record; `answer` is the worked solution ending in `#### <number>`. An optional
/// `category` groups questions for a per-category breakdown.
#[derive(Clone, Debug, Deserialize)]
pub struct Example {
    pub question: String,
    pub answer: String,
    #[serde(default)]
    pub category: Option<String>,
}

/// Accuracy over the questions of one category.
#[derive(Clone, Debug, Serialize)]
pub struct CategoryReport {
    pub category: String,
    pub num_questions: usize,
    pub correct: usize,
    pub accuracy: f64,
}

/// Results of one run. Failed requests count as wrong and are not counted as invalid.
#[derive(Clone, Debug, Serialize)]
pub struct AccuracyReport {
    pub num_questions: usize,
    pub correct: usize,
    /// Answers with no number in them.
    pub invalid: usize,
    /// Requests that got no answer (HTTP or protocol errors).
    pub failed: usize,
    /// `correct / num_questions`.
    pub accuracy: f64,
    /// `invalid / num_questions`.
    pub invalid_rate: f64,
    /// Wall-clock seconds for all questions.
    pub latency: f64,
    pub output_tokens: usize,
    /// Output tokens per second of wall-clock time.
    pub output_throughput: f64,
    pub first_error: Option<String>,
    /// Per `category`, in the order categories first appear; empty when the data has none.
    pub categories: Vec<CategoryReport>,
}

/// Asks the questions, grades the answers and prints SGLang's four summary lines.
pub fn run_accuracy(args: &AccuracyArgs) -> anyhow::Result<AccuracyReport> {
    let examples = read_examples(&args.data_path)?;
    let Some(shots) = examples.get(..args.num_shots) else {
        bail!(
            "{} holds {} examples, fewer than --num-shots {}",
            args.data_path.display(),
            examples.len(),
            args.num_shots
        );
    };
    let prefix = few_shot_prefix(shots);
    let questions = examples.get(..args.num_questions).unwrap_or(&examples);
    let labels = questions
        .iter()
        .enumerate()
        .map(|(i, ex)| {
            label(&ex.answer, args.signed).with_context(|| format!("example {}: the answer holds no number", i + 1))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    let base = args.base_url.clone().unwrap_or_else(|| format!("http://{}:{}", args.host, args.port));
    let timeout = Duration::try_from_secs_f64(args.request_timeout).context("--request-timeout")?;
    let client = Client::new(&base, timeout)?;
    let asker = Asker::new(args, client, prefix)?;

    let start = Instant::now();
    let replies = run_scheduled(&vec![0.0; questions.len()], args.parallel, |i| match questions.get(i) {
        Some(ex) => asker.ask(&ex.question),
        None => bail!("no question {i}"),
    })?;
    let latency = start.elapsed().as_secs_f64();

    let categories: Vec<Option<&str>> = questions.iter().map(|ex| ex.category.as_deref()).collect();
    let report = grade(&replies, &labels, &categories, args.signed, latency);
    for c in &report.categories {
        println!("{:<24} {:>4}/{:<4} {:.3}", c.category, c.correct, c.num_questions, c.accuracy);
    }
    println!("Accuracy: {:.3}", report.accuracy);
    println!("Invalid: {:.3}", report.invalid_rate);
    println!("Latency: {:.3} s", report.latency);
    println!("Output throughput: {:.3} token/s", report.output_throughput);
    if let Some(err) = &report.first_error {
        eprintln!("{} of {} requests failed; the first error: {err}", report.failed, report.num_questions);
    }
    if let Some(path) = &args.output_file {
        super::serve::append_jsonl(path, &report)?;
    }
    Ok(report)
}

fn read_examples(path: &Path) -> anyhow::Result<Vec<Example>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line)
                .with_context(|| format!("{}:{}: expected {{\"question\", \"answer\"}}", path.display(), i + 1))
        })
        .collect()
}

fn example_text(question: &str) -> String {
    format!("Question: {question}\nAnswer:")
}

/// The k worked examples, each followed by a blank line, that precede every question.
pub fn few_shot_prefix(shots: &[Example]) -> String {
    shots.iter().map(|ex| format!("{} {}\n\n", example_text(&ex.question), ex.answer)).collect()
}

/// The full k-shot prompt for one question.
pub fn few_shot_prompt(prefix: &str, question: &str) -> String {
    format!("{prefix}{}", example_text(question))
}

/// The graded value of a text: its last run of ASCII digits once commas are removed (so
/// `1,234` reads as 1234 and `-5` as 5, as in SGLang), with leading zeros dropped. A number
/// written with leading zeros such as `007` is invalid, because SGLang parses it as a Python
/// literal, which rejects that.
pub fn answer_value(text: &str) -> Option<String> {
    let cleaned = text.replace(',', "");
    let digits = cleaned.split(|c: char| !c.is_ascii_digit()).rfind(|s| !s.is_empty())?;
    let trimmed = digits.trim_start_matches('0');
    if trimmed.is_empty() {
        return Some("0".into());
    }
    (trimmed.len() == digits.len()).then(|| trimmed.to_string())
}

/// `answer_value` with the sign: `-` right before the last number makes it negative (`-0` is 0).
pub fn signed_answer_value(text: &str) -> Option<String> {
    let value = answer_value(text)?;
    let cleaned = text.replace(',', "");
    let end = cleaned.rfind(|c: char| c.is_ascii_digit())?;
    let start = cleaned[..end].rfind(|c: char| !c.is_ascii_digit()).map_or(0, |i| i + 1);
    let negative = cleaned[..start].ends_with('-') && value != "0";
    Some(if negative { format!("-{value}") } else { value })
}

fn graded_value(text: &str, signed: bool) -> Option<String> {
    if signed {
        signed_answer_value(text)
    } else {
        answer_value(text)
    }
}

/// The reference value of a GSM8K answer: the number after its final `####`.
fn label(answer: &str, signed: bool) -> Option<String> {
    let tail = answer.rsplit_once("####").map_or(answer, |(_, tail)| tail);
    graded_value(tail, signed)
}

/// A model's text up to the first stop string, in case the server does not apply them itself
/// (otherwise the numbers of an invented next question would be graded).
fn truncate_at_stop(text: &str) -> &str {
    let end = STOP.iter().filter_map(|s| text.find(s)).min().unwrap_or(text.len());
    text.get(..end).unwrap_or(text)
}

/// A model's reply: its text and how many tokens it generated.
struct Reply {
    text: String,
    tokens: usize,
}

struct Asker {
    client: Client,
    prefix: String,
    chat_model: Option<String>,
    thinking: bool,
    max_new_tokens: usize,
    temperature: f64,
}

impl Asker {
    fn new(args: &AccuracyArgs, client: Client, prefix: String) -> anyhow::Result<Self> {
        let chat_model = match (&args.model, args.chat) {
            (_, false) => None,
            (Some(model), true) => Some(model.clone()),
            (None, true) => Some(client.served_model()?),
        };
        Ok(Asker {
            client,
            prefix,
            chat_model,
            thinking: args.thinking,
            max_new_tokens: args.max_new_tokens,
            temperature: args.temperature,
        })
    }

    fn ask(&self, question: &str) -> anyhow::Result<Reply> {
        match &self.chat_model {
            Some(model) => self.ask_chat(model, question),
            None => self.ask_few_shot(question),
        }
    }

    fn ask_few_shot(&self, question: &str) -> anyhow::Result<Reply> {
        let body = json!({
            "text": few_shot_prompt(&self.prefix, question),
            "sampling_params": {
                "max_new_tokens": self.max_new_tokens,
                "temperature": self.temperature,
                "stop": STOP,
            },
            "stream": false,
        });
        let resp = self.client.post_json("/generate", &body)?;
        let text = reply_text(&resp, "/text")?;
        Ok(Reply { text, tokens: count_at(&resp, "/meta_info/completion_tokens") })
    }

    fn ask_chat(&self, model: &str, question: &str) -> anyhow::Result<Reply> {
        let mut body = json!({
            "model": model,
            "messages": [{"role": "user", "content": question}],
            "max_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "stream": false,
        });
        if self.thinking {
            body["chat_template_kwargs"] = json!({"thinking": true});
        }
        let resp = self.client.post_json("/v1/chat/completions", &body)?;
        let text = reply_text(&resp, "/choices/0/message/content")?;
        Ok(Reply { text, tokens: count_at(&resp, "/usage/completion_tokens") })
    }
}

fn reply_text(resp: &Value, pointer: &str) -> anyhow::Result<String> {
    match resp.pointer(pointer).and_then(Value::as_str) {
        Some(text) => Ok(text.to_string()),
        None => bail!("the response has no {pointer}: {resp}"),
    }
}

fn count_at(resp: &Value, pointer: &str) -> usize {
    resp.pointer(pointer).and_then(Value::as_u64).map_or(0, |n| n as usize)
}

fn grade(
    replies: &[anyhow::Result<Reply>],
    labels: &[String],
    categories: &[Option<&str>],
    signed: bool,
    latency: f64,
) -> AccuracyReport {
    let (mut correct, mut invalid, mut failed, mut output_tokens) = (0, 0, 0, 0);
    let mut first_error = None;
    let mut per_category: Vec<CategoryReport> = Vec::new();
    for ((reply, label), category) in replies.iter().zip(labels).zip(categories) {
        let right = match reply {
            Ok(reply) => {
                output_tokens += reply.tokens;
                match graded_value(truncate_at_stop(&reply.text), signed) {
                    Some(value) if value == *label => {
                        correct += 1;
                        true
                    }
                    Some(_) => false,
                    None => {
                        invalid += 1;
                        false
                    }
                }
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
                false
            }
        };
        if let Some(name) = category {
            let at = match per_category.iter().position(|c| c.category == *name) {
                Some(at) => at,
                None => {
                    per_category.push(CategoryReport {
                        category: name.to_string(),
                        num_questions: 0,
                        correct: 0,
                        accuracy: 0.0,
                    });
                    per_category.len() - 1
                }
            };
            if let Some(c) = per_category.get_mut(at) {
                c.num_questions += 1;
                c.correct += usize::from(right);
            }
        }
    }
    for c in &mut per_category {
        c.accuracy = c.correct as f64 / c.num_questions as f64;
    }
    let n = replies.len();
    let frac = |k: usize| if n > 0 { k as f64 / n as f64 } else { 0.0 };
    AccuracyReport {
        num_questions: n,
        correct,
        invalid,
        failed,
        accuracy: frac(correct),
        invalid_rate: frac(invalid),
        latency,
        output_tokens,
        output_throughput: if latency > 0.0 { output_tokens as f64 / latency } else { 0.0 },
        first_error,
        categories: per_category,
    }
}
