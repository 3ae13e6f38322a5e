//! Jinja chat templates (`tokenizer_config.json` `chat_template`, or `--chat-template FILE`),
//! rendered the way Hugging Face `transformers` renders them so that prompts match what the model
//! was trained and evaluated on.

use std::path::Path;

use minijinja::value::{Kwargs, Serde, Value, ValueKind};
use minijinja::{syntax::SyntaxConfig, Environment, ErrorKind, Output, State};
use serde_json::{json, Map, Value as Json};

use super::chat::{python_float, python_json, ChatMessage, ChatOptions, Role, Tool, ToolCall};
use crate::error::{Error, Result};

const NAME: &str = "chat_template";

/// A compiled chat template, shared by all requests.
#[derive(Debug)]
pub struct JinjaTemplate {
    /// Boxed: an environment is large, and `ChatFormat` holds it beside a unit variant.
    env: Box<Environment<'static>>,
}

impl JinjaTemplate {
    /// Compiles `source`; `origin` names where it came from in the error for a broken template.
    pub fn compile(source: &str, origin: &Path) -> Result<Self> {
        let bad = |e: minijinja::Error| Error::config(origin, format!("chat template: {e:#}"));
        let mut env = Environment::new();
        // transformers' sandbox: trim_blocks and lstrip_blocks on, trailing newline dropped.
        let syntax = SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build().map_err(bad)?;
        env.set_syntax(syntax);
        // DeepSeek templates call Python string methods (`.split`, `.strip`, `.startswith`).
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(python_formatter);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned(NAME, source.to_string()).map_err(bad)?;
        Ok(JinjaTemplate { env: Box::new(env) })
    }

    /// Renders the conversation with the variables transformers' `apply_chat_template` passes.
    pub fn render(&self, messages: &[ChatMessage], opts: &ChatOptions) -> Result<String> {
        let messages: Vec<Json> = messages.iter().map(message_json).collect();
        let tools = if opts.tools.is_empty() { Json::Null } else { opts.tools.iter().map(tool_json).collect() };
        let context = json!({
            "messages": messages,
            "tools": tools,
            "bos_token": opts.bos_token,
            "eos_token": opts.eos_token,
            "add_generation_prompt": opts.add_generation_prompt,
            // V3.1-style templates read `thinking`; others use `enable_thinking`.
            "thinking": opts.thinking,
            "enable_thinking": opts.thinking,
        });
        let template = self.env.get_template(NAME).map_err(|e| Error::Input(format!("chat template: {e:#}")))?;
        template.render(Value::from(Serde(&context))).map_err(|e| Error::Input(format!("chat template: {e:#}")))
    }
}

/// An OpenAI-shaped message dict. An assistant turn that only calls tools gets `content: null`,
/// as OpenAI clients send it and as templates test for (`message['content'] is none`).
fn message_json(msg: &ChatMessage) -> Json {
    let mut out = Map::new();
    out.insert("role".into(), Json::from(msg.role.as_str()));
    let content = if msg.role == Role::Assistant && msg.content.is_empty() && !msg.tool_calls.is_empty() {
        Json::Null
    } else {
        Json::from(msg.content.as_str())
    };
    out.insert("content".into(), content);
    if let Some(reasoning) = &msg.reasoning {
        out.insert("reasoning_content".into(), Json::from(reasoning.as_str()));
    }
    if !msg.tool_calls.is_empty() {
        out.insert("tool_calls".into(), msg.tool_calls.iter().map(tool_call_json).collect());
    }
    if let Some(id) = &msg.tool_call_id {
        out.insert("tool_call_id".into(), Json::from(id.as_str()));
    }
    if let Some(name) = &msg.name {
        out.insert("name".into(), Json::from(name.as_str()));
    }
    Json::Object(out)
}

fn tool_call_json(call: &ToolCall) -> Json {
    json!({
        "id": call.id,
        "type": "function",
        "function": { "name": call.name, "arguments": call.arguments },
    })
}

fn tool_json(tool: &Tool) -> Json {
    let mut function = Map::new();
    function.insert("name".into(), Json::from(tool.name.as_str()));
    if let Some(description) = &tool.description {
        function.insert("description".into(), Json::from(description.as_str()));
    }
    if !tool.parameters.is_null() {
        function.insert("parameters".into(), tool.parameters.clone());
    }
    json!({ "type": "function", "function": function })
}

/// transformers' `tojson`: Python's `json.dumps(ensure_ascii=False)`, with no HTML escaping
/// (minijinja's built-in escapes `<` and `>`, which would change the prompt).
fn tojson(value: &Value, indent: Option<usize>, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent = match indent {
        Some(indent) => Some(indent),
        None => kwargs.get::<Option<usize>>("indent")?,
    };
    kwargs.assert_all_used()?;
    let text =
        python_json(value, indent).map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    Ok(Value::from_safe_string(text))
}

/// Prints values as Jinja does under Python: `True`, `None`, `1e-07` (minijinja: `true`, `none`).
fn python_formatter(out: &mut Output, state: &mut State, value: &Value) -> std::result::Result<(), minijinja::Error> {
    let text = match value.kind() {
        ValueKind::Bool if value.is_true() => "True".to_string(),
        ValueKind::Bool => "False".to_string(),
        ValueKind::None => "None".to_string(),
        ValueKind::Number if !value.is_integer() => python_float(f64::try_from(value.clone())?),
        _ => return minijinja::escape_formatter(out, state, value),
    };
    Ok(out.write_str(&text)?)
}

/// Templates reject conversations they cannot render by calling this.
fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}
