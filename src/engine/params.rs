//! What a request asks of generation, checked before it reaches the engine thread.

use crate::error::{Error, Result};

/// The most `top_logprobs` a request may ask for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// Sampling and stopping controls of one sequence, with OpenAI's and SGLang's meanings.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub max_new_tokens: usize,
    /// 0 samples greedily.
    pub temperature: f32,
    pub top_p: f32,
    /// 0 keeps every token.
    pub top_k: usize,
    pub min_p: f32,
    /// Fixes the sequence's random stream, so the same request samples the same tokens.
    pub seed: Option<u64>,
    /// Divides positive (multiplies negative) logits of tokens in the prompt or the output.
    pub repetition_penalty: f32,
    /// Subtracted once from the logit of every token the output already holds.
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per time the output already holds it.
    pub frequency_penalty: f32,
    /// Generation ends when the text contains one; it is not part of the output.
    pub stop: Vec<String>,
    /// Generation ends on one of these tokens; it is not part of the output text.
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    pub skip_special_tokens: bool,
    /// `Some(n)`: report each sampled token's log-probability and the `n` most likely ones.
    pub logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            max_new_tokens: 128,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            seed: None,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            skip_special_tokens: true,
            logprobs: None,
        }
    }
}

impl SamplingParams {
    /// Rejects values outside the ranges OpenAI and SGLang accept, naming the field.
    pub fn validate(&self) -> Result<()> {
        let bad =
            |field: &str, want: &str, got: String| Err(Error::Input(format!("{field} must be {want}, got {got}")));
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad("temperature", "a finite number >= 0", self.temperature.to_string());
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", "in (0, 1]", self.top_p.to_string());
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", "in [0, 1]", self.min_p.to_string());
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad("repetition_penalty", "a finite number > 0", self.repetition_penalty.to_string());
        }
        for (field, v) in [("presence_penalty", self.presence_penalty), ("frequency_penalty", self.frequency_penalty)] {
            if !(-2.0..=2.0).contains(&v) {
                return bad(field, "in [-2, 2]", v.to_string());
            }
        }
        if self.max_new_tokens == 0 {
            return bad("max_tokens", "at least 1", "0".into());
        }
        if self.stop.iter().any(String::is_empty) {
            return bad("stop", "non-empty strings", "an empty string".into());
        }
        if let Some(n) = self.logprobs.filter(|&n| n > MAX_TOP_LOGPROBS) {
            return bad("top_logprobs", &format!("at most {MAX_TOP_LOGPROBS}"), n.to_string());
        }
        Ok(())
    }

    pub(crate) fn greedy(&self) -> bool {
        self.temperature == 0.0 || self.top_k == 1
    }

    pub(crate) fn penalized(&self) -> bool {
        self.repetition_penalty != 1.0 || self.presence_penalty != 0.0 || self.frequency_penalty != 0.0
    }
}
