//! SGLang's native API: `POST /generate`, `GET /get_model_info`, `GET /get_server_info`, and
//! tokenize/detokenize.

use std::time::Instant;

use serde_json::{json, Value};
use tiny_http::Request;

use super::chat::seeded_copies;
use super::error::ApiError;
use super::http::{self, EventStream};
use super::output::{self, Choice, Timing};
use super::protocol::{self, DetokenizeRequest, GenerateRequest, IdsIn, TextIn, TokenizeIn, TokenizeRequest};
use super::{fail, new_id, AppState, Reply};
use crate::engine::{FinishReason, Finished, SamplingParams, Stream, TokenLogprob};

/// SGLang's default output limit for `/generate`.
const DEFAULT_MAX_NEW_TOKENS: usize = 128;
const MAX_CHOICES: usize = 256;

pub fn model_info(state: &AppState) -> Value {
    json!({
        "model_path": state.model_path.display().to_string(),
        "tokenizer_path": state.model_path.display().to_string(),
        "served_model_name": state.model_name,
        "is_generation": true,
        "model_type": state.model_type,
        "vocab_size": state.engine.info().vocab_size,
        "context_length": state.engine.info().context_length,
        "preferred_sampling_params": null,
        "weight_version": "default",
        "has_image_understanding": false,
        "has_audio_understanding": false,
    })
}

pub fn server_info(state: &AppState) -> Value {
    let info = state.engine.info();
    json!({
        "model_path": state.model_path.display().to_string(),
        "served_model_name": state.model_name,
        "context_length": info.context_length,
        "max_running_requests": info.max_running,
        "max_total_num_tokens": info.num_blocks * crate::kv_cache::BLOCK_SIZE,
        "page_size": crate::kv_cache::BLOCK_SIZE,
        "kv_cache_dtype": info.kv_cache_dtype.as_str(),
        "version": env!("CARGO_PKG_VERSION"),
    })
}

pub fn tokenize(state: &AppState, body: &[u8]) -> Result<Value, ApiError> {
    let r: TokenizeRequest = protocol::parse(body)?;
    let max = state.engine.info().context_length;
    Ok(match r.prompt {
        TokenizeIn::One(t) => {
            let ids = state.tokenizer.encode(&t)?;
            json!({"tokens": ids, "count": ids.len(), "max_model_len": max})
        }
        TokenizeIn::Many(ts) => {
            let all = ts.iter().map(|t| state.tokenizer.encode(t)).collect::<crate::Result<Vec<_>>>()?;
            let counts: Vec<usize> = all.iter().map(Vec::len).collect();
            json!({"tokens": all, "count": counts, "max_model_len": max})
        }
    })
}

pub fn detokenize(state: &AppState, body: &[u8]) -> Result<Value, ApiError> {
    let r: DetokenizeRequest = protocol::parse(body)?;
    Ok(json!({"text": state.tokenizer.decode(&r.tokens, false)?}))
}

pub fn generate<'a>(state: &'a AppState, body: &[u8]) -> Result<Reply<'a>, ApiError> {
    let p = prepare(state, body)?;
    let stream = state.engine.submit(p.requests)?;
    let choices: Vec<Choice> = (0..p.count).map(|_| Choice::new(None, None)).collect();
    let ids = (0..p.count).map(|_| new_id("gen")).collect();
    let answer =
        Answer { logprobs: p.logprobs, batch: p.batch, start: Instant::now(), ids, prompt_lens: p.prompt_lens };
    Ok(if p.stream {
        Box::new(move |req| answer.stream(state, req, stream, choices))
    } else {
        Box::new(move |req| answer.whole(state, req, &stream, choices))
    })
}

struct Prepared {
    requests: Vec<crate::engine::Request>,
    count: usize,
    prompt_lens: Vec<usize>,
    /// Whether the caller sent a list (then it gets a list back).
    batch: bool,
    stream: bool,
    logprobs: bool,
}

fn prepare(state: &AppState, body: &[u8]) -> Result<Prepared, ApiError> {
    let r: GenerateRequest = protocol::parse(body)?;
    let tok = &state.tokenizer;
    let (prompts, batch): (Vec<Vec<u32>>, bool) = match (r.text, r.input_ids) {
        (Some(_), Some(_)) => return Err(ApiError::bad_request("give either `text` or `input_ids`, not both")),
        (None, None) => return Err(ApiError::bad_request("one of `text` or `input_ids` is required")),
        (Some(TextIn::One(t)), None) => (vec![tok.encode(&t)?], false),
        (Some(TextIn::Many(ts)), None) => (ts.iter().map(|t| tok.encode(t)).collect::<crate::Result<_>>()?, true),
        (None, Some(IdsIn::One(ids))) => (vec![ids], false),
        (None, Some(IdsIn::Many(b))) => (b, true),
    };
    if prompts.is_empty() {
        return Err(ApiError::bad_request("the batch is empty"));
    }
    let sp = r.sampling_params.unwrap_or_default();
    let n = sp.n.unwrap_or(1);
    if n == 0 || n * prompts.len() > MAX_CHOICES {
        return Err(ApiError::bad_request(format!("`n` times the prompts must be in 1..={MAX_CHOICES}")));
    }
    let mut params = SamplingParams::default();
    let seed = sp.sampling_seed;
    let max_new = sp.max_new_tokens.unwrap_or(DEFAULT_MAX_NEW_TOKENS);
    sp.sampling.apply(&mut params, &state.defaults);
    params.seed = params.seed.or(seed);
    params.max_new_tokens = max_new;
    if r.return_logprob {
        params.logprobs = Some(r.top_logprobs_num.unwrap_or(0));
    }
    let requests: Vec<_> = prompts.iter().flat_map(|ids| seeded_copies(ids, &params, n)).collect();
    Ok(Prepared {
        count: requests.len(),
        prompt_lens: requests.iter().map(|r| r.prompt.len()).collect(),
        requests,
        batch: batch || n > 1,
        stream: r.stream,
        logprobs: r.return_logprob,
    })
}

struct Answer {
    logprobs: bool,
    batch: bool,
    start: Instant,
    /// Per choice: its response id and prompt length, reported in every event.
    ids: Vec<String>,
    prompt_lens: Vec<usize>,
}

impl Answer {
    fn item(&self, state: &AppState, i: usize, c: &Choice) -> Value {
        let mut meta = json!({
            "id": self.ids.get(i),
            "finish_reason": c.finished.as_ref().map(finish_json),
            "prompt_tokens": self.prompt_lens.get(i),
            "completion_tokens": c.token_ids.len(),
            "cached_tokens": c.finished.as_ref().map_or(0, |f| f.cached_tokens),
            "e2e_latency": self.start.elapsed().as_secs_f64(),
        });
        if self.logprobs {
            let tok = &state.tokenizer;
            let entry = |id: u32, lp: f32| json!([lp, id, tok.token_text(id)]);
            meta["output_token_logprobs"] = c.logprobs.iter().map(|l| entry(l.id, l.logprob)).collect();
            meta["output_top_logprobs"] = c
                .logprobs
                .iter()
                .map(|l: &TokenLogprob| l.top.iter().map(|&(id, lp)| entry(id, lp)).collect::<Value>())
                .collect();
        }
        json!({"index": i, "text": c.content, "output_ids": c.token_ids, "meta_info": meta})
    }

    fn whole(&self, state: &AppState, req: Request, stream: &Stream, mut choices: Vec<Choice>) {
        if let Err(e) = output::gather(state, stream, &mut choices) {
            return fail(state, req, &e);
        }
        let items: Vec<Value> = choices.iter().enumerate().map(|(i, c)| self.item(state, i, c)).collect();
        let body = if self.batch { Value::Array(items) } else { items.into_iter().next().unwrap_or(Value::Null) };
        http::respond_json(req, 200, &body);
    }

    /// SGLang streams each choice's whole text so far in every event.
    fn stream(&self, state: &AppState, req: Request, stream: Stream, mut choices: Vec<Choice>) {
        let Ok(mut es) = EventStream::open(req) else { return };
        let mut timing = Timing::start();
        while let Some((i, out)) = stream.recv() {
            let Some(c) = choices.get_mut(i) else { continue };
            let d = c.push(out);
            if let Some(e) = output::abort_error(d.finished.as_ref()) {
                if output::send_error(state, &mut es, &e).is_err() {
                    return;
                }
                continue;
            }
            if es.send(&self.item(state, i, c).to_string()).is_err() {
                return;
            }
            if !d.content.is_empty() {
                timing.token(state);
            }
        }
        timing.end(state);
        if let Some(e) = output::stopped_early(&choices) {
            let _ = output::send_error(state, &mut es, &e);
        }
        let _ = es.done();
    }
}

fn finish_json(f: &Finished) -> Value {
    match &f.reason {
        FinishReason::Length => json!({"type": "length", "length": f.completion_tokens}),
        FinishReason::Eos(id) | FinishReason::StopToken(id) => json!({"type": "stop", "matched": id}),
        FinishReason::StopString(s) => json!({"type": "stop", "matched": s}),
        FinishReason::Abort(m) => json!({"type": "abort", "message": m}),
    }
}
