//! The parsers that split generated text, as the server streams it: `ReasoningParser` (both
//! `--reasoning-parser` formats, thinking on and off) and the DSML `ToolCallParser`, on their own
//! and chained as the server chains them (reasoning first, then tool calls in the content).
//!
//! Each parser is fed the text chunk by chunk and then `finish`ed, and again in one push. The
//! concatenated streaming output must equal the one-shot output (how the text is chunked must not
//! change what comes out), every `ParsedCall` must have a name and arguments that parse as a JSON
//! object, and nothing may panic. The reasoning split is also checked against its specification:
//! leading `<think>` copies dropped, the first `</think>` ends the reasoning, the rest is content
//! verbatim; text without `<｜DSML｜function_calls>` must pass through the tool parser unchanged.
//!
//! Input layout: `plan: u8`, then `plan & 15` chunk lengths (`u8` each, in bytes, each chunk
//! extended to the next char boundary), then the text (the rest, converted with
//! `String::from_utf8_lossy`). With no lengths, every char is its own chunk. With `plan & 16` the
//! lengths are used in a cycle (a 0 counts as 1) until the text runs out; otherwise they are used
//! once (0 gives an empty push) and what is left is the last chunk.

use flashseek::tokenizer::{ReasoningFormat, ReasoningParser, Split, ToolCallParser, ToolOutput};

use crate::Reader;

const THINK_START: &str = "<think>";
const THINK_END: &str = "</think>";
const BLOCK_START: &str = "<｜DSML｜function_calls>";
const INVOKE_START: &str = "<｜DSML｜invoke";

const CONFIGS: [(ReasoningFormat, bool); 4] = [
    (ReasoningFormat::DeepseekR1, false),
    (ReasoningFormat::DeepseekR1, true),
    (ReasoningFormat::DeepseekV3, false),
    (ReasoningFormat::DeepseekV3, true),
];

/// One fuzz input.
pub fn run(data: &[u8]) {
    let mut r = Reader::new(data);
    let plan = r.u8();
    let lengths: Vec<usize> = r.bytes(usize::from(plan & 15)).iter().map(|&b| usize::from(b)).collect();
    let cycle = plan & 16 != 0;
    let text = String::from_utf8_lossy(r.rest());
    let chunks = chunk(&text, &lengths, cycle);
    assert_eq!(chunks.concat(), text, "harness: the chunks do not cover the text");

    for (format, thinking) in CONFIGS {
        let streamed = reasoning(format, thinking, &chunks);
        let whole = reasoning(format, thinking, &[&text]);
        assert_eq!(streamed, whole, "{format:?} thinking={thinking}: streaming and one-shot splits differ");
        check_reasoning_spec(format, thinking, &text, &whole);

        // The server's chain: the content of each reasoning step goes on to the tool parser.
        let streamed = chained(format, thinking, &chunks);
        let whole_calls = tool_calls(&[&whole.content]);
        assert_eq!(streamed, whole_calls, "{format:?} thinking={thinking}: chained streaming and one-shot differ");
    }

    let streamed = tool_calls(&chunks);
    let whole = tool_calls(&[&text]);
    assert_eq!(streamed, whole, "streaming and one-shot tool-call outputs differ");
    check_calls(&text, &whole);
}

/// Splits `text` per the chunk lengths, always on char boundaries.
fn chunk<'a>(text: &'a str, lengths: &[usize], cycle: bool) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut pos: usize = 0;
    // Cuts the next chunk; true once the text is used up.
    let mut cut = |len: usize| {
        let mut end = pos.saturating_add(len).min(text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        out.push(&text[pos..end]);
        pos = end;
        pos == text.len()
    };
    if lengths.is_empty() {
        for c in text.chars() {
            cut(c.len_utf8());
        }
    } else if cycle {
        if !text.is_empty() {
            for &len in lengths.iter().cycle() {
                if cut(len.max(1)) {
                    break;
                }
            }
        }
    } else {
        for &len in lengths {
            cut(len);
        }
        cut(usize::MAX);
    }
    out
}

fn add_split(acc: &mut Split, s: Split) {
    acc.reasoning.push_str(&s.reasoning);
    acc.content.push_str(&s.content);
}

fn add_output(acc: &mut ToolOutput, o: ToolOutput) {
    acc.content.push_str(&o.content);
    acc.calls.extend(o.calls);
}

/// Each chunk pushed in turn, then `finish`: everything that came out.
fn reasoning(format: ReasoningFormat, thinking: bool, chunks: &[&str]) -> Split {
    let mut parser = ReasoningParser::new(format, thinking);
    let mut acc = Split::default();
    for c in chunks {
        add_split(&mut acc, parser.push(c));
    }
    add_split(&mut acc, parser.finish());
    acc
}

fn tool_calls(chunks: &[&str]) -> ToolOutput {
    let mut parser = ToolCallParser::new();
    let mut acc = ToolOutput::default();
    for c in chunks {
        add_output(&mut acc, parser.push(c));
    }
    add_output(&mut acc, parser.finish());
    acc
}

/// Reasoning parser, then the tool parser on each step's content, both streaming.
fn chained(format: ReasoningFormat, thinking: bool, chunks: &[&str]) -> ToolOutput {
    let mut reasoning = ReasoningParser::new(format, thinking);
    let mut tools = ToolCallParser::new();
    let mut acc = ToolOutput::default();
    for c in chunks {
        let split = reasoning.push(c);
        add_output(&mut acc, tools.push(&split.content));
    }
    let split = reasoning.finish();
    add_output(&mut acc, tools.push(&split.content));
    add_output(&mut acc, tools.finish());
    acc
}

/// The split the reasoning parser's documentation promises for the whole `text`.
fn check_reasoning_spec(format: ReasoningFormat, thinking: bool, text: &str, got: &Split) {
    let opens_in_reasoning = format == ReasoningFormat::DeepseekR1 || thinking;
    let expected = if opens_in_reasoning {
        let mut rest = text;
        while let Some(r) = rest.strip_prefix(THINK_START) {
            rest = r;
        }
        match rest.find(THINK_END) {
            Some(end) => Split { reasoning: rest[..end].into(), content: rest[end + THINK_END.len()..].into() },
            None => Split { reasoning: rest.into(), content: String::new() },
        }
    } else {
        Split { reasoning: String::new(), content: text.into() }
    };
    assert_eq!(got, &expected, "{format:?} thinking={thinking}: split differs from the specification");
}

/// Every call has a name and a JSON object of arguments; text without a block is left alone.
fn check_calls(text: &str, out: &ToolOutput) {
    if !text.contains(BLOCK_START) {
        assert_eq!(out.content, text, "text without a DSML block did not pass through unchanged");
        assert!(out.calls.is_empty(), "calls from text without a DSML block: {:?}", out.calls);
    }
    assert!(out.calls.len() <= text.matches(INVOKE_START).count(), "more calls than invoke tags: {:?}", out.calls);
    for call in &out.calls {
        assert!(!call.name.trim().is_empty(), "call with an empty name: {call:?}");
        // serde_json's default nesting limit (128) is lower than what the parser may legally
        // build (a 127-deep value inside the arguments object), and Python's json has none that low.
        let mut de = serde_json::Deserializer::from_str(&call.arguments);
        de.disable_recursion_limit();
        let value = serde::Deserialize::deserialize(&mut de)
            .and_then(|v: serde_json::Value| de.end().map(|()| v))
            .unwrap_or_else(|e| panic!("arguments of {:?} are not JSON ({e}): {}", call.name, call.arguments));
        assert!(value.is_object(), "arguments of {:?} are not a JSON object: {}", call.name, call.arguments);
    }
}
