//! Text in and out: the model's tokenizer and streaming detokenizer, prompt encoding
//! (DeepSeek-V3.2's own format or a model's Jinja chat template), and the parsers that split
//! generated text into reasoning, content and DSML tool calls.

pub mod chat;
pub mod detokenize;
pub mod dsml;
pub mod dsv32;
pub mod hf;
pub mod reasoning;
pub mod template;

pub use chat::{ChatFormat, ChatMessage, ChatOptions, Role, Tool, ToolCall};
pub use detokenize::IncrementalDecoder;
pub use dsml::{ParsedCall, ToolCallParser, ToolOutput};
pub use hf::Tokenizer;
pub use reasoning::{ReasoningFormat, ReasoningParser, Split};
pub use template::JinjaTemplate;
