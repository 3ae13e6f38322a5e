//! Prompt encoding of OpenAI-like chat requests: `ChatFormat::Dsv32` (DeepSeek-V3.2's own
//! encoding) and the Jinja `chat_template` of `tests/fixtures/tokenizers/deepseek-v3` (compiled
//! once per process through `JinjaTemplate::compile`), each with thinking off and on. Errors are
//! fine (a tool call whose arguments are not a JSON object, a tool message with no call to answer,
//! a template's `raise_exception`); panics are not. A prompt that renders must start with the BOS
//! text.
//!
//! Input: JSON text (anything else is skipped), as the server's chat endpoint receives it:
//! `{"messages": [...], "tools": [...], "thinking": bool, "response_format": ...,
//! "add_generation_prompt": bool}` (a bare array is the messages). Each message:
//! `{"role", "content" (string, null or text parts), "reasoning_content" | "reasoning",
//! "tool_calls": [{"id", "function": {"name", "arguments"}} or {"id", "name", "arguments"}],
//! "tool_call_id", "name"}`; arguments are JSON text, or any other value (written out as JSON).
//! A message with an unknown role is skipped, and so is a tool call or tool without a name,
//! where the server rejects the request. Each tool: `{"function": {"name", "description",
//! "parameters"}}` or the function object itself. `thinking` may also come as
//! `chat_template_kwargs.thinking` or `enable_thinking`.

use std::path::Path;
use std::sync::OnceLock;

use flashseek::tokenizer::{ChatFormat, ChatMessage, ChatOptions, JinjaTemplate, Role, Tool, ToolCall};
use serde_json::{Map, Value};

use crate::{read_fixture, show};

const TOKENIZER_CONFIG: &str = "tokenizers/deepseek-v3/tokenizer_config.json";
const DSV32_BOS: &str = "<｜begin▁of▁sentence｜>";

/// The Jinja format and its BOS/EOS texts, from the fixture's `tokenizer_config.json`.
struct Jinja {
    format: ChatFormat,
    bos: String,
    eos: String,
}

fn jinja() -> &'static Jinja {
    static J: OnceLock<Jinja> = OnceLock::new();
    J.get_or_init(|| {
        let config: Value = serde_json::from_slice(&read_fixture(TOKENIZER_CONFIG))
            .unwrap_or_else(|e| panic!("fuzz setup: {TOKENIZER_CONFIG} is not JSON: {e}"));
        let source = config["chat_template"].as_str().expect("fuzz setup: no chat_template in the fixture");
        let template = JinjaTemplate::compile(source, Path::new(TOKENIZER_CONFIG))
            .unwrap_or_else(|e| panic!("fuzz setup: cannot compile the fixture's chat template: {e}"));
        // transformers writes special tokens as text or as a serialized AddedToken.
        let token = |key: &str| match &config[key] {
            Value::String(s) => s.clone(),
            v => v["content"].as_str().unwrap_or_default().to_string(),
        };
        Jinja { format: ChatFormat::Jinja(template), bos: token("bos_token"), eos: token("eos_token") }
    })
}

/// One fuzz input.
pub fn run(data: &[u8]) {
    let Ok(request) = serde_json::from_slice::<Value>(data) else { return };
    let (messages, request) = match &request {
        Value::Array(messages) => (messages.as_slice(), None),
        Value::Object(request) => {
            (request.get("messages").and_then(Value::as_array).map_or(&[][..], |m| m), Some(request))
        }
        _ => return,
    };
    let messages: Vec<ChatMessage> = messages.iter().enumerate().filter_map(|(i, m)| message(i, m)).collect();
    let field = |key: &str| request.and_then(|r| r.get(key));
    let tools = field("tools").and_then(Value::as_array).map_or(&[][..], |t| t).iter().filter_map(tool).collect();
    let kwargs = field("chat_template_kwargs");
    let thinking =
        [field("thinking"), kwargs.and_then(|k| k.get("thinking")), kwargs.and_then(|k| k.get("enable_thinking"))]
            .into_iter()
            .flatten()
            .find_map(Value::as_bool)
            .unwrap_or(false);
    let mut opts = ChatOptions {
        thinking,
        add_generation_prompt: field("add_generation_prompt").and_then(Value::as_bool).unwrap_or(true),
        tools,
        response_format: field("response_format").cloned(),
        bos_token: String::new(),
        eos_token: String::new(),
    };

    let jinja = jinja();
    for thinking in [opts.thinking, !opts.thinking] {
        opts.thinking = thinking;
        if let Ok(prompt) = show("dsv32", ChatFormat::Dsv32.render(&messages, &opts)) {
            assert!(prompt.starts_with(DSV32_BOS), "dsv32 prompt without BOS: {prompt:?}");
        }
        opts.bos_token.clone_from(&jinja.bos);
        opts.eos_token.clone_from(&jinja.eos);
        if let Ok(prompt) = show("jinja", jinja.format.render(&messages, &opts)) {
            assert!(prompt.starts_with(&jinja.bos), "jinja prompt without BOS: {prompt:?}");
        }
        opts.bos_token.clear();
        opts.eos_token.clear();
    }
}

fn role(name: &str) -> Option<Role> {
    Some(match name {
        "system" => Role::System,
        "developer" => Role::Developer,
        "user" => Role::User,
        "assistant" => Role::Assistant,
        "tool" => Role::Tool,
        _ => return None,
    })
}

fn string(m: &Map<String, Value>, key: &str) -> Option<String> {
    m.get(key).and_then(Value::as_str).map(str::to_string)
}

/// A message as the server builds it; `None` where the server rejects it.
fn message(i: usize, m: &Value) -> Option<ChatMessage> {
    let m = m.as_object()?;
    let role = role(m.get("role")?.as_str()?)?;
    let content = match m.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect(),
        Some(other) => other.to_string(),
    };
    let mut msg = ChatMessage::new(role, content);
    msg.reasoning = string(m, "reasoning_content").or_else(|| string(m, "reasoning"));
    msg.tool_calls = m
        .get("tool_calls")
        .and_then(Value::as_array)
        .map_or(&[][..], |c| c)
        .iter()
        .enumerate()
        .filter_map(|(j, c)| tool_call(i, j, c))
        .collect();
    msg.tool_call_id = string(m, "tool_call_id");
    msg.name = string(m, "name");
    Some(msg)
}

fn tool_call(i: usize, j: usize, c: &Value) -> Option<ToolCall> {
    let c = c.as_object()?;
    let function = c.get("function").and_then(Value::as_object).unwrap_or(c);
    Some(ToolCall {
        id: string(c, "id").unwrap_or_else(|| format!("call_{i}_{j}")),
        name: string(function, "name")?,
        arguments: match function.get("arguments") {
            Some(Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None => "{}".into(),
        },
    })
}

fn tool(t: &Value) -> Option<Tool> {
    let t = t.as_object()?;
    let function = t.get("function").and_then(Value::as_object).unwrap_or(t);
    Some(Tool {
        name: string(function, "name")?,
        description: string(function, "description"),
        parameters: function.get("parameters").cloned().unwrap_or(Value::Null),
    })
}
