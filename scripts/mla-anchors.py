#!/usr/bin/env python3
"""FlashMLA's decode at the shapes of flashseek's MLA benches (benches/cuda_kernels.rs), for the
anchor column of docs/performance.md. Run on the GPU machine, beside `scripts/gpu-check run`:

    python3 scripts/mla-anchors.py [--flashmla DIR]

FlashMLA comes from an installed `flash_mla` package, or else from a checkout of its public
source in DIR (default: the git-ignored `third_party/FlashMLA`), built in place with the
machine's nvcc and PyTorch (`python setup.py build_ext --inplace`, several minutes). Without
either, or without a GPU, it says so and exits 0 (1 with FLASHSEEK_REQUIRE_GPU=1).

Cases, 128 heads, DeepSeek-V3.2's latent (576 = 512 + 64), one query per sequence at the end of
its context: dense over a bf16 paged cache (page 64) at 4k, 16k and 64k positions, and sparse
over the FP8 cache (656-byte tokens) with 2048 top-k indices, batch 1 to 128. FLOPs and bytes
are counted as flashseek's bench counts them: 2 * 128 * (576 + 512) FLOP per key; the key bytes
(1152 bf16, 656 FP8) plus the queries in and outputs out (bf16 here, f32 in flashseek).
Prints a markdown table.
"""

import argparse
import os
import subprocess
import sys

BATCHES = [1, 8, 32, 64, 128]
CONTEXTS = [4096, 16384, 65536]
HEADS = 128
TOPK = 2048
PAGE = 64


def give_up(why):
    print(f"mla-anchors: {why}", file=sys.stderr)
    sys.exit(1 if os.environ.get("FLASHSEEK_REQUIRE_GPU") == "1" else 0)


def load_flash_mla(checkout):
    try:
        import flash_mla  # noqa: F401

        return sys.modules["flash_mla"]
    except ImportError:
        pass
    if not os.path.isdir(checkout):
        give_up(f"no flash_mla package and no checkout at {checkout}")
    env = dict(os.environ, FLASH_MLA_DISABLE_SM100="1")
    print(f"mla-anchors: building FlashMLA in {checkout}", file=sys.stderr)
    subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=checkout, env=env, check=True)
    sys.path.insert(0, checkout)
    import flash_mla

    return flash_mla


def timed(torch, fn, reps=20):
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps * 1e-3


def metadata(flash_mla, cache_seqlens, topk, fp8):
    # Newer FlashMLA plans on its first call and takes no arguments here; the V3.2 release
    # wants the lengths, the query heads per KV head, the KV heads, the query heads, the cache
    # format and the top-k; older ones only the first three.
    for args in [(), (cache_seqlens, HEADS, 1, HEADS, fp8, topk), (cache_seqlens, HEADS, 1)]:
        try:
            return flash_mla.get_mla_metadata(*args)
        except TypeError:
            continue
    give_up("no get_mla_metadata signature of this FlashMLA fits")


def main():
    parser = argparse.ArgumentParser()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser.add_argument("--flashmla", default=os.path.join(root, "third_party", "FlashMLA"))
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        give_up("no PyTorch")
    if not torch.cuda.is_available():
        give_up("no GPU")
    flash_mla = load_flash_mla(args.flashmla)
    dev = torch.device("cuda")
    name = torch.cuda.get_device_name(dev)
    # The copy anchor, as flashseek measures it: bytes read plus written per second.
    buf = torch.empty(1 << 30, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(buf)
    copy = 2 * buf.numel() / timed(torch, lambda: dst.copy_(buf))
    rows = []
    per_key = 2 * HEADS * (576 + 512)
    per_row = 2 * HEADS * (576 + 512)
    for batch in BATCHES:
        for ctx in CONTEXTS:
            pages = ctx // PAGE
            q = torch.randn(batch, 1, HEADS, 576, dtype=torch.bfloat16, device=dev) * 0.1
            seqlens = torch.full((batch,), ctx, dtype=torch.int32, device=dev)
            table = torch.arange(batch * pages, dtype=torch.int32, device=dev).view(batch, pages)
            try:
                cache = torch.randn(batch * pages, PAGE, 1, 576, dtype=torch.bfloat16, device=dev) * 0.1
            except torch.cuda.OutOfMemoryError:
                print(f"mla-anchors: b{batch} ctx{ctx}: the bf16 cache does not fit", file=sys.stderr)
                continue
            meta, splits = metadata(flash_mla, seqlens, None, False)

            def dense():
                flash_mla.flash_mla_with_kvcache(q, cache, table, seqlens, 512, meta, splits, causal=True)

            t = timed(torch, dense)
            keys = batch * ctx
            rows.append(("dense bf16 cache", batch, ctx, t, per_key * keys, keys * 1152 + per_row * batch))
            del cache
            fp8 = torch.zeros(batch * pages, PAGE, 1, 656, dtype=torch.uint8, device=dev)
            idx = (torch.arange(TOPK, dtype=torch.int32, device=dev) * (ctx // TOPK)).repeat(batch, 1)
            idx = (idx + (torch.arange(batch, device=dev, dtype=torch.int32) * ctx).unsqueeze(1)).view(batch, 1, TOPK)
            meta, splits = metadata(flash_mla, seqlens, TOPK, True)

            def sparse():
                flash_mla.flash_mla_with_kvcache(
                    q, fp8.view(torch.float8_e4m3fn), None, None, 512, meta, splits, is_fp8_kvcache=True, indices=idx
                )

            try:
                t = timed(torch, sparse)
            except (RuntimeError, AssertionError) as e:
                print(f"mla-anchors: sparse FP8 decode unavailable: {e}", file=sys.stderr)
                continue
            keys = batch * TOPK
            rows.append(("top-2048 fp8 cache", batch, ctx, t, per_key * keys, keys * 656 + per_row * batch))
            del fp8
    print(f"\nFlashMLA on {name}; copy {copy / 1e9:.0f} GB/s (read + write)\n")
    print("| FlashMLA decode | shape | time | TFLOP/s | GB/s | of copy |\n|---|---|---|---|---|---|")
    for kind, batch, ctx, t, flops, nbytes in rows:
        gbs = nbytes / t / 1e9
        print(
            f"| {kind} | b{batch} ctx{ctx} | {t * 1e6:.1f} us | {flops / t / 1e12:.1f} | {gbs:.0f} | "
            f"{100 * gbs * 1e9 / copy:.1f}% |"
        )


if __name__ == "__main__":
    main()
