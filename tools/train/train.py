#!/usr/bin/env python3
"""Train the arithmetic DeepSeek-V3.2 on the CPU.

    tools/train/setup.sh                       # once: the pinned PyTorch in .venv-train
    .venv-train/bin/python tools/train/train.py --out tools/train/runs/arith

Seeded and resumable: a checkpoint is written every --save-every steps (and on Ctrl-C), and the
same command picks the run up where it stopped, on exactly the batches it would have seen.
Then tools/train/export.py writes the hub-layout FP8 checkpoint.
"""

import argparse
import json
import math
import os
import random
import signal
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import data
import tokenizer as tok_mod
from model import Config, DeepseekV32, Moe

PAD = 1  # eos: padding never enters the loss


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3600, help="the learning-rate schedule's length")
    ap.add_argument("--stop-at", type=int, help="stop (with a checkpoint) at this step instead of --steps")
    ap.add_argument("--batch-tokens", type=int, default=6144, help="padded tokens per step")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--schedule-start", type=int, default=0, help="step the lr schedule (warm-up, cosine) starts at")
    ap.add_argument("--focus-sub", type=float, default=0.0,
                    help="share of problems replaced by subtractions of equal-length operands (data.sample_close_sub)")
    ap.add_argument("--dense-frac", type=float, default=0.1, help="share of steps with dense attention")
    ap.add_argument("--chat-frac", type=float, default=0.2, help="share of replies without a think block")
    ap.add_argument("--save-every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=512, help="BPE vocabulary target")
    return ap.parse_args()


class Batches:
    """Step s's batch is a pure function of (seed, s): a pool of problems is drawn, sorted by
    length and cut into runs of about --batch-tokens padded tokens, and one run is taken."""

    def __init__(self, tok, a):
        self.tok, self.seed, self.budget, self.chat_frac = tok, a.seed, a.batch_tokens, a.chat_frac
        self.focus_sub = a.focus_sub
        self.held_out = {p.question for p in data.eval_problems()}

    def example(self, rng):
        while True:
            # no draw without --focus-sub, so the earlier stages' batches stay what they were
            focus = self.focus_sub > 0 and rng.random() < self.focus_sub
            p = data.sample_close_sub(rng) if focus else data.sample_problem(rng)
            if p.question not in self.held_out:
                break
        thinking = rng.random() >= self.chat_frac
        prompt = self.tok.encode(data.prompt_text(p.question, thinking), add_special_tokens=False).ids
        reply = self.tok.encode(data.reply_text(p, thinking), add_special_tokens=False).ids
        return prompt, reply

    def __call__(self, step: int):
        rng = random.Random(self.seed * 1_000_003 + step)
        pool = sorted((self.example(rng) for _ in range(192)), key=lambda e: len(e[0]) + len(e[1]))
        runs, run = [], []
        for ex in pool:
            n = len(ex[0]) + len(ex[1])
            if run and n * (len(run) + 1) > self.budget:
                runs.append(run)
                run = []
            run.append(ex)
        runs.append(run)
        run = rng.choice(runs)
        T = max(len(p) + len(r) for p, r in run)
        ids = torch.full((len(run), T), PAD, dtype=torch.long)
        target = torch.full((len(run), T), -100, dtype=torch.long)
        valid = torch.zeros(len(run), T)
        for i, (p, r) in enumerate(run):
            seq = p + r
            ids[i, : len(seq)] = torch.tensor(seq)
            valid[i, : len(seq)] = 1
            # position j predicts token j+1: only the reply's tokens are learned
            target[i, len(p) - 1 : len(seq) - 1] = torch.tensor(r)
        return ids, target, valid


def lr_at(step, a):
    step, steps = step - a.schedule_start, a.steps - a.schedule_start
    if step < a.warmup:
        return a.lr * (step + 1) / a.warmup
    t = (step - a.warmup) / max(1, steps - a.warmup)
    return a.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def save(path: Path, model, opt, step, args):
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "args": vars(args)}, tmp)
    os.replace(tmp, path)


def main():
    a = parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    tj_path = a.out / "tokenizer.json"
    if tj_path.exists():
        tj = json.loads(tj_path.read_text(encoding="utf-8"))
    else:
        tj = tok_mod.train(a.vocab, a.seed)
        tj_path.write_text(json.dumps(tj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    tok = tok_mod.load(tj)
    cfg = Config(vocab_size=tok.get_vocab_size())
    (a.out / "config.json").write_text(json.dumps(cfg.__dict__, indent=2) + "\n")
    model = DeepseekV32(cfg)
    decay = [p for n, p in model.named_parameters() if p.dim() == 2]
    rest = [p for n, p in model.named_parameters() if p.dim() != 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}], lr=a.lr, betas=(0.9, 0.95)
    )
    ckpt = a.out / "ckpt.pt"
    step = 0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
        print(f"resuming at step {step}", flush=True)
    params = sum(p.numel() for p in model.parameters())
    print(f"{params / 1e6:.2f}M parameters, vocab {cfg.vocab_size}", flush=True)
    batches = Batches(tok, a)
    stop = {"now": False}
    signal.signal(signal.SIGINT, lambda *_: stop.update(now=True))
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    log = open(a.out / "log.jsonl", "a")
    t0, tokens = time.time(), 0
    model.train()
    end = min(a.steps, a.stop_at) if a.stop_at else a.steps
    while step < end and not stop["now"]:
        ids, target, valid = batches(step)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, a)
        sparse = step >= a.dense_frac * a.steps
        logits, kl, loads = model(ids, valid, sparse)
        ce = F.cross_entropy(logits.view(-1, logits.shape[-1]), target.view(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        (ce + kl).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            moes = [layer.mlp for layer in model.model.layers if isinstance(layer.mlp, Moe)]
            for moe, load in zip(moes, loads):
                load = load.float()
                moe.gate.e_score_correction_bias += 1e-3 * torch.sign(load.mean() - load)
        step += 1
        tokens += int(valid.sum())
        if step % 10 == 0 or step == a.steps:
            el = time.time() - t0
            rec = {"step": step, "ce": round(ce.item(), 4), "kl": round(kl.item(), 4), "lr": round(lr_at(step - 1, a), 6),
                   "sparse": sparse, "tok_s": round(tokens / el, 1), "batch": list(ids.shape)}
            print(json.dumps(rec), flush=True)
            log.write(json.dumps(rec) + "\n")
            log.flush()
        if step % a.save_every == 0 or step == a.steps:
            save(ckpt, model, opt, step, a)
    save(ckpt, model, opt, step, a)
    print(f"stopped at step {step} of {a.steps}", flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
