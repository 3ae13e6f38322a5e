"""The arithmetic model's tokenizer: DeepSeek-V3's byte-level BPE pipeline (pre-tokenizer,
decoder, special tokens and their flags, from the copy of DeepSeek's tokenizer in
tests/fixtures/tokenizers/deepseek-v3) with one change, digits split one by one instead of in
groups of three, trained on the generated problems.

Deterministic: the same data gives the same tokenizer.json byte for byte.
"""

import json
import random
import re
from pathlib import Path

from tokenizers import Tokenizer
from tokenizers.pre_tokenizers import ByteLevel
from tokenizers.trainers import BpeTrainer

import data

REPO = Path(__file__).resolve().parents[2]
DEEPSEEK = REPO / "tests/fixtures/tokenizers/deepseek-v3"

# Ids 0, 1, 2, ... in this order.
ADDED_TOKENS = [data.BOS, data.EOS, data.USER, data.ASSISTANT, data.THINK_START, data.THINK_END]
# V3 has no think tokens; R1, V3.1 and V3.2 add them as non-special tokens like the chat tokens,
# so decoding with skip_special_tokens keeps them for the reasoning parser.
THINK_FLAGS = {"special": False, "normalized": True}
DIGIT_GROUPS = "\\p{N}{1,3}"
SINGLE_DIGITS = " ?\\p{N}"


def corpus(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    pattern = re.compile("|".join(re.escape(t) for t in ADDED_TOKENS))
    texts = []
    for _ in range(n):
        p = data.sample_problem(rng)
        for thinking in (True, False):
            text = data.prompt_text(p.question, thinking) + data.reply_text(p, thinking)
            texts += [piece for piece in pattern.split(text) if piece]
    return texts


def single_digit_pretokenizer(pre: dict) -> dict:
    out = json.loads(json.dumps(pre))
    splits = [p for p in out["pretokenizers"] if p.get("pattern", {}).get("Regex") == DIGIT_GROUPS]
    if len(splits) != 1:
        raise SystemExit("DeepSeek's pre-tokenizer no longer has the digit-group split")
    splits[0]["pattern"]["Regex"] = SINGLE_DIGITS
    # The word split after it would cut the space off again: keep " 7" one piece there too.
    words = out["pretokenizers"][2]["pattern"]
    words["Regex"] = SINGLE_DIGITS + "|" + words["Regex"]
    return out


def train(vocab_size: int, seed: int) -> dict:
    deepseek = json.loads((DEEPSEEK / "tokenizer.json").read_text(encoding="utf-8"))
    skeleton = dict(deepseek)
    skeleton["added_tokens"] = []
    skeleton["pre_tokenizer"] = single_digit_pretokenizer(deepseek["pre_tokenizer"])
    skeleton["model"] = {
        "type": "BPE",
        "dropout": None,
        "unk_token": None,
        "continuing_subword_prefix": None,
        "end_of_word_suffix": None,
        "fuse_unk": False,
        "byte_fallback": False,
        "ignore_merges": False,
        "vocab": {},
        "merges": [],
    }
    tok = Tokenizer.from_str(json.dumps(skeleton))
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=ADDED_TOKENS,
        initial_alphabet=ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(20000, seed), trainer=trainer)
    out = json.loads(tok.to_str())
    theirs = {t["content"]: t for t in deepseek["added_tokens"]}
    for token in out["added_tokens"]:
        flags = theirs.get(token["content"])
        token.update(THINK_FLAGS if flags is None else {"special": flags["special"], "normalized": flags["normalized"]})
    check(out)
    return out


def check(tokenizer_json: dict) -> None:
    tok = Tokenizer.from_str(json.dumps(tokenizer_json))
    for i, content in enumerate(ADDED_TOKENS):
        if tok.token_to_id(content) != i:
            raise SystemExit(f"{content} has id {tok.token_to_id(content)}, expected {i}")
    rng = random.Random(1)
    for _ in range(200):
        p = data.sample_problem(rng)
        text = data.prompt_text(p.question, True) + data.reply_text(p, True)
        enc = tok.encode(text, add_special_tokens=False)
        if tok.decode(enc.ids, skip_special_tokens=False) != text:
            raise SystemExit(f"round trip failed for {text!r}")
        for piece in enc.tokens:
            if sum(c.isdigit() for c in piece) > 1:
                raise SystemExit(f"token {piece!r} holds more than one digit")


def tokenizer_config() -> dict:
    """DeepSeek's tokenizer_config.json fields, with bos/eos as it writes them."""
    theirs = json.loads((DEEPSEEK / "tokenizer_config.json").read_text(encoding="utf-8"))
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": theirs["bos_token"],
        "clean_up_tokenization_spaces": False,
        "eos_token": theirs["eos_token"],
        "legacy": True,
        "model_max_length": 4096,
        "pad_token": theirs["pad_token"],
        "sp_model_kwargs": {},
        "unk_token": None,
        "tokenizer_class": "LlamaTokenizerFast",
    }


def load(tokenizer_json: dict) -> Tokenizer:
    return Tokenizer.from_str(json.dumps(tokenizer_json))
