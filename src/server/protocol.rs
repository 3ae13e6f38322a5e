//! Request bodies of the OpenAI and SGLang APIs, parsed strictly (wrong types are errors that
//! name the field) but tolerant of fields we do not use, as OpenAI clients send many.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use super::error::ApiError;
use crate::engine::SamplingParams;

/// Parses a JSON body, naming the offending field on a type error.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::bad_request(format!("invalid JSON body: {inner}"))
        } else if path == "." {
            ApiError::bad_request(format!("invalid request: {inner}"))
        } else {
            ApiError::bad_request(format!("invalid value for `{path}`: {inner}")).with_param(&path)
        }
    })?;
    de.end().map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    Ok(value)
}

/// A string or a list of strings (`stop`).
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// Message content: a string, or an array of parts of which only text is supported.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    /// JSON text, as OpenAI sends it; an object is accepted too.
    #[serde(default)]
    pub arguments: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct ToolCallIn {
    #[serde(default)]
    pub id: Option<String>,
    pub function: FunctionCall,
}

#[derive(Debug, Deserialize)]
pub struct MessageIn {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub tool_calls: Option<Vec<ToolCallIn>>,
    #[serde(default)]
    pub tool_call_id: Option<String>,
    #[serde(default)]
    pub reasoning_content: Option<String>,
    #[serde(default)]
    pub reasoning: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct FunctionDef {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub parameters: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct ToolDef {
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    pub function: FunctionDef,
}

#[derive(Debug, Deserialize, Default)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling fields shared by the OpenAI endpoints (SGLang's extensions included).
#[derive(Debug, Deserialize, Default)]
pub struct SamplingIn {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub seed: Option<u64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub stop: Option<OneOrMany>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub ignore_eos: Option<bool>,
    pub skip_special_tokens: Option<bool>,
}

impl SamplingIn {
    /// Fills `p` from the request; `defaults` are the model's (generation_config.json).
    pub fn apply(self, p: &mut SamplingParams, defaults: &SamplingDefaults) {
        // `do_sample: false` is generation_config.json's way of saying "greedy by default".
        let model_temperature = if defaults.do_sample == Some(false) { Some(0.0) } else { defaults.temperature };
        p.temperature = self.temperature.or(model_temperature).unwrap_or(1.0);
        p.top_p = self.top_p.or(defaults.top_p).unwrap_or(1.0);
        p.top_k = match self.top_k.or(defaults.top_k) {
            Some(k) if k > 0 => usize::try_from(k).unwrap_or(usize::MAX),
            _ => 0,
        };
        p.min_p = self.min_p.unwrap_or(0.0);
        p.seed = self.seed;
        p.presence_penalty = self.presence_penalty.unwrap_or(0.0);
        p.frequency_penalty = self.frequency_penalty.unwrap_or(0.0);
        p.repetition_penalty = self.repetition_penalty.unwrap_or(1.0);
        p.stop = self.stop.map(OneOrMany::into_vec).unwrap_or_default();
        p.stop_token_ids = self.stop_token_ids.unwrap_or_default();
        p.ignore_eos = self.ignore_eos.unwrap_or(false);
        p.skip_special_tokens = self.skip_special_tokens.unwrap_or(true);
    }
}

/// `thinking` (DeepSeek's name) or `enable_thinking` (Qwen's), when the arguments set either.
pub fn thinking_flag(kwargs: Option<&serde_json::Map<String, Value>>) -> Result<Option<bool>, ApiError> {
    let Some(kwargs) = kwargs else { return Ok(None) };
    for key in ["thinking", "enable_thinking"] {
        match kwargs.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::Bool(b)) => return Ok(Some(*b)),
            Some(_) => {
                return Err(ApiError::bad_request(format!("`chat_template_kwargs.{key}` must be a boolean"))
                    .with_param(&format!("chat_template_kwargs.{key}")))
            }
        }
    }
    Ok(None)
}

/// Defaults a model ships in `generation_config.json`: sampling, and the chat template
/// arguments a request gets unless it sets them (`default_chat_template_kwargs`, as vLLM reads it).
#[derive(Debug, Deserialize, Default, Clone)]
pub struct SamplingDefaults {
    #[serde(default)]
    pub do_sample: Option<bool>,
    #[serde(default)]
    pub default_chat_template_kwargs: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub top_k: Option<i64>,
}

impl SamplingDefaults {
    /// The thinking mode of requests that do not choose one.
    pub fn thinking(&self) -> Result<Option<bool>, ApiError> {
        thinking_flag(self.default_chat_template_kwargs.as_ref())
    }
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub messages: Vec<MessageIn>,
    #[serde(default)]
    pub tools: Option<Vec<ToolDef>>,
    #[serde(default)]
    pub tool_choice: Option<Value>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub max_tokens: Option<usize>,
    #[serde(default)]
    pub max_completion_tokens: Option<usize>,
    #[serde(default)]
    pub n: Option<usize>,
    #[serde(default)]
    pub logprobs: bool,
    #[serde(default)]
    pub top_logprobs: Option<usize>,
    #[serde(default)]
    pub chat_template_kwargs: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    pub response_format: Option<Value>,
    /// SGLang: when false, reasoning stays in `content`.
    #[serde(default)]
    pub separate_reasoning: Option<bool>,
    #[serde(flatten)]
    pub sampling: SamplingIn,
}

/// `prompt` of /v1/completions: text, token ids, or a batch of either.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptIn {
    Text(String),
    Ids(Vec<u32>),
    Texts(Vec<String>),
    Batch(Vec<Vec<u32>>),
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub prompt: PromptIn,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub max_tokens: Option<usize>,
    #[serde(default)]
    pub n: Option<usize>,
    #[serde(default)]
    pub logprobs: Option<usize>,
    #[serde(default)]
    pub echo: bool,
    #[serde(default)]
    pub suffix: Option<String>,
    #[serde(flatten)]
    pub sampling: SamplingIn,
}

/// SGLang's `sampling_params` of `/generate`.
#[derive(Debug, Deserialize, Default)]
pub struct NativeSampling {
    #[serde(default)]
    pub max_new_tokens: Option<usize>,
    #[serde(default)]
    pub n: Option<usize>,
    #[serde(default)]
    pub sampling_seed: Option<u64>,
    #[serde(flatten)]
    pub sampling: SamplingIn,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum TextIn {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum IdsIn {
    One(Vec<u32>),
    Many(Vec<Vec<u32>>),
}

#[derive(Debug, Deserialize)]
pub struct GenerateRequest {
    #[serde(default)]
    pub text: Option<TextIn>,
    #[serde(default)]
    pub input_ids: Option<IdsIn>,
    #[serde(default)]
    pub sampling_params: Option<NativeSampling>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub return_logprob: bool,
    #[serde(default)]
    pub top_logprobs_num: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum TokenizeIn {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub struct TokenizeRequest {
    pub prompt: TokenizeIn,
}

#[derive(Debug, Deserialize)]
pub struct DetokenizeRequest {
    pub tokens: Vec<u32>,
}
