//! A model's `tokenizer.json` (through the pure-Rust `tokenizers` crate) together with what its
//! `tokenizer_config.json` says about BOS/EOS and the chat template.
//!
//! Encoding never adds BOS/EOS: prompts are built by the chat template or the V3.2 encoder, which
//! write those tokens themselves, so a post-processor adding them again would double them.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tokenizers::decoders::DecoderWrapper;

use crate::error::{Error, Result};

/// `tokenizers::Tokenizer` is `Send + Sync`, so this is too: one instance is shared via `Arc` by
/// every request thread.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The `tokenizer.json` this was loaded from, named in errors.
    path: PathBuf,
    /// Every id that has a token, sorted. Ids need not be contiguous, so range checks are not
    /// enough to reject an unknown id before `tokenizers` silently drops it.
    known_ids: Vec<u32>,
    special_ids: HashSet<u32>,
    /// The decoder maps bytes to GPT-2's printable characters, so a token's raw bytes (which may
    /// be part of a UTF-8 character) can be recovered exactly.
    byte_level: bool,
    bos: Option<SpecialToken>,
    eos: Option<SpecialToken>,
    chat_template: Option<String>,
}

struct SpecialToken {
    content: String,
    id: u32,
}

/// The fields of `tokenizer_config.json` that the engine uses; transformers' many others
/// (`model_max_length`, `add_bos_token`, ...) do not apply because encoding never adds tokens.
#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    bos_token: Option<RawToken>,
    #[serde(default)]
    eos_token: Option<RawToken>,
    #[serde(default)]
    chat_template: Option<RawTemplate>,
}

/// transformers writes a special token either as its text or as a serialized `AddedToken`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawToken {
    Text(String),
    Added { content: String },
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawTemplate {
    One(String),
    Named(Vec<NamedTemplate>),
}

#[derive(Deserialize)]
struct NamedTemplate {
    name: String,
    template: String,
}

const TOKENIZER_JSON: &str = "tokenizer.json";
const TOKENIZER_CONFIG_JSON: &str = "tokenizer_config.json";

impl Tokenizer {
    /// `tokenizer.json` (required) and `tokenizer_config.json` (optional) from a model directory.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let config = dir.join(TOKENIZER_CONFIG_JSON);
        let config = config.exists().then_some(config);
        Self::from_files(&dir.join(TOKENIZER_JSON), config.as_deref())
    }

    pub fn from_files(tokenizer_json: &Path, tokenizer_config: Option<&Path>) -> Result<Self> {
        let text = std::fs::read_to_string(tokenizer_json).map_err(|e| Error::io(tokenizer_json, e))?;
        let inner: tokenizers::Tokenizer =
            text.parse().map_err(|e| Error::config(tokenizer_json, format!("invalid tokenizer: {e}")))?;
        let raw = match tokenizer_config {
            Some(path) => Some((read_config(path)?, path)),
            None => None,
        };
        let mut known_ids: Vec<u32> = inner.get_vocab(true).into_values().collect();
        known_ids.sort_unstable();
        known_ids.dedup();
        let special_ids =
            inner.get_added_tokens_decoder().into_iter().filter(|(_, t)| t.special).map(|(id, _)| id).collect();
        let byte_level = matches!(inner.get_decoder(), Some(DecoderWrapper::ByteLevel(_)));
        let mut tok = Tokenizer {
            inner,
            path: tokenizer_json.to_path_buf(),
            known_ids,
            special_ids,
            byte_level,
            bos: None,
            eos: None,
            chat_template: None,
        };
        if let Some((raw, path)) = raw {
            tok.bos = tok.special_token(raw.bos_token, "bos_token", path)?;
            tok.eos = tok.special_token(raw.eos_token, "eos_token", path)?;
            tok.chat_template = raw.chat_template.and_then(RawTemplate::into_default);
        }
        Ok(tok)
    }

    /// Never adds BOS/EOS; special/added tokens written in the text become their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| Error::Input(format!("cannot tokenize text with {}: {e}", self.path.display())))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Fails with `Error::Input` on an id that has no token (rather than skipping it, as
    /// `tokenizers` would).
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        if let Some(&id) = ids.iter().find(|&&id| !self.is_known(id)) {
            return Err(Error::Input(format!(
                "token id {id} is not in the vocabulary of {} (size {})",
                self.path.display(),
                self.vocab_size()
            )));
        }
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::config(&self.path, format!("cannot decode token ids: {e}")))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The text one token stands for, as OpenAI logprobs show it. A token that holds only part of
    /// a UTF-8 character cannot be shown as text, and a plain decode would turn its bytes into
    /// U+FFFD; it is written in the form OpenAI's API uses instead: `bytes:` followed by its text
    /// with every byte that is not part of a complete character escaped as `\xNN` (lowercase
    /// hex). Byte 0xE4 alone gives `bytes:\xe4`, `"о"` followed by 0xD0 gives `bytes:о\xd0`.
    /// Special tokens give their content. An id outside the vocabulary gives an empty string.
    /// Without a byte-level decoder the bytes of a token are not known, and partial characters
    /// show as U+FFFD.
    pub fn token_text(&self, id: u32) -> String {
        match self.token_bytes(id) {
            Some(bytes) => match String::from_utf8(bytes) {
                Ok(text) => text,
                Err(e) => escape_partial_utf8(e.as_bytes()),
            },
            None => self.decode(&[id], false).unwrap_or_default(),
        }
    }

    /// The raw bytes a token stands for (OpenAI logprobs' `bytes`), with a byte-level decoder;
    /// `None` for an unknown id or another kind of decoder.
    pub fn token_bytes(&self, id: u32) -> Option<Vec<u8>> {
        if !self.byte_level {
            return None;
        }
        let token = self.inner.id_to_token(id)?;
        // As the ByteLevel decoder does: a token with any character outside the byte alphabet
        // (an added token such as `<｜User｜>`) stands for its own UTF-8 text.
        Some(token.chars().map(byte_level_byte).collect::<Option<Vec<u8>>>().unwrap_or_else(|| token.into_bytes()))
    }

    /// One more than the largest id, added tokens included: every id the tokenizer can produce
    /// is below it (a model's embedding table must have at least this many rows).
    pub fn vocab_size(&self) -> usize {
        self.known_ids.last().map_or(0, |&id| id as usize + 1)
    }

    /// The content of `bos_token` in `tokenizer_config.json`.
    pub fn bos_token(&self) -> Option<&str> {
        self.bos.as_ref().map(|t| t.content.as_str())
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos.as_ref().map(|t| t.content.as_str())
    }

    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos.as_ref().map(|t| t.id)
    }

    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos.as_ref().map(|t| t.id)
    }

    /// `chat_template` of `tokenizer_config.json`; from a list of named templates, the one named
    /// `default` (the one transformers uses when no name is asked for), else none.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Whether the id is an added token marked `special` (those `decode` can skip). DeepSeek marks
    /// `<｜User｜>`, `<｜Assistant｜>` and the tool-call tokens as not special, so they stay in
    /// decoded text.
    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.contains(&id)
    }

    fn is_known(&self, id: u32) -> bool {
        self.known_ids.binary_search(&id).is_ok()
    }

    /// Resolves a BOS/EOS entry of `tokenizer_config.json` to its id; one that names no token is
    /// an error in that file.
    fn special_token(&self, raw: Option<RawToken>, field: &str, config: &Path) -> Result<Option<SpecialToken>> {
        let Some(raw) = raw else { return Ok(None) };
        let content = match raw {
            RawToken::Text(text) | RawToken::Added { content: text } => text,
        };
        let id = self.token_to_id(&content).ok_or_else(|| {
            Error::config(config, format!("`{field}` {content:?} is not a token of {}", self.path.display()))
        })?;
        Ok(Some(SpecialToken { content, id }))
    }
}

impl RawTemplate {
    fn into_default(self) -> Option<String> {
        match self {
            RawTemplate::One(template) => Some(template),
            RawTemplate::Named(list) => list.into_iter().find(|t| t.name == "default").map(|t| t.template),
        }
    }
}

fn read_config(path: &Path) -> Result<RawConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::config(path, format!("invalid JSON: {e}")))?;
    if !value.is_object() {
        return Err(Error::config(path, "expected a JSON object"));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        Error::config(path, format!("field `{field}`: {}", e.into_inner()))
    })
}

/// The byte GPT-2's byte-level alphabet writes as `c`: printable Latin-1 bytes stand for
/// themselves, the other 68 bytes (0x00–0x20, 0x7F–0xA0, 0xAD, in order) for U+0100–U+0143.
fn byte_level_byte(c: char) -> Option<u8> {
    let code = u32::from(c);
    let byte = match code {
        0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF => code,
        0x100..=0x120 => code - 0x100,
        0x121..=0x142 => code - 0x121 + 0x7F,
        0x143 => 0xAD,
        _ => return None,
    };
    u8::try_from(byte).ok()
}

/// `bytes:` + the text, with each byte that is not part of a complete UTF-8 character as `\xNN`.
fn escape_partial_utf8(mut bytes: &[u8]) -> String {
    let mut out = String::from("bytes:");
    loop {
        match std::str::from_utf8(bytes) {
            Ok(text) => {
                out.push_str(text);
                return out;
            }
            Err(e) => {
                let (valid, rest) = bytes.split_at(e.valid_up_to());
                out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                let bad = e.error_len().unwrap_or(rest.len());
                let (bad, rest) = rest.split_at(bad);
                for b in bad {
                    out.push_str(&format!("\\x{b:02x}"));
                }
                bytes = rest;
            }
        }
    }
}
