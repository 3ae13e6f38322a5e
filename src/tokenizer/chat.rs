//! Chat messages as the server receives them, and the choice of how a model turns them into prompt
//! text: DeepSeek-V3.2's own encoding, or the Jinja `chat_template` the model ships with.

use std::io;
use std::path::Path;

use serde::Serialize;
use serde_json::ser::Formatter;

use super::dsv32;
use super::template::JinjaTemplate;
use crate::error::{Error, Result};

/// Who speaks a message. `Developer` is DeepSeek-V3.2's instruction turn: it opens a user turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
}

impl Role {
    /// The OpenAI spelling, which is also what chat templates compare against.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::Developer => "developer",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// A function call an earlier assistant turn made.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as JSON object text, exactly as OpenAI's `function.arguments` carries them.
    pub arguments: String,
}

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    pub role: Role,
    /// Empty where OpenAI sends `null` (an assistant turn that only calls tools).
    pub content: String,
    /// The assistant's chain of thought (`reasoning_content`).
    pub reasoning: Option<String>,
    pub tool_calls: Vec<ToolCall>,
    /// For `Role::Tool`: the call this message answers.
    pub tool_call_id: Option<String>,
    pub name: Option<String>,
}

impl ChatMessage {
    /// A plain text turn with nothing else attached.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        ChatMessage {
            role,
            content: content.into(),
            reasoning: None,
            tool_calls: Vec::new(),
            tool_call_id: None,
            name: None,
        }
    }
}

/// A function the model may call (OpenAI's `tools[].function`).
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// JSON Schema of the arguments; `Null` when the request gave none.
    pub parameters: serde_json::Value,
}

/// Everything besides the messages that shapes the prompt.
#[derive(Debug, Clone, Default)]
pub struct ChatOptions {
    /// Let the model reason before answering (`chat_template_kwargs.thinking`).
    pub thinking: bool,
    /// Jinja templates only: end with the assistant opener. DeepSeek-V3.2's encoding always opens
    /// the assistant turn after a user turn, so it ignores this.
    pub add_generation_prompt: bool,
    pub tools: Vec<Tool>,
    /// The OpenAI `response_format` object. DeepSeek-V3.2 renders it into the system prompt
    /// (except `{"type": "text"}`, which asks for nothing); Jinja templates do not see it.
    pub response_format: Option<serde_json::Value>,
    /// Jinja templates only: DeepSeek-V3.2's encoding uses its own fixed special tokens.
    pub bos_token: String,
    pub eos_token: String,
}

/// How a model's prompts are written.
#[derive(Debug)]
pub enum ChatFormat {
    /// DeepSeek-V3.2's encoding, which ships as Python rather than as a Jinja template.
    Dsv32,
    Jinja(JinjaTemplate),
}

impl ChatFormat {
    /// `--chat-template FILE` wins; else the `chat_template` of `tokenizer_config.json`; else
    /// DeepSeek-V3.2's own encoding for `model_type` "deepseek_v32"; anything else has no known
    /// format and must be given one.
    pub fn select(model_type: &str, tokenizer_template: Option<&str>, override_file: Option<&Path>) -> Result<Self> {
        if let Some(path) = override_file {
            let source = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            return Ok(ChatFormat::Jinja(JinjaTemplate::compile(&source, path)?));
        }
        if let Some(source) = tokenizer_template {
            return Ok(ChatFormat::Jinja(JinjaTemplate::compile(source, Path::new("tokenizer_config.json"))?));
        }
        if model_type == "deepseek_v32" {
            return Ok(ChatFormat::Dsv32);
        }
        Err(Error::config(
            Path::new("tokenizer_config.json"),
            format!(
                "no chat_template and model_type {model_type:?} has no built-in chat format; pass --chat-template FILE"
            ),
        ))
    }

    /// The prompt text for `messages`, starting with the BOS text: tokenize it without adding BOS.
    pub fn render(&self, messages: &[ChatMessage], opts: &ChatOptions) -> Result<String> {
        match self {
            ChatFormat::Dsv32 => dsv32::render(messages, opts),
            ChatFormat::Jinja(template) => template.render(messages, opts),
        }
    }
}

/// JSON text as Python's `json.dumps(value, ensure_ascii=False, indent=indent)` writes it, which
/// is what the model saw in training: `", "` and `": "` separators, floats as Python's `repr`.
pub(crate) fn python_json(value: &impl Serialize, indent: Option<usize>) -> Result<String> {
    let mut out = Vec::new();
    let formatter = PythonFormatter { indent, depth: 0, has_value: false };
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
    value.serialize(&mut serializer).map_err(|e| Error::Input(format!("cannot write JSON: {e}")))?;
    String::from_utf8(out).map_err(|e| Error::Input(format!("cannot write JSON: {e}")))
}

/// `json.dumps` layout: compact with spaces after separators, or one item per line when indented.
struct PythonFormatter {
    indent: Option<usize>,
    depth: usize,
    has_value: bool,
}

impl PythonFormatter {
    fn open<W: ?Sized + io::Write>(&mut self, writer: &mut W, bracket: &[u8]) -> io::Result<()> {
        self.depth += 1;
        self.has_value = false;
        writer.write_all(bracket)
    }

    fn close<W: ?Sized + io::Write>(&mut self, writer: &mut W, bracket: &[u8]) -> io::Result<()> {
        self.depth = self.depth.saturating_sub(1);
        if self.has_value {
            self.newline(writer)?;
        }
        self.has_value = true;
        writer.write_all(bracket)
    }

    fn item<W: ?Sized + io::Write>(&mut self, writer: &mut W, first: bool) -> io::Result<()> {
        match (first, self.indent) {
            (true, None) => Ok(()),
            (false, None) => writer.write_all(b", "),
            (true, Some(_)) => self.newline(writer),
            (false, Some(_)) => {
                writer.write_all(b",")?;
                self.newline(writer)
            }
        }
    }

    fn newline<W: ?Sized + io::Write>(&self, writer: &mut W) -> io::Result<()> {
        if let Some(width) = self.indent {
            writer.write_all(b"\n")?;
            writer.write_all(" ".repeat(width * self.depth).as_bytes())?;
        }
        Ok(())
    }
}

impl Formatter for PythonFormatter {
    fn write_f32<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f32) -> io::Result<()> {
        writer.write_all(python_float(f64::from(value)).as_bytes())
    }

    fn write_f64<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f64) -> io::Result<()> {
        writer.write_all(python_float(value).as_bytes())
    }

    fn begin_array<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.open(writer, b"[")
    }

    fn end_array<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.close(writer, b"]")
    }

    fn begin_array_value<W: ?Sized + io::Write>(&mut self, writer: &mut W, first: bool) -> io::Result<()> {
        self.item(writer, first)
    }

    fn end_array_value<W: ?Sized + io::Write>(&mut self, _writer: &mut W) -> io::Result<()> {
        self.has_value = true;
        Ok(())
    }

    fn begin_object<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.open(writer, b"{")
    }

    fn end_object<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.close(writer, b"}")
    }

    fn begin_object_key<W: ?Sized + io::Write>(&mut self, writer: &mut W, first: bool) -> io::Result<()> {
        self.item(writer, first)
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(b": ")
    }

    fn end_object_value<W: ?Sized + io::Write>(&mut self, _writer: &mut W) -> io::Result<()> {
        self.has_value = true;
        Ok(())
    }
}

/// Python's `float.__repr__`: the shortest round-tripping digits, positional for decimal exponents
/// in -4..16 (always with a fractional part), otherwise `d.ddde+XX`.
pub(crate) fn python_float(value: f64) -> String {
    if value.is_nan() {
        return "NaN".into();
    }
    if value.is_infinite() {
        return if value > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    let sign = if value.is_sign_negative() { "-" } else { "" };
    // `{:e}` gives the shortest round-tripping digits as "d.ddde-N".
    let scientific = format!("{:e}", value.abs());
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((scientific.as_str(), "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let body = if (-4..16).contains(&exponent) {
        positional(&digits, exponent)
    } else {
        let (lead, rest) = digits.split_at(1);
        let fraction = if rest.is_empty() { String::new() } else { format!(".{rest}") };
        let exp_sign = if exponent < 0 { '-' } else { '+' };
        format!("{lead}{fraction}e{exp_sign}{:02}", exponent.unsigned_abs())
    };
    format!("{sign}{body}")
}

/// `digits` (d1 d2 ...) times 10^(exponent - len + 1), written out without an exponent.
fn positional(digits: &str, exponent: i32) -> String {
    match usize::try_from(exponent) {
        Ok(whole) if whole + 1 >= digits.len() => format!("{digits}{}.0", "0".repeat(whole + 1 - digits.len())),
        Ok(whole) => {
            let (int, frac) = digits.split_at(whole + 1);
            format!("{int}.{frac}")
        }
        Err(_) => {
            let zeros = exponent.unsigned_abs() as usize - 1;
            format!("0.{}{digits}", "0".repeat(zeros))
        }
    }
}
