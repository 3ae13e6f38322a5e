//! DeepSeek-V3.2's prompt encoding. The model ships it as Python (`encoding/encoding_dsv32.py`)
//! instead of a Jinja template; this writes the same text, byte for byte, for the conversations
//! that encoder accepts.
//!
//! The way OpenAI requests reach it follows SGLang's server: tools and `response_format` belong to
//! the leading system message (an empty one stands in when the conversation has none), and
//! `thinking` picks between thinking mode and chat mode.

use serde_json::{Map, Value};

use super::chat::{python_json, ChatMessage, ChatOptions, Role, Tool, ToolCall};
use crate::error::{Error, Result};

const BOS: &str = "<｜begin▁of▁sentence｜>";
const EOS: &str = "<｜end▁of▁sentence｜>";
const USER: &str = "<｜User｜>";
const ASSISTANT: &str = "<｜Assistant｜>";
const THINK_START: &str = "<think>";
const THINK_END: &str = "</think>";
const DSML: &str = "｜DSML｜";

/// The system-prompt section that teaches the DSML call syntax; the schemas follow it.
const TOOLS_PREAMBLE: &str = r#"## Tools

You have access to a set of tools you can use to answer the user's question.
You can invoke functions by writing a "<｜DSML｜function_calls>" block like the following as part of your reply to the user:
<｜DSML｜function_calls>
<｜DSML｜invoke name="$FUNCTION_NAME">
<｜DSML｜parameter name="$PARAMETER_NAME" string="true|false">$PARAMETER_VALUE</｜DSML｜parameter>
...
</｜DSML｜invoke>
<｜DSML｜invoke name="$FUNCTION_NAME2">
...
</｜DSML｜invoke>
</｜DSML｜function_calls>

String and scalar parameters should be specified as is without any escaping or quotes, while lists and objects should use JSON format. The "string" attribute should be set to "true" for string type parameters and "false" for other types (numbers, booleans, arrays, objects).

If the thinking_mode is enabled, then after function results you should strongly consider outputting a thinking block. Here is an example:

<｜DSML｜function_calls>
...
</｜DSML｜function_calls>

<function_results>
...
</function_results>

<think>...thinking about results</think>

Here are the functions available in JSONSchema format:
<functions>
"#;

const RESPONSE_FORMAT_PREAMBLE: &str =
    "## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n";

/// The prompt for `messages`: BOS, then each turn.
///
/// Reasoning is written only for assistant turns after the last user (or developer) turn, and only
/// in thinking mode: earlier chains of thought are dropped, as the model was trained.
///
/// Unlike the Python reference, which fails on them in thinking mode, developer turns before the
/// last user turn are kept.
pub(crate) fn render(messages: &[ChatMessage], opts: &ChatOptions) -> Result<String> {
    let conversation = Conversation {
        messages,
        thinking: opts.thinking,
        last_user: messages.iter().rposition(|m| matches!(m.role, Role::User | Role::Developer)),
    };
    let mut prompt = String::from(BOS);
    if messages.first().map(|m| m.role) != Some(Role::System) {
        prompt.push_str(&system_prompt("", opts)?);
    }
    for index in 0..messages.len() {
        prompt.push_str(&conversation.turn(index, opts)?);
    }
    Ok(prompt)
}

struct Conversation<'a> {
    messages: &'a [ChatMessage],
    thinking: bool,
    /// The last user or developer turn; `None` puts every turn after it.
    last_user: Option<usize>,
}

impl Conversation<'_> {
    fn turn(&self, index: usize, opts: &ChatOptions) -> Result<String> {
        let Some(msg) = self.messages.get(index) else {
            return Ok(String::new());
        };
        match msg.role {
            Role::System if index == 0 => system_prompt(&msg.content, opts),
            Role::System => Ok(msg.content.clone()),
            Role::User => Ok(format!("{USER}{}{ASSISTANT}{}", msg.content, self.user_suffix(index))),
            Role::Developer => self.developer(index, msg),
            Role::Assistant => self.assistant(index, msg),
            Role::Tool => self.tool_result(index, msg),
        }
    }

    /// Opens the model's reply: with a thought after the last user turn in thinking mode,
    /// without one everywhere else.
    fn user_suffix(&self, index: usize) -> &'static str {
        if self.thinking && self.last_user == Some(index) {
            THINK_START
        } else {
            THINK_END
        }
    }

    fn is_after_last_user(&self, index: usize) -> bool {
        self.last_user.is_none_or(|last| index > last)
    }

    fn developer(&self, index: usize, msg: &ChatMessage) -> Result<String> {
        if msg.content.is_empty() {
            return Err(Error::Input(format!("message {index}: a developer message needs content")));
        }
        Ok(format!("{USER}\n\n# The user's message is: {}{ASSISTANT}{}", msg.content, self.user_suffix(index)))
    }

    fn assistant(&self, index: usize, msg: &ChatMessage) -> Result<String> {
        let calls = if msg.tool_calls.is_empty() {
            String::new()
        } else {
            let invokes = msg.tool_calls.iter().map(|call| invoke(index, call)).collect::<Result<Vec<_>>>()?;
            format!("\n\n<{DSML}function_calls>\n{}\n</{DSML}function_calls>", invokes.join("\n"))
        };
        let reasoning = msg.reasoning.as_deref().unwrap_or("");
        let thought = if self.thinking && self.is_after_last_user(index) {
            if reasoning.is_empty() && msg.tool_calls.is_empty() {
                return Err(Error::Input(format!(
                    "message {index}: in thinking mode an assistant message after the last user message needs \
                     reasoning_content or tool_calls"
                )));
            }
            format!("{reasoning}{THINK_END}")
        } else {
            String::new()
        };
        Ok(format!("{thought}{}{calls}{EOS}", msg.content))
    }

    /// Results are matched to calls by position: the n-th tool message after an assistant turn
    /// answers its n-th call, and the last one closes the block and reopens the reply.
    fn tool_result(&self, index: usize, msg: &ChatMessage) -> Result<String> {
        let caller = self.messages.iter().take(index).rposition(|m| m.role != Role::Tool);
        let calls = caller.and_then(|i| self.messages.get(i)).filter(|m| m.role == Role::Assistant);
        let (Some(caller), Some(calls)) = (caller, calls.map(|m| m.tool_calls.len())) else {
            return Err(Error::Input(format!("message {index}: a tool message must follow an assistant message")));
        };
        let order = index - caller;
        if order > calls {
            return Err(Error::Input(format!(
                "message {index}: tool result {order} answers an assistant message with {calls} tool call(s)"
            )));
        }
        let mut out = String::new();
        if order == 1 {
            out.push_str("\n\n<function_results>");
        }
        out.push_str(&format!("\n<result>{}</result>", msg.content));
        if order == calls {
            let reopen =
                if self.thinking && self.last_user.is_none_or(|last| index >= last) { THINK_START } else { THINK_END };
            out.push_str(&format!("\n</function_results>\n\n{reopen}"));
        }
        Ok(out)
    }
}

/// The leading system message: its text, then the tools, then the response format.
fn system_prompt(content: &str, opts: &ChatOptions) -> Result<String> {
    let mut out = content.to_string();
    if !opts.tools.is_empty() {
        let schemas = opts.tools.iter().map(tool_schema).collect::<Result<Vec<_>>>()?;
        out.push_str(&format!("\n\n{TOOLS_PREAMBLE}{}\n</functions>\n", schemas.join("\n")));
    }
    if let Some(format) = opts.response_format.as_ref().filter(|f| !is_plain_text(f)) {
        out.push_str(&format!("\n\n{RESPONSE_FORMAT_PREAMBLE}{}", python_json(format, None)?));
    }
    Ok(out)
}

/// `{"type": "text"}` is OpenAI's default and constrains nothing.
fn is_plain_text(format: &Value) -> bool {
    format.get("type").and_then(Value::as_str) == Some("text")
}

/// The function object as the client sent it: name, description, parameters, in that order.
fn tool_schema(tool: &Tool) -> Result<String> {
    let mut schema = Map::new();
    schema.insert("name".into(), Value::String(tool.name.clone()));
    if let Some(description) = &tool.description {
        schema.insert("description".into(), Value::String(description.clone()));
    }
    if !tool.parameters.is_null() {
        schema.insert("parameters".into(), tool.parameters.clone());
    }
    python_json(&schema, None)
}

/// One call as DSML: each argument a parameter, strings verbatim (`string="true"`), anything else
/// as JSON (`string="false"`).
fn invoke(index: usize, call: &ToolCall) -> Result<String> {
    let arguments: Value = serde_json::from_str(&call.arguments).map_err(|e| {
        Error::Input(format!("message {index}: arguments of tool call {:?} are not valid JSON: {e}", call.name))
    })?;
    let Value::Object(arguments) = arguments else {
        return Err(Error::Input(format!(
            "message {index}: arguments of tool call {:?} must be a JSON object",
            call.name
        )));
    };
    let mut params = Vec::with_capacity(arguments.len());
    for (key, value) in &arguments {
        let (is_string, text) = match value {
            Value::String(s) => ("true", s.clone()),
            other => ("false", python_json(other, None)?),
        };
        params.push(format!("<{DSML}parameter name=\"{key}\" string=\"{is_string}\">{text}</{DSML}parameter>"));
    }
    Ok(format!("<{DSML}invoke name=\"{}\">\n{}\n</{DSML}invoke>", call.name, params.join("\n")))
}
