//! One choice's output on its way to the client: engine text split into reasoning, content
//! and tool calls by the configured parsers, plus what the response reports about it.

use std::time::Instant;

use serde_json::{json, Value};

use super::error::ApiError;
use super::http::EventStream;
use super::AppState;
use crate::engine::{FinishReason, Finished, Output, Stream, TokenLogprob};
use crate::metrics::Metrics;
use crate::tokenizer::{ParsedCall, ReasoningParser, Tokenizer, ToolCallParser};

/// What one engine output added to a choice.
#[derive(Default)]
pub struct Delta {
    pub reasoning: String,
    pub content: String,
    pub calls: Vec<ParsedCall>,
    pub logprobs: Vec<TokenLogprob>,
    pub finished: Option<Finished>,
}

impl Delta {
    pub fn has_text(&self) -> bool {
        !self.reasoning.is_empty() || !self.content.is_empty() || !self.calls.is_empty()
    }
}

#[derive(Default)]
pub struct Choice {
    reasoning_parser: Option<ReasoningParser>,
    tool_parser: Option<ToolCallParser>,
    pub reasoning: String,
    pub content: String,
    pub calls: Vec<ParsedCall>,
    pub token_ids: Vec<u32>,
    pub logprobs: Vec<TokenLogprob>,
    pub finished: Option<Finished>,
    /// Streaming: whether the role went out yet (it goes with the first token).
    pub role_sent: bool,
}

impl Choice {
    pub fn new(reasoning_parser: Option<ReasoningParser>, tool_parser: Option<ToolCallParser>) -> Self {
        Choice { reasoning_parser, tool_parser, ..Choice::default() }
    }

    pub fn push(&mut self, out: Output) -> Delta {
        let mut d = Delta { logprobs: out.logprobs, finished: out.finished, ..Delta::default() };
        self.token_ids.extend(&out.token_ids);
        let done = d.finished.is_some();
        let (mut reasoning, mut content) = match &mut self.reasoning_parser {
            Some(p) => {
                let mut s = p.push(&out.text);
                if done {
                    let rest = p.finish();
                    s.reasoning.push_str(&rest.reasoning);
                    s.content.push_str(&rest.content);
                }
                (s.reasoning, s.content)
            }
            None => (String::new(), out.text),
        };
        if let Some(p) = &mut self.tool_parser {
            let mut t = p.push(&content);
            if done {
                let rest = p.finish();
                t.content.push_str(&rest.content);
                t.calls.extend(rest.calls);
            }
            content = t.content;
            d.calls = t.calls;
        }
        std::mem::swap(&mut d.reasoning, &mut reasoning);
        d.content = content;
        self.reasoning.push_str(&d.reasoning);
        self.content.push_str(&d.content);
        self.calls.extend(d.calls.iter().cloned());
        self.logprobs.extend(d.logprobs.iter().cloned());
        self.finished.clone_from(&d.finished);
        d
    }

    /// OpenAI's finish_reason; `tool_calls` when the choice ended by calling tools.
    pub fn finish_reason(&self) -> Option<&'static str> {
        self.finished.as_ref().map(|f| finish_reason(&f.reason, !self.calls.is_empty()))
    }
}

pub fn finish_reason(reason: &FinishReason, called_tools: bool) -> &'static str {
    match reason {
        FinishReason::Length => "length",
        FinishReason::Abort(_) => "abort",
        _ if called_tools => "tool_calls",
        _ => "stop",
    }
}

/// SGLang's `matched_stop`: the stop token id or stop string that ended the choice.
pub fn matched_stop(f: Option<&Finished>) -> Value {
    match f.map(|f| &f.reason) {
        Some(FinishReason::Eos(id) | FinishReason::StopToken(id)) => json!(id),
        Some(FinishReason::StopString(s)) => json!(s),
        _ => Value::Null,
    }
}

/// OpenAI chat logprobs entries.
pub fn chat_logprobs(tok: &Tokenizer, lps: &[TokenLogprob]) -> Value {
    let entry = |id: u32, lp: f32| {
        let text = tok.token_text(id);
        json!({"token": text, "logprob": lp, "bytes": text.as_bytes()})
    };
    let content: Vec<Value> = lps
        .iter()
        .map(|l| {
            let mut e = entry(l.id, l.logprob);
            e["top_logprobs"] = l.top.iter().map(|&(id, lp)| entry(id, lp)).collect();
            e
        })
        .collect();
    json!({ "content": content })
}

pub fn tool_calls_json(calls: &[ParsedCall], first_index: usize) -> Value {
    calls
        .iter()
        .enumerate()
        .map(|(k, c)| {
            json!({
                "index": first_index + k,
                "id": super::new_id("call"),
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments},
            })
        })
        .collect()
}

pub fn usage(choices: &[Choice]) -> Value {
    let first = choices.iter().find_map(|c| c.finished.as_ref());
    let prompt = first.map_or(0, |f| f.prompt_tokens);
    let cached = first.map_or(0, |f| f.cached_tokens);
    let completion: usize =
        choices.iter().map(|c| c.finished.as_ref().map_or(c.token_ids.len(), |f| f.completion_tokens)).sum();
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

/// The error of a choice the engine aborted.
pub fn abort_error(f: Option<&Finished>) -> Option<ApiError> {
    match f.map(|f| &f.reason) {
        Some(FinishReason::Abort(m)) => Some(ApiError::internal(format!("generation failed: {m}"))),
        _ => None,
    }
}

/// Choices left unfinished when the stream ended: the engine stopped during generation.
pub fn stopped_early(choices: &[Choice]) -> Option<ApiError> {
    choices.iter().any(|c| c.finished.is_none()).then(|| ApiError::unavailable("the engine stopped during generation"))
}

/// A whole (not streamed) answer: every output into its choice, then the engine's failure, if
/// one ended a choice, as the response's error.
pub fn gather(state: &AppState, stream: &Stream, choices: &mut [Choice]) -> Result<(), ApiError> {
    let timing = Timing::start();
    while let Some((i, out)) = stream.recv() {
        if let Some(c) = choices.get_mut(i) {
            c.push(out);
        }
    }
    timing.end(state);
    match choices.iter().find_map(|c| abort_error(c.finished.as_ref())).or_else(|| stopped_early(choices)) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// A streamed answer's error event (the status line went out already); counted as a failure.
pub fn send_error(state: &AppState, es: &mut EventStream, e: &ApiError) -> std::io::Result<()> {
    Metrics::add(&state.metrics.request_failures, 1);
    es.send(&e.body().to_string())
}

/// Latency bookkeeping of one streamed response, fed to the metrics.
pub struct Timing {
    start: Instant,
    last: Option<Instant>,
}

impl Timing {
    pub fn start() -> Self {
        Timing { start: Instant::now(), last: None }
    }

    /// A token went out.
    pub fn token(&mut self, state: &AppState) {
        let now = Instant::now();
        match self.last {
            None => state.metrics.time_to_first_token.observe(now - self.start),
            Some(prev) => state.metrics.inter_token_latency.observe(now - prev),
        }
        self.last = Some(now);
    }

    pub fn end(&self, state: &AppState) {
        state.metrics.e2e_latency.observe(self.start.elapsed());
    }
}
