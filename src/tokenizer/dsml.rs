//! Tool calls in DeepSeek-V3.2's DSML markup, turned into OpenAI `tool_calls` (a name and a JSON
//! object of arguments), streaming, as SGLang's `--tool-call-parser deepseekv32` does.
//!
//! The grammar, from DeepSeek's `encoding_dsv32.py`:
//!
//! ```text
//! <｜DSML｜function_calls>
//! <｜DSML｜invoke name="get_weather">
//! <｜DSML｜parameter name="location" string="true">Hangzhou</｜DSML｜parameter>
//! <｜DSML｜parameter name="days" string="false">3</｜DSML｜parameter>
//! </｜DSML｜invoke>
//! </｜DSML｜function_calls>
//! ```
//!
//! Choices, where models stray from it or the two references differ:
//! - whitespace between tags and around `=` is free; attribute values are trimmed;
//! - a `string="true"` value is kept verbatim (DeepSeek's decoder does; SGLang trims it), since
//!   the encoder writes string arguments unescaped and unpadded;
//! - any other `string` value (or none) means JSON; a value that is not valid JSON is kept as a
//!   JSON string of its trimmed text (as SGLang does);
//! - a parameter named twice: the last value wins, at the place of the first (SGLang's dict);
//! - an invoke whose body is a JSON object instead of parameter tags is accepted (SGLang's second
//!   format);
//! - anything else inside a block ends it: the block's unparsed text becomes plain content, so a
//!   malformed or unterminated block is never lost. Calls already closed stay calls.

use serde_json::Value;

use super::reasoning::partial_marker_start;

const BLOCK_START: &str = "<｜DSML｜function_calls>";
const BLOCK_END: &str = "</｜DSML｜function_calls>";
const INVOKE_START: &str = "<｜DSML｜invoke";
const INVOKE_END: &str = "</｜DSML｜invoke>";
const PARAM_START: &str = "<｜DSML｜parameter";
const PARAM_END: &str = "</｜DSML｜parameter>";
/// Longest attribute value (a function or parameter name) waited for: past it, a tag that never
/// closes its quote is not a tag, and its text goes out as content instead of piling up.
const MAX_ATTR_LEN: usize = 1024;

/// One tool call, in the shape of OpenAI's `tool_calls[].function`.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedCall {
    pub name: String,
    /// A JSON object, serialized.
    pub arguments: String,
}

/// One step of output: plain content and the calls that closed in it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ToolOutput {
    pub content: String,
    pub calls: Vec<ParsedCall>,
}

/// An invoke being read: its name and the arguments so far, in order.
#[derive(Debug, Clone)]
struct Invoke {
    name: String,
    args: Vec<(String, Value)>,
}

impl Invoke {
    fn set(&mut self, key: String, value: Value) {
        match self.args.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.args.push((key, value)),
        }
    }

    fn into_call(self) -> ParsedCall {
        let fields: Vec<String> =
            self.args.into_iter().map(|(key, value)| format!("{}:{value}", Value::String(key))).collect();
        ParsedCall { name: self.name, arguments: format!("{{{}}}", fields.join(",")) }
    }
}

#[derive(Debug, Clone)]
enum State {
    /// Outside any block.
    Text,
    /// Inside a block, between invokes.
    Block,
    /// Inside an invoke, between parameters.
    Invoke(Invoke),
    /// Inside a parameter value, which starts at `pos`.
    Value { invoke: Invoke, key: String, string: bool },
    /// Inside an invoke whose body is a JSON object starting at `pos`.
    JsonBody { name: String },
}

/// What one step of the block grammar found.
enum Step {
    /// The state moved on; look again.
    Moved,
    /// Nothing more can be decided until more text arrives.
    Wait,
    /// The text at `pos` cannot continue the block: it is plain content from here on.
    Invalid,
}

/// Streaming DSML tool-call parser: push decoded content as it arrives, call `finish` at the end.
#[derive(Debug, Clone)]
pub struct ToolCallParser {
    state: State,
    /// Text not yet resolved: in a block, everything since its start or since the last call.
    buf: String,
    /// How far into `buf` the block grammar has read.
    pos: usize,
    /// Where to resume searching for a value's closing tag, so long values are scanned once.
    scan: usize,
}

impl Default for ToolCallParser {
    fn default() -> Self {
        Self::new()
    }
}

impl ToolCallParser {
    pub fn new() -> Self {
        Self { state: State::Text, buf: String::new(), pos: 0, scan: 0 }
    }

    /// Streaming: content outside DSML blocks passes through at once except a possible partial
    /// marker prefix; each call is emitted when its `</｜DSML｜invoke>` closes.
    pub fn push(&mut self, text: &str) -> ToolOutput {
        self.buf.push_str(text);
        let mut out = ToolOutput::default();
        loop {
            match self.step(&mut out) {
                Step::Moved => {}
                Step::Wait => return out,
                Step::Invalid => self.fall_back(&mut out),
            }
        }
    }

    /// End of output: an unterminated or malformed block is returned as plain content (never
    /// lost, never a panic).
    pub fn finish(&mut self) -> ToolOutput {
        let content = std::mem::take(&mut self.buf);
        self.reset_to_text();
        ToolOutput { content, calls: Vec::new() }
    }

    fn step(&mut self, out: &mut ToolOutput) -> Step {
        match std::mem::replace(&mut self.state, State::Text) {
            State::Text => self.step_text(out),
            State::Block => self.step_block(),
            State::Invoke(invoke) => self.step_invoke(invoke, out),
            State::Value { invoke, key, string } => self.step_value(invoke, key, string),
            State::JsonBody { name } => self.step_json_body(name, out),
        }
    }

    /// Gives up on the current block: what was read of it is content, the rest is read as text.
    fn fall_back(&mut self, out: &mut ToolOutput) {
        out.content.extend(self.buf.drain(..self.pos));
        self.reset_to_text();
    }

    fn reset_to_text(&mut self) {
        self.state = State::Text;
        self.pos = 0;
        self.scan = 0;
    }

    fn step_text(&mut self, out: &mut ToolOutput) -> Step {
        if let Some(start) = self.buf.find(BLOCK_START) {
            out.content.extend(self.buf.drain(..start));
            self.pos = BLOCK_START.len();
            self.state = State::Block;
            return Step::Moved;
        }
        let keep = partial_marker_start(&self.buf, BLOCK_START);
        out.content.extend(self.buf.drain(..keep));
        Step::Wait
    }

    fn step_block(&mut self) -> Step {
        self.state = State::Block;
        let mut cur = Cursor::new(&self.buf[self.pos..]);
        cur.skip_ws();
        let at = self.pos + cur.used;
        let closed = cur.clone().lit(BLOCK_END);
        if closed.is_ok() {
            self.buf.drain(..at + BLOCK_END.len());
            self.reset_to_text();
            return Step::Moved;
        }
        match (invoke_open(&mut cur), closed) {
            (Ok(name), _) => {
                self.pos += cur.used;
                self.state = State::Invoke(Invoke { name, args: Vec::new() });
                Step::Moved
            }
            (Err(Need::More), _) | (_, Err(Need::More)) => Step::Wait,
            _ => self.invalid_at(at),
        }
    }

    fn step_invoke(&mut self, invoke: Invoke, out: &mut ToolOutput) -> Step {
        let mut cur = Cursor::new(&self.buf[self.pos..]);
        cur.skip_ws();
        let at = self.pos + cur.used;
        let closed = cur.clone().lit(INVOKE_END);
        if closed.is_ok() {
            out.calls.push(invoke.into_call());
            self.buf.drain(..at + INVOKE_END.len());
            self.pos = 0;
            self.state = State::Block;
            return Step::Moved;
        }
        if invoke.args.is_empty() && cur.rest.starts_with('{') {
            self.pos = at;
            self.scan = at;
            self.state = State::JsonBody { name: invoke.name };
            return Step::Moved;
        }
        let param = param_open(&mut cur);
        let moved = self.pos + cur.used;
        match (param, closed) {
            (Ok((key, string)), _) => {
                self.pos = moved;
                self.scan = moved;
                self.state = State::Value { invoke, key, string };
                Step::Moved
            }
            (Err(Need::More), _) | (_, Err(Need::More)) => {
                self.state = State::Invoke(invoke);
                Step::Wait
            }
            _ => self.invalid_at(at),
        }
    }

    fn step_value(&mut self, mut invoke: Invoke, key: String, string: bool) -> Step {
        let Some(end) = self.find_closing(PARAM_END) else {
            self.state = State::Value { invoke, key, string };
            return Step::Wait;
        };
        let raw = &self.buf[self.pos..end];
        invoke.set(key, parameter_value(raw, string));
        self.pos = end + PARAM_END.len();
        self.state = State::Invoke(invoke);
        Step::Moved
    }

    fn step_json_body(&mut self, name: String, out: &mut ToolOutput) -> Step {
        let Some(end) = self.find_closing(INVOKE_END) else {
            self.state = State::JsonBody { name };
            return Step::Wait;
        };
        match serde_json::from_str::<Value>(self.buf[self.pos..end].trim()) {
            Ok(args @ Value::Object(_)) => {
                out.calls.push(ParsedCall { name, arguments: args.to_string() });
                self.buf.drain(..end + INVOKE_END.len());
                self.pos = 0;
                self.state = State::Block;
                Step::Moved
            }
            _ => self.invalid_at(self.pos),
        }
    }

    /// Finds `marker` in `buf` after `pos`, remembering how far the search got when it fails.
    fn find_closing(&mut self, marker: &str) -> Option<usize> {
        let from = self.scan.max(self.pos);
        match self.buf.get(from..).and_then(|tail| tail.find(marker)) {
            Some(offset) => Some(from + offset),
            None => {
                self.scan = partial_marker_start(&self.buf, marker).max(from);
                None
            }
        }
    }

    fn invalid_at(&mut self, at: usize) -> Step {
        self.pos = at;
        Step::Invalid
    }
}

/// The JSON value of one parameter's text.
fn parameter_value(raw: &str, string: bool) -> Value {
    if string {
        return Value::String(raw.to_owned());
    }
    let trimmed = raw.trim();
    serde_json::from_str(trimmed).unwrap_or_else(|_| Value::String(trimmed.to_owned()))
}

/// Why a tag could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// The text so far is a prefix of a valid tag.
    More,
    /// No continuation makes it a valid tag.
    Invalid,
}

type Lex<T> = Result<T, Need>;

/// Reads a tag from the front of some text, counting the bytes it used.
#[derive(Debug, Clone)]
struct Cursor<'a> {
    rest: &'a str,
    used: usize,
}

impl<'a> Cursor<'a> {
    fn new(text: &'a str) -> Self {
        Self { rest: text, used: 0 }
    }

    fn advance(&mut self, len: usize) {
        self.rest = self.rest.get(len..).unwrap_or_default();
        self.used += len;
    }

    fn skip_ws(&mut self) -> usize {
        let len = self.rest.len() - self.rest.trim_start().len();
        self.advance(len);
        len
    }

    /// At least one whitespace character, as between a tag's name and its attributes.
    fn ws1(&mut self) -> Lex<()> {
        match (self.skip_ws(), self.rest.is_empty()) {
            (0, true) => Err(Need::More),
            (0, false) => Err(Need::Invalid),
            _ => Ok(()),
        }
    }

    fn lit(&mut self, lit: &str) -> Lex<()> {
        if self.rest.starts_with(lit) {
            self.advance(lit.len());
            Ok(())
        } else if lit.starts_with(self.rest) {
            Err(Need::More)
        } else {
            Err(Need::Invalid)
        }
    }

    /// `key = "value"`, the value trimmed.
    fn attr(&mut self, key: &str) -> Lex<&'a str> {
        self.lit(key)?;
        self.skip_ws();
        self.lit("=")?;
        self.skip_ws();
        self.lit("\"")?;
        let len = match self.rest.bytes().take(MAX_ATTR_LEN).position(|b| b == b'"') {
            Some(len) => len,
            None if self.rest.len() >= MAX_ATTR_LEN => return Err(Need::Invalid),
            None => return Err(Need::More),
        };
        let value = self.rest.get(..len).unwrap_or_default();
        self.advance(len + 1);
        Ok(value.trim())
    }

    fn close(&mut self) -> Lex<()> {
        self.skip_ws();
        self.lit(">")
    }
}

/// `<｜DSML｜invoke name="...">`, giving the function name.
fn invoke_open(cur: &mut Cursor) -> Lex<String> {
    cur.lit(INVOKE_START)?;
    cur.ws1()?;
    let name = cur.attr("name")?;
    cur.close()?;
    non_empty(name)
}

/// `<｜DSML｜parameter name="..." string="...">`, giving the name and whether the value is a raw
/// string. The `string` attribute may be missing: the value is then read as JSON.
fn param_open(cur: &mut Cursor) -> Lex<(String, bool)> {
    cur.lit(PARAM_START)?;
    cur.ws1()?;
    let name = non_empty(cur.attr("name")?)?;
    cur.skip_ws();
    if cur.clone().lit(">").is_ok() {
        cur.advance(1);
        return Ok((name, false));
    }
    let string = cur.attr("string")? == "true";
    cur.close()?;
    Ok((name, string))
}

fn non_empty(name: &str) -> Lex<String> {
    if name.is_empty() {
        Err(Need::Invalid)
    } else {
        Ok(name.to_owned())
    }
}
