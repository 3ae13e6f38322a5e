#!/usr/bin/env python3
"""Greedy accuracy of the arithmetic model on the 500 held-out problems (data.eval_problems), in
thinking mode, graded as `flashseek bench accuracy --signed` grades: the last number of the
answer after </think>, with its sign.

    .venv-train/bin/python tools/train/evaluate.py --run tools/train/runs/arith      # trained float model
    .venv-train/bin/python tools/train/evaluate.py --model models/flashseek-v32-arith  # exported FP8 checkpoint,
                                                                                     # DeepSeek's FP8 semantics

Prints accuracy per category (operation and digits of the longer operand, word problems) and
writes the report with every answer as JSON (--out).
"""

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "fixtures"))

import data  # noqa: E402
import tokenizer as tok_mod  # noqa: E402

MAX_NEW = 768


def graded_value(text: str):
    nums = re.findall(r"-?\d+", text.replace(",", ""))
    if not nums:
        return None
    return str(int(nums[-1]))


def content_of(reply: str) -> str:
    return reply.split(data.THINK_END, 1)[1] if data.THINK_END in reply else reply


def float_replies(run: Path, tok, problems, batch: int):
    from export import load_run

    _, model, _ = load_run(run)
    prompts = [tok.encode(data.prompt_text(p.question, True), add_special_tokens=False).ids for p in problems]
    by_len = defaultdict(list)
    for i, ids in enumerate(prompts):
        by_len[len(ids)].append(i)
    replies = [None] * len(problems)
    for _, idx in sorted(by_len.items()):
        for k in range(0, len(idx), batch):
            part = idx[k : k + batch]
            outs = model.greedy([prompts[i] for i in part], MAX_NEW, eos=1)
            for i, out in zip(part, outs):
                replies[i] = out
    return replies


def fp8_replies(model_dir: Path, tok, problems):
    import fp8_reference as fr

    model = fr.Model(str(model_dir))
    model.fp8 = True
    eos = model.cfg["eos_token_id"]
    replies = []
    with torch.no_grad():
        for n, p in enumerate(problems):
            ids = torch.tensor(tok.encode(data.prompt_text(p.question, True), add_special_tokens=False).ids)
            cache = model.new_cache()
            logits = model.forward(ids, cache)[-1]
            out = []
            for _ in range(MAX_NEW):
                t = int(logits.argmax())
                out.append(t)
                if t == eos:
                    break
                logits = model.forward(torch.tensor([t]), cache)[-1]
            replies.append(out)
            if (n + 1) % 50 == 0:
                print(f"{n + 1}/{len(problems)}", flush=True)
    return replies


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", type=Path, help="a training run: its float model")
    src.add_argument("--model", type=Path, help="an exported checkpoint, run with FP8 semantics")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--limit", type=int, help="only the first N problems")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    tok_dir = a.run or a.model
    tok = tok_mod.load(json.loads((tok_dir / "tokenizer.json").read_text(encoding="utf-8")))
    problems = data.eval_problems()[: a.limit]
    ids = float_replies(a.run, tok, problems, a.batch) if a.run else fp8_replies(a.model, tok, problems)
    per = defaultdict(lambda: [0, 0])
    rows = []
    for p, out in zip(problems, ids):
        reply = tok.decode(out, skip_special_tokens=False)
        right = graded_value(content_of(reply)) == str(p.answer)
        per[data.category(p)][0] += right
        per[data.category(p)][1] += 1
        rows.append({"question": p.question, "answer": p.answer, "reply": reply, "correct": right})
    correct = sum(r["correct"] for r in rows)
    for cat, (c, n) in per.items():
        print(f"{cat:<12} {c:>4}/{n:<4} {c / n:.3f}")
    print(f"accuracy {correct}/{len(rows)} = {correct / len(rows):.3f}")
    if a.out:
        report = {"correct": correct, "num_questions": len(rows), "accuracy": correct / len(rows),
                  "categories": {k: {"correct": c, "num_questions": n} for k, (c, n) in per.items()}, "replies": rows}
        a.out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
