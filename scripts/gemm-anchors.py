#!/usr/bin/env python3
"""The FP8 GEMM anchors at the shapes benches/cuda_kernels.rs measures, on the GPU machine.

Prints TFLOP/s of cuBLAS's bf16 GEMM (torch.matmul), torch._scaled_mm with DeepSeek's blockwise
scales (1x128 activations, 128x128 weights; "n/a" where this PyTorch refuses them) and DeepGEMM's
fp8_gemm_nt where a DeepGEMM checkout sits in the git-ignored third_party/DeepGEMM (or $DEEPGEMM_DIR) and
imports (it JIT-compiles its kernels with the machine's nvcc on first use). Compare with the
"FP8 GEMM" table of `cargo bench --features cuda --bench cuda_kernels` from the same run.

    python3 scripts/gemm-anchors.py            # needs PyTorch with CUDA
"""

import os
import sys

import torch

SHAPES = [(2112, 7168), (24576, 1536), (32768, 512), (7168, 16384), (4096, 7168), (7168, 2048)]
ROWS = [64, 128, 4096]
REPS = 20


def timed(fn):
    """Mean seconds per call of fn over REPS calls, after a warm-up."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(REPS):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / REPS


def deep_gemm_module():
    root = os.environ.get("DEEPGEMM_DIR", os.path.join(os.path.dirname(__file__), "..", "third_party", "DeepGEMM"))
    if not os.path.isdir(root):
        return None, f"no DeepGEMM checkout at {root}"
    sys.path.insert(0, root)
    try:
        import deep_gemm  # noqa: PLC0415

        return deep_gemm, ""
    except Exception as e:  # noqa: BLE001
        return None, f"DeepGEMM does not import: {e}"


def main():
    dev = torch.device("cuda")
    print(f"# {torch.cuda.get_device_name(dev)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    deep_gemm, why = deep_gemm_module()
    if deep_gemm is None:
        print(f"# DeepGEMM: {why}")
    print("| shape | cuBLAS bf16 | _scaled_mm blockwise | DeepGEMM |")
    print("|---|---|---|---|")
    for n, k in SHAPES:
        w16 = torch.randn(n, k, device=dev, dtype=torch.bfloat16)
        w8 = w16.to(torch.float8_e4m3fn)
        sw = torch.rand((n + 127) // 128, (k + 127) // 128, device=dev, dtype=torch.float32)
        for m in ROWS:
            flops = 2.0 * m * n * k
            x16 = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
            x8 = x16.to(torch.float8_e4m3fn)
            sx = torch.rand(m, (k + 127) // 128, device=dev, dtype=torch.float32)
            rates = [flops / timed(lambda: x16 @ w16.t()) / 1e12]
            try:
                # Blockwise scaling: a's scales [m, k/128] (outer-dim-major as torch wants them),
                # b's [k/128, n/128] for b = w8.t().
                sa = sx.t().contiguous().t()
                sb = sw.t().contiguous()
                call = lambda: torch._scaled_mm(x8, w8.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)  # noqa: E731
                rates.append(flops / timed(call) / 1e12)
            except Exception:  # noqa: BLE001
                rates.append(None)
            if deep_gemm is not None:
                try:
                    out = torch.empty(m, n, device=dev, dtype=torch.bfloat16)
                    call = lambda: deep_gemm.fp8_gemm_nt((x8, sx), (w8, sw), out)  # noqa: E731
                    rates.append(flops / timed(call) / 1e12)
                except Exception:  # noqa: BLE001
                    rates.append(None)
            else:
                rates.append(None)
            cells = " | ".join("n/a" if r is None else f"{r:.1f}" for r in rates)
            print(f"| {n}x{k} m{m} | {cells} |")


if __name__ == "__main__":
    main()
