//! The tokenizer layer against DeepSeek-V3's real tokenizer (tests/fixtures/tokenizers/deepseek-v3)
//! and the tiny models' fixture tokenizer (tools/fixtures/make_tokenizer.py).
//!
//! Expected ids come from the Python `tokenizers` library (0.23.3), the reference the Rust crate
//! must agree with, computed as:
//!
//! ```python
//! from tokenizers import Tokenizer
//! tok = Tokenizer.from_file("tests/fixtures/tokenizers/deepseek-v3/tokenizer.json")
//! print(tok.encode(text, add_special_tokens=False).ids)
//! print(tok.decode(ids, skip_special_tokens=...))
//! ```

mod corrupt;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use corrupt::ScratchDir;
use flashseek::tokenizer::{IncrementalDecoder, Tokenizer};
use flashseek::Error;
use proptest::prelude::*;

fn deepseek_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizers/deepseek-v3")
}

/// Loaded once: the 7.8 MB tokenizer.json takes a while to parse.
fn deepseek() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| Tokenizer::from_dir(&deepseek_dir()).expect("DeepSeek's tokenizer loads"))
}

const BOS: &str = "<｜begin▁of▁sentence｜>";
const EOS: &str = "<｜end▁of▁sentence｜>";

/// (text, ids) from Python `tokenizers`, `add_special_tokens=False` (see the module comment).
const DEEPSEEK_CASES: &[(&str, &[u32])] = &[
    ("Hello, world!", &[19923, 14, 2058, 3]),
    ("你好，世界！这是一个测试。", &[30594, 303, 3427, 1175, 28669, 10251, 320]),
    (
        "こんにちは、カタカナとひらがな。안녕하세요",
        &[
            4549, 7245, 2298, 12457, 2841, 410, 15961, 11767, 15961, 27071, 2495, 40259, 4970, 2936, 2942, 320, 31404,
            11939, 246, 4567, 73527,
        ],
    ),
    (
        "I ❤️ 🦀 and 👨‍👩‍👧‍👦!",
        &[43, 53341, 100, 10759, 7351, 102, 225, 305, 52780, 104, 46088, 25730, 105, 46088, 25730, 103, 46088, 25730, 102, 3],
    ),
    ("12345678", &[6895, 18009, 2597]),
    (
        "π ≈ 3.14159, 2024-01-01, ١٢٣٤, ½",
        &[
            3111, 35015, 223, 21, 16, 9926, 3318, 14, 223, 939, 22, 15, 2616, 15, 2616, 14, 223, 63468, 76647, 127056, 152,
            100, 14, 223, 23951,
        ],
    ),
    ("a  b   c\n\n\n\tindent    \r\n  end  ", &[67, 223, 291, 262, 274, 6328, 200, 655, 309, 290, 204, 201, 223, 1522, 262]),
    (
        "fn main() {\n    println!(\"{}\", x + 1);\n}\n",
        &[28952, 1840, 1393, 875, 361, 42432, 64325, 25902, 1760, 1527, 940, 223, 19, 833, 1778],
    ),
    // The V3 tokenizer has no <think> token (R1, V3.1 and V3.2 add one): it is plain text here.
    ("<｜begin▁of▁sentence｜><｜User｜>hi<｜Assistant｜><think>", &[0, 128803, 6366, 128804, 30, 37947, 32]),
    (
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"北京\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜>",
        &[
            128806, 128808, 8701, 128814, 1133, 65, 50219, 201, 9854, 14479, 201, 24313, 37399, 3362, 582, 6127, 60676,
            9854, 128809, 128807, 1,
        ],
    ),
    ("DeepSeek-V3.2在2025年发布了🚀", &[53091, 4374, 1465, 13582, 21, 16, 20, 445, 939, 23, 695, 53961, 74287, 225]),
    ("", &[]),
];

#[test]
fn deepseek_encode_matches_python() {
    let tok = deepseek();
    for (text, want) in DEEPSEEK_CASES {
        assert_eq!(tok.encode(text).unwrap(), *want, "encoding {text:?}");
    }
}

#[test]
fn deepseek_decode_round_trips() {
    let tok = deepseek();
    for (text, ids) in DEEPSEEK_CASES {
        assert_eq!(tok.decode(ids, false).unwrap(), *text, "decoding {ids:?}");
    }
}

#[test]
fn deepseek_skips_only_special_tokens() {
    let tok = deepseek();
    // bos, eos, <｜User｜> (not special), "#", <|EOT|> (special); Python:
    // decode(..., skip_special_tokens=True) == "<｜User｜>#"
    let ids = [0, 1, 128803, 5, 128805];
    assert_eq!(tok.decode(&ids, true).unwrap(), "<｜User｜>#");
    assert_eq!(tok.decode(&ids, false).unwrap(), "<｜begin▁of▁sentence｜><｜end▁of▁sentence｜><｜User｜>#<|EOT|>");
    assert!(tok.is_special(0) && tok.is_special(1) && tok.is_special(128805));
    assert!(!tok.is_special(128803) && !tok.is_special(128814) && !tok.is_special(5));
}

#[test]
fn deepseek_config_values() {
    let tok = deepseek();
    // 128000 BPE tokens + 815 added (128000..=128814); ids 0..=2 are in both.
    assert_eq!(tok.vocab_size(), 128815);
    assert_eq!(tok.bos_token(), Some(BOS));
    assert_eq!(tok.eos_token(), Some(EOS));
    assert_eq!(tok.bos_token_id(), Some(0));
    assert_eq!(tok.eos_token_id(), Some(1));
    assert_eq!(tok.token_to_id("<｜Assistant｜>"), Some(128804));
    assert_eq!(tok.token_to_id("Hello"), Some(19923));
    assert_eq!(tok.token_to_id("<think>"), None);
    let template = tok.chat_template().expect("V3 has a chat template");
    assert!(template.starts_with("{% if not add_generation_prompt is defined %}"), "{template}");
    assert!(template.contains("<｜Assistant｜>"));
}

#[test]
fn deepseek_token_text() {
    let tok = deepseek();
    assert_eq!(tok.token_text(19923), "Hello");
    assert_eq!(tok.token_text(223), " ");
    assert_eq!(tok.token_text(128804), "<｜Assistant｜>");
    assert_eq!(tok.token_text(0), BOS);
    // Token 163 is the single byte 0xE4 (the first of 你's three); 466 is "о" + 0xD0; 663 is
    // " " + 0xE2 0x80 (the start of a punctuation character such as "…").
    assert_eq!(tok.token_text(163), r"bytes:\xe4");
    assert_eq!(tok.token_text(466), r"bytes:о\xd0");
    assert_eq!(tok.token_text(663), r"bytes: \xe2\x80");
    assert_eq!(tok.token_bytes(663), Some(vec![b' ', 0xE2, 0x80]));
    assert_eq!(tok.token_bytes(128804), Some("<｜Assistant｜>".as_bytes().to_vec()));
    assert_eq!(tok.token_text(128815), "");
    assert_eq!(tok.token_bytes(u32::MAX), None);
}

#[test]
fn deepseek_token_bytes_spell_the_text() {
    let tok = deepseek();
    for (text, ids) in DEEPSEEK_CASES {
        let bytes: Vec<u8> = ids.iter().flat_map(|&id| tok.token_bytes(id).unwrap()).collect();
        assert_eq!(bytes, text.as_bytes(), "{text:?}");
    }
}

/// Byte-level BPE has one token per byte; `token_bytes` must give each of them a different byte,
/// and the ASCII ones must agree with `decode`.
#[test]
fn deepseek_byte_tokens_cover_every_byte() {
    let tok = deepseek();
    let mut seen = [None; 256];
    for id in 0..u32::try_from(tok.vocab_size()).unwrap() {
        if let Some([b]) = tok.token_bytes(id).as_deref() {
            assert_eq!(seen[usize::from(*b)].replace(id), None, "byte {b:#04x} twice");
            if b.is_ascii() {
                assert_eq!(tok.decode(&[id], false).unwrap(), char::from(*b).to_string());
            }
        }
    }
    assert!(seen.iter().all(Option::is_some), "bytes without a token: {seen:?}");
}

#[test]
fn decode_rejects_unknown_ids() {
    let tok = deepseek();
    for id in [128815, 129279, u32::MAX] {
        match tok.decode(&[19923, id], false) {
            Err(Error::Input(msg)) => assert!(msg.contains(&id.to_string()), "{msg}"),
            other => panic!("id {id}: expected an input error, got {other:?}"),
        }
    }
}

#[test]
fn tokenizer_is_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tokenizer>();
    let tok = Arc::new(Tokenizer::from_dir(&fixture("tiny-v3")).unwrap());
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let tok = Arc::clone(&tok);
            std::thread::spawn(move || {
                let text = format!("thread {i}: 你好");
                assert_eq!(tok.decode(&tok.encode(&text).unwrap(), false).unwrap(), text);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

// ---- loading errors ----

#[test]
fn missing_tokenizer_json_is_an_io_error_naming_it() {
    let dir = ScratchDir::empty("tok-missing");
    match Tokenizer::from_dir(dir.path()) {
        Err(Error::Io { path, .. }) => assert_eq!(path, dir.join("tokenizer.json")),
        Err(e) => panic!("expected an io error, got {e}"),
        Ok(_) => panic!("loaded a tokenizer from an empty directory"),
    }
}

#[test]
fn corrupt_tokenizer_json_is_a_config_error_naming_it() {
    let good = std::fs::read(deepseek_dir().join("tokenizer.json")).unwrap();
    let cases: [(&str, Vec<u8>); 4] = [
        ("truncated", good[..good.len() / 2].to_vec()),
        ("not-json", b"not json at all".to_vec()),
        ("empty-object", b"{}".to_vec()),
        (
            "bad-model",
            br#"{"version":"1.0","added_tokens":[],"model":{"type":"BPE","vocab":{"a":0},"merges":["a b"]}}"#.to_vec(),
        ),
    ];
    for (tag, bytes) in cases {
        let dir = ScratchDir::empty(&format!("tok-{tag}"));
        dir.write("tokenizer.json", &bytes);
        match Tokenizer::from_dir(dir.path()) {
            Err(e @ Error::Config { .. }) => {
                let Error::Config { path, .. } = &e else { unreachable!() };
                assert_eq!(*path, dir.join("tokenizer.json"), "{tag}: {e}");
            }
            Err(e) => panic!("{tag}: expected a config error, got {e}"),
            Ok(_) => panic!("{tag}: loaded a corrupt tokenizer.json"),
        }
    }
}

/// A scratch model directory with the tiny fixture's tokenizer.json and the given config.
fn with_config(tag: &str, config: &str) -> ScratchDir {
    let dir = ScratchDir::empty(tag);
    dir.write("tokenizer.json", std::fs::read(fixture("tiny-v32").join("tokenizer.json")).unwrap());
    dir.write("tokenizer_config.json", config);
    dir
}

#[test]
fn bad_tokenizer_config_is_a_config_error_naming_it() {
    let cases = [
        ("not-json", "{", "invalid JSON"),
        ("array", "[]", "JSON object"),
        ("bos-number", r#"{"bos_token": 7}"#, "bos_token"),
        ("eos-unknown", r#"{"eos_token": "<|endoftext|>"}"#, "eos_token"),
        ("template-number", r#"{"chat_template": 3}"#, "chat_template"),
    ];
    for (tag, config, needle) in cases {
        let dir = with_config(&format!("tok-cfg-{tag}"), config);
        match Tokenizer::from_dir(dir.path()) {
            Err(e @ Error::Config { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("tokenizer_config.json") && msg.contains(needle), "{tag}: {msg}");
            }
            Err(e) => panic!("{tag}: expected a config error, got {e}"),
            Ok(_) => panic!("{tag}: accepted {config}"),
        }
    }
}

#[test]
fn tokenizer_config_forms() {
    // Special tokens as plain strings, named templates, null and absent fields.
    let dir = with_config(
        "tok-cfg-forms",
        r#"{"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": null,
            "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}"#,
    );
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    assert_eq!((tok.bos_token(), tok.bos_token_id()), (Some(BOS), Some(0)));
    assert_eq!((tok.eos_token(), tok.eos_token_id()), (None, None));
    assert_eq!(tok.chat_template(), Some("D"));

    let dir = with_config("tok-cfg-nodefault", r#"{"chat_template": [{"name": "tool_use", "template": "T"}]}"#);
    assert_eq!(Tokenizer::from_dir(dir.path()).unwrap().chat_template(), None);

    let dir = ScratchDir::empty("tok-cfg-absent");
    dir.write("tokenizer.json", std::fs::read(fixture("tiny-v32").join("tokenizer.json")).unwrap());
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    assert_eq!((tok.bos_token_id(), tok.eos_token_id(), tok.chat_template()), (None, None, None));
    assert_eq!(tok.encode("hi").unwrap(), Tokenizer::from_dir(&fixture("tiny-v32")).unwrap().encode("hi").unwrap());
}

// ---- streaming ----

/// Pushes every id and finishes, returning the pieces (the last one from `finish`).
fn stream(tok: &Tokenizer, ids: &[u32], skip: bool) -> Vec<String> {
    let mut dec = IncrementalDecoder::new(skip);
    let mut pieces: Vec<String> = ids.iter().map(|&id| dec.push(tok, id).unwrap()).collect();
    pieces.push(dec.finish(tok).unwrap());
    pieces
}

#[test]
fn streaming_holds_back_partial_characters() {
    let tok = deepseek();
    // 你 as its three single-byte tokens (0xE4 0xBD 0xA0), then 好 (0xE5 0xA5 0xBD), then "!".
    let ids = [163, 124, 257, 164, 101, 124, 3];
    assert_eq!(stream(tok, &ids, false), ["", "", "你", "", "", "好", "!", ""]);
    // Ended mid-character: finish gives what decode gives, U+FFFD.
    assert_eq!(stream(tok, &[19923, 163, 124], false), ["Hello", "", "", "\u{FFFD}"]);
    assert_eq!(tok.decode(&[19923, 163, 124], false).unwrap(), "Hello\u{FFFD}");
}

#[test]
fn streaming_special_tokens() {
    let tok = deepseek();
    let ids = [0, 128803, 6366, 128804, 1];
    assert_eq!(stream(tok, &ids, false), [BOS, "<｜User｜>", "hi", "<｜Assistant｜>", EOS, ""]);
    assert_eq!(stream(tok, &ids, true), ["", "<｜User｜>", "hi", "<｜Assistant｜>", "", ""]);
}

#[test]
fn streaming_rejects_unknown_ids_and_keeps_going() {
    let tok = deepseek();
    let mut dec = IncrementalDecoder::new(false);
    assert_eq!(dec.push(tok, 163).unwrap(), "");
    assert!(matches!(dec.push(tok, 200_000), Err(Error::Input(_))));
    assert_eq!(dec.push(tok, 124).unwrap(), "");
    assert_eq!(dec.push(tok, 257).unwrap(), "你");
    assert_eq!(dec.finish(tok).unwrap(), "");
    // finish leaves an empty decoder behind.
    assert_eq!(dec.push(tok, 19923).unwrap(), "Hello");
}

#[test]
fn streaming_real_text_is_never_broken() {
    let tok = deepseek();
    for (text, ids) in DEEPSEEK_CASES {
        let pieces = stream(tok, ids, false);
        assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{text:?}: {pieces:?}");
        assert_eq!(pieces.concat(), *text);
    }
}

/// Ids that exercise the decoder: any id, tokens that end or start inside a UTF-8 character
/// (single bytes 0x80..=0xFF and longer ones), tokens of CJK text and emoji, special and added
/// tokens.
fn interesting_ids() -> impl Strategy<Value = u32> {
    let tok = deepseek();
    let vocab = u32::try_from(tok.vocab_size()).unwrap();
    let partial: Vec<u32> =
        (0..vocab).filter(|&id| std::str::from_utf8(&tok.token_bytes(id).unwrap()).is_err()).collect();
    assert!(partial.len() > 256, "{} tokens with partial characters", partial.len());
    let pieces: Vec<u32> = DEEPSEEK_CASES.iter().flat_map(|(_, ids)| ids.iter().copied()).collect();
    prop_oneof![
        2 => 0..vocab,
        3 => proptest::sample::select(partial),
        3 => proptest::sample::select(pieces),
        1 => proptest::sample::select(vec![0u32, 1, 2, 128000, 128803, 128804, 128805, 128806, 128814]),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn streaming_concatenates_to_decode(ids in proptest::collection::vec(interesting_ids(), 0..48), skip in any::<bool>()) {
        let tok = deepseek();
        let pieces = stream(tok, &ids, skip);
        prop_assert_eq!(pieces.concat(), tok.decode(&ids, skip).unwrap());
    }

    #[test]
    fn encode_decode_round_trips(text in "(\\PC|[ \\t\\n\\r]|<｜User｜>|<｜end▁of▁sentence｜>|[0-9]{1,9}|[你好世界]{1,4}){0,24}") {
        let tok = deepseek();
        let ids = tok.encode(&text).unwrap();
        prop_assert_eq!(tok.decode(&ids, false).unwrap(), text.clone());
        let pieces = stream(tok, &ids, false);
        prop_assert_eq!(pieces.concat(), text);
    }
}

// ---- the tiny models' fixture tokenizer ----

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// Encoded by Python `tokenizers` with tests/fixtures/tiny-v3/tokenizer.json,
/// `add_special_tokens=False`.
const FIXTURE_CASES: &[(&str, &[u32])] = &[
    (
        "<｜begin▁of▁sentence｜><｜User｜>你好，世界 12345678<｜Assistant｜><think>嗯</think>Hi 🦀<｜end▁of▁sentence｜>",
        &[0, 2, 1846, 350, 1588, 249, 235, 1685, 1855, 1057, 3, 4, 176, 260, 122, 5, 54, 87, 1678, 1],
    ),
    (
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"location\": \"Hangzhou\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
        &[6, 8, 396, 10, 657, 977, 213, 469, 447, 213, 618, 914, 417, 376, 1996, 1781, 469, 9, 7],
    ),
];

#[test]
fn fixture_tokenizers() {
    let added = [
        "<｜begin▁of▁sentence｜>",
        "<｜end▁of▁sentence｜>",
        "<｜User｜>",
        "<｜Assistant｜>",
        "<think>",
        "</think>",
        "<｜tool▁calls▁begin｜>",
        "<｜tool▁calls▁end｜>",
        "<｜tool▁call▁begin｜>",
        "<｜tool▁call▁end｜>",
        "<｜tool▁sep｜>",
        "<｜tool▁outputs▁begin｜>",
        "<｜tool▁outputs▁end｜>",
        "<｜tool▁output▁begin｜>",
        "<｜tool▁output▁end｜>",
    ];
    for name in ["tiny-v3", "tiny-v32", "tiny-v32-fp8"] {
        let tok = Tokenizer::from_dir(&fixture(name)).unwrap();
        // The models' vocab_size is 2048; every id below it must decode.
        assert_eq!(tok.vocab_size(), 2048, "{name}");
        assert!(tok.decode(&(0..2048).collect::<Vec<u32>>(), false).is_ok(), "{name}");
        assert_eq!((tok.bos_token_id(), tok.eos_token_id()), (Some(0), Some(1)), "{name}");
        assert_eq!((tok.bos_token(), tok.eos_token()), (Some(BOS), Some(EOS)), "{name}");
        for (id, token) in (0u32..).zip(added) {
            assert_eq!(tok.token_to_id(token), Some(id), "{name}: {token}");
            // Only bos/eos are special, as in DeepSeek's tokenizers.
            assert_eq!(tok.is_special(id), id < 2, "{name}: {token}");
        }
        for (text, ids) in FIXTURE_CASES {
            assert_eq!(tok.encode(text).unwrap(), *ids, "{name}: {text:?}");
            assert_eq!(tok.decode(ids, false).unwrap(), *text, "{name}");
            assert_eq!(stream(&tok, ids, false).concat(), *text, "{name}");
            let skipped = text.trim_start_matches(BOS).trim_end_matches(EOS);
            assert_eq!(tok.decode(ids, true).unwrap(), skipped, "{name}");
        }
        assert_eq!(tok.chat_template().is_some(), name == "tiny-v3", "{name}");
    }
    let v3 = Tokenizer::from_dir(&fixture("tiny-v3")).unwrap();
    assert_eq!(v3.chat_template(), deepseek().chat_template());
}
