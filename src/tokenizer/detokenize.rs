//! Streaming detokenization: text is handed out as soon as it is final, never ending inside a
//! UTF-8 character that a byte-level token has only begun.
//!
//! Each step decodes only a short window of recent tokens (the prefix-offset/read-offset
//! technique of text-generation-inference and vLLM): the window starts with the tokens whose
//! text was returned last (so that decoders whose output depends on the preceding token, e.g.
//! leading-space handling, see that context) and ends with those not returned yet. What the
//! window decodes to beyond the prefix's text is new; it is returned once it does not end in
//! U+FFFD, the mark of bytes still waiting for the rest of their character.

use super::hf::Tokenizer;
use crate::error::Result;

const REPLACEMENT: char = '\u{FFFD}';

pub struct IncrementalDecoder {
    skip_special_tokens: bool,
    /// The window: the prefix tokens, then the tokens whose text has not been returned. Older
    /// tokens are dropped, as their text can no longer change.
    ids: Vec<u32>,
    /// Where the tokens not returned yet start in `ids`.
    read_offset: usize,
    /// Byte length of the text of `ids[..read_offset]`.
    prefix_len: usize,
}

impl IncrementalDecoder {
    pub fn new(skip_special_tokens: bool) -> Self {
        IncrementalDecoder { skip_special_tokens, ids: Vec::new(), read_offset: 0, prefix_len: 0 }
    }

    /// Appends one generated token; returns the newly final text (possibly empty). Never returns
    /// text ending in an incomplete UTF-8 character: it is held back until a later token
    /// completes it. An unknown id is an `Error::Input` and leaves the decoder as it was.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = match tok.decode(&self.ids, self.skip_special_tokens) {
            Ok(text) => text,
            Err(e) => {
                self.ids.pop();
                return Err(e);
            }
        };
        if text.ends_with(REPLACEMENT) {
            return Ok(String::new());
        }
        let new = match text.get(self.prefix_len..) {
            Some(new) if !new.is_empty() => new.to_owned(),
            _ => return Ok(String::new()),
        };
        self.advance(tok)?;
        Ok(new)
    }

    /// End of generation: whatever is still held back (with U+FFFD for an unfinished character,
    /// as `Tokenizer::decode` writes it). The decoder is then empty and can start a new stream.
    pub fn finish(&mut self, tok: &Tokenizer) -> Result<String> {
        let text = tok.decode(&self.ids, self.skip_special_tokens)?;
        let rest = text.get(self.prefix_len..).unwrap_or_default().to_owned();
        self.ids.clear();
        self.read_offset = 0;
        self.prefix_len = 0;
        Ok(rest)
    }

    /// The tokens just returned become the prefix of the next window.
    fn advance(&mut self, tok: &Tokenizer) -> Result<()> {
        self.ids.drain(..self.read_offset);
        self.read_offset = self.ids.len();
        self.prefix_len = tok.decode(&self.ids, self.skip_special_tokens)?.len();
        Ok(())
    }
}
