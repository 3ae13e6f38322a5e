#!/usr/bin/env python3
"""Writes the seed inputs of every fuzz target into fuzz/seeds/<target>/ (small files, kept
in git; libFuzzer's working corpus goes to the git-ignored fuzz/corpus/). Run from anywhere."""
import json
import os
import re
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "tests", "fixtures")


def put(target, name, data):
    d = os.path.join(HERE, "seeds", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def read(rel):
    with open(os.path.join(FIX, rel), "rb") as f:
        return f.read()


def split(st):
    n = struct.unpack("<Q", st[:8])[0]
    return json.loads(st[8 : 8 + n]), st[8 + n :]


def st_file(header_text, data):
    return struct.pack("<Q", len(header_text)) + header_text + data


# config_json / config_model_load: every fixture's config.
for fx in ["tiny-v3", "tiny-v32", "tiny-v32-fp8", "odd-v3-bf16", "odd-v32-fp8"]:
    put("config_json", fx + ".json", read(fx + "/config.json"))
for fx in ["tiny-v32", "tiny-v32-fp8"]:
    put("config_model_load", fx + ".json", read(fx + "/config.json"))

# safetensors_checkpoint, mode 0: a small valid file of its own.
hdr = json.dumps(
    {
        "__metadata__": {"format": "pt"},
        "model.norm.weight": {"dtype": "F32", "shape": [256], "data_offsets": [0, 1024]},
        "model.layers.0.self_attn.q_a_proj.weight": {"dtype": "F8_E4M3", "shape": [128, 256], "data_offsets": [1024, 1024 + 128 * 256]},
        "model.layers.0.self_attn.q_a_proj.weight_scale_inv": {"dtype": "F32", "shape": [1, 2], "data_offsets": [1024 + 128 * 256, 1032 + 128 * 256]},
    },
    separators=(",", ":"),
).encode()
data = struct.pack("<256f", *([1.0] * 256)) + bytes(128 * 256) + struct.pack("<2f", 1.0, 1.0)
put("safetensors_checkpoint", "mode0-small-valid", b"\x00" + st_file(hdr, data))
put("safetensors_checkpoint", "mode0-empty-header", b"\x00" + st_file(b"{}      ", b""))
# mode 1: shard 3 untouched; shard 3 truncated inside its header; a header-length overwrite.
put("safetensors_checkpoint", "mode1-shard3", b"\x01")
put("safetensors_checkpoint", "mode1-truncate", b"\x01\x02" + struct.pack("<I", 5000))
put("safetensors_checkpoint", "mode1-header-len", b"\x01\x03" + struct.pack("<Q", 10000))
# mode 2: shard 3's own header over its data.
shard3 = read("tiny-v32-fp8/model-00003-of-00003.safetensors")
n3 = struct.unpack("<Q", shard3[:8])[0]
put("safetensors_checkpoint", "mode2-shard3-header", b"\x02" + shard3[8 : 8 + n3])
# mode 3: the merged checkpoint untouched (loads completely).
put("safetensors_checkpoint", "mode3-merged", b"\x03")
# mode 4: the merged checkpoint's header, built exactly as fuzz_common::merged_tiny_v32_fp8 does.
entries = []
for i in (1, 2, 3):
    h, d = split(read(f"tiny-v32-fp8/model-0000{i}-of-00003.safetensors"))
    for name, info in h.items():
        if name == "__metadata__":
            continue
        s, e = info["data_offsets"]
        entries.append((name, info, e - s))
entries.sort(key=lambda t: t[0])
merged = {"__metadata__": {"format": "pt"}}
off = 0
for name, info, size in entries:
    info = dict(info, data_offsets=[off, off + size])
    off += size
    merged[name] = info
text = json.dumps(merged, sort_keys=True, separators=(",", ":")).encode()
while (8 + len(text)) % 8:
    text += b" "
put("safetensors_checkpoint", "mode4-merged-header", b"\x04" + text)

# shard_index: the real index, a minimal one, and one naming a missing shard.
put("shard_index", "real.json", read("tiny-v32-fp8/model.safetensors.index.json"))
put("shard_index", "empty-map.json", b'{"weight_map":{}}')
put("shard_index", "one.json", b'{"metadata":{},"weight_map":{"model.norm.weight":"model-00003-of-00003.safetensors"}}')
put("shard_index", "missing.json", b'{"weight_map":{"model.norm.weight":"model-00004-of-00003.safetensors"}}')


# token_ids_cli_like: valid CLI-like runs (prefill then decode; two sequences), and a few
# invalid ones. flags: bits 0-1 logits (0 none, 1 last, 2+ all), bit 2 long count (u16),
# bit 3 inject a bad id, bits 4-5 start_pos mode, bits 6-7 table mode.
def seq(slot, flags, tokens, extra=b""):
    out = bytes([slot, flags])
    out += struct.pack("<H", len(tokens)) if flags & 4 else bytes([len(tokens)])
    out += b"".join(struct.pack("<H", t) for t in tokens)
    return out + extra


def run(blocks, *steps):
    """An input: cache size, step count (stored as count - 1), the steps."""
    return bytes([blocks, len(steps) - 1]) + b"".join(steps)


def step(*seqs):
    return bytes([len(seqs)]) + b"".join(seqs)


prompt = [0, 17, 230, 1999, 5, 64, 900]
put("token_ids_cli_like", "generate", run(2, step(seq(0, 1, prompt)), step(seq(0, 1, [42])), step(seq(0, 1, [43]))))
put("token_ids_cli_like", "logits-all", run(2, step(seq(0, 2, list(range(100, 180))))))
# The same through forward_with_hidden (top bit of the step-count byte), as `logits --hidden`.
put("token_ids_cli_like", "logits-hidden", bytes([2, 0x80]) + step(seq(0, 2, list(range(100, 160)))))
put(
    "token_ids_cli_like",
    "two-seqs",
    run(8, step(seq(0, 1, prompt), seq(1, 2, list(range(69)))), step(seq(0, 1, [3]), seq(1, 1, [4]), seq(2, 1, [5, 6]))),
)
put("token_ids_cli_like", "long-prefill", run(8, step(seq(0, 1 | 4, list(range(199))))))
put("token_ids_cli_like", "empty-seq", run(2, step(seq(0, 1, []), seq(1, 1, [1]))))
put("token_ids_cli_like", "bad-id", run(2, step(seq(0, 1 | 8, prompt, bytes([2]) + struct.pack("<I", 2048)))))
put("token_ids_cli_like", "short-table", run(4, step(seq(0, 1 | 0x40, list(range(65)), bytes([1])))))
put("token_ids_cli_like", "raw-blocks", run(4, step(seq(0, 1 | 0x80, [1, 2, 3], bytes([2, 1, 3])))))
put("token_ids_cli_like", "far-start", run(4, step(seq(0, 1 | 0x10, [1, 2, 3], struct.pack("<H", 1000)))))
# Panics found (and since fixed), kept as regression reproducers (fuzz/regressions/token_ids_cli_like/)
# rather than seeds. start_pos near usize::MAX: `start_pos + len` overflowed in StepLayout::build.
REGRESSIONS = os.path.join(HERE, "regressions", "token_ids_cli_like")
os.makedirs(REGRESSIONS, exist_ok=True)
with open(os.path.join(REGRESSIONS, "start-pos-overflow"), "wb") as f:
    f.write(run(4, step(seq(0, 1 | 0x30, [1, 2, 3], struct.pack("<Q", 2**64 - 2)))))
# The same with a one-block table: `start_pos + len` wrapped to a small end that passed every
# check of StepLayout::build in a release build, which then indexed the table at start_pos / 64.
with open(os.path.join(REGRESSIONS, "start-pos-overflow-with-table"), "wb") as f:
    f.write(run(4, step(seq(0, 1 | 0x30 | 0x80, [1, 2, 3], struct.pack("<Q", 2**64 - 2) + bytes([1, 0])))))
# A block id of 2^26 in a caller's table: `block * 64` overflowed u32 in step.rs `slot()`.
with open(os.path.join(REGRESSIONS, "block-id-overflow"), "wb") as f:
    f.write(run(4, step(seq(0, 1 | 0x80, [5], bytes([1, 0x80]) + struct.pack("<I", 1 << 26)))))


# output_parsers: a plan byte (low 4 bits: how many chunk lengths follow; bit 4: cycle them;
# no lengths: one char per chunk), the lengths, then the generated text.
def parsers(plan, lengths, text):
    assert plan & 15 == len(lengths)
    return bytes([plan]) + bytes(lengths) + (text.encode() if isinstance(text, str) else text)


# What the model generated in DeepSeek's own test conversation: each turn's output, from the
# prompt's `<think>` or `</think>` opener to its end-of-sentence token.
golden = read("dsv32-encoding/test_output.txt").decode()
outputs = [m.group(2) for m in re.finditer(r"(<think>|</think>)(.*?)<｜end▁of▁sentence｜>", golden, re.S)]
plans = [(0, []), (0x13, [1, 5, 0]), (0x04, [7, 30, 0, 2]), (0x12, [3, 64]), (0x01, [200])]
for i, text in enumerate(outputs):
    plan, lengths = plans[i % len(plans)]
    put("output_parsers", f"golden-turn{i}", parsers(plan, lengths, text))
D = "｜DSML｜"
typed = (
    f"need weather</think>\n\n<{D}function_calls>\n<{D}invoke name=\"get_weather\">\n"
    f"<{D}parameter name=\"city\" string=\"true\">Paris</{D}parameter>\n"
    f"<{D}parameter name=\"days\" string=\"false\">3</{D}parameter>\n"
    f"<{D}parameter name=\"opt\" string=\"false\">{{\"unit\": \"C\", \"deep\": [1, {{\"x\": \"<y>\"}}]}}</{D}parameter>\n"
    f"<{D}parameter name=\"bad\" string=\"false\">not json</{D}parameter>\n"
    f"<{D}parameter name = \"days\" >4</{D}parameter>\n"
    f"<{D}parameter name=\"quote\" string=\"true\"> say \"hi\"\n</{D}parameter>\n"
    f"</{D}invoke>\n</{D}function_calls>"
)
put("output_parsers", "typed-params", parsers(0x12, [2, 9], typed))
put("output_parsers", "typed-params-by-char", parsers(0, [], typed))
json_body = f"<{D}function_calls><{D}invoke name=\"f\">{{\"a\": [1, 2], \"b\": \"</x>\"}}</{D}invoke></{D}function_calls>tail"
put("output_parsers", "json-body", parsers(0x11, [4], json_body))
unterminated = f"text <{D}function_calls>\n<{D}invoke name=\"f\">\n<{D}parameter name=\"a\" string=\"true\">x"
put("output_parsers", "unterminated", parsers(0x02, [10, 0], unterminated))
malformed = f"<{D}function_calls>\n<{D}invoke name=\"\">\n</{D}invoke>\n</{D}function_calls> and <{D}invoke name=\"g\">"
put("output_parsers", "malformed", parsers(0x13, [1, 2, 3], malformed))
put("output_parsers", "think-markers", parsers(0x11, [3], "<think><think>thought</think>answer <think> x </think> y"))
put("output_parsers", "partial-markers", parsers(0x01, [9], "plain </thi"))
put("output_parsers", "partial-block", parsers(0, [], f"answer <{D}func"))
put("output_parsers", "not-utf8", parsers(0x01, [2], b"a\xe4\xb8</think>\xff<\xef\xbd\x9cDSML"))

# chat_encoding: DeepSeek's test conversation (thinking mode, tools), and the requests of
# tests/chat_encoding.rs, plus a few the encoders must reject without panicking.
put("chat_encoding", "golden-test-input.json", read("dsv32-encoding/test_input.json"))
golden_in = json.loads(read("dsv32-encoding/test_input.json"))
golden_in["thinking"] = True
put("chat_encoding", "golden-thinking.json", json.dumps(golden_in, ensure_ascii=False).encode())
weather = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]},
    },
}
args = {"city": "Paris", "days": 3, "ratio": 1.5, "big": 1e20, "tiny": 1e-5, "whole": 2.0, "ok": True, "none": None,
        "tags": ["a", "b"], "opt": {"unit": "C", "deep": [1, {"x": "<y>"}]}, "quote": "say \"hi\"\n"}


def chat(name, messages, **extra):
    put("chat_encoding", name, json.dumps(dict(messages=messages, **extra), ensure_ascii=False).encode())


hello = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
chat("chat-mode.json", [{"role": "system", "content": "You are terse."}, *hello, {"role": "user", "content": "Weather in Paris?"}])
chat(
    "thinking-tools.json",
    [*hello, {"role": "user", "content": "Weather in Paris?"},
     {"role": "assistant", "content": None, "reasoning_content": "need weather",
      "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps(args)}}]},
     {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}],
    tools=[weather], thinking=True,
)
chat("developer.json", [{"role": "system", "content": "Sys."}, {"role": "developer", "content": "Answer in French."}],
     chat_template_kwargs={"thinking": True})
chat("response-format.json", [{"role": "user", "content": [{"type": "text", "text": "JSON "}, {"type": "text", "text": "please"}]}],
     response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}})
chat("flat-call-object-args.json",
     [{"role": "user", "content": "go"},
      {"role": "assistant", "tool_calls": [{"name": "f", "arguments": {"a": [1, 2.5e-7]}}, {"function": {"name": "g"}}]},
      {"role": "tool", "content": "1"}, {"role": "tool", "content": "2"}, {"role": "critic", "content": "skipped"}],
     tools=[{"name": "f"}, {"function": {"name": "g", "parameters": {"type": "object"}}}], add_generation_prompt=False)
# Errors: arguments not an object, a tool result with no call, an empty developer turn,
# more results than calls, a thinking-mode final assistant turn with nothing to think.
chat("args-not-object.json", [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}]}])
chat("orphan-tool.json", [{"role": "tool", "content": "r"}, {"role": "user", "content": "x"}])
chat("empty-developer.json", [{"role": "developer", "content": ""}])
chat("extra-result.json",
     [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]},
      {"role": "tool", "content": "1"}, {"role": "tool", "content": "2"}])
chat("thinking-no-reasoning.json", [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], thinking=True)
put("chat_encoding", "bare-array.json", json.dumps([{"role": "user", "content": "<｜User｜>{{ raise_exception('x') }}"}]).encode())


# tokenizer_decode: n, n u16 ids (below 0x8000: the id modulo 2048; from 0x8000: outside the
# vocabulary), then anything (the whole input is also encoded as text).
tok = json.loads(read("tiny-v32/tokenizer.json"))
vocab = tok["model"]["vocab"]
# GPT-2's byte-level alphabet: the character each byte is written as.
alphabet = [b for b in range(256) if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF]
byte_char = {b: chr(b) for b in alphabet}
extra = 0
for b in range(256):
    if b not in byte_char:
        byte_char[b] = chr(256 + extra)
        extra += 1


def byte_ids(data):
    return [vocab["".join(byte_char[b] for b in data[i : i + 1])] for i in range(len(data))]


def decode_seed(ids, tail=b""):
    return bytes([len(ids)]) + b"".join(struct.pack("<H", i) for i in ids) + tail


hello_ids = byte_ids("Hello, 世界!".encode())
put("tokenizer_decode", "bytes-hello", decode_seed(hello_ids))
# 中 (E4 B8 AD) as the two-byte token "ä¸" and the byte AD: a character split across tokens.
zhong = [vocab["ä¸"], vocab[byte_char[0xAD]]]
put("tokenizer_decode", "split-char", decode_seed(zhong + byte_ids(b" ok") + zhong))
put("tokenizer_decode", "specials", decode_seed([0, 2, *byte_ids(b"Hi"), 3, 4, *byte_ids(b"hmm"), 5, *byte_ids(b"yes"), 1]))
put("tokenizer_decode", "out-of-range", decode_seed([*byte_ids(b"ab"), 0x8000, vocab["ä¸"], 0xFFFF, vocab[byte_char[0xAD]], 0xC000]))
put("tokenizer_decode", "lone-lead-byte", decode_seed([*byte_ids(b"\xe4"), *byte_ids(b"A"), *byte_ids(b"\xf0\x9f"), 2047]))
put("tokenizer_decode", "text", b"\x00" + "<｜User｜>Hi <think>中文 123 \r\n\t</think><｜Assistant｜>éh?".encode())
