//! `POST /v1/chat/completions`.

use serde_json::{json, Value};
use tiny_http::Request;

use super::error::ApiError;
use super::http::{self, EventStream};
use super::output::{self, Choice, Timing};
use super::protocol::{self, ChatRequest, Content, MessageIn};
use super::{check_model, fail, new_id, now_secs, AppState, Reply};
use crate::engine::{Request as EngineRequest, SamplingParams, Stream};
use crate::tokenizer::{ChatMessage, ChatOptions, ReasoningParser, Role, Tool, ToolCall, ToolCallParser};

/// Most choices one request may ask for.
const MAX_N: usize = 64;

pub fn handle<'a>(state: &'a AppState, body: &[u8]) -> Result<Reply<'a>, ApiError> {
    let prepared = prepare(state, body)?;
    let stream = state.engine.submit(prepared.requests)?;
    let choices: Vec<Choice> = (0..prepared.n)
        .map(|_| {
            Choice::new(
                prepared.reasoning.map(|f| ReasoningParser::new(f, prepared.thinking)),
                prepared.tools.then(ToolCallParser::new),
            )
        })
        .collect();
    let (include_usage, logprobs) = (prepared.include_usage, prepared.logprobs);
    Ok(if prepared.stream {
        Box::new(move |req| stream_response(state, req, stream, choices, include_usage, logprobs))
    } else {
        Box::new(move |req| respond_whole(state, req, &stream, choices, logprobs))
    })
}

struct Prepared {
    requests: Vec<EngineRequest>,
    n: usize,
    stream: bool,
    include_usage: bool,
    logprobs: bool,
    thinking: bool,
    reasoning: Option<crate::tokenizer::ReasoningFormat>,
    tools: bool,
}

fn prepare(state: &AppState, body: &[u8]) -> Result<Prepared, ApiError> {
    let r: ChatRequest = protocol::parse(body)?;
    check_model(state, r.model.as_deref())?;
    if r.messages.is_empty() {
        return Err(ApiError::bad_request("`messages` must not be empty").with_param("messages"));
    }
    let messages = r.messages.into_iter().enumerate().map(|(i, m)| message(i, m)).collect::<Result<Vec<_>, _>>()?;
    let tools_off = matches!(&r.tool_choice, Some(Value::String(s)) if s == "none");
    if let Some(bad) = r.tools.iter().flatten().filter_map(|t| t.kind.as_deref()).find(|k| *k != "function") {
        return Err(ApiError::bad_request(format!("tool type `{bad}` is not supported; only `function` is"))
            .with_param("tools"));
    }
    let tools: Vec<Tool> = if tools_off {
        Vec::new()
    } else {
        r.tools
            .unwrap_or_default()
            .into_iter()
            .map(|t| Tool {
                name: t.function.name,
                description: t.function.description,
                parameters: t.function.parameters.unwrap_or(Value::Null),
            })
            .collect()
    };
    let thinking = match protocol::thinking_flag(r.chat_template_kwargs.as_ref())? {
        Some(asked) => asked,
        None => state.defaults.thinking()?.unwrap_or(false),
    };
    let opts = ChatOptions {
        thinking,
        add_generation_prompt: true,
        tools,
        response_format: r.response_format,
        bos_token: state.tokenizer.bos_token().unwrap_or_default().to_string(),
        eos_token: state.tokenizer.eos_token().unwrap_or_default().to_string(),
    };
    let text = state.chat.render(&messages, &opts)?;
    let prompt = state.tokenizer.encode(&text)?;
    let n = r.n.unwrap_or(1);
    if n == 0 || n > MAX_N {
        return Err(ApiError::bad_request(format!("`n` must be in 1..={MAX_N}")).with_param("n"));
    }
    let mut params = SamplingParams::default();
    r.sampling.apply(&mut params, &state.defaults);
    params.max_new_tokens = max_new_tokens(state, r.max_completion_tokens.or(r.max_tokens), prompt.len())?;
    if r.logprobs {
        params.logprobs = Some(r.top_logprobs.unwrap_or(0));
    }
    let requests = seeded_copies(&prompt, &params, n);
    Ok(Prepared {
        requests,
        n,
        stream: r.stream,
        include_usage: r.stream_options.is_some_and(|o| o.include_usage),
        logprobs: r.logprobs,
        thinking,
        reasoning: if r.separate_reasoning == Some(false) { None } else { state.reasoning },
        tools: state.tool_calls && !opts.tools.is_empty(),
    })
}

/// `n` copies of a request; with a seed, choice `i` uses `seed + i` so choices differ but
/// each is reproducible.
pub fn seeded_copies(prompt: &[u32], params: &SamplingParams, n: usize) -> Vec<EngineRequest> {
    (0..n)
        .map(|i| {
            let mut p = params.clone();
            p.seed = params.seed.map(|s| s.wrapping_add(i as u64));
            EngineRequest { prompt: prompt.to_vec(), params: p }
        })
        .collect()
}

/// The requested output limit, or all the context the prompt leaves.
pub fn max_new_tokens(state: &AppState, asked: Option<usize>, prompt_len: usize) -> Result<usize, ApiError> {
    let context = state.engine.info().context_length;
    if prompt_len >= context {
        return Err(ApiError::bad_request(format!(
            "this model's maximum context length is {context} tokens; the prompt has {prompt_len}"
        )));
    }
    Ok(asked.unwrap_or(context - prompt_len))
}

fn message(i: usize, m: MessageIn) -> Result<ChatMessage, ApiError> {
    let param = |f: &str| format!("messages[{i}].{f}");
    let role = match m.role.as_str() {
        "system" => Role::System,
        "developer" => Role::Developer,
        "user" => Role::User,
        "assistant" => Role::Assistant,
        "tool" => Role::Tool,
        other => {
            return Err(ApiError::bad_request(format!(
                "unknown role `{other}`; expected system, developer, user, assistant or tool"
            ))
            .with_param(&param("role")))
        }
    };
    let content = match m.content {
        None => String::new(),
        Some(Content::Text(t)) => t,
        Some(Content::Parts(parts)) => {
            let mut text = String::new();
            for (j, p) in parts.into_iter().enumerate() {
                match (p.kind.as_str(), p.text) {
                    ("text", Some(t)) => text.push_str(&t),
                    (kind, _) => {
                        return Err(ApiError::bad_request(format!(
                            "content part of type `{kind}` is not supported; only text parts are"
                        ))
                        .with_param(&param(&format!("content[{j}]"))))
                    }
                }
            }
            text
        }
    };
    let tool_calls = m
        .tool_calls
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(j, c)| ToolCall {
            id: c.id.unwrap_or_else(|| format!("call_{i}_{j}")),
            name: c.function.name,
            arguments: match c.function.arguments {
                Some(Value::String(s)) => s,
                Some(v) => v.to_string(),
                None => "{}".into(),
            },
        })
        .collect();
    let mut msg = ChatMessage::new(role, content);
    msg.reasoning = m.reasoning_content.or(m.reasoning);
    msg.tool_calls = tool_calls;
    msg.tool_call_id = m.tool_call_id;
    msg.name = m.name;
    Ok(msg)
}

fn respond_whole(state: &AppState, req: Request, stream: &Stream, mut choices: Vec<Choice>, logprobs: bool) {
    if let Err(e) = output::gather(state, stream, &mut choices) {
        return fail(state, req, &e);
    }
    let body = json!({
        "id": new_id("chatcmpl"),
        "object": "chat.completion",
        "created": now_secs(),
        "model": state.model_name,
        "choices": choices.iter().enumerate().map(|(i, c)| {
            let mut message = json!({"role": "assistant", "content": c.content});
            if !c.reasoning.is_empty() {
                message["reasoning_content"] = json!(c.reasoning);
            }
            if !c.calls.is_empty() {
                message["tool_calls"] = output::tool_calls_json(&c.calls, 0);
                if c.content.is_empty() {
                    message["content"] = Value::Null;
                }
            }
            json!({
                "index": i,
                "message": message,
                "logprobs": if logprobs { output::chat_logprobs(&state.tokenizer, &c.logprobs) } else { Value::Null },
                "finish_reason": c.finish_reason(),
                "matched_stop": output::matched_stop(c.finished.as_ref()),
            })
        }).collect::<Vec<_>>(),
        "usage": output::usage(&choices),
    });
    http::respond_json(req, 200, &body);
}

fn stream_response(
    state: &AppState,
    req: Request,
    stream: Stream,
    mut choices: Vec<Choice>,
    include_usage: bool,
    logprobs: bool,
) {
    let Ok(mut es) = EventStream::open(req) else { return };
    let (id, created) = (new_id("chatcmpl"), now_secs());
    let chunk = |choice: Value| {
        json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": state.model_name,
               "choices": [choice]})
        .to_string()
    };
    let mut timing = Timing::start();
    let mut call_index = vec![0usize; choices.len()];
    while let Some((i, out)) = stream.recv() {
        let Some(c) = choices.get_mut(i) else { continue };
        let d = c.push(out);
        if d.has_text() || (logprobs && !d.logprobs.is_empty()) {
            let mut delta = json!({});
            if !c.role_sent {
                delta["role"] = json!("assistant");
                c.role_sent = true;
            }
            if !d.reasoning.is_empty() {
                delta["reasoning_content"] = json!(d.reasoning);
            }
            if !d.content.is_empty() {
                delta["content"] = json!(d.content);
            }
            if !d.calls.is_empty() {
                delta["tool_calls"] = output::tool_calls_json(&d.calls, call_index[i]);
                call_index[i] += d.calls.len();
            }
            let lp = if logprobs { output::chat_logprobs(&state.tokenizer, &d.logprobs) } else { Value::Null };
            if es.send(&chunk(json!({"index": i, "delta": delta, "logprobs": lp, "finish_reason": null}))).is_err() {
                return;
            }
            timing.token(state);
        }
        if let Some(f) = &d.finished {
            let sent = if let Some(e) = output::abort_error(Some(f)) {
                output::send_error(state, &mut es, &e)
            } else {
                es.send(&chunk(json!({"index": i, "delta": {}, "logprobs": null,
                    "finish_reason": c.finish_reason(), "matched_stop": output::matched_stop(Some(f))})))
            };
            if sent.is_err() {
                return;
            }
        }
    }
    timing.end(state);
    if let Some(e) = output::stopped_early(&choices) {
        let _ = output::send_error(state, &mut es, &e);
    }
    if include_usage {
        let last = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": state.model_name,
                          "choices": [], "usage": output::usage(&choices)});
        if es.send(&last.to_string()).is_err() {
            return;
        }
    }
    let _ = es.done();
}
