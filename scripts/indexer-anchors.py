#!/usr/bin/env python3
"""DeepGEMM's indexer logits beside flashseek's (benches/cuda_kernels.rs, `indexer_logits_fp8`), at
the same shapes: 64 heads x 128, FP8 keys in pages of 64 with one f32 scale per key; decode (64
sequences, one query each at the end of its context: `fp8_paged_mqa_logits`) and prefill (1024
queries at the end of one context: `fp8_mqa_logits`), contexts 4k to 128k. TFLOP/s counts
2 x 64 x 128 multiply-adds per (query, key) pair scored, as the flashseek bench does.

Run on the GPU machine, with PyTorch and DeepGEMM importable: an installed `deep_gemm`, or a
checkout at $DEEPGEMM_DIR or the git-ignored third_party/DeepGEMM (built in place). Without them it says so
and exits 0. Prints a markdown table.
"""
import os
import sys


def import_deep_gemm():
    for d in (os.environ.get("DEEPGEMM_DIR"), os.path.join(os.path.dirname(__file__), "..", "third_party", "DeepGEMM")):
        if d and os.path.isdir(d):
            sys.path.insert(0, os.path.abspath(d))
    try:
        import torch  # noqa: F401
        import deep_gemm
    except ImportError as e:
        print(f"indexer anchors: skipped ({e})")
        sys.exit(0)
    return deep_gemm


def time_ms(fn, reps=20):
    import torch

    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def paged_cache(pages):
    """Pages of 64 keys: 64 x 128 e4m3 codes, then 64 f32 scales (flashseek's IndexFp8)."""
    import torch

    codes = torch.randn(pages, 64, 128, device="cuda").to(torch.float8_e4m3fn).view(torch.uint8)
    scales = torch.full((pages, 64), 1.0 / 256, device="cuda", dtype=torch.float32).view(torch.uint8)
    return torch.cat([codes.reshape(pages, -1), scales.reshape(pages, -1)], dim=1).view(pages, 64, 1, 132)


def main():
    dg = import_deep_gemm()
    import torch

    heads, dim, batch, chunk = 64, 128, 64, 1024
    sms = dg.get_num_sms()
    rows = [("kernel", "shape", "time", "TFLOP/s")]
    for ctx in (4096, 16384, 32768, 65536, 131072):
        per = ctx // 64
        cache = paged_cache(batch * per)
        tables = torch.arange(batch * per, device="cuda", dtype=torch.int32).view(batch, per)
        lens = torch.full((batch, 1), ctx, device="cuda", dtype=torch.int32)
        q = torch.randn(batch, 1, heads, dim, device="cuda").to(torch.float8_e4m3fn)
        w = torch.rand(batch, heads, device="cuda", dtype=torch.float32)
        sched = dg.get_paged_mqa_logits_metadata(lens, 64, sms)
        ms = time_ms(lambda: dg.fp8_paged_mqa_logits(q, cache, w, lens, tables, sched, ctx, clean_logits=False))
        flops = 2 * heads * dim * batch * ctx
        rows.append(("fp8_paged_mqa_logits decode", f"b{batch} ctx{ctx}", f"{ms * 1e3:.1f} us", f"{flops / ms / 1e9:.1f}"))

        k = torch.randn(ctx, dim, device="cuda").to(torch.float8_e4m3fn)
        k_scales = torch.full((ctx,), 1.0 / 256, device="cuda", dtype=torch.float32)
        qp = torch.randn(chunk, heads, dim, device="cuda").to(torch.float8_e4m3fn)
        wp = torch.rand(chunk, heads, device="cuda", dtype=torch.float32)
        ks = torch.zeros(chunk, device="cuda", dtype=torch.int32)
        ke = torch.arange(ctx - chunk + 1, ctx + 1, device="cuda", dtype=torch.int32)
        ms = time_ms(lambda: dg.fp8_mqa_logits(qp, (k, k_scales), wp, ks, ke, clean_logits=False))
        flops = 2 * heads * dim * int(ke.sum())
        rows.append(("fp8_mqa_logits prefill", f"q{chunk} ctx{ctx}", f"{ms * 1e3:.1f} us", f"{flops / ms / 1e9:.1f}"))
    print(f"DeepGEMM on {torch.cuda.get_device_name()}:")
    print("| " + " | ".join(rows[0]) + " |\n|---|---|---|---|")
    for r in rows[1:]:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
