//! Splits generated text into reasoning (`reasoning_content`) and the answer (`content`), the way
//! SGLang's `--reasoning-parser deepseek-r1|deepseek-v3` does for DeepSeek-V3.2.
//!
//! A thinking prompt already ends with `<think>`, so generation starts inside the reasoning and
//! the first `</think>` ends it. The model sometimes repeats `<think>` at the very start; those
//! leading copies are markers, not text. Everything after the first `</think>` is content, kept
//! verbatim (a later `<think>` or `</think>` there is just text).

use std::str::FromStr;

const THINK_START: &str = "<think>";
const THINK_END: &str = "</think>";

/// Which `--reasoning-parser` the server runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasoningFormat {
    /// The output always opens in reasoning, whatever the request asked.
    DeepseekR1,
    /// The output opens in reasoning only for requests with thinking on; without it the prompt
    /// ends with `</think>` and the whole output is content.
    DeepseekV3,
}

impl FromStr for ReasoningFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "deepseek-r1" => Ok(Self::DeepseekR1),
            "deepseek-v3" => Ok(Self::DeepseekV3),
            other => Err(format!("unknown reasoning parser {other:?}; accepted values: deepseek-r1, deepseek-v3")),
        }
    }
}

/// One step of output: the reasoning and the content decided so far.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Split {
    pub reasoning: String,
    pub content: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// In reasoning, before any text: a `<think>` here is a repeated opening marker.
    Opening,
    Reasoning,
    Content,
}

/// Streaming reasoning splitter: push decoded text as it arrives, call `finish` at the end.
#[derive(Debug, Clone)]
pub struct ReasoningParser {
    phase: Phase,
    /// Text not yet decided: a possible start of a marker at the end of what was pushed.
    held: String,
}

impl ReasoningParser {
    /// deepseek-r1 always starts in reasoning; deepseek-v3 only when `thinking` is on (otherwise
    /// everything is content).
    pub fn new(format: ReasoningFormat, thinking: bool) -> Self {
        let reasoning = match format {
            ReasoningFormat::DeepseekR1 => true,
            ReasoningFormat::DeepseekV3 => thinking,
        };
        let phase = if reasoning { Phase::Opening } else { Phase::Content };
        Self { phase, held: String::new() }
    }

    /// Streaming: text that might be the start of `</think>` (or a leading `<think>`) is held
    /// back until the next chunk decides.
    pub fn push(&mut self, text: &str) -> Split {
        self.held.push_str(text);
        let mut out = Split::default();
        while self.step(&mut out) {}
        out
    }

    /// End of output: whatever was held back is text after all (a truncated reasoning stays
    /// reasoning, as SGLang reports it).
    pub fn finish(&mut self) -> Split {
        let rest = std::mem::take(&mut self.held);
        match self.phase {
            Phase::Opening | Phase::Reasoning => Split { reasoning: rest, content: String::new() },
            Phase::Content => Split { reasoning: String::new(), content: rest },
        }
    }

    /// Moves what can be decided from `held` into `out`; true when the phase changed and the
    /// rest needs another look.
    fn step(&mut self, out: &mut Split) -> bool {
        match self.phase {
            Phase::Opening => self.step_opening(),
            Phase::Reasoning => self.step_reasoning(out),
            Phase::Content => {
                out.content.push_str(&self.held);
                self.held.clear();
                false
            }
        }
    }

    fn step_opening(&mut self) -> bool {
        if self.held.starts_with(THINK_START) {
            self.held.drain(..THINK_START.len());
            return true;
        }
        if THINK_START.starts_with(self.held.as_str()) {
            return false;
        }
        self.phase = Phase::Reasoning;
        true
    }

    fn step_reasoning(&mut self, out: &mut Split) -> bool {
        if let Some(end) = self.held.find(THINK_END) {
            out.reasoning.push_str(&self.held[..end]);
            self.held.drain(..end + THINK_END.len());
            self.phase = Phase::Content;
            return true;
        }
        let keep = partial_marker_start(&self.held, THINK_END);
        out.reasoning.push_str(&self.held[..keep]);
        self.held.drain(..keep);
        false
    }
}

/// Where the longest suffix of `text` that is a proper prefix of `marker` begins (`text.len()`
/// when there is none): the part a streaming parser must hold back until more text arrives.
pub(crate) fn partial_marker_start(text: &str, marker: &str) -> usize {
    let earliest = text.len().saturating_sub(marker.len().saturating_sub(1));
    (earliest..text.len())
        .filter(|&start| text.is_char_boundary(start))
        .find(|&start| text.get(start..).is_some_and(|tail| marker.starts_with(tail)))
        .unwrap_or(text.len())
}
