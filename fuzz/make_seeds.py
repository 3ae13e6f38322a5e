#!/usr/bin/env python3
"""Writes the seed inputs of every fuzz target into fuzz/seeds/<target>/ (small files, kept
in git; libFuzzer's working corpus goes to the git-ignored fuzz/corpus/). Run from anywhere."""
import json
import os
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
