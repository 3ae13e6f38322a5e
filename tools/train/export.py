#!/usr/bin/env python3
"""Export a training run as a hub-layout DeepSeek-V3.2 FP8 checkpoint, with the references the
engine's tests compare against.

    .venv-train/bin/python tools/train/export.py --run tools/train/runs/arith --out models/flashseek-arith-v32

Writes config.json (model_type deepseek_v32, FP8 128x128 blocks), model.safetensors (linear
weights e4m3 + `weight_scale_inv` with power-of-two scales as `scale_fmt: ue8m0` says; embeddings,
lm_head, norms, router and the indexer's weights_proj bf16; router bias f32), tokenizer.json,
tokenizer_config.json, generation_config.json (greedy, thinking on by default), heldout.jsonl (the
500 held-out problems for `flashseek bench accuracy`), and:

* reference.safetensors: a prefill and a greedy generation on the dequantized weights without
  FP8 rounding (what transformers computes), from tools/fixtures/fp8_reference.py;
* reference_fp8.safetensors: the same inputs with DeepSeek's FP8 semantics (fp8_reference.py).

It also checks that the training model (tools/train/model.py) and fp8_reference.py agree on the
float weights, so the model that was trained is the architecture the engine runs.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "fixtures"))

import data  # noqa: E402
import fp8_reference as fr  # noqa: E402
from model import Config, DeepseekV32  # noqa: E402

BLOCK = 128
E4M3_MAX = 448.0
# Stored in bf16 as the real checkpoints store them; every other 2-D weight is an FP8 linear.
BF16_SUFFIXES = ("embed_tokens.weight", "lm_head.weight", "mlp.gate.weight", "weights_proj.weight")


def quantize_fp8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """128x128 blocks from the top-left (partial edge blocks); scale = 2^ceil(log2(amax/448))."""
    n, k = w.shape
    nb, kb = -(-n // BLOCK), -(-k // BLOCK)
    scale = torch.empty(nb, kb)
    for i in range(nb):
        for j in range(kb):
            blk = w[i * BLOCK : (i + 1) * BLOCK, j * BLOCK : (j + 1) * BLOCK]
            scale[i, j] = fr.pow2_ceil(blk.abs().max().clamp_min(1e-12) / E4M3_MAX)
    s = fr.block_expand(scale, n, k)
    return torch.clamp(w / s, -E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn), scale


def stored_tensors(state: dict) -> dict:
    out = {}
    for name, w in sorted(state.items()):
        if name.endswith("e_score_correction_bias"):
            out[name] = w.float()
        elif w.dim() == 2 and not name.endswith(BF16_SUFFIXES):
            q, s = quantize_fp8(w.float())
            out[name] = q
            out[name + "_scale_inv"] = s
        else:
            out[name] = w.to(torch.bfloat16)
    return out


def load_run(run: Path):
    cfg = Config(**json.loads((run / "config.json").read_text()))
    model = DeepseekV32(cfg)
    state = torch.load(run / "ckpt.pt", weights_only=False)
    model.load_state_dict(state["model"])
    model.eval()
    return cfg, model, state["step"]


def reference_inputs(tok) -> dict:
    """A whole worked problem for the prefill (longer than index_topk, so the sparse selection is
    active) and a prompt for the greedy generation."""
    seq = data.prompt_text("What is 486 + 739?", True) + data.reply_text(data.problem_from(486, 739, "add"), True)
    prompt = data.prompt_text("What is 58 - 93?", True)
    ids = tok.encode(seq, add_special_tokens=False).ids
    pids = tok.encode(prompt, add_special_tokens=False).ids
    return {"input_ids": torch.tensor(ids), "gen_prompt": torch.tensor(pids)}


def rel(a, b):
    return ((a - b).norm(dim=-1) / b.norm(dim=-1)).max().item()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--gen-len", type=int, default=48)
    a = ap.parse_args()
    torch.set_num_threads(2)
    import tokenizer as tok_mod

    cfg, model, step = load_run(a.run)
    hub = cfg.hub_config()
    tj = json.loads((a.run / "tokenizer.json").read_text(encoding="utf-8"))
    tok = tok_mod.load(tj)
    a.out.mkdir(parents=True, exist_ok=True)

    f32 = model.export_state()
    stored = stored_tensors(f32)
    save_file({k: v.contiguous() for k, v in stored.items()}, a.out / "model.safetensors", metadata={"format": "pt"})
    (a.out / "config.json").write_text(json.dumps(hub, indent=2) + "\n")
    (a.out / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    (a.out / "tokenizer_config.json").write_text(json.dumps(tok_mod.tokenizer_config(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    gen = {
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "do_sample": False,
        "default_chat_template_kwargs": {"thinking": True},
    }
    (a.out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")

    (a.out / "heldout.jsonl").write_text(data.heldout_jsonl(data.eval_problems()), encoding="utf-8")

    inputs = reference_inputs(tok)
    # 1. the training model and the reference model agree on the float weights
    float_cfg = {k: v for k, v in hub.items() if k != "quantization_config"}
    ref_float = fr.Model(float_cfg, f32)
    ref_float.fp8 = False
    with torch.no_grad():
        ids = inputs["input_ids"]
        ours = model(ids[None], torch.ones(1, len(ids)), sparse=True)[0][0]
    theirs = ref_float.prefill_logits(ids)
    err = rel(ours, theirs)
    print(f"training model vs fp8_reference (float weights): max rel logit error {err:.2e}")
    if err > 1e-4:
        raise SystemExit("the training model and the reference disagree: not the engine's architecture")

    # 2. the references on the exported checkpoint
    exported = fr.Model(str(a.out))
    exported.fp8 = False
    gen_tokens, _ = exported.greedy(inputs["gen_prompt"], a.gen_len)
    hidden = []
    ref = {"input_ids": ids, "logits": exported.prefill_logits(ids, hidden), "gen_prompt": inputs["gen_prompt"]}
    ref.update({f"hidden.{i}": h for i, h in enumerate(hidden)})
    ref["gen_tokens"] = gen_tokens
    ref["gen_logits"] = exported.teacher_forced(inputs["gen_prompt"], gen_tokens)
    save_file({k: v.contiguous() for k, v in ref.items()}, a.out / "reference.safetensors")
    exported.fp8 = True
    ref8 = fr.run_reference(exported, ref)
    save_file({k: v.contiguous() for k, v in ref8.items()}, a.out / "reference_fp8.safetensors")
    print("greedy (dequantized):", tok.decode(gen_tokens.tolist(), skip_special_tokens=False))
    print("greedy (FP8):        ", tok.decode(ref8["gen_tokens_fp8"].tolist(), skip_special_tokens=False))
    print(f"FP8 vs dequantized logits: max rel {rel(ref8['logits'], ref['logits']):.3f}")
    size = sum(p.stat().st_size for p in a.out.iterdir() if p.is_file())
    print(f"exported step {step} to {a.out} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
