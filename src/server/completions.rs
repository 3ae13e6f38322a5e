//! `POST /v1/completions`: raw prompts (text or token ids, one or a batch), no chat template.

use serde_json::{json, Value};
use tiny_http::Request;

use super::chat::{max_new_tokens, seeded_copies};
use super::error::ApiError;
use super::http::{self, EventStream};
use super::output::{self, Choice, Timing};
use super::protocol::{self, CompletionRequest, PromptIn};
use super::{check_model, fail, new_id, now_secs, AppState, Reply};
use crate::engine::{SamplingParams, Stream, TokenLogprob};
use crate::tokenizer::Tokenizer;

/// OpenAI's default output limit for completions.
const DEFAULT_MAX_TOKENS: usize = 16;
const MAX_CHOICES: usize = 256;

pub fn handle<'a>(state: &'a AppState, body: &[u8]) -> Result<Reply<'a>, ApiError> {
    let p = prepare(state, body)?;
    let stream = state.engine.submit(p.requests)?;
    let choices: Vec<Choice> = (0..p.echo.len()).map(|_| Choice::new(None, None)).collect();
    let (echo, include_usage, logprobs) = (p.echo, p.include_usage, p.logprobs);
    Ok(if p.stream {
        Box::new(move |req| stream_response(state, req, stream, choices, &echo, include_usage, logprobs))
    } else {
        Box::new(move |req| respond_whole(state, req, &stream, choices, &echo, logprobs))
    })
}

struct Prepared {
    requests: Vec<crate::engine::Request>,
    /// Per choice: the prompt text to put before the output (empty without `echo`).
    echo: Vec<String>,
    stream: bool,
    include_usage: bool,
    logprobs: bool,
}

fn prepare(state: &AppState, body: &[u8]) -> Result<Prepared, ApiError> {
    let r: CompletionRequest = protocol::parse(body)?;
    check_model(state, r.model.as_deref())?;
    if r.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::bad_request("`suffix` is not supported").with_param("suffix"));
    }
    let tok = &state.tokenizer;
    let prompts: Vec<(Vec<u32>, String)> = match r.prompt {
        PromptIn::Text(t) => vec![(tok.encode(&t)?, t)],
        PromptIn::Texts(ts) => ts.into_iter().map(|t| Ok((tok.encode(&t)?, t))).collect::<crate::Result<_>>()?,
        PromptIn::Ids(ids) => vec![with_text(tok, ids)?],
        PromptIn::Batch(b) => b.into_iter().map(|ids| with_text(tok, ids)).collect::<crate::Result<_>>()?,
    };
    if prompts.is_empty() {
        return Err(ApiError::bad_request("`prompt` must not be empty").with_param("prompt"));
    }
    let n = r.n.unwrap_or(1);
    if n == 0 || n * prompts.len() > MAX_CHOICES {
        return Err(
            ApiError::bad_request(format!("`n` times the prompts must be in 1..={MAX_CHOICES}")).with_param("n")
        );
    }
    let mut params = SamplingParams::default();
    r.sampling.apply(&mut params, &state.defaults);
    params.logprobs = r.logprobs;
    let mut requests = Vec::new();
    let mut echo = Vec::new();
    for (ids, text) in prompts {
        params.max_new_tokens = max_new_tokens(state, Some(r.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS)), ids.len())?;
        requests.extend(seeded_copies(&ids, &params, n));
        echo.extend(std::iter::repeat_n(if r.echo { text } else { String::new() }, n));
    }
    Ok(Prepared {
        requests,
        echo,
        stream: r.stream,
        include_usage: r.stream_options.is_some_and(|o| o.include_usage),
        logprobs: r.logprobs.is_some(),
    })
}

fn with_text(tok: &Tokenizer, ids: Vec<u32>) -> crate::Result<(Vec<u32>, String)> {
    let text = tok.decode(&ids, false)?;
    Ok((ids, text))
}

/// OpenAI's legacy logprobs object for a run of tokens whose text starts at `offset`.
fn logprobs_json(tok: &Tokenizer, lps: &[TokenLogprob], mut offset: usize) -> Value {
    let mut tokens = Vec::new();
    let mut token_logprobs = Vec::new();
    let mut top = Vec::new();
    let mut offsets = Vec::new();
    for l in lps {
        let text = tok.token_text(l.id);
        offsets.push(offset);
        offset += text.len();
        tokens.push(text);
        token_logprobs.push(l.logprob);
        top.push(l.top.iter().map(|&(id, lp)| (tok.token_text(id), json!(lp))).collect::<serde_json::Map<_, _>>());
    }
    json!({"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets})
}

fn respond_whole(
    state: &AppState,
    req: Request,
    stream: &Stream,
    mut choices: Vec<Choice>,
    echo: &[String],
    logprobs: bool,
) {
    if let Err(e) = output::gather(state, stream, &mut choices) {
        return fail(state, req, &e);
    }
    let body = json!({
        "id": new_id("cmpl"),
        "object": "text_completion",
        "created": now_secs(),
        "model": state.model_name,
        "choices": choices.iter().zip(echo).enumerate().map(|(i, (c, e))| json!({
            "index": i,
            "text": format!("{e}{}", c.content),
            "logprobs": if logprobs { logprobs_json(&state.tokenizer, &c.logprobs, e.len()) } else { Value::Null },
            "finish_reason": c.finish_reason(),
            "matched_stop": output::matched_stop(c.finished.as_ref()),
        })).collect::<Vec<_>>(),
        "usage": output::usage(&choices),
    });
    http::respond_json(req, 200, &body);
}

fn stream_response(
    state: &AppState,
    req: Request,
    stream: Stream,
    mut choices: Vec<Choice>,
    echo: &[String],
    include_usage: bool,
    logprobs: bool,
) {
    let Ok(mut es) = EventStream::open(req) else { return };
    let (id, created) = (new_id("cmpl"), now_secs());
    let chunk = |choices: Value| json!({"id": id, "object": "text_completion", "created": created, "model": state.model_name, "choices": choices});
    for (i, e) in echo.iter().enumerate().filter(|(_, e)| !e.is_empty()) {
        let c = chunk(json!([{"index": i, "text": e, "logprobs": null, "finish_reason": null}]));
        if es.send(&c.to_string()).is_err() {
            return;
        }
    }
    let mut timing = Timing::start();
    let mut offsets: Vec<usize> = echo.iter().map(String::len).collect();
    while let Some((i, out)) = stream.recv() {
        let Some(c) = choices.get_mut(i) else { continue };
        let d = c.push(out);
        if let Some(e) = output::abort_error(d.finished.as_ref()) {
            if output::send_error(state, &mut es, &e).is_err() {
                return;
            }
            continue;
        }
        if d.content.is_empty() && d.finished.is_none() && (!logprobs || d.logprobs.is_empty()) {
            continue;
        }
        let lp = if logprobs { logprobs_json(&state.tokenizer, &d.logprobs, offsets[i]) } else { Value::Null };
        offsets[i] += d.content.len();
        let body = chunk(json!([{"index": i, "text": d.content, "logprobs": lp, "finish_reason": c.finish_reason(),
                                 "matched_stop": output::matched_stop(d.finished.as_ref())}]));
        if es.send(&body.to_string()).is_err() {
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
    if include_usage {
        let mut last = chunk(json!([]));
        last["usage"] = output::usage(&choices);
        if es.send(&last.to_string()).is_err() {
            return;
        }
    }
    let _ = es.done();
}
