//! The `tiny-v32` fixture tokenizer (byte-level BPE, 2048 ids, special and added tokens among
//! them; loaded once per process) on token ids and text from outside: `decode` with and without
//! `skip_special_tokens`, `encode`, and the streaming `IncrementalDecoder` the server detokenizes
//! with. Checks:
//! - `decode` is `Ok` when every id is in the vocabulary, an error when one is not;
//! - the decoder's `push` is `Ok` for an id in the vocabulary and an error for one outside it,
//!   which leaves the decoder as it was: what the pushes and `finish` return, concatenated, is
//!   exactly `decode` of the in-vocabulary ids;
//! - `encode` of the input as text gives ids in the vocabulary, which decode back to that text
//!   and stream to it too.
//!
//! Input layout: `n: u8` (how many of the following `u16` values are ids, at most 255), then the
//! ids, `u16` each: below `0x8000` an id in the vocabulary (the value modulo 2048); from it,
//! `2048 + (v & 0x7fff)`, or `u32::MAX - (v & 15)` for `v >= 0xfff0`. The whole input is also
//! encoded as text (converted with `String::from_utf8_lossy`).

use std::sync::OnceLock;

use flashseek::tokenizer::{IncrementalDecoder, Tokenizer};

use crate::{fixture, show, Reader};

const VOCAB: u32 = 2048;

fn tokenizer() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let tok = Tokenizer::from_dir(&fixture("tiny-v32"))
            .unwrap_or_else(|e| panic!("fuzz setup: cannot load the tiny-v32 tokenizer: {e}"));
        assert_eq!(tok.vocab_size(), VOCAB as usize, "fuzz setup: the tiny-v32 tokenizer changed");
        tok
    })
}

/// One fuzz input.
pub fn run(data: &[u8]) {
    let tok = tokenizer();
    let mut r = Reader::new(data);
    let n = r.u8();
    let ids: Vec<u32> = (0..n).map(|_| id(r.u16())).collect();

    for skip in [false, true] {
        let decoded = show("decode", tok.decode(&ids, skip));
        let bad = ids.iter().find(|&&id| id >= VOCAB);
        match (bad, &decoded) {
            (None, Err(e)) => panic!("decode failed on ids all in the vocabulary (skip={skip}): {e}; ids {ids:?}"),
            (Some(id), Ok(text)) => panic!("decode accepted id {id} (skip={skip}): {text:?}; ids {ids:?}"),
            _ => {}
        }
        stream(tok, &ids, skip);
    }

    let text = String::from_utf8_lossy(data);
    let Ok(encoded) = show("encode", tok.encode(&text)) else { return };
    assert!(encoded.iter().all(|&id| id < VOCAB), "encode gave an id outside the vocabulary: {encoded:?}");
    let decoded = tok.decode(&encoded, false).unwrap_or_else(|e| panic!("decode of encode({text:?}) failed: {e}"));
    assert_eq!(decoded, text, "decode(encode(text)) is not the text; ids {encoded:?}");
    for skip in [false, true] {
        stream(tok, &encoded, skip);
    }
}

fn id(v: u16) -> u32 {
    match v {
        0..0x8000 => u32::from(v) % VOCAB,
        0xfff0.. => u32::MAX - u32::from(v & 15),
        _ => VOCAB + u32::from(v & 0x7fff),
    }
}

/// Streams `ids` through an `IncrementalDecoder`; the text must be `decode` of the good ids.
fn stream(tok: &Tokenizer, ids: &[u32], skip: bool) {
    let mut decoder = IncrementalDecoder::new(skip);
    let mut text = String::new();
    for &id in ids {
        match (decoder.push(tok, id), id < VOCAB) {
            (Ok(piece), true) => text.push_str(&piece),
            (Err(e), true) => panic!("push({id}) failed (skip={skip}): {e}; ids {ids:?}"),
            (Ok(piece), false) => panic!("push({id}) accepted an id outside the vocabulary: {piece:?}"),
            (Err(_), false) => {}
        }
    }
    let rest = decoder.finish(tok).unwrap_or_else(|e| panic!("finish failed (skip={skip}): {e}; ids {ids:?}"));
    text.push_str(&rest);
    let good: Vec<u32> = ids.iter().copied().filter(|&id| id < VOCAB).collect();
    let expected = tok.decode(&good, skip).unwrap_or_else(|e| panic!("decode of good ids failed: {e}"));
    assert_eq!(text, expected, "streamed text differs from decode (skip={skip}); ids {good:?}");
}
